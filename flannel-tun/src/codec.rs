//! The per-backend packet policy: what happens to an inner packet on its way
//! to the wire and to a datagram on its way to the TUN.
//!
//! The udp backend's codec is a plaintext transform with Go's TTL and ICMP
//! rules; WireGuard's encrypts per peer and runs handshakes from
//! [`Codec::tick`]. The engine owns the threads, buffers and syscalls; the
//! codec only looks at one packet at a time, in place.

use std::net::SocketAddr;

use crate::peers::Peer;

/// Why a packet was dropped (counted per reason in
/// [`EngineStats`](crate::EngineStats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// No peer for the destination (and the codec sent no reply).
    NoPeer,
    /// TTL / hop limit reached zero.
    Ttl,
    /// Not a well-formed IP packet (or datagram) for this codec.
    Malformed,
    /// Any other codec decision (e.g. failed authentication, no session).
    Codec,
}

impl DropReason {
    /// A stable lowercase name, as used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoPeer => "no_peer",
            DropReason::Ttl => "ttl",
            DropReason::Malformed => "malformed",
            DropReason::Codec => "codec",
        }
    }
}

/// One packet in an engine buffer, with room around it so a codec can grow
/// it in place (prepend a header into the headroom, append a tag into the
/// tailroom) or replace it (an ICMP error).
#[derive(Debug)]
pub struct Packet<'a> {
    buf: &'a mut [u8],
    start: usize,
    end: usize,
}

impl<'a> Packet<'a> {
    /// A packet occupying `buf[start..end]`.
    ///
    /// Panics if `start > end` or `end > buf.len()`.
    pub fn new(buf: &'a mut [u8], start: usize, end: usize) -> Packet<'a> {
        assert!(
            start <= end && end <= buf.len(),
            "packet range outside its buffer"
        );
        Packet { buf, start, end }
    }

    /// The packet bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The packet bytes, mutable (e.g. to decrement the TTL).
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// Packet length.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// `true` for an empty packet.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Free bytes before the packet.
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Free bytes after the packet.
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.end
    }

    /// The whole buffer and the packet's current range, for codecs that
    /// transform in place (e.g. encrypt into `buf[start - 16..end + 16]`);
    /// follow with [`Packet::set_range`].
    pub fn buffer_mut(&mut self) -> (&mut [u8], usize, usize) {
        (self.buf, self.start, self.end)
    }

    /// Makes `buf[start..end]` the packet. Panics when out of bounds.
    pub fn set_range(&mut self, start: usize, end: usize) {
        assert!(
            start <= end && end <= self.buf.len(),
            "packet range outside its buffer"
        );
        self.start = start;
        self.end = end;
    }

    /// Replaces the packet with `bytes` (placed at the current start, or at
    /// the buffer start when it does not fit there). Panics when the buffer
    /// is smaller than `bytes`.
    pub fn replace(&mut self, bytes: &[u8]) {
        let start = if self.start + bytes.len() <= self.buf.len() {
            self.start
        } else {
            0
        };
        self.buf[start..start + bytes.len()].copy_from_slice(bytes);
        self.set_range(start, start + bytes.len());
    }
}

/// What to do with an inner packet read from the TUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxVerdict {
    /// Send the packet (as it now is) in one datagram to this endpoint.
    Send(SocketAddr),
    /// Write the packet (as it now is, e.g. replaced by an ICMP error) back
    /// into the TUN.
    ToTun,
    /// Drop it.
    Drop(DropReason),
}

/// What to do with a datagram received from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxVerdict {
    /// The packet (as it now is) is one inner IP packet: write it to the TUN.
    ToTun,
    /// The codec handled it (e.g. a handshake message; replies went out
    /// through [`Io`]).
    Consumed,
    /// Drop it.
    Drop(DropReason),
}

/// Side channels a codec may use from any callback: send a datagram (a
/// handshake response, a keepalive) or write an IP packet into the TUN.
/// Errors are counted by the engine, not returned.
pub trait Io {
    /// Sends one datagram to `dst` now.
    fn send_to(&mut self, dst: SocketAddr, datagram: &[u8]);
    /// Writes one IP packet into the TUN now.
    fn write_tun(&mut self, packet: &[u8]);
}

/// The per-backend packet policy and transform. Called concurrently from
/// the engine's threads (one transmit and one receive thread per queue,
/// plus a timer thread), hence `Sync`.
pub trait Codec: Send + Sync + 'static {
    /// Bytes a transformed packet may grow at the front (its header).
    fn headroom(&self) -> usize {
        0
    }

    /// Bytes a transformed packet may grow at the end (tag, padding).
    fn tailroom(&self) -> usize {
        0
    }

    /// `true` when equal-sized inputs give equal-sized outputs (a
    /// plaintext pass-through; WireGuard pads to 16 and adds 32), so the
    /// engine can send a GSO train's segments with one `UDP_SEGMENT` call.
    /// When `false` every datagram is sent on its own. The engine checks
    /// the real sizes either way.
    fn size_preserving(&self) -> bool {
        true
    }

    /// An inner IP packet read from the TUN (one packet: superpackets are
    /// already segmented, checksums complete), for `peer` (`None` when no
    /// prefix matches). May change the packet in place.
    fn encap(&self, pkt: &mut Packet<'_>, peer: Option<&Peer>, io: &mut dyn Io) -> TxVerdict;

    /// A datagram received from `src`. On [`RxVerdict::ToTun`] the packet
    /// must hold exactly one inner IP packet.
    fn decap(&self, pkt: &mut Packet<'_>, src: SocketAddr, io: &mut dyn Io) -> RxVerdict;

    /// Called about every 100–250 ms from the engine's timer thread
    /// (keepalives, rekeying, handshake retries).
    fn tick(&self, io: &mut dyn Io) {
        let _ = io;
    }
}

/// The simplest codec: every inner packet goes unchanged to its peer, and
/// every datagram is written unchanged to the TUN; no peer means drop. The
/// wire format is the raw inner packet, as Go flannel's udp backend (which
/// adds TTL and ICMP rules on top of this).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainCodec;

impl Codec for PlainCodec {
    fn encap(&self, pkt: &mut Packet<'_>, peer: Option<&Peer>, _io: &mut dyn Io) -> TxVerdict {
        match peer {
            Some(p) if !pkt.is_empty() => TxVerdict::Send(p.endpoint),
            Some(_) => TxVerdict::Drop(DropReason::Malformed),
            None => TxVerdict::Drop(DropReason::NoPeer),
        }
    }

    fn decap(&self, pkt: &mut Packet<'_>, _src: SocketAddr, _io: &mut dyn Io) -> RxVerdict {
        match pkt.data().first().map(|b| b >> 4) {
            Some(4) | Some(6) => RxVerdict::ToTun,
            _ => RxVerdict::Drop(DropReason::Malformed),
        }
    }
}
