//! The etcd v3 lease store, wire-compatible with Go flannel.
//!
//! [`EtcdStore`] implements [`LeaseStore`] on an etcd cluster (v3 API, etcd
//! 3.4 or later) with exactly the layout Go flanneld uses, so Go and Rust
//! nodes can share one datastore:
//!
//! | key | value |
//! |---|---|
//! | `<prefix>/config` | the network configuration JSON |
//! | `<prefix>/subnets/<subnet key>` | the [`LeaseAttrs`] JSON, e.g. `{"PublicIP":"1.2.3.4","PublicIPv6":null}` |
//!
//! The prefix defaults to `/coreos.com/network`; keys are joined like Go's
//! `path.Join`, so `/my/net/` and `/my/net` name the same keys.
//!
//! A lease key carries an etcd lease (TTL) granted when it is written; a key
//! written without one (a reservation) never expires and is left that way:
//! [`LeaseStore::put`] with `ttl: None` writes no etcd lease. Creation is one
//! transaction `If(Version(key) == 0) Then(Put(key, value, lease))`; renewal
//! grants a fresh lease and overwrites the key, as Go does (no KeepAlive).
//!
//! Every request is bounded by [`EtcdConfig::timeout`]; an unreachable
//! cluster gives [`ManagerError::Unavailable`] instead of hanging, and the
//! same store works again once etcd is back (the underlying gRPC channel
//! reconnects by itself). Watches are plain streams: nothing is spawned.
//!
//! With several endpoints the store keeps one connection per endpoint and
//! sends every request to the endpoint that answered last; when it does not
//! answer, the request moves on to the next one, which is then used from
//! that point on. A dead member so costs one failed attempt, not half of all
//! requests (as a round-robin balancer would).
//!
//! The store also notices when the cluster behind the endpoints was rebuilt
//! or replaced (its cluster id changed, or its revision went back below one
//! it already answered): it logs a warning, and a [`LeaseStore::watch`]
//! from a revision handed out before that asks for a fresh listing
//! ([`ManagerError::Compacted`]) instead of resuming at a revision of the
//! old cluster, where it would miss every change until the new cluster
//! reached it. A watch opened at a revision the cluster has not reached yet
//! is treated the same way. (A cluster rebuilt with the same cluster id that
//! has already passed our revision before we ask it anything cannot be told
//! apart; the runner still re-acquires its lease when a listing lacks it.)
//!
//! Enabled by the crate feature `etcd`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flannel_core::manager::ManagerError> {
//! use flannel_subnet::etcd::{EtcdConfig, EtcdStore};
//! use flannel_subnet::store::LeaseStore;
//! let store = EtcdStore::connect(EtcdConfig {
//!     endpoints: vec!["http://127.0.0.1:2379".into()],
//!     ..EtcdConfig::default()
//! })
//! .await?;
//! store.put_config(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#).await?;
//! let listing = store.list().await?;
//! println!("{} leases at revision {}", listing.leases.len(), listing.revision);
//! # Ok(())
//! # }
//! ```

use crate::store::{LeaseStore, Listing, StoreBatch, StoreEvent, StoreWatch};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, ResponseHeader, TlsOptions, Txn, TxnOp, WatchOptions, WatchResponse,
    WatchStream,
};
use flannel_core::key::SubnetKey;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::manager::{LEASE_TTL, ManagerError};
use futures_util::StreamExt;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tracing::{debug, info, warn};

/// Keys per page when listing leases: about 2 MiB of responses, half of a gRPC
/// client's default message limit.
pub const LIST_PAGE: i64 = 10_000;

/// The first key after every key starting with `prefix` (etcd's range end
/// for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

/// Go flannel's default `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// Go flannel's default `--etcd-endpoints`.
pub const DEFAULT_ENDPOINTS: [&str; 2] = ["http://127.0.0.1:4001", "http://127.0.0.1:2379"];

/// The default bound on each etcd request and connection attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The warning Go flannel prints when etcd is reached without TLS. The
/// store does not print it (a caller retrying [`EtcdStore::connect`] would
/// repeat it): print it once, when [`EtcdConfig::uses_tls`] is false.
pub const INSECURE_WARNING: &str =
    "no certificate provided: connecting to etcd with http. This is insecure";

/// The error Go flannel reports when `<prefix>/config` is missing.
pub const CONFIG_NOT_FOUND: &str =
    "flannel config not found in etcd store. Did you create your config using etcdv3 API?";

