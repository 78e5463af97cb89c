//! CPU cost of IKEv2 control traffic: decoding and encoding an IKE_SA_INIT request,
//! sealing and opening an IKE_AUTH request (SK payload, RFC 7296 §3.14), and one whole
//! tunnel setup (IKE_SA_INIT + IKE_AUTH, RFC 7296 §1.2) between two endpoints in memory
//! per Diffie-Hellman group — the work a gateway does per tunnel it brings up. And
//! what an IKEv1 engine with many SAs costs the control thread on every pass: its next
//! timer, and a tunnel's activity (asked per tunnel each status tick).
//!
//! `cargo bench -p ike` measures; `cargo test --benches -p ike` (or
//! `cargo bench -p ike -- --test`) runs each once, as CI does.

#![allow(clippy::unwrap_used, clippy::expect_used)] // fixtures that cannot fail; not network-reachable

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crypto::{DhGroup, Encr, Integ, Prf, Random};
use ike::keys::{IkeKeys, IkeSuite};
use ike::sk::SkCrypto;
use ike::wire::registry::{
    AuthMethod, ExchangeType, NotifyType, PayloadType, ProtocolId, TransformType,
};
use ike::wire::{
    Auth, Flags, HeaderRepr, Message, Notify, Payload, Proposal, SaPayload, TrafficSelector,
    Transform,
};
use ike::{
    Endpoint, EndpointConfig, EspProposal, Event, Identity, IkeProposal, IkeVersion, Ipv4Cidr,
    PeerConfig, PeerId, Psk, V1Mode,
};

const A_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const PEER: PeerId = PeerId(1);

/// The DH groups of the setup benchmark: the seed default (2), the common MODP (14) and
/// the two elliptic curves vpngw offers beyond the seeds (19, 31).
const GROUPS: [(&str, DhGroup); 4] = [
    ("modp1024", DhGroup::Modp1024),
    ("modp2048", DhGroup::Modp2048),
    ("ecp256", DhGroup::Ecp256),
    ("curve25519", DhGroup::Curve25519),
];

/// SK payload suites of the IKE_AUTH benchmark.
const SK_SUITES: [(&str, Encr, Option<Integ>, Prf); 3] = [
    (
        "aes128-sha1",
        Encr::AesCbc128,
        Some(Integ::HmacSha1_96),
        Prf::HmacSha1,
    ),
    (
        "aes256-sha256",
        Encr::AesCbc256,
        Some(Integ::HmacSha256_128),
        Prf::HmacSha256,
    ),
    ("aes128gcm16", Encr::AesGcm16_128, None, Prf::HmacSha256),
];

fn ike_sa_init(c: &mut Criterion) {
    let mut group = c.benchmark_group("ike_sa_init");
    for (name, dh) in GROUPS {
        let wire = exchange(dh, 1);
        let request = wire.first().expect("an IKE_SA_INIT request").clone();
        let msg = Message::decode(&request).unwrap();
        assert_eq!(msg.header.exchange, ExchangeType::IKE_SA_INIT);
        group.throughput(Throughput::Bytes(request.len() as u64));
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| Message::decode(black_box(&request)).unwrap());
        });
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| black_box(&msg).encode());
        });
    }
    group.finish();
}

fn ike_auth(c: &mut Criterion) {
    let mut group = c.benchmark_group("ike_auth");
    for (name, encr, integ, prf) in SK_SUITES {
        let suite = IkeSuite { encr, integ, prf };
        let keys = IkeKeys::derive(suite, None, &[7; 128], &[1; 32], &[2; 32], 0x1111, 0x2222);
        let initiator = SkCrypto::new(suite, &keys, true).unwrap();
        let responder = SkCrypto::new(suite, &keys, false).unwrap();
        let header = HeaderRepr {
            spi_i: 0x1111,
            spi_r: 0x2222,
            next_payload: PayloadType::SK,
            exchange: ExchangeType::IKE_AUTH,
            flags: Flags(0x08), // Initiator
            message_id: 1,
            length: 0,
        };
        let inner = auth_request_payloads(encr, integ, prf);
        let mut rng = Rng(3);
        let sealed = initiator.seal(header, &inner, &mut rng);
        // The responder's view: decode the datagram, then verify and decrypt SK.
        let open = |bytes: &[u8]| {
            let msg = Message::decode(bytes).unwrap();
            let Some(Payload::Sk(sk)) = msg.payloads.last() else {
                panic!("no SK payload");
            };
            responder.open(bytes, sk).unwrap()
        };
        assert_eq!(open(&sealed), inner);
        group.throughput(Throughput::Bytes(sealed.len() as u64));
        group.bench_function(BenchmarkId::new("seal", name), |b| {
            b.iter(|| initiator.seal(black_box(header), black_box(&inner), &mut rng));
        });
        group.bench_function(BenchmarkId::new("open", name), |b| {
            b.iter(|| open(black_box(&sealed)));
        });
    }
    group.finish();
}

