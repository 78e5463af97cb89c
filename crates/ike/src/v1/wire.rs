//! ISAKMP (IKEv1) wire format: RFC 2408 §3 header and payloads, the IPsec DOI's
//! attributes and identification types (RFC 2407 §4), IKE's phase 1 attributes
//! (RFC 2409 Appendix A) and NAT-D (RFC 3947 §3.2).
//!
//! The header shares its 28-byte layout with IKEv2 but carries major version 1 and the
//! Encryption/Commit/Authentication-only flags. The payload chain after the header is
//! kept raw ([`RawPayload`]) because IKEv1's hashes are computed over payload bodies
//! (`SAi_b`, `IDii_b`) and over the exact bytes that follow the HASH payload
//! (RFC 2409 §5.5); typed views (`SaPayload`, `Id`, `Notify`, `Delete`) are parsed from
//! the bodies on demand. Every read is bounds-checked; malformed input is a
//! [`DecodeError`], never a panic.

use std::net::Ipv4Addr;

use crate::wire::{DecodeError, Reader};

/// Length of the ISAKMP header (RFC 2408 §3.1).
pub const HEADER_LEN: usize = 28;

/// ISAKMP payload types (RFC 2408 §3.1, RFC 3947 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PayloadType(pub u8);

impl PayloadType {
    pub const NONE: Self = Self(0);
    pub const SA: Self = Self(1);
    pub const PROPOSAL: Self = Self(2);
    pub const TRANSFORM: Self = Self(3);
    pub const KE: Self = Self(4);
    pub const ID: Self = Self(5);
    pub const CERT: Self = Self(6);
    pub const CR: Self = Self(7);
    pub const HASH: Self = Self(8);
    pub const SIG: Self = Self(9);
    pub const NONCE: Self = Self(10);
    pub const N: Self = Self(11);
    pub const D: Self = Self(12);
    pub const VID: Self = Self(13);
    /// RFC 3947 §3.2.
    pub const NAT_D: Self = Self(20);
    pub const NAT_OA: Self = Self(21);
    /// Pre-RFC drafts of NAT-T (draft-ietf-ipsec-nat-t-ike-02/03).
    pub const NAT_D_DRAFT: Self = Self(130);
    pub const NAT_OA_DRAFT: Self = Self(131);

    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "NONE",
            1 => "SA",
            2 => "P",
            3 => "T",
            4 => "KE",
            5 => "ID",
            6 => "CERT",
            7 => "CR",
            8 => "HASH",
            9 => "SIG",
            10 => "No",
            11 => "N",
            12 => "D",
            13 => "V",
            20 | 130 => "NAT-D",
            21 | 131 => "NAT-OA",
            _ => "?",
        }
    }
}

/// ISAKMP exchange types (RFC 2408 §3.1, RFC 2409 §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Exchange(pub u8);

impl Exchange {
    /// Identity Protection, IKE's Main Mode.
    pub const MAIN: Self = Self(2);
    pub const AGGRESSIVE: Self = Self(4);
    pub const INFORMATIONAL: Self = Self(5);
    pub const QUICK: Self = Self(32);

    pub fn name(self) -> &'static str {
        match self.0 {
            2 => "Main Mode",
            4 => "Aggressive Mode",
            5 => "Informational",
            32 => "Quick Mode",
            _ => "unknown exchange",
        }
    }
}

/// Header flags (RFC 2408 §3.1).
pub mod flags {
    /// The payloads after the header are encrypted.
    pub const ENCRYPTION: u8 = 0x01;
    pub const COMMIT: u8 = 0x02;
    pub const AUTH_ONLY: u8 = 0x04;
}

/// Protocol IDs (RFC 2407 §4.4.1).
pub mod proto {
    pub const ISAKMP: u8 = 1;
    pub const AH: u8 = 2;
    pub const ESP: u8 = 3;
}

/// Notify message types (RFC 2408 §3.14.1, RFC 2407 §4.6.3, RFC 3706 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NotifyType(pub u16);

impl NotifyType {
    pub const INVALID_PAYLOAD_TYPE: Self = Self(1);
    pub const DOI_NOT_SUPPORTED: Self = Self(2);
    pub const SITUATION_NOT_SUPPORTED: Self = Self(3);
    pub const INVALID_COOKIE: Self = Self(4);
    pub const INVALID_MAJOR_VERSION: Self = Self(5);
    pub const INVALID_EXCHANGE_TYPE: Self = Self(7);
    pub const INVALID_FLAGS: Self = Self(8);
    pub const INVALID_MESSAGE_ID: Self = Self(9);
    pub const INVALID_PROTOCOL_ID: Self = Self(10);
    pub const INVALID_SPI: Self = Self(11);
    pub const INVALID_TRANSFORM_ID: Self = Self(12);
    pub const ATTRIBUTES_NOT_SUPPORTED: Self = Self(13);
    pub const NO_PROPOSAL_CHOSEN: Self = Self(14);
    pub const BAD_PROPOSAL_SYNTAX: Self = Self(15);
    pub const PAYLOAD_MALFORMED: Self = Self(16);
    pub const INVALID_KEY_INFORMATION: Self = Self(17);
    pub const INVALID_ID_INFORMATION: Self = Self(18);
    pub const INVALID_HASH_INFORMATION: Self = Self(23);
    pub const AUTHENTICATION_FAILED: Self = Self(24);
    pub const UNSUPPORTED_EXCHANGE_TYPE: Self = Self(29);
    pub const CONNECTED: Self = Self(16384);
    pub const RESPONDER_LIFETIME: Self = Self(24576);
    pub const REPLAY_STATUS: Self = Self(24577);
    pub const INITIAL_CONTACT: Self = Self(24578);
    pub const R_U_THERE: Self = Self(36136);
    pub const R_U_THERE_ACK: Self = Self(36137);

