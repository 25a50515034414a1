//! `ip monitor link`.

use std::future::Future;

use futures_core::Stream;
use futures_util::StreamExt;
use futures_util::future::ready;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkAttribute;
use netlink_sys::AsyncSocket;
use rtnetlink::MulticastGroup;

use crate::link::parse_link;
use crate::{LinkInfo, NetlinkError};

/// One link notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// `RTM_NEWLINK`: a link appeared or changed (state, MTU, MAC, ...).
    New(LinkInfo),
    /// `RTM_DELLINK`: a link was deleted (or moved to another namespace).
    Del {
        /// Index the link had.
        index: u32,
        /// Name the link had.
        name: String,
    },
}

/// Receive buffer for the notification socket: bursts (a namespace with
/// many veths going away) must not overflow it.
const RCVBUF: usize = 1 << 20;

/// `ip monitor link`: a stream of [`LinkEvent`]s from a socket subscribed to
/// `RTNLGRP_LINK` in the calling thread's network namespace.
///
/// Returns the stream and the connection future, which the caller must poll
/// (e.g. `tokio::spawn`) for events to flow; it finishes after the stream is
/// dropped. The stream ends if the socket fails (e.g. `ENOBUFS` when events
/// were lost): resubscribe and resynchronise from a fresh listing. Must be
/// called inside a tokio runtime with I/O enabled.
pub fn watch_links() -> Result<
    (
        impl Stream<Item = LinkEvent> + Send + Unpin,
        impl Future<Output = ()> + Send + 'static,
    ),
    NetlinkError,
> {
    let (mut conn, _handle, messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
            .map_err(NetlinkError::Socket)?;
    conn.socket_mut()
        .socket_mut()
        .set_rx_buf_sz(RCVBUF)
        .map_err(NetlinkError::Socket)?;
    // The handle is dropped: this socket never sends requests, and the
    // connection keeps running as long as the unsolicited-message receiver
    // (the stream) is alive.
    let events = messages.filter_map(|(msg, _addr)| {
        ready(match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                Some(LinkEvent::New(parse_link(&l)))
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                let name = l
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                Some(LinkEvent::Del {
                    index: l.header.index,
                    name,
                })
            }
            _ => None,
        })
    });
    Ok((events, conn))
}

/// A resync trigger for a backend's own devices: yields when one of
/// `names` is deleted or set down. A deleted device takes every route
/// through it along (and leaves a userspace engine on a dead TUN), so the
/// runner should rebuild at once rather than at the next periodic resync.
///
/// Returns `None` (with a warning) when links cannot be watched; the
/// periodic resync still repairs the damage then. The netlink connection
/// is polled as part of the returned stream, so nothing is spawned.
/// Must be called inside a tokio runtime with I/O enabled.
pub fn device_damage_trigger(names: Vec<String>) -> Option<flannel_core::backend::ResyncTrigger> {
    let (events, conn) = match watch_links() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("cannot watch links; relying on the periodic resync: {e}");
            return None;
        }
    };
    let damage = events.filter_map(move |ev| {
        let hit = match ev {
            LinkEvent::Del { name, .. } => names.contains(&name),
            LinkEvent::New(link) => names.contains(&link.name) && !link.up,
        };
        ready(hit.then_some(()))
    });
    let conn = futures_util::stream::once(conn).filter_map(|()| ready(None));
    Some(Box::pin(futures_util::stream::select(damage, conn)))
}
