//! IKEv1 whole-exchange tests: two endpoints back to back on a virtual clock
//! (Main/Aggressive Mode, Quick Mode, informational, DPD, NAT-T, rekeying).

mod util;

use std::net::Ipv4Addr;
use std::time::Duration;

use crypto::{DhGroup, Encr, Integ};
use ike::v1::wire::{Chain, Exchange, HEADER_LEN, Header, PayloadType};
use ike::{DeleteReason, EspProposal, Event, Identity, IkeVersion, PeerConfig, Phase, Psk, V1Mode};
use util::*;

fn v1(mode: V1Mode) -> PeerConfig {
    config_v1(mode)
}

fn established(events: &[Event]) -> usize {
    Pair::count(events, |e| matches!(e, Event::IkeSaEstablished { .. }))
}

fn children_up(events: &[Event]) -> usize {
    Pair::count(events, |e| matches!(e, Event::ChildSaEstablished { .. }))
}

fn rekeyed(events: &[Event]) -> usize {
    Pair::count(events, |e| matches!(e, Event::ChildSaRekeyed { .. }))
}

fn child_deleted(events: &[Event]) -> usize {
    Pair::count(events, |e| matches!(e, Event::ChildSaDeleted { .. }))
}

/// The exchange and payload summary of every datagram on the wire (cleartext only).
fn wire_summary(p: &Pair) -> Vec<String> {
    p.wire
        .iter()
        .map(|w| {
            let h = Header::parse(&w.payload).expect("ISAKMP header");
            if h.encrypted() {
                format!("{} *", h.exchange.name())
            } else {
                let c = Chain::decode(h.next, &w.payload[HEADER_LEN..], false).expect("chain");
                format!("{} {}", h.exchange.name(), c.summary())
            }
        })
        .collect()
}

fn assert_up(p: &Pair, what: &str) {
    assert!(
        Pair::failures(&p.a_events).is_empty(),
        "{what}: A failures {:?}",
        Pair::failures(&p.a_events)
    );
    assert!(
        Pair::failures(&p.b_events).is_empty(),
        "{what}: B failures {:?}",
        Pair::failures(&p.b_events)
    );
    assert_eq!(established(&p.a_events), 1, "{what}: {:?}", p.a_events);
    assert_eq!(established(&p.b_events), 1, "{what}: {:?}", p.b_events);
    assert_eq!(children_up(&p.a_events), 1, "{what}: {:?}", p.a_events);
    assert_eq!(children_up(&p.b_events), 1, "{what}: {:?}", p.b_events);
    p.assert_ike_match();
    p.assert_children_match();
}

#[test]
fn main_mode_establishes_with_matching_keys() {
    let a = v1(V1Mode::Main);
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    assert_up(&p, "main mode");
    // Six Main Mode messages and three Quick Mode messages, nothing retransmitted.
    let s = wire_summary(&p);
    assert_eq!(
        s,
        vec![
            "Main Mode [ SA V V ]",
            "Main Mode [ SA V V ]",
            "Main Mode [ KE No NAT-D NAT-D ]",
            "Main Mode [ KE No NAT-D NAT-D ]",
            "Main Mode *",
            "Main Mode *",
            "Quick Mode *",
            "Quick Mode *",
            "Quick Mode *",
        ]
    );
    assert_eq!(p.a.stats().retransmits + p.b.stats().retransmits, 0);
    let c = &p.a.child_sas(PEER_A)[0];
    assert!(!c.udp_encap);
    assert_eq!(c.local, sock(A_IP, 500));
    assert_eq!(c.local_ts[0].to_string(), "10.1.0.0/16");
    assert_eq!(c.remote_ts[0].to_string(), "10.2.0.0/16");
    // The IKE SA's "SPIs" are the ISAKMP cookies, CKY-R set by the responder.
    let (i, r) = p.a.ike_sas(PEER_A)[0];
    let h = Header::parse(&p.wire[1].payload).unwrap();
    assert_eq!((h.cky_i, h.cky_r), (i, r));
    assert!(p.a_events.iter().any(|e| matches!(
        e,
        Event::IkeSaEstablished {
            initiator: true,
            ..
        }
    )));
}

#[test]
fn both_modes_both_roles_ipv4_and_fqdn_ids() {
    for mode in [V1Mode::Main, V1Mode::Aggressive] {
        for fqdn in [false, true] {
            for b_initiates in [false, true] {
                let mut a = v1(mode);
                if fqdn {
                    a.local_id = Identity::Fqdn("a.vpn.example".into());
                    a.remote_id = Identity::Fqdn("B.VPN.example".into());
                }
                let mut b = mirror(&a);
                if fqdn {
                    b.local_id = Identity::Fqdn("b.vpn.example".into());
                }
                let mut p = Pair::new(a, b);
                if b_initiates {
                    p.initiate_b();
                } else {
                    p.initiate_a();
                }
                let what = format!("{mode:?} fqdn={fqdn} b_initiates={b_initiates}");
                assert_up(&p, &what);
                if mode == V1Mode::Aggressive {
                    let s = wire_summary(&p);
                    assert_eq!(s[0], "Aggressive Mode [ SA KE No ID V V ]", "{what}");
                    assert_eq!(
                        s[1], "Aggressive Mode [ SA KE No ID V V NAT-D NAT-D HASH ]",
                        "{what}"
                    );
                    // strongSwan encrypts message 3, and so do we.
                    assert_eq!(s[2], "Aggressive Mode *", "{what}");
                }
            }
        }
    }
}

#[test]
fn aggressive_mode_responder_finds_dynamic_peer_by_fqdn() {
    let mut a = v1(V1Mode::Aggressive);
    a.local_id = Identity::Fqdn("branch.example".into());
    a.remote_id = Identity::Fqdn("hq.example".into());
    let mut b = mirror(&a);
    b.remote = None; // any address: the peer is known by its ID only
    let mut p = Pair::new(a.clone(), b);
    // A second "any" peer with another ID and key must not be chosen.
    let mut other = mirror(&a);
    other.remote = None;
    other.remote_id = Identity::Fqdn("other.example".into());
    other.psk = Psk::new("a different key");
    p.b.add_peer(ike::PeerId(99), other).unwrap();
    p.initiate_a();
    assert_up(&p, "aggressive fqdn dynamic");
    assert!(p.b.child_sas(ike::PeerId(99)).is_empty());
}

