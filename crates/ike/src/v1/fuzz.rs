//! IKEv1 fuzz bodies shared by the cargo-fuzz target (`fuzz/fuzz_targets/v1_message.rs`)
//! and the plain tests that run them over mutated captured traffic. Not part of the
//! stable API.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crypto::{DhGroup, Encr, Integ};

use crate::v1::wire::{
    Chain, Delete, HEADER_LEN, Header, Id, Notify, PayloadType, SaPayload, decode_attrs,
    encode_plain,
};
use crate::{
    Endpoint, EndpointConfig, EspProposal, Identity, IkeProposal, IkeVersion, PeerConfig, PeerId,
    Psk, V1Mode,
};

/// Decoding never panics, and whatever decodes re-encodes to something that decodes
/// to the same values.
pub fn decode(data: &[u8]) {
    let body = data.get(HEADER_LEN..).unwrap_or_default();
    if let Ok(h) = Header::parse(data)
        && let Ok(c) = Chain::decode(h.next, body, false)
    {
        let again = encode_plain(h, &c.payloads);
        let h2 = Header::parse(&again).ok();
        let c2 = h2.and_then(|h2| Chain::decode(h2.next, &again[HEADER_LEN..], false).ok());
        assert_eq!(
            c2.map(|c| c.payloads),
            Some(c.payloads.clone()),
            "re-encoding changed the chain"
        );
        for p in &c.payloads {
            bodies(p.ptype, &p.body);
        }
    }
    let _ = Chain::decode(
        PayloadType(data.first().copied().unwrap_or(0)),
        data.get(1..).unwrap_or_default(),
        true,
    );
    for t in [
        PayloadType::SA,
        PayloadType::ID,
        PayloadType::N,
        PayloadType::D,
    ] {
        bodies(t, data);
    }
    let _ = decode_attrs(data);
}

fn bodies(t: PayloadType, b: &[u8]) {
    match t {
        PayloadType::SA => {
            if let Ok(sa) = SaPayload::decode(b) {
                assert_eq!(SaPayload::decode(&sa.encode()).ok(), Some(sa));
            }
        }
        PayloadType::ID => {
            if let Ok(id) = Id::decode(b) {
                assert_eq!(Id::decode(&id.encode()).ok(), Some(id.clone()));
                let _ = id.ipv4_range();
                let _ = id.describe();
            }
        }
        PayloadType::N => {
            if let Ok(n) = Notify::decode(b) {
                assert_eq!(Notify::decode(&n.encode()).ok(), Some(n));
            }
        }
        PayloadType::D => {
            if let Ok(d) = Delete::decode(b) {
                let _ = d.esp_spis();
            }
        }
        _ => {}
    }
}

struct Lcg(u64);

impl crypto::Random for Lcg {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (self.0 >> 56) as u8;
        }
    }
}

/// The local address of [`responder`].
pub const LOCAL: ([u8; 4], u16) = ([198, 51, 100, 2], 500);
/// Where [`handle`] pretends datagrams come from.
pub const REMOTE: ([u8; 4], u16) = ([192, 0, 2, 1], 500);

/// An IKEv1 peer configuration as [`responder`] uses (Main Mode, IPv4 IDs).
pub fn peer_config(mode: V1Mode) -> PeerConfig {
    PeerConfig {
        version: IkeVersion::V1,
        v1_mode: mode,
        local: SocketAddr::from(LOCAL),
        remote: Some(SocketAddr::from(REMOTE)),
        local_id: Identity::Ipv4(LOCAL.0.into()),
        remote_id: Identity::Ipv4(REMOTE.0.into()),
        psk: Psk::new("fuzz"),
        ike: IkeProposal {
            encr: Encr::AesCbc128,
            integ: Integ::HmacSha1_96,
            dh: DhGroup::Modp1024,
        },
        esp: EspProposal {
            encr: Encr::AesCbc128,
            integ: Integ::HmacSha1_96,
            pfs: None,
        },
        ike_lifetime: Duration::from_secs(3600),
        child_lifetime: Duration::from_secs(3600),
        local_ts: vec![crate::Ipv4Cidr::ANY],
        remote_ts: vec![crate::Ipv4Cidr::ANY],
        dpd_interval: Some(Duration::from_secs(30)),
        dpd_timeout: Duration::from_secs(30),
        nat_traversal: true,
    }
}

/// A responder endpoint with an IKEv1 Main Mode peer at [`REMOTE`] and an
/// Aggressive Mode peer known by FQDN from anywhere, as hostile input meets it.
pub fn responder() -> Endpoint {
    responder_with(EndpointConfig::default())
}

/// The same responder with no room for a half-open SA
/// ([`EndpointConfig::half_open_limit`] 0), as a flood leaves it.
pub fn full_responder() -> Endpoint {
    responder_with(EndpointConfig {
        half_open_limit: 0,
        ..EndpointConfig::default()
    })
}

fn responder_with(config: EndpointConfig) -> Endpoint {
    let mut ep = Endpoint::new(config, Box::new(Lcg(7)));
    let _ = ep.add_peer(PeerId(1), peer_config(V1Mode::Main));
    let mut any = peer_config(V1Mode::Aggressive);
    any.remote = None;
    any.remote_id = Identity::Fqdn("peer.example".into());
    let _ = ep.add_peer(PeerId(2), any);
    ep
}

/// Feeds `data` to `ep` from [`REMOTE`] and drains every output; nothing may panic
/// and the endpoint must keep answering timeouts.
pub fn handle(ep: &mut Endpoint, now: Instant, data: &[u8]) {
    ep.handle_datagram(now, SocketAddr::from(LOCAL), SocketAddr::from(REMOTE), data);
    while ep.poll_transmit().is_some() {}
    while ep.poll_event().is_some() {}
    for _ in 0..3 {
        if let Some(t) = ep.poll_timeout() {
            ep.handle_timeout(t.max(now));
        }
    }
    while ep.poll_transmit().is_some() {}
    while ep.poll_event().is_some() {}
}

/// The whole fuzz body: decoders and engine.
///
/// # Panics
///
/// If a responder at its half-open limit kept state or made a Diffie-Hellman key for
/// the datagram.
pub fn message(data: &[u8], now: Instant) {
    decode(data);
    let mut ep = responder();
    handle(&mut ep, now, data);
    let mut ep = full_responder();
    handle(&mut ep, now, data);
    let stats = ep.stats();
    assert_eq!(ep.half_open_total(), 0, "state past the half-open limit");
    assert_eq!(
        stats.dh_keys_inline + stats.dh_keys_ready,
        0,
        "DH past the half-open limit"
    );
}
