//! The CNI process contract (libcni's `skel`, v1.3.0 behaviour) and the
//! plugin's commands: [`run`] is the whole program, given the environment and
//! the standard streams.
//!
//! * `CNI_COMMAND` unset: an "about" text on stderr, exit 0.
//! * `ADD`: decode stdin, load `subnet.env`, build the delegate config, save
//!   it under `dataDir`, run the delegate with `CNI_COMMAND=ADD`, print its
//!   result.
//! * `DEL`: read the saved config back and run the delegate with
//!   `CNI_COMMAND=DEL`, then remove the saved config; no saved config means
//!   nothing to do (success). A failed delegate DEL keeps the saved config,
//!   so a retried DEL reaches the delegate again.
//! * `CHECK`, `GC`, `STATUS`: version checks only, as upstream.
//! * `VERSION`: the supported versions.
//!
//! Errors are printed on stdout as CNI error JSON (`code`, `msg`, `details`,
//! indented like Go's `types.Error.Print`), and the exit status is 1.

use crate::config::{FlannelEnv, Flavour, NetConf, decode_single_string};
use crate::delegate;
use crate::error::ConfigError;
use crate::json::{go_quote, go_quote_list};
use crate::store;
use flannel_core::gojson::write_string;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt as _;

/// The CNI spec versions this plugin accepts (exact matches only).
pub const SUPPORTED_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The version reported by `VERSION` as `cniVersion`.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Error code: incompatible CNI version.
pub const ERR_INCOMPATIBLE_VERSION: u64 = 1;
/// Error code: unknown container (an empty container ID).
pub const ERR_UNKNOWN_CONTAINER: u64 = 3;
/// Error code: invalid or missing environment variables.
pub const ERR_INVALID_ENV: u64 = 4;
/// Error code: I/O failure.
pub const ERR_IO: u64 = 5;
/// Error code: failed to decode the configuration.
pub const ERR_DECODING: u64 = 6;
/// Error code: invalid network configuration.
pub const ERR_INVALID_CONFIG: u64 = 7;
/// Error code: invalid network namespace.
pub const ERR_INVALID_NETNS: u64 = 8;
/// Error code: the plugin's own failures.
pub const ERR_INTERNAL: u64 = 999;

/// A CNI error, printed as `{"code": N, "msg": "...", "details": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The CNI error code.
    pub code: u64,
    /// The message.
    pub msg: String,
    /// Details (left out of the JSON when empty).
    pub details: String,
}

