//! The udp datapath's counters, for an embedder's metrics (flanneld's
//! `/metrics`).

use flannel_core::backend::BackendError;
use flannel_tun::{EngineHandle, StatsSnapshot};
use std::sync::{Arc, Mutex, MutexGuard};

/// A copy of the datapath's counters and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatapathStats {
    /// The engine's counters: packets and bytes per direction, drops per
    /// reason, fallbacks. They include the counters of the engines that
    /// ran before a recreation of the TUN, so they never go back.
    pub counters: StatsSnapshot,
    /// The transmit mode in use: `gso` (TUN offload, UDP GSO/GRO) or
    /// `batch` (plain batching, also after a run-time fallback).
    pub mode: &'static str,
    /// Whether received TCP segments are coalesced into GSO TUN writes.
    pub coalescing: bool,
    /// How many times the TUN was found deleted and recreated (with a
    /// restart of the datapath) since the network was registered.
    pub tun_recreated: u64,
}

/// What the driver sees of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EngineState {
    /// Every datapath thread runs.
    Running,
    /// No engine right now, but the network has not shut down: a restart
    /// after a deleted TUN failed and the next resync tries again.
    Restarting,
    /// A datapath thread ended on its own (a codec panic).
    Died,
    /// Stopped by the network's shutdown, or never started.
    Stopped,
}

#[derive(Default)]
struct Slot {
    engine: Option<EngineHandle>,
    /// The last counters of the engines stopped by restarts.
    earlier: StatsSnapshot,
    tun_recreated: u64,
    /// An engine was attached once and the slot was not stopped since.
    live: bool,
}

/// Where the running engine of a udp network can be read from outside the
/// backend. Put one in the [`HostContext`](flannel_core::backend::HostContext)
/// extensions before registering the network and keep a clone: the network
/// attaches its engine to it, and [`UdpMetrics::read`] gives the counters
/// while the engine runs. Without one in the context the network keeps a
/// private slot.
#[derive(Clone, Default)]
pub struct UdpMetrics {
    slot: Arc<Mutex<Slot>>,
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
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters now; `None` when no engine runs.
    pub fn read(&self) -> Option<DatapathStats> {
        let slot = self.lock();
        let engine = slot.engine.as_ref()?;
        Some(DatapathStats {
            counters: slot.earlier + engine.stats().snapshot(),
            mode: engine.mode().as_str(),
            coalescing: engine.coalescing(),
            tun_recreated: slot.tun_recreated,
        })
    }

    /// `None` when no engine is attached (not started, stopped by the
    /// network's shutdown, or between a deleted TUN and its recreation),
    /// else whether all its threads still run.
    pub fn running(&self) -> Option<bool> {
        self.lock().engine.as_ref().map(|e| e.is_running())
    }

    pub(crate) fn state(&self) -> EngineState {
        let slot = self.lock();
        match &slot.engine {
            Some(e) if e.is_running() => EngineState::Running,
            Some(_) => EngineState::Died,
            None if slot.live => EngineState::Restarting,
            None => EngineState::Stopped,
        }
    }

    /// Hands the running engine over (the slot owns it from now on).
    pub(crate) fn attach(&self, engine: EngineHandle) {
        let mut slot = self.lock();
        slot.live = true;
        if let Some(old) = slot.engine.replace(engine) {
            old.stop();
        }
    }

    /// Replaces the engine after its TUN was deleted: stops the old one
    /// (which frees the UDP port and the dead TUN's fd), then attaches what
    /// `start` builds, and counts the recreation. The lock is held
    /// throughout so that a reader never sees the gap as a stopped engine.
    /// When `start` fails the slot stays empty (the driver waits: the next
    /// resync tries again).
    pub(crate) fn restart(
        &self,
        start: impl FnOnce() -> Result<EngineHandle, BackendError>,
    ) -> Result<(), BackendError> {
        let mut slot = self.lock();
        if let Some(old) = slot.engine.take() {
            slot.earlier = slot.earlier + old.stats().snapshot();
            old.stop();
        }
        slot.live = true;
        let engine = start()?;
        slot.engine = Some(engine);
        slot.tun_recreated += 1;
        Ok(())
    }

    /// Stops the engine, if one runs, and returns its last counters.
    pub(crate) fn stop(&self) -> Option<DatapathStats> {
        let last = self.read();
        let engine = {
            let mut slot = self.lock();
            slot.live = false;
            slot.engine.take()
        };
        if let Some(e) = engine {
            e.stop();
        }
        last
    }
}
