//! Errors of the ESP layer. Every inbound error is a drop that the SA counts (see
//! [`crate::InboundStats`]); none carries key material.

use crate::wire::WireError;

/// What went wrong with one packet or one SA setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EspError {
    // --- SA setup -------------------------------------------------------------------
    /// Parameters that cannot make an SA (key length, missing integrity algorithm, ...).
    #[error("invalid SA parameters: {0}")]
    InvalidParams(&'static str),
    /// The crypto layer refused the keys.
    #[error("crypto: {0}")]
    Crypto(#[from] crypto::Error),

    // --- outbound -------------------------------------------------------------------
    /// The caller's buffer does not follow the layout contract (a bug in the caller).
    #[error("buffer layout: {0}")]
    Layout(&'static str),
    /// The ESP packet would not fit in an IPv4 datagram.
    #[error("packet too big for IPv4")]
    TooBig,
    /// All 2^32 - 1 sequence numbers are used: RFC 4303 §3.3.3 forbids wrapping without
    /// ESN, so nothing more can be sent on this SA until it is rekeyed.
    #[error("sequence numbers exhausted (RFC 4303 §3.3.3)")]
    SequenceExhausted,
    /// A hard byte or packet lifetime is reached (RFC 4301 §4.4.2.1): the SA must go.
    #[error("hard lifetime reached")]
    HardExpired,

    // --- inbound --------------------------------------------------------------------
    /// The packet is shorter than an ESP packet of this SA or its lengths are off.
    #[error("malformed ESP packet: {0}")]
    Malformed(#[from] WireError),
    /// The SPI is not this SA's (the caller looked up the wrong SA).
    #[error("SPI {got:#010x} is not this SA's ({expected:#010x})")]
    WrongSpi { expected: u32, got: u32 },
    /// ICV (or AEAD tag) verification failed (RFC 4303 §3.4.4).
    #[error("authentication failed")]
    AuthFailed,
    /// The sequence number was already received (RFC 4303 §3.4.3).
    #[error("replayed sequence number {seq}")]
    Replayed { seq: u32 },
    /// The sequence number is left of the receive window (RFC 4303 §3.4.3).
    #[error("sequence number {seq} is left of the replay window")]
    TooOld { seq: u32 },
    /// Pad Length too long, or padding bytes not 1, 2, 3, ... (RFC 4303 §2.4).
    #[error("bad padding")]
    BadPadding,
    /// Next Header is neither IPv4 (4) nor "no next header" (59).
    #[error("unsupported next header {0}")]
    UnsupportedNextHeader(u8),
    /// The decrypted inner packet is not a consistent IPv4 packet.
    #[error("malformed inner packet: {0}")]
    InnerMalformed(WireError),
    /// The inner packet's addresses, protocol or ports are outside the SA's selectors
    /// (RFC 4301 §5.2 step 4): it is dropped, not delivered.
    #[error("inner packet does not match the SA's traffic selectors")]
    SelectorMismatch,
}
