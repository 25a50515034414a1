//! Routes: replace/delete/list/get, and the shared route reconciler.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{ENODEV, ENOENT, ESRCH};
use crate::{Netlink, NetlinkError};

/// `proto boot`: Go's netlink default, the protocol of every route Go
/// flannel installs (`ip route` hides it unless `-d` is given).
pub const RTPROT_BOOT: u8 = 3;
/// `proto kernel`: routes the kernel derives from addresses.
pub const RTPROT_KERNEL: u8 = 2;
/// `proto static`: the `ip route add` default.
pub const RTPROT_STATIC: u8 = 4;
/// `scope global`.
pub const RT_SCOPE_UNIVERSE: u8 = 0;
/// `scope link`.
pub const RT_SCOPE_LINK: u8 = 253;
/// `scope host`.
pub const RT_SCOPE_HOST: u8 = 254;
/// `table main`.
pub const RT_TABLE_MAIN: u32 = 254;

/// Address family selector for [`Netlink::routes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`ip -4`).
    V4,
    /// IPv6 (`ip -6`).
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn netlink(self) -> AddressFamily {
        match self {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        }
    }
}

/// Route type (`rtm_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// A normal route (`unicast`, the default).
    Unicast,
    /// `blackhole`: silently drop.
    Blackhole,
    /// `local`: delivered to this host (seen only in [`Netlink::route_get`]
    /// answers; [`Netlink::routes`] lists unicast and blackhole routes).
    Local,
    /// Any other type, by its `RTN_*` number (only from [`Netlink::route_get`]).
    Other(u8),
}

impl RouteKind {
    fn netlink(self) -> RouteType {
        match self {
            RouteKind::Unicast => RouteType::Unicast,
            RouteKind::Blackhole => RouteType::BlackHole,
            RouteKind::Local => RouteType::Local,
            RouteKind::Other(n) => RouteType::from(n),
        }
    }

    fn from_netlink(t: RouteType) -> RouteKind {
        match t {
            RouteType::Unicast => RouteKind::Unicast,
            RouteType::BlackHole => RouteKind::Blackhole,
            RouteType::Local => RouteKind::Local,
            other => RouteKind::Other(u8::from(other)),
        }
    }
}

