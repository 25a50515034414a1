//! A real, single-member etcd server started per test.
//!
//! [`EtcdServer::start`] runs `/usr/bin/etcd` (Debian package `etcd-server`,
//! v3.4) on free loopback ports with a private temporary data directory;
//! [`EtcdServer::start_tls`] additionally enables client TLS with
//! client-certificate authentication, using certificates generated with
//! `rcgen`. The server can be stopped and restarted (same data directory and
//! ports) to simulate an outage. Dropping the [`EtcdServer`] kills etcd and
//! removes the temporary directory.
//!
//! Besides `Drop`, every etcd process is guarded by a tiny `sh` watchdog that
//! reads from a pipe held by the test process: if the test process dies
//! without unwinding (SIGKILL, `abort`), the pipe closes and the watchdog
//! kills etcd, so no etcd processes are left behind.
//!
//! [`EtcdServer::start_in_netns`] runs etcd inside a named network namespace
//! (`ip netns exec <ns> etcd ...`) with its client URL on an address of that
//! namespace, so processes in other namespaces of a test topology (flanneld
//! on test "hosts") reach it over the topology's links.
//!
//! The etcd binary is `/usr/bin/etcd` unless the environment variable
//! [`ETCD_BIN_ENV`] names another one.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sched::{CloneFlags, setns};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::TestUtilError;

/// Default path of the etcd binary (Debian package `etcd-server`).
pub const DEFAULT_ETCD_BIN: &str = "/usr/bin/etcd";

/// Environment variable that overrides [`DEFAULT_ETCD_BIN`].
pub const ETCD_BIN_ENV: &str = "FLANNEL_TEST_ETCD_BIN";

/// How long [`EtcdServer::start`], [`EtcdServer::start_tls`] and
/// [`EtcdServer::restart`] wait for etcd to serve.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long [`EtcdServer::stop`] waits after SIGTERM before sending SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Number of log lines included in startup error messages.
const ERROR_LOG_LINES: usize = 30;

/// Startup attempts with fresh ports when a port turned out to be taken.
const START_ATTEMPTS: usize = 3;

/// Ports handed out by this process, so parallel tests never share one.
static USED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Counter making cluster names/tokens unique within this process.
static SERVER_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Paths of the TLS material generated for a TLS server.
#[derive(Debug, Clone)]
struct TlsFiles {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    wrong_ca: PathBuf,
    wrong_client_cert: PathBuf,
    wrong_client_key: PathBuf,
}

/// A single-member etcd server owned by one test.
///
/// Dropping it kills etcd (SIGKILL) and removes its temporary directory.
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    watchdog: Option<Child>,
    etcd_bin: PathBuf,
    name: String,
    token: String,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    tls: Option<TlsFiles>,
    /// The network namespace etcd runs in (`None`: ours).
    netns: Option<String>,
    /// The address of the client listener (127.0.0.1 unless started with
    /// `start_in_netns`).
    listen_ip: IpAddr,
    last_startup: Duration,
    // Declared last so it is removed after the process fields are dropped;
    // `Drop` kills etcd before any field is dropped anyway.
    dir: TempDir,
}

impl EtcdServer {
    /// Starts a plain-HTTP etcd on free loopback ports and waits (up to
    /// [`READY_TIMEOUT`]) until `GET /health` on the client port reports
    /// healthy.
    ///
    /// Returns [`TestUtilError::EtcdMissing`] if the etcd binary (Debian
    /// package `etcd-server`) is not installed.
    pub fn start() -> Result<EtcdServer, TestUtilError> {
        Self::start_inner(false)
    }

    /// Starts an etcd serving clients over HTTPS with client-certificate
    /// authentication (`--client-cert-auth`).
    ///
    /// A CA, a server certificate (SANs `127.0.0.1` and `localhost`), a client
    /// certificate and an unrelated second CA (with its own client
    /// certificate) are generated in the temporary directory; see
    /// [`ca_file`](Self::ca_file), [`cert_file`](Self::cert_file),
    /// [`key_file`](Self::key_file), [`wrong_ca_file`](Self::wrong_ca_file).
    /// Readiness is probed without TLS on a separate plain-HTTP metrics
    /// listener (`--listen-metrics-urls`), which serves the same `/health`.
    pub fn start_tls() -> Result<EtcdServer, TestUtilError> {
        Self::start_inner(true)
    }

