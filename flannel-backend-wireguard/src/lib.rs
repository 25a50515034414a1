//! # flannel-backend-wireguard
//!
//! flannel's encrypted backend, wire-compatible with Go flannel's
//! `wireguard` backend.
//!
//! (Work in progress: options, keys, lease data and the desired peers.)

pub mod keys;
pub mod options;
pub mod peers;

pub use keys::Key;
pub use options::{Implementation, Mode, TYPE, WireguardOptions};
pub use peers::{PeerConfig, WgLeaseData};
