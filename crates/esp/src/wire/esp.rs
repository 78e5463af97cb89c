//! ESP header and trailer (RFC 4303 §2).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |               Security Parameters Index (SPI)                 |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                      Sequence Number                          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    IV (optional) + Payload Data               |
//! ~               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |               |     Padding (0-255 bytes)                     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                               |  Pad Length   | Next Header   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         Integrity Check Value-ICV   (variable)                |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use super::{WireError, be32};

/// Field offsets of the ESP header.
pub mod field {
    use core::ops::{Range, RangeFrom};
    pub const SPI: Range<usize> = 0..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const PAYLOAD: RangeFrom<usize> = 8..;
}

/// Length of the ESP header (SPI + sequence number).
pub const HEADER_LEN: usize = 8;
/// Length of the fixed part of the trailer (Pad Length + Next Header).
pub const TRAILER_FIXED_LEN: usize = 2;

/// A view of an ESP packet: header, then IV/ciphertext/ICV as one opaque payload.
#[derive(Debug, Clone)]
pub struct EspPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EspPacket<T> {
    /// Wraps without checking; accessors panic if the buffer is shorter than 8 bytes.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps and runs [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// After this succeeds no accessor panics.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated("esp header"));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn spi(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SPI.start)
    }

    /// The low 32 bits of the sequence number (the only ones on the wire, RFC 4303 §2.2).
    pub fn seq(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ.start)
    }

    /// Everything after the header: IV, ciphertext, ICV.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EspPacket<T> {
    pub fn set_spi(&mut self, spi: u32) {
        self.buffer.as_mut()[field::SPI].copy_from_slice(&spi.to_be_bytes());
    }

    pub fn set_seq(&mut self, seq: u32) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&seq.to_be_bytes());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// A view of a decrypted ESP plaintext: `payload data || padding || pad length || next header`
/// (RFC 4303 §2.4–2.6), i.e. the bytes between the IV and the ICV after decryption.
#[derive(Debug, Clone)]
pub struct EspTrailer<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EspTrailer<T> {
    /// Wraps without checking; accessors panic unless [`Self::check_len`] would pass.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps and runs [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let trailer = Self::new_unchecked(buffer);
        trailer.check_len()?;
        Ok(trailer)
    }

    /// Checks that the trailer fits and that Pad Length does not reach before the buffer.
    /// After this succeeds no accessor panics.
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        let Some(&pad_len) = buf.len().checked_sub(2).and_then(|at| buf.get(at)) else {
            return Err(WireError::Truncated("esp trailer"));
        };
        if usize::from(pad_len) + TRAILER_FIXED_LEN > buf.len() {
            return Err(WireError::Malformed("esp pad length"));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn pad_len(&self) -> u8 {
        let buf = self.buffer.as_ref();
        buf[buf.len() - 2]
    }

    pub fn next_header(&self) -> u8 {
        let buf = self.buffer.as_ref();
        buf[buf.len() - 1]
    }

    /// Length of the payload data (the inner packet plus any TFC padding, RFC 4303 §2.7).
    pub fn data_len(&self) -> usize {
        self.buffer.as_ref().len() - TRAILER_FIXED_LEN - usize::from(self.pad_len())
    }

    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.data_len()]
    }

    pub fn padding(&self) -> &[u8] {
        let buf = self.buffer.as_ref();
        &buf[self.data_len()..buf.len() - TRAILER_FIXED_LEN]
    }

    /// RFC 4303 §2.4: the default padding is the monotonic sequence 1, 2, 3, …; a receiver
    /// that knows the sender uses it (every IKE-keyed ESP does) checks it.
    pub fn padding_is_valid(&self) -> bool {
        self.padding()
            .iter()
            .zip(1u8..)
            .all(|(&byte, expected)| byte == expected)
    }
}

/// Writes `padding || pad length || next header` into `trailer`, whose length is
/// `pad_len + 2`. Panics if `trailer` is empty (callers size it from [`pad_len_for`]).
pub fn emit_trailer(trailer: &mut [u8], next_header: u8) {
    let pad_len = trailer.len() - TRAILER_FIXED_LEN;
    let (padding, fixed) = trailer.split_at_mut(pad_len);
    for (byte, value) in padding.iter_mut().zip(1u8..) {
        *byte = value;
    }
    // pad_len < 256: the callers' block sizes are at most 16 (pad_len_for).
    fixed[0] = pad_len as u8;
    fixed[1] = next_header;
}

