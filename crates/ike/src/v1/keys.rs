//! IKEv1 keying (RFC 2409 §5, §5.5, Appendix B) and CBC protection of ISAKMP
//! messages, plus the algorithm numbers of phase 1 (RFC 2409 Appendix A) and of the
//! IPsec DOI (RFC 2407 §4.4.4, §4.5).
//!
//! IKEv1 with pre-shared keys negotiates no PRF: the PRF is HMAC with the negotiated
//! hash (RFC 2409 §4), which is what the product's "integrity" knob names. Plain
//! hashes (no key) are needed for the IVs and for NAT-D.

use std::fmt;
use std::net::SocketAddr;

use crypto::{Cipher, Encr, Integ, Prf};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};
use zeroize::Zeroizing;

use crate::config::prf_for;
use crate::keys::Key;
use crate::v1::wire::p1;

// ---- algorithm numbers ---------------------------------------------------------------

/// Phase 1 hash algorithm attribute value (RFC 2409 Appendix A, RFC 4868 §4).
pub fn p1_hash_id(i: Integ) -> u16 {
    match i {
        Integ::HmacMd5_96 => 1,
        Integ::HmacSha1_96 => 2,
        Integ::HmacSha256_128 => 4,
        Integ::HmacSha384_192 => 5,
        Integ::HmacSha512_256 => 6,
    }
}

pub fn integ_from_p1_hash(v: u16) -> Option<Integ> {
    Integ::ALL.into_iter().find(|i| p1_hash_id(*i) == v)
}

/// IPsec DOI authentication algorithm (RFC 2407 §4.5, RFC 4868 §4).
pub fn esp_auth_id(i: Integ) -> u16 {
    match i {
        Integ::HmacMd5_96 => 1,
        Integ::HmacSha1_96 => 2,
        Integ::HmacSha256_128 => 5,
        Integ::HmacSha384_192 => 6,
        Integ::HmacSha512_256 => 7,
    }
}

pub fn integ_from_esp_auth(v: u16) -> Option<Integ> {
    Integ::ALL.into_iter().find(|i| esp_auth_id(*i) == v)
}

/// Phase 1 encryption algorithm attribute and key length; `None` for ciphers IKEv1's
/// phase 1 cannot use (AEAD: RFC 2409 protects messages with CBC only).
pub fn p1_encr(e: Encr) -> Option<(u16, Option<u16>)> {
    match e {
        Encr::Des => Some((p1::ENC_DES, None)),
        Encr::TripleDes => Some((p1::ENC_3DES, None)),
        Encr::AesCbc128 | Encr::AesCbc192 | Encr::AesCbc256 => Some((p1::ENC_AES, e.key_bits())),
        Encr::AesGcm16_128 | Encr::AesGcm16_256 => None,
    }
}

pub fn encr_from_p1(alg: u16, key_bits: Option<u16>) -> Option<Encr> {
    match (alg, key_bits) {
        (p1::ENC_DES, None) => Some(Encr::Des),
        (p1::ENC_3DES, None) => Some(Encr::TripleDes),
        (p1::ENC_AES, Some(128)) => Some(Encr::AesCbc128),
        (p1::ENC_AES, Some(192)) => Some(Encr::AesCbc192),
        (p1::ENC_AES, Some(256)) => Some(Encr::AesCbc256),
        _ => None,
    }
}

// ---- hashes ---------------------------------------------------------------------------

/// The negotiated hash over `parts`, unkeyed (IVs, NAT-D).
pub fn digest(i: Integ, parts: &[&[u8]]) -> Vec<u8> {
    fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
        let mut d = D::new();
        for p in parts {
            d.update(p);
        }
        d.finalize().to_vec()
    }
    match i {
        Integ::HmacMd5_96 => run::<Md5>(parts),
        Integ::HmacSha1_96 => run::<Sha1>(parts),
        Integ::HmacSha256_128 => run::<Sha256>(parts),
        Integ::HmacSha384_192 => run::<Sha384>(parts),
        Integ::HmacSha512_256 => run::<Sha512>(parts),
    }
}

/// NAT-D data: `HASH(CKY-I | CKY-R | IP | Port)` with the negotiated hash (RFC 3947 §3.2).
pub fn nat_d(i: Integ, cky_i: u64, cky_r: u64, addr: SocketAddr) -> Vec<u8> {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    digest(
        i,
        &[
            &cky_i.to_be_bytes(),
            &cky_r.to_be_bytes(),
            &ip,
            &addr.port().to_be_bytes(),
        ],
    )
}

/// The phase 1 IV: `hash(g^xi | g^xr)` cut to the block size (RFC 2409 Appendix B).
pub fn phase1_iv(i: Integ, gxi: &[u8], gxr: &[u8], block: usize) -> Vec<u8> {
    let mut h = digest(i, &[gxi, gxr]);
    h.truncate(block);
    h
}

