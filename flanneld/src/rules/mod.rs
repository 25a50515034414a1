//! Packet-filter rules (behaviour reference §7, §0 steps 16–19): the
//! masquerade rules (`--ip-masq`), the FORWARD accept rules
//! (`--iptables-forward-rules`), their periodic resync, and the
//! `--ip-blackhole-route` task.
//!
//! [`TrafficManager`] is the interface; the drivers are [`Iptables`]
//! (`iptables`/`ip6tables` + `iptables-restore`, rule text byte-identical to
//! Go flannel's `iptables -S` output), [`Nftables`] (`nft`, chosen by
//! `"EnableNFTables": true` in net-conf) and [`Noop`].
//!
//! Both real drivers drive the command-line tools rather than netlink, write
//! each chain in one transaction (`iptables-restore --noflush`, `nft -f -`),
//! and resync by *reading* the current rules once per table and comparing
//! them in memory: a period without drift costs one or two listing
//! commands per table and no write. Rules are never removed on shutdown
//! (zero-downtime restarts keep the datapath).
//!
//! Differences from Go flannel, on purpose:
//! * nftables rule 4 is `ip saddr != N ip daddr S return` (Go's
//!   `ip saddr != S ip daddr N return` stops host→cluster masquerading);
//!   the iptables rules are unchanged.
//! * Switching to nftables removes the `FLANNEL-POSTRTG` (nat) and
//!   `FLANNEL-FWD` (filter) chains and every jump to them (Go's cleanup
//!   looks for `FLANNEL-FWD` in `nat` and cannot delete a referenced chain).
//! * nftables rules are resynced like the iptables ones and the nftables
//!   tables are not deleted on shutdown.
//! * A forward-rule failure at startup is logged and retried by the resync
//!   (as in Go); a masquerade-rule failure is fatal (as in Go).

pub mod iptables;
pub mod nftables;

use std::fmt;
use std::net::IpAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use flannel_core::config::NetConfig;
use flannel_core::ip::{Ip4Net, Ip6Net};
use flannel_core::lease::Lease;
use flannel_core::subnet_env::EnvFile;
use flannel_netlink::{Family, Netlink, Route, RouteKind};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::cli::Options;

pub use iptables::Iptables;
pub use nftables::Nftables;

/// IPv4 masquerade input: (cluster network `N`, own lease subnet `S`).
pub type Masq4 = (Ip4Net, Ip4Net);
/// IPv6 masquerade input: (cluster network `N`, own lease subnet `S`).
pub type Masq6 = (Ip6Net, Ip6Net);

/// An address family of the packet filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4 (`iptables`, nft family `ip`).
    V4,
    /// IPv6 (`ip6tables`, nft family `ip6`).
    V6,
}

impl IpFamily {
    /// The multicast range that is never masqueraded.
    pub fn multicast(self) -> &'static str {
        match self {
            IpFamily::V4 => "224.0.0.0/4",
            IpFamily::V6 => "ff00::/8",
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// The previous run's values from `subnet.env` (read *before* the file is
/// rewritten), used to delete rules of a previous network/subnet (§7.2 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Previous {
    /// `FLANNEL_NETWORK`.
    pub network: Option<Ip4Net>,
    /// `FLANNEL_SUBNET`, masked to its network.
    pub subnet: Option<Ip4Net>,
    /// `FLANNEL_IPV6_NETWORK`.
    pub ipv6_network: Option<Ip6Net>,
    /// `FLANNEL_IPV6_SUBNET`, masked to its network.
    pub ipv6_subnet: Option<Ip6Net>,
}

impl Previous {
    /// The previous values in a parsed `subnet.env` (absent or unparsable
    /// entries are `None`).
    pub fn from_env(env: &EnvFile) -> Previous {
        Previous {
            network: env.previous_network().0,
            subnet: env.previous_subnet().0,
            ipv6_network: env.previous_ipv6_network().0,
            ipv6_subnet: env.previous_ipv6_subnet().0,
        }
    }
}

/// Options shared by the drivers.
#[derive(Debug, Clone, Default)]
pub struct RulesOptions {
    /// `--ip-masq-fully-random-disable`.
    pub fully_random_disable: bool,
    /// The previous network and subnets (see [`Previous`]).
    pub previous: Previous,
}

/// How many commands a driver has run (a test and benchmark hook).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandStats {
    /// Every command run (listings, probes and writes).
    pub commands: u64,
    /// Commands that change rules (`iptables-restore`, `nft -f`).
    pub writes: u64,
}