#[test]
fn aggressive_mode_responder_looks_the_id_up_among_its_tunnels() {
    let mut a = v1(V1Mode::Aggressive);
    a.local_id = Identity::Fqdn("Branch.Example".into());
    let b = mirror(&a);
    let mut any = b.clone();
    any.remote = None;
    any.psk = Psk::new("the any tunnel's key");
    // The same ID on a tunnel for the peer's own address and on one for any address:
    // the fixed address wins, whatever the ids.
    let mut p = Pair::new(a.clone(), b.clone());
    p.b.add_peer(ike::PeerId(0), any.clone()).unwrap();
    p.initiate_a();
    assert_up(&p, "fixed address before any");
    assert!(p.b.ike_sas(ike::PeerId(0)).is_empty());
    // The ID on a tunnel for another address, or on our other address: not this peer's.
    let mut elsewhere = b.clone();
    elsewhere.remote = Some(sock(Ipv4Addr::new(203, 0, 113, 9), 500));
    let mut other_local = any.clone();
    other_local.local = sock(Ipv4Addr::new(192, 0, 2, 77), 500);
    let mut p = Pair::new(a.clone(), any.clone());
    p.b.add_peer(ike::PeerId(0), elsewhere).unwrap();
    p.b.add_peer(ike::PeerId(1), other_local).unwrap();
    p.a.remove_peer(p.now, PEER_A).unwrap();
    let mut a2 = a.clone();
    a2.psk = any.psk.clone();
    p.a.add_peer(PEER_A, a2).unwrap();
    p.initiate_a();
    assert_eq!(p.b.ike_sas(PEER_B).len(), 1, "{:?}", p.b_events);
    // The ID names a Main Mode tunnel: the mode mismatch is reported there.
    let mut main = b.clone();
    main.v1_mode = V1Mode::Main;
    let mut p = Pair::new(a.clone(), main);
    p.initiate_a();
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert!(fb[0].1.contains("configured for Main Mode"), "{}", fb[0].1);
    // The ID names no tunnel: the first tunnel for the address says which it expects.
    let mut p = Pair::new(a, any);
    p.b.add_peer(ike::PeerId(5), {
        let mut t = b.clone();
        t.remote = None;
        t.remote_id = Identity::Fqdn("t5.example".into());
        t
    })
    .unwrap();
    p.b.remove_peer(p.now, PEER_B).unwrap();
    p.initiate_a();
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert!(
        fb[0].1.contains("identified as Branch.Example") && fb[0].1.contains("t5.example"),
        "{}",
        fb[0].1
    );
}

#[test]
fn algorithm_matrix_establishes_with_matching_keys() {
    let groups = [DhGroup::Modp1024, DhGroup::Modp1536, DhGroup::Modp2048];
    let encrs = [
        Encr::Des,
        Encr::TripleDes,
        Encr::AesCbc128,
        Encr::AesCbc192,
        Encr::AesCbc256,
    ];
    let mut n = 0u64;
    for (i, encr) in encrs.into_iter().enumerate() {
        for (j, integ) in Integ::ALL.into_iter().enumerate() {
            let dh = groups[(i + j) % 3];
            let pfs = ((i + j) % 2 == 0).then_some(groups[(i + 2 * j) % 3]);
            let mut a = v1(if n.is_multiple_of(3) {
                V1Mode::Aggressive
            } else {
                V1Mode::Main
            });
            a.ike = ike(encr, integ, dh);
            a.esp = EspProposal { encr, integ, pfs };
            let mut p = Pair::with_seed(a.clone(), mirror(&a), n + 100);
            if n.is_multiple_of(2) {
                p.initiate_a();
            } else {
                p.initiate_b();
            }
            let what = format!("{encr:?}/{integ:?}/{dh:?} pfs {pfs:?}");
            assert_up(&p, &what);
            let c = &p.a.child_sas(PEER_A)[0];
            assert_eq!(c.pfs, pfs, "{what}");
            assert_eq!(c.integ_key_in.as_slice().len(), integ.key_len(), "{what}");
            n += 1;
        }
    }
    // Every group with and without PFS, and AES-GCM in ESP.
    for dh in groups {
        for pfs in [None, Some(dh)] {
            for esp_encr in [Encr::AesCbc128, Encr::AesGcm16_128, Encr::AesGcm16_256] {
                let mut a = v1(V1Mode::Main);
                a.ike = ike(Encr::AesCbc128, Integ::HmacSha256_128, dh);
                a.esp = EspProposal {
                    encr: esp_encr,
                    integ: Integ::HmacSha1_96,
                    pfs,
                };
                let mut p = Pair::with_seed(a.clone(), mirror(&a), n + 500);
                p.initiate_a();
                let what = format!("{dh:?} pfs {pfs:?} esp {esp_encr:?}");
                assert_up(&p, &what);
                let c = &p.b.child_sas(PEER_B)[0];
                assert_eq!(c.encr_key_in.as_slice().len(), esp_encr.key_len(), "{what}");
                assert_eq!(c.integ.is_none(), esp_encr.is_aead(), "{what}");
                n += 1;
            }
        }
    }
}

#[test]
fn gcm_for_the_isakmp_sa_is_refused_with_a_reason() {
    let mut a = v1(V1Mode::Main);
    a.ike = ike(Encr::AesGcm16_128, Integ::HmacSha256_128, DhGroup::Modp2048);
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    let f = Pair::failures(&p.a_events);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].0, Phase::Phase1);
    assert!(f[0].1.contains("CBC ciphers only"), "{}", f[0].1);
    assert!(p.wire.is_empty());
}

#[test]
fn wrong_psk_main_mode_shows_as_undecryptable_message_5() {
    let a = v1(V1Mode::Main);
    let mut b = mirror(&a);
    b.psk = Psk::new("not the same key");
    let mut p = Pair::new(a, b);
    p.initiate_a();
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert_eq!(fb[0].0, Phase::Phase1);
    assert!(fb[0].1.contains("message 5"), "{}", fb[0].1);
    assert!(fb[0].1.contains("pre-shared key"), "{}", fb[0].1);
    let fa = Pair::failures(&p.a_events);
    assert_eq!(fa.len(), 1, "{fa:?}");
    assert!(fa[0].1.contains("authentication failed"), "{}", fa[0].1);
    assert!(fa[0].1.contains("pre-shared key"), "{}", fa[0].1);
    assert_eq!(established(&p.a_events) + established(&p.b_events), 0);
    // Nothing is left behind, and the secret never shows in a log line.
    p.advance(Duration::from_secs(300));
    assert!(p.a.poll_timeout().is_none() && p.b.poll_timeout().is_none());
    for e in p.a_events.iter().chain(&p.b_events) {
        assert!(!format!("{e:?}").contains("correct horse"), "{e:?}");
    }
}

#[test]
fn wrong_psk_aggressive_mode_fails_on_hash_r() {
    let a = v1(V1Mode::Aggressive);
    let mut b = mirror(&a);
    b.psk = Psk::new("not the same key");
    let mut p = Pair::new(a, b);
    p.initiate_a();
    let fa = Pair::failures(&p.a_events);
    assert_eq!(fa.len(), 1, "{fa:?}");
    assert!(fa[0].1.contains("HASH_R"), "{}", fa[0].1);
    assert!(fa[0].1.contains("pre-shared key"), "{}", fa[0].1);
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert!(fb[0].1.contains("pre-shared key"), "{}", fb[0].1);
}

