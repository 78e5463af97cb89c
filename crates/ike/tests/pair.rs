//! Whole-exchange tests: two endpoints back to back on a virtual clock.

mod util;

use std::time::Duration;

use crypto::{DhGroup, Encr, Integ};
use ike::wire::registry::{ExchangeType, NotifyType, PayloadType};
use ike::wire::{Codec, KeyExchange, Message, Notify, Payload};
use ike::{DeleteReason, EspProposal, Event, Identity, PeerConfig, Phase, Psk};
use util::*;

fn established(events: &[Event]) -> usize {
    Pair::count(events, |e| matches!(e, Event::IkeSaEstablished { .. }))
}

fn children_up(events: &[Event]) -> usize {
    Pair::count(events, |e| matches!(e, Event::ChildSaEstablished { .. }))
}

#[test]
fn establish_and_keys_match() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    assert_eq!(established(&p.a_events), 1, "{:?}", p.a_events);
    assert_eq!(established(&p.b_events), 1, "{:?}", p.b_events);
    assert_eq!(children_up(&p.a_events), 1);
    assert_eq!(children_up(&p.b_events), 1);
    p.assert_ike_match();
    p.assert_children_match();
    let c = &p.a.child_sas(PEER_A)[0];
    assert!(!c.udp_encap);
    assert_eq!(c.local, sock(A_IP, 500));
    assert_eq!(c.remote, sock(B_IP, 500));
    assert_eq!(c.local_ts[0].to_string(), "10.1.0.0/16");
    assert_eq!(c.remote_ts[0].to_string(), "10.2.0.0/16");
    // Exactly four datagrams: no retransmissions.
    assert_eq!(p.wire.len(), 4);
    assert_eq!(p.a.stats().retransmits, 0);
    // The log tells the story.
    assert!(p.a_events.iter().any(|e| matches!(
        e,
        Event::Log {
            event: "phase1_established",
            ..
        }
    )));
}

#[test]
fn establish_every_algorithm_combination_both_directions() {
    let mut n = 0;
    for (i, encr) in Encr::ALL.into_iter().enumerate() {
        for (j, integ) in Integ::ALL.into_iter().enumerate() {
            for (k, dh) in DhGroup::ALL.into_iter().enumerate() {
                let mut a = config_a();
                a.ike = ike(encr, integ, dh);
                a.esp = EspProposal {
                    encr,
                    integ,
                    pfs: None,
                };
                let b = mirror(&a);
                let mut p = Pair::with_seed(a, b, n as u64 + 10);
                // Alternate who initiates so every group is tried in both directions.
                if (i + j + k) % 2 == 0 {
                    p.initiate_a()
                } else {
                    p.initiate_b()
                }
                let name = format!("{encr:?}/{integ:?}/{dh:?}");
                assert_eq!(established(&p.a_events), 1, "{name}: {:?}", p.a_events);
                assert_eq!(children_up(&p.b_events), 1, "{name}: {:?}", p.b_events);
                p.assert_ike_match();
                p.assert_children_match();
                n += 1;
            }
        }
    }
    assert_eq!(n, 7 * 5 * 8);
}

#[test]
fn psk_mismatch_fails_on_both_sides() {
    let a = config_a();
    let mut b = mirror(&a);
    b.psk = Psk::new("something else");
    let mut p = Pair::new(a, b);
    p.initiate_a();
    let fa = Pair::failures(&p.a_events);
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fa.len(), 1, "{fa:?}");
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert_eq!(fa[0].0, Phase::Phase1);
    // The initiator only hears AUTHENTICATION_FAILED: the key or its identity.
    assert!(
        fa[0].1.starts_with("authentication failed")
            && fa[0].1.contains("check the pre-shared key")
            && fa[0].1.contains("our identity 192.0.2.1"),
        "{}",
        fa[0].1
    );
    assert!(
        fb[0]
            .1
            .contains("authentication failed — check the pre-shared key"),
        "{}",
        fb[0].1
    );
    assert_eq!(established(&p.a_events) + established(&p.b_events), 0);
    assert!(p.a.ike_sas(PEER_A).is_empty());
    assert!(p.b.ike_sas(PEER_B).is_empty());
}

#[test]
fn ike_proposal_mismatch_reasons() {
    let mut a = config_a();
    a.ike = ike(Encr::AesCbc256, Integ::HmacSha256_128, DhGroup::Modp2048);
    let mut b = mirror(&a);
    b.ike = ike(Encr::AesCbc128, Integ::HmacSha1_96, DhGroup::Modp1024);
    let mut p = Pair::new(a, b);
    p.initiate_a();
    let fa = Pair::failures(&p.a_events);
    let fb = Pair::failures(&p.b_events);
    assert_eq!(
        fa,
        vec![(
            Phase::Phase1,
            "peer rejected our proposal aes256-sha256-modp2048 (NO_PROPOSAL_CHOSEN): it allows \
             other algorithms, or has no IKEv2 connection for this gateway's address \
             192.0.2.1 (ike.version must match on both sides)"
                .to_string()
        )]
    );
    assert_eq!(
        fb,
        vec![(
            Phase::Phase1,
            "peer proposed aes256-sha256-modp2048; this tunnel allows aes128-sha1-modp1024"
                .to_string()
        )]
    );
}

/// Refused IKE_SA_INITs are each answered and counted, but a tunnel reports one as a
/// failure (a stored log row) at most every 10 s: anyone at the peer's address can send
/// them as fast as they like.
#[test]
fn refused_first_messages_report_once_per_period() {
    let mut a = config_a();
    a.ike = ike(Encr::AesCbc256, Integ::HmacSha256_128, DhGroup::Modp2048);
    let mut b = mirror(&a);
    b.ike = ike(Encr::AesCbc128, Integ::HmacSha1_96, DhGroup::Modp1024);
    let mut p = Pair::new(a, b);
    for _ in 0..5 {
        p.initiate_a();
        p.advance(Duration::from_secs(1));
    }
    assert_eq!(p.b.stats().refused, 5);
    assert_eq!(Pair::failures(&p.b_events).len(), 1);
    assert_eq!(
        Pair::failures(&p.a_events).len(),
        5,
        "each rejection reaches A"
    );
    // 10 s after the report, the next refusal reports again.
    p.advance(Duration::from_secs(5));
    p.initiate_a();
    assert_eq!(p.b.stats().refused, 6);
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fb.len(), 2);
    assert_eq!(
        fb[1].1,
        "peer proposed aes256-sha256-modp2048; this tunnel allows aes128-sha1-modp1024"
    );
}

#[test]
fn esp_proposal_mismatch_keeps_ike_sa() {
    let a = config_a();
    let mut b = mirror(&a);
    b.esp.encr = Encr::AesCbc256;
    let mut p = Pair::new(a, b);
    p.initiate_a();
    assert_eq!(established(&p.a_events), 1);
    assert_eq!(established(&p.b_events), 1);
    let fa = Pair::failures(&p.a_events);
    let fb = Pair::failures(&p.b_events);
    assert_eq!(
        fa,
        vec![(
            Phase::Phase2,
            "peer rejected our proposal aes128-sha1 (NO_PROPOSAL_CHOSEN)".to_string()
        )]
    );
    assert_eq!(
        fb,
        vec![(
            Phase::Phase2,
            "peer proposed aes128-sha1 for the Child SA; this tunnel allows aes256-sha1"
                .to_string()
        )]
    );
    assert!(p.a.child_sas(PEER_A).is_empty());
}

