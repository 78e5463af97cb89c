//! Runs the fuzz bodies (the same functions the cargo-fuzz targets in
//! `fuzz/` call) over a few thousand generated and mutated inputs, so every
//! `cargo test` exercises them without a fuzzing toolchain.

// Test helpers outside #[test] fns are not covered by allow-unwrap-in-tests.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use bgp::{
    Aggregator, AsPath, AsSegment, Ctx, Message, MpNlri, MpReach, Open, Origin, PathAttrs, RawAttr,
    Update,
};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Valid messages to mutate from.
fn seeds() -> Vec<Vec<u8>> {
    let ctx = Ctx {
        four_octet_as: true,
    };
    let update = Update {
        withdrawn: vec!["10.9.0.0/16".parse().unwrap()],
        attrs: PathAttrs {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence(&[65530, 4_200_000_000])),
            next_hop: Some("169.254.10.1".parse().unwrap()),
            med: Some(5),
            communities: vec![0xfde8_0001],
            ..PathAttrs::default()
        },
        nlri: vec![
            "10.1.0.0/24".parse().unwrap(),
            "192.0.2.0/25".parse().unwrap(),
        ],
        errors: vec![],
    };
    let rich = Update {
        withdrawn: vec![],
        attrs: PathAttrs {
            origin: Some(Origin::Egp),
            as_path: Some(AsPath {
                segments: vec![
                    AsSegment::Sequence(vec![65530, 7]),
                    AsSegment::Set(vec![1, 2]),
                ],
            }),
            next_hop: Some("169.254.10.1".parse().unwrap()),
            local_pref: Some(100),
            atomic_aggregate: true,
            aggregator: Some(Aggregator {
                asn: 65530,
                addr: "192.0.2.1".parse().unwrap(),
            }),
            mp_reach: Some(MpReach {
                next_hop: vec![169, 254, 10, 1],
                nlri: MpNlri::Ipv4Unicast(vec!["10.7.0.0/16".parse().unwrap()]),
            }),
            mp_unreach: Some(MpNlri::Other {
                afi: 2,
                safi: 1,
                data: vec![64, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0],
            }),
            unknown: vec![RawAttr {
                flags: 0xc0,
                type_code: 32,
                value: vec![0; 300],
            }],
            ..PathAttrs::default()
        },
        nlri: vec!["203.0.113.0/24".parse().unwrap()],
        errors: vec![],
    };
    vec![
        Message::Update(rich.clone()).encode(&ctx),
        Message::Update(rich).encode(&Ctx {
            four_octet_as: false,
        }),
        Message::Open(Open::new(65530, 30, "169.254.10.1".parse().unwrap())).encode(&ctx),
        Message::Keepalive.encode(&ctx),
        Message::Update(update).encode(&ctx),
        Message::RouteRefresh(bgp::RouteRefresh::ipv4_unicast()).encode(&ctx),
    ]
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            _ => v.truncate(rng.below(v.len() + 1)),
        }
    }
    v
}

#[test]
fn fuzz_bodies_over_generated_inputs() {
    // The one clock read: any instant will do, the engine only compares.
    #[allow(clippy::disallowed_methods)]
    let t0 = Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds = seeds();
    let mut outcomes = std::collections::HashMap::new();
    for _ in 0..5000 {
        let seed = &seeds[rng.below(seeds.len())];
        let m = mutate(&mut rng, seed);
        // UPDATE bodies: the mutated message minus its header, and random
        // bytes.
        if m.get(18) == Some(&2) {
            *outcomes
                .entry(bgp::fuzz::update_body(m.get(19..).unwrap_or_default()))
                .or_insert(0) += 1;
        }
        let random: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        bgp::fuzz::update_body(&random);
        // Streams: a valid OPEN then mutated messages, split by byte 0.
        let mut stream = seeds[2].clone();
        stream.extend_from_slice(&seeds[3]);
        stream.extend_from_slice(&m);
        stream.insert(0, rng.next() as u8);
        bgp::fuzz::framing(&stream, t0);
        bgp::fuzz::framing(&random, t0);
    }
    // The mutations reach every decoder outcome, not only the error paths.
    use bgp::fuzz::Outcome;
    for o in [
        Outcome::Clean,
        Outcome::TreatAsWithdraw,
        Outcome::SessionReset,
    ] {
        assert!(
            outcomes.get(&o).copied().unwrap_or(0) > 20,
            "{o:?}: {outcomes:?}"
        );
    }
}
