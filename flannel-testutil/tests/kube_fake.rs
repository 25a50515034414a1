//! The fake Kubernetes API server (`flannel_testutil::kube`) against real
//! clients: Debian's kubectl and kube-rs.

#![cfg(feature = "kube")]

use flannel_testutil::kube::{
    FORBIDDEN_USER, FakeApiServer, FakeOptions, TOKEN_USER, flannel_rules,
};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, VersionMatch, WatchEvent, WatchParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, Config};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Overrides the kubectl binary the tests run.
const KUBECTL_ENV: &str = "FLANNEL_TEST_KUBECTL";

fn kubectl_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(KUBECTL_ENV) {
        return PathBuf::from(path);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let candidate = dir.join("kubectl");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "kubectl not found in PATH: install the `kubernetes-client` Debian package \
         (`apt-get install -y kubernetes-client`) or point {KUBECTL_ENV} at a kubectl binary"
    );
}

struct Kubectl {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(api: &FakeApiServer, user: &str) -> Kubectl {
        let dir = tempfile::tempdir().unwrap();
        api.write_kubeconfig(&dir.path().join("kubeconfig"), user)
            .unwrap();
        Kubectl {
            bin: kubectl_binary(),
            dir,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs kubectl; returns (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self
            .command(&["--request-timeout=10s"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.bin.display()));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .arg(format!(
                "--kubeconfig={}",
                self.path().join("kubeconfig").display()
            ))
            // A private discovery cache: ports are reused between tests.
            .arg(format!(
                "--cache-dir={}",
                self.path().join("cache").display()
            ))
            .args(args)
            .env("HOME", self.path())
            .stdin(Stdio::null());
        command
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args);
        assert!(ok, "kubectl {args:?} failed: {stderr}\n{stdout}");
        stdout
    }
}

#[test]
fn kubectl_lists_gets_annotates_and_patches_nodes() {
    let api = FakeApiServer::start(FakeOptions {
        token: Some("s3cret".to_owned()),
        ..FakeOptions::default()
    })
    .unwrap();
    api.add_node_with_pod_cidrs("node-a", &["10.244.1.0/24"], &[("a", "1")]);
    api.add_node_with_pod_cidrs("node-b", &["10.244.2.0/24", "fd00:1::/64"], &[]);
    let kubectl = Kubectl::new(&api, "admin");

    let list: Value = serde_json::from_str(&kubectl.ok(&["get", "nodes", "-o", "json"])).unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["node-a", "node-b"]);

    let table = kubectl.ok(&["get", "node", "node-a"]);
    assert!(
        table.contains("node-a") && table.contains("Ready"),
        "{table}"
    );

    kubectl.ok(&[
        "annotate",
        "node",
        "node-a",
        "flannel.alpha.coreos.com/public-ip=10.0.0.1",
    ]);
    let node = api.node("node-a").unwrap();
    assert_eq!(
        node["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"],
        "10.0.0.1"
    );
    assert_eq!(node["metadata"]["annotations"]["a"], "1");

    kubectl.ok(&[
        "patch",
        "node",
        "node-b",
        "--type=strategic",
        "-p",
        r#"{"metadata":{"labels":{"zone":"b"}}}"#,
    ]);
    assert_eq!(
        api.node("node-b").unwrap()["metadata"]["labels"]["zone"],
        "b"
    );
    let patches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.verb == "patch")
        .collect();
    assert_eq!(patches.len(), 2, "{patches:#?}");
    for patch in &patches {
        assert_eq!(patch.user, TOKEN_USER);
        assert_eq!(patch.resource, "nodes");
        assert_eq!(patch.status, 200);
    }
    assert_eq!(
        patches[1].content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
}

