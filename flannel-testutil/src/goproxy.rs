//! A stand-in for Go flannel's udp proxy (`proxy_amd64.c`), to test that
//! our udp backend interoperates with a Go node.
//!
//! It behaves as the C proxy does, one packet per system call: a plain TUN
//! (`IFF_TUN | IFF_NO_PI`, no `IFF_VNET_HDR`, no offloads), a plain UDP
//! socket (no `UDP_GRO`, no `UDP_SEGMENT`), `poll` on both, then
//! `read` → first matching route → TTL decrement → `sendto`, and
//! `recv` → TTL decrement → `write`. The TTL is patched with the proxy's
//! arithmetic, written again here (not shared with the backend) so the two
//! implementations check each other.
//!
//! It also checks what it receives: every datagram must be exactly one IPv4
//! packet (its total length equals the datagram's) no larger than the MTU,
//! as a Go node requires. [`GoProxyStats::violations`] counts those that
//! were not; the test asserts none.
//!
//! The device is configured as Go configures it: `<subnet>.0/32`, the MTU,
//! up, and `<Network> dev <tun>`. Like Go's, the TUN is not persistent: it
//! disappears when [`GoProxy`] is dropped.
//!
//! This module needs the `goproxy` feature.

#![allow(unsafe_code)] // ioctl(TUNSETIFF), poll, read/write on raw fds

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::TestUtilError;
use crate::netns::NetNs;

/// What the proxy is set up with: what Go's flanneld passes its proxy.
#[derive(Debug, Clone)]
pub struct GoProxyConfig {
    /// The TUN device name (Go gets `flannel0`; use a unique name in tests
    /// sharing a machine, the namespaces keep them apart anyway).
    pub tun_name: String,
    /// This node's lease subnet address (`10.5.3.0`), put on the TUN as /32.
    pub tun_addr: Ipv4Addr,
    /// The flannel network and its prefix length, routed into the TUN.
    pub network: (Ipv4Addr, u8),
    /// The TUN MTU (interface MTU − 28).
    pub mtu: u32,
    /// Where the UDP socket is bound (`IfaceAddr:Port`).
    pub bind: SocketAddrV4,
    /// The routes: remote subnet (address, prefix) → remote `PublicIP:Port`.
    pub routes: Vec<((Ipv4Addr, u8), SocketAddrV4)>,
}

/// Counters of a running [`GoProxy`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GoProxyStats {
    /// Packets read from the TUN and sent.
    pub sent: u64,
    /// Datagrams received and written to the TUN.
    pub received: u64,
    /// The largest datagram received.
    pub largest_datagram: u64,
    /// Datagrams that were not exactly one IPv4 packet of at most the MTU.
    pub violations: u64,
    /// Packets from the TUN with no route (dropped; Go would answer with
    /// an ICMP Net Unreachable, which is not needed here).
    pub no_route: u64,
    /// Packets dropped because their TTL reached 0.
    pub ttl_drops: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    largest: AtomicU64,
    violations: AtomicU64,
    no_route: AtomicU64,
    ttl_drops: AtomicU64,
}

