//! The wireguard backend's options from `net-conf.json`'s `Backend` object.

use crate::keys::{Key, KeyError};
use flannel_core::backend::BackendError;
use flannel_core::gojson::{JsonError, RawJson, decode_struct};
use std::time::Duration;

/// The backend type string.
pub const TYPE: &str = "wireguard";

/// WireGuard's overhead subtracted from the MTU: an IPv6 header (40), UDP
/// (8), type, key index and nonce (16) and the authentication tag (16).
pub const OVERHEAD: u32 = 80;

/// The default `ListenPort`.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;
/// The default `ListenPortV6`.
pub const DEFAULT_LISTEN_PORT_V6: u16 = 51821;

/// The environment variable that chooses the implementation
/// (`auto`, `kernel`, `userspace`), overriding the `Implementation` option.
pub const IMPLEMENTATION_ENV: &str = "FLANNEL_WIREGUARD_IMPLEMENTATION";

/// How the devices are laid out and which endpoint a peer gets (`Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `separate` (default): `flannel-wg` for IPv4 and `flannel-wg-v6` for
    /// IPv6, each with its own peers.
    Separate,
    /// `auto`: one device; each peer's endpoint is chosen from its
    /// addresses (public IPv4 first, then a global IPv6, else IPv4).
    Auto,
    /// `ipv4`: one device, IPv4 endpoints.
    Ipv4,
    /// `ipv6`: one device, IPv6 endpoints.
    Ipv6,
}

impl Mode {
    /// The option value (`separate`, `auto`, `ipv4`, `ipv6`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Separate => "separate",
            Mode::Auto => "auto",
            Mode::Ipv4 => "ipv4",
            Mode::Ipv6 => "ipv6",
        }
    }
}

/// Which WireGuard carries the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// Kernel WireGuard when the kernel accepts the `wireguard` link type,
    /// otherwise the userspace implementation (the default).
    Auto,
    /// Kernel WireGuard only: startup fails when the kernel has none.
    Kernel,
    /// The userspace implementation even when the kernel has WireGuard.
    Userspace,
}

impl Implementation {
    /// Parses `auto`, `kernel` or `userspace` (case-insensitive).
    pub fn parse(s: &str) -> Option<Implementation> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Some(Implementation::Auto),
            "kernel" => Some(Implementation::Kernel),
            "userspace" => Some(Implementation::Userspace),
            _ => None,
        }
    }
}

/// `Backend` options (keys matched case-insensitively, as in Go).
#[derive(Clone, PartialEq, Eq)]
pub struct WireguardOptions {
    /// `ListenPort` (51820): the IPv4 device's port (the only device's in
    /// the single-device modes).
    pub listen_port: u16,
    /// `ListenPortV6` (51821): the IPv6 device's port in `separate` mode.
    pub listen_port_v6: u16,
    /// `MTU`: replaces the interface MTU before the overhead is subtracted.
    pub mtu: Option<u32>,
    /// `PSK`: a pre-shared key for every peer.
    pub psk: Option<Key>,
    /// `PersistentKeepaliveInterval`, in seconds (0 = off).
    pub keepalive: u16,
    /// `Mode`.
    pub mode: Mode,
    /// `Implementation` (ours; Go ignores the key): `auto`, `kernel` or
    /// `userspace`.
    pub implementation: Implementation,
}

impl std::fmt::Debug for WireguardOptions {
    // The PSK is a secret: only whether one is set is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireguardOptions")
            .field("listen_port", &self.listen_port)
            .field("listen_port_v6", &self.listen_port_v6)
            .field("mtu", &self.mtu)
            .field("psk", &self.psk.as_ref().map(|_| "<set>"))
            .field("keepalive", &self.keepalive)
            .field("mode", &self.mode)
            .field("implementation", &self.implementation)
            .finish()
    }
}

impl Default for WireguardOptions {
    fn default() -> Self {
        WireguardOptions {
            listen_port: DEFAULT_LISTEN_PORT,
            listen_port_v6: DEFAULT_LISTEN_PORT_V6,
            mtu: None,
            psk: None,
            keepalive: 0,
            mode: Mode::Separate,
            implementation: Implementation::Auto,
        }
    }
}

