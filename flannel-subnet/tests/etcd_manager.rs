//! The manager scenarios and the runner's reliability against a real etcd
//! (Debian's `etcd-server`, started per test by flannel-testutil).
#![cfg(feature = "etcd")]

mod common;

use common::*;
use flannel_core::event::{EventKind, LeaseWatchResult};
use flannel_core::manager::SubnetManager;
use flannel_subnet::etcd::{EtcdConfig, EtcdStore};
use flannel_subnet::manager::LeaseManager;
use flannel_subnet::runner::Runner;
use flannel_subnet::store::LeaseStore;
use flannel_testutil::etcd::EtcdServer;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Etcd {
    server: EtcdServer,
}

impl Etcd {
    fn start() -> Etcd {
        Etcd {
            server: EtcdServer::start().unwrap_or_else(|e| panic!("cannot start etcd: {e}")),
        }
    }
    fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.server.endpoints(),
            timeout: Duration::from_secs(2),
            ..EtcdConfig::default()
        }
    }
}

impl Fixture for Etcd {
    type Store = EtcdStore;
    async fn open(&self) -> EtcdStore {
        EtcdStore::connect(self.config()).await.unwrap()
    }
    async fn set_config(&self, json: &str) {
        self.open().await.put_config(json).await.unwrap();
    }
}

#[tokio::test]
async fn go_acquire() {
    go_acquire_scenario(&Etcd::start()).await;
}

#[tokio::test]
async fn previous_subnet() {
    previous_subnet_scenario(&Etcd::start()).await;
}

#[tokio::test]
async fn two_leases_for_one_ip() {
    two_leases_for_one_ip_scenario(&Etcd::start()).await;
}

#[tokio::test]
async fn no_delete_on_the_way_to_failing() {
    no_delete_on_the_way_to_failing_scenario(&Etcd::start()).await;
}

#[tokio::test]
async fn reservation() {
    reservation_scenario(&Etcd::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_acquirers() {
    concurrent_scenario(&Etcd::start(), 50).await;
}

#[tokio::test]
async fn watch() {
    watch_scenario(&Etcd::start()).await;
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// etcd down for several backoff periods, then back: the watch resumes, no
/// peer is lost, and the outage costs a bounded number of attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_and_compaction_lose_no_peer() {
    let mut fx = Etcd::start();
    fx.set_config(r#"{"Network": "10.9.0.0/16"}"#).await;
    let manager = Arc::new(LeaseManager::new(fx.open().await));
    let lease = manager.acquire_lease(&req([10, 0, 0, 1])).await.unwrap();
    let peers = LeaseManager::new(fx.open().await);
    let p1 = peers.acquire_lease(&req([10, 0, 0, 2])).await.unwrap();

    let seen = Arc::new(Mutex::new(Log::default()));
    let net = Recorder {
        lease: lease.clone(),
        log: seen.clone(),
        resync_every: None,
    };
    let runner = Runner::new(manager.clone());
    let status = runner.status().clone();
    let running = spawn_runner(runner, net);
    wait_for("initial sync", Duration::from_secs(10), || {
        seen.lock().unwrap().resyncs.len() == 1
    })
    .await;
    assert_eq!(seen.lock().unwrap().resyncs[0], [p1.key()]);
    assert!(
        seen.lock().unwrap().events.is_empty(),
        "a snapshot is applied by resync alone"
    );

    fx.server.stop();
    wait_for("outage noticed", Duration::from_secs(10), || {
        !status.in_sync()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let attempts = status.watch_errors.load(Ordering::Relaxed);
    assert!(
        attempts <= 12,
        "{attempts} watch attempts in ~4 s: not backing off"
    );
    fx.server.restart().unwrap();
    let reconnect = wait_for("watch back in sync", Duration::from_secs(15), || {
        status.in_sync()
    })
    .await;
    eprintln!(
        "reconnect after etcd restart: {reconnect:?} ({attempts} failed attempts while down)"
    );

    // Changes made after the restart arrive; nothing was removed.
    let p2 = peers.acquire_lease(&req([10, 0, 0, 3])).await.unwrap();
    wait_for("peer added after restart", Duration::from_secs(10), || {
        seen.lock().unwrap().events.len() == 1
    })
    .await;
    assert_eq!(seen.lock().unwrap().events[0], (EventKind::Added, p2.key()));

    // Garbage under subnets/ is ignored; a good lease after it still arrives.
    let client = fx.open().await;
    let raw = client.client().clone();
    let mut kv = raw.kv_client();
    kv.put("/coreos.com/network/subnets/garbage", "x", None)
        .await
        .unwrap();
    kv.put("/coreos.com/network/subnets/10.9.77.0-24", "not json", None)
        .await
        .unwrap();
    let p3 = peers.acquire_lease(&req([10, 0, 0, 4])).await.unwrap();
    wait_for("peer after garbage", Duration::from_secs(10), || {
        seen.lock().unwrap().events.len() == 2
    })
    .await;
    assert_eq!(seen.lock().unwrap().events[1], (EventKind::Added, p3.key()));
    assert!(
        seen.lock()
            .unwrap()
            .events
            .iter()
            .all(|(k, _)| *k == EventKind::Added),
        "no peer removed"
    );
    assert_eq!(status.known_leases.load(Ordering::Relaxed), 3);

    running.stop().await;
}

/// A watch that fell behind a compaction re-lists: a fresh snapshot with
/// every lease.
#[tokio::test]
async fn compaction_gives_a_fresh_snapshot() {
    let fx = Etcd::start();
    fx.set_config(r#"{"Network": "10.9.0.0/16"}"#).await;
    let m = LeaseManager::new(fx.open().await);
    let mut w = m.watch_leases().await.unwrap();
    assert!(
        matches!(w.next().await.unwrap().unwrap(), LeaseWatchResult::Snapshot(ref l) if l.is_empty())
    );
    // Before the stream looks again: changes, then compaction past them.
    for i in 1..=5u8 {
        m.acquire_lease(&req([10, 0, 1, i])).await.unwrap();
    }
    let store = fx.open().await;
    let rev = store.list().await.unwrap().revision;
    store.client().clone().compact(rev, None).await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match item {
        LeaseWatchResult::Snapshot(ls) => assert_eq!(ls.len(), 5, "no lease lost"),
        other => panic!("expected a snapshot after compaction, got {other:?}"),
    }
}

/// Our lease deleted in etcd: the runner takes the same subnet back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_own_lease_is_reacquired() {
    let fx = Etcd::start();
    fx.set_config(r#"{"Network": "10.9.0.0/16"}"#).await;
    let manager = Arc::new(LeaseManager::new(fx.open().await));
    let lease = manager.acquire_lease(&req([10, 0, 0, 1])).await.unwrap();
    let seen = Arc::new(Mutex::new(Log::default()));
    let net = Recorder {
        lease: lease.clone(),
        log: seen.clone(),
        resync_every: None,
    };
    let runner = Runner::new(manager.clone());
    let running = spawn_runner(runner, net);
    wait_for("initial sync", Duration::from_secs(10), || {
        seen.lock().unwrap().resyncs.len() == 1
    })
    .await;
    let store = fx.open().await;
    store.delete(&lease.key()).await.unwrap();
    wait_for("re-acquisition", Duration::from_secs(10), || {
        !seen.lock().unwrap().lease_changes.is_empty()
    })
    .await;
    assert_eq!(seen.lock().unwrap().lease_changes[0].key(), lease.key());
    let back = store
        .get(&lease.key())
        .await
        .unwrap()
        .expect("lease is back in etcd");
    assert!(!back.is_reservation(), "with a TTL again");
    running.stop().await;
}