/// How to reach etcd (the `--etcd-*` flags).
///
/// `Debug` never prints the password.
#[derive(Clone)]
pub struct EtcdConfig {
    /// Client URLs (`http://host:2379`, `https://host:2379`); a URL without a
    /// scheme gets `https://` when TLS is configured, `http://` otherwise.
    pub endpoints: Vec<String>,
    /// The key prefix (`--etcd-prefix`), default `/coreos.com/network`; a
    /// trailing `/` is ignored. Joined like Go's `path.Join`, so an empty
    /// prefix gives the relative keys `config` and `subnets/...`, as in Go.
    pub prefix: String,
    /// etcd v3 auth user (`--etcd-username`).
    pub username: Option<String>,
    /// etcd v3 auth password (`--etcd-password`); never logged.
    pub password: Option<String>,
    /// Client private key, PEM (`--etcd-keyfile`).
    pub key_file: Option<PathBuf>,
    /// Client certificate, PEM (`--etcd-certfile`).
    pub cert_file: Option<PathBuf>,
    /// CA bundle to verify the servers with, PEM (`--etcd-cafile`). Only used
    /// when both `key_file` and `cert_file` are set. Without it no server
    /// certificate is trusted (this build carries no system root store).
    pub ca_file: Option<PathBuf>,
    /// Bound on connecting and on each request, default 5 s. Also the HTTP/2
    /// keep-alive timeout that detects a dead connection under a watch.
    pub timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: DEFAULT_ENDPOINTS.iter().map(|s| s.to_string()).collect(),
            prefix: DEFAULT_PREFIX.to_string(),
            username: None,
            password: None,
            key_file: None,
            cert_file: None,
            ca_file: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl EtcdConfig {
    /// True when TLS is used: both `key_file` and `cert_file` are set.
    pub fn uses_tls(&self) -> bool {
        self.key_file.is_some() && self.cert_file.is_some()
    }

    /// The endpoints, with comma-separated entries split and blanks dropped.
    pub fn endpoint_list(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("key_file", &self.key_file)
            .field("cert_file", &self.cert_file)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Joins key path elements like Go's `path.Join`: empty elements are
/// skipped, and the result is cleaned (no repeated or trailing `/`, `.` and
/// `..` resolved).
fn join_key(elems: &[&str]) -> String {
    let joined = elems
        .iter()
        .filter(|e| !e.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    if joined.is_empty() {
        return String::new();
    }
    let rooted = joined.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let body = parts.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_string(),
        (false, false) => body,
    }
}

/// Appends the text of `e` and its sources to `out`, skipping parts already
/// there and tonic's bare "transport error" wrapper, so a message reads
/// "tcp connect error: Connection refused" rather than repeating itself.
fn push_chain(out: &mut String, e: &(dyn std::error::Error + 'static)) {
    let mut cur = Some(e);
    while let Some(e) = cur {
        let text = e.to_string();
        let wrapper = text == "transport error" && e.source().is_some();
        if !wrapper && !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cur = e.source();
    }
}

/// The text of `e` and its sources (see [`push_chain`]).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    push_chain(&mut out, e);
    out
}

/// gRPC status codes (tonic's `Code` discriminants).
mod code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const ABORTED: i32 = 10;
    pub const UNAVAILABLE: i32 = 14;
}

/// True when an error text says a TLS handshake or certificate check failed.
fn is_tls_failure(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "unknownissuer", "x509"]
        .iter()
        .any(|w| t.contains(w))
}

/// What error messages and time bounds need to know about the connection.
#[derive(Clone)]
struct Ctx {
    /// The endpoints, comma-separated, for logs.
    endpoints: String,
    timeout: Duration,
    tls: bool,
}

impl Ctx {
    /// Maps an etcd client error: transport trouble is `Unavailable`
    /// (retryable); refused credentials, a failed TLS handshake and invalid
    /// arguments are `Other` (permanent).
    fn error(&self, what: &str, on: &str, e: etcd_client::Error) -> ManagerError {
        let (retryable, text) = match &e {
            etcd_client::Error::GRpcStatus(s) => {
                let mut text = format!("{:?}: {}", s.code(), s.message());
                if let Some(src) = std::error::Error::source(s) {
                    push_chain(&mut text, src);
                }
                let retryable = matches!(
                    i32::from(s.code()),
                    code::CANCELLED
                        | code::UNKNOWN
                        | code::DEADLINE_EXCEEDED
                        | code::RESOURCE_EXHAUSTED
                        | code::ABORTED
                        | code::UNAVAILABLE
                );
                (retryable, text)
            }
            etcd_client::Error::TransportError(t) => (true, chain(t)),
            etcd_client::Error::IoError(io) => (true, chain(io)),
            etcd_client::Error::WatchError(w) => (true, format!("watch error: {w}")),
            other => (false, other.to_string()),
        };
        let msg = format!("etcd {what} on {on}: {text}");
        if self.tls && is_tls_failure(&text) {
            ManagerError::Other(format!(
                "{msg} (TLS failure: check the etcd CA, certificate and key files)"
            ))
        } else if retryable {
            ManagerError::Unavailable(msg)
        } else {
            ManagerError::Other(msg)
        }
    }

