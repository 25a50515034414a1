//! [`Rules`]: a driver, its plan, the setup, the keeping loops and the
//! run-time update.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use flannel_netlink::{Family, Netlink, Route, RouteKind};
use tracing::{debug, error, info, warn};

use crate::{
    IpFamily, RuleKind, RulesOptions, RulesPlan, TrafficError, TrafficManager, driver, report,
};

/// What the keeping loops report, for a health endpoint and metrics. All
/// fields are updated by [`Rules`]; readers only load them.
#[derive(Debug, Default)]
pub struct RulesStatus {
    /// Unix time in milliseconds of the resync loop's last tick (0 before
    /// the loop starts): the loop is alive while this advances about once
    /// per period.
    pub last_progress: Arc<AtomicU64>,
    /// Whether the rules are in place: false before the setup and after a
    /// failed resync, true after a successful setup or resync.
    pub programmed: AtomicBool,
    /// Resyncs that found drift and rewrote rules.
    pub rewrites: AtomicU64,
    /// Resyncs that failed.
    pub failures: AtomicU64,
}

impl RulesStatus {
    fn mark_progress(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_progress.store(now, Ordering::Relaxed);
    }
}

type Observer = Box<dyn Fn(bool) + Send + Sync>;

/// One network's traffic rules: a [`TrafficManager`] and the [`RulesPlan`]
/// it carries out. Share it in an `Arc` between the task that runs
/// [`Rules::resync_loop`], the one that runs [`Rules::blackhole_loop`] and
/// the code that calls [`Rules::update`].
pub struct Rules {
    tm: Arc<dyn TrafficManager>,
    plan: Mutex<RulesPlan>,
    netlink: Option<Netlink>,
    status: Arc<RulesStatus>,
    observer: Option<Observer>,
    updating: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rules")
            .field("mode", &self.tm.mode())
            .field("plan", &self.plan())
            .finish_non_exhaustive()
    }
}

impl Rules {
    /// The rules of `plan` with the driver its mode asks for. `netlink` is
    /// needed only for blackhole routes.
    pub fn new(plan: RulesPlan, netlink: Option<Netlink>) -> Rules {
        let options = RulesOptions {
            fully_random_disable: plan.fully_random_disable,
            previous: plan.previous,
        };
        let tm = driver(plan.nftables, options);
        Rules::with_driver(plan, netlink, tm)
    }

    /// The rules of `plan` carried out by `tm`.
    pub fn with_driver(
        plan: RulesPlan,
        netlink: Option<Netlink>,
        tm: Arc<dyn TrafficManager>,
    ) -> Rules {
        Rules {
            tm,
            plan: Mutex::new(plan),
            netlink,
            status: Arc::new(RulesStatus::default()),
            observer: None,
            updating: tokio::sync::Mutex::new(()),
        }
    }

    /// Calls `f` with [`RulesStatus::programmed`] every time it is set
    /// (after the setup and after each resync), e.g. to drive a readiness
    /// gate.
    pub fn on_programmed(mut self, f: impl Fn(bool) + Send + Sync + 'static) -> Rules {
        self.observer = Some(Box::new(f));
        self
    }

    /// The driver.
    pub fn driver(&self) -> &Arc<dyn TrafficManager> {
        &self.tm
    }

