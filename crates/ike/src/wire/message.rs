//! Whole messages: header plus payload chain (RFC 7296 §3.2).

use super::registry::PayloadType;
use super::{DecodeError, Header, HeaderRepr, Payload, Reader, len16_placeholder, patch_len16};

/// A decoded IKE message. An SK payload, if any, is still sealed; see `crate::sk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: HeaderRepr,
    pub payloads: Vec<Payload>,
}

impl Message {
    /// Decodes a whole datagram (without the non-ESP marker).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let h = Header::new_checked(bytes)?;
        let payloads = decode_chain(h.next_payload(), h.payload())?;
        Ok(Self {
            header: h.repr(),
            payloads,
        })
    }

    /// Encodes header and payloads; the header's `next_payload` and `length` are
    /// computed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let mut h = self.header;
        h.length = 0;
        h.emit(&mut out);
        let first = encode_chain(&self.payloads, &mut out);
        out[16] = first.0;
        let len = u32::try_from(out.len()).unwrap_or(u32::MAX);
        out[24..28].copy_from_slice(&len.to_be_bytes());
        out
    }
}

/// Decodes a payload chain starting with type `first`. Unknown payloads are skipped
/// unless their critical bit is set (RFC 7296 §2.5); the SK payload must be last
/// (§3.14).
pub fn decode_chain(first: PayloadType, bytes: &[u8]) -> Result<Vec<Payload>, DecodeError> {
    let mut r = Reader::new(bytes);
    let mut next = first;
    let mut out = Vec::new();
    while next != PayloadType::NONE {
        let ptype = next;
        next = PayloadType(r.u8("payload header")?);
        let critical = r.u8("payload header")? & 0x80 != 0;
        let len = usize::from(r.u16("payload length")?);
        let body = r.take(
            len.checked_sub(4)
                .ok_or(DecodeError::InvalidLength("payload"))?,
            "payload",
        )?;
        match Payload::decode_body(ptype, next, body)? {
            Some(p) => {
                let sk = matches!(p, Payload::Sk(_));
                out.push(p);
                if sk {
                    // The SK payload's Next Payload names the first inner payload.
                    r.expect_empty("SK payload")?;
                    return Ok(out);
                }
            }
            None if critical => return Err(DecodeError::UnsupportedCriticalPayload(ptype)),
            None => {}
        }
        if out.len() > 512 {
            return Err(DecodeError::InvalidValue("too many payloads"));
        }
    }
    r.expect_empty("payload chain")?;
    Ok(out)
}

/// Appends a payload chain to `out` and returns the type of the first payload (for the
/// header's or SK payload's Next Payload field).
pub fn encode_chain(payloads: &[Payload], out: &mut Vec<u8>) -> PayloadType {
    for (i, p) in payloads.iter().enumerate() {
        let next = match (p, payloads.get(i + 1)) {
            (Payload::Sk(e), _) => e.first,
            (_, Some(n)) => n.ptype(),
            (_, None) => PayloadType::NONE,
        };
        let start = out.len();
        out.push(next.0);
        out.push(0);
        let at = len16_placeholder(out);
        p.encode_body(out);
        patch_len16(out, at, start);
    }
    payloads.first().map_or(PayloadType::NONE, Payload::ptype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::registry::{ExchangeType, NotifyType};
    use crate::wire::{Flags, KeyExchange, Notify};

    fn sample() -> Message {
        Message {
            header: HeaderRepr {
                spi_i: 0x1122334455667788,
                spi_r: 0,
                next_payload: PayloadType::NONE,
                exchange: ExchangeType::IKE_SA_INIT,
                flags: Flags(Flags::INITIATOR),
                message_id: 0,
                length: 0,
            },
            payloads: vec![
                Payload::Ke(KeyExchange {
                    group: 2,
                    data: vec![0xaa; 4],
                }),
                Payload::Nonce(vec![0x55; 16]),
                Payload::Notify(Notify::new(NotifyType(12345), vec![1, 2])),
            ],
        }
    }

    #[test]
    fn message_fixed_bytes() {
        let bytes = sample().encode();
        let mut want = vec![
            0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        want.extend_from_slice(&[34, 0x20, 34, 0x08, 0, 0, 0, 0, 0, 0, 0, 28 + 12 + 20 + 10]);
        want.extend_from_slice(&[40, 0, 0, 12, 0, 2, 0, 0, 0xaa, 0xaa, 0xaa, 0xaa]);
        want.extend_from_slice(&[41, 0, 0, 20]);
        want.extend_from_slice(&[0x55; 16]);
        want.extend_from_slice(&[0, 0, 0, 10, 0, 0, 0x30, 0x39, 1, 2]);
        assert_eq!(bytes, want);
        let m = Message::decode(&bytes).unwrap();
        let mut s = sample();
        s.header.next_payload = PayloadType::KE;
        s.header.length = u32::try_from(bytes.len()).unwrap();
        assert_eq!(m, s);
    }

    #[test]
    fn unknown_payloads_skipped_or_rejected() {
        let mut chain = vec![200, 0, 0, 5, 0xee]; // type 250 → next 200
        chain.extend_from_slice(&[0, 0, 0, 6, 1, 2]); // type 200 → end
        assert_eq!(decode_chain(PayloadType(250), &chain).unwrap(), vec![]);
        chain[1] = 0x80;
        assert_eq!(
            decode_chain(PayloadType(250), &chain).unwrap_err(),
            DecodeError::UnsupportedCriticalPayload(PayloadType(250))
        );
    }

    #[test]
    fn trailing_and_truncated_chains() {
        let ok = [0, 0, 0, 8, 0, 2, 0, 0];
        assert!(decode_chain(PayloadType::KE, &ok).is_ok());
        let mut long = ok.to_vec();
        long.push(0);
        assert_eq!(
            decode_chain(PayloadType::KE, &long).unwrap_err(),
            DecodeError::TrailingBytes("payload chain")
        );
        assert!(decode_chain(PayloadType::KE, &ok[..7]).is_err());
        let short_len = [0, 0, 0, 3];
        assert!(decode_chain(PayloadType::KE, &short_len).is_err());
    }

    #[test]
    fn sk_must_be_last() {
        // SK whose next payload (first inner) is IDi, followed by stray bytes.
        let chain = [35, 0, 0, 6, 9, 9, 0];
        assert_eq!(
            decode_chain(PayloadType::SK, &chain).unwrap_err(),
            DecodeError::TrailingBytes("SK payload")
        );
        let m = decode_chain(PayloadType::SK, &chain[..6]).unwrap();
        assert!(matches!(&m[0], Payload::Sk(e) if e.first == PayloadType::IDI && e.data == [9, 9]));
    }
}
