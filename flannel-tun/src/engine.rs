//! The engine: threads that move packets between the TUN and the UDP socket.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::codec::{Codec, Io, Packet, RxVerdict, TxVerdict};
use crate::gro::Coalescer;
use crate::peers::PeerTableHandle;
use crate::stats::EngineStats;
use crate::sys::{self, OutMsg};
use crate::tun::Tun;
use crate::vnet::{self, VnetHdr};
use crate::{EngineError, gso};

/// How datagrams are sent and received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadMode {
    /// TUN segmentation offload with segmentation here, `UDP_SEGMENT`
    /// sends, `UDP_GRO` receives and coalesced TUN writes.
    Gso,
    /// Plain batching: TUN offload off, one datagram per `sendmmsg` entry,
    /// one TUN write per packet (what a Go-style proxy achieves, plus
    /// batching).
    Batch,
}

impl OffloadMode {
    /// `"gso"` or `"batch"` (metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            OffloadMode::Gso => "gso",
            OffloadMode::Batch => "batch",
        }
    }
}

impl std::fmt::Display for OffloadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Engine tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Force a mode; `None` picks [`OffloadMode::Gso`] when the TUN
    /// negotiated offload and the socket accepts `UDP_SEGMENT`.
    pub mode: Option<OffloadMode>,
    /// Packets read from the TUN (and messages per `recvmmsg`) per batch.
    pub batch: usize,
    /// Socket send and receive buffer size in bytes (`SO_SNDBUFFORCE`,
    /// `SO_RCVBUFFORCE`, falling back to the unforced options); 0 leaves
    /// them alone.
    pub socket_buffer: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            mode: None,
            batch: 64,
            socket_buffer: 8 << 20,
        }
    }
}

/// State shared by the engine's threads.
#[derive(Debug)]
struct Shared {
    stats: Arc<EngineStats>,
    /// Transmit with `UDP_SEGMENT`; cleared for good on EIO/EINVAL.
    udp_gso: AtomicBool,
    /// Coalesce received TCP segments into GSO writes.
    coalesce: bool,
    codec: Arc<dyn Codec>,
    peers: PeerTableHandle,
    tun_name: String,
    /// The UDP socket is AF_INET6.
    v6_socket: bool,
    logged_send_error: AtomicBool,
    logged_tun_error: AtomicBool,
}

impl std::fmt::Debug for dyn Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Codec")
    }
}

/// Starts engines; see [`Engine::start`].
#[derive(Debug)]
pub struct Engine;

/// A running engine. [`EngineHandle::stop`] (or dropping it) stops and
/// joins its threads promptly; the TUN fds close when the threads are gone
/// (a non-persistent TUN then disappears).
#[derive(Debug)]
pub struct EngineHandle {
    stop_fd: Arc<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl EngineHandle {
    /// The live counters.
    pub fn stats(&self) -> Arc<EngineStats> {
        self.shared.stats.clone()
    }

    /// The transmit mode in use now ([`OffloadMode::Batch`] after a run-time
    /// fallback).
    pub fn mode(&self) -> OffloadMode {
        if self.shared.udp_gso.load(Relaxed) {
            OffloadMode::Gso
        } else {
            OffloadMode::Batch
        }
    }

    /// The TUN's interface name.
    pub fn tun_name(&self) -> &str {
        &self.shared.tun_name
    }

    /// Whether received TCP segments are coalesced into GSO TUN writes.
    pub fn coalescing(&self) -> bool {
        self.shared.coalesce
    }

    /// `true` while every datapath thread is running (a thread only ends
    /// early when a codec panics): for a liveness check.
    pub fn is_running(&self) -> bool {
        !self.threads.is_empty() && self.threads.iter().all(|t| !t.is_finished())
    }

    /// Stops the threads and waits for them (a few milliseconds: each one
    /// wakes from `poll` on the stop eventfd).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        if let Err(e) = sys::eventfd_signal(self.stop_fd.as_raw_fd()) {
            tracing::error!(
                "Could not signal the datapath threads of {} to stop: {e}",
                self.shared.tun_name
            );
        }
        for t in self.threads.drain(..) {
            let name = t.thread().name().unwrap_or("datapath").to_string();
            if t.join().is_err() {
                tracing::error!("Datapath thread {name} panicked");
            }
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn set_buffers(fd: RawFd, size: usize) {
    if size == 0 {
        return;
    }
    let v = size.min(i32::MAX as usize) as libc::c_int;
    for (forced, plain, what) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "send"),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "receive"),
    ] {
        if sys::setsockopt_int(fd, libc::SOL_SOCKET, forced, v).is_err()
            && let Err(e) = sys::setsockopt_int(fd, libc::SOL_SOCKET, plain, v)
        {
            tracing::warn!("Could not set the UDP socket's {what} buffer to {size} bytes: {e}");
        }
    }
}

