//! The backend contract: how a datapath is set up and kept in step with the
//! leases.
//!
//! # How a backend is driven
//!
//! 1. **Register.** The daemon (or an embedding agent) builds a
//!    [`HostContext`] once (data directory, environment lookups, handles
//!    such as the netlink connection as [`Extensions`]), then a
//!    [`RegisterContext`] per network — the validated [`NetConfig`], the
//!    chosen [`ExternalInterface`], the [`SubnetManager`] and the host
//!    context — and calls [`Backend::register_network`]. The backend decodes
//!    its options from `config.backend`, creates what must exist before the
//!    lease (devices, keys, child processes), builds its [`LeaseAttrs`]
//!    (public IP, backend type, backend data such as a VTEP MAC or a
//!    WireGuard public key) and acquires the lease through
//!    [`RegisterContext::acquire_lease`]. It then configures the local side
//!    (addresses on its device) and returns its [`Network`].
//! 2. **Lease.** The caller writes `subnet.env` with [`Network::lease`] and
//!    [`Network::mtu`], then tells the manager
//!    ([`SubnetManager::complete_lease`]).
//! 3. **Driver.** A backend with a userspace datapath (udp, userspace
//!    WireGuard) or a supervised helper (charon) hands out a [`Driver`]
//!    through [`Network::take_driver`]. The runner gives it to the caller's
//!    executor, so the datapath runs apart from the handlers below and never
//!    stalls while they work.
//! 4. **Events.** The runner watches all leases, filters them through a
//!    [`LeaseWatcher`](crate::event::LeaseWatcher) (our own lease removed),
//!    and passes each batch of changes, with the complete set of remote
//!    leases, to [`Network::handle_events`].
//! 5. **Resync.** After every snapshot (start, reconnect, compaction), every
//!    [`Network::resync_interval`] and whenever the backend's
//!    [`ResyncTrigger`] fires, the runner calls [`Network::resync`] with the
//!    complete set of remote leases. The backend makes the world match it:
//!    restores what an admin deleted, removes what belongs to leases that no
//!    longer exist. A failed resync or event batch is retried after the
//!    backend's [`RetryPolicy`] (exponential, capped, jittered).
//! 6. **Renewal.** When the runner renews or re-acquires the lease it calls
//!    [`Network::lease_changed`].
//! 7. **Shutdown.** The caller stops the runner and calls
//!    [`Network::shutdown`]. A backend stops what cannot outlive the process
//!    (a userspace loop, a child process) but **never tears down the kernel
//!    datapath**: devices, routes, neighbours and FDB entries stay, so a
//!    restarted flanneld takes over without dropping a packet.
//!
//! Most backends state the objects they want as a pure function of the
//! leases and let a [`Reconciler`](crate::reconcile::Reconciler) apply event
//! batches and resyncs alike; no backend spawns tasks of its own.

use crate::config::NetConfig;
use crate::event::LeaseEvent;
use crate::ip::{Ip4Net, Ip6Net};
use crate::lease::{Lease, LeaseAttrs};
use crate::manager::{AcquireRequest, ManagerError, SubnetManager};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The host interface flannel sends encapsulated or routed traffic through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Interface MTU.
    pub mtu: u32,
    /// The interface's IPv4 address in use (Go's `IfaceAddr`).
    pub iface_addr: Option<Ipv4Addr>,
    /// The interface's IPv6 address in use (`IfaceV6Addr`).
    pub iface_v6_addr: Option<Ipv6Addr>,
    /// The IPv4 address other nodes reach us at: `--public-ip` or the
    /// interface address (`ExtAddr`).
    pub ext_addr: Option<Ipv4Addr>,
    /// The IPv6 address other nodes reach us at (`ExtV6Addr`).
    pub ext_v6_addr: Option<Ipv6Addr>,
}

