//! Runs the fuzz body (`ike::fuzz`) over a few thousand generated and mutated inputs,
//! so that the property is checked on every `cargo test`, not only under cargo-fuzz.

mod util;

use std::time::{Duration, Instant};

use crypto::Random;
use ike::Event;
use ike::wire::registry::{ExchangeType, NotifyType, PayloadType};
use ike::wire::{Flags, HeaderRepr, KeyExchange, Message, Notify, Payload};
use util::*;

/// A valid IKE_SA_INIT request for `ike::fuzz::responder()`.
fn init_seed(rng: &mut TestRng) -> Vec<u8> {
    let cfg = ike::IkeProposal {
        encr: crypto::Encr::AesCbc128,
        integ: crypto::Integ::HmacSha1_96,
        dh: crypto::DhGroup::Curve25519,
    };
    let dh = crypto::DhPrivate::generate(cfg.dh, rng).expect("X25519 key generation");
    let mut nonce = vec![0; 32];
    rng.fill(&mut nonce);
    Message {
        header: HeaderRepr {
            spi_i: 0x0102030405060708,
            spi_r: 0,
            next_payload: PayloadType::NONE,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: Flags(Flags::INITIATOR),
            message_id: 0,
            length: 0,
        },
        payloads: vec![
            Payload::Sa(ike::proposal::ike_offer(&cfg, None)),
            Payload::Ke(KeyExchange {
                group: cfg.dh.iana_id(),
                data: dh.public_value().to_vec(),
            }),
            Payload::Nonce(nonce),
            Payload::Notify(Notify::new(
                NotifyType::NAT_DETECTION_SOURCE_IP,
                vec![1; 20],
            )),
            Payload::Notify(Notify::new(
                NotifyType::NAT_DETECTION_DESTINATION_IP,
                vec![2; 20],
            )),
            Payload::Vendor(b"strongSwan".to_vec()),
        ],
    }
    .encode()
}

fn mutate(rng: &mut TestRng, seed: &[u8]) -> Vec<u8> {
    let mut r = [0u8; 8];
    rng.fill(&mut r);
    let mut v = seed.to_vec();
    let pos = |x: u8| {
        if v.is_empty() {
            0
        } else {
            usize::from(x) * v.len() / 256
        }
    };
    match r[0] % 7 {
        0 => {
            let p = pos(r[1]);
            if let Some(b) = v.get_mut(p) {
                *b ^= 1 << (r[2] % 8);
            }
        }
        1 => {
            let p = pos(r[1]);
            if let Some(b) = v.get_mut(p) {
                *b = r[2];
            }
        }
        2 => v.truncate(pos(r[1])),
        3 => v.extend_from_slice(&r[..usize::from(r[1] % 8)]),
        4 => {
            // Payload length fields live at 28+2 etc.; hit 16-bit fields anywhere.
            let p = pos(r[1]);
            if p + 1 < v.len() {
                v[p] = r[2];
                v[p + 1] = r[3];
            }
        }
        5 => {
            let p = pos(r[1]);
            let n = usize::from(r[2] % 16);
            let end = (p + n).min(v.len());
            v.drain(p..end);
        }
        _ => {
            let n = usize::from(r[1]);
            v = vec![0; n];
            rng.fill(&mut v);
        }
    }
    v
}

#[test]
fn fuzz_body_over_mutated_inputs() {
    let mut rng = TestRng(7);
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let mut seeds = vec![init_seed(&mut rng)];
    // The seed reaches the engine's responder path: it answers with SA, KE and Nr.
    let mut ep = ike::fuzz::responder();
    ep.handle_datagram(now, sock(B_IP, 500), sock(A_IP, 500), &seeds[0]);
    let answer =
        Message::decode(&ep.poll_transmit().expect("IKE_SA_INIT response").payload).unwrap();
    let types: Vec<PayloadType> = answer.payloads.iter().map(Payload::ptype).collect();
    assert_eq!(
        &types[..3],
        &[PayloadType::SA, PayloadType::KE, PayloadType::NONCE]
    );
    // A cookie-demanding responder answers the same seed with N(COOKIE), and takes the
    // seed back with that cookie first. In the fuzz body each input meets a fresh
    // responder, so the cookie and its mutations only ever meet the verification.
    let mut ep = ike::fuzz::cookie_responder();
    ep.handle_datagram(now, sock(B_IP, 500), sock(A_IP, 500), &seeds[0]);
    let answer = Message::decode(&ep.poll_transmit().expect("the COOKIE answer").payload).unwrap();
    let Some(Payload::Notify(cookie)) = answer.payloads.first() else {
        panic!("{answer:?}");
    };
    assert_eq!(cookie.ntype, NotifyType::COOKIE);
    let mut with_cookie = Message::decode(&seeds[0]).unwrap();
    with_cookie
        .payloads
        .insert(0, Payload::Notify(cookie.clone()));
    let with_cookie = with_cookie.encode();
    ep.handle_datagram(now, sock(B_IP, 500), sock(A_IP, 500), &with_cookie);
    assert_eq!(ep.half_open_count(), 1, "the right cookie is taken");
    seeds.push(with_cookie);
    // Real traffic of a whole negotiation, rekeys and DPD included.
    let mut a = config_a();
    a.dpd_interval = Some(Duration::from_secs(10));
    a.esp.pfs = Some(crypto::DhGroup::Modp1024);
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    p.a.rekey_child(p.now, PEER_A).unwrap();
    p.drive();
    p.b.rekey_ike(p.now, PEER_B).unwrap();
    p.drive();
    p.advance(Duration::from_secs(30));
    seeds.extend(p.wire.iter().map(|w| w.payload.clone()));
    assert!(seeds.len() > 10);

    let mut runs = 0;
    for i in 0..3000 {
        let seed = &seeds[i % seeds.len()];
        let mut input = mutate(&mut rng, seed);
        if i % 5 == 0 {
            input = mutate(&mut rng, &input);
        }
        ike::fuzz::message(&input, now);
        runs += 1;
    }
    // Unmutated seeds decode (the body must not reject valid input).
    for s in &seeds {
        Message::decode(s).unwrap();
        ike::fuzz::message(s, now);
    }
    assert_eq!(runs, 3000);
}

#[test]
fn hostile_input_to_established_endpoints_is_dropped_and_counted() {
    let mut rng = TestRng(11);
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    let wire: Vec<Pkt> = p.wire.clone();
    let before = p.b.stats();
    for i in 0..2000 {
        let w = &wire[i % wire.len()];
        let bad = mutate(&mut rng, &w.payload);
        match w.to {
            Side::A => p.a.handle_datagram(p.now, w.dst, w.src, &bad),
            Side::B => p.b.handle_datagram(p.now, w.dst, w.src, &bad),
        }
        p.drive();
        p.advance(Duration::from_millis(50));
    }
    let s = p.b.stats();
    assert!(
        s.malformed + s.integrity_failures + s.unknown_spi + s.unexpected > before.malformed + 100,
        "{s:?}"
    );
    // Nobody was fooled into tearing the tunnel down.
    assert!(
        !p.a_events
            .iter()
            .chain(&p.b_events)
            .any(|e| matches!(e, Event::IkeSaDeleted { .. } | Event::ChildSaDeleted { .. }))
    );
    p.assert_ike_match();
    p.assert_children_match();
}