    /// Starts a plain-HTTP etcd inside the named network namespace `ns`
    /// (`ip netns exec <ns> etcd ...`, as created by `ip netns add` or
    /// [`NetNs`](crate::netns::NetNs)) whose client URL listens on
    /// `listen_ip`, an address configured in that namespace, so that
    /// processes in other namespaces of a test topology reach it as
    /// [`endpoint`](Self::endpoint) (`http://<listen_ip>:<port>`, IPv6 in
    /// brackets). The peer and metrics listeners stay on the namespace's
    /// `127.0.0.1`.
    ///
    /// Readiness (`GET /health` on the client address) is probed from a
    /// thread that joined the namespace, so the caller may live in any
    /// namespace; so must every client: [`client_addr`](Self::client_addr)
    /// is only reachable from namespaces routed to `listen_ip`.
    /// [`stop`](Self::stop), [`restart`](Self::restart) and `Drop` work as for
    /// [`start`](Self::start); [`netns`](Self::netns) and
    /// [`listen_ip`](Self::listen_ip) report the placement.
    ///
    /// Errors: [`TestUtilError::EtcdMissing`] without the etcd binary;
    /// [`TestUtilError::Exited`] (with etcd's log tail) when the namespace
    /// does not exist or `listen_ip` is not an address in it.
    pub fn start_in_netns(ns: &str, listen_ip: IpAddr) -> Result<EtcdServer, TestUtilError> {
        Self::start_with(false, Some(ns), listen_ip)
    }

