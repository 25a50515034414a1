//! External interface selection: which host interface and addresses flannel
//! uses, as Go flanneld's `LookupExtIface` decides them.
//!
//! The inputs are the flags `--iface` (repeatable; a name or an IP address),
//! `--iface-regex` (repeatable), `--iface-can-reach`, `--public-ip` and
//! `--public-ipv6`, carried by [`IfaceSelection`], plus the public addresses
//! a subnet manager keeps for the node (Kubernetes' `node-public-ip`
//! annotations), which override the flags. [`select`] returns the
//! [`ExternalInterface`] every backend registers with.
//!
//! The rules, in Go's order:
//!
//! * No `--iface`, `--iface-regex` or `--iface-can-reach`: the interface that
//!   owns the public IPv4 address, else the one owning the public IPv6
//!   address, else the interface of the default route (in dual stack the v4
//!   and v6 default routes must use the same interface).
//! * Otherwise each `--iface` in order, then each `--iface-regex` in order,
//!   then `--iface-can-reach`; the first that finds an interface wins, and
//!   each failure is logged as a warning.
//! * A regex (unanchored, Rust `regex` syntax, which matches Go's RE2 for
//!   the patterns people use) first looks for an interface with an address
//!   of the stack's families whose text matches (dual stack: a v4 and a v6
//!   address), in interface index order, then for an interface whose name
//!   matches.
//! * Addresses not pinned by the rule above are chosen by preference: global
//!   before link-local, permanent before dynamic, non-temporary before
//!   temporary; deprecated, loopback, multicast and unspecified addresses
//!   never.
//! * The external addresses are the public ones when given, else the
//!   interface's.
//!
//! # Example
//!
//! ```no_run
//! use flannel_core::config::Stack;
//! use flannel_netlink::Netlink;
//! use flannel_netlink::iface::{IfaceSelection, select};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let (nl, conn) = Netlink::connect()?;
//! tokio::spawn(conn);
//!
//! // `--iface=eth1 --iface-regex=^en --public-ip=203.0.113.7`
//! let selection = IfaceSelection {
//!     ifaces: vec!["eth1".into()],
//!     regexes: vec!["^en".into()],
//!     public_ip: IfaceSelection::parse_public_ip("203.0.113.7")?,
//!     ..IfaceSelection::default()
//! };
//! let ext = select(&nl, &selection, Stack::Ipv4, (None, None)).await?;
//! println!("{} (mtu {}) reached at {:?}", ext.name, ext.mtu, ext.ext_addr);
//! # Ok(())
//! # }
//! ```

use std::net::{AddrParseError, IpAddr, Ipv4Addr, Ipv6Addr};

use flannel_core::backend::ExternalInterface;
use flannel_core::config::Stack;
use regex::Regex;
use tracing::{info, warn};

use crate::{AddrInfo, Family, LinkInfo, Netlink, NetlinkError, Route};

/// What the operator asked for: Go flanneld's interface flags, typed.
///
/// `Default` is "no flags": the default-route interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceSelection {
    /// `--iface` (repeatable): interface names or IP addresses, tried in
    /// order.
    pub ifaces: Vec<String>,
    /// `--iface-regex` (repeatable): patterns matched against interface
    /// addresses, then names, tried in order after [`Self::ifaces`]. A
    /// pattern that does not compile counts as a failed attempt.
    pub regexes: Vec<String>,
    /// `--iface-can-reach`: an IP address; the interface the kernel routes
    /// it through (`ip route get`) is used, tried last. Kept as text so an
    /// invalid address is one more failed attempt, as in Go.
    pub can_reach: Option<String>,
    /// `--public-ip`: the IPv4 address other nodes reach this one at.
    pub public_ip: Option<Ipv4Addr>,
    /// `--public-ipv6`: the IPv6 address other nodes reach this one at.
    pub public_ipv6: Option<Ipv6Addr>,
}

