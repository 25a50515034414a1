//! The registered vxlan network: devices, per-lease programming, resync.

use crate::options::{OVERHEAD, TYPE, VxlanLeaseData, VxlanOptions};
use crate::state::{Peer, Skip, parts, peer_for};
use flannel_core::backend::{
    BackendError, Network, RegisterContext, ResyncTrigger, follow_renewal,
};
use flannel_core::event::{EventKind, LeaseEvent};
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_netlink::{
    Family, LinkEvent, Mac, NetlinkError, Route, SharedOps, VxlanSpec, format_mac, parse_mac,
    random_vtep_mac, reconcile_routes, watch_links,
};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;
use tracing::{debug, info, warn};

/// How often the full state is checked and repaired.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10);

fn dp(object: String, e: NetlinkError) -> BackendError {
    BackendError::datapath(object, e)
}

/// One family's device.
#[derive(Debug, Clone)]
struct Device {
    v6: bool,
    spec: VxlanSpec,
    index: u32,
    mac: Mac,
    /// `<subnet>.0/32` or `<v6 subnet>/128`.
    addr: (IpAddr, u8),
    /// The overlay network of this family (for ownership of direct routes).
    network: (IpAddr, u8),
}

fn contains(net: (IpAddr, u8), ip: IpAddr) -> bool {
    match (net.0, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            flannel_core::ip::Ip4Net::new(n, net.1).is_ok_and(|c| c.contains(a))
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            flannel_core::ip::Ip6Net::new(n, net.1).is_ok_and(|c| c.contains(a))
        }
        _ => false,
    }
}

/// The vxlan network (see the crate docs).
pub struct VxlanNetwork {
    netlink: SharedOps,
    lease: Lease,
    mtu: u32,
    options: VxlanOptions,
    ext_index: u32,
    devices: Vec<Device>,
    /// DirectRouting decisions by peer public IP. Like Go, a peer's
    /// reachability is decided when its lease event arrives; resyncs reuse the
    /// decision instead of asking the kernel again for every lease.
    direct: std::sync::Mutex<HashMap<IpAddr, Option<u32>>>,
}

impl VxlanNetwork {
    /// Creates the devices, acquires the lease and configures the local side.
    pub async fn register(
        netlink: SharedOps,
        ctx: &RegisterContext<'_>,
    ) -> Result<VxlanNetwork, BackendError> {
        let options = VxlanOptions::parse(ctx.config.backend.as_ref())?;
        info!(
            "VXLAN config: VNI={} Port={} GBP={} Learning={} DirectRouting={}",
            options.vni, options.port, options.gbp, options.learning, options.direct_routing
        );
        let iface = ctx.ext_iface;
        let mtu = options.mtu.unwrap_or(iface.mtu).saturating_sub(OVERHEAD);
        let stored = ctx.manager.stored_mac_addresses().await;
        let mut attrs = LeaseAttrs {
            backend_type: TYPE.to_string(),
            ..LeaseAttrs::default()
        };
        let mut devices = Vec::new();
        for v6 in [false, true] {
            let enabled = if v6 {
                ctx.config.enable_ipv6
            } else {
                ctx.config.enable_ipv4
            };
            if !enabled {
                continue;
            }
            let local = if v6 {
                iface.ext_v6_addr.map(IpAddr::V6)
            } else {
                iface.ext_addr.map(IpAddr::V4)
            };
            let Some(local) = local else {
                return Err(BackendError::Refused(format!(
                    "IPv{} is enabled but the external interface {} has no IPv{} address",
                    if v6 { 6 } else { 4 },
                    iface.name,
                    if v6 { 6 } else { 4 }
                )));
            };
            let stored_mac = if v6 { &stored.v6 } else { &stored.v4 };
            let spec = VxlanSpec {
                name: options.device_name(v6),
                vni: options.vni,
                vtep_index: Some(iface.index),
                local: Some(local),
                port: (options.port > 0).then_some(options.port),
                learning: options.learning,
                gbp: options.gbp,
                mtu: Some(mtu),
                mac: Some(
                    stored_mac
                        .as_deref()
                        .and_then(|m| parse_mac(m).ok())
                        .unwrap_or_else(random_vtep_mac),
                ),
            };
            let ensured = netlink
                .ensure_vxlan(&spec)
                .await
                .map_err(|e| dp(format!("vxlan device {}", spec.name), e))?;
            if let Some(why) = &ensured.recreated_because {
                warn!(
                    "\"{}\" already exists with incompatible configuration: {why}; recreated device",
                    spec.name
                );
            } else if !ensured.created {
                info!(
                    "reusing existing vxlan device {} (MAC and MTU kept)",
                    spec.name
                );
            }
            // The kernel must not autoconfigure addresses on the VTEP.
            let _ = std::fs::write(
                format!("/proc/sys/net/ipv6/conf/{}/accept_ra", spec.name),
                "0",
            );
            let link = ensured.link;
            let mac = link.mac.ok_or_else(|| {
                BackendError::Refused(format!("{} has no MAC address", spec.name))
            })?;
            let data = VxlanLeaseData {
                vni: options.vni,
                vtep_mac: mac,
            }
            .to_raw();
            if v6 {
                attrs.public_ipv6 = iface.ext_v6_addr;
                attrs.backend_v6_data = Some(data);
            } else {
                attrs.public_ip = iface.ext_addr.unwrap_or(attrs.public_ip);
                attrs.backend_data = Some(data);
            }
            let network = if v6 {
                ctx.config.ipv6_network.map(|n| parts(&n))
            } else {
                ctx.config.network.map(|n| parts(&n))
            };
            devices.push(Device {
                v6,
                index: link.index,
                mac,
                addr: (local, 0),
                network: network.unwrap_or((local, 0)),
                spec: VxlanSpec {
                    mac: Some(mac),
                    ..spec
                },
            });
        }
        let lease = ctx.acquire_lease(attrs).await?;
        for dev in &mut devices {
            dev.addr = match (dev.v6, lease.subnet, lease.ipv6_subnet) {
                (false, Some(sn), _) => (IpAddr::V4(sn.addr()), 32),
                (true, _, Some(sn)) => (IpAddr::V6(sn.addr()), 128),
                (v6, _, _) => {
                    return Err(BackendError::Refused(format!(
                        "IPv{} is enabled but the lease has no IPv{}",
                        if v6 { 6 } else { 4 },
                        if v6 { 6 } else { 4 }
                    )));
                }
            };
        }
        let net = VxlanNetwork {
            netlink,
            lease,
            mtu,
            options,
            ext_index: iface.index,
            devices,
            direct: Default::default(),
        };
        for i in 0..net.devices.len() {
            let dev = net.devices[i].clone();
            net.configure_device(&dev).await?;
        }
        Ok(net)
    }

