//! BGP messages (RFC 4271 §4): header, OPEN with capabilities (RFC 5492),
//! NOTIFICATION, KEEPALIVE, ROUTE-REFRESH (RFC 2918), and the [`Framer`]
//! that cuts a TCP byte stream into messages.
//!
//! UPDATE lives in [`crate::update`].

use std::fmt;
use std::net::Ipv4Addr;

use crate::codec::{Reader, len16_placeholder, patch_u16};
use crate::error::{DecodeError, OpenError, notification_name};
use crate::update::Update;

/// RFC 4271 §4.1: sixteen octets of ones.
pub const MARKER: [u8; 16] = [0xff; 16];
/// RFC 4271 §4.1: marker, length, type.
pub const HEADER_LEN: usize = 19;
/// RFC 4271 §4.1: the largest message (no RFC 8654 extended messages).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// The only version we speak (RFC 4271 §4.2).
pub const BGP_VERSION: u8 = 4;
/// RFC 6793 §9: placeholder for a 4-octet AS in 2-octet fields.
pub const AS_TRANS: u16 = 23456;
/// RFC 4760 §6 AFI/SAFI for IPv4 unicast.
pub const AFI_IPV4: u16 = 1;
pub const SAFI_UNICAST: u8 = 1;

/// RFC 4271 §4.1 message type codes (RFC 2918 for ROUTE-REFRESH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    Open = 1,
    Update = 2,
    Notification = 3,
    Keepalive = 4,
    RouteRefresh = 5,
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Open => "OPEN",
            Self::Update => "UPDATE",
            Self::Notification => "NOTIFICATION",
            Self::Keepalive => "KEEPALIVE",
            Self::RouteRefresh => "ROUTE-REFRESH",
        })
    }
}

impl MessageType {
    fn from_u8(t: u8) -> Option<Self> {
        Some(match t {
            1 => Self::Open,
            2 => Self::Update,
            3 => Self::Notification,
            4 => Self::Keepalive,
            5 => Self::RouteRefresh,
            _ => return None,
        })
    }

    /// RFC 4271 §6.1 minimum (and for KEEPALIVE/ROUTE-REFRESH exact) lengths.
    fn length_ok(self, len: usize) -> bool {
        match self {
            Self::Open => len >= 29,
            Self::Update => len >= 23,
            Self::Notification => len >= 21,
            Self::Keepalive => len == HEADER_LEN,
            // RFC 7313 §5 handles a wrong ROUTE-REFRESH length with its own
            // error code; the header check only enforces the header.
            Self::RouteRefresh => len >= HEADER_LEN,
        }
    }
}

/// What was negotiated and changes how messages are encoded/decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ctx {
    /// Both sides sent the 4-octet AS capability (RFC 6793): AS_PATH and
    /// AGGREGATOR carry 4-octet ASNs.
    pub four_octet_as: bool,
}

/// A decoded BGP message.
// Messages are transient (decoded, handled, dropped), so the size of the
// UPDATE variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

impl Message {
    pub fn message_type(&self) -> MessageType {
        match self {
            Self::Open(_) => MessageType::Open,
            Self::Update(_) => MessageType::Update,
            Self::Notification(_) => MessageType::Notification,
            Self::Keepalive => MessageType::Keepalive,
            Self::RouteRefresh(_) => MessageType::RouteRefresh,
        }
    }

    /// Encodes the whole message, header included. The caller keeps it
    /// within [`MAX_MESSAGE_LEN`] (UPDATEs are packed by the session).
    pub fn encode(&self, ctx: &Ctx) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&MARKER);
        let len_at = len16_placeholder(&mut out);
        out.push(self.message_type() as u8);
        match self {
            Self::Open(o) => o.encode_body(&mut out),
            Self::Update(u) => u.encode_body(ctx, &mut out),
            Self::Notification(n) => {
                out.push(n.code);
                out.push(n.subcode);
                out.extend_from_slice(&n.data);
            }
            Self::Keepalive => {}
            Self::RouteRefresh(r) => {
                out.extend_from_slice(&r.afi.to_be_bytes());
                out.push(r.subtype);
                out.push(r.safi);
            }
        }
        let len = out.len();
        patch_u16(&mut out, len_at, len);
        out
    }

    /// Decodes one whole message (as cut by [`Framer`], header included).
    pub fn decode(frame: &[u8], ctx: &Ctx) -> Result<Self, DecodeError> {
        let (ty, len) = check_header(frame)?;
        if frame.len() != usize::from(len) {
            return Err(DecodeError::BadMessageLength(len));
        }
        let body = frame.get(HEADER_LEN..).unwrap_or_default();
        Ok(match ty {
            MessageType::Open => Self::Open(Open::decode_body(body)?),
            MessageType::Update => Self::Update(Update::decode_body(body, ctx)?),
            MessageType::Notification => {
                let mut r = Reader::new(body);
                let code = r.u8().ok_or(DecodeError::BadMessageLength(len))?;
                let subcode = r.u8().ok_or(DecodeError::BadMessageLength(len))?;
                Self::Notification(Notification {
                    code,
                    subcode,
                    data: r.rest().to_vec(),
                })
            }
            MessageType::Keepalive => Self::Keepalive,
            MessageType::RouteRefresh => {
                let mut r = Reader::new(body);
                match (r.u16(), r.u8(), r.u8(), r.is_empty()) {
                    (Some(afi), Some(subtype), Some(safi), true) => {
                        Self::RouteRefresh(RouteRefresh { afi, subtype, safi })
                    }
                    _ => return Err(DecodeError::RouteRefreshLength(len)),
                }
            }
        })
    }
}