impl IfaceSelection {
    /// Parses `--public-ip`: empty is unset, anything else must be an IPv4
    /// address (`invalid public IP address: <x>`).
    pub fn parse_public_ip(text: &str) -> Result<Option<Ipv4Addr>, IfaceError> {
        if text.is_empty() {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|source| IfaceError::InvalidPublicIp {
                input: text.to_owned(),
                source,
            })
    }

    /// Parses `--public-ipv6`: empty is unset, anything else must be an IPv6
    /// address (`invalid public IPv6 address: <x>`).
    pub fn parse_public_ipv6(text: &str) -> Result<Option<Ipv6Addr>, IfaceError> {
        if text.is_empty() {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|source| IfaceError::InvalidPublicIpv6 {
                input: text.to_owned(),
                source,
            })
    }

    /// Whether none of `--iface`, `--iface-regex`, `--iface-can-reach` was
    /// given (selection then falls back to the public IP or the default
    /// route).
    pub fn is_unconstrained(&self) -> bool {
        self.ifaces.is_empty() && self.regexes.is_empty() && self.can_reach.is_none()
    }
}

/// Why no external interface could be chosen. The texts are Go flanneld's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IfaceError {
    /// `--public-ip` is not an IPv4 address.
    #[error("invalid public IP address: {input}")]
    InvalidPublicIp {
        /// The rejected text.
        input: String,
        /// The parser's complaint.
        #[source]
        source: AddrParseError,
    },
    /// `--public-ipv6` is not an IPv6 address.
    #[error("invalid public IPv6 address: {input}")]
    InvalidPublicIpv6 {
        /// The rejected text.
        input: String,
        /// The parser's complaint.
        #[source]
        source: AddrParseError,
    },
    /// An `--iface-regex` pattern does not compile.
    #[error("invalid --iface-regex pattern {pattern}")]
    InvalidRegex {
        /// The pattern.
        pattern: String,
        /// The regex compiler's complaint.
        #[source]
        source: Box<regex::Error>,
    },
    /// `--iface-can-reach` is not an IP address.
    #[error("invalid --iface-can-reach address {input}")]
    InvalidCanReach {
        /// The rejected text.
        input: String,
        /// The parser's complaint.
        #[source]
        source: AddrParseError,
    },
    /// No interface has the address given as `--iface` or `--public-ip`.
    #[error("error looking up interface {address}: no interface has this address")]
    NoInterfaceWithAddress {
        /// The address looked for.
        address: IpAddr,
    },
    /// No interface has the name given as `--iface`.
    #[error("error looking up interface {name}: no such interface")]
    NoSuchInterface {
        /// The name looked for.
        name: String,
    },
    /// An interface found through an address or a route disappeared before
    /// it could be read.
    #[error("error looking up interface with index {index}: it vanished")]
    InterfaceVanished {
        /// Its index.
        index: u32,
    },
    /// Dual stack with an IPv4 `--iface` and a `--public-ipv6` owned by
    /// another interface.
    #[error("v6 interface {v6} must be the same with v4 interface {v4}")]
    InterfaceMismatch {
        /// The interface owning the IPv4 address.
        v4: String,
        /// The interface owning the IPv6 address.
        v6: String,
    },
    /// The chosen interface has no usable IPv4 address.
    #[error("failed to find IPv4 address for interface {name}")]
    NoIpv4Address {
        /// The interface.
        name: String,
    },
    /// The chosen interface has no usable IPv6 address.
    #[error("failed to find IPv6 address for interface {name}")]
    NoIpv6Address {
        /// The interface.
        name: String,
    },
    /// The chosen interface reports MTU 0.
    #[error("failed to determine MTU for {name} interface")]
    NoMtu {
        /// The interface.
        name: String,
    },
    /// An `--iface-regex` matched no address and no interface name.
    #[error(
        "could not match pattern {pattern} to any of the available network interfaces ({available})"
    )]
    NoRegexMatch {
        /// The pattern.
        pattern: String,
        /// Every interface with its addresses, `name:[ip ip]`, comma separated.
        available: String,
    },
    /// `ip route get <--iface-can-reach>` found no route.
    #[error("no route to {address}")]
    NoRoute {
        /// The `--iface-can-reach` address.
        address: IpAddr,
    },
    /// The route to `--iface-can-reach` has no output interface.
    #[error("route to {address} has no output interface")]
    RouteWithoutInterface {
        /// The `--iface-can-reach` address.
        address: IpAddr,
    },
    /// The main table has no default route of a family the network needs.
    #[error("unable to find{} default route", v6_label(*.family))]
    NoDefaultRoute {
        /// The family of the missing route.
        family: Family,
    },
    /// The default route has no output interface.
    #[error("found{} default route but could not determine interface", v6_label(*.family))]
    DefaultRouteWithoutInterface {
        /// The family of the route.
        family: Family,
    },
    /// Dual stack whose v4 and v6 default routes leave through different
    /// interfaces.
    #[error(
        "v6 default route interface {v6} must be the same with v4 default route interface {v4}"
    )]
    DefaultRouteMismatch {
        /// The v4 default route's interface.
        v4: String,
        /// The v6 default route's interface.
        v6: String,
    },
    /// Listing interfaces, addresses or routes failed.
    #[error("cannot read the host's interfaces, addresses or routes")]
    Netlink(#[source] NetlinkError),
    /// Neither the public address's interface nor the default-route
    /// interface could be used (no `--iface*` flag was given).
    #[error("Failed to find any valid interface to use")]
    NoValidInterface {
        /// Why.
        #[source]
        source: Box<IfaceError>,
    },
    /// Every `--iface`, `--iface-regex` and `--iface-can-reach` failed (each
    /// failure was logged as a warning).
    #[error("Failed to find interface to use that matches the interfaces and/or regexes provided")]
    NoMatchingInterface,
}

