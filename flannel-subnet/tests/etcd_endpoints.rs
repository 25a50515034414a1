//! `EtcdStore` with several endpoints, some of them dead, against a real etcd.
#![cfg(feature = "etcd")]

use flannel_core::key::SubnetKey;
use flannel_core::lease::LeaseAttrs;
use flannel_core::manager::LEASE_TTL;
use flannel_subnet::etcd::{EtcdConfig, EtcdStore};
use flannel_subnet::store::LeaseStore;
use flannel_testutil::etcd::EtcdServer;
use futures_util::StreamExt;
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

/// A loopback port nobody listens on (connections are refused at once).
fn refused_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// An endpoint that accepts TCP connections (the kernel's backlog) but never
/// answers: a hung member. The listener must stay alive.
fn silent_endpoint() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

/// With a hung member listed first, only the first request waits for it
/// (one timeout); every later request and watch goes to the live member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_endpoint_costs_one_timeout() {
    let srv = EtcdServer::start().unwrap_or_else(|e| panic!("starting etcd: {e}"));
    let (_silent, hung) = silent_endpoint();
    let t = Instant::now();
    let store = EtcdStore::connect(EtcdConfig {
        endpoints: vec![hung.clone(), srv.endpoint()],
        timeout: Duration::from_secs(1),
        ..EtcdConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("connect with a hung first endpoint: {e}"));
    let first = t.elapsed();
    assert_eq!(store.current_endpoint(), srv.endpoint());
    let attrs = LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 1));
    let t = Instant::now();
    for i in 0..20 {
        let k: SubnetKey = format!("10.7.{i}.0-24").parse().unwrap();
        store.create(&k, &attrs, LEASE_TTL).await.unwrap();
    }
    let rev = store.list().await.unwrap().revision;
    let mut w = store.watch(rev).await.unwrap();
    store.delete(&"10.7.0.0-24".parse().unwrap()).await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(3), w.next()).await;
    assert!(matches!(item, Ok(Some(Ok(_)))), "watch item: {item:?}");
    let rest = t.elapsed();
    eprintln!("connect past a hung endpoint: {first:?}; 20 creates, a list and a watch: {rest:?}");
    assert!(first < Duration::from_secs(3), "connect took {first:?}");
    assert!(
        rest < Duration::from_secs(3),
        "later requests took {rest:?}"
    );
}

/// A refused endpoint beside a live one: no request fails, in either order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_endpoint_is_avoided() {
    let srv = EtcdServer::start().unwrap_or_else(|e| panic!("starting etcd: {e}"));
    let dead = refused_endpoint();
    for order in [
        [dead.clone(), srv.endpoint()],
        [srv.endpoint(), dead.clone()],
    ] {
        let store = EtcdStore::connect(EtcdConfig {
            endpoints: order.to_vec(),
            timeout: Duration::from_secs(2),
            ..EtcdConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("connect with {order:?}: {e}"));
        let attrs = LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 1));
        let t = Instant::now();
        let mut failures = Vec::new();
        for i in 0..40 {
            let k: SubnetKey = format!("10.5.{i}.0-24").parse().unwrap();
            if let Err(e) = store.put(&k, &attrs, Some(LEASE_TTL)).await {
                failures.push(e.to_string());
            }
            if let Err(e) = store.list().await {
                failures.push(e.to_string());
            }
        }
        eprintln!(
            "{order:?}: 80 requests in {:?}, {} failed",
            t.elapsed(),
            failures.len()
        );
        assert!(failures.is_empty(), "requests failed: {failures:#?}");
        let rev = store.list().await.unwrap().revision;
        let mut failures = 0;
        let t = Instant::now();
        for _ in 0..10 {
            let mut w = match store.watch(rev).await {
                Ok(w) => w,
                Err(e) => {
                    failures += 1;
                    eprintln!("watch: {e}");
                    continue;
                }
            };
            let k: SubnetKey = "10.6.0.0-24".parse().unwrap();
            store.put(&k, &attrs, Some(LEASE_TTL)).await.unwrap();
            match tokio::time::timeout(Duration::from_secs(3), w.next()).await {
                Ok(Some(Ok(_))) => {}
                other => {
                    failures += 1;
                    eprintln!("watch item: {other:?}");
                }
            }
        }
        eprintln!(
            "{order:?}: 10 watches in {:?}, {failures} failed",
            t.elapsed()
        );
        assert_eq!(failures, 0);
    }
}
