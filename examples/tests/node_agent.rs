//! The example node agent, run for real: two network-namespace hosts share
//! a local store, each runs `node-agent` with host-gw, and a ping crosses
//! from one host to an address in the other's subnet.

use flannel_testutil::netns::Topology;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn agent(ns: &str, store: &std::path::Path, env: &std::path::Path) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_node-agent")])
        .args(["--store", store.to_str().unwrap(), "--iface", "eth0"])
        .args(["--subnet-file", env.to_str().unwrap()])
        .args(["--network", "10.20.0.0/16", "--backend", "host-gw"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start node-agent under `ip netns exec` (iproute2)")
}

fn subnet(env: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(env).ok()?;
    let line = text.lines().find(|l| l.starts_with("FLANNEL_SUBNET="))?;
    Some(line["FLANNEL_SUBNET=".len()..].to_string())
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill(1)");
    assert!(status.success());
}

#[test]
fn two_agents_route_to_each_other_over_host_gw() {
    if Command::new("ping").arg("-V").output().is_err() {
        panic!("this test needs `ping` (Debian package iputils-ping)");
    }
    let topo = Topology::builder()
        .hosts(2)
        .name_hint("agent")
        .build()
        .expect("building the netns topology (needs root and iproute2)");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let envs = [dir.path().join("h0.env"), dir.path().join("h1.env")];
    let mut agents: Vec<Child> = topo
        .hosts
        .iter()
        .zip(&envs)
        .map(|(h, env)| agent(h.ns.name(), &store, env))
        .collect();

    let subnets: Vec<String> = envs
        .iter()
        .map(|e| wait_for("subnet.env", || subnet(e)))
        .collect();
    assert_ne!(subnets[0], subnets[1]);
    // "10.20.7.1/24": put the address on host 1's loopback as its "pod".
    let pod = subnets[1].split('/').next().unwrap().to_string();
    topo.host(1)
        .ns
        .ip(&["addr", "add", &format!("{pod}/32"), "dev", "lo"])
        .unwrap();
    let net1 = format!("{}.0/24", pod.rsplit_once('.').unwrap().0);
    wait_for("host 0's route to host 1's subnet", || {
        let routes = topo.host(0).ns.ip(&["route", "show", &net1]).ok()?;
        routes.contains("via 192.168.100.2 dev eth0").then_some(())
    });
    let ping = topo
        .host(0)
        .exec(&["ping", "-c", "2", "-W", "2", &pod])
        .unwrap_or_else(|e| panic!("ping from host 0 to {pod} on host 1 failed: {e}"));
    assert!(ping.contains("2 received"), "{ping}");

    for a in &agents {
        sigterm(a);
    }
    for a in &mut agents {
        let status = a.wait().unwrap();
        assert!(status.success(), "the agent exits 0 on SIGTERM: {status}");
    }
    let routes = topo.host(0).ns.ip(&["route", "show", &net1]).unwrap();
    assert!(
        routes.contains("via 192.168.100.2"),
        "the route stays after the agent stops: {routes:?}"
    );
}
