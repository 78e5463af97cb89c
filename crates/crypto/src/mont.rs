//! Montgomery arithmetic modulo a fixed odd prime of `L` limbs, and the
//! constant-time fixed-window exponentiation the MODP groups use (modp.rs).
//!
//! The multiplication is Montgomery's (HAC 14.36) in the Coarsely Integrated
//! Operand Scanning form of Koç, Acar and Kaliski, "Analyzing and Comparing
//! Montgomery Multiplication Algorithms", IEEE Micro 16(3), 1996: one pass per
//! limb of `b` that both accumulates a·b_i and adds the multiple m·p that
//! clears the low limb. Limbs are crypto-bigint's `Word` (u64 on 64-bit
//! targets) with `WideWord` (u128) products.
//!
//! Squarings have their own routine (HAC 14.16 then Montgomery's reduction),
//! and a fixed public base (the group generator) can have its powers
//! precomputed (`FixedBase`), which removes the squarings from `generate`.
//!
//! On x86_64 CPUs with BMI2 and ADX, `mul` and `sqr` run mont_x86.rs instead
//! (`mulx` with two independent carry chains; on Zen 4 products are 1.8-1.9x,
//! squarings 1.5-1.8x as fast for 1024 to 2048 bits); it computes
//! the same values, and the portable routines stay for other CPUs, for
//! compile-time constants and as the tests' reference.
//!
//! Nothing here branches on or indexes memory by secret data: the final
//! subtraction selects with masks, the exponent is read in windows at public
//! positions, and the window table is read by scanning every entry.

#[cfg(target_arch = "x86_64")]
use crate::mont_x86;
use crypto_bigint::{WideWord, Word};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

/// Bits in a limb.
const WORD_BITS: usize = Word::BITS as usize;

/// Exponent bits consumed per table multiplication. With 256-bit exponents a
/// 4-bit window costs 252 squarings + 64 multiplications + 14 to build the
/// table; a 5-bit one 255 + 52 + 30. It divides the limb size, so a window
/// never straddles two limbs.
const WINDOW: usize = 4;
const TABLE: usize = 1 << WINDOW;
const _: () = assert!(WORD_BITS.is_multiple_of(WINDOW));

/// The widest modulus `sqr` takes: 2048 bits, the largest MODP group here.
const MAX_LIMBS: usize = 2048 / WORD_BITS;

/// An odd modulus p with its Montgomery constants for R = 2^(WORD_BITS·L),
/// all computed by `new`, which the MODP group constants call at compile time.
pub(crate) struct Modulus<const L: usize> {
    p: [Word; L],
    /// −p⁻¹ mod 2^WORD_BITS (HAC 14.36's m′, restricted to one limb as CIOS
    /// needs).
    n0: Word,
    /// R mod p: the Montgomery form of 1.
    one: [Word; L],
    /// R² mod p: mul(x, R²) = xR mod p converts x into Montgomery form.
    r2: [Word; L],
}

impl<const L: usize> Modulus<L> {
    /// Panics (at compile time, for the group constants) unless p is odd and
    /// its top bit is set, which every MODP prime is: the top bit makes
    /// R mod p = R − p.
    pub(crate) const fn new(p: &[Word; L]) -> Self {
        assert!(L > 0 && L <= MAX_LIMBS, "modulus size out of range");
        assert!(
            p[0] & 1 == 1,
            "Montgomery multiplication needs an odd modulus"
        );
        assert!(p[L - 1] >> (WORD_BITS - 1) == 1, "modulus top bit not set");
        let one = neg(p);
        let mut m = Self {
            p: *p,
            n0: neg_inv(p[0]),
            one,
            r2: [0; L],
        };
        // R² = 2^(WORD_BITS·L)·R. Write WORD_BITS·L = k·2^s with k odd: k
        // doublings of R give 2^k·R, and each Montgomery squaring turns 2^e·R
        // into 2^(2e)·R, so s squarings reach R² mod p without a division.
        let bits = WORD_BITS * L;
        let s = bits.trailing_zeros();
        let k = bits >> s;
        let mut r2 = one;
        let mut i = 0;
        while i < k {
            r2 = double_mod(&r2, p);
            i += 1;
        }
        let mut i = 0;
        while i < s {
            r2 = m.mul_portable(&r2, &r2);
            i += 1;
        }
        m.r2 = r2;
        m
    }

