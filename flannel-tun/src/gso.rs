//! Transmit side: GSO "superpackets" read from the TUN are cut into
//! MSS-sized IP packets here, and single packets with a partial checksum
//! (`NEEDS_CSUM`) are completed.
//!
//! Segments are written into caller-provided slots at a fixed stride so that
//! the engine can hand consecutive equal-sized segments to one `UDP_SEGMENT`
//! send without copying them again.

use crate::checksum;
use crate::vnet::{self, VnetHdr};

/// Why a packet from the TUN could not be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed packet from the TUN: {0}")]
pub struct Malformed(pub &'static str);

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// How a superpacket is cut: `count` segments of `hl + mss` bytes, the last
/// one shorter when the payload is not a multiple of `mss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentPlan {
    /// Number of segments (at least 1).
    pub count: usize,
    /// Header bytes copied into every segment (IP + TCP/UDP header).
    pub hl: usize,
    /// Offset of the L4 header (the IP header length, IPv6 extension
    /// headers included).
    pub iph: usize,
    /// Payload bytes per segment.
    pub mss: usize,
    /// Total payload bytes of the superpacket.
    pub payload: usize,
    /// `true` for TCP, `false` for UDP (USO).
    pub tcp: bool,
    /// `true` for IPv6.
    pub v6: bool,
}

impl SegmentPlan {
    /// Length of segment `i` (headers included).
    pub fn seg_len(&self, i: usize) -> usize {
        let off = i * self.mss;
        self.hl + self.mss.min(self.payload - off)
    }

    /// Length of a full-size segment.
    pub fn full_len(&self) -> usize {
        self.hl + self.mss.min(self.payload)
    }
}

/// Computes how the GSO packet `pkt` (read with header `h`) is segmented.
///
/// `hdr_len` is not trusted (the kernel may report less than the real
/// header length): the L4 header is located from `csum_start` and its own
/// length field, as the kernel's software GSO does.
pub fn plan(h: &VnetHdr, pkt: &[u8]) -> Result<SegmentPlan, Malformed> {
    let (tcp, v6) = match h.gso_kind() {
        vnet::GSO_TCPV4 => (true, false),
        vnet::GSO_TCPV6 => (true, true),
        vnet::GSO_UDP_L4 => (false, pkt.first().is_some_and(|b| b >> 4 == 6)),
        _ => return Err(Malformed("unsupported GSO type")),
    };
    let iph = usize::from(h.csum_start);
    let version = pkt.first().map(|b| b >> 4);
    if v6 {
        if version != Some(6) || iph < 40 {
            return Err(Malformed("GSO IPv6 packet without an IPv6 header"));
        }
    } else if version != Some(4) || iph < 20 || iph != usize::from(pkt[0] & 0x0f) * 4 {
        return Err(Malformed(
            "GSO IPv4 packet with an inconsistent header length",
        ));
    }
    let hl = if tcp {
        if pkt.len() < iph + 20 {
            return Err(Malformed("GSO TCP packet shorter than its headers"));
        }
        let thl = usize::from(pkt[iph + 12] >> 4) * 4;
        if thl < 20 {
            return Err(Malformed("TCP data offset below 20 bytes"));
        }
        iph + thl
    } else {
        iph + 8
    };
    if pkt.len() < hl {
        return Err(Malformed("GSO packet shorter than its headers"));
    }
    let mss = usize::from(h.gso_size);
    if mss == 0 {
        return Err(Malformed("GSO packet with gso_size 0"));
    }
    let payload = pkt.len() - hl;
    let count = payload.div_ceil(mss).max(1);
    Ok(SegmentPlan {
        count,
        hl,
        iph,
        mss,
        payload,
        tcp,
        v6,
    })
}

/// Writes the segments of `pkt` into `out`: segment `i` starts at
/// `i * stride + headroom` and is [`SegmentPlan::seg_len`]`(i)` bytes long.
///
/// Each segment gets its own IPv4 total length, id (`id + i`) and header
/// checksum (IPv6: payload length), TCP sequence number (FIN and PSH only on
/// the last segment, CWR only on the first) or UDP length, and a full L4
/// checksum.
///
/// Panics when `out` is shorter than `plan.count * stride` or a slot is
/// smaller than `headroom + plan.full_len()` (caller bugs).
pub fn segment_into(
    plan: &SegmentPlan,
    pkt: &[u8],
    out: &mut [u8],
    stride: usize,
    headroom: usize,
) {
    assert!(
        stride >= headroom + plan.full_len(),
        "segment slot too small"
    );
    let SegmentPlan {
        count,
        hl,
        iph,
        mss,
        payload,
        tcp,
        v6,
    } = *plan;
    let (hdr, body) = pkt.split_at(hl);
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq0 = if tcp {
        u32::from_be_bytes([pkt[iph + 4], pkt[iph + 5], pkt[iph + 6], pkt[iph + 7]])
    } else {
        0
    };
    let (src, dst) = if v6 {
        (&pkt[8..24], &pkt[24..40])
    } else {
        (&pkt[12..16], &pkt[16..20])
    };
    // The pseudo-header without the length, and the L4 header with a zero
    // checksum and without the varying fields, are the same for every
    // segment; only the per-segment fields are summed again.
    let proto = if tcp { 6 } else { 17 };
    for i in 0..count {
        let off = i * mss;
        let plen = mss.min(payload - off);
        let seg = &mut out[i * stride + headroom..][..hl + plen];
        seg[..hl].copy_from_slice(hdr);
        let pl = &body[off..off + plen];
        seg[hl..].copy_from_slice(pl);
        if v6 {
            let len = (hl - 40 + plen) as u16;
            seg[4..6].copy_from_slice(&len.to_be_bytes());
        } else {
            seg[2..4].copy_from_slice(&((hl + plen) as u16).to_be_bytes());
            seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            checksum::ipv4_header_update(&mut seg[..iph]);
        }
        let l4len = (hl - iph + plen) as u32;
        let l4 = &mut seg[iph..hl];
        if tcp {
            l4[4..8].copy_from_slice(&seq0.wrapping_add(off as u32).to_be_bytes());
            if i + 1 != count {
                l4[13] &= !(TCP_FIN | TCP_PSH);
            }
            if i != 0 {
                l4[13] &= !TCP_CWR;
            }
            l4[16] = 0;
            l4[17] = 0;
        } else {
            l4[4..6].copy_from_slice(&(l4len as u16).to_be_bytes());
            l4[6] = 0;
            l4[7] = 0;
        }
        let mut acc = checksum::pseudo_header(src, dst, proto, l4len);
        acc = checksum::add(acc, l4);
        acc = checksum::add(acc, pl);
        let mut c = checksum::finish(acc);
        if !tcp && c == 0 {
            c = 0xffff;
        }
        let at = if tcp { 16 } else { 6 };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// Finishes a partial checksum (`NEEDS_CSUM`): the field at
/// `csum_start + csum_offset` holds the pseudo-header sum; the sum over
/// `pkt[csum_start..]` complemented is the real checksum. A UDP result of
/// zero is sent as 0xffff (zero means "no checksum").
pub fn complete_checksum(h: &VnetHdr, pkt: &mut [u8]) -> Result<(), Malformed> {
    if h.flags & vnet::F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(h.csum_start);
    let field = start + usize::from(h.csum_offset);
    if field + 2 > pkt.len() {
        return Err(Malformed("checksum offset beyond the packet"));
    }
    let mut c = checksum::finish(checksum::sum(&pkt[start..]));
    if c == 0 && h.csum_offset == 6 {
        c = 0xffff;
    }
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}
