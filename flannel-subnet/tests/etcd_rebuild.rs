//! An etcd rebuilt empty on the same endpoint (stopped, data directory
//! wiped, started again): the lease watch must start over with a fresh
//! snapshot, never resume at a revision of the old cluster.
#![cfg(feature = "etcd")]

mod common;

use flannel_core::event::LeaseWatchResult;
use flannel_core::key::SubnetKey;
use flannel_core::lease::LeaseAttrs;
use flannel_core::manager::{LEASE_TTL, LeaseStream, SubnetManager};
use flannel_subnet::etcd::{EtcdConfig, EtcdStore};
use flannel_subnet::manager::LeaseManager;
use flannel_subnet::store::LeaseStore;
use flannel_testutil::etcd::EtcdServer;
use futures_util::StreamExt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const CONFIG: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn key(s: &str) -> SubnetKey {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

async fn connect(srv: &EtcdServer) -> EtcdStore {
    EtcdStore::connect(EtcdConfig {
        endpoints: srv.endpoints(),
        timeout: Duration::from_secs(2),
        ..EtcdConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// Stops etcd, wipes its data directory and starts it again: an empty
/// cluster on the same endpoint.
fn rebuild(srv: &mut EtcdServer) {
    srv.stop();
    std::fs::remove_dir_all(srv.data_dir())
        .unwrap_or_else(|e| panic!("removing {}: {e}", srv.data_dir().display()));
    srv.restart()
        .unwrap_or_else(|e| panic!("restarting etcd: {e}"));
}

/// The next snapshot or non-empty event batch (errors and reconnect
/// markers are skipped), within `within`.
async fn next_result(s: &mut LeaseStream, within: Duration) -> Option<LeaseWatchResult> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.next()).await {
            Err(_) => return None,
            Ok(None) => panic!("the lease watch ended"),
            Ok(Some(Err(e))) => eprintln!("watch error (retried): {e}"),
            Ok(Some(Ok(LeaseWatchResult::Events(es)))) if es.is_empty() => {
                eprintln!("watch reconnected")
            }
            Ok(Some(Ok(r))) => return Some(r),
        }
    }
}

fn keys(r: &LeaseWatchResult) -> Vec<String> {
    match r {
        LeaseWatchResult::Snapshot(ls) => ls.iter().map(|l| l.key().to_string()).collect(),
        LeaseWatchResult::Events(es) => es.iter().map(|e| e.lease.key().to_string()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_store_is_listed_afresh() {
    let mut srv = EtcdServer::start().unwrap_or_else(|e| panic!("starting etcd: {e}"));
    let store = connect(&srv).await;
    store.put_config(CONFIG).await.unwrap();
    let attrs = LeaseAttrs::new(Ipv4Addr::new(192, 168, 1, 1));
    // Enough writes that the old revision is well ahead of the new cluster's.
    for i in 1..=5 {
        store
            .create(&key(&format!("10.5.{i}.0-24")), &attrs, LEASE_TTL)
            .await
            .unwrap();
    }
    let manager = LeaseManager::new(store);
    let mut watch = manager.watch_leases().await.unwrap();
    let first = next_result(&mut watch, Duration::from_secs(5))
        .await
        .expect("a first snapshot");
    assert!(matches!(first, LeaseWatchResult::Snapshot(_)));
    assert_eq!(keys(&first).len(), 5);

    rebuild(&mut srv);
    let t = Instant::now();
    // Another process (a new node) writes into the new, empty cluster.
    let other = connect(&srv).await;
    other.put_config(CONFIG).await.unwrap();
    other
        .create(&key("10.5.9.0-24"), &attrs, LEASE_TTL)
        .await
        .unwrap();

    // The watch must start over: a snapshot of the new cluster holding only
    // the new lease (not a resumed watch waiting for revision 7).
    let fresh = next_result(&mut watch, Duration::from_secs(15))
        .await
        .expect("a fresh snapshot after the rebuild (the watch resumed at the old revision)");
    eprintln!("fresh snapshot {:?} after {:?}", keys(&fresh), t.elapsed());
    match &fresh {
        LeaseWatchResult::Snapshot(_) => assert_eq!(keys(&fresh), ["10.5.9.0-24"]),
        LeaseWatchResult::Events(_) => panic!("events instead of a snapshot: {:?}", keys(&fresh)),
    }
    // And it follows the new cluster from there.
    other
        .create(&key("10.5.10.0-24"), &attrs, LEASE_TTL)
        .await
        .unwrap();
    let ev = next_result(&mut watch, Duration::from_secs(5))
        .await
        .expect("the next lease of the new cluster");
    assert_eq!(keys(&ev), ["10.5.10.0-24"]);
}

/// A handle that did not hear of the rebuild before its watch reconnects
/// (the store noticed nothing in between) still lists afresh: the new
/// cluster is behind the revision it resumes from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resuming_ahead_of_the_store_lists_afresh() {
    let mut srv = EtcdServer::start().unwrap_or_else(|e| panic!("starting etcd: {e}"));
    let store = connect(&srv).await;
    for i in 1..=5 {
        store
            .create(
                &key(&format!("10.5.{i}.0-24")),
                &LeaseAttrs::new(Ipv4Addr::new(192, 168, 1, 1)),
                LEASE_TTL,
            )
            .await
            .unwrap();
    }
    let listing = store.list().await.unwrap();
    rebuild(&mut srv);
    // The first request on the new cluster is the watch itself.
    let t = Instant::now();
    let err = loop {
        match store.watch(listing.revision).await {
            Err(flannel_core::manager::ManagerError::Compacted(r)) => break r,
            Err(e) if t.elapsed() < Duration::from_secs(10) => {
                eprintln!("watch: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("watch kept failing: {e}"),
            Ok(_) => panic!(
                "the watch resumed at revision {} of the old cluster",
                listing.revision
            ),
        }
    };
    assert_eq!(err, listing.revision);
    let fresh = store.list().await.unwrap();
    assert!(fresh.leases.is_empty());
    assert!(fresh.revision < listing.revision);
    // After the re-list the watch opens normally.
    let _watch = store.watch(fresh.revision).await.unwrap();
}

/// The rebuild is noticed by another request first, and a listing is read
/// (as an acquisition does) before the watch reconnects, by which time the
/// new cluster has passed the old revision: the watch still re-lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_noticed_elsewhere_still_stops_the_resume() {
    let mut srv = EtcdServer::start().unwrap_or_else(|e| panic!("starting etcd: {e}"));
    let store = connect(&srv).await;
    let attrs = LeaseAttrs::new(Ipv4Addr::new(192, 168, 1, 1));
    for i in 1..=5 {
        store
            .create(&key(&format!("10.5.{i}.0-24")), &attrs, LEASE_TTL)
            .await
            .unwrap();
    }
    let old = store.list().await.unwrap().revision;
    rebuild(&mut srv);
    // Noticed here: the new cluster is at revision 1.
    let t = Instant::now();
    loop {
        match store.get_config().await {
            Err(flannel_core::manager::ManagerError::ConfigNotFound(_)) => break,
            Err(e) if t.elapsed() < Duration::from_secs(10) => {
                eprintln!("get config: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("get config on the empty cluster: {other:?}"),
        }
    }
    // Others write until the new cluster is past the old revision.
    let other = connect(&srv).await;
    for i in 0..(old + 3) {
        other
            .put(&key(&format!("10.6.{i}.0-24")), &attrs, Some(LEASE_TTL))
            .await
            .unwrap();
    }
    let listing = store.list().await.unwrap();
    assert!(listing.revision > old);
    match store.watch(old).await {
        Err(flannel_core::manager::ManagerError::Compacted(r)) => assert_eq!(r, old),
        Err(e) => panic!("watch: {e}"),
        Ok(_) => panic!("the watch resumed at revision {old} of the old cluster"),
    }
    // The new listing's revision is fine.
    let _watch = store.watch(listing.revision).await.unwrap();
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

/// The runner over a rebuilt etcd, first without its config: not in sync
/// (not ready) while its lease is missing, the peers it knew kept in the
/// datapath, and once the config is back the same subnet re-asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_is_not_in_sync_until_its_lease_is_back() {
    use common::{Log, Recorder, req, spawn_runner};
    use flannel_subnet::runner::Runner;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};

    let mut srv = EtcdServer::start().unwrap_or_else(|e| panic!("starting etcd: {e}"));
    connect(&srv).await.put_config(CONFIG).await.unwrap();
    let manager = Arc::new(LeaseManager::new(connect(&srv).await));
    let lease = manager.acquire_lease(&req([10, 0, 0, 1])).await.unwrap();
    let peer = LeaseManager::new(connect(&srv).await)
        .acquire_lease(&req([10, 0, 0, 2]))
        .await
        .unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let net = Recorder {
        lease: lease.clone(),
        log: log.clone(),
        resync_every: None,
    };
    let runner = Runner::new(manager.clone());
    let status = runner.status().clone();
    let running = spawn_runner(runner, net);
    wait_until("the first resync", Duration::from_secs(5), || {
        !log.lock().unwrap().resyncs.is_empty()
    })
    .await;
    assert!(status.in_sync());
    assert_eq!(log.lock().unwrap().resyncs[0], [peer.key()]);

    rebuild(&mut srv);
    let noticed = wait_until("not in sync", Duration::from_secs(15), || !status.in_sync()).await;
    // It stays so while the config is missing; the peer stays programmed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !status.in_sync(),
        "in sync with no config and no lease in the store"
    );
    {
        let l = log.lock().unwrap();
        let last = l.resyncs.last().unwrap();
        assert_eq!(
            last[..],
            [peer.key()],
            "the known peer was dropped: {:?}",
            l.resyncs
        );
        assert!(l.lease_changes.is_empty());
    }

    let fresh = connect(&srv).await;
    fresh.put_config(CONFIG).await.unwrap();
    let back = wait_until("in sync again", Duration::from_secs(10), || {
        status.in_sync()
    })
    .await;
    let stored = fresh.get(&lease.key()).await.unwrap();
    assert!(stored.is_some(), "our lease was not re-asserted");
    assert_eq!(status.lease().unwrap().key(), lease.key());
    assert_eq!(status.reacquisitions.load(Ordering::Relaxed), 1);
    eprintln!(
        "runner: not in sync {noticed:?} after etcd served again; in sync with the same subnet {back:?} after the config came back"
    );
    running.stop().await;
}
