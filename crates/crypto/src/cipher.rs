//! Keyed ESP/IKE ciphers: CBC mode (RFC 2405, RFC 2451, RFC 3602) and
//! AES-GCM (RFC 4106, RFC 5282).

use core::fmt;

use aes::cipher::KeyInit;
use des::cipher::generic_array::{ArrayLength, GenericArray};
use des::cipher::typenum::{U16, Unsigned};
use des::cipher::{
    Block, BlockBackend, BlockClosure, BlockDecrypt, BlockEncrypt, BlockSizeUser, ParBlocks,
};

use crate::{Encr, Error};

/// A keyed cipher. The key schedule is computed once in [`Cipher::new`];
/// the per-packet calls work in place on caller buffers and never allocate.
#[derive(Clone)]
pub struct Cipher {
    encr: Encr,
    inner: Inner,
}

// AES-GCM is kept inline: it is an ESP suite of its own, read by every packet of its SA.
// The CBC ciphers are boxed: on the ESP data path they run inside `CbcHmac` (the stitched
// code, or its boxed separate path), so here they serve IKE messages, and inline they would
// size every `Cipher` by the largest of them (AES-256, 960 bytes with the software
// fallback's key schedule) against the 544 of a GCM key.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Inner {
    Cbc(Box<Cbc>),
    /// AES-GCM through ring (its assembly interleaves AES-NI/VAES with PCLMUL GHASH);
    /// the key size is in the key.
    Gcm {
        aead: ring::aead::LessSafeKey,
        salt: [u8; 4],
    },
}

/// A keyed CBC block cipher, both directions (crate-private: [`Cipher`] and the separate
/// path of `CbcHmac` box one each).
// Boxed as a whole wherever it is kept, so its largest variant sizes only its own box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum Cbc {
    Des(des::Des),
    TripleDes(des::TdesEde3),
    Aes128(aes::Aes128),
    Aes192(aes::Aes192),
    Aes256(aes::Aes256),
}

impl Cbc {
    /// `key` must be exactly `encr.key_len()` bytes; AEAD ciphers are refused.
    pub(crate) fn new(encr: Encr, key: &[u8]) -> Result<Self, Error> {
        if key.len() != encr.key_len() {
            return Err(Error::InvalidKeyLength);
        }
        Ok(match encr {
            Encr::Des => Cbc::Des(keyed(key)?),
            Encr::TripleDes => Cbc::TripleDes(keyed(key)?),
            Encr::AesCbc128 => Cbc::Aes128(keyed(key)?),
            Encr::AesCbc192 => Cbc::Aes192(keyed(key)?),
            Encr::AesCbc256 => Cbc::Aes256(keyed(key)?),
            Encr::AesGcm16_128 | Encr::AesGcm16_256 => return Err(Error::Unsupported),
        })
    }

    /// As [`Cipher::cbc_encrypt`].
    pub(crate) fn encrypt(&self, iv: &[u8], buf: &mut [u8]) -> Result<(), Error> {
        match self {
            Cbc::Des(c) => cbc_encrypt(c, iv, buf),
            Cbc::TripleDes(c) => cbc_encrypt(c, iv, buf),
            Cbc::Aes128(c) => cbc_encrypt(c, iv, buf),
            Cbc::Aes192(c) => cbc_encrypt(c, iv, buf),
            Cbc::Aes256(c) => cbc_encrypt(c, iv, buf),
        }
    }

