//! The responder's COOKIEs (RFC 7296 §2.6): with `cookie_threshold` half-open IKE SAs,
//! an IKE_SA_INIT without a valid cookie gets `N(COOKIE)` and no state; the initiator
//! repeats its request with the cookie first and the exchange goes on. Forged and stale
//! cookies count as none.

mod util;

use std::time::{Duration, Instant};

use ike::wire::registry::{ExchangeType, NotifyType};
use ike::wire::{Message, Payload};
use ike::{Endpoint, EndpointConfig};
use util::*;

/// The virtual clock's start; time moves only as the tests say.
#[allow(clippy::disallowed_methods)] // the one real clock read
fn epoch() -> Instant {
    Instant::now()
}

fn threshold(n: usize) -> EndpointConfig {
    EndpointConfig {
        cookie_threshold: n,
        ..EndpointConfig::default()
    }
}

fn decode(datagram: &[u8]) -> Message {
    Message::decode(datagram).expect("an IKE message")
}

/// The data of the message's COOKIE notify, if it has one.
fn cookie_of(m: &Message) -> Option<Vec<u8>> {
    m.payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.ntype == NotifyType::COOKIE => Some(n.data.clone()),
        _ => None,
    })
}

/// Relays both ways until neither side has anything to send.
fn settle(now: Instant, a: &mut Endpoint, b: &mut Endpoint) {
    for _ in 0..100 {
        if relay(now, a, b).is_empty() && relay(now, b, a).is_empty() {
            return;
        }
    }
    panic!("the endpoints never went quiet");
}

#[test]
fn under_load_the_responder_answers_with_a_cookie_and_keeps_no_state() {
    let a = config_a();
    let mut p = Pair::with_endpoints(
        a.clone(),
        mirror(&a),
        1,
        EndpointConfig::default(),
        threshold(0),
    );
    p.initiate_a();
    p.assert_ike_match();
    p.assert_children_match();
    // IKE_SA_INIT, N(COOKIE), IKE_SA_INIT with the cookie, its response, IKE_AUTH twice.
    assert_eq!(p.wire.len(), 6, "{:?}", p.wire);
    let (first, answer, retry) = (
        decode(&p.wire[0].payload),
        decode(&p.wire[1].payload),
        decode(&p.wire[2].payload),
    );
    assert_eq!(cookie_of(&first), None);
    // The answer: an IKE_SA_INIT response with SPIr 0 and nothing but the cookie.
    assert_eq!(answer.header.exchange, ExchangeType::IKE_SA_INIT);
    assert!(answer.header.flags.response());
    assert_eq!(answer.header.spi_i, first.header.spi_i);
    assert_eq!(answer.header.spi_r, 0);
    assert_eq!(answer.payloads.len(), 1);
    let cookie = cookie_of(&answer).expect("N(COOKIE)");
    assert!((1..=64).contains(&cookie.len()), "RFC 7296 §3.10.1");
    // The initiator repeats its request with the cookie as the first payload.
    assert!(
        matches!(&retry.payloads[0], Payload::Notify(n) if n.ntype == NotifyType::COOKIE && n.data == cookie)
    );
    assert_eq!(retry.header.spi_i, first.header.spi_i);
    let b = p.b.stats();
    assert_eq!((b.cookies_sent, b.cookies_invalid), (1, 0));
    // One DH key pair on the responder: for the request that returned the cookie.
    assert_eq!(b.dh_keys_inline + b.dh_keys_ready, 1);
    assert_eq!(p.b.half_open_count(), 0);
}

#[test]
fn below_the_threshold_no_cookie_is_asked() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    p.assert_ike_match();
    assert_eq!(p.wire.len(), 4);
    assert_eq!(p.b.stats().cookies_sent, 0);
}

