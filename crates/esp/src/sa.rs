//! Security associations: parameters, in-place encapsulation and decapsulation, counters.
//!
//! See the crate documentation for the buffer layout contract.

use core::fmt;
use core::net::Ipv4Addr;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crypto::{CbcHmac, Cipher, Direction, Encr, Integ, Random};
use zeroize::Zeroizing;

use crate::EspError;
use crate::replay::{ReplayError, ReplayWindow};
use crate::selector::{Flow, Selectors};
use crate::wire::esp::{self, EspPacket, EspTrailer, HEADER_LEN as ESP_HEADER_LEN};
use crate::wire::ipv4::{self, Ipv4Packet, Ipv4Repr, protocol};
use crate::wire::udp::{self, UdpPacket, UdpRepr};

/// Longest IV of any supported cipher (AES-CBC).
pub const MAX_IV_LEN: usize = 16;
/// Longest ICV of any supported transform (HMAC-SHA-512-256).
pub const MAX_ICV_LEN: usize = 32;
/// Longest padding we emit: one block less one byte (AES block, RFC 4303 §2.4).
pub const MAX_PAD_LEN: usize = 15;
/// Most bytes [`OutboundSa::encapsulate_ipv4`] puts before the inner packet:
/// outer IPv4 + UDP + ESP header + IV. [`OutboundSa::encapsulate`] needs less
/// ([`OutboundSa::headroom_needed`]), so a buffer laid out with this headroom suits both.
pub const HEADROOM_MAX: usize = ipv4::HEADER_LEN + udp::HEADER_LEN + ESP_HEADER_LEN + MAX_IV_LEN;
/// Most bytes any SA writes after the inner packet: padding, Pad Length, Next Header, ICV.
pub const TAILROOM_MAX: usize = MAX_PAD_LEN + esp::TRAILER_FIXED_LEN + MAX_ICV_LEN;
/// Largest growth of a packet through encapsulation, outer headers included.
pub const ENCAP_OVERHEAD_MAX: usize = HEADROOM_MAX + TAILROOM_MAX;

/// Once an outbound SA has used this many sequence numbers it asks for a rekey, leaving
/// 2^28 packets (minutes at line rate) for IKE to install the new SA before
/// [`EspError::SequenceExhausted`] (RFC 4303 §3.3.3).
pub const SEQ_SOFT_LIMIT: u64 = 0xF000_0000;
/// The last sequence number an SA without ESN may send (RFC 4303 §2.2: no wrapping).
pub const SEQ_HARD_LIMIT: u64 = u32::MAX as u64;

/// Next Header for a tunnelled IPv4 packet (RFC 4303 §2.6).
const NEXT_HEADER_IPV4: u8 = protocol::IPV4;
/// Next Header of a dummy packet, which the receiver discards (RFC 4303 §2.6).
const NEXT_HEADER_DUMMY: u8 = protocol::NO_NEXT_HEADER;
/// TTL of the outer header we write (the kernel's default).
const OUTER_TTL: u8 = 64;

/// Key material that zeroes itself on drop and never shows in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Zeroizing<Vec<u8>>);

impl Key {
    pub fn new(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    pub fn empty() -> Self {
        Self(Zeroizing::new(Vec::new()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Key {
    fn from(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<redacted {} bytes>)", self.0.len())
    }
}

/// ESP-in-UDP ports (RFC 3948): `src_port` is ours, `dst_port` the peer's (4500 unless a
/// NAT in front of the peer maps it elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpEncap {
    pub src_port: u16,
    pub dst_port: u16,
}

/// Byte and packet lifetimes (RFC 4301 §4.4.2.1). `None` is unlimited. Time lifetimes are
/// the IKE layer's job. Bytes count the inner IP packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetime {
    pub soft_bytes: Option<u64>,
    pub hard_bytes: Option<u64>,
    pub soft_packets: Option<u64>,
    pub hard_packets: Option<u64>,
}

/// Everything that makes one direction of a Child SA. ESN is not supported: the IKE layer
/// must negotiate "no ESN" (RFC 7296 §3.3.2, transform type 5 value 0).
#[derive(Debug, Clone)]
pub struct SaParams {
    /// The SPI in the ESP header: the peer's for an outbound SA, ours for an inbound one.
    pub spi: u32,
    pub encr: Encr,
    /// `encr.key_len()` bytes (for GCM including the 4-byte salt, RFC 4106 §8.1).
    pub enc_key: Key,
    /// Required for CBC ciphers, must be `None` for AEAD (RFC 4303 §3.2).
    pub integ: Option<Integ>,
    /// `integ.key_len()` bytes; empty for AEAD.
    pub integ_key: Key,
    /// Our tunnel endpoint address.
    pub local: Ipv4Addr,
    /// The peer's tunnel endpoint address.
    pub remote: Ipv4Addr,
    pub udp_encap: Option<UdpEncap>,
    pub selectors: Selectors,
    pub lifetime: Lifetime,
}

/// What [`OutboundSa::encapsulate`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Encapsulated {
    /// The bytes to send, within the caller's buffer.
    pub range: Range<usize>,
    /// The sequence number used.
    pub seq: u32,
    /// True for exactly one packet per SA: the first to cross a soft limit (sequence
    /// numbers, bytes or packets). The caller tells the IKE layer to rekey.
    pub soft_expired: bool,
}

/// What [`InboundSa::decapsulate`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Decapsulated {
    /// An inner IPv4 packet, decrypted in place, to write to the tunnel device.
    Packet {
        inner: Range<usize>,
        /// As in [`Encapsulated::soft_expired`].
        soft_expired: bool,
    },
    /// A dummy packet (Next Header 59, RFC 4303 §2.6): authenticated, counted, discarded.
    Dummy,
}

/// An outbound packet [`OutboundSa::encapsulate_deferred`] prepared (ESP header,
/// sequence number, IV, padding and trailer written, the outer headers too) whose
/// encryption and ICV are left for [`OutboundSa::seal_many`].
/// `Default` is a placeholder for unused slots of a fixed array of jobs (sealing it
/// fails).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingSeal {
    esp_start: usize,
    ct_end: usize,
    end: usize,
}

/// One packet for [`OutboundSa::seal_many`]: the buffer `encapsulate_deferred` worked
/// on and what it returned.
#[derive(Debug)]
pub struct SealJob<'a> {
    buf: &'a mut [u8],
    pending: PendingSeal,
    result: Result<(), EspError>,
}

impl<'a> SealJob<'a> {
    pub fn new(buf: &'a mut [u8], pending: PendingSeal) -> Self {
        Self {
            buf,
            pending,
            result: Ok(()),
        }
    }

    /// Set by [`OutboundSa::seal_many`]; on error the packet must not be sent.
    pub fn result(&self) -> Result<(), EspError> {
        self.result
    }
}

/// What [`InboundSa::decapsulate_deferred`] did with a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Opening {
    /// Finished (an AEAD SA): as [`InboundSa::decapsulate`] would have returned.
    Done(Decapsulated),
    /// Checked up to the ICV (lengths, SPI, lifetime, replay pre-check); the ICV,
    /// decryption and everything after wait for [`InboundSa::open_many`].
    Pending(PendingOpen),
}

/// A packet [`InboundSa::decapsulate_deferred`] checked and left for
/// [`InboundSa::open_many`].
/// `Default` is a placeholder, as for [`PendingSeal`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingOpen {
    seq: u32,
    ct_end: usize,
}

/// One packet for [`InboundSa::open_many`]: the buffer `decapsulate_deferred` checked and
/// what it returned.
#[derive(Debug)]
pub struct OpenJob<'a> {
    buf: &'a mut [u8],
    pending: PendingOpen,
    result: Result<Decapsulated, EspError>,
}

impl<'a> OpenJob<'a> {
    pub fn new(buf: &'a mut [u8], pending: PendingOpen) -> Self {
        Self {
            buf,
            pending,
            result: Err(EspError::AuthFailed),
        }
    }

    /// Set by [`InboundSa::open_many`]: what [`InboundSa::decapsulate`] would have
    /// returned for the packet.
    pub fn result(&self) -> &Result<Decapsulated, EspError> {
        &self.result
    }
}

/// Packets handed to `CbcHmac::seal_many`/`open_many` per call: two of its sixteen-lane
/// hash groups; a stack array, no allocation.
const CHUNK: usize = 32;

/// Counters of an outbound SA, read with [`OutboundSa::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboundStats {
    pub packets: u64,
    pub bytes: u64,
    /// The last sequence number handed out (0 before the first packet).
    pub seq: u64,
    /// Packets refused because the sequence space or a hard lifetime is used up.
    pub expired: u64,
    /// Packets refused because the caller's buffer broke the layout contract or was too big.
    pub layout: u64,
}

/// Counters of an inbound SA, read with [`InboundSa::stats`]. Each drop counts once, under
/// the first check it failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboundStats {
    pub packets: u64,
    pub bytes: u64,
    pub dummy: u64,
    pub auth_failed: u64,
    pub replay: u64,
    pub bad_padding: u64,
    pub selector_mismatch: u64,
    /// The inner source and destination of the last packet counted in
    /// `selector_mismatch`: what the peer sends that this SA does not carry.
    pub last_mismatch: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Truncated or inconsistent ESP or inner packets, wrong SPI, unknown Next Header.
    pub malformed: u64,
    pub expired: u64,
    /// The highest sequence number accepted.
    pub highest_seq: u64,
}