    /// [`Self::encrypt`] on several independent chains (packets) at once: their blocks
    /// are encrypted side by side, eight per step through the backend's parallel path
    /// when eight chains are under way. Each chain alone is serial (RFC 3602 §2: C_i needs
    /// C_{i-1}), so one AES-NI unit would mostly wait on the previous round's latency; the
    /// chains fill it. Same bytes as `encrypt` on each chain. Fails with nothing encrypted
    /// if any chain's IV or length is wrong.
    pub(crate) fn encrypt_many(&self, chains: &mut [Chain<'_>]) -> Result<(), Error> {
        match self {
            Cbc::Des(c) => chains_one_by_one(c, chains),
            Cbc::TripleDes(c) => chains_one_by_one(c, chains),
            Cbc::Aes128(c) => cbc_encrypt_many(c, chains),
            Cbc::Aes192(c) => cbc_encrypt_many(c, chains),
            Cbc::Aes256(c) => cbc_encrypt_many(c, chains),
        }
    }

    /// As [`Cipher::cbc_decrypt`].
    pub(crate) fn decrypt(&self, iv: &[u8], buf: &mut [u8]) -> Result<(), Error> {
        match self {
            Cbc::Des(c) => cbc_decrypt(c, iv, buf),
            Cbc::TripleDes(c) => cbc_decrypt(c, iv, buf),
            Cbc::Aes128(c) => cbc_decrypt(c, iv, buf),
            Cbc::Aes192(c) => cbc_decrypt(c, iv, buf),
            Cbc::Aes256(c) => cbc_decrypt(c, iv, buf),
        }
    }
}

impl Cipher {
    /// `key` must be exactly `encr.key_len()` bytes; for GCM its last four
    /// bytes are the salt (RFC 4106 §8.1).
    pub fn new(encr: Encr, key: &[u8]) -> Result<Self, Error> {
        if key.len() != encr.key_len() {
            return Err(Error::InvalidKeyLength);
        }
        let inner = match encr {
            Encr::AesGcm16_128 => gcm(&ring::aead::AES_128_GCM, key)?,
            Encr::AesGcm16_256 => gcm(&ring::aead::AES_256_GCM, key)?,
            Encr::Des | Encr::TripleDes | Encr::AesCbc128 | Encr::AesCbc192 | Encr::AesCbc256 => {
                Inner::Cbc(Box::new(Cbc::new(encr, key)?))
            }
        };
        Ok(Cipher { encr, inner })
    }

    pub fn encr(&self) -> Encr {
        self.encr
    }

    /// CBC-encrypts `buf` in place (RFC 3602 §2). `iv` is `encr().iv_len()`
    /// bytes and `buf.len()` a multiple of `encr().block_len()`; padding is
    /// the caller's job (ESP and IKE pad differently).
    pub fn cbc_encrypt(&self, iv: &[u8], buf: &mut [u8]) -> Result<(), Error> {
        match &self.inner {
            Inner::Cbc(c) => c.encrypt(iv, buf),
            Inner::Gcm { .. } => Err(Error::Unsupported),
        }
    }

    /// CBC-decrypts `buf` in place; same length rules as `cbc_encrypt`.
    pub fn cbc_decrypt(&self, iv: &[u8], buf: &mut [u8]) -> Result<(), Error> {
        match &self.inner {
            Inner::Cbc(c) => c.decrypt(iv, buf),
            Inner::Gcm { .. } => Err(Error::Unsupported),
        }
    }

    /// AEAD-encrypts `buf` in place and writes the 16-byte ICV to `tag`.
    /// The nonce is salt || iv with an 8-byte `iv` (RFC 4106 §4); ESP's AAD
    /// is SPI || sequence number (RFC 4106 §5), IKE's the header and the
    /// Encrypted payload header (RFC 5282 §5.1).
    pub fn aead_seal(
        &self,
        iv: &[u8],
        aad: &[u8],
        buf: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), Error> {
        if tag.len() != GCM_TAG_LEN {
            return Err(Error::InvalidLength);
        }
        let Inner::Gcm { aead, salt } = &self.inner else {
            return Err(Error::Unsupported);
        };
        let t = aead
            .seal_in_place_separate_tag(gcm_nonce(salt, iv)?, ring::aead::Aad::from(aad), buf)
            .map_err(|_| Error::InvalidLength)?;
        tag.copy_from_slice(t.as_ref());
        Ok(())
    }

