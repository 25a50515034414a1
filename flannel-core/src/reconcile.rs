//! Desired-state reconciliation, shared by every backend.
//!
//! A backend states the objects it wants (routes, neighbours, FDB entries,
//! WireGuard peers, cloud routes, …) as a pure function of its own lease, the
//! remote leases and its config. A [`Reconciler`] then makes the world match:
//!
//! * **event batches** ([`Reconciler::update`]): the desired set is compared
//!   with what this reconciler applied last, in memory, so a lease event costs
//!   no listing of the kernel or of a cloud API;
//! * **full resyncs** ([`Reconciler::resync`]): the desired set is compared
//!   with a fresh listing ([`ObjectSet::list`]), so what an administrator
//!   deleted comes back and what belongs to leases that no longer exist goes.
//!
//! Both paths use the one planner, [`plan`], and are idempotent. They are
//! **ownership-aware**: an object in the listing that the backend does not own
//! ([`ObjectSet::owned`] is false: a connected route, another daemon's route)
//! is never changed or removed, even when it stands where a desired object
//! should be; it is reported once as *blocked* instead.
//!
//! A failed operation leaves the reconciler's memory as it was for that
//! object, so the next update or resync retries exactly what failed.
//!
//! ```
//! use flannel_core::reconcile::{plan, Object};
//!
//! #[derive(Clone, Debug, PartialEq)]
//! struct Peer { ip: u8, mac: u8, ours: bool }
//! impl Object for Peer {
//!     type Key = u8;
//!     fn key(&self) -> u8 { self.ip }
//!     fn satisfies(&self, desired: &Peer) -> bool { self.mac == desired.mac }
//!     fn describe(&self) -> String { format!("peer {}", self.ip) }
//! }
//!
//! let desired = [Peer { ip: 1, mac: 10, ours: true }, Peer { ip: 2, mac: 20, ours: true }];
//! let actual = [
//!     Peer { ip: 1, mac: 11, ours: true },  // wrong MAC: changed
//!     Peer { ip: 3, mac: 30, ours: true },  // not desired and ours: removed
//!     Peer { ip: 4, mac: 40, ours: false }, // not ours: left alone
//! ];
//! let p = plan(&desired, &actual, |p: &Peer| p.ours);
//! assert_eq!(p.add.len(), 1); // ip 2
//! assert_eq!(p.change.len(), 1);
//! assert_eq!(p.remove[0].ip, 3);
//! assert!(p.blocked.is_empty());
//! ```

use crate::backend::BackendError;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

/// One object a backend programs: a route, a neighbour, a peer.
pub trait Object: Clone + Send + Sync {
    /// What identifies the object: two objects with one key cannot both
    /// exist (a route's table, destination and prefix length).
    type Key: Ord + Clone + Debug + Send + Sync;

    /// The object's key.
    fn key(&self) -> Self::Key;

    /// Whether `self`, as found, fulfils `desired` (same key). Fields the
    /// system fills in by itself may be ignored here.
    fn satisfies(&self, desired: &Self) -> bool;

    /// The object in words, for logs and errors
    /// (`route 10.5.3.0/24 via 10.5.3.0 dev flannel.1 onlink`).
    fn describe(&self) -> String;
}

/// What to do to make a set match the desired one.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan<T> {
    /// Desired objects that are missing.
    pub add: Vec<T>,
    /// `(found, desired)`: objects of ours that exist with the wrong content.
    pub change: Vec<(T, T)>,
    /// Objects of ours that are not desired.
    pub remove: Vec<T>,
    /// `(found, desired)`: a desired object whose place is taken by an object
    /// that is not ours; nothing is done about it.
    pub blocked: Vec<(T, T)>,
}

impl<T> Default for Plan<T> {
    fn default() -> Self {
        Plan {
            add: Vec::new(),
            change: Vec::new(),
            remove: Vec::new(),
            blocked: Vec::new(),
        }
    }
}

impl<T> Plan<T> {
    /// Whether nothing needs doing (blocked objects aside).
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.change.is_empty() && self.remove.is_empty()
    }
}