    /// Address, link up and MAC check on one device.
    async fn configure_device(&self, dev: &Device) -> Result<(), BackendError> {
        let nl = &self.netlink;
        let name = &dev.spec.name;
        let existing = nl
            .addresses(dev.index)
            .await
            .map_err(|e| dp(format!("addresses of {name}"), e))?;
        for a in existing {
            let ours = a.addr == dev.addr.0 && a.prefix == dev.addr.1;
            let stale = if dev.v6 {
                // Everything but link-local and ours goes.
                !matches!(a.addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
            } else {
                contains(dev.network, a.addr)
            };
            if !ours && stale && a.addr.is_ipv6() == dev.v6 {
                nl.del_address(dev.index, a.addr, a.prefix)
                    .await
                    .map_err(|e| dp(format!("address {}/{} on {name}", a.addr, a.prefix), e))?;
            }
        }
        nl.add_address(dev.index, dev.addr.0, dev.addr.1)
            .await
            .map_err(|e| {
                dp(
                    format!("address {}/{} on {name}", dev.addr.0, dev.addr.1),
                    e,
                )
            })?;
        nl.set_up(dev.index)
            .await
            .map_err(|e| dp(format!("link {name} up"), e))?;
        let link = nl
            .link_by_index(dev.index)
            .await
            .map_err(|e| dp(format!("link {name}"), e))?;
        match link.and_then(|l| l.mac) {
            Some(m) if m == dev.mac => Ok(()),
            got => Err(BackendError::Refused(format!(
                "{name}'s mac address wanted: {}, but got: {}",
                format_mac(&dev.mac),
                got.map(|m| format_mac(&m)).unwrap_or_default()
            ))),
        }
    }

    /// The external interface when DirectRouting applies to `public_ip`:
    /// `ip route get` gives exactly one route without a gateway. `fresh`
    /// asks the kernel again (a lease event); otherwise a decision made
    /// before is reused.
    async fn direct_oif(&self, public_ip: IpAddr, fresh: bool) -> Option<u32> {
        if !self.options.direct_routing {
            return None;
        }
        let cached = self
            .direct
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&public_ip)
            .copied();
        if let (false, Some(oif)) = (fresh, cached) {
            return oif;
        }
        let oif = match self.netlink.route_get(public_ip).await {
            Ok(routes) if routes.len() == 1 && routes[0].gateway.is_none() => routes[0].oif,
            Ok(_) => None,
            Err(e) => {
                warn!("ip route get {public_ip}: {e}");
                return None;
            }
        };
        self.direct
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(public_ip, oif);
        oif
    }