    /// Verifies `tag` and decrypts `buf` in place. On failure the contents of
    /// `buf` are unspecified (the backend decrypts while it authenticates):
    /// callers drop the packet or message.
    pub fn aead_open(
        &self,
        iv: &[u8],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<(), Error> {
        if tag.len() != GCM_TAG_LEN {
            return Err(Error::InvalidLength);
        }
        let Inner::Gcm { aead, salt } = &self.inner else {
            return Err(Error::Unsupported);
        };
        let tag: [u8; GCM_TAG_LEN] = tag.try_into().map_err(|_| Error::InvalidLength)?;
        aead.open_in_place_separate_tag(
            gcm_nonce(salt, iv)?,
            ring::aead::Aad::from(aad),
            ring::aead::Tag::from(tag),
            buf,
            0..,
        )
        .map(drop)
        .map_err(|_| Error::AuthenticationFailed)
    }
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cipher")
            .field("encr", &self.encr)
            .field("key", &"<redacted>")
            .finish()
    }
}

const GCM_TAG_LEN: usize = 16;
const GCM_SALT_LEN: usize = 4;
const GCM_IV_LEN: usize = 8;

fn keyed<C: KeyInit>(key: &[u8]) -> Result<C, Error> {
    C::new_from_slice(key).map_err(|_| Error::InvalidKeyLength)
}

/// RFC 4106 §8.1: the key is the AES key followed by a 4-byte salt.
fn gcm(alg: &'static ring::aead::Algorithm, key: &[u8]) -> Result<Inner, Error> {
    let (k, salt) = split_salt(key)?;
    let unbound = ring::aead::UnboundKey::new(alg, k).map_err(|_| Error::InvalidKeyLength)?;
    Ok(Inner::Gcm {
        aead: ring::aead::LessSafeKey::new(unbound),
        salt,
    })
}

fn split_salt(key: &[u8]) -> Result<(&[u8], [u8; GCM_SALT_LEN]), Error> {
    let at = key
        .len()
        .checked_sub(GCM_SALT_LEN)
        .ok_or(Error::InvalidKeyLength)?;
    let (k, s) = key.split_at(at);
    let salt = s.try_into().map_err(|_| Error::InvalidKeyLength)?;
    Ok((k, salt))
}

/// RFC 4106 §4: the 12-byte nonce is the 4-byte salt followed by the 8-byte
/// explicit IV carried in the packet.
fn gcm_nonce(salt: &[u8; GCM_SALT_LEN], iv: &[u8]) -> Result<ring::aead::Nonce, Error> {
    if iv.len() != GCM_IV_LEN {
        return Err(Error::InvalidLength);
    }
    let mut nonce = [0u8; ring::aead::NONCE_LEN];
    nonce[..GCM_SALT_LEN].copy_from_slice(salt);
    nonce[GCM_SALT_LEN..].copy_from_slice(iv);
    Ok(ring::aead::Nonce::assume_unique_for_key(nonce))
}

fn check_cbc<C: BlockSizeUser>(iv: &[u8], buf: &[u8]) -> Result<(), Error> {
    let bs = C::block_size();
    if iv.len() != bs || !buf.len().is_multiple_of(bs) {
        return Err(Error::InvalidLength);
    }
    Ok(())
}

/// RFC 3602 §2: C_i = E(P_i xor C_{i-1}), C_0 = IV. Inherently serial.
fn cbc_encrypt<C: BlockEncrypt>(c: &C, iv: &[u8], buf: &mut [u8]) -> Result<(), Error> {
    check_cbc::<C>(iv, buf)?;
    c.encrypt_with_backend(CbcEncrypt {
        iv: Block::<C>::clone_from_slice(iv),
        buf,
    });
    Ok(())
}

/// One CBC chain for [`Cbc::encrypt_many`]: its IV and its whole blocks, encrypted in
/// place.
pub(crate) struct Chain<'a> {
    pub(crate) iv: &'a [u8],
    pub(crate) buf: &'a mut [u8],
}

