//! `dist/kube-flannel.yml`: every object decodes as its Kubernetes type
//! (and re-encodes to the same JSON, so no field is misspelt or unknown),
//! the ClusterRole grants exactly what flanneld uses, the ConfigMap's
//! `net-conf.json` is a valid flannel network config and `cni-conf.json` a
//! flannel conflist, and the DaemonSet runs flanneld as upstream's does.

#![cfg(feature = "kube")]

use flannel_core::config::NetConfig;
use flannel_testutil::kube::FLANNEL_RBAC;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;

const MANIFEST: &str = include_str!("../../dist/kube-flannel.yml");

/// The image every container runs: ours, tagged with the workspace version.
fn image() -> String {
    format!("ghcr.io/flannel-rs/flanneld:{}", env!("CARGO_PKG_VERSION"))
}

fn documents() -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(MANIFEST)
        .expect("dist/kube-flannel.yml is valid YAML")
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Decodes `doc` as `T` and checks it encodes back to the same JSON.
fn decode<T: DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", doc["kind"]));
    let again = serde_json::to_value(&typed).unwrap();
    if let Some(path) = first_difference(doc, &again, String::new()) {
        panic!(
            "{} {} changes at {path} when re-encoded as its type (an unknown or misspelt field?)",
            doc["kind"], doc["metadata"]["name"]
        );
    }
    typed
}

/// The path of the first place where `a` and `b` differ.
fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.keys()
                .chain(y.keys())
                .find_map(|k| match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => first_difference(v, w, format!("{path}.{k}")),
                    _ => Some(format!("{path}.{k}")),
                })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{path}[{i}]"))),
        _ => (a != b).then_some(path),
    }
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut found = docs.iter().filter(|d| d["kind"] == kind);
    let doc = found
        .next()
        .unwrap_or_else(|| panic!("no {kind} in the manifest"));
    assert!(found.next().is_none(), "more than one {kind}");
    doc
}

#[test]
fn every_object_decodes_as_its_kubernetes_type() {
    let docs = documents();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ClusterRole",
            "ClusterRoleBinding",
            "ServiceAccount",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    let namespace: Namespace = decode(find(&docs, "Namespace"));
    assert_eq!(namespace.metadata.name.as_deref(), Some("kube-flannel"));
    let _: ClusterRole = decode(find(&docs, "ClusterRole"));
    let _: ClusterRoleBinding = decode(find(&docs, "ClusterRoleBinding"));
    let account: ServiceAccount = decode(find(&docs, "ServiceAccount"));
    assert_eq!(account.metadata.name.as_deref(), Some("flannel"));
    assert_eq!(account.metadata.namespace.as_deref(), Some("kube-flannel"));
    let _: ConfigMap = decode(find(&docs, "ConfigMap"));
    let _: DaemonSet = decode(find(&docs, "DaemonSet"));
}

#[test]
fn cluster_role_grants_exactly_what_flanneld_uses() {
    let docs = documents();
    let role: ClusterRole = decode(find(&docs, "ClusterRole"));
    assert_eq!(role.metadata.name.as_deref(), Some("flannel"));
    let mut granted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for rule in role.rules.unwrap() {
        assert_eq!(
            rule.api_groups,
            Some(vec![String::new()]),
            "core group only"
        );
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for resource in rule.resources.unwrap() {
            granted
                .entry(resource)
                .or_default()
                .extend(rule.verbs.iter().cloned());
        }
    }
    let expected: BTreeMap<String, Vec<String>> = FLANNEL_RBAC
        .iter()
        .map(|(r, verbs)| {
            (
                (*r).to_owned(),
                verbs.iter().map(|v| (*v).to_owned()).collect(),
            )
        })
        .collect();
    assert_eq!(granted, expected);

    let binding: ClusterRoleBinding = decode(find(&docs, "ClusterRoleBinding"));
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, "flannel");
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (
            subjects[0].kind.as_str(),
            subjects[0].name.as_str(),
            subjects[0].namespace.as_deref()
        ),
        ("ServiceAccount", "flannel", Some("kube-flannel"))
    );
}

#[test]
fn config_map_holds_a_net_conf_and_a_flannel_conflist() {
    let docs = documents();
    let config: ConfigMap = decode(find(&docs, "ConfigMap"));
    assert_eq!(config.metadata.name.as_deref(), Some("kube-flannel-cfg"));
    assert_eq!(config.metadata.namespace.as_deref(), Some("kube-flannel"));
    let data = config.data.unwrap();

    let net = NetConfig::parse(&data["net-conf.json"]).expect("net-conf.json parses");
    assert_eq!(
        net.network.map(|n| n.to_string()).as_deref(),
        Some("10.244.0.0/16")
    );
    assert_eq!(net.backend_type, "vxlan");
    assert!(!net.enable_nftables);

    let cni: Value = serde_json::from_str(&data["cni-conf.json"]).expect("cni-conf.json is JSON");
    assert_eq!(cni["name"], "cbr0");
    assert!(cni["cniVersion"].is_string());
    let plugins = cni["plugins"].as_array().unwrap();
    let types: Vec<&str> = plugins
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["flannel", "portmap"]);
    assert_eq!(plugins[0]["delegate"]["hairpinMode"], true);
    assert_eq!(plugins[0]["delegate"]["isDefaultGateway"], true);
    assert_eq!(plugins[1]["capabilities"]["portMappings"], true);
}

