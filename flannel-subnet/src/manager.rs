//! [`LeaseManager`]: the [`SubnetManager`] for any [`LeaseStore`].
//!
//! Acquisition follows Go flannel's order — reuse the lease already published
//! for our public IP (deleting it when the config changed), else the previous
//! subnet from `subnet.env`, else a random free subnet — with these
//! deliberate differences:
//! - a lost create race is retried with another subnet instead of failing;
//! - a reservation (a key without TTL) is reused and stays without TTL;
//! - an IPv6-only node is matched by its public IPv6 address.
//!
//! The lease watch re-lists and resumes by itself: it starts with a snapshot,
//! reconnects after errors with exponential backoff (100 ms doubling to 5 s),
//! re-lists after a compaction (emitting a fresh snapshot), and yields an
//! empty event batch after each successful reconnect as an "in sync again"
//! marker. Errors are yielded to the caller, which decides how loudly to log.

use crate::allocator::{allocate, is_compatible, previous_key, random_index};
use crate::store::{LeaseStore, StoreEvent, StoreWatch};
use flannel_core::config::NetConfig;
use flannel_core::event::{LeaseEvent, LeaseWatchResult};
use flannel_core::ip::GoIp;
use flannel_core::key::SubnetKey;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::manager::{AcquireRequest, LEASE_TTL, LeaseStream, ManagerError, SubnetManager};
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// How many create races an acquisition survives before giving up (the
/// caller then retries later; the error is transient).
pub const RACE_RETRIES: usize = 32;

/// Reconnect backoff bounds for lease watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The delay after `delay`: doubled, capped at `max`.
    pub fn next(&self, delay: Duration) -> Duration {
        (delay * 2).clamp(self.min, self.max)
    }
}

type Picker = Box<dyn FnMut(usize) -> usize + Send>;

/// A subnet manager over a [`LeaseStore`].
pub struct LeaseManager<S: LeaseStore> {
    store: Arc<S>,
    backoff: Backoff,
    picker: Mutex<Picker>,
}

impl<S: LeaseStore> LeaseManager<S> {
    /// A manager with Go's random subnet choice and the default backoff.
    pub fn new(store: S) -> LeaseManager<S> {
        Self::from_arc(Arc::new(store))
    }

    /// Like [`LeaseManager::new`] for a store shared with other code.
    pub fn from_arc(store: Arc<S>) -> LeaseManager<S> {
        LeaseManager {
            store,
            backoff: Backoff::default(),
            picker: Mutex::new(Box::new(random_index)),
        }
    }

    /// Replaces the random choice among free subnets (tests fix it).
    pub fn with_picker(self, picker: impl FnMut(usize) -> usize + Send + 'static) -> Self {
        LeaseManager {
            picker: Mutex::new(Box::new(picker)),
            ..self
        }
    }

    /// Replaces the watch reconnect backoff.
    pub fn with_backoff(self, backoff: Backoff) -> Self {
        LeaseManager { backoff, ..self }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    fn pick(&self, n: usize) -> usize {
        let mut picker = self.picker.lock().unwrap_or_else(|e| e.into_inner());
        picker(n)
    }
}

/// `ip: <v4> ipv6: <v6>` as Go logs a lease.
fn describe(key: &SubnetKey) -> String {
    let v6 = key
        .ipv6()
        .map(|n| n.to_string())
        .unwrap_or_else(|| "nil".into());
    let v4 = key
        .ipv4()
        .map(|n| n.to_string())
        .unwrap_or_else(|| "nil".into());
    format!("ip: {v4} ipv6: {v6}")
}

/// The lease published for our public address: the IPv4 address as in Go, or
/// the IPv6 address when we have no IPv4 one. When several leases carry our
/// address (a node that moved, a copied lease), the one named by `previous`
/// (our `subnet.env`) wins; Go takes whichever comes first.
fn ours<'a>(
    leases: &'a [Lease],
    attrs: &LeaseAttrs,
    previous: Option<&SubnetKey>,
) -> Option<&'a Lease> {
    let mine = |l: &&Lease| {
        if !attrs.public_ip.is_unspecified() {
            l.attrs.public_ip == attrs.public_ip
        } else {
            attrs.public_ipv6.is_some() && l.attrs.public_ipv6 == attrs.public_ipv6
        }
    };
    let named = previous.and_then(|p| leases.iter().filter(mine).find(|l| l.key() == *p));
    named.or_else(|| leases.iter().find(mine))
}

