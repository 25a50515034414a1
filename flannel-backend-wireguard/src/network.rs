//! The registered wireguard network: its devices (kernel or userspace),
//! their addresses and routes, and one peer reconciler per device.

use crate::device::{PeerSet, SharedDevice};
use crate::kernel::KernelDevice;
use crate::keys::{self, Key};
use crate::metrics::WgMetrics;
use crate::options::{IMPLEMENTATION_ENV, Implementation, Mode, TYPE, WireguardOptions};
use crate::peers::{DeviceRole, LocalAddrs, PeerConfig, Skip, WgLeaseData, desired_peers};
use crate::userspace::{SocketFamily, UserspaceDevice};
use flannel_core::backend::{
    BackendError, Driver, Network, RegisterContext, ResyncTrigger, follow_renewal,
};
use flannel_core::event::LeaseEvent;
use flannel_core::ip::{Ip4Net, Ip6Net};
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::reconcile::Reconciler;
use flannel_netlink::{RT_SCOPE_LINK, Route, SharedOps};
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// How often the full state is checked and repaired (and the peers'
/// counters refreshed).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10);

fn dp(object: String, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BackendError {
    BackendError::datapath(object, e)
}

/// The implementation a network runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Active {
    /// Kernel WireGuard.
    Kernel,
    /// Our userspace WireGuard.
    Userspace,
}

impl Active {
    /// `kernel` or `userspace`.
    pub fn as_str(self) -> &'static str {
        match self {
            Active::Kernel => "kernel",
            Active::Userspace => "userspace",
        }
    }
}

/// One WireGuard device and the reconciler of its peers.
struct Device {
    role: DeviceRole,
    port: u16,
    index: u32,
    dev: SharedDevice,
    /// The userspace device behind `dev`, to restart its datapath; `None`
    /// for a kernel device.
    userspace: Option<Arc<UserspaceDevice>>,
    peers: Reconciler<PeerConfig>,
}

impl Device {
    fn name(&self) -> &'static str {
        self.role.name()
    }
    fn carries_v4(&self) -> bool {
        !matches!(self.role, DeviceRole::V6)
    }
    fn carries_v6(&self) -> bool {
        !matches!(self.role, DeviceRole::V4)
    }
}

/// The wireguard network (see the crate docs).
pub struct WireguardNetwork {
    ops: SharedOps,
    lease: Lease,
    mtu: u32,
    options: WireguardOptions,
    /// For a kernel device recreated after a deletion (never logged).
    private_key: Key,
    local: LocalAddrs,
    network: Option<Ip4Net>,
    ipv6_network: Option<Ip6Net>,
    active: Active,
    devices: Vec<Device>,
    metrics: WgMetrics,
    /// Skip warnings already given (a resync every 10 s must not repeat them).
    reported: HashSet<String>,
    undecodable: usize,
    /// A `Mutex` only to make the network `Sync` (the driver is not).
    driver: std::sync::Mutex<Option<Driver>>,
}

/// Which implementation to use: the environment variable first, then the
/// `Implementation` option.
fn wanted_implementation(
    ctx: &RegisterContext<'_>,
    opts: &WireguardOptions,
) -> Result<Implementation, BackendError> {
    match ctx.host.env(IMPLEMENTATION_ENV).filter(|v| !v.is_empty()) {
        None => Ok(opts.implementation),
        Some(v) => Implementation::parse(&v).ok_or_else(|| {
            BackendError::config(
                TYPE,
                format!("{IMPLEMENTATION_ENV}={v:?} is not one of auto, kernel, userspace"),
            )
        }),
    }
}