    fn start_inner(tls: bool) -> Result<EtcdServer, TestUtilError> {
        Self::start_with(tls, None, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    fn start_with(
        tls: bool,
        netns: Option<&str>,
        listen_ip: IpAddr,
    ) -> Result<EtcdServer, TestUtilError> {
        let etcd_bin = etcd_binary()?;
        let mut attempt = 1;
        loop {
            let mut server = Self::prepare(etcd_bin.clone(), tls)?;
            server.netns = netns.map(str::to_owned);
            server.listen_ip = listen_ip;
            match server.spawn().and_then(|()| server.wait_ready()) {
                Ok(()) => return Ok(server),
                Err(TestUtilError::Exited { log_tail, .. })
                    if attempt < START_ATTEMPTS && log_tail.contains("address already in use") =>
                {
                    // Another process grabbed one of our ports between
                    // probing and etcd binding it: try again with new ports.
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn prepare(etcd_bin: PathBuf, tls: bool) -> Result<EtcdServer, TestUtilError> {
        let dir = tempfile::Builder::new()
            .prefix("flannel-etcd-")
            .tempdir()
            .map_err(|e| TestUtilError::io("creating the etcd temp dir", e))?;
        let [client_port, peer_port, metrics_port] = reserve_ports()?;
        let unique = format!(
            "{}-{}-{}",
            std::process::id(),
            SERVER_COUNTER.fetch_add(1, Ordering::Relaxed),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let tls = if tls {
            Some(generate_certs(dir.path())?)
        } else {
            None
        };
        Ok(EtcdServer {
            child: None,
            watchdog: None,
            etcd_bin,
            name: format!("flannel-test-{unique}"),
            token: format!("flannel-test-token-{unique}"),
            client_port,
            peer_port,
            metrics_port,
            data_dir: dir.path().join("data"),
            log_path: dir.path().join("etcd.log"),
            tls,
            netns: None,
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            last_startup: Duration::ZERO,
            dir,
        })
    }

    /// The client URL, e.g. `http://127.0.0.1:40123` or
    /// `https://127.0.0.1:40123` (for [`start_in_netns`](Self::start_in_netns):
    /// `http://<listen_ip>:<port>`).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr())
    }

    /// All client URLs (a single one: this is a one-member cluster).
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// The client port (on 127.0.0.1, or on the `listen_ip` of
    /// [`start_in_netns`](Self::start_in_netns)).
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The client address, `127.0.0.1:<client_port>` (for
    /// [`start_in_netns`](Self::start_in_netns): `<listen_ip>:<client_port>`).
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen_ip, self.client_port)
    }

    /// The network namespace etcd runs in: `Some(ns)` for
    /// [`start_in_netns`](Self::start_in_netns), `None` otherwise (the
    /// caller's namespace).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The address the client listener is bound to (127.0.0.1 unless
    /// started with [`start_in_netns`](Self::start_in_netns)).
    pub fn listen_ip(&self) -> IpAddr {
        self.listen_ip
    }

    /// The peer port on 127.0.0.1 (of etcd's namespace).
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// The plain-HTTP metrics/health port on 127.0.0.1 of etcd's namespace (serves `/health` and
    /// `/metrics` without TLS, also for TLS servers).
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// Whether clients must use TLS (server started with [`start_tls`](Self::start_tls)).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The temporary directory holding the data dir, log and certificates.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// etcd's data directory (kept across [`restart`](Self::restart)).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The file receiving etcd's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// How long the last (re)start took until etcd served.
    pub fn last_startup(&self) -> Duration {
        self.last_startup
    }

    fn tls_files(&self, what: &str) -> &TlsFiles {
        match &self.tls {
            Some(files) => files,
            None => panic!("EtcdServer::{what}() needs a server started with start_tls()"),
        }
    }

    /// PEM file of the CA that signed the server and client certificates.
    ///
    /// # Panics
    /// If the server was not started with [`start_tls`](Self::start_tls).
    pub fn ca_file(&self) -> &Path {
        &self.tls_files("ca_file").ca
    }

    /// PEM file of the client certificate (signed by [`ca_file`](Self::ca_file)).
    ///
    /// # Panics
    /// If the server was not started with [`start_tls`](Self::start_tls).
    pub fn cert_file(&self) -> &Path {
        &self.tls_files("cert_file").client_cert
    }

    /// PEM file of the client certificate's private key (PKCS#8, ECDSA P-256).
    ///
    /// # Panics
    /// If the server was not started with [`start_tls`](Self::start_tls).
    pub fn key_file(&self) -> &Path {
        &self.tls_files("key_file").client_key
    }

    /// PEM file of a second CA unrelated to the server's certificates; using
    /// it as the trusted CA must make server verification fail.
    ///
    /// # Panics
    /// If the server was not started with [`start_tls`](Self::start_tls).
    pub fn wrong_ca_file(&self) -> &Path {
        &self.tls_files("wrong_ca_file").wrong_ca
    }

    /// PEM file of a client certificate signed by the wrong CA; etcd must
    /// reject it.
    ///
    /// # Panics
    /// If the server was not started with [`start_tls`](Self::start_tls).
    pub fn wrong_cert_file(&self) -> &Path {
        &self.tls_files("wrong_cert_file").wrong_client_cert
    }

    /// Private key of [`wrong_cert_file`](Self::wrong_cert_file).
    ///
    /// # Panics
    /// If the server was not started with [`start_tls`](Self::start_tls).
    pub fn wrong_key_file(&self) -> &Path {
        &self.tls_files("wrong_key_file").wrong_client_key
    }

    /// PEM file of the server certificate.
    ///
    /// # Panics
    /// If the server was not started with [`start_tls`](Self::start_tls).
    pub fn server_cert_file(&self) -> &Path {
        &self.tls_files("server_cert_file").server_cert
    }

    /// PEM file of the server certificate's private key.
    ///
    /// # Panics
    /// If the server was not started with [`start_tls`](Self::start_tls).
    pub fn server_key_file(&self) -> &Path {
        &self.tls_files("server_key_file").server_key
    }

    /// Whether the etcd process is currently alive.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The pid of the running etcd process, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops etcd: SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL. Does
    /// nothing if it is not running. Data and ports are kept for
    /// [`restart`](Self::restart).
    pub fn stop(&mut self) {
        self.kill_watchdog();
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                let deadline = Instant::now() + STOP_GRACE;
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again with the same data directory, ports and flags
    /// (stopping it first if it is running) and waits until it serves.
    pub fn restart(&mut self) -> Result<(), TestUtilError> {
        self.stop();
        self.spawn()?;
        self.wait_ready()
    }

    /// The last `n` lines of etcd's log (stdout and stderr).
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log_path, n)
    }

    fn args(&self) -> Vec<String> {
        let client_scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{client_scheme}://{}", self.client_addr());
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut args = vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={}={peer}", self.name),
            format!("--initial-cluster-token={}", self.token),
            "--initial-cluster-state=new".to_owned(),
            format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                self.metrics_port
            ),
            // A restarted single member otherwise waits a full default
            // election timeout (1 s) before it elects itself; there are no
            // peers, so short timeouts cannot cause spurious elections.
            "--heartbeat-interval=20".to_owned(),
            "--election-timeout=200".to_owned(),
            // etcd 3.4 defaults to the deprecated capnslog logger, which
            // ignores --log-outputs; zap honours --log-level.
            "--logger=zap".to_owned(),
            "--log-outputs=stderr".to_owned(),
            "--log-level=error".to_owned(),
        ];
        if let Some(tls) = &self.tls {
            args.extend([
                format!("--cert-file={}", tls.server_cert.display()),
                format!("--key-file={}", tls.server_key.display()),
                format!("--trusted-ca-file={}", tls.ca.display()),
                "--client-cert-auth=true".to_owned(),
            ]);
        }
        args
    }

    fn spawn(&mut self) -> Result<(), TestUtilError> {
        if self.child.is_some() {
            return Err(TestUtilError::State("etcd is already running".to_owned()));
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| TestUtilError::io("opening the etcd log file", e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| TestUtilError::io("duplicating the etcd log file handle", e))?;
        let mut command = match &self.netns {
            Some(ns) => {
                // `ip netns exec` execs etcd, so the child's pid is etcd's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.as_str()]).arg(&self.etcd_bin);
                c
            }
            None => Command::new(&self.etcd_bin),
        };
        let child = command
            .args(self.args())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| TestUtilError::io(format!("spawning {}", self.etcd_bin.display()), e))?;
        let pid = child.id();
        self.child = Some(child);
        // If this fails, returning the error drops/kills etcd via the caller.
        self.watchdog = Some(spawn_watchdog(pid)?);
        Ok(())
    }

    fn kill_watchdog(&mut self) {
        // Kill the watchdog before etcd is reaped so it can never signal a
        // recycled pid.
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }

    fn wait_ready(&mut self) -> Result<(), TestUtilError> {
        let started = Instant::now();
        let addr = if self.tls.is_some() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.metrics_port)
        } else {
            self.client_addr()
        };
        loop {
            let exited = match &mut self.child {
                Some(child) => child
                    .try_wait()
                    .map_err(|e| TestUtilError::io("checking the etcd process", e))?,
                None => return Err(TestUtilError::State("etcd is not running".to_owned())),
            };
            if let Some(status) = exited {
                self.kill_watchdog();
                self.child = None;
                return Err(TestUtilError::Exited {
                    status: status.to_string(),
                    log_tail: self.log_tail(ERROR_LOG_LINES),
                });
            }
            let probe = match &self.netns {
                Some(ns) => probe_health_in_netns(ns, addr),
                None => probe_health(addr),
            };
            let reason = match probe {
                Ok(()) => {
                    self.last_startup = started.elapsed();
                    return Ok(());
                }
                Err(reason) => reason,
            };
            if started.elapsed() >= READY_TIMEOUT {
                let log_tail = self.log_tail(ERROR_LOG_LINES);
                self.stop();
                return Err(TestUtilError::NotReady {
                    timeout: READY_TIMEOUT,
                    reason,
                    log_tail,
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill_watchdog();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // `dir` (TempDir) is removed when the fields are dropped.
    }
}

/// Resolves the etcd binary, or reports the missing Debian package.
fn etcd_binary() -> Result<PathBuf, TestUtilError> {
    let path = std::env::var_os(ETCD_BIN_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ETCD_BIN));
    if path.is_file() {
        Ok(path)
    } else {
        Err(TestUtilError::EtcdMissing { path })
    }
}

/// Picks three distinct free loopback ports never handed out before by this
/// process.
fn reserve_ports() -> Result<[u16; 3], TestUtilError> {
    let mut used = USED_PORTS.lock().unwrap_or_else(PoisonError::into_inner);
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..1000 {
        if ports.len() == 3 {
            break;
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| TestUtilError::io("binding 127.0.0.1:0 to find a free port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| TestUtilError::io("reading a probe listener's address", e))?
            .port();
        if used.insert(port) {
            ports.push(port);
        }
        // Keep every probe listener open until all ports are picked so the
        // kernel cannot hand the same port out twice.
        listeners.push(listener);
    }
    drop(listeners);
    match ports[..] {
        [a, b, c] => Ok([a, b, c]),
        _ => Err(TestUtilError::State(
            "could not find three unused loopback ports".to_owned(),
        )),
    }
}

/// Starts `sh` reading from a pipe we hold; on EOF (our process died) it
/// SIGKILLs etcd.
fn spawn_watchdog(pid: u32) -> Result<Child, TestUtilError> {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"read _unused; kill -KILL "$1" 2>/dev/null"#)
        .arg("flannel-etcd-watchdog")
        .arg(pid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| TestUtilError::io("spawning the etcd watchdog (/bin/sh)", e))
}

/// [`probe_health`] from a short-lived thread that joined the network
/// namespace `ns` (`/run/netns/<ns>`).
fn probe_health_in_netns(ns: &str, addr: SocketAddr) -> Result<(), String> {
    let path = format!("{}/{ns}", crate::netns::NETNS_RUN_DIR);
    let file = File::open(&path).map_err(|e| format!("opening {path}: {e}"))?;
    thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns({path}, CLONE_NEWNET): {e}"))?;
                probe_health(addr)
            })
            .join()
            .unwrap_or_else(|_| Err("the probe thread panicked".to_owned()))
    })
}

/// One plain-HTTP `GET /health` probe; `Ok` if etcd reports healthy.
fn probe_health(addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let timeout = Some(Duration::from_secs(2));
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let status_ok = response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200");
    let body_ok = response.replace(' ', "").contains(r#""health":"true""#);
    if status_ok && body_ok {
        Ok(())
    } else {
        let first_line = response.lines().next().unwrap_or("");
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").trim();
        Err(format!("GET /health on {addr}: {first_line} {body}"))
    }
}

/// The last `n` lines of a file (empty if unreadable).
fn log_tail(path: &Path, n: usize) -> String {
    let text = match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("<cannot read {}: {e}>", path.display()),
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn cert_err(e: rcgen::Error) -> TestUtilError {
    TestUtilError::Cert(e.to_string())
}

fn write_file(path: &Path, contents: &str) -> Result<(), TestUtilError> {
    let mut file = File::create(path)
        .map_err(|e| TestUtilError::io(format!("creating {}", path.display()), e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| TestUtilError::io(format!("writing {}", path.display()), e))
}

/// Creates a self-signed CA; returns its PEM and an issuer for signing.
fn new_ca(common_name: &str) -> Result<(String, Issuer<'static, KeyPair>), TestUtilError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(cert_err)?;
    let cert = params.self_signed(&key).map_err(cert_err)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// Creates a leaf certificate signed by `issuer`; returns (cert PEM, key PEM).
fn new_leaf(
    issuer: &Issuer<'static, KeyPair>,
    common_name: &str,
    sans: &[&str],
    usages: &[ExtendedKeyUsagePurpose],
) -> Result<(String, String), TestUtilError> {
    let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(sans).map_err(cert_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages.to_vec();
    let key = KeyPair::generate().map_err(cert_err)?;
    let cert = params.signed_by(&key, issuer).map_err(cert_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Generates the CA, server, client and wrong-CA material into `dir/tls`.
fn generate_certs(dir: &Path) -> Result<TlsFiles, TestUtilError> {
    let tls_dir = dir.join("tls");
    fs::create_dir_all(&tls_dir)
        .map_err(|e| TestUtilError::io(format!("creating {}", tls_dir.display()), e))?;
    let files = TlsFiles {
        ca: tls_dir.join("ca.pem"),
        server_cert: tls_dir.join("server.pem"),
        server_key: tls_dir.join("server-key.pem"),
        client_cert: tls_dir.join("client.pem"),
        client_key: tls_dir.join("client-key.pem"),
        wrong_ca: tls_dir.join("wrong-ca.pem"),
        wrong_client_cert: tls_dir.join("wrong-client.pem"),
        wrong_client_key: tls_dir.join("wrong-client-key.pem"),
    };

    let (ca_pem, ca) = new_ca("flannel-test-ca")?;
    write_file(&files.ca, &ca_pem)?;
    let (cert, key) = new_leaf(
        &ca,
        "flannel-test-etcd-server",
        &["127.0.0.1", "localhost"],
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    write_file(&files.server_cert, &cert)?;
    write_file(&files.server_key, &key)?;
    let (cert, key) = new_leaf(
        &ca,
        "flannel-test-client",
        &[],
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    write_file(&files.client_cert, &cert)?;
    write_file(&files.client_key, &key)?;

    let (wrong_ca_pem, wrong_ca) = new_ca("flannel-test-wrong-ca")?;
    write_file(&files.wrong_ca, &wrong_ca_pem)?;
    let (cert, key) = new_leaf(
        &wrong_ca,
        "flannel-test-wrong-client",
        &[],
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    write_file(&files.wrong_client_cert, &cert)?;
    write_file(&files.wrong_client_key, &key)?;
    Ok(files)
}
