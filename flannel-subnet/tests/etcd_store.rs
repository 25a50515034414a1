//! `EtcdStore` against a real etcd (Debian `etcd-server`, v3.4) started per
//! test by `flannel_testutil::etcd::EtcdServer`.
#![cfg(feature = "etcd")]

use etcd_client::{Client, GetOptions, PutOptions};
use flannel_core::key::SubnetKey;
use flannel_core::lease::LeaseAttrs;
use flannel_core::manager::{LEASE_TTL, ManagerError};
use flannel_subnet::etcd::{CONFIG_NOT_FOUND, EtcdConfig, EtcdStore};
use flannel_subnet::store::{LeaseStore, StoreBatch, StoreEvent, StoreWatch};
use flannel_testutil::etcd::EtcdServer;
use flannel_testutil::logs::Logs;
use futures_util::StreamExt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

const SUBNETS: &str = "/coreos.com/network/subnets/";
const GO_VXLAN: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

fn etcd() -> EtcdServer {
    EtcdServer::start().unwrap_or_else(|e| panic!("starting etcd: {e}"))
}

fn cfg(srv: &EtcdServer) -> EtcdConfig {
    EtcdConfig {
        endpoints: srv.endpoints(),
        timeout: Duration::from_secs(2),
        ..EtcdConfig::default()
    }
}

