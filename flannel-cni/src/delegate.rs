//! The delegate: building its config from [`NetConf`] + [`FlannelEnv`]
//! (pure, [`build`]), finding and running its binary ([`find_in_path`],
//! [`exec_plugin`]) and turning its output into ours ([`fixup_result`]).
//!
//! ```
//! use flannel_cni::config::{FlannelEnv, NetConf};
//! let conf = NetConf::load(br#"{"name":"cbr0","cniVersion":"0.3.1","type":"flannel",
//!     "delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#).unwrap();
//! let (env, _) = FlannelEnv::parse("subnet.env",
//!     "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
//! let delegate = flannel_cni::delegate::build(&conf, &env).unwrap();
//! assert_eq!(flannel_cni::delegate::encode(&delegate),
//!     r#"{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#);
//! ```

use crate::config::{FlannelEnv, GoIpNet, NetConf, go_errno_text, go_ip_string};
use crate::error::{
    DecodeError, DelegateError, FindPluginError, IpamError, ResultError, RouteError,
};
use crate::json::{self, GoMap, GoValue, Value, go_float, go_quote_bytes, type_error};
use crate::skel::{CniError, SUPPORTED_VERSIONS};
use flannel_core::gojson::{key_matches, write_string};
use flannel_core::ip::parse_ip_go;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// The delegate type used when `delegate.type` is absent.
pub const DEFAULT_TYPE: &str = "bridge";
/// The IPAM type used when `ipam.type` is absent.
pub const DEFAULT_IPAM_TYPE: &str = "host-local";

/// Builds the delegate config (upstream `cmdAdd` + `doCmdAdd`): the
/// `delegate` map checked and completed with `name`, `type`, `ipMasq`,
/// `mtu`, `isGateway` (bridge only), `cniVersion`, `runtimeConfig` and
/// `ipam`. Keys the user supplied in `delegate` are kept as given.
pub fn build(conf: &NetConf, env: &FlannelEnv) -> Result<GoMap, DelegateError> {
    let mut d = match &conf.delegate {
        None => GoMap::new(),
        Some(m) => {
            if m.get("type")
                .is_some_and(|t| !matches!(t, GoValue::String(_)))
            {
                return Err(DelegateError::TypeNotString);
            }
            if m.contains_key("name") {
                return Err(DelegateError::HasName);
            }
            if m.contains_key("ipam") {
                return Err(DelegateError::HasIpam);
            }
            m.clone()
        }
    };
    if let Some(rc) = &conf.runtime_config {
        d.insert("runtimeConfig".into(), GoValue::Map(rc.clone()));
    }
    d.insert("name".into(), GoValue::String(conf.name.clone()));
    d.entry("type".into())
        .or_insert_with(|| GoValue::String(DEFAULT_TYPE.into()));
    // If flanneld does not masquerade, the bridge should.
    d.entry("ipMasq".into())
        .or_insert(GoValue::Bool(!env.ip_masq));
    d.entry("mtu".into())
        .or_insert(GoValue::Uint(u64::from(env.mtu)));
    if d.get("type") == Some(&GoValue::String(DEFAULT_TYPE.into())) {
        d.entry("isGateway".into()).or_insert(GoValue::Bool(true));
    }
    if !conf.cni_version.is_empty() {
        d.insert(
            "cniVersion".into(),
            GoValue::String(conf.cni_version.clone()),
        );
    }
    let ipam = delegate_ipam(conf, env).map_err(DelegateError::Ipam)?;
    d.insert("ipam".into(), GoValue::Map(ipam));
    Ok(d)
}

/// The delegate config's bytes: compact JSON, keys sorted (Go map order).
pub fn encode(delegate: &GoMap) -> String {
    let mut out = String::new();
    GoValue::Map(delegate.clone()).write(&mut out);
    out
}

/// The delegate's `type` (always a string once [`build`] succeeded).
pub fn delegate_type(delegate: &GoMap) -> &str {
    match delegate.get("type") {
        Some(GoValue::String(s)) => s,
        _ => "",
    }
}

