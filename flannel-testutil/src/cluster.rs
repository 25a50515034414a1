//! End-to-end clusters: test "hosts" running real `flanneld` processes.
//!
//! A [`Cluster`] is a [`Topology`] (network namespaces on one bridge) whose
//! hosts run the `flanneld` binary under test against a real etcd (in the
//! switch namespace, on [`ETCD_IP`]) or the embedded local store, with "pods"
//! attached through our `flannel` CNI plugin (delegating to Debian's `bridge`
//! and `host-local`). It also probes the kernel state the way an operator
//! would (`ip route`, `ip neigh`, `bridge fdb`) and the data path (ping,
//! TCP). flanneld's end-to-end and reliability tests and the benchmark
//! programs share it.
//!
//! The flanneld binary is a parameter of [`Cluster::new`]: flanneld's own
//! tests pass `env!("CARGO_BIN_EXE_flanneld")`; other programs can resolve it
//! with [`flanneld_from_env`] ([`FLANNELD_ENV`]). The CNI plugin is the
//! `flannel` binary next to flanneld, built on demand (see [`cni_plugin`]).
//!
//! Everything is torn down by `Drop` (also on panic): flanneld processes are
//! killed first, then the pods, etcd, the namespaces and the temporary
//! directory; on panic each host's flanneld log and kernel state are printed
//! (always with [`VERBOSE_ENV`] set).
//!
//! Helpers here panic with a message naming the host and the command, as a
//! test assertion would: a cluster is test scaffolding, not a library.
//!
//! This module needs the `cluster` feature. With the `kube` feature too,
//! [`Backing::Kube`] runs the hosts' flanneld with `--kube-subnet-mgr`
//! against the fake Kubernetes API server ([`crate::kube`]) in the switch
//! namespace: one Node per host (`h1`, `h2`, ...) with podCIDRs preset from
//! the config, as a cluster's node controller would assign them.
//!
//! ```no_run
//! use flannel_testutil::cluster::{Backing, Cluster};
//!
//! let config = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;
//! let mut c = Cluster::new("target/debug/flanneld", "doc", 2, false, Backing::Etcd, config);
//! c.start_all();
//! c.wait_env(0);
//! c.wait_env(1);
//! c.add_pod(0);
//! c.add_pod(1);
//! c.ping_all_pairs(false);
//! ```
//!
//! # Several networks
//!
//! A cluster holds one or more flannel networks ([`Net`]), each with its own
//! etcd prefix, config, and a flanneld per host writing its own subnet file
//! and log: the documentation's multi-network recipe (`flanneld -subnet-file
//! /vxlan.env -etcd-prefix=/vxlan/network` beside a second daemon with
//! another prefix and subnet file). [`Cluster::new`] makes one network,
//! [`Net::FIRST`], under [`PREFIX`]; [`Cluster::with_network`] makes the
//! first one from a [`NetworkSpec`] and [`Cluster::add_network`] adds more.
//! The methods without a network argument ([`Cluster::start`],
//! [`Cluster::wait_env`], [`Cluster::log`], ...) act on [`Net::FIRST`]; their
//! `_on` forms ([`Cluster::start_on`], [`Cluster::wait_env_on`],
//! [`Cluster::log_on`], ...) take the network.
//!
//! ```no_run
//! use flannel_testutil::cluster::{Backing, Cluster, Net, NetworkSpec};
//!
//! let vxlan = NetworkSpec {
//!     name: "vxlan",
//!     prefix: "/vxlan/network",
//!     config: r#"{"Network": "10.11.0.0/16", "Backend": {"Type": "vxlan"}}"#,
//! };
//! let hostgw = NetworkSpec {
//!     name: "hostgw",
//!     prefix: "/hostgw/network",
//!     config: r#"{"Network": "10.12.0.0/16", "Backend": {"Type": "host-gw"}}"#,
//! };
//! let mut c = Cluster::with_network("target/debug/flanneld", "mn", 2, false, Backing::Etcd, vxlan);
//! let vx = Net::FIRST;
//! let hg = c.add_network(hostgw);
//! for i in 0..2 {
//!     c.start_on(vx, i, &["--ip-masq"]);
//!     c.start_on(hg, i, &["--ip-masq"]);
//! }
//! let env = c.wait_env_on(hg, 0); // h1/hostgw.env
//! ```

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

use crate::TestUtilError;
use crate::etcd::EtcdServer;
use crate::netns::{NetNs, Topology};

/// Environment variable naming the flanneld binary for programs that are not
/// flanneld's own tests (read by [`flanneld_from_env`]).
pub const FLANNELD_ENV: &str = "FLANNEL_TEST_FLANNELD";
/// Debian's CNI plugins (`containernetworking-plugins`).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// etcd's address on the switch bridge.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 254);
/// flannel's default etcd prefix.
pub const PREFIX: &str = "/coreos.com/network";
/// Set (to anything) to print every cluster's logs and kernel state at the
/// end, also when the test passes (they are always printed on failure).
pub const VERBOSE_ENV: &str = "FLANNEL_E2E_VERBOSE";
/// How long kernel state and data path may take to converge.
pub const CONVERGE: Duration = Duration::from_secs(15);

/// The flanneld binary named by [`FLANNELD_ENV`]; an error naming the
/// variable when it is unset or names no file.
pub fn flanneld_from_env() -> Result<PathBuf, TestUtilError> {
    let missing = |what: String| {
        TestUtilError::io(
            format!("finding the flanneld binary through {FLANNELD_ENV}"),
            std::io::Error::new(std::io::ErrorKind::NotFound, what),
        )
    };
    let path = std::env::var_os(FLANNELD_ENV)
        .map(PathBuf::from)
        .ok_or_else(|| {
            missing(format!(
                "{FLANNELD_ENV} is not set: build flanneld (`cargo build -p flanneld`) and set \
             {FLANNELD_ENV} to its path (e.g. target/debug/flanneld)"
            ))
        })?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing(format!(
            "{FLANNELD_ENV}={} is not a file: build it with `cargo build -p flanneld`",
            path.display()
        )))
    }
}

/// Checks (once) what a cluster needs besides root and etcd (whose own
/// errors name them): iproute2, ping, iptables and Debian's CNI plugins;
/// panics naming the missing prerequisite.
pub fn prerequisites() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let res = CHECK.get_or_init(|| {
        let mut missing = Vec::new();
        let runs = |prog: &str, arg: &str| {
            Command::new(prog)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !runs("ip", "-V") || !runs("bridge", "-V") {
            missing.push("`ip` and `bridge` (Debian package iproute2)".to_owned());
        }
        if !runs("ping", "-V") {
            missing.push("`ping` (apt-get install -y iputils-ping)".to_owned());
        }
        if !runs("iptables", "-V") {
            missing.push("`iptables` (the CNI bridge plugin's ipMasq needs it)".to_owned());
        }
        for plugin in ["bridge", "host-local"] {
            let p = Path::new(CNI_BIN_DIR).join(plugin);
            if !p.is_file() {
                missing.push(format!(
                    "{} (apt-get install -y containernetworking-plugins)",
                    p.display()
                ));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("e2e prerequisites missing: {}", missing.join("; ")))
        }
    });
    if let Err(msg) = res {
        panic!("{msg}");
    }
}