async fn store(srv: &EtcdServer) -> EtcdStore {
    EtcdStore::connect(cfg(srv))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

fn key(s: &str) -> SubnetKey {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn raw(store: &EtcdStore) -> Client {
    store.client().clone()
}

/// The raw value and etcd lease id of `k`, if it exists.
async fn raw_get(client: &mut Client, k: &str) -> Option<(String, i64)> {
    let resp = client.get(k, None).await.expect("raw get");
    resp.kvs()
        .first()
        .map(|kv| (kv.value_str().unwrap().to_string(), kv.lease()))
}

/// Next item of a watch, failing the test after 10 s.
async fn next(w: &mut StoreWatch) -> Option<Result<StoreBatch, ManagerError>> {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("watch item within 10 s")
}

/// Collects watch events until `n` have arrived.
async fn events(w: &mut StoreWatch, n: usize) -> Vec<StoreEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        match next(w).await {
            Some(Ok(b)) => out.extend(b.events),
            other => panic!("watch ended early: {other:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_format_both_ways() {
    let srv = etcd();
    let store = store(&srv).await;
    let mut c = raw(&store);

    // Missing config: Go's exact message; then the stored text comes back.
    match store.get_config().await {
        Err(ManagerError::ConfigNotFound(m)) => assert_eq!(m, CONFIG_NOT_FOUND),
        other => panic!("expected ConfigNotFound, got {other:?}"),
    }
    let conf = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;
    store.put_config(conf).await.unwrap();
    assert_eq!(store.get_config().await.unwrap(), conf);
    assert_eq!(
        raw_get(&mut c, "/coreos.com/network/config")
            .await
            .unwrap()
            .0,
        conf
    );

    // Values written by Go flannel decode.
    c.put(format!("{SUBNETS}10.5.52.0-24"), GO_VXLAN, None)
        .await
        .unwrap();
    let dual = r#"{"PublicIP":"10.0.0.7","PublicIPv6":"fd00::7","BackendType":"host-gw"}"#;
    c.put(
        format!("{SUBNETS}10.12.13.0-24&fd00:12:13::-56"),
        dual,
        None,
    )
    .await
    .unwrap();
    let listing = store.list().await.unwrap();
    let keys: Vec<String> = listing.leases.iter().map(|l| l.key().to_string()).collect();
    assert_eq!(keys, ["10.12.13.0-24&fd00:12:13::-56", "10.5.52.0-24"]);
    let (d, v) = (&listing.leases[0], &listing.leases[1]);
    assert_eq!(v.attrs.backend_type, "vxlan");
    assert_eq!(v.attrs.public_ip, Ipv4Addr::new(192, 168, 64, 3));
    assert_eq!(v.attrs.to_json(), GO_VXLAN);
    assert_eq!(
        d.attrs.public_ipv6,
        Some("fd00::7".parse().unwrap()),
        "{d:?}"
    );
    assert!(d.has_ipv4() && d.has_ipv6());
    assert!(v.asof > 0 && v.asof <= listing.revision && d.asof > v.asof);

    // What we write is byte-identical to Go, with a 24 h etcd lease.
    let k = key("10.5.72.0-24");
    let created = store
        .create(&k, &LeaseAttrs::new(Ipv4Addr::new(1, 2, 3, 4)), LEASE_TTL)
        .await
        .unwrap();
    assert!(created.asof > listing.revision);
    let (value, lease) = raw_get(&mut c, &format!("{SUBNETS}10.5.72.0-24"))
        .await
        .unwrap();
    assert_eq!(value, r#"{"PublicIP":"1.2.3.4","PublicIPv6":null}"#);
    assert_ne!(lease, 0, "created key has an etcd lease");
    let ttl = c.lease_time_to_live(lease, None).await.unwrap().ttl();
    assert!(ttl > 86000 && ttl <= 86400, "ttl {ttl}");

    // get() asks etcd for the remaining TTL.
    let got = store.get(&k).await.unwrap().unwrap();
    let left = got
        .expiration
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(86000) && left <= LEASE_TTL,
        "{left:?}"
    );
    assert_eq!(got.asof, created.asof);
    assert!(store.get(&key("10.5.99.0-24")).await.unwrap().is_none());

    // A full Go value round-trips byte for byte.
    let k2 = key("10.5.73.0-24");
    store
        .put(
            &k2,
            &LeaseAttrs::from_json(GO_VXLAN).unwrap(),
            Some(LEASE_TTL),
        )
        .await
        .unwrap();
    let (value, _) = raw_get(&mut c, &format!("{SUBNETS}10.5.73.0-24"))
        .await
        .unwrap();
    assert_eq!(value, GO_VXLAN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_twice_is_already_exists() {
    let srv = etcd();
    let store = store(&srv).await;
    let k = key("10.5.1.0-24");
    let first = LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 1));
    store.create(&k, &first, LEASE_TTL).await.unwrap();
    let err = store
        .create(&k, &LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 2)), LEASE_TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ManagerError::AlreadyExists(k2) if k2 == k),
        "{err:?}"
    );
    assert_eq!(store.get(&k).await.unwrap().unwrap().attrs, first);
    // The lease granted for the losing create was revoked: only one is left.
    let leases = raw(&store).leases().await.unwrap();
    assert_eq!(leases.leases().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_stay_without_ttl() {
    let srv = etcd();
    let store = store(&srv).await;
    let mut c = raw(&store);
    let path = format!("{SUBNETS}10.5.7.0-24");
    c.put(path.as_str(), r#"{"PublicIP":"10.0.0.7"}"#, None)
        .await
        .unwrap();
    let listing = store.list().await.unwrap();
    assert_eq!(listing.leases.len(), 1);
    assert_eq!(listing.leases[0].expiration, None);
    let k = key("10.5.7.0-24");
    assert_eq!(store.get(&k).await.unwrap().unwrap().expiration, None);

    // Rewriting a reservation without TTL keeps it one.
    let attrs = LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 7));
    let l = store.put(&k, &attrs, None).await.unwrap();
    assert!(l.is_reservation());
    assert_eq!(raw_get(&mut c, &path).await.unwrap().1, 0);
    assert_eq!(store.list().await.unwrap().leases[0].expiration, None);

    // A renewal (put with TTL) attaches a fresh lease; put without drops it.
    store.put(&k, &attrs, Some(LEASE_TTL)).await.unwrap();
    assert_ne!(raw_get(&mut c, &path).await.unwrap().1, 0);
    let listed = store.list().await.unwrap().leases[0].expiration.unwrap();
    assert!(listed > SystemTime::now() + Duration::from_secs(86000));
    store.put(&k, &attrs, None).await.unwrap();
    assert_eq!(raw_get(&mut c, &path).await.unwrap().1, 0);

    store.delete(&k).await.unwrap();
    store.delete(&k).await.unwrap();
    assert!(store.list().await.unwrap().leases.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_skipped_in_list_and_watch() {
    let srv = etcd();
    let store = store(&srv).await;
    let mut c = raw(&store);
    let good = LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 1));
    store
        .create(&key("10.5.1.0-24"), &good, LEASE_TTL)
        .await
        .unwrap();
    c.put(format!("{SUBNETS}garbage"), GO_VXLAN, None)
        .await
        .unwrap();
    c.put(format!("{SUBNETS}10.5.2.0-24"), "not json", None)
        .await
        .unwrap();
    c.put(format!("{SUBNETS}10.5.3.0-32"), GO_VXLAN, None)
        .await
        .unwrap();
    c.put(format!("{SUBNETS}nested/10.5.4.0-24"), GO_VXLAN, None)
        .await
        .unwrap();
    store
        .create(&key("10.5.9.0-24"), &good, LEASE_TTL)
        .await
        .unwrap();
    let listing = store.list().await.unwrap();
    let keys: Vec<String> = listing.leases.iter().map(|l| l.key().to_string()).collect();
    assert_eq!(keys, ["10.5.1.0-24", "10.5.9.0-24"]);

    let mut w = store.watch(listing.revision).await.unwrap();
    c.put(format!("{SUBNETS}garbage"), "x", None).await.unwrap();
    c.put(format!("{SUBNETS}10.5.2.0-24"), "{", None)
        .await
        .unwrap();
    c.delete(format!("{SUBNETS}garbage"), None).await.unwrap();
    store
        .put(&key("10.5.5.0-24"), &good, Some(LEASE_TTL))
        .await
        .unwrap();
    let ev = events(&mut w, 1).await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    match &ev[0] {
        StoreEvent::Put(l) => {
            assert_eq!(l.key(), key("10.5.5.0-24"));
            assert_eq!(l.attrs, good);
            assert!(l.expiration.is_some());
        }
        other => panic!("expected a Put, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_order_and_compaction() {
    let srv = etcd();
    let store = store(&srv).await;
    let k = key("10.5.1.0-24");
    let attrs = LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 1));
    let start = store.list().await.unwrap().revision;
    let created = store.create(&k, &attrs, LEASE_TTL).await.unwrap();
    store.delete(&k).await.unwrap();

    let mut w = store.watch(start).await.unwrap();
    let mut seen = Vec::new();
    let mut last_rev = 0;
    while seen.len() < 2 {
        let b = next(&mut w).await.expect("open").expect("batch");
        assert!(b.revision > last_rev);
        last_rev = b.revision;
        seen.extend(b.events);
    }
    match &seen[..] {
        [StoreEvent::Put(l), StoreEvent::Delete(d)] => {
            assert_eq!(l.key(), k);
            assert_eq!(l.attrs, attrs);
            assert_eq!(l.asof, created.asof);
            assert_eq!(*d, k);
        }
        other => panic!("unexpected events {other:?}"),
    }
    // Live events keep coming on the same stream, also after a quiet period
    // longer than the request timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    store.put(&k, &attrs, None).await.unwrap();
    assert!(matches!(&events(&mut w, 1).await[..], [StoreEvent::Put(l)] if l.is_reservation()));

    // Compact past the start revision: the watch reports it and ends.
    let mut c = raw(&store);
    for i in 0..3 {
        store
            .put(&k, &LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, i)), None)
            .await
            .unwrap();
    }
    let now = store.list().await.unwrap().revision;
    c.compact(now, None).await.unwrap();
    let mut w = store.watch(start).await.unwrap();
    match next(&mut w).await {
        Some(Err(ManagerError::Compacted(rev))) => assert!(rev > start, "{rev}"),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(next(&mut w).await.is_none(), "stream ends after Compacted");
    // From the current revision it works.
    let mut w = store.watch(now).await.unwrap();
    store.delete(&k).await.unwrap();
    assert_eq!(events(&mut w, 1).await, [StoreEvent::Delete(k)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_unavailable_then_recovers() {
    let mut srv = etcd();
    let store = store(&srv).await;
    let k = key("10.5.1.0-24");
    let attrs = LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 1));
    store.create(&k, &attrs, LEASE_TTL).await.unwrap();
    let rev = store.list().await.unwrap().revision;
    let mut w = store.watch(rev).await.unwrap();

    srv.stop();
    let t = Instant::now();
    match next(&mut w).await {
        Some(Err(ManagerError::Unavailable(m))) => eprintln!("watch: {m}"),
        other => panic!("expected Unavailable from the watch, got {other:?}"),
    }
    assert!(next(&mut w).await.is_none());
    for op in ["list", "create", "get"] {
        let t = Instant::now();
        let r = match op {
            "list" => store.list().await.map(|_| ()),
            "create" => store
                .create(&key("10.5.2.0-24"), &attrs, LEASE_TTL)
                .await
                .map(|_| ()),
            _ => store.get(&k).await.map(|_| ()),
        };
        match r {
            Err(ManagerError::Unavailable(m)) => {
                eprintln!("{op}: {m} after {:?}", t.elapsed());
                assert!(m.contains(&srv.endpoint()), "{m}");
            }
            other => panic!("{op}: expected Unavailable, got {other:?}"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{op} took {:?}",
            t.elapsed()
        );
    }
    eprintln!("outage checks took {:?}", t.elapsed());

    srv.restart().expect("restart etcd");
    // The same store reconnects by itself (the channel may need a moment).
    let t = Instant::now();
    let listing = loop {
        match store.list().await {
            Ok(l) => break l,
            Err(e) if t.elapsed() < Duration::from_secs(15) => {
                eprintln!("after restart: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("store did not recover: {e}"),
        }
    };
    eprintln!("recovered after {:?}", t.elapsed());
    assert_eq!(listing.leases.len(), 1);
    store
        .create(&key("10.5.2.0-24"), &attrs, LEASE_TTL)
        .await
        .unwrap();
    let mut w = store.watch(listing.revision).await.unwrap();
    store.delete(&k).await.unwrap();
    let seen: Vec<(bool, SubnetKey)> = events(&mut w, 2)
        .await
        .into_iter()
        .map(|e| match e {
            StoreEvent::Put(l) => (true, l.key()),
            StoreEvent::Delete(k) => (false, k),
        })
        .collect();
    assert_eq!(seen, [(true, key("10.5.2.0-24")), (false, k)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    let srv = EtcdServer::start_tls().unwrap_or_else(|e| panic!("starting etcd: {e}"));
    let tls = |ca: &std::path::Path| EtcdConfig {
        ca_file: Some(ca.to_path_buf()),
        cert_file: Some(srv.cert_file().to_path_buf()),
        key_file: Some(srv.key_file().to_path_buf()),
        ..cfg(&srv)
    };
    let store = EtcdStore::connect(tls(srv.ca_file()))
        .await
        .unwrap_or_else(|e| panic!("TLS connect: {e}"));
    let k = key("10.5.1.0-24");
    store
        .create(&k, &LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 1)), LEASE_TTL)
        .await
        .unwrap();
    assert_eq!(store.list().await.unwrap().leases[0].key(), k);

    let t = Instant::now();
    let err = EtcdStore::connect(tls(srv.wrong_ca_file()))
        .await
        .expect_err("wrong CA must fail");
    eprintln!("wrong CA after {:?}: {err}", t.elapsed());
    let msg = err.to_string();
    assert!(matches!(err, ManagerError::Other(_)), "{err:?}");
    assert!(
        msg.contains("certificate") && msg.contains(&srv.endpoint()),
        "{msg}"
    );

    // A client certificate the server does not trust is refused too.
    let err = EtcdStore::connect(EtcdConfig {
        cert_file: Some(srv.wrong_cert_file().to_path_buf()),
        key_file: Some(srv.wrong_key_file().to_path_buf()),
        ..tls(srv.ca_file())
    })
    .await
    .expect_err("untrusted client certificate must fail");
    eprintln!("wrong client cert: {err}");

    // A missing key file is reported with its path.
    let err = EtcdStore::connect(EtcdConfig {
        key_file: Some("/nonexistent/client.key".into()),
        ..tls(srv.ca_file())
    })
    .await
    .expect_err("missing key file");
    assert!(err.to_string().contains("/nonexistent/client.key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_password_auth() {
    let srv = etcd();
    let admin = store(&srv).await;
    let mut c = raw(&admin);
    c.user_add("root", "rootpw", None).await.unwrap();
    // etcd 3.4 may already know the root role; granting it is what matters.
    let _ = c.role_add("root").await;
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();

    let with = |user: Option<&str>, pw: &str| EtcdConfig {
        username: user.map(str::to_string),
        password: Some(pw.to_string()),
        ..cfg(&srv)
    };
    let err = EtcdStore::connect(with(Some("root"), "wrong-password"))
        .await
        .expect_err("wrong password must fail");
    let msg = err.to_string();
    eprintln!("wrong password: {msg}");
    assert!(matches!(err, ManagerError::Other(_)), "{err:?}");
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(!msg.contains("wrong-password"), "{msg}");

    let err = EtcdStore::connect(with(None, ""))
        .await
        .expect_err("no credentials must fail");
    eprintln!("no credentials: {err}");
    assert!(matches!(err, ManagerError::Other(_)), "{err:?}");

    let store = EtcdStore::connect(with(Some("root"), "rootpw"))
        .await
        .unwrap_or_else(|e| panic!("right password: {e}"));
    let k = key("10.5.1.0-24");
    store
        .create(&k, &LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 1)), LEASE_TTL)
        .await
        .unwrap();
    assert_eq!(store.list().await.unwrap().leases.len(), 1);
    let mut w = store.watch(0).await.unwrap();
    assert_eq!(events(&mut w, 1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_with_trailing_slash() {
    let srv = etcd();
    let store = EtcdStore::connect(EtcdConfig {
        prefix: "/my/net/".into(),
        ..cfg(&srv)
    })
    .await
    .unwrap();
    assert_eq!(store.config_key(), "/my/net/config");
    store
        .put_config(r#"{"Network":"10.5.0.0/16"}"#)
        .await
        .unwrap();
    store
        .create(
            &key("10.5.1.0-24"),
            &LeaseAttrs::new(Ipv4Addr::new(10, 0, 0, 1)),
            LEASE_TTL,
        )
        .await
        .unwrap();
    let mut c = raw(&store);
    let all = c
        .get("/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    let keys: Vec<&str> = all.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    assert_eq!(keys, ["/my/net/config", "/my/net/subnets/10.5.1.0-24"]);
    // A value outside `<prefix>/subnets/` sharing the text prefix is ignored.
    c.put("/my/net/subnetsX", GO_VXLAN, Some(PutOptions::new()))
        .await
        .unwrap();
    assert_eq!(store.list().await.unwrap().leases.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresponsive_endpoint_times_out() {
    // A socket that completes TCP handshakes (kernel backlog) but never
    // speaks HTTP/2: only the request timeout can end the wait.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let t = Instant::now();
    let err = EtcdStore::connect(EtcdConfig {
        endpoints: vec![endpoint.clone()],
        timeout: Duration::from_secs(1),
        ..EtcdConfig::default()
    })
    .await
    .expect_err("a silent endpoint must not connect");
    eprintln!("silent endpoint after {:?}: {err}", t.elapsed());
    assert!(
        matches!(&err, ManagerError::Unavailable(m) if m.contains(&endpoint)),
        "{err:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_etcd_is_detected_by_requests_and_watch() {
    let srv = etcd();
    let pid = srv.pid().expect("etcd pid");
    let store = store(&srv).await;
    let rev = store.list().await.unwrap().revision;
    let mut w = store.watch(rev).await.unwrap();

    // etcd stops answering but its connections stay open.
    signal(pid, "-STOP");
    let t = Instant::now();
    let r = store.list().await;
    eprintln!("frozen list after {:?}: {r:?}", t.elapsed());
    assert!(matches!(r, Err(ManagerError::Unavailable(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // The watch notices through HTTP/2 keep-alive (10 s pings, 2 s timeout).
    let t = Instant::now();
    let item = tokio::time::timeout(Duration::from_secs(20), w.next()).await;
    eprintln!("frozen watch after {:?}: {item:?}", t.elapsed());
    signal(pid, "-CONT");
    assert!(
        matches!(item, Ok(Some(Err(ManagerError::Unavailable(_))))),
        "{item:?}"
    );

    // Thawed: the same store works again.
    let t = Instant::now();
    loop {
        match store.list().await {
            Ok(_) => break,
            Err(e) if t.elapsed() < Duration::from_secs(15) => {
                eprintln!("after thaw: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("store did not recover: {e}"),
        }
    }
}

/// More leases than one gRPC message can carry (4 MiB by default): the
/// listing pages at one revision and returns every lease.
#[tokio::test]
async fn list_pages_past_the_grpc_message_limit() {
    let srv = etcd();
    let store = EtcdStore::connect(cfg(&srv)).await.unwrap();
    let mut client = raw(&store);
    let n = 25_000u32;
    let data = flannel_core::gojson::RawJson::new(r#"{"VNI":1,"VtepMAC":"0a:00:00:00:00:01","Pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#).unwrap();
    let mut i = 0;
    while i < n {
        let ops: Vec<etcd_client::TxnOp> = (i..(i + 128).min(n))
            .map(|j| {
                let k = format!(
                    "/coreos.com/network/subnets/10.{}.{}.0-24",
                    (j + 1) >> 8,
                    (j + 1) & 0xff
                );
                let attrs = LeaseAttrs {
                    backend_type: "vxlan".into(),
                    backend_data: Some(data.clone()),
                    ..LeaseAttrs::new(Ipv4Addr::from(0xc0a8_0000 + j))
                };
                etcd_client::TxnOp::put(k, attrs.to_json(), None)
            })
            .collect();
        client
            .txn(etcd_client::Txn::new().and_then(ops))
            .await
            .unwrap();
        i += 128;
    }
    let listing = store.list().await.unwrap();
    assert_eq!(listing.leases.len(), n as usize);
    let keys: std::collections::HashSet<_> = listing.leases.iter().map(|l| l.key()).collect();
    assert_eq!(keys.len(), n as usize, "no duplicates across pages");
    assert_eq!(listing.leases[0].attrs.backend_data.as_ref(), Some(&data));
    // The listing revision is the snapshot's: a watch from it sees the next write.
    let mut w = store.watch(listing.revision).await.unwrap();
    store
        .put(
            &key("10.250.0.0-24"),
            &LeaseAttrs::new(Ipv4Addr::new(1, 1, 1, 1)),
            None,
        )
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(&batch.events[..], [StoreEvent::Put(l)] if l.key() == key("10.250.0.0-24")));
}

#[tokio::test]
async fn a_bad_value_is_warned_about_once_until_it_changes() {
    let out = Logs::default();
    let _guard = out.install(tracing::Level::INFO);
    let srv = etcd();
    let store = store(&srv).await;
    let mut c = raw(&store);
    c.put(format!("{SUBNETS}10.5.2.0-24"), "not json", None)
        .await
        .unwrap();
    c.put(format!("{SUBNETS}garbage"), GO_VXLAN, None)
        .await
        .unwrap();
    for _ in 0..5 {
        store.list().await.unwrap();
    }
    let count = |what: &str| out.count(what);
    assert_eq!(
        count("ignoring bad subnet node"),
        1,
        "five re-lists, one warning"
    );
    assert_eq!(
        count("ignoring bad subnet key"),
        1,
        "five re-lists, one warning"
    );
    // A new bad value of the same key is news.
    c.put(format!("{SUBNETS}10.5.2.0-24"), "{", None)
        .await
        .unwrap();
    store.list().await.unwrap();
    store.list().await.unwrap();
    assert_eq!(count("ignoring bad subnet node"), 2);
}
