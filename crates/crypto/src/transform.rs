//! IANA IKEv2 transform identifiers and the static properties of each
//! algorithm (RFC 7296 §3.3.2, IANA "IKEv2 Transform Attribute Types").

/// Encryption algorithms (transform type 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encr {
    Des,
    TripleDes,
    AesCbc128,
    AesCbc192,
    AesCbc256,
    /// AES-GCM with a 16-octet ICV (RFC 4106, RFC 5282).
    AesGcm16_128,
    AesGcm16_256,
}

impl Encr {
    pub const ALL: [Encr; 7] = [
        Encr::Des,
        Encr::TripleDes,
        Encr::AesCbc128,
        Encr::AesCbc192,
        Encr::AesCbc256,
        Encr::AesGcm16_128,
        Encr::AesGcm16_256,
    ];

    /// Transform ID: ENCR_DES = 2, ENCR_3DES = 3, ENCR_AES_CBC = 12,
    /// ENCR_AES_GCM_16 = 20.
    pub fn iana_id(self) -> u16 {
        match self {
            Encr::Des => 2,
            Encr::TripleDes => 3,
            Encr::AesCbc128 | Encr::AesCbc192 | Encr::AesCbc256 => 12,
            Encr::AesGcm16_128 | Encr::AesGcm16_256 => 20,
        }
    }

    /// The Key Length attribute (RFC 7296 §3.3.5): present for AES, which
    /// has variable key sizes, absent for the fixed-size DES ciphers. For GCM
    /// it counts the AES key only, not the salt (RFC 4106 §8.1).
    pub fn key_bits(self) -> Option<u16> {
        match self {
            Encr::Des | Encr::TripleDes => None,
            Encr::AesCbc128 | Encr::AesGcm16_128 => Some(128),
            Encr::AesCbc192 => Some(192),
            Encr::AesCbc256 | Encr::AesGcm16_256 => Some(256),
        }
    }

    /// The algorithm for a transform ID and Key Length attribute, if we
    /// implement it. RFC 7296 §3.3.5: fixed-length ciphers must not carry
    /// the attribute and variable-length ones must.
    pub fn from_iana(id: u16, key_bits: Option<u16>) -> Option<Self> {
        Some(match (id, key_bits) {
            (2, None) => Encr::Des,
            (3, None) => Encr::TripleDes,
            (12, Some(128)) => Encr::AesCbc128,
            (12, Some(192)) => Encr::AesCbc192,
            (12, Some(256)) => Encr::AesCbc256,
            (20, Some(128)) => Encr::AesGcm16_128,
            (20, Some(256)) => Encr::AesGcm16_256,
            _ => return None,
        })
    }

    /// Keying material length in bytes. For GCM this includes the 4-byte
    /// salt taken from the end of the keying material (RFC 4106 §8.1).
    pub fn key_len(self) -> usize {
        match self {
            Encr::Des => 8,
            Encr::TripleDes => 24,
            Encr::AesCbc128 => 16,
            Encr::AesCbc192 => 24,
            Encr::AesCbc256 => 32,
            Encr::AesGcm16_128 => 16 + 4,
            Encr::AesGcm16_256 => 32 + 4,
        }
    }

    /// The cipher block size for CBC; for GCM the 4-byte alignment that ESP
    /// padding must reach (RFC 4303 §2.4, RFC 4106 §3.2).
    pub fn block_len(self) -> usize {
        match self {
            Encr::Des | Encr::TripleDes => 8,
            Encr::AesCbc128 | Encr::AesCbc192 | Encr::AesCbc256 => 16,
            Encr::AesGcm16_128 | Encr::AesGcm16_256 => 4,
        }
    }

    /// Length of the explicit IV carried in each packet (RFC 3602 §3, RFC
    /// 4106 §3.1).
    pub fn iv_len(self) -> usize {
        match self {
            Encr::Des | Encr::TripleDes => 8,
            Encr::AesCbc128 | Encr::AesCbc192 | Encr::AesCbc256 => 16,
            Encr::AesGcm16_128 | Encr::AesGcm16_256 => 8,
        }
    }

    /// Length of the AEAD tag; 0 for ciphers that need a separate `Integ`.
    pub fn icv_len(self) -> usize {
        if self.is_aead() { 16 } else { 0 }
    }

    pub fn is_aead(self) -> bool {
        matches!(self, Encr::AesGcm16_128 | Encr::AesGcm16_256)
    }

