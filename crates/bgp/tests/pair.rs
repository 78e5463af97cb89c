//! Two `Session`s back to back on a virtual clock: a gateway side (AS 45104)
//! and an on-premises side (AS 65530) wired through an in-memory "TCP
//! connection" that can split bytes, go silent, or refuse connections.

// Test helpers outside #[test] fns are not covered by allow-unwrap-in-tests.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bgp::{
    Config, Ctx, DownReason, Event, Framer, Ipv4Net, Message, MessageType, Mode, Notification,
    PathAttrs, RouteChanges, Session, State,
};

const GW: Ipv4Addr = Ipv4Addr::new(169, 254, 10, 2);
const ONPREM: Ipv4Addr = Ipv4Addr::new(169, 254, 10, 1);

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

struct Pair {
    a: Session,
    b: Session,
    now: Instant,
    connected: bool,
    /// Deliver bytes in chunks of this size (TCP segmentation).
    segment: usize,
    /// Drop everything B sends (B went silent; the connection stays up).
    mute_b: bool,
    /// Refuse connections (peer not listening).
    refuse: bool,
    events_a: Vec<(Instant, Event)>,
    events_b: Vec<(Instant, Event)>,
    /// Messages each side put on the wire, with the time.
    sent_a: Vec<(Instant, MessageType)>,
    sent_b: Vec<(Instant, MessageType)>,
    framer_a: Framer,
    framer_b: Framer,
}

