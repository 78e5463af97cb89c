//! IKEv2 wire format (RFC 7296 §3).
//!
//! Two tiers, as in smoltcp and rustls: the fixed 28-byte IKE header is a zero-copy
//! view ([`Header`]) with checked accessors, and the variable payload chain is decoded
//! with the [`Codec`] trait over a [`Reader`] into owned values ([`Payload`]). Trailing
//! bytes anywhere are an error. IANA registries are open newtypes (see [`registry`]) so
//! values this crate does not know round-trip unchanged.

mod header;
mod message;
mod payload;
pub mod registry;

pub use header::{Flags, HEADER_LEN, Header, HeaderRepr};
pub use message::{Message, decode_chain, encode_chain};
pub use payload::{
    Attribute, Auth, Delete, Encrypted, Identification, KeyExchange, Notify, Payload, Proposal,
    SaPayload, TrafficSelector, Transform,
};

use registry::PayloadType;

/// Why bytes could not be decoded. The caller maps this onto what, if anything, is sent
/// back to the peer ([`DecodeError::notify`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    #[error("trailing bytes after {0}")]
    TrailingBytes(&'static str),
    #[error("invalid length in {0}")]
    InvalidLength(&'static str),
    #[error("invalid value in {0}")]
    InvalidValue(&'static str),
    #[error("unsupported major version {0}")]
    InvalidMajorVersion(u8),
    #[error("unsupported critical payload {0:?}")]
    UnsupportedCriticalPayload(PayloadType),
}

impl DecodeError {
    /// The error notify RFC 7296 §3.10.1 asks a responder to send for this error.
    pub fn notify(&self) -> registry::NotifyType {
        use registry::NotifyType;
        match self {
            Self::InvalidMajorVersion(_) => NotifyType::INVALID_MAJOR_VERSION,
            Self::UnsupportedCriticalPayload(_) => NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
            _ => NotifyType::INVALID_SYNTAX,
        }
    }
}

/// A cursor over received bytes. Every read is bounds-checked and returns an error
/// instead of panicking.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.left() == 0
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Truncated(what))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated(what))?;
        self.pos = end;
        Ok(s)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let s = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        s
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A sub-reader over the next `n` bytes.
    pub fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader<'a>, DecodeError> {
        Ok(Reader::new(self.take(n, what)?))
    }

    /// Errors unless everything was consumed.
    pub fn expect_empty(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(what))
        }
    }
}

/// Encoding and decoding of one wire structure (rustls style).
pub trait Codec: Sized {
    fn encode(&self, out: &mut Vec<u8>);
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    fn encoded(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Decodes exactly `bytes`: trailing bytes are an error.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = Self::read(&mut r)?;
        r.expect_empty("structure")?;
        Ok(v)
    }
}

/// Writes a 16-bit length placeholder and returns its offset for [`patch_len16`].
pub(crate) fn len16_placeholder(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    at
}

/// Fills a 16-bit length so that it counts from `start` to the end of `out`.
/// Lengths over 65535 cannot be represented; IKE messages we build stay far below.
pub(crate) fn patch_len16(out: &mut [u8], at: usize, start: usize) {
    let len = u16::try_from(out.len() - start).unwrap_or(u16::MAX);
    out[at..at + 2].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_bounds() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16("a").unwrap(), 0x0102);
        assert_eq!(r.u16("b"), Err(DecodeError::Truncated("b")));
        assert_eq!(r.u8("c").unwrap(), 3);
        assert!(r.is_empty());
        assert_eq!(r.take(usize::MAX, "d"), Err(DecodeError::Truncated("d")));
    }
}
