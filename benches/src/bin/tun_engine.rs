//! The userspace datapath engine (flannel-tun) against kernel vxlan on the
//! same link.
//!
//! Two network namespaces joined by a veth (`192.168.78.1/24`,
//! `192.168.78.2/24`). Rows, each an iperf3 TCP run from the first
//! namespace to the second:
//! - `gso`: an engine with the plaintext codec in each namespace, TUN
//!   offload + `UDP_SEGMENT`/`UDP_GRO` + coalescing (TUN MTU 1472);
//! - `batch`: the same engines forced to plain batching (no offload: what
//!   a Go-style proxy achieves with batching on top);
//! - `vxlan`: kernel vxlan over the same veth (MTU 1450), the baseline.
//!
//! All three stay set up and the rows run interleaved for ROUNDS rounds
//! (the machine's load drifts; interleaving spreads the drift over every
//! row). Each row shows the median Gbit/s, the ratio to vxlan, busy CPU of
//! the whole machine (from `/proc/stat`, so other load counts too) per
//! Gbit/s, and the engines' own CPU (this process) per Gbit/s. Prints a
//! table on stderr and one JSON figure line per engine row on stdout
//! (`kind` comparison, baseline vxlan).
//!
//! Usage: `tun_engine [SECONDS] [STREAMS] [ROUNDS]` (defaults 5, 1, 3).
//! Needs root, iproute2 and iperf3.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flannel_benches::{Figure, Kind, Res, err};
use flannel_testutil::netns::{NetNs, veth_pair};
use flannel_tun::{
    Engine, EngineHandle, EngineOptions, OffloadMode, Peer, PeerTableHandle, PlainCodec, TunConfig,
    open_tun,
};

const PORT: u16 = 8285;

struct Row {
    name: &'static str,
    gbps: f64,
    cpu_per_gbps: f64,
    engine_cpu: Option<f64>,
}

/// Busy and total jiffies over all CPUs.
fn cpu_times() -> Res<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(err)?;
    let line = stat.lines().next().ok_or("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    Ok((total - idle, total))
}

/// CPU seconds used by this process (the engines' threads).
fn self_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15: 11 and 12 counted from the
    // state field that follows the comm.
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    ticks as f64 / 100.0
}

fn iperf_server(ns: &NetNs) -> Res<Child> {
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning iperf3 -s (install iperf3): {e}"))?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

/// Runs iperf3 from `a` to `dst`; returns (Gbit/s, busy cores / Gbit/s,
/// engine CPU seconds per second).
fn iperf(a: &NetNs, b: &NetNs, dst: &str, secs: u32, streams: u32) -> Res<(f64, f64, f64)> {
    let mut server = iperf_server(b)?;
    let (busy0, total0) = cpu_times()?;
    let self0 = self_cpu();
    let t0 = Instant::now();
    let out = a
        .exec(&[
            "iperf3",
            "-c",
            dst,
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ])
        .map_err(err);
    let wall = t0.elapsed().as_secs_f64();
    let (busy1, total1) = cpu_times()?;
    let self1 = self_cpu();
    let _ = server.kill();
    let _ = server.wait();
    let out = out?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("iperf3 JSON: {e}"))?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| format!("no end.sum_received in iperf3 output: {out}"))?;
    let gbps = bps / 1e9;
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy_cores = (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64 * ncpu;
    Ok((gbps, busy_cores / gbps, (self1 - self0) / wall))
}

