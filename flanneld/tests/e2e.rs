//! End-to-end tests: real `flanneld` processes on test "hosts" (network
//! namespaces on one bridge), a real etcd (or the embedded local store), pods
//! attached through our `flannel` CNI plugin (delegating to Debian's
//! `bridge` + `host-local`), and the kernel state and data path checked the
//! way an operator would (`ip route`, `ip neigh`, `bridge fdb`, ping, TCP).
//!
//! Needs root, iproute2, iputils-ping, iptables, containernetworking-plugins
//! and etcd-server; a missing prerequisite fails the test with its name.
//! Behaviour reference: §2.2 (lease JSON), §4.1 (subnet.env), §5.1 (vxlan),
//! §5.2 (host-gw), §8.3–8.4 (signals, zero-downtime restart).
//!
//! Each test builds its own uniquely named namespaces, so they run in
//! parallel. Run as root: `cargo test -p flanneld --test e2e`; failures print
//! every host's flanneld log and kernel state (`FLANNEL_E2E_VERBOSE=1` prints
//! them for passing tests too).

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use flannel_testutil::cluster::{
    Backing, CONVERGE, Cluster, PREFIX, env_value, ping, tcp_transfer, v4_subnet, v6_subnet,
    wait_until,
};
use flannel_testutil::netns::{NetNs, veth_pair};

/// The daemon under test.
const FLANNELD: &str = env!("CARGO_BIN_EXE_flanneld");

const VXLAN_CONFIG: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;

/// Per host: the lease subnet (`10.244.X.0`) from its subnet.env, checking
/// the file's exact text for a v4-only network with `mtu`.
fn check_v4_envs(c: &mut Cluster, mtu: u32) -> Vec<String> {
    (0..c.len())
        .map(|i| {
            let env = c.wait_env(i);
            let first = env_value(&env, "FLANNEL_SUBNET")
                .unwrap_or_else(|| panic!("host {}: no FLANNEL_SUBNET in {env:?}", i + 1))
                .to_owned();
            assert_eq!(
                env,
                format!(
                    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={first}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n"
                ),
                "host {}: subnet.env",
                i + 1
            );
            let (net, len) = v4_subnet(&first);
            assert_eq!(len, 24, "host {}: subnet length", i + 1);
            assert_eq!(first, format!("{}/24", Ipv4Next(net)), "host {}", i + 1);
            net.to_string()
        })
        .collect()
}

/// `10.244.5.0` → `10.244.5.1` (display helper).
struct Ipv4Next(std::net::Ipv4Addr);

impl std::fmt::Display for Ipv4Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::net::Ipv4Addr::from(u32::from(self.0) + 1))
    }
}

fn assert_distinct(subnets: &[String]) {
    let mut sorted = subnets.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), subnets.len(), "subnets collide: {subnets:?}");
}

/// Waits until host `i` has the vxlan route, neighbour and FDB entry for
/// host `j` (subnet `net`, VTEP `mac`, public IP `pub_ip`) on `dev`.
fn wait_vxlan_peer(c: &Cluster, i: usize, dev: &str, net: &str, mac: &str, pub_ip: &str) {
    let res = wait_until(CONVERGE, || c.vxlan_peer_state(i, dev, net, mac, pub_ip));
    if let Err(e) = res {
        panic!("host {}: vxlan state for {net}: {e}", i + 1);
    }
}