/// `getDelegateIPAM`: the top-level `ipam` (all keys kept) with `type`
/// defaulted to `host-local`, `ranges` replaced by one range set per family
/// (v4 first) and `routes` = the user's routes followed by the flannel
/// networks (v4, then v6).
pub fn delegate_ipam(conf: &NetConf, env: &FlannelEnv) -> Result<GoMap, IpamError> {
    let mut ipam = conf.ipam.clone().unwrap_or_default();
    ipam.entry("type".into())
        .or_insert_with(|| GoValue::String(DEFAULT_IPAM_TYPE.into()));
    let range = |n: &GoIpNet| {
        let mut m = GoMap::new();
        m.insert("subnet".into(), GoValue::String(n.to_string()));
        GoValue::List(vec![GoValue::Map(m)])
    };
    let ranges: Vec<GoValue> = env
        .subnet
        .iter()
        .chain(&env.ipv6_subnet)
        .map(range)
        .collect();
    ipam.insert(
        "ranges".into(),
        if ranges.is_empty() {
            GoValue::Null
        } else {
            GoValue::List(ranges)
        },
    );
    let mut routes = match ipam.get("routes") {
        Some(v) => parse_routes(v).map_err(IpamError::Routes)?,
        None => Some(Vec::new()),
    };
    for n in env.networks.iter().chain(&env.ipv6_networks) {
        routes.get_or_insert_with(Vec::new).push(Route::to(*n));
    }
    ipam.insert(
        "routes".into(),
        match routes {
            Some(r) => GoValue::List(r.iter().map(|r| GoValue::Raw(r.to_json())).collect()),
            None => GoValue::Null,
        },
    );
    Ok(ipam)
}

/// A CNI route (libcni `types.Route`) as flannel re-serialises it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// `dst`, address kept as written; `None` prints as Go's `<nil>`.
    pub dst: Option<GoIpNet>,
    /// `gw`
    pub gw: Option<IpAddr>,
    /// `mtu` (left out when 0)
    pub mtu: i64,
    /// `advmss` (left out when 0)
    pub advmss: i64,
    /// `priority` (left out when 0)
    pub priority: i64,
    /// `table`
    pub table: Option<i64>,
    /// `scope`
    pub scope: Option<i64>,
}

/// Go's decoding of a marshalled `float64` into an `int` field.
fn go_int(v: &GoValue, field: &str, errs: &mut Option<String>) -> Option<i64> {
    let e = |kind: &str| type_error(kind, "route", field, "int");
    match v {
        GoValue::Null => None,
        GoValue::Float(f) => {
            let text = go_float(*f);
            match text.parse::<i64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    errs.get_or_insert_with(|| e(&format!("number {text}")));
                    None
                }
            }
        }
        GoValue::Uint(u) => match i64::try_from(*u) {
            Ok(n) => Some(n),
            Err(_) => {
                errs.get_or_insert_with(|| e(&format!("number {u}")));
                None
            }
        },
        other => {
            errs.get_or_insert_with(|| e(other.kind()));
            None
        }
    }
}

impl Route {
    /// A route to a flannel network.
    pub fn to(dst: GoIpNet) -> Route {
        Route {
            dst: Some(dst),
            ..Route::default()
        }
    }

