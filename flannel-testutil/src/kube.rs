//! A fake Kubernetes API server for the Kubernetes subnet manager's tests
//! (feature `kube`): an in-process HTTP/1.1 server (TLS by default) that
//! speaks the real JSON protocol kube-rs and kubectl use, for core/v1
//! Nodes and Pods. There is no kube-apiserver to be had on the test
//! machines, so this is what "the API server" means in flannel-rs's tests.
//!
//! * Discovery: `/api`, `/api/v1`, `/apis`, `/version` (enough for kubectl's
//!   REST mapping); `/openapi/v2` and `/openapi/v3` answer 404, which
//!   kubectl tolerates except for client-side validation (`kubectl replace`
//!   and `create` need `--validate=false`).
//! * Lists (`/api/v1/nodes`, `/api/v1/pods`, `/api/v1/namespaces/<ns>/pods`)
//!   with `labelSelector`, `fieldSelector`, `limit`/`continue` paging and
//!   `resourceVersion`/`resourceVersionMatch` (exact lists are served from
//!   the event history), and kubectl's server-side tables (`as=Table`).
//! * Watches (`watch=1`): newline-delimited JSON events over a chunked
//!   response, starting after the given `resourceVersion` (or with
//!   synthetic `ADDED` events for the current objects when it is unset or
//!   `0`, and for `sendInitialEvents=true` followed by the
//!   `k8s.io/initial-events-end` bookmark), periodic `BOOKMARK` events when
//!   `allowWatchBookmarks=true`, `timeoutSeconds` honoured, and a
//!   `410 Gone` `ERROR` event for a version older than the history kept
//!   (see [`FakeApiServer::expire_history`]; the history also forgets its
//!   older half past [`HISTORY_LIMIT`] writes, like an etcd compaction).
//!   Objects leaving or entering a selector are sent as `DELETED` /
//!   `ADDED`, as the API server does; kubectl's watches get tables.
//! * GET, PUT, PATCH (`application/strategic-merge-patch+json` with the
//!   core/v1 merge keys such as `status.conditions` by `type`,
//!   `application/merge-patch+json`, `application/json-patch+json`; other
//!   types get 415) and DELETE of single objects, and the `status`
//!   subresource with the API server's rules (a `status` write keeps the
//!   spec, a main-resource write keeps the status; both may change
//!   metadata, which is how flannel writes its annotations). A write that
//!   changes nothing keeps the resourceVersion and emits no event;
//!   `metadata.resourceVersion` in a body is a precondition (409 Conflict).
//! * Authentication by bearer token and by client certificates signed by
//!   the fake's CA (the user is the certificate's common name), with 401 for
//!   a missing or wrong credential; authorisation refuses the user
//!   [`FORBIDDEN_USER`] (403) and can restrict any user to RBAC-style rules
//!   ([`FakeApiServer::set_permissions`]).
//! * Errors are `Status` objects, as the API server sends them.
//!
//! Every request is recorded ([`FakeApiServer::requests`]) with the user,
//! the RBAC verb and resource, and the body, so tests can check that a
//! ClusterRole covers every call a client made.
//!
//! The server runs on its own tokio runtime (one worker thread), so it
//! works from synchronous and asynchronous tests alike; it speaks HTTP/1.1
//! only (ALPN `http/1.1`), which Go and Rust clients fall back to. Objects are kept as
//! `serde_json::Value`, so tests can store content no typed client would
//! produce.
//!
//! ```no_run
//! use flannel_testutil::kube::{FakeApiServer, FakeOptions};
//!
//! let api = FakeApiServer::start(FakeOptions::default()).unwrap();
//! api.add_node_with_pod_cidrs("node-1", &["10.244.1.0/24"], &[]);
//! api.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"), "flanneld").unwrap();
//! // … run flanneld --kube-subnet-mgr --kubeconfig-file=/tmp/kubeconfig …
//! assert!(api.node("node-1").is_some());
//! ```

mod patch;
mod select;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Bound;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use patch::PatchError;
use select::{FieldSelector, LabelSelector};

/// The user a request authenticated with [`FakeOptions::token`] acts as
/// (flanneld's service account in the kube-flannel manifest).
pub const TOKEN_USER: &str = "system:serviceaccount:kube-flannel:flannel";
/// The user of requests when neither a token nor client certificates are
/// required.
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// A user that is authenticated but may not touch any resource (403), for
/// tests of the forbidden path.
pub const FORBIDDEN_USER: &str = "nobody";
/// The Kubernetes version `/version` reports.
pub const FAKE_KUBERNETES_VERSION: &str = "v1.33.0";
/// How many writes the event history keeps before the older half is
/// forgotten (watches from a forgotten version then get 410 Gone).
pub const HISTORY_LIMIT: usize = 100_000;
/// The largest request body accepted (as the API server, 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// How the fake API server authenticates and serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeOptions {
    /// Serve HTTPS with a certificate signed by the fake's own CA
    /// ([`FakeApiServer::ca_pem`]); plain HTTP when false. Default true.
    pub tls: bool,
    /// When set, requests must carry `Authorization: Bearer <token>` (or a
    /// client certificate when [`FakeOptions::client_certs`] is on);
    /// they act as [`TOKEN_USER`]. Default none.
    pub token: Option<String>,
    /// Accept client certificates signed by the fake's CA (the user is the
    /// certificate's common name, see [`FakeApiServer::client_cert`]); with
    /// this on, a request with neither a certificate nor the token gets 401.
    /// Needs `tls`. Default false.
    pub client_certs: bool,
    /// How often a watch with `allowWatchBookmarks=true` gets a `BOOKMARK`
    /// event. Default 1 s (the API server's is about a minute; tests want
    /// to see them).
    pub bookmark_interval: Duration,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            tls: true,
            token: None,
            client_certs: false,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// One request the fake served, as recorded for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method (`GET`, `PATCH`, …).
    pub method: String,
    /// The URL path (`/api/v1/nodes/node-1/status`).
    pub path: String,
    /// The raw query string (empty when none).
    pub query: String,
    /// The request's `Content-Type`, when it had one.
    pub content_type: Option<String>,
    /// The authenticated user ([`TOKEN_USER`], a certificate's common name,
    /// [`ANONYMOUS_USER`]); empty when authentication failed.
    pub user: String,
    /// The RBAC verb (`get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete`); empty for non-resource requests (discovery, `/version`).
    pub verb: String,
    /// The RBAC resource (`nodes`, `nodes/status`, `pods`); empty for
    /// non-resource requests.
    pub resource: String,
    /// The namespace of a namespaced request.
    pub namespace: Option<String>,
    /// The object name of a single-object request.
    pub name: Option<String>,
    /// The HTTP status answered (200 for a watch that was started).
    pub status: u16,
    /// The request body as text (empty for GET).
    pub body: String,
}

/// One RBAC-style rule for [`FakeApiServer::set_permissions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Resources (`nodes`, `nodes/status`, `pods`).
    pub resources: Vec<String>,
    /// Verbs (`get`, `list`, `watch`, `patch`, …).
    pub verbs: Vec<String>,
}

