//! `--healthz-ip`/`--healthz-port`: `/healthz` (liveness), `/readyz`
//! (readiness) and `/metrics` (Prometheus) over plain HTTP/1.1.
//!
//! * `/healthz` answers 200 `flanneld is running` (Go's body) while every
//!   registered loop makes progress: the runner (through
//!   [`RunnerView::since_progress`]) and any loop registered with
//!   [`Health::register_loop`]. A loop silent for longer than its limit
//!   (default [`LIVENESS_LIMIT`]) turns it into 500 with the reason.
//! * `/readyz` answers 200 `flanneld is ready` (Go's body) only while a lease
//!   is held, the subnet file is written, the lease watch is in sync and every
//!   gate set with [`Health::set_gate`] is open; otherwise 503
//!   `flanneld is not ready yet: <first failing condition>`. It goes back to
//!   503 when a condition is lost and recovers by itself.
//! * `/metrics`: see [`crate::metrics`].
//!
//! Only `GET` and `HEAD` are served (405 otherwise), unknown paths get Go's
//! 404. [`serve`] never spawns more than [`MAX_CONNECTIONS`] connection tasks
//! and each lives at most [`CONNECTION_TIMEOUT`].

use flannel_core::config::NetConfig;
use flannel_core::lease::Lease;
use flannel_subnet::runner::RunnerStatus;
use flannel_traffic::RulesStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// A loop that has not made progress for this long is considered hung
/// (unless registered with its own limit).
pub const LIVENESS_LIMIT: Duration = Duration::from_secs(60);

/// Longest time one connection may take (reading the request and answering).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Most connections served at once; further ones wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 32;

/// Largest request head read; longer requests get 431.
const MAX_REQUEST: usize = 8 * 1024;

/// Go's `/healthz` body.
pub const HEALTHY_BODY: &str = "flanneld is running";
/// Go's `/readyz` body.
pub const READY_BODY: &str = "flanneld is ready";
/// Go's `/readyz` body before readiness; a reason follows after `: `.
pub const NOT_READY_BODY: &str = "flanneld is not ready yet";

/// The runner counters exported as metrics (a copy of [`RunnerStatus`]'s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunnerCounters {
    /// Lease events applied to the network.
    pub events: u64,
    /// Resyncs run.
    pub resyncs: u64,
    /// Watch errors (datastore outages, reconnects).
    pub watch_errors: u64,
    /// Backend errors while applying events or resyncing.
    pub reconcile_errors: u64,
    /// Successful renewals.
    pub renewals: u64,
    /// Re-acquisitions after our lease disappeared.
    pub reacquisitions: u64,
    /// Remote leases currently known.
    pub known_leases: u64,
    /// Duration of the last resync, in microseconds.
    pub last_resync_micros: u64,
    /// Failed resyncs or event batches in a row (0 when in step).
    pub consecutive_failures: u64,
    /// Delay before the next retry, in milliseconds (0 when none is due).
    pub retry_delay_millis: u64,
}

impl RunnerCounters {
    /// Reads the counters of `status`.
    pub fn of(status: &RunnerStatus) -> RunnerCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RunnerCounters {
            events: get(&status.events),
            resyncs: get(&status.resyncs),
            watch_errors: get(&status.watch_errors),
            reconcile_errors: get(&status.reconcile_errors),
            renewals: get(&status.renewals),
            reacquisitions: get(&status.reacquisitions),
            known_leases: get(&status.known_leases),
            last_resync_micros: get(&status.last_resync_micros),
            consecutive_failures: get(&status.consecutive_failures),
            retry_delay_millis: get(&status.retry_delay_millis),
        }
    }
}

/// What health, readiness and metrics read from the runner. Implemented by
/// [`RunnerStatus`]; tests may supply their own.
pub trait RunnerView: Send + Sync {
    /// True while the lease watch is connected and the datapath reflects it.
    fn in_sync(&self) -> bool;
    /// Time since the runner loop last made progress.
    fn since_progress(&self) -> Duration;
    /// The lease currently held.
    fn lease(&self) -> Option<Lease>;
    /// The counters.
    fn counters(&self) -> RunnerCounters;
}

