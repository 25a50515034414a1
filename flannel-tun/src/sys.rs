//! The few Linux syscalls the engine needs, wrapped once: TUN ioctls,
//! socket options, `poll`, `eventfd`, `readv`/`writev`, and
//! `sendmmsg`/`recvmmsg` with `UDP_SEGMENT`/`UDP_GRO` control messages.
//!
//! Everything unsafe in the crate is here; each block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{self, IoSlice};
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Opens `/dev/net/tun` and attaches it to (or creates) interface `name`
/// with `flags` (`IFF_*`). Returns the fd and the kernel's interface name.
pub fn tun_attach(name: &str, flags: libc::c_int) -> io::Result<(OwnedFd, String)> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name longer than 15 bytes",
        ));
    }
    let path = CString::new("/dev/net/tun").expect("no NUL in a literal");
    // SAFETY: path is a valid NUL-terminated string; the returned fd is
    // checked and then owned exactly once.
    let fd = unsafe {
        OwnedFd::from_raw_fd(cvt(libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC,
        ))?)
    };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) })?;
    let got: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok((fd, String::from_utf8_lossy(&got).into_owned()))
}

/// `TUNSETPERSIST`.
pub fn tun_set_persist(fd: RawFd, persist: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes its argument by value.
    cvt(unsafe { libc::ioctl(fd, libc::TUNSETPERSIST, libc::c_ulong::from(persist)) }).map(drop)
}

/// `TUNSETOFFLOAD` with `TUN_F_*` flags.
pub fn tun_set_offload(fd: RawFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    cvt(unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) }).map(drop)
}

/// `TUNGETVNETHDRSZ`.
pub fn tun_vnet_hdr_size(fd: RawFd) -> io::Result<usize> {
    let mut sz: libc::c_int = 0;
    // SAFETY: TUNGETVNETHDRSZ writes one int through the pointer.
    cvt(unsafe { libc::ioctl(fd, libc::TUNGETVNETHDRSZ, &mut sz) })?;
    Ok(sz as usize)
}

/// Sets an interface's MTU (`SIOCSIFMTU` on a throwaway datagram socket).
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let s = unsafe {
        OwnedFd::from_raw_fd(cvt(libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
        ))?)
    };
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { zeroed() };
    for (d, c) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = c as libc::c_char;
    }
    ifr.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    // SAFETY: SIOCSIFMTU reads a struct ifreq.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFMTU, &mut ifr) }).map(drop)
}

/// Sets `O_NONBLOCK`.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we hold, integer arguments only.
    let fl = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) }).map(drop)
}

/// `setsockopt(fd, level, name, &int)`.
pub fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is one int of the given size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A non-blocking eventfd used to wake the engine's threads for shutdown.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) with integer arguments; the fd is owned right away.
    Ok(unsafe {
        OwnedFd::from_raw_fd(cvt(libc::eventfd(
            0,
            libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
        ))?)
    })
}

/// Makes an eventfd readable (for good: nobody reads it).
pub fn eventfd_signal(fd: RawFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a u64.
    cvt_size(unsafe { libc::write(fd, (&one as *const u64).cast(), 8) }).map(drop)
}