    /// Error types are 1–16383 (RFC 2408 §3.14.1).
    pub fn is_error(self) -> bool {
        (1..16384).contains(&self.0)
    }

    pub fn name(self) -> String {
        let s = match self.0 {
            1 => "INVALID-PAYLOAD-TYPE",
            2 => "DOI-NOT-SUPPORTED",
            3 => "SITUATION-NOT-SUPPORTED",
            4 => "INVALID-COOKIE",
            5 => "INVALID-MAJOR-VERSION",
            6 => "INVALID-MINOR-VERSION",
            7 => "INVALID-EXCHANGE-TYPE",
            8 => "INVALID-FLAGS",
            9 => "INVALID-MESSAGE-ID",
            10 => "INVALID-PROTOCOL-ID",
            11 => "INVALID-SPI",
            12 => "INVALID-TRANSFORM-ID",
            13 => "ATTRIBUTES-NOT-SUPPORTED",
            14 => "NO-PROPOSAL-CHOSEN",
            15 => "BAD-PROPOSAL-SYNTAX",
            16 => "PAYLOAD-MALFORMED",
            17 => "INVALID-KEY-INFORMATION",
            18 => "INVALID-ID-INFORMATION",
            19 => "INVALID-CERT-ENCODING",
            20 => "INVALID-CERTIFICATE",
            23 => "INVALID-HASH-INFORMATION",
            24 => "AUTHENTICATION-FAILED",
            25 => "INVALID-SIGNATURE",
            29 => "UNSUPPORTED-EXCHANGE-TYPE",
            30 => "UNEQUAL-PAYLOAD-LENGTHS",
            16384 => "CONNECTED",
            24576 => "RESPONDER-LIFETIME",
            24577 => "REPLAY-STATUS",
            24578 => "INITIAL-CONTACT",
            36136 => "R-U-THERE",
            36137 => "R-U-THERE-ACK",
            n => return format!("notify {n}"),
        };
        s.to_string()
    }
}

/// Identification types (RFC 2407 §4.6.2.1).
pub mod id_type {
    pub const IPV4_ADDR: u8 = 1;
    pub const FQDN: u8 = 2;
    pub const USER_FQDN: u8 = 3;
    pub const IPV4_ADDR_SUBNET: u8 = 4;
    pub const IPV6_ADDR: u8 = 5;
    pub const IPV4_ADDR_RANGE: u8 = 7;
    pub const KEY_ID: u8 = 11;
}

/// IPsec DOI (RFC 2407 §4.2) and SIT_IDENTITY_ONLY (§4.2.1).
pub const DOI_IPSEC: u32 = 1;
pub const SIT_IDENTITY_ONLY: u32 = 1;
/// Phase 1 transform ID (RFC 2407 §4.4.2).
pub const KEY_IKE: u8 = 1;

/// Phase 1 attribute classes (RFC 2409 Appendix A).
pub mod p1 {
    pub const ENCRYPTION: u16 = 1;
    pub const HASH: u16 = 2;
    pub const AUTH_METHOD: u16 = 3;
    pub const GROUP: u16 = 4;
    pub const LIFE_TYPE: u16 = 11;
    pub const LIFE_DURATION: u16 = 12;
    pub const PRF: u16 = 13;
    pub const KEY_LENGTH: u16 = 14;

    pub const AUTH_PSK: u16 = 1;
    /// Encryption algorithm values: DES-CBC, 3DES-CBC, AES-CBC (RFC 3602 §5).
    pub const ENC_DES: u16 = 1;
    pub const ENC_3DES: u16 = 5;
    pub const ENC_AES: u16 = 7;
}

/// IPsec DOI SA attributes (RFC 2407 §4.5).
pub mod p2 {
    pub const LIFE_TYPE: u16 = 1;
    pub const LIFE_DURATION: u16 = 2;
    pub const GROUP: u16 = 3;
    pub const ENCAP_MODE: u16 = 4;
    pub const AUTH_ALG: u16 = 5;
    pub const KEY_LENGTH: u16 = 6;
    /// RFC 4304 §2: value 1 asks for 64-bit (extended) sequence numbers.
    pub const EXT_SEQ_NUMBER: u16 = 11;

