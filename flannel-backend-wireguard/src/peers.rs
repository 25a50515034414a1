//! Lease data and the desired WireGuard peers: pure functions of the remote
//! leases, our options and our addresses.

use crate::keys::Key;
use crate::options::{Mode, TYPE, WireguardOptions};
use flannel_core::gojson::{RawJson, decode_struct};
use flannel_core::lease::Lease;
use flannel_core::reconcile::Object as ReconcileObject;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The name of the IPv4 device (and of the only device in the single-device
/// modes).
pub const DEVICE_V4: &str = "flannel-wg";
/// The name of the IPv6 device in `separate` mode.
pub const DEVICE_V6: &str = "flannel-wg-v6";

/// The backend data of a wireguard lease:
/// `{"PublicKey":"<base64>","Port":51820}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgLeaseData {
    /// The peer's public key, base64 as written (decoded when used).
    pub public_key: String,
    /// The peer's listen port; 0 when the lease does not say (older Go
    /// flannel), in which case our own port is used.
    pub port: u16,
}

impl WgLeaseData {
    /// The JSON Go writes.
    pub fn to_raw(&self) -> RawJson {
        let mut s = String::from("{\"PublicKey\":");
        flannel_core::gojson::write_string(&mut s, &self.public_key);
        s.push_str(&format!(",\"Port\":{}}}", self.port));
        RawJson::new(&s).expect("valid JSON")
    }

    /// Decodes a peer's data as Go does (keys case-insensitive, unknown
    /// keys ignored, `null` = empty).
    pub fn parse(raw: &RawJson) -> Result<WgLeaseData, String> {
        let Some(obj) = decode_struct(
            Some(raw),
            "wireguardLeaseAttrs",
            "wireguard.wireguardLeaseAttrs",
        )
        .map_err(|e| e.0)?
        else {
            return Ok(WgLeaseData {
                public_key: String::new(),
                port: 0,
            });
        };
        Ok(WgLeaseData {
            public_key: obj
                .string("PublicKey")
                .map_err(|e| e.0)?
                .unwrap_or_default(),
            port: obj
                .uint("Port", "uint16", u64::from(u16::MAX))
                .map_err(|e| e.0)?
                .unwrap_or(0) as u16,
        })
    }
}

/// An allowed-IPs entry: a network and its prefix length.
pub type AllowedIp = (IpAddr, u8);

/// One peer of a device, as flannel configures it (what `wg set <dev> peer
/// <key> endpoint <ep> allowed-ips <...> persistent-keepalive <n>
/// preshared-key <file>` sets).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's public key.
    pub public_key: Key,
    /// Where to send to (`None`: only answer).
    pub endpoint: Option<SocketAddr>,
    /// The subnets routed to this peer, sorted.
    pub allowed_ips: Vec<AllowedIp>,
    /// The pre-shared key.
    pub psk: Option<Key>,
    /// Persistent keepalive in seconds (0 = off).
    pub keepalive: u16,
}

impl fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl PeerConfig {
    /// Sorts the allowed IPs (the order never matters to WireGuard).
    pub fn normalized(mut self) -> PeerConfig {
        self.allowed_ips.sort();
        self.allowed_ips.dedup();
        self
    }
}

impl ReconcileObject for PeerConfig {
    type Key = [u8; 32];

    fn key(&self) -> [u8; 32] {
        *self.public_key.as_bytes()
    }

    fn satisfies(&self, desired: &PeerConfig) -> bool {
        let mut have = self.allowed_ips.clone();
        have.sort();
        self.endpoint == desired.endpoint
            && have == desired.allowed_ips
            && self.psk == desired.psk
            && self.keepalive == desired.keepalive
    }

    fn describe(&self) -> String {
        let mut s = format!("peer {}", self.public_key.to_base64());
        if let Some(ep) = self.endpoint {
            s.push_str(&format!(" endpoint {ep}"));
        }
        let ips: Vec<String> = self
            .allowed_ips
            .iter()
            .map(|(a, p)| format!("{a}/{p}"))
            .collect();
        s.push_str(&format!(" allowed-ips {}", ips.join(",")));
        if self.keepalive > 0 {
            s.push_str(&format!(" persistent-keepalive {}", self.keepalive));
        }
        if self.psk.is_some() {
            s.push_str(" preshared-key (set)");
        }
        s
    }
}