    /// Decodes one element of `ipam.routes` as libcni's `Route.UnmarshalJSON`
    /// does after flannel marshalled it (keys in sorted order, matched
    /// case-insensitively, unknown keys ignored).
    pub fn from_go(v: &GoValue) -> Result<Route, RouteError> {
        let m = match v {
            GoValue::Null => return Ok(Route::default()),
            GoValue::Map(m) => m,
            other => {
                return Err(RouteError::Type(type_error(
                    other.kind(),
                    "",
                    "",
                    "types.route",
                )));
            }
        };
        let mut r = Route::default();
        let mut errs: Option<String> = None;
        for (k, v) in m {
            if key_matches(k, "dst") {
                let s = match v {
                    GoValue::String(s) => s.as_str(),
                    GoValue::Null => "",
                    other => {
                        return Err(RouteError::Type(type_error(
                            other.kind(),
                            "route",
                            "dst",
                            "string",
                        )));
                    }
                };
                r.dst = Some(GoIpNet::parse_unmasked(s)?);
            } else if key_matches(k, "gw") {
                match v {
                    GoValue::String(s) if s.is_empty() => r.gw = None,
                    GoValue::String(s) => {
                        r.gw = Some(
                            parse_ip_go(s).map_err(|_| RouteError::Gateway { input: s.clone() })?,
                        );
                    }
                    GoValue::Null => r.gw = None,
                    other => {
                        errs.get_or_insert_with(|| {
                            type_error(other.kind(), "route", "gw", "net.IP")
                        });
                    }
                }
            } else if key_matches(k, "mtu") {
                if let Some(n) = go_int(v, "mtu", &mut errs) {
                    r.mtu = n;
                }
            } else if key_matches(k, "advmss") {
                if let Some(n) = go_int(v, "advmss", &mut errs) {
                    r.advmss = n;
                }
            } else if key_matches(k, "priority") {
                if let Some(n) = go_int(v, "priority", &mut errs) {
                    r.priority = n;
                }
            } else if key_matches(k, "table") {
                r.table = go_int(v, "table", &mut errs);
            } else if key_matches(k, "scope") {
                r.scope = go_int(v, "scope", &mut errs);
            }
        }
        match errs {
            Some(e) => Err(RouteError::Type(e)),
            None => Ok(r),
        }
    }

    /// The route's JSON: keys `dst, gw, mtu, advmss, priority, table, scope`
    /// in that order, zero/absent ones left out (except `dst`).
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"dst\":");
        match &self.dst {
            Some(d) => write_string(&mut out, &d.to_string()),
            None => write_string(&mut out, "<nil>"),
        }
        if let Some(gw) = self.gw {
            out.push_str(",\"gw\":");
            write_string(&mut out, &go_ip_string(gw));
        }
        for (key, v) in [
            ("mtu", self.mtu),
            ("advmss", self.advmss),
            ("priority", self.priority),
        ] {
            if v != 0 {
                out.push_str(&format!(",\"{key}\":{v}"));
            }
        }
        for (key, v) in [("table", self.table), ("scope", self.scope)] {
            if let Some(v) = v {
                out.push_str(&format!(",\"{key}\":{v}"));
            }
        }
        out.push('}');
        out
    }
}

/// Decodes `ipam.routes` into `[]types.Route`: `Ok(None)` for `null` (Go's
/// nil slice).
pub fn parse_routes(v: &GoValue) -> Result<Option<Vec<Route>>, RouteError> {
    match v {
        GoValue::Null => Ok(None),
        GoValue::List(items) => items
            .iter()
            .map(Route::from_go)
            .collect::<Result<_, _>>()
            .map(Some),
        other => Err(RouteError::Type(type_error(
            other.kind(),
            "",
            "",
            "[]types.Route",
        ))),
    }
}

/// libcni's `invoke.FindInPath`: `<dir>/<plugin>` for the first directory of
/// `cni_path` (`:`-separated) where it is a regular file.
pub fn find_in_path(plugin: &str, cni_path: &str) -> Result<PathBuf, FindPluginError> {
    if plugin.is_empty() {
        return Err(FindPluginError::NoName);
    }
    if plugin.contains('/') {
        return Err(FindPluginError::InvalidName(plugin.to_owned()));
    }
    let dirs: Vec<&str> = if cni_path.is_empty() {
        Vec::new()
    } else {
        cni_path.split(':').collect()
    };
    if dirs.is_empty() {
        return Err(FindPluginError::NoPaths);
    }
    for dir in &dirs {
        let full = Path::new(dir).join(plugin);
        if std::fs::metadata(&full).is_ok_and(|m| m.is_file()) {
            return Ok(full);
        }
    }
    Err(FindPluginError::NotFound {
        plugin: plugin.to_owned(),
        dirs: dirs.iter().map(|d| (*d).to_owned()).collect(),
    })
}

