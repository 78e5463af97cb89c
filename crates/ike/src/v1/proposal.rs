//! IKEv1 proposals: what we offer, how a responder chooses among the peer's offers
//! (RFC 2408 §4.2, RFC 2409 §5 and Appendix A, RFC 2407 §4.5), and how both are
//! named for operators (`aes128-sha1-modp1024`, strongSwan style).

use std::time::Duration;

use crypto::{DhGroup, Encr, Integ};

use crate::config::{EspProposal, IkeProposal, PeerConfig, suite_name};
use crate::proposal::ESN_NOTE;
use crate::v1::keys::{
    encr_from_p1, esp_auth_id, integ_from_esp_auth, integ_from_p1_hash, p1_encr, p1_hash_id,
};
use crate::v1::wire::{Attr, KEY_IKE, LIFE_SECONDS, Proposal, SaPayload, Transform, p1, p2, proto};

/// Our phase 1 offer: one proposal with one transform (RFC 2409 Appendix A).
/// `None` when the configured cipher cannot protect IKEv1 messages (AEAD).
pub fn p1_offer(ike: &IkeProposal, lifetime: Duration) -> Option<SaPayload> {
    let (enc, key_bits) = p1_encr(ike.encr)?;
    let mut attrs = vec![Attr::basic(p1::ENCRYPTION, enc)];
    if let Some(k) = key_bits {
        attrs.push(Attr::basic(p1::KEY_LENGTH, k));
    }
    attrs.push(Attr::basic(p1::HASH, p1_hash_id(ike.integ)));
    attrs.push(Attr::basic(p1::AUTH_METHOD, p1::AUTH_PSK));
    attrs.push(Attr::basic(p1::GROUP, ike.dh.iana_id()));
    if !lifetime.is_zero() {
        attrs.push(Attr::basic(p1::LIFE_TYPE, LIFE_SECONDS));
        attrs.push(Attr::number(
            p1::LIFE_DURATION,
            u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX),
        ));
    }
    Some(SaPayload::new(vec![Proposal {
        num: 1,
        protocol: proto::ISAKMP,
        spi: Vec::new(),
        transforms: vec![Transform {
            num: 1,
            id: KEY_IKE,
            attrs,
        }],
    }]))
}

/// The algorithms one phase 1 transform names, if we implement them all.
pub fn p1_suite(t: &Transform) -> Option<(Encr, Integ, DhGroup)> {
    let num = |a: u16| t.attr(a).and_then(Attr::as_u32);
    let key_bits = num(p1::KEY_LENGTH).and_then(|k| u16::try_from(k).ok());
    let encr = encr_from_p1(u16::try_from(num(p1::ENCRYPTION)?).ok()?, key_bits)?;
    let integ = integ_from_p1_hash(u16::try_from(num(p1::HASH)?).ok()?)?;
    let dh = DhGroup::from_iana(u16::try_from(num(p1::GROUP)?).ok()?)?;
    Some((encr, integ, dh))
}

/// Seconds of a transform's life duration, when its life type is seconds.
fn life_secs(t: &Transform, life_type: u16, life_duration: u16) -> Option<u32> {
    // RFC 2407 §4.5: a Life Duration follows the Life Type it qualifies.
    let mut ty = None;
    let mut secs = None;
    for a in &t.attrs {
        if a.typ == life_type {
            ty = a.as_u32();
        } else if a.typ == life_duration && ty == Some(u32::from(LIFE_SECONDS)) {
            secs = a.as_u32();
        }
    }
    secs
}

/// What a phase 1 responder chose.
#[derive(Debug, Clone)]
pub struct P1Choice {
    /// The SA payload to answer with: the peer's proposal cut to the chosen transform.
    pub answer: SaPayload,
    pub lifetime: Option<Duration>,
}

