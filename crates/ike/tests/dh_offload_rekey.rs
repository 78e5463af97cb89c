//! IKEv2 CREATE_CHILD_SA with a KE payload — a Child SA rekey with PFS, an IKE SA rekey —
//! whose shared secrets are computed outside the endpoint (`DhOffload`): the message that
//! needs the secret waits and is handled again once it is back; copies of it are dropped
//! meanwhile; simultaneous rekeys still leave one SA; bad public values and lost results
//! end the exchange with a reason.

mod util;

use std::time::Duration;

use crypto::DhGroup;
use ike::{DhJob, Event, Phase};
use util::*;

/// A's configuration with PFS for its Child SAs.
fn pfs(g: DhGroup) -> ike::PeerConfig {
    let mut a = config_a();
    a.esp.pfs = Some(g);
    a
}

/// An established pair whose offloaded jobs the test runs from now on by hand.
fn up(a: ike::PeerConfig) -> (Pair, DhQueue) {
    let mut p = Pair::new(a.clone(), mirror(&a));
    let q = p.offload_dh(DhRun::Fifo);
    p.initiate_a();
    p.assert_children_match();
    p.set_dh_run(DhRun::Manual);
    (p, q)
}

fn rekeyed(events: &[Event]) -> usize {
    Pair::count(events, |e| matches!(e, Event::ChildSaRekeyed { .. }))
}

fn ike_rekeyed(events: &[Event]) -> usize {
    Pair::count(events, |e| matches!(e, Event::IkeSaRekeyed { .. }))
}

/// Neither side reported a failed negotiation.
fn assert_no_failures(p: &Pair, what: &str) {
    for events in [&p.a_events, &p.b_events] {
        assert!(Pair::failures(events).is_empty(), "{what}: {events:?}");
    }
}

/// The one job queued, and which side it is for.
fn one_job(q: &DhQueue) -> (Side, Box<DhJob>) {
    let mut jobs = take_jobs(q);
    assert_eq!(
        jobs.len(),
        1,
        "{:?}",
        jobs.iter().map(|j| j.0).collect::<Vec<_>>()
    );
    jobs.pop().expect("one job")
}

/// The last datagram put on the wire towards `to`.
fn last_to(p: &Pair, to: Side) -> Pkt {
    p.wire
        .iter()
        .rev()
        .find(|d| d.to == to)
        .expect("a datagram")
        .clone()
}

/// Hands `d` to its endpoint again, as a copy the network made.
fn deliver_again(p: &mut Pair, d: &Pkt) {
    match d.to {
        Side::A => p.a.handle_datagram(p.now, d.dst, d.src, &d.payload),
        Side::B => p.b.handle_datagram(p.now, d.dst, d.src, &d.payload),
    }
}

#[test]
fn rekeys_offload_both_secrets_with_results_in_either_order() {
    for g in [DhGroup::Modp2048, DhGroup::Curve25519] {
        for run in [DhRun::Fifo, DhRun::Lifo] {
            let what = format!("{g:?} {run:?}");
            let a = pfs(g);
            let mut p = Pair::new(a.clone(), mirror(&a));
            p.offload_dh(run);
            p.initiate_a();
            p.a.rekey_child(p.now, PEER_A).unwrap();
            p.drive();
            p.b.rekey_child(p.now, PEER_B).unwrap();
            p.drive();
            let ike_before = p.a.ike_sas(PEER_A);
            p.b.rekey_ike(p.now, PEER_B).unwrap();
            p.drive();
            // And a Child SA rekey on the IKE SA that the offloaded secret keyed.
            p.a.rekey_child(p.now, PEER_A).unwrap();
            p.drive();

            assert_no_failures(&p, &what);
            assert_eq!(rekeyed(&p.a_events), 3, "{what}");
            assert_eq!(rekeyed(&p.b_events), 3, "{what}");
            assert_eq!(ike_rekeyed(&p.a_events), 1, "{what}");
            p.assert_ike_match();
            assert_ne!(p.a.ike_sas(PEER_A), ike_before, "{what}");
            p.assert_children_match();
            assert_eq!(p.a.child_sas(PEER_A)[0].pfs, Some(g), "{what}");
            for s in [p.a.stats(), p.b.stats()] {
                // IKE_SA_INIT, three Child SA rekeys, one IKE SA rekey.
                assert_eq!(s.dh_offloaded, 5, "{what}");
                assert_eq!(s.retransmits, 0, "{what}");
                assert_eq!(s.dh_stale, 0, "{what}");
            }
            assert_eq!(p.elapsed(), Duration::ZERO, "{what}");
        }
    }
}

