//! The Internet checksum (RFC 1071) and the pseudo-header sums TCP and UDP
//! need.
//!
//! Sums are kept as a `u64` accumulator of native-endian words with the
//! carries folded in at the end: the ones' complement sum commutes with byte
//! swapping, so summing native words and swapping once at the end gives the
//! network-order result while the loop reads eight bytes at a time. This is
//! the engine's main CPU cost besides copies (every segment gets a full TCP
//! checksum), hence the wide loop.

use std::net::IpAddr;

/// Adds `data` to a running ones' complement sum (the accumulator from
/// [`sum`]/[`pseudo_header`]). `data` is treated as starting at an even
/// offset; an odd trailing byte is padded with zero as in RFC 1071.
#[inline]
pub fn add(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Two 32-bit halves added into a 64-bit accumulator cannot overflow
        // for any realistic packet length (2^32 additions would be needed).
        let w = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w & 0xffff_ffff) + (w >> 32);
    }
    let mut rest = chunks.remainder();
    if rest.len() >= 4 {
        acc += u64::from(u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]));
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        acc += u64::from(u16::from_ne_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let Some(&b) = rest.first() {
        acc += u64::from(u16::from_ne_bytes([b, 0]));
    }
    acc
}

/// The ones' complement sum of `data`, as an accumulator for [`add`]/[`fold`].
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    add(0, data)
}

/// Adds a 16-bit value given in network (numeric big-endian) order.
#[inline]
pub fn add_u16(acc: u64, v: u16) -> u64 {
    acc + u64::from(u16::from_ne_bytes(v.to_be_bytes()))
}

/// Folds an accumulator to the 16-bit ones' complement sum, returned as the
/// numeric value of the big-endian field (store it with `to_be_bytes`). Not
/// complemented: that is [`finish`].
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    u16::from_be_bytes((acc as u16).to_ne_bytes())
}

/// The checksum field value: the complemented fold.
#[inline]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// The TCP/UDP pseudo-header sum for `proto` (6 or 17) and an L4 length of
/// `len` bytes (IPv4: src, dst, zero, proto, length; IPv6: src, dst, 32-bit
/// length, next header).
#[inline]
pub fn pseudo_header(src: &[u8], dst: &[u8], proto: u8, len: u32) -> u64 {
    let mut acc = add(0, src);
    acc = add(acc, dst);
    acc = add_u16(acc, u16::from(proto));
    acc = add_u16(acc, (len >> 16) as u16);
    add_u16(acc, len as u16)
}

/// The pseudo-header sum for addresses given as [`IpAddr`]s (tests and
/// callers building packets; the datapath uses [`pseudo_header`] on slices).
pub fn pseudo_header_ip(src: IpAddr, dst: IpAddr, proto: u8, len: u32) -> u64 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => pseudo_header(&s.octets(), &d.octets(), proto, len),
        (IpAddr::V6(s), IpAddr::V6(d)) => pseudo_header(&s.octets(), &d.octets(), proto, len),
        (IpAddr::V4(s), IpAddr::V6(d)) => pseudo_header(&s.octets(), &d.octets(), proto, len),
        (IpAddr::V6(s), IpAddr::V4(d)) => pseudo_header(&s.octets(), &d.octets(), proto, len),
    }
}

/// Recomputes an IPv4 header checksum in place (`hdr` = the whole header,
/// options included).
#[inline]
pub fn ipv4_header_update(hdr: &mut [u8]) {
    hdr[10] = 0;
    hdr[11] = 0;
    let c = finish(sum(hdr));
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for ch in data.chunks(2) {
            let w = if ch.len() == 2 {
                u32::from(ch[0]) << 8 | u32::from(ch[1])
            } else {
                u32::from(ch[0]) << 8
            };
            s += w;
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn matches_naive_for_all_lengths_and_alignments() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8 ^ 0xa5).collect();
        for start in 0..8 {
            for len in 0..(data.len() - start) {
                let d = &data[start..start + len];
                assert_eq!(fold(sum(d)), naive(d), "start {start} len {len}");
            }
        }
        // All-ones data exercises the carry folding.
        let ff = vec![0xffu8; 65_535];
        assert_eq!(fold(sum(&ff)), naive(&ff));
    }

    #[test]
    fn ipv4_header_checksum_known_value() {
        // RFC 1071-style example header (Wikipedia's IPv4 checksum example).
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        ipv4_header_update(&mut h);
        assert_eq!(&h[10..12], &[0xb8, 0x61]);
    }
}