/// Chooses the peer's first transform that equals our configuration and uses
/// pre-shared keys (RFC 2409 §5: the responder answers with one transform).
pub fn p1_choose(offer: &SaPayload, ike: &IkeProposal) -> Result<P1Choice, String> {
    let want = (ike.encr, ike.integ, ike.dh);
    for p in offer
        .proposals
        .iter()
        .filter(|p| p.protocol == proto::ISAKMP)
    {
        for t in p.transforms.iter().filter(|t| t.id == KEY_IKE) {
            let psk = t.attr(p1::AUTH_METHOD).and_then(Attr::as_u32) == Some(1);
            if psk && p1_suite(t) == Some(want) {
                let mut chosen = p.clone();
                chosen.transforms = vec![t.clone()];
                return Ok(P1Choice {
                    answer: SaPayload::new(vec![chosen]),
                    lifetime: life_secs(t, p1::LIFE_TYPE, p1::LIFE_DURATION)
                        .map(|s| Duration::from_secs(u64::from(s))),
                });
            }
        }
    }
    let other_auth = offer
        .proposals
        .iter()
        .filter(|p| p.protocol == proto::ISAKMP)
        .flat_map(|p| &p.transforms)
        .any(|t| t.id == KEY_IKE && p1_suite(t) == Some(want));
    Err(format!(
        "no proposal chosen: peer proposed {}; this tunnel allows {} with a pre-shared key{}",
        p1_describe(offer),
        ike.name(),
        if other_auth {
            " (the algorithms match, the authentication method does not: vpngw \
             authenticates IKEv1 peers with the pre-shared key alone, so set the peer to \
             a pre-shared key without XAUTH or certificates; strongSwan: one local and \
             one remote round with auth = psk)"
        } else {
            ""
        }
    ))
}

/// Checks a responder's phase 1 answer against what we offered.
pub fn p1_check_answer(answer: &SaPayload, cfg: &PeerConfig) -> Result<Option<Duration>, String> {
    let [p] = answer.proposals.as_slice() else {
        return Err("peer answered with more than one proposal".into());
    };
    let [t] = p.transforms.as_slice() else {
        return Err("peer answered with more than one transform".into());
    };
    if p1_suite(t) != Some((cfg.ike.encr, cfg.ike.integ, cfg.ike.dh)) {
        return Err(format!(
            "peer chose {} which we did not offer (we offered {})",
            p1_describe(answer),
            cfg.ike.name()
        ));
    }
    Ok(life_secs(t, p1::LIFE_TYPE, p1::LIFE_DURATION).map(|s| Duration::from_secs(u64::from(s))))
}

/// `aes128-sha1-modp1024, 3des-md5-modp1536` for every transform offered.
pub fn p1_describe(sa: &SaPayload) -> String {
    let names: Vec<String> = sa
        .proposals
        .iter()
        .flat_map(|p| p.transforms.iter())
        .map(|t| match p1_suite(t) {
            Some((e, i, g)) => {
                let suite = suite_name(e, Some(i), None, Some(g));
                match t.attr(p1::AUTH_METHOD).and_then(Attr::as_u32) {
                    Some(m) if m == u32::from(p1::AUTH_PSK) => suite,
                    Some(m) => format!("{suite} with {}", auth_method_name(m)),
                    None => format!("{suite} without an authentication method"),
                }
            }
            None => format!("unsupported transform {}", describe_attrs(t)),
        })
        .collect();
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// An IKEv1 authentication method (RFC 2409 Appendix A; RFC 4754 §3 for ECDSA; the
/// XAUTH and hybrid values of draft-ietf-ipsec-isakmp-xauth and -hybrid-auth, which
/// remote-access clients and some firewalls send).
fn auth_method_name(m: u32) -> String {
    match m {
        1 => "a pre-shared key".into(),
        2 => "DSS signatures".into(),
        3 => "RSA signatures".into(),
        4 | 5 => "RSA encryption".into(),
        9..=11 => "ECDSA signatures".into(),
        64221..=64222 => "hybrid authentication".into(),
        65001 | 65002 => "XAUTH and a pre-shared key".into(),
        65003..=65010 => "XAUTH and signatures or encryption".into(),
        m => format!("authentication method {m}"),
    }
}

fn describe_attrs(t: &Transform) -> String {
    let parts: Vec<String> = t
        .attrs
        .iter()
        .map(|a| match a.as_u32() {
            Some(v) => format!("{}={v}", a.typ),
            None => format!("{}=?", a.typ),
        })
        .collect();
    format!("(id {} {})", t.id, parts.join(" "))
}

// ---- quick mode ----------------------------------------------------------------------

/// Our quick mode offer: one ESP proposal with one transform carrying our inbound SPI.
pub fn esp_offer(esp: &EspProposal, spi_in: u32, lifetime: Duration, udp_encap: bool) -> SaPayload {
    SaPayload::new(vec![Proposal {
        num: 1,
        protocol: proto::ESP,
        spi: spi_in.to_be_bytes().to_vec(),
        transforms: vec![esp_transform(esp, lifetime, udp_encap)],
    }])
}

fn esp_transform(esp: &EspProposal, lifetime: Duration, udp_encap: bool) -> Transform {
    let mut attrs = Vec::new();
    if !lifetime.is_zero() {
        attrs.push(Attr::basic(p2::LIFE_TYPE, LIFE_SECONDS));
        attrs.push(Attr::number(
            p2::LIFE_DURATION,
            u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX),
        ));
    }
    if let Some(g) = esp.pfs {
        attrs.push(Attr::basic(p2::GROUP, g.iana_id()));
    }
    // RFC 3947 §5.1: UDP-Encapsulated-Tunnel once a NAT was detected.
    attrs.push(Attr::basic(
        p2::ENCAP_MODE,
        if udp_encap {
            p2::ENCAP_UDP_TUNNEL
        } else {
            p2::ENCAP_TUNNEL
        },
    ));
    if let Some(i) = esp.negotiated_integ() {
        attrs.push(Attr::basic(p2::AUTH_ALG, esp_auth_id(i)));
    }
    if let Some(k) = esp.encr.key_bits() {
        attrs.push(Attr::basic(p2::KEY_LENGTH, k));
    }
    Transform {
        num: 1,
        id: u8::try_from(esp.encr.iana_id()).unwrap_or(0),
        attrs,
    }
}