impl Engine {
    /// Starts the datapath: one TUN→UDP and one UDP→TUN thread per TUN
    /// queue (all sharing `socket`) and a timer thread for
    /// [`Codec::tick`]. Mode selection: [`EngineOptions::mode`], else
    /// [`OffloadMode::Gso`] when the TUN has offload and the socket accepts
    /// `UDP_SEGMENT`; a refused offload falls back to
    /// [`OffloadMode::Batch`] (logged, counted in `fallback_events`).
    pub fn start(
        mut tun: Tun,
        socket: UdpSocket,
        codec: Arc<dyn Codec>,
        peers: PeerTableHandle,
        opts: EngineOptions,
    ) -> Result<EngineHandle, EngineError> {
        let sock_err =
            |op: &'static str| move |source: io::Error| EngineError::Socket { op, source };
        socket
            .set_nonblocking(false)
            .map_err(sock_err("clearing O_NONBLOCK"))?;
        let sfd = socket.as_raw_fd();
        set_buffers(sfd, opts.socket_buffer);
        let stats = Arc::new(EngineStats::default());
        let segment_ok = sys::setsockopt_int(sfd, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok();
        let (mode, why) = select_mode(opts.mode, tun.offload(), segment_ok);
        if let Some(why) = why {
            if opts.mode == Some(OffloadMode::Gso) {
                tracing::warn!(
                    "GSO mode asked for but {why}; using plain batching on {}",
                    tun.name()
                );
            } else {
                tracing::info!("Using plain batching on {} because {why}", tun.name());
            }
            stats.fallback_events.fetch_add(1, Relaxed);
        }
        if mode == OffloadMode::Batch {
            tun.disable_offload()?;
        } else if let Err(e) = sys::setsockopt_int(sfd, libc::SOL_UDP, libc::UDP_GRO, 1) {
            // Coalescing still works on datagrams that arrive back to back.
            tracing::warn!(
                "The UDP socket refused UDP_GRO ({e}); receiving one datagram per message"
            );
        }
        let stop_fd = Arc::new(sys::eventfd().map_err(sock_err("eventfd"))?);
        let shared = Arc::new(Shared {
            stats,
            udp_gso: AtomicBool::new(mode == OffloadMode::Gso),
            coalesce: mode == OffloadMode::Gso,
            codec,
            peers,
            tun_name: tun.name().to_string(),
            v6_socket: socket.local_addr().is_ok_and(|a| a.is_ipv6()),
            logged_send_error: AtomicBool::new(false),
            logged_tun_error: AtomicBool::new(false),
        });
        tracing::info!(
            "Datapath on {} started in {mode} mode with {} queue(s)",
            tun.name(),
            tun.queues()
        );
        let tun = Arc::new(tun);
        let socket = Arc::new(socket);
        let batch = opts.batch.clamp(1, 1024);
        let mut handle = EngineHandle {
            stop_fd,
            threads: Vec::new(),
            shared,
        };
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map_err(|source| EngineError::Thread { source })
        };
        for q in 0..tun.queues() {
            let ctx = ThreadCtx {
                tun: tun.clone(),
                queue: q,
                socket: socket.clone(),
                shared: handle.shared.clone(),
                stop: handle.stop_fd.clone(),
                batch,
            };
            let ctx2 = ctx.clone();
            handle.threads.push(spawn(
                format!("tun-tx-{q}"),
                Box::new(move || ctx.tx_loop()),
            )?);
            handle.threads.push(spawn(
                format!("tun-rx-{q}"),
                Box::new(move || ctx2.rx_loop()),
            )?);
        }
        let ctx = ThreadCtx {
            tun,
            queue: 0,
            socket,
            shared: handle.shared.clone(),
            stop: handle.stop_fd.clone(),
            batch,
        };
        handle.threads.push(spawn(
            "tun-timer".to_string(),
            Box::new(move || ctx.timer_loop()),
        )?);
        Ok(handle)
    }
}

