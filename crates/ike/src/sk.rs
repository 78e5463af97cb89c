//! Sealing and opening the Encrypted (SK) payload: CBC + HMAC (RFC 7296 §3.14) and
//! AEAD (RFC 5282).

use crypto::{Cipher, Mac, Random};

use crate::keys::{IkeKeys, IkeSuite};
use crate::wire::registry::PayloadType;
use crate::wire::{
    DecodeError, Encrypted, HEADER_LEN, HeaderRepr, Payload, decode_chain, encode_chain,
};

/// Why an SK payload could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkError {
    /// Wrong ICV or malformed ciphertext framing: dropped silently (RFC 7296 §2.21.2).
    #[error("integrity check failed")]
    Integrity,
    /// Authenticated, but the inner payloads are malformed.
    #[error("malformed inner payloads: {0}")]
    Decode(#[from] DecodeError),
}

/// The keyed transforms of one direction.
pub struct Direction {
    cipher: Cipher,
    mac: Option<Mac>,
}

/// Both directions of an IKE SA's SK protection, from our point of view.
pub struct SkCrypto {
    suite: IkeSuite,
    out: Direction,
    inb: Direction,
}

impl std::fmt::Debug for SkCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkCrypto")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl SkCrypto {
    /// `initiator` is our role in the IKE SA (original initiator or the initiator of
    /// the rekey exchange that created it).
    pub fn new(suite: IkeSuite, keys: &IkeKeys, initiator: bool) -> Result<Self, crypto::Error> {
        let dir = |e: &[u8], a: &[u8]| -> Result<Direction, crypto::Error> {
            Ok(Direction {
                cipher: Cipher::new(suite.encr, e)?,
                mac: suite.integ.map(|i| Mac::new(i, a)).transpose()?,
            })
        };
        let i = dir(keys.sk_ei.as_slice(), keys.sk_ai.as_slice())?;
        let r = dir(keys.sk_er.as_slice(), keys.sk_ar.as_slice())?;
        let (out, inb) = if initiator { (i, r) } else { (r, i) };
        Ok(Self { suite, out, inb })
    }

    /// Builds a whole message: `header` followed by one SK payload holding `inner`.
    pub fn seal(&self, header: HeaderRepr, inner: &[Payload], rng: &mut dyn Random) -> Vec<u8> {
        let encr = self.suite.encr;
        let mut plain = Vec::with_capacity(256);
        let first = encode_chain(inner, &mut plain);
        // RFC 7296 §3.14: payloads | padding | pad length is a multiple of the block size.
        let block = encr.block_len().max(1);
        let pad = (block - (plain.len() + 1) % block) % block;
        plain.resize(plain.len() + pad, 0);
        plain.push(u8::try_from(pad).unwrap_or(0));

        let iv_len = encr.iv_len();
        let icv_len = if encr.is_aead() {
            encr.icv_len()
        } else {
            self.suite.integ.map_or(0, |i| i.icv_len())
        };
        let mut out = Vec::with_capacity(HEADER_LEN + 4 + iv_len + plain.len() + icv_len);
        let mut h = header;
        h.next_payload = PayloadType::SK;
        h.length =
            u32::try_from(HEADER_LEN + 4 + iv_len + plain.len() + icv_len).unwrap_or(u32::MAX);
        h.emit(&mut out);
        out.push(first.0);
        out.push(0);
        let sk_len = u16::try_from(4 + iv_len + plain.len() + icv_len).unwrap_or(u16::MAX);
        out.extend_from_slice(&sk_len.to_be_bytes());
        let aad_end = out.len();
        let mut iv = vec![0u8; iv_len];
        rng.fill(&mut iv);
        out.extend_from_slice(&iv);
        let ct_start = out.len();
        out.extend_from_slice(&plain);
        let ct_end = out.len();
        out.resize(ct_end + icv_len, 0);
        if encr.is_aead() {
            let (head, tag) = out.split_at_mut(ct_end);
            let (aad, rest) = head.split_at_mut(aad_end);
            let ct = &mut rest[iv_len..];
            // Cannot fail: lengths are ours and the cipher matches the suite.
            let _ = self.out.cipher.aead_seal(&iv, aad, ct, tag);
        } else {
            let _ = self.out.cipher.cbc_encrypt(&iv, &mut out[ct_start..ct_end]);
            if let Some(mac) = &self.out.mac {
                let (signed, icv) = out.split_at_mut(ct_end);
                mac.compute(&[signed], icv);
            }
        }
        out
    }

    /// Verifies and decrypts the SK payload `enc` of the received message `bytes` (it
    /// is always the message's last payload) and decodes the inner chain.
    pub fn open(&self, bytes: &[u8], enc: &Encrypted) -> Result<Vec<Payload>, SkError> {
        let encr = self.suite.encr;
        let iv_len = encr.iv_len();
        let icv_len = if encr.is_aead() {
            encr.icv_len()
        } else {
            self.suite.integ.map_or(0, |i| i.icv_len())
        };
        let data_start = bytes
            .len()
            .checked_sub(enc.data.len())
            .ok_or(SkError::Integrity)?;
        let aad_end = data_start;
        if enc.data.len() < iv_len + icv_len + 1 || aad_end < HEADER_LEN + 4 {
            return Err(SkError::Integrity);
        }
        let ct_len = enc.data.len() - iv_len - icv_len;
        let iv = &enc.data[..iv_len];
        let mut ct = enc.data[iv_len..iv_len + ct_len].to_vec();
        let icv = &enc.data[iv_len + ct_len..];
        if encr.is_aead() {
            self.inb
                .cipher
                .aead_open(iv, &bytes[..aad_end], &mut ct, icv)
                .map_err(|_| SkError::Integrity)?;
        } else {
            let mac = self.inb.mac.as_ref().ok_or(SkError::Integrity)?;
            if !mac.verify(&[&bytes[..bytes.len() - icv_len]], icv) {
                return Err(SkError::Integrity);
            }
            if !ct_len.is_multiple_of(encr.block_len().max(1)) {
                return Err(DecodeError::InvalidLength("SK ciphertext").into());
            }
            self.inb
                .cipher
                .cbc_decrypt(iv, &mut ct)
                .map_err(|_| SkError::Decode(DecodeError::InvalidLength("SK ciphertext")))?;
        }
        let pad = usize::from(*ct.last().ok_or(DecodeError::Truncated("SK padding"))?);
        let inner_len = ct
            .len()
            .checked_sub(pad + 1)
            .ok_or(DecodeError::InvalidLength("SK padding"))?;
        Ok(decode_chain(enc.first, &ct[..inner_len])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::IkeKeys;
    use crate::wire::registry::{ExchangeType, NotifyType};
    use crate::wire::{Flags, Message, Notify};
    use crypto::{Encr, Integ, Prf};

    struct Counter(u8);
    impl Random for Counter {
        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
        }
    }

    fn header() -> HeaderRepr {
        HeaderRepr {
            spi_i: 1,
            spi_r: 2,
            next_payload: PayloadType::NONE,
            exchange: ExchangeType::INFORMATIONAL,
            flags: Flags(Flags::INITIATOR),
            message_id: 7,
            length: 0,
        }
    }

    #[test]
    fn seal_open_all_ciphers() {
        for encr in Encr::ALL {
            let integ = (!encr.is_aead()).then_some(Integ::HmacSha256_128);
            let suite = IkeSuite {
                encr,
                integ,
                prf: Prf::HmacSha256,
            };
            let keys = IkeKeys::derive(suite, None, &[5; 64], &[1; 32], &[2; 32], 1, 2);
            let i = SkCrypto::new(suite, &keys, true).unwrap();
            let r = SkCrypto::new(suite, &keys, false).unwrap();
            let inner = vec![
                Payload::Notify(Notify::new(NotifyType::INITIAL_CONTACT, vec![])),
                Payload::Nonce(vec![3; 17]),
            ];
            let bytes = i.seal(header(), &inner, &mut Counter(0));
            let m = Message::decode(&bytes).unwrap();
            let Some(Payload::Sk(enc)) = m.payloads.last() else {
                panic!("no SK")
            };
            assert_eq!(r.open(&bytes, enc).unwrap(), inner, "{encr:?}");
            // Our own direction's keys must not open it (directions differ).
            assert_eq!(i.open(&bytes, enc), Err(SkError::Integrity), "{encr:?}");
            // Any flipped bit fails the integrity check.
            for pos in [0, 20, bytes.len() - 1, HEADER_LEN + 5] {
                let mut bad = bytes.clone();
                bad[pos] ^= 1;
                let ok = Message::decode(&bad)
                    .ok()
                    .and_then(|m| match m.payloads.last() {
                        Some(Payload::Sk(e)) => r.open(&bad, e).ok(),
                        _ => None,
                    });
                assert!(ok.is_none(), "{encr:?} flip at {pos}");
            }
        }
    }

    #[test]
    fn empty_inner_chain() {
        let suite = IkeSuite {
            encr: Encr::AesCbc128,
            integ: Some(Integ::HmacSha1_96),
            prf: Prf::HmacSha1,
        };
        let keys = IkeKeys::derive(suite, None, &[5; 64], &[1; 32], &[2; 32], 1, 2);
        let i = SkCrypto::new(suite, &keys, true).unwrap();
        let r = SkCrypto::new(suite, &keys, false).unwrap();
        let bytes = i.seal(header(), &[], &mut Counter(9));
        // header 28 + SK header 4 + IV 16 + one block 16 + ICV 12
        assert_eq!(bytes.len(), 28 + 4 + 16 + 16 + 12);
        let m = Message::decode(&bytes).unwrap();
        let Some(Payload::Sk(enc)) = m.payloads.last() else {
            panic!("no SK")
        };
        assert_eq!(enc.first, PayloadType::NONE);
        assert_eq!(r.open(&bytes, enc).unwrap(), vec![]);
    }
}
