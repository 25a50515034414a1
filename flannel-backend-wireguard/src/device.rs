//! A WireGuard device as flannel configures it, whatever implements it
//! (the kernel over generic netlink, or our userspace datapath), and its
//! peers as a [`reconcile`](flannel_core::reconcile) object set.

use crate::keys::Key;
use crate::peers::PeerConfig;
use flannel_core::BackendError;
use flannel_core::reconcile::{Object, ObjectSet};
use std::sync::Arc;
use std::time::SystemTime;

/// Errors from a WireGuard device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WgError {
    /// The kernel (or the userspace device) refused or failed the request.
    #[error("{object}: {source}")]
    Io {
        /// What was acted on (`wireguard device flannel-wg`).
        object: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An answer could not be understood.
    #[error("{object}: {detail}")]
    Protocol {
        /// What was acted on.
        object: String,
        /// What was wrong.
        detail: String,
    },
}

/// A peer as the device reports it: its configuration and counters.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// The configuration.
    pub config: PeerConfig,
    /// When the last handshake completed, if ever.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

/// A device's state as `wg show` reports it (without the private key).
#[derive(Debug, Clone, Default)]
pub struct DeviceStatus {
    /// The device's public key, when it has a private key.
    pub public_key: Option<Key>,
    /// The listen port (0: none).
    pub listen_port: u16,
    /// The peers.
    pub peers: Vec<PeerStatus>,
}

/// The operations flannel needs on one WireGuard device.
#[async_trait::async_trait]
pub trait WgDevice: Send + Sync {
    /// The interface name (`flannel-wg`).
    fn name(&self) -> &str;
    /// `wg show <dev> dump`.
    async fn status(&self) -> Result<DeviceStatus, WgError>;
    /// `wg set <dev> private-key <k> listen-port <p>` (peers kept).
    async fn configure(&self, private_key: &Key, listen_port: u16) -> Result<(), WgError>;
    /// `wg set <dev> peer ...` with `replace-allowed-ips` semantics: the
    /// peer is created or updated to exactly `peer`.
    async fn set_peer(&self, peer: &PeerConfig) -> Result<(), WgError>;
    /// `wg set <dev> peer <key> remove` (a missing peer is success).
    async fn remove_peer(&self, public_key: &Key) -> Result<(), WgError>;
}

/// A shared device.
pub type SharedDevice = Arc<dyn WgDevice>;

/// The peers of one device as an [`ObjectSet`]: every peer on a flannel
/// device is flannel's.
pub struct PeerSet {
    dev: SharedDevice,
}

impl PeerSet {
    /// The peers of `dev`.
    pub fn new(dev: SharedDevice) -> PeerSet {
        PeerSet { dev }
    }
}

fn dp(dev: &str, peer: &PeerConfig, e: WgError) -> BackendError {
    BackendError::datapath(format!("{} on {dev}", peer.describe()), e)
}

#[async_trait::async_trait]
impl ObjectSet<PeerConfig> for PeerSet {
    async fn list(&self) -> Result<Vec<PeerConfig>, BackendError> {
        let st = self
            .dev
            .status()
            .await
            .map_err(|e| BackendError::datapath(format!("peers of {}", self.dev.name()), e))?;
        Ok(st.peers.into_iter().map(|p| p.config).collect())
    }

    fn owned(&self, _peer: &PeerConfig) -> bool {
        true
    }

    async fn add(&self, peer: &PeerConfig) -> Result<(), BackendError> {
        self.dev
            .set_peer(peer)
            .await
            .map_err(|e| dp(self.dev.name(), peer, e))
    }

    async fn change(&self, _found: &PeerConfig, desired: &PeerConfig) -> Result<(), BackendError> {
        // An update in place keeps the peer's session: no handshake again.
        self.add(desired).await
    }

    async fn remove(&self, peer: &PeerConfig) -> Result<(), BackendError> {
        self.dev
            .remove_peer(&peer.public_key)
            .await
            .map_err(|e| dp(self.dev.name(), peer, e))
    }
}
