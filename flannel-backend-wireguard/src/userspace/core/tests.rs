//! Two in-memory devices talk through the protocol core, datagrams handed
//! over by the test.

use super::*;
use std::collections::VecDeque;

#[derive(Default)]
struct Wire(VecDeque<(SocketAddr, Vec<u8>)>);

impl Sender for Wire {
    fn send_to(&mut self, dst: SocketAddr, datagram: &[u8]) {
        self.0.push_back((dst, datagram.to_vec()));
    }
}

const A_EP: &str = "192.168.0.1:51820";
const B_EP: &str = "192.168.0.2:51820";

fn ep(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0,
        0,
        64,
        17,
        0,
        0,
    ];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

struct Node {
    core: WgCore,
    key: Key,
    at: SocketAddr,
}

fn node(at: &str) -> Node {
    let key = Key::generate_private();
    let core = WgCore::new();
    core.configure(&key, 51820);
    Node {
        core,
        key,
        at: ep(at),
    }
}

fn peer_of(n: &Node, subnet: [u8; 4], psk: Option<Key>) -> PeerConfig {
    PeerConfig {
        public_key: n.key.public_key(),
        endpoint: Some(n.at),
        allowed_ips: vec![(IpAddr::from(subnet), 24)],
        psk,
        keepalive: 0,
    }
}

/// Delivers every queued datagram to the node it is addressed to, until the
/// wire is quiet; returns the packets that came out of the tunnels, with
/// the receiving node's address.
fn pump(nodes: &[&Node], wire: &mut Wire) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; MAX_PACKET];
    let mut rounds = 0;
    while let Some((dst, dgram)) = wire.0.pop_front() {
        rounds += 1;
        assert!(rounds < 100, "the protocol does not settle");
        let Some(n) = nodes.iter().find(|n| n.at == dst) else {
            continue;
        };
        let src = nodes.iter().find(|m| m.at != dst).unwrap().at;
        if let Decap::ToTun(len) = n.core.decapsulate(src, &dgram, &mut buf, wire) {
            out.push((dst, buf[..len].to_vec()));
        }
    }
    out
}

/// A pair without PSKs whose session is up (a first packet from A crossed),
/// with the wire and a packet buffer for more.
fn handshaken() -> (Node, Node, u32, Wire, Vec<u8>) {
    let (a, b, id_b, _) = pair(None, None);
    let mut wire = Wire::default();
    let mut buf = vec![0u8; MAX_PACKET];
    a.core.encapsulate(
        id_b,
        &ipv4([10, 5, 1, 2], [10, 5, 2, 2], b"x"),
        &mut buf,
        &mut wire,
    );
    pump(&[&a, &b], &mut wire);
    (a, b, id_b, wire, buf)
}

fn pair(psk_a: Option<Key>, psk_b: Option<Key>) -> (Node, Node, u32, u32) {
    let a = node(A_EP);
    let b = node(B_EP);
    let id_b = a.core.set_peer(&peer_of(&b, [10, 5, 2, 0], psk_a)).unwrap();
    let id_a = b.core.set_peer(&peer_of(&a, [10, 5, 1, 0], psk_b)).unwrap();
    (a, b, id_b, id_a)
}

#[test]
fn handshake_then_data_both_ways() {
    let (a, b, id_b, id_a) = pair(None, None);
    let mut wire = Wire::default();
    let mut buf = vec![0u8; MAX_PACKET];
    let ping = ipv4([10, 5, 1, 2], [10, 5, 2, 2], b"ping");
    // No session yet: the packet waits and an initiation goes out.
    assert_eq!(
        a.core.encapsulate(id_b, &ping, &mut buf, &mut wire),
        Encap::Queued
    );
    assert_eq!(wire.0.len(), 1);
    assert_eq!(wire.0[0].0, b.at);
    let delivered = pump(&[&a, &b], &mut wire);
    assert_eq!(
        delivered,
        vec![(b.at, ping.clone())],
        "the queued packet arrives after the handshake"
    );
    // With a session both ways, data goes straight out.
    let pong = ipv4([10, 5, 2, 2], [10, 5, 1, 2], b"pong");
    let Encap::Send(dst, len) = b.core.encapsulate(id_a, &pong, &mut buf, &mut wire) else {
        panic!("B has a session");
    };
    assert_eq!(dst, a.at);
    // boringtun does not pad (the padding is optional in the protocol).
    assert_eq!(len, 16 + pong.len() + 16, "header, payload, tag");
    assert!(
        !buf[..len].windows(4).any(|w| w == b"pong"),
        "no plaintext on the wire"
    );
    let mut out = vec![0u8; MAX_PACKET];
    assert_eq!(
        a.core.decapsulate(b.at, &buf[..len], &mut out, &mut wire),
        Decap::ToTun(pong.len())
    );
    assert_eq!(&out[..pong.len()], &pong[..]);
    // A replay is refused.
    assert_eq!(
        a.core.decapsulate(b.at, &buf[..len], &mut out, &mut wire),
        Decap::Rejected
    );
    // Counters and the handshake time are reported.
    let st = a.core.status();
    assert_eq!(st.public_key, Some(a.key.public_key()));
    assert_eq!(st.listen_port, 51820);
    assert_eq!(st.peers.len(), 1);
    assert!(st.peers[0].last_handshake.is_some());
    assert_eq!(st.peers[0].rx_bytes, pong.len() as u64);
    assert_eq!(st.peers[0].tx_bytes, ping.len() as u64);
}

