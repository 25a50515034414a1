//! Go flannel's per-packet rules, as pure functions on raw IPv4 packets.
//!
//! Go's udp backend is a C proxy (`proxy_amd64.c`); a node of ours must
//! treat packets exactly as it does, so a mixed cluster behaves the same
//! whichever node a packet crosses:
//!
//! * [`decrement_ttl`]: both directions (TUN → UDP and UDP → TUN) decrement
//!   the TTL and patch the header checksum incrementally (the proxy's
//!   `decrement_ttl`, RFC 1624 style); a packet whose TTL reaches 0 is
//!   dropped (Go sends no Time Exceeded either).
//! * [`net_unreachable`]: a packet from the TUN that no peer's subnet
//!   covers is answered, back into the TUN, with an ICMP *Destination
//!   Unreachable / Net Unreachable* built byte for byte as the proxy's
//!   `send_net_unreachable` builds it — except for ICMP packets and
//!   non-first fragments, which get no answer.
//!
//! Everything here is IPv4 only, as Go's backend is.

use std::net::Ipv4Addr;

/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;

/// `IPPROTO_ICMP`.
pub const PROTO_ICMP: u8 = 1;

/// The TTL of the Net Unreachable answers (Go's proxy uses 8).
pub const UNREACHABLE_TTL: u8 = 8;

/// ICMP type Destination Unreachable.
pub const ICMP_DEST_UNREACH: u8 = 3;

/// ICMP code Net Unreachable.
pub const ICMP_NET_UNREACH: u8 = 0;

/// Go's proxy refuses to quote a header of this many bytes or more
/// (`sizeof(struct iphdr) + MAX_IPOPTLEN`): its answer buffer has room for
/// a header of at most 56 bytes.
const MAX_QUOTED_HEADER: usize = 20 + 40;

/// What [`decrement_ttl`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The TTL was decremented and the checksum patched: forward it.
    Forward,
    /// The TTL reached 0 (or the packet is too short to carry one): drop it.
    Expired,
}

/// The Internet checksum (RFC 1071) of `data`, ready to be stored in
/// network byte order. An odd trailing byte is padded with a zero, as the
/// proxy's `cksum` does.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xffff {
        sum = (sum >> 16) + (sum & 0xffff);
    }
    !(sum as u16)
}

/// Decrements the TTL of the IPv4 packet `pkt` in place and patches its
/// header checksum the way Go's proxy does.
///
/// The proxy adds `htons(0x100)` to the checksum as a little-endian
/// `u16` (with `+ 1` more when that wraps), which equals the RFC 1624
/// update of a TTL decrement; the arithmetic is copied so the bytes on the
/// wire are the proxy's. One deliberate difference: a packet that arrives
/// with TTL 0 (the proxy's `--ttl` wraps it to 255 and forwards it) is
/// dropped, like one that arrives with TTL 1.
pub fn decrement_ttl(pkt: &mut [u8]) -> Ttl {
    if pkt.len() < IPV4_HEADER_LEN || pkt[8] <= 1 {
        return Ttl::Expired;
    }
    pkt[8] -= 1;
    let check = u16::from_le_bytes([pkt[10], pkt[11]]);
    // `htons(0xFFFF - 0x100)` read as the little-endian value the C code
    // compares against.
    let patched = if check >= 0xfffe {
        check.wrapping_add(2)
    } else {
        check.wrapping_add(1)
    };
    pkt[10..12].copy_from_slice(&patched.to_le_bytes());
    Ttl::Forward
}

/// Why [`net_unreachable`] sends no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    /// The packet is shorter than an IPv4 header, or not IPv4.
    NotIpv4,
    /// The header length is below 20 or at least 60 bytes (the proxy's
    /// "malformed ip pkt").
    Malformed,
    /// ICMP is never answered with ICMP (RFC 792).
    Icmp,
    /// Only the first fragment of a datagram is answered.
    NotFirstFragment,
}

