//! # flannel-backend-ipip
//!
//! flannel's ipip backend: IPv4 packets between pods travel inside an outer
//! IPv4 header (protocol 4) through the kernel's ipip tunnel, exactly as Go
//! flannel programs it, so Go and Rust nodes reach each other:
//!
//! * the device `flannel.ipip` (`ip link add flannel.ipip type ipip local
//!   <interface address>`, remote `any`), MTU = interface MTU − 20, address
//!   `<subnet>.0/32`, up. An ipip device with another local address or a
//!   fixed remote is recreated; a device of another kind with that name is
//!   left alone and refused with Go's message. The kernel's own `tunl0`
//!   (created when the ipip module loads) is never used nor touched;
//! * per remote ipip lease the route `<subnet> via <PublicIP> dev
//!   flannel.ipip onlink` (the tunnel takes the gateway as the outer
//!   destination); with `DirectRouting`, a peer on our L2 segment (`ip route
//!   get <PublicIP>` gives one route without a gateway) gets the same route
//!   on the external interface instead, unencapsulated.
//!
//! The routes are a [`RouteNetwork`]: applied on lease events, reconciled
//! with the kernel every [`RESYNC_INTERVAL`] (a deleted route comes back,
//! routes of leases that are gone are removed) and only routes the backend
//! owns ([`owns`]) are changed. A resync also rebuilds a deleted or downed
//! device, at once when the link watch sees it go. Shutdown leaves the
//! datapath in place.
//!
//! IPv4 only, as in Go. The kernel must have ipip (`CONFIG_NET_IPIP`); a
//! kernel without it gets an error naming it at registration.
//!
//! Options (`Backend` object, keys case-insensitive): `DirectRouting`
//! (false). The host context must carry a [`SharedOps`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flannel_core::backend::{
    Backend, BackendError, ExternalInterface, Network, RegisterContext, ResyncTrigger, RetryPolicy,
};
use flannel_core::event::{EventKind, LeaseEvent};
use flannel_core::gojson::{RawJson, decode_struct};
use flannel_core::ip::Ip4Net;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_netlink::{
    EOPNOTSUPP, IpipSpec, NetlinkError, RTPROT_BOOT, Route, RouteNetwork, SharedOps, ops_from_host,
};
use tracing::{info, warn};

/// The backend type string.
pub const TYPE: &str = "ipip";

/// The tunnel device's name.
pub const DEVICE: &str = "flannel.ipip";

/// The outer IPv4 header subtracted from the interface MTU.
pub const OVERHEAD: u32 = 20;

/// How often routes and the device are checked and repaired (Go: 10 s).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10);

/// `Backend` options (keys matched case-insensitively, as in Go).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpipOptions {
    /// `DirectRouting`: plain routes to peers on the same L2 segment.
    pub direct_routing: bool,
}

impl IpipOptions {
    /// Decodes the raw `Backend` object (absent or null = defaults).
    pub fn parse(backend: Option<&RawJson>) -> Result<IpipOptions, BackendError> {
        let mut o = IpipOptions::default();
        let Some(obj) = decode_struct(
            backend,
            "ipipBackendConfig",
            "struct { DirectRouting bool }",
        )
        .map_err(|e| BackendError::config(TYPE, e.0))?
        else {
            return Ok(o);
        };
        o.direct_routing = obj
            .bool("DirectRouting")
            .map_err(|e| BackendError::config(TYPE, e.0))?
            .unwrap_or(false);
        Ok(o)
    }
}

/// The pod MTU: interface MTU − 20, with Go's error when nothing is left.
pub fn mtu_for(iface: &ExternalInterface) -> Result<u32, BackendError> {
    match iface.mtu.checked_sub(OVERHEAD).filter(|m| *m > 0) {
        Some(m) => Ok(m),
        None => Err(BackendError::Refused(format!(
            "MTU {} of iface {} is too small for ipip mode to work",
            iface.mtu, iface.name
        ))),
    }
}

/// The lease attributes ipip publishes: the public address and
/// `BackendType:"ipip"`, no backend data (as Go).
pub fn lease_attrs(iface: &ExternalInterface) -> Result<LeaseAttrs, BackendError> {
    let public_ip = iface.ext_addr.ok_or_else(|| {
        BackendError::Refused(format!(
            "the ipip backend needs an IPv4 address, and {} has none",
            iface.name
        ))
    })?;
    Ok(LeaseAttrs {
        backend_type: TYPE.to_string(),
        ..LeaseAttrs::new(public_ip)
    })
}

