//! IP and CIDR arithmetic with one API shape for IPv4 and IPv6.
//!
//! [`Cidr<F>`] is generic over the address family ([`Ipv4Addr`] or [`Ipv6Addr`]);
//! [`Ip4Net`] and [`Ip6Net`] are the two instances. Every value is canonical: the
//! host bits of the address are zero, as Go flannel's `net.ParseCIDR`-based parsing
//! leaves them. Arithmetic is done on `u128` internally, so `/0`, `/32`, `/128` and
//! the top of the address space never overflow or panic; operations that would
//! leave the address space return `None`.
//!
//! Text forms follow Go: `net.ParseCIDR` rules for parsing (prefix digits may carry
//! leading zeros, no zones) and `net.IP.String()` for printing, except that
//! IPv4-mapped IPv6 addresses print in hex (`::ffff:102:304`) rather than Go's
//! dotted form, which cannot be read back as IPv6.
//!
//! ```
//! use flannel_core::ip::Ip4Net;
//! let net: Ip4Net = "10.5.3.7/16".parse().unwrap();
//! assert_eq!(net.to_string(), "10.5.0.0/16");
//! let subnets: Vec<_> = net.subnets(18).unwrap().map(|s| s.to_string()).collect();
//! assert_eq!(subnets, ["10.5.0.0/18", "10.5.64.0/18", "10.5.128.0/18", "10.5.192.0/18"]);
//! ```

use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Errors from parsing or building addresses and CIDRs.
///
/// The texts are Go flannel's, so logs and `config check` output read the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpError {
    /// Not a CIDR at all (`net.ParseCIDR` failed); carries the input text.
    #[error("invalid CIDR address: {0}")]
    InvalidCidr(String),
    /// A valid CIDR of the other family where IPv4 was required.
    #[error("invalid IPv4 CIDR format")]
    NotIpv4Cidr,
    /// A valid CIDR of the other family where IPv6 was required.
    #[error("invalid IPv6 CIDR format")]
    NotIpv6Cidr,
    /// Not an IP address at all.
    #[error("invalid IP address format")]
    InvalidIp,
    /// A valid IP of the other family where IPv4 was required.
    #[error("invalid IPv4 address format")]
    NotIpv4,
    /// A valid IP of the other family where IPv6 was required.
    #[error("invalid IPv6 address format")]
    NotIpv6,
    /// A prefix length longer than the family's address width.
    #[error("prefix length {len} is longer than {bits} bits")]
    PrefixTooLong {
        /// The prefix length asked for.
        len: u8,
        /// The family's address width.
        bits: u8,
    },
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::net::Ipv4Addr {}
    impl Sealed for std::net::Ipv6Addr {}
}

/// An IP address family: [`Ipv4Addr`] or [`Ipv6Addr`].
///
/// Sealed; it exists so [`Cidr`] has one implementation for both families.
pub trait Family:
    sealed::Sealed + Copy + Eq + Ord + Hash + fmt::Debug + Send + Sync + 'static
{
    /// Address width in bits (32 or 128).
    const BITS: u8;
    /// Human name of the family, for messages.
    const NAME: &'static str;
    /// The address as an integer (network byte order, most significant first).
    fn to_u128(self) -> u128;
    /// The address from an integer; bits above [`Family::BITS`] are ignored.
    fn from_u128(v: u128) -> Self;
    /// Go's `net.ParseIP` restricted to this family (IPv4-mapped IPv6 text counts
    /// as IPv4, as in Go).
    fn parse_go(s: &str) -> Result<Self, IpError>;
    /// Writes the address as Go's `net.IP.String()` does.
    fn fmt_go(self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
    /// Picks this family's address out of an [`IpAddr`], if it is one.
    fn from_ip(ip: IpAddr) -> Option<Self>;
    /// The address as an [`IpAddr`].
    fn to_ip(self) -> IpAddr;
}

/// Go's `net.ParseIP`: dotted IPv4 or IPv6 text without a zone.
pub fn parse_ip_go(s: &str) -> Result<IpAddr, IpError> {
    if let Ok(v4) = s.parse::<Ipv4Addr>() {
        return Ok(IpAddr::V4(v4));
    }
    match s.parse::<Ipv6Addr>() {
        Ok(v6) => Ok(IpAddr::V6(v6)),
        Err(_) => Err(IpError::InvalidIp),
    }
}

impl Family for Ipv4Addr {
    const BITS: u8 = 32;
    const NAME: &'static str = "IPv4";
    fn to_u128(self) -> u128 {
        u128::from(u32::from(self))
    }
    fn from_u128(v: u128) -> Self {
        Ipv4Addr::from(v as u32)
    }
    fn parse_go(s: &str) -> Result<Self, IpError> {
        match parse_ip_go(s)? {
            IpAddr::V4(v4) => Ok(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped().ok_or(IpError::NotIpv4),
        }
    }
    fn fmt_go(self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self, f)
    }
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        }
    }
    fn to_ip(self) -> IpAddr {
        IpAddr::V4(self)
    }
}