/// A pair with `a` whose IKE SA is up without a Child SA: B refuses the one in IKE_AUTH
/// (it allows only AES-256).
fn ike_sa_without_child(a: &PeerConfig) -> Pair {
    let mut b = mirror(a);
    b.esp.encr = Encr::AesCbc256;
    let mut p = Pair::new(a.clone(), b);
    p.initiate_a();
    assert!(p.a.child_sas(PEER_A).is_empty());
    assert_eq!(p.a.ike_sas(PEER_A).len(), 1);
    p
}

/// `create_child` on an IKE SA without a Child SA sends CREATE_CHILD_SA without
/// REKEY_SA (RFC 7296 §1.3.1) on the same IKE SA; the peer evaluates it like the Child
/// SA of IKE_AUTH (here: refuses it again, and both ends say why). Beside an installed
/// Child SA it sends nothing.
#[test]
fn create_child_negotiates_on_the_existing_ike_sa() {
    let a = config_a();
    let mut p = ike_sa_without_child(&a);
    let ike = p.a.ike_sas(PEER_A);
    let sent = p.wire.len();
    p.a_events.clear();
    p.b_events.clear();
    p.a.create_child(p.now, PEER_A).unwrap();
    // A second call while the first is under way adds nothing.
    p.a.create_child(p.now, PEER_A).unwrap();
    p.drive();
    p.collect_events();
    let exchanges: Vec<ExchangeType> = p.wire[sent..]
        .iter()
        .map(|pkt| Message::decode(&pkt.payload).unwrap().header.exchange)
        .collect();
    assert_eq!(
        exchanges,
        [ExchangeType::CREATE_CHILD_SA, ExchangeType::CREATE_CHILD_SA]
    );
    assert_eq!(p.a.ike_sas(PEER_A), ike);
    assert_eq!(
        Pair::failures(&p.a_events),
        vec![(
            Phase::Phase2,
            "peer rejected our proposal aes128-sha1 (NO_PROPOSAL_CHOSEN)".to_string()
        )]
    );
    assert_eq!(Pair::failures(&p.b_events).len(), 1, "{:?}", p.b_events);
    assert_eq!(established(&p.a_events), 0);

    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    let sent = p.wire.len();
    p.a.create_child(p.now, PEER_A).unwrap();
    p.drive();
    assert_eq!(p.wire.len(), sent, "a Child SA is installed");
    assert_eq!(children_up(&p.a_events), 1);
}

#[test]
fn traffic_selector_mismatch() {
    let a = config_a();
    let mut b = mirror(&a);
    b.remote_ts = vec!["172.16.0.0/12".parse().unwrap()];
    let mut p = Pair::new(a, b);
    p.initiate_a();
    let fa = Pair::failures(&p.a_events);
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fa.len(), 1);
    assert_eq!(fa[0].0, Phase::Phase2);
    assert!(
        fa[0]
            .1
            .starts_with("traffic selectors unacceptable (TS_UNACCEPTABLE)"),
        "{}",
        fa[0].1
    );
    assert!(
        fb[0]
            .1
            .starts_with("traffic selectors unacceptable (TS_UNACCEPTABLE)"),
        "{}",
        fb[0].1
    );
    assert!(fb[0].1.contains("10.1.0.0/16"), "{}", fb[0].1);
}

#[test]
fn traffic_selector_narrowing() {
    let mut a = config_a();
    a.local_ts = vec!["10.0.0.0/8".parse().unwrap()];
    a.remote_ts = vec!["0.0.0.0/0".parse().unwrap()];
    let mut b = mirror(&a);
    b.local_ts = vec!["10.2.0.0/16".parse().unwrap()];
    b.remote_ts = vec!["10.1.0.0/16".parse().unwrap()];
    let mut p = Pair::new(a, b);
    p.initiate_a();
    p.assert_children_match();
    let c = &p.a.child_sas(PEER_A)[0];
    assert_eq!(c.local_ts[0].to_string(), "10.1.0.0/16");
    assert_eq!(c.remote_ts[0].to_string(), "10.2.0.0/16");
}

#[test]
fn lost_first_message_is_retransmitted() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.fate = Box::new(|pkt| {
        if pkt.seq == 0 {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.initiate_a();
    assert_eq!(established(&p.a_events), 0);
    p.advance(Duration::from_secs(3));
    assert_eq!(established(&p.a_events), 0);
    p.advance(Duration::from_secs(2));
    assert_eq!(established(&p.a_events), 1);
    assert_eq!(p.a.stats().retransmits, 1);
    p.assert_children_match();
}

#[test]
fn lost_responses_are_answered_from_cache() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    // Drop the IKE_AUTH response once: A retransmits and B answers from its cache.
    p.fate = Box::new(|pkt| {
        if pkt.seq == 3 {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.initiate_a();
    assert_eq!(established(&p.b_events), 1);
    assert_eq!(established(&p.a_events), 0);
    p.advance(Duration::from_secs(5));
    assert_eq!(established(&p.a_events), 1);
    assert_eq!(
        established(&p.b_events),
        1,
        "B must not process the request twice"
    );
    assert_eq!(p.b.stats().duplicate_requests, 1);
    p.assert_children_match();
}

#[test]
fn duplicated_and_reordered_datagrams() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.fate = Box::new(|_| Fate::Duplicate);
    p.initiate_a();
    assert_eq!(established(&p.a_events), 1);
    assert_eq!(established(&p.b_events), 1);
    assert_eq!(children_up(&p.b_events), 1);
    p.assert_children_match();
    assert!(p.b.stats().duplicate_requests >= 2);
    assert!(p.a.stats().unexpected >= 2, "{:?}", p.a.stats());

    // A stale IKE_SA_INIT copy arriving after IKE_AUTH, and a request delayed behind a
    // later one, do not disturb anything.
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.fate = Box::new(|pkt| {
        if pkt.seq == 0 {
            Fate::Duplicate
        } else {
            Fate::Deliver
        }
    });
    p.initiate_a();
    let stale = p.wire[0].clone();
    p.b.handle_datagram(p.now, stale.dst, stale.src, &stale.payload);
    p.drive();
    assert_eq!(established(&p.b_events), 1);
    p.a.rekey_child(p.now, PEER_A).unwrap();
    p.fate = Box::new(|pkt| {
        if pkt.to == Side::B {
            Fate::Delay(1)
        } else {
            Fate::Deliver
        }
    });
    p.b.rekey_ike(p.now, PEER_B).unwrap();
    p.drive();
    p.advance(Duration::from_secs(30));
    p.assert_children_match();
    p.assert_ike_match();
}

fn lifetimes(ike_s: u64, child_s: u64, pfs: Option<DhGroup>) -> Pair {
    let mut a = config_a();
    a.ike_lifetime = Duration::from_secs(ike_s);
    a.child_lifetime = Duration::from_secs(child_s);
    a.esp.pfs = pfs;
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    p.assert_children_match();
    p
}

fn rekeyed(events: &[Event]) -> usize {
    Pair::count(events, |e| matches!(e, Event::ChildSaRekeyed { .. }))
}

fn deleted(events: &[Event]) -> usize {
    Pair::count(events, |e| matches!(e, Event::ChildSaDeleted { .. }))
}

#[test]
fn child_rekey_on_lifetime_without_pfs() {
    let mut p = lifetimes(0, 3600, None);
    let old = p.a.child_sas(PEER_A)[0].clone();
    p.advance(Duration::from_secs(3060));
    assert_eq!(rekeyed(&p.a_events), 0);
    p.advance(Duration::from_secs(300));
    assert_eq!(rekeyed(&p.a_events), 1, "{:?}", p.a_events);
    assert_eq!(rekeyed(&p.b_events), 1);
    assert_eq!(deleted(&p.a_events), 1);
    assert_eq!(deleted(&p.b_events), 1);
    // Make-before-break: the rekey is announced before the old SA is deleted.
    let pos_rekey = p
        .a_events
        .iter()
        .position(|e| matches!(e, Event::ChildSaRekeyed { .. }))
        .unwrap();
    let pos_del = p
        .a_events
        .iter()
        .position(|e| matches!(e, Event::ChildSaDeleted { .. }))
        .unwrap();
    assert!(pos_rekey < pos_del);
    p.assert_children_match();
    let new = p.a.child_sas(PEER_A)[0].clone();
    assert_ne!(new.spi_in, old.spi_in);
    assert_ne!(new.encr_key_out, old.encr_key_out);
    // And again, for several lifetimes.
    p.advance(Duration::from_secs(3 * 3600));
    assert_eq!(rekeyed(&p.a_events), 4);
    p.assert_children_match();
}

/// The driver must know which side it was: the rekey responder cannot send on the new
/// SA before the initiator has installed it (RFC 7296 §2.8), the initiator can.
#[test]
fn child_rekey_event_says_who_initiated() {
    let mut p = lifetimes(0, 0, None);
    let initiators = |events: &[Event]| -> Vec<bool> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::ChildSaRekeyed { initiator, .. } => Some(*initiator),
                _ => None,
            })
            .collect()
    };
    p.a.rekey_child(p.now, PEER_A).unwrap();
    p.drive();
    assert_eq!(initiators(&p.a_events), vec![true]);
    assert_eq!(initiators(&p.b_events), vec![false]);
    p.b.rekey_child(p.now, PEER_B).unwrap();
    p.drive();
    assert_eq!(initiators(&p.a_events), vec![true, false]);
    assert_eq!(initiators(&p.b_events), vec![false, true]);
    // The responder learns that the initiator switched when the old SA is deleted:
    // that Delete comes after the rekey on both sides.
    let order = |events: &[Event]| -> Vec<&'static str> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::ChildSaRekeyed { .. } => Some("rekeyed"),
                Event::ChildSaDeleted { .. } => Some("deleted"),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        order(&p.b_events),
        ["rekeyed", "deleted", "rekeyed", "deleted"]
    );
    p.assert_children_match();
}

