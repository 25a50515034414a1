//! Wiring of the traffic rules ([`flannel_traffic`]) into the daemon:
//! the typed config from the command line, the setup, the keeping tasks,
//! and the coupling to [`Health`] (readiness gate [`RULES_GATE`], liveness
//! loop `rule resync`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use flannel_core::config::NetConfig;
use flannel_core::lease::Lease;
use flannel_core::subnet_env::EnvFile;
use flannel_netlink::Netlink;
use flannel_traffic::{Previous, Rules, RulesPlan, TrafficConfig, resync_period};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::cli::Options;
use crate::health::Health;

/// The readiness gate for the traffic rules.
pub const RULES_GATE: &str = "rules programmed";

/// The traffic-rule switches of the command line and the net-conf.
pub fn traffic_config(opts: &Options, config: &NetConfig) -> TrafficConfig {
    TrafficConfig {
        ip_masq: opts.ip_masq,
        forward_rules: opts.iptables_forward_rules,
        blackhole_route: opts.ip_blackhole_route,
        resync_period: resync_period(opts.iptables_resync),
        fully_random_disable: opts.ip_masq_fully_random_disable,
        nftables: config.enable_nftables,
    }
}

/// The running rules: the handle (for [`Rules::update`] on lease changes
/// and for metrics) and the keeping tasks, which end when `stop` turns
/// true.
#[derive(Debug)]
pub struct TrafficRules {
    /// The rules handle.
    pub rules: Arc<Rules>,
    /// The resync and blackhole tasks.
    pub tasks: Vec<JoinHandle<()>>,
}

/// The daemon's whole rules step: the setup (errors are fatal), then the
/// resync and blackhole tasks. `previous` is subnet.env as read before this
/// run rewrites it.
pub async fn start(
    opts: &Options,
    config: &NetConfig,
    lease: &Lease,
    previous: &EnvFile,
    netlink: &Netlink,
    stop: &watch::Receiver<bool>,
    health: &Arc<Health>,
) -> Result<TrafficRules> {
    let plan = RulesPlan::new(
        &traffic_config(opts, config),
        config,
        lease,
        Previous::from_env(previous),
    );
    debug!(
        "traffic rules: masq {}, forward {}, blackhole {}, {}, resync every {} s",
        plan.masq,
        plan.forward,
        plan.blackhole,
        if plan.nftables {
            "nftables"
        } else {
            "iptables"
        },
        plan.period.as_secs()
    );
    let period = plan.period;
    let gate = health.clone();
    let rules = Arc::new(
        Rules::new(plan, Some(netlink.clone()))
            .on_programmed(move |ok| gate.set_gate(RULES_GATE, ok)),
    );
    health.set_rules_status(rules.status().clone());
    rules
        .setup()
        .await
        .context("Failed to set up the traffic rules")?;
    // Liveness: the resync loop must tick; its limit leaves room for slow
    // packet-filter commands on a busy host.
    health.register_loop_with_limit(
        "rule resync",
        rules.status().last_progress.clone(),
        (period * 3).max(Duration::from_secs(60)),
    );
    let stopped = |mut s: watch::Receiver<bool>| async move {
        let _ = s.wait_for(|v| *v).await;
    };
    let tasks = vec![
        tokio::spawn({
            let (rules, stop) = (rules.clone(), stop.clone());
            async move { rules.resync_loop(stopped(stop)).await }
        }),
        tokio::spawn({
            let (rules, stop) = (rules.clone(), stop.clone());
            async move { rules.blackhole_loop(stopped(stop)).await }
        }),
    ];
    Ok(TrafficRules { rules, tasks })
}
