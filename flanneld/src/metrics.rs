//! `/metrics`: the Prometheus text exposition format 0.0.4, written by hand.
//!
//! Every family has `HELP` and `TYPE` lines; samples carry no labels except
//! `flannel_build_info{version="..."}`. A family without a value (the lease
//! expiry of a reservation, the subnet count before the config is known) is
//! announced without a sample.

use crate::health::Health;
use flannel_core::config::NetConfig;
use flannel_core::ip::Subnets;
use std::fmt::{Display, Write};
use std::time::UNIX_EPOCH;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How many subnets of `SubnetLen` lie between `SubnetMin` and `SubnetMax`
/// (IPv4 when enabled, else IPv6), defaults filled in as flannel does; `None`
/// for an invalid config.
pub fn subnet_capacity(config: &NetConfig) -> Option<u128> {
    let mut cfg = config.clone();
    cfg.check().ok()?;
    if cfg.enable_ipv4 {
        let len = u8::try_from(cfg.subnet_len).ok()?;
        Some(Subnets::between(cfg.subnet_min?, cfg.subnet_max?, len).remaining())
    } else if cfg.enable_ipv6 {
        let len = u8::try_from(cfg.ipv6_subnet_len).ok()?;
        Some(Subnets::between(cfg.ipv6_subnet_min?, cfg.ipv6_subnet_max?, len).remaining())
    } else {
        None
    }
}

struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str, value: Option<&dyn Display>) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        if let Some(v) = value {
            let _ = writeln!(self.0, "{name} {v}");
        }
    }

    fn gauge(&mut self, name: &str, help: &str, value: Option<&dyn Display>) {
        self.family(name, "gauge", help, value);
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help, Some(&value));
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn label_value(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// The exposition of `health`'s current state.
pub fn render(health: &Health) -> String {
    let s = health.snapshot();
    let c = s.counters;
    let mut out = Exposition(String::with_capacity(2048));
    let _ = writeln!(
        out.0,
        "# HELP flannel_build_info flanneld build information.\n\
         # TYPE flannel_build_info gauge\n\
         flannel_build_info{{version=\"{}\"}} 1",
        label_value(env!("CARGO_PKG_VERSION"))
    );
    out.gauge(
        "flannel_ready",
        "1 when /readyz answers 200 (lease held, subnet file written, datastore in sync, rules and routes programmed).",
        Some(&u8::from(s.ready)),
    );
    out.gauge(
        "flannel_healthy",
        "1 when /healthz answers 200 (no loop is stalled).",
        Some(&u8::from(s.live)),
    );
    out.gauge(
        "flannel_leases_known",
        "Remote subnet leases currently known.",
        Some(&c.known_leases),
    );
    let expiry = s
        .lease
        .as_ref()
        .and_then(|l| l.expiration)
        .and_then(|e| e.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64());
    out.gauge(
        "flannel_lease_expiry_timestamp_seconds",
        "Unix time at which this node's lease expires (absent for a reservation).",
        expiry.as_ref().map(|v| v as &dyn Display),
    );
    out.counter(
        "flannel_datastore_reconnects_total",
        "Lease watch errors (datastore outages and reconnects).",
        c.watch_errors,
    );
    out.counter(
        "flannel_lease_events_total",
        "Lease events applied to the datapath.",
        c.events,
    );
    out.counter(
        "flannel_reconcile_errors_total",
        "Datapath errors while applying lease events or resyncing.",
        c.reconcile_errors,
    );
    out.counter(
        "flannel_resyncs_total",
        "Full datapath resyncs run.",
        c.resyncs,
    );
    let resync_secs = c.last_resync_micros as f64 / 1e6;
    out.gauge(
        "flannel_last_resync_duration_seconds",
        "Duration of the last full datapath resync.",
        Some(&resync_secs),
    );
    let failures = c.consecutive_failures as f64;
    out.gauge(
        "flannel_datapath_consecutive_failures",
        "Failed resyncs or event batches since the datapath was last in step.",
        Some(&failures),
    );
    let retry_secs = c.retry_delay_millis as f64 / 1e3;
    out.gauge(
        "flannel_datapath_retry_delay_seconds",
        "Delay before the next retry of a failed resync (0 when none is due).",
        Some(&retry_secs),
    );
    out.counter(
        "flannel_lease_renewals_total",
        "Successful renewals of this node's lease.",
        c.renewals,
    );
    out.counter(
        "flannel_lease_reacquisitions_total",
        "Re-acquisitions of this node's lease after it disappeared from the store.",
        c.reacquisitions,
    );
    out.gauge(
        "flannel_subnets_total",
        "Subnets the network can hand out (SubnetMin to SubnetMax of SubnetLen).",
        s.subnets_total.as_ref().map(|v| v as &dyn Display),
    );
    let used = c.known_leases + u64::from(s.lease.is_some());
    out.gauge(
        "flannel_subnets_used",
        "Subnets leased: the remote leases known plus this node's.",
        Some(&used),
    );
    out.counter(
        "flannel_rule_rewrites_total",
        "Packet-filter resyncs that found this network's masquerade or forward rules drifted and rewrote them (other networks' rules in the shared chains are not counted).",
        s.rule_rewrites,
    );
    out.counter(
        "flannel_rule_resync_failures_total",
        "Packet-filter resyncs that failed.",
        s.rule_resync_failures,
    );
    out.0.push_str(&health.datastore_metrics());
    out.0
}
