//! Byte-level helpers shared by the message decoders: a bounds-checked
//! [`Reader`] (every read returns `Option`, so no decoder can index past the
//! end of a network buffer) and the RFC 4271 §4.3 prefix encoding.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// A cursor over a received buffer. After any `None` the reader is left
/// where it was; decoders turn `None` into the NOTIFICATION their RFC names.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.buf.split_at_checked(n)?;
        self.buf = tail;
        Some(head)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&b, tail) = self.buf.split_first()?;
        self.buf = tail;
        Some(b)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        let arr: [u8; 4] = b.try_into().ok()?;
        Some(u32::from_be_bytes(arr))
    }

    pub(crate) fn ipv4(&mut self) -> Option<Ipv4Addr> {
        self.u32().map(Ipv4Addr::from)
    }
}

/// Why a prefix list (withdrawn routes, NLRI, MP NLRI) could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrefixError {
    /// Length octet above 32.
    TooLong(u8),
    /// The prefix octets run past the end of the field.
    Truncated,
}

/// RFC 4271 §4.3: a list of `<length, prefix>` tuples, the prefix padded to
/// whole octets. Bits past the prefix length are ignored (masked off).
pub(crate) fn decode_prefixes(buf: &[u8]) -> Result<Vec<Ipv4Net>, PrefixError> {
    let mut r = Reader::new(buf);
    let mut out = Vec::new();
    while !r.is_empty() {
        let len = r.u8().ok_or(PrefixError::Truncated)?;
        if len > 32 {
            return Err(PrefixError::TooLong(len));
        }
        let octets = r
            .take(usize::from(len).div_ceil(8))
            .ok_or(PrefixError::Truncated)?;
        let mut addr = [0u8; 4];
        for (dst, src) in addr.iter_mut().zip(octets) {
            *dst = *src;
        }
        let net = Ipv4Net::new(Ipv4Addr::from(addr), len).map_err(|_| PrefixError::TooLong(len))?;
        out.push(net.trunc());
    }
    Ok(out)
}

pub(crate) fn encode_prefix(p: &Ipv4Net, out: &mut Vec<u8>) {
    out.push(p.prefix_len());
    let octets = p.network().octets();
    out.extend_from_slice(
        octets
            .get(..usize::from(p.prefix_len()).div_ceil(8))
            .unwrap_or(&octets),
    );
}

pub(crate) fn encode_prefixes(ps: &[Ipv4Net], out: &mut Vec<u8>) {
    for p in ps {
        encode_prefix(p, out);
    }
}

/// Writes a 16-bit length placeholder and returns its offset, to be patched
/// by [`patch_u16`] once the variable-length part is written.
pub(crate) fn len16_placeholder(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    at
}

pub(crate) fn patch_u16(out: &mut [u8], at: usize, value: usize) {
    let v = u16::try_from(value).unwrap_or(u16::MAX).to_be_bytes();
    if let Some(slot) = out.get_mut(at..at + 2) {
        slot.copy_from_slice(&v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_round_trip() {
        let ps: Vec<Ipv4Net> = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "192.168.1.0/24",
            "198.51.100.7/32",
            "10.128.0.0/9",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut buf = Vec::new();
        encode_prefixes(&ps, &mut buf);
        assert_eq!(
            buf,
            [0, 8, 10, 24, 192, 168, 1, 32, 198, 51, 100, 7, 9, 10, 128]
        );
        assert_eq!(decode_prefixes(&buf).unwrap(), ps);
    }

    #[test]
    fn prefix_errors() {
        assert_eq!(
            decode_prefixes(&[33, 1, 2, 3, 4, 5]),
            Err(PrefixError::TooLong(33))
        );
        assert_eq!(decode_prefixes(&[24, 10, 0]), Err(PrefixError::Truncated));
        // Host bits beyond the length are masked, not rejected.
        assert_eq!(
            decode_prefixes(&[8, 10]).unwrap(),
            decode_prefixes(&[8, 10]).unwrap()
        );
        assert_eq!(
            decode_prefixes(&[7, 0xff]).unwrap()[0].to_string(),
            "254.0.0.0/7"
        );
    }

    #[test]
    fn reader_bounds() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u16(), None);
        assert_eq!(r.u8(), Some(3));
        assert_eq!(r.u8(), None);
        assert!(r.take(1).is_none());
    }
}
