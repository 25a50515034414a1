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
        #[cfg(feature = "tencent-vpc")]
        flannel_backend_tencent::TYPE => Ok(Box::new(flannel_backend_tencent::TencentBackend)),
        #[cfg(feature = "wireguard")]
        flannel_backend_wireguard::TYPE => {
            Ok(Box::new(flannel_backend_wireguard::WireguardBackend))
        }
        t if BACKEND_TYPES.contains(&t) => bail!(
            "backend type {t} is not built into this flanneld (built in: {}){}",
            built_in().join(", "),
            if FEATURES.iter().any(|(f, _)| *f == t) {
                format!("; rebuild with `cargo build -p flanneld --features {t}`")
            } else {
                format!("; this release of flannel-rs has no {t} backend yet")
            }
        ),
        t => bail!("unknown backend type: {t}"),
    }
}

/// Every backend type that exists as a Cargo feature of this crate, and
/// whether this build has it.
const FEATURES: &[(&str, bool)] = &[
    ("vxlan", cfg!(feature = "vxlan")),
    ("host-gw", cfg!(feature = "host-gw")),
    ("alloc", cfg!(feature = "alloc")),
    ("tencent-vpc", cfg!(feature = "tencent-vpc")),
    ("wireguard", cfg!(feature = "wireguard")),
];

/// The backend types compiled into this binary.
pub fn built_in() -> Vec<&'static str> {
    FEATURES
        .iter()
        .filter(|(_, on)| *on)
        .map(|(t, _)| *t)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(t: &str) -> String {
        match create(t) {
            Ok(_) => panic!("{t} should not be available"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unknown_and_missing_types_are_different_errors() {
        assert_eq!(
            error("carrier-pigeon"),
            "unknown backend type: carrier-pigeon"
        );
        let udp = error("udp");
        assert!(
            udp.starts_with("backend type udp is not built into this flanneld (built in: ")
                && udp.ends_with("; this release of flannel-rs has no udp backend yet"),
            "{udp}"
        );
        for t in built_in() {
            assert_eq!(create(t).unwrap().backend_type(), t);
        }
    }
}
