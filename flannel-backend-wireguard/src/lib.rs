//! # flannel-backend-wireguard
//!
//! flannel's encrypted backend, wire-compatible with Go flannel's
//! `wireguard` backend: a Go node on kernel WireGuard and a Rust node on
//! either implementation are peers.
//!
//! * **Kernel mode** (when the kernel accepts the `wireguard` link type):
//!   devices `flannel-wg` (IPv4) and `flannel-wg-v6` (IPv6), configured over
//!   generic netlink ([`kernel::KernelDevice`]). Unlike Go, an existing
//!   device is **reused** (Go deletes and recreates it, dropping every
//!   session on a restart): its peers are reconciled in place, so a restart
//!   of flanneld loses no handshake.
//! * **Userspace mode** (chosen automatically, logged once and shown in
//!   [`WgMetrics`], when the kernel refuses the link type; or forced with
//!   the `Implementation` option / `FLANNEL_WIREGUARD_IMPLEMENTATION=userspace`):
//!   a TUN device of the same name served by flannel's userspace datapath
//!   engine with boringtun's `noise` core per peer, and a WireGuard UAPI
//!   socket so `wg show` and `wg set` work on it.
//!
//! Options (`Backend` object, keys case-insensitive, as Go):
//! `ListenPort` (51820), `ListenPortV6` (51821), `MTU` (interface MTU; the
//! devices get MTU − 80), `PSK` (base64), `PersistentKeepaliveInterval`
//! (seconds, 0 = off), `Mode` (`separate`, `auto`, `ipv4`, `ipv6`), and
//! ours, ignored by Go: `Implementation` (`auto`, `kernel`, `userspace`).
//!
//! The private key lives in `/run/flannel/wgkey` (or `WIREGUARD_KEY_FILE`):
//! generated when missing (mode 0400, base64 without a newline, as Go),
//! reused across restarts, never logged. Lease data is
//! `{"PublicKey":"<base64>","Port":<ListenPort>}` (and `BackendV6Data` with
//! `ListenPortV6`). The peers are a pure function of the leases
//! ([`peers::desired_peers`]) applied by one
//! [`Reconciler`](flannel_core::reconcile::Reconciler) per device.
//!
//! # Features
//!
//! None. Linux only; the kernel mode needs the `wireguard` module, the
//! userspace mode `/dev/net/tun`.
//!
//! # Example
//!
//! The peer a Go node's lease asks for on `flannel-wg`:
//!
//! ```
//! use flannel_backend_wireguard::WireguardOptions;
//! use flannel_backend_wireguard::peers::{DeviceRole, LocalAddrs, peer_for};
//! use flannel_core::lease::{Lease, LeaseAttrs};
//!
//! let attrs = LeaseAttrs::from_json(
//!     r#"{"PublicIP":"192.168.0.2","BackendType":"wireguard","BackendData":{"PublicKey":"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=","Port":51820}}"#,
//! )
//! .unwrap();
//! let lease = Lease::new("10.5.3.0-24".parse().unwrap(), attrs);
//! let opts = WireguardOptions::default();
//! let peer = peer_for(&lease, DeviceRole::V4, 51820, &opts, LocalAddrs::default()).unwrap();
//! assert_eq!(peer.endpoint.unwrap().to_string(), "192.168.0.2:51820");
//! assert_eq!(peer.allowed_ips, vec![("10.5.3.0".parse().unwrap(), 24)]);
//! ```

pub mod device;
pub mod kernel;
pub mod keys;
pub mod metrics;
pub mod network;
pub mod options;
pub mod peers;
pub mod userspace;

pub use keys::Key;
pub use metrics::{WgMetrics, WgState};
pub use network::{Active, WireguardNetwork};
pub use options::{IMPLEMENTATION_ENV, Implementation, Mode, TYPE, WireguardOptions};
pub use peers::{PeerConfig, WgLeaseData};

use flannel_core::backend::{Backend, BackendError, Network, RegisterContext};
use flannel_netlink::ops_from_host;

/// The wireguard backend: a factory for [`WireguardNetwork`]. The host
/// context must carry a [`flannel_netlink::SharedOps`]; a [`WgMetrics`] in
/// it receives the network's state.
#[derive(Debug, Default, Clone, Copy)]
pub struct WireguardBackend;

#[async_trait::async_trait]
impl Backend for WireguardBackend {
    fn backend_type(&self) -> &'static str {
        TYPE
    }

    async fn register_network(
        &self,
        ctx: &RegisterContext<'_>,
    ) -> Result<Box<dyn Network>, BackendError> {
        let ops = ops_from_host(ctx.host, TYPE)?;
        Ok(Box::new(WireguardNetwork::register(ops, ctx).await?))
    }
}
