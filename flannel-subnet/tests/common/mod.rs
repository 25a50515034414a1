//! Manager scenarios shared by every store's tests: each function takes a
//! factory that opens a new handle (a new "process") on one shared store.
#![allow(dead_code)]

use flannel_core::backend::{BackendError, Network};
use flannel_core::event::{EventKind, LeaseEvent, LeaseWatchResult};
use flannel_core::ip::Ip4Net;
use flannel_core::key::SubnetKey;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::manager::{AcquireRequest, LEASE_TTL, ManagerError, SubnetManager};
use flannel_subnet::manager::LeaseManager;
use flannel_subnet::store::LeaseStore;
use futures_util::StreamExt;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Opens a new handle on the shared store under test, and sets its config.
pub trait Fixture: Send + Sync + 'static {
    /// The store type.
    type Store: LeaseStore;
    /// A new handle on the same store.
    fn open(&self) -> impl std::future::Future<Output = Self::Store> + Send;
    /// Writes the network config.
    fn set_config(&self, json: &str) -> impl std::future::Future<Output = ()> + Send;
}

pub fn key(s: &str) -> SubnetKey {
    s.parse().unwrap()
}

pub fn attrs(ip: [u8; 4]) -> LeaseAttrs {
    LeaseAttrs::new(Ipv4Addr::from(ip))
}

pub fn req(ip: [u8; 4]) -> AcquireRequest {
    AcquireRequest::new(attrs(ip))
}

const GO_CONFIG: &str =
    r#"{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.1.0", "SubnetMax": "10.3.25.0" }"#;

async fn seed_go_leases<S: LeaseStore>(store: &S) {
    for k in [
        "10.3.1.0-24",
        "10.3.2.0-24",
        "10.3.4.0-24",
        "10.3.5.0-24",
        "10.3.31.0-24",
    ] {
        store
            .put(&key(k), &attrs([1, 1, 1, 1]), Some(LEASE_TTL))
            .await
            .unwrap();
    }
}

/// pkg/subnet/etcd/subnet_test.go TestAcquireLease and friends.
pub async fn go_acquire_scenario<F: Fixture>(fx: &F) {
    fx.set_config(GO_CONFIG).await;
    let store = fx.open().await;
    seed_go_leases(&store).await;
    let m = LeaseManager::new(fx.open().await);
    let l = m.acquire_lease(&req([1, 2, 3, 4])).await.unwrap();
    let sn = l.subnet.unwrap();
    let taken: HashSet<&str> = ["10.3.1.0/24", "10.3.2.0/24", "10.3.4.0/24", "10.3.5.0/24"].into();
    assert!(!taken.contains(sn.to_string().as_str()), "{sn} was taken");
    assert!(
        sn.prefix_len() == 24
            && sn.addr() >= Ipv4Addr::new(10, 3, 3, 0)
            && sn.addr() <= Ipv4Addr::new(10, 3, 25, 0)
    );
    assert_eq!(l.attrs, attrs([1, 2, 3, 4]));
    let exp = l.expiration.expect("a TTL lease");
    let left = exp.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        left > LEASE_TTL - Duration::from_secs(60) && left <= LEASE_TTL,
        "{left:?}"
    );

    // Same public IP again: the same subnet, with new attributes stored.
    let mut newer = req([1, 2, 3, 4]);
    newer.attrs.backend_type = "vxlan".into();
    let again = m.acquire_lease(&newer).await.unwrap();
    assert_eq!(again.subnet, Some(sn));
    let stored = store.get(&again.key()).await.unwrap().unwrap();
    assert_eq!(stored.attrs.backend_type, "vxlan");
    let count = store.list().await.unwrap().leases.len();
    assert_eq!(count, 6, "no extra lease");

    // Config change: the old lease is deleted, a new one allocated in range.
    fx.set_config(r#"{ "Network": "10.4.0.0/16" }"#).await;
    let moved = m.acquire_lease(&newer).await.unwrap();
    assert!(
        "10.4.0.0/16"
            .parse::<Ip4Net>()
            .unwrap()
            .contains_net(&moved.subnet.unwrap())
    );
    assert!(
        store.get(&again.key()).await.unwrap().is_none(),
        "old lease deleted"
    );
}

