//! `KubeSubnetManager` against the in-process fake Kubernetes API server
//! (`flannel_testutil::kube`; no kube-apiserver can be installed here): the
//! lease from the node's podCIDRs, the annotation patch byte for byte, the
//! node watch (events, a garbage node skipped, a re-list after 410 Gone, an
//! API server restart), the NetworkUnavailable condition, node-name and
//! connection rules, and that every call is allowed by kube-flannel's
//! ClusterRole.

#![cfg(feature = "kube")]

use flannel_core::event::{EventKind, LeaseWatchResult};
use flannel_core::gojson::RawJson;
use flannel_core::lease::LeaseAttrs;
use flannel_core::manager::{AcquireRequest, LeaseStream, SubnetManager};
use flannel_subnet::kube::{KubeOptions, KubeSubnetManager};
use flannel_testutil::kube::{
    FakeApiServer, FakeOptions, RequestRecord, TOKEN_USER, flannel_rules,
};
use futures_util::StreamExt;
use std::time::Duration;

const P: &str = "flannel.alpha.coreos.com/";
const VXLAN_CONF: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;
const VTEP: &str = r#"{"VNI":1,"VtepMAC":"8e:f1:d4:c8:e8:36"}"#;

struct Setup {
    api: FakeApiServer,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(opts: FakeOptions) -> Setup {
        Setup {
            api: FakeApiServer::start(opts).expect("starting the fake API server"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn token() -> Setup {
        Setup::new(FakeOptions {
            token: Some("s3cret".into()),
            ..FakeOptions::default()
        })
    }

    fn options(&self, net_conf: &str, node: &str) -> KubeOptions {
        let kc = self.dir.path().join("kubeconfig");
        self.api.write_kubeconfig(&kc, TOKEN_USER).unwrap();
        let conf = self.dir.path().join("net-conf.json");
        std::fs::write(&conf, net_conf).unwrap();
        KubeOptions {
            kubeconfig: Some(kc),
            net_config_path: conf,
            node_name: Some(node.into()),
            poll_interval: Duration::from_millis(100),
            poll_timeout: Duration::from_secs(2),
            sync_timeout: Duration::from_secs(5),
            ..KubeOptions::default()
        }
    }

    async fn connect(&self, net_conf: &str, node: &str) -> KubeSubnetManager {
        KubeSubnetManager::connect(self.options(net_conf, node))
            .await
            .unwrap_or_else(|e| panic!("connecting to the fake API server: {e}"))
    }

    fn annotation(&self, node: &str, key: &str) -> Option<String> {
        self.api
            .node(node)?
            .pointer("/metadata/annotations")?
            .get(format!("{P}{key}"))?
            .as_str()
            .map(str::to_string)
    }
}

fn vxlan_attrs(ip: [u8; 4]) -> LeaseAttrs {
    LeaseAttrs {
        backend_type: "vxlan".into(),
        backend_data: Some(RawJson::new(VTEP).unwrap()),
        ..LeaseAttrs::new(ip.into())
    }
}

fn patches(reqs: &[RequestRecord]) -> Vec<&RequestRecord> {
    reqs.iter().filter(|r| r.method == "PATCH").collect()
}

/// A node with flannel's annotations as Go writes them for host-gw.
fn peer(api: &FakeApiServer, name: &str, cidr: &str, ip: &str) {
    api.add_node_with_pod_cidrs(
        name,
        &[cidr],
        &[
            (&format!("{P}kube-subnet-manager"), "true"),
            (&format!("{P}backend-type"), "host-gw"),
            (&format!("{P}backend-data"), "null"),
            (&format!("{P}public-ip"), ip),
        ],
    );
}

async fn next(stream: &mut LeaseStream) -> LeaseWatchResult {
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(Ok(r))) => r,
        Ok(Some(Err(e))) => panic!("watch error: {e}"),
        Ok(None) => panic!("the watch ended"),
        Err(_) => panic!("no watch delivery within 10 s"),
    }
}

/// The next non-empty delivery, skipping errors (an API server restart) and
/// in-sync markers.
async fn next_change(stream: &mut LeaseStream) -> LeaseWatchResult {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("no watch change within 15 s")
            .expect("the watch ended");
        match item {
            Ok(LeaseWatchResult::Events(es)) if es.is_empty() => {}
            Ok(r) => return r,
            Err(_) => {}
        }
    }
}

