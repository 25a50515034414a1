//! The network configuration: `net-conf.json`, or the value of `<prefix>/config`
//! in etcd.
//!
//! [`NetConfig::parse`] reads the JSON with Go `encoding/json` semantics
//! (case-insensitive keys, unknown keys ignored, CIDRs masked, Go's `null`
//! rules) and keeps the raw `Backend` object for the backend to decode.
//! [`NetConfig::check`] applies flannel's validation and fills the defaults
//! (`SubnetLen`, `SubnetMin`, `SubnetMax` and their IPv6 twins) with Go's error
//! texts. Where the `Backend` key is absent the backend type is `vxlan`, as the
//! flannel documentation says (Go's code falls back to `udp`).
//!
//! ```
//! use flannel_core::config::NetConfig;
//! let mut cfg = NetConfig::parse(r#"{"network": "10.5.3.0/16"}"#).unwrap();
//! cfg.check().unwrap();
//! assert_eq!(cfg.network.unwrap().to_string(), "10.5.0.0/16");
//! assert_eq!(cfg.subnet_len, 24);
//! assert_eq!(cfg.subnet_min.unwrap().to_string(), "10.5.1.0");
//! assert_eq!(cfg.subnet_max.unwrap().to_string(), "10.5.255.0");
//! assert_eq!(cfg.backend_type, "vxlan");
//! ```

use crate::gojson::{self, JsonError, NotObject, Object, RawJson};
use crate::ip::{Cidr, Family, GoIp, Ip4Net, Ip6Net, IpError};
use serde_json::value::RawValue;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Backend type used when the config has no `Backend` key (the documented
/// default).
pub const DEFAULT_BACKEND_TYPE: &str = "vxlan";

/// Every backend type flannel defines, spelled as in `Backend.Type`. A type in
/// this list that a build lacks is "not built in"; any other is "unknown".
pub const BACKEND_TYPES: &[&str] = &[
    "vxlan",
    "host-gw",
    "wireguard",
    "udp",
    "ipsec",
    "ipip",
    "alloc",
    "tencent-vpc",
    "extension",
];

/// Errors from parsing or validating a network configuration. The texts are
/// Go flannel's, word for word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Malformed JSON or a JSON type mismatch.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// A CIDR or IP field that does not parse.
    #[error(transparent)]
    Ip(#[from] IpError),
    /// The `Backend` object could not be decoded.
    #[error("error decoding Backend property of config: {0}")]
    Backend(JsonError),
    /// IPv4 enabled but `Network` missing or `0.0.0.0/0`.
    #[error("please define a correct Network parameter in the flannel config")]
    MissingNetwork,
    /// IPv6 enabled but `IPv6Network` missing or `::/0`.
    #[error("please define a correct IPv6Network parameter in the flannel config")]
    MissingIpv6Network,
    /// `SubnetLen` above 30.
    #[error("SubnetLen must be less than /31")]
    SubnetLenTooLong,
    /// `IPv6SubnetLen` above 126.
    #[error("SubnetLen must be less than /127")]
    Ipv6SubnetLenTooLong,
    /// `SubnetLen` (either family) leaves fewer than four subnets.
    #[error("network must be able to accommodate at least four subnets")]
    TooFewSubnets,
    /// `Network` prefix longer than /28 with no `SubnetLen`.
    #[error("network is too small. Minimum useful network prefix is /28")]
    NetworkTooSmall,
    /// `IPv6Network` prefix longer than /124 with no `IPv6SubnetLen`.
    #[error("IPv6Network is too small. Minimum useful network prefix is /124")]
    Ipv6NetworkTooSmall,
    /// `SubnetMin` outside `Network`.
    #[error("SubnetMin is not in the range of the Network")]
    SubnetMinOutOfRange,
    /// `SubnetMax` outside `Network`.
    #[error("SubnetMax is not in the range of the Network")]
    SubnetMaxOutOfRange,
    /// `SubnetMin` not aligned to `SubnetLen`.
    #[error("SubnetMin is not on a SubnetLen boundary: {0}")]
    SubnetMinUnaligned(Ipv4Addr),
    /// `SubnetMax` not aligned to `SubnetLen`.
    #[error("SubnetMax is not on a SubnetLen boundary: {0}")]
    SubnetMaxUnaligned(Ipv4Addr),
    /// `IPv6SubnetMin` outside `IPv6Network`.
    #[error("IPv6SubnetMin is not in the range of the IPv6Network")]
    Ipv6SubnetMinOutOfRange,
    /// `IPv6SubnetMax` outside `IPv6Network`.
    #[error("IPv6SubnetMax is not in the range of the IPv6Network")]
    Ipv6SubnetMaxOutOfRange,
    /// `IPv6SubnetMin` not aligned to `IPv6SubnetLen`.
    #[error("IPv6SubnetMin is not on a SubnetLen boundary: {}", GoIp(*.0))]
    Ipv6SubnetMinUnaligned(Ipv6Addr),
    /// `IPv6SubnetMax` not aligned to `IPv6SubnetLen`.
    #[error("IPv6SubnetMax is not on a SubnetLen boundary: {}", GoIp(*.0))]
    Ipv6SubnetMaxUnaligned(Ipv6Addr),
    /// `SubnetMin` above `SubnetMax` (after the defaults): no subnet can be
    /// handed out. Ours; Go accepts it and fails at allocation with "out of
    /// subnets".
    #[error("SubnetMin is above SubnetMax: {0} > {1}, no subnet can be allocated")]
    SubnetMinAboveMax(Ipv4Addr, Ipv4Addr),
    /// `IPv6SubnetMin` above `IPv6SubnetMax` (ours, like
    /// [`ConfigError::SubnetMinAboveMax`]).
    #[error(
        "IPv6SubnetMin is above IPv6SubnetMax: {} > {}, no subnet can be allocated",
        GoIp(*.0),
        GoIp(*.1)
    )]
    Ipv6SubnetMinAboveMax(Ipv6Addr, Ipv6Addr),
    /// Both `EnableIPv4` and `EnableIPv6` are false.
    #[error("none defined stack")]
    NoStack,
}

