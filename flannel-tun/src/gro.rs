//! Receive side: consecutive TCP segments of one flow, as received in UDP
//! datagrams, are merged back into one GSO packet for a single TUN write —
//! the single biggest win of the design (the kernel then handles one large
//! packet instead of ~40 small ones).
//!
//! The merge rules are the kernel's TCP GRO rules: same addresses and
//! ports; IPv4 without options or fragmentation, same TOS, TTL and DF;
//! IPv6 without extension headers, same traffic class, flow label and hop
//! limit; same ack, window and TCP option bytes; flags ACK only (PSH allowed
//! on the last segment); contiguous sequence numbers; equal payload sizes
//! except a shorter last one; at most 65,535 bytes in total.
//!
//! The merged packet is written with `NEEDS_CSUM` and the TCP checksum field
//! holding the *uncomplemented* pseudo-header sum for the new length
//! (`CHECKSUM_PARTIAL`): the kernel does not verify it and fills in real
//! checksums if it segments the packet again (e.g. forwarding to a bridge).
//! Inner checksums are not verified here: the outer UDP checksum (or the
//! codec's AEAD) already covers the bytes.

use std::io::IoSlice;

use crate::checksum;
use crate::vnet::{self, VnetHdr};

const MAX_TOTAL: usize = 65_535;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// IPv6 header + the longest TCP header.
const MAX_HDR: usize = 40 + 60;

/// What is known about a TCP segment that may be merged.
#[derive(Debug, Clone, Copy)]
struct Tcp {
    v6: bool,
    iph: usize,
    hl: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

fn parse_tcp(p: &[u8]) -> Option<Tcp> {
    let v = p.first()? >> 4;
    let (v6, iph) = if v == 4 {
        if p.len() < 20 || p[0] & 0x0f != 5 || p[9] != 6 {
            return None;
        }
        // MF set or a fragment offset: not a whole segment.
        if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
            return None;
        }
        if usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len() {
            return None;
        }
        (false, 20)
    } else if v == 6 {
        if p.len() < 40 || p[6] != 6 {
            return None;
        }
        if usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 != p.len() {
            return None;
        }
        (true, 40)
    } else {
        return None;
    };
    if p.len() < iph + 20 {
        return None;
    }
    let thl = usize::from(p[iph + 12] >> 4) * 4;
    if thl < 20 || p.len() < iph + thl {
        return None;
    }
    let hl = iph + thl;
    Some(Tcp {
        v6,
        iph,
        hl,
        seq: u32::from_be_bytes([p[iph + 4], p[iph + 5], p[iph + 6], p[iph + 7]]),
        flags: p[iph + 13],
        payload: p.len() - hl,
    })
}

/// Whether `b` (next segment) may follow `a` (first segment of an item)
/// in one merged packet, as far as header bytes go.
fn same_flow_headers(a: &[u8], ta: &Tcp, b: &[u8], tb: &Tcp) -> bool {
    if ta.v6 != tb.v6 || ta.hl != tb.hl {
        return false;
    }
    let ip_same = if ta.v6 {
        // Version/traffic class/flow label, next header, hop limit,
        // addresses.
        a[0..4] == b[0..4] && a[6..8] == b[6..8] && a[8..40] == b[8..40]
    } else {
        // TOS, DF, TTL/protocol, addresses.
        a[1] == b[1]
            && (a[6] & 0x40) == (b[6] & 0x40)
            && a[8..10] == b[8..10]
            && a[12..20] == b[12..20]
    };
    let (x, y) = (&a[ta.iph..ta.hl], &b[tb.iph..tb.hl]);
    // Ports, ack, data offset, window, urgent pointer and options; sequence
    // number, flags and checksum differ legitimately.
    ip_same
        && x[0..4] == y[0..4]
        && x[8..13] == y[8..13]
        && x[14..16] == y[14..16]
        && x[18..] == y[18..]
}

#[derive(Debug)]
struct Item {
    /// Index of the first segment in `Coalescer::pkts`.
    first: usize,
    count: usize,
    tcp: Option<Tcp>,
    total_payload: usize,
    next_seq: u32,
    psh: bool,
    /// No further segment may join (a shorter or PSH segment was added).
    closed: bool,
}

/// Collects the inner packets of one receive batch and merges runs of TCP
/// segments; [`Coalescer::flush`] hands each resulting TUN write to a
/// callback as I/O slices (virtio header, headers, payloads).
///
/// Only *consecutive* segments of a flow are merged (the sender's GSO groups
/// keep a flow's segments together), which keeps the state to one open item.
#[derive(Debug, Default)]
pub struct Coalescer<'a> {
    pkts: Vec<&'a [u8]>,
    items: Vec<Item>,
}