/// The `flannel` CNI plugin binary next to `flanneld` (same Cargo profile
/// directory), built with `cargo build -p flannel-cni` when it is missing or
/// older than its sources; panics naming the binary when that fails.
pub fn cni_plugin(flanneld: &Path) -> PathBuf {
    // One build per process: every cluster of a test binary uses the same
    // flanneld, hence the same plugin.
    static PLUGIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let res = PLUGIN.get_or_init(|| {
        let profile_dir = flanneld
            .parent()
            .ok_or("flanneld binary has no parent directory")?;
        let bin = profile_dir.join("flannel");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../flannel-cni");
        let newest_src = newest_mtime(&src.join("src"))
            .max(newest_mtime(&src.join("Cargo.toml")));
        let bin_mtime = fs::metadata(&bin).and_then(|m| m.modified()).ok();
        if bin_mtime.is_some_and(|b| Some(b) >= newest_src) {
            return Ok(bin);
        }
        let target_dir = profile_dir
            .parent()
            .ok_or("target directory not found")?;
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "flannel-cni"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().map_err(|e| {
            format!("cannot run `cargo build -p flannel-cni` for the CNI plugin: {e}")
        })?;
        match (out.status.success(), bin.is_file()) {
            (true, true) => Ok(bin),
            (false, true) => {
                eprintln!(
                    "warning: `cargo build -p flannel-cni` failed; using the existing, older {}:\n{}",
                    bin.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok(bin)
            }
            _ => Err(format!(
                "the CNI plugin binary {} (crate flannel-cni) is missing and \
                 `cargo build -p flannel-cni` failed:\n{}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    });
    match res {
        Ok(p) => p.clone(),
        Err(msg) => panic!("{msg}"),
    }
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// Polls `f` every 100 ms until it returns `Ok` or `timeout` passes; returns
/// the value and how long it took, or the last error.
pub fn wait_until<T>(
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<(T, Duration), String> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok((v, start.elapsed())),
            Err(e) if start.elapsed() >= timeout => {
                return Err(format!("still failing after {timeout:?}: {e}"));
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One flanneld process (`ip netns exec <host> flanneld ...`), SIGKILLed on
/// drop.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
}

/// A process's memory, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    /// Resident set size now (`VmRSS`), MiB.
    pub rss_mib: f64,
    /// Peak resident set size (`VmHWM`), MiB.
    pub hwm_mib: f64,
}

impl Daemon {
    /// The process id (flanneld's own: `ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its memory; an error if it has exited (or the pid now names another
    /// program).
    pub fn memory(&mut self) -> Result<Memory, TestUtilError> {
        let pid = self.pid();
        let gone = |what: String| {
            TestUtilError::io(
                format!("reading flanneld's memory (pid {pid})"),
                std::io::Error::new(std::io::ErrorKind::NotFound, what),
            )
        };
        if let Some(status) = self.exited() {
            return Err(gone(format!("flanneld has exited ({status})")));
        }
        let read = |file: &str| {
            fs::read_to_string(format!("/proc/{pid}/{file}"))
                .map_err(|e| TestUtilError::io(format!("reading /proc/{pid}/{file}"), e))
        };
        let comm = read("comm")?;
        if comm.trim() != "flanneld" {
            return Err(gone(format!("pid {pid} is {}, not flanneld", comm.trim())));
        }
        let status = read("status")?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| kb / 1024.0)
                .ok_or_else(|| gone(format!("no {name} in /proc/{pid}/status")))
        };
        Ok(Memory {
            rss_mib: field("VmRSS:")?,
            hwm_mib: field("VmHWM:")?,
        })
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One flannel network of a [`Cluster`] (see the module documentation):
/// [`Net::FIRST`] is the one the constructor makes, [`Cluster::add_network`]
/// returns the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Net(usize);

impl Net {
    /// The network made by [`Cluster::new`] or [`Cluster::with_network`].
    pub const FIRST: Net = Net(0);

    /// Its position in the cluster's networks (0 for [`Net::FIRST`]).
    pub fn index(self) -> usize {
        self.0
    }
}

/// What a network of a [`Cluster`] is made of.
#[derive(Debug, Clone, Copy)]
pub struct NetworkSpec<'a> {
    /// Names the network's files in each host directory: `<name>.env` (the
    /// subnet file) and `flanneld-<name>.log`; empty for `subnet.env` and
    /// `flanneld.log` (what [`Cluster::new`] uses). Must be unique in the
    /// cluster.
    pub name: &'a str,
    /// The etcd prefix (`-etcd-prefix`); the config is stored under
    /// `<prefix>/config`. Not used with [`Backing::Local`], where every
    /// network gets a store directory of its own instead.
    pub prefix: &'a str,
    /// The `net-conf.json` text.
    pub config: &'a str,
}

/// A network's own state.
#[derive(Debug)]
struct Network {
    name: String,
    prefix: String,
    /// The store directory with [`Backing::Local`].
    local_store: Option<PathBuf>,
}

impl Network {
    fn subnet_file_name(&self) -> String {
        if self.name.is_empty() {
            "subnet.env".to_owned()
        } else {
            format!("{}.env", self.name)
        }
    }

    fn log_name(&self) -> String {
        if self.name.is_empty() {
            "flanneld.log".to_owned()
        } else {
            format!("flanneld-{}.log", self.name)
        }
    }

    /// How a log or message names the network.
    fn label(&self) -> String {
        if self.name.is_empty() {
            self.prefix.clone()
        } else {
            format!("{} ({})", self.name, self.prefix)
        }
    }
}

/// Where the leases live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// A real etcd in the switch namespace on [`ETCD_IP`].
    Etcd,
    /// The embedded local store in `<tmp>/store`, shared by all hosts.
    Local,
    /// The fake Kubernetes API server in the switch namespace on
    /// [`ETCD_IP`] (TLS, bearer token, kube-flannel's ClusterRole enforced
    /// on flanneld's user), one Node per host named by
    /// [`Cluster::node_name`] with the podCIDRs of [`kube_pod_cidrs`]; each
    /// flanneld runs with `--kube-subnet-mgr`, a kubeconfig, `NODE_NAME` and
    /// the config in `<tmp>/net-conf.json`. One network only.
    #[cfg(feature = "kube")]
    Kube,
}

#[derive(Debug)]
enum Store {
    Etcd(Box<EtcdServer>),
    /// The first network's store directory (each network has its own, in
    /// [`Network::local_store`]).
    Local(PathBuf),
    #[cfg(feature = "kube")]
    Kube(Box<crate::kube::FakeApiServer>),
}

/// A pod: a namespace with `eth0` and its addresses.
#[derive(Debug)]
pub struct Pod {
    /// The pod's namespace.
    pub ns: NetNs,
    /// Its IPv4 address.
    pub v4: Ipv4Addr,
    /// Its global IPv6 address, if any.
    pub v6: Option<Ipv6Addr>,
}

/// A test cluster. Field order is drop order: daemons, pods, etcd,
/// namespaces, temp dir.
#[derive(Debug)]
pub struct Cluster {
    /// flanneld per host of [`Net::FIRST`] (`None` when not running).
    pub daemons: Vec<Option<Daemon>>,
    /// flanneld per host of the other networks: `more_daemons[n - 1][i]` for
    /// network `n`, host `i`.
    more_daemons: Vec<Vec<Option<Daemon>>>,
    /// Pods per host.
    pub pods: Vec<Option<Pod>>,
    store: Store,
    networks: Vec<Network>,
    /// The namespaces.
    pub topo: Topology,
    /// The temp dir: `h<N>/` per host (subnet.env and flanneld.log, or
    /// `<name>.env` and `flanneld-<name>.log` per named network, CNI dirs).
    pub dir: TempDir,
    name: String,
    flanneld: PathBuf,
    env: Vec<(String, String)>,
    /// Per host: variables for that host's daemons only (a key file path).
    host_env: Vec<Vec<(String, String)>>,
}

impl Cluster {
    /// Builds `hosts` hosts (optionally with IPv6) and the store holding
    /// `config` (the `net-conf.json` text) under [`PREFIX`] for the
    /// `flanneld` binary at `flanneld`; `name` makes the namespace and
    /// directory names readable. The network is [`Net::FIRST`], with
    /// `subnet.env` and `flanneld.log` in each host directory.
    ///
    /// Panics naming what is missing: the flanneld binary, a prerequisite
    /// (see [`prerequisites`]), root, or etcd.
    pub fn new(
        flanneld: impl AsRef<Path>,
        name: &str,
        hosts: usize,
        ipv6: bool,
        backing: Backing,
        config: &str,
    ) -> Cluster {
        let first = NetworkSpec {
            name: "",
            prefix: PREFIX,
            config,
        };
        Cluster::with_network(flanneld, name, hosts, ipv6, backing, first)
    }

    /// Like [`Cluster::new`], with the first network ([`Net::FIRST`]) made
    /// from `first` (its own prefix and file names).
    pub fn with_network(
        flanneld: impl AsRef<Path>,
        name: &str,
        hosts: usize,
        ipv6: bool,
        backing: Backing,
        first: NetworkSpec<'_>,
    ) -> Cluster {
        let flanneld = flanneld.as_ref().to_owned();
        assert!(
            flanneld.is_file(),
            "the flanneld binary {} is missing: build it with `cargo build -p flanneld` \
             (or point {FLANNELD_ENV} at one, for programs using flanneld_from_env)",
            flanneld.display()
        );
        prerequisites();
        let topo = Topology::builder()
            .hosts(hosts)
            .ipv6(ipv6)
            .name_hint(name)
            .build()
            .unwrap_or_else(|e| panic!("building the {hosts}-host topology: {e}"));
        for h in &topo.hosts {
            // Addresses usable at once (no duplicate address detection).
            for k in ["all", "default"] {
                let _ = h.ns.sysctl(&format!("net/ipv6/conf/{k}/accept_dad"), "0");
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("flannel-e2e-{name}-"))
            .tempdir()
            .expect("temp dir");
        for i in 0..hosts {
            fs::create_dir_all(dir.path().join(format!("h{}", i + 1))).expect("host dir");
        }
        let store = match backing {
            Backing::Etcd => {
                topo.switch
                    .ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"])
                    .expect("etcd address on br0");
                let server = EtcdServer::start_in_netns(topo.switch.name(), IpAddr::V4(ETCD_IP))
                    .unwrap_or_else(|e| panic!("starting etcd: {e}"));
                Store::Etcd(Box::new(server))
            }
            Backing::Local => Store::Local(dir.path().join(local_store_name(first.name))),
            #[cfg(feature = "kube")]
            Backing::Kube => {
                topo.switch
                    .ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"])
                    .expect("API server address on br0");
                Store::Kube(Box::new(start_fake_api(&topo, &dir, first.config)))
            }
        };
        let mut c = Cluster {
            daemons: (0..hosts).map(|_| None).collect(),
            more_daemons: Vec::new(),
            pods: (0..hosts).map(|_| None).collect(),
            store,
            networks: Vec::new(),
            topo,
            dir,
            name: name.to_owned(),
            flanneld,
            env: Vec::new(),
            host_env: (0..hosts).map(|_| Vec::new()).collect(),
        };
        c.store_network(first);
        c
    }

    /// Adds a network: stores `spec.config` under `<spec.prefix>/config`
    /// (or in a local store directory of its own) and returns it; start
    /// its daemons with [`Cluster::start_on`]. Panics when `spec.name` or
    /// `spec.prefix` is already used by another network of the cluster.
    pub fn add_network(&mut self, spec: NetworkSpec<'_>) -> Net {
        if let Some(other) = self
            .networks
            .iter()
            .find(|n| n.name == spec.name || n.prefix == spec.prefix)
        {
            panic!(
                "{}: network {:?} ({}) clashes with network {} (names and prefixes must be unique)",
                self.name,
                spec.name,
                spec.prefix,
                other.label()
            );
        }
        self.more_daemons
            .push((0..self.len()).map(|_| None).collect());
        self.store_network(spec)
    }

    /// Records `spec` and writes its config to the store.
    fn store_network(&mut self, spec: NetworkSpec<'_>) -> Net {
        let local_store = match &self.store {
            Store::Etcd(_) => {
                let (key, config) = (format!("{}/config", spec.prefix), spec.config.to_owned());
                self.with_etcd(async move |mut client: etcd_client::Client| {
                    client
                        .put(key, config, None)
                        .await
                        .expect("put the network config into etcd");
                });
                None
            }
            Store::Local(_) => {
                let store = self.dir.path().join(local_store_name(spec.name));
                fs::create_dir_all(&store).expect("store dir");
                fs::write(store.join("config"), spec.config).expect("write config");
                Some(store)
            }
            #[cfg(feature = "kube")]
            Store::Kube(_) => {
                assert!(
                    self.networks.is_empty(),
                    "{}: a Kubernetes cluster has one network (the Nodes' podCIDRs)",
                    self.name
                );
                fs::write(self.dir.path().join(KUBE_NET_CONF), spec.config)
                    .expect("write net-conf.json");
                None
            }
        };
        self.networks.push(Network {
            name: spec.name.to_owned(),
            prefix: spec.prefix.to_owned(),
            local_store,
        });
        Net(self.networks.len() - 1)
    }

    /// The cluster's networks, [`Net::FIRST`] first.
    pub fn networks(&self) -> impl Iterator<Item = Net> + use<> {
        (0..self.networks.len()).map(Net)
    }

    fn network(&self, net: Net) -> &Network {
        self.networks
            .get(net.0)
            .unwrap_or_else(|| panic!("{}: no network {}", self.name, net.0))
    }

    /// The etcd prefix of `net`.
    pub fn prefix(&self, net: Net) -> &str {
        &self.network(net).prefix
    }

    /// The daemon slot of `net` on host `i`.
    fn slot(&mut self, net: Net, i: usize) -> &mut Option<Daemon> {
        if net == Net::FIRST {
            return &mut self.daemons[i];
        }
        let name = self.name.clone();
        self.more_daemons
            .get_mut(net.0 - 1)
            .unwrap_or_else(|| panic!("{name}: no network {}", net.0))
            .get_mut(i)
            .unwrap_or_else(|| panic!("{name}: no host {}", i + 1))
    }

    /// The flanneld binary this cluster runs.
    pub fn flanneld(&self) -> &Path {
        &self.flanneld
    }

    /// Whether the cluster has no hosts (never: a topology has at least one).
    pub fn is_empty(&self) -> bool {
        self.topo.hosts.is_empty()
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.topo.hosts.len()
    }

    /// Host `i`'s (0-based) namespace.
    pub fn host(&self, i: usize) -> &NetNs {
        &self.topo.host(i).ns
    }

    /// Host `i`'s address, `192.168.100.(i+1)`.
    pub fn host_ip(&self, i: usize) -> Ipv4Addr {
        self.topo.host(i).ipv4
    }

    fn host_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("h{}", i + 1))
    }

    /// Host `i`'s subnet.env path ([`Net::FIRST`]).
    pub fn subnet_file(&self, i: usize) -> PathBuf {
        self.subnet_file_on(Net::FIRST, i)
    }

    /// Host `i`'s subnet file of `net` (`h<i+1>/<name>.env`, or
    /// `subnet.env` for an unnamed network).
    pub fn subnet_file_on(&self, net: Net, i: usize) -> PathBuf {
        self.host_dir(i).join(self.network(net).subnet_file_name())
    }

    /// Host `i`'s flanneld log path ([`Net::FIRST`]).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.log_path_on(Net::FIRST, i)
    }

    /// Host `i`'s flanneld log path of `net` (`h<i+1>/flanneld-<name>.log`,
    /// or `flanneld.log` for an unnamed network).
    pub fn log_path_on(&self, net: Net, i: usize) -> PathBuf {
        self.host_dir(i).join(self.network(net).log_name())
    }

    /// Host `i`'s flanneld log (all runs; [`Net::FIRST`]).
    pub fn log(&self, i: usize) -> String {
        self.log_on(Net::FIRST, i)
    }

    /// Host `i`'s flanneld log of `net` (all runs).
    pub fn log_on(&self, net: Net, i: usize) -> String {
        fs::read_to_string(self.log_path_on(net, i)).unwrap_or_default()
    }

    /// The last `n` lines of host `i`'s flanneld log ([`Net::FIRST`]).
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        self.log_tail_on(Net::FIRST, i, n)
    }

    /// The last `n` lines of host `i`'s flanneld log of `net`.
    pub fn log_tail_on(&self, net: Net, i: usize, n: usize) -> String {
        tail(&self.log_on(net, i), n)
    }

    /// The local store directory ([`Net::FIRST`]'s).
    pub fn local_store(&self) -> &Path {
        match &self.store {
            Store::Local(p) => p,
            _ => panic!("{}: not a local-store cluster", self.name),
        }
    }

    /// Starts flanneld on host `i` with `--iface=eth0`, the subnet file, the
    /// store flags and `extra` ([`Net::FIRST`]).
    pub fn start(&mut self, i: usize, extra: &[&str]) {
        self.start_on(Net::FIRST, i, extra);
    }

    /// Starts `net`'s flanneld on host `i` with `--iface=eth0`, the subnet
    /// file, the store flags and `extra`; its output goes to
    /// [`Cluster::log_path_on`]. A network under another prefix than
    /// [`PREFIX`] is started as the documentation's recipe spells it,
    /// `-subnet-file <file> -etcd-prefix=<prefix>` (Go's single-dash flags).
    /// Several daemons on one host need distinct `--healthz-port`s in
    /// `extra` when they serve health.
    pub fn start_on(&mut self, net: Net, i: usize, extra: &[&str]) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path_on(net, i))
            .expect("open flanneld log");
        let network = self.network(net);
        let subnet_file = self.subnet_file_on(net, i);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.host(i).name()])
            .arg(&self.flanneld)
            .arg("--iface=eth0");
        let recipe = network.prefix != PREFIX;
        if recipe {
            cmd.arg("-subnet-file").arg(&subnet_file);
        } else {
            cmd.arg(format!("--subnet-file={}", subnet_file.display()));
        }
        match &self.store {
            Store::Etcd(server) => {
                cmd.arg(format!("--etcd-endpoints={}", server.endpoint()));
                if recipe {
                    cmd.arg(format!("-etcd-prefix={}", network.prefix));
                }
            }
            Store::Local(_) => {
                let dir = network
                    .local_store
                    .as_ref()
                    .expect("a local-store network has a store directory");
                cmd.arg("--subnet-manager=local")
                    .arg(format!("--local-store-dir={}", dir.display()));
            }
            #[cfg(feature = "kube")]
            Store::Kube(_) => {
                let dir = self.dir.path();
                cmd.arg("--kube-subnet-mgr")
                    .arg(format!(
                        "--kubeconfig-file={}",
                        dir.join(KUBE_CONFIG).display()
                    ))
                    .arg(format!(
                        "--net-config-path={}",
                        dir.join(KUBE_NET_CONF).display()
                    ));
            }
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        for (k, _) in std::env::vars() {
            if k.starts_with("FLANNELD_") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1");
        for k in [
            "NODE_NAME",
            "POD_NAME",
            "POD_NAMESPACE",
            "KUBERNETES_SERVICE_HOST",
        ] {
            cmd.env_remove(k);
        }
        #[cfg(feature = "kube")]
        if matches!(self.store, Store::Kube(_)) {
            cmd.env("NODE_NAME", Cluster::node_name(i));
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.envs(self.host_env[i].iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn().expect("spawn ip netns exec flanneld");
        *self.slot(net, i) = Some(Daemon { child });
    }

    /// Sets an environment variable for every flanneld started from now on
    /// (`TENCENTCLOUD_VPC_ENDPOINT`, `ACCESS_KEY_ID`, …).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Sets an environment variable for the daemons of host `i` only,
    /// started from now on (overrides [`Cluster::set_env`]).
    pub fn set_host_env(&mut self, i: usize, key: &str, value: &str) {
        let env = &mut self.host_env[i];
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
    }

    /// The directory of host `i` (subnet files, logs, CNI state).
    pub fn host_path(&self, i: usize) -> PathBuf {
        self.host_dir(i)
    }

    /// Starts flanneld on every host with no extra flags ([`Net::FIRST`]).
    pub fn start_all(&mut self) {
        for i in 0..self.len() {
            self.start(i, &[]);
        }
    }

    /// The running daemon of host `i` ([`Net::FIRST`]).
    pub fn daemon(&mut self, i: usize) -> &mut Daemon {
        self.daemon_on(Net::FIRST, i)
    }

    /// The running daemon of `net` on host `i`.
    pub fn daemon_on(&mut self, net: Net, i: usize) -> &mut Daemon {
        let label = self.network(net).label();
        self.slot(net, i)
            .as_mut()
            .unwrap_or_else(|| panic!("host {} runs no flanneld of network {label}", i + 1))
    }

    /// Takes `net`'s daemon of host `i` out of the cluster (`None` when it
    /// runs none); dropping it kills it.
    pub fn take_daemon_on(&mut self, net: Net, i: usize) -> Option<Daemon> {
        self.slot(net, i).take()
    }

    /// The inode of host `i`'s subnet.env, if it exists ([`Net::FIRST`]).
    /// flanneld writes the file atomically (temp file + rename) once per
    /// start, so a new inode means a (re)started flanneld is ready.
    pub fn env_inode(&self, i: usize) -> Option<u64> {
        self.env_inode_on(Net::FIRST, i)
    }

    /// The inode of host `i`'s subnet file of `net`, if it exists.
    pub fn env_inode_on(&self, net: Net, i: usize) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(self.subnet_file_on(net, i))
            .ok()
            .map(|m| m.ino())
    }

    /// Waits until host `i`'s subnet.env exists with an inode other than
    /// `old` and returns its text; panics (with the log) if flanneld exits
    /// or [`CONVERGE`] passes. Also checks the file mode is 0644 (§4.2).
    pub fn wait_env_rewritten(&mut self, i: usize, old: Option<u64>) -> String {
        self.wait_env_within(i, old, CONVERGE)
    }

    /// [`Cluster::wait_env_rewritten`] with a time limit of `within`.
    ///
    /// Polls every millisecond, so the time until the call returns measures
    /// flanneld's start (the start-up benchmark relies on it).
    pub fn wait_env_within(&mut self, i: usize, old: Option<u64>, within: Duration) -> String {
        self.wait_env_within_on(Net::FIRST, i, old, within)
    }

    /// [`Cluster::wait_env_rewritten_on`] with a time limit of `within`.
    pub fn wait_env_within_on(
        &mut self,
        net: Net,
        i: usize,
        old: Option<u64>,
        within: Duration,
    ) -> String {
        use std::os::unix::fs::PermissionsExt;
        let start = Instant::now();
        let label = self.network(net).label();
        loop {
            let path = self.subnet_file_on(net, i);
            if self
                .env_inode_on(net, i)
                .is_some_and(|ino| Some(ino) != old)
                && let Ok(text) = fs::read_to_string(&path)
                && !text.is_empty()
            {
                let mode = fs::metadata(&path)
                    .expect("subnet.env")
                    .permissions()
                    .mode();
                assert_eq!(
                    mode & 0o777,
                    0o644,
                    "host {}: {} mode",
                    i + 1,
                    path.display()
                );
                return text;
            }
            if let Some(status) = self.daemon_on(net, i).exited() {
                panic!(
                    "host {}: flanneld of network {label} exited ({status}) before writing {}; log:\n{}",
                    i + 1,
                    path.display(),
                    self.log_on(net, i)
                );
            }
            if start.elapsed() > within {
                panic!(
                    "host {}: no {} after {within:?}; log:\n{}",
                    i + 1,
                    path.display(),
                    self.log_on(net, i)
                );
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for host `i`'s subnet.env and returns its text.
    pub fn wait_env(&mut self, i: usize) -> String {
        self.wait_env_rewritten(i, None)
    }

    /// Waits until host `i`'s subnet file of `net` exists with an inode
    /// other than `old` and returns its text, as
    /// [`Cluster::wait_env_rewritten`] does for [`Net::FIRST`].
    pub fn wait_env_rewritten_on(&mut self, net: Net, i: usize, old: Option<u64>) -> String {
        self.wait_env_within_on(net, i, old, CONVERGE)
    }

    /// Waits for host `i`'s subnet file of `net` and returns its text.
    pub fn wait_env_on(&mut self, net: Net, i: usize) -> String {
        self.wait_env_rewritten_on(net, i, None)
    }

    /// `ip -n <host i> <args>`, panicking with the command on failure.
    pub fn ip(&self, i: usize, args: &[&str]) -> String {
        self.host(i)
            .ip(args)
            .unwrap_or_else(|e| panic!("host {}: ip {}: {e}", i + 1, args.join(" ")))
    }

    /// `ip netns exec <host i> <args>`, panicking on failure.
    pub fn exec(&self, i: usize, args: &[&str]) -> String {
        self.host(i)
            .exec(args)
            .unwrap_or_else(|e| panic!("host {}: {}: {e}", i + 1, args.join(" ")))
    }

    /// Host `i`'s routes (IPv4 or, with `v6`, IPv6), one per line.
    pub fn routes(&self, i: usize, v6: bool) -> String {
        self.ip(i, &[if v6 { "-6" } else { "-4" }, "route", "show"])
    }

    /// Host `i`'s route line for `dst` (`10.244.5.0/24`), if any.
    pub fn route_to(&self, i: usize, dst: &str) -> Option<String> {
        let v6 = dst.contains(':');
        self.routes(i, v6)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(dst))
            .map(|l| l.trim().to_owned())
    }

    /// `ip neigh show dev <dev>` on host `i` ("" when the device is gone).
    pub fn neighs(&self, i: usize, dev: &str) -> String {
        self.host(i)
            .ip(&["neigh", "show", "dev", dev])
            .unwrap_or_default()
    }

    /// `bridge fdb show dev <dev>` on host `i` ("" when the device is gone).
    pub fn fdb(&self, i: usize, dev: &str) -> String {
        self.host(i)
            .exec(&["bridge", "fdb", "show", "dev", dev])
            .unwrap_or_default()
    }

    /// Host `i`'s vxlan state for peer `net` (a /24) on `dev`: route,
    /// permanent neighbour and FDB entry, exactly as flannel programs them.
    pub fn vxlan_peer_state(
        &self,
        i: usize,
        dev: &str,
        net: &str,
        mac: &str,
        pub_ip: &str,
    ) -> Result<(), String> {
        let want_route = format!("{net}/24 via {net} dev {dev} onlink");
        let want_neigh = format!("{net} lladdr {mac} PERMANENT");
        let want_fdb = format!("{mac} dst {pub_ip} self permanent");
        let route = self.route_to(i, &format!("{net}/24")).unwrap_or_default();
        let neighs = self.neighs(i, dev);
        let fdb = self.fdb(i, dev);
        if route == want_route
            && neighs.lines().any(|l| l.trim() == want_neigh)
            && fdb.lines().any(|l| l.trim() == want_fdb)
        {
            Ok(())
        } else {
            Err(format!(
                "route {route:?} (want {want_route:?}); neigh {neighs:?} (want {want_neigh:?}); \
                 fdb {fdb:?} (want {want_fdb:?})"
            ))
        }
    }

    /// The MAC address of `dev` on host `i`.
    pub fn mac(&self, i: usize, dev: &str) -> String {
        link_mac(&self.ip(i, &["-o", "link", "show", "dev", dev]))
            .unwrap_or_else(|| panic!("host {}: no MAC on {dev}", i + 1))
    }

    /// The ifindex of `dev` on host `i`.
    pub fn ifindex(&self, i: usize, dev: &str) -> u32 {
        let out = self.ip(i, &["-o", "link", "show", "dev", dev]);
        out.split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("host {}: no ifindex in {out}", i + 1))
    }

    /// `ip link del <device>` on host `i` while pod `i` pings pod `to` ten
    /// times a second: waits (up to 15 s) until host `i`'s route to the
    /// network starts with `route` again and a ping crosses, then checks
    /// that flanneld is still running and `device` is a new link (another
    /// ifindex). Panics with flanneld's log otherwise.
    pub fn delete_and_await_recreation(
        &mut self,
        i: usize,
        to: usize,
        device: &str,
        network: &str,
        route: &str,
    ) -> Recreation {
        let old_index = self.ifindex(i, device);
        let dst = IpAddr::V4(self.pod(to).v4);
        let out = self.dir.path().join(format!("ping-del-{device}.out"));
        let pinger = Pinger::start(&self.pod(i).ns, dst, &out);
        thread::sleep(Duration::from_millis(500));
        self.ip(i, &["link", "del", device]);
        let (_, back) = wait_until(Duration::from_secs(15), || {
            let now = self.route_to(i, network).unwrap_or_default();
            if !now.starts_with(route) {
                return Err(format!("no network route yet: {}", self.routes(i, false)));
            }
            self.pod(i)
                .ns
                .exec(&["ping", "-c", "1", "-W", "1", "-q", &dst.to_string()])
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|e| {
            panic!(
                "{device} was not recreated after its deletion: {e}\n{}",
                self.log_tail(i, 30)
            )
        });
        thread::sleep(Duration::from_millis(500));
        let output = pinger.stop();
        let (sent, received) =
            ping_counts(&output).unwrap_or_else(|| panic!("no ping statistics in: {output}"));
        eprintln!(
            "{device} deleted under a 10/s ping: traffic back {back:?} after the deletion ({} of {sent} lost)",
            sent - received
        );
        assert!(
            self.daemon(i).exited().is_none(),
            "flanneld exited after {device} was deleted:\n{}",
            self.log_tail(i, 30)
        );
        assert_ne!(
            self.ifindex(i, device),
            old_index,
            "{device} is a new device"
        );
        Recreation {
            back,
            sent,
            received,
        }
    }

    /// The etcd server of an etcd-backed cluster (to stop and restart it).
    pub fn etcd_server(&mut self) -> &mut EtcdServer {
        match &mut self.store {
            Store::Etcd(server) => server,
            _ => panic!("{}: not an etcd cluster", self.name),
        }
    }

    /// The etcd client URL (`http://192.168.100.254:<port>`), reachable from
    /// every host.
    pub fn etcd_endpoint(&self) -> String {
        match &self.store {
            Store::Etcd(server) => server.endpoint(),
            _ => panic!("{}: not an etcd cluster", self.name),
        }
    }

    /// The Kubernetes Node name of host `i` (`h1`, `h2`, ...).
    pub fn node_name(i: usize) -> String {
        format!("h{}", i + 1)
    }

    /// The fake API server of a [`Backing::Kube`] cluster.
    #[cfg(feature = "kube")]
    pub fn kube_api(&self) -> &crate::kube::FakeApiServer {
        match &self.store {
            Store::Kube(api) => api,
            _ => panic!("{}: not a Kubernetes cluster", self.name),
        }
    }

    /// Restarts the fake API server (every connection and watch dropped,
    /// the port bound again in the switch namespace).
    #[cfg(feature = "kube")]
    pub fn restart_kube_api(&self) {
        let api = self.kube_api();
        self.topo.switch.run(|| api.restart());
    }

    /// The kubeconfig every host's flanneld uses.
    #[cfg(feature = "kube")]
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join(KUBE_CONFIG)
    }

    /// Runs an async closure with an etcd client connected to the test
    /// etcd, on a current-thread runtime in a thread inside the switch
    /// namespace (etcd listens there).
    pub fn with_etcd<T: Send>(&self, f: impl AsyncFnOnce(etcd_client::Client) -> T + Send) -> T {
        let endpoint = self.etcd_endpoint();
        self.topo.switch.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let client = etcd_client::Client::connect([endpoint.as_str()], None)
                    .await
                    .unwrap_or_else(|e| panic!("connecting to etcd at {endpoint}: {e}"));
                f(client).await
            })
        })
    }

    /// All lease kvs under `<prefix>/subnets/` of [`Net::FIRST`]: key →
    /// (value, etcd lease id).
    pub fn etcd_leases(&self) -> BTreeMap<String, (String, i64)> {
        self.etcd_leases_on(Net::FIRST)
    }

    /// All lease kvs under `<prefix>/subnets/` of `net`: key → (value, etcd
    /// lease id).
    pub fn etcd_leases_on(&self, net: Net) -> BTreeMap<String, (String, i64)> {
        let prefix = self.prefix(net).to_owned();
        self.with_etcd(async move |client: etcd_client::Client| {
            let mut kv = client.kv_client();
            let resp = kv
                .get(
                    format!("{prefix}/subnets/"),
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .expect("list leases");
            resp.kvs()
                .iter()
                .map(|kv| {
                    (
                        kv.key_str().expect("utf-8 key").to_owned(),
                        (kv.value_str().expect("utf-8 value").to_owned(), kv.lease()),
                    )
                })
                .collect()
        })
    }

    /// The granted TTL (seconds) of an etcd lease.
    pub fn etcd_granted_ttl(&self, lease: i64) -> i64 {
        self.with_etcd(async move |client: etcd_client::Client| {
            let mut lc = client.lease_client();
            lc.time_to_live(lease, None)
                .await
                .expect("lease time-to-live")
                .granted_ttl()
        })
    }

    /// Deletes an etcd key.
    pub fn etcd_delete(&self, key: &str) {
        let key = key.to_owned();
        self.with_etcd(async move |client: etcd_client::Client| {
            let mut kv = client.kv_client();
            kv.delete(key, None).await.expect("delete key");
        });
    }

    /// Puts `value` under `key` with a fresh etcd lease of `ttl` seconds
    /// attached, as Go flannel's `createSubnet` does.
    pub fn etcd_put_with_lease(&self, key: &str, value: &str, ttl: i64) {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.with_etcd(async move |client: etcd_client::Client| {
            let id = client
                .lease_client()
                .grant(ttl, None)
                .await
                .expect("lease grant")
                .id();
            let mut kv = client.kv_client();
            kv.put(
                key,
                value,
                Some(etcd_client::PutOptions::new().with_lease(id)),
            )
            .await
            .expect("put lease");
        });
    }

    /// Attaches a pod to host `i` through our CNI plugin (`CNI_COMMAND=ADD`,
    /// delegating to `bridge` + `host-local` from [`CNI_BIN_DIR`]).
    pub fn add_pod(&mut self, i: usize) -> &Pod {
        let plugin = cni_plugin(&self.flanneld);
        let pod = NetNs::new(&format!("{}-p{}", self.name, i + 1)).expect("pod namespace");
        for k in ["all", "default"] {
            let _ = pod.sysctl(&format!("net/ipv6/conf/{k}/accept_dad"), "0");
        }
        let hd = self.host_dir(i);
        let conf = serde_json::json!({
            "cniVersion": "0.3.1",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": self.subnet_file(i),
            "dataDir": hd.join("cni"),
            "ipam": {"dataDir": hd.join("ipam")},
            "delegate": {"hairpinMode": true, "isDefaultGateway": true},
        })
        .to_string();
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.host(i).name()])
            .arg(&plugin)
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("pod{}", i + 1))
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_BIN_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the CNI plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.as_bytes())
            .expect("write CNI config");
        let out = child.wait_with_output().expect("CNI plugin");
        assert!(
            out.status.success(),
            "host {}: CNI ADD failed ({}):\nstdout: {}\nstderr: {}\nconfig: {conf}",
            i + 1,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let addrs = pod
            .ip(&["-o", "addr", "show", "dev", "eth0", "scope", "global"])
            .expect("pod addresses");
        let v4 = parse_addr(&addrs, "inet")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("host {}: pod has no IPv4 address: {addrs}", i + 1));
        let v6 = parse_addr(&addrs, "inet6").and_then(|a| a.parse().ok());
        self.pods[i] = Some(Pod { ns: pod, v4, v6 });
        self.pod(i)
    }

    /// The pod of host `i`.
    pub fn pod(&self, i: usize) -> &Pod {
        self.pods[i]
            .as_ref()
            .unwrap_or_else(|| panic!("host {} has no pod", i + 1))
    }

    /// Pings between all pairs of pods (in parallel; v6 too with `v6`);
    /// panics listing every failing pair.
    pub fn ping_all_pairs(&self, v6: bool) {
        let pods: Vec<(usize, &Pod)> = self
            .pods
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
            .collect();
        let mut jobs = Vec::new();
        for &(i, a) in &pods {
            for &(j, b) in &pods {
                if i == j {
                    continue;
                }
                jobs.push((i, a, j, IpAddr::V4(b.v4)));
                if v6 {
                    let dst =
                        b.v6.unwrap_or_else(|| panic!("pod {} has no IPv6 address", j + 1));
                    jobs.push((i, a, j, IpAddr::V6(dst)));
                }
            }
        }
        all_succeed(
            "pod pings",
            jobs.into_iter()
                .map(|(i, a, j, dst)| {
                    let label = format!("pod {} -> pod {} ({dst})", i + 1, j + 1);
                    (label, move || ping(&a.ns, dst, CONVERGE))
                })
                .collect(),
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let verbose = std::env::var_os(VERBOSE_ENV).is_some();
        if !thread::panicking() && !verbose {
            return;
        }
        let what = if thread::panicking() {
            "failed"
        } else {
            "passed"
        };
        eprintln!("===== cluster {} {what}; diagnostics =====", self.name);
        for i in 0..self.len() {
            for net in self.networks() {
                let label = match net {
                    Net::FIRST if self.networks.len() == 1 => String::new(),
                    _ => format!(" (network {})", self.network(net).label()),
                };
                eprintln!(
                    "----- host {} flanneld log{label} -----\n{}",
                    i + 1,
                    self.log_tail_on(net, i, 80)
                );
            }
            for args in [
                &["-d", "link", "show"][..],
                &["addr", "show"][..],
                &["route", "show"][..],
                &["-6", "route", "show"][..],
                &["neigh", "show"][..],
            ] {
                let out = self.host(i).ip(args).unwrap_or_else(|e| e.to_string());
                eprintln!("----- host {}: ip {} -----\n{out}", i + 1, args.join(" "));
            }
            let fdb = self
                .host(i)
                .exec(&["bridge", "fdb", "show"])
                .unwrap_or_else(|e| e.to_string());
            let fdb: Vec<&str> = fdb.lines().filter(|l| l.contains("flannel")).collect();
            eprintln!(
                "----- host {}: bridge fdb (flannel devices) -----\n{}",
                i + 1,
                fdb.join("\n")
            );
            for (table, chain) in [("nat", "FLANNEL-POSTRTG"), ("filter", "FLANNEL-FWD")] {
                let out = self
                    .host(i)
                    .exec(&["iptables", "-t", table, "-S", chain])
                    .unwrap_or_else(|e| e.to_string());
                eprintln!(
                    "----- host {}: iptables -t {table} -S {chain} -----\n{out}",
                    i + 1
                );
            }
        }
        if let Store::Etcd(server) = &self.store {
            eprintln!("----- etcd log -----\n{}", server.log_tail(30));
        }
        #[cfg(feature = "kube")]
        if let Store::Kube(api) = &self.store {
            for name in api.node_names() {
                let annotations = api
                    .node(&name)
                    .and_then(|n| n.pointer("/metadata/annotations").cloned())
                    .unwrap_or_default();
                eprintln!("----- Node {name} annotations -----\n{annotations}");
            }
        }
    }
}

