//! Several flannel networks on one host, end to end: the documentation's
//! multi-network recipe (`flanneld -subnet-file /vxlan.env
//! -etcd-prefix=/vxlan/network` beside a second flanneld with another prefix
//! and subnet file), as Go flannel's functional suite runs it (behaviour
//! reference §10.1 "multi-network", §7.1–7.3 for the rule text).
//!
//! Three netns hosts and one real etcd hold two networks: `/vxlan/network`
//! (10.11.0.0/16, vxlan) and `/hostgw/network` (10.12.0.0/16, host-gw). Every
//! host runs one flanneld per network with `--ip-masq --iptables-resync=1`
//! (forward rules are on by default) and its own subnet file and health
//! port. The test checks that
//! * both daemons write their subnet files and leases;
//! * the shared chains `FLANNEL-POSTRTG` (nat) and `FLANNEL-FWD` (filter)
//!   hold both networks' rules, each network's lines exactly Go's text in
//!   Go's order, under one shared kube-proxy mark rule and one jump each;
//! * for 30 s of one-second resyncs no daemon rewrites anything
//!   (`flannel_rule_rewrites_total` stays 0, no "recreating rules" log line)
//!   and the listings stay byte-identical, while traffic of each network
//!   crosses over its own device (pings between addresses of the hosts'
//!   subnets, `ip route get`, device packet counters);
//! * a rule deleted by hand is restored by its own daemon only (the
//!   positive control that the resync runs and the counter counts);
//! * SIGTERM of one daemon leaves the other network's rules alone, and its
//!   restart rewrites nothing of the other's.
//!
//! Needs root, iproute2, iputils-ping, iptables, containernetworking-plugins
//! and etcd-server; a missing prerequisite fails the test with its name.
//! Run as root: `cargo test -p flanneld --test multinet -- --nocapture`
//! (prints the measured counters and one host's `FLANNEL-POSTRTG`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use flannel_testutil::cluster::{
    Backing, CONVERGE, Cluster, Net, NetworkSpec, all_succeed, env_value, http_get, metric_value,
    v4_subnet, wait_until,
};
use flannel_testutil::netns::{NetNs, veth_pair};

/// The daemon under test.
const FLANNELD: &str = env!("CARGO_BIN_EXE_flanneld");

const HOSTS: usize = 3;

const VXLAN: NetworkSpec<'static> = NetworkSpec {
    name: "vxlan",
    prefix: "/vxlan/network",
    config: r#"{"Network":"10.11.0.0/16","Backend":{"Type":"vxlan"}}"#,
};
const HOSTGW: NetworkSpec<'static> = NetworkSpec {
    name: "hostgw",
    prefix: "/hostgw/network",
    config: r#"{"Network":"10.12.0.0/16","Backend":{"Type":"host-gw"}}"#,
};
const VXLAN_NET: &str = "10.11.0.0/16";
const HOSTGW_NET: &str = "10.12.0.0/16";

/// How long the rules must stay untouched under `--iptables-resync=1`.
const QUIET: Duration = Duration::from_secs(30);
/// Resync periods to watch after a stop or a restart.
const SETTLE: Duration = Duration::from_secs(3);

/// The log line of a resync that found drift (Go's text).
const RECREATING: &str = "deleting and recreating rules";
const REWRITES: &str = "flannel_rule_rewrites_total";
const FAILURES: &str = "flannel_rule_resync_failures_total";

/// The kube-proxy mark rule, shared by every network of the host.
const MARK_RULE: &str = r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#;
const POSTROUTING_JUMP: &str =
    r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#;
const FORWARD_JUMP: &str = r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#;

/// One network's masquerade rules for cluster network `n` and lease `s`,
/// exactly as Go flannel's `iptables -t nat -S` lists them (reference §7.1;
/// this iptables is ≥ 1.6.2, hence `--random-fully`), without the shared
/// mark rule.
fn go_masq(n: &str, s: &str) -> Vec<String> {
    let c = r#"-m comment --comment "flanneld masq""#;
    vec![
        format!("-A FLANNEL-POSTRTG -s {s} -d {n} {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {n} -d {s} {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG ! -s {n} -d {s} {c} -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {n} ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully"),
        format!("-A FLANNEL-POSTRTG ! -s {n} -d {n} {c} -j MASQUERADE --random-fully"),
    ]
}

