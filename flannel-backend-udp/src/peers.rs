//! The peer table: every remote lease's IPv4 subnet, behind the address its
//! packets are sent to.

use flannel_core::ip::Ip4Net;
use flannel_core::lease::Lease;
use std::net::{Ipv4Addr, SocketAddrV4};

/// One remote subnet and where its packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerRoute {
    /// The remote lease's IPv4 subnet.
    pub subnet: Ip4Net,
    /// The remote node's public IP, on **our** configured port: Go sends to
    /// `PublicIP:<local Port>`, so every node of the network must use the
    /// same port.
    pub endpoint: SocketAddrV4,
}

/// Why a lease is not in the peer table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// The lease has no IPv4 subnet (an IPv6-only node).
    NoIpv4,
    /// Its public IP is `0.0.0.0`: nothing to send to.
    NoPublicIp,
    /// Its subnet lies outside the configured network: the TUN route only
    /// covers the network, and a lease elsewhere is never programmed.
    OutsideNetwork(Ip4Net),
}

/// The peer route for one remote lease. Every lease counts, whatever its
/// `BackendType` (Go's udp backend processes them all; udp nodes write
/// none).
pub fn peer_for(lease: &Lease, network: Ip4Net, port: u16) -> Result<PeerRoute, Skipped> {
    let subnet = lease.subnet.ok_or(Skipped::NoIpv4)?;
    if lease.attrs.public_ip == Ipv4Addr::UNSPECIFIED {
        return Err(Skipped::NoPublicIp);
    }
    if !network.contains_net(&subnet) {
        return Err(Skipped::OutsideNetwork(subnet));
    }
    Ok(PeerRoute {
        subnet,
        endpoint: SocketAddrV4::new(lease.attrs.public_ip, port),
    })
}

/// The peer table for all remote leases, sorted by subnet, and the leases
/// left out with the reason.
pub fn peer_table(
    leases: &[&Lease],
    network: Ip4Net,
    port: u16,
) -> (Vec<PeerRoute>, Vec<(String, Skipped)>) {
    let mut peers = Vec::with_capacity(leases.len());
    let mut skipped = Vec::new();
    for lease in leases {
        match peer_for(lease, network, port) {
            Ok(p) => peers.push(p),
            Err(why) => skipped.push((lease.key().to_string(), why)),
        }
    }
    peers.sort();
    (peers, skipped)
}

/// A stable identifier for a peer: its subnet's address as a number (two
/// leases never share a subnet).
pub fn peer_id(route: &PeerRoute) -> u32 {
    u32::from(route.subnet.addr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_core::lease::LeaseAttrs;

    fn lease(key: &str, json: &str) -> Lease {
        Lease::new(key.parse().unwrap(), LeaseAttrs::from_json(json).unwrap())
    }

    #[test]
    fn every_lease_type_becomes_a_peer_on_our_port() {
        let net: Ip4Net = "10.5.0.0/16".parse().unwrap();
        let go_udp = lease(
            "10.5.3.0-24",
            r#"{"PublicIP":"192.168.100.3","PublicIPv6":null}"#,
        );
        let vxlan = lease(
            "10.5.2.0-24",
            r#"{"PublicIP":"192.168.100.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
        );
        let outside = lease(
            "10.9.0.0-24",
            r#"{"PublicIP":"192.168.100.9","PublicIPv6":null}"#,
        );
        let no_ip = lease("10.5.7.0-24", r#"{"PublicIPv6":"fd00::7"}"#);
        let (peers, skipped) = peer_table(&[&go_udp, &vxlan, &outside, &no_ip], net, 9000);
        assert_eq!(
            peers,
            [
                PeerRoute {
                    subnet: "10.5.2.0/24".parse().unwrap(),
                    endpoint: "192.168.100.2:9000".parse().unwrap()
                },
                PeerRoute {
                    subnet: "10.5.3.0/24".parse().unwrap(),
                    endpoint: "192.168.100.3:9000".parse().unwrap()
                },
            ]
        );
        assert_eq!(
            skipped,
            [
                (
                    "10.9.0.0-24".to_string(),
                    Skipped::OutsideNetwork("10.9.0.0/24".parse().unwrap())
                ),
                ("10.5.7.0-24".to_string(), Skipped::NoPublicIp),
            ]
        );
        assert_eq!(peer_id(&peers[0]), u32::from(Ipv4Addr::new(10, 5, 2, 0)));
    }
}
