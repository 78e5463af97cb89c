//! The responder's half-open limit (`EndpointConfig::half_open_limit`, strongSwan's
//! `charon.init_limit_half_open`): past it, a request that would start another
//! negotiation is dropped and counted, so a flood of first messages cannot make
//! unbounded state. IKEv1 has no COOKIE exchange, so there the limit is the only
//! bound on what forged Main Mode first messages cost.

mod util;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ike::{EndpointConfig, Event, Identity, IkeVersion, PeerConfig, PeerId, V1Mode};
use util::*;

/// The virtual clock's start; time moves only as the tests say.
#[allow(clippy::disallowed_methods)] // the one real clock read
fn epoch() -> Instant {
    Instant::now()
}

fn limit(n: usize) -> EndpointConfig {
    EndpointConfig {
        half_open_limit: n,
        // No COOKIEs: IKEv2 requests reach the limit without returning one.
        cookie_threshold: usize::MAX,
        ..EndpointConfig::default()
    }
}

fn v1_main() -> PeerConfig {
    config_v1(V1Mode::Main)
}

/// `first` with CKY-I (bytes 0..8, RFC 2408 §3.1) replaced: the first message of
/// another negotiation, as a flood forges them.
fn with_cky_i(first: &[u8], cky_i: u64) -> Vec<u8> {
    let mut m = first.to_vec();
    m[..8].copy_from_slice(&cky_i.to_be_bytes());
    m
}

#[test]
fn forged_main_mode_first_messages_stop_at_the_limit() {
    let a = v1_main();
    let mut p = Pair::with_endpoints(
        a.clone(),
        mirror(&a),
        1,
        EndpointConfig::default(),
        limit(8),
    );
    p.initiate_a();
    assert_eq!(p.b.ike_sas(PEER_B).len(), 1);
    assert_eq!(p.b.child_sas(PEER_B).len(), 1);
    // An established ISAKMP SA is not half-open.
    assert_eq!(p.b.half_open_total(), 0);

    // Twenty forged first messages from the peer's address: eight make state.
    let mm1 = p.wire[0].clone();
    let (local, remote) = (mm1.dst, mm1.src);
    for k in 0..20u64 {
        p.b.handle_datagram(p.now, local, remote, &with_cky_i(&mm1.payload, 0x4000 + k));
    }
    assert_eq!(p.b.half_open_total(), 8);
    assert_eq!(p.b.stats().half_open_limited, 12);
    // A retransmission of one that was taken is answered, not counted as another.
    let dup = p.b.stats().duplicate_requests;
    p.b.handle_datagram(p.now, local, remote, &with_cky_i(&mm1.payload, 0x4000));
    assert_eq!(p.b.stats().duplicate_requests, dup + 1);
    assert_eq!(p.b.stats().half_open_limited, 12);
    p.drive(); // B's answers reach A, which has no such SAs

    // The tunnel that was up stays up and still rekeys its Child SA.
    p.b.rekey_child(p.now, PEER_B).expect("rekey");
    p.drive();
    let rekeyed = Pair::count(&p.b_events, |e| matches!(e, Event::ChildSaRekeyed { .. }));
    assert_eq!(rekeyed, 1, "{:?}", p.b_events);
    assert!(Pair::failures(&p.a_events).is_empty(), "{:?}", p.a_events);

    // The forged SAs time out after `half_open_timeout` (30 s), as IKEv2's do; then a
    // new first message makes state again.
    p.advance(Duration::from_secs(29));
    assert_eq!(p.b.half_open_total(), 8);
    p.advance(Duration::from_secs(2));
    assert_eq!(p.b.half_open_total(), 0);
    let timeouts = Pair::count(&p.b_events, |e| {
        matches!(
            e,
            Event::Log {
                event: "half_open_timeout",
                ..
            }
        )
    });
    // All eight went, but the tunnel's log got one row for them: anyone at the
    // address can cause these, and a flood must not push its history out.
    assert_eq!(timeouts, 1);
    let started = Pair::count(&p.b_events, |e| {
        matches!(
            e,
            Event::Log {
                event: "phase1_start",
                ..
            }
        )
    });
    assert_eq!(
        started, 1,
        "the real Main Mode's row; the forged ones came within 10 s"
    );
    assert_eq!(p.b.ike_sas(PEER_B).len(), 1);
    p.b.handle_datagram(p.now, local, remote, &with_cky_i(&mm1.payload, 0x9000));
    assert_eq!(p.b.half_open_total(), 1);
    assert_eq!(p.b.stats().half_open_limited, 12);
}

