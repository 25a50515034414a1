//! Segmentation (TUN → UDP) and coalescing (UDP → TUN) against reference
//! packets built here, with checksums verified by a naive implementation
//! written separately from the crate's.

use std::io::IoSlice;

use flannel_tun::gro::Coalescer;
use flannel_tun::gso::{self, SegmentPlan};
use flannel_tun::vnet::{self, VnetHdr};
use proptest::prelude::*;

/// RFC 1071, one 16-bit word at a time.
fn naive_sum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let mut s: u32 = 0;
    for w in bytes.chunks(2) {
        s += (u32::from(w[0]) << 8) | u32::from(*w.get(1).unwrap_or(&0));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Verifies the IPv4 header checksum and the TCP/UDP checksum of `p`.
fn assert_checksums_ok(p: &[u8]) {
    let (l4, src, dst, proto) = if p[0] >> 4 == 4 {
        let ihl = usize::from(p[0] & 0xf) * 4;
        assert_eq!(naive_sum(&[&p[..ihl]]), 0xffff, "IPv4 header checksum");
        (ihl, &p[12..16], &p[16..20], p[9])
    } else {
        (40, &p[8..24], &p[24..40], p[6])
    };
    let len = (p.len() - l4) as u32;
    let pseudo = [&[0u8, proto][..], &len.to_be_bytes()[..]].concat();
    assert_eq!(
        naive_sum(&[src, dst, &pseudo, &p[l4..]]),
        0xffff,
        "L4 checksum"
    );
}

struct Flow {
    v6: bool,
    tcp: bool,
}

/// A superpacket as the TUN hands it over: headers with a partial
/// checksum, `payload` bytes, TCP options (12 bytes of timestamps).
fn superpacket(f: &Flow, payload: &[u8], mss: u16, flags: u8) -> (VnetHdr, Vec<u8>) {
    let iph = if f.v6 { 40 } else { 20 };
    let l4h = if f.tcp { 32 } else { 8 };
    let total = iph + l4h + payload.len();
    let mut p = vec![0u8; total];
    if f.v6 {
        p[0] = 0x60;
        p[1] = 0x0a; // traffic class / flow label bits
        p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        p[6] = if f.tcp { 6 } else { 17 };
        p[7] = 64;
        p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0xfff0u16.to_be_bytes()); // id wraps during segmentation
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = if f.tcp { 6 } else { 17 };
        p[12..16].copy_from_slice(&[10, 0, 1, 5]);
        p[16..20].copy_from_slice(&[10, 0, 2, 7]);
    }
    let l4 = &mut p[iph..];
    l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
    l4[2..4].copy_from_slice(&5201u16.to_be_bytes());
    if f.tcp {
        l4[4..8].copy_from_slice(&0xffff_f000u32.to_be_bytes()); // seq wraps
        l4[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        l4[12] = 8 << 4;
        l4[13] = flags;
        l4[14..16].copy_from_slice(&502u16.to_be_bytes());
        l4[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    } else {
        l4[4..6].copy_from_slice(&((l4h + payload.len()) as u16).to_be_bytes());
    }
    l4[l4h..].copy_from_slice(payload);
    // A garbage partial checksum: segmentation must not depend on it.
    l4[if f.tcp { 16 } else { 6 }] = 0xab;
    let h = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: match (f.tcp, f.v6) {
            (true, false) => vnet::GSO_TCPV4,
            (true, true) => vnet::GSO_TCPV6,
            (false, _) => vnet::GSO_UDP_L4,
        },
        hdr_len: 0, // not trusted
        gso_size: mss,
        csum_start: iph as u16,
        csum_offset: if f.tcp { 16 } else { 6 },
    };
    (h, p)
}

fn segment(h: &VnetHdr, p: &[u8]) -> (SegmentPlan, Vec<Vec<u8>>) {
    let plan = gso::plan(h, p).expect("plan");
    let stride = plan.full_len() + 8;
    let mut out = vec![0u8; stride * plan.count];
    gso::segment_into(&plan, p, &mut out, stride, 8);
    let segs = (0..plan.count)
        .map(|i| out[i * stride + 8..][..plan.seg_len(i)].to_vec())
        .collect();
    (plan, segs)
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 131 + 7) as u8).collect()
}

