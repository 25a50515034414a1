//! What the wireguard network shows outside the backend: which
//! implementation runs and the per-peer counters, for an embedder's metrics
//! (flanneld's `/metrics`).

use crate::device::DeviceStatus;
use std::sync::{Arc, Mutex, MutexGuard};

/// The state published by a wireguard network.
#[derive(Debug, Clone, Default)]
pub struct WgState {
    /// `kernel` or `userspace`; empty before registration.
    pub implementation: &'static str,
    /// Why the userspace implementation runs when it was not asked for
    /// (the kernel refused the `wireguard` link type).
    pub fallback_reason: Option<String>,
    /// Each device's name and last read status (peers with their last
    /// handshake and byte counters).
    pub devices: Vec<(String, DeviceStatus)>,
    /// Per device, how many times it was found deleted and recreated since
    /// the network was registered (devices never recreated are absent).
    pub recreated: Vec<(String, u64)>,
}

/// Where a wireguard network publishes its [`WgState`]. Put one in the
/// [`HostContext`](flannel_core::backend::HostContext) extensions before
/// registering the network and keep a clone; without one the network keeps
/// a private slot. The peers' counters are refreshed at every resync (10 s)
/// and after every lease event batch.
#[derive(Clone, Default, Debug)]
pub struct WgMetrics {
    state: Arc<Mutex<WgState>>,
}

impl WgMetrics {
    fn lock(&self) -> MutexGuard<'_, WgState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the state now.
    pub fn read(&self) -> WgState {
        self.lock().clone()
    }

    pub(crate) fn set_implementation(&self, which: &'static str, fallback: Option<String>) {
        let mut s = self.lock();
        s.implementation = which;
        s.fallback_reason = fallback;
    }

    pub(crate) fn count_recreation(&self, name: &str) {
        let mut s = self.lock();
        match s.recreated.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 += 1,
            None => s.recreated.push((name.to_string(), 1)),
        }
    }

    pub(crate) fn set_device(&self, name: &str, status: DeviceStatus) {
        let mut s = self.lock();
        match s.devices.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = status,
            None => s.devices.push((name.to_string(), status)),
        }
    }
}
