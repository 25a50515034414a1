//! The Kubernetes subnet manager (feature `kube`): Go flannel's
//! `--kube-subnet-mgr`, wire-compatible with kube-flannel.
//!
//! - **Lease**: this node's `spec.podCIDR(s)` (IPv4, IPv6 or dual stack),
//!   which must lie inside the configured network. Leases never expire.
//! - **Publishing**: the node's annotations (`<prefix>backend-data`,
//!   `backend-type`, `public-ip`, ... see [`Annotations`]) with exactly the
//!   values Go writes per backend type, sent as a strategic-merge patch on
//!   `nodes/<name>/status`. `public-ip-overwrite` and `node-public-ip(v6)`
//!   are honoured; the VTEP MAC is read back from `backend-data` so vxlan
//!   keeps it across restarts.
//! - **Peers**: a watch over every Node ([`watch`]), converted like Go's
//!   `nodeToLease` in the families of our own lease
//!   ([`KubeSubnetManager::peer_families`]); a node that cannot be
//!   converted is skipped, never the others. Nodes are parsed as
//!   [`SlimNode`] and not kept: per node the watch keeps the values the
//!   update filter compares and the key of its last lease. Disabled for the
//!   `alloc` backend, as in Go.
//! - **Ready**: [`SubnetManager::complete_lease`] sets the node's
//!   `NetworkUnavailable` condition to `False` (reason `FlannelIsUp`) unless
//!   that is turned off.
//!
//! The client comes from a kubeconfig (`--kubeconfig-file`, its server
//! replaced by `--kube-api-url` when given), from `--kube-api-url` alone, or
//! from the pod's service account (`KUBERNETES_SERVICE_HOST/PORT`, token and
//! CA under [`SERVICE_ACCOUNT_DIR`]). The node is `NODE_NAME`, or the node
//! of the pod `POD_NAMESPACE/POD_NAME`. See [`KubeOptions`].
//!
//! Two deliberate differences from Go: the stored VTEP MAC is read from the
//! *normalised* annotation name, so it survives restarts with a custom
//! prefix too (Go builds `<raw prefix>/backend-data`, which only matches
//! prefixes without a `/`); and peers are read in our own lease's families
//! (see [`KubeSubnetManager::peer_families`] for what Go does instead).
//!
//! ```no_run
//! use flannel_core::SubnetManager;
//! use flannel_subnet::kube::{KubeOptions, KubeSubnetManager};
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let options = KubeOptions {
//!     kubeconfig: Some("/etc/kubernetes/flannel.kubeconfig".into()),
//!     net_config_path: "/etc/kube-flannel/net-conf.json".into(),
//!     ..KubeOptions::default()
//! }
//! .with_env(|name| std::env::var(name).ok());
//! let manager = KubeSubnetManager::connect(options).await?;
//! let config = manager.get_network_config().await?;
//! println!("network {:?}, node {}", config.network, manager.node_name());
//! # Ok(())
//! # }
//! ```

mod annotations;
mod convert;
mod node;
pub mod watch;

pub use annotations::{
    Annotations, DEFAULT_EVENT_QUEUE_DEPTH, DEFAULT_PREFIX, NodeAnnotations, PrefixError, Relevant,
    annotation_changes, annotations_patch, event_queue_depth, network_unavailable_patch,
    rfc3339_seconds, stored_mac, update_changed,
};
pub use convert::{NodeError, contains_cidr, node_to_lease, own_pod_cidrs};
pub use node::SlimNode;

use crate::manager::Backoff;
use flannel_core::config::NetConfig;
use flannel_core::event::LeaseWatchResult;
use flannel_core::ip::{Family, GoIp};
use flannel_core::key::SubnetKey;
use flannel_core::lease::Lease;
use flannel_core::manager::{AcquireRequest, LeaseStream, ManagerError, StoredMacs, SubnetManager};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, GetParams, ListParams, Patch, PatchParams};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Where a pod's service account token, CA and namespace are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Go's `nodeControllerSyncTimeout`: how long [`KubeSubnetManager::connect`]
/// waits for the first node list.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Errors creating the manager (Go's texts; flanneld prefixes them with
/// `Failed to create SubnetManager: `).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    /// No usable client configuration.
    #[error("fail to create kubernetes config: {0}")]
    Config(String),
    /// The client could not be built from the configuration.
    #[error("unable to initialize client: {0}")]
    Client(#[source] kube::Error),
    /// Neither `NODE_NAME` nor both `POD_NAME` and `POD_NAMESPACE`.
    #[error("env variables POD_NAME and POD_NAMESPACE must be set")]
    NoNodeName,
    /// The pod could not be read.
    #[error("error retrieving pod spec for '{namespace}/{pod}': {message}")]
    Pod {
        /// `POD_NAMESPACE`.
        namespace: String,
        /// `POD_NAME`.
        pod: String,
        /// What went wrong.
        message: String,
    },
    /// The pod is not scheduled on a node.
    #[error("node name not present in pod spec '{namespace}/{pod}'")]
    PodWithoutNode {
        /// `POD_NAMESPACE`.
        namespace: String,
        /// `POD_NAME`.
        pod: String,
    },
    /// `--net-config-path` could not be read.
    #[error("failed to read net conf: {0}")]
    ReadNetConf(#[source] std::io::Error),
    /// `net-conf.json` does not parse.
    #[error("error parsing subnet config: {0}")]
    ParseNetConf(#[source] flannel_core::config::ConfigError),
    /// A bad `--kube-annotation-prefix` or `EVENT_QUEUE_DEPTH`.
    #[error("error creating network manager: {0}")]
    Manager(String),
    /// The first node list did not succeed within the sync timeout.
    #[error("error waiting for nodeController to sync state: context deadline exceeded ({0})")]
    SyncTimeout(String),
}

/// How to reach the API server and what to manage; see the module docs.
/// [`KubeOptions::with_env`] fills in what Go reads from the environment.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// `--kube-api-url`: the API server, replacing the kubeconfig's.
    pub api_url: Option<String>,
    /// `--kubeconfig-file`.
    pub kubeconfig: Option<PathBuf>,
    /// `KUBERNETES_SERVICE_HOST`, for the in-cluster client.
    pub service_host: Option<String>,
    /// `KUBERNETES_SERVICE_PORT`, for the in-cluster client.
    pub service_port: Option<String>,
    /// The service account mount: `token` and `ca.crt`
    /// ([`SERVICE_ACCOUNT_DIR`]).
    pub service_account_dir: PathBuf,
    /// `--kube-annotation-prefix` as given.
    pub annotation_prefix: String,
    /// `--net-config-path`.
    pub net_config_path: PathBuf,
    /// `--set-node-network-unavailable` (default true).
    pub set_node_network_unavailable: bool,
    /// `NODE_NAME`.
    pub node_name: Option<String>,
    /// `POD_NAME`.
    pub pod_name: Option<String>,
    /// `POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `EVENT_QUEUE_DEPTH` as given (parsed by [`event_queue_depth`]).
    pub event_queue_depth: Option<String>,
    /// `CONT_WHEN_CACHE_NOT_READY=true`: go on when the first node list
    /// times out.
    pub cont_when_cache_not_ready: bool,
    /// How long to wait for the first node list ([`SYNC_TIMEOUT`]).
    pub sync_timeout: Duration,
    /// Retry interval of the node read and patches in `acquire_lease` (Go:
    /// 3 s).
    pub poll_interval: Duration,
    /// How long `acquire_lease` retries before giving up (Go: 30 s).
    pub poll_timeout: Duration,
    /// Backoff of the node watch after errors.
    pub backoff: Backoff,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            api_url: None,
            kubeconfig: None,
            service_host: None,
            service_port: None,
            service_account_dir: SERVICE_ACCOUNT_DIR.into(),
            annotation_prefix: DEFAULT_PREFIX.into(),
            net_config_path: "/etc/kube-flannel/net-conf.json".into(),
            set_node_network_unavailable: true,
            node_name: None,
            pod_name: None,
            pod_namespace: None,
            event_queue_depth: None,
            cont_when_cache_not_ready: false,
            sync_timeout: SYNC_TIMEOUT,
            poll_interval: Duration::from_secs(3),
            poll_timeout: Duration::from_secs(30),
            backoff: Backoff {
                min: Duration::from_millis(200),
                max: Duration::from_secs(5),
            },
        }
    }
}