impl CniError {
    /// A new error.
    pub fn new(code: u64, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// A code-999 error carrying the plugin's own message.
    pub fn internal(msg: impl std::fmt::Display) -> CniError {
        CniError::new(ERR_INTERNAL, msg.to_string(), "")
    }

    /// The JSON printed on stdout (Go's `json.MarshalIndent` with 4 spaces,
    /// no trailing newline).
    pub fn to_json(&self) -> String {
        let mut out = format!("{{\n    \"code\": {},\n    \"msg\": ", self.code);
        write_string(&mut out, &self.msg);
        if !self.details.is_empty() {
            out.push_str(",\n    \"details\": ");
            write_string(&mut out, &self.details);
        }
        out.push_str("\n}");
        out
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, "; {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// The arguments of one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdArgs {
    /// `CNI_CONTAINERID`
    pub container_id: String,
    /// `CNI_NETNS`
    pub netns: String,
    /// `CNI_IFNAME`
    pub ifname: String,
    /// `CNI_ARGS`
    pub args: String,
    /// `CNI_PATH`
    pub path: String,
    /// `CNI_NETNS_OVERRIDE`
    pub netns_override: String,
    /// The network configuration read from stdin.
    pub stdin: Vec<u8>,
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, the rule for container IDs and network names.
fn valid_id(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(CniError::new(
            ERR_UNKNOWN_CONTAINER,
            "missing containerID",
            "",
        ));
    }
    if !valid_id(id) {
        return Err(CniError::new(
            ERR_INVALID_ENV,
            "invalid characters in containerID",
            id,
        ));
    }
    Ok(())
}

fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = |msg: &str, details: &str| Err(CniError::new(ERR_INVALID_ENV, msg, details));
    if name.is_empty() {
        return bad("interface name is empty", "");
    }
    if name.len() > 15 {
        return bad(
            "interface name is too long",
            "interface name should be less than 16 characters",
        );
    }
    if name == "." || name == ".." {
        return bad("interface name is . or ..", "");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return bad(
            "interface name contains / or : or whitespace characters",
            "",
        );
    }
    Ok(())
}

/// skel's `validateConfig`: stdin must be JSON with a valid `name`.
pub fn validate_config(stdin: &[u8]) -> Result<(), CniError> {
    let name = decode_single_string(stdin, "name", "Name").map_err(|e| {
        CniError::new(
            ERR_DECODING,
            format!("error unmarshall network config: {e}"),
            "",
        )
    })?;
    if name.is_empty() {
        return Err(CniError::new(
            ERR_INVALID_CONFIG,
            "missing network name",
            "",
        ));
    }
    if !valid_id(&name) {
        return Err(CniError::new(
            ERR_INVALID_CONFIG,
            "invalid characters found in network name",
            name,
        ));
    }
    Ok(())
}

/// libcni's `ConfigDecoder.Decode`: the config's `cniVersion`, `0.1.0` when
/// empty. Errors read `decoding version from network config: <json error>`.
pub fn decode_version(config: &[u8]) -> Result<String, ConfigError> {
    let v =
        decode_single_string(config, "cniVersion", "CNIVersion").map_err(ConfigError::Version)?;
    Ok(if v.is_empty() { "0.1.0".into() } else { v })
}

/// libcni's `version.ParseVersion`.
fn parse_version(v: &str) -> Result<(i64, i64, i64), String> {
    if v.is_empty() {
        return Ok((0, 1, 0));
    }
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() >= 4 {
        return Err(format!("invalid version {}: too many parts", go_quote(v)));
    }
    let atoi = |s: &str, which: &str| -> Result<i64, String> {
        let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "failed to convert {which} version part {}: strconv.Atoi: parsing {}: invalid syntax",
                go_quote(s),
                go_quote(s)
            ));
        }
        s.parse::<i64>().map_err(|_| {
            format!(
                "failed to convert {which} version part {}: strconv.Atoi: parsing {}: value out of range",
                go_quote(s),
                go_quote(s)
            )
        })
    };
    let major = atoi(parts[0], "major")?;
    let minor = match parts.get(1) {
        Some(p) => atoi(p, "minor")?,
        None => 0,
    };
    let micro = match parts.get(2) {
        Some(p) => atoi(p, "micro")?,
        None => 0,
    };
    Ok((major, minor, micro))
}

fn version_at_least(v: &str, other: &str) -> Result<bool, String> {
    Ok(parse_version(v)? >= parse_version(other)?)
}

/// skel's `checkVersionAndCall` check: the config version must be one of
/// [`SUPPORTED_VERSIONS`] exactly.
fn check_version(stdin: &[u8]) -> Result<(), CniError> {
    let v = decode_version(stdin).map_err(|e| CniError::new(ERR_DECODING, e.to_string(), ""))?;
    if SUPPORTED_VERSIONS.contains(&v.as_str()) {
        return Ok(());
    }
    Err(CniError::new(
        ERR_INCOMPATIBLE_VERSION,
        "incompatible CNI versions",
        format!(
            "config is {}, plugin supports {}",
            go_quote(&v),
            go_quote_list(&SUPPORTED_VERSIONS)
        ),
    ))
}

