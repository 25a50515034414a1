//! [`RouteNetwork`]: the generic network of backends whose whole datapath is
//! one route per remote lease (host-gw; ipip and vxlan DirectRouting reuse
//! its parts).
//!
//! A backend gives a pure function from a remote lease to the routes it
//! wants and a rule for which kernel routes it owns; the network derives
//! the desired routes from all leases and applies event batches and
//! resyncs through one [`Reconciler`]. Routes it does not own (connected
//! routes, other daemons', an administrator's) are never replaced or
//! deleted, and a lease whose routes would not be ours (a subnet outside
//! the configured networks) is never programmed.
//!
//! ```no_run
//! # use flannel_netlink::{RouteNetwork, Route, SharedOps};
//! # use flannel_core::lease::Lease;
//! # fn f(ops: SharedOps, lease: Lease) {
//! // A backend that routes every remote subnet via the peer's public IP.
//! let network = RouteNetwork::builder(ops, "my-routes", lease, 1500)
//!     .routes(move |peer: &Lease| {
//!         let sn = peer.subnet?;
//!         let mut r = Route::unicast(sn.addr().into(), sn.prefix_len());
//!         r.gateway = Some(peer.attrs.public_ip.into());
//!         Some(vec![r])
//!     })
//!     .owner(|r: &Route| r.protocol == flannel_netlink::RTPROT_BOOT && r.gateway.is_some())
//!     .build();
//! # }
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flannel_core::backend::{BackendError, Network, RetryPolicy};
use flannel_core::event::{EventKind, LeaseEvent};
use flannel_core::lease::Lease;
use flannel_core::reconcile::{Object, Reconciler, SyncReport};
use tracing::{debug, info, warn};

use crate::sets::{RouteOwner, RouteSet};
use crate::{Family, Route, SharedOps};

/// The routes one remote lease needs; `None` when the lease is not for this
/// backend (another backend type), which is logged as ignored.
pub type RoutesFor = Arc<dyn Fn(&Lease) -> Option<Vec<Route>> + Send + Sync>;

/// Builds a [`RouteNetwork`].
pub struct RouteNetworkBuilder {
    ops: SharedOps,
    backend: &'static str,
    lease: Lease,
    mtu: u32,
    families: Vec<Family>,
    routes_for: RoutesFor,
    owner: RouteOwner,
    resync_every: Option<Duration>,
    retry: RetryPolicy,
}

impl RouteNetworkBuilder {
    /// The function from a remote lease to its routes.
    pub fn routes(
        mut self,
        f: impl Fn(&Lease) -> Option<Vec<Route>> + Send + Sync + 'static,
    ) -> Self {
        self.routes_for = Arc::new(f);
        self
    }

    /// Which kernel routes are this backend's (may be changed or deleted).
    pub fn owner(mut self, f: impl Fn(&Route) -> bool + Send + Sync + 'static) -> Self {
        self.owner = Arc::new(f);
        self
    }

    /// The address families whose routes are managed (default: IPv4).
    pub fn families(mut self, v4: bool, v6: bool) -> Self {
        self.families = [(v4, Family::V4), (v6, Family::V6)]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, f)| f)
            .collect();
        self
    }

    /// Period of the full resync (default 10 s, as Go's route check).
    pub fn resync_every(mut self, every: Option<Duration>) -> Self {
        self.resync_every = every;
        self
    }

    /// How failures are retried (default [`RetryPolicy::default`]).
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The network.
    pub fn build(self) -> RouteNetwork {
        RouteNetwork {
            set: RouteSet::new(self.ops, self.families, self.owner.clone()),
            owner: self.owner,
            backend: self.backend,
            lease: self.lease,
            mtu: self.mtu,
            routes_for: self.routes_for,
            reconciler: Reconciler::new(),
            resync_every: self.resync_every,
            retry: self.retry,
            refused: BTreeSet::new(),
        }
    }
}