/// One TUN write produced by [`Coalescer::flush`], for inspection in tests
/// and by callers that do not use `writev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The virtio header to put in front.
    pub vnet: VnetHdr,
    /// Number of inner packets merged (1: written unchanged).
    pub segments: usize,
    /// Sum of the lengths of the inner packets as received (what the
    /// kernel's segmentation would give back).
    pub inner_bytes: usize,
}

impl<'a> Coalescer<'a> {
    /// An empty coalescer.
    pub fn new() -> Self {
        Coalescer::default()
    }

    /// Number of inner packets pushed since the last flush.
    pub fn len(&self) -> usize {
        self.pkts.len()
    }

    /// `true` when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pkts.is_empty()
    }

    /// Adds one inner IP packet (in arrival order).
    pub fn push(&mut self, pkt: &'a [u8]) {
        let idx = self.pkts.len();
        self.pkts.push(pkt);
        let tcp = parse_tcp(pkt).filter(|t| t.payload > 0 && t.flags & !TCP_PSH == TCP_ACK);
        if let (Some(t), Some(last)) = (tcp, self.items.last_mut())
            && let Some(lt) = last.tcp
            && !last.closed
            && t.seq == last.next_seq
            && t.payload <= self.pkts[last.first].len() - lt.hl
            && lt.hl + last.total_payload + t.payload <= MAX_TOTAL
            && same_flow_headers(self.pkts[last.first], &lt, pkt, &t)
        {
            let gso = self.pkts[last.first].len() - lt.hl;
            last.count += 1;
            last.total_payload += t.payload;
            last.next_seq = t.seq.wrapping_add(t.payload as u32);
            if t.flags & TCP_PSH != 0 {
                last.psh = true;
                last.closed = true;
            }
            if t.payload < gso {
                last.closed = true;
            }
            return;
        }
        self.items.push(Item {
            first: idx,
            count: 1,
            tcp,
            total_payload: tcp.map_or(0, |t| t.payload),
            next_seq: tcp.map_or(0, |t| t.seq.wrapping_add(t.payload as u32)),
            psh: tcp.is_some_and(|t| t.flags & TCP_PSH != 0),
            closed: tcp.is_none_or(|t| t.flags & TCP_PSH != 0),
        });
    }

    /// Emits every pending write in order and clears the coalescer. `write`
    /// receives the I/O slices of one TUN write (virtio header first) and a
    /// description of it.
    pub fn flush(&mut self, mut write: impl FnMut(&[IoSlice<'_>], &Write)) {
        let mut hdr = [0u8; MAX_HDR];
        for item in self.items.drain(..) {
            let first = self.pkts[item.first];
            let t = match item.tcp {
                Some(t) if item.count > 1 => t,
                _ => {
                    // Written as it came: the kernel checks its checksum.
                    let v = VnetHdr::default().to_bytes();
                    write(
                        &[IoSlice::new(&v), IoSlice::new(first)],
                        &Write {
                            vnet: VnetHdr::default(),
                            segments: 1,
                            inner_bytes: first.len(),
                        },
                    );
                    continue;
                }
            };
            let hl = t.hl;
            let h = &mut hdr[..hl];
            h.copy_from_slice(&first[..hl]);
            let gso_size = first.len() - hl;
            let total = hl + item.total_payload;
            let l4len = (total - t.iph) as u32;
            let (src, dst) = if t.v6 {
                h[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
                (8..24, 24..40)
            } else {
                h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                checksum::ipv4_header_update(&mut h[..20]);
                (12..16, 16..20)
            };
            if item.psh {
                h[t.iph + 13] |= TCP_PSH;
            }
            let partial =
                checksum::fold(checksum::pseudo_header(&first[src], &first[dst], 6, l4len));
            h[t.iph + 16..t.iph + 18].copy_from_slice(&partial.to_be_bytes());
            let vh = VnetHdr {
                flags: vnet::F_NEEDS_CSUM,
                gso_type: if t.v6 {
                    vnet::GSO_TCPV6
                } else {
                    vnet::GSO_TCPV4
                },
                hdr_len: hl as u16,
                gso_size: gso_size as u16,
                csum_start: t.iph as u16,
                csum_offset: 16,
            };
            let vb = vh.to_bytes();
            let mut slices = Vec::with_capacity(item.count + 2);
            slices.push(IoSlice::new(&vb));
            slices.push(IoSlice::new(&hdr[..hl]));
            for p in &self.pkts[item.first..item.first + item.count] {
                slices.push(IoSlice::new(&p[hl..]));
            }
            write(
                &slices,
                &Write {
                    vnet: vh,
                    segments: item.count,
                    inner_bytes: item.total_payload + item.count * hl,
                },
            );
        }
        self.pkts.clear();
    }
}
