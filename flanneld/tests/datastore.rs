//! Datastore safety with real `flanneld` processes in network namespaces and
//! a real etcd (the e2e harness): etcd rebuilt empty on the same endpoint.
//!
//! Needs root and the e2e prerequisites (iproute2, iputils-ping, iptables,
//! containernetworking-plugins, etcd-server); a missing one fails the test
//! with its name. Run: `cargo test -p flanneld --test datastore -- --nocapture`
//! to see the measured figures.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use flannel_testutil::cluster::{
    Backing, CONVERGE, Cluster, PREFIX, Pinger, env_value, http_get, ping_counts, v4_subnet,
    wait_until,
};

const FLANNELD: &str = env!("CARGO_BIN_EXE_flanneld");
const VXLAN_CONFIG: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;
const HEALTHZ_PORT: u16 = 10262;

fn start(c: &mut Cluster, i: usize) {
    let flags = [
        format!("--healthz-port={HEALTHZ_PORT}"),
        format!("--healthz-ip={}", c.host_ip(i)),
    ];
    c.start(i, &[&flags[0], &flags[1]]);
}

/// `/readyz` of host `i`: the status code, or why there is none.
fn readyz(c: &Cluster, i: usize) -> Result<u16, String> {
    let addr = SocketAddr::new(IpAddr::V4(c.host_ip(i)), HEALTHZ_PORT);
    http_get(c.host(i), addr, "/readyz")
        .map(|(code, _)| code)
        .map_err(|e| format!("GET /readyz: {e}"))
}

/// The lease subnet (`10.244.X.0/24`) of host `i`, from its subnet.env.
fn subnet(c: &mut Cluster, i: usize) -> String {
    let env = c.wait_env(i);
    let first = env_value(&env, "FLANNEL_SUBNET")
        .unwrap_or_else(|| panic!("host {}: no FLANNEL_SUBNET in {env:?}", i + 1));
    let (net, len) = v4_subnet(first);
    format!("{net}/{len}")
}

