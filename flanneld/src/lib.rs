//! # flanneld
//!
//! The flannel-rs daemon. [`cli`] parses the command line and `FLANNELD_*`
//! environment exactly like Go flanneld (plus `flanneld config check FILE`).
//!
//! ## Features
//!
//! * `vxlan` (default): the vxlan backend.
//! * `host-gw` (default): the host-gw backend.
//! * `alloc` (default): the alloc backend.
//! * `tencent-vpc` (default): the tencent-vpc backend.
//! * `kube` (default): the Kubernetes subnet manager (`--kube-subnet-mgr`).

pub mod backends;
pub mod cli;
pub mod daemon;
pub mod health;
#[cfg(feature = "kube")]
pub mod kube;
pub mod metrics;
pub mod traffic;