/// RFC 4271 §6.1 header checks on the first 19 octets; returns the type and
/// the length field.
fn check_header(buf: &[u8]) -> Result<(MessageType, u16), DecodeError> {
    let mut r = Reader::new(buf);
    let marker = r
        .take(MARKER.len())
        .ok_or(DecodeError::BadMessageLength(0))?;
    if marker != MARKER {
        return Err(DecodeError::ConnectionNotSynchronized);
    }
    let len = r.u16().ok_or(DecodeError::BadMessageLength(0))?;
    let ty = r.u8().ok_or(DecodeError::BadMessageLength(len))?;
    let ulen = usize::from(len);
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&ulen) {
        return Err(DecodeError::BadMessageLength(len));
    }
    let ty = MessageType::from_u8(ty).ok_or(DecodeError::BadMessageType(ty))?;
    if !ty.length_ok(ulen) {
        return Err(DecodeError::BadMessageLength(len));
    }
    Ok((ty, len))
}

/// Cuts a TCP byte stream into whole messages, whatever the segmentation.
///
/// Header errors are reported as soon as the 19 header octets are there, so
/// a desynchronised stream is not buffered up to its bogus length.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    start: usize,
}

impl Framer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        // Compact once the consumed prefix dominates, so draining many small
        // messages out of one large read stays linear.
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, DecodeError> {
        let pending = self.buf.get(self.start..).unwrap_or_default();
        if pending.len() < HEADER_LEN {
            return Ok(None);
        }
        let (_, len) = check_header(pending)?;
        let len = usize::from(len);
        if pending.len() < len {
            return Ok(None);
        }
        let at = self.start;
        self.start += len;
        Ok(self.buf.get(at..at + len))
    }

    /// Octets buffered but not yet returned as a frame.
    pub fn pending(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }
}

