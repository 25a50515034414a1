//! Backend selection by `Backend.Type`, and the `alloc` backend.

use anyhow::{Result, bail};
use flannel_core::backend::{Backend, BackendError, Network, RegisterContext};
use flannel_core::config::BACKEND_TYPES;
use flannel_core::event::LeaseEvent;
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_netlink::Netlink;

/// The backend for a (lower-cased) type. A type flannel knows but this build
/// lacks is a different error from an unknown one.
pub fn create(backend_type: &str, netlink: Netlink) -> Result<Box<dyn Backend>> {
    let _ = &netlink;
    match backend_type {
        #[cfg(feature = "vxlan")]
        flannel_backend_vxlan::TYPE => {
            Ok(Box::new(flannel_backend_vxlan::VxlanBackend::new(netlink)))
        }
        #[cfg(feature = "host-gw")]
        flannel_backend_hostgw::TYPE => Ok(Box::new(flannel_backend_hostgw::HostGwBackend::new(
            netlink,
        ))),
        #[cfg(feature = "alloc")]
        ALLOC => Ok(Box::new(AllocBackend)),
        t if BACKEND_TYPES.contains(&t) => bail!(
            "backend type {t} is not built into this flanneld (rebuild with `--features {t}`; built in: {})",
            built_in().join(", ")
        ),
        t => bail!("unknown backend type: {t}"),
    }
}

/// The backend types compiled into this binary.
pub fn built_in() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "vxlan") {
        v.push("vxlan");
    }
    if cfg!(feature = "host-gw") {
        v.push("host-gw");
    }
    if cfg!(feature = "alloc") {
        v.push("alloc");
    }
    v
}

/// The `alloc` backend's type string.
pub const ALLOC: &str = "alloc";

/// `alloc`: acquires a lease and publishes nothing else; no data path.
pub struct AllocBackend;

#[async_trait::async_trait]
impl Backend for AllocBackend {
    fn backend_type(&self) -> &'static str {
        ALLOC
    }

    async fn register_network(
        &self,
        ctx: &RegisterContext<'_>,
    ) -> Result<Box<dyn Network>, BackendError> {
        // Go's alloc writes only PublicIP (no BackendType).
        let mut attrs = LeaseAttrs::new(
            ctx.ext_iface
                .ext_addr
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        );
        attrs.public_ipv6 = ctx.ext_iface.ext_v6_addr.filter(|_| ctx.config.enable_ipv6);
        let lease = ctx.acquire_lease(attrs).await?;
        Ok(Box::new(AllocNetwork {
            lease,
            mtu: ctx.ext_iface.mtu,
        }))
    }
}

/// The network of the `alloc` backend: a lease, nothing to program.
pub struct AllocNetwork {
    lease: Lease,
    mtu: u32,
}

#[async_trait::async_trait]
impl Network for AllocNetwork {
    fn lease(&self) -> &Lease {
        &self.lease
    }
    fn mtu(&self) -> u32 {
        self.mtu
    }
    async fn handle_events(&mut self, _: &[LeaseEvent]) -> Result<(), BackendError> {
        Ok(())
    }
    async fn resync(&mut self, _: &[&Lease]) -> Result<(), BackendError> {
        Ok(())
    }
    async fn lease_changed(&mut self, lease: &Lease) -> Result<(), BackendError> {
        self.lease = lease.clone();
        Ok(())
    }
}
