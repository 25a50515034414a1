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

pub mod backends;
pub mod cli;
pub mod daemon;
pub mod health;
pub mod metrics;
pub mod traffic;
