//! IKEv1 rekeys from both ends at once — Quick Mode (PFS) and new Main Modes in every
//! combination — with Diffie-Hellman in place or offloaded (results in either order),
//! over a clean network and over one that drops, duplicates and reorders. At the end
//! both ends must agree on one ISAKMP SA and on one current Child SA, with no deletion
//! that looks like the tunnel going down.
//!
//! Before: when both ends started a Main Mode at once, each saw the two new ISAKMP SAs
//! complete in the opposite order, kept its newer one and deleted the other, so both
//! were deleted and the tunnel went down (every seed, clean network, DH in place). And a
//! Quick Mode that completed on an ISAKMP SA just replaced left its Child SA there, to
//! vanish unreported with it while the peer kept it. Two Quick Mode rekeys made at once
//! left both new Child SAs installed, and a late one could mark the other end's new
//! Child SA as the replaced one, so the ends disagreed on what carries the tunnel. And
//! an end whose new ISAKMP SA's last message was lost deleted the old SA anyway, so
//! the peer deleted its Child SAs with it.

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crypto::DhGroup;
use ike::{Event, V1Mode};
use util::*;

#[test]
fn rekeys_from_both_ends_end_in_agreement() {
    for lossy in [false, true] {
        for seed in 1..=40u64 {
            for scenario in 0..4 {
                for run in [None, Some(DhRun::Fifo), Some(DhRun::Lifo)] {
                    let what = format!("lossy {lossy} seed {seed} scenario {scenario} {run:?}");
                    rekeys(lossy, seed, scenario, run, &what);
                }
            }
        }
    }
}

fn rekeys(bad_network: bool, seed: u64, scenario: u64, run: Option<DhRun>, what: &str) {
    let mut a = config_v1(V1Mode::Main);
    a.esp.pfs = Some(DhGroup::Modp1024);
    let mut p = up_with(a, seed, run);
    if bad_network {
        p.fate = lossy(seed, 10);
    }
    let (child_a, child_b) = rekey_both(&mut p, scenario);
    p.drive();
    p.advance(Duration::from_secs(2));
    p.fate = Box::new(|_| Fate::Deliver);
    p.advance(Duration::from_secs(400));

    let (ia, ib) = (p.a.ike_sas(PEER_A), p.b.ike_sas(PEER_B));
    assert_eq!(ia.len(), 1, "{what}: A {ia:x?} B {ib:x?}");
    assert_eq!(ia, ib, "{what}");
    let (ca, cb) = child_pairs(&p);
    assert_eq!(ca, cb, "{what}");
    let (ca, cb) = current_child_pairs(&p);
    assert_eq!(ca, cb, "{what}");
    assert_eq!(
        ca.len(),
        1,
        "{what}: {ca:x?} (rekeyed: {child_a} {child_b})"
    );
    assert_no_tunnel_down(&p, what);
}

