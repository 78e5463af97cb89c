//! Diffie-Hellman key exchange for IKE (RFC 7296 §2.14, §3.4): MODP groups,
//! NIST ECP groups (RFC 5903) and Curve25519 (RFC 8031).

use core::fmt;

use p256::elliptic_curve::sec1::ToEncodedPoint;
use zeroize::Zeroizing;

use crate::modp::ModpPrivate;
use crate::{DhGroup, Error, Random};

/// An ephemeral Diffie-Hellman private key with its public value.
///
/// `Clone` lets an IKE exchange hand a copy to a thread that computes the shared
/// secret while it keeps its own for the exchange; every copy wipes its key on drop.
#[derive(Clone)]
pub struct DhPrivate {
    group: DhGroup,
    key: Key,
    public: Vec<u8>,
}

// A key lives for one exchange, so the size spread does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Key {
    Modp(ModpPrivate),
    // SecretKey zeroizes its scalar on drop; NonZeroScalar alone does not.
    Ecp256(p256::SecretKey),
    Ecp384(p384::SecretKey),
    Curve25519(x25519_dalek::StaticSecret),
}

impl DhPrivate {
    /// Draws a fresh private key from `rng`.
    pub fn generate(group: DhGroup, rng: &mut dyn Random) -> Result<Self, Error> {
        let (key, public) = match group {
            DhGroup::Modp768
            | DhGroup::Modp1024
            | DhGroup::Modp1536
            | DhGroup::Modp2048
            | DhGroup::Modp2048s256 => {
                let (x, y) = ModpPrivate::generate(group, rng).ok_or(Error::Unsupported)?;
                (Key::Modp(x), y)
            }
            DhGroup::Ecp256 => {
                let d: p256::NonZeroScalar = loop {
                    let mut bytes = Zeroizing::new(p256::FieldBytes::default());
                    rng.fill(&mut bytes);
                    // Rejection sampling gives a uniform scalar in [1, n).
                    if let Some(d) = p256::NonZeroScalar::from_repr(*bytes).into() {
                        break d;
                    }
                };
                let secret = p256::SecretKey::from(d);
                let point = secret.public_key().to_encoded_point(false);
                (Key::Ecp256(secret), strip_sec1_tag(point.as_bytes()))
            }
            DhGroup::Ecp384 => {
                let d: p384::NonZeroScalar = loop {
                    let mut bytes = Zeroizing::new(p384::FieldBytes::default());
                    rng.fill(&mut bytes);
                    if let Some(d) = p384::NonZeroScalar::from_repr(*bytes).into() {
                        break d;
                    }
                };
                let secret = p384::SecretKey::from(d);
                let point = secret.public_key().to_encoded_point(false);
                (Key::Ecp384(secret), strip_sec1_tag(point.as_bytes()))
            }
            DhGroup::Curve25519 => {
                let mut bytes = Zeroizing::new([0u8; 32]);
                rng.fill(&mut bytes[..]);
                // RFC 7748 §5: clamping happens inside the scalar multiply.
                let secret = x25519_dalek::StaticSecret::from(*bytes);
                let public = x25519_dalek::PublicKey::from(&secret).as_bytes().to_vec();
                (Key::Curve25519(secret), public)
            }
        };
        Ok(DhPrivate { group, key, public })
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// The public value as carried in the KE payload, `group().public_len()`
    /// bytes.
    pub fn public_value(&self) -> &[u8] {
        &self.public
    }

    /// The shared secret g^ir after validating the peer's public value
    /// (RFC 6989). MODP: prime-length big-endian (RFC 7296 §2.14); ECP: the
    /// x coordinate only (RFC 5903 §7); Curve25519: the 32-byte X25519
    /// output, rejected when all zero (RFC 8031 §2.2).
    pub fn shared_secret(&self, peer_public: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        if peer_public.len() != self.group.public_len() {
            return Err(Error::InvalidPublicValue);
        }
        match &self.key {
            Key::Modp(x) => x.shared_secret(peer_public),
            Key::Ecp256(d) => {
                let mut sec1 = [0u8; 65];
                let peer =
                    p256::PublicKey::from_sec1_bytes(sec1_uncompressed(&mut sec1, peer_public))
                        .map_err(|_| Error::InvalidPublicValue)?;
                let z = p256::ecdh::diffie_hellman(d.to_nonzero_scalar(), peer.as_affine());
                Ok(Zeroizing::new(z.raw_secret_bytes().to_vec()))
            }
            Key::Ecp384(d) => {
                let mut sec1 = [0u8; 97];
                let peer =
                    p384::PublicKey::from_sec1_bytes(sec1_uncompressed(&mut sec1, peer_public))
                        .map_err(|_| Error::InvalidPublicValue)?;
                let z = p384::ecdh::diffie_hellman(d.to_nonzero_scalar(), peer.as_affine());
                Ok(Zeroizing::new(z.raw_secret_bytes().to_vec()))
            }
            Key::Curve25519(secret) => {
                let mut bytes = [0u8; 32];
                bytes.copy_from_slice(peer_public);
                let z = secret.diffie_hellman(&x25519_dalek::PublicKey::from(bytes));
                if !z.was_contributory() {
                    return Err(Error::InvalidPublicValue);
                }
                Ok(Zeroizing::new(z.as_bytes().to_vec()))
            }
        }
    }
}

impl fmt::Debug for DhPrivate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DhPrivate")
            .field("group", &self.group)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// RFC 5903 §7: the KE payload carries x || y without SEC1's 0x04 prefix.
fn strip_sec1_tag(sec1: &[u8]) -> Vec<u8> {
    sec1.get(1..).unwrap_or_default().to_vec()
}

/// Builds the SEC1 uncompressed encoding 0x04 || x || y in `buf`, whose
/// length the caller has matched to the wire value plus one.
fn sec1_uncompressed<'a>(buf: &'a mut [u8], wire: &[u8]) -> &'a [u8] {
    if let Some((tag, rest)) = buf.split_first_mut() {
        *tag = 0x04;
        for (b, w) in rest.iter_mut().zip(wire) {
            *b = *w;
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OsRandom;
    use crate::test_util::{Fixed, hex};

    #[test]
    fn agreement_in_every_group() {
        for group in DhGroup::ALL {
            let a = DhPrivate::generate(group, &mut OsRandom).unwrap();
            let b = DhPrivate::generate(group, &mut OsRandom).unwrap();
            assert_eq!(a.group(), group);
            assert_eq!(a.public_value().len(), group.public_len(), "{group:?}");
            let za = a.shared_secret(b.public_value()).unwrap();
            let zb = b.shared_secret(a.public_value()).unwrap();
            assert_eq!(za, zb, "{group:?}");
            assert_ne!(a.public_value(), b.public_value(), "{group:?}");
        }
    }

    /// Runs an exchange with both private keys fixed and checks both public
    /// values and the shared secret against the vector.
    fn kat(group: DhGroup, i: &str, gi: &str, r: &str, gr: &str, gir: &str) {
        let a = DhPrivate::generate(group, &mut Fixed(hex(i))).unwrap();
        let b = DhPrivate::generate(group, &mut Fixed(hex(r))).unwrap();
        assert_eq!(a.public_value(), hex(gi), "{group:?} initiator public");
        assert_eq!(b.public_value(), hex(gr), "{group:?} responder public");
        assert_eq!(*a.shared_secret(&hex(gr)).unwrap(), hex(gir), "{group:?}");
        assert_eq!(*b.shared_secret(&hex(gi)).unwrap(), hex(gir), "{group:?}");
    }

    #[test]
    fn rfc5903_ecp256() {
        // RFC 5903 §8.1; KE data is gix || giy (§7), the secret girx only.
        kat(
            DhGroup::Ecp256,
            "C88F01F5 10D9AC3F 70A292DA A2316DE5 44E9AAB8 AFE84049 C62A9C57 862D1433",
            "DAD0B653 94221CF9 B051E1FE CA5787D0 98DFE637 FC90B9EF 945D0C37 72581180
             5271A046 1CDB8252 D61F1C45 6FA3E59A B1F45B33 ACCF5F58 389E0577 B8990BB3",
            "C6EF9C5D 78AE012A 011164AC B397CE20 88685D8F 06BF9BE0 B283AB46 476BEE53",
            "D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C 736FC755 4494BF63
             56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83 53E74F33 039872AB",
            "D6840F6B 42F6EDAF D13116E0 E1256520 2FEF8E9E CE7DCE03 812464D0 4B9442DE",
        );
    }

    #[test]
    fn rfc5903_ecp384() {
        // RFC 5903 §8.2.
        kat(
            DhGroup::Ecp384,
            "099F3C70 34D4A2C6 99884D73 A375A67F 7624EF7C 6B3C0F16 0647B674 14DCE655
             E35B5380 41E649EE 3FAEF896 783AB194",
            "667842D7 D180AC2C DE6F74F3 7551F557 55C7645C 20EF73E3 1634FE72 B4C55EE6
             DE3AC808 ACB4BDB4 C88732AE E95F41AA 9482ED1F C0EEB9CA FC498462 5CCFC23F
             65032149 E0E144AD A0241815 35A0F38E EB9FCFF3 C2C947DA E69B4C63 4573A81C",
            "41CB0779 B4BDB85D 47846725 FBEC3C94 30FAB46C C8DC5060 855CC9BD A0AA2942
             E0308312 916B8ED2 960E4BD5 5A7448FC",
            "E558DBEF 53EECDE3 D3FCCFC1 AEA08A89 A987475D 12FD950D 83CFA417 32BC509D
             0D1AC43A 0336DEF9 6FDA41D0 774A3571 DCFBEC7A ACF31964 72169E83 8430367F
             66EEBE3C 6E70C416 DD5F0C68 759DD1FF F83FA401 42209DFF 5EAAD96D B9E6386C",
            "11187331 C279962D 93D60424 3FD592CB 9D0A926F 422E4718 7521287E 7156C5C4
             D6031355 69B9E9D0 9CF5D4A2 70F59746",
        );
    }

    #[test]
    fn rfc7748_x25519() {
        // RFC 7748 §6.1, used unchanged by IKEv2 (RFC 8031 §2).
        kat(
            DhGroup::Curve25519,
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
        );
    }

    #[test]
    fn x25519_rejects_all_zero_result() {
        // RFC 8031 §2.2: low-order points give an all-zero secret.
        let a = DhPrivate::generate(DhGroup::Curve25519, &mut OsRandom).unwrap();
        assert_eq!(
            a.shared_secret(&[0; 32]).unwrap_err(),
            Error::InvalidPublicValue
        );
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(
            a.shared_secret(&one).unwrap_err(),
            Error::InvalidPublicValue
        );
        assert_eq!(
            a.shared_secret(&[9; 31]).unwrap_err(),
            Error::InvalidPublicValue
        );
    }

    #[test]
    fn ecp_rejects_points_off_the_curve() {
        for group in [DhGroup::Ecp256, DhGroup::Ecp384] {
            let a = DhPrivate::generate(group, &mut OsRandom).unwrap();
            let b = DhPrivate::generate(group, &mut OsRandom).unwrap();
            let mut bad = b.public_value().to_vec();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert_eq!(
                a.shared_secret(&bad).unwrap_err(),
                Error::InvalidPublicValue
            );
            // The point at infinity has no affine x || y; all zeros is not
            // on the curve either.
            let zeros = vec![0u8; group.public_len()];
            assert_eq!(
                a.shared_secret(&zeros).unwrap_err(),
                Error::InvalidPublicValue
            );
            let pv = b.public_value();
            assert_eq!(
                a.shared_secret(&pv[1..]).unwrap_err(),
                Error::InvalidPublicValue
            );
            // SEC1's own encodings (with the 0x04 tag) are not the wire form.
            let mut tagged = vec![4u8];
            tagged.extend_from_slice(pv);
            assert_eq!(
                a.shared_secret(&tagged).unwrap_err(),
                Error::InvalidPublicValue
            );
        }
    }

    #[test]
    fn ecp_scalar_out_of_range_is_redrawn() {
        // All-ones is above the P-256 group order, zero is not a valid
        // scalar: both are skipped and the third draw is used.
        let mut bytes = vec![0xff; 32];
        bytes.extend([0; 32]);
        bytes.extend(hex(
            "C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433",
        ));
        let a = DhPrivate::generate(DhGroup::Ecp256, &mut Fixed(bytes)).unwrap();
        assert_eq!(a.public_value()[..4], hex("DAD0B653"));
    }
}
