//! The vxlan backend's options from `net-conf.json`'s `Backend` object, and
//! its lease data.

use flannel_core::backend::BackendError;
use flannel_core::gojson::{JsonError, NotObject, Object, RawJson, decode_struct};
use flannel_netlink::{Mac, format_mac, parse_mac};

/// The backend type string.
pub const TYPE: &str = "vxlan";

/// VXLAN encapsulation overhead subtracted from the MTU (both families, as Go).
pub const OVERHEAD: u32 = 50;

/// `Backend` options (keys matched case-insensitively, as in Go).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanOptions {
    /// `VNI` (default 1); also names the devices `flannel.<VNI>`.
    pub vni: u32,
    /// `Port`: UDP destination port; 0 = the kernel default, 8472.
    pub port: u16,
    /// `MTU`: replaces the interface MTU before the overhead is subtracted.
    pub mtu: Option<u32>,
    /// `GBP`: VXLAN group-based policy.
    pub gbp: bool,
    /// `Learning`: let the device learn remote MACs (default off).
    pub learning: bool,
    /// `DirectRouting`: plain routes to peers on the same L2 segment.
    pub direct_routing: bool,
}

impl Default for VxlanOptions {
    fn default() -> Self {
        VxlanOptions {
            vni: 1,
            port: 0,
            mtu: None,
            gbp: false,
            learning: false,
            direct_routing: false,
        }
    }
}

impl VxlanOptions {
    /// Decodes the raw `Backend` object (absent = all defaults).
    pub fn parse(backend: Option<&RawJson>) -> Result<VxlanOptions, BackendError> {
        let mut o = VxlanOptions::default();
        let Some(obj) = decode_struct(backend, "vxlanBackendConfig", "vxlan.backendConfig")
            .map_err(|e| BackendError::config(TYPE, e.0))?
        else {
            return Ok(o);
        };
        let e = |e: JsonError| BackendError::config(TYPE, e.0);
        if let Some(v) = obj.int("VNI", "int").map_err(e)? {
            o.vni = u32::try_from(v)
                .ok()
                .filter(|v| (1..=0xff_ffff).contains(v))
                .ok_or_else(|| {
                    BackendError::config(TYPE, format!("VNI {v} out of range 1..16777215"))
                })?;
        }
        if let Some(v) = obj.int("Port", "int").map_err(e)? {
            o.port = u16::try_from(v).map_err(|_| {
                BackendError::config(TYPE, format!("Port {v} out of range 0..65535"))
            })?;
        }
        if let Some(v) = obj.int("MTU", "int").map_err(e)?
            && v > 0
        {
            o.mtu = Some(
                u32::try_from(v)
                    .map_err(|_| BackendError::config(TYPE, format!("MTU {v} out of range")))?,
            );
        }
        o.gbp = obj.bool("GBP").map_err(e)?.unwrap_or(false);
        o.learning = obj.bool("Learning").map_err(e)?.unwrap_or(false);
        o.direct_routing = obj.bool("DirectRouting").map_err(e)?.unwrap_or(false);
        Ok(o)
    }

    /// The device name for a family: `flannel.<VNI>` or `flannel-v6.<VNI>`.
    pub fn device_name(&self, v6: bool) -> String {
        if v6 {
            format!("flannel-v6.{}", self.vni)
        } else {
            format!("flannel.{}", self.vni)
        }
    }
}

/// The backend data of a vxlan lease: `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanLeaseData {
    /// The peer's VNI.
    pub vni: u32,
    /// The peer's VTEP MAC.
    pub vtep_mac: Mac,
}

impl VxlanLeaseData {
    /// The JSON Go writes.
    pub fn to_raw(&self) -> RawJson {
        RawJson::new(&format!(
            r#"{{"VNI":{},"VtepMAC":"{}"}}"#,
            self.vni,
            format_mac(&self.vtep_mac)
        ))
        .expect("valid JSON")
    }