#[test]
fn child_rekey_with_pfs() {
    let mut p = lifetimes(0, 600, Some(DhGroup::Ecp256));
    p.advance(Duration::from_secs(600));
    assert_eq!(rekeyed(&p.a_events), 1, "{:?}", Pair::failures(&p.a_events));
    p.assert_children_match();
    assert_eq!(p.a.child_sas(PEER_A)[0].pfs, Some(DhGroup::Ecp256));
    // KE payloads went over the wire in the CREATE_CHILD_SA exchange (sizes grow).
    assert!(
        p.a_events
            .iter()
            .all(|e| !matches!(e, Event::NegotiationFailed { .. }))
    );
}

#[test]
fn pfs_mismatch_on_rekey_is_reported() {
    let mut a = config_a();
    a.child_lifetime = Duration::from_secs(600);
    a.esp.pfs = Some(DhGroup::Modp2048);
    let mut b = mirror(&a);
    b.esp.pfs = None;
    b.child_lifetime = Duration::ZERO;
    let mut p = Pair::new(a, b);
    p.initiate_a();
    p.assert_children_match();
    p.advance(Duration::from_secs(580));
    let fa = Pair::failures(&p.a_events);
    assert_eq!(fa.len(), 1, "{fa:?}");
    assert_eq!(fa[0].0, Phase::Phase2);
    assert!(fa[0].1.contains("NO_PROPOSAL_CHOSEN"), "{}", fa[0].1);
    // At the hard lifetime the old Child SA is deleted.
    p.advance(Duration::from_secs(60));
    assert!(p.a.child_sas(PEER_A).is_empty());
    assert!(p.b.child_sas(PEER_B).is_empty());
}

#[test]
fn ike_rekey_on_lifetime_moves_children() {
    let mut p = lifetimes(3600, 0, None);
    let before = p.a.ike_sas(PEER_A)[0];
    let child = p.a.child_sas(PEER_A)[0].clone();
    p.advance(Duration::from_secs(3600));
    let rk = |e: &Event| matches!(e, Event::IkeSaRekeyed { .. });
    assert_eq!(Pair::count(&p.a_events, rk), 1, "{:?}", p.a_events);
    assert_eq!(Pair::count(&p.b_events, rk), 1, "{:?}", p.b_events);
    p.assert_ike_match();
    assert_ne!(p.a.ike_sas(PEER_A)[0], before);
    assert_eq!(p.a.child_sas(PEER_A), vec![child]);
    assert_eq!(deleted(&p.a_events), 0);
    // The new IKE SA works: rekey the child over it.
    p.a.rekey_child(p.now, PEER_A).unwrap();
    p.drive();
    assert_eq!(rekeyed(&p.b_events), 1);
    p.assert_children_match();
    let del = |e: &Event| {
        matches!(
            e,
            Event::IkeSaDeleted {
                reason: DeleteReason::Rekeyed,
                ..
            }
        )
    };
    assert_eq!(Pair::count(&p.a_events, del), 1);
    assert_eq!(Pair::count(&p.b_events, del), 1);
}

#[test]
fn simultaneous_child_rekey_leaves_one_pair() {
    for seed in 1..6 {
        let a = config_a();
        let mut p = Pair::with_seed(a.clone(), mirror(&a), seed);
        p.initiate_a();
        p.a.rekey_child(p.now, PEER_A).unwrap();
        p.b.rekey_child(p.now, PEER_B).unwrap();
        p.drive();
        p.assert_children_match();
        assert!(
            p.a_events.iter().any(|e| matches!(
                e,
                Event::Log {
                    event: "rekey_collision",
                    ..
                }
            )),
            "seed {seed}"
        );
        assert!(Pair::failures(&p.a_events).is_empty());
        assert!(Pair::failures(&p.b_events).is_empty());
    }
}

#[test]
fn simultaneous_ike_rekey_leaves_one_sa() {
    for seed in 1..6 {
        let a = config_a();
        let mut p = Pair::with_seed(a.clone(), mirror(&a), seed);
        p.initiate_a();
        let child = p.a.child_sas(PEER_A)[0].clone();
        p.a.rekey_ike(p.now, PEER_A).unwrap();
        p.b.rekey_ike(p.now, PEER_B).unwrap();
        p.drive();
        p.assert_ike_match();
        assert_eq!(p.a.child_sas(PEER_A), vec![child], "seed {seed}");
        p.assert_children_match();
        // The redundant IKE SA's deletion is not the tunnel's: the node would take a
        // PeerDeleted for it as the tunnel going down and renegotiate.
        assert_no_tunnel_down(&p, &format!("seed {seed}"));
        // Still usable.
        p.b.rekey_child(p.now, PEER_B).unwrap();
        p.drive();
        p.assert_children_match();
        assert_eq!(rekeyed(&p.a_events), 1, "seed {seed}");
    }
}

