//! Neighbour (ARP/NDP) entries and bridge FDB entries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{ENODEV, ENOENT};
use crate::{Mac, Netlink, NetlinkError, format_mac};

const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;

/// One neighbour entry, as `ip neigh show dev <dev>` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NeighInfo {
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// Its link-layer address (`lladdr`), when resolved.
    pub mac: Option<Mac>,
    /// `PERMANENT` (`NUD_PERMANENT`).
    pub permanent: bool,
}

/// One FDB entry of a device itself (`self`), as `bridge fdb show dev <dev>`
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FdbEntry {
    /// The MAC address.
    pub mac: Mac,
    /// The remote VTEP (`dst`), for vxlan entries that have one.
    pub dst: Option<IpAddr>,
    /// `permanent` (`NUD_PERMANENT`).
    pub permanent: bool,
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn neigh_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

/// Converts an `NDA_DST` to an IP. For `AF_BRIDGE` messages (the FDB) the
/// parser cannot know the address family of the vxlan remote and hands back
/// raw bytes (`NeighbourAddress::Other`); the length tells v4 from v6.
fn neigh_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(raw) => {
            if let Ok(b) = <[u8; 4]>::try_from(raw.as_slice()) {
                Some(IpAddr::V4(Ipv4Addr::from(b)))
            } else if let Ok(b) = <[u8; 16]>::try_from(raw.as_slice()) {
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            } else {
                None
            }
        }
        _ => None,
    }
}

fn lladdr(msg: &NeighbourMessage) -> Option<Mac> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => <Mac>::try_from(l.as_slice()).ok(),
        _ => None,
    })
}

fn dst(msg: &NeighbourMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(d) => neigh_ip(d),
        _ => None,
    })
}

fn is_permanent(msg: &NeighbourMessage) -> bool {
    u16::from(msg.header.state) & NUD_PERMANENT != 0
}

fn neigh_msg(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family_of(ip);
    msg.header.ifindex = index;
    msg.attributes
        .push(NeighbourAttribute::Destination(neigh_address(ip)));
    msg
}

fn fdb_msg(index: u32, mac: Mac, dst: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    // NTF_SELF: the entry belongs to the vxlan device's own FDB, not to a
    // bridge master it might be enslaved to.
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(neigh_address(dst)));
    msg
}

impl Netlink {
    /// `ip neigh replace <ip> dev <dev> lladdr <mac> nud permanent`.
    ///
    /// IPv6 entries need IPv6 to be enabled on the device: the kernel
    /// disables it on links whose MTU is below 1280 (or with
    /// `disable_ipv6=1`) and then refuses every NDP entry with `EINVAL`
    /// ("IPv6 is disabled on this device"), so a `flannel-v6.<VNI>` device
    /// needs an MTU of at least 1280 before its neighbours can be added.
    pub async fn replace_neigh(
        &self,
        index: u32,
        ip: IpAddr,
        mac: Mac,
    ) -> Result<(), NetlinkError> {
        let mut msg = neigh_msg(index, ip);
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        match self
            .ack(
                RouteNetlinkMessage::NewNeighbour(msg),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(f) => {
                let dev = self.dev_label(index).await;
                Err(f.into_error(format!(
                    "neighbour {ip} lladdr {} dev {dev}",
                    format_mac(&mac)
                )))
            }
        }
    }

    /// `ip neigh del <ip> dev <dev>`; an entry (or device) that is already
    /// gone (`ENOENT`, `ENODEV`) is fine.
    pub async fn del_neigh(&self, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        let msg = neigh_msg(index, ip);
        match self.ack(RouteNetlinkMessage::DelNeighbour(msg), 0).await {
            Ok(()) => Ok(()),
            Err(f) if matches!(f.errno(), Some(ENOENT | ENODEV)) => Ok(()),
            Err(f) => {
                let dev = self.dev_label(index).await;
                Err(f.into_error(format!("neighbour {ip} dev {dev}")))
            }
        }
    }