#[derive(Clone)]
struct ThreadCtx {
    tun: Arc<Tun>,
    queue: usize,
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    stop: Arc<OwnedFd>,
    batch: usize,
}

/// The codec's side channel: immediate sends and TUN writes.
struct DirectIo<'a> {
    sock: RawFd,
    tun: RawFd,
    shared: &'a Shared,
}

impl Io for DirectIo<'_> {
    fn send_to(&mut self, dst: SocketAddr, datagram: &[u8]) {
        match sys::send_to(self.sock, datagram, dst, self.shared.v6_socket) {
            Ok(_) => {
                self.shared.stats.tx_datagrams.fetch_add(1, Relaxed);
            }
            Err(e) => self.shared.send_failed(dst, &e, 1),
        }
    }

    fn write_tun(&mut self, packet: &[u8]) {
        let v = [0u8; vnet::LEN];
        match sys::writev(self.tun, &[IoSlice::new(&v), IoSlice::new(packet)]) {
            Ok(_) => {
                self.shared.stats.replies.fetch_add(1, Relaxed);
            }
            Err(e) => self.shared.tun_write_failed(&e, 1),
        }
    }
}

impl Shared {
    fn send_failed(&self, dst: SocketAddr, e: &io::Error, datagrams: u64) {
        self.stats.drop_send_error.fetch_add(datagrams, Relaxed);
        if !self.logged_send_error.swap(true, Relaxed) {
            tracing::warn!(
                "Sending to {dst} from {} failed: {e} (further send errors are only counted)",
                self.tun_name
            );
        }
    }

    fn tun_write_failed(&self, e: &io::Error, packets: u64) {
        self.stats.drop_tun_error.fetch_add(packets, Relaxed);
        if !self.logged_tun_error.swap(true, Relaxed) {
            tracing::warn!(
                "Writing to TUN {} failed: {e} (further write errors are only counted)",
                self.tun_name
            );
        }
    }
}

/// A datagram waiting in the transmit arena.
#[derive(Debug, Clone, Copy)]
struct Pending {
    off: usize,
    len: usize,
    dst: SocketAddr,
}

/// How long a destination that refused GSO sends with EMSGSIZE gets single
/// datagrams before GSO is tried again.
const NARROW_RETRY: Duration = Duration::from_secs(10);
/// Datagram slots in the transmit arena (~400 KB at MTU 1500).
const TX_ARENA_SLOTS: usize = 256;
/// Most segments the kernel accepts in one `UDP_SEGMENT` send.
const MAX_GSO_SEGMENTS: usize = 64;
/// Most UDP payload bytes in one send (65,535 − 8 UDP − 20 IPv4).
const MAX_GSO_BYTES: usize = 65_507;
/// TUN read buffer: virtio header + the largest GSO packet.
const TUN_READ: usize = vnet::LEN + 65_536;
/// Receive buffer per message (the largest GRO'd datagram train).
const RECV_BUF: usize = 65_536;

/// Transmit-side buffers of one thread.
struct TxState {
    slot: usize,
    /// Slots the arena keeps at least (it grows for huge superpackets).
    min_slots: usize,
    arena: Vec<u8>,
    used: usize,
    pending: Vec<Pending>,
    sender: sys::Sender,
    logged_emsgsize: bool,
    /// Destinations whose path refused GSO sends with EMSGSIZE, and until
    /// when to send them single datagrams (then GSO is tried again, in case
    /// the MTU was fixed).
    narrow: HashMap<SocketAddr, Instant>,
}

/// A slot size for packets of up to `bytes` bytes (cache-line multiple).
fn slot_size(bytes: usize) -> usize {
    (bytes + 63) & !63
}

impl TxState {
    fn slots(&self) -> usize {
        self.arena.len() / self.slot
    }