    /// strongSwan's proposal keyword.
    pub fn name(self) -> &'static str {
        match self {
            Encr::Des => "des",
            Encr::TripleDes => "3des",
            Encr::AesCbc128 => "aes128",
            Encr::AesCbc192 => "aes192",
            Encr::AesCbc256 => "aes256",
            Encr::AesGcm16_128 => "aes128gcm16",
            Encr::AesGcm16_256 => "aes256gcm16",
        }
    }
}

/// Integrity algorithms (transform type 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Integ {
    HmacMd5_96,
    HmacSha1_96,
    HmacSha256_128,
    HmacSha384_192,
    HmacSha512_256,
}

impl Integ {
    pub const ALL: [Integ; 5] = [
        Integ::HmacMd5_96,
        Integ::HmacSha1_96,
        Integ::HmacSha256_128,
        Integ::HmacSha384_192,
        Integ::HmacSha512_256,
    ];

    pub fn iana_id(self) -> u16 {
        match self {
            Integ::HmacMd5_96 => 1,
            Integ::HmacSha1_96 => 2,
            Integ::HmacSha256_128 => 12,
            Integ::HmacSha384_192 => 13,
            Integ::HmacSha512_256 => 14,
        }
    }

    pub fn from_iana(id: u16) -> Option<Self> {
        Integ::ALL.into_iter().find(|i| i.iana_id() == id)
    }

    /// Key length in bytes: the hash output size (RFC 2403, RFC 2404 §3,
    /// RFC 4868 §2.1.1).
    pub fn key_len(self) -> usize {
        match self {
            Integ::HmacMd5_96 => 16,
            Integ::HmacSha1_96 => 20,
            Integ::HmacSha256_128 => 32,
            Integ::HmacSha384_192 => 48,
            Integ::HmacSha512_256 => 64,
        }
    }

    /// Truncated ICV length in bytes (RFC 2404 §2, RFC 4868 §2.3).
    pub fn icv_len(self) -> usize {
        match self {
            Integ::HmacMd5_96 | Integ::HmacSha1_96 => 12,
            Integ::HmacSha256_128 => 16,
            Integ::HmacSha384_192 => 24,
            Integ::HmacSha512_256 => 32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Integ::HmacMd5_96 => "md5",
            Integ::HmacSha1_96 => "sha1",
            Integ::HmacSha256_128 => "sha256",
            Integ::HmacSha384_192 => "sha384",
            Integ::HmacSha512_256 => "sha512",
        }
    }
}

/// Pseudo-random functions (transform type 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prf {
    HmacMd5,
    HmacSha1,
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl Prf {
    pub const ALL: [Prf; 5] = [
        Prf::HmacMd5,
        Prf::HmacSha1,
        Prf::HmacSha256,
        Prf::HmacSha384,
        Prf::HmacSha512,
    ];

    pub fn iana_id(self) -> u16 {
        match self {
            Prf::HmacMd5 => 1,
            Prf::HmacSha1 => 2,
            Prf::HmacSha256 => 5,
            Prf::HmacSha384 => 6,
            Prf::HmacSha512 => 7,
        }
    }

    pub fn from_iana(id: u16) -> Option<Self> {
        Prf::ALL.into_iter().find(|p| p.iana_id() == id)
    }

    /// Output length in bytes.
    pub fn out_len(self) -> usize {
        match self {
            Prf::HmacMd5 => 16,
            Prf::HmacSha1 => 20,
            Prf::HmacSha256 => 32,
            Prf::HmacSha384 => 48,
            Prf::HmacSha512 => 64,
        }
    }

    /// Preferred key length (SK_d, SK_pi, SK_pr): the output length
    /// (RFC 7296 §2.14, RFC 4868 §2.1.2).
    pub fn key_len(self) -> usize {
        self.out_len()
    }

    pub fn name(self) -> &'static str {
        match self {
            Prf::HmacMd5 => "prfmd5",
            Prf::HmacSha1 => "prfsha1",
            Prf::HmacSha256 => "prfsha256",
            Prf::HmacSha384 => "prfsha384",
            Prf::HmacSha512 => "prfsha512",
        }
    }
}

/// Diffie-Hellman groups (transform type 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// RFC 2409 §6.1, group 1.
    Modp768,
    /// RFC 2409 §6.2, group 2.
    Modp1024,
    /// RFC 3526 §2, group 5.
    Modp1536,
    /// RFC 3526 §3, group 14.
    Modp2048,
    /// RFC 5114 §2.3, group 24 (2048-bit prime, 256-bit prime-order subgroup).
    Modp2048s256,
    /// RFC 5903, group 19.
    Ecp256,
    /// RFC 5903, group 20.
    Ecp384,
    /// RFC 8031, group 31.
    Curve25519,
}

