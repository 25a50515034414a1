//! # flannel-backend-vxlan
//!
//! flannel's default backend: an in-kernel VXLAN overlay.
//!
//! At registration the backend creates (or reuses, when compatible) the
//! devices `flannel.<VNI>` for IPv4 and `flannel-v6.<VNI>` for IPv6 —
//! `local` = the public IP, `dev` = the external interface, nolearning by
//! default, MTU = underlay (or the `MTU` option) − 50 — publishes
//! `{"VNI":<vni>,"VtepMAC":"<mac>"}` as its lease data, and puts
//! `<subnet>.0/32` (`/128`) on the device. For every remote vxlan lease it
//! programs a permanent neighbour, a permanent FDB entry and an onlink route,
//! exactly as Go flannel does, so Go and Rust nodes reach each other; with
//! `DirectRouting` a peer on the same L2 segment gets a plain route instead.
//!
//! The kernel state is a pure function ([`state::desired_state`]) of our
//! devices, all remote leases and the DirectRouting decisions: per device a
//! set of neighbours, FDB entries and routes. One
//! [`Reconciler`](flannel_core::reconcile::Reconciler) per kind and device
//! applies it, in Go's order (neighbours, FDB entries, routes): lease events
//! are diffed against what was applied before, without listing the kernel;
//! [`VxlanNetwork::resync`] lists the kernel, recreates a deleted device with
//! its MAC, restores deleted entries and removes entries of leases that no
//! longer exist. Only routes the backend owns ([`state::owns`]) are ever
//! changed, and a lease whose subnet lies outside the configured network is
//! never programmed. All kernel access goes through
//! [`flannel_netlink::NetOps`], so the logic is unit-tested on
//! `flannel_netlink::fake::FakeNetlink` without root. Shutdown leaves
//! everything in place (zero-downtime restart; the device and its MAC are
//! reused).
//!
//! Options (`Backend` object, keys case-insensitive): `VNI` (1), `Port`
//! (0 = kernel default 8472), `MTU`, `GBP`, `Learning`, `DirectRouting`.

pub mod network;
pub mod options;
pub mod state;

pub use network::VxlanNetwork;
pub use options::{TYPE, VxlanLeaseData, VxlanOptions};

use flannel_core::backend::{Backend, BackendError, Network, RegisterContext};
use flannel_netlink::ops_from_host;

/// The vxlan backend: a factory for [`VxlanNetwork`]. The host context must
/// carry a [`flannel_netlink::SharedOps`].
#[derive(Debug, Default, Clone, Copy)]
pub struct VxlanBackend;

#[async_trait::async_trait]
impl Backend for VxlanBackend {
    fn backend_type(&self) -> &'static str {
        TYPE
    }

    async fn register_network(
        &self,
        ctx: &RegisterContext<'_>,
    ) -> Result<Box<dyn Network>, BackendError> {
        let ops = ops_from_host(ctx.host, TYPE)?;
        Ok(Box::new(VxlanNetwork::register(ops, ctx).await?))
    }
}