/// The ICMP Destination Net Unreachable the proxy writes back into the TUN
/// for `offender`, an IPv4 packet read from the TUN that matched no route;
/// `tun_addr` (the lease subnet's address, which is on the TUN) is its
/// source.
///
/// Layout, as `send_net_unreachable` fills its zeroed `icmp_pkt`: an IPv4
/// header (version 4, IHL 5, TOS 0, total length, id 0, no flags, TTL 8,
/// protocol ICMP, checksum, `tun_addr` → the offender's source), an ICMP
/// header (type 3, code 0, checksum, 4 zero bytes), then the offender's IP
/// header and the first 8 bytes of its payload. When the offender carries
/// fewer than 8 payload bytes, the proxy quotes whatever its buffer held
/// after them; we quote zeros there.
pub fn net_unreachable(tun_addr: Ipv4Addr, offender: &[u8]) -> Result<Vec<u8>, NoAnswer> {
    if offender.len() < IPV4_HEADER_LEN || offender[0] >> 4 != 4 {
        return Err(NoAnswer::NotIpv4);
    }
    let hlen = usize::from(offender[0] & 0x0f) * 4;
    if !(IPV4_HEADER_LEN..MAX_QUOTED_HEADER).contains(&hlen) {
        return Err(NoAnswer::Malformed);
    }
    if offender[9] == PROTO_ICMP {
        return Err(NoAnswer::Icmp);
    }
    if u16::from_be_bytes([offender[6], offender[7]]) & 0x1fff != 0 {
        return Err(NoAnswer::NotFirstFragment);
    }
    let quoted = hlen + 8;
    let total = IPV4_HEADER_LEN + 8 + quoted;
    let mut out = vec![0u8; total];
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[8] = UNREACHABLE_TTL;
    out[9] = PROTO_ICMP;
    out[12..16].copy_from_slice(&tun_addr.octets());
    out[16..20].copy_from_slice(&offender[12..16]);
    let ip_sum = checksum(&out[..IPV4_HEADER_LEN]);
    out[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    out[20] = ICMP_DEST_UNREACH;
    out[21] = ICMP_NET_UNREACH;
    let have = quoted.min(offender.len());
    out[28..28 + have].copy_from_slice(&offender[..have]);
    let icmp_sum = checksum(&out[IPV4_HEADER_LEN..]);
    out[22..24].copy_from_slice(&icmp_sum.to_be_bytes());
    Ok(out)
}

/// The destination address of an IPv4 packet, if it is one.
pub fn ipv4_destination(pkt: &[u8]) -> Option<Ipv4Addr> {
    if pkt.len() < IPV4_HEADER_LEN || pkt[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP SYN 10.5.1.2:40000 -> 10.9.9.9:80 with TTL 64, id 0x1c46, DF.
    fn syn() -> Vec<u8> {
        let mut p = vec![
            0x45, 0x00, 0x00, 0x28, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 10, 5, 1, 2,
            10, 9, 9, 9, // IP header
            0x9c, 0x40, 0x00, 0x50, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x50, 0x02,
            0xfa, 0xf0, 0x00, 0x00, 0x00, 0x00, // TCP header
        ];
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn header_ok(h: &[u8]) -> bool {
        checksum(h) == 0
    }

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&d), !0xddf2);
        // An odd byte counts as the high byte of a zero-padded word.
        assert_eq!(checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn ttl_is_decremented_with_a_valid_checksum() {
        let mut p = syn();
        assert_eq!(decrement_ttl(&mut p), Ttl::Forward);
        assert_eq!(p[8], 63);
        assert!(header_ok(&p[..20]), "checksum after the decrement");
        // The same as recomputing it from scratch.
        let mut fresh = p.clone();
        fresh[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&fresh[..20]);
        assert_eq!(&p[10..12], &c.to_be_bytes());
    }

    #[test]
    fn ttl_decrement_is_valid_for_every_checksum_value() {
        // Sweep the header's id so that the checksum takes every value the
        // incremental patch can meet, including its wrap-around cases.
        let mut p = syn();
        for id in 0..=u16::MAX {
            p[4..6].copy_from_slice(&id.to_be_bytes());
            p[8] = 64;
            p[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            let mut q = p.clone();
            assert_eq!(decrement_ttl(&mut q), Ttl::Forward);
            assert!(header_ok(&q[..20]), "id {id:#x}: checksum {:#x}", c);
        }
    }

    #[test]
    fn ttl_one_and_zero_are_dropped_and_short_packets_too() {
        let mut p = syn();
        p[8] = 1;
        assert_eq!(decrement_ttl(&mut p), Ttl::Expired);
        p[8] = 0;
        assert_eq!(decrement_ttl(&mut p), Ttl::Expired);
        p[8] = 2;
        assert_eq!(decrement_ttl(&mut p), Ttl::Forward);
        assert_eq!(p[8], 1);
        assert_eq!(decrement_ttl(&mut [0x45; 19]), Ttl::Expired);
    }

    #[test]
    fn go_checksum_arithmetic_edge_cases() {
        // Stored checksum bytes ff ff: the proxy adds 2 to the little-endian
        // value (0xffff + 2 wraps to 0x0001), giving bytes 01 00.
        let mut p = syn();
        p[8] = 10;
        p[10..12].copy_from_slice(&[0xff, 0xff]);
        decrement_ttl(&mut p);
        assert_eq!(&p[10..12], &[0x01, 0x00]);
        // Bytes ff 00 (LE 0x00ff): plus 1 carries into the second byte.
        p[10..12].copy_from_slice(&[0xff, 0x00]);
        decrement_ttl(&mut p);
        assert_eq!(&p[10..12], &[0x00, 0x01]);
    }

    #[test]
    fn net_unreachable_byte_for_byte() {
        let tun: Ipv4Addr = [10, 5, 1, 0].into();
        let p = syn();
        let got = net_unreachable(tun, &p).unwrap();
        // Built by hand from proxy_amd64.c's send_net_unreachable: a zeroed
        // icmp_pkt, then the fields it sets.
        let mut want = vec![
            0x45, 0x00, 0x00, 0x38, // version/IHL, TOS, total length 56
            0x00, 0x00, 0x00, 0x00, // id 0, no flags, offset 0
            0x08, 0x01, 0x00, 0x00, // TTL 8, ICMP, checksum (below)
            10, 5, 1, 0, // source: the TUN address
            10, 5, 1, 2, // destination: the offender's source
            0x03, 0x00, 0x00, 0x00, // type 3, code 0, checksum (below)
            0x00, 0x00, 0x00, 0x00, // unused
        ];
        want.extend_from_slice(&p[..28]);
        // The IP header checksum of the fields above, computed by hand:
        // 4500 + 0038 + 0000 + 0000 + 0801 + 0a05 + 0100 + 0a05 + 0102
        let sum: u32 = 0x4500 + 0x0038 + 0x0801 + 0x0a05 + 0x0100 + 0x0a05 + 0x0102;
        let folded = (sum & 0xffff) + (sum >> 16);
        want[10..12].copy_from_slice(&(!(folded as u16)).to_be_bytes());
        let icmp_sum = checksum(&want[20..]);
        want[22..24].copy_from_slice(&icmp_sum.to_be_bytes());
        assert_eq!(got, want);
        assert_eq!(got.len(), 56);
        assert!(header_ok(&got[..20]));
        assert_eq!(checksum(&got[20..]), 0, "ICMP checksum verifies");
    }

    #[test]
    fn net_unreachable_quotes_options_and_pads_short_payloads() {
        let tun: Ipv4Addr = [10, 5, 1, 0].into();
        // IHL 6 (one option word), 2 payload bytes only.
        let mut p = vec![
            0x46, 0, 0, 26, 0, 1, 0, 0, 64, 17, 0, 0, 10, 5, 1, 2, 10, 9, 9, 9,
        ];
        p.extend_from_slice(&[1, 1, 0, 0]); // NOP NOP EOL EOL
        p.extend_from_slice(&[0xaa, 0xbb]);
        let got = net_unreachable(tun, &p).unwrap();
        assert_eq!(got.len(), 20 + 8 + 24 + 8);
        assert_eq!(&got[28..54], &p[..]);
        assert_eq!(&got[54..], &[0; 6]);
        assert_eq!(checksum(&got[20..]), 0);
    }

    #[test]
    fn no_answer_for_icmp_fragments_and_malformed_headers() {
        let tun: Ipv4Addr = [10, 5, 1, 0].into();
        let mut icmp = syn();
        icmp[9] = PROTO_ICMP;
        assert_eq!(net_unreachable(tun, &icmp), Err(NoAnswer::Icmp));
        let mut frag = syn();
        frag[6..8].copy_from_slice(&0x2001u16.to_be_bytes()); // MF, offset 8
        assert_eq!(net_unreachable(tun, &frag), Err(NoAnswer::NotFirstFragment));
        // A first fragment (MF set, offset 0) is answered.
        frag[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
        assert!(net_unreachable(tun, &frag).is_ok());
        let mut long = syn();
        long[0] = 0x4f; // a 60-byte header: the proxy calls it malformed
        assert_eq!(net_unreachable(tun, &long), Err(NoAnswer::Malformed));
        let mut short = syn();
        short[0] = 0x44;
        assert_eq!(net_unreachable(tun, &short), Err(NoAnswer::Malformed));
        assert_eq!(net_unreachable(tun, &[0x45; 10]), Err(NoAnswer::NotIpv4));
        let mut v6 = syn();
        v6[0] = 0x60;
        assert_eq!(net_unreachable(tun, &v6), Err(NoAnswer::NotIpv4));
    }

    #[test]
    fn destination() {
        assert_eq!(ipv4_destination(&syn()), Some([10, 9, 9, 9].into()));
        assert_eq!(ipv4_destination(&[0x60; 40]), None);
    }
}