/// Both ends initiate in the same instant (RFC 7296 has no rule for it; both pick the
/// IKE SA with the lowest IKE_SA_INIT nonce as redundant, as §2.8.1 does for rekeys):
/// one IKE SA and one Child SA pair remain, the same on both sides, whatever the seed.
#[test]
fn simultaneous_initiation_leaves_one_ike_sa() {
    let mut kept_initiated_by_a = 0;
    for seed in 1..=12 {
        let a = config_a();
        let mut p = Pair::with_seed(a.clone(), mirror(&a), seed);
        p.a.initiate(p.now, PEER_A).unwrap();
        p.b.initiate(p.now, PEER_B).unwrap();
        p.drive();
        // Both IKE SAs came up on both sides before one was resolved away.
        assert_eq!(
            established(&p.a_events),
            2,
            "seed {seed}: {:#?}",
            p.a_events
        );
        assert_eq!(established(&p.b_events), 2, "seed {seed}");
        p.assert_ike_match();
        p.assert_children_match();
        let dup = |e: &Event| {
            matches!(
                e,
                Event::IkeSaDeleted {
                    reason: DeleteReason::Duplicate,
                    ..
                }
            )
        };
        assert_eq!(Pair::count(&p.a_events, dup), 1, "seed {seed}");
        assert_eq!(Pair::count(&p.b_events, dup), 1, "seed {seed}");
        assert_eq!(
            deleted(&p.a_events),
            1,
            "seed {seed}: the redundant Child SA"
        );
        assert_eq!(deleted(&p.b_events), 1, "seed {seed}");
        assert!(Pair::failures(&p.a_events).is_empty(), "seed {seed}");
        assert!(Pair::failures(&p.b_events).is_empty(), "seed {seed}");
        let (spi_i, _) = p.a.ike_sas(PEER_A)[0];
        let a_initiated = p.a_events.iter().any(|e| {
            matches!(e, Event::IkeSaEstablished { spi_i: s, initiator: true, .. } if *s == spi_i)
        });
        kept_initiated_by_a += usize::from(a_initiated);
        // The survivor is a working IKE SA: it rekeys its Child SA, and nothing else
        // is left behind (no timers for a stale SA after it settles).
        p.b.rekey_child(p.now, PEER_B).unwrap();
        p.drive();
        p.assert_children_match();
        p.advance(Duration::from_secs(120));
        p.assert_ike_match();
        p.assert_children_match();
        assert!(p.a.poll_timeout().is_none() && p.b.poll_timeout().is_none());
    }
    // The rule does not always favour one side.
    assert!(
        (1..12).contains(&kept_initiated_by_a),
        "{kept_initiated_by_a}"
    );
}

/// B re-authenticates make-before-break (RFC 7296 §2.8.3), as strongSwan does: a new
/// IKE SA from IKE_SA_INIT with its Child SA beside the established ones, then a Delete
/// of the old IKE SA. When A initiated the old one, the roles make the pair look like a
/// simultaneous initiation to A, and its lowest-nonce rule may pick either: the new one
/// (A waits for a Delete of it, gets one of the old one instead, and keeps the new one)
/// or the old one (A would delete it, but first gives B a moment to). Either way one
/// IKE SA stays, the new one, and A never reports the tunnel down. The same when B
/// makes the new IKE SA childless (RFC 6023, strongSwan's `childless = force`) and its
/// Child SA with CREATE_CHILD_SA: A takes that Child SA even on an IKE SA it already
/// picked as the redundant one.
#[test]
fn a_peer_that_reauthenticates_make_before_break_keeps_the_tunnel() {
    for childless in [false, true] {
        reauthenticate_make_before_break(childless);
    }
}

#[allow(clippy::unwrap_used)] // a test body, shared by the two variants
fn reauthenticate_make_before_break(childless: bool) {
    let mut picked = [0; 2];
    for seed in 1..=10 {
        for a_initiated in [true, false] {
            let a = config_a();
            let mut p = Pair::with_seed(a.clone(), mirror(&a), seed);
            if a_initiated {
                p.initiate_a();
            } else {
                p.initiate_b();
            }
            let old = p.b.ike_sas(PEER_B)[0];
            p.advance(Duration::from_secs(60));
            let sent = p.wire.len();
            if childless {
                p.b.initiate_childless_beside(p.now, PEER_B).unwrap();
            } else {
                p.b.initiate_beside(p.now, PEER_B).unwrap();
            }
            p.drive();
            let exchanges: Vec<ExchangeType> = p.wire[sent..]
                .iter()
                .map(|pkt| Message::decode(&pkt.payload).unwrap().header.exchange)
                .collect();
            assert_eq!(
                exchanges.contains(&ExchangeType::CREATE_CHILD_SA),
                childless,
                "{exchanges:?}"
            );
            let new = *p.b.ike_sas(PEER_B).iter().find(|s| **s != old).unwrap();
            // A answered the new IKE_AUTH: it did not initiate the new Child SA, which
            // tells the node to keep sending on the old one for now.
            assert!(
                matches!(
                    p.a_events
                        .iter()
                        .rev()
                        .find(|e| matches!(e, Event::ChildSaEstablished { .. })),
                    Some(Event::ChildSaEstablished {
                        initiator: false,
                        ..
                    })
                ),
                "{:#?}",
                p.a_events
            );
            // A does not delete the old one itself: it leaves that to B for a moment.
            assert!(p.b.delete_ike_sa(p.now, PEER_B, old));
            p.drive();
            let gone = |reason: DeleteReason| {
                move |e: &Event| {
                    matches!(e, Event::IkeSaDeleted { spi_i, spi_r, reason: r, .. }
                        if (*spi_i, *spi_r) == old && *r == reason)
                }
            };
            let handed_over = Pair::count(&p.a_events, gone(DeleteReason::Reauthenticated));
            let redundant = Pair::count(&p.a_events, gone(DeleteReason::Duplicate));
            assert_eq!(
                handed_over + redundant,
                1,
                "seed {seed}, a_initiated {a_initiated}: {:#?}",
                p.a_events
            );
            picked[redundant] += 1;
            assert_eq!(p.a.ike_sas(PEER_A), vec![new]);
            p.assert_ike_match();
            p.assert_children_match();
            assert_eq!(p.a.child_sas(PEER_A).len(), 1);
            // The new IKE SA lives on: it rekeys itself and its Child SA on lifetimes.
            p.advance(Duration::from_secs(6 * 3600));
            p.assert_ike_match();
            p.assert_children_match();
            assert_eq!(p.a.ike_sas(PEER_A).len(), 1);
            // On A, every other IKE SA that went was replaced by a rekey.
            let down = |e: &Event| {
                matches!(e, Event::IkeSaDeleted { reason, .. }
                    if !matches!(reason, DeleteReason::Rekeyed | DeleteReason::Reauthenticated | DeleteReason::Duplicate))
            };
            assert_eq!(Pair::count(&p.a_events, down), 0, "{:#?}", p.a_events);
        }
    }
    // Both of A's choices were taken.
    assert!(
        picked.iter().all(|&n| n > 0),
        "childless {childless}: {picked:?}"
    );
}

