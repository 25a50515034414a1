//! The network runner: the one loop that keeps a backend's datapath in step
//! with the leases.
//!
//! [`Runner::run`] drives a registered [`Network`] until the shutdown future
//! completes:
//! - watches every lease (snapshot, then changes; the manager's stream
//!   reconnects by itself) and passes changes through a [`LeaseWatcher`] to
//!   [`Network::handle_events`], and full snapshots to [`Network::resync`]
//!   alone (it programs every lease and removes stale state);
//! - calls [`Network::resync`] every [`Network::resync_interval`] and at once
//!   when the backend's [`Network::take_resync_trigger`] stream fires (a
//!   deleted device);
//! - retries a failed event batch or resync through a resync after the
//!   backend's [`RetryPolicy`] (exponential, capped, jittered; periodic
//!   resyncs wait while a retry is pending), logging the first failure at
//!   once and then one summary per `error_log_interval`;
//! - renews the lease `renew_margin` before it expires, retrying every minute
//!   on failure;
//! - re-acquires the lease when it disappears from the store (the same subnet
//!   when it is still free) and tells the network; until then it reports not
//!   in sync. When a fresh listing lacks our lease (the store was rebuilt or
//!   wiped, perhaps without its config), the peers known before stay in the
//!   datapath until a grace period after the lease is back, so that they
//!   have the time to re-assert theirs;
//! - hands the network's driver (a userspace datapath loop), if it has one,
//!   to the executor given with [`Runner::with_executor`] (for example
//!   [`thread_executor`]), so packets keep moving while a handler works;
//!   without one it polls the driver between handlers;
//! - publishes the lease it holds ([`RunnerStatus::subscribe_lease`]);
//! - logs datastore outages rate-limited: the first error at once, then one
//!   summary line per `error_log_interval`.
//!
//! On shutdown it calls [`Network::shutdown`] and returns; it never removes
//! devices, routes or leases. Nothing is spawned but through the executor the
//! caller chose: the caller's task runs the loop.
//! [`RunnerStatus`] exposes progress for health, readiness and metrics.

use crate::manager::Backoff;
use flannel_core::backend::{BackendError, Driver, Network, ResyncTrigger, RetryPolicy};
use flannel_core::event::{EventKind, LeaseWatchResult, LeaseWatcher};
use flannel_core::key::SubnetKey;
use flannel_core::lease::Lease;
use flannel_core::manager::{AcquireRequest, LeaseStream, ManagerError, SubnetManager};
use futures_util::{FutureExt, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tracing::{error, info, warn};

/// Tunables of the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerOptions {
    /// Renew this long before the lease expires (`--subnet-lease-renew-margin`,
    /// default 60 minutes).
    pub renew_margin: Duration,
    /// Delay before retrying a failed renewal (1 minute).
    pub renew_retry: Duration,
    /// Backoff for re-opening a watch and re-acquiring a lost lease.
    pub backoff: Backoff,
    /// At most one outage log line per this interval after the first.
    pub error_log_interval: Duration,
    /// Liveness heartbeat: the loop proves it is alive at least this often.
    pub heartbeat: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            renew_margin: Duration::from_secs(60 * 60),
            renew_retry: Duration::from_secs(60),
            backoff: Backoff::default(),
            error_log_interval: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
        }
    }
}

/// `--subnet-lease-renew-margin` outside 1–1439 minutes (Go's text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid subnet-lease-renew-margin option, out of acceptable range")]
pub struct RenewMarginError;

impl RunnerOptions {
    /// Sets the renewal margin from `--subnet-lease-renew-margin` minutes,
    /// which must satisfy `0 < m < 1440` as in Go.
    pub fn with_renew_margin_minutes(
        self,
        minutes: i64,
    ) -> Result<RunnerOptions, RenewMarginError> {
        if !(1..1440).contains(&minutes) {
            return Err(RenewMarginError);
        }
        Ok(RunnerOptions {
            renew_margin: Duration::from_secs(minutes as u64 * 60),
            ..self
        })
    }
}

/// Errors that end [`Runner::run`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// The backend's driver loop failed, or the backend cannot follow a lease
    /// change in place.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A permanent subnet manager error (not an outage).
    #[error(transparent)]
    Manager(#[from] ManagerError),
}

