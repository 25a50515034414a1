//! The kernel state the remote leases need, as pure functions.
//!
//! [`desired_state`] turns (one of our devices, all remote leases, the
//! DirectRouting decisions) into the neighbours, FDB entries and routes that
//! device needs; [`owns`] says which kernel routes are the backend's. The
//! network applies both through
//! [`Reconciler`](flannel_core::reconcile::Reconciler)s.

use crate::options::{TYPE, VxlanLeaseData};
use flannel_core::ip::{Cidr, Family, Ip4Net, Ip6Net};
use flannel_core::key::SubnetKey;
use flannel_core::lease::Lease;
use flannel_netlink::sets::{FdbObject, Neighbour};
use flannel_netlink::{Mac, RTPROT_BOOT, Route};
use std::collections::HashMap;
use std::net::IpAddr;

/// One of our vxlan devices, as the desired state needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    /// Whether this is the IPv6 device (`flannel-v6.<VNI>`).
    pub v6: bool,
    /// The device's interface index.
    pub index: u32,
    /// Our own subnet's address on the device (`<subnet>.0`); never a route
    /// destination of ours.
    pub own: IpAddr,
    /// The overlay network of this family (`Network` / `IPv6Network`): a
    /// lease outside it is never programmed, and routes outside it are
    /// never ours.
    pub network: Option<(IpAddr, u8)>,
}

/// What one remote lease needs on one family's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Encapsulated through the vxlan device:
    /// `ip neigh replace <subnet.0> dev flannel.1 lladdr <mac> nud permanent`,
    /// `bridge fdb replace <mac> dev flannel.1 self dst <public ip> permanent`,
    /// `ip route replace <subnet> via <subnet.0> dev flannel.1 onlink`.
    Encap {
        /// The remote subnet's network address (the neighbour and gateway).
        gateway: IpAddr,
        /// The remote VTEP MAC.
        mac: Mac,
        /// The remote public IP (FDB destination).
        public_ip: IpAddr,
        /// The route.
        route: Route,
    },
    /// DirectRouting to a peer on our L2 segment:
    /// `ip route replace <subnet> via <public ip> dev <ext iface>`.
    Direct {
        /// The route.
        route: Route,
    },
}

impl Peer {
    /// The route of either kind.
    pub fn route(&self) -> &Route {
        match self {
            Peer::Encap { route, .. } | Peer::Direct { route } => route,
        }
    }
}

/// The objects one device needs, in the order they are applied (Go adds the
/// neighbour, then the FDB entry, then the route).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceState {
    /// Permanent neighbours on the vxlan device.
    pub neighbours: Vec<Neighbour>,
    /// FDB entries on the vxlan device.
    pub fdb: Vec<FdbObject>,
    /// Encapsulated routes on the device and DirectRouting routes.
    pub routes: Vec<Route>,
}

/// Why a lease gets no programming on a family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The lease has no subnet of this family (or no public address or
    /// backend data for it).
    NoFamily,
    /// Another backend type's lease (Go: `Ignoring non-vxlan ...`).
    OtherType(String),
    /// Malformed backend data.
    BadData(String),
    /// The lease's subnet is outside the configured network (or is ours).
    NotOurs(String),
}

/// `(address, prefix)` of a CIDR as `IpAddr`.
pub fn parts<F: Family>(net: &Cidr<F>) -> (IpAddr, u8) {
    (net.addr().to_ip(), net.prefix_len())
}

/// Whether `dst/prefix` lies inside `net`.
pub fn within(net: Option<(IpAddr, u8)>, dst: IpAddr, prefix: u8) -> bool {
    let Some((n, len)) = net else { return false };
    prefix >= len
        && match (n, dst) {
            (IpAddr::V4(n), IpAddr::V4(d)) => Ip4Net::new(n, len).is_ok_and(|c| c.contains(d)),
            (IpAddr::V6(n), IpAddr::V6(d)) => Ip6Net::new(n, len).is_ok_and(|c| c.contains(d)),
            _ => false,
        }
}

/// Whether a kernel route belongs to the backend on `dev`'s family:
/// `proto boot` (the kernel's own routes, like `fe80::/64` on the device,
/// are `proto kernel`), inside the overlay network, not our own subnet
/// address, and either on the vxlan device or a gateway route that
/// DirectRouting put there.
pub fn owns(dev: &DeviceView, r: &Route) -> bool {
    r.protocol == RTPROT_BOOT
        && r.dst != dev.own
        && within(dev.network, r.dst, r.prefix)
        && (r.oif == Some(dev.index) || r.gateway.is_some())
}

/// The encapsulated route for a remote subnet on device `dev`.
pub fn encap_route(subnet: (IpAddr, u8), dev: u32) -> Route {
    let mut r = Route::unicast(subnet.0, subnet.1);
    r.gateway = Some(subnet.0);
    r.oif = Some(dev);
    r.onlink = true;
    r
}