#[test]
fn vxlan_three_hosts_etcd() {
    let t0 = Instant::now();
    let mut c = Cluster::new(FLANNELD, "vx3", 3, false, Backing::Etcd, VXLAN_CONFIG);
    c.start_all();
    let nets = check_v4_envs(&mut c, 1450);
    assert_distinct(&nets);
    let macs: Vec<String> = (0..3).map(|i| c.mac(i, "flannel.1")).collect();

    // Leases, byte for byte as Go writes them, each with a 24 h etcd lease.
    let leases = c.etcd_leases();
    assert_eq!(leases.len(), 3, "leases: {leases:?}");
    for i in 0..3 {
        let key = format!("{PREFIX}/subnets/{}-24", nets[i]);
        let (value, lease) = leases
            .get(&key)
            .unwrap_or_else(|| panic!("no lease {key} in {leases:?}"));
        assert_eq!(
            value,
            &format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                c.host_ip(i),
                macs[i]
            ),
            "host {} lease value",
            i + 1
        );
        assert_ne!(*lease, 0, "host {}: lease key has no etcd lease", i + 1);
        assert_eq!(c.etcd_granted_ttl(*lease), 86400, "host {} TTL", i + 1);
    }

    // flannel.1 as Go creates it.
    for (i, net) in nets.iter().enumerate() {
        let link = c.ip(i, &["-d", "link", "show", "flannel.1"]);
        for want in [
            "vxlan id 1 ".to_owned(),
            format!("local {} dev eth0", c.host_ip(i)),
            "dstport 8472".to_owned(),
            "nolearning".to_owned(),
            "mtu 1450".to_owned(),
        ] {
            assert!(
                link.contains(&want),
                "host {}: {want:?} not in {link}",
                i + 1
            );
        }
        let addrs = c.ip(i, &["-4", "-o", "addr", "show", "dev", "flannel.1"]);
        assert!(
            addrs.contains(&format!("inet {net}/32")),
            "host {}: flannel.1 addresses {addrs}",
            i + 1
        );
    }
    for i in 0..3 {
        for j in (0..3).filter(|&j| j != i) {
            let pub_ip = c.host_ip(j).to_string();
            wait_vxlan_peer(&c, i, "flannel.1", &nets[j], &macs[j], &pub_ip);
        }
    }
    let t_up = t0.elapsed();

    for i in 0..3 {
        c.add_pod(i);
    }
    c.ping_all_pairs(false);
    tcp_transfer(&c.pod(2).ns, IpAddr::V4(c.pod(2).v4), &c.pod(0).ns, 4 << 20);
    tcp_transfer(&c.pod(0).ns, IpAddr::V4(c.pod(0).v4), &c.pod(1).ns, 4 << 20);

    // An admin removes node 3: its flanneld dies, its lease is deleted.
    c.daemon(2).kill9();
    c.etcd_delete(&format!("{PREFIX}/subnets/{}-24", nets[2]));
    let gone = format!("{}/24", nets[2]);
    let neigh_prefix = format!("{} ", nets[2]);
    for i in 0..2 {
        let res = wait_until(CONVERGE, || {
            let route = c.route_to(i, &gone);
            let neigh = c
                .neighs(i, "flannel.1")
                .lines()
                .find(|l| l.starts_with(&neigh_prefix))
                .map(str::to_owned);
            let fdb = c
                .fdb(i, "flannel.1")
                .lines()
                .find(|l| l.contains(&macs[2]))
                .map(str::to_owned);
            match (&route, &neigh, &fdb) {
                (None, None, None) => Ok(()),
                _ => Err(format!("left: route {route:?} neigh {neigh:?} fdb {fdb:?}")),
            }
        });
        match res {
            Ok(((), took)) => eprintln!("host {}: host 3 removed after {took:?}", i + 1),
            Err(e) => panic!("host {}: host 3's state not removed: {e}", i + 1),
        }
        // The remaining peer is untouched.
        let other = 1 - i;
        let pub_ip = c.host_ip(other).to_string();
        wait_vxlan_peer(&c, i, "flannel.1", &nets[other], &macs[other], &pub_ip);
    }
    ping(&c.pod(0).ns, IpAddr::V4(c.pod(1).v4), CONVERGE).expect("pod 1 -> pod 2");
    eprintln!(
        "vxlan_three_hosts_etcd: up in {t_up:?}, total {:?}",
        t0.elapsed()
    );
}

