//! The plugin's inputs: the network configuration on stdin ([`NetConf`]) and
//! flanneld's `subnet.env` ([`FlannelEnv`]).
//!
//! Both are decoded with the upstream plugin's rules: JSON keys of the config
//! match case-insensitively, a repeated map-valued key (`delegate`, `ipam`,
//! `runtimeConfig`) merges into the earlier one, `null` leaves a string at its
//! default and clears a map, and a value of the wrong JSON type fails with
//! Go's `json: cannot unmarshal ...` text. `subnet.env` is read with
//! [`flannel_core::subnet_env::EnvFile`] (so quotes, `export` and comments are
//! tolerated) and its values are then checked as strictly as upstream.

use crate::error::{ConfigError, DecodeError, PathError, SubnetEnvError};
use crate::json::{self, GoMap, GoValue, Value, type_error};
use flannel_core::gojson::key_matches;
use flannel_core::ip::{IpError, parse_cidr_go};
use flannel_core::subnet_env::{
    EnvFile, KEY_IPMASQ, KEY_IPV6_NETWORK, KEY_IPV6_SUBNET, KEY_MTU, KEY_NETWORK, KEY_SUBNET,
};
use std::fmt;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Where flanneld writes `subnet.env` unless `subnetFile` says otherwise.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Where delegate configs are saved unless `dataDir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// Which Go struct a config document is decoded into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// flannel's own `NetConf`: `ipam` is a free-form map, plus `subnetFile`,
    /// `dataDir`, `delegate` and `runtimeConfig`.
    Flannel,
    /// libcni's `types.NetConf`, used to read a saved delegate config back on
    /// DEL: `ipam` is a struct whose `type` must be a string.
    Standard,
}

/// A decoded network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion` ("" when absent).
    pub cni_version: String,
    /// `name`.
    pub name: String,
    /// `type` (`flannel` for our own config; the delegate's type on DEL).
    pub plugin_type: String,
    /// `subnetFile`, default [`DEFAULT_SUBNET_FILE`].
    pub subnet_file: String,
    /// `dataDir`, default [`DEFAULT_DATA_DIR`].
    pub data_dir: String,
    /// `delegate`, `None` when absent or `null`.
    pub delegate: Option<GoMap>,
    /// `ipam`, `None` when absent or `null` (always `None` for [`Flavour::Standard`]).
    pub ipam: Option<GoMap>,
    /// `runtimeConfig`, `None` when absent or `null`.
    pub runtime_config: Option<GoMap>,
}

impl Default for NetConf {
    fn default() -> Self {
        NetConf {
            cni_version: String::new(),
            name: String::new(),
            plugin_type: String::new(),
            subnet_file: DEFAULT_SUBNET_FILE.to_string(),
            data_dir: DEFAULT_DATA_DIR.to_string(),
            delegate: None,
            ipam: None,
            runtime_config: None,
        }
    }
}

/// Collects the first type error, as Go's decoder does (it keeps going and
/// reports the first one at the end).
#[derive(Default)]
struct Errors(Option<String>);

impl Errors {
    fn save(&mut self, e: String) {
        self.0.get_or_insert(e);
    }
}

/// The last member matching a Go field name, as a struct with only that
/// field would see it: `Ok(None)` when absent or `null`.
fn string_member(
    members: &[(String, Value)],
    field: &str,
    strukt: &str,
    errs: &mut Errors,
) -> Option<String> {
    let mut out = None;
    for (k, v) in members {
        if key_matches(k, field) {
            decode_string(v, &mut out, strukt, field, errs);
        }
    }
    out
}

fn decode_string(
    v: &Value,
    slot: &mut Option<String>,
    strukt: &str,
    field: &str,
    errs: &mut Errors,
) {
    match v {
        Value::String(s) => *slot = Some(s.clone()),
        Value::Null => {}
        other => errs.save(type_error(other.kind(), strukt, field, "string")),
    }
}

/// Decodes into a Go `map[string]interface{}` field: objects merge into the
/// existing map, `null` clears it.
fn decode_map(v: &Value, slot: &mut Option<GoMap>, strukt: &str, field: &str, errs: &mut Errors) {
    match v {
        Value::Object(members) => {
            let map = slot.get_or_insert_with(GoMap::new);
            let mut bad = None;
            for (k, v) in members {
                map.insert(k.clone(), GoValue::from_json(v, &mut bad));
            }
            if let Some(n) = bad {
                errs.save(type_error(&format!("number {n}"), strukt, field, "float64"));
            }
        }
        Value::Null => *slot = None,
        other => errs.save(type_error(
            other.kind(),
            strukt,
            field,
            "map[string]interface {}",
        )),
    }
}