/// Which address families the network carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// IPv4 only.
    Ipv4,
    /// IPv6 only.
    Ipv6,
    /// Both.
    Dual,
}

/// A parsed network configuration.
///
/// Optional fields are `None` when unset; after [`NetConfig::check`] every
/// field of an enabled family is `Some`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// `EnableIPv4` (default true).
    pub enable_ipv4: bool,
    /// `EnableIPv6` (default false).
    pub enable_ipv6: bool,
    /// `EnableNFTables`: traffic rules through nftables instead of iptables.
    pub enable_nftables: bool,
    /// `Network`: the whole IPv4 overlay network.
    pub network: Option<Ip4Net>,
    /// `IPv6Network`.
    pub ipv6_network: Option<Ip6Net>,
    /// `SubnetMin`: first IPv4 subnet handed out.
    pub subnet_min: Option<Ipv4Addr>,
    /// `SubnetMax`: last IPv4 subnet handed out.
    pub subnet_max: Option<Ipv4Addr>,
    /// `IPv6SubnetMin`.
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    /// `IPv6SubnetMax`.
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    /// `SubnetLen` (0 = unset).
    pub subnet_len: u32,
    /// `IPv6SubnetLen` (0 = unset).
    pub ipv6_subnet_len: u32,
    /// `Backend.Type` as written (compare lower-cased, see
    /// [`NetConfig::backend_type_lower`]); `vxlan` when `Backend` is absent.
    pub backend_type: String,
    /// The raw `Backend` object, for the backend to decode its options.
    pub backend: Option<RawJson>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            enable_ipv4: true,
            enable_ipv6: false,
            enable_nftables: false,
            network: None,
            ipv6_network: None,
            subnet_min: None,
            subnet_max: None,
            ipv6_subnet_min: None,
            ipv6_subnet_max: None,
            subnet_len: 0,
            ipv6_subnet_len: 0,
            backend_type: DEFAULT_BACKEND_TYPE.to_string(),
            backend: None,
        }
    }
}

/// A field decoded by a custom Go `UnmarshalJSON` that trims quotes and parses
/// the rest (so `null` and numbers reach the parser and fail there).
fn custom<T>(
    obj: &Object,
    field: &str,
    parse: impl Fn(&str) -> Result<T, IpError>,
) -> Result<Option<T>, IpError> {
    obj.trimmed_token(field).map(|t| parse(&t)).transpose()
}