/// subnet key (`10.244.X.0-24`) → public IP, from etcd.
fn stored(c: &Cluster) -> BTreeMap<String, String> {
    c.etcd_leases()
        .into_iter()
        .map(|(k, (v, _))| {
            let key = k.rsplit('/').next().unwrap().to_string();
            let v: serde_json::Value = serde_json::from_str(&v).expect("lease JSON");
            (key, v["PublicIP"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

fn key_of(subnet: &str) -> String {
    subnet.replace('/', "-")
}

fn put_config(c: &Cluster) {
    c.with_etcd(async |client| {
        client
            .kv_client()
            .put(format!("{PREFIX}/config"), VXLAN_CONFIG, None)
            .await
            .expect("put the network config");
    });
}

/// etcd stopped, its data directory wiped and started again on the same
/// endpoint, first without the network config:
/// - every daemon notices, says so, and reports not ready while the config
///   is missing; the datapath stays (pods keep talking);
/// - once the config is back, every daemon re-asserts the same subnet and
///   only then reports ready;
/// - a node started after that gets a free subnet, and the old nodes route
///   to it (their watches follow the new cluster, not the old revision).
#[test]
fn etcd_rebuilt_empty_is_noticed_and_leases_reasserted() {
    let mut c = Cluster::new(FLANNELD, "rebuild", 4, false, Backing::Etcd, VXLAN_CONFIG);
    let old = [0, 1, 2];
    for i in old {
        start(&mut c, i);
    }
    let subnets: Vec<String> = old.iter().map(|&i| subnet(&mut c, i)).collect();
    for i in old {
        wait_until(CONVERGE, || match readyz(&c, i) {
            Ok(200) => Ok(()),
            other => Err(format!("host {}: /readyz {other:?}", i + 1)),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        c.add_pod(i);
    }
    c.ping_all_pairs(false);
    let before = stored(&c);
    assert_eq!(before.len(), 3, "{before:?}");
    // Enough revisions that the old cluster is well ahead of the new one.
    for _ in 0..3 {
        put_config(&c);
    }
    let pinger = Pinger::start(
        &c.pod(0).ns,
        IpAddr::V4(c.pod(1).v4),
        &c.dir.path().join("ping.txt"),
    );

    // ---- rebuild: stop, wipe, start empty (no config yet)
    let etcd = c.etcd_server();
    etcd.stop();
    let data_dir = etcd.data_dir().to_owned();
    fs::remove_dir_all(&data_dir)
        .unwrap_or_else(|e| panic!("removing {}: {e}", data_dir.display()));
    etcd.restart()
        .unwrap_or_else(|e| panic!("restarting etcd: {e}"));
    let up = Instant::now();
    assert!(stored(&c).is_empty());

    // Not ready (config and lease missing), and it stays so.
    thread::sleep(Duration::from_secs(8));
    for i in old {
        assert_eq!(
            readyz(&c, i),
            Ok(503),
            "host {}: ready with no config and no lease in the rebuilt etcd:\n{}",
            i + 1,
            c.log_tail(i, 30)
        );
        let log = c.log(i);
        assert!(
            log.contains("rebuilt or replaced"),
            "host {}: the rebuild was not noticed:\n{}",
            i + 1,
            c.log_tail(i, 30)
        );
        assert!(
            log.contains("network config is missing"),
            "host {}: no clear log about the missing config:\n{}",
            i + 1,
            c.log_tail(i, 30)
        );
    }
    // The datapath stays: every peer's route is still there, pods talk.
    for i in old {
        for (j, s) in subnets.iter().enumerate() {
            if i != j {
                assert!(
                    c.route_to(i, s).is_some(),
                    "host {}: the route to {s} was removed while the config is missing",
                    i + 1
                );
            }
        }
    }
    c.ping_all_pairs(false);

    // ---- the config is back: every node re-asserts its own subnet
    put_config(&c);
    let back = Instant::now();
    let mut ready_after = Vec::new();
    for i in old {
        let (_, took) = wait_until(Duration::from_secs(20), || match readyz(&c, i) {
            Ok(200) => Ok(()),
            other => Err(format!("host {}: /readyz {other:?}", i + 1)),
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(i, 30)));
        ready_after.push(took);
    }
    let all_ready = back.elapsed();
    let after = stored(&c);
    assert_eq!(
        after, before,
        "every node re-asserts the same subnet with its public IP"
    );
    for (n, &i) in old.iter().enumerate() {
        assert_eq!(
            subnet(&mut c, i),
            subnets[n],
            "host {}: subnet.env changed",
            i + 1
        );
    }

    // ---- a new node gets a free subnet; the old nodes route to it
    start(&mut c, 3);
    let new = subnet(&mut c, 3);
    assert!(
        !subnets.contains(&new),
        "the new node was handed {new}, still in use by {subnets:?}"
    );
    assert_eq!(stored(&c).len(), 4);
    let mut route_after = Duration::ZERO;
    for i in old {
        let (_, took) = wait_until(CONVERGE, || {
            c.route_to(i, &new)
                .ok_or_else(|| format!("host {}: no route to {new}", i + 1))
        })
        .unwrap_or_else(|e| panic!("{e}"));
        route_after = route_after.max(took);
    }
    assert!(
        c.etcd_leases()
            .contains_key(&format!("{PREFIX}/subnets/{}", key_of(&new)))
    );
    c.add_pod(3);
    c.ping_all_pairs(false);
    let text = pinger.stop();
    let (sent, got) =
        ping_counts(&text).unwrap_or_else(|| panic!("no ping statistics in:\n{text}"));
    eprintln!(
        "etcd rebuilt: config back {:.1} s after the restart; ready again after {:?} \
         (all {:.2} s); new node's route on every old node within {:.2} s; \
         pod1->pod2 ping {got}/{sent} through the rebuild",
        back.duration_since(up).as_secs_f64(),
        ready_after,
        all_ready.as_secs_f64(),
        route_after.as_secs_f64()
    );
    // A brief loss while etcd is down is no datapath fault; the pods kept
    // talking through the rebuild.
    assert!(
        sent > 0 && sent - got <= 5,
        "lost {} of {sent} pings",
        sent - got
    );
}

/// The usual repair: etcd rebuilt and its config restored at once. Every
/// node re-asserts its subnet; the test reports how long that takes.
#[test]
fn etcd_rebuilt_with_its_config_restored_at_once() {
    let mut c = Cluster::new(FLANNELD, "rebuild2", 3, false, Backing::Etcd, VXLAN_CONFIG);
    for i in 0..3 {
        start(&mut c, i);
    }
    let subnets: Vec<String> = (0..3).map(|i| subnet(&mut c, i)).collect();
    for i in 0..3 {
        wait_until(CONVERGE, || match readyz(&c, i) {
            Ok(200) => Ok(()),
            other => Err(format!("host {}: /readyz {other:?}", i + 1)),
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }
    for _ in 0..3 {
        put_config(&c);
    }
    let before = stored(&c);
    let etcd = c.etcd_server();
    etcd.stop();
    let data_dir = etcd.data_dir().to_owned();
    fs::remove_dir_all(&data_dir)
        .unwrap_or_else(|e| panic!("removing {}: {e}", data_dir.display()));
    etcd.restart()
        .unwrap_or_else(|e| panic!("restarting etcd: {e}"));
    put_config(&c);
    let (_, all) = wait_until(Duration::from_secs(20), || {
        let now = stored(&c);
        if now != before {
            return Err(format!("leases {now:?}, want {before:?}"));
        }
        for i in 0..3 {
            if readyz(&c, i) != Ok(200) {
                return Err(format!("host {} not ready", i + 1));
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("the nodes did not re-assert their leases: {e}"));
    eprintln!(
        "etcd rebuilt with its config: all 3 nodes re-asserted their subnets and ready {:.2} s after etcd served again",
        all.as_secs_f64()
    );
    for (i, want) in subnets.iter().enumerate() {
        assert_eq!(&subnet(&mut c, i), want);
        assert!(c.log(i).contains("rebuilt or replaced"), "host {}", i + 1);
    }
}
