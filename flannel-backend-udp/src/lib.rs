//! # flannel-backend-udp
//!
//! flannel's udp backend, wire-compatible with Go flannel's: every packet
//! for another node's subnet travels as the raw inner IPv4 packet in the
//! payload of one UDP datagram (no header of ours), sent to the node's
//! public IP on the configured `Port` (default 8285).
//!
//! Go's backend is a single-threaded C proxy that moves one packet per
//! system call. Here the datapath is the `flannel-tun` engine: a TUN with
//! offloads (TSO superpackets segmented in userspace), UDP GSO sends that
//! still put one inner packet in each datagram, UDP GRO receives coalesced
//! back into TUN GSO writes, on threads of its own. Go's per-packet rules
//! are kept ([`packet`]): the TTL is decremented in both directions, and a
//! packet for a subnet no node holds is answered with an ICMP Net
//! Unreachable written back into the TUN.
//!
//! Kernel state, as Go's: a TUN `flannel0` with `<subnet>.0/32`, MTU =
//! interface MTU − 28, and the route `<Network> dev flannel0`; the UDP
//! socket is bound to the interface address. Unlike Go's, the TUN is
//! persistent: device, address and route outlive flanneld, so a restarted
//! flanneld re-attaches and traffic resumes at once. A deleted `flannel0`
//! (`ip link del flannel0`) is noticed at once by a link watch (else at the
//! next resync, every 10 s) and recreated: the engine is restarted on a new
//! TUN and socket with the same peers, the address and route are put back,
//! and [`DatapathStats::tun_recreated`] counts it.
//!
//! The lease carries only `PublicIP` (`{"PublicIP":"…","PublicIPv6":null}`,
//! no `BackendType`), and every remote lease becomes a peer whatever its
//! backend type, as in Go. IPv4 only.
//!
//! Options (`Backend` object, keys case-insensitive): `Port`. The
//! environment variable [`options::OFFLOAD_ENV`] (`FLANNEL_UDP_OFFLOAD=off`)
//! switches the engine's offloads off.
//!
//! The engine runs on threads of its own; the network's
//! [driver](flannel_core::backend::Network::take_driver) only watches them
//! and ends with an error if one dies. Shutdown stops the engine and leaves
//! the TUN, its address and its route in place.
//!
//! The host context must carry a [`flannel_netlink::SharedOps`].

pub mod options;
pub mod packet;
pub mod peers;

pub use options::{DEFAULT_PORT, OVERHEAD, TUN_NAME, TYPE, UdpOptions};
pub mod codec;
pub mod metrics;
pub mod network;

pub use codec::UdpCodec;
pub use metrics::{DatapathStats, UdpMetrics};
pub use network::UdpNetwork;

use flannel_core::backend::{Backend, BackendError, Network, RegisterContext};
use flannel_netlink::ops_from_host;

/// The udp backend: a factory for [`UdpNetwork`]. The host context must
/// carry a [`flannel_netlink::SharedOps`]; a [`UdpMetrics`] in it receives
/// the running engine (for metrics).
#[derive(Debug, Default, Clone, Copy)]
pub struct UdpBackend;

#[async_trait::async_trait]
impl Backend for UdpBackend {
    fn backend_type(&self) -> &'static str {
        TYPE
    }

    async fn register_network(
        &self,
        ctx: &RegisterContext<'_>,
    ) -> Result<Box<dyn Network>, BackendError> {
        let ops = ops_from_host(ctx.host, TYPE)?;
        Ok(Box::new(UdpNetwork::register(ops, ctx).await?))
    }
}
