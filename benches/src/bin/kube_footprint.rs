//! flanneld in Kubernetes mode (`--kube-subnet-mgr`) against the fake API
//! server (`flannel_testutil::kube`; no kube-apiserver can be installed
//! here), on the e2e suite's network-namespace cluster (vxlan, two hosts).
//! Side by side:
//! - memory: VmRSS of host 1's flanneld once it has programmed the routes of
//!   `N` more Nodes (default 5,000; first argument to change), all with
//!   flannel's annotations as Go writes them, vs the same flanneld when no
//!   other Node had flannel annotations, both read one second after its
//!   routes were in place;
//! - convergence: from a Node written to the API server to its route on both
//!   hosts (median of `ADDS` Nodes added one at a time) vs the delivery of
//!   the same kind of write to a bare kube-rs watch (the floor every watcher
//!   waits for).
//!
//! The flanneld binary is the `flanneld` next to this program, or
//! `$BENCH_FLANNELD`. Prints one row per figure and the figures as JSON
//! lines.

use flannel_benches::{
    Figure, Kind, Res, cluster_main, err, in_ns, median_ms, settled_memory, wait_routes,
};
use flannel_netlink::{Family, Netlink};
use flannel_testutil::cluster::{Backing, Cluster};
use flannel_testutil::kube::node_json;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, WatchEvent, WatchParams};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#;
const P: &str = "flannel.alpha.coreos.com/";
const DEV: &str = "flannel.1";
const ADDS: usize = 15;
const TIMEOUT: Duration = Duration::from_secs(180);
const SETTLE: Duration = Duration::from_secs(1);

/// Node `i` of the load: podCIDR `10.<100+i/256>.<i%256>.0/24`, a public IP
/// and VTEP MAC of its own, annotated as Go's flanneld annotates it.
fn load_node(name: &str, i: usize) -> serde_json::Value {
    let cidr = format!("10.{}.{}.0/24", 100 + i / 256, i % 256);
    let data = format!(
        r#"{{"VNI":1,"VtepMAC":"0a:dd:00:{:02x}:{:02x}:01"}}"#,
        i >> 8,
        i & 0xff
    );
    let ip = format!("172.16.{}.{}", i / 250, i % 250 + 1);
    node_json(
        name,
        &[&cidr],
        &[
            (&format!("{P}kube-subnet-manager"), "true"),
            (&format!("{P}backend-type"), "vxlan"),
            (&format!("{P}backend-data"), &data),
            (&format!("{P}public-ip"), &ip),
        ],
        None,
    )
}