    pub const ENCAP_TUNNEL: u16 = 1;
    pub const ENCAP_TRANSPORT: u16 = 2;
    /// RFC 3947 §5.1.
    pub const ENCAP_UDP_TUNNEL: u16 = 3;
    /// draft-ietf-ipsec-nat-t-ike-00..03 private value, still sent by some peers.
    pub const ENCAP_UDP_TUNNEL_DRAFT: u16 = 61443;
}

/// Life types shared by phase 1 and the IPsec DOI.
pub const LIFE_SECONDS: u16 = 1;
pub const LIFE_KILOBYTES: u16 = 2;

/// Vendor IDs we send and recognize.
pub mod vid {
    /// RFC 3706 §2: Dead Peer Detection, version 1.0.
    pub const DPD: [u8; 16] = [
        0xaf, 0xca, 0xd7, 0x13, 0x68, 0xa1, 0xf1, 0xc9, 0x6b, 0x86, 0x96, 0xfc, 0x77, 0x57, 0x01,
        0x00,
    ];
    /// RFC 3947 §3.1: MD5("RFC 3947").
    pub const NAT_T_RFC3947: [u8; 16] = [
        0x4a, 0x13, 0x1c, 0x81, 0x07, 0x03, 0x58, 0x45, 0x5c, 0x57, 0x28, 0xf2, 0x0e, 0x95, 0x45,
        0x2f,
    ];
    /// MD5("draft-ietf-ipsec-nat-t-ike-02\n"), which peers predating RFC 3947 send.
    pub const NAT_T_DRAFT_02N: [u8; 16] = [
        0x90, 0xcb, 0x80, 0x91, 0x3e, 0xbb, 0x69, 0x6e, 0x08, 0x63, 0x81, 0xb5, 0xec, 0x42, 0x7b,
        0x1f,
    ];
    /// MD5("strongSwan").
    pub const STRONGSWAN: [u8; 16] = [
        0x88, 0x2f, 0xe5, 0x6d, 0x6f, 0xd2, 0x0d, 0xbc, 0x22, 0x51, 0x61, 0x3b, 0x2e, 0xbe, 0x5b,
        0xeb,
    ];
}

/// The fixed ISAKMP header (RFC 2408 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub cky_i: u64,
    pub cky_r: u64,
    pub next: PayloadType,
    pub exchange: Exchange,
    pub flags: u8,
    pub message_id: u32,
    /// Total message length including the header.
    pub length: u32,
}

impl Header {
    /// Parses the header of a whole datagram: major version 1, and the length field
    /// equal to the datagram's length.
    pub fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let cky_i = u64::from_be_bytes(arr8(r.take(8, "ISAKMP header")?));
        let cky_r = u64::from_be_bytes(arr8(r.take(8, "ISAKMP header")?));
        let next = PayloadType(r.u8("ISAKMP header")?);
        let version = r.u8("ISAKMP header")?;
        if version >> 4 != 1 {
            return Err(DecodeError::InvalidMajorVersion(version >> 4));
        }
        let exchange = Exchange(r.u8("ISAKMP header")?);
        let flags = r.u8("ISAKMP header")?;
        let message_id = r.u32("ISAKMP header")?;
        let length = r.u32("ISAKMP header")?;
        if (length as usize) < HEADER_LEN || length as usize > buf.len() {
            return Err(DecodeError::InvalidLength("ISAKMP header"));
        }
        if length as usize != buf.len() {
            return Err(DecodeError::TrailingBytes("ISAKMP message"));
        }
        Ok(Self {
            cky_i,
            cky_r,
            next,
            exchange,
            flags,
            message_id,
            length,
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.cky_i.to_be_bytes());
        out.extend_from_slice(&self.cky_r.to_be_bytes());
        out.push(self.next.0);
        out.push(0x10); // major 1, minor 0
        out.push(self.exchange.0);
        out.push(self.flags);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }

    pub fn encrypted(&self) -> bool {
        self.flags & flags::ENCRYPTION != 0
    }
}

fn arr8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(b.get(..8).unwrap_or(&[0; 8]));
    a
}

/// One payload of a chain, body without its 4-byte generic header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPayload {
    pub ptype: PayloadType,
    pub body: Vec<u8>,
}

impl RawPayload {
    pub fn new(ptype: PayloadType, body: Vec<u8>) -> Self {
        Self { ptype, body }
    }
}

/// A decoded payload chain plus what the hashes need: the chain's own bytes (without
/// trailing encryption padding) and where each payload ends in them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    pub payloads: Vec<RawPayload>,
    pub raw: Vec<u8>,
    /// End offset in `raw` of each payload (header included).
    pub ends: Vec<usize>,
}

