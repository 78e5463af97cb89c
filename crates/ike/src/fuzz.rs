//! Fuzz bodies shared by the cargo-fuzz targets (`fuzz/`) and the plain tests that run
//! them over generated inputs. Not part of the stable API.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crypto::{DhGroup, Encr, Integ, Random};

use crate::wire::{Codec, Message, Payload, SaPayload};
use crate::{
    Endpoint, EndpointConfig, EspProposal, Identity, IkeProposal, PeerConfig, PeerId, Psk,
};

/// Decoding never panics, and whatever decodes re-encodes to something that decodes
/// to the same message.
pub fn decode(data: &[u8]) {
    if let Ok(m) = Message::decode(data) {
        let again = Message::decode(&m.encode());
        let mut want = m.clone();
        want.header.length = u32::try_from(m.encode().len()).unwrap_or(0);
        want.header.next_payload = m
            .payloads
            .first()
            .map_or(crate::wire::registry::PayloadType::NONE, Payload::ptype);
        assert_eq!(
            again.as_ref().ok(),
            Some(&want),
            "re-encoding changed the message"
        );
    }
    // Payload bodies on their own, too.
    let _ = SaPayload::decode(data);
    let _ = crate::wire::decode_chain(
        crate::wire::registry::PayloadType(data.first().copied().unwrap_or(0)),
        data.get(1..).unwrap_or_default(),
    );
}

struct Fixed(u64);

impl Random for Fixed {
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

/// A responder endpoint configured for any peer, as hostile input meets it.
pub fn responder() -> Endpoint {
    responder_with(EndpointConfig::default())
}

/// The same responder under load: every IKE_SA_INIT must return a cookie first
/// (RFC 7296 §2.6).
pub fn cookie_responder() -> Endpoint {
    responder_with(EndpointConfig {
        cookie_threshold: 0,
        ..EndpointConfig::default()
    })
}

fn responder_with(config: EndpointConfig) -> Endpoint {
    let mut ep = Endpoint::new(config, Box::new(Fixed(1)));
    let cfg = PeerConfig {
        version: crate::IkeVersion::V2,
        v1_mode: crate::V1Mode::Main,
        local: SocketAddr::from(([198, 51, 100, 2], 500)),
        remote: None,
        local_id: Identity::Fqdn("gw.example".into()),
        remote_id: Identity::Fqdn("peer.example".into()),
        psk: Psk::new("fuzz"),
        ike: IkeProposal {
            encr: Encr::AesCbc128,
            integ: Integ::HmacSha1_96,
            dh: DhGroup::Curve25519,
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
        dpd_timeout: Duration::from_secs(60),
        nat_traversal: true,
    };
    let _ = ep.add_peer(PeerId(1), cfg);
    ep
}

/// Feeds `data` to `ep` (as if from 192.0.2.1) and drains every output; nothing may
/// panic and the endpoint must keep answering timeouts.
pub fn handle(ep: &mut Endpoint, now: Instant, data: &[u8]) {
    let local = SocketAddr::from(([198, 51, 100, 2], 500));
    let remote = SocketAddr::from(([192, 0, 2, 1], 500));
    ep.handle_datagram(now, local, remote, data);
    while ep.poll_transmit().is_some() {}
    while ep.poll_event().is_some() {}
    if let Some(t) = ep.poll_timeout() {
        ep.handle_timeout(t.max(now));
    }
    while ep.poll_transmit().is_some() {}
}

/// The whole fuzz body: decoder and engine.
///
/// # Panics
///
/// If a responder that demands cookies kept state or made a Diffie-Hellman key for the
/// datagram: no single datagram can carry the cookie it has not yet sent.
pub fn message(data: &[u8], now: Instant) {
    decode(data);
    let mut ep = responder();
    handle(&mut ep, now, data);
    let mut ep = cookie_responder();
    handle(&mut ep, now, data);
    let stats = ep.stats();
    assert_eq!(ep.half_open_count(), 0, "state without a cookie");
    assert_eq!(
        stats.dh_keys_inline + stats.dh_keys_ready,
        0,
        "DH without a cookie"
    );
}