fn check_chains<C: BlockSizeUser>(chains: &[Chain<'_>]) -> Result<(), Error> {
    chains.iter().try_for_each(|c| check_cbc::<C>(c.iv, c.buf))
}

fn chains_one_by_one<C: BlockEncrypt>(c: &C, chains: &mut [Chain<'_>]) -> Result<(), Error> {
    check_chains::<C>(chains)?;
    for ch in chains {
        cbc_encrypt(c, ch.iv, ch.buf)?;
    }
    Ok(())
}

fn cbc_encrypt_many<C>(c: &C, chains: &mut [Chain<'_>]) -> Result<(), Error>
where
    C: BlockEncrypt + BlockSizeUser<BlockSize = U16>,
{
    check_chains::<C>(chains)?;
    c.encrypt_with_backend(CbcEncryptMany { chains });
    Ok(())
}

/// P_i = D(C_i) xor C_{i-1}. Unlike encryption the block decryptions are
/// independent, so they go through the backend's parallel path (eight
/// blocks at a time with AES-NI).
fn cbc_decrypt<C: BlockDecrypt>(c: &C, iv: &[u8], buf: &mut [u8]) -> Result<(), Error> {
    check_cbc::<C>(iv, buf)?;
    c.decrypt_with_backend(CbcDecrypt {
        iv: Block::<C>::clone_from_slice(iv),
        buf,
    });
    Ok(())
}

// The closures run inside the cipher's backend, so the CPU-feature dispatch
// (AES-NI or software) happens once per call, not once per block.
struct CbcEncrypt<'a, BS: ArrayLength<u8>> {
    iv: GenericArray<u8, BS>,
    buf: &'a mut [u8],
}

impl<BS: ArrayLength<u8>> BlockSizeUser for CbcEncrypt<'_, BS> {
    type BlockSize = BS;
}

impl<BS: ArrayLength<u8>> BlockClosure for CbcEncrypt<'_, BS> {
    fn call<B: BlockBackend<BlockSize = BS>>(self, backend: &mut B) {
        let mut prev = self.iv;
        for chunk in self.buf.chunks_exact_mut(BS::USIZE) {
            let block = GenericArray::from_mut_slice(chunk);
            xor_in_place(block, &prev);
            backend.proc_block_inplace(block);
            prev.copy_from_slice(block);
        }
    }
}

/// Chains taken in groups of the backend's parallel width: while every chain of a group
/// has blocks left, one block of each is encrypted per step (in one parallel call when
/// the group is full); the longer chains then finish one by one.
struct CbcEncryptMany<'a, 'b> {
    chains: &'a mut [Chain<'b>],
}

impl BlockSizeUser for CbcEncryptMany<'_, '_> {
    type BlockSize = U16;
}

impl BlockClosure for CbcEncryptMany<'_, '_> {
    fn call<B: BlockBackend<BlockSize = Self::BlockSize>>(self, backend: &mut B) {
        let bs = 16;
        let width = B::ParBlocksSize::USIZE;
        for group in self.chains.chunks_mut(width) {
            let mut prev = ParBlocks::<B>::default();
            for (p, c) in prev.iter_mut().zip(group.iter()) {
                p.copy_from_slice(c.iv);
            }
            let steps = group.iter().map(|c| c.buf.len() / bs).min().unwrap_or(0);
            let full = group.len() == width;
            let mut blocks = ParBlocks::<B>::default();
            for step in 0..steps {
                let at = step * bs..(step + 1) * bs;
                for ((b, p), c) in blocks.iter_mut().zip(prev.iter()).zip(group.iter()) {
                    b.copy_from_slice(&c.buf[at.clone()]);
                    xor_in_place(b, p);
                }
                if full {
                    backend.proc_par_blocks_inplace(&mut blocks);
                } else {
                    for b in blocks.iter_mut().take(group.len()) {
                        backend.proc_block_inplace(b);
                    }
                }
                for ((b, p), c) in blocks.iter().zip(prev.iter_mut()).zip(group.iter_mut()) {
                    c.buf[at.clone()].copy_from_slice(b);
                    p.copy_from_slice(b);
                }
            }
            for (p, c) in prev.iter_mut().zip(group.iter_mut()) {
                for chunk in c.buf[steps * bs..].chunks_exact_mut(bs) {
                    let block = GenericArray::from_mut_slice(chunk);
                    xor_in_place(block, p);
                    backend.proc_block_inplace(block);
                    p.copy_from_slice(block);
                }
            }
        }
    }
}

struct CbcDecrypt<'a, BS: ArrayLength<u8>> {
    iv: GenericArray<u8, BS>,
    buf: &'a mut [u8],
}

impl<BS: ArrayLength<u8>> BlockSizeUser for CbcDecrypt<'_, BS> {
    type BlockSize = BS;
}

