//! How fast a new lease in etcd becomes a route on the other hosts.
//!
//! Three network-namespace hosts on one bridge run the release `flanneld`
//! (vxlan) against a real etcd in the switch namespace: the e2e suite's
//! cluster (`flannel_testutil::cluster`). From host 1 the bench writes leases of fake remote nodes straight
//! into etcd (Go's JSON, with a 24 h etcd lease as Go's `createSubnet`
//! attaches), and measures from just before the PUT:
//! - ours: until the route to the new subnet is in the kernel of hosts 2
//!   and 3 (both; seen by an `ip monitor route` netlink subscription in
//!   each host, and then checked in a dump of the routing table);
//! - baseline: until a raw etcd-client watcher on hosts 2 and 3 (both) sees
//!   the PUT — the delivery flanneld's own watch cannot beat.
//!
//! First `ROUNDS` (50) single leases, each on a new subnet, one after the
//! other (median and p99); then a burst of `BURST` (1,000) leases written as
//! fast as possible in transactions of 125 puts, until every route is on both
//! hosts vs every PUT seen by both watchers.
//!
//! The flanneld binary is the `flanneld` next to this program, or
//! `$BENCH_FLANNELD`. Prints one row per figure and the figures as JSON lines.
//! Every figure is of kind `reference`: the watch delivery is the floor a
//! route waits for, not another way of programming it.