fn tunnel_setup(c: &mut Criterion) {
    let mut group = c.benchmark_group("tunnel_setup");
    // A modp2048 exchange costs milliseconds: fewer samples keep the run short.
    group.sample_size(20);
    for (name, dh) in GROUPS {
        // Checked once outside the timing: the exchange really ends with a Child SA.
        assert_eq!(
            exchange(dh, 1).len(),
            4,
            "IKE_SA_INIT + IKE_AUTH, 4 messages"
        );
        let mut seed = 1;
        group.bench_function(BenchmarkId::new("ikev2_psk", name), |b| {
            b.iter(|| {
                seed += 1;
                exchange(black_box(dh), seed)
            });
        });
    }
    // IKEv1 Main Mode + Quick Mode (RFC 2409 §5, §5.5) with the MODP groups the seed
    // documents use with it.
    for (name, dh) in &GROUPS[..2] {
        let v1 = |dh| {
            let mut cfg = peer_config(dh);
            cfg.version = IkeVersion::V1;
            cfg
        };
        assert_eq!(
            run_exchange(v1(*dh), 1).len(),
            9,
            "six Main Mode and three Quick Mode messages"
        );
        let mut seed = 1;
        group.bench_function(BenchmarkId::new("ikev1_main_psk", name), |b| {
            b.iter(|| {
                seed += 1;
                run_exchange(v1(black_box(*dh)), seed)
            });
        });
    }
    group.finish();
}

/// An endpoint that has sent Main Mode message 1 to each of `n` IKEv1 peers (one SA
/// each, waiting with a retransmission timer; no DH is made before message 3), and the
/// last of those messages.
fn v1_initiating(n: u32) -> (Endpoint, Vec<u8>) {
    let mut e = Endpoint::new(EndpointConfig::default(), Box::new(Rng(u64::from(n))));
    let now = epoch();
    for i in 0..n {
        let mut cfg = peer_config(DhGroup::Modp1024);
        cfg.version = IkeVersion::V1;
        let remote = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i);
        cfg.remote = Some(SocketAddr::from((remote, 500)));
        cfg.remote_id = Identity::Ipv4(remote);
        e.add_peer(PeerId(u64::from(i)), cfg).unwrap();
        e.initiate(now, PeerId(u64::from(i))).unwrap();
    }
    let mut first = Vec::new();
    while let Some(t) = e.poll_transmit() {
        first = t.payload;
    }
    // Another initiator's: a CKY-I (RFC 2408 §3.1, bytes 0..8) of none of our SAs.
    first[..8].copy_from_slice(&0x5eed_5eed_5eed_5eed_u64.to_be_bytes());
    (e, first)
}

