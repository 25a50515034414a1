//! Lease events with explicit snapshot semantics, and the pure lease-watcher
//! diff.
//!
//! A subnet manager's watch yields [`LeaseWatchResult`]s: either a batch of
//! incremental [`LeaseEvent`]s or a full [`LeaseWatchResult::Snapshot`] of every
//! lease (at start and after a reconnect or an etcd compaction). Unlike Go
//! flannel, an empty batch never means "empty snapshot": a store that skips a
//! malformed entry just emits fewer events, and peers are only ever removed by
//! an explicit removal or by a snapshot that no longer lists them.
//!
//! [`LeaseWatcher`] turns that stream into what a backend acts on: events
//! relative to the leases it already knows, with its own lease filtered out,
//! plus a `resync` flag after a snapshot so the backend can garbage-collect
//! stale kernel state.
//!
//! ```
//! use flannel_core::event::{LeaseWatcher, LeaseWatchResult, EventKind};
//! use flannel_core::lease::{Lease, LeaseAttrs};
//! let lease = |k: &str| Lease::new(k.parse().unwrap(), LeaseAttrs::default());
//! let mut w = LeaseWatcher::new(Some(lease("10.5.1.0-24").key()));
//! let batch = w.apply(LeaseWatchResult::Snapshot(vec![lease("10.5.1.0-24"), lease("10.5.2.0-24")]));
//! assert!(batch.resync);
//! assert_eq!(batch.events.len(), 1); // our own lease is filtered out
//! assert_eq!(batch.events[0].kind, EventKind::Added);
//! let batch = w.apply(LeaseWatchResult::Snapshot(vec![lease("10.5.1.0-24")]));
//! assert_eq!(batch.events[0].kind, EventKind::Removed);
//! assert_eq!(w.len(), 0);
//! ```

use crate::key::SubnetKey;
use crate::lease::Lease;
use std::collections::HashMap;

/// What happened to a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The lease was created or changed (including a renewal).
    Added,
    /// The lease was deleted or expired.
    Removed,
}

/// One change to one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEvent {
    /// Added or removed.
    pub kind: EventKind,
    /// The lease; for a removal, the last known value when there is one.
    pub lease: Lease,
}

impl LeaseEvent {
    /// An `Added` event.
    pub fn added(lease: Lease) -> LeaseEvent {
        LeaseEvent {
            kind: EventKind::Added,
            lease,
        }
    }

    /// A `Removed` event.
    pub fn removed(lease: Lease) -> LeaseEvent {
        LeaseEvent {
            kind: EventKind::Removed,
            lease,
        }
    }

    /// The event as a log sentence in Go's words for a backend of type
    /// `backend`: a lease of another type is ignored, an added one is
    /// reached via its public address(es), a removed one is named.
    ///
    /// ```
    /// use flannel_core::event::LeaseEvent;
    /// use flannel_core::key::SubnetKey;
    /// use flannel_core::lease::{Lease, LeaseAttrs};
    ///
    /// let mut attrs = LeaseAttrs::new("192.168.0.2".parse().unwrap());
    /// attrs.backend_type = "ipsec".into();
    /// let key: SubnetKey = "10.5.2.0-24".parse().unwrap();
    /// let e = LeaseEvent::added(Lease::new(key, attrs));
    /// assert_eq!(e.describe("ipsec"), "Subnet added: 10.5.2.0-24 via 192.168.0.2");
    /// assert_eq!(e.describe("wireguard"), "Ignoring non-wireguard subnet 10.5.2.0-24: type=ipsec");
    /// ```
    pub fn describe(&self, backend: &str) -> String {
        let l = &self.lease;
        match self.kind {
            EventKind::Removed => format!("Subnet removed: {}", l.key()),
            EventKind::Added if l.attrs.backend_type != backend => format!(
                "Ignoring non-{backend} subnet {}: type={}",
                l.key(),
                l.attrs.backend_type
            ),
            EventKind::Added => match l.attrs.public_ipv6 {
                Some(v6) => format!(
                    "Subnet added: {} via {} and {v6}",
                    l.key(),
                    l.attrs.public_ip
                ),
                None => format!("Subnet added: {} via {}", l.key(), l.attrs.public_ip),
            },
        }
    }
}

