//! Kubernetes mode (`--kube-subnet-mgr`, feature `kube`): the manager's
//! options from the flags and environment, and its readiness and metrics.

use crate::cli::Options;
use crate::health::{DatastoreView, Health};
use flannel_subnet::kube::{KubeOptions, KubeStatus};
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The manager's options: the kube flags, plus `NODE_NAME`, `POD_NAME`,
/// `POD_NAMESPACE`, `EVENT_QUEUE_DEPTH`, `CONT_WHEN_CACHE_NOT_READY` and
/// `KUBERNETES_SERVICE_HOST/PORT` read through `env`.
pub fn options(opts: &Options, env: impl Fn(&str) -> Option<String>) -> KubeOptions {
    KubeOptions {
        api_url: Some(opts.kube_api_url.clone()).filter(|s| !s.is_empty()),
        kubeconfig: Some(opts.kubeconfig_file.clone())
            .filter(|s| !s.is_empty())
            .map(Into::into),
        annotation_prefix: opts.kube_annotation_prefix.clone(),
        net_config_path: opts.net_config_path.clone(),
        set_node_network_unavailable: opts.set_node_network_unavailable,
        ..KubeOptions::default()
    }
    .with_env(env)
}

/// Readiness and metrics of the Kubernetes manager.
pub struct KubeView(pub Arc<KubeStatus>);

impl DatastoreView for KubeView {
    fn readiness(&self) -> Result<(), String> {
        let s = &self.0;
        if !s.annotations_patched.load(Ordering::Relaxed) {
            return Err("the node's flannel annotations are not written yet".into());
        }
        if !s.condition_set.load(Ordering::Relaxed) {
            return Err("the node's NetworkUnavailable condition is not cleared yet".into());
        }
        Ok(())
    }
}

/// Registers the Kubernetes manager's readiness and its metric families
/// with `health`.
pub fn attach(health: &Health, status: Arc<KubeStatus>) {
    let metrics = KubeView(status.clone());
    health.add_metrics_source(Arc::new(move |out: &mut String| {
        out.push_str(&metrics.metrics())
    }));
    health.set_datastore(Arc::new(KubeView(status)));
}

impl KubeView {
    /// The `flannel_kube_*` families, in the exposition format.
    pub fn metrics(&self) -> String {
        let s = &self.0;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let flag = |a: &std::sync::atomic::AtomicBool| u8::from(a.load(Ordering::Relaxed));
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        family(
            "flannel_kube_watch_in_sync",
            "gauge",
            "1 while the Node watch has listed the cluster and is connected.",
            flag(&s.in_sync).to_string(),
        );
        family(
            "flannel_kube_annotations_written",
            "gauge",
            "1 once this node's flannel annotations describe its lease.",
            flag(&s.annotations_patched).to_string(),
        );
        family(
            "flannel_kube_network_unavailable_cleared",
            "gauge",
            "1 once this node's NetworkUnavailable condition is False (or setting it is turned off).",
            flag(&s.condition_set).to_string(),
        );
        family(
            "flannel_kube_nodes",
            "gauge",
            "Nodes known to the Node watch.",
            get(&s.nodes).to_string(),
        );
        family(
            "flannel_kube_managed_nodes",
            "gauge",
            "Nodes with a flannel lease (kube-subnet-manager annotation true and convertible).",
            get(&s.managed_nodes).to_string(),
        );
        family(
            "flannel_kube_node_lists_total",
            "counter",
            "Complete Node lists: the first one and every re-list after the watch expired.",
            get(&s.lists).to_string(),
        );
        family(
            "flannel_kube_skipped_nodes_total",
            "counter",
            "Nodes skipped because their flannel annotations or podCIDRs could not be read.",
            get(&s.skipped_nodes).to_string(),
        );
        family(
            "flannel_kube_watch_errors_total",
            "counter",
            "Node watch errors (API server unreachable, watch expired).",
            get(&s.watch_errors).to_string(),
        );
        family(
            "flannel_kube_request_errors_total",
            "counter",
            "Failed API requests while reading or patching this node (retried).",
            get(&s.request_errors).to_string(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;

    #[test]
    fn readiness_waits_for_the_annotations_then_the_condition() {
        let status = Arc::new(KubeStatus::default());
        let view = KubeView(status.clone());
        assert_eq!(
            view.readiness().unwrap_err(),
            "the node's flannel annotations are not written yet"
        );
        status.annotations_patched.store(true, Ordering::Relaxed);
        assert_eq!(
            view.readiness().unwrap_err(),
            "the node's NetworkUnavailable condition is not cleared yet"
        );
        status.condition_set.store(true, Ordering::Relaxed);
        assert_eq!(view.readiness(), Ok(()));
        status.nodes.store(5000, Ordering::Relaxed);
        let health = Health::new();
        attach(&health, status.clone());
        let m = crate::metrics::render(&health);
        assert!(
            m.contains("# TYPE flannel_kube_nodes gauge\nflannel_kube_nodes 5000\n"),
            "{m}"
        );
        assert!(m.contains("flannel_kube_annotations_written 1\n"), "{m}");
        assert!(m.contains("flannel_kube_watch_in_sync 0\n"), "{m}");
    }

    #[test]
    fn options_from_flags_and_environment() {
        let opts = Options {
            kube_api_url: "https://10.0.0.1:6443".into(),
            kubeconfig_file: "/etc/kubeconfig".into(),
            kube_annotation_prefix: "example.com/x".into(),
            set_node_network_unavailable: false,
            ..Options::default()
        };
        let o = options(&opts, |n| match n {
            "NODE_NAME" => Some("n1".into()),
            "EVENT_QUEUE_DEPTH" => Some("10".into()),
            "CONT_WHEN_CACHE_NOT_READY" => Some("true".into()),
            _ => None,
        });
        assert_eq!(o.api_url.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(
            o.kubeconfig.as_deref(),
            Some(std::path::Path::new("/etc/kubeconfig"))
        );
        assert_eq!(o.annotation_prefix, "example.com/x");
        assert!(!o.set_node_network_unavailable);
        assert_eq!(o.node_name.as_deref(), Some("n1"));
        assert_eq!(o.event_queue_depth.as_deref(), Some("10"));
        assert!(o.cont_when_cache_not_ready);
        let empty = options(&Options::default(), |_| None);
        assert_eq!(
            (empty.api_url, empty.kubeconfig, empty.node_name),
            (None, None, None)
        );
        assert_eq!(
            empty.net_config_path,
            std::path::Path::new("/etc/kube-flannel/net-conf.json")
        );
    }
}