    /// Runs one etcd request to the endpoint `on` with the configured time
    /// bound.
    async fn call<T>(
        &self,
        what: &str,
        on: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, ManagerError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(what, on, e)),
            Err(_) => Err(ManagerError::Unavailable(format!(
                "etcd {what} on {on}: no answer within {:.1} s",
                self.timeout.as_secs_f64()
            ))),
        }
    }
}

/// One endpoint and its client, connected on first use (with credentials,
/// connecting is a round trip that a dead endpoint would fail).
struct Member {
    url: String,
    client: Mutex<Option<Client>>,
}

/// What the store has seen of the cluster behind its endpoints.
#[derive(Debug, Default)]
struct Seen {
    /// The cluster id of the last answer.
    cluster_id: Option<u64>,
    /// The highest revision answered.
    revision: i64,
    /// How many rebuilds were noticed: the cluster generation.
    generation: u64,
    /// The last revisions handed out (by listings and watch batches) with
    /// the generation they belong to, newest last: a watch resuming from
    /// one of an older generation must re-list.
    handed: std::collections::VecDeque<(i64, u64)>,
}

/// How many handed-out revisions [`Seen`] remembers.
const HANDED: usize = 64;

impl Seen {
    fn hand_out(&mut self, revision: i64, generation: u64) {
        if self.handed.len() >= HANDED {
            self.handed.pop_front();
        }
        self.handed.push_back((revision, generation));
    }

    /// True when `revision` was last handed out by an older generation.
    fn is_stale(&self, revision: i64) -> bool {
        self.handed
            .iter()
            .rev()
            .find(|(r, _)| *r == revision)
            .is_some_and(|(_, g)| *g != self.generation)
    }
}

/// State shared by the clones of one store.
struct Shared {
    members: Vec<Member>,
    /// The member requests go to first: the one that answered last.
    current: AtomicUsize,
    options: ConnectOptions,
    seen: Mutex<Seen>,
}