/// The rules of the `flannel` ClusterRole in `dist/kube-flannel.yml` (as
/// upstream's): resource → verbs. `flannel-testutil/tests/manifest.rs`
/// checks the manifest grants exactly these, so a test that runs flanneld
/// under [`flannel_rules`] ([`FakeApiServer::set_permissions`]) proves the
/// manifest covers every call flanneld makes.
pub const FLANNEL_RBAC: &[(&str, &[&str])] = &[
    ("pods", &["get"]),
    ("nodes", &["get", "list", "watch"]),
    ("nodes/status", &["patch"]),
];

/// [`FLANNEL_RBAC`] as rules for [`FakeApiServer::set_permissions`].
pub fn flannel_rules() -> Vec<Rule> {
    FLANNEL_RBAC
        .iter()
        .map(|(resource, verbs)| Rule::new(&[resource], verbs))
        .collect()
}

impl Rule {
    /// A rule granting `verbs` on `resources`.
    pub fn new(resources: &[&str], verbs: &[&str]) -> Rule {
        Rule {
            resources: resources.iter().map(|r| (*r).to_owned()).collect(),
            verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Node,
    Pod,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Pod => "Pod",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Pod => "pods",
        }
    }
}

/// (kind, namespace — empty for Nodes, name)
type Key = (Kind, String, String);

struct Event {
    rv: u64,
    key: Key,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Default)]
struct Store {
    /// The last resourceVersion handed out.
    rv: u64,
    /// Watches and exact lists from a version below this get 410 Gone.
    floor: u64,
    objects: BTreeMap<Key, Value>,
    /// Each object encoded as a list item (no type fields), so that a list
    /// of thousands of Nodes costs a copy rather than a serialisation.
    encoded: HashMap<Key, Bytes>,
    /// Every write since `floor`, oldest first.
    history: Vec<Event>,
    next_uid: u64,
    requests: Vec<RequestRecord>,
    permissions: HashMap<String, Vec<Rule>>,
}

impl Store {
    /// Stores `new` (or deletes) under a fresh resourceVersion; returns the
    /// stored object.
    fn write(&mut self, key: Key, new: Option<Value>) -> Option<Value> {
        self.rv += 1;
        let rv = self.rv;
        let new = new.map(|mut object| {
            if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("resourceVersion".to_owned(), json!(rv.to_string()));
                if !meta.contains_key("uid") {
                    self.next_uid += 1;
                    meta.insert(
                        "uid".to_owned(),
                        json!(format!("00000000-0000-4000-8000-{:012x}", self.next_uid)),
                    );
                }
                if !meta.contains_key("creationTimestamp") {
                    meta.insert("creationTimestamp".to_owned(), json!(rfc3339_now()));
                }
            }
            object
        });
        let old = match &new {
            Some(object) => {
                self.encoded.insert(key.clone(), list_item(object));
                self.objects.insert(key.clone(), object.clone())
            }
            None => {
                self.encoded.remove(&key);
                self.objects.remove(&key)
            }
        };
        self.history.push(Event {
            rv,
            key,
            old,
            new: new.clone(),
        });
        if self.history.len() > HISTORY_LIMIT {
            // Compact like etcd: forget the older half; versions up to the
            // last forgotten one can no longer be watched from.
            self.floor = self.history[HISTORY_LIMIT / 2 - 1].rv;
            self.history.drain(..HISTORY_LIMIT / 2);
        }
        new
    }

    /// The objects of `kind` as they were at `rv` (undoing later writes).
    fn snapshot(&self, kind: Kind, rv: u64) -> BTreeMap<Key, Value> {
        let mut objects: BTreeMap<Key, Value> = self
            .objects
            .iter()
            .filter(|(k, _)| k.0 == kind)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for event in self.history.iter().rev().take_while(|e| e.rv > rv) {
            if event.key.0 != kind {
                continue;
            }
            match &event.old {
                Some(old) => objects.insert(event.key.clone(), old.clone()),
                None => objects.remove(&event.key),
            };
        }
        objects
    }
}

struct Shared {
    store: Mutex<Store>,
    /// Carries the store's latest resourceVersion to waiting watches.
    changed: tokio::sync::watch::Sender<u64>,
    opts: FakeOptions,
    /// DER of every client certificate issued → its user.
    cert_users: Mutex<HashMap<Vec<u8>, String>>,
    /// The serving connections and watches, aborted by a restart.
    conns: Mutex<Vec<AbortHandle>>,
    url: String,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Remembers a connection or watch task for [`FakeApiServer::restart`].
    fn track(&self, task: AbortHandle) {
        let mut conns = lock(&self.conns);
        conns.retain(|c| !c.is_finished());
        conns.push(task);
    }
}

/// The running fake API server; stops when dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    accept_task: Mutex<Option<AbortHandle>>,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("url", &self.shared.url)
            .finish_non_exhaustive()
    }
}

fn io_error(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(what.to_string())
}

