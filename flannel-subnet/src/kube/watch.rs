//! The Node watch as a [`LeaseStream`]: kube-runtime's watcher (list, then
//! watch from the list's resourceVersion, resuming from the last one seen
//! and re-listing after `410 Gone`) turned into snapshots and lease events
//! the way Go's node informer handlers do it.
//!
//! - Each (re-)list is delivered as one [`LeaseWatchResult::Snapshot`] once
//!   the watcher reports it complete, so peers missing from a fresh list are
//!   removed and nothing is lost across an API server restart.
//! - Added nodes and deleted nodes with `kube-subnet-manager: "true"` are
//!   `Added`/`Removed` events; an updated node is an event only when Go's
//!   update filter ([`update_changed`](super::update_changed)) says so.
//! - A node that cannot be converted ([`node_to_lease`]) is skipped with a
//!   log line; the other nodes are unaffected.
//! - Nodes arrive as [`SlimNode`]s and are not kept: per node only the
//!   packed values of the update filter and the key of the last lease
//!   delivered (a re-list builds its snapshot from the list itself).
//! - Events ready at the same time are delivered together, up to
//!   `EVENT_QUEUE_DEPTH` per batch.
//! - Watch errors are yielded (the runner logs them, rate-limited) after a
//!   backoff; once the watch is quiet for [`QUIET_AFTER_ERROR`] after an
//!   error, an empty batch marks it in sync again.

use super::annotations::{Annotations, Compared, is_managed};
use super::convert::{node_annotations, node_name, node_to_lease};
use super::node::SlimNode;
use super::{KubeStatus, describe_kube_error};
use crate::manager::Backoff;
use flannel_core::event::{LeaseEvent, LeaseWatchResult};
use flannel_core::key::SubnetKey;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::manager::{LeaseStream, ManagerError};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use kube::runtime::watcher::{Error as WatchError, Event};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::{debug, info, warn};

/// After a watch error, the watch counts as in sync again when it has been
/// quiet (no new error) for this long: kube-runtime resumes a watch without
/// telling, and a quiet cluster has no event to prove it.
pub const QUIET_AFTER_ERROR: Duration = Duration::from_secs(1);

/// How many times the stream yields to the runtime, with nothing ready, before
/// it delivers the events it has collected.
const BATCH_YIELDS: u32 = 3;

/// The raw watcher stream.
pub type NodeEvents = BoxStream<'static, Result<Event<SlimNode>, WatchError>>;

/// Makes a fresh watcher (a new list) when the current one cannot recover.
pub type NodeEventsFactory = Arc<dyn Fn() -> NodeEvents + Send + Sync>;

/// What is kept per node, in place of the Node: the values Go's update
/// filter compares (packed) and the key of the last lease delivered for it
/// (a removal names that key even if the node's annotations turned bad
/// since). Everything else is rebuilt from the node when it changes.
#[derive(Debug, Clone, Default)]
struct Entry {
    compared: Compared,
    key: Option<SubnetKey>,
}

/// The conversion state: pure, fed one watcher event at a time.
pub(crate) struct NodeState {
    names: Arc<Annotations>,
    ipv4: bool,
    ipv6: bool,
    nodes: HashMap<Box<str>, Entry>,
    /// Entries of `nodes` with a key.
    managed: usize,
    listing: Option<HashMap<Box<str>, Entry>>,
    /// The leases of the list in progress, for its snapshot.
    pending: Vec<Lease>,
    status: Arc<KubeStatus>,
}

/// What one watcher event means.
#[derive(Debug)]
pub(crate) enum Output {
    Nothing,
    Event(LeaseEvent),
    Snapshot(Vec<Lease>),
}

impl NodeState {
    /// Peers are read in the families `ipv4` and `ipv6` (the manager's
    /// [`peer_families`](super::KubeSubnetManager::peer_families)).
    pub(crate) fn new(
        names: Arc<Annotations>,
        ipv4: bool,
        ipv6: bool,
        status: Arc<KubeStatus>,
    ) -> Self {
        NodeState {
            names,
            ipv4,
            ipv6,
            nodes: HashMap::new(),
            managed: 0,
            listing: None,
            pending: Vec::new(),
            status,
        }
    }

