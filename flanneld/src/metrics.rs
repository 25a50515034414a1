//! `/metrics`: the Prometheus text exposition format 0.0.4, written by hand.
//!
//! Every family has `HELP` and `TYPE` lines; samples carry no labels except
//! `flannel_build_info{version="..."}` and the backend's own families (the
//! udp datapath's `direction`, `reason` and `mode`, see [`udp_families`]),
//! appended last. A family without a value (the lease expiry of a
//! reservation, the subnet count before the config is known) is announced
//! without a sample.

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
    for source in health.metrics_sources() {
        source(&mut out.0);
    }
    out.0
}

/// The wireguard backend's families: the implementation in use (and
/// whether it was a fallback from kernel WireGuard), per device the peers
/// and the recreations after a deletion, and per peer the last handshake
/// and byte counters.
#[cfg(feature = "wireguard")]
pub fn render_wireguard(state: &flannel_backend_wireguard::WgState, out: &mut String) {
    let mut e = Exposition(std::mem::take(out));
    if !state.implementation.is_empty() {
        let _ = writeln!(
            e.0,
            "# HELP flannel_wireguard_implementation The WireGuard implementation in use (kernel or userspace).\n\
             # TYPE flannel_wireguard_implementation gauge\n\
             flannel_wireguard_implementation{{implementation=\"{}\"}} 1",
            state.implementation
        );
        e.gauge(
            "flannel_wireguard_kernel_fallback",
            "1 when the userspace implementation runs because the kernel refused the wireguard link type.",
            Some(&u8::from(state.fallback_reason.is_some())),
        );
    }
    let mut peers = String::new();
    let mut handshakes = String::new();
    let mut rx = String::new();
    let mut tx = String::new();
    let mut recreated = String::new();
    for (dev, st) in &state.devices {
        let _ = writeln!(
            peers,
            "flannel_wireguard_peers{{device=\"{}\"}} {}",
            label_value(dev),
            st.peers.len()
        );
        let times = state
            .recreated
            .iter()
            .find(|(n, _)| n == dev)
            .map_or(0, |(_, k)| *k);
        let _ = writeln!(
            recreated,
            "flannel_wireguard_device_recreated_total{{device=\"{}\"}} {times}",
            label_value(dev)
        );
        for p in &st.peers {
            let labels = format!(
                "device=\"{}\",public_key=\"{}\",endpoint=\"{}\"",
                label_value(dev),
                p.config.public_key.to_base64(),
                p.config.endpoint.map(|e| e.to_string()).unwrap_or_default()
            );
            let last = p
                .last_handshake
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let _ = writeln!(
                handshakes,
                "flannel_wireguard_peer_last_handshake_timestamp_seconds{{{labels}}} {last}"
            );
            let _ = writeln!(
                rx,
                "flannel_wireguard_peer_receive_bytes_total{{{labels}}} {}",
                p.rx_bytes
            );
            let _ = writeln!(
                tx,
                "flannel_wireguard_peer_transmit_bytes_total{{{labels}}} {}",
                p.tx_bytes
            );
        }
    }
    for (name, kind, help, body) in [
        (
            "flannel_wireguard_peers",
            "gauge",
            "WireGuard peers configured per device.",
            peers,
        ),
        (
            "flannel_wireguard_peer_last_handshake_timestamp_seconds",
            "gauge",
            "Unix time of the peer's last completed handshake (0: none yet).",
            handshakes,
        ),
        (
            "flannel_wireguard_peer_receive_bytes_total",
            "counter",
            "Bytes received from the peer.",
            rx,
        ),
        (
            "flannel_wireguard_peer_transmit_bytes_total",
            "counter",
            "Bytes sent to the peer.",
            tx,
        ),
        (
            "flannel_wireguard_device_recreated_total",
            "counter",
            "Times the device was found deleted and recreated.",
            recreated,
        ),
    ] {
        let _ = writeln!(e.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        e.0.push_str(&body);
    }
    *out = e.0;
}

/// The udp datapath's families: packets and bytes per direction (`tx`:
/// TUN to wire, `rx`: wire to TUN), drops per reason, ICMP answers written
/// back into the TUN, run-time fallbacks, recreations of a deleted TUN, and
/// the offload mode in use (a gauge per mode, 1 for the one in use).
/// Nothing while no engine runs.
#[cfg(feature = "udp")]
pub fn udp_families(stats: Option<flannel_backend_udp::DatapathStats>) -> String {
    let Some(s) = stats else {
        return String::new();
    };
    let c = s.counters;
    let mut out = String::with_capacity(2048);
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    family(
        "flannel_udp_packets_total",
        "counter",
        "Inner packets carried by the udp datapath (tx: TUN to wire, rx: wire to TUN).",
        &[
            ("{direction=\"tx\"}", c.tx_packets),
            ("{direction=\"rx\"}", c.rx_packets),
        ],
    );
    family(
        "flannel_udp_bytes_total",
        "counter",
        "Bytes of the inner packets carried by the udp datapath.",
        &[
            ("{direction=\"tx\"}", c.tx_bytes),
            ("{direction=\"rx\"}", c.rx_bytes),
        ],
    );
    family(
        "flannel_udp_drops_total",
        "counter",
        "Packets the udp datapath dropped, by reason (no_peer: no lease covers the destination and no ICMP answer was due; ttl: TTL reached 0; malformed: not an IPv4 packet; send_error, tun_error: a failed send or TUN write).",
        &[
            ("{reason=\"no_peer\"}", c.drop_no_peer),
            ("{reason=\"ttl\"}", c.drop_ttl),
            ("{reason=\"malformed\"}", c.drop_malformed),
            ("{reason=\"codec\"}", c.drop_codec),
            ("{reason=\"send_error\"}", c.drop_send_error),
            ("{reason=\"tun_error\"}", c.drop_tun_error),
        ],
    );
    family(
        "flannel_udp_icmp_replies_total",
        "counter",
        "ICMP Destination Net Unreachable answers written back into the TUN for packets no lease covers.",
        &[("", c.replies)],
    );
    family(
        "flannel_udp_fallbacks_total",
        "counter",
        "Switches of the udp datapath from offload (GSO) to plain batching.",
        &[("", c.fallback_events)],
    );
    family(
        "flannel_udp_tun_recreated_total",
        "counter",
        "Times flannel0 was found deleted and recreated, with a restart of the udp datapath.",
        &[("", s.tun_recreated)],
    );
    family(
        "flannel_udp_offload_mode",
        "gauge",
        "The udp datapath's transmit mode: 1 for the mode in use (gso: TUN offload with UDP GSO/GRO; batch: plain batching).",
        &[
            ("{mode=\"gso\"}", u64::from(s.mode == "gso")),
            ("{mode=\"batch\"}", u64::from(s.mode == "batch")),
        ],
    );
    out
}

#[cfg(all(test, feature = "udp"))]
mod tests {
    use super::*;

    #[test]
    fn udp_families_render_counters_and_mode() {
        assert_eq!(udp_families(None), "");
        let mut stats = flannel_backend_udp::DatapathStats {
            counters: Default::default(),
            mode: "batch",
            coalescing: false,
            tun_recreated: 0,
        };
        stats.counters.tx_packets = 7;
        stats.counters.rx_bytes = 1500;
        stats.counters.drop_ttl = 2;
        stats.tun_recreated = 1;
        let text = udp_families(Some(stats));
        for line in [
            "# TYPE flannel_udp_packets_total counter",
            "flannel_udp_packets_total{direction=\"tx\"} 7",
            "flannel_udp_bytes_total{direction=\"rx\"} 1500",
            "flannel_udp_drops_total{reason=\"ttl\"} 2",
            "flannel_udp_drops_total{reason=\"no_peer\"} 0",
            "flannel_udp_offload_mode{mode=\"gso\"} 0",
            "flannel_udp_offload_mode{mode=\"batch\"} 1",
            "# TYPE flannel_udp_tun_recreated_total counter",
            "flannel_udp_tun_recreated_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }
}
