//! End to end in Kubernetes mode: three network-namespace hosts, each
//! running `flanneld --kube-subnet-mgr --kubeconfig-file=...` against the
//! fake Kubernetes API server (`flannel_testutil::kube`, in the switch
//! namespace; no kube-apiserver can be installed here) whose Nodes have
//! preset podCIDRs, as a node IPAM controller assigns them.
//!
//! Checked: the annotations each node writes, byte for byte as Go flannel
//! writes them (§3.4 with §5's BackendData), the NetworkUnavailable
//! condition, pods attached through our CNI plugin pinging across (IPv4 and
//! IPv6), a deleted Node's routes disappearing, a Node with garbage
//! annotations skipped without dropping the others, an API server restart
//! losing no peer, a flanneld restart keeping the VTEP MAC (from the
//! backend-data annotation after the device is gone), `/readyz` and the kube
//! metrics, and every API request allowed by the ClusterRole of
//! `dist/kube-flannel.yml` (the fake API server enforces it on flanneld's
//! user, and the recorded requests are checked against it).
//!
//! Prints (does not assert) the time from a Node added to its routes on the
//! other hosts, and the annotations a node wrote.
//!
//! Needs root, iproute2, iputils-ping, iptables and
//! containernetworking-plugins; a missing one fails with its name.

#![cfg(feature = "kube")]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use flannel_testutil::cluster::{
    Backing, CONVERGE, Cluster, env_value, http_get, metric_value, wait_until,
};
use flannel_testutil::kube::{FLANNEL_RBAC, FakeApiServer, node_json};
use serde_json::Value;

const FLANNELD: &str = env!("CARGO_BIN_EXE_flanneld");
const P: &str = "flannel.alpha.coreos.com/";

const VXLAN_DUAL: &str = r#"{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:244::/56", "Backend": {"Type": "vxlan"}}"#;
const HOSTGW_DUAL: &str = r#"{"Network": "10.245.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:245::/56", "Backend": {"Type": "host-gw"}}"#;

