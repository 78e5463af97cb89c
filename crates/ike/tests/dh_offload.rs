//! IKE_SA_INIT's Diffie-Hellman shared secrets computed outside the endpoint
//! (`DhOffload`): results in any order, requests that overtake them, results for SAs
//! that are gone, and bad public values found only when the result comes back.

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

fn take_jobs(q: &DhQueue) -> Vec<(Side, Box<DhJob>)> {
    q.lock().expect("queue lock").drain(..).collect()
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
    // messages, the shared secret from messages 3 and 4.
    for (a, messages) in [(config_a(), 4), (v1_main(), 9)] {
        for run in [DhRun::Fifo, DhRun::Lifo] {
            let what = format!("{:?} {run:?}", a.version);
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
            let held = if run == DhRun::Lifo { 1 } else { 0 };
            assert_eq!(p.b.stats().dh_held, held, "{what}");
        }
    }
}

#[test]
fn offloaded_setup_survives_duplicated_datagrams_and_rekeys_in_place() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.offload_dh(DhRun::Lifo);
    p.fate = Box::new(|_| Fate::Duplicate);
    p.initiate_a();
    p.assert_ike_match();
    p.assert_children_match();
    assert_eq!(established(&p.a_events), 1);
    assert_eq!(established(&p.b_events), 1);

    // Rekeys compute their DH in place; the SAs keyed from offloaded results carry them.
    p.fate = Box::new(|_| Fate::Deliver);
    let before = p.a.ike_sas(PEER_A);
    p.a.rekey_ike(p.now, PEER_A).unwrap();
    p.drive();
    p.assert_ike_match();
    assert_ne!(p.a.ike_sas(PEER_A), before);
    p.a.rekey_child(p.now, PEER_A).unwrap();
    p.drive();
    p.assert_children_match();
    assert_eq!(p.a.stats().dh_offloaded, 1);
}

#[test]
fn results_for_sas_that_timed_out_are_dropped() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    let q = p.offload_dh(DhRun::Manual);
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
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    let q = p.offload_dh(DhRun::Manual);
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
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    let q = p.offload_dh(DhRun::Manual);
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
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    let q = p.offload_dh(DhRun::Manual);
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
    let a = v1_main();
    let mut p = Pair::new(a.clone(), mirror(&a));
    let q = p.offload_dh(DhRun::Manual);
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
    let a = v1_main();
    let mut p = Pair::new(a.clone(), mirror(&a));
    let q = p.offload_dh(DhRun::Manual);
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
    let a = v1_main();
    let mut p = Pair::new(a.clone(), mirror(&a));
    let q = p.offload_dh(DhRun::Manual);
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