/// The route for a remote ipip lease: `<subnet> via <PublicIP> dev <dev>
/// onlink`, where `dev` is the tunnel (`tunnel_index`) or, when
/// DirectRouting decided the peer is on-link, the external interface
/// (`direct_oif`). `None` for a lease of another type or without IPv4.
pub fn route_for(lease: &Lease, tunnel_index: u32, direct_oif: Option<u32>) -> Option<Route> {
    if lease.attrs.backend_type != TYPE {
        return None;
    }
    let sn = lease.subnet?;
    let mut r = Route::unicast(IpAddr::V4(sn.addr()), sn.prefix_len());
    r.gateway = Some(IpAddr::V4(lease.attrs.public_ip));
    r.oif = Some(direct_oif.unwrap_or(tunnel_index));
    r.onlink = true;
    Some(r)
}

/// Whether a kernel route is ipip's: `proto boot`, `onlink` via a gateway,
/// on the tunnel or the external interface, to a destination inside the
/// configured network. (host-gw routes are not onlink; the CNI bridge's
/// routes have no gateway.)
pub fn owns(route: &Route, network: Option<Ip4Net>, tunnel_index: u32, ext_index: u32) -> bool {
    let inside = match (network, route.dst) {
        (Some(n), IpAddr::V4(a)) => n.contains(a) && route.prefix >= n.prefix_len(),
        _ => false,
    };
    route.protocol == RTPROT_BOOT
        && route.onlink
        && route.gateway.is_some()
        && matches!(route.oif, Some(i) if i == tunnel_index || i == ext_index)
        && inside
}

/// A device error as a [`BackendError`]; a kernel that does not know the
/// ipip link kind gets an explanation naming what is missing.
pub fn device_error(spec: &IpipSpec, e: NetlinkError) -> BackendError {
    match e {
        NetlinkError::WrongKind { .. } => BackendError::Refused(e.to_string()),
        e if e.os_error() == Some(EOPNOTSUPP) => BackendError::Refused(format!(
            "cannot create {}: this kernel has no ipip tunnel support \
             (CONFIG_NET_IPIP, module `ipip`; `ip link add type ipip` fails the same way): {e}",
            spec.name
        )),
        e => BackendError::datapath(format!("ipip device {}", spec.name), e),
    }
}

/// State shared with the route closures of the [`RouteNetwork`].
#[derive(Default)]
struct Shared {
    /// The tunnel's current index (it changes when the device is rebuilt).
    tunnel_index: AtomicU32,
    /// DirectRouting decisions by peer public IP: `Some(oif)` = on-link.
    direct: Mutex<HashMap<Ipv4Addr, Option<u32>>>,
}