/// One network's forward rules (reference §7.3), without the jump.
fn go_forward(n: &str) -> Vec<String> {
    let c = r#"-m comment --comment "flanneld forward""#;
    vec![
        format!("-A FLANNEL-FWD -s {n} {c} -j ACCEPT"),
        format!("-A FLANNEL-FWD -d {n} {c} -j ACCEPT"),
    ]
}

/// What one host's packet filter must list, networks in `order`: each
/// element is (network, own lease subnet `10.x.y.0/24`).
fn expected_rules(order: &[(&str, &str)]) -> Rules {
    let mut postrtg = vec!["-N FLANNEL-POSTRTG".to_owned(), MARK_RULE.to_owned()];
    let mut fwd = vec!["-N FLANNEL-FWD".to_owned()];
    for (n, s) in order {
        postrtg.extend(go_masq(n, s));
        fwd.extend(go_forward(n));
    }
    Rules {
        postrtg: postrtg.join("\n") + "\n",
        fwd: fwd.join("\n") + "\n",
        jumps: format!("{POSTROUTING_JUMP}\n{FORWARD_JUMP}\n"),
    }
}

/// A host's flannel rules as iptables lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rules {
    /// `iptables -t nat -S FLANNEL-POSTRTG`, verbatim.
    postrtg: String,
    /// `iptables -t filter -S FLANNEL-FWD`, verbatim.
    fwd: String,
    /// The lines of `-t nat -S POSTROUTING` and `-t filter -S FORWARD` that
    /// name a flannel chain.
    jumps: String,
}

