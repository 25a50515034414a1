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
    Codec, DropReason, Engine, EngineHandle, EngineOptions, Io, OffloadMode, Packet, Peer,
    PeerTableHandle, PlainCodec, RxVerdict, TunConfig, TxVerdict, open_tun,
};

const PORT: u16 = 8285;
const MTU: u32 = 1472;

static N: AtomicUsize = AtomicUsize::new(0);

struct Side {
    ns: NetNs,
    engine: Option<EngineHandle>,
    tun: String,
    peers: PeerTableHandle,
}

struct Pair {
    a: Side,
    b: Side,
}

/// `a` = 10.77.1.1 on its TUN, underlay 192.168.77.1; `b` = 10.77.2.1,
/// 192.168.77.2.
/// b's socket is dual-stack with two TUN queues when `b_dual_stack`.
fn pair(mode_a: Option<OffloadMode>, mode_b: Option<OffloadMode>, b_dual_stack: bool) -> Pair {
    pair_with(mode_a, mode_b, b_dual_stack, &|_| Arc::new(PlainCodec))
}

/// Like [`pair`] with a codec of the caller's: `codec(peer endpoint)`.
fn pair_with(
    mode_a: Option<OffloadMode>,
    mode_b: Option<OffloadMode>,
    b_dual_stack: bool,
    codec: &dyn Fn(SocketAddr) -> Arc<dyn Codec>,
) -> Pair {
    let n = N.fetch_add(1, Ordering::Relaxed);
    let tag = format!("{}{n}", std::process::id() % 100_000);
    let ns_a = NetNs::new("tuna").expect("creating namespace a");
    let ns_b = NetNs::new("tunb").expect("creating namespace b");
    veth_pair(&ns_a, "eth0", &ns_b, "eth0").expect("veth pair");
    ns_a.ip(&["addr", "add", "192.168.77.1/24", "dev", "eth0"])
        .unwrap();
    ns_b.ip(&["addr", "add", "192.168.77.2/24", "dev", "eth0"])
        .unwrap();
    let mk = |ns: NetNs, me: u8, other: u8, mode: Option<OffloadMode>, name: String, dual: bool| {
        let peers = PeerTableHandle::new();
        let peer = Peer {
            endpoint: SocketAddr::from(([192, 168, 77, other], PORT)),
            id: u32::from(other),
        };
        peers.set(vec![
            (format!("10.77.{other}.0/24").parse().unwrap(), peer),
            (format!("fd77:{other}::/64").parse().unwrap(), peer),
        ]);
        let name2 = name.clone();
        let codec = codec(peer.endpoint);
        let handle = peers.clone();
        let engine = ns.run(move || {
            let mut cfg = TunConfig::new(name2, MTU);
            // The dual-stack side also runs two queues (four datapath
            // threads on one socket).
            cfg.queues = if dual { 2 } else { 1 };
            let tun = open_tun(&cfg).expect("opening the TUN");
            let sock = UdpSocket::bind(if dual {
                SocketAddr::from(([0u16; 8], PORT))
            } else {
                SocketAddr::from(([192, 168, 77, me], PORT))
            })
            .expect("binding UDP");
            let opts = EngineOptions {
                mode,
                ..EngineOptions::default()
            };
            Engine::start(tun, sock, codec, peers, opts).expect("starting the engine")
        });
        ns.ip(&["addr", "add", &format!("10.77.{me}.1/32"), "dev", &name])
            .unwrap();
        // No link-local address: the kernel would otherwise send router
        // solicitations (and their MLD reports) into the TUN for seconds
        // after it comes up, and those count as no-peer drops mid-test.
        ns.ip(&["link", "set", &name, "addrgenmode", "none"])
            .unwrap();
        ns.ip(&["link", "set", &name, "up"]).unwrap();
        ns.ip(&["route", "add", "10.77.0.0/16", "dev", &name])
            .unwrap();
        ns.ip(&[
            "addr",
            "add",
            &format!("fd77:{me}::1/128"),
            "dev",
            &name,
            "nodad",
        ])
        .unwrap();
        ns.ip(&["-6", "route", "add", "fd77::/16", "dev", &name])
            .unwrap();
        Side {
            ns,
            engine: Some(engine),
            tun: name,
            peers: handle,
        }
    };
    let a = mk(ns_a, 1, 2, mode_a, format!("fta{tag}"), false);
    let b = mk(ns_b, 2, 1, mode_b, format!("ftb{tag}"), b_dual_stack);
    Pair { a, b }
}