/// Which device a peer set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRole {
    /// `flannel-wg` in `separate` mode: IPv4 subnets, IPv4 endpoints.
    V4,
    /// `flannel-wg-v6` in `separate` mode.
    V6,
    /// `flannel-wg` in `auto`/`ipv4`/`ipv6` mode: both families.
    Single(Mode),
}

impl DeviceRole {
    /// The device name.
    pub fn name(self) -> &'static str {
        match self {
            DeviceRole::V6 => DEVICE_V6,
            _ => DEVICE_V4,
        }
    }
}

/// Why a lease gets no peer on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Another backend's lease.
    OtherType(String),
    /// The lease has none of the families this device carries.
    NoFamily,
    /// The backend data or the key in it did not decode.
    BadData(String),
    /// No address for the endpoint this mode wants.
    NoEndpoint(String),
}

/// Our side, as the endpoint choice needs it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalAddrs {
    /// Our IPv4 public address (`ExtAddr`).
    pub ext_addr: Option<Ipv4Addr>,
    /// Our IPv6 public address (`ExtV6Addr`).
    pub ext_v6_addr: Option<Ipv6Addr>,
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    ip.is_private()
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    // Go's IsPrivate for IPv6: fc00::/7 (unique local).
    ip.segments()[0] & 0xfe00 == 0xfc00
}

/// Go's `selectPublicEndpoint` for `auto` mode: the remote's IPv4 when it
/// has no IPv6, or when its IPv4 is public and we have an IPv4 address; its
/// IPv6 when that is global and ours is too; otherwise IPv4.
pub fn auto_endpoint_ip(
    remote_v4: Ipv4Addr,
    remote_v6: Option<Ipv6Addr>,
    local: LocalAddrs,
) -> IpAddr {
    let Some(v6) = remote_v6 else {
        return IpAddr::V4(remote_v4);
    };
    if !is_private_v4(remote_v4) && local.ext_addr.is_some() {
        return IpAddr::V4(remote_v4);
    }
    if !is_private_v6(v6) && local.ext_v6_addr.is_some_and(|l| !is_private_v6(l)) {
        return IpAddr::V6(v6);
    }
    IpAddr::V4(remote_v4)
}

fn data(raw: Option<&RawJson>) -> Result<WgLeaseData, Skip> {
    match raw {
        // Go decodes nothing and goes on with an empty key (which then
        // fails to parse).
        None => Ok(WgLeaseData {
            public_key: String::new(),
            port: 0,
        }),
        Some(r) => WgLeaseData::parse(r)
            .map_err(|e| Skip::BadData(format!("failed to unmarshal BackendData: {e}"))),
    }
}

fn key(d: &WgLeaseData) -> Result<Key, Skip> {
    Key::parse(&d.public_key).map_err(|e| Skip::BadData(format!("public key: {e}")))
}