impl Chain {
    /// Decodes the chain starting with payload type `first`. With `padded` (the
    /// decrypted body of an encrypted message) bytes after the last payload are the
    /// CBC padding and ignored; otherwise they are an error.
    pub fn decode(first: PayloadType, data: &[u8], padded: bool) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        let mut next = first;
        let mut payloads = Vec::new();
        let mut ends = Vec::new();
        let mut used = 0usize;
        while next != PayloadType::NONE {
            if payloads.len() >= 64 {
                return Err(DecodeError::InvalidValue("too many payloads"));
            }
            let ptype = next;
            next = PayloadType(r.u8("payload header")?);
            let _reserved = r.u8("payload header")?;
            let len = usize::from(r.u16("payload header")?);
            if len < 4 {
                return Err(DecodeError::InvalidLength("payload"));
            }
            let body = r.take(len - 4, "payload body")?;
            used += len;
            payloads.push(RawPayload::new(ptype, body.to_vec()));
            ends.push(used);
        }
        if !padded {
            r.expect_empty("payload chain")?;
        }
        Ok(Self {
            payloads,
            raw: data.get(..used).unwrap_or_default().to_vec(),
            ends,
        })
    }

    /// The bytes after payload `i` (what HASH(1)/(2) cover when `i` is the HASH).
    pub fn after(&self, i: usize) -> &[u8] {
        self.ends
            .get(i)
            .and_then(|&e| self.raw.get(e..))
            .unwrap_or_default()
    }

    pub fn first(&self, t: PayloadType) -> Option<&[u8]> {
        self.payloads
            .iter()
            .find(|p| p.ptype == t)
            .map(|p| p.body.as_slice())
    }

    pub fn all(&self, t: PayloadType) -> impl Iterator<Item = &[u8]> {
        self.payloads
            .iter()
            .filter(move |p| p.ptype == t)
            .map(|p| p.body.as_slice())
    }

    /// `[ SA KE No ID ]` as strongSwan logs it.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = self.payloads.iter().map(|p| p.ptype.name()).collect();
        format!("[ {} ]", names.join(" "))
    }
}

/// Encodes a payload chain (generic headers included); returns the first type.
pub fn encode_chain(payloads: &[RawPayload], out: &mut Vec<u8>) -> PayloadType {
    for (i, p) in payloads.iter().enumerate() {
        let next = payloads.get(i + 1).map_or(PayloadType::NONE, |n| n.ptype);
        out.push(next.0);
        out.push(0);
        let len = u16::try_from(p.body.len() + 4).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&p.body);
    }
    payloads.first().map_or(PayloadType::NONE, |p| p.ptype)
}