/// The direct route for a remote subnet via its public IP on `oif`.
pub fn direct_route(subnet: (IpAddr, u8), via: IpAddr, oif: u32) -> Route {
    let mut r = Route::unicast(subnet.0, subnet.1);
    r.gateway = Some(via);
    r.oif = Some(oif);
    r
}

/// The public address of `lease` in `dev`'s family, for a vxlan lease: the
/// address DirectRouting decides on.
pub fn public_ip(lease: &Lease, v6: bool) -> Option<IpAddr> {
    if lease.attrs.backend_type != TYPE {
        return None;
    }
    if v6 {
        lease.attrs.public_ipv6.map(IpAddr::V6)
    } else {
        Some(IpAddr::V4(lease.attrs.public_ip))
    }
}

/// The programming `lease` needs on `dev`. `direct_oif` is the external
/// interface when DirectRouting applies to this peer (it is on-link),
/// decided by the caller with `ip route get`.
pub fn peer_for(lease: &Lease, dev: &DeviceView, direct_oif: Option<u32>) -> Result<Peer, Skip> {
    if lease.attrs.backend_type != TYPE {
        return Err(Skip::OtherType(lease.attrs.backend_type.clone()));
    }
    let (subnet, public_ip, data) = if dev.v6 {
        let (Some(sn), Some(ip)) = (lease.ipv6_subnet, lease.attrs.public_ipv6) else {
            return Err(Skip::NoFamily);
        };
        (
            parts(&sn),
            IpAddr::V6(ip),
            lease.attrs.backend_v6_data.as_ref(),
        )
    } else {
        let Some(sn) = lease.subnet else {
            return Err(Skip::NoFamily);
        };
        (
            parts(&sn),
            IpAddr::V4(lease.attrs.public_ip),
            lease.attrs.backend_data.as_ref(),
        )
    };
    // Go decodes the backend data before it looks at DirectRouting: a lease
    // with bad data gets nothing at all.
    let data = VxlanLeaseData::parse(data.ok_or(Skip::NoFamily)?).map_err(Skip::BadData)?;
    let peer = match direct_oif {
        Some(oif) => Peer::Direct {
            route: direct_route(subnet, public_ip, oif),
        },
        None => Peer::Encap {
            gateway: subnet.0,
            mac: data.vtep_mac,
            public_ip,
            route: encap_route(subnet, dev.index),
        },
    };
    if !owns(dev, peer.route()) {
        return Err(Skip::NotOurs(format!("{}/{}", subnet.0, subnet.1)));
    }
    Ok(peer)
}