    /// `ip neigh show dev <dev>` (IPv4 and IPv6). Like `ip`, it leaves out
    /// `NOARP` and state-less entries: the kernel's own IPv6 multicast
    /// entries (`ff02::16 lladdr 33:33:00:00:00:16 NOARP`) appear on every
    /// up device and are nobody's to manage.
    pub async fn neighbours(&self, index: u32) -> Result<Vec<NeighInfo>, NetlinkError> {
        // AF_UNSPEC dumps the ARP and NDP tables; the bridge FDB is only
        // dumped for AF_BRIDGE.
        let answers = self
            .exchange(
                RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
                NLM_F_DUMP,
            )
            .await;
        let answers = match answers {
            Ok(a) => a,
            Err(f) => {
                let dev = self.dev_label(index).await;
                return Err(f.into_error(format!("neighbours dev {dev}")));
            }
        };
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n)
                    if n.header.ifindex == index
                        && matches!(
                            n.header.family,
                            AddressFamily::Inet | AddressFamily::Inet6
                        )
                        && u16::from(n.header.state) & !NUD_NOARP != 0 =>
                {
                    Some(NeighInfo {
                        ip: dst(n)?,
                        mac: lladdr(n),
                        permanent: is_permanent(n),
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// `bridge fdb replace <mac> dev <dev> self dst <dst> permanent`.
    pub async fn replace_fdb(&self, index: u32, mac: Mac, dst: IpAddr) -> Result<(), NetlinkError> {
        let mut msg = fdb_msg(index, mac, dst);
        msg.header.state = NeighbourState::Permanent;
        match self
            .ack(
                RouteNetlinkMessage::NewNeighbour(msg),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(f) => {
                let dev = self.dev_label(index).await;
                Err(f.into_error(format!("fdb {} dst {dst} dev {dev} self", format_mac(&mac))))
            }
        }
    }

    /// `bridge fdb del <mac> dev <dev> self dst <dst>`; an entry (or device)
    /// that is already gone (`ENOENT`, `ENODEV`) is fine.
    pub async fn del_fdb(&self, index: u32, mac: Mac, dst: IpAddr) -> Result<(), NetlinkError> {
        let msg = fdb_msg(index, mac, dst);
        match self.ack(RouteNetlinkMessage::DelNeighbour(msg), 0).await {
            Ok(()) => Ok(()),
            Err(f) if matches!(f.errno(), Some(ENOENT | ENODEV)) => Ok(()),
            Err(f) => {
                let dev = self.dev_label(index).await;
                Err(f.into_error(format!("fdb {} dst {dst} dev {dev} self", format_mac(&mac))))
            }
        }
    }

    /// `bridge fdb show dev <dev>`, restricted to the device's own (`self`)
    /// entries; vxlan entries carry their remote in [`FdbEntry::dst`].
    pub async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        let answers = match self
            .exchange(RouteNetlinkMessage::GetNeighbour(req), NLM_F_DUMP)
            .await
        {
            Ok(a) => a,
            Err(f) => {
                let dev = self.dev_label(index).await;
                return Err(f.into_error(format!("fdb dev {dev}")));
            }
        };
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n)
                    if n.header.ifindex == index
                        && n.header.family == AddressFamily::Bridge
                        && n.header.flags.contains(NeighbourFlags::Own) =>
                {
                    Some(FdbEntry {
                        mac: lladdr(n)?,
                        dst: dst(n),
                        permanent: is_permanent(n),
                    })
                }
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdb_dst_raw_bytes_by_length() {
        assert_eq!(
            neigh_ip(&NeighbourAddress::Other(vec![192, 168, 100, 2])),
            Some("192.168.100.2".parse().unwrap())
        );
        let mut v6 = vec![0xfd, 0, 1, 0];
        v6.extend([0; 11]);
        v6.push(2);
        assert_eq!(
            neigh_ip(&NeighbourAddress::Other(v6)),
            Some("fd00:100::2".parse().unwrap())
        );
        assert_eq!(neigh_ip(&NeighbourAddress::Other(vec![1, 2, 3])), None);
    }
}