/// A packet-filter driver: Go's `trafficmngr.TrafficManager`.
#[async_trait]
pub trait TrafficManager: Send + Sync + fmt::Debug {
    /// `iptables`, `nftables` or `none`.
    fn mode(&self) -> &'static str;

    /// Removes what the *other* mode left behind (§7.4). Never fatal in
    /// practice: problems are logged and `Ok` is returned unless the driver
    /// cannot work at all.
    async fn cleanup_other_mode(&self) -> Result<()>;

    /// Prepares the driver (nftables: creates both flannel tables).
    async fn init(&self) -> Result<()>;

    /// Installs (or replaces) the masquerade rules for each given family;
    /// they are then kept by [`TrafficManager::resync_once`].
    async fn setup_masq(&self, v4: Option<Masq4>, v6: Option<Masq6>) -> Result<()>;

    /// Installs (or replaces) the forward accept rules for each given
    /// cluster network; they are then kept by the resync even if this
    /// first write fails.
    async fn setup_forward(&self, v4: Option<Ip4Net>, v6: Option<Ip6Net>) -> Result<()>;

    /// Checks every installed rule set once and rewrites the sets that are
    /// missing or differ. Returns whether anything was rewritten.
    async fn resync_once(&self) -> Result<bool>;

    /// Commands run so far.
    fn stats(&self) -> CommandStats;
}

/// A driver that does nothing (no packet filter available or wanted).
#[derive(Debug, Default, Clone, Copy)]
pub struct Noop;

#[async_trait]
impl TrafficManager for Noop {
    fn mode(&self) -> &'static str {
        "none"
    }
    async fn cleanup_other_mode(&self) -> Result<()> {
        Ok(())
    }
    async fn init(&self) -> Result<()> {
        Ok(())
    }
    async fn setup_masq(&self, _v4: Option<Masq4>, _v6: Option<Masq6>) -> Result<()> {
        Ok(())
    }
    async fn setup_forward(&self, _v4: Option<Ip4Net>, _v6: Option<Ip6Net>) -> Result<()> {
        Ok(())
    }
    async fn resync_once(&self) -> Result<bool> {
        Ok(false)
    }
    fn stats(&self) -> CommandStats {
        CommandStats::default()
    }
}

/// The driver for a net-conf: `EnableNFTables` → [`Nftables`], otherwise
/// [`Iptables`].
pub fn driver(enable_nftables: bool, options: RulesOptions) -> Arc<dyn TrafficManager> {
    if enable_nftables {
        Arc::new(Nftables::new(options))
    } else {
        Arc::new(Iptables::new(options))
    }
}

/// How long one packet-filter command may take before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The result of one command.
#[derive(Debug)]
pub(crate) struct CmdOutput {
    /// The command line, for messages.
    pub cmdline: String,
    /// Whether it exited with status 0.
    pub success: bool,
    /// `exit status: N` or the signal.
    pub status: String,
    /// Standard output.
    pub stdout: String,
    /// Standard error, trimmed.
    pub stderr: String,
}

impl CmdOutput {
    /// `` `cmd` failed (exit status: 1): <stderr> ``
    pub fn failure(&self) -> String {
        format!(
            "`{}` failed ({}): {}",
            self.cmdline,
            self.status,
            if self.stderr.is_empty() {
                "no error output"
            } else {
                &self.stderr
            }
        )
    }
}

/// Runs the packet-filter tools and counts the runs.
#[derive(Debug, Default)]
pub(crate) struct Exec {
    commands: AtomicU64,
    writes: AtomicU64,
}

