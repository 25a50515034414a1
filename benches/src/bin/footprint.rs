//! flanneld's memory with many leases, and its start-up time.
//!
//! One network-namespace host (`eth0` = `192.168.100.1/24` on a bridge) runs
//! the release `flanneld` (vxlan) against a real etcd in the switch
//! namespace: the e2e suite's cluster (`flannel_testutil::cluster`). Side by
//! side:
//! - start-up: from spawning flanneld to its `subnet.env` (median of
//!   `STARTS` starts, each with `flannel.1` deleted first so the device is
//!   created again) vs the minimal kernel work of that start done by hand,
//!   `ip link add flannel.1 type vxlan ...` + `ip addr add ... dev flannel.1`;
//! - memory: VmRSS (`/proc/<pid>/status`) of flanneld once it has
//!   programmed the routes of `N` remote leases (default 5,000; first
//!   argument to change) already in etcd vs the same flanneld with no remote
//!   lease, both read one second after the routes are in place.
//!
//! The flanneld binary is the `flanneld` next to this program, or
//! `$BENCH_FLANNELD`. Prints one row per figure and the figures as JSON lines.
//! The RSS figure is of kind `growth` (ours against ours with no lease), the
//! start-up figure of kind `reference` (two `ip` commands are a floor, not a
//! flanneld start).

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use flannel_benches::{
    Figure, Kind, Res, cluster_main, err, median_ms, settled_memory, wait_routes,
};
use flannel_testutil::cluster::{Backing, Cluster};
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

const STARTS: usize = 5;
const TXN_OPS: usize = 125;
const SUBNETS: &str = "/coreos.com/network/subnets/";
const CONFIG: &str = r#"{"Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMin": "10.1.0.0", "SubnetMax": "10.1.255.0", "Backend": {"Type": "vxlan"}}"#;
const DEV: &str = "flannel.1";
const TIMEOUT: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(1);

/// Stops host 1's flanneld and removes what its start left: `flannel.1`
/// and `subnet.env`.
fn reset(c: &mut Cluster) {
    c.daemons[0] = None;
    let _ = c.host(0).ip(&["link", "del", DEV]);
    let _ = fs::remove_file(c.subnet_file(0));
}

/// Writes `n` remote leases (Go's JSON, one 24 h etcd lease).
async fn fill(mut client: Client, n: usize) -> Res<()> {
    let lease_id = client.lease_grant(86_400, None).await.map_err(err)?.id();
    let all: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                format!("{SUBNETS}10.{}.{}.0-24", 100 + i / 256, i % 256),
                format!(
                    r#"{{"PublicIP":"172.16.{}.{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:dd:00:{:02x}:{:02x}:01"}}}}"#,
                    i / 250,
                    i % 250 + 1,
                    i >> 8,
                    i & 0xff
                ),
            )
        })
        .collect();
    for chunk in all.chunks(TXN_OPS) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, v)| {
                TxnOp::put(
                    k.as_str(),
                    v.as_str(),
                    Some(PutOptions::new().with_lease(lease_id)),
                )
            })
            .collect();
        client.txn(Txn::new().and_then(ops)).await.map_err(err)?;
    }
    Ok(())
}

/// The RSS (MiB) of a fresh flanneld once `routes` routes are programmed.
fn rss_with(c: &mut Cluster, routes: usize) -> Res<f64> {
    reset(c);
    c.start(0, &[]);
    c.wait_env_within(0, None, TIMEOUT);
    let took = wait_routes(c, 0, DEV, routes, TIMEOUT)?;
    let mem = settled_memory(c, 0, SETTLE)?;
    eprintln!(
        "{routes} remote leases: routes programmed {took:?} after subnet.env; \
         VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        mem.rss_mib, mem.hwm_mib
    );
    Ok(mem.rss_mib)
}

fn run(program: &str, args: &[&str]) -> Res<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn bench(c: &mut Cluster, n: usize) -> Res<Vec<Figure>> {
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for k in 1..=STARTS {
        reset(c);
        let t = Instant::now();
        c.start(0, &[]);
        c.wait_env_within(0, None, TIMEOUT);
        let o = t.elapsed();

        reset(c);
        let ns = c.host(0).name();
        let t = Instant::now();
        run(
            "ip",
            &[
                "-n",
                ns,
                "link",
                "add",
                DEV,
                "mtu",
                "1450",
                "type",
                "vxlan",
                "id",
                "1",
                "local",
                "192.168.100.1",
                "dev",
                "eth0",
                "dstport",
                "8472",
                "nolearning",
            ],
        )?;
        run("ip", &["-n", ns, "addr", "add", "10.1.0.0/32", "dev", DEV])?;
        let b = t.elapsed();
        eprintln!("start {k}/{STARTS}: flanneld -> subnet.env {o:?}, by hand {b:?}");
        ours.push(o);
        base.push(b);
    }

    let rss0 = rss_with(c, 0)?;
    let t = Instant::now();
    c.with_etcd(async move |client| fill(client, n).await)?;
    eprintln!("wrote {n} leases in {:?}", t.elapsed());
    let rss_n = rss_with(c, n)?;

    Ok(vec![
        Figure {
            name: format!("flanneld RSS with {n} leases"),
            kind: Kind::Growth,
            value: rss_n,
            unit: "MiB",
            baseline_name: "flanneld RSS with 0 leases".into(),
            baseline: rss0,
        },
        Figure {
            name: "flanneld start -> subnet.env".into(),
            kind: Kind::Reference,
            value: median_ms(&mut ours),
            unit: "ms",
            baseline_name: "ip link add + ip addr add (vxlan)".into(),
            baseline: median_ms(&mut base),
        },
    ])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    cluster_main("bfoot", 1, Backing::Etcd, CONFIG, 5_000, bench)
}
