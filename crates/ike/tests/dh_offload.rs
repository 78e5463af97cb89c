//! Diffie-Hellman shared secrets computed outside the endpoint (`DhOffload`): IKEv2's
//! IKE_SA_INIT, IKEv1 Main Mode, Aggressive Mode and Quick Mode PFS. Results in any
//! order, requests that overtake them, results for SAs that are gone, and bad public
//! values found only when the result comes back.

mod util;

use std::time::Duration;

use ike::wire::{KeyExchange, Message, Payload};
use ike::{DhJob, DhOffload, Event, Level};
use util::*;

fn established(events: &[Event]) -> usize {
    Pair::count(events, |e| matches!(e, Event::IkeSaEstablished { .. }))
}

fn children_up(events: &[Event]) -> usize {
    Pair::count(events, |e| matches!(e, Event::ChildSaEstablished { .. }))
}

/// A's negotiation failed because its keys never came.
fn assert_keys_timed_out(p: &Pair) {
    let failures = Pair::failures(&p.a_events);
    assert!(
        failures
            .iter()
            .any(|(_, r)| r == "the Diffie-Hellman computation did not finish in time"),
        "{failures:?}"
    );
}

/// A's Quick Mode failed for `reason` (phase 2), among its other failures.
fn assert_a_phase2_failed(p: &Pair, reason: &str) {
    let failures = Pair::failures(&p.a_events);
    assert!(
        failures.contains(&(ike::Phase::Phase2, reason.to_string())),
        "{failures:?}"
    );
}

/// `datagram` (an IKE_SA_INIT) with its KE payload's public value zeroed, which no
/// MODP group accepts (RFC 7296 §2.12 / SP 800-56A range check).
fn zero_ke(datagram: &[u8]) -> Vec<u8> {
    let mut m = Message::decode(datagram).expect("an IKE message");
    for p in &mut m.payloads {
        if let Payload::Ke(KeyExchange { data, .. }) = p {
            data.iter_mut().for_each(|b| *b = 0);
        }
    }
    m.encode()
}

#[test]
fn offloaded_setup_establishes_with_results_in_either_order() {
    // IKEv2: IKE_SA_INIT and IKE_AUTH. IKEv1: six Main Mode and three Quick Mode
    // messages, the shared secret from messages 3 and 4; or three Aggressive Mode
    // messages, each side's secret needed for its next message, so nothing is held.
    for (a, messages, lifo_held) in [
        (config_a(), 4, 1),
        (v1_main(), 9, 1),
        (v1_aggressive(), 6, 0),
    ] {
        for run in [DhRun::Fifo, DhRun::Lifo] {
            let what = format!("{:?} {:?} {run:?}", a.version, a.v1_mode);
            let mut p = Pair::new(a.clone(), mirror(&a));
            p.offload_dh(run);
            p.initiate_a();
            assert_eq!(established(&p.a_events), 1, "{what}: {:?}", p.a_events);
            assert_eq!(children_up(&p.b_events), 1, "{what}: {:?}", p.b_events);
            p.assert_ike_match();
            p.assert_children_match();
            for s in [p.a.stats(), p.b.stats()] {
                assert_eq!(s.dh_offloaded, 1, "{what}");
                assert_eq!(s.retransmits, 0, "{what}");
            }
            // One request and one response each: nothing was lost waiting for keys.
            assert_eq!(p.wire.len(), messages, "{what}");
            assert_eq!(p.elapsed(), Duration::ZERO);
            // Newest first, A's keys are ready before B's: B keeps A's IKE_AUTH (or
            // message 5) until its own are, and answers it then.
            let held = if run == DhRun::Lifo { lifo_held } else { 0 };
            assert_eq!(p.b.stats().dh_held, held, "{what}");
        }
    }
}

#[test]
fn offloaded_setup_and_rekeys_survive_duplicated_datagrams() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.offload_dh(DhRun::Lifo);
    p.fate = Box::new(|_| Fate::Duplicate);
    p.initiate_a();
    p.assert_ike_match();
    p.assert_children_match();
    assert_eq!(established(&p.a_events), 1);
    assert_eq!(established(&p.b_events), 1);

    // The SAs keyed from offloaded results rekey, each copy of a message whose secret
    // is still being computed dropped (dh_offload_rekey.rs).
    let before = p.a.ike_sas(PEER_A);
    p.a.rekey_ike(p.now, PEER_A).unwrap();
    p.drive();
    p.assert_ike_match();
    assert_ne!(p.a.ike_sas(PEER_A), before);
    p.a.rekey_child(p.now, PEER_A).unwrap();
    p.drive();
    p.assert_children_match();
    // IKE_SA_INIT and the IKE SA rekey, one secret each (this tunnel has no PFS).
    assert_eq!(p.a.stats().dh_offloaded, 2);
    assert_eq!(p.b.stats().dh_offloaded, 2);
}

