//! Building SA payloads and selecting from the peer's (RFC 7296 §2.7, §3.3). A tunnel
//! has exactly one algorithm of each kind, so selection means "does the peer offer
//! exactly ours somewhere".

use crypto::{DhGroup, Encr, Integ, Prf};

use crate::config::{EspProposal, IkeProposal};
use crate::wire::registry::{ProtocolId, TransformType};
use crate::wire::{Proposal, SaPayload, Transform};

fn encr_transform(e: Encr) -> Transform {
    // strongSwan requires the Key Length attribute for AES (RFC 7296 §3.3.5).
    Transform::new(TransformType::ENCR, e.iana_id(), e.key_bits())
}

/// The SA payload we offer for an IKE SA (`spi`: the new SPI when rekeying, §1.3.2).
pub fn ike_offer(p: &IkeProposal, spi: Option<u64>) -> SaPayload {
    let mut t = vec![
        encr_transform(p.encr),
        Transform::new(TransformType::PRF, p.prf().iana_id(), None),
    ];
    if let Some(i) = p.negotiated_integ() {
        t.push(Transform::new(TransformType::INTEG, i.iana_id(), None));
    }
    t.push(Transform::new(TransformType::DH, p.dh.iana_id(), None));
    SaPayload {
        proposals: vec![Proposal {
            num: 1,
            protocol: ProtocolId::IKE,
            spi: spi.map(|s| s.to_be_bytes().to_vec()).unwrap_or_default(),
            transforms: t,
        }],
    }
}

/// The SA payload for an ESP Child SA; `dh` only in CREATE_CHILD_SA with PFS.
pub fn esp_offer(p: &EspProposal, spi: u32, dh: Option<DhGroup>) -> SaPayload {
    let mut t = vec![encr_transform(p.encr)];
    if let Some(i) = p.negotiated_integ() {
        t.push(Transform::new(TransformType::INTEG, i.iana_id(), None));
    }
    if let Some(g) = dh {
        t.push(Transform::new(TransformType::DH, g.iana_id(), None));
    }
    t.push(Transform::new(TransformType::ESN, 0, None));
    SaPayload {
        proposals: vec![Proposal {
            num: 1,
            protocol: ProtocolId::ESP,
            spi: spi.to_be_bytes().to_vec(),
            transforms: t,
        }],
    }
}

/// What to require of a proposal's transforms.
struct Wanted {
    protocol: ProtocolId,
    encr: Encr,
    prf: Option<Prf>,
    integ: Option<Integ>,
    /// `Some(None)`: no DH allowed; `None`: DH ignored (IKE_AUTH); `Some(Some(g))`: g required.
    dh: Option<Option<DhGroup>>,
    esn: bool,
}

fn offers(p: &Proposal, ty: TransformType) -> impl Iterator<Item = &Transform> {
    p.transforms.iter().filter(move |t| t.ttype == ty)
}

/// A transform type this engine does not know, such as RFC 9370's additional key
/// exchanges (types 6-12) that strongSwan 6 offers for ML-KEM (`ke1_mlkem768`).
fn unknown_type(t: &Transform) -> bool {
    t.ttype.name().is_none()
}

fn matches(p: &Proposal, w: &Wanted) -> bool {
    // RFC 7296 §3.3.6: a proposal with a transform type the responder does not
    // understand is unacceptable (other proposals are processed as usual). Answering it
    // without them would leave out what the peer requires.
    matches_known(p, w) && !p.transforms.iter().any(unknown_type)
}

/// [`matches`] over the transform types this engine knows, ignoring the others.
fn matches_known(p: &Proposal, w: &Wanted) -> bool {
    if p.protocol != w.protocol {
        return false;
    }
    let encr_ok = offers(p, TransformType::ENCR)
        .any(|t| Encr::from_iana(t.id, t.key_length()) == Some(w.encr));
    let prf_ok = match w.prf {
        Some(prf) => offers(p, TransformType::PRF).any(|t| t.id == prf.iana_id()),
        None => true,
    };
    let integ_ok = match w.integ {
        Some(i) => offers(p, TransformType::INTEG).any(|t| t.id == i.iana_id()),
        // AEAD: no integrity transform, or only NONE (RFC 5282 §8).
        None => offers(p, TransformType::INTEG).all(|t| t.id == 0),
    };
    let dh_ok = match w.dh {
        None => true,
        Some(None) => offers(p, TransformType::DH).all(|t| t.id == 0),
        Some(Some(g)) => offers(p, TransformType::DH).any(|t| t.id == g.iana_id()),
    };
    let esn_ok = !w.esn
        || offers(p, TransformType::ESN).next().is_none()
        || offers(p, TransformType::ESN).any(|t| t.id == 0);
    encr_ok && prf_ok && integ_ok && dh_ok && esn_ok
}