    fn convert(&self, node: &SlimNode) -> Option<Lease> {
        match node_to_lease(&self.names, node, self.ipv4, self.ipv6) {
            Ok(l) => Some(l),
            Err(e) => {
                self.status.skipped_nodes.fetch_add(1, Ordering::Relaxed);
                warn!("Error turning node \"{}\" to lease: {e}", node_name(node));
                None
            }
        }
    }

    fn compared(&self, node: &SlimNode) -> Compared {
        Compared::of(&self.names, node_annotations(node), self.ipv4, self.ipv6)
    }

    pub(crate) fn apply(&mut self, event: Event<SlimNode>) -> Output {
        match event {
            Event::Init => {
                debug!("listing the cluster's nodes");
                self.listing = Some(HashMap::new());
                self.pending = Vec::new();
                Output::Nothing
            }
            Event::InitApply(node) => {
                // The lease itself is not kept: the snapshot converts the
                // node again from the list's copy.
                let lease = if is_managed(&self.names, node_annotations(&node)) {
                    self.convert(&node)
                } else {
                    None
                };
                let entry = Entry {
                    compared: self.compared(&node),
                    key: lease.as_ref().map(Lease::key),
                };
                let listing = self.listing.get_or_insert_with(HashMap::new);
                listing.insert(node_name(&node).into(), entry);
                if let Some(l) = lease {
                    self.pending.push(l);
                }
                Output::Nothing
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let relist = self.status.lists.fetch_add(1, Ordering::Relaxed) > 0;
                self.nodes = listed;
                self.managed = self.nodes.values().filter(|e| e.key.is_some()).count();
                let mut leases = std::mem::take(&mut self.pending);
                leases.sort_by_key(Lease::key);
                // A node listed twice (a list page repeated) counts once.
                leases.dedup_by_key(|l| l.key());
                self.publish_counts();
                let what = if relist { "re-listed" } else { "listed" };
                info!(
                    "{what} {} nodes, {} of them with flannel leases",
                    self.nodes.len(),
                    leases.len()
                );
                Output::Snapshot(leases)
            }
            Event::Apply(node) => {
                let compared = self.compared(&node);
                let managed = is_managed(&self.names, node_annotations(&node));
                let out = match self.nodes.get(node_name(&node)) {
                    // Go's update handler: managed, and a relevant change.
                    Some(old) => {
                        if managed && old.compared.changed(&compared, self.ipv4, self.ipv6) {
                            self.convert(&node)
                        } else {
                            None
                        }
                    }
                    // Go's add handler: any managed node.
                    None if managed => self.convert(&node),
                    None => None,
                };
                let entry = self.nodes.entry(node_name(&node).into()).or_default();
                entry.compared = compared;
                if let Some(lease) = &out {
                    if entry.key.is_none() {
                        self.managed += 1;
                    }
                    entry.key = Some(lease.key());
                }
                self.publish_counts();
                match out {
                    Some(lease) => Output::Event(LeaseEvent::added(lease)),
                    None => Output::Nothing,
                }
            }
            Event::Delete(node) => {
                let old = self.nodes.remove(node_name(&node));
                if old.as_ref().is_some_and(|e| e.key.is_some()) {
                    self.managed -= 1;
                }
                self.publish_counts();
                let managed = is_managed(&self.names, node_annotations(&node));
                let lease = match old.and_then(|e| e.key) {
                    // The key last delivered, with the node's last attrs
                    // when they still convert (the watcher of the leases
                    // knows the full lease by key anyway).
                    Some(key) => {
                        let attrs = if managed {
                            node_to_lease(&self.names, &node, self.ipv4, self.ipv6)
                                .map(|l| l.attrs)
                                .unwrap_or_default()
                        } else {
                            LeaseAttrs::default()
                        };
                        let mut l = Lease::new(key, attrs);
                        l.asof = super::convert::resource_version(&node);
                        Some(l)
                    }
                    None if managed => self.convert(&node),
                    None => None,
                };
                match lease {
                    Some(l) => Output::Event(LeaseEvent::removed(l)),
                    None => Output::Nothing,
                }
            }
        }
    }