    /// Montgomery product a·b·R⁻¹ mod p for a, b < p: `mul_portable`'s value,
    /// with `mulx`/`adcx`/`adox` on x86_64 CPUs that have them (mont_x86.rs).
    #[inline]
    pub(crate) fn mul(&self, a: &[Word; L], b: &[Word; L]) -> [Word; L] {
        #[cfg(target_arch = "x86_64")]
        if mont_x86::available() {
            // SAFETY: `available()` confirmed BMI2 and ADX on this CPU.
            let (t, t_hi) = unsafe { mont_x86::mul(a, b, &self.p, self.n0) };
            return sub_p_if_ge(&t, t_hi, &self.p);
        }
        self.mul_portable(a, b)
    }

    /// Montgomery square a²·R⁻¹ mod p for a < p, the same value as `mul(a, a)`
    /// and `sqr_portable(a)`, with `mulx`/`adcx`/`adox` where the CPU has them.
    #[inline]
    pub(crate) fn sqr(&self, a: &[Word; L]) -> [Word; L] {
        #[cfg(target_arch = "x86_64")]
        if mont_x86::available() {
            // SAFETY: `available()` confirmed BMI2 and ADX on this CPU.
            let (t, t_hi) = unsafe { mont_x86::sqr(a, &self.p, self.n0) };
            return sub_p_if_ge(&t, t_hi, &self.p);
        }
        self.sqr_portable(a)
    }

    /// Montgomery product a·b·R⁻¹ mod p for a, b < p (HAC 14.36, CIOS), in
    /// portable Rust; `new` runs it at compile time.
    ///
    /// The running value t stays below 2p (Koç et al. §3), so it fits L limbs
    /// plus one carry bit, and one subtraction of p reduces it.
    #[inline]
    pub(crate) const fn mul_portable(&self, a: &[Word; L], b: &[Word; L]) -> [Word; L] {
        let p = &self.p;
        let mut t = [0 as Word; L];
        let mut t_hi: Word = 0;
        let mut i = 0;
        while i < L {
            let bi = b[i];
            // t + a·b_i and t + a·b_i + m·p are scanned together: m depends only
            // on the low limb of t + a·b_i, which is the first one computed.
            let (t0, mut c1) = mac(t[0], a[0], bi, 0);
            let m = t0.wrapping_mul(self.n0);
            let (_, mut c2) = mac(t0, m, p[0], 0);
            let mut j = 1;
            while j < L {
                let (x, c) = mac(t[j], a[j], bi, c1);
                c1 = c;
                let (y, c) = mac(x, m, p[j], c2);
                c2 = c;
                // Dividing by 2^WORD_BITS: limb j lands in j − 1.
                t[j - 1] = y;
                j += 1;
            }
            let s = t_hi as WideWord + c1 as WideWord + c2 as WideWord;
            t[L - 1] = s as Word;
            t_hi = (s >> WORD_BITS) as Word;
            i += 1;
        }
        sub_p_if_ge(&t, t_hi, p)
    }