/// The endpoints of a store and what it has seen of the cluster.
#[derive(Clone)]
struct Conn {
    shared: Arc<Shared>,
    ctx: Ctx,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A [`LeaseStore`] on etcd (v3 API), laid out exactly as Go flannel's.
#[derive(Clone)]
pub struct EtcdStore {
    conn: Conn,
    /// The client of the endpoint that answered at connect time.
    client: Client,
    /// `<prefix>/config`.
    config_key: String,
    /// `<prefix>/subnets/` (with the trailing slash: the listing range).
    subnets_dir: String,
    /// Bad kvs already warned about, by (key, modification revision): a
    /// re-list does not repeat the warning, a new value of the key does.
    warned: Arc<Mutex<std::collections::HashSet<WarnedKv>>>,
}

/// A bad kv warned about: (key bytes, modification revision).
type WarnedKv = (Vec<u8>, i64);

/// At most this many bad kvs are remembered; past it the memory is
/// cleared (and each is warned about once more), so hostile churn cannot
/// grow it without bound.
const WARNED_MAX: usize = 10_000;

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.conn.ctx.endpoints)
            .field("config_key", &self.config_key)
            .field("subnets_dir", &self.subnets_dir)
            .field("timeout", &self.conn.ctx.timeout)
            .finish_non_exhaustive()
    }
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, ManagerError> {
    std::fs::read(path)
        .map_err(|e| ManagerError::Other(format!("reading etcd {what} {}: {e}", path.display())))
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers (one read of the config
    /// key), so a wrong endpoint, CA, certificate or password is reported
    /// here, naming the endpoints and the cause.
    ///
    /// TLS is used only when both `key_file` and `cert_file` are set (then
    /// `ca_file` as the trusted roots); otherwise the connection is plain
    /// (print [`INSECURE_WARNING`] once, as Go flannel does).
    ///
    /// Errors: [`ManagerError::Unavailable`] when etcd cannot be reached
    /// (retryable), [`ManagerError::Other`] for bad TLS material, a TLS
    /// handshake failure or refused credentials.
    pub async fn connect(cfg: EtcdConfig) -> Result<EtcdStore, ManagerError> {
        let endpoints = cfg.endpoint_list();
        if endpoints.is_empty() {
            return Err(ManagerError::Other("no etcd endpoints given".into()));
        }
        let timeout = cfg.timeout.max(Duration::from_millis(100));
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), timeout)
            .with_require_leader(true);
        let tls = match (&cfg.key_file, &cfg.cert_file) {
            (Some(key), Some(cert)) => {
                let identity =
                    Identity::from_pem(read_pem("certificate", cert)?, read_pem("key", key)?);
                let mut tls = TlsOptions::new().identity(identity);
                if let Some(ca) = &cfg.ca_file {
                    tls = tls.ca_certificate(Certificate::from_pem(read_pem("CA", ca)?));
                }
                opts = opts.with_tls(tls);
                true
            }
            // The caller prints INSECURE_WARNING (once, not per attempt).
            _ => false,
        };
        if let Some(user) = &cfg.username {
            let password = cfg.password.clone().unwrap_or_default();
            // Simple auth tokens expire (5 min by default): re-authenticate.
            opts = opts
                .with_user(user.clone(), password)
                .with_auto_token_refresh(true);
        }
        let ctx = Ctx {
            endpoints: endpoints.join(","),
            timeout,
            tls,
        };
        let shared = Arc::new(Shared {
            members: endpoints
                .into_iter()
                .map(|url| Member {
                    url,
                    client: Mutex::new(None),
                })
                .collect(),
            current: AtomicUsize::new(0),
            options: opts,
            seen: Mutex::new(Seen::default()),
        });
        let prefix = cfg.prefix.as_str();
        let config_key = join_key(&[prefix, "config"]);
        let conn = Conn { shared, ctx };
        // Probe now (the channels connect lazily) so that a wrong endpoint
        // or CA shows up here rather than at the first lease call.
        let key = config_key.clone();
        let probed = conn
            .call("connect", |c| {
                let key = key.clone();
                async move {
                    let mut kv = c.kv_client();
                    let resp = kv
                        .get(key, Some(GetOptions::new().with_count_only()))
                        .await?;
                    Ok((c, resp))
                }
            })
            .await;
        match probed {
            // A server refusing our client certificate just closes the
            // connection; say what to look at.
            Err(ManagerError::Unavailable(m)) if conn.ctx.tls => {
                Err(ManagerError::Unavailable(format!(
                    "{m} (TLS is on: if etcd is up, check that it accepts the client certificate)"
                )))
            }
            Err(e) => Err(e),
            Ok((client, resp)) => {
                conn.observe(resp.header(), 0);
                debug!(endpoints = %conn.ctx.endpoints, "connected to etcd");
                Ok(EtcdStore {
                    conn,
                    client,
                    config_key,
                    subnets_dir: join_key(&[prefix, "subnets"]) + "/",
                    warned: Arc::default(),
                })
            }
        }
    }
}

impl Conn {
    /// The client of member `i`, connecting it on first use.
    async fn member_client(&self, i: usize) -> Result<Client, ManagerError> {
        let member = &self.shared.members[i];
        if let Some(c) = lock(&member.client).clone() {
            return Ok(c);
        }
        // Without credentials this only builds the (lazy) channel; with them
        // it authenticates, which is the first round trip.
        let client = self
            .ctx
            .call(
                "connect",
                &member.url,
                Client::connect([member.url.as_str()], Some(self.shared.options.clone())),
            )
            .await?;
        *lock(&member.client) = Some(client.clone());
        Ok(client)
    }

    /// Runs one request, first on the endpoint that answered last, then on
    /// the others in turn while they are unavailable; the one that answers
    /// is used first from now on. `request` may be called once per endpoint.
    async fn call<T, F, Fut>(&self, what: &str, request: F) -> Result<T, ManagerError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let members = &self.shared.members;
        let n = members.len();
        let first = self.shared.current.load(Ordering::Relaxed) % n;
        let mut failures: Vec<String> = Vec::new();
        for step in 0..n {
            let i = (first + step) % n;
            let url = members[i].url.as_str();
            let attempt = async {
                let client = self.member_client(i).await?;
                self.ctx.call(what, url, request(client)).await
            };
            match attempt.await {
                Ok(v) => {
                    if step > 0
                        && self
                            .shared
                            .current
                            .compare_exchange(first, i, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                    {
                        info!(
                            "etcd endpoint {} did not answer; using {url} from now on",
                            members[first].url
                        );
                    }
                    return Ok(v);
                }
                Err(ManagerError::Unavailable(m)) if n > 1 => failures.push(m),
                Err(e) => return Err(e),
            }
        }
        Err(ManagerError::Unavailable(failures.join("; ")))
    }