impl Family for Ipv6Addr {
    const BITS: u8 = 128;
    const NAME: &'static str = "IPv6";
    fn to_u128(self) -> u128 {
        u128::from(self)
    }
    fn from_u128(v: u128) -> Self {
        Ipv6Addr::from(v)
    }
    fn parse_go(s: &str) -> Result<Self, IpError> {
        match parse_ip_go(s)? {
            IpAddr::V6(v6) => Ok(v6),
            IpAddr::V4(_) => Err(IpError::NotIpv6),
        }
    }
    fn fmt_go(self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // RFC 5952 as Go and Rust print it, except IPv4-mapped addresses:
        // Go prints those dotted (`1.2.3.4`) and Rust as `::ffff:1.2.3.4`,
        // and neither form survives being read back as an IPv6 subnet key
        // (whose grammar is hex digits and colons) or, for Go's, as an IPv6
        // CIDR. Hex-only text (`::ffff:102:304`) reads back everywhere.
        match self.to_ipv4_mapped() {
            Some(_) => {
                let s = self.segments();
                write!(f, "::ffff:{:x}:{:x}", s[6], s[7])
            }
            None => fmt::Display::fmt(&self, f),
        }
    }
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        }
    }
    fn to_ip(self) -> IpAddr {
        IpAddr::V6(self)
    }
}

/// Formats an address of either family as Go does.
pub struct GoIp<F: Family>(pub F);

impl<F: Family> fmt::Display for GoIp<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_go(f)
    }
}

/// All ones in the low `bits` bits.
fn full_mask(bits: u8) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// The network mask for `prefix` in a family of width `bits`, as an integer.
fn prefix_mask(bits: u8, prefix: u8) -> u128 {
    let host_bits = bits - prefix;
    // `checked_shl` is None for a shift of 128 (a /0 in IPv6): the mask is empty.
    let host = 1u128
        .checked_shl(u32::from(host_bits))
        .map_or(u128::MAX, |v| v - 1);
    full_mask(bits) & !host
}

/// An IP network (address plus prefix length) of family `F`, always canonical.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr<F: Family> {
    addr: F,
    prefix: u8,
}

/// An IPv4 network such as `10.5.0.0/16`.
pub type Ip4Net = Cidr<Ipv4Addr>;
/// An IPv6 network such as `fd00:12:13::/56`.
pub type Ip6Net = Cidr<Ipv6Addr>;

impl<F: Family> Cidr<F> {
    /// Builds the network containing `addr` with `prefix` bits; host bits are
    /// cleared, as `net.ParseCIDR` does.
    pub fn new(addr: F, prefix: u8) -> Result<Self, IpError> {
        if prefix > F::BITS {
            return Err(IpError::PrefixTooLong {
                len: prefix,
                bits: F::BITS,
            });
        }
        let masked = addr.to_u128() & prefix_mask(F::BITS, prefix);
        Ok(Cidr {
            addr: F::from_u128(masked),
            prefix,
        })
    }