    /// Montgomery square a²·R⁻¹ mod p for a < p, the same value as
    /// `mul(a, a)`: the 2L-limb square first, each cross product a_i·a_j
    /// computed once and doubled (HAC 14.16), L(L+1)/2 limb products instead
    /// of L², then Montgomery's reduction of it (HAC 14.32; the separated
    /// operand scanning of Koç et al.). 252 of an exponentiation's ~330
    /// operations are squarings.
    #[inline]
    pub(crate) fn sqr_portable(&self, a: &[Word; L]) -> [Word; L] {
        let p = &self.p;
        let mut t = [0 as Word; 2 * MAX_LIMBS];
        // Cross products a_i·a_j, i < j.
        for i in 0..L {
            let mut c: Word = 0;
            for j in i + 1..L {
                let (x, cj) = mac(t[i + j], a[i], a[j], c);
                t[i + j] = x;
                c = cj;
            }
            t[i + L] = c;
        }
        // Doubled: their sum is below a²/2 < R²/2, so no bit leaves the top.
        let mut top: Word = 0;
        for x in t[..2 * L].iter_mut() {
            let next = *x >> (WORD_BITS - 1);
            *x = (*x << 1) | top;
            top = next;
        }
        // Plus the squares a_i² on the diagonal.
        let mut c: Word = 0;
        for i in 0..L {
            let sq = (a[i] as WideWord) * (a[i] as WideWord);
            let s = t[2 * i] as WideWord + (sq as Word) as WideWord + c as WideWord;
            t[2 * i] = s as Word;
            let s = t[2 * i + 1] as WideWord + (sq >> WORD_BITS) + (s >> WORD_BITS);
            t[2 * i + 1] = s as Word;
            c = (s >> WORD_BITS) as Word;
        }
        // Reduction: add m·p·2^(WORD_BITS·i) to clear limb i, L times; the
        // result t / R < 2p sits in the upper half plus one carry bit.
        let mut hi: Word = 0;
        for i in 0..L {
            let m = t[i].wrapping_mul(self.n0);
            let mut c: Word = 0;
            for j in 0..L {
                let (x, cj) = mac(t[i + j], m, p[j], c);
                t[i + j] = x;
                c = cj;
            }
            let s = t[i + L] as WideWord + c as WideWord + hi as WideWord;
            t[i + L] = s as Word;
            hi = (s >> WORD_BITS) as Word;
        }
        let mut r = [0 as Word; L];
        r.copy_from_slice(&t[L..2 * L]);
        // Like `mul`'s running value, t is left on the stack for the next
        // call to overwrite: the secrets worth wiping are in the callers'
        // `Zeroizing` accumulators and tables.
        sub_p_if_ge(&r, hi, p)
    }

    /// base^exp mod p for base < p, in constant time: the low `bits` bits of
    /// `exp` (a public bound; limbs beyond `exp` count as zero) are read in
    /// fixed 4-bit windows, left to right, each one a table multiplication
    /// whether its value is zero or not (HAC 14.82 without its
    /// zero-window shortcut).
    pub(crate) fn pow(&self, base: &[Word; L], exp: &[Word], bits: usize) -> Zeroizing<[Word; L]> {
        // table[k] = base^k in Montgomery form.
        let mut table = Zeroizing::new([[0 as Word; L]; TABLE]);
        table[0] = self.one;
        table[1] = self.mul(base, &self.r2);
        for k in 2..TABLE {
            table[k] = self.mul(&table[k - 1], &table[1]);
        }
        let windows = bits.div_ceil(WINDOW);
        let mut acc = Zeroizing::new(self.one);
        let mut entry = Zeroizing::new([0 as Word; L]);
        for w in (0..windows).rev() {
            if w + 1 == windows {
                // The first window needs no squarings of 1. Which window is
                // first depends on `bits` only.
                select(&table, window(exp, w), &mut acc);
                continue;
            }
            for _ in 0..WINDOW {
                *acc = self.sqr(&acc);
            }
            select(&table, window(exp, w), &mut entry);
            *acc = self.mul(&acc, &entry);
        }
        // Out of Montgomery form: acc·1·R⁻¹.
        let mut unit = [0 as Word; L];
        unit[0] = 1;
        *acc = self.mul(&acc, &unit);
        acc
    }
}

/// Precomputed powers of a fixed public base (the group generator) for
/// exponentiation without squarings: table i holds base^(d·16^i) for every
/// window value d, so base^x = Π_i table_i[x_i] over x's 4-bit windows x_i.
/// This is the fixed-base windowing of HAC §14.6.3 (cf. Algorithm 14.109,
/// Brickell, Gordon, McCurley and Wilson) with each window's powers stored
/// rather than regrouped: `bits`/4 multiplications instead of `bits`
/// squarings plus `bits`/4 multiplications, for 16·`bits`/4 stored residues
/// (128 KiB for modp1024 with 256-bit exponents).
pub(crate) struct FixedBase<const L: usize> {
    tables: Vec<[[Word; L]; TABLE]>,
}

impl<const L: usize> Modulus<L> {
    /// Builds the tables for exponents of up to `bits` bits. `base` < p is
    /// public, so nothing here needs to be constant time.
    pub(crate) fn fixed_base(&self, base: &[Word; L], bits: usize) -> FixedBase<L> {
        let windows = bits.div_ceil(WINDOW);
        let mut tables = Vec::with_capacity(windows);
        // base^(16^i) in Montgomery form.
        let mut b = self.mul(base, &self.r2);
        for _ in 0..windows {
            let mut t = [[0 as Word; L]; TABLE];
            t[0] = self.one;
            t[1] = b;
            for d in 2..TABLE {
                t[d] = self.mul(&t[d - 1], &b);
            }
            for _ in 0..WINDOW {
                b = self.sqr(&b);
            }
            tables.push(t);
        }
        FixedBase { tables }
    }

