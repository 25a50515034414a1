//! The userspace WireGuard implementation: boringtun's `noise` protocol
//! core ([`core::WgCore`]) on flannel's userspace datapath engine
//! (`flannel-tun`: TUN offload, UDP GSO/GRO) through [`codec::WgCodec`],
//! and a UAPI socket ([`uapi`]) so `wg show` / `wg set` work on the device.

pub mod codec;
pub mod core;
pub mod uapi;

use self::core::WgCore;
use crate::device::{DeviceStatus, SharedDevice, WgDevice, WgError};
use crate::keys::Key;
use crate::peers::PeerConfig;
use flannel_core::backend::{BackendError, Driver, HostContext};
use flannel_netlink::SharedOps;
use flannel_tun::{
    Engine, EngineHandle, EngineOptions, OffloadMode, Peer, PeerTableHandle, TunConfig, open_tun,
};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

/// The environment variable that turns the engine's offloads off
/// (`FLANNEL_WIREGUARD_OFFLOAD=off`: plain batching).
pub const OFFLOAD_ENV: &str = "FLANNEL_WIREGUARD_OFFLOAD";

/// A userspace WireGuard device: the protocol core and the engine's peer
/// table, kept in step, and the engine that carries its packets (when the
/// device was opened with one).
pub struct UserspaceDevice {
    name: String,
    core: Arc<WgCore>,
    table: PeerTableHandle,
    datapath: Mutex<Datapath>,
}

/// How the engine of a device is (re)started, and the running one.
#[derive(Default)]
struct Datapath {
    spec: Option<DatapathSpec>,
    engine: Option<EngineHandle>,
}

/// The TUN and the socket of a device's engine.
struct DatapathSpec {
    tun: TunConfig,
    bind: SocketAddr,
    family: SocketFamily,
}

impl UserspaceDevice {
    /// A device `name` over `core`, routing through `table` (without an
    /// engine: the caller moves the packets).
    pub fn new(name: &str, core: Arc<WgCore>, table: PeerTableHandle) -> UserspaceDevice {
        UserspaceDevice {
            name: name.to_string(),
            core,
            table,
            datapath: Mutex::default(),
        }
    }

    fn datapath(&self) -> MutexGuard<'_, Datapath> {
        self.datapath.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the TUN, binds the socket and starts the engine on them with
    /// this device's core and peer table.
    fn start_engine(&self, spec: &DatapathSpec) -> Result<EngineHandle, BackendError> {
        let name = &self.name;
        let tun = open_tun(&spec.tun).map_err(|e| dp(format!("TUN {name}"), e))?;
        let socket = bind_socket(spec.bind, spec.family)?;
        let opts = EngineOptions {
            mode: (!spec.tun.offload).then_some(OffloadMode::Batch),
            ..EngineOptions::default()
        };
        let engine = Engine::start(
            tun,
            socket,
            Arc::new(codec::WgCodec::new(self.core.clone())),
            self.table.clone(),
            opts,
        )
        .map_err(|e| dp(format!("the datapath of {name}"), e))?;
        info!(
            "userspace WireGuard device {name} listening on {} ({} mode)",
            spec.bind,
            engine.mode()
        );
        Ok(engine)
    }

    /// Replaces the engine after the TUN was deleted: stops the old one
    /// (its threads idle on the dead device; stopping frees the UDP port),
    /// then opens a new TUN and socket and starts a new engine. The core is
    /// kept, and with it the private key, the peers and their sessions.
    pub(crate) fn restart(&self) -> Result<(), BackendError> {
        let mut dp = self.datapath();
        if let Some(old) = dp.engine.take() {
            old.stop();
        }
        let Some(spec) = &dp.spec else {
            return Err(BackendError::Refused(format!(
                "{} has no datapath of its own to restart",
                self.name
            )));
        };
        let engine = self.start_engine(spec)?;
        dp.engine = Some(engine);
        Ok(())
    }

