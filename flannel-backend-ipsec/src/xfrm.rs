//! The XFRM policies flannel installs (`ip xfrm policy`), over a
//! NETLINK_XFRM socket.
//!
//! Per remote lease three policies (Go's `handle_xfrm.go`), each with one
//! ESP tunnel-mode template of reqid [`REQID`]:
//!
//! ```text
//! src <own subnet> dst <remote subnet> dir out  tmpl src <own pub> dst <remote pub>
//! src <remote subnet> dst <own subnet> dir in   tmpl src <remote pub> dst <own pub>
//! src <remote subnet> dst <own subnet> dir fwd  tmpl src <remote pub> dst <own pub>
//! ```
//!
//! charon negotiates the SAs (the connection's `policies = no`); the
//! kernel matches them to these policies by the reqid.

use std::net::{IpAddr, Ipv4Addr};

use flannel_core::ip::Ip4Net;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_xfrm::policy::{DelGetMessage, ModifyMessage};
use netlink_packet_xfrm::{
    Address, IPPROTO_ESP, LifetimeConfig, Selector, UserPolicyId, UserPolicyInfo, UserTemplate,
    XFRM_MODE_TUNNEL, XFRM_POLICY_ALLOW, XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT,
    XfrmAttrs, XfrmMessage,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_XFRM};

/// The reqid of every flannel policy and child SA (Go's `reqID`).
pub const REQID: u32 = 11;

const AF_INET: u16 = 2;
const ENOENT: i32 = 2;

/// A policy direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// `dir in`.
    In,
    /// `dir out`.
    Out,
    /// `dir fwd`.
    Fwd,
}

impl Dir {
    fn code(self) -> u8 {
        match self {
            Dir::In => XFRM_POLICY_IN,
            Dir::Out => XFRM_POLICY_OUT,
            Dir::Fwd => XFRM_POLICY_FWD,
        }
    }

    fn from_code(c: u8) -> Option<Dir> {
        match c {
            XFRM_POLICY_IN => Some(Dir::In),
            XFRM_POLICY_OUT => Some(Dir::Out),
            XFRM_POLICY_FWD => Some(Dir::Fwd),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dir::In => "in",
            Dir::Out => "out",
            Dir::Fwd => "fwd",
        }
    }
}

/// One flannel policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Policy {
    /// Direction.
    pub dir: Dir,
    /// Selector source.
    pub src: Ip4Net,
    /// Selector destination.
    pub dst: Ip4Net,
    /// Template (tunnel) source.
    pub tmpl_src: Ipv4Addr,
    /// Template (tunnel) destination.
    pub tmpl_dst: Ipv4Addr,
    /// Template reqid.
    pub reqid: u32,
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "xfrm policy src {} dst {} dir {} tmpl src {} dst {} proto esp reqid {} mode tunnel",
            self.src,
            self.dst,
            self.dir.name(),
            self.tmpl_src,
            self.tmpl_dst,
            self.reqid
        )
    }
}

/// The three policies for one remote lease.
pub fn peer_policies(
    own_subnet: Ip4Net,
    own_ip: Ipv4Addr,
    remote_subnet: Ip4Net,
    remote_ip: Ipv4Addr,
) -> [Policy; 3] {
    let out = Policy {
        dir: Dir::Out,
        src: own_subnet,
        dst: remote_subnet,
        tmpl_src: own_ip,
        tmpl_dst: remote_ip,
        reqid: REQID,
    };
    let inbound = Policy {
        dir: Dir::In,
        src: remote_subnet,
        dst: own_subnet,
        tmpl_src: remote_ip,
        tmpl_dst: own_ip,
        reqid: REQID,
    };
    let fwd = Policy {
        dir: Dir::Fwd,
        ..inbound.clone()
    };
    [out, inbound, fwd]
}

/// An XFRM operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{object}: {source}")]
pub struct XfrmError {
    /// What was acted on.
    pub object: String,
    /// The errno.
    #[source]
    pub source: std::io::Error,
}

fn selector(p: &Policy) -> Selector {
    Selector {
        daddr: Address::from_ipv4(&p.dst.addr()),
        saddr: Address::from_ipv4(&p.src.addr()),
        family: AF_INET,
        prefixlen_d: p.dst.prefix_len(),
        prefixlen_s: p.src.prefix_len(),
        ..Selector::default()
    }
}

fn modify(p: &Policy) -> ModifyMessage {
    let mut tmpl = UserTemplate::default();
    tmpl.id.daddr = Address::from_ipv4(&p.tmpl_dst);
    tmpl.id.proto = IPPROTO_ESP;
    tmpl.family = AF_INET;
    tmpl.saddr = Address::from_ipv4(&p.tmpl_src);
    tmpl.reqid = p.reqid;
    tmpl.mode = XFRM_MODE_TUNNEL;
    // Any algorithm, as Go's netlink library sends.
    tmpl.aalgos = u32::MAX;
    tmpl.ealgos = u32::MAX;
    tmpl.calgos = u32::MAX;
    let info = UserPolicyInfo {
        selector: selector(p),
        lifetime_cfg: LifetimeConfig::default(),
        direction: p.dir.code(),
        action: XFRM_POLICY_ALLOW,
        ..UserPolicyInfo::default()
    };
    ModifyMessage {
        user_policy_info: info,
        nlas: vec![XfrmAttrs::Template(vec![tmpl])],
    }
}

fn v4(a: &Address) -> Ipv4Addr {
    a.to_ipv4()
}

