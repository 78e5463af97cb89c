//! UPDATE message (RFC 4271 §4.3) and its path attributes (§5), decoded
//! with RFC 7606 revised error handling.
//!
//! Decoding never resets the session for an attribute RFC 7606 lets us
//! survive: such errors are listed in [`Update::errors`]; if any says
//! [`ErrorAction::TreatAsWithdraw`], the receiver must treat every NLRI in the
//! UPDATE as withdrawn ([`Update::treat_as_withdraw`]).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::codec::{
    PrefixError, Reader, decode_prefixes, encode_prefixes, len16_placeholder, patch_u16,
};
use crate::error::{AttrError, AttrErrorKind, DecodeError, ErrorAction, UpdateError};
use crate::message::{AFI_IPV4, AS_TRANS, Ctx, SAFI_UNICAST};

/// Attribute flag bits (RFC 4271 §4.3).
pub mod flags {
    pub const OPTIONAL: u8 = 0x80;
    pub const TRANSITIVE: u8 = 0x40;
    pub const PARTIAL: u8 = 0x20;
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// Well-known communities (RFC 1997).
pub mod community {
    pub const NO_EXPORT: u32 = 0xFFFF_FF01;
    pub const NO_ADVERTISE: u32 = 0xFFFF_FF02;
    pub const NO_EXPORT_SUBCONFED: u32 = 0xFFFF_FF03;
}

/// Attribute type codes (RFC 4271 §5, RFC 1997, RFC 4760, RFC 6793).
pub mod attr_type {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MED: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const MP_REACH_NLRI: u8 = 14;
    pub const MP_UNREACH_NLRI: u8 = 15;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
}

/// UPDATE message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    pub withdrawn: Vec<Ipv4Net>,
    pub attrs: PathAttrs,
    pub nlri: Vec<Ipv4Net>,
    /// Attribute errors handled per RFC 7606 (empty for a clean UPDATE;
    /// ignored when encoding).
    pub errors: Vec<AttrError>,
}

/// Path attributes. Well-known mandatory ones are `Option` so a
/// withdraw-only UPDATE and a malformed one can both be represented; they
/// are encoded in type-code order (RFC 4271 §5 recommends ascending order).
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct PathAttrs {
    pub origin: Option<Origin>,
    pub as_path: Option<AsPath>,
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<Aggregator>,
    /// RFC 1997 communities, as received.
    pub communities: Vec<u32>,
    /// RFC 4760 MP_REACH_NLRI.
    pub mp_reach: Option<MpReach>,
    /// RFC 4760 MP_UNREACH_NLRI.
    pub mp_unreach: Option<MpNlri>,
    /// Unrecognized optional transitive attributes, kept for propagation
    /// (RFC 4271 §5: pass on with the Partial bit set).
    pub unknown: Vec<RawAttr>,
}

/// ORIGIN values (RFC 4271 §5.1.1); lower is preferred (§9.1.2.2 c).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

/// AS_PATH (RFC 4271 §5.1.2), always held with 4-octet ASNs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct AsPath {
    pub segments: Vec<AsSegment>,
}

/// An AS_PATH segment (RFC 4271 §4.3, RFC 5065 for confederations).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AsSegment {
    Set(Vec<u32>),
    Sequence(Vec<u32>),
    ConfedSequence(Vec<u32>),
    ConfedSet(Vec<u32>),
}

/// AGGREGATOR (RFC 4271 §5.1.7), ASN always 4-octet here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Aggregator {
    pub asn: u32,
    pub addr: Ipv4Addr,
}

/// An attribute kept as received.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttr {
    pub flags: u8,
    pub type_code: u8,
    pub value: Vec<u8>,
}

/// MP_REACH_NLRI (RFC 4760 §3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpReach {
    /// Next hop octets as received (4 for IPv4 unicast).
    pub next_hop: Vec<u8>,
    pub nlri: MpNlri,
}

/// NLRI of an MP attribute: parsed for IPv4 unicast, raw otherwise (we do
/// not negotiate other families, so they are only carried).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MpNlri {
    Ipv4Unicast(Vec<Ipv4Net>),
    Other { afi: u16, safi: u8, data: Vec<u8> },
}

impl AsPath {
    /// A single AS_SEQUENCE.
    pub fn sequence(asns: &[u32]) -> Self {
        if asns.is_empty() {
            return Self::default();
        }
        Self {
            segments: vec![AsSegment::Sequence(asns.to_vec())],
        }
    }

    /// RFC 4271 §9.1.2.2 a: an AS_SET counts as one, confederation segments
    /// count as zero (RFC 5065 §5.3).
    pub fn path_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                AsSegment::Sequence(a) => a.len(),
                AsSegment::Set(_) => 1,
                AsSegment::ConfedSequence(_) | AsSegment::ConfedSet(_) => 0,
            })
            .sum()
    }

    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| s.asns().contains(&asn))
    }

    /// The neighbouring AS: leftmost AS of a leading AS_SEQUENCE
    /// (RFC 4271 §9.1.2.2 c).
    pub fn first_as(&self) -> Option<u32> {
        match self.segments.first()? {
            AsSegment::Sequence(a) => a.first().copied(),
            _ => None,
        }
    }

    /// `asn` prepended as RFC 4271 §5.1.2 b requires when advertising to an
    /// external peer.
    pub fn prepend(&self, asn: u32) -> Self {
        let mut segments = self.segments.clone();
        match segments.first_mut() {
            Some(AsSegment::Sequence(a)) if a.len() < 255 => a.insert(0, asn),
            _ => segments.insert(0, AsSegment::Sequence(vec![asn])),
        }
        Self { segments }
    }
}

impl AsSegment {
    pub fn asns(&self) -> &[u32] {
        match self {
            Self::Set(a) | Self::Sequence(a) | Self::ConfedSequence(a) | Self::ConfedSet(a) => a,
        }
    }

    fn type_code(&self) -> u8 {
        match self {
            Self::Set(_) => 1,
            Self::Sequence(_) => 2,
            Self::ConfedSequence(_) => 3,
            Self::ConfedSet(_) => 4,
        }
    }
}

impl std::fmt::Display for AsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for s in &self.segments {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            let list = s
                .asns()
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" ");
            match s {
                AsSegment::Sequence(_) => f.write_str(&list)?,
                AsSegment::Set(_) => write!(f, "{{{list}}}")?,
                AsSegment::ConfedSequence(_) => write!(f, "({list})")?,
                AsSegment::ConfedSet(_) => write!(f, "[{list}]")?,
            }
        }
        Ok(())
    }
}

impl RawAttr {
    /// RFC 4271 §5: an unrecognized optional transitive attribute is passed
    /// on with the Partial bit set.
    pub fn propagated(&self) -> Self {
        Self {
            flags: self.flags | flags::PARTIAL,
            ..self.clone()
        }
    }
}

impl Update {
    /// True if RFC 7606 says this UPDATE's NLRI are to be treated as
    /// withdrawn.
    pub fn treat_as_withdraw(&self) -> bool {
        self.errors
            .iter()
            .any(|e| e.action == ErrorAction::TreatAsWithdraw)
    }

    /// All IPv4 unicast prefixes announced (NLRI field and MP_REACH_NLRI).
    pub fn announced(&self) -> impl Iterator<Item = &Ipv4Net> {
        let mp = match &self.attrs.mp_reach {
            Some(MpReach {
                nlri: MpNlri::Ipv4Unicast(p),
                ..
            }) => p.as_slice(),
            _ => &[],
        };
        self.nlri.iter().chain(mp)
    }

