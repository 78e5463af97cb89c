//! Keyed HMAC for ESP/IKE integrity (RFC 2104; truncation per RFC 2403,
//! RFC 2404, RFC 4868).

use core::fmt;

use subtle::ConstantTimeEq;

use crate::{Error, Integ};

/// A keyed, truncated HMAC. The inner and outer pad states are hashed once
/// in [`Mac::new`]; every `compute` clones them on the stack, so the ESP
/// data path neither allocates nor locks.
#[derive(Clone)]
pub struct Mac {
    integ: Integ,
    key: HmacKey,
}

impl Mac {
    /// `key` must be exactly `integ.key_len()` bytes (RFC 4868 §2.1.1: the
    /// key length equals the hash output length).
    pub fn new(integ: Integ, key: &[u8]) -> Result<Self, Error> {
        if key.len() != integ.key_len() {
            return Err(Error::InvalidKeyLength);
        }
        let hash = match integ {
            Integ::HmacMd5_96 => Hash::Md5,
            Integ::HmacSha1_96 => Hash::Sha1,
            Integ::HmacSha256_128 => Hash::Sha256,
            Integ::HmacSha384_192 => Hash::Sha384,
            Integ::HmacSha512_256 => Hash::Sha512,
        };
        Ok(Mac {
            integ,
            key: HmacKey::new(hash, key),
        })
    }

    pub fn integ(&self) -> Integ {
        self.integ
    }

    /// HMAC over the concatenation of `parts`, truncated to
    /// `integ().icv_len()` bytes and written to the start of `out`. If `out`
    /// is shorter than the ICV only `out.len()` bytes are written.
    pub fn compute(&self, parts: &[&[u8]], out: &mut [u8]) {
        let mut full = [0u8; MAX_HASH_LEN];
        let n = self.key.compute_into(parts, &mut full);
        let icv_len = self.integ.icv_len().min(n);
        for (o, f) in out.iter_mut().zip(&full[..icv_len]) {
            *o = *f;
        }
    }