#[test]
fn hostgw_three_hosts_etcd() {
    let t0 = Instant::now();
    let mut c = Cluster::new(
        FLANNELD,
        "hg3",
        3,
        false,
        Backing::Etcd,
        r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#,
    );
    c.start_all();
    let nets = check_v4_envs(&mut c, 1500);
    assert_distinct(&nets);
    let leases = c.etcd_leases();
    assert_eq!(leases.len(), 3, "leases: {leases:?}");
    for (i, net) in nets.iter().enumerate() {
        let key = format!("{PREFIX}/subnets/{net}-24");
        let (value, _) = leases
            .get(&key)
            .unwrap_or_else(|| panic!("no lease {key} in {leases:?}"));
        assert_eq!(
            value,
            &format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
                c.host_ip(i)
            ),
            "host {} lease value",
            i + 1
        );
    }
    let wait_route = |c: &Cluster, i: usize, j: usize| {
        let dst = format!("{}/24", nets[j]);
        let want = format!("{dst} via {} dev eth0", c.host_ip(j));
        wait_until(CONVERGE, || match c.route_to(i, &dst) {
            Some(r) if r == want => Ok(()),
            other => Err(format!("route {other:?}, want {want:?}")),
        })
        .unwrap_or_else(|e| panic!("host {}: route to host {}: {e}", i + 1, j + 1))
        .1
    };
    for i in 0..3 {
        for j in (0..3).filter(|&j| j != i) {
            wait_route(&c, i, j);
        }
        assert!(
            c.host(i).ip(&["link", "show", "flannel.1"]).is_err(),
            "host {}: host-gw must not create flannel.1",
            i + 1
        );
    }
    for i in 0..3 {
        c.add_pod(i);
    }
    c.ping_all_pairs(false);

    // A route deleted by hand comes back (Go re-checks every 10 s).
    c.ip(0, &["route", "del", &format!("{}/24", nets[1])]);
    let took = wait_route(&c, 0, 1);
    eprintln!("host 1: deleted route restored after {took:?}");
    ping(&c.pod(0).ns, IpAddr::V4(c.pod(1).v4), CONVERGE).expect("pod 1 -> pod 2");
    eprintln!("hostgw_three_hosts_etcd: total {:?}", t0.elapsed());
}

#[test]
fn vxlan_dual_stack() {
    let t0 = Instant::now();
    let mut c = Cluster::new(
        FLANNELD,
        "vx6",
        2,
        true,
        Backing::Etcd,
        r#"{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:244::/56", "Backend": {"Type": "vxlan"}}"#,
    );
    c.start_all();
    let mut nets = Vec::new();
    for i in 0..2 {
        let env = c.wait_env(i);
        let s4 = env_value(&env, "FLANNEL_SUBNET")
            .unwrap_or_else(|| panic!("host {}: no FLANNEL_SUBNET in {env:?}", i + 1))
            .to_owned();
        let s6 = env_value(&env, "FLANNEL_IPV6_SUBNET")
            .unwrap_or_else(|| panic!("host {}: no FLANNEL_IPV6_SUBNET in {env:?}", i + 1))
            .to_owned();
        assert_eq!(
            env,
            format!(
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={s4}\nFLANNEL_IPV6_NETWORK=fd00:244::/56\n\
                 FLANNEL_IPV6_SUBNET={s6}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
            ),
            "host {}: subnet.env",
            i + 1
        );
        let (n4, _) = v4_subnet(&s4);
        let (n6, l6) = v6_subnet(&s6);
        assert_eq!(l6, 64, "host {}: IPv6 subnet length", i + 1);
        assert!(
            n6.segments()[..3] == [0xfd00, 0x244, 0],
            "host {}: {n6} outside fd00:244::/56",
            i + 1
        );
        nets.push((n4.to_string(), n6.to_string()));
    }
    assert_ne!(nets[0], nets[1], "subnets collide");
    let macs: Vec<(String, String)> = (0..2)
        .map(|i| (c.mac(i, "flannel.1"), c.mac(i, "flannel-v6.1")))
        .collect();
    let leases = c.etcd_leases();
    assert_eq!(leases.len(), 2, "leases: {leases:?}");
    for i in 0..2 {
        let key = format!("{PREFIX}/subnets/{}-24&{}-64", nets[i].0, nets[i].1);
        let (value, _) = leases
            .get(&key)
            .unwrap_or_else(|| panic!("no lease {key} in {leases:?}"));
        let v6 = c.topo.host(i).ipv6.expect("host IPv6");
        assert_eq!(
            value,
            &format!(
                r#"{{"PublicIP":"{}","PublicIPv6":"{v6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                c.host_ip(i),
                macs[i].0,
                macs[i].1
            ),
            "host {} lease value",
            i + 1
        );
        let link = c.ip(i, &["-d", "link", "show", "flannel-v6.1"]);
        assert!(
            link.contains("vxlan id 1 ") && link.contains(&format!("local {v6} dev eth0")),
            "host {}: flannel-v6.1: {link}",
            i + 1
        );
    }
    for (i, net) in nets.iter().enumerate() {
        c.add_pod(i);
        let pod = c.pod(i);
        let v6 = pod.v6.unwrap_or_else(|| {
            panic!(
                "host {}: the CNI plugin gave the pod no IPv6 address",
                i + 1
            )
        });
        let (n6, _) = v6_subnet(&format!("{v6}/64"));
        assert_eq!(n6.to_string(), net.1, "host {}: pod IPv6 {v6}", i + 1);
    }
    c.ping_all_pairs(true);
    eprintln!("vxlan_dual_stack: total {:?}", t0.elapsed());
}