/// One delivery from a lease watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseWatchResult {
    /// Incremental changes since the previous delivery.
    Events(Vec<LeaseEvent>),
    /// Every lease that exists now; anything not listed is gone.
    Snapshot(Vec<Lease>),
}

/// What a backend should do after one watch delivery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchBatch {
    /// Changes relative to the leases the watcher knew before.
    pub events: Vec<LeaseEvent>,
    /// True after a snapshot: the known set is now complete and authoritative,
    /// so kernel state for leases outside it may be garbage-collected.
    pub resync: bool,
}

/// The set of remote leases a node knows, updated from watch deliveries.
#[derive(Debug, Clone, Default)]
pub struct LeaseWatcher {
    own: Option<SubnetKey>,
    known: HashMap<SubnetKey, Lease>,
}

impl LeaseWatcher {
    /// A watcher that filters out the lease keyed `own` (this node's).
    pub fn new(own: Option<SubnetKey>) -> LeaseWatcher {
        LeaseWatcher {
            own,
            known: HashMap::new(),
        }
    }

    /// Changes which key counts as this node's own (after a re-acquisition).
    /// A known lease with that key is forgotten without an event.
    pub fn set_own(&mut self, own: Option<SubnetKey>) {
        if let Some(k) = own {
            self.known.remove(&k);
        }
        self.own = own;
    }

    fn is_own(&self, lease: &Lease) -> bool {
        self.own.is_some_and(|k| k == lease.key())
    }

    /// Applies one delivery and returns what changed.
    pub fn apply(&mut self, result: LeaseWatchResult) -> WatchBatch {
        match result {
            LeaseWatchResult::Events(events) => WatchBatch {
                events: self.update(events),
                resync: false,
            },
            LeaseWatchResult::Snapshot(leases) => WatchBatch {
                events: self.reset(leases),
                resync: true,
            },
        }
    }

    /// Replaces the known set with `leases`: `Removed` for leases that
    /// disappeared, then `Added` for leases that are new or changed, each group
    /// in key order. Removals come first because a peer that moved to another
    /// subnet keeps its VTEP MAC: removing the old lease after adding the new
    /// one would delete the shared FDB entry. (Go only reports new keys, so a
    /// peer that changed its MAC while we were disconnected would be missed.)
    pub fn reset(&mut self, leases: Vec<Lease>) -> Vec<LeaseEvent> {
        let mut next: HashMap<SubnetKey, Lease> = HashMap::with_capacity(leases.len());
        for lease in leases {
            if !self.is_own(&lease) {
                next.insert(lease.key(), lease);
            }
        }
        let mut removed: Vec<LeaseEvent> = self
            .known
            .iter()
            .filter(|(key, _)| !next.contains_key(key))
            .map(|(_, old)| LeaseEvent::removed(old.clone()))
            .collect();
        let mut added: Vec<LeaseEvent> = next
            .iter()
            .filter(|(key, new)| {
                !self
                    .known
                    .get(key)
                    .is_some_and(|old| old.same_datapath(new))
            })
            .map(|(_, new)| LeaseEvent::added(new.clone()))
            .collect();
        removed.sort_by_key(|e| e.lease.key());
        added.sort_by_key(|e| e.lease.key());
        removed.extend(added);
        self.known = next;
        removed
    }