impl DhGroup {
    pub const ALL: [DhGroup; 8] = [
        DhGroup::Modp768,
        DhGroup::Modp1024,
        DhGroup::Modp1536,
        DhGroup::Modp2048,
        DhGroup::Modp2048s256,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Curve25519,
    ];

    pub fn iana_id(self) -> u16 {
        match self {
            DhGroup::Modp768 => 1,
            DhGroup::Modp1024 => 2,
            DhGroup::Modp1536 => 5,
            DhGroup::Modp2048 => 14,
            DhGroup::Modp2048s256 => 24,
            DhGroup::Ecp256 => 19,
            DhGroup::Ecp384 => 20,
            DhGroup::Curve25519 => 31,
        }
    }

    pub fn from_iana(id: u16) -> Option<Self> {
        DhGroup::ALL.into_iter().find(|g| g.iana_id() == id)
    }

    /// Length of the public value on the wire: the prime's length for MODP
    /// (RFC 7296 §3.4), x || y for ECP (RFC 5903 §7), 32 for Curve25519
    /// (RFC 8031 §2).
    pub fn public_len(self) -> usize {
        match self {
            DhGroup::Modp768 => 96,
            DhGroup::Modp1024 => 128,
            DhGroup::Modp1536 => 192,
            DhGroup::Modp2048 | DhGroup::Modp2048s256 => 256,
            DhGroup::Ecp256 => 64,
            DhGroup::Ecp384 => 96,
            DhGroup::Curve25519 => 32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Modp768 => "modp768",
            DhGroup::Modp1024 => "modp1024",
            DhGroup::Modp1536 => "modp1536",
            DhGroup::Modp2048 => "modp2048",
            DhGroup::Modp2048s256 => "modp2048s256",
            DhGroup::Ecp256 => "ecp256",
            DhGroup::Ecp384 => "ecp384",
            DhGroup::Curve25519 => "curve25519",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encr_iana_round_trip() {
        for e in Encr::ALL {
            assert_eq!(Encr::from_iana(e.iana_id(), e.key_bits()), Some(e), "{e:?}");
        }
        // RFC 7296 §3.3.5: AES needs the Key Length attribute, DES must not
        // have it; GCM-192 and unknown IDs are not ours.
        assert_eq!(Encr::from_iana(12, None), None);
        assert_eq!(Encr::from_iana(3, Some(192)), None);
        assert_eq!(Encr::from_iana(20, Some(192)), None);
        assert_eq!(Encr::from_iana(12, Some(100)), None);
        assert_eq!(Encr::from_iana(0, None), None);
    }

    #[test]
    fn encr_sizes() {
        // RFC 4106 §8.1: GCM key material carries a 4-byte salt.
        assert_eq!(Encr::AesGcm16_128.key_len(), 20);
        assert_eq!(Encr::AesGcm16_256.key_len(), 36);
        assert_eq!(Encr::AesCbc256.key_len(), 32);
        assert_eq!(Encr::TripleDes.key_len(), 24);
        assert_eq!(Encr::AesCbc128.iv_len(), 16);
        assert_eq!(Encr::AesGcm16_256.iv_len(), 8);
        assert_eq!(Encr::Des.block_len(), 8);
        assert_eq!(Encr::AesGcm16_128.block_len(), 4);
        assert_eq!(Encr::AesGcm16_128.icv_len(), 16);
        assert_eq!(Encr::AesCbc128.icv_len(), 0);
        assert!(Encr::AesGcm16_256.is_aead() && !Encr::AesCbc256.is_aead());
        assert_eq!(Encr::AesGcm16_256.name(), "aes256gcm16");
    }

    #[test]
    fn integ_prf_dh_iana_round_trip() {
        for i in Integ::ALL {
            assert_eq!(Integ::from_iana(i.iana_id()), Some(i));
        }
        for p in Prf::ALL {
            assert_eq!(Prf::from_iana(p.iana_id()), Some(p));
            assert_eq!(p.key_len(), p.out_len());
        }
        for g in DhGroup::ALL {
            assert_eq!(DhGroup::from_iana(g.iana_id()), Some(g));
        }
        assert_eq!(Integ::from_iana(0), None);
        assert_eq!(Prf::from_iana(3), None);
        assert_eq!(DhGroup::from_iana(21), None);
        assert_eq!(Integ::HmacSha256_128.icv_len(), 16);
        assert_eq!(Integ::HmacSha512_256.key_len(), 64);
        assert_eq!(Prf::HmacSha384.name(), "prfsha384");
        assert_eq!(DhGroup::Modp2048s256.iana_id(), 24);
        assert_eq!(DhGroup::Ecp384.public_len(), 96);
    }
}