/// The sending half of a Child SA. `Sync`: all workers share one through `&self`.
pub struct OutboundSa {
    // The hot, shared-written words first and on their own cache line.
    hot: Hot,
    spi: u32,
    transform: Transform,
    /// Per-SA secret that, encrypted with the sequence number, gives the CBC IV.
    iv_seed: [u8; 16],
    local: Ipv4Addr,
    remote: Ipv4Addr,
    udp_encap: Option<UdpEncap>,
    selectors: Selectors,
    limits: Limits,
    soft_fired: AtomicBool,
    expired: AtomicU64,
    layout: AtomicU64,
}

/// The receiving half of a Child SA. `Sync`: all workers share one through `&self`.
pub struct InboundSa {
    hot: Hot,
    spi: u32,
    transform: Transform,
    local: Ipv4Addr,
    remote: Ipv4Addr,
    udp_encap: Option<UdpEncap>,
    selectors: Selectors,
    selectors_any: bool,
    limits: Limits,
    soft_fired: AtomicBool,
    replay: ReplayWindow,
    drops: Drops,
}

impl OutboundSa {
    /// Keys the SA. `rng` seeds the CBC IV generator once, here, so that no packet costs a
    /// system call.
    pub fn new(params: SaParams, rng: &mut dyn Random) -> Result<Self, EspError> {
        let transform = Transform::new(&params, Direction::Seal)?;
        let mut iv_seed = [0u8; 16];
        rng.fill(&mut iv_seed);
        Ok(Self {
            hot: Hot::default(),
            spi: params.spi,
            transform,
            iv_seed,
            local: params.local,
            remote: params.remote,
            udp_encap: params.udp_encap,
            selectors: params.selectors,
            limits: Limits::from(params.lifetime),
            soft_fired: AtomicBool::new(false),
            expired: AtomicU64::new(0),
            layout: AtomicU64::new(0),
        })
    }

    pub fn spi(&self) -> u32 {
        self.spi
    }

    pub fn encr(&self) -> Encr {
        self.transform.encr
    }

    pub fn integ(&self) -> Option<Integ> {
        self.transform.integ
    }

    pub fn local(&self) -> Ipv4Addr {
        self.local
    }

    pub fn remote(&self) -> Ipv4Addr {
        self.remote
    }

    pub fn udp_encap(&self) -> Option<UdpEncap> {
        self.udp_encap
    }

    pub fn selectors(&self) -> &Selectors {
        &self.selectors
    }

    /// Bytes [`Self::encapsulate`] needs before the inner packet: ESP header + IV.
    pub fn headroom_needed(&self) -> usize {
        ESP_HEADER_LEN + self.transform.iv_len
    }

    /// Bytes [`Self::encapsulate_ipv4`] needs before the inner packet: outer IPv4, UDP if
    /// the SA is UDP-encapsulated, ESP header and IV.
    pub fn outer_headroom_needed(&self) -> usize {
        self.outer_len() + self.headroom_needed()
    }

    /// Bytes any packet may need after the inner packet: longest padding, Pad Length,
    /// Next Header, ICV.
    pub fn tailroom_needed(&self) -> usize {
        self.transform.pad_to - 1 + esp::TRAILER_FIXED_LEN + self.transform.icv_len
    }

    /// Exact growth of an inner packet of `inner_len` bytes by [`Self::encapsulate`] (what
    /// the data plane subtracts from the path MTU).
    pub fn overhead(&self, inner_len: usize) -> usize {
        self.headroom_needed()
            + esp::pad_len_for(inner_len, self.transform.pad_to)
            + esp::TRAILER_FIXED_LEN
            + self.transform.icv_len
    }

    /// Encapsulates in place and returns the range of the ESP packet (SPI to ICV), ready
    /// for a UDP/4500 socket (RFC 3948) or a raw IP protocol 50 socket: the kernel adds
    /// the outer headers. See the crate docs for the layout of `buf`.
    pub fn encapsulate(
        &self,
        buf: &mut [u8],
        headroom: usize,
        inner_len: usize,
    ) -> Result<Encapsulated, EspError> {
        let out = self
            .seal(buf, headroom, inner_len, 0, false)
            .map(|(e, _)| e);
        self.count(&out, inner_len);
        out
    }

    /// [`Self::encapsulate`] in two steps, so that many packets' encryption can run
    /// together: this writes everything but the ciphertext and ICV (the sequence number
    /// is taken and the packet counted here, RFC 4303 §3.3.3) and returns what
    /// [`Self::seal_many`] needs to finish. AEAD SAs finish here (`None`). Until
    /// `seal_many` has run, `buf[range]` must not be sent.
    pub fn encapsulate_deferred(
        &self,
        buf: &mut [u8],
        headroom: usize,
        inner_len: usize,
    ) -> Result<(Encapsulated, Option<PendingSeal>), EspError> {
        let out = self.seal(buf, headroom, inner_len, 0, true);
        self.count(
            &out.as_ref().map(|(e, _)| e.clone()).map_err(|e| *e),
            inner_len,
        );
        out
    }