impl RunnerView for RunnerStatus {
    fn in_sync(&self) -> bool {
        RunnerStatus::in_sync(self)
    }
    fn since_progress(&self) -> Duration {
        RunnerStatus::since_progress(self)
    }
    fn lease(&self) -> Option<Lease> {
        RunnerStatus::lease(self)
    }
    fn counters(&self) -> RunnerCounters {
        RunnerCounters::of(self)
    }
}

/// What a datastore with state of its own (the Kubernetes API: node
/// annotations, the node condition, the node watch) adds to readiness. Its
/// metric families go through [`Health::add_metrics_source`] like any
/// other.
pub trait DatastoreView: Send + Sync {
    /// `Ok` when the datastore's side is ready, else the first reason why not.
    fn readiness(&self) -> Result<(), String>;
}

/// Milliseconds since the Unix epoch (the unit of loop progress stamps).
pub fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Records that the loop owning `progress` made progress now (see
/// [`Health::register_loop`]).
pub fn mark_progress(progress: &AtomicU64) {
    progress.store(unix_millis_now(), Ordering::Relaxed);
}

struct LoopEntry {
    name: String,
    progress: Arc<AtomicU64>,
    limit: Option<Duration>,
    registered_ms: u64,
}

#[derive(Default)]
struct State {
    liveness_limit: Option<Duration>,
    view: Option<Arc<dyn RunnerView>>,
    lease: Option<Lease>,
    subnets_total: Option<u128>,
    loops: Vec<LoopEntry>,
    gates: Vec<(String, bool)>,
    rules: Option<Arc<RulesStatus>>,
    extra_metrics: Vec<MetricsSource>,
    datastore: Option<Arc<dyn DatastoreView>>,
}

/// Appends a backend's metric families (Prometheus text) to `/metrics`.
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

/// What the endpoints report. Shared (`Arc`) between the daemon, its loops
/// and [`serve`].
#[derive(Default)]
pub struct Health {
    /// True once subnet.env is written.
    subnet_file_written: AtomicBool,
    state: Mutex<State>,
}

/// A copy of what `/metrics` exports.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The runner's counters (zero before it runs).
    pub counters: RunnerCounters,
    /// The lease held, if any.
    pub lease: Option<Lease>,
    /// `/readyz` would answer 200.
    pub ready: bool,
    /// `/healthz` would answer 200.
    pub live: bool,
    /// Subnets the network can hand out, once the config is known.
    pub subnets_total: Option<u128>,
    /// Resyncs of the traffic rules that found this network's rules drifted
    /// and rewrote them (zero before the rules are set up).
    pub rule_rewrites: u64,
    /// Resyncs of the traffic rules that failed.
    pub rule_resync_failures: u64,
}

impl Health {
    /// A fresh state: live, not ready.
    pub fn new() -> Health {
        Health::default()
    }

    /// Replaces the default liveness limit ([`LIVENESS_LIMIT`]) for the runner
    /// and for loops registered without their own limit.
    pub fn with_liveness_limit(self, limit: Duration) -> Health {
        self.lock().liveness_limit = Some(limit);
        self
    }

    /// Adds a source of backend metric families, rendered after flanneld's
    /// own on every scrape.
    pub fn add_metrics_source(&self, source: MetricsSource) {
        self.lock().extra_metrics.push(source);
    }