    /// base^exp mod p for the base of `fb`, in constant time: one table scan
    /// and one multiplication per window of the `bits` bits `fb` was built
    /// for, whatever the windows' values.
    pub(crate) fn pow_fixed(&self, fb: &FixedBase<L>, exp: &[Word]) -> Zeroizing<[Word; L]> {
        let mut acc = Zeroizing::new(self.one);
        let mut entry = Zeroizing::new([0 as Word; L]);
        for (w, table) in fb.tables.iter().enumerate() {
            if w == 0 {
                select(table, window(exp, w), &mut acc);
                continue;
            }
            select(table, window(exp, w), &mut entry);
            *acc = self.mul(&acc, &entry);
        }
        let mut unit = [0 as Word; L];
        unit[0] = 1;
        *acc = self.mul(&acc, &unit);
        acc
    }
}

/// t + a·b + c as (low, high) limbs; at most (2^w − 1)·2^w + … < 2^(2w),
/// so it never overflows the wide word.
#[inline(always)]
const fn mac(t: Word, a: Word, b: Word, c: Word) -> (Word, Word) {
    let s = t as WideWord + (a as WideWord) * (b as WideWord) + c as WideWord;
    (s as Word, (s >> WORD_BITS) as Word)
}

/// (t_hi·R + t) − p if that is not negative, else t, for t_hi·R + t < 2p.
/// The subtraction always runs; the borrow picks the result through a mask.
#[inline(always)]
const fn sub_p_if_ge<const L: usize>(t: &[Word; L], t_hi: Word, p: &[Word; L]) -> [Word; L] {
    let mut d = [0 as Word; L];
    let mut borrow: Word = 0;
    let mut j = 0;
    while j < L {
        let s = (t[j] as WideWord)
            .wrapping_sub(p[j] as WideWord)
            .wrapping_sub(borrow as WideWord);
        d[j] = s as Word;
        borrow = (s >> (2 * WORD_BITS - 1)) as Word;
        j += 1;
    }
    // The borrow out of the top limb goes into t_hi; if it underflows, t < p.
    let (_, under) = t_hi.overflowing_sub(borrow);
    let keep_t = (under as Word).wrapping_neg();
    let mut j = 0;
    while j < L {
        d[j] = (t[j] & keep_t) | (d[j] & !keep_t);
        j += 1;
    }
    d
}

/// Copies table[idx] into `out`, touching every entry the same way: the
/// index is secret (a window of the exponent), so it may neither pick an
/// address nor a branch.
fn select<const L: usize>(table: &[[Word; L]; TABLE], idx: Word, out: &mut [Word; L]) {
    *out = [0; L];
    for (k, entry) in table.iter().enumerate() {
        let hit = (k as Word).ct_eq(&idx);
        for (o, v) in out.iter_mut().zip(entry) {
            o.conditional_assign(v, hit);
        }
    }
}

/// Window `w` of the exponent: bits [4w, 4w + 4). The position is public.
fn window(exp: &[Word], w: usize) -> Word {
    let bit = w * WINDOW;
    let limb = exp.get(bit / WORD_BITS).copied().unwrap_or(0);
    (limb >> (bit % WORD_BITS)) & (TABLE as Word - 1)
}

/// −x⁻¹ mod 2^WORD_BITS for odd x, by Newton's iteration y ← y·(2 − x·y),
/// which doubles the correct low bits; y = x is right to 3 bits since
/// x² ≡ 1 mod 8 (HAC 14.36 needs m′ = −m⁻¹ mod b).
const fn neg_inv(x: Word) -> Word {
    let mut y = x;
    let mut i = 0;
    // 3 → 6 → 12 → 24 → 48 → 96 bits.
    while i < 5 {
        y = y.wrapping_mul((2 as Word).wrapping_sub(x.wrapping_mul(y)));
        i += 1;
    }
    y.wrapping_neg()
}

