//! `flanneld --version`: the version, the git commit and what this build
//! carries (backends and subnet managers, from the Cargo features).

use crate::backends;

/// The crate version (`0.1.0`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binary was built from (`git rev-parse --short HEAD` at
/// build time, `FLANNELD_GIT_COMMIT` when set, else `unknown`).
pub const GIT_COMMIT: &str = env!("FLANNELD_GIT_COMMIT");

/// The text `flanneld --version` prints: four lines,
///
/// ```text
/// flanneld 0.1.0
/// git commit: 1a2b3c4
/// backends: vxlan host-gw alloc tencent-vpc udp ipip ipsec wireguard
/// subnet managers: etcd local kube
/// ```
///
/// (Go flanneld prints only its version, to stderr.)
pub fn text() -> String {
    format!(
        "flanneld {VERSION}\ngit commit: {GIT_COMMIT}\nbackends: {}\nsubnet managers: {}\n",
        backends::built_in().join(" "),
        backends::subnet_managers().join(" "),
    )
}