use etcd_client::{Client, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use flannel_benches::{Figure, Kind, Res, err, flanneld_bin, in_ns, median_ms, print_figures};
use flannel_netlink::{Family, Netlink};
use flannel_testutil::cluster::{Backing, Cluster};
use flannel_testutil::netns::NetNs;
use futures_util::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::AsyncSocket;
use rtnetlink::MulticastGroup;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

const HOSTS: usize = 3;
const ROUNDS: usize = 50;
const BURST: usize = 1_000;
const TXN_OPS: usize = 125;
const SUBNETS: &str = "/coreos.com/network/subnets/";
const CONFIG: &str = r#"{"Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMin": "10.1.0.0", "SubnetMax": "10.1.255.0", "Backend": {"Type": "vxlan"}}"#;
const DEV: &str = "flannel.1";
const TIMEOUT: Duration = Duration::from_secs(60);
/// Receive buffer of the route monitor socket: a burst must not overflow it.
const MONITOR_RCVBUF: usize = 8 << 20;

async fn netlink() -> Res<Netlink> {
    let (nl, conn) = Netlink::connect().map_err(err)?;
    tokio::spawn(conn);
    Ok(nl)
}

async fn flannel_index(nl: &Netlink) -> Res<Option<u32>> {
    Ok(nl.link_by_name(DEV).await.map_err(err)?.map(|l| l.index))
}

/// Subnets (network addresses of /24s) routed through `flannel.1`.
async fn flannel_routes(nl: &Netlink) -> Res<HashSet<Ipv4Addr>> {
    let Some(index) = flannel_index(nl).await? else {
        return Ok(HashSet::new());
    };
    Ok(nl
        .routes(Family::V4)
        .await
        .map_err(err)?
        .into_iter()
        .filter(|r| r.oif == Some(index))
        .filter_map(|r| match r.dst {
            IpAddr::V4(d) => Some(d),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// What a route monitor waits for: every subnet in `all` routed through
/// `flannel.1`.
struct Want {
    round: usize,
    all: HashSet<Ipv4Addr>,
}

enum Msg {
    WatchReady,
    Put {
        host: usize,
        key: String,
        at: Instant,
    },
    Routed {
        round: usize,
        at: Instant,
    },
    Failed(String),
}

/// The IPv4 destination of a new route through `flannel.1`.
fn new_flannel_route(msg: NetlinkPayload<RouteNetlinkMessage>, index: u32) -> Option<Ipv4Addr> {
    let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) = msg else {
        return None;
    };
    if r.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut dst = None;
    let mut oif = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    dst.filter(|_| oif == Some(index))
}

/// `ip monitor route` in the host: notes when each route through
/// `flannel.1` first appears, and answers each [`Want`] with the time its
/// last route appeared (after checking the routes are in the table).
async fn route_monitor(host: usize, mut wants: UnboundedReceiver<Want>, out: UnboundedSender<Msg>) {
    let run = async {
        let nl = netlink().await?;
        let index = flannel_index(&nl).await?.ok_or("no flannel.1")?;
        let (mut conn, _handle, mut events) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Ipv4Route]).map_err(err)?;
        conn.socket_mut()
            .socket_mut()
            .set_rx_buf_sz(MONITOR_RCVBUF)
            .map_err(err)?;
        tokio::spawn(conn);
        let mut seen: HashMap<Ipv4Addr, Instant> = HashMap::new();
        let mut current: Option<Want> = None;
        loop {
            tokio::select! {
                w = wants.recv() => match w {
                    Some(w) => current = Some(w),
                    None => return Ok::<(), String>(()),
                },
                ev = events.next() => {
                    let at = Instant::now();
                    let Some((msg, _)) = ev else {
                        return Err(format!("host {}: route monitor ended", host + 1));
                    };
                    if let Some(dst) = new_flannel_route(msg.payload, index) {
                        seen.entry(dst).or_insert(at);
                    }
                }
            }
            if let Some(w) = current.take_if(|w| w.all.iter().all(|d| seen.contains_key(d))) {
                let have = flannel_routes(&nl).await?;
                if let Some(d) = w.all.iter().find(|d| !have.contains(d)) {
                    return Err(format!(
                        "host {}: route to {d}/24 announced but not in the table",
                        host + 1
                    ));
                }
                let at = w.all.iter().filter_map(|d| seen.get(d)).max().copied();
                let _ = out.send(Msg::Routed {
                    round: w.round,
                    at: at.unwrap_or_else(Instant::now),
                });
            }
        }
    };
    if let Err(e) = run.await {
        let _ = out.send(Msg::Failed(e));
    }
}

async fn watcher(
    host: usize,
    endpoint: String,
    mut stop: UnboundedReceiver<()>,
    out: UnboundedSender<Msg>,
) {
    let run = async {
        let mut client = Client::connect([endpoint], None).await.map_err(err)?;
        let mut stream = client
            .watch(SUBNETS, Some(WatchOptions::new().with_prefix()))
            .await
            .map_err(err)?;
        loop {
            tokio::select! {
                msg = stream.message() => {
                    let Some(resp) = msg.map_err(err)? else {
                        return Err("watch stream ended".into());
                    };
                    let at = Instant::now();
                    if resp.created() {
                        let _ = out.send(Msg::WatchReady);
                    }
                    for ev in resp.events() {
                        if ev.event_type() == EventType::Put
                            && let Some(kv) = ev.kv()
                        {
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            let _ = out.send(Msg::Put { host, key, at });
                        }
                    }
                }
                _ = stop.recv() => return Ok::<(), String>(()),
            }
        }
    };
    if let Err(e) = run.await {
        let _ = out.send(Msg::Failed(format!("host {} watcher: {e}", host + 1)));
    }
}

/// A fake remote node's lease on `10.a.b.0/24`, Go's JSON.
fn lease(a: usize, b: usize, n: usize) -> (String, String) {
    (
        format!("{SUBNETS}10.{a}.{b}.0-24"),
        format!(
            r#"{{"PublicIP":"192.168.{}.{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:cc:00:{:02x}:{:02x}:01"}}}}"#,
            101 + n / 250,
            n % 250 + 1,
            n >> 8,
            n & 0xff
        ),
    )
}

/// The `p`-quantile (nearest rank) in milliseconds.
fn quantile_ms(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1].as_secs_f64() * 1000.0
}

struct Results {
    conv: Vec<Duration>,
    watch: Vec<Duration>,
    burst_conv: Duration,
    burst_watch: Duration,
}

/// Receives until `done` says so; fails on a `Failed` message or timeout.
async fn collect(
    rx: &mut UnboundedReceiver<Msg>,
    mut handle: impl FnMut(Msg) -> Res<bool>,
) -> Res<()> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| format!("no convergence within {TIMEOUT:?}"))?
            .ok_or("all observers are gone")?;
        if let Msg::Failed(e) = msg {
            return Err(e);
        }
        if handle(msg)? {
            return Ok(());
        }
    }
}

