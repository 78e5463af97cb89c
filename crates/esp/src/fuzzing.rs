//! Fuzz bodies and test fixtures, shared by the cargo-fuzz targets in `fuzz/`, the plain
//! `#[test]`s that run the same bodies over pseudo-random inputs, the integration tests and
//! the benches. Compiled only for tests and with the `fuzzing` feature.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use core::net::Ipv4Addr;

use crypto::{Cipher, Encr, Integ, Mac, Random};

use crate::sa::{Decapsulated, InboundSa, Key, Lifetime, OutboundSa, SaParams, UdpEncap};
use crate::selector::{Flow, Selectors, TrafficSelector};
use crate::wire::{
    self, EspPacket, EspTrailer, Ipv4Packet, UdpPacket, classify_udp4500, ipv4::protocol,
};
use crate::{EspError, HEADROOM_MAX, TAILROOM_MAX};

/// Distinct ESP packets for decapsulation benches. The replay window refuses a sequence
/// number twice (RFC 4303 §3.4.3), so each step opens packets not opened before; when the
/// pool is used up a new inbound SA starts over.
pub struct PacketPool {
    pool: Vec<Vec<u8>>,
    next: usize,
    params: SaParams,
    sa: InboundSa,
}

impl PacketPool {
    /// `pool`: packets sealed in order by the peer of an SA with `params`.
    pub fn new(pool: Vec<Vec<u8>>, params: SaParams) -> Self {
        let sa = InboundSa::new(params.clone()).unwrap();
        Self {
            pool,
            next: 0,
            params,
            sa,
        }
    }

    /// Copies the next `scratch.len()` packets into `scratch` (the buffers as recvmmsg
    /// would have filled them) and returns the SA to open them with. The pool's length
    /// must be a multiple of `scratch.len()`, and each buffer as long as its packet.
    pub fn next_into(&mut self, scratch: &mut [Vec<u8>]) -> &InboundSa {
        if self.next + scratch.len() > self.pool.len() {
            self.sa = InboundSa::new(self.params.clone()).unwrap();
            self.next = 0;
        }
        for (s, p) in scratch.iter_mut().zip(&self.pool[self.next..]) {
            s.copy_from_slice(p);
        }
        self.next += scratch.len();
        &self.sa
    }
}

/// The benches' suites, by the names labbench and strongSwan give them: the product's
/// default, the common stronger CBC pair, and AES-GCM.
pub const BENCH_SUITES: [(&str, Encr, Option<Integ>); 3] = [
    ("aes128-sha1", Encr::AesCbc128, Some(Integ::HmacSha1_96)),
    (
        "aes256-sha256",
        Encr::AesCbc256,
        Some(Integ::HmacSha256_128),
    ),
    ("aes128gcm16", Encr::AesGcm16_128, None),
];

/// Every supported (encryption, integrity) pair: 5 CBC ciphers × 5 HMACs, and the two
/// AES-GCM ciphers.
pub fn suites() -> Vec<(Encr, Option<Integ>)> {
    let cbc = [
        Encr::Des,
        Encr::TripleDes,
        Encr::AesCbc128,
        Encr::AesCbc192,
        Encr::AesCbc256,
    ];
    let integ = [
        Integ::HmacMd5_96,
        Integ::HmacSha1_96,
        Integ::HmacSha256_128,
        Integ::HmacSha384_192,
        Integ::HmacSha512_256,
    ];
    let mut all: Vec<_> = cbc
        .iter()
        .flat_map(|&e| integ.iter().map(move |&i| (e, Some(i))))
        .collect();
    all.push((Encr::AesGcm16_128, None));
    all.push((Encr::AesGcm16_256, None));
    all
}

/// A deterministic `Random` (SplitMix64), for tests only.
#[derive(Debug, Clone)]
pub struct TestRandom(pub u64);

impl TestRandom {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Random for TestRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

pub const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// Inner addresses: our protected network and the peer's.
pub const LOCAL_NET: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 0);
pub const REMOTE_NET: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 0);
pub const SPI: u32 = 0xc0ff_ee01;

/// `10.1.0.0/16 <-> 10.2.0.0/16` seen from the side that owns 10.1.0.0/16.
pub fn selectors() -> Selectors {
    Selectors {
        local: vec![TrafficSelector::cidr(LOCAL_NET, 16).unwrap()],
        remote: vec![TrafficSelector::cidr(REMOTE_NET, 16).unwrap()],
    }
}

