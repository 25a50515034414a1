//! Links: lookup, the vxlan device, up/MTU/MAC, delete.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as RawLinkInfo, LinkMessage,
};

use crate::error::{EEXIST, ENODEV};
use crate::{Mac, Netlink, NetlinkError, format_mac, random_vtep_mac};

/// A network interface, as `ip -d link show` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Hardware address, when the link has a 6-byte one.
    pub mac: Option<Mac>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The `IFLA_INFO_KIND` (`vxlan`, `veth`, `bridge`, ...), absent for
    /// devices without one (e.g. `lo`).
    pub kind: Option<String>,
    /// The vxlan parameters when `kind` is `vxlan`.
    pub vxlan: Option<VxlanInfo>,
}

/// The vxlan parameters of a link (the `vxlan ...` line of `ip -d link`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    /// `id`: the VNI.
    pub vni: u32,
    /// `dev`: the underlay interface index, when one is bound.
    pub vtep_index: Option<u32>,
    /// `local`: the source address, when set.
    pub local: Option<IpAddr>,
    /// `dstport` (the kernel always reports one; 8472 by default).
    pub port: Option<u16>,
    /// `learning` / `nolearning`.
    pub learning: bool,
    /// `gbp`.
    pub gbp: bool,
}

/// The vxlan device flannel wants; see [`Netlink::ensure_vxlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Device name, `flannel.<VNI>` or `flannel-v6.<VNI>`.
    pub name: String,
    /// VNI (`id`).
    pub vni: u32,
    /// Underlay interface index (`dev`).
    pub vtep_index: Option<u32>,
    /// Source address (`local`), flannel uses the public IP.
    pub local: Option<IpAddr>,
    /// UDP destination port (`dstport`); `None` (or 0) = kernel default 8472.
    pub port: Option<u16>,
    /// `learning` vs `nolearning`.
    pub learning: bool,
    /// Group Based Policy extension (`gbp`).
    pub gbp: bool,
    /// MTU for a newly created device; an existing device keeps its own.
    pub mtu: Option<u32>,
    /// MAC for a newly created device (random when `None`); an existing
    /// compatible device keeps its own.
    pub mac: Option<Mac>,
}

/// Result of [`Netlink::ensure_vxlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsuredLink {
    /// The device as it is now in the kernel.
    pub link: LinkInfo,
    /// Whether the device was (re)created by this call.
    pub created: bool,
    /// When an incompatible device was deleted and recreated: what differed,
    /// in Go flannel's words (`vni: 2 vs 1`, wanted first).
    pub recreated_because: Option<String>,
}

/// What [`Netlink::ensure_link`] does with a link of the wanted name that
/// already exists.
pub(crate) enum Existing {
    /// Keep it, setting this MTU first when it differs.
    Reuse {
        /// The MTU the link must have; `None` keeps its own.
        mtu: Option<u32>,
    },
    /// Delete it and create ours; why, in Go flannel's words.
    Recreate(String),
}

impl VxlanSpec {
    fn port(&self) -> Option<u16> {
        self.port.filter(|p| *p > 0)
    }

    /// `ip link add` arguments, for messages.
    fn describe(&self) -> String {
        let mut s = format!("link {} (vxlan id {}", self.name, self.vni);
        if let Some(l) = self.local {
            s.push_str(&format!(" local {l}"));
        }
        if let Some(d) = self.vtep_index {
            s.push_str(&format!(" dev if{d}"));
        }
        if let Some(p) = self.port() {
            s.push_str(&format!(" dstport {p}"));
        }
        s.push_str(if self.learning {
            " learning"
        } else {
            " nolearning"
        });
        if self.gbp {
            s.push_str(" gbp");
        }
        s.push(')');
        s
    }

    /// Why `existing` cannot be reused for this spec, in Go flannel's
    /// `vxlanLinksIncompat` wording (wanted value first). Optional fields
    /// are compared only when both sides have them, as Go does.
    pub fn incompatibility(&self, existing: &LinkInfo) -> Option<String> {
        let Some(have) = existing.vxlan.as_ref() else {
            let kind = existing.kind.as_deref().unwrap_or("device");
            return Some(format!("link type: vxlan vs {kind}"));
        };
        if self.vni != have.vni {
            return Some(format!("vni: {} vs {}", self.vni, have.vni));
        }
        if let (Some(a), Some(b)) = (self.vtep_index, have.vtep_index)
            && a != b
        {
            return Some(format!("vtep (external) interface: {a} vs {b}"));
        }
        if let (Some(a), Some(b)) = (self.local, have.local)
            && a != b
        {
            return Some(format!("vtep (external) IP: {a} vs {b}"));
        }
        if let (Some(a), Some(b)) = (self.port(), have.port)
            && a != b
        {
            return Some(format!("port: {a} vs {b}"));
        }
        if self.learning != have.learning {
            return Some(format!("learning: {} vs {}", self.learning, have.learning));
        }
        if self.gbp != have.gbp {
            return Some(format!("gbp: {} vs {}", self.gbp, have.gbp));
        }
        None
    }