fn answer(p: &Proposal, w: &Wanted, spi: Vec<u8>) -> Proposal {
    let mut t = vec![encr_transform(w.encr)];
    if let Some(prf) = w.prf {
        t.push(Transform::new(TransformType::PRF, prf.iana_id(), None));
    }
    if let Some(i) = w.integ {
        t.push(Transform::new(TransformType::INTEG, i.iana_id(), None));
    }
    if let Some(Some(g)) = w.dh {
        t.push(Transform::new(TransformType::DH, g.iana_id(), None));
    }
    if w.esn {
        t.push(Transform::new(TransformType::ESN, 0, None));
    }
    Proposal {
        num: p.num,
        protocol: w.protocol,
        spi,
        transforms: t,
    }
}

fn ike_wanted(ours: &IkeProposal) -> Wanted {
    Wanted {
        protocol: ProtocolId::IKE,
        encr: ours.encr,
        prf: Some(ours.prf()),
        integ: ours.negotiated_integ(),
        dh: Some(Some(ours.dh)),
        esn: false,
    }
}

fn esp_wanted(ours: &EspProposal, dh: Option<Option<DhGroup>>) -> Wanted {
    Wanted {
        protocol: ProtocolId::ESP,
        encr: ours.encr,
        prf: None,
        integ: ours.negotiated_integ(),
        dh,
        esn: true,
    }
}

/// Responder: picks the peer's proposal that contains exactly our IKE algorithms and
/// returns (our answer, the peer's SPI field). `Err` describes the peer's offer.
pub fn select_ike(
    sa: &SaPayload,
    ours: &IkeProposal,
    our_spi: Option<u64>,
) -> Result<(SaPayload, Vec<u8>), String> {
    let w = ike_wanted(ours);
    sa.proposals
        .iter()
        .find(|p| matches(p, &w))
        .map(|p| {
            (
                SaPayload {
                    proposals: vec![answer(
                        p,
                        &w,
                        our_spi
                            .map(|s| s.to_be_bytes().to_vec())
                            .unwrap_or_default(),
                    )],
                },
                p.spi.clone(),
            )
        })
        .ok_or_else(|| describe(sa))
}

/// Responder: picks an ESP proposal. `dh`: see `Wanted::dh`.
pub fn select_esp(
    sa: &SaPayload,
    ours: &EspProposal,
    dh: Option<Option<DhGroup>>,
    our_spi: u32,
) -> Result<(SaPayload, u32), String> {
    let w = esp_wanted(ours, dh);
    sa.proposals
        .iter()
        .find(|p| matches(p, &w) && p.spi.len() == 4)
        .map(|p| {
            let peer_spi = u32::from_be_bytes(p.spi.as_slice().try_into().unwrap_or_default());
            (
                SaPayload {
                    proposals: vec![answer(p, &w, our_spi.to_be_bytes().to_vec())],
                },
                peer_spi,
            )
        })
        .ok_or_else(|| describe(sa))
}

/// Appended to a refused ESP offer's reason when only ESN keeps it out.
pub(crate) const ESN_NOTE: &str = " (the peer offers only extended sequence numbers \
     (ESN), which vpngw does not use: allow 32-bit sequence numbers on the peer, e.g. \
     strongSwan's esp_proposals without esn or with noesn added)";

/// Appended to a refused offer's reason when only transform types this engine does not
/// know keep it out.
pub(crate) const UNKNOWN_TYPES_NOTE: &str = " (the peer's matching proposal also requires \
     transform types vpngw does not support, such as additional key exchanges (RFC 9370, \
     strongSwan's ke1_...): have the peer offer a proposal without them as well)";