/// Live counters and state of a runner, shared with health and metrics.
#[derive(Debug)]
pub struct RunnerStatus {
    lease: tokio::sync::watch::Sender<Option<Lease>>,
    in_sync: AtomicBool,
    last_progress: Mutex<std::time::Instant>,
    /// Lease events applied to the network.
    pub events: AtomicU64,
    /// Resyncs run.
    pub resyncs: AtomicU64,
    /// Watch errors (datastore outages, reconnects).
    pub watch_errors: AtomicU64,
    /// Backend errors while applying events or resyncing.
    pub reconcile_errors: AtomicU64,
    /// Successful renewals.
    pub renewals: AtomicU64,
    /// Re-acquisitions after our lease disappeared.
    pub reacquisitions: AtomicU64,
    /// Remote leases currently known.
    pub known_leases: AtomicU64,
    /// Duration of the last resync, in microseconds.
    pub last_resync_micros: AtomicU64,
    /// Failed resyncs or event batches since the last success (0 when the
    /// datapath is in step).
    pub consecutive_failures: AtomicU64,
    /// The delay before the next retry, in milliseconds (0 when none is due).
    pub retry_delay_millis: AtomicU64,
}

impl Default for RunnerStatus {
    fn default() -> Self {
        RunnerStatus {
            lease: tokio::sync::watch::Sender::new(None),
            in_sync: AtomicBool::new(false),
            last_progress: Mutex::new(std::time::Instant::now()),
            events: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            watch_errors: AtomicU64::new(0),
            reconcile_errors: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            reacquisitions: AtomicU64::new(0),
            known_leases: AtomicU64::new(0),
            last_resync_micros: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
            retry_delay_millis: AtomicU64::new(0),
        }
    }
}

impl RunnerStatus {
    /// The lease currently held.
    pub fn lease(&self) -> Option<Lease> {
        self.lease.borrow().clone()
    }

    /// Follows the lease: the receiver sees every renewal and re-acquisition
    /// (a caller re-derives `subnet.env`, traffic rules and the blackhole
    /// route from it when the subnet changes).
    pub fn subscribe_lease(&self) -> tokio::sync::watch::Receiver<Option<Lease>> {
        self.lease.subscribe()
    }

    /// True while the lease watch is connected and the datapath reflects it.
    pub fn in_sync(&self) -> bool {
        self.in_sync.load(Ordering::Relaxed)
    }

    /// Time since the loop last made progress (for liveness).
    pub fn since_progress(&self) -> Duration {
        self.last_progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    fn touch(&self) {
        *self.last_progress.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
    }

    fn set_lease(&self, lease: &Lease) {
        self.lease.send_replace(Some(lease.clone()));
    }
}

/// Logs the first error at once and then one summary per interval.
struct RateLimitedLog {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn error(&mut self, what: &str, e: &dyn std::fmt::Display) {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.interval => self.suppressed += 1,
            _ => {
                if self.suppressed > 0 {
                    warn!(
                        "{what}: {e} ({} more errors since the last report)",
                        self.suppressed
                    );
                } else {
                    warn!("{what}: {e}");
                }
                self.last = Some(now);
                self.suppressed = 0;
            }
        }
    }

    fn recovered(&mut self, what: &str) {
        if self.last.is_some() {
            info!("{what}: recovered");
        }
        self.last = None;
        self.suppressed = 0;
    }
}

/// When to renew `lease`: `margin` before its expiration, or never.
fn renew_deadline(lease: &Lease, margin: Duration) -> Option<Instant> {
    let exp = lease.expiration?;
    let left = exp
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Some(Instant::now() + left.saturating_sub(margin))
}

const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => tokio::time::sleep(FAR).await,
    }
}

/// The next trigger item, or never when there is no trigger (or it ended).
async fn triggered(trigger: &mut Option<ResyncTrigger>) -> bool {
    match trigger {
        Some(t) => match t.next().await {
            Some(()) => {
                // Coalesce a burst (a device deletion also drops its routes
                // and neighbours) into one resync.
                while let Some(Some(())) = t.next().now_or_never() {}
                true
            }
            None => false,
        },
        None => std::future::pending().await,
    }
}

/// A running driver, as an executor hands it back: completes when the
/// driver ends.
pub type DriverHandle = Pin<Box<dyn Future<Output = Result<(), BackendError>> + Send>>;

/// Where a network's [`Driver`] runs: called once per driver, it starts the
/// driver somewhere that is not the runner's task and returns a handle to
/// its end. Choose one with [`Runner::with_executor`]; [`thread_executor`]
/// is the usual choice.
pub type DriverExecutor = Arc<dyn Fn(Driver) -> DriverHandle + Send + Sync>;