    fn message(&self, mac: Mac) -> LinkMessage {
        let mut data = vec![InfoVxlan::Id(self.vni)];
        // `.dev(index)` semantics: IFLA_VXLAN_LINK inside the vxlan info, not
        // IFLA_LINK on the link (the kernel ignores the latter for vxlan).
        if let Some(d) = self.vtep_index {
            data.push(InfoVxlan::Link(d));
        }
        match self.local {
            Some(IpAddr::V4(a)) => data.push(InfoVxlan::Local(a)),
            Some(IpAddr::V6(a)) => data.push(InfoVxlan::Local6(a)),
            None => {}
        }
        data.push(InfoVxlan::Learning(self.learning));
        data.push(InfoVxlan::L2Miss(false));
        data.push(InfoVxlan::L3Miss(false));
        if self.gbp {
            data.push(InfoVxlan::Gbp);
        }
        if let Some(p) = self.port() {
            data.push(InfoVxlan::Port(p));
        }
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(self.name.clone()));
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        if let Some(mtu) = self.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            RawLinkInfo::Kind(InfoKind::Vxlan),
            RawLinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        msg
    }
}

pub(crate) fn parse_link(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        vxlan: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Mtu(m) => info.mtu = *m,
            LinkAttribute::Address(a) => info.mac = <Mac>::try_from(a.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        RawLinkInfo::Kind(k) => info.kind = Some(k.to_string()),
                        RawLinkInfo::Data(InfoData::Vxlan(v)) => info.vxlan = Some(parse_vxlan(v)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    info
}

fn parse_vxlan(attrs: &[InfoVxlan]) -> VxlanInfo {
    let mut v = VxlanInfo {
        vni: 0,
        vtep_index: None,
        local: None,
        port: None,
        learning: false,
        gbp: false,
    };
    for a in attrs {
        match a {
            InfoVxlan::Id(id) => v.vni = *id,
            InfoVxlan::Link(i) if *i != 0 => v.vtep_index = Some(*i),
            InfoVxlan::Local(a) => v.local = Some(IpAddr::V4(*a)),
            InfoVxlan::Local6(a) => v.local = Some(IpAddr::V6(*a)),
            InfoVxlan::Port(p) => v.port = Some(*p),
            InfoVxlan::Learning(l) => v.learning = *l,
            InfoVxlan::Gbp => v.gbp = true,
            _ => {}
        }
    }
    v
}

fn set_link_msg(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

impl Netlink {
    /// `ip link show <name>`; `None` when there is no such link.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg, || format!("link {name}")).await
    }

    /// `ip link show` for one index; `None` when there is no such link.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        self.get_link(set_link_msg(index), || format!("link if{index}"))
            .await
    }

    async fn get_link(
        &self,
        msg: LinkMessage,
        object: impl FnOnce() -> String,
    ) -> Result<Option<LinkInfo>, NetlinkError> {
        Ok(self
            .get_raw_link(msg, object)
            .await?
            .map(|l| parse_link(&l)))
    }

    /// The kernel's message for one link, for kind-specific attributes
    /// [`parse_link`] does not read; `None` when there is no such link.
    async fn get_raw_link(
        &self,
        msg: LinkMessage,
        object: impl FnOnce() -> String,
    ) -> Result<Option<LinkMessage>, NetlinkError> {
        match self.exchange(RouteNetlinkMessage::GetLink(msg), 0).await {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(f) if f.errno() == Some(ENODEV) => Ok(None),
            Err(f) => Err(f.into_error(object())),
        }
    }

    /// `ip link show <name>` as the kernel's message.
    pub(crate) async fn raw_link_by_name(
        &self,
        name: &str,
    ) -> Result<Option<LinkMessage>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_raw_link(msg, || format!("link {name}")).await
    }

    /// Creates the link `message` describes the way Go flannel does: add
    /// with `NLM_F_EXCL` first, and only when that answers EEXIST look at
    /// the link of that name (so a device that appears concurrently is
    /// still judged). `judge` decides what to do with it, or refuses with
    /// an error (nothing touched): reuse it (its MTU corrected when asked),
    /// or delete it and add ours. A link deleted between the add and the
    /// lookup is added once more. `describe` names the link in errors.
    pub(crate) async fn ensure_link(
        &self,
        name: &str,
        describe: impl Fn() -> String,
        message: impl Fn() -> LinkMessage,
        judge: impl FnOnce(&LinkMessage) -> Result<Existing, NetlinkError>,
    ) -> Result<EnsuredLink, NetlinkError> {
        let create = || {
            self.ack(
                RouteNetlinkMessage::NewLink(message()),
                NLM_F_CREATE | NLM_F_EXCL,
            )
        };
        let mut recreated_because = None;
        match create().await {
            Ok(()) => {}
            Err(f) if f.errno() == Some(EEXIST) => match self.raw_link_by_name(name).await? {
                None => create().await.map_err(|f| f.into_error(describe()))?,
                Some(raw) => match judge(&raw)? {
                    Existing::Reuse { mtu } => {
                        let existing = parse_link(&raw);
                        let link = match mtu.filter(|m| *m != existing.mtu) {
                            None => existing,
                            Some(mtu) => {
                                self.set_mtu(existing.index, mtu).await?;
                                self.link_by_index(existing.index)
                                    .await?
                                    .unwrap_or(existing)
                            }
                        };
                        return Ok(EnsuredLink {
                            link,
                            created: false,
                            recreated_because: None,
                        });
                    }
                    Existing::Recreate(why) => {
                        self.delete_link(raw.header.index).await?;
                        create().await.map_err(|f| f.into_error(describe()))?;
                        recreated_because = Some(why);
                    }
                },
            },
            Err(f) => return Err(f.into_error(describe())),
        }
        let link = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError::NotFound {
                object: format!("link {name} (just created)"),
            })?;
        Ok(EnsuredLink {
            link,
            created: true,
            recreated_because,
        })
    }

    /// `ip -d link show`: all links of the namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let answers = self
            .exchange(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .await
            .map_err(|f| f.into_error("links".into()))?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
                _ => None,
            })
            .collect())
    }

    /// `ip link add <name> [address <mac>] [mtu <mtu>] type vxlan id <vni>
    /// [dev <vtep>] [local <local>] [dstport <port>] [no]learning [gbp]`,
    /// the way Go flannel's `ensureLink` does it:
    ///
    /// * no such link: create it with `spec.mac` (random when `None`) and
    ///   `spec.mtu`;
    /// * a compatible link exists: reuse it as-is (its MAC and MTU are kept);
    /// * an incompatible one exists (different kind, VNI, vtep device, local
    ///   address, port, learning or GBP; optional fields compared only when
    ///   both sides set them): delete it and create a new one, reporting why
    ///   in [`EnsuredLink::recreated_because`].
    ///
    /// The device is left down; see [`Netlink::set_up`].
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<EnsuredLink, NetlinkError> {
        let mac = spec.mac.unwrap_or_else(random_vtep_mac);
        self.ensure_link(
            &spec.name,
            || spec.describe(),
            || spec.message(mac),
            // A compatible device is kept as it is (MAC and MTU included).
            |raw| {
                Ok(match spec.incompatibility(&parse_link(raw)) {
                    None => Existing::Reuse { mtu: None },
                    Some(why) => Existing::Recreate(why),
                })
            },
        )
        .await
    }

    /// `ip link add <name> mtu <mtu> type wireguard`, reusing an existing
    /// wireguard link of that name (its peers and sessions are kept; only
    /// its MTU is corrected) and replacing a link of another kind (a TUN
    /// left by the userspace implementation). A kernel without WireGuard
    /// refuses with `EOPNOTSUPP` ([`NetlinkError::is_unsupported_kind`]).
    /// The device is left down; see [`Netlink::set_up`].
    pub async fn ensure_wireguard(
        &self,
        name: &str,
        mtu: u32,
    ) -> Result<EnsuredLink, NetlinkError> {
        self.ensure_link(
            name,
            || format!("link {name} (type wireguard mtu {mtu})"),
            || {
                let mut msg = LinkMessage::default();
                msg.attributes.push(LinkAttribute::IfName(name.to_string()));
                msg.attributes.push(LinkAttribute::Mtu(mtu));
                msg.attributes
                    .push(LinkAttribute::LinkInfo(vec![RawLinkInfo::Kind(
                        InfoKind::Wireguard,
                    )]));
                msg
            },
            |raw| {
                Ok(match parse_link(raw).kind.as_deref() {
                    Some("wireguard") => Existing::Reuse { mtu: Some(mtu) },
                    other => Existing::Recreate(format!(
                        "link type: wireguard vs {}",
                        other.unwrap_or("device")
                    )),
                })
            },
        )
        .await
    }

    /// `ip link set dev <dev> up`.
    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = set_link_msg(index);
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.set_link(msg, index, "up").await
    }

    /// `ip link set dev <dev> down`.
    pub async fn set_down(&self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = set_link_msg(index);
        msg.header.change_mask = LinkFlags::Up;
        self.set_link(msg, index, "down").await
    }

    /// `ip link set dev <dev> mtu <mtu>`.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let mut msg = set_link_msg(index);
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(msg, index, &format!("mtu {mtu}")).await
    }

    /// `ip link set dev <dev> address <mac>`.
    pub async fn set_mac(&self, index: u32, mac: Mac) -> Result<(), NetlinkError> {
        let mut msg = set_link_msg(index);
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.set_link(msg, index, &format!("address {}", format_mac(&mac)))
            .await
    }

    async fn set_link(&self, msg: LinkMessage, index: u32, what: &str) -> Result<(), NetlinkError> {
        match self.ack(RouteNetlinkMessage::SetLink(msg), 0).await {
            Ok(()) => Ok(()),
            Err(f) => {
                let dev = self.dev_label(index).await;
                Err(f.into_error(format!("link set dev {dev} {what}")))
            }
        }
    }

    /// `ip link del dev <dev>`; a link that is already gone (`ENODEV`) is
    /// not an error.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        match self
            .ack(RouteNetlinkMessage::DelLink(set_link_msg(index)), 0)
            .await
        {
            Ok(()) => Ok(()),
            Err(f) if f.errno() == Some(ENODEV) => Ok(()),
            Err(f) => {
                let dev = self.dev_label(index).await;
                Err(f.into_error(format!("link del dev {dev}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            vtep_index: Some(2),
            local: Some("192.168.100.1".parse().unwrap()),
            port: None,
            learning: false,
            gbp: false,
            mtu: Some(1450),
            mac: None,
        }
    }

    fn existing() -> LinkInfo {
        LinkInfo {
            index: 5,
            name: "flannel.1".into(),
            mtu: 1450,
            mac: Some([2, 0, 0, 0, 0, 1]),
            up: false,
            kind: Some("vxlan".into()),
            vxlan: Some(VxlanInfo {
                vni: 1,
                vtep_index: Some(2),
                local: Some("192.168.100.1".parse().unwrap()),
                port: Some(8472),
                learning: false,
                gbp: false,
            }),
        }
    }

    #[test]
    fn compatible_when_equal_or_unset() {
        assert_eq!(spec().incompatibility(&existing()), None);
        let mut s = spec();
        s.vtep_index = None;
        s.local = None;
        s.port = Some(0);
        assert_eq!(s.incompatibility(&existing()), None);
        let mut e = existing();
        e.vxlan.as_mut().unwrap().local = None;
        assert_eq!(spec().incompatibility(&e), None);
    }

    #[test]
    fn incompatibilities_in_go_words() {
        type Change = fn(&mut VxlanSpec);
        let cases: Vec<(Change, &str)> = vec![
            (|s| s.vni = 2, "vni: 2 vs 1"),
            (
                |s| s.vtep_index = Some(3),
                "vtep (external) interface: 3 vs 2",
            ),
            (
                |s| s.local = Some("192.168.100.9".parse().unwrap()),
                "vtep (external) IP: 192.168.100.9 vs 192.168.100.1",
            ),
            (|s| s.port = Some(4789), "port: 4789 vs 8472"),
            (|s| s.learning = true, "learning: true vs false"),
            (|s| s.gbp = true, "gbp: true vs false"),
        ];
        for (change, want) in cases {
            let mut s = spec();
            change(&mut s);
            assert_eq!(s.incompatibility(&existing()).as_deref(), Some(want));
        }
        let mut e = existing();
        e.kind = Some("veth".into());
        e.vxlan = None;
        assert_eq!(
            spec().incompatibility(&e).as_deref(),
            Some("link type: vxlan vs veth")
        );
    }
}
