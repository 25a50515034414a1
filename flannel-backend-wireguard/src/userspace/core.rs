//! The WireGuard protocol state of a userspace device: one boringtun
//! [`Tunn`] per peer (handshake, sessions, cookies, keepalive and rekey
//! timers), the lookup of the peer an incoming datagram belongs to (by
//! receiver index, or by the static key inside a handshake initiation), and
//! cryptokey routing on the way in (a decrypted packet must come from one of
//! the peer's allowed IPs).
//!
//! Independent of any datapath: [`WgCore::encapsulate`],
//! [`WgCore::decapsulate`] and [`WgCore::tick`] take byte slices and a
//! [`Sender`] for the datagrams the protocol sends by itself (handshake
//! messages, cookie replies, keepalives, queued packets).

use crate::device::{DeviceStatus, PeerStatus};
use crate::keys::Key;
use crate::peers::{AllowedIp, PeerConfig};
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

/// Handshakes per second before the device asks for cookies (boringtun's
/// device uses the same limit).
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// The largest datagram or packet handled, plus WireGuard's overhead.
pub const MAX_PACKET: usize = 65_535 + 32 + 16;

/// Where the protocol's own datagrams go.
pub trait Sender {
    /// Sends `datagram` to `dst` now.
    fn send_to(&mut self, dst: SocketAddr, datagram: &[u8]);
}

/// What to do with an outgoing inner packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// `out[..len]` is the datagram for `dst`.
    Send(SocketAddr, usize),
    /// Queued until the handshake completes (which was started).
    Queued,
    /// No peer with that id, or the peer has no endpoint yet.
    NoPeer,
    /// The protocol refused it.
    Error,
}

/// What to do with an incoming datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decap {
    /// `out[..len]` is an inner IP packet for the TUN.
    ToTun(usize),
    /// A protocol message, handled (answers went through the [`Sender`]).
    Consumed,
    /// Not for any peer of ours.
    NoPeer,
    /// Malformed, unauthenticated, replayed, or from outside the peer's
    /// allowed IPs.
    Rejected,
}

struct PeerState {
    id: u32,
    config: RwLock<PeerConfig>,
    /// The configured endpoint, or where the peer last spoke from.
    endpoint: Mutex<Option<SocketAddr>>,
    tunn: Mutex<Tunn>,
}

impl PeerState {
    fn allows(&self, ip: IpAddr) -> bool {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .allowed_ips
            .iter()
            .any(|&(net, prefix)| contains(net, prefix, ip))
    }

    fn config(&self) -> PeerConfig {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn contains(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(n) & m == u32::from(a) & m
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(n) & m == u128::from(a) & m
        }
        _ => false,
    }
}

struct Identity {
    secret: StaticSecret,
    public: PublicKey,
    limiter: Arc<RateLimiter>,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<u32, Arc<PeerState>>,
    by_key: HashMap<[u8; 32], u32>,
}

/// The protocol state of one userspace WireGuard device (see the module
/// docs). Shared between the datapath threads and the control plane.
pub struct WgCore {
    identity: RwLock<Option<Identity>>,
    listen_port: AtomicU32,
    table: RwLock<Table>,
    next_id: AtomicU32,
    last_reset: Mutex<Instant>,
}

impl Default for WgCore {
    fn default() -> Self {
        WgCore::new()
    }
}

impl WgCore {
    /// A device without a key or peers.
    pub fn new() -> WgCore {
        // Peer ids are the high 24 bits of boringtun's session indices:
        // start anywhere so that indices differ across restarts.
        let start = rand_core::RngCore::next_u32(&mut rand_core::OsRng) & 0x00ff_ffff;
        WgCore {
            identity: RwLock::new(None),
            listen_port: AtomicU32::new(0),
            table: RwLock::new(Table::default()),
            next_id: AtomicU32::new(start.max(1)),
            last_reset: Mutex::new(Instant::now()),
        }
    }

