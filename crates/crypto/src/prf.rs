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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::hex;

    const JEFE_DATA: &[u8] = b"what do ya want for nothing?";
    const BIG_KEY_DATA: &[u8] = b"Test Using Larger Than Block-Size Key - Hash Key First";

    #[test]
    fn rfc2202_full_length() {
        // RFC 2202 §2 (MD5) and §3 (SHA-1), test cases 1, 2 and 6 (a key
        // longer than the block, hashed first).
        let md5 = Prf::HmacMd5;
        assert_eq!(
            md5.compute(&[0x0b; 16], &[b"Hi There"]),
            hex("9294727a3638bb1c13f48ef8158bfc9d")
        );
        assert_eq!(
            md5.compute(b"Jefe", &[JEFE_DATA]),
            hex("750c783e6ab0b503eaa86e310a5db738")
        );
        assert_eq!(
            md5.compute(&[0xaa; 80], &[BIG_KEY_DATA]),
            hex("6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd")
        );
        let sha1 = Prf::HmacSha1;
        assert_eq!(
            sha1.compute(&[0x0b; 20], &[b"Hi There"]),
            hex("b617318655057264e28bc0b6fb378c8ef146be00")
        );
        assert_eq!(
            sha1.compute(b"Jefe", &[JEFE_DATA]),
            hex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")
        );
        assert_eq!(
            sha1.compute(&[0xaa; 80], &[BIG_KEY_DATA]),
            hex("aa4ae5e15272d00e95705637ce8a3b55ed402112")
        );
    }

    #[test]
    fn rfc4231_full_length() {
        // RFC 4231 §4.2 (test case 1), §4.3 (2), §4.7 (6: 131-byte key).
        let k1 = [0x0b; 20];
        assert_eq!(
            Prf::HmacSha256.compute(&k1, &[b"Hi There"]),
            hex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        );
        assert_eq!(
            Prf::HmacSha384.compute(&k1, &[b"Hi There"]),
            hex(
                "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c
                 faea9ea9076ede7f4af152e8b2fa9cb6"
            )
        );
        assert_eq!(
            Prf::HmacSha512.compute(&k1, &[b"Hi There"]),
            hex(
                "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde
                 daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"
            )
        );
        assert_eq!(
            Prf::HmacSha256.compute(b"Jefe", &[b"what do ya ", b"want for nothing?"]),
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        assert_eq!(
            Prf::HmacSha256.compute(&[0xaa; 131], &[BIG_KEY_DATA]),
            hex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        );
    }

    /// Key and seed shaped like SKEYSEED's use in RFC 7296 §2.14:
    /// prf+(SKEYSEED, Ni | Nr | SPIi | SPIr).
    fn prf_plus_inputs() -> (Vec<u8>, Vec<u8>) {
        let key: Vec<u8> = (1..=32).collect();
        let mut seed = b"Ni".to_vec();
        seed.extend(0x40..0x50);
        seed.extend_from_slice(b"Nr");
        seed.extend(0x60..0x70);
        seed.extend([0u8; 8]);
        seed.extend([0xff; 8]);
        (key, seed)
    }

    #[test]
    fn prf_plus_matches_independent_computation() {
        // Expected values computed independently with Python's hmac module
        // following RFC 7296 §2.13 (T1 = prf(K, S|0x01), Tn = prf(K,
        // Tn-1|S|n)); they span several blocks and end mid-block.
        let (key, seed) = prf_plus_inputs();
        let cases: [(Prf, usize, &str); 3] = [
            (
                Prf::HmacMd5,
                100,
                "d649080bf710a902632a598e2084345d5bcc4722ec54ce622270f9fe333cbf7f
                 048c0960542561976fbadd9b08a4d212496d99db4a207e04d60d6fb96d4de6d2
                 543d9ab1e5b2a2fda10d57af2f74bc1b3d22d92fd51c8afdcafafbade34acbe5
                 87d8f6e1",
            ),
            (
                Prf::HmacSha1,
                100,
                "cf9ce349e3cef234c128bd85876948a306f8d7077d636a7c60086a8263dfcb4a
                 dc809c72d22b76967aef52281e6a020857edb24155ed18c5c7e28cbecd6ee251
                 d8acb1c34749b7b37ae2c8fa450c8f6f3670b9fa9e98d5dacfe146e359cb10e1
                 f5538903",
            ),
            (
                Prf::HmacSha384,
                150,
                "12d15bdc6afa77c5a84f08737899eaeb139c6013da24385217b438fe58196129
                 5811a1a12c197280de046caa804c676471c7a0bdf8e287d07c0aa8722a279d8d
                 b7c6255cf2268cc66ace9663e7370bb38923970be2c07040499f00dbc282c0f5
                 707c26b8de2a554cfb61c573b81c8051563b67b40ac38534c22eaf6b28a4add4
                 67fd596ab694be7a8bae8d1aa1b60a7792c2daf5bead",
            ),
        ];
        for (prf, len, expected) in cases {
            assert_eq!(*prf.prf_plus(&key, &seed, len), hex(expected), "{prf:?}");
        }
        let sha256 = Prf::HmacSha256.prf_plus(&key, &seed, 200);
        assert_eq!(
            *sha256,
            hex(
                "c184f05d215b0537317bc9a6613afead9c69c9cc9bbdea3b4898338c1b9118f1
                 9966b92fedb0e2c61de28fa600d63632430b541fc620bf901e749b5d92517728
                 6325cd9836c1e374fb401f554d80217cc44e33867e9a8f4bf58abb7c4b566052
                 35ed406f34704b54347f448612981c06a4e735161e8e3949f555c64eea0ba91b
                 22a160830d713bcc0074760d466dff20e0019105ecb607110f627122850af8c5
                 f8f3c00a3b9e31e0e98646114a76e45f1b03e2f463e09933f0849d72ebd8396f
                 2f59cb4be2e1e823"
            )
        );
    }

    #[test]
    fn prf_plus_structure() {
        let (key, seed) = prf_plus_inputs();
        for prf in Prf::ALL {
            let n = prf.out_len();
            let long = prf.prf_plus(&key, &seed, 3 * n + 5);
            assert_eq!(long.len(), 3 * n + 5);
            // T1 = prf(K, S | 0x01); T2 = prf(K, T1 | S | 0x02).
            let t1 = prf.compute(&key, &[&seed, &[1]]);
            let t2 = prf.compute(&key, &[&t1, &seed, &[2]]);
            assert_eq!(long[..n], t1[..]);
            assert_eq!(long[n..2 * n], t2[..]);
            // Shorter requests are prefixes of longer ones.
            assert_eq!(*prf.prf_plus(&key, &seed, n + 1), long[..n + 1]);
            assert!(prf.prf_plus(&key, &seed, 0).is_empty());
            // The counter's last value, 255, is still allowed.
            assert_eq!(prf.prf_plus(&key, &seed, 255 * n).len(), 255 * n);
        }
    }

    #[test]
    fn ikev2_kdf_cavs_vector_sha1() {
        // An IKEv2 KDF vector in the NIST CAVP SP 800-135 format (SHA-1,
        // DKM length 1056 bits), as printed by libreswan's CAVS test driver.
        // It exercises every IKEv2 use of prf and prf+ (RFC 7296 §2.13,
        // §2.14, §2.17, §2.18).
        let prf = Prf::HmacSha1;
        let gir = hex("4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52");
        let gir_new = hex("863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330");
        let (ni, nr) = (hex("32b50d5f4a3763f3"), hex("9206a04b26564cb1"));
        let (spi_i, spi_r) = (hex("34c9e7c188868785"), hex("3ff77d760d2b2199"));
        // SKEYSEED = prf(Ni | Nr, g^ir)
        let ni_nr = [ni.as_slice(), &nr].concat();
        let skeyseed = prf.compute(&ni_nr, &[&gir]);
        assert_eq!(skeyseed, hex("a9a7b222b59f8f48645f28a1db5b5f5d7479cba7"));
        // {SK_d | ...} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)
        let seed = [ni.as_slice(), &nr, &spi_i, &spi_r].concat();
        let dkm = prf.prf_plus(&skeyseed, &seed, 132);
        assert_eq!(
            *dkm,
            hex(
                "a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002
                 a2a63080e514a062768b76606f9fa5e992204fc5a670bde3f10d6b027113936a
                 5c55b648a194ae587b0088d52204b702c979fa280870d2ed41efa9c549fd1119
                 8af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a81157435
                 a7a56cc4"
            )
        );
        let sk_d = &dkm[..prf.key_len()];
        // KEYMAT = prf+(SK_d, Ni | Nr)
        assert_eq!(
            *prf.prf_plus(sk_d, &ni_nr, 132),
            hex(
                "8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c581
                 1a8e7b5d1cdabd9560b2d5e092d1f24e2d4b85eccdf0ad0dc9abd94b51ee7181
                 4ca6dbc8bb51b6309f5b9545c7eb35cf5580b1e521a8fe20754a2d883ba0c2cf
                 285f524aea6545b33106bc03e614296d319d41d4b50b3f510b1c0a22f3e66499
                 4d234cb4"
            )
        );
        // KEYMAT = prf+(SK_d, g^ir (new) | Ni | Nr)
        let gir_ni_nr = [gir_new.as_slice(), &ni, &nr].concat();
        assert_eq!(
            *prf.prf_plus(sk_d, &gir_ni_nr, 132),
            hex(
                "bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d373016
                 28190e38c66232eab4b3ab14c400a5197dd3730ed4820a8a10394d51e1c04000
                 52f63ebd36b0e7ef53aaed31eba4a5080d7d4b5666023a8bbb5ffb7857240f9a
                 05884d1b7d2f933708450b7b3288f1fc863ab49fa901227cffc06e27899c7054
                 d56fd74c"
            )
        );
        // SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)
        assert_eq!(
            prf.compute(sk_d, &[&gir_new, &ni, &nr]),
            hex("63e81194946ebd05df7df5ebf5d8750056bf1f1d")
        );
    }

    #[test]
    #[should_panic(expected = "255 blocks")]
    fn prf_plus_beyond_255_blocks_panics() {
        let _ = Prf::HmacSha1.prf_plus(b"k", b"s", 255 * 20 + 1);
    }
}