    /// Encrypts and authenticates packets [`Self::encapsulate_deferred`] prepared on this
    /// SA, several at once (`crypto::CbcHmac::seal_many`); each job's outcome in
    /// [`SealJob::result`].
    pub fn seal_many(&self, jobs: &mut [SealJob<'_>]) {
        let t = &self.transform;
        let Keys::Cbc(etm) = &t.keys else {
            for job in jobs {
                job.result = Err(EspError::Layout("deferred seal on an AEAD SA"));
            }
            return;
        };
        let ct_start = ESP_HEADER_LEN + t.iv_len;
        for chunk in jobs.chunks_mut(CHUNK) {
            let mut results = [Ok(()); CHUNK];
            let n = chunk.len();
            {
                let mut it = chunk.iter_mut();
                let mut cj: [crypto::SealJob<'_>; CHUNK] = core::array::from_fn(|_| {
                    // A job whose range is not in its buffer stays empty and fails.
                    let empty = || crypto::SealJob::new(&mut [], 0, &mut []);
                    let Some(job) = it.next() else {
                        return empty();
                    };
                    let p = job.pending;
                    match job.buf.get_mut(p.esp_start..p.end) {
                        Some(esp) if p.ct_end >= p.esp_start => {
                            let (msg, icv) = esp.split_at_mut(p.ct_end - p.esp_start);
                            crypto::SealJob::new(msg, ct_start, icv)
                        }
                        _ => empty(),
                    }
                });
                etm.seal_many(&mut cj[..n]);
                for (r, j) in results.iter_mut().zip(&cj) {
                    *r = j.result;
                }
            }
            for (job, r) in chunk.iter_mut().zip(results) {
                job.result = r.map_err(EspError::from);
                if job.result.is_err() {
                    self.layout.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Like [`Self::encapsulate`] and also writes the outer IPv4 header (and the UDP header
    /// when the SA is UDP-encapsulated) before the ESP packet, for sockets with
    /// `IP_HDRINCL`, packet captures and tests. The outer header copies DSCP, ECN
    /// (RFC 6040 normal mode) and DF (RFC 4301 §8.1) from the inner one; its
    /// identification is the low 16 bits of the sequence number; the UDP checksum is zero
    /// (RFC 3948 §3.1.1).
    pub fn encapsulate_ipv4(
        &self,
        buf: &mut [u8],
        headroom: usize,
        inner_len: usize,
    ) -> Result<Encapsulated, EspError> {
        let out = self
            .seal(buf, headroom, inner_len, self.outer_len(), false)
            .map(|(e, _)| e);
        self.count(&out, inner_len);
        out
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> OutboundStats {
        OutboundStats {
            packets: self.hot.packets.load(Ordering::Relaxed),
            bytes: self.hot.bytes.load(Ordering::Relaxed),
            seq: self.hot.seq.load(Ordering::Relaxed).min(SEQ_HARD_LIMIT),
            expired: self.expired.load(Ordering::Relaxed),
            layout: self.layout.load(Ordering::Relaxed),
        }
    }

    fn outer_len(&self) -> usize {
        ipv4::HEADER_LEN + self.udp_encap.map_or(0, |_| udp::HEADER_LEN)
    }

    fn count(&self, out: &Result<Encapsulated, EspError>, inner_len: usize) {
        match out {
            Ok(_) => {
                self.hot.packets.fetch_add(1, Ordering::Relaxed);
                self.hot
                    .bytes
                    .fetch_add(inner_len as u64, Ordering::Relaxed);
            }
            Err(EspError::SequenceExhausted | EspError::HardExpired) => {
                self.expired.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.layout.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn seal(
        &self,
        buf: &mut [u8],
        headroom: usize,
        inner_len: usize,
        outer_len: usize,
        defer: bool,
    ) -> Result<(Encapsulated, Option<PendingSeal>), EspError> {
        let t = &self.transform;
        // Layout first, so a caller bug costs no sequence number.
        let esp_start = headroom
            .checked_sub(ESP_HEADER_LEN + t.iv_len)
            .ok_or(EspError::Layout("headroom smaller than ESP header + IV"))?;
        let start = esp_start
            .checked_sub(outer_len)
            .ok_or(EspError::Layout("headroom smaller than outer headers"))?;
        let inner_end = headroom
            .checked_add(inner_len)
            .filter(|&end| end <= buf.len())
            .ok_or(EspError::Layout("inner packet beyond the buffer"))?;
        let ct_end = inner_end + esp::pad_len_for(inner_len, t.pad_to) + esp::TRAILER_FIXED_LEN;
        let end = ct_end + t.icv_len;
        if end > buf.len() {
            return Err(EspError::Layout("tailroom too small"));
        }
        // The datagram the kernel builds around the ESP packet must fit IPv4 too.
        if end - esp_start + self.outer_len() > usize::from(u16::MAX) {
            return Err(EspError::TooBig);
        }
        let outer_hints = if outer_len > 0 {
            Some(OuterHints::of(
                buf.get(headroom..inner_end).unwrap_or_default(),
            ))
        } else {
            None
        };

        let (seq, soft_expired) = self.next_seq(inner_len)?;
        let mut pending = None;

        // One contiguous ESP packet: header, IV, payload (then the ICV after it).
        let (esp, rest) = buf[esp_start..].split_at_mut(ct_end - esp_start);
        let icv = &mut rest[..t.icv_len];
        let ct_start = ESP_HEADER_LEN + t.iv_len;
        esp::emit_trailer(&mut esp[ct_start + inner_len..], NEXT_HEADER_IPV4);
        {
            let mut packet = EspPacket::new_unchecked(&mut esp[..ESP_HEADER_LEN]);
            packet.set_spi(self.spi);
            packet.set_seq(seq);
        }
        match &t.keys {
            Keys::Aead(cipher) => {
                let (head, payload) = esp.split_at_mut(ct_start);
                let (header, iv) = head.split_at_mut(ESP_HEADER_LEN);
                // RFC 4106 §3.1: the IV must not repeat under one key; the sequence
                // number never does on this SA. AAD is SPI || sequence number (RFC 4106
                // §5).
                iv.copy_from_slice(&u64::from(seq).to_be_bytes());
                cipher.aead_seal(iv, &*header, payload, icv)?;
            }
            Keys::Cbc(etm) => {
                self.cbc_iv(etm, seq, &mut esp[ESP_HEADER_LEN..ct_start])?;
                // RFC 4303 §3.3.4: the ICV covers header, IV and ciphertext; one pass
                // (stitched AES-NI/SHA-NI for aes*-sha1) encrypts and authenticates.
                if defer {
                    pending = Some(PendingSeal {
                        esp_start,
                        ct_end,
                        end,
                    });
                } else {
                    etm.seal(esp, ct_start, icv)?;
                }
            }
        }

        if let Some(hints) = outer_hints {
            self.emit_outer(&mut buf[start..esp_start], end - esp_start, seq, hints)?;
        }
        Ok((
            Encapsulated {
                range: start..end,
                seq,
                soft_expired,
            },
            pending,
        ))
    }

    /// Takes the next sequence number, refusing to wrap (RFC 4303 §3.3.3), and applies the
    /// lifetimes. Lock-free: one `fetch_add`.
    fn next_seq(&self, inner_len: usize) -> Result<(u32, bool), EspError> {
        let limits = &self.limits;
        if self.hot.packets.load(Ordering::Relaxed) >= limits.hard_packets
            || (self.hot.bytes.load(Ordering::Relaxed)).saturating_add(inner_len as u64)
                > limits.hard_bytes
        {
            return Err(EspError::HardExpired);
        }
        let seq = self.hot.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let Ok(wire_seq) = u32::try_from(seq) else {
            return Err(EspError::SequenceExhausted);
        };
        let soft = seq >= SEQ_SOFT_LIMIT
            || self.hot.packets.load(Ordering::Relaxed) + 1 >= limits.soft_packets
            || (self.hot.bytes.load(Ordering::Relaxed)).saturating_add(inner_len as u64)
                >= limits.soft_bytes;
        let soft_expired = soft && !self.soft_fired.swap(true, Ordering::Relaxed);
        Ok((wire_seq, soft_expired))
    }

    /// An unpredictable CBC IV (RFC 3602 §2: the IV must not be predictable) without a
    /// random draw per packet: the block cipher under the SA key applied to a unique input,
    /// the per-SA secret seed with the sequence number folded in (NIST SP 800-38A appendix
    /// C). Sequence numbers never repeat on an SA, so neither do the inputs.
    fn cbc_iv(&self, etm: &CbcHmac, seq: u32, iv: &mut [u8]) -> Result<(), EspError> {
        let mut block = self.iv_seed;
        for (byte, s) in block.iter_mut().zip(u64::from(seq).to_be_bytes()) {
            *byte ^= s;
        }
        let block = block
            .get_mut(..iv.len())
            .ok_or(EspError::Layout("IV longer than 16 bytes"))?;
        etm.encrypt_block(block)?;
        iv.copy_from_slice(block);
        Ok(())
    }

    fn emit_outer(
        &self,
        outer: &mut [u8],
        esp_len: usize,
        seq: u32,
        hints: OuterHints,
    ) -> Result<(), EspError> {
        let (ip, udp_part) = outer.split_at_mut(ipv4::HEADER_LEN);
        let repr = Ipv4Repr {
            src: self.local,
            dst: self.remote,
            protocol: if self.udp_encap.is_some() {
                protocol::UDP
            } else {
                protocol::ESP
            },
            payload_len: udp_part.len() + esp_len,
            ttl: OUTER_TTL,
            dscp_ecn: hints.dscp_ecn,
            dont_frag: hints.dont_frag,
            ident: seq as u16,
        };
        repr.emit(&mut Ipv4Packet::new_unchecked(ip))?;
        if let Some(encap) = self.udp_encap {
            UdpRepr {
                src_port: encap.src_port,
                dst_port: encap.dst_port,
                payload_len: esp_len,
            }
            .emit(&mut UdpPacket::new_unchecked(udp_part))?;
        }
        Ok(())
    }
}

impl InboundSa {
    pub fn new(params: SaParams) -> Result<Self, EspError> {
        let transform = Transform::new(&params, Direction::Open)?;
        let selectors_any = is_any(&params.selectors);
        Ok(Self {
            hot: Hot::default(),
            spi: params.spi,
            transform,
            local: params.local,
            remote: params.remote,
            udp_encap: params.udp_encap,
            selectors: params.selectors,
            selectors_any,
            limits: Limits::from(params.lifetime),
            soft_fired: AtomicBool::new(false),
            replay: ReplayWindow::new(),
            drops: Drops::default(),
        })
    }

    pub fn spi(&self) -> u32 {
        self.spi
    }

    pub fn encr(&self) -> Encr {
        self.transform.encr
    }

    pub fn integ(&self) -> Option<Integ> {
        self.transform.integ
    }

    pub fn local(&self) -> Ipv4Addr {
        self.local
    }

    pub fn remote(&self) -> Ipv4Addr {
        self.remote
    }

    pub fn udp_encap(&self) -> Option<UdpEncap> {
        self.udp_encap
    }

    pub fn selectors(&self) -> &Selectors {
        &self.selectors
    }

    /// Authenticates, checks for replay, decrypts in place and checks the inner packet.
    /// `buf` is exactly one ESP packet, from the SPI to the end of the ICV (what follows
    /// the outer IPv4 header, or the UDP header on port 4500). On success the inner IPv4
    /// packet is at `buf[inner]`. Every error is counted in [`Self::stats`]; on error the
    /// contents of `buf` are unspecified.
    pub fn decapsulate(&self, buf: &mut [u8]) -> Result<Decapsulated, EspError> {
        let out = self.open(buf);
        self.count(&out);
        out
    }

    /// [`Self::decapsulate`] in two steps, so that many packets' ICVs and decryption can
    /// run together: this runs the checks before the ICV (lengths, SPI, lifetime, the
    /// replay pre-check of RFC 4303 §3.4.3) and counts what fails them; CBC SAs then wait
    /// for [`Self::open_many`], AEAD SAs finish here.
    pub fn decapsulate_deferred(&self, buf: &mut [u8]) -> Result<Opening, EspError> {
        let out = match self.open_check(buf) {
            Ok((seq, ct_end)) => match &self.transform.keys {
                Keys::Cbc(_) => return Ok(Opening::Pending(PendingOpen { seq, ct_end })),
                Keys::Aead(_) => self.open_crypto(buf, seq, ct_end),
            },
            Err(e) => Err(e),
        };
        self.count(&out);
        out.map(Opening::Done)
    }

    /// Authenticates and decrypts packets [`Self::decapsulate_deferred`] left pending on
    /// this SA, several at once (`crypto::CbcHmac::open_many`), then finishes each as
    /// [`Self::decapsulate`] does: the replay window moves only for packets whose ICV
    /// was good (RFC 4303 §3.4.3), in the order of `jobs`. Each outcome is in
    /// [`OpenJob::result`] and counted.
    pub fn open_many(&self, jobs: &mut [OpenJob<'_>]) {
        let t = &self.transform;
        let Keys::Cbc(etm) = &t.keys else {
            for job in jobs {
                job.result = Err(EspError::Layout("deferred open on an AEAD SA"));
                self.count(&job.result);
            }
            return;
        };
        let ct_start = ESP_HEADER_LEN + t.iv_len;
        for chunk in jobs.chunks_mut(CHUNK) {
            let mut results = [Ok(()); CHUNK];
            let n = chunk.len();
            {
                let mut it = chunk.iter_mut();
                let mut cj: [crypto::OpenJob<'_>; CHUNK] = core::array::from_fn(|_| {
                    let empty = || crypto::OpenJob::new(&mut [], 0, &[]);
                    let Some(job) = it.next() else {
                        return empty();
                    };
                    let ct_end = job.pending.ct_end;
                    if ct_end > job.buf.len() {
                        return empty();
                    }
                    let (authenticated, icv) = job.buf.split_at_mut(ct_end);
                    crypto::OpenJob::new(authenticated, ct_start, icv)
                });
                etm.open_many(&mut cj[..n]);
                for (r, j) in results.iter_mut().zip(&cj) {
                    *r = j.result;
                }
            }
            for (job, r) in chunk.iter_mut().zip(results) {
                let PendingOpen { seq, ct_end } = job.pending;
                job.result = match r {
                    Ok(()) => self.open_finish(job.buf, seq, ct_end),
                    Err(_) => Err(EspError::AuthFailed),
                };
                self.count(&job.result);
            }
        }
    }

    fn count(&self, out: &Result<Decapsulated, EspError>) {
        match out {
            Ok(Decapsulated::Packet { inner, .. }) => {
                self.hot.packets.fetch_add(1, Ordering::Relaxed);
                self.hot
                    .bytes
                    .fetch_add(inner.len() as u64, Ordering::Relaxed);
            }
            Ok(Decapsulated::Dummy) => {
                self.drops.dummy.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => self.drops.count(err),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> InboundStats {
        let d = &self.drops;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        InboundStats {
            packets: load(&self.hot.packets),
            bytes: load(&self.hot.bytes),
            dummy: load(&d.dummy),
            auth_failed: load(&d.auth_failed),
            replay: load(&d.replay),
            bad_padding: load(&d.bad_padding),
            selector_mismatch: load(&d.selector_mismatch),
            last_mismatch: match load(&d.last_mismatch) {
                0 => None,
                v => Some((Ipv4Addr::from((v >> 32) as u32), Ipv4Addr::from(v as u32))),
            },
            malformed: load(&d.malformed),
            expired: load(&d.expired),
            highest_seq: self.replay.top(),
        }
    }

    fn open(&self, buf: &mut [u8]) -> Result<Decapsulated, EspError> {
        let (seq, ct_end) = self.open_check(buf)?;
        self.open_crypto(buf, seq, ct_end)
    }

    /// The checks before the ICV; returns the sequence number and where the ICV starts.
    fn open_check(&self, buf: &[u8]) -> Result<(u32, usize), EspError> {
        let t = &self.transform;
        let packet = EspPacket::new_checked(buf)?;
        if packet.spi() != self.spi {
            return Err(EspError::WrongSpi {
                expected: self.spi,
                got: packet.spi(),
            });
        }
        let seq = packet.seq();
        let ct_start = ESP_HEADER_LEN + t.iv_len;
        let ct_end = buf
            .len()
            .checked_sub(t.icv_len)
            .filter(|&end| end >= ct_start + t.align)
            .ok_or(EspError::Malformed(crate::wire::WireError::Truncated(
                "esp payload",
            )))?;
        // RFC 4303 §2.4: the ciphertext is whole cipher blocks, and 4-byte aligned.
        if !(ct_end - ct_start).is_multiple_of(t.align) {
            return Err(EspError::Malformed(crate::wire::WireError::Malformed(
                "esp ciphertext length",
            )));
        }
        if self.hot.packets.load(Ordering::Relaxed) >= self.limits.hard_packets
            || self.hot.bytes.load(Ordering::Relaxed) >= self.limits.hard_bytes
        {
            return Err(EspError::HardExpired);
        }
        // RFC 4303 §3.4.3: a cheap replay check before the ICV, the update after it.
        self.replay
            .check(u64::from(seq))
            .map_err(|e| replay_error(e, seq))?;
        Ok((seq, ct_end))
    }

    /// The ICV and decryption of one packet, then the rest.
    fn open_crypto(
        &self,
        buf: &mut [u8],
        seq: u32,
        ct_end: usize,
    ) -> Result<Decapsulated, EspError> {
        let t = &self.transform;
        let ct_start = ESP_HEADER_LEN + t.iv_len;
        let (authenticated, icv) = buf
            .split_at_mut_checked(ct_end)
            .ok_or(EspError::Layout("ICV beyond the packet"))?;
        match &t.keys {
            Keys::Aead(cipher) => {
                let (head, ciphertext) = authenticated.split_at_mut(ct_start);
                let (header, iv) = head.split_at(ESP_HEADER_LEN);
                // Verifies the tag before decrypting (RFC 4106 §3,
                // crypto::Cipher::aead_open).
                cipher
                    .aead_open(iv, header, ciphertext, icv)
                    .map_err(|_| EspError::AuthFailed)?;
            }
            // RFC 4303 §3.4.4: the ICV is checked in constant time over header, IV and
            // ciphertext. The stitched path decrypts while it hashes; on a bad ICV the
            // packet is dropped with nothing of it used, which is the same to the outside
            // as checking first.
            Keys::Cbc(etm) => etm
                .open(authenticated, ct_start, icv)
                .map_err(|_| EspError::AuthFailed)?,
        }
        self.open_finish(buf, seq, ct_end)
    }

    /// After a good ICV: the replay window update (RFC 4303 §3.4.3), then the decrypted
    /// packet's checks.
    fn open_finish(&self, buf: &[u8], seq: u32, ct_end: usize) -> Result<Decapsulated, EspError> {
        let ct_start = ESP_HEADER_LEN + self.transform.iv_len;
        self.replay
            .accept(u64::from(seq))
            .map_err(|e| replay_error(e, seq))?;
        let plaintext = buf
            .get(ct_start..ct_end)
            .ok_or(EspError::Layout("ICV beyond the packet"))?;

        let trailer = EspTrailer::new_checked(plaintext).map_err(|_| EspError::BadPadding)?;
        if !trailer.padding_is_valid() {
            return Err(EspError::BadPadding);
        }
        match trailer.next_header() {
            NEXT_HEADER_IPV4 => {}
            NEXT_HEADER_DUMMY => return Ok(Decapsulated::Dummy),
            other => return Err(EspError::UnsupportedNextHeader(other)),
        }
        let inner = Ipv4Packet::new_checked(trailer.data()).map_err(EspError::InnerMalformed)?;
        if inner.version() != 4 {
            return Err(EspError::InnerMalformed(crate::wire::WireError::Malformed(
                "ipv4 version",
            )));
        }
        // RFC 4301 §5.2 step 4: the decrypted packet must be one this SA may carry.
        if !self.selectors_any && !self.selectors.allows_inbound(&Flow::of(&inner)) {
            // For the node to name the traffic (one relaxed store; drops only).
            let flow = (u64::from(u32::from(inner.src_addr())) << 32)
                | u64::from(u32::from(inner.dst_addr()));
            self.drops.last_mismatch.store(flow, Ordering::Relaxed);
            return Err(EspError::SelectorMismatch);
        }
        let inner_len = usize::from(inner.total_len());
        let soft = self.hot.packets.load(Ordering::Relaxed) + 1 >= self.limits.soft_packets
            || (self.hot.bytes.load(Ordering::Relaxed)).saturating_add(inner_len as u64)
                >= self.limits.soft_bytes;
        let soft_expired = soft && !self.soft_fired.swap(true, Ordering::Relaxed);
        // Anything between Total Length and the padding is TFC padding (RFC 4303 §2.7).
        Ok(Decapsulated::Packet {
            inner: ct_start..ct_start + inner_len,
            soft_expired,
        })
    }
}

impl fmt::Debug for OutboundSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundSa")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("encr", &self.transform.encr)
            .field("integ", &self.transform.integ)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("udp_encap", &self.udp_encap)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for InboundSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundSa")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("encr", &self.transform.encr)
            .field("integ", &self.transform.integ)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("udp_encap", &self.udp_encap)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The keyed algorithms of one SA and their sizes, looked up once.
struct Transform {
    encr: Encr,
    integ: Option<Integ>,
    keys: Keys,
    iv_len: usize,
    /// Ciphertext length granularity: the block, at least 4 (RFC 4303 §2.4). What a
    /// received packet must meet.
    align: usize,
    /// What our padding reaches: `align`, except AES-GCM pads to whole 16-byte AES
    /// blocks (RFC 4303 §2.4 allows any padding up to 255 bytes). Then the cipher never
    /// handles a partial last block, on our side and on the peer's: ring encrypts it and
    /// GHASHes it in separate calls per packet. A 1,400-byte packet carries 4 bytes more.
    pad_to: usize,
    icv_len: usize,
}

impl Transform {
    /// Keyed for `direction` only: an SA direction never needs the other one's state.
    fn new(params: &SaParams, direction: Direction) -> Result<Self, EspError> {
        let encr = params.encr;
        let aead = encr.is_aead();
        if params.enc_key.len() != encr.key_len() {
            return Err(EspError::InvalidParams("encryption key length"));
        }
        let (keys, icv_len) = match (aead, params.integ) {
            (true, None) => {
                if !params.integ_key.is_empty() {
                    return Err(EspError::InvalidParams("integrity key with an AEAD cipher"));
                }
                (
                    Keys::Aead(Box::new(Cipher::new(encr, params.enc_key.expose())?)),
                    encr.icv_len(),
                )
            }
            (true, Some(_)) => {
                return Err(EspError::InvalidParams("integrity algorithm with AEAD"));
            }
            // RFC 4303 §3.2 allows encryption without integrity, but it is open to
            // cut-and-paste attacks (RFC 4303 §5) and IKEv2 peers do not need it.
            (false, None) => return Err(EspError::InvalidParams("CBC without integrity")),
            (false, Some(integ)) => {
                if params.integ_key.len() != integ.key_len() {
                    return Err(EspError::InvalidParams("integrity key length"));
                }
                (
                    Keys::Cbc(CbcHmac::for_direction(
                        direction,
                        encr,
                        params.enc_key.expose(),
                        integ,
                        params.integ_key.expose(),
                    )?),
                    integ.icv_len(),
                )
            }
        };
        let iv_len = encr.iv_len();
        let block_len = encr.block_len();
        if iv_len > MAX_IV_LEN || icv_len > MAX_ICV_LEN || block_len > MAX_PAD_LEN + 1 {
            return Err(EspError::InvalidParams(
                "transform sizes beyond the layout constants",
            ));
        }
        Ok(Self {
            encr,
            integ: params.integ,
            keys,
            iv_len,
            align: block_len.max(4),
            pad_to: if aead { 16 } else { block_len.max(4) },
            icv_len,
        })
    }
}

/// The keyed algorithms: an AEAD cipher, or a CBC cipher with its HMAC (one pass when
/// the CPU allows, `crypto::CbcHmac`, keyed for the SA's direction only).
// One per SA direction, read by every packet. The stitched AES-CBC + HMAC-SHA1 state of
// one direction is inline (the other CBC suites are boxed inside `CbcHmac`). The AES-GCM
// key (ring's AES key schedule and GHASH table, 544 bytes, needed in both directions) is
// boxed: inline it would size every SA's `Keys`, and the one load it adds per packet
// (from a cache line the SA's packets keep hot) is lost in the ~0.5 µs of sealing
// 1,400 bytes: no difference above the noise in the esp benches (docs/PERFORMANCE.md,
// "ESP SA memory").
#[allow(clippy::large_enum_variant)]
enum Keys {
    Aead(Box<Cipher>),
    Cbc(CbcHmac),
}

/// Counters written by every packet, kept on one cache line of their own.
#[derive(Default)]
#[repr(align(64))]
struct Hot {
    seq: AtomicU64,
    packets: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Default)]
#[repr(align(64))]
struct Drops {
    dummy: AtomicU64,
    auth_failed: AtomicU64,
    replay: AtomicU64,
    bad_padding: AtomicU64,
    selector_mismatch: AtomicU64,
    malformed: AtomicU64,
    expired: AtomicU64,
    /// Inner source (high half) and destination of the last selector mismatch.
    last_mismatch: AtomicU64,
}

impl Drops {
    fn count(&self, err: &EspError) {
        let counter = match err {
            EspError::AuthFailed => &self.auth_failed,
            EspError::Replayed { .. } | EspError::TooOld { .. } => &self.replay,
            EspError::BadPadding => &self.bad_padding,
            EspError::SelectorMismatch => &self.selector_mismatch,
            EspError::HardExpired | EspError::SequenceExhausted => &self.expired,
            EspError::Malformed(_)
            | EspError::WrongSpi { .. }
            | EspError::UnsupportedNextHeader(_)
            | EspError::InnerMalformed(_)
            | EspError::InvalidParams(_)
            | EspError::Crypto(_)
            | EspError::Layout(_)
            | EspError::TooBig => &self.malformed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Lifetimes with "unlimited" as `u64::MAX`, so the per-packet checks are plain compares.
#[derive(Debug, Clone, Copy)]
struct Limits {
    soft_bytes: u64,
    hard_bytes: u64,
    soft_packets: u64,
    hard_packets: u64,
}

impl From<Lifetime> for Limits {
    fn from(l: Lifetime) -> Self {
        Self {
            soft_bytes: l.soft_bytes.unwrap_or(u64::MAX),
            hard_bytes: l.hard_bytes.unwrap_or(u64::MAX),
            soft_packets: l.soft_packets.unwrap_or(u64::MAX),
            hard_packets: l.hard_packets.unwrap_or(u64::MAX),
        }
    }
}

/// What the outer header copies from the inner one.
#[derive(Debug, Clone, Copy, Default)]
struct OuterHints {
    dscp_ecn: u8,
    dont_frag: bool,
}

impl OuterHints {
    fn of(inner: &[u8]) -> Self {
        match Ipv4Packet::new_checked(inner) {
            Ok(p) if p.version() == 4 => Self {
                dscp_ecn: p.dscp_ecn(),
                dont_frag: p.dont_frag(),
            },
            _ => Self::default(),
        }
    }
}

fn replay_error(err: ReplayError, seq: u32) -> EspError {
    match err {
        ReplayError::Replayed => EspError::Replayed { seq },
        ReplayError::TooOld => EspError::TooOld { seq },
    }
}

fn is_any(selectors: &Selectors) -> bool {
    use crate::selector::TrafficSelector;
    selectors.local.contains(&TrafficSelector::ANY)
        && selectors.remote.contains(&TrafficSelector::ANY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::{
        LOCAL, REMOTE, SPI, TestRandom, buffer_for, inner_packet, params, peer_packet, sa_pair,
        seal_raw, suites,
    };
    use crate::wire::{Udp4500, classify_udp4500};

    fn encap(out: &OutboundSa, buf: &mut [u8], payload: usize) -> Range<usize> {
        let len = peer_packet(&mut buf[HEADROOM_MAX..], payload);
        out.encapsulate(buf, HEADROOM_MAX, len).unwrap().range
    }

    /// The one-pass CBC + HMAC path (stitched AES-NI/SHA-NI for aes*-sha1 where the CPU
    /// has them) against `crypto::Cipher` and `crypto::Mac` called one after the other:
    /// what the SA sends opens with the reference, and what the reference seals opens in
    /// the SA, for every CBC suite and many lengths.
    #[test]
    fn cbc_suites_match_the_separate_cipher_and_mac() {
        use crypto::Mac;
        for (encr, integ) in suites() {
            let Some(integ_alg) = integ else { continue };
            let (out, inb) = sa_pair(encr, integ, false);
            let p = params(encr, integ, false);
            let cipher = Cipher::new(encr, p.enc_key.expose()).unwrap();
            let mac = Mac::new(integ_alg, p.integ_key.expose()).unwrap();
            let (iv_len, icv_len) = (encr.iv_len(), integ_alg.icv_len());
            for (n, payload) in (0..300).step_by(7).chain([1372]).enumerate() {
                // Outbound, checked with the reference.
                let mut buf = buffer_for(1400);
                let inner_len = peer_packet(&mut buf[HEADROOM_MAX..], payload);
                let original = buf[HEADROOM_MAX..HEADROOM_MAX + inner_len].to_vec();
                let range = out
                    .encapsulate(&mut buf, HEADROOM_MAX, inner_len)
                    .unwrap()
                    .range;
                let esp = &mut buf[range];
                let ct_end = esp.len() - icv_len;
                let (authenticated, icv) = esp.split_at_mut(ct_end);
                assert!(
                    mac.verify(&[authenticated], icv),
                    "{encr:?} {integ:?} {payload}"
                );
                let (head, ct) = authenticated.split_at_mut(8 + iv_len);
                cipher.cbc_decrypt(&head[8..], ct).unwrap();
                assert_eq!(
                    ct[..inner_len],
                    original[..],
                    "{encr:?} {integ:?} {payload}"
                );
                assert_eq!(ct[ct.len() - 1], NEXT_HEADER_IPV4);

                // Inbound, from the reference.
                let mut plain = original.clone();
                let pad = esp::pad_len_for(inner_len, encr.block_len());
                plain.extend((1..=pad as u8).chain([pad as u8, NEXT_HEADER_IPV4]));
                let mut packet = vec![0u8; plain.len() + 64];
                let len = seal_raw(encr, integ, n as u32 + 1, &plain, &mut packet);
                let got = inb.decapsulate(&mut packet[..len]).unwrap();
                let Decapsulated::Packet { inner, .. } = got else {
                    panic!("{got:?}");
                };
                assert_eq!(packet[inner], original[..], "{encr:?} {integ:?} {payload}");
                // And a forged one (last ICV byte) is refused.
                let len2 = seal_raw(encr, integ, n as u32 + 1000, &plain, &mut packet);
                packet[len2 - 1] ^= 0x80;
                assert_eq!(
                    inb.decapsulate(&mut packet[..len2]),
                    Err(EspError::AuthFailed)
                );
            }
        }
    }

    #[test]
    fn round_trip_every_suite_with_and_without_udp() {
        for (encr, integ) in suites() {
            for udp in [false, true] {
                let (out, inb) = sa_pair(encr, integ, udp);
                for payload in [0, 1, 13, 100, 1372] {
                    let mut buf = buffer_for(1400);
                    let inner_len = peer_packet(&mut buf[HEADROOM_MAX..], payload);
                    let original = buf[HEADROOM_MAX..HEADROOM_MAX + inner_len].to_vec();
                    let sent = out
                        .encapsulate_ipv4(&mut buf, HEADROOM_MAX, inner_len)
                        .unwrap();
                    assert_eq!(
                        sent.range.len(),
                        out.outer_headroom_needed() - out.headroom_needed()
                            + out.overhead(inner_len)
                            + inner_len
                    );
                    // The outer headers, as a receiver sees them.
                    let ip = Ipv4Packet::new_checked(&buf[sent.range.clone()]).unwrap();
                    assert!(ip.verify_checksum(), "{encr:?} {integ:?}");
                    assert_eq!(ip.src_addr(), REMOTE);
                    assert_eq!(ip.dst_addr(), LOCAL);
                    assert!(ip.dont_frag());
                    let esp_at = sent.range.start + ip.header_len() + if udp { 8 } else { 0 };
                    if udp {
                        assert_eq!(ip.protocol(), protocol::UDP);
                        let datagram = UdpPacket::new_checked(ip.payload()).unwrap();
                        assert_eq!((datagram.src_port(), datagram.dst_port()), (4500, 4500));
                        assert_eq!(datagram.checksum(), 0);
                        assert_eq!(classify_udp4500(datagram.payload()), Udp4500::Esp);
                    } else {
                        assert_eq!(ip.protocol(), protocol::ESP);
                    }
                    let outer = crate::wire::parse_outer(&buf[sent.range.clone()]).unwrap();
                    assert_eq!(
                        outer.payload,
                        crate::wire::OuterPayload::Esp(esp_at - sent.range.start..sent.range.len())
                    );
                    let esp = &mut buf[esp_at..sent.range.end];
                    assert_eq!(esp.len() % 4, 0, "RFC 4303 §2.4 alignment");
                    if encr.is_aead() {
                        // Whole AES blocks: header 8 + IV 8 + ciphertext + ICV 16.
                        assert_eq!((esp.len() - 32) % 16, 0, "{encr:?} {payload}");
                    }
                    let got = inb.decapsulate(esp).unwrap();
                    let Decapsulated::Packet {
                        inner,
                        soft_expired,
                    } = got
                    else {
                        panic!("{got:?}");
                    };
                    assert!(!soft_expired);
                    assert_eq!(&esp[inner], &original[..], "{encr:?} {integ:?} udp={udp}");
                }
                let (o, i) = (out.stats(), inb.stats());
                assert_eq!((o.packets, i.packets, o.seq, i.highest_seq), (5, 5, 5, 5));
                assert_eq!(o.bytes, i.bytes);
            }
        }
    }

    #[test]
    fn sas_are_shared_between_workers() {
        fn shared<T: Send + Sync>() {}
        shared::<OutboundSa>();
        shared::<InboundSa>();
        shared::<crate::SaDb<u64>>();
    }

    /// Issue 8: 10,000 tunnels in ≤ 8 KiB each, and an inbound plus an outbound SA per
    /// tunnel. Were 2,176 + 1,600 bytes while every SA held inline the largest key state of
    /// any suite (the separate CBC path's AES-256 and HMAC-SHA-512, 1,344 bytes, with both
    /// AES key schedules); now `Keys` is one direction's stitched AES-SHA1 state, and the
    /// other suites are boxed.
    #[test]
    fn sas_stay_small() {
        assert!(
            size_of::<InboundSa>() <= 1152,
            "InboundSa is {} bytes",
            size_of::<InboundSa>()
        );
        assert!(
            size_of::<OutboundSa>() <= 576,
            "OutboundSa is {} bytes",
            size_of::<OutboundSa>()
        );
    }

    #[test]
    fn layout_contract() {
        for (encr, integ) in suites() {
            let (out, inb) = sa_pair(encr, integ, false);
            let headroom = out.headroom_needed();
            let inner_len = 60;
            let mut buf = vec![0u8; headroom + inner_len + out.tailroom_needed()];
            peer_packet(&mut buf[headroom..], inner_len - 28);
            let sent = out.encapsulate(&mut buf, headroom, inner_len).unwrap();
            assert_eq!(sent.range.start, 0);
            assert_eq!(sent.range.len(), inner_len + out.overhead(inner_len));
            assert!(sent.range.end <= buf.len());
            assert!(out.tailroom_needed() <= TAILROOM_MAX);
            assert!(out.outer_headroom_needed() <= HEADROOM_MAX);
            let esp = &mut buf[sent.range];
            assert_eq!(EspPacket::new_checked(&*esp).unwrap().spi(), SPI);
            let _ = inb.decapsulate(esp).unwrap();
        }
    }

    #[test]
    fn layout_errors_use_no_sequence_number() {
        let (out, _) = sa_pair(Encr::AesCbc128, Some(Integ::HmacSha1_96), false);
        let mut buf = buffer_for(100);
        let short_head = out.encapsulate(&mut buf, out.headroom_needed() - 1, 10);
        assert!(matches!(short_head, Err(EspError::Layout(_))));
        let too_long = out.encapsulate(&mut buf, HEADROOM_MAX, 100 + TAILROOM_MAX);
        assert!(matches!(too_long, Err(EspError::Layout(_))));
        let no_tail = buf.len() - HEADROOM_MAX;
        assert!(matches!(
            out.encapsulate(&mut buf, HEADROOM_MAX, no_tail),
            Err(EspError::Layout(_))
        ));
        assert!(matches!(
            out.encapsulate_ipv4(&mut buf, out.headroom_needed(), 10),
            Err(EspError::Layout(_))
        ));
        let mut huge = buffer_for(70_000);
        // 65_480 + 20 outer + 24 ESP header and IV + 12 trailer + 12 ICV = 65_548 > 65_535.
        assert_eq!(
            out.encapsulate(&mut huge, HEADROOM_MAX, 65_480),
            Err(EspError::TooBig)
        );
        let stats = out.stats();
        assert_eq!((stats.seq, stats.packets, stats.layout), (0, 0, 5));
    }

    #[test]
    fn iv_generation() {
        // GCM: the IV is the 64-bit sequence number (RFC 4106 §3.1).
        let (gcm, _) = sa_pair(Encr::AesGcm16_128, None, false);
        let mut buf = buffer_for(100);
        for seq in 1u64..=3 {
            let range = encap(&gcm, &mut buf, 10);
            assert_eq!(&buf[range.start + 8..range.start + 16], &seq.to_be_bytes());
        }
        // CBC: unpredictable, so at least never the same twice and not the counter.
        let (cbc, _) = sa_pair(Encr::AesCbc256, Some(Integ::HmacSha256_128), false);
        let mut ivs = std::collections::HashSet::new();
        for _ in 0..1000 {
            let range = encap(&cbc, &mut buf, 10);
            let iv = buf[range.start + 8..range.start + 24].to_vec();
            assert!(ivs.insert(iv));
        }
        // Two SAs with the same key (never done, but) still get different IVs: the seed.
        let other = OutboundSa::new(
            params(Encr::AesCbc256, Some(Integ::HmacSha256_128), false),
            &mut TestRandom(8),
        )
        .unwrap();
        let range = encap(&other, &mut buf, 10);
        assert!(!ivs.contains(&buf[range.start + 8..range.start + 24]));
    }

    #[test]
    fn outer_header_copies_dscp_ecn_df() {
        let (out, _) = sa_pair(Encr::AesGcm16_256, None, false);
        let mut buf = buffer_for(100);
        let len = peer_packet(&mut buf[HEADROOM_MAX..], 10);
        {
            let mut inner = Ipv4Packet::new_unchecked(&mut buf[HEADROOM_MAX..]);
            inner.set_dscp_ecn(0xb9);
            inner.set_dont_frag_unfragmented(false);
        }
        let sent = out.encapsulate_ipv4(&mut buf, HEADROOM_MAX, len).unwrap();
        let ip = Ipv4Packet::new_checked(&buf[sent.range]).unwrap();
        assert_eq!(ip.dscp_ecn(), 0xb9);
        assert!(!ip.dont_frag());
        assert_eq!(ip.ident(), 1);
        assert_eq!(ip.ttl(), OUTER_TTL);
    }

    #[test]
    fn tampering_anywhere_fails_authentication() {
        for (encr, integ) in suites() {
            let (out, inb) = sa_pair(encr, integ, false);
            let mut buf = buffer_for(100);
            let range = encap(&out, &mut buf, 40);
            // Every byte after the SPI: sequence number, IV, ciphertext, ICV.
            for at in 4..range.len() {
                let mut copy = buf[range.clone()].to_vec();
                // (0x80: flipping the low bit of sequence number 1 would make it 0, which
                // the replay pre-check refuses before the ICV.)
                copy[at] ^= 0x80;
                assert_eq!(
                    inb.decapsulate(&mut copy),
                    Err(EspError::AuthFailed),
                    "{at}"
                );
            }
            let stats = inb.stats();
            assert_eq!(stats.auth_failed, range.len() as u64 - 4);
            assert_eq!(stats.packets, 0);
            // The window did not move for forgeries: the genuine packet still goes in.
            let _ = inb.decapsulate(&mut buf[range]).unwrap();
        }
    }

    #[test]
    fn wrong_spi() {
        let (out, inb) = sa_pair(Encr::AesCbc128, Some(Integ::HmacSha1_96), false);
        let mut buf = buffer_for(100);
        let range = encap(&out, &mut buf, 40);
        buf[range.start] ^= 0x80;
        assert!(matches!(
            inb.decapsulate(&mut buf[range]),
            Err(EspError::WrongSpi { expected: SPI, .. })
        ));
        assert_eq!(inb.stats().malformed, 1);
    }

    /// The deferred path (encapsulate_deferred + seal_many, decapsulate_deferred +
    /// open_many) gives the bytes of the one-packet path for every suite and batch size,
    /// with uneven lengths; in a batch a forged packet fails alone and does not move the
    /// replay window (its genuine twin is accepted afterwards, RFC 4303 §3.4.3), and a
    /// packet repeated within the batch is refused as a replay.
    #[test]
    fn batched_seal_and_open_match_the_single_path() {
        for (encr, integ) in suites() {
            for batch in [1usize, 2, 3, 4, 5, 9, 13] {
                let (single, _) = sa_pair(encr, integ, false);
                let (out, inb) = sa_pair(encr, integ, false);
                let mut bufs = Vec::new();
                let mut singles = Vec::new();
                let mut originals = Vec::new();
                for i in 0..batch {
                    let mut buf = buffer_for(1400);
                    let payload = if i % 3 == 2 { (i * 97) % 1300 } else { 1300 };
                    let len = peer_packet(&mut buf[HEADROOM_MAX..], payload);
                    originals.push(buf[HEADROOM_MAX..HEADROOM_MAX + len].to_vec());
                    let mut copy = buf.clone();
                    let r = single.encapsulate(&mut copy, HEADROOM_MAX, len).unwrap();
                    singles.push(copy[r.range].to_vec());
                    bufs.push((buf, len));
                }
                let mut ranges = Vec::new();
                let mut pendings = Vec::new();
                for (i, (buf, len)) in bufs.iter_mut().enumerate() {
                    let (enc, pending) = out.encapsulate_deferred(buf, HEADROOM_MAX, *len).unwrap();
                    assert_eq!(enc.seq, i as u32 + 1);
                    assert_eq!(pending.is_some(), integ.is_some(), "{encr:?}");
                    ranges.push(enc.range);
                    pendings.push(pending);
                }
                let mut jobs: Vec<SealJob<'_>> = bufs
                    .iter_mut()
                    .zip(&pendings)
                    .filter_map(|((b, _), p)| p.map(|p| SealJob::new(b, p)))
                    .collect();
                out.seal_many(&mut jobs);
                assert!(jobs.iter().all(|j| j.result().is_ok()));
                drop(jobs);
                for (i, ((buf, _), r)) in bufs.iter().zip(&ranges).enumerate() {
                    assert_eq!(buf[r.clone()], singles[i][..], "{encr:?} {batch} #{i}");
                }
                assert_eq!(out.stats().packets, batch as u64);

                // Inbound: the packets, one forged (when there are two or more), the
                // first repeated at the end.
                let mut packets: Vec<Vec<u8>> = singles.clone();
                let forged = (batch > 1).then_some(batch / 2);
                if let Some(f) = forged {
                    packets[f][20] ^= 1;
                }
                packets.push(singles[0].clone());
                let mut results = vec![None; packets.len()];
                let mut pending = Vec::new();
                for (i, p) in packets.iter_mut().enumerate() {
                    match inb.decapsulate_deferred(p) {
                        Ok(Opening::Pending(o)) => pending.push((i, o)),
                        Ok(Opening::Done(d)) => results[i] = Some(Ok(d)),
                        Err(e) => results[i] = Some(Err(e)),
                    }
                }
                let mut jobs: Vec<OpenJob<'_>> = Vec::new();
                let mut idx = Vec::new();
                for (i, p) in packets.iter_mut().enumerate() {
                    if let Some((_, o)) = pending.iter().find(|(k, _)| *k == i) {
                        jobs.push(OpenJob::new(p, *o));
                        idx.push(i);
                    }
                }
                inb.open_many(&mut jobs);
                for (job, i) in jobs.iter().zip(&idx) {
                    results[*i] = Some(job.result().clone());
                }
                drop(jobs);
                for (i, r) in results.iter().enumerate() {
                    let r = r.clone().unwrap();
                    if Some(i) == forged {
                        assert_eq!(r, Err(EspError::AuthFailed), "{encr:?} {batch} #{i}");
                    } else if i == batch {
                        assert_eq!(r, Err(EspError::Replayed { seq: 1 }), "{encr:?}");
                    } else {
                        let Ok(Decapsulated::Packet { inner, .. }) = r else {
                            panic!("{encr:?} {batch} #{i}: {r:?}");
                        };
                        assert_eq!(packets[i][inner], originals[i][..], "{encr:?} #{i}");
                    }
                }
                if let Some(f) = forged {
                    let mut genuine = singles[f].clone();
                    assert!(inb.decapsulate(&mut genuine).is_ok(), "{encr:?} {batch}");
                }
                let stats = inb.stats();
                assert_eq!(
                    (stats.packets, stats.auth_failed, stats.replay),
                    (batch as u64, u64::from(forged.is_some()), 1),
                    "{encr:?} {batch}"
                );
            }
        }
    }

    #[test]
    fn replayed_and_too_old() {
        let (out, inb) = sa_pair(Encr::AesGcm16_128, None, false);
        let mut first = buffer_for(100);
        let first_range = encap(&out, &mut first, 20);
        let saved = first[first_range.clone()].to_vec();
        let _ = inb.decapsulate(&mut first[first_range]).unwrap();
        let mut again = saved.clone();
        assert_eq!(
            inb.decapsulate(&mut again),
            Err(EspError::Replayed { seq: 1 })
        );
        // Move the window REPLAY_WINDOW past sequence number 2.
        let mut second = buffer_for(100);
        let second_range = encap(&out, &mut second, 20);
        let mut buf = buffer_for(100);
        for _ in 0..crate::REPLAY_WINDOW {
            let range = encap(&out, &mut buf, 20);
            let _ = inb.decapsulate(&mut buf[range]).unwrap();
        }
        assert_eq!(inb.stats().highest_seq, crate::REPLAY_WINDOW + 2);
        assert_eq!(
            inb.decapsulate(&mut second[second_range]),
            Err(EspError::TooOld { seq: 2 })
        );
        let stats = inb.stats();
        assert_eq!((stats.replay, stats.auth_failed), (2, 0));
    }

    #[test]
    fn bad_padding_is_dropped() {
        for (encr, integ) in suites() {
            let inb = InboundSa::new(params(encr, integ, false)).unwrap();
            let mut inner = [0u8; 64];
            let len = peer_packet(&mut inner, 4);
            // 32 bytes + 14 padding + 2 = 48, a multiple of every alignment.
            let mut plain = inner[..len].to_vec();
            plain.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 13, 14, 4]);
            let mut buf = [0u8; 200];
            let n = seal_raw(encr, integ, 1, &plain, &mut buf);
            assert_eq!(inb.decapsulate(&mut buf[..n]), Err(EspError::BadPadding));
            // Pad Length longer than the plaintext.
            let last = plain.len() - 2;
            plain[last] = 200;
            let n = seal_raw(encr, integ, 2, &plain, &mut buf);
            assert_eq!(inb.decapsulate(&mut buf[..n]), Err(EspError::BadPadding));
            assert_eq!(inb.stats().bad_padding, 2);
        }
    }

    #[test]
    fn dummy_and_unknown_next_header() {
        let (encr, integ) = (Encr::AesCbc192, Some(Integ::HmacSha384_192));
        let inb = InboundSa::new(params(encr, integ, false)).unwrap();
        let mut buf = [0u8; 200];
        // RFC 4303 §2.6: Next Header 59, payload anything.
        let mut plain = [0xeeu8; 32];
        plain[29] = 1;
        plain[30] = 1;
        plain[31] = 59;
        let n = seal_raw(encr, integ, 1, &plain, &mut buf);
        assert_eq!(inb.decapsulate(&mut buf[..n]), Ok(Decapsulated::Dummy));
        plain[31] = protocol::IPV6;
        let n = seal_raw(encr, integ, 2, &plain, &mut buf);
        assert_eq!(
            inb.decapsulate(&mut buf[..n]),
            Err(EspError::UnsupportedNextHeader(41))
        );
        let stats = inb.stats();
        assert_eq!((stats.dummy, stats.malformed, stats.packets), (1, 1, 0));
    }

    #[test]
    fn truncated_packets_never_panic() {
        for (encr, integ) in suites() {
            let (out, inb) = sa_pair(encr, integ, false);
            let mut buf = buffer_for(100);
            let range = encap(&out, &mut buf, 40);
            let packet = buf[range].to_vec();
            for len in 0..packet.len() {
                let mut copy = packet[..len].to_vec();
                let err = inb.decapsulate(&mut copy).unwrap_err();
                assert!(
                    matches!(err, EspError::Malformed(_) | EspError::AuthFailed),
                    "{len}: {err}"
                );
            }
            let s = inb.stats();
            assert_eq!(s.malformed + s.auth_failed, packet.len() as u64);
        }
    }

    #[test]
    fn inner_packet_checks() {
        let (encr, integ) = (Encr::AesGcm16_128, None);
        let inb = InboundSa::new(params(encr, integ, false)).unwrap();
        assert_eq!(inb.stats().last_mismatch, None);
        let mut inner = [0u8; 64];
        let mut buf = [0u8; 200];
        // Source outside the peer's selector 10.2.0.0/16.
        let len = inner_packet(
            &mut inner,
            Ipv4Addr::new(10, 3, 0, 1),
            Ipv4Addr::new(10, 1, 0, 1),
            6,
        );
        // 34 bytes + no padding + 2 = 36, 4-byte aligned.
        let mut plain = inner[..len].to_vec();
        plain.extend_from_slice(&[0, 4]);
        let n = seal_raw(encr, integ, 1, &plain, &mut buf);
        assert_eq!(
            inb.decapsulate(&mut buf[..n]),
            Err(EspError::SelectorMismatch)
        );
        // The node names the last such packet's addresses.
        assert_eq!(
            inb.stats().last_mismatch,
            Some((Ipv4Addr::new(10, 3, 0, 1), Ipv4Addr::new(10, 1, 0, 1)))
        );
        // Destination outside ours.
        inner_packet(
            &mut inner,
            Ipv4Addr::new(10, 2, 0, 1),
            Ipv4Addr::new(10, 9, 0, 1),
            6,
        );
        plain[..len].copy_from_slice(&inner[..len]);
        let n = seal_raw(encr, integ, 2, &plain, &mut buf);
        assert_eq!(
            inb.decapsulate(&mut buf[..n]),
            Err(EspError::SelectorMismatch)
        );
        // Total Length beyond the payload.
        inner_packet(
            &mut inner,
            Ipv4Addr::new(10, 2, 0, 1),
            Ipv4Addr::new(10, 1, 0, 1),
            6,
        );
        plain[..len].copy_from_slice(&inner[..len]);
        plain[3] += 1;
        let n = seal_raw(encr, integ, 3, &plain, &mut buf);
        assert!(matches!(
            inb.decapsulate(&mut buf[..n]),
            Err(EspError::InnerMalformed(_))
        ));
        // IPv6 version nibble with Next Header 4.
        plain[3] -= 1;
        plain[0] = 0x65;
        let n = seal_raw(encr, integ, 4, &plain, &mut buf);
        assert!(matches!(
            inb.decapsulate(&mut buf[..n]),
            Err(EspError::InnerMalformed(_))
        ));
        // TFC padding (RFC 4303 §2.7) after the inner packet is cut off, not delivered.
        plain[0] = 0x45;
        let mut tfc = plain[..len].to_vec();
        tfc.extend_from_slice(&[0, 0, 0, 0, 0, 4]);
        let n = seal_raw(encr, integ, 5, &tfc, &mut buf);
        let Ok(Decapsulated::Packet { inner: range, .. }) = inb.decapsulate(&mut buf[..n]) else {
            panic!("TFC-padded packet refused");
        };
        assert_eq!(range.len(), len);
        let s = inb.stats();
        assert_eq!((s.selector_mismatch, s.malformed, s.packets), (2, 2, 1));
    }

    #[test]
    fn sequence_numbers_never_wrap() {
        let (out, inb) = sa_pair(Encr::AesGcm16_128, None, false);
        let mut buf = buffer_for(100);
        out.hot.seq.store(SEQ_SOFT_LIMIT - 2, Ordering::Relaxed);
        let len = peer_packet(&mut buf[HEADROOM_MAX..], 10);
        let send = |buf: &mut [u8]| {
            peer_packet(&mut buf[HEADROOM_MAX..], 10);
            out.encapsulate(buf, HEADROOM_MAX, len)
        };
        let first = send(&mut buf).unwrap();
        assert!(!first.soft_expired);
        let soft = send(&mut buf).unwrap();
        assert!(soft.soft_expired, "RFC 4303 §3.3.3: time to rekey");
        assert_eq!(u64::from(soft.seq), SEQ_SOFT_LIMIT);
        let later = send(&mut buf).unwrap();
        assert!(!later.soft_expired, "reported once");
        out.hot.seq.store(SEQ_HARD_LIMIT - 1, Ordering::Relaxed);
        let last = send(&mut buf).unwrap();
        assert_eq!(last.seq, u32::MAX);
        // The receiver takes the last one...
        let _ = inb.decapsulate(&mut buf[last.range]).unwrap();
        // ...and the sender refuses to wrap to 0.
        for _ in 0..3 {
            assert_eq!(send(&mut buf), Err(EspError::SequenceExhausted));
        }
        let stats = out.stats();
        assert_eq!((stats.expired, stats.seq), (3, SEQ_HARD_LIMIT));
    }

    #[test]
    fn byte_and_packet_lifetimes() {
        let lifetime = Lifetime {
            soft_packets: Some(3),
            hard_packets: Some(5),
            soft_bytes: None,
            hard_bytes: None,
        };
        let mut p = params(Encr::AesGcm16_128, None, false);
        p.lifetime = lifetime;
        let out = OutboundSa::new(p, &mut TestRandom(1)).unwrap();
        let mut buf = buffer_for(100);
        let len = peer_packet(&mut buf[HEADROOM_MAX..], 10);
        let soft: Vec<bool> = (0..5)
            .map(|_| {
                out.encapsulate(&mut buf, HEADROOM_MAX, len)
                    .unwrap()
                    .soft_expired
            })
            .collect();
        assert_eq!(soft, [false, false, true, false, false]);
        assert_eq!(
            out.encapsulate(&mut buf, HEADROOM_MAX, len),
            Err(EspError::HardExpired)
        );

        let (sender, _) = sa_pair(Encr::AesGcm16_128, None, false);
        let mut p = params(Encr::AesGcm16_128, None, false);
        p.lifetime = Lifetime {
            soft_bytes: Some(100),
            hard_bytes: Some(120),
            ..Lifetime::default()
        };
        let inb = InboundSa::new(p).unwrap();
        let mut results = Vec::new();
        for _ in 0..4 {
            let range = encap(&sender, &mut buf, 22); // 50-byte inner packets
            results.push(inb.decapsulate(&mut buf[range]));
        }
        assert!(matches!(
            results[0],
            Ok(Decapsulated::Packet {
                soft_expired: false,
                ..
            })
        ));
        assert!(matches!(
            results[1],
            Ok(Decapsulated::Packet {
                soft_expired: true,
                ..
            })
        ));
        assert!(matches!(
            results[2],
            Ok(Decapsulated::Packet {
                soft_expired: false,
                ..
            })
        ));
        assert_eq!(results[3], Err(EspError::HardExpired));
        assert_eq!(inb.stats().expired, 1);
    }

    #[test]
    fn invalid_params() {
        let mut p = params(Encr::AesCbc128, Some(Integ::HmacSha1_96), false);
        p.enc_key = Key::new(&[0; 15]);
        assert!(matches!(InboundSa::new(p), Err(EspError::InvalidParams(_))));
        let mut p = params(Encr::AesCbc128, Some(Integ::HmacSha1_96), false);
        p.integ_key = Key::new(&[0; 16]);
        assert!(matches!(InboundSa::new(p), Err(EspError::InvalidParams(_))));
        let p = params(Encr::AesCbc128, None, false);
        assert!(matches!(InboundSa::new(p), Err(EspError::InvalidParams(_))));
        let mut p = params(Encr::AesGcm16_128, None, false);
        p.integ = Some(Integ::HmacSha1_96);
        assert!(matches!(
            OutboundSa::new(p, &mut TestRandom(0)),
            Err(EspError::InvalidParams(_))
        ));
    }

    #[test]
    fn debug_output_has_no_key_material() {
        let p = params(Encr::AesCbc256, Some(Integ::HmacSha256_128), false);
        // Distinctive key bytes, in the forms Debug would print them.
        let mut p = p;
        p.enc_key = Key::new(&[0xa5; 32]);
        p.integ_key = Key::new(&[0x5a; 32]);
        let printed = [
            format!("{p:?}"),
            format!("{:?}", InboundSa::new(p.clone()).unwrap()),
            format!(
                "{:?}",
                OutboundSa::new(p.clone(), &mut TestRandom(3)).unwrap()
            ),
            format!("{:#?}", p.enc_key),
        ];
        for text in printed {
            assert!(!text.contains("165"), "{text}");
            assert!(!text.contains("90,"), "{text}");
            assert!(!text.to_lowercase().contains("a5a5"), "{text}");
            assert!(!text.to_lowercase().contains("5a5a"), "{text}");
        }
        assert!(format!("{:?}", p.enc_key).contains("redacted"));
    }
}