fn listing(c: &Cluster, i: usize) -> Rules {
    let jumps = |table: &str, chain: &str| -> String {
        c.exec(i, &["iptables", "-t", table, "-S", chain])
            .lines()
            .filter(|l| l.contains("FLANNEL-"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    Rules {
        postrtg: c.exec(i, &["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]),
        fwd: c.exec(i, &["iptables", "-t", "filter", "-S", "FLANNEL-FWD"]),
        jumps: jumps("nat", "POSTROUTING") + &jumps("filter", "FORWARD"),
    }
}

/// The lines of `text` that mention `net` (one network's rules).
fn lines_of(text: &str, net: &str) -> Vec<String> {
    let prefix = &net[..net.find(".0.0/").expect("a /16 network")];
    text.lines()
        .filter(|l| l.contains(&format!(" {prefix}.")))
        .map(str::to_owned)
        .collect()
}

fn healthz_port(net: Net) -> u16 {
    10271 + net.index() as u16
}

/// The flags of every daemon: the recipe's `--ip-masq --iptables-resync=1`
/// and a health port per network.
fn flags(c: &Cluster, net: Net, i: usize) -> Vec<String> {
    vec![
        "--ip-masq".to_owned(),
        "--iptables-resync=1".to_owned(),
        format!("--healthz-ip={}", c.host_ip(i)),
        format!("--healthz-port={}", healthz_port(net)),
    ]
}

fn start(c: &mut Cluster, net: Net, i: usize) {
    let flags = flags(c, net, i);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    c.start_on(net, i, &flags);
}

/// One scrape of `/metrics` of `net`'s daemon on host `i`: (rewrites,
/// resync failures).
fn rule_counters(c: &Cluster, net: Net, i: usize) -> (f64, f64) {
    let addr = SocketAddr::new(IpAddr::V4(c.host_ip(i)), healthz_port(net));
    let body = match http_get(c.host(i), addr, "/metrics") {
        Ok((200, body)) => body,
        other => panic!(
            "host {}: GET /metrics of network {}: {other:?}",
            i + 1,
            c.prefix(net)
        ),
    };
    let get = |name: &str| {
        metric_value(&body, name).unwrap_or_else(|| {
            panic!(
                "host {}: no {name} in /metrics of network {}:\n{body}",
                i + 1,
                c.prefix(net)
            )
        })
    };
    (get(REWRITES), get(FAILURES))
}

/// How many resyncs logged drift in `net`'s log of host `i` (all runs).
fn recreated_lines(c: &Cluster, net: Net, i: usize) -> usize {
    c.log_on(net, i).matches(RECREATING).count()
}

/// Waits for every host's subnet file of `net` and checks its exact text;
/// returns the lease subnets (`10.x.y.0`).
fn check_envs(c: &mut Cluster, net: Net, network: &str, mtu: u32) -> Vec<Ipv4Addr> {
    let subnets: Vec<Ipv4Addr> = (0..HOSTS)
        .map(|i| {
            let env = c.wait_env_on(net, i);
            let first = env_value(&env, "FLANNEL_SUBNET")
                .unwrap_or_else(|| panic!("host {}: no FLANNEL_SUBNET in {env:?}", i + 1))
                .to_owned();
            assert_eq!(
                env,
                format!(
                    "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={first}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n"
                ),
                "host {}: {}",
                i + 1,
                c.subnet_file_on(net, i).display()
            );
            let (subnet, len) = v4_subnet(&first);
            assert_eq!(len, 24, "host {}: {first}", i + 1);
            assert_eq!(
                first,
                format!("{}/24", host_addr(subnet)),
                "host {}: FLANNEL_SUBNET is the subnet's first address",
                i + 1
            );
            subnet
        })
        .collect();
    let mut distinct = subnets.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), HOSTS, "subnets collide: {subnets:?}");
    subnets
}

/// `10.11.5.0` → `10.11.5.1`: the "pod" address of a lease subnet.
fn host_addr(subnet: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet) + 1)
}

/// Gives host `i` the address `FLANNEL_SUBNET` of a network on a veth pair
/// of its own (a stand-in for Go's functional test's dummy device: this
/// kernel has no dummy module).
fn add_pod_address(c: &Cluster, i: usize, dev: &str, subnet: Ipv4Addr) {
    let peer = format!("{dev}p");
    veth_pair(c.host(i), dev, c.host(i), &peer)
        .unwrap_or_else(|e| panic!("host {}: veth {dev}: {e}", i + 1));
    c.ip(
        i,
        &[
            "addr",
            "add",
            &format!("{}/24", host_addr(subnet)),
            "dev",
            dev,
        ],
    );
}

/// `ping -I src dst` from `ns` until one answer or [`CONVERGE`].
fn ping_from(ns: &NetNs, src: Ipv4Addr, dst: Ipv4Addr) -> Result<(), String> {
    let (src, dst) = (src.to_string(), dst.to_string());
    wait_until(CONVERGE, || {
        ns.exec(&["ping", "-c", "1", "-W", "1", "-q", "-I", &src, &dst])
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .map(drop)
}

/// Pings between the "pod" addresses of every pair of hosts, for each of
/// `subnets` (one list per network), in parallel; panics listing failures.
fn ping_all(c: &Cluster, subnets: &[&[Ipv4Addr]]) {
    let mut jobs = Vec::new();
    for nets in subnets {
        for i in 0..HOSTS {
            for j in (0..HOSTS).filter(|&j| j != i) {
                jobs.push((i, host_addr(nets[i]), host_addr(nets[j])));
            }
        }
    }
    all_succeed(
        "pings",
        jobs.into_iter()
            .map(|(i, src, dst)| {
                let ns = c.host(i);
                let label = format!("host {} {src} -> {dst}", i + 1);
                (label, move || ping_from(ns, src, dst))
            })
            .collect(),
    );
}

/// Transmitted packets of `dev` on host `i`.
fn tx_packets(c: &Cluster, i: usize, dev: &str) -> u64 {
    let out = c.ip(i, &["-j", "-s", "link", "show", "dev", dev]);
    let json: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("host {}: ip -j -s link show {dev}: {e}: {out}", i + 1));
    json[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("host {}: no tx packets of {dev} in {out}", i + 1))
}

/// Sends `count` pings from host `i` (`src` → `dst`, 50 ms apart) and
/// returns how many packets `flannel.1` and `eth0` transmitted meanwhile.
fn tx_during_pings(c: &Cluster, i: usize, src: Ipv4Addr, dst: Ipv4Addr, count: u32) -> (u64, u64) {
    let before = (tx_packets(c, i, "flannel.1"), tx_packets(c, i, "eth0"));
    c.exec(
        i,
        &[
            "ping",
            "-c",
            &count.to_string(),
            "-i",
            "0.05",
            "-W",
            "1",
            "-q",
            "-I",
            &src.to_string(),
            &dst.to_string(),
        ],
    );
    (
        tx_packets(c, i, "flannel.1") - before.0,
        tx_packets(c, i, "eth0") - before.1,
    )
}

/// Asserts every daemon's rule counters are zero and no log line tells of
/// a rewrite, except for the daemons in `rewrote` (network, host, rewrites
/// expected); returns the counters for the report.
fn assert_quiet(
    c: &Cluster,
    nets: &[Net],
    rewrote: &[(Net, usize, usize)],
    when: &str,
) -> Vec<String> {
    let mut report = Vec::new();
    for &net in nets {
        for i in 0..HOSTS {
            let want = rewrote
                .iter()
                .find(|&&(n, h, _)| n == net && h == i)
                .map_or(0, |&(_, _, k)| k);
            let (rewrites, failures) = rule_counters(c, net, i);
            let logged = recreated_lines(c, net, i);
            report.push(format!(
                "host {} {}: {REWRITES} {rewrites}, {FAILURES} {failures}, \"{RECREATING}\" lines {logged}",
                i + 1,
                c.prefix(net)
            ));
            assert_eq!(
                (rewrites, failures, logged),
                (want as f64, 0.0, want),
                "host {} network {} {when}: (rewrites, resync failures, recreating log lines)",
                i + 1,
                c.prefix(net)
            );
        }
    }
    report
}

#[test]
fn two_networks_per_host_share_the_chains_quietly() {
    let t0 = Instant::now();
    let mut c = Cluster::with_network(FLANNELD, "mn", HOSTS, false, Backing::Etcd, VXLAN);
    let vx = Net::FIRST;
    let hg = c.add_network(HOSTGW);
    let nets = [vx, hg];

    // vxlan's daemons first, host-gw's once vxlan's rules are in place (each
    // daemon installs its rules before writing its subnet file): a fixed
    // order of the two networks' rules in the shared chains.
    for i in 0..HOSTS {
        start(&mut c, vx, i);
    }
    let vx_subnets = check_envs(&mut c, vx, VXLAN_NET, 1450);
    for i in 0..HOSTS {
        start(&mut c, hg, i);
    }
    let hg_subnets = check_envs(&mut c, hg, HOSTGW_NET, 1500);

    // Each network's leases under its own prefix, as Go writes them.
    for (net, subnets, backend) in [(vx, &vx_subnets, "vxlan"), (hg, &hg_subnets, "host-gw")] {
        let leases = c.etcd_leases_on(net);
        assert_eq!(leases.len(), HOSTS, "{}: {leases:?}", c.prefix(net));
        for (i, subnet) in subnets.iter().enumerate() {
            let key = format!("{}/subnets/{subnet}-24", c.prefix(net));
            let (value, _) = leases
                .get(&key)
                .unwrap_or_else(|| panic!("no lease {key} in {leases:?}"));
            assert!(
                value.starts_with(&format!(
                    r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"{backend}""#,
                    c.host_ip(i)
                )),
                "host {}: lease {key} = {value}",
                i + 1
            );
        }
    }

    // Datapaths of both networks converge.
    let macs: Vec<String> = (0..HOSTS).map(|i| c.mac(i, "flannel.1")).collect();
    for i in 0..HOSTS {
        for j in (0..HOSTS).filter(|&j| j != i) {
            let (net, pub_ip) = (vx_subnets[j].to_string(), c.host_ip(j).to_string());
            wait_until(CONVERGE, || {
                c.vxlan_peer_state(i, "flannel.1", &net, &macs[j], &pub_ip)
            })
            .unwrap_or_else(|e| panic!("host {}: vxlan state for host {}: {e}", i + 1, j + 1));
            let dst = format!("{}/24", hg_subnets[j]);
            let want = format!("{dst} via {} dev eth0", c.host_ip(j));
            wait_until(CONVERGE, || match c.route_to(i, &dst) {
                Some(r) if r == want => Ok(()),
                other => Err(format!("route {other:?}, want {want:?}")),
            })
            .unwrap_or_else(|e| panic!("host {}: host-gw route to host {}: {e}", i + 1, j + 1));
        }
    }

    // Both networks' rules, each exactly Go's, in start order.
    let expected: Vec<Rules> = (0..HOSTS)
        .map(|i| {
            let (vs, hs) = (
                format!("{}/24", vx_subnets[i]),
                format!("{}/24", hg_subnets[i]),
            );
            expected_rules(&[(VXLAN_NET, &vs), (HOSTGW_NET, &hs)])
        })
        .collect();
    let before: Vec<Rules> = (0..HOSTS).map(|i| listing(&c, i)).collect();
    for i in 0..HOSTS {
        assert_eq!(before[i], expected[i], "host {}: flannel rules", i + 1);
    }
    let t_up = t0.elapsed();

    // ---- the quiet window: 30 one-second resyncs per daemon, traffic of
    // both networks meanwhile ----
    let quiet_start = Instant::now();
    for i in 0..HOSTS {
        add_pod_address(&c, i, "mnvx", vx_subnets[i]);
        add_pod_address(&c, i, "mnhg", hg_subnets[i]);
    }
    ping_all(&c, &[&vx_subnets, &hg_subnets]);
    for i in 0..HOSTS {
        for j in (0..HOSTS).filter(|&j| j != i) {
            let dst = host_addr(vx_subnets[j]).to_string();
            let got = c.ip(i, &["route", "get", &dst]);
            let want = format!("{dst} via {} dev flannel.1 ", vx_subnets[j]);
            assert!(
                got.starts_with(&want),
                "host {}: ip route get {dst}: {got:?}, want {want:?}…",
                i + 1
            );
            let dst = host_addr(hg_subnets[j]).to_string();
            let got = c.ip(i, &["route", "get", &dst]);
            let want = format!("{dst} via {} dev eth0 ", c.host_ip(j));
            assert!(
                got.starts_with(&want),
                "host {}: ip route get {dst}: {got:?}, want {want:?}…",
                i + 1
            );
        }
    }
    // The packets themselves: vxlan's leave through flannel.1, host-gw's
    // through eth0 and not flannel.1. (eth0 also carries the etcd traffic
    // and the vxlan encapsulation, so it is bounded from below only.)
    const PINGS: u32 = 20;
    let (vx_tun, vx_eth) = tx_during_pings(
        &c,
        0,
        host_addr(vx_subnets[0]),
        host_addr(vx_subnets[1]),
        PINGS,
    );
    let (hg_tun, hg_eth) = tx_during_pings(
        &c,
        0,
        host_addr(hg_subnets[0]),
        host_addr(hg_subnets[1]),
        PINGS,
    );
    eprintln!(
        "host 1, {PINGS} pings: vxlan pod -> flannel.1 {vx_tun} / eth0 {vx_eth} packets; \
         host-gw pod -> flannel.1 {hg_tun} / eth0 {hg_eth} packets"
    );
    assert!(
        vx_tun >= u64::from(PINGS),
        "vxlan pings over flannel.1: {vx_tun}"
    );
    assert!(
        vx_eth >= u64::from(PINGS),
        "vxlan encapsulation over eth0: {vx_eth}"
    );
    assert!(
        hg_eth >= u64::from(PINGS),
        "host-gw pings over eth0: {hg_eth}"
    );
    assert!(
        hg_tun < u64::from(PINGS) / 4,
        "host-gw pings must not cross flannel.1 ({hg_tun} packets)"
    );
    let traffic_took = quiet_start.elapsed();
    if let Some(rest) = QUIET.checked_sub(traffic_took) {
        thread::sleep(rest);
    }
    let quiet_report = assert_quiet(&c, &nets, &[], "after the quiet window");
    for (i, was) in before.iter().enumerate() {
        assert_eq!(
            &listing(&c, i),
            was,
            "host {}: flannel rules changed during the quiet window",
            i + 1
        );
    }
    let t_quiet = quiet_start.elapsed();
    eprintln!(
        "after {t_quiet:?} of --iptables-resync=1 (traffic in the first {traffic_took:?}):\n{}",
        quiet_report.join("\n")
    );
    eprintln!(
        "host 1: iptables -t nat -S FLANNEL-POSTRTG\n{}",
        before[0].postrtg
    );

    // ---- positive control on host 3: a vxlan rule deleted by hand is
    // restored by the vxlan daemon alone ----
    let h = 2;
    let victim = go_masq(VXLAN_NET, &format!("{}/24", vx_subnets[h]))[0].clone();
    let number = before[h]
        .postrtg
        .lines()
        .filter(|l| l.starts_with("-A "))
        .position(|l| l == victim)
        .expect("host 3 lists the vxlan rule")
        + 1;
    c.exec(
        h,
        &[
            "iptables",
            "-t",
            "nat",
            "-D",
            "FLANNEL-POSTRTG",
            &number.to_string(),
        ],
    );
    assert!(
        !listing(&c, h).postrtg.contains(&victim),
        "host 3: `{victim}` still listed after deleting rule {number}"
    );
    let (_, took) = wait_until(CONVERGE, || match rule_counters(&c, vx, h) {
        (1.0, 0.0) => Ok(()),
        other => Err(format!("vxlan (rewrites, failures) = {other:?}")),
    })
    .unwrap_or_else(|e| panic!("host 3: the deleted vxlan rule: {e}"));
    let restored = listing(&c, h);
    let hs = format!("{}/24", hg_subnets[h]);
    let vs = format!("{}/24", vx_subnets[h]);
    // vxlan's rules are deleted and appended again as a block (Go's
    // bootstrap), now after host-gw's; host-gw's lines are untouched.
    assert_eq!(
        restored.postrtg,
        expected_rules(&[(HOSTGW_NET, &hs), (VXLAN_NET, &vs)]).postrtg,
        "host 3: FLANNEL-POSTRTG after the vxlan daemon restored its rule"
    );
    assert_eq!(restored.fwd, before[h].fwd, "host 3: FLANNEL-FWD");
    assert_eq!(restored.jumps, before[h].jumps, "host 3: jumps");
    assert_eq!(
        rule_counters(&c, hg, h),
        (0.0, 0.0),
        "host 3: host-gw counters"
    );
    assert_eq!(recreated_lines(&c, vx, h), 1, "host 3: vxlan log");
    assert_eq!(recreated_lines(&c, hg, h), 0, "host 3: host-gw log");
    eprintln!(
        "host 3: the vxlan daemon restored its deleted rule after {took:?}; host-gw's rewrites stay 0"
    );

    // ---- SIGTERM of host 1's vxlan daemon leaves the host-gw rules (and
    // its own: no teardown) alone ----
    let h = 0;
    let old_inode = c.env_inode_on(vx, h);
    let status = c
        .daemon_on(vx, h)
        .terminate(Duration::from_secs(10))
        .expect("host 1: the vxlan flanneld exits within 10 s of SIGTERM");
    assert!(
        status.success(),
        "host 1: vxlan flanneld exit status {status}"
    );
    thread::sleep(SETTLE);
    assert_eq!(
        listing(&c, h),
        before[h],
        "host 1: rules after the vxlan daemon stopped"
    );
    assert_eq!(
        rule_counters(&c, hg, h),
        (0.0, 0.0),
        "host 1: host-gw counters with the vxlan daemon stopped"
    );
    // Zero-downtime: the vxlan datapath keeps working without its daemon.
    ping_from(
        c.host(h),
        host_addr(vx_subnets[h]),
        host_addr(vx_subnets[1]),
    )
    .expect("host 1: vxlan ping with the daemon stopped");

    // ---- its restart is quiet: it re-appends its own rules and touches
    // none of host-gw's ----
    start(&mut c, vx, h);
    let env = c.wait_env_rewritten_on(vx, h, old_inode);
    assert_eq!(
        env_value(&env, "FLANNEL_SUBNET"),
        Some(format!("{}/24", host_addr(vx_subnets[h])).as_str()),
        "host 1: the restarted vxlan daemon keeps its subnet"
    );
    thread::sleep(SETTLE);
    let after = listing(&c, h);
    let (hs, vs) = (
        format!("{}/24", hg_subnets[h]),
        format!("{}/24", vx_subnets[h]),
    );
    assert_eq!(
        after,
        expected_rules(&[(HOSTGW_NET, &hs), (VXLAN_NET, &vs)]),
        "host 1: rules after the vxlan daemon's restart (its block now last)"
    );
    assert_eq!(
        lines_of(&after.postrtg, HOSTGW_NET),
        lines_of(&before[h].postrtg, HOSTGW_NET),
        "host 1: host-gw's masquerade rules"
    );
    assert_eq!(
        lines_of(&after.fwd, HOSTGW_NET),
        lines_of(&before[h].fwd, HOSTGW_NET),
        "host 1: host-gw's forward rules"
    );
    let restart_report = assert_quiet(
        &c,
        &nets,
        &[(vx, 2, 1)],
        "after the restart of host 1's vxlan daemon",
    );
    ping_from(
        c.host(h),
        host_addr(vx_subnets[h]),
        host_addr(vx_subnets[2]),
    )
    .expect("host 1: vxlan ping after the restart");
    eprintln!(
        "after the restart of host 1's vxlan daemon:\n{}\nhost 1: iptables -t nat -S FLANNEL-POSTRTG\n{}",
        restart_report.join("\n"),
        after.postrtg
    );
    eprintln!(
        "two_networks_per_host_share_the_chains_quietly: up in {t_up:?}, total {:?}",
        t0.elapsed()
    );
}
