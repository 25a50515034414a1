//! The udp backend's options from `net-conf.json`'s `Backend` object, and
//! the offload switch.

use flannel_core::backend::BackendError;
use flannel_core::gojson::{JsonError, RawJson, decode_struct};

/// The backend type string.
pub const TYPE: &str = "udp";

/// The default UDP port (`Port`), Go's `defaultPort`.
pub const DEFAULT_PORT: u16 = 8285;

/// The encapsulation overhead subtracted from the interface MTU: the outer
/// IPv4 (20) and UDP (8) headers; the inner packet travels without any
/// header of ours.
pub const OVERHEAD: u32 = 28;

/// The TUN device's name. Go asks the kernel for `flannel%d` and gets
/// `flannel0`; our device is persistent (it outlives flanneld so traffic
/// survives a restart), so it needs a fixed name to be found again.
pub const TUN_NAME: &str = "flannel0";

/// The environment variable that switches the engine's offloads off
/// (`off`): TUN reads and UDP sends then go one packet at a time in
/// batches, without TSO/GSO/GRO — the Go-style fallback, for benchmarks
/// and for kernels or NICs whose offloads misbehave. `on` or unset: use
/// offloads where the kernel grants them (the engine falls back by itself
/// when it refuses them).
pub const OFFLOAD_ENV: &str = "FLANNEL_UDP_OFFLOAD";

/// `Backend` options (keys matched case-insensitively, as in Go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpOptions {
    /// `Port`: the UDP port we listen on and send to (every node of a udp
    /// network must use the same one; Go sends to the peer's public IP on
    /// its own configured port).
    pub port: u16,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions { port: DEFAULT_PORT }
    }
}

impl UdpOptions {
    /// Decodes the raw `Backend` object (absent or `null` = defaults).
    /// Unknown keys are ignored, as Go does. Go's `Port` is an `int` that
    /// only fails at bind time when out of range; we refuse it here.
    pub fn parse(backend: Option<&RawJson>) -> Result<UdpOptions, BackendError> {
        let mut o = UdpOptions::default();
        let e = |e: JsonError| {
            BackendError::config(TYPE, format!("error decoding UDP backend config: {}", e.0))
        };
        let Some(obj) =
            decode_struct(backend, "udp.backendConfig", "struct { Port int }").map_err(e)?
        else {
            return Ok(o);
        };
        if let Some(v) = obj.int("Port", "int").map_err(e)? {
            o.port = u16::try_from(v).ok().filter(|p| *p > 0).ok_or_else(|| {
                BackendError::config(TYPE, format!("Port {v} out of range 1..65535"))
            })?;
        }
        Ok(o)
    }
}

/// Whether the engine should try offloads, from [`OFFLOAD_ENV`]'s value:
/// `off`/`false`/`0`/`no` switch them off; unset, empty, `on`, `true`, `1`,
/// `yes` or `auto` leave them on. Anything else is an error naming the
/// variable.
pub fn offload_from_env(value: Option<&str>) -> Result<bool, BackendError> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "on" | "true" | "1" | "yes" | "auto") => Ok(true),
        Some("off" | "false" | "0" | "no") => Ok(false),
        Some(other) => Err(BackendError::config(
            TYPE,
            format!("{OFFLOAD_ENV}={other}: expected on or off"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<UdpOptions, String> {
        UdpOptions::parse(Some(&RawJson::new(json).unwrap())).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_port() {
        assert_eq!(UdpOptions::parse(None).unwrap().port, 8285);
        assert_eq!(parse("null").unwrap().port, 8285);
        assert_eq!(parse(r#"{"Type":"udp"}"#).unwrap().port, 8285);
        assert_eq!(parse(r#"{"Type":"udp","Port":9000}"#).unwrap().port, 9000);
        // Keys are case-insensitive and unknown keys ignored, as in Go.
        assert_eq!(
            parse(r#"{"type":"udp","port":7000,"VNI":3}"#).unwrap().port,
            7000
        );
    }

    #[test]
    fn config_errors() {
        assert_eq!(
            parse(r#"{"Type":"udp","Port":"8285"}"#).unwrap_err(),
            "invalid udp backend configuration: error decoding UDP backend config: json: cannot unmarshal string into Go struct field udp.backendConfig.Port of type int"
        );
        assert_eq!(
            parse(r#"{"Port":70000}"#).unwrap_err(),
            "invalid udp backend configuration: Port 70000 out of range 1..65535"
        );
        assert_eq!(
            parse(r#"{"Port":0}"#).unwrap_err(),
            "invalid udp backend configuration: Port 0 out of range 1..65535"
        );
        assert_eq!(
            parse(r#"{"Port":1.5}"#).unwrap_err(),
            "invalid udp backend configuration: error decoding UDP backend config: json: cannot unmarshal number 1.5 into Go struct field udp.backendConfig.Port of type int"
        );
        assert!(parse("[1]").unwrap_err().contains("cannot unmarshal array"));
    }

    #[test]
    fn offload_switch() {
        assert!(offload_from_env(None).unwrap());
        assert!(offload_from_env(Some("on")).unwrap());
        assert!(offload_from_env(Some("")).unwrap());
        assert!(!offload_from_env(Some("off")).unwrap());
        assert!(!offload_from_env(Some(" OFF ")).unwrap());
        assert!(!offload_from_env(Some("0")).unwrap());
        assert_eq!(
            offload_from_env(Some("maybe")).unwrap_err().to_string(),
            "invalid udp backend configuration: FLANNEL_UDP_OFFLOAD=maybe: expected on or off"
        );
    }
}