/// The IV of a quick mode or informational exchange: `hash(last phase 1 CBC block |
/// M-ID)` cut to the block size (RFC 2409 Appendix B).
pub fn phase2_iv(i: Integ, phase1_last: &[u8], mid: u32, block: usize) -> Vec<u8> {
    let mut h = digest(i, &[phase1_last, &mid.to_be_bytes()]);
    h.truncate(block);
    h
}

// ---- phase 1 keys ---------------------------------------------------------------------

/// The keys of an ISAKMP SA (RFC 2409 §5). `Debug` shows none of them.
#[derive(Clone)]
pub struct P1Keys {
    pub prf: Prf,
    pub skeyid: Key,
    pub skeyid_d: Key,
    pub skeyid_a: Key,
    pub skeyid_e: Key,
    /// The cipher key taken from SKEYID_e, expanded when too short (Appendix B).
    pub enc_key: Key,
}

impl fmt::Debug for P1Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("P1Keys")
            .field("prf", &self.prf)
            .finish_non_exhaustive()
    }
}

impl P1Keys {
    /// For pre-shared keys: `SKEYID = prf(pre-shared-key, Ni_b | Nr_b)`, then
    /// `SKEYID_d = prf(SKEYID, g^xy | CKY-I | CKY-R | 0)`,
    /// `SKEYID_a = prf(SKEYID, SKEYID_d | g^xy | CKY-I | CKY-R | 1)`,
    /// `SKEYID_e = prf(SKEYID, SKEYID_a | g^xy | CKY-I | CKY-R | 2)` (RFC 2409 §5).
    #[allow(clippy::too_many_arguments)]
    pub fn derive(
        integ: Integ,
        encr: Encr,
        psk: &[u8],
        ni: &[u8],
        nr: &[u8],
        gxy: &[u8],
        cky_i: u64,
        cky_r: u64,
    ) -> Self {
        let prf = prf_for(integ);
        let (ci, cr) = (cky_i.to_be_bytes(), cky_r.to_be_bytes());
        let skeyid = Zeroizing::new(prf.compute(psk, &[ni, nr]));
        let d = Zeroizing::new(prf.compute(&skeyid, &[gxy, &ci, &cr, &[0]]));
        let a = Zeroizing::new(prf.compute(&skeyid, &[&d, gxy, &ci, &cr, &[1]]));
        let e = Zeroizing::new(prf.compute(&skeyid, &[&a, gxy, &ci, &cr, &[2]]));
        let enc_key = expand_p1_key(prf, &e, encr.key_len());
        Self {
            prf,
            skeyid: Key::from_slice(&skeyid),
            skeyid_d: Key::from_slice(&d),
            skeyid_a: Key::from_slice(&a),
            skeyid_e: Key::from_slice(&e),
            enc_key,
        }
    }

    /// `HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b)`; with the
    /// responder's values first it is `HASH_R` (RFC 2409 §5).
    pub fn auth_hash(
        &self,
        g_own: &[u8],
        g_other: &[u8],
        cky_own: u64,
        cky_other: u64,
        sai_b: &[u8],
        id_b: &[u8],
    ) -> Vec<u8> {
        self.prf.compute(
            self.skeyid.as_slice(),
            &[
                g_own,
                g_other,
                &cky_own.to_be_bytes(),
                &cky_other.to_be_bytes(),
                sai_b,
                id_b,
            ],
        )
    }

    /// `prf(SKEYID_a, parts…)`: the HASH payloads of quick mode and informational
    /// exchanges (RFC 2409 §5.5, §5.7).
    pub fn hash_a(&self, parts: &[&[u8]]) -> Vec<u8> {
        self.prf.compute(self.skeyid_a.as_slice(), parts)
    }

    /// Quick mode KEYMAT for one direction (RFC 2409 §5.5): `prf(SKEYID_d, [g(qm)^xy |]
    /// protocol | SPI | Ni_b | Nr_b)`, expanded as `K1 | K2 | …` with
    /// `Kn+1 = prf(SKEYID_d, Kn | [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b)`.
    pub fn keymat(
        &self,
        gxy: Option<&[u8]>,
        protocol: u8,
        spi: u32,
        ni: &[u8],
        nr: &[u8],
        len: usize,
    ) -> Zeroizing<Vec<u8>> {
        let g = gxy.unwrap_or_default();
        let spi = spi.to_be_bytes();
        let mut out = Zeroizing::new(Vec::with_capacity(len + 64));
        let mut last: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
        while out.len() < len {
            let k = Zeroizing::new(self.prf.compute(
                self.skeyid_d.as_slice(),
                &[&last, g, &[protocol], &spi, ni, nr],
            ));
            out.extend_from_slice(&k);
            last = k;
        }
        out.truncate(len);
        out
    }
}

