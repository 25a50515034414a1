//! Datastore safety end to end: hostile lease keys under
//! `<prefix>/subnets/` must never cut a node off. Real `flanneld`
//! processes on netns hosts, a real etcd on the hosts' underlay
//! (`192.168.100.0/24`, etcd at `192.168.100.254`), pods through our CNI
//! plugin.
//!
//! A key covering the underlay (`192.168.100.0-24`), one outside `Network`
//! and a `/28` inside the underlay (around etcd's own address) are written
//! by "an operator": no host programs anything for them (no route,
//! neighbour or FDB entry), the kernel's connected routes stay, pods keep
//! reaching each other and etcd stays reachable; each key is warned about
//! once (not on every 10 s resync), and deleting the keys changes nothing.
//!
//! Needs root, iproute2, iputils-ping, iptables, containernetworking-plugins
//! and etcd-server; a missing prerequisite fails the test with its name.
//! Run as root: `cargo test -p flanneld --test safety`.

use std::net::{IpAddr, SocketAddr};
use std::thread;
use std::time::Duration;

use flannel_testutil::cluster::{
    Backing, CONVERGE, Cluster, ETCD_IP, PREFIX, env_value, http_get, metric_value, ping,
    v4_subnet, wait_until,
};

/// The daemon under test.
const FLANNELD: &str = env!("CARGO_BIN_EXE_flanneld");

/// Where each host serves `/metrics` (on its own underlay address).
const HEALTHZ_PORT: u16 = 18471;

/// A hostile lease: its key (under `<prefix>/subnets/`), the subnet as
/// `ip route` prints it, and the value.
struct Hostile {
    key: &'static str,
    cidr: &'static str,
    what: &'static str,
}

/// Keys whose subnets lie outside `Network` (10.244.0.0/16).
const HOSTILE: [Hostile; 3] = [
    Hostile {
        key: "192.168.100.0-24",
        cidr: "192.168.100.0/24",
        what: "the underlay itself",
    },
    Hostile {
        key: "10.99.0.0-24",
        cidr: "10.99.0.0/24",
        what: "outside Network",
    },
    Hostile {
        key: "192.168.100.240-28",
        cidr: "192.168.100.240/28",
        what: "a /28 inside the underlay, holding etcd's address",
    },
];

/// A vxlan lease value with a real-looking VTEP (an underlay address no host
/// has, a MAC no host has).
fn vxlan_value(n: usize) -> String {
    format!(
        r#"{{"PublicIP":"192.168.100.{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:66:66:66:66:{:02x}"}}}}"#,
        200 + n,
        n
    )
}

/// A host-gw lease value whose gateway is an underlay address no host has.
fn hostgw_value(n: usize) -> String {
    format!(
        r#"{{"PublicIP":"192.168.100.{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
        200 + n
    )
}

/// Host `i`'s routes the kernel made itself (`proto kernel`: connected and
/// local routes), sorted.
fn kernel_routes(c: &Cluster, i: usize) -> Vec<String> {
    let mut v: Vec<String> = c
        .ip(
            i,
            &["-4", "route", "show", "table", "all", "proto", "kernel"],
        )
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    v.sort();
    v
}

/// Host `i`'s `/metrics` text.
fn metrics(c: &Cluster, i: usize) -> String {
    let addr = SocketAddr::new(IpAddr::V4(c.host_ip(i)), HEALTHZ_PORT);
    match http_get(c.host(i), addr, "/metrics") {
        Ok((200, body)) => body,
        other => panic!("host {}: GET /metrics: {other:?}", i + 1),
    }
}

