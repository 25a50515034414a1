//! `flanneld mk-docker-opts`: Docker daemon options from flannel's
//! `subnet.env`, with the behaviour of Go flannel's `dist/mk-docker-opts.sh`
//! (which `dist/mk-docker-opts.sh` here calls).
//!
//! ```text
//! flanneld mk-docker-opts [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]
//! ```
//!
//! With the default flags and Go's `sample_subnet.env`
//! (`FLANNEL_SUBNET=10.1.74.1/24`, `FLANNEL_MTU=1472`, `FLANNEL_IPMASQ=false`)
//! `/run/docker_opts.env` becomes
//!
//! ```text
//! DOCKER_OPT_BIP="--bip=10.1.74.1/24"
//! DOCKER_OPT_IPMASQ="--ip-masq=true"
//! DOCKER_OPT_MTU="--mtu=1472"
//! DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
//! ```
//!
//! As in the script: the flannel file's variables override the environment's;
//! `--ip-masq` is the inverse of `FLANNEL_IPMASQ` (Docker must not masquerade
//! what flannel already does); other `DOCKER_OPT_*` variables (from the
//! environment or the file) are passed through, all in name order; the
//! combined variable starts from its current value; and after writing, the
//! command fails (exit 1) when the routing table already has a `via` route for
//! the subnet (Docker's bridge would then be unreachable).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Default of `-f`.
pub const DEFAULT_FLANNEL_ENV: &str = "/run/flannel/subnet.env";
/// Default of `-d`.
pub const DEFAULT_DOCKER_ENV: &str = "/run/docker_opts.env";
/// Default of `-k`.
pub const DEFAULT_COMBINED_KEY: &str = "DOCKER_OPTS";

/// Go's usage text (printed to stderr, exit status 1, as the script does for
/// `-h`, `-?` and an unknown flag). `{0}` in Go is the script's path; here it
/// is `flanneld mk-docker-opts`.
pub const USAGE: &str = "flanneld mk-docker-opts [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file
OPTIONS:
\t-f\tPath to flannel env file. Defaults to /run/flannel/subnet.env
\t-d\tPath to Docker env file to write to. Defaults to /run/docker_opts.env
\t-i\tOutput each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
\t-c\tOutput combined Docker options into DOCKER_OPTS var
\t-k\tSet the combined options key to this value (default DOCKER_OPTS=)
\t-m\tDo not output --ip-masq (useful for older Docker version)
";

/// The flags of `flanneld mk-docker-opts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerOptsArgs {
    /// `-f`: the flannel env file read.
    pub flannel_env: PathBuf,
    /// `-d`: the Docker env file written.
    pub docker_env: PathBuf,
    /// `-i`: write each option as its own `DOCKER_OPT_*` variable.
    pub individual: bool,
    /// `-c`: write the combined variable.
    pub combined: bool,
    /// Not `-m`: write `--ip-masq`.
    pub ip_masq: bool,
    /// `-k`: the combined variable's name.
    pub combined_key: String,
}

impl Default for DockerOptsArgs {
    fn default() -> Self {
        DockerOptsArgs {
            flannel_env: DEFAULT_FLANNEL_ENV.into(),
            docker_env: DEFAULT_DOCKER_ENV.into(),
            individual: false,
            combined: false,
            ip_masq: true,
            combined_key: DEFAULT_COMBINED_KEY.into(),
        }
    }
}

