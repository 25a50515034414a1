//! flannel's only rtnetlink user.
//!
//! Every kernel object flannel programs — the vxlan device, its address, the
//! per-lease neighbour (ARP/NDP), FDB and route entries, host-gw routes — is
//! created, replaced, listed and deleted through [`Netlink`]. Each method is
//! documented with the `ip`/`bridge` command it equals, and the write
//! operations are idempotent the way flannel needs them to be: `replace_*`
//! overwrite, `add_address` accepts an existing address, and every `del_*`
//! accepts an object that is already gone.
//!
//! The public API speaks `std::net::IpAddr`, [`Mac`] and plain structs; the
//! underlying [`rtnetlink::Handle`] is reachable only through
//! [`Netlink::raw`].
//!
//! Also here:
//! * [`NetOps`] — the operations backends use, as a trait, implemented by
//!   [`Netlink`] and (feature `fake`) by the recording `fake::FakeNetlink`;
//! * [`sets`] — routes, neighbours and FDB entries as object sets of the
//!   desired-state [`Reconciler`](flannel_core::reconcile::Reconciler);
//! * [`RouteNetwork`] — the generic network of route-per-lease backends;
//! * [`iface`] — the external interface selection of flanneld;
//! * [`watch_links`] — `ip monitor link` as a [`futures_core::Stream`].
//!
//! # No hidden tasks
//!
//! Opening a socket returns the connection future next to the handle; the
//! caller drives it (usually `tokio::spawn`). Requests on a [`Netlink`] whose
//! connection future is not polled never complete. Sockets are registered
//! with tokio's reactor, so [`Netlink::connect`] and [`watch_links`] must be
//! called inside a tokio runtime with I/O enabled. A socket lives in the
//! network namespace of the thread that opened it.
//!
//! # Features
//!
//! None. Linux only.
//!
//! # Example
//!
//! ```no_run
//! use std::net::{IpAddr, Ipv4Addr};
//! use flannel_netlink::{Netlink, Route, VxlanSpec, parse_mac};
//!
//! # async fn demo() -> Result<(), flannel_netlink::NetlinkError> {
//! let (nl, conn) = Netlink::connect()?;
//! tokio::spawn(conn);
//!
//! let eth0 = nl.link_by_name("eth0").await?.expect("eth0");
//! let dev = nl
//!     .ensure_vxlan(&VxlanSpec {
//!         name: "flannel.1".into(),
//!         vni: 1,
//!         vtep_index: Some(eth0.index),
//!         local: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 100, 1))),
//!         port: None,
//!         learning: false,
//!         gbp: false,
//!         mtu: Some(1450),
//!         mac: None,
//!     })
//!     .await?
//!     .link;
//! nl.add_address(dev.index, "10.5.72.0".parse().unwrap(), 32).await?;
//! nl.set_up(dev.index).await?;
//!
//! // One remote lease: 10.5.3.0/24 behind 192.168.100.2.
//! let mac = parse_mac("c6:d2:32:6f:8f:44")?;
//! let gw: IpAddr = "10.5.3.0".parse().unwrap();
//! nl.replace_neigh(dev.index, gw, mac).await?;
//! nl.replace_fdb(dev.index, mac, "192.168.100.2".parse().unwrap()).await?;
//! let mut route = Route::unicast(gw, 24);
//! route.gateway = Some(gw);
//! route.oif = Some(dev.index);
//! route.onlink = true;
//! nl.replace_route(&route).await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;

use futures_util::StreamExt;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_MULTIPART, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::AsyncSocket;

mod addr;
mod error;
#[cfg(feature = "fake")]
pub mod fake;
pub mod iface;
mod ipip;
mod link;
mod mac;
mod neigh;
mod ops;
mod route;
pub mod route_network;
pub mod sets;
mod watch;

pub use addr::AddrInfo;
pub use error::NetlinkError;
pub use ipip::{EOPNOTSUPP, IpipInfo, IpipSpec};
pub use link::{EnsuredLink, LinkInfo, VxlanInfo, VxlanSpec};
pub use mac::{Mac, format_mac, parse_mac, random_vtep_mac};
pub use neigh::{FdbEntry, NeighInfo};
pub use ops::{NetOps, SharedOps, ops_from_host};
pub use route::{
    Family, RT_SCOPE_HOST, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN, RTPROT_BOOT,
    RTPROT_KERNEL, RTPROT_STATIC, Route, RouteKind,
};
pub use route_network::RouteNetwork;
pub use sets::{FdbObject, FdbSet, Neighbour, NeighbourSet, RouteSet};
pub use watch::{LinkEvent, device_damage_trigger, watch_links};

/// A NETLINK_ROUTE socket handle: the `ip`/`bridge` commands flannel needs.
///
/// Cheap to clone (clones share the socket). Created with
/// [`Netlink::connect`].
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