impl Exec {
    pub(crate) fn stats(&self) -> CommandStats {
        CommandStats {
            commands: self.commands.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }

    /// Runs `program args` with `stdin` (if any) and collects its output.
    /// `write` marks commands that change rules (counted separately). An
    /// `Err` means the program could not be run at all (`NotFound` when it
    /// is not installed) or timed out.
    pub(crate) async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
        write: bool,
    ) -> std::io::Result<CmdOutput> {
        self.commands.fetch_add(1, Ordering::Relaxed);
        if write {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        let cmdline = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await?;
            drop(pipe);
        }
        let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("`{cmdline}` did not finish in {COMMAND_TIMEOUT:?}"),
                )
            })??;
        Ok(CmdOutput {
            cmdline,
            success: out.status.success(),
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// What the flags and the net-conf ask of the packet filter and routes.
#[derive(Debug, Clone)]
pub struct RulesPlan {
    /// `EnableNFTables`.
    pub nftables: bool,
    /// Masquerade rules per family (`--ip-masq`).
    pub masq_v4: Option<Masq4>,
    /// IPv6 masquerade rules.
    pub masq_v6: Option<Masq6>,
    /// Forward rules per family (`--iptables-forward-rules`).
    pub forward_v4: Option<Ip4Net>,
    /// IPv6 forward rules.
    pub forward_v6: Option<Ip6Net>,
    /// Blackhole routes for the own subnets (`--ip-blackhole-route`).
    pub blackhole_v4: Option<Ip4Net>,
    /// IPv6 blackhole route.
    pub blackhole_v6: Option<Ip6Net>,
    /// `--iptables-resync` (at least one second).
    pub period: Duration,
    /// Driver options.
    pub options: RulesOptions,
}

impl RulesPlan {
    /// The plan for `opts`, `config` and the own `lease`; `previous` is
    /// the `subnet.env` read before this run rewrites it.
    pub fn new(opts: &Options, config: &NetConfig, lease: &Lease, previous: &EnvFile) -> RulesPlan {
        let net4 = config.network.filter(|_| config.enable_ipv4);
        let net6 = config.ipv6_network.filter(|_| config.enable_ipv6);
        let sub4 = lease.subnet.filter(|_| net4.is_some());
        let sub6 = lease.ipv6_subnet.filter(|_| net6.is_some());
        let masq = opts.ip_masq;
        let fwd = opts.iptables_forward_rules;
        let hole = opts.ip_blackhole_route;
        RulesPlan {
            nftables: config.enable_nftables,
            masq_v4: net4.zip(sub4).filter(|_| masq),
            masq_v6: net6.zip(sub6).filter(|_| masq),
            forward_v4: net4.filter(|_| fwd),
            forward_v6: net6.filter(|_| fwd),
            blackhole_v4: sub4.filter(|_| hole),
            blackhole_v6: sub6.filter(|_| hole),
            period: resync_period(opts.iptables_resync),
            options: RulesOptions {
                fully_random_disable: opts.ip_masq_fully_random_disable,
                previous: Previous::from_env(previous),
            },
        }
    }

    fn any_rules(&self) -> bool {
        self.masq_v4.is_some()
            || self.masq_v6.is_some()
            || self.forward_v4.is_some()
            || self.forward_v6.is_some()
    }
}

/// `--iptables-resync` as a period; Go would spin on 0 or less, we use 1 s.
pub fn resync_period(seconds: i64) -> Duration {
    if seconds < 1 {
        warn!("--iptables-resync={seconds} is not a positive number of seconds; using 1");
        Duration::from_secs(1)
    } else {
        Duration::from_secs(seconds.unsigned_abs())
    }
}

/// §0 steps 16–18: cleanup of the other mode, init, masquerade rules (a
/// failure is returned: flanneld exits 1), forward rules (a failure is
/// logged; the resync retries).
pub async fn setup(tm: &dyn TrafficManager, plan: &RulesPlan) -> Result<()> {
    if let Err(e) = tm.cleanup_other_mode().await {
        warn!("cleaning up the rules of the other mode: {e:#}");
    }
    tm.init()
        .await
        .with_context(|| format!("Failed to initialise the {} rules", tm.mode()))?;
    if plan.masq_v4.is_some() || plan.masq_v6.is_some() {
        tm.setup_masq(plan.masq_v4, plan.masq_v6)
            .await
            .context("Failed to setup masq rules")?;
    }
    if (plan.forward_v4.is_some() || plan.forward_v6.is_some())
        && let Err(e) = tm.setup_forward(plan.forward_v4, plan.forward_v6).await
    {
        error!(
            "Failed to setup forward rules (retried every {:?}): {e:#}",
            plan.period
        );
    }
    Ok(())
}

/// Every `period`: [`TrafficManager::resync_once`], until `stop` turns true.
pub async fn resync_loop(
    tm: Arc<dyn TrafficManager>,
    period: Duration,
    mut stop: watch::Receiver<bool>,
    health: Arc<crate::health::Health>,
) {
    // Liveness: this loop must tick; readiness: the rules must be in place.
    let beat = Arc::new(std::sync::atomic::AtomicU64::new(0));
    crate::health::mark_progress(&beat);
    health.register_loop_with_limit(
        "rule resync",
        beat.clone(),
        (period * 3).max(Duration::from_secs(60)),
    );
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return,
            _ = tick.tick() => {}
        }
        crate::health::mark_progress(&beat);
        match tm.resync_once().await {
            Ok(true) => {
                debug!("{} rules recreated", tm.mode());
                health.set_gate(RULES_GATE, true);
            }
            Ok(false) => health.set_gate(RULES_GATE, true),
            Err(e) => {
                error!("Failed to ensure {} rules: {e:#}", tm.mode());
                health.set_gate(RULES_GATE, false);
            }
        }
    }
}