/// An engine in `ns` for mode `mode`: TUN `tun` with `10.<net>.<me>.1/32`,
/// route `10.<net>.0.0/16`, UDP port `port`.
fn engine(
    ns: &NetNs,
    me: u8,
    other: u8,
    tun: &str,
    mode: OffloadMode,
    net: u8,
    port: u16,
) -> Res<EngineHandle> {
    let peers = PeerTableHandle::new();
    peers.set(vec![(
        format!("10.{net}.{other}.0/24").parse().map_err(err)?,
        Peer {
            endpoint: SocketAddr::from(([192, 168, 78, other], port)),
            id: 0,
        },
    )]);
    let name = tun.to_string();
    let h = ns.run(move || -> Res<EngineHandle> {
        let tun = open_tun(&TunConfig::new(name, 1472)).map_err(err)?;
        let sock = UdpSocket::bind(SocketAddr::from(([192, 168, 78, me], port))).map_err(err)?;
        let opts = EngineOptions {
            mode: Some(mode),
            ..EngineOptions::default()
        };
        Engine::start(tun, sock, Arc::new(PlainCodec), peers, opts).map_err(err)
    })?;
    if h.mode() != mode {
        return Err(format!("engine started in {} mode, not {mode}", h.mode()));
    }
    ns.ip(&["addr", "add", &format!("10.{net}.{me}.1/32"), "dev", tun])
        .map_err(err)?;
    ns.ip(&["link", "set", tun, "up"]).map_err(err)?;
    ns.ip(&["route", "add", &format!("10.{net}.0.0/16"), "dev", tun])
        .map_err(err)?;
    Ok(h)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn run() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let secs: u32 = args.next().map_or(Ok(5), |s| s.parse()).map_err(err)?;
    let streams: u32 = args.next().map_or(Ok(1), |s| s.parse()).map_err(err)?;
    let rounds: usize = args.next().map_or(Ok(3), |s| s.parse()).map_err(err)?;
    let a = NetNs::new("tea").map_err(err)?;
    let b = NetNs::new("teb").map_err(err)?;
    veth_pair(&a, "eth0", &b, "eth0").map_err(err)?;
    a.ip(&["addr", "add", "192.168.78.1/24", "dev", "eth0"])
        .map_err(err)?;
    b.ip(&["addr", "add", "192.168.78.2/24", "dev", "eth0"])
        .map_err(err)?;
    let tag = std::process::id() % 100_000;

    // Kernel vxlan on the same veth.
    for (ns, me, other) in [(&a, 1, 2), (&b, 2, 1)] {
        let cmd = format!(
            "link add vx{tag} type vxlan id 78 local 192.168.78.{me} remote 192.168.78.{other} dstport 4789 dev eth0"
        );
        ns.ip(&cmd.split(' ').collect::<Vec<_>>()).map_err(err)?;
        ns.ip(&["link", "set", &format!("vx{tag}"), "mtu", "1450", "up"])
            .map_err(err)?;
        ns.ip(&[
            "addr",
            "add",
            &format!("10.79.0.{me}/24"),
            "dev",
            &format!("vx{tag}"),
        ])
        .map_err(err)?;
    }
    // Both engine pairs stay up for the whole run (an idle engine's threads
    // sleep in poll), so the rows can be interleaved: the machine's load
    // drifts, and interleaving spreads the drift over every row.
    let gso = [
        engine(&a, 1, 2, &format!("te{tag}g"), OffloadMode::Gso, 78, PORT)?,
        engine(&b, 2, 1, &format!("te{tag}g"), OffloadMode::Gso, 78, PORT)?,
    ];
    let batch = [
        engine(
            &a,
            1,
            2,
            &format!("te{tag}b"),
            OffloadMode::Batch,
            80,
            PORT + 1,
        )?,
        engine(
            &b,
            2,
            1,
            &format!("te{tag}b"),
            OffloadMode::Batch,
            80,
            PORT + 1,
        )?,
    ];
    let setups: [(&str, &str, Option<&[EngineHandle; 2]>); 3] = [
        ("vxlan", "10.79.0.2", None),
        ("gso", "10.78.2.1", Some(&gso)),
        ("batch", "10.80.2.1", Some(&batch)),
    ];
    let mut samples: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); 3];
    for round in 0..rounds {
        for (i, (name, dst, _)) in setups.iter().enumerate() {
            eprintln!(
                "round {}/{rounds}: {name} ({secs} s, {streams} stream(s))",
                round + 1
            );
            let (gbps, cpu, ecpu) = iperf(&a, &b, dst, secs, streams)?;
            samples[i].0.push(gbps);
            samples[i].1.push(cpu);
            samples[i].2.push(ecpu / gbps);
        }
    }
    for (name, _, engines) in &setups {
        if let Some([ea, eb]) = engines {
            let (sa, sb) = (ea.stats().snapshot(), eb.stats().snapshot());
            eprintln!(
                "{name}: sender {} packets in {} datagrams, {} GSO sends, {} superpackets; receiver {} coalesced writes for {} packets; drops {} / {}",
                sa.tx_packets,
                sa.tx_datagrams,
                sa.tx_gso_batches,
                sa.tx_superpackets,
                sb.rx_coalesced_writes,
                sb.rx_packets,
                sa.drops(),
                sb.drops()
            );
        }
    }
    let rows: Vec<Row> = setups
        .iter()
        .zip(samples.iter_mut())
        .map(|((name, _, engines), (g, c, e))| Row {
            name,
            gbps: median(g),
            cpu_per_gbps: median(c),
            engine_cpu: engines.map(|_| median(e)),
        })
        .collect();
    drop(gso);
    drop(batch);

    let base = rows[0].gbps;
    eprintln!();
    eprintln!("medians of {rounds} interleaved round(s):");
    eprintln!(
        "{:<8} {:>9} {:>10} {:>24} {:>26}",
        "row", "Gbit/s", "vs vxlan", "machine busy cores/Gbps", "engine threads cores/Gbps"
    );
    for r in &rows {
        eprintln!(
            "{:<8} {:>9.2} {:>9.2}x {:>24.2} {:>26}",
            r.name,
            r.gbps,
            r.gbps / base,
            r.cpu_per_gbps,
            r.engine_cpu.map_or("-".to_string(), |c| format!("{c:.3}"))
        );
    }
    eprintln!(
        "(machine busy cores count every process on the machine; engine threads = this process's CPU time)"
    );
    eprintln!("gso / batch: {:.1}x", rows[1].gbps / rows[2].gbps);
    for r in &rows[1..] {
        let f = Figure {
            name: format!("tun engine {} iperf3 {streams} stream(s)", r.name),
            kind: Kind::Comparison,
            value: r.gbps,
            unit: "Gbit/s",
            baseline_name: "kernel vxlan, same veth".to_string(),
            baseline: base,
        };
        println!("{}", f.to_json());
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("tun_engine bench failed: {e}");
        std::process::exit(1);
    }
}