impl FakeApiServer {
    /// Starts the fake on a free port of 127.0.0.1.
    pub fn start(opts: FakeOptions) -> std::io::Result<FakeApiServer> {
        FakeApiServer::start_on(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0), opts)
    }

    /// Starts the fake on `addr` (port 0 picks a free one), e.g. an address
    /// of a bridge in the root namespace that network-namespace hosts can
    /// reach. The server certificate names that address, 127.0.0.1 and
    /// `localhost`.
    pub fn start_on(addr: SocketAddr, opts: FakeOptions) -> std::io::Result<FakeApiServer> {
        if opts.client_certs && !opts.tls {
            return Err(io_error(
                "the fake API server's client certificates need tls: true",
            ));
        }
        let listener = std::net::TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let (ca_pem, issuer) = new_ca().map_err(io_error)?;
        let acceptor = if opts.tls {
            Some(tls_acceptor(
                &issuer,
                &ca_pem,
                addr.ip(),
                opts.client_certs,
            )?)
        } else {
            None
        };
        let host = match addr.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        let url = format!(
            "{}://{host}:{}",
            if opts.tls { "https" } else { "http" },
            addr.port()
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-kube-apiserver")
            .enable_all()
            .build()?;
        let (changed, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed,
            opts,
            cert_users: Mutex::new(HashMap::new()),
            conns: Mutex::new(Vec::new()),
            url,
        });
        let server = FakeApiServer {
            shared,
            runtime: Some(runtime),
            addr,
            acceptor,
            accept_task: Mutex::new(None),
            ca_pem,
            issuer,
        };
        server.serve(listener)?;
        Ok(server)
    }

    fn serve(&self, listener: std::net::TcpListener) -> std::io::Result<()> {
        let Some(runtime) = &self.runtime else {
            return Err(io_error("the fake API server was stopped"));
        };
        listener.set_nonblocking(true)?;
        let _guard = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let task = runtime.spawn(accept_loop(
            self.shared.clone(),
            listener,
            self.acceptor.clone(),
        ));
        *lock(&self.accept_task) = Some(task.abort_handle());
        Ok(())
    }

    /// The server's URL (`https://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM of the CA that signed the server certificate and the client
    /// certificates.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// A client certificate for `user` (its common name) signed by the
    /// fake's CA: (certificate PEM, PKCS#8 key PEM). Accepted when
    /// [`FakeOptions::client_certs`] is on.
    pub fn client_cert(&self, user: &str) -> (String, String) {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).expect("empty SAN list is valid");
        params.distinguished_name.push(DnType::CommonName, user);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("generating a client key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing a client certificate");
        lock(&self.shared.cert_users).insert(cert.der().to_vec(), user.to_owned());
        (cert.pem(), key.serialize_pem())
    }

    /// A kubeconfig (YAML) for this server: its URL, the CA, and for `user`
    /// a client certificate when [`FakeOptions::client_certs`] is on, else
    /// the token when one is set, else no credential.
    pub fn kubeconfig(&self, user: &str) -> String {
        let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let mut out =
            String::from("apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n");
        out.push_str(&format!("    server: {}\n", self.url()));
        if self.shared.opts.tls {
            out.push_str(&format!(
                "    certificate-authority-data: {}\n",
                b64(&self.ca_pem)
            ));
        }
        out.push_str(&format!(
            "contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: {user:?}\ncurrent-context: fake\nusers:\n- name: {user:?}\n  user:"
        ));
        if self.shared.opts.client_certs {
            let (cert, key) = self.client_cert(user);
            out.push_str(&format!(
                "\n    client-certificate-data: {}\n    client-key-data: {}\n",
                b64(&cert),
                b64(&key)
            ));
        } else if let Some(token) = &self.shared.opts.token {
            out.push_str(&format!("\n    token: {token:?}\n"));
        } else {
            out.push_str(" {}\n");
        }
        out
    }

    /// Writes [`FakeApiServer::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path, user: &str) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig(user))
    }

    /// Creates or replaces a Node (by `metadata.name`): a new
    /// resourceVersion and an `ADDED` or `MODIFIED` event. The object is
    /// stored as given (plus `resourceVersion`, `uid`,
    /// `creationTimestamp`), however odd its content.
    ///
    /// # Panics
    /// When the object has no string `metadata.name`.
    pub fn apply_node(&self, node: Value) {
        self.apply(Kind::Node, node);
    }

    /// Creates or replaces a Pod (by `metadata.namespace` and
    /// `metadata.name`), like [`FakeApiServer::apply_node`].
    pub fn apply_pod(&self, pod: Value) {
        self.apply(Kind::Pod, pod);
    }

    fn apply(&self, kind: Kind, mut object: Value) {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("a {} needs metadata.name: {object}", kind.name()))
            .to_owned();
        let namespace = match kind {
            Kind::Node => String::new(),
            Kind::Pod => object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_owned(),
        };
        if let Some(map) = object.as_object_mut() {
            map.entry("apiVersion").or_insert(json!("v1"));
            map.entry("kind").or_insert(json!(kind.name()));
        }
        // A replaced object keeps its identity, as an update would.
        let key = (kind, namespace, name);
        let mut store = self.shared.store();
        if let (Some(old), Some(meta)) = (
            store.objects.get(&key),
            object.get_mut("metadata").and_then(Value::as_object_mut),
        ) {
            for field in ["uid", "creationTimestamp"] {
                if let (false, Some(v)) = (
                    meta.contains_key(field),
                    old.pointer(&format!("/metadata/{field}")),
                ) {
                    meta.insert(field.to_owned(), v.clone());
                }
            }
        }
        store.write(key, Some(object));
        self.shared.changed.send_replace(store.rv);
    }

    /// Creates or replaces a Node built by [`node_json`] with these pod
    /// CIDRs (`spec.podCIDR` = the first, `spec.podCIDRs` = all) and
    /// annotations, and no InternalIP address.
    pub fn add_node_with_pod_cidrs(
        &self,
        name: &str,
        cidrs: &[&str],
        annotations: &[(&str, &str)],
    ) {
        self.apply_node(node_json(name, cidrs, annotations, None));
    }

    /// The stored Node, as a client would GET it.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.shared
            .store()
            .objects
            .get(&(Kind::Node, String::new(), name.to_owned()))
            .cloned()
    }

    /// The names of the stored Nodes, sorted.
    pub fn node_names(&self) -> Vec<String> {
        self.shared
            .store()
            .objects
            .keys()
            .filter(|k| k.0 == Kind::Node)
            .map(|k| k.2.clone())
            .collect()
    }

    /// The stored Pod.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .store()
            .objects
            .get(&(Kind::Pod, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Deletes a Node (a `DELETED` event); nothing when there is none.
    pub fn delete_node(&self, name: &str) {
        self.delete(Kind::Node, "", name);
    }

    /// Deletes a Pod (a `DELETED` event); nothing when there is none.
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        self.delete(Kind::Pod, namespace, name);
    }

    fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let key = (kind, namespace.to_owned(), name.to_owned());
        let mut store = self.shared.store();
        if store.objects.contains_key(&key) {
            store.write(key, None);
            self.shared.changed.send_replace(store.rv);
        }
    }

    /// Creates a running Pod scheduled on `node_name` (`spec.nodeName`).
    pub fn add_pod(&self, namespace: &str, name: &str, node_name: &str) {
        self.apply_pod(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "nodeName": node_name,
                "containers": [{"name": "main", "image": "registry.invalid/pause:3.9"}]
            },
            "status": {"phase": "Running"}
        }));
    }

    /// The current resourceVersion (of the last write).
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv
    }

    /// Simulates an API server restart: every open connection and watch is
    /// dropped and the listening socket closed and bound again on the same
    /// port (connections are refused for a moment); the stored objects and
    /// the history survive, so watches can resume where they were.
    ///
    /// # Panics
    /// When the port cannot be bound again within 5 s.
    pub fn restart(&self) {
        let mut tasks: Vec<AbortHandle> = lock(&self.shared.conns).drain(..).collect();
        tasks.extend(lock(&self.accept_task).take());
        for task in &tasks {
            task.abort();
        }
        // Abortion happens on the runtime's thread; wait until every task
        // is gone (sockets closed, no watch sends another event) so the
        // restart is complete when this returns.
        let deadline = Instant::now() + Duration::from_secs(5);
        while tasks.iter().any(|t| !t.is_finished()) {
            assert!(
                Instant::now() < deadline,
                "the fake API server's connections did not close within 5 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let listener = loop {
            match std::net::TcpListener::bind(self.addr) {
                Ok(listener) => break listener,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!(
                    "the fake API server could not bind {} again: {e}",
                    self.addr
                ),
            }
        };
        self.serve(listener)
            .unwrap_or_else(|e| panic!("the fake API server could not serve again: {e}"));
    }

    /// Forgets the event history, like an etcd compaction: from now on a
    /// watch or an exact list from any resourceVersion handed out so far
    /// gets `410 Gone` (reason `Expired`), and every open watch receives
    /// that as an `ERROR` event and ends (as when a watcher falls too far
    /// behind). The stored objects are unchanged; a fresh list works.
    pub fn expire_history(&self) {
        let mut store = self.shared.store();
        // A write elsewhere (as to an Event object) moves the version on,
        // so every version a client holds is now older than the floor.
        store.rv += 1;
        store.floor = store.rv;
        store.history.clear();
        self.shared.changed.send_replace(store.rv);
    }

    /// Every request served so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.store().requests.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.store().requests.clear();
    }

    /// Restricts `user` to `rules` (403 for anything else), like a
    /// ClusterRole bound to that user; non-resource requests (discovery)
    /// stay allowed.
    pub fn set_permissions(&self, user: &str, rules: Vec<Rule>) {
        self.shared
            .store()
            .permissions
            .insert(user.to_owned(), rules);
    }

    /// Stops the server (also done on drop).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Never blocks, so dropping the fake inside an async test works.
            runtime.shutdown_background();
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A Node object such as a cluster's node controller creates: `spec.podCIDR`
/// = the first of `cidrs`, `spec.podCIDRs` = all of them (both absent when
/// `cidrs` is empty), the annotations given, the `kubernetes.io/hostname`
/// label, a `Hostname` address plus an `InternalIP` one when given, and a
/// `Ready` condition.
pub fn node_json(
    name: &str,
    cidrs: &[&str],
    annotations: &[(&str, &str)],
    internal_ip: Option<&str>,
) -> Value {
    let annotations: Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let mut spec = Map::new();
    if let Some(first) = cidrs.first() {
        spec.insert("podCIDR".to_owned(), json!(first));
        spec.insert("podCIDRs".to_owned(), json!(cidrs));
    }
    let mut addresses = Vec::new();
    if let Some(ip) = internal_ip {
        addresses.push(json!({"type": "InternalIP", "address": ip}));
    }
    addresses.push(json!({"type": "Hostname", "address": name}));
    let now = rfc3339_now();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
            "annotations": annotations
        },
        "spec": spec,
        "status": {
            "addresses": addresses,
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status"
            }],
            "nodeInfo": {"kubeletVersion": FAKE_KUBERNETES_VERSION}
        }
    })
}