/// Some proposal of the peer carries our algorithms but also transform types this engine
/// does not know, and no proposal is acceptable. `ike`: an IKE offer (else ESP, with
/// `dh` as for [`select_esp`]).
pub fn needs_unknown_types(
    sa: &SaPayload,
    ike: Option<&IkeProposal>,
    esp: Option<(&EspProposal, Option<Option<DhGroup>>)>,
) -> bool {
    let w = match (ike, esp) {
        (Some(ours), _) => ike_wanted(ours),
        (None, Some((ours, dh))) => esp_wanted(ours, dh),
        (None, None) => return false,
    };
    !sa.proposals.iter().any(|p| matches(p, &w))
        && sa
            .proposals
            .iter()
            .any(|p| matches_known(p, &w) && p.transforms.iter().any(unknown_type))
}

/// The peer's ESP offer would be acceptable but for extended sequence numbers: each
/// proposal that carries our algorithms offers only ESN (RFC 7296 §3.3.2, transform
/// type 5), which vpngw does not use (it rekeys before the 32-bit counter runs out,
/// RFC 4303 §3.3.3).
pub fn esp_needs_esn(sa: &SaPayload, ours: &EspProposal, dh: Option<Option<DhGroup>>) -> bool {
    let w = Wanted {
        esn: false,
        ..esp_wanted(ours, dh)
    };
    sa.proposals.iter().any(|p| matches(p, &w))
}

/// Initiator: the responder must answer with one proposal made of exactly what we
/// offered. Returns the responder's SPI field.
pub fn check_ike_answer(sa: &SaPayload, ours: &IkeProposal) -> Option<Vec<u8>> {
    check_answer(sa, &ike_wanted(ours))
}

pub fn check_esp_answer(sa: &SaPayload, ours: &EspProposal, dh: Option<DhGroup>) -> Option<u32> {
    let spi = check_answer(sa, &esp_wanted(ours, Some(dh)))?;
    Some(u32::from_be_bytes(spi.as_slice().try_into().ok()?))
}

fn check_answer(sa: &SaPayload, w: &Wanted) -> Option<Vec<u8>> {
    let [p] = sa.proposals.as_slice() else {
        return None;
    };
    let one_each = [
        TransformType::ENCR,
        TransformType::PRF,
        TransformType::INTEG,
        TransformType::DH,
        TransformType::ESN,
    ]
    .iter()
    .all(|ty| offers(p, *ty).count() <= 1);
    (one_each && matches(p, w)).then(|| p.spi.clone())
}

