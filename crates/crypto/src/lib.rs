//! Algorithm suites for IKE and ESP: encryption (`Encr`/`Cipher`), integrity
//! (`Integ`/`Mac`), pseudo-random functions (`Prf`) and Diffie-Hellman groups
//! (`DhGroup`/`DhPrivate`), named by their IANA IKEv2 transform IDs.
//!
//! `Cipher` and `Mac` sit on the ESP data path: they are keyed once in `new`
//! and never allocate or lock per call.

mod cbc_hmac;
mod cipher;
mod dh;
mod mac;
mod modp;
mod mont;
#[cfg(target_arch = "x86_64")]
mod mont_x86;
mod prf;
#[cfg(target_arch = "x86_64")]
mod sha1x16;
#[cfg(target_arch = "x86_64")]
mod sha256x;
#[cfg(target_arch = "x86_64")]
mod stitched;
mod transform;

pub use cbc_hmac::{CbcHmac, OpenJob, SealJob};
pub use cipher::Cipher;
pub use dh::DhPrivate;
pub use mac::Mac;
pub use transform::{DhGroup, Encr, Integ, Prf};

/// Errors of this crate. Messages never contain key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The algorithm is not implemented, or the operation does not apply to it
    /// (e.g. `cbc_encrypt` on an AEAD cipher).
    #[error("unsupported algorithm or operation")]
    Unsupported,
    #[error("invalid key length")]
    InvalidKeyLength,
    /// A buffer, IV, tag or output length does not fit the algorithm.
    #[error("invalid length")]
    InvalidLength,
    #[error("authentication failed")]
    AuthenticationFailed,
    /// The peer's Diffie-Hellman public value is malformed or out of range.
    #[error("invalid Diffie-Hellman public value")]
    InvalidPublicValue,
}

/// Which way a [`CbcHmac`] keyed with [`CbcHmac::for_direction`] works. One direction of
/// an ESP SA only ever seals (outbound) or only ever opens (inbound), so it keeps one AES
/// key schedule, not both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `seal`, `seal_many` and `encrypt_block`.
    Seal,
    /// `open` and `open_many`.
    Open,
}

/// Injected randomness, so protocol engines stay deterministic in tests.
pub trait Random {
    fn fill(&mut self, buf: &mut [u8]);
}

/// The operating system's CSPRNG (`getrandom`).
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        // Without a working OS RNG no key could be trusted: fail closed. This
        // does not depend on network input.
        #[allow(clippy::expect_used)]
        getrandom::getrandom(buf).expect("operating system random number generator failed");
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::Random;

    /// Decodes hex, ignoring spaces, so vectors can be pasted as printed in
    /// the RFCs.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert!(digits.len().is_multiple_of(2), "odd hex length");
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(core::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    /// A small deterministic generator (xorshift64*) for randomized comparisons and
    /// length mixes.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }

        /// A residue below `p` (whose top bit is set): random, or within 8 of either
        /// end, where the Montgomery arithmetic's carries and final subtraction bite.
        pub(crate) fn residue<const L: usize>(
            &mut self,
            p: &crypto_bigint::Uint<L>,
        ) -> crypto_bigint::Uint<L> {
            use crypto_bigint::{Uint, Word};
            let small = Uint::<L>::from_u64(self.next() % 8);
            match self.below(4) {
                0 => small,
                1 => p.wrapping_sub(&Uint::ONE).wrapping_sub(&small),
                _ => {
                    let mut w = [0 as Word; L];
                    for x in &mut w {
                        *x = self.next() as Word;
                    }
                    let x = Uint::from_words(w);
                    // p > 2^(64L-1), so one subtraction reduces any L-limb value.
                    if x >= *p { x.wrapping_sub(p) } else { x }
                }
            }
        }
    }

    /// Hands out preset bytes in order, so RFC test vectors' private keys
    /// can be injected; panics when it runs dry.
    pub(crate) struct Fixed(pub(crate) Vec<u8>);

    impl Random for Fixed {
        fn fill(&mut self, buf: &mut [u8]) {
            assert!(self.0.len() >= buf.len(), "Fixed random ran dry");
            let rest = self.0.split_off(buf.len());
            buf.copy_from_slice(&self.0);
            self.0 = rest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync_clone<T: Send + Sync + Clone>() {}

    #[test]
    fn hot_path_types_are_send_sync_clone() {
        send_sync_clone::<Cipher>();
        send_sync_clone::<Mac>();
        // IKE SAs holding a pending exchange may move between threads.
        fn send_sync<T: Send + Sync>() {}
        send_sync::<DhPrivate>();
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        // 0xA7 = 167: neither form may appear in any Debug output.
        let key = [0xA7u8; 64];
        let mut outputs = Vec::new();
        for encr in Encr::ALL {
            outputs.push(format!(
                "{:?}",
                Cipher::new(encr, &key[..encr.key_len()]).unwrap()
            ));
        }
        for integ in Integ::ALL {
            outputs.push(format!(
                "{:?}",
                Mac::new(integ, &key[..integ.key_len()]).unwrap()
            ));
        }
        for group in DhGroup::ALL {
            // 0x47 = 71: below group 24's subgroup order, so it is accepted.
            let mut rng = test_util::Fixed(vec![0x47; 64]);
            let dh = DhPrivate::generate(group, &mut rng).unwrap();
            outputs.push(format!("{dh:?}"));
            outputs.push(format!("{:#?}", dh));
        }
        for out in &outputs {
            let lower = out.to_ascii_lowercase();
            assert!(!lower.contains("a7a7") && !out.contains("167"), "{out}");
            assert!(!lower.contains("4747") && !out.contains("71"), "{out}");
            assert!(out.contains("redacted"), "{out}");
        }
    }

    #[test]
    fn error_messages_are_fixed_text() {
        assert_eq!(Error::InvalidKeyLength.to_string(), "invalid key length");
        assert_eq!(
            Error::AuthenticationFailed.to_string(),
            "authentication failed"
        );
    }
}