#[test]
fn phase1_proposal_mismatch() {
    let a = v1(V1Mode::Main);
    let mut b = mirror(&a);
    b.ike = ike(Encr::AesCbc256, Integ::HmacSha256_128, DhGroup::Modp2048);
    let mut p = Pair::new(a, b);
    p.initiate_a();
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert_eq!(
        fb[0].1,
        "no proposal chosen: peer proposed aes128-sha1-modp1024; this tunnel allows \
         aes256-sha256-modp2048 with a pre-shared key"
    );
    let fa = Pair::failures(&p.a_events);
    assert_eq!(fa.len(), 1, "{fa:?}");
    assert!(fa[0].1.contains("NO-PROPOSAL-CHOSEN"), "{}", fa[0].1);
}

/// Main Mode message 1s that no tunnel accepts are each answered and counted; the
/// tunnel reports one as a failure at most every 10 s.
#[test]
fn refused_main_modes_report_once_per_period() {
    let a = v1(V1Mode::Main);
    let mut b = mirror(&a);
    b.ike = ike(Encr::AesCbc256, Integ::HmacSha256_128, DhGroup::Modp2048);
    let mut p = Pair::new(a, b);
    for _ in 0..4 {
        p.initiate_a();
        p.advance(Duration::from_secs(3));
    }
    assert_eq!(p.b.stats().refused, 4);
    assert_eq!(Pair::failures(&p.b_events).len(), 1);
    assert_eq!(
        Pair::failures(&p.a_events).len(),
        4,
        "each notification reaches A"
    );
    p.initiate_a();
    assert_eq!(p.b.stats().refused, 5);
    assert_eq!(Pair::failures(&p.b_events).len(), 2);
}

#[test]
fn mode_mismatch_is_explained() {
    let a = v1(V1Mode::Aggressive);
    let mut b = mirror(&a);
    b.v1_mode = V1Mode::Main;
    let mut p = Pair::new(a, b);
    p.initiate_a();
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert!(fb[0].1.contains("ike.mode"), "{}", fb[0].1);
    assert_eq!(Pair::failures(&p.a_events).len(), 1);
}

#[test]
fn phase2_proposal_mismatch_keeps_isakmp_sa() {
    let a = v1(V1Mode::Main);
    let mut b = mirror(&a);
    b.esp.pfs = Some(DhGroup::Modp1024);
    let mut p = Pair::new(a, b);
    p.initiate_a();
    assert_eq!(established(&p.a_events), 1);
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert_eq!(fb[0].0, Phase::Phase2);
    assert!(fb[0].1.contains("PFS modp1024"), "{}", fb[0].1);
    let fa = Pair::failures(&p.a_events);
    assert_eq!(fa.len(), 1, "{fa:?}");
    assert_eq!(fa[0].0, Phase::Phase2);
    assert!(fa[0].1.contains("NO-PROPOSAL-CHOSEN"), "{}", fa[0].1);
    assert_eq!(p.a.ike_sas(PEER_A).len(), 1);
    assert!(p.a.child_sas(PEER_A).is_empty());
}

#[test]
fn identity_mismatch() {
    for mode in [V1Mode::Main, V1Mode::Aggressive] {
        let a = v1(mode);
        let mut b = mirror(&a);
        b.remote_id = Identity::Fqdn("someone.else".into());
        let mut p = Pair::new(a, b);
        p.initiate_a();
        let fb = Pair::failures(&p.b_events);
        assert_eq!(fb.len(), 1, "{mode:?} {fb:?}");
        assert!(
            fb[0].1.contains("identified as 192.0.2.1") && fb[0].1.contains("someone.else"),
            "{}",
            fb[0].1
        );
        let fa = Pair::failures(&p.a_events);
        assert_eq!(fa.len(), 1, "{mode:?} {fa:?}");
        assert!(fa[0].1.contains("INVALID-ID-INFORMATION"), "{}", fa[0].1);
        assert_eq!(established(&p.a_events) + established(&p.b_events), 0);
    }
}

#[test]
fn traffic_selector_mismatch() {
    let a = v1(V1Mode::Main);
    let mut b = mirror(&a);
    b.local_ts = vec!["10.9.0.0/16".parse().unwrap()];
    let mut p = Pair::new(a, b);
    p.initiate_a();
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert!(
        fb[0]
            .1
            .contains("peer proposed 10.1.0.0/16 === 10.2.0.0/16")
            && fb[0].1.contains("allows 10.1.0.0/16 === 10.9.0.0/16"),
        "{}",
        fb[0].1
    );
    let fa = Pair::failures(&p.a_events);
    assert!(fa[0].1.contains("INVALID-ID-INFORMATION"), "{}", fa[0].1);
}

#[test]
fn destination_mode_any_to_any() {
    let mut a = v1(V1Mode::Main);
    a.local_ts = vec![ike::Ipv4Cidr::ANY];
    a.remote_ts = vec![ike::Ipv4Cidr::ANY];
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    assert_up(&p, "0/0");
    let c = &p.b.child_sas(PEER_B)[0];
    assert_eq!(c.local_ts[0].to_string(), "0.0.0.0/0");
    assert_eq!(c.remote_ts[0].end, Ipv4Addr::BROADCAST);
}

#[test]
fn every_lost_message_is_recovered() {
    // Drop the first transmission of each of the nine messages in turn.
    for lost in 0..9 {
        for mode in [V1Mode::Main, V1Mode::Aggressive] {
            let a = v1(mode);
            let mut p = Pair::new(a.clone(), mirror(&a));
            p.fate = Box::new(move |pkt| {
                if pkt.seq == lost {
                    Fate::Drop
                } else {
                    Fate::Deliver
                }
            });
            p.initiate_a();
            p.advance(Duration::from_secs(60));
            let what = format!("{mode:?} lost #{lost}");
            assert_up(&p, &what);
        }
    }
}

#[test]
fn duplicated_datagrams_get_cached_answers() {
    for mode in [V1Mode::Main, V1Mode::Aggressive] {
        let a = v1(mode);
        let mut p = Pair::new(a.clone(), mirror(&a));
        p.fate = Box::new(|_| Fate::Duplicate);
        p.initiate_a();
        p.advance(Duration::from_secs(30));
        assert_up(&p, &format!("{mode:?} duplicated"));
        assert!(p.b.stats().duplicate_requests > 0);
        assert_eq!(p.a.child_sas(PEER_A).len(), 1);
    }
}

/// `(spi_in, spi_out)` of every event `f` picks out.
fn spis(events: &[Event], f: impl Fn(&Event) -> Option<&ike::ChildSa>) -> Vec<(u32, u32)> {
    events
        .iter()
        .filter_map(f)
        .map(|c| (c.spi_in, c.spi_out))
        .collect()
}

