//! flanneld's memory with many leases, and its start-up time.
//!
//! One network-namespace host (`eth0` = `192.168.100.1/24` on a bridge) runs
//! the release `flanneld` (vxlan) against a real etcd in the switch
//! namespace, as the e2e suite does. Side by side:
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

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use flannel_benches::{Daemon, Figure, Res, err, flanneld_bin, in_ns, median_ms};
use flannel_netlink::{Family, Netlink};
use flannel_testutil::etcd::EtcdServer;
use flannel_testutil::netns::{NetNs, Topology};
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const STARTS: usize = 5;
const TXN_OPS: usize = 125;
const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 254);
const SUBNETS: &str = "/coreos.com/network/subnets/";
const CONFIG: &str = r#"{"Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMin": "10.1.0.0", "SubnetMax": "10.1.255.0", "Backend": {"Type": "vxlan"}}"#;
const DEV: &str = "flannel.1";
const TIMEOUT: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(1);

/// Waits until `flannel.1` in `ns` carries `n` routes; returns how long
/// that took.
fn wait_routes(ns: &NetNs, n: usize, daemon: &mut Daemon) -> Res<Duration> {
    let start = Instant::now();
    let res = in_ns(ns, async move || {
        let (nl, conn) = Netlink::connect().map_err(err)?;
        tokio::spawn(conn);
        let mut count = 0;
        while start.elapsed() < TIMEOUT {
            if let Some(dev) = nl.link_by_name(DEV).await.map_err(err)? {
                let routes = nl.routes(Family::V4).await.map_err(err)?;
                count = routes.iter().filter(|r| r.oif == Some(dev.index)).count();
                if count >= n {
                    return Ok(start.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("{count} of {n} routes on {DEV} after {TIMEOUT:?}"))
    });
    res.map_err(|e| format!("{e}; flanneld log:\n{}", daemon.log_tail()))
}

/// Removes what a previous start left: `flannel.1` and `subnet.env`.
fn reset(ns: &NetNs, env: &Path) {
    let _ = ns.ip(&["link", "del", DEV]);
    let _ = fs::remove_file(env);
}

fn etcd<T: Send>(
    switch: &NetNs,
    endpoint: &str,
    f: impl AsyncFnOnce(Client) -> Res<T> + Send,
) -> Res<T> {
    let ep = endpoint.to_owned();
    in_ns(switch, async move || {
        let client = Client::connect([ep], None).await.map_err(err)?;
        f(client).await
    })
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
fn rss_with(bin: &Path, host: &NetNs, hd: &Path, endpoint: &str, routes: usize) -> Res<f64> {
    let env = hd.join("subnet.env");
    reset(host, &env);
    let mut d = Daemon::start(bin, host, hd, endpoint)?;
    d.wait_env(&env, TIMEOUT)?;
    let took = wait_routes(host, routes, &mut d)?;
    std::thread::sleep(SETTLE);
    let (rss, hwm) = d.rss_mib()?;
    eprintln!(
        "{routes} remote leases: routes programmed {took:?} after subnet.env; \
         VmRSS {rss:.1} MiB, VmHWM {hwm:.1} MiB"
    );
    Ok(rss)
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

fn bench(topo: &Topology, endpoint: &str, dir: &Path, n: usize) -> Res<Vec<Figure>> {
    let bin = flanneld_bin()?;
    let host = &topo.host(0).ns;
    let hd = dir.join("h1");
    fs::create_dir_all(&hd).map_err(err)?;
    let env = hd.join("subnet.env");

    let mut ours = Vec::new();
    let mut base = Vec::new();
    for k in 1..=STARTS {
        reset(host, &env);
        let t = Instant::now();
        let mut d = Daemon::start(&bin, host, &hd, endpoint)?;
        d.wait_env(&env, TIMEOUT)?;
        let o = t.elapsed();
        drop(d);

        reset(host, &env);
        let ns = host.name();
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

    let rss0 = rss_with(&bin, host, &hd, endpoint, 0)?;
    let t = Instant::now();
    etcd(&topo.switch, endpoint, async move |c| fill(c, n).await)?;
    eprintln!("wrote {n} leases in {:?}", t.elapsed());
    let rss_n = rss_with(&bin, host, &hd, endpoint, n)?;

    Ok(vec![
        Figure {
            name: format!("flanneld RSS with {n} leases"),
            value: rss_n,
            unit: "MiB",
            baseline_name: "flanneld RSS with 0 leases".into(),
            baseline: rss0,
        },
        Figure {
            name: "flanneld start -> subnet.env".into(),
            value: median_ms(&mut ours),
            unit: "ms",
            baseline_name: "ip link add + ip addr add (vxlan)".into(),
            baseline: median_ms(&mut base),
        },
    ])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5_000);
    let dir = tempfile::Builder::new()
        .prefix("flannel-bench-footprint-")
        .tempdir()?;
    let topo = Topology::builder().hosts(1).name_hint("bfoot").build()?;
    topo.switch
        .ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"])?;
    let etcd_server = EtcdServer::start_in_netns(topo.switch.name(), IpAddr::V4(ETCD_IP))?;
    let endpoint = etcd_server.endpoint();
    etcd(&topo.switch, &endpoint, async |mut c: Client| {
        c.put("/coreos.com/network/config", CONFIG, None)
            .await
            .map_err(err)?;
        Ok(())
    })?;
    let figures = bench(&topo, &endpoint, dir.path(), n)?;
    for f in &figures {
        println!("{}", f.row());
    }
    for f in &figures {
        println!("{}", f.to_json());
    }
    Ok(())
}
