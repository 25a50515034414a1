//! Subnet keys: the names of lease keys under `<prefix>/subnets/`.
//!
//! | lease | key |
//! |---|---|
//! | IPv4 only | `10.5.72.0-24` |
//! | dual stack | `10.12.13.0-24&fd00:12:13::-56` |
//! | IPv6 only (ours; Go has no such form) | `fd00:12:13::-56` |
//!
//! Parsing is stricter than Go's end-anchored regex: the whole text must be a
//! key, and the address must be the network address of its prefix. Go's
//! limits on the prefix digits are kept (IPv4 0–31, IPv6 0–127), so a key Go
//! cannot read is not read here either.

use crate::ip::{GoIp, Ip4Net, Ip6Net};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The subnet(s) a lease holds, which also name its key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    ipv4: Option<Ip4Net>,
    ipv6: Option<Ip6Net>,
}

/// A text that is not a subnet key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid subnet key {0:?}: want <ipv4>-<len>, <ipv4>-<len>&<ipv6>-<len> or <ipv6>-<len>")]
pub struct KeyError(pub String);

impl SubnetKey {
    /// A key for the given subnets; `None` when both are absent.
    pub fn new(ipv4: Option<Ip4Net>, ipv6: Option<Ip6Net>) -> Option<SubnetKey> {
        (ipv4.is_some() || ipv6.is_some()).then_some(SubnetKey { ipv4, ipv6 })
    }

    /// An IPv4-only key.
    pub fn v4(net: Ip4Net) -> SubnetKey {
        SubnetKey {
            ipv4: Some(net),
            ipv6: None,
        }
    }

    /// The IPv4 subnet, if any.
    pub fn ipv4(&self) -> Option<Ip4Net> {
        self.ipv4
    }

    /// The IPv6 subnet, if any.
    pub fn ipv6(&self) -> Option<Ip6Net> {
        self.ipv6
    }

    /// Parses the last path segment of an etcd key such as
    /// `/coreos.com/network/subnets/10.5.72.0-24`.
    pub fn from_path(path: &str) -> Result<SubnetKey, KeyError> {
        path.rsplit('/').next().unwrap_or(path).parse()
    }
}

/// The prefix digits: ASCII decimal (leading zeros allowed, as Go's
/// `ParseUint`), at most `max`.
fn prefix(s: &str, max: u8) -> Option<u8> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u8>().ok().filter(|p| *p <= max)
}

fn v4_part(s: &str) -> Option<Ip4Net> {
    let (addr, len) = s.rsplit_once('-')?;
    // Go's regex only admits dotted decimal here.
    if !addr.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    Ip4Net::new_exact(addr.parse::<Ipv4Addr>().ok()?, prefix(len, 31)?)
}

fn v6_part(s: &str) -> Option<Ip6Net> {
    let (addr, len) = s.rsplit_once('-')?;
    // Go's regex admits lowercase hex digits and colons only.
    if !addr
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b':')
    {
        return None;
    }
    Ip6Net::new_exact(addr.parse::<Ipv6Addr>().ok()?, prefix(len, 127)?)
}

impl FromStr for SubnetKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<SubnetKey, KeyError> {
        let parsed = match s.split_once('&') {
            Some((a, b)) => v4_part(a).zip(v6_part(b)).map(|(a, b)| SubnetKey {
                ipv4: Some(a),
                ipv6: Some(b),
            }),
            None if s.contains('.') => v4_part(s).map(SubnetKey::v4),
            None => v6_part(s).map(|b| SubnetKey {
                ipv4: None,
                ipv6: Some(b),
            }),
        };
        parsed.ok_or_else(|| KeyError(s.to_string()))
    }
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = self.ipv4 {
            write!(f, "{}-{}", n.addr(), n.prefix_len())?;
        }
        if let Some(n) = self.ipv6 {
            if self.ipv4.is_some() {
                f.write_str("&")?;
            }
            write!(f, "{}-{}", GoIp(n.addr()), n.prefix_len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SubnetKey {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn round_trips_all_forms() {
        for k in [
            "10.5.72.0-24",
            "10.12.13.0-24&fd00:12:13::-56",
            "fd00:12:13::-56",
            "0.0.0.0-0",
            "10.0.0.0-31",
            "10.1.0.0-16&::-0",
            "2001:db8::-127",
        ] {
            assert_eq!(key(k).to_string(), k);
        }
        let k = key("10.12.13.0-24&fd00:12:13::-56");
        assert_eq!(k.ipv4().unwrap().to_string(), "10.12.13.0/24");
        assert_eq!(k.ipv6().unwrap().to_string(), "fd00:12:13::/56");
        assert_eq!(key("10.5.72.0-024").to_string(), "10.5.72.0-24");
    }

    #[test]
    fn from_path_takes_last_segment() {
        assert_eq!(
            SubnetKey::from_path("/coreos.com/network/subnets/10.1.5.0-24"),
            Ok(key("10.1.5.0-24"))
        );
        assert_eq!(SubnetKey::from_path("10.1.5.0-24"), Ok(key("10.1.5.0-24")));
        assert!(SubnetKey::from_path("/coreos.com/network/subnets/").is_err());
    }

    #[test]
    fn rejects_what_go_rejects_and_garbage() {
        for bad in [
            "",
            "10.5.72.0-32",
            "10.5.72.0",
            "10.5.72.0-",
            "10.5.72.1-24",
            "10.5.72-24",
            "10.5.72.0-+4",
            "x10.5.72.0-24",
            "10.5.72.0-24&",
            "10.5.72.0-24&FD00::-56",
            "10.5.72.0-24&fd00::-128",
            "fd00::-128",
            "fd00::1-64",
            "::ffff:1.2.3.0-120",
            "&fd00::-56",
            "10.5.72.0-24&10.5.73.0-24",
            "010.5.72.0-24",
            "10.5.72.0-24 ",
            "fd00::-56&10.5.72.0-24",
            "10.5.72.0-1234",
        ] {
            assert!(bad.parse::<SubnetKey>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            "nope".parse::<SubnetKey>().unwrap_err().to_string(),
            "invalid subnet key \"nope\": want <ipv4>-<len>, <ipv4>-<len>&<ipv6>-<len> or <ipv6>-<len>"
        );
    }

    #[test]
    fn mapped_ipv6_keys_round_trip_in_hex() {
        // Found by fuzzing: Go's dotted form of a mapped address is not a key.
        for (input, text) in [
            ("0:0:0:00:0:ffff::-106", "::ffff:0:0-106"),
            ("::ffff:102:300-120", "::ffff:102:300-120"),
        ] {
            let k = key(input);
            assert_eq!(k.to_string(), text);
            assert_eq!(key(text), k);
        }
    }

    #[test]
    fn new_needs_a_subnet() {
        assert_eq!(SubnetKey::new(None, None), None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_key_round_trips(a in any::<u32>(), l in 0u8..=31, b in any::<u128>(), l6 in 0u8..=127, which in 0u8..3) {
                let v4 = Ip4Net::new(Ipv4Addr::from(a), l).unwrap();
                let v6 = Ip6Net::new(Ipv6Addr::from(b), l6).unwrap();
                let k = match which {
                    0 => SubnetKey::new(Some(v4), None),
                    1 => SubnetKey::new(None, Some(v6)),
                    _ => SubnetKey::new(Some(v4), Some(v6)),
                }.unwrap();
                let text = k.to_string();
                prop_assert_eq!(text.parse::<SubnetKey>().unwrap(), k);
            }
        }
    }
}