    /// All IPv4 unicast prefixes withdrawn (field and MP_UNREACH_NLRI).
    pub fn withdrawn_all(&self) -> impl Iterator<Item = &Ipv4Net> {
        let mp = match &self.attrs.mp_unreach {
            Some(MpNlri::Ipv4Unicast(p)) => p.as_slice(),
            _ => &[],
        };
        self.withdrawn.iter().chain(mp)
    }

    /// The IPv4 next hop for announced routes: NEXT_HOP, or the
    /// MP_REACH_NLRI next hop for IPv4 unicast (RFC 4760 §3).
    pub fn next_hop(&self) -> Option<Ipv4Addr> {
        if !self.nlri.is_empty() {
            return self.attrs.next_hop;
        }
        match &self.attrs.mp_reach {
            Some(MpReach {
                next_hop,
                nlri: MpNlri::Ipv4Unicast(_),
            }) => {
                let o: [u8; 4] = next_hop.get(..4)?.try_into().ok()?;
                Some(Ipv4Addr::from(o))
            }
            _ => self.attrs.next_hop,
        }
    }

    pub(crate) fn encode_body(&self, ctx: &Ctx, out: &mut Vec<u8>) {
        let wl = len16_placeholder(out);
        let start = out.len();
        encode_prefixes(&self.withdrawn, out);
        let n = out.len() - start;
        patch_u16(out, wl, n);
        let al = len16_placeholder(out);
        let start = out.len();
        self.attrs.encode(ctx, out);
        let n = out.len() - start;
        patch_u16(out, al, n);
        encode_prefixes(&self.nlri, out);
    }

    /// Decodes an UPDATE body (after the 19-octet header).
    pub(crate) fn decode_body(body: &[u8], ctx: &Ctx) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let mal = |why| DecodeError::Update(UpdateError::MalformedAttributeList(why));
        // RFC 4271 §6.3 / RFC 7606 §5.3: length fields that do not fit the
        // message make the rest unparseable: session reset.
        let wlen = r.u16().ok_or(mal("no withdrawn routes length"))?;
        let wbuf = r
            .take(usize::from(wlen))
            .ok_or(mal("withdrawn routes length exceeds the message"))?;
        let alen = r.u16().ok_or(mal("no total path attribute length"))?;
        let abuf = r
            .take(usize::from(alen))
            .ok_or(mal("total path attribute length exceeds the message"))?;
        let nbuf = r.rest();
        let withdrawn =
            decode_prefixes(wbuf).map_err(|e| invalid_network("withdrawn routes", e))?;
        let nlri = decode_prefixes(nbuf).map_err(|e| invalid_network("NLRI", e))?;
        let (attrs, mut errors) = PathAttrs::decode(abuf, ctx)?;
        let mut update = Self {
            withdrawn,
            attrs,
            nlri,
            errors: Vec::new(),
        };
        // RFC 7606 §3 d: missing well-known mandatory attributes when there
        // is something to announce.
        let announces = update.announced().next().is_some();
        if announces {
            let mut missing = Vec::new();
            if update.attrs.origin.is_none() {
                missing.push(attr_type::ORIGIN);
            }
            if update.attrs.as_path.is_none() {
                missing.push(attr_type::AS_PATH);
            }
            // NEXT_HOP is mandatory only with NLRI in the UPDATE's own field
            // (RFC 4760 §3: MP_REACH carries its own next hop).
            if !update.nlri.is_empty() && update.attrs.next_hop.is_none() {
                missing.push(attr_type::NEXT_HOP);
            }
            for t in missing {
                if !errors.iter().any(|e| e.type_code == t) {
                    errors.push(AttrError {
                        type_code: t,
                        kind: AttrErrorKind::MissingWellKnown,
                        action: ErrorAction::TreatAsWithdraw,
                    });
                }
            }
        }
        update.errors = errors;
        Ok(update)
    }
}

fn invalid_network(field: &'static str, e: PrefixError) -> DecodeError {
    let _ = e;
    DecodeError::Update(UpdateError::InvalidNetworkField(field))
}

impl PathAttrs {
    /// Attributes for a route this speaker originates towards an external
    /// peer: ORIGIN IGP, AS_PATH `[local_asn]`, NEXT_HOP = our address
    /// (RFC 4271 §5.1.2, §5.1.3).
    pub fn originated(local_asn: u32, next_hop: Ipv4Addr, ebgp: bool) -> Self {
        Self {
            origin: Some(Origin::Igp),
            as_path: Some(if ebgp {
                AsPath::sequence(&[local_asn])
            } else {
                AsPath::default()
            }),
            next_hop: Some(next_hop),
            // RFC 4271 §5.1.5: LOCAL_PREF only towards internal peers.
            local_pref: (!ebgp).then_some(100),
            ..Self::default()
        }
    }

    /// Attributes for re-advertising a route learned from another peer
    /// (RFC 4271 §9.2 Update-Send, with the §5.1 rules for each attribute),
    /// or `None` when a well-known community forbids it (RFC 1997).
    ///
    /// - ORIGIN, ATOMIC_AGGREGATE, AGGREGATOR and communities pass unchanged
    ///   (§5.1.1, §5.1.6, §5.1.7; RFC 1997 communities are transitive);
    /// - AS_PATH: `local_asn` prepended towards an external peer (§5.1.2 b),
    ///   unchanged towards an internal one (§5.1.2 a);
    /// - NEXT_HOP: our own address (§5.1.3: the peer can reach only us);
    /// - MULTI_EXIT_DISC is not passed to another AS (§5.1.4);
    /// - LOCAL_PREF only towards an internal peer (§5.1.5), default 100;
    /// - unrecognised optional transitive attributes pass with the Partial
    ///   bit (§5), never AS4_PATH/AS4_AGGREGATOR: `decode` merges them into
    ///   AS_PATH/AGGREGATOR (RFC 6793 §4.2.3) and our encoder builds a fresh
    ///   AS4_PATH when an old speaker needs one (§4.2.2).
    pub fn exported(
        learned: &PathAttrs,
        local_asn: u32,
        next_hop: Ipv4Addr,
        ebgp: bool,
    ) -> Option<Self> {
        let c = &learned.communities;
        // RFC 1997: NO_ADVERTISE to nobody; NO_EXPORT and NO_EXPORT_SUBCONFED
        // not outside the AS (we are no confederation).
        if c.contains(&community::NO_ADVERTISE)
            || (ebgp
                && (c.contains(&community::NO_EXPORT)
                    || c.contains(&community::NO_EXPORT_SUBCONFED)))
        {
            return None;
        }
        let path = learned.as_path.clone().unwrap_or_default();
        Some(Self {
            origin: Some(learned.origin.unwrap_or(Origin::Incomplete)),
            as_path: Some(if ebgp { path.prepend(local_asn) } else { path }),
            next_hop: Some(next_hop),
            med: if ebgp { None } else { learned.med },
            local_pref: (!ebgp).then(|| learned.local_pref.unwrap_or(100)),
            atomic_aggregate: learned.atomic_aggregate,
            aggregator: learned.aggregator,
            communities: learned.communities.clone(),
            mp_reach: None,
            mp_unreach: None,
            unknown: learned
                .unknown
                .iter()
                .filter(|a| {
                    a.flags & flags::OPTIONAL != 0
                        && a.flags & flags::TRANSITIVE != 0
                        && !matches!(a.type_code, attr_type::AS4_PATH | attr_type::AS4_AGGREGATOR)
                })
                .map(RawAttr::propagated)
                .collect(),
        })
    }