/// The kubeconfig of a [`Backing::Kube`] cluster, in its temp dir.
#[cfg(feature = "kube")]
const KUBE_CONFIG: &str = "kubeconfig";
/// The `--net-config-path` of a [`Backing::Kube`] cluster, in its temp dir.
#[cfg(feature = "kube")]
const KUBE_NET_CONF: &str = "net-conf.json";
/// The bearer token of a [`Backing::Kube`] cluster's API server.
#[cfg(feature = "kube")]
const KUBE_TOKEN: &str = "flannel-e2e-token";

/// The podCIDRs a [`Backing::Kube`] cluster assigns to host `i`'s Node, from
/// the config text: the `(i+1)`-th /24 of `Network` when IPv4 is enabled
/// (the default) and the `(i+1)`-th /64 of `IPv6Network` when `EnableIPv6`
/// is true, as a node IPAM controller hands them out. Panics on a config
/// without the networks, or with networks too small for that.
pub fn kube_pod_cidrs(config: &str, i: usize) -> Vec<String> {
    let cfg: serde_json::Value =
        serde_json::from_str(config).unwrap_or_else(|e| panic!("config {config}: {e}"));
    let n = u32::try_from(i + 1).expect("host index");
    let mut out = Vec::new();
    let net = |key: &str| {
        let text = cfg[key]
            .as_str()
            .unwrap_or_else(|| panic!("config {config} has no {key}"));
        let (addr, len) = text.split_once('/').expect("a CIDR");
        (
            addr.to_owned(),
            len.parse::<u32>().expect("a prefix length"),
        )
    };
    if cfg["EnableIPv4"].as_bool() != Some(false) {
        let (addr, len) = net("Network");
        assert!(
            len <= 16,
            "Network {addr}/{len} is too small for per-host /24s"
        );
        let base = u32::from(addr.parse::<Ipv4Addr>().expect("an IPv4 network"));
        out.push(format!("{}/24", Ipv4Addr::from(base + (n << 8))));
    }
    if cfg["EnableIPv6"].as_bool() == Some(true) {
        let (addr, len) = net("IPv6Network");
        assert!(
            len <= 56,
            "IPv6Network {addr}/{len} is too small for per-host /64s"
        );
        let base = u128::from(addr.parse::<Ipv6Addr>().expect("an IPv6 network"));
        out.push(format!(
            "{}/64",
            Ipv6Addr::from(base + (u128::from(n) << 64))
        ));
    }
    out
}