    /// The backend metric sources.
    pub fn metrics_sources(&self) -> Vec<MetricsSource> {
        self.lock().extra_metrics.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn view(&self) -> Option<Arc<dyn RunnerView>> {
        self.lock().view.clone()
    }

    /// The network config: sizes `flannel_subnets_total`.
    pub fn set_config(&self, config: &NetConfig) {
        self.lock().subnets_total = crate::metrics::subnet_capacity(config);
    }

    /// The lease acquired (the runner's own lease takes precedence once it
    /// runs, since it follows renewals and re-acquisitions).
    pub fn set_lease(&self, lease: &Lease) {
        self.lock().lease = Some(lease.clone());
    }

    /// Whether subnet.env has been written.
    pub fn set_subnet_file_written(&self, written: bool) {
        self.subnet_file_written.store(written, Ordering::Relaxed);
    }

    /// The runner's status (normally `runner.status().clone()`).
    pub fn set_runner(&self, runner: Arc<dyn RunnerView>) {
        self.lock().view = Some(runner);
    }

    /// The traffic rules' status (normally `rules.status().clone()`):
    /// `/metrics` exports its rewrite and failure counters.
    pub fn set_rules_status(&self, status: Arc<RulesStatus>) {
        self.lock().rules = Some(status);
    }

    /// The datastore's own readiness (Kubernetes mode).
    pub fn set_datastore(&self, view: Arc<dyn DatastoreView>) {
        self.lock().datastore = Some(view);
    }

    /// Registers a loop for liveness: `progress` holds the Unix time in
    /// milliseconds of its last progress (update it with [`mark_progress`]).
    /// Registering a name again replaces it. The default limit applies.
    pub fn register_loop(&self, name: &str, progress: Arc<AtomicU64>) {
        self.register(name, progress, None);
    }

    /// Like [`Health::register_loop`] with a limit of its own.
    pub fn register_loop_with_limit(&self, name: &str, progress: Arc<AtomicU64>, limit: Duration) {
        self.register(name, progress, Some(limit));
    }

    fn register(&self, name: &str, progress: Arc<AtomicU64>, limit: Option<Duration>) {
        let entry = LoopEntry {
            name: name.to_string(),
            progress,
            limit,
            registered_ms: unix_millis_now(),
        };
        let mut state = self.lock();
        state.loops.retain(|l| l.name != name);
        state.loops.push(entry);
    }

    /// Opens or closes a readiness gate such as `rules programmed`. A gate,
    /// once set, counts until the process ends; gates are checked in the
    /// order they were first set.
    pub fn set_gate(&self, name: &str, open: bool) {
        let mut state = self.lock();
        match state.gates.iter_mut().find(|(n, _)| n == name) {
            Some(gate) => gate.1 = open,
            None => state.gates.push((name.to_string(), open)),
        }
    }

    /// `Ok` while every loop makes progress, else why not.
    pub fn liveness(&self) -> Result<(), String> {
        let limit = self.lock().liveness_limit.unwrap_or(LIVENESS_LIMIT);
        if let Some(view) = self.view() {
            let idle = view.since_progress();
            if idle > limit {
                return Err(stalled("the lease loop", idle, limit));
            }
        }
        let now = unix_millis_now();
        let state = self.lock();
        for l in &state.loops {
            let last = l.progress.load(Ordering::Relaxed).max(l.registered_ms);
            let idle = Duration::from_millis(now.saturating_sub(last));
            let limit = l.limit.unwrap_or(limit);
            if idle > limit {
                return Err(stalled(&l.name, idle, limit));
            }
        }
        Ok(())
    }

    fn current_lease(&self, view: Option<&Arc<dyn RunnerView>>) -> Option<Lease> {
        view.and_then(|v| v.lease())
            .or_else(|| self.lock().lease.clone())
    }

    /// `Ok` when ready, else the first failing condition.
    pub fn readiness(&self) -> Result<(), String> {
        let view = self.view();
        match self.current_lease(view.as_ref()) {
            None => return Err("no subnet lease held".into()),
            Some(l) if l.expiration.is_some_and(|e| e <= SystemTime::now()) => {
                return Err("the subnet lease has expired".into());
            }
            Some(_) => {}
        }
        if !self.subnet_file_written.load(Ordering::Relaxed) {
            return Err("subnet file not written".into());
        }
        match view {
            None => return Err("lease watch not started".into()),
            Some(v) if !v.in_sync() => return Err("datastore watch not in sync".into()),
            Some(_) => {}
        }
        let datastore = self.lock().datastore.clone();
        if let Some(d) = datastore {
            d.readiness()?;
        }
        let state = self.lock();
        if let Some((name, _)) = state.gates.iter().find(|(_, open)| !open) {
            return Err(format!("waiting for {name}"));
        }
        Ok(())
    }

    /// What `/metrics` exports, read now.
    pub fn snapshot(&self) -> Snapshot {
        let view = self.view();
        let (subnets_total, rules) = {
            let state = self.lock();
            (state.subnets_total, state.rules.clone())
        };
        let rule_count = |f: fn(&RulesStatus) -> &AtomicU64| {
            rules.as_deref().map_or(0, |r| f(r).load(Ordering::Relaxed))
        };
        Snapshot {
            counters: view.as_ref().map(|v| v.counters()).unwrap_or_default(),
            lease: self.current_lease(view.as_ref()),
            ready: self.readiness().is_ok(),
            live: self.liveness().is_ok(),
            subnets_total,
            rule_rewrites: rule_count(|r| &r.rewrites),
            rule_resync_failures: rule_count(|r| &r.failures),
        }
    }

    fn answer(&self, method: &str, path: &str) -> Response {
        let text = |code, body: String| Response {
            code,
            content_type: "text/plain; charset=utf-8",
            body,
            allow: false,
        };
        let known = matches!(path, "/healthz" | "/readyz" | "/metrics");
        if !known {
            return text(404, "404 page not found\n".into());
        }
        if method != "GET" && method != "HEAD" {
            let mut r = text(405, "405 method not allowed\n".into());
            r.allow = true;
            return r;
        }
        match path {
            "/healthz" => match self.liveness() {
                Ok(()) => text(200, HEALTHY_BODY.into()),
                Err(why) => text(500, format!("flanneld is not healthy: {why}")),
            },
            "/readyz" => match self.readiness() {
                Ok(()) => text(200, READY_BODY.into()),
                Err(why) => text(503, format!("{NOT_READY_BODY}: {why}")),
            },
            _ => Response {
                code: 200,
                content_type: crate::metrics::CONTENT_TYPE,
                body: crate::metrics::render(self),
                allow: false,
            },
        }
    }
}

fn stalled(name: &str, idle: Duration, limit: Duration) -> String {
    format!(
        "{name} has made no progress for {:.1}s (limit {:.1}s)",
        idle.as_secs_f64(),
        limit.as_secs_f64()
    )
}

struct Response {
    code: u16,
    content_type: &'static str,
    body: String,
    allow: bool,
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

fn bad(code: u16) -> Response {
    Response {
        code,
        content_type: "text/plain; charset=utf-8",
        body: format!("{code} {}\n", reason(code)),
        allow: false,
    }
}

/// Reads one request head and answers it; the connection is then closed.
async fn handle(mut sock: TcpStream, health: &Health) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_complete = loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if buf.len() >= MAX_REQUEST {
            break false;
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break !buf.is_empty();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf);
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let mut head_only = false;
    let resp = match (method, target, version) {
        _ if !head_complete && buf.len() >= MAX_REQUEST => bad(431),
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/") && parts.next().is_none() => {
            head_only = m == "HEAD";
            let path = t.split(['?', '#']).next().unwrap_or(t);
            health.answer(m, path)
        }
        _ => bad(400),
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nX-Content-Type-Options: nosniff\r\n",
        resp.code,
        reason(resp.code),
        resp.content_type,
        resp.body.len()
    );
    if resp.allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    if !head_only {
        out.push_str(&resp.body);
    }
    sock.write_all(out.as_bytes()).await?;
    sock.shutdown().await
}

/// Serves forever; the caller spawns it (and aborts the task to stop it).
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    match listener.local_addr() {
        Ok(addr) => info!("health server listening on {addr}"),
        Err(e) => info!("health server listening (local address unknown: {e})"),
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                // Out of descriptors and the like: do not spin.
                warn!("health server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let health = health.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(CONNECTION_TIMEOUT, handle(sock, &health)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!("health connection: {e}"),
                Err(_) => debug!("health connection timed out"),
            }
        });
    }
}