/// `count` pings (0.2 s apart) of `size` payload bytes with DF set from a
/// to b's TUN address: a packet of that size must cross unfragmented.
fn df_ping(p: &Pair, count: u32, size: usize) -> Result<String, String> {
    let (count, size) = (count.to_string(), size.to_string());
    p.a.ns
        .exec(&[
            "ping",
            "-c",
            &count,
            "-i",
            "0.2",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &size,
            "10.77.2.1",
        ])
        .map_err(|e| e.to_string())
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

/// Sends `len` bytes from a to b over TCP/IPv4; returns (sent hash,
/// received hash, seconds).
fn transfer(p: &Pair, len: usize) -> (Vec<u8>, Vec<u8>, f64) {
    transfer_to(p, len, "10.77.2.1:5201")
}

/// Sends `len` bytes from a to b's `dst` over TCP.
fn transfer_to(p: &Pair, len: usize, dst: &str) -> (Vec<u8>, Vec<u8>, f64) {
    let payload = data(len);
    let want = sha256(&payload);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            p.b.ns.run(|| {
                let l = TcpListener::bind(dst).expect("listening in b");
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
            let mut c = TcpStream::connect_timeout(&dst.parse().unwrap(), Duration::from_secs(5))
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
    let out = df_ping(p, 1, 1444).unwrap();
    assert!(out.contains("1 received"), "full-size ping: {out}");
}

fn check(p: Pair, mode_a: OffloadMode, mode_b: OffloadMode) {
    let ea = p.a.engine.as_ref().unwrap();
    let eb = p.b.engine.as_ref().unwrap();
    assert_eq!(ea.mode(), mode_a);
    assert_eq!(eb.mode(), mode_b);
    assert!(ea.is_running() && eb.is_running());
    ping(&p);
    let len = 32 << 20;
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
    // The device goes when the last fd does; a child process another test
    // forks at that moment holds a copy until it execs, so allow a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let links = a.ns.ip(&["-o", "link", "show"]).unwrap();
        if !links.contains(&a.tun) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "TUN {} still present 3 s after stop: {links}",
            a.tun
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(b);
}

#[test]
fn gso_both_ways() {
    let p = pair(None, None, false);
    // IPv6 inside the tunnel: TCPv6 superpackets segmented, coalesced
    // TCPv6 writes accepted by the kernel.
    let (want, got, _) = transfer_to(&p, 8 << 20, "[fd77:2::1]:5202");
    assert_eq!(got, want, "SHA-256 of the IPv6 transfer differs");
    let s = p.b.engine.as_ref().unwrap().stats().snapshot();
    assert!(s.rx_coalesced_writes > 0, "no IPv6 coalescing: {s:?}");
    check(p, OffloadMode::Gso, OffloadMode::Gso);
}

#[test]
fn forced_batch_both_ways() {
    check(
        pair(Some(OffloadMode::Batch), Some(OffloadMode::Batch), false),
        OffloadMode::Batch,
        OffloadMode::Batch,
    );
}

#[test]
fn gso_sender_to_batch_receiver() {
    check(
        pair(None, Some(OffloadMode::Batch), false),
        OffloadMode::Gso,
        OffloadMode::Batch,
    );
}

/// b's socket is a dual-stack `[::]:8285`: IPv4 peers are sent to as
/// v4-mapped addresses and received ones are reported as plain IPv4. b's
/// TUN has two queues.
#[test]
fn dual_stack_socket() {
    check(pair(None, None, true), OffloadMode::Gso, OffloadMode::Gso);
}

/// A persistent multi-queue TUN survives its owner and is re-attached by
/// the next open (even asking for one queue); without persistence it goes
/// away with the last fd.
#[test]
fn persistent_multi_queue_reattach() {
    let ns = NetNs::new("tunp").expect("creating a namespace");
    let name = format!("ftp{}", std::process::id() % 100_000);
    let links = |ns: &NetNs| ns.ip(&["-o", "link", "show"]).unwrap();
    let n2 = name.clone();
    let (queues, offload) = ns.run(move || {
        let mut cfg = TunConfig::new(n2.clone(), 1400);
        cfg.queues = 2;
        cfg.persist = true;
        let t = open_tun(&cfg).expect("opening a persistent multi-queue TUN");
        assert_eq!(t.name(), n2);
        (t.queues(), t.offload())
    });
    assert_eq!(queues, 2);
    assert!(offload, "this kernel accepts TUN offload");
    let l = links(&ns);
    assert!(
        l.contains(&name) && l.contains("mtu 1400"),
        "persistent TUN gone after close: {l}"
    );
    let n2 = name.clone();
    ns.run(move || {
        let mut cfg = TunConfig::new(n2, 1400);
        cfg.persist = false;
        let t = open_tun(&cfg).expect("re-attaching to the persistent TUN with one queue");
        assert_eq!(t.queues(), 1);
    });
    let l = links(&ns);
    assert!(!l.contains(&name), "non-persistent TUN still present: {l}");
}

/// With a's underlay MTU below the TUN's datagrams, GSO sends fail with
/// EMSGSIZE; those datagrams are resent one by one (the kernel fragments
/// them) while the engine stays in GSO mode, and the transfer is intact.
/// (The EIO/EINVAL fallback to batching cannot be provoked in a namespace
/// on this kernel; its classification is unit-tested.)
#[test]
fn narrow_underlay_resends_singly() {
    let mut p = pair(None, None, false);
    p.a.ns.ip(&["link", "set", "eth0", "mtu", "1400"]).unwrap();
    let (want, got, _) = transfer(&p, 8 << 20);
    assert_eq!(got, want, "SHA-256 with a narrow underlay");
    let ea = p.a.engine.take().unwrap();
    assert_eq!(ea.mode(), OffloadMode::Gso);
    // Stop a's threads first: a late packet (a TCP ACK, a neighbour
    // probe) is counted as sent before its flush counts the datagram, so
    // the two counters only agree once the threads have joined.
    let stats = ea.stats();
    ea.stop();
    let s = stats.snapshot();
    assert_eq!(s.drop_send_error, 0, "{s:?}");
    // Every GSO send was refused (EMSGSIZE) and resent as single
    // datagrams; after the first one the destination gets singles directly.
    assert!(s.tx_superpackets > 0 && s.tx_gso_batches == 0, "{s:?}");
    assert_eq!(s.tx_datagrams, s.tx_packets, "{s:?}");
}

/// The TUN's MTU raised to 9000 after the engines started (jumbo underlay):
/// the engines grow their buffers instead of dropping, and a full-size DF
/// ping and a transfer cross.
#[test]
fn mtu_raised_after_start() {
    let p = pair(None, None, false);
    for side in [&p.a, &p.b] {
        side.ns.ip(&["link", "set", "eth0", "mtu", "9100"]).unwrap();
        side.ns
            .ip(&["link", "set", &side.tun, "mtu", "9000"])
            .unwrap();
    }
    let out = df_ping(&p, 2, 8972).unwrap_or_else(|e| panic!("jumbo ping failed: {e}"));
    assert!(out.contains("2 received"), "jumbo ping: {out}");
    let (want, got, _) = transfer(&p, 8 << 20);
    assert_eq!(got, want, "SHA-256 with MTU 9000");
    let s = p.a.engine.as_ref().unwrap().stats().snapshot();
    assert_eq!(s.drop_malformed, 0, "{s:?}");
}

/// A toy transforming codec shaped like WireGuard's: a 16-byte header in
/// front (into the headroom), the payload scrambled, a 16-byte trailer
/// behind (into the tailroom); keepalives from `tick`, consumed by the
/// receiver.
struct Framed {
    peer: SocketAddr,
    keepalives: AtomicUsize,
}

const MAGIC: &[u8; 4] = b"FLTN";
const KEEP: &[u8; 4] = b"KEEP";

fn trailer(body: &[u8]) -> [u8; 16] {
    let mut t = [0u8; 16];
    for (i, b) in body.iter().enumerate() {
        t[i % 16] = t[i % 16].wrapping_add(*b);
    }
    t
}

impl Codec for Framed {
    fn headroom(&self) -> usize {
        16
    }

    fn tailroom(&self) -> usize {
        16
    }

    fn encap(&self, pkt: &mut Packet<'_>, peer: Option<&Peer>, _io: &mut dyn Io) -> TxVerdict {
        let Some(peer) = peer else {
            return TxVerdict::Drop(DropReason::NoPeer);
        };
        let (buf, s, e) = pkt.buffer_mut();
        assert!(
            s >= 16 && e + 16 <= buf.len(),
            "engine gave no head/tailroom"
        );
        buf[s - 16..s - 12].copy_from_slice(MAGIC);
        buf[s - 12..s - 8].copy_from_slice(&peer.id.to_be_bytes());
        buf[s - 8..s - 4].copy_from_slice(&((e - s) as u32).to_be_bytes());
        for b in &mut buf[s..e] {
            *b ^= 0x5a;
        }
        let t = trailer(&buf[s..e]);
        buf[e..e + 16].copy_from_slice(&t);
        pkt.set_range(s - 16, e + 16);
        TxVerdict::Send(peer.endpoint)
    }

    fn decap(&self, pkt: &mut Packet<'_>, src: SocketAddr, _io: &mut dyn Io) -> RxVerdict {
        let d = pkt.data();
        if d.len() >= 4 && &d[..4] == KEEP && src == self.peer {
            self.keepalives.fetch_add(1, Ordering::Relaxed);
            return RxVerdict::Consumed;
        }
        if d.len() < 32 || &d[..4] != MAGIC {
            return RxVerdict::Drop(DropReason::Malformed);
        }
        let len = u32::from_be_bytes(d[8..12].try_into().unwrap()) as usize;
        if len + 32 != d.len() || trailer(&d[16..16 + len]) != d[16 + len..] {
            return RxVerdict::Drop(DropReason::Codec);
        }
        let (buf, s, e) = pkt.buffer_mut();
        for b in &mut buf[s + 16..e - 16] {
            *b ^= 0x5a;
        }
        pkt.set_range(s + 16, e - 16);
        RxVerdict::ToTun
    }

    fn tick(&self, io: &mut dyn Io) {
        io.send_to(self.peer, &[KEEP[0], KEEP[1], KEEP[2], KEEP[3], 0, 0, 0, 0]);
    }
}

/// A codec that grows packets at both ends works in GSO mode: equal-sized
/// segments stay grouped in UDP_SEGMENT sends, decapsulated packets (inside
/// their datagrams) are still coalesced, and timer datagrams arrive.
#[test]
fn transforming_codec() {
    let codecs = std::sync::Mutex::new(Vec::new());
    let make = |peer: SocketAddr| -> Arc<dyn Codec> {
        let c = Arc::new(Framed {
            peer,
            keepalives: AtomicUsize::new(0),
        });
        codecs.lock().unwrap().push(c.clone());
        c
    };
    let p = pair_with(None, None, false, &make);
    // The codec adds 32 bytes: the TUN MTU leaves room for them (as
    // WireGuard's 1420 does), or every datagram would need fragmenting.
    for side in [&p.a, &p.b] {
        side.ns
            .ip(&["link", "set", &side.tun, "mtu", "1440"])
            .unwrap();
    }
    let out = df_ping(&p, 2, 1412);
    assert!(
        out.as_ref().is_ok_and(|o| o.contains("2 received")),
        "ping: {out:?}"
    );
    let (want, got, _) = transfer(&p, 16 << 20);
    assert_eq!(got, want, "SHA-256 through the transforming codec");
    let sa = p.a.engine.as_ref().unwrap().stats().snapshot();
    let sb = p.b.engine.as_ref().unwrap().stats().snapshot();
    assert!(sa.tx_gso_batches > 0, "{sa:?}");
    assert!(sb.rx_coalesced_writes > 0, "{sb:?}");
    assert_eq!(
        sa.drop_codec + sb.drop_codec + sa.drop_malformed + sb.drop_malformed,
        0
    );
    // Ticks run every ~200 ms, so each side receives a keepalive about that
    // often; on a fast run the transfer may finish before two arrived, so
    // wait for them (bounded) rather than assume the test took long enough.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let received = || {
        codecs
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.keepalives.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    };
    while received() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        received() >= 2,
        "too few keepalives received within 5 s of the transfer: {}",
        received()
    );
}

/// The peer table replaced 5,000 leases at a time, over and over, during a
/// transfer (a resync storm): not one packet finds no peer, the bytes are
/// intact, and no swap takes long.
#[test]
fn peer_table_swaps_under_traffic() {
    let p = pair(None, None, false);
    let me = Peer {
        endpoint: SocketAddr::from(([192, 168, 77, 2], PORT)),
        id: 2,
    };
    let table = |round: u32| -> Vec<(ipnet::IpNet, Peer)> {
        let mut v: Vec<(ipnet::IpNet, Peer)> = (0..5_000u32)
            .map(|i| {
                let net = format!("10.{}.{}.0/24", 100 + (i >> 8) % 100, i & 0xff);
                let peer = Peer {
                    endpoint: SocketAddr::from(([192, 168, 77, 200], PORT)),
                    id: i + round,
                };
                (net.parse().unwrap(), peer)
            })
            .collect();
        v.push(("10.77.2.0/24".parse().unwrap(), me));
        v
    };
    let before = p.a.engine.as_ref().unwrap().stats().snapshot().drop_no_peer;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (result, (swaps, longest)) = std::thread::scope(|s| {
        let swapper = s.spawn(|| {
            let mut swaps = 0u32;
            let mut longest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let t = table(swaps);
                let t0 = Instant::now();
                p.a.peers.set(t);
                longest = longest.max(t0.elapsed());
                swaps += 1;
            }
            (swaps, longest)
        });
        let r = transfer(&p, 16 << 20);
        stop.store(true, Ordering::Relaxed);
        (r, swapper.join().unwrap())
    });
    let (want, got, _) = result;
    assert_eq!(got, want, "SHA-256 during table swaps");
    let s = p.a.engine.as_ref().unwrap().stats().snapshot();
    assert_eq!(
        s.drop_no_peer, before,
        "packets found no peer during swaps: {s:?}"
    );
    assert!(swaps >= 2, "only {swaps} swaps during the transfer");
    assert!(
        longest < Duration::from_millis(500),
        "a 5,000-lease swap took {longest:?}"
    );
    eprintln!("{swaps} swaps of 5,001 prefixes during the transfer, longest {longest:?}");
}

/// A TUN without offload (as when the kernel refuses TUNSETOFFLOAD) makes
/// the automatic mode choose plain batching, counted as a fallback.
#[test]
fn tun_without_offload_selects_batch() {
    let ns = NetNs::new("tuno").expect("creating a namespace");
    let name = format!("fto{}", std::process::id() % 100_000);
    let (mode, fallbacks, offload) = ns.run(move || {
        let mut cfg = TunConfig::new(name, 1400);
        cfg.offload = false;
        let tun = open_tun(&cfg).expect("opening the TUN");
        let offload = tun.offload();
        let sock = UdpSocket::bind("127.0.0.1:0").expect("binding UDP");
        let e = Engine::start(
            tun,
            sock,
            Arc::new(PlainCodec),
            PeerTableHandle::new(),
            EngineOptions::default(),
        )
        .expect("starting the engine");
        let r = (e.mode(), e.stats().snapshot().fallback_events, offload);
        e.stop();
        r
    });
    assert!(!offload);
    assert_eq!(mode, OffloadMode::Batch);
    assert_eq!(fallbacks, 1);
}