impl DockerOptsArgs {
    /// Parses the arguments after `mk-docker-opts` with POSIX `getopts`
    /// rules (Go's `f:d:icmk:?h`): flags may be grouped (`-ic`), a value may
    /// be attached (`-f/x`) or follow, `--` ends the flags, and parsing stops
    /// at the first operand. `Err(None)` asks for the usage text (`-h`, `-?`);
    /// `Err(Some(msg))` is a bad flag (the message precedes the usage text).
    pub fn parse(args: &[String]) -> Result<DockerOptsArgs, Option<String>> {
        let mut a = DockerOptsArgs::default();
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            if arg == "--" {
                break;
            }
            let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
                break;
            };
            for (i, c) in flags.char_indices() {
                match c {
                    'i' => a.individual = true,
                    'c' => a.combined = true,
                    'm' => a.ip_masq = false,
                    'f' | 'd' | 'k' => {
                        let attached = &flags[i + c.len_utf8()..];
                        let value = if attached.is_empty() {
                            rest.next().cloned().ok_or_else(|| {
                                Some(format!("option requires an argument -- {c}"))
                            })?
                        } else {
                            attached.to_owned()
                        };
                        match c {
                            'f' => a.flannel_env = value.into(),
                            'd' => a.docker_env = value.into(),
                            _ => a.combined_key = value,
                        }
                        break;
                    }
                    'h' | '?' => return Err(None),
                    other => return Err(Some(format!("illegal option -- {other}"))),
                }
            }
        }
        if !a.individual && !a.combined {
            a.individual = true;
            a.combined = true;
        }
        Ok(a)
    }
}

/// Why `mk-docker-opts` failed (each is exit status 1, as in Go's script).
#[derive(Debug, thiserror::Error)]
pub enum DockerOptsError {
    /// `FLANNEL_IPMASQ` is neither `true` nor `false`.
    #[error("Invalid value of FLANNEL_IPMASQ: {0}")]
    InvalidIpMasq(String),
    /// The flannel env file exists but cannot be read.
    #[error("cannot read {path}: {source}", path = .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Docker env file cannot be written.
    #[error("cannot write {path}: {source}", path = .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The routing table already routes the subnet through a gateway.
    #[error("Your routing table already contains the subnet: {0}")]
    RouteExists(String),
    /// `ip route show` could not be run.
    #[error("cannot list the routing table with `ip route show` (iproute2): {0}")]
    Routes(String),
}

/// Reads a shell-style env file as `. FILE` would for flannel's files:
/// `KEY=VALUE` lines, `export ` tolerated, `#` comments and blank lines
/// skipped, one pair of surrounding quotes removed.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = [('"', '"'), ('\'', '\'')]
                .iter()
                .find_map(|(o, c)| v.strip_prefix(*o).and_then(|v| v.strip_suffix(*c)))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

