#!/usr/bin/env python3
"""Derives the golden ESP packets of tests/kat.rs independently of the Rust code.

Built from the RFC rules alone with the `cryptography` package (OpenSSL): RFC 4303 §2
(layout, padding 1,2,3..., Pad Length, Next Header 4; vpngw pads AES-GCM to 16 bytes,
peers such as the Linux kernel to 4), RFC 4106 (AES-GCM: nonce = salt ||
IV, AAD = SPI || sequence number, 16-byte ICV), RFC 3602 + RFC 2404 (AES-CBC, ICV =
HMAC-SHA1-96 over header || IV || ciphertext), RFC 4868 (HMAC-SHA-512-256).
Run: python3 crates/esp/tests/kat_gen.py
"""
import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SPI = 0xC0FFEE01
MASK = (1 << 64) - 1


def checksum(data):
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def inner_packet(payload_len):
    """IPv4/UDP 10.2.0.5:40000 -> 10.1.0.9:53, TTL 64, DF, ident 1, payload 0,1,2..."""
    total = 28 + payload_len
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 17, 0,
                      bytes([10, 2, 0, 5]), bytes([10, 1, 0, 9]))
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    udp = struct.pack("!HHHH", 40000, 53, 8 + payload_len, 0)
    return hdr + udp + bytes(i % 256 for i in range(payload_len))


def trailer(data_len, align):
    pad = (-(data_len + 2)) % align
    return bytes(range(1, pad + 1)) + bytes([pad, 4])


def splitmix64(state, n):
    out = b""
    while len(out) < n:
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        out += struct.pack("<Q", z ^ (z >> 31))
    return out[:n]


def gcm_packet(seq, payload_len, align):
    key = bytes(range(1, 21))  # 16-byte AES key || 4-byte salt (RFC 4106 §8.1)
    aes, salt = key[:16], key[16:]
    iv = struct.pack("!Q", seq)  # RFC 4106 §3.1: the sequence number as IV
    header = struct.pack("!II", SPI, seq)
    inner = inner_packet(payload_len)
    plaintext = inner + trailer(len(inner), align)
    sealed = AESGCM(aes).encrypt(salt + iv, plaintext, header)  # ciphertext || tag
    return header + iv + sealed


def cbc_sha1_packet(seq, payload_len, seed_state):
    key = bytes(range(1, 17))
    integ_key = bytes(0x80 + i for i in range(20))
    # The sender's IV rule: AES_K(seed XOR (seq as 8 big-endian bytes || 8 zero bytes)).
    seed = bytearray(splitmix64(seed_state, 16))
    for i, b in enumerate(struct.pack("!Q", seq)):
        seed[i] ^= b
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    iv = enc.update(bytes(seed)) + enc.finalize()
    header = struct.pack("!II", SPI, seq)
    inner = inner_packet(payload_len)
    plaintext = inner + trailer(len(inner), 16)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ct = enc.update(plaintext) + enc.finalize()
    icv = hmac.new(integ_key, header + iv + ct, hashlib.sha1).digest()[:12]
    return header + iv + ct + icv


def cbc_sha512_packet(seq, payload_len, iv):
    key = bytes(range(1, 33))
    integ_key = bytes(0x80 + i for i in range(64))
    header = struct.pack("!II", SPI, seq)
    inner = inner_packet(payload_len)
    plaintext = inner + trailer(len(inner), 16)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ct = enc.update(plaintext) + enc.finalize()
    icv = hmac.new(integ_key, header + iv + ct, hashlib.sha512).digest()[:32]
    return header + iv + ct + icv


if __name__ == "__main__":
    print("GCM128 seq 1, 4-byte payload, padded to 16 (vpngw):", gcm_packet(1, 4, 16).hex())
    print("GCM128 seq 1, 4-byte payload, padded to 4 (a peer):", gcm_packet(1, 4, 4).hex())
    print("CBC128-SHA1 seq 1, 4-byte payload, seed TestRandom(7):",
          cbc_sha1_packet(1, 4, 7).hex())
    print("CBC256-SHA512 seq 5, 20-byte payload, IV 0xf0..0xff:",
          cbc_sha512_packet(5, 20, bytes(range(0xF0, 0x100))).hex())