    /// Checks a received ICV in constant time. An ICV of the wrong length
    /// never verifies.
    pub fn verify(&self, parts: &[&[u8]], icv: &[u8]) -> bool {
        let icv_len = self.integ.icv_len();
        if icv.len() != icv_len {
            return false;
        }
        let mut full = [0u8; MAX_HASH_LEN];
        self.key.compute_into(parts, &mut full);
        full.get(..icv_len)
            .is_some_and(|expected| bool::from(expected.ct_eq(icv)))
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mac")
            .field("integ", &self.integ)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Largest hash output we produce (SHA-512).
pub(crate) const MAX_HASH_LEN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hash {
    Md5,
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

/// HMAC with the key absorbed: `hmac::Hmac` keeps the hash states after the
/// ipad and opad blocks, so cloning it skips re-keying (RFC 2104 §4).
#[derive(Clone)]
pub(crate) enum HmacKey {
    Md5(hmac::Hmac<md5::Md5>),
    Sha1(hmac::Hmac<sha1::Sha1>),
    Sha256(hmac::Hmac<sha2::Sha256>),
    Sha384(hmac::Hmac<sha2::Sha384>),
    Sha512(hmac::Hmac<sha2::Sha512>),
}

impl HmacKey {
    /// Keys of any length are valid for HMAC (RFC 2104 §2: longer keys are
    /// hashed first), which the IKE PRF relies on for SKEYSEED.
    pub(crate) fn new(hash: Hash, key: &[u8]) -> Self {
        fn keyed<M: hmac::digest::KeyInit>(key: &[u8]) -> M {
            // KeyInit for HMAC accepts every length; new_from_slice only
            // fails for fixed-size keys.
            match M::new_from_slice(key) {
                Ok(m) => m,
                Err(_) => unreachable!("HMAC accepts keys of any length"),
            }
        }
        match hash {
            Hash::Md5 => HmacKey::Md5(keyed(key)),
            Hash::Sha1 => HmacKey::Sha1(keyed(key)),
            Hash::Sha256 => HmacKey::Sha256(keyed(key)),
            Hash::Sha384 => HmacKey::Sha384(keyed(key)),
            Hash::Sha512 => HmacKey::Sha512(keyed(key)),
        }
    }

    /// Full-length HMAC over the concatenation of `parts`, written to the
    /// start of `out`; returns the number of bytes written.
    pub(crate) fn compute_into(&self, parts: &[&[u8]], out: &mut [u8; MAX_HASH_LEN]) -> usize {
        fn run<M: hmac::Mac + Clone>(m: &M, parts: &[&[u8]], out: &mut [u8]) -> usize {
            let mut m = m.clone();
            for p in parts {
                m.update(p);
            }
            let tag = m.finalize().into_bytes();
            let n = tag.len().min(out.len());
            for (o, t) in out.iter_mut().zip(tag.iter()) {
                *o = *t;
            }
            n
        }
        match self {
            HmacKey::Md5(m) => run(m, parts, out),
            HmacKey::Sha1(m) => run(m, parts, out),
            HmacKey::Sha256(m) => run(m, parts, out),
            HmacKey::Sha384(m) => run(m, parts, out),
            HmacKey::Sha512(m) => run(m, parts, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::hex;

    fn icv(integ: Integ, key: &[u8], data: &[u8]) -> Vec<u8> {
        let mac = Mac::new(integ, key).unwrap();
        let mut out = vec![0u8; integ.icv_len()];
        mac.compute(&[data], &mut out);
        assert!(mac.verify(&[data], &out));
        out
    }

    #[test]
    fn rfc2202_truncated_to_96_bits() {
        // RFC 2202 §2/§3 test case 1; RFC 2403 §3 / RFC 2404 §3 keep the
        // first 96 bits.
        assert_eq!(
            icv(Integ::HmacMd5_96, &[0x0b; 16], b"Hi There"),
            hex("9294727a3638bb1c13f48ef8")
        );
        assert_eq!(
            icv(Integ::HmacSha1_96, &[0x0b; 20], b"Hi There"),
            hex("b617318655057264e28bc0b6")
        );
    }

    #[test]
    fn rfc4868_auth_test_case_1() {
        // RFC 4868 §2.7.2.1-3, AUTH256-1 / AUTH384-1 / AUTH512-1: keys as
        // long as the hash output, ICV truncated to half of it.
        assert_eq!(
            icv(Integ::HmacSha256_128, &[0x0b; 32], b"Hi There"),
            hex("198a607eb44bfbc69903a0f1cf2bbdc5")
        );
        assert_eq!(
            icv(Integ::HmacSha384_192, &[0x0b; 48], b"Hi There"),
            hex("b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee973")
        );
        assert_eq!(
            icv(Integ::HmacSha512_256, &[0x0b; 64], b"Hi There"),
            hex("637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8")
        );
    }

    #[test]
    fn parts_are_concatenated() {
        let mac = Mac::new(Integ::HmacSha256_128, &[7; 32]).unwrap();
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        mac.compute(&[b"spi+seq", b"", b"payload"], &mut a);
        mac.compute(&[b"spi+seqpayload"], &mut b);
        assert_eq!(a, b);
        // The keyed state is reused: a second call gives the same answer.
        mac.compute(&[b"spi+seqpayload"], &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn verify_rejects_wrong_or_short_icv() {
        let mac = Mac::new(Integ::HmacSha1_96, &[1; 20]).unwrap();
        let mut out = [0u8; 12];
        mac.compute(&[b"data"], &mut out);
        assert!(mac.verify(&[b"data"], &out));
        assert!(!mac.verify(&[b"datb"], &out));
        let mut bad = out;
        bad[11] ^= 1;
        assert!(!mac.verify(&[b"data"], &bad));
        assert!(!mac.verify(&[b"data"], &out[..11]));
        assert!(!mac.verify(&[b"data"], &[]));
        let mut long = [0u8; 13];
        long[..12].copy_from_slice(&out);
        assert!(!mac.verify(&[b"data"], &long));
    }

    #[test]
    fn compute_into_short_or_long_buffer_does_not_panic() {
        let mac = Mac::new(Integ::HmacSha512_256, &[1; 64]).unwrap();
        let mut full = [0u8; 32];
        mac.compute(&[b"x"], &mut full);
        let mut short = [0u8; 5];
        mac.compute(&[b"x"], &mut short);
        assert_eq!(short, full[..5]);
        let mut long = [0xEEu8; 40];
        mac.compute(&[b"x"], &mut long);
        assert_eq!(long[..32], full);
        assert_eq!(long[32..], [0xEE; 8]);
    }

    #[test]
    fn key_length_is_enforced() {
        for integ in Integ::ALL {
            let n = integ.key_len();
            assert!(Mac::new(integ, &vec![0; n]).is_ok());
            assert_eq!(
                Mac::new(integ, &vec![0; n - 1]).unwrap_err(),
                Error::InvalidKeyLength
            );
            assert_eq!(
                Mac::new(integ, &vec![0; n + 1]).unwrap_err(),
                Error::InvalidKeyLength
            );
        }
    }
}