fn overlaps_any(key: &SubnetKey, taken: &[SubnetKey]) -> bool {
    taken.iter().any(|t| {
        key.ipv4()
            .zip(t.ipv4())
            .is_some_and(|(a, b)| a.overlaps(&b))
            || key
                .ipv6()
                .zip(t.ipv6())
                .is_some_and(|(a, b)| a.overlaps(&b))
    })
}

impl<S: LeaseStore> LeaseManager<S> {
    async fn try_create(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
    ) -> Result<Option<Lease>, ManagerError> {
        match self.store.create(key, attrs, LEASE_TTL).await {
            Ok(lease) => Ok(Some(lease)),
            Err(ManagerError::AlreadyExists(_)) => {
                info!("subnet {key} was taken concurrently; trying another");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait::async_trait]
impl<S: LeaseStore> SubnetManager for LeaseManager<S> {
    fn name(&self) -> &'static str {
        self.store.name()
    }

    async fn get_network_config(&self) -> Result<NetConfig, ManagerError> {
        let raw = self.store.get_config().await?;
        let mut cfg = NetConfig::parse(&raw)?;
        cfg.check()?;
        Ok(cfg)
    }

    async fn acquire_lease(&self, req: &AcquireRequest) -> Result<Lease, ManagerError> {
        let cfg = self.get_network_config().await?;
        cfg.stack()?;
        let attrs = &req.attrs;
        let public = match attrs.public_ipv6 {
            Some(v6) if attrs.public_ip.is_unspecified() => GoIp(v6).to_string(),
            _ => attrs.public_ip.to_string(),
        };
        let mut lost: Vec<SubnetKey> = Vec::new();
        let mut skipped_reservation: Option<SubnetKey> = None;
        let mut previous = previous_key(&cfg, req.previous_subnet, req.previous_ipv6_subnet);
        for _ in 0..RACE_RETRIES {
            let listing = self.store.list().await?;
            let mut leases = listing.leases;
            if let Some(existing) = ours(&leases, attrs, previous.as_ref())
                .filter(|l| Some(l.key()) != skipped_reservation)
            {
                let key = existing.key();
                if is_compatible(&cfg, &key) {
                    info!(
                        "Found lease ({}) for current IP ({public}), reusing",
                        describe(&key)
                    );
                    let ttl = (!existing.is_reservation()).then_some(LEASE_TTL);
                    return self.store.put(&key, attrs, ttl).await;
                }
                if existing.is_reservation() {
                    warn!(
                        "Found reservation ({}) for current IP ({public}), but it is not compatible with the \
                         current config; leaving it in place and allocating another subnet",
                        describe(&key)
                    );
                    skipped_reservation = Some(key);
                } else {
                    // Never delete a lease on the way to failing: when no
                    // subnet of the new config is free (a full or narrowed
                    // range), keep the old lease and report the shortage.
                    let others: Vec<SubnetKey> = leases
                        .iter()
                        .map(Lease::key)
                        .filter(|k| *k != key)
                        .chain(lost.iter().copied())
                        .collect();
                    if let Err(e) = allocate(&cfg, &others, &mut |_| 0) {
                        warn!(
                            "Found lease ({}) for current IP ({public}) but not compatible with current config, \
                             and the config has no free subnet to replace it; keeping it",
                            describe(&key)
                        );
                        return Err(e);
                    }
                    info!(
                        "Found lease ({}) for current IP ({public}) but not compatible with current config, deleting",
                        describe(&key)
                    );
                    self.store.delete(&key).await?;
                    leases.retain(|l| l.key() != key);
                }
            }
            let mut taken: Vec<SubnetKey> = leases.iter().map(Lease::key).collect();
            taken.extend(lost.iter().copied());
            if let Some(prev) = previous.take() {
                if !is_compatible(&cfg, &prev) {
                    info!(
                        "Found previously leased subnet ({}) that is not compatible with the network config, ignoring",
                        describe(&prev)
                    );
                } else if !overlaps_any(&prev, &taken) {
                    info!(
                        "Found previously leased subnet ({}), reusing",
                        describe(&prev)
                    );
                    match self.try_create(&prev, attrs).await? {
                        Some(lease) => return Ok(lease),
                        None => lost.push(prev),
                    }
                    continue;
                }
            }
            let key = allocate(&cfg, &taken, &mut |n| self.pick(n))?;
            match self.try_create(&key, attrs).await? {
                Some(lease) => {
                    info!(
                        "Allocated lease ({}) to current node ({public})",
                        describe(&key)
                    );
                    return Ok(lease);
                }
                None => lost.push(key),
            }
        }
        Err(ManagerError::AlreadyExists(
            *lost.last().expect("every failed attempt records a key"),
        ))
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, ManagerError> {
        let key = lease.key();
        if lease.is_reservation() {
            // A reservation never expires; renewing only confirms it exists.
            return self
                .store
                .get(&key)
                .await?
                .ok_or(ManagerError::LeaseNotFound(key));
        }
        self.store.put(&key, &lease.attrs, Some(LEASE_TTL)).await
    }

    async fn watch_lease(&self, key: SubnetKey) -> Result<LeaseStream, ManagerError> {
        let all = self.watch_leases().await?;
        Ok(Box::pin(all.map(move |item| {
            item.map(|result| match result {
                LeaseWatchResult::Snapshot(ls) => {
                    LeaseWatchResult::Snapshot(ls.into_iter().filter(|l| l.key() == key).collect())
                }
                LeaseWatchResult::Events(es) => LeaseWatchResult::Events(
                    es.into_iter().filter(|e| e.lease.key() == key).collect(),
                ),
            })
        })))
    }

    async fn watch_leases(&self) -> Result<LeaseStream, ManagerError> {
        Ok(watch_stream(self.store.clone(), self.backoff))
    }
}

enum Phase {
    List,
    Connect { reconnect: bool },
    Watch(StoreWatch),
    Sleep { then_list: bool },
}

struct WatchState<S> {
    store: Arc<S>,
    revision: i64,
    phase: Phase,
    backoff: Backoff,
    delay: Duration,
}

fn to_event(e: StoreEvent) -> LeaseEvent {
    match e {
        StoreEvent::Put(lease) => LeaseEvent::added(lease),
        StoreEvent::Delete(key) => LeaseEvent::removed(Lease::new(key, LeaseAttrs::default())),
    }
}

/// The reconnecting watch of every lease (see the module docs).
pub fn watch_stream<S: LeaseStore>(store: Arc<S>, backoff: Backoff) -> LeaseStream {
    let state = WatchState {
        store,
        revision: 0,
        phase: Phase::List,
        backoff,
        delay: backoff.min,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        loop {
            match std::mem::replace(&mut st.phase, Phase::List) {
                Phase::List => match st.store.list().await {
                    Ok(listing) => {
                        st.revision = listing.revision;
                        st.delay = st.backoff.min;
                        st.phase = Phase::Connect { reconnect: false };
                        return Some((Ok(LeaseWatchResult::Snapshot(listing.leases)), st));
                    }
                    Err(e) => {
                        st.phase = Phase::Sleep { then_list: true };
                        return Some((Err(e), st));
                    }
                },
                Phase::Connect { reconnect } => match st.store.watch(st.revision).await {
                    Ok(w) => {
                        st.phase = Phase::Watch(w);
                        if reconnect {
                            // Tell the consumer the watch is live again.
                            return Some((Ok(LeaseWatchResult::Events(Vec::new())), st));
                        }
                    }
                    Err(ManagerError::Compacted(_)) => st.phase = Phase::List,
                    Err(e) => {
                        st.phase = Phase::Sleep { then_list: false };
                        return Some((Err(e), st));
                    }
                },
                Phase::Watch(mut w) => match w.next().await {
                    Some(Ok(batch)) => {
                        st.revision = st.revision.max(batch.revision);
                        st.delay = st.backoff.min;
                        st.phase = Phase::Watch(w);
                        if !batch.events.is_empty() {
                            let events = batch.events.into_iter().map(to_event).collect();
                            return Some((Ok(LeaseWatchResult::Events(events)), st));
                        }
                    }
                    Some(Err(ManagerError::Compacted(rev))) => {
                        warn!("lease watch fell behind a compaction at revision {rev}; re-listing");
                        st.phase = Phase::List;
                    }
                    Some(Err(e)) => {
                        st.phase = Phase::Sleep { then_list: false };
                        return Some((Err(e), st));
                    }
                    None => {
                        st.phase = Phase::Sleep { then_list: false };
                        let e =
                            ManagerError::Unavailable(format!("{} watch closed", st.store.name()));
                        return Some((Err(e), st));
                    }
                },
                Phase::Sleep { then_list } => {
                    tokio::time::sleep(st.delay).await;
                    st.delay = st.backoff.next(st.delay);
                    st.phase = if then_list {
                        Phase::List
                    } else {
                        Phase::Connect { reconnect: true }
                    };
                }
            }
        }
    }))
}
