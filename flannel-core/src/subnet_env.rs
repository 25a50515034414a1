//! The `subnet.env` file format (`/run/flannel/subnet.env`).
//!
//! flanneld writes, in this order and only for the enabled families:
//!
//! ```text
//! FLANNEL_NETWORK=10.42.0.0/16
//! FLANNEL_SUBNET=10.42.0.1/24
//! FLANNEL_IPV6_NETWORK=2001:cafe:42::/56
//! FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=true
//! ```
//!
//! The subnet lines hold the lease's **first host address**, not its network
//! address. This module renders that text ([`SubnetEnv::render`]) and reads it
//! back tolerantly ([`EnvFile::parse`]: comments, quotes, `export`, comma
//! lists; bad entries skipped with a warning). Writing the file atomically is
//! I/O and lives in `flannel-subnet`.

use crate::config::NetConfig;
use crate::ip::{Cidr, Family, GoIp, Ip4Net, Ip6Net, IpError};
use crate::lease::Lease;
use std::fmt::Write as _;
use std::str::FromStr;

/// `FLANNEL_NETWORK`
pub const KEY_NETWORK: &str = "FLANNEL_NETWORK";
/// `FLANNEL_SUBNET`
pub const KEY_SUBNET: &str = "FLANNEL_SUBNET";
/// `FLANNEL_IPV6_NETWORK`
pub const KEY_IPV6_NETWORK: &str = "FLANNEL_IPV6_NETWORK";
/// `FLANNEL_IPV6_SUBNET`
pub const KEY_IPV6_SUBNET: &str = "FLANNEL_IPV6_SUBNET";
/// `FLANNEL_MTU`
pub const KEY_MTU: &str = "FLANNEL_MTU";
/// `FLANNEL_IPMASQ`
pub const KEY_IPMASQ: &str = "FLANNEL_IPMASQ";

/// The values flanneld publishes in `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The IPv4 overlay network (written when IPv4 is enabled).
    pub network: Option<Ip4Net>,
    /// This node's IPv4 subnet, as leased (network address).
    pub subnet: Option<Ip4Net>,
    /// The IPv6 overlay network (written when IPv6 is enabled).
    pub ipv6_network: Option<Ip6Net>,
    /// This node's IPv6 subnet, as leased.
    pub ipv6_subnet: Option<Ip6Net>,
    /// The MTU pods should use (the backend's).
    pub mtu: u32,
    /// The value of `--ip-masq`.
    pub ip_masq: bool,
}

impl SubnetEnv {
    /// The values for `lease` under `config`, as Go's `WriteSubnetFile` takes
    /// them: a family's lines appear when the config enables that family.
    pub fn new(config: &NetConfig, lease: &Lease, mtu: u32, ip_masq: bool) -> SubnetEnv {
        let v4 = config.enable_ipv4;
        let v6 = config.enable_ipv6;
        SubnetEnv {
            network: v4.then(|| config.network.unwrap_or_else(Ip4Net::any)),
            subnet: lease.subnet.filter(|_| v4),
            ipv6_network: v6.then(|| config.ipv6_network.unwrap_or_else(Ip6Net::any)),
            ipv6_subnet: lease.ipv6_subnet.filter(|_| v6),
            mtu,
            ip_masq,
        }
    }

    /// The file's text, byte for byte as Go flannel writes it (every line,
    /// the last included, ends in `\n`).
    pub fn render(&self) -> String {
        fn host<F: Family>(n: &Cidr<F>) -> String {
            format!("{}/{}", GoIp(n.first_host()), n.prefix_len())
        }
        let mut out = String::with_capacity(192);
        // Writing to a String cannot fail.
        if let Some(n) = &self.network {
            let _ = writeln!(out, "{KEY_NETWORK}={n}");
        }
        if let Some(n) = &self.subnet {
            let _ = writeln!(out, "{KEY_SUBNET}={}", host(n));
        }
        if let Some(n) = &self.ipv6_network {
            let _ = writeln!(out, "{KEY_IPV6_NETWORK}={n}");
        }
        if let Some(n) = &self.ipv6_subnet {
            let _ = writeln!(out, "{KEY_IPV6_SUBNET}={}", host(n));
        }
        let _ = writeln!(out, "{KEY_MTU}={}", self.mtu);
        let _ = writeln!(out, "{KEY_IPMASQ}={}", self.ip_masq);
        out
    }
}

/// A parsed `subnet.env` (or any dotenv-style file): the entries in order,
/// the last value of a repeated key winning, and warnings for skipped lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvFile {
    entries: Vec<(String, String)>,
    /// One message per line that was skipped.
    pub warnings: Vec<String>,
}