/// VNI, port and GBP reach flannel.<VNI>; traffic flows over it.
fn vxlan_vni_port_gbp() {
    let mut c = Cluster::new(
        FLANNELD,
        "vxopt",
        2,
        false,
        Backing::Etcd,
        r#"{"Network": "10.244.0.0/16", "Backend": {"Type":"vxlan","VNI":7,"Port":4789,"GBP":true}}"#,
    );
    c.start_all();
    let nets = check_v4_envs(&mut c, 1450);
    for i in 0..2 {
        let link = c.ip(i, &["-d", "link", "show", "flannel.7"]);
        for want in ["vxlan id 7 ", "dstport 4789", "gbp"] {
            assert!(
                link.contains(want),
                "host {}: {want:?} not in {link}",
                i + 1
            );
        }
        assert!(
            c.host(i).ip(&["link", "show", "flannel.1"]).is_err(),
            "host {}: flannel.1 must not exist with VNI 7",
            i + 1
        );
    }
    let leases = c.etcd_leases();
    for i in 0..2 {
        let mac = c.mac(i, "flannel.7");
        let key = format!("{PREFIX}/subnets/{}-24", nets[i]);
        assert_eq!(
            leases.get(&key).map(|(v, _)| v.as_str()),
            Some(
                format!(
                    r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":7,"VtepMAC":"{mac}"}}}}"#,
                    c.host_ip(i)
                )
                .as_str()
            ),
            "host {} lease",
            i + 1
        );
        let j = 1 - i;
        let peer_mac = c.mac(j, "flannel.7");
        let pub_ip = c.host_ip(j).to_string();
        wait_vxlan_peer(&c, i, "flannel.7", &nets[j], &peer_mac, &pub_ip);
    }
    for i in 0..2 {
        c.add_pod(i);
    }
    c.ping_all_pairs(false);
}

