//! A `Pair` harness (quinn-proto style): two endpoints back to back on a virtual clock,
//! a deterministic random source and a datagram queue that tests can drop, duplicate,
//! delay or rewrite (NAT).

#![allow(dead_code, clippy::unwrap_used)] // test support code, not a #[test] fn

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crypto::{DhGroup, Encr, Integ, Random};
use ike::{
    DeleteReason, DhJob, DhOffload, Endpoint, EndpointConfig, EspProposal, Event, Identity,
    IkeProposal, PeerConfig, PeerId, Psk,
};

/// SplitMix64: deterministic and good enough for SPIs and nonces in tests.
pub struct TestRng(pub u64);

impl Random for TestRng {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_be_bytes()[..chunk.len()]);
        }
    }
}

pub const A_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// With NAT on: A's private address and the NAT's public one.
pub const A_PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const NAT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

pub const PEER_A: PeerId = PeerId(1); // A's view of B
pub const PEER_B: PeerId = PeerId(2); // B's view of A

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// A datagram in flight, addressed as on the wire between the two sides.
#[derive(Debug, Clone)]
pub struct Pkt {
    pub to: Side,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
    /// Sequence number over the whole run (0 = first datagram ever sent).
    pub seq: usize,
    /// Virtual time it was sent at.
    pub at: Duration,
}

pub enum Fate {
    Deliver,
    Drop,
    Duplicate,
    /// Deliver after `n` later datagrams have been delivered.
    Delay(usize),
}

pub fn ike(encr: Encr, integ: Integ, dh: DhGroup) -> IkeProposal {
    IkeProposal { encr, integ, dh }
}

pub fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// A's configuration towards B (and B's mirror, via [`mirror`]).
pub fn config_a() -> PeerConfig {
    PeerConfig {
        version: ike::IkeVersion::V2,
        v1_mode: ike::V1Mode::Main,
        local: sock(A_IP, 500),
        remote: Some(sock(B_IP, 500)),
        local_id: Identity::Ipv4(A_IP),
        remote_id: Identity::Ipv4(B_IP),
        psk: Psk::new("correct horse battery staple"),
        ike: ike(Encr::AesCbc128, Integ::HmacSha1_96, DhGroup::Modp1024),
        esp: EspProposal {
            encr: Encr::AesCbc128,
            integ: Integ::HmacSha1_96,
            pfs: None,
        },
        ike_lifetime: Duration::ZERO,
        child_lifetime: Duration::ZERO,
        local_ts: vec!["10.1.0.0/16".parse().unwrap()],
        remote_ts: vec!["10.2.0.0/16".parse().unwrap()],
        dpd_interval: None,
        dpd_timeout: Duration::from_secs(30),
        nat_traversal: true,
    }
}

/// [`config_a`] for IKEv1 in `mode`.
pub fn config_v1(mode: ike::V1Mode) -> PeerConfig {
    let mut a = config_a();
    a.version = ike::IkeVersion::V1;
    a.v1_mode = mode;
    a
}

pub fn mirror(a: &PeerConfig) -> PeerConfig {
    let mut b = a.clone();
    b.local = a.remote.unwrap();
    b.remote = Some(a.local);
    b.local_id = a.remote_id.clone();
    b.remote_id = a.local_id.clone();
    b.local_ts = a.remote_ts.clone();
    b.remote_ts = a.local_ts.clone();
    b
}

/// Diffie-Hellman jobs both endpoints handed out, in submission order.
pub type DhQueue = Arc<Mutex<VecDeque<(Side, Box<DhJob>)>>>;

/// A pair with `a` and its mirror, DH in place or offloaded as `run` says, whose
/// tunnel `a` initiated and is up.
pub fn up_with(a: PeerConfig, seed: u64, run: Option<DhRun>) -> Pair {
    let mut p = Pair::with_seed(a.clone(), mirror(&a), seed);
    if let Some(run) = run {
        p.offload_dh(run);
    }
    p.initiate_a();
    p.advance(Duration::from_secs(1));
    p.assert_children_match();
    p
}

