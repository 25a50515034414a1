//! The peer table: which remote endpoint an inner destination address goes
//! to, by longest-prefix match over IPv4 and IPv6 prefixes.
//!
//! A [`PeerTable`] is immutable; a [`PeerTableHandle`] holds the current
//! one and replaces it wholesale when leases change, so the datapath
//! threads take one cheap snapshot per batch and never wait for an update
//! (and an update never waits for the datapath).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use ipnet::IpNet;

/// A remote node: where its datagrams go, and an id the codec may use to
/// find its per-peer state (WireGuard session); the udp backend leaves it 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The remote UDP endpoint (its `PublicIP:Port`).
    pub endpoint: SocketAddr,
    /// A caller-chosen identifier, passed through to the codec untouched.
    pub id: u32,
}

/// One address family's prefixes, grouped by length (longest first) with
/// a hash map per length: a lookup costs one hash probe per distinct prefix
/// length (usually one or two), whatever the number of peers.
#[derive(Debug, Clone, Default)]
struct Family<A> {
    by_len: Vec<(u8, HashMap<A, Peer>)>,
}

impl<A: std::hash::Hash + Eq + Copy> Family<A> {
    fn insert(&mut self, len: u8, key: A, peer: Peer) {
        match self.by_len.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(i) => {
                self.by_len[i].1.insert(key, peer);
            }
            Err(i) => {
                let mut m = HashMap::new();
                m.insert(key, peer);
                self.by_len.insert(i, (len, m));
            }
        }
    }

    fn lookup(&self, mask: impl Fn(u8) -> A) -> Option<&Peer> {
        self.by_len.iter().find_map(|(len, m)| m.get(&mask(*len)))
    }
}

fn mask_v4(a: Ipv4Addr, len: u8) -> u32 {
    let bits = u32::from(a);
    if len == 0 {
        0
    } else {
        bits & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask_v6(a: Ipv6Addr, len: u8) -> u128 {
    let bits = u128::from(a);
    if len == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(len)))
    }
}

/// An immutable longest-prefix-match table from IP prefixes to peers.
#[derive(Debug, Clone, Default)]
pub struct PeerTable {
    v4: Family<u32>,
    v6: Family<u128>,
    len: usize,
}

impl PeerTable {
    /// Builds a table; of duplicate prefixes the last one wins. Prefixes
    /// need not be masked (host bits are ignored).
    pub fn new(routes: impl IntoIterator<Item = (IpNet, Peer)>) -> PeerTable {
        let mut t = PeerTable::default();
        for (net, peer) in routes {
            match net {
                IpNet::V4(n) => {
                    t.v4.insert(n.prefix_len(), mask_v4(n.addr(), n.prefix_len()), peer)
                }
                IpNet::V6(n) => {
                    t.v6.insert(n.prefix_len(), mask_v6(n.addr(), n.prefix_len()), peer)
                }
            }
        }
        t.len = t.v4.by_len.iter().map(|(_, m)| m.len()).sum::<usize>()
            + t.v6.by_len.iter().map(|(_, m)| m.len()).sum::<usize>();
        t
    }

    /// The peer of the longest prefix containing `dst`.
    pub fn lookup(&self, dst: IpAddr) -> Option<&Peer> {
        match dst {
            IpAddr::V4(a) => self.v4.lookup(|l| mask_v4(a, l)),
            IpAddr::V6(a) => self.v6.lookup(|l| mask_v6(a, l)),
        }
    }

    /// The peer for the destination address of the IP packet `pkt` (IPv4
    /// bytes 16..20, IPv6 bytes 24..40); `None` for no match or a packet too
    /// short to carry a destination.
    pub fn lookup_packet(&self, pkt: &[u8]) -> Option<&Peer> {
        self.lookup(packet_dst(pkt)?)
    }

    /// Number of distinct prefixes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` when the table has no prefixes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The destination address of an IP packet, `None` when too short or not
/// IPv4/IPv6.
pub fn packet_dst(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => {
            let b: [u8; 4] = pkt[16..20].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 if pkt.len() >= 40 => {
            let b: [u8; 16] = pkt[24..40].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// A shared, atomically replaceable [`PeerTable`]. Clones share the table.
#[derive(Debug, Clone, Default)]
pub struct PeerTableHandle {
    inner: Arc<RwLock<Arc<PeerTable>>>,
}

impl PeerTableHandle {
    /// A handle holding an empty table.
    pub fn new() -> PeerTableHandle {
        PeerTableHandle::default()
    }

    /// Replaces the whole table (one lease event or resync = one call).
    pub fn set(&self, routes: Vec<(IpNet, Peer)>) {
        self.set_table(PeerTable::new(routes));
    }

    /// Replaces the whole table with a prebuilt one.
    pub fn set_table(&self, table: PeerTable) {
        let new = Arc::new(table);
        // The write lock is held only for a pointer swap; the old table is
        // dropped after the lock is released.
        let old = {
            let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *g, new)
        };
        drop(old);
    }

    /// The current table (a reference-counted snapshot).
    pub fn load(&self) -> Arc<PeerTable> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> Peer {
        Peer {
            endpoint: SocketAddr::from(([192, 168, 0, n], 8285)),
            id: u32::from(n),
        }
    }

    #[test]
    fn longest_prefix_wins_for_both_families() {
        let t = PeerTable::new(vec![
            ("10.0.0.0/8".parse().unwrap(), peer(1)),
            ("10.5.0.0/16".parse().unwrap(), peer(2)),
            ("10.5.7.9/24".parse().unwrap(), peer(3)),
            ("fd00::/16".parse().unwrap(), peer(4)),
            ("fd00:1::/64".parse().unwrap(), peer(5)),
            ("0.0.0.0/0".parse().unwrap(), peer(6)),
        ]);
        let l = |s: &str| t.lookup(s.parse().unwrap()).map(|p| p.id);
        assert_eq!(l("10.5.7.200"), Some(3));
        assert_eq!(l("10.5.8.1"), Some(2));
        assert_eq!(l("10.6.0.1"), Some(1));
        assert_eq!(l("11.0.0.1"), Some(6));
        assert_eq!(l("fd00:1::5"), Some(5));
        assert_eq!(l("fd00:2::5"), Some(4));
        assert_eq!(l("fe80::1"), None);
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn handle_swaps_whole_table() {
        let h = PeerTableHandle::new();
        let before = h.load();
        h.set(vec![("10.1.0.0/24".parse().unwrap(), peer(1))]);
        assert!(before.is_empty());
        assert_eq!(
            h.clone()
                .load()
                .lookup("10.1.0.9".parse().unwrap())
                .map(|p| p.id),
            Some(1)
        );
        let mut pkt = [0u8; 20];
        pkt[0] = 0x45;
        pkt[16..20].copy_from_slice(&[10, 1, 0, 3]);
        assert_eq!(h.load().lookup_packet(&pkt).map(|p| p.id), Some(1));
    }
}