#[test]
fn equal_sizes_give_equal_datagrams() {
    // What lets the engine send a GSO train with one UDP_SEGMENT call.
    let (a, _b, id_b, mut wire, mut buf) = handshaken();
    let sizes: Vec<usize> = (0..3)
        .map(|i| {
            let p = ipv4([10, 5, 1, 2], [10, 5, 2, 2], &vec![i as u8; 1380]);
            match a.core.encapsulate(id_b, &p, &mut buf, &mut wire) {
                Encap::Send(_, len) => len,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert!(sizes.iter().all(|s| *s == sizes[0]), "{sizes:?}");
}

#[test]
fn different_psk_never_talks() {
    let (a, b, id_b, _) = pair(Some(Key::generate_private()), Some(Key::generate_private()));
    let mut wire = Wire::default();
    let mut buf = vec![0u8; MAX_PACKET];
    let ping = ipv4([10, 5, 1, 2], [10, 5, 2, 2], b"ping");
    a.core.encapsulate(id_b, &ping, &mut buf, &mut wire);
    assert!(pump(&[&a, &b], &mut wire).is_empty());
    assert!(a.core.status().peers[0].last_handshake.is_none());
}

#[test]
fn same_psk_talks() {
    let psk = Key::generate_private();
    let (a, b, id_b, _) = pair(Some(psk.clone()), Some(psk));
    let mut wire = Wire::default();
    let mut buf = vec![0u8; MAX_PACKET];
    let ping = ipv4([10, 5, 1, 2], [10, 5, 2, 2], b"ping");
    a.core.encapsulate(id_b, &ping, &mut buf, &mut wire);
    assert_eq!(pump(&[&a, &b], &mut wire).len(), 1);
}

#[test]
fn cryptokey_routing_and_unknown_peers() {
    let (a, b, id_b, _) = pair(None, None);
    let mut wire = Wire::default();
    let mut buf = vec![0u8; MAX_PACKET];
    // A packet whose source is outside A's allowed IPs at B is dropped.
    let spoofed = ipv4([10, 9, 9, 9], [10, 5, 2, 2], b"spoof");
    a.core.encapsulate(id_b, &spoofed, &mut buf, &mut wire);
    assert!(pump(&[&a, &b], &mut wire).is_empty());
    // A stranger's initiation finds no peer.
    let c = node("192.168.0.3:51820");
    let id = c.core.set_peer(&peer_of(&b, [10, 5, 2, 0], None)).unwrap();
    c.core.encapsulate(
        id,
        &ipv4([10, 5, 3, 2], [10, 5, 2, 2], b"hi"),
        &mut buf,
        &mut wire,
    );
    let (_, init) = wire.0.pop_front().unwrap();
    let mut out = vec![0u8; MAX_PACKET];
    assert_eq!(
        b.core.decapsulate(c.at, &init, &mut out, &mut wire),
        Decap::NoPeer
    );
    assert_eq!(
        b.core.decapsulate(c.at, b"junk", &mut out, &mut wire),
        Decap::Rejected
    );
    // Removing the peer stops its traffic.
    a.core.remove_peer(&b.key.public_key());
    assert_eq!(
        a.core.encapsulate(id_b, &spoofed, &mut buf, &mut wire),
        Encap::NoPeer
    );
    assert!(a.core.status().peers.is_empty());
}

#[test]
fn update_keeps_the_session_and_roaming_moves_the_endpoint() {
    let (a, b, id_b, mut wire, mut buf) = handshaken();
    // New allowed IPs for B: same id, session kept (data goes out at once).
    let mut cfg = peer_of(&b, [10, 5, 2, 0], None);
    cfg.allowed_ips.push(("fd00:5:2::".parse().unwrap(), 64));
    assert_eq!(a.core.set_peer(&cfg), Some(id_b));
    let p = ipv4([10, 5, 1, 2], [10, 5, 2, 2], b"y");
    assert!(matches!(
        a.core.encapsulate(id_b, &p, &mut buf, &mut wire),
        Encap::Send(..)
    ));
    let routes = a.core.routes();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].2.len(), 2);
    // B answers from another address: A follows it.
    let moved = ep("192.168.7.2:40000");
    let Encap::Send(_, len) = b.core.encapsulate(
        b.core.routes()[0].0,
        &ipv4([10, 5, 2, 2], [10, 5, 1, 2], b"z"),
        &mut buf,
        &mut wire,
    ) else {
        panic!("session")
    };
    let dgram = buf[..len].to_vec();
    let mut out = vec![0u8; MAX_PACKET];
    assert!(matches!(
        a.core.decapsulate(moved, &dgram, &mut out, &mut wire),
        Decap::ToTun(_)
    ));
    assert_eq!(a.core.status().peers[0].config.endpoint, Some(moved));
}

#[test]
fn timers_retry_the_handshake() {
    let (a, _b, id_b, _) = pair(None, None);
    let mut wire = Wire::default();
    let mut buf = vec![0u8; MAX_PACKET];
    a.core.encapsulate(
        id_b,
        &ipv4([10, 5, 1, 2], [10, 5, 2, 2], b"x"),
        &mut buf,
        &mut wire,
    );
    wire.0.clear(); // the initiation is lost
    a.core.tick(&mut wire);
    // boringtun retries after REKEY_TIMEOUT (5 s); a tick right away sends nothing.
    assert!(wire.0.is_empty());
}