    /// The plan being carried out.
    pub fn plan(&self) -> RulesPlan {
        self.plan.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Progress and counters.
    pub fn status(&self) -> &Arc<RulesStatus> {
        &self.status
    }

    fn set_programmed(&self, ok: bool) {
        self.status.programmed.store(ok, Ordering::Relaxed);
        if let Some(f) = &self.observer {
            f(ok);
        }
    }

    /// §0 steps 16–18: cleanup of the other mode (problems are logged),
    /// init and masquerade rules (an error is returned: flanneld exits 1),
    /// forward rules (an error is logged; the resync retries).
    pub async fn setup(&self) -> Result<(), TrafficError> {
        let plan = self.plan();
        self.set_programmed(false);
        if plan.blackhole && self.netlink.is_none() && (plan.v4.is_some() || plan.v6.is_some()) {
            return Err(TrafficError::NoNetlink);
        }
        let tm = &self.tm;
        if let Err(e) = tm.cleanup_other_mode(&plan).await {
            warn!(
                "Cleaning up the rules of the other mode failed: {}",
                report(&e)
            );
        }
        tm.init()
            .await
            .map_err(|e| TrafficError::step("initialise the packet-filter rules", e))?;
        if plan.masq_v4().is_some() || plan.masq_v6().is_some() {
            tm.setup_masq(plan.masq_v4(), plan.masq_v6())
                .await
                .map_err(|e| TrafficError::step("setup masq rules", e))?;
        }
        if (plan.forward_v4().is_some() || plan.forward_v6().is_some())
            && let Err(e) = tm.setup_forward(plan.forward_v4(), plan.forward_v6()).await
        {
            error!(
                "Failed to setup forward rules (retried every {} s): {}",
                plan.period.as_secs(),
                report(&e)
            );
        }
        self.set_programmed(true);
        Ok(())
    }

    /// Carries out `new` instead of the current plan (typically
    /// [`RulesPlan::for_lease`] after a lease change): installs the rules
    /// that changed, deletes exactly the ones of the old plan that are no
    /// longer wanted, and moves the blackhole route. Every step is tried;
    /// the first error is returned, and the resync retries the rules.
    pub async fn update(&self, new: RulesPlan) -> Result<(), TrafficError> {
        let _one_at_a_time = self.updating.lock().await;
        let old = self.plan();
        if old.nftables != new.nftables {
            let mode = |nft| if nft { "nftables" } else { "iptables" };
            return Err(TrafficError::ModeChange {
                from: mode(old.nftables),
                to: mode(new.nftables),
            });
        }
        if old == new {
            return Ok(());
        }
        info!(
            "Traffic rules: moving from {} to {}",
            describe(&old),
            describe(&new)
        );
        let tm = &self.tm;
        let mut first_err: Option<TrafficError> = None;
        let mut keep = |r: Result<(), TrafficError>| {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        };

        let (m4, m6) = (new.masq_v4(), new.masq_v6());
        let (c4, c6) = (m4 != old.masq_v4(), m6 != old.masq_v6());
        if (c4 && m4.is_some()) || (c6 && m6.is_some()) {
            keep(
                tm.setup_masq(m4.filter(|_| c4), m6.filter(|_| c6))
                    .await
                    .map_err(|e| TrafficError::step("setup masq rules", e)),
            );
        }
        let (f4, f6) = (new.forward_v4(), new.forward_v6());
        let (d4, d6) = (f4 != old.forward_v4(), f6 != old.forward_v6());
        if (d4 && f4.is_some()) || (d6 && f6.is_some()) {
            keep(
                tm.setup_forward(f4.filter(|_| d4), f6.filter(|_| d6))
                    .await
                    .map_err(|e| TrafficError::step("setup forward rules", e)),
            );
        }
        let gone = [
            (c4 && m4.is_none(), RuleKind::Masq, IpFamily::V4),
            (c6 && m6.is_none(), RuleKind::Masq, IpFamily::V6),
            (d4 && f4.is_none(), RuleKind::Forward, IpFamily::V4),
            (d6 && f6.is_none(), RuleKind::Forward, IpFamily::V6),
        ];
        for (_, kind, family) in gone.into_iter().filter(|g| g.0) {
            keep(tm.remove(kind, family).await);
        }

        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = new.clone();

        let (old_holes, new_holes) = (blackholes(&old), blackholes(&new));
        if !old_holes.is_empty() || !new_holes.is_empty() {
            match &self.netlink {
                None => keep(Err(TrafficError::NoNetlink)),
                Some(nl) => {
                    for &(dst, prefix) in old_holes.iter().filter(|t| !new_holes.contains(t)) {
                        keep(remove_blackhole(nl, dst, prefix).await);
                    }
                    for &(dst, prefix) in new_holes.iter().filter(|t| !old_holes.contains(t)) {
                        match ensure_blackhole(nl, dst, prefix).await {
                            Ok(b) => log_blackhole(dst, prefix, &b, None),
                            Err(e) => keep(Err(e)),
                        }
                    }
                }
            }
        }
        match first_err {
            Some(e) => {
                self.set_programmed(false);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Every period (first after one period): [`TrafficManager::resync_once`],
    /// updating [`RulesStatus`], until `shutdown` completes.
    pub async fn resync_loop(&self, shutdown: impl Future<Output = ()>) {
        let period = self.plan().period;
        self.status.mark_progress();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            self.status.mark_progress();
            match self.tm.resync_once().await {
                Ok(rewrote) => {
                    if rewrote {
                        debug!("{} rules recreated", self.tm.mode());
                        self.status.rewrites.fetch_add(1, Ordering::Relaxed);
                    }
                    self.set_programmed(true);
                }
                Err(e) => {
                    error!("Failed to ensure {} rules: {}", self.tm.mode(), report(&e));
                    self.status.failures.fetch_add(1, Ordering::Relaxed);
                    self.set_programmed(false);
                }
            }
        }
    }

    /// §0 step 19: every period (first check after one period), ensures the
    /// blackhole route of each own subnet of the current plan, until
    /// `shutdown` completes. Returns at once when the handle has no netlink
    /// handle ([`Rules::setup`] refuses a plan that needs one).
    pub async fn blackhole_loop(&self, shutdown: impl Future<Output = ()>) {
        let Some(netlink) = &self.netlink else {
            return;
        };
        let period = self.plan().period;
        let mut last: HashMap<(IpAddr, u8), Blackhole> = HashMap::new();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            let targets = blackholes(&self.plan());
            last.retain(|t, _| targets.contains(t));
            for (dst, prefix) in targets {
                match ensure_blackhole(netlink, dst, prefix).await {
                    Ok(b) => {
                        log_blackhole(dst, prefix, &b, last.get(&(dst, prefix)));
                        last.insert((dst, prefix), b);
                    }
                    Err(e) => {
                        error!("Failed to ensure blackhole route: {}", report(&e));
                        last.remove(&(dst, prefix));
                    }
                }
            }
        }
    }
}

fn describe(plan: &RulesPlan) -> String {
    let mut parts = Vec::new();
    if let Some((n, s)) = plan.v4 {
        parts.push(format!("network {n} subnet {s}"));
    }
    if let Some((n, s)) = plan.v6 {
        parts.push(format!("IPv6 network {n} subnet {s}"));
    }
    if parts.is_empty() {
        "no network".to_string()
    } else {
        parts.join(", ")
    }
}

fn blackholes(plan: &RulesPlan) -> Vec<(IpAddr, u8)> {
    plan.blackhole_v4()
        .map(|n| (IpAddr::V4(n.addr()), n.prefix_len()))
        .into_iter()
        .chain(
            plan.blackhole_v6()
                .map(|n| (IpAddr::V6(n.addr()), n.prefix_len())),
        )
        .collect()
}

/// Logs an added route, and a shadowed one when it was not shadowed (the
/// same way) at the previous check.
fn log_blackhole(dst: IpAddr, prefix: u8, b: &Blackhole, last: Option<&Blackhole>) {
    match b {
        Blackhole::Added => info!("Added blackhole route {dst}/{prefix}"),
        Blackhole::Present => {}
        Blackhole::Shadowed(other) if last != Some(b) => warn!(
            "Not adding blackhole route {dst}/{prefix}: the main table already routes that \
             prefix ({other})"
        ),
        Blackhole::Shadowed(_) => {}
    }
}

/// What [`ensure_blackhole`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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

/// The main-table routes for exactly `dst/prefix`; `action` names why they
/// are listed, for the error.
async fn routes_for_prefix(
    netlink: &Netlink,
    dst: IpAddr,
    prefix: u8,
    action: &'static str,
) -> Result<Vec<Route>, TrafficError> {
    let want = Route::blackhole(dst, prefix);
    let routes = netlink
        .routes(Family::of(dst))
        .await
        .map_err(|source| TrafficError::Route {
            action,
            dst,
            prefix,
            source,
        })?;
    Ok(routes
        .into_iter()
        .filter(|r| r.dst == want.dst && r.prefix == want.prefix)
        .collect())
}

/// Ensures `blackhole <dst>/<prefix> proto boot` in the main table.
pub async fn ensure_blackhole(
    netlink: &Netlink,
    dst: IpAddr,
    prefix: u8,
) -> Result<Blackhole, TrafficError> {
    let same = routes_for_prefix(netlink, dst, prefix, "listing routes to check").await?;
    if same.iter().any(|r| r.kind == RouteKind::Blackhole) {
        return Ok(Blackhole::Present);
    }
    if let Some(other) = same.first() {
        return Ok(Blackhole::Shadowed(other.to_string()));
    }
    netlink
        .replace_route(&Route::blackhole(dst, prefix))
        .await
        .map_err(|source| TrafficError::Route {
            action: "adding",
            dst,
            prefix,
            source,
        })?;
    Ok(Blackhole::Added)
}

/// Deletes the blackhole route `<dst>/<prefix>` if there is one (any other
/// route for that prefix is left alone).
async fn remove_blackhole(netlink: &Netlink, dst: IpAddr, prefix: u8) -> Result<(), TrafficError> {
    let same = routes_for_prefix(netlink, dst, prefix, "listing routes to delete").await?;
    for r in same.iter().filter(|r| r.kind == RouteKind::Blackhole) {
        netlink
            .del_route(r)
            .await
            .map_err(|source| TrafficError::Route {
                action: "deleting",
                dst,
                prefix,
                source,
            })?;
        info!("Deleted blackhole route {dst}/{prefix} (the subnet is no longer ours)");
    }
    Ok(())
}