/// Go's `ProcessState.String()` for a failed child.
fn exit_text(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    let Some(sig) = status.signal() else {
        return status.to_string();
    };
    let name = match sig {
        1 => "hangup".to_string(),
        2 => "interrupt".to_string(),
        3 => "quit".to_string(),
        4 => "illegal instruction".to_string(),
        5 => "trace/breakpoint trap".to_string(),
        6 => "aborted".to_string(),
        7 => "bus error".to_string(),
        8 => "floating point exception".to_string(),
        9 => "killed".to_string(),
        10 => "user defined signal 1".to_string(),
        11 => "segmentation fault".to_string(),
        12 => "user defined signal 2".to_string(),
        13 => "broken pipe".to_string(),
        14 => "alarm clock".to_string(),
        15 => "terminated".to_string(),
        n => format!("signal {n}"),
    };
    let core = if status.core_dumped() {
        " (core dumped)"
    } else {
        ""
    };
    format!("signal: {name}{core}")
}

/// libcni's `pluginErr`: the delegate's own CNI error when its stdout holds
/// one, otherwise an error with code 0 describing the failure.
fn plugin_err(err: &str, stdout: &[u8], stderr: &[u8]) -> CniError {
    if stdout.is_empty() {
        let msg = if stderr.is_empty() {
            format!("netplugin failed with no error message: {err}")
        } else {
            format!("netplugin failed: {}", go_quote_bytes(stderr))
        };
        return CniError::new(0, msg, "");
    }
    let (mut e, perr) = decode_cni_error(stdout);
    if let Some(perr) = perr {
        e.msg = format!(
            "netplugin failed but error parsing its diagnostic message {}: {perr}",
            go_quote_bytes(stdout)
        );
    }
    e
}

/// Decodes a CNI error document (`types.Error`) with Go's rules; returns
/// what was decoded and the first decoding error, if any.
pub fn decode_cni_error(b: &[u8]) -> (CniError, Option<DecodeError>) {
    let mut e = CniError::new(0, "", "");
    let doc = match json::parse(b) {
        Ok(d) => d,
        Err(err) => return (e, Some(err.into())),
    };
    let members = match doc {
        Value::Object(m) => m,
        Value::Null => return (e, None),
        other => {
            return (
                e,
                Some(DecodeError::Type(type_error(
                    other.kind(),
                    "",
                    "",
                    "types.Error",
                ))),
            );
        }
    };
    let mut first: Option<String> = None;
    for (k, v) in &members {
        if key_matches(k, "code") {
            match v {
                Value::Number(n) => match n.parse::<u64>() {
                    Ok(c) => e.code = c,
                    Err(_) => {
                        first.get_or_insert_with(|| {
                            type_error(&format!("number {n}"), "Error", "code", "uint")
                        });
                    }
                },
                Value::Null => {}
                other => {
                    first.get_or_insert_with(|| type_error(other.kind(), "Error", "code", "uint"));
                }
            }
        } else if key_matches(k, "msg") || key_matches(k, "details") {
            let field = if key_matches(k, "msg") {
                "msg"
            } else {
                "details"
            };
            match v {
                Value::String(s) if field == "msg" => e.msg = s.clone(),
                Value::String(s) => e.details = s.clone(),
                Value::Null => {}
                other => {
                    first.get_or_insert_with(|| type_error(other.kind(), "Error", field, "string"));
                }
            }
        }
    }
    (e, first.map(DecodeError::Type))
}

