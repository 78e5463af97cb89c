//! SHA-1 compression over sixteen independent messages at once, one per 32-bit lane of
//! AVX-512 registers (FIPS 180-4 §6.1.2 written for vectors).
//!
//! SHA-NI runs one SHA-1 block in about a hundred cycles on the lab's Ice Lake and two
//! interleaved streams do not go much faster (the SHA unit is busy, not waiting). The
//! plain round function on sixteen lanes costs about ten vector instructions per round
//! for sixteen blocks, and AVX-512 has the rotate (`vprold`) and the three-input
//! boolean functions (`vpternlogd`: Ch, Parity and Maj in one instruction each) that
//! SHA-1 needs. Each lane's words are gathered from its own buffer.

use core::arch::x86_64::{
    __m512i, _mm512_add_epi32, _mm512_loadu_si512, _mm512_mask_mov_epi32, _mm512_rol_epi32,
    _mm512_set_epi64, _mm512_set1_epi32, _mm512_setzero_si512, _mm512_shuffle_epi8,
    _mm512_shuffle_i32x4, _mm512_storeu_si512, _mm512_ternarylogic_epi32, _mm512_unpackhi_epi32,
    _mm512_unpackhi_epi64, _mm512_unpacklo_epi32, _mm512_unpacklo_epi64, _mm512_xor_si512,
};

/// Lanes per call.
pub(crate) const WIDTH: usize = 16;

/// True when this CPU has what [`States`] uses.
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
}

/// Sixteen SHA-1 states A..E transposed: register `k` holds word `k` of every lane, so
/// each lane can start from its own state (a packet's tail and padding after its
/// message blocks) and an inner digest is already the first five words of the outer
/// message (RFC 2104 §2).
#[derive(Clone, Copy)]
pub(crate) struct States([__m512i; 5]);

impl States {
    /// Every lane at `state`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn splat(state: [u32; 5]) -> Self {
        let mut h = [_mm512_setzero_si512(); 5];
        for (hv, w) in h.iter_mut().zip(state) {
            *hv = _mm512_set1_epi32(w as i32);
        }
        Self(h)
    }

    /// `blocks` compressions on every lane: lane `l` hashes the first `blocks * 64`
    /// bytes of `msgs[l]`. The batch's bulk: no per-lane choice or mask per block.
    /// Does nothing (and returns false) unless every lane holds that many bytes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(crate) fn compress_run(&mut self, msgs: &[&[u8]; WIDTH], blocks: usize) -> bool {
        let Some(len) = blocks.checked_mul(64) else {
            return false;
        };
        if msgs.iter().any(|m| m.len() < len) {
            return false;
        }
        let base = msgs.map(<[u8]>::as_ptr);
        let swap = byte_swap();
        let mut h = self.0;
        for at in (0..len).step_by(64) {
            let mut rows = [_mm512_setzero_si512(); WIDTH];
            for (r, b) in rows.iter_mut().zip(base) {
                // SAFETY: `at + 64 <= len <= msgs[l].len()` (checked above), so the 64
                // bytes are in lane `l`'s slice; `loadu` has no alignment requirement.
                *r = unsafe { _mm512_loadu_si512(b.add(at).cast()) };
            }
            let mut w = transpose(rows);
            for wj in &mut w {
                *wj = _mm512_shuffle_epi8(*wj, swap);
            }
            h = rounds(h, w);
        }
        self.0 = h;
        true
    }

    /// One SHA-1 compression per lane: lane `l` hashes `blocks[l]` when bit `l` of
    /// `active` is set and keeps its state otherwise (the lane still computes, on
    /// whatever block it points at, so the cost does not depend on which lanes run).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(crate) fn compress(&mut self, blocks: &[&[u8; 64]; WIDTH], active: u16) {
        let mut rows = [_mm512_setzero_si512(); WIDTH];
        for (r, m) in rows.iter_mut().zip(blocks) {
            // SAFETY: `m` is 64 readable bytes; `loadu` has no alignment requirement.
            *r = unsafe { _mm512_loadu_si512(m.as_ptr().cast()) };
        }
        let mut w = transpose(rows);
        let swap = byte_swap();
        for wj in &mut w {
            *wj = _mm512_shuffle_epi8(*wj, swap);
        }
        let next = rounds(self.0, w);
        for (h, n) in self.0.iter_mut().zip(next) {
            *h = _mm512_mask_mov_epi32(*h, active, n);
        }
    }

    /// The HMAC outer hash (RFC 2104 §2) of each lane's inner digest: one block from
    /// `outer` (the state after the opad block) over the 20 digest bytes, the 0x80 byte
    /// and the bit length of 64 + 20 bytes (FIPS 180-4 §5.1.1). The digest's words are
    /// the message's words as they stand, so nothing is loaded or transposed.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(crate) fn outer(&self, outer: [u32; 5]) -> Self {
        let mut w = [_mm512_setzero_si512(); WIDTH];
        w[..5].copy_from_slice(&self.0);
        w[5] = _mm512_set1_epi32(i32::MIN);
        w[15] = _mm512_set1_epi32((64 + 20) * 8);
        Self(rounds(Self::splat(outer).0, w))
    }

    /// Each lane's A..E.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn lanes(&self) -> [[u32; 5]; WIDTH] {
        let mut words = [[0u32; WIDTH]; 5];
        for (out, v) in words.iter_mut().zip(self.0) {
            // SAFETY: `out` is 64 writable bytes; `storeu` has no alignment requirement.
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), v) };
        }
        let mut lanes = [[0u32; 5]; WIDTH];
        for (l, lane) in lanes.iter_mut().enumerate() {
            for (k, word) in lane.iter_mut().enumerate() {
                *word = words[k][l];
            }
        }
        lanes
    }
}

