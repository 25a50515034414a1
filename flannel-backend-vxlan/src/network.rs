//! The registered vxlan network: its devices, and the reconcilers that keep
//! each device's neighbours, FDB entries and routes at the state
//! [`desired_state`] derives from the leases.

use crate::options::{OVERHEAD, TYPE, VxlanLeaseData, VxlanOptions};
use crate::state::{
    DeviceState, DeviceView, Skip, desired_state, owns, parts, peer_for, public_ip,
};
use flannel_core::backend::{
    BackendError, Network, RegisterContext, ResyncTrigger, follow_renewal,
};
use flannel_core::event::{EventKind, LeaseEvent};
use flannel_core::key::SubnetKey;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::reconcile::{Object, ObjectSet, Reconciler, SyncReport};
use flannel_netlink::sets::{FdbObject, FdbSet, Neighbour, NeighbourSet, RouteSet};
use flannel_netlink::{
    Family, Mac, Route, SharedOps, VxlanSpec, format_mac, parse_mac, random_vtep_mac,
};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// How often the full state is checked and repaired.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10);

fn dp(object: String, e: flannel_netlink::NetlinkError) -> BackendError {
    BackendError::datapath(object, e)
}

/// One family's device and the reconcilers of what is programmed on it.
struct Device {
    spec: VxlanSpec,
    mac: Mac,
    /// Index, own address and network, as the desired state needs them.
    view: DeviceView,
    /// 32 or 128: the prefix of our address on the device.
    own_prefix: u8,
    neighbours: Reconciler<Neighbour>,
    fdb: Reconciler<FdbObject>,
    routes: Reconciler<Route>,
}

/// What one pass did to one device: neighbours, FDB entries, routes.
type Tally = [SyncReport; 3];

/// `f` of each kind in words: `2 neighbours, 2 fdb entries, 2 routes`.
fn per_kind(t: &Tally, f: impl Fn(&SyncReport) -> usize) -> Option<String> {
    let n = t.each_ref().map(f);
    (n != [0; 3]).then(|| format!("{} neighbours, {} fdb entries, {} routes", n[0], n[1], n[2]))
}

