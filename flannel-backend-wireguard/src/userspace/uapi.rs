//! The WireGuard cross-platform userspace API (UAPI): `get=1` and `set=1`
//! in `key=value` lines over a Unix socket at
//! `/var/run/wireguard/<ifname>.sock`, the interface `wg show` and `wg set`
//! use for userspace devices.

use super::core::WgCore;
use crate::keys::Key;
use crate::peers::PeerConfig;
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::UNIX_EPOCH;

/// The socket directory `wg` looks in.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/wireguard";

/// The environment variable that moves the socket directory (tests run
/// several devices of one name on one machine; `wg` then runs in a mount
/// namespace where that directory is `/var/run/wireguard`).
pub const SOCKET_DIR_ENV: &str = "FLANNEL_WIREGUARD_SOCKET_DIR";

const EINVAL: i32 = 22;
const EPROTO: i32 = 71;
const EOPNOTSUPP: i32 = 95;

fn hex(k: &Key) -> String {
    k.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex_key(s: &str) -> Option<Key> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Key::from_bytes(out))
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = s.split_once('/')?;
    let a: IpAddr = a.parse().ok()?;
    let p: u8 = p.parse().ok()?;
    let max = if a.is_ipv4() { 32 } else { 128 };
    (p <= max).then_some((a, p))
}

