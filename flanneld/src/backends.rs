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
        #[cfg(feature = "udp")]
        flannel_backend_udp::TYPE => Ok(Box::new(flannel_backend_udp::UdpBackend)),
        #[cfg(feature = "ipip")]
        flannel_backend_ipip::TYPE => Ok(Box::new(flannel_backend_ipip::IpipBackend)),
        #[cfg(feature = "ipsec")]
        flannel_backend_ipsec::TYPE => Ok(Box::new(flannel_backend_ipsec::IpsecBackend)),
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
/// whether this build has it. `--version`, the error for a missing backend
/// and the documentation all read this table, so a new backend is one line
/// here (and one `match` arm above).
pub const FEATURES: &[(&str, bool)] = &[
    ("vxlan", cfg!(feature = "vxlan")),
    ("host-gw", cfg!(feature = "host-gw")),
    ("alloc", cfg!(feature = "alloc")),
    ("tencent-vpc", cfg!(feature = "tencent-vpc")),
    ("udp", cfg!(feature = "udp")),
    ("ipip", cfg!(feature = "ipip")),
    ("ipsec", cfg!(feature = "ipsec")),
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

/// Every subnet manager (`--subnet-manager` value) flanneld knows, and
/// whether this build has it. `etcd` and `local` are always built in; `kube`
/// with the `kube` feature.
pub const SUBNET_MANAGERS: &[(&str, bool)] = &[
    ("etcd", true),
    ("local", true),
    ("kube", cfg!(feature = "kube")),
];

/// The subnet managers compiled into this binary.
pub fn subnet_managers() -> Vec<&'static str> {
    SUBNET_MANAGERS
        .iter()
        .filter(|(_, on)| *on)
        .map(|(m, _)| *m)
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
        // `extension` is a Go backend type flannel-rs has no crate for.
        let ext = error("extension");
        assert!(
            ext.starts_with("backend type extension is not built into this flanneld (built in: ")
                && ext.ends_with("; this release of flannel-rs has no extension backend yet"),
            "{ext}"
        );
        for t in built_in() {
            assert_eq!(create(t).unwrap().backend_type(), t);
        }
    }
}
