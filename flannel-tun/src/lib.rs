//! A userspace TUN ↔ UDP datapath engine, fast enough for production: the
//! datapath of flannel's `udp` backend and of the userspace WireGuard
//! backend.
//!
//! # How it is fast
//! One `read` from the TUN returns a TCP "superpacket" of up to 64 KB (the
//! TUN is opened with `IFF_VNET_HDR` and `TUNSETOFFLOAD` TSO4/TSO6/USO): it
//! is cut into MSS-sized inner packets here ([`gso`]) and all of them leave
//! in one `sendmsg` with `UDP_SEGMENT`, one inner packet per datagram (so a
//! peer without any of this, like Go flannel, still gets one packet per
//! datagram). The receiver gets them back in one `recvmmsg` thanks to
//! `UDP_GRO`, and the consecutive segments of a TCP flow are merged again
//! into one GSO write to the TUN ([`gro`]). Without these offloads a
//! packet-at-a-time loop moves about 1/15 of the traffic; the engine falls
//! back to plain `sendmmsg`/`recvmmsg` batching ([`OffloadMode::Batch`])
//! when the kernel refuses them.
//!
//! # Pieces
//! - [`open_tun`] / [`TunConfig`] / [`Tun`]: the device (persistent if
//!   asked, re-attached on restart). Addresses and routes are the caller's
//!   (flannel-netlink).
//! - [`Codec`]: the backend's per-packet policy and transform
//!   ([`PlainCodec`] sends packets unchanged).
//! - [`PeerTable`] / [`PeerTableHandle`]: longest-prefix match from inner
//!   destination to peer, swapped atomically on lease changes.
//! - [`Engine::start`] → [`EngineHandle`]: the threads (one TUN→UDP and one
//!   UDP→TUN per queue, one timer), stopped promptly by
//!   [`EngineHandle::stop`] or on drop; [`EngineStats`] counters.
//!
//! No async runtime is involved: the threads block in `poll` on their fd and
//! an eventfd that `stop` signals.
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use flannel_tun::{Engine, EngineOptions, Peer, PeerTableHandle, PlainCodec, TunConfig, open_tun};
//!
//! let tun = open_tun(&TunConfig::new("flannel0", 1472))?;
//! let socket = std::net::UdpSocket::bind("192.168.100.1:8285")?;
//! let peers = PeerTableHandle::new();
//! peers.set(vec![(
//!     "10.5.2.0/24".parse()?,
//!     Peer { endpoint: "192.168.100.2:8285".parse()?, id: 0 },
//! )]);
//! let engine = Engine::start(tun, socket, Arc::new(PlainCodec), peers.clone(), EngineOptions::default())?;
//! println!("mode {}, sent {}", engine.mode(), engine.stats().snapshot().tx_packets);
//! engine.stop();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod checksum;
pub mod codec;
mod engine;
pub mod gro;
pub mod gso;
pub mod peers;
mod stats;
mod sys;
mod tun;
pub mod vnet;

pub use codec::{Codec, DropReason, Io, Packet, PlainCodec, RxVerdict, TxVerdict};
pub use engine::{Engine, EngineHandle, EngineOptions, OffloadMode};
pub use peers::{Peer, PeerTable, PeerTableHandle};
pub use stats::{EngineStats, StatsSnapshot};
pub use tun::{Tun, TunConfig, open_tun};

/// Errors of opening the TUN and starting the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A TUN operation failed.
    #[error("TUN {name}: {op} failed")]
    Tun {
        /// The interface.
        name: String,
        /// The operation (ioctl) that failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Setting up the UDP socket failed.
    #[error("UDP socket: {op} failed")]
    Socket {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A datapath thread could not be spawned.
    #[error("spawning a datapath thread failed")]
    Thread {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