    /// The highest revision answered so far: a linearizable answer to a
    /// request sent after it cannot be older, unless the cluster changed.
    fn floor(&self) -> i64 {
        lock(&self.shared.seen).revision
    }

    /// Records an answer's header; true (with a warning) when it shows a
    /// rebuilt or replaced cluster: another cluster id, or a revision below
    /// `floor` (a revision this cluster had already reached).
    fn observe(&self, header: Option<&ResponseHeader>, floor: i64) -> bool {
        let Some(h) = header else {
            return false;
        };
        let mut seen = lock(&self.shared.seen);
        let why = match seen.cluster_id {
            Some(id) if id != h.cluster_id() => Some(format!(
                "its cluster id changed from {id:x} to {:x}",
                h.cluster_id()
            )),
            _ if h.revision() < floor => Some(format!(
                "its revision went back from {floor} to {}",
                h.revision()
            )),
            _ => None,
        };
        seen.cluster_id = Some(h.cluster_id());
        match why {
            Some(why) => {
                seen.revision = h.revision();
                seen.generation += 1;
                drop(seen);
                warn!(
                    "the etcd cluster at {} was rebuilt or replaced ({why}): re-listing every lease \
                     instead of resuming the watch",
                    self.ctx.endpoints
                );
                true
            }
            None => {
                seen.revision = seen.revision.max(h.revision());
                false
            }
        }
    }
}

impl EtcdStore {
    /// The underlying etcd client (cheap to clone), for tools and tests: the
    /// one of the endpoint that answered at connect time.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The endpoint requests go to first: the one that answered last.
    pub fn current_endpoint(&self) -> &str {
        let shared = &self.conn.shared;
        let i = shared.current.load(Ordering::Relaxed) % shared.members.len();
        &shared.members[i].url
    }

    /// The configuration key, `<prefix>/config`.
    pub fn config_key(&self) -> &str {
        &self.config_key
    }

    /// The etcd key of a lease, `<prefix>/subnets/<key>`.
    pub fn lease_key(&self, key: &SubnetKey) -> String {
        format!("{}{key}", self.subnets_dir)
    }

    /// Writes the network configuration JSON to `<prefix>/config` (as
    /// `etcdctl put` would; the text is stored unchanged).
    pub async fn put_config(&self, json: &str) -> Result<(), ManagerError> {
        let floor = self.conn.floor();
        let resp = self
            .conn
            .call("put config", |c| {
                let (key, json) = (self.config_key.clone(), json.to_string());
                async move { c.kv_client().put(key, json, None).await }
            })
            .await?;
        self.conn.observe(resp.header(), floor);
        Ok(())
    }

    /// Logs `message` for `kv` unless this very kv (key and modification
    /// revision) was warned about before.
    fn warn_once(&self, kv: &KeyValue, message: impl FnOnce() -> String) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.len() >= WARNED_MAX {
            warned.clear();
        }
        if warned.insert((kv.key().to_vec(), kv.mod_revision())) {
            warn!("{}", message());
        }
    }

    /// Decodes one lease kv; `None` (with a warning, once per kv) for a key
    /// or value that is not flannel's. `expiration` is computed by the
    /// caller.
    fn decode(&self, kv: &KeyValue, expiration: Option<SystemTime>) -> Option<Lease> {
        let key = self.decode_key(kv)?;
        let value = match kv.value_str() {
            Ok(v) => v,
            Err(e) => {
                self.warn_once(kv, || {
                    format!(
                        "ignoring bad subnet node {}: value is not UTF-8: {e}",
                        key_text(kv)
                    )
                });
                return None;
            }
        };
        let attrs = match LeaseAttrs::from_json(value) {
            Ok(a) => a,
            Err(e) => {
                self.warn_once(kv, || {
                    format!("ignoring bad subnet node {}: {e}", key_text(kv))
                });
                return None;
            }
        };
        let mut lease = Lease::new(key, attrs);
        lease.expiration = expiration;
        lease.asof = kv.mod_revision();
        Some(lease)
    }

    fn decode_key(&self, kv: &KeyValue) -> Option<SubnetKey> {
        let text = key_text(kv);
        let Some(name) = text.strip_prefix(&self.subnets_dir) else {
            self.warn_once(kv, || {
                format!(
                    "ignoring bad subnet key {text}: not under {}",
                    self.subnets_dir
                )
            });
            return None;
        };
        if name.contains('/') {
            self.warn_once(kv, || {
                format!("ignoring bad subnet key {text}: nested path")
            });
            return None;
        }
        match name.parse::<SubnetKey>() {
            Ok(k) => Some(k),
            Err(e) => {
                self.warn_once(kv, || format!("ignoring bad subnet key {text}: {e}"));
                None
            }
        }
    }

    /// The expiration of a listed or watched kv without a TimeToLive RPC:
    /// `None` for a key without an etcd lease (a reservation), otherwise
    /// now + [`LEASE_TTL`]. Flannel always grants 24 h leases, so this is an
    /// upper bound; asking etcd for every key's TTL (as Go does) costs one RPC
    /// per lease on every listing, which does not scale to big clusters, and
    /// nothing downstream needs more than "expires / never expires" for
    /// remote leases. [`LeaseStore::get`] asks etcd for the exact TTL.
    fn approx_expiration(kv: &KeyValue) -> Option<SystemTime> {
        (kv.lease() != 0).then(|| SystemTime::now() + LEASE_TTL)
    }

    /// Grants an etcd lease of `ttl` (whole seconds, at least 1).
    async fn grant(&self, ttl: Duration) -> Result<i64, ManagerError> {
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        let floor = self.conn.floor();
        let resp = self
            .conn
            .call("lease grant", |c| async move {
                c.lease_client().grant(secs, None).await
            })
            .await?;
        self.conn.observe(resp.header(), floor);
        Ok(resp.id())
    }

    fn written(key: &SubnetKey, attrs: &LeaseAttrs, ttl: Option<Duration>, revision: i64) -> Lease {
        let mut lease = Lease::new(*key, attrs.clone());
        lease.expiration = ttl.map(|t| SystemTime::now() + t);
        lease.asof = revision;
        lease
    }
}

