//! The manager scenarios on the embedded local store, each "node" a separate
//! store handle on one directory (as separate processes would be).
#![cfg(feature = "local")]

mod common;

use common::*;
use flannel_core::event::LeaseWatchResult;
use flannel_core::manager::SubnetManager;
use flannel_subnet::local::LocalStore;
use flannel_subnet::manager::LeaseManager;
use flannel_subnet::store::LeaseStore;
use futures_util::StreamExt;
use std::time::Duration;

struct Local {
    dir: tempfile::TempDir,
}

impl Local {
    fn new() -> Local {
        Local {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl Fixture for Local {
    type Store = LocalStore;
    async fn open(&self) -> LocalStore {
        LocalStore::open(self.dir.path())
            .unwrap()
            .with_poll_interval(Duration::from_millis(20))
    }
    async fn set_config(&self, json: &str) {
        self.open().await.set_config(json).unwrap();
    }
}

#[tokio::test]
async fn go_acquire() {
    go_acquire_scenario(&Local::new()).await;
}

#[tokio::test]
async fn previous_subnet() {
    previous_subnet_scenario(&Local::new()).await;
}

#[tokio::test]
async fn two_leases_for_one_ip() {
    two_leases_for_one_ip_scenario(&Local::new()).await;
}

#[tokio::test]
async fn no_delete_on_the_way_to_failing() {
    no_delete_on_the_way_to_failing_scenario(&Local::new()).await;
}

#[tokio::test]
async fn reservation() {
    reservation_scenario(&Local::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_acquirers() {
    concurrent_scenario(&Local::new(), 50).await;
}

#[tokio::test]
async fn watch() {
    watch_scenario(&Local::new()).await;
}

#[tokio::test]
async fn missing_config_is_a_clear_error() {
    let fx = Local::new();
    let m = LeaseManager::new(fx.open().await);
    let err = m.get_network_config().await.unwrap_err().to_string();
    assert!(
        err.starts_with("flannel config not found in the local store: "),
        "{err}"
    );
    fx.set_config(r#"{"Network": "10.0.0.0/29"}"#).await;
    let err = m.get_network_config().await.unwrap_err().to_string();
    assert_eq!(
        err,
        "network is too small. Minimum useful network prefix is /28"
    );
}

#[tokio::test]
async fn expiry_becomes_a_removal() {
    let fx = Local::new();
    fx.set_config(r#"{"Network": "10.3.0.0/16"}"#).await;
    let store = fx.open().await;
    let m = LeaseManager::new(fx.open().await);
    let mut w = m.watch_leases().await.unwrap();
    assert!(matches!(
        w.next().await.unwrap().unwrap(),
        LeaseWatchResult::Snapshot(_)
    ));
    store
        .create(
            &key("10.3.7.0-24"),
            &attrs([7, 7, 7, 7]),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let item = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let LeaseWatchResult::Events(es) = item {
            kinds.extend(es.into_iter().map(|e| e.kind));
        }
    }
    assert_eq!(
        kinds,
        [
            flannel_core::event::EventKind::Added,
            flannel_core::event::EventKind::Removed
        ]
    );
    assert!(store.get(&key("10.3.7.0-24")).await.unwrap().is_none());
}

#[tokio::test]
async fn compaction_resyncs_with_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        LocalStore::open(dir.path())
            .unwrap()
            .with_poll_interval(Duration::from_millis(20))
            .with_log_limit(8)
    };
    open().set_config(r#"{"Network": "10.3.0.0/16"}"#).unwrap();
    let m = LeaseManager::new(open());
    let mut w = m.watch_leases().await.unwrap();
    assert!(
        matches!(w.next().await.unwrap().unwrap(), LeaseWatchResult::Snapshot(ref l) if l.is_empty())
    );
    // More changes than the log keeps happen before the watcher looks again.
    let writer = open();
    for i in 0..20u8 {
        writer
            .put(
                &key(&format!("10.3.{i}.0-24")),
                &attrs([1, 1, 1, i]),
                Some(Duration::from_secs(60)),
            )
            .await
            .unwrap();
    }
    let item = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match item {
        LeaseWatchResult::Snapshot(ls) => assert_eq!(ls.len(), 20, "no lease lost"),
        other => panic!("expected a fresh snapshot after compaction, got {other:?}"),
    }
}

/// While another process holds the store's lock, a store call waits on
/// tokio's blocking pool: the (single-threaded) runtime keeps running other
/// tasks, and the call completes once the lock is released.
#[tokio::test(flavor = "current_thread")]
async fn file_work_never_blocks_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    store.set_config(r#"{"Network": "10.3.0.0/16"}"#).unwrap();
    // Another "process": an exclusive flock on the lock file.
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.path().join("lock"))
        .unwrap();
    lock.lock().unwrap();
    // A watchdog so that a regression fails below instead of hanging: it
    // releases the lock (same open file description) after 5 s.
    let watchdog = lock.try_clone().unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(5));
        let _ = watchdog.unlock();
    });

    let listing = tokio::spawn({
        let store = store.clone();
        async move { store.list().await }
    });
    // Were the call blocking this thread, neither these ticks nor the
    // release below could run.
    let mut ticks = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ticks += 1;
    }
    assert_eq!(ticks, 5);
    assert!(!listing.is_finished(), "list() ran despite the lock");
    lock.unlock().unwrap();
    let listing = tokio::time::timeout(Duration::from_secs(10), listing)
        .await
        .expect("list() finished after the lock was released")
        .unwrap()
        .unwrap();
    assert!(listing.leases.is_empty());
    assert_eq!(
        store.get_config().await.unwrap(),
        r#"{"Network": "10.3.0.0/16"}"#
    );
}