/// Both ends start a rekey at once, each of its Child SA or of its IKE SA: bit 0 of
/// `scenario` clear for A's Child SA, bit 1 clear for B's. Returns which were Child SAs.
pub fn rekey_both(p: &mut Pair, scenario: u64) -> (bool, bool) {
    let (child_a, child_b) = (scenario & 1 == 0, scenario & 2 == 0);
    let now = p.now;
    let a = if child_a {
        p.a.rekey_child(now, PEER_A)
    } else {
        p.a.rekey_ike(now, PEER_A)
    };
    a.expect("A has an established IKE SA");
    let b = if child_b {
        p.b.rekey_child(now, PEER_B)
    } else {
        p.b.rekey_ike(now, PEER_B)
    };
    b.expect("B has an established IKE SA");
    (child_a, child_b)
}

/// A responder's `half_open_timeout` log event among `events` says the peer went
/// quiet after IKE moved to UDP 4500.
pub fn assert_responder_named_udp_4500(events: &[Event]) {
    let named = events.iter().any(|e| {
        matches!(e, Event::Log { event: "half_open_timeout", message, .. }
            if message.contains("so the peer was to send its next message to UDP 4500"))
    });
    assert!(named, "{events:?}");
}

/// A firewall that drops UDP 4500 both ways (with the pair's NAT, B sends to the NAT's
/// mapped port 44500).
pub fn drop_udp_4500() -> Box<dyn FnMut(&Pkt) -> Fate> {
    Box::new(|pkt| {
        if matches!(pkt.dst.port(), 4500 | 44500) {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    })
}

/// A network that drops, duplicates and delays one datagram in `one_in` each (seeded).
pub fn lossy(seed: u64, one_in: u8) -> Box<dyn FnMut(&Pkt) -> Fate> {
    let mut rng = TestRng(seed ^ 0x5eed);
    Box::new(move |_| {
        let mut r = [0u8; 2];
        rng.fill(&mut r);
        match r[0] % one_in {
            0 => Fate::Drop,
            1 => Fate::Duplicate,
            2 => Fate::Delay(usize::from(r[1] % 3) + 1),
            _ => Fate::Deliver,
        }
    })
}

/// Child SAs as (A's inbound, A's outbound) SPIs, sorted.
pub type SpiPairs = Vec<(u32, u32)>;

/// Both sides' Child SAs as [`SpiPairs`]: equal when the two ends agree.
pub fn child_pairs(p: &Pair) -> (SpiPairs, SpiPairs) {
    let mut a: Vec<_> =
        p.a.child_sas(PEER_A)
            .iter()
            .map(|c| (c.spi_in, c.spi_out))
            .collect();
    let mut b: Vec<_> =
        p.b.child_sas(PEER_B)
            .iter()
            .map(|c| (c.spi_out, c.spi_in))
            .collect();
    a.sort_unstable();
    b.sort_unstable();
    (a, b)
}

/// Like [`child_pairs`], of the Child SAs neither replaced nor being deleted.
pub fn current_child_pairs(p: &Pair) -> (SpiPairs, SpiPairs) {
    let pairs = |cs: Vec<ike::ChildSa>, a: bool| {
        let mut v: Vec<_> = cs
            .iter()
            .map(|c| {
                if a {
                    (c.spi_in, c.spi_out)
                } else {
                    (c.spi_out, c.spi_in)
                }
            })
            .collect();
        v.sort_unstable();
        v
    };
    (
        pairs(p.a.current_child_sas(PEER_A), true),
        pairs(p.b.current_child_sas(PEER_B), false),
    )
}

/// Every IKE SA either side deleted was replaced (rekeyed, or by the peer's
/// re-authentication) or redundant (a duplicate): nothing a driver would take for the
/// tunnel going down.
pub fn assert_no_tunnel_down(p: &Pair, what: &str) {
    for events in [&p.a_events, &p.b_events] {
        let down = |e: &Event| {
            matches!(e, Event::IkeSaDeleted { reason, .. }
                if !matches!(reason, DeleteReason::Rekeyed | DeleteReason::Duplicate | DeleteReason::Reauthenticated))
        };
        assert_eq!(Pair::count(events, down), 0, "{what}: {events:#?}");
    }
}

/// A pair of endpoints with `a` (and its mirror) whose jobs the test runs by hand.
pub fn manual(a: PeerConfig) -> (Pair, DhQueue) {
    let mut p = Pair::new(a.clone(), mirror(&a));
    let q = p.offload_dh(DhRun::Manual);
    (p, q)
}

/// The jobs not run yet, oldest first.
pub fn take_jobs(q: &DhQueue) -> Vec<(Side, Box<DhJob>)> {
    q.lock().expect("queue lock").drain(..).collect()
}

/// A [`DhOffload`] that queues jobs for the harness to run when it chooses.
struct QueuedDh {
    side: Side,
    queue: DhQueue,
}

impl DhOffload for QueuedDh {
    fn submit(&mut self, job: Box<DhJob>) -> Result<(), Box<DhJob>> {
        self.queue.lock().unwrap().push_back((self.side, job));
        Ok(())
    }
}

/// When [`Pair::drive`] runs offloaded Diffie-Hellman jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhRun {
    /// The oldest first, each once nothing is in flight.
    Fifo,
    /// The newest first, each once nothing is in flight.
    Lifo,
    /// Never: the test takes them from [`Pair::dh`].
    Manual,
}