/// Why a raw request failed, before the object description is attached.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The kernel NACKed with this (positive) errno and maybe an extack text.
    Errno { errno: i32, detail: Option<String> },
    /// The request could not be sent or the answer stream ended early.
    Closed(String),
    /// The answer did not have the expected shape.
    Unexpected(String),
}

impl Failure {
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            Failure::Errno { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub(crate) fn into_error(self, object: String) -> NetlinkError {
        match self {
            Failure::Errno { errno, detail } => NetlinkError::Kernel {
                object,
                source: std::io::Error::from_raw_os_error(errno),
                detail,
            },
            Failure::Closed(reason) => NetlinkError::Request { object, reason },
            Failure::Unexpected(detail) => NetlinkError::Unexpected { object, detail },
        }
    }
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket in the calling thread's network namespace.
    ///
    /// The returned future is the connection: the caller must poll it (e.g.
    /// `tokio::spawn(conn)`) for any request to complete; it finishes once
    /// every clone of the [`Netlink`] is dropped. Must be called inside a
    /// tokio runtime with I/O enabled.
    pub fn connect() -> Result<(Netlink, impl Future<Output = ()> + Send + 'static), NetlinkError> {
        let (mut conn, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        // Hand ACKs and NLMSG_DONE to us too: that is how `exchange` tells a
        // completed request from a connection that went away mid-answer.
        conn.set_forward_ack(true);
        conn.set_forward_done(true);
        let sock = conn.socket_mut().socket_mut();
        // Extended acks make the kernel explain EINVAL-style refusals
        // ("Nexthop device is not up"); capped acks keep NACKs small.
        // Both are best effort: old kernels just ignore them.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok((Netlink { handle }, conn))
    }

    /// The underlying rtnetlink handle, for operations this crate does not
    /// wrap. Prefer adding a helper here over using it.
    pub fn raw(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// Sends one request and collects the inner messages of the answer.
    /// `flags` is added to `NLM_F_REQUEST`.
    pub(crate) async fn exchange(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        let mut handle = self.handle.clone();
        let mut answers = handle
            .request(req)
            .map_err(|e| Failure::Closed(e.to_string()))?;
        let mut out = Vec::new();
        let mut finished = false;
        while let Some(answer) = answers.next().await {
            let hdr_flags = answer.header.flags;
            match answer.payload {
                NetlinkPayload::InnerMessage(inner) => {
                    if hdr_flags & NLM_F_MULTIPART == 0 && flags & NLM_F_ACK == 0 {
                        finished = true;
                    }
                    out.push(inner);
                }
                NetlinkPayload::Error(err) => match err.code {
                    None => finished = true,
                    Some(code) => {
                        return Err(Failure::Errno {
                            errno: code.get().saturating_abs(),
                            detail: extack_message(hdr_flags, &err.header),
                        });
                    }
                },
                NetlinkPayload::Done(done) => {
                    if done.code != 0 {
                        return Err(Failure::Errno {
                            errno: done.code.saturating_abs(),
                            detail: None,
                        });
                    }
                    finished = true;
                }
                NetlinkPayload::Overrun(_) => {
                    return Err(Failure::Unexpected("netlink overrun".into()));
                }
                _ => {}
            }
        }
        if finished {
            Ok(out)
        } else {
            Err(Failure::Closed(
                "the answer stream ended early (is the connection future being polled?)".into(),
            ))
        }
    }

    /// A request answered by an ACK (or a NACK).
    pub(crate) async fn ack(&self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), Failure> {
        self.exchange(msg, NLM_F_ACK | flags).await.map(drop)
    }

    /// `dev <name>` for error messages; falls back to `if<index>` (as `ip`
    /// prints unknown indexes) when the link cannot be looked up.
    pub(crate) async fn dev_label(&self, index: u32) -> String {
        match self.link_by_index(index).await {
            Ok(Some(l)) => l.name,
            _ => format!("if{index}"),
        }
    }
}

/// Extracts `NLMSGERR_ATTR_MSG` from a NACK's payload (after the echoed
/// request), when the kernel attached extended-ack TLVs.
fn extack_message(flags: u16, payload: &[u8]) -> Option<String> {
    const NLM_F_CAPPED: u16 = 0x100;
    const NLM_F_ACK_TLVS: u16 = 0x200;
    const NLMSGERR_ATTR_MSG: u16 = 1;
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // The payload (after the errno) starts with the echoed request: only its
    // 16-byte header when capped, the whole message otherwise.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        let len = payload.get(0..4)?;
        let len = u32::from_ne_bytes([len[0], len[1], len[2], len[3]]) as usize;
        (len + 3) & !3
    };
    let mut tlvs = payload.get(echoed..)?;
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &tlvs[4..len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            let text = String::from_utf8_lossy(text).trim().to_string();
            return (!text.is_empty()).then_some(text);
        }
        tlvs = tlvs.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}
