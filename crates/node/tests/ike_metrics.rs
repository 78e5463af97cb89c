//! The IKE engine's counters reach `GET /metrics`: a malformed datagram sent to the
//! node's IKE port is dropped, counted and shown. API + node run in-process in a
//! namespace of their own (needs root); the datagram goes over that namespace's
//! loopback, nothing leaves it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::net::UdpSocket;
use std::time::{Duration, Instant};

mod common;

use common::{Gateway, metric};
use lab::Netns;

const MALFORMED: &str = "vpngw_ike_dropped_total{reason=\"malformed\"}";
const IN: &str = "vpngw_ike_datagrams_total{direction=\"in\"}";
const OUT: &str = "vpngw_ike_datagrams_total{direction=\"out\"}";

#[test]
fn malformed_ike_datagram_shows_in_metrics() {
    // Declared first, dropped last: the node stops before its namespace goes.
    let ns = Netns::new("ikem").unwrap();
    let gw = Gateway::start(&ns);
    // The series exist before any IKE traffic.
    assert_eq!(metric(&gw, MALFORMED), 0);
    assert_eq!(metric(&gw, IN), 0);

    // An IKE header cut short (20 of its 28 bytes; version byte 0, so not IKEv1): the
    // IKEv2 decoder refuses it.
    let mut truncated = [0u8; 20];
    truncated[..8].copy_from_slice(&0x0123_4567_89ab_cdef_u64.to_be_bytes());
    ns.run_in(|| {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(&truncated, "127.0.0.1:500").unwrap();
    })
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&gw, MALFORMED) < 1 {
        assert!(
            Instant::now() < deadline,
            "{MALFORMED} still 0 after 10 s: {:?}",
            gw.call_text("GET", "/metrics", None)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(metric(&gw, IN) >= 1);
    // Nothing is configured and garbage gets no answer.
    assert_eq!(metric(&gw, OUT), 0);
    assert_eq!(metric(&gw, "vpngw_ike_half_open_sas"), 0);
}