    fn read_table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_table(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the private key (sessions of a changed key are dropped) and
    /// records the listen port.
    pub fn configure(&self, private_key: &Key, listen_port: u16) {
        self.listen_port
            .store(u32::from(listen_port), Ordering::Relaxed);
        let secret = StaticSecret::from(*private_key.as_bytes());
        let public = PublicKey::from(&secret);
        let mut id = self.identity.write().unwrap_or_else(|e| e.into_inner());
        if id.as_ref().is_some_and(|i| i.public == public) {
            return;
        }
        let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        for p in self.read_table().by_id.values() {
            p.tunn
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_static_private(secret.clone(), public, Some(limiter.clone()));
        }
        *id = Some(Identity {
            secret,
            public,
            limiter,
        });
    }

    /// The listen port last configured.
    pub fn listen_port(&self) -> u16 {
        self.listen_port.load(Ordering::Relaxed) as u16
    }

    /// The device's public key, once it has a private key.
    pub fn public_key(&self) -> Option<Key> {
        let id = self.identity.read().unwrap_or_else(|e| e.into_inner());
        id.as_ref().map(|i| Key::from_bytes(i.public.to_bytes()))
    }

    /// The private key (for the UAPI `get`, which reports it as the kernel
    /// does to root).
    pub fn private_key(&self) -> Option<Key> {
        let id = self.identity.read().unwrap_or_else(|e| e.into_inner());
        id.as_ref().map(|i| Key::from_bytes(i.secret.to_bytes()))
    }

    /// Creates or updates a peer to exactly `peer`; returns its id. A peer
    /// whose key, PSK and keepalive are unchanged keeps its session.
    pub fn set_peer(&self, peer: &PeerConfig) -> Option<u32> {
        let id_guard = self.identity.read().unwrap_or_else(|e| e.into_inner());
        let identity = id_guard.as_ref()?;
        let key = *peer.public_key.as_bytes();
        let mut table = self.write_table();
        if let Some(old) = table
            .by_key
            .get(&key)
            .and_then(|id| table.by_id.get(id))
            .cloned()
        {
            let mut cfg = old.config.write().unwrap_or_else(|e| e.into_inner());
            if cfg.psk == peer.psk && cfg.keepalive == peer.keepalive {
                // Updated in place: the session survives.
                *cfg = peer.clone().normalized();
                if peer.endpoint.is_some() {
                    *old.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = peer.endpoint;
                }
                return Some(old.id);
            }
            drop(cfg);
            table.by_id.remove(&old.id);
        }
        let id = loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
            if id != 0 && !table.by_id.contains_key(&id) {
                break id;
            }
        };
        let state = PeerState {
            id,
            config: RwLock::new(peer.clone().normalized()),
            endpoint: Mutex::new(peer.endpoint),
            tunn: Mutex::new(new_tunn(identity, peer, id)),
        };
        table.by_id.insert(id, Arc::new(state));
        table.by_key.insert(key, id);
        Some(id)
    }

    /// Removes a peer (a missing one is fine).
    pub fn remove_peer(&self, public_key: &Key) {
        let mut table = self.write_table();
        if let Some(id) = table.by_key.remove(public_key.as_bytes()) {
            table.by_id.remove(&id);
        }
    }

    /// Removes every peer.
    pub fn clear_peers(&self) {
        let mut table = self.write_table();
        table.by_id.clear();
        table.by_key.clear();
    }

    /// The routing view for the datapath: each peer's id, endpoint and
    /// allowed IPs.
    pub fn routes(&self) -> Vec<(u32, Option<SocketAddr>, Vec<AllowedIp>)> {
        self.read_table()
            .by_id
            .values()
            .map(|p| {
                (
                    p.id,
                    *p.endpoint.lock().unwrap_or_else(|e| e.into_inner()),
                    p.config().allowed_ips,
                )
            })
            .collect()
    }

    /// `wg show`: the public key, port and every peer with its counters.
    pub fn status(&self) -> DeviceStatus {
        let table = self.read_table();
        let mut peers: Vec<PeerStatus> = table
            .by_id
            .values()
            .map(|p| {
                let (since, tx, rx, _, _) =
                    p.tunn.lock().unwrap_or_else(|e| e.into_inner()).stats();
                let mut config = p.config();
                config.endpoint = *p.endpoint.lock().unwrap_or_else(|e| e.into_inner());
                PeerStatus {
                    config,
                    last_handshake: since.and_then(|d| SystemTime::now().checked_sub(d)),
                    rx_bytes: rx as u64,
                    tx_bytes: tx as u64,
                }
            })
            .collect();
        peers.sort_by(|a, b| {
            a.config
                .public_key
                .as_bytes()
                .cmp(b.config.public_key.as_bytes())
        });
        DeviceStatus {
            public_key: self.public_key(),
            listen_port: self.listen_port(),
            peers,
        }
    }

    fn peer(&self, id: u32) -> Option<Arc<PeerState>> {
        self.read_table().by_id.get(&id).cloned()
    }