#[test]
fn kubectl_writes_status_and_other_patch_types() {
    let api = FakeApiServer::start(FakeOptions {
        token: Some("s3cret".to_owned()),
        ..FakeOptions::default()
    })
    .unwrap();
    api.add_node_with_pod_cidrs("node-s", &["10.244.3.0/24"], &[]);
    let kubectl = Kubectl::new(&api, "admin");

    // kubectl 1.20 has no `patch --subresource`; a raw PUT of the whole
    // object reaches the status subresource.
    let mut node = api.node("node-s").unwrap();
    node["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-type"] = json!("host-gw");
    node["spec"]["podCIDR"] = json!("192.168.0.0/24");
    node["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp"}));
    let file = kubectl.path().join("node.json");
    std::fs::write(&file, node.to_string()).unwrap();
    // kubectl's client-side validation needs the protobuf OpenAPI
    // document, which the fake does not serve (404).
    kubectl.ok(&[
        "replace",
        "--validate=false",
        "--raw",
        "/api/v1/nodes/node-s/status",
        "-f",
        file.to_str().unwrap(),
    ]);
    let stored = api.node("node-s").unwrap();
    assert_eq!(
        stored["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-type"],
        "host-gw"
    );
    assert_eq!(stored["status"]["conditions"][1]["reason"], "FlannelIsUp");
    assert_eq!(
        stored["spec"]["podCIDR"], "10.244.3.0/24",
        "a status write keeps the spec"
    );

    // The same body again is a stale write now: 409 Conflict.
    let (ok, _, stderr) = kubectl.run(&[
        "replace",
        "--validate=false",
        "--raw",
        "/api/v1/nodes/node-s/status",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("the object has been modified"),
        "{stderr}"
    );

    kubectl.ok(&[
        "patch",
        "node",
        "node-s",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"merged":"yes"}}}"#,
    ]);
    kubectl.ok(&[
        "patch",
        "node",
        "node-s",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/unschedulable","value":true}]"#,
    ]);
    let stored = api.node("node-s").unwrap();
    assert_eq!(stored["metadata"]["labels"]["merged"], "yes");
    assert_eq!(stored["spec"]["unschedulable"], true);

    let (ok, _, stderr) = kubectl.run(&["get", "node", "missing"]);
    assert!(
        !ok && stderr.contains(r#"nodes "missing" not found"#),
        "{stderr}"
    );
}

async fn client(api: &FakeApiServer, user: &str) -> Client {
    Client::try_from(config(api, user).await).unwrap()
}

async fn config(api: &FakeApiServer, user: &str) -> Config {
    let kubeconfig = Kubeconfig::from_yaml(&api.kubeconfig(user)).unwrap();
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap()
}

/// Runs a kube-rs watcher (with kube-rs's default backoff) on its own task
/// and forwards its events as short descriptions; errors (a restarted or
/// expired watch reports one before it recovers) are skipped.
fn spawn_watcher(nodes: Api<Node>) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    spawn_watcher_with(nodes, watcher::Config::default())
}

fn spawn_watcher_with(
    nodes: Api<Node>,
    config: watcher::Config,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
        let mut stream = watcher(nodes, config).default_backoff().boxed();
        while let Some(item) = stream.next().await {
            let description = match item {
                Ok(Event::Init) => "init".to_owned(),
                Ok(Event::InitApply(n)) => format!("init-apply {}", name(&n)),
                Ok(Event::InitDone) => "init-done".to_owned(),
                Ok(Event::Apply(n)) => format!("apply {}", name(&n)),
                Ok(Event::Delete(n)) => format!("delete {}", name(&n)),
                Err(_) => continue,
            };
            if tx.send(description).is_err() {
                return;
            }
        }
    });
    rx
}

async fn next_events(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    n: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap_or_else(|_| panic!("no watcher event within 10 s after {out:?}"))
            .expect("the watcher stopped");
        out.push(event);
    }
    out
}

async fn next_event(events: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    next_events(events, 1).await.remove(0)
}