/// Formats a time as RFC 3339 in UTC with second precision, as Kubernetes
/// serialises `metav1.Time`.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    flannel_core::time::rfc3339_utc(secs)
}

fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

fn new_ca() -> Result<(String, Issuer<'static, KeyPair>), rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "fake-kubernetes-ca");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

fn tls_acceptor(
    issuer: &Issuer<'static, KeyPair>,
    ca_pem: &str,
    ip: IpAddr,
    client_certs: bool,
) -> std::io::Result<TlsAcceptor> {
    let mut sans = vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "kubernetes.default.svc".to_owned(),
    ];
    if !ip.is_unspecified() && ip != IpAddr::V4(Ipv4Addr::LOCALHOST) {
        sans.push(ip.to_string());
    }
    let mut params = CertificateParams::new(sans).map_err(io_error)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(io_error)?;
    let cert = params.signed_by(&key, issuer).map_err(io_error)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io_error)?;
    let builder = if client_certs {
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = pem_to_der(ca_pem).ok_or_else(|| io_error("the CA PEM does not parse"))?;
        roots.add(ca_der.into()).map_err(io_error)?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(io_error)?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .map_err(io_error)?;
    // HTTP/1.1 only: Go clients then use HTTP/1.1 too.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    tls: Option<TlsAcceptor>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors or similar: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let task = tokio::spawn(serve_connection(shared.clone(), stream, tls.clone()));
        shared.track(task.abort_handle());
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    tls: Option<TlsAcceptor>,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        Some(acceptor) => {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let cert_user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|cert| {
                    lock(&shared.cert_users)
                        .get(cert.as_ref())
                        .cloned()
                        // Only the fake holds the CA key, so this cannot
                        // happen unless a test signs certificates itself.
                        .unwrap_or_else(|| "unknown-certificate-user".to_owned())
                });
            serve_http(shared, TokioIo::new(stream), cert_user).await;
        }
        None => serve_http(shared, TokioIo::new(stream), None).await,
    }
}