impl KubeOptions {
    /// Reads `NODE_NAME`, `POD_NAME`, `POD_NAMESPACE`, `EVENT_QUEUE_DEPTH`,
    /// `CONT_WHEN_CACHE_NOT_READY` and `KUBERNETES_SERVICE_HOST/PORT` through
    /// `get`. A variable that is set (and not empty, as Go's `os.Getenv`
    /// checks) replaces the field; an unset one leaves it as it was.
    pub fn with_env(self, get: impl Fn(&str) -> Option<String>) -> KubeOptions {
        let var = |n: &str| get(n).filter(|v| !v.is_empty());
        KubeOptions {
            node_name: var("NODE_NAME").or(self.node_name),
            pod_name: var("POD_NAME").or(self.pod_name),
            pod_namespace: var("POD_NAMESPACE").or(self.pod_namespace),
            event_queue_depth: var("EVENT_QUEUE_DEPTH").or(self.event_queue_depth),
            cont_when_cache_not_ready: match var("CONT_WHEN_CACHE_NOT_READY") {
                Some(v) => v == "true",
                None => self.cont_when_cache_not_ready,
            },
            service_host: var("KUBERNETES_SERVICE_HOST").or(self.service_host),
            service_port: var("KUBERNETES_SERVICE_PORT").or(self.service_port),
            ..self
        }
    }
}

