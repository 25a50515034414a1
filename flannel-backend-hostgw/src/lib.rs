//! # flannel-backend-hostgw
//!
//! flannel's host-gw backend: no encapsulation; every remote subnet is routed
//! via the peer's public IP on the external interface
//! (`ip route replace 10.5.2.0/24 via 192.168.100.2 dev eth0 proto boot`),
//! for IPv4 and IPv6. All nodes must share one L2 segment, so host-gw refuses
//! to run behind NAT (public IP ≠ interface IP) with Go's message.
//!
//! The backend is a [`RouteNetwork`]: the desired routes are a pure function
//! of the leases ([`desired_routes`]), applied on lease events and
//! reconciled with the kernel every [`RESYNC_INTERVAL`] (a deleted route comes
//! back, routes of leases that are gone are removed). Only routes host-gw
//! owns ([`owns`]: `proto boot`, via a gateway on the external interface,
//! inside the configured networks) are ever changed. Shutdown leaves the
//! routes in place.
//!
//! The host context must carry a [`SharedOps`] (the daemon's netlink
//! handle), as every kernel backend's does.

use flannel_core::backend::{Backend, BackendError, ExternalInterface, Network, RegisterContext};
use flannel_core::config::NetConfig;
use flannel_core::ip::{Cidr, Family as IpFamily};
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_netlink::{RTPROT_BOOT, Route, RouteNetwork, SharedOps, ops_from_host};
use std::net::IpAddr;
use std::time::Duration;

/// The backend type string.
pub const TYPE: &str = "host-gw";

/// How often routes are checked and repaired (Go: 10 s).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10);

/// Go's refusal text when the public IP is not the interface's.
pub const NAT_REFUSAL: &str = "your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not supported by host-gw backend";

/// The route for one family of `lease` via its public address on `oif`, if
/// the lease is a host-gw lease with that family.
pub fn route_for(lease: &Lease, v6: bool, oif: u32) -> Option<Route> {
    if lease.attrs.backend_type != TYPE {
        return None;
    }
    let (dst, prefix, via) = if v6 {
        let sn = lease.ipv6_subnet?;
        (
            sn.addr().to_ip(),
            sn.prefix_len(),
            IpAddr::V6(lease.attrs.public_ipv6?),
        )
    } else {
        let sn = lease.subnet?;
        (
            sn.addr().to_ip(),
            sn.prefix_len(),
            IpAddr::V4(lease.attrs.public_ip),
        )
    };
    let mut r = Route::unicast(dst, prefix);
    r.gateway = Some(via);
    r.oif = Some(oif);
    Some(r)
}

/// Every route the leases need, both families.
pub fn desired_routes(leases: &[&Lease], v4: bool, v6: bool, oif: u32) -> Vec<Route> {
    let mut out = Vec::new();
    for lease in leases {
        if v4 {
            out.extend(route_for(lease, false, oif));
        }
        if v6 {
            out.extend(route_for(lease, true, oif));
        }
    }
    out
}

fn in_net<F: IpFamily>(net: Option<Cidr<F>>, ip: IpAddr) -> bool {
    match (net, F::from_ip(ip)) {
        (Some(n), Some(a)) => n.contains(a),
        _ => false,
    }
}

/// Whether a kernel route is host-gw's: `proto boot`, via a gateway on the
/// external interface `oif`, to a destination inside the configured
/// networks. (Our own subnet's routes — the CNI bridge's, the blackhole
/// route — have no gateway.)
pub fn owns(route: &Route, config: &NetConfig, oif: u32) -> bool {
    route.protocol == RTPROT_BOOT
        && route.oif == Some(oif)
        && route.gateway.is_some()
        && (in_net(config.network, route.dst) || in_net(config.ipv6_network, route.dst))
}

/// The host-gw backend.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostGwBackend;

/// Refuses NAT: the public address must be the interface's, per family.
pub fn check_no_nat(iface: &ExternalInterface) -> Result<(), BackendError> {
    if iface.ext_addr != iface.iface_addr || iface.ext_v6_addr != iface.iface_v6_addr {
        return Err(BackendError::Refused(NAT_REFUSAL.to_string()));
    }
    Ok(())
}

/// The lease attributes host-gw publishes for `iface`.
pub fn lease_attrs(
    config: &NetConfig,
    iface: &ExternalInterface,
) -> Result<LeaseAttrs, BackendError> {
    let missing = |v: u8| {
        BackendError::Refused(format!(
            "IPv{v} is enabled but {} has no IPv{v} address",
            iface.name
        ))
    };
    let mut attrs = LeaseAttrs {
        backend_type: TYPE.to_string(),
        ..LeaseAttrs::default()
    };
    if config.enable_ipv4 {
        attrs.public_ip = iface.ext_addr.ok_or_else(|| missing(4))?;
    }
    if config.enable_ipv6 {
        attrs.public_ipv6 = Some(iface.ext_v6_addr.ok_or_else(|| missing(6))?);
    }
    Ok(attrs)
}

