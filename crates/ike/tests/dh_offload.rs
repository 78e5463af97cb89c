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
    for run in [DhRun::Fifo, DhRun::Lifo] {
        let a = config_a();
        let mut p = Pair::new(a.clone(), mirror(&a));
        p.offload_dh(run);
        p.initiate_a();
        assert_eq!(established(&p.a_events), 1, "{run:?}: {:?}", p.a_events);
        assert_eq!(children_up(&p.b_events), 1, "{run:?}: {:?}", p.b_events);
        p.assert_ike_match();
        p.assert_children_match();
        for s in [p.a.stats(), p.b.stats()] {
            assert_eq!(s.dh_offloaded, 1, "{run:?}");
            assert_eq!(s.retransmits, 0, "{run:?}");
        }
        // IKE_SA_INIT and IKE_AUTH, one request and one response each: nothing was
        // lost waiting for keys.
        assert_eq!(p.wire.len(), 4, "{run:?}");
        assert_eq!(p.elapsed(), Duration::ZERO);
        // Newest first, A's keys are ready before B's: B keeps A's IKE_AUTH until its
        // own are, and answers it then.
        let held = if run == DhRun::Lifo { 1 } else { 0 };
        assert_eq!(p.b.stats().dh_held, held, "{run:?}");
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
    let failures = Pair::failures(&p.a_events);
    assert!(
        failures
            .iter()
            .any(|(_, r)| r == "the Diffie-Hellman computation did not finish in time"),
        "{failures:?}"
    );
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
