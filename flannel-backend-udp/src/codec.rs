//! The udp backend's [`Codec`] for the `flannel-tun` engine: Go's wire
//! format (the raw inner IPv4 packet is the datagram) with Go's rules from
//! [`crate::packet`].

use crate::packet::{Ttl, decrement_ttl, net_unreachable};
use flannel_tun::{Codec, DropReason, Io, Packet, Peer, RxVerdict, TxVerdict};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

/// Go's udp proxy as a codec: TTL decremented both ways, an ICMP Net
/// Unreachable written back into the TUN for a packet no peer covers.
/// Size-preserving (the datagram is the packet), so the engine sends GSO
/// trains with `UDP_SEGMENT`, one inner packet per datagram.
#[derive(Debug)]
pub struct UdpCodec {
    /// The TUN's address (the lease subnet's), the source of the ICMP
    /// answers; atomic because a re-acquired lease may move it.
    tun_addr: AtomicU32,
}

impl UdpCodec {
    /// A codec whose ICMP answers come from `tun_addr`.
    pub fn new(tun_addr: Ipv4Addr) -> UdpCodec {
        UdpCodec {
            tun_addr: AtomicU32::new(u32::from(tun_addr)),
        }
    }

    /// The source address of the ICMP answers.
    pub fn tun_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.tun_addr.load(Ordering::Relaxed))
    }

    /// Changes the source address of the ICMP answers (our lease moved).
    pub fn set_tun_addr(&self, addr: Ipv4Addr) {
        self.tun_addr.store(u32::from(addr), Ordering::Relaxed);
    }
}

fn is_ipv4(pkt: &[u8]) -> bool {
    pkt.len() >= crate::packet::IPV4_HEADER_LEN && pkt[0] >> 4 == 4
}

impl Codec for UdpCodec {
    fn encap(&self, pkt: &mut Packet<'_>, peer: Option<&Peer>, _io: &mut dyn Io) -> TxVerdict {
        // IPv4 only, as Go (an IPv6 router solicitation the kernel sends
        // on the TUN goes nowhere).
        if !is_ipv4(pkt.data()) {
            return TxVerdict::Drop(DropReason::Malformed);
        }
        // Go's order: the route lookup first, then the TTL.
        let Some(peer) = peer else {
            return match net_unreachable(self.tun_addr(), pkt.data()) {
                Ok(icmp) => {
                    pkt.replace(&icmp);
                    TxVerdict::ToTun
                }
                Err(_) => TxVerdict::Drop(DropReason::NoPeer),
            };
        };
        match decrement_ttl(pkt.data_mut()) {
            Ttl::Forward => TxVerdict::Send(peer.endpoint),
            Ttl::Expired => TxVerdict::Drop(DropReason::Ttl),
        }
    }

    fn decap(&self, pkt: &mut Packet<'_>, _src: SocketAddr, _io: &mut dyn Io) -> RxVerdict {
        // Like Go, any source may send to us: the datagram is the packet.
        if !is_ipv4(pkt.data()) {
            return RxVerdict::Drop(DropReason::Malformed);
        }
        match decrement_ttl(pkt.data_mut()) {
            Ttl::Forward => RxVerdict::ToTun,
            Ttl::Expired => RxVerdict::Drop(DropReason::Ttl),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::checksum;

    #[derive(Default)]
    struct NoIo;
    impl Io for NoIo {
        fn send_to(&mut self, _: SocketAddr, _: &[u8]) {
            panic!("the udp codec sends nothing on its own");
        }
        fn write_tun(&mut self, _: &[u8]) {
            panic!("the udp codec writes nothing on its own");
        }
    }

    fn udp_packet(ttl: u8, proto: u8) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 32, 0, 7, 0x40, 0, ttl, proto, 0, 0, 10, 5, 1, 2, 10, 5, 2, 9,
        ];
        p.extend_from_slice(&[0x13, 0x88, 0x13, 0x89, 0, 12, 0, 0, 1, 2, 3, 4]);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn peer() -> Peer {
        Peer {
            endpoint: "192.168.100.2:8285".parse().unwrap(),
            id: 0,
        }
    }

    #[test]
    fn encap_sends_with_ttl_decremented() {
        let codec = UdpCodec::new([10, 5, 1, 0].into());
        let mut buf = udp_packet(64, 17);
        let len = buf.len();
        let mut pkt = Packet::new(&mut buf, 0, len);
        let v = codec.encap(&mut pkt, Some(&peer()), &mut NoIo);
        assert_eq!(v, TxVerdict::Send(peer().endpoint));
        assert_eq!(pkt.data()[8], 63);
        assert_eq!(checksum(&pkt.data()[..20]), 0);
    }

    #[test]
    fn encap_without_peer_answers_net_unreachable_into_the_tun() {
        let codec = UdpCodec::new([10, 5, 1, 0].into());
        let orig = udp_packet(64, 17);
        let mut buf = orig.clone();
        buf.resize(2048, 0);
        let len = orig.len();
        let mut pkt = Packet::new(&mut buf, 0, len);
        assert_eq!(codec.encap(&mut pkt, None, &mut NoIo), TxVerdict::ToTun);
        let want = net_unreachable([10, 5, 1, 0].into(), &orig).unwrap();
        assert_eq!(pkt.data(), &want[..]);
        // ICMP gets no answer; a TTL-1 packet with a peer is dropped.
        let mut buf = udp_packet(64, 1);
        let len = buf.len();
        let mut pkt = Packet::new(&mut buf, 0, len);
        assert_eq!(
            codec.encap(&mut pkt, None, &mut NoIo),
            TxVerdict::Drop(DropReason::NoPeer)
        );
        let mut buf = udp_packet(1, 17);
        let len = buf.len();
        let mut pkt = Packet::new(&mut buf, 0, len);
        assert_eq!(
            codec.encap(&mut pkt, Some(&peer()), &mut NoIo),
            TxVerdict::Drop(DropReason::Ttl)
        );
    }

    #[test]
    fn decap_decrements_and_drops_at_zero_and_non_ipv4() {
        let codec = UdpCodec::new([10, 5, 1, 0].into());
        let src: SocketAddr = "192.168.100.2:8285".parse().unwrap();
        let mut buf = udp_packet(2, 6);
        let len = buf.len();
        let mut pkt = Packet::new(&mut buf, 0, len);
        assert_eq!(codec.decap(&mut pkt, src, &mut NoIo), RxVerdict::ToTun);
        assert_eq!(pkt.data()[8], 1);
        assert_eq!(checksum(&pkt.data()[..20]), 0);
        assert_eq!(
            codec.decap(&mut pkt, src, &mut NoIo),
            RxVerdict::Drop(DropReason::Ttl)
        );
        let mut v6 = vec![0x60u8; 48];
        let mut pkt = Packet::new(&mut v6, 0, 48);
        assert_eq!(
            codec.decap(&mut pkt, src, &mut NoIo),
            RxVerdict::Drop(DropReason::Malformed)
        );
        codec.set_tun_addr([10, 5, 9, 0].into());
        assert_eq!(codec.tun_addr(), Ipv4Addr::new(10, 5, 9, 0));
    }
}