/// Starts the fake API server of a [`Backing::Kube`] cluster in the switch
/// namespace (its socket lives there; the hosts reach it over `br0`), with
/// one Node per host and the kubeconfig in `dir`.
#[cfg(feature = "kube")]
fn start_fake_api(topo: &Topology, dir: &TempDir, config: &str) -> crate::kube::FakeApiServer {
    use crate::kube::{FakeApiServer, FakeOptions, TOKEN_USER, flannel_rules, node_json};
    let opts = FakeOptions {
        token: Some(KUBE_TOKEN.to_owned()),
        ..FakeOptions::default()
    };
    let addr = SocketAddr::new(IpAddr::V4(ETCD_IP), 0);
    let api = topo
        .switch
        .run(|| FakeApiServer::start_on(addr, opts))
        .unwrap_or_else(|e| panic!("starting the fake API server on {ETCD_IP}: {e}"));
    // flanneld gets exactly kube-flannel's ClusterRole: a call it does not
    // grant fails (403) as it would in a real cluster.
    api.set_permissions(TOKEN_USER, flannel_rules());
    for (i, host) in topo.hosts.iter().enumerate() {
        let cidrs = kube_pod_cidrs(config, i);
        let cidrs: Vec<&str> = cidrs.iter().map(String::as_str).collect();
        let ip = host.ipv4.to_string();
        api.apply_node(node_json(&Cluster::node_name(i), &cidrs, &[], Some(&ip)));
    }
    api.write_kubeconfig(&dir.path().join(KUBE_CONFIG), TOKEN_USER)
        .expect("write the kubeconfig");
    api
}