    /// What the kept state costs: the map's table (at its capacity) and
    /// each entry's heap parts, in bytes.
    #[cfg(test)]
    fn kept_bytes(&self) -> usize {
        let table = self.nodes.capacity() * (std::mem::size_of::<(Box<str>, Entry)>() + 1);
        let heap: usize = self
            .nodes
            .iter()
            .map(|(name, e)| name.len() + e.compared.heap_len())
            .sum();
        table + heap
    }

    fn publish_counts(&self) {
        self.status
            .nodes
            .store(self.nodes.len() as u64, Ordering::Relaxed);
        self.status
            .managed_nodes
            .store(self.managed as u64, Ordering::Relaxed);
    }
}

/// A watch start refused with `410 Gone`: the resourceVersion is too old
/// and kube-runtime would retry it forever; only a new list helps.
fn needs_relist(e: &WatchError) -> bool {
    match e {
        WatchError::WatchStartFailed(kube::Error::Api(s)) => s.code == 410,
        _ => false,
    }
}

fn describe_watch_error(e: &WatchError) -> String {
    match e {
        WatchError::InitialListFailed(k) => {
            format!("listing nodes failed: {}", describe_kube_error(k))
        }
        WatchError::WatchStartFailed(k) => {
            format!("starting the node watch failed: {}", describe_kube_error(k))
        }
        WatchError::WatchError(s) => format!(
            "the API server ended the node watch: {} (HTTP {}{})",
            s.message,
            s.code,
            if s.reason.is_empty() {
                String::new()
            } else {
                format!(", {}", s.reason)
            }
        ),
        WatchError::WatchFailed(k) => format!("the node watch failed: {}", describe_kube_error(k)),
        WatchError::NoResourceVersion => {
            "the API server sent a node without a resourceVersion".to_string()
        }
    }
}

struct Stream {
    source: NodeEvents,
    make: NodeEventsFactory,
    state: NodeState,
    depth: usize,
    out: std::collections::VecDeque<Result<LeaseWatchResult, ManagerError>>,
    backoff: Backoff,
    delay: Duration,
    sleep_first: Option<Duration>,
    after_error: bool,
}

impl Stream {
    fn error(&mut self, e: WatchError) -> ManagerError {
        self.state
            .status
            .watch_errors
            .fetch_add(1, Ordering::Relaxed);
        self.state.status.in_sync.store(false, Ordering::Relaxed);
        if needs_relist(&e) {
            info!("the node watch's resourceVersion expired; listing the nodes again");
            self.source = (self.make)();
        }
        self.sleep_first = Some(self.delay);
        self.delay = self.backoff.next(self.delay);
        self.after_error = true;
        ManagerError::Unavailable(describe_watch_error(&e))
    }

    /// Feeds one event; events go to `events`, a snapshot flushes them
    /// first. Returns false when the batch must end here.
    fn feed(&mut self, event: Event<SlimNode>, events: &mut Vec<LeaseEvent>) -> bool {
        match self.state.apply(event) {
            Output::Nothing => true,
            Output::Event(e) => {
                events.push(e);
                true
            }
            Output::Snapshot(leases) => {
                if !events.is_empty() {
                    self.out
                        .push_back(Ok(LeaseWatchResult::Events(std::mem::take(events))));
                }
                self.state.status.in_sync.store(true, Ordering::Relaxed);
                self.out.push_back(Ok(LeaseWatchResult::Snapshot(leases)));
                false
            }
        }
    }

