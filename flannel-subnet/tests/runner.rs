//! The runner against the real local store and a recording network.
#![cfg(feature = "local")]

mod common;

use common::*;
use flannel_core::event::EventKind;
use flannel_core::key::SubnetKey;
use flannel_core::lease::Lease;
use flannel_core::manager::{ManagerError, SubnetManager};
use flannel_subnet::local::LocalStore;
use flannel_subnet::manager::{Backoff, LeaseManager};
use flannel_subnet::runner::{Runner, RunnerOptions};
use flannel_subnet::store::{LeaseStore, Listing, StoreWatch};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn local(dir: &std::path::Path, poll: Duration) -> LocalStore {
    LocalStore::open(dir).unwrap().with_poll_interval(poll)
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_events_resyncs_and_reacquires_a_deleted_lease() {
    let dir = tempfile::tempdir().unwrap();
    let poll = Duration::from_millis(20);
    local(dir.path(), poll)
        .set_config(r#"{"Network": "10.9.0.0/16"}"#)
        .unwrap();
    let manager = Arc::new(LeaseManager::new(local(dir.path(), poll)));
    let lease = manager.acquire_lease(&req([10, 0, 0, 1])).await.unwrap();
    let peer_mgr = LeaseManager::new(local(dir.path(), poll));
    let peer = peer_mgr.acquire_lease(&req([10, 0, 0, 2])).await.unwrap();

    let log = Arc::new(Mutex::new(Log::default()));
    let net = Recorder {
        lease: lease.clone(),
        log: log.clone(),
        resync_every: None,
    };
    let runner = Runner::new(manager.clone());
    let status = runner.status().clone();
    let running = spawn_runner(runner, net);

    // The initial snapshot: one full resync with the peer (our own lease
    // filtered out), no per-lease events.
    wait_for("first resync", || !log.lock().unwrap().resyncs.is_empty()).await;
    {
        let l = log.lock().unwrap();
        assert!(l.events.is_empty(), "{:?}", l.events);
        assert_eq!(l.resyncs[0], [peer.key()]);
    }
    assert!(status.in_sync());

    // A third node appears, the peer leaves.
    let third = peer_mgr.acquire_lease(&req([10, 0, 0, 3])).await.unwrap();
    local(dir.path(), poll).delete(&peer.key()).await.unwrap();
    wait_for("add and remove", || log.lock().unwrap().events.len() >= 2).await;
    assert_eq!(
        log.lock().unwrap().events[..],
        [
            (EventKind::Added, third.key()),
            (EventKind::Removed, peer.key())
        ]
    );

    // Someone deletes our lease: the runner takes the same subnet back.
    local(dir.path(), poll).delete(&lease.key()).await.unwrap();
    wait_for("re-acquisition", || {
        !log.lock().unwrap().lease_changes.is_empty()
    })
    .await;
    let back = log.lock().unwrap().lease_changes[0].clone();
    assert_eq!(back.key(), lease.key(), "same subnet when it is free");
    assert!(
        local(dir.path(), poll)
            .get(&lease.key())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(status.reacquisitions.load(Ordering::Relaxed), 1);

    // Shutdown: the network is told, the lease stays in the store.
    running.stop().await;
    assert_eq!(log.lock().unwrap().shutdowns, 1);
    assert!(
        local(dir.path(), poll)
            .get(&lease.key())
            .await
            .unwrap()
            .is_some()
    );
    assert!(!status.in_sync());
}

#[tokio::test(start_paused = true)]
async fn renews_margin_before_expiry_and_periodic_resync() {
    let dir = tempfile::tempdir().unwrap();
    // Poll rarely: paused time jumps hours at once.
    let poll = Duration::from_secs(3600);
    local(dir.path(), poll)
        .set_config(r#"{"Network": "10.9.0.0/16"}"#)
        .unwrap();
    let manager = Arc::new(LeaseManager::new(local(dir.path(), poll)));
    let lease = manager.acquire_lease(&req([10, 0, 0, 1])).await.unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let net = Recorder {
        lease,
        log: log.clone(),
        resync_every: Some(Duration::from_secs(600)),
    };
    let runner = Runner::new(manager.clone()).with_options(RunnerOptions {
        renew_margin: Duration::from_secs(3600),
        ..RunnerOptions::default()
    });
    let status = runner.status().clone();
    let running = spawn_runner(runner, net);

    // 24 h lease, 60 min margin: nothing before 23 h ...
    tokio::time::sleep(Duration::from_secs(23 * 3600 - 120)).await;
    assert_eq!(status.renewals.load(Ordering::Relaxed), 0);
    let resyncs = log.lock().unwrap().resyncs.len();
    // 1 after the snapshot plus one per 10 minutes.
    assert!((130..=140).contains(&resyncs), "{resyncs} resyncs");
    // ... then one renewal.
    tokio::time::sleep(Duration::from_secs(240)).await;
    assert_eq!(status.renewals.load(Ordering::Relaxed), 1);
    // The next one 23 h after that.
    tokio::time::sleep(Duration::from_secs(22 * 3600)).await;
    assert_eq!(status.renewals.load(Ordering::Relaxed), 1);
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    assert_eq!(status.renewals.load(Ordering::Relaxed), 2);
    running.stop().await;
}

/// A store that is down: every call fails, counting the attempts.
struct DownStore {
    calls: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl LeaseStore for DownStore {
    fn name(&self) -> &'static str {
        "down"
    }
    async fn get_config(&self) -> Result<String, ManagerError> {
        Err(self.fail())
    }
    async fn list(&self) -> Result<Listing, ManagerError> {
        Err(self.fail())
    }
    async fn get(&self, _: &SubnetKey) -> Result<Option<Lease>, ManagerError> {
        Err(self.fail())
    }
    async fn create(
        &self,
        _: &SubnetKey,
        _: &flannel_core::lease::LeaseAttrs,
        _: Duration,
    ) -> Result<Lease, ManagerError> {
        Err(self.fail())
    }
    async fn put(
        &self,
        _: &SubnetKey,
        _: &flannel_core::lease::LeaseAttrs,
        _: Option<Duration>,
    ) -> Result<Lease, ManagerError> {
        Err(self.fail())
    }
    async fn delete(&self, _: &SubnetKey) -> Result<(), ManagerError> {
        Err(self.fail())
    }
    async fn watch(&self, _: i64) -> Result<StoreWatch, ManagerError> {
        Err(self.fail())
    }
}

impl DownStore {
    fn fail(&self) -> ManagerError {
        self.calls.fetch_add(1, Ordering::Relaxed);
        ManagerError::Unavailable("connection refused".into())
    }
}

#[tokio::test(start_paused = true)]
async fn outage_backs_off_instead_of_spinning() {
    let calls = Arc::new(AtomicUsize::new(0));
    let manager = Arc::new(
        LeaseManager::new(DownStore {
            calls: calls.clone(),
        })
        .with_backoff(Backoff::default()),
    );
    let lease = Lease::new(key("10.9.1.0-24"), attrs([10, 0, 0, 1]));
    let log = Arc::new(Mutex::new(Log::default()));
    let net = Recorder {
        lease,
        log: log.clone(),
        resync_every: None,
    };
    let runner = Runner::new(manager);
    let status = runner.status().clone();
    let running = spawn_runner(runner, net);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let n = calls.load(Ordering::Relaxed);
    // 100 ms doubling to 5 s: about 6 attempts in the first 3 s, then one per 5 s.
    assert!((10..=20).contains(&n), "{n} store calls in 60 s");
    assert!(!status.in_sync());
    assert_eq!(status.watch_errors.load(Ordering::Relaxed) as usize, n);
    assert!(log.lock().unwrap().events.is_empty());
    running.stop().await;
    assert_eq!(log.lock().unwrap().shutdowns, 1);
}
