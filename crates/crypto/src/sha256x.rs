//! HMAC-SHA-256 (RFC 2104, FIPS 180-4) of several messages at once with SHA-NI (x86_64).
//!
//! One SHA-256 stream is a chain of dependent `sha256rnds2` instructions: each waits for
//! the previous one's result, so the SHA unit idles between them. The hashes of different
//! packets are independent, so stepping [`LANES`] of them block by block, round group by
//! round group, keeps it busy. Used by `CbcHmac`'s separate path for HMAC-SHA-256-128
//! (RFC 4868) when it seals or opens many packets; checked against the `hmac`/`sha2`
//! crates, which stay the fallback without SHA-NI ([`available`]).

use core::arch::x86_64::{
    __m128i, _mm_add_epi32, _mm_alignr_epi8, _mm_blend_epi16, _mm_loadu_si128, _mm_set_epi64x,
    _mm_sha256msg1_epu32, _mm_sha256msg2_epu32, _mm_sha256rnds2_epu32, _mm_shuffle_epi8,
    _mm_shuffle_epi32, _mm_storeu_si128,
};

use sha2::Digest;
use sha2::digest::generic_array::GenericArray;
use zeroize::Zeroize;

/// Messages hashed side by side.
pub(crate) const LANES: usize = 4;
const BLOCK: usize = 64;

/// True when this CPU has SHA-NI and the SSE levels the code below uses.
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("sha")
        && std::is_x86_feature_detected!("sse4.1")
        && std::is_x86_feature_detected!("ssse3")
}

/// FIPS 180-4 §4.2.2.
static K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// FIPS 180-4 §5.3.3.
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// The HMAC key absorbed: the SHA-256 states after the ipad block and after the opad
/// block (RFC 2104 §4 notes the precomputation), once per SA. Only built after
/// [`available`] said yes.
#[derive(Clone)]
pub(crate) struct HmacSha256 {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl Drop for HmacSha256 {
    fn drop(&mut self) {
        self.inner.zeroize();
        self.outer.zeroize();
    }
}

/// One message's blocks as the lanes take them: its whole blocks, then one or two
/// blocks of padding (RFC 6234 §4.1: 0x80, zeros, the bit length) built here.
struct Stream<'a> {
    msg: &'a [u8],
    tail: [u8; 2 * BLOCK],
    blocks: usize,
}

impl<'a> Stream<'a> {
    /// `prefix` bytes were hashed before `msg` (the ipad or opad block).
    fn new(msg: &'a [u8], prefix: usize) -> Self {
        let whole = msg.len() / BLOCK;
        let rest = &msg[whole * BLOCK..];
        let mut tail = [0u8; 2 * BLOCK];
        tail[..rest.len()].copy_from_slice(rest);
        tail[rest.len()] = 0x80;
        let tail_blocks = if rest.len() + 9 > BLOCK { 2 } else { 1 };
        let bits = ((prefix + msg.len()) as u64) * 8;
        tail[tail_blocks * BLOCK - 8..tail_blocks * BLOCK].copy_from_slice(&bits.to_be_bytes());
        Self {
            msg,
            tail,
            blocks: whole + tail_blocks,
        }
    }

    fn block(&self, i: usize) -> &[u8] {
        let whole = self.msg.len() / BLOCK;
        if i < whole {
            &self.msg[i * BLOCK..(i + 1) * BLOCK]
        } else {
            &self.tail[(i - whole) * BLOCK..(i - whole + 1) * BLOCK]
        }
    }
}