/// An executor that runs each driver on an OS thread of its own, with a
/// single-threaded tokio runtime (timers and I/O enabled). A userspace
/// datapath then keeps moving packets while the runner's handlers compute a
/// 5,000-lease resync, whatever runtime the caller uses.
///
/// The thread ends when the driver does; a driver ends with its network's
/// [`Network::shutdown`], which the runner calls on the way out.
pub fn thread_executor(name: &str) -> DriverExecutor {
    let name = name.to_string();
    Arc::new(move |driver: Driver| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let result = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(driver),
                    Err(e) => Err(BackendError::datapath("the driver's runtime", e)),
                };
                let _ = tx.send(result);
            });
        let handle: DriverHandle = match spawned {
            Ok(_) => Box::pin(async move {
                rx.await.unwrap_or_else(|_| {
                    Err(BackendError::Refused(
                        "the backend driver's thread stopped without a result (it panicked)"
                            .to_string(),
                    ))
                })
            }),
            Err(e) => {
                let e = BackendError::datapath("a thread for the backend driver", e);
                Box::pin(async move { Err(e) })
            }
        };
        handle
    })
}

async fn drive(driver: &mut Option<DriverHandle>) -> Result<(), BackendError> {
    match driver {
        Some(d) => d.await,
        None => std::future::pending().await,
    }
}

/// Retries of failed resyncs and event batches (see [`RetryPolicy`]).
struct Retry {
    policy: RetryPolicy,
    delay: Duration,
    at: Option<Instant>,
    failures: u64,
    log: RateLimitedLog,
}

impl Retry {
    /// Schedules the next attempt after a failure and logs it, rate-limited.
    fn failed(&mut self, status: &RunnerStatus, what: &str, e: &BackendError) {
        self.failures += 1;
        self.delay = if self.failures == 1 {
            self.policy.min
        } else {
            self.policy.next(self.delay)
        };
        let wait = self.policy.jittered(self.delay, fastrand::f64());
        self.at = Some(Instant::now() + wait);
        status.reconcile_errors.fetch_add(1, Ordering::Relaxed);
        status
            .consecutive_failures
            .store(self.failures, Ordering::Relaxed);
        status
            .retry_delay_millis
            .store(wait.as_millis() as u64, Ordering::Relaxed);
        self.log.error(
            &format!(
                "{what} failed (attempt {}; next attempt in {:.1} s)",
                self.failures,
                wait.as_secs_f64()
            ),
            e,
        );
    }

    fn succeeded(&mut self, status: &RunnerStatus) {
        if self.failures > 0 {
            info!(
                "the datapath is in step again after {} failed attempts",
                self.failures
            );
        }
        self.failures = 0;
        self.at = None;
        self.log.last = None;
        self.log.suppressed = 0;
        status.consecutive_failures.store(0, Ordering::Relaxed);
        status.retry_delay_millis.store(0, Ordering::Relaxed);
    }
}

/// Drives one network (see the module docs).
pub struct Runner {
    manager: Arc<dyn SubnetManager>,
    options: RunnerOptions,
    status: Arc<RunnerStatus>,
    executor: Option<DriverExecutor>,
}

impl Runner {
    /// A runner over `manager` with default options.
    pub fn new(manager: Arc<dyn SubnetManager>) -> Runner {
        Runner {
            manager,
            options: RunnerOptions::default(),
            status: Arc::new(RunnerStatus::default()),
            executor: None,
        }
    }

    /// Replaces the options.
    pub fn with_options(self, options: RunnerOptions) -> Runner {
        Runner { options, ..self }
    }

    /// Runs the network's [`Driver`], if it has one, on `executor` instead
    /// of polling it inside [`Runner::run`]'s own task (where it would wait
    /// whenever a handler works). See [`thread_executor`].
    pub fn with_executor(self, executor: DriverExecutor) -> Runner {
        Runner {
            executor: Some(executor),
            ..self
        }
    }

    /// The shared status (clone the `Arc` before calling [`Runner::run`]).
    pub fn status(&self) -> &Arc<RunnerStatus> {
        &self.status
    }

