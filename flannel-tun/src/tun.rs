//! Opening the TUN device: `IFF_TUN | IFF_NO_PI | IFF_VNET_HDR` (and
//! `IFF_MULTI_QUEUE` for several queues), persistence, MTU and the offloads
//! the kernel accepts.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::{EngineError, sys, vnet};

/// How to open the TUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name (at most 15 bytes), e.g. `flannel0`. A `%d` lets the
    /// kernel pick the number (`flannel%d`).
    pub name: String,
    /// MTU to set on the interface (0 leaves it as it is). Also sizes the
    /// engine's per-packet buffers.
    pub mtu: u32,
    /// Number of queues (`IFF_MULTI_QUEUE` when more than one); one
    /// transmit and one receive thread each. Default 1.
    pub queues: usize,
    /// Ask for checksum and segmentation offload (`TUNSETOFFLOAD` CSUM,
    /// TSO4, TSO6, and USO4/USO6 where the kernel accepts them). Default
    /// `true`; when the kernel refuses, the TUN is used without offload.
    pub offload: bool,
    /// Keep the device when the process exits (`TUNSETPERSIST`), so it and
    /// its routes survive a restart; the next [`open_tun`] re-attaches to it.
    pub persist: bool,
}

impl TunConfig {
    /// A configuration with the defaults: one queue, offload on, not
    /// persistent.
    pub fn new(name: impl Into<String>, mtu: u32) -> TunConfig {
        TunConfig {
            name: name.into(),
            mtu,
            queues: 1,
            offload: true,
            persist: false,
        }
    }
}

/// An open TUN device: one fd per queue, all non-blocking, each with a
/// 10-byte virtio header in front of every packet.
#[derive(Debug)]
pub struct Tun {
    pub(crate) fds: Vec<OwnedFd>,
    name: String,
    mtu: u32,
    pub(crate) offload_flags: u32,
}

/// `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`.
const BASE_OFFLOAD: u32 = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
/// `TUN_F_USO4 | TUN_F_USO6` (kernel 6.2+).
const USO: u32 = libc::TUN_F_USO4 | libc::TUN_F_USO6;

impl Tun {
    /// The interface name the kernel reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The MTU given at open time (0: unchanged).
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Number of queues (fds).
    pub fn queues(&self) -> usize {
        self.fds.len()
    }

    /// `true` when checksum and TCP segmentation offload are on: reads may
    /// return GSO superpackets.
    pub fn offload(&self) -> bool {
        self.offload_flags & libc::TUN_F_TSO4 != 0
    }

    /// `true` when UDP segmentation offload (USO) is on as well.
    pub fn uso(&self) -> bool {
        self.offload_flags & USO == USO
    }

    /// The raw fd of queue `i` (for callers that poll it themselves).
    pub fn queue_fd(&self, i: usize) -> Option<RawFd> {
        self.fds.get(i).map(|f| f.as_raw_fd())
    }

    /// Turns offload off (the kernel segments and checksums before handing
    /// packets over); used for the plain batching mode.
    pub(crate) fn disable_offload(&mut self) -> Result<(), EngineError> {
        if self.offload_flags != 0 {
            sys::tun_set_offload(self.fds[0].as_raw_fd(), 0).map_err(|e| EngineError::Tun {
                name: self.name.clone(),
                op: "TUNSETOFFLOAD 0",
                source: e,
            })?;
            self.offload_flags = 0;
        }
        Ok(())
    }
}

fn tun_err<'a>(name: &'a str, op: &'static str) -> impl FnOnce(io::Error) -> EngineError + 'a {
    move |source| EngineError::Tun {
        name: name.to_string(),
        op,
        source,
    }
}

/// Creates the TUN `cfg.name`, or re-attaches to an existing persistent one
/// of that name, with `IFF_TUN | IFF_NO_PI | IFF_VNET_HDR` (plus
/// `IFF_MULTI_QUEUE` for several queues), sets persistence and the MTU, and
/// negotiates offload (falling back to none, logged once, when refused).
///
/// Addresses, routes and the link state are not touched here (backends use
/// flannel-netlink for those).
pub fn open_tun(cfg: &TunConfig) -> Result<Tun, EngineError> {
    let queues = cfg.queues.max(1);
    let base = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    let mut mq = if queues > 1 { libc::IFF_MULTI_QUEUE } else { 0 };
    let (first, name) = match sys::tun_attach(&cfg.name, base | mq) {
        Ok(v) => v,
        // A persistent device left by an earlier run with the other queue
        // mode refuses the attach with EINVAL; a single queue works on a
        // multi-queue device, so try that before giving up.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && mq == 0 => {
            mq = libc::IFF_MULTI_QUEUE;
            sys::tun_attach(&cfg.name, base | mq).map_err(|_| EngineError::Tun {
                name: cfg.name.clone(),
                op: "TUNSETIFF",
                source: e,
            })?
        }
        Err(e) => return Err(tun_err(&cfg.name, "TUNSETIFF")(e)),
    };
    let mut fds = vec![first];
    for _ in 1..queues {
        let (fd, _) =
            sys::tun_attach(&name, base | mq).map_err(tun_err(&name, "TUNSETIFF (queue)"))?;
        fds.push(fd);
    }
    let fd0 = fds[0].as_raw_fd();
    let hdr = sys::tun_vnet_hdr_size(fd0).map_err(tun_err(&name, "TUNGETVNETHDRSZ"))?;
    if hdr != vnet::LEN {
        return Err(EngineError::Tun {
            name,
            op: "TUNGETVNETHDRSZ",
            source: io::Error::other(format!("virtio header size {hdr}, expected {}", vnet::LEN)),
        });
    }
    sys::tun_set_persist(fd0, cfg.persist).map_err(tun_err(&name, "TUNSETPERSIST"))?;
    if cfg.mtu > 0 {
        sys::set_mtu(&name, cfg.mtu).map_err(tun_err(&name, "SIOCSIFMTU"))?;
    }
    let mut offload_flags = 0;
    if cfg.offload {
        for flags in [BASE_OFFLOAD | USO, BASE_OFFLOAD] {
            match sys::tun_set_offload(fd0, flags) {
                Ok(()) => {
                    offload_flags = flags;
                    break;
                }
                Err(e) => tracing::debug!("TUN {name} refused offload flags {flags:#x}: {e}"),
            }
        }
        if offload_flags == 0 {
            tracing::warn!(
                "TUN {name} refused checksum and segmentation offload; using plain batching"
            );
            let _ = sys::tun_set_offload(fd0, 0);
        }
    } else {
        // A re-attached persistent device keeps the offloads of its last
        // owner; make them match what was asked for.
        sys::tun_set_offload(fd0, 0).map_err(tun_err(&name, "TUNSETOFFLOAD 0"))?;
    }
    for fd in &fds {
        sys::set_nonblocking(fd.as_raw_fd()).map_err(tun_err(&name, "O_NONBLOCK"))?;
    }
    Ok(Tun {
        fds,
        name,
        mtu: cfg.mtu,
        offload_flags,
    })
}
