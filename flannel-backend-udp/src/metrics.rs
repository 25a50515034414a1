//! The udp datapath's counters, for an embedder's metrics (flanneld's
//! `/metrics`).

use flannel_tun::{EngineHandle, StatsSnapshot};
use std::sync::{Arc, Mutex, MutexGuard};

/// A copy of the datapath's counters and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatapathStats {
    /// The engine's counters: packets and bytes per direction, drops per
    /// reason, fallbacks.
    pub counters: StatsSnapshot,
    /// The transmit mode in use: `gso` (TUN offload, UDP GSO/GRO) or
    /// `batch` (plain batching, also after a run-time fallback).
    pub mode: &'static str,
    /// Whether received TCP segments are coalesced into GSO TUN writes.
    pub coalescing: bool,
}

/// Where the running engine of a udp network can be read from outside the
/// backend. Put one in the [`HostContext`](flannel_core::backend::HostContext)
/// extensions before registering the network and keep a clone: the network
/// attaches its engine to it, and [`UdpMetrics::read`] gives the counters
/// while the engine runs. Without one in the context the network keeps a
/// private slot.
#[derive(Clone, Default)]
pub struct UdpMetrics {
    engine: Arc<Mutex<Option<EngineHandle>>>,
}

impl std::fmt::Debug for UdpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.read() {
            Some(s) => write!(f, "UdpMetrics(running, mode {})", s.mode),
            None => f.write_str("UdpMetrics(no engine)"),
        }
    }
}

impl UdpMetrics {
    fn lock(&self) -> MutexGuard<'_, Option<EngineHandle>> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters now; `None` when no engine runs.
    pub fn read(&self) -> Option<DatapathStats> {
        let guard = self.lock();
        let engine = guard.as_ref()?;
        Some(DatapathStats {
            counters: engine.stats().snapshot(),
            mode: engine.mode().as_str(),
            coalescing: engine.coalescing(),
        })
    }

    /// `None` when no engine is attached (not started, or stopped by the
    /// network's shutdown), else whether all its threads still run.
    pub fn running(&self) -> Option<bool> {
        self.lock().as_ref().map(|e| e.is_running())
    }

    /// Hands the running engine over (the slot owns it from now on).
    pub(crate) fn attach(&self, engine: EngineHandle) {
        if let Some(old) = self.lock().replace(engine) {
            old.stop();
        }
    }

    /// Stops the engine, if one runs, and returns its last counters.
    pub(crate) fn stop(&self) -> Option<DatapathStats> {
        let last = self.read();
        let engine = self.lock().take();
        if let Some(e) = engine {
            e.stop();
        }
        last
    }
}