    /// Encrypts `packet` for peer `id` into `out` (at least
    /// `packet.len() + 32` and 148 bytes). Without a session the packet is
    /// queued and a handshake initiation goes out through `sender`.
    pub fn encapsulate(
        &self,
        id: u32,
        packet: &[u8],
        out: &mut [u8],
        sender: &mut dyn Sender,
    ) -> Encap {
        let Some(peer) = self.peer(id) else {
            return Encap::NoPeer;
        };
        let Some(endpoint) = *peer.endpoint.lock().unwrap_or_else(|e| e.into_inner()) else {
            return Encap::NoPeer;
        };
        let mut t = peer.tunn.lock().unwrap_or_else(|e| e.into_inner());
        match t.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(d) => {
                let len = d.len();
                // A data message starts with type 4; anything else is the
                // handshake initiation sent instead (the packet is queued).
                if out[0] == 4 {
                    Encap::Send(endpoint, len)
                } else {
                    sender.send_to(endpoint, &out[..len]);
                    Encap::Queued
                }
            }
            TunnResult::Done => Encap::Queued,
            _ => Encap::Error,
        }
    }

    /// Handles a datagram from `src`; a decrypted packet lands in
    /// `out[..len]` (`out` at least as long as `datagram`).
    pub fn decapsulate(
        &self,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        sender: &mut dyn Sender,
    ) -> Decap {
        let peer = {
            let Ok(parsed) = Tunn::parse_incoming_packet(datagram) else {
                return Decap::Rejected;
            };
            let id = match parsed {
                Packet::HandshakeInit(p) => {
                    let guard = self.identity.read().unwrap_or_else(|e| e.into_inner());
                    let Some(identity) = guard.as_ref() else {
                        return Decap::NoPeer;
                    };
                    match parse_handshake_anon(&identity.secret, &identity.public, &p) {
                        Ok(half) => self
                            .read_table()
                            .by_key
                            .get(&half.peer_static_public)
                            .copied(),
                        Err(_) => return Decap::Rejected,
                    }
                }
                Packet::HandshakeResponse(p) => Some(p.receiver_idx >> 8),
                Packet::PacketCookieReply(p) => Some(p.receiver_idx >> 8),
                Packet::PacketData(p) => Some(p.receiver_idx >> 8),
            };
            match id.and_then(|id| self.peer(id)) {
                Some(p) => p,
                None => return Decap::NoPeer,
            }
        };
        let mut t = peer.tunn.lock().unwrap_or_else(|e| e.into_inner());
        let verdict = match t.decapsulate(Some(src.ip()), datagram, out) {
            TunnResult::Done => Decap::Consumed,
            TunnResult::Err(_) => return Decap::Rejected,
            TunnResult::WriteToNetwork(d) => {
                let len = d.len();
                sender.send_to(src, &out[..len]);
                // A completed handshake releases the queued packets.
                while let TunnResult::WriteToNetwork(d) = t.decapsulate(None, &[], out) {
                    let len = d.len();
                    sender.send_to(src, &out[..len]);
                }
                Decap::Consumed
            }
            TunnResult::WriteToTunnelV4(d, from) => {
                let len = d.len();
                if !peer.allows(IpAddr::V4(from)) {
                    return Decap::Rejected;
                }
                Decap::ToTun(len)
            }
            TunnResult::WriteToTunnelV6(d, from) => {
                let len = d.len();
                if !peer.allows(IpAddr::V6(from)) {
                    return Decap::Rejected;
                }
                Decap::ToTun(len)
            }
        };
        drop(t);
        // An authenticated message: the peer is at `src` now (roaming).
        *peer.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = Some(src);
        verdict
    }

    /// Runs the protocol's timers (every 100–250 ms): handshake retries,
    /// rekeys, keepalives; resets the handshake rate limiter every second.
    pub fn tick(&self, sender: &mut dyn Sender) {
        {
            let mut last = self.last_reset.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed().as_secs() >= 1 {
                *last = Instant::now();
                if let Some(i) = self
                    .identity
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                {
                    i.limiter.reset_count();
                }
            }
        }
        let peers: Vec<Arc<PeerState>> = self.read_table().by_id.values().cloned().collect();
        let mut buf = vec![0u8; 256];
        for p in peers {
            let Some(endpoint) = *p.endpoint.lock().unwrap_or_else(|e| e.into_inner()) else {
                continue;
            };
            let mut t = p.tunn.lock().unwrap_or_else(|e| e.into_inner());
            if let TunnResult::WriteToNetwork(d) = t.update_timers(&mut buf) {
                let len = d.len();
                sender.send_to(endpoint, &buf[..len]);
            }
        }
    }
}

fn new_tunn(identity: &Identity, peer: &PeerConfig, id: u32) -> Tunn {
    Tunn::new(
        identity.secret.clone(),
        PublicKey::from(*peer.public_key.as_bytes()),
        peer.psk.as_ref().map(|k| *k.as_bytes()),
        (peer.keepalive > 0).then_some(peer.keepalive),
        id,
        Some(identity.limiter.clone()),
    )
}

#[cfg(test)]
#[path = "core/tests.rs"]
mod tests;
