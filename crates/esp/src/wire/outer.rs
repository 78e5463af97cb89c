//! The outer headers of a received packet, for receive paths that see them (raw IP
//! sockets deliver the IPv4 header; `IP_HDRINCL`-style captures; tests).

use core::net::Ipv4Addr;
use core::ops::Range;

use super::ipv4::protocol;
use super::natt::{NON_ESP_MARKER_LEN, Udp4500, classify_udp4500};
use super::udp::HEADER_LEN as UDP_HEADER_LEN;
use super::{Ipv4Packet, UdpPacket, WireError};

/// What an outer IPv4 packet carries, as ranges into the buffer that was parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outer {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// `(source port, destination port)` when the packet is UDP.
    pub udp_ports: Option<(u16, u16)>,
    pub payload: OuterPayload,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OuterPayload {
    /// An ESP packet (IP protocol 50, or UDP-encapsulated, RFC 3948 §2.1): hand
    /// `buf[range]` to `InboundSa::decapsulate`.
    Esp(Range<usize>),
    /// An IKE message behind the non-ESP marker (RFC 3948 §2.2), marker stripped.
    Ike(Range<usize>),
    /// A NAT-keepalive (RFC 3948 §2.3).
    Keepalive,
}

/// Parses an IPv4 packet carrying ESP, directly or in UDP. UDP is demultiplexed as port
/// 4500 traffic whatever the ports (a NAT may have changed them). Fragments are refused:
/// reassembly happens before this (RFC 4303 §3.4.1).
pub fn parse_outer(buf: &[u8]) -> Result<Outer, WireError> {
    let ip = Ipv4Packet::new_checked(buf)?;
    if ip.version() != 4 {
        return Err(WireError::Malformed("ipv4 version"));
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(WireError::Malformed("ipv4 fragment"));
    }
    let start = ip.header_len();
    let end = usize::from(ip.total_len());
    let (udp_ports, payload) = match ip.protocol() {
        protocol::ESP => (None, OuterPayload::Esp(start..end)),
        protocol::UDP => {
            let udp = UdpPacket::new_checked(ip.payload())?;
            let data_start = start + UDP_HEADER_LEN;
            let data_end = start + usize::from(udp.len());
            let payload = match classify_udp4500(udp.payload()) {
                Udp4500::Esp => OuterPayload::Esp(data_start..data_end),
                Udp4500::Ike(_) => OuterPayload::Ike(data_start + NON_ESP_MARKER_LEN..data_end),
                Udp4500::Keepalive => OuterPayload::Keepalive,
                Udp4500::Invalid => return Err(WireError::Truncated("udp-encapsulated payload")),
            };
            (Some((udp.src_port(), udp.dst_port())), payload)
        }
        _ => return Err(WireError::Malformed("not ESP")),
    };
    if let OuterPayload::Esp(range) = &payload
        && range.len() < super::esp::HEADER_LEN
    {
        return Err(WireError::Truncated("esp header"));
    }
    Ok(Outer {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        udp_ports,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(20 + payload.len() as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[198, 51, 100, 2]);
        p[16..20].copy_from_slice(&[192, 0, 2, 1]);
        p.extend_from_slice(payload);
        p
    }

    fn udp(payload: &[u8]) -> Vec<u8> {
        let mut d = vec![0x11, 0x94, 0x11, 0x94, 0, 0, 0, 0];
        d[4..6].copy_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        d.extend_from_slice(payload);
        d
    }

    const ESP: [u8; 12] = [0xc0, 0xff, 0xee, 0x01, 0, 0, 0, 1, 9, 9, 9, 9];

    #[test]
    fn raw_esp() {
        let packet = ipv4(protocol::ESP, &ESP);
        let outer = parse_outer(&packet).unwrap();
        assert_eq!(outer.src, Ipv4Addr::new(198, 51, 100, 2));
        assert_eq!(outer.dst, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(outer.udp_ports, None);
        assert_eq!(outer.payload, OuterPayload::Esp(20..32));
    }

    #[test]
    fn udp_encapsulated() {
        let packet = ipv4(protocol::UDP, &udp(&ESP));
        let outer = parse_outer(&packet).unwrap();
        assert_eq!(outer.udp_ports, Some((4500, 4500)));
        assert_eq!(outer.payload, OuterPayload::Esp(28..40));

        let ike = ipv4(protocol::UDP, &udp(&[0, 0, 0, 0, 0xaa, 0xbb]));
        assert_eq!(
            parse_outer(&ike).unwrap().payload,
            OuterPayload::Ike(32..34)
        );
        let keepalive = ipv4(protocol::UDP, &udp(&[0xff]));
        assert_eq!(
            parse_outer(&keepalive).unwrap().payload,
            OuterPayload::Keepalive
        );
    }

    #[test]
    fn refused() {
        assert!(parse_outer(&ipv4(protocol::TCP, &ESP)).is_err());
        assert!(parse_outer(&ipv4(protocol::ESP, &ESP[..7])).is_err());
        assert!(parse_outer(&ipv4(protocol::UDP, &udp(&[1, 2, 3]))).is_err());
        let mut fragment = ipv4(protocol::ESP, &ESP);
        fragment[6] = 0x20;
        assert_eq!(
            parse_outer(&fragment).unwrap_err(),
            WireError::Malformed("ipv4 fragment")
        );
        let mut v6 = ipv4(protocol::ESP, &ESP);
        v6[0] = 0x65;
        assert!(parse_outer(&v6).is_err());
    }
}
