//! The userspace WireGuard implementation (boringtun's `noise` protocol
//! core on flannel's userspace datapath engine).

pub mod core;
pub mod uapi;

use crate::device::SharedDevice;
use crate::keys::Key;
use flannel_core::backend::{BackendError, Driver, HostContext};
use flannel_netlink::SharedOps;

/// A userspace device as the network needs it.
pub(crate) struct Opened {
    pub device: SharedDevice,
    pub index: u32,
    pub driver: Driver,
}

/// Opens the userspace device `name`.
pub(crate) async fn open(
    _ops: &SharedOps,
    name: &str,
    _mtu: u32,
    _key: &Key,
    _port: u16,
    _host: &HostContext,
) -> Result<Opened, BackendError> {
    Err(BackendError::Refused(format!(
        "cannot create {name}: the userspace WireGuard implementation is not in this build yet"
    )))
}