    async fn peer(&self, lease: &Lease, dev: &Device, fresh: bool) -> Result<Peer, Skip> {
        let public = if dev.v6 {
            lease.attrs.public_ipv6.map(IpAddr::V6)
        } else {
            Some(IpAddr::V4(lease.attrs.public_ip))
        };
        let direct = match public {
            Some(ip) if lease.attrs.backend_type == TYPE => self.direct_oif(ip, fresh).await,
            _ => None,
        };
        peer_for(lease, dev.v6, dev.index, direct)
    }

    async fn add_peer(&self, dev: &Device, peer: &Peer) -> Result<(), BackendError> {
        let nl = &self.netlink;
        let name = &dev.spec.name;
        match peer {
            Peer::Direct { route } => nl
                .replace_route(route)
                .await
                .map_err(|e| dp(format!("direct route {}/{}", route.dst, route.prefix), e)),
            Peer::Encap {
                gateway,
                mac,
                public_ip,
                route,
            } => {
                let m = format_mac(mac);
                debug!("calling NeighSet: {gateway}, {m}");
                nl.replace_neigh(dev.index, *gateway, *mac)
                    .await
                    .map_err(|e| dp(format!("neighbour {gateway} lladdr {m} dev {name}"), e))?;
                debug!("calling AddFDB: {public_ip}, {m}");
                if let Err(e) = nl.replace_fdb(dev.index, *mac, *public_ip).await {
                    let _ = nl.del_neigh(dev.index, *gateway).await;
                    return Err(dp(format!("fdb {m} dev {name} dst {public_ip}"), e));
                }
                if let Err(e) = nl.replace_route(route).await {
                    let _ = nl.del_neigh(dev.index, *gateway).await;
                    let _ = nl.del_fdb(dev.index, *mac, *public_ip).await;
                    return Err(dp(
                        format!(
                            "route {}/{} via {gateway} dev {name} onlink",
                            route.dst, route.prefix
                        ),
                        e,
                    ));
                }
                Ok(())
            }
        }
    }

    async fn remove_peer(&self, dev: &Device, peer: &Peer) -> Vec<BackendError> {
        let nl = &self.netlink;
        let name = &dev.spec.name;
        let mut errors = Vec::new();
        let route = peer.route();
        if let Err(e) = nl.del_route(route).await {
            errors.push(dp(
                format!("route {}/{} dev {name}", route.dst, route.prefix),
                e,
            ));
        }
        if let Peer::Encap {
            gateway,
            mac,
            public_ip,
            ..
        } = peer
        {
            if let Err(e) = nl.del_neigh(dev.index, *gateway).await {
                errors.push(dp(format!("neighbour {gateway} dev {name}"), e));
            }
            if let Err(e) = nl.del_fdb(dev.index, *mac, *public_ip).await {
                errors.push(dp(
                    format!("fdb {} dev {name} dst {public_ip}", format_mac(mac)),
                    e,
                ));
            }
        }
        errors
    }

    /// Recreates a device that disappeared (an admin deleted it) with the
    /// same MAC, address and MTU.
    async fn ensure_device(&mut self, i: usize) -> Result<(), BackendError> {
        let dev = self.devices[i].clone();
        let present = self
            .netlink
            .link_by_name(&dev.spec.name)
            .await
            .map_err(|e| dp(format!("link {}", dev.spec.name), e))?;
        if present
            .as_ref()
            .is_some_and(|l| l.index == dev.index && l.up)
        {
            return Ok(());
        }
        warn!(
            "vxlan device {} is missing or down; recreating it",
            dev.spec.name
        );
        let ensured = self
            .netlink
            .ensure_vxlan(&dev.spec)
            .await
            .map_err(|e| dp(format!("vxlan device {}", dev.spec.name), e))?;
        self.devices[i].index = ensured.link.index;
        let dev = self.devices[i].clone();
        self.configure_device(&dev).await
    }

