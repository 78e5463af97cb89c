//! AES-CBC + HMAC-SHA1 in one pass over the data, with AES-NI and SHA-NI (x86_64).
//!
//! CBC encryption is serial: each block waits for the previous ciphertext, so one block's
//! ten AES rounds are a chain of dependent instructions and the SHA unit sits idle. SHA-1
//! is serial too, but over data the cipher produced earlier. Interleaving the two in one
//! loop — the cipher a few blocks ahead, the hash over the ciphertext it already wrote —
//! lets the CPU run both chains at once, so a packet costs about max(AES, SHA) instead of
//! their sum (the idea of OpenSSL's `aesni_cbc_hmac_sha1`; this is our own code).
//! Decryption is parallel across blocks and runs behind the hash: a block is decrypted in
//! place only after the hash has read its ciphertext.
//!
//!
//! Several packets at once (`seal_many`/`open_many`): a single CBC encryption chain is
//! latency-bound (about 1.6 GB/s on the lab's Ice Lake), four chains of four packets
//! interleaved round by round are not (5.4 GB/s). SHA-NI is the limit then: about 1.7
//! GB/s however many streams are interleaved. With AVX-512 and six or more packets the
//! hashes run sixteen packets wide in vector lanes instead (`sha1x16`, two to three
//! times SHA-NI's throughput), after the CBC encryption (sealing) or before the
//! decryption (opening), each packet's tail and padding and then the outer hashes too,
//! as more lane steps (a lane whose packet ended sits them out). Without AVX-512, or with
//! fewer packets, four at a time are stitched as in the one-packet path. With VAES, CBC
//! decryption runs four blocks per instruction, and the sixteen-lane seal CBC-encrypts
//! sixteen packets' chains at once, four per 512-bit register (about 1.8x the batch seal
//! of four 128-bit chains).
//!
//! Everything here is checked against the RustCrypto path (`aes`, `hmac`, `sha1`), which
//! stays the fallback when the CPU lacks the features ([`available`]).

use core::arch::x86_64::{
    __m128i, __m512i, _mm_add_epi32, _mm_aesdec_si128, _mm_aesdeclast_si128, _mm_aesenc_si128,
    _mm_aesenclast_si128, _mm_aesimc_si128, _mm_aeskeygenassist_si128, _mm_cvtsi128_si32,
    _mm_extract_epi32, _mm_loadu_si128, _mm_or_si128, _mm_set_epi32, _mm_set_epi64x,
    _mm_setzero_si128, _mm_sha1msg1_epu32, _mm_sha1msg2_epu32, _mm_sha1nexte_epu32,
    _mm_sha1rnds4_epu32, _mm_shuffle_epi8, _mm_storeu_si128, _mm_xor_si128, _mm512_aesdec_epi128,
    _mm512_aesdeclast_epi128, _mm512_aesenc_epi128, _mm512_aesenclast_epi128, _mm512_alignr_epi64,
    _mm512_broadcast_i32x4, _mm512_castsi128_si512, _mm512_extracti32x4_epi32, _mm512_inserti32x4,
    _mm512_loadu_si512, _mm512_setzero_si512, _mm512_storeu_si512, _mm512_ternarylogic_epi32,
    _mm512_xor_si512,
};

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::cbc_hmac::{OpenJob, SealJob};
use crate::{Direction, Error, sha1x16};

/// AES block and SHA-1 block sizes.
const BLOCK: usize = 16;
const SHA1_BLOCK: usize = 64;

/// True when this CPU has what the stitched code uses.
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("aes")
        && std::is_x86_feature_detected!("sha")
        && std::is_x86_feature_detected!("sse4.1")
        && std::is_x86_feature_detected!("ssse3")
}

/// AES round keys of one direction and the HMAC-SHA1 states after the ipad and opad
/// blocks (RFC 2104 §4), computed once per SA. Only built after [`available`] said yes:
/// every method relies on that.
#[derive(Clone)]
pub(crate) struct AesSha1 {
    rounds: usize,
    /// Sealing: the cipher's round keys. Opening: those of the Equivalent Inverse Cipher
    /// (FIPS-197 §5.3.5). One ESP SA direction only ever does one of the two, so the
    /// other schedule (240 bytes) is not kept.
    keys: [__m128i; 15],
    direction: Direction,
    inner: Sha1State,
    outer: Sha1State,
    /// The CPU has VAES and AVX-512: CBC decryption runs four blocks per instruction.
    vaes: bool,
    /// The CPU has AVX-512F/BW: batches hash sixteen packets at once (`sha1x16`).
    x16: bool,
}

impl AesSha1 {
    /// `aes_key` is 16, 24 or 32 bytes, `mac_key` at most 64 (ESP uses 20, RFC 2404 §3).
    /// Keyed for `direction` only: the other direction's calls fail with
    /// [`Error::Unsupported`]. Returns `None` when the CPU lacks AES-NI or SHA-NI.
    pub(crate) fn new(
        aes_key: &[u8],
        mac_key: &[u8],
        direction: Direction,
    ) -> Result<Option<Self>, Error> {
        if !matches!(aes_key.len(), 16 | 24 | 32) || mac_key.len() > SHA1_BLOCK {
            return Err(Error::InvalidKeyLength);
        }
        if !available() {
            return Ok(None);
        }
        // SAFETY: `available()` confirmed aes, sha, sse4.1 and ssse3 on this CPU.
        Ok(Some(unsafe {
            Self::new_unchecked(aes_key, mac_key, direction)
        }))
    }

    /// CBC-encrypts `msg[ct_start..]` in place with the IV `msg[ct_start - 16..ct_start]`,
    /// then writes the first `icv.len()` (at most 20) bytes of HMAC-SHA1 over all of `msg`
    /// to `icv`.
    pub(crate) fn seal(
        &self,
        msg: &mut [u8],
        ct_start: usize,
        icv: &mut [u8],
    ) -> Result<(), Error> {
        self.keyed_for(Direction::Seal)?;
        check(msg, ct_start, icv.len())?;
        // SAFETY: `self` exists only if `available()` held (see `new`).
        let tag = unsafe { self.seal_unchecked(msg, ct_start) };
        icv.copy_from_slice(&tag[..icv.len()]);
        Ok(())
    }

    /// Checks `icv` (the first `icv.len()` bytes of HMAC-SHA1 over `msg`, compared in
    /// constant time) and CBC-decrypts `msg[ct_start..]` in place. Decryption runs
    /// alongside the hash, so after `AuthenticationFailed` the ciphertext is gone: the
    /// caller drops the packet.
    pub(crate) fn open(&self, msg: &mut [u8], ct_start: usize, icv: &[u8]) -> Result<(), Error> {
        self.keyed_for(Direction::Open)?;
        check(msg, ct_start, icv.len())?;
        // SAFETY: as in `seal`.
        let tag = unsafe { self.open_unchecked(msg, ct_start) };
        if bool::from(tag[..icv.len()].ct_eq(icv)) {
            Ok(())
        } else {
            Err(Error::AuthenticationFailed)
        }
    }

    /// The bare block cipher on one block (the ESP CBC IV generator); sealing only.
    pub(crate) fn encrypt_block(&self, block: &mut [u8; BLOCK]) -> Result<(), Error> {
        self.keyed_for(Direction::Seal)?;
        // SAFETY: as in `seal`.
        unsafe { self.encrypt_block_unchecked(block) };
        Ok(())
    }

    /// The entry points check the direction, so that the code behind them never runs
    /// with the other direction's round keys.
    fn keyed_for(&self, direction: Direction) -> Result<(), Error> {
        if self.direction == direction {
            Ok(())
        } else {
            Err(Error::Unsupported)
        }
    }

    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    unsafe fn new_unchecked(aes_key: &[u8], mac_key: &[u8], direction: Direction) -> Self {
        let (rounds, mut enc) = expand_key(aes_key);
        let keys = match direction {
            Direction::Seal => enc,
            Direction::Open => {
                let mut dec = [_mm_setzero_si128(); 15];
                dec[0] = enc[rounds];
                for i in 1..rounds {
                    dec[i] = _mm_aesimc_si128(enc[rounds - i]);
                }
                dec[rounds] = enc[0];
                enc.zeroize();
                dec
            }
        };
        // RFC 2104 §2: K padded with zeros to the block size, XORed with ipad and opad.
        let mut pad = [0u8; SHA1_BLOCK];
        let mut inner = Sha1State::INIT;
        let mut outer = Sha1State::INIT;
        for (byte, state) in [(0x36u8, &mut inner), (0x5c, &mut outer)] {
            pad.fill(byte);
            for (p, k) in pad.iter_mut().zip(mac_key) {
                *p ^= k;
            }
            let (mut abcd, mut e) = state.load();
            compress_bytes(&mut abcd, &mut e, &pad);
            *state = Sha1State::store(abcd, e);
        }
        pad.zeroize();
        Self {
            rounds,
            keys,
            direction,
            inner,
            outer,
            vaes: std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("vaes"),
            x16: sha1x16::available(),
        }
    }

    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    unsafe fn encrypt_block_unchecked(&self, block: &mut [u8; BLOCK]) {
        let x = aes_encrypt(&self.keys, self.rounds, load(block));
        store(block, x);
    }