/// A whole unencrypted message: header and chain.
pub fn encode_plain(mut h: Header, payloads: &[RawPayload]) -> Vec<u8> {
    let mut body = Vec::new();
    h.next = encode_chain(payloads, &mut body);
    h.flags &= !flags::ENCRYPTION;
    h.length = u32::try_from(HEADER_LEN + body.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    h.emit(&mut out);
    out.extend_from_slice(&body);
    out
}

// ---- SA payload -------------------------------------------------------------------

/// A data attribute (RFC 2408 §3.3): basic (TV, 16-bit value) or variable (TLV).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    Basic(u16),
    Var(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub typ: u16,
    pub value: AttrValue,
}

impl Attr {
    pub fn basic(typ: u16, v: u16) -> Self {
        Self {
            typ,
            value: AttrValue::Basic(v),
        }
    }

    /// A number: basic if it fits 16 bits, else a 4-byte variable attribute (the
    /// form strongSwan uses for lifetimes over 65535 s).
    pub fn number(typ: u16, v: u32) -> Self {
        match u16::try_from(v) {
            Ok(v) => Self::basic(typ, v),
            Err(_) => Self {
                typ,
                value: AttrValue::Var(v.to_be_bytes().to_vec()),
            },
        }
    }

    /// The value as a number (variable attributes up to 8 bytes, saturating to u32).
    pub fn as_u32(&self) -> Option<u32> {
        match &self.value {
            AttrValue::Basic(v) => Some(u32::from(*v)),
            AttrValue::Var(b) if !b.is_empty() && b.len() <= 8 => {
                let v = b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x));
                Some(u32::try_from(v).unwrap_or(u32::MAX))
            }
            AttrValue::Var(_) => None,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match &self.value {
            AttrValue::Basic(v) => {
                out.extend_from_slice(&(self.typ | 0x8000).to_be_bytes());
                out.extend_from_slice(&v.to_be_bytes());
            }
            AttrValue::Var(b) => {
                out.extend_from_slice(&(self.typ & 0x7fff).to_be_bytes());
                let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(b);
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let t = r.u16("attribute")?;
        let v = r.u16("attribute")?;
        Ok(if t & 0x8000 != 0 {
            Self::basic(t & 0x7fff, v)
        } else {
            Self {
                typ: t,
                value: AttrValue::Var(r.take(usize::from(v), "attribute value")?.to_vec()),
            }
        })
    }
}

/// A bare list of data attributes (RESPONDER-LIFETIME data, RFC 2407 §4.6.3.1).
pub fn encode_attrs(attrs: &[Attr]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in attrs {
        a.encode(&mut out);
    }
    out
}

pub fn decode_attrs(data: &[u8]) -> Option<Vec<Attr>> {
    let mut r = Reader::new(data);
    let mut out = Vec::new();
    while !r.is_empty() && out.len() < 32 {
        out.push(Attr::read(&mut r).ok()?);
    }
    r.is_empty().then_some(out)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    pub num: u8,
    pub id: u8,
    pub attrs: Vec<Attr>,
}

impl Transform {
    pub fn attr(&self, typ: u16) -> Option<&Attr> {
        self.attrs.iter().find(|a| a.typ == typ)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub num: u8,
    pub protocol: u8,
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

/// The SA payload body (RFC 2408 §3.4, RFC 2407 §4.6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaPayload {
    pub doi: u32,
    pub situation: u32,
    pub proposals: Vec<Proposal>,
}

impl SaPayload {
    pub fn new(proposals: Vec<Proposal>) -> Self {
        Self {
            doi: DOI_IPSEC,
            situation: SIT_IDENTITY_ONLY,
            proposals,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.doi.to_be_bytes());
        out.extend_from_slice(&self.situation.to_be_bytes());
        for (i, p) in self.proposals.iter().enumerate() {
            let start = out.len();
            out.push(if i + 1 < self.proposals.len() { 2 } else { 0 });
            out.push(0);
            out.extend_from_slice(&[0, 0]);
            out.push(p.num);
            out.push(p.protocol);
            out.push(u8::try_from(p.spi.len()).unwrap_or(0));
            out.push(u8::try_from(p.transforms.len()).unwrap_or(0));
            out.extend_from_slice(&p.spi);
            for (j, t) in p.transforms.iter().enumerate() {
                let ts = out.len();
                out.push(if j + 1 < p.transforms.len() { 3 } else { 0 });
                out.push(0);
                out.extend_from_slice(&[0, 0]);
                out.push(t.num);
                out.push(t.id);
                out.extend_from_slice(&[0, 0]);
                for a in &t.attrs {
                    a.encode(&mut out);
                }
                let len = u16::try_from(out.len() - ts).unwrap_or(u16::MAX);
                out[ts + 2..ts + 4].copy_from_slice(&len.to_be_bytes());
            }
            let len = u16::try_from(out.len() - start).unwrap_or(u16::MAX);
            out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
        }
        out
    }

    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let doi = r.u32("SA DOI")?;
        let situation = r.u32("SA situation")?;
        if doi != DOI_IPSEC {
            return Err(DecodeError::InvalidValue("SA DOI"));
        }
        let mut proposals = Vec::new();
        let mut more = true;
        while more {
            let next = r.u8("proposal")?;
            if next != 0 && next != 2 {
                return Err(DecodeError::InvalidValue("proposal next payload"));
            }
            more = next == 2;
            let _ = r.u8("proposal")?;
            let len = usize::from(r.u16("proposal")?);
            let mut p = r.sub(
                len.checked_sub(4)
                    .ok_or(DecodeError::InvalidLength("proposal"))?,
                "proposal",
            )?;
            let num = p.u8("proposal")?;
            let protocol = p.u8("proposal")?;
            let spi_size = usize::from(p.u8("proposal")?);
            let count = p.u8("proposal")?;
            let spi = p.take(spi_size, "proposal SPI")?.to_vec();
            let mut transforms = Vec::new();
            for i in 0..count {
                let next = p.u8("transform")?;
                let last = i + 1 == count;
                if (last && next != 0) || (!last && next != 3) {
                    return Err(DecodeError::InvalidValue("transform next payload"));
                }
                let _ = p.u8("transform")?;
                let len = usize::from(p.u16("transform")?);
                let mut t = p.sub(
                    len.checked_sub(4)
                        .ok_or(DecodeError::InvalidLength("transform"))?,
                    "transform",
                )?;
                let tnum = t.u8("transform")?;
                let id = t.u8("transform")?;
                let _ = t.u16("transform")?;
                let mut attrs = Vec::new();
                while !t.is_empty() {
                    if attrs.len() >= 32 {
                        return Err(DecodeError::InvalidValue("too many attributes"));
                    }
                    attrs.push(Attr::read(&mut t)?);
                }
                transforms.push(Transform {
                    num: tnum,
                    id,
                    attrs,
                });
            }
            p.expect_empty("proposal")?;
            proposals.push(Proposal {
                num,
                protocol,
                spi,
                transforms,
            });
            if proposals.len() > 64 {
                return Err(DecodeError::InvalidValue("too many proposals"));
            }
        }
        r.expect_empty("SA payload")?;
        Ok(Self {
            doi,
            situation,
            proposals,
        })
    }
}

// ---- ID, notify, delete -------------------------------------------------------------

/// The Identification payload body (RFC 2407 §4.6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id {
    pub id_type: u8,
    pub protocol: u8,
    pub port: u16,
    pub data: Vec<u8>,
}

impl Id {
    pub fn ipv4(a: Ipv4Addr) -> Self {
        Self {
            id_type: id_type::IPV4_ADDR,
            protocol: 0,
            port: 0,
            data: a.octets().to_vec(),
        }
    }

    pub fn fqdn(n: &str) -> Self {
        Self {
            id_type: id_type::FQDN,
            protocol: 0,
            port: 0,
            data: n.as_bytes().to_vec(),
        }
    }

    /// A quick mode client ID: ID_IPV4_ADDR_SUBNET (address, mask), RFC 2407 §4.6.2.
    pub fn subnet(addr: Ipv4Addr, prefix: u8) -> Self {
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix.min(32)))
        };
        let mut data = addr.octets().to_vec();
        data.extend_from_slice(&mask.to_be_bytes());
        Self {
            id_type: id_type::IPV4_ADDR_SUBNET,
            protocol: 0,
            port: 0,
            data,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.id_type, self.protocol];
        out.extend_from_slice(&self.port.to_be_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let id_type = r.u8("ID")?;
        let protocol = r.u8("ID")?;
        let port = r.u16("ID")?;
        let data = r.rest().to_vec();
        let want = match id_type {
            id_type::IPV4_ADDR => Some(4),
            id_type::IPV4_ADDR_SUBNET | id_type::IPV4_ADDR_RANGE => Some(8),
            id_type::IPV6_ADDR => Some(16),
            _ => None,
        };
        if want.is_some_and(|n| n != data.len()) {
            return Err(DecodeError::InvalidLength("ID data"));
        }
        Ok(Self {
            id_type,
            protocol,
            port,
            data,
        })
    }

    /// For quick mode IDs: the address range, if IPv4.
    pub fn ipv4_range(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let a = |i: usize| -> Option<Ipv4Addr> {
            let b: [u8; 4] = self.data.get(i..i + 4)?.try_into().ok()?;
            Some(Ipv4Addr::from(b))
        };
        match self.id_type {
            id_type::IPV4_ADDR => Some((a(0)?, a(0)?)),
            id_type::IPV4_ADDR_SUBNET => {
                let (addr, mask) = (u32::from(a(0)?), u32::from(a(4)?));
                // A mask must be contiguous ones (RFC 2407 §4.6.2.4).
                if mask.leading_ones() + mask.trailing_zeros() != 32 {
                    return None;
                }
                Some((Ipv4Addr::from(addr & mask), Ipv4Addr::from(addr | !mask)))
            }
            id_type::IPV4_ADDR_RANGE => {
                let (s, e) = (a(0)?, a(4)?);
                (s <= e).then_some((s, e))
            }
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match self.id_type {
            id_type::IPV4_ADDR if self.data.len() == 4 => {
                format!(
                    "{}",
                    Ipv4Addr::new(self.data[0], self.data[1], self.data[2], self.data[3])
                )
            }
            id_type::FQDN | id_type::USER_FQDN => String::from_utf8_lossy(&self.data).into_owned(),
            id_type::IPV4_ADDR_SUBNET | id_type::IPV4_ADDR_RANGE => self
                .ipv4_range()
                .map_or_else(|| "invalid subnet".into(), |(s, e)| range_string(s, e)),
            t => format!("ID type {t} ({} bytes)", self.data.len()),
        }
    }
}

