//! Runs the IKEv1 fuzz body over mutated captured traffic on every `cargo test`: each
//! datagram of a Main Mode and an Aggressive Mode exchange (with quick mode, DPD and
//! delete) is mutated and delivered in place of the original, to endpoints that are in
//! exactly the state the original found them in.

mod util;

use std::time::Duration;

use crypto::Random;
use ike::{Event, PeerConfig, V1Mode};
use util::*;

fn v1(mode: V1Mode) -> PeerConfig {
    let mut a = config_v1(mode);
    a.dpd_interval = Some(Duration::from_secs(10));
    a
}

fn mutate(rng: &mut TestRng, seed: &[u8]) -> Vec<u8> {
    let mut r = [0u8; 8];
    rng.fill(&mut r);
    let mut v = seed.to_vec();
    let at = |x: u8, len: usize| usize::from(x) * len.max(1) / 256;
    match r[0] % 6 {
        0 => {
            // Flip a few bits anywhere.
            for k in 0..=(r[1] % 4) {
                let i = at(r[2 + usize::from(k)], v.len());
                if let Some(b) = v.get_mut(i) {
                    *b ^= 1 << (r[7] % 8);
                }
            }
        }
        1 => v.truncate(at(r[1], v.len())),
        2 => {
            // Corrupt a length field in the payload area.
            let i = 28 + at(r[1], v.len().saturating_sub(30));
            if i + 1 < v.len() {
                v[i] = r[2];
                v[i + 1] = r[3];
            }
        }
        3 => {
            let i = at(r[1], v.len());
            v.splice(i..i, std::iter::repeat_n(r[2], usize::from(r[3] % 40)));
        }
        4 => {
            // Header fields: exchange type, flags, message ID, next payload.
            if v.len() >= 28 {
                let i = [16, 18, 19, 20, 23, 27][usize::from(r[1] % 6)];
                v[i] = r[2];
            }
        }
        _ => {
            // Swap two bytes.
            let (i, j) = (at(r[1], v.len()), at(r[2], v.len()));
            if i < v.len() && j < v.len() {
                v.swap(i, j);
            }
        }
    }
    v
}

/// The datagrams of a whole tunnel life: phase 1, quick mode, DPD, delete.
fn capture(mode: V1Mode) -> Vec<Pkt> {
    let a = v1(mode);
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate_a();
    p.advance(Duration::from_secs(25));
    p.a.remove_peer(p.now, PEER_A).expect("peer");
    p.drive();
    assert_eq!(
        Pair::count(&p.b_events, |e| matches!(
            e,
            Event::ChildSaEstablished { .. }
        )),
        1
    );
    p.wire.clone()
}

/// Tunnels on B that accept any address, with other IDs: one with B's key, one with
/// a key of its own. They leave the capture unchanged (B's tunnel for A's address comes
/// first) but a message 5 that fails to verify is tried against them (`mm5_owner`).
fn add_decoys(p: &mut Pair, a: &PeerConfig) {
    for (id, key) in [(60, None), (61, Some("a decoy's own key"))] {
        let mut t = mirror(a);
        t.remote = None;
        t.remote_id = ike::Identity::Fqdn(format!("decoy{id}.example"));
        if let Some(k) = key {
            t.psk = ike::Psk::new(k);
        }
        p.b.add_peer(ike::PeerId(id), t).expect("decoy");
    }
}

#[test]
fn mutated_captured_traffic_in_place() {
    let mut rng = TestRng(0x5eed);
    let mut runs = 0;
    for mode in [V1Mode::Main, V1Mode::Aggressive] {
        let wire = capture(mode);
        assert!(wire.len() >= 12, "{}", wire.len());
        for (k, orig) in wire.iter().enumerate() {
            for _ in 0..12 {
                let bad = mutate(&mut rng, &orig.payload);
                // Replay the same run up to datagram k (same seed: same bytes), then
                // deliver the mutant instead of it.
                let a = v1(mode);
                let mut p = Pair::new(a.clone(), mirror(&a));
                add_decoys(&mut p, &a);
                let stop = k;
                p.fate = Box::new(move |pkt| {
                    if pkt.seq >= stop {
                        Fate::Drop
                    } else {
                        Fate::Deliver
                    }
                });
                p.initiate_a();
                p.advance(Duration::from_secs(25));
                if k >= wire.len() - 2 {
                    p.a.remove_peer(p.now, PEER_A).expect("peer");
                    p.drive();
                }
                assert_eq!(p.wire.get(k).map(|w| &w.payload), Some(&orig.payload));
                match orig.to {
                    Side::A => p.a.handle_datagram(p.now, orig.dst, orig.src, &bad),
                    Side::B => p.b.handle_datagram(p.now, orig.dst, orig.src, &bad),
                }
                p.fate = Box::new(|_| Fate::Deliver);
                p.advance(Duration::from_secs(200));
                runs += 1;
            }
            ike::v1::fuzz::decode(&orig.payload);
        }
    }
    assert!(runs > 200);
}

#[test]
fn fuzz_body_over_generated_inputs() {
    let mut rng = TestRng(42);
    #[allow(clippy::disallowed_methods)] // the test's virtual epoch
    let now = std::time::Instant::now();
    let seeds: Vec<Vec<u8>> = [V1Mode::Main, V1Mode::Aggressive]
        .into_iter()
        .flat_map(capture)
        .map(|p| p.payload)
        .collect();
    for i in 0..3000 {
        let seed = &seeds[i % seeds.len()];
        let mut m = mutate(&mut rng, seed);
        if i % 3 == 0 {
            m = mutate(&mut rng, &m);
        }
        ike::v1::fuzz::message(&m, now);
    }
    // Pure noise, short and long.
    for len in [0usize, 1, 17, 18, 27, 28, 29, 64, 300, 1500] {
        let mut b = vec![0u8; len];
        rng.fill(&mut b);
        if len > 17 {
            b[17] = 0x10;
        }
        ike::v1::fuzz::message(&b, now);
    }
}

#[test]
fn responder_survives_a_captured_first_message_and_mutants() {
    // The fuzz responder's Main Mode peer is the capture's initiator address.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::Instant::now();
    let mut ep = ike::v1::fuzz::responder();
    let first = capture(V1Mode::Main)[0].payload.clone();
    ike::v1::fuzz::handle(&mut ep, now, &first);
    // Message 2, then its retransmissions as the fuzz body runs the timers.
    assert!(ep.stats().datagrams_out >= 1);
    assert_eq!(ep.stats().malformed, 0);
    let mut rng = TestRng(9);
    for _ in 0..500 {
        let m = mutate(&mut rng, &first);
        ike::v1::fuzz::handle(&mut ep, now, &m);
    }
    assert!(ep.stats().malformed > 0);
}
