//! IKEv2 payload bodies (RFC 7296 §3.3–§3.15). Each type implements [`Codec`] over
//! its body, i.e. the bytes after the 4-byte generic payload header.

use std::net::Ipv4Addr;

use super::registry::{
    AttributeType, AuthMethod, IdType, NotifyType, PayloadType, ProtocolId, TransformType, TsType,
};
use super::{Codec, DecodeError, Reader, len16_placeholder, patch_len16};

/// One payload of a chain, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Sa(SaPayload),
    Ke(KeyExchange),
    IdI(Identification),
    IdR(Identification),
    Auth(Auth),
    Nonce(Vec<u8>),
    Notify(Notify),
    Delete(Delete),
    Vendor(Vec<u8>),
    TsI(Vec<TrafficSelector>),
    TsR(Vec<TrafficSelector>),
    /// The SK payload, still sealed. It is always the last payload of its chain.
    Sk(Encrypted),
    /// Payload types this engine knows but does not process (CERT, CERTREQ, CP, EAP,
    /// SKF), kept as opaque bytes. Unknown non-critical types are skipped instead.
    Opaque {
        ptype: PayloadType,
        data: Vec<u8>,
    },
}

impl Payload {
    pub fn ptype(&self) -> PayloadType {
        match self {
            Self::Sa(_) => PayloadType::SA,
            Self::Ke(_) => PayloadType::KE,
            Self::IdI(_) => PayloadType::IDI,
            Self::IdR(_) => PayloadType::IDR,
            Self::Auth(_) => PayloadType::AUTH,
            Self::Nonce(_) => PayloadType::NONCE,
            Self::Notify(_) => PayloadType::NOTIFY,
            Self::Delete(_) => PayloadType::DELETE,
            Self::Vendor(_) => PayloadType::VENDOR,
            Self::TsI(_) => PayloadType::TSI,
            Self::TsR(_) => PayloadType::TSR,
            Self::Sk(_) => PayloadType::SK,
            Self::Opaque { ptype, .. } => *ptype,
        }
    }

    /// Encodes the body (no generic header).
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Sa(p) => p.encode(out),
            Self::Ke(p) => p.encode(out),
            Self::IdI(p) | Self::IdR(p) => p.encode(out),
            Self::Auth(p) => p.encode(out),
            Self::Nonce(d) | Self::Vendor(d) => out.extend_from_slice(d),
            Self::Notify(p) => p.encode(out),
            Self::Delete(p) => p.encode(out),
            Self::TsI(t) | Self::TsR(t) => encode_ts_list(t, out),
            Self::Sk(p) => out.extend_from_slice(&p.data),
            Self::Opaque { data, .. } => out.extend_from_slice(data),
        }
    }

    /// Decodes a body of a known type; `None` for types this crate does not know.
    pub fn decode_body(
        ptype: PayloadType,
        next: PayloadType,
        body: &[u8],
    ) -> Result<Option<Self>, DecodeError> {
        Ok(Some(match ptype {
            PayloadType::SA => Self::Sa(SaPayload::decode(body)?),
            PayloadType::KE => Self::Ke(KeyExchange::decode(body)?),
            PayloadType::IDI => Self::IdI(Identification::decode(body)?),
            PayloadType::IDR => Self::IdR(Identification::decode(body)?),
            PayloadType::AUTH => Self::Auth(Auth::decode(body)?),
            PayloadType::NONCE => {
                // RFC 7296 §3.9: between 16 and 256 octets.
                if !(16..=256).contains(&body.len()) {
                    return Err(DecodeError::InvalidLength("nonce"));
                }
                Self::Nonce(body.to_vec())
            }
            PayloadType::NOTIFY => Self::Notify(Notify::decode(body)?),
            PayloadType::DELETE => Self::Delete(Delete::decode(body)?),
            PayloadType::VENDOR => Self::Vendor(body.to_vec()),
            PayloadType::TSI => Self::TsI(decode_ts_list(body)?),
            PayloadType::TSR => Self::TsR(decode_ts_list(body)?),
            PayloadType::SK => Self::Sk(Encrypted {
                first: next,
                data: body.to_vec(),
            }),
            PayloadType::CERT
            | PayloadType::CERTREQ
            | PayloadType::CP
            | PayloadType::EAP
            | PayloadType::SKF => Self::Opaque {
                ptype,
                data: body.to_vec(),
            },
            _ => return Ok(None),
        }))
    }
}

