//! Montgomery multiplication and squaring for mont.rs with BMI2's `mulx` and ADX's
//! `adcx`/`adox` (x86_64).
//!
//! The portable code's limb products go through u128 arithmetic, which LLVM turns into
//! `mul` and `add`/`adc` chains that share the one carry flag, so each product's two
//! halves wait on each other. `mulx` writes both halves without touching the flags, and
//! `adcx` (carry flag) and `adox` (overflow flag) are two independent add-with-carry
//! chains: in a row t += a·b the low halves ride one chain and the high halves the other,
//! and no product waits for the previous one's carries (Ozturk, Guilford, Gopal and
//! Feghali, "New Instructions Supporting Large Integer Arithmetic on Intel Architecture
//! Processors", Intel white paper 327831, 2012, §3). On the lab's Zen 4 (counted at its
//! nominal 2.6 GHz) a 1024-bit Montgomery product takes about 1.4 cycles per limb
//! product, the portable code 2.7.
//!
//! Every operation here is built from that one row, [`addmul_row`]:
//! - multiplication is the Separated Operand Scanning form of Koç, Acar and Kaliski
//!   ("Analyzing and Comparing Montgomery Multiplication Algorithms", IEEE Micro 16(3),
//!   1996): the 2L-limb product a·b by rows (HAC 14.12), then Montgomery's reduction
//!   (HAC 14.32) by rows of m·p;
//! - squaring computes each cross product a_i·a_j (i < j) once, by rows, then doubles
//!   them and adds the squares a_i² in one pass (HAC 14.16), then the same reduction.
//!
//! Both give the same (a·b + M·p)/R as the portable CIOS code, M being the one value
//! below R that makes the sum divisible by R, so the final conditional subtraction in
//! mont.rs is shared. Row lengths and addresses depend on L and the row index only, and
//! `mulx`/`adcx`/`adox` take the same time for every operand: nothing here branches on
//! or indexes memory by secret data.

use core::arch::asm;

/// The widest modulus, in limbs; mont.rs asserts L is within it.
const MAX_LIMBS: usize = 32;

/// True when this CPU has `mulx` (BMI2) and `adcx`/`adox` (ADX). std caches the
/// CPUID answer, so this is a load and a test per call.
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("bmi2") && std::is_x86_feature_detected!("adx")
}

/// a·b·R⁻¹ as L limbs and a carry bit, before the final subtraction of p: below
/// a·b/R + p, so below 2p for a·b < R·p.
///
/// # Safety
///
/// The CPU must have BMI2 and ADX ([`available`]).
#[inline]
pub(crate) unsafe fn mul<const L: usize>(
    a: &[u64; L],
    b: &[u64; L],
    p: &[u64; L],
    n0: u64,
) -> ([u64; L], u64) {
    const { assert!(L > 0 && L <= MAX_LIMBS) };
    let mut buf = [0u64; 2 * MAX_LIMBS];
    let t = &mut buf[..2 * L];
    for (i, &bi) in b.iter().enumerate() {
        // Row i adds a·b_i at limb i; its carry limb lands on limb i + L, which no
        // earlier row reached, and below 2^64 since t + a·b_i < 2^(64(i+L+1)).
        // SAFETY: the caller checked BMI2 and ADX.
        t[i + L] = unsafe { addmul_row(&mut t[i..i + L], a, bi) };
    }
    // SAFETY: as above. Like the portable code's, `buf` is left on the stack for the
    // next call to overwrite: the secrets worth wiping are in the callers' `Zeroizing`
    // accumulators and tables.
    unsafe { reduce(t, p, n0) }
}

/// a²·R⁻¹ as L limbs and a carry bit, before the final subtraction of p, for a < R.
///
/// # Safety
///
/// The CPU must have BMI2 and ADX ([`available`]).
#[inline]
pub(crate) unsafe fn sqr<const L: usize>(a: &[u64; L], p: &[u64; L], n0: u64) -> ([u64; L], u64) {
    const { assert!(L > 0 && L <= MAX_LIMBS) };
    let mut buf = [0u64; 2 * MAX_LIMBS];
    let t = &mut buf[..2 * L];
    // Cross products: row i adds a_i·a_(i+1..L) at limb 2i + 1; as in `mul`, its carry
    // limb lands on the untouched limb i + L.
    for i in 0..L - 1 {
        // SAFETY: the caller checked BMI2 and ADX.
        t[i + L] = unsafe { addmul_row(&mut t[2 * i + 1..i + L], &a[i + 1..], a[i]) };
    }
    // SAFETY: as above; t has 2L limbs.
    unsafe { double_add_squares(t, a) };
    // SAFETY: as above.
    unsafe { reduce(t, p, n0) }
}

/// Montgomery's reduction of the 2L-limb t < R·p (HAC 14.32): L rows each add
/// m·p at limb i, m = t_i·n0 chosen to clear limb i; t/R is then the upper half and
/// the bit carried out of it.
///
/// # Safety
///
/// The CPU must have BMI2 and ADX.
#[inline(always)]
unsafe fn reduce<const L: usize>(t: &mut [u64], p: &[u64; L], n0: u64) -> ([u64; L], u64) {
    let mut hi = 0u64;
    for i in 0..L {
        let m = t[i].wrapping_mul(n0);
        // SAFETY: the caller checked BMI2 and ADX.
        let c = unsafe { addmul_row(&mut t[i..i + L], p, m) };
        // Limb i + L takes the row's carry limb and the bit carried out of the
        // previous row: at most 2(2^64 − 1) + 1, one bit out again.
        let s = t[i + L] as u128 + c as u128 + hi as u128;
        t[i + L] = s as u64;
        hi = (s >> 64) as u64;
    }
    let mut r = [0u64; L];
    r.copy_from_slice(&t[L..2 * L]);
    (r, hi)
}