    fn encode(&self, ctx: &Ctx, out: &mut Vec<u8>) {
        use attr_type as t;
        use flags::{OPTIONAL as O, TRANSITIVE as T};
        if let Some(origin) = self.origin {
            put_attr(out, T, t::ORIGIN, &[origin as u8]);
        }
        let mut as4_path = None;
        if let Some(path) = &self.as_path {
            let mut v = Vec::new();
            for seg in &path.segments {
                v.push(seg.type_code());
                v.push(u8::try_from(seg.asns().len()).unwrap_or(u8::MAX));
                for &asn in seg.asns().iter().take(255) {
                    if ctx.four_octet_as {
                        v.extend_from_slice(&asn.to_be_bytes());
                    } else {
                        // RFC 6793 §4.2.2: AS_TRANS stands in for 4-octet
                        // ASNs; the real path goes into AS4_PATH.
                        let two = u16::try_from(asn).unwrap_or(AS_TRANS);
                        v.extend_from_slice(&two.to_be_bytes());
                    }
                }
            }
            put_attr(out, T, t::AS_PATH, &v);
            if !ctx.four_octet_as
                && path
                    .segments
                    .iter()
                    .any(|s| s.asns().iter().any(|&a| a > 0xffff))
            {
                let mut v4 = Vec::new();
                for seg in &path.segments {
                    v4.push(seg.type_code());
                    v4.push(u8::try_from(seg.asns().len()).unwrap_or(u8::MAX));
                    for &asn in seg.asns().iter().take(255) {
                        v4.extend_from_slice(&asn.to_be_bytes());
                    }
                }
                as4_path = Some(v4);
            }
        }
        if let Some(nh) = self.next_hop {
            put_attr(out, T, t::NEXT_HOP, &nh.octets());
        }
        if let Some(med) = self.med {
            put_attr(out, O, t::MED, &med.to_be_bytes());
        }
        if let Some(lp) = self.local_pref {
            put_attr(out, T, t::LOCAL_PREF, &lp.to_be_bytes());
        }
        if self.atomic_aggregate {
            put_attr(out, T, t::ATOMIC_AGGREGATE, &[]);
        }
        if let Some(agg) = self.aggregator {
            let mut v = Vec::new();
            if ctx.four_octet_as {
                v.extend_from_slice(&agg.asn.to_be_bytes());
            } else {
                v.extend_from_slice(&u16::try_from(agg.asn).unwrap_or(AS_TRANS).to_be_bytes());
            }
            v.extend_from_slice(&agg.addr.octets());
            put_attr(out, O | T, t::AGGREGATOR, &v);
        }
        if !self.communities.is_empty() {
            let v: Vec<u8> = self
                .communities
                .iter()
                .flat_map(|c| c.to_be_bytes())
                .collect();
            put_attr(out, O | T, t::COMMUNITIES, &v);
        }
        if let Some(mp) = &self.mp_reach {
            let mut v = Vec::new();
            let (afi, safi) = mp.nlri.family();
            v.extend_from_slice(&afi.to_be_bytes());
            v.push(safi);
            v.push(u8::try_from(mp.next_hop.len()).unwrap_or(u8::MAX));
            v.extend_from_slice(&mp.next_hop);
            v.push(0);
            mp.nlri.encode_prefixes(&mut v);
            put_attr(out, O, t::MP_REACH_NLRI, &v);
        }
        if let Some(mp) = &self.mp_unreach {
            let mut v = Vec::new();
            let (afi, safi) = mp.family();
            v.extend_from_slice(&afi.to_be_bytes());
            v.push(safi);
            mp.encode_prefixes(&mut v);
            put_attr(out, O, t::MP_UNREACH_NLRI, &v);
        }
        if let Some(v) = as4_path {
            put_attr(out, O | T, t::AS4_PATH, &v);
        }
        for raw in &self.unknown {
            put_attr(
                out,
                raw.flags & !flags::EXTENDED_LENGTH,
                raw.type_code,
                &raw.value,
            );
        }
    }

    /// RFC 7606 decoding of the path attributes field.
    fn decode(buf: &[u8], ctx: &Ctx) -> Result<(Self, Vec<AttrError>), DecodeError> {
        use attr_type as t;
        let mut attrs = Self::default();
        let mut errors = Vec::new();
        let mut seen = [false; 256];
        let mut r = Reader::new(buf);
        while !r.is_empty() {
            // RFC 7606 §4: too few octets for a header, or an attribute
            // overrunning the field: treat-as-withdraw, and the Total
            // Attribute Length still locates the NLRI.
            let Some((flags, type_code, value)) = next_attr(&mut r) else {
                let type_code = buf.get(buf.len() - r.remaining() + 1).copied().unwrap_or(0);
                errors.push(AttrError {
                    type_code,
                    kind: AttrErrorKind::Overrun,
                    action: ErrorAction::TreatAsWithdraw,
                });
                break;
            };
            let seen_before = seen.get(usize::from(type_code)).copied().unwrap_or(false);
            if let Some(s) = seen.get_mut(usize::from(type_code)) {
                *s = true;
            }
            if seen_before {
                // RFC 7606 §3 g.
                if matches!(type_code, t::MP_REACH_NLRI | t::MP_UNREACH_NLRI) {
                    return Err(UpdateError::MalformedAttributeList(
                        "MP_REACH/MP_UNREACH repeated",
                    )
                    .into());
                }
                errors.push(AttrError {
                    type_code,
                    kind: AttrErrorKind::Duplicate,
                    action: ErrorAction::AttributeDiscard,
                });
                continue;
            }
            let err = |kind, action| AttrError {
                type_code,
                kind,
                action,
            };
            let tw = ErrorAction::TreatAsWithdraw;
            let discard = ErrorAction::AttributeDiscard;
            // RFC 7606 §3 c: O/T bits in conflict with the type.
            if let Some(expected) = expected_flags(type_code)
                && flags & (flags::OPTIONAL | flags::TRANSITIVE) != expected
            {
                // MP attributes carry NLRI we could not otherwise find:
                // RFC 7606 §5.3 makes their errors a session reset.
                if matches!(type_code, t::MP_REACH_NLRI | t::MP_UNREACH_NLRI) {
                    return Err(UpdateError::MalformedAttributeList("MP attribute flags").into());
                }
                // RFC 6793 §6: a malformed AS4_* attribute is discarded.
                if matches!(type_code, t::AS4_PATH | t::AS4_AGGREGATOR) {
                    errors.push(err(AttrErrorKind::Flags(flags), discard));
                    continue;
                }
                errors.push(err(AttrErrorKind::Flags(flags), tw));
                continue;
            }
            let len = value.len();
            let mut v = Reader::new(value);
            match type_code {
                t::ORIGIN => match (len, value.first()) {
                    (1, Some(0)) => attrs.origin = Some(Origin::Igp),
                    (1, Some(1)) => attrs.origin = Some(Origin::Egp),
                    (1, Some(2)) => attrs.origin = Some(Origin::Incomplete),
                    (1, Some(&x)) => errors.push(err(AttrErrorKind::InvalidOrigin(x), tw)),
                    _ => errors.push(err(AttrErrorKind::Length(len), tw)),
                },
                t::AS_PATH => match decode_as_path(value, if ctx.four_octet_as { 4 } else { 2 }) {
                    Some(p) => attrs.as_path = Some(p),
                    None => errors.push(err(AttrErrorKind::MalformedAsPath, tw)),
                },
                t::NEXT_HOP => match (len, v.ipv4()) {
                    (4, Some(a)) => attrs.next_hop = Some(a),
                    _ => errors.push(err(AttrErrorKind::Length(len), tw)),
                },
                t::MED => match (len, v.u32()) {
                    (4, Some(m)) => attrs.med = Some(m),
                    _ => errors.push(err(AttrErrorKind::Length(len), tw)),
                },
                t::LOCAL_PREF => match (len, v.u32()) {
                    (4, Some(lp)) => attrs.local_pref = Some(lp),
                    // RFC 7606 §7.5 (the session discards it entirely on eBGP).
                    _ => errors.push(err(AttrErrorKind::Length(len), tw)),
                },
                t::ATOMIC_AGGREGATE => {
                    if len == 0 {
                        attrs.atomic_aggregate = true;
                    } else {
                        // RFC 7606 §7.6.
                        errors.push(err(AttrErrorKind::Length(len), discard));
                    }
                }
                t::AGGREGATOR => {
                    let want = if ctx.four_octet_as { 8 } else { 6 };
                    let asn = if ctx.four_octet_as {
                        v.u32()
                    } else {
                        v.u16().map(u32::from)
                    };
                    match (len == want, asn, v.ipv4()) {
                        (true, Some(asn), Some(addr)) => {
                            attrs.aggregator = Some(Aggregator { asn, addr })
                        }
                        // RFC 7606 §7.7.
                        _ => errors.push(err(AttrErrorKind::Length(len), discard)),
                    }
                }
                t::COMMUNITIES => {
                    // RFC 7606 §7.8.
                    if len == 0 || len % 4 != 0 {
                        errors.push(err(AttrErrorKind::Length(len), tw));
                    } else {
                        attrs.communities = std::iter::from_fn(|| v.u32()).collect();
                    }
                }
                t::MP_REACH_NLRI => attrs.mp_reach = Some(decode_mp_reach(value)?),
                t::MP_UNREACH_NLRI => attrs.mp_unreach = Some(decode_mp_unreach(value)?),
                t::AS4_PATH | t::AS4_AGGREGATOR if ctx.four_octet_as => {
                    // RFC 6793 §4.1: a NEW speaker discards these from a NEW speaker.
                    errors.push(err(AttrErrorKind::As4FromNewSpeaker, discard));
                }
                _ if flags & flags::OPTIONAL == 0 => {
                    // RFC 4271 §6.3: unrecognized well-known attribute.
                    let mut data = vec![flags, type_code];
                    if flags & flags::EXTENDED_LENGTH != 0 {
                        data.extend_from_slice(
                            &u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes(),
                        );
                    } else {
                        data.push(u8::try_from(len).unwrap_or(u8::MAX));
                    }
                    data.extend_from_slice(value);
                    return Err(UpdateError::UnrecognizedWellKnown { type_code, data }.into());
                }
                _ if flags & flags::TRANSITIVE != 0 => {
                    // The Extended Length bit is an encoding choice, made
                    // again when the attribute is sent on.
                    attrs.unknown.push(RawAttr {
                        flags: flags & !flags::EXTENDED_LENGTH,
                        type_code,
                        value: value.to_vec(),
                    });
                }
                // RFC 4271 §5: unrecognized optional non-transitive: ignored.
                _ => {}
            }
        }
        if !ctx.four_octet_as {
            attrs.merge_as4(&mut errors);
        }
        Ok((attrs, errors))
    }