impl WireguardNetwork {
    /// Loads the key, creates the devices, acquires the lease and
    /// configures the local side.
    pub async fn register(
        ops: SharedOps,
        ctx: &RegisterContext<'_>,
    ) -> Result<WireguardNetwork, BackendError> {
        let options = WireguardOptions::parse(ctx.config.backend.as_ref())?;
        let wanted = wanted_implementation(ctx, &options)?;
        let iface = ctx.ext_iface;
        let mtu = options.device_mtu(iface.mtu);
        let key_path = keys::key_file_path(ctx.host.env(keys::KEY_FILE_ENV));
        let (private_key, generated) =
            keys::load_or_generate(&key_path).map_err(|e| BackendError::Refused(e.to_string()))?;
        if generated {
            info!(
                "generated a new WireGuard private key in {}",
                key_path.display()
            );
        }
        let public_key = private_key.public_key();
        info!(
            "WireGuard config: Mode={} ListenPort={} ListenPortV6={} PersistentKeepaliveInterval={}s PSK={} public key {}",
            options.mode.as_str(),
            options.listen_port,
            options.listen_port_v6,
            options.keepalive,
            if options.psk.is_some() {
                "set"
            } else {
                "unset"
            },
            public_key.to_base64()
        );
        let (v4, v6) = (ctx.config.enable_ipv4, ctx.config.enable_ipv6);
        let roles: Vec<(DeviceRole, u16)> = match options.mode {
            Mode::Separate => [
                (v4, DeviceRole::V4, options.listen_port),
                (v6, DeviceRole::V6, options.listen_port_v6),
            ]
            .into_iter()
            .filter(|(on, _, _)| *on)
            .map(|(_, r, p)| (r, p))
            .collect(),
            mode => vec![(DeviceRole::Single(mode), options.listen_port)],
        };
        for (family, on, addr) in [
            (4, v4, iface.ext_addr.map(IpAddr::V4)),
            (6, v6, iface.ext_v6_addr.map(IpAddr::V6)),
        ] {
            if on && addr.is_none() {
                return Err(BackendError::Refused(format!(
                    "IPv{family} is enabled but the external interface {} has no IPv{family} address",
                    iface.name
                )));
            }
        }
        let metrics = ctx
            .host
            .extensions
            .get::<WgMetrics>()
            .cloned()
            .unwrap_or_default();

        // The devices, before the lease: kernel first unless told otherwise.
        let mut active = match wanted {
            Implementation::Userspace => Active::Userspace,
            _ => Active::Kernel,
        };
        let mut fallback = None;
        let mut devices = Vec::new();
        let mut drivers = Vec::new();
        for (role, port) in roles {
            let name = role.name();
            if active == Active::Kernel {
                match ops.ensure_wireguard(name, mtu).await {
                    Ok(ensured) => {
                        if let Some(why) = &ensured.recreated_because {
                            warn!(
                                "\"{name}\" already exists with incompatible configuration: {why}; recreated device"
                            );
                        } else if !ensured.created {
                            info!(
                                "reusing the existing WireGuard device {name} (its peers and sessions are kept)"
                            );
                        }
                        let dev = KernelDevice::open(name)
                            .map_err(|e| dp(format!("wireguard device {name}"), e))?;
                        devices.push(Device {
                            role,
                            port,
                            index: ensured.link.index,
                            dev: Arc::new(dev),
                            userspace: None,
                            peers: Reconciler::new(),
                        });
                        continue;
                    }
                    Err(e) if e.is_unsupported_kind() && wanted == Implementation::Auto => {
                        let reason = format!("the kernel refused the wireguard link type ({e})");
                        warn!("{reason}; using the userspace WireGuard implementation");
                        fallback = Some(reason);
                        active = Active::Userspace;
                    }
                    Err(e) if e.is_unsupported_kind() => {
                        return Err(BackendError::Refused(format!(
                            "{e}: this kernel has no WireGuard, and the implementation is forced to kernel (set {IMPLEMENTATION_ENV}=auto or userspace)"
                        )));
                    }
                    Err(e) => return Err(dp(format!("wireguard device {name}"), e)),
                }
            }
            let family = match role {
                DeviceRole::V4 | DeviceRole::Single(Mode::Ipv4) => SocketFamily::V4,
                DeviceRole::V6 | DeviceRole::Single(Mode::Ipv6) => SocketFamily::V6,
                // Go's `auto`: one device, each peer's endpoint of either
                // family.
                DeviceRole::Single(_) => SocketFamily::Dual,
            };
            let opened =
                crate::userspace::open(&ops, name, mtu, &private_key, port, family, ctx.host)
                    .await?;
            devices.push(Device {
                role,
                port,
                index: opened.index,
                dev: opened.device,
                userspace: Some(opened.userspace),
                peers: Reconciler::new(),
            });
            drivers.push(opened.driver);
        }
        if active == Active::Kernel && !drivers.is_empty() {
            // Cannot happen: the fallback happens at the first device.
            return Err(BackendError::Refused(
                "mixed kernel and userspace devices".into(),
            ));
        }
        metrics.set_implementation(active.as_str(), fallback);
        for d in &devices {
            d.dev.configure(&private_key, d.port).await.map_err(|e| {
                dp(
                    format!(
                        "wireguard device {} (private key, listen-port {})",
                        d.name(),
                        d.port
                    ),
                    e,
                )
            })?;
        }

        let data = |port| {
            WgLeaseData {
                public_key: public_key.to_base64(),
                port,
            }
            .to_raw()
        };
        let mut attrs = LeaseAttrs {
            backend_type: TYPE.to_string(),
            ..LeaseAttrs::default()
        };
        if v4 {
            attrs.public_ip = iface.ext_addr.unwrap_or(attrs.public_ip);
            attrs.backend_data = Some(data(options.listen_port));
        }
        if v6 {
            // As Go: ListenPortV6 even when one device listens on ListenPort.
            attrs.public_ipv6 = iface.ext_v6_addr;
            attrs.backend_v6_data = Some(data(options.listen_port_v6));
        }
        let lease = ctx.acquire_lease(attrs).await?;
        let driver = match drivers.len() {
            0 => None,
            1 => drivers.pop(),
            _ => Some(Box::pin(async move {
                let results = futures_util::future::join_all(drivers).await;
                results
                    .into_iter()
                    .collect::<Result<Vec<()>, BackendError>>()
                    .map(drop)
            }) as Driver),
        };
        let net = WireguardNetwork {
            ops,
            lease,
            mtu,
            options,
            private_key,
            local: LocalAddrs {
                ext_addr: iface.ext_addr,
                ext_v6_addr: iface.ext_v6_addr,
            },
            network: ctx.config.network,
            ipv6_network: ctx.config.ipv6_network,
            active,
            devices,
            metrics,
            reported: HashSet::new(),
            undecodable: 0,
            driver: std::sync::Mutex::new(driver),
        };
        for d in &net.devices {
            net.configure_local(d).await?;
        }
        Ok(net)
    }