/// The host-gw network for `lease` (already acquired) on `iface`.
pub fn network(
    ops: SharedOps,
    config: &NetConfig,
    iface: &ExternalInterface,
    lease: Lease,
) -> RouteNetwork {
    let (v4, v6, oif) = (config.enable_ipv4, config.enable_ipv6, iface.index);
    let owner_cfg = config.clone();
    RouteNetwork::builder(ops, TYPE, lease, iface.mtu)
        .families(v4, v6)
        .routes(move |l| (l.attrs.backend_type == TYPE).then(|| desired_routes(&[l], v4, v6, oif)))
        .owner(move |r| owns(r, &owner_cfg, oif))
        .resync_every(Some(RESYNC_INTERVAL))
        .build()
}

#[async_trait::async_trait]
impl Backend for HostGwBackend {
    fn backend_type(&self) -> &'static str {
        TYPE
    }

    async fn register_network(
        &self,
        ctx: &RegisterContext<'_>,
    ) -> Result<Box<dyn Network>, BackendError> {
        let ops = ops_from_host(ctx.host, TYPE)?;
        check_no_nat(ctx.ext_iface)?;
        let attrs = lease_attrs(ctx.config, ctx.ext_iface)?;
        let lease = ctx.acquire_lease(attrs).await?;
        Ok(Box::new(network(ops, ctx.config, ctx.ext_iface, lease)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(key: &str, json: &str) -> Lease {
        Lease::new(key.parse().unwrap(), LeaseAttrs::from_json(json).unwrap())
    }

    #[test]
    fn routes_via_public_ips() {
        let a = lease(
            "10.5.2.0-24&fd00:5:2::-64",
            r#"{"PublicIP":"192.168.100.2","PublicIPv6":"fd00:100::2","BackendType":"host-gw"}"#,
        );
        let b = lease(
            "10.5.3.0-24",
            r#"{"PublicIP":"192.168.100.3","PublicIPv6":null,"BackendType":"vxlan"}"#,
        );
        let rs = desired_routes(&[&a, &b], true, true, 4);
        assert_eq!(rs.len(), 2, "the vxlan lease is ignored");
        assert_eq!(
            (
                rs[0].dst.to_string(),
                rs[0].prefix,
                rs[0].gateway.unwrap().to_string()
            ),
            ("10.5.2.0".into(), 24, "192.168.100.2".into())
        );
        assert_eq!(
            (rs[0].oif, rs[0].protocol, rs[0].onlink),
            (Some(4), RTPROT_BOOT, false)
        );
        assert_eq!(rs[1].gateway.unwrap().to_string(), "fd00:100::2");
        assert_eq!(desired_routes(&[&a], true, false, 4).len(), 1);
    }

    #[test]
    fn refuses_nat() {
        let mut iface = ExternalInterface {
            name: "eth0".into(),
            index: 2,
            mtu: 1500,
            iface_addr: Some([192, 168, 100, 1].into()),
            iface_v6_addr: None,
            ext_addr: Some([192, 168, 100, 1].into()),
            ext_v6_addr: None,
        };
        assert!(check_no_nat(&iface).is_ok());
        iface.ext_addr = Some([203, 0, 113, 1].into());
        assert_eq!(check_no_nat(&iface).unwrap_err().to_string(), NAT_REFUSAL);
    }

    mod on_fake_kernel {
        use super::*;
        use flannel_core::event::LeaseEvent;
        use flannel_netlink::fake::FakeNetlink;
        use std::sync::Arc;

        const ETH0: u32 = 2;

        fn setup() -> (Arc<FakeNetlink>, RouteNetwork, NetConfig) {
            let nl = Arc::new(FakeNetlink::new());
            assert_eq!(nl.add_link("eth0", 1500), ETH0);
            let mut config = NetConfig::parse(
                r#"{"Network":"10.5.0.0/16","IPv6Network":"fd00:5::/48","EnableIPv6":true,"Backend":{"Type":"host-gw"}}"#,
            )
            .unwrap();
            config.check().unwrap();
            let iface = ExternalInterface {
                name: "eth0".into(),
                index: ETH0,
                mtu: 1500,
                iface_addr: Some([192, 168, 100, 1].into()),
                iface_v6_addr: Some("fd00:100::1".parse().unwrap()),
                ext_addr: Some([192, 168, 100, 1].into()),
                ext_v6_addr: Some("fd00:100::1".parse().unwrap()),
            };
            let own = lease(
                "10.5.1.0-24&fd00:5:0:1::-64",
                r#"{"PublicIP":"192.168.100.1","PublicIPv6":"fd00:100::1","BackendType":"host-gw"}"#,
            );
            let ops: SharedOps = nl.clone();
            (nl.clone(), network(ops, &config, &iface, own), config)
        }

        fn peer(n: u8) -> Lease {
            lease(
                &format!("10.5.{n}.0-24&fd00:5:0:{n}::-64"),
                &format!(
                    r#"{{"PublicIP":"192.168.100.{n}","PublicIPv6":"fd00:100::{n}","BackendType":"host-gw"}}"#
                ),
            )
        }

        #[tokio::test]
        async fn events_program_and_remove_routes_without_listing() {
            let (nl, mut net, _) = setup();
            let (a, b) = (peer(2), peer(3));
            net.handle_events(&[LeaseEvent::added(a.clone())], &[&a])
                .await
                .unwrap();
            assert_eq!(
                nl.take_calls(),
                [
                    "route replace 10.5.2.0/24 via 192.168.100.2 dev if2",
                    "route replace fd00:5:0:2::/64 via fd00:100::2 dev if2",
                ]
            );
            net.handle_events(&[LeaseEvent::added(b.clone())], &[&a, &b])
                .await
                .unwrap();
            assert_eq!(nl.take_calls().len(), 2, "only the new lease's routes");
            net.handle_events(&[LeaseEvent::removed(a.clone())], &[&b])
                .await
                .unwrap();
            assert_eq!(
                nl.take_calls(),
                [
                    "route del 10.5.2.0/24 via 192.168.100.2 dev if2",
                    "route del fd00:5:0:2::/64 via fd00:100::2 dev if2",
                ]
            );
            // A vxlan lease is ignored.
            let v = lease(
                "10.5.9.0-24",
                r#"{"PublicIP":"192.168.100.9","PublicIPv6":null,"BackendType":"vxlan"}"#,
            );
            net.handle_events(&[LeaseEvent::added(v.clone())], &[&b, &v])
                .await
                .unwrap();
            assert!(nl.take_calls().is_empty());
        }

        #[tokio::test]
        async fn resync_repairs_drift_and_collects_garbage_but_leaves_foreign_routes() {
            let (nl, mut net, _) = setup();
            let (a, b) = (peer(2), peer(3));
            // Left by a previous run: a route of a lease that is gone.
            let mut stale = Route::unicast("10.5.7.0".parse().unwrap(), 24);
            stale.gateway = Some("192.168.100.7".parse().unwrap());
            stale.oif = Some(ETH0);
            nl.insert_route(stale);
            // Not ours: the underlay's connected route, and an admin's
            // static route into the overlay.
            let mut connected = Route::unicast("192.168.100.0".parse().unwrap(), 24);
            connected.protocol = flannel_netlink::RTPROT_KERNEL;
            connected.oif = Some(ETH0);
            nl.insert_route(connected.clone());
            let mut admin = Route::unicast("10.5.3.0".parse().unwrap(), 24);
            admin.protocol = flannel_netlink::RTPROT_STATIC;
            admin.gateway = Some("192.168.100.50".parse().unwrap());
            admin.oif = Some(ETH0);
            nl.insert_route(admin.clone());

            net.resync(&[&a, &b]).await.unwrap();
            let routes = nl.routes_now();
            assert!(routes.contains(&connected));
            assert!(routes.contains(&admin), "a foreign route is never replaced");
            assert!(
                !routes.iter().any(|r| r.dst.to_string() == "10.5.7.0"),
                "stale route removed"
            );
            assert!(routes.iter().any(|r| r.dst.to_string() == "10.5.2.0"));
            assert!(routes.iter().any(|r| r.dst.to_string() == "fd00:5:0:3::"));

            // No drift: a resync lists and writes nothing.
            nl.take_calls();
            net.resync(&[&a, &b]).await.unwrap();
            assert!(nl.take_writes().is_empty());

            // An admin deletes a route: the resync puts it back.
            nl.remove_route("10.5.2.0".parse().unwrap(), 24);
            net.resync(&[&a, &b]).await.unwrap();
            assert_eq!(
                nl.take_writes(),
                ["route replace 10.5.2.0/24 via 192.168.100.2 dev if2"]
            );
        }

        #[tokio::test]
        async fn a_lease_outside_the_network_is_never_programmed() {
            let (nl, mut net, _) = setup();
            let hostile = lease(
                "192.168.100.0-24",
                r#"{"PublicIP":"192.168.100.66","PublicIPv6":null,"BackendType":"host-gw"}"#,
            );
            net.handle_events(&[LeaseEvent::added(hostile.clone())], &[&hostile])
                .await
                .unwrap();
            net.resync(&[&hostile]).await.unwrap();
            assert!(nl.take_writes().is_empty());
        }

        #[tokio::test]
        async fn failures_are_reported_and_retried_by_the_next_pass() {
            let (nl, mut net, _) = setup();
            let a = peer(2);
            nl.fail_on("route replace 10.5.2.0/24");
            let e = net
                .handle_events(&[LeaseEvent::added(a.clone())], &[&a])
                .await
                .unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("route 10.5.2.0/24 via 192.168.100.2 dev if2: "),
                "{e}"
            );
            nl.clear_failures();
            nl.take_calls();
            net.resync(&[&a]).await.unwrap();
            assert_eq!(
                nl.take_writes(),
                ["route replace 10.5.2.0/24 via 192.168.100.2 dev if2"]
            );
        }
    }
}