/// "aes256-sha256-modp2048" for the first proposal (and "…, …" for more), as operators
/// read it in strongSwan logs.
pub fn describe(sa: &SaPayload) -> String {
    let parts: Vec<String> = sa
        .proposals
        .iter()
        .map(|p| {
            let mut names = Vec::new();
            for t in &p.transforms {
                let n = match t.ttype {
                    TransformType::ENCR => Encr::from_iana(t.id, t.key_length())
                        .map(|e| e.name().to_string())
                        .unwrap_or_else(|| format!("encr{}", t.id)),
                    TransformType::INTEG => match Integ::from_iana(t.id) {
                        Some(i) => crate::config::short_integ(i).to_string(),
                        None if t.id == 0 => continue,
                        None => format!("integ{}", t.id),
                    },
                    TransformType::PRF => {
                        if offers(p, TransformType::INTEG).any(|i| i.id != 0) {
                            continue;
                        }
                        Prf::from_iana(t.id)
                            .map(|p| p.name().to_string())
                            .unwrap_or_else(|| format!("prf{}", t.id))
                    }
                    TransformType::DH => match DhGroup::from_iana(t.id) {
                        Some(g) => g.name().to_string(),
                        None if t.id == 0 => continue,
                        None => format!("dh{}", t.id),
                    },
                    // RFC 9370 additional key exchanges, as strongSwan 6 names them.
                    ty if (6..=12).contains(&ty.0) => {
                        let n = ty.0 - 5;
                        match t.id {
                            0 => format!("ke{n}_none"),
                            35 => format!("ke{n}_mlkem512"),
                            36 => format!("ke{n}_mlkem768"),
                            37 => format!("ke{n}_mlkem1024"),
                            id => match DhGroup::from_iana(id) {
                                Some(g) => format!("ke{n}_{}", g.name()),
                                None => format!("ke{n}_{id}"),
                            },
                        }
                    }
                    ty if ty.name().is_none() => format!("type{}_{}", ty.0, t.id),
                    // strongSwan's names: "esn" when only extended sequence numbers
                    // are offered, nothing for "noesn" (the default).
                    TransformType::ESN
                        if t.id == 1 && offers(p, TransformType::ESN).all(|e| e.id != 0) =>
                    {
                        if names.last().is_some_and(|n| n == "esn") {
                            continue;
                        }
                        "esn".to_string()
                    }
                    _ => continue,
                };
                names.push(n);
            }
            names.join("-")
        })
        .collect();
    if parts.is_empty() {
        "nothing".to_string()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Codec;

    fn ike() -> IkeProposal {
        IkeProposal {
            encr: Encr::AesCbc128,
            integ: Integ::HmacSha1_96,
            dh: DhGroup::Modp1024,
        }
    }

    /// A peer that offers only extended sequence numbers (strongSwan's "-esn"): its
    /// offer is refused, named as strongSwan names it, and ESN is found to be the one
    /// difference; an offer with both is answered with "no ESN".
    #[test]
    fn esn_only_offers_are_refused_and_named() {
        let ours = EspProposal {
            encr: Encr::AesCbc128,
            integ: Integ::HmacSha1_96,
            pfs: None,
        };
        let mut offer = esp_offer(&ours, 7, None);
        for t in &mut offer.proposals[0].transforms {
            if t.ttype == TransformType::ESN {
                t.id = 1;
            }
        }
        assert_eq!(describe(&offer), "aes128-sha1-esn");
        assert_eq!(
            select_esp(&offer, &ours, None, 9),
            Err("aes128-sha1-esn".into())
        );
        assert!(esp_needs_esn(&offer, &ours, None));
        let other = EspProposal {
            encr: Encr::AesCbc256,
            ..ours
        };
        assert!(!esp_needs_esn(&offer, &other, None));
        offer.proposals[0]
            .transforms
            .push(Transform::new(TransformType::ESN, 0, None));
        assert_eq!(describe(&offer), "aes128-sha1");
        let (answer, _) = select_esp(&offer, &ours, None, 9).unwrap();
        let esn: Vec<u16> = offers(&answer.proposals[0], TransformType::ESN)
            .map(|t| t.id)
            .collect();
        assert_eq!(esn, [0]);
    }

    #[test]
    fn offer_encodes_key_length() {
        let b = ike_offer(&ike(), None).encoded();
        // ENCR 12 with Key Length 128 as a TV attribute.
        assert_eq!(&b[8..20], &[3, 0, 0, 12, 1, 0, 0, 12, 0x80, 14, 0, 128]);
    }

    #[test]
    fn select_exactly_ours() {
        let mut peer = ike_offer(
            &IkeProposal {
                encr: Encr::AesCbc256,
                integ: Integ::HmacSha256_128,
                dh: DhGroup::Modp2048,
            },
            None,
        );
        let err = select_ike(&peer, &ike(), None).unwrap_err();
        assert_eq!(err, format!("aes256-sha256-{}", DhGroup::Modp2048.name()));
        // A second proposal with ours is picked, keeping its number.
        let mut p2 = ike_offer(&ike(), None).proposals.remove(0);
        p2.num = 2;
        peer.proposals.push(p2);
        let (ans, _) = select_ike(&peer, &ike(), None).unwrap();
        assert_eq!(ans.proposals[0].num, 2);
        assert_eq!(check_ike_answer(&ans, &ike()), Some(vec![]));
        assert_eq!(check_ike_answer(&peer, &ike()), None);
    }

    #[test]
    fn esp_pfs_must_match() {
        let ours = EspProposal {
            encr: Encr::AesGcm16_128,
            integ: Integ::HmacSha1_96,
            pfs: Some(DhGroup::Modp2048),
        };
        let with = esp_offer(&ours, 7, Some(DhGroup::Modp2048));
        let without = esp_offer(&ours, 7, None);
        assert!(select_esp(&with, &ours, Some(Some(DhGroup::Modp2048)), 9).is_ok());
        assert!(select_esp(&without, &ours, Some(Some(DhGroup::Modp2048)), 9).is_err());
        assert!(select_esp(&with, &ours, Some(None), 9).is_err());
        // IKE_AUTH ignores DH.
        let (ans, spi) = select_esp(&with, &ours, None, 9).unwrap();
        assert_eq!(spi, 7);
        assert_eq!(check_esp_answer(&ans, &ours, None), Some(9));
    }
}