    /// Sends what is pending and re-cuts the arena into slots of at least
    /// `bytes` bytes.
    fn grow_slots(&mut self, bytes: usize, ctx: &ThreadCtx) {
        self.flush(ctx);
        self.slot = slot_size(bytes);
        self.arena.resize(self.slot * self.min_slots, 0);
        tracing::info!(
            "Packets of {bytes} bytes on {}: datapath buffers grown to match",
            ctx.shared.tun_name
        );
    }

    /// Makes room for `n` more slots, flushing first when needed.
    fn reserve(&mut self, n: usize, ctx: &ThreadCtx) {
        if self.used + n > self.slots() {
            self.flush(ctx);
            if n > self.slots() {
                self.arena.resize(n * self.slot, 0);
            }
        }
    }

    fn flush(&mut self, ctx: &ThreadCtx) {
        if self.pending.is_empty() {
            self.used = 0;
            return;
        }
        let shared = &*ctx.shared;
        let sfd = ctx.socket.as_raw_fd();
        let slices: Vec<IoSlice<'_>> = self
            .pending
            .iter()
            .map(|p| IoSlice::new(&self.arena[p.off..p.off + p.len]))
            .collect();
        let mut start = 0;
        while start < self.pending.len() {
            let gso = shared.udp_gso.load(Relaxed);
            let now = Instant::now();
            self.narrow.retain(|_, until| *until > now);
            let narrow = &self.narrow;
            let msgs = group(&self.pending[start..], &slices[start..], |d| {
                gso && !narrow.contains_key(&d)
            });
            let (sent, err) = self.sender.send(sfd, &msgs);
            account(shared, &msgs[..sent]);
            let Some(e) = err else { break };
            start += msgs[..sent].iter().map(datagrams).sum::<usize>();
            let failed = &msgs[sent];
            let action = on_send_error(failed.segment_size > 0, e.raw_os_error());
            if action == SendErrorAction::DisableGso {
                // The NIC or the path cannot do UDP GSO after all: resend
                // the failed datagrams, and everything from now on, one per
                // message. Happens once: the flag stays cleared.
                shared.udp_gso.store(false, Relaxed);
                shared.stats.fallback_events.fetch_add(1, Relaxed);
                tracing::warn!(
                    "UDP segmentation offload failed on {} ({e}); falling back to plain batching",
                    shared.tun_name
                );
            } else if action == SendErrorAction::ResendSingly {
                // The path to this peer has a smaller MTU than the TUN's
                // datagrams need (a misconfigured MTU): the kernel refuses
                // to GSO-send datagrams it would have to fragment, but it
                // fragments single ones, as Go flannel's sends are.
                let n = datagrams(failed);
                if !self.logged_emsgsize {
                    self.logged_emsgsize = true;
                    tracing::warn!(
                        "The path to {} is narrower than the datagrams from {} ({e}); sending them one by one (fragmented)",
                        failed.dst,
                        shared.tun_name
                    );
                }
                let singles = group(
                    &self.pending[start..start + n],
                    &slices[start..start + n],
                    |_| false,
                );
                let mut off = 0;
                while off < singles.len() {
                    let (k, err) = self.sender.send(sfd, &singles[off..]);
                    account(shared, &singles[off..off + k]);
                    off += k;
                    if let Some(e) = err {
                        shared.send_failed(singles[off].dst, &e, 1);
                        off += 1;
                    }
                }
                self.narrow
                    .insert(failed.dst, Instant::now() + NARROW_RETRY);
                start += n;
            } else {
                shared.send_failed(failed.dst, &e, datagrams(failed) as u64);
                start += datagrams(failed);
            }
        }
        drop(slices);
        self.pending.clear();
        self.used = 0;
    }
}

/// What a failed `sendmmsg` entry leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendErrorAction {
    /// EIO/EINVAL on a `UDP_SEGMENT` send: the kernel or device cannot do
    /// UDP GSO; resend without it and never use it again (as quinn-udp).
    DisableGso,
    /// EMSGSIZE on a `UDP_SEGMENT` send: the path MTU is below the
    /// datagram size; resend these datagrams one by one (the kernel
    /// fragments single datagrams), keep GSO for the rest.
    ResendSingly,
    /// Anything else (no route, a full queue...): count the datagrams as
    /// lost and go on.
    Drop,
}

