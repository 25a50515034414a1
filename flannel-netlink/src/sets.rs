//! Kernel objects as [`reconcile`](flannel_core::reconcile) objects, and the
//! [`ObjectSet`]s that list and change them through [`NetOps`](crate::NetOps): routes of
//! the main table, permanent neighbours of a device, FDB entries of a
//! device.

use std::net::IpAddr;
use std::sync::Arc;

use flannel_core::BackendError;
use flannel_core::reconcile::{Object, ObjectSet};

use crate::{Family, Mac, Route, SharedOps, format_mac};

impl Object for Route {
    type Key = (u32, IpAddr, u8);

    fn key(&self) -> Self::Key {
        Route::key(self)
    }

    fn satisfies(&self, desired: &Route) -> bool {
        Route::satisfies(self, desired)
    }

    fn describe(&self) -> String {
        format!("route {self}")
    }
}

/// A permanent neighbour entry: `ip neigh replace <ip> lladdr <mac> dev
/// <index> nud permanent`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Neighbour {
    /// The device.
    pub index: u32,
    /// The neighbour's address.
    pub ip: IpAddr,
    /// Its link-layer address.
    pub mac: Mac,
}

impl Object for Neighbour {
    type Key = (u32, IpAddr);

    fn key(&self) -> Self::Key {
        (self.index, self.ip)
    }

    fn satisfies(&self, desired: &Neighbour) -> bool {
        self.mac == desired.mac
    }

    fn describe(&self) -> String {
        format!(
            "neighbour {} lladdr {} dev if{}",
            self.ip,
            format_mac(&self.mac),
            self.index
        )
    }
}

/// A device's own FDB entry: `bridge fdb replace <mac> dev <index> dst
/// <dst> self permanent`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FdbObject {
    /// The device.
    pub index: u32,
    /// The remote MAC.
    pub mac: Mac,
    /// The remote VTEP.
    pub dst: IpAddr,
}

impl Object for FdbObject {
    type Key = (u32, Mac, IpAddr);

    fn key(&self) -> Self::Key {
        (self.index, self.mac, self.dst)
    }

    fn satisfies(&self, _desired: &FdbObject) -> bool {
        // The key is the whole entry.
        true
    }

    fn describe(&self) -> String {
        format!(
            "fdb {} dev if{} dst {}",
            format_mac(&self.mac),
            self.index,
            self.dst
        )
    }
}

fn dp<T: Object>(object: &T, e: crate::NetlinkError) -> BackendError {
    BackendError::datapath(object.describe(), e)
}

/// Which listed routes a backend owns.
pub type RouteOwner = Arc<dyn Fn(&Route) -> bool + Send + Sync>;

/// The routes of some families in the kernel; owned routes are those
/// `owner` accepts.
pub struct RouteSet {
    ops: SharedOps,
    families: Vec<Family>,
    owner: RouteOwner,
}

impl RouteSet {
    /// Routes of `families`, owned as `owner` says.
    pub fn new(ops: SharedOps, families: Vec<Family>, owner: RouteOwner) -> RouteSet {
        RouteSet {
            ops,
            families,
            owner,
        }
    }
}

#[async_trait::async_trait]
impl ObjectSet<Route> for RouteSet {
    async fn list(&self) -> Result<Vec<Route>, BackendError> {
        let mut all = Vec::new();
        for f in &self.families {
            all.extend(
                self.ops
                    .routes(*f)
                    .await
                    .map_err(|e| BackendError::datapath("route dump", e))?,
            );
        }
        Ok(all)
    }

    fn owned(&self, route: &Route) -> bool {
        (self.owner)(route)
    }

    async fn add(&self, route: &Route) -> Result<(), BackendError> {
        self.ops
            .replace_route(route)
            .await
            .map_err(|e| dp(route, e))
    }

    async fn change(&self, _found: &Route, desired: &Route) -> Result<(), BackendError> {
        // Replace works by key: one call, no gap without a route.
        self.add(desired).await
    }

    async fn remove(&self, route: &Route) -> Result<(), BackendError> {
        self.ops.del_route(route).await.map_err(|e| dp(route, e))
    }
}

/// The permanent neighbours of one device (all of them are the backend's).
pub struct NeighbourSet {
    ops: SharedOps,
    index: u32,
}

impl NeighbourSet {
    /// The neighbours of device `index`.
    pub fn new(ops: SharedOps, index: u32) -> NeighbourSet {
        NeighbourSet { ops, index }
    }
}

#[async_trait::async_trait]
impl ObjectSet<Neighbour> for NeighbourSet {
    async fn list(&self) -> Result<Vec<Neighbour>, BackendError> {
        let have =
            self.ops.neighbours(self.index).await.map_err(|e| {
                BackendError::datapath(format!("neighbours of if{}", self.index), e)
            })?;
        Ok(have
            .into_iter()
            .filter(|n| n.permanent)
            .filter_map(|n| {
                n.mac.map(|mac| Neighbour {
                    index: self.index,
                    ip: n.ip,
                    mac,
                })
            })
            .collect())
    }

    fn owned(&self, _n: &Neighbour) -> bool {
        true
    }

    async fn add(&self, n: &Neighbour) -> Result<(), BackendError> {
        self.ops
            .replace_neigh(n.index, n.ip, n.mac)
            .await
            .map_err(|e| dp(n, e))
    }

    async fn change(&self, _found: &Neighbour, desired: &Neighbour) -> Result<(), BackendError> {
        self.add(desired).await
    }

    async fn remove(&self, n: &Neighbour) -> Result<(), BackendError> {
        self.ops
            .del_neigh(n.index, n.ip)
            .await
            .map_err(|e| dp(n, e))
    }
}

/// The FDB entries with a remote VTEP of one device (all the backend's).
pub struct FdbSet {
    ops: SharedOps,
    index: u32,
}

impl FdbSet {
    /// The FDB of device `index`.
    pub fn new(ops: SharedOps, index: u32) -> FdbSet {
        FdbSet { ops, index }
    }
}

#[async_trait::async_trait]
impl ObjectSet<FdbObject> for FdbSet {
    async fn list(&self) -> Result<Vec<FdbObject>, BackendError> {
        let have = self
            .ops
            .fdb(self.index)
            .await
            .map_err(|e| BackendError::datapath(format!("fdb of if{}", self.index), e))?;
        Ok(have
            .into_iter()
            // The all-zero entry is the kernel's default destination.
            .filter(|f| f.mac != [0; 6])
            .filter_map(|f| {
                f.dst.map(|dst| FdbObject {
                    index: self.index,
                    mac: f.mac,
                    dst,
                })
            })
            .collect())
    }

    fn owned(&self, _f: &FdbObject) -> bool {
        true
    }

    async fn add(&self, f: &FdbObject) -> Result<(), BackendError> {
        self.ops
            .replace_fdb(f.index, f.mac, f.dst)
            .await
            .map_err(|e| dp(f, e))
    }

    async fn remove(&self, f: &FdbObject) -> Result<(), BackendError> {
        self.ops
            .del_fdb(f.index, f.mac, f.dst)
            .await
            .map_err(|e| dp(f, e))
    }
}
