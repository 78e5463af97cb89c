//! A CBC cipher and an HMAC keyed together for encrypt-then-MAC, as ESP uses them
//! (RFC 4303 §3.3.2 and §3.4.4) and IKEv2's Encrypted payload does (RFC 7296 §3.14).

use core::fmt;

use subtle::ConstantTimeEq;

use crate::cipher::{Cbc, Chain};
use crate::{Direction, Encr, Error, Integ, Mac};

/// CBC encryption and HMAC under one SA's keys. With AES-CBC and HMAC-SHA1-96 on a CPU
/// with AES-NI and SHA-NI, both run in one stitched pass over the data (the product's
/// default suite); every other pair, and every other CPU, goes through the CBC cipher of
/// [`Cipher`](crate::Cipher) and [`Mac`] one after the other. Both paths give the same
/// bytes (tests below). Keyed once in [`CbcHmac::new`] or [`CbcHmac::for_direction`]; the
/// per-packet calls work in place and never allocate.
#[derive(Clone)]
pub struct CbcHmac {
    encr: Encr,
    integ: Integ,
    /// `None`: both directions ([`CbcHmac::new`]).
    direction: Option<Direction>,
    backend: Backend,
}

// One per SA direction, on the data path. The stitched state of one direction is inline
// (no pointer chase per packet for the default suite); the two-direction form and every
// other pair are boxed, so that the larger states (a second AES key schedule; an AES-256
// key schedule with its software fallback and an HMAC-SHA-512, 1.3 KiB) do not size every
// SA.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Backend {
    #[cfg(target_arch = "x86_64")]
    Stitched(crate::stitched::AesSha1),
    #[cfg(target_arch = "x86_64")]
    StitchedBoth(Box<StitchedBoth>),
    Separate(Box<Separate>),
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone)]
struct StitchedBoth {
    seal: crate::stitched::AesSha1,
    open: crate::stitched::AesSha1,
}

#[derive(Clone)]
struct Separate {
    cipher: Cbc,
    mac: Mac,
    /// HMAC-SHA-256 with SHA-NI, several packets at once (`seal_many`/`open_many`).
    #[cfg(target_arch = "x86_64")]
    sha256: Option<crate::sha256x::HmacSha256>,
}

impl Separate {
    /// The full MACs of `msgs` into `tags`, several at once when the lanes exist (the
    /// caller truncates); `false` when they do not and `mac` must run one by one.
    fn lane_tags(&self, msgs: &[&[u8]], tags: &mut [[u8; 32]]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Some(h) = &self.sha256 {
            use crate::sha256x::LANES;
            for (m, t) in msgs.chunks(LANES).zip(tags.chunks_mut(LANES)) {
                match *m {
                    [a, b, c, d] => t.copy_from_slice(&h.tags([a, b, c, d])),
                    [a, b, c] => t.copy_from_slice(&h.tags([a, b, c])),
                    [a, b] => t.copy_from_slice(&h.tags([a, b])),
                    [a] => t.copy_from_slice(&h.tags([a])),
                    _ => {}
                }
            }
            return true;
        }
        let _ = (msgs, tags);
        false
    }
}

impl CbcHmac {
    /// Keyed for both directions (boxed); an ESP SA direction uses
    /// [`CbcHmac::for_direction`]. `encr` must be a CBC cipher (not AEAD); keys as for
    /// [`Cipher::new`](crate::Cipher::new) and [`Mac::new`].
    pub fn new(encr: Encr, enc_key: &[u8], integ: Integ, integ_key: &[u8]) -> Result<Self, Error> {
        Self::with_backend(encr, enc_key, integ, integ_key, true, None)
    }

    /// Keyed for `direction` only: an outbound SA only seals, an inbound SA only opens.
    /// The stitched state is then inline and keeps only that direction's AES key
    /// schedule. The other direction's calls fail with [`Error::Unsupported`].
    pub fn for_direction(
        direction: Direction,
        encr: Encr,
        enc_key: &[u8],
        integ: Integ,
        integ_key: &[u8],
    ) -> Result<Self, Error> {
        Self::with_backend(encr, enc_key, integ, integ_key, true, Some(direction))
    }