/// A node's annotations under flannel's prefix, without the prefix.
fn flannel_annotations(api: &FakeApiServer, node: &str) -> BTreeMap<String, String> {
    let n = api
        .node(node)
        .unwrap_or_else(|| panic!("Node {node} is gone"));
    n.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(P)?.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn wanted(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// The annotation patch a node's flanneld sent (its first PATCH of the
/// node's status carrying annotations).
fn annotation_patch(api: &FakeApiServer, node: &str) -> String {
    let path = format!("/api/v1/nodes/{node}/status");
    api.requests()
        .into_iter()
        .find(|r| r.method == "PATCH" && r.path == path && r.body.contains("annotations"))
        .map(|r| {
            assert_eq!(
                r.content_type.as_deref(),
                Some("application/strategic-merge-patch+json"),
                "{node}: patch content type"
            );
            r.body
        })
        .unwrap_or_else(|| panic!("no annotation patch for {node}"))
}

fn assert_network_available(api: &FakeApiServer, node: &str) {
    let ok = wait_until(CONVERGE, || {
        let n = api.node(node).ok_or_else(|| "node gone".to_string())?;
        let conds = n
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        conds
            .iter()
            .find(|c| c["type"] == "NetworkUnavailable")
            .filter(|c| {
                c["status"] == "False"
                    && c["reason"] == "FlannelIsUp"
                    && c["message"] == "Flannel is running on this node"
            })
            .map(|_| ())
            .ok_or_else(|| format!("conditions {conds:?}"))
    });
    if let Err(e) = ok {
        panic!("{node}: NetworkUnavailable not cleared: {e}");
    }
}

/// Every recorded API request is allowed by `rules` (resource, verb).
fn assert_rbac(api: &FakeApiServer, rules: &[(String, Vec<String>)]) {
    let reqs = api.requests();
    let mut used = std::collections::BTreeSet::new();
    for r in reqs.iter().filter(|r| !r.verb.is_empty()) {
        let allowed = rules
            .iter()
            .any(|(res, verbs)| *res == r.resource && verbs.contains(&r.verb));
        assert!(
            allowed,
            "{} {}?{} ({} {}) is not allowed by the ClusterRole {rules:?}",
            r.method, r.path, r.query, r.verb, r.resource
        );
        assert!(
            r.status < 400 || r.status == 404 || r.status == 410,
            "{} {} -> {}",
            r.method,
            r.path,
            r.status
        );
        used.insert(format!("{} {}", r.verb, r.resource));
    }
    eprintln!("API calls made by the flanneld processes: {used:?}");
}

/// The `flannel` ClusterRole of `dist/kube-flannel.yml` (resource → verbs;
/// `flannel-testutil/tests/manifest.rs` checks the manifest grants exactly
/// these). The cluster's API server also enforces them on flanneld's user.
fn cluster_role_rules() -> Vec<(String, Vec<String>)> {
    FLANNEL_RBAC
        .iter()
        .map(|(res, verbs)| {
            (
                (*res).to_owned(),
                verbs.iter().map(|v| (*v).to_owned()).collect(),
            )
        })
        .collect()
}

/// Waits until every host in `hosts` has (`present`) or lacks a route to
/// `dst`; returns the time taken.
fn wait_routes(c: &Cluster, hosts: &[usize], dst: &str, present: bool) -> Duration {
    let t = Instant::now();
    let deadline = t + CONVERGE;
    loop {
        let missing: Vec<usize> = hosts
            .iter()
            .copied()
            .filter(|&i| c.route_to(i, dst).is_some() != present)
            .collect();
        if missing.is_empty() {
            return t.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "route to {dst} still {} on hosts {missing:?} after {CONVERGE:?}",
            if present { "missing" } else { "present" }
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn pod_subnets(c: &mut Cluster, i: usize) -> (String, String) {
    let env = c.wait_env(i);
    let s4 = env_value(&env, "FLANNEL_SUBNET")
        .unwrap_or_else(|| panic!("{env}"))
        .to_owned();
    let s6 = env_value(&env, "FLANNEL_IPV6_SUBNET")
        .unwrap_or_else(|| panic!("{env}"))
        .to_owned();
    (s4, s6)
}

#[test]
fn kube_vxlan_dual_stack_three_hosts() {
    let t0 = Instant::now();
    let mut c = Cluster::new(FLANNELD, "kvx", 3, true, Backing::Kube, VXLAN_DUAL);
    c.start_all();
    for i in 0..3 {
        // The lease is the Node's podCIDRs.
        let (s4, s6) = pod_subnets(&mut c, i);
        assert_eq!(s4, format!("10.244.{}.1/24", i + 1), "host {}", i + 1);
        assert_eq!(s6, format!("fd00:244:0:{}::1/64", i + 1), "host {}", i + 1);
    }
    let macs: Vec<(String, String)> = (0..3)
        .map(|i| (c.mac(i, "flannel.1"), c.mac(i, "flannel-v6.1")))
        .collect();
    for (i, (mac4, mac6)) in macs.iter().enumerate() {
        let node = Cluster::node_name(i);
        let v6 = c.topo.host(i).ipv6.expect("host IPv6");
        let bd = format!(r#"{{"VNI":1,"VtepMAC":"{mac4}"}}"#);
        let bd6 = format!(r#"{{"VNI":1,"VtepMAC":"{mac6}"}}"#);
        assert_eq!(
            flannel_annotations(c.kube_api(), &node),
            wanted(&[
                ("backend-data", bd.clone()),
                ("backend-type", "vxlan".into()),
                ("backend-v6-data", bd6.clone()),
                ("kube-subnet-manager", "true".into()),
                ("public-ip", c.host_ip(i).to_string()),
                ("public-ipv6", v6.to_string()),
            ]),
            "{node}: annotations"
        );
        // The patch itself, as Go's two-way strategic merge patch encodes it.
        let esc = |s: &str| s.replace('"', "\\\"");
        assert_eq!(
            annotation_patch(c.kube_api(), &node),
            format!(
                r#"{{"metadata":{{"annotations":{{"{P}backend-data":"{}","{P}backend-type":"vxlan","{P}backend-v6-data":"{}","{P}kube-subnet-manager":"true","{P}public-ip":"{}","{P}public-ipv6":"{v6}"}}}}}}"#,
                esc(&bd),
                esc(&bd6),
                c.host_ip(i)
            ),
            "{node}: patch bytes"
        );
        assert_network_available(c.kube_api(), &node);
    }
    eprintln!(
        "annotations written by h1 (PATCH /api/v1/nodes/h1/status): {}",
        annotation_patch(c.kube_api(), "h1")
    );
    for i in 0..3 {
        for j in (0..3).filter(|&j| j != i) {
            let net = format!("10.244.{}.0", j + 1);
            let res = wait_until(CONVERGE, || {
                c.vxlan_peer_state(i, "flannel.1", &net, &macs[j].0, &c.host_ip(j).to_string())
            });
            if let Err(e) = res {
                panic!("host {}: vxlan state for h{}: {e}", i + 1, j + 1);
            }
        }
    }
    for i in 0..3 {
        c.add_pod(i);
    }
    c.ping_all_pairs(true);

    // A Node whose annotations are garbage is skipped; nothing else moves.
    c.kube_api().apply_node(node_json(
        "garbage",
        &["10.244.66.0/24"],
        &[
            (&format!("{P}kube-subnet-manager"), "true"),
            (&format!("{P}backend-type"), "vxlan"),
            (&format!("{P}backend-data"), "{not json"),
            (&format!("{P}public-ip"), "not-an-ip"),
        ],
        None,
    ));
    let logged = wait_until(CONVERGE, || {
        (0..3)
            .all(|i| {
                c.log(i)
                    .contains(r#"Error turning node "garbage" to lease"#)
            })
            .then_some(())
            .ok_or_else(|| "not logged yet".to_string())
    });
    assert!(
        logged.is_ok(),
        "the garbage node was not reported on every host"
    );
    for i in 0..3 {
        assert!(
            c.route_to(i, "10.244.66.0/24").is_none(),
            "host {}: garbage route",
            i + 1
        );
        for j in (0..3).filter(|&j| j != i) {
            c.vxlan_peer_state(
                i,
                "flannel.1",
                &format!("10.244.{}.0", j + 1),
                &macs[j].0,
                &c.host_ip(j).to_string(),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "host {}: peer h{} lost after the garbage node: {e}",
                    i + 1,
                    j + 1
                )
            });
        }
    }

    // A Node joins (a Go flanneld elsewhere wrote its annotations): its
    // routes reach every host; deleted, they disappear.
    let extra_bd = r#"{"VNI":1,"VtepMAC":"0a:58:0a:f4:32:01"}"#;
    let extra_bd6 = r#"{"VNI":1,"VtepMAC":"0a:58:0a:f4:32:02"}"#;
    let t = Instant::now();
    c.kube_api().apply_node(node_json(
        "extra",
        &["10.244.50.0/24", "fd00:244:0:50::/64"],
        &[
            (&format!("{P}kube-subnet-manager"), "true"),
            (&format!("{P}backend-type"), "vxlan"),
            (&format!("{P}backend-data"), extra_bd),
            (&format!("{P}backend-v6-data"), extra_bd6),
            (&format!("{P}public-ip"), "192.168.100.50"),
            (&format!("{P}public-ipv6"), "fd00:100::50"),
        ],
        None,
    ));
    wait_routes(&c, &[0, 1, 2], "10.244.50.0/24", true);
    let took = t.elapsed();
    wait_routes(&c, &[0, 1, 2], "fd00:244:0:50::/64", true);
    eprintln!("MEASURE vxlan: Node added -> its IPv4 route on all 3 hosts in {took:?}");
    let t = Instant::now();
    c.kube_api().delete_node("extra");
    wait_routes(&c, &[0, 1, 2], "10.244.50.0/24", false);
    wait_routes(&c, &[0, 1, 2], "fd00:244:0:50::/64", false);
    eprintln!(
        "MEASURE vxlan: Node deleted -> its routes gone on all 3 hosts in {:?}",
        t.elapsed()
    );
    for i in 0..3 {
        let fdb = c.fdb(i, "flannel.1");
        assert!(
            !fdb.contains("0a:58:0a:f4:32:01"),
            "host {}: FDB kept the deleted node: {fdb}",
            i + 1
        );
    }

    // flanneld restarts after its device was deleted: flannel.1 comes back
    // with the MAC from the backend-data annotation, and nothing is patched.
    c.daemon(0).terminate(Duration::from_secs(5));
    c.ip(0, &["link", "del", "flannel.1"]);
    c.kube_api().clear_requests();
    let old = c.env_inode(0);
    c.start(0, &[]);
    c.wait_env_rewritten(0, old);
    assert_eq!(
        c.mac(0, "flannel.1"),
        macs[0].0,
        "h1: VTEP MAC after a restart"
    );
    assert!(
        !c.kube_api()
            .requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.body.contains("annotations")),
        "the restarted flanneld rewrote annotations that were already right"
    );
    for j in 1..3 {
        let res = wait_until(CONVERGE, || {
            c.vxlan_peer_state(
                j,
                "flannel.1",
                "10.244.1.0",
                &macs[0].0,
                &c.host_ip(0).to_string(),
            )
        });
        res.unwrap_or_else(|e| panic!("host {}: peer h1 after its restart: {e}", j + 1));
    }
    c.ping_all_pairs(false);
    assert_rbac(c.kube_api(), &cluster_role_rules());
    eprintln!(
        "kube_vxlan_dual_stack_three_hosts: total {:?}",
        t0.elapsed()
    );
}

#[test]
fn kube_hostgw_dual_stack_api_restart() {
    let t0 = Instant::now();
    let mut c = Cluster::new(FLANNELD, "khg", 3, true, Backing::Kube, HOSTGW_DUAL);
    let health: Vec<SocketAddr> = (0..3)
        .map(|i| SocketAddr::new(IpAddr::V4(c.host_ip(i)), 18081))
        .collect();
    for i in 0..3 {
        let flags = [
            format!("--healthz-ip={}", c.host_ip(i)),
            "--healthz-port=18081".to_string(),
        ];
        c.start(i, &[flags[0].as_str(), flags[1].as_str()]);
    }
    for i in 0..3 {
        let (s4, s6) = pod_subnets(&mut c, i);
        assert_eq!(s4, format!("10.245.{}.1/24", i + 1));
        assert_eq!(s6, format!("fd00:245:0:{}::1/64", i + 1));
    }
    for i in 0..3 {
        let node = Cluster::node_name(i);
        let v6 = c.topo.host(i).ipv6.expect("host IPv6");
        // host-gw has no backend data: Go writes `null` for both families.
        assert_eq!(
            annotation_patch(c.kube_api(), &node),
            format!(
                r#"{{"metadata":{{"annotations":{{"{P}backend-data":"null","{P}backend-type":"host-gw","{P}backend-v6-data":"null","{P}kube-subnet-manager":"true","{P}public-ip":"{}","{P}public-ipv6":"{v6}"}}}}}}"#,
                c.host_ip(i)
            ),
            "{node}: patch bytes"
        );
        assert_network_available(c.kube_api(), &node);
    }
    eprintln!(
        "annotations written by h1 (host-gw): {}",
        annotation_patch(c.kube_api(), "h1")
    );
    for (i, addr) in health.iter().enumerate() {
        for j in (0..3).filter(|&j| j != i) {
            let want = format!("10.245.{}.0/24 via {} dev eth0", j + 1, c.host_ip(j));
            let res = wait_until(CONVERGE, || {
                let r = c
                    .route_to(i, &format!("10.245.{}.0/24", j + 1))
                    .unwrap_or_default();
                r.starts_with(&want).then_some(()).ok_or(r)
            });
            res.unwrap_or_else(|e| {
                panic!("host {}: route to h{}: {e:?} (want {want})", i + 1, j + 1)
            });
            let v6 = c.topo.host(j).ipv6.expect("IPv6");
            let r6 = c
                .route_to(i, &format!("fd00:245:0:{}::/64", j + 1))
                .unwrap_or_default();
            assert!(
                r6.contains(&format!("via {v6} dev eth0")),
                "host {}: {r6}",
                i + 1
            );
        }
        // Ready, with the kube side in the metrics.
        let ready = wait_until(CONVERGE, || {
            match http_get(c.host(i), health[i], "/readyz") {
                Ok((200, body)) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        });
        assert_eq!(
            ready.map(|r| r.0).as_deref(),
            Ok("flanneld is ready"),
            "host {}",
            i + 1
        );
        let (code, metrics) = http_get(c.host(i), *addr, "/metrics").expect("metrics");
        assert_eq!(code, 200);
        for (name, want) in [
            ("flannel_kube_annotations_written", 1.0),
            ("flannel_kube_network_unavailable_cleared", 1.0),
            ("flannel_kube_watch_in_sync", 1.0),
            ("flannel_kube_nodes", 3.0),
            ("flannel_kube_managed_nodes", 3.0),
        ] {
            assert_eq!(
                metric_value(&metrics, name),
                Some(want),
                "host {}: {name}",
                i + 1
            );
        }
    }
    for i in 0..3 {
        c.add_pod(i);
    }
    c.ping_all_pairs(true);

    // A Node joins: time until its route is on every host. In dual stack
    // both families are required (Go's nodeToLease).
    let add = |name: &str, n: u8| {
        c.kube_api().apply_node(node_json(
            name,
            &[&format!("10.245.{n}.0/24"), &format!("fd00:245:0:{n}::/64")],
            &[
                (&format!("{P}kube-subnet-manager"), "true"),
                (&format!("{P}backend-type"), "host-gw"),
                (&format!("{P}backend-data"), "null"),
                (&format!("{P}backend-v6-data"), "null"),
                (&format!("{P}public-ip"), &format!("192.168.100.{n}")),
                (&format!("{P}public-ipv6"), &format!("fd00:100::{n}")),
            ],
            None,
        ));
    };
    let mut times = Vec::new();
    for n in [60u8, 61, 62] {
        let t = Instant::now();
        add(&format!("extra-{n}"), n);
        wait_routes(&c, &[0, 1, 2], &format!("10.245.{n}.0/24"), true);
        times.push(t.elapsed());
    }
    eprintln!("MEASURE host-gw: Node added -> its route on all 3 hosts: {times:?}");

    // The API server restarts mid-run: no peer is lost, and the watch
    // resumes (a Node added afterwards arrives).
    c.restart_kube_api();
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..3 {
        for n in (1..=3u8)
            .filter(|&n| usize::from(n) != i + 1)
            .chain([60, 61, 62])
        {
            assert!(
                c.route_to(i, &format!("10.245.{n}.0/24")).is_some(),
                "host {}: route to 10.245.{n}.0/24 lost after the API server restart",
                i + 1
            );
        }
    }
    let t = Instant::now();
    add("extra-63", 63);
    wait_routes(&c, &[0, 1, 2], "10.245.63.0/24", true);
    eprintln!(
        "MEASURE host-gw: Node added after an API server restart -> routes in {:?}",
        t.elapsed()
    );
    c.ping_all_pairs(false);
    for (i, addr) in health.iter().enumerate() {
        let ready = wait_until(CONVERGE, || match http_get(c.host(i), *addr, "/readyz") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        });
        assert!(
            ready.is_ok(),
            "host {}: not ready after the API server restart: {ready:?}",
            i + 1
        );
    }
    assert_rbac(c.kube_api(), &cluster_role_rules());
    eprintln!(
        "kube_hostgw_dual_stack_api_restart: total {:?}",
        t0.elapsed()
    );
}