/// Fixed keys: byte `i` of the encryption key is `i + 1`, of the integrity key `0x80 + i`.
pub fn params(encr: Encr, integ: Option<Integ>, udp: bool) -> SaParams {
    let enc_key: Vec<u8> = (1..=encr.key_len() as u8).collect();
    let integ_key: Vec<u8> = integ
        .map(|i| (0..i.key_len() as u8).map(|b| 0x80 + b).collect())
        .unwrap_or_default();
    SaParams {
        spi: SPI,
        encr,
        enc_key: Key::from(enc_key),
        integ,
        integ_key: Key::from(integ_key),
        local: LOCAL,
        remote: REMOTE,
        udp_encap: udp.then_some(UdpEncap {
            src_port: 4500,
            dst_port: 4500,
        }),
        selectors: selectors(),
        lifetime: Lifetime::default(),
    }
}

/// The two ends of one SA: the peer's outbound (protecting 10.2/16 → 10.1/16) and our
/// inbound.
pub fn sa_pair(encr: Encr, integ: Option<Integ>, udp: bool) -> (OutboundSa, InboundSa) {
    let mut peer = params(encr, integ, udp);
    core::mem::swap(&mut peer.local, &mut peer.remote);
    peer.selectors = Selectors {
        local: selectors().remote,
        remote: selectors().local,
    };
    let outbound = OutboundSa::new(peer, &mut TestRandom(7)).unwrap();
    let inbound = InboundSa::new(params(encr, integ, udp)).unwrap();
    (outbound, inbound)
}

/// Writes an IPv4/UDP packet `src → dst` with `payload_len` payload bytes (a counting
/// pattern) at the start of `buf`; returns its length.
pub fn inner_packet(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize) -> usize {
    let len = 28 + payload_len;
    let ip = &mut buf[..len];
    wire::Ipv4Repr {
        src,
        dst,
        protocol: protocol::UDP,
        payload_len: 8 + payload_len,
        ttl: 64,
        dscp_ecn: 0,
        dont_frag: true,
        ident: 1,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut ip[..]))
    .unwrap();
    wire::UdpRepr {
        src_port: 40000,
        dst_port: 53,
        payload_len,
    }
    .emit(&mut UdpPacket::new_unchecked(&mut ip[20..]))
    .unwrap();
    for (i, b) in ip[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    len
}

/// A packet the peer would send to us: 10.2.0.5 → 10.1.0.9.
pub fn peer_packet(buf: &mut [u8], payload_len: usize) -> usize {
    inner_packet(
        buf,
        Ipv4Addr::new(10, 2, 0, 5),
        Ipv4Addr::new(10, 1, 0, 9),
        payload_len,
    )
}