    /// True when this instance runs the stitched AES-NI/SHA-NI code.
    pub fn is_stitched(&self) -> bool {
        match self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::Stitched(_) | Backend::StitchedBoth(_) => true,
            Backend::Separate(_) => false,
        }
    }

    /// The one direction this instance is keyed for, `None` for both.
    pub fn direction(&self) -> Option<Direction> {
        self.direction
    }

    pub fn encr(&self) -> Encr {
        self.encr
    }

    pub fn integ(&self) -> Integ {
        self.integ
    }

    /// Encrypt-then-MAC in place. `msg` is everything the ICV covers; the ciphertext is
    /// `msg[ct_start..]` (whole cipher blocks, padded by the caller) and the IV the
    /// `encr().iv_len()` bytes just before it, as in ESP (SPI, sequence number, IV,
    /// payload; RFC 4303 §2) and IKEv2. Writes the truncated ICV to `icv`, which must be
    /// `integ().icv_len()` bytes.
    pub fn seal(&self, msg: &mut [u8], ct_start: usize, icv: &mut [u8]) -> Result<(), Error> {
        self.keyed_for(Direction::Seal)?;
        if icv.len() != self.integ.icv_len() {
            return Err(Error::InvalidLength);
        }
        match &self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::Stitched(k) => k.seal(msg, ct_start, icv),
            #[cfg(target_arch = "x86_64")]
            Backend::StitchedBoth(k) => k.seal.seal(msg, ct_start, icv),
            Backend::Separate(s) => {
                let (auth, ct) = split(msg, ct_start, self.encr.iv_len())?;
                let iv_at = ct_start - self.encr.iv_len();
                s.cipher
                    .encrypt(auth.get(iv_at..).unwrap_or_default(), ct)?;
                s.mac.compute(&[msg], icv);
                Ok(())
            }
        }
    }

    /// Checks the ICV in constant time and decrypts `msg[ct_start..]` in place (layout as
    /// in [`Self::seal`]). On [`Error::AuthenticationFailed`] the contents of
    /// `msg[ct_start..]` are unspecified (the stitched path decrypts while it hashes):
    /// the caller drops the packet and uses none of it.
    pub fn open(&self, msg: &mut [u8], ct_start: usize, icv: &[u8]) -> Result<(), Error> {
        self.keyed_for(Direction::Open)?;
        if icv.len() != self.integ.icv_len() {
            return Err(Error::AuthenticationFailed);
        }
        match &self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::Stitched(k) => k.open(msg, ct_start, icv),
            #[cfg(target_arch = "x86_64")]
            Backend::StitchedBoth(k) => k.open.open(msg, ct_start, icv),
            Backend::Separate(s) => {
                split(msg, ct_start, self.encr.iv_len())?;
                if !s.mac.verify(&[msg], icv) {
                    return Err(Error::AuthenticationFailed);
                }
                let (auth, ct) = split(msg, ct_start, self.encr.iv_len())?;
                let iv_at = ct_start - self.encr.iv_len();
                s.cipher.decrypt(auth.get(iv_at..).unwrap_or_default(), ct)
            }
        }
    }

    /// [`Self::seal`] on many packets, each job's outcome in [`SealJob::result`]. On the
    /// stitched path up to four packets run at once (their CBC chains and hashes
    /// interleaved), several times the throughput of one by one for full-size packets;
    /// otherwise one after the other. Jobs may have different lengths.
    pub fn seal_many(&self, jobs: &mut [SealJob<'_>]) {
        match &self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::Stitched(k) => k.seal_many(jobs, self.integ.icv_len()),
            #[cfg(target_arch = "x86_64")]
            Backend::StitchedBoth(k) => k.seal.seal_many(jobs, self.integ.icv_len()),
            Backend::Separate(s) => self.seal_many_separate(s, jobs),
        }
    }

    /// The separate path's `seal_many`: the packets' CBC chains encrypted side by side
    /// ([`Cbc::encrypt_many`]: AES-256-CBC alone would leave AES-NI waiting on each
    /// round's latency), then each packet's MAC. A job whose layout is wrong gets the
    /// error [`Self::seal`] gives it and takes no part.
    fn seal_many_separate(&self, s: &Separate, jobs: &mut [SealJob<'_>]) {
        let iv_len = self.encr.iv_len();
        for group in jobs.chunks_mut(GROUP) {
            let mut valid = [false; GROUP];
            for (job, v) in group.iter_mut().zip(&mut valid) {
                *v = self.well_formed(Direction::Seal, job.msg, job.ct_start, job.icv);
                if !*v {
                    job.result = self.seal(job.msg, job.ct_start, job.icv);
                }
            }
            let encrypted = {
                let mut it = group
                    .iter_mut()
                    .zip(&valid)
                    .filter(|(_, v)| **v)
                    .map(|(job, _)| {
                        let (auth, ct) = job.msg.split_at_mut(job.ct_start);
                        let iv = auth.get(job.ct_start - iv_len..).unwrap_or_default();
                        Chain { iv, buf: ct }
                    });
                let mut chains: [Chain<'_>; GROUP] = core::array::from_fn(|_| {
                    it.next().unwrap_or(Chain {
                        iv: &[],
                        buf: &mut [],
                    })
                });
                let n = valid.iter().filter(|v| **v).count();
                s.cipher.encrypt_many(&mut chains[..n])
            };
            // The MACs over the ciphertexts, several at once where the lanes exist.
            let mut tags = [[0u8; 32]; GROUP];
            let lanes = encrypted.is_ok() && {
                let (msgs, n) = valid_msgs(group.iter().map(|job| &*job.msg), &valid);
                s.lane_tags(&msgs[..n], &mut tags[..n])
            };
            // `tags` holds the valid jobs' MACs in order.
            let mut tag = tags.iter();
            for (job, v) in group.iter_mut().zip(&valid) {
                if *v {
                    job.result = encrypted.map(|()| match tag.next().filter(|_| lanes) {
                        Some(t) => job.icv.copy_from_slice(&t[..job.icv.len()]),
                        None => s.mac.compute(&[job.msg], job.icv),
                    });
                }
            }
        }
    }

    /// The separate path's `open_many`: with HMAC-SHA-256 lanes, the packets' ICVs are
    /// computed several at once and each good packet is then decrypted; otherwise packet
    /// by packet. A job whose layout is wrong gets the error [`Self::open`] gives it.
    fn open_many_separate(&self, s: &Separate, jobs: &mut [OpenJob<'_>]) {
        let iv_len = self.encr.iv_len();
        for group in jobs.chunks_mut(GROUP) {
            let mut valid = [false; GROUP];
            for (job, v) in group.iter().zip(&mut valid) {
                *v = self.well_formed(Direction::Open, job.msg, job.ct_start, job.icv);
            }
            let mut tags = [[0u8; 32]; GROUP];
            let lanes = {
                let (msgs, n) = valid_msgs(group.iter().map(|job| &*job.msg), &valid);
                s.lane_tags(&msgs[..n], &mut tags[..n])
            };
            let mut tag = tags.iter();
            for (job, v) in group.iter_mut().zip(&valid) {
                // `tags` holds the valid jobs' MACs in order.
                let t = if *v { tag.next() } else { None };
                job.result = match (lanes, t) {
                    (true, Some(t)) => {
                        let want = t.get(..job.icv.len()).unwrap_or_default();
                        if bool::from(want.ct_eq(job.icv)) {
                            let (auth, ct) = job.msg.split_at_mut(job.ct_start);
                            let iv = auth.get(job.ct_start - iv_len..).unwrap_or_default();
                            s.cipher.decrypt(iv, ct)
                        } else {
                            Err(Error::AuthenticationFailed)
                        }
                    }
                    _ => self.open(job.msg, job.ct_start, job.icv),
                };
            }
        }
    }

    /// [`Self::open`] on many packets, each job's outcome in [`OpenJob::result`] (a bad
    /// ICV fails only its own job); batched as in [`Self::seal_many`].
    pub fn open_many(&self, jobs: &mut [OpenJob<'_>]) {
        match &self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::Stitched(k) => k.open_many(jobs, self.integ.icv_len()),
            #[cfg(target_arch = "x86_64")]
            Backend::StitchedBoth(k) => k.open.open_many(jobs, self.integ.icv_len()),
            Backend::Separate(s) => self.open_many_separate(s, jobs),
        }
    }

    /// The bare block cipher on one block of `encr().block_len()` bytes (ESP derives its
    /// CBC IVs with it); a sealing key's.
    pub fn encrypt_block(&self, block: &mut [u8]) -> Result<(), Error> {
        self.keyed_for(Direction::Seal)?;
        match &self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::Stitched(k) => {
                let b: &mut [u8; 16] = block.try_into().map_err(|_| Error::InvalidLength)?;
                k.encrypt_block(b)
            }
            #[cfg(target_arch = "x86_64")]
            Backend::StitchedBoth(k) => {
                let b: &mut [u8; 16] = block.try_into().map_err(|_| Error::InvalidLength)?;
                k.seal.encrypt_block(b)
            }
            Backend::Separate(s) => {
                // One block of CBC under a zero IV is the bare block cipher.
                let zero = [0u8; 16];
                let iv = zero.get(..block.len()).ok_or(Error::InvalidLength)?;
                s.cipher.encrypt(iv, block)
            }
        }
    }

    /// Whether a `seal_many`/`open_many` job can run as it is: keys for `direction`, the
    /// ICV's length, room for the IV and whole blocks of ciphertext (the checks of
    /// [`Self::seal`]/[`Self::open`] before they touch anything).
    fn well_formed(&self, direction: Direction, msg: &[u8], ct_start: usize, icv: &[u8]) -> bool {
        self.keyed_for(direction).is_ok()
            && icv.len() == self.integ.icv_len()
            && layout_ok(msg.len(), ct_start, self.encr.iv_len())
    }

    /// Unsupported when keyed for the other direction only.
    fn keyed_for(&self, direction: Direction) -> Result<(), Error> {
        match self.direction {
            Some(d) if d != direction => Err(Error::Unsupported),
            _ => Ok(()),
        }
    }

    /// `stitched: false` forces the separate path (tests and benches compare the two);
    /// `direction: None` keys both directions.
    fn with_backend(
        encr: Encr,
        enc_key: &[u8],
        integ: Integ,
        integ_key: &[u8],
        stitched: bool,
        direction: Option<Direction>,
    ) -> Result<Self, Error> {
        if encr.is_aead() {
            return Err(Error::Unsupported);
        }
        if enc_key.len() != encr.key_len() || integ_key.len() != integ.key_len() {
            return Err(Error::InvalidKeyLength);
        }
        #[cfg(target_arch = "x86_64")]
        if stitched
            && matches!(encr, Encr::AesCbc128 | Encr::AesCbc192 | Encr::AesCbc256)
            && integ == Integ::HmacSha1_96
            && crate::stitched::available()
        {
            use crate::stitched::AesSha1;
            let keyed = |d| AesSha1::new(enc_key, integ_key, d)?.ok_or(Error::Unsupported);
            let backend = match direction {
                Some(d) => Backend::Stitched(keyed(d)?),
                None => Backend::StitchedBoth(Box::new(StitchedBoth {
                    seal: keyed(Direction::Seal)?,
                    open: keyed(Direction::Open)?,
                })),
            };
            return Ok(Self {
                encr,
                integ,
                direction,
                backend,
            });
        }
        let _ = stitched;
        Ok(Self {
            encr,
            integ,
            direction,
            backend: Backend::Separate(Box::new(Separate {
                cipher: Cbc::new(encr, enc_key)?,
                mac: Mac::new(integ, integ_key)?,
                #[cfg(target_arch = "x86_64")]
                sha256: (stitched && integ == Integ::HmacSha256_128 && crate::sha256x::available())
                    .then(|| crate::sha256x::HmacSha256::new(integ_key)),
            })),
        })
    }

    /// The RustCrypto path whatever the CPU, to compare the stitched one against.
    #[doc(hidden)]
    pub fn new_separate(
        encr: Encr,
        enc_key: &[u8],
        integ: Integ,
        integ_key: &[u8],
    ) -> Result<Self, Error> {
        Self::with_backend(encr, enc_key, integ, integ_key, false, None)
    }
}