fn range_string(s: Ipv4Addr, e: Ipv4Addr) -> String {
    crate::ts::TsRange {
        ip_proto: 0,
        start_port: 0,
        end_port: u16::MAX,
        start: s,
        end: e,
    }
    .to_string()
}

/// The Notification payload body (RFC 2408 §3.14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub doi: u32,
    pub protocol: u8,
    pub msg_type: NotifyType,
    pub spi: Vec<u8>,
    pub data: Vec<u8>,
}

impl Notify {
    pub fn new(protocol: u8, msg_type: NotifyType, spi: Vec<u8>, data: Vec<u8>) -> Self {
        Self {
            doi: DOI_IPSEC,
            protocol,
            msg_type,
            spi,
            data,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.doi.to_be_bytes().to_vec();
        out.push(self.protocol);
        out.push(u8::try_from(self.spi.len()).unwrap_or(0));
        out.extend_from_slice(&self.msg_type.0.to_be_bytes());
        out.extend_from_slice(&self.spi);
        out.extend_from_slice(&self.data);
        out
    }

    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let doi = r.u32("N")?;
        let protocol = r.u8("N")?;
        let spi_size = usize::from(r.u8("N")?);
        let msg_type = NotifyType(r.u16("N")?);
        let spi = r.take(spi_size, "N SPI")?.to_vec();
        Ok(Self {
            doi,
            protocol,
            msg_type,
            spi,
            data: r.rest().to_vec(),
        })
    }
}

/// The Delete payload body (RFC 2408 §3.15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub doi: u32,
    pub protocol: u8,
    pub spis: Vec<Vec<u8>>,
}