fn check_segments(f: &Flow, segs: &[Vec<u8>], orig: &[u8], mss: usize, flags: u8) {
    let iph = if f.v6 { 40 } else { 20 };
    let hl = iph + if f.tcp { 32 } else { 8 };
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert_checksums_ok(s);
        let last = i + 1 == segs.len();
        if f.v6 {
            assert_eq!(usize::from(u16::from_be_bytes([s[4], s[5]])), s.len() - 40);
            assert_eq!(&s[..4], &orig[..4]);
        } else {
            assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
            assert_eq!(
                u16::from_be_bytes([s[4], s[5]]),
                0xfff0u16.wrapping_add(i as u16)
            );
        }
        if f.tcp {
            let seq = u32::from_be_bytes(s[iph + 4..iph + 8].try_into().unwrap());
            assert_eq!(seq, 0xffff_f000u32.wrapping_add((i * mss) as u32));
            let fl = s[iph + 13];
            assert_eq!(
                fl & 0x09 != 0,
                last && flags & 0x09 != 0,
                "FIN/PSH only on the last"
            );
            assert_eq!(
                fl & 0x80 != 0,
                i == 0 && flags & 0x80 != 0,
                "CWR only on the first"
            );
            assert_eq!(fl & 0x10, flags & 0x10);
        } else {
            assert_eq!(
                usize::from(u16::from_be_bytes([s[iph + 4], s[iph + 5]])),
                s.len() - iph
            );
        }
        if !last {
            assert_eq!(s.len(), hl + mss);
        }
        joined.extend_from_slice(&s[hl..]);
    }
    assert_eq!(joined, &orig[hl..]);
}

#[test]
fn tcp4_superpacket_segments() {
    let f = Flow {
        v6: false,
        tcp: true,
    };
    let pl = payload(1400 * 7 + 333);
    let (h, p) = superpacket(&f, &pl, 1400, 0x10 | 0x08 | 0x01 | 0x80);
    let (plan, segs) = segment(&h, &p);
    assert_eq!((plan.count, plan.hl, plan.mss), (8, 52, 1400));
    check_segments(&f, &segs, &p, 1400, 0x10 | 0x08 | 0x01 | 0x80);
}

#[test]
fn tcp6_superpacket_segments() {
    let f = Flow {
        v6: true,
        tcp: true,
    };
    let pl = payload(1380 * 3);
    let (h, p) = superpacket(&f, &pl, 1380, 0x18);
    let (plan, segs) = segment(&h, &p);
    assert_eq!(plan.count, 3);
    check_segments(&f, &segs, &p, 1380, 0x18);
}

#[test]
fn udp_uso_superpacket_segments() {
    for v6 in [false, true] {
        let f = Flow { v6, tcp: false };
        let pl = payload(1200 * 4 + 1);
        let (h, p) = superpacket(&f, &pl, 1200, 0);
        let (plan, segs) = segment(&h, &p);
        assert_eq!(plan.count, 5);
        check_segments(&f, &segs, &p, 1200, 0);
    }
}

#[test]
fn malformed_superpackets_are_refused() {
    let f = Flow {
        v6: false,
        tcp: true,
    };
    let (mut h, p) = superpacket(&f, &payload(3000), 1400, 0x10);
    let mut bad = h;
    bad.gso_size = 0;
    assert!(gso::plan(&bad, &p).is_err());
    bad = h;
    bad.csum_start = 24; // not the IPv4 header length
    assert!(gso::plan(&bad, &p).is_err());
    assert!(gso::plan(&h, &p[..40]).is_err());
    h.gso_type = vnet::GSO_UDP; // UFO is never negotiated
    assert!(gso::plan(&h, &p).is_err());
}

#[test]
fn needs_csum_is_completed() {
    // A single UDP/IPv4 packet with the pseudo-header sum in its checksum
    // field, as the TUN hands it over with TUN_F_CSUM.
    let f = Flow {
        v6: false,
        tcp: false,
    };
    let (_, mut p) = superpacket(&f, &payload(100), 1400, 0);
    let hc = !naive_sum(&[&p[..20]]);
    p[10..12].copy_from_slice(&hc.to_be_bytes());
    let pseudo = [&[0u8, 17][..], &((p.len() - 20) as u16).to_be_bytes()[..]].concat();
    let partial = naive_sum(&[&p[12..20], &pseudo]);
    p[26..28].copy_from_slice(&partial.to_be_bytes());
    let h = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 6,
        ..VnetHdr::default()
    };
    gso::complete_checksum(&h, &mut p).unwrap();
    assert_checksums_ok(&p);
    // TCP/IPv6 too.
    let f = Flow {
        v6: true,
        tcp: true,
    };
    let (_, mut p) = superpacket(&f, &payload(77), 1400, 0x18);
    let pseudo = [&[0u8, 6][..], &((p.len() - 40) as u32).to_be_bytes()[..]].concat();
    let partial = naive_sum(&[&p[8..40], &pseudo]);
    p[56..58].copy_from_slice(&partial.to_be_bytes());
    let h = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        csum_start: 40,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    gso::complete_checksum(&h, &mut p).unwrap();
    assert_checksums_ok(&p);
    // Without NEEDS_CSUM nothing changes.
    let before = p.clone();
    gso::complete_checksum(&VnetHdr::default(), &mut p).unwrap();
    assert_eq!(p, before);
}