/// OPEN message (RFC 4271 §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The 2-octet My Autonomous System field (AS_TRANS for 4-octet ASNs).
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    /// Capabilities from all Capabilities optional parameters (RFC 5492),
    /// in order. Encoded one capability per optional parameter, as FRR does.
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// An OPEN for `asn` that advertises 4-octet AS, IPv4 unicast
    /// multiprotocol and route refresh.
    pub fn new(asn: u32, hold_time: u16, bgp_id: Ipv4Addr) -> Self {
        Self {
            version: BGP_VERSION,
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time,
            bgp_id,
            capabilities: vec![
                Capability::Multiprotocol {
                    afi: AFI_IPV4,
                    safi: SAFI_UNICAST,
                },
                Capability::RouteRefresh,
                Capability::FourOctetAs(asn),
            ],
        }
    }

    /// The speaker's ASN: the 4-octet AS capability if present (RFC 6793
    /// §4.1), else My Autonomous System.
    pub fn asn(&self) -> u32 {
        self.four_octet_as().unwrap_or(u32::from(self.my_as))
    }

    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(a) => Some(*a),
            _ => None,
        })
    }

    pub fn has(&self, cap: &Capability) -> bool {
        self.capabilities.contains(cap)
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(self.version);
        out.extend_from_slice(&self.my_as.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.bgp_id.octets());
        let opt_len_at = out.len();
        out.push(0);
        for cap in &self.capabilities {
            let mut value = Vec::new();
            cap.encode(&mut value);
            // RFC 5492 §4: optional parameter type 2 holding one capability.
            out.push(OPT_PARAM_CAPABILITIES);
            out.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(&value);
        }
        let opt_len = out.len() - opt_len_at - 1;
        if let Some(b) = out.get_mut(opt_len_at) {
            *b = u8::try_from(opt_len).unwrap_or(u8::MAX);
        }
    }

    fn decode_body(body: &[u8]) -> Result<Self, OpenError> {
        let mut r = Reader::new(body);
        let short = OpenError::Malformed("message too short");
        let version = r.u8().ok_or(short.clone())?;
        // RFC 4271 §6.2: version first, so a future version gets the
        // right error even if the rest of its OPEN differs.
        if version != BGP_VERSION {
            return Err(OpenError::UnsupportedVersion(version));
        }
        let my_as = r.u16().ok_or(short.clone())?;
        let hold_time = r.u16().ok_or(short.clone())?;
        let bgp_id = r.ipv4().ok_or(short.clone())?;
        let opt_len = r.u8().ok_or(short)?;
        let params = r.take(usize::from(opt_len)).ok_or(OpenError::Malformed(
            "optional parameters length exceeds the message",
        ))?;
        if !r.is_empty() {
            return Err(OpenError::Malformed("octets after the optional parameters"));
        }
        // RFC 4271 §6.2: hold time 1 or 2 is unacceptable.
        if hold_time == 1 || hold_time == 2 {
            return Err(OpenError::UnacceptableHoldTime(hold_time));
        }
        // RFC 6286 §2.2: identifier must be non-zero.
        if bgp_id.is_unspecified() {
            return Err(OpenError::BadBgpIdentifier(bgp_id));
        }
        let mut capabilities = Vec::new();
        let mut r = Reader::new(params);
        while !r.is_empty() {
            let bad = OpenError::Malformed("optional parameter overruns its field");
            let ptype = r.u8().ok_or(bad.clone())?;
            let plen = r.u8().ok_or(bad.clone())?;
            let pval = r.take(usize::from(plen)).ok_or(bad)?;
            if ptype != OPT_PARAM_CAPABILITIES {
                return Err(OpenError::UnsupportedOptionalParameter(ptype));
            }
            let mut cr = Reader::new(pval);
            while !cr.is_empty() {
                capabilities.push(Capability::decode(&mut cr)?);
            }
        }
        Ok(Self {
            version,
            my_as,
            hold_time,
            bgp_id,
            capabilities,
        })
    }
}

const OPT_PARAM_CAPABILITIES: u8 = 2;

/// Capability codes (IANA "Capability Codes").
mod cap_code {
    pub const MULTIPROTOCOL: u8 = 1;
    pub const ROUTE_REFRESH: u8 = 2;
    pub const FOUR_OCTET_AS: u8 = 65;
}

/// A capability advertisement (RFC 5492 §4). Capabilities we do not act on
/// are kept as [`Capability::Unknown`] so they round-trip and can be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// RFC 4760 §8.
    Multiprotocol {
        afi: u16,
        safi: u8,
    },
    /// RFC 2918.
    RouteRefresh,
    /// RFC 6793.
    FourOctetAs(u32),
    Unknown {
        code: u8,
        value: Vec<u8>,
    },
}