async fn serve_http<I>(shared: Arc<Shared>, io: I, cert_user: Option<String>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let cert_user = cert_user.clone();
        async move { Ok::<_, Infallible>(handle(shared, cert_user, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

type Body = BoxBody<Bytes, Infallible>;

/// A watch's streamed body: each received chunk is one JSON event line.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    bytes_response(code, Bytes::from(body))
}

fn bytes_response(code: StatusCode, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// A `Status` object as the API server sends for a failure.
fn status_object(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

#[derive(Debug)]
struct Failure {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl Failure {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn not_found(kind: Kind, name: &str) -> Failure {
        Failure {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", kind.plural()),
            details: Some(json!({"name": name, "kind": kind.plural()})),
        }
    }

    fn gone(message: String) -> Failure {
        Failure::new(410, "Expired", message)
    }

    fn response(&self) -> Response<Body> {
        json_response(
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &status_object(self.code, self.reason, &self.message, self.details.clone()),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    NonResource(&'static str),
    Collection {
        kind: Kind,
        namespace: Option<String>,
    },
    Object {
        kind: Kind,
        namespace: String,
        name: String,
        status: bool,
    },
    Unknown,
}

fn route(path: &str) -> Route {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api"] => Route::NonResource("api"),
        ["api", "v1"] => Route::NonResource("api/v1"),
        ["apis"] => Route::NonResource("apis"),
        ["version"] => Route::NonResource("version"),
        ["healthz" | "livez" | "readyz"] => Route::NonResource("health"),
        ["api", "v1", "nodes"] => Route::Collection {
            kind: Kind::Node,
            namespace: None,
        },
        ["api", "v1", "pods"] => Route::Collection {
            kind: Kind::Pod,
            namespace: None,
        },
        ["api", "v1", "namespaces", ns, "pods"] => Route::Collection {
            kind: Kind::Pod,
            namespace: Some((*ns).to_owned()),
        },
        ["api", "v1", "nodes", name] | ["api", "v1", "nodes", name, "status"] => Route::Object {
            kind: Kind::Node,
            namespace: String::new(),
            name: (*name).to_owned(),
            status: segments.len() == 5,
        },
        ["api", "v1", "namespaces", ns, "pods", name]
        | ["api", "v1", "namespaces", ns, "pods", name, "status"] => Route::Object {
            kind: Kind::Pod,
            namespace: (*ns).to_owned(),
            name: (*name).to_owned(),
            status: segments.len() == 7,
        },
        _ => Route::Unknown,
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Query {
        Query(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| match pair.split_once('=') {
                    Some((k, v)) => (percent_decode(k), percent_decode(v)),
                    None => (percent_decode(pair), String::new()),
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "true" | "True"))
    }
}

async fn handle(
    shared: Arc<Shared>,
    cert_user: Option<String>,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or("").to_owned();
    let query = Query::parse(&raw_query);
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(CONTENT_TYPE);
    let accept = header(ACCEPT).unwrap_or_default();
    let authorization = header(AUTHORIZATION);
    let route = route(&path);
    let (verb, resource, namespace, name) = rbac_attributes(&route, &method, &query);
    let mut record = RequestRecord {
        method: method.to_string(),
        path: path.clone(),
        query: raw_query,
        content_type: content_type.clone(),
        user: String::new(),
        verb: verb.clone(),
        resource: resource.clone(),
        namespace,
        name,
        status: 0,
        body: String::new(),
    };
    let body = if matches!(method, Method::GET | Method::HEAD) {
        Bytes::new()
    } else {
        match http_body_util::Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                let failure =
                    Failure::new(413, "RequestEntityTooLarge", "request entity too large");
                return finish(&shared, record, failure.response());
            }
        }
    };
    record.body = String::from_utf8_lossy(&body).into_owned();

    let user = match authenticate(&shared.opts, cert_user, authorization.as_deref()) {
        Some(user) => user,
        None => {
            return finish(
                &shared,
                record,
                Failure::new(401, "Unauthorized", "Unauthorized").response(),
            );
        }
    };
    record.user = user.clone();
    if !verb.is_empty() && !authorized(&shared.store(), &user, &verb, &resource) {
        let failure = forbidden(&user, &verb, &resource, &route);
        return finish(&shared, record, failure.response());
    }
    let response = match dispatch(
        &shared,
        &route,
        &method,
        &query,
        &accept,
        content_type.as_deref(),
        &body,
    ) {
        Ok(response) => response,
        Err(failure) => failure.response(),
    };
    finish(&shared, record, response)
}

fn finish(shared: &Shared, mut record: RequestRecord, response: Response<Body>) -> Response<Body> {
    record.status = response.status().as_u16();
    shared.store().requests.push(record);
    response
}

fn rbac_attributes(
    route: &Route,
    method: &Method,
    query: &Query,
) -> (String, String, Option<String>, Option<String>) {
    match route {
        Route::Collection { kind, namespace } => {
            let verb = match *method {
                Method::GET if query.flag("watch") => "watch",
                Method::GET => "list",
                Method::POST => "create",
                Method::DELETE => "deletecollection",
                _ => "unknown",
            };
            (
                verb.to_owned(),
                kind.plural().to_owned(),
                namespace.clone(),
                None,
            )
        }
        Route::Object {
            kind,
            namespace,
            name,
            status,
        } => {
            let verb = match *method {
                Method::GET => "get",
                Method::PUT => "update",
                Method::PATCH => "patch",
                Method::DELETE => "delete",
                _ => "unknown",
            };
            let resource = if *status {
                format!("{}/status", kind.plural())
            } else {
                kind.plural().to_owned()
            };
            let namespace = (!namespace.is_empty()).then(|| namespace.clone());
            (verb.to_owned(), resource, namespace, Some(name.clone()))
        }
        Route::NonResource(_) | Route::Unknown => (String::new(), String::new(), None, None),
    }
}

fn authenticate(
    opts: &FakeOptions,
    cert_user: Option<String>,
    authorization: Option<&str>,
) -> Option<String> {
    if let Some(user) = cert_user {
        return Some(user);
    }
    let bearer = authorization
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim);
    match (&opts.token, bearer) {
        (Some(token), Some(given)) if token == given => Some(TOKEN_USER.to_owned()),
        (Some(_), _) => None,
        (None, Some(_)) => None,
        (None, None) if opts.client_certs => None,
        (None, None) => Some(ANONYMOUS_USER.to_owned()),
    }
}

fn authorized(store: &Store, user: &str, verb: &str, resource: &str) -> bool {
    if user == FORBIDDEN_USER {
        return false;
    }
    match store.permissions.get(user) {
        None => true,
        Some(rules) => rules.iter().any(|rule| {
            rule.resources.iter().any(|r| r == resource || r == "*")
                && rule.verbs.iter().any(|v| v == verb || v == "*")
        }),
    }
}

fn forbidden(user: &str, verb: &str, resource: &str, route: &Route) -> Failure {
    // The subject names the resource without its subresource, as the API
    // server's message does: `nodes "n1" is forbidden: … "nodes/status" …`.
    let plural = resource.split_once('/').map_or(resource, |(p, _)| p);
    let (subject, scope, name) = match route {
        Route::Object {
            namespace, name, ..
        } => (
            format!("{plural} \"{name}\""),
            if namespace.is_empty() {
                "at the cluster scope".to_owned()
            } else {
                format!("in the namespace \"{namespace}\"")
            },
            name.clone(),
        ),
        Route::Collection {
            namespace: Some(ns),
            ..
        } => (
            resource.to_owned(),
            format!("in the namespace \"{ns}\""),
            String::new(),
        ),
        _ => (
            resource.to_owned(),
            "at the cluster scope".to_owned(),
            String::new(),
        ),
    };
    let mut details = json!({"kind": plural});
    if !name.is_empty() {
        details["name"] = json!(name);
    }
    Failure {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"\" {scope}"
        ),
        details: Some(details),
    }
}

fn dispatch(
    shared: &Arc<Shared>,
    route: &Route,
    method: &Method,
    query: &Query,
    accept: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Response<Body>, Failure> {
    let not_allowed = || {
        Failure::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    };
    match route {
        Route::NonResource(what) => {
            if *method != Method::GET {
                return Err(not_allowed());
            }
            Ok(json_response(StatusCode::OK, &discovery(what, &shared.url)))
        }
        Route::Unknown => Err(Failure::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
        Route::Collection { kind, namespace } => match *method {
            Method::GET if query.flag("watch") => {
                watch(shared, *kind, namespace.clone(), query, accept)
            }
            Method::GET => {
                let page = list(&shared.store(), *kind, namespace.as_deref(), query)?;
                if accept.contains("as=Table") {
                    Ok(json_response(
                        StatusCode::OK,
                        &table(*kind, &page.to_value()),
                    ))
                } else {
                    Ok(bytes_response(StatusCode::OK, page.body()))
                }
            }
            Method::POST => create(shared, *kind, namespace.as_deref(), body),
            _ => Err(not_allowed()),
        },
        Route::Object {
            kind,
            namespace,
            name,
            status,
        } => {
            let key = (*kind, namespace.clone(), name.clone());
            match *method {
                Method::GET => {
                    let object = shared
                        .store()
                        .objects
                        .get(&key)
                        .cloned()
                        .ok_or_else(|| Failure::not_found(*kind, name))?;
                    if accept.contains("as=Table") {
                        let list = json!({"metadata": {"resourceVersion": object.pointer("/metadata/resourceVersion")}, "items": [object]});
                        Ok(json_response(StatusCode::OK, &table(*kind, &list)))
                    } else {
                        Ok(json_response(StatusCode::OK, &object))
                    }
                }
                Method::PATCH => {
                    let patch: Value = serde_json::from_slice(body).map_err(|e| {
                        Failure::new(400, "BadRequest", format!("error decoding patch: {e}"))
                    })?;
                    let media = content_type
                        .unwrap_or("")
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim();
                    let apply: fn(&mut Value, &Value) -> Result<(), PatchError> = match media {
                        "application/strategic-merge-patch+json" => patch::strategic_merge_patch,
                        "application/merge-patch+json" => |target, patch| {
                            patch::merge_patch(target, patch);
                            Ok(())
                        },
                        "application/json-patch+json" => patch::json_patch,
                        _ => {
                            return Err(Failure::new(
                                415,
                                "UnsupportedMediaType",
                                format!(
                                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {media:?})"
                                ),
                            ));
                        }
                    };
                    update(shared, &key, *status, |current| {
                        let mut new = current.clone();
                        apply(&mut new, &patch).map_err(|e| {
                            Failure::new(
                                422,
                                "Invalid",
                                format!("{} \"{}\" is invalid: {}", kind.plural(), key.2, e.0),
                            )
                        })?;
                        Ok(new)
                    })
                }
                Method::PUT => {
                    let new: Value = serde_json::from_slice(body).map_err(|e| {
                        Failure::new(400, "BadRequest", format!("error decoding the body: {e}"))
                    })?;
                    update(shared, &key, *status, |_| Ok(new))
                }
                Method::DELETE if !status => {
                    let mut store = shared.store();
                    let Some(mut object) = store.objects.get(&key).cloned() else {
                        return Err(Failure::not_found(*kind, name));
                    };
                    store.write(key, None);
                    shared.changed.send_replace(store.rv);
                    object["metadata"]["resourceVersion"] = json!(store.rv.to_string());
                    Ok(json_response(StatusCode::OK, &object))
                }
                _ => Err(not_allowed()),
            }
        }
    }
}

fn discovery(what: &str, url: &str) -> Value {
    match what {
        "api" => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": url.split("://").nth(1).unwrap_or(url)}]
        }),
        "apis" => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
        "version" => json!({
            "major": "1",
            "minor": "33",
            "gitVersion": FAKE_KUBERNETES_VERSION,
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": "linux/amd64"
        }),
        "health" => json!("ok"),
        _ => {
            let all = [
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ];
            let status = ["get", "patch", "update"];
            json!({
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [
                    {"name": "nodes", "singularName": "node", "namespaced": false, "kind": "Node", "verbs": all, "shortNames": ["no"]},
                    {"name": "nodes/status", "singularName": "", "namespaced": false, "kind": "Node", "verbs": status},
                    {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": all, "shortNames": ["po"], "categories": ["all"]},
                    {"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": status}
                ]
            })
        }
    }
}

struct Selectors {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selectors {
    fn parse(kind: Kind, namespace: Option<String>, query: &Query) -> Result<Selectors, Failure> {
        let bad = |e: String| Failure::new(400, "BadRequest", e);
        Ok(Selectors {
            namespace,
            labels: LabelSelector::parse(query.get("labelSelector").unwrap_or("")).map_err(bad)?,
            fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), kind.name())
                .map_err(bad)?,
        })
    }

    fn matches(&self, key: &Key, object: &Value) -> bool {
        self.namespace.as_ref().is_none_or(|ns| *ns == key.1)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }
}

fn parse_rv(text: &str) -> Result<u64, Failure> {
    text.parse().map_err(|_| {
        Failure::new(
            400,
            "BadRequest",
            format!("invalid resource version: {text:?}"),
        )
    })
}

fn too_large(rv: u64, current: u64) -> Failure {
    Failure {
        code: 504,
        reason: "Timeout",
        message: format!("Too large resource version: {rv}, current: {current}"),
        details: Some(
            json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
        ),
    }
}

fn encode_continue(rv: u64, key: &Key) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{}/{}", key.1, key.2)});
    base64::engine::general_purpose::STANDARD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Option<(u64, String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    let rv = value.get("rv")?.as_u64()?;
    let (ns, name) = value.get("start")?.as_str()?.split_once('/')?;
    Some((rv, ns.to_owned(), name.to_owned()))
}

fn list(
    store: &Store,
    kind: Kind,
    namespace: Option<&str>,
    query: &Query,
) -> Result<ListPage, Failure> {
    let selectors = Selectors::parse(kind, namespace.map(str::to_owned), query)?;
    let mut start_after: Option<Key> = None;
    let snapshot_rv = if let Some(token) = query.get("continue").filter(|t| !t.is_empty()) {
        let (rv, ns, name) = decode_continue(token).ok_or_else(|| {
            Failure::new(
                400,
                "BadRequest",
                "continue key is not valid: illegal base64 data",
            )
        })?;
        if rv < store.floor {
            return Err(Failure::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".to_owned()));
        }
        start_after = Some((kind, ns, name));
        rv
    } else {
        let rv = query.get("resourceVersion").filter(|v| !v.is_empty());
        match (
            rv,
            query.get("resourceVersionMatch").filter(|v| !v.is_empty()),
        ) {
            (None, Some(m)) => {
                return Err(Failure::new(
                    422,
                    "Invalid",
                    format!(
                        "resourceVersionMatch: Forbidden: resourceVersionMatch \"{m}\" is forbidden unless resourceVersion is provided"
                    ),
                ));
            }
            (None, None) => store.rv,
            (Some(rv), Some("Exact")) => {
                let rv = parse_rv(rv)?;
                if rv < store.floor || rv == 0 {
                    return Err(Failure::gone(format!(
                        "too old resource version: {rv} ({})",
                        store.floor
                    )));
                }
                if rv > store.rv {
                    return Err(too_large(rv, store.rv));
                }
                rv
            }
            (Some(rv), None | Some("NotOlderThan")) => {
                let rv = parse_rv(rv)?;
                if rv > store.rv {
                    return Err(too_large(rv, store.rv));
                }
                store.rv
            }
            (Some(_), Some(other)) => {
                return Err(Failure::new(
                    422,
                    "Invalid",
                    format!(
                        "resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\", \"\""
                    ),
                ));
            }
        }
    };
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(0);
    let lower = match &start_after {
        Some(after) => Bound::Excluded(after.clone()),
        None => Bound::Included((kind, String::new(), String::new())),
    };
    // Served from the live objects (and their cached encodings) when the
    // list is of the current version, else from a reconstructed snapshot.
    let snapshot;
    let objects = if snapshot_rv == store.rv {
        &store.objects
    } else {
        snapshot = store.snapshot(kind, snapshot_rv);
        &snapshot
    };
    let mut matching = objects
        .range((lower, Bound::Unbounded))
        .take_while(|(k, _)| k.0 == kind)
        .filter(|(k, v)| selectors.matches(k, v));
    let mut items = Vec::new();
    let mut last = None;
    for (key, object) in matching.by_ref() {
        let encoded = match store.encoded.get(key) {
            Some(bytes) if snapshot_rv == store.rv => bytes.clone(),
            _ => list_item(object),
        };
        items.push(encoded);
        last = Some(key);
        if items.len() == limit {
            break;
        }
    }
    let remaining = matching.count();
    let mut metadata = json!({"resourceVersion": snapshot_rv.to_string()});
    if let (true, Some(last)) = (remaining > 0, last) {
        metadata["continue"] = json!(encode_continue(snapshot_rv, last));
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(ListPage {
        kind,
        metadata,
        items,
    })
}

/// An object encoded as a list item: without `kind` and `apiVersion`, as
/// the API server's list items are.
fn list_item(object: &Value) -> Bytes {
    let encoded = match object.as_object() {
        Some(map) if map.contains_key("kind") || map.contains_key("apiVersion") => {
            let mut map = map.clone();
            map.remove("kind");
            map.remove("apiVersion");
            serde_json::to_vec(&map)
        }
        _ => serde_json::to_vec(object),
    };
    Bytes::from(encoded.unwrap_or_default())
}

/// One page of a list.
struct ListPage {
    kind: Kind,
    metadata: Value,
    /// The items, each encoded by [`list_item`].
    items: Vec<Bytes>,
}

impl ListPage {
    /// The `<Kind>List` JSON, assembled from the encoded items.
    fn body(&self) -> Bytes {
        let mut out = format!(
            r#"{{"kind":"{}List","apiVersion":"v1","metadata":{},"items":["#,
            self.kind.name(),
            self.metadata
        )
        .into_bytes();
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(item);
        }
        out.extend_from_slice(b"]}\n");
        Bytes::from(out)
    }

    fn to_value(&self) -> Value {
        serde_json::from_slice(&self.body()).unwrap_or(Value::Null)
    }
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp as [`rfc3339`]
/// writes them.
fn parse_rfc3339(text: &str) -> Option<u64> {
    let num = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Howard Hinnant's days-from-civil algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

/// kubectl's AGE column (`42s`, `5m`, `3h`, `2d`).
fn age(object: &Value) -> String {
    let created = object
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_rfc3339);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match created {
        None => "<unknown>".to_owned(),
        Some(created) => match now.saturating_sub(created) {
            s if s < 120 => format!("{s}s"),
            s if s < 7200 => format!("{}m", s / 60),
            s if s < 172_800 => format!("{}h", s / 3600),
            s => format!("{}d", s / 86_400),
        },
    }
}

/// kubectl's server-side printing (`Accept: …;as=Table;…`).
fn table(kind: Kind, list: &Value) -> Value {
    let columns: Vec<(&str, &str)> = match kind {
        Kind::Node => vec![
            ("Name", "name"),
            ("Status", ""),
            ("Roles", ""),
            ("Age", ""),
            ("Version", ""),
        ],
        Kind::Pod => vec![
            ("Name", "name"),
            ("Ready", ""),
            ("Status", ""),
            ("Restarts", ""),
            ("Age", ""),
        ],
    };
    let empty = Vec::new();
    let rows: Vec<Value> = list
        .get("items")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
        .iter()
        .map(|item| {
            let text = |pointer: &str| item.pointer(pointer).and_then(Value::as_str).unwrap_or("").to_owned();
            let cells = match kind {
                Kind::Node => {
                    let ready = item
                        .pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .and_then(|c| c.iter().find(|c| c.get("type") == Some(&json!("Ready"))))
                        .and_then(|c| c.get("status"))
                        .and_then(Value::as_str);
                    let status = match ready {
                        Some("True") => "Ready",
                        Some("False") => "NotReady",
                        _ => "Unknown",
                    };
                    json!([text("/metadata/name"), status, "<none>", age(item), text("/status/nodeInfo/kubeletVersion")])
                }
                Kind::Pod => json!([text("/metadata/name"), "1/1", text("/status/phase"), 0, age(item)]),
            };
            let metadata = item.get("metadata").cloned().unwrap_or(json!({}));
            json!({
                "cells": cells,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata}
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": list.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))},
        "columnDefinitions": columns.iter().map(|(name, format)| json!({
            "name": name, "type": "string", "format": format, "description": name, "priority": 0
        })).collect::<Vec<_>>(),
        "rows": rows
    })
}

fn create(
    shared: &Shared,
    kind: Kind,
    namespace: Option<&str>,
    body: &[u8],
) -> Result<Response<Body>, Failure> {
    let mut object: Value = serde_json::from_slice(body)
        .map_err(|e| Failure::new(400, "BadRequest", format!("error decoding the body: {e}")))?;
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Failure::new(422, "Invalid", format!("{} \"\" is invalid: metadata.name: Required value: name or generateName is required", kind.name())))?
        .to_owned();
    let ns = match kind {
        Kind::Node => String::new(),
        Kind::Pod => {
            let ns = namespace.ok_or_else(|| {
                Failure::new(405, "MethodNotAllowed", "pods are created in a namespace")
            })?;
            object["metadata"]["namespace"] = json!(ns);
            ns.to_owned()
        }
    };
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".to_owned(), json!("v1"));
        map.insert("kind".to_owned(), json!(kind.name()));
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("uid");
    }
    let key = (kind, ns, name.clone());
    let mut store = shared.store();
    if store.objects.contains_key(&key) {
        return Err(Failure {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", kind.plural()),
            details: Some(json!({"name": name, "kind": kind.plural()})),
        });
    }
    let stored = store.write(key, Some(object));
    shared.changed.send_replace(store.rv);
    Ok(json_response(
        StatusCode::CREATED,
        &stored.unwrap_or(Value::Null),
    ))
}

/// Replaces an object with `change(current)` under the API server's update
/// rules: type and identity fields kept, the resourceVersion precondition,
/// spec or status kept depending on the (sub)resource, no write when
/// nothing changed.
fn update(
    shared: &Shared,
    key: &Key,
    status_subresource: bool,
    change: impl FnOnce(&Value) -> Result<Value, Failure>,
) -> Result<Response<Body>, Failure> {
    let (kind, _, name) = key;
    let mut store = shared.store();
    let current = store
        .objects
        .get(key)
        .cloned()
        .ok_or_else(|| Failure::not_found(*kind, name))?;
    let mut new = change(&current)?;
    if !new.is_object() {
        return Err(Failure::new(
            400,
            "BadRequest",
            format!("the new {} is not a JSON object", kind.name()),
        ));
    }
    let current_rv = current.pointer("/metadata/resourceVersion").cloned();
    match new.pointer("/metadata/resourceVersion") {
        Some(rv) if Some(rv) != current_rv.as_ref() && rv != &json!("") => {
            return Err(Failure {
                code: 409,
                reason: "Conflict",
                message: format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    kind.plural()
                ),
                details: Some(json!({"name": name, "kind": kind.plural()})),
            });
        }
        _ => {}
    }
    let new_name = new.pointer("/metadata/name").and_then(Value::as_str);
    if new_name.is_some_and(|n| n != name) {
        return Err(Failure::new(
            400,
            "BadRequest",
            format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                new_name.unwrap_or("")
            ),
        ));
    }
    let Some(map) = new.as_object_mut() else {
        return Err(Failure::new(400, "BadRequest", "not an object"));
    };
    for field in ["apiVersion", "kind"] {
        if let Some(v) = current.get(field) {
            map.insert(field.to_owned(), v.clone());
        }
    }
    // The status subresource may change metadata and status; the main
    // resource metadata and spec (the API server's node and pod strategies).
    let kept = if status_subresource { "spec" } else { "status" };
    match current.get(kept) {
        Some(v) => {
            map.insert(kept.to_owned(), v.clone());
        }
        None => {
            map.remove(kept);
        }
    }
    let meta = map.entry("metadata").or_insert(json!({}));
    if let Some(meta) = meta.as_object_mut() {
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "resourceVersion",
        ] {
            match current.pointer(&format!("/metadata/{field}")) {
                Some(v) => {
                    meta.insert(field.to_owned(), v.clone());
                }
                None => {
                    meta.remove(field);
                }
            }
        }
    }
    if new == current {
        return Ok(json_response(StatusCode::OK, &current));
    }
    let stored = store.write(key.clone(), Some(new));
    shared.changed.send_replace(store.rv);
    Ok(json_response(
        StatusCode::OK,
        &stored.unwrap_or(Value::Null),
    ))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(kind: Kind, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": kind.name(), "apiVersion": "v1", "metadata": metadata}),
    )
}

fn expired_line(rv: u64, floor: u64) -> Bytes {
    event_line(
        "ERROR",
        &status_object(
            410,
            "Expired",
            &format!("too old resource version: {rv} ({floor})"),
            None,
        ),
    )
}

/// What a watch request asked for.
struct WatchRequest {
    kind: Kind,
    selectors: Selectors,
    /// `resourceVersion`: `None` when unset.
    rv: Option<u64>,
    /// `sendInitialEvents=true`.
    send_initial: bool,
    /// `allowWatchBookmarks=true`.
    bookmarks: bool,
    /// `timeoutSeconds`.
    timeout: Option<Duration>,
    /// kubectl's `Accept: …;as=Table`: objects are sent as one-row tables.
    table: bool,
}

impl WatchRequest {
    fn line(&self, event: &str, object: &Value) -> Bytes {
        if self.table {
            let list = json!({
                "metadata": {"resourceVersion": object.pointer("/metadata/resourceVersion")},
                "items": [object]
            });
            event_line(event, &table(self.kind, &list))
        } else {
            event_line(event, object)
        }
    }
}

fn watch(
    shared: &Arc<Shared>,
    kind: Kind,
    namespace: Option<String>,
    query: &Query,
    accept: &str,
) -> Result<Response<Body>, Failure> {
    let request = WatchRequest {
        kind,
        selectors: Selectors::parse(kind, namespace, query)?,
        rv: match query.get("resourceVersion").filter(|v| !v.is_empty()) {
            Some(text) => Some(parse_rv(text)?),
            None => None,
        },
        send_initial: query.flag("sendInitialEvents"),
        bookmarks: query.flag("allowWatchBookmarks"),
        timeout: query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|t| *t > 0)
            .map(Duration::from_secs),
        table: accept.contains("as=Table"),
    };
    let (tx, rx) = mpsc::channel(256);
    let task = tokio::spawn(run_watch(shared.clone(), request, tx));
    shared.track(task.abort_handle());
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .body(ChannelBody(rx).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed())))
}