/// Reads a quoted value starting after the opening quote; returns the value
/// and whether a closing quote was found.
fn quoted(rest: &str, quote: char) -> Option<String> {
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c == quote => return Some(out),
            '\\' if quote == '"' => match chars.next()? {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

impl EnvFile {
    /// Parses dotenv text the way `godotenv` reads it: blank lines and `#`
    /// comments skipped, an optional `export ` prefix, `KEY=value` or
    /// `KEY: value`, single- or double-quoted values (double quotes take
    /// `\n`-style escapes), and ` #` starting a comment after an unquoted
    /// value. Lines that do not parse are skipped with a warning.
    pub fn parse(text: &str) -> EnvFile {
        let mut file = EnvFile::default();
        for (no, raw_line) in text.lines().enumerate() {
            let line = raw_line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").map_or(line, str::trim_start);
            let sep = line.find(['=', ':']);
            let Some(sep) = sep else {
                file.warnings
                    .push(format!("line {}: no '=' in {line:?}, skipped", no + 1));
                continue;
            };
            let key = line[..sep].trim();
            if !valid_key(key) {
                file.warnings
                    .push(format!("line {}: invalid key {key:?}, skipped", no + 1));
                continue;
            }
            let rest = line[sep + 1..].trim_start();
            let value = match rest.chars().next() {
                Some(q @ ('"' | '\'')) => match quoted(&rest[1..], q) {
                    Some(v) => v,
                    None => {
                        file.warnings.push(format!(
                            "line {}: unterminated quoted value for {key}, skipped",
                            no + 1
                        ));
                        continue;
                    }
                },
                _ => {
                    let end = rest
                        .find(" #")
                        .or_else(|| rest.find("\t#"))
                        .unwrap_or(rest.len());
                    rest[..end].trim_end().to_string()
                }
            };
            file.entries.retain(|(k, _)| k != key);
            file.entries.push((key.to_string(), value));
        }
        file
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All entries in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The comma-separated CIDRs of `key`, each masked to its network
    /// (`10.5.72.1/24` → `10.5.72.0/24`); unparsable entries are skipped and
    /// reported in the second list.
    pub fn cidrs<F: Family>(&self, key: &str) -> (Vec<Cidr<F>>, Vec<String>)
    where
        Cidr<F>: FromStr<Err = IpError>,
    {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for part in self
            .get(key)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match part.parse::<Cidr<F>>() {
                Ok(n) => good.push(n),
                Err(e) => bad.push(format!("couldn't parse {key} entry {part:?}: {e}")),
            }
        }
        (good, bad)
    }

    /// Exactly one CIDR for `key`, as flanneld reads its previous subnet:
    /// none or several give `None` plus Go's warning text.
    pub fn single_cidr<F: Family>(&self, key: &str) -> (Option<Cidr<F>>, Vec<String>)
    where
        Cidr<F>: FromStr<Err = IpError>,
    {
        let (good, mut warnings) = self.cidrs::<F>(key);
        match good.len() {
            1 => (Some(good[0]), warnings),
            0 => {
                warnings.push(format!("no subnet found for key: {key}"));
                (None, warnings)
            }
            _ => {
                warnings.push(format!(
                    "error reading subnet: more than 1 entry found for key: {key}"
                ));
                (None, warnings)
            }
        }
    }

    /// The previous IPv4 lease subnet (`FLANNEL_SUBNET`, masked).
    pub fn previous_subnet(&self) -> (Option<Ip4Net>, Vec<String>) {
        self.single_cidr(KEY_SUBNET)
    }

    /// The previous IPv6 lease subnet (`FLANNEL_IPV6_SUBNET`, masked).
    pub fn previous_ipv6_subnet(&self) -> (Option<Ip6Net>, Vec<String>) {
        self.single_cidr(KEY_IPV6_SUBNET)
    }

    /// The previous IPv4 network (`FLANNEL_NETWORK`).
    pub fn previous_network(&self) -> (Option<Ip4Net>, Vec<String>) {
        self.single_cidr(KEY_NETWORK)
    }

    /// The previous IPv6 network (`FLANNEL_IPV6_NETWORK`).
    pub fn previous_ipv6_network(&self) -> (Option<Ip6Net>, Vec<String>) {
        self.single_cidr(KEY_IPV6_NETWORK)
    }

    /// `FLANNEL_MTU`, if present and a number.
    pub fn mtu(&self) -> Option<u32> {
        self.get(KEY_MTU)?.parse().ok()
    }

    /// `FLANNEL_IPMASQ`, if present and `true`/`false`.
    pub fn ip_masq(&self) -> Option<bool> {
        self.get(KEY_IPMASQ)?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    #[test]
    fn renders_go_bytes_dual_stack() {
        let mut cfg = NetConfig::parse(
            r#"{"EnableIPv6": true, "Network": "10.42.0.0/16", "IPv6Network": "2001:cafe:42::/56"}"#,
        )
        .unwrap();
        cfg.check().unwrap();
        let lease = Lease::new(
            "10.42.0.0-24&2001:cafe:42::-64".parse().unwrap(),
            LeaseAttrs::default(),
        );
        let env = SubnetEnv::new(&cfg, &lease, 1450, true);
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n\
             FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn renders_v4_and_v6_only() {
        let cfg = NetConfig::parse(r#"{"Network": "10.5.0.0/16"}"#).unwrap();
        let lease = Lease::new("10.5.72.0-24".parse().unwrap(), LeaseAttrs::default());
        assert_eq!(
            SubnetEnv::new(&cfg, &lease, 1500, false).render(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
        );
        let cfg = NetConfig::parse(
            r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/48"}"#,
        )
        .unwrap();
        let lease = Lease::new("fd00:0:0:5::-64".parse().unwrap(), LeaseAttrs::default());
        assert_eq!(
            SubnetEnv::new(&cfg, &lease, 1430, true).render(),
            "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:5::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn reads_back_what_it_writes() {
        let env = SubnetEnv {
            network: Some("10.5.0.0/16".parse().unwrap()),
            subnet: Some("10.5.72.0/24".parse().unwrap()),
            ipv6_network: Some("fd00::/48".parse().unwrap()),
            ipv6_subnet: Some("fd00:0:0:5::/64".parse().unwrap()),
            mtu: 1450,
            ip_masq: true,
        };
        let f = EnvFile::parse(&env.render());
        assert!(f.warnings.is_empty());
        assert_eq!(f.previous_subnet(), (env.subnet, vec![]));
        assert_eq!(f.previous_ipv6_subnet(), (env.ipv6_subnet, vec![]));
        assert_eq!(f.previous_network(), (env.network, vec![]));
        assert_eq!(f.previous_ipv6_network(), (env.ipv6_network, vec![]));
        assert_eq!(f.mtu(), Some(1450));
        assert_eq!(f.ip_masq(), Some(true));
    }

    #[test]
    fn comma_lists_skip_bad_entries() {
        // main_test.go cases
        let f = EnvFile::parse(
            "FLANNEL_SUBNET=10.244.1.0/24,not-a-cidr,10.244.2.0/24\nFLANNEL_IPV6_SUBNET=fd00::/64,not-a-cidr,fd01::/64\n",
        );
        let (v4, bad) = f.cidrs::<std::net::Ipv4Addr>(KEY_SUBNET);
        assert_eq!(
            v4,
            vec![
                "10.244.1.0/24".parse().unwrap(),
                "10.244.2.0/24".parse::<Ip4Net>().unwrap()
            ]
        );
        assert_eq!(
            bad,
            [
                "couldn't parse FLANNEL_SUBNET entry \"not-a-cidr\": invalid CIDR address: not-a-cidr"
            ]
        );
        let (v6, _) = f.cidrs::<std::net::Ipv6Addr>(KEY_IPV6_SUBNET);
        assert_eq!(v6.len(), 2);
        let (one, warn) = f.previous_subnet();
        assert_eq!(one, None);
        assert_eq!(
            warn.last().unwrap(),
            "error reading subnet: more than 1 entry found for key: FLANNEL_SUBNET"
        );
        let f = EnvFile::parse("FLANNEL_SUBNET=not-a-cidr\n");
        let (one, warn) = f.previous_subnet();
        assert_eq!(one, None);
        assert_eq!(
            warn.last().unwrap(),
            "no subnet found for key: FLANNEL_SUBNET"
        );
        assert_eq!(EnvFile::parse("").previous_ipv6_subnet().0, None);
    }

    #[test]
    fn tolerant_dotenv_syntax() {
        let f = EnvFile::parse(
            "# written by hand\n\nexport FLANNEL_NETWORK=\"10.5.0.0/16\"\r\nFLANNEL_SUBNET='10.5.72.1/24' # ours\n\
             FLANNEL_MTU=1450 # comment\nFLANNEL_IPMASQ: true\nBROKEN LINE\n=nokey\nBAD-KEY=1\nQ=\"unterminated\n\
             ESC=\"a\\\"b\\nc\"\nFLANNEL_MTU=1400\n",
        );
        assert_eq!(f.get(KEY_NETWORK), Some("10.5.0.0/16"));
        assert_eq!(f.previous_subnet().0, Some("10.5.72.0/24".parse().unwrap()));
        assert_eq!(f.mtu(), Some(1400), "the later value wins");
        assert_eq!(f.ip_masq(), Some(true));
        assert_eq!(f.get("ESC"), Some("a\"b\nc"));
        assert_eq!(f.warnings.len(), 4, "{:?}", f.warnings);
        assert!(f.warnings[0].starts_with("line 7: no '='"));
        assert_eq!(f.entries().count(), 5);
    }
}