impl Capability {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Multiprotocol { afi, safi } => {
                out.extend_from_slice(&[cap_code::MULTIPROTOCOL, 4]);
                out.extend_from_slice(&afi.to_be_bytes());
                out.extend_from_slice(&[0, *safi]);
            }
            Self::RouteRefresh => out.extend_from_slice(&[cap_code::ROUTE_REFRESH, 0]),
            Self::FourOctetAs(asn) => {
                out.extend_from_slice(&[cap_code::FOUR_OCTET_AS, 4]);
                out.extend_from_slice(&asn.to_be_bytes());
            }
            Self::Unknown { code, value } => {
                out.push(*code);
                out.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(value);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, OpenError> {
        let bad = OpenError::Malformed("capability overruns its optional parameter");
        let code = r.u8().ok_or(bad.clone())?;
        let len = r.u8().ok_or(bad.clone())?;
        let value = r.take(usize::from(len)).ok_or(bad)?;
        let mut v = Reader::new(value);
        Ok(match (code, len) {
            (cap_code::MULTIPROTOCOL, 4) => {
                let afi = v
                    .u16()
                    .ok_or(OpenError::Malformed("multiprotocol capability"))?;
                let _reserved = v.u8();
                let safi = v
                    .u8()
                    .ok_or(OpenError::Malformed("multiprotocol capability"))?;
                Self::Multiprotocol { afi, safi }
            }
            (cap_code::ROUTE_REFRESH, 0) => Self::RouteRefresh,
            (cap_code::FOUR_OCTET_AS, 4) => Self::FourOctetAs(
                v.u32()
                    .ok_or(OpenError::Malformed("4-octet AS capability"))?,
            ),
            (cap_code::MULTIPROTOCOL, _) => {
                return Err(OpenError::Malformed("multiprotocol capability length"));
            }
            (cap_code::FOUR_OCTET_AS, _) => {
                return Err(OpenError::Malformed("4-octet AS capability length"));
            }
            _ => Self::Unknown {
                code,
                value: value.to_vec(),
            },
        })
    }
}

/// NOTIFICATION message (RFC 4271 §4.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    /// RFC 9003: Cease/Administrative Shutdown with a Shutdown
    /// Communication (UTF-8, at most 255 octets, cut at a char boundary).
    pub fn shutdown(message: &str) -> Self {
        let mut end = message.len().min(255);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let text = message.get(..end).unwrap_or_default();
        let mut data = Vec::with_capacity(1 + text.len());
        data.push(u8::try_from(text.len()).unwrap_or(u8::MAX));
        data.extend_from_slice(text.as_bytes());
        Self {
            code: crate::error::code::CEASE,
            subcode: 2,
            data,
        }
    }

    pub fn new(code: u8, subcode: u8) -> Self {
        Self {
            code,
            subcode,
            data: Vec::new(),
        }
    }

    /// RFC 9003: the operator's shutdown communication in a Cease
    /// Administrative Shutdown/Reset NOTIFICATION, if any and valid UTF-8.
    pub fn shutdown_message(&self) -> Option<&str> {
        if self.code != crate::error::code::CEASE || !matches!(self.subcode, 2 | 4) {
            return None;
        }
        let (&len, rest) = self.data.split_first()?;
        std::str::from_utf8(rest.get(..usize::from(len))?)
            .ok()
            .filter(|s| !s.is_empty())
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (c, s) = notification_name(self.code, self.subcode);
        write!(f, "{}/{} ({c} / {s})", self.code, self.subcode)?;
        if let Some(msg) = self.shutdown_message() {
            write!(f, ": \"{}\"", msg.escape_debug())?;
        }
        Ok(())
    }
}

/// ROUTE-REFRESH message (RFC 2918 §3; subtype from RFC 7313, 0 = request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    pub afi: u16,
    pub subtype: u8,
    pub safi: u8,
}

