//! # flannel-backend-hostgw
//!
//! flannel's host-gw backend: no encapsulation; every remote subnet is routed
//! via the peer's public IP on the external interface
//! (`ip route replace 10.5.2.0/24 via 192.168.100.2 dev eth0 proto boot`),
//! for IPv4 and IPv6. All nodes must share one L2 segment, so host-gw refuses
//! to run behind NAT (public IP ≠ interface IP) with Go's message.
//!
//! The desired routes are a pure function of the leases ([`desired_routes`]);
//! [`HostGwNetwork::resync`] reconciles them with the kernel every
//! [`RESYNC_INTERVAL`], restoring a deleted route and removing routes of
//! leases that are gone. Shutdown leaves the routes in place.

use flannel_core::backend::{
    Backend, BackendError, ExternalInterface, Network, RegisterContext, follow_renewal,
};
use flannel_core::event::{EventKind, LeaseEvent};
use flannel_core::ip::{Cidr, Family as IpFamily};
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_netlink::{Family, Netlink, RTPROT_BOOT, Route, reconcile_routes};
use std::net::IpAddr;
use std::time::Duration;
use tracing::info;

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

/// The host-gw backend.
pub struct HostGwBackend {
    netlink: Netlink,
}

impl HostGwBackend {
    /// A backend programming routes through `netlink`.
    pub fn new(netlink: Netlink) -> HostGwBackend {
        HostGwBackend { netlink }
    }
}

/// Refuses NAT: the public address must be the interface's, per family.
pub fn check_no_nat(iface: &ExternalInterface) -> Result<(), BackendError> {
    if iface.ext_addr != iface.iface_addr || iface.ext_v6_addr != iface.iface_v6_addr {
        return Err(BackendError::Refused(NAT_REFUSAL.to_string()));
    }
    Ok(())
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
        let iface = ctx.ext_iface;
        check_no_nat(iface)?;
        let mut attrs = LeaseAttrs {
            backend_type: TYPE.to_string(),
            ..LeaseAttrs::default()
        };
        if ctx.config.enable_ipv4 {
            attrs.public_ip = iface.ext_addr.ok_or_else(|| {
                BackendError::Refused(format!(
                    "IPv4 is enabled but {} has no IPv4 address",
                    iface.name
                ))
            })?;
        }
        if ctx.config.enable_ipv6 {
            attrs.public_ipv6 = Some(iface.ext_v6_addr.ok_or_else(|| {
                BackendError::Refused(format!(
                    "IPv6 is enabled but {} has no IPv6 address",
                    iface.name
                ))
            })?);
        }
        let lease = ctx.acquire_lease(attrs).await?;
        Ok(Box::new(HostGwNetwork {
            netlink: self.netlink.clone(),
            lease,
            mtu: iface.mtu,
            oif: iface.index,
            v4: ctx.config.enable_ipv4,
            v6: ctx.config.enable_ipv6,
            network: ctx.config.network,
            ipv6_network: ctx.config.ipv6_network,
        }))
    }
}

/// The registered host-gw network.
pub struct HostGwNetwork {
    netlink: Netlink,
    lease: Lease,
    mtu: u32,
    oif: u32,
    v4: bool,
    v6: bool,
    network: Option<flannel_core::ip::Ip4Net>,
    ipv6_network: Option<flannel_core::ip::Ip6Net>,
}

#[async_trait::async_trait]
impl Network for HostGwNetwork {
    fn lease(&self) -> &Lease {
        &self.lease
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    async fn handle_events(&mut self, events: &[LeaseEvent]) -> Result<(), BackendError> {
        let mut errors = Vec::new();
        for event in events {
            if event.kind == EventKind::Added && event.lease.attrs.backend_type != TYPE {
                info!(
                    "Ignoring non-host-gw subnet: type={}",
                    event.lease.attrs.backend_type
                );
                continue;
            }
            for v6 in [false, true]
                .into_iter()
                .filter(|v6| if *v6 { self.v6 } else { self.v4 })
            {
                let route = match event.kind {
                    EventKind::Added => route_for(&event.lease, v6, self.oif),
                    // A removal may carry only the key: delete by destination.
                    EventKind::Removed => {
                        let sn = if v6 {
                            event
                                .lease
                                .ipv6_subnet
                                .map(|n| (n.addr().to_ip(), n.prefix_len()))
                        } else {
                            event
                                .lease
                                .subnet
                                .map(|n| (n.addr().to_ip(), n.prefix_len()))
                        };
                        sn.map(|(d, p)| Route {
                            oif: Some(self.oif),
                            ..Route::unicast(d, p)
                        })
                    }
                };
                let Some(route) = route else { continue };
                let what = format!(
                    "route {}/{} via {:?} dev index {}",
                    route.dst, route.prefix, route.gateway, self.oif
                );
                let result = match event.kind {
                    EventKind::Added => self.netlink.replace_route(&route).await,
                    EventKind::Removed => self.netlink.del_route(&route).await,
                };
                if let Err(e) = result {
                    errors.push(BackendError::datapath(what, e));
                }
            }
        }
        BackendError::collect(errors)
    }

    async fn resync(&mut self, leases: &[&Lease]) -> Result<(), BackendError> {
        let desired = desired_routes(leases, self.v4, self.v6, self.oif);
        let own = [
            self.lease.subnet.map(|n| n.addr().to_ip()),
            self.lease.ipv6_subnet.map(|n| n.addr().to_ip()),
        ];
        let mut errors = Vec::new();
        for (enabled, family) in [(self.v4, Family::V4), (self.v6, Family::V6)] {
            if !enabled {
                continue;
            }
            let have = match self.netlink.routes(family).await {
                Ok(h) => h,
                Err(e) => {
                    errors.push(BackendError::datapath("route dump", e));
                    continue;
                }
            };
            let (net4, net6, oif) = (self.network, self.ipv6_network, self.oif);
            let wanted: Vec<Route> = desired
                .iter()
                .filter(|r| Family::of(r.dst) == family)
                .cloned()
                .collect();
            let plan = reconcile_routes(&wanted, &have, |r: &Route| {
                r.protocol == RTPROT_BOOT
                    && r.oif == Some(oif)
                    && r.gateway.is_some()
                    && !own.contains(&Some(r.dst))
                    && (in_net(net4, r.dst) || in_net(net6, r.dst))
            });
            for r in &plan.replace {
                info!(
                    "Route to {}/{} via {:?} is missing or wrong; restoring it",
                    r.dst, r.prefix, r.gateway
                );
            }
            if let Err(e) = self.netlink.apply_routes(&plan).await {
                errors.push(BackendError::datapath("routes", e));
            }
        }
        BackendError::collect(errors)
    }

    fn resync_interval(&self) -> Option<Duration> {
        Some(RESYNC_INTERVAL)
    }

    async fn lease_changed(&mut self, lease: &Lease) -> Result<(), BackendError> {
        follow_renewal(&mut self.lease, lease, TYPE)
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
}