fn snapshot_keys(r: &LeaseWatchResult) -> Vec<String> {
    match r {
        LeaseWatchResult::Snapshot(ls) => ls.iter().map(|l| l.key().to_string()).collect(),
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

fn events(r: &LeaseWatchResult) -> Vec<(EventKind, String)> {
    match r {
        LeaseWatchResult::Events(es) => es
            .iter()
            .map(|e| (e.kind, e.lease.key().to_string()))
            .collect(),
        other => panic!("expected events, got {other:?}"),
    }
}

#[tokio::test]
async fn acquire_writes_gos_annotation_patch_and_condition() {
    let s = Setup::token();
    s.api.add_node_with_pod_cidrs("n1", &["10.244.1.0/24"], &[]);
    let m = s.connect(VXLAN_CONF, "n1").await;
    assert_eq!(m.node_name(), "n1");
    assert_eq!(
        m.stored_mac_addresses().await,
        Default::default(),
        "nothing stored yet"
    );
    s.api.clear_requests();

    let lease = m
        .acquire_lease(&AcquireRequest::new(vxlan_attrs([192, 168, 50, 11])))
        .await
        .unwrap();
    assert_eq!(lease.key().to_string(), "10.244.1.0-24");
    assert_eq!(lease.expiration, None, "Kubernetes leases do not expire");
    let reqs = s.api.requests();
    let p = patches(&reqs);
    assert_eq!(p.len(), 1, "{reqs:?}");
    assert_eq!(p[0].path, "/api/v1/nodes/n1/status");
    assert_eq!(
        p[0].content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    assert_eq!(
        p[0].body,
        r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"8e:f1:d4:c8:e8:36\"}","flannel.alpha.coreos.com/backend-type":"vxlan","flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ip":"192.168.50.11"}}}"#
    );
    assert_eq!(s.annotation("n1", "backend-data").as_deref(), Some(VTEP));
    assert!(
        m.status()
            .annotations_patched
            .load(std::sync::atomic::Ordering::Relaxed)
    );

    // Already right: a second acquisition (a restart) patches nothing, and
    // the VTEP MAC comes back from backend-data.
    s.api.clear_requests();
    m.acquire_lease(&AcquireRequest::new(vxlan_attrs([192, 168, 50, 11])))
        .await
        .unwrap();
    assert!(patches(&s.api.requests()).is_empty());
    assert_eq!(
        m.stored_mac_addresses().await.v4.as_deref(),
        Some("8e:f1:d4:c8:e8:36")
    );

    // A user's public-ip-overwrite is published instead of our address.
    let mut node = s.api.node("n1").unwrap();
    node["metadata"]["annotations"][format!("{P}public-ip-overwrite")] = "172.18.0.2".into();
    node["metadata"]["annotations"][format!("{P}node-public-ip")] = "192.168.60.1".into();
    s.api.apply_node(node);
    let again = m
        .acquire_lease(&AcquireRequest::new(vxlan_attrs([192, 168, 50, 11])))
        .await
        .unwrap();
    assert_eq!(
        again.attrs.public_ip.to_string(),
        "192.168.50.11",
        "our lease keeps our attrs"
    );
    assert_eq!(
        s.annotation("n1", "public-ip").as_deref(),
        Some("172.18.0.2")
    );
    assert_eq!(
        m.stored_public_ips().await,
        (Some([192, 168, 60, 1].into()), None)
    );

    // NetworkUnavailable=False, reason FlannelIsUp, through nodes/status.
    s.api.clear_requests();
    m.complete_lease(&lease).await.unwrap();
    let reqs = s.api.requests();
    let p = patches(&reqs);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, "/api/v1/nodes/n1/status");
    assert!(
        p[0].body.starts_with(r#"{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","lastHeartbeatTime":""#)
            && p[0].body.ends_with(r#""reason":"FlannelIsUp","message":"Flannel is running on this node"}]}}"#),
        "{}",
        p[0].body
    );
    let node = s.api.node("n1").unwrap();
    let conds = node["status"]["conditions"].as_array().unwrap();
    let nu = conds
        .iter()
        .find(|c| c["type"] == "NetworkUnavailable")
        .expect("condition set");
    assert_eq!(
        (nu["status"].as_str(), nu["reason"].as_str()),
        (Some("False"), Some("FlannelIsUp"))
    );
    assert!(
        conds.iter().any(|c| c["type"] == "Ready"),
        "the merge kept the other conditions"
    );
}

#[tokio::test]
async fn dual_stack_and_host_gw_annotations_and_cidr_errors() {
    let s = Setup::token();
    let dual = r#"{"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","EnableIPv6":true,"Backend":{"Type":"host-gw"}}"#;
    s.api
        .add_node_with_pod_cidrs("d1", &["10.244.7.0/24", "fd00:10:244:7::/64"], &[]);
    let m = s.connect(dual, "d1").await;
    let attrs = LeaseAttrs {
        public_ipv6: Some("fd00::7".parse().unwrap()),
        backend_type: "host-gw".into(),
        ..LeaseAttrs::new([192, 168, 50, 7].into())
    };
    let lease = m.acquire_lease(&AcquireRequest::new(attrs)).await.unwrap();
    assert_eq!(lease.key().to_string(), "10.244.7.0-24&fd00:10:244:7::-64");
    for (k, v) in [
        ("backend-data", "null"),
        ("backend-v6-data", "null"),
        ("backend-type", "host-gw"),
        ("public-ip", "192.168.50.7"),
        ("public-ipv6", "fd00::7"),
        ("kube-subnet-manager", "true"),
    ] {
        assert_eq!(s.annotation("d1", k).as_deref(), Some(v), "{k}");
    }

    // Containment and podCIDR errors, Go's texts.
    s.api
        .add_node_with_pod_cidrs("outside", &["10.99.1.0/24"], &[]);
    s.api.add_node_with_pod_cidrs("none", &[], &[]);
    for (node, want) in [
        (
            "outside",
            "subnet \"10.244.0.0/16\" specified in the flannel net config doesn't contain \"10.99.1.0/24\" PodCIDR of the \"outside\" node",
        ),
        ("none", "node \"none\" pod cidr not assigned"),
    ] {
        let m = s.connect(VXLAN_CONF, node).await;
        let e = m
            .acquire_lease(&AcquireRequest::new(vxlan_attrs([192, 168, 50, 9])))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), want);
        assert!(
            s.annotation(node, "backend-type").is_none(),
            "an error patches nothing"
        );
    }
}