/// Waits until the fake has started `n` node watches.
async fn wait_for_watches(api: &FakeApiServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(api, "watch", "nodes") < n {
        assert!(Instant::now() < deadline, "no node watch {n} within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn count(api: &FakeApiServer, verb: &str, resource: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.verb == verb && r.resource == resource)
        .count()
}

#[tokio::test]
async fn kube_rs_lists_pages_and_gets() {
    let api = FakeApiServer::start(FakeOptions::default()).unwrap();
    for i in 0..5 {
        api.add_node_with_pod_cidrs(&format!("node-{i}"), &[&format!("10.244.{i}.0/24")], &[]);
    }
    api.add_pod("kube-flannel", "kube-flannel-ds-abcde", "node-3");
    let client = client(&api, "admin").await;
    let nodes: Api<Node> = Api::all(client.clone());

    let all = nodes.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 5);
    assert_eq!(
        all.metadata.resource_version,
        Some(api.resource_version().to_string())
    );
    assert_eq!(
        all.items[2].spec.as_ref().unwrap().pod_cidrs,
        Some(vec!["10.244.2.0/24".to_owned()])
    );

    // Pages come from one snapshot: a change between pages does not show.
    let first = nodes.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("a continue token");
    api.add_node_with_pod_cidrs("node-3", &["10.99.0.0/24"], &[]);
    api.delete_node("node-4");
    let mut names: Vec<String> = first
        .items
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect();
    let mut token = Some(token);
    while let Some(t) = token {
        let page = nodes
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version,
            first.metadata.resource_version
        );
        for node in &page.items {
            if node.metadata.name.as_deref() == Some("node-3") {
                assert_eq!(
                    node.spec.as_ref().unwrap().pod_cidr.as_deref(),
                    Some("10.244.3.0/24")
                );
            }
        }
        names.extend(page.items.iter().map(|n| n.metadata.name.clone().unwrap()));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
    }
    assert_eq!(names, ["node-0", "node-1", "node-2", "node-3", "node-4"]);

    let selected = nodes
        .list(&ListParams::default().fields("metadata.name=node-1"))
        .await
        .unwrap();
    assert_eq!(selected.items.len(), 1);
    let labelled = nodes
        .list(&ListParams::default().labels("kubernetes.io/hostname in (node-0,node-2)"))
        .await
        .unwrap();
    assert_eq!(labelled.items.len(), 2);

    let node = nodes.get("node-1").await.unwrap();
    assert_eq!(node.metadata.name.as_deref(), Some("node-1"));
    let missing = nodes.get("node-x").await.unwrap_err();
    assert!(
        matches!(&missing, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
        "{missing}"
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-flannel");
    let pod = pods.get("kube-flannel-ds-abcde").await.unwrap();
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("node-3"));
    api.add_pod("kube-flannel", "kube-flannel-ds-fghij", "node-1");
    api.add_pod("default", "web", "node-3");
    let on_node_3 = Api::<Pod>::all(client)
        .list(&ListParams::default().fields("spec.nodeName=node-3"))
        .await
        .unwrap();
    let names: Vec<String> = on_node_3.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, ["web", "kube-flannel-ds-abcde"]);
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
}

#[tokio::test]
async fn kube_rs_watcher_sees_added_modified_deleted() {
    let api = FakeApiServer::start(FakeOptions {
        bookmark_interval: Duration::from_millis(100),
        ..FakeOptions::default()
    })
    .unwrap();
    api.add_node_with_pod_cidrs("node-a", &["10.244.1.0/24"], &[]);
    let nodes: Api<Node> = Api::all(client(&api, "admin").await);
    let mut stream = spawn_watcher(nodes);
    assert_eq!(
        next_events(&mut stream, 3).await,
        ["init", "init-apply node-a", "init-done"]
    );

    api.add_node_with_pod_cidrs("node-b", &["10.244.2.0/24"], &[]);
    assert_eq!(next_event(&mut stream).await, "apply node-b");
    api.add_node_with_pod_cidrs("node-a", &["10.244.1.0/24"], &[("k", "v")]);
    assert_eq!(next_event(&mut stream).await, "apply node-a");
    api.delete_node("node-b");
    assert_eq!(next_event(&mut stream).await, "delete node-b");
    // Bookmarks flowed (every 100 ms) without disturbing the watch.
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.add_node_with_pod_cidrs("node-c", &["10.244.3.0/24"], &[]);
    assert_eq!(next_event(&mut stream).await, "apply node-c");
    assert_eq!(count(&api, "list", "nodes"), 1);
}