    /// Seals every job of `jobs` (results in the jobs), up to [`LANES`] packets at a
    /// time: their CBC chains interleaved round by round (one chain is latency-bound,
    /// independent chains fill the AES unit) and their hashes interleaved with them.
    /// `icv_len` is the SA's ICV length: other `icv` lengths are refused as in `seal`.
    pub(crate) fn seal_many(&self, jobs: &mut [SealJob<'_>], icv_len: usize) {
        if let Err(e) = self.keyed_for(Direction::Seal) {
            for job in jobs {
                job.result = Err(e);
            }
            return;
        }
        let mut group: [Option<&mut SealJob<'_>>; WIDE] = Default::default();
        let mut n = 0;
        for job in jobs.iter_mut() {
            job.result = if job.icv.len() == icv_len {
                check(job.msg, job.ct_start, icv_len)
            } else {
                Err(Error::InvalidLength)
            };
            if job.result.is_ok() && job.msg.len() < LANE_MIN_LEN {
                // SAFETY: `self` exists only if `available()` held; `check` passed.
                let tag = unsafe { self.seal_unchecked(job.msg, job.ct_start) };
                let n = job.icv.len();
                job.icv.copy_from_slice(&tag[..n]);
                continue;
            }
            if job.result.is_ok()
                && let Some(slot) = group.get_mut(n)
            {
                *slot = Some(job);
                n += 1;
            }
            if n == WIDE {
                self.seal_wide(&mut group);
                n = 0;
            }
        }
        if let Some(rest) = group.get_mut(..n) {
            self.seal_wide(rest);
        }
    }

    /// Opens every job of `jobs` (results in the jobs), up to [`LANES`] at a time with
    /// their hashes interleaved. As with [`Self::open`], a job that fails has its
    /// ciphertext decrypted anyway: the caller drops it.
    pub(crate) fn open_many(&self, jobs: &mut [OpenJob<'_>], icv_len: usize) {
        if let Err(e) = self.keyed_for(Direction::Open) {
            for job in jobs {
                job.result = Err(e);
            }
            return;
        }
        let mut group: [Option<&mut OpenJob<'_>>; WIDE] = Default::default();
        let mut n = 0;
        for job in jobs.iter_mut() {
            job.result = if job.icv.len() == icv_len {
                check(job.msg, job.ct_start, icv_len)
            } else {
                Err(Error::AuthenticationFailed)
            };
            if job.result.is_ok() && job.msg.len() < LANE_MIN_LEN {
                // SAFETY: as above.
                let tag = unsafe { self.open_unchecked(job.msg, job.ct_start) };
                if !bool::from(tag[..job.icv.len()].ct_eq(job.icv)) {
                    job.result = Err(Error::AuthenticationFailed);
                }
                continue;
            }
            if job.result.is_ok()
                && let Some(slot) = group.get_mut(n)
            {
                *slot = Some(job);
                n += 1;
            }
            if n == WIDE {
                self.open_wide(&mut group);
                n = 0;
            }
        }
        if let Some(rest) = group.get_mut(..n) {
            self.open_wide(rest);
        }
    }

    /// Up to [`WIDE`] checked jobs: with enough of them and AVX-512, the hashes run
    /// sixteen lanes wide after the CBC encryption; else four at a time stitched.
    fn seal_wide(&self, group: &mut [Option<&mut SealJob<'_>>]) {
        if self.x16 && group.len() >= X16_MIN_JOBS {
            let mut tags = [[0u8; 20]; WIDE];
            // SAFETY: `x16` is set only when the CPU has AVX-512F/BW; every job passed
            // `check`.
            unsafe { self.seal_x16(group, &mut tags) };
            for (job, tag) in group.iter_mut().zip(&tags) {
                if let Some(job) = job {
                    let n = job.icv.len();
                    job.icv.copy_from_slice(&tag[..n]);
                }
            }
            return;
        }
        for g in group.chunks_mut(LANES) {
            self.seal_group(g);
        }
    }

    fn open_wide(&self, group: &mut [Option<&mut OpenJob<'_>>]) {
        if self.x16 && group.len() >= X16_MIN_JOBS {
            let mut tags = [[0u8; 20]; WIDE];
            // SAFETY: as in `seal_wide`.
            unsafe { self.open_x16(group, &mut tags) };
            for (job, tag) in group.iter_mut().zip(&tags) {
                if let Some(job) = job {
                    let n = job.icv.len();
                    job.result = if bool::from(tag[..n].ct_eq(job.icv)) {
                        Ok(())
                    } else {
                        Err(Error::AuthenticationFailed)
                    };
                }
            }
            return;
        }
        for g in group.chunks_mut(LANES) {
            self.open_group(g);
        }
    }

    /// CBC-encrypts every job (sixteen chains in 512-bit registers with VAES, else four
    /// chains interleaved at a time), then hashes all of them sixteen lanes wide, then
    /// finishes the hashes four at a time.
    #[target_feature(enable = "aes,sha,sse4.1,ssse3,avx512f,avx512bw")]
    unsafe fn seal_x16(&self, group: &mut [Option<&mut SealJob<'_>>], tags: &mut [[u8; 20]; WIDE]) {
        let mut lanes: [Lane<'_>; WIDE] = core::array::from_fn(|_| Lane::empty());
        let mut n = 0;
        for (lane, job) in lanes.iter_mut().zip(group.iter_mut()) {
            if let Some(j) = job {
                *lane = self.lane(&mut *j.msg, j.ct_start);
                n += 1;
            }
        }
        if self.vaes {
            // SAFETY: `vaes` is set only when the CPU has AVX-512F and VAES.
            unsafe { self.encrypt_vaes(&mut lanes[..n]) };
        } else {
            self.encrypt_fours(&mut lanes[..n]);
        }
        self.hmac_x16(&lanes[..n], tags);
    }

    /// CBC encryption (NIST SP 800-38A §6.2) of up to [`WIDE`] lanes at once with VAES:
    /// one `vaesenc` on a 512-bit register runs a round of four blocks, and here those
    /// are the current blocks of four different packets' chains (within a packet each
    /// block waits for the previous ciphertext, so only other packets fill the
    /// register). Four registers keep sixteen chains in flight, enough to cover the
    /// instruction's latency, against four 128-bit chains in `encrypt_lanes`.
    ///
    /// Runs in phases: every lane with blocks left takes a slot, and the phase lasts as
    /// long as the shortest of them; a lane that runs out frees its slot for the next
    /// phase (the common batch, equal segments plus a shorter last one, takes two).
    /// Once four or fewer lanes are left, they finish in `encrypt_fours`: one register
    /// of four chains is no faster than four 128-bit chains and costs the gathers.
    #[target_feature(enable = "avx512f,vaes,aes,sha,sse4.1,ssse3")]
    unsafe fn encrypt_vaes(&self, lanes: &mut [Lane<'_>]) {
        let mut keys: [__m512i; 15] = self.keys.map(|k| _mm512_broadcast_i32x4(k));
        loop {
            let mut slots: [Option<&mut Lane<'_>>; WIDE] = Default::default();
            let mut count = 0;
            let mut steps = usize::MAX;
            for l in lanes.iter_mut() {
                let left = (l.msg.len() - l.done) / BLOCK;
                if left > 0
                    && let Some(slot) = slots.get_mut(count)
                {
                    steps = steps.min(left);
                    *slot = Some(l);
                    count += 1;
                }
            }
            if count <= LANES {
                break;
            }
            // Where each slot's blocks for this phase start: `steps` of them from where
            // its lane stands (`steps` is at most what every slotted lane has left).
            let mut prev = [_mm_setzero_si128(); WIDE];
            let mut at = [core::ptr::null_mut::<u8>(); WIDE];
            for ((slot, p), a) in slots.iter_mut().zip(&mut prev).zip(&mut at) {
                if let Some(l) = slot {
                    *p = l.prev;
                    if let Some(region) = l.msg.get_mut(l.done..l.done + steps * BLOCK) {
                        *a = region.as_mut_ptr();
                    }
                }
            }
            if at.iter().take(count).any(|a| a.is_null()) {
                // Not reachable (see `steps`); the four-chain path would still be right.
                break;
            }
            // The unused slots of the last register repeat slot 0 (its blocks and its
            // previous block): they compute, and store, exactly the bytes slot 0 does, so
            // the loop needs no per-slot test.
            let (at0, prev0) = (at[0], prev[0]);
            for (a, p) in at.iter_mut().zip(&mut prev).skip(count) {
                *a = at0;
                *p = prev0;
            }
            // The register count and the round count as constants, so the rounds are
            // unrolled and the broadcast round keys stay in registers.
            macro_rules! steps {
                ($rounds:literal) => {
                    match count.div_ceil(4) {
                        2 => vaes_steps::<2, $rounds>(&keys, &at, &mut prev, steps),
                        3 => vaes_steps::<3, $rounds>(&keys, &at, &mut prev, steps),
                        _ => vaes_steps::<4, $rounds>(&keys, &at, &mut prev, steps),
                    }
                };
            }
            // SAFETY: the CPU has AVX-512F and VAES (this function's contract). Every slot
            // of the registers used points at `steps` blocks of one lane's message: its
            // own slot's (disjoint from the others', and no reference to them is used until
            // the call returns) or slot 0's with slot 0's previous block.
            unsafe {
                match self.rounds {
                    10 => steps!(10),
                    12 => steps!(12),
                    _ => steps!(14),
                }
            }
            for (slot, p) in slots.iter_mut().zip(prev) {
                if let Some(l) = slot {
                    l.prev = p;
                    l.done += steps * BLOCK;
                }
            }
        }
        // The broadcast round keys are key material on the stack, as `enc` is in `self`.
        keys.zeroize();
        self.encrypt_fours(lanes);
    }

    /// `encrypt_lanes` on the lanes with blocks left, four at a time.
    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    fn encrypt_fours(&self, lanes: &mut [Lane<'_>]) {
        let mut left = lanes.iter_mut().filter(|l| l.done < l.msg.len());
        loop {
            let four: [Option<&mut Lane<'_>>; LANES] = core::array::from_fn(|_| left.next());
            match four {
                [Some(a), Some(b), Some(c), Some(d)] => self.encrypt_lanes([a, b, c, d]),
                [Some(a), Some(b), Some(c), None] => self.encrypt_lanes([a, b, c]),
                [Some(a), Some(b), None, _] => self.encrypt_lanes([a, b]),
                [Some(a), None, ..] => self.encrypt_lanes([a]),
                [None, ..] => break,
            }
        }
    }

    /// Hashes every job sixteen lanes wide, finishes the hashes (which read the tails
    /// before they are decrypted), then decrypts every job.
    #[target_feature(enable = "aes,sha,sse4.1,ssse3,avx512f,avx512bw")]
    unsafe fn open_x16(&self, group: &mut [Option<&mut OpenJob<'_>>], tags: &mut [[u8; 20]; WIDE]) {
        let mut lanes: [Lane<'_>; WIDE] = core::array::from_fn(|_| Lane::empty());
        let mut n = 0;
        for (lane, job) in lanes.iter_mut().zip(group.iter_mut()) {
            if let Some(j) = job {
                *lane = self.lane(&mut *j.msg, j.ct_start);
                n += 1;
            }
        }
        // The whole HMAC before any decryption: it reads the ciphertext.
        self.hmac_x16(&lanes[..n], tags);
        for l in &mut lanes[..n] {
            let len = l.msg.len();
            self.decrypt_upto(l.msg, &mut l.done, len, l.prev);
        }
    }

    /// HMAC-SHA1 (RFC 2104 §2) of every lane's whole message, sixteen lanes wide: each
    /// lane's whole blocks, then its tail and padding (FIPS 180-4 §5.1.1, one or two
    /// blocks), then the outer hash of every lane as one more step. With packets of one
    /// length all lanes end at the same step; a lane with fewer blocks sits out (its
    /// state masked) once its own are done. Steps run while at least
    /// [`X16_MIN_ACTIVE`] lanes have blocks left; the few longer lanes past that finish
    /// on SHA-NI, as a sixteen-lane step costs about what four SHA-NI blocks do.
    #[target_feature(enable = "aes,sha,sse4.1,ssse3,avx512f,avx512bw")]
    fn hmac_x16(&self, lanes: &[Lane<'_>], tags: &mut [[u8; 20]; WIDE]) {
        let n = lanes.len().min(WIDE);
        let Some(first) = lanes.first() else {
            return;
        };
        // Per lane: its whole blocks, its tail padded into `pads[l].1` blocks, the total.
        let mut full = [0usize; WIDE];
        let mut pads = [([0u8; 2 * SHA1_BLOCK], 0usize); WIDE];
        let mut total = [0usize; WIDE];
        for (((f, p), t), l) in full.iter_mut().zip(&mut pads).zip(&mut total).zip(lanes) {
            *f = l.msg.len() / SHA1_BLOCK;
            p.1 = pad_into(&mut p.0, l.msg, *f * SHA1_BLOCK);
            *t = *f + p.1;
        }
        // The X16_MIN_ACTIVE-th longest lane (or the shortest, for fewer lanes) sets the
        // steps: until then at least that many lanes compute something useful.
        let mut longest = total;
        longest[..n].sort_unstable_by(|a, b| b.cmp(a));
        let steps = longest[X16_MIN_ACTIVE.min(n) - 1];
        let mut h = sha1x16::States::splat(self.inner.0);
        // First the blocks every lane has (all of them but the padding, for packets of
        // one length) in one run; lanes past `n` repeat lane 0 and are ignored.
        let common = full[..n].iter().copied().min().unwrap_or(0).min(steps);
        let mut msgs: [&[u8]; WIDE] = [&*first.msg; WIDE];
        for (m, l) in msgs.iter_mut().zip(lanes) {
            *m = &*l.msg;
        }
        let common = if h.compress_run(&msgs, common) {
            common
        } else {
            0
        };
        for s in common..steps {
            // Done lanes, and those past `n`, point at lane 0's padding and are masked.
            let mut blocks = [sha1_block_at(&pads[0].0, 0); WIDE];
            let mut active = 0u16;
            for (i, (((b, l), f), p)) in blocks
                .iter_mut()
                .zip(lanes)
                .zip(&full)
                .zip(&pads)
                .enumerate()
            {
                if s < *f {
                    *b = sha1_block_at(l.msg, s * SHA1_BLOCK);
                    active |= 1 << i;
                } else if s - f < p.1 {
                    *b = sha1_block_at(&p.0, (s - f) * SHA1_BLOCK);
                    active |= 1 << i;
                }
            }
            h.compress(&blocks, active);
        }
        let inner = h.lanes();
        let finished = total[..n].iter().filter(|t| **t <= steps).count();
        // One sixteen-lane outer block for all, unless only a few lanes need it.
        let outer = (finished >= X16_MIN_ACTIVE).then(|| h.outer(self.outer.0).lanes());
        for (i, (tag, st)) in tags.iter_mut().zip(inner).enumerate().take(n) {
            let (mut abcd, mut e) = Sha1State(st).load();
            if total[i] <= steps {
                *tag = match &outer {
                    Some(o) => Sha1State(o[i]).digest(),
                    None => self.outer(abcd, e),
                };
                continue;
            }
            // A long lane past the steps: its remaining blocks one after the other.
            let (msg, f, p) = (&*lanes[i].msg, full[i], &pads[i]);
            for s in steps..total[i] {
                let block = if s < f {
                    sha1_block_at(msg, s * SHA1_BLOCK)
                } else {
                    sha1_block_at(&p.0, (s - f) * SHA1_BLOCK)
                };
                compress_bytes(&mut abcd, &mut e, block);
            }
            *tag = self.outer(abcd, e);
        }
    }

    /// CBC encryption only, `L` chains interleaved while all have blocks left, each
    /// from where its lane stands.
    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    fn encrypt_lanes<const L: usize>(&self, mut lanes: [&mut Lane<'_>; L]) {
        let steps = lanes
            .iter()
            .map(|l| (l.msg.len() - l.done) / BLOCK)
            .min()
            .unwrap_or(0);
        let mut prev = lanes.each_ref().map(|l| l.prev);
        for _ in 0..steps {
            let mut x = [_mm_setzero_si128(); L];
            for ((x, p), l) in x.iter_mut().zip(&prev).zip(&lanes) {
                *x = _mm_xor_si128(load(block_at(l.msg, l.done)), *p);
            }
            prev = aes_encrypt_lanes(&self.keys, self.rounds, x);
            for (p, l) in prev.iter().zip(&mut lanes) {
                store(block_at_mut(l.msg, l.done), *p);
                l.done += BLOCK;
            }
        }
        for (l, mut p) in lanes.iter_mut().zip(prev) {
            while l.done < l.msg.len() {
                let b = block_at_mut(l.msg, l.done);
                p = aes_encrypt(&self.keys, self.rounds, _mm_xor_si128(load(b), p));
                store(b, p);
                l.done += BLOCK;
            }
            l.prev = p;
        }
    }

    fn seal_group(&self, group: &mut [Option<&mut SealJob<'_>>]) {
        let mut tags = [[0u8; 20]; LANES];
        // SAFETY (each arm): `self` exists only if `available()` held; every job in the
        // group passed `check`.
        match group {
            [Some(a), Some(b), Some(c), Some(d)] => unsafe {
                self.seal_lanes([a, b, c, d].map(seal_msg), &mut tags)
            },
            [Some(a), Some(b), Some(c)] => unsafe {
                self.seal_lanes([a, b, c].map(seal_msg), &mut tags)
            },
            [Some(a), Some(b)] => unsafe { self.seal_lanes([a, b].map(seal_msg), &mut tags) },
            [Some(a)] => tags[0] = unsafe { self.seal_unchecked(a.msg, a.ct_start) },
            _ => {}
        }
        for (job, tag) in group.iter_mut().zip(&tags) {
            if let Some(job) = job {
                let n = job.icv.len();
                job.icv.copy_from_slice(&tag[..n]);
            }
        }
        group.fill_with(|| None);
    }

    fn open_group(&self, group: &mut [Option<&mut OpenJob<'_>>]) {
        let mut tags = [[0u8; 20]; LANES];
        // SAFETY: as in `seal_group`.
        match group {
            [Some(a), Some(b), Some(c), Some(d)] => unsafe {
                self.open_lanes([a, b, c, d].map(open_msg), &mut tags)
            },
            [Some(a), Some(b), Some(c)] => unsafe {
                self.open_lanes([a, b, c].map(open_msg), &mut tags)
            },
            [Some(a), Some(b)] => unsafe { self.open_lanes([a, b].map(open_msg), &mut tags) },
            [Some(a)] => tags[0] = unsafe { self.open_unchecked(a.msg, a.ct_start) },
            _ => {}
        }
        for (job, tag) in group.iter_mut().zip(&tags) {
            if let Some(job) = job {
                let n = job.icv.len();
                job.result = if bool::from(tag[..n].ct_eq(job.icv)) {
                    Ok(())
                } else {
                    Err(Error::AuthenticationFailed)
                };
            }
        }
        group.fill_with(|| None);
    }

    /// `L` packets sealed together: each turn encrypts four blocks of every packet, the
    /// packets' chains interleaved round by round, and hashes one SHA-1 block of every
    /// packet that the previous turns finished (so the hashes do not wait for this turn's
    /// AES and the two units overlap, as in the one-packet loop). When the shortest
    /// packet runs out, each packet finishes on its own.
    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    unsafe fn seal_lanes<const L: usize>(
        &self,
        msgs: [(&mut [u8], usize); L],
        tags: &mut [[u8; 20]; LANES],
    ) {
        let mut lanes = msgs.map(|(msg, ct_start)| self.lane(msg, ct_start));
        let turns = lanes
            .iter()
            .map(|l| (l.msg.len() - l.done) / (4 * BLOCK))
            .min()
            .unwrap_or(0);
        for _ in 0..turns {
            let ready = lanes.each_ref().map(|l| l.done);
            let mut prev = lanes.each_ref().map(|l| l.prev);
            for step in 0..4 {
                let mut x = [_mm_setzero_si128(); L];
                for ((x, p), l) in x.iter_mut().zip(&prev).zip(&lanes) {
                    *x = _mm_xor_si128(load(block_at(l.msg, l.done + step * BLOCK)), *p);
                }
                prev = aes_encrypt_lanes(&self.keys, self.rounds, x);
                for (p, l) in prev.iter().zip(&mut lanes) {
                    store(block_at_mut(l.msg, l.done + step * BLOCK), *p);
                }
            }
            for ((l, p), r) in lanes.iter_mut().zip(prev).zip(ready) {
                l.prev = p;
                l.done += 4 * BLOCK;
                if l.hashed + SHA1_BLOCK <= r {
                    compress_bytes(&mut l.abcd, &mut l.e, sha1_block_at(l.msg, l.hashed));
                    l.hashed += SHA1_BLOCK;
                }
            }
        }
        for l in &mut lanes {
            self.seal_rest(l);
        }
        self.finish_lanes(lanes.each_ref(), tags);
    }

    /// `L` packets opened together: each turn hashes two SHA-1 blocks of every packet
    /// (independent hashes keep the SHA unit busy) and then decrypts what was hashed.
    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    unsafe fn open_lanes<const L: usize>(
        &self,
        msgs: [(&mut [u8], usize); L],
        tags: &mut [[u8; 20]; LANES],
    ) {
        let mut lanes = msgs.map(|(msg, ct_start)| self.lane(msg, ct_start));
        while lanes
            .iter()
            .all(|l| l.hashed + 2 * SHA1_BLOCK <= l.msg.len())
        {
            for half in [0, SHA1_BLOCK] {
                for l in &mut lanes {
                    compress_bytes(&mut l.abcd, &mut l.e, sha1_block_at(l.msg, l.hashed + half));
                }
            }
            for l in &mut lanes {
                l.hashed += 2 * SHA1_BLOCK;
                l.prev = self.decrypt_upto(l.msg, &mut l.done, l.hashed, l.prev);
            }
        }
        for l in &mut lanes {
            self.open_hash_rest(l);
        }
        // The tails are hashed before they are decrypted, as in `open_from`.
        self.finish_lanes(lanes.each_ref(), tags);
        for l in &mut lanes {
            let len = l.msg.len();
            self.decrypt_upto(l.msg, &mut l.done, len, l.prev);
        }
    }

    /// The last hash blocks of several packets (whole blocks, padding, outer hash), the
    /// packets' hashes interleaved: alone each is a chain of dependent SHA rounds.
    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    fn finish_lanes<const L: usize>(&self, lanes: [&Lane<'_>; L], tags: &mut [[u8; 20]; LANES]) {
        let mut st = lanes.each_ref().map(|l| (l.abcd, l.e, l.hashed));
        let mut more = true;
        while more {
            more = false;
            for (s, l) in st.iter_mut().zip(&lanes) {
                if s.2 + SHA1_BLOCK <= l.msg.len() {
                    compress_bytes(&mut s.0, &mut s.1, sha1_block_at(l.msg, s.2));
                    s.2 += SHA1_BLOCK;
                    more = true;
                }
            }
        }
        let mut pads = [([0u8; 2 * SHA1_BLOCK], 0); L];
        for ((p, s), l) in pads.iter_mut().zip(&st).zip(&lanes) {
            *p = pad(l.msg, s.2);
        }
        for b in 0..2 {
            for (s, (last, blocks)) in st.iter_mut().zip(&pads) {
                if b < *blocks {
                    compress_bytes(&mut s.0, &mut s.1, sha1_block_at(last, b * SHA1_BLOCK));
                }
            }
        }
        for (s, tag) in st.iter().zip(tags.iter_mut()) {
            *tag = self.outer(s.0, s.1);
        }
    }

    /// A packet before its first block: the IV as the previous ciphertext block, the
    /// hash after the ipad block.
    #[inline]
    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    fn lane<'a>(&self, msg: &'a mut [u8], ct_start: usize) -> Lane<'a> {
        let (abcd, e) = self.inner.load();
        let prev = load(block_at(msg, ct_start - BLOCK));
        Lane {
            msg,
            done: ct_start,
            hashed: 0,
            prev,
            abcd,
            e,
        }
    }

    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    unsafe fn seal_unchecked(&self, msg: &mut [u8], ct_start: usize) -> [u8; 20] {
        let lane = self.lane(msg, ct_start);
        self.seal_from(lane)
    }

    /// Seals the rest of a packet, one chain.
    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    fn seal_from(&self, mut lane: Lane<'_>) -> [u8; 20] {
        self.seal_rest(&mut lane);
        self.finish(lane.abcd, lane.e, lane.msg, lane.hashed)
    }

    /// Encrypts the rest of a packet (one chain), hashing alongside; the hash's last
    /// blocks are left to `finish`.
    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    fn seal_rest(&self, lane: &mut Lane<'_>) {
        let Lane {
            msg,
            done,
            hashed,
            prev,
            abcd,
            e,
        } = lane;
        let (mut done, mut hashed, mut prev) = (*done, *hashed, *prev);
        let len = msg.len();
        // msg[..done] is final (authenticated-only bytes and ciphertext); msg[..hashed]
        // is in the hash.
        while len - done >= 4 * BLOCK {
            // The hash only reads bytes finished before this turn, so its rounds do not
            // wait for this turn's AES chain and the two overlap.
            let ready = done;
            for _ in 0..4 {
                let b = block_at_mut(msg, done);
                prev = aes_encrypt(&self.keys, self.rounds, _mm_xor_si128(load(b), prev));
                store(b, prev);
                done += BLOCK;
            }
            if hashed + SHA1_BLOCK <= ready {
                compress_bytes(abcd, e, sha1_block_at(msg, hashed));
                hashed += SHA1_BLOCK;
            }
        }
        while done < len {
            let b = block_at_mut(msg, done);
            prev = aes_encrypt(&self.keys, self.rounds, _mm_xor_si128(load(b), prev));
            store(b, prev);
            done += BLOCK;
        }
        lane.done = done;
        lane.hashed = hashed;
        lane.prev = prev;
    }

    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    unsafe fn open_unchecked(&self, msg: &mut [u8], ct_start: usize) -> [u8; 20] {
        let lane = self.lane(msg, ct_start);
        self.open_from(lane)
    }

    /// Opens the rest of a packet on its own.
    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    fn open_from(&self, mut lane: Lane<'_>) -> [u8; 20] {
        self.open_hash_rest(&mut lane);
        // The tail (under one SHA-1 block) is hashed before it is decrypted, as above.
        let tag = self.finish(lane.abcd, lane.e, lane.msg, lane.hashed);
        let len = lane.msg.len();
        self.decrypt_upto(lane.msg, &mut lane.done, len, lane.prev);
        tag
    }

    /// Hashes a packet two SHA-1 blocks at a time, decrypting behind the hash, while two
    /// whole blocks are left.
    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    fn open_hash_rest(&self, lane: &mut Lane<'_>) {
        let Lane {
            msg,
            done,
            hashed,
            prev,
            abcd,
            e,
        } = lane;
        let len = msg.len();
        // msg[ct_start..done] is plaintext already; the hash has read msg[..hashed].
        while *hashed + 2 * SHA1_BLOCK <= len {
            // The hash loads its blocks before the blocks under them are decrypted in
            // place (program order), so it sees ciphertext. Two hash blocks per turn
            // give the decryption eight independent blocks at a time.
            compress_bytes(abcd, e, sha1_block_at(msg, *hashed));
            compress_bytes(abcd, e, sha1_block_at(msg, *hashed + SHA1_BLOCK));
            *hashed += 2 * SHA1_BLOCK;
            *prev = self.decrypt_upto(msg, done, *hashed, *prev);
        }
    }

    /// Decrypts the whole blocks in `msg[*done..limit]` in place, four at a time where it
    /// can (they are independent in CBC decryption), and returns the last ciphertext
    /// block for the next call.
    #[inline]
    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    fn decrypt_upto(
        &self,
        msg: &mut [u8],
        done: &mut usize,
        limit: usize,
        mut prev: __m128i,
    ) -> __m128i {
        let limit = limit.min(msg.len());
        if self.vaes && *done + 8 * BLOCK <= limit {
            // SAFETY: `vaes` is set only when the CPU has AVX-512F and VAES.
            prev = unsafe { self.decrypt_vaes(msg, done, limit, prev) };
        }
        while *done + 8 * BLOCK <= limit {
            let at = *done;
            let mut c = [_mm_setzero_si128(); 8];
            for (i, b) in c.iter_mut().enumerate() {
                *b = load(block_at(msg, at + i * BLOCK));
            }
            let lo = aes_decrypt4(&self.keys, self.rounds, [c[0], c[1], c[2], c[3]]);
            let hi = aes_decrypt4(&self.keys, self.rounds, [c[4], c[5], c[6], c[7]]);
            store(block_at_mut(msg, at), _mm_xor_si128(lo[0], prev));
            for i in 1..4 {
                store(
                    block_at_mut(msg, at + i * BLOCK),
                    _mm_xor_si128(lo[i], c[i - 1]),
                );
            }
            for i in 0..4 {
                store(
                    block_at_mut(msg, at + (4 + i) * BLOCK),
                    _mm_xor_si128(hi[i], c[3 + i]),
                );
            }
            prev = c[7];
            *done += 8 * BLOCK;
        }
        while *done + 4 * BLOCK <= limit {
            let at = *done;
            let c = [
                load(block_at(msg, at)),
                load(block_at(msg, at + BLOCK)),
                load(block_at(msg, at + 2 * BLOCK)),
                load(block_at(msg, at + 3 * BLOCK)),
            ];
            let p = aes_decrypt4(&self.keys, self.rounds, c);
            store(block_at_mut(msg, at), _mm_xor_si128(p[0], prev));
            store(block_at_mut(msg, at + BLOCK), _mm_xor_si128(p[1], c[0]));
            store(block_at_mut(msg, at + 2 * BLOCK), _mm_xor_si128(p[2], c[1]));
            store(block_at_mut(msg, at + 3 * BLOCK), _mm_xor_si128(p[3], c[2]));
            prev = c[3];
            *done += 4 * BLOCK;
        }
        while *done + BLOCK <= limit {
            let b = block_at_mut(msg, *done);
            let c = load(b);
            store(
                b,
                _mm_xor_si128(aes_decrypt(&self.keys, self.rounds, c), prev),
            );
            prev = c;
            *done += BLOCK;
        }
        prev
    }

    /// `decrypt_upto` eight blocks at a time in two 512-bit registers (VAES: one
    /// instruction per round for four blocks, a quarter of the AES-NI instructions). Each
    /// block's CBC
    /// "previous ciphertext" is the register shifted by one block, the first taken from
    /// `prev`, so nothing is read back after it was decrypted in place.
    #[target_feature(enable = "avx512f,vaes,aes,sse4.1")]
    unsafe fn decrypt_vaes(
        &self,
        msg: &mut [u8],
        done: &mut usize,
        limit: usize,
        prev: __m128i,
    ) -> __m128i {
        let last = self.rounds.min(14);
        let mut prevz = _mm512_broadcast_i32x4(prev);
        while *done + 8 * BLOCK <= limit {
            let at = *done;
            let c0 = load512(msg, at);
            let c1 = load512(msg, at + 4 * BLOCK);
            let p0 = _mm512_alignr_epi64::<6>(c0, prevz);
            let p1 = _mm512_alignr_epi64::<6>(c1, c0);
            let k0 = _mm512_broadcast_i32x4(self.keys[0]);
            let mut x0 = _mm512_xor_si512(c0, k0);
            let mut x1 = _mm512_xor_si512(c1, k0);
            for k in &self.keys[1..last] {
                let k = _mm512_broadcast_i32x4(*k);
                x0 = _mm512_aesdec_epi128(x0, k);
                x1 = _mm512_aesdec_epi128(x1, k);
            }
            let k = _mm512_broadcast_i32x4(self.keys[last]);
            x0 = _mm512_aesdeclast_epi128(x0, k);
            x1 = _mm512_aesdeclast_epi128(x1, k);
            store512(msg, at, _mm512_xor_si512(x0, p0));
            store512(msg, at + 4 * BLOCK, _mm512_xor_si512(x1, p1));
            prevz = c1;
            *done += 8 * BLOCK;
        }
        _mm512_extracti32x4_epi32::<3>(prevz)
    }

    /// Hashes `msg[hashed..]` (under two SHA-1 blocks) with the padding (FIPS 180-4
    /// §5.1.1) and runs the outer hash (RFC 2104 §2).
    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    fn finish(&self, mut abcd: __m128i, mut e: __m128i, msg: &[u8], mut hashed: usize) -> [u8; 20] {
        while hashed + SHA1_BLOCK <= msg.len() {
            compress_bytes(&mut abcd, &mut e, sha1_block_at(msg, hashed));
            hashed += SHA1_BLOCK;
        }
        let (last, blocks) = pad(msg, hashed);
        for block in last.chunks_exact(SHA1_BLOCK).take(blocks) {
            compress_bytes(&mut abcd, &mut e, sha1_block_at(block, 0));
        }
        self.outer(abcd, e)
    }

    /// The outer hash over the inner digest `abcd`/`e` (RFC 2104 §2).
    #[target_feature(enable = "aes,sha,sse4.1,ssse3")]
    fn outer(&self, abcd: __m128i, e: __m128i) -> [u8; 20] {
        // The outer message is the 20-byte inner digest, padded: in the byte-swapped
        // word order the rounds take, A..D is `abcd` as it is, E goes first in the next
        // word followed by the 0x80 pad byte, and the last word is the bit length
        // (64 + 20 bytes).
        let (mut oabcd, mut oe) = self.outer.load();
        let m1 = _mm_or_si128(e, _mm_set_epi32(0, i32::MIN, 0, 0));
        let m3 = _mm_set_epi32(0, 0, 0, ((SHA1_BLOCK + 20) * 8) as i32);
        compress(&mut oabcd, &mut oe, [abcd, m1, _mm_setzero_si128(), m3]);
        Sha1State::store(oabcd, oe).digest()
    }
}

impl Drop for AesSha1 {
    fn drop(&mut self) {
        self.keys.zeroize();
        self.inner.0.zeroize();
        self.outer.0.zeroize();
    }
}

/// Packets [`AesSha1::seal_many`] and [`AesSha1::open_many`] run together. Four CBC
/// chains fill the AES unit (measured: one chain 1.6 GB/s, four 5.4 GB/s at 1408 bytes);
/// more would only add register pressure.
pub(crate) const LANES: usize = 4;

/// Jobs gathered before a multi-packet call runs: one `sha1x16` call's worth.
const WIDE: usize = sha1x16::WIDTH;

/// Fewer lanes with blocks left than this finish on SHA-NI (see `hmac_x16`).
const X16_MIN_ACTIVE: usize = 4;

/// Below this many jobs the sixteen-lane hash costs more than SHA-NI on each (it costs
/// the same whatever the number of lanes used; one SHA-NI stream about a sixth of it).
const X16_MIN_JOBS: usize = 6;

/// Shorter packets go one at a time: with a block or two per packet, setting up lanes
/// costs more than it saves (crypto bench `cbc_hmac_many` at 64 bytes).
const LANE_MIN_LEN: usize = 256;

/// One packet's progress: `msg[..done]` is finished (sealed, or opened from `ct_start`),
/// `msg[..hashed]` is in the inner hash `abcd`/`e`; `prev` is the last ciphertext block.
struct Lane<'a> {
    msg: &'a mut [u8],
    done: usize,
    hashed: usize,
    prev: __m128i,
    abcd: __m128i,
    e: __m128i,
}

impl Lane<'_> {
    /// A placeholder in fixed arrays; never processed.
    fn empty() -> Self {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        let zero = unsafe { _mm_setzero_si128() };
        Lane {
            msg: &mut [],
            done: 0,
            hashed: 0,
            prev: zero,
            abcd: zero,
            e: zero,
        }
    }
}

fn seal_msg<'a>(job: &'a mut &mut SealJob<'_>) -> (&'a mut [u8], usize) {
    (&mut *job.msg, job.ct_start)
}

fn open_msg<'a>(job: &'a mut &mut OpenJob<'_>) -> (&'a mut [u8], usize) {
    (&mut *job.msg, job.ct_start)
}

/// SHA-1's five words A..E.
#[derive(Clone, Copy)]
struct Sha1State([u32; 5]);

impl Sha1State {
    /// FIPS 180-4 §5.3.1.
    const INIT: Self = Self([
        0x6745_2301,
        0xefcd_ab89,
        0x98ba_dcfe,
        0x1032_5476,
        0xc3d2_e1f0,
    ]);

    /// The SHA-NI layout: A in the highest lane of one register, E in the highest lane of
    /// another.
    #[target_feature(enable = "sse4.1")]
    fn load(&self) -> (__m128i, __m128i) {
        let [a, b, c, d, e] = self.0.map(|w| w as i32);
        (_mm_set_epi32(a, b, c, d), _mm_set_epi32(e, 0, 0, 0))
    }

    #[target_feature(enable = "sse4.1")]
    fn store(abcd: __m128i, e: __m128i) -> Self {
        Self([
            _mm_extract_epi32::<3>(abcd) as u32,
            _mm_extract_epi32::<2>(abcd) as u32,
            _mm_extract_epi32::<1>(abcd) as u32,
            _mm_extract_epi32::<0>(abcd) as u32,
            _mm_extract_epi32::<3>(e) as u32,
        ])
    }

    fn digest(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        for (o, w) in out.chunks_exact_mut(4).zip(self.0) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

/// The last one or two SHA-1 blocks of `msg` after `msg[..hashed]` (under one block
/// left): the tail, the 0x80 byte, zeros and the bit length (FIPS 180-4 §5.1.1), counting
/// the ipad block too.
fn pad(msg: &[u8], hashed: usize) -> ([u8; 2 * SHA1_BLOCK], usize) {
    let mut last = [0u8; 2 * SHA1_BLOCK];
    let blocks = pad_into(&mut last, msg, hashed);
    (last, blocks)
}

/// [`pad`] into `last` (zeros on entry), returning the number of blocks.
fn pad_into(last: &mut [u8; 2 * SHA1_BLOCK], msg: &[u8], hashed: usize) -> usize {
    let tail = msg.get(hashed..).unwrap_or_default();
    let n = tail.len().min(SHA1_BLOCK - 1);
    last[..n].copy_from_slice(&tail[..n]);
    last[n] = 0x80;
    let blocks = if n < SHA1_BLOCK - 8 { 1 } else { 2 };
    let bits = ((SHA1_BLOCK + msg.len()) as u64) * 8;
    let end = blocks * SHA1_BLOCK;
    last[end - 8..end].copy_from_slice(&bits.to_be_bytes());
    blocks
}

fn check(msg: &[u8], ct_start: usize, icv_len: usize) -> Result<(), Error> {
    let ct_len = msg
        .len()
        .checked_sub(ct_start)
        .ok_or(Error::InvalidLength)?;
    if ct_start < BLOCK || !ct_len.is_multiple_of(BLOCK) || icv_len > 20 {
        return Err(Error::InvalidLength);
    }
    Ok(())
}

// Blocks at byte offsets the loops above keep in range; an offset outside would be a bug
// here, never the peer's doing, and stops at the slice bound check.
#[allow(clippy::indexing_slicing)]
fn block_at(msg: &[u8], at: usize) -> &[u8; BLOCK] {
    &msg[at..at + BLOCK].as_chunks::<BLOCK>().0[0]
}

#[allow(clippy::indexing_slicing)]
fn block_at_mut(msg: &mut [u8], at: usize) -> &mut [u8; BLOCK] {
    &mut msg[at..at + BLOCK].as_chunks_mut::<BLOCK>().0[0]
}

#[allow(clippy::indexing_slicing)]
fn sha1_block_at(msg: &[u8], at: usize) -> &[u8; SHA1_BLOCK] {
    &msg[at..at + SHA1_BLOCK].as_chunks::<SHA1_BLOCK>().0[0]
}

/// Four blocks from `msg[at..]`; the callers keep `at + 64` in range (a bound check
/// stops it otherwise).
#[allow(clippy::indexing_slicing)]
#[inline]
#[target_feature(enable = "avx512f")]
fn load512(msg: &[u8], at: usize) -> __m512i {
    let b = &msg[at..at + 4 * BLOCK];
    // SAFETY: `b` is 64 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
}

#[allow(clippy::indexing_slicing)]
#[inline]
#[target_feature(enable = "avx512f")]
fn store512(msg: &mut [u8], at: usize, v: __m512i) {
    let b = &mut msg[at..at + 4 * BLOCK];
    // SAFETY: `b` is 64 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm512_storeu_si512(b.as_mut_ptr().cast(), v) }
}

#[inline(always)]
fn load(b: &[u8; BLOCK]) -> __m128i {
    // SAFETY: `b` is 16 readable bytes; `loadu` has no alignment requirement; SSE2 is part
    // of the x86_64 baseline.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

#[inline(always)]
fn store(b: &mut [u8; BLOCK], v: __m128i) {
    // SAFETY: `b` is 16 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm_storeu_si128(b.as_mut_ptr().cast(), v) }
}

/// `steps` CBC steps on `4 * R` slots: slot `4r + j` is 128-bit lane `j` of register
/// `r`; its blocks start at `at[4r + j]`, its last ciphertext block (the IV at first) is
/// `prev[4r + j]`, updated on return. `ROUNDS` is 10, 12 or 14 (FIPS 197 §5, Nr).
///
/// # Safety
///
/// The CPU has AVX-512F and VAES. For every slot `s < 4 * R`, `at[s]` is valid for
/// reads and writes of `steps * BLOCK` bytes and nothing else accesses them during the
/// call; slots with the same `at` have the same `prev` (they then store the same bytes).
// Slot indices are `4r + j` with `r < R <= 4` and `j < 4`: always below `WIDE`.
#[allow(clippy::indexing_slicing)]
#[inline]
#[target_feature(enable = "avx512f,vaes,aes,sse4.1")]
unsafe fn vaes_steps<const R: usize, const ROUNDS: usize>(
    keys: &[__m512i; 15],
    at: &[*mut u8; WIDE],
    prev: &mut [__m128i; WIDE],
    steps: usize,
) {
    const { assert!(R <= WIDE / 4 && ROUNDS <= 14) };
    let mut c: [__m512i; R] = core::array::from_fn(|r| join4(prev, 4 * r));
    for step in 0..steps {
        let off = step * BLOCK;
        let mut x = [_mm512_setzero_si512(); R];
        for (r, x) in x.iter_mut().enumerate() {
            let p: [__m128i; 4] = core::array::from_fn(|j| {
                // SAFETY: `off + BLOCK <= steps * BLOCK` bytes from `at` are readable
                // (the caller's promise); `loadu` has no alignment requirement.
                unsafe { _mm_loadu_si128(at[4 * r + j].add(off).cast()) }
            });
            // Plaintext XOR previous ciphertext XOR round key 0 in one instruction
            // (SP 800-38A §6.2: C_j = CIPH_K(P_j ^ C_{j-1}); FIPS 197 §5.1 AddRoundKey).
            *x = _mm512_ternarylogic_epi32::<0x96>(join4(&p, 0), c[r], keys[0]);
        }
        for k in &keys[1..ROUNDS] {
            for x in &mut x {
                *x = _mm512_aesenc_epi128(*x, *k);
            }
        }
        for x in &mut x {
            *x = _mm512_aesenclast_epi128(*x, keys[ROUNDS]);
        }
        c = x;
        for (r, x) in x.iter().enumerate() {
            for (j, v) in split4(*x).into_iter().enumerate() {
                // SAFETY: as for the loads, writable; a slot sharing its `at` with another
                // stores the same bytes (the caller's promise).
                unsafe { _mm_storeu_si128(at[4 * r + j].add(off).cast(), v) };
            }
        }
    }
    for (r, c) in c.iter().enumerate() {
        for (j, v) in split4(*c).into_iter().enumerate() {
            prev[4 * r + j] = v;
        }
    }
}

/// Four blocks, `b[at..at + 4]`, as the four 128-bit lanes of one register (lane 0
/// lowest); the caller keeps `at + 4` within `b` (a bound check stops it otherwise).
#[allow(clippy::indexing_slicing)]
#[inline]
#[target_feature(enable = "avx512f")]
fn join4(b: &[__m128i], at: usize) -> __m512i {
    let v = _mm512_castsi128_si512(b[at]);
    let v = _mm512_inserti32x4::<1>(v, b[at + 1]);
    let v = _mm512_inserti32x4::<2>(v, b[at + 2]);
    _mm512_inserti32x4::<3>(v, b[at + 3])
}

/// The four 128-bit lanes of a register, lowest first.
#[inline]
#[target_feature(enable = "avx512f")]
fn split4(v: __m512i) -> [__m128i; 4] {
    [
        _mm512_extracti32x4_epi32::<0>(v),
        _mm512_extracti32x4_epi32::<1>(v),
        _mm512_extracti32x4_epi32::<2>(v),
        _mm512_extracti32x4_epi32::<3>(v),
    ]
}

/// FIPS-197 §5.2 key expansion. SubWord comes from AESKEYGENASSIST (its lane 0 is
/// SubWord of lane 1), which works the same for 128-, 192- and 256-bit keys. Words are
/// little-endian, as the register lanes are, so RotWord is a right rotation by 8.
#[target_feature(enable = "aes,sse4.1")]
fn expand_key(key: &[u8]) -> (usize, [__m128i; 15]) {
    const RCON: [u32; 10] = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1b, 0x36];
    let nk = key.len() / 4;
    let rounds = nk + 6;
    let mut w = [0u32; 4 * 15];
    for (word, bytes) in w.iter_mut().zip(key.chunks_exact(4)) {
        *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    for i in nk..4 * (rounds + 1) {
        let mut t = w[i - 1];
        if i % nk == 0 {
            t = sub_word(t.rotate_right(8)) ^ RCON[i / nk - 1];
        } else if nk > 6 && i % nk == 4 {
            t = sub_word(t);
        }
        w[i] = w[i - nk] ^ t;
    }
    let mut keys = [_mm_setzero_si128(); 15];
    for (k, words) in keys.iter_mut().zip(w.chunks_exact(4)).take(rounds + 1) {
        *k = _mm_set_epi32(
            words[3] as i32,
            words[2] as i32,
            words[1] as i32,
            words[0] as i32,
        );
    }
    w.zeroize();
    (rounds, keys)
}

#[target_feature(enable = "aes,sse4.1")]
fn sub_word(x: u32) -> u32 {
    let v = _mm_set_epi32(0, 0, x as i32, 0);
    _mm_cvtsi128_si32(_mm_aeskeygenassist_si128::<0>(v)) as u32
}

#[inline]
#[target_feature(enable = "aes")]
fn aes_encrypt(keys: &[__m128i; 15], rounds: usize, block: __m128i) -> __m128i {
    let mut x = _mm_xor_si128(block, keys[0]);
    // Written out per key size so the round count is a constant in each arm.
    match rounds {
        10 => {
            for k in &keys[1..10] {
                x = _mm_aesenc_si128(x, *k);
            }
            _mm_aesenclast_si128(x, keys[10])
        }
        12 => {
            for k in &keys[1..12] {
                x = _mm_aesenc_si128(x, *k);
            }
            _mm_aesenclast_si128(x, keys[12])
        }
        _ => {
            for k in &keys[1..14] {
                x = _mm_aesenc_si128(x, *k);
            }
            _mm_aesenclast_si128(x, keys[14])
        }
    }
}

/// Independent blocks (of different packets) encrypted together, round by round.
#[inline]
#[target_feature(enable = "aes")]
fn aes_encrypt_lanes<const L: usize>(
    keys: &[__m128i; 15],
    rounds: usize,
    blocks: [__m128i; L],
) -> [__m128i; L] {
    let mut x = blocks;
    for b in &mut x {
        *b = _mm_xor_si128(*b, keys[0]);
    }
    let last = rounds.min(14);
    for k in &keys[1..last] {
        for b in &mut x {
            *b = _mm_aesenc_si128(*b, *k);
        }
    }
    for b in &mut x {
        *b = _mm_aesenclast_si128(*b, keys[last]);
    }
    x
}

#[inline]
#[target_feature(enable = "aes")]
fn aes_decrypt(keys: &[__m128i; 15], rounds: usize, block: __m128i) -> __m128i {
    let mut x = _mm_xor_si128(block, keys[0]);
    let last = rounds.min(14);
    for k in &keys[1..last] {
        x = _mm_aesdec_si128(x, *k);
    }
    _mm_aesdeclast_si128(x, keys[last])
}

#[inline]
#[target_feature(enable = "aes")]
fn aes_decrypt4(keys: &[__m128i; 15], rounds: usize, c: [__m128i; 4]) -> [__m128i; 4] {
    let mut x = c;
    for b in &mut x {
        *b = _mm_xor_si128(*b, keys[0]);
    }
    let last = rounds.min(14);
    for k in &keys[1..last] {
        for b in &mut x {
            *b = _mm_aesdec_si128(*b, *k);
        }
    }
    for b in &mut x {
        *b = _mm_aesdeclast_si128(*b, keys[last]);
    }
    x
}

/// One SHA-1 block from memory: its big-endian words byte-swapped into the lane order
/// the SHA instructions expect (first word in the highest lane).
#[inline]
#[target_feature(enable = "sha,sse4.1,ssse3")]
fn compress_bytes(abcd: &mut __m128i, e: &mut __m128i, block: &[u8; SHA1_BLOCK]) {
    let swap = _mm_set_epi64x(0x0001_0203_0405_0607, 0x0809_0a0b_0c0d_0e0f);
    let (words, _) = block.as_chunks::<BLOCK>();
    let m = [
        _mm_shuffle_epi8(load(&words[0]), swap),
        _mm_shuffle_epi8(load(&words[1]), swap),
        _mm_shuffle_epi8(load(&words[2]), swap),
        _mm_shuffle_epi8(load(&words[3]), swap),
    ];
    compress(abcd, e, m);
}

/// The SHA-1 compression function (FIPS 180-4 §6.1.2) on SHA-NI, four rounds per
/// SHA1RNDS4. `m` holds W0..W15 four to a register. The schedule runs four words at a
/// time: W[t..t+4] = SHA1MSG2(SHA1MSG1(W[t-16..], W[t-12..]) ^ W[t-8..], W[t-4..]).
/// SHA1NEXTE turns the A of the state four rounds back into this group's E and adds the
/// words.
#[inline]
#[target_feature(enable = "sha,sse4.1")]
fn compress(abcd: &mut __m128i, e: &mut __m128i, m: [__m128i; 4]) {
    let abcd_in = *abcd;
    let e_in = *e;
    let [mut w0, mut w1, mut w2, mut w3] = m;
    let mut x = *abcd;
    let mut prev = x;
    // Rounds 0-3: E is the input E.
    let mut group_e = _mm_add_epi32(e_in, w0);
    x = _mm_sha1rnds4_epu32::<0>(x, group_e);
    // Written out (not a loop) so every register stays a register and the round function
    // (FIPS 180-4 §4.1.1: f and K change every 20 rounds) is a constant.
    macro_rules! group {
        ($f:literal, $w:ident) => {
            group_e = _mm_sha1nexte_epu32(prev, $w);
            prev = x;
            x = _mm_sha1rnds4_epu32::<$f>(x, group_e);
        };
        ($f:literal, $w:ident = $a:ident, $b:ident, $c:ident, $d:ident) => {
            $w = _mm_sha1msg2_epu32(_mm_xor_si128(_mm_sha1msg1_epu32($a, $b), $c), $d);
            group!($f, $w);
        };
    }
    group!(0, w1);
    group!(0, w2);
    group!(0, w3);
    group!(0, w0 = w0, w1, w2, w3);
    group!(1, w1 = w1, w2, w3, w0);
    group!(1, w2 = w2, w3, w0, w1);
    group!(1, w3 = w3, w0, w1, w2);
    group!(1, w0 = w0, w1, w2, w3);
    group!(1, w1 = w1, w2, w3, w0);
    group!(2, w2 = w2, w3, w0, w1);
    group!(2, w3 = w3, w0, w1, w2);
    group!(2, w0 = w0, w1, w2, w3);
    group!(2, w1 = w1, w2, w3, w0);
    group!(2, w2 = w2, w3, w0, w1);
    group!(3, w3 = w3, w0, w1, w2);
    group!(3, w0 = w0, w1, w2, w3);
    group!(3, w1 = w1, w2, w3, w0);
    group!(3, w2 = w2, w3, w0, w1);
    group!(3, w3 = w3, w0, w1, w2);
    let _ = (w0, w1, w2, w3, group_e);
    *e = _mm_sha1nexte_epu32(prev, e_in);
    *abcd = _mm_add_epi32(x, abcd_in);
}

#[cfg(test)]
mod tests {
    use hmac::{Hmac, Mac};

    use super::*;
    use crate::test_util::{Rng, hex};

    /// The cipher as built for this CPU (VAES on) and a copy that CBC-encrypts four
    /// chains at a time with AES-NI (the path without VAES); `None` (the test then has
    /// nothing to compare) when the CPU lacks VAES or the sixteen-lane hash.
    fn vaes_and_four(key: &[u8], mac_key: &[u8]) -> Option<(AesSha1, AesSha1)> {
        let vaes = AesSha1::new(key, mac_key, Direction::Seal).unwrap()?;
        if !vaes.vaes || !vaes.x16 {
            eprintln!("no VAES/AVX-512 here: the sixteen-chain path is not tested");
            return None;
        }
        let mut four = vaes.clone();
        four.vaes = false;
        Some((vaes, four))
    }

    /// `(ct_start, message)` pairs sealed with one `seal_many` call.
    fn seal_batch(c: &AesSha1, plain: &[(usize, Vec<u8>)]) -> Vec<(Vec<u8>, [u8; 12])> {
        let mut out: Vec<(Vec<u8>, [u8; 12])> =
            plain.iter().map(|(_, m)| (m.clone(), [0u8; 12])).collect();
        let mut jobs: Vec<SealJob<'_>> = out
            .iter_mut()
            .zip(plain)
            .map(|((m, icv), (ct_start, _))| SealJob::new(m, *ct_start, icv))
            .collect();
        c.seal_many(&mut jobs, 12);
        assert!(jobs.iter().all(|j| j.result.is_ok()));
        drop(jobs);
        out
    }

    /// The same packets through the one-packet path.
    fn seal_each(c: &AesSha1, plain: &[(usize, Vec<u8>)]) -> Vec<(Vec<u8>, [u8; 12])> {
        plain
            .iter()
            .map(|(ct_start, m)| {
                let mut m = m.clone();
                let mut icv = [0u8; 12];
                c.seal(&mut m, *ct_start, &mut icv).unwrap();
                (m, icv)
            })
            .collect()
    }

    /// Ciphertext blocks per packet for length mix `mix` of a batch of `jobs`.
    fn mix_blocks(rng: &mut Rng, mix: usize, jobs: usize) -> Vec<usize> {
        let base = 16 + rng.below(105);
        (0..jobs)
            .map(|j| match mix {
                // Equal segments of one super-packet.
                0 => base,
                // Equal segments and a shorter last one (the common batch).
                1 if j + 1 == jobs => 1 + rng.below(base),
                1 => base,
                // Anything, including packets short enough to go one by one.
                2 => rng.below(121),
                // Odd block counts: the SHA-1 blocks end inside an AES block run.
                3 => 2 * rng.below(60) + 1,
                // Around the smallest packets that go in lanes (`LANE_MIN_LEN`).
                _ => (LANE_MIN_LEN - 32) / BLOCK - 1 + rng.below(4),
            })
            .collect()
    }

    /// The VAES path gives exactly the bytes and ICVs of the one-packet path and of the
    /// four-chain AES-NI path, for 1..=16, 17 and 33 packets under every key size and
    /// five length mixes (equal, equal plus a shorter last, random, odd block counts,
    /// minimum sizes), with authenticated prefixes of several lengths.
    #[test]
    fn vaes_seal_many_matches_one_packet_path() {
        let mut rng = Rng(0x5eed_0fa5_e5e5);
        let batches = (1..=16).chain([17, 33]);
        for (round, jobs) in batches.cycle().take(18 * 6).enumerate() {
            let key = rng.bytes([16, 24, 32][round % 3]);
            let mac_key = rng.bytes(20);
            let Some((vaes, four)) = vaes_and_four(&key, &mac_key) else {
                return;
            };
            for mix in 0..5 {
                let plain: Vec<(usize, Vec<u8>)> = mix_blocks(&mut rng, mix, jobs)
                    .into_iter()
                    .map(|blocks| {
                        // ESP: SPI, sequence number and IV (24 bytes), or other
                        // prefixes of at least the IV.
                        let ct_start = if round % 2 == 0 {
                            24
                        } else {
                            16 + rng.below(40)
                        };
                        (ct_start, rng.bytes(ct_start + BLOCK * blocks))
                    })
                    .collect();
                let want = seal_each(&four, &plain);
                assert_eq!(
                    seal_batch(&four, &plain),
                    want,
                    "four chains, {jobs} jobs mix {mix}"
                );
                assert_eq!(
                    seal_batch(&vaes, &plain),
                    want,
                    "VAES, {jobs} jobs mix {mix}"
                );
            }
        }
    }

    /// HMAC-SHA1 of `msg` with `mac_key` by RustCrypto `hmac`.
    fn hmac_sha1(mac_key: &[u8], msg: &[u8]) -> [u8; 20] {
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(mac_key).unwrap();
        mac.update(msg);
        mac.finalize().into_bytes().into()
    }

    /// Message lengths (in bytes) of one `hmac_x16` batch of `n` lanes for shape `shape`.
    fn hmac_lengths(rng: &mut Rng, shape: usize, n: usize) -> Vec<usize> {
        // Tails that take one padding block (0, 1, 55 bytes) or two (56, 63).
        let edge = |rng: &mut Rng| 64 * (1 + rng.below(23)) + [0, 1, 55, 56, 63][rng.below(5)];
        let base = edge(rng);
        (0..n)
            .map(|l| match shape {
                // One length for all (segments of one super-packet).
                0 => base,
                // Equal and a shorter last one.
                1 if l + 1 == n => 16 + rng.below(base - 15),
                1 => base,
                // Block-boundary lengths, all different.
                2 => edge(rng),
                // Anything from 16 bytes (one AES block after the IV) up.
                3 => 16 + rng.below(1500),
                // One to five long lanes among short ones: the long ones run past the
                // sixteen-lane steps and finish on SHA-NI (with fewer than four of them),
                // or stay in lanes (four and more).
                _ if l < 1 + shape - 4 => 1000 + rng.below(500),
                _ => 16 + rng.below(200),
            })
            .collect()
    }

    /// `hmac_x16` (tails, padding and outer hashes in lanes, long lanes finished on
    /// SHA-NI) gives RustCrypto's HMAC-SHA1 for 1..=16 lanes of every length shape:
    /// equal, equal plus a shorter last, block-boundary tails needing one or two padding
    /// blocks, random, and one to five long lanes among short ones.
    #[test]
    fn hmac_x16_matches_hmac() {
        let mut rng = Rng(0x4ac_0016_1a4e);
        for round in 0..200 {
            let mac_key = rng.bytes(20);
            let Some(c) = AesSha1::new(&[7; 16], &mac_key, Direction::Seal).unwrap() else {
                return;
            };
            if !c.x16 {
                eprintln!("no AVX-512 here: hmac_x16 is not tested");
                return;
            }
            let n = 1 + round % WIDE;
            let shape = (round / WIDE) % 9;
            let mut msgs: Vec<Vec<u8>> = hmac_lengths(&mut rng, shape, n)
                .into_iter()
                .map(|len| rng.bytes(len))
                .collect();
            let want: Vec<[u8; 20]> = msgs.iter().map(|m| hmac_sha1(&mac_key, m)).collect();
            let lanes: Vec<Lane<'_>> = msgs
                .iter_mut()
                // SAFETY: `c` exists, so the CPU has AES-NI, SHA-NI and SSE4.1.
                .map(|m| unsafe { c.lane(m, BLOCK) })
                .collect();
            let mut tags = [[0u8; 20]; WIDE];
            // SAFETY: `x16` is set only when the CPU has AVX-512F/BW; `c` exists, so the
            // CPU has AES-NI and SHA-NI.
            unsafe { c.hmac_x16(&lanes, &mut tags) };
            for (l, (got, want)) in tags.iter().zip(&want).enumerate() {
                assert_eq!(got, want, "lane {l} of {n}, shape {shape}");
            }
        }
    }

    /// Sixteen equal-length packets (the batch of a TSO super-packet) open in one call;
    /// a changed ICV byte, a changed first ciphertext byte or a changed last byte (in
    /// the padded tail block) fails its own job only, whichever lane it is in.
    #[test]
    fn sixteen_equal_packets_refuse_a_tampered_one() {
        let mut rng = Rng(0x007a_3e4e_d1c5);
        let (key, mac_key) = (rng.bytes(16), rng.bytes(20));
        let Some(sealer) = AesSha1::new(&key, &mac_key, Direction::Seal).unwrap() else {
            return;
        };
        let opener = AesSha1::new(&key, &mac_key, Direction::Open)
            .unwrap()
            .unwrap();
        for len in [24 + 1408, 24 + 1392, 24 + 256] {
            let plain: Vec<(usize, Vec<u8>)> = (0..WIDE).map(|_| (24, rng.bytes(len))).collect();
            let sealed = seal_batch(&sealer, &plain);
            for bad in 0..WIDE {
                let mut msgs: Vec<Vec<u8>> = sealed.iter().map(|(m, _)| m.clone()).collect();
                let mut icvs: Vec<[u8; 12]> = sealed.iter().map(|(_, icv)| *icv).collect();
                match bad % 3 {
                    0 => icvs[bad][bad % 12] ^= 0x01,
                    1 => msgs[bad][24] ^= 0x80,
                    _ => msgs[bad][len - 1] ^= 0x10,
                }
                let mut jobs: Vec<OpenJob<'_>> = msgs
                    .iter_mut()
                    .zip(&icvs)
                    .map(|(m, icv)| OpenJob::new(m, 24, icv))
                    .collect();
                opener.open_many(&mut jobs, 12);
                for (j, job) in jobs.iter().enumerate() {
                    let want = if j == bad {
                        Err(Error::AuthenticationFailed)
                    } else {
                        Ok(())
                    };
                    assert_eq!(job.result, want, "len {len}, job {j}, tampered {bad}");
                }
                drop(jobs);
                for (j, (m, (_, p))) in msgs.iter().zip(&plain).enumerate() {
                    if j != bad {
                        assert_eq!(m, p, "len {len}, job {j} plaintext");
                    }
                }
            }
        }
    }

    /// Without AVX-512 (`x16` off: four packets at a time, stitched on SHA-NI) and with
    /// it, `seal_many` and `open_many` give the one-packet path's bytes, ICVs and
    /// plaintexts for 1..=16, 17 and 33 packets of every length mix.
    #[test]
    fn many_with_and_without_lanes_match_one_packet_path() {
        let mut rng = Rng(0xfa11_bac4);
        for (round, jobs) in (1..=16).chain([17, 33]).enumerate() {
            let (key, mac_key) = (rng.bytes(16), rng.bytes(20));
            let Some(x16) = AesSha1::new(&key, &mac_key, Direction::Seal).unwrap() else {
                return;
            };
            let mut plain_path = x16.clone();
            plain_path.x16 = false;
            plain_path.vaes = false;
            let open_x16 = AesSha1::new(&key, &mac_key, Direction::Open)
                .unwrap()
                .unwrap();
            let mut open_plain = open_x16.clone();
            open_plain.x16 = false;
            open_plain.vaes = false;
            for mix in 0..5 {
                let plain: Vec<(usize, Vec<u8>)> = mix_blocks(&mut rng, mix, jobs)
                    .into_iter()
                    .map(|blocks| {
                        let ct_start = 16 + rng.below(40);
                        (ct_start, rng.bytes(ct_start + BLOCK * blocks))
                    })
                    .collect();
                let want = seal_each(&plain_path, &plain);
                for (name, sealer, opener) in [
                    ("lanes", &x16, &open_x16),
                    ("no lanes", &plain_path, &open_plain),
                ] {
                    let sealed = seal_batch(sealer, &plain);
                    assert_eq!(sealed, want, "{name}, round {round}, {jobs} jobs mix {mix}");
                    let mut msgs: Vec<Vec<u8>> = sealed.iter().map(|(m, _)| m.clone()).collect();
                    let mut jobs_v: Vec<OpenJob<'_>> = msgs
                        .iter_mut()
                        .zip(&sealed)
                        .zip(&plain)
                        .map(|((m, (_, icv)), (ct_start, _))| OpenJob::new(m, *ct_start, icv))
                        .collect();
                    opener.open_many(&mut jobs_v, 12);
                    assert!(jobs_v.iter().all(|j| j.result.is_ok()), "{name} open");
                    drop(jobs_v);
                    for (m, (_, p)) in msgs.iter().zip(&plain) {
                        assert_eq!(m, p, "{name} plaintext, {jobs} jobs mix {mix}");
                    }
                }
            }
        }
    }

    /// NIST SP 800-38A F.2.1 (AES-128) and F.2.5 (AES-256) CBC encryption, all four
    /// blocks, as sixteen packets in one batch behind authenticated prefixes of sixteen
    /// different lengths; each ICV is HMAC-SHA1 (RustCrypto `hmac`) over the packet.
    #[test]
    fn vaes_sixteen_packets_known_answer() {
        let iv = hex("000102030405060708090a0b0c0d0e0f");
        let plain = hex(
            "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
             30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710",
        );
        let cases = [
            (
                "2b7e151628aed2a6abf7158809cf4f3c",
                "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2
                 73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7",
            ),
            (
                "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
                "f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d
                 39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b",
            ),
        ];
        let mac_key = [0x0b; 20];
        for (key, cipher) in cases {
            let Some((vaes, _)) = vaes_and_four(&hex(key), &mac_key) else {
                return;
            };
            // Prefixes of 200..=215 bytes: every packet is long enough to go in lanes.
            let packets: Vec<(usize, Vec<u8>)> = (0..WIDE)
                .map(|j| {
                    let prefix = vec![j as u8; 200 + j];
                    let msg = [&prefix[..], &iv[..], &plain[..]].concat();
                    (prefix.len() + BLOCK, msg)
                })
                .collect();
            for ((sealed, icv), (ct_start, _)) in seal_batch(&vaes, &packets).iter().zip(&packets) {
                assert_eq!(sealed[*ct_start..], hex(cipher)[..], "key {key}");
                let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&mac_key).unwrap();
                mac.update(sealed);
                assert_eq!(icv[..], mac.finalize().into_bytes()[..12], "key {key}");
            }
        }
    }
}