/// Type-checks a Go `[]string` field.
fn check_string_list(v: &Value, strukt: &str, field: &str, errs: &mut Errors) {
    match v {
        Value::Array(items) => {
            for item in items {
                if !matches!(item, Value::String(_) | Value::Null) {
                    errs.save(type_error(item.kind(), strukt, field, "string"));
                }
            }
        }
        Value::Null => {}
        other => errs.save(type_error(other.kind(), strukt, field, "[]string")),
    }
}

/// Type-checks a struct-valued field whose own fields are all strings or
/// string lists (`types.DNS`, `types.IPAM`, `types.GCAttachment`).
fn check_struct(
    v: &Value,
    go_type: &str,
    inner: &str,
    path: &str,
    fields: &[(&str, bool)],
    outer: &str,
    errs: &mut Errors,
) {
    match v {
        Value::Object(members) => {
            for (k, v) in members {
                if let Some((name, is_list)) = fields.iter().find(|(f, _)| key_matches(k, f)) {
                    let field = format!("{path}.{name}");
                    if *is_list {
                        check_string_list(v, inner, &field, errs);
                    } else {
                        decode_string(v, &mut None, inner, &field, errs);
                    }
                }
            }
        }
        Value::Null => {}
        other => errs.save(type_error(other.kind(), outer, path, go_type)),
    }
}

impl NetConf {
    /// Decodes a configuration document. Errors are Go's texts without any
    /// prefix (a syntax error, or the first `json: cannot unmarshal ...`).
    pub fn decode(input: &[u8], flavour: Flavour) -> Result<NetConf, DecodeError> {
        let doc = json::parse(input)?;
        let mut conf = NetConf::default();
        let members = match doc {
            Value::Object(m) => m,
            Value::Null => return Ok(conf),
            other => {
                let ty = match flavour {
                    Flavour::Flannel => "main.NetConf",
                    Flavour::Standard => "types.NetConf",
                };
                return Err(DecodeError::Type(type_error(other.kind(), "", "", ty)));
            }
        };
        const S: &str = "NetConf";
        let mut errs = Errors::default();
        let mut cni_version = None;
        let mut name = None;
        let mut plugin_type = None;
        let mut subnet_file = None;
        let mut data_dir = None;
        for (key, v) in &members {
            let is = |field: &str| key_matches(key, field);
            if is("cniVersion") {
                decode_string(v, &mut cni_version, S, "cniVersion", &mut errs);
            } else if is("name") {
                decode_string(v, &mut name, S, "name", &mut errs);
            } else if is("type") {
                decode_string(v, &mut plugin_type, S, "type", &mut errs);
            } else if is("capabilities") {
                match v {
                    Value::Object(caps) => {
                        for (_, c) in caps {
                            if !matches!(c, Value::Bool(_) | Value::Null) {
                                errs.save(type_error(c.kind(), S, "capabilities", "bool"));
                            }
                        }
                    }
                    Value::Null => {}
                    other => errs.save(type_error(
                        other.kind(),
                        S,
                        "capabilities",
                        "map[string]bool",
                    )),
                }
            } else if is("ipam") {
                match flavour {
                    Flavour::Flannel => decode_map(v, &mut conf.ipam, S, "ipam", &mut errs),
                    Flavour::Standard => check_struct(
                        v,
                        "types.IPAM",
                        "IPAM",
                        "ipam",
                        &[("type", false)],
                        S,
                        &mut errs,
                    ),
                }
            } else if is("dns") {
                check_struct(
                    v,
                    "types.DNS",
                    "DNS",
                    "dns",
                    &[
                        ("nameservers", true),
                        ("domain", false),
                        ("search", true),
                        ("options", true),
                    ],
                    S,
                    &mut errs,
                );
            } else if is("prevResult") {
                let mut scratch = None;
                decode_map(v, &mut scratch, S, "prevResult", &mut errs);
            } else if is("cni.dev/valid-attachments") {
                const F: &str = "cni.dev/valid-attachments";
                match v {
                    Value::Array(items) => {
                        for item in items {
                            check_struct(
                                item,
                                "types.GCAttachment",
                                "GCAttachment",
                                F,
                                &[("containerID", false), ("ifname", false)],
                                S,
                                &mut errs,
                            );
                        }
                    }
                    Value::Null => {}
                    other => errs.save(type_error(other.kind(), S, F, "[]types.GCAttachment")),
                }
            } else if flavour == Flavour::Flannel {
                if is("subnetFile") {
                    decode_string(v, &mut subnet_file, S, "subnetFile", &mut errs);
                } else if is("dataDir") {
                    decode_string(v, &mut data_dir, S, "dataDir", &mut errs);
                } else if is("delegate") {
                    decode_map(v, &mut conf.delegate, S, "delegate", &mut errs);
                } else if is("runtimeConfig") {
                    decode_map(v, &mut conf.runtime_config, S, "runtimeConfig", &mut errs);
                }
            }
        }
        if let Some(e) = errs.0 {
            return Err(DecodeError::Type(e));
        }
        conf.cni_version = cni_version.unwrap_or_default();
        conf.name = name.unwrap_or_default();
        conf.plugin_type = plugin_type.unwrap_or_default();
        if let Some(s) = subnet_file {
            conf.subnet_file = s;
        }
        if let Some(s) = data_dir {
            conf.data_dir = s;
        }
        Ok(conf)
    }

