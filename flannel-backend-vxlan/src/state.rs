//! The kernel state a remote lease needs, as a pure function.

use crate::options::{TYPE, VxlanLeaseData};
use flannel_core::ip::{Cidr, Family};
use flannel_core::lease::Lease;
use flannel_netlink::{Mac, Route};
use std::net::IpAddr;

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

/// `(address, prefix)` of a CIDR as `IpAddr`.
pub fn parts<F: Family>(net: &Cidr<F>) -> (IpAddr, u8) {
    (net.addr().to_ip(), net.prefix_len())
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

/// Why a lease gets no programming on a family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The lease has no subnet of this family (or no public address for it).
    NoFamily,
    /// Another backend type's lease (Go: `Ignoring non-vxlan ...`).
    OtherType(String),
    /// Malformed backend data.
    BadData(String),
}

/// The programming `lease` needs on the `v6` (or v4) device with index `dev`.
/// `direct_oif` is the external interface when DirectRouting applies to this
/// peer (it is on-link), decided by the caller with `ip route get`.
pub fn peer_for(lease: &Lease, v6: bool, dev: u32, direct_oif: Option<u32>) -> Result<Peer, Skip> {
    if lease.attrs.backend_type != TYPE {
        return Err(Skip::OtherType(lease.attrs.backend_type.clone()));
    }
    let (subnet, public_ip, data) = if v6 {
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
    if let Some(oif) = direct_oif {
        return Ok(Peer::Direct {
            route: direct_route(subnet, public_ip, oif),
        });
    }
    let data = VxlanLeaseData::parse(data.ok_or(Skip::NoFamily)?).map_err(Skip::BadData)?;
    Ok(Peer::Encap {
        gateway: subnet.0,
        mac: data.vtep_mac,
        public_ip,
        route: encap_route(subnet, dev),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_core::gojson::RawJson;
    use flannel_core::lease::LeaseAttrs;

    fn lease(key: &str, json: &str) -> Lease {
        Lease::new(key.parse().unwrap(), LeaseAttrs::from_json(json).unwrap())
    }

    #[test]
    fn encap_peer_as_go_programs_it() {
        let l = lease(
            "10.5.3.0-24",
            r#"{"PublicIP":"192.168.100.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
        );
        let p = peer_for(&l, false, 7, None).unwrap();
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
        assert_eq!(
            (route.dst.to_string(), route.prefix),
            ("10.5.3.0".into(), 24)
        );
        assert_eq!(route.gateway, Some(*gateway));
        assert_eq!(
            (route.oif, route.onlink, route.protocol),
            (Some(7), true, flannel_netlink::RTPROT_BOOT)
        );
        // No IPv6 part: nothing on the v6 device.
        assert_eq!(peer_for(&l, true, 8, None), Err(Skip::NoFamily));
        // DirectRouting: a plain route via the public IP.
        let d = peer_for(&l, false, 7, Some(2)).unwrap();
        assert_eq!(d.route().gateway.unwrap().to_string(), "192.168.100.3");
        assert_eq!((d.route().oif, d.route().onlink), (Some(2), false));
    }

    #[test]
    fn v6_and_skips() {
        let mut l = lease(
            "10.5.3.0-24&fd00:5:3::-64",
            r#"{"PublicIP":"192.168.100.3","PublicIPv6":"fd00:100::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}"#,
        );
        let Peer::Encap {
            gateway,
            mac,
            public_ip,
            ..
        } = peer_for(&l, true, 9, None).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (gateway.to_string(), mac[5], public_ip.to_string()),
            ("fd00:5:3::".into(), 0x45, "fd00:100::3".into())
        );
        l.attrs.backend_v6_data = Some(RawJson::new(r#"{"VNI":1,"VtepMAC":7}"#).unwrap());
        assert_eq!(
            peer_for(&l, true, 9, None),
            Err(Skip::BadData("error parsing hardware addr".into()))
        );
        l.attrs.backend_type = "host-gw".into();
        assert_eq!(
            peer_for(&l, false, 9, None),
            Err(Skip::OtherType("host-gw".into()))
        );
    }
}