/// When a route to `dst/24` shows up in `ns` (netlink dumps every 0.5 ms).
fn route_seen(ns: &flannel_testutil::netns::NetNs, dst: Ipv4Addr) -> Res<Instant> {
    in_ns(ns, async move || {
        let (nl, conn) = Netlink::connect().map_err(err)?;
        tokio::spawn(conn);
        let start = Instant::now();
        while start.elapsed() < TIMEOUT {
            let routes = nl.routes(Family::V4).await.map_err(err)?;
            if routes
                .iter()
                .any(|r| r.dst == IpAddr::V4(dst) && r.prefix == 24)
            {
                return Ok(Instant::now());
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        Err(format!("no route to {dst}/24 after {TIMEOUT:?}"))
    })
}

/// Node written → route on both hosts, for `ADDS` Nodes one at a time.
fn converge(c: &Cluster) -> Res<Vec<Duration>> {
    let mut out = Vec::new();
    for k in 0..ADDS {
        let i = 9000 + k;
        let name = format!("conv-{k}");
        let dst = Ipv4Addr::new(10, (100 + i / 256) as u8, (i % 256) as u8, 0);
        let took = std::thread::scope(|s| -> Res<Duration> {
            let watchers: Vec<_> = (0..2)
                .map(|h| s.spawn(move || route_seen(c.host(h), dst)))
                .collect();
            // The watchers have connected and dumped once by then.
            std::thread::sleep(Duration::from_millis(50));
            let t = Instant::now();
            c.kube_api().apply_node(load_node(&name, i));
            let mut last = t;
            for w in watchers {
                let seen = w
                    .join()
                    .map_err(|_| "a route watcher panicked".to_string())??;
                last = last.max(seen);
            }
            Ok(last - t)
        })?;
        out.push(took);
        c.kube_api().delete_node(&name);
    }
    Ok(out)
}

/// The same writes seen by a bare kube-rs watch (in the switch namespace,
/// where the fake API server listens).
fn raw_watch(c: &Cluster) -> Res<Vec<Duration>> {
    let kubeconfig = c.kubeconfig_path();
    let api = c.kube_api();
    in_ns(&c.topo.switch, async move || {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).map_err(err)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(err)?;
        let nodes: Api<Node> = Api::all(kube::Client::try_from(config).map_err(err)?);
        let mut out = Vec::new();
        for k in 0..ADDS {
            let rv = api.resource_version().to_string();
            let mut stream = nodes
                .watch(&WatchParams::default(), &rv)
                .await
                .map_err(err)?
                .boxed();
            let name = format!("raw-{k}");
            let t = Instant::now();
            api.apply_node(load_node(&name, 9500 + k));
            loop {
                match tokio::time::timeout(TIMEOUT, stream.next()).await {
                    Ok(Some(Ok(WatchEvent::Added(n))))
                        if n.metadata.name.as_deref() == Some(&name) =>
                    {
                        break;
                    }
                    Ok(Some(Ok(_))) => {}
                    other => return Err(format!("raw watch: {other:?}")),
                }
            }
            out.push(t.elapsed());
            api.delete_node(&name);
        }
        Ok(out)
    })
}

fn bench(c: &mut Cluster, n: usize) -> Res<Vec<Figure>> {
    // Host 2's Node has no flannel annotations until its flanneld starts:
    // host 1's flanneld watches no other flannel Node.
    c.start(0, &[]);
    c.wait_env_within(0, None, TIMEOUT);
    let rss0 = settled_memory(c, 0, SETTLE)?.rss_mib;
    eprintln!("no other flannel Node: VmRSS {rss0:.1} MiB");
    c.start(1, &[]);
    c.wait_env_within(1, None, TIMEOUT);
    wait_routes(c, 0, DEV, 1, TIMEOUT)?;

    let mut ours = converge(c)?;
    let mut base = raw_watch(c)?;
    eprintln!("Node written -> route on both hosts: {ours:?}");
    eprintln!("Node written -> bare watch event: {base:?}");

    let t = Instant::now();
    for i in 0..n {
        c.kube_api().apply_node(load_node(&format!("load-{i}"), i));
    }
    eprintln!("wrote {n} Nodes in {:?}", t.elapsed());
    let took = wait_routes(c, 0, DEV, n + 1, TIMEOUT)?;
    let rss_n = settled_memory(c, 0, SETTLE)?.rss_mib;
    eprintln!(
        "{} other flannel Nodes: routes programmed {took:?} after the last write; VmRSS {rss_n:.1} MiB",
        n + 1
    );
    Ok(vec![
        Figure {
            name: format!("flanneld (kube) RSS watching {n} more Nodes"),
            kind: Kind::Growth,
            value: rss_n,
            unit: "MiB",
            baseline_name: "flanneld (kube) RSS with no other Node".into(),
            baseline: rss0,
        },
        Figure {
            name: "kube: Node written -> route on both hosts".into(),
            kind: Kind::Reference,
            value: median_ms(&mut ours),
            unit: "ms",
            baseline_name: "Node written -> bare kube-rs watch event".into(),
            baseline: median_ms(&mut base),
        },
    ])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    cluster_main("bkube", 2, Backing::Kube, CONFIG, 5_000, bench)
}