fn key_text(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}

#[async_trait::async_trait]
impl LeaseStore for EtcdStore {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn get_config(&self) -> Result<String, ManagerError> {
        let floor = self.conn.floor();
        let resp = self
            .conn
            .call("get config", |c| {
                let key = self.config_key.clone();
                async move { c.kv_client().get(key, None).await }
            })
            .await?;
        self.conn.observe(resp.header(), floor);
        let Some(item) = resp.kvs().first() else {
            return Err(ManagerError::ConfigNotFound(CONFIG_NOT_FOUND.into()));
        };
        item.value_str().map(str::to_string).map_err(|e| {
            ManagerError::Other(format!("etcd key {} is not UTF-8: {e}", self.config_key))
        })
    }

    async fn list(&self) -> Result<Listing, ManagerError> {
        // One range read would be simplest (Go does that), but gRPC clients
        // refuse messages over 4 MiB by default and 60,000 leases are ~11 MiB.
        // Read pages at the revision of the first page, so the listing is
        // still one consistent snapshot.
        let end = prefix_end(self.subnets_dir.as_bytes());
        let page = |from: Vec<u8>, revision: i64| {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE)
                .with_revision(revision);
            (from, opts)
        };
        let get = |(from, opts): (Vec<u8>, GetOptions)| {
            self.conn.call("list leases", move |c| {
                let (from, opts) = (from.clone(), opts.clone());
                async move { c.kv_client().get(from, Some(opts)).await }
            })
        };
        let floor = self.conn.floor();
        let mut resp = get(page(self.subnets_dir.clone().into_bytes(), 0)).await?;
        self.conn.observe(resp.header(), floor);
        let revision = resp.header().map_or(0, |h| h.revision());
        {
            let mut seen = lock(&self.conn.shared.seen);
            let generation = seen.generation;
            seen.hand_out(revision, generation);
        }
        let mut leases = Vec::new();
        loop {
            let next = match resp.kvs().last() {
                Some(last) if resp.more() => {
                    let mut from = last.key().to_vec();
                    from.push(0);
                    Some(page(from, revision))
                }
                _ => None,
            };
            let decode = |resp: &etcd_client::GetResponse, leases: &mut Vec<Lease>| {
                leases.extend(
                    resp.kvs()
                        .iter()
                        .filter_map(|kv| self.decode(kv, Self::approx_expiration(kv))),
                );
            };
            let Some(next) = next else {
                decode(&resp, &mut leases);
                break;
            };
            // Ask for the next page first, then decode this one while etcd
            // answers: `join!` polls the request (sending it) before decoding.
            let (next_resp, ()) = tokio::join!(get(next), async { decode(&resp, &mut leases) });
            resp = next_resp?;
        }
        Ok(Listing { leases, revision })
    }

    async fn get(&self, key: &SubnetKey) -> Result<Option<Lease>, ManagerError> {
        let name = self.lease_key(key);
        let floor = self.conn.floor();
        let resp = self
            .conn
            .call("get lease", |c| {
                let name = name.clone();
                async move { c.kv_client().get(name, None).await }
            })
            .await?;
        self.conn.observe(resp.header(), floor);
        let Some(item) = resp.kvs().first() else {
            return Ok(None);
        };
        let expiration = match item.lease() {
            0 => None,
            id => {
                let ttl = self
                    .conn
                    .call("lease time-to-live", |c| async move {
                        c.lease_client().time_to_live(id, None).await
                    })
                    .await?
                    .ttl();
                // -1: the lease ran out between the two reads.
                Some(SystemTime::now() + Duration::from_secs(ttl.max(0).unsigned_abs()))
            }
        };
        let Some(lease) = self.decode(item, expiration) else {
            return Err(ManagerError::Other(format!(
                "etcd key {name} does not hold a valid lease"
            )));
        };
        Ok(Some(lease))
    }

    async fn create(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Lease, ManagerError> {
        let name = self.lease_key(key);
        let id = self.grant(ttl).await?;
        let txn = Txn::new()
            .when([Compare::version(name.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                name,
                attrs.to_json(),
                Some(PutOptions::new().with_lease(id)),
            )]);
        let floor = self.conn.floor();
        let result = self
            .conn
            .call("create lease", |c| {
                let txn = txn.clone();
                async move { c.kv_client().txn(txn).await }
            })
            .await;
        if let Ok(resp) = &result {
            self.conn.observe(resp.header(), floor);
        }
        let revision = match result {
            Ok(resp) if resp.succeeded() => resp.header().map_or(0, |h| h.revision()),
            other => {
                let revoke = self.conn.call("lease revoke", |c| async move {
                    c.lease_client().revoke(id).await
                });
                if let Err(e) = revoke.await {
                    debug!("could not revoke unused etcd lease {id:x}: {e}");
                }
                return Err(match other {
                    Err(e) => e,
                    Ok(_) => ManagerError::AlreadyExists(*key),
                });
            }
        };
        Ok(Self::written(key, attrs, Some(ttl), revision))
    }

    async fn put(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Lease, ManagerError> {
        let options = match ttl {
            Some(t) => Some(PutOptions::new().with_lease(self.grant(t).await?)),
            None => None,
        };
        let (name, value) = (self.lease_key(key), attrs.to_json());
        let floor = self.conn.floor();
        let resp = self
            .conn
            .call("put lease", |c| {
                let (name, value, options) = (name.clone(), value.clone(), options.clone());
                async move { c.kv_client().put(name, value, options).await }
            })
            .await?;
        self.conn.observe(resp.header(), floor);
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(Self::written(key, attrs, ttl, revision))
    }

    async fn delete(&self, key: &SubnetKey) -> Result<(), ManagerError> {
        let name = self.lease_key(key);
        let floor = self.conn.floor();
        let resp = self
            .conn
            .call("delete lease", |c| {
                let name = name.clone();
                async move { c.kv_client().delete(name, None).await }
            })
            .await?;
        self.conn.observe(resp.header(), floor);
        Ok(())
    }

    async fn watch(&self, revision: i64) -> Result<StoreWatch, ManagerError> {
        let generation = {
            let seen = lock(&self.conn.shared.seen);
            if seen.is_stale(revision) {
                // The revision is one of a cluster that is gone.
                return Err(ManagerError::Compacted(revision));
            }
            seen.generation
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision.saturating_add(1));
        // Wait for the server's first answer ("created"): its header says
        // which cluster answers and how far it is.
        let (stream, first) = self
            .conn
            .call("watch", |c| {
                let (key, options) = (self.subnets_dir.clone(), options.clone());
                async move {
                    let mut stream = c.watch_client().watch(key, Some(options)).await?;
                    let first = stream.message().await?;
                    Ok((stream, first))
                }
            })
            .await?;
        let on = self.current_endpoint().to_string();
        let Some(first) = first else {
            return Err(ManagerError::Unavailable(format!(
                "etcd watch on {on}: stream closed by the server"
            )));
        };
        // The cluster had reached `revision` when it handed it out: if it is
        // behind it now, it is another cluster (rebuilt on the same
        // endpoints), and resuming would miss everything up to `revision`.
        if self.conn.observe(first.header(), revision) {
            return Err(ManagerError::Compacted(revision));
        }
        let mut state = WatchState {
            store: self.clone(),
            generation,
            on,
            stream: Some(stream),
            pending: None,
        };
        if first.canceled() {
            return Err(state.canceled(&first));
        }
        if !first.created() {
            state.pending = Some(first);
        }
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            |mut st| async move {
                let item = st.next_batch().await?;
                if item.is_err() {
                    st.stream = None;
                }
                Some((item, st))
            },
        )))
    }
}