/// One packet for [`CbcHmac::seal_many`]: `msg`, `ct_start` and `icv` as for
/// [`CbcHmac::seal`].
pub struct SealJob<'a> {
    pub msg: &'a mut [u8],
    pub ct_start: usize,
    pub icv: &'a mut [u8],
    /// What [`CbcHmac::seal`] would have returned; set by `seal_many`.
    pub result: Result<(), Error>,
}

impl<'a> SealJob<'a> {
    pub fn new(msg: &'a mut [u8], ct_start: usize, icv: &'a mut [u8]) -> Self {
        Self {
            msg,
            ct_start,
            icv,
            result: Ok(()),
        }
    }
}

/// One packet for [`CbcHmac::open_many`]: `msg`, `ct_start` and `icv` as for
/// [`CbcHmac::open`].
pub struct OpenJob<'a> {
    pub msg: &'a mut [u8],
    pub ct_start: usize,
    pub icv: &'a [u8],
    /// What [`CbcHmac::open`] would have returned; set by `open_many`.
    pub result: Result<(), Error>,
}

impl<'a> OpenJob<'a> {
    pub fn new(msg: &'a mut [u8], ct_start: usize, icv: &'a [u8]) -> Self {
        Self {
            msg,
            ct_start,
            icv,
            result: Ok(()),
        }
    }
}