pub struct Pair {
    pub now: Instant,
    pub start: Instant,
    pub a: Endpoint,
    pub b: Endpoint,
    pub a_events: Vec<Event>,
    pub b_events: Vec<Event>,
    pub nat: bool,
    pub fate: Box<dyn FnMut(&Pkt) -> Fate>,
    pub held: Vec<(usize, Pkt)>,
    pub sent: usize,
    /// Every datagram ever put on the wire, for inspection.
    pub wire: Vec<Pkt>,
    /// With [`Pair::offload_dh`]: the jobs not run yet, and when to run them.
    pub dh: Option<(DhQueue, DhRun)>,
}

impl Pair {
    pub fn new(a_cfg: PeerConfig, b_cfg: PeerConfig) -> Self {
        Self::with_seed(a_cfg, b_cfg, 1)
    }

    pub fn with_seed(a_cfg: PeerConfig, b_cfg: PeerConfig, seed: u64) -> Self {
        Self::with_endpoints(
            a_cfg,
            b_cfg,
            seed,
            EndpointConfig::default(),
            EndpointConfig::default(),
        )
    }

    /// Endpoints with these engine-wide settings.
    pub fn with_endpoints(
        a_cfg: PeerConfig,
        b_cfg: PeerConfig,
        seed: u64,
        a_ep: EndpointConfig,
        b_ep: EndpointConfig,
    ) -> Self {
        #[allow(clippy::disallowed_methods)] // the one real clock read: the virtual epoch
        let start = Instant::now();
        let mut a = Endpoint::new(a_ep, Box::new(TestRng(seed)));
        let mut b = Endpoint::new(
            b_ep,
            Box::new(TestRng(seed.wrapping_mul(7919) ^ 0xdead_beef)),
        );
        a.add_peer(PEER_A, a_cfg).unwrap();
        b.add_peer(PEER_B, b_cfg).unwrap();
        Self {
            now: start,
            start,
            a,
            b,
            a_events: Vec::new(),
            b_events: Vec::new(),
            nat: false,
            fate: Box::new(|_| Fate::Deliver),
            held: Vec::new(),
            sent: 0,
            wire: Vec::new(),
            dh: None,
        }
    }

    /// Both endpoints hand their IKE_SA_INIT shared secrets to a queue that
    /// [`Pair::drive`] runs as `run` says (as the node's DH threads would).
    pub fn offload_dh(&mut self, run: DhRun) -> DhQueue {
        let queue = DhQueue::default();
        for (side, ep) in [(Side::A, &mut self.a), (Side::B, &mut self.b)] {
            ep.set_dh_offload(Box::new(QueuedDh {
                side,
                queue: queue.clone(),
            }));
        }
        self.dh = Some((queue.clone(), run));
        queue
    }