    /// The implementation in use.
    pub fn active(&self) -> Active {
        self.active
    }

    /// Our address(es) on device `d`, its routes, link up.
    async fn configure_local(&self, d: &Device) -> Result<(), BackendError> {
        let name = d.name();
        let mut own: Vec<(IpAddr, u8)> = Vec::new();
        if d.carries_v4()
            && let Some(sn) = self.lease.subnet
        {
            own.push((IpAddr::V4(sn.addr()), 32));
        }
        if d.carries_v6()
            && let Some(sn) = self.lease.ipv6_subnet
        {
            own.push((IpAddr::V6(sn.addr()), 128));
        }
        if matches!(d.role, DeviceRole::V6) && own.is_empty() {
            return Err(BackendError::Refused(
                "IPv6 is enabled but the lease has no IPv6".into(),
            ));
        }
        if matches!(d.role, DeviceRole::V4) && own.is_empty() {
            return Err(BackendError::Refused(
                "IPv4 is enabled but the lease has no IPv4".into(),
            ));
        }
        let existing = self
            .ops
            .addresses(d.index)
            .await
            .map_err(|e| dp(format!("addresses of {name}"), e))?;
        for a in existing {
            if own.contains(&(a.addr, a.prefix)) {
                continue;
            }
            let stale = match a.addr {
                IpAddr::V4(ip) => self.network.is_some_and(|n| n.contains(ip)),
                IpAddr::V6(ip) => ip.segments()[0] & 0xffc0 != 0xfe80,
            };
            if stale {
                self.ops
                    .del_address(d.index, a.addr, a.prefix)
                    .await
                    .map_err(|e| dp(format!("address {}/{} on {name}", a.addr, a.prefix), e))?;
            }
        }
        for (addr, prefix) in &own {
            self.ops
                .add_address(d.index, *addr, *prefix)
                .await
                .map_err(|e| dp(format!("address {addr}/{prefix} on {name}"), e))?;
        }
        self.ops
            .set_up(d.index)
            .await
            .map_err(|e| dp(format!("link {name} up"), e))?;
        for r in self.routes_for(d) {
            self.ops.replace_route(&r).await.map_err(|e| {
                dp(
                    format!("route {}/{} dev {name} scope link", r.dst, r.prefix),
                    e,
                )
            })?;
        }
        Ok(())
    }

    /// Recreates the devices someone deleted (`ip link del flannel-wg`):
    /// a userspace device gets a new TUN and engine on the same protocol
    /// state (key, peers and sessions kept); a kernel device is created
    /// again with the private key and listen port, and its peers are added
    /// again by the resync that follows (they handshake anew). Then the
    /// addresses, link state and routes are put back.
    async fn recreate_deleted(&mut self) -> Result<(), BackendError> {
        let mut errors = Vec::new();
        for i in 0..self.devices.len() {
            let (index, name) = (self.devices[i].index, self.devices[i].name());
            let present = match self.ops.link_by_index(index).await {
                // The index of a deleted link may be reused by another one.
                Ok(link) => link.is_some_and(|l| l.name == name),
                Err(e) => {
                    errors.push(dp(format!("link {name}"), e));
                    continue;
                }
            };
            if !present && let Err(e) = self.recreate(i).await {
                errors.push(e);
            }
        }
        BackendError::collect(errors)
    }