/// Errors from a backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend's options in `net-conf.json` are invalid.
    #[error("invalid {backend} backend configuration: {reason}")]
    Config {
        /// The backend type.
        backend: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The backend refuses to run in this environment (e.g. host-gw behind
    /// NAT); carries the full message.
    #[error("{0}")]
    Refused(String),
    /// The subnet manager failed.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// Programming a kernel object (or talking to a helper process) failed;
    /// `object` names it (`route 10.5.3.0/24 via 10.5.3.0 dev flannel.1`).
    #[error("{object}: {source}")]
    Datapath {
        /// The object acted on.
        object: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Several failures from one pass (resync keeps going past errors).
    #[error("{} errors, first: {}", .0.len(), .0.first().map(|e| e.to_string()).unwrap_or_default())]
    Many(Vec<BackendError>),
    /// Our lease moved to a subnet the backend cannot switch to in place.
    #[error("the lease moved from {old} to {new}; the {backend} backend must be restarted")]
    LeaseMoved {
        /// The backend type.
        backend: &'static str,
        /// The old lease key.
        old: String,
        /// The new lease key.
        new: String,
    },
}

impl BackendError {
    /// A [`BackendError::Config`]: the options of the `backend` type broke
    /// the rule `reason` states.
    pub fn config(backend: &'static str, reason: impl Into<String>) -> BackendError {
        BackendError::Config {
            backend,
            reason: reason.into(),
        }
    }

    /// A [`BackendError::Datapath`] for `object`.
    pub fn datapath(
        object: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> BackendError {
        BackendError::Datapath {
            object: object.into(),
            source: source.into(),
        }
    }

    /// Folds the errors of one pass: `Ok` when empty, the error itself when
    /// there is one, [`BackendError::Many`] otherwise.
    pub fn collect(mut errors: Vec<BackendError>) -> Result<(), BackendError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(BackendError::Many(errors)),
        }
    }
}

/// The usual [`Network::lease_changed`]: adopt a renewal of the same subnets
/// into `current`, refuse a move to other subnets with
/// [`BackendError::LeaseMoved`].
pub fn follow_renewal(
    current: &mut Lease,
    new: &Lease,
    backend: &'static str,
) -> Result<(), BackendError> {
    if new.key() != current.key() {
        return Err(BackendError::LeaseMoved {
            backend,
            old: current.key().to_string(),
            new: new.key().to_string(),
        });
    }
    *current = new.clone();
    Ok(())
}

/// A future the caller must poll for the network's lifetime (a userspace
/// datapath loop); it ends with the network's shutdown or an error.
pub type Driver = Pin<Box<dyn Future<Output = Result<(), BackendError>> + Send>>;

/// A stream that yields whenever the datapath needs a resync right away
/// (someone deleted a device of ours); the runner resyncs on each item,
/// coalescing bursts.
pub type ResyncTrigger = Pin<Box<dyn futures_core::Stream<Item = ()> + Send>>;

/// The default data directory (`/run/flannel`): key files, sockets and state
/// files of backends live here.
pub const DEFAULT_DATA_DIR: &str = "/run/flannel";

/// Environment lookups: `WIREGUARD_KEY_FILE`, `ACCESS_KEY_ID`, … A function
/// so tests and embedders can answer without touching the process
/// environment.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Values of any type, at most one per type: the handles a backend needs
/// beyond plain data (a netlink handle, an HTTP client, a VICI socket path).
///
/// ```
/// use flannel_core::backend::Extensions;
/// #[derive(Debug, PartialEq)]
/// struct CharonSocket(String);
/// let mut ext = Extensions::default();
/// ext.insert(CharonSocket("unix:///run/charon.vici".into()));
/// assert_eq!(ext.get::<CharonSocket>().unwrap().0, "unix:///run/charon.vici");
/// assert!(ext.get::<u32>().is_none());
/// ```
#[derive(Clone, Default)]
pub struct Extensions {
    map: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Extensions {
    /// Stores `value`, replacing a previous value of its type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.map.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T`, if one was stored.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.map.get(&TypeId::of::<T>())?.downcast_ref()
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Extensions({} values)", self.map.len())
    }
}

/// What the host offers every backend, whatever its network: the data
/// directory, environment lookups and typed [`Extensions`]. Built once by
/// the daemon or the embedding agent.
///
/// ```
/// use flannel_core::backend::HostContext;
/// let host = HostContext::default()
///     .with_data_dir("/tmp/flannel-test")
///     .with_env(|name| (name == "WIREGUARD_KEY_FILE").then(|| "/tmp/wg.key".to_string()));
/// assert_eq!(host.env("WIREGUARD_KEY_FILE").as_deref(), Some("/tmp/wg.key"));
/// assert_eq!(host.env("PATH"), None);
/// assert_eq!(host.data_dir.to_str(), Some("/tmp/flannel-test"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct HostContext {
    /// Where backends keep files (`/run/flannel` by default).
    pub data_dir: PathBuf,
    /// Handles for backends (the netlink handle, clients, paths).
    pub extensions: Extensions,
    env: EnvLookup,
}

