//! Leases and their attributes, with the exact JSON Go flannel stores.
//!
//! A lease value in etcd is the JSON of [`LeaseAttrs`]:
//!
//! ```text
//! {"PublicIP":"<v4>","PublicIPv6":<"v6"|null>[,"BackendType":"<t>"][,"BackendData":<json>][,"BackendV6Data":<json>]}
//! ```
//!
//! [`LeaseAttrs::to_json`] writes these bytes exactly as Go's `json.Marshal`
//! does (field order, `"PublicIPv6":null`, empty fields omitted, backend data
//! embedded compacted); [`LeaseAttrs::from_json`] reads them as tolerantly as
//! Go (case-insensitive keys, unknown keys ignored).
//!
//! ```
//! use flannel_core::lease::LeaseAttrs;
//! let attrs = LeaseAttrs::from_json(
//!     r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
//! ).unwrap();
//! assert_eq!(attrs.backend_type, "vxlan");
//! assert_eq!(
//!     attrs.to_json(),
//!     r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
//! );
//! ```

use crate::gojson::{self, JsonError, NotObject, Object, RawJson};
use crate::ip::{Family, GoIp, Ip4Net, Ip6Net, IpError};
use crate::key::SubnetKey;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

/// A lease value that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// Malformed JSON or a JSON type mismatch.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// `PublicIP` or `PublicIPv6` is not an address of its family.
    #[error("{field}: {source}")]
    Ip {
        /// The field name.
        field: &'static str,
        /// What is wrong with it.
        source: IpError,
    },
}

