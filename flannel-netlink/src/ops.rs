//! [`NetOps`]: the narrow set of kernel operations backends use, as a trait,
//! so backend logic runs against a recording fake in unit tests
//! ([`FakeNetlink`](crate::fake::FakeNetlink), feature `fake`) and against
//! the kernel ([`Netlink`]) in production.

use std::net::IpAddr;
use std::sync::Arc;

use crate::{
    AddrInfo, EnsuredLink, Family, FdbEntry, IpipSpec, LinkInfo, Mac, NeighInfo, Netlink,
    NetlinkError, Route, VxlanSpec,
};

/// The kernel operations a backend may perform, named after the `ip` and
/// `bridge` commands they equal (see the methods of [`Netlink`] for each
/// one's exact semantics; every implementation must keep them).
#[async_trait::async_trait]
pub trait NetOps: Send + Sync {
    /// `ip link show <name>`.
    async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError>;
    /// `ip link show` by index.
    async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, NetlinkError>;
    /// Creates `spec`'s vxlan device or reuses a compatible one.
    async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<EnsuredLink, NetlinkError>;
    /// `ip link set <dev> up`.
    async fn set_up(&self, index: u32) -> Result<(), NetlinkError>;
    /// `ip addr show dev <dev>`.
    async fn addresses(&self, index: u32) -> Result<Vec<AddrInfo>, NetlinkError>;
    /// `ip addr add` (an existing identical address is success).
    async fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError>;
    /// `ip addr del` (a missing address is success).
    async fn del_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError>;
    /// `ip route show table all` for one family (unicast and blackhole).
    async fn routes(&self, family: Family) -> Result<Vec<Route>, NetlinkError>;
    /// `ip route get <dst>`.
    async fn route_get(&self, dst: IpAddr) -> Result<Vec<Route>, NetlinkError>;
    /// `ip route replace`.
    async fn replace_route(&self, route: &Route) -> Result<(), NetlinkError>;
    /// `ip route del` (a missing route is success).
    async fn del_route(&self, route: &Route) -> Result<(), NetlinkError>;
    /// `ip neigh show dev <dev>`.
    async fn neighbours(&self, index: u32) -> Result<Vec<NeighInfo>, NetlinkError>;
    /// `ip neigh replace <ip> lladdr <mac> dev <dev> nud permanent`.
    async fn replace_neigh(&self, index: u32, ip: IpAddr, mac: Mac) -> Result<(), NetlinkError>;
    /// `ip neigh del <ip> dev <dev>` (a missing entry is success).
    async fn del_neigh(&self, index: u32, ip: IpAddr) -> Result<(), NetlinkError>;
    /// `bridge fdb show dev <dev>` (the device's own entries).
    async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError>;
    /// `bridge fdb replace <mac> dev <dev> dst <dst> self permanent`.
    async fn replace_fdb(&self, index: u32, mac: Mac, dst: IpAddr) -> Result<(), NetlinkError>;
    /// `bridge fdb del <mac> dev <dev> dst <dst> self` (missing is success).
    async fn del_fdb(&self, index: u32, mac: Mac, dst: IpAddr) -> Result<(), NetlinkError>;
    /// `sysctl net.ipv6.conf.<name>.accept_ra=0`: no router advertisements
    /// on a device of ours (a `/proc/sys` write, not netlink).
    async fn disable_accept_ra(&self, name: &str) -> Result<(), NetlinkError>;
    /// Creates `spec`'s ipip device, reuses a compatible one (setting its
    /// MTU) or recreates an incompatible one; see [`Netlink::ensure_ipip`].
    async fn ensure_ipip(&self, spec: &IpipSpec) -> Result<EnsuredLink, NetlinkError>;
    /// `ip link add <name> mtu <mtu> type wireguard`, or reuse of an
    /// existing wireguard link (see [`Netlink::ensure_wireguard`]).
    async fn ensure_wireguard(&self, name: &str, mtu: u32) -> Result<EnsuredLink, NetlinkError>;
    /// `ip link del dev <dev>` (a missing link is success).
    async fn delete_link(&self, index: u32) -> Result<(), NetlinkError>;
}

/// A shared [`NetOps`]: what backends find in their
/// [`HostContext`](flannel_core::backend::HostContext) extensions.
pub type SharedOps = Arc<dyn NetOps>;

/// The [`SharedOps`] in `host`'s extensions, or an error naming `backend`.
pub fn ops_from_host(
    host: &flannel_core::backend::HostContext,
    backend: &str,
) -> Result<SharedOps, flannel_core::BackendError> {
    host.require::<SharedOps>(backend, "a netlink handle (flannel_netlink::SharedOps)")
        .cloned()
}

#[async_trait::async_trait]
impl NetOps for Netlink {
    async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        Netlink::link_by_name(self, name).await
    }
    async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        Netlink::link_by_index(self, index).await
    }
    async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<EnsuredLink, NetlinkError> {
        Netlink::ensure_vxlan(self, spec).await
    }
    async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        Netlink::set_up(self, index).await
    }
    async fn addresses(&self, index: u32) -> Result<Vec<AddrInfo>, NetlinkError> {
        Netlink::addresses(self, index).await
    }
    async fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        Netlink::add_address(self, index, addr, prefix).await
    }
    async fn del_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        Netlink::del_address(self, index, addr, prefix).await
    }
    async fn routes(&self, family: Family) -> Result<Vec<Route>, NetlinkError> {
        Netlink::routes(self, family).await
    }
    async fn route_get(&self, dst: IpAddr) -> Result<Vec<Route>, NetlinkError> {
        Netlink::route_get(self, dst).await
    }
    async fn replace_route(&self, route: &Route) -> Result<(), NetlinkError> {
        Netlink::replace_route(self, route).await
    }
    async fn del_route(&self, route: &Route) -> Result<(), NetlinkError> {
        Netlink::del_route(self, route).await
    }
    async fn neighbours(&self, index: u32) -> Result<Vec<NeighInfo>, NetlinkError> {
        Netlink::neighbours(self, index).await
    }
    async fn replace_neigh(&self, index: u32, ip: IpAddr, mac: Mac) -> Result<(), NetlinkError> {
        Netlink::replace_neigh(self, index, ip, mac).await
    }
    async fn del_neigh(&self, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        Netlink::del_neigh(self, index, ip).await
    }
    async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        Netlink::fdb(self, index).await
    }
    async fn replace_fdb(&self, index: u32, mac: Mac, dst: IpAddr) -> Result<(), NetlinkError> {
        Netlink::replace_fdb(self, index, mac, dst).await
    }
    async fn del_fdb(&self, index: u32, mac: Mac, dst: IpAddr) -> Result<(), NetlinkError> {
        Netlink::del_fdb(self, index, mac, dst).await
    }
    async fn ensure_wireguard(&self, name: &str, mtu: u32) -> Result<EnsuredLink, NetlinkError> {
        Netlink::ensure_wireguard(self, name, mtu).await
    }
    async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        Netlink::delete_link(self, index).await
    }
    async fn disable_accept_ra(&self, name: &str) -> Result<(), NetlinkError> {
        let path = format!("/proc/sys/net/ipv6/conf/{name}/accept_ra");
        std::fs::write(&path, "0").map_err(|source| NetlinkError::Kernel {
            object: format!("writing 0 to {path}"),
            source,
            detail: None,
        })
    }
    async fn ensure_ipip(&self, spec: &IpipSpec) -> Result<EnsuredLink, NetlinkError> {
        Netlink::ensure_ipip(self, spec).await
    }
}
