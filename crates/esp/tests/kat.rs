//! Known-answer tests: ESP packets derived independently of this crate by
//! `tests/kat_gen.py` (Python `cryptography`/OpenSSL, following RFC 4303, RFC 4106,
//! RFC 3602, RFC 2404 and RFC 4868 by hand), so the wire format cannot drift.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use crypto::{Encr, Integ};
use esp::fuzzing::{buffer_for, params, peer_packet, sa_pair};
use esp::{Decapsulated, HEADROOM_MAX, InboundSa};

/// AES-GCM-16 with a 128-bit key (key 01..10, salt 11..14), SPI c0ffee01, sequence
/// number 1, IV = the sequence number, inner IPv4/UDP packet with a 4-byte payload,
/// padded to a whole AES block as vpngw sends it (32 + 14 + 2 = 48 bytes).
const GCM128_SEQ1: &str = "c0ffee01000000010000000000000001907b19cdd0d0ed11da8d051f7436d178\
                           ceb87c04ab7bbc544e41f2e3eaf73f88fbca233eb55a15950c0c6949317de9ad\
                           98536f220d7949a0fe38d3cbf8ea70fa";

/// The same packet padded only to 4 bytes (32 + 2 + 2 = 36), as the Linux kernel and
/// strongSwan send it: vpngw must take both.
const GCM128_SEQ1_PAD4: &str = "c0ffee01000000010000000000000001907b19cdd0d0ed11da8d051f7436d178\
                                ceb87c04ab7bbc544e41f2e3eaf73f88fbca223e87f07e9c77d425b8d5988a2f\
                                3799c90d";

/// AES-128-CBC (key 01..10) with HMAC-SHA1-96 (key 80..93), sequence number 1, the IV
/// our sender derives from its seed (`TestRandom(7)`) and the sequence number.
const CBC128_SHA1_SEQ1: &str = "c0ffee01000000015c988066e225ea8763f9f2b0f10deec10eb501a8e66be73f\
                                c3770e87e1f8881462c310674abf994345c8f959293f3149f6453d1b6a594cd1\
                                393b9016fd695c8469e0f2233f7b79f23842edb6";

/// AES-256-CBC (key 01..20) with HMAC-SHA-512-256 (key 80..bf), sequence number 5, IV
/// f0..ff chosen by the "peer", inner packet with a 20-byte payload.
const CBC256_SHA512_SEQ5: &str = "c0ffee0100000005f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff35d978828547d27c\
                                  eb0d871e0d8a66a988ab456db977e6d39a30ea4d3420f16889cddc71cbac33dd\
                                  46e95a279d8c357d83f7dae881b192e3618da941d711be605be2b5537552b95d\
                                  e6e26c0bdc2d699e420d2732d66630e0715ab0aca4fc9a19";

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn expected_inner(payload: usize) -> Vec<u8> {
    let mut inner = vec![0u8; 28 + payload];
    peer_packet(&mut inner, payload);
    inner
}

fn encapsulated(encr: Encr, integ: Option<Integ>, payload: usize) -> Vec<u8> {
    let (out, _) = sa_pair(encr, integ, false);
    let mut buf = buffer_for(100);
    let len = peer_packet(&mut buf[HEADROOM_MAX..], payload);
    let sent = out.encapsulate(&mut buf, HEADROOM_MAX, len).unwrap();
    buf[sent.range].to_vec()
}

fn decapsulated(sa: &InboundSa, mut packet: Vec<u8>) -> Vec<u8> {
    match sa.decapsulate(&mut packet) {
        Ok(Decapsulated::Packet { inner, .. }) => packet[inner].to_vec(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn aes_gcm_128_encapsulation_matches_rfc_4106_construction() {
    assert_eq!(encapsulated(Encr::AesGcm16_128, None, 4), hex(GCM128_SEQ1));
    let sa = InboundSa::new(params(Encr::AesGcm16_128, None, false)).unwrap();
    assert_eq!(decapsulated(&sa, hex(GCM128_SEQ1)), expected_inner(4));
}

#[test]
fn aes_gcm_128_packet_padded_to_4_bytes_decapsulates() {
    let sa = InboundSa::new(params(Encr::AesGcm16_128, None, false)).unwrap();
    assert_eq!(decapsulated(&sa, hex(GCM128_SEQ1_PAD4)), expected_inner(4));
}

#[test]
fn aes_cbc_sha1_encapsulation_matches_rfc_3602_2404_construction() {
    let suite = (Encr::AesCbc128, Some(Integ::HmacSha1_96));
    assert_eq!(encapsulated(suite.0, suite.1, 4), hex(CBC128_SHA1_SEQ1));
    let sa = InboundSa::new(params(suite.0, suite.1, false)).unwrap();
    assert_eq!(decapsulated(&sa, hex(CBC128_SHA1_SEQ1)), expected_inner(4));
}

#[test]
fn aes_cbc_sha512_packet_from_a_peer_decapsulates() {
    let sa = InboundSa::new(params(Encr::AesCbc256, Some(Integ::HmacSha512_256), false)).unwrap();
    assert_eq!(
        decapsulated(&sa, hex(CBC256_SHA512_SEQ5)),
        expected_inner(20)
    );
    assert_eq!(sa.stats().highest_seq, 5);
}
