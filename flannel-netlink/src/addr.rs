//! Interface addresses.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{EADDRNOTAVAIL, EEXIST, ENODEV};
use crate::{Netlink, NetlinkError};

/// One interface address, as `ip addr show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AddrInfo {
    /// Interface index.
    pub index: u32,
    /// The local address (`IFA_LOCAL`, else `IFA_ADDRESS`).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
    /// `IFA_F_PERMANENT` (no lifetime; statically configured).
    pub permanent: bool,
    /// `IFA_F_DEPRECATED` (`deprecated`, preferred lifetime over).
    pub deprecated: bool,
    /// IPv6 privacy address (`temporary`, `IFA_F_TEMPORARY`); always false
    /// for IPv4, where the same bit means `secondary`.
    pub temporary: bool,
    /// Scope (`0` global, `253` link, `254` host).
    pub scope: u8,
}

impl AddrInfo {
    /// Whether this is an IPv6 link-local (`fe80::/10`) address.
    pub fn is_link_local(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => a.is_link_local(),
            IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
        }
    }
}

fn parse_addr(msg: &AddressMessage) -> Option<AddrInfo> {
    let mut local = None;
    let mut address = None;
    let mut flags = u32::from(msg.header.flags.bits());
    for a in &msg.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            // IFA_FLAGS carries the full 32-bit set; the header has 8 bits.
            AddressAttribute::Flags(f) => flags = f.bits(),
            _ => {}
        }
    }
    let addr = local.or(address)?;
    Some(AddrInfo {
        index: msg.header.index,
        addr,
        prefix: msg.header.prefix_len,
        permanent: flags & AddressFlags::Permanent.bits() != 0,
        deprecated: flags & AddressFlags::Deprecated.bits() != 0,
        temporary: addr.is_ipv6() && flags & AddressFlags::Secondary.bits() != 0,
        scope: msg.header.scope.into(),
    })
}

fn addr_message(index: u32, addr: IpAddr, prefix: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = prefix;
    msg.header.family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the same
    // unless it is a point-to-point peer (as `ip addr add` sends it).
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    msg
}

fn v4_broadcast(a: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(u32::from(a) | host_bits)
}

impl Netlink {
    /// `ip addr show dev <dev>` (both families).
    pub async fn addresses(&self, index: u32) -> Result<Vec<AddrInfo>, NetlinkError> {
        Ok(self
            .all_addresses()
            .await?
            .into_iter()
            .filter(|a| a.index == index)
            .collect())
    }

    /// `ip addr show`: every address of the namespace.
    pub async fn all_addresses(&self) -> Result<Vec<AddrInfo>, NetlinkError> {
        let answers = self
            .exchange(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_DUMP,
            )
            .await
            .map_err(|f| f.into_error("addresses".into()))?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => parse_addr(a),
                _ => None,
            })
            .collect())
    }

    /// `ip addr add <addr>/<prefix> [brd +] dev <dev>`; an address that is
    /// already there (`EEXIST`) is fine.
    ///
    /// IPv4 prefixes shorter than /31 get the all-ones broadcast address, as
    /// Go's netlink `AddrAdd` does (flannel's own addresses are /32).
    pub async fn add_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut msg = addr_message(index, addr, prefix);
        if let IpAddr::V4(a) = addr
            && prefix < 31
        {
            msg.attributes
                .push(AddressAttribute::Broadcast(v4_broadcast(a, prefix)));
        }
        match self
            .ack(
                RouteNetlinkMessage::NewAddress(msg),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(f) if f.errno() == Some(EEXIST) => Ok(()),
            Err(f) => {
                let dev = self.dev_label(index).await;
                Err(f.into_error(format!("address {addr}/{prefix} dev {dev}")))
            }
        }
    }

    /// `ip addr del <addr>/<prefix> dev <dev>`; an address (or device) that
    /// is already gone (`EADDRNOTAVAIL`, `ENODEV`) is fine.
    pub async fn del_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let msg = addr_message(index, addr, prefix);
        match self.ack(RouteNetlinkMessage::DelAddress(msg), 0).await {
            Ok(()) => Ok(()),
            Err(f) if matches!(f.errno(), Some(EADDRNOTAVAIL | ENODEV)) => Ok(()),
            Err(f) => {
                let dev = self.dev_label(index).await;
                Err(f.into_error(format!("address {addr}/{prefix} dev {dev}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast() {
        let a: Ipv4Addr = "192.168.100.1".parse().unwrap();
        assert_eq!(v4_broadcast(a, 24), Ipv4Addr::new(192, 168, 100, 255));
        assert_eq!(v4_broadcast(a, 0), Ipv4Addr::BROADCAST);
        assert_eq!(v4_broadcast(a, 32), a);
    }
}