/// RFC 7296 §3.3 Security Association payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SaPayload {
    pub proposals: Vec<Proposal>,
}

/// RFC 7296 §3.3.1 Proposal substructure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub num: u8,
    pub protocol: ProtocolId,
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

/// RFC 7296 §3.3.2 Transform substructure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    pub ttype: TransformType,
    pub id: u16,
    pub attributes: Vec<Attribute>,
}

/// RFC 7296 §3.3.5 Transform attribute, TV (AF=1) or TLV (AF=0) format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    Tv {
        atype: AttributeType,
        value: u16,
    },
    Tlv {
        atype: AttributeType,
        value: Vec<u8>,
    },
}

impl Transform {
    pub fn new(ttype: TransformType, id: u16, key_length: Option<u16>) -> Self {
        let attributes = key_length
            .map(|v| {
                vec![Attribute::Tv {
                    atype: AttributeType::KEY_LENGTH,
                    value: v,
                }]
            })
            .unwrap_or_default();
        Self {
            ttype,
            id,
            attributes,
        }
    }

    /// The Key Length attribute (RFC 7296 §3.3.5), if present.
    pub fn key_length(&self) -> Option<u16> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::Tv {
                atype: AttributeType::KEY_LENGTH,
                value,
            } => Some(*value),
            _ => None,
        })
    }
}

impl Codec for SaPayload {
    fn encode(&self, out: &mut Vec<u8>) {
        let n = self.proposals.len();
        for (i, p) in self.proposals.iter().enumerate() {
            let start = out.len();
            out.push(if i + 1 == n { 0 } else { 2 });
            out.push(0);
            let at = len16_placeholder(out);
            out.push(p.num);
            out.push(p.protocol.0);
            out.push(u8::try_from(p.spi.len()).unwrap_or(0));
            out.push(u8::try_from(p.transforms.len()).unwrap_or(0));
            out.extend_from_slice(&p.spi);
            let nt = p.transforms.len();
            for (j, t) in p.transforms.iter().enumerate() {
                let tstart = out.len();
                out.push(if j + 1 == nt { 0 } else { 3 });
                out.push(0);
                let tat = len16_placeholder(out);
                out.push(t.ttype.0);
                out.push(0);
                out.extend_from_slice(&t.id.to_be_bytes());
                for a in &t.attributes {
                    match a {
                        Attribute::Tv { atype, value } => {
                            out.extend_from_slice(&(atype.0 | 0x8000).to_be_bytes());
                            out.extend_from_slice(&value.to_be_bytes());
                        }
                        Attribute::Tlv { atype, value } => {
                            out.extend_from_slice(&(atype.0 & 0x7fff).to_be_bytes());
                            let l = u16::try_from(value.len()).unwrap_or(0);
                            out.extend_from_slice(&l.to_be_bytes());
                            out.extend_from_slice(value);
                        }
                    }
                }
                patch_len16(out, tat, tstart);
            }
            patch_len16(out, at, start);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut proposals = Vec::new();
        loop {
            let last = r.u8("proposal")?;
            r.u8("proposal")?;
            let len = usize::from(r.u16("proposal length")?);
            let mut p = r.sub(
                len.checked_sub(4)
                    .ok_or(DecodeError::InvalidLength("proposal"))?,
                "proposal",
            )?;
            let num = p.u8("proposal")?;
            let protocol = ProtocolId(p.u8("proposal")?);
            let spi_size = usize::from(p.u8("proposal")?);
            let ntrans = p.u8("proposal")?;
            let spi = p.take(spi_size, "proposal SPI")?.to_vec();
            let mut transforms = Vec::with_capacity(usize::from(ntrans));
            for k in 0..ntrans {
                let tlast = p.u8("transform")?;
                p.u8("transform")?;
                let tlen = usize::from(p.u16("transform length")?);
                let mut t = p.sub(
                    tlen.checked_sub(4)
                        .ok_or(DecodeError::InvalidLength("transform"))?,
                    "transform",
                )?;
                let ttype = TransformType(t.u8("transform")?);
                t.u8("transform")?;
                let id = t.u16("transform")?;
                let mut attributes = Vec::new();
                while !t.is_empty() {
                    let at = t.u16("attribute")?;
                    if at & 0x8000 != 0 {
                        let value = t.u16("attribute")?;
                        attributes.push(Attribute::Tv {
                            atype: AttributeType(at & 0x7fff),
                            value,
                        });
                    } else {
                        let l = usize::from(t.u16("attribute")?);
                        let value = t.take(l, "attribute")?.to_vec();
                        attributes.push(Attribute::Tlv {
                            atype: AttributeType(at),
                            value,
                        });
                    }
                }
                let expect_last = k + 1 == ntrans;
                if (tlast == 0) != expect_last || (tlast != 0 && tlast != 3) {
                    return Err(DecodeError::InvalidValue("transform last substruc"));
                }
                transforms.push(Transform {
                    ttype,
                    id,
                    attributes,
                });
            }
            p.expect_empty("proposal")?;
            proposals.push(Proposal {
                num,
                protocol,
                spi,
                transforms,
            });
            match last {
                0 => break,
                2 => {}
                _ => return Err(DecodeError::InvalidValue("proposal last substruc")),
            }
        }
        Ok(Self { proposals })
    }
}

/// RFC 7296 §3.4 Key Exchange payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyExchange {
    pub group: u16,
    pub data: Vec<u8>,
}