fn pending(e: &Event) -> Option<&ike::ChildSa> {
    match e {
        Event::ChildSaPending { child, .. } => Some(child),
        _ => None,
    }
}

fn deleted_spis(events: &[Event]) -> Vec<(u32, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaDeleted {
                spi_in, spi_out, ..
            } => Some((*spi_in, *spi_out)),
            _ => None,
        })
        .collect()
}

#[test]
fn quick_mode_responder_announces_its_inbound_sa_with_message_2() {
    // RFC 2409 §5.5: the initiator may send on the new SA once it has message 2, so
    // the responder's inbound SA must be in place before message 2 leaves.
    let a = v1(V1Mode::Main);
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    assert_up(&p, "pending");
    let ahead = spis(&p.b_events, pending);
    let up = spis(&p.b_events, |e| match e {
        Event::ChildSaEstablished { child, .. } => Some(child),
        _ => None,
    });
    assert_eq!(ahead.len(), 1, "{:?}", p.b_events);
    assert_eq!(ahead, up, "the pending SA is the one established");
    let at = |f: &dyn Fn(&Event) -> bool| p.b_events.iter().position(f).unwrap();
    assert!(
        at(&|e| matches!(e, Event::ChildSaPending { .. }))
            < at(&|e| matches!(e, Event::ChildSaEstablished { .. }))
    );
    // Same keys as the SA that is then established, and as A's outbound side.
    let Some(Event::ChildSaPending { child, .. }) = p
        .b_events
        .iter()
        .find(|e| matches!(e, Event::ChildSaPending { .. }))
    else {
        unreachable!()
    };
    assert_eq!(child, &p.b.child_sas(PEER_B)[0]);
    let a_child = &p.a.child_sas(PEER_A)[0];
    assert_eq!(child.encr_key_in, a_child.encr_key_out);
    assert_eq!(child.integ_key_in, a_child.integ_key_out);
    // The initiator announces nothing ahead: it installs when it has message 2.
    assert!(spis(&p.a_events, pending).is_empty());
}

/// A pair whose Quick Mode message 3 never reaches B (A's first Quick Mode message
/// does; every later one — message 3 and its retransmissions — is lost).
fn message_3_lost() -> Pair {
    let a = v1(V1Mode::Main);
    let mut p = Pair::new(a.clone(), mirror(&a));
    let mut quick_to_b = 0;
    p.fate = Box::new(move |pkt| {
        let h = Header::parse(&pkt.payload).expect("ISAKMP header");
        if matches!(pkt.to, Side::B) && h.exchange == Exchange::QUICK {
            quick_to_b += 1;
            if quick_to_b > 1 {
                return Fate::Drop;
            }
        }
        Fate::Deliver
    });
    p.initiate_a();
    assert_eq!(established(&p.b_events), 1, "{:?}", p.b_events);
    assert_eq!(children_up(&p.b_events), 0, "{:?}", p.b_events);
    assert_eq!(spis(&p.b_events, pending).len(), 1, "{:?}", p.b_events);
    p
}

#[test]
fn pending_inbound_sa_is_deleted_when_message_3_never_comes() {
    let mut p = message_3_lost();
    let ahead = spis(&p.b_events, pending);
    // Message 2 is retransmitted for 4 × (1 + 1.8 + … + 1.8⁵) ≈ 165 s.
    p.advance(Duration::from_secs(300));
    assert!(p.b.stats().retransmits >= 5);
    assert_eq!(children_up(&p.b_events), 0, "{:?}", p.b_events);
    assert_eq!(deleted_spis(&p.b_events), ahead, "{:?}", p.b_events);
    assert!(p.b.child_sas(PEER_B).is_empty());
}

#[test]
fn pending_inbound_sa_goes_with_its_isakmp_sa() {
    let mut p = message_3_lost();
    let ahead = spis(&p.b_events, pending);
    p.b.remove_peer(p.now, PEER_B).unwrap();
    p.drive();
    assert_eq!(deleted_spis(&p.b_events), ahead, "{:?}", p.b_events);
    // Reported once: the Quick Mode's own timer does not delete it again.
    p.advance(Duration::from_secs(300));
    assert_eq!(deleted_spis(&p.b_events), ahead, "{:?}", p.b_events);
}

/// A Quick Mode rekey that completes on an ISAKMP SA a new Main Mode replaced while
/// it was in flight: its Child SA lives on under the new ISAKMP SA (and replaces the
/// old Child SA there) instead of going away with the replaced one.
#[test]
fn quick_mode_finishing_on_a_replaced_isakmp_sa_keeps_its_child_sa() {
    let a = v1(V1Mode::Main);
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    assert_up(&p, "before");
    let first = p.a.child_sas(PEER_A)[0].clone();
    // B rekeys the Child SA; its message 3 to A is lost once, so A (the responder)
    // waits for it on the ISAKMP SA that A's new Main Mode then replaces.
    let mut quick_to_a = 0;
    p.fate = Box::new(move |pkt| {
        let h = Header::parse(&pkt.payload).expect("ISAKMP header");
        if matches!(pkt.to, Side::A) && h.exchange == Exchange::QUICK {
            quick_to_a += 1;
            if quick_to_a == 2 {
                return Fate::Drop;
            }
        }
        Fate::Deliver
    });
    p.b.rekey_child(p.now, PEER_B).unwrap();
    p.drive();
    assert_eq!(spis(&p.a_events, pending).len(), 1, "{:?}", p.a_events);
    p.a.rekey_ike(p.now, PEER_A).unwrap();
    p.drive();
    assert_eq!(established(&p.a_events), 2, "{:?}", p.a_events);
    // A retransmits message 2 on the replaced SA, B answers with message 3 again;
    // later the replaced SA is deleted.
    p.advance(Duration::from_secs(60));
    assert!(Pair::failures(&p.a_events).is_empty(), "{:?}", p.a_events);
    let new_in = spis(&p.a_events, pending)[0];
    assert_eq!(rekeyed(&p.a_events), 1, "{:?}", p.a_events);
    assert_eq!(
        deleted_spis(&p.a_events),
        [(first.spi_in, first.spi_out)],
        "only the rekeyed Child SA is deleted: {:?}",
        p.a_events
    );
    assert_eq!(p.a.ike_sas(PEER_A).len(), 1);
    let left: Vec<_> =
        p.a.child_sas(PEER_A)
            .iter()
            .map(|c| (c.spi_in, c.spi_out))
            .collect();
    assert_eq!(left, [new_in]);
    p.assert_children_match();
}

fn lifetimes(mode: V1Mode, ike_s: u64, child_s: u64, pfs: Option<DhGroup>) -> Pair {
    let mut a = v1(mode);
    a.ike_lifetime = Duration::from_secs(ike_s);
    a.child_lifetime = Duration::from_secs(child_s);
    a.esp.pfs = pfs;
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    assert_up(&p, "before rekey");
    p
}