#[tokio::test]
async fn kube_rs_watch_resumes_after_restart() {
    let api = FakeApiServer::start(FakeOptions::default()).unwrap();
    api.add_node_with_pod_cidrs("node-a", &["10.244.1.0/24"], &[]);
    let nodes: Api<Node> = Api::all(client(&api, "admin").await);
    let mut stream = spawn_watcher(nodes);
    assert_eq!(
        next_events(&mut stream, 3).await,
        ["init", "init-apply node-a", "init-done"]
    );
    let rv_before = api.resource_version();
    wait_for_watches(&api, 1).await;

    api.restart();
    api.add_node_with_pod_cidrs("node-b", &["10.244.2.0/24"], &[]);
    assert_eq!(next_event(&mut stream).await, "apply node-b");
    // Resumed from where it was: no second list, a second watch from the
    // version it had seen.
    assert_eq!(count(&api, "list", "nodes"), 1);
    let watches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.verb == "watch")
        .collect();
    assert!(watches.len() >= 2, "{watches:#?}");
    assert!(
        watches
            .last()
            .unwrap()
            .query
            .contains(&format!("resourceVersion={rv_before}")),
        "{watches:#?}"
    );
}

#[tokio::test]
async fn kube_rs_relists_after_410_gone() {
    let api = FakeApiServer::start(FakeOptions::default()).unwrap();
    api.add_node_with_pod_cidrs("node-a", &["10.244.1.0/24"], &[]);
    let nodes: Api<Node> = Api::all(client(&api, "admin").await);
    let old_rv = api.resource_version().to_string();
    let mut stream = spawn_watcher(nodes.clone());
    assert_eq!(
        next_events(&mut stream, 3).await,
        ["init", "init-apply node-a", "init-done"]
    );

    api.add_node_with_pod_cidrs("node-b", &["10.244.2.0/24"], &[]);
    assert_eq!(next_event(&mut stream).await, "apply node-b");
    api.expire_history();
    // The open watch gets 410 Gone; the watcher lists again.
    assert_eq!(
        next_events(&mut stream, 4).await,
        [
            "init",
            "init-apply node-a",
            "init-apply node-b",
            "init-done"
        ]
    );
    assert_eq!(count(&api, "list", "nodes"), 2);
    api.add_node_with_pod_cidrs("node-c", &["10.244.3.0/24"], &[]);
    assert_eq!(next_event(&mut stream).await, "apply node-c");

    // A new watch or an exact list from a forgotten version: 410 too.
    let mut old_watch = nodes
        .watch(&WatchParams::default(), &old_rv)
        .await
        .unwrap()
        .boxed();
    match old_watch.next().await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    let err = nodes
        .list(
            &ListParams::default()
                .at(&old_rv)
                .matching(VersionMatch::Exact),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 410),
        "{err}"
    );
}