fn v1_engine_scale(c: &mut Criterion) {
    let mut group = c.benchmark_group("v1_engine");
    for n in [100u32, 1_000, 10_000] {
        let (mut e, first) = v1_initiating(n);
        assert_eq!(e.half_open_total(), 0, "initiator SAs are not half-open");
        assert!(e.poll_timeout().is_some(), "retransmission timers pending");
        group.bench_function(BenchmarkId::new("poll_timeout", n), |b| {
            b.iter(|| black_box(&e).poll_timeout());
        });
        let now = epoch();
        let mut i = 0u64;
        group.bench_function(BenchmarkId::new("child_activity", n), |b| {
            b.iter(|| {
                i = (i + 1) % u64::from(n);
                e.handle_child_activity(now, PeerId(black_box(i)));
            });
        });
        // A first message from an address no tunnel has: found unknown and dropped
        // (what a flood from random addresses costs per datagram).
        let (local, stranger) = (SocketAddr::from((A_IP, 500)), SocketAddr::from((B_IP, 500)));
        let before = e.stats().no_peer;
        e.handle_datagram(now, local, stranger, &first);
        assert_eq!(e.stats().no_peer, before + 1, "dropped as from no peer");
        group.bench_function(BenchmarkId::new("unknown_first_message", n), |b| {
            b.iter(|| e.handle_datagram(now, local, stranger, black_box(&first)));
        });
        // An Aggressive Mode first message naming an ID none of `n` "any" tunnels
        // expects: refused without state (what a flood with random IDs costs).
        let ours = peer_config(DhGroup::Modp1024).ike;
        let (mut r, am1) = any_responder(n, IkeVersion::V1, V1Mode::Aggressive, ours);
        refused(&mut r, &am1);
        group.bench_function(
            BenchmarkId::new("aggressive_first_message_unknown_id", n),
            |b| {
                b.iter(|| {
                    r.handle_datagram(now, local, stranger, black_box(&am1));
                    while r.poll_transmit().is_some() {}
                    while r.poll_event().is_some() {}
                });
            },
        );
        // First messages proposing what none of `n` "any" tunnels allows: refused
        // without state (what a flood of them costs per datagram).
        let theirs = IkeProposal {
            encr: Encr::AesCbc256,
            integ: Integ::HmacSha256_128,
            dh: DhGroup::Modp2048,
        };
        for (name, version) in [
            ("main_mode_first_message_no_proposal", IkeVersion::V1),
            ("ike_sa_init_no_proposal", IkeVersion::V2),
        ] {
            let (mut r, m1) = any_responder(n, version, V1Mode::Main, theirs);
            refused(&mut r, &m1);
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    r.handle_datagram(now, local, stranger, black_box(&m1));
                    while r.poll_transmit().is_some() {}
                    while r.poll_event().is_some() {}
                });
            });
        }
    }
    group.finish();
}

/// A responder with `n` tunnels of `version` (and IKEv1 `mode`) that accept any
/// address, told apart by ID (`t<i>.bench.example`), all allowing aes128-sha1-modp1024;
/// and the first message of an initiator `stranger.example` proposing `offer`.
fn any_responder(
    n: u32,
    version: IkeVersion,
    mode: V1Mode,
    offer: IkeProposal,
) -> (Endpoint, Vec<u8>) {
    let mut cfg = peer_config(DhGroup::Modp1024);
    cfg.version = version;
    cfg.v1_mode = mode;
    let mut r = Endpoint::new(EndpointConfig::default(), Box::new(Rng(5)));
    for i in 0..n {
        let mut t = cfg.clone();
        (t.local, t.remote) = (SocketAddr::from((A_IP, 500)), None);
        t.remote_id = Identity::Fqdn(format!("t{i}.bench.example"));
        r.add_peer(PeerId(u64::from(i)), t).unwrap();
    }
    let mut i = Endpoint::new(EndpointConfig::default(), Box::new(Rng(6)));
    cfg.local = SocketAddr::from((B_IP, 500));
    cfg.remote = Some(SocketAddr::from((A_IP, 500)));
    cfg.local_id = Identity::Fqdn("stranger.example".into());
    cfg.ike = offer;
    i.add_peer(PEER, cfg).unwrap();
    i.initiate(epoch(), PEER).unwrap();
    let first = i.poll_transmit().expect("a first message").payload;
    (r, first)
}

/// A first message that `r` answers at once and keeps no state for.
fn refused(r: &mut Endpoint, first: &[u8]) {
    let (local, stranger) = (SocketAddr::from((A_IP, 500)), SocketAddr::from((B_IP, 500)));
    r.handle_datagram(epoch(), local, stranger, first);
    assert!(r.poll_transmit().is_some(), "answered");
    assert_eq!(r.half_open_total(), 0, "no state kept");
}

criterion_group!(
    benches,
    ike_sa_init,
    ike_auth,
    tunnel_setup,
    v1_engine_scale
);
criterion_main!(benches);

/// Runs IKE_SA_INIT + IKE_AUTH between an initiator and a responder endpoint (aes128-sha1
/// with `dh`, ESP aes128-sha1 without PFS: one DH per side) and returns every datagram
/// in the order it was sent. Panics unless both sides report the Child SA.
fn exchange(dh: DhGroup, seed: u64) -> Vec<Vec<u8>> {
    run_exchange(peer_config(dh), seed)
}