#[test]
fn quick_mode_rekey_on_lifetime_is_make_before_break() {
    for pfs in [None, Some(DhGroup::Modp1024)] {
        let mut p = lifetimes(V1Mode::Main, 0, 600, pfs);
        let old = p.a.child_sas(PEER_A)[0].clone();
        p.advance(Duration::from_secs(700));
        assert_eq!(rekeyed(&p.a_events), 1, "{:?}", p.a_events);
        assert_eq!(rekeyed(&p.b_events), 1, "{:?}", p.b_events);
        assert_eq!(child_deleted(&p.a_events), 1);
        assert_eq!(child_deleted(&p.b_events), 1);
        // Exactly one side initiated the Quick Mode: the driver waits on that side
        // before sending on the new SA (the responder installs it on message 3).
        let initiated = |ev: &[Event]| {
            Pair::count(ev, |e| {
                matches!(
                    e,
                    Event::ChildSaRekeyed {
                        initiator: true,
                        ..
                    }
                )
            })
        };
        assert_eq!(initiated(&p.a_events) + initiated(&p.b_events), 1);
        // The responder's inbound side was announced ahead, with message 2: B's for the
        // first Child SA (B answered A's Quick Mode), then each side's for the rekeys
        // it answered.
        let first = spis(&p.b_events, |e| match e {
            Event::ChildSaEstablished { child, .. } => Some(child),
            _ => None,
        });
        for (ev, mut expected) in [(&p.a_events, Vec::new()), (&p.b_events, first)] {
            expected.extend(spis(ev, |e| match e {
                Event::ChildSaRekeyed {
                    child,
                    initiator: false,
                    ..
                } => Some(child),
                _ => None,
            }));
            assert_eq!(spis(ev, pending), expected, "{ev:?}");
        }
        // The new SA is announced before the old one is deleted.
        let pos = |ev: &[Event], f: &dyn Fn(&Event) -> bool| ev.iter().position(f).unwrap();
        for ev in [&p.a_events, &p.b_events] {
            let r = pos(ev, &|e| matches!(e, Event::ChildSaRekeyed { .. }));
            let d = pos(ev, &|e| matches!(e, Event::ChildSaDeleted { .. }));
            assert!(r < d);
        }
        p.assert_children_match();
        let new = p.a.child_sas(PEER_A)[0].clone();
        assert_ne!(new.spi_in, old.spi_in);
        assert_ne!(new.encr_key_in, old.encr_key_in);
        assert!(Pair::failures(&p.a_events).is_empty());
        // And again, a lifetime later.
        p.advance(Duration::from_secs(600));
        assert_eq!(rekeyed(&p.a_events), 2);
        p.assert_children_match();
    }
}

#[test]
fn isakmp_sa_is_replaced_before_expiry() {
    for mode in [V1Mode::Main, V1Mode::Aggressive] {
        let mut p = lifetimes(mode, 1000, 0, None);
        let old = p.a.ike_sas(PEER_A)[0];
        let child = p.a.child_sas(PEER_A)[0].clone();
        p.advance(Duration::from_secs(1100));
        let rk = |ev: &[Event]| Pair::count(ev, |e| matches!(e, Event::IkeSaRekeyed { .. }));
        assert_eq!(rk(&p.a_events), 1, "{mode:?} {:?}", p.a_events);
        assert_eq!(rk(&p.b_events), 1, "{mode:?} {:?}", p.b_events);
        p.assert_ike_match();
        assert_ne!(p.a.ike_sas(PEER_A)[0], old);
        // The Child SA survives the replacement untouched.
        p.assert_children_match();
        assert_eq!(p.a.child_sas(PEER_A)[0].spi_in, child.spi_in);
        assert_eq!(child_deleted(&p.a_events), 0);
        let gone = |ev: &[Event]| {
            Pair::count(ev, |e| {
                matches!(
                    e,
                    Event::IkeSaDeleted {
                        reason: DeleteReason::Rekeyed,
                        ..
                    }
                )
            })
        };
        assert_eq!(gone(&p.a_events), 1);
        assert_eq!(gone(&p.b_events), 1);
        assert!(Pair::failures(&p.b_events).is_empty());
        // A quick mode rekey still works on the new ISAKMP SA.
        p.a.rekey_child(p.now, PEER_A).unwrap();
        p.drive();
        assert_eq!(rekeyed(&p.b_events), 1);
        // The replaced SA stays a grace period (the peer installs the new one only
        // with message 3), then A deletes it.
        assert_eq!(p.a.child_sas(PEER_A).len(), 2);
        assert_eq!(p.b.child_sas(PEER_B).len(), 2);
        assert_eq!(child_deleted(&p.b_events), 0);
        p.advance(Duration::from_secs(10));
        assert_eq!(child_deleted(&p.b_events), 1);
        p.assert_children_match();
    }
}

/// strongSwan moves the Child SAs of a replaced ISAKMP SA to the new one in a job it
/// queues when the new SA is up; a Delete for the old SA handled before that job runs
/// takes the Child SAs with it. So the initiator of the replacement deletes the old
/// SA only after a grace period.
#[test]
fn replaced_isakmp_sa_is_deleted_after_a_grace_period() {
    let mut p = lifetimes(V1Mode::Main, 1000, 0, None);
    let rk = |ev: &[Event]| Pair::count(ev, |e| matches!(e, Event::IkeSaRekeyed { .. }));
    let gone = |ev: &[Event]| {
        Pair::count(ev, |e| {
            matches!(
                e,
                Event::IkeSaDeleted {
                    reason: DeleteReason::Rekeyed,
                    ..
                }
            )
        })
    };
    let mut waited = 0;
    while rk(&p.a_events) == 0 {
        assert!(waited < 2200, "no replacement in 1,100 s: {:?}", p.a_events);
        p.advance(Duration::from_millis(500));
        waited += 1;
    }
    assert_eq!(rk(&p.b_events), 1);
    // For a while the peer keeps the old ISAKMP SA: no Delete came.
    p.advance(Duration::from_secs(4));
    assert_eq!(gone(&p.a_events), 0, "{:?}", p.a_events);
    assert_eq!(gone(&p.b_events), 0, "{:?}", p.b_events);
    p.assert_children_match();
    // Then the initiator deletes the old one.
    p.advance(Duration::from_secs(2));
    assert_eq!(gone(&p.a_events), 1, "{:?}", p.a_events);
    assert_eq!(gone(&p.b_events), 1, "{:?}", p.b_events);
    assert_eq!(p.b.ike_sas(PEER_B).len(), 1);
    assert_eq!(child_deleted(&p.b_events), 0);
    p.assert_children_match();
}