/// The local store directory name of the network called `name`.
fn local_store_name(name: &str) -> String {
    if name.is_empty() {
        "store".to_owned()
    } else {
        format!("store-{name}")
    }
}

/// One HTTP/1.1 GET from inside `ns` (a flanneld health server, say):
/// (status code, body), or the I/O error (connection refused when nothing
/// listens). Each step times out after a few seconds.
pub fn http_get(ns: &NetNs, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let path = path.to_owned();
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.set_write_timeout(Some(Duration::from_secs(3)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let bad = || std::io::Error::other(format!("malformed HTTP response: {out:?}"));
        let (head, body) = out.split_once("\r\n\r\n").ok_or_else(bad)?;
        let code = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .ok_or_else(bad)?;
        Ok((code, body.to_owned()))
    })
}

/// Runs every job on a thread of its own and waits for all; panics listing
/// each failure with its label (`what` names the whole, e.g. "pod pings").
pub fn all_succeed<F>(what: &str, jobs: Vec<(String, F)>)
where
    F: FnOnce() -> Result<(), String> + Send,
{
    let failures: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(label, job)| s.spawn(move || job().err().map(|e| format!("{label}: {e}"))))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("job thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{what} failed:\n{}",
        failures.join("\n")
    );
}

/// What [`Cluster::delete_and_await_recreation`] saw.
#[derive(Debug, Clone, Copy)]
pub struct Recreation {
    /// From the deletion to the first ping that crossed again.
    pub back: Duration,
    /// Pings sent during the whole check.
    pub sent: u64,
    /// Replies received during the whole check.
    pub received: u64,
}

