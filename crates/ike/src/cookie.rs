//! Stateless COOKIEs for IKE_SA_INIT (RFC 7296 §2.6).
//!
//! A responder with many half-open IKE SAs answers an IKE_SA_INIT that carries no
//! valid cookie with `N(COOKIE)` alone, keeping no state and computing no
//! Diffie-Hellman: only an initiator that receives our replies (not one spoofing its
//! source address) can repeat the request with the cookie first. The cookie is
//! `<VersionIDofSecret> | prf(<secret>, Ni | IPi | SPIi)` with HMAC-SHA-256, so
//! checking it needs nothing but the request and the secret.
//!
//! Secrets rotate (§2.6: "the responder should change the value of <secret>
//! frequently"): a secret is used for [`ROTATE`] to make cookies, then accepted for
//! another [`ROTATE`]; the version byte tells which secret made a cookie.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crypto::{Prf, Random};
use zeroize::Zeroizing;

/// How long a secret makes cookies, and then how long cookies made with it verify.
pub(crate) const ROTATE: Duration = Duration::from_secs(60);

/// Length of a cookie: the version byte and a whole HMAC-SHA-256 (RFC 7296 §2.6 allows
/// 1 to 64 bytes).
pub(crate) const COOKIE_LEN: usize = 1 + 32;

struct Secret {
    version: u8,
    key: Zeroizing<[u8; 32]>,
    made: Instant,
}

/// The responder's current and previous cookie secrets, made on first need.
#[derive(Default)]
pub(crate) struct CookieJar {
    current: Option<Secret>,
    previous: Option<Secret>,
}

impl CookieJar {
    /// A cookie for this initiator, from the current secret (a new one if it is due).
    pub fn make(
        &mut self,
        now: Instant,
        rng: &mut dyn Random,
        ni: &[u8],
        ip: IpAddr,
        spi_i: u64,
    ) -> Vec<u8> {
        compute(self.current_secret(now, rng), ni, ip, spi_i)
    }

    /// Whether `cookie` was made by the current or the previous secret for this
    /// initiator, nonce and SPI. Compared in constant time.
    pub fn verify(
        &mut self,
        now: Instant,
        cookie: &[u8],
        ni: &[u8],
        ip: IpAddr,
        spi_i: u64,
    ) -> bool {
        self.retire(now);
        let Some(&version) = cookie.first() else {
            return false;
        };
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .filter(|s| s.version == version)
            .any(|s| crate::exchange::ct_eq(&compute(s, ni, ip, spi_i), cookie))
    }

    /// The secret that makes cookies now: the current one, or a new one (the current
    /// becoming the previous) once it has made cookies for [`ROTATE`].
    fn current_secret(&mut self, now: Instant, rng: &mut dyn Random) -> &Secret {
        self.retire(now);
        match self.current.take() {
            Some(s) if now < s.made + ROTATE => self.current.insert(s),
            old => {
                let version = old.as_ref().map_or(0, |s| s.version.wrapping_add(1));
                let mut key = Zeroizing::new([0u8; 32]);
                rng.fill(&mut key[..]);
                self.previous = old;
                self.current.insert(Secret {
                    version,
                    key,
                    made: now,
                })
            }
        }
    }

    /// Drops secrets whose cookies no longer verify: the previous one after it was
    /// replaced for [`ROTATE`], the current one once it is two periods old.
    fn retire(&mut self, now: Instant) {
        if self
            .previous
            .as_ref()
            .is_some_and(|s| now >= s.made + 2 * ROTATE)
        {
            self.previous = None;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|s| now >= s.made + 2 * ROTATE)
        {
            self.current = None;
        }
    }
}

fn compute(s: &Secret, ni: &[u8], ip: IpAddr, spi_i: u64) -> Vec<u8> {
    let ip = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mac = Prf::HmacSha256.compute(&s.key[..], &[ni, &ip, &spi_i.to_be_bytes()]);
    let mut c = Vec::with_capacity(COOKIE_LEN);
    c.push(s.version);
    c.extend_from_slice(&mac);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u8);
    impl Random for Counter {
        fn fill(&mut self, out: &mut [u8]) {
            self.0 = self.0.wrapping_add(1);
            out.fill(self.0);
        }
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    /// The virtual clock's start; time moves only as the tests say.
    #[allow(clippy::disallowed_methods)] // the one real clock read
    fn epoch() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_cookie_verifies_for_its_initiator_only() {
        let (mut jar, mut rng, t0) = (CookieJar::default(), Counter(0), epoch());
        let c = jar.make(t0, &mut rng, b"nonce-i", IP, 7);
        assert_eq!(c.len(), COOKIE_LEN);
        assert!(jar.verify(t0, &c, b"nonce-i", IP, 7));
        // Any other nonce, address or SPI: no.
        assert!(!jar.verify(t0, &c, b"nonce-j", IP, 7));
        assert!(!jar.verify(t0, &c, b"nonce-i", "192.0.2.2".parse().unwrap(), 7));
        assert!(!jar.verify(t0, &c, b"nonce-i", IP, 8));
        // Tampered, truncated, empty, other version byte: no.
        let mut bad = c.clone();
        bad[20] ^= 1;
        assert!(!jar.verify(t0, &bad, b"nonce-i", IP, 7));
        assert!(!jar.verify(t0, &c[..COOKIE_LEN - 1], b"nonce-i", IP, 7));
        assert!(!jar.verify(t0, &[], b"nonce-i", IP, 7));
        let mut other_version = c.clone();
        other_version[0] ^= 0x80;
        assert!(!jar.verify(t0, &other_version, b"nonce-i", IP, 7));
    }

    #[test]
    fn secrets_rotate_and_old_cookies_expire() {
        let (mut jar, mut rng, t0) = (CookieJar::default(), Counter(0), epoch());
        let first = jar.make(t0, &mut rng, b"n", IP, 1);
        // Within the period the same secret makes the same cookie.
        assert_eq!(jar.make(t0 + ROTATE / 2, &mut rng, b"n", IP, 1), first);
        // Next period: a new secret (another version), the old cookie still verifies.
        let second = jar.make(t0 + ROTATE, &mut rng, b"n", IP, 1);
        assert_ne!(second, first);
        assert_ne!(second[0], first[0]);
        assert!(jar.verify(t0 + ROTATE, &first, b"n", IP, 1));
        assert!(jar.verify(t0 + ROTATE, &second, b"n", IP, 1));
        // Two periods after it was made, the first secret is gone.
        assert!(!jar.verify(t0 + 2 * ROTATE, &first, b"n", IP, 1));
        assert!(jar.verify(t0 + 2 * ROTATE, &second, b"n", IP, 1));
        // Nothing made for long: every secret is gone, a fresh one starts.
        assert!(!jar.verify(t0 + 10 * ROTATE, &second, b"n", IP, 1));
        let fresh = jar.make(t0 + 10 * ROTATE, &mut rng, b"n", IP, 1);
        assert!(jar.verify(t0 + 10 * ROTATE, &fresh, b"n", IP, 1));
    }
}