/// t += a·b over n = min(|t|, |a|) limbs; returns the carry limb, which fits since
/// t + a·b < 2^(64n)·2^64.
///
/// Limb j's product is (h_j, l_j) from `mulx`, and t_j takes l_j on the `adcx` chain
/// and h_(j−1) on the `adox` chain; the limb after the last gets h_(n−1) and both
/// chains' final carries. n mod 4 single limbs go first, then blocks of four, which
/// alternate two registers for h so no move sits between the chains. Nothing between
/// the first `adcx` and the last `adox` writes CF or OF: `mulx`, `mov`, `lea`,
/// `jrcxz` and `loop` leave the flags alone.
///
/// # Safety
///
/// The CPU must have BMI2 and ADX.
#[inline(always)]
unsafe fn addmul_row(t: &mut [u64], a: &[u64], b: u64) -> u64 {
    let n = t.len().min(a.len());
    let carry: u64;
    // SAFETY: the instructions need BMI2 and ADX (the caller's promise). They read
    // a[0..n] and read and write t[0..n] only: `ap` and `tp` advance one limb per
    // product, n products in all.
    unsafe {
        asm!(
            "xor {h:e}, {h:e}", // h = 0, CF = OF = 0
            "mov rcx, {singles}",
            "jrcxz 3f",
            "2:",
            "mulx {x1}, {x0}, [{ap}]",
            "adcx {x0}, [{tp}]",
            "adox {x0}, {h}",
            "mov [{tp}], {x0}",
            "mov {h}, {x1}",
            "lea {ap}, [{ap} + 8]",
            "lea {tp}, [{tp} + 8]",
            "loop 2b",
            "3:",
            "mov rcx, {blocks}",
            "jrcxz 5f",
            "4:",
            "mulx {x1}, {x0}, [{ap}]",
            "adcx {x0}, [{tp}]",
            "adox {x0}, {h}",
            "mov [{tp}], {x0}",
            "mulx {h}, {x0}, [{ap} + 8]",
            "adcx {x0}, [{tp} + 8]",
            "adox {x0}, {x1}",
            "mov [{tp} + 8], {x0}",
            "mulx {x1}, {x0}, [{ap} + 16]",
            "adcx {x0}, [{tp} + 16]",
            "adox {x0}, {h}",
            "mov [{tp} + 16], {x0}",
            "mulx {h}, {x0}, [{ap} + 24]",
            "adcx {x0}, [{tp} + 24]",
            "adox {x0}, {x1}",
            "mov [{tp} + 24], {x0}",
            "lea {ap}, [{ap} + 32]",
            "lea {tp}, [{tp} + 32]",
            "loop 4b",
            "5:",
            "mov {x0}, 0",
            "adcx {h}, {x0}",
            "adox {h}, {x0}",
            ap = inout(reg) a.as_ptr() => _,
            tp = inout(reg) t.as_mut_ptr() => _,
            singles = in(reg) n % 4,
            blocks = in(reg) n / 4,
            in("rdx") b,
            h = out(reg) carry,
            x0 = out(reg) _,
            x1 = out(reg) _,
            out("rcx") _,
            options(nostack),
        );
    }
    carry
}

/// t ← 2t + Σ a_i²·2^(128i) for |t| = 2|a|, t holding the cross products (so that
/// the result, a², fits): the doubling rides the `adcx` chain (x + x + CF) and the
/// squares the `adox` chain, limb pair by limb pair.
///
/// # Safety
///
/// The CPU must have BMI2 and ADX.
#[inline(always)]
unsafe fn double_add_squares(t: &mut [u64], a: &[u64]) {
    let n = a.len().min(t.len() / 2);
    // SAFETY: BMI2 and ADX are the caller's promise. The loop reads a[0..n] and reads
    // and writes t[0..2n]. Both chains end with no carry because the result fits.
    unsafe {
        asm!(
            "xor {x0:e}, {x0:e}", // CF = OF = 0
            "jrcxz 3f",
            "2:",
            "mov rdx, [{ap}]",
            "mulx {hi}, {lo}, rdx",
            "mov {x0}, [{tp}]",
            "mov {x1}, [{tp} + 8]",
            "adcx {x0}, {x0}",
            "adcx {x1}, {x1}",
            "adox {x0}, {lo}",
            "adox {x1}, {hi}",
            "mov [{tp}], {x0}",
            "mov [{tp} + 8], {x1}",
            "lea {ap}, [{ap} + 8]",
            "lea {tp}, [{tp} + 16]",
            "loop 2b",
            "3:",
            ap = inout(reg) a.as_ptr() => _,
            tp = inout(reg) t.as_mut_ptr() => _,
            inout("rcx") n => _,
            out("rdx") _,
            hi = out(reg) _,
            lo = out(reg) _,
            x0 = out(reg) _,
            x1 = out(reg) _,
            options(nostack),
        );
    }
}