    /// Like [`Cidr::new`], but `None` when `addr` has host bits set.
    pub fn new_exact(addr: F, prefix: u8) -> Option<Self> {
        let net = Self::new(addr, prefix).ok()?;
        (net.addr == addr).then_some(net)
    }

    /// The whole address space (`0.0.0.0/0` or `::/0`).
    pub fn any() -> Self {
        Cidr {
            addr: F::from_u128(0),
            prefix: 0,
        }
    }

    /// The network address.
    pub fn addr(&self) -> F {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// True for `0.0.0.0/0` and `::/0`: Go flannel's "empty" network.
    pub fn is_empty(&self) -> bool {
        self.prefix == 0 && self.addr.to_u128() == 0
    }

    /// The mask as an integer of the family's width.
    pub fn mask(&self) -> u128 {
        prefix_mask(F::BITS, self.prefix)
    }

    /// Number of addresses as `log2` (host bits): `8` for a /24.
    pub fn host_bits(&self) -> u8 {
        F::BITS - self.prefix
    }

    /// The last address inside the network (the broadcast address for IPv4).
    pub fn last_addr(&self) -> F {
        F::from_u128(self.addr.to_u128() | (full_mask(F::BITS) & !self.mask()))
    }

    /// True when `ip` is inside this network.
    pub fn contains(&self, ip: F) -> bool {
        ip.to_u128() & self.mask() == self.addr.to_u128()
    }

    /// True when `other` lies entirely inside this network (Go's `ContainsCIDR`:
    /// `other` is no larger and starts inside).
    pub fn contains_net(&self, other: &Self) -> bool {
        self.prefix <= other.prefix && self.contains(other.addr)
    }

    /// True when the two networks share any address.
    pub fn overlaps(&self, other: &Self) -> bool {
        let mask = prefix_mask(F::BITS, self.prefix.min(other.prefix));
        self.addr.to_u128() & mask == other.addr.to_u128() & mask
    }

    /// The next network of the same size, or `None` past the top of the
    /// address space (Go wraps around instead).
    pub fn next(&self) -> Option<Self> {
        let step = 1u128.checked_shl(u32::from(self.host_bits()))?;
        let next = self.addr.to_u128().checked_add(step)?;
        (next <= full_mask(F::BITS)).then(|| Cidr {
            addr: F::from_u128(next),
            prefix: self.prefix,
        })
    }

    /// The first host address: network address + 1, which flannel writes to
    /// `subnet.env`. A single-address network (/32, /128) returns its address.
    pub fn first_host(&self) -> F {
        if self.prefix == F::BITS {
            self.addr
        } else {
            F::from_u128(self.addr.to_u128() + 1)
        }
    }

    /// The network's `n`-th address (0 = network address), or `None` outside it.
    pub fn nth_addr(&self, n: u128) -> Option<F> {
        let hosts = full_mask(F::BITS) & !self.mask();
        (n <= hosts).then(|| F::from_u128(self.addr.to_u128() + n))
    }

    /// The subnet of length `len` that contains `ip`, if `ip` is in this network
    /// and `len` is at least this network's prefix.
    pub fn subnet_containing(&self, ip: F, len: u8) -> Option<Self> {
        if len < self.prefix || len > F::BITS || !self.contains(ip) {
            return None;
        }
        Self::new(ip, len).ok()
    }

    /// The first subnet of length `len` (this network's address with a longer
    /// prefix), or `None` if `len` is shorter than this prefix or too long.
    pub fn first_subnet(&self, len: u8) -> Option<Self> {
        self.subnet_containing(self.addr, len)
    }

    /// The last subnet of length `len` inside this network.
    pub fn last_subnet(&self, len: u8) -> Option<Self> {
        self.subnet_containing(self.last_addr(), len)
    }

    /// All subnets of length `len` in address order.
    pub fn subnets(&self, len: u8) -> Option<Subnets<F>> {
        let first = self.first_subnet(len)?;
        let last = self.last_subnet(len)?;
        Some(Subnets::between(first.addr, last.addr, len))
    }

    /// Number of subnets of length `len` inside this network, saturating at
    /// `u128::MAX` (a /0 split into /128s).
    pub fn subnet_count(&self, len: u8) -> Option<u128> {
        if len < self.prefix || len > F::BITS {
            return None;
        }
        Some(
            1u128
                .checked_shl(u32::from(len - self.prefix))
                .unwrap_or(u128::MAX),
        )
    }

    /// Formats as `<ip><sep><len>`, e.g. `10.5.72.0-24` for subnet keys.
    pub fn to_string_sep(&self, sep: &str) -> String {
        format!("{}{}{}", GoIp(self.addr), sep, self.prefix)
    }
}

impl<F: Family> fmt::Display for Cidr<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt_go(f)?;
        write!(f, "/{}", self.prefix)
    }
}