/// The readiness gate for the traffic rules.
pub const RULES_GATE: &str = "rules programmed";

/// What [`ensure_blackhole`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blackhole {
    /// The blackhole route was already there.
    Present,
    /// It was missing and has been added.
    Added,
    /// Another route for exactly that prefix exists (typically the CNI
    /// bridge's `proto kernel` route): it is left alone, because replacing
    /// it would cut off the local pods.
    Shadowed(String),
}

/// Ensures `blackhole <dst>/<prefix> proto boot` in the main table.
pub async fn ensure_blackhole(netlink: &Netlink, dst: IpAddr, prefix: u8) -> Result<Blackhole> {
    let want = Route::blackhole(dst, prefix);
    let routes = netlink
        .routes(Family::of(dst))
        .await
        .with_context(|| format!("listing routes to check blackhole {dst}/{prefix}"))?;
    let same: Vec<&Route> = routes
        .iter()
        .filter(|r| r.dst == want.dst && r.prefix == want.prefix)
        .collect();
    if same.iter().any(|r| r.kind == RouteKind::Blackhole) {
        return Ok(Blackhole::Present);
    }
    if let Some(other) = same.first() {
        return Ok(Blackhole::Shadowed(other.to_string()));
    }
    netlink
        .replace_route(&want)
        .await
        .with_context(|| format!("adding blackhole route {dst}/{prefix}"))?;
    Ok(Blackhole::Added)
}

/// §0 step 19: every `period` (first check after one period), ensures the
/// blackhole route of each own subnet, until `stop` turns true.
pub async fn blackhole_loop(
    netlink: Netlink,
    v4: Option<Ip4Net>,
    v6: Option<Ip6Net>,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let targets: Vec<(IpAddr, u8)> = v4
        .map(|n| (IpAddr::V4(n.addr()), n.prefix_len()))
        .into_iter()
        .chain(v6.map(|n| (IpAddr::V6(n.addr()), n.prefix_len())))
        .collect();
    let mut last: Vec<Option<Blackhole>> = vec![None; targets.len()];
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return,
            _ = tick.tick() => {}
        }
        for ((dst, prefix), last) in targets.iter().zip(last.iter_mut()) {
            match ensure_blackhole(&netlink, *dst, *prefix).await {
                Ok(Blackhole::Added) => info!("Added blackhole route {dst}/{prefix}"),
                Ok(Blackhole::Present) => {}
                Ok(b @ Blackhole::Shadowed(_)) => {
                    if last.as_ref() != Some(&b)
                        && let Blackhole::Shadowed(other) = &b
                    {
                        warn!(
                            "Not adding blackhole route {dst}/{prefix}: the main table already \
                             routes that prefix ({other})"
                        );
                    }
                    *last = Some(b);
                    continue;
                }
                Err(e) => error!("Failed to ensure blackhole route {dst}/{prefix}: {e:#}"),
            }
            *last = None;
        }
    }
}

/// The daemon's whole rules step: [`setup`] (errors are fatal), then the
/// resync and blackhole tasks, which run until `stop` turns true. Returns
/// the tasks' handles.
pub async fn start(
    opts: &Options,
    config: &NetConfig,
    lease: &Lease,
    previous: &EnvFile,
    netlink: &Netlink,
    stop: &watch::Receiver<bool>,
    health: &Arc<crate::health::Health>,
) -> Result<Vec<JoinHandle<()>>> {
    let plan = RulesPlan::new(opts, config, lease, previous);
    debug!("traffic rules plan: {plan:?}");
    let tm = driver(plan.nftables, plan.options.clone());
    health.set_gate(RULES_GATE, false);
    setup(tm.as_ref(), &plan).await?;
    health.set_gate(RULES_GATE, true);
    let mut tasks = Vec::new();
    if plan.any_rules() {
        tasks.push(tokio::spawn(resync_loop(
            tm,
            plan.period,
            stop.clone(),
            health.clone(),
        )));
    }
    if plan.blackhole_v4.is_some() || plan.blackhole_v6.is_some() {
        tasks.push(tokio::spawn(blackhole_loop(
            netlink.clone(),
            plan.blackhole_v4,
            plan.blackhole_v6,
            plan.period,
            stop.clone(),
        )));
    }
    Ok(tasks)
}