impl RouteRefresh {
    pub fn ipv4_unicast() -> Self {
        Self {
            afi: AFI_IPV4,
            subtype: 0,
            safi: SAFI_UNICAST,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(len: u16, ty: u8) -> Vec<u8> {
        let mut v = MARKER.to_vec();
        v.extend_from_slice(&len.to_be_bytes());
        v.push(ty);
        v
    }

    /// An OPEN as FRR 8.4 sends it for `router bgp 65530`, `timers 10 30`,
    /// router-id 10.99.0.1: each capability in its own optional parameter
    /// (MP IPv4 unicast, route refresh, 4-octet AS), plus an unknown one
    /// (FQDN, code 73) that must be kept.
    #[test]
    fn open_frr_layout_round_trip() {
        #[rustfmt::skip]
        let mut bytes = hdr(0, 1);
        #[rustfmt::skip]
        bytes.extend_from_slice(&[
            4,                      // version
            0xff, 0xfa,             // My AS 65530
            0, 30,                  // hold time 30
            10, 99, 0, 1,           // BGP identifier
            28,                     // optional parameters length
            2, 6, 1, 4, 0, 1, 0, 1, // MP IPv4 unicast
            2, 2, 2, 0,             // route refresh
            2, 6, 65, 4, 0, 0, 0xff, 0xfa, // 4-octet AS 65530
            2, 6, 73, 4, 1, b'r', 0, 0,    // FQDN "r", empty domain
        ]);
        let len = bytes.len() as u16;
        bytes[16..18].copy_from_slice(&len.to_be_bytes());
        let msg = Message::decode(&bytes, &Ctx::default()).unwrap();
        let Message::Open(open) = &msg else {
            panic!("{msg:?}")
        };
        assert_eq!(open.asn(), 65530);
        assert_eq!(open.hold_time, 30);
        assert_eq!(open.bgp_id, Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(
            open.capabilities,
            vec![
                Capability::Multiprotocol { afi: 1, safi: 1 },
                Capability::RouteRefresh,
                Capability::FourOctetAs(65530),
                Capability::Unknown {
                    code: 73,
                    value: vec![1, b'r', 0, 0]
                },
            ]
        );
        assert_eq!(msg.encode(&Ctx::default()), bytes);
    }

    #[test]
    fn open_all_capabilities_in_one_parameter() {
        let mut bytes = hdr(0, 1);
        #[rustfmt::skip]
        bytes.extend_from_slice(&[
            4, 0x5b, 0xa0, 0, 90, 192, 0, 2, 1,
            16, 2, 14, 1, 4, 0, 1, 0, 1, 2, 0, 65, 4, 0, 1, 0, 0,
        ]);
        let len = bytes.len() as u16;
        bytes[16..18].copy_from_slice(&len.to_be_bytes());
        let Message::Open(open) = Message::decode(&bytes, &Ctx::default()).unwrap() else {
            panic!()
        };
        // 4-octet AS 65536 with My AS = AS_TRANS (RFC 6793).
        assert_eq!(open.my_as, AS_TRANS);
        assert_eq!(open.asn(), 65536);
        assert!(open.has(&Capability::RouteRefresh));
    }

    #[test]
    fn open_new_uses_as_trans_for_large_asn() {
        let o = Open::new(4_200_000_000, 30, Ipv4Addr::new(169, 254, 10, 1));
        assert_eq!(o.my_as, AS_TRANS);
        assert_eq!(o.asn(), 4_200_000_000);
        let o = Open::new(45104, 30, Ipv4Addr::new(169, 254, 10, 1));
        assert_eq!(o.my_as, 45104);
        let bytes = Message::Open(o.clone()).encode(&Ctx::default());
        assert_eq!(
            Message::decode(&bytes, &Ctx::default()).unwrap(),
            Message::Open(o)
        );
    }

    #[test]
    fn open_errors() {
        let open = |body: &[u8]| {
            let mut b = hdr((HEADER_LEN + body.len()) as u16, 1);
            b.extend_from_slice(body);
            Message::decode(&b, &Ctx::default())
        };
        let e = open(&[3, 0, 1, 0, 30, 1, 1, 1, 1, 0]).unwrap_err();
        assert_eq!(e, DecodeError::Open(OpenError::UnsupportedVersion(3)));
        assert_eq!(e.notification().data, vec![0, 4]);
        let e = open(&[4, 0, 1, 0, 2, 1, 1, 1, 1, 0]).unwrap_err();
        assert_eq!((e.notification().code, e.notification().subcode), (2, 6));
        let e = open(&[4, 0, 1, 0, 30, 0, 0, 0, 0, 0]).unwrap_err();
        assert_eq!((e.notification().code, e.notification().subcode), (2, 3));
        let e = open(&[4, 0, 1, 0, 30, 1, 1, 1, 1, 3, 9, 1, 0]).unwrap_err();
        assert_eq!(
            e,
            DecodeError::Open(OpenError::UnsupportedOptionalParameter(9))
        );
        assert_eq!((e.notification().code, e.notification().subcode), (2, 4));
        // Optional parameters length beyond the message.
        let e = open(&[4, 0, 1, 0, 30, 1, 1, 1, 1, 9, 2, 0]).unwrap_err();
        assert_eq!((e.notification().code, e.notification().subcode), (2, 0));
        // Capability overrunning its parameter.
        let e = open(&[4, 0, 1, 0, 30, 1, 1, 1, 1, 4, 2, 2, 65, 4]).unwrap_err();
        assert_eq!((e.notification().code, e.notification().subcode), (2, 0));
        // Hold time 0 is fine (RFC 4271 §4.2).
        assert!(open(&[4, 0, 1, 0, 0, 1, 1, 1, 1, 0]).is_ok());
    }

    #[test]
    fn keepalive_bytes() {
        let k = Message::Keepalive.encode(&Ctx::default());
        assert_eq!(k, hdr(19, 4));
        assert_eq!(
            Message::decode(&k, &Ctx::default()).unwrap(),
            Message::Keepalive
        );
    }

    #[test]
    fn notification_bytes() {
        let mut bytes = hdr(23, 3);
        bytes.extend_from_slice(&[1, 2, 0x10, 0x01]);
        let n = Notification {
            code: 1,
            subcode: 2,
            data: vec![0x10, 0x01],
        };
        assert_eq!(
            Message::decode(&bytes, &Ctx::default()).unwrap(),
            Message::Notification(n.clone())
        );
        assert_eq!(
            Message::Notification(n.clone()).encode(&Ctx::default()),
            bytes
        );
        assert_eq!(
            n.to_string(),
            "1/2 (Message Header Error / Bad Message Length)"
        );
        // RFC 9003 shutdown communication.
        let n = Notification {
            code: 6,
            subcode: 2,
            data: [&[5u8][..], b"maint"].concat(),
        };
        assert_eq!(
            n.to_string(),
            "6/2 (Cease / Administrative Shutdown): \"maint\""
        );
        assert_eq!(Notification::shutdown("maint"), n);
        // Cut to 255 octets at a character boundary.
        let long = "é".repeat(200);
        let n = Notification::shutdown(&long);
        assert_eq!(n.data[0], 254);
        assert_eq!(n.shutdown_message().unwrap().chars().count(), 127);
    }

    #[test]
    fn route_refresh_bytes() {
        let mut bytes = hdr(23, 5);
        bytes.extend_from_slice(&[0, 1, 0, 1]);
        let m = Message::RouteRefresh(RouteRefresh::ipv4_unicast());
        assert_eq!(m.encode(&Ctx::default()), bytes);
        assert_eq!(Message::decode(&bytes, &Ctx::default()).unwrap(), m);
        let mut short = hdr(22, 5);
        short.extend_from_slice(&[0, 1, 0]);
        let e = Message::decode(&short, &Ctx::default()).unwrap_err();
        assert_eq!((e.notification().code, e.notification().subcode), (7, 1));
    }

    #[test]
    fn header_errors() {
        let ctx = Ctx::default();
        let mut bad_marker = hdr(19, 4);
        bad_marker[3] = 0;
        assert_eq!(
            Message::decode(&bad_marker, &ctx),
            Err(DecodeError::ConnectionNotSynchronized)
        );
        assert_eq!(
            Message::decode(&hdr(18, 4), &ctx),
            Err(DecodeError::BadMessageLength(18))
        );
        assert_eq!(
            Message::decode(&hdr(4097, 2), &ctx),
            Err(DecodeError::BadMessageLength(4097))
        );
        assert_eq!(
            Message::decode(&hdr(19, 6), &ctx),
            Err(DecodeError::BadMessageType(6))
        );
        assert_eq!(
            Message::decode(&hdr(19, 0), &ctx),
            Err(DecodeError::BadMessageType(0))
        );
        // KEEPALIVE must be exactly 19 octets, OPEN at least 29, UPDATE 23.
        let mut k = hdr(20, 4);
        k.push(0);
        assert_eq!(
            Message::decode(&k, &ctx),
            Err(DecodeError::BadMessageLength(20))
        );
        let mut o = hdr(28, 1);
        o.extend_from_slice(&[0; 9]);
        assert_eq!(
            Message::decode(&o, &ctx),
            Err(DecodeError::BadMessageLength(28))
        );
        let mut u = hdr(22, 2);
        u.extend_from_slice(&[0; 3]);
        assert_eq!(
            Message::decode(&u, &ctx),
            Err(DecodeError::BadMessageLength(22))
        );
        let e = DecodeError::BadMessageLength(22).notification();
        assert_eq!((e.code, e.subcode, e.data), (1, 2, vec![0, 22]));
    }

    #[test]
    fn framer_split_and_coalesced() {
        let ctx = Ctx::default();
        let mut stream = Message::Keepalive.encode(&ctx);
        stream.extend(Message::RouteRefresh(RouteRefresh::ipv4_unicast()).encode(&ctx));
        stream.extend(Message::Open(Open::new(45104, 30, Ipv4Addr::new(1, 2, 3, 4))).encode(&ctx));
        // Every split point, including one byte at a time.
        for chunk in [1usize, 2, 7, 19, 20, 23, 1000] {
            let mut f = Framer::new();
            let mut types = Vec::new();
            for c in stream.chunks(chunk) {
                f.push(c);
                while let Some(frame) = f.next_frame().unwrap() {
                    types.push(Message::decode(frame, &ctx).unwrap().message_type());
                }
            }
            assert_eq!(
                types,
                [
                    MessageType::Keepalive,
                    MessageType::RouteRefresh,
                    MessageType::Open
                ]
            );
            assert_eq!(f.pending(), 0);
        }
    }

    #[test]
    fn framer_reports_bad_header_before_body_arrives() {
        let mut f = Framer::new();
        f.push(&hdr(60000, 2));
        assert_eq!(f.next_frame(), Err(DecodeError::BadMessageLength(60000)));
    }
}