impl<F: Family> fmt::Debug for Cidr<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Go's `net.ParseCIDR`, family-neutral: returns the address and prefix length.
///
/// Like Go, the prefix is decimal digits (leading zeros allowed) and the
/// address has no zone.
pub fn parse_cidr_go(s: &str) -> Result<(IpAddr, u8), IpError> {
    let bad = || IpError::InvalidCidr(s.to_string());
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let ip = parse_ip_go(addr).map_err(|_| bad())?;
    if len.is_empty() || len.len() > 8 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let len: u32 = len.parse().map_err(|_| bad())?;
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    if len > bits {
        return Err(bad());
    }
    Ok((ip, len as u8))
}

impl FromStr for Ip4Net {
    type Err = IpError;
    /// Parses `a.b.c.d/n`, masking host bits. IPv6 (including IPv4-mapped)
    /// CIDRs are rejected with `invalid IPv4 CIDR format`.
    fn from_str(s: &str) -> Result<Self, IpError> {
        match parse_cidr_go(s)? {
            (IpAddr::V4(v4), len) => Cidr::new(v4, len),
            (IpAddr::V6(_), _) => Err(IpError::NotIpv4Cidr),
        }
    }
}

impl FromStr for Ip6Net {
    type Err = IpError;
    /// Parses an IPv6 CIDR, masking host bits. An IPv4 CIDR is rejected
    /// (Go accepts it and builds a meaningless network).
    fn from_str(s: &str) -> Result<Self, IpError> {
        match parse_cidr_go(s)? {
            (IpAddr::V6(v6), len) => Cidr::new(v6, len),
            (IpAddr::V4(_), _) => Err(IpError::NotIpv6Cidr),
        }
    }
}

impl<F: Family> serde::Serialize for Cidr<F> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de, F: Family> serde::Deserialize<'de> for Cidr<F>
where
    Cidr<F>: FromStr<Err = IpError>,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Iterator over the subnets of one length between two subnet addresses,
/// inclusive, in address order. Never overflows at the top of the space.
#[derive(Debug, Clone)]
pub struct Subnets<F: Family> {
    next: Option<u128>,
    last: u128,
    step_shift: u8,
    prefix: u8,
    _family: std::marker::PhantomData<F>,
}

impl<F: Family> Subnets<F> {
    /// Subnets of length `len` from `first` to `last` (both inclusive). Both
    /// addresses are masked to `len` first; the iterator is empty when
    /// `first > last` or `len` exceeds the family width.
    pub fn between(first: F, last: F, len: u8) -> Self {
        let valid = len <= F::BITS;
        let mask = if valid { prefix_mask(F::BITS, len) } else { 0 };
        let (first, last) = (first.to_u128() & mask, last.to_u128() & mask);
        Subnets {
            next: (valid && first <= last).then_some(first),
            last,
            step_shift: if valid { F::BITS - len } else { 0 },
            prefix: len,
            _family: std::marker::PhantomData,
        }
    }

    /// How many subnets remain, saturating at `u128::MAX`.
    pub fn remaining(&self) -> u128 {
        match self.next {
            None => 0,
            // A shift of 128 (`::/0` as one `/0` subnet) leaves nothing.
            Some(n) => (self.last - n)
                .checked_shr(u32::from(self.step_shift))
                .unwrap_or(0)
                .saturating_add(1),
        }
    }
}

impl<F: Family> Iterator for Subnets<F> {
    type Item = Cidr<F>;

