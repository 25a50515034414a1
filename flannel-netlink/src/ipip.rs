//! The ipip tunnel device (`ip link add flannel.ipip type ipip local <ip>`).

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::IpProtocol;
use netlink_packet_route::link::{
    InfoData, InfoIpTunnel, InfoKind, LinkAttribute, LinkInfo as RawLinkInfo, LinkMessage,
    TunnelEncapFlags, TunnelEncapType,
};

use crate::link::{Existing, parse_link};
use crate::{EnsuredLink, Netlink, NetlinkError};

/// `EOPNOTSUPP`: what the kernel answers to a link kind it does not know
/// (`ip link add ... type ipip` → `Unknown device type`).
pub const EOPNOTSUPP: i32 = 95;

/// The ipip device flannel wants; see [`Netlink::ensure_ipip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpipSpec {
    /// Device name (`flannel.ipip`).
    pub name: String,
    /// `local`: the external interface's address (remote stays `any`).
    pub local: Ipv4Addr,
    /// The MTU the device must have (set on an existing device too).
    pub mtu: u32,
}

/// The tunnel endpoints of an existing ipip link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpipInfo {
    /// `local`, `None` for `any`.
    pub local: Option<Ipv4Addr>,
    /// `remote`, `None` for `any`.
    pub remote: Option<Ipv4Addr>,
}

impl IpipSpec {
    /// `ip link add` arguments, for messages.
    pub fn describe(&self) -> String {
        format!(
            "link {} (ipip local {} mtu {})",
            self.name, self.local, self.mtu
        )
    }

    /// Why an existing ipip link cannot be reused, in the style of the
    /// vxlan check (wanted value first): Go flannel keeps an ipip device
    /// only when its local address is ours and its remote is `any`.
    pub fn incompatibility(&self, have: &IpipInfo) -> Option<String> {
        if have.local != Some(self.local) {
            let got = have.local.map_or("any".to_string(), |a| a.to_string());
            return Some(format!("local: {} vs {got}", self.local));
        }
        if let Some(r) = have.remote {
            return Some(format!("remote: any vs {r}"));
        }
        None
    }

    fn message(&self) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(self.name.clone()));
        msg.attributes.push(LinkAttribute::Mtu(self.mtu));
        // The attributes Go's netlink library sends for an Iptun with only
        // Local set: ttl 0 (inherit), tos 0, pmtudisc 0, no encapsulation
        // and proto 0 ("any": without it the kernel picks IPPROTO_IPIP), so
        // both implementations create the same device.
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            RawLinkInfo::Kind(InfoKind::IpIp),
            RawLinkInfo::Data(InfoData::IpTunnel(vec![
                InfoIpTunnel::Local(IpAddr::V4(self.local)),
                InfoIpTunnel::PMtuDisc(false),
                InfoIpTunnel::Ttl(0),
                InfoIpTunnel::Tos(0),
                InfoIpTunnel::EncapType(TunnelEncapType::None),
                InfoIpTunnel::EncapFlags(TunnelEncapFlags::empty()),
                InfoIpTunnel::EncapSPort(0),
                InfoIpTunnel::EncapDPort(0),
                InfoIpTunnel::Protocol(IpProtocol::from(0)),
            ])),
        ]));
        msg
    }
}

fn parse_ipip(msg: &LinkMessage) -> Option<IpipInfo> {
    let mut out = None;
    for attr in &msg.attributes {
        let LinkAttribute::LinkInfo(infos) = attr else {
            continue;
        };
        for i in infos {
            if let RawLinkInfo::Data(InfoData::IpTunnel(data)) = i {
                let mut info = IpipInfo::default();
                for d in data {
                    match d {
                        InfoIpTunnel::Local(IpAddr::V4(a)) if !a.is_unspecified() => {
                            info.local = Some(*a)
                        }
                        InfoIpTunnel::Remote(IpAddr::V4(a)) if !a.is_unspecified() => {
                            info.remote = Some(*a)
                        }
                        _ => {}
                    }
                }
                out = Some(info);
            }
        }
    }
    // An ipip link without IFLA_INFO_DATA has both ends `any`.
    out.or(Some(IpipInfo::default()))
}

impl Netlink {
    /// `ip link add <name> mtu <mtu> type ipip local <local> ttl inherit
    /// nopmtudisc`, the way Go flannel's ipip backend does it:
    ///
    /// * no such link: create it;
    /// * an ipip link with our local address and remote `any` exists: reuse
    ///   it, setting its MTU when it differs;
    /// * another ipip link exists: delete it and create ours
    ///   ([`EnsuredLink::recreated_because`] says why);
    /// * a link of another kind has the name: [`NetlinkError::WrongKind`]
    ///   (Go's `<name> isn't an ipip mode device, ...`), nothing touched.
    ///
    /// A kernel without ipip answers `EOPNOTSUPP` ([`EOPNOTSUPP`]). The
    /// device is left down; see [`Netlink::set_up`].
    pub async fn ensure_ipip(&self, spec: &IpipSpec) -> Result<EnsuredLink, NetlinkError> {
        self.ensure_link(
            &spec.name,
            || spec.describe(),
            || spec.message(),
            |raw| {
                if parse_link(raw).kind.as_deref() != Some("ipip") {
                    return Err(NetlinkError::WrongKind {
                        name: spec.name.clone(),
                        wanted: "ipip",
                    });
                }
                Ok(
                    match spec.incompatibility(&parse_ipip(raw).unwrap_or_default()) {
                        None => Existing::Reuse {
                            mtu: Some(spec.mtu),
                        },
                        Some(why) => Existing::Recreate(why),
                    },
                )
            },
        )
        .await
    }

    /// The tunnel endpoints of the ipip link `name`; `None` when there is
    /// no such link or it is not an ipip link.
    pub async fn ipip_info(&self, name: &str) -> Result<Option<IpipInfo>, NetlinkError> {
        Ok(self
            .raw_link_by_name(name)
            .await?
            .filter(|m| parse_link(m).kind.as_deref() == Some("ipip"))
            .and_then(|m| parse_ipip(&m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_only_our_local_with_any_remote() {
        let spec = IpipSpec {
            name: "flannel.ipip".into(),
            local: Ipv4Addr::new(10, 0, 0, 1),
            mtu: 1480,
        };
        let ours = IpipInfo {
            local: Some(Ipv4Addr::new(10, 0, 0, 1)),
            remote: None,
        };
        assert_eq!(spec.incompatibility(&ours), None);
        assert_eq!(
            spec.incompatibility(&IpipInfo::default()).as_deref(),
            Some("local: 10.0.0.1 vs any")
        );
        let other = IpipInfo {
            local: Some(Ipv4Addr::new(10, 0, 0, 9)),
            remote: None,
        };
        assert_eq!(
            spec.incompatibility(&other).as_deref(),
            Some("local: 10.0.0.1 vs 10.0.0.9")
        );
        let p2p = IpipInfo {
            remote: Some(Ipv4Addr::new(10, 0, 0, 2)),
            ..ours
        };
        assert_eq!(
            spec.incompatibility(&p2p).as_deref(),
            Some("remote: any vs 10.0.0.2")
        );
    }
}