/// RFC 2409 Appendix B: a cipher key longer than SKEYID_e is `K1 | K2 | …` with
/// `K1 = prf(SKEYID_e, 0)` and `Kn+1 = prf(SKEYID_e, Kn)`; otherwise its first bytes.
fn expand_p1_key(prf: Prf, skeyid_e: &[u8], len: usize) -> Key {
    if skeyid_e.len() >= len {
        return Key::from_slice(skeyid_e.get(..len).unwrap_or_default());
    }
    let mut out = Zeroizing::new(Vec::with_capacity(len + 64));
    let mut k = Zeroizing::new(prf.compute(skeyid_e, &[&[0]]));
    while out.len() < len {
        out.extend_from_slice(&k);
        k = Zeroizing::new(prf.compute(skeyid_e, &[&k]));
    }
    Key::from_slice(out.get(..len).unwrap_or_default())
}

// ---- CBC protection -------------------------------------------------------------------

/// Encrypts a payload chain for the body of an ISAKMP message: zero padding up to
/// the block size (RFC 2408 §3.1: the message length includes the padding; the
/// receiver stops at the chain's last payload), CBC with `iv`. Returns the
/// ciphertext; its last block is the next IV of this exchange (RFC 2409 Appendix B).
pub fn cbc_seal(cipher: &Cipher, iv: &[u8], mut plain: Vec<u8>) -> Vec<u8> {
    let block = cipher.encr().block_len().max(1);
    let pad = (block - plain.len() % block) % block;
    plain.resize(plain.len() + pad, 0);
    if plain.is_empty() {
        plain.resize(block, 0);
    }
    // Cannot fail: the length is a multiple of the block and the IV is ours.
    let _ = cipher.cbc_encrypt(iv, &mut plain);
    plain
}

/// Decrypts an encrypted ISAKMP body with `iv`; `None` if its length is not a
/// positive multiple of the block size.
pub fn cbc_open(cipher: &Cipher, iv: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
    let block = cipher.encr().block_len().max(1);
    if ct.is_empty() || !ct.len().is_multiple_of(block) || iv.len() != block {
        return None;
    }
    let mut buf = ct.to_vec();
    cipher.cbc_decrypt(iv, &mut buf).ok()?;
    Some(buf)
}