/// Live state of the manager, for readiness and metrics.
#[derive(Debug, Default)]
pub struct KubeStatus {
    /// The node's annotations describe our lease (patched or already right).
    pub annotations_patched: AtomicBool,
    /// `NetworkUnavailable=False` was set (or setting it is turned off).
    pub condition_set: AtomicBool,
    /// The node watch has listed and is connected.
    pub in_sync: AtomicBool,
    /// Completed node lists (the first one and every re-list).
    pub lists: AtomicU64,
    /// Nodes known to the watch.
    pub nodes: AtomicU64,
    /// Nodes with a flannel lease.
    pub managed_nodes: AtomicU64,
    /// Nodes skipped because their annotations could not be converted.
    pub skipped_nodes: AtomicU64,
    /// Node watch errors.
    pub watch_errors: AtomicU64,
    /// Failed API requests made by acquisition and completion (retried).
    pub request_errors: AtomicU64,
}

/// A kube client error as a sentence (kube's own text embeds Debug output).
pub fn describe_kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let mut out = if s.message.is_empty() {
                "the API server refused the request".to_string()
            } else {
                s.message.clone()
            };
            out.push_str(&format!(" (HTTP {}", s.code));
            if !s.reason.is_empty() {
                out.push_str(&format!(", {}", s.reason));
            }
            out.push(')');
            out
        }
        other => {
            let mut out = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                let text = s.to_string();
                if !out.contains(&text) {
                    out.push_str(": ");
                    out.push_str(&text);
                }
                source = s.source();
            }
            out
        }
    }
}

