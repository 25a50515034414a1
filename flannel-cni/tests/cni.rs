//! End to end against Debian's real `bridge` and `host-local` plugins
//! (`containernetworking-plugins`, installed with apt when missing).
//!
//! Needs root. Each test makes two network namespaces: a "host" one where the
//! plugin runs (so `cni0`, the veth's host end and `ip_forward` never touch
//! the real host) and a "pod" one passed as `CNI_NETNS`. They are deleted
//! when the test ends, whether it passed or not. host-local keeps its
//! leases in the test's temp dir (`ipam.dataDir`). A missing prerequisite
//! fails the test with a message naming it; nothing is skipped.

use serde_json::{Value, json};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const CNI_PATH: &str = "/usr/lib/cni";

fn uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("no Uid: line in /proc/self/status")
}

fn works(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn apt_install(package: &str) {
    let out = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "apt-get install {package} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("apt-get not runnable: {e}"),
    }
}

/// Checks (and where possible installs) everything the tests need; panics
/// with the name of what is missing.
fn prerequisites() {
    assert_eq!(
        uid(),
        0,
        "this test must run as root (uid 0): it creates network namespaces and bridges"
    );
    assert!(
        works("ip", &["-V"]),
        "the `ip` command (iproute2) is required and was not found"
    );
    if !Path::new(CNI_PATH).join("bridge").is_file() {
        apt_install("containernetworking-plugins");
    }
    for plugin in ["bridge", "host-local"] {
        assert!(
            Path::new(CNI_PATH).join(plugin).is_file(),
            "{CNI_PATH}/{plugin} is missing even after `apt-get install -y containernetworking-plugins`"
        );
    }
    if !works("ping", &["-V"]) {
        apt_install("iputils-ping");
    }
    assert!(
        works("ping", &["-V"]),
        "the `ping` command is required (Debian package iputils-ping) and could not be installed"
    );
}

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(role: &str) -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "fcni-{}-{}-{role}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns(name);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(argv)
            .output()
            .unwrap()
    }

    fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "in netns {}: {argv:?} failed: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, argv: &[&str]) -> Value {
        serde_json::from_str(&self.exec_ok(argv)).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct PluginRun {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the built plugin inside `host` against the pod netns.
fn plugin(host: &Netns, pod: &Netns, command: &str, cid: &str, config: &str) -> PluginRun {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &host.0, env!("CARGO_BIN_EXE_flannel")])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    PluginRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(run: &PluginRun, what: &str) -> Value {
    assert_eq!(
        run.code, 0,
        "{what} failed\nstdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    if run.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&run.stdout).unwrap()
    }
}

/// The addresses (`addr/prefix`) and MTU of `dev` in `ns`.
fn addrs(ns: &Netns, dev: &str) -> (Vec<String>, u64) {
    let v = ns.json(&["ip", "-j", "addr", "show", "dev", dev]);
    let link = &v[0];
    let list = link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    (list, link["mtu"].as_u64().unwrap())
}

fn ping(pod: &Netns, target: &str) {
    let mut last = String::new();
    for _ in 0..5 {
        let out = pod.exec(&["ping", "-c", "1", "-W", "2", target]);
        if out.status.success() {
            return;
        }
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("pod cannot ping {target}: {last}");
}

struct Case {
    _dir: tempfile::TempDir,
    data_dir: String,
    ipam_dir: String,
    config: String,
    host: Netns,
    pod: Netns,
}

fn setup(subnet_env: &str, cni_version: &str, delegate: &str) -> Case {
    prerequisites();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("subnet.env"), subnet_env).unwrap();
    let data_dir = dir.path().join("flannel").display().to_string();
    let ipam_dir = dir.path().join("ipam").display().to_string();
    let config = format!(
        r#"{{"cniVersion":"{cni_version}","name":"fcni{}","type":"flannel","subnetFile":"{}","dataDir":"{data_dir}","ipam":{{"dataDir":"{ipam_dir}"}}{delegate}}}"#,
        std::process::id(),
        dir.path().join("subnet.env").display(),
    );
    let host = Netns::new("host");
    let pod = Netns::new("pod");
    Case {
        _dir: dir,
        data_dir,
        ipam_dir,
        config,
        host,
        pod,
    }
}