/// skel's gate for CHECK, GC and STATUS: the config version must be at least
/// `min`, some supported version must be at least the config's, and then the
/// exact-match check applies.
fn check_min_version(stdin: &[u8], min: &str, command: &str) -> Result<(), CniError> {
    let decoding = |e: String| CniError::new(ERR_DECODING, e, "");
    let v = decode_version(stdin).map_err(|e| decoding(e.to_string()))?;
    if !version_at_least(&v, min).map_err(decoding)? {
        return Err(CniError::new(
            ERR_INCOMPATIBLE_VERSION,
            format!("config version does not allow {command}"),
            "",
        ));
    }
    for supported in SUPPORTED_VERSIONS {
        if version_at_least(supported, &v).map_err(decoding)? {
            return check_version(stdin);
        }
    }
    Err(CniError::new(
        ERR_INCOMPATIBLE_VERSION,
        format!("plugin version does not allow {command}"),
        "",
    ))
}

/// skel's check after a successful ADD or DEL: `CNI_NETNS` must not be the
/// plugin's own network namespace (unless `CNI_NETNS_OVERRIDE` is `1`/`true`).
/// A netns that cannot be opened passes (DEL after the netns is gone).
fn check_netns(args: &CmdArgs) -> Result<(), CniError> {
    if args.netns_override.eq_ignore_ascii_case("true") || args.netns_override == "1" {
        return Ok(());
    }
    let Ok(target) = std::fs::File::open(&args.netns).and_then(|f| f.metadata()) else {
        return Ok(());
    };
    let own = std::fs::metadata("/proc/thread-self/ns/net")
        .or_else(|_| std::fs::metadata("/proc/self/ns/net"))
        .map_err(|_| CniError::new(ERR_INVALID_NETNS, "get plugin's netns failed", ""))?;
    if own.dev() == target.dev() && own.ino() == target.ino() {
        return Err(CniError::new(
            ERR_INVALID_NETNS,
            "plugin's netns and netns from CNI_NETNS should not be the same",
            "",
        ));
    }
    Ok(())
}

/// The "about" text printed when `CNI_COMMAND` is unset.
pub fn about() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    format!(
        "CNI Plugin flannel version v{} ({}/{arch}) commit {}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        option_env!("FLANNEL_CNI_COMMIT").unwrap_or("unknown")
    )
}

/// The standard streams of one invocation.
pub struct Streams<'a> {
    /// Where the network configuration is read from.
    pub stdin: &'a mut dyn Read,
    /// Results and CNI errors.
    pub stdout: &'a mut dyn Write,
    /// Informational messages, the delegate's stderr.
    pub stderr: &'a mut dyn Write,
}

/// Runs the plugin: reads the `CNI_*` variables through `getenv`, does the
/// command, prints any error, and returns the exit status (0 or 1).
pub fn run(getenv: &dyn Fn(&str) -> String, io: &mut Streams<'_>) -> i32 {
    match dispatch(getenv, io) {
        Ok(()) => 0,
        Err(e) => {
            let _ = io.stdout.write_all(e.to_json().as_bytes());
            let _ = io.stdout.flush();
            1
        }
    }
}