fn on_send_error(gso: bool, errno: Option<i32>) -> SendErrorAction {
    match errno {
        Some(libc::EIO) | Some(libc::EINVAL) if gso => SendErrorAction::DisableGso,
        Some(libc::EMSGSIZE) if gso => SendErrorAction::ResendSingly,
        _ => SendErrorAction::Drop,
    }
}

/// The mode to run in, and why GSO was not possible when it was wanted
/// (asked for, or automatic) but is refused.
fn select_mode(
    requested: Option<OffloadMode>,
    tun_offload: bool,
    udp_segment: bool,
) -> (OffloadMode, Option<&'static str>) {
    match requested {
        Some(OffloadMode::Batch) => (OffloadMode::Batch, None),
        _ if !tun_offload => (OffloadMode::Batch, Some("the TUN has no offload")),
        _ if !udp_segment => (OffloadMode::Batch, Some("the socket refused UDP_SEGMENT")),
        _ => (OffloadMode::Gso, None),
    }
}

/// Splits a received message of `len` bytes into the datagrams `UDP_GRO`
/// merged, `stride` bytes each (the last may be shorter); no stride means
/// one datagram.
fn gro_chunks(len: usize, stride: Option<usize>) -> impl Iterator<Item = std::ops::Range<usize>> {
    let stride = stride.filter(|&s| s > 0).unwrap_or(len.max(1));
    (0..len)
        .step_by(stride)
        .map(move |off| off..(off + stride).min(len))
}

/// Number of datagrams in a message.
fn datagrams(m: &OutMsg<'_>) -> usize {
    if m.segment_size == 0 { 1 } else { m.iov.len() }
}

fn account(shared: &Shared, msgs: &[OutMsg<'_>]) {
    let mut dgrams = 0;
    let mut batches = 0;
    for m in msgs {
        dgrams += datagrams(m) as u64;
        if m.segment_size > 0 {
            batches += 1;
        }
    }
    shared.stats.tx_datagrams.fetch_add(dgrams, Relaxed);
    shared.stats.tx_gso_batches.fetch_add(batches, Relaxed);
}

/// Groups consecutive datagrams to one destination into `UDP_SEGMENT`
/// messages: equal sizes with only the last one shorter, at most 64
/// segments and 65,507 bytes each. Without `gso` every datagram is its own
/// message. Each slice in `slices` is one datagram.
fn group<'a>(
    pending: &[Pending],
    slices: &'a [IoSlice<'a>],
    gso: impl Fn(SocketAddr) -> bool,
) -> Vec<OutMsg<'a>> {
    let mut msgs = Vec::with_capacity(pending.len());
    let mut i = 0;
    while i < pending.len() {
        let first = pending[i];
        let mut j = i + 1;
        if gso(first.dst) {
            let mut bytes = first.len;
            while j < pending.len()
                && j - i < MAX_GSO_SEGMENTS
                && pending[j].dst == first.dst
                && pending[j].len <= first.len
                && bytes + pending[j].len <= MAX_GSO_BYTES
            {
                bytes += pending[j].len;
                j += 1;
                if pending[j - 1].len < first.len {
                    break;
                }
            }
        }
        msgs.push(OutMsg {
            dst: first.dst,
            iov: &slices[i..j],
            segment_size: if j - i > 1 { first.len as u16 } else { 0 },
        });
        i = j;
    }
    msgs
}

impl ThreadCtx {
    fn tun_fd(&self) -> RawFd {
        self.tun.fds[self.queue].as_raw_fd()
    }

    /// Sleeps up to `ms` milliseconds, waking at once for a stop; `false`
    /// when stopping.
    fn pause(&self, ms: libc::c_int) -> bool {
        let stop = self.stop.as_raw_fd();
        // With the stop fd in both slots: `false` only when it fired.
        sys::poll_readable(stop, stop, ms).unwrap_or(true)
    }

    /// Waits for `fd`; `false` when stopping. Errors are logged and slow
    /// the loop down instead of spinning.
    fn wait(&self, fd: RawFd) -> bool {
        match sys::poll_readable(fd, self.stop.as_raw_fd(), -1) {
            Ok(go) => go,
            Err(e) => {
                tracing::error!("poll on {} failed: {e}", self.shared.tun_name);
                std::thread::sleep(Duration::from_millis(100));
                true
            }
        }
    }