fn assert_torn_down(c: &Case, cid: &str) {
    assert!(
        !c.pod.exec(&["ip", "link", "show", "eth0"]).status.success(),
        "eth0 still in the pod after DEL"
    );
    let veths = c.host.json(&["ip", "-j", "link", "show", "type", "veth"]);
    assert_eq!(veths, json!([]), "host end of the veth left after DEL");
    assert!(
        !Path::new(&c.data_dir).join(cid).exists(),
        "saved delegate config left after DEL"
    );
    // DEL again: the saved file is gone, and it still succeeds
    let again = plugin(&c.host, &c.pod, "DEL", cid, &c.config);
    assert_eq!(ok(&again, "second DEL"), Value::Null);
}

#[test]
fn ipv4_add_check_del_with_real_bridge() {
    let c = setup(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        "1.0.0",
        "",
    );
    let cid = "fcni-v4-container";
    let result = ok(&plugin(&c.host, &c.pod, "ADD", cid, &c.config), "ADD");
    assert_eq!(result["cniVersion"], "1.0.0");
    let ips = result["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 1, "{result}");
    let addr = ips[0]["address"].as_str().unwrap().to_string();
    assert!(
        addr.starts_with("10.244.7.") && addr.ends_with("/24"),
        "{addr}"
    );
    assert_eq!(ips[0]["gateway"], "10.244.7.1");

    // the saved file is the delegate config the bridge got
    let saved: Value =
        serde_json::from_slice(&std::fs::read(Path::new(&c.data_dir).join(cid)).unwrap()).unwrap();
    assert_eq!(
        saved,
        json!({"cniVersion": "1.0.0", "ipMasq": false, "isGateway": true, "mtu": 1450,
               "name": format!("fcni{}", std::process::id()), "type": "bridge",
               "ipam": {"type": "host-local", "dataDir": c.ipam_dir,
                        "ranges": [[{"subnet": "10.244.7.0/24"}]], "routes": [{"dst": "10.244.0.0/16"}]}})
    );

    let (pod_addrs, mtu) = addrs(&c.pod, "eth0");
    assert_eq!(pod_addrs, vec![addr.clone()]);
    assert_eq!(mtu, 1450);
    let (bridge_addrs, _) = addrs(&c.host, "cni0");
    assert_eq!(bridge_addrs, vec!["10.244.7.1/24".to_string()]);
    // the route to the flannel network goes via the gateway
    let routes = c.pod.exec_ok(&["ip", "route", "show", "10.244.0.0/16"]);
    assert!(routes.contains("via 10.244.7.1"), "{routes}");
    ping(&c.pod, "10.244.7.1");

    let check = plugin(&c.host, &c.pod, "CHECK", cid, &c.config);
    assert_eq!(ok(&check, "CHECK"), Value::Null);

    let del = plugin(&c.host, &c.pod, "DEL", cid, &c.config);
    assert_eq!(ok(&del, "DEL"), Value::Null);
    assert_torn_down(&c, cid);
}

#[test]
fn dual_stack_add_del_with_stock_delegate() {
    let c = setup(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_IPV6_NETWORK=fd00::/16\nFLANNEL_IPV6_SUBNET=fd00:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        "0.3.1",
        r#","delegate":{"hairpinMode":true,"isDefaultGateway":true}"#,
    );
    let cid = "fcni-dual-container";
    let result = ok(&plugin(&c.host, &c.pod, "ADD", cid, &c.config), "ADD");
    let ips = result["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "{result}");
    let v4 = ips
        .iter()
        .find(|i| i["version"] == "4")
        .expect("an IPv4 address");
    let v6 = ips
        .iter()
        .find(|i| i["version"] == "6")
        .expect("an IPv6 address");
    let a4 = v4["address"].as_str().unwrap().to_string();
    let a6 = v6["address"].as_str().unwrap().to_string();
    assert!(a4.starts_with("10.244.7.") && a4.ends_with("/24"), "{a4}");
    assert!(a6.starts_with("fd00:7::") && a6.ends_with("/64"), "{a6}");
    assert_eq!(v4["gateway"], "10.244.7.1");
    assert_eq!(v6["gateway"], "fd00:7::1");

    let (mut pod_addrs, mtu) = addrs(&c.pod, "eth0");
    pod_addrs.sort();
    let mut want = vec![a4, a6];
    want.sort();
    assert_eq!(pod_addrs, want);
    assert_eq!(mtu, 1450);
    let (mut bridge_addrs, _) = addrs(&c.host, "cni0");
    bridge_addrs.sort();
    assert_eq!(
        bridge_addrs,
        vec!["10.244.7.1/24".to_string(), "fd00:7::1/64".to_string()]
    );
    // isDefaultGateway reached the bridge: default routes via the gateways
    let r4 = c.pod.exec_ok(&["ip", "-4", "route", "show", "default"]);
    assert!(r4.contains("via 10.244.7.1"), "{r4}");
    let r6 = c.pod.exec_ok(&["ip", "-6", "route", "show", "default"]);
    assert!(r6.contains("via fd00:7::1"), "{r6}");
    ping(&c.pod, "10.244.7.1");

    let del = plugin(&c.host, &c.pod, "DEL", cid, &c.config);
    assert_eq!(ok(&del, "DEL"), Value::Null);
    assert_torn_down(&c, cid);
}

/// The addresses host-local still holds for `network` in `ipam_dir`: one
/// file per address (`10.244.7.2`), beside its `last_reserved_ip.*` and
/// `lock` files.
fn reservations(ipam_dir: &str, network: &str) -> Vec<String> {
    let dir = Path::new(ipam_dir).join(network);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut ips: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    ips.sort();
    ips
}

/// A DEL whose delegate fails (host-local cannot open its data directory,
/// so the real `bridge` reports the IPAM error) keeps the saved config; the
/// runtime's retry, once host-local works again, then removes the pod's
/// interface and releases its address. Without the saved config the retry
/// would succeed without reaching the delegate and leak both.
#[test]
fn failed_del_is_retried_through_the_saved_config() {
    let c = setup(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        "1.0.0",
        "",
    );
    let network = format!("fcni{}", std::process::id());
    let cid = "fcni-retry-container";
    let result = ok(&plugin(&c.host, &c.pod, "ADD", cid, &c.config), "ADD");
    let addr = result["ips"][0]["address"].as_str().unwrap().to_string();
    let ip = addr.split('/').next().unwrap().to_string();
    assert_eq!(reservations(&c.ipam_dir, &network), vec![ip.clone()]);
    let saved_path = Path::new(&c.data_dir).join(cid);
    let saved = std::fs::read_to_string(&saved_path).unwrap();

    // Break host-local: its data directory becomes a regular file, so it
    // cannot create `<dataDir>/<network>` (root ignores permission bits,
    // so a chmod would not do).
    let away = format!("{}.away", c.ipam_dir);
    std::fs::rename(&c.ipam_dir, &away).unwrap();
    std::fs::write(&c.ipam_dir, "not a directory").unwrap();
    let first = plugin(&c.host, &c.pod, "DEL", cid, &c.config);
    assert_eq!(
        first.code, 1,
        "DEL with a broken host-local must fail\nstdout: {}\nstderr: {}",
        first.stdout, first.stderr
    );
    let err: Value = serde_json::from_str(&first.stdout).unwrap();
    assert!(
        err["msg"].as_str().unwrap().contains("not a directory"),
        "the delegate's error is passed up: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(&saved_path).ok(),
        Some(saved),
        "the saved delegate config must survive a failed DEL"
    );
    // The address is still reserved (in the directory moved away).
    assert_eq!(reservations(&away, &network), vec![ip.clone()]);

    // host-local works again; the runtime retries the DEL.
    std::fs::remove_file(&c.ipam_dir).unwrap();
    std::fs::rename(&away, &c.ipam_dir).unwrap();
    let retry = plugin(&c.host, &c.pod, "DEL", cid, &c.config);
    assert_eq!(ok(&retry, "retried DEL"), Value::Null);
    assert_eq!(
        reservations(&c.ipam_dir, &network),
        Vec::<String>::new(),
        "host-local still holds {ip} after the retried DEL"
    );
    // no eth0 in the pod, no veth on the host, no saved config; DEL again
    // succeeds
    assert_torn_down(&c, cid);
}