/// Builds an ESP packet around an arbitrary plaintext (payload, padding and trailer as
/// given, only extended with zeros to the cipher's alignment) with the keys of
/// [`params`], bypassing [`OutboundSa`]'s padding rules: the way to reach the checks that
/// follow the ICV with hostile contents. Returns the packet length written to `out`.
pub fn seal_raw(
    encr: Encr,
    integ: Option<Integ>,
    seq: u32,
    plaintext: &[u8],
    out: &mut [u8],
) -> usize {
    let p = params(encr, integ, false);
    let cipher = Cipher::new(encr, p.enc_key.expose()).unwrap();
    let align = encr.block_len().max(4);
    let ct_len = plaintext.len().div_ceil(align).max(1) * align;
    let iv_len = encr.iv_len();
    let icv_len = integ.map_or(encr.icv_len(), |i| i.icv_len());
    let total = 8 + iv_len + ct_len + icv_len;
    let out = &mut out[..total];
    out.fill(0);
    out[..4].copy_from_slice(&p.spi.to_be_bytes());
    out[4..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in out[8..8 + iv_len].iter_mut().enumerate() {
        *b = 0xa0 + i as u8;
    }
    out[8 + iv_len..8 + iv_len + plaintext.len()].copy_from_slice(plaintext);
    let (head, rest) = out.split_at_mut(8 + iv_len);
    let (ct, icv) = rest.split_at_mut(ct_len);
    let (header, iv) = head.split_at(8);
    match integ {
        None => cipher.aead_seal(iv, header, ct, icv).unwrap(),
        Some(integ) => {
            cipher.cbc_encrypt(iv, ct).unwrap();
            Mac::new(integ, p.integ_key.expose())
                .unwrap()
                .compute(&[header, iv, ct], icv);
        }
    }
    total
}

/// Fuzz body for [`InboundSa::decapsulate`]. The first byte picks the suite and the mode:
///
/// - mode 0: the rest is an ESP packet as received (SPI forced to the SA's);
/// - mode 1: the rest is a plaintext sealed with the right keys ([`seal_raw`]), so every
///   check after the ICV sees hostile bytes;
/// - mode 2: the rest is an inner packet encapsulated by the peer's [`OutboundSa`], then
///   (if the second byte is non-zero) one byte of the ESP packet is flipped: an intact
///   packet must come back unchanged or be refused only for its inner contents, a flipped
///   one must be refused.
///
/// Panics only when an oracle fails; never for any input on its own. Returns what
/// `decapsulate` said, for tests that check which paths were reached.
pub fn decapsulate(data: &[u8]) -> Option<Result<Decapsulated, EspError>> {
    let (&first, rest) = data.split_first()?;
    let suites = suites();
    let (encr, integ) = suites[usize::from(first) % suites.len()];
    let (outbound, inbound) = sa_pair(encr, integ, false);
    let mut buf = [0u8; 2048];
    match (first / 32) % 3 {
        0 => {
            let len = rest.len().min(buf.len());
            buf[..len].copy_from_slice(&rest[..len]);
            if len >= 4 {
                buf[..4].copy_from_slice(&SPI.to_be_bytes());
            }
            let out = inbound.decapsulate(&mut buf[..len]);
            // Without the keys nothing authenticates.
            assert!(out.is_err(), "forged packet accepted: {out:?}");
            check_counted(&inbound, &out);
            Some(out)
        }
        1 => {
            let seq = rest.first().map_or(1, |&b| u32::from(b) + 1);
            let plaintext = rest.get(1..).unwrap_or_default();
            let plaintext = &plaintext[..plaintext.len().min(1400)];
            let len = seal_raw(encr, integ, seq, plaintext, &mut buf);
            let out = inbound.decapsulate(&mut buf[..len]);
            check_counted(&inbound, &out);
            if let Ok(Decapsulated::Packet { inner, .. }) = &out {
                let ip = Ipv4Packet::new_checked(&buf[inner.clone()]).unwrap();
                assert_eq!(usize::from(ip.total_len()), inner.len());
                assert!(inbound.selectors().allows_inbound(&Flow::of(&ip)));
            }
            Some(out)
        }
        _ => {
            let flip = rest.first().copied().unwrap_or(0);
            let inner = rest.get(1..).unwrap_or_default();
            let inner = &inner[..inner.len().min(1400)];
            let headroom = HEADROOM_MAX;
            buf[headroom..headroom + inner.len()].copy_from_slice(inner);
            let sent = outbound
                .encapsulate(&mut buf, headroom, inner.len())
                .unwrap();
            let esp = &mut buf[sent.range.clone()];
            if flip != 0 {
                let at = usize::from(flip) % esp.len();
                esp[at] ^= flip;
            }
            let out = inbound.decapsulate(esp);
            check_counted(&inbound, &out);
            match (&out, flip) {
                (Ok(Decapsulated::Packet { inner: got, .. }), 0) => {
                    assert_eq!(&esp[got.clone()], &inner[..got.len()]);
                }
                (Ok(other), _) => panic!("tampered or dummy packet accepted: {other:?}"),
                (Err(e), 0) => assert!(
                    matches!(e, EspError::InnerMalformed(_) | EspError::SelectorMismatch),
                    "intact packet refused: {e}"
                ),
                (Err(_), _) => {}
            }
            Some(out)
        }
    }
}

/// Fuzz body for the views: every `new_checked` that succeeds must let every accessor run.
pub fn views(data: &[u8]) {
    if let Ok(p) = EspPacket::new_checked(data) {
        let _ = (p.spi(), p.seq(), p.payload().len());
    }
    if let Ok(t) = EspTrailer::new_checked(data) {
        let _ = (
            t.pad_len(),
            t.next_header(),
            t.data().len(),
            t.padding_is_valid(),
        );
        assert_eq!(t.data_len() + t.padding().len() + 2, data.len());
    }
    if let Ok(ip) = Ipv4Packet::new_checked(data) {
        let _ = (
            ip.version(),
            ip.dscp_ecn(),
            ip.ident(),
            ip.dont_frag(),
            ip.more_frags(),
            ip.frag_offset(),
            ip.ttl(),
            ip.checksum(),
            ip.verify_checksum(),
            ip.src_addr(),
            ip.dst_addr(),
        );
        assert_eq!(
            ip.payload().len() + ip.header_len(),
            usize::from(ip.total_len())
        );
        let flow = Flow::of(&ip);
        let _ = Selectors::any().allows_inbound(&flow) && selectors().allows_outbound(&flow);
    }
    if let Ok(udp) = UdpPacket::new_checked(data) {
        let _ = (
            udp.src_port(),
            udp.dst_port(),
            udp.checksum(),
            udp.is_empty(),
        );
        assert_eq!(udp.payload().len() + 8, usize::from(udp.len()));
        let _ = classify_udp4500(udp.payload());
    }
    let _ = classify_udp4500(data);
    let _ = wire::checksum(data);
    if let Ok(outer) = wire::parse_outer(data) {
        // Every range it returns lies inside the buffer.
        match outer.payload {
            wire::OuterPayload::Esp(r) | wire::OuterPayload::Ike(r) => {
                assert!(data.get(r).is_some());
            }
            wire::OuterPayload::Keepalive => {}
        }
    }
}

/// Exactly one counter moved for the one packet just processed.
fn check_counted(sa: &InboundSa, out: &Result<Decapsulated, EspError>) {
    let s = sa.stats();
    let total = s.packets
        + s.dummy
        + s.auth_failed
        + s.replay
        + s.bad_padding
        + s.selector_mismatch
        + s.malformed
        + s.expired;
    assert_eq!(total, 1, "{out:?} counted as {s:?}");
}

/// A buffer big enough for any inner packet up to `inner_len` plus the worst-case
/// overhead, with the inner packet at [`HEADROOM_MAX`].
pub fn buffer_for(inner_len: usize) -> Vec<u8> {
    vec![0u8; HEADROOM_MAX + inner_len + TAILROOM_MAX]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs: pure noise of many lengths, and mutations (bit flips, truncations,
    /// insertions) of valid packets, run through the same bodies as the fuzz targets.
    #[test]
    fn fuzz_bodies_over_pseudo_random_inputs() {
        let mut rng = TestRandom(0x5eed);
        let mut data = vec![0u8; 1600];
        for round in 0..4000u32 {
            let len = (rng.next_u64() % 1600) as usize;
            rng.fill(&mut data[..len]);
            let input = &mut data[..len];
            if round % 4 == 1 && len > 40 {
                // A plausible IPv4 header to get past check_len more often.
                input[0] = 0x45;
                let total = len as u16 - 1 - (round % 7) as u16;
                input[2..4].copy_from_slice(&total.to_be_bytes());
                input[6] = 0;
                input[7] = 0;
            }
            views(input);
            decapsulate(input);
        }
    }

    #[test]
    fn fuzz_bodies_over_mutated_valid_packets() {
        let mut rng = TestRandom(0xfeed);
        let mut inner = [0u8; 600];
        let mut seen = [0u32; 5];
        for round in 0..2000u32 {
            let payload = (rng.next_u64() % 560) as usize;
            let len = peer_packet(&mut inner, payload);
            let suite = (round % 27) as u8;
            // Mode 2 intact and flipped; mode 1 with a valid inner packet and trailer.
            let flip = if round % 3 == 0 {
                0
            } else {
                (rng.next_u64() % 255 + 1) as u8
            };
            let mut input = vec![suite + 64, flip];
            input.extend_from_slice(&inner[..len]);
            tally(&mut seen, decapsulate(&input));
            let mut plain = vec![suite + 32, (round % 200) as u8];
            plain.extend_from_slice(&inner[..len]);
            // Whole AES blocks, so seal_raw appends nothing after the trailer.
            let pad = crate::wire::esp::pad_len_for(len, 16) + 16 * (round as usize % 2);
            plain.extend((1..=pad as u8).map(|b| if round % 5 == 0 { b ^ 1 } else { b }));
            plain.push(pad as u8);
            plain.push(if round % 7 == 0 { 59 } else { 4 });
            tally(&mut seen, decapsulate(&plain));
            views(&plain);
        }
        // Every outcome class was reached, so the oracles above were exercised.
        assert!(seen.iter().all(|&n| n > 0), "outcomes seen: {seen:?}");
    }

    /// [packet, dummy, auth failed, bad padding, other error]
    fn tally(seen: &mut [u32; 5], out: Option<Result<Decapsulated, EspError>>) {
        let slot = match out {
            Some(Ok(Decapsulated::Packet { .. })) => 0,
            Some(Ok(Decapsulated::Dummy)) => 1,
            Some(Err(EspError::AuthFailed)) => 2,
            Some(Err(EspError::BadPadding)) => 3,
            _ => 4,
        };
        seen[slot] += 1;
    }
}
