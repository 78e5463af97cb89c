//! ESP in UDP without a NAT (RFC 7296 §2.23 forced encapsulation): two vpngw endpoints
//! agree on it through the vpngw vendor ID; any other peer sees the standard rule.

#![allow(clippy::unwrap_used)]

mod util;

use ike::{Endpoint, EndpointConfig, EspEncap, PeerConfig, VPNGW_VENDOR_ID};
use util::*;

/// A and B back to back without a NAT, with the given node-wide encapsulation modes.
fn pair(a_mode: EspEncap, b_mode: EspEncap, b_tweak: impl FnOnce(&mut PeerConfig)) -> Pair {
    let a = config_a();
    let mut b = mirror(&a);
    b_tweak(&mut b);
    let mut p = Pair::new(a.clone(), b.clone());
    let endpoint = |mode, seed| {
        let cfg = EndpointConfig {
            esp_encap: mode,
            ..EndpointConfig::default()
        };
        Endpoint::new(cfg, Box::new(TestRng(seed)))
    };
    p.a = endpoint(a_mode, 1);
    p.a.add_peer(PEER_A, a).unwrap();
    p.b = endpoint(b_mode, 2);
    p.b.add_peer(PEER_B, b).unwrap();
    p
}

fn carries_vendor_id(payload: &[u8]) -> bool {
    payload
        .windows(VPNGW_VENDOR_ID.len())
        .any(|w| w == VPNGW_VENDOR_ID)
}

/// Whether both ends' Child SAs use ESP in UDP on 4500 (and agree).
fn encapsulated(p: &Pair) -> bool {
    p.assert_children_match();
    let ca = &p.a.child_sas(PEER_A)[0];
    let cb = &p.b.child_sas(PEER_B)[0];
    assert_eq!(ca.udp_encap, cb.udp_encap, "{ca:?} {cb:?}");
    if ca.udp_encap {
        assert_eq!(ca.local, sock(A_IP, 4500));
        assert_eq!(ca.remote, sock(B_IP, 4500));
        assert_eq!(cb.local, sock(B_IP, 4500));
        assert_eq!(cb.remote, sock(A_IP, 4500));
    } else {
        assert_eq!(ca.remote, sock(B_IP, 500));
    }
    ca.udp_encap
}

#[test]
fn two_vpngw_use_udp_without_nat() {
    let mut p = pair(EspEncap::Auto, EspEncap::Auto, |_| {});
    p.initiate_a();
    assert!(carries_vendor_id(&p.wire[0].payload), "request");
    assert!(carries_vendor_id(&p.wire[1].payload), "response");
    assert!(encapsulated(&p));
    // IKE_AUTH already on 4500, and the responder said why.
    assert_eq!(p.wire[2].dst.port(), 4500);
    assert!(p.b_events.iter().any(|e| matches!(
        e,
        ike::Event::Log { message, .. } if message.contains("UDP encapsulation forced")
    )));
    // A Child SA rekey keeps the encapsulation.
    p.a.rekey_child(p.now, PEER_A).unwrap();
    p.drive();
    assert!(encapsulated(&p));
}

/// A vpngw initiator and a responder that does not know the vendor ID (or is told to
/// keep raw ESP): the standard rule, raw ESP.
#[test]
fn other_responders_see_the_standard_behaviour() {
    let mut p = pair(EspEncap::Auto, EspEncap::Raw, |_| {});
    p.initiate_a();
    assert!(carries_vendor_id(&p.wire[0].payload));
    assert!(!carries_vendor_id(&p.wire[1].payload));
    assert!(!encapsulated(&p));
}

/// An initiator without the vendor ID (strongSwan) gets raw ESP from a vpngw responder.
#[test]
fn other_initiators_see_the_standard_behaviour() {
    let mut p = pair(EspEncap::Raw, EspEncap::Auto, |_| {});
    p.initiate_a();
    assert!(!carries_vendor_id(&p.wire[0].payload));
    assert!(!encapsulated(&p));
    assert!(p.wire.iter().all(|w| w.dst.port() == 500));
}

/// The node-wide override forces UDP on either side, whatever the peer.
#[test]
fn udp_override_forces_encapsulation_both_ways() {
    let mut p = pair(EspEncap::Udp, EspEncap::Raw, |_| {});
    p.initiate_a();
    assert!(encapsulated(&p));
    let mut p = pair(EspEncap::Raw, EspEncap::Udp, |_| {});
    p.initiate_a();
    assert!(encapsulated(&p));
}

/// Without NAT traversal on the responder's tunnel nothing is forced.
#[test]
fn no_forcing_without_nat_traversal() {
    let mut p = pair(EspEncap::Auto, EspEncap::Auto, |b| b.nat_traversal = false);
    p.initiate_a();
    assert!(!encapsulated(&p));
}
