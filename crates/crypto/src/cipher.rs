//! Keyed ESP/IKE ciphers: CBC mode (RFC 2405, RFC 2451, RFC 3602) and
//! AES-GCM (RFC 4106, RFC 5282).

use core::fmt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::aead::KeyInit;
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce, Tag};
use des::cipher::{Block, BlockDecrypt, BlockEncrypt, BlockSizeUser};

use crate::{Encr, Error};

/// A keyed cipher. The key schedule is computed once in [`Cipher::new`];
/// the per-packet calls work in place on caller buffers and never allocate.
#[derive(Clone)]
pub struct Cipher {
    encr: Encr,
    inner: Inner,
}

// One Cipher exists per SA direction: keeping the key schedule inline
// avoids a pointer chase per packet, which is worth the size difference.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Inner {
    Des(des::Des),
    TripleDes(des::TdesEde3),
    Aes128(aes::Aes128),
    Aes192(aes::Aes192),
    Aes256(aes::Aes256),
    Gcm128 { aead: Aes128Gcm, salt: [u8; 4] },
    Gcm256 { aead: Aes256Gcm, salt: [u8; 4] },
}

impl Cipher {
    /// `key` must be exactly `encr.key_len()` bytes; for GCM its last four
    /// bytes are the salt (RFC 4106 §8.1).
    pub fn new(encr: Encr, key: &[u8]) -> Result<Self, Error> {
        if key.len() != encr.key_len() {
            return Err(Error::InvalidKeyLength);
        }
        let inner = match encr {
            Encr::Des => Inner::Des(keyed(key)?),
            Encr::TripleDes => Inner::TripleDes(keyed(key)?),
            Encr::AesCbc128 => Inner::Aes128(keyed(key)?),
            Encr::AesCbc192 => Inner::Aes192(keyed(key)?),
            Encr::AesCbc256 => Inner::Aes256(keyed(key)?),
            Encr::AesGcm16_128 => {
                let (k, salt) = split_salt(key)?;
                Inner::Gcm128 {
                    aead: keyed(k)?,
                    salt,
                }
            }
            Encr::AesGcm16_256 => {
                let (k, salt) = split_salt(key)?;
                Inner::Gcm256 {
                    aead: keyed(k)?,
                    salt,
                }
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
            Inner::Des(c) => cbc_encrypt(c, iv, buf),
            Inner::TripleDes(c) => cbc_encrypt(c, iv, buf),
            Inner::Aes128(c) => cbc_encrypt(c, iv, buf),
            Inner::Aes192(c) => cbc_encrypt(c, iv, buf),
            Inner::Aes256(c) => cbc_encrypt(c, iv, buf),
            Inner::Gcm128 { .. } | Inner::Gcm256 { .. } => Err(Error::Unsupported),
        }
    }

    /// CBC-decrypts `buf` in place; same length rules as `cbc_encrypt`.
    pub fn cbc_decrypt(&self, iv: &[u8], buf: &mut [u8]) -> Result<(), Error> {
        match &self.inner {
            Inner::Des(c) => cbc_decrypt(c, iv, buf),
            Inner::TripleDes(c) => cbc_decrypt(c, iv, buf),
            Inner::Aes128(c) => cbc_decrypt(c, iv, buf),
            Inner::Aes192(c) => cbc_decrypt(c, iv, buf),
            Inner::Aes256(c) => cbc_decrypt(c, iv, buf),
            Inner::Gcm128 { .. } | Inner::Gcm256 { .. } => Err(Error::Unsupported),
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
        let t = match &self.inner {
            Inner::Gcm128 { aead, salt } => {
                aead.encrypt_in_place_detached(&gcm_nonce(salt, iv)?, aad, buf)
            }
            Inner::Gcm256 { aead, salt } => {
                aead.encrypt_in_place_detached(&gcm_nonce(salt, iv)?, aad, buf)
            }
            _ => return Err(Error::Unsupported),
        }
        .map_err(|_| Error::InvalidLength)?;
        tag.copy_from_slice(&t);
        Ok(())
    }

    /// Verifies `tag` and decrypts `buf` in place. On failure `buf` is left
    /// as it was (the tag is checked before decryption).
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
        let tag = Tag::from_slice(tag);
        match &self.inner {
            Inner::Gcm128 { aead, salt } => {
                aead.decrypt_in_place_detached(&gcm_nonce(salt, iv)?, aad, buf, tag)
            }
            Inner::Gcm256 { aead, salt } => {
                aead.decrypt_in_place_detached(&gcm_nonce(salt, iv)?, aad, buf, tag)
            }
            _ => return Err(Error::Unsupported),
        }
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
fn gcm_nonce(
    salt: &[u8; GCM_SALT_LEN],
    iv: &[u8],
) -> Result<Nonce<aes_gcm::aead::consts::U12>, Error> {
    if iv.len() != GCM_IV_LEN {
        return Err(Error::InvalidLength);
    }
    let mut nonce = Nonce::default();
    nonce[..GCM_SALT_LEN].copy_from_slice(salt);
    nonce[GCM_SALT_LEN..].copy_from_slice(iv);
    Ok(nonce)
}

fn check_cbc<C: BlockSizeUser>(iv: &[u8], buf: &[u8]) -> Result<usize, Error> {
    let bs = C::block_size();
    if iv.len() != bs || buf.len() % bs != 0 {
        return Err(Error::InvalidLength);
    }
    Ok(bs)
}

/// RFC 3602 §2: C_i = E(P_i xor C_{i-1}), C_0 = IV. Inherently serial.
fn cbc_encrypt<C: BlockEncrypt>(c: &C, iv: &[u8], buf: &mut [u8]) -> Result<(), Error> {
    let bs = check_cbc::<C>(iv, buf)?;
    let mut prev = Block::<C>::clone_from_slice(iv);
    for chunk in buf.chunks_exact_mut(bs) {
        let block = Block::<C>::from_mut_slice(chunk);
        xor_in_place(block, &prev);
        c.encrypt_block(block);
        prev.copy_from_slice(block);
    }
    Ok(())
}

/// Blocks decrypted per batch: AES-NI pipelines eight blocks at a time.
const CBC_BATCH: usize = 8;

/// P_i = D(C_i) xor C_{i-1}. Unlike encryption the block decryptions are
/// independent, so they run in batches the backend can parallelize.
fn cbc_decrypt<C: BlockDecrypt>(c: &C, iv: &[u8], buf: &mut [u8]) -> Result<(), Error> {
    let bs = check_cbc::<C>(iv, buf)?;
    let mut prev = Block::<C>::clone_from_slice(iv);
    let mut blocks: [Block<C>; CBC_BATCH] = Default::default();
    for batch in buf.chunks_mut(bs * CBC_BATCH) {
        let n = batch.len() / bs;
        for (b, chunk) in blocks.iter_mut().zip(batch.chunks_exact(bs)) {
            b.copy_from_slice(chunk);
        }
        c.decrypt_blocks(&mut blocks[..n]);
        // blocks[] still holds nothing of the ciphertext now, but `batch`
        // does until overwritten: walk backwards so C_{i-1} is read before
        // P_{i-1} replaces it.
        let next_prev = Block::<C>::clone_from_slice(&batch[(n - 1) * bs..]);
        for i in (1..n).rev() {
            let (before, at) = batch.split_at_mut(i * bs);
            let out = &mut at[..bs];
            for ((o, d), p) in out
                .iter_mut()
                .zip(blocks[i].iter())
                .zip(&before[(i - 1) * bs..])
            {
                *o = d ^ p;
            }
        }
        for ((o, d), p) in batch[..bs]
            .iter_mut()
            .zip(blocks[0].iter())
            .zip(prev.iter())
        {
            *o = d ^ p;
        }
        prev = next_prev;
    }
    Ok(())
}

fn xor_in_place(a: &mut [u8], b: &[u8]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}