fn v6_label(family: Family) -> &'static str {
    match family {
        Family::V4 => "",
        Family::V6 => " v6",
    }
}

impl From<NetlinkError> for IfaceError {
    fn from(e: NetlinkError) -> IfaceError {
        IfaceError::Netlink(e)
    }
}

/// Chooses the external interface and the public addresses as flanneld does
/// (see the [module documentation](self)).
///
/// `stored` are the public addresses the subnet manager keeps for this node
/// ([`flannel_core::manager::SubnetManager::stored_public_ips`]); each one
/// given overrides the matching `public_ip*` of `selection`.
///
/// Logs Go's `Using interface with name ... and address ...` and external
/// address lines at info level, and each failed `--iface*` attempt as a
/// warning.
pub async fn select(
    nl: &Netlink,
    selection: &IfaceSelection,
    stack: Stack,
    stored: (Option<Ipv4Addr>, Option<Ipv6Addr>),
) -> Result<ExternalInterface, IfaceError> {
    let public_ip = stored.0.or(selection.public_ip);
    let public_ipv6 = stored.1.or(selection.public_ipv6);
    let found = if selection.is_unconstrained() {
        let r = if let Some(ip) = public_ip {
            by_address(nl, IpAddr::V4(ip), stack, public_ipv6).await
        } else if let Some(ip) = public_ipv6 {
            by_address(nl, IpAddr::V6(ip), stack, None).await
        } else {
            by_default_route(nl, stack).await
        };
        r.map_err(|e| IfaceError::NoValidInterface {
            source: Box::new(e),
        })?
    } else {
        by_flags(nl, selection, stack, public_ipv6).await?
    };
    let shown: Vec<String> = found
        .v4
        .map(|a| a.to_string())
        .into_iter()
        .chain(found.v6.map(|a| a.to_string()))
        .collect();
    info!(
        "Using interface with name {} and address {}",
        found.link.name,
        shown.join(", ")
    );
    match (public_ip, found.v4) {
        (Some(p), _) => info!("Using {p} as external address"),
        (None, Some(a)) => info!("Defaulting external address to interface address ({a})"),
        _ => {}
    }
    if let Some(p) = public_ipv6 {
        info!("Using {p} as external IPv6 address");
    }
    Ok(ExternalInterface {
        name: found.link.name.clone(),
        index: found.link.index,
        mtu: found.link.mtu,
        iface_addr: found.v4,
        iface_v6_addr: found.v6,
        ext_addr: public_ip.or(found.v4),
        ext_v6_addr: public_ipv6.or(found.v6),
    })
}