    /// Incremental update: `Added` inserts or replaces (an unchanged lease is
    /// not re-reported), `Removed` forgets the lease and reports the last known
    /// value; a removal of an unknown lease is passed on as it came, so a
    /// backend can still clean up after it.
    pub fn update(&mut self, events: Vec<LeaseEvent>) -> Vec<LeaseEvent> {
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            if self.is_own(&event.lease) {
                continue;
            }
            let key = event.lease.key();
            match event.kind {
                EventKind::Added => {
                    let unchanged = self
                        .known
                        .get(&key)
                        .is_some_and(|old| old.same_datapath(&event.lease));
                    self.known.insert(key, event.lease.clone());
                    if !unchanged {
                        out.push(event);
                    }
                }
                EventKind::Removed => match self.known.remove(&key) {
                    Some(old) => out.push(LeaseEvent::removed(old)),
                    None => out.push(event),
                },
            }
        }
        out
    }

    /// Number of known remote leases.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// True when no remote lease is known.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The known lease for `key`, if any.
    pub fn get(&self, key: &SubnetKey) -> Option<&Lease> {
        self.known.get(key)
    }

    /// All known remote leases, sorted by key (stable for logs and tests).
    pub fn leases(&self) -> Vec<&Lease> {
        let mut v: Vec<&Lease> = self.known.values().collect();
        v.sort_by_key(|l| l.key());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use std::net::Ipv4Addr;

    fn lease(key: &str, ip: u8) -> Lease {
        Lease::new(
            key.parse().unwrap(),
            LeaseAttrs::new(Ipv4Addr::new(192, 168, 0, ip)),
        )
    }

    fn kinds(events: &[LeaseEvent]) -> Vec<(EventKind, String)> {
        events
            .iter()
            .map(|e| (e.kind, e.lease.key().to_string()))
            .collect()
    }

    #[test]
    fn snapshot_diff_adds_removes_and_changes() {
        let mut w = LeaseWatcher::new(Some("10.5.1.0-24".parse().unwrap()));
        let b = w.apply(LeaseWatchResult::Snapshot(vec![
            lease("10.5.2.0-24", 2),
            lease("10.5.3.0-24", 3),
            lease("10.5.1.0-24", 1),
        ]));
        assert!(b.resync);
        assert_eq!(
            kinds(&b.events),
            [
                (EventKind::Added, "10.5.2.0-24".into()),
                (EventKind::Added, "10.5.3.0-24".into())
            ]
        );
        // 10.5.2 unchanged, 10.5.3 gone, 10.5.4 new, and 10.5.5 appears with
        // a changed value for an existing key below.
        let mut changed = lease("10.5.2.0-24", 2);
        changed.expiration = Some(std::time::SystemTime::UNIX_EPOCH);
        let b = w.apply(LeaseWatchResult::Snapshot(vec![
            changed,
            lease("10.5.4.0-24", 4),
        ]));
        assert_eq!(
            kinds(&b.events),
            [
                (EventKind::Removed, "10.5.3.0-24".into()),
                (EventKind::Added, "10.5.4.0-24".into())
            ]
        );
        // The removal carries the last known attributes.
        assert_eq!(
            b.events[0].lease.attrs.public_ip,
            Ipv4Addr::new(192, 168, 0, 3)
        );
        let b = w.apply(LeaseWatchResult::Snapshot(vec![
            lease("10.5.2.0-24", 9),
            lease("10.5.4.0-24", 4),
        ]));
        assert_eq!(kinds(&b.events), [(EventKind::Added, "10.5.2.0-24".into())]);
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn empty_event_batch_is_not_a_snapshot() {
        let mut w = LeaseWatcher::new(None);
        w.apply(LeaseWatchResult::Snapshot(vec![lease("10.5.2.0-24", 2)]));
        let b = w.apply(LeaseWatchResult::Events(vec![]));
        assert_eq!(b, WatchBatch::default());
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn updates_filter_own_and_dedupe() {
        let mut w = LeaseWatcher::new(Some("10.5.1.0-24".parse().unwrap()));
        let out = w.update(vec![
            LeaseEvent::added(lease("10.5.1.0-24", 1)),
            LeaseEvent::added(lease("10.5.2.0-24", 2)),
            LeaseEvent::added(lease("10.5.2.0-24", 2)),
            LeaseEvent::added(lease("10.5.2.0-24", 7)),
        ]);
        assert_eq!(
            out.len(),
            2,
            "own lease and the unchanged repeat are dropped"
        );
        assert_eq!(out[1].lease.attrs.public_ip, Ipv4Addr::new(192, 168, 0, 7));
        // Removal of a known lease reports the cached value.
        let bare = Lease::new("10.5.2.0-24".parse().unwrap(), LeaseAttrs::default());
        let out = w.update(vec![LeaseEvent::removed(bare.clone())]);
        assert_eq!(out[0].lease.attrs.public_ip, Ipv4Addr::new(192, 168, 0, 7));
        // Removal of an unknown lease is passed on unchanged.
        let out = w.update(vec![LeaseEvent::removed(bare.clone())]);
        assert_eq!(out, vec![LeaseEvent::removed(bare)]);
        assert!(w.is_empty());
        assert!(
            w.update(vec![LeaseEvent::removed(lease("10.5.1.0-24", 1))])
                .is_empty()
        );
    }

    #[test]
    fn set_own_forgets_the_lease() {
        let mut w = LeaseWatcher::new(None);
        w.update(vec![
            LeaseEvent::added(lease("10.5.2.0-24", 2)),
            LeaseEvent::added(lease("10.5.3.0-24", 3)),
        ]);
        w.set_own(Some("10.5.2.0-24".parse().unwrap()));
        assert_eq!(
            w.leases()
                .iter()
                .map(|l| l.key().to_string())
                .collect::<Vec<_>>(),
            ["10.5.3.0-24"]
        );
        assert!(w.get(&"10.5.2.0-24".parse().unwrap()).is_none());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        /// A small universe of keys so snapshots overlap often.
        fn key(i: u8) -> String {
            let text = if i.is_multiple_of(5) {
                format!("10.9.{i}.0-24&fd00:{i}::-64")
            } else {
                format!("10.9.{i}.0-24")
            };
            text.parse::<SubnetKey>().unwrap().to_string()
        }

        #[derive(Debug, Clone)]
        enum Step {
            Snapshot(Vec<(u8, u8)>),
            Events(Vec<(bool, u8, u8)>),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                prop::collection::vec((0u8..12, 0u8..3), 0..10).prop_map(Step::Snapshot),
                prop::collection::vec((any::<bool>(), 0u8..12, 0u8..3), 0..10)
                    .prop_map(Step::Events),
            ]
        }

        proptest! {
            /// The watcher's known set always equals a model of "what exists
            /// minus our own lease", and replaying the emitted events on the
            /// previous known set yields the new one.
            #[test]
            fn diff_matches_model(steps in prop::collection::vec(step(), 1..20), own in 0u8..12) {
                let own_key = key(own);
                let mut w = LeaseWatcher::new(Some(own_key.parse().unwrap()));
                let mut model: BTreeMap<String, u8> = BTreeMap::new();
                for s in steps {
                    let before: BTreeMap<String, u8> = w.leases().iter()
                        .map(|l| (l.key().to_string(), l.attrs.public_ip.octets()[3])).collect();
                    let batch = match s {
                        Step::Snapshot(items) => {
                            model.clear();
                            for (k, v) in &items { model.insert(key(*k), *v); }
                            w.apply(LeaseWatchResult::Snapshot(items.iter().map(|(k, v)| lease(&key(*k), *v)).collect()))
                        }
                        Step::Events(items) => {
                            for (add, k, v) in &items {
                                if *add { model.insert(key(*k), *v); } else { model.remove(&key(*k)); }
                            }
                            w.apply(LeaseWatchResult::Events(items.iter().map(|(add, k, v)| {
                                let l = lease(&key(*k), *v);
                                if *add { LeaseEvent::added(l) } else { LeaseEvent::removed(l) }
                            }).collect()))
                        }
                    };
                    model.remove(&own_key);
                    let after: BTreeMap<String, u8> = w.leases().iter()
                        .map(|l| (l.key().to_string(), l.attrs.public_ip.octets()[3])).collect();
                    prop_assert_eq!(&after, &model);
                    prop_assert!(batch.events.iter().all(|e| e.lease.key().to_string() != own_key));
                    let mut replay = before;
                    for e in &batch.events {
                        match e.kind {
                            EventKind::Added => { replay.insert(e.lease.key().to_string(), e.lease.attrs.public_ip.octets()[3]); }
                            EventKind::Removed => { replay.remove(&e.lease.key().to_string()); }
                        }
                    }
                    prop_assert_eq!(replay, after);
                }
            }
        }
    }
}
