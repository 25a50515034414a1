//! Reliability tests: real `flanneld` processes in network namespaces (the
//! e2e harness) facing datastore outages, an admin damaging the datapath,
//! stale state left from an earlier run, and a SIGTERM restart, checked
//! through the data path (ping), the kernel state and the health endpoints
//! (`/readyz`, `/metrics`).
//!
//! Needs root and the e2e prerequisites (iproute2, iputils-ping, iptables,
//! containernetworking-plugins, etcd-server); a missing one fails the test
//! with its name. Run: `cargo test -p flanneld --test reliability`
//! (`--nocapture` shows the measured figures).

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flannel_testutil::cluster::{
    Backing, CONVERGE, Cluster, Pinger, env_value, http_get, link_mac, ping, ping_counts,
    v4_subnet, wait_until,
};

/// The daemon under test.
const FLANNELD: &str = env!("CARGO_BIN_EXE_flanneld");

const VXLAN_CONFIG: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;
const HOSTGW_CONFIG: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;
/// The health port flanneld listens on in every host namespace.
const HEALTHZ_PORT: u16 = 10261;

// ---------------------------------------------------------------- helpers

/// The `--healthz-*` flags for host `i`.
fn healthz_flags(c: &Cluster, i: usize) -> [String; 2] {
    [
        format!("--healthz-port={HEALTHZ_PORT}"),
        format!("--healthz-ip={}", c.host_ip(i)),
    ]
}

/// GET `path` on host `i`'s health server.
fn health_get(c: &Cluster, i: usize, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::new(IpAddr::V4(c.host_ip(i)), HEALTHZ_PORT);
    http_get(c.host(i), addr, path)
}

/// `/readyz` of host `i`: the status code, or why there is none.
fn readyz(c: &Cluster, i: usize) -> Result<u16, String> {
    health_get(c, i, "/readyz")
        .map(|(code, _)| code)
        .map_err(|e| format!("GET /readyz: {e}"))
}