    async fn resync_device(&self, dev: &Device, leases: &[&Lease]) -> Vec<BackendError> {
        let nl = &self.netlink;
        let name = &dev.spec.name;
        let mut errors = Vec::new();
        let mut peers = Vec::new();
        // (neighbours, fdb entries, routes) put (back) in place.
        let mut fixed = (0usize, 0usize, 0usize);
        for lease in leases {
            match self.peer(lease, dev, false).await {
                Ok(p) => peers.push(p),
                Err(Skip::NoFamily) => {}
                Err(Skip::OtherType(t)) => {
                    debug!("Ignoring non-vxlan subnet {}: type={t}", lease.key())
                }
                Err(Skip::BadData(e)) => warn!(
                    "lease {}: error decoding subnet lease JSON: {e}",
                    lease.key()
                ),
            }
        }
        // Neighbours and FDB entries on our device: what should exist.
        let want_neigh: HashMap<IpAddr, Mac> = peers
            .iter()
            .filter_map(|p| match p {
                Peer::Encap { gateway, mac, .. } => Some((*gateway, *mac)),
                Peer::Direct { .. } => None,
            })
            .collect();
        let want_fdb: HashSet<(Mac, IpAddr)> = peers
            .iter()
            .filter_map(|p| match p {
                Peer::Encap { mac, public_ip, .. } => Some((*mac, *public_ip)),
                Peer::Direct { .. } => None,
            })
            .collect();
        match nl.neighbours(dev.index).await {
            Ok(have) => {
                let have: HashMap<IpAddr, Option<Mac>> = have
                    .iter()
                    .filter(|n| n.permanent)
                    .map(|n| (n.ip, n.mac))
                    .collect();
                for (ip, mac) in &want_neigh {
                    if have.get(ip) != Some(&Some(*mac)) {
                        fixed.0 += 1;
                        if let Err(e) = nl.replace_neigh(dev.index, *ip, *mac).await {
                            errors.push(dp(format!("neighbour {ip} dev {name}"), e));
                        }
                    }
                }
                for ip in have.keys().filter(|ip| !want_neigh.contains_key(ip)) {
                    info!("removing stale neighbour {ip} dev {name}");
                    if let Err(e) = nl.del_neigh(dev.index, *ip).await {
                        errors.push(dp(format!("neighbour {ip} dev {name}"), e));
                    }
                }
            }
            Err(e) => errors.push(dp(format!("neighbours of {name}"), e)),
        }
        match nl.fdb(dev.index).await {
            Ok(have) => {
                let have: HashSet<(Mac, IpAddr)> = have
                    .iter()
                    .filter_map(|f| f.dst.filter(|_| f.mac != [0; 6]).map(|d| (f.mac, d)))
                    .collect();
                for (mac, dst) in want_fdb.difference(&have) {
                    info!(
                        "fdb entry {} dst {dst} dev {name} is missing; restoring it",
                        format_mac(mac)
                    );
                    if let Err(e) = nl.replace_fdb(dev.index, *mac, *dst).await {
                        errors.push(dp(
                            format!("fdb {} dev {name} dst {dst}", format_mac(mac)),
                            e,
                        ));
                    }
                }
                for (mac, dst) in have.difference(&want_fdb) {
                    info!(
                        "removing stale fdb entry {} dst {dst} dev {name}",
                        format_mac(mac)
                    );
                    if let Err(e) = nl.del_fdb(dev.index, *mac, *dst).await {
                        errors.push(dp(
                            format!("fdb {} dev {name} dst {dst}", format_mac(mac)),
                            e,
                        ));
                    }
                }
            }
            Err(e) => errors.push(dp(format!("fdb of {name}"), e)),
        }
        let family = if dev.v6 { Family::V6 } else { Family::V4 };
        let own = dev.addr;
        let report = |fixed: (usize, usize, usize)| {
            if fixed != (0, 0, 0) {
                info!(
                    "{name}: programmed {} neighbours, {} fdb entries, {} routes that were missing or wrong",
                    fixed.0, fixed.1, fixed.2
                );
            }
        };
        match nl.routes(family).await {
            Ok(have) => {
                let desired: Vec<Route> = peers.iter().map(|p| p.route().clone()).collect();
                let network = dev.network;
                let index = dev.index;
                let plan = reconcile_routes(&desired, &have, |r: &Route| {
                    // Ours: flannel's routes are protocol boot (the kernel's
                    // own, like fe80::/64 on the device, are protocol kernel):
                    // anything on the vxlan device, and gateway routes into
                    // the overlay network that DirectRouting put there.
                    r.protocol == flannel_netlink::RTPROT_BOOT
                        && r.dst != own.0
                        && (r.oif == Some(index)
                            || (r.gateway.is_some() && contains(network, r.dst)))
                });
                for r in &plan.replace {
                    info!(
                        "route {}/{} via {:?} is missing or wrong; restoring it",
                        r.dst, r.prefix, r.gateway
                    );
                }
                for r in &plan.delete {
                    info!(
                        "removing stale route {}/{} via {:?}",
                        r.dst, r.prefix, r.gateway
                    );
                }
                for r in &plan.replace {
                    if let Err(e) = nl.replace_route(r).await {
                        errors.push(dp(format!("route {r} of {name}"), e));
                    }
                }
                for r in &plan.delete {
                    if let Err(e) = nl.del_route(r).await {
                        errors.push(dp(format!("route {r} of {name}"), e));
                    }
                }
            }
            Err(e) => errors.push(dp(format!("routes of {name}"), e)),
        }
        report(fixed);
        errors
    }
}