impl Codec for KeyExchange {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.group.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.data);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let group = r.u16("KE")?;
        r.u16("KE")?;
        Ok(Self {
            group,
            data: r.rest().to_vec(),
        })
    }
}

/// RFC 7296 §3.5 Identification payload (IDi or IDr).
#[derive(Clone, PartialEq, Eq)]
pub struct Identification {
    pub id_type: IdType,
    pub data: Vec<u8>,
}

impl Identification {
    pub fn ipv4(a: Ipv4Addr) -> Self {
        Self {
            id_type: IdType::IPV4_ADDR,
            data: a.octets().to_vec(),
        }
    }

    pub fn fqdn(name: &str) -> Self {
        Self {
            id_type: IdType::FQDN,
            data: name.as_bytes().to_vec(),
        }
    }
}

impl core::fmt::Debug for Identification {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self)
    }
}

impl core::fmt::Display for Identification {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match (self.id_type, self.data.len()) {
            (IdType::IPV4_ADDR, 4) => {
                write!(
                    f,
                    "{}",
                    Ipv4Addr::new(self.data[0], self.data[1], self.data[2], self.data[3])
                )
            }
            (IdType::FQDN | IdType::RFC822_ADDR, _) => {
                f.write_str(&String::from_utf8_lossy(&self.data))
            }
            _ => {
                write!(f, "{:?}:", self.id_type)?;
                for b in &self.data {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl Codec for Identification {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.id_type.0, 0, 0, 0]);
        out.extend_from_slice(&self.data);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let id_type = IdType(r.u8("ID")?);
        r.take(3, "ID")?;
        Ok(Self {
            id_type,
            data: r.rest().to_vec(),
        })
    }
}

/// RFC 7296 §3.8 Authentication payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub method: AuthMethod,
    pub data: Vec<u8>,
}

impl Codec for Auth {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.method.0, 0, 0, 0]);
        out.extend_from_slice(&self.data);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let method = AuthMethod(r.u8("AUTH")?);
        r.take(3, "AUTH")?;
        Ok(Self {
            method,
            data: r.rest().to_vec(),
        })
    }
}

/// RFC 7296 §3.10 Notify payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub protocol: ProtocolId,
    pub spi: Vec<u8>,
    pub ntype: NotifyType,
    pub data: Vec<u8>,
}

impl Notify {
    /// A notify not about a particular SA.
    pub fn new(ntype: NotifyType, data: Vec<u8>) -> Self {
        Self {
            protocol: ProtocolId::NONE,
            spi: Vec::new(),
            ntype,
            data,
        }
    }

    /// The SPI as a 32-bit ESP/AH SPI, if it has that size.
    pub fn spi32(&self) -> Option<u32> {
        <[u8; 4]>::try_from(self.spi.as_slice())
            .ok()
            .map(u32::from_be_bytes)
    }
}

impl Codec for Notify {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.protocol.0);
        out.push(u8::try_from(self.spi.len()).unwrap_or(0));
        out.extend_from_slice(&self.ntype.0.to_be_bytes());
        out.extend_from_slice(&self.spi);
        out.extend_from_slice(&self.data);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let protocol = ProtocolId(r.u8("N")?);
        let spi_size = usize::from(r.u8("N")?);
        let ntype = NotifyType(r.u16("N")?);
        let spi = r.take(spi_size, "N SPI")?.to_vec();
        Ok(Self {
            protocol,
            spi,
            ntype,
            data: r.rest().to_vec(),
        })
    }
}