/// Brings up the tunnel `a_cfg` describes between an initiator and its mirror, in
/// memory; returns every datagram in the order it was sent.
fn run_exchange(a_cfg: PeerConfig, seed: u64) -> Vec<Vec<u8>> {
    let b_cfg = mirror(&a_cfg);
    let mut a = Endpoint::new(EndpointConfig::default(), Box::new(Rng(seed)));
    let mut b = Endpoint::new(EndpointConfig::default(), Box::new(Rng(!seed)));
    a.add_peer(PEER, a_cfg).unwrap();
    b.add_peer(PEER, b_cfg).unwrap();
    let now = epoch();
    a.initiate(now, PEER).unwrap();
    let mut wire = Vec::new();
    // Four messages (IKEv1: nine); the bound only stops a broken engine from looping.
    for _ in 0..16 {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            b.handle_datagram(now, t.remote, t.local, &t.payload);
            wire.push(t.payload);
            moved = true;
        }
        while let Some(t) = b.poll_transmit() {
            a.handle_datagram(now, t.remote, t.local, &t.payload);
            wire.push(t.payload);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    let established = |e: &mut Endpoint| {
        std::iter::from_fn(|| e.poll_event())
            .any(|ev| matches!(ev, Event::ChildSaEstablished { .. }))
    };
    assert!(established(&mut a) && established(&mut b), "no Child SA");
    wire
}

fn peer_config(dh: DhGroup) -> PeerConfig {
    PeerConfig {
        version: IkeVersion::V2,
        v1_mode: V1Mode::Main,
        local: SocketAddr::from((A_IP, 500)),
        remote: Some(SocketAddr::from((B_IP, 500))),
        local_id: Identity::Ipv4(A_IP),
        remote_id: Identity::Ipv4(B_IP),
        psk: Psk::new("bench-psk-not-a-secret"),
        ike: IkeProposal {
            encr: Encr::AesCbc128,
            integ: Integ::HmacSha1_96,
            dh,
        },
        esp: EspProposal {
            encr: Encr::AesCbc128,
            integ: Integ::HmacSha1_96,
            pfs: None,
        },
        ike_lifetime: Duration::ZERO,
        child_lifetime: Duration::ZERO,
        local_ts: vec![Ipv4Cidr::ANY],
        remote_ts: vec![Ipv4Cidr::ANY],
        dpd_interval: None,
        dpd_timeout: Duration::from_secs(30),
        nat_traversal: true,
    }
}

fn mirror(a: &PeerConfig) -> PeerConfig {
    PeerConfig {
        local: a.remote.unwrap(),
        remote: Some(a.local),
        local_id: a.remote_id.clone(),
        remote_id: a.local_id.clone(),
        local_ts: a.remote_ts.clone(),
        remote_ts: a.local_ts.clone(),
        ..a.clone()
    }
}

/// What an initiator puts inside the SK payload of its IKE_AUTH request with a PSK and
/// one Child SA (RFC 7296 §1.2): IDi, AUTH, SA, TSi, TSr, plus INITIAL_CONTACT.
fn auth_request_payloads(encr: Encr, integ: Option<Integ>, prf: Prf) -> Vec<Payload> {
    let mut transforms = vec![Transform::new(
        TransformType::ENCR,
        encr.iana_id(),
        encr.key_bits(),
    )];
    if let Some(i) = integ {
        transforms.push(Transform::new(TransformType::INTEG, i.iana_id(), None));
    }
    transforms.push(Transform::new(TransformType::ESN, 0, None));
    let any = TrafficSelector::Ipv4 {
        ip_proto: 0,
        start_port: 0,
        end_port: 65535,
        start: Ipv4Addr::UNSPECIFIED,
        end: Ipv4Addr::BROADCAST,
    };
    vec![
        Payload::IdI(Identity::Ipv4(A_IP).to_wire()),
        Payload::Auth(Auth {
            method: AuthMethod::SHARED_KEY_MIC,
            data: vec![0xa5; prf.key_len()],
        }),
        Payload::Notify(Notify::new(NotifyType::INITIAL_CONTACT, Vec::new())),
        Payload::Sa(SaPayload {
            proposals: vec![Proposal {
                num: 1,
                protocol: ProtocolId::ESP,
                spi: vec![0xc0, 0xff, 0xee, 0x01],
                transforms,
            }],
        }),
        Payload::TsI(vec![any.clone()]),
        Payload::TsR(vec![any]),
    ]
}

/// The virtual clock's epoch: the engine never reads a clock itself.
#[allow(clippy::disallowed_methods)]
fn epoch() -> Instant {
    Instant::now()
}

/// SplitMix64: deterministic SPIs, nonces and DH private values for repeatable runs.
struct Rng(u64);

impl Random for Rng {
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