/// Builds the client configuration as Go's `BuildConfigFromFlags`: a
/// kubeconfig (server replaced by the URL when given), the URL alone, or the
/// in-cluster service account.
async fn client_config(o: &KubeOptions) -> Result<kube::Config, KubeError> {
    use kube::config::{
        AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
        NamedContext,
    };
    let cfg_err = |e: &dyn std::fmt::Display| KubeError::Config(e.to_string());
    let parse_url = |u: &str| {
        u.parse::<http::Uri>()
            .map_err(|e| KubeError::Config(format!("invalid --kube-api-url {u:?}: {e}")))
    };
    let api_url = o.api_url.as_deref().filter(|u| !u.is_empty());
    if let Some(path) = &o.kubeconfig {
        let kc = Kubeconfig::read_from(path).map_err(|e| {
            KubeError::Config(format!("cannot read kubeconfig {}: {e}", path.display()))
        })?;
        let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| cfg_err(&e))?;
        if let Some(u) = api_url {
            config.cluster_url = parse_url(u)?;
        }
        return Ok(config);
    }
    if let Some(u) = api_url {
        return Ok(kube::Config::new(parse_url(u)?));
    }
    let (Some(host), Some(port)) = (&o.service_host, &o.service_port) else {
        return Err(KubeError::Config(
            "unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined"
                .into(),
        ));
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let token = o.service_account_dir.join("token");
    if let Err(e) = std::fs::metadata(&token) {
        return Err(KubeError::Config(format!("open {}: {e}", token.display())));
    }
    let kc = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "in-cluster".into(),
            cluster: Some(Cluster {
                server: Some(format!("https://{host}:{port}")),
                certificate_authority: Some(
                    o.service_account_dir.join("ca.crt").display().to_string(),
                ),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "service-account".into(),
            auth_info: Some(AuthInfo {
                token_file: Some(token.display().to_string()),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: "in-cluster".into(),
            context: Some(Context {
                cluster: "in-cluster".into(),
                user: Some("service-account".into()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some("in-cluster".into()),
        ..Kubeconfig::default()
    };
    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| cfg_err(&e))
}

/// Whether a backend type keeps an IPv6 part in its Kubernetes lease: Go
/// forces the lease of every backend but vxlan, host-gw and wireguard to
/// IPv4 only (udp, alloc and tencent-vpc publish the type `""`, which is
/// not among them either).
pub fn dual_stack_backend(backend_type: &str) -> bool {
    matches!(backend_type, "vxlan" | "wireguard" | "host-gw")
}

/// The Kubernetes subnet manager; see the module docs.
pub struct KubeSubnetManager {
    nodes: Api<SlimNode>,
    node_name: String,
    names: Arc<Annotations>,
    config: NetConfig,
    options: KubeOptions,
    queue_depth: usize,
    informer: bool,
    own: Mutex<Option<Lease>>,
    status: Arc<KubeStatus>,
}

fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{}s", s)
    }
}

impl KubeSubnetManager {
    /// Connects, finds this node, reads `net-conf.json` and (unless the
    /// backend is `alloc`) waits for the first node list, as Go's
    /// `NewSubnetManager`.
    pub async fn connect(options: KubeOptions) -> Result<KubeSubnetManager, KubeError> {
        let config = client_config(&options).await?;
        let client = kube::Client::try_from(config).map_err(KubeError::Client)?;
        let node_name = match &options.node_name {
            Some(n) => n.clone(),
            None => {
                let (Some(pod), Some(namespace)) = (&options.pod_name, &options.pod_namespace)
                else {
                    return Err(KubeError::NoNodeName);
                };
                let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
                let p = pods.get(pod).await.map_err(|e| KubeError::Pod {
                    namespace: namespace.clone(),
                    pod: pod.clone(),
                    message: describe_kube_error(&e),
                })?;
                p.spec
                    .and_then(|s| s.node_name)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| KubeError::PodWithoutNode {
                        namespace: namespace.clone(),
                        pod: pod.clone(),
                    })?
            }
        };
        let text =
            std::fs::read_to_string(&options.net_config_path).map_err(KubeError::ReadNetConf)?;
        let net_config = NetConfig::parse(&text).map_err(KubeError::ParseNetConf)?;
        let names = Annotations::new(&options.annotation_prefix)
            .map_err(|e| KubeError::Manager(e.to_string()))?;
        let queue_depth =
            event_queue_depth(options.event_queue_depth.as_deref()).map_err(KubeError::Manager)?;
        // When the backend is alloc, someone else (a cloud controller) does
        // the routing: Go runs no node informer.
        let informer = net_config.backend_type_lower() != "alloc";
        let manager = KubeSubnetManager {
            nodes: Api::all(client),
            node_name,
            names: Arc::new(names),
            config: net_config,
            options,
            queue_depth,
            informer,
            own: Mutex::new(None),
            status: Arc::new(KubeStatus::default()),
        };
        if !manager.informer {
            info!("Node controller skips sync");
        } else {
            manager.wait_for_sync().await?;
        }
        Ok(manager)
    }

    /// The node this manager acts for.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The annotation names in use.
    pub fn annotations(&self) -> &Annotations {
        &self.names
    }

    /// Live state for readiness and metrics.
    pub fn status(&self) -> Arc<KubeStatus> {
        self.status.clone()
    }

    /// `EVENT_QUEUE_DEPTH` in effect: the most events delivered in one batch.
    pub fn queue_depth(&self) -> usize {
        self.queue_depth
    }

    /// Go waits up to 10 minutes for its informer's first list; we wait for
    /// a node list to succeed (one item is enough to prove the API server
    /// answers and lets us list nodes).
    async fn wait_for_sync(&self) -> Result<(), KubeError> {
        info!(
            "Waiting {} for node controller to sync",
            go_duration(self.options.sync_timeout)
        );
        let start = Instant::now();
        let mut logged = false;
        loop {
            match self.nodes.list(&ListParams::default().limit(1)).await {
                Ok(_) => {
                    info!("Node controller sync successful");
                    return Ok(());
                }
                Err(e) => {
                    let text = describe_kube_error(&e);
                    if !logged {
                        warn!(
                            "cannot list the cluster's nodes yet (retrying every second): {text}"
                        );
                        logged = true;
                    }
                    if start.elapsed() >= self.options.sync_timeout {
                        if self.options.cont_when_cache_not_ready {
                            info!("Timed out waiting for node controller sync. Continuing anyway.");
                            return Ok(());
                        }
                        return Err(KubeError::SyncTimeout(text));
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn get_node(&self) -> Result<SlimNode, kube::Error> {
        if self.informer {
            self.nodes.get(&self.node_name).await
        } else {
            // Go reads from the API server's cache without an informer.
            self.nodes
                .get_with(&self.node_name, &GetParams::any())
                .await
        }
    }

    /// Retries `f` every poll interval until it succeeds or the poll timeout
    /// passes (Go's `PollUntilContextTimeout`, immediate first try).
    async fn poll<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, ManagerError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let deadline = Instant::now() + self.options.poll_timeout;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    self.status.request_errors.fetch_add(1, Ordering::Relaxed);
                    error!(
                        "Failed to {what} {}: {}",
                        self.node_name,
                        describe_kube_error(&e)
                    );
                }
            }
            if Instant::now() + self.options.poll_interval > deadline {
                return Err(ManagerError::Unavailable(format!(
                    "timeout contacting kube-api, failed to patch node \"{}\". Error: context deadline exceeded",
                    self.node_name
                )));
            }
            tokio::time::sleep(self.options.poll_interval).await;
        }
    }

    /// The address families peers are read in: the configured ones, less
    /// IPv6 when the backend's own lease is forced to IPv4 (see
    /// [`dual_stack_backend`]), so a peer lease never has a family our own
    /// lease lacks.
    ///
    /// Go reads peers in both configured families whatever the backend. A
    /// peer running a backend whose lease is forced to IPv4 (udp,
    /// tencent-vpc, ipip, ipsec) has no `public-ipv6` annotation (Go writes
    /// the IPv6 block only for vxlan, host-gw, wireguard and extension with
    /// an IPv6 address), so with a dual-stack net-conf Go skips every such
    /// peer (`Error turning node ... to lease: invalid IP address format`)
    /// and its backend never hears of it; where a peer does carry IPv6
    /// annotations, Go's IPv4-only backends use the IPv4 part only. (Of our
    /// backends, udp, ipip and ipsec refuse a dual-stack net-conf when they
    /// register; tencent-vpc accepts it.) Reading peers in the own lease's families gives
    /// those backends their IPv4 routes, keeps the update filter on the
    /// IPv4 annotations only (in Go's dual-stack filter an unchanged IPv6
    /// part hides an IPv4 change) and keeps our own node's lease key equal
    /// to our own lease's (the watch filters our own lease out by key).
    pub fn peer_families(&self) -> (bool, bool) {
        (
            self.config.enable_ipv4,
            self.config.enable_ipv6 && dual_stack_backend(&self.config.backend_type_lower()),
        )
    }

    fn lease_for(&self, req: &AcquireRequest, node: &SlimNode) -> Result<Lease, ManagerError> {
        let (cidr, ipv6_cidr) =
            own_pod_cidrs(node).map_err(|e| ManagerError::Other(e.to_string()))?;
        let mut subnet = None;
        let mut ipv6_subnet = None;
        if let Some(c) = cidr.filter(|_| self.config.enable_ipv4) {
            let net = self.config.network.filter(|n| !n.is_empty());
            if !net.is_some_and(|n| contains_cidr(&n, &c)) {
                return Err(ManagerError::Other(format!(
                    "subnet \"{}\" specified in the flannel net config doesn't contain \"{c}\" PodCIDR of the \"{}\" node",
                    net.map_or_else(|| "0.0.0.0/0".to_string(), |n| n.to_string()),
                    self.node_name
                )));
            }
            subnet = Some(c);
        }
        if let Some(c) = ipv6_cidr.filter(|_| self.config.enable_ipv6) {
            let net = self.config.ipv6_network.filter(|n| !n.is_empty());
            if !net.is_some_and(|n| contains_cidr(&n, &c)) {
                return Err(ManagerError::Other(format!(
                    "subnet \"{}\" specified in the flannel net config doesn't contain \"{c}\" IPv6 PodCIDR of the \"{}\" node",
                    net.map_or_else(|| "::/0".to_string(), |n| n.to_string()),
                    self.node_name
                )));
            }
            ipv6_subnet = Some(c);
        }
        // Only vxlan, host-gw and wireguard do dual stack in Go: the others
        // get an IPv4-only lease.
        if !dual_stack_backend(&req.attrs.backend_type) {
            ipv6_subnet = None;
        }
        let key = SubnetKey::new(subnet, ipv6_subnet).ok_or_else(|| {
            ManagerError::Other(format!(
                "node \"{}\" has no pod CIDR of an enabled address family (IPv4 {}, IPv6 {})",
                self.node_name,
                if self.config.enable_ipv4 {
                    "enabled"
                } else {
                    "disabled"
                },
                if self.config.enable_ipv6 {
                    "enabled"
                } else {
                    "disabled"
                },
            ))
        })?;
        let mut lease = Lease::new(key, req.attrs.clone());
        lease.asof = convert::resource_version(node);
        Ok(lease)
    }
}

#[async_trait::async_trait]
impl SubnetManager for KubeSubnetManager {
    fn name(&self) -> &'static str {
        "kube"
    }

    async fn get_network_config(&self) -> Result<NetConfig, ManagerError> {
        // Go hands out the parsed file as it is: no defaults derived, no
        // SubnetLen/SubnetMin/SubnetMax checks (podCIDRs come from the
        // cluster).
        Ok(self.config.clone())
    }

    async fn acquire_lease(&self, req: &AcquireRequest) -> Result<Lease, ManagerError> {
        let node = self.poll("get node", || self.get_node()).await?;
        // Check the CIDRs before touching the node.
        let lease = self.lease_for(req, &node)?;
        let current = convert::node_annotations(&node).clone();
        if let Some(changes) = annotation_changes(&self.names, &current, &req.attrs) {
            let body = annotations_patch(&changes);
            let raw = serde_json::value::RawValue::from_string(body.clone())
                .map_err(|e| ManagerError::Other(format!("building the node patch: {e}")))?;
            let patch = Patch::Strategic(raw);
            let params = PatchParams::default();
            self.poll("patch node", || {
                self.nodes.patch_status(&self.node_name, &params, &patch)
            })
            .await?;
            info!("patched the annotations of node {}: {body}", self.node_name);
        } else {
            info!(
                "the annotations of node {} already describe our lease",
                self.node_name
            );
        }
        self.status
            .annotations_patched
            .store(true, Ordering::Relaxed);
        *self.own.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease.clone());
        Ok(lease)
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, ManagerError> {
        // Kubernetes leases do not expire (their expiry is None, so the
        // runner never asks); nothing to extend.
        Ok(lease.clone())
    }

    async fn watch_lease(&self, key: SubnetKey) -> Result<LeaseStream, ManagerError> {
        let all = self.watch_leases().await?;
        Ok(Box::pin(all.map(move |item| {
            item.map(|r| match r {
                LeaseWatchResult::Snapshot(ls) => {
                    LeaseWatchResult::Snapshot(ls.into_iter().filter(|l| l.key() == key).collect())
                }
                LeaseWatchResult::Events(es) => LeaseWatchResult::Events(
                    es.into_iter().filter(|e| e.lease.key() == key).collect(),
                ),
            })
        })))
    }

    async fn watch_leases(&self) -> Result<LeaseStream, ManagerError> {
        if !self.informer {
            // alloc: no informer. Our own lease is all there is.
            let own: Vec<Lease> = self
                .own
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            self.status.in_sync.store(true, Ordering::Relaxed);
            return Ok(Box::pin(
                futures_util::stream::once(async move { Ok(LeaseWatchResult::Snapshot(own)) })
                    .chain(futures_util::stream::pending()),
            ));
        }
        let api = self.nodes.clone();
        let make: watch::NodeEventsFactory = Arc::new(move || {
            kube::runtime::watcher(api.clone(), kube::runtime::watcher::Config::default()).boxed()
        });
        let (ipv4, ipv6) = self.peer_families();
        let state = watch::NodeState::new(self.names.clone(), ipv4, ipv6, self.status.clone());
        Ok(watch::lease_stream(
            make,
            state,
            self.queue_depth,
            self.options.backoff,
        ))
    }

    async fn complete_lease(&self, _lease: &Lease) -> Result<(), ManagerError> {
        if !self.options.set_node_network_unavailable {
            info!("Skip setting NodeNetworkUnavailable");
            self.status.condition_set.store(true, Ordering::Relaxed);
            return Ok(());
        }
        info!("Setting NodeNetworkUnavailable");
        let body = network_unavailable_patch(&rfc3339_seconds(std::time::SystemTime::now()));
        let raw = serde_json::value::RawValue::from_string(body)
            .map_err(|e| ManagerError::Other(format!("building the condition patch: {e}")))?;
        match self
            .nodes
            .patch_status(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Strategic(raw),
            )
            .await
        {
            Ok(_) => {
                self.status.condition_set.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.status.request_errors.fetch_add(1, Ordering::Relaxed);
                let text = format!(
                    "Unable to set NetworkUnavailable to False for \"{}\": {}",
                    self.node_name,
                    describe_kube_error(&e)
                );
                Err(ManagerError::Other(text))
            }
        }
    }

    async fn stored_mac_addresses(&self) -> StoredMacs {
        match self.get_node().await {
            Ok(node) => {
                let a = convert::node_annotations(&node);
                let mac = |k: &String| a.get(k).and_then(|v| stored_mac(v));
                let macs = StoredMacs {
                    v4: mac(&self.names.backend_data),
                    v6: mac(&self.names.backend_v6_data),
                };
                if let Some(m) = &macs.v4 {
                    info!("the node's backend-data names VTEP MAC {m}; reusing it");
                }
                macs
            }
            Err(e) => {
                warn!(
                    "cannot read node {} for its stored VTEP MAC: {}",
                    self.node_name,
                    describe_kube_error(&e)
                );
                StoredMacs::default()
            }
        }
    }

    async fn stored_public_ips(&self) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        let node = match self.get_node().await {
            Ok(n) => n,
            Err(e) => {
                warn!(
                    "cannot read node {} for its node-public-ip annotations: {}",
                    self.node_name,
                    describe_kube_error(&e)
                );
                return (None, None);
            }
        };
        let a = convert::node_annotations(&node);
        let read = |k: &String| a.get(k).filter(|v| !v.is_empty());
        let v4 = read(&self.names.node_public_ip).and_then(|v| match Ipv4Addr::parse_go(v) {
            Ok(ip) => {
                info!(
                    "using public IP {ip} from annotation {}",
                    self.names.node_public_ip
                );
                Some(ip)
            }
            Err(e) => {
                warn!("ignoring annotation {}={v}: {e}", self.names.node_public_ip);
                None
            }
        });
        let v6 = read(&self.names.node_public_ipv6).and_then(|v| match Ipv6Addr::parse_go(v) {
            Ok(ip) => {
                info!(
                    "using public IPv6 {} from annotation {}",
                    GoIp(ip),
                    self.names.node_public_ipv6
                );
                Some(ip)
            }
            Err(e) => {
                warn!(
                    "ignoring annotation {}={v}: {e}",
                    self.names.node_public_ipv6
                );
                None
            }
        });
        (v4, v6)
    }
}
