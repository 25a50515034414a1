//! # flanneld
//!
//! The flannel-rs daemon. [`cli`] parses the command line and `FLANNELD_*`
//! environment exactly like Go flanneld (plus `flanneld config check FILE`
//! and `flanneld mk-docker-opts`, see [`docker_opts`]). [`version`] is what
//! `--version` prints; [`notify`] tells systemd when flanneld is ready.
//!
//! ## Features
//!
//! * `vxlan` (default): the vxlan backend.
//! * `host-gw` (default): the host-gw backend.
//! * `alloc` (default): the alloc backend.
//! * `tencent-vpc` (default): the tencent-vpc backend.
//! * `kube` (default): the Kubernetes subnet manager (`--kube-subnet-mgr`).
//!
//! The default build carries every backend (as Go's binary does); the
//! features let slim builds drop some. [`backends::FEATURES`] lists them.

pub mod backends;
pub mod cli;
pub mod daemon;
pub mod docker_opts;
pub mod health;
#[cfg(feature = "kube")]
pub mod kube;
pub mod metrics;
pub mod notify;
pub mod traffic;
pub mod version;