/// The ESP algorithms of one transform: cipher, integrity (none with AEAD), PFS group.
pub fn esp_suite(t: &Transform) -> Option<(Encr, Option<Integ>, Option<DhGroup>)> {
    let num = |a: u16| t.attr(a).and_then(Attr::as_u32);
    let key_bits = num(p2::KEY_LENGTH).and_then(|k| u16::try_from(k).ok());
    let encr = Encr::from_iana(u16::from(t.id), key_bits)?;
    let integ = match num(p2::AUTH_ALG) {
        Some(v) => Some(integ_from_esp_auth(u16::try_from(v).ok()?)?),
        None => None,
    };
    // CBC ciphers need an authentication algorithm; AEAD ones must not have one.
    if encr.is_aead() == integ.is_some() {
        return None;
    }
    let pfs = match num(p2::GROUP) {
        Some(g) => Some(DhGroup::from_iana(u16::try_from(g).ok()?)?),
        None => None,
    };
    Some((encr, integ, pfs))
}

/// The transform asks for extended sequence numbers (RFC 4304), which vpngw does not
/// use: with them the ICV covers the counter's high half (RFC 4303 §2.2.1), so a
/// transform taken without noticing would fail every packet's integrity check.
fn esn(t: &Transform) -> bool {
    t.attr(p2::EXT_SEQ_NUMBER).and_then(Attr::as_u32) == Some(1)
}

fn encap_ok(t: &Transform) -> bool {
    matches!(
        t.attr(p2::ENCAP_MODE).and_then(Attr::as_u32),
        Some(1 | 3 | 61443)
    )
}

/// What a quick mode responder chose.
#[derive(Debug, Clone)]
pub struct EspChoice {
    /// The peer's proposal cut to the chosen transform; the caller puts our SPI in.
    pub answer: Proposal,
    pub spi_out: u32,
    pub lifetime: Option<Duration>,
}