#[test]
fn a_forged_or_stale_cookie_is_answered_with_a_fresh_one() {
    let t0 = epoch();
    let cfg = config_a();
    let mut a = endpoint(EndpointConfig::default(), 1, &[(PEER_A, cfg.clone())]);
    let mut b = endpoint(threshold(0), 2, &[(PEER_B, mirror(&cfg))]);
    a.initiate(t0, PEER_A).expect("initiate");
    relay(t0, &mut a, &mut b);
    relay(t0, &mut b, &mut a); // the first cookie

    // Forged: one bit of the cookie changed on the way.
    let t = a.poll_transmit().expect("the request with the cookie");
    let mut m = decode(&t.payload);
    if let Some(Payload::Notify(n)) = m.payloads.first_mut() {
        n.data[7] ^= 1;
    }
    b.handle_datagram(t0, t.remote, t.local, &m.encode());
    assert_eq!(b.stats().cookies_invalid, 1);
    assert_eq!(b.stats().cookies_sent, 2);
    assert_eq!(b.half_open_count(), 0);
    relay(t0, &mut b, &mut a); // a second cookie

    // Stale: the right cookie, two secret periods later (the secret is retired).
    let late = t0 + Duration::from_secs(121);
    let t = a
        .poll_transmit()
        .expect("the request with the second cookie");
    b.handle_datagram(late, t.remote, t.local, &t.payload);
    assert_eq!(b.stats().cookies_invalid, 2);
    assert_eq!(b.half_open_count(), 0);

    // The third cookie comes back in time and the exchange completes.
    relay(late, &mut b, &mut a);
    settle(late, &mut a, &mut b);
    assert_eq!(established_count(&mut a), 1);
    assert_eq!(established_count(&mut b), 1);
    let s = b.stats();
    assert_eq!((s.cookies_sent, s.cookies_invalid), (3, 2));
    assert_eq!(s.dh_keys_inline + s.dh_keys_ready, 1);
}

#[test]
fn the_threshold_counts_half_open_sas_only() {
    let t0 = epoch();
    let cfg = config_a();
    let mut b = endpoint(threshold(1), 9, &[(PEER_B, mirror(&cfg))]);
    let mut a1 = endpoint(EndpointConfig::default(), 1, &[(PEER_A, cfg.clone())]);
    let mut a2 = endpoint(EndpointConfig::default(), 2, &[(PEER_A, cfg.clone())]);

    // A1's IKE_SA_INIT finds nothing half-open: answered with state, no cookie.
    a1.initiate(t0, PEER_A).expect("initiate");
    relay(t0, &mut a1, &mut b);
    assert_eq!(b.half_open_count(), 1);
    assert_eq!(b.stats().cookies_sent, 0);
    let a1_response = b.poll_transmit().expect("A1's IKE_SA_INIT response");

    // A2's finds one: a cookie first, then state once it comes back.
    a2.initiate(t0, PEER_A).expect("initiate");
    relay(t0, &mut a2, &mut b);
    assert_eq!(b.stats().cookies_sent, 1);
    assert_eq!(b.half_open_count(), 1);
    relay(t0, &mut b, &mut a2);
    relay(t0, &mut a2, &mut b);
    assert_eq!(b.half_open_count(), 2);
    assert_eq!(b.stats().cookies_sent, 1);
    let a2_response = b.poll_transmit().expect("A2's IKE_SA_INIT response");

    // A1 completes IKE_AUTH: its SA is no longer half-open.
    a1.handle_datagram(
        t0,
        a1_response.remote,
        a1_response.local,
        &a1_response.payload,
    );
    relay(t0, &mut a1, &mut b);
    assert_eq!(b.half_open_count(), 1);
    relay(t0, &mut b, &mut a1);
    assert_eq!(established_count(&mut a1), 1);
    // Then A2.
    a2.handle_datagram(
        t0,
        a2_response.remote,
        a2_response.local,
        &a2_response.payload,
    );
    settle(t0, &mut a2, &mut b);
    assert_eq!(established_count(&mut a2), 1);
    assert_eq!(b.half_open_count(), 0);

    // Established SAs do not count: A3 is answered without a cookie.
    let mut a3 = endpoint(EndpointConfig::default(), 3, &[(PEER_A, cfg)]);
    a3.initiate(t0, PEER_A).expect("initiate");
    relay(t0, &mut a3, &mut b);
    assert_eq!(b.stats().cookies_sent, 1);
    assert_eq!(b.half_open_count(), 1);
}