/// A network whose datapath is routes derived from the leases (see the
/// module docs).
pub struct RouteNetwork {
    set: RouteSet,
    owner: RouteOwner,
    backend: &'static str,
    lease: Lease,
    mtu: u32,
    routes_for: RoutesFor,
    reconciler: Reconciler<Route>,
    resync_every: Option<Duration>,
    retry: RetryPolicy,
    /// Routes refused because they would not be ours (reported once).
    refused: BTreeSet<<Route as Object>::Key>,
}

/// Go's route check period.
pub const ROUTE_CHECK_INTERVAL: Duration = Duration::from_secs(10);

impl RouteNetwork {
    /// Starts a network for `backend` holding `lease`, with `mtu` for pods.
    /// By default no lease has routes and no route is owned: set both.
    pub fn builder(
        ops: SharedOps,
        backend: &'static str,
        lease: Lease,
        mtu: u32,
    ) -> RouteNetworkBuilder {
        RouteNetworkBuilder {
            ops,
            backend,
            lease,
            mtu,
            families: vec![Family::V4],
            routes_for: Arc::new(|_| None),
            owner: Arc::new(|_| false),
            resync_every: Some(ROUTE_CHECK_INTERVAL),
            retry: RetryPolicy::default(),
        }
    }

    /// The routes `leases` need, restricted to routes this backend owns.
    pub fn desired(&mut self, leases: &[&Lease]) -> Vec<Route> {
        let mut out = Vec::with_capacity(leases.len());
        for lease in leases {
            for r in (self.routes_for)(lease).unwrap_or_default() {
                if (self.owner)(&r) {
                    out.push(r);
                } else if self.refused.insert(r.key()) {
                    warn!(
                        "not programming {} for lease {}: it is outside the networks this {} backend manages",
                        r.describe(),
                        lease.key(),
                        self.backend
                    );
                }
            }
        }
        out
    }

    fn report(&self, what: &str, r: &SyncReport) {
        for b in &r.newly_blocked {
            warn!("{b}");
        }
        if !r.is_empty() {
            info!(
                "{} {what}: {} routes added, {} corrected, {} removed",
                self.backend, r.added, r.changed, r.removed
            );
        }
    }
}

#[async_trait::async_trait]
impl Network for RouteNetwork {
    fn lease(&self) -> &Lease {
        &self.lease
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    async fn handle_events(
        &mut self,
        events: &[LeaseEvent],
        leases: &[&Lease],
    ) -> Result<(), BackendError> {
        for e in events {
            match (e.kind, (self.routes_for)(&e.lease)) {
                (EventKind::Added, None) => info!(
                    "Ignoring non-{} subnet {}: type={}",
                    self.backend,
                    e.lease.key(),
                    e.lease.attrs.backend_type
                ),
                (EventKind::Added, Some(_)) => info!("Subnet added: {}", e.lease.key()),
                (EventKind::Removed, _) => info!("Subnet removed: {}", e.lease.key()),
            }
        }
        let desired = self.desired(leases);
        let report = self.reconciler.update(&self.set, &desired).await?;
        debug!("{} events applied: {report}", self.backend);
        Ok(())
    }

    async fn resync(&mut self, leases: &[&Lease]) -> Result<(), BackendError> {
        let desired = self.desired(leases);
        match self.reconciler.resync(&self.set, &desired).await {
            Ok(r) => {
                self.report("resync", &r);
                Ok(())
            }
            Err(f) => {
                self.report("resync", &f.report);
                Err(f.error)
            }
        }
    }

    fn resync_interval(&self) -> Option<Duration> {
        self.resync_every
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    async fn lease_changed(&mut self, lease: &Lease) -> Result<(), BackendError> {
        // The routes lead to the other nodes' subnets, so a move of our own
        // subnet changes none of them: follow it.
        if lease.key() != self.lease.key() {
            info!(
                "{}: our lease moved from {} to {}",
                self.backend,
                self.lease.key(),
                lease.key()
            );
        }
        self.lease = lease.clone();
        Ok(())
    }
}