#[tokio::test]
async fn kube_rs_watch_selectors_timeout_and_bookmarks() {
    let api = FakeApiServer::start(FakeOptions {
        bookmark_interval: Duration::from_millis(200),
        ..FakeOptions::default()
    })
    .unwrap();
    api.add_node_with_pod_cidrs("node-a", &["10.244.1.0/24"], &[]);
    api.add_node_with_pod_cidrs("node-b", &["10.244.2.0/24"], &[]);
    let nodes: Api<Node> = Api::all(client(&api, "admin").await);
    let started = Instant::now();
    let params = WatchParams::default()
        .fields("metadata.name=node-a")
        .timeout(1);
    let mut stream = nodes.watch(&params, "0").await.unwrap().boxed();
    api.add_node_with_pod_cidrs("node-a", &["10.244.1.0/24"], &[("x", "1")]);
    api.add_node_with_pod_cidrs("node-b", &["10.244.2.0/24"], &[("x", "1")]);
    let mut seen = Vec::new();
    while let Some(event) = stream.next().await {
        seen.push(match event.unwrap() {
            WatchEvent::Added(n) => format!("ADDED {}", n.metadata.name.unwrap()),
            WatchEvent::Modified(n) => format!("MODIFIED {}", n.metadata.name.unwrap()),
            WatchEvent::Deleted(n) => format!("DELETED {}", n.metadata.name.unwrap()),
            WatchEvent::Bookmark(_) => "BOOKMARK".to_owned(),
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        });
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    // Bookmarks may come at any point (the 200 ms timer can fire before
    // the test's update when the machine is busy); the object events are
    // exactly node-a's, in order, and node-b's change is filtered out.
    let objects: Vec<&String> = seen.iter().filter(|e| *e != "BOOKMARK").collect();
    assert_eq!(objects, ["ADDED node-a", "MODIFIED node-a"], "{seen:?}");
    assert!(
        seen.len() - objects.len() >= 2,
        "at least two bookmarks in a 1 s watch: {seen:?}"
    );
}

#[tokio::test]
async fn kube_rs_status_patches_merge_conditions_by_type() {
    let api = FakeApiServer::start(FakeOptions::default()).unwrap();
    api.add_node_with_pod_cidrs("node-a", &["10.244.1.0/24"], &[]);
    let nodes: Api<Node> = Api::all(client(&api, "admin").await);
    let condition = |status: &str| {
        json!({"status": {"conditions": [{
            "type": "NetworkUnavailable", "status": status, "reason": "FlannelIsUp",
            "message": "Flannel is running on this node",
            "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"
        }]}})
    };
    let params = PatchParams::default();
    nodes
        .patch_status("node-a", &params, &Patch::Strategic(condition("False")))
        .await
        .unwrap();
    let types = |api: &FakeApiServer| -> Vec<(String, String)> {
        api.node("node-a").unwrap()["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["type"].as_str().unwrap().to_owned(),
                    c["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let ready = ("Ready".to_owned(), "True".to_owned());
    assert_eq!(
        types(&api),
        [
            ready.clone(),
            ("NetworkUnavailable".to_owned(), "False".to_owned())
        ]
    );
    nodes
        .patch_status("node-a", &params, &Patch::Strategic(condition("True")))
        .await
        .unwrap();
    assert_eq!(
        types(&api),
        [
            ready.clone(),
            ("NetworkUnavailable".to_owned(), "True".to_owned())
        ]
    );

    // Annotations through the status subresource (flannel's way); spec
    // changes there are dropped; an unchanged write keeps the version.
    let annotate = Patch::Strategic(json!({
        "metadata": {"annotations": {"flannel.alpha.coreos.com/backend-data": "null"}},
        "spec": {"podCIDR": "10.99.0.0/24"}
    }));
    let node = nodes
        .patch_status("node-a", &params, &annotate)
        .await
        .unwrap();
    let rv = node.metadata.resource_version.clone();
    assert_eq!(
        node.annotations()["flannel.alpha.coreos.com/backend-data"],
        "null"
    );
    assert_eq!(
        node.spec.unwrap().pod_cidr.as_deref(),
        Some("10.244.1.0/24")
    );
    let again = nodes
        .patch_status("node-a", &params, &annotate)
        .await
        .unwrap();
    assert_eq!(again.metadata.resource_version, rv);

    // A JSON merge patch replaces lists whole.
    nodes
        .patch_status("node-a", &params, &Patch::Merge(condition("False")))
        .await
        .unwrap();
    assert_eq!(
        types(&api),
        [("NetworkUnavailable".to_owned(), "False".to_owned())]
    );

    // Server-side apply is not supported: 415.
    let err = nodes
        .patch(
            "node-a",
            &PatchParams::apply("test"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Node"})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 415),
        "{err}"
    );
    let patch = api
        .requests()
        .into_iter()
        .find(|r| r.verb == "patch")
        .unwrap();
    assert_eq!(patch.resource, "nodes/status");
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&patch.body).unwrap(),
        condition("False")
    );
}

#[tokio::test]
async fn kube_rs_token_auth_401() {
    let api = FakeApiServer::start(FakeOptions {
        token: Some("t0ken".to_owned()),
        ..FakeOptions::default()
    })
    .unwrap();
    api.add_node_with_pod_cidrs("node-a", &["10.244.1.0/24"], &[]);
    let nodes: Api<Node> = Api::all(client(&api, "flanneld").await);
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let mut anonymous = config(&api, "flanneld").await;
    anonymous.auth_info = AuthInfo::default();
    let nodes: Api<Node> = Api::all(Client::try_from(anonymous).unwrap());
    let err = nodes.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 401 && s.reason == "Unauthorized"),
        "{err}"
    );

    let mut wrong = config(&api, "flanneld").await;
    wrong.auth_info.token = Some("wrong".to_owned().into());
    let nodes: Api<Node> = Api::all(Client::try_from(wrong).unwrap());
    let err = nodes.get("node-a").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 401),
        "{err}"
    );

    let users: Vec<String> = api.requests().into_iter().map(|r| r.user).collect();
    assert_eq!(users, [TOKEN_USER, "", ""]);
}