#[test]
fn a_rekey_is_answered_and_installed_only_once_each_secret_is_ready() {
    let (mut p, q) = up(pfs(DhGroup::Modp2048));
    let old = p.a.child_sas(PEER_A)[0].clone();
    p.a.rekey_child(p.now, PEER_A).unwrap();
    p.drive();
    let request = last_to(&p, Side::B);
    let (side, b_job) = one_job(&q);
    assert_eq!(side, Side::B);
    assert!(last_to(&p, Side::A).seq < request.seq, "B answered early");

    // A's retransmission (after 4 s) meets the request that waits: dropped, still no
    // answer.
    let dup = p.b.stats().duplicate_requests;
    p.advance(Duration::from_secs(5));
    assert_eq!(p.a.stats().retransmits, 1);
    assert_eq!(p.b.stats().duplicate_requests, dup + 1);
    assert!(last_to(&p, Side::A).seq < request.seq, "B answered early");
    assert!(take_jobs(&q).is_empty(), "a second job for the copy");

    // B's secret: it answers and installs the new Child SA (responder side).
    p.finish_dh(side, b_job);
    p.drive();
    assert_eq!(rekeyed(&p.b_events), 1);
    let answer = last_to(&p, Side::A);
    assert!(answer.seq > request.seq);
    let (side, a_job) = one_job(&q);
    assert_eq!(side, Side::A);
    // A holds the answer until its own secret is back; a copy of it is dropped, and the
    // retransmission timer sends nothing while the answer is here.
    assert_eq!(rekeyed(&p.a_events), 0);
    let unexpected = p.a.stats().unexpected;
    deliver_again(&mut p, &answer);
    assert_eq!(p.a.stats().unexpected, unexpected + 1);
    let (sent, retransmits) = (p.wire.len(), p.a.stats().retransmits);
    p.advance(Duration::from_secs(10));
    assert_eq!(p.a.stats().retransmits, retransmits);
    assert_eq!(p.wire.len(), sent);

    p.finish_dh(side, a_job);
    p.drive();
    assert_eq!(rekeyed(&p.a_events), 1);
    p.assert_children_match();
    let new = p.a.child_sas(PEER_A)[0].clone();
    assert_ne!(new.spi_in, old.spi_in);
    assert_ne!(new.encr_key_out, old.encr_key_out);
    assert_no_failures(&p, "");
    assert_eq!(p.a.stats().dh_stale + p.b.stats().dh_stale, 0);
}

#[test]
fn simultaneous_rekeys_with_offloaded_secrets_leave_one_sa() {
    for seed in 1..6 {
        for run in [DhRun::Fifo, DhRun::Lifo] {
            let what = format!("seed {seed} {run:?}");
            let a = pfs(DhGroup::Modp1024);
            let mut p = Pair::with_seed(a.clone(), mirror(&a), seed);
            p.offload_dh(run);
            p.initiate_a();
            p.a.rekey_child(p.now, PEER_A).unwrap();
            p.b.rekey_child(p.now, PEER_B).unwrap();
            p.drive();
            // Each end deletes what it must within the retransmission time.
            p.advance(Duration::from_secs(30));
            p.assert_children_match();
            assert_no_failures(&p, &what);

            let child = p.a.child_sas(PEER_A)[0].clone();
            p.a.rekey_ike(p.now, PEER_A).unwrap();
            p.b.rekey_ike(p.now, PEER_B).unwrap();
            p.drive();
            p.advance(Duration::from_secs(30));
            p.assert_ike_match();
            assert_eq!(p.a.child_sas(PEER_A), vec![child], "{what}");
            p.assert_children_match();
            assert_no_failures(&p, &what);
            // Still usable.
            let before = rekeyed(&p.b_events);
            p.b.rekey_child(p.now, PEER_B).unwrap();
            p.drive();
            p.assert_children_match();
            assert_eq!(rekeyed(&p.b_events), before + 1, "{what}");
        }
    }
}