/// Runs `blocks` SHA-1 compressions on each lane: lane `l` starts from `state` and
/// hashes the `blocks * 64` bytes of `msgs[l]` from its start; returns each lane's A..E.
/// Lanes past `msgs.len()` repeat lane 0 and are ignored.
///
/// # Safety
///
/// The CPU has AVX-512F and AVX-512BW ([`available`]).
#[cfg(test)]
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn compress(state: [u32; 5], msgs: &[&[u8]], blocks: usize) -> [[u32; 5]; WIDTH] {
    let first: &[u8] = msgs.first().copied().unwrap_or_default();
    let mut lanes = [first; WIDTH];
    for (l, m) in lanes.iter_mut().zip(msgs) {
        *l = m;
    }
    // Half the blocks in one run, the rest one block at a time, so that the test below
    // checks both against the reference.
    let mut h = States::splat(state);
    assert!(h.compress_run(&lanes, blocks / 2));
    for blk in blocks / 2..blocks {
        let at = blk * 64;
        let mut b = [&[0u8; 64]; WIDTH];
        for (b, m) in b.iter_mut().zip(lanes) {
            *b = &m[at..at + 64].as_chunks::<64>().0[0];
        }
        h.compress(&b, u16::MAX);
    }
    h.lanes()
}

/// Big-endian words (FIPS 180-4 §3.1): the shuffle that swaps the bytes of each 32-bit
/// lane.
#[inline]
#[target_feature(enable = "avx512f")]
fn byte_swap() -> __m512i {
    _mm512_set_epi64(
        0x0c0d_0e0f_0809_0a0b,
        0x0405_0607_0001_0203,
        0x0c0d_0e0f_0809_0a0b,
        0x0405_0607_0001_0203,
        0x0c0d_0e0f_0809_0a0b,
        0x0405_0607_0001_0203,
        0x0c0d_0e0f_0809_0a0b,
        0x0405_0607_0001_0203,
    )
}

/// The 80 rounds (FIPS 180-4 §6.1.2) from `h` over the message words `w` (register `j`
/// holds word `j` of every lane), plus the feed-forward: the next states.
// The last rounds' schedule words go into the ring and are never read again.
#[allow(unused_assignments)]
#[inline]
#[target_feature(enable = "avx512f")]
fn rounds(h: [__m512i; 5], mut w: [__m512i; WIDTH]) -> [__m512i; 5] {
    let [mut a, mut b, mut c, mut d, mut e] = h;
    // Written out round by round (literal `t`), so the message ring stays in
    // registers (there are 32) and `t < 16` is decided at compile time.
    macro_rules! round {
        ($t:literal, $f:literal, $k:literal) => {
            let t: usize = $t;
            let wt = if t < 16 {
                w[t]
            } else {
                // W[t] = ROTL1(W[t-3] ^ W[t-8] ^ W[t-14] ^ W[t-16]), kept in a ring
                // of sixteen.
                let x = _mm512_ternarylogic_epi32::<0x96>(
                    w[(t + 13) % 16],
                    w[(t + 8) % 16],
                    w[(t + 2) % 16],
                );
                let n = _mm512_rol_epi32::<1>(_mm512_xor_si512(x, w[t % 16]));
                w[t % 16] = n;
                n
            };
            let f = _mm512_ternarylogic_epi32::<$f>(b, c, d);
            let kw = _mm512_add_epi32(wt, _mm512_set1_epi32($k as i32));
            let temp = _mm512_add_epi32(
                _mm512_add_epi32(_mm512_rol_epi32::<5>(a), f),
                _mm512_add_epi32(e, kw),
            );
            e = d;
            d = c;
            c = _mm512_rol_epi32::<30>(b);
            b = a;
            a = temp;
        };
    }
    macro_rules! rounds {
        ($f:literal, $k:literal; $($t:literal)*) => {
            $( round!($t, $f, $k); )*
        };
    }
    // FIPS 180-4 §4.1.1 and §4.2.1: Ch, Parity, Maj, Parity and their constants.
    rounds!(0xca, 0x5a82_7999u32; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19);
    rounds!(0x96, 0x6ed9_eba1u32; 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39);
    rounds!(0xe8, 0x8f1b_bcdcu32; 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59);
    rounds!(0x96, 0xca62_c1d6u32; 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79);
    let mut out = h;
    for (hv, v) in out.iter_mut().zip([a, b, c, d, e]) {
        *hv = _mm512_add_epi32(*hv, v);
    }
    out
}