/// What a resync of device `dev` changed, in words, or `None` when it
/// changed nothing: `flannel.1 resync: added 1 route; corrected 1
/// neighbour; removed 1 fdb entry`. Each object is counted once, under
/// what was done to it (an FDB entry whose destination moved is one entry
/// removed and one added: its key is the whole entry).
fn resync_summary(dev: &str, t: &Tally) -> Option<String> {
    fn kinds(t: &Tally, f: impl Fn(&SyncReport) -> usize) -> Option<String> {
        let names = [
            ("neighbour", "neighbours"),
            ("fdb entry", "fdb entries"),
            ("route", "routes"),
        ];
        let parts: Vec<String> = t
            .iter()
            .zip(names)
            .filter_map(|(r, (one, many))| match f(r) {
                0 => None,
                1 => Some(format!("1 {one}")),
                n => Some(format!("{n} {many}")),
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
    let done: Vec<String> = [
        ("added", kinds(t, |r| r.added)),
        ("corrected", kinds(t, |r| r.changed)),
        ("removed", kinds(t, |r| r.removed)),
    ]
    .into_iter()
    .filter_map(|(verb, what)| what.map(|w| format!("{verb} {w}")))
    .collect();
    (!done.is_empty()).then(|| format!("{dev} resync: {}", done.join("; ")))
}

impl Device {
    fn name(&self) -> &str {
        &self.spec.name
    }

    /// Applies `state` in Go's order (neighbours, FDB entries, routes):
    /// against what was applied before (`full` false, no listing) or
    /// against a fresh listing (`full` true). Every kind is tried even when
    /// an earlier one failed; the failures are returned.
    async fn apply(
        &mut self,
        ops: &SharedOps,
        state: &DeviceState,
        full: bool,
    ) -> (Tally, Vec<BackendError>) {
        async fn one<T: Object>(
            r: &mut Reconciler<T>,
            set: &dyn ObjectSet<T>,
            want: &[T],
            full: bool,
            errors: &mut Vec<BackendError>,
        ) -> SyncReport {
            let res = if full {
                r.resync(set, want).await
            } else {
                r.update(set, want).await
            };
            // A failed pass still reports what it did.
            res.unwrap_or_else(|f| {
                errors.push(f.error);
                f.report
            })
        }
        let index = self.view.index;
        let family = if self.view.v6 { Family::V6 } else { Family::V4 };
        let view = self.view.clone();
        let route_set = RouteSet::new(
            ops.clone(),
            vec![family],
            Arc::new(move |r: &Route| owns(&view, r)),
        );
        let mut errors = Vec::new();
        let e = &mut errors;
        let neighbour_set = NeighbourSet::new(ops.clone(), index);
        let fdb_set = FdbSet::new(ops.clone(), index);
        let tally = [
            one(
                &mut self.neighbours,
                &neighbour_set,
                &state.neighbours,
                full,
                e,
            )
            .await,
            one(&mut self.fdb, &fdb_set, &state.fdb, full, e).await,
            one(&mut self.routes, &route_set, &state.routes, full, e).await,
        ];
        for b in tally.iter().flat_map(|r| &r.newly_blocked) {
            warn!("{b}");
        }
        (tally, errors)
    }
}

/// The vxlan network (see the crate docs).
pub struct VxlanNetwork {
    ops: SharedOps,
    lease: Lease,
    mtu: u32,
    options: VxlanOptions,
    ext_index: u32,
    devices: Vec<Device>,
    /// DirectRouting decisions by peer public IP: the external interface
    /// for an on-link peer, `None` for one behind a gateway. Like Go, a
    /// peer's reachability is decided when its lease event arrives; resyncs
    /// reuse the decision instead of asking the kernel for every lease.
    direct: HashMap<IpAddr, Option<u32>>,
    /// Skipped leases already warned about (a resync every 10 s must not
    /// repeat the warning); rebuilt from each resync's skips.
    reported: HashSet<String>,
    /// Keys of the leases whose backend data did not decode in the last
    /// pass (on any device).
    undecodable: HashSet<SubnetKey>,
}

impl VxlanNetwork {
    /// Creates the devices, acquires the lease and configures the local side.
    pub async fn register(
        ops: SharedOps,
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
            let family = if v6 { 6 } else { 4 };
            let local = if v6 {
                iface.ext_v6_addr.map(IpAddr::V6)
            } else {
                iface.ext_addr.map(IpAddr::V4)
            };
            let Some(local) = local else {
                return Err(BackendError::Refused(format!(
                    "IPv{family} is enabled but the external interface {} has no IPv{family} address",
                    iface.name
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
            let ensured = ops
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
            disable_accept_ra(&ops, &spec.name).await;
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
                mac,
                // `own` is known once the lease is.
                view: DeviceView {
                    v6,
                    index: link.index,
                    own: local,
                    network,
                },
                own_prefix: if v6 { 128 } else { 32 },
                spec: VxlanSpec {
                    mac: Some(mac),
                    ..spec
                },
                neighbours: Reconciler::new(),
                fdb: Reconciler::new(),
                routes: Reconciler::new(),
            });
        }
        let lease = ctx.acquire_lease(attrs).await?;
        for dev in &mut devices {
            let v6 = dev.view.v6;
            dev.view.own = match (v6, lease.subnet, lease.ipv6_subnet) {
                (false, Some(sn), _) => IpAddr::V4(sn.addr()),
                (true, _, Some(sn)) => IpAddr::V6(sn.addr()),
                _ => {
                    let family = if v6 { 6 } else { 4 };
                    return Err(BackendError::Refused(format!(
                        "IPv{family} is enabled but the lease has no IPv{family}"
                    )));
                }
            };
        }
        for dev in &devices {
            configure_device(&ops, dev).await?;
        }
        Ok(VxlanNetwork {
            ops,
            lease,
            mtu,
            options,
            ext_index: iface.index,
            devices,
            direct: HashMap::new(),
            reported: HashSet::new(),
            undecodable: HashSet::new(),
        })
    }

    /// The external interface index (for tests and diagnostics).
    pub fn ext_index(&self) -> u32 {
        self.ext_index
    }

    /// DirectRouting: the external interface when `ip route get <ip>`
    /// gives exactly one route without a gateway (the peer is on our L2
    /// segment), as Go decides it. A failed lookup means encapsulation.
    async fn decide_direct(&mut self, ip: IpAddr) {
        let oif = match self.ops.route_get(ip).await {
            Ok(routes) if routes.len() == 1 && routes[0].gateway.is_none() => routes[0].oif,
            Ok(_) => None,
            Err(e) => {
                warn!("ip route get {ip}: {e}");
                None
            }
        };
        self.direct.insert(ip, oif);
    }

    /// The public addresses DirectRouting decides on: those of vxlan
    /// leases in the families we have devices for.
    fn public_ips<'a>(&self, lease: &'a Lease) -> impl Iterator<Item = IpAddr> + use<'a> {
        let families: Vec<bool> = self.devices.iter().map(|d| d.view.v6).collect();
        families.into_iter().filter_map(|v6| public_ip(lease, v6))
    }

    /// Forgets decisions about addresses no lease has any more.
    fn prune_direct(&mut self, leases: &[&Lease]) {
        if self.direct.is_empty() {
            return;
        }
        let live: HashSet<IpAddr> = leases.iter().flat_map(|l| self.public_ips(l)).collect();
        self.direct.retain(|ip, _| live.contains(ip));
    }

    /// Logs the lease events the way Go does.
    fn log_event(&mut self, event: &LeaseEvent) {
        let lease = &event.lease;
        if event.kind == EventKind::Removed {
            info!("removing subnet: {}", lease.key());
            return;
        }
        if lease.attrs.backend_type != TYPE {
            let v6 = lease
                .ipv6_subnet
                .map(|n| n.to_string())
                .unwrap_or_else(|| "<nil>".into());
            let v4 = lease
                .subnet
                .map(|n| n.to_string())
                .unwrap_or_else(|| "<nil>".into());
            info!(
                "Ignoring non-vxlan v4Subnet({v4}) v6Subnet({v6}): type={}",
                lease.attrs.backend_type
            );
            return;
        }
        for dev in &self.devices {
            let oif = public_ip(lease, dev.view.v6)
                .and_then(|ip| self.direct.get(&ip).copied())
                .flatten();
            match peer_for(lease, &dev.view, oif) {
                Ok(_) => info!("adding subnet: {} on {}", lease.key(), dev.name()),
                Err(why) => {
                    if let Some(msg) = skip_message(&lease.key().to_string(), dev, &why) {
                        warn!("{msg}");
                        self.reported.insert(msg);
                    }
                }
            }
        }
    }

    /// Recreates device `i` when it disappeared or went down (an admin
    /// deleted it) with the same MAC, address and MTU.
    async fn ensure_device(&mut self, i: usize) -> Result<(), BackendError> {
        let ops = self.ops.clone();
        let dev = &mut self.devices[i];
        let present = ops
            .link_by_name(dev.name())
            .await
            .map_err(|e| dp(format!("link {}", dev.name()), e))?;
        if present
            .as_ref()
            .is_some_and(|l| l.index == dev.view.index && l.up)
        {
            return Ok(());
        }
        warn!(
            "vxlan device {} is missing or down; recreating it",
            dev.name()
        );
        let ensured = ops
            .ensure_vxlan(&dev.spec)
            .await
            .map_err(|e| dp(format!("vxlan device {}", dev.name()), e))?;
        disable_accept_ra(&ops, dev.name()).await;
        if ensured.link.index != dev.view.index {
            // Everything the reconcilers applied went with the old device.
            dev.view.index = ensured.link.index;
            dev.neighbours = Reconciler::new();
            dev.fdb = Reconciler::new();
            dev.routes = Reconciler::new();
        }
        configure_device(&ops, dev).await
    }

    /// A full resync: what each device needed repaired (one line per
    /// device that changed, for the log) and the collected failures.
    async fn resync_pass(&mut self, leases: &[&Lease]) -> (Vec<String>, Result<(), BackendError>) {
        if self.options.direct_routing {
            // Peers never decided (the snapshot at start is their event).
            let undecided: HashSet<IpAddr> = leases
                .iter()
                .flat_map(|l| self.public_ips(l))
                .filter(|ip| !self.direct.contains_key(ip))
                .collect();
            for ip in undecided {
                self.decide_direct(ip).await;
            }
        }
        self.prune_direct(leases);
        let mut errors = Vec::new();
        let mut skips = Vec::new();
        let mut summaries = Vec::new();
        self.undecodable.clear();
        for i in 0..self.devices.len() {
            if let Err(e) = self.ensure_device(i).await {
                errors.push(e);
                continue;
            }
            let dev = &mut self.devices[i];
            let (state, skipped) = desired_state(&dev.view, leases, &self.direct);
            self.undecodable.extend(undecodable(&skipped));
            skips.extend(
                skipped
                    .iter()
                    .filter_map(|(key, why)| skip_message(&key.to_string(), dev, why)),
            );
            for (key, why) in &skipped {
                if let Skip::OtherType(t) = why {
                    debug!("Ignoring non-vxlan subnet {key}: type={t}");
                }
            }
            let (t, errs) = dev.apply(&self.ops, &state, true).await;
            errors.extend(errs);
            summaries.extend(resync_summary(dev.name(), &t));
        }
        self.report_skips(skips);
        (summaries, BackendError::collect(errors))
    }

    /// Logs the skips of a resync that were not reported before.
    fn report_skips(&mut self, skipped: Vec<String>) {
        let now: HashSet<String> = skipped.into_iter().collect();
        for msg in now.difference(&self.reported) {
            warn!("{msg}");
        }
        self.reported = now;
    }
}

/// The kernel must not autoconfigure addresses on the VTEP. As in Go, a
/// failure (no IPv6, no permission to write `/proc/sys`) is not an error.
async fn disable_accept_ra(ops: &SharedOps, name: &str) {
    if let Err(e) = ops.disable_accept_ra(name).await {
        debug!("{e}");
    }
}

/// The keys among `skipped` whose backend data did not decode.
fn undecodable(skipped: &[(SubnetKey, Skip)]) -> impl Iterator<Item = SubnetKey> + '_ {
    skipped
        .iter()
        .filter(|(_, why)| matches!(why, Skip::BadData(_)))
        .map(|(key, _)| *key)
}

/// The warning for a lease that gets no programming on `dev`.
/// `None` when the skip is not worth a warning (another backend's lease, a
/// family the lease lacks).
fn skip_message(key: &str, dev: &Device, why: &Skip) -> Option<String> {
    match why {
        Skip::BadData(e) => Some(format!(
            "lease {key}: error decoding subnet lease JSON: {e}; skipping it"
        )),
        Skip::NotOurs(sn) => Some(format!(
            "not programming lease {key} on {}: its subnet {sn} is outside the network this vxlan backend manages",
            dev.name()
        )),
        Skip::NoFamily | Skip::OtherType(_) => None,
    }
}

/// Address, link up and MAC check on one device.
async fn configure_device(ops: &SharedOps, dev: &Device) -> Result<(), BackendError> {
    let name = dev.name();
    let index = dev.view.index;
    let own = (dev.view.own, dev.own_prefix);
    let existing = ops
        .addresses(index)
        .await
        .map_err(|e| dp(format!("addresses of {name}"), e))?;
    for a in existing {
        let ours = (a.addr, a.prefix) == own;
        let stale = if dev.view.v6 {
            // Everything but link-local and ours goes.
            !matches!(a.addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
        } else {
            crate::state::within(dev.view.network, a.addr, 32)
        };
        if !ours && stale && a.addr.is_ipv6() == dev.view.v6 {
            ops.del_address(index, a.addr, a.prefix)
                .await
                .map_err(|e| dp(format!("address {}/{} on {name}", a.addr, a.prefix), e))?;
        }
    }
    ops.add_address(index, own.0, own.1)
        .await
        .map_err(|e| dp(format!("address {}/{} on {name}", own.0, own.1), e))?;
    ops.set_up(index)
        .await
        .map_err(|e| dp(format!("link {name} up"), e))?;
    let link = ops
        .link_by_index(index)
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
        leases: &[&Lease],
    ) -> Result<(), BackendError> {
        for event in events {
            if self.options.direct_routing && event.kind == EventKind::Added {
                // A lease event decides its peer afresh (it may have moved).
                let ips: Vec<IpAddr> = self.public_ips(&event.lease).collect();
                for ip in ips {
                    self.decide_direct(ip).await;
                }
            }
            self.log_event(event);
        }
        self.prune_direct(leases);
        let mut errors = Vec::new();
        self.undecodable.clear();
        for dev in &mut self.devices {
            let (state, skipped) = desired_state(&dev.view, leases, &self.direct);
            self.undecodable.extend(undecodable(&skipped));
            let (tally, errs) = dev.apply(&self.ops, &state, false).await;
            errors.extend(errs);
            if let Some(done) = per_kind(&tally, |r| r.added + r.changed + r.removed) {
                debug!("{}: events applied to {done}", dev.name());
            }
        }
        BackendError::collect(errors)
    }

    async fn resync(&mut self, leases: &[&Lease]) -> Result<(), BackendError> {
        let (summaries, result) = self.resync_pass(leases).await;
        for line in summaries {
            info!("{line}");
        }
        result
    }

    fn resync_interval(&self) -> Option<Duration> {
        Some(RESYNC_INTERVAL)
    }

    fn undecodable_leases(&self) -> usize {
        self.undecodable.len()
    }

    fn take_resync_trigger(&mut self) -> Option<ResyncTrigger> {
        flannel_netlink::device_damage_trigger(
            self.devices.iter().map(|d| d.spec.name.clone()).collect(),
        )
    }

    async fn lease_changed(&mut self, lease: &Lease) -> Result<(), BackendError> {
        follow_renewal(&mut self.lease, lease, TYPE)
    }
}

#[cfg(test)]
mod tests;