fn cidr_field<F: Family>(obj: &Object, field: &str) -> Result<Option<Cidr<F>>, IpError>
where
    Cidr<F>: FromStr<Err = IpError>,
{
    custom(obj, field, |t| {
        t.parse::<Cidr<F>>().map_err(|e| match e {
            // Go reports the raw token for unparsable text.
            IpError::InvalidCidr(_) => IpError::InvalidCidr(t.to_string()),
            other => other,
        })
    })
}

impl NetConfig {
    /// Parses `net-conf.json` text. Performs no validation beyond JSON types
    /// and address syntax; see [`NetConfig::check`].
    pub fn parse(json: &str) -> Result<NetConfig, ConfigError> {
        let mut cfg = NetConfig::default();
        let obj = match Object::parse(json, "Config")? {
            Ok(obj) => obj,
            // `null` leaves the defaults, as json.Unmarshal does.
            Err(NotObject::Null) => return Ok(cfg),
            Err(NotObject::Other(kind)) => {
                return Err(JsonError(format!(
                    "json: cannot unmarshal {kind} into Go value of type subnet.Config"
                ))
                .into());
            }
        };
        if let Some(v) = obj.bool("EnableIPv4")? {
            cfg.enable_ipv4 = v;
        }
        if let Some(v) = obj.bool("EnableIPv6")? {
            cfg.enable_ipv6 = v;
        }
        if let Some(v) = obj.bool("EnableNFTables")? {
            cfg.enable_nftables = v;
        }
        cfg.network = cidr_field(&obj, "Network")?;
        cfg.ipv6_network = cidr_field(&obj, "IPv6Network")?;
        cfg.subnet_min = custom(&obj, "SubnetMin", Ipv4Addr::parse_go)?;
        cfg.subnet_max = custom(&obj, "SubnetMax", Ipv4Addr::parse_go)?;
        // The IPv6 bounds are pointers in Go: `null` means unset.
        let v6_bound = |field| match obj.get(field) {
            Some(raw) if gojson::is_null(raw) => Ok(None),
            _ => custom(&obj, field, Ipv6Addr::parse_go),
        };
        cfg.ipv6_subnet_min = v6_bound("IPv6SubnetMin")?;
        cfg.ipv6_subnet_max = v6_bound("IPv6SubnetMax")?;
        let len = |field| {
            obj.uint(field, "uint", u64::MAX)
                .map(|v| v.map_or(0, |n| n.min(u64::from(u32::MAX)) as u32))
        };
        cfg.subnet_len = len("SubnetLen")?;
        cfg.ipv6_subnet_len = len("IPv6SubnetLen")?;
        if let Some(raw) = obj.get("Backend") {
            cfg.backend_type = parse_backend_type(raw)?;
            cfg.backend = Some(RawJson::from(raw));
        }
        Ok(cfg)
    }

    /// The backend type lower-cased, as flannel compares it.
    pub fn backend_type_lower(&self) -> String {
        self.backend_type.to_lowercase()
    }

    /// The address families in use, or `none defined stack`.
    pub fn stack(&self) -> Result<Stack, ConfigError> {
        match (self.enable_ipv4, self.enable_ipv6) {
            (true, false) => Ok(Stack::Ipv4),
            (false, true) => Ok(Stack::Ipv6),
            (true, true) => Ok(Stack::Dual),
            (false, false) => Err(ConfigError::NoStack),
        }
    }