/// Plans the operations that turn `actual` into `desired`, touching only
/// objects for which `owned` is true (see the module docs). When `desired`
/// holds several objects with one key, the last one wins.
pub fn plan<T: Object>(desired: &[T], actual: &[T], owned: impl Fn(&T) -> bool) -> Plan<T> {
    let mut want: BTreeMap<T::Key, &T> = BTreeMap::new();
    for d in desired {
        want.insert(d.key(), d);
    }
    let mut have: BTreeMap<T::Key, Vec<&T>> = BTreeMap::new();
    for a in actual {
        have.entry(a.key()).or_default().push(a);
    }
    let mut out = Plan::default();
    for (key, d) in &want {
        match have.get(key) {
            None => out.add.push((*d).clone()),
            Some(found) if found.iter().any(|a| a.satisfies(d)) => {}
            Some(found) => match found.iter().find(|a| owned(a)) {
                Some(a) => out.change.push(((*a).clone(), (*d).clone())),
                None => out.blocked.push((found[0].clone(), (*d).clone())),
            },
        }
    }
    for (key, found) in &have {
        if want.contains_key(key) {
            continue;
        }
        out.remove
            .extend(found.iter().filter(|a| owned(a)).map(|a| (*a).clone()));
    }
    out
}

/// A kind of object in one place (the main routing table, the neighbours of
/// one device, a WireGuard device's peers), and how to change it.
#[async_trait::async_trait]
pub trait ObjectSet<T: Object>: Send + Sync {
    /// Lists the objects that exist now (ours and others').
    async fn list(&self) -> Result<Vec<T>, BackendError>;

    /// Whether a listed object belongs to this backend (it may be changed
    /// or removed).
    fn owned(&self, object: &T) -> bool;

    /// Creates `object`.
    async fn add(&self, object: &T) -> Result<(), BackendError>;

    /// Turns `found` into `desired` (same key). Default: remove, then add.
    async fn change(&self, found: &T, desired: &T) -> Result<(), BackendError> {
        self.remove(found).await?;
        self.add(desired).await
    }

    /// Deletes `object`. Deleting an object that is already gone succeeds.
    async fn remove(&self, object: &T) -> Result<(), BackendError>;
}

/// What one [`Reconciler`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Objects created.
    pub added: usize,
    /// Objects corrected.
    pub changed: usize,
    /// Objects deleted.
    pub removed: usize,
    /// Objects blocked by another owner's object (each reported once).
    pub newly_blocked: Vec<String>,
}

/// `2 added, 1 changed, 0 removed` (and the newly blocked count, if any),
/// for logs.
impl std::fmt::Display for SyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} added, {} changed, {} removed",
            self.added, self.changed, self.removed
        )?;
        if !self.newly_blocked.is_empty() {
            write!(f, ", {} blocked", self.newly_blocked.len())?;
        }
        Ok(())
    }
}

impl SyncReport {
    /// Whether the pass changed anything.
    pub fn is_empty(&self) -> bool {
        self.added == 0 && self.changed == 0 && self.removed == 0
    }
}

/// A pass that did only part of its work: what it did, and why the rest
/// failed. Converts into the [`BackendError`] (so `?` works in a backend),
/// while a caller that reports what was repaired can still count it.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SyncFailure {
    /// What the pass did before and besides the failures.
    pub report: SyncReport,
    /// The failures (several are a [`BackendError::Many`]).
    pub error: BackendError,
}

impl From<SyncFailure> for BackendError {
    fn from(f: SyncFailure) -> BackendError {
        f.error
    }
}

/// Keeps one [`ObjectSet`] at the desired state (see the module docs).
#[derive(Debug)]
pub struct Reconciler<T: Object> {
    applied: BTreeMap<T::Key, T>,
    blocked: BTreeSet<T::Key>,
}

impl<T: Object> Default for Reconciler<T> {
    fn default() -> Self {
        Reconciler {
            applied: BTreeMap::new(),
            blocked: BTreeSet::new(),
        }
    }
}