fn dispatch(getenv: &dyn Fn(&str) -> String, io: &mut Streams<'_>) -> Result<(), CniError> {
    let cmd = getenv("CNI_COMMAND");
    let mut args = CmdArgs::default();
    type Validate = fn(&str) -> Result<(), CniError>;
    // (name, commands requiring it, validation), in skel's order.
    let vars: [(&str, &[&str], Option<Validate>); 7] = [
        (
            "CNI_COMMAND",
            &["ADD", "CHECK", "DEL", "GC", "STATUS"],
            None,
        ),
        (
            "CNI_CONTAINERID",
            &["ADD", "CHECK", "DEL"],
            Some(validate_container_id),
        ),
        ("CNI_NETNS", &["ADD", "CHECK"], None),
        (
            "CNI_IFNAME",
            &["ADD", "CHECK", "DEL"],
            Some(validate_ifname),
        ),
        ("CNI_ARGS", &[], None),
        ("CNI_PATH", &["ADD", "CHECK", "DEL", "GC", "STATUS"], None),
        ("CNI_NETNS_OVERRIDE", &[], None),
    ];
    let mut missing = Vec::new();
    for (name, required_for, validate) in vars {
        let val = getenv(name);
        let required = required_for.contains(&cmd.as_str());
        if val.is_empty() {
            if required || name == "CNI_COMMAND" {
                missing.push(name);
            }
        } else if required && let Some(f) = validate {
            f(&val)?;
        }
        match name {
            "CNI_CONTAINERID" => args.container_id = val,
            "CNI_NETNS" => args.netns = val,
            "CNI_IFNAME" => args.ifname = val,
            "CNI_ARGS" => args.args = val,
            "CNI_PATH" => args.path = val,
            "CNI_NETNS_OVERRIDE" => args.netns_override = val,
            _ => {}
        }
    }
    if !missing.is_empty() {
        if cmd.is_empty() {
            let _ = writeln!(io.stderr, "{}", about());
            let _ = writeln!(
                io.stderr,
                "CNI protocol versions supported: {}",
                SUPPORTED_VERSIONS.join(", ")
            );
            return Ok(());
        }
        return Err(CniError::new(
            ERR_INVALID_ENV,
            format!("required env variables [{}] missing", missing.join(",")),
            "",
        ));
    }
    if cmd != "VERSION" {
        io.stdin
            .read_to_end(&mut args.stdin)
            .map_err(|e| CniError::new(ERR_IO, format!("error reading from stdin: {e}"), ""))?;
        validate_config(&args.stdin)?;
    }
    match cmd.as_str() {
        "ADD" => {
            check_version(&args.stdin)?;
            cmd_add(&args, io)?;
            check_netns(&args)
        }
        "DEL" => {
            check_version(&args.stdin)?;
            cmd_del(&args, io)?;
            check_netns(&args)
        }
        // Upstream's CHECK, GC and STATUS do nothing after skel's checks.
        "CHECK" => check_min_version(&args.stdin, "0.4.0", "CHECK"),
        "GC" => check_min_version(&args.stdin, "1.1.0", "GC"),
        "STATUS" => check_min_version(&args.stdin, "1.1.0", "STATUS"),
        "VERSION" => {
            let list: Vec<String> = SUPPORTED_VERSIONS
                .iter()
                .map(|v| format!("\"{v}\""))
                .collect();
            let _ = writeln!(
                io.stdout,
                "{{\"cniVersion\":\"{CURRENT_VERSION}\",\"supportedVersions\":[{}]}}",
                list.join(",")
            );
            Ok(())
        }
        other => Err(CniError::new(
            ERR_INVALID_ENV,
            format!("unknown CNI_COMMAND: {other}"),
            "",
        )),
    }
}

fn cmd_add(args: &CmdArgs, io: &mut Streams<'_>) -> Result<(), CniError> {
    let conf = NetConf::load(&args.stdin)
        .map_err(|e| CniError::internal(format!("failed to load flannel netconf file: {e}")))?;
    let (env, warnings) = FlannelEnv::load(&conf.subnet_file).map_err(|e| {
        CniError::internal(format!(
            "failed to load flannel 'subnet.env' file: {e}. Check the flannel pod log for this node."
        ))
    })?;
    for w in warnings {
        let _ = writeln!(io.stderr, "{}: {w}", conf.subnet_file);
    }
    let config = delegate::build(&conf, &env).map_err(CniError::internal)?;
    let bytes = delegate::encode(&config);
    let _ = writeln!(
        io.stderr,
        "delegateAdd: netconf sent to delegate plugin:\n{bytes}"
    );
    store::save(&conf.data_dir, &args.container_id, bytes.as_bytes())
        .map_err(CniError::internal)?;
    let plugin = delegate::find_in_path(delegate::delegate_type(&config), &args.path)
        .map_err(|e| CniError::internal(format!("failed to delegate add: {e}")))?;
    // A CNI error from the delegate is passed up unchanged.
    let out = delegate::exec_plugin(&plugin, "ADD", bytes.as_bytes(), io.stderr)?;
    let result = delegate::fixup_result(bytes.as_bytes(), &out)
        .map_err(|e| CniError::internal(format!("failed to delegate add: {e}")))?;
    let _ = io.stdout.write_all(result.as_bytes());
    let _ = io.stdout.flush();
    Ok(())
}