    /// Stops the engine (the TUN, not persistent, goes with it).
    fn stop(&self) {
        let engine = self.datapath().engine.take();
        if let Some(e) = engine {
            e.stop();
        }
    }

    /// Pushes the peers' allowed IPs to the engine's prefix table.
    pub fn publish(&self) {
        publish(&self.core, &self.table);
    }

    /// The protocol core.
    pub fn core(&self) -> &Arc<WgCore> {
        &self.core
    }
}

fn publish(core: &WgCore, table: &PeerTableHandle) {
    let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let mut routes = Vec::new();
    for (id, endpoint, allowed) in core.routes() {
        for (addr, prefix) in allowed {
            if let Ok(net) = ipnet::IpNet::new(addr, prefix) {
                // The codec sends to the core's endpoint (it follows
                // roaming); this one is only informative.
                routes.push((
                    net.trunc(),
                    Peer {
                        endpoint: endpoint.unwrap_or(unspecified),
                        id,
                    },
                ));
            }
        }
    }
    table.set(routes);
}

#[async_trait::async_trait]
impl WgDevice for UserspaceDevice {
    fn name(&self) -> &str {
        &self.name
    }

    async fn status(&self) -> Result<DeviceStatus, WgError> {
        Ok(self.core.status())
    }

    async fn configure(&self, private_key: &Key, listen_port: u16) -> Result<(), WgError> {
        self.core.configure(private_key, listen_port);
        Ok(())
    }

    async fn set_peer(&self, peer: &PeerConfig) -> Result<(), WgError> {
        let r = self.core.set_peer(peer);
        self.publish();
        r.map(drop).ok_or_else(|| WgError::Protocol {
            object: format!("wireguard device {}", self.name),
            detail: "no private key configured".into(),
        })
    }

    async fn remove_peer(&self, public_key: &Key) -> Result<(), WgError> {
        self.core.remove_peer(public_key);
        self.publish();
        Ok(())
    }
}

/// A userspace device as the network needs it.
pub(crate) struct Opened {
    pub device: SharedDevice,
    /// The same device, for a restart of its datapath.
    pub userspace: Arc<UserspaceDevice>,
    pub index: u32,
    pub driver: Driver,
}

fn dp(object: String, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BackendError {
    BackendError::datapath(object, e)
}

/// Removes the UAPI socket file when the device goes.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The address family of a userspace device's UDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketFamily {
    /// `0.0.0.0:<port>`: IPv4 endpoints only.
    V4,
    /// `[::]:<port>`: IPv6 endpoints.
    V6,
    /// `[::]:<port>` with `IPV6_V6ONLY` off, whatever the host's
    /// `net.ipv6.bindv6only`: endpoints of both families (IPv4 ones as
    /// `::ffff:a.b.c.d`), for the single device of `auto` mode.
    Dual,
}