/// R − p, which is R mod p when p > R/2.
const fn neg<const L: usize>(p: &[Word; L]) -> [Word; L] {
    let mut r = [0 as Word; L];
    let mut borrow: Word = 0;
    let mut j = 0;
    while j < L {
        let (d, b1) = (0 as Word).overflowing_sub(p[j]);
        let (d, b2) = d.overflowing_sub(borrow);
        r[j] = d;
        borrow = (b1 | b2) as Word;
        j += 1;
    }
    r
}

/// 2a mod p for a < p. Only used at compile time on public constants, so it
/// may branch.
const fn double_mod<const L: usize>(a: &[Word; L], p: &[Word; L]) -> [Word; L] {
    let mut s = [0 as Word; L];
    let mut carry: Word = 0;
    let mut j = 0;
    while j < L {
        s[j] = (a[j] << 1) | carry;
        carry = a[j] >> (WORD_BITS - 1);
        j += 1;
    }
    let mut d = [0 as Word; L];
    let mut borrow = false;
    let mut j = 0;
    while j < L {
        let (x, b1) = s[j].overflowing_sub(p[j]);
        let (x, b2) = x.overflowing_sub(borrow as Word);
        d[j] = x;
        borrow = b1 | b2;
        j += 1;
    }
    if carry == 1 || !borrow { d } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Rng;
    use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
    use crypto_bigint::{U64, U128, U192, Uint};

    /// A random odd modulus with the top bit set.
    fn modulus<const L: usize>(rng: &mut Rng) -> [Word; L] {
        let mut p = [0 as Word; L];
        for w in &mut p {
            *w = rng.next() as Word;
        }
        p[0] |= 1;
        p[L - 1] |= 1 << (WORD_BITS - 1);
        p
    }

    /// mul(a, b)·R ≡ a·b (mod p), against crypto-bigint's schoolbook product
    /// and division, and its own Montgomery constants.
    fn check_mul<const L: usize>(seed: u64) {
        let mut rng = Rng(seed);
        for _ in 0..50 {
            let pw = modulus::<L>(&mut rng);
            let m = Modulus::new(&pw);
            let p = Uint::from_words(pw);
            let params = DynResidueParams::new(&p);
            assert_eq!(m.one, DynResidue::one(params).as_montgomery().to_words());
            assert_eq!(pw[0].wrapping_mul(m.n0), Word::MAX);
            for _ in 0..20 {
                let a = rng.residue(&p);
                let b = rng.residue(&p);
                let ab = Uint::const_rem_wide(a.mul_wide(&b), &p).0;
                let mont = Uint::from_words(m.mul(&a.to_words(), &b.to_words()));
                assert!(mont < p);
                let r = Uint::from_words(m.one);
                assert_eq!(Uint::const_rem_wide(mont.mul_wide(&r), &p).0, ab);
                assert_eq!(m.sqr(&a.to_words()), m.mul(&a.to_words(), &a.to_words()));
                // R² converts into the same Montgomery form crypto-bigint uses.
                let am = m.mul(&a.to_words(), &m.r2);
                assert_eq!(am, DynResidue::new(&a, params).as_montgomery().to_words());
            }
        }
    }

    #[test]
    fn mul_matches_crypto_bigint_for_random_moduli() {
        check_mul::<{ U64::LIMBS }>(1);
        check_mul::<{ U128::LIMBS }>(2);
        check_mul::<{ U192::LIMBS }>(3);
    }

    #[test]
    fn neg_inv_is_the_inverse() {
        let mut rng = Rng(7);
        for _ in 0..1000 {
            let x = rng.next() as Word | 1;
            assert_eq!(x.wrapping_mul(neg_inv(x)), Word::MAX);
        }
    }

    #[test]
    fn select_returns_each_entry() {
        let mut table = [[0 as Word; 3]; TABLE];
        for (k, e) in table.iter_mut().enumerate() {
            *e = [k as Word, 100 + k as Word, Word::MAX - k as Word];
        }
        let mut out = [7; 3];
        for k in 0..TABLE {
            select(&table, k as Word, &mut out);
            assert_eq!(out, table[k]);
        }
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn windows_cover_the_exponent_in_order() {
        let exp = [0x0123_4567_89ab_cdef as Word, 0xf];
        let got: Vec<Word> = (0..20).map(|w| window(&exp, w)).collect();
        let want: Vec<Word> = (0..16).map(|k| (0xf - k) as Word).collect();
        assert_eq!(got[..16], want[..]);
        assert_eq!(got[16..], [0xf, 0, 0, 0]);
    }

    /// Operands for `check_paths`: 0, 1, 2, p − 1, p − 2, R mod p and random
    /// residues, then values in [p, R), which the API does not take but on which
    /// both paths still compute the same (a·b + M·p)/R: p, p + 1, R − 1 and
    /// random ones.
    fn operands<const L: usize>(pw: &[Word; L], one: &[Word; L], rng: &mut Rng) -> Vec<[Word; L]> {
        let p = Uint::from_words(*pw);
        let small = |x: u64| Uint::<L>::from_u64(x).to_words();
        let mut v = vec![
            small(0),
            small(1),
            small(2),
            p.wrapping_sub(&Uint::ONE).to_words(),
            p.wrapping_sub(&Uint::from_u8(2)).to_words(),
            *one,
        ];
        for _ in 0..6 {
            v.push(rng.residue(&p).to_words());
        }
        v.push(*pw);
        v.push(p.wrapping_add(&Uint::ONE).to_words());
        v.push([Word::MAX; L]);
        for _ in 0..3 {
            let mut w = [0 as Word; L];
            for x in &mut w {
                *x = rng.next() as Word;
            }
            let x = Uint::from_words(w);
            v.push(if x >= p { x } else { x.wrapping_add(&p) }.to_words());
        }
        v
    }

    /// `mul` and `sqr` (mont_x86.rs on x86_64 CPUs with BMI2 and ADX, else the
    /// portable code) against `mul_portable` and `sqr_portable` on every pair of
    /// `operands`, and, for operands below p, against crypto-bigint: mul(a, b)·R
    /// ≡ a·b (mod p).
    fn check_paths<const L: usize>(seed: u64, moduli: usize) {
        let mut rng = Rng(seed);
        for _ in 0..moduli {
            let pw = modulus::<L>(&mut rng);
            let m = Modulus::new(&pw);
            let p = Uint::from_words(pw);
            let r = Uint::from_words(m.one);
            let ops = operands(&pw, &m.one, &mut rng);
            for a in &ops {
                let sq = m.sqr(a);
                assert_eq!(sq, m.sqr_portable(a), "L {L}: sqr {a:x?}");
                assert_eq!(sq, m.mul_portable(a, a), "L {L}: sqr {a:x?}");
                for b in &ops {
                    let got = m.mul(a, b);
                    assert_eq!(got, m.mul_portable(a, b), "L {L}: {a:x?} * {b:x?}");
                    let (ua, ub) = (Uint::from_words(*a), Uint::from_words(*b));
                    if ua < p && ub < p {
                        let got = Uint::from_words(got);
                        assert!(got < p);
                        let want = Uint::const_rem_wide(ua.mul_wide(&ub), &p).0;
                        assert_eq!(Uint::const_rem_wide(got.mul_wide(&r), &p).0, want);
                    }
                }
            }
        }
    }

    #[test]
    fn fast_and_portable_paths_agree_for_every_limb_count() {
        // 1-5 cover mont_x86's single-limb and four-limb steps around the
        // block edges; 12, 16, 24 and 32 are the MODP groups' sizes (modp.rs
        // checks their own primes).
        check_paths::<1>(21, 8);
        check_paths::<2>(22, 8);
        check_paths::<3>(23, 8);
        check_paths::<4>(24, 8);
        check_paths::<5>(25, 8);
        check_paths::<7>(27, 4);
        check_paths::<8>(28, 4);
        check_paths::<12>(32, 3);
        check_paths::<16>(36, 3);
        check_paths::<24>(44, 2);
        check_paths::<32>(52, 2);
    }

    #[test]
    fn pow_matches_crypto_bigint_for_random_moduli() {
        let mut rng = Rng(11);
        for _ in 0..30 {
            let pw = modulus::<{ U128::LIMBS }>(&mut rng);
            let m = Modulus::new(&pw);
            let p = Uint::from_words(pw);
            let params = DynResidueParams::new(&p);
            let base = rng.residue(&p);
            let exp = U128::from_words([rng.next() as Word, rng.next() as Word]);
            for bits in [4, 64, 128] {
                let want = DynResidue::new(&base, params)
                    .pow_bounded_exp(&exp, bits)
                    .retrieve();
                let got = m.pow(&base.to_words(), exp.as_words(), bits);
                assert_eq!(Uint::from_words(*got), want, "bits {bits}");
            }
        }
    }
}