/// Waits until host `i`'s `/readyz` answers `want`; returns the time it took.
fn wait_readyz(c: &Cluster, i: usize, want: u16, within: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let got = readyz(c, i);
        if got == Ok(want) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            return Err(format!(
                "host {}: /readyz still {got:?} after {within:?} (want {want})",
                i + 1
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Host `i`'s `/metrics` (the Prometheus exposition); panics unless it is
/// served with status 200.
fn metrics(c: &Cluster, i: usize) -> Metrics {
    match health_get(c, i, "/metrics") {
        Ok((200, body)) if body.contains("# TYPE") => Metrics {
            host: i + 1,
            text: body,
        },
        other => panic!("host {}: GET /metrics: {other:?}", i + 1),
    }
}

/// One scrape of a host's `/metrics`.
struct Metrics {
    host: usize,
    text: String,
}

impl Metrics {
    /// The value of the unlabelled sample `name`; panics when it is absent.
    fn get(&self, name: &str) -> f64 {
        self.text
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or_else(|| {
                panic!(
                    "host {}: no sample {name} in /metrics:\n{}",
                    self.host, self.text
                )
            })
    }

    /// Asserts the sample `name` equals `want`.
    fn expect(&self, name: &str, want: f64, when: &str) {
        let got = self.get(name);
        assert_eq!(got, want, "host {}: {name} {when}", self.host);
    }

    /// The checks that hold whenever a host of a 2-node 10.244.0.0/16 vxlan
    /// network holds its lease: build info, health, capacity, lease expiry
    /// (24 h ahead), no renewal or re-acquisition, no datapath error.
    fn expect_steady(&self, when: &str) {
        let build = format!(
            "flannel_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(
            self.text.lines().any(|l| l == build),
            "host {}: no `{build}` in /metrics {when}:\n{}",
            self.host,
            self.text
        );
        self.expect("flannel_healthy", 1.0, when);
        // 10.244.1.0/24 .. 10.244.255.0/24 (SubnetMin and SubnetMax defaults).
        self.expect("flannel_subnets_total", 255.0, when);
        self.expect("flannel_reconcile_errors_total", 0.0, when);
        self.expect("flannel_lease_renewals_total", 0.0, when);
        self.expect("flannel_lease_reacquisitions_total", 0.0, when);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64();
        let ahead = self.get("flannel_lease_expiry_timestamp_seconds") - now;
        assert!(
            (23.0 * 3600.0..=24.0 * 3600.0 + 60.0).contains(&ahead),
            "host {}: the lease expires {ahead:.0} s from now {when} (want about 24 h)",
            self.host
        );
    }
}

/// Clock ticks per second (`getconf CLK_TCK`, normally 100).
fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // Fields after the command name (which may contain spaces) in
    // parentheses: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    ticks as f64 / clk_tck()
}

fn line_count(text: &str) -> usize {
    text.lines().count()
}

/// The lease subnet (`10.244.X.0`) of host `i`, from its subnet.env.
fn lease_net(c: &mut Cluster, i: usize) -> String {
    let env = c.wait_env(i);
    let first = env_value(&env, "FLANNEL_SUBNET")
        .unwrap_or_else(|| panic!("host {}: no FLANNEL_SUBNET in {env:?}", i + 1));
    v4_subnet(first).0.to_string()
}

/// Waits up to `within` for [`Cluster::vxlan_peer_state`] on `flannel.1`; returns the time taken.
fn wait_vxlan_peer(
    c: &Cluster,
    i: usize,
    net: &str,
    mac: &str,
    pub_ip: &str,
    within: Duration,
) -> Duration {
    match wait_until(within, || {
        c.vxlan_peer_state(i, "flannel.1", net, mac, pub_ip)
    }) {
        Ok(((), took)) => took,
        Err(e) => panic!("host {}: vxlan state for {net}: {e}", i + 1),
    }
}

/// Host `i`'s flannel.1: its MAC and `inet <net>/32` address are as expected.
fn vtep_state(c: &Cluster, i: usize, net: &str, mac: &str) -> Result<(), String> {
    let link = c
        .host(i)
        .ip(&["-o", "link", "show", "dev", "flannel.1"])
        .map_err(|e| e.to_string())?;
    let addrs = c
        .host(i)
        .ip(&["-4", "-o", "addr", "show", "dev", "flannel.1"])
        .map_err(|e| e.to_string())?;
    let got_mac = link_mac(&link).unwrap_or_default();
    if got_mac == mac && link.contains(",UP") && addrs.contains(&format!("inet {net}/32")) {
        Ok(())
    } else {
        Err(format!(
            "flannel.1: {link} / {addrs} (want MAC {mac}, UP, {net}/32)"
        ))
    }
}

/// What one continuous ping saw.
#[derive(Debug)]
struct PingReport {
    transmitted: u64,
    received: u64,
    /// Sequence numbers without a reply, except the last one sent (still in
    /// flight when ping was interrupted).
    missing: Vec<u64>,
}

/// The figures of a continuous ping's output.
fn ping_report(text: &str) -> PingReport {
    let (transmitted, received) =
        ping_counts(text).unwrap_or_else(|| panic!("no ping statistics in:\n{text}"));
    let mut seen = std::collections::BTreeSet::new();
    for l in text.lines().filter(|l| l.contains("bytes from")) {
        if let Some(seq) = l
            .split_whitespace()
            .find_map(|w| w.strip_prefix("icmp_seq="))
            .and_then(|s| s.parse::<u64>().ok())
        {
            seen.insert(seq);
        }
    }
    let missing = (1..transmitted).filter(|s| !seen.contains(s)).collect();
    PingReport {
        transmitted,
        received,
        missing,
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

// ------------------------------------------------------------------ tests

/// 60 s of etcd outage under continuous pod traffic: no packet lost,
/// `/readyz` 503 during and 200 soon after, little CPU, few log lines,
/// `/metrics` follow (readiness, reconnects, lease counts, no datapath
/// error), and a host joining after the outage is seen by all.
#[test]
fn etcd_outage_under_traffic() {
    const OUTAGE: Duration = Duration::from_secs(60);
    let mut c = Cluster::new(FLANNELD, "eout", 3, false, Backing::Etcd, VXLAN_CONFIG);
    for i in 0..2 {
        c.start(i, &strs(&healthz_flags(&c, i)));
    }
    let nets: Vec<String> = (0..2).map(|i| lease_net(&mut c, i)).collect();
    let macs: Vec<String> = (0..2).map(|i| c.mac(i, "flannel.1")).collect();
    for i in 0..2 {
        let j = 1 - i;
        let pub_ip = c.host_ip(j).to_string();
        wait_vxlan_peer(&c, i, &nets[j], &macs[j], &pub_ip, CONVERGE);
    }
    for i in 0..2 {
        c.add_pod(i);
    }
    c.ping_all_pairs(false);
    for i in 0..2 {
        if let Err(e) = wait_readyz(&c, i, 200, CONVERGE) {
            panic!("before the outage: {e}");
        }
    }
    let metrics_before: Vec<Metrics> = (0..2).map(|i| metrics(&c, i)).collect();
    for m in &metrics_before {
        let when = "before the outage";
        m.expect_steady(when);
        m.expect("flannel_ready", 1.0, when);
        m.expect("flannel_datastore_reconnects_total", 0.0, when);
        m.expect("flannel_leases_known", 1.0, when);
        m.expect("flannel_subnets_used", 2.0, when);
        let events = m.get("flannel_lease_events_total");
        assert!(
            events >= 1.0,
            "host {}: flannel_lease_events_total {events} before the outage (the peer's lease \
             was applied)",
            m.host
        );
    }

    let pinger = Pinger::start(
        &c.pod(0).ns,
        IpAddr::V4(c.pod(1).v4),
        &c.dir.path().join("ping.out"),
    );
    thread::sleep(Duration::from_secs(2));

    // ---- the outage
    let pids: Vec<u32> = (0..2).map(|i| c.daemon(i).pid()).collect();
    let cpu_before: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
    let lines_before: Vec<usize> = (0..2).map(|i| line_count(&c.log(i))).collect();
    c.etcd_server().stop();
    let down = Instant::now();
    let mut went_503: Vec<Option<Duration>> = vec![None; 2];
    let mut body_503 = String::new();
    let mut metrics_during: Vec<Option<Metrics>> = vec![None, None];
    let mut ready_during_outage: Vec<Vec<String>> = vec![Vec::new(); 2];
    while down.elapsed() < OUTAGE {
        for i in 0..2 {
            match readyz(&c, i) {
                Ok(503) => {
                    if went_503[i].is_none() {
                        went_503[i] = Some(down.elapsed());
                        if let Ok((_, body)) = health_get(&c, i, "/readyz") {
                            body_503 = body;
                        }
                    }
                }
                other => {
                    if went_503[i].is_some() {
                        ready_during_outage[i].push(format!("{:?}: {other:?}", down.elapsed()));
                    }
                }
            }
            if went_503[i].is_some() && metrics_during[i].is_none() {
                metrics_during[i] = Some(metrics(&c, i));
            }
        }
        let pause = if went_503.iter().all(Option::is_some) {
            1000
        } else {
            100
        };
        thread::sleep(Duration::from_millis(pause).min(OUTAGE.saturating_sub(down.elapsed())));
    }
    let cpu_outage: Vec<f64> = pids
        .iter()
        .zip(&cpu_before)
        .map(|(&p, b)| cpu_seconds(p) - b)
        .collect();
    let outage_logs: Vec<String> = (0..2)
        .map(|i| {
            c.log(i)
                .lines()
                .skip(lines_before[i])
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();

    // ---- etcd returns
    c.etcd_server()
        .restart()
        .unwrap_or_else(|e| panic!("restarting etcd: {e}"));
    let up = Instant::now();
    let mut reconnect: Vec<Option<Duration>> = vec![None; 2];
    while reconnect.iter().any(Option::is_none) && up.elapsed() < Duration::from_secs(30) {
        for (i, r) in reconnect.iter_mut().enumerate() {
            if r.is_none() && readyz(&c, i) == Ok(200) {
                *r = Some(up.elapsed());
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    let metrics_after: Vec<Metrics> = (0..2).map(|i| metrics(&c, i)).collect();

    // ---- a third host joins after the outage
    c.start(2, &strs(&healthz_flags(&c, 2)));
    let net3 = lease_net(&mut c, 2);
    let joined = Instant::now();
    let mac3 = c.mac(2, "flannel.1");
    let pub3 = c.host_ip(2).to_string();
    let seen3: Vec<Duration> = (0..2)
        .map(|i| {
            wait_until(Duration::from_secs(10), || {
                c.vxlan_peer_state(i, "flannel.1", &net3, &mac3, &pub3)
            })
            .map(|((), _)| joined.elapsed())
            .unwrap_or_else(|e| panic!("host {}: host 3 (joined after the outage): {e}", i + 1))
        })
        .collect();
    // The runner counts host 3's lease once it has applied it, which the
    // routes above show; the scrape may still be a moment behind.
    let metrics_joined: Vec<Metrics> = (0..2)
        .map(|i| {
            wait_until(Duration::from_secs(5), || {
                let m = metrics(&c, i);
                let (known, used) = (m.get("flannel_leases_known"), m.get("flannel_subnets_used"));
                if known == 2.0 && used == 3.0 {
                    Ok(m)
                } else {
                    Err(format!(
                        "flannel_leases_known {known}, flannel_subnets_used {used} (want 2, 3)"
                    ))
                }
            })
            .map(|(m, _)| m)
            .unwrap_or_else(|e| panic!("host {}: /metrics after host 3 joined: {e}", i + 1))
        })
        .collect();
    c.add_pod(2);
    for (from, to) in [(0, 2), (2, 1)] {
        ping(&c.pod(from).ns, IpAddr::V4(c.pod(to).v4), CONVERGE)
            .unwrap_or_else(|e| panic!("pod {} -> pod {} after the join: {e}", from + 1, to + 1));
    }
    thread::sleep(Duration::from_secs(1));
    let report = ping_report(&pinger.stop());

    // ---- report, then assert
    eprintln!(
        "etcd_outage_under_traffic: outage {OUTAGE:?}; ping {report:?}; \
         /readyz 503 after {went_503:?}; 200 after etcd returned: {reconnect:?}; \
         outage CPU {cpu_outage:.3?} s; outage log lines {:?}; host 3 seen after {seen3:?}; \
         /readyz during the outage: {body_503:?}",
        outage_logs
            .iter()
            .map(|l| line_count(l))
            .collect::<Vec<_>>()
    );
    for (i, l) in outage_logs.iter().enumerate() {
        eprintln!("--- host {} log during the outage ---\n{l}", i + 1);
    }
    assert!(
        report.missing.is_empty() && report.received + 1 >= report.transmitted,
        "pod 1 -> pod 2 lost packets: {report:?}"
    );
    assert!(report.transmitted > 500, "too few pings: {report:?}");
    for i in 0..2 {
        let h = i + 1;
        assert!(
            went_503[i].is_some(),
            "host {h}: /readyz never answered 503 during the etcd outage"
        );
        assert!(
            ready_during_outage[i].is_empty(),
            "host {h}: /readyz left 503 during the outage: {:?}",
            ready_during_outage[i]
        );
        let took = reconnect[i]
            .unwrap_or_else(|| panic!("host {h}: /readyz not 200 within 30 s after etcd returned"));
        assert!(
            took <= Duration::from_secs(5),
            "host {h}: /readyz 200 only {took:?} after etcd returned (want <= 5 s)"
        );
        assert!(
            cpu_outage[i] < 1.0,
            "host {h}: flanneld used {:.3} s CPU during the outage",
            cpu_outage[i]
        );
        let n = line_count(&outage_logs[i]);
        assert!(
            n <= 10,
            "host {h}: {n} log lines during the outage:\n{}",
            outage_logs[i]
        );
    }
    for i in 0..2 {
        let h = i + 1;
        let (before, after, joined) = (&metrics_before[i], &metrics_after[i], &metrics_joined[i]);
        let during = metrics_during[i]
            .as_ref()
            .unwrap_or_else(|| panic!("host {h}: /metrics not scraped during the outage"));
        during.expect("flannel_ready", 0.0, "during the outage");
        during.expect("flannel_healthy", 1.0, "during the outage");
        during.expect("flannel_leases_known", 1.0, "during the outage");
        let name = "flannel_datastore_reconnects_total";
        let (b, a) = (before.get(name), after.get(name));
        eprintln!("host {h}: {name} {b} -> {a}");
        assert!(a > b, "host {h}: {name} did not increase: {b} -> {a}");
        let when = "after the outage";
        after.expect_steady(when);
        after.expect("flannel_ready", 1.0, when);
        after.expect("flannel_leases_known", 1.0, when);
        after.expect("flannel_subnets_used", 2.0, when);
        let when = "after host 3 joined";
        joined.expect_steady(when);
        joined.expect("flannel_ready", 1.0, when);
        let name = "flannel_lease_events_total";
        let (a, j) = (after.get(name), joined.get(name));
        assert!(
            j > a,
            "host {h}: {name} did not count host 3's lease: {a} -> {j}"
        );
    }
}

/// An admin deletes flannel.1, routes, neighbours and FDB entries (vxlan)
/// and the peer route (host-gw): flanneld puts them back.
#[test]
fn admin_damage_is_repaired() {
    let mut c = Cluster::new(FLANNELD, "dmg", 2, false, Backing::Etcd, VXLAN_CONFIG);
    c.start_all();
    let nets: Vec<String> = (0..2).map(|i| lease_net(&mut c, i)).collect();
    let macs: Vec<String> = (0..2).map(|i| c.mac(i, "flannel.1")).collect();
    let pub2 = c.host_ip(1).to_string();
    for i in 0..2 {
        let j = 1 - i;
        let pub_ip = c.host_ip(j).to_string();
        wait_vxlan_peer(&c, i, &nets[j], &macs[j], &pub_ip, CONVERGE);
    }
    for i in 0..2 {
        c.add_pod(i);
    }
    c.ping_all_pairs(false);
    let repaired = |c: &Cluster| {
        vtep_state(c, 0, &nets[0], &macs[0])?;
        c.vxlan_peer_state(0, "flannel.1", &nets[1], &macs[1], &pub2)
    };

    // 1. The VTEP itself.
    c.ip(0, &["link", "del", "flannel.1"]);
    let link_del = wait_until(Duration::from_secs(2), || repaired(&c))
        .map(|((), t)| t)
        .unwrap_or_else(|e| panic!("host 1: flannel.1 not rebuilt within 2 s: {e}"));
    c.ping_all_pairs(false);

    // 2. The route to host 2's subnet.
    let dst = format!("{}/24", nets[1]);
    c.ip(0, &["route", "del", &dst]);
    let route_del = wait_until(Duration::from_secs(12), || repaired(&c))
        .map(|((), t)| t)
        .unwrap_or_else(|e| panic!("host 1: route {dst} not restored within 12 s: {e}"));

    // 3. The neighbour and FDB entries of host 2.
    c.ip(0, &["neigh", "del", &nets[1], "dev", "flannel.1"]);
    c.exec(
        0,
        &[
            "bridge",
            "fdb",
            "del",
            &macs[1],
            "dev",
            "flannel.1",
            "dst",
            &pub2,
        ],
    );
    let gone = c.neighs(0, "flannel.1") + &c.fdb(0, "flannel.1");
    assert!(
        !gone.contains(&macs[1]),
        "host 1: neighbour/FDB of host 2 not deleted: {gone}"
    );
    let neigh_fdb_del = wait_until(Duration::from_secs(12), || repaired(&c))
        .map(|((), t)| t)
        .unwrap_or_else(|e| panic!("host 1: neighbour/FDB not restored within 12 s: {e}"));
    c.ping_all_pairs(false);
    drop(c);

    // 4. host-gw: the peer route.
    let mut g = Cluster::new(FLANNELD, "dmgw", 2, false, Backing::Etcd, HOSTGW_CONFIG);
    g.start_all();
    let gnets: Vec<String> = (0..2).map(|i| lease_net(&mut g, i)).collect();
    let gdst = format!("{}/24", gnets[1]);
    let want = format!("{gdst} via {} dev eth0", g.host_ip(1));
    let route_ok = |g: &Cluster| match g.route_to(0, &gdst) {
        Some(r) if r == want => Ok(()),
        other => Err(format!("route {other:?}, want {want:?}")),
    };
    wait_until(CONVERGE, || route_ok(&g))
        .unwrap_or_else(|e| panic!("host-gw host 1: no route to host 2: {e}"));
    g.ip(0, &["route", "del", &gdst]);
    let hostgw_del = wait_until(Duration::from_secs(12), || route_ok(&g))
        .map(|((), t)| t)
        .unwrap_or_else(|e| panic!("host-gw host 1: route {gdst} not restored within 12 s: {e}"));

    eprintln!(
        "admin_damage_is_repaired: vxlan link del -> {link_del:?}, route del -> {route_del:?}, \
         neigh+fdb del -> {neigh_fdb_del:?}; host-gw route del -> {hostgw_del:?}"
    );
}

/// Leftovers of an earlier run (a compatible flannel.1 with a neighbour, an
/// FDB entry and a route for a subnet without a lease) are removed at start.
#[test]
fn stale_state_is_collected_at_start() {
    const STALE_NET: &str = "10.244.250.0";
    const STALE_MAC: &str = "0e:aa:bb:cc:dd:fa";
    const STALE_VTEP: &str = "192.168.100.77";
    let mut c = Cluster::new(FLANNELD, "stale", 2, false, Backing::Etcd, VXLAN_CONFIG);
    c.start(1, &[]);
    let net2 = lease_net(&mut c, 1);
    let mac2 = c.mac(1, "flannel.1");
    let pub2 = c.host_ip(1).to_string();

    let h1 = |args: &[&str]| c.ip(0, args);
    let local = c.host_ip(0).to_string();
    h1(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &local,
        "dev",
        "eth0",
        "nolearning",
        "dstport",
        "8472",
    ]);
    h1(&["link", "set", "flannel.1", "mtu", "1450", "up"]);
    h1(&[
        "neigh",
        "replace",
        STALE_NET,
        "lladdr",
        STALE_MAC,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    c.exec(
        0,
        &[
            "bridge",
            "fdb",
            "append",
            STALE_MAC,
            "dev",
            "flannel.1",
            "dst",
            STALE_VTEP,
        ],
    );
    h1(&[
        "route",
        "add",
        &format!("{STALE_NET}/24"),
        "via",
        STALE_NET,
        "dev",
        "flannel.1",
        "onlink",
    ]);
    let index_before = c.ifindex(0, "flannel.1");
    assert!(
        c.route_to(0, &format!("{STALE_NET}/24")).is_some()
            && c.neighs(0, "flannel.1").contains(STALE_MAC)
            && c.fdb(0, "flannel.1").contains(STALE_MAC),
        "stale state not set up"
    );

    let spawned = Instant::now();
    c.start(0, &[]);
    c.wait_env(0);
    let ready = Instant::now();
    let stale_gone = |c: &Cluster| {
        let route = c.route_to(0, &format!("{STALE_NET}/24"));
        let neigh = c
            .neighs(0, "flannel.1")
            .lines()
            .find(|l| l.contains(STALE_NET) || l.contains(STALE_MAC))
            .map(str::to_owned);
        let fdb = c
            .fdb(0, "flannel.1")
            .lines()
            .find(|l| l.contains(STALE_MAC) || l.contains(STALE_VTEP))
            .map(str::to_owned);
        match (&route, &neigh, &fdb) {
            (None, None, None) => c.vxlan_peer_state(0, "flannel.1", &net2, &mac2, &pub2),
            _ => Err(format!(
                "stale: route {route:?} neigh {neigh:?} fdb {fdb:?}"
            )),
        }
    };
    let took = wait_until(Duration::from_secs(2), || stale_gone(&c))
        .map(|((), t)| t)
        .unwrap_or_else(|e| {
            panic!("host 1: stale entries not collected within 2 s of flanneld being ready: {e}")
        });
    let reused = c.ifindex(0, "flannel.1") == index_before;
    eprintln!(
        "stale_state_is_collected_at_start: flanneld ready {:?} after spawn; stale state gone \
         {took:?} after ready ({:?} after spawn); device reused: {reused}",
        ready - spawned,
        spawned.elapsed()
    );
    c.add_pod(0);
    c.add_pod(1);
    c.ping_all_pairs(false);
}

/// SIGTERM: exit 0, health server gone, datapath kept; a restart is ready
/// again within 3 s with the same subnet.
#[test]
fn sigterm_restart_keeps_readiness_and_routes() {
    let mut c = Cluster::new(FLANNELD, "term", 2, false, Backing::Etcd, VXLAN_CONFIG);
    let flags: Vec<Vec<String>> = (0..2).map(|i| healthz_flags(&c, i).to_vec()).collect();
    for (i, f) in flags.iter().enumerate() {
        c.start(i, &strs(f));
    }
    let nets: Vec<String> = (0..2).map(|i| lease_net(&mut c, i)).collect();
    let macs: Vec<String> = (0..2).map(|i| c.mac(i, "flannel.1")).collect();
    let pub2 = c.host_ip(1).to_string();
    wait_vxlan_peer(&c, 0, &nets[1], &macs[1], &pub2, CONVERGE);
    if let Err(e) = wait_readyz(&c, 0, 200, CONVERGE) {
        panic!("before SIGTERM: {e}");
    }
    let inode = c.env_inode(0);

    let status = c
        .daemon(0)
        .terminate(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("host 1: flanneld did not exit within 10 s of SIGTERM"));
    assert!(status.success(), "host 1: flanneld exit status {status}");
    match health_get(&c, 0, "/readyz") {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("host 1: /readyz after exit: want connection refused, got {other:?}"),
    }
    c.vxlan_peer_state(0, "flannel.1", &nets[1], &macs[1], &pub2)
        .unwrap_or_else(|e| panic!("host 1: datapath not kept after SIGTERM: {e}"));
    vtep_state(&c, 0, &nets[0], &macs[0])
        .unwrap_or_else(|e| panic!("host 1: VTEP not kept after SIGTERM: {e}"));

    let restarted = Instant::now();
    c.start(0, &strs(&flags[0]));
    let took = wait_readyz(&c, 0, 200, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("after the restart: {e}"));
    let env = c.wait_env_rewritten(0, inode);
    let first = env_value(&env, "FLANNEL_SUBNET").expect("FLANNEL_SUBNET");
    assert_eq!(
        v4_subnet(first).0.to_string(),
        nets[0],
        "host 1: subnet after restart"
    );
    assert_eq!(
        c.mac(0, "flannel.1"),
        macs[0],
        "host 1: VTEP MAC after restart"
    );
    c.vxlan_peer_state(0, "flannel.1", &nets[1], &macs[1], &pub2)
        .unwrap_or_else(|e| panic!("host 1: datapath after restart: {e}"));
    eprintln!(
        "sigterm_restart_keeps_readiness_and_routes: exit {status}; /readyz 200 {took:?} after \
         the restart ({:?} total)",
        restarted.elapsed()
    );
}