/// A running Go-style proxy in a namespace; stopped (and its TUN removed)
/// on drop.
pub struct GoProxy {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl std::fmt::Debug for GoProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GoProxy({:?})", self.stats())
    }
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens `/dev/net/tun` as a plain TUN named `name` (in the calling
/// thread's namespace).
fn open_tun(name: &str) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    let n = name.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `IfReq`
    // lays out (16-byte name, flags, padding to 40 bytes).
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// The proxy's `decrement_ttl`: false when the TTL reaches 0.
fn decrement_ttl(pkt: &mut [u8]) -> bool {
    pkt[8] = pkt[8].wrapping_sub(1);
    if pkt[8] == 0 {
        return false;
    }
    let check = u16::from_ne_bytes([pkt[10], pkt[11]]);
    let patched = if check >= 0xfeffu16.to_be() {
        check.wrapping_add(0x100u16.to_be()).wrapping_add(1)
    } else {
        check.wrapping_add(0x100u16.to_be())
    };
    pkt[10..12].copy_from_slice(&patched.to_ne_bytes());
    true
}

fn matches(dst: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(dst) & mask == u32::from(net) & mask
}

impl GoProxy {
    /// Creates and configures the TUN in `ns`, binds the socket and starts
    /// the proxy loop on a thread of its own.
    pub fn start(ns: &NetNs, cfg: GoProxyConfig) -> Result<GoProxy, TestUtilError> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let path = ns.path();
        let ns_file =
            File::open(&path).map_err(|e| TestUtilError::io(format!("opening {path}"), e))?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (s, c) = (stop.clone(), counters.clone());
        let ns_name = ns.name().to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("goproxy-{}", cfg.tun_name))
            .spawn(move || -> Result<(), String> {
                let setup = (|| -> Result<(File, UdpSocket), String> {
                    nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("setns {path}: {e}"))?;
                    let tun = open_tun(&cfg.tun_name)
                        .map_err(|e| format!("open TUN {}: {e}", cfg.tun_name))?;
                    let dev = cfg.tun_name.as_str();
                    let addr = format!("{}/32", cfg.tun_addr);
                    let mtu = cfg.mtu.to_string();
                    let net = format!("{}/{}", cfg.network.0, cfg.network.1);
                    for args in [
                        &["addr", "add", addr.as_str(), "dev", dev][..],
                        &["link", "set", dev, "mtu", mtu.as_str(), "up"][..],
                        &["route", "add", net.as_str(), "dev", dev][..],
                    ] {
                        let out = std::process::Command::new("ip")
                            .args(["-n", &ns_name])
                            .args(args)
                            .output()
                            .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
                        if !out.status.success() {
                            return Err(format!(
                                "ip {}: {}",
                                args.join(" "),
                                String::from_utf8_lossy(&out.stderr).trim()
                            ));
                        }
                    }
                    let sock =
                        UdpSocket::bind(cfg.bind).map_err(|e| format!("bind {}: {e}", cfg.bind))?;
                    Ok((tun, sock))
                })();
                let (tun, sock) = match setup {
                    Ok(v) => {
                        let _ = ready_tx.send(Ok(()));
                        v
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                run(tun, sock, &cfg, &s, &c)
            })
            .map_err(|e| TestUtilError::io("spawning the Go-style proxy thread", e))?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(GoProxy {
                stop,
                counters,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(TestUtilError::io(
                "starting the Go-style proxy",
                std::io::Error::other(e),
            )),
            Err(e) => Err(TestUtilError::io(
                "starting the Go-style proxy",
                std::io::Error::other(e.to_string()),
            )),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> GoProxyStats {
        let c = &self.counters;
        GoProxyStats {
            sent: c.sent.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            largest_datagram: c.largest.load(Ordering::Relaxed),
            violations: c.violations.load(Ordering::Relaxed),
            no_route: c.no_route.load(Ordering::Relaxed),
            ttl_drops: c.ttl_drops.load(Ordering::Relaxed),
        }
    }

    /// Stops the loop; the TUN goes with it. Returns the loop's error, if
    /// it ended with one.
    pub fn stop(mut self) -> Result<GoProxyStats, String> {
        self.stop.store(true, Ordering::Relaxed);
        let res = self
            .thread
            .take()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("the proxy panicked".into()))
            })
            .unwrap_or(Ok(()));
        res.map(|()| self.stats())
    }
}

impl Drop for GoProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The proxy loop: poll, then one packet each way per readiness.
fn run(
    mut tun: File,
    sock: UdpSocket,
    cfg: &GoProxyConfig,
    stop: &AtomicBool,
    c: &Counters,
) -> Result<(), String> {
    let mut routes = cfg.routes.clone();
    let mut buf = vec![0u8; 65536];
    let mtu = cfg.mtu as usize;
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            libc::pollfd {
                fd: tun.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let len = tun
                .read(&mut buf[..mtu])
                .map_err(|e| format!("read TUN: {e}"))?;
            if len >= 20 {
                let pkt = &mut buf[..len];
                let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
                // Go's list: first match wins, and a hit moves to the front.
                match routes.iter().position(|(net, _)| matches(dst, *net)) {
                    None => {
                        c.no_route.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(i) => {
                        routes[..=i].rotate_right(1);
                        let to = routes[0].1;
                        if decrement_ttl(pkt) {
                            sock.send_to(pkt, SocketAddr::V4(to))
                                .map_err(|e| format!("sendto {to}: {e}"))?;
                            c.sent.fetch_add(1, Ordering::Relaxed);
                        } else {
                            c.ttl_drops.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            let (len, _) = sock.recv_from(&mut buf).map_err(|e| format!("recv: {e}"))?;
            c.largest.fetch_max(len as u64, Ordering::Relaxed);
            let pkt = &mut buf[..len];
            let one_packet = len >= 20
                && pkt[0] >> 4 == 4
                && usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) == len
                && len <= mtu;
            if !one_packet {
                c.violations.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if decrement_ttl(pkt) {
                tun.write_all(pkt).map_err(|e| format!("write TUN: {e}"))?;
                c.received.fetch_add(1, Ordering::Relaxed);
            } else {
                c.ttl_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}