/// The last cipher block of a body: the IV for the next message of the exchange.
pub fn last_block(ct: &[u8], block: usize) -> Vec<u8> {
    ct.get(ct.len().saturating_sub(block)..)
        .unwrap_or_default()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn digests_are_the_standard_ones() {
        // FIPS 180 / RFC 1321 "abc" vectors.
        assert_eq!(
            digest(Integ::HmacMd5_96, &[b"a", b"bc"]),
            hex("900150983cd24fb0d6963f7d28e17f72")
        );
        assert_eq!(
            digest(Integ::HmacSha1_96, &[b"abc"]),
            hex("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
        assert_eq!(
            digest(Integ::HmacSha256_128, &[b"abc"]),
            hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(digest(Integ::HmacSha384_192, &[b"abc"]).len(), 48);
        assert_eq!(digest(Integ::HmacSha512_256, &[b"abc"]).len(), 64);
        // The RFC 3947 vendor ID is MD5("RFC 3947").
        assert_eq!(
            digest(Integ::HmacMd5_96, &[b"RFC 3947"]),
            crate::v1::wire::vid::NAT_T_RFC3947
        );
        assert_eq!(
            digest(Integ::HmacMd5_96, &[b"draft-ietf-ipsec-nat-t-ike-02\n"]),
            crate::v1::wire::vid::NAT_T_DRAFT_02N
        );
        assert_eq!(
            digest(Integ::HmacMd5_96, &[b"strongSwan"]),
            crate::v1::wire::vid::STRONGSWAN
        );
    }

    #[test]
    fn skeyid_chain_follows_rfc2409() {
        let k = P1Keys::derive(
            Integ::HmacSha1_96,
            Encr::AesCbc128,
            b"secret",
            &[1; 16],
            &[2; 16],
            &[3; 128],
            7,
            8,
        );
        let prf = Prf::HmacSha1;
        let skeyid = prf.compute(b"secret", &[&[1; 16], &[2; 16]]);
        assert_eq!(k.skeyid.as_slice(), skeyid);
        let (ci, cr) = (7u64.to_be_bytes(), 8u64.to_be_bytes());
        let d = prf.compute(&skeyid, &[&[3; 128], &ci, &cr, &[0]]);
        let a = prf.compute(&skeyid, &[&d, &[3; 128], &ci, &cr, &[1]]);
        let e = prf.compute(&skeyid, &[&a, &[3; 128], &ci, &cr, &[2]]);
        assert_eq!(k.skeyid_d.as_slice(), d);
        assert_eq!(k.skeyid_a.as_slice(), a);
        assert_eq!(k.skeyid_e.as_slice(), e);
        // AES-128 needs 16 of SHA-1's 20 bytes: no expansion.
        assert_eq!(k.enc_key.as_slice(), &e[..16]);
    }

    #[test]
    fn long_cipher_keys_are_expanded() {
        // 3DES (24 bytes) with SHA-1 (20) and AES-256 with MD5 (16) need Appendix B.
        for (integ, encr) in [
            (Integ::HmacSha1_96, Encr::TripleDes),
            (Integ::HmacMd5_96, Encr::AesCbc256),
            (Integ::HmacSha1_96, Encr::AesCbc256),
        ] {
            let k = P1Keys::derive(integ, encr, b"x", &[1; 8], &[2; 8], &[3; 96], 1, 2);
            let prf = prf_for(integ);
            let e = k.skeyid_e.as_slice();
            let k1 = prf.compute(e, &[&[0]]);
            let k2 = prf.compute(e, &[&k1]);
            let want = [k1, k2].concat();
            assert_eq!(k.enc_key.as_slice(), &want[..encr.key_len()], "{encr:?}");
        }
        // SHA-256 covers AES-256 directly.
        let k = P1Keys::derive(
            Integ::HmacSha256_128,
            Encr::AesCbc256,
            b"x",
            &[1; 8],
            &[2; 8],
            &[3; 96],
            1,
            2,
        );
        assert_eq!(k.enc_key.as_slice(), k.skeyid_e.as_slice());
    }

    #[test]
    fn keymat_expansion() {
        let k = P1Keys::derive(
            Integ::HmacMd5_96,
            Encr::Des,
            b"x",
            &[1; 8],
            &[2; 8],
            &[3; 96],
            1,
            2,
        );
        let m = k.keymat(Some(&[9; 4]), 3, 0x1234_5678, &[5; 16], &[6; 16], 40);
        let d = k.skeyid_d.as_slice();
        let spi = 0x1234_5678u32.to_be_bytes();
        let k1 = Prf::HmacMd5.compute(d, &[&[9; 4], &[3], &spi, &[5; 16], &[6; 16]]);
        let k2 = Prf::HmacMd5.compute(d, &[&k1, &[9; 4], &[3], &spi, &[5; 16], &[6; 16]]);
        let k3 = Prf::HmacMd5.compute(d, &[&k2, &[9; 4], &[3], &spi, &[5; 16], &[6; 16]]);
        assert_eq!(&m[..], &[k1, k2, k3].concat()[..40]);
    }

    #[test]
    fn debug_is_redacted() {
        let k = P1Keys::derive(
            Integ::HmacSha1_96,
            Encr::AesCbc128,
            b"hunter2",
            &[1; 8],
            &[2; 8],
            &[0x41; 96],
            1,
            2,
        );
        let s = format!("{k:?}");
        assert!(
            !s.contains("hunter2") && !s.contains("65") && !s.contains("skeyid"),
            "{s}"
        );
    }

    #[test]
    fn cbc_round_trip_and_iv_chaining() {
        let c = Cipher::new(Encr::AesCbc128, &[7; 16]).unwrap();
        let iv = [1u8; 16];
        let ct = cbc_seal(&c, &iv, vec![9; 20]);
        assert_eq!(ct.len(), 32);
        let pt = cbc_open(&c, &iv, &ct).unwrap();
        assert_eq!(&pt[..20], &[9; 20]);
        assert_eq!(&pt[20..], &[0; 12]);
        assert_eq!(last_block(&ct, 16), &ct[16..]);
        assert!(cbc_open(&c, &iv, &ct[..31]).is_none());
        assert!(cbc_open(&c, &iv, &[]).is_none());
        assert!(cbc_open(&c, &iv[..8], &ct).is_none());
    }

    #[test]
    fn algorithm_numbers() {
        for i in Integ::ALL {
            assert_eq!(integ_from_p1_hash(p1_hash_id(i)), Some(i));
            assert_eq!(integ_from_esp_auth(esp_auth_id(i)), Some(i));
        }
        for e in Encr::ALL {
            match p1_encr(e) {
                Some((a, k)) => assert_eq!(encr_from_p1(a, k), Some(e)),
                None => assert!(e.is_aead()),
            }
        }
        assert_eq!(encr_from_p1(p1::ENC_AES, None), None);
        assert_eq!(encr_from_p1(p1::ENC_3DES, Some(192)), None);
    }
}
