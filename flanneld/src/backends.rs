//! Backend selection by `Backend.Type`: one `match` arm per backend crate,
//! each behind the Cargo feature of the same name.

use anyhow::{Result, bail};
use flannel_core::backend::Backend;
use flannel_core::config::BACKEND_TYPES;

/// The backend for a (lower-cased) type. A type flannel knows but this build
/// lacks is a different error from an unknown one.
pub fn create(backend_type: &str) -> Result<Box<dyn Backend>> {
    match backend_type {
        #[cfg(feature = "vxlan")]
        flannel_backend_vxlan::TYPE => Ok(Box::new(flannel_backend_vxlan::VxlanBackend)),
        #[cfg(feature = "host-gw")]
        flannel_backend_hostgw::TYPE => Ok(Box::new(flannel_backend_hostgw::HostGwBackend)),
        #[cfg(feature = "alloc")]
        flannel_backend_alloc::TYPE => Ok(Box::new(flannel_backend_alloc::AllocBackend)),
        t if BACKEND_TYPES.contains(&t) => bail!(
            "backend type {t} is not built into this flanneld (built in: {}){}",
            built_in().join(", "),
            if FEATURES.contains(&t) {
                format!("; rebuild with `cargo build -p flanneld --features {t}`")
            } else {
                format!("; this release of flannel-rs has no {t} backend yet")
            }
        ),
        t => bail!("unknown backend type: {t}"),
    }
}

/// The backend types that exist as Cargo features of this crate.
const FEATURES: &[&str] = &["vxlan", "host-gw", "alloc"];

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