/// Each `--iface`, then each `--iface-regex`, then `--iface-can-reach`.
async fn by_flags(
    nl: &Netlink,
    selection: &IfaceSelection,
    stack: Stack,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<Found, IfaceError> {
    for spec in &selection.ifaces {
        let r = match spec.parse::<IpAddr>() {
            Ok(ip) => by_address(nl, ip, stack, public_ipv6).await,
            Err(_) => by_name(nl, spec, stack).await,
        };
        match r {
            Ok(f) => return Ok(f),
            Err(e) => warn!(
                "Could not find valid interface matching {spec}: {}",
                chain(&e)
            ),
        }
    }
    for pattern in &selection.regexes {
        match by_regex(nl, pattern, stack).await {
            Ok(f) => return Ok(f),
            Err(e) => warn!(
                "Could not find valid interface matching {pattern}: {}",
                chain(&e)
            ),
        }
    }
    if let Some(target) = &selection.can_reach {
        match by_can_reach(nl, target, stack).await {
            Ok(f) => return Ok(f),
            Err(e) => warn!(
                "Could not find valid interface matching {target}: {}",
                chain(&e)
            ),
        }
    }
    Err(IfaceError::NoMatchingInterface)
}

/// An error and its sources, `a: b: c`, for one log line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let next = s.to_string();
        // NetlinkError's text already embeds its io::Error source.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cur = s.source();
    }
    text
}

/// The chosen interface and the addresses in use on it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    link: LinkInfo,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
}

fn is_usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => !v.is_loopback() && !v.is_multicast() && !v.is_unspecified(),
        IpAddr::V6(v) => !v.is_loopback() && !v.is_multicast() && !v.is_unspecified(),
    }
}

/// The addresses of `family` on interface `index` in Go's preference order:
/// global before link-local, permanent before dynamic, non-temporary before
/// temporary (stable otherwise); deprecated and non-unicast ones left out.
fn preferred(addrs: &[AddrInfo], index: u32, family: Family) -> Vec<IpAddr> {
    let mut cands: Vec<&AddrInfo> = addrs
        .iter()
        .filter(|a| a.index == index && !a.deprecated && Family::of(a.addr) == family)
        .filter(|a| is_usable(a.addr))
        .collect();
    cands.sort_by_key(|a| (a.is_link_local(), !a.permanent, a.temporary));
    cands.into_iter().map(|a| a.addr).collect()
}

fn first_v4(ips: impl IntoIterator<Item = IpAddr>) -> Option<Ipv4Addr> {
    ips.into_iter().find_map(|ip| match ip {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    })
}

fn first_v6(ips: impl IntoIterator<Item = IpAddr>) -> Option<Ipv6Addr> {
    ips.into_iter().find_map(|ip| match ip {
        IpAddr::V6(v) => Some(v),
        IpAddr::V4(_) => None,
    })
}

/// Fills in the addresses the stack needs but no rule pinned, and checks
/// the MTU.
fn complete(
    link: LinkInfo,
    addrs: &[AddrInfo],
    stack: Stack,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
) -> Result<Found, IfaceError> {
    let v4 = match v4 {
        Some(a) => Some(a),
        None if stack != Stack::Ipv6 => Some(
            first_v4(preferred(addrs, link.index, Family::V4)).ok_or_else(|| {
                IfaceError::NoIpv4Address {
                    name: link.name.clone(),
                }
            })?,
        ),
        None => None,
    };
    let v6 = match v6 {
        Some(a) => Some(a),
        None if stack != Stack::Ipv4 => Some(
            first_v6(preferred(addrs, link.index, Family::V6)).ok_or_else(|| {
                IfaceError::NoIpv6Address {
                    name: link.name.clone(),
                }
            })?,
        ),
        None => None,
    };
    if link.mtu == 0 {
        return Err(IfaceError::NoMtu { name: link.name });
    }
    Ok(Found { link, v4, v6 })
}