#[async_trait::async_trait]
impl Network for VxlanNetwork {
    fn lease(&self) -> &Lease {
        &self.lease
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    async fn handle_events(
        &mut self,
        events: &[LeaseEvent],
        _leases: &[&Lease],
    ) -> Result<(), BackendError> {
        let mut errors = Vec::new();
        for event in events {
            for dev in &self.devices {
                let peer = match self
                    .peer(&event.lease, dev, event.kind == EventKind::Added)
                    .await
                {
                    Ok(p) => p,
                    Err(Skip::NoFamily) => continue,
                    Err(Skip::OtherType(t)) => {
                        info!(
                            "Ignoring non-vxlan v4Subnet({:?}) v6Subnet({:?}): type={t}",
                            event.lease.subnet, event.lease.ipv6_subnet
                        );
                        continue;
                    }
                    Err(Skip::BadData(e)) => {
                        errors.push(BackendError::Refused(format!(
                            "lease {}: error decoding subnet lease JSON: {e}",
                            event.lease.key()
                        )));
                        continue;
                    }
                };
                match event.kind {
                    EventKind::Added => {
                        info!("adding subnet: {} on {}", event.lease.key(), dev.spec.name);
                        if let Err(e) = self.add_peer(dev, &peer).await {
                            errors.push(e);
                        }
                    }
                    EventKind::Removed => {
                        info!(
                            "removing subnet: {} on {}",
                            event.lease.key(),
                            dev.spec.name
                        );
                        errors.extend(self.remove_peer(dev, &peer).await);
                    }
                }
            }
        }
        BackendError::collect(errors)
    }

    async fn resync(&mut self, leases: &[&Lease]) -> Result<(), BackendError> {
        let mut errors = Vec::new();
        for i in 0..self.devices.len() {
            if let Err(e) = self.ensure_device(i).await {
                errors.push(e);
                continue;
            }
            let dev = self.devices[i].clone();
            errors.extend(self.resync_device(&dev, leases).await);
        }
        BackendError::collect(errors)
    }

    fn resync_interval(&self) -> Option<Duration> {
        Some(RESYNC_INTERVAL)
    }

    fn take_resync_trigger(&mut self) -> Option<ResyncTrigger> {
        // `ip monitor link`: a deleted or downed VTEP is rebuilt at once
        // instead of at the next periodic resync (routes through a device
        // vanish with it, so the overlay is down until then).
        let (events, conn) = match watch_links() {
            Ok(w) => w,
            Err(e) => {
                warn!("cannot watch links; relying on the periodic resync: {e}");
                return None;
            }
        };
        let names: Vec<String> = self.devices.iter().map(|d| d.spec.name.clone()).collect();
        let damage = events.filter_map(move |ev| {
            let hit = match ev {
                LinkEvent::Del { name, .. } => names.contains(&name),
                LinkEvent::New(link) => names.contains(&link.name) && !link.up,
            };
            std::future::ready(hit.then_some(()))
        });
        // The socket's connection future is polled as part of the stream.
        let conn = futures_util::stream::once(conn).filter_map(|()| std::future::ready(None));
        Some(Box::pin(futures_util::stream::select(damage, conn)))
    }

    async fn lease_changed(&mut self, lease: &Lease) -> Result<(), BackendError> {
        follow_renewal(&mut self.lease, lease, TYPE)
    }
}

impl VxlanNetwork {
    /// The external interface index (for tests and diagnostics).
    pub fn ext_index(&self) -> u32 {
        self.ext_index
    }
}