#[test]
fn dpd_declares_silent_peer_dead_after_the_timeout() {
    let mut a = v1(V1Mode::Main);
    a.dpd_interval = Some(Duration::from_secs(10));
    a.dpd_timeout = Duration::from_secs(30);
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    assert_up(&p, "dpd");
    // A live peer answers: nothing happens for a long time.
    p.advance(Duration::from_secs(120));
    assert_eq!(
        Pair::count(&p.a_events, |e| matches!(e, Event::PeerDead { .. })),
        0
    );
    let probes = p.wire.len();
    assert!(probes > 9 + 4, "R-U-THERE and ACKs flowed: {probes}");
    // Now the peer goes silent.
    p.fate = Box::new(|_| Fate::Drop);
    let silent_at = p.elapsed();
    p.advance(Duration::from_secs(35));
    assert_eq!(
        Pair::count(&p.a_events, |e| matches!(e, Event::PeerDead { .. })),
        0
    );
    p.advance(Duration::from_secs(10));
    assert_eq!(
        Pair::count(&p.a_events, |e| matches!(e, Event::PeerDead { .. })),
        1,
        "{:?}",
        p.a_events
    );
    // The probe started after 10 s idle and gave up 30 s later.
    let dead_at = p.elapsed();
    assert!(dead_at - silent_at <= Duration::from_secs(45));
    assert!(p.a.child_sas(PEER_A).is_empty());
    assert!(p.a_events.iter().any(|e| matches!(
        e,
        Event::IkeSaDeleted {
            reason: DeleteReason::PeerDead,
            ..
        }
    )));
}

#[test]
fn nat_detected_float_to_4500_and_udp_encap() {
    for mode in [V1Mode::Main, V1Mode::Aggressive] {
        let a = v1(mode);
        let mut b = mirror(&a);
        b.remote = None; // the peer's public address is the NAT's
        let mut p = Pair::with_nat(a, b);
        p.initiate_a();
        assert_up(&p, &format!("{mode:?} nat"));
        let ca = &p.a.child_sas(PEER_A)[0];
        let cb = &p.b.child_sas(PEER_B)[0];
        assert!(ca.udp_encap && cb.udp_encap);
        assert!(ca.local_behind_nat && !cb.local_behind_nat);
        assert_eq!(ca.local, sock(A_PRIVATE, 4500));
        assert_eq!(ca.remote, sock(B_IP, 4500));
        assert_eq!(cb.remote, sock(NAT_IP, 44500));
        // Main Mode floats from message 5, Aggressive Mode from message 3.
        let first_4500 = p.wire.iter().position(|w| w.dst.port() == 4500).unwrap();
        assert_eq!(first_4500, if mode == V1Mode::Main { 4 } else { 2 });
        assert!(p.wire[first_4500..].iter().all(|w| w.dst.port() != 500));
        // The responder's SA goes: found in its map of first messages by the port
        // message 1 came from, not the floated one (debug builds check).
        p.b.remove_peer(p.now, PEER_B).unwrap();
        p.drive();
        assert!(p.b.ike_sas(PEER_B).is_empty());
    }
}

#[test]
fn no_nat_traversal_when_disabled() {
    let mut a = v1(V1Mode::Main);
    a.nat_traversal = false;
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    assert_up(&p, "no nat-t");
    assert_eq!(wire_summary(&p)[2], "Main Mode [ KE No ]");
}

#[test]
fn remove_peer_deletes_sas_at_the_peer() {
    let a = v1(V1Mode::Main);
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    assert_up(&p, "delete");
    p.a.remove_peer(p.now, PEER_A).unwrap();
    p.drive();
    assert_eq!(child_deleted(&p.b_events), 1, "{:?}", p.b_events);
    assert!(p.b_events.iter().any(|e| matches!(
        e,
        Event::IkeSaDeleted {
            reason: DeleteReason::PeerDeleted,
            ..
        }
    )));
    assert!(p.b.child_sas(PEER_B).is_empty());
    assert!(p.b.ike_sas(PEER_B).is_empty());
}

#[test]
fn reset_renegotiates() {
    let a = v1(V1Mode::Aggressive);
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    assert_up(&p, "reset");
    p.a.reset(p.now, PEER_A).unwrap();
    p.drive();
    assert_eq!(established(&p.a_events), 2);
    assert_eq!(established(&p.b_events), 2);
    p.assert_ike_match();
    p.assert_children_match();
}

