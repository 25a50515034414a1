//! The fake Kubernetes API server (`flannel_testutil::kube`) against real
//! clients: Debian's kubectl and kube-rs.

#![cfg(feature = "kube")]

use flannel_testutil::kube::{FakeApiServer, FakeOptions, TOKEN_USER};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

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
        let out = Command::new(&self.bin)
            .arg(format!(
                "--kubeconfig={}",
                self.path().join("kubeconfig").display()
            ))
            // A private discovery cache: ports are reused between tests.
            .arg(format!(
                "--cache-dir={}",
                self.path().join("cache").display()
            ))
            .arg("--request-timeout=10s")
            .args(args)
            .env("HOME", self.path())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.bin.display()));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
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