fn cmd_del(args: &CmdArgs, io: &mut Streams<'_>) -> Result<(), CniError> {
    let conf = NetConf::load(&args.stdin).map_err(CniError::internal)?;
    let Some(saved) =
        store::read(&conf.data_dir, &args.container_id).map_err(CniError::internal)?
    else {
        // Nothing saved: already deleted, or never added.
        return Ok(());
    };
    let saved_conf = match NetConf::decode(&saved, Flavour::Standard) {
        Ok(c) => c,
        Err(e) => {
            // Upstream leaves the file and reports success: the veth stays
            // on the bridge until the node reboots.
            let _ = write!(io.stderr, "failed to parse netconf: {e}");
            return Ok(());
        }
    };
    delegate::find_in_path(&saved_conf.plugin_type, &args.path)
        .map_err(CniError::internal)
        .and_then(|plugin| delegate::exec_plugin(&plugin, "DEL", &saved, io.stderr))?;
    // The saved config goes only once the delegate's DEL succeeded: the
    // runtime retries a failed DEL, and without the config that retry could
    // not reach the delegate, leaving the pod's veth and its host-local
    // address behind. Upstream's Linux build removes it even after a failed
    // DEL (its Windows build keeps it, as here).
    store::remove(&conf.data_dir, &args.container_id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Out {
        code: i32,
        stdout: String,
        stderr: String,
    }

    fn invoke(vars: &[(&str, &str)], stdin: &str) -> Out {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let getenv = move |k: &str| env.get(k).cloned().unwrap_or_default();
        let mut input = stdin.as_bytes();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(
            &getenv,
            &mut Streams {
                stdin: &mut input,
                stdout: &mut out,
                stderr: &mut err,
            },
        );
        Out {
            code,
            stdout: String::from_utf8(out).unwrap(),
            stderr: String::from_utf8(err).unwrap(),
        }
    }

    fn cni_error(out: &Out) -> (u64, String, String) {
        assert_eq!(out.code, 1, "stdout: {}", out.stdout);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert!(v.get("cniVersion").is_none());
        (
            v["code"].as_u64().unwrap(),
            v["msg"].as_str().unwrap().to_string(),
            v["details"].as_str().unwrap_or("").to_string(),
        )
    }

    const ADD: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/nonexistent/netns"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/nonexistent"),
    ];

    #[test]
    fn error_json_shape() {
        assert_eq!(
            CniError::new(7, "a<b", "").to_json(),
            "{\n    \"code\": 7,\n    \"msg\": \"a\\u003cb\"\n}"
        );
        assert_eq!(
            CniError::new(1, "m", "d").to_json(),
            "{\n    \"code\": 1,\n    \"msg\": \"m\",\n    \"details\": \"d\"\n}"
        );
    }

    #[test]
    fn no_command_prints_about() {
        let out = invoke(&[], "");
        assert_eq!(out.code, 0);
        assert!(out.stdout.is_empty());
        assert!(
            out.stderr.starts_with("CNI Plugin flannel version v"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.ends_with(
            "CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0\n"
        ));
    }

    #[test]
    fn version_command() {
        let out = invoke(&[("CNI_COMMAND", "VERSION")], "not read");
        assert_eq!(out.code, 0);
        assert_eq!(
            out.stdout,
            "{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"0.1.0\",\"0.2.0\",\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]}\n"
        );
    }

    #[test]
    fn environment_rules() {
        let out = invoke(&[("CNI_COMMAND", "ADD")], "{}");
        assert_eq!(
            cni_error(&out),
            (
                4,
                "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"
                    .into(),
                "".into()
            )
        );
        let out = invoke(&[("CNI_COMMAND", "DEL")], "{}");
        assert_eq!(
            cni_error(&out).1,
            "required env variables [CNI_CONTAINERID,CNI_IFNAME,CNI_PATH] missing"
        );
        let mut vars = ADD.to_vec();
        vars[1] = ("CNI_CONTAINERID", "-bad/id");
        assert_eq!(
            cni_error(&invoke(&vars, "{}")),
            (
                4,
                "invalid characters in containerID".into(),
                "-bad/id".into()
            )
        );
        let mut vars = ADD.to_vec();
        vars[3] = ("CNI_IFNAME", "a-very-long-ifname");
        assert_eq!(
            cni_error(&invoke(&vars, "{}")),
            (
                4,
                "interface name is too long".into(),
                "interface name should be less than 16 characters".into()
            )
        );
        vars[3] = ("CNI_IFNAME", "eth 0");
        assert_eq!(
            cni_error(&invoke(&vars, "{}")).1,
            "interface name contains / or : or whitespace characters"
        );
        let out = invoke(&[("CNI_COMMAND", "add")], r#"{"name":"n"}"#);
        assert_eq!(
            cni_error(&out),
            (4, "unknown CNI_COMMAND: add".into(), "".into())
        );
    }

    #[test]
    fn malformed_config() {
        let out = invoke(&ADD, "{\"name\": \"cbr0\",");
        assert_eq!(
            cni_error(&out),
            (
                6,
                "error unmarshall network config: unexpected end of JSON input".into(),
                "".into()
            )
        );
        let out = invoke(&ADD, "{name: cbr0}");
        assert_eq!(
            cni_error(&out).1,
            "error unmarshall network config: invalid character 'n' looking for beginning of object key string"
        );
        let out = invoke(&ADD, r#"{"type":"flannel"}"#);
        assert_eq!(
            cni_error(&out),
            (7, "missing network name".into(), "".into())
        );
        let out = invoke(&ADD, r#"{"name":"bad name"}"#);
        assert_eq!(
            cni_error(&out),
            (
                7,
                "invalid characters found in network name".into(),
                "bad name".into()
            )
        );
        let out = invoke(&ADD, r#"{"name":"n","cniVersion":"0.5.0"}"#);
        assert_eq!(
            cni_error(&out),
            (
                1,
                "incompatible CNI versions".into(),
                r#"config is "0.5.0", plugin supports ["0.1.0" "0.2.0" "0.3.0" "0.3.1" "0.4.0" "1.0.0" "1.1.0"]"#.into()
            )
        );
        let out = invoke(&ADD, r#"{"name":"n","cniVersion":1}"#);
        assert_eq!(
            cni_error(&out).1,
            "decoding version from network config: json: cannot unmarshal number into Go struct field .cniVersion of type string"
        );
        let out = invoke(&ADD, r#"{"name":"n","delegate":[]}"#);
        assert_eq!(
            cni_error(&out),
            (999, "failed to load flannel netconf file: failed to load netconf: json: cannot unmarshal array into Go struct field NetConf.delegate of type map[string]interface {}".into(), "".into())
        );
    }

    #[test]
    fn missing_subnet_env() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("subnet.env");
        let conf = format!(
            r#"{{"name":"n","type":"flannel","subnetFile":"{}","dataDir":"{}"}}"#,
            f.display(),
            dir.path().display()
        );
        let out = invoke(&ADD, &conf);
        assert_eq!(
            cni_error(&out),
            (
                999,
                format!(
                    "failed to load flannel 'subnet.env' file: open {}: no such file or directory. Check the flannel pod log for this node.",
                    f.display()
                ),
                "".into()
            )
        );
        std::fs::write(&f, "FLANNEL_MTU=1450\n").unwrap();
        let out = invoke(&ADD, &conf);
        assert_eq!(
            cni_error(&out).1,
            format!(
                "failed to load flannel 'subnet.env' file: {} is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ. Check the flannel pod log for this node.",
                f.display()
            )
        );
        // the delegate file is written before the delegate is looked up
        std::fs::write(&f, "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
        let out = invoke(&ADD, &conf);
        assert_eq!(
            cni_error(&out).1,
            "failed to delegate add: failed to find plugin \"bridge\" in path [/nonexistent]"
        );
        assert!(dir.path().join("c1").exists());
        assert!(
            out.stderr
                .contains("delegateAdd: netconf sent to delegate plugin:\n{\"ipMasq\":false,")
        );
    }

    #[test]
    fn del_without_saved_file_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let conf = format!(
            r#"{{"name":"n","type":"flannel","dataDir":"{}"}}"#,
            dir.path().display()
        );
        let vars = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/nonexistent"),
        ];
        let out = invoke(&vars, &conf);
        assert_eq!((out.code, out.stdout.as_str()), (0, ""));
        // an unparsable saved file: success, file kept
        std::fs::write(dir.path().join("c1"), "garbage").unwrap();
        let out = invoke(&vars, &conf);
        assert_eq!(out.code, 0);
        assert_eq!(
            out.stderr,
            "failed to parse netconf: invalid character 'g' looking for beginning of value"
        );
        assert!(dir.path().join("c1").exists());
        // a delegate that cannot be found: error, and the file is kept for
        // a retried DEL, which fails the same way until the plugin is there
        std::fs::write(dir.path().join("c1"), r#"{"name":"n","type":"bridge"}"#).unwrap();
        for _ in 0..2 {
            let out = invoke(&vars, &conf);
            assert_eq!(
                cni_error(&out).1,
                "failed to find plugin \"bridge\" in path [/nonexistent]"
            );
            assert!(dir.path().join("c1").exists());
        }
    }

    #[test]
    fn check_gc_status_gates() {
        let vars = |cmd: &'static str| {
            vec![
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/x"),
            ]
        };
        let ok = invoke(&vars("CHECK"), r#"{"name":"n","cniVersion":"0.4.0"}"#);
        assert_eq!((ok.code, ok.stdout.as_str()), (0, ""));
        let out = invoke(&vars("CHECK"), r#"{"name":"n","cniVersion":"0.3.1"}"#);
        assert_eq!(
            cni_error(&out),
            (1, "config version does not allow CHECK".into(), "".into())
        );
        let out = invoke(&vars("CHECK"), r#"{"name":"n","cniVersion":"0.4.1"}"#);
        assert_eq!(cni_error(&out).1, "incompatible CNI versions");
        let out = invoke(&vars("CHECK"), r#"{"name":"n","cniVersion":"2.0.0"}"#);
        assert_eq!(cni_error(&out).1, "plugin version does not allow CHECK");
        let out = invoke(&vars("CHECK"), r#"{"name":"n","cniVersion":"1.x"}"#);
        assert_eq!(
            cni_error(&out),
            (6, r#"failed to convert minor version part "x": strconv.Atoi: parsing "x": invalid syntax"#.into(), "".into())
        );
        let out = invoke(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
            r#"{"name":"n","cniVersion":"1.0.0"}"#,
        );
        assert_eq!(cni_error(&out).1, "config version does not allow GC");
        let ok = invoke(
            &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")],
            r#"{"name":"n","cniVersion":"1.1.0"}"#,
        );
        assert_eq!((ok.code, ok.stdout.as_str()), (0, ""));
    }
}