/// Everything a host must still have with hostile keys around: the
/// kernel's routes as before, nothing for the hostile subnets, etcd and
/// every other host reachable, pods reaching each other.
fn assert_intact(c: &Cluster, before: &[Vec<String>], vxlan: bool, when: &str) {
    for (i, kernel) in before.iter().enumerate() {
        assert_eq!(
            &kernel_routes(c, i),
            kernel,
            "host {}: the kernel's own routes changed {when}",
            i + 1
        );
        let all = c.ip(i, &["-4", "route", "show", "table", "all"]);
        for h in &HOSTILE {
            assert!(
                !all.lines()
                    .any(|l| l.starts_with(&format!("{} ", h.cidr)) && !l.contains("proto kernel")),
                "host {}: a route for {} ({}) {when}:\n{all}",
                i + 1,
                h.key,
                h.what
            );
        }
        // The underlay's connected route is what `ip route get` uses.
        let via = c.ip(i, &["-4", "route", "get", &ETCD_IP.to_string()]);
        assert!(
            via.contains("dev eth0") && !via.contains("via"),
            "host {}: etcd no longer on-link {when}: {via}",
            i + 1
        );
        if vxlan {
            let neighs = c.neighs(i, "flannel.1");
            let fdb = c.fdb(i, "flannel.1");
            assert!(
                !neighs.contains("192.168.100.") && !neighs.contains("10.99."),
                "host {}: neighbour for a hostile lease {when}: {neighs}",
                i + 1
            );
            assert!(
                !fdb.contains("02:66:66:66:66"),
                "host {}: FDB entry for a hostile lease {when}: {fdb}",
                i + 1
            );
        }
        ping(c.host(i), IpAddr::V4(ETCD_IP), CONVERGE)
            .unwrap_or_else(|e| panic!("host {}: etcd unreachable {when}: {e}", i + 1));
        for j in (0..before.len()).filter(|&j| j != i) {
            ping(c.host(i), IpAddr::V4(c.host_ip(j)), CONVERGE).unwrap_or_else(|e| {
                panic!("host {}: host {} unreachable {when}: {e}", i + 1, j + 1)
            });
        }
    }
    c.ping_all_pairs(false);
}

fn hostile_keys_leave_every_host_intact(name: &str, backend: &str) {
    let vxlan = backend == "vxlan";
    let config = format!(r#"{{"Network": "10.244.0.0/16", "Backend": {{"Type": "{backend}"}}}}"#);
    let mut c = Cluster::new(FLANNELD, name, 2, false, Backing::Etcd, &config);
    for i in 0..2 {
        let flags = [
            format!("--healthz-port={HEALTHZ_PORT}"),
            format!("--healthz-ip={}", c.host_ip(i)),
        ];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        c.start(i, &flags);
    }
    let mut nets = Vec::new();
    for i in 0..2 {
        let env = c.wait_env(i);
        let first = env_value(&env, "FLANNEL_SUBNET").expect("FLANNEL_SUBNET");
        nets.push(v4_subnet(first).0.to_string());
    }
    for i in 0..2 {
        c.add_pod(i);
    }
    c.ping_all_pairs(false);
    let before: Vec<Vec<String>> = (0..2).map(|i| kernel_routes(&c, i)).collect();
    for (i, k) in before.iter().enumerate() {
        assert!(
            k.iter().any(|r| r.starts_with("192.168.100.0/24 dev eth0")),
            "host {}: no connected underlay route to begin with: {k:?}",
            i + 1
        );
    }

    // The hostile keys, with etcd leases as a node would write them.
    for (n, h) in HOSTILE.iter().enumerate() {
        let value = if vxlan {
            vxlan_value(n)
        } else {
            hostgw_value(n)
        };
        c.etcd_put_with_lease(&format!("{PREFIX}/subnets/{}", h.key), &value, 3600);
    }
    // A lease inside Network whose backend data cannot be decoded.
    let bad_key = "10.244.250.0-24";
    if vxlan {
        c.etcd_put_with_lease(
            &format!("{PREFIX}/subnets/{bad_key}"),
            r#"{"PublicIP":"192.168.100.210","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"zz"}}"#,
            3600,
        );
    }
    // Every host has seen every key (a warning names each).
    for i in 0..2 {
        wait_until(CONVERGE, || {
            let log = c.log(i);
            match HOSTILE.iter().find(|h| !log.contains(h.key)) {
                None => Ok(()),
                Some(h) => Err(format!("no warning about {}", h.key)),
            }
        })
        .unwrap_or_else(|e| panic!("host {}: {e}\n{}", i + 1, c.log_tail(i, 30)));
    }
    // Long enough for at least two periodic resyncs (every 10 s).
    thread::sleep(Duration::from_secs(22));
    assert_intact(&c, &before, vxlan, "with hostile keys");
    for i in 0..2 {
        let log = c.log(i);
        let mut keys: Vec<&str> = HOSTILE.iter().map(|h| h.key).collect();
        if vxlan {
            keys.push(bad_key);
        }
        for key in keys {
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(key) && (l.contains("WARN") || l.contains("ERROR")))
                .collect();
            assert_eq!(
                lines.len(),
                1,
                "host {}: warned {} times about {key}, want once:\n{}",
                i + 1,
                lines.len(),
                lines.join("\n")
            );
        }
        for l in log.lines() {
            assert!(
                !l.contains("Some(") && !l.contains("SystemTime {"),
                "host {}: Rust debug formatting in the log: {l}",
                i + 1
            );
            assert!(
                l.matches("error decoding subnet lease JSON").count() <= 1,
                "host {}: a repeated error prefix: {l}",
                i + 1
            );
        }
        // One real peer (the other host) and the three hostile keys: the
        // lease with undecodable backend data is not known.
        let m = metrics(&c, i);
        assert_eq!(
            metric_value(&m, "flannel_leases_known"),
            Some(4.0),
            "host {}: flannel_leases_known\n{m}",
            i + 1
        );
    }
    // Our own peers are still programmed.
    for i in 0..2 {
        let j = 1 - i;
        let dst = format!("{}/24", nets[j]);
        assert!(
            c.route_to(i, &dst).is_some(),
            "host {}: lost the route to host {}",
            i + 1,
            j + 1
        );
    }

    // Deleting the keys changes nothing.
    let routes_before: Vec<String> = (0..2)
        .map(|i| c.ip(i, &["-4", "route", "show", "table", "all"]))
        .collect();
    for h in &HOSTILE {
        c.etcd_delete(&format!("{PREFIX}/subnets/{}", h.key));
    }
    if vxlan {
        c.etcd_delete(&format!("{PREFIX}/subnets/{bad_key}"));
    }
    thread::sleep(Duration::from_secs(12));
    assert_intact(&c, &before, vxlan, "after the hostile keys were deleted");
    for (i, was) in routes_before.iter().enumerate() {
        assert_eq!(
            &c.ip(i, &["-4", "route", "show", "table", "all"]),
            was,
            "host {}: routes changed when the hostile keys were deleted",
            i + 1
        );
    }
}

