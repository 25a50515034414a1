//! The udp datapath during a 5,000-lease change: does traffic stall while
//! flanneld applies the events and resyncs?
//!
//! Two network-namespace hosts run the release `flanneld` with the udp
//! backend against a real etcd (the e2e suite's cluster), one pod each. A
//! ping runs from pod 1 to pod 2 every 10 ms (`ping -D -i 0.01`), first for
//! a quiet window, then while the bench writes `LEASES` (5,000) leases of
//! fake nodes into etcd (Go's JSON, 24 h etcd lease, transactions of 125
//! puts), waits until flanneld knows them all (`flannel_leases_known` on
//! `/metrics`), waits through a periodic resync (every 10 s) with all of
//! them, deletes them all again and waits until flanneld has dropped them.
//!
//! Figures (kind `growth`: ours under the lease churn against ours quiet):
//! the longest gap between two ping replies and the largest round-trip time
//! in each window, and the pings lost. The datapath threads never wait for
//! the lease handlers (the peer table is swapped atomically), so the gap
//! should stay near the 10 ms ping interval.
//!
//! The flanneld binary is the `flanneld` next to this program, or
//! `$BENCH_FLANNELD`. Prints one row per figure and the figures as JSON lines.

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use flannel_benches::{Figure, Kind, Res, err, flanneld_bin, print_figures};
use flannel_testutil::cluster::{Backing, CONVERGE, Cluster, http_get, metric_value, ping};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LEASES: usize = 5_000;
const TXN_OPS: usize = 125;
const SUBNETS: &str = "/coreos.com/network/subnets/";
const CONFIG: &str = r#"{"Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMin": "10.1.0.0", "SubnetMax": "10.1.255.0", "Backend": {"Type": "udp"}}"#;
const HEALTHZ_PORT: u16 = 9124;
const QUIET: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(120);

/// The fake lease `i`: subnet `10.(2 + i / 256).(i % 256).0/24`.
fn fake_key(i: usize) -> String {
    format!("{SUBNETS}10.{}.{}.0-24", 2 + i / 256, i % 256)
}

fn fake_value(i: usize) -> String {
    format!(
        r#"{{"PublicIP":"192.168.{}.{}","PublicIPv6":null}}"#,
        101 + i / 250,
        1 + i % 250
    )
}

fn known_leases(c: &Cluster) -> Res<f64> {
    let addr = SocketAddr::from(([127, 0, 0, 1], HEALTHZ_PORT));
    let (_, body) = http_get(c.host(0), addr, "/metrics").map_err(err)?;
    metric_value(&body, "flannel_leases_known").ok_or_else(|| "no flannel_leases_known".into())
}