#[test]
fn ikev2_initiators_past_the_limit_get_in_when_one_finishes() {
    let t0 = epoch();
    let cfg = config_a();
    let mut b = endpoint(limit(2), 9, &[(PEER_B, mirror(&cfg))]);
    let mut a1 = endpoint(EndpointConfig::default(), 1, &[(PEER_A, cfg.clone())]);
    let mut a2 = endpoint(EndpointConfig::default(), 2, &[(PEER_A, cfg.clone())]);
    let mut a3 = endpoint(EndpointConfig::default(), 3, &[(PEER_A, cfg.clone())]);
    for a in [&mut a1, &mut a2, &mut a3] {
        a.initiate(t0, PEER_A).expect("initiate");
        relay(t0, a, &mut b);
    }
    // Two are half-open; the third request was dropped without an answer.
    assert_eq!(b.half_open_total(), 2);
    assert_eq!(b.stats().half_open_limited, 1);
    assert_eq!(
        relay(t0, &mut b, &mut a3).len(),
        2,
        "B answered A1 and A2 only"
    );

    // A1 and A2 (their answers went to A3's endpoint) retransmit; A1 finishes.
    let t1 = t0 + Duration::from_secs(5);
    a1.handle_timeout(t1);
    relay(t1, &mut a1, &mut b);
    for _ in 0..4 {
        relay(t1, &mut b, &mut a1);
        relay(t1, &mut a1, &mut b);
    }
    assert_eq!(established_count(&mut a1), 1);
    assert_eq!(b.half_open_total(), 1);

    // A3's retransmission now makes state.
    a3.handle_timeout(t1);
    assert_eq!(relay(t1, &mut a3, &mut b).len(), 1);
    assert_eq!(b.half_open_total(), 2);
    assert_eq!(b.stats().half_open_limited, 1);
}

#[test]
fn both_versions_share_the_limit() {
    let t0 = epoch();
    // B takes IKEv1 from A and IKEv2 from another address, X.
    let x = x_config();
    let v1 = v1_main();
    let mut b = endpoint(
        limit(1),
        9,
        &[(PEER_B, mirror(&v1)), (PeerId(3), mirror(&x))],
    );
    let mut xe = endpoint(EndpointConfig::default(), 1, &[(PEER_A, x)]);
    let mut ae = endpoint(EndpointConfig::default(), 2, &[(PEER_A, v1)]);

    xe.initiate(t0, PEER_A).expect("initiate");
    relay(t0, &mut xe, &mut b);
    assert_eq!((b.half_open_count(), b.half_open_total()), (1, 1));

    // The IKEv2 SA fills the limit: A's Main Mode message 1 is dropped.
    ae.initiate(t0, PEER_A).expect("initiate");
    relay(t0, &mut ae, &mut b);
    assert_eq!(b.half_open_total(), 1);
    assert_eq!(b.stats().half_open_limited, 1);

    // Once X's SA is up, A's retransmission makes an IKEv1 SA, which in turn fills
    // the limit for a new IKEv2 initiator.
    for _ in 0..4 {
        relay(t0, &mut b, &mut xe);
        relay(t0, &mut xe, &mut b);
    }
    assert_eq!(established_count(&mut xe), 1);
    assert_eq!(b.half_open_total(), 0);
    let t1 = t0 + Duration::from_secs(5);
    ae.handle_timeout(t1);
    assert_eq!(relay(t1, &mut ae, &mut b).len(), 1);
    assert_eq!((b.half_open_count(), b.half_open_total()), (0, 1));
    let mut y = endpoint(EndpointConfig::default(), 3, &[(PEER_A, x_config())]);
    y.initiate(t1, PEER_A).expect("initiate");
    relay(t1, &mut y, &mut b);
    assert_eq!(b.stats().half_open_limited, 2);
}

/// An IKEv2 initiator at another address than A's.
fn x_config() -> PeerConfig {
    let mut x = config_a();
    x.local = SocketAddr::from((NAT_IP, 500));
    x.local_id = Identity::Ipv4(NAT_IP);
    x
}

#[test]
fn a_flood_from_one_address_leaves_room_for_others() {
    let t0 = epoch();
    // B takes IKEv1 Main Mode from A and from X.
    let a = v1_main();
    let mut x = x_config();
    x.version = IkeVersion::V1;
    let cfg = EndpointConfig {
        half_open_per_address: 3,
        ..limit(8)
    };
    let mut b = endpoint(cfg, 9, &[(PEER_B, mirror(&a)), (PeerId(3), mirror(&x))]);
    let mut ae = endpoint(EndpointConfig::default(), 1, &[(PEER_A, a)]);
    ae.initiate(t0, PEER_A).expect("initiate");
    let mm1 = ae.poll_transmit().expect("Main Mode message 1");

    // Ten forged with A's address: three make state.
    for k in 0..10u64 {
        b.handle_datagram(
            t0,
            mm1.remote,
            mm1.local,
            &with_cky_i(&mm1.payload, 0x7000 + k),
        );
    }
    assert_eq!(b.half_open_total(), 3);
    assert_eq!(b.stats().half_open_limited, 7);

    // X, at another address, still gets in and finishes.
    let mut xe = endpoint(EndpointConfig::default(), 2, &[(PEER_A, x)]);
    xe.initiate(t0, PEER_A).expect("initiate");
    relay(t0, &mut xe, &mut b);
    assert_eq!(b.half_open_total(), 4);
    for _ in 0..6 {
        relay(t0, &mut b, &mut xe);
        relay(t0, &mut xe, &mut b);
    }
    assert_eq!(established_count(&mut xe), 1);
    assert_eq!(b.half_open_total(), 3);
    assert_eq!(b.stats().half_open_limited, 7);

    // A's own first message waits until the forged ones time out.
    b.handle_datagram(t0, mm1.remote, mm1.local, &mm1.payload);
    assert_eq!(b.stats().half_open_limited, 8);
    let t1 = t0 + Duration::from_secs(31);
    b.handle_timeout(t1);
    assert_eq!(b.half_open_total(), 0);
    b.handle_datagram(t1, mm1.remote, mm1.local, &mm1.payload);
    assert_eq!(b.half_open_total(), 1);
}
