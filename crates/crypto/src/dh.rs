//! Diffie-Hellman key exchange for IKE (RFC 7296 §2.14, §3.4): MODP groups,
//! NIST ECP groups (RFC 5903) and Curve25519 (RFC 8031).

use core::fmt;

use p256::elliptic_curve::sec1::ToEncodedPoint;
use zeroize::Zeroizing;

use crate::modp::ModpPrivate;
use crate::{DhGroup, Error, Random};

/// An ephemeral Diffie-Hellman private key with its public value.
pub struct DhPrivate {
    group: DhGroup,
    key: Key,
    public: Vec<u8>,
}

// A key lives for one exchange, so the size spread does not matter.
#[allow(clippy::large_enum_variant)]
enum Key {
    Modp(ModpPrivate),
    Ecp256(p256::NonZeroScalar),
    Ecp384(p384::NonZeroScalar),
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
                let d = loop {
                    let mut bytes = Zeroizing::new(p256::FieldBytes::default());
                    rng.fill(&mut bytes);
                    // Rejection sampling gives a uniform scalar in [1, n).
                    if let Some(d) = p256::NonZeroScalar::from_repr(*bytes).into() {
                        break d;
                    }
                };
                let point = p256::PublicKey::from_secret_scalar(&d).to_encoded_point(false);
                (Key::Ecp256(d), strip_sec1_tag(point.as_bytes()))
            }
            DhGroup::Ecp384 => {
                let d = loop {
                    let mut bytes = Zeroizing::new(p384::FieldBytes::default());
                    rng.fill(&mut bytes);
                    if let Some(d) = p384::NonZeroScalar::from_repr(*bytes).into() {
                        break d;
                    }
                };
                let point = p384::PublicKey::from_secret_scalar(&d).to_encoded_point(false);
                (Key::Ecp384(d), strip_sec1_tag(point.as_bytes()))
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
                let z = p256::ecdh::diffie_hellman(d, peer.as_affine());
                Ok(Zeroizing::new(z.raw_secret_bytes().to_vec()))
            }
            Key::Ecp384(d) => {
                let mut sec1 = [0u8; 97];
                let peer =
                    p384::PublicKey::from_sec1_bytes(sec1_uncompressed(&mut sec1, peer_public))
                        .map_err(|_| Error::InvalidPublicValue)?;
                let z = p384::ecdh::diffie_hellman(d, peer.as_affine());
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

    #[test]
    fn agreement_in_every_group() {
        for group in DhGroup::ALL {
            let a = DhPrivate::generate(group, &mut OsRandom).unwrap();
            let b = DhPrivate::generate(group, &mut OsRandom).unwrap();
            assert_eq!(a.public_value().len(), group.public_len(), "{group:?}");
            let za = a.shared_secret(b.public_value()).unwrap();
            let zb = b.shared_secret(a.public_value()).unwrap();
            assert_eq!(za, zb, "{group:?}");
            assert_ne!(a.public_value(), b.public_value(), "{group:?}");
        }
    }
}