async fn run_watch(shared: Arc<Shared>, request: WatchRequest, tx: mpsc::Sender<Bytes>) {
    let WatchRequest {
        kind,
        ref selectors,
        rv,
        send_initial,
        bookmarks,
        timeout,
        ..
    } = request;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut changed = shared.changed.subscribe();
    let (mut lines, mut cur, mut done) = (Vec::new(), 0, false);
    {
        let store = shared.store();
        match rv {
            Some(rv) if rv != 0 && rv < store.floor => {
                lines.push(expired_line(rv, store.floor));
                done = true;
            }
            Some(rv) if rv != 0 && !send_initial => cur = rv,
            _ => {
                for (key, object) in store.objects.iter().filter(|(k, _)| k.0 == kind) {
                    if selectors.matches(key, object) {
                        lines.push(request.line("ADDED", object));
                    }
                }
                cur = store.rv;
                if send_initial {
                    lines.push(bookmark(kind, cur, true));
                }
            }
        }
    }
    let period = shared.opts.bookmark_interval.max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        for line in lines.drain(..) {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if done {
            return;
        }
        {
            let store = shared.store();
            if cur < store.floor {
                lines.push(expired_line(cur, store.floor));
                done = true;
                continue;
            }
            // The history is ordered by version: skip what was sent.
            let start = store.history.partition_point(|e| e.rv <= cur);
            for event in store.history[start..].iter().filter(|e| e.key.0 == kind) {
                let was = event
                    .old
                    .as_ref()
                    .filter(|o| selectors.matches(&event.key, o));
                let is = event
                    .new
                    .as_ref()
                    .filter(|n| selectors.matches(&event.key, n));
                match (was, is, &event.new) {
                    (None, Some(new), _) => lines.push(request.line("ADDED", new)),
                    (Some(_), Some(new), _) => lines.push(request.line("MODIFIED", new)),
                    (Some(_), None, Some(new)) => lines.push(request.line("DELETED", new)),
                    (Some(old), None, None) => {
                        let mut old = old.clone();
                        old["metadata"]["resourceVersion"] = json!(event.rv.to_string());
                        lines.push(request.line("DELETED", &old));
                    }
                    (None, None, _) => {}
                }
            }
            cur = store.rv;
        }
        if !lines.is_empty() {
            continue;
        }
        tokio::select! {
            result = changed.changed() => {
                if result.is_err() {
                    return;
                }
            }
            () = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            } => return,
            _ = ticker.tick(), if bookmarks => lines.push(bookmark(kind, cur, false)),
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_handle_is_shareable() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<FakeApiServer>();
        shareable::<RequestRecord>();
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_812_262)),
            "2026-11-27T20:44:22Z"
        );
    }

    #[test]
    fn rfc3339_round_trips() {
        for secs in [0, 951_782_400, 1_795_812_262, 4_102_444_799] {
            let text = rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
            assert_eq!(parse_rfc3339(&text), Some(secs), "{text}");
        }
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("/api/v1/nodes/n1/status"),
            Route::Object {
                kind: Kind::Node,
                namespace: String::new(),
                name: "n1".to_owned(),
                status: true
            }
        );
        assert_eq!(
            route("/api/v1/namespaces/kube-flannel/pods"),
            Route::Collection {
                kind: Kind::Pod,
                namespace: Some("kube-flannel".to_owned())
            }
        );
        assert_eq!(route("/apis/apps/v1"), Route::Unknown);
    }

    #[test]
    fn query_decoding() {
        let query = Query::parse("labelSelector=a%3Db%2Cc&watch=1&x");
        assert_eq!(query.get("labelSelector"), Some("a=b,c"));
        assert!(query.flag("watch"));
        assert_eq!(query.get("x"), Some(""));
    }

    #[test]
    fn snapshots_undo_later_writes() {
        let mut store = Store::default();
        let key = (Kind::Node, String::new(), "a".to_owned());
        store.write(
            key.clone(),
            Some(json!({"metadata": {"name": "a"}, "v": 1})),
        );
        store.write(
            key.clone(),
            Some(json!({"metadata": {"name": "a"}, "v": 2})),
        );
        store.write(key.clone(), None);
        assert_eq!(store.snapshot(Kind::Node, 1)[&key]["v"], 1);
        assert_eq!(store.snapshot(Kind::Node, 2)[&key]["v"], 2);
        assert!(store.snapshot(Kind::Node, 3).is_empty());
    }
}
