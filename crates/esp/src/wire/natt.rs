//! Demultiplexing UDP port 4500 (RFC 3948 §2): IKE behind a non-ESP marker, ESP, or a
//! NAT-keepalive.

/// Length of the non-ESP marker (four zero bytes where an ESP packet has its SPI).
pub const NON_ESP_MARKER_LEN: usize = 4;
/// The single byte of a NAT-keepalive packet (RFC 3948 §2.3).
pub const KEEPALIVE: u8 = 0xff;

/// What a UDP/4500 payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Udp4500<'a> {
    /// An IKE message; the slice starts after the non-ESP marker (RFC 3948 §2.2).
    Ike(&'a [u8]),
    /// An ESP packet; the whole payload starts at the SPI (RFC 3948 §2.1).
    Esp,
    /// A NAT-keepalive (RFC 3948 §2.3): drop it.
    Keepalive,
    /// Too short for any of the above: drop and count it.
    Invalid,
}

/// Classifies the payload of a UDP datagram received on port 4500.
///
/// The SPI 0 is reserved (RFC 4303 §2.1), so four zero bytes cannot start ESP; an ESP
/// packet is at least its 8-byte header.
pub fn classify_udp4500(payload: &[u8]) -> Udp4500<'_> {
    match payload {
        [KEEPALIVE] => Udp4500::Keepalive,
        [0, 0, 0, 0, ike @ ..] => Udp4500::Ike(ike),
        _ if payload.len() >= super::esp::HEADER_LEN => Udp4500::Esp,
        _ => Udp4500::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive() {
        assert_eq!(classify_udp4500(&[0xff]), Udp4500::Keepalive);
        // One byte that is not 0xff is nothing we know.
        assert_eq!(classify_udp4500(&[0x00]), Udp4500::Invalid);
    }

    #[test]
    fn ike_after_marker() {
        let datagram = [0, 0, 0, 0, 0xaa, 0xbb];
        assert_eq!(classify_udp4500(&datagram), Udp4500::Ike(&[0xaa, 0xbb]));
        assert_eq!(classify_udp4500(&[0, 0, 0, 0]), Udp4500::Ike(&[]));
    }

    #[test]
    fn esp() {
        let datagram = [0x12, 0x34, 0x56, 0x78, 0, 0, 0, 1, 0xaa];
        assert_eq!(classify_udp4500(&datagram), Udp4500::Esp);
        assert_eq!(classify_udp4500(&datagram[..8]), Udp4500::Esp);
    }

    #[test]
    fn invalid() {
        assert_eq!(classify_udp4500(&[]), Udp4500::Invalid);
        assert_eq!(classify_udp4500(&[0, 0, 0]), Udp4500::Invalid);
        assert_eq!(
            classify_udp4500(&[0x12, 0x34, 0x56, 0x78, 0, 0, 0]),
            Udp4500::Invalid
        );
    }
}