/// Two leases behind one VTEP (host 2's lease value copied under another
/// key, as a node that moved leaves its old lease behind): removing the
/// copy must keep host 1's FDB entry for host 2, which the real lease still
/// needs.
#[test]
fn vxlan_a_shared_fdb_entry_survives_the_removal_of_one_lease() {
    let mut c = Cluster::new(
        FLANNELD,
        "sffdb",
        2,
        false,
        Backing::Etcd,
        r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#,
    );
    c.start_all();
    let env = c.wait_env(1);
    let first = env_value(&env, "FLANNEL_SUBNET").expect("FLANNEL_SUBNET");
    let net2 = v4_subnet(first).0.to_string();
    c.wait_env(0);
    for i in 0..2 {
        c.add_pod(i);
    }
    c.ping_all_pairs(false);
    let key2 = format!("{PREFIX}/subnets/{net2}-24");
    let (value2, _) = c.etcd_leases().remove(&key2).expect("host 2's lease");
    let mac2 = c.mac(1, "flannel.1");
    let pub2 = c.host_ip(1).to_string();
    wait_until(CONVERGE, || {
        c.vxlan_peer_state(0, "flannel.1", &net2, &mac2, &pub2)
    })
    .unwrap_or_else(|e| panic!("host 1: state for host 2: {e}"));

    let copy = "10.244.251.0";
    let copy_key = format!("{PREFIX}/subnets/{copy}-24");
    c.etcd_put_with_lease(&copy_key, &value2, 3600);
    wait_until(CONVERGE, || {
        c.vxlan_peer_state(0, "flannel.1", copy, &mac2, &pub2)
    })
    .unwrap_or_else(|e| panic!("host 1: state for the copied lease: {e}"));
    let fdb_entries = c.fdb(0, "flannel.1").matches(&mac2).count();
    assert_eq!(fdb_entries, 1, "one FDB entry for the shared VTEP");

    c.etcd_delete(&copy_key);
    wait_until(CONVERGE, || match c.route_to(0, &format!("{copy}/24")) {
        None => Ok(()),
        Some(r) => Err(format!("route {r} still there")),
    })
    .unwrap_or_else(|e| panic!("host 1: the copy's route: {e}"));
    // Past a periodic resync too.
    thread::sleep(Duration::from_secs(11));
    c.vxlan_peer_state(0, "flannel.1", &net2, &mac2, &pub2)
        .unwrap_or_else(|e| panic!("host 1 lost host 2's entries with the copy: {e}"));
    c.ping_all_pairs(false);
}

#[test]
fn vxlan_hostile_lease_keys_cut_nobody_off() {
    hostile_keys_leave_every_host_intact("sfvx", "vxlan");
}

#[test]
fn hostgw_hostile_lease_keys_cut_nobody_off() {
    hostile_keys_leave_every_host_intact("sfhg", "host-gw");
}