    /// From now on, runs the offloaded jobs as `run` says.
    pub fn set_dh_run(&mut self, run: DhRun) {
        if let Some((_, r)) = &mut self.dh {
            *r = run;
        }
    }

    /// Runs one queued job by [`DhRun`] and hands the result to its endpoint; false
    /// if there was none to run.
    fn run_dh(&mut self) -> bool {
        let Some((queue, run)) = &self.dh else {
            return false;
        };
        let next = match run {
            DhRun::Fifo => queue.lock().unwrap().pop_front(),
            DhRun::Lifo => queue.lock().unwrap().pop_back(),
            DhRun::Manual => None,
        };
        let Some((side, job)) = next else {
            return false;
        };
        self.finish_dh(side, job);
        true
    }

    /// Computes `job` and gives the result to `side`'s endpoint.
    pub fn finish_dh(&mut self, side: Side, job: Box<DhJob>) {
        let done = job.compute();
        match side {
            Side::A => self.a.handle_dh_done(self.now, done),
            Side::B => self.b.handle_dh_done(self.now, done),
        }
    }

    /// A behind a NAT: A's configured local address is private.
    pub fn with_nat(mut a_cfg: PeerConfig, b_cfg: PeerConfig) -> Self {
        a_cfg.local = sock(A_PRIVATE, 500);
        let mut p = Self::new(a_cfg, b_cfg);
        p.nat = true;
        p
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn nat_port(port: u16) -> u16 {
        if port == 4500 { 44500 } else { 40000 + port }
    }

    /// Collects what both endpoints want to send, as it appears on the wire.
    fn collect(&mut self) -> Vec<Pkt> {
        let mut out = Vec::new();
        while let Some(t) = self.a.poll_transmit() {
            let src = if self.nat {
                sock(NAT_IP, Self::nat_port(t.local.port()))
            } else {
                t.local
            };
            assert_eq!(
                t.remote.ip(),
                std::net::IpAddr::V4(B_IP),
                "A sent to {}",
                t.remote
            );
            out.push(Pkt {
                to: Side::B,
                src,
                dst: t.remote,
                payload: t.payload,
                seq: 0,
                at: Duration::ZERO,
            });
        }
        while let Some(t) = self.b.poll_transmit() {
            let dst = if self.nat {
                assert_eq!(
                    t.remote.ip(),
                    std::net::IpAddr::V4(NAT_IP),
                    "B sent to {}",
                    t.remote
                );
                let port = if t.remote.port() == 44500 {
                    4500
                } else {
                    t.remote.port() - 40000
                };
                sock(A_PRIVATE, port)
            } else {
                t.remote
            };
            out.push(Pkt {
                to: Side::A,
                src: t.local,
                dst,
                payload: t.payload,
                seq: 0,
                at: Duration::ZERO,
            });
        }
        for p in &mut out {
            p.seq = self.sent;
            p.at = self.now - self.start;
            self.sent += 1;
            self.wire.push(p.clone());
        }
        out
    }

    fn deliver(&mut self, p: &Pkt) {
        match p.to {
            Side::A => self.a.handle_datagram(self.now, p.dst, p.src, &p.payload),
            Side::B => self.b.handle_datagram(self.now, p.dst, p.src, &p.payload),
        }
        for h in &mut self.held {
            h.0 = h.0.saturating_sub(1);
        }
    }

    /// Exchanges datagrams until nothing is in flight (time does not move).
    pub fn drive(&mut self) {
        for _ in 0..10_000 {
            let batch = self.collect();
            if batch.is_empty() {
                if self.held.is_empty() {
                    if self.run_dh() {
                        continue;
                    }
                    break;
                }
                // Nothing else is in flight: what was delayed arrives now.
                for (_, p) in std::mem::take(&mut self.held) {
                    self.deliver(&p);
                }
                continue;
            }
            for p in batch {
                match (self.fate)(&p) {
                    Fate::Deliver => self.deliver(&p),
                    Fate::Drop => {}
                    Fate::Duplicate => {
                        self.deliver(&p);
                        self.deliver(&p);
                    }
                    Fate::Delay(n) => self.held.push((n, p)),
                }
                let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
                    .into_iter()
                    .partition(|(n, _)| *n == 0);
                self.held = keep;
                for (_, p) in ready {
                    self.deliver(&p);
                }
            }
        }
        self.collect_events();
    }

    pub fn collect_events(&mut self) {
        while let Some(e) = self.a.poll_event() {
            self.a_events.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.b_events.push(e);
        }
    }

    /// Moves the clock forward by `d`, firing timers on the way.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        for spins in 0.. {
            assert!(
                spins < 100_000,
                "timers do not make progress at {:?}",
                self.elapsed()
            );
            let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.a.handle_timeout(self.now);
                    self.b.handle_timeout(self.now);
                    self.drive();
                }
                _ => break,
            }
        }
        self.now = target;
        self.drive();
    }

    pub fn initiate_a(&mut self) {
        self.a.initiate(self.now, PEER_A).unwrap();
        self.drive();
    }

    pub fn initiate_b(&mut self) {
        self.b.initiate(self.now, PEER_B).unwrap();
        self.drive();
    }

    pub fn failures(events: &[Event]) -> Vec<(ike::Phase, String)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::NegotiationFailed { phase, reason, .. } => Some((*phase, reason.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn count(events: &[Event], f: impl Fn(&Event) -> bool) -> usize {
        events.iter().filter(|e| f(e)).count()
    }

    /// Both sides have exactly one Child SA and their keys and SPIs pair up.
    pub fn assert_children_match(&self) {
        let ca = self.a.child_sas(PEER_A);
        let cb = self.b.child_sas(PEER_B);
        assert_eq!(ca.len(), 1, "A children: {ca:?}");
        assert_eq!(cb.len(), 1, "B children: {cb:?}");
        let (a, b) = (&ca[0], &cb[0]);
        assert_eq!(a.spi_out, b.spi_in);
        assert_eq!(a.spi_in, b.spi_out);
        assert_eq!(a.encr_key_out, b.encr_key_in);
        assert_eq!(a.encr_key_in, b.encr_key_out);
        assert_eq!(a.integ_key_out, b.integ_key_in);
        assert_eq!(a.integ_key_in, b.integ_key_out);
        assert_ne!(a.encr_key_in, a.encr_key_out);
        assert_eq!(a.encr_key_out.as_slice().len(), a.encr.key_len());
        assert_eq!(a.local_ts, b.remote_ts);
        assert_eq!(a.remote_ts, b.local_ts);
    }

    pub fn assert_ike_match(&self) {
        let a = self.a.ike_sas(PEER_A);
        let b = self.b.ike_sas(PEER_B);
        assert_eq!(a.len(), 1, "A IKE SAs {a:?}");
        assert_eq!(a, b);
    }
}

/// Hands everything `from` wants to send to `to`; returns the datagrams.
pub fn relay(now: Instant, from: &mut Endpoint, to: &mut Endpoint) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    while let Some(t) = from.poll_transmit() {
        to.handle_datagram(now, t.remote, t.local, &t.payload);
        sent.push(t.payload);
    }
    sent
}

/// Drains `e`'s events; returns how many were IKE SAs established.
pub fn established_count(e: &mut Endpoint) -> usize {
    std::iter::from_fn(|| e.poll_event())
        .filter(|e| matches!(e, Event::IkeSaEstablished { .. }))
        .count()
}

/// A lone endpoint (no [`Pair`]) with these peers.
pub fn endpoint(cfg: EndpointConfig, seed: u64, peers: &[(PeerId, PeerConfig)]) -> Endpoint {
    let mut e = Endpoint::new(cfg, Box::new(TestRng(seed)));
    for (id, p) in peers {
        e.add_peer(*id, p.clone()).expect("a new peer");
    }
    e
}
