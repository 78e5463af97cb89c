//! Algorithm suites for IKE and ESP: encryption (`Encr`/`Cipher`), integrity
//! (`Integ`/`Mac`), pseudo-random functions (`Prf`) and Diffie-Hellman groups
//! (`DhGroup`/`DhPrivate`), named by their IANA IKEv2 transform IDs.
//!
//! `Cipher` and `Mac` sit on the ESP data path: they are keyed once in `new`
//! and never allocate or lock per call.

mod cipher;
mod dh;
mod mac;
mod modp;
mod prf;
mod transform;

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