/// Go decodes the options into an anonymous struct: its field errors read
/// `Go struct field .ListenPort of type int`.
const GO_STRUCT: &str = "";

impl WireguardOptions {
    /// Decodes the raw `Backend` object (absent = all defaults), with Go's
    /// error texts: `error decoding backend config: ...`,
    /// `could not parse psk: ...`, `no valid Mode configured`.
    pub fn parse(backend: Option<&RawJson>) -> Result<WireguardOptions, BackendError> {
        let mut o = WireguardOptions::default();
        let decoding = |e: JsonError| {
            BackendError::config(TYPE, format!("error decoding backend config: {}", e.0))
        };
        let Some(obj) = decode_struct(
            backend,
            GO_STRUCT,
            "struct { ListenPort int; ListenPortV6 int; PSK string; PersistentKeepaliveInterval time.Duration; Mode wireguard.Mode; MTU int }",
        )
        .map_err(decoding)?
        else {
            return Ok(o);
        };
        let port = |field: &str, v: i64| {
            u16::try_from(v).map_err(|_| {
                BackendError::config(TYPE, format!("{field} {v} out of range 0..65535"))
            })
        };
        if let Some(v) = obj.int("ListenPort", "int").map_err(decoding)? {
            o.listen_port = port("ListenPort", v)?;
        }
        if let Some(v) = obj.int("ListenPortV6", "int").map_err(decoding)? {
            o.listen_port_v6 = port("ListenPortV6", v)?;
        }
        if let Some(v) = obj.int("MTU", "int").map_err(decoding)?
            && v > 0
        {
            o.mtu = Some(
                u32::try_from(v)
                    .map_err(|_| BackendError::config(TYPE, format!("MTU {v} out of range")))?,
            );
        }
        if let Some(v) = obj
            .int("PersistentKeepaliveInterval", "time.Duration")
            .map_err(decoding)?
        {
            // Go multiplies the number by one second; the kernel keeps
            // whole seconds in 16 bits.
            o.keepalive = u16::try_from(v).map_err(|_| {
                BackendError::config(
                    TYPE,
                    format!("PersistentKeepaliveInterval {v} out of range 0..65535 seconds"),
                )
            })?;
        }
        // `Mode` has its own Go type.
        let mode = match obj.get("Mode") {
            None => None,
            Some(raw) if flannel_core::gojson::is_null(raw) => None,
            Some(raw) => Some(
                serde_json::from_str::<String>(raw.get())
                    .map_err(|_| decoding(obj.type_error("Mode", raw, "wireguard.Mode")))?,
            ),
        };
        let psk = obj.string("PSK").map_err(decoding)?;
        if let Some(imp) = obj.string("Implementation").map_err(decoding)? {
            o.implementation = Implementation::parse(&imp).ok_or_else(|| {
                BackendError::config(
                    TYPE,
                    format!("Implementation {imp:?} is not one of auto, kernel, userspace"),
                )
            })?;
        }
        if let Some(psk) = psk.filter(|p| !p.is_empty()) {
            o.psk = Some(Key::parse(&psk).map_err(|e: KeyError| {
                BackendError::config(TYPE, format!("could not parse psk: {e}"))
            })?);
        }
        if let Some(mode) = mode {
            o.mode = match mode.as_str() {
                "separate" => Mode::Separate,
                "auto" => Mode::Auto,
                "ipv4" => Mode::Ipv4,
                "ipv6" => Mode::Ipv6,
                _ => return Err(BackendError::config(TYPE, "no valid Mode configured")),
            };
        }
        Ok(o)
    }