    /// Decodes a peer's data as Go does: keys case-insensitive, `VtepMAC` a
    /// quoted MAC string.
    pub fn parse(raw: &RawJson) -> Result<VxlanLeaseData, String> {
        let obj = match Object::parse(raw.get(), "vxlanLeaseAttrs").map_err(|e| e.0)? {
            Ok(o) => o,
            // The caller adds Go's "error decoding subnet lease JSON" prefix.
            Err(NotObject::Null) => return Err("error parsing hardware addr".into()),
            Err(NotObject::Other(kind)) => {
                return Err(format!(
                    "json: cannot unmarshal {kind} into Go value of type vxlan.vxlanLeaseAttrs"
                ));
            }
        };
        let vni = obj
            .uint("VNI", "uint16", u64::from(u16::MAX))
            .map_err(|e| e.0)?
            .unwrap_or(0) as u32;
        let mac = match obj.get("VtepMAC").map(|r| r.get().trim()) {
            Some(s) if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') => {
                parse_mac(&s[1..s.len() - 1]).map_err(|e| e.to_string())?
            }
            _ => return Err("error parsing hardware addr".into()),
        };
        Ok(VxlanLeaseData { vni, vtep_mac: mac })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> RawJson {
        RawJson::new(s).unwrap()
    }

    #[test]
    fn defaults_and_case_insensitive_keys() {
        assert_eq!(VxlanOptions::parse(None).unwrap(), VxlanOptions::default());
        assert_eq!(
            VxlanOptions::parse(Some(&raw(r#"{"Type":"vxlan"}"#))).unwrap(),
            VxlanOptions::default()
        );
        let o = VxlanOptions::parse(Some(&raw(
            r#"{"Type":"vxlan","vni":4096,"port":4789,"mtu":9000,"gbp":true,"learning":true,"directRouting":true}"#,
        )))
        .unwrap();
        assert_eq!(
            o,
            VxlanOptions {
                vni: 4096,
                port: 4789,
                mtu: Some(9000),
                gbp: true,
                learning: true,
                direct_routing: true
            }
        );
        assert_eq!(o.device_name(false), "flannel.4096");
        assert_eq!(o.device_name(true), "flannel-v6.4096");
        assert_eq!(
            VxlanOptions::parse(Some(&raw(r#"{"MTU":0}"#))).unwrap().mtu,
            None
        );
    }

    #[test]
    fn bad_options_are_named() {
        let err = |s: &str| VxlanOptions::parse(Some(&raw(s))).unwrap_err().to_string();
        assert_eq!(
            err(r#"{"VNI":"1"}"#),
            "invalid vxlan backend configuration: json: cannot unmarshal string into Go struct field vxlanBackendConfig.VNI of type int"
        );
        assert_eq!(
            err(r#"{"VNI":0}"#),
            "invalid vxlan backend configuration: VNI 0 out of range 1..16777215"
        );
        assert_eq!(
            err(r#"{"Port":70000}"#),
            "invalid vxlan backend configuration: Port 70000 out of range 0..65535"
        );
        assert!(err(r#"{"GBP":"yes"}"#).contains("GBP of type bool"));
    }

    #[test]
    fn lease_data_round_trip_and_errors() {
        let d = VxlanLeaseData {
            vni: 1,
            vtep_mac: [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44],
        };
        assert_eq!(
            d.to_raw().get(),
            r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#
        );
        assert_eq!(VxlanLeaseData::parse(&d.to_raw()).unwrap(), d);
        assert_eq!(
            VxlanLeaseData::parse(&raw(r#"{"vni":1,"vtepmac":"C6:D2:32:6F:8F:44"}"#)).unwrap(),
            d
        );
        assert_eq!(
            VxlanLeaseData::parse(&raw(r#"{"VNI":1,"VtepMAC":5}"#)).unwrap_err(),
            "error parsing hardware addr"
        );
        assert!(VxlanLeaseData::parse(&raw(r#"{"VNI":1,"VtepMAC":"zz"}"#)).is_err());
        assert_eq!(
            VxlanLeaseData::parse(&raw(r#"[1]"#)).unwrap_err(),
            "json: cannot unmarshal array into Go value of type vxlan.vxlanLeaseAttrs"
        );
    }
}