/// Feeds packets to a coalescer; returns each write as (vnet header,
/// packet bytes).
fn coalesce(pkts: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
    let mut c = Coalescer::new();
    for p in pkts {
        c.push(p);
    }
    let mut out = Vec::new();
    c.flush(|iov: &[IoSlice<'_>], w| {
        let bytes: Vec<u8> = iov.iter().flat_map(|s| s.iter().copied()).collect();
        let h = VnetHdr::parse(&bytes).unwrap();
        assert_eq!(h, w.vnet);
        out.push((h, bytes[vnet::LEN..].to_vec()));
    });
    out
}

/// What the kernel does with a coalesced write: the TCP checksum field
/// must hold the uncomplemented pseudo-header sum for the new length.
fn assert_partial_ok(h: &VnetHdr, p: &[u8]) {
    let iph = usize::from(h.csum_start);
    let (src, dst) = if p[0] >> 4 == 4 {
        assert_eq!(naive_sum(&[&p[..20]]), 0xffff, "IPv4 header checksum");
        (&p[12..16], &p[16..20])
    } else {
        (&p[8..24], &p[24..40])
    };
    let pseudo = [&[0u8, 6][..], &((p.len() - iph) as u32).to_be_bytes()[..]].concat();
    let want = naive_sum(&[src, dst, &pseudo]);
    assert_eq!(u16::from_be_bytes([p[iph + 16], p[iph + 17]]), want);
}

#[test]
fn segments_coalesce_back_and_resegment_identically() {
    for v6 in [false, true] {
        let f = Flow { v6, tcp: true };
        let pl = payload(1400 * 20 + 99);
        let (h, p) = superpacket(&f, &pl, 1400, 0x18);
        let (_, segs) = segment(&h, &p);
        let writes = coalesce(&segs);
        assert_eq!(writes.len(), 1);
        let (vh, merged) = &writes[0];
        assert_eq!(vh.flags, vnet::F_NEEDS_CSUM);
        assert_eq!(
            vh.gso_type,
            if v6 { vnet::GSO_TCPV6 } else { vnet::GSO_TCPV4 }
        );
        assert_eq!(vh.gso_size, 1400);
        assert_eq!(usize::from(vh.hdr_len), if v6 { 72 } else { 52 });
        assert_eq!(
            (vh.csum_start, vh.csum_offset),
            (if v6 { 40 } else { 20 }, 16)
        );
        assert_eq!(merged.len(), p.len());
        assert_partial_ok(vh, merged);
        // The kernel's view: segmenting the merged packet gives back
        // exactly the segments that were received.
        let (_, again) = segment(vh, merged);
        assert_eq!(again, segs);
    }
}