    async fn recreate(&mut self, i: usize) -> Result<(), BackendError> {
        let d = &self.devices[i];
        let name = d.name();
        let index = match &d.userspace {
            Some(u) => u.recreate(&self.ops).await?,
            None => {
                let ensured = self
                    .ops
                    .ensure_wireguard(name, self.mtu)
                    .await
                    .map_err(|e| dp(format!("wireguard device {name}"), e))?;
                d.dev
                    .configure(&self.private_key, d.port)
                    .await
                    .map_err(|e| {
                        dp(
                            format!(
                                "wireguard device {name} (private key, listen-port {})",
                                d.port
                            ),
                            e,
                        )
                    })?;
                ensured.link.index
            }
        };
        let d = &mut self.devices[i];
        d.index = index;
        // What was applied went with the old device.
        d.peers = Reconciler::new();
        self.metrics.count_recreation(name);
        match self.active {
            Active::Userspace => warn!(
                "{name} was deleted; recreated it and restarted the userspace WireGuard datapath (peers and sessions kept)"
            ),
            Active::Kernel => warn!(
                "{name} was deleted; recreated it with the same private key and listen port, and its peers are added again"
            ),
        }
        self.configure_local(&self.devices[i]).await
    }

    /// `<Network> dev <d> scope link` (and the IPv6 network).
    fn routes_for(&self, d: &Device) -> Vec<Route> {
        let mut out = Vec::new();
        let mut push = |dst: IpAddr, prefix: u8| {
            let mut r = Route::unicast(dst, prefix);
            r.oif = Some(d.index);
            r.scope = RT_SCOPE_LINK;
            out.push(r);
        };
        if d.carries_v4()
            && self.lease.subnet.is_some()
            && let Some(n) = self.network
        {
            push(IpAddr::V4(n.addr()), n.prefix_len());
        }
        if d.carries_v6()
            && self.lease.ipv6_subnet.is_some()
            && let Some(n) = self.ipv6_network
        {
            push(IpAddr::V6(n.addr()), n.prefix_len());
        }
        out
    }

    /// Applies the desired peers to every device: against memory (`full`
    /// false) or a fresh listing. Refreshes the published counters.
    async fn apply(&mut self, leases: &[&Lease], full: bool) -> Result<(), BackendError> {
        let mut errors = Vec::new();
        let mut skips = Vec::new();
        let mut undecodable = HashSet::new();
        for d in &mut self.devices {
            let (want, skipped) = desired_peers(leases, d.role, d.port, &self.options, self.local);
            for (key, why) in skipped {
                match why {
                    Skip::BadData(e) => {
                        undecodable.insert(key.clone());
                        skips.push(format!(
                            "lease {key}: {e}; no peer on {} for it",
                            d.role.name()
                        ));
                    }
                    Skip::NoEndpoint(e) => skips.push(format!(
                        "lease {key}: {e}; no peer on {} for it",
                        d.role.name()
                    )),
                    Skip::OtherType(t) => debug!("Ignoring non-wireguard subnet {key}: type={t}"),
                    Skip::NoFamily => {}
                }
            }
            let set = PeerSet::new(d.dev.clone());
            let res = if full {
                d.peers.resync(&set, &want).await
            } else {
                d.peers.update(&set, &want).await
            };
            let report = match res {
                Ok(r) => r,
                Err(f) => {
                    errors.push(f.error);
                    f.report
                }
            };
            if !report.is_empty() {
                let line = format!("{}: peers {report}", d.role.name());
                if full {
                    info!("{line}");
                } else {
                    debug!("{line}");
                }
            }
            match d.dev.status().await {
                Ok(st) => self.metrics.set_device(d.role.name(), st),
                Err(e) => debug!("reading the peers of {}: {e}", d.role.name()),
            }
        }
        self.undecodable = undecodable.len();
        let now: HashSet<String> = skips.into_iter().collect();
        for msg in now.difference(&self.reported) {
            warn!("{msg}");
        }
        self.reported = now;
        if full {
            // The routes and addresses an administrator may have removed.
            let idx: Vec<usize> = (0..self.devices.len()).collect();
            for i in idx {
                let d = &self.devices[i];
                for r in self.routes_for(d) {
                    if let Err(e) = self.ops.replace_route(&r).await {
                        errors.push(dp(
                            format!("route {}/{} dev {} scope link", r.dst, r.prefix, d.name()),
                            e,
                        ));
                    }
                }
            }
        }
        BackendError::collect(errors)
    }
}