/// A simultaneous initiation where A's IKE_SA_INIT is lost: B's IKE SA is up on both
/// ends before A's retransmission arrives. B cannot tell that from a re-authentication
/// (a second IKE SA started while the first was up); A saw both negotiations overlap
/// and applies the lowest-nonce rule. Whichever IKE SA the rule picks, its initiator
/// deletes it within seconds, and both ends keep the same single IKE SA.
#[test]
fn a_late_retry_of_a_simultaneous_initiation_leaves_one_ike_sa() {
    let mut kept_initiated_by_a = [0; 2];
    for seed in 1..=12 {
        let a = config_a();
        let mut p = Pair::with_seed(a.clone(), mirror(&a), seed);
        p.fate = Box::new(|pkt| {
            if pkt.seq == 0 {
                Fate::Drop
            } else {
                Fate::Deliver
            }
        });
        p.a.initiate(p.now, PEER_A).unwrap();
        p.drive();
        p.initiate_b();
        assert_eq!(p.a.ike_sas(PEER_A).len(), 1, "seed {seed}");
        // A retransmits its IKE_SA_INIT (first after 4 s) and that IKE SA comes up too.
        p.advance(Duration::from_secs(5));
        assert_eq!(
            established(&p.a_events),
            2,
            "seed {seed}: {:#?}",
            p.a_events
        );
        p.advance(Duration::from_secs(5));
        assert_eq!(
            p.a.ike_sas(PEER_A).len(),
            1,
            "seed {seed}: {:#?}",
            p.a_events
        );
        p.assert_ike_match();
        p.assert_children_match();
        assert_eq!(p.a.child_sas(PEER_A).len(), 1, "seed {seed}");
        assert_no_tunnel_down(&p, "late retry");
        let (spi_i, _) = p.a.ike_sas(PEER_A)[0];
        let a_initiated = p.a_events.iter().any(|e| {
            matches!(e, Event::IkeSaEstablished { spi_i: s, initiator: true, .. } if *s == spi_i)
        });
        kept_initiated_by_a[usize::from(a_initiated)] += 1;
    }
    assert!(
        kept_initiated_by_a.iter().all(|&n| n > 0),
        "{kept_initiated_by_a:?}"
    );
}

/// B allows only part of A's remote subnets: the Child SA comes up narrowed (RFC 7296
/// §2.9), and A, whose traffic for the rest will be dropped, says so with both sides'
/// selectors. IKEv1 has no narrowing; there B proposes its smaller IDs itself.
#[test]
fn a_child_sa_narrower_than_the_tunnel_is_reported() {
    for v1 in [false, true] {
        let a = if v1 {
            config_v1(ike::V1Mode::Main)
        } else {
            config_a()
        };
        let mut b = mirror(&a);
        b.local_ts = vec!["10.2.1.0/24".parse().unwrap()];
        let mut p = Pair::new(a, b);
        let narrowed = |events: &[Event]| {
            events.iter().find_map(|e| match e {
                Event::Log { event, message, .. } if *event == "ts_narrowed" => {
                    Some(message.clone())
                }
                _ => None,
            })
        };
        if v1 {
            // Our IKEv1 initiator proposes the tunnel's IDs, which B would refuse.
            p.initiate_b();
        } else {
            p.initiate_a();
        }
        p.assert_children_match();
        let note = narrowed(&p.a_events).unwrap_or_else(|| panic!("v1 {v1}: {:#?}", p.a_events));
        assert!(
            note.contains("10.1.0.0/16 === 10.2.1.0/24")
                && note.contains("less than the tunnel's 10.1.0.0/16 === 10.2.0.0/16"),
            "{note}"
        );
        // B got all it asked for.
        assert_eq!(narrowed(&p.b_events), None, "v1 {v1}");
    }
}

