//! The library's error types.
//!
//! Each `Display` is the text upstream's Go plugin produces for the same
//! failure (it ends up in the `msg` of the CNI error JSON, so it must not
//! change), and each error keeps its cause as [`std::error::Error::source`]
//! where there is one.

use std::io;

use flannel_core::ip::IpError;

use crate::config::go_errno_text;
use crate::json::{SyntaxError, go_quote};

/// A JSON document Go's `encoding/json` would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON (`invalid character ...`, `unexpected end of JSON input`).
    #[error(transparent)]
    Syntax(#[from] SyntaxError),
    /// The first `json: cannot unmarshal ...` type error, as Go words it
    /// (see [`crate::json::type_error`]).
    #[error("{0}")]
    Type(String),
}

/// The network configuration (stdin) could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `loadFlannelNetConf` failed.
    #[error("failed to load netconf: {0}")]
    NetConf(#[source] DecodeError),
    /// The `cniVersion` could not be read (libcni's `ConfigDecoder`).
    #[error("decoding version from network config: {0}")]
    Version(#[source] DecodeError),
}

/// A failed file operation, worded like Go's `*os.PathError`:
/// `<op> <path>: <errno text>` (`open /x: no such file or directory`).
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {}", go_errno_text(.source))]
pub struct PathError {
    /// The operation (`open`, `read`, `mkdir`, `write`, `sync`).
    pub op: &'static str,
    /// The path as given.
    pub path: String,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

impl PathError {
    /// A `PathError` for `op` on `path`.
    pub fn new(op: &'static str, path: impl Into<String>, source: io::Error) -> PathError {
        PathError {
            op,
            path: path.into(),
            source,
        }
    }
}

/// `subnet.env` could not be read or lacks what the plugin needs.
#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    /// Opening or reading the file failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// A network or subnet value is not a CIDR (`invalid CIDR address: x`).
    #[error(transparent)]
    Cidr(#[from] IpError),
    /// `FLANNEL_MTU` is not an unsigned 32-bit number (Go's
    /// `strconv.ParseUint` text).
    #[error("strconv.ParseUint: parsing {}: {reason}", go_quote(.value))]
    Mtu {
        /// The value as written.
        value: String,
        /// `invalid syntax` or `value out of range`.
        reason: &'static str,
    },
    /// Required variables are absent (`<path> is missing FLANNEL_MTU`).
    #[error("{path} is missing {}", .keys.join(", "))]
    Missing {
        /// The file.
        path: String,
        /// The missing variables, in upstream's order.
        keys: Vec<&'static str>,
    },
}

/// One `ipam.routes` element could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A JSON type error (`json: cannot unmarshal ...`).
    #[error("{0}")]
    Type(String),
    /// `dst` is not a CIDR.
    #[error(transparent)]
    Dst(#[from] IpError),
    /// `gw` is not an IP address.
    #[error("invalid IP address: {input}")]
    Gateway {
        /// The value as written.
        input: String,
    },
}

/// The IPAM section of the delegate config could not be assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The user's `ipam.routes` did not decode.
    #[error("failed to read IPAM routes: failed to parse ipam.routes: {0}")]
    Routes(#[source] RouteError),
}

/// The delegate config could not be built from the user's `delegate` map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegateError {
    /// `delegate.type` is present but not a string.
    #[error("'delegate' dictionary, if present, must have (string) 'type' field")]
    TypeNotString,
    /// `delegate.name` is set (flannel sets it).
    #[error("'delegate' dictionary must not have 'name' field, it'll be set by flannel")]
    HasName,
    /// `delegate.ipam` is set (flannel sets it).
    #[error("'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")]
    HasIpam,
    /// The IPAM section failed.
    #[error("failed to assemble Delegate IPAM: {0}")]
    Ipam(#[source] IpamError),
}

/// The delegate plugin binary could not be found (libcni's `FindInPath`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindPluginError {
    /// The plugin name is empty.
    #[error("no plugin name provided")]
    NoName,
    /// The plugin name contains a `/`.
    #[error("invalid plugin name: {0}")]
    InvalidName(String),
    /// `CNI_PATH` is empty.
    #[error("no paths provided")]
    NoPaths,
    /// No directory of `CNI_PATH` holds the plugin.
    #[error("failed to find plugin {} in path [{}]", go_quote(.plugin), .dirs.join(" "))]
    NotFound {
        /// The plugin name.
        plugin: String,
        /// The directories searched, in order.
        dirs: Vec<String>,
    },
}

/// The delegate's ADD result could not be turned into ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    /// The delegate config's version could not be read.
    #[error(transparent)]
    Version(#[from] ConfigError),
    /// The delegate's stdout is not a JSON object.
    #[error("failed to unmarshal raw result: {source} result {raw}")]
    Unmarshal {
        /// Why.
        #[source]
        source: DecodeError,
        /// The delegate's stdout (lossy UTF-8).
        raw: String,
    },
    /// The result's `cniVersion` is not one this plugin supports.
    #[error("unsupported CNI result version {}", go_quote(.version))]
    UnsupportedVersion {
        /// The version found.
        version: String,
    },
}

/// A saved delegate config could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// Moving the temporary file into place failed (Go's `*os.LinkError`:
    /// `rename <from> <to>: <errno text>`).
    #[error("rename {from} {to}: {}", go_errno_text(.source))]
    Rename {
        /// The temporary file.
        from: String,
        /// The entry.
        to: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FlannelEnv, NetConf};
    use std::error::Error as _;

    #[test]
    fn texts_are_upstreams_and_causes_are_kept() {
        let e = NetConf::load(b"{").unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to load netconf: unexpected end of JSON input"
        );
        assert!(matches!(
            e.source().and_then(|s| s.downcast_ref::<DecodeError>()),
            Some(DecodeError::Syntax(_))
        ));

        let e = FlannelEnv::load("/nonexistent/flannel/subnet.env").unwrap_err();
        assert_eq!(
            e.to_string(),
            "open /nonexistent/flannel/subnet.env: no such file or directory"
        );
        let io = e.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(io.map(io::Error::kind), Some(io::ErrorKind::NotFound));

        let e = StoreError::Rename {
            from: "/d/.c.tmp-1".into(),
            to: "/d/c".into(),
            source: io::Error::from_raw_os_error(18),
        };
        assert_eq!(
            e.to_string(),
            "rename /d/.c.tmp-1 /d/c: invalid cross-device link"
        );
        assert!(e.source().is_some());
    }
}