impl Pair {
    fn new(a: Config, b: Config) -> Self {
        // The one clock read of the whole test: every later instant is
        // virtual, derived from this base.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        Self {
            a: Session::new(a),
            b: Session::new(b),
            now,
            connected: false,
            segment: usize::MAX,
            mute_b: false,
            refuse: false,
            events_a: vec![],
            events_b: vec![],
            sent_a: vec![],
            sent_b: vec![],
            framer_a: Framer::new(),
            framer_b: Framer::new(),
        }
    }

    /// Gateway actively connecting to a passive on-premises side.
    fn standard() -> Self {
        let a = Config::new(GW, ONPREM, 65530);
        let mut b = Config::new(ONPREM, GW, 45104);
        b.local_asn = 65530;
        b.mode = Mode::Passive;
        Self::new(a, b)
    }

    fn start(&mut self) {
        self.b.start(self.now);
        self.a.start(self.now);
        self.drive();
    }

    fn side(&mut self, s: Side) -> &mut Session {
        match s {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    fn drive(&mut self) {
        for _ in 0..1000 {
            let mut progress = false;
            for s in [Side::A, Side::B] {
                progress |= self.flush(s);
            }
            for s in [Side::A, Side::B] {
                while let Some(ev) = self.side(s).poll_event() {
                    progress = true;
                    self.on_event(s, &ev);
                    let now = self.now;
                    match s {
                        Side::A => self.events_a.push((now, ev)),
                        Side::B => self.events_b.push((now, ev)),
                    }
                }
            }
            if !progress {
                return;
            }
        }
        panic!("no quiescence after 1000 rounds");
    }

    /// Delivers everything `s` has queued; true if there was something.
    fn flush(&mut self, s: Side) -> bool {
        let mut any = false;
        while let Some(bytes) = self.side(s).poll_transmit() {
            any = true;
            self.record_sent(s, &bytes);
            if !self.connected || (s == Side::B && self.mute_b) {
                continue;
            }
            let now = self.now;
            let other = if s == Side::A { Side::B } else { Side::A };
            for chunk in bytes.chunks(self.segment) {
                self.side(other).handle_bytes(now, chunk);
            }
        }
        any
    }

    fn on_event(&mut self, s: Side, ev: &Event) {
        let now = self.now;
        let other = if s == Side::A { Side::B } else { Side::A };
        match ev {
            Event::Connect => {
                if self.connected {
                    // A connection already exists (the other side's); as
                    // documented, the driver keeps the first one.
                    return;
                }
                let accepting = matches!(self.side(other).state(), State::Active | State::Connect);
                if self.refuse || !accepting {
                    self.side(s).handle_closed(now);
                } else {
                    self.connected = true;
                    self.framer_a.clear();
                    self.framer_b.clear();
                    self.side(s).handle_connected(now);
                    self.side(other).handle_connected(now);
                }
            }
            Event::Close => {
                // Like a real driver: write what is queued, then close.
                self.flush(s);
                if self.connected {
                    self.connected = false;
                    self.side(other).handle_closed(now);
                }
            }
            _ => {}
        }
    }

    fn record_sent(&mut self, s: Side, bytes: &[u8]) {
        let now = self.now;
        let (framer, sent) = match s {
            Side::A => (&mut self.framer_a, &mut self.sent_a),
            Side::B => (&mut self.framer_b, &mut self.sent_b),
        };
        framer.push(bytes);
        while let Some(frame) = framer.next_frame().unwrap() {
            let m = Message::decode(
                frame,
                &Ctx {
                    four_octet_as: true,
                },
            )
            .unwrap();
            sent.push((now, m.message_type()));
        }
    }

    /// Advance virtual time by `d`, firing timers as they fall due.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    self.a.handle_timeout(now);
                    self.b.handle_timeout(now);
                    self.drive();
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
    }

    fn established(&self) -> bool {
        self.a.state() == State::Established && self.b.state() == State::Established
    }

    fn downs(events: &[(Instant, Event)]) -> Vec<DownReason> {
        events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Down { reason } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    fn route_changes(events: &[(Instant, Event)]) -> Vec<RouteChanges> {
        events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::RoutesChanged(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    fn established_events(events: &[(Instant, Event)]) -> Vec<(u32, u16)> {
        events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Established {
                    peer_asn,
                    hold_time,
                    ..
                } => Some((*peer_asn, *hold_time)),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn establishes_with_negotiated_timers() {
    let mut p = Pair::standard();
    p.start();
    assert!(p.established(), "a={:?} b={:?}", p.a.state(), p.b.state());
    assert_eq!(Pair::established_events(&p.events_a), [(65530, 30)]);
    assert_eq!(Pair::established_events(&p.events_b), [(45104, 30)]);
    assert_eq!(p.a.keepalive_interval(), Some(10));
    assert_eq!(p.a.peer_router_id(), Some(ONPREM));
    // The gateway opened; both sent OPEN then KEEPALIVE.
    assert_eq!(
        p.sent_a.iter().map(|s| s.1).take(2).collect::<Vec<_>>(),
        [MessageType::Open, MessageType::Keepalive]
    );
}

#[test]
fn establishes_with_every_segmentation() {
    for segment in [1, 2, 5, 19, 20, 64] {
        let mut p = Pair::standard();
        p.segment = segment;
        p.a.advertise(p.now, &[net("10.0.0.0/16")]);
        p.start();
        assert!(p.established(), "segment {segment}");
        assert_eq!(p.b.adj_rib_in().count(), 1, "segment {segment}");
    }
}

#[test]
fn hold_time_is_the_minimum_and_zero_disables_keepalives() {
    let mut p = Pair::standard();
    let mut b = p.b.config().clone();
    b.hold_time = 9;
    p.b = Session::new(b);
    p.start();
    assert_eq!(p.a.hold_time(), Some(9));
    assert_eq!(p.a.keepalive_interval(), Some(3));
    assert_eq!(p.b.keepalive_interval(), Some(3));

    let mut a = Config::new(GW, ONPREM, 65530);
    a.hold_time = 0;
    let mut b = Config::new(ONPREM, GW, 45104);
    b.local_asn = 65530;
    b.mode = Mode::Passive;
    let mut p = Pair::new(a, b);
    p.start();
    assert!(p.established());
    assert_eq!(p.b.hold_time(), Some(0));
    assert_eq!(p.a.poll_timeout(), None);
    let before = p.sent_a.len() + p.sent_b.len();
    p.advance(Duration::from_secs(3600));
    assert!(p.established());
    assert_eq!(
        p.sent_a.len() + p.sent_b.len(),
        before,
        "no keepalives with hold time 0"
    );
}

#[test]
fn exchanges_routes_both_ways() {
    let mut p = Pair::standard();
    // Advertised before establishment: sent once established.
    p.a.advertise(p.now, &[net("10.0.0.0/16"), net("10.10.0.0/24")]);
    p.start();
    p.b.advertise(p.now, &[net("10.1.0.0/24")]);
    p.drive();

    let at_b: Vec<_> = p.b.adj_rib_in().map(|(n, a)| (*n, a.clone())).collect();
    assert_eq!(at_b.len(), 2);
    let attrs = &at_b[0].1;
    assert_eq!(attrs.as_path.as_ref().unwrap().to_string(), "45104");
    assert_eq!(attrs.next_hop, Some(GW));
    assert_eq!(attrs.origin, Some(bgp::Origin::Igp));
    let at_a: Vec<_> = p.a.adj_rib_in().map(|(n, a)| (*n, a.clone())).collect();
    assert_eq!(at_a.len(), 1);
    assert_eq!(at_a[0].0, net("10.1.0.0/24"));
    assert_eq!(at_a[0].1.as_path.as_ref().unwrap().to_string(), "65530");
    assert_eq!(at_a[0].1.next_hop, Some(ONPREM));
    let changes = Pair::route_changes(&p.events_a);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].announced[0].0, net("10.1.0.0/24"));

    // Withdraw reaches the other side as a RoutesChanged withdrawal.
    p.b.withdraw(p.now, &[net("10.1.0.0/24")]);
    p.drive();
    assert_eq!(p.a.adj_rib_in().count(), 0);
    assert_eq!(
        Pair::route_changes(&p.events_a).last().unwrap().withdrawn,
        [net("10.1.0.0/24")]
    );
    // Withdrawing something never advertised sends nothing.
    let n = p.sent_b.len();
    p.b.withdraw(p.now, &[net("10.99.0.0/24")]);
    p.drive();
    assert_eq!(p.sent_b.len(), n);
}

#[test]
fn many_prefixes_split_into_several_updates() {
    let mut p = Pair::standard();
    let prefixes: Vec<Ipv4Net> = (0..3000u32)
        .map(|i| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap())
        .collect();
    p.a.advertise(p.now, &prefixes);
    p.start();
    assert_eq!(p.b.adj_rib_in().count(), 3000);
    let updates = p
        .sent_a
        .iter()
        .filter(|s| s.1 == MessageType::Update)
        .count();
    assert!(updates >= 4, "{updates} UPDATEs for 3000 prefixes");
    p.a.withdraw(p.now, &prefixes);
    p.drive();
    assert_eq!(p.b.adj_rib_in().count(), 0);
}

#[test]
fn keepalive_cadence() {
    let mut p = Pair::standard();
    p.start();
    let t0 = p.now;
    p.sent_a.clear();
    p.advance(Duration::from_secs(60));
    let times: Vec<u64> = p
        .sent_a
        .iter()
        .filter(|s| s.1 == MessageType::Keepalive)
        .map(|s| (s.0 - t0).as_secs())
        .collect();
    assert_eq!(times, [10, 20, 30, 40, 50, 60]);
    assert!(p.established());
}

#[test]
fn hold_timer_expiry_when_peer_goes_silent() {
    let mut p = Pair::standard();
    p.start();
    p.b.advertise(p.now, &[net("10.1.0.0/24")]);
    p.drive();
    assert_eq!(p.a.adj_rib_in().count(), 1);
    let silent_at = p.now;
    p.mute_b = true;
    p.advance(Duration::from_secs(29));
    assert!(p.a.state() == State::Established);
    p.advance(Duration::from_secs(2));
    assert_eq!(p.a.state(), State::Idle);
    let downs = Pair::downs(&p.events_a);
    assert_eq!(downs.len(), 1);
    assert_eq!(downs[0], DownReason::HoldTimerExpired { hold_time: 30 });
    assert!(
        downs[0].to_string().contains("hold timer expired"),
        "{}",
        downs[0]
    );
    // B's last keepalive was at silent_at + 0..10 s, so A gave up 30 s later.
    let down_at = p
        .events_a
        .iter()
        .find(|(_, e)| matches!(e, Event::Down { .. }))
        .unwrap()
        .0;
    assert!(down_at - silent_at <= Duration::from_secs(30));
    // Routes from B were withdrawn before the Down.
    let last = Pair::route_changes(&p.events_a).pop().unwrap();
    assert_eq!(last.withdrawn, [net("10.1.0.0/24")]);
    assert_eq!(p.a.adj_rib_in().count(), 0);
    // A told B why (4/0), and B went down on it.
    assert!(p.sent_a.iter().any(|s| s.1 == MessageType::Notification));
    assert_eq!(
        Pair::downs(&p.events_b),
        [DownReason::NotificationReceived(Notification::new(4, 0))]
    );
    // Once B speaks again the gateway comes back by itself.
    p.mute_b = false;
    p.advance(Duration::from_secs(30));
    assert!(p.established());
    assert_eq!(p.a.adj_rib_in().count(), 1);
}

#[test]
fn bad_peer_as() {
    let mut p = Pair::standard();
    let mut b = p.b.config().clone();
    b.local_asn = 65000;
    p.b = Session::new(b);
    p.start();
    assert!(!p.established());
    let downs = Pair::downs(&p.events_a);
    let DownReason::Error { sent, detail } = &downs[0] else {
        panic!("{downs:?}")
    };
    assert_eq!((sent.code, sent.subcode), (2, 2));
    let text = downs[0].to_string();
    assert!(text.contains("65000") && text.contains("65530"), "{text}");
    assert!(text.contains("Bad Peer AS"), "{text}");
    assert!(detail.contains("65000"));
    assert_eq!(
        Pair::downs(&p.events_b),
        [DownReason::NotificationReceived(Notification::new(2, 2))]
    );
    // It keeps retrying (and failing) without ever establishing.
    p.advance(Duration::from_secs(60));
    assert!(!p.established());
    assert!(Pair::downs(&p.events_a).len() > 2);
}

#[test]
fn restart_reestablishes_and_relearns_routes() {
    // Both sides active: only one connection is ever used.
    let a = Config::new(GW, ONPREM, 65530);
    let mut b = Config::new(ONPREM, GW, 45104);
    b.local_asn = 65530;
    let mut p = Pair::new(a, b);
    p.a.advertise(p.now, &[net("10.0.0.0/16")]);
    p.b.advertise(p.now, &[net("10.1.0.0/24")]);
    p.start();
    assert!(p.established());
    // On-premises operator restarts BGP.
    p.b.stop(p.now);
    p.drive();
    assert_eq!(p.a.state(), State::Idle);
    let downs = Pair::downs(&p.events_a);
    assert_eq!(
        downs,
        [DownReason::NotificationReceived(Notification::new(6, 2))]
    );
    assert_eq!(
        downs[0].to_string(),
        "peer sent NOTIFICATION 6/2 (Cease / Administrative Shutdown)"
    );
    assert_eq!(p.a.adj_rib_in().count(), 0);
    assert_eq!(Pair::downs(&p.events_b), [DownReason::Stopped]);
    p.advance(Duration::from_secs(1));
    p.b.start(p.now);
    p.drive();
    p.advance(Duration::from_secs(20));
    assert!(p.established());
    assert_eq!(Pair::established_events(&p.events_a).len(), 2);
    assert_eq!(p.a.adj_rib_in().count(), 1);
    assert_eq!(p.b.adj_rib_in().count(), 1);
    assert_eq!(p.a.stats().established, 2);
}

#[test]
fn connect_retries_while_peer_is_not_listening() {
    let mut p = Pair::standard();
    p.refuse = true;
    p.start();
    assert_eq!(p.a.state(), State::Active);
    p.advance(Duration::from_secs(35));
    let connects = p
        .events_a
        .iter()
        .filter(|(_, e)| *e == Event::Connect)
        .count();
    assert_eq!(connects, 4, "initial attempt + one per 10 s connect-retry");
    p.refuse = false;
    p.advance(Duration::from_secs(10));
    assert!(p.established());
}

#[test]
fn route_refresh_resends_our_routes() {
    let mut p = Pair::standard();
    p.a.advertise(p.now, &[net("10.0.0.0/16")]);
    p.start();
    let before = p
        .sent_a
        .iter()
        .filter(|s| s.1 == MessageType::Update)
        .count();
    assert!(p.b.request_refresh());
    p.drive();
    let after = p
        .sent_a
        .iter()
        .filter(|s| s.1 == MessageType::Update)
        .count();
    assert_eq!(after, before + 1);
    assert!(p.sent_b.iter().any(|s| s.1 == MessageType::RouteRefresh));
}

/// Raw bytes injected into an established gateway session.
fn inject(p: &mut Pair, bytes: &[u8]) {
    let now = p.now;
    p.a.handle_bytes(now, bytes);
    p.drive();
}

fn update_bytes(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(attrs);
    body.extend_from_slice(nlri);
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(2);
    m.extend_from_slice(&body);
    m
}

#[test]
fn malformed_updates_treat_as_withdraw_and_keep_the_session() {
    let mut p = Pair::standard();
    p.start();
    let good = [
        &[0x40, 1, 1, 0][..],
        &[0x40, 2, 6, 2, 1, 0, 0, 0xff, 0xfa],
        &[0x40, 3, 4, 169, 254, 10, 1],
    ]
    .concat();
    inject(&mut p, &update_bytes(&good, &[24, 10, 1, 0]));
    assert_eq!(p.a.adj_rib_in().count(), 1);
    // Same prefix with a bad ORIGIN: withdrawn, session stays up.
    let bad = [
        &[0x40, 1, 1, 7][..],
        &[0x40, 2, 6, 2, 1, 0, 0, 0xff, 0xfa],
        &[0x40, 3, 4, 169, 254, 10, 1],
    ]
    .concat();
    inject(&mut p, &update_bytes(&bad, &[24, 10, 1, 0]));
    assert_eq!(p.a.adj_rib_in().count(), 0);
    assert_eq!(p.a.state(), State::Established);
    assert_eq!(p.a.stats().treat_as_withdraw, 1);
    assert!(
        p.events_a
            .iter()
            .any(|(_, e)| matches!(e, Event::Log(bgp::LogEvent::TreatAsWithdraw { .. })))
    );
    // An eBGP path not starting with the peer's AS (RFC 4271 §6.3).
    let wrong_first = [
        &[0x40, 1, 1, 0][..],
        &[0x40, 2, 6, 2, 1, 0, 0, 0, 7],
        &[0x40, 3, 4, 169, 254, 10, 1],
    ]
    .concat();
    inject(&mut p, &update_bytes(&wrong_first, &[24, 10, 1, 0]));
    assert_eq!(p.a.adj_rib_in().count(), 0);
    // Our own address as next hop.
    let own_nh = [
        &[0x40, 1, 1, 0][..],
        &[0x40, 2, 6, 2, 1, 0, 0, 0xff, 0xfa],
        &[0x40, 3, 4, 169, 254, 10, 2],
    ]
    .concat();
    inject(&mut p, &update_bytes(&own_nh, &[24, 10, 1, 0]));
    assert_eq!(p.a.adj_rib_in().count(), 0);
    // LOCAL_PREF from an eBGP peer is dropped, the route kept.
    let lp = [good.as_slice(), &[0x40, 5, 4, 0, 0, 1, 0]].concat();
    inject(&mut p, &update_bytes(&lp, &[24, 10, 1, 0]));
    let (_, attrs) = p.a.adj_rib_in().next().unwrap();
    assert_eq!(attrs.local_pref, None);
    assert_eq!(p.a.stats().treat_as_withdraw, 3);
    assert!(p.established());
    let _: &Arc<PathAttrs> = attrs;
}

#[test]
fn fatal_errors_send_the_right_notification() {
    let cases: Vec<(Vec<u8>, (u8, u8))> = vec![
        // Bad marker.
        (
            {
                let mut m = vec![0xff; 15];
                m.extend_from_slice(&[0, 0, 19, 4]);
                m
            },
            (1, 1),
        ),
        // Bad length.
        (
            {
                let mut m = vec![0xff; 16];
                m.extend_from_slice(&[0x20, 0, 4]);
                m
            },
            (1, 2),
        ),
        // Bad type.
        (
            {
                let mut m = vec![0xff; 16];
                m.extend_from_slice(&[0, 19, 9]);
                m
            },
            (1, 3),
        ),
        // Unrecognized well-known attribute.
        (update_bytes(&[0x40, 99, 0], &[]), (3, 2)),
        // NLRI prefix length 40.
        (update_bytes(&[], &[40, 1, 2, 3, 4, 5]), (3, 10)),
        // A second OPEN in Established (RFC 6608 FSM error).
        (
            bgp::Message::Open(bgp::Open::new(65530, 30, ONPREM)).encode(&Ctx::default()),
            (5, 3),
        ),
    ];
    for (bytes, (code, subcode)) in cases {
        let mut p = Pair::standard();
        p.start();
        inject(&mut p, &bytes);
        assert_eq!(p.a.state(), State::Idle, "{bytes:?}");
        let downs = Pair::downs(&p.events_a);
        let DownReason::Error { sent, .. } = &downs[0] else {
            panic!("{downs:?}")
        };
        assert_eq!((sent.code, sent.subcode), (code, subcode), "{bytes:?}");
        assert_eq!(
            Pair::downs(&p.events_b),
            [DownReason::NotificationReceived(sent.clone())]
        );
    }
}

#[test]
fn bytes_outside_a_connection_are_counted_not_fatal() {
    let mut p = Pair::standard();
    let now = p.now;
    p.a.handle_bytes(now, &[1, 2, 3]);
    assert_eq!(p.a.stats().bytes_ignored, 3);
    assert_eq!(p.a.state(), State::Idle);
}

#[test]
fn prefix_limit_ends_the_session_with_cease_6_1() {
    let mut p = Pair::standard();
    let mut a = p.a.config().clone();
    a.max_prefixes = Some(2);
    p.a = Session::new(a);
    p.start();
    p.b.advertise(p.now, &[net("10.1.0.0/24"), net("10.2.0.0/24")]);
    p.drive();
    assert!(p.established());
    p.b.advertise(p.now, &[net("10.3.0.0/24")]);
    p.drive();
    assert_eq!(p.a.state(), State::Idle);
    let downs = Pair::downs(&p.events_a);
    assert_eq!(
        downs,
        [DownReason::PrefixLimit {
            received: 3,
            limit: 2
        }]
    );
    assert!(
        downs[0].to_string().contains("more than the limit of 2"),
        "{}",
        downs[0]
    );
    // RFC 4486 §4 data: AFI 1, SAFI 1, limit 2.
    let sent = Notification {
        code: 6,
        subcode: 1,
        data: vec![0, 1, 1, 0, 0, 0, 2],
    };
    assert_eq!(
        Pair::downs(&p.events_b),
        [DownReason::NotificationReceived(sent)]
    );
    assert_eq!(p.a.adj_rib_in().count(), 0);
}

#[test]
fn open_in_established_is_an_fsm_error_whatever_its_as() {
    let mut p = Pair::standard();
    p.start();
    inject(
        &mut p,
        &bgp::Message::Open(bgp::Open::new(1, 30, ONPREM)).encode(&Ctx::default()),
    );
    let downs = Pair::downs(&p.events_a);
    let DownReason::Error { sent, detail } = &downs[0] else {
        panic!("{downs:?}")
    };
    assert_eq!((sent.code, sent.subcode), (5, 3));
    assert!(
        detail.contains("BgpOpen") && detail.contains("Established"),
        "{detail}"
    );
}

#[test]
fn shutdown_with_a_message_reaches_the_peer() {
    let mut p = Pair::standard();
    p.start();
    p.a.shutdown(p.now, "tunnel maintenance until 18:00");
    p.drive();
    assert_eq!(Pair::downs(&p.events_a), [DownReason::Stopped]);
    let downs = Pair::downs(&p.events_b);
    let DownReason::NotificationReceived(n) = &downs[0] else {
        panic!("{downs:?}")
    };
    assert_eq!(n.shutdown_message(), Some("tunnel maintenance until 18:00"));
    assert_eq!(
        downs[0].to_string(),
        "peer sent NOTIFICATION 6/2 (Cease / Administrative Shutdown): \"tunnel maintenance until 18:00\""
    );
    // Stopped: no automatic restart.
    p.advance(Duration::from_secs(120));
    assert_eq!(p.a.state(), State::Idle);
    assert_eq!(p.a.poll_timeout(), None);
}

#[test]
fn mp_reach_ipv4_routes_are_accepted() {
    let mut p = Pair::standard();
    p.start();
    let info = p.a.peer_info().unwrap();
    assert_eq!(
        (info.asn, info.router_id, info.addr, info.ebgp),
        (65530, ONPREM, ONPREM, true)
    );
    #[rustfmt::skip]
    let attrs = [
        &[0x40, 1, 1, 0][..],
        &[0x40, 2, 6, 2, 1, 0, 0, 0xff, 0xfa],
        // MP_REACH_NLRI: AFI 1 SAFI 1, next hop 169.254.10.1, 10.7.0.0/16.
        &[0x80, 14, 12, 0, 1, 1, 4, 169, 254, 10, 1, 0, 16, 10, 7],
    ]
    .concat();
    inject(&mut p, &update_bytes(&attrs, &[]));
    let routes: Vec<_> =
        p.a.adj_rib_in()
            .map(|(n, a)| (*n, a.next_hop, a.mp_reach.is_some()))
            .collect();
    assert_eq!(routes, [(net("10.7.0.0/16"), Some(ONPREM), false)]);
    // MP_UNREACH_NLRI withdraws it.
    inject(
        &mut p,
        &update_bytes(&[0x80, 15, 6, 0, 1, 1, 16, 10, 7], &[]),
    );
    assert_eq!(p.a.adj_rib_in().count(), 0);
    assert!(p.established());
}

/// A route the gateway learned from another neighbour (AS 65001, with a MED)
/// as its Adj-RIB-In holds it.
fn learned_from_65001(med: Option<u32>, communities: Vec<u32>) -> Arc<PathAttrs> {
    Arc::new(PathAttrs {
        origin: Some(bgp::Origin::Egp),
        as_path: Some(bgp::AsPath::sequence(&[65001, 65002])),
        next_hop: Some(Ipv4Addr::new(169, 254, 30, 2)),
        med,
        communities,
        ..PathAttrs::default()
    })
}

/// RFC 4271 §9.2 / §5.1: a re-advertised route reaches the peer with our AS
/// prepended to the learned AS path, our address as next hop, its ORIGIN and
/// communities, and no MED; withdrawing it at the source withdraws it here.
#[test]
fn readvertised_routes_carry_the_learned_as_path_with_ours_prepended() {
    let mut p = Pair::standard();
    p.a.advertise(p.now, &[net("172.16.0.0/16")]);
    p.start();
    let learned = learned_from_65001(Some(50), vec![0xfde8_0001]);
    p.a.advertise_learned(p.now, &[(net("10.30.0.0/24"), learned.clone())]);
    p.drive();
    let at_b: Vec<_> = p.b.adj_rib_in().map(|(n, a)| (*n, a.clone())).collect();
    assert_eq!(at_b.len(), 2, "{at_b:?}");
    let (prefix, attrs) = &at_b[0];
    assert_eq!(*prefix, net("10.30.0.0/24"));
    assert_eq!(
        attrs.as_path.as_ref().unwrap().to_string(),
        "45104 65001 65002"
    );
    assert_eq!(attrs.next_hop, Some(GW));
    assert_eq!(attrs.origin, Some(bgp::Origin::Egp));
    assert_eq!(attrs.med, None, "RFC 4271 §5.1.4: no MED to another AS");
    assert_eq!(attrs.communities, [0xfde8_0001]);
    // The originated network keeps its own attributes in its own UPDATE.
    assert_eq!(at_b[1].1.as_path.as_ref().unwrap().to_string(), "45104");
    assert_eq!(p.a.adj_rib_out().count(), 2);

    // A changed path at the source is sent again; the same one is not.
    let n = p.sent_a.len();
    p.a.advertise_learned(p.now, &[(net("10.30.0.0/24"), learned)]);
    p.drive();
    assert_eq!(p.sent_a.len(), n, "nothing changed, nothing sent");
    let longer = Arc::new(PathAttrs {
        as_path: Some(bgp::AsPath::sequence(&[65001, 65003, 65002])),
        ..(*learned_from_65001(None, vec![])).clone()
    });
    p.a.advertise_learned(p.now, &[(net("10.30.0.0/24"), longer)]);
    p.drive();
    let path = p.b.adj_rib_in().next().map(|(_, a)| a.as_path.clone());
    assert_eq!(
        path.flatten().unwrap().to_string(),
        "45104 65001 65003 65002"
    );

    // Withdrawn at the source: withdrawn here.
    p.a.withdraw(p.now, &[net("10.30.0.0/24")]);
    p.drive();
    let left: Vec<_> = p.b.adj_rib_in().map(|(n, _)| *n).collect();
    assert_eq!(left, [net("172.16.0.0/16")]);
}

/// Re-advertised routes wait for establishment like originated ones and are
/// sent again after a restart; RFC 1997 NO_EXPORT keeps a route inside the AS.
#[test]
fn readvertised_routes_survive_a_restart_and_no_export_stays_home() {
    let mut p = Pair::standard();
    p.a.advertise_learned(
        p.now,
        &[
            (net("10.30.0.0/24"), learned_from_65001(None, vec![])),
            (
                net("10.31.0.0/24"),
                learned_from_65001(None, vec![bgp::update::community::NO_EXPORT]),
            ),
        ],
    );
    p.start();
    let at_b: Vec<_> = p.b.adj_rib_in().map(|(n, _)| *n).collect();
    assert_eq!(at_b, [net("10.30.0.0/24")]);
    p.b.stop(p.now);
    p.drive();
    p.b.start(p.now);
    p.advance(Duration::from_secs(30));
    assert!(p.established());
    let at_b: Vec<_> = p.b.adj_rib_in().map(|(n, _)| *n).collect();
    assert_eq!(at_b, [net("10.30.0.0/24")]);
}
