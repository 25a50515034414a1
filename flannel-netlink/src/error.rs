//! The crate's error type.

use std::io;

/// Errors from the netlink helpers. Every message names the object the
/// operation was about, in `ip`/`bridge` syntax, e.g.
/// `route 10.5.3.0/24 via 10.5.3.0 dev flannel.1: File exists (os error 17)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// The kernel refused the request (a netlink NACK carrying an errno).
    #[error("{object}: {source}{}", fmt_detail(.detail))]
    Kernel {
        /// The object, e.g. `link flannel.1` or `neighbour 10.5.3.0 dev flannel.1`.
        object: String,
        /// The errno as an I/O error (`File exists (os error 17)`).
        #[source]
        source: io::Error,
        /// The kernel's extended-ack text, when it sent one
        /// (e.g. `Nexthop device is not up`).
        detail: Option<String>,
    },

    /// The request could not be sent or no answer came back (typically the
    /// connection future returned by [`crate::Netlink::connect`] is not being
    /// polled any more).
    #[error("{object}: netlink request failed: {reason}")]
    Request {
        /// The object the request was about.
        object: String,
        /// Why it failed.
        reason: String,
    },

    /// The kernel answered with something we did not expect.
    #[error("{object}: unexpected netlink reply: {detail}")]
    Unexpected {
        /// The object the request was about.
        object: String,
        /// What was wrong with the answer.
        detail: String,
    },

    /// An object that should exist (e.g. a link just created) was not found.
    #[error("{object}: not found")]
    NotFound {
        /// The missing object.
        object: String,
    },

    /// Opening or configuring the netlink socket failed.
    #[error("opening a NETLINK_ROUTE socket: {0}")]
    Socket(#[source] io::Error),

    /// A link with the name exists but is of another kind; it is left alone
    /// (Go flannel's wording).
    #[error("{name} isn't an {wanted} mode device, please remove device and try again")]
    WrongKind {
        /// The link name.
        name: String,
        /// The kind wanted (`ipip`).
        wanted: &'static str,
    },

    /// A MAC address string did not parse (Go's `net.ParseMAC` wording).
    #[error("address {input}: invalid MAC address")]
    InvalidMac {
        /// The rejected input.
        input: String,
    },
}

fn fmt_detail(detail: &Option<String>) -> String {
    match detail {
        Some(d) => format!(" ({d})"),
        None => String::new(),
    }
}

impl NetlinkError {
    /// The kernel errno of a [`NetlinkError::Kernel`] error.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the kernel said the object already exists (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.os_error() == Some(EEXIST)
    }

    /// Whether the kernel refused a link type it does not have
    /// (`EOPNOTSUPP`: no such module, e.g. `type wireguard`).
    pub fn is_unsupported_kind(&self) -> bool {
        self.os_error() == Some(EOPNOTSUPP)
    }

    /// Whether the kernel said the object does not exist (`ENOENT`, `ESRCH`,
    /// `ENODEV` or `EADDRNOTAVAIL`, depending on the object type), or
    /// [`NetlinkError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, NetlinkError::NotFound { .. })
            || matches!(
                self.os_error(),
                Some(ENOENT | ESRCH | ENODEV | EADDRNOTAVAIL)
            )
    }
}

// errno values (Linux, all architectures we run on).
pub(crate) const ENOENT: i32 = 2;
pub(crate) const ESRCH: i32 = 3;
pub(crate) const EEXIST: i32 = 17;
pub(crate) const ENODEV: i32 = 19;
pub(crate) const EADDRNOTAVAIL: i32 = 99;
pub(crate) const EOPNOTSUPP: i32 = 95;