#[async_trait::async_trait]
impl Network for WireguardNetwork {
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
            info!("{}", e.describe(TYPE));
        }
        self.apply(leases, false).await
    }

    async fn resync(&mut self, leases: &[&Lease]) -> Result<(), BackendError> {
        let recreated = self.recreate_deleted().await;
        let applied = self.apply(leases, true).await;
        BackendError::collect(recreated.err().into_iter().chain(applied.err()).collect())
    }

    /// A deleted device takes its routes along (and leaves a userspace
    /// engine on a dead TUN): resync at once, which recreates it, rather
    /// than at the next periodic resync.
    fn take_resync_trigger(&mut self) -> Option<ResyncTrigger> {
        flannel_netlink::device_damage_trigger(
            self.devices.iter().map(|d| d.name().to_string()).collect(),
        )
    }

    fn resync_interval(&self) -> Option<Duration> {
        Some(RESYNC_INTERVAL)
    }

    fn undecodable_leases(&self) -> usize {
        self.undecodable
    }

    fn take_driver(&mut self) -> Option<Driver> {
        self.driver
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    async fn lease_changed(&mut self, lease: &Lease) -> Result<(), BackendError> {
        follow_renewal(&mut self.lease, lease, TYPE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_core::backend::{ExternalInterface, HostContext};
    use flannel_core::config::NetConfig;
    use flannel_netlink::fake::FakeNetlink;
    use flannel_subnet::local::LocalStore;
    use flannel_subnet::manager::LeaseManager;
    use std::sync::Arc;

    /// Registers on a fake kernel without WireGuard; returns the error.
    async fn refused(conf: &str, env: Vec<(&'static str, String)>) -> String {
        let nl = Arc::new(FakeNetlink::new());
        nl.add_link("eth0", 1500);
        nl.lack_link_kind("wireguard");
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).unwrap();
        store.set_config(conf).unwrap();
        let manager = LeaseManager::new(store);
        let mut config = NetConfig::parse(conf).unwrap();
        config.check().unwrap();
        let iface = ExternalInterface {
            name: "eth0".into(),
            index: 2,
            mtu: 1500,
            iface_addr: Some([192, 168, 100, 1].into()),
            iface_v6_addr: None,
            ext_addr: Some([192, 168, 100, 1].into()),
            ext_v6_addr: None,
        };
        let ops: SharedOps = nl.clone();
        let key = dir.path().join("wgkey").display().to_string();
        let host = HostContext::default()
            .with_extension(ops.clone())
            .with_env(move |k| {
                if k == keys::KEY_FILE_ENV {
                    return Some(key.clone());
                }
                env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
            });
        let ctx = RegisterContext {
            config: &config,
            ext_iface: &iface,
            manager: &manager,
            previous_subnet: None,
            previous_ipv6_subnet: None,
            host: &host,
        };
        match WireguardNetwork::register(ops, &ctx).await {
            Ok(_) => panic!("registration should fail"),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn forced_kernel_on_a_kernel_without_wireguard() {
        let e = refused(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","Implementation":"kernel"}}"#,
            vec![],
        )
        .await;
        assert!(
            e.contains("Operation not supported")
                && e.contains("forced to kernel")
                && e.contains(IMPLEMENTATION_ENV),
            "{e}"
        );
        // The environment variable wins over the option.
        let e = refused(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#,
            vec![(IMPLEMENTATION_ENV, "kernel".into())],
        )
        .await;
        assert!(e.contains("forced to kernel"), "{e}");
        let e = refused(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#,
            vec![(IMPLEMENTATION_ENV, "fast".into())],
        )
        .await;
        assert_eq!(
            e,
            format!(
                "invalid wireguard backend configuration: {IMPLEMENTATION_ENV}=\"fast\" is not one of auto, kernel, userspace"
            )
        );
        let e = refused(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","Mode":"x"}}"#,
            vec![],
        )
        .await;
        assert_eq!(
            e,
            "invalid wireguard backend configuration: no valid Mode configured"
        );
    }
}