/// The peer `lease` needs on the device of `role` whose listen port is
/// `own_port` (see the crate docs for Go's rules).
pub fn peer_for(
    lease: &Lease,
    role: DeviceRole,
    own_port: u16,
    opts: &WireguardOptions,
    local: LocalAddrs,
) -> Result<PeerConfig, Skip> {
    if lease.attrs.backend_type != TYPE {
        return Err(Skip::OtherType(lease.attrs.backend_type.clone()));
    }
    let port_or_own = |p: u16| if p == 0 { own_port } else { p };
    let peer = |public_key, endpoint, allowed_ips| {
        PeerConfig {
            public_key,
            endpoint: Some(endpoint),
            allowed_ips,
            psk: opts.psk.clone(),
            keepalive: opts.keepalive,
        }
        .normalized()
    };
    match role {
        DeviceRole::V4 => {
            let sn = lease.subnet.ok_or(Skip::NoFamily)?;
            let d = data(lease.attrs.backend_data.as_ref())?;
            let ep = SocketAddr::new(IpAddr::V4(lease.attrs.public_ip), port_or_own(d.port));
            Ok(peer(
                key(&d)?,
                ep,
                vec![(IpAddr::V4(sn.addr()), sn.prefix_len())],
            ))
        }
        DeviceRole::V6 => {
            let sn = lease.ipv6_subnet.ok_or(Skip::NoFamily)?;
            let d = data(lease.attrs.backend_v6_data.as_ref())?;
            let ip = lease
                .attrs
                .public_ipv6
                .ok_or_else(|| Skip::NoEndpoint("the lease has no PublicIPv6".into()))?;
            let ep = SocketAddr::new(IpAddr::V6(ip), port_or_own(d.port));
            Ok(peer(
                key(&d)?,
                ep,
                vec![(IpAddr::V6(sn.addr()), sn.prefix_len())],
            ))
        }
        DeviceRole::Single(mode) => {
            if lease.subnet.is_none() && lease.ipv6_subnet.is_none() {
                return Err(Skip::NoFamily);
            }
            let mut allowed = Vec::new();
            let mut v4data = None;
            let mut chosen = None;
            if let Some(sn) = lease.subnet {
                let d = data(lease.attrs.backend_data.as_ref())?;
                allowed.push((IpAddr::V4(sn.addr()), sn.prefix_len()));
                v4data = Some(d.clone());
                chosen = Some(d);
            }
            if let Some(sn) = lease.ipv6_subnet {
                // As Go: the IPv6 data's key wins when the lease has both.
                chosen = Some(data(lease.attrs.backend_v6_data.as_ref())?);
                allowed.push((IpAddr::V6(sn.addr()), sn.prefix_len()));
            }
            let chosen = chosen.expect("one family present");
            let ip = match mode {
                Mode::Ipv6 => IpAddr::V6(lease.attrs.public_ipv6.ok_or_else(|| {
                    Skip::NoEndpoint("ipv6 mode and the lease has no PublicIPv6".into())
                })?),
                Mode::Auto => {
                    auto_endpoint_ip(lease.attrs.public_ip, lease.attrs.public_ipv6, local)
                }
                Mode::Ipv4 | Mode::Separate => IpAddr::V4(lease.attrs.public_ip),
            };
            // The remote's only device listens on its ListenPort, which its
            // IPv4 data carries (its IPv6 data names ListenPortV6 even in
            // these modes); without IPv4 data, our own port, as Go.
            let port = port_or_own(v4data.map(|d| d.port).unwrap_or(0));
            Ok(peer(key(&chosen)?, SocketAddr::new(ip, port), allowed))
        }
    }
}