impl Default for HostContext {
    /// [`DEFAULT_DATA_DIR`], no extensions, and an environment in which
    /// nothing is set.
    fn default() -> Self {
        HostContext {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            extensions: Extensions::default(),
            env: Arc::new(|_| None),
        }
    }
}

impl std::fmt::Debug for HostContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostContext")
            .field("data_dir", &self.data_dir)
            .field("extensions", &self.extensions)
            .finish_non_exhaustive()
    }
}

impl HostContext {
    /// Sets the data directory.
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> HostContext {
        self.data_dir = dir.into();
        self
    }

    /// Sets how environment variables are looked up (the daemon passes
    /// `std::env::var`).
    pub fn with_env(
        mut self,
        lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> HostContext {
        self.env = Arc::new(lookup);
        self
    }

    /// Adds an extension value.
    pub fn with_extension<T: Any + Send + Sync>(mut self, value: T) -> HostContext {
        self.extensions.insert(value);
        self
    }

    /// Looks up an environment variable.
    pub fn env(&self, name: &str) -> Option<String> {
        (self.env)(name)
    }

    /// The extension of type `T`, or a [`BackendError::Refused`] naming what
    /// `backend` is missing.
    pub fn require<T: Any + Send + Sync>(
        &self,
        backend: &str,
        what: &str,
    ) -> Result<&T, BackendError> {
        self.extensions.get::<T>().ok_or_else(|| {
            BackendError::Refused(format!(
                "the {backend} backend needs {what}, and the host context has none"
            ))
        })
    }
}

/// Everything a backend needs to register its network.
pub struct RegisterContext<'a> {
    /// The validated network configuration.
    pub config: &'a NetConfig,
    /// The external interface and public addresses.
    pub ext_iface: &'a ExternalInterface,
    /// The lease source.
    pub manager: &'a dyn SubnetManager,
    /// This node's IPv4 subnet from the previous run (`subnet.env`).
    pub previous_subnet: Option<Ip4Net>,
    /// This node's IPv6 subnet from the previous run.
    pub previous_ipv6_subnet: Option<Ip6Net>,
    /// Data directory, environment and handles.
    pub host: &'a HostContext,
}

impl RegisterContext<'_> {
    /// Acquires the lease for `attrs`, passing on the previous subnets.
    pub async fn acquire_lease(&self, attrs: LeaseAttrs) -> Result<Lease, ManagerError> {
        let request = AcquireRequest {
            attrs,
            previous_subnet: self.previous_subnet,
            previous_ipv6_subnet: self.previous_ipv6_subnet,
        };
        self.manager.acquire_lease(&request).await
    }
}

/// How the runner retries a failed resync or event batch: exponential
/// backoff from `min` to `max`, each delay spread by up to ±`jitter` of
/// itself so that a fleet of nodes does not retry in step. A backend that
/// talks to a rate-limited API sets a longer one
/// ([`Network::retry_policy`]).
///
/// ```
/// use flannel_core::backend::RetryPolicy;
/// use std::time::Duration;
/// let p = RetryPolicy::default();
/// let mut d = p.min;
/// for _ in 0..20 { d = p.next(d); }
/// assert_eq!(d, p.max);
/// // A random number in [0, 1) picks the jitter: 0.5 is no jitter.
/// assert_eq!(p.jittered(Duration::from_secs(10), 0.5), Duration::from_secs(10));
/// assert_eq!(p.jittered(Duration::from_secs(10), 0.0), Duration::from_secs(8));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The first delay.
    pub min: Duration,
    /// The largest delay.
    pub max: Duration,
    /// The spread, as a fraction of the delay (0.2 = ±20 %).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// 1 s doubling to 2 min, ±20 %.
    fn default() -> Self {
        RetryPolicy {
            min: Duration::from_secs(1),
            max: Duration::from_secs(120),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// A policy from `min` to `max` with ±20 % jitter.
    pub fn new(min: Duration, max: Duration) -> RetryPolicy {
        RetryPolicy {
            min,
            max: max.max(min),
            ..RetryPolicy::default()
        }
    }

    /// The delay after `delay`: doubled, within `min..=max`.
    pub fn next(&self, delay: Duration) -> Duration {
        delay.saturating_mul(2).clamp(self.min, self.max)
    }

    /// `delay` spread by the jitter; `unit` is a random number in `[0, 1)`.
    pub fn jittered(&self, delay: Duration, unit: f64) -> Duration {
        let factor = 1.0 + self.jitter.clamp(0.0, 1.0) * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        delay.mul_f64(factor)
    }
}

/// A backend type: a factory for its [`Network`].
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// The `Backend.Type` string (`vxlan`, `host-gw`, ...).
    fn backend_type(&self) -> &'static str;

    /// Creates the datapath, acquires the lease and returns the network.
    async fn register_network(
        &self,
        ctx: &RegisterContext<'_>,
    ) -> Result<Box<dyn Network>, BackendError>;
}