#[test]
fn dpd_declares_silent_peer_dead() {
    let mut a = config_a();
    a.dpd_interval = Some(Duration::from_secs(30));
    a.dpd_timeout = Duration::from_secs(120);
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    // Liveness checks are answered while B is there.
    p.advance(Duration::from_secs(100));
    assert!(p.a.stats().datagrams_out >= 5);
    assert!(
        !p.a_events
            .iter()
            .any(|e| matches!(e, Event::PeerDead { .. })),
        "{:#?}",
        p.a_events
    );
    // B goes silent.
    p.fate = Box::new(|pkt| {
        if pkt.to == Side::A {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let silent_at = p.elapsed();
    // Last answer at 90 s, next check at 120 s, dead 120 s (dpd_timeout) later.
    p.advance(Duration::from_secs(135));
    assert!(
        !p.a_events
            .iter()
            .any(|e| matches!(e, Event::PeerDead { .. }))
    );
    p.advance(Duration::from_secs(10));
    let dead = p
        .a_events
        .iter()
        .position(|e| matches!(e, Event::PeerDead { .. }));
    assert!(
        dead.is_some(),
        "not dead after {:?}",
        p.elapsed() - silent_at
    );
    let deleted = p.a_events.iter().position(|e| {
        matches!(
            e,
            Event::IkeSaDeleted {
                reason: DeleteReason::PeerDead,
                ..
            }
        )
    });
    // The verdict comes last (as in IKEv1): a driver that shows the latest reason
    // shows that DPD declared the peer dead, and for how long it was silent.
    assert!(deleted < dead, "{:#?}", p.a_events);
    let Some(Event::PeerDead { reason, .. }) = dead.map(|i| &p.a_events[i]) else {
        unreachable!()
    };
    assert!(
        reason.starts_with("DPD: peer 198.51.100.2:500 did not answer for 1"),
        "{reason}"
    );
    assert!(p.a.child_sas(PEER_A).is_empty());
    assert!(p.a.poll_timeout().is_none());
}

#[test]
fn nat_detected_and_port_4500_used() {
    let a = config_a();
    let mut b = mirror(&a);
    b.remote = Some(sock(NAT_IP, 500)); // what B sees
    let mut p = Pair::with_nat(a, b);
    p.initiate_a();
    p.assert_children_match();
    let ca = &p.a.child_sas(PEER_A)[0];
    let cb = &p.b.child_sas(PEER_B)[0];
    assert!(ca.udp_encap && cb.udp_encap);
    assert!(ca.local_behind_nat);
    assert!(!cb.local_behind_nat);
    assert_eq!(ca.local, sock(A_PRIVATE, 4500));
    assert_eq!(ca.remote, sock(B_IP, 4500));
    assert_eq!(cb.local, sock(B_IP, 4500));
    assert_eq!(cb.remote, sock(NAT_IP, 44500));
    // IKE_AUTH went over 4500 in both directions.
    assert_eq!(p.wire[2].dst.port(), 4500);
    assert_eq!(p.wire[3].src.port(), 4500);
    // Later exchanges too.
    p.a.rekey_child(p.now, PEER_A).unwrap();
    p.drive();
    assert!(
        p.wire[4..]
            .iter()
            .all(|w| w.src.port() == 4500 || w.dst.port() == 4500)
    );
    p.assert_children_match();
}

#[test]
fn no_nat_without_nat_traversal() {
    let mut a = config_a();
    a.nat_traversal = false;
    let mut b = mirror(&a);
    b.remote = Some(sock(NAT_IP, 500));
    let mut p = Pair::with_nat(a, b);
    p.initiate_a();
    p.assert_children_match();
    assert!(!p.a.child_sas(PEER_A)[0].udp_encap);
    assert!(
        p.wire
            .iter()
            .all(|w| w.src.port() != 4500 && w.dst.port() != 4500)
    );
}

#[test]
fn responder_any_peer_matched_by_identity() {
    let mut a = config_a();
    a.local_id = Identity::Fqdn("branch.example".into());
    let mut b = mirror(&a);
    b.remote = None;
    // A second "any" peer with another identity and PSK must not be picked.
    let mut other = b.clone();
    other.remote_id = Identity::Fqdn("other.example".into());
    other.psk = Psk::new("other");
    let mut p = Pair::new(a, b);
    p.b.add_peer(ike::PeerId(99), other).unwrap();
    p.initiate_a();
    p.assert_children_match();
    assert!(p.b.initiate(p.now, PEER_B).is_ok()); // already up: no-op
    let mut q = Pair::new(config_a(), {
        let mut b = mirror(&config_a());
        b.remote = None;
        b
    });
    assert!(matches!(
        q.b.initiate(q.now, PEER_B),
        Err(ike::Error::ResponderOnly(_))
    ));
    q.drive();
}

#[test]
fn remove_peer_deletes_sas_at_the_peer() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    p.a.remove_peer(p.now, PEER_A).unwrap();
    p.drive();
    assert!(p.b_events.iter().any(|e| matches!(
        e,
        Event::IkeSaDeleted {
            reason: DeleteReason::PeerDeleted,
            ..
        }
    )));
    assert_eq!(deleted(&p.b_events), 1);
    assert!(p.b.child_sas(PEER_B).is_empty());
    assert!(p.a_events.iter().any(|e| matches!(
        e,
        Event::IkeSaDeleted {
            reason: DeleteReason::LocalRequest,
            ..
        }
    )));
}

#[test]
fn reset_renegotiates_and_initial_contact_clears_stale_sas() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    // The Delete is lost: B only learns from INITIAL_CONTACT.
    p.fate = Box::new(|pkt| {
        if pkt.seq == 4 {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.a.reset(p.now, PEER_A).unwrap();
    p.drive();
    assert_eq!(established(&p.a_events), 2);
    assert!(p.b_events.iter().any(|e| matches!(
        e,
        Event::IkeSaDeleted {
            reason: DeleteReason::InitialContact,
            ..
        }
    )));
    p.assert_ike_match();
    p.assert_children_match();
}

#[test]
fn update_peer_renegotiates() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    let mut a2 = a.clone();
    a2.esp.encr = Encr::AesGcm16_256;
    let mut b2 = mirror(&a2);
    b2.esp.encr = Encr::AesGcm16_256;
    // B is responder-only now: it drops its SAs and waits; A renegotiates.
    b2.remote = None;
    p.b.update_peer(p.now, PEER_B, b2).unwrap();
    p.drive();
    p.a.update_peer(p.now, PEER_A, a2).unwrap();
    // B's Delete already removed A's SAs, so A only renegotiates when told to.
    assert!(p.a.ike_sas(PEER_A).is_empty());
    p.a.initiate(p.now, PEER_A).unwrap();
    p.drive();
    assert!(p.b_events.iter().any(|e| matches!(
        e,
        Event::IkeSaDeleted {
            reason: DeleteReason::LocalRequest,
            ..
        }
    )));
    p.assert_children_match();
    assert_eq!(p.a.child_sas(PEER_A)[0].encr, Encr::AesGcm16_256);
    assert_eq!(p.a.child_sas(PEER_A)[0].integ, None);
}

/// An IKE_SA_INIT request as another initiator would send it: `sa`, a KE of
/// (group, length) with a dummy value, a nonce, then `extra`.
fn init_request(
    spi_i: u64,
    sa: ike::wire::SaPayload,
    ke: (u16, usize),
    extra: Vec<Payload>,
) -> Message {
    let mut payloads = vec![
        Payload::Sa(sa),
        Payload::Ke(KeyExchange {
            group: ke.0,
            data: vec![7; ke.1],
        }),
        Payload::Nonce(vec![1; 32]),
    ];
    payloads.extend(extra);
    Message {
        header: ike::wire::HeaderRepr {
            spi_i,
            spi_r: 0,
            next_payload: PayloadType::NONE,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: ike::wire::Flags(ike::wire::Flags::INITIATOR),
            message_id: 0,
            length: 0,
        },
        payloads,
    }
}

#[test]
fn responder_asks_for_its_dh_group() {
    // A strongSwan-like initiator offers two groups and guesses the wrong one first.
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    let mut sa = ike::proposal::ike_offer(&a.ike, None);
    sa.proposals[0].transforms.push(ike::wire::Transform::new(
        ike::wire::registry::TransformType::DH,
        14,
        None,
    ));
    let mut msg = init_request(
        42,
        sa,
        (14, 256),
        vec![Payload::Notify(Notify::new(
            NotifyType::MULTIPLE_AUTH_SUPPORTED,
            vec![],
        ))],
    );
    p.b.handle_datagram(p.now, sock(B_IP, 500), sock(A_IP, 500), &msg.encode());
    let t = p.b.poll_transmit().expect("an answer");
    let m = Message::decode(&t.payload).unwrap();
    assert!(m.header.flags.response());
    assert_eq!(
        m.payloads,
        vec![Payload::Notify(Notify::new(
            NotifyType::INVALID_KE_PAYLOAD,
            vec![0, 2]
        ))]
    );
    // Every such message is answered; the tunnel logs one per 10 s (anyone can send
    // them, and each log row is stored).
    for spi_i in 43..48 {
        msg.header.spi_i = spi_i;
        p.b.handle_datagram(p.now, sock(B_IP, 500), sock(A_IP, 500), &msg.encode());
        assert!(p.b.poll_transmit().is_some());
    }
    p.collect_events();
    let logged = |p: &Pair| {
        Pair::count(
            &p.b_events,
            |e| matches!(e, Event::Log { event, .. } if *event == "invalid_ke"),
        )
    };
    assert_eq!(logged(&p), 1);
    p.now += Duration::from_secs(10);
    p.b.handle_datagram(p.now, sock(B_IP, 500), sock(A_IP, 500), &msg.encode());
    p.collect_events();
    assert_eq!(logged(&p), 2);
}

/// An IKE_SA_INIT from a strongSwan 6-like initiator with an additional key exchange
/// (RFC 9370 transform type 6, ML-KEM-768): a transform type this engine does not know
/// makes that proposal unacceptable (RFC 7296 §3.3.6), the reason names it as strongSwan
/// does and says what to change; a second proposal without it is chosen.
#[test]
fn proposals_with_unknown_transform_types_are_refused_and_named() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    let addke = ike::wire::Transform::new(ike::wire::registry::TransformType(6), 36, None);
    let mut pq = ike::proposal::ike_offer(&a.ike, None);
    pq.proposals[0].transforms.push(addke);
    let init = |sa, spi_i| init_request(spi_i, sa, (2, 128), vec![]).encode();
    p.b.handle_datagram(
        p.now,
        sock(B_IP, 500),
        sock(A_IP, 500),
        &init(pq.clone(), 42),
    );
    let m = Message::decode(&p.b.poll_transmit().expect("an answer").payload).unwrap();
    assert_eq!(
        m.payloads,
        vec![Payload::Notify(Notify::new(
            NotifyType::NO_PROPOSAL_CHOSEN,
            vec![]
        ))]
    );
    p.collect_events();
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert!(
        fb[0].1.starts_with(
            "peer proposed aes128-sha1-modp1024-ke1_mlkem768; this tunnel allows \
             aes128-sha1-modp1024 (the peer's matching proposal also requires transform \
             types vpngw does not support"
        ),
        "{}",
        fb[0].1
    );

    // The same proposal first, then one without the additional key exchange.
    let mut both = pq;
    let mut plain = ike::proposal::ike_offer(&a.ike, None).proposals.remove(0);
    plain.num = 2;
    both.proposals.push(plain);
    p.b.handle_datagram(p.now, sock(B_IP, 500), sock(A_IP, 500), &init(both, 43));
    let m = Message::decode(&p.b.poll_transmit().expect("an answer").payload).unwrap();
    let Some(Payload::Sa(chosen)) = m.payloads.first() else {
        panic!("{m:?}")
    };
    assert_eq!(chosen.proposals.len(), 1);
    assert_eq!(chosen.proposals[0].num, 2, "{chosen:?}");
}

#[test]
fn initiator_repeats_init_with_cookie() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.a.initiate(p.now, PEER_A).unwrap();
    let first = p.a.poll_transmit().unwrap();
    let req = Message::decode(&first.payload).unwrap();
    let mut h = req.header;
    h.flags = ike::wire::Flags(ike::wire::Flags::RESPONSE);
    let cookie = Message {
        header: h,
        payloads: vec![Payload::Notify(Notify::new(
            NotifyType::COOKIE,
            vec![0xc0; 16],
        ))],
    };
    p.a.handle_datagram(p.now, first.local, first.remote, &cookie.encode());
    p.drive();
    let second = Message::decode(&p.wire[0].payload).unwrap();
    assert_eq!(
        second.payloads[0],
        Payload::Notify(Notify::new(NotifyType::COOKIE, vec![0xc0; 16]))
    );
    assert_eq!(second.payloads[1..], req.payloads[..]);
    assert_eq!(established(&p.a_events), 1);
    p.assert_children_match();
}

#[test]
fn wire_format_details_strongswan_relies_on() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    let init = Message::decode(&p.wire[0].payload).unwrap();
    let types: Vec<PayloadType> = init.payloads.iter().map(Payload::ptype).collect();
    assert_eq!(
        types,
        [
            PayloadType::SA,
            PayloadType::KE,
            PayloadType::NONCE,
            PayloadType::NOTIFY,
            PayloadType::NOTIFY
        ]
    );
    let Payload::Sa(sa) = &init.payloads[0] else {
        panic!()
    };
    assert_eq!(sa.proposals[0].transforms[0].key_length(), Some(128));
    let Payload::Notify(n) = &init.payloads[3] else {
        panic!()
    };
    assert_eq!(n.ntype, NotifyType::NAT_DETECTION_SOURCE_IP);
    assert_eq!(n.data.len(), 20);
    let auth = Message::decode(&p.wire[2].payload).unwrap();
    assert_eq!(auth.header.exchange, ExchangeType::IKE_AUTH);
    assert_eq!(auth.header.message_id, 1);
    assert!(matches!(auth.payloads.as_slice(), [Payload::Sk(e)] if e.first == PayloadType::IDI));
    // The key length attribute encodes as a TV attribute.
    assert!(sa.encoded().windows(4).any(|w| w == [0x80, 14, 0, 128]));
}