impl fmt::Debug for CbcHmac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CbcHmac")
            .field("encr", &self.encr)
            .field("integ", &self.integ)
            .field("stitched", &self.is_stitched())
            .field("direction", &self.direction)
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// `(msg[..ct_start], msg[ct_start..])` after checking there is room for the IV and the
/// ciphertext is whole blocks.
fn split(msg: &mut [u8], ct_start: usize, iv_len: usize) -> Result<(&mut [u8], &mut [u8]), Error> {
    if !layout_ok(msg.len(), ct_start, iv_len) {
        return Err(Error::InvalidLength);
    }
    Ok(msg.split_at_mut(ct_start))
}

/// Room for the IV before `ct_start`, and whole blocks (the IV's length) after it.
fn layout_ok(len: usize, ct_start: usize, iv_len: usize) -> bool {
    ct_start >= iv_len && ct_start <= len && (len - ct_start).is_multiple_of(iv_len)
}

/// Jobs per step of the separate path's `seal_many`/`open_many`: the stack arrays of
/// chains, messages and MACs.
const GROUP: usize = 16;

/// The messages whose `valid` flag is set, in order, and how many.
fn valid_msgs<'a>(
    msgs: impl Iterator<Item = &'a [u8]>,
    valid: &[bool; GROUP],
) -> ([&'a [u8]; GROUP], usize) {
    let mut it = msgs.zip(valid).filter(|(_, v)| **v).map(|(m, _)| m);
    let out = core::array::from_fn(|_| it.next().unwrap_or_default());
    (out, valid.iter().filter(|v| **v).count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{Rng, hex};

    const AES_CBC: [Encr; 3] = [Encr::AesCbc128, Encr::AesCbc192, Encr::AesCbc256];

    fn stitched_or_skip(encr: Encr, key: &[u8], mac_key: &[u8]) -> Option<CbcHmac> {
        let c = CbcHmac::new(encr, key, Integ::HmacSha1_96, mac_key).unwrap();
        if !c.is_stitched() {
            eprintln!("no AES-NI/SHA-NI here: only the separate path is tested");
            return None;
        }
        Some(c)
    }

    /// One per ESP SA direction, inline: one direction's stitched state (one AES key
    /// schedule and the two HMAC-SHA1 pad states); the two-direction form and the separate
    /// path's RustCrypto states (1.3 KiB for AES-256 with HMAC-SHA-512) are boxed.
    #[test]
    fn a_cbc_hmac_stays_small() {
        let n = size_of::<CbcHmac>();
        assert!(n <= 320, "CbcHmac is {n} bytes");
    }

    #[test]
    fn rfc3602_vectors_through_the_stitched_cipher() {
        // RFC 3602 §4 cases #1 and #2: the CBC part of seal must give these bytes; the
        // MAC key is irrelevant to them.
        let cases = [
            (
                "06a9214036b8a15b512e03d534120006",
                "3dafba429d9eb430b422da802c9fac41",
                b"Single block msg".to_vec(),
                "e353779c1079aeb82708942dbe77181a",
            ),
            (
                "c286696d887c9aa0611bbb3e2025a45a",
                "562e17996d093d28ddb3ba695a2e6f58",
                (0u8..32).collect(),
                "d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1",
            ),
        ];
        for (key, iv, plain, cipher) in cases {
            let Some(c) = stitched_or_skip(Encr::AesCbc128, &hex(key), &[7; 20]) else {
                return;
            };
            let mut msg = hex(iv);
            msg.extend_from_slice(&plain);
            let mut icv = [0u8; 12];
            c.seal(&mut msg, 16, &mut icv).unwrap();
            assert_eq!(msg[16..], hex(cipher)[..]);
            c.open(&mut msg, 16, &icv).unwrap();
            assert_eq!(msg[16..], plain[..]);
        }
    }

    #[test]
    fn sp800_38a_aes192_aes256_through_the_stitched_cipher() {
        // NIST SP 800-38A F.2.3 and F.2.5, first two blocks.
        let plain = hex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");
        let iv = hex("000102030405060708090a0b0c0d0e0f");
        let cases = [
            (
                Encr::AesCbc192,
                "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
                "4f021db243bc633d7178183a9fa071e8b4d9ada9ad7dedf4e5e738763f69145a",
            ),
            (
                Encr::AesCbc256,
                "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
                "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d",
            ),
        ];
        for (encr, key, cipher) in cases {
            let Some(c) = stitched_or_skip(encr, &hex(key), &[7; 20]) else {
                return;
            };
            let mut msg = iv.clone();
            msg.extend_from_slice(&plain);
            let mut icv = [0u8; 12];
            c.seal(&mut msg, 16, &mut icv).unwrap();
            assert_eq!(msg[16..], hex(cipher)[..], "{encr:?}");
        }
    }

    /// RFC 2202 §3 test cases 1-3 (20-byte keys, as ESP's HMAC-SHA1-96 uses), truncated
    /// to 96 bits (RFC 2404 §3). The messages are the whole authenticated range: with
    /// `ct_start` = the message length there is nothing to encrypt.
    #[test]
    fn rfc2202_hmac_sha1_through_the_stitched_mac() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 3] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b617318655057264e28bc0b6",
            ),
            (vec![0xaa; 20], vec![0xdd; 50], "125d7342b9ac11cd91a39af4"),
            (
                b"Jefe\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                // RFC 2202 case 2 uses the 4-byte key "Jefe"; HMAC zero-pads keys to the
                // block size, so the same key padded to 20 bytes gives the same MAC.
                "effcdf6ae5eb2fa2d27416d5",
            ),
        ];
        for (key, data, expected) in cases {
            let Some(c) = stitched_or_skip(Encr::AesCbc128, &[1; 16], &key) else {
                return;
            };
            // `ct_start` must leave room for an IV: case 1's 8 bytes are too short for
            // the stitched call and are checked through `Mac` only.
            let mut icv = [0u8; 12];
            if data.len() >= 16 {
                let mut msg = data.clone();
                let n = msg.len();
                c.seal(&mut msg, n, &mut icv).unwrap();
                assert_eq!(msg, data);
                assert_eq!(icv[..], hex(expected)[..]);
                c.open(&mut msg, n, &icv).unwrap();
            }
            let mac = Mac::new(Integ::HmacSha1_96, &key).unwrap();
            let mut want = [0u8; 12];
            mac.compute(&[&data], &mut want);
            assert_eq!(want[..], hex(expected)[..]);
        }
    }

    /// Stitched and separate paths agree on ciphertext, ICV and plaintext for every AES
    /// key size over many lengths, authenticated-prefix lengths and keys; and a flipped
    /// bit anywhere fails to open on both.
    #[test]
    fn stitched_matches_separate_randomized() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..600 {
            let encr = AES_CBC[round % 3];
            let key = rng.bytes(encr.key_len());
            let mac_key = rng.bytes(20);
            let Some(fast) = stitched_or_skip(encr, &key, &mac_key) else {
                return;
            };
            let slow = CbcHmac::new_separate(encr, &key, Integ::HmacSha1_96, &mac_key).unwrap();
            assert!(!slow.is_stitched());
            // Authenticated-only prefix: the IV plus 0..100 bytes (ESP: 8).
            let ct_start = 16 + (rng.next() % 101) as usize;
            let blocks = if round < 200 {
                round % 100
            } else {
                (rng.next() % 200) as usize
            };
            let mut msg = rng.bytes(ct_start + 16 * blocks);
            let plain = msg.clone();
            let mut a = msg.clone();
            let (mut icv_a, mut icv_b) = ([0u8; 12], [0u8; 12]);
            fast.seal(&mut a, ct_start, &mut icv_a).unwrap();
            slow.seal(&mut msg, ct_start, &mut icv_b).unwrap();
            assert_eq!(a, msg, "{encr:?} ct_start {ct_start} blocks {blocks}");
            assert_eq!(icv_a, icv_b, "{encr:?} ct_start {ct_start} blocks {blocks}");

            let mut b = a.clone();
            fast.open(&mut a, ct_start, &icv_a).unwrap();
            slow.open(&mut b, ct_start, &icv_b).unwrap();
            assert_eq!(a, plain);
            assert_eq!(b, plain);

            // Tamper with one bit of the sealed message or of the ICV.
            let mut sealed = plain.clone();
            fast.seal(&mut sealed, ct_start, &mut icv_a).unwrap();
            let bit = (rng.next() as usize) % ((sealed.len() + 12) * 8);
            let mut icv_t = icv_a;
            let mut t = sealed.clone();
            if bit / 8 < t.len() {
                t[bit / 8] ^= 1 << (bit % 8);
            } else {
                icv_t[bit / 8 - t.len()] ^= 1 << (bit % 8);
            }
            let mut u = t.clone();
            assert_eq!(
                fast.open(&mut t, ct_start, &icv_t),
                Err(Error::AuthenticationFailed)
            );
            assert_eq!(
                slow.open(&mut u, ct_start, &icv_t),
                Err(Error::AuthenticationFailed)
            );
        }
    }

    /// `seal_many`/`open_many` give exactly the bytes and ICVs of one-by-one `seal`/`open`
    /// (and of the separate path), for 1..=7, 16, 17 and 33 jobs of uneven lengths (0 to 120 blocks,
    /// different authenticated prefixes) under every AES key size, on both backends.
    #[test]
    fn many_matches_one_by_one_randomized() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        for round in 0..300 {
            let encr = AES_CBC[round % 3];
            let key = rng.bytes(encr.key_len());
            let mac_key = rng.bytes(20);
            let fast = CbcHmac::new(encr, &key, Integ::HmacSha1_96, &mac_key).unwrap();
            let slow = CbcHmac::new_separate(encr, &key, Integ::HmacSha1_96, &mac_key).unwrap();
            // 1..=7 jobs, and batches that fill (and spill over) the sixteen-lane hash.
            let jobs = match round % 10 {
                7 => 16,
                8 => 17,
                9 => 33,
                r => 1 + r,
            };
            let mut plain = Vec::new();
            for j in 0..jobs {
                let ct_start = 16
                    + if round % 2 == 0 {
                        8
                    } else {
                        (rng.next() % 40) as usize
                    };
                // Mostly equal lengths (segments of one super-packet), sometimes not.
                let blocks = if round % 4 == 0 && j > 0 {
                    plain
                        .last()
                        .map_or(0, |(_, m): &(usize, Vec<u8>)| m.len() / 16)
                } else {
                    (rng.next() % 121) as usize
                };
                plain.push((ct_start, rng.bytes(ct_start + 16 * blocks)));
            }
            let mut want: Vec<(Vec<u8>, [u8; 12])> = Vec::new();
            for (ct_start, m) in &plain {
                let mut m = m.clone();
                let mut icv = [0u8; 12];
                slow.seal(&mut m, *ct_start, &mut icv).unwrap();
                want.push((m, icv));
            }
            for etm in [&fast, &slow] {
                let mut msgs: Vec<Vec<u8>> = plain.iter().map(|(_, m)| m.clone()).collect();
                let mut icvs = vec![[0u8; 12]; jobs];
                let mut batch: Vec<SealJob<'_>> = msgs
                    .iter_mut()
                    .zip(&mut icvs)
                    .zip(&plain)
                    .map(|((m, icv), (ct_start, _))| SealJob::new(m, *ct_start, icv))
                    .collect();
                etm.seal_many(&mut batch);
                assert!(batch.iter().all(|j| j.result.is_ok()));
                drop(batch);
                for (i, (m, icv)) in msgs.iter().zip(&icvs).enumerate() {
                    assert_eq!(
                        (m, icv),
                        (&want[i].0, &want[i].1),
                        "{encr:?} job {i}/{jobs}"
                    );
                }
                // Open them back, with one job's ICV (or ciphertext) spoiled when there
                // are several: only that job fails.
                let bad = (jobs > 1).then(|| (rng.next() as usize) % jobs);
                if let Some(b) = bad {
                    if rng.next().is_multiple_of(2) {
                        icvs[b][(rng.next() % 12) as usize] ^= 0x40;
                    } else {
                        let last = msgs[b].len() - 1;
                        msgs[b][last] ^= 1;
                    }
                }
                let mut batch: Vec<OpenJob<'_>> = msgs
                    .iter_mut()
                    .zip(&icvs)
                    .zip(&plain)
                    .map(|((m, icv), (ct_start, _))| OpenJob::new(m, *ct_start, icv))
                    .collect();
                etm.open_many(&mut batch);
                for (i, job) in batch.iter().enumerate() {
                    if Some(i) == bad {
                        assert_eq!(job.result, Err(Error::AuthenticationFailed), "job {i}");
                    } else {
                        assert_eq!(job.result, Ok(()), "{encr:?} job {i}/{jobs}");
                    }
                }
                drop(batch);
                for (i, (m, (_, p))) in msgs.iter().zip(&plain).enumerate() {
                    if Some(i) != bad {
                        assert_eq!(m, p, "{encr:?} job {i}/{jobs} plaintext");
                    }
                }
            }
        }
    }

    /// RFC 3602 §4 case #2 five times in one `seal_many` call (four lanes and one
    /// alone), and RFC 2202 §3 case 2 as the ICV of three all-authenticated packets.
    #[test]
    fn many_known_vectors() {
        let Some(c) = stitched_or_skip(
            Encr::AesCbc128,
            &hex("c286696d887c9aa0611bbb3e2025a45a"),
            &[7; 20],
        ) else {
            return;
        };
        let iv = hex("562e17996d093d28ddb3ba695a2e6f58");
        let plain: Vec<u8> = (0u8..32).collect();
        let expected = hex("d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1");
        let mut msgs: Vec<Vec<u8>> = (0..5).map(|_| [&iv[..], &plain[..]].concat()).collect();
        let mut icvs = [[0u8; 12]; 5];
        let mut jobs: Vec<SealJob<'_>> = msgs
            .iter_mut()
            .zip(&mut icvs)
            .map(|(m, icv)| SealJob::new(m, 16, icv))
            .collect();
        c.seal_many(&mut jobs);
        drop(jobs);
        for m in &msgs {
            assert_eq!(m[16..], expected[..]);
        }
        assert!(icvs.iter().all(|i| *i == icvs[0]));

        let key = b"Jefe\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        let c = CbcHmac::new(Encr::AesCbc256, &[1; 32], Integ::HmacSha1_96, key).unwrap();
        let data = b"what do ya want for nothing?";
        let mut msgs = [data.to_vec(), data.to_vec(), data.to_vec()];
        let mut icvs = [[0u8; 12]; 3];
        let mut jobs: Vec<SealJob<'_>> = msgs
            .iter_mut()
            .zip(&mut icvs)
            .map(|(m, icv)| SealJob::new(m, data.len(), icv))
            .collect();
        c.seal_many(&mut jobs);
        drop(jobs);
        for icv in icvs {
            assert_eq!(icv[..], hex("effcdf6ae5eb2fa2d27416d5")[..]);
        }
    }

    /// A malformed job (ciphertext not whole blocks, wrong ICV length) fails alone; the
    /// others in the batch are sealed and opened as usual.
    #[test]
    fn many_bad_lengths_fail_only_their_job() {
        for c in [
            CbcHmac::new(Encr::AesCbc128, &[1; 16], Integ::HmacSha1_96, &[2; 20]).unwrap(),
            CbcHmac::new_separate(Encr::AesCbc128, &[1; 16], Integ::HmacSha1_96, &[2; 20]).unwrap(),
        ] {
            let mut msgs = [
                vec![5u8; 24 + 160],
                vec![6u8; 24 + 161],
                vec![7u8; 24 + 160],
            ];
            let mut icvs = [vec![0u8; 12], vec![0u8; 12], vec![0u8; 11]];
            let mut jobs: Vec<SealJob<'_>> = msgs
                .iter_mut()
                .zip(&mut icvs)
                .map(|(m, icv)| SealJob::new(m, 24, icv))
                .collect();
            c.seal_many(&mut jobs);
            let results: Vec<_> = jobs.iter().map(|j| j.result).collect();
            assert_eq!(
                results,
                [Ok(()), Err(Error::InvalidLength), Err(Error::InvalidLength)]
            );
            drop(jobs);
            let mut one = vec![5u8; 24 + 160];
            let mut icv = [0u8; 12];
            c.seal(&mut one, 24, &mut icv).unwrap();
            assert_eq!((&msgs[0], &icvs[0][..]), (&one, &icv[..]));
            let mut jobs: Vec<OpenJob<'_>> = msgs
                .iter_mut()
                .zip(&icvs)
                .map(|(m, icv)| OpenJob::new(m, 24, icv))
                .collect();
            c.open_many(&mut jobs);
            let results: Vec<_> = jobs.iter().map(|j| j.result).collect();
            assert_eq!(
                results,
                [
                    Ok(()),
                    Err(Error::InvalidLength),
                    Err(Error::AuthenticationFailed)
                ]
            );
        }
    }

    #[test]
    fn separate_path_for_other_suites_round_trips() {
        let mut rng = Rng(7);
        for encr in [Encr::Des, Encr::TripleDes, Encr::AesCbc256] {
            for integ in Integ::ALL {
                let key = rng.bytes(encr.key_len());
                let mac_key = rng.bytes(integ.key_len());
                let c = CbcHmac::new(encr, &key, integ, &mac_key).unwrap();
                let bs = encr.block_len();
                let plain = rng.bytes(8 + bs + 5 * bs);
                let mut msg = plain.clone();
                let mut icv = vec![0u8; integ.icv_len()];
                c.seal(&mut msg, 8 + bs, &mut icv).unwrap();
                assert_ne!(msg, plain);
                // The ICV is HMAC over header, IV and ciphertext.
                let mac = Mac::new(integ, &mac_key).unwrap();
                assert!(mac.verify(&[&msg], &icv));
                c.open(&mut msg, 8 + bs, &icv).unwrap();
                assert_eq!(msg, plain);
            }
        }
    }

    /// The separate path's `seal_many` (CBC chains side by side, `Cbc::encrypt_many`;
    /// HMAC-SHA-256 in SHA-NI lanes) gives exactly the bytes and ICVs of `seal` one by one,
    /// for every CBC cipher and MAC, batches of 1 to 20 (a partly filled parallel group, a
    /// full one, two groups) of uneven lengths, from 0 blocks up, with a malformed job in
    /// some batches; `open_many` gives the plaintexts back, a spoiled ICV failing only its
    /// job; and the other direction's keys refuse every job.
    #[test]
    fn separate_seal_many_matches_seal_one_by_one() {
        let mut rng = Rng(0x5ea1_0f3a_1700);
        for encr in [
            Encr::Des,
            Encr::TripleDes,
            Encr::AesCbc128,
            Encr::AesCbc192,
            Encr::AesCbc256,
        ] {
            for integ in Integ::ALL {
                for jobs in [1usize, 2, 5, 7, 8, 9, 16, 17, 20] {
                    let key = rng.bytes(encr.key_len());
                    let mac_key = rng.bytes(integ.key_len());
                    let c = CbcHmac::for_direction(Direction::Seal, encr, &key, integ, &mac_key)
                        .unwrap();
                    assert!(!c.is_stitched() || integ == Integ::HmacSha1_96);
                    let bs = encr.block_len();
                    let ct_start = 8 + bs;
                    let bad = (jobs > 2).then(|| (rng.next() as usize) % jobs);
                    let plain: Vec<Vec<u8>> = (0..jobs)
                        .map(|j| {
                            // Mostly equal (one super-packet's segments), some shorter.
                            let blocks = if j % 3 == 2 {
                                (rng.next() % 90) as usize
                            } else {
                                88
                            };
                            let odd = usize::from(Some(j) == bad);
                            rng.bytes(ct_start + bs * blocks + odd)
                        })
                        .collect();
                    let icv_len = integ.icv_len();
                    let mut want = Vec::new();
                    for m in &plain {
                        let mut m = m.clone();
                        let mut icv = vec![0u8; icv_len];
                        let r = c.seal(&mut m, ct_start, &mut icv);
                        want.push((m, icv, r));
                    }
                    // `seal_many` on fresh copies: (messages, ICVs, each job's result).
                    let sealed_many = |etm: &CbcHmac| {
                        let mut msgs = plain.clone();
                        let mut icvs = vec![vec![0u8; icv_len]; jobs];
                        let mut batch: Vec<SealJob<'_>> = msgs
                            .iter_mut()
                            .zip(&mut icvs)
                            .map(|(m, icv)| SealJob::new(m, ct_start, icv))
                            .collect();
                        etm.seal_many(&mut batch);
                        let results: Vec<_> = batch.iter().map(|j| j.result).collect();
                        drop(batch);
                        (msgs, icvs, results)
                    };
                    let (mut msgs, mut icvs, results) = sealed_many(&c);
                    for (i, w) in want.iter().enumerate() {
                        let what = format!("{encr:?} {integ:?} job {i}/{jobs}");
                        assert_eq!(results[i], w.2, "{what}");
                        assert_eq!(results[i].is_err(), Some(i) == bad, "{what}");
                        assert_eq!((&msgs[i], &icvs[i]), (&w.0, &w.1), "{what}");
                    }
                    let opener =
                        CbcHmac::for_direction(Direction::Open, encr, &key, integ, &mac_key)
                            .unwrap();
                    // Opened back in one batch, with the last good job's ICV spoiled when
                    // there are several: it fails alone, the malformed job with the error
                    // `open` gives it, the others give their plaintext back.
                    let spoiled = (jobs > 1).then(|| (0..jobs).rev().find(|i| Some(*i) != bad));
                    let spoiled = spoiled.flatten();
                    if let Some(x) = spoiled {
                        icvs[x][0] ^= 1;
                    }
                    let bad_open = bad.map(|b| {
                        let mut m = msgs[b].clone();
                        opener.open(&mut m, ct_start, &icvs[b])
                    });
                    let mut batch: Vec<OpenJob<'_>> = msgs
                        .iter_mut()
                        .zip(&icvs)
                        .map(|(m, icv)| OpenJob::new(m, ct_start, icv))
                        .collect();
                    opener.open_many(&mut batch);
                    let results: Vec<_> = batch.iter().map(|j| j.result).collect();
                    drop(batch);
                    for (i, r) in results.iter().enumerate() {
                        let what = format!("{encr:?} {integ:?} open job {i}/{jobs}");
                        if Some(i) == bad {
                            assert_eq!(Some(*r), bad_open, "{what}");
                            assert!(r.is_err(), "{what}");
                        } else if Some(i) == spoiled {
                            assert_eq!(*r, Err(Error::AuthenticationFailed), "{what}");
                        } else {
                            assert_eq!(*r, Ok(()), "{what}");
                            assert_eq!(msgs[i], plain[i], "{what}");
                        }
                    }
                    let (msgs, _, results) = sealed_many(&opener);
                    assert!(results.iter().all(|r| *r == Err(Error::Unsupported)));
                    assert_eq!(msgs, plain, "an opener's seal_many left the buffers alone");
                }
            }
        }
    }

    /// An SA direction's keys (`for_direction`) give the bytes of the two-direction form,
    /// stitched (AES-SHA1, every key size) and separate (AES-SHA256, 3DES-SHA1), and refuse
    /// every call of the other direction without touching the buffers.
    #[test]
    fn one_direction_keys_match_both_and_refuse_the_other() {
        let mut rng = Rng(0x0d1e_c710_2a11);
        let suites = [
            (Encr::AesCbc128, Integ::HmacSha1_96),
            (Encr::AesCbc192, Integ::HmacSha1_96),
            (Encr::AesCbc256, Integ::HmacSha1_96),
            (Encr::AesCbc256, Integ::HmacSha256_128),
            (Encr::TripleDes, Integ::HmacSha1_96),
        ];
        for (encr, integ) in suites {
            let key = rng.bytes(encr.key_len());
            let mac_key = rng.bytes(integ.key_len());
            let both = CbcHmac::new(encr, &key, integ, &mac_key).unwrap();
            let keyed = |d| CbcHmac::for_direction(d, encr, &key, integ, &mac_key).unwrap();
            let (sealer, opener) = (keyed(Direction::Seal), keyed(Direction::Open));
            assert_eq!(sealer.direction(), Some(Direction::Seal));
            assert_eq!(opener.direction(), Some(Direction::Open));
            assert_eq!(both.direction(), None);
            assert_eq!(sealer.is_stitched(), both.is_stitched(), "{encr:?}");
            let (iv, bl) = (encr.iv_len(), encr.block_len());
            for blocks in [1usize, 3, 16, 87] {
                let ct_start = 8 + iv;
                let plain = rng.bytes(ct_start + blocks * bl);
                let icv_len = integ.icv_len();
                let (mut a, mut b) = (plain.clone(), plain.clone());
                let (mut icv_a, mut icv_b) = (vec![0u8; icv_len], vec![0u8; icv_len]);
                sealer.seal(&mut a, ct_start, &mut icv_a).unwrap();
                both.seal(&mut b, ct_start, &mut icv_b).unwrap();
                assert_eq!((&a, &icv_a), (&b, &icv_b), "{encr:?} {blocks} blocks");
                let sealed = a.clone();
                opener.open(&mut a, ct_start, &icv_a).unwrap();
                assert_eq!(a, plain, "{encr:?} {blocks} blocks");
                // The other direction's calls.
                let mut c = sealed.clone();
                assert_eq!(
                    sealer.open(&mut c, ct_start, &icv_a),
                    Err(Error::Unsupported)
                );
                assert_eq!(
                    opener.seal(&mut c, ct_start, &mut icv_b),
                    Err(Error::Unsupported)
                );
                assert_eq!(c, sealed);
                let mut block = vec![0u8; bl];
                assert_eq!(opener.encrypt_block(&mut block), Err(Error::Unsupported));
                let mut jobs = [OpenJob::new(&mut c, ct_start, &icv_a)];
                sealer.open_many(&mut jobs);
                assert_eq!(jobs[0].result, Err(Error::Unsupported));
                let mut jobs = [SealJob::new(&mut c, ct_start, &mut icv_b)];
                opener.seal_many(&mut jobs);
                assert_eq!(jobs[0].result, Err(Error::Unsupported));
                assert_eq!(c, sealed);
            }
        }
    }

    #[test]
    fn encrypt_block_is_the_bare_cipher() {
        // FIPS-197 Appendix C.1, C.2, C.3.
        let plain = hex("00112233445566778899aabbccddeeff");
        let cases = [
            (Encr::AesCbc128, "69c4e0d86a7b0430d8cdb78070b4c55a"),
            (Encr::AesCbc192, "dda97ca4864cdfe06eaf70a0ec0d7191"),
            (Encr::AesCbc256, "8ea2b7ca516745bfeafc49904b496089"),
        ];
        for (encr, expected) in cases {
            let key: Vec<u8> = (0..encr.key_len() as u8).collect();
            for c in [
                CbcHmac::new(encr, &key, Integ::HmacSha1_96, &[0; 20]).unwrap(),
                CbcHmac::new_separate(encr, &key, Integ::HmacSha1_96, &[0; 20]).unwrap(),
                CbcHmac::for_direction(Direction::Seal, encr, &key, Integ::HmacSha1_96, &[0; 20])
                    .unwrap(),
            ] {
                let mut block = plain.clone();
                c.encrypt_block(&mut block).unwrap();
                assert_eq!(
                    block,
                    hex(expected),
                    "{encr:?} stitched {}",
                    c.is_stitched()
                );
            }
        }
    }

    #[test]
    fn bad_lengths_are_errors_not_panics() {
        for c in [
            CbcHmac::new(Encr::AesCbc128, &[1; 16], Integ::HmacSha1_96, &[2; 20]).unwrap(),
            CbcHmac::new_separate(Encr::AesCbc128, &[1; 16], Integ::HmacSha1_96, &[2; 20]).unwrap(),
        ] {
            let mut icv = [0u8; 12];
            let mut msg = [0u8; 40];
            // Ciphertext not whole blocks, no room for the IV, start beyond the end.
            assert_eq!(c.seal(&mut msg, 30, &mut icv), Err(Error::InvalidLength));
            assert_eq!(
                c.seal(&mut msg[..8], 8, &mut icv),
                Err(Error::InvalidLength)
            );
            assert_eq!(c.seal(&mut msg, 41, &mut icv), Err(Error::InvalidLength));
            assert_eq!(
                c.seal(&mut msg[..24], 8, &mut icv[..11]),
                Err(Error::InvalidLength)
            );
            assert!(c.open(&mut msg, 30, &icv).is_err());
            assert!(c.open(&mut msg, 41, &icv).is_err());
            assert_eq!(
                c.open(&mut msg[..24], 8, &icv[..11]),
                Err(Error::AuthenticationFailed)
            );
            let mut short = [0u8; 15];
            assert_eq!(c.encrypt_block(&mut short), Err(Error::InvalidLength));
        }
        assert_eq!(
            CbcHmac::new(Encr::AesGcm16_128, &[0; 20], Integ::HmacSha1_96, &[0; 20]).unwrap_err(),
            Error::Unsupported
        );
        assert_eq!(
            CbcHmac::new(Encr::AesCbc128, &[0; 16], Integ::HmacSha1_96, &[0; 16]).unwrap_err(),
            Error::InvalidKeyLength
        );
    }

    #[test]
    fn debug_is_redacted() {
        let c = CbcHmac::new(
            Encr::AesCbc128,
            &[0xa7; 16],
            Integ::HmacSha1_96,
            &[0xa7; 20],
        )
        .unwrap();
        let s = format!("{c:?}");
        assert!(s.contains("redacted") && !s.to_lowercase().contains("a7") && !s.contains("167"));
    }
}