    async fn open_watch(
        &self,
        log: &mut RateLimitedLog,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Option<LeaseStream> {
        let mut delay = self.options.backoff.min;
        loop {
            match self.manager.watch_leases().await {
                Ok(s) => return Some(s),
                Err(e) => {
                    self.status.watch_errors.fetch_add(1, Ordering::Relaxed);
                    log.error("cannot watch leases", &e);
                }
            }
            tokio::select! {
                _ = &mut *shutdown => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = self.options.backoff.next(delay);
        }
    }

    async fn resync(
        &self,
        network: &mut dyn Network,
        watcher: &LeaseWatcher,
        held: &[Lease],
        retry: &mut Retry,
    ) {
        let started = std::time::Instant::now();
        let leases = with_held(watcher, held);
        let result = network.resync(&leases).await;
        self.status.resyncs.fetch_add(1, Ordering::Relaxed);
        self.status
            .last_resync_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => retry.succeeded(&self.status),
            Err(e) => retry.failed(
                &self.status,
                &format!("resync of {} leases", leases.len()),
                &e,
            ),
        }
    }

    /// Runs until `shutdown` completes (see the module docs).
    pub async fn run(
        &self,
        network: &mut dyn Network,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RunnerError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let opts = self.options;
        let mut lease = network.lease().clone();
        self.status.set_lease(&lease);
        let mut own: SubnetKey = lease.key();
        let mut watcher = LeaseWatcher::new(Some(own));
        let mut log = RateLimitedLog {
            interval: opts.error_log_interval,
            last: None,
            suppressed: 0,
        };
        let mut retry = Retry {
            policy: network.retry_policy(),
            delay: Duration::ZERO,
            at: None,
            failures: 0,
            log: RateLimitedLog {
                interval: opts.error_log_interval,
                last: None,
                suppressed: 0,
            },
        };
        let mut driver: Option<DriverHandle> =
            network.take_driver().map(|d| match &self.executor {
                Some(exec) => exec(d),
                // No executor: polled inside this loop, between handlers.
                None => d,
            });
        let mut trigger = network.take_resync_trigger();
        let mut renew_at = renew_deadline(&lease, opts.renew_margin);
        let resync_every = network.resync_interval();
        let mut resync_at = resync_every.map(|d| Instant::now() + d);
        let mut reacquire_at: Option<Instant> = None;
        let mut reacquire_delay = opts.backoff.min;
        // The watch delivers (it is in sync once our lease is in the store too).
        let mut watch_ok = false;
        // Peers kept in the datapath while the store lost our lease, and when
        // to let them go (a grace period after our lease is back).
        let mut held: Vec<Lease> = Vec::new();
        let mut held_until: Option<Instant> = None;
        let mut heartbeat = tokio::time::interval(opts.heartbeat);

        let Some(mut stream) = self.open_watch(&mut log, &mut shutdown).await else {
            return self.finish(network, driver).await;
        };
        loop {
            self.status.touch();
            tokio::select! {
                _ = &mut shutdown => break,
                _ = heartbeat.tick() => {}
                result = drive(&mut driver) => {
                    driver = None;
                    result?;
                    info!("the backend driver finished");
                }
                item = stream.next() => match item {
                    Some(Ok(result)) => {
                        log.recovered("lease watch");
                        let lost = match &result {
                            LeaseWatchResult::Snapshot(ls) => !ls.iter().any(|l| l.key() == own),
                            LeaseWatchResult::Events(es) => {
                                for e in es.iter().filter(|e| e.lease.key() == own && e.kind == EventKind::Added) {
                                    // Our own write (renewal) or someone else's: follow the expiry.
                                    if e.lease.attrs == lease.attrs && e.lease.expiration.is_some() {
                                        lease.expiration = e.lease.expiration;
                                        renew_at = renew_deadline(&lease, opts.renew_margin);
                                    }
                                }
                                es.iter().any(|e| e.lease.key() == own && e.kind == EventKind::Removed)
                            }
                        };
                        if lost && held.is_empty() && matches!(result, LeaseWatchResult::Snapshot(_)) {
                            // Our lease is missing from a fresh listing: the
                            // store was rebuilt or wiped. Peers re-assert their
                            // leases as we do; until they have had the time to,
                            // keep routing to the ones we knew.
                            held = watcher.leases().into_iter().cloned().collect();
                            held_until = None;
                        }
                        let batch = watcher.apply(result);
                        self.status.events.fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                        // After a snapshot the resync below programs every lease
                        // and removes the stale ones; applying the diff as events
                        // first would do the same work twice (5,000 leases at
                        // start: 1.5 s instead of 0.2 s).
                        if batch.resync {
                            self.resync(network, &watcher, &held, &mut retry).await;
                        } else if !batch.events.is_empty() {
                            let leases = with_held(&watcher, &held);
                            match network.handle_events(&batch.events, &leases).await {
                                Ok(()) => {}
                                // Retried through a full resync.
                                Err(e) => retry.failed(
                                    &self.status,
                                    &format!("applying {} lease events", batch.events.len()),
                                    &e,
                                ),
                            }
                        }
                        // After the backend saw the batch: leases it cannot decode are not known.
                        self.status.known_leases.store(watcher.len().saturating_sub(network.undecodable_leases()) as u64, Ordering::Relaxed);
                        if lost && reacquire_at.is_none() {
                            warn!(
                                "our lease {own} is gone from the {} store; re-acquiring it (not ready until then)",
                                self.manager.name()
                            );
                            reacquire_at = Some(Instant::now());
                        }
                        // In sync only with our own lease back in the store
                        // (after a store rebuilt empty, peers route to us by it).
                        watch_ok = true;
                        self.status.in_sync.store(reacquire_at.is_none(), Ordering::Relaxed);
                    }
                    Some(Err(e)) => {
                        watch_ok = false;
                        self.status.in_sync.store(false, Ordering::Relaxed);
                        self.status.watch_errors.fetch_add(1, Ordering::Relaxed);
                        log.error("lease watch", &e);
                    }
                    None => {
                        watch_ok = false;
                        self.status.in_sync.store(false, Ordering::Relaxed);
                        log.error("lease watch", &"stream ended; reopening");
                        tokio::select! {
                            _ = &mut shutdown => break,
                            _ = tokio::time::sleep(opts.backoff.min) => {}
                        }
                        match self.open_watch(&mut log, &mut shutdown).await {
                            Some(s) => stream = s,
                            None => break,
                        }
                    }
                },
                fired = triggered(&mut trigger) => {
                    if !fired {
                        trigger = None;
                        continue;
                    }
                    info!("the backend reported damage to its datapath; resyncing now");
                    self.resync(network, &watcher, &held, &mut retry).await;
                }
                _ = sleep_until_opt(resync_at) => {
                    resync_at = resync_every.map(|d| Instant::now() + d);
                    // While failing, the backoff alone decides when to try again.
                    if retry.at.is_none() {
                        self.resync(network, &watcher, &held, &mut retry).await;
                    }
                }
                _ = sleep_until_opt(retry.at) => {
                    retry.at = None;
                    self.resync(network, &watcher, &held, &mut retry).await;
                    resync_at = resync_every.map(|d| Instant::now() + d);
                }
                _ = sleep_until_opt(renew_at) => {
                    match self.manager.renew_lease(&lease).await {
                        Ok(renewed) => {
                            self.status.renewals.fetch_add(1, Ordering::Relaxed);
                            info!("Lease renewed, new expiration: {}", fmt_expiry(&renewed));
                            lease = renewed;
                            self.status.set_lease(&lease);
                            network.lease_changed(&lease).await?;
                            renew_at = renew_deadline(&lease, opts.renew_margin);
                        }
                        Err(e) => {
                            error!("Error renewing lease (trying again in {} s): {e}", opts.renew_retry.as_secs());
                            renew_at = Some(Instant::now() + opts.renew_retry);
                        }
                    }
                }
                _ = sleep_until_opt(held_until) => {
                    held_until = None;
                    let gone = held.iter().filter(|l| watcher.get(&l.key()).is_none()).count();
                    held.clear();
                    if gone > 0 {
                        info!("{gone} peers known before our lease was lost did not come back to the store; removing them");
                    }
                    self.resync(network, &watcher, &held, &mut retry).await;
                }
                _ = sleep_until_opt(reacquire_at) => {
                    let request = AcquireRequest {
                        attrs: lease.attrs.clone(),
                        previous_subnet: lease.subnet,
                        previous_ipv6_subnet: lease.ipv6_subnet,
                    };
                    match self.manager.acquire_lease(&request).await {
                        Ok(new) => {
                            self.status.reacquisitions.fetch_add(1, Ordering::Relaxed);
                            info!("re-acquired lease {}", new.key());
                            reacquire_at = None;
                            reacquire_delay = opts.backoff.min;
                            let moved = new.key() != own;
                            own = new.key();
                            watcher.set_own(Some(own));
                            lease = new;
                            self.status.set_lease(&lease);
                            network.lease_changed(&lease).await?;
                            renew_at = renew_deadline(&lease, opts.renew_margin);
                            self.status.in_sync.store(watch_ok && !moved, Ordering::Relaxed);
                            if !held.is_empty() {
                                held_until = Some(Instant::now() + HOLD_AFTER_REACQUIRE);
                            }
                            if moved {
                                watch_ok = false;
                                // What now holds our old subnet was filtered out
                                // as ours: re-list so it becomes a peer.
                                match self.open_watch(&mut log, &mut shutdown).await {
                                    Some(s) => stream = s,
                                    None => break,
                                }
                            }
                        }
                        Err(e) => {
                            let what = if matches!(e, ManagerError::ConfigNotFound(_)) {
                                format!(
                                    "cannot re-acquire our lease {own}: the network config is missing from the {} store \
                                     (was it rebuilt or wiped?); keeping the datapath as it is, not ready, retrying",
                                    self.manager.name()
                                )
                            } else {
                                "re-acquiring our lease".to_string()
                            };
                            log.error(&what, &e);
                            reacquire_at = Some(Instant::now() + reacquire_delay);
                            reacquire_delay = opts.backoff.next(reacquire_delay);
                        }
                    }
                }
            }
        }
        self.finish(network, driver).await
    }

    async fn finish(
        &self,
        network: &mut dyn Network,
        driver: Option<DriverHandle>,
    ) -> Result<(), RunnerError> {
        self.status.in_sync.store(false, Ordering::Relaxed);
        network.shutdown().await?;
        // The driver ends with the network's shutdown; wait for it briefly
        // so its thread does not outlive the runner.
        if let Some(d) = driver {
            match tokio::time::timeout(DRIVER_STOP_TIMEOUT, d).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("the backend driver ended with an error: {e}"),
                Err(_) => warn!(
                    "the backend driver did not stop within {} s of the shutdown",
                    DRIVER_STOP_TIMEOUT.as_secs()
                ),
            }
        }
        Ok(())
    }
}