/// Runs A's rekey (`ike`: of the IKE SA, else of its Child SA) up to the job of `spoiled`,
/// whose peer value is zeroed, which no MODP group accepts.
fn rekey_with_a_refused_value(ike: bool, spoiled: Side) -> Pair {
    let (mut p, q) = up(pfs(DhGroup::Modp2048));
    if ike {
        p.a.rekey_ike(p.now, PEER_A).expect("an established IKE SA");
    } else {
        p.a.rekey_child(p.now, PEER_A)
            .expect("an established IKE SA");
    }
    p.drive();
    let (side, b_job) = one_job(&q);
    assert_eq!(side, Side::B);
    let mut job = if spoiled == Side::B {
        b_job
    } else {
        p.finish_dh(side, b_job);
        p.drive();
        let (side, a_job) = one_job(&q);
        assert_eq!(side, Side::A);
        a_job
    };
    job.spoil_peer_value();
    p.finish_dh(spoiled, job);
    p.drive();
    p
}

#[test]
fn a_rekey_whose_value_the_group_refuses_fails_and_keeps_the_old_sas() {
    let cases = [
        (
            false,
            Side::B,
            Phase::Phase2,
            "peer refused the Child SA (INVALID_SYNTAX)",
        ),
        (
            false,
            Side::A,
            Phase::Phase2,
            "peer's Diffie-Hellman public value is invalid",
        ),
        (
            true,
            Side::B,
            Phase::Phase1,
            "IKE SA rekey refused by peer (INVALID_SYNTAX)",
        ),
        (
            true,
            Side::A,
            Phase::Phase1,
            "peer's KE payload for the IKE SA rekey is invalid",
        ),
    ];
    for (ike, spoiled, phase, reason) in cases {
        let what = format!("IKE SA {ike}, spoiled at {spoiled:?}");
        let mut p = rekey_with_a_refused_value(ike, spoiled);
        let ike_sas = p.a.ike_sas(PEER_A);
        let child = p.a.child_sas(PEER_A)[0].clone();
        let failures = Pair::failures(&p.a_events);
        assert!(
            failures
                .iter()
                .any(|(ph, r)| *ph == phase && r.starts_with(reason)),
            "{what}: {failures:?}"
        );
        // Whatever the half-made SA was, it is gone again: the old ones carry on.
        p.advance(Duration::from_secs(30));
        p.assert_children_match();
        assert_eq!(p.a.child_sas(PEER_A), vec![child], "{what}");
        if ike {
            assert_eq!(p.a.ike_sas(PEER_A).len(), 1, "{what}");
        } else {
            p.assert_ike_match();
            assert_eq!(p.a.ike_sas(PEER_A), ike_sas, "{what}");
        }
    }
}

#[test]
fn results_for_an_ike_sa_that_is_gone_are_dropped() {
    let (mut p, q) = up(pfs(DhGroup::Modp1024));
    p.a.rekey_child(p.now, PEER_A).unwrap();
    p.drive();
    let (side, b_job) = one_job(&q);
    // B's side of the tunnel is removed while its secret is computed.
    p.b.remove_peer(p.now, PEER_B).unwrap();
    p.drive();
    assert!(p.b.ike_sas(PEER_B).is_empty());
    p.finish_dh(side, b_job);
    p.drive();
    assert_eq!(p.b.stats().dh_stale, 1);
}

#[test]
fn an_initiator_whose_secret_never_comes_deletes_the_ike_sa_in_bounded_time() {
    let (mut p, q) = up(pfs(DhGroup::Modp1024));
    p.a.rekey_child(p.now, PEER_A).unwrap();
    p.drive();
    let (side, b_job) = one_job(&q);
    p.finish_dh(side, b_job);
    p.drive();
    let (side, _lost) = one_job(&q);
    assert_eq!(side, Side::A);
    p.advance(Duration::from_secs(600));
    assert!(p.a.ike_sas(PEER_A).is_empty());
    let failures = Pair::failures(&p.a_events);
    assert!(
        failures.contains(&(
            Phase::Phase2,
            "the Diffie-Hellman computation for CREATE_CHILD_SA (rekey Child SA) did not \
             finish in time; deleting the IKE SA"
                .to_string()
        )),
        "{failures:?}"
    );
    // B learned of it from A's Delete.
    assert!(p.b.ike_sas(PEER_B).is_empty());
}