/// A route, in the terms of `ip route`.
///
/// `Route::unicast(dst, prefix)` gives flannel's defaults (`proto boot`,
/// `scope global`, `table main`, unicast); set the other public fields as
/// needed:
///
/// ```
/// # use flannel_netlink::Route;
/// // ip route replace 10.5.3.0/24 via 10.5.3.0 dev flannel.1 onlink (proto boot)
/// let mut r = Route::unicast("10.5.3.0".parse().unwrap(), 24);
/// r.gateway = Some("10.5.3.0".parse().unwrap());
/// r.oif = Some(7);
/// r.onlink = true;
/// assert_eq!(r.to_string(), "10.5.3.0/24 via 10.5.3.0 dev if7 onlink");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Route {
    /// Destination network address (`0.0.0.0`/`::` with prefix 0 for
    /// `default`).
    pub dst: IpAddr,
    /// Destination prefix length.
    pub prefix: u8,
    /// `via <gateway>`.
    pub gateway: Option<IpAddr>,
    /// `dev <oif>` (interface index).
    pub oif: Option<u32>,
    /// `onlink`: the gateway is on the link even without a covering
    /// connected route.
    pub onlink: bool,
    /// `proto` number ([`RTPROT_BOOT`] for flannel's routes).
    pub protocol: u8,
    /// `scope` number ([`RT_SCOPE_UNIVERSE`] = `global`).
    pub scope: u8,
    /// Route type.
    pub kind: RouteKind,
    /// Routing table ([`RT_TABLE_MAIN`] = 254).
    pub table: u32,
    /// `src <prefsrc>`.
    pub prefsrc: Option<IpAddr>,
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl Route {
    /// A unicast route to `dst/prefix` (the address is masked to the
    /// prefix, as the kernel requires) with `proto boot`, `scope global`,
    /// `table main` and nothing else set.
    pub fn unicast(dst: IpAddr, prefix: u8) -> Route {
        Route {
            dst: mask(dst, prefix),
            prefix,
            gateway: None,
            oif: None,
            onlink: false,
            protocol: RTPROT_BOOT,
            scope: RT_SCOPE_UNIVERSE,
            kind: RouteKind::Unicast,
            table: RT_TABLE_MAIN,
            prefsrc: None,
        }
    }

    /// `blackhole <dst>/<prefix> proto boot` in the main table.
    pub fn blackhole(dst: IpAddr, prefix: u8) -> Route {
        Route {
            kind: RouteKind::Blackhole,
            ..Route::unicast(dst, prefix)
        }
    }

    /// The route's family.
    pub fn family(&self) -> Family {
        Family::of(self.dst)
    }

    /// What identifies a route for `ip route replace` in flannel's use:
    /// table, destination and prefix length.
    pub fn key(&self) -> (u32, IpAddr, u8) {
        (self.table, self.dst, self.prefix)
    }

    /// Whether this (kernel) route fulfils `desired`: every field equal,
    /// except that `oif` and `prefsrc` are compared only when `desired` sets
    /// them (the kernel fills in the device of a gateway route given without
    /// one).
    pub fn satisfies(&self, desired: &Route) -> bool {
        self.dst == desired.dst
            && self.prefix == desired.prefix
            && self.gateway == desired.gateway
            && self.onlink == desired.onlink
            && self.protocol == desired.protocol
            && self.scope == desired.scope
            && self.kind == desired.kind
            && self.table == desired.table
            && (desired.oif.is_none() || self.oif == desired.oif)
            && (desired.prefsrc.is_none() || self.prefsrc == desired.prefsrc)
    }

    /// The route in `ip route show` words (which omit `proto boot`) with the
    /// device named `dev`.
    fn describe(&self, dev: Option<&str>) -> String {
        let mut s = String::new();
        match self.kind {
            RouteKind::Unicast => {}
            RouteKind::Blackhole => s.push_str("blackhole "),
            RouteKind::Local => s.push_str("local "),
            RouteKind::Other(n) => s.push_str(&format!("type {n} ")),
        }
        if self.prefix == 0 {
            s.push_str("default");
        } else {
            s.push_str(&format!("{}/{}", self.dst, self.prefix));
        }
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        if let Some(d) = dev {
            s.push_str(&format!(" dev {d}"));
        }
        if self.table != RT_TABLE_MAIN {
            s.push_str(&format!(" table {}", self.table));
        }
        // Like iproute2, which prints every protocol except `boot`.
        match self.protocol {
            RTPROT_BOOT => {}
            RTPROT_KERNEL => s.push_str(" proto kernel"),
            RTPROT_STATIC => s.push_str(" proto static"),
            0 => s.push_str(" proto unspec"),
            p => s.push_str(&format!(" proto {p}")),
        }
        match self.scope {
            RT_SCOPE_UNIVERSE => {}
            RT_SCOPE_LINK => s.push_str(" scope link"),
            RT_SCOPE_HOST => s.push_str(" scope host"),
            n => s.push_str(&format!(" scope {n}")),
        }
        if let Some(src) = self.prefsrc {
            s.push_str(&format!(" src {src}"));
        }
        if self.onlink {
            s.push_str(" onlink");
        }
        s
    }

    fn message(&self, for_delete: bool) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = self.family().netlink();
        msg.header.destination_prefix_length = self.prefix;
        // Tables above 255 only fit in RTA_TABLE; the header then carries
        // RT_TABLE_COMPAT (252), as iproute2 does.
        msg.header.table = u8::try_from(self.table).unwrap_or(252);
        msg.header.protocol = self.protocol.into();
        msg.header.kind = self.kind.netlink();
        if for_delete {
            // Match any scope (iproute2's `ip route del` default): a route
            // read back from the kernel may carry a scope we did not pick.
            msg.header.scope = RouteScope::NoWhere;
        } else {
            msg.header.scope = self.scope.into();
            if self.onlink {
                // RTNH_F_ONLINK makes the kernel skip the check that the
                // gateway is reachable through a connected route (vxlan's
                // gateway is the remote subnet's .0 address, which is not).
                // It still requires an oif that is up, `scope global`, and
                // a gateway that is not a local address.
                msg.header.flags = RouteFlags::Onlink;
            }
        }
        msg.attributes.push(RouteAttribute::Table(self.table));
        if self.prefix > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(self.dst)));
        }
        if let Some(gw) = self.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(src) = self.prefsrc {
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        msg
    }
}

