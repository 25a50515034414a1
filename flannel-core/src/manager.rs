//! The subnet manager contract: where leases come from.
//!
//! A [`SubnetManager`] is a datastore seen through flannel's eyes: it hands out
//! the network configuration, acquires and renews this node's lease, and
//! streams every lease change. Implementations (the embedded local store,
//! etcd, Kubernetes) live in `flannel-subnet`; this crate only defines the
//! shape, so backends and custom agents depend on nothing heavier.
//!
//! Watches are returned as [`LeaseStream`]s: plain `Stream`s the caller polls.
//! No implementation spawns a task behind the caller's back; dropping the
//! stream stops the watch.

use crate::config::{ConfigError, NetConfig};
use crate::event::LeaseWatchResult;
use crate::ip::{Ip4Net, Ip6Net};
use crate::key::SubnetKey;
use crate::lease::{Lease, LeaseAttrs};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::time::Duration;

/// A stream of watch deliveries. It starts with a
/// [`LeaseWatchResult::Snapshot`]; an `Err` item reports a problem the stream
/// did not hide (it may still yield more items afterwards, starting again with
/// a snapshot when the store had to re-list).
pub type LeaseStream =
    Pin<Box<dyn futures_core::Stream<Item = Result<LeaseWatchResult, ManagerError>> + Send>>;

/// How long a lease lives in stores with expiry (Go's `subnetTTL`).
pub const LEASE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Errors from a subnet manager.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The network configuration key or file does not exist.
    #[error("{0}")]
    ConfigNotFound(String),
    /// The stored configuration does not parse or validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No free subnet is left in the configured range.
    #[error("out of subnets")]
    OutOfSubnets,
    /// A create-if-absent lost the race: the key exists.
    #[error("subnet already exists: {0}")]
    AlreadyExists(SubnetKey),
    /// The lease does not exist (expired, deleted, never created).
    #[error("lease {0} not found")]
    LeaseNotFound(SubnetKey),
    /// The datastore could not be reached or answered with a transient error;
    /// the operation may be retried.
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
    /// A watch fell behind the store's history (etcd compaction); re-list.
    #[error("watch history compacted (at revision {0}); re-listing")]
    Compacted(i64),
    /// The operation has no meaning for this manager (e.g. renewal in
    /// Kubernetes mode).
    #[error("{operation} is not supported by the {manager} subnet manager")]
    Unsupported {
        /// What was asked.
        operation: &'static str,
        /// The manager's name.
        manager: &'static str,
    },
    /// A permanent error that fits no other kind (authentication refused,
    /// malformed stored data the manager cannot skip, ...).
    #[error("{0}")]
    Other(String),
}

impl ManagerError {
    /// True when retrying later may succeed (store unreachable, lost race,
    /// compaction); false for configuration and permanent errors.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ManagerError::Unavailable(_)
                | ManagerError::AlreadyExists(_)
                | ManagerError::Compacted(_)
        )
    }
}

/// What a node asks for when it acquires a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireRequest {
    /// The attributes to publish (public IP, backend type and data).
    pub attrs: LeaseAttrs,
    /// The IPv4 subnet this node held before (from `subnet.env`), reused when
    /// free and compatible with the configuration.
    pub previous_subnet: Option<Ip4Net>,
    /// The IPv6 subnet this node held before.
    pub previous_ipv6_subnet: Option<Ip6Net>,
}

impl AcquireRequest {
    /// A request with no previous subnet.
    pub fn new(attrs: LeaseAttrs) -> AcquireRequest {
        AcquireRequest {
            attrs,
            previous_subnet: None,
            previous_ipv6_subnet: None,
        }
    }
}

/// VTEP MAC addresses a store kept from before a restart (Kubernetes keeps
/// them in the node's `backend-data` annotations), as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredMacs {
    /// The IPv4 VTEP's MAC.
    pub v4: Option<String>,
    /// The IPv6 VTEP's MAC.
    pub v6: Option<String>,
}

/// A source of leases: local store, etcd or the Kubernetes API.
///
/// All methods take `&self`; implementations are shared (`Arc`) between the
/// runner, the renewal loop and health reporting.
#[async_trait::async_trait]
pub trait SubnetManager: Send + Sync {
    /// A short name for logs and errors (`local`, `etcd`, `kube`).
    fn name(&self) -> &'static str;

    /// The network configuration, parsed and validated (etcd re-reads it on
    /// every call, as Go does).
    async fn get_network_config(&self) -> Result<NetConfig, ManagerError>;

    /// Acquires this node's lease: reuse the lease already published for our
    /// public IP, else the previous subnet, else a free one.
    async fn acquire_lease(&self, request: &AcquireRequest) -> Result<Lease, ManagerError>;

    /// Extends `lease` and returns it with its new expiration.
    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, ManagerError>;

    /// Watches one lease (ours): a snapshot of `[lease]` (or `[]` when it does
    /// not exist), then its changes.
    async fn watch_lease(&self, key: SubnetKey) -> Result<LeaseStream, ManagerError>;

    /// Watches every lease: a snapshot, then changes, with a fresh snapshot
    /// whenever the stream had to re-list.
    async fn watch_leases(&self) -> Result<LeaseStream, ManagerError>;

    /// Called once the node is ready (datapath programmed, `subnet.env`
    /// written). Kubernetes clears the node's `NetworkUnavailable` condition
    /// here; other stores do nothing.
    async fn complete_lease(&self, _lease: &Lease) -> Result<(), ManagerError> {
        Ok(())
    }

    /// VTEP MACs kept by the store from a previous run, if it keeps any.
    async fn stored_mac_addresses(&self) -> StoredMacs {
        StoredMacs::default()
    }

    /// Public addresses configured in the store for this node (Kubernetes'
    /// `node-public-ip` annotations), overriding `--public-ip`.
    async fn stored_public_ips(&self) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        (None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_and_transience() {
        let key: SubnetKey = "10.5.72.0-24".parse().unwrap();
        let cases: Vec<(ManagerError, &str, bool)> = vec![
            (ManagerError::OutOfSubnets, "out of subnets", false),
            (
                ManagerError::AlreadyExists(key),
                "subnet already exists: 10.5.72.0-24",
                true,
            ),
            (
                ManagerError::LeaseNotFound(key),
                "lease 10.5.72.0-24 not found",
                false,
            ),
            (
                ManagerError::Unavailable("connection refused".into()),
                "datastore unavailable: connection refused",
                true,
            ),
            (
                ManagerError::Compacted(42),
                "watch history compacted (at revision 42); re-listing",
                true,
            ),
            (
                ManagerError::Unsupported {
                    operation: "renew_lease",
                    manager: "kube",
                },
                "renew_lease is not supported by the kube subnet manager",
                false,
            ),
            (
                ManagerError::Config(ConfigError::NoStack),
                "none defined stack",
                false,
            ),
            (
                ManagerError::ConfigNotFound("no config".into()),
                "no config",
                false,
            ),
            (ManagerError::Other("x".into()), "x", false),
        ];
        for (e, text, transient) in cases {
            assert_eq!(e.to_string(), text);
            assert_eq!(e.is_transient(), transient, "{text}");
        }
        assert_eq!(LEASE_TTL.as_secs(), 86_400);
        let r = AcquireRequest::new(LeaseAttrs::default());
        assert_eq!((r.previous_subnet, r.previous_ipv6_subnet), (None, None));
    }
}
