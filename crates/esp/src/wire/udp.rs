//! UDP header (RFC 768), as used for ESP-in-UDP (RFC 3948 §2.1).

use super::{WireError, be16};

/// Field offsets of the UDP header.
pub mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;
/// The IKE/ESP NAT traversal port (RFC 3948 §2.1, RFC 7296 §2.23).
pub const NATT_PORT: u16 = 4500;
/// The IKE port.
pub const IKE_PORT: u16 = 500;

/// A view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps without checking; accessors panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps and runs [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks `8 <= Length <= buffer length`. After this succeeds no accessor panics.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated("udp header"));
        }
        let field_len = usize::from(self.len());
        if field_len < HEADER_LEN {
            return Err(WireError::Malformed("udp length"));
        }
        if field_len > len {
            return Err(WireError::Truncated("udp payload"));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// True when the Length field says the datagram has no payload.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) == HEADER_LEN
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// The bytes between the header and Length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    pub fn set_src_port(&mut self, value: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_dst_port(&mut self, value: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&value.to_be_bytes());
    }

    /// Changing Length can invalidate a previous `check_len`.
    pub fn set_len(&mut self, value: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }
}

/// An owned UDP header for emitting ESP-in-UDP. The checksum is always written as zero:
/// RFC 3948 §3.1.1 lets an ESP-in-UDP sender over IPv4 do that (ESP's ICV protects the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
}

impl UdpRepr {
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 8-byte header; fails on a short buffer or a length over 16 bits.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut UdpPacket<T>,
    ) -> Result<(), WireError> {
        if packet.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated("udp header"));
        }
        let len = u16::try_from(HEADER_LEN + self.payload_len)
            .map_err(|_| WireError::Malformed("udp length"))?;
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(len);
        packet.set_checksum(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 4500 -> 4500, length 12, checksum 0, payload 4 bytes.
    const PACKET: [u8; 12] = [
        0x11, 0x94, 0x11, 0x94, 0x00, 0x0c, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04,
    ];

    #[test]
    fn parse() {
        let packet = UdpPacket::new_checked(&PACKET[..]).unwrap();
        assert_eq!(packet.src_port(), NATT_PORT);
        assert_eq!(packet.dst_port(), NATT_PORT);
        assert_eq!(packet.len(), 12);
        assert!(!packet.is_empty());
        assert_eq!(packet.checksum(), 0);
        assert_eq!(packet.payload(), &[1, 2, 3, 4]);
    }

    #[test]
    fn emit() {
        let mut bytes = [0xffu8; 12];
        bytes[8..].copy_from_slice(&[1, 2, 3, 4]);
        let repr = UdpRepr {
            src_port: 4500,
            dst_port: 4500,
            payload_len: 4,
        };
        repr.emit(&mut UdpPacket::new_unchecked(&mut bytes[..]))
            .unwrap();
        assert_eq!(bytes, PACKET);
    }

    #[test]
    fn check_len() {
        assert_eq!(
            UdpPacket::new_checked(&PACKET[..7]).unwrap_err(),
            WireError::Truncated("udp header")
        );
        assert_eq!(
            UdpPacket::new_checked(&PACKET[..11]).unwrap_err(),
            WireError::Truncated("udp payload")
        );
        let mut short = PACKET;
        short[5] = 7;
        assert_eq!(
            UdpPacket::new_checked(&short[..]).unwrap_err(),
            WireError::Malformed("udp length")
        );
    }
}