    /// `loadFlannelNetConf`: decodes flannel's configuration from stdin;
    /// errors read `failed to load netconf: <json error>`.
    pub fn load(stdin: &[u8]) -> Result<NetConf, ConfigError> {
        NetConf::decode(stdin, Flavour::Flannel).map_err(ConfigError::NetConf)
    }
}

/// Decodes one string field of a document the way skel's single-field
/// anonymous structs do (`struct { Name string "json:\"name\"" }`).
/// Returns `""` when absent; errors are Go's texts.
pub fn decode_single_string(
    input: &[u8],
    field: &str,
    go_field: &str,
) -> Result<String, DecodeError> {
    let doc = json::parse(input)?;
    match doc {
        Value::Object(members) => {
            let mut errs = Errors::default();
            let v = string_member(&members, field, "", &mut errs);
            match errs.0 {
                Some(e) => Err(DecodeError::Type(e)),
                None => Ok(v.unwrap_or_default()),
            }
        }
        Value::Null => Ok(String::new()),
        other => Err(DecodeError::Type(type_error(
            other.kind(),
            "",
            "",
            &format!("struct {{ {go_field} string \"json:\\\"{field}\\\"\" }}"),
        ))),
    }
}

/// An IP network printed as Go's `net.IPNet.String()` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoIpNet {
    /// The address (masked or not, depending on how it was parsed).
    pub ip: IpAddr,
    /// The prefix length, in the address's own family.
    pub prefix: u8,
}

impl GoIpNet {
    /// Go's `net.ParseCIDR` network: the address masked to the prefix.
    /// Errors read `invalid CIDR address: <s>`.
    pub fn parse_masked(s: &str) -> Result<GoIpNet, IpError> {
        let (ip, prefix) = parse_cidr_go(s)?;
        let ip = match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Ok(GoIpNet { ip, prefix })
    }

    /// libcni's `types.ParseCIDR`: the address kept as written (routes' `dst`).
    pub fn parse_unmasked(s: &str) -> Result<GoIpNet, IpError> {
        let (ip, prefix) = parse_cidr_go(s)?;
        Ok(GoIpNet { ip, prefix })
    }
}

impl fmt::Display for GoIpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(a) => write!(f, "{a}/{}", self.prefix),
            // Go prints an IPv4-mapped address dotted, with the mask's last
            // 32 bits as the prefix.
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => write!(f, "{v4}/{}", self.prefix.saturating_sub(96)),
                None => write!(f, "{a}/{}", self.prefix),
            },
        }
    }
}

/// An address as Go's `net.IP.String()` prints it: IPv4-mapped IPv6
/// addresses dotted, other IPv6 addresses in RFC 5952 form.
pub fn go_ip_string(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => a.to_string(),
        },
    }
}

