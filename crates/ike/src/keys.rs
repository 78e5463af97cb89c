//! Key derivation (RFC 7296 §2.13–§2.18) and the PSK AUTH value (§2.15).

use std::fmt;

use crypto::{Encr, Integ, Prf};
use sha1::{Digest, Sha1};
use zeroize::Zeroizing;

/// Secret bytes whose `Debug` never shows them.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Key(pub Zeroizing<Vec<u8>>);

impl Key {
    pub fn from_slice(b: &[u8]) -> Self {
        Self(Zeroizing::new(b.to_vec()))
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<{} bytes redacted>)", self.0.len())
    }
}

/// The keys of an IKE SA (RFC 7296 §2.14).
#[derive(Debug, Clone)]
pub struct IkeKeys {
    pub sk_d: Key,
    pub sk_ai: Key,
    pub sk_ar: Key,
    pub sk_ei: Key,
    pub sk_er: Key,
    pub sk_pi: Key,
    pub sk_pr: Key,
}

/// Algorithms fixed for an IKE SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IkeSuite {
    pub encr: Encr,
    pub integ: Option<Integ>,
    pub prf: Prf,
}

impl IkeKeys {
    /// `SKEYSEED = prf(Ni | Nr, g^ir)` for a new IKE SA, or, when rekeying,
    /// `SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)` (RFC 7296 §2.18), then
    /// `{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)`.
    pub fn derive(
        suite: IkeSuite,
        old_sk_d: Option<(Prf, &[u8])>,
        shared: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
    ) -> Self {
        let skeyseed = Zeroizing::new(match old_sk_d {
            None => suite.prf.compute(&[ni, nr].concat(), &[shared]),
            Some((old_prf, sk_d)) => old_prf.compute(sk_d, &[shared, ni, nr]),
        });
        let prf_len = suite.prf.key_len();
        let integ_len = suite.integ.map_or(0, Integ::key_len);
        let encr_len = suite.encr.key_len();
        let total = 3 * prf_len + 2 * integ_len + 2 * encr_len;
        let seed = [ni, nr, &spi_i.to_be_bytes(), &spi_r.to_be_bytes()].concat();
        let km = suite.prf.prf_plus(&skeyseed, &seed, total);
        let mut at = 0;
        let mut next = |n: usize| {
            let k = Key::from_slice(km.get(at..at + n).unwrap_or_default());
            at += n;
            k
        };
        Self {
            sk_d: next(prf_len),
            sk_ai: next(integ_len),
            sk_ar: next(integ_len),
            sk_ei: next(encr_len),
            sk_er: next(encr_len),
            sk_pi: next(prf_len),
            sk_pr: next(prf_len),
        }
    }
}

/// Child SA keys split per RFC 7296 §2.17: the exchange initiator's outbound
/// (initiator→responder) encryption then integrity key, then the other direction.
#[derive(Debug, Clone)]
pub struct ChildKeys {
    pub encr_i: Key,
    pub integ_i: Key,
    pub encr_r: Key,
    pub integ_r: Key,
}

impl ChildKeys {
    /// `KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr)`.
    pub fn derive(
        prf: Prf,
        sk_d: &[u8],
        encr: Encr,
        integ: Option<Integ>,
        shared: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
    ) -> Self {
        let e = encr.key_len();
        let i = integ.map_or(0, Integ::key_len);
        let seed = [shared.unwrap_or_default(), ni, nr].concat();
        let km = prf.prf_plus(sk_d, &seed, 2 * (e + i));
        let part = |a: usize, n: usize| Key::from_slice(km.get(a..a + n).unwrap_or_default());
        Self {
            encr_i: part(0, e),
            integ_i: part(e, i),
            encr_r: part(e + i, e),
            integ_r: part(2 * e + i, i),
        }
    }
}

/// `AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)` where
/// `SignedOctets = RealMessage | Nonce | prf(SK_p, RestOfIDPayload)` (RFC 7296 §2.15).
pub fn psk_auth(
    prf: Prf,
    psk: &[u8],
    sk_p: &[u8],
    real_message: &[u8],
    nonce: &[u8],
    id_body: &[u8],
) -> Vec<u8> {
    let maced_id = prf.compute(sk_p, &[id_body]);
    let key = Zeroizing::new(prf.compute(psk, &[b"Key Pad for IKEv2"]));
    prf.compute(&key, &[real_message, nonce, &maced_id])
}

/// NAT_DETECTION_*_IP data: `SHA-1(SPIi | SPIr | IP | Port)` (RFC 7296 §2.23).
pub fn nat_hash(spi_i: u64, spi_r: u64, addr: std::net::SocketAddr) -> Vec<u8> {
    let mut h = Sha1::new();
    h.update(spi_i.to_be_bytes());
    h.update(spi_r.to_be_bytes());
    match addr.ip() {
        std::net::IpAddr::V4(a) => h.update(a.octets()),
        std::net::IpAddr::V6(a) => h.update(a.octets()),
    }
    h.update(addr.port().to_be_bytes());
    h.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_debug_is_redacted() {
        let k = Key::from_slice(&[0x41; 16]);
        let s = format!("{k:?}");
        assert_eq!(s, "Key(<16 bytes redacted>)");
        let keys = ChildKeys::derive(
            Prf::HmacSha1,
            &[1; 20],
            Encr::AesCbc128,
            Some(Integ::HmacSha1_96),
            None,
            &[2; 16],
            &[3; 16],
        );
        let s = format!("{keys:?}");
        assert!(!s.contains("0x") && !s.contains("65,"), "{s}");
    }

    #[test]
    fn ike_key_lengths_and_split() {
        let suite = IkeSuite {
            encr: Encr::AesCbc256,
            integ: Some(Integ::HmacSha256_128),
            prf: Prf::HmacSha256,
        };
        let k = IkeKeys::derive(suite, None, &[9; 128], &[1; 32], &[2; 32], 1, 2);
        assert_eq!(k.sk_d.as_slice().len(), 32);
        assert_eq!(k.sk_ai.as_slice().len(), 32);
        assert_eq!(k.sk_ei.as_slice().len(), 32);
        assert_eq!(k.sk_pr.as_slice().len(), 32);
        // The split follows prf+ output order.
        let seed = [
            &[1u8; 32][..],
            &[2; 32],
            &1u64.to_be_bytes(),
            &2u64.to_be_bytes(),
        ]
        .concat();
        let skeyseed = Prf::HmacSha256.compute(&[[1u8; 32], [2; 32]].concat(), &[&[9; 128]]);
        let km = Prf::HmacSha256.prf_plus(&skeyseed, &seed, 32 * 7);
        assert_eq!(k.sk_d.as_slice(), &km[..32]);
        assert_eq!(k.sk_er.as_slice(), &km[32 * 4..32 * 5]);
        assert_eq!(k.sk_pr.as_slice(), &km[32 * 6..]);
        let gcm = IkeSuite {
            encr: Encr::AesGcm16_128,
            integ: None,
            prf: Prf::HmacSha1,
        };
        let k = IkeKeys::derive(gcm, None, &[9; 128], &[1; 32], &[2; 32], 1, 2);
        assert!(k.sk_ai.as_slice().is_empty());
        assert_eq!(k.sk_ei.as_slice().len(), 20);
    }

    #[test]
    fn nat_hash_is_sha1_of_fields() {
        let h = nat_hash(1, 0, "192.0.2.1:500".parse().unwrap());
        let mut d = Sha1::new();
        d.update([
            0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 192, 0, 2, 1, 1, 0xf4,
        ]);
        assert_eq!(h, d.finalize().to_vec());
    }
}