fn owner_of(addrs: &[AddrInfo], ip: IpAddr) -> Result<u32, IfaceError> {
    addrs
        .iter()
        .find(|a| a.addr == ip)
        .map(|a| a.index)
        .ok_or(IfaceError::NoInterfaceWithAddress { address: ip })
}

async fn link_at(nl: &Netlink, index: u32) -> Result<LinkInfo, IfaceError> {
    nl.link_by_index(index)
        .await?
        .ok_or(IfaceError::InterfaceVanished { index })
}

/// `--iface=<ip>` or `--public-ip`: the interface that has this address.
/// In dual stack an IPv4 address and a `--public-ipv6` must be on the same
/// interface.
async fn by_address(
    nl: &Netlink,
    ip: IpAddr,
    stack: Stack,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<Found, IfaceError> {
    let addrs = nl.all_addresses().await?;
    let index = owner_of(&addrs, ip)?;
    let link = link_at(nl, index).await?;
    let (v4, mut v6) = match ip {
        IpAddr::V4(a) => (Some(a), None),
        IpAddr::V6(a) => (None, Some(a)),
    };
    if let (Stack::Dual, IpAddr::V4(_), Some(p6)) = (stack, ip, public_ipv6) {
        let index6 = owner_of(&addrs, IpAddr::V6(p6))?;
        if index6 != index {
            let other = link_at(nl, index6).await?;
            return Err(IfaceError::InterfaceMismatch {
                v4: link.name,
                v6: other.name,
            });
        }
        v6 = Some(p6);
    }
    complete(link, &addrs, stack, v4, v6)
}

/// `--iface=<name>`.
async fn by_name(nl: &Netlink, name: &str, stack: Stack) -> Result<Found, IfaceError> {
    let link = nl
        .link_by_name(name)
        .await?
        .ok_or_else(|| IfaceError::NoSuchInterface {
            name: name.to_owned(),
        })?;
    let addrs = nl.all_addresses().await?;
    complete(link, &addrs, stack, None, None)
}

/// Compiles an `--iface-regex` pattern.
fn compile(pattern: &str) -> Result<Regex, IfaceError> {
    Regex::new(pattern).map_err(|source| IfaceError::InvalidRegex {
        pattern: pattern.to_owned(),
        source: Box::new(source),
    })
}

/// The regex rule over a snapshot of the links (any order) and addresses:
/// first an interface with matching address(es) of the stack's families,
/// then one with a matching name. Returns the link and the matched
/// addresses.
fn match_regex(
    re: &Regex,
    links: &[LinkInfo],
    addrs: &[AddrInfo],
    stack: Stack,
) -> Option<(LinkInfo, Option<Ipv4Addr>, Option<Ipv6Addr>)> {
    let mut ordered: Vec<&LinkInfo> = links.iter().collect();
    ordered.sort_by_key(|l| l.index);
    let matching = |index, family| {
        preferred(addrs, index, family)
            .into_iter()
            .filter(|ip| re.is_match(&ip.to_string()))
    };
    for link in &ordered {
        // Only the families the network carries: a v4-only network never
        // uses (or reports) a v6 interface address.
        let m4 = first_v4(matching(link.index, Family::V4)).filter(|_| stack != Stack::Ipv6);
        let m6 = first_v6(matching(link.index, Family::V6)).filter(|_| stack != Stack::Ipv4);
        let hit = match stack {
            Stack::Ipv4 => m4.is_some(),
            Stack::Ipv6 => m6.is_some(),
            Stack::Dual => m4.is_some() && m6.is_some(),
        };
        if hit {
            return Some(((*link).clone(), m4, m6));
        }
    }
    ordered
        .into_iter()
        .find(|l| re.is_match(&l.name))
        .map(|l| (l.clone(), None, None))
}

/// `name:[ip ip], ...` for the no-match error.
fn describe(links: &[LinkInfo], addrs: &[AddrInfo]) -> String {
    let mut ordered: Vec<&LinkInfo> = links.iter().collect();
    ordered.sort_by_key(|l| l.index);
    let each: Vec<String> = ordered
        .iter()
        .map(|l| {
            let ips: Vec<String> = addrs
                .iter()
                .filter(|a| a.index == l.index)
                .map(|a| a.addr.to_string())
                .collect();
            format!("{}:[{}]", l.name, ips.join(" "))
        })
        .collect();
    each.join(", ")
}

/// `--iface-regex`.
async fn by_regex(nl: &Netlink, pattern: &str, stack: Stack) -> Result<Found, IfaceError> {
    let re = compile(pattern)?;
    let links = nl.links().await?;
    let addrs = nl.all_addresses().await?;
    match match_regex(&re, &links, &addrs, stack) {
        Some((link, v4, v6)) => complete(link, &addrs, stack, v4, v6),
        None => Err(IfaceError::NoRegexMatch {
            pattern: pattern.to_owned(),
            available: describe(&links, &addrs),
        }),
    }
}

/// `--iface-can-reach`: the output interface of `ip route get <target>`,
/// with the route's preferred source as the address.
async fn by_can_reach(nl: &Netlink, target: &str, stack: Stack) -> Result<Found, IfaceError> {
    let address: IpAddr = target
        .parse()
        .map_err(|source| IfaceError::InvalidCanReach {
            input: target.to_owned(),
            source,
        })?;
    let routes = nl.route_get(address).await?;
    let route = routes.first().ok_or(IfaceError::NoRoute { address })?;
    let oif = route
        .oif
        .ok_or(IfaceError::RouteWithoutInterface { address })?;
    let link = link_at(nl, oif).await?;
    let addrs = nl.all_addresses().await?;
    let src = route.prefsrc;
    complete(link, &addrs, stack, first_v4(src), first_v6(src))
}

/// The output interface of the main table's default route of `family`.
fn default_route_oif(routes: &[Route], family: Family) -> Result<u32, IfaceError> {
    let default = routes
        .iter()
        .find(|r| r.prefix == 0 && Family::of(r.dst) == family)
        .ok_or(IfaceError::NoDefaultRoute { family })?;
    default
        .oif
        .ok_or(IfaceError::DefaultRouteWithoutInterface { family })
}

/// The default route's interface (the same for v4 and v6 in dual stack).
async fn by_default_route(nl: &Netlink, stack: Stack) -> Result<Found, IfaceError> {
    let oif4 = match stack {
        Stack::Ipv6 => None,
        _ => Some(default_route_oif(
            &nl.routes(Family::V4).await?,
            Family::V4,
        )?),
    };
    let oif6 = match stack {
        Stack::Ipv4 => None,
        _ => Some(default_route_oif(
            &nl.routes(Family::V6).await?,
            Family::V6,
        )?),
    };
    if let (Some(a), Some(b)) = (oif4, oif6)
        && a != b
    {
        return Err(IfaceError::DefaultRouteMismatch {
            v4: nl.dev_label(a).await,
            v6: nl.dev_label(b).await,
        });
    }
    let index = oif4
        .or(oif6)
        .ok_or(IfaceError::NoDefaultRoute { family: Family::V4 })?;
    let link = link_at(nl, index).await?;
    let addrs = nl.all_addresses().await?;
    complete(link, &addrs, stack, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            mtu: 1500,
            mac: None,
            up: true,
            kind: None,
            vxlan: None,
        }
    }

    fn addr(index: u32, ip: &str) -> AddrInfo {
        AddrInfo {
            index,
            addr: ip.parse().unwrap(),
            prefix: 24,
            permanent: true,
            deprecated: false,
            temporary: false,
            scope: 0,
        }
    }

    fn host() -> (Vec<LinkInfo>, Vec<AddrInfo>) {
        // Deliberately not in index order: the rule walks index order.
        let links = vec![link(3, "eth1"), link(1, "lo"), link(2, "eth0")];
        let addrs = vec![
            addr(1, "127.0.0.1"),
            addr(1, "::1"),
            addr(2, "192.168.1.10"),
            addr(2, "fe80::1"),
            addr(2, "2001:db8::10"),
            addr(3, "10.0.0.5"),
        ];
        (links, addrs)
    }

    fn re(p: &str) -> Regex {
        compile(p).unwrap()
    }

    #[test]
    fn public_ip_parsing() {
        assert_eq!(IfaceSelection::parse_public_ip("").unwrap(), None);
        assert_eq!(
            IfaceSelection::parse_public_ip("203.0.113.7").unwrap(),
            Some(Ipv4Addr::new(203, 0, 113, 7))
        );
        let e = IfaceSelection::parse_public_ip("2001:db8::1").unwrap_err();
        assert_eq!(e.to_string(), "invalid public IP address: 2001:db8::1");
        assert!(std::error::Error::source(&e).is_some());
        let e = IfaceSelection::parse_public_ip("nope").unwrap_err();
        assert_eq!(e.to_string(), "invalid public IP address: nope");

        assert_eq!(IfaceSelection::parse_public_ipv6("").unwrap(), None);
        assert_eq!(
            IfaceSelection::parse_public_ipv6("2001:db8::1").unwrap(),
            Some("2001:db8::1".parse().unwrap())
        );
        let e = IfaceSelection::parse_public_ipv6("192.0.2.1").unwrap_err();
        assert_eq!(e.to_string(), "invalid public IPv6 address: 192.0.2.1");
    }

    #[test]
    fn unconstrained_means_no_iface_flags() {
        let mut s = IfaceSelection {
            public_ip: Some(Ipv4Addr::LOCALHOST),
            ..IfaceSelection::default()
        };
        assert!(s.is_unconstrained());
        s.can_reach = Some("10.0.0.1".into());
        assert!(!s.is_unconstrained());
    }

    #[test]
    fn invalid_regex_is_an_error_with_a_source() {
        let e = compile("(").unwrap_err();
        assert!(matches!(e, IfaceError::InvalidRegex { ref pattern, .. } if pattern == "("));
        assert_eq!(e.to_string(), "invalid --iface-regex pattern (");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn regex_prefers_addresses_over_names_in_index_order() {
        let (links, addrs) = host();
        // "1" is in 192.168.1.10 (eth0, index 2) and in the name "eth1":
        // an address match wins.
        let (l, v4, v6) = match_regex(&re("1"), &links, &addrs, Stack::Ipv4).unwrap();
        assert_eq!(l.name, "eth0");
        assert_eq!(v4, Some(Ipv4Addr::new(192, 168, 1, 10)));
        assert_eq!(v6, None);
        // Unanchored: "^10\." matches only eth1's address.
        let (l, v4, _) = match_regex(&re(r"^10\."), &links, &addrs, Stack::Ipv4).unwrap();
        assert_eq!(
            (l.name.as_str(), v4),
            ("eth1", Some(Ipv4Addr::new(10, 0, 0, 5)))
        );
        // No address matches: the first matching name.
        let (l, v4, v6) = match_regex(&re("^eth"), &links, &addrs, Stack::Ipv4).unwrap();
        assert_eq!((l.name.as_str(), v4, v6), ("eth0", None, None));
        assert!(match_regex(&re("^wlan"), &links, &addrs, Stack::Ipv4).is_none());
    }

    #[test]
    fn regex_stack_rules() {
        let (links, addrs) = host();
        // v6 stack: only v6 addresses count; the loopback is never a candidate.
        let (l, _, v6) = match_regex(&re("db8"), &links, &addrs, Stack::Ipv6).unwrap();
        assert_eq!(l.name, "eth0");
        assert_eq!(v6, Some("2001:db8::10".parse().unwrap()));
        assert!(match_regex(&re("^::1$"), &links, &addrs, Stack::Ipv6).is_none());
        // Dual: one pattern must match a v4 and a v6 address of one link.
        let (l, v4, v6) = match_regex(&re("192|2001"), &links, &addrs, Stack::Dual).unwrap();
        assert_eq!(l.name, "eth0");
        assert!(v4.is_some() && v6.is_some());
        // eth1 has no v6 address: no address match, and no name matches "10".
        assert!(match_regex(&re(r"^10\."), &links, &addrs, Stack::Dual).is_none());
    }

    #[test]
    fn no_regex_match_lists_interfaces() {
        let (links, addrs) = host();
        assert_eq!(
            describe(&links, &addrs),
            "lo:[127.0.0.1 ::1], eth0:[192.168.1.10 fe80::1 2001:db8::10], eth1:[10.0.0.5]"
        );
        let e = IfaceError::NoRegexMatch {
            pattern: "^wlan".into(),
            available: describe(&links[..1], &addrs),
        };
        assert_eq!(
            e.to_string(),
            "could not match pattern ^wlan to any of the available network interfaces (eth1:[10.0.0.5])"
        );
    }

    #[test]
    fn address_preference() {
        let mut a = vec![
            AddrInfo {
                permanent: false,
                ..addr(2, "2001:db8::aa")
            },
            addr(2, "fe80::1"),
            AddrInfo {
                temporary: true,
                ..addr(2, "2001:db8::bb")
            },
            addr(2, "2001:db8::cc"),
            AddrInfo {
                deprecated: true,
                ..addr(2, "2001:db8::dd")
            },
            addr(2, "ff02::1"),
            addr(3, "2001:db8::ee"),
        ];
        let order: Vec<String> = preferred(&a, 2, Family::V6)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            order,
            ["2001:db8::cc", "2001:db8::bb", "2001:db8::aa", "fe80::1"]
        );
        a.retain(|x| x.addr.to_string() == "fe80::1");
        assert_eq!(preferred(&a, 2, Family::V6), [a[0].addr]);
        assert!(preferred(&a, 2, Family::V4).is_empty());
    }

    #[test]
    fn complete_fills_addresses_and_checks_mtu() {
        let (_, addrs) = host();
        let f = complete(link(2, "eth0"), &addrs, Stack::Dual, None, None).unwrap();
        assert_eq!(f.v4, Some(Ipv4Addr::new(192, 168, 1, 10)));
        assert_eq!(f.v6, Some("2001:db8::10".parse().unwrap()));
        let f = complete(link(2, "eth0"), &addrs, Stack::Ipv4, None, None).unwrap();
        assert_eq!(f.v6, None);
        let e = complete(link(3, "eth1"), &addrs, Stack::Ipv6, None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to find IPv6 address for interface eth1"
        );
        let e = complete(link(9, "eth9"), &addrs, Stack::Ipv4, None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to find IPv4 address for interface eth9"
        );
        let mut zero = link(2, "eth0");
        zero.mtu = 0;
        let e = complete(zero, &addrs, Stack::Ipv4, None, None).unwrap_err();
        assert_eq!(e.to_string(), "failed to determine MTU for eth0 interface");
    }

    #[test]
    fn default_route_rules() {
        let mut r = Route::unicast("0.0.0.0".parse().unwrap(), 0);
        let routes = vec![Route::unicast("10.0.0.0".parse().unwrap(), 8), r.clone()];
        let e = default_route_oif(&routes, Family::V4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "found default route but could not determine interface"
        );
        r.oif = Some(7);
        assert_eq!(default_route_oif(&[r], Family::V4).unwrap(), 7);
        let e = default_route_oif(&[], Family::V6).unwrap_err();
        assert_eq!(e.to_string(), "unable to find v6 default route");
        let e = default_route_oif(&routes[..1], Family::V4).unwrap_err();
        assert_eq!(e.to_string(), "unable to find default route");
        let e = IfaceError::DefaultRouteMismatch {
            v4: "eth0".into(),
            v6: "eth1".into(),
        };
        assert_eq!(
            e.to_string(),
            "v6 default route interface eth1 must be the same with v4 default route interface eth0"
        );
    }

    #[test]
    fn wrapper_texts_keep_the_cause() {
        let e = IfaceError::NoValidInterface {
            source: Box::new(IfaceError::NoDefaultRoute { family: Family::V4 }),
        };
        assert_eq!(
            chain(&e),
            "Failed to find any valid interface to use: unable to find default route"
        );
        assert_eq!(
            IfaceError::NoMatchingInterface.to_string(),
            "Failed to find interface to use that matches the interfaces and/or regexes provided"
        );
    }
}