    /// Validates the configuration and fills in the defaults, exactly as Go's
    /// `CheckNetworkConfig`: for each enabled family the network must be set,
    /// the subnet length defaults to /24 (/64) for large networks or two bits
    /// longer than the network otherwise, the minimum is the second subnet and
    /// the maximum the last one; explicit bounds must lie inside the network
    /// and on a subnet boundary. Both families disabled passes here (see
    /// [`NetConfig::stack`]).
    pub fn check(&mut self) -> Result<(), ConfigError> {
        if self.enable_ipv4 {
            let net = self
                .network
                .filter(|n| !n.is_empty())
                .ok_or(ConfigError::MissingNetwork)?;
            let limits = Limits {
                max_len: 30,
                min_prefix_default: 28,
                large_prefix: 22,
                large_default: 24,
                too_long: ConfigError::SubnetLenTooLong,
                too_small: ConfigError::NetworkTooSmall,
            };
            let (len, min, max) = check_family(
                &net,
                self.subnet_len,
                self.subnet_min,
                self.subnet_max,
                limits,
            )
            .map_err(|e| e.into_v4())?;
            self.subnet_len = len;
            self.subnet_min = Some(min);
            self.subnet_max = Some(max);
        }
        if self.enable_ipv6 {
            let net = self
                .ipv6_network
                .filter(|n| !n.is_empty())
                .ok_or(ConfigError::MissingIpv6Network)?;
            // Go treats `::` as unset for the IPv6 bounds.
            let unset = |a: Option<Ipv6Addr>| a.filter(|a| !a.is_unspecified());
            let limits = Limits {
                max_len: 126,
                min_prefix_default: 124,
                large_prefix: 62,
                large_default: 64,
                too_long: ConfigError::Ipv6SubnetLenTooLong,
                too_small: ConfigError::Ipv6NetworkTooSmall,
            };
            let (len, min, max) = check_family(
                &net,
                self.ipv6_subnet_len,
                unset(self.ipv6_subnet_min),
                unset(self.ipv6_subnet_max),
                limits,
            )
            .map_err(|e| e.into_v6())?;
            self.ipv6_subnet_len = len;
            self.ipv6_subnet_min = Some(min);
            self.ipv6_subnet_max = Some(max);
        }
        Ok(())
    }

    /// The configuration as Go's `json.Marshal` would write it (field order
    /// of Go's `Config`; unset addresses as Go's zero values).
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        let push_str = |out: &mut String, key: &str, val: Option<String>| {
            out.push_str(&format!("\"{key}\":"));
            match val {
                Some(v) => gojson::write_string(out, &v),
                None => out.push_str("null"),
            }
            out.push(',');
        };
        out.push_str(&format!(
            "\"EnableIPv4\":{},\"EnableIPv6\":{},\"EnableNFTables\":{},",
            self.enable_ipv4, self.enable_ipv6, self.enable_nftables
        ));
        push_str(
            &mut out,
            "Network",
            Some(self.network.unwrap_or_else(Ip4Net::any).to_string()),
        );
        push_str(
            &mut out,
            "IPv6Network",
            Some(self.ipv6_network.unwrap_or_else(Ip6Net::any).to_string()),
        );
        push_str(
            &mut out,
            "SubnetMin",
            Some(self.subnet_min.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string()),
        );
        push_str(
            &mut out,
            "SubnetMax",
            Some(self.subnet_max.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string()),
        );
        push_str(
            &mut out,
            "IPv6SubnetMin",
            self.ipv6_subnet_min.map(|a| GoIp(a).to_string()),
        );
        push_str(
            &mut out,
            "IPv6SubnetMax",
            self.ipv6_subnet_max.map(|a| GoIp(a).to_string()),
        );
        out.push_str(&format!(
            "\"SubnetLen\":{},\"IPv6SubnetLen\":{}",
            self.subnet_len, self.ipv6_subnet_len
        ));
        if let Some(b) = &self.backend {
            out.push_str(",\"Backend\":");
            gojson::compact(&mut out, b.get());
        }
        out.push('}');
        out
    }
}

/// Go's `parseBackendType`: decode `{"Type": ...}` out of the raw `Backend`.
fn parse_backend_type(raw: &RawValue) -> Result<String, ConfigError> {
    match Object::from_raw(raw, "").map_err(ConfigError::Backend)? {
        Err(NotObject::Null) => Ok(String::new()),
        Err(NotObject::Other(kind)) => Err(ConfigError::Backend(JsonError(format!(
            "json: cannot unmarshal {kind} into Go value of type struct {{ Type string }}"
        )))),
        Ok(obj) => Ok(obj
            .string("Type")
            .map_err(ConfigError::Backend)?
            .unwrap_or_default()),
    }
}

/// The per-family numbers of the validation rules.
struct Limits {
    max_len: u32,
    min_prefix_default: u8,
    large_prefix: u8,
    large_default: u8,
    too_long: ConfigError,
    too_small: ConfigError,
}

