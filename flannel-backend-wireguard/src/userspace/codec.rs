//! The WireGuard [`Codec`] for the userspace datapath engine: every inner
//! packet is encrypted for its peer (found by the engine's prefix table,
//! whose peer ids are [`WgCore`] peer ids), every datagram goes through the
//! protocol core, and the engine's timer drives the protocol's timers.

use super::core::{Decap, Encap, MAX_PACKET, Sender, WgCore};
use flannel_tun::{Codec, DropReason, Io, Packet, Peer, RxVerdict, TxVerdict};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;

/// Bytes WireGuard adds to a packet: the 16-byte data header and the
/// 16-byte tag (boringtun does not pad).
pub const GROWTH: usize = 32;

thread_local! {
    /// One scratch buffer per datapath thread: boringtun writes its output
    /// next to (never over) its input.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_PACKET]);
}

struct IoSender<'a>(&'a mut dyn Io);

impl Sender for IoSender<'_> {
    fn send_to(&mut self, dst: SocketAddr, datagram: &[u8]) {
        self.0.send_to(dst, datagram);
    }
}

/// The codec (see the module docs).
pub struct WgCodec {
    core: Arc<WgCore>,
}

impl WgCodec {
    /// A codec over `core`.
    pub fn new(core: Arc<WgCore>) -> WgCodec {
        WgCodec { core }
    }
}

impl Codec for WgCodec {
    fn tailroom(&self) -> usize {
        GROWTH
    }

    fn size_preserving(&self) -> bool {
        // Equal inner sizes give equal datagrams (+32 each), so a GSO train
        // still leaves in one UDP_SEGMENT call.
        true
    }

    fn encap(&self, pkt: &mut Packet<'_>, peer: Option<&Peer>, io: &mut dyn Io) -> TxVerdict {
        let Some(peer) = peer else {
            return TxVerdict::Drop(DropReason::NoPeer);
        };
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            match self
                .core
                .encapsulate(peer.id, pkt.data(), &mut s, &mut IoSender(io))
            {
                Encap::Send(dst, len) => {
                    pkt.replace(&s[..len]);
                    TxVerdict::Send(dst)
                }
                // Waiting for the handshake inside the peer's queue: not
                // lost, but not sent by the engine either.
                Encap::Queued => TxVerdict::Drop(DropReason::Codec),
                Encap::NoPeer => TxVerdict::Drop(DropReason::NoPeer),
                Encap::Error => TxVerdict::Drop(DropReason::Codec),
            }
        })
    }

    fn decap(&self, pkt: &mut Packet<'_>, src: SocketAddr, io: &mut dyn Io) -> RxVerdict {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            match self
                .core
                .decapsulate(src, pkt.data(), &mut s, &mut IoSender(io))
            {
                Decap::ToTun(len) => {
                    pkt.replace(&s[..len]);
                    RxVerdict::ToTun
                }
                Decap::Consumed => RxVerdict::Consumed,
                Decap::NoPeer => RxVerdict::Drop(DropReason::NoPeer),
                Decap::Rejected => RxVerdict::Drop(DropReason::Codec),
            }
        })
    }

    fn tick(&self, io: &mut dyn Io) {
        self.core.tick(&mut IoSender(io));
    }
}