/// A previous subnet from subnet.env is reused when free and compatible.
pub async fn previous_subnet_scenario<F: Fixture>(fx: &F) {
    fx.set_config(GO_CONFIG).await;
    let m = LeaseManager::new(fx.open().await);
    let mut r = req([1, 2, 3, 4]);
    r.previous_subnet = Some("10.3.6.0/24".parse().unwrap());
    assert_eq!(
        m.acquire_lease(&r)
            .await
            .unwrap()
            .subnet
            .unwrap()
            .to_string(),
        "10.3.6.0/24"
    );

    // Incompatible previous subnet: ignored.
    let mut r = req([1, 2, 3, 5]);
    r.previous_subnet = Some("10.4.1.0/24".parse().unwrap());
    let l = m.acquire_lease(&r).await.unwrap();
    assert_ne!(l.subnet.unwrap().to_string(), "10.4.1.0/24");

    // A previous subnet that another node holds now: not stolen.
    let mut r = req([1, 2, 3, 6]);
    r.previous_subnet = Some("10.3.6.0/24".parse().unwrap());
    let l = m.acquire_lease(&r).await.unwrap();
    assert_ne!(l.subnet.unwrap().to_string(), "10.3.6.0/24");
}

/// Two leases carry our public IP (a node that moved while its old lease
/// lived on): a restart takes the one its subnet.env names, whichever the
/// store lists first.
pub async fn two_leases_for_one_ip_scenario<F: Fixture>(fx: &F) {
    fx.set_config(GO_CONFIG).await;
    let store = fx.open().await;
    for k in ["10.3.3.0-24", "10.3.7.0-24"] {
        store
            .put(&key(k), &attrs([1, 2, 3, 4]), Some(LEASE_TTL))
            .await
            .unwrap();
    }
    let m = LeaseManager::new(fx.open().await);
    for prev in ["10.3.7.0/24", "10.3.3.0/24"] {
        let mut r = req([1, 2, 3, 4]);
        r.previous_subnet = Some(prev.parse().unwrap());
        let l = m.acquire_lease(&r).await.unwrap();
        assert_eq!(
            l.subnet.unwrap().to_string(),
            prev,
            "subnet.env names {prev}"
        );
    }
    // Without a subnet.env: one of them, and neither is deleted.
    let l = m.acquire_lease(&req([1, 2, 3, 4])).await.unwrap();
    assert!(["10.3.3.0-24", "10.3.7.0-24"].contains(&l.key().to_string().as_str()));
    assert_eq!(store.list().await.unwrap().leases.len(), 2);
    // A previous subnet held by another node's IP is not "ours".
    store
        .put(&key("10.3.9.0-24"), &attrs([9, 9, 9, 9]), Some(LEASE_TTL))
        .await
        .unwrap();
    let mut r = req([1, 2, 3, 4]);
    r.previous_subnet = Some("10.3.9.0/24".parse().unwrap());
    let l = m.acquire_lease(&r).await.unwrap();
    assert_ne!(l.key(), key("10.3.9.0-24"));
    let other = store.get(&key("10.3.9.0-24")).await.unwrap().unwrap();
    assert_eq!(
        other.attrs,
        attrs([9, 9, 9, 9]),
        "the other node's lease untouched"
    );
}