/// The state of one watch stream. The etcd `WatchStream` holds both the
/// request side (dropping it would end the watch) and the responses.
struct WatchState {
    store: EtcdStore,
    /// The cluster generation the watch was opened in.
    generation: u64,
    /// The endpoint the watch runs on.
    on: String,
    /// `None` once the stream has ended or failed.
    stream: Option<WatchStream>,
    /// A response read while opening the watch, not yet passed on.
    pending: Option<WatchResponse>,
}

impl WatchState {
    /// The next batch; `None` when the stream is over.
    async fn next_batch(&mut self) -> Option<Result<StoreBatch, ManagerError>> {
        loop {
            let stream = self.stream.as_mut()?;
            let next = match self.pending.take() {
                Some(resp) => Some(Ok(resp)),
                None => stream.next().await,
            };
            let resp = match next {
                Some(Ok(resp)) => resp,
                Some(Err(e)) => return Some(Err(self.store.conn.ctx.error("watch", &self.on, e))),
                None => {
                    return Some(Err(ManagerError::Unavailable(format!(
                        "etcd watch on {}: stream closed by the server",
                        self.on
                    ))));
                }
            };
            if resp.canceled() {
                return Some(Err(self.canceled(&resp)));
            }
            // "created" and progress responses carry no events.
            if resp.events().is_empty() {
                continue;
            }
            return Some(Ok(self.batch(&resp)));
        }
    }