/// The Docker env file's text for `args`, given the shell variables the
/// script would see (`vars`: the environment overlaid with the flannel
/// file).
pub fn render(
    args: &DockerOptsArgs,
    vars: &BTreeMap<String, String>,
) -> Result<String, DockerOptsError> {
    let get = |k: &str| vars.get(k).filter(|v| !v.is_empty());
    // Every DOCKER_OPT_* variable, in name order (the script lists them
    // with `set`, which sorts); ours replace any of the same name.
    let mut opts: BTreeMap<String, String> = vars
        .iter()
        .filter(|(k, _)| k.starts_with("DOCKER_OPT_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(subnet) = get("FLANNEL_SUBNET") {
        opts.insert("DOCKER_OPT_BIP".into(), format!("--bip={subnet}"));
    }
    if let Some(mtu) = get("FLANNEL_MTU") {
        opts.insert("DOCKER_OPT_MTU".into(), format!("--mtu={mtu}"));
    }
    if let Some(masq) = get("FLANNEL_IPMASQ").filter(|_| args.ip_masq) {
        let docker = match masq.as_str() {
            "true" => "false",
            "false" => "true",
            other => return Err(DockerOptsError::InvalidIpMasq(other.into())),
        };
        opts.insert("DOCKER_OPT_IPMASQ".into(), format!("--ip-masq={docker}"));
    }
    let mut combined = vars.get(&args.combined_key).cloned().unwrap_or_default();
    if !combined.is_empty() {
        combined.push(' ');
    }
    let mut out = String::new();
    for (name, value) in &opts {
        if args.individual {
            out.push_str(&format!("{name}=\"{value}\"\n"));
        }
        combined.push(' ');
        combined.push_str(value);
    }
    if args.combined {
        out.push_str(&format!("{}=\"{combined}\"\n", args.combined_key));
    }
    Ok(out)
}

/// The `ip route show` line that routes `subnet` (`FLANNEL_SUBNET`, e.g.
/// `10.1.74.1/24`, whose network is `10.1.74.0/24`) through a gateway, if
/// any. Go's script greps for the network text and `via`; this matches the
/// destination exactly.
pub fn conflicting_route(subnet: &str, routes: &str) -> Option<String> {
    let network = network_of(subnet)?;
    routes
        .lines()
        .find(|l| {
            let mut words = l.split_whitespace();
            words.next() == Some(network.as_str()) && words.any(|w| w == "via")
        })
        .map(|l| l.trim_end().to_owned())
}

/// `10.1.74.1/24` → `10.1.74.0/24` (IPv4 only, as the script).
fn network_of(subnet: &str) -> Option<String> {
    let (addr, len) = subnet.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    Some(format!(
        "{}/{len}",
        std::net::Ipv4Addr::from(u32::from(addr) & mask)
    ))
}

/// Runs `mk-docker-opts`: reads `args.flannel_env` over the process
/// environment, writes `args.docker_env`, then checks the routing table.
pub fn run(args: &DockerOptsArgs) -> Result<(), DockerOptsError> {
    let mut vars: BTreeMap<String, String> = std::env::vars().collect();
    let path: &Path = &args.flannel_env;
    if path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|source| DockerOptsError::Read {
            path: path.into(),
            source,
        })?;
        vars.extend(parse_env_file(&text));
    }
    let text = render(args, &vars)?;
    std::fs::write(&args.docker_env, text).map_err(|source| DockerOptsError::Write {
        path: args.docker_env.clone(),
        source,
    })?;
    if let Some(subnet) = vars.get("FLANNEL_SUBNET").filter(|s| !s.is_empty()) {
        let out = std::process::Command::new("ip")
            .args(["route", "show"])
            .output()
            .map_err(|e| DockerOptsError::Routes(e.to_string()))?;
        if !out.status.success() {
            return Err(DockerOptsError::Routes(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        if let Some(route) = conflicting_route(subnet, &String::from_utf8_lossy(&out.stdout)) {
            return Err(DockerOptsError::RouteExists(route));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<DockerOptsArgs, Option<String>> {
        DockerOptsArgs::parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn getopts_rules() {
        let a = args(&[]).unwrap();
        assert!(a.individual && a.combined && a.ip_masq);
        let a = args(&["-ic", "-fx.env", "-d", "y.env", "-mk", "KEY"]).unwrap();
        assert_eq!(a.flannel_env, PathBuf::from("x.env"));
        assert_eq!(a.docker_env, PathBuf::from("y.env"));
        assert_eq!(a.combined_key, "KEY");
        assert!(a.individual && a.combined && !a.ip_masq);
        assert!(args(&["-c"]).unwrap().individual.eq(&false));
        assert_eq!(args(&["-h"]), Err(None));
        assert_eq!(args(&["-?"]), Err(None));
        assert_eq!(args(&["-x"]), Err(Some("illegal option -- x".into())));
        assert_eq!(
            args(&["-f"]),
            Err(Some("option requires an argument -- f".into()))
        );
        // The first operand ends the flags, as with getopts.
        assert!(args(&["stray", "-x"]).is_ok());
    }

    #[test]
    fn routes() {
        let table = "default via 192.168.1.1 dev eth0\n\
                     10.1.74.0/24 dev docker0 proto kernel scope link src 10.1.74.1\n\
                     10.1.75.0/24 via 192.168.1.7 dev eth0\n";
        assert_eq!(conflicting_route("10.1.74.1/24", table), None);
        assert_eq!(
            conflicting_route("10.1.75.1/24", table).as_deref(),
            Some("10.1.75.0/24 via 192.168.1.7 dev eth0")
        );
        assert_eq!(network_of("10.1.74.1/24").as_deref(), Some("10.1.74.0/24"));
        assert_eq!(network_of("10.1.74.1/0").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(network_of("fd00::1/64"), None);
    }

    #[test]
    fn env_file_syntax() {
        let vars = parse_env_file("# c\nexport A=1\nB=\"two words\"\n\nC='3'\nD=\n");
        let want = [("A", "1"), ("B", "two words"), ("C", "3"), ("D", "")];
        assert_eq!(
            vars,
            want.map(|(k, v)| (k.to_string(), v.to_string())).to_vec()
        );
    }
}