    /// RFC 6793 §4.2.3: a NEW speaker rebuilds the path an OLD speaker carried in
    /// AS4_PATH / AS4_AGGREGATOR (kept in `unknown` by `decode`) and drops those two
    /// attributes, so the path holds the real 4-octet ASNs instead of AS_TRANS: loop
    /// detection (§9.1.2 of RFC 4271) and path length then see the true path, and
    /// re-advertising builds a fresh AS4_PATH where one is needed (§4.2.2).
    fn merge_as4(&mut self, errors: &mut Vec<AttrError>) {
        use attr_type as t;
        let take = |unknown: &mut Vec<RawAttr>, code: u8| {
            let i = unknown.iter().position(|a| a.type_code == code)?;
            Some(unknown.remove(i).value)
        };
        let as4_path = take(&mut self.unknown, t::AS4_PATH);
        let as4_aggregator = take(&mut self.unknown, t::AS4_AGGREGATOR);
        let discard = |type_code, kind| AttrError {
            type_code,
            kind,
            action: ErrorAction::AttributeDiscard,
        };
        // RFC 6793 §6: a malformed AS4_AGGREGATOR is discarded.
        let as4_aggregator = as4_aggregator.and_then(|v| {
            let mut r = Reader::new(&v);
            match (v.len(), r.u32(), r.ipv4()) {
                (8, Some(asn), Some(addr)) => Some(Aggregator { asn, addr }),
                _ => {
                    errors.push(discard(t::AS4_AGGREGATOR, AttrErrorKind::Length(v.len())));
                    None
                }
            }
        });
        // §4.2.3: an AGGREGATOR with a real 2-octet ASN means the route was aggregated
        // by an OLD speaker after the AS4_* attributes were attached: both are stale.
        if self
            .aggregator
            .is_some_and(|a| a.asn != u32::from(AS_TRANS))
        {
            return;
        }
        if let (Some(a), Some(a4)) = (self.aggregator.as_mut(), as4_aggregator) {
            *a = a4;
        }
        let Some(v) = as4_path else {
            return;
        };
        // §6: malformed, or with confederation segments (§4.1: never in AS4_PATH).
        let as4 = match decode_as_path(&v, 4) {
            Some(p)
                if p.segments
                    .iter()
                    .all(|s| matches!(s, AsSegment::Sequence(_) | AsSegment::Set(_))) =>
            {
                p
            }
            _ => {
                errors.push(discard(t::AS4_PATH, AttrErrorKind::MalformedAsPath));
                return;
            }
        };
        let Some(path) = self.as_path.as_mut() else {
            return;
        };
        // §4.2.3: AS4_PATH longer than AS_PATH is ignored; otherwise the leading ASes
        // of AS_PATH that AS4_PATH lacks (added by OLD speakers) go before it.
        let Some(mut missing) = path.path_len().checked_sub(as4.path_len()) else {
            return;
        };
        let mut merged = Vec::new();
        for seg in &path.segments {
            match seg {
                _ if missing == 0 => break,
                AsSegment::Sequence(a) => {
                    let n = missing.min(a.len());
                    merged.push(AsSegment::Sequence(a.iter().take(n).copied().collect()));
                    missing -= n;
                }
                AsSegment::Set(_) => {
                    merged.push(seg.clone());
                    missing -= 1;
                }
                // Not counted (RFC 6793 §4.2.3, as in RFC 4271 path length).
                AsSegment::ConfedSequence(_) | AsSegment::ConfedSet(_) => merged.push(seg.clone()),
            }
        }
        for seg in as4.segments {
            match (merged.last_mut(), seg) {
                (Some(AsSegment::Sequence(a)), AsSegment::Sequence(b))
                    if a.len() + b.len() <= 255 =>
                {
                    a.extend(b)
                }
                (_, seg) => merged.push(seg),
            }
        }
        path.segments = merged;
    }
}

/// The O/T bits each known attribute must carry (RFC 4271 §5, RFC 1997,
/// RFC 4760).
fn expected_flags(type_code: u8) -> Option<u8> {
    use attr_type as t;
    use flags::{OPTIONAL as O, TRANSITIVE as T};
    Some(match type_code {
        t::ORIGIN | t::AS_PATH | t::NEXT_HOP | t::LOCAL_PREF | t::ATOMIC_AGGREGATE => T,
        t::MED | t::MP_REACH_NLRI | t::MP_UNREACH_NLRI => O,
        t::AGGREGATOR | t::COMMUNITIES | t::AS4_PATH | t::AS4_AGGREGATOR => O | T,
        _ => return None,
    })
}