impl Delete {
    pub fn isakmp(cky_i: u64, cky_r: u64) -> Self {
        Self {
            doi: DOI_IPSEC,
            protocol: proto::ISAKMP,
            spis: vec![cookies(cky_i, cky_r)],
        }
    }

    pub fn esp(spis: &[u32]) -> Self {
        Self {
            doi: DOI_IPSEC,
            protocol: proto::ESP,
            spis: spis.iter().map(|s| s.to_be_bytes().to_vec()).collect(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let size = self.spis.first().map_or(0, Vec::len);
        let mut out = self.doi.to_be_bytes().to_vec();
        out.push(self.protocol);
        out.push(u8::try_from(size).unwrap_or(0));
        out.extend_from_slice(&u16::try_from(self.spis.len()).unwrap_or(0).to_be_bytes());
        for s in &self.spis {
            out.extend_from_slice(s);
        }
        out
    }

    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let doi = r.u32("D")?;
        let protocol = r.u8("D")?;
        let size = usize::from(r.u8("D")?);
        let n = r.u16("D")?;
        let mut spis = Vec::new();
        for _ in 0..n {
            spis.push(r.take(size, "D SPI")?.to_vec());
        }
        r.expect_empty("D")?;
        Ok(Self {
            doi,
            protocol,
            spis,
        })
    }

    /// The ESP SPIs, when the payload is for ESP with 4-byte SPIs.
    pub fn esp_spis(&self) -> Vec<u32> {
        if self.protocol != proto::ESP {
            return Vec::new();
        }
        self.spis
            .iter()
            .filter_map(|s| <[u8; 4]>::try_from(s.as_slice()).ok())
            .map(u32::from_be_bytes)
            .collect()
    }
}

/// `CKY-I | CKY-R`, the ISAKMP SA's 16-byte SPI (RFC 2408 §2.4).
pub fn cookies(cky_i: u64, cky_r: u64) -> Vec<u8> {
    let mut v = cky_i.to_be_bytes().to_vec();
    v.extend_from_slice(&cky_r.to_be_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Main Mode message 1 as strongSwan 5.9 builds it for `aes128-sha1-modp1024`
    /// with a 3h lifetime, cut to one transform and the RFC 3947 and DPD vendor IDs.
    const MM1: [u8; 128] = [
        // header: CKY-I, CKY-R 0, next SA, version 1.0, Main Mode, no flags, mid 0, len 128
        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x10, 2, 0, 0, 0,
        0, 0, 0, 0, 0, 128, //
        // SA: next VID, len 60, DOI 1, SIT 1
        13, 0, 0, 60, 0, 0, 0, 1, 0, 0, 0, 1, //
        // P: last, len 48, #1, ISAKMP, no SPI, 1 transform
        0, 0, 0, 48, 1, 1, 0, 1, //
        // T: last, len 40, #1, KEY_IKE
        0, 0, 0, 40, 1, 1, 0, 0, //
        0x80, 1, 0, 7, // encryption AES-CBC
        0x80, 14, 0, 128, // key length 128
        0x80, 2, 0, 2, // hash SHA
        0x80, 3, 0, 1, // auth PSK
        0x80, 4, 0, 2, // group 2
        0x80, 11, 0, 1, // life type seconds
        0, 12, 0, 4, 0, 0, 0x2a, 0x30, // life duration 10800 (TLV)
        // VID (RFC 3947), next VID
        13, 0, 0, 20, 0x4a, 0x13, 0x1c, 0x81, 0x07, 0x03, 0x58, 0x45, 0x5c, 0x57, 0x28, 0xf2, 0x0e,
        0x95, 0x45, 0x2f, //
        // VID (DPD), last
        0, 0, 0, 20, 0xaf, 0xca, 0xd7, 0x13, 0x68, 0xa1, 0xf1, 0xc9, 0x6b, 0x86, 0x96, 0xfc, 0x77,
        0x57, 0x01, 0x00,
    ];

    #[test]
    fn parse_captured_main_mode_1() {
        let h = Header::parse(&MM1).unwrap();
        assert_eq!(h.cky_i, 0x1122334455667788);
        assert_eq!(h.cky_r, 0);
        assert_eq!(h.exchange, Exchange::MAIN);
        assert_eq!(h.next, PayloadType::SA);
        assert!(!h.encrypted());
        let c = Chain::decode(h.next, &MM1[HEADER_LEN..], false).unwrap();
        assert_eq!(c.summary(), "[ SA V V ]");
        let sa = SaPayload::decode(c.first(PayloadType::SA).unwrap()).unwrap();
        assert_eq!(sa.proposals.len(), 1);
        let t = &sa.proposals[0].transforms[0];
        assert_eq!(t.id, KEY_IKE);
        assert_eq!(t.attr(p1::ENCRYPTION).unwrap().as_u32(), Some(7));
        assert_eq!(t.attr(p1::LIFE_DURATION).unwrap().as_u32(), Some(10800));
        let vids: Vec<&[u8]> = c.all(PayloadType::VID).collect();
        assert_eq!(vids, vec![&vid::NAT_T_RFC3947[..], &vid::DPD[..]]);
        // Re-encoding the typed SA gives back the same body, and the chain the message.
        assert_eq!(sa.encode(), c.first(PayloadType::SA).unwrap());
        let again = encode_plain(h, &c.payloads);
        assert_eq!(again, MM1);
        assert_eq!(c.after(0), &MM1[HEADER_LEN + 60..]);
    }

    #[test]
    fn header_checks() {
        let mut v = MM1;
        v[17] = 0x20;
        assert_eq!(Header::parse(&v), Err(DecodeError::InvalidMajorVersion(2)));
        assert!(Header::parse(&MM1[..27]).is_err());
        let mut long = MM1.to_vec();
        long.push(0);
        assert_eq!(
            Header::parse(&long),
            Err(DecodeError::TrailingBytes("ISAKMP message"))
        );
        // A chain whose payload length runs past the end.
        let mut bad = MM1;
        bad[HEADER_LEN + 3] = 200;
        assert!(Chain::decode(PayloadType::SA, &bad[HEADER_LEN..], false).is_err());
        // Padding is only allowed in decrypted bodies.
        let mut padded = MM1[HEADER_LEN..].to_vec();
        padded.extend_from_slice(&[0, 0, 0]);
        assert!(Chain::decode(PayloadType::SA, &padded, false).is_err());
        let c = Chain::decode(PayloadType::SA, &padded, true).unwrap();
        assert_eq!(c.raw, &MM1[HEADER_LEN..]);
    }

    #[test]
    fn sa_proposal_syntax_is_checked() {
        let c = Chain::decode(PayloadType::SA, &MM1[HEADER_LEN..], false).unwrap();
        let body = c.first(PayloadType::SA).unwrap().to_vec();
        // Transform claiming a successor that is not there.
        let mut b = body.clone();
        b[16] = 3;
        assert!(SaPayload::decode(&b).is_err());
        // Proposal next payload neither 0 nor 2.
        let mut b = body.clone();
        b[8] = 5;
        assert!(SaPayload::decode(&b).is_err());
        // Wrong DOI.
        let mut b = body;
        b[3] = 9;
        assert_eq!(
            SaPayload::decode(&b),
            Err(DecodeError::InvalidValue("SA DOI"))
        );
    }

    #[test]
    fn ids_notify_delete_round_trip() {
        let id = Id::subnet(Ipv4Addr::new(10, 1, 0, 0), 16);
        assert_eq!(id.encode(), [4, 0, 0, 0, 10, 1, 0, 0, 255, 255, 0, 0]);
        assert_eq!(Id::decode(&id.encode()).unwrap(), id);
        assert_eq!(
            id.ipv4_range(),
            Some((Ipv4Addr::new(10, 1, 0, 0), Ipv4Addr::new(10, 1, 255, 255)))
        );
        assert_eq!(id.describe(), "10.1.0.0/16");
        let any = Id::subnet(Ipv4Addr::UNSPECIFIED, 0);
        assert_eq!(any.describe(), "0.0.0.0/0");
        // Non-contiguous masks are refused.
        let odd = Id::decode(&[4, 0, 0, 0, 10, 0, 0, 0, 255, 0, 255, 0]).unwrap();
        assert_eq!(odd.ipv4_range(), None);
        assert!(Id::decode(&[1, 0, 0, 0, 1, 2, 3]).is_err());
        assert_eq!(Id::fqdn("gw.example").describe(), "gw.example");

        let n = Notify::new(
            proto::ISAKMP,
            NotifyType::R_U_THERE,
            cookies(1, 2),
            7u32.to_be_bytes().to_vec(),
        );
        let b = n.encode();
        assert_eq!(&b[..8], &[0, 0, 0, 1, 1, 16, 0x8d, 0x28]);
        assert_eq!(Notify::decode(&b).unwrap(), n);

        let d = Delete::esp(&[0x01020304, 0x0a0b0c0d]);
        assert_eq!(
            d.encode(),
            [0, 0, 0, 1, 3, 4, 0, 2, 1, 2, 3, 4, 10, 11, 12, 13]
        );
        assert_eq!(
            Delete::decode(&d.encode()).unwrap().esp_spis(),
            vec![0x01020304, 0x0a0b0c0d]
        );
        assert!(Delete::decode(&[0, 0, 0, 1, 3, 4, 0, 2, 1, 2, 3]).is_err());
    }

    #[test]
    fn attributes() {
        let a = Attr::number(p2::LIFE_DURATION, 86400);
        assert_eq!(a.value, AttrValue::Var(vec![0, 1, 0x51, 0x80]));
        assert_eq!(a.as_u32(), Some(86400));
        assert_eq!(Attr::number(1, 3600).value, AttrValue::Basic(3600));
        let huge = Attr {
            typ: 2,
            value: AttrValue::Var(vec![1; 9]),
        };
        assert_eq!(huge.as_u32(), None);
    }
}