/// DirectRouting: peers on our L2 segment get a plain route via eth0; a
/// peer whose public IP is behind a gateway (host 3, public IP
/// 192.168.200.3 reached via 192.168.100.3) keeps the vxlan route.
fn vxlan_direct_routing() {
    let mut c = Cluster::new(
        FLANNELD,
        "vxdr",
        3,
        false,
        Backing::Etcd,
        r#"{"Network": "10.244.0.0/16", "Backend": {"Type":"vxlan","DirectRouting":true}}"#,
    );
    c.ip(2, &["addr", "add", "192.168.200.3/24", "dev", "eth0"]);
    for i in 0..2 {
        c.ip(
            i,
            &[
                "route",
                "add",
                "192.168.200.0/24",
                "via",
                "192.168.100.3",
                "dev",
                "eth0",
            ],
        );
    }
    c.start(0, &[]);
    c.start(1, &[]);
    c.start(2, &["--public-ip=192.168.200.3"]);
    let nets = check_v4_envs(&mut c, 1450);
    let pub_ips = ["192.168.100.1", "192.168.100.2", "192.168.200.3"];
    let leases = c.etcd_leases();
    for i in 0..3 {
        let key = format!("{PREFIX}/subnets/{}-24", nets[i]);
        let value = &leases
            .get(&key)
            .unwrap_or_else(|| panic!("no lease {key}"))
            .0;
        assert!(
            value.starts_with(&format!(r#"{{"PublicIP":"{}","#, pub_ips[i])),
            "host {} lease {value}",
            i + 1
        );
    }
    let link = c.ip(2, &["-d", "link", "show", "flannel.1"]);
    assert!(
        link.contains("local 192.168.200.3 dev eth0"),
        "host 3: flannel.1 must use the public IP as local: {link}"
    );
    let direct = |c: &Cluster, i: usize, j: usize| {
        let dst = format!("{}/24", nets[j]);
        let want = format!("{dst} via {} dev eth0", pub_ips[j]);
        wait_until(CONVERGE, || match c.route_to(i, &dst) {
            Some(r) if r == want => Ok(()),
            other => Err(format!("route {other:?}, want {want:?}")),
        })
        .unwrap_or_else(|e| panic!("host {}: direct route to host {}: {e}", i + 1, j + 1));
    };
    direct(&c, 0, 1);
    direct(&c, 1, 0);
    direct(&c, 2, 0);
    direct(&c, 2, 1);
    let mac3 = c.mac(2, "flannel.1");
    for i in 0..2 {
        wait_vxlan_peer(&c, i, "flannel.1", &nets[2], &mac3, pub_ips[2]);
        // No encapsulation state for the direct peer.
        let j = 1 - i;
        let neigh = c.neighs(i, "flannel.1");
        assert!(
            !neigh
                .lines()
                .any(|l| l.starts_with(&format!("{} ", nets[j]))),
            "host {}: neighbour for direct peer: {neigh}",
            i + 1
        );
    }
    for i in 0..3 {
        c.add_pod(i);
    }
    c.ping_all_pairs(false);
}

#[test]
fn vxlan_options_reach_the_kernel() {
    let t0 = Instant::now();
    thread::scope(|s| {
        let a = s.spawn(vxlan_vni_port_gbp);
        let b = s.spawn(vxlan_direct_routing);
        let (a, b) = (a.join(), b.join());
        if let Err(p) = a {
            std::panic::resume_unwind(p);
        }
        if let Err(p) = b {
            std::panic::resume_unwind(p);
        }
    });
    eprintln!("vxlan_options_reach_the_kernel: total {:?}", t0.elapsed());
}

#[test]
fn interop_with_a_go_style_host() {
    let t0 = Instant::now();
    let mut c = Cluster::new(FLANNELD, "gox", 3, false, Backing::Etcd, VXLAN_CONFIG);
    c.start(0, &[]);
    c.start(1, &[]);
    let nets: Vec<String> = (0..2)
        .map(|i| {
            let env = c.wait_env(i);
            let (n, _) = v4_subnet(env_value(&env, "FLANNEL_SUBNET").expect("FLANNEL_SUBNET"));
            n.to_string()
        })
        .collect();

    // Host 3's lease, exactly as Go flanneld writes it.
    const GO_MAC: &str = "0e:2a:c8:00:00:03";
    let go_key = format!("{PREFIX}/subnets/10.244.200.0-24");
    let go_value = format!(
        r#"{{"PublicIP":"192.168.100.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{GO_MAC}"}}}}"#
    );
    // Host 3's kernel state, as Go flanneld would build it.
    let h3 = |args: &[&str]| c.ip(2, args);
    h3(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        "192.168.100.3",
        "dev",
        "eth0",
        "nolearning",
        "dstport",
        "8472",
    ]);
    h3(&["link", "set", "flannel.1", "address", GO_MAC, "mtu", "1450"]);
    h3(&["addr", "add", "10.244.200.0/32", "dev", "flannel.1"]);
    h3(&["link", "set", "flannel.1", "up"]);
    let leases = c.etcd_leases();
    for (i, net) in nets.iter().enumerate() {
        let key = format!("{PREFIX}/subnets/{net}-24");
        let (value, _) = leases.get(&key).unwrap_or_else(|| panic!("no lease {key}"));
        let v: serde_json::Value = serde_json::from_str(value).expect("lease JSON");
        let mac = v["BackendData"]["VtepMAC"].as_str().expect("VtepMAC");
        let pub_ip = v["PublicIP"].as_str().expect("PublicIP");
        assert_eq!(pub_ip, c.host_ip(i).to_string());
        h3(&[
            "neigh",
            "replace",
            net,
            "dev",
            "flannel.1",
            "lladdr",
            mac,
            "nud",
            "permanent",
        ]);
        c.exec(
            2,
            &[
                "bridge",
                "fdb",
                "replace",
                mac,
                "dev",
                "flannel.1",
                "self",
                "dst",
                pub_ip,
                "permanent",
            ],
        );
        h3(&[
            "route",
            "replace",
            &format!("{net}/24"),
            "via",
            net,
            "dev",
            "flannel.1",
            "onlink",
        ]);
    }
    // Host 3's pod, wired by hand to a cni0 bridge.
    let pod3 = NetNs::new("gox-p3").expect("pod namespace");
    h3(&["link", "add", "cni0", "type", "bridge"]);
    h3(&["addr", "add", "10.244.200.1/24", "dev", "cni0"]);
    h3(&["link", "set", "cni0", "up"]);
    veth_pair(c.host(2), "vethp3", &pod3, "eth0").expect("pod veth");
    h3(&["link", "set", "vethp3", "master", "cni0", "mtu", "1450"]);
    pod3.ip(&["link", "set", "eth0", "mtu", "1450"])
        .expect("pod mtu");
    pod3.ip(&["addr", "add", "10.244.200.2/24", "dev", "eth0"])
        .expect("pod address");
    pod3.ip(&["route", "add", "default", "via", "10.244.200.1"])
        .expect("pod route");

    // Host 3 "starts": its lease appears in etcd with a 24 h etcd lease.
    c.etcd_put_with_lease(&go_key, &go_value, 86400);
    for i in 0..2 {
        wait_vxlan_peer(&c, i, "flannel.1", "10.244.200.0", GO_MAC, "192.168.100.3");
    }
    for i in 0..2 {
        c.add_pod(i);
    }
    let pod3_ip: IpAddr = "10.244.200.2".parse().expect("ip");
    for i in 0..2 {
        let pod = c.pod(i);
        ping(&pod3, IpAddr::V4(pod.v4), CONVERGE)
            .unwrap_or_else(|e| panic!("go pod -> pod {}: {e}", i + 1));
        ping(&pod.ns, pod3_ip, CONVERGE).unwrap_or_else(|e| panic!("pod {} -> go pod: {e}", i + 1));
    }
    c.ping_all_pairs(false);
    tcp_transfer(&pod3, pod3_ip, &c.pod(0).ns, 1 << 20);
    // Our daemons leave the Go host's lease alone.
    let leases = c.etcd_leases();
    assert_eq!(leases.get(&go_key).map(|(v, _)| v), Some(&go_value));
    drop(pod3);
    eprintln!("interop_with_a_go_style_host: total {:?}", t0.elapsed());
}

/// Host `i`'s flannel.1 state: link line (index, MAC), routes, neighbours,
/// FDB entries.
fn datapath_snapshot(c: &Cluster, i: usize) -> String {
    format!(
        "link: {}\nroutes:\n{}\nneigh:\n{}\nfdb:\n{}",
        c.ip(i, &["-o", "link", "show", "flannel.1"])
            .split_whitespace()
            .filter(|w| !w.contains("state") && *w != "UP" && *w != "UNKNOWN")
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        c.routes(i, false),
        c.neighs(i, "flannel.1"),
        c.fdb(i, "flannel.1")
    )
}

#[test]
fn restart_keeps_datapath_and_identity() {
    let t0 = Instant::now();
    let mut c = Cluster::new(FLANNELD, "rst", 2, false, Backing::Local, VXLAN_CONFIG);
    c.start_all();
    let nets = check_v4_envs(&mut c, 1450);
    let env_before = std::fs::read_to_string(c.subnet_file(0)).expect("subnet.env");
    let mac_before = c.mac(0, "flannel.1");
    let index_before = c.ifindex(0, "flannel.1");
    for i in 0..2 {
        let j = 1 - i;
        let mac = c.mac(j, "flannel.1");
        let pub_ip = c.host_ip(j).to_string();
        wait_vxlan_peer(&c, i, "flannel.1", &nets[j], &mac, &pub_ip);
    }
    c.add_pod(0);
    c.add_pod(1);
    c.ping_all_pairs(false);

    // 200 pings at 50 ms while host 1's flanneld is killed and restarted.
    let dst = c.pod(1).v4.to_string();
    let pinger = Command::new("ip")
        .args(["netns", "exec", c.pod(0).ns.name()])
        .args(["ping", "-i", "0.05", "-c", "200", "-W", "1", "-q", &dst])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ping");
    thread::sleep(Duration::from_millis(1500));
    let inode_before = c.env_inode(0);
    c.daemon(0).kill9();
    thread::sleep(Duration::from_secs(1));
    c.start(0, &[]);
    c.wait_env_rewritten(0, inode_before);
    let out = pinger.wait_with_output().expect("ping");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        summary.contains("200 packets transmitted, 200 received"),
        "packets lost across the restart:\n{summary}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env_after = std::fs::read_to_string(c.subnet_file(0)).expect("subnet.env");
    assert_eq!(
        env_value(&env_after, "FLANNEL_SUBNET"),
        env_value(&env_before, "FLANNEL_SUBNET"),
        "FLANNEL_SUBNET changed across the restart"
    );
    assert_eq!(
        env_after, env_before,
        "subnet.env changed across the restart"
    );
    assert_eq!(c.mac(0, "flannel.1"), mac_before, "flannel.1 MAC changed");
    assert_eq!(
        c.ifindex(0, "flannel.1"),
        index_before,
        "flannel.1 was recreated by the restart"
    );

    // SIGTERM: exit 0, datapath and lease left in place.
    let before = datapath_snapshot(&c, 1);
    let status = c
        .daemon(1)
        .terminate(Duration::from_secs(10))
        .expect("flanneld did not exit within 10 s of SIGTERM");
    assert!(
        status.success(),
        "flanneld exited with {status} after SIGTERM"
    );
    c.daemons[1] = None;
    thread::sleep(Duration::from_millis(300));
    let after = datapath_snapshot(&c, 1);
    assert_eq!(after, before, "host 2's datapath changed after SIGTERM");
    let table = std::fs::read_to_string(c.local_store().join("leases.json")).expect("leases.json");
    let table: serde_json::Value = serde_json::from_str(&table).expect("leases.json JSON");
    let key = format!("{}-24", nets[1]);
    let row = table["leases"]
        .as_array()
        .expect("leases array")
        .iter()
        .find(|r| r["key"] == key.as_str())
        .unwrap_or_else(|| panic!("host 2's lease {key} is gone after SIGTERM: {table}"));
    assert!(
        row["value"]
            .as_str()
            .is_some_and(|v| v.contains(r#""PublicIP":"192.168.100.2""#)),
        "lease row {row}"
    );
    // The peer keeps its route to host 2 and traffic still flows.
    thread::sleep(Duration::from_millis(500));
    let mac2 = c.mac(1, "flannel.1");
    wait_vxlan_peer(&c, 0, "flannel.1", &nets[1], &mac2, "192.168.100.2");
    ping(&c.pod(0).ns, c.pod(1).v4.into(), Duration::from_secs(3))
        .expect("pod 1 -> pod 2 after host 2's flanneld stopped");
    eprintln!(
        "restart_keeps_datapath_and_identity: total {:?}",
        t0.elapsed()
    );
}

/// Our lease is deleted while flanneld is paused and another node takes its
/// subnet: on resuming, flanneld re-acquires another subnet and the traffic
/// rules, the blackhole route and subnet.env follow the move at run time
/// (host-gw, whose routes do not depend on our own subnet).
#[test]
fn a_moved_lease_moves_rules_blackhole_and_subnet_env() {
    let mut c = Cluster::new(
        FLANNELD,
        "mv",
        2,
        false,
        Backing::Etcd,
        r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#,
    );
    let flags = ["--ip-masq", "--ip-blackhole-route", "--iptables-resync=1"];
    c.start(0, &flags);
    c.start(1, &[]);
    let env = c.wait_env(0);
    c.wait_env(1);
    let old = env_value(&env, "FLANNEL_SUBNET")
        .expect("FLANNEL_SUBNET")
        .to_string();
    let (old_net, _) = v4_subnet(&old);
    let old_cidr = format!("{old_net}/24");
    let masq = |c: &Cluster| c.exec(0, &["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]);
    wait_until(CONVERGE, || {
        let m = masq(&c);
        m.contains(&format!("-s {old_cidr} -d 10.244.0.0/16"))
            .then_some(())
            .ok_or(m)
    })
    .expect("masquerade rules for the first subnet");
    let inode = c.env_inode(0);

    // Paused, its lease deleted and the subnet taken by a "Go node".
    let pid = c.daemon(0).pid().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill(1)")
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    let key = format!("{PREFIX}/subnets/{old_net}-24");
    c.etcd_delete(&key);
    c.etcd_put_with_lease(
        &key,
        r#"{"PublicIP":"192.168.100.9","PublicIPv6":null,"BackendType":"host-gw"}"#,
        3600,
    );
    signal("-CONT");

    let env = c.wait_env_rewritten(0, inode);
    let new = env_value(&env, "FLANNEL_SUBNET")
        .expect("FLANNEL_SUBNET")
        .to_string();
    assert_ne!(new, old, "a new subnet after the move");
    let (new_net, _) = v4_subnet(&new);
    let new_cidr = format!("{new_net}/24");
    assert!(
        c.log(0).contains(&format!(
            "our lease moved from {old_net}-24 to {new_net}-24"
        )),
        "{}",
        c.log_tail(0, 30)
    );
    // Go's rule text for the new subnet, none left for the old one.
    let m = wait_until(CONVERGE, || {
        let m = masq(&c);
        (m.contains(&format!("-s {new_cidr} -d 10.244.0.0/16")) && !m.contains(&old_cidr))
            .then_some(m.clone())
            .ok_or(m)
    })
    .unwrap_or_else(|m| panic!("rules did not follow the lease: {m}"))
    .0;
    assert_eq!(
        m.matches("-A FLANNEL-POSTRTG").count(),
        6,
        "one network's six rules: {m}"
    );
    // The blackhole route moved too.
    let routes = c.ip(0, &["route", "show", "type", "blackhole"]);
    assert!(
        routes.contains(&new_cidr) && !routes.contains(&old_cidr),
        "{routes}"
    );
    // The peer routes to the new subnet.
    let want = format!("{new_cidr} via {} dev eth0", c.host_ip(0));
    wait_until(CONVERGE, || match c.route_to(1, &new_cidr) {
        Some(r) if r == want => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .expect("host 2 routes to host 1's new subnet");
    // The node that took the old subnet is a peer now.
    let want = format!("{old_cidr} via 192.168.100.9 dev eth0");
    wait_until(CONVERGE, || match c.route_to(0, &old_cidr) {
        Some(r) if r == want => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .expect("host 1 routes its old subnet to the node that took it");
}