    fn canceled(&self, resp: &WatchResponse) -> ManagerError {
        if resp.compact_revision() > 0 {
            return ManagerError::Compacted(resp.compact_revision());
        }
        let reason = resp.cancel_reason();
        let msg = format!(
            "etcd watch on {} canceled by the server: {}",
            self.on,
            if reason.is_empty() {
                "no reason given"
            } else {
                reason
            }
        );
        if reason.contains("permission denied") {
            ManagerError::Other(msg)
        } else {
            ManagerError::Unavailable(msg)
        }
    }

    /// One response as one batch; malformed entries are skipped with a
    /// warning, so a batch may be empty (it still advances the revision).
    fn batch(&self, resp: &WatchResponse) -> StoreBatch {
        let events = resp
            .events()
            .iter()
            .filter_map(|ev| {
                let kv = ev.kv()?;
                match ev.event_type() {
                    EventType::Put => self
                        .store
                        .decode(kv, EtcdStore::approx_expiration(kv))
                        .map(StoreEvent::Put),
                    EventType::Delete => self.store.decode_key(kv).map(StoreEvent::Delete),
                }
            })
            .collect();
        let revision = resp.header().map_or(0, |h| h.revision());
        lock(&self.store.conn.shared.seen).hand_out(revision, self.generation);
        StoreBatch { events, revision }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_end_increments() {
        assert_eq!(super::prefix_end(b"/a/subnets/"), b"/a/subnets0".to_vec());
        assert_eq!(super::prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(super::prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(super::prefix_end(b""), vec![0]);
    }

    use super::*;

    #[test]
    fn keys_join_like_go_path_join() {
        assert_eq!(
            join_key(&["/coreos.com/network", "config"]),
            "/coreos.com/network/config"
        );
        assert_eq!(join_key(&["/my/net/", "subnets"]), "/my/net/subnets");
        assert_eq!(join_key(&["//my//net//", "config"]), "/my/net/config");
        assert_eq!(join_key(&["/a/./b/../c", "config"]), "/a/c/config");
        assert_eq!(join_key(&["/", "config"]), "/config");
        assert_eq!(join_key(&["", "config"]), "config");
        assert_eq!(join_key(&["net/", "config"]), "net/config");
        assert_eq!(join_key(&["/../x", "config"]), "/x/config");
    }

    #[test]
    fn debug_hides_the_password() {
        let cfg = EtcdConfig {
            username: Some("root".into()),
            password: Some("s3cret-pw".into()),
            ..EtcdConfig::default()
        };
        let text = format!("{cfg:?}");
        assert!(!text.contains("s3cret-pw"), "{text}");
        assert!(text.contains("***") && text.contains("root"), "{text}");
        assert_eq!(cfg.prefix, "/coreos.com/network");
    }

    #[test]
    fn tls_failures_are_recognised() {
        assert!(is_tls_failure("invalid peer certificate: UnknownIssuer"));
        assert!(!is_tls_failure("Connection refused (os error 111)"));
    }
}