/// An acquisition that cannot succeed never deletes our lease first: not
/// for a config with an empty range (rejected by validation), not for a
/// config whose range is full.
pub async fn no_delete_on_the_way_to_failing_scenario<F: Fixture>(fx: &F) {
    fx.set_config(GO_CONFIG).await;
    let store = fx.open().await;
    let m = LeaseManager::new(fx.open().await);
    let mine = m.acquire_lease(&req([1, 2, 3, 4])).await.unwrap();
    let still_there = |what: &str| {
        let store = &store;
        let key = mine.key();
        let what = what.to_owned();
        async move {
            let got = store.get(&key).await.unwrap();
            assert!(got.is_some(), "{what}: our lease {key} was deleted");
        }
    };

    // SubnetMin above SubnetMax: a configuration error naming both.
    fx.set_config(
        r#"{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.200.0", "SubnetMax": "10.3.100.0" }"#,
    )
    .await;
    let e = m.acquire_lease(&req([1, 2, 3, 4])).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "SubnetMin is above SubnetMax: 10.3.200.0 > 10.3.100.0, no subnet can be allocated"
    );
    still_there("min above max").await;

    // A narrowed range with every subnet taken by other nodes: out of
    // subnets, and our (now incompatible) lease kept.
    for (k, ip) in [("10.3.40.0-24", 40), ("10.3.41.0-24", 41)] {
        store
            .put(&key(k), &attrs([10, 0, 0, ip]), Some(LEASE_TTL))
            .await
            .unwrap();
    }
    fx.set_config(
        r#"{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.40.0", "SubnetMax": "10.3.41.0" }"#,
    )
    .await;
    let e = m.acquire_lease(&req([1, 2, 3, 4])).await.unwrap_err();
    assert!(matches!(e, ManagerError::OutOfSubnets), "{e}");
    still_there("full range").await;

    // Room again: now the incompatible lease is replaced, as in Go.
    store.delete(&key("10.3.41.0-24")).await.unwrap();
    let moved = m.acquire_lease(&req([1, 2, 3, 4])).await.unwrap();
    assert_eq!(moved.key(), key("10.3.41.0-24"));
    assert!(
        store.get(&mine.key()).await.unwrap().is_none(),
        "old lease replaced"
    );
}

/// A reservation (no TTL) is used by its public IP and keeps no TTL.
pub async fn reservation_scenario<F: Fixture>(fx: &F) {
    fx.set_config(GO_CONFIG).await;
    let store = fx.open().await;
    store
        .put(&key("10.3.9.0-24"), &attrs([9, 9, 9, 9]), None)
        .await
        .unwrap();
    let m = LeaseManager::new(fx.open().await);
    let mut r = req([9, 9, 9, 9]);
    r.attrs.backend_type = "host-gw".into();
    let l = m.acquire_lease(&r).await.unwrap();
    assert_eq!(l.subnet.unwrap().to_string(), "10.3.9.0/24");
    assert!(l.is_reservation());
    let stored = store.get(&key("10.3.9.0-24")).await.unwrap().unwrap();
    assert!(stored.is_reservation(), "never given a TTL");
    assert_eq!(stored.attrs.backend_type, "host-gw");
    // Renewal keeps it a reservation too.
    assert!(m.renew_lease(&l).await.unwrap().is_reservation());
    // Another node never gets the reserved subnet.
    for i in 0..10u8 {
        let other = m.acquire_lease(&req([9, 9, 8, i])).await.unwrap();
        assert_ne!(other.key(), key("10.3.9.0-24"));
    }
}

/// `n` acquirers, each with its own handle, race for exactly `n` free subnets.
pub async fn concurrent_scenario<F: Fixture>(fx: &F, n: u8) {
    fx.set_config(&format!(
        r#"{{ "Network": "10.7.0.0/16", "SubnetMin": "10.7.1.0", "SubnetMax": "10.7.{n}.0" }}"#
    ))
    .await;
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = fx.open().await;
        tasks.push(tokio::spawn(async move {
            LeaseManager::new(store)
                .acquire_lease(&req([10, 0, 1, i]))
                .await
        }));
    }
    let mut got = HashSet::new();
    for t in tasks {
        let lease = t
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("acquisition failed: {e}"));
        assert!(got.insert(lease.key()), "duplicate {}", lease.key());
    }
    assert_eq!(got.len(), usize::from(n));
    let m = LeaseManager::new(fx.open().await);
    assert!(matches!(
        m.acquire_lease(&req([10, 0, 2, 1])).await,
        Err(ManagerError::OutOfSubnets)
    ));
}

async fn next(stream: &mut flannel_core::manager::LeaseStream) -> LeaseWatchResult {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("watch delivered nothing within 10 s")
        .expect("watch ended")
        .expect("watch error")
}

