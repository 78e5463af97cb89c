//! Fuzz bodies, shared by the cargo-fuzz targets in `fuzz/` and by the
//! plain `#[test]` that runs them over generated inputs. Each must never
//! panic on any input.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::message::{Ctx, Framer, HEADER_LEN, MARKER, MAX_MESSAGE_LEN, Message};
use crate::session::{Config, Session};
use crate::update::Update;

/// What [`update_body`] saw (for coverage checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Clean,
    AttributeDiscard,
    TreatAsWithdraw,
    SessionReset,
    TooLong,
}

/// Decodes `data` as an UPDATE body under both AS widths; a clean decode
/// must re-encode and decode to the same value. Returns how the 4-octet
/// decode went.
pub fn update_body(data: &[u8]) -> Outcome {
    let mut outcome = Outcome::TooLong;
    for ctx in [
        Ctx {
            four_octet_as: true,
        },
        Ctx {
            four_octet_as: false,
        },
    ] {
        let len = HEADER_LEN + data.len();
        let Ok(len16) = u16::try_from(len) else {
            return Outcome::TooLong;
        };
        let mut frame = MARKER.to_vec();
        frame.extend_from_slice(&len16.to_be_bytes());
        frame.push(2);
        frame.extend_from_slice(data);
        let decoded = Message::decode(&frame, &ctx);
        if ctx.four_octet_as {
            outcome = match &decoded {
                Ok(Message::Update(u)) if u.treat_as_withdraw() => Outcome::TreatAsWithdraw,
                Ok(Message::Update(u)) if !u.errors.is_empty() => Outcome::AttributeDiscard,
                Ok(_) => Outcome::Clean,
                Err(_) => Outcome::SessionReset,
            };
        }
        let Ok(Message::Update(u)) = decoded else {
            continue;
        };
        if !u.errors.is_empty() || len > MAX_MESSAGE_LEN {
            continue;
        }
        let again = Message::Update(u.clone()).encode(&ctx);
        match Message::decode(&again, &ctx) {
            Ok(Message::Update(Update {
                withdrawn,
                attrs,
                nlri,
                errors,
            })) => {
                assert!(
                    errors.is_empty(),
                    "re-encoded UPDATE has errors: {errors:?}"
                );
                assert_eq!((withdrawn, attrs, nlri), (u.withdrawn, u.attrs, u.nlri));
            }
            other => panic!("re-encoded UPDATE does not decode: {other:?}"),
        }
    }
    outcome
}

/// Feeds a TCP stream to a framer and to a session that has just opened
/// a connection: no panic, and the framer never returns a frame outside
/// 19..=4096 octets. The first octet is the segment size, the rest is the
/// stream. `t0` is any instant (the crate reads no clock).
pub fn framing(data: &[u8], t0: Instant) {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).max(1);
    let mut f = Framer::new();
    for chunk in data.chunks(split) {
        f.push(chunk);
        loop {
            match f.next_frame() {
                Ok(Some(frame)) => {
                    assert!((HEADER_LEN..=MAX_MESSAGE_LEN).contains(&frame.len()));
                    let _ = Message::decode(
                        frame,
                        &Ctx {
                            four_octet_as: true,
                        },
                    );
                }
                Ok(None) => break,
                Err(_) => {
                    f.clear();
                    break;
                }
            }
        }
    }
    let mut s = Session::new(Config::new(
        Ipv4Addr::new(169, 254, 10, 2),
        Ipv4Addr::new(169, 254, 10, 1),
        65530,
    ));
    s.start(t0);
    s.handle_connected(t0);
    for (i, chunk) in data.chunks(split).enumerate() {
        let now = t0 + Duration::from_millis(i as u64);
        s.handle_bytes(now, chunk);
        s.handle_timeout(now);
        while s.poll_event().is_some() {}
        let _ = s.poll_transmit();
    }
}
