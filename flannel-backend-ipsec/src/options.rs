//! The ipsec backend's options from `net-conf.json`'s `Backend` object.

use flannel_core::backend::{BackendError, ExternalInterface};
use flannel_core::gojson::{RawJson, decode_struct};

/// The backend type string.
pub const TYPE: &str = "ipsec";

/// Go's minimum PSK length.
pub const MIN_PSK_LEN: usize = 96;

/// Go's default ESP proposal.
pub const DEFAULT_ESP_PROPOSAL: &str = "aes128gcm16-sha256-prfsha256-ecp256";

/// ESP tunnel overhead subtracted from the interface MTU (Go's figure).
pub const OVERHEAD: u32 = 77;

/// The extra UDP header of NAT-T encapsulation (`UDPEncap`).
pub const UDP_ENCAP_OVERHEAD: u32 = 8;

/// A pre-shared key. Its `Debug` and `Display` print `***`: the key never
/// reaches a log line, an error or a metric.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(String);

impl Psk {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Psk {
        Psk(key.into())
    }

    /// The key itself, for charon only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// `Backend` options (keys matched case-insensitively, as in Go).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpsecOptions {
    /// `PSK`: the cluster's pre-shared key (required, ≥ 96 characters).
    pub psk: Psk,
    /// `UDPEncap`: force UDP encapsulation (NAT-T, port 4500).
    pub udp_encap: bool,
    /// `ESPProposal`: the child SA proposal.
    pub esp_proposal: String,
}

impl IpsecOptions {
    /// Decodes the raw `Backend` object. A missing or short `PSK` is Go's
    /// `config error, password is too short` (the key itself is never in
    /// an error).
    pub fn parse(backend: Option<&RawJson>) -> Result<IpsecOptions, BackendError> {
        let too_short = || BackendError::Refused("config error, password is too short".into());
        let Some(obj) = decode_struct(backend, "ipsecBackendConfig", "ipsec.backendConfig")
            .map_err(|e| BackendError::config(TYPE, e.0))?
        else {
            return Err(too_short());
        };
        // Type errors name the field, never its value.
        let psk = obj
            .string("PSK")
            .map_err(|_| BackendError::config(TYPE, "PSK must be a string"))?
            .unwrap_or_default();
        if psk.chars().count() < MIN_PSK_LEN {
            return Err(too_short());
        }
        let udp_encap = obj
            .bool("UDPEncap")
            .map_err(|e| BackendError::config(TYPE, e.0))?
            .unwrap_or(false);
        let esp_proposal = obj
            .string("ESPProposal")
            .map_err(|e| BackendError::config(TYPE, e.0))?
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| DEFAULT_ESP_PROPOSAL.to_string());
        Ok(IpsecOptions {
            psk: Psk(psk),
            udp_encap,
            esp_proposal,
        })
    }

    /// The pod MTU: interface MTU − 77, − 8 more with `UDPEncap`.
    pub fn mtu(&self, iface: &ExternalInterface) -> u32 {
        let overhead = OVERHEAD
            + if self.udp_encap {
                UDP_ENCAP_OVERHEAD
            } else {
                0
            };
        iface.mtu.saturating_sub(overhead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<IpsecOptions, BackendError> {
        IpsecOptions::parse(Some(&RawJson::new(json).unwrap()))
    }

    #[test]
    fn psk_rules_and_defaults_as_go() {
        let key = "k".repeat(96);
        let o = parse(&format!(r#"{{"Type":"ipsec","psk":"{key}"}}"#)).unwrap();
        assert_eq!(o.psk.expose(), key);
        assert!(!o.udp_encap);
        assert_eq!(o.esp_proposal, DEFAULT_ESP_PROPOSAL);
        for bad in [
            r#"{"Type":"ipsec"}"#.to_string(),
            format!(r#"{{"Type":"ipsec","PSK":"{}"}}"#, "k".repeat(95)),
        ] {
            assert_eq!(
                parse(&bad).unwrap_err().to_string(),
                "config error, password is too short"
            );
        }
        assert_eq!(
            IpsecOptions::parse(None).unwrap_err().to_string(),
            "config error, password is too short"
        );
        let o = parse(&format!(
            r#"{{"PSK":"{key}","UDPEncap":true,"ESPProposal":"aes256gcm16-modp2048"}}"#
        ))
        .unwrap();
        assert!(o.udp_encap);
        assert_eq!(o.esp_proposal, "aes256gcm16-modp2048");
        let iface = ExternalInterface {
            name: "eth0".into(),
            index: 2,
            mtu: 1500,
            iface_addr: None,
            iface_v6_addr: None,
            ext_addr: None,
            ext_v6_addr: None,
        };
        assert_eq!(o.mtu(&iface), 1415);
        assert_eq!(
            parse(&format!(r#"{{"PSK":"{key}"}}"#)).unwrap().mtu(&iface),
            1423
        );
    }

    #[test]
    fn the_key_is_never_printed() {
        let key = "s3cr3t".repeat(20);
        let o = parse(&format!(r#"{{"PSK":"{key}"}}"#)).unwrap();
        assert!(!format!("{o:?}").contains("s3cr3t"));
        assert_eq!(o.psk.to_string(), "***");
        let e = parse(r#"{"PSK":12345}"#).unwrap_err().to_string();
        assert!(!e.contains("12345"), "{e}");
    }
}
