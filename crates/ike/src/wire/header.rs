//! The IKE header (RFC 7296 §3.1) as a zero-copy view plus an owned representation.
//!
//! Contract (smoltcp style): after [`Header::new_checked`] succeeds, no accessor panics.

use super::DecodeError;
use super::registry::{ExchangeType, PayloadType};

/// Length of the fixed IKE header.
pub const HEADER_LEN: usize = 28;

mod field {
    use core::ops::Range;
    pub const SPI_I: Range<usize> = 0..8;
    pub const SPI_R: Range<usize> = 8..16;
    pub const NEXT: usize = 16;
    pub const VERSION: usize = 17;
    pub const EXCHANGE: usize = 18;
    pub const FLAGS: usize = 19;
    pub const MSG_ID: Range<usize> = 20..24;
    pub const LENGTH: Range<usize> = 24..28;
}

/// RFC 7296 §3.1 header flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// Set by the original initiator of the IKE SA.
    pub const INITIATOR: u8 = 0x08;
    pub const VERSION: u8 = 0x10;
    /// Set in responses.
    pub const RESPONSE: u8 = 0x20;

    pub fn initiator(self) -> bool {
        self.0 & Self::INITIATOR != 0
    }

    pub fn response(self) -> bool {
        self.0 & Self::RESPONSE != 0
    }
}

/// A read-only (or, with `T: AsMut`, writable) view of an IKE header.
#[derive(Debug, Clone)]
pub struct Header<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Checks the length and major version (RFC 7296 §2.5: major version 2 only) and
    /// that the length field is consistent with the buffer.
    pub fn new_checked(buf: T) -> Result<Self, DecodeError> {
        let h = Self { buf };
        let b = h.buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(DecodeError::Truncated("IKE header"));
        }
        if h.major_version() != 2 {
            return Err(DecodeError::InvalidMajorVersion(h.major_version()));
        }
        let len = h.length() as usize;
        if len < HEADER_LEN || len > b.len() {
            return Err(DecodeError::InvalidLength("IKE header"));
        }
        if len != b.len() {
            return Err(DecodeError::TrailingBytes("IKE message"));
        }
        Ok(h)
    }

    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }

    pub fn spi_i(&self) -> u64 {
        u64::from_be_bytes(self.b()[field::SPI_I].try_into().unwrap_or_default())
    }

    pub fn spi_r(&self) -> u64 {
        u64::from_be_bytes(self.b()[field::SPI_R].try_into().unwrap_or_default())
    }

    pub fn next_payload(&self) -> PayloadType {
        PayloadType(self.b()[field::NEXT])
    }

    pub fn major_version(&self) -> u8 {
        self.b()[field::VERSION] >> 4
    }

    pub fn exchange(&self) -> ExchangeType {
        ExchangeType(self.b()[field::EXCHANGE])
    }

    pub fn flags(&self) -> Flags {
        Flags(self.b()[field::FLAGS])
    }

    pub fn message_id(&self) -> u32 {
        u32::from_be_bytes(self.b()[field::MSG_ID].try_into().unwrap_or_default())
    }

    pub fn length(&self) -> u32 {
        u32::from_be_bytes(self.b()[field::LENGTH].try_into().unwrap_or_default())
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.b()[HEADER_LEN..]
    }

    pub fn repr(&self) -> HeaderRepr {
        HeaderRepr {
            spi_i: self.spi_i(),
            spi_r: self.spi_r(),
            next_payload: self.next_payload(),
            exchange: self.exchange(),
            flags: self.flags(),
            message_id: self.message_id(),
            length: self.length(),
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    /// Rewrites the length field (used after the SK payload is sealed).
    pub fn set_length(&mut self, len: u32) {
        self.buf.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }
}

/// The owned form of the IKE header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRepr {
    pub spi_i: u64,
    pub spi_r: u64,
    pub next_payload: PayloadType,
    pub exchange: ExchangeType,
    pub flags: Flags,
    pub message_id: u32,
    /// Total message length including this header.
    pub length: u32,
}

impl HeaderRepr {
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spi_i.to_be_bytes());
        out.extend_from_slice(&self.spi_r.to_be_bytes());
        out.push(self.next_payload.0);
        out.push(0x20); // major 2, minor 0
        out.push(self.exchange.0);
        out.push(self.flags.0);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BYTES: [u8; 28] = [
        1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0, 33, 0x20, 34, 0x08, 0, 0, 0, 0, 0, 0, 0, 28,
    ];

    #[test]
    fn parse_and_emit() {
        let h = Header::new_checked(&BYTES[..]).unwrap();
        assert_eq!(h.spi_i(), 0x0102030405060708);
        assert_eq!(h.spi_r(), 0);
        assert_eq!(h.next_payload(), PayloadType::SA);
        assert_eq!(h.exchange(), ExchangeType::IKE_SA_INIT);
        assert!(h.flags().initiator());
        assert!(!h.flags().response());
        assert_eq!(h.length(), 28);
        let mut out = Vec::new();
        h.repr().emit(&mut out);
        assert_eq!(out, BYTES);
    }

    #[test]
    fn checks() {
        assert_eq!(
            Header::new_checked(&BYTES[..27]).unwrap_err(),
            DecodeError::Truncated("IKE header")
        );
        let mut v = BYTES;
        v[17] = 0x10;
        assert_eq!(
            Header::new_checked(&v[..]).unwrap_err(),
            DecodeError::InvalidMajorVersion(1)
        );
        let mut v = BYTES;
        v[27] = 29;
        assert!(Header::new_checked(&v[..]).is_err());
        let mut long = BYTES.to_vec();
        long.push(0);
        assert_eq!(
            Header::new_checked(&long[..]).unwrap_err(),
            DecodeError::TrailingBytes("IKE message")
        );
    }
}