#[test]
fn results_for_sas_that_timed_out_are_dropped() {
    let (mut p, q) = manual(config_a());
    p.initiate_a();
    let mut jobs = take_jobs(&q);
    assert_eq!(
        jobs.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [Side::B, Side::A]
    );
    // A gets its keys and sends IKE_AUTH; B's never come.
    let (side, job) = jobs.pop().unwrap();
    p.finish_dh(side, job);
    p.drive();
    assert!(p.b.stats().dh_held >= 1);
    // B drops the half-open SA (and A's retransmissions with it).
    p.advance(Duration::from_secs(31));
    assert!(p.b.ike_sas(PEER_B).is_empty());
    let (side, job) = jobs.pop().unwrap();
    let before = p.b.stats();
    p.finish_dh(side, job);
    p.drive();
    assert_eq!(p.b.stats().dh_stale, before.dh_stale + 1);
    assert_eq!(p.b.stats().datagrams_out, before.datagrams_out);
    assert!(p.b.ike_sas(PEER_B).is_empty());
}

#[test]
fn an_initiator_whose_result_never_comes_fails_and_drops_it_later() {
    let (mut p, q) = manual(config_a());
    p.initiate_a();
    let jobs = take_jobs(&q);
    p.advance(Duration::from_secs(31));
    assert_keys_timed_out(&p);
    for (side, job) in jobs {
        p.finish_dh(side, job);
    }
    p.drive();
    assert_eq!(p.a.stats().dh_stale, 1);
    assert_eq!(established(&p.a_events), 0);
}

#[test]
fn responder_drops_the_sa_when_the_offloaded_result_rejects_the_public_value() {
    let (mut p, q) = manual(config_a());
    p.a.initiate(p.now, PEER_A).unwrap();
    let init = p.a.poll_transmit().unwrap();
    let bad = zero_ke(&init.payload);
    p.b.handle_datagram(p.now, init.remote, init.local, &bad);
    // Offloaded, the response goes out before the public value is checked.
    let resp = p.b.poll_transmit().expect("an IKE_SA_INIT response");
    let spi_r = Message::decode(&resp.payload).unwrap().header.spi_r;
    assert_ne!(spi_r, 0);
    let jobs = take_jobs(&q);
    let b_jobs: Vec<_> = jobs.into_iter().filter(|(s, _)| *s == Side::B).collect();
    assert_eq!(b_jobs.len(), 1);
    for (side, job) in b_jobs {
        p.finish_dh(side, job);
    }
    p.collect_events();
    assert_eq!(p.b.stats().malformed, 1);
    assert!(
        p.b_events.iter().any(|e| matches!(
            e,
            Event::Log { level: Level::Warn, event: "malformed", message, .. }
                if message.contains("Diffie-Hellman public value is invalid")
        )),
        "{:?}",
        p.b_events
    );
    assert_eq!(p.b.poll_timeout(), None, "no SA left waiting");
    // Its half-open entry went with it: the same request starts afresh.
    p.b.handle_datagram(p.now, init.remote, init.local, &bad);
    let again = p.b.poll_transmit().expect("a fresh response");
    assert_ne!(Message::decode(&again.payload).unwrap().header.spi_r, spi_r);
}

#[test]
fn initiator_fails_when_the_offloaded_result_rejects_the_public_value() {
    let (mut p, q) = manual(config_a());
    p.a.initiate(p.now, PEER_A).unwrap();
    let init = p.a.poll_transmit().unwrap();
    p.b.handle_datagram(p.now, init.remote, init.local, &init.payload);
    let resp = p.b.poll_transmit().unwrap();
    p.a.handle_datagram(p.now, resp.remote, resp.local, &zero_ke(&resp.payload));
    assert!(p.a.poll_transmit().is_none(), "no IKE_AUTH before the keys");
    for (side, job) in take_jobs(&q) {
        if side == Side::A {
            p.finish_dh(side, job);
        }
    }
    assert!(p.a.poll_transmit().is_none(), "no IKE_AUTH without keys");
    p.collect_events();
    assert_eq!(
        Pair::failures(&p.a_events),
        [(
            ike::Phase::Phase1,
            "peer's Diffie-Hellman public value is invalid".to_string()
        )]
    );
    assert_eq!(p.a.poll_timeout(), None, "no SA left waiting");
}