/// How long peers known before our lease went missing from the store stay in
/// the datapath after we have re-acquired it: the time for every live peer's
/// watch to reconnect (its backoff reaches 5 s) and re-assert its own.
const HOLD_AFTER_REACQUIRE: Duration = Duration::from_secs(15);

/// The leases the datapath follows: the store's, plus those `held` from
/// before the store lost our lease that it does not (yet) hold again.
fn with_held<'a>(watcher: &'a LeaseWatcher, held: &'a [Lease]) -> Vec<&'a Lease> {
    let mut leases = watcher.leases();
    if held.is_empty() {
        return leases;
    }
    let known: std::collections::HashSet<SubnetKey> = leases.iter().map(|l| l.key()).collect();
    leases.extend(held.iter().filter(|l| !known.contains(&l.key())));
    leases.sort_by_key(|l| l.key());
    leases
}

/// How long [`Runner::run`] waits for a driver to end after the shutdown.
const DRIVER_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A lease's expiry in words (RFC 3339-like UTC) or "never".
fn fmt_expiry(lease: &Lease) -> String {
    match lease.expiration {
        Some(t) => match t.duration_since(SystemTime::now()) {
            Ok(left) => format!("in {} s", left.as_secs()),
            Err(_) => "already past".to_string(),
        },
        None => "never (a reservation)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_margin_range() {
        let o = RunnerOptions::default();
        assert_eq!(o.renew_margin, Duration::from_secs(3600));
        assert_eq!(
            o.with_renew_margin_minutes(1).unwrap().renew_margin,
            Duration::from_secs(60)
        );
        assert_eq!(
            o.with_renew_margin_minutes(1439).unwrap().renew_margin,
            Duration::from_secs(1439 * 60)
        );
        for bad in [0, -1, 1440, i64::MAX] {
            assert_eq!(
                o.with_renew_margin_minutes(bad).unwrap_err().to_string(),
                "Invalid subnet-lease-renew-margin option, out of acceptable range"
            );
        }
    }

    #[test]
    fn renew_deadline_is_margin_before_expiry() {
        let key = "10.1.2.0-24".parse().unwrap();
        let mut lease = Lease::new(key, flannel_core::lease::LeaseAttrs::default());
        assert_eq!(
            renew_deadline(&lease, Duration::from_secs(60)),
            None,
            "reservations are not renewed"
        );
        lease.expiration = Some(SystemTime::now() + Duration::from_secs(7200));
        let at = renew_deadline(&lease, Duration::from_secs(3600)).unwrap();
        let d = at.duration_since(Instant::now());
        assert!(
            d > Duration::from_secs(3590) && d <= Duration::from_secs(3600),
            "{d:?}"
        );
        lease.expiration = Some(SystemTime::now() - Duration::from_secs(10));
        assert!(
            renew_deadline(&lease, Duration::from_secs(3600)).unwrap() <= Instant::now(),
            "overdue: now"
        );
    }
}