/// Chooses the peer's first ESP transform equal to our configuration, tunnel mode
/// (plain or UDP-encapsulated), with the PFS group we require.
pub fn esp_choose(offer: &SaPayload, esp: &EspProposal) -> Result<EspChoice, String> {
    let want = (esp.encr, esp.negotiated_integ(), esp.pfs);
    for p in offer.proposals.iter().filter(|p| p.protocol == proto::ESP) {
        let Ok(spi) = <[u8; 4]>::try_from(p.spi.as_slice()) else {
            continue;
        };
        for t in &p.transforms {
            if esp_suite(t) == Some(want) && encap_ok(t) && !esn(t) {
                let mut chosen = p.clone();
                chosen.transforms = vec![t.clone()];
                return Ok(EspChoice {
                    answer: chosen,
                    spi_out: u32::from_be_bytes(spi),
                    lifetime: life_secs(t, p2::LIFE_TYPE, p2::LIFE_DURATION)
                        .map(|s| Duration::from_secs(u64::from(s))),
                });
            }
        }
    }
    let only_esn = offer
        .proposals
        .iter()
        .filter(|p| p.protocol == proto::ESP)
        .flat_map(|p| &p.transforms)
        .any(|t| esp_suite(t) == Some(want) && encap_ok(t));
    Err(format!(
        "no proposal chosen: peer proposed ESP {}; this tunnel allows {} (PFS {}){}",
        esp_describe(offer),
        esp.name(),
        esp.pfs.map_or("disabled", |g| g.name()),
        if only_esn { ESN_NOTE } else { "" }
    ))
}

/// Checks a quick mode responder's answer; returns the peer's SPI and lifetime.
pub fn esp_check_answer(
    answer: &SaPayload,
    esp: &EspProposal,
) -> Result<(u32, Option<Duration>), String> {
    let [p] = answer.proposals.as_slice() else {
        return Err("peer answered quick mode with more than one proposal".into());
    };
    let [t] = p.transforms.as_slice() else {
        return Err("peer answered quick mode with more than one transform".into());
    };
    let Ok(spi) = <[u8; 4]>::try_from(p.spi.as_slice()) else {
        return Err("peer's ESP SPI is not 4 bytes".into());
    };
    if p.protocol != proto::ESP
        || esp_suite(t) != Some((esp.encr, esp.negotiated_integ(), esp.pfs))
        || esn(t)
    {
        return Err(format!(
            "peer chose ESP {} which we did not offer (we offered {})",
            esp_describe(answer),
            esp.name()
        ));
    }
    Ok((
        u32::from_be_bytes(spi),
        life_secs(t, p2::LIFE_TYPE, p2::LIFE_DURATION).map(|s| Duration::from_secs(u64::from(s))),
    ))
}