impl fmt::Display for Route {
    /// `ip route` style, with the device shown by index (`dev if7`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dev = self.oif.map(|i| format!("if{i}"));
        f.write_str(&self.describe(dev.as_deref()))
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn parse_route(msg: &RouteMessage) -> Option<Route> {
    let h: &RouteHeader = &msg.header;
    let unspecified = match h.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut r = Route {
        dst: unspecified,
        prefix: h.destination_prefix_length,
        gateway: None,
        oif: None,
        onlink: h.flags.contains(RouteFlags::Onlink),
        protocol: h.protocol.into(),
        scope: h.scope.into(),
        kind: RouteKind::from_netlink(h.kind),
        table: u32::from(h.table),
        prefsrc: None,
    };
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => r.dst = route_ip(d)?,
            RouteAttribute::Gateway(g) => r.gateway = route_ip(g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::PrefSource(s) => r.prefsrc = route_ip(s),
            RouteAttribute::Table(t) => r.table = *t,
            _ => {}
        }
    }
    Some(r)
}

impl Netlink {
    async fn route_object(&self, route: &Route) -> String {
        let dev = match route.oif {
            Some(i) => Some(self.dev_label(i).await),
            None => None,
        };
        format!("route {}", route.describe(dev.as_deref()))
    }

    /// `ip route replace <dst>/<prefix> [via <gw>] [dev <dev>] [proto ..]
    /// [scope ..] [table ..] [src ..] [onlink]` (or `blackhole ...`).
    ///
    /// Replace never fails with `EEXIST` (unlike add); an `onlink` route
    /// needs its device up (`ENETDOWN` otherwise).
    pub async fn replace_route(&self, route: &Route) -> Result<(), NetlinkError> {
        match self
            .ack(
                RouteNetlinkMessage::NewRoute(route.message(false)),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(f) => Err(f.into_error(self.route_object(route).await)),
        }
    }

    /// `ip route del <dst>/<prefix> [via <gw>] [dev <dev>] [proto ..] [table
    /// ..]` (any scope); a route (or device) that is already gone (`ESRCH`,
    /// `ENOENT`, `ENODEV`) is fine.
    pub async fn del_route(&self, route: &Route) -> Result<(), NetlinkError> {
        match self
            .ack(RouteNetlinkMessage::DelRoute(route.message(true)), 0)
            .await
        {
            Ok(()) => Ok(()),
            Err(f) if matches!(f.errno(), Some(ESRCH | ENOENT | ENODEV)) => Ok(()),
            Err(f) => Err(f.into_error(self.route_object(route).await)),
        }
    }