/// What a node publishes about itself in its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAttrs {
    /// `PublicIP`: the IPv4 address other nodes reach this node at;
    /// `0.0.0.0` when unset (IPv6-only).
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6`: the IPv6 address other nodes reach this node at.
    pub public_ipv6: Option<Ipv6Addr>,
    /// `BackendType`, e.g. `vxlan`; empty for udp and alloc, which write none.
    pub backend_type: String,
    /// `BackendData`: the backend's IPv4 data, e.g. `{"VNI":1,"VtepMAC":"…"}`.
    pub backend_data: Option<RawJson>,
    /// `BackendV6Data`: the backend's IPv6 data.
    pub backend_v6_data: Option<RawJson>,
}

impl Default for LeaseAttrs {
    fn default() -> Self {
        LeaseAttrs::new(Ipv4Addr::UNSPECIFIED)
    }
}

impl LeaseAttrs {
    /// Attributes with only a public IPv4 address.
    pub fn new(public_ip: Ipv4Addr) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: String::new(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// The JSON Go flannel writes for these attributes, byte for byte.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(128);
        out.push_str("{\"PublicIP\":\"");
        out.push_str(&self.public_ip.to_string());
        out.push_str("\",\"PublicIPv6\":");
        match self.public_ipv6 {
            Some(ip) => {
                out.push('"');
                out.push_str(&GoIp(ip).to_string());
                out.push('"');
            }
            None => out.push_str("null"),
        }
        if !self.backend_type.is_empty() {
            out.push_str(",\"BackendType\":");
            gojson::write_string(&mut out, &self.backend_type);
        }
        for (name, data) in [
            ("BackendData", &self.backend_data),
            ("BackendV6Data", &self.backend_v6_data),
        ] {
            if let Some(data) = data {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                gojson::compact(&mut out, data.get());
            }
        }
        out.push('}');
        out
    }

    /// Decodes a lease value the way Go does: keys match case-insensitively,
    /// unknown keys are ignored, a missing `PublicIP` is `0.0.0.0`, a `null`
    /// `PublicIP` is an error, a `null` `PublicIPv6` is unset, and a `null`
    /// backend data value is kept as the raw `null`.
    pub fn from_json(json: &str) -> Result<LeaseAttrs, LeaseError> {
        if let Some(attrs) = fast::decode(json) {
            return Ok(attrs);
        }
        let obj = match Object::parse(json, "LeaseAttrs")? {
            Ok(obj) => obj,
            Err(NotObject::Null) => return Ok(LeaseAttrs::default()),
            Err(NotObject::Other(kind)) => {
                return Err(JsonError(format!(
                    "json: cannot unmarshal {kind} into Go value of type lease.LeaseAttrs"
                ))
                .into());
            }
        };
        let mut attrs = LeaseAttrs::default();
        if let Some(t) = obj.trimmed_token("PublicIP") {
            attrs.public_ip = Ipv4Addr::parse_go(&t).map_err(|source| LeaseError::Ip {
                field: "PublicIP",
                source,
            })?;
        }
        match obj.get("PublicIPv6") {
            Some(raw) if !gojson::is_null(raw) => {
                let t = raw.get().trim().trim_matches('"');
                let ip = Ipv6Addr::parse_go(t).map_err(|source| LeaseError::Ip {
                    field: "PublicIPv6",
                    source,
                })?;
                attrs.public_ipv6 = Some(ip);
            }
            _ => {}
        }
        attrs.backend_type = obj.string("BackendType")?.unwrap_or_default();
        attrs.backend_data = obj.get("BackendData").map(RawJson::from);
        attrs.backend_v6_data = obj.get("BackendV6Data").map(RawJson::from);
        Ok(attrs)
    }
}

/// A decoder for the exact bytes Go (and we) write, a few times faster than
/// the general one: listing 60,000 leases is dominated by decoding. Any
/// deviation from the canonical form (other key spellings or order,
/// whitespace, escapes, bad addresses) returns `None` and the general decoder
/// decides, so both always agree (checked by a property test and fuzzing).
mod fast {
    use super::{LeaseAttrs, RawJson};
    use crate::ip::Family;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A plain string body: no quote, escape or control character.
    fn plain(s: &str) -> Option<(&str, &str)> {
        let end = s.find('"')?;
        let (body, rest) = (&s[..end], &s[end + 1..]);
        (!body.bytes().any(|b| b == b'\\' || b < 0x20)).then_some((body, rest))
    }

    /// The extent of one compact JSON object, array or `null` at the start
    /// of `s`, validated.
    fn raw(s: &str) -> Option<(RawJson, &str)> {
        let end = if s.starts_with("null") {
            4
        } else {
            let b = s.as_bytes();
            if !matches!(b.first(), Some(b'{' | b'[')) {
                return None;
            }
            let (mut depth, mut in_str, mut esc) = (0usize, false, false);
            let mut end = None;
            for (i, &c) in b.iter().enumerate() {
                if in_str {
                    match (esc, c) {
                        (true, _) => esc = false,
                        (false, b'\\') => esc = true,
                        (false, b'"') => in_str = false,
                        _ => {}
                    }
                    continue;
                }
                match c {
                    b'"' => in_str = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(i + 1);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            end?
        };
        let text = &s[..end];
        // Compact only: the general path keeps the text verbatim, and a
        // canonical writer never puts whitespace here.
        if text.bytes().any(|b| b.is_ascii_whitespace()) {
            return None;
        }
        Some((RawJson::new(text).ok()?, &s[end..]))
    }

    pub(super) fn decode(json: &str) -> Option<LeaseAttrs> {
        let rest = json.strip_prefix("{\"PublicIP\":\"")?;
        let (ip, rest) = plain(rest)?;
        let mut attrs = LeaseAttrs::new(Ipv4Addr::parse_go(ip).ok()?);
        let rest = rest.strip_prefix(",\"PublicIPv6\":")?;
        let mut rest = match rest.strip_prefix("null") {
            Some(r) => r,
            None => {
                let (ip6, r) = plain(rest.strip_prefix('"')?)?;
                attrs.public_ipv6 = Some(Ipv6Addr::parse_go(ip6).ok()?);
                r
            }
        };
        if let Some(r) = rest.strip_prefix(",\"BackendType\":\"") {
            let (t, r) = plain(r)?;
            attrs.backend_type = t.to_string();
            rest = r;
        }
        if let Some(r) = rest.strip_prefix(",\"BackendData\":") {
            let (d, r) = raw(r)?;
            attrs.backend_data = Some(d);
            rest = r;
        }
        if let Some(r) = rest.strip_prefix(",\"BackendV6Data\":") {
            let (d, r) = raw(r)?;
            attrs.backend_v6_data = Some(d);
            rest = r;
        }
        (rest == "}").then_some(attrs)
    }
}

/// A subnet lease: the subnet(s) a node holds, what it publishes, and until
/// when.
///
/// The address families are explicit: a lease has an IPv4 subnet, an IPv6
/// subnet or both (Go's `EnableIPv4`/`EnableIPv6` flags are
/// [`Lease::has_ipv4`] and [`Lease::has_ipv6`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The IPv4 subnet, if the lease has one.
    pub subnet: Option<Ip4Net>,
    /// The IPv6 subnet, if the lease has one.
    pub ipv6_subnet: Option<Ip6Net>,
    /// What the holder publishes.
    pub attrs: LeaseAttrs,
    /// When the lease runs out; `None` for a reservation (a key without TTL)
    /// or a store without expiry (Kubernetes).
    pub expiration: Option<SystemTime>,
    /// The store revision this lease was read at (etcd revision, Kubernetes
    /// resourceVersion as a number, local store sequence), 0 if unknown.
    pub asof: i64,
}

impl Lease {
    /// A lease for `key` with `attrs`, no expiry and no revision.
    pub fn new(key: SubnetKey, attrs: LeaseAttrs) -> Lease {
        Lease {
            subnet: key.ipv4(),
            ipv6_subnet: key.ipv6(),
            attrs,
            expiration: None,
            asof: 0,
        }
    }

    /// The lease's key (its subnets).
    ///
    /// # Panics
    /// Never for leases built by this crate; a hand-built lease without any
    /// subnet is a programming error.
    pub fn key(&self) -> SubnetKey {
        SubnetKey::new(self.subnet, self.ipv6_subnet).expect("a lease holds at least one subnet")
    }

    /// True when the lease has an IPv4 subnet (Go's `EnableIPv4`).
    pub fn has_ipv4(&self) -> bool {
        self.subnet.is_some()
    }

    /// True when the lease has an IPv6 subnet (Go's `EnableIPv6`).
    pub fn has_ipv6(&self) -> bool {
        self.ipv6_subnet.is_some()
    }

    /// True for a reservation: a lease that never expires.
    pub fn is_reservation(&self) -> bool {
        self.expiration.is_none()
    }

    /// True when both leases hold the same subnets and publish the same
    /// attributes (expiry and revision aside): a backend has nothing to redo.
    pub fn same_datapath(&self, other: &Lease) -> bool {
        self.subnet == other.subnet
            && self.ipv6_subnet == other.ipv6_subnet
            && self.attrs == other.attrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(json: &str) -> LeaseAttrs {
        LeaseAttrs::from_json(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn minimal_bytes_match_go_registry_test() {
        // pkg/subnet/etcd/registry_test.go TestEtcdRegistry
        assert_eq!(
            LeaseAttrs::new(Ipv4Addr::new(1, 2, 3, 4)).to_json(),
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null}"#
        );
        assert_eq!(
            LeaseAttrs::default().to_json(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":null}"#
        );
    }

    #[test]
    fn full_attrs_bytes() {
        let a = LeaseAttrs {
            public_ip: Ipv4Addr::new(172, 18, 0, 2),
            public_ipv6: Some("fc00:f853:ccd:e793::2".parse().unwrap()),
            backend_type: "vxlan".into(),
            backend_data: Some(
                RawJson::new(r#"{ "VNI": 1, "VtepMAC": "16:3a:35:bd:28:e2" }"#).unwrap(),
            ),
            backend_v6_data: Some(
                RawJson::new(r#"{"VNI":1,"VtepMAC":"8e:f1:d4:c8:e8:36"}"#).unwrap(),
            ),
        };
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"172.18.0.2","PublicIPv6":"fc00:f853:ccd:e793::2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"16:3a:35:bd:28:e2"},"BackendV6Data":{"VNI":1,"VtepMAC":"8e:f1:d4:c8:e8:36"}}"#
        );
        assert_eq!(
            attrs(&a.to_json()),
            LeaseAttrs {
                backend_data: Some(
                    RawJson::new(r#"{"VNI":1,"VtepMAC":"16:3a:35:bd:28:e2"}"#).unwrap()
                ),
                ..a
            }
        );
    }

    #[test]
    fn wireguard_and_hostgw_values() {
        let wg = r#"{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"aGVsbG8rL3dvcmxkPQ==","Port":51820}}"#;
        assert_eq!(attrs(wg).to_json(), wg);
        let hg = r#"{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendType":"host-gw"}"#;
        assert_eq!(attrs(hg).to_json(), hg);
        // udp writes no BackendType at all.
        let udp = r#"{"PublicIP":"10.0.0.2","PublicIPv6":null}"#;
        assert_eq!(attrs(udp).backend_type, "");
    }

    #[test]
    fn decoding_is_tolerant_like_go() {
        let a = attrs(
            r#"{"publicip":"1.2.3.4","backendtype":"vxlan","Extra":[1],"backenddata":{"VNI":7}}"#,
        );
        assert_eq!(a.public_ip, Ipv4Addr::new(1, 2, 3, 4));
        assert_eq!(a.backend_type, "vxlan");
        assert_eq!(a.backend_data.unwrap().get(), r#"{"VNI":7}"#);
        assert_eq!(attrs("{}").public_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(attrs("null"), LeaseAttrs::default());
        assert_eq!(
            attrs(r#"{"PublicIP":"::ffff:1.2.3.4"}"#).public_ip,
            Ipv4Addr::new(1, 2, 3, 4)
        );
        // A null backend data survives the round trip as Go's RawMessage does.
        let n = attrs(r#"{"PublicIP":"1.2.3.4","BackendData":null}"#);
        assert_eq!(
            n.to_json(),
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null,"BackendData":null}"#
        );
        // HTML characters are escaped on the way out, as json.Marshal does.
        let h = attrs(r#"{"PublicIP":"1.2.3.4","BackendType":"a<b","BackendData":{"x":"<&>"}}"#);
        assert_eq!(
            h.to_json(),
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null,"BackendType":"a\u003cb","BackendData":{"x":"\u003c\u0026\u003e"}}"#
        );
    }

    #[test]
    fn mapped_public_ipv6_round_trips() {
        // Found by fuzzing: printed in hex, read back as the same address.
        let a = attrs(r#"{"PublicIPv6":"::ffff:1.2.3.4"}"#);
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"::ffff:102:304"}"#
        );
        assert_eq!(attrs(&a.to_json()), a);
    }

    #[test]
    fn decoding_errors() {
        let err = |j: &str| LeaseAttrs::from_json(j).unwrap_err().to_string();
        assert_eq!(
            err(r#"{"PublicIP":null}"#),
            "PublicIP: invalid IP address format"
        );
        assert_eq!(
            err(r#"{"PublicIP":"fd00::1"}"#),
            "PublicIP: invalid IPv4 address format"
        );
        assert_eq!(
            err(r#"{"PublicIP":"1.2.3.4","PublicIPv6":"1.2.3.4"}"#),
            "PublicIPv6: invalid IPv6 address format"
        );
        assert_eq!(
            err(r#"{"BackendType":1}"#),
            "json: cannot unmarshal number into Go struct field LeaseAttrs.BackendType of type string"
        );
        assert_eq!(
            err("[]"),
            "json: cannot unmarshal array into Go value of type lease.LeaseAttrs"
        );
        assert_eq!(err(""), "unexpected end of JSON input");
        assert!(LeaseAttrs::from_json("{\"PublicIP\":\"1.2.3.4\"").is_err());
    }

    /// The general decoder, bypassing the fast path.
    fn slow(json: &str) -> Result<LeaseAttrs, LeaseError> {
        // Run the public decoder on a variant the fast path rejects
        // (a leading space), which must mean the same document.
        LeaseAttrs::from_json(&format!(" {json}"))
    }

    #[test]
    fn fast_path_covers_go_values() {
        for v in [
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null}"#,
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
            r#"{"PublicIP":"172.18.0.2","PublicIPv6":"fc00::2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"16:3a:35:bd:28:e2"},"BackendV6Data":{"VNI":1,"VtepMAC":"8e:f1:d4:c8:e8:36"}}"#,
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null,"BackendData":null}"#,
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"a+b/c=","Port":51820}}"#,
        ] {
            let fast = fast::decode(v).unwrap_or_else(|| panic!("fast path missed {v}"));
            assert_eq!(fast, slow(v).unwrap(), "{v}");
            assert_eq!(fast.to_json(), v);
        }
        for v in [
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null }"#,
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null,"BackendData":{"a": 1}}"#,
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null,"BackendType":"a\u003cb"}"#,
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null,"BackendData":{"a":1},"x":2}"#,
            r#"{"PublicIP":"fd00::1","PublicIPv6":null}"#,
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null,"BackendData":{"a":1]}"#,
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null,"BackendData":5}"#,
        ] {
            assert_eq!(fast::decode(v), None, "{v}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn data() -> impl Strategy<Value = Option<RawJson>> {
            prop_oneof![
                Just(None),
                Just(Some(RawJson::new("null").unwrap())),
                ("[a-z<>&\\\"{}\\[\\] ]{0,12}", any::<u32>()).prop_map(|(s, n)| {
                    let mut text = String::from("{\"K\":");
                    crate::gojson::write_string(&mut text, &s);
                    text.push_str(&format!(",\"N\":{n},\"L\":[1,{{\"x\":[]}}]}}"));
                    Some(RawJson::new(&text).unwrap())
                }),
            ]
        }

        proptest! {
            /// Whatever we write decodes (by either path) to the same value.
            #[test]
            fn fast_and_general_agree_on_our_output(
                ip in any::<u32>(), ip6 in proptest::option::of(any::<u128>()),
                bt in "[a-z<>&\"\\\\-]{0,8}", d4 in data(), d6 in data(),
            ) {
                let attrs = LeaseAttrs {
                    public_ip: Ipv4Addr::from(ip),
                    public_ipv6: ip6.map(Ipv6Addr::from).filter(|a| a.to_ipv4_mapped().is_none()),
                    backend_type: bt,
                    backend_data: d4,
                    backend_v6_data: d6,
                };
                let json = attrs.to_json();
                let general = slow(&json).unwrap();
                prop_assert_eq!(LeaseAttrs::from_json(&json).unwrap(), general.clone());
                if let Some(fast) = fast::decode(&json) {
                    prop_assert_eq!(fast, general);
                }
            }

            /// On arbitrary text, a fast-path answer is the general answer.
            #[test]
            fn fast_never_disagrees(tail in "[\",:{}\\[\\]a-zA-Z0-9.\\\\ ]{0,40}") {
                let json = format!("{{\"PublicIP\":\"1.2.3.4\",\"PublicIPv6\":null{tail}");
                if let Some(fast) = fast::decode(&json) {
                    prop_assert_eq!(Ok(fast), slow(&json));
                }
            }
        }
    }

    #[test]
    fn lease_flags_and_key() {
        let key: SubnetKey = "10.12.13.0-24&fd00:12:13::-56".parse().unwrap();
        let l = Lease::new(key, LeaseAttrs::default());
        assert!(l.has_ipv4() && l.has_ipv6() && l.is_reservation());
        assert_eq!(l.key(), key);
        let mut m = l.clone();
        m.asof = 9;
        m.expiration = Some(SystemTime::UNIX_EPOCH);
        assert!(l.same_datapath(&m));
        m.attrs.backend_type = "x".into();
        assert!(!l.same_datapath(&m));
    }
}
