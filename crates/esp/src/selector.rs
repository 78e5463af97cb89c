//! Traffic selectors (RFC 4301 §4.4.1.1, RFC 7296 §3.13.1) and the check of an inner packet
//! against them.

use core::net::Ipv4Addr;

use crate::wire::Ipv4Packet;
use crate::wire::ipv4::protocol;

/// One IPv4 traffic selector: an address range, an IP protocol (0 = any) and a port range.
///
/// As in IKEv2 (RFC 7296 §3.13.1) a port range of `65535..=0` is OPAQUE: it matches only
/// packets whose ports cannot be seen (non-first fragments). For ICMP the "port" is
/// `type << 8 | code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficSelector {
    pub start_addr: Ipv4Addr,
    pub end_addr: Ipv4Addr,
    pub protocol: u8,
    pub start_port: u16,
    pub end_port: u16,
}

impl TrafficSelector {
    /// Every IPv4 address, protocol and port (`0.0.0.0/0`), the selector of destination
    /// routing mode.
    pub const ANY: Self = Self {
        start_addr: Ipv4Addr::UNSPECIFIED,
        end_addr: Ipv4Addr::BROADCAST,
        protocol: 0,
        start_port: 0,
        end_port: u16::MAX,
    };

    /// All traffic of a CIDR block. Fails if `prefix_len > 32`; host bits are ignored.
    pub fn cidr(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, crate::EspError> {
        if prefix_len > 32 {
            return Err(crate::EspError::InvalidParams("prefix length over 32"));
        }
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0);
        let start = u32::from(addr) & mask;
        Ok(Self {
            start_addr: Ipv4Addr::from(start),
            end_addr: Ipv4Addr::from(start | !mask),
            ..Self::ANY
        })
    }

    /// Restricts the selector to one protocol and the ports `start_port..=end_port`
    /// (`65535, 0` is OPAQUE).
    #[must_use]
    pub fn with_protocol(mut self, protocol: u8, start_port: u16, end_port: u16) -> Self {
        self.protocol = protocol;
        self.start_port = start_port;
        self.end_port = end_port;
        self
    }

    fn is_any_port(&self) -> bool {
        self.start_port == 0 && self.end_port == u16::MAX
    }

    fn is_opaque_port(&self) -> bool {
        self.start_port == u16::MAX && self.end_port == 0
    }

    /// Does one end of a flow (address, protocol, that end's port) fall in this selector?
    pub fn matches(&self, addr: Ipv4Addr, proto: u8, port: Port) -> bool {
        let addr = u32::from(addr);
        if addr < u32::from(self.start_addr) || addr > u32::from(self.end_addr) {
            return false;
        }
        if self.protocol != 0 && self.protocol != proto {
            return false;
        }
        if self.is_any_port() {
            return true;
        }
        match port {
            Port::Known(port) => (self.start_port..=self.end_port).contains(&port),
            // RFC 4301 §4.4.1.1: OPAQUE ports match only ANY or OPAQUE selectors.
            Port::Opaque => self.is_opaque_port(),
            // A protocol without ports matches only a selector with the full port range
            // (RFC 7296 §3.13.1), handled above.
            Port::None => false,
        }
    }
}

/// A port as far as selectors are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Known(u16),
    /// The protocol has ports but this packet does not show them (a non-first fragment, or
    /// a transport header cut short).
    Opaque,
    /// The protocol has no ports.
    None,
}

/// The selector-relevant fields of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub src_port: Port,
    pub dst_port: Port,
}

impl Flow {
    /// Reads the flow of a checked IPv4 packet. Never panics.
    pub fn of<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Self {
        let proto = packet.protocol();
        let first_fragment = packet.frag_offset() == 0;
        let l4 = packet.payload();
        let (src_port, dst_port) = match proto {
            protocol::TCP | protocol::UDP | protocol::SCTP | protocol::UDPLITE => {
                match (first_fragment, l4) {
                    (true, [s0, s1, d0, d1, ..]) => (
                        Port::Known(u16::from_be_bytes([*s0, *s1])),
                        Port::Known(u16::from_be_bytes([*d0, *d1])),
                    ),
                    _ => (Port::Opaque, Port::Opaque),
                }
            }
            // RFC 7296 §3.13.1: ICMP type and code form one 16-bit "port".
            protocol::ICMP => match (first_fragment, l4) {
                (true, [kind, code, ..]) => {
                    let port = Port::Known(u16::from_be_bytes([*kind, *code]));
                    (port, port)
                }
                _ => (Port::Opaque, Port::Opaque),
            },
            _ => (Port::None, Port::None),
        };
        Self {
            src: packet.src_addr(),
            dst: packet.dst_addr(),
            protocol: proto,
            src_port,
            dst_port,
        }
    }
}

/// The selectors of one Child SA, from our point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selectors {
    /// Our side (TSi when we initiated, TSr when we responded).
    pub local: Vec<TrafficSelector>,
    /// The peer's side.
    pub remote: Vec<TrafficSelector>,
}

impl Selectors {
    /// `0.0.0.0/0 <-> 0.0.0.0/0`: destination routing mode.
    pub fn any() -> Self {
        Self {
            local: vec![TrafficSelector::ANY],
            remote: vec![TrafficSelector::ANY],
        }
    }

    /// A packet coming out of the tunnel: source in a remote selector, destination in a
    /// local one (RFC 4301 §5.2 step 4). The SA covers the cross product of the two lists
    /// (RFC 7296 §2.9).
    pub fn allows_inbound(&self, flow: &Flow) -> bool {
        any_matches(&self.remote, flow.src, flow.protocol, flow.src_port)
            && any_matches(&self.local, flow.dst, flow.protocol, flow.dst_port)
    }