/// Both ends rekey the IKE SA at once and each one's answer waits for its secret. A's
/// own rekey completes first (B's answer arrives while A's slot holds B's request, so A
/// computes in place); when B's request is handled then, A is already replacing the IKE
/// SA and answers TEMPORARY_FAILURE (RFC 7296 §2.25) instead of making a second one.
#[test]
fn a_rekey_request_on_an_ike_sa_being_replaced_gets_temporary_failure() {
    let (mut p, q) = up(pfs(DhGroup::Modp1024));
    let child = p.a.child_sas(PEER_A)[0].clone();
    p.a.rekey_ike(p.now, PEER_A).unwrap();
    p.b.rekey_ike(p.now, PEER_B).unwrap();
    p.drive();
    let jobs = take_jobs(&q);
    assert_eq!(
        jobs.iter().map(|j| j.0).collect::<Vec<_>>(),
        [Side::B, Side::A]
    );
    let mut jobs = jobs.into_iter();
    let (b_side, b_job) = jobs.next().unwrap();
    let (a_side, a_job) = jobs.next().unwrap();
    // B answers A's request; A takes the answer and deletes the old IKE SA.
    p.finish_dh(b_side, b_job);
    relay(p.now, &mut p.b, &mut p.a);
    p.collect_events();
    assert_eq!(ike_rekeyed(&p.a_events), 1);
    // Before the Delete reaches B, A's secret for B's request comes back.
    p.finish_dh(a_side, a_job);
    p.drive();
    p.advance(Duration::from_secs(30));
    p.assert_ike_match();
    p.assert_children_match();
    assert_eq!(p.a.child_sas(PEER_A), vec![child]);
    assert_no_failures(&p, "");
    let temporary = |e: &Event| {
        matches!(
            e,
            Event::Log {
                event: "temporary_failure",
                ..
            }
        )
    };
    assert_eq!(
        Pair::count(&p.b_events, temporary),
        0,
        "B retries on a gone SA"
    );
}

/// Rekeys of both ends at once — of the Child SA (PFS), of the IKE SA, or one of each —
/// computed in place or offloaded with results in either order, over a network that
/// drops, duplicates and reorders: once the network behaves again, both ends agree on one
/// IKE SA and one Child SA pair, and no deletion looks like the tunnel going down.
/// (Before: a redundant IKE SA whose maker never learned of the collision stayed on the
/// other end, and its deletion by the peer read as PeerDeleted; a Child SA rekey answered
/// after the peer had deleted the rekeyed SA left a second pair; a Child SA Delete
/// outstanding on a rekeyed IKE SA was never sent again.)
#[test]
fn rekeys_from_both_ends_over_a_bad_network_end_in_agreement() {
    for seed in 1..=50u64 {
        for scenario in 0..4 {
            for run in [None, Some(DhRun::Fifo), Some(DhRun::Lifo)] {
                let what = format!("seed {seed} scenario {scenario} {run:?}");
                rekeys_over_a_bad_network(seed, scenario, run, &what);
            }
        }
    }
}

fn rekeys_over_a_bad_network(seed: u64, scenario: u64, run: Option<DhRun>, what: &str) {
    let a = pfs(DhGroup::Modp1024);
    let mut p = Pair::with_seed(a.clone(), mirror(&a), seed);
    if let Some(run) = run {
        p.offload_dh(run);
    }
    p.initiate_a();
    p.fate = lossy(seed, 10);
    rekey_both(&mut p, scenario);
    p.drive();
    p.advance(Duration::from_secs(2));
    p.fate = Box::new(|_| Fate::Deliver);
    // Long enough for the fallback: a redundant IKE SA whose maker never learned of the
    // collision is deleted by the other end after 32 s, a Delete the maker cannot answer
    // (it has no such SA) retransmitted until it gives up.
    p.advance(Duration::from_secs(400));
    let (ia, ib) = (p.a.ike_sas(PEER_A), p.b.ike_sas(PEER_B));
    assert_eq!(ia.len(), 1, "{what}: A {ia:?} B {ib:?}");
    assert_eq!(ia, ib, "{what}");
    let (ca, cb) = (p.a.child_sas(PEER_A), p.b.child_sas(PEER_B));
    assert_eq!((ca.len(), cb.len()), (1, 1), "{what}: A {ca:?}\nB {cb:?}");
    p.assert_children_match();
    assert_no_tunnel_down(&p, what);
    // And the tunnel still rekeys.
    p.a.rekey_child(p.now, PEER_A).expect("established");
    p.drive();
    p.assert_children_match();
}