impl<BS: ArrayLength<u8>> BlockClosure for CbcDecrypt<'_, BS> {
    fn call<B: BlockBackend<BlockSize = BS>>(self, backend: &mut B) {
        let bs = BS::USIZE;
        let mut prev = self.iv;
        let mut par = ParBlocks::<B>::default();
        let mut batches = self.buf.chunks_exact_mut(bs * B::ParBlocksSize::USIZE);
        for batch in &mut batches {
            for (b, chunk) in par.iter_mut().zip(batch.chunks_exact(bs)) {
                b.copy_from_slice(chunk);
            }
            backend.proc_par_blocks_inplace(&mut par);
            // `batch` still holds the ciphertext: write the plaintext back
            // to front so each C_{i-1} is read before P_{i-1} replaces it.
            let mut chunks = batch.chunks_exact_mut(bs).rev().peekable();
            let mut blocks = par.iter().rev();
            let next_prev = chunks.peek().map(|c| GenericArray::clone_from_slice(c));
            while let (Some(out), Some(d)) = (chunks.next(), blocks.next()) {
                let c_prev: &[u8] = match chunks.peek() {
                    Some(c) => c,
                    None => &prev,
                };
                let mut p = d.clone();
                xor_in_place(&mut p, c_prev);
                out.copy_from_slice(&p);
            }
            if let Some(n) = next_prev {
                prev = n;
            }
        }
        for chunk in batches.into_remainder().chunks_exact_mut(bs) {
            let ct = GenericArray::<u8, BS>::clone_from_slice(chunk);
            let block = GenericArray::from_mut_slice(chunk);
            backend.proc_block_inplace(block);
            xor_in_place(block, &prev);
            prev = ct;
        }
    }
}