fn mounts(container: &Container) -> BTreeMap<String, String> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.clone(), m.name.clone()))
        .collect()
}

fn command_line(container: &Container) -> Vec<String> {
    container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .cloned()
        .collect()
}

#[test]
fn daemon_set_runs_flanneld_like_upstream() {
    let docs = documents();
    let ds: DaemonSet = decode(find(&docs, "DaemonSet"));
    assert_eq!(ds.metadata.name.as_deref(), Some("kube-flannel-ds"));
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-flannel"));
    let spec = ds.spec.unwrap();
    let labels = spec.template.metadata.unwrap().labels.unwrap();
    for (key, value) in spec.selector.match_labels.unwrap() {
        assert_eq!(
            labels.get(&key),
            Some(&value),
            "the selector matches the pods"
        );
    }
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("flannel"));
    let tolerations = pod.tolerations.unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.effect.as_deref() == Some("NoSchedule")
                && t.key.is_none()),
        "tolerates every NoSchedule taint"
    );

    // Volumes by name → where they come from.
    let volumes: BTreeMap<String, String> = pod
        .volumes
        .unwrap()
        .into_iter()
        .map(|v| {
            let source = match (v.host_path, v.config_map) {
                (Some(h), None) => format!("host:{}", h.path),
                (None, Some(c)) => format!("configmap:{}", c.name),
                _ => panic!("volume {} is neither a hostPath nor a ConfigMap", v.name),
            };
            (v.name, source)
        })
        .collect();
    let sources = |c: &Container| -> BTreeMap<String, String> {
        mounts(c)
            .into_iter()
            .map(|(path, name)| {
                let source = volumes
                    .get(&name)
                    .unwrap_or_else(|| panic!("{} mounts unknown volume {name}", c.name));
                (path, source.clone())
            })
            .collect()
    };
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };

    let init = pod.init_containers.unwrap();
    let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["install-cni-plugin", "install-cni"]);
    assert_eq!(
        command_line(&init[0]),
        ["cp", "-f", "/flannel", "/opt/cni/bin/flannel"]
    );
    assert_eq!(
        sources(&init[0]),
        map(&[("/opt/cni/bin", "host:/opt/cni/bin")])
    );
    assert_eq!(
        command_line(&init[1]),
        [
            "cp",
            "-f",
            "/etc/kube-flannel/cni-conf.json",
            "/etc/cni/net.d/10-flannel.conflist"
        ]
    );
    assert_eq!(
        sources(&init[1]),
        map(&[
            ("/etc/cni/net.d", "host:/etc/cni/net.d"),
            ("/etc/kube-flannel/", "configmap:kube-flannel-cfg")
        ])
    );

    let containers = pod.containers;
    assert_eq!(containers.len(), 1);
    let flanneld = &containers[0];
    assert_eq!(flanneld.name, "kube-flannel");
    assert_eq!(
        command_line(flanneld),
        [
            "/usr/bin/flanneld",
            "--ip-masq",
            "--kube-subnet-mgr",
            "--healthz-port=8081"
        ]
    );
    let env: BTreeMap<String, String> = flanneld
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = match (&e.value, &e.value_from) {
                (Some(v), None) => v.clone(),
                (None, Some(from)) => format!(
                    "fieldRef:{}",
                    from.field_ref.as_ref().expect("a fieldRef").field_path
                ),
                _ => panic!("env {} has neither value nor valueFrom", e.name),
            };
            (e.name.clone(), value)
        })
        .collect();
    assert_eq!(
        env,
        map(&[
            ("POD_NAME", "fieldRef:metadata.name"),
            ("POD_NAMESPACE", "fieldRef:metadata.namespace"),
            ("EVENT_QUEUE_DEPTH", "5000"),
            ("CONT_WHEN_CACHE_NOT_READY", "false"),
        ])
    );
    let security = flanneld.security_context.as_ref().unwrap();
    assert_eq!(security.privileged, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().add,
        Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()])
    );
    assert_eq!(
        sources(flanneld),
        map(&[
            ("/run/flannel", "host:/run/flannel"),
            ("/etc/kube-flannel/", "configmap:kube-flannel-cfg"),
            ("/run/xtables.lock", "host:/run/xtables.lock"),
        ])
    );
    for probe in [&flanneld.liveness_probe, &flanneld.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8081),
            "probes use --healthz-port"
        );
    }

    for container in init.iter().chain(&containers) {
        assert_eq!(
            container.image.as_deref(),
            Some(image().as_str()),
            "{}",
            container.name
        );
    }
}