#[test]
fn lost_responder_gives_up_with_a_reason() {
    let a = v1(V1Mode::Main);
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.fate = Box::new(|pkt| {
        if pkt.to == Side::A {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.initiate_a();
    p.advance(Duration::from_secs(600));
    let f = Pair::failures(&p.a_events);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].1.contains("did not answer"), "{}", f[0].1);
    assert!(f[0].1.contains("nothing came back from"), "{}", f[0].1);
    assert!(p.a.poll_timeout().is_none());
    let waiting = Pair::count(&p.a_events, |e| {
        matches!(e, Event::Unanswered { reason, .. }
            if reason.starts_with("no answer yet from 198.51.100.2:500 to Main Mode"))
    });
    assert!(waiting >= 1, "{:?}", p.a_events);
}

/// A Quick Mode that brings the tunnel's Child SA on an ISAKMP SA without one says that
/// it goes unanswered from its second retransmission on, as Main Mode does.
#[test]
fn an_unanswered_quick_mode_says_so_before_the_verdict() {
    let a = v1(V1Mode::Main);
    let mut b = mirror(&a);
    b.esp.encr = Encr::AesCbc256;
    let mut p = Pair::new(a.clone(), b);
    p.initiate_a();
    assert_eq!(children_up(&p.a_events), 0, "{:?}", p.a_events);
    assert_eq!(p.a.ike_sas(PEER_A).len(), 1);
    p.fate = Box::new(|_| Fate::Drop);
    p.a_events.clear();
    p.a.create_child(p.now, PEER_A).unwrap();
    p.advance(Duration::from_secs(60));
    let u: Vec<&String> = p
        .a_events
        .iter()
        .filter_map(|e| match e {
            Event::Unanswered { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert!(!u.is_empty(), "{:?}", p.a_events);
    assert!(
        u[0].starts_with(
            "no answer yet from 198.51.100.2:500 to quick mode message 1 (sent 3 times): \
             the peer answered on this IKE SA before;"
        ),
        "{}",
        u[0]
    );
}

/// Behind a NAT, Main Mode messages 5 and 6 move to UDP 4500 (RFC 3947 §4): a firewall
/// that drops UDP 4500 leaves message 5 unanswered, and the reason names the port.
#[test]
fn an_unanswered_main_mode_on_udp_4500_names_the_port() {
    let a = v1(V1Mode::Main);
    let mut b = mirror(&a);
    b.remote = None; // the peer's public address is the NAT's
    let mut p = Pair::with_nat(a, b);
    p.fate = drop_udp_4500();
    p.initiate_a();
    p.advance(Duration::from_secs(600));
    let f = Pair::failures(&p.a_events);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].1.contains("(waiting for Main Mode message 6)"),
        "{}",
        f[0].1
    );
    assert!(
        f[0].1.contains("nothing came back on UDP 4500"),
        "{}",
        f[0].1
    );
    // The responder, which answered the first messages, says the same from its end.
    assert_responder_named_udp_4500(&p.b_events);
}

#[test]
fn ikev1_and_ikev2_peers_share_one_endpoint() {
    let a1 = v1(V1Mode::Main);
    let mut p = Pair::new(a1.clone(), mirror(&a1));
    // A second tunnel between other addresses, IKEv2, on the same endpoints.
    let mut a2 = config_a();
    a2.local = sock(A_IP, 500);
    a2.local_ts = vec!["10.3.0.0/16".parse().unwrap()];
    a2.remote_ts = vec!["10.4.0.0/16".parse().unwrap()];
    a2.local_id = Identity::Fqdn("a2".into());
    a2.remote_id = Identity::Fqdn("b2".into());
    a2.remote = Some(sock(B_IP, 500));
    let b2 = mirror(&a2);
    p.a.add_peer(ike::PeerId(11), a2).unwrap();
    p.b.add_peer(ike::PeerId(12), b2).unwrap();
    p.initiate_a();
    p.a.initiate(p.now, ike::PeerId(11)).unwrap();
    p.drive();
    assert_eq!(p.a.child_sas(PEER_A).len(), 1);
    assert_eq!(p.b.child_sas(PEER_B).len(), 1);
    assert_eq!(p.a.child_sas(ike::PeerId(11)).len(), 1);
    assert_eq!(p.b.child_sas(ike::PeerId(12)).len(), 1);
    assert!(p.wire.iter().any(|w| w.payload[17] == 0x10));
    assert!(p.wire.iter().any(|w| w.payload[17] == 0x20));
    assert!(Pair::failures(&p.a_events).is_empty());
    let _ = Exchange::QUICK;
    let _ = PayloadType::HASH;
}

#[test]
fn version_mismatch_is_not_negotiated() {
    // IKEv1 initiator, IKEv2 responder: the responder says why.
    let a = v1(V1Mode::Main);
    let mut b = mirror(&a);
    b.version = IkeVersion::V2;
    let mut p = Pair::new(a, b);
    p.initiate_a();
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert!(fb[0].1.contains("ike.version"), "{}", fb[0].1);
    // It answers NO-PROPOSAL-CHOSEN at once, as strongSwan does.
    let fa = Pair::failures(&p.a_events);
    assert_eq!(fa.len(), 1, "{fa:?}");
    assert!(
        fa[0]
            .1
            .contains("or it has no IKEv1 connection for this gateway's address"),
        "{}",
        fa[0].1
    );
    assert_eq!(p.a.stats().retransmits, 0);
    // IKEv2 initiator, IKEv1 responder: the IKEv2 engine does not take the tunnel, and
    // both sides say why.
    let mut a = v1(V1Mode::Main);
    a.version = IkeVersion::V2;
    let mut b = mirror(&a);
    b.version = IkeVersion::V1;
    let mut p = Pair::new(a, b);
    p.initiate_a();
    assert_eq!(established(&p.b_events), 0);
    assert_eq!(p.b.stats().no_peer, 0);
    assert_eq!(p.b.stats().refused, 1);
    let fb = Pair::failures(&p.b_events);
    assert_eq!(
        fb,
        vec![(
            Phase::Phase1,
            "peer 192.0.2.1:500 started IKEv2 (IKE_SA_INIT); this tunnel is configured for \
             IKEv1 (ike.version must match on both sides)"
                .to_string()
        )]
    );
    let fa = Pair::failures(&p.a_events);
    assert_eq!(fa.len(), 1, "{fa:?}");
    assert!(
        fa[0].1.contains("(NO_PROPOSAL_CHOSEN)") && fa[0].1.contains("ike.version must match"),
        "{}",
        fa[0].1
    );
}

#[test]
fn ikev1_towards_an_ikev2_tunnel_says_the_versions_differ() {
    let a = v1(V1Mode::Main);
    let mut b = mirror(&a);
    b.version = IkeVersion::V2;
    let mut p = Pair::new(a, b);
    p.initiate_a();
    let f = Pair::failures(&p.b_events);
    assert!(
        f.iter()
            .any(|(ph, why)| *ph == Phase::Phase1 && why.contains("ike.version must match")),
        "{f:?}"
    );
    // Not a stranger: the node must not name the address as unexpected.
    assert_eq!(p.b.stats().no_peer, 0);
    assert!(p.b.stats().refused >= 1);
    assert_eq!(established(&p.b_events), 0);
}

/// A Main Mode initiator named `branch.example` towards a responder whose tunnel for
/// it accepts any address (customer gateway 0.0.0.0).
fn branch() -> (PeerConfig, PeerConfig) {
    let mut a = v1(V1Mode::Main);
    a.local_id = Identity::Fqdn("branch.example".into());
    let mut b = mirror(&a);
    b.remote = None;
    (a, b)
}

fn logged(events: &[Event], peer: ike::PeerId, event: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Log { peer: p, event: ev, .. } if *p == peer && *ev == event))
}

#[test]
fn main_mode_responder_moves_to_the_tunnel_that_message_5_names() {
    // RFC 2409 §5.4: the responder picks a tunnel (and key) by address before message
    // 5 names the peer. Another tunnel that accepts the address and comes first in the
    // lookup (a fixed address before 0.0.0.0, then by id) is picked first.
    let decoy = ike::PeerId(1);
    for same_key in [true, false] {
        for fixed_address in [false, true] {
            let what = format!("same_key={same_key} fixed_address={fixed_address}");
            let (a, b) = branch();
            let mut other = b.clone();
            other.remote_id = Identity::Fqdn("other.example".into());
            if !same_key {
                other.psk = Psk::new("the other tunnel's key");
            }
            if fixed_address {
                other.remote = Some(a.local);
            }
            let mut p = Pair::new(a, b);
            p.b.add_peer(decoy, other).unwrap();
            p.initiate_a();
            assert_up(&p, &what);
            assert!(logged(&p.b_events, decoy, "phase1_start"), "{what}");
            assert!(logged(&p.b_events, decoy, "phase1_moved"), "{what}");
            assert!(logged(&p.b_events, PEER_B, "phase1_start"), "{what}");
            assert!(p.b.ike_sas(decoy).is_empty(), "{what}");
            assert!(p.b.child_sas(decoy).is_empty(), "{what}");
            assert_eq!(p.b.ike_sas(PEER_B).len(), 1, "{what}");
            assert!(p.b_events.iter().any(|e| matches!(
                e,
                Event::IkeSaEstablished { peer, .. } if *peer == PEER_B
            )));
            // The moved SA lives on as the right tunnel's: DPD, rekeying and Delete
            // find it there.
            p.b.remove_peer(p.now, PEER_B).unwrap();
            p.drive();
            assert!(p.a.ike_sas(PEER_A).is_empty(), "{what}");
        }
    }
}