/// Opens the userspace device `name`: the TUN (replacing a link of another
/// kind), the UDP socket on `port` (of `family`), the engine, and the
/// UAPI socket; the returned driver serves the UAPI socket and owns the
/// engine (dropping it stops the datapath).
pub(crate) async fn open(
    ops: &SharedOps,
    name: &str,
    mtu: u32,
    key: &Key,
    port: u16,
    family: SocketFamily,
    host: &HostContext,
) -> Result<Opened, BackendError> {
    clear_other_kind(ops, name).await?;
    let mut tun = TunConfig::new(name, mtu);
    tun.offload = host.env(OFFLOAD_ENV).is_none_or(|v| v != "off");
    let bind: SocketAddr = match family {
        SocketFamily::V4 => (Ipv4Addr::UNSPECIFIED, port).into(),
        SocketFamily::V6 | SocketFamily::Dual => (Ipv6Addr::UNSPECIFIED, port).into(),
    };
    let spec = DatapathSpec { tun, bind, family };
    let core = Arc::new(WgCore::new());
    core.configure(key, port);
    let device = Arc::new(UserspaceDevice::new(name, core, PeerTableHandle::new()));
    let engine = device.start_engine(&spec)?;
    *device.datapath() = Datapath {
        spec: Some(spec),
        engine: Some(engine),
    };
    // From here on the engine stops when the driver is dropped (the guard
    // below) or when this function fails.
    let stopper = EngineStopper(device.clone());
    let index = link_index(ops, name).await?;
    let dir = PathBuf::from(
        host.env(uapi::SOCKET_DIR_ENV)
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| uapi::DEFAULT_SOCKET_DIR.to_string()),
    );
    std::fs::create_dir_all(&dir).map_err(|e| dp(format!("directory {}", dir.display()), e))?;
    let path = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .map_err(|e| dp(format!("UAPI socket {}", path.display()), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| dp(format!("UAPI socket {}", path.display()), e))?;
    let guard = SocketFile(path.clone());
    let served = device.clone();
    let driver: Driver = Box::pin(async move {
        let _engine = stopper;
        let _guard = guard;
        let listener = tokio::net::UnixListener::from_std(listener)
            .map_err(|e| dp(format!("UAPI socket {}", path.display()), e))?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => serve_uapi(stream, &served).await,
                Err(e) => {
                    warn!("UAPI socket {}: {e}", path.display());
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    });
    Ok(Opened {
        device: device.clone(),
        userspace: device,
        index,
        driver,
    })
}

/// Deletes a link named `name` that is not a TUN (a kernel WireGuard device
/// of an earlier run, say): the TUN of that name could not be opened.
async fn clear_other_kind(ops: &SharedOps, name: &str) -> Result<(), BackendError> {
    if let Some(l) = ops
        .link_by_name(name)
        .await
        .map_err(|e| dp(format!("link {name}"), e))?
        && l.kind.as_deref() != Some("tun")
    {
        warn!(
            "{name} exists as a {} device; replacing it with the userspace WireGuard TUN",
            l.kind.as_deref().unwrap_or("non-TUN")
        );
        ops.delete_link(l.index)
            .await
            .map_err(|e| dp(format!("link {name}"), e))?;
    }
    Ok(())
}

/// The index of the TUN just opened.
async fn link_index(ops: &SharedOps, name: &str) -> Result<u32, BackendError> {
    Ok(ops
        .link_by_name(name)
        .await
        .map_err(|e| dp(format!("link {name}"), e))?
        .ok_or_else(|| BackendError::Refused(format!("{name} vanished right after it was opened")))?
        .index)
}

impl UserspaceDevice {
    /// Recreates the deleted TUN of this device with a new engine
    /// ([`UserspaceDevice::restart`]); returns the new interface index.
    pub(crate) async fn recreate(&self, ops: &SharedOps) -> Result<u32, BackendError> {
        clear_other_kind(ops, &self.name).await?;
        self.restart()?;
        link_index(ops, &self.name).await
    }
}

/// Stops a device's engine when dropped (with the driver that owns it).
struct EngineStopper(Arc<UserspaceDevice>);

impl Drop for EngineStopper {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The device's UDP socket on `bind`.
fn bind_socket(bind: SocketAddr, family: SocketFamily) -> Result<UdpSocket, BackendError> {
    let err = |e| dp(format!("UDP socket {bind}"), e);
    if family != SocketFamily::Dual {
        return UdpSocket::bind(bind).map_err(err);
    }
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    socket.set_only_v6(false).map_err(err)?;
    socket.bind(&bind.into()).map_err(err)?;
    Ok(socket.into())
}

/// One UAPI connection: requests end with an empty line; each gets its
/// answer. A slow or broken client is given up on after 5 s.
async fn serve_uapi(mut stream: tokio::net::UnixStream, dev: &UserspaceDevice) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let request: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&request);
            let answer = uapi::handle(&dev.core, &text);
            if text.starts_with("set=1") {
                dev.publish();
            }
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {
                debug!("UAPI client of {} timed out", dev.name);
                return;
            }
        }
    }
}