fn wait_known(c: &Cluster, want: f64) -> Res<Duration> {
    let t0 = Instant::now();
    loop {
        if known_leases(c)? == want {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > TIMEOUT {
            return Err(format!("flanneld did not reach {want} known leases"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// One reply: (receive time, sequence number, round-trip ms).
fn replies(output: &str) -> Vec<(f64, u64, f64)> {
    output
        .lines()
        .filter_map(|l| {
            let ts = l.strip_prefix('[')?.split(']').next()?.parse().ok()?;
            let seq = l.split("icmp_seq=").nth(1)?.split_whitespace().next()?;
            let rtt = l.split("time=").nth(1)?.split_whitespace().next()?;
            Some((ts, seq.parse().ok()?, rtt.parse().ok()?))
        })
        .collect()
}

/// (longest gap between replies in ms, largest RTT in ms, replies lost,
/// seconds into the window the longest gap began) in the window
/// `[from, to)`.
fn window(r: &[(f64, u64, f64)], from: f64, to: f64) -> (f64, f64, u64, f64) {
    let w: Vec<&(f64, u64, f64)> = r.iter().filter(|x| x.0 >= from && x.0 < to).collect();
    let (gap, at) = w
        .windows(2)
        .map(|p| ((p[1].0 - p[0].0) * 1000.0, p[0].0 - from))
        .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
    let rtt = w.iter().map(|x| x.2).fold(0.0, f64::max);
    let lost = w
        .windows(2)
        .map(|p| p[1].1.saturating_sub(p[0].1 + 1))
        .sum();
    (gap, rtt, lost, at)
}

async fn write_leases(client: &mut Client) -> Res<()> {
    let lease = client.lease_grant(86_400, None).await.map_err(err)?.id();
    let keys: Vec<usize> = (0..LEASES).collect();
    for chunk in keys.chunks(TXN_OPS) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| {
                TxnOp::put(
                    fake_key(i),
                    fake_value(i),
                    Some(PutOptions::new().with_lease(lease)),
                )
            })
            .collect();
        client.txn(Txn::new().and_then(ops)).await.map_err(err)?;
    }
    Ok(())
}

async fn delete_leases(client: &mut Client) -> Res<()> {
    let keys: Vec<usize> = (0..LEASES).collect();
    for chunk in keys.chunks(TXN_OPS) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| TxnOp::delete(fake_key(i), None))
            .collect();
        client.txn(Txn::new().and_then(ops)).await.map_err(err)?;
    }
    Ok(())
}

fn start_ping(c: &Cluster, dst: IpAddr, out: &std::path::Path) -> Res<Child> {
    let file = std::fs::File::create(out).map_err(err)?;
    Command::new("ip")
        .args(["netns", "exec", c.pod(0).ns.name(), "ping", "-n", "-D"])
        .args(["-i", "0.01", "-W", "1"])
        .arg(dst.to_string())
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(err)?)
        .stderr(file)
        .spawn()
        .map_err(|e| format!("ping (iputils-ping): {e}"))
}

fn bench(c: &mut Cluster) -> Res<Vec<Figure>> {
    c.wait_env(0);
    c.wait_env(1);
    c.add_pod(0);
    c.add_pod(1);
    let dst = IpAddr::V4(c.pod(1).v4);
    ping(&c.pod(0).ns, dst, CONVERGE)?;
    let out = c.dir.path().join("ping.out");
    let mut pinger = start_ping(c, dst, &out)?;
    let quiet_start = unix_now();
    std::thread::sleep(QUIET);
    let churn_start = unix_now();
    let t0 = Instant::now();
    c.with_etcd(async |mut client: Client| write_leases(&mut client).await)?;
    let written = t0.elapsed();
    let applied = wait_known(c, (LEASES + 1) as f64)? + written;
    eprintln!(
        "  {LEASES} leases written in {written:.1?}, known to flanneld {applied:.1?} after the first put"
    );
    // A periodic resync (every 10 s) with all of them.
    std::thread::sleep(Duration::from_secs(11));
    let t1 = Instant::now();
    let deletes_at = unix_now();
    c.with_etcd(async |mut client: Client| delete_leases(&mut client).await)?;
    wait_known(c, 1.0)?;
    eprintln!(
        "  {LEASES} leases deleted; flanneld dropped them {:.1?} after the first delete",
        t1.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1));
    let churn_end = unix_now();
    let _ = Command::new("kill")
        .args(["-INT", &pinger.id().to_string()])
        .status();
    let _ = pinger.wait();
    let text = std::fs::read_to_string(&out).map_err(err)?;
    let r = replies(&text);
    let (qgap, qrtt, qlost, _) = window(&r, quiet_start, churn_start);
    let (gap, rtt, lost, at) = window(&r, churn_start, churn_end);
    eprintln!(
        "  quiet {:.0} s: longest gap {qgap:.1} ms, largest RTT {qrtt:.2} ms, {qlost} lost; \
         churn {:.0} s: longest gap {gap:.1} ms ({at:.2} s after the first put; the deletes began at {:.2} s), \
         largest RTT {rtt:.2} ms, {lost} lost",
        churn_start - quiet_start,
        churn_end - churn_start,
        deletes_at - churn_start
    );
    let fig = |name: &str, value: f64, unit: &'static str, base: f64| Figure {
        name: name.to_owned(),
        kind: Kind::Growth,
        value,
        unit,
        baseline_name: "the same, quiet (no lease changes)".to_owned(),
        baseline: base,
    };
    Ok(vec![
        fig(
            "udp longest ping gap, 5,000-lease add/resync/delete",
            gap,
            "ms",
            qgap,
        ),
        fig(
            "udp largest ping RTT, 5,000-lease add/resync/delete",
            rtt,
            "ms",
            qrtt,
        ),
        fig(
            "udp pings lost (10 ms interval), 5,000-lease churn",
            lost as f64,
            "",
            qlost as f64,
        ),
    ])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bin = flanneld_bin()?;
    let mut c = Cluster::new(&bin, "budp", 2, false, Backing::Etcd, CONFIG);
    let port = format!("--healthz-port={HEALTHZ_PORT}");
    c.start(0, &[&port]);
    c.start(1, &[]);
    let figures = bench(&mut c)?;
    drop(c);
    print_figures(&figures);
    Ok(())
}