    fn next(&mut self) -> Option<Cidr<F>> {
        let cur = self.next?;
        self.next = 1u128
            .checked_shl(u32::from(self.step_shift))
            .and_then(|step| cur.checked_add(step))
            .filter(|n| *n <= self.last);
        Some(Cidr {
            addr: F::from_u128(cur),
            prefix: self.prefix,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let r = self.remaining();
        match usize::try_from(r) {
            Ok(n) => (n, Some(n)),
            Err(_) => (usize::MAX, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Ip4Net {
        s.parse().unwrap()
    }
    fn v6(s: &str) -> Ip6Net {
        s.parse().unwrap()
    }

    #[test]
    fn parse_masks_and_formats_like_go() {
        assert_eq!(v4("10.3.1.5/16").to_string(), "10.3.0.0/16");
        assert_eq!(v4("10.3.1.5/08").to_string(), "10.0.0.0/8");
        assert_eq!(v6("fd00:12:13:ff::1/56").to_string(), "fd00:12:13::/56");
        assert_eq!(v6("2001:0DB8::/32").to_string(), "2001:db8::/32");
        assert_eq!(v6("::ffff:10.0.0.0/104").to_string(), "::ffff:a00:0/104");
        assert_eq!(v6("::ffff:a00:0/104"), v6("::ffff:10.0.0.0/104"));
        assert_eq!(v4("1.2.3.4/32").to_string(), "1.2.3.4/32");
        assert_eq!(v4("1.2.3.4/0").to_string(), "0.0.0.0/0");
    }

    #[test]
    fn parse_errors_carry_go_text() {
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0/8",
            "010.0.0.0/8",
            "fe80::1%eth0/64",
            "x/8",
            "10.0.0.0/ 8",
            "10.0.0.0/8 ",
        ] {
            assert_eq!(
                bad.parse::<Ip4Net>().unwrap_err().to_string(),
                format!("invalid CIDR address: {bad}"),
                "{bad}"
            );
        }
        assert_eq!(
            "fd00::/8".parse::<Ip4Net>().unwrap_err().to_string(),
            "invalid IPv4 CIDR format"
        );
        assert_eq!(
            "::ffff:1.2.3.0/120".parse::<Ip4Net>().unwrap_err(),
            IpError::NotIpv4Cidr
        );
        assert_eq!(
            "10.0.0.0/8".parse::<Ip6Net>().unwrap_err().to_string(),
            "invalid IPv6 CIDR format"
        );
        assert_eq!(
            "fd00::/129".parse::<Ip6Net>().unwrap_err().to_string(),
            "invalid CIDR address: fd00::/129"
        );
    }

    #[test]
    fn single_ip_parsing() {
        assert_eq!(
            Ipv4Addr::parse_go("::ffff:1.2.3.4"),
            Ok(Ipv4Addr::new(1, 2, 3, 4))
        );
        assert_eq!(Ipv4Addr::parse_go("fd00::1"), Err(IpError::NotIpv4));
        assert_eq!(Ipv4Addr::parse_go("5"), Err(IpError::InvalidIp));
        assert_eq!(Ipv6Addr::parse_go("1.2.3.4"), Err(IpError::NotIpv6));
        assert_eq!(IpError::InvalidIp.to_string(), "invalid IP address format");
        assert_eq!(IpError::NotIpv4.to_string(), "invalid IPv4 address format");
    }

    #[test]
    fn edges_do_not_overflow() {
        let all4 = Ip4Net::any();
        assert!(all4.is_empty());
        assert_eq!(all4.mask(), 0);
        assert_eq!(all4.next(), None);
        assert_eq!(all4.last_addr(), Ipv4Addr::BROADCAST);
        let top4 = v4("255.255.255.255/32");
        assert_eq!(top4.next(), None);
        assert_eq!(top4.first_host(), Ipv4Addr::BROADCAST);
        assert_eq!(v4("255.255.255.0/24").next(), None);
        assert_eq!(v4("255.255.254.0/24").next(), Some(v4("255.255.255.0/24")));

        let all6 = Ip6Net::any();
        assert_eq!(all6.mask(), 0);
        assert_eq!(all6.next(), None);
        assert_eq!(all6.subnet_count(0), Some(1));
        assert_eq!(all6.subnet_count(128), Some(u128::MAX));
        assert_eq!(all6.last_subnet(1), Some(v6("8000::/1")));
        let top6 = v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128");
        assert_eq!(top6.next(), None);
        assert_eq!(top6.mask(), u128::MAX);
        assert_eq!(all6.subnets(128).unwrap().remaining(), u128::MAX);
        assert_eq!(all6.subnets(1).unwrap().count(), 2);
        // Found by proptest: `::/0` as a single `/0` subnet.
        let whole = all6.subnets(0).unwrap();
        assert_eq!(whole.remaining(), 1);
        assert_eq!(whole.size_hint(), (1, Some(1)));
        assert_eq!(whole.collect::<Vec<_>>(), [all6]);
        assert_eq!(all4.subnets(0).unwrap().remaining(), 1);
        assert_eq!(all4.subnets(32).unwrap().remaining(), 1 << 32);
        let mut top = v4("255.255.255.0/24").subnets(30).unwrap();
        assert_eq!(top.remaining(), 64);
        assert_eq!(top.by_ref().last(), Some(v4("255.255.255.252/30")));
        assert_eq!(top.next(), None);
    }

    #[test]
    fn containment_matches_go_tests() {
        // pkg/subnet/kube/kube_test.go TestContainsCIDR
        let n = v4("10.244.0.0/16");
        assert!(n.contains_net(&v4("10.244.0.0/16")));
        assert!(n.contains_net(&v4("10.244.0.0/24")));
        assert!(n.contains_net(&v4("10.244.255.0/24")));
        assert!(!n.contains_net(&v4("10.244.0.0/15")));
        assert!(!n.contains_net(&v4("192.168.0.0/24")));
        let n = v6("2001:0db8:1234::/48");
        assert!(n.contains_net(&v6("2001:0db8:1234::/48")));
        assert!(n.contains_net(&v6("2001:0db8:1234::/64")));
        assert!(n.contains_net(&v6("2001:0db8:1234:ffff::/64")));
        assert!(!n.contains_net(&v6("2001:0db8:1234::/47")));
        assert!(!n.contains_net(&v6("fe02::/32")));
    }

    #[test]
    fn overlap_uses_shorter_mask() {
        assert!(v4("10.0.0.0/8").overlaps(&v4("10.3.4.0/24")));
        assert!(v4("10.3.4.0/24").overlaps(&v4("10.0.0.0/8")));
        assert!(!v4("10.3.4.0/24").overlaps(&v4("10.3.5.0/24")));
        assert!(Ip4Net::any().overlaps(&v4("1.2.3.4/32")));
        assert!(v6("fd00::/8").overlaps(&v6("fd12::/16")));
        assert!(!v6("fd00::/16").overlaps(&v6("fd01::/16")));
    }

    #[test]
    fn subnets_and_hosts() {
        let n = v4("10.5.0.0/16");
        assert_eq!(n.first_subnet(24), Some(v4("10.5.0.0/24")));
        assert_eq!(n.last_subnet(24), Some(v4("10.5.255.0/24")));
        assert_eq!(n.first_subnet(15), None);
        assert_eq!(n.first_subnet(33), None);
        assert_eq!(n.subnet_count(24), Some(256));
        assert_eq!(v4("10.5.72.0/24").first_host(), Ipv4Addr::new(10, 5, 72, 1));
        assert_eq!(
            v6("2001:cafe:42::/64").first_host(),
            "2001:cafe:42::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(n.nth_addr(65535), Some(Ipv4Addr::new(10, 5, 255, 255)));
        assert_eq!(n.nth_addr(65536), None);
        assert_eq!(v4("10.5.72.0/24").to_string_sep("-"), "10.5.72.0-24");
        let got: Vec<_> = Subnets::<Ipv4Addr>::between(
            Ipv4Addr::new(10, 3, 1, 0),
            Ipv4Addr::new(10, 3, 3, 0),
            24,
        )
        .collect();
        assert_eq!(
            got,
            [v4("10.3.1.0/24"), v4("10.3.2.0/24"), v4("10.3.3.0/24")]
        );
        assert_eq!(
            Subnets::<Ipv4Addr>::between(
                Ipv4Addr::new(10, 3, 3, 0),
                Ipv4Addr::new(10, 3, 1, 0),
                24
            )
            .count(),
            0
        );
        assert_eq!(
            Subnets::<Ipv4Addr>::between(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 40).count(),
            0
        );
        assert_eq!(Ip4Net::new_exact(Ipv4Addr::new(10, 0, 0, 1), 24), None);
        assert_eq!(
            Ip4Net::new(Ipv4Addr::new(10, 0, 0, 1), 33),
            Err(IpError::PrefixTooLong { len: 33, bits: 32 })
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn any_v4net() -> impl Strategy<Value = Ip4Net> {
            (any::<u32>(), 0u8..=32).prop_map(|(a, l)| Ip4Net::new(Ipv4Addr::from(a), l).unwrap())
        }
        fn any_v6net() -> impl Strategy<Value = Ip6Net> {
            (any::<u128>(), 0u8..=128).prop_map(|(a, l)| Ip6Net::new(Ipv6Addr::from(a), l).unwrap())
        }

        fn laws<F: Family>(a: Cidr<F>, b: Cidr<F>, ip: F) -> Result<(), TestCaseError>
        where
            Cidr<F>: FromStr<Err = IpError>,
        {
            // Canonical: re-parsing the text gives the same value.
            prop_assert_eq!(a.to_string().parse::<Cidr<F>>().unwrap(), a);
            // Overlap is symmetric and equals "one contains the other".
            prop_assert_eq!(a.overlaps(&b), b.overlaps(&a));
            prop_assert_eq!(a.overlaps(&b), a.contains_net(&b) || b.contains_net(&a));
            prop_assert!(a.contains(a.addr()) && a.contains(a.last_addr()));
            prop_assert_eq!(a.contains(ip), Cidr::new(ip, a.prefix_len()).unwrap() == a);
            if let Some(n) = a.next() {
                prop_assert!(n.addr() > a.last_addr());
                prop_assert!(!n.overlaps(&a));
                prop_assert_eq!(n.addr().to_u128(), a.last_addr().to_u128() + 1);
            } else {
                prop_assert_eq!(a.last_addr().to_u128(), full_mask(F::BITS));
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn v4_laws(a in any_v4net(), b in any_v4net(), ip in any::<u32>()) {
                laws(a, b, Ipv4Addr::from(ip))?;
            }

            #[test]
            fn v6_laws(a in any_v6net(), b in any_v6net(), ip in any::<u128>()) {
                laws(a, b, Ipv6Addr::from(ip))?;
            }

            #[test]
            fn v4_subnet_walk(net in any_v4net(), extra in 0u8..=6) {
                let len = (net.prefix_len() + extra).min(32);
                let subs: Vec<_> = net.subnets(len).unwrap().collect();
                prop_assert_eq!(subs.len() as u128, net.subnet_count(len).unwrap());
                prop_assert_eq!(subs.first().copied(), net.first_subnet(len));
                prop_assert_eq!(subs.last().copied(), net.last_subnet(len));
                for w in subs.windows(2) {
                    prop_assert_eq!(w[0].next(), Some(w[1]));
                }
                prop_assert!(subs.iter().all(|s| net.contains_net(s)));
            }

            #[test]
            fn v6_subnet_walk(net in any_v6net(), extra in 0u8..=6) {
                let len = (net.prefix_len() + extra).min(128);
                let it = net.subnets(len).unwrap();
                prop_assert_eq!(it.remaining(), net.subnet_count(len).unwrap());
                let subs: Vec<_> = it.collect();
                prop_assert_eq!(subs.last().copied(), net.last_subnet(len));
                for w in subs.windows(2) {
                    prop_assert_eq!(w[0].next(), Some(w[1]));
                }
            }
        }
    }
}