fn next_attr<'a>(r: &mut Reader<'a>) -> Option<(u8, u8, &'a [u8])> {
    let mut probe = r.clone();
    let flags = probe.u8()?;
    let type_code = probe.u8()?;
    let len = if flags & flags::EXTENDED_LENGTH != 0 {
        usize::from(probe.u16()?)
    } else {
        usize::from(probe.u8()?)
    };
    let value = probe.take(len)?;
    *r = probe;
    Some((flags, type_code, value))
}

fn put_attr(out: &mut Vec<u8>, flags: u8, type_code: u8, value: &[u8]) {
    if value.len() > 255 {
        out.push(flags | flags::EXTENDED_LENGTH);
        out.push(type_code);
        out.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
    } else {
        out.push(flags & !flags::EXTENDED_LENGTH);
        out.push(type_code);
        out.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
    }
    out.extend_from_slice(value);
}

/// RFC 7606 §7.2: `None` for an unknown segment type, a zero-length
/// segment, or a segment overrunning the attribute.
fn decode_as_path(value: &[u8], as_len: usize) -> Option<AsPath> {
    let mut r = Reader::new(value);
    let mut segments = Vec::new();
    while !r.is_empty() {
        let ty = r.u8()?;
        let count = r.u8()?;
        if count == 0 {
            return None;
        }
        let mut asns = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            asns.push(if as_len == 4 {
                r.u32()?
            } else {
                u32::from(r.u16()?)
            });
        }
        segments.push(match ty {
            1 => AsSegment::Set(asns),
            2 => AsSegment::Sequence(asns),
            3 => AsSegment::ConfedSequence(asns),
            4 => AsSegment::ConfedSet(asns),
            _ => return None,
        });
    }
    Some(AsPath { segments })
}

fn mp_error(e: PrefixError) -> DecodeError {
    let _ = e;
    DecodeError::Update(UpdateError::InvalidNetworkField("MP NLRI"))
}

fn decode_mp_reach(value: &[u8]) -> Result<MpReach, DecodeError> {
    // RFC 7606 §7.11: an MP_REACH we cannot parse means the NLRI cannot be
    // found: session reset.
    let bad = || DecodeError::Update(UpdateError::MalformedAttributeList("MP_REACH_NLRI"));
    let mut r = Reader::new(value);
    let afi = r.u16().ok_or_else(bad)?;
    let safi = r.u8().ok_or_else(bad)?;
    let nh_len = r.u8().ok_or_else(bad)?;
    let next_hop = r.take(usize::from(nh_len)).ok_or_else(bad)?.to_vec();
    let _reserved = r.u8().ok_or_else(bad)?;
    let rest = r.rest();
    let nlri = if (afi, safi) == (AFI_IPV4, SAFI_UNICAST) {
        if nh_len != 4 {
            return Err(bad());
        }
        MpNlri::Ipv4Unicast(decode_prefixes(rest).map_err(mp_error)?)
    } else {
        MpNlri::Other {
            afi,
            safi,
            data: rest.to_vec(),
        }
    };
    Ok(MpReach { next_hop, nlri })
}

fn decode_mp_unreach(value: &[u8]) -> Result<MpNlri, DecodeError> {
    let bad = || DecodeError::Update(UpdateError::MalformedAttributeList("MP_UNREACH_NLRI"));
    let mut r = Reader::new(value);
    let afi = r.u16().ok_or_else(bad)?;
    let safi = r.u8().ok_or_else(bad)?;
    let rest = r.rest();
    Ok(if (afi, safi) == (AFI_IPV4, SAFI_UNICAST) {
        MpNlri::Ipv4Unicast(decode_prefixes(rest).map_err(mp_error)?)
    } else {
        MpNlri::Other {
            afi,
            safi,
            data: rest.to_vec(),
        }
    })
}

impl MpNlri {
    fn family(&self) -> (u16, u8) {
        match self {
            Self::Ipv4Unicast(_) => (AFI_IPV4, SAFI_UNICAST),
            Self::Other { afi, safi, .. } => (*afi, *safi),
        }
    }