/// The values of `subnet.env` the plugin uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlannelEnv {
    /// `FLANNEL_NETWORK` entries, masked, exact duplicates dropped.
    pub networks: Vec<GoIpNet>,
    /// `FLANNEL_SUBNET`, masked.
    pub subnet: Option<GoIpNet>,
    /// `FLANNEL_IPV6_NETWORK` entries, masked, exact duplicates dropped.
    pub ipv6_networks: Vec<GoIpNet>,
    /// `FLANNEL_IPV6_SUBNET`, masked.
    pub ipv6_subnet: Option<GoIpNet>,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ` (true only for the exact text `true`).
    pub ip_masq: bool,
}

fn parse_network_list(value: &str) -> Result<Vec<GoIpNet>, IpError> {
    let mut out: Vec<GoIpNet> = Vec::new();
    for part in value.split(',') {
        let n = GoIpNet::parse_masked(part.trim())?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// Go's `strconv.ParseUint(s, 10, 32)`, with its error texts.
fn parse_mtu(s: &str) -> Result<u32, SubnetEnvError> {
    let bad = |reason| SubnetEnvError::Mtu {
        value: s.to_owned(),
        reason,
    };
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("invalid syntax"));
    }
    s.parse::<u32>().map_err(|_| bad("value out of range"))
}

impl FlannelEnv {
    /// Interprets `subnet.env` text. `path` is only used in the "missing"
    /// error (`<path> is missing FLANNEL_MTU`). Lines [`EnvFile`] skips are
    /// returned as warnings.
    pub fn parse(path: &str, text: &str) -> Result<(FlannelEnv, Vec<String>), SubnetEnvError> {
        let file = EnvFile::parse(text);
        let mut networks = None;
        let mut subnet = None;
        let mut ipv6_networks = None;
        let mut ipv6_subnet = None;
        let mut mtu = None;
        let mut ip_masq = None;
        for (key, value) in file.entries() {
            match key {
                KEY_NETWORK => networks = Some(parse_network_list(value)?),
                KEY_SUBNET => subnet = Some(GoIpNet::parse_masked(value)?),
                KEY_IPV6_NETWORK => ipv6_networks = Some(parse_network_list(value)?),
                KEY_IPV6_SUBNET => ipv6_subnet = Some(GoIpNet::parse_masked(value)?),
                KEY_MTU => mtu = Some(parse_mtu(value)?),
                KEY_IPMASQ => ip_masq = Some(value == "true"),
                _ => {}
            }
        }
        let mut missing: Vec<&str> = Vec::new();
        if networks.is_none() && ipv6_networks.is_none() {
            missing.extend([KEY_NETWORK, KEY_IPV6_NETWORK]);
        }
        if subnet.is_none() && ipv6_subnet.is_none() {
            missing.extend([KEY_SUBNET, KEY_IPV6_SUBNET]);
        }
        if mtu.is_none() {
            missing.push(KEY_MTU);
        }
        if ip_masq.is_none() {
            missing.push(KEY_IPMASQ);
        }
        if !missing.is_empty() {
            return Err(SubnetEnvError::Missing {
                path: path.to_owned(),
                keys: missing,
            });
        }
        Ok((
            FlannelEnv {
                networks: networks.unwrap_or_default(),
                subnet,
                ipv6_networks: ipv6_networks.unwrap_or_default(),
                ipv6_subnet,
                mtu: mtu.unwrap_or_default(),
                ip_masq: ip_masq.unwrap_or_default(),
            },
            file.warnings,
        ))
    }

    /// `loadFlannelSubnetEnv`: reads and interprets the file at `path`.
    /// I/O errors read like Go's (`open <path>: no such file or directory`).
    pub fn load(path: &str) -> Result<(FlannelEnv, Vec<String>), SubnetEnvError> {
        let mut f = std::fs::File::open(path).map_err(|e| PathError::new("open", path, e))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .map_err(|e| PathError::new("read", path, e))?;
        FlannelEnv::parse(path, &String::from_utf8_lossy(&buf))
    }
}

/// The text of Go's `*os.PathError`: `<op> <path>: <errno text>`, where the
/// errno text is the C library's message with a lower-case first letter
/// (`no such file or directory`), as Go's `syscall.Errno` strings read.
pub fn go_path_error(op: &str, path: &str, e: &std::io::Error) -> String {
    format!("{op} {path}: {}", go_errno_text(e))
}

/// An I/O error's message without Rust's ` (os error N)` suffix, first
/// letter lower-cased, as Go writes `syscall.Errno` values.
pub fn go_errno_text(e: &std::io::Error) -> String {
    let text = match e.raw_os_error() {
        Some(code) => {
            let s = std::io::Error::from_raw_os_error(code).to_string();
            match s.rfind(" (os error ") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
        None => e.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    const V6: &str = "\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn defaults_and_explicit_paths() {
        // upstream "loadFlannelNetConf" cases
        let c = NetConf::load(br#"{"name":"cni-flannel","type":"flannel"}"#).unwrap();
        assert_eq!(c.subnet_file, "/run/flannel/subnet.env");
        assert_eq!(c.data_dir, "/var/lib/cni/flannel");
        assert_eq!(
            (c.name.as_str(), c.plugin_type.as_str()),
            ("cni-flannel", "flannel")
        );
        let c = NetConf::load(
            br#"{"name":"cni-flannel","type":"flannel","subnetFile":"/tmp/s.env","dataDir":"/tmp/d"}"#,
        )
        .unwrap();
        assert_eq!(
            (c.subnet_file.as_str(), c.data_dir.as_str()),
            ("/tmp/s.env", "/tmp/d")
        );
        // null keeps the default, "" overrides it, keys match case-insensitively
        let c = NetConf::load(br#"{"name":"n","SubnetFile":null,"DATADIR":""}"#).unwrap();
        assert_eq!(
            (c.subnet_file.as_str(), c.data_dir.as_str()),
            ("/run/flannel/subnet.env", "")
        );
    }

    #[test]
    fn map_fields_merge_and_null_clears() {
        let c = NetConf::load(
            br#"{"name":"n","delegate":{"a":1},"Delegate":{"b":true},"ipam":{"x":1},"ipam":null,"runtimeConfig":{}}"#,
        )
        .unwrap();
        let d = c.delegate.unwrap();
        assert_eq!(d.get("a"), Some(&GoValue::Float(1.0)));
        assert_eq!(d.get("b"), Some(&GoValue::Bool(true)));
        assert_eq!(c.ipam, None);
        assert_eq!(c.runtime_config, Some(GoMap::new()));
    }

    #[test]
    fn wrong_types_fail_with_go_text() {
        assert_eq!(
            NetConf::load(br#"{"name":"n","delegate":"x"}"#)
                .unwrap_err()
                .to_string(),
            "failed to load netconf: json: cannot unmarshal string into Go struct field NetConf.delegate of type map[string]interface {}"
        );
        assert_eq!(
            NetConf::load(br#"{"name":"n","capabilities":{"a":1},"subnetFile":2}"#)
                .unwrap_err()
                .to_string(),
            "failed to load netconf: json: cannot unmarshal number into Go struct field NetConf.capabilities of type bool"
        );
        assert_eq!(
            NetConf::load(br#"{"name":"n","dns":{"nameservers":"1.1.1.1"}}"#)
                .unwrap_err()
                .to_string(),
            "failed to load netconf: json: cannot unmarshal string into Go struct field DNS.dns.nameservers of type []string"
        );
        assert_eq!(
            NetConf::load(br#"{"name":"n","delegate":{"mtu":1e400}}"#)
                .unwrap_err()
                .to_string(),
            "failed to load netconf: json: cannot unmarshal number 1e400 into Go struct field NetConf.delegate of type float64"
        );
        assert_eq!(
            NetConf::load(b"[]").unwrap_err().to_string(),
            "failed to load netconf: json: cannot unmarshal array into Go value of type main.NetConf"
        );
        assert_eq!(
            NetConf::load(b"{\"name\":").unwrap_err().to_string(),
            "failed to load netconf: unexpected end of JSON input"
        );
        assert_eq!(
            NetConf::decode(
                br#"{"name":"n","type":"bridge","ipam":{"type":7}}"#,
                Flavour::Standard
            )
            .unwrap_err()
            .to_string(),
            "json: cannot unmarshal number into Go struct field IPAM.ipam.type of type string"
        );
        // top-level extras such as ipMasq are ignored, as upstream
        assert!(NetConf::load(br#"{"name":"n","ipMasq":"yes","mtu":[1]}"#).is_ok());
    }

    #[test]
    fn single_field_structs() {
        assert_eq!(
            decode_single_string(br#"{"Name":"a","name":null}"#, "name", "Name"),
            Ok("a".into())
        );
        assert_eq!(
            decode_single_string(br#"{"name":1}"#, "name", "Name"),
            Err(DecodeError::Type(
                "json: cannot unmarshal number into Go struct field .name of type string".into()
            ))
        );
        assert_eq!(
            decode_single_string(b"[1]", "name", "Name"),
            Err(DecodeError::Type(r#"json: cannot unmarshal array into Go value of type struct { Name string "json:\"name\"" }"#.into()))
        );
    }

    #[test]
    fn subnet_env_v4_v6_dual() {
        // upstream "loadFlannelSubnetEnv" cases
        let (e, w) = FlannelEnv::parse("f", V4).unwrap();
        assert!(w.is_empty());
        assert_eq!(e.networks[0].to_string(), "10.1.0.0/16");
        assert_eq!(e.subnet.unwrap().to_string(), "10.1.17.0/24");
        assert_eq!((e.mtu, e.ip_masq), (1472, true));
        assert!(e.ipv6_networks.is_empty() && e.ipv6_subnet.is_none());
        let (e, _) = FlannelEnv::parse("f", V6).unwrap();
        assert_eq!(e.ipv6_networks[0].to_string(), "fc00::/48");
        assert_eq!(e.ipv6_subnet.unwrap().to_string(), "fc00::/64");
        assert!(e.networks.is_empty() && e.subnet.is_none());
        let (e, _) = FlannelEnv::parse("f", &format!("{V4}{V6}")).unwrap();
        assert_eq!(e.networks.len() + e.ipv6_networks.len(), 2);
        assert!(e.subnet.is_some() && e.ipv6_subnet.is_some());
    }

    #[test]
    fn subnet_env_values_are_strict() {
        let (e, _) = FlannelEnv::parse(
            "f",
            "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16,10.1.2.3/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=0\nFLANNEL_IPMASQ=True\n",
        )
        .unwrap();
        let nets: Vec<String> = e.networks.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.1.0.0/16", "192.168.0.0/16"]);
        assert_eq!((e.mtu, e.ip_masq), (0, false));
        let bad = |text: &str| FlannelEnv::parse("f", text).unwrap_err().to_string();
        assert_eq!(
            bad("FLANNEL_SUBNET=10.1.17.1\n"),
            "invalid CIDR address: 10.1.17.1"
        );
        assert_eq!(bad("FLANNEL_NETWORK=\n"), "invalid CIDR address: ");
        assert_eq!(
            bad("FLANNEL_MTU=+1\n"),
            r#"strconv.ParseUint: parsing "+1": invalid syntax"#
        );
        assert_eq!(
            bad("FLANNEL_MTU=4294967296\n"),
            r#"strconv.ParseUint: parsing "4294967296": value out of range"#
        );
        // upstream's "foo=bar" case
        assert_eq!(
            bad("foo=bar\n"),
            "f is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"
        );
        // a key without '=' is a warning here (upstream panics)
        let e = bad(
            "FLANNEL_MTU\nFLANNEL_IPMASQ=true\nFLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.0.1.1/24\n",
        );
        assert_eq!(e, "f is missing FLANNEL_MTU");
    }

    #[test]
    fn missing_subnet_env_reads_like_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.env");
        let path = path.to_str().unwrap();
        assert_eq!(
            FlannelEnv::load(path).unwrap_err().to_string(),
            format!("open {path}: no such file or directory")
        );
        let d = dir.path().to_str().unwrap();
        assert_eq!(
            FlannelEnv::load(d).unwrap_err().to_string(),
            format!("read {d}: is a directory")
        );
    }

    #[test]
    fn go_ipnet_strings() {
        let s = |t: &str| GoIpNet::parse_masked(t).unwrap().to_string();
        assert_eq!(s("fc00::1/64"), "fc00::/64");
        assert_eq!(s("::ffff:10.1.17.1/120"), "10.1.17.0/24");
        let u = |t: &str| GoIpNet::parse_unmasked(t).unwrap().to_string();
        assert_eq!(u("10.96.0.5/12"), "10.96.0.5/12");
        assert_eq!(u("2001:db8::1/32"), "2001:db8::1/32");
    }
}
