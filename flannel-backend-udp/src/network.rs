//! The registered udp network: the TUN's kernel state (address, link,
//! route), the engine that moves the packets, and the peer table it reads.

use crate::codec::UdpCodec;
use crate::metrics::EngineState;
use crate::metrics::{DatapathStats, UdpMetrics};
use crate::options::{OFFLOAD_ENV, OVERHEAD, TUN_NAME, UdpOptions, offload_from_env};
use crate::peers::{PeerRoute, Skipped, peer_id, peer_table};
use flannel_core::backend::{BackendError, Driver, Network, RegisterContext, ResyncTrigger};
use flannel_core::event::{EventKind, LeaseEvent, LeaseWatchResult};
use flannel_core::ip::Ip4Net;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::reconcile::Reconciler;
use flannel_netlink::sets::RouteSet;
use flannel_netlink::{Family, Route, SharedOps};
use flannel_tun::{
    Engine, EngineHandle, EngineOptions, OffloadMode, Peer, PeerTableHandle, Tun, TunConfig,
};
use futures_util::StreamExt;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How often the driver checks that the engine's threads still run. (A
/// deleted TUN is noticed by the link watch of
/// [`Network::take_resync_trigger`] at once, and by the periodic resync
/// otherwise.)
pub const ENGINE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often the TUN's address, link state and route are checked and
/// repaired, and the peer table rebuilt from all leases.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10);