fn xor_in_place(a: &mut [u8], b: &[u8]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::hex;

    fn cbc_kat(encr: Encr, key: &str, iv: &str, plain: &[u8], cipher: &str) {
        let c = Cipher::new(encr, &hex(key)).unwrap();
        let iv = hex(iv);
        let mut buf = plain.to_vec();
        c.cbc_encrypt(&iv, &mut buf).unwrap();
        assert_eq!(buf, hex(cipher), "{encr:?} encrypt");
        c.cbc_decrypt(&iv, &mut buf).unwrap();
        assert_eq!(buf, plain, "{encr:?} decrypt");
    }

    #[test]
    fn rfc3602_aes128_cbc() {
        // RFC 3602 §4, cases #1 to #4.
        cbc_kat(
            Encr::AesCbc128,
            "06a9214036b8a15b512e03d534120006",
            "3dafba429d9eb430b422da802c9fac41",
            b"Single block msg",
            "e353779c1079aeb82708942dbe77181a",
        );
        cbc_kat(
            Encr::AesCbc128,
            "c286696d887c9aa0611bbb3e2025a45a",
            "562e17996d093d28ddb3ba695a2e6f58",
            &(0u8..32).collect::<Vec<_>>(),
            "d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1",
        );
        cbc_kat(
            Encr::AesCbc128,
            "6c3ea0477630ce21a2ce334aa746c2cd",
            "c782dc4c098c66cbd9cd27d825682c81",
            b"This is a 48-byte message (exactly 3 AES blocks)",
            "d0a02b3836451753d493665d33f0e8862dea54cdb293abc7506939276772f8d5
             021c19216bad525c8579695d83ba2684",
        );
        cbc_kat(
            Encr::AesCbc128,
            "56e47a38c5598974bc46903dba290349",
            "8ce82eefbea0da3c44699ed7db51b7d9",
            &(0xa0u8..0xe0).collect::<Vec<_>>(),
            "c30e32ffedc0774e6aff6af0869f71aa0f3af07a9a31a9c684db207eb0ef8e4e
             35907aa632c3ffdf868bb7b29d3d46ad83ce9f9a102ee99d49a53e87f4c3da55",
        );
    }

    const SP800_38A_PLAIN: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51
                                   30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";
    const SP800_38A_IV: &str = "000102030405060708090a0b0c0d0e0f";

    #[test]
    fn sp800_38a_aes192_and_aes256_cbc() {
        // NIST SP 800-38A F.2.3 (CBC-AES192) and F.2.5 (CBC-AES256).
        cbc_kat(
            Encr::AesCbc192,
            "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
            SP800_38A_IV,
            &hex(SP800_38A_PLAIN),
            "4f021db243bc633d7178183a9fa071e8b4d9ada9ad7dedf4e5e738763f69145a
             571b242012fb7ae07fa9baac3df102e008b0e27988598881d920a9e64f5615cd",
        );
        cbc_kat(
            Encr::AesCbc256,
            "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
            SP800_38A_IV,
            &hex(SP800_38A_PLAIN),
            "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d
             39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b",
        );
    }

    #[test]
    fn des_and_3des() {
        // FIPS 81 Appendix C, table C1: the CBC example.
        cbc_kat(
            Encr::Des,
            "0123456789abcdef",
            "1234567890abcdef",
            b"Now is the time for all ",
            "e5c7cdde872bf27c43e934008c389c0f683788499a7c05f6",
        );
        // The classic single-block DES example (key 133457799BBCDFF1); a zero
        // IV turns one CBC block into the raw cipher.
        cbc_kat(
            Encr::Des,
            "133457799bbcdff1",
            "0000000000000000",
            &hex("0123456789abcdef"),
            "85e813540f0ab405",
        );
        // NIST SP 800-67 Rev. 1 Appendix B: TDEA in ECB mode, one block at a
        // time with a zero IV.
        let key = "0123456789abcdef23456789abcdef01456789abcdef0123";
        let plain = b"The qufck brown fox jump";
        let expected = ["a826fd8ce53b855f", "cce21c8112256fe6", "68d5c05dd9b6b900"];
        for (block, ct) in plain.chunks(8).zip(expected) {
            cbc_kat(Encr::TripleDes, key, "0000000000000000", block, ct);
        }
    }

    /// Block-at-a-time CBC decryption, the textbook definition, to check the
    /// batched implementation against.
    fn naive_cbc_decrypt(key: &[u8], iv: &[u8], buf: &mut [u8]) {
        let c = aes::Aes256::new_from_slice(key).unwrap();
        let mut prev = iv.to_vec();
        for chunk in buf.chunks_exact_mut(16) {
            let ct = chunk.to_vec();
            c.decrypt_block(Block::<aes::Aes256>::from_mut_slice(chunk));
            xor_in_place(chunk, &prev);
            prev = ct;
        }
    }

    #[test]
    fn batched_cbc_decrypt_matches_block_at_a_time() {
        let key: Vec<u8> = (0..32).map(|i| i * 7).collect();
        let iv: Vec<u8> = (0..16).map(|i| 0xf0 ^ i).collect();
        let c = Cipher::new(Encr::AesCbc256, &key).unwrap();
        // Lengths around and past the 8-block batch, up to a full MTU.
        for blocks in [0usize, 1, 2, 7, 8, 9, 15, 16, 17, 24, 25, 88] {
            let plain: Vec<u8> = (0..blocks * 16).map(|i| (i * 31 % 251) as u8).collect();
            let mut buf = plain.clone();
            c.cbc_encrypt(&iv, &mut buf).unwrap();
            let mut naive = buf.clone();
            naive_cbc_decrypt(&key, &iv, &mut naive);
            assert_eq!(naive, plain, "{blocks} blocks");
            c.cbc_decrypt(&iv, &mut buf).unwrap();
            assert_eq!(buf, plain, "{blocks} blocks");
        }
    }

    #[test]
    fn cbc_rejects_bad_lengths_and_aead_calls() {
        let c = Cipher::new(Encr::AesCbc128, &[0; 16]).unwrap();
        let mut buf = [0u8; 32];
        assert_eq!(c.cbc_encrypt(&[0; 8], &mut buf), Err(Error::InvalidLength));
        assert_eq!(
            c.cbc_decrypt(&[0; 16], &mut buf[..31]),
            Err(Error::InvalidLength)
        );
        let mut tag = [0u8; 16];
        assert_eq!(
            c.aead_seal(&[0; 8], &[], &mut buf, &mut tag),
            Err(Error::Unsupported)
        );
        assert_eq!(
            c.aead_open(&[0; 8], &[], &mut buf, &tag),
            Err(Error::Unsupported)
        );
        let d = Cipher::new(Encr::TripleDes, &[1; 24]).unwrap();
        assert_eq!(
            d.cbc_encrypt(&[0; 8], &mut buf[..12]),
            Err(Error::InvalidLength)
        );
        assert_eq!(d.encr(), Encr::TripleDes);
    }

    /// An ESP AES-GCM SA keeps one inline: a ring key (544 bytes) and the salt, not the
    /// 960 bytes of the boxed CBC ciphers' largest key schedule.
    #[test]
    fn a_cipher_stays_small() {
        let n = size_of::<Cipher>();
        assert!(n <= 576, "Cipher is {n} bytes");
    }

    #[test]
    fn key_length_is_enforced() {
        for encr in Encr::ALL {
            let n = encr.key_len();
            assert!(Cipher::new(encr, &vec![0x55; n]).is_ok(), "{encr:?}");
            assert_eq!(
                Cipher::new(encr, &vec![0; n - 1]).unwrap_err(),
                Error::InvalidKeyLength
            );
            assert_eq!(
                Cipher::new(encr, &vec![0; n + 1]).unwrap_err(),
                Error::InvalidKeyLength
            );
        }
    }

    const GCM_PLAIN: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
    const GCM_AAD: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
    const GCM_KEY: &str = "feffe9928665731c6d6a8f9467308308";

    /// McGrew & Viega, "The Galois/Counter Mode of Operation", test cases
    /// with the 96-bit IV cafebabefacedbaddecaf888. In RFC 4106 terms the
    /// first four IV bytes are the salt at the end of the key material and
    /// the last eight the per-packet IV.
    fn gcm_kat(encr: Encr, aes_key: &str, aad: &[u8], plain: &[u8], cipher: &str, tag: &str) {
        let mut key = hex(aes_key);
        key.extend(hex("cafebabe"));
        let c = Cipher::new(encr, &key).unwrap();
        let iv = hex("facedbaddecaf888");
        let mut buf = plain.to_vec();
        let mut t = [0u8; 16];
        c.aead_seal(&iv, aad, &mut buf, &mut t).unwrap();
        assert_eq!(buf, hex(cipher), "{encr:?} ciphertext");
        assert_eq!(t.to_vec(), hex(tag), "{encr:?} tag");
        c.aead_open(&iv, aad, &mut buf, &t).unwrap();
        assert_eq!(buf, plain);
    }

    #[test]
    fn gcm_spec_test_cases() {
        let plain = hex(GCM_PLAIN);
        let aad = hex(GCM_AAD);
        // Test case 3: AES-128, no AAD.
        gcm_kat(
            Encr::AesGcm16_128,
            GCM_KEY,
            &[],
            &plain,
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
            "4d5c2af327cd64a62cf35abd2ba6fab4",
        );
        // Test case 4: AES-128, AAD, 60-byte plaintext.
        gcm_kat(
            Encr::AesGcm16_128,
            GCM_KEY,
            &aad,
            &plain[..60],
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
            "5bc94fbc3221a5db94fae95ae7121a47",
        );
        // Test case 15: AES-256, no AAD.
        let key256 = format!("{GCM_KEY}{GCM_KEY}");
        gcm_kat(
            Encr::AesGcm16_256,
            &key256,
            &[],
            &plain,
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
            "b094dac5d93471bdec1a502270e3cc6c",
        );
        // Test case 16: AES-256, AAD, 60-byte plaintext.
        gcm_kat(
            Encr::AesGcm16_256,
            &key256,
            &aad,
            &plain[..60],
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            "76fc6ece0f4e1768cddf8853bb2d551b",
        );
    }

    /// ring against RustCrypto's aes-gcm (the previous backend) over every length up to
    /// a few blocks past an MTU, both key sizes.
    #[test]
    fn gcm_matches_an_independent_implementation() {
        use aes_gcm::aead::{AeadInPlace, KeyInit};
        for (encr, key_len) in [(Encr::AesGcm16_128, 16), (Encr::AesGcm16_256, 32)] {
            let key: Vec<u8> = (0..key_len + 4).map(|i| (i * 29 + 7) as u8).collect();
            let c = Cipher::new(encr, &key).unwrap();
            let (k, salt) = key.split_at(key_len);
            let iv = [0x5au8; 8];
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(salt);
            nonce[4..].copy_from_slice(&iv);
            let aad = [1u8, 2, 3, 4, 0, 0, 0, 9];
            for len in (0..1600).step_by(37).chain([1, 15, 16, 17, 1400, 1438]) {
                let plain: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
                let mut ours = plain.clone();
                let mut tag = [0u8; 16];
                c.aead_seal(&iv, &aad, &mut ours, &mut tag).unwrap();
                let mut theirs = plain.clone();
                let t = if key_len == 16 {
                    aes_gcm::Aes128Gcm::new_from_slice(k)
                        .unwrap()
                        .encrypt_in_place_detached(&nonce.into(), &aad, &mut theirs)
                } else {
                    aes_gcm::Aes256Gcm::new_from_slice(k)
                        .unwrap()
                        .encrypt_in_place_detached(&nonce.into(), &aad, &mut theirs)
                }
                .unwrap();
                assert_eq!(ours, theirs, "{encr:?} len {len}");
                assert_eq!(tag.as_slice(), t.as_slice(), "{encr:?} len {len}");
                c.aead_open(&iv, &aad, &mut ours, &tag).unwrap();
                assert_eq!(ours, plain);
            }
        }
    }

    #[test]
    fn gcm_open_rejects_tampering_and_releases_no_plaintext() {
        let c = Cipher::new(Encr::AesGcm16_128, &[9; 20]).unwrap();
        let iv = [1u8; 8];
        let aad = b"spi+seq";
        let mut buf = *b"inner ip packet!";
        let mut tag = [0u8; 16];
        c.aead_seal(&iv, aad, &mut buf, &mut tag).unwrap();
        let sealed = buf;
        let mut bad_tag = tag;
        bad_tag[0] ^= 0x80;
        let mut tampered = sealed;
        tampered[3] ^= 1;
        type Case<'a> = (&'a [u8], &'a [u8], [u8; 16], &'a [u8]);
        let cases: [Case; 4] = [
            (&iv, aad, sealed, &bad_tag),
            (&iv, b"spi+seR", sealed, &tag),
            (&[2; 8], aad, sealed, &tag),
            (&iv, aad, tampered, &tag),
        ];
        for (iv, aad, mut b, tag) in cases {
            assert_eq!(
                c.aead_open(iv, aad, &mut b, tag),
                Err(Error::AuthenticationFailed)
            );
            // The buffer's contents are unspecified on failure, but never the plaintext.
            assert_ne!(&b, b"inner ip packet!");
        }
        c.aead_open(&iv, aad, &mut buf, &tag).unwrap();
        assert_eq!(&buf, b"inner ip packet!");
    }

    #[test]
    fn gcm_salt_is_part_of_the_nonce() {
        // Same AES key, different salt: different ciphertext (RFC 4106 §4).
        let mut k1 = [3u8; 20];
        let c1 = Cipher::new(Encr::AesGcm16_128, &k1).unwrap();
        k1[19] ^= 1;
        let c2 = Cipher::new(Encr::AesGcm16_128, &k1).unwrap();
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        let mut t = [0u8; 16];
        c1.aead_seal(&[0; 8], &[], &mut a, &mut t).unwrap();
        c2.aead_seal(&[0; 8], &[], &mut b, &mut t).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn gcm_rejects_bad_lengths_and_cbc_calls() {
        let c = Cipher::new(Encr::AesGcm16_256, &[0; 36]).unwrap();
        let mut buf = [0u8; 16];
        let mut tag = [0u8; 16];
        assert_eq!(
            c.aead_seal(&[0; 12], &[], &mut buf, &mut tag),
            Err(Error::InvalidLength)
        );
        assert_eq!(
            c.aead_seal(&[0; 8], &[], &mut buf, &mut tag[..12]),
            Err(Error::InvalidLength)
        );
        assert_eq!(
            c.aead_open(&[0; 8], &[], &mut buf, &tag[..15]),
            Err(Error::InvalidLength)
        );
        assert_eq!(c.cbc_encrypt(&[0; 16], &mut buf), Err(Error::Unsupported));
        assert_eq!(c.cbc_decrypt(&[0; 16], &mut buf), Err(Error::Unsupported));
        // GCM needs no block alignment: odd lengths round-trip.
        let mut odd = [7u8; 13];
        c.aead_seal(&[5; 8], b"a", &mut odd, &mut tag).unwrap();
        c.aead_open(&[5; 8], b"a", &mut odd, &tag).unwrap();
        assert_eq!(odd, [7u8; 13]);
    }
}
