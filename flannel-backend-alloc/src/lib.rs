//! # flannel-backend-alloc
//!
//! flannel's `alloc` backend: it acquires a lease (publishing only the
//! public IP, as Go does: no `BackendType`, no backend data) and programs
//! nothing. Something else routes the subnets; flanneld only hands them out
//! and writes `subnet.env`.
//!
//! ```
//! use flannel_backend_alloc::{AllocBackend, TYPE};
//! use flannel_core::Backend;
//! assert_eq!(AllocBackend.backend_type(), TYPE);
//! ```

use flannel_core::backend::{Backend, BackendError, Network, RegisterContext};
use flannel_core::event::LeaseEvent;
use flannel_core::lease::{Lease, LeaseAttrs};

/// The backend type string.
pub const TYPE: &str = "alloc";

/// The alloc backend.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllocBackend;

/// The lease attributes alloc publishes: the public IPs only.
pub fn lease_attrs(ctx: &RegisterContext<'_>) -> LeaseAttrs {
    let mut attrs = LeaseAttrs::new(
        ctx.ext_iface
            .ext_addr
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
    );
    attrs.public_ipv6 = ctx.ext_iface.ext_v6_addr.filter(|_| ctx.config.enable_ipv6);
    attrs
}

#[async_trait::async_trait]
impl Backend for AllocBackend {
    fn backend_type(&self) -> &'static str {
        TYPE
    }

    async fn register_network(
        &self,
        ctx: &RegisterContext<'_>,
    ) -> Result<Box<dyn Network>, BackendError> {
        let lease = ctx.acquire_lease(lease_attrs(ctx)).await?;
        Ok(Box::new(AllocNetwork {
            lease,
            mtu: ctx.ext_iface.mtu,
        }))
    }
}

/// The network of the alloc backend: a lease, nothing to program.
#[derive(Debug)]
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

    async fn handle_events(
        &mut self,
        _events: &[LeaseEvent],
        _leases: &[&Lease],
    ) -> Result<(), BackendError> {
        Ok(())
    }

    async fn resync(&mut self, _leases: &[&Lease]) -> Result<(), BackendError> {
        Ok(())
    }

    async fn lease_changed(&mut self, lease: &Lease) -> Result<(), BackendError> {
        // Any subnet will do: nothing was programmed for the old one.
        self.lease = lease.clone();
        Ok(())
    }
}