/// A family-neutral validation failure, mapped to the family's error text.
enum FamilyError {
    Fixed(ConfigError),
    MinOutOfRange,
    MaxOutOfRange,
    MinUnaligned(u128),
    MaxUnaligned(u128),
    MinAboveMax(u128, u128),
}

impl FamilyError {
    fn into_v4(self) -> ConfigError {
        match self {
            FamilyError::Fixed(e) => e,
            FamilyError::MinOutOfRange => ConfigError::SubnetMinOutOfRange,
            FamilyError::MaxOutOfRange => ConfigError::SubnetMaxOutOfRange,
            FamilyError::MinUnaligned(a) => ConfigError::SubnetMinUnaligned(Ipv4Addr::from_u128(a)),
            FamilyError::MaxUnaligned(a) => ConfigError::SubnetMaxUnaligned(Ipv4Addr::from_u128(a)),
            FamilyError::MinAboveMax(a, b) => {
                ConfigError::SubnetMinAboveMax(Ipv4Addr::from_u128(a), Ipv4Addr::from_u128(b))
            }
        }
    }
    fn into_v6(self) -> ConfigError {
        match self {
            FamilyError::Fixed(e) => e,
            FamilyError::MinOutOfRange => ConfigError::Ipv6SubnetMinOutOfRange,
            FamilyError::MaxOutOfRange => ConfigError::Ipv6SubnetMaxOutOfRange,
            FamilyError::MinUnaligned(a) => {
                ConfigError::Ipv6SubnetMinUnaligned(Ipv6Addr::from_u128(a))
            }
            FamilyError::MaxUnaligned(a) => {
                ConfigError::Ipv6SubnetMaxUnaligned(Ipv6Addr::from_u128(a))
            }
            FamilyError::MinAboveMax(a, b) => {
                ConfigError::Ipv6SubnetMinAboveMax(Ipv6Addr::from_u128(a), Ipv6Addr::from_u128(b))
            }
        }
    }
}

/// The validation of one family; returns (subnet length, min, max).
fn check_family<F: Family>(
    net: &Cidr<F>,
    subnet_len: u32,
    min: Option<F>,
    max: Option<F>,
    limits: Limits,
) -> Result<(u32, F, F), FamilyError> {
    let prefix = net.prefix_len();
    let len: u8 = if subnet_len > 0 {
        if subnet_len > limits.max_len {
            return Err(FamilyError::Fixed(limits.too_long));
        }
        if subnet_len < u32::from(prefix) + 2 {
            return Err(FamilyError::Fixed(ConfigError::TooFewSubnets));
        }
        subnet_len as u8
    } else if prefix > limits.min_prefix_default {
        return Err(FamilyError::Fixed(limits.too_small));
    } else if prefix <= limits.large_prefix {
        limits.large_default
    } else {
        prefix + 2
    };
    // Both subnets exist: the length leaves at least four subnets.
    let second = net
        .first_subnet(len)
        .and_then(|s| s.next())
        .map(|s| s.addr());
    let last = net.last_subnet(len).map(|s| s.addr());
    let (Some(second), Some(last)) = (second, last) else {
        return Err(FamilyError::Fixed(ConfigError::TooFewSubnets));
    };
    let min = match min.filter(|m| m.to_u128() != 0) {
        None => second,
        Some(m) if net.contains(m) => m,
        Some(_) => return Err(FamilyError::MinOutOfRange),
    };
    let max = match max.filter(|m| m.to_u128() != 0) {
        None => last,
        Some(m) if net.contains(m) => m,
        Some(_) => return Err(FamilyError::MaxOutOfRange),
    };
    let sub_mask = Cidr::<F>::new(min, len).map(|c| c.mask()).unwrap_or(0);
    if min.to_u128() & sub_mask != min.to_u128() {
        return Err(FamilyError::MinUnaligned(min.to_u128()));
    }
    if max.to_u128() & sub_mask != max.to_u128() {
        return Err(FamilyError::MaxUnaligned(max.to_u128()));
    }
    // Go stops here and later deletes nothing but fails every allocation
    // with "out of subnets"; an empty range is a configuration error.
    if min.to_u128() > max.to_u128() {
        return Err(FamilyError::MinAboveMax(min.to_u128(), max.to_u128()));
    }
    Ok((u32::from(len), min, max))
}

#[cfg(test)]
mod tests;