/// The smallest padding that makes `data_len + padding + 2` a multiple of `block_len`
/// and of 4 (RFC 4303 §2.4). `block_len` is 4, 8 or 16.
pub const fn pad_len_for(data_len: usize, block_len: usize) -> usize {
    let align = if block_len > 4 { block_len } else { 4 };
    let rem = (data_len + TRAILER_FIXED_LEN) % align;
    if rem == 0 { 0 } else { align - rem }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPI 0x12345678, seq 0x00000002, then 4 payload bytes.
    const PACKET: [u8; 12] = [
        0x12, 0x34, 0x56, 0x78, 0x00, 0x00, 0x00, 0x02, 0xaa, 0xbb, 0xcc, 0xdd,
    ];

    #[test]
    fn parse_header() {
        let packet = EspPacket::new_checked(&PACKET[..]).unwrap();
        assert_eq!(packet.spi(), 0x1234_5678);
        assert_eq!(packet.seq(), 2);
        assert_eq!(packet.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
    }

    #[test]
    fn emit_header() {
        let mut bytes = [0u8; 12];
        let mut packet = EspPacket::new_unchecked(&mut bytes[..]);
        packet.set_spi(0x1234_5678);
        packet.set_seq(2);
        packet
            .payload_mut()
            .copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(bytes, PACKET);
    }

    #[test]
    fn check_len_header() {
        assert_eq!(
            EspPacket::new_checked(&PACKET[..7]).unwrap_err(),
            WireError::Truncated("esp header")
        );
        let header_only = EspPacket::new_checked(&PACKET[..8]).unwrap();
        assert!(header_only.payload().is_empty());
    }

    #[test]
    fn parse_trailer() {
        // 3 data bytes, padding 1 2 3, pad length 3, next header 4.
        let bytes = [0x45, 0x00, 0x00, 1, 2, 3, 3, 4];
        let trailer = EspTrailer::new_checked(&bytes[..]).unwrap();
        assert_eq!(trailer.pad_len(), 3);
        assert_eq!(trailer.next_header(), 4);
        assert_eq!(trailer.data(), &[0x45, 0, 0]);
        assert_eq!(trailer.padding(), &[1, 2, 3]);
        assert!(trailer.padding_is_valid());
    }

    #[test]
    fn trailer_bad_padding_detected() {
        let bytes = [0x45, 0x00, 0x00, 1, 3, 2, 3, 4];
        let trailer = EspTrailer::new_checked(&bytes[..]).unwrap();
        assert!(!trailer.padding_is_valid());
    }

    #[test]
    fn check_len_trailer() {
        assert!(EspTrailer::new_checked(&[4u8][..]).is_err());
        assert!(EspTrailer::new_checked(&[][..]).is_err());
        // Pad length 1 with nothing before it.
        assert_eq!(
            EspTrailer::new_checked(&[1u8, 4][..]).unwrap_err(),
            WireError::Malformed("esp pad length")
        );
        let empty_data = EspTrailer::new_checked(&[1u8, 1, 59][..]).unwrap();
        assert_eq!(empty_data.data_len(), 0);
        assert_eq!(empty_data.next_header(), 59);
    }

    #[test]
    fn emit_trailer_round_trips() {
        let mut bytes = [0u8; 7];
        emit_trailer(&mut bytes, 4);
        assert_eq!(bytes, [1, 2, 3, 4, 5, 5, 4]);
    }

    #[test]
    fn padding_lengths() {
        // AES-CBC: (data + pad + 2) % 16 == 0.
        assert_eq!(pad_len_for(14, 16), 0);
        assert_eq!(pad_len_for(15, 16), 15);
        assert_eq!(pad_len_for(100, 16), 10);
        // 3DES: block 8.
        assert_eq!(pad_len_for(6, 8), 0);
        assert_eq!(pad_len_for(7, 8), 7);
        // GCM: only 4-byte alignment.
        assert_eq!(pad_len_for(2, 4), 0);
        assert_eq!(pad_len_for(3, 4), 3);
        assert_eq!(pad_len_for(84, 4), 2);
    }
}