#[test]
fn coalescing_rules() {
    let f = Flow {
        v6: false,
        tcp: true,
    };
    let (h, p) = superpacket(&f, &payload(1000 * 6), 1000, 0x10);
    let (_, segs) = segment(&h, &p);
    let count = |w: &[(VnetHdr, Vec<u8>)]| -> Vec<usize> {
        w.iter()
            .map(|(h, p)| {
                if h.gso_type == 0 {
                    1
                } else {
                    (p.len() - 52).div_ceil(usize::from(h.gso_size))
                }
            })
            .collect()
    };
    // A gap in the sequence splits.
    let gap = vec![
        segs[0].clone(),
        segs[1].clone(),
        segs[3].clone(),
        segs[4].clone(),
    ];
    assert_eq!(count(&coalesce(&gap)), vec![2, 2]);
    // Another flow in between splits (only consecutive segments merge).
    let mut other = segs[2].clone();
    other[21] ^= 1; // source port
    let mixed = vec![segs[0].clone(), segs[1].clone(), other, segs[2].clone()];
    assert_eq!(count(&coalesce(&mixed)), vec![2, 1, 1]);
    // A different TTL, window, ack or option byte splits.
    for at in [8usize, 20 + 14, 20 + 8, 20 + 31] {
        let mut s2 = segs[1].clone();
        s2[at] ^= 1;
        assert_eq!(
            count(&coalesce(&[segs[0].clone(), s2])),
            vec![1, 1],
            "byte {at}"
        );
    }
    // A shorter segment ends an item; PSH too; SYN/FIN/RST are never merged.
    let mut short = segs[1].clone();
    short.truncate(52 + 500);
    short[2..4].copy_from_slice(&((52 + 500) as u16).to_be_bytes());
    assert_eq!(
        count(&coalesce(&[segs[0].clone(), short, segs[2].clone()])),
        vec![2, 1]
    );
    let mut psh = segs[1].clone();
    psh[33] |= 0x08;
    let w = coalesce(&[segs[0].clone(), psh, segs[2].clone()]);
    assert_eq!(count(&w), vec![2, 1]);
    assert_eq!(
        w[0].1[33] & 0x08,
        0x08,
        "PSH carried into the merged header"
    );
    for flag in [0x01u8, 0x02, 0x04, 0x80] {
        let mut s1 = segs[1].clone();
        s1[33] |= flag;
        assert_eq!(
            count(&coalesce(&[segs[0].clone(), s1])),
            vec![1, 1],
            "flag {flag:#x}"
        );
    }
    // IPv4 options or fragments are never merged.
    let mut frag = segs[1].clone();
    frag[6] |= 0x20; // MF
    assert_eq!(count(&coalesce(&[segs[0].clone(), frag])), vec![1, 1]);
    // Single packets are written unchanged with a zero header.
    let w = coalesce(&[segs[0].clone()]);
    assert_eq!(w, vec![(VnetHdr::default(), segs[0].clone())]);
    // Never more than 65,535 bytes in one write.
    let (h, p) = superpacket(&f, &payload(1448 * 60), 1448, 0x10);
    let (_, many) = segment(&h, &p);
    let w = coalesce(&many);
    assert!(w.len() >= 2 && w.iter().all(|(_, p)| p.len() <= 65_535));
    let total: usize = w.iter().map(|(_, p)| p.len() - 52).sum();
    assert_eq!(total, 1448 * 60);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// segment(superpacket) then coalesce gives back the same payload
    /// bytes, and re-segmenting the merged writes gives the same segments.
    #[test]
    fn segment_then_coalesce_round_trips(len in 1usize..60_000, mss in 200u16..1460, v6: bool, psh: bool) {
        let f = Flow { v6, tcp: true };
        let pl = payload(len);
        let flags = 0x10 | if psh { 0x08 } else { 0 };
        let (h, p) = superpacket(&f, &pl, mss, flags);
        let (_, segs) = segment(&h, &p);
        for s in &segs {
            assert_checksums_ok(s);
        }
        let hl = if v6 { 72 } else { 52 };
        let writes = coalesce(&segs);
        let mut joined = Vec::new();
        let mut resegmented = Vec::new();
        for (vh, w) in &writes {
            joined.extend_from_slice(&w[hl..]);
            if vh.gso_type == 0 {
                resegmented.push(w.clone());
            } else {
                assert_partial_ok(vh, w);
                resegmented.extend(segment(vh, w).1);
            }
        }
        prop_assert_eq!(joined, pl);
        prop_assert_eq!(resegmented, segs);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever a peer sends, the coalescer neither panics nor loses or
    /// invents bytes: every packet comes out once, in order.
    #[test]
    fn coalescer_survives_arbitrary_packets(pkts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..12)) {
        let writes = coalesce(&pkts);
        let total: usize = writes.iter().map(|(_, p)| p.len()).sum();
        let merged: usize = writes.iter().filter(|(h, _)| h.gso_type != 0).count();
        prop_assert!(total <= pkts.iter().map(|p| p.len()).sum::<usize>());
        if merged == 0 {
            prop_assert_eq!(writes.into_iter().map(|(_, p)| p).collect::<Vec<_>>(), pkts);
        }
    }

    /// Arbitrary virtio headers and bytes from the TUN are refused or
    /// segmented, never a panic.
    #[test]
    fn segmentation_survives_arbitrary_input(
        gso_type in prop_oneof![Just(1u8), Just(4), Just(5), any::<u8>()],
        gso_size in any::<u16>(),
        csum_start in 0u16..80,
        mut pkt in proptest::collection::vec(any::<u8>(), 0..3000),
        v6: bool,
    ) {
        if let Some(b) = pkt.first_mut() {
            *b = if v6 { 0x60 } else { 0x45 };
        }
        let h = VnetHdr { flags: vnet::F_NEEDS_CSUM, gso_type, hdr_len: 0, gso_size, csum_start, csum_offset: 16 };
        if let Ok(plan) = gso::plan(&h, &pkt) {
            let stride = plan.full_len();
            let mut out = vec![0u8; stride * plan.count];
            gso::segment_into(&plan, &pkt, &mut out, stride, 0);
        }
        let mut single = pkt.clone();
        let _ = gso::complete_checksum(&VnetHdr { csum_start, csum_offset: gso_size % 64, ..h }, &mut single);
    }
}