#[tokio::test]
async fn kube_rs_client_cert_auth_403() {
    let api = FakeApiServer::start(FakeOptions {
        client_certs: true,
        ..FakeOptions::default()
    })
    .unwrap();
    api.add_node_with_pod_cidrs("node-a", &["10.244.1.0/24"], &[]);
    let nodes: Api<Node> = Api::all(client(&api, "system:node:node-a").await);
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let nobody: Api<Node> = Api::all(client(&api, FORBIDDEN_USER).await);
    let err = nobody.list(&ListParams::default()).await.unwrap_err();
    match &err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
            assert_eq!(
                s.message,
                r#"nodes is forbidden: User "nobody" cannot list resource "nodes" in API group "" at the cluster scope"#
            );
        }
        other => panic!("expected 403, got {other}"),
    }

    // RBAC-style rules: the kube-flannel ClusterRole's.
    api.set_permissions("flannel", flannel_rules());
    let limited: Api<Node> = Api::all(client(&api, "flannel").await);
    limited.get("node-a").await.unwrap();
    let patch = Patch::Strategic(json!({"metadata": {"annotations": {"k": "v"}}}));
    limited
        .patch_status("node-a", &PatchParams::default(), &patch)
        .await
        .unwrap();
    let err = limited
        .patch("node-a", &PatchParams::default(), &patch)
        .await
        .unwrap_err();
    match &err {
        kube::Error::Api(s) => assert_eq!(
            (s.code, s.message.as_str()),
            (
                403,
                r#"nodes "node-a" is forbidden: User "flannel" cannot patch resource "nodes" in API group "" at the cluster scope"#
            )
        ),
        other => panic!("expected 403, got {other}"),
    }

    // Without a certificate (and no token configured): 401.
    let mut anonymous = config(&api, "flannel").await;
    anonymous.auth_info = AuthInfo::default();
    let err = Api::<Node>::all(Client::try_from(anonymous).unwrap())
        .get("node-a")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 401),
        "{err}"
    );

    let seen: Vec<(String, String, String, u16)> = api
        .requests()
        .into_iter()
        .map(|r| (r.user, r.verb, r.resource, r.status))
        .collect();
    let expect = |u: &str, v: &str, r: &str, s: u16| (u.to_owned(), v.to_owned(), r.to_owned(), s);
    assert_eq!(
        seen,
        [
            expect("system:node:node-a", "list", "nodes", 200),
            expect(FORBIDDEN_USER, "list", "nodes", 403),
            expect("flannel", "get", "nodes", 200),
            expect("flannel", "patch", "nodes/status", 200),
            expect("flannel", "patch", "nodes", 403),
            expect("", "get", "nodes", 401),
        ]
    );
}

#[tokio::test]
async fn plain_http_on_a_chosen_address() {
    let addr: std::net::SocketAddr = "127.0.0.2:0".parse().unwrap();
    let api = FakeApiServer::start_on(
        addr,
        FakeOptions {
            tls: false,
            ..FakeOptions::default()
        },
    )
    .unwrap();
    assert!(api.url().starts_with("http://127.0.0.2:"), "{}", api.url());
    api.add_node_with_pod_cidrs("node-a", &["10.244.1.0/24"], &[]);
    let nodes: Api<Node> = Api::all(client(&api, "admin").await);
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        api.requests()[0].user,
        flannel_testutil::kube::ANONYMOUS_USER
    );

    // TLS on a chosen address: the certificate names that address.
    let tls = FakeApiServer::start_on(addr, FakeOptions::default()).unwrap();
    tls.add_node_with_pod_cidrs("node-b", &["10.244.2.0/24"], &[]);
    let nodes: Api<Node> = Api::all(client(&tls, "admin").await);
    nodes.get("node-b").await.unwrap();
}