    fn tx_loop(self) {
        let shared = self.shared.clone();
        let codec = shared.codec.clone();
        let tfd = self.tun_fd();
        let sfd = self.socket.as_raw_fd();
        let headroom = codec.headroom();
        let growth = headroom + codec.tailroom();
        let mtu = (self.tun.mtu() as usize).max(1500);
        // Room for the codec's growth on both sides (and an ICMP reply).
        let slot = slot_size(mtu + growth);
        let mut st = TxState {
            slot,
            // Room for several superpackets: segments of consecutive
            // superpackets of a flow then fill whole 64 KB sends instead of
            // leaving a two-segment remainder per superpacket (a 64 KB TSO
            // packet is ~46 segments, ~67 KB on the wire).
            arena: vec![0u8; slot * self.batch.max(TX_ARENA_SLOTS)],
            min_slots: self.batch.max(TX_ARENA_SLOTS),
            used: 0,
            pending: Vec::with_capacity(self.batch * 2),
            sender: sys::Sender::new(shared.v6_socket),
            logged_emsgsize: false,
            narrow: HashMap::new(),
        };
        let mut rbuf = vec![0u8; TUN_READ];
        let mut logged_read = false;
        while self.wait(tfd) {
            let table = shared.peers.load();
            for _ in 0..self.batch {
                let n = match sys::read(tfd, &mut rbuf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if !logged_read {
                            logged_read = true;
                            if e.raw_os_error() == Some(libc::EBADFD) {
                                // `ip link del`: the fd stays open but has
                                // no device behind it any more (and polls
                                // as ready forever). The owner replaces the
                                // engine; until then this thread idles.
                                tracing::warn!(
                                    "TUN {} was deleted; its datapath idles until it is replaced",
                                    shared.tun_name
                                );
                            } else {
                                tracing::error!("Reading from TUN {} failed: {e}", shared.tun_name);
                            }
                        }
                        if !self.pause(100) {
                            return;
                        }
                        break;
                    }
                };
                let Some(h) = VnetHdr::parse(&rbuf[..n]) else {
                    shared.stats.drop_malformed.fetch_add(1, Relaxed);
                    continue;
                };
                let pkt = &mut rbuf[vnet::LEN..n];
                let peer = table.lookup_packet(pkt).copied();
                let plan = if h.gso_kind() != vnet::GSO_NONE {
                    match gso::plan(&h, pkt) {
                        Ok(p) => Some(p),
                        Err(_) => {
                            shared.stats.drop_malformed.fetch_add(1, Relaxed);
                            continue;
                        }
                    }
                } else {
                    None
                };
                // The MTU may have been raised since the start (or was not
                // given): grow the slots rather than drop.
                let need = plan.as_ref().map_or(pkt.len(), |p| p.full_len()) + growth;
                if need > st.slot {
                    st.grow_slots(need, &self);
                }
                let slot = st.slot;
                let (count, first_slot) = if let Some(plan) = &plan {
                    st.reserve(plan.count, &self);
                    let at = st.used;
                    gso::segment_into(plan, pkt, &mut st.arena[at * slot..], slot, headroom);
                    shared.stats.tx_superpackets.fetch_add(1, Relaxed);
                    (plan.count, at)
                } else {
                    if gso::complete_checksum(&h, pkt).is_err() {
                        shared.stats.drop_malformed.fetch_add(1, Relaxed);
                        continue;
                    }
                    st.reserve(1, &self);
                    let at = st.used;
                    st.arena[at * slot + headroom..][..pkt.len()].copy_from_slice(pkt);
                    (1, at)
                };
                st.used += count;
                for k in 0..count {
                    let base = (first_slot + k) * slot;
                    let len = plan.as_ref().map_or(n - vnet::LEN, |p| p.seg_len(k));
                    let mut io = DirectIo {
                        sock: sfd,
                        tun: tfd,
                        shared: &shared,
                    };
                    let buf = &mut st.arena[base..base + slot];
                    let mut p = Packet::new(buf, headroom, headroom + len);
                    match codec.encap(&mut p, peer.as_ref(), &mut io) {
                        TxVerdict::Send(dst) => {
                            shared.stats.tx_packets.fetch_add(1, Relaxed);
                            shared.stats.tx_bytes.fetch_add(len as u64, Relaxed);
                            let (_, s, e) = p.buffer_mut();
                            st.pending.push(Pending {
                                off: base + s,
                                len: e - s,
                                dst,
                            });
                        }
                        TxVerdict::ToTun => io.write_tun(p.data()),
                        TxVerdict::Consumed => {}
                        TxVerdict::Drop(r) => shared.stats.count_drop(r),
                    }
                }
            }
            st.flush(&self);
        }
    }

    fn rx_loop(self) {
        let shared = self.shared.clone();
        let codec = shared.codec.clone();
        let tfd = self.tun_fd();
        let sfd = self.socket.as_raw_fd();
        let n_msgs = if shared.coalesce {
            self.batch.min(32)
        } else {
            self.batch
        };
        let mut rx = sys::Receiver::new(n_msgs, RECV_BUF);
        let mut ranges: Vec<(usize, usize, usize)> = Vec::with_capacity(n_msgs * 4);
        let mut logged_recv = false;
        while self.wait(sfd) {
            loop {
                let n = match rx.recv(sfd) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        // ICMP errors for earlier sends surface here
                        // (ECONNREFUSED and friends): not fatal.
                        if !logged_recv {
                            logged_recv = true;
                            tracing::warn!(
                                "Receiving on the UDP socket of {} failed: {e}",
                                shared.tun_name
                            );
                        }
                        break;
                    }
                };
                ranges.clear();
                for i in 0..n {
                    let m = rx.meta[i];
                    let Some(src) = m.src.filter(|_| !m.truncated) else {
                        shared.stats.drop_malformed.fetch_add(1, Relaxed);
                        continue;
                    };
                    for std::ops::Range { start: off, end } in gro_chunks(m.len, m.stride) {
                        shared.stats.rx_datagrams.fetch_add(1, Relaxed);
                        let mut io = DirectIo {
                            sock: sfd,
                            tun: tfd,
                            shared: &shared,
                        };
                        let mut p = Packet::new(&mut rx.bufs[i][off..end], 0, end - off);
                        match codec.decap(&mut p, src, &mut io) {
                            RxVerdict::ToTun => {
                                let (_, s, e) = p.buffer_mut();
                                ranges.push((i, off + s, off + e));
                            }
                            RxVerdict::Consumed => {}
                            RxVerdict::Drop(r) => shared.stats.count_drop(r),
                        }
                    }
                }
                let bufs = &rx.bufs;
                let write = |iov: &[IoSlice<'_>], segments: usize, bytes: usize| match sys::writev(
                    tfd, iov,
                ) {
                    Ok(_) => {
                        shared.stats.rx_packets.fetch_add(segments as u64, Relaxed);
                        shared.stats.rx_bytes.fetch_add(bytes as u64, Relaxed);
                    }
                    Err(e) => shared.tun_write_failed(&e, segments as u64),
                };
                if shared.coalesce {
                    let mut c = Coalescer::new();
                    for &(i, s, e) in &ranges {
                        c.push(&bufs[i][s..e]);
                    }
                    c.flush(|iov, w| {
                        if w.segments > 1 {
                            shared.stats.rx_coalesced_writes.fetch_add(1, Relaxed);
                        }
                        write(iov, w.segments, w.inner_bytes)
                    });
                } else {
                    let v = [0u8; vnet::LEN];
                    for &(i, s, e) in &ranges {
                        write(&[IoSlice::new(&v), IoSlice::new(&bufs[i][s..e])], 1, e - s);
                    }
                }
                if n < n_msgs {
                    break;
                }
            }
        }
    }

    fn timer_loop(self) {
        let shared = self.shared.clone();
        let mut io = DirectIo {
            sock: self.socket.as_raw_fd(),
            tun: self.tun_fd(),
            shared: &shared,
        };
        loop {
            match sys::poll_readable(self.stop.as_raw_fd(), self.stop.as_raw_fd(), 200) {
                Ok(false) => return,
                Ok(true) => {}
                Err(e) => tracing::error!(
                    "poll in the timer thread of {} failed: {e}",
                    shared.tun_name
                ),
            }
            shared.codec.tick(&mut io);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(len: usize, port: u16) -> Pending {
        Pending {
            off: 0,
            len,
            dst: SocketAddr::from(([10, 0, 0, 1], port)),
        }
    }

    #[test]
    fn mode_selection_and_fallback() {
        use OffloadMode::*;
        assert_eq!(select_mode(None, true, true), (Gso, None));
        assert_eq!(select_mode(Some(Gso), true, true), (Gso, None));
        assert_eq!(select_mode(Some(Batch), true, true), (Batch, None));
        assert_eq!(select_mode(Some(Batch), false, false), (Batch, None));
        assert_eq!(
            select_mode(None, false, true),
            (Batch, Some("the TUN has no offload"))
        );
        assert_eq!(
            select_mode(Some(Gso), true, false),
            (Batch, Some("the socket refused UDP_SEGMENT"))
        );
    }

    #[test]
    fn send_error_classification() {
        use SendErrorAction::*;
        assert_eq!(on_send_error(true, Some(libc::EIO)), DisableGso);
        assert_eq!(on_send_error(true, Some(libc::EINVAL)), DisableGso);
        assert_eq!(on_send_error(true, Some(libc::EMSGSIZE)), ResendSingly);
        assert_eq!(on_send_error(true, Some(libc::ENETUNREACH)), Drop);
        // Without GSO the same errors are just lost datagrams.
        assert_eq!(on_send_error(false, Some(libc::EIO)), Drop);
        assert_eq!(on_send_error(false, Some(libc::EINVAL)), Drop);
        assert_eq!(on_send_error(false, Some(libc::EMSGSIZE)), Drop);
        assert_eq!(on_send_error(false, None), Drop);
    }

    #[test]
    fn gro_stride_splitting() {
        let c = |len, stride| gro_chunks(len, stride).collect::<Vec<_>>();
        assert_eq!(c(4000, Some(1500)), vec![0..1500, 1500..3000, 3000..4000]);
        assert_eq!(c(3000, Some(1500)), vec![0..1500, 1500..3000]);
        assert_eq!(c(700, Some(1500)), vec![0..700]);
        assert_eq!(c(700, None), vec![0..700]);
        assert_eq!(c(700, Some(0)), vec![0..700]);
        assert_eq!(c(0, None), vec![]);
    }

    #[test]
    fn grouping_follows_udp_segment_rules() {
        let data = vec![0u8; 2000];
        let pend = vec![
            p(1400, 1),
            p(1400, 1),
            p(1000, 1), // shorter: ends the group
            p(1400, 1),
            p(1400, 2), // other peer
            p(1400, 2),
            p(1500, 2), // larger: new group
        ];
        let slices: Vec<IoSlice<'_>> = pend.iter().map(|q| IoSlice::new(&data[..q.len])).collect();
        let g = group(&pend, &slices, |_| true);
        let shape: Vec<(usize, u16)> = g.iter().map(|m| (m.iov.len(), m.segment_size)).collect();
        assert_eq!(shape, vec![(3, 1400), (1, 0), (2, 1400), (1, 0)]);
        let plain = group(&pend, &slices, |_| false);
        assert!(
            plain
                .iter()
                .all(|m| m.iov.len() == 1 && m.segment_size == 0)
        );
        // 64 segments at most, 65,507 bytes at most.
        let many: Vec<Pending> = (0..100).map(|_| p(100, 1)).collect();
        let s: Vec<IoSlice<'_>> = many.iter().map(|q| IoSlice::new(&data[..q.len])).collect();
        assert_eq!(
            group(&many, &s, |_| true)
                .iter()
                .map(|m| m.iov.len())
                .collect::<Vec<_>>(),
            vec![64, 36]
        );
        let big: Vec<Pending> = (0..60).map(|_| p(1448, 1)).collect();
        let s: Vec<IoSlice<'_>> = big.iter().map(|q| IoSlice::new(&data[..q.len])).collect();
        let g = group(&big, &s, |_| true);
        assert_eq!(g[0].iov.len(), 65_507 / 1448);
        assert!(
            g.iter()
                .all(|m| m.iov.iter().map(|x| x.len()).sum::<usize>() <= MAX_GSO_BYTES)
        );
    }
}