impl Shared {
    fn direct(&self) -> std::sync::MutexGuard<'_, HashMap<Ipv4Addr, Option<u32>>> {
        self.direct.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The ipip network (see the crate docs).
pub struct IpipNetwork {
    ops: SharedOps,
    routes: RouteNetwork,
    shared: Arc<Shared>,
    spec: IpipSpec,
    options: IpipOptions,
    ext_index: u32,
    network: Option<Ip4Net>,
}

/// Creates or reuses the tunnel device; returns its index.
async fn ensure_device(ops: &SharedOps, spec: &IpipSpec) -> Result<u32, BackendError> {
    let ensured = ops
        .ensure_ipip(spec)
        .await
        .map_err(|e| device_error(spec, e))?;
    match (&ensured.recreated_because, ensured.created) {
        (Some(why), _) => warn!(
            "{} already existed with an incompatible configuration ({why}); recreated it",
            spec.name
        ),
        (None, true) => info!(
            "created the ipip device {} (local {})",
            spec.name, spec.local
        ),
        (None, false) => info!("reusing the existing ipip device {}", spec.name),
    }
    Ok(ensured.link.index)
}

/// Puts `<own>/32` on the device (removing other addresses inside the
/// network, as Go's ensureV4AddressOnLink does) and sets it up.
async fn configure_device(
    ops: &SharedOps,
    index: u32,
    own: Ipv4Addr,
    network: Option<Ip4Net>,
    is_up: bool,
) -> Result<(), BackendError> {
    let dp = |what: String, e: NetlinkError| BackendError::datapath(what, e);
    let existing = ops
        .addresses(index)
        .await
        .map_err(|e| dp(format!("addresses of {DEVICE}"), e))?;
    let mut have = false;
    for a in existing {
        let IpAddr::V4(v4) = a.addr else { continue };
        if v4 == own && a.prefix == 32 {
            have = true;
        } else if network.is_some_and(|n| n.contains(v4)) {
            ops.del_address(index, a.addr, a.prefix)
                .await
                .map_err(|e| dp(format!("address {}/{} on {DEVICE}", a.addr, a.prefix), e))?;
        }
    }
    if !have {
        ops.add_address(index, IpAddr::V4(own), 32)
            .await
            .map_err(|e| dp(format!("address {own}/32 on {DEVICE}"), e))?;
    }
    if is_up {
        return Ok(());
    }
    ops.set_up(index)
        .await
        .map_err(|e| dp(format!("link {DEVICE} up"), e))
}

impl IpipNetwork {
    /// Creates the device, acquires the lease and configures the device:
    /// what [`IpipBackend::register_network`] does, with the netlink handle
    /// given.
    pub async fn register(
        ops: SharedOps,
        ctx: &RegisterContext<'_>,
    ) -> Result<IpipNetwork, BackendError> {
        let options = IpipOptions::parse(ctx.config.backend.as_ref())?;
        info!("IPIP config: DirectRouting={}", options.direct_routing);
        if ctx.config.enable_ipv6 {
            return Err(BackendError::Refused(
                "the ipip backend supports IPv4 only; set EnableIPv6 to false".into(),
            ));
        }
        let iface = ctx.ext_iface;
        let mtu = mtu_for(iface)?;
        let local = iface.iface_addr.ok_or_else(|| {
            BackendError::Refused(format!(
                "the ipip backend needs an IPv4 address, and {} has none",
                iface.name
            ))
        })?;
        let attrs = lease_attrs(iface)?;
        let spec = IpipSpec {
            name: DEVICE.to_string(),
            local,
            mtu,
        };
        // The device before the lease (Go creates it after): a kernel
        // without ipip then fails before a subnet is taken.
        let index = ensure_device(&ops, &spec).await?;
        let lease = ctx.acquire_lease(attrs).await?;
        let own = lease.subnet.map(|s| s.addr()).ok_or_else(|| {
            BackendError::Refused("IPv4 is enabled but the lease has no IPv4".into())
        })?;
        configure_device(&ops, index, own, ctx.config.network, false).await?;
        Ok(IpipNetwork::new(
            ops,
            lease,
            spec,
            options,
            iface.index,
            ctx.config.network,
            index,
        ))
    }

    /// The network for an already configured device `tunnel_index` and an
    /// acquired `lease` (for tests and embedders).
    pub fn new(
        ops: SharedOps,
        lease: Lease,
        spec: IpipSpec,
        options: IpipOptions,
        ext_index: u32,
        network: Option<Ip4Net>,
        tunnel_index: u32,
    ) -> IpipNetwork {
        let shared = Arc::new(Shared::default());
        shared.tunnel_index.store(tunnel_index, Ordering::Relaxed);
        let (for_routes, for_owner) = (shared.clone(), shared.clone());
        let routes = RouteNetwork::builder(ops.clone(), TYPE, lease, spec.mtu)
            .families(true, false)
            .routes(move |l| {
                let direct = for_routes
                    .direct()
                    .get(&l.attrs.public_ip)
                    .copied()
                    .flatten();
                let tunnel = for_routes.tunnel_index.load(Ordering::Relaxed);
                route_for(l, tunnel, direct).map(|r| vec![r])
            })
            .owner(move |r| {
                owns(
                    r,
                    network,
                    for_owner.tunnel_index.load(Ordering::Relaxed),
                    ext_index,
                )
            })
            .resync_every(Some(RESYNC_INTERVAL))
            .build();
        IpipNetwork {
            ops,
            routes,
            shared,
            spec,
            options,
            ext_index,
            network,
        }
    }

    /// The tunnel device's current index.
    pub fn tunnel_index(&self) -> u32 {
        self.shared.tunnel_index.load(Ordering::Relaxed)
    }