/// Waits until `fd` is readable (or `stop` is): `Ok(true)` = `fd` ready,
/// `Ok(false)` = stop requested. `timeout_ms` < 0 waits forever; a timeout
/// returns `Ok(true)` too (callers then just find nothing to read).
pub fn poll_readable(fd: RawFd, stop: RawFd, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: fds is a valid array of two pollfd.
        match cvt(unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) }) {
            Ok(_) => return Ok(fds[1].revents == 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `read(2)`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of its length.
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// `writev(2)`.
pub fn writev(fd: RawFd, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: IoSlice is ABI-compatible with struct iovec on Unix (std
    // guarantees it); the slices outlive the call.
    cvt_size(unsafe { libc::writev(fd, iov.as_ptr().cast(), iov.len() as libc::c_int) })
}

/// `sendto(2)` of one datagram.
pub fn send_to(fd: RawFd, buf: &[u8], dst: SocketAddr) -> io::Result<usize> {
    let (sa, len) = sockaddr(dst);
    // SAFETY: buf and the sockaddr are valid for the lengths passed.
    cvt_size(unsafe {
        libc::sendto(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            let sin = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// One message for [`Sender::send`]: the datagram bytes (`iov`, any number of
/// slices) to `dst`; with `segment_size` > 0 the kernel cuts the bytes into
/// datagrams of that size (`UDP_SEGMENT`).
#[derive(Debug)]
pub struct OutMsg<'a> {
    /// Destination.
    pub dst: SocketAddr,
    /// The bytes.
    pub iov: &'a [IoSlice<'a>],
    /// `UDP_SEGMENT` size, 0 for one datagram.
    pub segment_size: u16,
}

const CMSG_BUF: usize = 32;

/// Reusable storage for `sendmmsg`.
#[derive(Default)]
pub struct Sender {
    addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    cmsgs: Vec<[u64; CMSG_BUF / 8]>,
    hdrs: Vec<libc::mmsghdr>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.hdrs.capacity())
            .finish()
    }
}

impl Sender {
    /// Sends `msgs` with as few `sendmmsg` calls as the kernel allows.
    /// Returns how many messages were sent before an error, and that error
    /// (the failing message is `msgs[sent]`); `EINTR` is retried.
    pub fn send(&mut self, fd: RawFd, msgs: &[OutMsg<'_>]) -> (usize, Option<io::Error>) {
        self.addrs.clear();
        self.cmsgs.clear();
        self.hdrs.clear();
        for m in msgs {
            self.addrs.push(sockaddr(m.dst));
            self.cmsgs.push([0u64; CMSG_BUF / 8]);
        }
        for (i, m) in msgs.iter().enumerate() {
            // SAFETY: mmsghdr is plain old data; all-zero is valid.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i].0 as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = self.addrs[i].1;
            // IoSlice is ABI-compatible with iovec; the kernel only reads it.
            h.msg_hdr.msg_iov = m.iov.as_ptr() as *mut libc::iovec;
            h.msg_hdr.msg_iovlen = m.iov.len() as _;
            if m.segment_size > 0 {
                let buf = &mut self.cmsgs[i];
                h.msg_hdr.msg_control = buf.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure computation.
                h.msg_hdr.msg_controllen =
                    unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
                // SAFETY: msg_control points to CMSG_BUF (>= CMSG_SPACE(2))
                // aligned bytes, so the first header and its data fit.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), m.segment_size);
                }
            }
            self.hdrs.push(h);
        }
        let mut sent = 0;
        while sent < self.hdrs.len() {
            let n = self.hdrs.len() - sent;
            // SAFETY: every header points into self.addrs / self.cmsgs (not
            // reallocated since) and into the caller's slices, all alive
            // for the call.
            let r =
                unsafe { libc::sendmmsg(fd, self.hdrs[sent..].as_mut_ptr(), n as libc::c_uint, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return (sent, Some(e));
            }
            sent += r as usize;
        }
        (sent, None)
    }
}

/// What [`Receiver::recv`] learned about one message.
#[derive(Debug, Clone, Copy)]
pub struct RecvMeta {
    /// Bytes received.
    pub len: usize,
    /// Sender (None for an unexpected address family).
    pub src: Option<SocketAddr>,
    /// The `UDP_GRO` segment size when the kernel merged datagrams.
    pub stride: Option<usize>,
    /// The message did not fit its buffer.
    pub truncated: bool,
}

/// Reusable buffers for `recvmmsg` with `UDP_GRO`.
pub struct Receiver {
    /// One buffer per message.
    pub bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<[u64; CMSG_BUF / 8]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Per message, after [`Receiver::recv`].
    pub meta: Vec<RecvMeta>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("messages", &self.bufs.len())
            .finish()
    }
}

// SAFETY: the raw pointers in iovs/hdrs only ever point into this struct's
// own heap buffers, which move with it.
unsafe impl Send for Receiver {}

impl Receiver {
    /// `n` buffers of `size` bytes each.
    pub fn new(n: usize, size: usize) -> Receiver {
        Receiver {
            bufs: (0..n).map(|_| vec![0u8; size]).collect(),
            // SAFETY: plain old data, all-zero valid.
            addrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            cmsgs: vec![[0u64; CMSG_BUF / 8]; n],
            // SAFETY: as above.
            iovs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            // SAFETY: as above.
            hdrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            meta: Vec::with_capacity(n),
        }
    }

    /// One non-blocking `recvmmsg`; returns the number of messages (0 when
    /// nothing was waiting). Results are in [`Receiver::meta`] and
    /// [`Receiver::bufs`].
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.bufs[i].len(),
            };
            // SAFETY: plain old data, all-zero valid.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CMSG_BUF as _;
            self.hdrs[i] = h;
        }
        self.meta.clear();
        let r = loop {
            // SAFETY: every header points into this struct's buffers, valid
            // for writes of the lengths given.
            let r = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(e),
            }
        };
        for i in 0..r {
            let h = &self.hdrs[i];
            let mut stride = None;
            // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG
            // macros walk it within those bounds.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        stride = Some(v as usize);
                    }
                    c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
                }
            }
            self.meta.push(RecvMeta {
                len: h.msg_len as usize,
                src: from_sockaddr(&self.addrs[i]),
                stride,
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        Ok(r)
    }
}

// SAFETY: the raw pointers in `hdrs` point into this struct's own buffers
// or into caller slices only during `send`; between calls they are never
// dereferenced.
unsafe impl Send for Sender {}