/// Snapshot first, then adds and removals from other handles, in order.
pub async fn watch_scenario<F: Fixture>(fx: &F) {
    fx.set_config(GO_CONFIG).await;
    let store = fx.open().await;
    seed_go_leases(&store).await;
    let m = LeaseManager::new(fx.open().await);
    let mut w = m.watch_leases().await.unwrap();
    match next(&mut w).await {
        LeaseWatchResult::Snapshot(ls) => assert_eq!(ls.len(), 5),
        other => panic!("expected a snapshot first, got {other:?}"),
    }
    let other = LeaseManager::new(fx.open().await);
    let l = other.acquire_lease(&req([5, 5, 5, 5])).await.unwrap();
    let mut seen: Vec<(EventKind, SubnetKey)> = Vec::new();
    while seen.is_empty() {
        if let LeaseWatchResult::Events(es) = next(&mut w).await {
            seen.extend(es.iter().map(|e| (e.kind, e.lease.key())));
        }
    }
    assert_eq!(seen, [(EventKind::Added, l.key())]);
    store.delete(&l.key()).await.unwrap();
    seen.clear();
    while seen.is_empty() {
        if let LeaseWatchResult::Events(es) = next(&mut w).await {
            seen.extend(es.iter().map(|e| (e.kind, e.lease.key())));
        }
    }
    assert_eq!(seen, [(EventKind::Removed, l.key())]);

    // The single-lease watch sees only its key.
    let mine = key("10.3.1.0-24");
    let mut one = m.watch_lease(mine).await.unwrap();
    match next(&mut one).await {
        LeaseWatchResult::Snapshot(ls) => {
            assert_eq!(ls.iter().map(Lease::key).collect::<Vec<_>>(), [mine])
        }
        other => panic!("{other:?}"),
    }
}

/// What a [`Recorder`] network was asked to do.
#[derive(Default)]
pub struct Log {
    pub events: Vec<(EventKind, SubnetKey)>,
    pub resyncs: Vec<Vec<SubnetKey>>,
    pub lease_changes: Vec<Lease>,
    pub shutdowns: usize,
}

/// A network that records every call instead of programming a datapath.
pub struct Recorder {
    pub lease: Lease,
    pub log: Arc<Mutex<Log>>,
    pub resync_every: Option<Duration>,
}

#[async_trait::async_trait]
impl Network for Recorder {
    fn lease(&self) -> &Lease {
        &self.lease
    }
    fn mtu(&self) -> u32 {
        1450
    }
    async fn handle_events(
        &mut self,
        events: &[LeaseEvent],
        _leases: &[&Lease],
    ) -> Result<(), BackendError> {
        self.log
            .lock()
            .unwrap()
            .events
            .extend(events.iter().map(|e| (e.kind, e.lease.key())));
        Ok(())
    }
    async fn resync(&mut self, leases: &[&Lease]) -> Result<(), BackendError> {
        self.log
            .lock()
            .unwrap()
            .resyncs
            .push(leases.iter().map(|l| l.key()).collect());
        Ok(())
    }
    fn resync_interval(&self) -> Option<Duration> {
        self.resync_every
    }
    async fn lease_changed(&mut self, lease: &Lease) -> Result<(), BackendError> {
        self.lease = lease.clone();
        self.log.lock().unwrap().lease_changes.push(lease.clone());
        Ok(())
    }
    async fn shutdown(&mut self) -> Result<(), BackendError> {
        self.log.lock().unwrap().shutdowns += 1;
        Ok(())
    }
}

/// A runner driving a network on its own task until [`Running::stop`].
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), flannel_subnet::runner::RunnerError>>,
}

/// Starts `runner` on `net` in a task.
pub fn spawn_runner(
    runner: flannel_subnet::runner::Runner,
    mut net: impl Network + 'static,
) -> Running {
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        runner
            .run(&mut net, async {
                let _ = rx.await;
            })
            .await
    });
    Running { stop, task }
}

impl Running {
    /// Stops the runner and checks it ended without error.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}