#[tokio::test]
async fn watch_events_garbage_relist_and_restart() {
    let s = Setup::token();
    peer(&s.api, "self", "10.244.1.0/24", "192.168.50.1");
    peer(&s.api, "p2", "10.244.2.0/24", "192.168.50.2");
    // Garbage: not an address. Skipped, never the others.
    peer(&s.api, "garbage", "10.244.66.0/24", "not-an-ip");
    s.api
        .add_node_with_pod_cidrs("unmanaged", &["10.244.9.0/24"], &[]);
    let m = s.connect(VXLAN_CONF, "self").await;
    let mut w = m.watch_leases().await.unwrap();
    let first = next(&mut w).await;
    assert_eq!(snapshot_keys(&first), ["10.244.1.0-24", "10.244.2.0-24"]);
    let st = m.status();
    assert_eq!(
        st.skipped_nodes.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // A node joins; an unrelated change to a peer is no event; a relevant
    // one is.
    peer(&s.api, "p3", "10.244.3.0/24", "192.168.50.3");
    assert_eq!(
        events(&next_change(&mut w).await),
        [(EventKind::Added, "10.244.3.0-24".to_string())]
    );
    let mut n = s.api.node("p2").unwrap();
    n["metadata"]["labels"]["x"] = "y".into();
    s.api.apply_node(n);
    peer(&s.api, "p2", "10.244.2.0/24", "192.168.50.22");
    let r = next_change(&mut w).await;
    assert_eq!(
        events(&r),
        [(EventKind::Added, "10.244.2.0-24".to_string())],
        "the label change was no event"
    );
    if let LeaseWatchResult::Events(es) = &r {
        assert_eq!(es[0].lease.attrs.public_ip.to_string(), "192.168.50.22");
    }

    // The history expires (410 Gone): kube-runtime's watcher lists again,
    // delivered as a snapshot with every peer.
    s.api.expire_history();
    let relist = next_change(&mut w).await;
    assert_eq!(
        snapshot_keys(&relist),
        ["10.244.1.0-24", "10.244.2.0-24", "10.244.3.0-24"]
    );

    // The API server restarts: the watch resumes; nothing is removed, and a
    // node added afterwards arrives.
    s.api.restart();
    peer(&s.api, "p4", "10.244.4.0/24", "192.168.50.4");
    let after = next_change(&mut w).await;
    match &after {
        LeaseWatchResult::Events(es) => {
            assert!(es.iter().all(|e| e.kind == EventKind::Added), "{after:?}");
            assert!(
                es.iter()
                    .any(|e| e.lease.key().to_string() == "10.244.4.0-24")
            );
        }
        LeaseWatchResult::Snapshot(_) => assert_eq!(
            snapshot_keys(&after),
            [
                "10.244.1.0-24",
                "10.244.2.0-24",
                "10.244.3.0-24",
                "10.244.4.0-24"
            ]
        ),
    }

    // A deleted node is removed by key.
    s.api.delete_node("p3");
    assert_eq!(
        events(&next_change(&mut w).await),
        [(EventKind::Removed, "10.244.3.0-24".to_string())]
    );
}

#[tokio::test]
async fn node_name_from_the_pod_and_connection_errors() {
    let s = Setup::token();
    s.api.add_node_with_pod_cidrs("n7", &["10.244.7.0/24"], &[]);
    s.api.add_pod("kube-flannel", "kube-flannel-ds-abcde", "n7");
    let base = || KubeOptions {
        node_name: None,
        ..s.options(VXLAN_CONF, "unused")
    };
    let with_pod = |pod: &str| KubeOptions {
        pod_name: Some(pod.into()),
        pod_namespace: Some("kube-flannel".into()),
        ..base()
    };
    let m = KubeSubnetManager::connect(with_pod("kube-flannel-ds-abcde"))
        .await
        .unwrap();
    assert_eq!(m.node_name(), "n7");
    let err = |o: KubeOptions| async move {
        match KubeSubnetManager::connect(o).await {
            Ok(_) => panic!("connected"),
            Err(e) => e.to_string(),
        }
    };
    assert_eq!(
        err(base()).await,
        "env variables POD_NAME and POD_NAMESPACE must be set"
    );
    let missing = err(with_pod("gone")).await;
    assert!(
        missing.starts_with("error retrieving pod spec for 'kube-flannel/gone': ")
            && missing.contains("404"),
        "{missing}"
    );
    s.api.apply_pod(serde_json::json!({
        "metadata": {"name": "pending", "namespace": "kube-flannel"},
        "spec": {"containers": []}
    }));
    assert_eq!(
        err(with_pod("pending")).await,
        "node name not present in pod spec 'kube-flannel/pending'"
    );
    let named = || s.options(VXLAN_CONF, "n7");
    assert_eq!(
        err(KubeOptions {
            annotation_prefix: "a.b/c/d".into(),
            ..named()
        })
        .await,
        "error creating network manager: subnet/kube: prefix can contain at most single slash"
    );
    assert_eq!(
        err(KubeOptions {
            event_queue_depth: Some("lots".into()),
            ..named()
        })
        .await,
        r#"error creating network manager: env EVENT_QUEUE_DEPTH=lots format error: strconv.Atoi: parsing "lots": invalid syntax"#
    );
    let nf = err(KubeOptions {
        net_config_path: "/nonexistent/net-conf.json".into(),
        ..named()
    })
    .await;
    assert!(nf.starts_with("failed to read net conf: "), "{nf}");
    let bad = s.dir.path().join("bad.json");
    std::fs::write(&bad, "{").unwrap();
    let pe = err(KubeOptions {
        net_config_path: bad,
        ..named()
    })
    .await;
    assert!(pe.starts_with("error parsing subnet config: "), "{pe}");
    assert_eq!(
        err(KubeOptions {
            kubeconfig: None,
            ..named()
        })
        .await,
        "fail to create kubernetes config: unable to load in-cluster configuration, \
         KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined"
    );
    // --kube-api-url replaces the kubeconfig's server.
    let moved = err(KubeOptions {
        api_url: Some("https://127.0.0.1:1".into()),
        sync_timeout: Duration::from_millis(1500),
        ..named()
    })
    .await;
    assert!(
        moved.starts_with(
            "error waiting for nodeController to sync state: context deadline exceeded"
        ),
        "{moved}"
    );
    // CONT_WHEN_CACHE_NOT_READY=true goes on after the timeout.
    let m = KubeSubnetManager::connect(
        KubeOptions {
            api_url: Some("https://127.0.0.1:1".into()),
            sync_timeout: Duration::from_millis(1500),
            ..named()
        }
        .with_env(|n| (n == "CONT_WHEN_CACHE_NOT_READY").then(|| "true".to_string())),
    )
    .await;
    if let Err(e) = m {
        panic!("CONT_WHEN_CACHE_NOT_READY=true must continue: {e}");
    }
}

#[tokio::test]
async fn in_cluster_service_account() {
    let s = Setup::token();
    s.api.add_node_with_pod_cidrs("n1", &["10.244.1.0/24"], &[]);
    let sa = s.dir.path().join("serviceaccount");
    std::fs::create_dir(&sa).unwrap();
    std::fs::write(sa.join("token"), "s3cret").unwrap();
    std::fs::write(sa.join("ca.crt"), s.api.ca_pem()).unwrap();
    std::fs::write(sa.join("namespace"), "kube-flannel").unwrap();
    let addr = s.api.addr();
    let opts = KubeOptions {
        kubeconfig: None,
        service_account_dir: sa.clone(),
        ..s.options(VXLAN_CONF, "n1")
    }
    .with_env(|n| match n {
        "KUBERNETES_SERVICE_HOST" => Some(addr.ip().to_string()),
        "KUBERNETES_SERVICE_PORT" => Some(addr.port().to_string()),
        "NODE_NAME" => Some("n1".into()),
        _ => None,
    });
    let m = KubeSubnetManager::connect(opts.clone()).await.unwrap();
    m.acquire_lease(&AcquireRequest::new(vxlan_attrs([192, 168, 50, 1])))
        .await
        .unwrap();
    assert!(
        s.api
            .requests()
            .iter()
            .all(|r| r.user == TOKEN_USER || r.verb.is_empty())
    );
    // A wrong token is refused (401).
    std::fs::write(sa.join("token"), "wrong").unwrap();
    let e = match KubeSubnetManager::connect(KubeOptions {
        sync_timeout: Duration::from_millis(1500),
        ..opts
    })
    .await
    {
        Ok(_) => panic!("a wrong token connected"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("401"), "{e}");
}

#[tokio::test]
async fn alloc_runs_without_the_node_informer() {
    let s = Setup::token();
    s.api.add_node_with_pod_cidrs("a1", &["10.244.5.0/24"], &[]);
    peer(&s.api, "p2", "10.244.2.0/24", "192.168.50.2");
    let m = s
        .connect(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}"#,
            "a1",
        )
        .await;
    let lease = m
        .acquire_lease(&AcquireRequest::new(LeaseAttrs::new(
            [192, 168, 50, 5].into(),
        )))
        .await
        .unwrap();
    assert_eq!(s.annotation("a1", "backend-type").as_deref(), Some(""));
    assert_eq!(s.annotation("a1", "backend-data").as_deref(), Some("null"));
    let mut w = m.watch_leases().await.unwrap();
    assert_eq!(
        snapshot_keys(&next(&mut w).await),
        [lease.key().to_string()]
    );
    let reqs = s.api.requests();
    assert!(
        reqs.iter().all(|r| r.verb != "list" && r.verb != "watch"),
        "no informer: {reqs:?}"
    );
    assert!(reqs.iter().any(|r| r.verb == "get"
        && r.resource == "nodes"
        && r.query.contains("resourceVersion=0")));
}

#[tokio::test]
async fn every_call_is_allowed_by_the_cluster_role() {
    let s = Setup::new(FakeOptions {
        client_certs: true,
        ..FakeOptions::default()
    });
    let user = "system:serviceaccount:kube-flannel:flannel";
    // kube-flannel's ClusterRole (dist/kube-flannel.yml), enforced.
    s.api.set_permissions(user, flannel_rules());
    s.api.add_node_with_pod_cidrs("n1", &["10.244.1.0/24"], &[]);
    s.api.add_pod("kube-flannel", "ds-1", "n1");
    peer(&s.api, "p2", "10.244.2.0/24", "192.168.50.2");
    let kc = s.dir.path().join("kubeconfig");
    s.api.write_kubeconfig(&kc, user).unwrap();
    let opts = KubeOptions {
        kubeconfig: Some(kc),
        node_name: None,
        pod_name: Some("ds-1".into()),
        pod_namespace: Some("kube-flannel".into()),
        ..s.options(VXLAN_CONF, "unused")
    };
    let m = KubeSubnetManager::connect(opts).await.unwrap();
    m.stored_public_ips().await;
    m.stored_mac_addresses().await;
    let lease = m
        .acquire_lease(&AcquireRequest::new(vxlan_attrs([192, 168, 50, 1])))
        .await
        .unwrap();
    m.complete_lease(&lease).await.unwrap();
    let mut w = m.watch_leases().await.unwrap();
    next(&mut w).await;
    // An event proves the watch (after the list) runs.
    peer(&s.api, "p3", "10.244.3.0/24", "192.168.50.3");
    next_change(&mut w).await;
    let reqs = s.api.requests();
    assert!(!reqs.is_empty());
    for r in reqs.iter().filter(|r| !r.verb.is_empty()) {
        assert_eq!(r.user, user);
        assert!(
            r.status < 400,
            "refused by the ClusterRole: {} {}?{} -> {}",
            r.method,
            r.path,
            r.query,
            r.status
        );
    }
    let verbs: std::collections::BTreeSet<String> = reqs
        .iter()
        .filter(|r| !r.verb.is_empty())
        .map(|r| format!("{} {}", r.resource, r.verb))
        .collect();
    assert_eq!(
        verbs.into_iter().collect::<Vec<_>>(),
        [
            "nodes get",
            "nodes list",
            "nodes watch",
            "nodes/status patch",
            "pods get"
        ]
    );
}

/// Dual-stack net-conf with a backend Go keeps to IPv4 (tencent-vpc, which
/// accepts such a net-conf; udp, ipip and ipsec refuse it when they
/// register): Go forces our own lease to IPv4, and peers are read in the
/// same families, so no peer lease has an IPv6 part, a peer published by
/// such a backend (no `public-ipv6`) is not skipped, and an IPv6-only
/// annotation change is no event.
#[tokio::test]
async fn ipv4_only_backend_in_dual_stack_reads_peers_in_ipv4() {
    let s = Setup::token();
    let dual_v4_backend = r#"{"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","EnableIPv6":true,"Backend":{"Type":"tencent-vpc"}}"#;
    s.api
        .add_node_with_pod_cidrs("u1", &["10.244.1.0/24", "fd00:10:244:1::/64"], &[]);
    // As a tencent-vpc (or udp) flanneld publishes itself: type "", data
    // null, no IPv6.
    let v4_peer = |name: &str, cidrs: &[&str], ip: &str, extra: &[(&str, &str)]| {
        let mut ann: Vec<(String, String)> = vec![
            (format!("{P}kube-subnet-manager"), "true".into()),
            (format!("{P}backend-type"), String::new()),
            (format!("{P}backend-data"), "null".into()),
            (format!("{P}public-ip"), ip.into()),
        ];
        ann.extend(
            extra
                .iter()
                .map(|(k, v)| (format!("{P}{k}"), v.to_string())),
        );
        let refs: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        s.api.add_node_with_pod_cidrs(name, cidrs, &refs);
    };
    v4_peer(
        "u2",
        &["10.244.2.0/24", "fd00:10:244:2::/64"],
        "192.168.50.2",
        &[],
    );
    // IPv6 annotations left over (an earlier vxlan run): still IPv4 only.
    v4_peer(
        "u3",
        &["10.244.3.0/24", "fd00:10:244:3::/64"],
        "192.168.50.3",
        &[("public-ipv6", "fd00::3"), ("backend-v6-data", "null")],
    );
    let m = s.connect(dual_v4_backend, "u1").await;
    assert_eq!(m.peer_families(), (true, false));

    let attrs = LeaseAttrs {
        public_ipv6: Some("fd00::1".parse().unwrap()),
        ..LeaseAttrs::new([192, 168, 50, 1].into())
    };
    let own = m.acquire_lease(&AcquireRequest::new(attrs)).await.unwrap();
    assert_eq!(own.key().to_string(), "10.244.1.0-24", "forced to IPv4");
    assert_eq!(s.annotation("u1", "backend-type").as_deref(), Some(""));
    assert_eq!(
        s.annotation("u1", "public-ip").as_deref(),
        Some("192.168.50.1")
    );
    assert_eq!(
        s.annotation("u1", "public-ipv6"),
        None,
        "no IPv6 annotations for this backend"
    );
    assert_eq!(s.annotation("u1", "backend-v6-data"), None);

    let mut w = m.watch_leases().await.unwrap();
    let first = next(&mut w).await;
    // Our own node's lease has our own lease's key (so the runner filters
    // it out), and every peer is there.
    assert_eq!(
        snapshot_keys(&first),
        ["10.244.1.0-24", "10.244.2.0-24", "10.244.3.0-24"]
    );
    if let LeaseWatchResult::Snapshot(ls) = &first {
        for l in ls {
            assert_eq!((l.ipv6_subnet, l.attrs.public_ipv6), (None, None), "{l:?}");
        }
    }
    assert_eq!(
        m.status()
            .skipped_nodes
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // An IPv6-only change is no event; the IPv4 change after it is the next
    // delivery (Go's dual-stack filter would have hidden it).
    v4_peer(
        "u3",
        &["10.244.3.0/24", "fd00:10:244:3::/64"],
        "192.168.50.3",
        &[("public-ipv6", "fd00::33"), ("backend-v6-data", "null")],
    );
    v4_peer(
        "u3",
        &["10.244.3.0/24", "fd00:10:244:3::/64"],
        "192.168.50.33",
        &[("public-ipv6", "fd00::33"), ("backend-v6-data", "null")],
    );
    let r = next_change(&mut w).await;
    assert_eq!(
        events(&r),
        [(EventKind::Added, "10.244.3.0-24".to_string())]
    );
    if let LeaseWatchResult::Events(es) = &r {
        assert_eq!(es[0].lease.attrs.public_ip.to_string(), "192.168.50.33");
        assert_eq!(es[0].lease.ipv6_subnet, None);
    }

    // A dual-stack backend reads peers in both families, as before.
    let m = s
        .connect(
            &dual_v4_backend.replace(r#""Type":"tencent-vpc""#, r#""Type":"vxlan""#),
            "u1",
        )
        .await;
    assert_eq!(m.peer_families(), (true, true));
}