/// An offload that takes nothing (its threads are gone, say).
struct Refusing;

impl DhOffload for Refusing {
    fn submit(&mut self, job: Box<DhJob>) -> Result<(), Box<DhJob>> {
        Err(job)
    }
}

#[test]
fn a_refused_job_is_computed_in_place() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.a.set_dh_offload(Box::new(Refusing));
    p.b.set_dh_offload(Box::new(Refusing));
    p.initiate_a();
    p.assert_ike_match();
    p.assert_children_match();
    assert_eq!(p.a.stats().dh_offloaded, 0);
    assert_eq!(p.b.stats().dh_offloaded, 0);
    assert_eq!(p.wire.len(), 4);
}

// ---- IKEv1 Main Mode ------------------------------------------------------------------

fn v1_main() -> ike::PeerConfig {
    let mut a = config_a();
    a.version = ike::IkeVersion::V1;
    a.v1_mode = ike::V1Mode::Main;
    a
}

/// Runs the exchange by hand up to B's message 4 and A's computation, returning the
/// jobs (B's from message 3, then A's from message 4) and message 4.
fn v1_up_to_message_4(p: &mut Pair, q: &DhQueue) -> (Vec<(Side, Box<DhJob>)>, ike::Transmit) {
    p.a.initiate(p.now, PEER_A).expect("initiate");
    let mut last = None;
    for _ in 0..2 {
        let m = p.a.poll_transmit().expect("A's message 1 / 3");
        p.b.handle_datagram(p.now, m.remote, m.local, &m.payload);
        let r = p.b.poll_transmit().expect("B's message 2 / 4");
        p.a.handle_datagram(p.now, r.remote, r.local, &r.payload);
        last = Some(r);
    }
    let jobs = take_jobs(q);
    assert_eq!(
        jobs.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [Side::B, Side::A]
    );
    (jobs, last.expect("message 4"))
}

#[test]
fn ikev1_results_for_sas_that_are_gone_are_dropped() {
    let (mut p, q) = manual(v1_main());
    let (mut jobs, _) = v1_up_to_message_4(&mut p, &q);
    // A keys itself and sends message 5; B's keys never come, and B holds it.
    let (side, job) = jobs.pop().unwrap();
    p.finish_dh(side, job);
    let m5 = p.a.poll_transmit().expect("message 5");
    p.b.handle_datagram(p.now, m5.remote, m5.local, &m5.payload);
    assert_eq!(p.b.stats().dh_held, 1);
    assert!(p.b.poll_transmit().is_none(), "no message 6 without keys");
    // B's half-open SA times out; the late result finds nothing.
    p.advance(Duration::from_secs(31));
    assert!(p.b.ike_sas(PEER_B).is_empty());
    let (side, job) = jobs.pop().unwrap();
    let before = p.b.stats();
    p.finish_dh(side, job);
    assert_eq!(p.b.stats().dh_stale, before.dh_stale + 1);
    assert_eq!(p.b.stats().datagrams_out, before.datagrams_out);
}

#[test]
fn ikev1_initiator_whose_result_never_comes_fails() {
    let (mut p, q) = manual(v1_main());
    let (mut jobs, m4) = v1_up_to_message_4(&mut p, &q);
    let a_job = jobs.pop().unwrap();
    // A retransmitted message 4 gets no answer while A waits: it has none yet.
    p.a.handle_datagram(p.now, m4.remote, m4.local, &m4.payload);
    assert!(p.a.poll_transmit().is_none());
    p.advance(Duration::from_secs(31));
    assert_keys_timed_out(&p);
    p.finish_dh(a_job.0, a_job.1);
    assert_eq!(p.a.stats().dh_stale, 1);
    assert_eq!(established(&p.a_events), 0);
}