/// A 16×16 transpose of 32-bit words: out[j][i] = rows[i][j]. Within 128-bit chunks
/// first (unpack 32, then 64 bits: register 4g+m, chunk c = word 4c+m of lanes
/// 4g..4g+3), then across chunks (two rounds of 128-bit shuffles).
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose(r: [__m512i; 16]) -> [__m512i; 16] {
    let mut t = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        let (a, b, c, d) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
        let (ab_lo, ab_hi) = (_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
        let (cd_lo, cd_hi) = (_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
        t[4 * g] = _mm512_unpacklo_epi64(ab_lo, cd_lo);
        t[4 * g + 1] = _mm512_unpackhi_epi64(ab_lo, cd_lo);
        t[4 * g + 2] = _mm512_unpacklo_epi64(ab_hi, cd_hi);
        t[4 * g + 3] = _mm512_unpackhi_epi64(ab_hi, cd_hi);
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for m in 0..4 {
        let p01 = _mm512_shuffle_i32x4::<0x44>(t[m], t[4 + m]);
        let q01 = _mm512_shuffle_i32x4::<0x44>(t[8 + m], t[12 + m]);
        let p23 = _mm512_shuffle_i32x4::<0xee>(t[m], t[4 + m]);
        let q23 = _mm512_shuffle_i32x4::<0xee>(t[8 + m], t[12 + m]);
        out[m] = _mm512_shuffle_i32x4::<0x88>(p01, q01);
        out[4 + m] = _mm512_shuffle_i32x4::<0xdd>(p01, q01);
        out[8 + m] = _mm512_shuffle_i32x4::<0x88>(p23, q23);
        out[12 + m] = _mm512_shuffle_i32x4::<0xdd>(p23, q23);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS 180-4 §5.3.1.
    const INIT: [u32; 5] = [
        0x6745_2301,
        0xefcd_ab89,
        0x98ba_dcfe,
        0x1032_5476,
        0xc3d2_e1f0,
    ];

    /// FIPS 180-4 §6.1.2 as written, one block at a time, for comparison.
    fn reference(state: [u32; 5], msg: &[u8], blocks: usize) -> [u32; 5] {
        let mut h = state;
        for b in msg[..blocks * 64].chunks_exact(64) {
            let mut w = [0u32; 80];
            for t in 0..16 {
                w[t] = u32::from_be_bytes(b[4 * t..4 * t + 4].try_into().unwrap());
            }
            for t in 16..80 {
                w[t] = (w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16]).rotate_left(1);
            }
            let [mut a, mut b, mut c, mut d, mut e] = h;
            for (t, wt) in w.iter().enumerate() {
                let (f, k) = match t {
                    0..20 => ((b & c) | (!b & d), 0x5a82_7999),
                    20..40 => (b ^ c ^ d, 0x6ed9_eba1),
                    40..60 => ((b & c) | (b & d) | (c & d), 0x8f1b_bcdc),
                    _ => (b ^ c ^ d, 0xca62_c1d6),
                };
                let temp = a
                    .rotate_left(5)
                    .wrapping_add(f)
                    .wrapping_add(e)
                    .wrapping_add(k)
                    .wrapping_add(*wt);
                (e, d, c, b, a) = (d, c, b.rotate_left(30), a, temp);
            }
            for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
                *x = x.wrapping_add(y);
            }
        }
        h
    }

    /// Sixteen (and fewer) messages of different contents give, lane by lane, what one
    /// message at a time gives; the FIPS 180-4 "abc" example (padded by hand) is one of
    /// them.
    #[test]
    fn lanes_match_one_at_a_time() {
        if !available() {
            eprintln!("no AVX-512 here: skipped");
            return;
        }
        let mut abc = [0u8; 64];
        abc[..3].copy_from_slice(b"abc");
        abc[3] = 0x80;
        abc[63] = 24;
        let msgs: Vec<Vec<u8>> = (0..WIDTH)
            .map(|l| {
                if l == 3 {
                    abc.to_vec()
                } else {
                    (0..64 * 5 + l).map(|i| (i * 31 + l * 7) as u8).collect()
                }
            })
            .collect();
        for n in [1, 5, 15, 16] {
            let refs: Vec<&[u8]> = msgs.iter().take(n).map(Vec::as_slice).collect();
            let blocks = if n > 3 { 1 } else { 5 };
            // SAFETY: `available()` said yes.
            let got = unsafe { compress(INIT, &refs, blocks) };
            for (l, m) in refs.iter().enumerate() {
                assert_eq!(got[l], reference(INIT, m, blocks), "lane {l} of {n}");
            }
        }
        // SAFETY: as above.
        let got = unsafe { compress(INIT, &[&abc], 1) };
        assert_eq!(
            got[0],
            [
                0xa999_3e36,
                0x4706_816a,
                0xba3e_2571,
                0x7850_c26c,
                0x9cd0_d89d
            ]
        );
    }
}