/// A continuous `ping -n -i 0.1` from inside a namespace, its output in a
/// file; [`Pinger::stop`] interrupts it (so it prints its statistics) and
/// returns the output. Dropped without `stop`, it is killed.
#[derive(Debug)]
pub struct Pinger {
    child: Child,
    out: PathBuf,
}

impl Pinger {
    /// Starts pinging `dst` from `from`, writing ping's output to `out`.
    pub fn start(from: &NetNs, dst: IpAddr, out: &Path) -> Pinger {
        let file = std::fs::File::create(out).expect("ping output file");
        let child = Command::new("ip")
            .args(["netns", "exec", from.name(), "ping", "-n", "-i", "0.1"])
            .arg(dst.to_string())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("spawn ping (iputils-ping, iproute2)");
        Pinger {
            child,
            out: out.to_owned(),
        }
    }

    /// Interrupts ping (SIGINT) and returns its whole output.
    pub fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(transmitted, received)` from the statistics line of `ping`'s output
/// (`N packets transmitted, M received, …`), if it has one.
pub fn ping_counts(output: &str) -> Option<(u64, u64)> {
    let stats = output.lines().find(|l| l.contains("packets transmitted"))?;
    let count = |word: &str| -> Option<u64> {
        stats.split(',').find_map(|part| {
            let mut w = part.split_whitespace();
            let n = w.next()?.parse().ok()?;
            w.any(|x| x == word).then_some(n)
        })
    };
    Some((count("transmitted")?, count("received")?))
}

/// The value of the unlabelled sample `name` in a Prometheus text
/// exposition (flanneld's `/metrics`), if present.
pub fn metric_value(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The MAC in `ip -o link show` output (`link/ether <mac>`).
pub fn link_mac(out: &str) -> Option<String> {
    let mut words = out.split_whitespace();
    words.find(|w| *w == "link/ether")?;
    words.next().map(str::to_owned)
}

/// The first `<family> <addr>/<len>` address (without the length) in
/// `ip -o addr` output.
fn parse_addr(out: &str, family: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        words.find(|w| *w == family)?;
        words
            .next()
            .and_then(|a| a.split('/').next())
            .map(str::to_owned)
    })
}

/// The value of `key` in subnet.env text.
pub fn env_value<'a>(env: &'a str, key: &str) -> Option<&'a str> {
    env.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// `10.244.5.1/24` → (`10.244.5.0`, 24): the lease subnet of a
/// `FLANNEL_SUBNET` value.
pub fn v4_subnet(first_ip: &str) -> (Ipv4Addr, u8) {
    let (ip, len) = first_ip.split_once('/').expect("CIDR");
    let ip: Ipv4Addr = ip.parse().expect("IPv4");
    let len: u8 = len.parse().expect("prefix length");
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    (Ipv4Addr::from(u32::from(ip) & mask), len)
}

/// `fd00:244:0:5::1/64` → (`fd00:244:0:5::`, 64).
pub fn v6_subnet(first_ip: &str) -> (Ipv6Addr, u8) {
    let (ip, len) = first_ip.split_once('/').expect("CIDR");
    let ip: Ipv6Addr = ip.parse().expect("IPv6");
    let len: u8 = len.parse().expect("prefix length");
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    (Ipv6Addr::from(u128::from(ip) & mask), len)
}

/// Pings `dst` from `from` (one probe per second) until one answer arrives
/// or `within` passes.
pub fn ping(from: &NetNs, dst: IpAddr, within: Duration) -> Result<(), String> {
    let dst = dst.to_string();
    wait_until(within, || {
        from.exec(&["ping", "-c", "1", "-W", "1", "-q", &dst])
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .map(drop)
}

/// Sends `len` bytes from a client in `client` to a server in `server` on
/// `server_ip` over TCP; the server answers with the byte count and a
/// checksum of what it received, which must match what was sent.
pub fn tcp_transfer(server: &NetNs, server_ip: IpAddr, client: &NetNs, len: usize) {
    let listener = server
        .run(|| TcpListener::bind((server_ip, 0)))
        .unwrap_or_else(|e| panic!("bind {server_ip}: {e}"));
    let port = listener.local_addr().expect("local addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let srv = thread::spawn(move || -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err("no connection".into());
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let (mut count, mut sum) = (0u64, 0u64);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                sum = sum.wrapping_mul(31).wrapping_add(u64::from(b));
            }
            count += n as u64;
        }
        let mut reply = count.to_be_bytes().to_vec();
        reply.extend_from_slice(&sum.to_be_bytes());
        stream.write_all(&reply).map_err(|e| format!("reply: {e}"))
    });
    let addr = SocketAddr::new(server_ip, port);
    let mut stream = client
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let sum = data
        .iter()
        .fold(0u64, |s, &b| s.wrapping_mul(31).wrapping_add(u64::from(b)));
    stream.write_all(&data).expect("send payload");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown write");
    let mut reply = [0u8; 16];
    stream
        .read_exact(&mut reply)
        .expect("read the server's reply");
    srv.join().expect("server thread").expect("server");
    let got_count = u64::from_be_bytes(reply[..8].try_into().expect("8 bytes"));
    let got_sum = u64::from_be_bytes(reply[8..].try_into().expect("8 bytes"));
    assert_eq!(got_count, len as u64, "bytes received over TCP");
    assert_eq!(got_sum, sum, "checksum of the bytes received over TCP");
}