#[test]
fn ikev1_responder_fails_when_the_offloaded_result_rejects_the_public_value() {
    let (mut p, q) = manual(v1_main());
    p.a.initiate(p.now, PEER_A).unwrap();
    let m1 = p.a.poll_transmit().unwrap();
    p.b.handle_datagram(p.now, m1.remote, m1.local, &m1.payload);
    let m2 = p.b.poll_transmit().unwrap();
    p.a.handle_datagram(p.now, m2.remote, m2.local, &m2.payload);
    // Message 3: [ KE No NAT-D NAT-D ], the KE data right after the ISAKMP header
    // (28 bytes) and the payload's own (4): zero it, which no MODP group accepts.
    let m3 = p.a.poll_transmit().unwrap();
    let mut bad = m3.payload.clone();
    bad[32..32 + 128].iter_mut().for_each(|b| *b = 0);
    p.b.handle_datagram(p.now, m3.remote, m3.local, &bad);
    assert!(
        p.b.poll_transmit().is_some(),
        "message 4 goes out before the check"
    );
    for (side, job) in take_jobs(&q) {
        if side == Side::B {
            p.finish_dh(side, job);
        }
    }
    p.collect_events();
    assert_eq!(
        Pair::failures(&p.b_events),
        [(
            ike::Phase::Phase1,
            "peer's Diffie-Hellman public value is invalid".to_string()
        )]
    );
    assert!(p.b.ike_sas(PEER_B).is_empty());
    assert_eq!(p.b.half_open_total(), 0);
}

// ---- IKEv1 Quick Mode with PFS --------------------------------------------------------

/// Main Mode with Quick Mode PFS, as every IKEv1 tunnel has by default (`ipsec.pfs`).
fn v1_pfs() -> ike::PeerConfig {
    let mut a = v1_main();
    a.esp.pfs = Some(crypto::DhGroup::Modp1024);
    a
}

fn sides(jobs: &[(Side, Box<DhJob>)]) -> Vec<Side> {
    jobs.iter().map(|(s, _)| *s).collect()
}

/// Runs Main Mode with its secrets computed as they come, up to the first Quick Mode
/// secret; returns that job (B's: the responder's, from message 1).
fn v1_up_to_quick_mode(p: &mut Pair, q: &DhQueue) -> (Side, Box<DhJob>) {
    p.initiate_a();
    let mm = take_jobs(q);
    assert_eq!(sides(&mm), [Side::B, Side::A], "Main Mode's secrets");
    for (side, job) in mm {
        p.finish_dh(side, job);
    }
    p.drive();
    assert_eq!(established(&p.a_events), 1, "{:?}", p.a_events);
    let mut qm = take_jobs(q);
    assert_eq!(sides(&qm), [Side::B], "the responder's Quick Mode secret");
    qm.pop().expect("one job")
}