    /// A packet going into the tunnel: source in a local selector, destination in a remote
    /// one. The data plane picks the SA by route; this is for callers that want to check.
    pub fn allows_outbound(&self, flow: &Flow) -> bool {
        any_matches(&self.local, flow.src, flow.protocol, flow.src_port)
            && any_matches(&self.remote, flow.dst, flow.protocol, flow.dst_port)
    }
}

fn any_matches(list: &[TrafficSelector], addr: Ipv4Addr, proto: u8, port: Port) -> bool {
    list.iter().any(|ts| ts.matches(addr, proto, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_packet(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, frag: u16) -> [u8; 28] {
        let mut p = [0u8; 28];
        p[0] = 0x45;
        p[3] = 28;
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[9] = protocol::UDP;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    fn flow(bytes: &[u8]) -> Flow {
        Flow::of(&Ipv4Packet::new_checked(bytes).unwrap())
    }

    #[test]
    fn cidr_ranges() {
        let ts = TrafficSelector::cidr(Ipv4Addr::new(10, 1, 2, 3), 16).unwrap();
        assert_eq!(ts.start_addr, Ipv4Addr::new(10, 1, 0, 0));
        assert_eq!(ts.end_addr, Ipv4Addr::new(10, 1, 255, 255));
        let all = TrafficSelector::cidr(Ipv4Addr::new(10, 1, 2, 3), 0).unwrap();
        assert_eq!(all, TrafficSelector::ANY);
        let host = TrafficSelector::cidr(Ipv4Addr::new(10, 1, 2, 3), 32).unwrap();
        assert_eq!(host.start_addr, host.end_addr);
        assert!(TrafficSelector::cidr(Ipv4Addr::new(10, 1, 2, 3), 33).is_err());
    }

    #[test]
    fn inbound_direction() {
        let selectors = Selectors {
            local: vec![TrafficSelector::cidr(Ipv4Addr::new(10, 0, 0, 0), 24).unwrap()],
            remote: vec![TrafficSelector::cidr(Ipv4Addr::new(10, 9, 0, 0), 16).unwrap()],
        };
        let incoming = udp_packet([10, 9, 3, 4], [10, 0, 0, 7], 1000, 53, 0);
        assert!(selectors.allows_inbound(&flow(&incoming)));
        assert!(!selectors.allows_outbound(&flow(&incoming)));
        let spoofed = udp_packet([10, 8, 3, 4], [10, 0, 0, 7], 1000, 53, 0);
        assert!(!selectors.allows_inbound(&flow(&spoofed)));
        let wrong_dst = udp_packet([10, 9, 3, 4], [10, 0, 1, 7], 1000, 53, 0);
        assert!(!selectors.allows_inbound(&flow(&wrong_dst)));
    }

    #[test]
    fn protocol_and_ports() {
        let selectors = Selectors {
            local: vec![TrafficSelector::ANY.with_protocol(protocol::UDP, 53, 53)],
            remote: vec![TrafficSelector::ANY],
        };
        assert!(selectors.allows_inbound(&flow(&udp_packet([1; 4], [2; 4], 999, 53, 0))));
        assert!(!selectors.allows_inbound(&flow(&udp_packet([1; 4], [2; 4], 999, 54, 0))));
        // A non-first fragment hides its ports: OPAQUE does not match a port range.
        let fragment = udp_packet([1; 4], [2; 4], 999, 53, 0x0010);
        assert_eq!(flow(&fragment).dst_port, Port::Opaque);
        assert!(!selectors.allows_inbound(&flow(&fragment)));
        let opaque = Selectors {
            local: vec![TrafficSelector::ANY.with_protocol(protocol::UDP, u16::MAX, 0)],
            remote: vec![TrafficSelector::ANY],
        };
        assert!(opaque.allows_inbound(&flow(&fragment)));
        // A TCP packet does not match a UDP selector.
        let mut tcp = udp_packet([1; 4], [2; 4], 999, 53, 0);
        tcp[9] = protocol::TCP;
        assert!(!selectors.allows_inbound(&flow(&tcp)));
        // ANY matches a protocol without ports.
        let mut gre = udp_packet([1; 4], [2; 4], 0, 0, 0);
        gre[9] = 47;
        assert!(Selectors::any().allows_inbound(&flow(&gre)));
        let port_range = Selectors {
            local: vec![TrafficSelector::ANY.with_protocol(0, 1, 1000)],
            remote: vec![TrafficSelector::ANY],
        };
        assert!(!port_range.allows_inbound(&flow(&gre)));
    }

    #[test]
    fn icmp_type_code_as_port() {
        let mut echo = udp_packet([1; 4], [2; 4], 0, 0, 0);
        echo[9] = protocol::ICMP;
        echo[20] = 8;
        let echo_only = Selectors {
            local: vec![TrafficSelector::ANY.with_protocol(protocol::ICMP, 0x0800, 0x08ff)],
            remote: vec![TrafficSelector::ANY],
        };
        assert!(echo_only.allows_inbound(&flow(&echo)));
        echo[20] = 0;
        assert!(!echo_only.allows_inbound(&flow(&echo)));
    }

    #[test]
    fn truncated_transport_header_is_opaque() {
        let mut short = [0u8; 22];
        short[0] = 0x45;
        short[3] = 22;
        short[9] = protocol::TCP;
        let flow = flow(&short);
        assert_eq!(flow.src_port, Port::Opaque);
    }
}