    /// DirectRouting: the external interface when `ip route get <ip>`
    /// gives exactly one route without a gateway (Go's
    /// `ip.DirectRouting`); a failed lookup means the tunnel.
    async fn decide_direct(&self, ip: Ipv4Addr) {
        let oif = match self.ops.route_get(IpAddr::V4(ip)).await {
            Ok(routes) if routes.len() == 1 && routes[0].gateway.is_none() => Some(self.ext_index),
            Ok(_) => None,
            Err(e) => {
                warn!("ip route get {ip}: {e}; using the tunnel");
                None
            }
        };
        let before = self.shared.direct().insert(ip, oif);
        if before != Some(oif) && oif.is_some() {
            info!("{ip} is on our L2 segment: routing to it directly (DirectRouting)");
        }
    }

    /// Rebuilds the device when it is gone, no longer ipip or down, and
    /// makes sure it carries our address.
    async fn repair_device(&mut self) -> Result<(), BackendError> {
        let own = self.routes.lease().subnet.map(|s| s.addr());
        let link = self
            .ops
            .link_by_name(DEVICE)
            .await
            .map_err(|e| BackendError::datapath(format!("link {DEVICE}"), e))?;
        let (index, is_up) = match link {
            Some(l) if l.kind.as_deref() == Some("ipip") && l.up && l.mtu == self.spec.mtu => {
                (l.index, true)
            }
            Some(_) | None => {
                warn!("{DEVICE} is missing, down or changed; rebuilding it");
                (ensure_device(&self.ops, &self.spec).await?, false)
            }
        };
        self.shared.tunnel_index.store(index, Ordering::Relaxed);
        if let Some(own) = own {
            configure_device(&self.ops, index, own, self.network, is_up).await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Network for IpipNetwork {
    fn lease(&self) -> &Lease {
        self.routes.lease()
    }

    fn mtu(&self) -> u32 {
        self.spec.mtu
    }

    async fn handle_events(
        &mut self,
        events: &[LeaseEvent],
        leases: &[&Lease],
    ) -> Result<(), BackendError> {
        if self.options.direct_routing {
            for e in events {
                if e.kind == EventKind::Added && e.lease.attrs.backend_type == TYPE {
                    self.decide_direct(e.lease.attrs.public_ip).await;
                }
            }
        }
        self.routes.handle_events(events, leases).await
    }

    async fn resync(&mut self, leases: &[&Lease]) -> Result<(), BackendError> {
        let device = self.repair_device().await;
        if self.options.direct_routing {
            let live: Vec<Ipv4Addr> = leases
                .iter()
                .filter(|l| l.attrs.backend_type == TYPE)
                .map(|l| l.attrs.public_ip)
                .collect();
            self.shared.direct().retain(|ip, _| live.contains(ip));
            for ip in live {
                self.decide_direct(ip).await;
            }
        }
        let routes = self.routes.resync(leases).await;
        BackendError::collect(device.err().into_iter().chain(routes.err()).collect())
    }

    fn resync_interval(&self) -> Option<Duration> {
        Some(RESYNC_INTERVAL)
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.routes.retry_policy()
    }

    fn take_resync_trigger(&mut self) -> Option<ResyncTrigger> {
        // A deleted or downed tunnel takes every route through it along:
        // rebuild at once rather than at the next periodic resync.
        flannel_netlink::device_damage_trigger(vec![DEVICE.to_string()])
    }

    async fn lease_changed(&mut self, lease: &Lease) -> Result<(), BackendError> {
        let moved = lease.key() != self.routes.lease().key();
        self.routes.lease_changed(lease).await?;
        if moved && let Some(sn) = lease.subnet {
            configure_device(
                &self.ops,
                self.tunnel_index(),
                sn.addr(),
                self.network,
                true,
            )
            .await?;
        }
        Ok(())
    }
}

/// The ipip backend: a factory for [`IpipNetwork`].
#[derive(Debug, Default, Clone, Copy)]
pub struct IpipBackend;

#[async_trait::async_trait]
impl Backend for IpipBackend {
    fn backend_type(&self) -> &'static str {
        TYPE
    }

    async fn register_network(
        &self,
        ctx: &RegisterContext<'_>,
    ) -> Result<Box<dyn Network>, BackendError> {
        let ops = ops_from_host(ctx.host, TYPE)?;
        Ok(Box::new(IpipNetwork::register(ops, ctx).await?))
    }
}

#[cfg(test)]
mod tests;