/// RFC 7296 §3.11 Delete payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub protocol: ProtocolId,
    pub spi_size: u8,
    pub spis: Vec<Vec<u8>>,
}

impl Delete {
    pub fn ike() -> Self {
        Self {
            protocol: ProtocolId::IKE,
            spi_size: 0,
            spis: Vec::new(),
        }
    }

    pub fn esp(spis: &[u32]) -> Self {
        Self {
            protocol: ProtocolId::ESP,
            spi_size: 4,
            spis: spis.iter().map(|s| s.to_be_bytes().to_vec()).collect(),
        }
    }

    /// The SPIs as 32-bit values (ESP/AH).
    pub fn spis32(&self) -> impl Iterator<Item = u32> + '_ {
        self.spis.iter().filter_map(|s| {
            <[u8; 4]>::try_from(s.as_slice())
                .ok()
                .map(u32::from_be_bytes)
        })
    }
}

impl Codec for Delete {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.protocol.0);
        out.push(self.spi_size);
        out.extend_from_slice(&u16::try_from(self.spis.len()).unwrap_or(0).to_be_bytes());
        for s in &self.spis {
            out.extend_from_slice(s);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let protocol = ProtocolId(r.u8("D")?);
        let spi_size = r.u8("D")?;
        let n = r.u16("D")?;
        let mut spis = Vec::new();
        for _ in 0..n {
            spis.push(r.take(usize::from(spi_size), "D SPI")?.to_vec());
        }
        Ok(Self {
            protocol,
            spi_size,
            spis,
        })
    }
}

/// RFC 7296 §3.13.1 Traffic Selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrafficSelector {
    /// TS_IPV4_ADDR_RANGE.
    Ipv4 {
        ip_proto: u8,
        start_port: u16,
        end_port: u16,
        start: Ipv4Addr,
        end: Ipv4Addr,
    },
    /// Any other type (e.g. TS_IPV6_ADDR_RANGE), kept verbatim.
    Other {
        ts_type: TsType,
        ip_proto: u8,
        start_port: u16,
        end_port: u16,
        addrs: Vec<u8>,
    },
}

fn encode_ts_list(list: &[TrafficSelector], out: &mut Vec<u8>) {
    out.push(u8::try_from(list.len()).unwrap_or(0));
    out.extend_from_slice(&[0, 0, 0]);
    for ts in list {
        let (t, proto, sp, ep) = match ts {
            TrafficSelector::Ipv4 {
                ip_proto,
                start_port,
                end_port,
                ..
            } => (TsType::IPV4_ADDR_RANGE, *ip_proto, *start_port, *end_port),
            TrafficSelector::Other {
                ts_type,
                ip_proto,
                start_port,
                end_port,
                ..
            } => (*ts_type, *ip_proto, *start_port, *end_port),
        };
        let start = out.len();
        out.push(t.0);
        out.push(proto);
        let at = len16_placeholder(out);
        out.extend_from_slice(&sp.to_be_bytes());
        out.extend_from_slice(&ep.to_be_bytes());
        match ts {
            TrafficSelector::Ipv4 { start, end, .. } => {
                out.extend_from_slice(&start.octets());
                out.extend_from_slice(&end.octets());
            }
            TrafficSelector::Other { addrs, .. } => out.extend_from_slice(addrs),
        }
        patch_len16(out, at, start);
    }
}

fn decode_ts_list(body: &[u8]) -> Result<Vec<TrafficSelector>, DecodeError> {
    let mut r = Reader::new(body);
    let n = r.u8("TS")?;
    r.take(3, "TS")?;
    let mut list = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let ts_type = TsType(r.u8("TS")?);
        let ip_proto = r.u8("TS")?;
        let len = usize::from(r.u16("TS length")?);
        let mut s = r.sub(
            len.checked_sub(4).ok_or(DecodeError::InvalidLength("TS"))?,
            "TS",
        )?;
        let start_port = s.u16("TS")?;
        let end_port = s.u16("TS")?;
        if ts_type == TsType::IPV4_ADDR_RANGE {
            let a = s.take(4, "TS address")?;
            let b = s.take(4, "TS address")?;
            s.expect_empty("TS_IPV4_ADDR_RANGE")?;
            list.push(TrafficSelector::Ipv4 {
                ip_proto,
                start_port,
                end_port,
                start: Ipv4Addr::new(a[0], a[1], a[2], a[3]),
                end: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            });
        } else {
            list.push(TrafficSelector::Other {
                ts_type,
                ip_proto,
                start_port,
                end_port,
                addrs: s.rest().to_vec(),
            });
        }
    }
    r.expect_empty("TS payload")?;
    Ok(list)
}