/// The peers of the device of `role` for all `leases`, and the leases
/// skipped with their reason.
pub fn desired_peers(
    leases: &[&Lease],
    role: DeviceRole,
    own_port: u16,
    opts: &WireguardOptions,
    local: LocalAddrs,
) -> (Vec<PeerConfig>, Vec<(String, Skip)>) {
    let mut peers = Vec::new();
    let mut skipped = Vec::new();
    for l in leases {
        match peer_for(l, role, own_port, opts, local) {
            Ok(p) => peers.push(p),
            Err(s) => skipped.push((l.key().to_string(), s)),
        }
    }
    (peers, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_core::key::SubnetKey;
    use flannel_core::lease::LeaseAttrs;

    const K1: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    const K2: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn lease(key: &str, json: &str) -> Lease {
        let k: SubnetKey = key.parse().unwrap();
        Lease::new(k, LeaseAttrs::from_json(json).unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lease_data_bytes_as_go() {
        let d = WgLeaseData {
            public_key: K1.into(),
            port: 51820,
        };
        assert_eq!(
            d.to_raw().get(),
            r#"{"PublicKey":"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=","Port":51820}"#
        );
        let mut attrs = LeaseAttrs::new("192.168.1.2".parse().unwrap());
        attrs.backend_type = TYPE.into();
        attrs.backend_data = Some(d.to_raw());
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"192.168.1.2","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=","Port":51820}}"#
        );
        assert_eq!(WgLeaseData::parse(&d.to_raw()).unwrap(), d);
        // Older Go flannel writes no port; keys are case-insensitive.
        assert_eq!(
            WgLeaseData::parse(&RawJson::new(&format!(r#"{{"publickey":"{K1}"}}"#)).unwrap())
                .unwrap(),
            WgLeaseData {
                public_key: K1.into(),
                port: 0
            }
        );
        assert!(
            WgLeaseData::parse(&RawJson::new(r#"{"Port":70000}"#).unwrap())
                .unwrap_err()
                .contains("of type uint16")
        );
    }

    fn v4_lease(pubip: &str, port: Option<u16>) -> Lease {
        let data = match port {
            Some(p) => format!(r#"{{"PublicKey":"{K1}","Port":{p}}}"#),
            None => format!(r#"{{"PublicKey":"{K1}"}}"#),
        };
        lease(
            "10.5.3.0-24",
            &format!(r#"{{"PublicIP":"{pubip}","BackendType":"wireguard","BackendData":{data}}}"#),
        )
    }

    #[test]
    fn separate_mode_v4_peer_and_port_fallback() {
        let mut opts = WireguardOptions {
            keepalive: 25,
            psk: Some(Key::parse(K2).unwrap()),
            ..WireguardOptions::default()
        };
        let p = peer_for(
            &v4_lease("192.168.0.2", Some(5555)),
            DeviceRole::V4,
            51820,
            &opts,
            LocalAddrs::default(),
        )
        .unwrap();
        assert_eq!(p.public_key.to_base64(), K1);
        assert_eq!(p.endpoint, Some("192.168.0.2:5555".parse().unwrap()));
        assert_eq!(p.allowed_ips, vec![(ip("10.5.3.0"), 24)]);
        assert_eq!(p.keepalive, 25);
        assert_eq!(p.psk, opts.psk);
        // Port 0 or absent: our own device's port.
        for port in [Some(0), None] {
            let p = peer_for(
                &v4_lease("192.168.0.2", port),
                DeviceRole::V4,
                51820,
                &opts,
                LocalAddrs::default(),
            )
            .unwrap();
            assert_eq!(p.endpoint, Some("192.168.0.2:51820".parse().unwrap()));
        }
        opts.psk = None;
        let p = peer_for(
            &v4_lease("192.168.0.2", None),
            DeviceRole::V4,
            7,
            &opts,
            LocalAddrs::default(),
        )
        .unwrap();
        assert!(p.psk.is_none());
        assert_eq!(
            peer_for(
                &v4_lease("192.168.0.2", None),
                DeviceRole::V6,
                51821,
                &opts,
                LocalAddrs::default()
            ),
            Err(Skip::NoFamily)
        );
        let other = lease(
            "10.5.4.0-24",
            r#"{"PublicIP":"192.168.0.3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
        );
        assert_eq!(
            peer_for(&other, DeviceRole::V4, 51820, &opts, LocalAddrs::default()),
            Err(Skip::OtherType("vxlan".into()))
        );
        let bad = lease(
            "10.5.4.0-24",
            r#"{"PublicIP":"192.168.0.3","BackendType":"wireguard","BackendData":{"PublicKey":"nope"}}"#,
        );
        assert!(matches!(
            peer_for(&bad, DeviceRole::V4, 51820, &opts, LocalAddrs::default()),
            Err(Skip::BadData(_))
        ));
    }

    fn dual(pub4: &str, pub6: &str) -> Lease {
        lease(
            "10.5.3.0-24&fd00:5:3::-64",
            &format!(
                r#"{{"PublicIP":"{pub4}","PublicIPv6":"{pub6}","BackendType":"wireguard","BackendData":{{"PublicKey":"{K1}","Port":51820}},"BackendV6Data":{{"PublicKey":"{K2}","Port":51821}}}}"#
            ),
        )
    }

    #[test]
    fn modes_on_dual_stack() {
        let opts = WireguardOptions::default();
        let local = LocalAddrs {
            ext_addr: Some("192.168.0.1".parse().unwrap()),
            ext_v6_addr: Some("2001:db8::1".parse().unwrap()),
        };
        let l = dual("192.168.0.2", "2001:db8::2");
        // separate: one peer per device, each with its family's key and port.
        let v4 = peer_for(&l, DeviceRole::V4, 51820, &opts, local).unwrap();
        let v6 = peer_for(&l, DeviceRole::V6, 51821, &opts, local).unwrap();
        assert_eq!(
            (
                v4.public_key.to_base64().as_str(),
                v4.endpoint.unwrap().to_string()
            ),
            (K1, "192.168.0.2:51820".into())
        );
        assert_eq!(
            (
                v6.public_key.to_base64().as_str(),
                v6.endpoint.unwrap().to_string()
            ),
            (K2, "[2001:db8::2]:51821".into())
        );
        assert_eq!(v6.allowed_ips, vec![(ip("fd00:5:3::"), 64)]);
        // Single device: both subnets, the IPv6 data's key, the device port.
        for (mode, ep) in [
            (Mode::Ipv4, "192.168.0.2:51820"),
            (Mode::Ipv6, "[2001:db8::2]:51820"),
            // Private remote IPv4, global IPv6 on both sides: IPv6.
            (Mode::Auto, "[2001:db8::2]:51820"),
        ] {
            let p = peer_for(&l, DeviceRole::Single(mode), 51820, &opts, local).unwrap();
            assert_eq!(p.public_key.to_base64(), K2, "{mode:?}");
            assert_eq!(p.endpoint.unwrap().to_string(), ep, "{mode:?}");
            assert_eq!(
                p.allowed_ips,
                vec![(ip("10.5.3.0"), 24), (ip("fd00:5:3::"), 64)]
            );
        }
        // auto: public remote IPv4 wins when we have IPv4.
        let p = peer_for(
            &dual("203.0.113.2", "2001:db8::2"),
            DeviceRole::Single(Mode::Auto),
            51820,
            &opts,
            local,
        )
        .unwrap();
        assert_eq!(p.endpoint.unwrap().to_string(), "203.0.113.2:51820");
        // auto: a ULA remote IPv6 falls back to IPv4.
        let p = peer_for(
            &dual("192.168.0.2", "fd00::2"),
            DeviceRole::Single(Mode::Auto),
            51820,
            &opts,
            local,
        )
        .unwrap();
        assert_eq!(p.endpoint.unwrap().to_string(), "192.168.0.2:51820");
        // auto: our own IPv6 is ULA: IPv4.
        let ula = LocalAddrs {
            ext_v6_addr: Some("fd00::1".parse().unwrap()),
            ..local
        };
        let p = peer_for(&l, DeviceRole::Single(Mode::Auto), 51820, &opts, ula).unwrap();
        assert_eq!(p.endpoint.unwrap().to_string(), "192.168.0.2:51820");
        // ipv6 mode without a remote IPv6 address: skipped, not a panic.
        assert!(matches!(
            peer_for(
                &v4_lease("192.168.0.2", None),
                DeviceRole::Single(Mode::Ipv6),
                51820,
                &opts,
                local
            ),
            Err(Skip::NoEndpoint(_))
        ));
        let (peers, skipped) = desired_peers(
            &[&l, &v4_lease("192.168.0.9", None)],
            DeviceRole::V6,
            51821,
            &opts,
            local,
        );
        assert_eq!(peers.len(), 1);
        assert_eq!(skipped, vec![("10.5.3.0-24".to_string(), Skip::NoFamily)]);
    }

    #[test]
    fn peer_comparison_ignores_allowed_ip_order() {
        let want = peer_for(
            &dual("192.168.0.2", "2001:db8::2"),
            DeviceRole::Single(Mode::Ipv4),
            51820,
            &WireguardOptions::default(),
            LocalAddrs::default(),
        )
        .unwrap();
        let mut found = want.clone();
        found.allowed_ips.reverse();
        assert!(found.satisfies(&want));
        found.endpoint = Some("192.168.0.3:51820".parse().unwrap());
        assert!(!found.satisfies(&want));
        assert!(want.describe().starts_with(&format!(
            "peer {K2} endpoint 192.168.0.2:51820 allowed-ips 10.5.3.0/24,fd00:5:3::/64"
        )));
    }
}