    /// `ip [-6] route show table main type unicast` plus `type blackhole`.
    pub async fn routes(&self, family: Family) -> Result<Vec<Route>, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = family.netlink();
        let answers = self
            .exchange(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)
            .await
            .map_err(|f| {
                f.into_error(match family {
                    Family::V4 => "routes (IPv4)".into(),
                    Family::V6 => "routes (IPv6)".into(),
                })
            })?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse_route(r),
                _ => None,
            })
            .filter(|r| {
                r.table == RT_TABLE_MAIN
                    && matches!(r.kind, RouteKind::Unicast | RouteKind::Blackhole)
            })
            .collect())
    }

    /// `ip route get <dst>`: the route the kernel would use. The answer has
    /// `dst` = the queried address with a full-length prefix, the `oif`, the
    /// `gateway` when there is one, and `prefsrc`.
    pub async fn route_get(&self, dst: IpAddr) -> Result<Vec<Route>, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = Family::of(dst).netlink();
        req.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        req.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        let answers = self
            .exchange(RouteNetlinkMessage::GetRoute(req), 0)
            .await
            .map_err(|f| f.into_error(format!("route get {dst}")))?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse_route(r),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// host-gw: `<subnet> via <public ip> dev eth0 proto boot`.
    fn hostgw(subnet: &str, gw: &str) -> Route {
        let mut r = Route::unicast(ip(subnet), 24);
        r.gateway = Some(ip(gw));
        r.oif = Some(2);
        r
    }

    fn owned_by_hostgw(r: &Route) -> bool {
        r.protocol == RTPROT_BOOT && r.oif == Some(2) && r.gateway.is_some()
    }

    #[test]
    fn unicast_defaults_and_masking() {
        let r = Route::unicast(ip("10.5.3.7"), 24);
        assert_eq!(r.dst, ip("10.5.3.0"));
        assert_eq!(r.protocol, RTPROT_BOOT);
        assert_eq!(r.scope, RT_SCOPE_UNIVERSE);
        assert_eq!(r.table, RT_TABLE_MAIN);
        assert_eq!(r.kind, RouteKind::Unicast);
        assert_eq!(Route::unicast(ip("10.5.3.7"), 0).dst, ip("0.0.0.0"));
        assert_eq!(Route::unicast(ip("10.5.3.7"), 32).dst, ip("10.5.3.7"));
        assert_eq!(
            Route::unicast(ip("fd00:5:1:2::9"), 64).dst,
            ip("fd00:5:1:2::")
        );
        assert_eq!(Route::unicast(ip("fd00::9"), 0).dst, ip("::"));
        assert_eq!(
            Route::blackhole(ip("10.5.0.0"), 16).to_string(),
            "blackhole 10.5.0.0/16"
        );
    }

    /// The reconciler's planner on routes: (routes to write — added or
    /// changed —, routes to delete, desired routes blocked by a foreign one).
    fn reconcile_routes(
        desired: &[Route],
        actual: &[Route],
        owned: impl Fn(&Route) -> bool,
    ) -> (Vec<Route>, Vec<Route>, Vec<Route>) {
        let p = flannel_core::reconcile::plan(desired, actual, owned);
        let mut write = p.add;
        write.extend(p.change.into_iter().map(|(_, d)| d));
        let blocked = p.blocked.into_iter().map(|(_, d)| d).collect();
        (write, p.remove, blocked)
    }

    #[test]
    fn nothing_to_do_when_in_sync() {
        let want = vec![
            hostgw("10.5.2.0", "192.168.100.2"),
            hostgw("10.5.3.0", "192.168.100.3"),
        ];
        let (write, delete, _) = reconcile_routes(&want, &want, owned_by_hostgw);
        assert!(write.is_empty() && delete.is_empty());
    }

    #[test]
    fn adds_missing_and_deletes_stale_owned() {
        let want = vec![
            hostgw("10.5.2.0", "192.168.100.2"),
            hostgw("10.5.3.0", "192.168.100.3"),
        ];
        let actual = vec![
            hostgw("10.5.2.0", "192.168.100.2"),
            hostgw("10.5.9.0", "192.168.100.9"),
        ];
        let (write, delete, _) = reconcile_routes(&want, &actual, owned_by_hostgw);
        assert_eq!(write, vec![hostgw("10.5.3.0", "192.168.100.3")]);
        assert_eq!(delete, vec![hostgw("10.5.9.0", "192.168.100.9")]);
    }

    #[test]
    fn never_deletes_routes_it_does_not_own() {
        let mut kernel = Route::unicast(ip("192.168.100.0"), 24);
        kernel.oif = Some(2);
        kernel.protocol = RTPROT_KERNEL;
        kernel.scope = RT_SCOPE_LINK;
        kernel.prefsrc = Some(ip("192.168.100.1"));
        let mut static_route = hostgw("10.9.0.0", "192.168.100.254");
        static_route.protocol = RTPROT_STATIC;
        let default = {
            let mut r = Route::unicast(ip("0.0.0.0"), 0);
            r.gateway = Some(ip("192.168.100.254"));
            r.oif = Some(2);
            r.protocol = RTPROT_STATIC;
            r
        };
        let stale = hostgw("10.5.9.0", "192.168.100.9");
        let actual = vec![kernel, static_route, default, stale.clone()];
        let (write, delete, _) = reconcile_routes(&[], &actual, owned_by_hostgw);
        assert!(write.is_empty());
        assert_eq!(delete, vec![stale]);
    }

    #[test]
    fn changed_gateway_is_replaced_not_deleted() {
        let want = vec![hostgw("10.5.2.0", "192.168.100.22")];
        let actual = vec![hostgw("10.5.2.0", "192.168.100.2")];
        let (write, delete, _) = reconcile_routes(&want, &actual, owned_by_hostgw);
        assert_eq!(write, want);
        assert!(delete.is_empty(), "same key: replace overwrites it");
    }

    #[test]
    fn unowned_route_in_the_way_is_left_alone() {
        let want = vec![hostgw("10.5.2.0", "192.168.100.2")];
        let mut foreign = hostgw("10.5.2.0", "192.168.100.2");
        foreign.protocol = RTPROT_STATIC;
        let (write, delete, blocked) = reconcile_routes(&want, &[foreign], owned_by_hostgw);
        assert!(write.is_empty() && delete.is_empty());
        assert_eq!(blocked, want);
    }

    #[test]
    fn kernel_filled_oif_and_src_still_satisfy() {
        // DirectRouting: `ip route replace 10.5.2.0/24 via 192.168.100.2`,
        // no device given; the kernel reports dev eth0.
        let mut want = Route::unicast(ip("10.5.2.0"), 24);
        want.gateway = Some(ip("192.168.100.2"));
        let mut got = want.clone();
        got.oif = Some(2);
        got.prefsrc = Some(ip("192.168.100.1"));
        assert!(got.satisfies(&want));
        assert!(!want.satisfies(&got));
        let (write, delete, _) = reconcile_routes(&[want], &[got], |_| true);
        assert!(write.is_empty() && delete.is_empty());
    }

    #[test]
    fn onlink_protocol_kind_and_table_matter() {
        let mut want = Route::unicast(ip("10.5.3.0"), 24);
        want.gateway = Some(ip("10.5.3.0"));
        want.oif = Some(7);
        want.onlink = true;
        for change in [
            (|r: &mut Route| r.onlink = false) as fn(&mut Route),
            |r| r.protocol = RTPROT_STATIC,
            |r| r.kind = RouteKind::Blackhole,
            |r| r.table = 100,
            |r| r.scope = RT_SCOPE_LINK,
            |r| r.oif = Some(8),
        ] {
            let mut got = want.clone();
            change(&mut got);
            let (write, delete, _) =
                reconcile_routes(std::slice::from_ref(&want), &[got.clone()], |_| true);
            assert_eq!(write, vec![want.clone()], "{got:?}");
            let delete_expected = got.table != want.table;
            assert_eq!(!delete.is_empty(), delete_expected, "{got:?}");
        }
    }

    #[test]
    fn duplicate_desired_keys_last_wins() {
        let a = hostgw("10.5.2.0", "192.168.100.2");
        let b = hostgw("10.5.2.0", "192.168.100.3");
        let (write, _, _) = reconcile_routes(&[a, b.clone()], &[], |_| true);
        assert_eq!(write, vec![b]);
    }

    #[test]
    fn families_do_not_mix() {
        let v4 = hostgw("10.5.2.0", "192.168.100.2");
        let mut v6 = Route::unicast(ip("fd00:5:2::"), 64);
        v6.gateway = Some(ip("fd00:100::2"));
        v6.oif = Some(2);
        let (write, delete, _) = reconcile_routes(
            std::slice::from_ref(&v6),
            std::slice::from_ref(&v4),
            owned_by_hostgw,
        );
        assert_eq!(write, vec![v6]);
        assert_eq!(delete, vec![v4]);
    }

    #[test]
    fn describe_like_ip_route() {
        let mut r = Route::unicast(ip("10.5.3.0"), 24);
        r.gateway = Some(ip("10.5.3.0"));
        r.oif = Some(7);
        r.onlink = true;
        assert_eq!(
            r.describe(Some("flannel.1")),
            "10.5.3.0/24 via 10.5.3.0 dev flannel.1 onlink"
        );
        let mut d = Route::unicast(ip("0.0.0.0"), 0);
        d.gateway = Some(ip("192.168.100.254"));
        d.protocol = RTPROT_STATIC;
        d.table = 100;
        assert_eq!(
            d.to_string(),
            "default via 192.168.100.254 table 100 proto static"
        );
    }
}
