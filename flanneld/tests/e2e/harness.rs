//! The e2e harness: a [`Cluster`] of test "hosts" (network namespaces on one
//! bridge, see [`Topology`]) running real `flanneld` processes against a real
//! etcd (in the switch namespace) or the embedded local store, with "pods"
//! attached through our `flannel` CNI plugin, plus probes of the kernel state
//! (`ip route`, `ip neigh`, `bridge fdb`) and of the data path (ping, TCP).
//!
//! Everything is torn down by `Drop` (also on panic): flanneld processes are
//! killed first, then etcd, then the namespaces; on panic the flanneld logs
//! and each host's kernel state are printed (always with `FLANNEL_E2E_VERBOSE=1`).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use flannel_subnet::etcd::{EtcdConfig, EtcdStore};
use flannel_testutil::etcd::EtcdServer;
use flannel_testutil::netns::{NetNs, Topology};
use tempfile::TempDir;

/// The daemon under test.
pub const FLANNELD: &str = env!("CARGO_BIN_EXE_flanneld");
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

/// Checks (once) what the tests need besides root and etcd (whose own
/// errors name them); panics naming the missing prerequisite.
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

/// The `flannel` CNI plugin binary next to flanneld, built with
/// `cargo build -p flannel-cni` when it is missing or older than its sources.
pub fn cni_plugin() -> PathBuf {
    static PLUGIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let res = PLUGIN.get_or_init(|| {
        let profile_dir = Path::new(FLANNELD)
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
pub struct Daemon {
    child: Child,
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

/// Where the leases live.
pub enum Backing {
    /// A real etcd in the switch namespace on [`ETCD_IP`].
    Etcd,
    /// The embedded local store in `<tmp>/store`, shared by all hosts.
    Local,
}

enum Store {
    Etcd(Box<EtcdServer>),
    Local(PathBuf),
}

/// A pod: a namespace with `eth0` and its addresses.
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
pub struct Cluster {
    /// flanneld per host (`None` when not running).
    pub daemons: Vec<Option<Daemon>>,
    /// Pods per host.
    pub pods: Vec<Option<Pod>>,
    store: Store,
    /// The namespaces.
    pub topo: Topology,
    /// The temp dir: `h<N>/` per host (subnet.env, flanneld.log, CNI dirs).
    pub dir: TempDir,
    name: String,
}

impl Cluster {
    /// Builds `hosts` hosts (optionally with IPv6), the store with `config`.
    pub fn new(name: &str, hosts: usize, ipv6: bool, backing: Backing, config: &str) -> Cluster {
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
            Backing::Local => {
                let store = dir.path().join("store");
                fs::create_dir_all(&store).expect("store dir");
                fs::write(store.join("config"), config).expect("write config");
                Store::Local(store)
            }
        };
        let c = Cluster {
            daemons: (0..hosts).map(|_| None).collect(),
            pods: (0..hosts).map(|_| None).collect(),
            store,
            topo,
            dir,
            name: name.to_owned(),
        };
        if matches!(c.store, Store::Etcd(_)) {
            let config = config.to_owned();
            c.with_etcd(async move |store: EtcdStore| {
                store.put_config(&config).await.expect("put_config");
            });
        }
        c
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

    /// Host `i`'s subnet.env path.
    pub fn subnet_file(&self, i: usize) -> PathBuf {
        self.host_dir(i).join("subnet.env")
    }

    /// Host `i`'s flanneld log path.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.host_dir(i).join("flanneld.log")
    }

    /// Host `i`'s flanneld log (all runs).
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// The local store directory.
    pub fn local_store(&self) -> &Path {
        match &self.store {
            Store::Local(p) => p,
            Store::Etcd(_) => panic!("{}: not a local-store cluster", self.name),
        }
    }

    /// Starts flanneld on host `i` with `--iface=eth0`, the subnet file, the
    /// store flags and `extra`.
    pub fn start(&mut self, i: usize, extra: &[&str]) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("open flanneld log");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            self.host(i).name(),
            FLANNELD,
            "--iface=eth0",
        ])
        .arg(format!("--subnet-file={}", self.subnet_file(i).display()));
        match &self.store {
            Store::Etcd(server) => {
                cmd.arg(format!("--etcd-endpoints={}", server.endpoint()));
            }
            Store::Local(dir) => {
                cmd.arg("--subnet-manager=local")
                    .arg(format!("--local-store-dir={}", dir.display()));
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
        let child = cmd.spawn().expect("spawn ip netns exec flanneld");
        self.daemons[i] = Some(Daemon { child });
    }

    /// Starts flanneld on every host with no extra flags.
    pub fn start_all(&mut self) {
        for i in 0..self.len() {
            self.start(i, &[]);
        }
    }

    /// The running daemon of host `i`.
    pub fn daemon(&mut self, i: usize) -> &mut Daemon {
        self.daemons[i]
            .as_mut()
            .unwrap_or_else(|| panic!("host {} runs no flanneld", i + 1))
    }

    /// The inode of host `i`'s subnet.env, if it exists. flanneld writes
    /// the file atomically (temp file + rename) once per start, so a new
    /// inode means a (re)started flanneld is ready.
    pub fn env_inode(&self, i: usize) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(self.subnet_file(i)).ok().map(|m| m.ino())
    }

    /// Waits until host `i`'s subnet.env exists with an inode other than
    /// `old` and returns its text; panics (with the log) if flanneld exits
    /// or [`CONVERGE`] passes. Also checks the file mode is 0644 (§4.2).
    pub fn wait_env_rewritten(&mut self, i: usize, old: Option<u64>) -> String {
        use std::os::unix::fs::PermissionsExt;
        let start = Instant::now();
        loop {
            let path = self.subnet_file(i);
            if self.env_inode(i).is_some_and(|ino| Some(ino) != old)
                && let Ok(text) = fs::read_to_string(&path)
                && !text.is_empty()
            {
                let mode = fs::metadata(&path)
                    .expect("subnet.env")
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o644, "host {}: subnet.env mode", i + 1);
                return text;
            }
            if let Some(status) = self.daemon(i).exited() {
                panic!(
                    "host {}: flanneld exited ({status}) before writing subnet.env; log:\n{}",
                    i + 1,
                    self.log(i)
                );
            }
            if start.elapsed() > CONVERGE {
                panic!(
                    "host {}: no subnet.env after {CONVERGE:?}; log:\n{}",
                    i + 1,
                    self.log(i)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for host `i`'s subnet.env and returns its text.
    pub fn wait_env(&mut self, i: usize) -> String {
        self.wait_env_rewritten(i, None)
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

    /// Runs an async closure with an [`EtcdStore`] connected to the test
    /// etcd, on a thread inside the switch namespace (etcd listens there).
    pub fn with_etcd<T: Send>(&self, f: impl AsyncFnOnce(EtcdStore) -> T + Send) -> T {
        let Store::Etcd(server) = &self.store else {
            panic!("{}: not an etcd cluster", self.name)
        };
        let endpoint = server.endpoint();
        self.topo.switch.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let cfg = EtcdConfig {
                    endpoints: vec![endpoint],
                    ..EtcdConfig::default()
                };
                let store = EtcdStore::connect(cfg).await.expect("connect to etcd");
                f(store).await
            })
        })
    }

    /// All lease kvs under `<prefix>/subnets/`: key → (value, etcd lease id).
    pub fn etcd_leases(&self) -> BTreeMap<String, (String, i64)> {
        self.with_etcd(async |store: EtcdStore| {
            let mut kv = store.client().kv_client();
            let resp = kv
                .get(
                    format!("{PREFIX}/subnets/"),
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
        self.with_etcd(async move |store: EtcdStore| {
            let mut lc = store.client().lease_client();
            lc.time_to_live(lease, None)
                .await
                .expect("lease time-to-live")
                .granted_ttl()
        })
    }

    /// Deletes an etcd key.
    pub fn etcd_delete(&self, key: &str) {
        let key = key.to_owned();
        self.with_etcd(async move |store: EtcdStore| {
            let mut kv = store.client().kv_client();
            kv.delete(key, None).await.expect("delete key");
        });
    }

    /// Puts `value` under `key` with a fresh etcd lease of `ttl` seconds
    /// attached, as Go flannel's `createSubnet` does.
    pub fn etcd_put_with_lease(&self, key: &str, value: &str, ttl: i64) {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.with_etcd(async move |store: EtcdStore| {
            let id = store
                .client()
                .lease_client()
                .grant(ttl, None)
                .await
                .expect("lease grant")
                .id();
            let mut kv = store.client().kv_client();
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
        let plugin = cni_plugin();
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
        let failures: Vec<String> = thread::scope(|s| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|&(i, a, j, dst)| {
                    s.spawn(move || {
                        ping(&a.ns, dst, CONVERGE)
                            .err()
                            .map(|e| format!("pod {} -> pod {} ({dst}): {e}", i + 1, j + 1))
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().expect("ping thread"))
                .collect()
        });
        assert!(
            failures.is_empty(),
            "pod pings failed:\n{}",
            failures.join("\n")
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
            eprintln!(
                "----- host {} flanneld log -----\n{}",
                i + 1,
                tail(&self.log(i), 80)
            );
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
        }
        if let Store::Etcd(server) = &self.store {
            eprintln!("----- etcd log -----\n{}", server.log_tail(30));
        }
    }
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