pub fn esp_describe(sa: &SaPayload) -> String {
    let names: Vec<String> = sa
        .proposals
        .iter()
        .filter(|p| p.protocol == proto::ESP)
        .flat_map(|p| p.transforms.iter())
        .map(|t| match esp_suite(t) {
            Some((e, i, g)) if esn(t) => format!("{}-esn", suite_name(e, i, None, g)),
            Some((e, i, g)) => suite_name(e, i, None, g),
            None => format!("unsupported transform {}", describe_attrs(t)),
        })
        .collect();
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::wire::AttrValue;

    fn ike(encr: Encr, integ: Integ, dh: DhGroup) -> IkeProposal {
        IkeProposal { encr, integ, dh }
    }

    #[test]
    fn p1_offer_layout() {
        let sa = p1_offer(
            &ike(Encr::AesCbc256, Integ::HmacSha256_128, DhGroup::Modp2048),
            Duration::from_secs(86400),
        )
        .unwrap();
        let t = &sa.proposals[0].transforms[0];
        let kv: Vec<(u16, Option<u32>)> = t.attrs.iter().map(|a| (a.typ, a.as_u32())).collect();
        assert_eq!(
            kv,
            vec![
                (1, Some(7)),
                (14, Some(256)),
                (2, Some(4)),
                (3, Some(1)),
                (4, Some(14)),
                (11, Some(1)),
                (12, Some(86400)),
            ]
        );
        assert!(matches!(t.attrs[6].value, AttrValue::Var(_)));
        assert_eq!(
            p1_suite(t),
            Some((Encr::AesCbc256, Integ::HmacSha256_128, DhGroup::Modp2048))
        );
        assert!(
            p1_offer(
                &ike(Encr::AesGcm16_128, Integ::HmacSha1_96, DhGroup::Modp1024),
                Duration::ZERO
            )
            .is_none()
        );
    }

    #[test]
    fn esp_offer_and_choice() {
        let esp = EspProposal {
            encr: Encr::AesGcm16_256,
            integ: Integ::HmacSha1_96,
            pfs: Some(DhGroup::Modp1536),
        };
        let sa = esp_offer(&esp, 0x1000, Duration::from_secs(3600), true);
        let t = &sa.proposals[0].transforms[0];
        assert_eq!(t.id, 20);
        assert!(t.attr(p2::AUTH_ALG).is_none());
        assert_eq!(t.attr(p2::ENCAP_MODE).unwrap().as_u32(), Some(3));
        let c = esp_choose(&sa, &esp).unwrap();
        assert_eq!(c.spi_out, 0x1000);
        assert_eq!(c.lifetime, Some(Duration::from_secs(3600)));
        let no_pfs = EspProposal { pfs: None, ..esp };
        let err = esp_choose(&sa, &no_pfs).unwrap_err();
        assert!(err.contains("aes256gcm16-modp1536"), "{err}");
        assert!(err.contains("PFS disabled"), "{err}");
    }

    /// A Main Mode offer with our algorithms but XAUTH (a remote-access client's) or
    /// signatures: refused, with the method named and the one difference said.
    #[test]
    fn other_authentication_methods_are_named() {
        let ours = ike(Encr::AesCbc128, Integ::HmacSha1_96, DhGroup::Modp1024);
        let mut offer = p1_offer(&ours, Duration::from_secs(3600)).unwrap();
        for a in &mut offer.proposals[0].transforms[0].attrs {
            if a.typ == p1::AUTH_METHOD {
                *a = Attr::basic(p1::AUTH_METHOD, 65001);
            }
        }
        let err = p1_choose(&offer, &ours).unwrap_err();
        assert!(
            err.contains("peer proposed aes128-sha1-modp1024 with XAUTH and a pre-shared key;"),
            "{err}"
        );
        assert!(err.contains("the authentication method does not"), "{err}");
        let other = ike(Encr::AesCbc256, Integ::HmacSha1_96, DhGroup::Modp1024);
        let err = p1_choose(&offer, &other).unwrap_err();
        assert!(!err.contains("authentication method does not"), "{err}");
        for a in &mut offer.proposals[0].transforms[0].attrs {
            if a.typ == p1::AUTH_METHOD {
                *a = Attr::basic(p1::AUTH_METHOD, 3);
            }
        }
        assert_eq!(
            p1_describe(&offer),
            "aes128-sha1-modp1024 with RSA signatures"
        );
    }

    /// RFC 4304: a transform that asks for extended sequence numbers is never chosen
    /// (nor accepted as an answer); one without them beside it is.
    #[test]
    fn extended_sequence_numbers_are_refused_and_named() {
        let esp = EspProposal {
            encr: Encr::AesCbc128,
            integ: Integ::HmacSha1_96,
            pfs: None,
        };
        let plain = esp_offer(&esp, 0x2000, Duration::from_secs(3600), false);
        let mut only_esn = plain.clone();
        only_esn.proposals[0].transforms[0]
            .attrs
            .push(Attr::basic(p2::EXT_SEQ_NUMBER, 1));
        let err = esp_choose(&only_esn, &esp).unwrap_err();
        assert!(err.contains("peer proposed ESP aes128-sha1-esn;"), "{err}");
        assert!(err.contains("extended sequence numbers (ESN)"), "{err}");
        assert!(esp_check_answer(&only_esn, &esp).is_err());

        let mut both = only_esn.clone();
        let mut no_esn = plain.proposals[0].transforms[0].clone();
        no_esn.num = 2;
        both.proposals[0].transforms.push(no_esn);
        let c = esp_choose(&both, &esp).unwrap();
        assert!(c.answer.transforms[0].attr(p2::EXT_SEQ_NUMBER).is_none());

        let other = EspProposal {
            encr: Encr::AesCbc256,
            ..esp
        };
        let err = esp_choose(&plain, &other).unwrap_err();
        assert!(
            !err.contains("ESN"),
            "only when ESN is the difference: {err}"
        );
    }
}