/// Writes the leases (in host 1) and gathers the observers' reports.
async fn orchestrate(
    endpoint: String,
    wants: Vec<UnboundedSender<Want>>,
    mut rx: UnboundedReceiver<Msg>,
    observers: usize,
) -> Res<Results> {
    let mut client = Client::connect([endpoint], None).await.map_err(err)?;
    let lease_id = client.lease_grant(86_400, None).await.map_err(err)?.id();
    let opts = || Some(PutOptions::new().with_lease(lease_id));
    let mut ready = 0;
    collect(&mut rx, |m| {
        ready += usize::from(matches!(m, Msg::WatchReady));
        Ok(ready == observers)
    })
    .await?;

    let (mut conv, mut watch) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (key, value) = lease(100, round, round);
        let subnet = Ipv4Addr::new(10, 100, round as u8, 0);
        for w in &wants {
            w.send(Want {
                round,
                all: HashSet::from([subnet]),
            })
            .map_err(err)?;
        }
        let t0 = Instant::now();
        client.put(key.clone(), value, opts()).await.map_err(err)?;
        let (mut routed, mut seen) = (Vec::new(), Vec::new());
        collect(&mut rx, |m| {
            match m {
                Msg::Routed { round: r, at, .. } if r == round => routed.push(at),
                Msg::Put { key: k, at, .. } if k == key => seen.push(at),
                _ => {}
            }
            Ok(routed.len() == wants.len() && seen.len() == observers)
        })
        .await?;
        let c = routed.iter().max().map_or(Duration::ZERO, |t| *t - t0);
        let w = seen.iter().max().map_or(Duration::ZERO, |t| *t - t0);
        eprintln!(
            "round {}/{ROUNDS}: route {c:?}, etcd watch {w:?}",
            round + 1
        );
        conv.push(c);
        watch.push(w);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    let burst: Vec<(String, String)> = (0..BURST)
        .map(|j| lease(110 + j / 256, j % 256, ROUNDS + j))
        .collect();
    let keys: HashSet<&str> = burst.iter().map(|(k, _)| k.as_str()).collect();
    let all: HashSet<Ipv4Addr> = (0..BURST)
        .map(|j| Ipv4Addr::new(10, (110 + j / 256) as u8, (j % 256) as u8, 0))
        .collect();
    for w in &wants {
        w.send(Want {
            round: ROUNDS,
            all: all.clone(),
        })
        .map_err(err)?;
    }
    let t0 = Instant::now();
    for chunk in burst.chunks(TXN_OPS) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), opts()))
            .collect();
        client.txn(Txn::new().and_then(ops)).await.map_err(err)?;
    }
    let written = t0.elapsed();
    let mut routed = Vec::new();
    let mut seen = [0usize; HOSTS];
    let mut watch_done = Vec::new();
    collect(&mut rx, |m| {
        match m {
            Msg::Routed { round, at, .. } if round == ROUNDS => routed.push(at),
            Msg::Put { host, key, at } if keys.contains(key.as_str()) => {
                seen[host] += 1;
                if seen[host] == BURST {
                    watch_done.push(at);
                }
            }
            _ => {}
        }
        Ok(routed.len() == wants.len() && watch_done.len() == observers)
    })
    .await?;
    let burst_conv = routed.iter().max().map_or(Duration::ZERO, |t| *t - t0);
    let burst_watch = watch_done.iter().max().map_or(Duration::ZERO, |t| *t - t0);
    eprintln!(
        "burst of {BURST}: written in {written:?}, routes on both hosts after \
         {burst_conv:?}, etcd watch after {burst_watch:?}"
    );
    Ok(Results {
        conv,
        watch,
        burst_conv,
        burst_watch,
    })
}