#[test]
fn hostile_objects_are_served_verbatim() {
    let api = FakeApiServer::start(FakeOptions {
        token: Some("s3cret".to_owned()),
        ..FakeOptions::default()
    })
    .unwrap();
    let garbage = json!({
        "metadata": {"name": "weird", "annotations": {"flannel.alpha.coreos.com/backend-data": 42}},
        "spec": {"podCIDR": "not-a-cidr", "podCIDRs": "also not a list"},
        "status": "nonsense"
    });
    api.apply_node(garbage.clone());
    let kubectl = Kubectl::new(&api, "admin");
    let served: Value =
        serde_json::from_str(&kubectl.ok(&["get", "--raw", "/api/v1/nodes/weird"])).unwrap();
    assert_eq!(served["spec"], garbage["spec"]);
    assert_eq!(served["status"], "nonsense");
    assert_eq!(
        served["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"],
        42
    );
    assert_eq!(served["metadata"]["resourceVersion"], "1");
    assert_eq!(served["kind"], "Node");
}

#[test]
fn kubectl_watches_nodes() {
    let api = FakeApiServer::start(FakeOptions {
        token: Some("s3cret".to_owned()),
        ..FakeOptions::default()
    })
    .unwrap();
    api.add_node_with_pod_cidrs("node-a", &["10.244.1.0/24"], &[]);
    let kubectl = Kubectl::new(&api, "admin");
    let mut child = kubectl
        .command(&["get", "nodes", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", kubectl.bin.display()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen: Vec<String> = Vec::new();
    // Reads kubectl's lines until one starts with `name` (10 s at most).
    let mut wait_for = |name: &str| -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen.iter().any(|l| l.starts_with(name)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => return Err(format!("no {name} line; output {seen:?}")),
            }
        }
        Ok(())
    };
    let result = wait_for("node-a").and_then(|()| {
        // kubectl has listed; let it start watching before the change.
        let deadline = Instant::now() + Duration::from_secs(10);
        while count(&api, "watch", "nodes") == 0 {
            if Instant::now() > deadline {
                return Err("kubectl started no watch".to_owned());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        api.add_node_with_pod_cidrs("node-b", &["10.244.2.0/24"], &[]);
        wait_for("node-b")
    });
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    if let Err(e) = result {
        panic!(
            "kubectl get --watch: {e}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn five_thousand_nodes_list_and_watch() {
    let api = FakeApiServer::start(FakeOptions::default()).unwrap();
    for i in 0..5000u32 {
        let cidr = format!("10.{}.{}.0/24", 64 + i / 256, i % 256);
        api.add_node_with_pod_cidrs(&format!("node-{i:04}"), &[&cidr], &[]);
    }
    let started = Instant::now();
    let nodes: Api<Node> = Api::all(client(&api, "admin").await);
    let mut events = spawn_watcher(nodes);
    let init = next_events(&mut events, 5002).await;
    assert_eq!(init.first().map(String::as_str), Some("init"));
    assert_eq!(init.last().map(String::as_str), Some("init-done"));
    // kube-rs lists in pages of 500.
    assert_eq!(count(&api, "list", "nodes"), 10);
    api.delete_node("node-1234");
    assert_eq!(next_event(&mut events).await, "delete node-1234");
    eprintln!("5,000 nodes listed and watched in {:?}", started.elapsed());
}

#[tokio::test]
async fn kube_rs_streaming_list_watcher() {
    let api = FakeApiServer::start(FakeOptions::default()).unwrap();
    api.add_node_with_pod_cidrs("node-a", &["10.244.1.0/24"], &[]);
    api.add_node_with_pod_cidrs("node-b", &["10.244.2.0/24"], &[]);
    let nodes: Api<Node> = Api::all(client(&api, "admin").await);
    let mut events = spawn_watcher_with(nodes, watcher::Config::default().streaming_lists());
    // The initial state comes over the watch itself, ended by the
    // `k8s.io/initial-events-end` bookmark; no list request.
    assert_eq!(
        next_events(&mut events, 4).await,
        [
            "init",
            "init-apply node-a",
            "init-apply node-b",
            "init-done"
        ]
    );
    api.delete_node("node-a");
    assert_eq!(next_event(&mut events).await, "delete node-a");
    assert_eq!(count(&api, "list", "nodes"), 0);
    let watch = api
        .requests()
        .into_iter()
        .find(|r| r.verb == "watch")
        .unwrap();
    assert!(
        watch.query.contains("sendInitialEvents=true"),
        "{}",
        watch.query
    );
}