    fn encode_prefixes(&self, out: &mut Vec<u8>) {
        match self {
            Self::Ipv4Unicast(p) => encode_prefixes(p, out),
            Self::Other { data, .. } => out.extend_from_slice(data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{MARKER, Message};

    const FOUR: Ctx = Ctx {
        four_octet_as: true,
    };
    const TWO: Ctx = Ctx {
        four_octet_as: false,
    };

    fn msg(body: &[u8]) -> Vec<u8> {
        let mut v = MARKER.to_vec();
        v.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        v.push(2);
        v.extend_from_slice(body);
        v
    }

    fn update(bytes: &[u8], ctx: &Ctx) -> Result<Update, DecodeError> {
        match Message::decode(bytes, ctx)? {
            Message::Update(u) => Ok(u),
            m => panic!("{m:?}"),
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// An UPDATE laid out as FRR sends `network 10.1.0.0/24` from AS 65530
    /// to an eBGP peer with 4-octet ASNs negotiated.
    #[rustfmt::skip]
    const FRR_UPDATE: &[u8] = &[
        0, 0,                    // withdrawn routes length
        0, 20,                   // total path attribute length
        0x40, 1, 1, 0,           // ORIGIN IGP
        0x40, 2, 6, 2, 1, 0, 0, 0xff, 0xfa, // AS_PATH SEQUENCE [65530]
        0x40, 3, 4, 10, 99, 0, 1,           // NEXT_HOP 10.99.0.1
        24, 10, 1, 0,            // NLRI 10.1.0.0/24
    ];

    #[test]
    fn frr_update_round_trip() {
        let bytes = msg(FRR_UPDATE);
        let u = update(&bytes, &FOUR).unwrap();
        let expected = Update {
            withdrawn: vec![],
            attrs: PathAttrs {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::sequence(&[65530])),
                next_hop: Some(Ipv4Addr::new(10, 99, 0, 1)),
                ..PathAttrs::default()
            },
            nlri: vec![net("10.1.0.0/24")],
            errors: vec![],
        };
        assert_eq!(u, expected);
        assert_eq!(Message::Update(expected).encode(&FOUR), bytes);
    }

    #[test]
    fn full_attribute_set_round_trip() {
        let u = Update {
            withdrawn: vec![net("192.168.0.0/16"), net("10.9.0.0/24")],
            attrs: PathAttrs {
                origin: Some(Origin::Incomplete),
                as_path: Some(AsPath {
                    segments: vec![
                        AsSegment::Sequence(vec![65530, 4_200_000_001]),
                        AsSegment::Set(vec![64512, 64513]),
                    ],
                }),
                next_hop: Some(Ipv4Addr::new(169, 254, 10, 2)),
                med: Some(50),
                local_pref: Some(200),
                atomic_aggregate: true,
                aggregator: Some(Aggregator {
                    asn: 4_200_000_001,
                    addr: Ipv4Addr::new(192, 0, 2, 1),
                }),
                communities: vec![0xfde8_0001, 0xffff_ff01],
                mp_reach: None,
                mp_unreach: None,
                unknown: vec![RawAttr {
                    flags: 0xe0,
                    type_code: 99,
                    value: vec![1, 2, 3],
                }],
            },
            nlri: vec![net("10.2.0.0/24"), net("0.0.0.0/0")],
            errors: vec![],
        };
        let bytes = Message::Update(u.clone()).encode(&FOUR);
        #[rustfmt::skip]
        let expected_attrs: &[u8] = &[
            0x40, 1, 1, 2,
            0x40, 2, 20, 2, 2, 0, 0, 0xff, 0xfa, 0xfa, 0x56, 0xea, 0x01, 1, 2, 0, 0, 0xfc, 0, 0, 0, 0xfc, 1,
            0x40, 3, 4, 169, 254, 10, 2,
            0x80, 4, 4, 0, 0, 0, 50,
            0x40, 5, 4, 0, 0, 0, 200,
            0x40, 6, 0,
            0xc0, 7, 8, 0xfa, 0x56, 0xea, 0x01, 192, 0, 2, 1,
            0xc0, 8, 8, 0xfd, 0xe8, 0, 1, 0xff, 0xff, 0xff, 0x01,
            0xe0, 99, 3, 1, 2, 3,
        ];
        let mut body = vec![0, 7, 16, 192, 168, 24, 10, 9, 0];
        body.extend_from_slice(&(expected_attrs.len() as u16).to_be_bytes());
        body.extend_from_slice(expected_attrs);
        body.extend_from_slice(&[24, 10, 2, 0, 0]);
        assert_eq!(bytes, msg(&body));
        assert_eq!(update(&bytes, &FOUR).unwrap(), u);
    }

    #[test]
    fn two_octet_as_path_and_as4_path() {
        // RFC 6793 §4.2.2: towards an old speaker, AS_TRANS + AS4_PATH.
        let u = Update {
            attrs: PathAttrs {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::sequence(&[4_200_000_001, 65000])),
                next_hop: Some(Ipv4Addr::new(10, 0, 0, 1)),
                ..PathAttrs::default()
            },
            nlri: vec![net("10.3.0.0/16")],
            ..Update::default()
        };
        let bytes = Message::Update(u.clone()).encode(&TWO);
        // On the wire: AS_PATH with AS_TRANS (0x5ba0), the real path in AS4_PATH.
        let as_path = [0x40, 2, 6, 2, 2, 0x5b, 0xa0, 0xfd, 0xe8];
        let as4_path = [0xc0, 17, 10, 2, 2, 0xfa, 0x56, 0xea, 0x01, 0, 0, 0xfd, 0xe8];
        let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(has(&as_path) && has(&as4_path));
        // A NEW speaker reading it rebuilds the real path (RFC 6793 §4.2.3).
        let d = update(&bytes, &TWO).unwrap();
        assert_eq!(d.attrs, u.attrs);
        // The same bytes read by a 4-octet speaker: AS4_PATH discarded.
        let bytes = msg(FRR_UPDATE);
        let d = update(&bytes, &TWO).unwrap();
        // 4-octet path read as 2-octet: segment of 1 AS = [0] then garbage
        // => malformed => treat-as-withdraw (RFC 7606 §7.2).
        assert!(d.treat_as_withdraw());
    }

    /// RFC 6793 §4.2.3 on UPDATEs from an OLD speaker: the ASes it (and other OLD
    /// speakers) added in front stay, AS_TRANS behind them is replaced by AS4_PATH;
    /// AS4_PATH longer than AS_PATH is ignored; a real 2-octet AGGREGATOR makes both
    /// AS4_* attributes stale; AS4_AGGREGATOR replaces an AS_TRANS aggregator; a
    /// malformed AS4_PATH is discarded, never the route.
    #[test]
    fn as4_path_from_an_old_speaker_is_merged() {
        let trans = AS_TRANS.to_be_bytes();
        let two = |asns: &[&[u8; 2]]| {
            let mut v = vec![2, u8::try_from(asns.len()).unwrap()];
            for a in asns {
                v.extend_from_slice(&a[..]);
            }
            v
        };
        let four = |segs: &[(u8, &[u32])]| {
            let mut v = Vec::new();
            for (ty, asns) in segs {
                v.extend_from_slice(&[*ty, u8::try_from(asns.len()).unwrap()]);
                for a in *asns {
                    v.extend_from_slice(&a.to_be_bytes());
                }
            }
            v
        };
        let decode = |as_path: Vec<u8>, extra: &[(u8, u8, Vec<u8>)]| {
            let mut a = vec![0x40, 1, 1, 0];
            a.extend_from_slice(&[0x40, 2, u8::try_from(as_path.len()).unwrap()]);
            a.extend_from_slice(&as_path);
            a.extend_from_slice(&[0x40, 3, 4, 10, 0, 0, 1]);
            for (flags, code, v) in extra {
                a.extend_from_slice(&[*flags, *code, u8::try_from(v.len()).unwrap()]);
                a.extend_from_slice(v);
            }
            let mut body = vec![0, 0];
            body.extend_from_slice(&u16::try_from(a.len()).unwrap().to_be_bytes());
            body.extend_from_slice(&a);
            body.extend_from_slice(&[16, 10, 3]);
            let d = update(&msg(&body), &TWO).unwrap();
            assert!(
                d.attrs.unknown.is_empty(),
                "AS4_* consumed: {:?}",
                d.attrs.unknown
            );
            d
        };
        let path = |d: &Update| d.attrs.as_path.clone().unwrap();
        let as4 = |segs: &[(u8, &[u32])]| (0xc0, attr_type::AS4_PATH, four(segs));
        let seq = AsPath::sequence;

        // 65001 (OLD) in front of two 4-octet ASes.
        let d = decode(
            two(&[&65001u16.to_be_bytes(), &trans, &trans]),
            &[as4(&[(2, &[4_200_000_001, 4_200_000_002])])],
        );
        assert_eq!(path(&d), seq(&[65001, 4_200_000_001, 4_200_000_002]));
        assert!(path(&d).contains(4_200_000_002), "loop detection sees it");
        assert!(d.errors.is_empty());
        // An AS_SET counts as one.
        let mut p = two(&[&65001u16.to_be_bytes()]);
        p.extend_from_slice(&[1, 2, 0, 1, 0, 2]);
        let d = decode(p, &[as4(&[(1, &[4_200_000_001, 4_200_000_002])])]);
        assert_eq!(
            path(&d).segments,
            [
                AsSegment::Sequence(vec![65001]),
                AsSegment::Set(vec![4_200_000_001, 4_200_000_002])
            ]
        );
        // AS4_PATH longer than AS_PATH: ignored, AS_PATH as received.
        let d = decode(
            two(&[&trans]),
            &[as4(&[(2, &[4_200_000_001, 4_200_000_002])])],
        );
        assert_eq!(path(&d), seq(&[u32::from(AS_TRANS)]));
        // AGGREGATOR 65002 (a real 2-octet ASN): AS4_PATH and AS4_AGGREGATOR ignored.
        let agg = |asn: [u8; 2]| {
            (
                0xc0,
                attr_type::AGGREGATOR,
                [&asn[..], &[10, 9, 9, 9]].concat(),
            )
        };
        let as4_agg = (
            0xc0,
            attr_type::AS4_AGGREGATOR,
            [&4_200_000_009u32.to_be_bytes()[..], &[10, 8, 8, 8]].concat(),
        );
        let d = decode(
            two(&[&trans]),
            &[
                agg(65002u16.to_be_bytes()),
                as4(&[(2, &[4_200_000_001])]),
                as4_agg.clone(),
            ],
        );
        assert_eq!(path(&d), seq(&[u32::from(AS_TRANS)]));
        assert_eq!(d.attrs.aggregator.unwrap().asn, 65002);
        // AGGREGATOR AS_TRANS: AS4_AGGREGATOR is the aggregator, AS4_PATH merged.
        let d = decode(
            two(&[&trans]),
            &[agg(trans), as4(&[(2, &[4_200_000_001])]), as4_agg],
        );
        assert_eq!(path(&d), seq(&[4_200_000_001]));
        assert_eq!(
            d.attrs.aggregator,
            Some(Aggregator {
                asn: 4_200_000_009,
                addr: Ipv4Addr::new(10, 8, 8, 8)
            })
        );
        // Malformed AS4_PATH (confederation segment, truncated): discarded, route kept.
        for bad in [four(&[(3, &[4_200_000_001])]), vec![2, 2, 0, 0]] {
            let d = decode(two(&[&trans]), &[(0xc0, attr_type::AS4_PATH, bad)]);
            assert_eq!(path(&d), seq(&[u32::from(AS_TRANS)]));
            assert!(!d.treat_as_withdraw());
            assert_eq!(d.errors.len(), 1);
            assert_eq!(d.errors[0].action, ErrorAction::AttributeDiscard);
        }
    }

    #[test]
    fn mp_reach_ipv4_round_trip() {
        #[rustfmt::skip]
        let body = [
            0, 0, 0, 38,
            0x40, 1, 1, 0,
            0x40, 2, 6, 2, 1, 0, 0, 0xff, 0xfa,
            0x80, 14, 12, 0, 1, 1, 4, 10, 0, 0, 1, 0, 16, 10, 7,
            0x80, 15, 7, 0, 1, 1, 24, 10, 8, 0,
        ];
        let u = update(&msg(&body), &FOUR).unwrap();
        assert!(u.errors.is_empty(), "{:?}", u.errors);
        assert_eq!(
            u.announced().copied().collect::<Vec<_>>(),
            [net("10.7.0.0/16")]
        );
        assert_eq!(
            u.withdrawn_all().copied().collect::<Vec<_>>(),
            [net("10.8.0.0/24")]
        );
        assert_eq!(u.next_hop(), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(Message::Update(u).encode(&FOUR), msg(&body));
    }

    #[test]
    fn withdraw_only_update() {
        let body = [0, 4, 24, 10, 1, 0, 0, 0];
        let u = update(&msg(&body), &FOUR).unwrap();
        assert_eq!(u.withdrawn, [net("10.1.0.0/24")]);
        assert!(u.errors.is_empty());
        assert_eq!(Message::Update(u).encode(&FOUR), msg(&body));
    }

    /// Replaces the attribute bytes of FRR_UPDATE and decodes.
    fn with_attrs(attrs: &[u8]) -> Result<Update, DecodeError> {
        let mut body = vec![0, 0];
        body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        body.extend_from_slice(attrs);
        body.extend_from_slice(&[24, 10, 1, 0]);
        update(&msg(&body), &FOUR)
    }

    const ORIGIN: &[u8] = &[0x40, 1, 1, 0];
    const PATH: &[u8] = &[0x40, 2, 6, 2, 1, 0, 0, 0xff, 0xfa];
    const NH: &[u8] = &[0x40, 3, 4, 10, 99, 0, 1];

    fn assert_tw(u: &Update, type_code: u8, kind: AttrErrorKind) {
        assert!(u.treat_as_withdraw(), "{u:?}");
        assert!(
            u.errors.contains(&AttrError {
                type_code,
                kind: kind.clone(),
                action: ErrorAction::TreatAsWithdraw
            }),
            "{:?} lacks {type_code} {kind:?}",
            u.errors
        );
    }

    #[test]
    fn treat_as_withdraw_cases() {
        // RFC 7606 §7.1: invalid ORIGIN value and length.
        let u = with_attrs(&[&[0x40, 1, 1, 3], PATH, NH].concat()).unwrap();
        assert_tw(&u, 1, AttrErrorKind::InvalidOrigin(3));
        let u = with_attrs(&[&[0x40, 1, 2, 0, 0], PATH, NH].concat()).unwrap();
        assert_tw(&u, 1, AttrErrorKind::Length(2));
        // RFC 7606 §7.2: bad segment type, zero-length segment, overrun.
        for bad in [
            &[0x40, 2, 6, 9, 1, 0, 0, 0xff, 0xfa][..],
            &[0x40, 2, 2, 2, 0],
            &[0x40, 2, 6, 2, 2, 0, 0, 0xff, 0xfa],
        ] {
            let u = with_attrs(&[ORIGIN, bad, NH].concat()).unwrap();
            assert_tw(&u, 2, AttrErrorKind::MalformedAsPath);
        }
        // RFC 7606 §7.3: NEXT_HOP length.
        let u = with_attrs(&[ORIGIN, PATH, &[0x40, 3, 3, 10, 0, 0]].concat()).unwrap();
        assert_tw(&u, 3, AttrErrorKind::Length(3));
        // RFC 7606 §7.4: MED length.
        let u = with_attrs(&[ORIGIN, PATH, NH, &[0x80, 4, 2, 0, 1]].concat()).unwrap();
        assert_tw(&u, 4, AttrErrorKind::Length(2));
        // RFC 7606 §7.8: COMMUNITIES length not a multiple of 4 / zero.
        let u = with_attrs(&[ORIGIN, PATH, NH, &[0xc0, 8, 3, 0, 0, 1]].concat()).unwrap();
        assert_tw(&u, 8, AttrErrorKind::Length(3));
        let u = with_attrs(&[ORIGIN, PATH, NH, &[0xc0, 8, 0]].concat()).unwrap();
        assert_tw(&u, 8, AttrErrorKind::Length(0));
        // RFC 7606 §3 c: flags conflict (ORIGIN marked optional).
        let u = with_attrs(&[&[0xc0, 1, 1, 0], PATH, NH].concat()).unwrap();
        assert_tw(&u, 1, AttrErrorKind::Flags(0xc0));
        // RFC 7606 §3 d: missing well-known attributes.
        let u = with_attrs(&[ORIGIN, PATH].concat()).unwrap();
        assert_tw(&u, 3, AttrErrorKind::MissingWellKnown);
        let u = with_attrs(&[]).unwrap();
        assert_tw(&u, 1, AttrErrorKind::MissingWellKnown);
        assert_tw(&u, 2, AttrErrorKind::MissingWellKnown);
        // RFC 7606 §4: attribute overrunning the attributes field; the NLRI
        // are still found through the total attribute length.
        let u = with_attrs(&[ORIGIN, PATH, NH, &[0x80, 4, 9, 0]].concat()).unwrap();
        assert_tw(&u, 4, AttrErrorKind::Overrun);
        assert_eq!(u.nlri, [net("10.1.0.0/24")]);
        let u = with_attrs(&[ORIGIN, PATH, NH, &[0x80]].concat()).unwrap();
        assert!(u.treat_as_withdraw());
    }

    #[test]
    fn attribute_discard_cases() {
        // RFC 7606 §7.6 / §7.7 / §3 g: dropped, UPDATE otherwise used.
        let u = with_attrs(
            &[
                ORIGIN,
                PATH,
                NH,
                &[0x40, 6, 1, 0],
                &[0xc0, 7, 3, 1, 2, 3],
                &[0x40, 1, 1, 2],
            ]
            .concat(),
        )
        .unwrap();
        assert!(!u.treat_as_withdraw(), "{:?}", u.errors);
        assert_eq!(u.errors.len(), 3);
        assert!(
            u.errors
                .iter()
                .all(|e| e.action == ErrorAction::AttributeDiscard)
        );
        assert!(!u.attrs.atomic_aggregate);
        assert_eq!(u.attrs.aggregator, None);
        // The first ORIGIN wins.
        assert_eq!(u.attrs.origin, Some(Origin::Igp));
        // Optional non-transitive unknown: silently ignored; transitive kept.
        let u = with_attrs(&[ORIGIN, PATH, NH, &[0x80, 200, 1, 7], &[0xc0, 201, 1, 8]].concat())
            .unwrap();
        assert!(u.errors.is_empty());
        assert_eq!(
            u.attrs.unknown,
            [RawAttr {
                flags: 0xc0,
                type_code: 201,
                value: vec![8]
            }]
        );
        assert_eq!(u.attrs.unknown[0].propagated().flags, 0xe0);
        // Extended-length unknown transitive: kept, re-encoded short.
        let u = with_attrs(&[ORIGIN, PATH, NH, &[0xd0, 201, 0, 1, 8]].concat()).unwrap();
        assert_eq!(
            u.attrs.unknown,
            [RawAttr {
                flags: 0xc0,
                type_code: 201,
                value: vec![8]
            }]
        );
        // AS4_PATH with wrong flags: discarded, not treat-as-withdraw.
        let u = with_attrs(&[ORIGIN, PATH, NH, &[0x40, 17, 6, 2, 1, 0, 0, 0, 1]].concat()).unwrap();
        assert_eq!(u.errors[0].kind, AttrErrorKind::Flags(0x40));
        assert!(!u.treat_as_withdraw());
        // AS4_PATH from a 4-octet speaker: discarded (RFC 6793 §4.1).
        let u = with_attrs(&[ORIGIN, PATH, NH, &[0xc0, 17, 6, 2, 1, 0, 0, 0, 1]].concat()).unwrap();
        assert_eq!(u.errors[0].kind, AttrErrorKind::As4FromNewSpeaker);
        assert!(!u.treat_as_withdraw());
    }

    #[test]
    fn session_reset_cases() {
        let code = |r: Result<Update, DecodeError>| {
            let n = r.unwrap_err().notification();
            (n.code, n.subcode)
        };
        // Withdrawn routes length beyond the message.
        assert_eq!(code(update(&msg(&[0, 9, 0, 0]), &FOUR)), (3, 1));
        // Total attribute length beyond the message.
        assert_eq!(code(update(&msg(&[0, 0, 0, 9, 0x40]), &FOUR)), (3, 1));
        // Invalid prefix length in NLRI and in withdrawn routes.
        assert_eq!(
            code(update(&msg(&[0, 0, 0, 0, 33, 1, 2, 3, 4, 5]), &FOUR)),
            (3, 10)
        );
        assert_eq!(code(update(&msg(&[0, 2, 24, 10, 0, 0]), &FOUR)), (3, 10));
        // Unrecognized well-known attribute; data is the attribute.
        let e = with_attrs(&[ORIGIN, PATH, NH, &[0x40, 77, 1, 5]].concat()).unwrap_err();
        assert_eq!(e.notification().subcode, 2);
        assert_eq!(e.notification().data, [0x40, 77, 1, 5]);
        // MP_REACH twice.
        let mp = [0x80, 14, 5, 0, 1, 1, 0, 0];
        assert_eq!(
            code(with_attrs(&[ORIGIN, PATH, NH, &mp[..], &mp[..]].concat())),
            (3, 1)
        );
        // MP_REACH for IPv4 unicast with a bad NLRI.
        assert_eq!(
            code(with_attrs(
                &[
                    ORIGIN,
                    PATH,
                    NH,
                    &[0x80, 14, 10, 0, 1, 1, 4, 1, 1, 1, 1, 0, 40]
                ]
                .concat()
            )),
            (3, 10)
        );
    }

    #[test]
    fn as_path_helpers() {
        let p = AsPath {
            segments: vec![
                AsSegment::Sequence(vec![65530, 65531]),
                AsSegment::Set(vec![1, 2, 3]),
            ],
        };
        assert_eq!(p.path_len(), 3);
        assert_eq!(p.first_as(), Some(65530));
        assert!(p.contains(2));
        assert_eq!(p.prepend(45104).to_string(), "45104 65530 65531 {1 2 3}");
        assert_eq!(AsPath::default().prepend(1), AsPath::sequence(&[1]));
    }

    /// RFC 4271 §5.1 per attribute, for both kinds of peer.
    #[test]
    fn exported_attributes_follow_rfc_4271_5_1() {
        let nh = Ipv4Addr::new(169, 254, 10, 1);
        let learned = PathAttrs {
            origin: Some(Origin::Incomplete),
            as_path: Some(AsPath {
                segments: vec![AsSegment::Set(vec![65001, 65002])],
            }),
            next_hop: Some(Ipv4Addr::new(169, 254, 30, 2)),
            med: Some(7),
            atomic_aggregate: true,
            aggregator: Some(Aggregator {
                asn: 65002,
                addr: Ipv4Addr::new(10, 0, 0, 1),
            }),
            unknown: vec![
                RawAttr {
                    flags: flags::OPTIONAL | flags::TRANSITIVE,
                    type_code: 99,
                    value: vec![1],
                },
                RawAttr {
                    flags: flags::OPTIONAL | flags::TRANSITIVE,
                    type_code: attr_type::AS4_PATH,
                    value: vec![2],
                },
                RawAttr {
                    flags: flags::OPTIONAL,
                    type_code: 98,
                    value: vec![3],
                },
            ],
            ..PathAttrs::default()
        };
        let e = PathAttrs::exported(&learned, 45104, nh, true).unwrap();
        // A leading AS_SET gets a new AS_SEQUENCE in front (§5.1.2 b 3).
        assert_eq!(
            e.as_path.as_ref().unwrap().to_string(),
            "45104 {65001 65002}"
        );
        assert_eq!(e.next_hop, Some(nh));
        assert_eq!((e.med, e.local_pref), (None, None));
        assert_eq!(e.origin, Some(Origin::Incomplete));
        assert!(e.atomic_aggregate);
        assert_eq!(e.aggregator, learned.aggregator);
        // Only the unknown optional transitive one, with the Partial bit.
        assert_eq!(
            e.unknown,
            [RawAttr {
                flags: flags::OPTIONAL | flags::TRANSITIVE | flags::PARTIAL,
                type_code: 99,
                value: vec![1],
            }]
        );
        // Towards an internal peer: path and MED kept, LOCAL_PREF added.
        let i = PathAttrs::exported(&learned, 45104, nh, false).unwrap();
        assert_eq!(i.as_path, learned.as_path);
        assert_eq!((i.med, i.local_pref), (Some(7), Some(100)));
        // The encoded UPDATE decodes back to the same attributes.
        let u = Update {
            attrs: e.clone(),
            nlri: vec![net("10.30.0.0/24")],
            ..Update::default()
        };
        let back = update(&Message::Update(u).encode(&FOUR), &FOUR).unwrap();
        assert_eq!(back.attrs, e);
        // RFC 1997 well-known communities.
        let no_export = PathAttrs {
            communities: vec![community::NO_EXPORT],
            ..learned.clone()
        };
        assert_eq!(PathAttrs::exported(&no_export, 45104, nh, true), None);
        assert!(PathAttrs::exported(&no_export, 45104, nh, false).is_some());
        let no_adv = PathAttrs {
            communities: vec![community::NO_ADVERTISE],
            ..learned
        };
        assert_eq!(PathAttrs::exported(&no_adv, 45104, nh, false), None);
    }
}