/// The state `leases` need on `dev`, and the leases skipped with why.
/// `direct` holds the DirectRouting decisions by peer public IP (the
/// external interface when the peer is on-link); a peer without one is
/// encapsulated.
pub fn desired_state(
    dev: &DeviceView,
    leases: &[&Lease],
    direct: &HashMap<IpAddr, Option<u32>>,
) -> (DeviceState, Vec<(SubnetKey, Skip)>) {
    let mut state = DeviceState::default();
    let mut skipped = Vec::new();
    for lease in leases {
        let oif = public_ip(lease, dev.v6)
            .and_then(|ip| direct.get(&ip).copied())
            .flatten();
        match peer_for(lease, dev, oif) {
            Ok(Peer::Encap {
                gateway,
                mac,
                public_ip,
                route,
            }) => {
                state.neighbours.push(Neighbour {
                    index: dev.index,
                    ip: gateway,
                    mac,
                });
                state.fdb.push(FdbObject {
                    index: dev.index,
                    mac,
                    dst: public_ip,
                });
                state.routes.push(route);
            }
            Ok(Peer::Direct { route }) => state.routes.push(route),
            Err(Skip::NoFamily) => {}
            Err(why) => skipped.push((lease.key(), why)),
        }
    }
    (state, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_core::gojson::RawJson;
    use flannel_core::lease::LeaseAttrs;

    fn lease(key: &str, json: &str) -> Lease {
        Lease::new(key.parse().unwrap(), LeaseAttrs::from_json(json).unwrap())
    }

    fn dev(v6: bool, index: u32) -> DeviceView {
        if v6 {
            DeviceView {
                v6,
                index,
                own: "fd00:5:0:1::".parse().unwrap(),
                network: Some(("fd00:5::".parse().unwrap(), 48)),
            }
        } else {
            DeviceView {
                v6,
                index,
                own: "10.5.1.0".parse().unwrap(),
                network: Some(("10.5.0.0".parse().unwrap(), 16)),
            }
        }
    }

    #[test]
    fn encap_peer_as_go_programs_it() {
        let l = lease(
            "10.5.3.0-24",
            r#"{"PublicIP":"192.168.100.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
        );
        let p = peer_for(&l, &dev(false, 7), None).unwrap();
        let Peer::Encap {
            gateway,
            mac,
            public_ip,
            route,
        } = &p
        else {
            panic!("{p:?}")
        };
        assert_eq!(gateway.to_string(), "10.5.3.0");
        assert_eq!(*mac, [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]);
        assert_eq!(public_ip.to_string(), "192.168.100.3");
        assert_eq!(route.to_string(), "10.5.3.0/24 via 10.5.3.0 dev if7 onlink");
        assert_eq!(route.protocol, RTPROT_BOOT);
        // No IPv6 part: nothing on the v6 device.
        assert_eq!(peer_for(&l, &dev(true, 8), None), Err(Skip::NoFamily));
        // DirectRouting: a plain route via the public IP.
        let d = peer_for(&l, &dev(false, 7), Some(2)).unwrap();
        assert_eq!(
            d.route().to_string(),
            "10.5.3.0/24 via 192.168.100.3 dev if2"
        );
    }

    #[test]
    fn v6_and_skips() {
        let mut l = lease(
            "10.5.3.0-24&fd00:5:0:3::-64",
            r#"{"PublicIP":"192.168.100.3","PublicIPv6":"fd00:100::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}"#,
        );
        let Peer::Encap {
            gateway,
            mac,
            public_ip,
            ..
        } = peer_for(&l, &dev(true, 9), None).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (gateway.to_string(), mac[5], public_ip.to_string()),
            ("fd00:5:0:3::".into(), 0x45, "fd00:100::3".into())
        );
        l.attrs.backend_v6_data = Some(RawJson::new(r#"{"VNI":1,"VtepMAC":7}"#).unwrap());
        let bad = Err(Skip::BadData("error parsing hardware addr".into()));
        assert_eq!(peer_for(&l, &dev(true, 9), None), bad);
        // Bad data is bad whether or not the peer is on-link.
        assert_eq!(peer_for(&l, &dev(true, 9), Some(2)), bad);
        l.attrs.backend_type = "host-gw".into();
        assert_eq!(
            peer_for(&l, &dev(false, 9), None),
            Err(Skip::OtherType("host-gw".into()))
        );
    }

    #[test]
    fn leases_outside_the_network_and_route_ownership() {
        let outside = lease(
            "192.168.100.0-24",
            r#"{"PublicIP":"192.168.100.66","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
        );
        let d = dev(false, 7);
        assert_eq!(
            peer_for(&outside, &d, None),
            Err(Skip::NotOurs("192.168.100.0/24".into()))
        );
        let inside = lease(
            "10.5.3.0-24",
            r#"{"PublicIP":"192.168.100.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
        );
        let (state, skipped) = desired_state(&d, &[&outside, &inside], &HashMap::new());
        assert_eq!(
            (state.neighbours.len(), state.fdb.len(), state.routes.len()),
            (1, 1, 1)
        );
        assert_eq!(skipped.len(), 1);

        let mut r = encap_route(("10.5.3.0".parse().unwrap(), 24), 7);
        assert!(owns(&d, &r));
        // The network itself is inside it; anything wider is not.
        r.dst = "10.5.0.0".parse().unwrap();
        r.prefix = 16;
        assert!(owns(&d, &r));
        r.prefix = 8;
        r.dst = "10.0.0.0".parse().unwrap();
        assert!(!owns(&d, &r));
        // Our own address, another protocol, another device without a gateway.
        let mut own = encap_route(("10.5.1.0".parse().unwrap(), 24), 7);
        assert!(!owns(&d, &own));
        own.dst = "10.5.4.0".parse().unwrap();
        own.protocol = flannel_netlink::RTPROT_KERNEL;
        assert!(!owns(&d, &own));
        let mut connected = Route::unicast("10.5.4.0".parse().unwrap(), 24);
        connected.oif = Some(3);
        assert!(!owns(&d, &connected));
    }

    #[test]
    fn direct_routing_decisions_pick_the_route() {
        let l = lease(
            "10.5.3.0-24",
            r#"{"PublicIP":"192.168.100.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
        );
        let mut direct = HashMap::new();
        direct.insert("192.168.100.3".parse().unwrap(), Some(2));
        let (state, skipped) = desired_state(&dev(false, 7), &[&l], &direct);
        assert!(skipped.is_empty());
        assert!(state.neighbours.is_empty() && state.fdb.is_empty());
        assert_eq!(
            state.routes[0].to_string(),
            "10.5.3.0/24 via 192.168.100.3 dev if2"
        );
        // Decided off-link: encapsulated.
        direct.insert("192.168.100.3".parse().unwrap(), None);
        let (state, _) = desired_state(&dev(false, 7), &[&l], &direct);
        assert_eq!(state.neighbours.len(), 1);
    }
}