#[test]
fn debug_output_never_shows_secrets() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    let c = &p.a.child_sas(PEER_A)[0];
    let key_hex: String = c
        .encr_key_out
        .as_slice()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let key_dec = format!("{:?}", c.encr_key_out.as_slice());
    for s in [
        format!("{c:?}"),
        format!("{:?}", p.a_events),
        format!("{a:?}"),
    ] {
        assert!(
            !s.contains(&key_hex) && !s.contains(&key_dec[1..key_dec.len() - 1]),
            "{s}"
        );
        assert!(!s.contains("correct horse"), "{s}");
    }
}

#[test]
fn lost_delete_after_ike_rekey_still_moves_children() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    let child = p.a.child_sas(PEER_A)[0].clone();
    // Everything A sends after the rekey exchange (its Delete and retransmissions) is lost.
    p.fate = Box::new(|pkt| {
        if pkt.seq >= 6 && pkt.to == Side::B {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.a.rekey_ike(p.now, PEER_A).unwrap();
    p.drive();
    assert_eq!(p.b.child_sas(PEER_B).len(), 1);
    p.fate = Box::new(|pkt| {
        if pkt.seq < 12 && pkt.to == Side::B {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.advance(Duration::from_secs(400));
    p.assert_ike_match();
    assert_eq!(p.a.child_sas(PEER_A), vec![child]);
    p.assert_children_match();
    assert!(
        p.b_events
            .iter()
            .any(|e| matches!(e, Event::IkeSaRekeyed { .. }))
    );
    // The moved Child SA still rekeys on the new IKE SA.
    p.b.rekey_child(p.now, PEER_B).unwrap();
    p.drive();
    p.assert_children_match();
    assert_eq!(rekeyed(&p.a_events), 1);
}

#[test]
fn child_rekey_during_ike_rekey_gets_temporary_failure_and_retries() {
    for seed in 1..4 {
        let a = config_a();
        let mut p = Pair::with_seed(a.clone(), mirror(&a), seed);
        p.initiate_a();
        p.a.rekey_ike(p.now, PEER_A).unwrap();
        p.b.rekey_child(p.now, PEER_B).unwrap();
        p.drive();
        p.advance(Duration::from_secs(30));
        p.assert_ike_match();
        p.assert_children_match();
        assert_eq!(
            Pair::count(&p.a_events, |e| matches!(e, Event::IkeSaRekeyed { .. })),
            1,
            "seed {seed} {:#?} {:#?}",
            p.a_events,
            p.b_events
        );
        let logs: Vec<String> = p
            .a_events
            .iter()
            .chain(&p.b_events)
            .filter_map(|e| match e {
                Event::Log { event, message, .. } => Some(format!("{event}: {message}")),
                _ => None,
            })
            .collect();
        assert_eq!(rekeyed(&p.a_events), 1, "seed {seed} {logs:#?}");
        assert!(Pair::failures(&p.a_events).is_empty() && Pair::failures(&p.b_events).is_empty());
        assert!(
            p.b_events.iter().chain(&p.a_events).any(|e| matches!(
                e,
                Event::Log {
                    event: "temporary_failure",
                    ..
                }
            )),
            "seed {seed}"
        );
    }
}

#[test]
fn identity_mismatches_are_reported() {
    // The responder's identity is not what the initiator expects.
    let a = config_a();
    let mut b = mirror(&a);
    b.local_id = Identity::Fqdn("wrong.example".into());
    let mut p = Pair::new(a.clone(), b);
    p.initiate_a();
    let fa = Pair::failures(&p.a_events);
    assert_eq!(
        fa,
        vec![(
            Phase::Phase1,
            "peer identity wrong.example does not match the configured remote id 198.51.100.2"
                .to_string()
        )]
    );
    let fb = Pair::failures(&p.b_events);
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert!(fb[0].1.starts_with("authentication failed"), "{}", fb[0].1);
    assert!(p.b_events.iter().any(|e| matches!(
        e,
        Event::IkeSaDeleted {
            reason: DeleteReason::Failed,
            ..
        }
    )));
    assert!(p.b.child_sas(PEER_B).is_empty() && p.b.ike_sas(PEER_B).is_empty());

    // The initiator's identity is not what the responder expects.
    let mut a2 = config_a();
    a2.local_id = Identity::Fqdn("branch.example".into());
    let b2 = mirror(&config_a());
    let mut p = Pair::new(a2, b2);
    p.initiate_a();
    let fb = Pair::failures(&p.b_events);
    assert_eq!(
        fb,
        vec![(
            Phase::Phase1,
            "peer identity branch.example does not match the configured remote id 192.0.2.1"
                .to_string()
        )]
    );
    let fa = Pair::failures(&p.a_events);
    assert_eq!(fa.len(), 1);
    assert!(fa[0].1.contains("AUTHENTICATION_FAILED"), "{}", fa[0].1);
}

/// Behind a NAT IKE moves to UDP 4500 after IKE_SA_INIT (RFC 7296 §2.23). A firewall
/// that drops UDP 4500 leaves IKE_AUTH unanswered, and the reason says where to look.
#[test]
fn an_unanswered_ike_auth_on_udp_4500_names_the_port() {
    let a = config_a();
    let mut b = mirror(&a);
    b.remote = Some(sock(NAT_IP, 500)); // what B sees
    let mut p = Pair::with_nat(a, b);
    p.fate = drop_udp_4500();
    p.initiate_a();
    p.advance(Duration::from_secs(170));
    let fa = Pair::failures(&p.a_events);
    assert_eq!(fa.len(), 1, "{fa:?}");
    assert!(
        fa[0]
            .1
            .starts_with("peer 198.51.100.2:4500 did not respond to IKE_AUTH"),
        "{}",
        fa[0].1
    );
    assert!(
        fa[0]
            .1
            .contains("nothing came back on UDP 4500, where IKE moved because a NAT"),
        "{}",
        fa[0].1
    );
    // The responder, which answered the first messages, says the same from its end.
    assert_responder_named_udp_4500(&p.b_events);
}

/// The reasons of [`Event::Unanswered`] in `events`.
fn unanswered(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Unanswered { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

/// A Child SA negotiated on an IKE SA that has none (the tunnel waits for it) says that
/// it goes unanswered from its second retransmission on, as the first exchanges do; a
/// rekey beside working SAs does not.
#[test]
fn an_unanswered_create_child_sa_says_so_before_the_verdict() {
    let a = config_a();
    let mut p = ike_sa_without_child(&a);
    p.fate = Box::new(|_| Fate::Drop);
    p.a_events.clear();
    p.a.create_child(p.now, PEER_A).unwrap();
    p.advance(Duration::from_secs(11));
    assert!(unanswered(&p.a_events).is_empty());
    p.advance(Duration::from_secs(1));
    let u = unanswered(&p.a_events);
    assert_eq!(u.len(), 1, "{:?}", p.a_events);
    assert!(
        u[0].starts_with(
            "no answer yet from 198.51.100.2:500 to CREATE_CHILD_SA (sent 3 times): the \
             peer answered on this IKE SA before;"
        ),
        "{}",
        u[0]
    );

    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    p.fate = Box::new(|_| Fate::Drop);
    p.a_events.clear();
    p.a.rekey_child(p.now, PEER_A).unwrap();
    p.advance(Duration::from_secs(60));
    assert!(p.a.stats().retransmits >= 3);
    assert!(unanswered(&p.a_events).is_empty(), "{:?}", p.a_events);
}

#[test]
fn unanswered_init_gives_up_after_retransmissions() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.fate = Box::new(|_| Fate::Drop);
    p.initiate_a();
    // From the second retransmission (11.2 s) on, the tunnel can say what it waits for.
    p.advance(Duration::from_secs(11));
    assert!(unanswered(&p.a_events).is_empty());
    p.advance(Duration::from_secs(1));
    let u = unanswered(&p.a_events);
    assert_eq!(u.len(), 1);
    assert!(
        u[0].starts_with(
            "no answer yet from 198.51.100.2:500 to IKE_SA_INIT (sent 3 times): nothing \
             came back from 198.51.100.2;"
        ),
        "{}",
        u[0]
    );
    p.advance(Duration::from_secs(148));
    assert_eq!(unanswered(&p.a_events).len(), 4);
    assert!(Pair::failures(&p.a_events).is_empty());
    p.advance(Duration::from_secs(10));
    let fa = Pair::failures(&p.a_events);
    assert_eq!(
        fa,
        vec![(
            Phase::Phase1,
            "peer 198.51.100.2:500 did not respond to IKE_SA_INIT (5 retransmissions): \
             nothing came back from 198.51.100.2; check that the device is reachable there \
             over UDP 500 and 4500 (firewalls, ACLs) and has a connection for this \
             gateway's address 192.0.2.1"
                .to_string()
        )]
    );
    // 4 s, then ×1.8 each time: 0, 4, 11.2, 24.16, 47.5, 89.5 s.
    let times: Vec<u128> = p.wire.iter().map(|w| w.at.as_millis()).collect();
    assert_eq!(times, [0, 4000, 11200, 24160, 47488, 89478]);
    assert_eq!(p.a.stats().retransmits, 5);
    assert!(p.a.poll_timeout().is_none());
}

#[test]
fn esp_activity_suppresses_liveness_checks() {
    let mut a = config_a();
    a.dpd_interval = Some(Duration::from_secs(30));
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    let sent = p.a.stats().datagrams_out;
    for _ in 0..10 {
        p.advance(Duration::from_secs(20));
        let now = p.now;
        p.a.handle_child_activity(now, PEER_A);
        p.b.handle_child_activity(now, PEER_B);
    }
    assert_eq!(p.a.stats().datagrams_out, sent, "no DPD while ESP flows");
    p.advance(Duration::from_secs(31));
    assert!(p.a.stats().datagrams_out > sent);
}

/// A key source holding key pairs made in advance (the node's pool fills one from
/// another thread); it records which public values it handed out.
struct Premade {
    keys: Vec<crypto::DhPrivate>,
    handed_out: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl ike::KeySource for Premade {
    fn take(&mut self, group: DhGroup) -> Option<crypto::DhPrivate> {
        let i = self.keys.iter().position(|k| k.group() == group)?;
        let key = self.keys.swap_remove(i);
        if let Ok(mut v) = self.handed_out.lock() {
            v.push(key.public_value().to_vec());
        }
        Some(key)
    }
}

#[test]
fn exchanges_use_key_pairs_from_the_key_source_once_each() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    let mut rng = TestRng(99);
    let handed_out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    // One premade key for A; B's source has only a key of another group, so B must
    // make its own.
    p.a.set_key_source(Box::new(Premade {
        keys: vec![crypto::DhPrivate::generate(a.ike.dh, &mut rng).unwrap()],
        handed_out: handed_out.clone(),
    }));
    let other = if a.ike.dh == DhGroup::Curve25519 {
        DhGroup::Ecp256
    } else {
        DhGroup::Curve25519
    };
    p.b.set_key_source(Box::new(Premade {
        keys: vec![crypto::DhPrivate::generate(other, &mut rng).unwrap()],
        handed_out: handed_out.clone(),
    }));
    p.initiate_a();
    assert_eq!(established(&p.a_events), 1, "{:?}", p.a_events);
    assert_eq!(children_up(&p.b_events), 1, "{:?}", p.b_events);
    p.assert_ike_match();
    p.assert_children_match();

    // A's IKE_SA_INIT request carried the premade public value.
    let handed_out = handed_out.lock().unwrap().clone();
    assert_eq!(handed_out.len(), 1, "only A's key matched a group in use");
    let init = Message::decode(&p.wire[0].payload).unwrap();
    let ke = init
        .payloads
        .iter()
        .find_map(|pl| match pl {
            Payload::Ke(ke) => Some(ke.data.clone()),
            _ => None,
        })
        .expect("KE payload");
    assert_eq!(ke, handed_out[0]);
    assert_eq!(
        (p.a.stats().dh_keys_ready, p.a.stats().dh_keys_inline),
        (1, 0)
    );
    assert_eq!(
        (p.b.stats().dh_keys_ready, p.b.stats().dh_keys_inline),
        (0, 1)
    );

    // The source is empty now: the next exchange's key is made by A itself, fresh.
    p.a.reset(p.now, PEER_A).unwrap();
    p.drive();
    assert_eq!(p.a.stats().dh_keys_ready, 1);
    assert!(p.a.stats().dh_keys_inline >= 1);
}