/// The flannel-shaped policy of a dumped message: IPv4, one ESP tunnel
/// template. `None` for anything else.
fn parse(m: &ModifyMessage) -> Option<Policy> {
    let info = &m.user_policy_info;
    let sel = &info.selector;
    if sel.family != AF_INET {
        return None;
    }
    let tmpls = m.nlas.iter().find_map(|a| match a {
        XfrmAttrs::Template(t) => Some(t),
        _ => None,
    })?;
    let [t] = tmpls.as_slice() else { return None };
    if t.id.proto != IPPROTO_ESP || t.mode != XFRM_MODE_TUNNEL {
        return None;
    }
    Some(Policy {
        dir: Dir::from_code(info.direction)?,
        src: Ip4Net::new(v4(&sel.saddr), sel.prefixlen_s).ok()?,
        dst: Ip4Net::new(v4(&sel.daddr), sel.prefixlen_d).ok()?,
        tmpl_src: v4(&t.saddr),
        tmpl_dst: v4(&t.id.daddr),
        reqid: t.reqid,
    })
}

/// A NETLINK_XFRM socket in the calling thread's network namespace. Calls
/// block for the kernel's answer (microseconds: no I/O behind them).
pub struct Xfrm {
    sock: Socket,
    seq: u32,
}

impl std::fmt::Debug for Xfrm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Xfrm")
    }
}

impl Xfrm {
    /// Opens the socket.
    pub fn open() -> Result<Xfrm, XfrmError> {
        let err = |source| XfrmError {
            object: "opening a NETLINK_XFRM socket".into(),
            source,
        };
        let mut sock = Socket::new(NETLINK_XFRM).map_err(err)?;
        sock.bind_auto().map_err(err)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(err)?;
        Ok(Xfrm { sock, seq: 0 })
    }

    fn exchange(
        &mut self,
        msg: XfrmMessage,
        flags: u16,
        object: &dyn Fn() -> String,
    ) -> Result<Vec<XfrmMessage>, XfrmError> {
        let err = |source: std::io::Error| XfrmError {
            object: object(),
            source,
        };
        self.seq = self.seq.wrapping_add(1);
        let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        req.header.flags = NLM_F_REQUEST | flags;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(err)?;
        let mut out = Vec::new();
        let mut rbuf = vec![0u8; 1 << 16];
        loop {
            let n = self.sock.recv(&mut &mut rbuf[..], 0).map_err(err)?;
            let mut off = 0;
            while off < n {
                let parsed =
                    NetlinkMessage::<XfrmMessage>::deserialize(&rbuf[off..n]).map_err(|e| {
                        err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            e.to_string(),
                        ))
                    })?;
                let len = parsed.header.length as usize;
                if parsed.header.sequence_number != self.seq {
                    off += len.max(16);
                    continue;
                }
                match parsed.payload {
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(err(std::io::Error::from_raw_os_error(-code.get()))),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    _ => {}
                }
                if flags & NLM_F_DUMP == 0 && flags & NLM_F_ACK == 0 {
                    return Ok(out);
                }
                off += len.max(16);
            }
        }
    }

    /// `ip xfrm policy update` (adds or replaces).
    pub fn update(&mut self, p: &Policy) -> Result<(), XfrmError> {
        self.exchange(XfrmMessage::UpdatePolicy(modify(p)), NLM_F_ACK, &|| {
            p.to_string()
        })
        .map(drop)
    }

    /// `ip xfrm policy delete`; a missing policy is success.
    pub fn delete(&mut self, p: &Policy) -> Result<(), XfrmError> {
        let id = DelGetMessage {
            user_policy_id: UserPolicyId {
                selector: selector(p),
                index: 0,
                direction: p.dir.code(),
            },
            nlas: Vec::new(),
        };
        match self.exchange(XfrmMessage::DeletePolicy(id), NLM_F_ACK, &|| {
            format!("deleting {p}")
        }) {
            Err(e) if e.source.raw_os_error() == Some(ENOENT) => Ok(()),
            r => r.map(drop),
        }
    }

    /// `ip xfrm policy`: every IPv4 policy with one ESP tunnel template.
    pub fn policies(&mut self) -> Result<Vec<Policy>, XfrmError> {
        let dump = XfrmMessage::GetPolicy(DelGetMessage::default());
        let msgs = self.exchange(dump, NLM_F_DUMP, &|| "xfrm policy list".to_string())?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                XfrmMessage::AddPolicy(p) => parse(p),
                _ => None,
            })
            .collect())
    }
}

/// Whether `ip` is inside `net`.
pub fn within(net: Ip4Net, ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(a) if net.contains(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_policies_per_peer_as_go() {
        let ps = peer_policies(
            "10.5.1.0/24".parse().unwrap(),
            [192, 168, 100, 1].into(),
            "10.5.2.0/24".parse().unwrap(),
            [192, 168, 100, 2].into(),
        );
        let text: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            text,
            [
                "xfrm policy src 10.5.1.0/24 dst 10.5.2.0/24 dir out tmpl src 192.168.100.1 dst 192.168.100.2 proto esp reqid 11 mode tunnel",
                "xfrm policy src 10.5.2.0/24 dst 10.5.1.0/24 dir in tmpl src 192.168.100.2 dst 192.168.100.1 proto esp reqid 11 mode tunnel",
                "xfrm policy src 10.5.2.0/24 dst 10.5.1.0/24 dir fwd tmpl src 192.168.100.2 dst 192.168.100.1 proto esp reqid 11 mode tunnel",
            ]
        );
        for p in &ps {
            assert_eq!(parse(&modify(p)).as_ref(), Some(p), "round trip");
        }
    }
}