/// A Quick Mode rekey that gets no answer at all (every Quick Mode message lost for a
/// while) fails; the Child SA is rekeyed again before it runs out, instead of expiring
/// and taking the tunnel with it.
///
/// Before: the failed rekey put the Child SA back as installed but without a rekey
/// time, so it expired at the end of its lifetime and was deleted.
#[test]
fn a_failed_quick_mode_rekey_is_tried_again() {
    let mut a = config_v1(V1Mode::Main);
    a.child_lifetime = Duration::from_secs(3600);
    let mut p = up_with(a, 7, None);
    let first = p.a.child_sas(PEER_A)[0].clone();
    // Both ends' rekeys start between 85.5% and 90% of the lifetime (3,078-3,240 s) and
    // retransmit for 165 s: all their Quick Mode messages are lost.
    let blackout = (Duration::from_secs(3000), Duration::from_secs(3420));
    p.fate = Box::new(move |pkt| {
        let quick = ike::v1::wire::Header::parse(&pkt.payload)
            .is_ok_and(|h| h.exchange == ike::v1::wire::Exchange::QUICK);
        if quick && pkt.at >= blackout.0 && pkt.at < blackout.1 {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.advance(Duration::from_secs(3420));
    let failed = |e: &Event| matches!(e, Event::NegotiationFailed { .. });
    let failures = Pair::count(&p.a_events, failed) + Pair::count(&p.b_events, failed);
    assert!(failures >= 1, "no rekey failed: {:#?}", p.a_events);
    assert_eq!(
        p.a.child_sas(PEER_A)[0].spi_in,
        first.spi_in,
        "rekeyed in the blackout"
    );
    p.advance(Duration::from_secs(300));
    let (ca, cb) = current_child_pairs(&p);
    assert_eq!(ca, cb);
    assert_eq!(ca.len(), 1, "{ca:x?}");
    assert_ne!(
        ca[0].0, first.spi_in,
        "the first Child SA was never replaced"
    );
    let rekeyed = |e: &Event| matches!(e, Event::ChildSaRekeyed { .. });
    assert!(Pair::count(&p.a_events, rekeyed) >= 1, "{:#?}", p.a_events);
    let expired = |e: &Event| {
        matches!(
            e,
            Event::Log {
                event: "child_expired",
                ..
            }
        )
    };
    assert_eq!(Pair::count(&p.a_events, expired), 0, "{:#?}", p.a_events);
    assert_eq!(Pair::count(&p.b_events, expired), 0, "{:#?}", p.b_events);
    assert_no_tunnel_down(&p, "after the blackout");
}

/// A new ISAKMP SA whose last message is lost: Aggressive Mode message 3 (nothing
/// acknowledges it) or Main Mode message 6 with all of message 5's retransmissions
/// for a while. The end that thinks the new SA is up must not delete the old one
/// before the other end has the new one, or the other end, with nothing to hand its
/// Child SAs to, deletes them with the old SA and reports the peer gone.
#[test]
fn a_replaced_isakmp_sa_stays_until_the_peer_has_its_successor() {
    for mode in [V1Mode::Aggressive, V1Mode::Main] {
        for run in [None, Some(DhRun::Fifo)] {
            let what = format!("{mode:?} {run:?}");
            let mut a = config_v1(mode);
            a.dpd_interval = Some(Duration::from_secs(10));
            let mut p = up_with(a, 3, run);
            let child = p.a.child_sas(PEER_A)[0].clone();
            // The new SA's last message, and everything after it on phase 1 for 40 s.
            let (last, to) = match mode {
                V1Mode::Aggressive => (ike::v1::wire::Exchange::AGGRESSIVE, Side::B),
                V1Mode::Main => (ike::v1::wire::Exchange::MAIN, Side::A),
            };
            let start = p.elapsed();
            let dropped = Arc::new(AtomicUsize::new(0));
            let seen = Arc::clone(&dropped);
            p.fate = Box::new(move |pkt| {
                let Ok(h) = ike::v1::wire::Header::parse(&pkt.payload) else {
                    return Fate::Deliver;
                };
                let final_msg = h.exchange == last && h.encrypted() && pkt.to == to;
                if final_msg && pkt.at < start + Duration::from_secs(40) {
                    seen.fetch_add(1, Ordering::Relaxed);
                    return Fate::Drop;
                }
                Fate::Deliver
            });
            p.a.rekey_ike(p.now, PEER_A).unwrap();
            p.drive();
            p.advance(Duration::from_secs(200));
            let what = &what;
            assert!(
                dropped.load(Ordering::Relaxed) >= 2,
                "{what}: the last message got through"
            );
            assert_kept(&p, &child, what);
        }
    }
}

/// A peer may rekey a Child SA long before it is due (strongSwan with a short
/// `rekey_time` and a long `rand_time`, or by hand): the responder still takes the new
/// Child SA for a rekey of the old one, not for a second one beside it that it would
/// then rekey itself.
#[test]
fn an_early_rekey_by_the_peer_replaces_the_child_sa() {
    let mut a = config_v1(V1Mode::Main);
    a.child_lifetime = Duration::from_secs(120);
    let mut p = up_with(a, 5, None);
    let first = p.a.child_sas(PEER_A)[0].clone();
    p.advance(Duration::from_secs(10));
    p.b.rekey_child(p.now, PEER_B).unwrap();
    p.drive();
    let rekeyed = |e: &Event| matches!(e, Event::ChildSaRekeyed { old_spi_in, .. } if *old_spi_in == first.spi_in);
    assert_eq!(Pair::count(&p.a_events, rekeyed), 1, "{:#?}", p.a_events);
    let (ca, cb) = current_child_pairs(&p);
    assert_eq!(ca, cb);
    assert_eq!(ca.len(), 1, "{ca:x?}");
    assert_ne!(ca[0].0, first.spi_in);
}

/// An ISAKMP SA that reaches the end of its lifetime while its replacement is still
/// being negotiated (the responder's Main Mode message 6 lost until then) hands its
/// Child SAs to the replacement instead of deleting them: IKEv1 Child SAs do not
/// depend on the ISAKMP SA that made them.
///
/// Before: the initiator deleted them at the old SA's end, and the tunnel was down
/// until the driver negotiated a new one.
#[test]
fn an_isakmp_sa_that_ends_during_its_replacement_hands_over_its_child_sas() {
    for run in [None, Some(DhRun::Fifo)] {
        let what = &format!("{run:?}");
        let mut a = config_v1(V1Mode::Main);
        a.ike_lifetime = Duration::from_secs(300);
        a.dpd_interval = Some(Duration::from_secs(10));
        let mut p = up_with(a, 11, run);
        let child = p.a.child_sas(PEER_A)[0].clone();
        // The replacement starts at 256-270 s; its message 6 is lost until just after
        // the old SA's end at 300 s, and message 5's retransmission at +47.5 s gets it.
        let start = p.elapsed();
        let window = (
            start + Duration::from_secs(250),
            start + Duration::from_secs(301),
        );
        p.fate = Box::new(move |pkt| {
            let last = ike::v1::wire::Header::parse(&pkt.payload)
                .is_ok_and(|h| h.exchange == ike::v1::wire::Exchange::MAIN && h.encrypted());
            if last && pkt.to == Side::A && pkt.at >= window.0 && pkt.at < window.1 {
                Fate::Drop
            } else {
                Fate::Deliver
            }
        });
        p.advance(Duration::from_secs(400));
        assert_kept(&p, &child, what);
        // The node learns which ISAKMP SA now carries the tunnel.
        let ia = p.a.ike_sas(PEER_A);
        let reported = |e: &Event| matches!(e, Event::IkeSaRekeyed { new, .. } if *new == ia[0]);
        assert_eq!(
            Pair::count(&p.a_events, reported),
            1,
            "{what}: {:#?}",
            p.a_events
        );
        let parked = |e: &Event| {
            matches!(
                e,
                Event::Log {
                    event: "ike_replaced_early",
                    ..
                }
            )
        };
        assert_eq!(
            Pair::count(&p.a_events, parked),
            1,
            "{what}: {:#?}",
            p.a_events
        );
    }
}

/// The tunnel never went down: no Child SA deleted, no IKE SA lost, and both ends
/// hold one ISAKMP SA and still the Child SA `child`.
fn assert_kept(p: &Pair, child: &ike::ChildSa, what: &str) {
    let deleted = |e: &Event| matches!(e, Event::ChildSaDeleted { .. });
    assert_eq!(
        Pair::count(&p.a_events, deleted),
        0,
        "{what}: {:#?}",
        p.a_events
    );
    assert_eq!(
        Pair::count(&p.b_events, deleted),
        0,
        "{what}: {:#?}",
        p.b_events
    );
    assert_no_tunnel_down(p, what);
    let (ia, ib) = (p.a.ike_sas(PEER_A), p.b.ike_sas(PEER_B));
    assert_eq!(ia.len(), 1, "{what}: {:#?}", p.a_events);
    assert_eq!(ia, ib, "{what}");
    let (ca, cb) = current_child_pairs(p);
    assert_eq!(ca, cb, "{what}");
    assert_eq!(ca, [(child.spi_in, child.spi_out)], "{what}");
}

/// The peer reboots shortly before our ISAKMP SA ends, and its new Main Mode (with
/// INITIAL-CONTACT) is still being negotiated when ours ends: the Child SAs parked on
/// the new SA are the ones the peer lost and go, instead of standing beside the new
/// one.
#[test]
fn child_sas_parked_for_a_peer_that_started_over_go() {
    let mut a = config_v1(V1Mode::Main);
    a.ike_lifetime = Duration::from_secs(300);
    let b_cfg = mirror(&a);
    // B initiates, so A (the responder) would replace the SA only at 291 s, and not
    // while B's new Main Mode is under way.
    let mut p = Pair::with_seed(a, b_cfg.clone(), 13);
    p.initiate_b();
    p.assert_children_match();
    let start = p.elapsed();
    // B's own replacement of the SA (256-270 s) never reaches A. At 277 s B loses its
    // state and starts over; its message 5 is lost until just after A's ISAKMP SA ends
    // at 300 s (its retransmission at 301.2 s gets through).
    let s = move |secs| start + Duration::from_secs(secs);
    p.fate = Box::new(move |pkt| {
        let Ok(h) = ike::v1::wire::Header::parse(&pkt.payload) else {
            return Fate::Deliver;
        };
        let main = h.exchange == ike::v1::wire::Exchange::MAIN && pkt.to == Side::A;
        let replacement = main && !h.encrypted() && pkt.at >= s(250) && pkt.at < s(277);
        let mm5 = main && h.encrypted() && pkt.at < s(301);
        if replacement || mm5 {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.advance(Duration::from_secs(277));
    p.b = endpoint(ike::EndpointConfig::default(), 99, &[(PEER_B, b_cfg)]);
    let stale = p.a.child_sas(PEER_A)[0].spi_in;
    p.b.initiate(p.now, PEER_B).unwrap();
    p.drive();
    p.advance(Duration::from_secs(60));
    let gone = |e: &Event| matches!(e, Event::ChildSaDeleted { spi_in, .. } if *spi_in == stale);
    assert_eq!(Pair::count(&p.a_events, gone), 1, "{:#?}", p.a_events);
    let parked = |e: &Event| {
        matches!(
            e,
            Event::Log {
                event: "ike_replaced_early",
                ..
            }
        )
    };
    assert_eq!(Pair::count(&p.a_events, parked), 1, "{:#?}", p.a_events);
    let (ia, ib) = (p.a.ike_sas(PEER_A), p.b.ike_sas(PEER_B));
    assert_eq!(ia.len(), 1, "{:#?}", p.a_events);
    assert_eq!(ia, ib);
    let (ca, cb) = current_child_pairs(&p);
    assert_eq!(ca.len(), 1, "{ca:x?} {cb:x?}");
    assert_eq!(ca, cb);
}
