//! [`SlimNode`]: the part of a Kubernetes Node the manager reads, parsed
//! straight from the API server's JSON.
//!
//! A Node as the API server sends it carries its status (conditions,
//! addresses, the list of every image on the node), labels and
//! `managedFields`: kilobytes of which the manager reads nothing. Decoding
//! into k8s-openapi's `Node` builds all of it for every watch event and for
//! every Node of a list page (500 at a time); decoding into [`SlimNode`]
//! skips those fields without building them, so only the name, the
//! resourceVersion, the annotations and the pod CIDRs are ever allocated.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

/// A Node reduced to what the Kubernetes subnet manager reads: in
/// `metadata` only the name, the resourceVersion and the annotations are
/// kept (the watch needs the resourceVersion to resume); from `spec` only
/// `podCIDR` and `podCIDRs`. Usable as a kube-rs resource (`Api<SlimNode>`
/// lists, watches, gets and patches `nodes` like `Api<Node>`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlimNode {
    /// Name, resourceVersion and annotations; the other fields stay empty.
    pub metadata: ObjectMeta,
    /// `spec.podCIDR`.
    pub pod_cidr: Option<String>,
    /// `spec.podCIDRs`.
    pub pod_cidrs: Vec<String>,
}

impl SlimNode {
    /// The node's name (empty when it has none).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }
}

impl From<Node> for SlimNode {
    fn from(node: Node) -> Self {
        let spec = node.spec.unwrap_or_default();
        SlimNode {
            metadata: ObjectMeta {
                name: node.metadata.name,
                resource_version: node.metadata.resource_version,
                annotations: node.metadata.annotations,
                ..ObjectMeta::default()
            },
            pod_cidr: spec.pod_cidr,
            pod_cidrs: spec.pod_cidrs.unwrap_or_default(),
        }
    }
}

/// The wire shape read: serde skips every other field of the object
/// without building it.
#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    metadata: Option<WireMeta>,
    #[serde(default)]
    spec: Option<WireSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct WireSpec {
    #[serde(default, rename = "podCIDR")]
    pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDRs")]
    pod_cidrs: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for SlimNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(d)?;
        let meta = wire.metadata;
        let spec = wire.spec;
        let (name, resource_version, annotations) = match meta {
            Some(m) => (m.name, m.resource_version, m.annotations),
            None => (None, None, None),
        };
        let (pod_cidr, pod_cidrs) = match spec {
            Some(s) => (s.pod_cidr, s.pod_cidrs.unwrap_or_default()),
            None => (None, Vec::new()),
        };
        Ok(SlimNode {
            metadata: ObjectMeta {
                name,
                resource_version,
                annotations,
                ..ObjectMeta::default()
            },
            pod_cidr,
            pod_cidrs,
        })
    }
}

impl k8s_openapi::Resource for SlimNode {
    const API_VERSION: &'static str = <Node as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Node as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Node as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Node as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Node as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <Node as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for SlimNode {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_what_the_manager_needs() {
        let json = r#"{
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": "n1", "resourceVersion": "42", "uid": "u-1",
                "labels": {"kubernetes.io/hostname": "n1"},
                "annotations": {"flannel.alpha.coreos.com/public-ip": "192.168.0.1"},
                "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]
            },
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00::/64"],
                     "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "images": [{"names": ["a"], "sizeBytes": 1}]}
        }"#;
        let n: SlimNode = serde_json::from_str(json).unwrap();
        assert_eq!(n.name(), "n1");
        assert_eq!(n.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(n.metadata.uid, None, "nothing else is kept");
        assert_eq!(n.metadata.labels, None);
        assert_eq!(n.metadata.managed_fields, None);
        assert_eq!(
            n.metadata.annotations.as_ref().unwrap()["flannel.alpha.coreos.com/public-ip"],
            "192.168.0.1"
        );
        assert_eq!(n.pod_cidr.as_deref(), Some("10.244.1.0/24"));
        assert_eq!(n.pod_cidrs, ["10.244.1.0/24", "fd00::/64"]);
        // The same as going through k8s-openapi's Node.
        let full: Node = serde_json::from_str(json).unwrap();
        assert_eq!(SlimNode::from(full), n);
        // Missing and null parts are empty.
        let n: SlimNode = serde_json::from_str(
            r#"{"metadata":{"name":"x","annotations":null},"spec":{"podCIDRs":null}}"#,
        )
        .unwrap();
        assert_eq!(
            (n.name(), n.pod_cidr.as_deref(), n.pod_cidrs.len()),
            ("x", None, 0)
        );
        let n: SlimNode = serde_json::from_str("{}").unwrap();
        assert_eq!(n, SlimNode::default());
    }
}
