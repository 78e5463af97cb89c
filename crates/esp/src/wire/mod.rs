//! Zero-copy packet views (smoltcp style) for the headers the ESP data plane touches.
//!
//! Every view is a thin wrapper `View<T: AsRef<[u8]>>` over a caller buffer:
//!
//! - `View::new_unchecked(buf)` wraps without looking; accessors may then panic on a short
//!   buffer, so it is only for buffers the caller has laid out itself (emitting).
//! - `View::new_checked(buf)` runs `check_len` and returns [`WireError`] on failure.
//!   **Contract: once `check_len` has succeeded, no accessor of that view panics**, whatever
//!   the bytes are (the fuzz target and `fuzzing::views` test hold us to it). Setters never
//!   change the fields `check_len` validated in a way that would break that, except where
//!   their documentation says so.
//! - Setters exist when `T: AsMut<[u8]>`.
//!
//! Field offsets are the `field` constants in each module, named after the RFC diagrams.

pub mod esp;
pub mod ipv4;
pub mod natt;
pub mod outer;
pub mod udp;

pub use esp::{EspPacket, EspTrailer};
pub use ipv4::{Ipv4Packet, Ipv4Repr, checksum};
pub use natt::{NON_ESP_MARKER_LEN, Udp4500, classify_udp4500};
pub use outer::{Outer, OuterPayload, parse_outer};
pub use udp::{UdpPacket, UdpRepr};

/// A buffer does not hold what a view needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the header (or than a length field claims).
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A length or version field is inconsistent.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Reads a big-endian u16 at `at`; callers guarantee `at + 2 <= buf.len()` via `check_len`.
#[inline]
pub(crate) fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// Reads a big-endian u32 at `at`; callers guarantee `at + 4 <= buf.len()` via `check_len`.
#[inline]
pub(crate) fn be32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}