    /// The keepalive as a duration, `None` when off.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive > 0).then(|| Duration::from_secs(u64::from(self.keepalive)))
    }

    /// The MTU of the devices (and of the pods): the `MTU` option or the
    /// interface MTU, less [`OVERHEAD`].
    pub fn device_mtu(&self, iface_mtu: u32) -> u32 {
        self.mtu.unwrap_or(iface_mtu).saturating_sub(OVERHEAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> RawJson {
        RawJson::new(s).unwrap()
    }
    fn err(s: &str) -> String {
        WireguardOptions::parse(Some(&raw(s)))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_and_case_insensitive_keys() {
        let d = WireguardOptions::parse(None).unwrap();
        assert_eq!(d, WireguardOptions::default());
        assert_eq!((d.listen_port, d.listen_port_v6), (51820, 51821));
        assert_eq!(d.mode, Mode::Separate);
        assert_eq!(d.device_mtu(1500), 1420);
        assert_eq!(
            WireguardOptions::parse(Some(&raw(r#"{"Type":"wireguard"}"#))).unwrap(),
            d
        );
        let psk = "hT3T4ki6YKnhK5xVH+JB8mGlNGcXHp9fERPNWubQNVI=";
        let o = WireguardOptions::parse(Some(&raw(&format!(
            r#"{{"type":"wireguard","listenport":5000,"LISTENPORTV6":5001,"mtu":9000,"psk":"{psk}","persistentKeepaliveInterval":25,"mode":"auto","implementation":"userspace"}}"#
        ))))
        .unwrap();
        assert_eq!((o.listen_port, o.listen_port_v6), (5000, 5001));
        assert_eq!(o.device_mtu(1500), 8920);
        assert_eq!(o.psk.as_ref().unwrap().to_base64(), psk);
        assert_eq!(o.keepalive_interval(), Some(Duration::from_secs(25)));
        assert_eq!(o.mode, Mode::Auto);
        assert_eq!(o.implementation, Implementation::Userspace);
        assert!(!format!("{o:?}").contains(psk), "the PSK never shows");
        for (m, want) in [
            ("separate", Mode::Separate),
            ("auto", Mode::Auto),
            ("ipv4", Mode::Ipv4),
            ("ipv6", Mode::Ipv6),
        ] {
            let o = WireguardOptions::parse(Some(&raw(&format!(r#"{{"Mode":"{m}"}}"#)))).unwrap();
            assert_eq!(o.mode, want);
            assert_eq!(want.as_str(), m);
        }
        assert_eq!(
            WireguardOptions::parse(Some(&raw(r#"{"PSK":""}"#)))
                .unwrap()
                .psk,
            None
        );
    }

    #[test]
    fn go_error_texts() {
        assert_eq!(
            err(r#"{"Mode":"both"}"#),
            "invalid wireguard backend configuration: no valid Mode configured"
        );
        // Go's constants are lower case and compared exactly.
        assert_eq!(
            err(r#"{"Mode":"Separate"}"#),
            "invalid wireguard backend configuration: no valid Mode configured"
        );
        assert_eq!(
            err(r#"{"PSK":"not a key"}"#),
            "invalid wireguard backend configuration: could not parse psk: wgtypes: failed to parse base64-encoded key: illegal base64 data at input byte 3"
        );
        assert_eq!(
            err(r#"{"PSK":"AAAA"}"#),
            "invalid wireguard backend configuration: could not parse psk: wgtypes: incorrect key size: 3"
        );
        assert_eq!(
            err(r#"{"ListenPort":"51820"}"#),
            "invalid wireguard backend configuration: error decoding backend config: json: cannot unmarshal string into Go struct field .ListenPort of type int"
        );
        assert_eq!(
            err(r#"{"PersistentKeepaliveInterval":"25s"}"#),
            "invalid wireguard backend configuration: error decoding backend config: json: cannot unmarshal string into Go struct field .PersistentKeepaliveInterval of type time.Duration"
        );
        assert_eq!(
            err(r#"{"Mode":4}"#),
            "invalid wireguard backend configuration: error decoding backend config: json: cannot unmarshal number into Go struct field .Mode of type wireguard.Mode"
        );
        assert!(err(r#"{"ListenPort":70000}"#).contains("ListenPort 70000 out of range"));
        assert!(err(r#"{"Implementation":"fast"}"#).contains("not one of auto, kernel, userspace"));
    }

    #[test]
    fn implementation_values() {
        assert_eq!(
            Implementation::parse("KERNEL"),
            Some(Implementation::Kernel)
        );
        assert_eq!(Implementation::parse(""), Some(Implementation::Auto));
        assert_eq!(Implementation::parse("x"), None);
    }
}