fn dp(object: String, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BackendError {
    BackendError::datapath(object, e)
}

/// What the datapath is (re)built from: the socket's address and the TUN.
/// Registration and the recreation of a deleted TUN both open it with
/// [`DatapathSpec::open`] and start the engine with
/// [`DatapathSpec::start`].
struct DatapathSpec {
    bind: SocketAddr,
    tun: TunConfig,
}

impl DatapathSpec {
    /// Binds the UDP socket on `IfaceAddr:Port` and opens (or re-attaches
    /// to) the persistent TUN.
    fn open(&self) -> Result<(UdpSocket, Tun), BackendError> {
        let bind = self.bind;
        let socket = UdpSocket::bind(bind).map_err(|e| dp(format!("UDP socket on {bind}"), e))?;
        let tun = flannel_tun::open_tun(&self.tun).map_err(|e| dp(format!("TUN {TUN_NAME}"), e))?;
        Ok((socket, tun))
    }

    /// Starts the engine on `tun` and `socket` with the network's codec and
    /// peer table.
    fn start(
        &self,
        tun: Tun,
        socket: UdpSocket,
        codec: Arc<UdpCodec>,
        peers: PeerTableHandle,
    ) -> Result<EngineHandle, BackendError> {
        let engine_options = EngineOptions {
            // FLANNEL_UDP_OFFLOAD=off: the plain batching mode.
            mode: (!self.tun.offload).then_some(OffloadMode::Batch),
            ..EngineOptions::default()
        };
        let engine = Engine::start(tun, socket, codec, peers, engine_options)
            .map_err(|e| dp(format!("the udp datapath on {TUN_NAME}"), e))?;
        info!(
            "udp datapath started on {TUN_NAME} (MTU {}, socket {}) in {} mode",
            self.tun.mtu,
            self.bind,
            engine.mode()
        );
        Ok(engine)
    }
}

/// The interface index of the TUN just opened.
async fn tun_index(ops: &SharedOps) -> Result<u32, BackendError> {
    Ok(ops
        .link_by_name(TUN_NAME)
        .await
        .map_err(|e| dp(format!("link {TUN_NAME}"), e))?
        .ok_or_else(|| {
            BackendError::Refused(format!("{TUN_NAME} vanished right after it was opened"))
        })?
        .index)
}

/// The udp network (see the crate docs).
pub struct UdpNetwork {
    ops: SharedOps,
    lease: Lease,
    mtu: u32,
    options: UdpOptions,
    spec: DatapathSpec,
    network: Ip4Net,
    tun_index: u32,
    codec: Arc<UdpCodec>,
    peers: PeerTableHandle,
    routes: Reconciler<Route>,
    metrics: UdpMetrics,
    /// Skipped leases already warned about.
    reported: HashSet<String>,
    /// The peers last given to the engine.
    current: Vec<PeerRoute>,
}

/// The route `<Network> dev <tun>` (proto boot, scope global, as Go adds it).
pub fn network_route(network: Ip4Net, tun_index: u32) -> Route {
    let mut r = Route::unicast(IpAddr::V4(network.addr()), network.prefix_len());
    r.oif = Some(tun_index);
    r
}

/// The engine's form of the peer table.
pub fn engine_peers(peers: &[PeerRoute]) -> Vec<(ipnet::IpNet, Peer)> {
    peers
        .iter()
        .map(|p| {
            let net = ipnet::IpNet::V4(
                ipnet::Ipv4Net::new(p.subnet.addr(), p.subnet.prefix_len())
                    .expect("a lease subnet's prefix is at most 32"),
            );
            (
                net,
                Peer {
                    endpoint: SocketAddr::V4(p.endpoint),
                    id: peer_id(p),
                },
            )
        })
        .collect()
}

impl UdpNetwork {
    /// Binds the socket, opens (or re-attaches to) the persistent TUN,
    /// acquires the lease, configures the TUN and starts the engine.
    pub async fn register(
        ops: SharedOps,
        ctx: &RegisterContext<'_>,
    ) -> Result<UdpNetwork, BackendError> {
        let options = UdpOptions::parse(ctx.config.backend.as_ref())?;
        let offload = offload_from_env(ctx.host.env(OFFLOAD_ENV).as_deref())?;
        info!(
            "UDP config: Port={} (offloads {})",
            options.port,
            if offload {
                "on where the kernel grants them"
            } else {
                "off by FLANNEL_UDP_OFFLOAD"
            }
        );
        let config = ctx.config;
        if !config.enable_ipv4 || config.enable_ipv6 {
            return Err(BackendError::Refused(
                "the udp backend carries IPv4 only, as Go flannel's: set EnableIPv4 and unset EnableIPv6".to_string(),
            ));
        }
        let network = config.network.ok_or_else(|| {
            BackendError::Refused("the udp backend needs an IPv4 Network".to_string())
        })?;
        let iface = ctx.ext_iface;
        let iface_addr = iface.iface_addr.ok_or_else(|| {
            BackendError::Refused(format!(
                "the udp backend needs an IPv4 address on {}, and it has none",
                iface.name
            ))
        })?;
        let mtu = iface.mtu.saturating_sub(OVERHEAD);
        // Bound before the lease is taken: a port in use must not leave a
        // lease behind that no datapath serves.
        let spec = DatapathSpec {
            bind: SocketAddr::from((iface_addr, options.port)),
            tun: TunConfig {
                name: TUN_NAME.to_string(),
                mtu,
                queues: 1,
                offload,
                persist: true,
            },
        };
        let (socket, tun) = spec.open()?;
        let attrs = LeaseAttrs::new(iface.ext_addr.unwrap_or(iface_addr));
        let lease = ctx.acquire_lease(attrs).await?;
        let subnet = lease.subnet.ok_or_else(|| {
            BackendError::Refused(format!("the lease {} has no IPv4 subnet", lease.key()))
        })?;
        let tun_index = tun_index(&ops).await?;
        let codec = Arc::new(UdpCodec::new(subnet.addr()));
        let peers = PeerTableHandle::new();
        let metrics = ctx
            .host
            .extensions
            .get::<UdpMetrics>()
            .cloned()
            .unwrap_or_default();
        let mut net = UdpNetwork {
            ops,
            lease,
            mtu,
            options,
            spec,
            network,
            tun_index,
            codec: codec.clone(),
            peers: peers.clone(),
            routes: Reconciler::new(),
            metrics,
            reported: HashSet::new(),
            current: Vec::new(),
        };
        net.configure_tun().await?;
        // Peers before the first packet: without them the engine would
        // answer every packet with Net Unreachable until the runner's first
        // snapshot arrives (after a restart, traffic is already flowing).
        match seed_leases(ctx, &net.lease).await {
            Ok(leases) => {
                let refs: Vec<&Lease> = leases.iter().collect();
                net.update_peers(&refs);
                info!(
                    "udp: {} peers known before the datapath starts",
                    net.current.len()
                );
            }
            Err(why) => info!("udp: starting without peers until the first lease snapshot ({why})"),
        }
        let engine = net.spec.start(tun, socket, codec, peers)?;
        net.metrics.attach(engine);
        Ok(net)
    }

    /// The TUN's interface index.
    pub fn tun_index(&self) -> u32 {
        self.tun_index
    }

    /// The engine's counters now; `None` once it is stopped.
    pub fn stats(&self) -> Option<DatapathStats> {
        self.metrics.read()
    }

    /// `<subnet>/32` on the TUN (stale addresses of the network removed),
    /// link up, route `<Network> dev <tun>`; a deleted TUN is recreated
    /// first (with a restart of the engine).
    async fn configure_tun(&mut self) -> Result<(), BackendError> {
        let link = self
            .ops
            .link_by_index(self.tun_index)
            .await
            .map_err(|e| dp(format!("link {TUN_NAME}"), e))?
            // The index of a deleted link may be reused by another one.
            .filter(|l| l.name == TUN_NAME);
        let up = match link {
            Some(l) => l.up,
            None => {
                self.recreate_tun().await?;
                false
            }
        };
        let index = self.tun_index;
        let own = IpAddr::V4(self.tun_addr());
        let existing = self
            .ops
            .addresses(index)
            .await
            .map_err(|e| dp(format!("addresses of {TUN_NAME}"), e))?;
        let mut present = false;
        for a in existing {
            if (a.addr, a.prefix) == (own, 32) {
                present = true;
                continue;
            }
            // An address of a previous lease (our subnet moved).
            if let IpAddr::V4(v4) = a.addr
                && self.network.contains(v4)
            {
                info!(
                    "removing {}/{} of an earlier lease from {TUN_NAME}",
                    a.addr, a.prefix
                );
                self.ops
                    .del_address(index, a.addr, a.prefix)
                    .await
                    .map_err(|e| dp(format!("address {}/{} on {TUN_NAME}", a.addr, a.prefix), e))?;
            }
        }
        if !present {
            self.ops
                .add_address(index, own, 32)
                .await
                .map_err(|e| dp(format!("address {own}/32 on {TUN_NAME}"), e))?;
        }
        if !up {
            self.ops
                .set_up(index)
                .await
                .map_err(|e| dp(format!("link {TUN_NAME} up"), e))?;
        }
        accept_local_answers();
        let want = [network_route(self.network, index)];
        let set = self.route_set();
        match self.routes.resync(&set, &want).await {
            Ok(r) if !r.is_empty() => info!(
                "{TUN_NAME}: route {}/{} dev {TUN_NAME} {}",
                self.network.addr(),
                self.network.prefix_len(),
                if r.added > 0 { "added" } else { "repaired" }
            ),
            Ok(_) => {}
            Err(f) => return Err(f.error),
        }
        Ok(())
    }

    /// The TUN was deleted (`ip link del flannel0`): the engine's threads
    /// hold a dead device (reads fail with EBADFD). Stops that engine,
    /// which frees the UDP port, then binds the socket again, opens a new
    /// persistent TUN and starts a new engine on the current peer table.
    /// The route went with the old device: the reconciler forgets it.
    async fn recreate_tun(&mut self) -> Result<(), BackendError> {
        let spec = &self.spec;
        let (codec, peers) = (self.codec.clone(), self.peers.clone());
        self.metrics.restart(|| {
            let (socket, tun) = spec.open()?;
            spec.start(tun, socket, codec, peers)
        })?;
        self.tun_index = tun_index(&self.ops).await?;
        self.routes = Reconciler::new();
        warn!("{TUN_NAME} was deleted; recreated it and restarted the udp datapath");
        Ok(())
    }

    fn route_set(&self) -> RouteSet {
        let (index, network) = (self.tun_index, self.network);
        RouteSet::new(
            self.ops.clone(),
            vec![Family::V4],
            Arc::new(move |r: &Route| {
                r.oif == Some(index)
                    && r.dst == IpAddr::V4(network.addr())
                    && r.prefix == network.prefix_len()
            }),
        )
    }

    fn tun_addr(&self) -> Ipv4Addr {
        self.lease
            .subnet
            .map(|s| s.addr())
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// Rebuilds the peer table from all remote leases and hands it to the
    /// engine (one atomic swap) when it changed.
    fn update_peers(&mut self, leases: &[&Lease]) {
        let (peers, skipped) = peer_table(leases, self.network, self.options.port);
        let mut now = HashSet::new();
        for (key, why) in skipped {
            let msg = match why {
                Skipped::OutsideNetwork(sn) => format!(
                    "not routing lease {key}: its subnet {sn} is outside the network {}",
                    self.network
                ),
                Skipped::NoPublicIp => format!("not routing lease {key}: it has no PublicIP"),
                Skipped::NoIpv4 => continue,
            };
            if !self.reported.contains(&msg) {
                warn!("{msg}");
            }
            now.insert(msg);
        }
        self.reported = now;
        if peers != self.current {
            self.peers.set(engine_peers(&peers));
            self.current = peers;
        }
    }
}

/// How long registration waits for the leases to seed the peer table.
const SEED_TIMEOUT: Duration = Duration::from_secs(3);

/// The remote leases as the store lists them now (the first snapshot of a
/// lease watch), for the peer table the engine starts with.
async fn seed_leases(ctx: &RegisterContext<'_>, own: &Lease) -> Result<Vec<Lease>, String> {
    let first = tokio::time::timeout(SEED_TIMEOUT, async {
        let mut stream = ctx
            .manager
            .watch_leases()
            .await
            .map_err(|e| e.to_string())?;
        stream
            .next()
            .await
            .ok_or_else(|| "the lease watch ended".to_string())
    })
    .await
    .map_err(|_| format!("no lease snapshot within {} s", SEED_TIMEOUT.as_secs()))??;
    match first.map_err(|e| e.to_string())? {
        LeaseWatchResult::Snapshot(leases) => Ok(leases
            .into_iter()
            .filter(|l| l.key() != own.key())
            .collect()),
        LeaseWatchResult::Events(_) => Err("the lease watch began with events".to_string()),
    }
}

/// `net.ipv4.conf.flannel0.accept_local=1`. The Net Unreachable answers
/// come from the TUN's own address (as Go's proxy sends them), and the
/// kernel drops a packet arriving with a local source address as martian
/// unless the device accepts local sources: without this, Go's answers
/// never reach the sender. Best effort: a failure costs only the answers.
fn accept_local_answers() {
    let path = format!("/proc/sys/net/ipv4/conf/{TUN_NAME}/accept_local");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    if let Err(e) = std::fs::write(&path, "1") {
        warn!(
            "cannot write 1 to {path} ({e}); the ICMP Net Unreachable answers for packets without a peer will be dropped by the kernel"
        );
    }
}

#[async_trait::async_trait]
impl Network for UdpNetwork {
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
            match e.kind {
                EventKind::Added => info!(
                    "adding subnet: {} via {}:{}",
                    e.lease.key(),
                    e.lease.attrs.public_ip,
                    self.options.port
                ),
                EventKind::Removed => info!("removing subnet: {}", e.lease.key()),
            }
        }
        self.update_peers(leases);
        Ok(())
    }

    async fn resync(&mut self, leases: &[&Lease]) -> Result<(), BackendError> {
        self.update_peers(leases);
        self.configure_tun().await
    }

    fn resync_interval(&self) -> Option<Duration> {
        Some(RESYNC_INTERVAL)
    }

    /// A deleted TUN takes the route along and leaves the engine on a dead
    /// device: resync at once (which recreates it) rather than at the next
    /// periodic resync.
    fn take_resync_trigger(&mut self) -> Option<ResyncTrigger> {
        flannel_netlink::device_damage_trigger(vec![TUN_NAME.to_string()])
    }

    /// The engine runs on threads of its own; the driver only watches
    /// them. A deleted TUN does not end them (their reads fail and they
    /// wait for the resync that replaces the engine). The driver ends
    /// cleanly once the shutdown has stopped the engine, and with an error
    /// when a datapath thread died (a codec panic): flanneld then exits for
    /// its supervisor to restart it, and the persistent TUN keeps the
    /// outage short.
    fn take_driver(&mut self) -> Option<Driver> {
        let metrics = self.metrics.clone();
        Some(Box::pin(async move {
            let mut tick = tokio::time::interval(ENGINE_CHECK_INTERVAL);
            loop {
                tick.tick().await;
                match metrics.state() {
                    EngineState::Running | EngineState::Restarting => {}
                    EngineState::Stopped => return Ok(()),
                    EngineState::Died => {
                        return Err(BackendError::Refused(format!(
                            "the udp datapath on {TUN_NAME} stopped: a datapath thread ended unexpectedly"
                        )));
                    }
                }
            }
        }))
    }

    async fn lease_changed(&mut self, lease: &Lease) -> Result<(), BackendError> {
        // The peers are the other nodes, so a move of our own subnet only
        // changes the TUN's address and the ICMP answers' source.
        let moved = lease.key() != self.lease.key();
        self.lease = lease.clone();
        if moved {
            info!("udp: our lease moved to {}", lease.key());
            self.codec.set_tun_addr(self.tun_addr());
            self.configure_tun().await?;
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), BackendError> {
        // The TUN is persistent: device, address and route stay, and the
        // next flanneld re-attaches. Only the engine's threads end.
        if let Some(s) = self.metrics.stop() {
            info!(
                "udp datapath stopped ({} packets sent, {} received); {TUN_NAME} and its route are kept",
                s.counters.tx_packets, s.counters.rx_packets
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_and_engine_peers() {
        let r = network_route("10.5.0.0/16".parse().unwrap(), 7);
        assert_eq!(
            (r.dst.to_string(), r.prefix, r.oif, r.gateway),
            ("10.5.0.0".to_string(), 16, Some(7), None)
        );
        assert_eq!(
            (r.protocol, r.scope),
            (
                flannel_netlink::RTPROT_BOOT,
                flannel_netlink::RT_SCOPE_UNIVERSE
            )
        );
        let peers = engine_peers(&[PeerRoute {
            subnet: "10.5.2.0/24".parse().unwrap(),
            endpoint: "192.168.100.2:8285".parse().unwrap(),
        }]);
        assert_eq!(peers[0].0.to_string(), "10.5.2.0/24");
        assert_eq!(peers[0].1.endpoint.to_string(), "192.168.100.2:8285");
    }
}
