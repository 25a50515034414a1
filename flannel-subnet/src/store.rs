//! The storage contract under the lease manager.
//!
//! A [`LeaseStore`] is a small key-value view of a datastore: the config value,
//! lease keys with TTLs, create-if-absent, and a watch from a revision. The
//! acquisition policy, renewal and the reconnecting lease watch are written
//! once, in [`LeaseManager`](crate::manager::LeaseManager), on top of it; the
//! embedded local store and etcd only implement this trait.

use flannel_core::key::SubnetKey;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::manager::ManagerError;
use std::pin::Pin;
use std::time::Duration;

/// Every lease in the store at one revision.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The leases, sorted by key text (etcd's order).
    pub leases: Vec<Lease>,
    /// The store revision the listing was read at; a watch from here misses
    /// nothing.
    pub revision: i64,
}

/// One change seen by a store watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A lease was written (created, renewed, overwritten).
    Put(Lease),
    /// A lease was deleted or expired.
    Delete(SubnetKey),
}

/// Changes up to and including `revision`.
#[derive(Debug, Clone, Default)]
pub struct StoreBatch {
    /// The changes, in order. Malformed entries are skipped by the store (with
    /// a warning), never turned into deletions.
    pub events: Vec<StoreEvent>,
    /// The revision of the last change in this batch.
    pub revision: i64,
}

/// A stream of watch batches. It ends, or yields an error, when the
/// connection is lost; [`ManagerError::Compacted`] means the revision asked
/// for is no longer available and the caller must re-list.
pub type StoreWatch =
    Pin<Box<dyn futures_core::Stream<Item = Result<StoreBatch, ManagerError>> + Send>>;

/// A datastore holding flannel's config and leases.
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// A short name for logs (`local`, `etcd`).
    fn name(&self) -> &'static str;

    /// The raw network configuration JSON.
    async fn get_config(&self) -> Result<String, ManagerError>;

    /// Every lease, and the revision of the listing.
    async fn list(&self) -> Result<Listing, ManagerError>;

    /// One lease, if it exists.
    async fn get(&self, key: &SubnetKey) -> Result<Option<Lease>, ManagerError>;

    /// Creates the lease only if the key does not exist, expiring after `ttl`;
    /// [`ManagerError::AlreadyExists`] otherwise.
    async fn create(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Lease, ManagerError>;

    /// Writes the lease whether or not it exists. `ttl: None` stores it
    /// without expiry (a reservation stays a reservation).
    async fn put(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Lease, ManagerError>;

    /// Deletes the lease (no error if it is already gone).
    async fn delete(&self, key: &SubnetKey) -> Result<(), ManagerError>;

    /// Watches lease changes after `revision`.
    async fn watch(&self, revision: i64) -> Result<StoreWatch, ManagerError>;
}