    async fn next(&mut self) -> Result<LeaseWatchResult, ManagerError> {
        loop {
            if let Some(item) = self.out.pop_front() {
                return item;
            }
            if let Some(d) = self.sleep_first.take() {
                tokio::time::sleep(d).await;
            }
            let item = if self.after_error {
                tokio::select! {
                    item = self.source.next() => item,
                    _ = tokio::time::sleep(QUIET_AFTER_ERROR) => {
                        self.after_error = false;
                        self.delay = self.backoff.min;
                        // Only a watch that had listed once is in sync.
                        if self.state.status.lists.load(Ordering::Relaxed) > 0 {
                            self.state.status.in_sync.store(true, Ordering::Relaxed);
                            return Ok(LeaseWatchResult::Events(Vec::new()));
                        }
                        continue;
                    }
                }
            } else {
                self.source.next().await
            };
            let event = match item {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => return Err(self.error(e)),
                None => {
                    // kube-runtime's watcher never ends; start over if it did.
                    self.source = (self.make)();
                    continue;
                }
            };
            self.after_error = false;
            self.delay = self.backoff.min;
            let mut events = Vec::new();
            let mut more = self.feed(event, &mut events);
            // Deliver what is ready together, up to EVENT_QUEUE_DEPTH: a burst
            // of Nodes (a cluster scaling up) then costs the backend one batch,
            // not one per Node. A few yields let the connection task read what
            // the socket already holds; a lone event is delayed by microseconds.
            let mut misses = 0;
            while more && !events.is_empty() && events.len() < self.depth {
                match self.source.next().now_or_never() {
                    Some(Some(Ok(ev))) => {
                        misses = 0;
                        more = self.feed(ev, &mut events);
                    }
                    Some(Some(Err(e))) => {
                        let err = self.error(e);
                        self.out.push_back(Err(err));
                        break;
                    }
                    Some(None) => break,
                    None if misses < BATCH_YIELDS => {
                        misses += 1;
                        tokio::task::yield_now().await;
                    }
                    None => break,
                }
            }
            if !events.is_empty() {
                self.out.push_front(Ok(LeaseWatchResult::Events(events)));
            }
        }
    }
}