/// libcni's `RawExec.ExecPlugin`: runs `path` with our environment plus
/// `CNI_COMMAND=<command>` and `stdin`; returns its stdout on success (its
/// stderr copied to `stderr`), else the CNI error it reported. A "text file
/// busy" start is retried once a second, six attempts in all.
pub fn exec_plugin(
    path: &Path,
    command: &str,
    stdin: &[u8],
    stderr: &mut dyn Write,
) -> Result<Vec<u8>, CniError> {
    const ETXTBSY: i32 = 26;
    let mut attempt = 0;
    let mut child = loop {
        attempt += 1;
        let spawned = Command::new(path)
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(c) => break c,
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempt < 6 => {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            Err(e) => {
                let err = format!("fork/exec {}: {}", path.display(), go_errno_text(&e));
                return Err(plugin_err(&err, b"", b""));
            }
        }
    };
    // Feed stdin from another thread so a child that writes a lot before
    // reading cannot deadlock us; a child that never reads is fine too.
    let input = stdin.to_vec();
    let mut pipe = child.stdin.take();
    let feeder = std::thread::spawn(move || {
        if let Some(p) = pipe.as_mut() {
            let _ = p.write_all(&input);
        }
    });
    let output = child.wait_with_output();
    let _ = feeder.join();
    let output =
        output.map_err(|e| plugin_err(&format!("wait: {}", go_errno_text(&e)), b"", b""))?;
    if !output.status.success() {
        // Unlike libcni (which drops it when stdout holds the error), the
        // delegate's stderr is always relayed: it is informational only.
        let _ = stderr.write_all(&output.stderr);
        return Err(plugin_err(
            &exit_text(output.status),
            &output.stdout,
            &output.stderr,
        ));
    }
    let _ = stderr.write_all(&output.stderr);
    Ok(output.stdout)
}