impl<T: Object> Reconciler<T> {
    /// A reconciler that has applied nothing yet.
    pub fn new() -> Reconciler<T> {
        Reconciler::default()
    }

    /// The objects this reconciler believes are in place.
    pub fn applied(&self) -> impl Iterator<Item = &T> {
        self.applied.values()
    }

    /// Event path: applies the difference between `desired` and what was
    /// applied before, without listing anything.
    pub async fn update(
        &mut self,
        set: &dyn ObjectSet<T>,
        desired: &[T],
    ) -> Result<SyncReport, SyncFailure> {
        let applied: Vec<T> = self.applied.values().cloned().collect();
        // What we applied is ours by definition.
        let p = plan(desired, &applied, |_| true);
        self.execute(set, p).await
    }

    /// Resync path: lists the set and applies the difference between
    /// `desired` and what exists.
    pub async fn resync(
        &mut self,
        set: &dyn ObjectSet<T>,
        desired: &[T],
    ) -> Result<SyncReport, SyncFailure> {
        let actual = set.list().await.map_err(|error| SyncFailure {
            report: SyncReport::default(),
            error,
        })?;
        let p = plan(desired, &actual, |o| set.owned(o));
        // Rebuild the memory from the listing: what exists and is desired.
        self.applied.clear();
        let want: BTreeMap<T::Key, &T> = desired.iter().map(|d| (d.key(), d)).collect();
        for a in &actual {
            if let Some(d) = want.get(&a.key())
                && a.satisfies(d)
            {
                self.applied.insert(a.key(), (*d).clone());
            }
        }
        self.execute(set, p).await
    }