/// One registered network: the lease plus the datapath that serves it.
#[async_trait::async_trait]
pub trait Network: Send {
    /// The lease this network holds.
    fn lease(&self) -> &Lease;

    /// The MTU pods should use (written to `subnet.env`).
    fn mtu(&self) -> u32;

    /// Applies incremental lease changes (our own lease never appears).
    /// `leases` is the complete set of remote leases after the changes, so
    /// a backend that derives its state from all leases (most do, through a
    /// [`Reconciler`](crate::reconcile::Reconciler)) needs no copy of its own.
    async fn handle_events(
        &mut self,
        events: &[LeaseEvent],
        leases: &[&Lease],
    ) -> Result<(), BackendError>;

    /// Makes the datapath match exactly `leases`, the complete set of remote
    /// leases: adds what is missing, removes what is stale.
    async fn resync(&mut self, leases: &[&Lease]) -> Result<(), BackendError>;

    /// How many of the leases given to the last [`Network::handle_events`]
    /// or [`Network::resync`] this backend could not decode (malformed
    /// backend data of its own type): they are skipped, and the runner does
    /// not count them as known leases. Default: 0.
    fn undecodable_leases(&self) -> usize {
        0
    }

    /// How often the runner should call [`Network::resync`] besides after
    /// snapshots; `None` for only after snapshots.
    fn resync_interval(&self) -> Option<Duration> {
        None
    }

    /// How a failed resync or event batch is retried. Default:
    /// [`RetryPolicy::default`].
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::default()
    }

    /// Hands out a [`ResyncTrigger`], once, for backends that watch the kernel
    /// for damage to their state. Default: none (periodic resync only).
    fn take_resync_trigger(&mut self) -> Option<ResyncTrigger> {
        None
    }

    /// Hands out the loop that must run for the network's lifetime, once.
    /// Default: none. The [runner](crate::backend#how-a-backend-is-driven)
    /// gives it to an executor of the caller's choosing (the daemon runs it
    /// on a thread of its own), so the datapath never waits for a resync.
    fn take_driver(&mut self) -> Option<Driver> {
        None
    }

    /// Our lease was renewed or re-acquired. The default accepts a renewal of
    /// the same subnets and refuses a move.
    async fn lease_changed(&mut self, lease: &Lease) -> Result<(), BackendError> {
        let old = self.lease().key();
        if old == lease.key() {
            Ok(())
        } else {
            Err(BackendError::LeaseMoved {
                backend: "this",
                old: old.to_string(),
                new: lease.key().to_string(),
            })
        }
    }

    /// Stops what cannot outlive the process; leaves the kernel datapath.
    async fn shutdown(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_and_collect() {
        let e = BackendError::Config {
            backend: "vxlan",
            reason: "VNI must be a number".into(),
        };
        assert_eq!(
            e.to_string(),
            "invalid vxlan backend configuration: VNI must be a number"
        );
        let d = BackendError::datapath(
            "route 10.5.3.0/24 via 10.5.3.0 dev flannel.1",
            "File exists (os error 17)",
        );
        assert_eq!(
            d.to_string(),
            "route 10.5.3.0/24 via 10.5.3.0 dev flannel.1: File exists (os error 17)"
        );
        assert!(BackendError::collect(vec![]).is_ok());
        let one = BackendError::collect(vec![BackendError::Refused("no".into())]).unwrap_err();
        assert_eq!(one.to_string(), "no");
        let many = BackendError::collect(vec![
            BackendError::Refused("a".into()),
            BackendError::Refused("b".into()),
        ]);
        assert_eq!(many.unwrap_err().to_string(), "2 errors, first: a");
        let moved = BackendError::LeaseMoved {
            backend: "vxlan",
            old: "10.1.0.0-24".into(),
            new: "10.1.1.0-24".into(),
        };
        assert_eq!(
            moved.to_string(),
            "the lease moved from 10.1.0.0-24 to 10.1.1.0-24; the vxlan backend must be restarted"
        );
    }
}