impl HmacSha256 {
    /// `key` of any length (RFC 2104 §2: longer than a block is hashed first).
    pub(crate) fn new(key: &[u8]) -> Self {
        let mut k = [0u8; BLOCK];
        if key.len() > BLOCK {
            k[..32].copy_from_slice(&sha2::Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let state = |pad: u8| {
            let mut block = [0u8; BLOCK];
            for (b, k) in block.iter_mut().zip(&k) {
                *b = k ^ pad;
            }
            let mut s = H0;
            sha2::compress256(&mut s, &[GenericArray::clone_from_slice(&block)]);
            block.zeroize();
            s
        };
        let keyed = Self {
            inner: state(0x36),
            outer: state(0x5c),
        };
        k.zeroize();
        keyed
    }

    /// The full 32-byte HMAC of each of `msgs` (RFC 4868 truncates it to 16 for ESP).
    pub(crate) fn tags<const L: usize>(&self, msgs: [&[u8]; L]) -> [[u8; 32]; L] {
        // SAFETY: `HmacSha256` is only built after `available()` returned true.
        unsafe { self.tags_unchecked(msgs) }
    }

    #[target_feature(enable = "sha,sse4.1,ssse3")]
    unsafe fn tags_unchecked<const L: usize>(&self, msgs: [&[u8]; L]) -> [[u8; 32]; L] {
        let streams = msgs.map(|m| Stream::new(m, BLOCK));
        let mut states = [load(&self.inner); L];
        let together = streams.iter().map(|s| s.blocks).min().unwrap_or(0);
        for i in 0..together {
            compress(&mut states, streams.each_ref().map(|s| s.block(i)));
        }
        for (s, state) in streams.iter().zip(&mut states) {
            for i in together..s.blocks {
                let mut one = [*state];
                compress(&mut one, [s.block(i)]);
                *state = one[0];
            }
        }
        // The outer hash of each inner digest: one block each, all lanes together.
        let inner = states.map(|s| store(s));
        let outer_streams = inner.each_ref().map(|d| Stream::new(d, BLOCK));
        let mut outer = [load(&self.outer); L];
        compress(&mut outer, outer_streams.each_ref().map(|s| s.block(0)));
        outer.map(|s| store(s))
    }
}

/// The state as SHA-NI holds it: (ABEF, CDGH).
type State = (__m128i, __m128i);

#[target_feature(enable = "sha,sse4.1,ssse3")]
fn load(h: &[u32; 8]) -> State {
    // SAFETY: `h` is 32 readable bytes; unaligned loads.
    let (dcba, hgfe) = unsafe {
        (
            _mm_loadu_si128(h.as_ptr().cast()),
            _mm_loadu_si128(h.as_ptr().add(4).cast()),
        )
    };
    let cdab = _mm_shuffle_epi32(dcba, 0xb1);
    let efgh = _mm_shuffle_epi32(hgfe, 0x1b);
    (
        _mm_alignr_epi8(cdab, efgh, 8),
        _mm_blend_epi16(efgh, cdab, 0xf0),
    )
}

#[target_feature(enable = "sha,sse4.1,ssse3")]
fn store((abef, cdgh): State) -> [u8; 32] {
    let feba = _mm_shuffle_epi32(abef, 0x1b);
    let dchg = _mm_shuffle_epi32(cdgh, 0xb1);
    let dcba = _mm_blend_epi16(feba, dchg, 0xf0);
    let hgfe = _mm_alignr_epi8(dchg, feba, 8);
    let mut words = [0u32; 8];
    // SAFETY: `words` is 32 writable bytes; unaligned stores.
    unsafe {
        _mm_storeu_si128(words.as_mut_ptr().cast(), dcba);
        _mm_storeu_si128(words.as_mut_ptr().add(4).cast(), hgfe);
    }
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(words) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// One 64-byte block into each lane's state, the lanes' round groups interleaved
/// (FIPS 180-4 §6.2.2; the message schedule four words at a time with
/// `sha256msg1`/`sha256msg2`).
#[target_feature(enable = "sha,sse4.1,ssse3")]
fn compress<const L: usize>(states: &mut [State; L], blocks: [&[u8]; L]) {
    // Big-endian words.
    let swap = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
    let saved = *states;
    let mut w = [[_mm_set_epi64x(0, 0); 4]; L];
    for (w, b) in w.iter_mut().zip(&blocks) {
        for (j, w) in w.iter_mut().enumerate() {
            let bytes = &b[16 * j..16 * (j + 1)];
            // SAFETY: `bytes` is 16 readable bytes; an unaligned load.
            *w = _mm_shuffle_epi8(unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }, swap);
        }
    }
    for g in 0..16 {
        // SAFETY: `4 * g + 4 <= 64` words of `K`; an unaligned load.
        let k = unsafe { _mm_loadu_si128(K.as_ptr().add(4 * g).cast()) };
        for (w, (abef, cdgh)) in w.iter_mut().zip(states.iter_mut()) {
            if g >= 4 {
                // W_t for t = 4g..4g+3: msg1 adds σ0(W_{t-15}) to W_{t-16}, the
                // alignment W_{t-7}, msg2 σ1(W_{t-2}) (§6.2.2 step 1).
                let x = _mm_sha256msg1_epu32(w[g % 4], w[(g + 1) % 4]);
                let x = _mm_add_epi32(x, _mm_alignr_epi8(w[(g + 3) % 4], w[(g + 2) % 4], 4));
                w[g % 4] = _mm_sha256msg2_epu32(x, w[(g + 3) % 4]);
            }
            let m = _mm_add_epi32(w[g % 4], k);
            *cdgh = _mm_sha256rnds2_epu32(*cdgh, *abef, m);
            *abef = _mm_sha256rnds2_epu32(*abef, *cdgh, _mm_shuffle_epi32(m, 0x0e));
        }
    }
    for ((abef, cdgh), (a0, c0)) in states.iter_mut().zip(saved) {
        *abef = _mm_add_epi32(*abef, a0);
        *cdgh = _mm_add_epi32(*cdgh, c0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Rng;
    use hmac::Mac;

    fn reference(key: &[u8], msg: &[u8]) -> [u8; 32] {
        let mut m = <hmac::Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(key)
            .expect("any key length");
        m.update(msg);
        m.finalize().into_bytes().into()
    }

    /// RFC 4231 §4.2 and §4.7: a 20-byte key, and a 131-byte key hashed first.
    #[test]
    fn rfc4231_vectors() {
        if !available() {
            return;
        }
        let h = HmacSha256::new(&[0x0b; 20]);
        let [t] = h.tags([b"Hi There".as_slice()]);
        assert_eq!(
            t,
            crate::test_util::hex(
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
            )[..]
        );
        let h = HmacSha256::new(&[0xaa; 131]);
        let msg = b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.";
        let [t, u] = h.tags([msg.as_slice(), msg.as_slice()]);
        let want = crate::test_util::hex(
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        );
        assert_eq!(
            (t, u),
            (want[..].try_into().unwrap(), want[..].try_into().unwrap())
        );
    }

    /// Every length 0..=300 alone and in lanes with other lengths (the lanes that end
    /// early, the one- and two-block paddings), against the `hmac` crate.
    #[test]
    fn lanes_match_the_hmac_crate() {
        if !available() {
            return;
        }
        let mut rng = Rng(0x5a25_6000_1a9e);
        let data = rng.bytes(400);
        for key_len in [16, 32, 64, 65] {
            let key = rng.bytes(key_len);
            let h = HmacSha256::new(&key);
            for len in 0..=300 {
                let m = &data[..len];
                assert_eq!(h.tags([m])[0], reference(&key, m), "len {len}");
                let other = (rng.next() % 301) as usize;
                let lanes = [m, &data[1..1 + other], m, &data[3..3 + len / 2]];
                let tags = h.tags(lanes);
                for (t, l) in tags.iter().zip(lanes) {
                    assert_eq!(*t, reference(&key, l), "lane of {} with {len}", l.len());
                }
            }
        }
    }
}
