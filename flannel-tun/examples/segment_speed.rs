//! How fast the userspace parts of the datapath run on this machine:
//! segmentation (copies + a full TCP checksum per segment) and coalescing
//! of 64 KB TCP superpackets. `cargo run --release -p flannel-tun --example
//! segment_speed`.

use std::time::Instant;

use flannel_tun::gro::Coalescer;
use flannel_tun::gso;
use flannel_tun::vnet::{self, VnetHdr};

fn main() {
    let mss = 1420usize;
    let payload = 45 * mss;
    let total = 52 + payload;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    p[32] = 8 << 4;
    p[33] = 0x10;
    for (i, b) in p[52..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let h = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: vnet::GSO_TCPV4,
        hdr_len: 52,
        gso_size: mss as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    let plan = gso::plan(&h, &p).unwrap();
    let stride = 1536;
    let mut out = vec![0u8; stride * plan.count];
    let n = 20_000;
    let t0 = Instant::now();
    for _ in 0..n {
        gso::segment_into(&plan, &p, &mut out, stride, 0);
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "segment_into: {:.2} Gbit/s of payload on one core ({:.2} us per 64 KB superpacket)",
        (n * payload) as f64 * 8.0 / secs / 1e9,
        secs / n as f64 * 1e6
    );
    let segs: Vec<&[u8]> = (0..plan.count)
        .map(|i| &out[i * stride..][..plan.seg_len(i)])
        .collect();
    let t0 = Instant::now();
    let mut writes = 0;
    for _ in 0..n {
        let mut c = Coalescer::new();
        for s in &segs {
            c.push(s);
        }
        c.flush(|_, _| writes += 1);
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "coalesce: {:.2} Gbit/s of payload on one core ({:.2} us per 64 KB, {} writes)",
        (n * payload) as f64 * 8.0 / secs / 1e9,
        secs / n as f64 * 1e6,
        writes / n
    );
    let t0 = Instant::now();
    let mut acc = 0u64;
    for _ in 0..n {
        acc = acc.wrapping_add(flannel_tun::checksum::sum(&p));
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "checksum alone: {:.2} Gbit/s ({acc:x})",
        (n * total) as f64 * 8.0 / secs / 1e9
    );
}
