//! Sans-IO ESP: RFC 4303 tunnel mode over IPv4, with UDP encapsulation (RFC 3948).
//!
//! This crate does no IO, reads no clock and never allocates or locks per packet. The data
//! plane (crate `dataplane`) owns sockets and buffers; the IKE layer (crate `ike`, via
//! `node`) creates SAs from negotiated keys and selectors and installs them in an
//! [`SaDb`].
//!
//! # Buffer layout contract (outbound)
//!
//! The data plane reads an inner IPv4 packet from the TUN device into a buffer at offset
//! `headroom` and leaves room after it. [`OutboundSa::encapsulate`] then works in place:
//!
//! ```text
//! before:  | headroom ........................ | inner packet (inner_len) | tailroom ...... |
//!          0                          headroom ^                         ^ headroom+inner_len
//!
//! after:   | unused | SPI | Seq | IV | ciphertext of inner||pad||padlen||nh | ICV | unused |
//!                   ^ range.start                                                ^ range.end
//! ```
//!
//! - `range.start = headroom - ESP_HEADER_LEN - iv_len`; needs
//!   `headroom >= sa.headroom_needed()` (at most 24: 8-byte ESP header + 16-byte IV).
//! - the ciphertext covers the inner packet, padding, Pad Length and Next Header; the ICV
//!   follows. Needs `buf.len() >= headroom + inner_len + sa.tailroom_needed()` (at most
//!   [`TAILROOM_MAX`] = 49: 15 padding + 2 + 32 ICV); the exact growth is
//!   [`OutboundSa::overhead`].
//! - `buf[range]` is exactly what to hand to a UDP/4500 socket (ESP-in-UDP, RFC 3948 §2.1:
//!   the ESP packet is the whole UDP payload) or to a raw IP protocol 50 socket; in both
//!   cases the kernel writes the outer IPv4 (and UDP) header.
//! - [`OutboundSa::encapsulate_ipv4`] additionally writes the outer IPv4 header (and the UDP
//!   header with checksum 0, RFC 3948 §3.1.1, if the SA is UDP-encapsulated) in front, for
//!   `IP_HDRINCL` sockets and captures; it needs `headroom >= sa.outer_headroom_needed()`.
//! - A buffer with `headroom = `[`HEADROOM_MAX`] (52) and [`TAILROOM_MAX`] after the inner
//!   packet fits every SA and both variants ([`ENCAP_OVERHEAD_MAX`] = 101 in total).
//! - Layout violations return [`EspError::Layout`] before a sequence number is used.
//!
//! # Buffer layout contract (inbound)
//!
//! [`InboundSa::decapsulate`] takes `buf` = exactly one ESP packet, from the SPI to the end
//! of the ICV: the payload of a UDP/4500 datagram that [`wire::classify_udp4500`] called
//! [`wire::Udp4500::Esp`], or what follows the IPv4 header of a protocol-50 packet
//! ([`wire::parse_outer`] finds it in a packet that still has its outer headers). It
//! decrypts in place and returns the range of the inner IPv4 packet inside `buf`
//! (starting at `ESP_HEADER_LEN + iv_len`), ready for the TUN device.
//! Find the SA first with [`SaDb`] by [`wire::EspPacket::spi`].
//!
//! # Order of inbound checks
//!
//! Lengths → SPI → replay pre-check (cheap, RFC 4303 §3.4.3) → ICV in constant time
//! (RFC 4303 §3.4.4; for AES-GCM the tag) and decryption → replay window update → padding
//! (RFC 4303 §2.4) → Next Header (4 delivers, 59 is a dummy, RFC 4303 §2.6) → inner IPv4
//! lengths → traffic selectors (RFC 4301 §5.2). Every failure is an [`EspError`] and is
//! counted in [`InboundStats`]; nothing on this path panics (fuzzed). AES-CBC with
//! HMAC-SHA1 decrypts in the same pass as it hashes (`crypto::CbcHmac`): a packet whose
//! ICV fails is dropped with none of its decrypted bytes used, and the replay window only
//! moves for packets that passed.
//!
//! # Batches
//!
//! [`OutboundSa::encapsulate_deferred`] and [`InboundSa::decapsulate_deferred`] do
//! everything but the AES-CBC + HMAC work (sequence number and IV; or the checks up to
//! the replay pre-check) and [`OutboundSa::seal_many`] / [`InboundSa::open_many`] then
//! run it for many packets of one SA at once (`crypto::CbcHmac::seal_many`), finishing
//! each packet as the one-packet calls do, in order: the replay window moves only for
//! packets whose ICV was good. AEAD SAs finish in the first step.
//!
//! # Sharing between threads
//!
//! [`OutboundSa`] and [`InboundSa`] are `Sync` and used through `&self` by any number of
//! workers: the sequence number is one `AtomicU64::fetch_add`, the anti-replay window is a
//! ring of atomic words updated by compare-and-swap ([`replay`]), counters are relaxed
//! atomics. ESN is not supported (32-bit sequence numbers, RFC 4303 §2.2.1): an SA asks for
//! a rekey at [`SEQ_SOFT_LIMIT`] and stops at [`SEQ_HARD_LIMIT`].
//!
//! # Lifetimes and rekeying
//!
//! Byte and packet lifetimes ([`Lifetime`]) are counted here; time lifetimes belong to the
//! IKE layer. The first packet that crosses a soft limit comes back with
//! `soft_expired: true` (once per SA): the caller asks IKE for a CREATE_CHILD_SA rekey.
//! Past a hard limit every packet fails with [`EspError::HardExpired`]. The new SAs go in
//! with [`SaDb::rekey`] (make-before-break); the old inbound SA is removed after the IKE
//! Delete.
//!
//! # Creating SAs
//!
//! [`OutboundSa::new`] takes a `crypto::Random` once (use `crypto::OsRandom`) to seed the
//! CBC IV generator; no packet draws randomness. [`SaParams`], [`Key`] and the SAs print
//! no key material in `Debug`.
//!
//! # What stays with the caller
//!
//! Choosing the SA (route lookup, or the SPI for [`SaDb`]), sockets and the outer header
//! the kernel writes, NAT-T port tracking (the peer's UDP port can change; send to the
//! port the last authenticated packet came from), fragmentation/PMTU, and IPv6 inner
//! packets (Next Header 41 is refused for now).
//!
//! # Fuzzing
//!
//! `cargo +nightly fuzz run decapsulate` / `views` in `crates/esp` (own workspace in
//! `fuzz/`); the same bodies (module `fuzzing`, feature `fuzzing`) run in `cargo test`.

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod replay;
pub mod sa;
pub mod sadb;
pub mod selector;
pub mod wire;

mod error;

pub use error::EspError;
pub use replay::REPLAY_WINDOW;
pub use sa::{
    Decapsulated, ENCAP_OVERHEAD_MAX, Encapsulated, HEADROOM_MAX, InboundSa, InboundStats, Key,
    Lifetime, MAX_ICV_LEN, MAX_IV_LEN, OpenJob, Opening, OutboundSa, OutboundStats, PendingOpen,
    PendingSeal, SEQ_HARD_LIMIT, SEQ_SOFT_LIMIT, SaParams, SealJob, TAILROOM_MAX, UdpEncap,
};
pub use sadb::{SaDb, SaDbCache, SaDbError};
pub use selector::{Flow, Port, Selectors, TrafficSelector};
pub use wire::esp::HEADER_LEN as ESP_HEADER_LEN;
