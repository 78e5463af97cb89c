//! The IKE pseudo-random function and prf+ (RFC 7296 §2.13).

use zeroize::Zeroizing;

use crate::Prf;
use crate::mac::{Hash, HmacKey, MAX_HASH_LEN};

impl Prf {
    fn hash(self) -> Hash {
        match self {
            Prf::HmacMd5 => Hash::Md5,
            Prf::HmacSha1 => Hash::Sha1,
            Prf::HmacSha256 => Hash::Sha256,
            Prf::HmacSha384 => Hash::Sha384,
            Prf::HmacSha512 => Hash::Sha512,
        }
    }

    /// `prf(key, data[0] | data[1] | ...)`: full-length HMAC. Keys of any
    /// length are accepted (RFC 7296 §2.14 keys SKEYSEED with Ni | Nr).
    pub fn compute(self, key: &[u8], data: &[&[u8]]) -> Vec<u8> {
        let mut out = [0u8; MAX_HASH_LEN];
        let n = HmacKey::new(self.hash(), key).compute_into(data, &mut out);
        let v = out[..n].to_vec();
        zeroize::Zeroize::zeroize(&mut out);
        v
    }

    /// `prf+(key, seed)` truncated to `len` bytes (RFC 7296 §2.13):
    /// `T1 = prf(K, S | 0x01)`, `Tn = prf(K, Tn-1 | S | n)`.
    ///
    /// # Panics
    ///
    /// If `len > 255 * out_len()`: the one-octet counter cannot go past 255.
    /// IKE's key material lengths are fixed by the negotiated algorithms and
    /// stay far below that, so this is a programming error, never input.
    pub fn prf_plus(self, key: &[u8], seed: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
        let out_len = self.out_len();
        assert!(
            len <= 255 * out_len,
            "prf+ output of {len} bytes exceeds 255 blocks (RFC 7296 §2.13)"
        );
        let keyed = HmacKey::new(self.hash(), key);
        let mut out = Zeroizing::new(Vec::with_capacity(len.div_ceil(out_len) * out_len));
        let mut t = Zeroizing::new([0u8; MAX_HASH_LEN]);
        let mut t_len = 0;
        let mut counter: u8 = 1;
        while out.len() < len {
            let mut next = Zeroizing::new([0u8; MAX_HASH_LEN]);
            t_len = keyed.compute_into(&[&t[..t_len], seed, &[counter]], &mut next);
            *t = *next;
            out.extend_from_slice(&t[..t_len]);
            counter = counter.wrapping_add(1);
        }
        out.truncate(len);
        out
    }
}