fn abandoned(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Log {
                event: "phase2_abandoned",
                message,
                ..
            } => Some(message.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn ikev1_quick_mode_pfs_is_offloaded_with_results_in_either_order() {
    for run in [DhRun::Fifo, DhRun::Lifo] {
        let a = v1_pfs();
        let mut p = Pair::new(a.clone(), mirror(&a));
        p.offload_dh(run);
        p.initiate_a();
        assert_eq!(children_up(&p.a_events), 1, "{run:?}: {:?}", p.a_events);
        assert_eq!(children_up(&p.b_events), 1, "{run:?}: {:?}", p.b_events);
        p.assert_children_match();
        for s in [p.a.stats(), p.b.stats()] {
            // Main Mode's g^xy and Quick Mode's PFS secret.
            assert_eq!(s.dh_offloaded, 2, "{run:?}");
            assert_eq!(s.retransmits, 0, "{run:?}");
        }
        assert_eq!(p.wire.len(), 9, "{run:?}");
        assert_eq!(p.elapsed(), Duration::ZERO);

        // A rekey's Quick Mode offloads its secret the same way.
        let before = p.a.child_sas(PEER_A);
        p.a.rekey_child(p.now, PEER_A).unwrap();
        p.drive();
        // Make-before-break: the replaced Child SA goes after the grace period.
        p.advance(Duration::from_secs(10));
        p.assert_children_match();
        assert_ne!(p.a.child_sas(PEER_A), before, "{run:?}");
        assert_eq!(p.a.stats().dh_offloaded, 3, "{run:?}");
        assert_eq!(p.b.stats().dh_offloaded, 3, "{run:?}");
    }
}

#[test]
fn ikev1_quick_mode_answers_only_once_its_pfs_secret_is_ready() {
    let (mut p, q) = manual(v1_pfs());
    let (side, b_job) = v1_up_to_quick_mode(&mut p, &q);
    let qm1 = p.wire.last().expect("message 1").clone();
    assert_eq!(qm1.to, Side::B);
    // B waits: a retransmitted message 1 gets no answer and no second computation.
    let dup = p.b.stats().duplicate_requests;
    p.b.handle_datagram(p.now, qm1.dst, qm1.src, &qm1.payload);
    assert!(
        p.b.poll_transmit().is_none(),
        "no message 2 without the secret"
    );
    assert_eq!(p.b.stats().duplicate_requests, dup + 1);
    assert!(take_jobs(&q).is_empty());
    p.collect_events();
    assert_eq!(children_up(&p.b_events), 0);

    // B's secret: message 2 goes out, the inbound SA announced before it.
    p.finish_dh(side, b_job);
    p.drive();
    assert!(
        p.b_events
            .iter()
            .any(|e| matches!(e, Event::ChildSaPending { .. })),
        "{:?}",
        p.b_events
    );
    let mut jobs = take_jobs(&q);
    assert_eq!(sides(&jobs), [Side::A], "the initiator's Quick Mode secret");
    let qm2 = p.wire.last().expect("message 2").clone();
    assert_eq!(qm2.to, Side::A);
    // A waits: a retransmitted message 2 gets nothing (not message 1 again), also
    // once the guard against answering a burst of copies has passed.
    p.now += Duration::from_millis(1500);
    p.a.handle_datagram(p.now, qm2.dst, qm2.src, &qm2.payload);
    assert!(
        p.a.poll_transmit().is_none(),
        "no message 3 without the secret"
    );
    assert_eq!(children_up(&p.a_events), 0);

    let (side, a_job) = jobs.pop().expect("A's job");
    p.finish_dh(side, a_job);
    p.drive();
    assert_eq!(children_up(&p.a_events), 1, "{:?}", p.a_events);
    assert_eq!(children_up(&p.b_events), 1, "{:?}", p.b_events);
    p.assert_children_match();
    assert_eq!(p.wire.len(), 9, "Main Mode and Quick Mode, nothing resent");
    assert_eq!(p.a.stats().retransmits + p.b.stats().retransmits, 0);
    assert_eq!(p.a.stats().dh_stale + p.b.stats().dh_stale, 0);
}

#[test]
fn ikev1_quick_mode_responder_gives_up_when_its_pfs_secret_never_comes() {
    let (mut p, q) = manual(v1_pfs());
    let (side, b_job) = v1_up_to_quick_mode(&mut p, &q);
    p.advance(Duration::from_secs(31));
    assert_eq!(
        abandoned(&p.b_events),
        ["the PFS Diffie-Hellman computation did not finish"]
    );
    assert_eq!(children_up(&p.b_events), 0);
    // Its result, late, finds no exchange waiting for it.
    let stale = p.b.stats().dh_stale;
    let out = p.b.stats().datagrams_out;
    p.finish_dh(side, b_job);
    assert_eq!(p.b.stats().dh_stale, stale + 1);
    assert_eq!(p.b.stats().datagrams_out, out);
}

/// Main Mode and the responder's Quick Mode secret done; returns the pair and the
/// initiator's Quick Mode job, not yet run.
fn v1_up_to_initiator_pfs() -> (Pair, (Side, Box<DhJob>)) {
    let (mut p, q) = manual(v1_pfs());
    let (side, b_job) = v1_up_to_quick_mode(&mut p, &q);
    p.finish_dh(side, b_job);
    p.drive();
    let mut jobs = take_jobs(&q);
    assert_eq!(sides(&jobs), [Side::A]);
    let job = jobs.pop().expect("A's job");
    (p, job)
}

#[test]
fn ikev1_quick_mode_initiator_fails_when_its_pfs_secret_never_comes() {
    let (mut p, (side, a_job)) = v1_up_to_initiator_pfs();
    p.advance(Duration::from_secs(31));
    assert_a_phase2_failed(&p, "the PFS Diffie-Hellman computation did not finish");
    assert_eq!(children_up(&p.a_events), 0);
    let stale = p.a.stats().dh_stale;
    p.finish_dh(side, a_job);
    assert_eq!(p.a.stats().dh_stale, stale + 1);
    p.collect_events();
    assert_eq!(children_up(&p.a_events), 0);
}

/// The peer's PFS value is only seen inside encrypted Quick Mode messages, so the job
/// is spoiled instead (`DhJob::spoil_peer_value`): the responder refuses the Quick Mode
/// with INVALID-KEY-INFORMATION and frees the inbound SPI it had reserved; the ISAKMP
/// SA stays.
#[test]
fn ikev1_quick_mode_responder_refuses_a_pfs_value_the_group_rejects() {
    let (mut p, q) = manual(v1_pfs());
    let (side, mut b_job) = v1_up_to_quick_mode(&mut p, &q);
    b_job.spoil_peer_value();
    let out = p.b.stats().datagrams_out;
    p.finish_dh(side, b_job);
    p.collect_events();
    assert_eq!(
        Pair::failures(&p.b_events),
        [(
            ike::Phase::Phase2,
            "peer's PFS Diffie-Hellman value is invalid".to_string()
        )]
    );
    assert_eq!(children_up(&p.b_events), 0);
    assert!(p.b.child_sas(PEER_B).is_empty());
    // One encrypted informational (the notify), no message 2.
    assert_eq!(p.b.stats().datagrams_out, out + 1);
    assert_eq!(p.b.ike_sas(PEER_B).len(), 1, "the ISAKMP SA stays");
}

/// The initiator's side of the same: it fails the exchange instead of sending message 3
/// (the responder's pending inbound SA goes when its Quick Mode times out).
#[test]
fn ikev1_quick_mode_initiator_refuses_a_pfs_value_the_group_rejects() {
    let (mut p, (side, mut a_job)) = v1_up_to_initiator_pfs();
    a_job.spoil_peer_value();
    let out = p.a.stats().datagrams_out;
    p.finish_dh(side, a_job);
    p.collect_events();
    assert_a_phase2_failed(&p, "peer's PFS Diffie-Hellman value is invalid");
    assert_eq!(children_up(&p.a_events), 0);
    assert!(p.a.child_sas(PEER_A).is_empty());
    assert_eq!(p.a.stats().datagrams_out, out, "no message 3");
    assert_eq!(p.a.ike_sas(PEER_A).len(), 1, "the ISAKMP SA stays");
}

// ---- IKEv1 Aggressive Mode ------------------------------------------------------------

fn v1_aggressive() -> ike::PeerConfig {
    let mut a = v1_main();
    a.v1_mode = ike::V1Mode::Aggressive;
    a
}

/// Delivers `m` to `side`, and again 2 s later (past the resend guard): `side` sends
/// nothing, not even for the retransmission, until its one job's result comes.
fn answers_once_keyed(p: &mut Pair, q: &DhQueue, side: Side, m: &ike::Transmit, next: &str) {
    for _ in 0..2 {
        let ep = if side == Side::A { &mut p.a } else { &mut p.b };
        ep.handle_datagram(p.now, m.remote, m.local, &m.payload);
        assert!(ep.poll_transmit().is_none(), "no {next} without keys");
        p.now += Duration::from_secs(2);
    }
    let mut jobs = take_jobs(q);
    assert_eq!(sides(&jobs), [side]);
    let (side, job) = jobs.pop().expect("one job");
    p.finish_dh(side, job);
}

#[test]
fn ikev1_aggressive_mode_answers_only_once_its_keys_are_ready() {
    let (mut p, q) = manual(v1_aggressive());
    p.a.initiate(p.now, PEER_A).expect("initiate");
    let m1 = p.a.poll_transmit().expect("message 1");
    // B's message 2 carries HASH_R, A checks it with its own keys: each answers only
    // once its keys are ready.
    answers_once_keyed(&mut p, &q, Side::B, &m1, "message 2");
    let m2 = p.b.poll_transmit().expect("message 2 once B has its keys");
    assert!(p.b.poll_transmit().is_none());
    answers_once_keyed(&mut p, &q, Side::A, &m2, "message 3");
    p.drive();
    assert_eq!(established(&p.a_events), 1, "{:?}", p.a_events);
    assert_eq!(established(&p.b_events), 1, "{:?}", p.b_events);
    assert_eq!(children_up(&p.a_events), 1);
    p.assert_children_match();
    assert_eq!(p.b.stats().dh_held, 0);
}

#[test]
fn ikev1_aggressive_mode_responder_drops_the_sa_when_its_keys_never_come() {
    let (mut p, q) = manual(v1_aggressive());
    p.a.initiate(p.now, PEER_A).unwrap();
    let m1 = p.a.poll_transmit().unwrap();
    p.b.handle_datagram(p.now, m1.remote, m1.local, &m1.payload);
    assert_eq!(p.b.half_open_total(), 1);
    let (side, job) = take_jobs(&q).pop().expect("B's job");
    p.advance(Duration::from_secs(31));
    assert_eq!(p.b.half_open_total(), 0);
    assert!(p.b.ike_sas(PEER_B).is_empty());
    let out = p.b.stats().datagrams_out;
    p.finish_dh(side, job);
    assert_eq!(p.b.stats().dh_stale, 1);
    assert_eq!(
        p.b.stats().datagrams_out,
        out,
        "no message 2 for a dropped SA"
    );
}

#[test]
fn ikev1_aggressive_mode_initiator_fails_when_its_keys_never_come() {
    let (mut p, q) = manual(v1_aggressive());
    p.a.initiate(p.now, PEER_A).unwrap();
    let m1 = p.a.poll_transmit().unwrap();
    p.b.handle_datagram(p.now, m1.remote, m1.local, &m1.payload);
    let (side, job) = take_jobs(&q).pop().expect("B's job");
    p.finish_dh(side, job);
    let m2 = p.b.poll_transmit().unwrap();
    p.a.handle_datagram(p.now, m2.remote, m2.local, &m2.payload);
    let (side, a_job) = take_jobs(&q).pop().expect("A's job");
    p.advance(Duration::from_secs(31));
    assert_keys_timed_out(&p);
    p.finish_dh(side, a_job);
    assert_eq!(p.a.stats().dh_stale, 1);
    p.collect_events();
    assert_eq!(established(&p.a_events), 0);
}

/// `datagram`, an unencrypted IKEv1 message, with its KE payload's public value zeroed,
/// which no MODP group accepts.
fn v1_zero_ke(datagram: &[u8]) -> Vec<u8> {
    use ike::v1::wire::{Chain, HEADER_LEN, PayloadType};
    let chain = Chain::decode(PayloadType(datagram[16]), &datagram[HEADER_LEN..], false)
        .expect("a payload chain");
    let ke = chain.first(PayloadType::KE).expect("a KE payload");
    let at = datagram
        .windows(ke.len())
        .position(|w| w == ke)
        .expect("the KE data in the datagram");
    let mut bad = datagram.to_vec();
    bad[at..at + ke.len()].iter_mut().for_each(|b| *b = 0);
    bad
}

#[test]
fn ikev1_aggressive_mode_refuses_a_public_value_the_group_rejects() {
    // With an offload the value is refused when the result comes; without one, in
    // place. Either way: one log row, INVALID-KEY-INFORMATION, no SA left.
    for offloaded in [true, false] {
        let a = v1_aggressive();
        let mut p = Pair::new(a.clone(), mirror(&a));
        let q = offloaded.then(|| p.offload_dh(DhRun::Manual));
        p.a.initiate(p.now, PEER_A).unwrap();
        let m1 = p.a.poll_transmit().unwrap();
        let bad = v1_zero_ke(&m1.payload);
        p.b.handle_datagram(p.now, m1.remote, m1.local, &bad);
        if let Some(q) = &q {
            assert!(p.b.poll_transmit().is_none(), "nothing before the check");
            let (side, job) = take_jobs(q).pop().expect("B's job");
            p.finish_dh(side, job);
        }
        p.collect_events();
        assert_eq!(
            Pair::failures(&p.b_events),
            [(
                ike::Phase::Phase1,
                "peer's Diffie-Hellman public value is invalid".to_string()
            )],
            "offloaded: {offloaded}"
        );
        // In the clear: an ISAKMP header and one notify payload (RFC 2408 §3.14.1).
        let n = p.b.poll_transmit().expect("a notify");
        assert_eq!(n.payload[16], 11, "first payload: N");
        assert_eq!(
            u16::from_be_bytes([n.payload[28 + 10], n.payload[28 + 11]]),
            17,
            "INVALID-KEY-INFORMATION"
        );
        assert!(p.b.poll_transmit().is_none());
        assert!(p.b.ike_sas(PEER_B).is_empty());
        assert_eq!(p.b.half_open_total(), 0);
        assert_eq!(p.b.stats().dh_offloaded, u64::from(offloaded));
    }
}