#[test]
fn main_mode_responder_without_a_tunnel_for_message_5_says_why() {
    // The peer's ID belongs to no tunnel: the picked tunnel reports the mismatch.
    let (a, mut b) = branch();
    b.remote_id = Identity::Fqdn("someone.else".into());
    let mut other = b.clone();
    other.remote_id = Identity::Fqdn("other.example".into());
    let mut p = Pair::new(a.clone(), b.clone());
    p.b.add_peer(ike::PeerId(3), other.clone()).unwrap();
    p.initiate_a();
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert!(
        fb[0].1.contains("identified as branch.example"),
        "{}",
        fb[0].1
    );
    assert!(!logged(&p.b_events, ike::PeerId(3), "phase1_moved"));
    // The right ID, but on a tunnel whose key differs from the peer's: no tunnel's key
    // decrypts message 5, and the failure says the others were tried.
    let mut right = b.clone();
    right.remote_id = Identity::Fqdn("branch.example".into());
    right.psk = Psk::new("not the initiator's key");
    other.psk = Psk::new("nor this one");
    let mut p = Pair::new(a, b);
    p.b.add_peer(ike::PeerId(3), other).unwrap();
    p.b.add_peer(ike::PeerId(4), right).unwrap();
    p.b.remove_peer(p.now, PEER_B).unwrap();
    p.initiate_a();
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert!(
        fb[0]
            .1
            .contains("could not be decrypted (nor with the keys of the 1 other tunnels"),
        "{}",
        fb[0].1
    );
    assert_eq!(established(&p.a_events) + established(&p.b_events), 0);
}

#[test]
fn main_mode_responder_tries_a_bounded_number_of_other_keys() {
    // The peer's tunnel comes after `others` tunnels with keys of their own.
    for others in [64, 65] {
        let (a, b) = branch();
        let mut first = b.clone();
        first.remote_id = Identity::Fqdn("t0.example".into());
        first.psk = Psk::new("key 0");
        let mut p = Pair::new(a, first);
        for i in 1..others {
            let mut t = b.clone();
            t.remote_id = Identity::Fqdn(format!("t{i}.example"));
            t.psk = Psk::new(format!("key {i}").as_str());
            p.b.add_peer(ike::PeerId(10 + i), t).unwrap();
        }
        let right = ike::PeerId(1000);
        p.b.add_peer(right, b).unwrap();
        p.initiate_a();
        if others == 64 {
            // The bound tunnel plus 63 others, then the right one: the 64th trial.
            assert!(Pair::failures(&p.b_events).is_empty(), "{:?}", p.b_events);
            assert_eq!(p.b.ike_sas(right).len(), 1);
        } else {
            let fb = Pair::failures(&p.b_events);
            assert_eq!(fb.len(), 1, "{fb:?}");
            assert!(
                fb[0]
                    .1
                    .contains("nor with the keys of 64 of the 65 other tunnels")
                    && fb[0].1.contains("Aggressive Mode or IKEv2"),
                "{}",
                fb[0].1
            );
            assert!(p.b.ike_sas(right).is_empty());
        }
    }
}

/// A peer that keeps starting Quick Modes and never finishes them (its message 3s are
/// lost) has 16 answered at once; a 17th message 1 is dropped and counted, with one
/// log row, instead of holding another DH computation and inbound SA.
#[test]
fn responder_answers_at_most_sixteen_quick_modes_at_once() {
    let a = v1(V1Mode::Main);
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    assert_up(&p, "first child");
    // From now on A's message 3s (a HASH alone: short) never reach B.
    p.fate = Box::new(|w: &Pkt| {
        let quick = Header::parse(&w.payload).is_ok_and(|h| h.exchange == Exchange::QUICK);
        if w.to == Side::B && quick && w.payload.len() < 100 {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let pending =
        |p: &Pair| Pair::count(&p.b_events, |e| matches!(e, Event::ChildSaPending { .. }));
    for round in 1..=16 {
        p.a.rekey_child(p.now, PEER_A).unwrap();
        p.drive();
        assert_eq!(pending(&p), 1 + round, "round {round}");
    }
    assert_eq!(p.b.stats().half_open_limited, 0);
    let out = p.b.stats().datagrams_out;
    p.a.rekey_child(p.now, PEER_A).unwrap();
    p.drive();
    assert_eq!(p.b.stats().half_open_limited, 1);
    assert_eq!(p.b.stats().datagrams_out, out, "no message 2 for the 17th");
    assert_eq!(pending(&p), 17);
    let rows = Pair::count(&p.b_events, |e| {
        matches!(
            e,
            Event::Log {
                event: "phase2_limited",
                ..
            }
        )
    });
    assert_eq!(rows, 1);
    // Message 3s get through again: B's retransmitted message 2s are answered, its
    // Quick Modes finish, and A's retransmitted 17th message 1 is answered then.
    p.fate = Box::new(|_| Fate::Deliver);
    p.advance(Duration::from_secs(30));
    assert_eq!(pending(&p), 18, "{:?}", p.b_events);
    assert!(Pair::failures(&p.a_events).is_empty(), "{:?}", p.a_events);
}

/// A late copy of an earlier phase 1 message (the network duplicated and delayed
/// Main Mode message 2) that arrives while the initiator waits for message 6 is
/// ignored; the initiator keeps retransmitting message 5 when message 6 is lost.
///
/// Before: the copy cleared the retransmission of message 5, and with message 6
/// lost the exchange waited forever, holding whatever it held.
#[test]
fn a_late_copy_of_an_earlier_message_does_not_stall_main_mode() {
    use std::sync::{Arc, Mutex};
    let a = v1(V1Mode::Main);
    let mut p = Pair::new(a.clone(), mirror(&a));
    let kept: Arc<Mutex<Option<Pkt>>> = Arc::default();
    let keep = Arc::clone(&kept);
    let mut dropped_mm6 = false;
    p.fate = Box::new(move |pkt| {
        let Ok(h) = Header::parse(&pkt.payload) else {
            return Fate::Deliver;
        };
        if pkt.to == Side::A && h.exchange == Exchange::MAIN {
            if !h.encrypted() {
                keep.lock().unwrap().get_or_insert_with(|| pkt.clone());
            } else if !dropped_mm6 {
                dropped_mm6 = true;
                return Fate::Drop;
            }
        }
        Fate::Deliver
    });
    p.initiate_a();
    assert_eq!(established(&p.a_events), 0, "message 6 was not lost");
    let mm2 = kept.lock().unwrap().clone().expect("message 2");
    p.a.handle_datagram(p.now, mm2.dst, mm2.src, &mm2.payload);
    p.drive();
    p.advance(Duration::from_secs(30));
    assert_up(&p, "after a late message 2 and a lost message 6");
}