/// The answer to `get=1`.
pub fn get(core: &WgCore) -> String {
    let mut out = String::new();
    if let Some(k) = core.private_key() {
        let _ = writeln!(out, "private_key={}", hex(&k));
    }
    let _ = writeln!(out, "listen_port={}", core.listen_port());
    for p in core.status().peers {
        let c = &p.config;
        let _ = writeln!(out, "public_key={}", hex(&c.public_key));
        let _ = writeln!(
            out,
            "preshared_key={}",
            c.psk.as_ref().map(hex).unwrap_or_else(|| "0".repeat(64))
        );
        let _ = writeln!(out, "protocol_version=1");
        if let Some(ep) = c.endpoint {
            let _ = writeln!(out, "endpoint={ep}");
        }
        let (sec, nsec) = p
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| (d.as_secs(), d.subsec_nanos()))
            .unwrap_or((0, 0));
        let _ = writeln!(out, "last_handshake_time_sec={sec}");
        let _ = writeln!(out, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(out, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(out, "persistent_keepalive_interval={}", c.keepalive);
        for (a, pfx) in &c.allowed_ips {
            let _ = writeln!(out, "allowed_ip={a}/{pfx}");
        }
    }
    out.push_str("errno=0\n\n");
    out
}

/// A peer section of a `set=1` request.
struct PeerEdit {
    key: Key,
    remove: bool,
    update_only: bool,
    psk: Option<Option<Key>>,
    endpoint: Option<SocketAddr>,
    keepalive: Option<u16>,
    replace_allowed: bool,
    allowed: Vec<(IpAddr, u8)>,
}

impl PeerEdit {
    fn new(key: Key) -> PeerEdit {
        PeerEdit {
            key,
            remove: false,
            update_only: false,
            psk: None,
            endpoint: None,
            keepalive: None,
            replace_allowed: false,
            allowed: Vec::new(),
        }
    }

    fn apply(self, core: &WgCore) -> Result<(), i32> {
        if self.remove {
            core.remove_peer(&self.key);
            return Ok(());
        }
        let existing = core
            .status()
            .peers
            .into_iter()
            .find(|p| p.config.public_key == self.key)
            .map(|p| p.config);
        if existing.is_none() && self.update_only {
            return Ok(());
        }
        let mut cfg = existing.unwrap_or(PeerConfig {
            public_key: self.key.clone(),
            endpoint: None,
            allowed_ips: Vec::new(),
            psk: None,
            keepalive: 0,
        });
        if let Some(psk) = self.psk {
            cfg.psk = psk;
        }
        if let Some(ep) = self.endpoint {
            cfg.endpoint = Some(ep);
        }
        if let Some(k) = self.keepalive {
            cfg.keepalive = k;
        }
        if self.replace_allowed {
            cfg.allowed_ips.clear();
        }
        cfg.allowed_ips.extend(self.allowed);
        core.set_peer(&cfg.normalized()).map(drop).ok_or(EINVAL)
    }
}

/// Applies a `set=1` request (the lines after `set=1`); the answer is
/// `errno=0` or the errno of the first problem. Changes before a bad line
/// stay applied, as in wireguard-go.
pub fn set(core: &WgCore, body: &str) -> String {
    let result = (|| -> Result<(), i32> {
        let mut peer: Option<PeerEdit> = None;
        for line in body.lines().filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once('=').ok_or(EPROTO)?;
            match (k, peer.as_mut()) {
                ("private_key", None) => {
                    let key = parse_hex_key(v).ok_or(EINVAL)?;
                    core.configure(&key, core.listen_port());
                }
                ("listen_port", None) => {
                    // The socket is bound once; only the same port is accepted.
                    let port: u16 = v.parse().map_err(|_| EINVAL)?;
                    if port != core.listen_port() {
                        return Err(EOPNOTSUPP);
                    }
                }
                ("fwmark", None) => {
                    if v != "0" {
                        return Err(EOPNOTSUPP);
                    }
                }
                ("replace_peers", None) => {
                    if v == "true" {
                        core.clear_peers();
                    }
                }
                ("public_key", _) => {
                    if let Some(p) = peer.take() {
                        p.apply(core)?;
                    }
                    peer = Some(PeerEdit::new(parse_hex_key(v).ok_or(EINVAL)?));
                }
                ("remove", Some(p)) => p.remove = v == "true",
                ("update_only", Some(p)) => p.update_only = v == "true",
                ("preshared_key", Some(p)) => {
                    let k = parse_hex_key(v).ok_or(EINVAL)?;
                    p.psk = Some((k.as_bytes() != &[0; 32]).then_some(k));
                }
                ("endpoint", Some(p)) => {
                    p.endpoint = Some(v.parse().map_err(|_| EINVAL)?);
                }
                ("persistent_keepalive_interval", Some(p)) => {
                    p.keepalive = Some(v.parse().map_err(|_| EINVAL)?);
                }
                ("replace_allowed_ips", Some(p)) => p.replace_allowed = v == "true",
                ("allowed_ip", Some(p)) => p.allowed.push(parse_cidr(v).ok_or(EINVAL)?),
                ("protocol_version", Some(_)) => {
                    if v != "1" {
                        return Err(EPROTO);
                    }
                }
                _ => return Err(EPROTO),
            }
        }
        if let Some(p) = peer.take() {
            p.apply(core)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => "errno=0\n\n".to_string(),
        Err(e) => format!("errno={e}\n\n"),
    }
}

/// Answers one request text (`get=1\n\n` or `set=1\n...\n\n`).
pub fn handle(core: &WgCore, request: &str) -> String {
    if let Some(rest) = request.strip_prefix("set=1\n") {
        set(core, rest)
    } else if request.starts_with("get=1\n") {
        get(core)
    } else {
        format!("errno={EPROTO}\n\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_and_set_round_trip() {
        let core = WgCore::new();
        let key = Key::generate_private();
        core.configure(&key, 51820);
        let peer = Key::generate_private().public_key();
        let psk = Key::generate_private();
        let req = format!(
            "set=1\npublic_key={}\npreshared_key={}\nendpoint=192.168.0.2:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.5.2.0/24\nallowed_ip=fd00:5:2::/64\n\n",
            hex(&peer),
            hex(&psk)
        );
        assert_eq!(handle(&core, &req), "errno=0\n\n");
        let got = handle(&core, "get=1\n\n");
        let want_lines = [
            format!("private_key={}", hex(&key)),
            "listen_port=51820".into(),
            format!("public_key={}", hex(&peer)),
            format!("preshared_key={}", hex(&psk)),
            "protocol_version=1".into(),
            "endpoint=192.168.0.2:51820".into(),
            "last_handshake_time_sec=0".into(),
            "persistent_keepalive_interval=25".into(),
            "allowed_ip=10.5.2.0/24".into(),
            "allowed_ip=fd00:5:2::/64".into(),
        ];
        for l in want_lines {
            assert!(got.lines().any(|g| g == l), "{l} missing in\n{got}");
        }
        assert!(got.ends_with("errno=0\n\n"));
        // Remove it again.
        let req = format!("set=1\npublic_key={}\nremove=true\n\n", hex(&peer));
        assert_eq!(handle(&core, &req), "errno=0\n\n");
        assert!(core.status().peers.is_empty());
        // Bad input is an errno, never a panic.
        assert_eq!(handle(&core, "set=1\npublic_key=zz\n\n"), "errno=22\n\n");
        assert_eq!(
            handle(&core, "set=1\nendpoint=1.2.3.4:5\n\n"),
            "errno=71\n\n"
        );
        assert_eq!(handle(&core, "set=1\nlisten_port=1\n\n"), "errno=95\n\n");
        assert_eq!(handle(&core, "hello\n\n"), "errno=71\n\n");
    }
}