/// RFC 7296 §3.14 Encrypted payload, sealed: `data` is IV || ciphertext || ICV, and
/// `first` is the type of the first payload inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encrypted {
    pub first: PayloadType,
    pub data: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sa_payload_fixed_bytes() {
        // One IKE proposal: ENCR_AES_CBC/128, PRF_HMAC_SHA1, AUTH_HMAC_SHA1_96, MODP1024.
        let bytes: [u8; 44] = [
            0, 0, 0, 44, 1, 1, 0, 4, //
            3, 0, 0, 12, 1, 0, 0, 12, 0x80, 14, 0, 128, //
            3, 0, 0, 8, 2, 0, 0, 2, //
            3, 0, 0, 8, 3, 0, 0, 2, //
            0, 0, 0, 8, 4, 0, 0, 2,
        ];
        let sa = SaPayload::decode(&bytes).unwrap();
        assert_eq!(sa.proposals.len(), 1);
        let p = &sa.proposals[0];
        assert_eq!(p.protocol, ProtocolId::IKE);
        assert_eq!(p.transforms[0].key_length(), Some(128));
        assert_eq!(p.transforms[3], Transform::new(TransformType::DH, 2, None));
        assert_eq!(sa.encoded(), bytes);
    }

    #[test]
    fn sa_payload_rejects_bad_lengths() {
        let bytes: [u8; 12] = [0, 0, 0, 3, 1, 1, 0, 1, 0, 0, 0, 0];
        assert!(SaPayload::decode(&bytes).is_err());
        // Transform count says 2, only one present.
        let bytes: [u8; 16] = [0, 0, 0, 16, 1, 1, 0, 2, 0, 0, 0, 8, 1, 0, 0, 12];
        assert!(SaPayload::decode(&bytes).is_err());
    }

    #[test]
    fn ts_fixed_bytes() {
        let bytes: [u8; 20] = [
            1, 0, 0, 0, 7, 0, 0, 16, 0, 0, 0xff, 0xff, 10, 0, 0, 0, 10, 0, 0, 255,
        ];
        let list = decode_ts_list(&bytes).unwrap();
        assert_eq!(
            list,
            vec![TrafficSelector::Ipv4 {
                ip_proto: 0,
                start_port: 0,
                end_port: 65535,
                start: Ipv4Addr::new(10, 0, 0, 0),
                end: Ipv4Addr::new(10, 0, 0, 255),
            }]
        );
        let mut out = Vec::new();
        encode_ts_list(&list, &mut out);
        assert_eq!(out, bytes);
        assert!(decode_ts_list(&bytes[..19]).is_err());
    }

    #[test]
    fn notify_and_delete_round_trip() {
        let n = Notify {
            protocol: ProtocolId::ESP,
            spi: vec![1, 2, 3, 4],
            ntype: NotifyType(50000),
            data: vec![9],
        };
        let b = n.encoded();
        assert_eq!(b, [3, 4, 0xc3, 0x50, 1, 2, 3, 4, 9]);
        assert_eq!(Notify::decode(&b).unwrap(), n);
        assert_eq!(n.spi32(), Some(0x01020304));
        let d = Delete::esp(&[7, 8]);
        let b = d.encoded();
        assert_eq!(b, [3, 4, 0, 2, 0, 0, 0, 7, 0, 0, 0, 8]);
        assert_eq!(
            Delete::decode(&b).unwrap().spis32().collect::<Vec<_>>(),
            vec![7, 8]
        );
        assert!(Delete::decode(&b[..11]).is_err());
    }

    #[test]
    fn identification_display() {
        assert_eq!(
            Identification::ipv4(Ipv4Addr::new(192, 0, 2, 1)).to_string(),
            "192.0.2.1"
        );
        assert_eq!(
            Identification::fqdn("vpn.example").to_string(),
            "vpn.example"
        );
        let k = Identification {
            id_type: IdType::KEY_ID,
            data: vec![0xab],
        };
        assert_eq!(k.to_string(), "KEY_ID:ab");
        assert_eq!(Identification::decode(&k.encoded()).unwrap(), k);
    }
}
