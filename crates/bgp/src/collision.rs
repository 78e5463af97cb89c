//! RFC 4271 §6.8 connection collision detection.
//!
//! Two speakers that both connect at once end up with two TCP connections
//! between them, one initiated by each. A driver runs one [`Session`] per
//! connection and, after every input, asks [`resolve`] which one to give up:
//! once the peer's OPEN has arrived on both (both in OpenConfirm), the
//! connection initiated by the speaker with the higher BGP Identifier is
//! kept; a connection already Established wins over a new one. The loser is
//! closed with [`Session::collision_dump`] (Cease, subcode 7). Both speakers
//! apply the same rule to the same two identifiers, so both keep the same
//! connection.

use crate::{Session, State};

/// Who opened a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// We connected to the peer's port 179.
    Local,
    /// The peer connected to ours.
    Remote,
}

/// Which of the two sessions to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loser {
    First,
    Second,
}

/// RFC 4271 §6.8 for two sessions with the same peer, `first` being the one
/// whose connection existed first. `None` while nothing can be decided yet
/// (an OPEN is still missing) or when there is no collision.
pub fn resolve(first: (&Session, Initiator), second: (&Session, Initiator)) -> Option<Loser> {
    let (a, a_by) = first;
    let (b, b_by) = second;
    let connected = |s: State| matches!(s, State::OpenSent | State::OpenConfirm);
    match (a.state(), b.state()) {
        // "a connection collision with an existing BGP connection that is in
        // the Established state causes the closing of the newly created
        // connection"; one that is still opening gives way to it too.
        (State::Established, s) if connected(s) || s == State::Established => Some(Loser::Second),
        (s, State::Established) if connected(s) => Some(Loser::First),
        (State::OpenConfirm, State::OpenConfirm) => {
            // Two connections we opened ourselves (or both the peer's) are
            // not a collision the rule can order: keep the older one.
            if a_by == b_by {
                return Some(Loser::Second);
            }
            let remote = b.peer_router_id().or(a.peer_router_id())?;
            let local = a.config().router_id;
            // "If the value of the local BGP Identifier is less than the
            // remote one, the local system closes the BGP connection that
            // already exists [...] and accepts the BGP connection initiated
            // by the remote system"; otherwise it keeps its own.
            let keep = if u32::from(local) < u32::from(remote) {
                Initiator::Remote
            } else {
                Initiator::Local
            };
            Some(if a_by == keep {
                Loser::Second
            } else {
                Loser::First
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::{Config, Event, Ipv4Net, Message, Notification};

    const A: Ipv4Addr = Ipv4Addr::new(169, 254, 10, 1);
    const B: Ipv4Addr = Ipv4Addr::new(169, 254, 10, 2);

    /// One speaker: a session per TCP connection, as the node's driver holds
    /// them (its own outgoing one first, then the peer's).
    struct Speaker {
        out: Session,
        inc: Session,
        /// Sessions closed by collision resolution (`out`, `inc`).
        dumped: [bool; 2],
    }

    impl Speaker {
        fn new(
            local: Ipv4Addr,
            peer: Ipv4Addr,
            local_asn: u32,
            peer_asn: u32,
            now: Instant,
        ) -> Self {
            let mk = || {
                let mut c = Config::new(local, peer, peer_asn);
                c.local_asn = local_asn;
                let mut s = Session::new(c);
                s.start(now);
                s.advertise(
                    now,
                    &[net(if local == A {
                        "172.16.0.0/16"
                    } else {
                        "10.2.0.0/24"
                    })],
                );
                s
            };
            Self {
                out: mk(),
                inc: mk(),
                dumped: [false; 2],
            }
        }

        fn resolve(&mut self, now: Instant) {
            let r = resolve(
                (&self.out, Initiator::Local),
                (&self.inc, Initiator::Remote),
            );
            match r {
                Some(Loser::First) if !self.dumped[0] => {
                    self.dumped[0] = true;
                    self.out.collision_dump(now);
                }
                Some(Loser::Second) if !self.dumped[1] => {
                    self.dumped[1] = true;
                    self.inc.collision_dump(now);
                }
                _ => {}
            }
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// Moves bytes over both connections (A.out ↔ B.inc, B.out ↔ A.inc) in
    /// lock-step rounds (what every session queued is delivered at once, as
    /// on two real connections opened at the same moment) until nothing
    /// moves, resolving collisions after each round. Collects the
    /// NOTIFICATIONs put on each connection.
    fn pump(
        a: &mut Speaker,
        b: &mut Speaker,
        now: Instant,
        notes: &mut Vec<(&'static str, Notification)>,
    ) {
        for _ in 0..100 {
            let take = |s: &mut Session| {
                std::iter::from_fn(|| s.poll_transmit())
                    .flatten()
                    .collect::<Vec<u8>>()
            };
            let (a_out, b_inc) = (take(&mut a.out), take(&mut b.inc));
            let (b_out, a_inc) = (take(&mut b.out), take(&mut a.inc));
            let moved = [&a_out, &b_inc, &b_out, &a_inc]
                .iter()
                .any(|x| !x.is_empty());
            deliver(&mut b.inc, &a_out, now, "conn A→B", notes);
            deliver(&mut a.out, &b_inc, now, "conn A→B", notes);
            deliver(&mut a.inc, &b_out, now, "conn B→A", notes);
            deliver(&mut b.out, &a_inc, now, "conn B→A", notes);
            a.resolve(now);
            b.resolve(now);
            if !moved {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn deliver(
        to: &mut Session,
        bytes: &[u8],
        now: Instant,
        conn: &'static str,
        notes: &mut Vec<(&'static str, Notification)>,
    ) {
        for m in decode_all(bytes).unwrap() {
            if let Message::Notification(n) = m {
                notes.push((conn, n));
            }
        }
        if to.state() != State::Idle {
            to.handle_bytes(now, bytes);
        }
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Message>, crate::DecodeError> {
        let mut f = crate::Framer::new();
        f.push(bytes);
        let mut out = vec![];
        while let Some(frame) = f.next_frame()? {
            out.push(Message::decode(frame, &crate::Ctx::default())?);
        }
        Ok(out)
    }

    fn drain(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    #[test]
    fn simultaneous_open_keeps_the_higher_identifiers_connection() {
        #[allow(clippy::disallowed_methods)] // the one clock read: virtual time from here
        let mut now = Instant::now();
        let mut a = Speaker::new(A, B, 45104, 65530, now);
        let mut b = Speaker::new(B, A, 65530, 45104, now);
        // Both asked for a connection at start; both connect at once, and each
        // also accepts the other's.
        for s in [&mut a.out, &mut b.out] {
            assert!(drain(s).contains(&Event::Connect));
            s.handle_connected(now);
        }
        for s in [&mut a.inc, &mut b.inc] {
            drain(s);
            s.handle_connected(now);
        }
        let mut notes = vec![];
        now += Duration::from_millis(10);
        pump(&mut a, &mut b, now, &mut notes);

        // B (169.254.10.2) has the higher identifier: B's connection (B→A)
        // stays on both sides; A→B is closed by both, with Cease 6/7.
        assert!(a.dumped[0] && !a.dumped[1], "A dumps its own connection");
        assert!(!b.dumped[0] && b.dumped[1], "B dumps A's connection");
        assert_eq!(a.out.state(), State::Idle);
        assert_eq!(b.inc.state(), State::Idle);
        assert_eq!(a.inc.state(), State::Established);
        assert_eq!(b.out.state(), State::Established);
        assert!(
            notes
                .iter()
                .all(|(c, n)| *c == "conn A→B" && (n.code, n.subcode) == (6, 7)),
            "{notes:?}"
        );
        assert!(!notes.is_empty());
        // The kept connection carries the routes; the dumped sessions said why
        // they went down and do not restart.
        assert!(a.inc.adj_rib_in().any(|(p, _)| *p == net("10.2.0.0/24")));
        assert!(b.out.adj_rib_in().any(|(p, _)| *p == net("172.16.0.0/16")));
        let down = drain(&mut a.out);
        assert!(
            down.iter().any(|e| matches!(
                e,
                Event::Down {
                    reason: crate::DownReason::CollisionResolved
                }
            )),
            "{down:?}"
        );
        assert!(down.contains(&Event::Close));
        a.out.handle_timeout(now + Duration::from_secs(60));
        assert_eq!(a.out.state(), State::Idle);
        assert!(!drain(&mut a.out).contains(&Event::Connect));
        // Keepalives keep the kept session up on the virtual clock.
        for _ in 0..6 {
            now += Duration::from_secs(10);
            for s in [&mut a.inc, &mut b.out] {
                s.handle_timeout(now);
            }
            pump(&mut a, &mut b, now, &mut notes);
        }
        assert_eq!(a.inc.state(), State::Established);
        assert_eq!(b.out.state(), State::Established);
    }

    #[test]
    fn established_connection_wins_over_a_new_one() {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut a = Speaker::new(A, B, 45104, 65530, now);
        let mut b = Speaker::new(B, A, 65530, 45104, now);
        // Only A→B first: it reaches Established.
        drain(&mut a.out);
        a.out.handle_connected(now);
        drain(&mut b.inc);
        b.inc.handle_connected(now);
        let mut notes = vec![];
        pump(&mut a, &mut b, now, &mut notes);
        assert_eq!(a.out.state(), State::Established);
        assert_eq!(b.inc.state(), State::Established);
        // Then B's late connect gets through: although B has the higher
        // identifier, the established connection stays.
        drain(&mut b.out);
        b.out.handle_connected(now);
        drain(&mut a.inc);
        a.inc.handle_connected(now);
        pump(&mut a, &mut b, now, &mut notes);
        assert_eq!(a.out.state(), State::Established);
        assert_eq!(b.inc.state(), State::Established);
        assert!(
            a.dumped[1] && b.dumped[0],
            "the new connection is closed by both"
        );
        assert!(!a.dumped[0] && !b.dumped[1]);
    }

    #[test]
    fn undecided_until_both_opens_arrived() {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let c = |l, p| Session::new(Config::new(l, p, 65530));
        let (mut x, mut y) = (c(A, B), c(A, B));
        x.start(now);
        y.start(now);
        x.handle_connected(now);
        y.handle_connected(now);
        // Both OpenSent: no OPEN from the peer yet.
        assert_eq!(
            resolve((&x, Initiator::Local), (&y, Initiator::Remote)),
            None
        );
        // Connect state (no connection) against OpenSent: nothing to resolve.
        let z = c(A, B);
        assert_eq!(
            resolve((&z, Initiator::Local), (&y, Initiator::Remote)),
            None
        );
    }
}