/// libcni's `fixupResultVersion` + `create.Create` + `Result.Print`: checks
/// the delegate's ADD output and returns the text to print, indented with 4
/// spaces. A result without a (non-empty string) `cniVersion` gets the
/// delegate config's version (`0.1.0` when it has none) as its first key.
pub fn fixup_result(netconf: &[u8], stdout: &[u8]) -> Result<String, ResultError> {
    let conf_version = crate::skel::decode_version(netconf)?;
    let unmarshal = |source: DecodeError| ResultError::Unmarshal {
        source,
        raw: String::from_utf8_lossy(stdout).into_owned(),
    };
    let doc = json::parse(stdout).map_err(|e| unmarshal(e.into()))?;
    let mut members = match doc {
        Value::Object(m) => m,
        Value::Null => Vec::new(),
        other => {
            return Err(unmarshal(DecodeError::Type(type_error(
                other.kind(),
                "",
                "",
                "map[string]interface {}",
            ))));
        }
    };
    let version = match members.iter().rev().find(|(k, _)| k == "cniVersion") {
        Some((_, Value::String(v))) if !v.is_empty() => v.clone(),
        _ => {
            members.retain(|(k, _)| k != "cniVersion");
            members.insert(
                0,
                ("cniVersion".into(), Value::String(conf_version.clone())),
            );
            conf_version
        }
    };
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(ResultError::UnsupportedVersion { version });
    }
    Ok(Value::Object(members).to_indented())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value as J, json};

    const V4: &str = "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    const V6: &str = "\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    const DUAL: &str = "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    const V4_MULTI: &str = "\nFLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    const BASE: &str = r#"{"name":"cni-flannel","type":"flannel","subnetFile":"/x","dataDir":"/y""#;
    const IPAM_IN: &str = r#"{"type":"my-ipam","unknown-param":"unknown-value","routes":[{"dst":"10.96.0.0/12"},{"dst":"192.168.244.0/24","gw":"10.1.17.20"}]}"#;

    fn env(text: &str) -> FlannelEnv {
        FlannelEnv::parse("subnet.env", text).unwrap().0
    }

    /// Builds the delegate for `BASE` + `extra` keys and returns its bytes.
    fn delegate_bytes(extra: &str, env_text: &str) -> Result<String, String> {
        let conf =
            NetConf::load(format!("{BASE}{extra}}}").as_bytes()).map_err(|e| e.to_string())?;
        build(&conf, &env(env_text))
            .map(|d| encode(&d))
            .map_err(|e| e.to_string())
    }

    fn delegate(extra: &str, env_text: &str) -> J {
        serde_json::from_str(&delegate_bytes(extra, env_text).unwrap()).unwrap()
    }

    fn expected(ranges: J, routes: J) -> J {
        json!({"ipMasq": false, "isGateway": true, "mtu": 1472, "name": "cni-flannel", "type": "bridge",
               "ipam": {"type": "host-local", "ranges": ranges, "routes": routes}})
    }

    #[test]
    fn upstream_lifecycle_files() {
        // flannel_linux_test.go "CNI lifecycle" expected dataDir files
        assert_eq!(
            delegate_bytes("", V4).unwrap(),
            r#"{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}"#
        );
        assert_eq!(
            delegate("", V4_MULTI),
            expected(
                json!([[{"subnet": "10.1.17.0/24"}]]),
                json!([{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}])
            )
        );
        assert_eq!(
            delegate("", V6),
            expected(
                json!([[{"subnet": "fc00::/64"}]]),
                json!([{"dst": "fc00::/48"}])
            )
        );
        assert_eq!(
            delegate("", DUAL),
            expected(
                json!([[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]]),
                json!([{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}])
            )
        );
    }

    #[test]
    fn upstream_delegate_ipam_cases() {
        // flannel_linux_test.go "getDelegateIPAM"
        let user_routes =
            json!([{"dst": "10.96.0.0/12"}, {"dst": "192.168.244.0/24", "gw": "10.1.17.20"}]);
        let no_type = IPAM_IN.replace(r#""type":"my-ipam","#, "");
        for (ipam_in, ty) in [(IPAM_IN, "my-ipam"), (no_type.as_str(), "host-local")] {
            for (env_text, ranges, net_routes) in [
                (
                    V4,
                    json!([[{"subnet": "10.1.17.0/24"}]]),
                    json!([{"dst": "10.1.0.0/16"}]),
                ),
                (
                    V6,
                    json!([[{"subnet": "fc00::/64"}]]),
                    json!([{"dst": "fc00::/48"}]),
                ),
                (
                    DUAL,
                    json!([[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]]),
                    json!([{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}]),
                ),
            ] {
                let conf =
                    NetConf::load(format!("{BASE},\"ipam\":{ipam_in}}}").as_bytes()).unwrap();
                let ipam = delegate_ipam(&conf, &env(env_text)).unwrap();
                let got: J = serde_json::from_str(&GoValue::Map(ipam).to_json()).unwrap();
                let mut routes = user_routes.as_array().unwrap().clone();
                routes.extend(net_routes.as_array().unwrap().iter().cloned());
                assert_eq!(
                    got,
                    json!({"type": ty, "unknown-param": "unknown-value", "routes": routes, "ranges": ranges})
                );
            }
        }
        let conf = NetConf::load(format!("{BASE}}}").as_bytes()).unwrap();
        let ipam = delegate_ipam(&conf, &env(V4_MULTI)).unwrap();
        assert_eq!(
            GoValue::Map(ipam).to_json(),
            r#"{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"},{"dst":"192.168.0.0/16"}],"type":"host-local"}"#
        );
    }

    #[test]
    fn ip_masq_follows_flannel_unless_given() {
        let off = V4.replace("FLANNEL_IPMASQ=true", "FLANNEL_IPMASQ=false");
        assert_eq!(delegate("", &off)["ipMasq"], json!(true));
        assert_eq!(delegate("", V4)["ipMasq"], json!(false));
        // a delegate-supplied value (even null) is kept
        assert_eq!(
            delegate(r#","delegate":{"ipMasq":true}"#, V4)["ipMasq"],
            json!(true)
        );
        assert_eq!(
            delegate(r#","delegate":{"ipMasq":null}"#, &off)["ipMasq"],
            J::Null
        );
    }

    #[test]
    fn custom_delegate_keys_override_defaults() {
        let d = delegate(
            r#","cniVersion":"1.0.0","delegate":{"type":"bridge","bridge":"mybr","hairpinMode":true,"mtu":1400,"isGateway":false,"cniVersion":"0.3.1"}"#,
            V4,
        );
        assert_eq!(
            d,
            json!({"bridge": "mybr", "cniVersion": "1.0.0", "hairpinMode": true, "ipMasq": false,
                   "isGateway": false, "mtu": 1400, "name": "cni-flannel", "type": "bridge",
                   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.17.0/24"}]], "routes": [{"dst": "10.1.0.0/16"}]}})
        );
        // other types get ipMasq and mtu but no isGateway
        let d = delegate(r#","delegate":{"type":"ipvlan","master":"eth0"}"#, V4);
        assert_eq!(d["type"], json!("ipvlan"));
        assert_eq!(d["master"], json!("eth0"));
        assert_eq!(d["mtu"], json!(1472));
        assert!(d.get("isGateway").is_none());
        // a delegate cniVersion is kept when the top level has none
        assert_eq!(
            delegate(r#","delegate":{"cniVersion":"0.4.0"}"#, V4)["cniVersion"],
            json!("0.4.0")
        );
        assert!(delegate("", V4).get("cniVersion").is_none());
    }

    #[test]
    fn is_default_gateway_passes_through_untouched() {
        // the stock kube-flannel conflist entry
        let conf = NetConf::load(
            br#"{"name":"cbr0","cniVersion":"0.3.1","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#,
        )
        .unwrap();
        let e = env(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        );
        assert_eq!(
            encode(&build(&conf, &e).unwrap()),
            r#"{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#
        );
        assert_eq!(
            delegate(r#","delegate":{"isDefaultGateway":false}"#, V4)["isDefaultGateway"],
            json!(false)
        );
        assert!(delegate("", V4).get("isDefaultGateway").is_none());
    }

    #[test]
    fn runtime_config_is_copied() {
        let d = delegate(
            r#","runtimeConfig":{"portMappings":[{"hostPort":8080}]},"delegate":{"runtimeConfig":{"x":1}}"#,
            V4,
        );
        assert_eq!(
            d["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080}]})
        );
        assert!(
            delegate(r#","runtimeConfig":null"#, V4)
                .get("runtimeConfig")
                .is_none()
        );
    }

    #[test]
    fn delegate_key_rules() {
        assert_eq!(
            delegate_bytes(r#","delegate":{"type":1}"#, V4).unwrap_err(),
            "'delegate' dictionary, if present, must have (string) 'type' field"
        );
        assert_eq!(
            delegate_bytes(r#","delegate":{"name":"x"}"#, V4).unwrap_err(),
            "'delegate' dictionary must not have 'name' field, it'll be set by flannel"
        );
        assert_eq!(
            delegate_bytes(r#","delegate":{"ipam":{}}"#, V4).unwrap_err(),
            "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel"
        );
        // case-sensitive: "Name" sits beside flannel's "name"
        assert_eq!(
            delegate(r#","delegate":{"Name":"x"}"#, V4)["Name"],
            json!("x")
        );
    }

    #[test]
    fn routes_reserialise_like_libcni() {
        let d = delegate_bytes(
            r#","ipam":{"routes":[{"dst":"10.96.0.5/12","gw":"::ffff:10.1.17.20","mtu":1400,"table":0,"scope":null,"x":1},null,{"DST":"fd00::1/64","priority":5.0,"advmss":0}]}"#,
            V4,
        )
        .unwrap();
        assert!(
            d.contains(r#""routes":[{"dst":"10.96.0.5/12","gw":"10.1.17.20","mtu":1400,"table":0},{"dst":"\u003cnil\u003e"},{"dst":"fd00::1/64","priority":5},{"dst":"10.1.0.0/16"}]"#),
            "{d}"
        );
        let bad = |routes: &str| {
            delegate_bytes(&format!(r#","ipam":{{"routes":{routes}}}"#), V4).unwrap_err()
        };
        let p = "failed to assemble Delegate IPAM: failed to read IPAM routes: failed to parse ipam.routes: ";
        assert_eq!(
            bad(r#"[{"dst":"nope"}]"#),
            format!("{p}invalid CIDR address: nope")
        );
        assert_eq!(
            bad(r#"[{"dst":null}]"#),
            format!("{p}invalid CIDR address: ")
        );
        assert_eq!(
            bad(r#"[{"dst":"1.2.3.0/24","gw":"x"}]"#),
            format!("{p}invalid IP address: x")
        );
        assert_eq!(
            bad(r#"[{"dst":"1.2.3.0/24","mtu":1.5}]"#),
            format!(
                "{p}json: cannot unmarshal number 1.5 into Go struct field route.mtu of type int"
            )
        );
        assert_eq!(
            bad(r#"[{"dst":5}]"#),
            format!(
                "{p}json: cannot unmarshal number into Go struct field route.dst of type string"
            )
        );
        assert_eq!(
            bad(r#"["x"]"#),
            format!("{p}json: cannot unmarshal string into Go value of type types.route")
        );
        assert_eq!(
            bad(r#"{}"#),
            format!("{p}json: cannot unmarshal object into Go value of type []types.Route")
        );
        // routes: null is an empty list
        assert!(
            delegate_bytes(r#","ipam":{"routes":null}"#, V4)
                .unwrap()
                .contains(r#""routes":[{"dst":"10.1.0.0/16"}]"#)
        );
    }

    #[test]
    fn finds_plugins_like_libcni() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir_all(a.join("bridge")).unwrap(); // a directory does not count
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("bridge"), "").unwrap();
        let path = format!("{}:{}", a.display(), b.display());
        assert_eq!(find_in_path("bridge", &path).unwrap(), b.join("bridge"));
        assert_eq!(
            find_in_path("ptp", &path).unwrap_err().to_string(),
            format!(
                "failed to find plugin \"ptp\" in path [{} {}]",
                a.display(),
                b.display()
            )
        );
        assert_eq!(
            find_in_path("", &path).unwrap_err().to_string(),
            "no plugin name provided"
        );
        assert_eq!(
            find_in_path("../x", &path).unwrap_err().to_string(),
            "invalid plugin name: ../x"
        );
    }

    #[test]
    fn plugin_errors_like_libcni() {
        let e = plugin_err("exit status 1", b"", b"");
        assert_eq!(
            (e.code, e.msg.as_str()),
            (0, "netplugin failed with no error message: exit status 1")
        );
        let e = plugin_err("exit status 1", b"", b"boom\n");
        assert_eq!(e.msg, "netplugin failed: \"boom\\n\"");
        let e = plugin_err(
            "exit status 1",
            br#"{"cniVersion":"0.3.1","code":11,"msg":"busy","details":"d"}"#,
            b"x",
        );
        assert_eq!(e, CniError::new(11, "busy", "d"));
        let e = plugin_err("exit status 1", b"oops", b"");
        assert_eq!(
            e.msg,
            "netplugin failed but error parsing its diagnostic message \"oops\": invalid character 'o' looking for beginning of value"
        );
        let e = plugin_err("exit status 1", br#"{"code":7,"msg":5}"#, b"");
        assert_eq!(e.code, 7);
        assert!(
            e.msg.ends_with(
                "json: cannot unmarshal number into Go struct field Error.msg of type string"
            ),
            "{}",
            e.msg
        );
    }

    #[test]
    fn results_are_reprinted_with_a_version() {
        let conf = br#"{"cniVersion":"0.3.1","name":"n","type":"bridge"}"#;
        let out = fixup_result(conf, br#"{"ips":[{"address":"10.1.17.2/24"}],"dns":{}}"#).unwrap();
        assert_eq!(
            out,
            "{\n    \"cniVersion\": \"0.3.1\",\n    \"ips\": [\n        {\n            \"address\": \"10.1.17.2/24\"\n        }\n    ],\n    \"dns\": {}\n}"
        );
        let out = fixup_result(br#"{"name":"n"}"#, b"null").unwrap();
        assert_eq!(out, "{\n    \"cniVersion\": \"0.1.0\"\n}");
        assert_eq!(
            fixup_result(conf, br#"{"cniVersion":"9.9.9"}"#)
                .unwrap_err()
                .to_string(),
            "unsupported CNI result version \"9.9.9\""
        );
        assert_eq!(
            fixup_result(conf, b"").unwrap_err().to_string(),
            "failed to unmarshal raw result: unexpected end of JSON input result "
        );
    }

    #[test]
    fn exit_texts_like_go() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_text(ExitStatus::from_raw(1 << 8)), "exit status 1");
        assert_eq!(exit_text(ExitStatus::from_raw(9)), "signal: killed");
        assert_eq!(
            exit_text(ExitStatus::from_raw(11 | 0x80)),
            "signal: segmentation fault (core dumped)"
        );
    }
}
