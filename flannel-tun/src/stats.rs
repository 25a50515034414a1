//! Engine counters: lock-free atomics updated by the datapath threads, read
//! as a [`StatsSnapshot`] (for metrics).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::codec::DropReason;

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters of one engine (all monotonic).
        #[derive(Debug, Default)]
        pub struct EngineStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`EngineStats`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl EngineStats {
            /// Reads every counter (each individually atomic).
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }

        /// Counter by counter: a caller that replaces a stopped engine by
        /// a new one adds the old engine's last counters to the new one's,
        /// so its totals never go back.
        impl std::ops::Add for StatsSnapshot {
            type Output = StatsSnapshot;
            fn add(self, other: StatsSnapshot) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.wrapping_add(other.$name),)* }
            }
        }
    };
}

stats! {
    /// Inner packets read from the TUN and sent to a peer.
    tx_packets,
    /// Bytes of those inner packets (before the codec's transform).
    tx_bytes,
    /// Datagrams sent on the UDP socket (inner packets after the codec).
    tx_datagrams,
    /// `sendmsg` calls carrying more than one datagram via `UDP_SEGMENT`.
    tx_gso_batches,
    /// GSO superpackets read from the TUN and segmented here.
    tx_superpackets,
    /// Inner packets written to the TUN from the wire.
    rx_packets,
    /// Bytes of those inner packets.
    rx_bytes,
    /// Datagrams received on the UDP socket (after GRO splitting).
    rx_datagrams,
    /// TUN writes that carried several coalesced TCP segments.
    rx_coalesced_writes,
    /// Packets the codec wrote back into the TUN (e.g. ICMP errors).
    replies,
    /// Drops: no peer for the destination.
    drop_no_peer,
    /// Drops: TTL reached zero.
    drop_ttl,
    /// Drops: malformed packet or datagram.
    drop_malformed,
    /// Drops: other codec decisions.
    drop_codec,
    /// Datagrams lost to a failed send.
    drop_send_error,
    /// Packets lost to a failed TUN write.
    drop_tun_error,
    /// Switches from the GSO path to plain batching at run time.
    fallback_events,
}

impl EngineStats {
    /// Counts one drop for `reason`.
    pub fn count_drop(&self, reason: DropReason) {
        let c = match reason {
            DropReason::NoPeer => &self.drop_no_peer,
            DropReason::Ttl => &self.drop_ttl,
            DropReason::Malformed => &self.drop_malformed,
            DropReason::Codec => &self.drop_codec,
        };
        c.fetch_add(1, Relaxed);
    }
}

impl StatsSnapshot {
    /// Total drops of every reason.
    pub fn drops(&self) -> u64 {
        self.drop_no_peer
            + self.drop_ttl
            + self.drop_malformed
            + self.drop_codec
            + self.drop_send_error
            + self.drop_tun_error
    }
}
