//! Two network namespaces joined by a veth, an engine with the plaintext
//! codec in each: ping and a TCP transfer whose SHA-256 must match, in GSO
//! mode, in forced batch mode, and from a GSO sender to a batch receiver
//! (a Go-style peer: one datagram per packet).
//!
//! Needs root and iproute2 (`ip`), iputils `ping`; fails naming them when
//! missing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flannel_testutil::netns::{NetNs, veth_pair};
use flannel_tun::{
    Engine, EngineHandle, EngineOptions, OffloadMode, Peer, PeerTableHandle, PlainCodec, TunConfig,
    open_tun,
};

const PORT: u16 = 8285;
const MTU: u32 = 1472;

static N: AtomicUsize = AtomicUsize::new(0);

struct Side {
    ns: NetNs,
    engine: Option<EngineHandle>,
    tun: String,
}

struct Pair {
    a: Side,
    b: Side,
}

/// `a` = 10.77.1.1 on its TUN, underlay 192.168.77.1; `b` = 10.77.2.1,
/// 192.168.77.2.
fn pair(mode_a: Option<OffloadMode>, mode_b: Option<OffloadMode>) -> Pair {
    let n = N.fetch_add(1, Ordering::Relaxed);
    let tag = format!("{}{n}", std::process::id() % 100_000);
    let ns_a = NetNs::new("tuna").expect("creating namespace a");
    let ns_b = NetNs::new("tunb").expect("creating namespace b");
    veth_pair(&ns_a, "eth0", &ns_b, "eth0").expect("veth pair");
    ns_a.ip(&["addr", "add", "192.168.77.1/24", "dev", "eth0"])
        .unwrap();
    ns_b.ip(&["addr", "add", "192.168.77.2/24", "dev", "eth0"])
        .unwrap();
    let mk = |ns: NetNs, me: u8, other: u8, mode: Option<OffloadMode>, name: String| {
        let peers = PeerTableHandle::new();
        peers.set(vec![(
            format!("10.77.{other}.0/24").parse().unwrap(),
            Peer {
                endpoint: SocketAddr::from(([192, 168, 77, other], PORT)),
                id: u32::from(other),
            },
        )]);
        let name2 = name.clone();
        let engine = ns.run(move || {
            let tun = open_tun(&TunConfig::new(name2, MTU)).expect("opening the TUN");
            let sock =
                UdpSocket::bind(SocketAddr::from(([192, 168, 77, me], PORT))).expect("binding UDP");
            let opts = EngineOptions {
                mode,
                ..EngineOptions::default()
            };
            Engine::start(tun, sock, Arc::new(PlainCodec), peers, opts)
                .expect("starting the engine")
        });
        ns.ip(&["addr", "add", &format!("10.77.{me}.1/32"), "dev", &name])
            .unwrap();
        ns.ip(&["link", "set", &name, "up"]).unwrap();
        ns.ip(&["route", "add", "10.77.0.0/16", "dev", &name])
            .unwrap();
        Side {
            ns,
            engine: Some(engine),
            tun: name,
        }
    };
    let a = mk(ns_a, 1, 2, mode_a, format!("fta{tag}"));
    let b = mk(ns_b, 2, 1, mode_b, format!("ftb{tag}"));
    Pair { a, b }
}

fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

/// Sends `len` bytes from a to b over TCP; returns (sent hash, received
/// hash, seconds).
fn transfer(p: &Pair, len: usize) -> (Vec<u8>, Vec<u8>, f64) {
    let payload = data(len);
    let want = sha256(&payload);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            p.b.ns.run(|| {
                let l = TcpListener::bind("10.77.2.1:5201").expect("listening in b");
                tx.send(()).unwrap();
                let (mut c, _) = l.accept().expect("accepting");
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut got = Vec::with_capacity(len);
                c.read_to_end(&mut got).expect("reading the transfer");
                sha256(&got)
            })
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("server ready");
        let t0 = Instant::now();
        p.a.ns.run(|| {
            let mut c = TcpStream::connect_timeout(
                &"10.77.2.1:5201".parse().unwrap(),
                Duration::from_secs(5),
            )
            .expect("connecting over the tunnel");
            c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            c.write_all(&payload).expect("writing the transfer");
        });
        let got = server.join().unwrap();
        (want, got, t0.elapsed().as_secs_f64())
    })
}

fn ping(p: &Pair) {
    let out =
        p.a.ns
            .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.77.2.1"]);
    let out =
        out.unwrap_or_else(|e| panic!("ping over the tunnel failed (needs iputils-ping): {e}"));
    assert!(out.contains("3 received"), "ping output: {out}");
    // A full-size packet with DF set fits: MTU 1472 = 20 + 8 + 1444.
    let out =
        p.a.ns
            .exec(&[
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                "1444",
                "10.77.2.1",
            ])
            .unwrap();
    assert!(out.contains("1 received"), "full-size ping: {out}");
}

fn check(p: Pair, mode_a: OffloadMode, mode_b: OffloadMode) {
    let ea = p.a.engine.as_ref().unwrap();
    let eb = p.b.engine.as_ref().unwrap();
    assert_eq!(ea.mode(), mode_a);
    assert_eq!(eb.mode(), mode_b);
    ping(&p);
    let len = 48 << 20;
    let (want, got, secs) = transfer(&p, len);
    assert_eq!(got, want, "SHA-256 of the received bytes differs");
    let sa = ea.stats().snapshot();
    let sb = eb.stats().snapshot();
    eprintln!(
        "{mode_a}->{mode_b}: {} MiB in {secs:.2} s ({:.2} Gbit/s); a: {sa:?}; b: {sb:?}",
        len >> 20,
        len as f64 * 8.0 / secs / 1e9
    );
    assert_eq!(
        sa.drop_send_error + sa.drop_malformed + sb.drop_tun_error + sb.drop_malformed,
        0
    );
    if mode_a == OffloadMode::Gso {
        assert!(
            sa.tx_superpackets > 0 && sa.tx_gso_batches > 0,
            "a sent no GSO batches: {sa:?}"
        );
    } else {
        assert_eq!(sa.tx_gso_batches, 0);
    }
    if mode_b == OffloadMode::Gso {
        assert!(sb.rx_coalesced_writes > 0, "b coalesced nothing: {sb:?}");
    } else {
        assert_eq!(sb.rx_coalesced_writes, 0);
    }
    // Stopping is prompt and removes the (non-persistent) TUN.
    let Pair { mut a, b } = p;
    let t0 = Instant::now();
    a.engine.take().unwrap().stop();
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        t0.elapsed()
    );
    let links = a.ns.ip(&["-o", "link", "show"]).unwrap();
    assert!(
        !links.contains(&a.tun),
        "TUN {} still present after stop: {links}",
        a.tun
    );
    drop(b);
}

#[test]
fn gso_both_ways() {
    check(pair(None, None), OffloadMode::Gso, OffloadMode::Gso);
}

#[test]
fn forced_batch_both_ways() {
    check(
        pair(Some(OffloadMode::Batch), Some(OffloadMode::Batch)),
        OffloadMode::Batch,
        OffloadMode::Batch,
    );
}

#[test]
fn gso_sender_to_batch_receiver() {
    check(
        pair(None, Some(OffloadMode::Batch)),
        OffloadMode::Gso,
        OffloadMode::Batch,
    );
}