/// Waits until `ns`'s `flannel.1` routes the `n` other hosts' subnets.
fn wait_routes(ns: &NetNs, n: usize) -> Res<()> {
    in_ns(ns, async move || {
        let nl = netlink().await?;
        let deadline = Instant::now() + TIMEOUT;
        while flannel_routes(&nl).await?.len() < n {
            if Instant::now() > deadline {
                return Err(format!("{}: fewer than {n} flannel routes", ns.name()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    })
}

fn bench(c: &mut Cluster) -> Res<Vec<Figure>> {
    for i in 0..HOSTS {
        c.wait_env_within(i, None, TIMEOUT);
    }
    let endpoint = c.etcd_endpoint();
    let endpoint = endpoint.as_str();
    let topo = &c.topo;
    for h in &topo.hosts {
        wait_routes(&h.ns, HOSTS - 1)?;
    }
    eprintln!("{HOSTS} flanneld up and meshed");

    let (tx, rx) = unbounded_channel();
    let observed: Vec<usize> = (1..HOSTS).collect();
    let mut want_txs = Vec::new();
    let mut stop_txs = Vec::new();
    std::thread::scope(|s| {
        for &h in &observed {
            let (wtx, wrx) = unbounded_channel();
            want_txs.push(wtx);
            let out = tx.clone();
            let ns = &topo.host(h).ns;
            s.spawn(move || {
                in_ns(ns, async move || {
                    route_monitor(h, wrx, out).await;
                    Ok(())
                })
            });
            let (stx, srx) = unbounded_channel();
            stop_txs.push(stx);
            let out = tx.clone();
            let ep = endpoint.to_owned();
            s.spawn(move || {
                in_ns(ns, async move || {
                    watcher(h, ep, srx, out).await;
                    Ok(())
                })
            });
        }
        drop(tx);
        let ep = endpoint.to_owned();
        let n = observed.len();
        let res = in_ns(&topo.host(0).ns, async move || {
            orchestrate(ep, want_txs, rx, n).await
        });
        for stx in &stop_txs {
            let _ = stx.send(());
        }
        let r = res.map_err(|e| {
            let logs: Vec<String> = (0..HOSTS)
                .map(|i| format!("host {} flanneld log:\n{}", i + 1, c.log_tail(i, 15)))
                .collect();
            format!("{e}\n{}", logs.join("\n"))
        })?;
        Ok(vec![
            Figure {
                name: "convergence median".into(),
                kind: Kind::Reference,
                value: median_ms(&mut r.conv.clone()),
                unit: "ms",
                baseline_name: "etcd watch delivery median".into(),
                baseline: median_ms(&mut r.watch.clone()),
            },
            Figure {
                name: "convergence p99".into(),
                kind: Kind::Reference,
                value: quantile_ms(&mut r.conv.clone(), 0.99),
                unit: "ms",
                baseline_name: "etcd watch delivery p99".into(),
                baseline: quantile_ms(&mut r.watch.clone(), 0.99),
            },
            Figure {
                name: format!("convergence of a {BURST}-lease burst"),
                kind: Kind::Reference,
                value: r.burst_conv.as_secs_f64() * 1000.0,
                unit: "ms",
                baseline_name: format!("etcd watch delivery of all {BURST}"),
                baseline: r.burst_watch.as_secs_f64() * 1000.0,
            },
        ])
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bin = flanneld_bin()?;
    let mut c = Cluster::new(&bin, "bconv", HOSTS, false, Backing::Etcd, CONFIG);
    c.start_all();
    let figures = bench(&mut c)?;
    drop(c);
    print_figures(&figures);
    Ok(())
}