/// The lease stream over `make`'s node events (see the module docs).
pub(crate) fn lease_stream(
    make: NodeEventsFactory,
    state: NodeState,
    depth: usize,
    backoff: Backoff,
) -> LeaseStream {
    let stream = Stream {
        source: make(),
        make,
        state,
        depth: depth.max(1),
        out: std::collections::VecDeque::new(),
        backoff,
        delay: backoff.min,
        sleep_first: None,
        after_error: false,
    };
    Box::pin(futures_util::stream::unfold(stream, |mut s| async move {
        let item = s.next().await;
        Some((item, s))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::annotations::DEFAULT_PREFIX;
    use flannel_core::event::EventKind;
    use k8s_openapi::api::core::v1::{Node, NodeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, cidr: &str, ann: &[(&str, &str)]) -> SlimNode {
        SlimNode::from(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(
                    ann.iter()
                        .map(|(k, v)| (format!("flannel.alpha.coreos.com/{k}"), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some(cidr.into()),
                ..NodeSpec::default()
            }),
            status: None,
        })
    }

    fn managed(name: &str, cidr: &str, ip: &str) -> SlimNode {
        node(
            name,
            cidr,
            &[
                ("kube-subnet-manager", "true"),
                ("public-ip", ip),
                ("backend-type", "host-gw"),
                ("backend-data", "null"),
            ],
        )
    }

    fn state() -> NodeState {
        NodeState::new(
            Arc::new(Annotations::new(DEFAULT_PREFIX).unwrap()),
            true,
            false,
            Arc::new(KubeStatus::default()),
        )
    }

    fn keys(out: Output) -> Vec<String> {
        match out {
            Output::Snapshot(ls) => ls.iter().map(|l| l.key().to_string()).collect(),
            other => panic!("not a snapshot: {other:?}"),
        }
    }

    fn event(out: Output) -> (EventKind, String) {
        match out {
            Output::Event(e) => (e.kind, e.lease.key().to_string()),
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn listing_skips_unmanaged_and_garbage_nodes_only() {
        let mut s = state();
        assert!(matches!(s.apply(Event::Init), Output::Nothing));
        for n in [
            managed("a", "10.244.1.0/24", "192.168.0.1"),
            managed("garbage", "10.244.2.0/24", "not-an-ip"),
            node("plain", "10.244.3.0/24", &[]),
            managed("b", "10.244.4.0/24", "192.168.0.4"),
        ] {
            assert!(matches!(s.apply(Event::InitApply(n)), Output::Nothing));
        }
        assert_eq!(
            keys(s.apply(Event::InitDone)),
            ["10.244.1.0-24", "10.244.4.0-24"]
        );
        assert_eq!(s.status.skipped_nodes.load(Ordering::Relaxed), 1);
        assert_eq!(s.status.nodes.load(Ordering::Relaxed), 4);
        assert_eq!(s.status.managed_nodes.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn updates_follow_gos_filter_and_deletes_use_the_last_lease() {
        let mut s = state();
        s.apply(Event::Init);
        s.apply(Event::InitApply(managed(
            "a",
            "10.244.1.0/24",
            "192.168.0.1",
        )));
        s.apply(Event::InitApply(node("plain", "10.244.3.0/24", &[])));
        s.apply(Event::InitDone);
        // Same annotations (a heartbeat, a podCIDR change): no event.
        assert!(matches!(
            s.apply(Event::Apply(managed("a", "10.244.9.0/24", "192.168.0.1"))),
            Output::Nothing
        ));
        // A new public IP: an event.
        assert_eq!(
            event(s.apply(Event::Apply(managed("a", "10.244.1.0/24", "192.168.0.9")))),
            (EventKind::Added, "10.244.1.0-24".into())
        );
        // Garbage now: skipped, the last good lease stays known.
        assert!(matches!(
            s.apply(Event::Apply(managed("a", "10.244.1.0/24", "bogus"))),
            Output::Nothing
        ));
        // A node that becomes managed with new annotations: an event.
        assert_eq!(
            event(s.apply(Event::Apply(managed(
                "plain",
                "10.244.3.0/24",
                "192.168.0.3"
            )))),
            (EventKind::Added, "10.244.3.0-24".into())
        );
        // A brand-new managed node: Go's add handler.
        assert_eq!(
            event(s.apply(Event::Apply(managed("c", "10.244.5.0/24", "192.168.0.5")))),
            (EventKind::Added, "10.244.5.0-24".into())
        );
        // Deleting the node with garbage annotations removes its last lease.
        assert_eq!(
            event(s.apply(Event::Delete(managed("a", "10.244.1.0/24", "bogus")))),
            (EventKind::Removed, "10.244.1.0-24".into())
        );
        // Deleting an unmanaged unknown node: nothing.
        assert!(matches!(
            s.apply(Event::Delete(node("x", "10.9.0.0/24", &[]))),
            Output::Nothing
        ));
        // A re-list replaces everything.
        s.apply(Event::Init);
        s.apply(Event::InitApply(managed(
            "c",
            "10.244.5.0/24",
            "192.168.0.5",
        )));
        assert_eq!(keys(s.apply(Event::InitDone)), ["10.244.5.0-24"]);
        assert_eq!(s.status.lists.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn stream_batches_ready_events_and_recovers_from_errors() {
        use futures_util::stream;
        let status = Arc::new(KubeStatus::default());
        let st = NodeState::new(
            Arc::new(Annotations::new(DEFAULT_PREFIX).unwrap()),
            true,
            false,
            status.clone(),
        );
        let gone =
            kube::core::Status::failure("too old resource version", "Expired").with_code(410);
        let items: Vec<Result<Event<SlimNode>, WatchError>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(managed(
                "a",
                "10.244.1.0/24",
                "192.168.0.1",
            ))),
            Ok(Event::InitDone),
            Ok(Event::Apply(managed("b", "10.244.2.0/24", "192.168.0.2"))),
            Ok(Event::Apply(managed("c", "10.244.3.0/24", "192.168.0.3"))),
            Ok(Event::Apply(managed("d", "10.244.4.0/24", "192.168.0.4"))),
            Err(WatchError::WatchStartFailed(kube::Error::Api(gone.boxed()))),
        ];
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let m = made.clone();
        let make: NodeEventsFactory = Arc::new(move || {
            if m.fetch_add(1, Ordering::Relaxed) == 0 {
                stream::iter(items.clone_items())
                    .chain(stream::pending())
                    .boxed()
            } else {
                stream::pending().boxed()
            }
        });
        let mut s = lease_stream(make, st, 2, Backoff::default());
        match s.next().await.unwrap().unwrap() {
            LeaseWatchResult::Snapshot(ls) => assert_eq!(ls.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(status.in_sync.load(Ordering::Relaxed));
        // Three ready events, depth 2: two batches.
        match s.next().await.unwrap().unwrap() {
            LeaseWatchResult::Events(es) => assert_eq!(es.len(), 2),
            other => panic!("{other:?}"),
        }
        match s.next().await.unwrap().unwrap() {
            LeaseWatchResult::Events(es) => assert_eq!(es.len(), 1),
            other => panic!("{other:?}"),
        }
        // 410 on the watch start: an error, and a fresh watcher (re-list).
        let e = s.next().await.unwrap().unwrap_err();
        assert!(e.to_string().contains("410"), "{e}");
        assert!(!status.in_sync.load(Ordering::Relaxed));
        assert_eq!(made.load(Ordering::Relaxed), 2);
        // Quiet afterwards: in sync again.
        match s.next().await.unwrap().unwrap() {
            LeaseWatchResult::Events(es) => assert!(es.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(status.in_sync.load(Ordering::Relaxed));
    }

    /// 5,000 managed nodes as the footprint bench writes them (vxlan data,
    /// a public IP each) cost the watch a small, bounded amount each: the
    /// node itself is not kept.
    #[test]
    fn kept_state_per_node_is_small() {
        let mut s = state();
        s.apply(Event::Init);
        s.apply(Event::InitDone);
        let n = 5_000;
        for i in 0..n {
            let data = format!(
                r#"{{"VNI":1,"VtepMAC":"0a:dd:00:{:02x}:{:02x}:01"}}"#,
                i >> 8,
                i & 0xff
            );
            let node = node(
                &format!("load-{i}"),
                &format!("10.{}.{}.0/24", 100 + i / 256, i % 256),
                &[
                    ("kube-subnet-manager", "true"),
                    ("backend-type", "vxlan"),
                    ("backend-data", &data),
                    ("public-ip", &format!("172.16.{}.{}", i / 250, i % 250 + 1)),
                ],
            );
            assert!(matches!(s.apply(Event::Apply(node)), Output::Event(_)));
        }
        assert_eq!(s.status.managed_nodes.load(Ordering::Relaxed), n as u64);
        let per_node = s.kept_bytes() / n;
        eprintln!(
            "kept per node: {per_node} bytes (entry {} bytes in the table)",
            std::mem::size_of::<(Box<str>, Entry)>()
        );
        assert!(per_node <= 200, "{per_node} bytes per node");
    }

    /// `watcher::Error` is not `Clone`; the test builds its list once.
    trait CloneItems {
        fn clone_items(&self) -> Vec<Result<Event<SlimNode>, WatchError>>;
    }

    impl CloneItems for Vec<Result<Event<SlimNode>, WatchError>> {
        fn clone_items(&self) -> Vec<Result<Event<SlimNode>, WatchError>> {
            self.iter()
                .map(|i| match i {
                    Ok(e) => Ok(e.clone()),
                    Err(WatchError::WatchStartFailed(kube::Error::Api(s))) => {
                        Err(WatchError::WatchStartFailed(kube::Error::Api(s.clone())))
                    }
                    Err(_) => Err(WatchError::NoResourceVersion),
                })
                .collect()
        }
    }
}