    async fn execute(
        &mut self,
        set: &dyn ObjectSet<T>,
        p: Plan<T>,
    ) -> Result<SyncReport, SyncFailure> {
        let mut report = SyncReport::default();
        let mut errors = Vec::new();
        let blocked_now: BTreeSet<T::Key> = p.blocked.iter().map(|(_, d)| d.key()).collect();
        for (found, want) in &p.blocked {
            if !self.blocked.contains(&want.key()) {
                report.newly_blocked.push(format!(
                    "{} is not programmed: {} is in its place and is not ours",
                    want.describe(),
                    found.describe()
                ));
            }
        }
        self.blocked = blocked_now;
        for object in &p.remove {
            match set.remove(object).await {
                Ok(()) => {
                    self.applied.remove(&object.key());
                    report.removed += 1;
                }
                Err(e) => errors.push(e),
            }
        }
        for (found, want) in &p.change {
            match set.change(found, want).await {
                Ok(()) => {
                    self.applied.insert(want.key(), want.clone());
                    report.changed += 1;
                }
                Err(e) => errors.push(e),
            }
        }
        for object in &p.add {
            match set.add(object).await {
                Ok(()) => {
                    self.applied.insert(object.key(), object.clone());
                    report.added += 1;
                }
                Err(e) => errors.push(e),
            }
        }
        match BackendError::collect(errors) {
            Ok(()) => Ok(report),
            Err(error) => Err(SyncFailure { report, error }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Debug, PartialEq)]
    struct Obj {
        k: u32,
        v: u32,
        ours: bool,
    }

    impl Object for Obj {
        type Key = u32;
        fn key(&self) -> u32 {
            self.k
        }
        fn satisfies(&self, d: &Obj) -> bool {
            self.v == d.v
        }
        fn describe(&self) -> String {
            format!("obj {}={}", self.k, self.v)
        }
    }

    fn o(k: u32, v: u32) -> Obj {
        Obj { k, v, ours: true }
    }

    #[derive(Default)]
    struct Store {
        objs: Mutex<BTreeMap<u32, Obj>>,
        ops: Mutex<Vec<String>>,
        fail: Mutex<BTreeSet<u32>>,
    }

    #[async_trait::async_trait]
    impl ObjectSet<Obj> for Store {
        async fn list(&self) -> Result<Vec<Obj>, BackendError> {
            self.ops.lock().unwrap().push("list".into());
            Ok(self.objs.lock().unwrap().values().cloned().collect())
        }
        fn owned(&self, o: &Obj) -> bool {
            o.ours
        }
        async fn add(&self, o: &Obj) -> Result<(), BackendError> {
            if self.fail.lock().unwrap().contains(&o.k) {
                return Err(BackendError::datapath(o.describe(), "injected"));
            }
            self.ops.lock().unwrap().push(format!("add {}", o.k));
            self.objs.lock().unwrap().insert(o.k, o.clone());
            Ok(())
        }
        async fn remove(&self, o: &Obj) -> Result<(), BackendError> {
            self.ops.lock().unwrap().push(format!("remove {}", o.k));
            self.objs.lock().unwrap().remove(&o.k);
            Ok(())
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // The futures here never wait on anything: poll until ready.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn planner_respects_ownership() {
        let foreign = Obj {
            k: 5,
            v: 0,
            ours: false,
        };
        let p = plan(&[o(5, 1), o(6, 1)], &[foreign.clone(), o(7, 7)], |x| x.ours);
        assert_eq!(p.add, vec![o(6, 1)]);
        assert!(p.change.is_empty());
        assert_eq!(p.remove, vec![o(7, 7)]);
        assert_eq!(p.blocked, vec![(foreign, o(5, 1))]);
    }

    #[test]
    fn update_diffs_memory_and_resync_repairs() {
        let store = Store::default();
        let mut r = Reconciler::new();
        let rep = block_on(r.update(&store, &[o(1, 1), o(2, 2)])).unwrap();
        assert_eq!((rep.added, rep.removed), (2, 0));
        // The same desired state again: nothing at all, no listing.
        store.ops.lock().unwrap().clear();
        let rep = block_on(r.update(&store, &[o(1, 1), o(2, 2)])).unwrap();
        assert!(rep.is_empty());
        assert!(store.ops.lock().unwrap().is_empty());
        // A lease went away and another changed.
        let rep = block_on(r.update(&store, &[o(1, 9)])).unwrap();
        assert_eq!((rep.added, rep.changed, rep.removed), (0, 1, 1));
        // Drift: someone deleted object 1 and added a foreign 3 and ours 4.
        store.objs.lock().unwrap().remove(&1);
        store.objs.lock().unwrap().insert(
            3,
            Obj {
                k: 3,
                v: 3,
                ours: false,
            },
        );
        store.objs.lock().unwrap().insert(4, o(4, 4));
        let rep = block_on(r.resync(&store, &[o(1, 9), o(3, 3)])).unwrap();
        assert_eq!((rep.added, rep.removed), (1, 1), "{rep:?}");
        let now: Vec<u32> = store.objs.lock().unwrap().keys().copied().collect();
        assert_eq!(now, vec![1, 3]);
    }

    #[test]
    fn failures_are_retried_and_blocks_reported_once() {
        let store = Store::default();
        store.fail.lock().unwrap().insert(2);
        let mut r = Reconciler::new();
        let e = block_on(r.update(&store, &[o(1, 1), o(2, 2)])).unwrap_err();
        assert_eq!(e.to_string(), "obj 2=2: injected");
        assert_eq!(e.report.added, 1, "what the pass did is still counted");
        store.fail.lock().unwrap().clear();
        let rep = block_on(r.update(&store, &[o(1, 1), o(2, 2)])).unwrap();
        assert_eq!(rep.added, 1, "only the failed object is retried");

        store.objs.lock().unwrap().insert(
            7,
            Obj {
                k: 7,
                v: 0,
                ours: false,
            },
        );
        let want = [o(1, 1), o(2, 2), o(7, 7)];
        let rep = block_on(r.resync(&store, &want)).unwrap();
        assert_eq!(rep.newly_blocked.len(), 1);
        assert_eq!(
            rep.newly_blocked[0],
            "obj 7=7 is not programmed: obj 7=0 is in its place and is not ours"
        );
        let rep = block_on(r.resync(&store, &want)).unwrap();
        assert!(rep.newly_blocked.is_empty(), "reported once");
    }
}
