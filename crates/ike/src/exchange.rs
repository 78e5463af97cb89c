//! The exchanges (RFC 7296 §1.2–§1.4), both roles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crypto::DhPrivate;

use crate::config::{IkeVersion, PeerConfig, PeerId};
use crate::encap::VENDOR_ID as VPNGW_VENDOR_ID;
use crate::endpoint::{Endpoint, Error, notify_name, spis_hex};
use crate::event::{ChildSa, DeleteReason, Event, IkeAlgorithms, Level, Phase};
use crate::keys::{ChildKeys, IkeKeys, nat_hash, psk_auth};
use crate::offload::{Datagram, DhResult, ExchangeDh};
use crate::proposal::{
    ESN_NOTE, UNKNOWN_TYPES_NOTE, check_esp_answer, check_ike_answer, describe, esp_needs_esn,
    esp_offer, ike_offer, needs_unknown_types, select_esp, select_ike,
};
use crate::sa::{
    Child, ChildRequest, ChildState, ExpectAuthResponse, ExpectInitResponse, Handshake, IkeSa,
    Pending, Req, State, Task, soft_lifetime,
};
use crate::sk::{SkCrypto, SkError};
use crate::table::OfferKey;
use crate::ts::{TsRange, accept_narrowed, list_to_string, narrow};
use crate::wire::registry::{AuthMethod, ExchangeType, NotifyType, ProtocolId};
use crate::wire::{
    Auth, Codec, Delete, Identification, KeyExchange, Message, Notify, Payload, SaPayload,
    TrafficSelector,
};

impl Endpoint {
    // ---- IKE_SA_INIT -----------------------------------------------------------------

    pub(crate) fn start_init(
        &mut self,
        now: Instant,
        peer: PeerId,
        cfg: Arc<PeerConfig>,
    ) -> Result<(), Error> {
        let remote = cfg.remote_addr().ok_or(Error::ResponderOnly(peer))?;
        let spi_i = self.new_ike_spi();
        let dh = self.io.dh(cfg.ike.dh)?;
        let ni = self.io.nonce();
        let local = cfg.local;
        let name = cfg.ike.name();
        let st = ExpectInitResponse {
            dh,
            ni,
            cookie: None,
            cookie_tries: 0,
        };
        let mut sa = IkeSa::new(
            cfg,
            Some(peer),
            true,
            spi_i,
            0,
            local,
            remote,
            State::ExpectInitResponse(Box::new(st)),
            now,
        );
        sa.from_init = true;
        sa.paced = Some(remote.ip());
        self.pacing.started(remote.ip());
        self.io.log(
            Some(peer),
            Level::Info,
            "phase1_start",
            format!("initiating IKE_SA_INIT {local} -> {remote}, proposing {name}"),
        );
        self.send_init(now, &mut sa);
        self.sas.insert(spi_i, sa);
        Ok(())
    }

    fn send_init(&mut self, now: Instant, sa: &mut IkeSa) {
        let State::ExpectInitResponse(st) = &sa.state else {
            return;
        };
        let mut p = Vec::new();
        if let Some(c) = &st.cookie {
            // RFC 7296 §2.6: the cookie must be the first payload.
            p.push(Payload::Notify(Notify::new(NotifyType::COOKIE, c.clone())));
        }
        p.push(Payload::Sa(ike_offer(&sa.cfg.ike, None)));
        p.push(Payload::Ke(KeyExchange {
            group: st.dh.group().iana_id(),
            data: st.dh.public_value().to_vec(),
        }));
        p.push(Payload::Nonce(st.ni.clone()));
        if sa.cfg.nat_traversal {
            // RFC 7296 §2.23: a source hash that cannot match forces UDP encapsulation.
            let source = if self.cfg.esp_encap.forces_as_initiator() {
                self.io.nonce()[..20].to_vec()
            } else {
                nat_hash(sa.spi_i, 0, sa.local)
            };
            p.push(Payload::Notify(Notify::new(
                NotifyType::NAT_DETECTION_SOURCE_IP,
                source,
            )));
            p.push(Payload::Notify(Notify::new(
                NotifyType::NAT_DETECTION_DESTINATION_IP,
                nat_hash(sa.spi_i, 0, sa.remote),
            )));
        }
        if self.cfg.esp_encap.sends_vendor_id() {
            p.push(Payload::Vendor(VPNGW_VENDOR_ID.to_vec()));
        }
        let bytes = Message {
            header: sa.header(ExchangeType::IKE_SA_INIT, false, 0),
            payloads: p,
        }
        .encode();
        self.io.send(sa.local, sa.remote, bytes.clone());
        sa.next_msg_id = 1;
        sa.pending = Some(Box::new(Pending {
            msg_id: 0,
            exchange: ExchangeType::IKE_SA_INIT,
            bytes,
            kind: Req::Init,
            first_sent: now,
            next_retx: now + self.cfg.retransmit_base,
            retx: 0,
        }));
    }

    pub(crate) fn handle_init_request(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: Message,
    ) {
        let h = msg.header;
        if let Some(spi) = self.half_open.get(&(remote, h.spi_i)) {
            // A retransmitted IKE_SA_INIT: answer with the same response (RFC 7296 §2.1).
            if let Some((0, bytes)) = self.sas.get(spi).and_then(|s| s.last_response.clone()) {
                self.io.stats.duplicate_requests += 1;
                self.io.send(local, remote, bytes);
            }
            return;
        }
        // Peers configured with this exact address come before "any" peers (the
        // index's order). Nothing here is O(peers) when they share one proposal: the
        // peer itself is chosen by identity at IKE_AUTH.
        let Some(first) = self.index.by_address(local.ip(), remote.ip()).next() else {
            let v1 = self
                .index
                .by_version_address(IkeVersion::V1, local.ip(), remote.ip())
                .next();
            let Some(p) = v1 else {
                self.io.stats.no_peer += 1;
                tracing::debug!(%remote, %local, "IKE_SA_INIT from an unknown peer");
                return;
            };
            // The expected peer speaks the other version: say so here, and answer as
            // strongSwan does for a connection it does not have (no IKE config).
            self.io.refuse(
                now,
                p,
                Phase::Phase1,
                format!(
                    "peer {remote} started IKEv2 (IKE_SA_INIT); this tunnel is configured \
                     for IKEv1 (ike.version must match on both sides)"
                ),
            );
            self.send_init_error(
                local,
                remote,
                h.spi_i,
                Notify::new(NotifyType::NO_PROPOSAL_CHOSEN, Vec::new()),
            );
            return;
        };
        let p = &msg.payloads;
        let (Some(sa_p), Some(ke), Some(ni)) = (find_sa(p), find_ke(p), find_nonce(p)) else {
            self.io.stats.malformed += 1;
            self.io.log_unauthenticated(
                now,
                first,
                Level::Warn,
                "malformed",
                format!("IKE_SA_INIT from {remote} lacks SA, KE or nonce"),
            );
            return;
        };
        if self.half_open_count() >= self.cfg.cookie_threshold {
            // RFC 7296 §2.6: under load, state and DH only for an initiator that has
            // shown it receives our replies by returning the cookie (first payload;
            // accepted anywhere). An invalid one counts as none (§2.6).
            let offered = find_notify(p, NotifyType::COOKIE);
            let valid = offered
                .is_some_and(|c| self.cookies.verify(now, &c.data, ni, remote.ip(), h.spi_i));
            if !valid {
                if offered.is_some() {
                    self.io.stats.cookies_invalid += 1;
                }
                let c = self
                    .cookies
                    .make(now, &mut *self.io.rng, ni, remote.ip(), h.spi_i);
                self.io.stats.cookies_sent += 1;
                tracing::debug!(
                    %remote,
                    half_open = self.half_open_count(),
                    "IKE_SA_INIT answered with a COOKIE (RFC 7296 §2.6)"
                );
                self.send_init_error(local, remote, h.spi_i, Notify::new(NotifyType::COOKIE, c));
                return;
            }
        }
        if self.half_open_total() >= self.cfg.half_open_limit {
            // Dropped without an answer: the initiator retransmits, and gets in once
            // half-open SAs have finished or timed out.
            let total = self.half_open_total();
            self.io
                .half_open_limited(now, remote, "IKE_SA_INIT", total, None);
            return;
        }
        // Once per proposal among the candidates, not once per candidate.
        let chosen = self
            .index
            .first_accepting(IkeVersion::V2, local.ip(), remote.ip(), |o| {
                Some(select_ike(sa_p, &o.ike, None).map(|(ans, _)| ans))
            })
            .ok()
            .and_then(|(id, ans)| Some((id, self.peers.get(&id)?.clone(), ans)));
        let Some((candidate, cfg, answer)) = chosen else {
            let ours = self.peers.get(&first).map(|c| c.ike);
            let mut reason = format!(
                "peer proposed {}; this tunnel allows {}",
                describe(sa_p),
                ours.map(|o| o.name()).unwrap_or_default()
            );
            if needs_unknown_types(sa_p, ours.as_ref(), None) {
                reason.push_str(UNKNOWN_TYPES_NOTE);
            }
            self.io.refuse(now, first, Phase::Phase1, reason);
            self.send_init_error(
                local,
                remote,
                h.spi_i,
                Notify::new(NotifyType::NO_PROPOSAL_CHOSEN, Vec::new()),
            );
            return;
        };
        // Whether another peer with these addresses and algorithms exists: then only
        // the identity in IKE_AUTH tells them apart.
        let sole_candidate = self.index.count_with_offer(
            IkeVersion::V2,
            local.ip(),
            remote.ip(),
            &OfferKey::of(&cfg),
        ) == 1;
        if ke.group != cfg.ike.dh.iana_id() {
            // RFC 7296 §1.2: ask for the group we want; the initiator retries with it.
            self.io.log_unauthenticated(
                now,
                candidate,
                Level::Info,
                "invalid_ke",
                format!(
                    "peer sent a KE payload for DH group {}; requesting {}",
                    ke.group,
                    cfg.ike.dh.name()
                ),
            );
            let n = Notify::new(
                NotifyType::INVALID_KE_PAYLOAD,
                cfg.ike.dh.iana_id().to_be_bytes().to_vec(),
            );
            self.send_init_error(local, remote, h.spi_i, n);
            return;
        }
        let Ok(dh) = self.io.dh(cfg.ike.dh) else {
            return;
        };
        // In place unless offloaded: then the response goes out first and a bad
        // public value shows when the computation returns (`offload.rs`).
        let shared = if self.offloads_dh() {
            None
        } else {
            let Ok(shared) = dh.shared_secret(&ke.data) else {
                self.io.stats.malformed += 1;
                self.io.log_unauthenticated(
                    now,
                    candidate,
                    Level::Warn,
                    "malformed",
                    "peer's Diffie-Hellman public value is invalid".into(),
                );
                return;
            };
            Some(shared)
        };
        let spi_r = self.new_ike_spi();
        let nr = self.io.nonce();
        let hs = Handshake {
            msg1: data.to_vec(),
            msg2: Vec::new(),
        };
        let mut sa = IkeSa::new(
            cfg,
            None,
            false,
            h.spi_i,
            spi_r,
            local,
            remote,
            State::ExpectAuthRequest(hs),
            now,
        );
        sa.candidate = Some(candidate);
        sa.sole_candidate = sole_candidate;
        sa.half_open_key = Some((remote, h.spi_i));
        sa.from_init = true;
        let nat_supported = sa.cfg.nat_traversal && has_nat_d(p);
        // Another vpngw (its vendor ID) or the node's override: ESP in UDP without a NAT
        // (see `encap.rs`).
        let forced = nat_supported && self.cfg.esp_encap.forces_as_responder(p);
        if nat_supported {
            // RFC 7296 §2.23: hashes in the request use SPIr = 0.
            sa.nat_remote = !notifies(p, NotifyType::NAT_DETECTION_SOURCE_IP)
                .any(|n| n.data == nat_hash(h.spi_i, 0, remote));
            sa.nat_local = forced
                || notifies(p, NotifyType::NAT_DETECTION_DESTINATION_IP)
                    .any(|n| n.data != nat_hash(h.spi_i, 0, local));
        }
        let mut out = vec![
            Payload::Sa(answer),
            Payload::Ke(KeyExchange {
                group: dh.group().iana_id(),
                data: dh.public_value().to_vec(),
            }),
            Payload::Nonce(nr.clone()),
        ];
        if nat_supported {
            // RFC 7296 §2.23: a source hash that cannot match forces UDP encapsulation.
            let source = if forced {
                self.io.nonce()[..20].to_vec()
            } else {
                nat_hash(h.spi_i, spi_r, local)
            };
            out.push(Payload::Notify(Notify::new(
                NotifyType::NAT_DETECTION_SOURCE_IP,
                source,
            )));
            out.push(Payload::Notify(Notify::new(
                NotifyType::NAT_DETECTION_DESTINATION_IP,
                nat_hash(h.spi_i, spi_r, remote),
            )));
        }
        // RFC 6023 §3: an initiator may leave the Child SA out of IKE_AUTH and create
        // it with CREATE_CHILD_SA (strongSwan's `childless = force` insists on it).
        out.push(notify(NotifyType::CHILDLESS_IKEV2_SUPPORTED));
        if self.cfg.esp_encap.sends_vendor_id() {
            out.push(Payload::Vendor(VPNGW_VENDOR_ID.to_vec()));
        }
        let bytes = Message {
            header: sa.header(ExchangeType::IKE_SA_INIT, true, 0),
            payloads: out,
        }
        .encode();
        match shared {
            Some(shared) => {
                if !self.set_ike_keys(&mut sa, None, &shared, ni, &nr) {
                    return;
                }
            }
            None => self.offload_keys(
                now,
                &mut sa,
                dh,
                ke.data.clone(),
                ni.to_vec(),
                nr.clone(),
                None,
            ),
        }
        if sa.dead {
            return;
        }
        self.io.send(local, remote, bytes.clone());
        sa.last_response = Some((0, bytes.clone()));
        sa.peer_msg_id = 1;
        if let State::ExpectAuthRequest(hs) = &mut sa.state {
            hs.msg2 = bytes;
        }
        sa.half_open_until = Some(now + self.cfg.half_open_timeout);
        self.io.log_unauthenticated(
            now,
            candidate,
            Level::Info,
            "ike_sa_init",
            format!(
                "IKE_SA_INIT from {remote}: selected {}{}",
                sa.cfg.ike.name(),
                if forced {
                    ", UDP encapsulation forced (RFC 7296 §2.23)".to_string()
                } else {
                    nat_note(&sa)
                }
            ),
        );
        self.half_open.insert((remote, h.spi_i), spi_r);
        self.sas.insert(spi_r, sa);
    }

    fn send_init_error(&mut self, local: SocketAddr, remote: SocketAddr, spi_i: u64, n: Notify) {
        let header = crate::wire::HeaderRepr {
            spi_i,
            spi_r: 0,
            next_payload: crate::wire::registry::PayloadType::NONE,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: crate::wire::Flags(crate::wire::Flags::RESPONSE),
            message_id: 0,
            length: 0,
        };
        let bytes = Message {
            header,
            payloads: vec![Payload::Notify(n)],
        }
        .encode();
        self.io.send(local, remote, bytes);
    }

    /// Derives and installs the IKE SA keys; false (and logged) if the cipher rejects them.
    pub(crate) fn set_ike_keys(
        &mut self,
        sa: &mut IkeSa,
        old: Option<(crypto::Prf, &[u8])>,
        shared: &[u8],
        ni: &[u8],
        nr: &[u8],
    ) -> bool {
        let suite = sa.suite();
        let keys = IkeKeys::derive(suite, old, shared, ni, nr, sa.spi_i, sa.spi_r);
        // Checked once here: `IkeSa::sk` rebuilds the transforms from these keys.
        match SkCrypto::new(suite, &keys, sa.initiator) {
            Ok(_) => {
                sa.keys = Some(keys);
                sa.ni = ni.to_vec();
                sa.nr = nr.to_vec();
                sa.algs = Some(IkeAlgorithms {
                    encr: suite.encr,
                    integ: suite.integ,
                    prf: suite.prf,
                    dh: sa.dh_group(),
                });
                true
            }
            Err(e) => {
                self.io.log(
                    sa.peer,
                    Level::Error,
                    "internal",
                    format!("cannot key the IKE SA: {e}"),
                );
                false
            }
        }
    }

    fn init_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: Message,
    ) {
        let peer = sa.peer;
        let p = &msg.payloads;
        let ours = sa.cfg.ike;
        let State::ExpectInitResponse(st) = &mut sa.state else {
            self.io.stats.unexpected += 1;
            return;
        };
        if let Some(c) = find_notify(p, NotifyType::COOKIE) {
            // RFC 7296 §2.6: repeat the request with the cookie first.
            if st.cookie_tries >= 3 {
                self.io.fail(
                    peer,
                    Phase::Phase1,
                    "peer keeps demanding a COOKIE; giving up".into(),
                );
                sa.dead = true;
                return;
            }
            st.cookie = Some(c.data.clone());
            st.cookie_tries += 1;
            sa.pending = None;
            self.io.log(
                peer,
                Level::Info,
                "cookie",
                "peer requested a COOKIE; retrying IKE_SA_INIT".into(),
            );
            self.send_init(now, sa);
            return;
        }
        if let Some(n) = find_notify(p, NotifyType::INVALID_KE_PAYLOAD) {
            let wanted = <[u8; 2]>::try_from(n.data.as_slice())
                .ok()
                .map(u16::from_be_bytes);
            if wanted == Some(ours.dh.iana_id())
                && st.dh.group() != ours.dh
                && let Ok(dh) = self.io.dh(ours.dh)
            {
                st.dh = dh;
                sa.pending = None;
                self.io.log(
                    peer,
                    Level::Info,
                    "invalid_ke",
                    format!("peer requested DH group {}; retrying", ours.dh.name()),
                );
                self.send_init(now, sa);
                return;
            }
            let g = wanted.map_or_else(|| "?".to_string(), group_name);
            self.io.fail(
                peer,
                Phase::Phase1,
                format!(
                    "peer requires DH group {g} (INVALID_KE_PAYLOAD); this tunnel allows {}",
                    ours.dh.name()
                ),
            );
            sa.dead = true;
            return;
        }
        if let Some(n) = p.iter().find_map(error_notify) {
            let reason = if n.ntype == NotifyType::NO_PROPOSAL_CHOSEN {
                // strongSwan answers so for a connection it does not have as well
                // ("no IKE config found"): one for another address or IKE version.
                format!(
                    "peer rejected our proposal {} (NO_PROPOSAL_CHOSEN): it allows other \
                     algorithms, or has no IKEv2 connection for this gateway's address {} \
                     (ike.version must match on both sides)",
                    ours.name(),
                    sa.local.ip()
                )
            } else {
                format!("peer answered IKE_SA_INIT with {}", notify_name(n.ntype))
            };
            self.io.fail(peer, Phase::Phase1, reason);
            sa.dead = true;
            return;
        }
        let (Some(sa_p), Some(ke), Some(nr)) = (find_sa(p), find_ke(p), find_nonce(p)) else {
            self.io.stats.malformed += 1;
            return;
        };
        if msg.header.spi_r == 0 {
            self.io.stats.malformed += 1;
            return;
        }
        if check_ike_answer(sa_p, &ours).is_none() {
            self.io.fail(
                peer,
                Phase::Phase1,
                format!(
                    "peer chose {}, which we did not offer; this tunnel allows {}",
                    describe(sa_p),
                    ours.name()
                ),
            );
            sa.dead = true;
            return;
        }
        if ke.group != st.dh.group().iana_id() {
            self.io.fail(
                peer,
                Phase::Phase1,
                format!(
                    "peer sent a KE payload for DH group {}; we offered {}",
                    group_name(ke.group),
                    ours.dh.name()
                ),
            );
            sa.dead = true;
            return;
        }
        // In place unless offloaded (`offload.rs`).
        let shared = if self.offloads_dh() {
            None
        } else {
            let Ok(shared) = st.dh.shared_secret(&ke.data) else {
                self.io.fail(
                    peer,
                    Phase::Phase1,
                    "peer's Diffie-Hellman public value is invalid".into(),
                );
                sa.dead = true;
                return;
            };
            Some(shared)
        };
        let ni = st.ni.clone();
        let Some(pending) = sa.pending.take() else {
            return;
        };
        sa.spi_r = msg.header.spi_r;
        sa.last_rx = now;
        if let Some(shared) = &shared
            && !self.set_ike_keys(sa, None, shared, &ni, nr)
        {
            sa.dead = true;
            return;
        }
        let forced =
            sa.cfg.nat_traversal && has_nat_d(p) && self.cfg.esp_encap.forces_as_initiator();
        if sa.cfg.nat_traversal && has_nat_d(p) {
            // We sent a source hash that cannot match: the peer sees us as translated.
            sa.nat_local = forced
                || notifies(p, NotifyType::NAT_DETECTION_DESTINATION_IP)
                    .any(|n| n.data != nat_hash(sa.spi_i, sa.spi_r, sa.local));
            sa.nat_remote = !notifies(p, NotifyType::NAT_DETECTION_SOURCE_IP)
                .any(|n| n.data == nat_hash(sa.spi_i, sa.spi_r, sa.remote));
        }
        sa.childless_supported = find_notify(p, NotifyType::CHILDLESS_IKEV2_SUPPORTED).is_some();
        sa.local = local;
        sa.remote = remote;
        if sa.udp_encap() || remote.port() == 4500 || local.port() == 4500 {
            // RFC 7296 §2.23: switch to port 4500 from IKE_AUTH on.
            sa.local.set_port(4500);
            sa.remote.set_port(4500);
        }
        self.io.log(
            peer,
            Level::Info,
            "ike_sa_init",
            format!(
                "IKE_SA_INIT done with {}: {}{}",
                sa.remote,
                ours.name(),
                if forced {
                    ", UDP encapsulation forced (RFC 7296 §2.23)".to_string()
                } else {
                    nat_note(sa)
                }
            ),
        );
        let hs = Handshake {
            msg1: pending.bytes,
            msg2: data.to_vec(),
        };
        if shared.is_some() {
            self.send_auth(now, sa, hs);
            return;
        }
        let State::ExpectInitResponse(st) = std::mem::replace(&mut sa.state, State::Keying) else {
            return;
        };
        let peer_ke = ke.data.clone();
        self.offload_keys(now, sa, st.dh, peer_ke, ni, nr.to_vec(), Some(hs));
    }

    // ---- IKE_AUTH --------------------------------------------------------------------

    pub(crate) fn send_auth(&mut self, now: Instant, sa: &mut IkeSa, hs: Handshake) {
        let Some(keys) = &sa.keys else { return };
        let cfg = &sa.cfg;
        let prf = cfg.ike.prf();
        let idi = cfg.local_id.to_wire();
        let auth = psk_auth(
            prf,
            &cfg.psk.0,
            keys.sk_pi.as_slice(),
            &hs.msg1,
            &sa.nr,
            &idi.encoded(),
        );
        // RFC 6023 §3: a peer that refused the Child SA in IKE_AUTH before gets it in
        // CREATE_CHILD_SA once the IKE SA is up.
        let childless =
            sa.childless_supported && sa.peer.is_some_and(|p| self.childless.contains(&p));
        let child = (!childless).then(|| {
            let (local_ts, remote_ts) = configured_ts(cfg);
            ChildRequest {
                spi_in: self.io.child_spi(),
                local_ts,
                remote_ts,
            }
        });
        let mut p = vec![Payload::IdI(idi)];
        // RFC 7296 §2.4: tell the peer we have no other IKE SA with it. An IKE SA the
        // peer is setting up with us right now counts: with simultaneous initiation
        // INITIAL_CONTACT would make the peer drop the IKE SA it initiated.
        let live = |s: &IkeSa| !s.dead && s.linger_until.is_none();
        let others = sa.peer.is_some_and(|p| {
            self.sas.of_peer(p).any(|(_, s)| live(s))
                || self.sas.unidentified_from(sa.remote.ip()).any(|(_, s)| {
                    live(s)
                        && s.cfg.ike == cfg.ike
                        && crate::table::accepts(cfg, s.local.ip(), s.remote.ip())
                })
        });
        if !others {
            p.push(Payload::Notify(Notify::new(
                NotifyType::INITIAL_CONTACT,
                Vec::new(),
            )));
        }
        p.push(Payload::IdR(cfg.remote_id.to_wire()));
        p.push(Payload::Auth(Auth {
            method: AuthMethod::SHARED_KEY_MIC,
            data: auth,
        }));
        if let Some(child) = &child {
            p.push(Payload::Sa(esp_offer(&cfg.esp, child.spi_in, None)));
            p.push(Payload::TsI(wire_ts(&child.local_ts)));
            p.push(Payload::TsR(wire_ts(&child.remote_ts)));
        }
        sa.state = State::ExpectAuthResponse(ExpectAuthResponse { hs, child });
        self.send_request(now, sa, ExchangeType::IKE_AUTH, p, Req::Auth);
    }

    fn auth_request(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        local: SocketAddr,
        remote: SocketAddr,
        id: u32,
        inner: Vec<Payload>,
    ) {
        let State::ExpectAuthRequest(hs) = &sa.state else {
            return;
        };
        let (msg1, msg2) = (hs.msg1.clone(), hs.msg2.clone());
        let (Some(idi), Some(auth)) = (find_idi(&inner), find_auth(&inner)) else {
            self.io.stats.malformed += 1;
            self.send_response(
                sa,
                local,
                remote,
                ExchangeType::IKE_AUTH,
                id,
                vec![notify(NotifyType::INVALID_SYNTAX)],
            );
            self.linger(now, sa);
            return;
        };
        let idr = find_idr(&inner);
        // The candidates of IKE_SA_INIT (same addresses and IKE algorithms) that
        // claim this identity, looked up by identity; the one whose local id the
        // peer asked for (IDr) first, then one configured with the peer's exact
        // address, then the lowest id.
        let matching = self
            .index
            .by_remote_id(idi)
            .filter_map(|p| self.peers.get(&p).map(|c| (p, c)))
            .filter(|(_, c)| {
                c.ike == sa.cfg.ike
                    && c.remote_id.matches(idi)
                    && crate::table::accepts(c, sa.local.ip(), sa.remote.ip())
            })
            .min_by_key(|(p, c)| {
                (
                    !idr.is_some_and(|r| c.local_id.matches(r)),
                    c.remote_addr().is_none(),
                    *p,
                )
            })
            .map(|(p, c)| (p, c.clone()));
        let Some((peer, cfg)) = matching else {
            let first = sa.candidate;
            let want = first
                .and_then(|p| self.peers.get(&p))
                .map(|c| c.remote_id.to_string())
                .unwrap_or_default();
            let mut reason =
                format!("peer identity {idi} does not match the configured remote id {want}");
            // RFC 7296 §2.23: the NAT_DETECTION hashes showed the peer behind a NAT. A
            // device there identifies itself by its own (private) address unless told
            // otherwise; the tunnel expects the address the customer gateway names.
            if sa.nat_remote
                && idi.id_type == crate::wire::registry::IdType::IPV4_ADDR
                && idi.to_string() != remote.ip().to_string()
            {
                reason.push_str(&format!(
                    " (the peer is behind a NAT, at {}, and identifies itself by its own \
                     address: set its local ID to {want}, or ike.remote_id here to {idi})",
                    remote.ip()
                ));
            }
            self.io.fail(first, Phase::Phase1, reason);
            self.send_response(
                sa,
                local,
                remote,
                ExchangeType::IKE_AUTH,
                id,
                vec![notify(NotifyType::AUTHENTICATION_FAILED)],
            );
            self.linger(now, sa);
            return;
        };
        sa.peer = Some(peer);
        sa.cfg = cfg;
        let Some(keys) = &sa.keys else { return };
        let prf = sa.cfg.ike.prf();
        let expected = psk_auth(
            prf,
            &sa.cfg.psk.0,
            keys.sk_pi.as_slice(),
            &msg1,
            &sa.nr,
            &idi.encoded(),
        );
        if auth.method != AuthMethod::SHARED_KEY_MIC || !ct_eq(&expected, &auth.data) {
            let reason = if auth.method == AuthMethod::SHARED_KEY_MIC {
                format!("authentication failed — check the pre-shared key (peer {idi} at {remote})")
            } else {
                other_auth_method(auth.method, &format!("peer {idi} at {remote}"))
            };
            self.io.fail(Some(peer), Phase::Phase1, reason);
            self.send_response(
                sa,
                local,
                remote,
                ExchangeType::IKE_AUTH,
                id,
                vec![notify(NotifyType::AUTHENTICATION_FAILED)],
            );
            self.linger(now, sa);
            return;
        }
        if find_notify(&inner, NotifyType::INITIAL_CONTACT).is_some() {
            self.initial_contact(sa);
        }
        let idr_ours = sa.cfg.local_id.to_wire();
        let auth_r = psk_auth(
            prf,
            &sa.cfg.psk.0,
            keys.sk_pr.as_slice(),
            &msg2,
            &sa.ni,
            &idr_ours.encoded(),
        );
        let mut out = vec![
            Payload::IdR(idr_ours),
            Payload::Auth(Auth {
                method: AuthMethod::SHARED_KEY_MIC,
                data: auth_r,
            }),
        ];
        sa.state = State::Established;
        sa.half_open_until = None;
        self.established(now, sa);
        if find_sa(&inner).is_some() {
            let (ni, nr) = (sa.ni.clone(), sa.nr.clone());
            match self.child_responder(sa, &inner, None, &ni, &nr, None) {
                Ok((answer, remote_ts, local_ts, child)) => {
                    out.push(Payload::Sa(answer));
                    out.push(Payload::TsI(wire_ts(&remote_ts)));
                    out.push(Payload::TsR(wire_ts(&local_ts)));
                    self.child_established(now, sa, child, None, false);
                }
                Err((n, reason)) => {
                    self.io.fail(Some(peer), Phase::Phase2, reason);
                    out.push(Payload::Notify(n));
                }
            }
        } else {
            self.io.log(
                Some(peer),
                Level::Info,
                "childless",
                "the peer made the IKE SA without a Child SA (RFC 6023); its CREATE_CHILD_SA \
                 brings the Child SA"
                    .into(),
            );
        }
        self.send_response(sa, local, remote, ExchangeType::IKE_AUTH, id, out);
    }

    fn auth_response(&mut self, now: Instant, sa: &mut IkeSa, inner: Vec<Payload>) {
        let st = match std::mem::replace(&mut sa.state, State::Established) {
            State::ExpectAuthResponse(st) => st,
            other => {
                sa.state = other;
                return;
            }
        };
        let peer = sa.peer;
        let (Some(idr), Some(auth)) = (find_idr(&inner), find_auth(&inner)) else {
            let reason = if find_notify(&inner, NotifyType::AUTHENTICATION_FAILED).is_some() {
                // A peer answers so for a wrong key and for an identity it has no
                // configuration for alike (strongSwan: "no matching peer config").
                rejected_auth("answered AUTHENTICATION_FAILED", &sa.cfg, sa.nat_remote)
            } else if let Some(n) = inner.iter().find_map(error_notify) {
                format!("peer rejected IKE_AUTH ({})", notify_name(n.ntype))
            } else {
                "peer's IKE_AUTH response has no identity or AUTH payload".to_string()
            };
            self.io.fail(peer, Phase::Phase1, reason);
            self.release_child_spi(st.child.as_ref());
            sa.dead = true;
            return;
        };
        if !sa.cfg.remote_id.matches(idr) {
            let reason = format!(
                "peer identity {idr} does not match the configured remote id {}",
                sa.cfg.remote_id
            );
            self.auth_failed_as_initiator(now, sa, st.child.as_ref(), reason);
            return;
        }
        let Some(keys) = &sa.keys else { return };
        let expected = psk_auth(
            sa.cfg.ike.prf(),
            &sa.cfg.psk.0,
            keys.sk_pr.as_slice(),
            &st.hs.msg2,
            &sa.ni,
            &idr.encoded(),
        );
        if auth.method != AuthMethod::SHARED_KEY_MIC || !ct_eq(&expected, &auth.data) {
            let reason = if auth.method == AuthMethod::SHARED_KEY_MIC {
                "authentication failed — check the pre-shared key (the peer's AUTH did not verify)"
                    .to_string()
            } else {
                other_auth_method(auth.method, &format!("peer {idr}"))
            };
            self.auth_failed_as_initiator(now, sa, st.child.as_ref(), reason);
            return;
        }
        let refusal = inner.iter().find_map(error_notify).map(|n| n.ntype);
        let Some(child) = st.child else {
            // RFC 6023 §3: IKE_AUTH carried no Child SA; it follows in CREATE_CHILD_SA.
            self.established(now, sa);
            sa.tasks.push_back(Task::CreateChild);
            return;
        };
        if refusal == Some(NotifyType::INVALID_SYNTAX)
            && sa.childless_supported
            && let Some(p) = peer
        {
            // strongSwan with `childless = force` authenticates us, answers a Child SA
            // in IKE_AUTH with INVALID_SYNTAX ("peer did not initiate a childless
            // IKE_SA") and drops the IKE SA. Start over at once without it.
            self.io.child_spis.remove(&child.spi_in);
            sa.dead = true;
            self.childless.insert(p);
            self.io.log(
                peer,
                Level::Warn,
                "childless_required",
                "peer accepts only IKE SAs made without a Child SA (RFC 6023; strongSwan \
                 childless = force) and dropped this one; negotiating a new IKE SA and then \
                 the Child SA with CREATE_CHILD_SA"
                    .into(),
            );
            let cfg = sa.cfg.clone();
            if let Err(e) = self.start_init(now, p, cfg) {
                self.io.fail(peer, Phase::Phase1, e.to_string());
            }
            return;
        }
        self.established(now, sa);
        if let Some(n) = refusal {
            self.io.child_spis.remove(&child.spi_in);
            let reason = child_refusal(n, &sa.cfg);
            self.io.fail(peer, Phase::Phase2, reason);
            return;
        }
        let (ni, nr) = (sa.ni.clone(), sa.nr.clone());
        match self.child_initiator(sa, &inner, &child, &ni, &nr, None) {
            Ok(child) => self.child_established(now, sa, child, None, true),
            Err(reason) => {
                self.io.fail(peer, Phase::Phase2, reason);
                sa.tasks.push_back(Task::DeleteChildren(vec![child.spi_in]));
            }
        }
    }

    /// RFC 7296 §2.21.2: an initiator that rejects the responder's AUTH tells it in an
    /// INFORMATIONAL exchange and drops the SA.
    fn auth_failed_as_initiator(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        child: Option<&ChildRequest>,
        reason: String,
    ) {
        self.io.fail(sa.peer, Phase::Phase1, reason);
        self.release_child_spi(child);
        self.send_request(
            now,
            sa,
            ExchangeType::INFORMATIONAL,
            vec![notify(NotifyType::AUTHENTICATION_FAILED)],
            Req::Notify,
        );
        sa.pending = None;
        sa.dead = true;
    }

    /// Frees the inbound SPI reserved for a Child SA that will not be made.
    fn release_child_spi(&mut self, child: Option<&ChildRequest>) {
        if let Some(c) = child {
            self.io.child_spis.remove(&c.spi_in);
        }
    }

    /// Keeps a failed responder SA briefly so retransmitted requests get the same answer.
    fn linger(&mut self, now: Instant, sa: &mut IkeSa) {
        sa.linger_until = Some(now + self.cfg.retransmit_base * 8);
        sa.pending = None;
        sa.tasks.clear();
    }

    /// RFC 7296 §2.4: INITIAL_CONTACT means the peer lost every other IKE SA with us.
    fn initial_contact(&mut self, sa: &IkeSa) {
        let Some(peer) = sa.peer else { return };
        let others: Vec<u64> = self
            .sas
            .of_peer(peer)
            .filter(|(_, s)| s.established())
            .map(|(k, _)| k)
            .collect();
        for spi in others {
            if let Some(mut old) = self.sas.remove(&spi) {
                self.io.log(
                    sa.peer,
                    Level::Info,
                    "initial_contact",
                    format!(
                        "peer sent INITIAL_CONTACT; dropping old IKE SA {:016x}_{:016x}",
                        old.spi_i, old.spi_r
                    ),
                );
                self.remove_sa(&mut old, DeleteReason::InitialContact);
                self.put_back(old);
            }
        }
    }

    fn established(&mut self, now: Instant, sa: &mut IkeSa) {
        sa.state = State::Established;
        sa.established_at = Some(now);
        self.arm_ike_timers(now, sa);
        let (Some(peer), Some(algorithms)) = (sa.peer, sa.algs) else {
            return;
        };
        self.io.log(
            Some(peer),
            Level::Info,
            "phase1_established",
            format!(
                "IKE SA {:016x}_{:016x} established with {} ({}){}",
                sa.spi_i,
                sa.spi_r,
                sa.remote,
                algorithms,
                nat_note(sa)
            ),
        );
        self.io.event(Event::IkeSaEstablished {
            peer,
            spi_i: sa.spi_i,
            spi_r: sa.spi_r,
            initiator: sa.initiator,
            algorithms,
            local: sa.local,
            remote: sa.remote,
        });
        self.resolve_duplicates(now, sa);
    }

    /// Both ends initiated at once: each made one IKE SA as initiator and one as
    /// responder, and both would carry a Child SA for the same tunnel. Once both are
    /// established, both ends pick the same redundant one without talking: the IKE SA
    /// whose IKE_SA_INIT used the lowest of the four nonces, the rule RFC 7296 §2.8.1
    /// gives for simultaneous rekeys. Its initiator deletes it; its responder waits
    /// for that Delete (and deletes it itself if none comes).
    ///
    /// A peer that re-authenticates (RFC 7296 §2.8.3; strongSwan's `make_before_break`)
    /// also builds a second IKE SA beside the first, and then deletes the old one
    /// itself. This rule may pick the new one: then we wait for a Delete that never
    /// comes, and the peer's Delete of the old one hands the tunnel to the new one
    /// ([`Self::successor_by_reauth`]). If it picks the old one and we initiated that,
    /// we give the peer a moment to delete it first. Arrival times cannot tell the
    /// two cases apart here: a retransmitted IKE_SA_INIT of a simultaneous initiation
    /// can arrive after our own IKE SA came up, and the peer, seeing both overlap,
    /// expects the rule. Only our own deliberate second IKE SA (started after the
    /// other was established) is left out.
    fn resolve_duplicates(&mut self, now: Instant, sa: &mut IkeSa) {
        let Some(peer) = sa.peer else { return };
        if !sa.from_init || sa.duplicate || sa.retiring {
            return;
        }
        let started = sa.started;
        let ours_after = sa.initiator;
        let other = self.sas.of_peer(peer).find_map(|(spi, s)| {
            (s.from_init
                && s.initiator != sa.initiator
                && s.established()
                && !(ours_after && s.established_at.is_some_and(|at| at < started))
                && !s.dead
                && !s.retiring
                && !s.duplicate
                && s.linger_until.is_none())
            .then_some(spi)
        });
        let Some(other_spi) = other else { return };
        let Some(mut other) = self.sas.remove(&other_spi) else {
            return;
        };
        let overlapped = other.established_at.is_some_and(|at| at >= started);
        let ours = (min_nonce(&sa.ni, &sa.nr), sa.spi_i);
        let theirs = (min_nonce(&other.ni, &other.nr), other.spi_i);
        let (redundant, kept) = if ours < theirs {
            (&mut *sa, &other)
        } else {
            (&mut other, &*sa)
        };
        redundant.duplicate = true;
        redundant.retiring = true;
        redundant.rekey_at = None;
        let who = if redundant.initiator && !overlapped {
            // A re-authenticating peer deletes the old IKE SA itself right after the
            // new one's IKE_AUTH. Our Delete, sent now, would reach it before our
            // IKE_AUTH answer and take its old Child SA away before it has the new one.
            redundant.retire_at = Some(now + self.cfg.retransmit_base / 2);
            "deleting it unless the peer does first"
        } else if redundant.initiator {
            redundant.tasks.clear();
            redundant.tasks.push_back(Task::DeleteIke);
            "deleting it"
        } else {
            // Our fallback if the peer never deletes it: strongSwan, for one, keeps
            // both IKE SAs. A vpngw peer's Delete comes at once, or with its first
            // retransmission.
            redundant.retire_at = Some(now + self.cfg.retransmit_base * 2);
            "the peer deletes it"
        };
        let how = if overlapped {
            "simultaneous initiation"
        } else {
            "the peer started a second IKE SA (a re-authentication, or a late retry of \
             a simultaneous initiation)"
        };
        let msg = format!(
            "{how}: IKE SA {:016x}_{:016x} duplicates {:016x}_{:016x} and has the lowest \
             nonce; {who}",
            redundant.spi_i, redundant.spi_r, kept.spi_i, kept.spi_r
        );
        self.io
            .log(Some(peer), Level::Info, "duplicate_ike_sa", msg);
        if other.duplicate {
            self.next_task(now, &mut other);
        }
        self.sas.insert(other_spi, other);
    }

    /// The IKE SA (its SPIs) that the peer made to replace `sa` by re-authentication:
    /// another established one with the same peer that carries Child SAs and is not on
    /// its way out. One that the duplicate rule marked redundant while we wait for the
    /// peer to delete it counts too: the peer deleting the other one instead shows that
    /// it re-authenticated, so it is taken back into service.
    fn successor_by_reauth(&mut self, now: Instant, sa: &IkeSa) -> Option<(u64, u64)> {
        let peer = sa.peer?;
        let spi = self.sas.of_peer(peer).find_map(|(spi, s)| {
            (s.established()
                && !s.children.is_empty()
                && !s.dead
                && s.linger_until.is_none()
                && (!s.retiring || (s.duplicate && !s.initiator)))
                .then_some(spi)
        })?;
        let mut s = self.sas.remove(&spi)?;
        if s.duplicate {
            s.duplicate = false;
            s.retiring = false;
            s.retire_at = None;
            self.arm_ike_timers(now, &mut s);
        }
        let spis = (s.spi_i, s.spi_r);
        self.sas.insert(spi, s);
        Some(spis)
    }

    fn arm_ike_timers(&mut self, now: Instant, sa: &mut IkeSa) {
        let l = sa.cfg.ike_lifetime;
        sa.rekey_at = soft_lifetime(l, self.io.u32()).map(|d| now + d);
        sa.expire_at = (!l.is_zero()).then(|| now + l);
    }

    // ---- Child SAs -------------------------------------------------------------------

    /// Responder side of a Child SA negotiation (IKE_AUTH or CREATE_CHILD_SA): returns
    /// our SA answer, narrowed TSi (peer side) and TSr (our side), and the Child SA.
    fn child_responder(
        &mut self,
        sa: &IkeSa,
        inner: &[Payload],
        dh: Option<Option<crypto::DhGroup>>,
        ni: &[u8],
        nr: &[u8],
        shared: Option<&[u8]>,
    ) -> Result<ChildOffer, (Notify, String)> {
        let cfg = &sa.cfg;
        let sa_p = find_sa(inner).ok_or_else(|| {
            (
                notify_n(NotifyType::INVALID_SYNTAX),
                "Child SA request without SA payload".to_string(),
            )
        })?;
        let spi_in = self.io.child_spi();
        let (answer, spi_out) = select_esp(sa_p, &cfg.esp, dh, spi_in).map_err(|offer| {
            self.io.child_spis.remove(&spi_in);
            let mut reason = format!(
                "peer proposed {offer} for the Child SA; this tunnel allows {}",
                cfg.esp.name()
            );
            if esp_needs_esn(sa_p, &cfg.esp, dh) {
                reason.push_str(ESN_NOTE);
            }
            if needs_unknown_types(sa_p, None, Some((&cfg.esp, dh))) {
                reason.push_str(UNKNOWN_TYPES_NOTE);
            }
            // In CREATE_CHILD_SA (`dh` set) an offer that only the DH group keeps out
            // is a PFS mismatch, which IKE_AUTH cannot show (no KE there, RFC 7296
            // §1.2): the tunnel came up and fails at its first rekey.
            if dh.is_some() && select_esp(sa_p, &cfg.esp, None, 0).is_ok() {
                reason.push_str(&match cfg.esp.pfs {
                    None => " (the peer uses PFS on rekeys and this tunnel has ipsec.pfs \
                              disabled: set ipsec.pfs to the peer's group, or the Child SA \
                              expires at the end of its lifetime)"
                        .to_string(),
                    Some(g) => format!(
                        " (only the PFS group differs: this tunnel has ipsec.pfs {}; set \
                         the peer's group, or the Child SA expires at the end of its \
                         lifetime)",
                        g.name()
                    ),
                });
            }
            (notify_n(NotifyType::NO_PROPOSAL_CHOSEN), reason)
        })?;
        let (tsi, tsr) = (
            find_tsi(inner).unwrap_or_default(),
            find_tsr(inner).unwrap_or_default(),
        );
        let ours_remote: Vec<TsRange> = cfg
            .remote_ts
            .iter()
            .copied()
            .map(TsRange::from_cidr)
            .collect();
        let ours_local: Vec<TsRange> = cfg
            .local_ts
            .iter()
            .copied()
            .map(TsRange::from_cidr)
            .collect();
        let remote_ts = narrow(tsi, &ours_remote);
        let local_ts = narrow(tsr, &ours_local);
        if remote_ts.is_empty() || local_ts.is_empty() {
            self.io.child_spis.remove(&spi_in);
            return Err((
                notify_n(NotifyType::TS_UNACCEPTABLE),
                format!(
                    "traffic selectors unacceptable (TS_UNACCEPTABLE): peer proposed {} === {}; this tunnel allows {} === {}",
                    wire_ts_string(tsi),
                    wire_ts_string(tsr),
                    list_to_string(&ours_remote),
                    list_to_string(&ours_local)
                ),
            ));
        }
        let Some(keys) = &sa.keys else {
            return Err((notify_n(NotifyType::INVALID_SYNTAX), "no keys".into()));
        };
        let k = ChildKeys::derive(
            cfg.ike.prf(),
            keys.sk_d.as_slice(),
            cfg.esp.encr,
            cfg.esp.negotiated_integ(),
            shared,
            ni,
            nr,
        );
        // The peer initiated this exchange: its outbound keys come first (§2.17).
        let child = ChildSa {
            spi_in,
            spi_out,
            encr: cfg.esp.encr,
            integ: cfg.esp.negotiated_integ(),
            encr_key_in: k.encr_i,
            encr_key_out: k.encr_r,
            integ_key_in: k.integ_i,
            integ_key_out: k.integ_r,
            local_ts: local_ts.clone(),
            remote_ts: remote_ts.clone(),
            local: sa.local,
            remote: sa.remote,
            udp_encap: sa.udp_encap(),
            local_behind_nat: sa.nat_local,
            pfs: dh.flatten(),
            lifetime: cfg.child_lifetime,
        };
        Ok((answer, remote_ts, local_ts, child))
    }

    /// Initiator side: checks the responder's answer against what we proposed. `dh`: with
    /// PFS, our key pair and the shared secret if it was computed already.
    fn child_initiator(
        &mut self,
        sa: &IkeSa,
        inner: &[Payload],
        req: &ChildRequest,
        ni: &[u8],
        nr: &[u8],
        dh: Option<(DhPrivate, Option<DhResult>)>,
    ) -> Result<ChildSa, String> {
        let cfg = &sa.cfg;
        let pfs = dh.as_ref().map(|(d, _)| d.group());
        let sa_p = find_sa(inner).ok_or("peer's answer has no SA payload for the Child SA")?;
        let spi_out = check_esp_answer(sa_p, &cfg.esp, pfs).ok_or_else(|| {
            format!(
                "peer chose {} for the Child SA, which we did not offer; this tunnel allows {}",
                describe(sa_p),
                cfg.esp.name()
            )
        })?;
        let shared = match dh {
            Some((d, ready)) => {
                let ke = find_ke(inner)
                    .ok_or("peer's answer has no KE payload although PFS is configured")?;
                if ke.group != d.group().iana_id() {
                    return Err(format!(
                        "peer answered with PFS group {}; this tunnel uses {}",
                        group_name(ke.group),
                        d.group().name()
                    ));
                }
                Some(
                    ready
                        .unwrap_or_else(|| d.shared_secret(&ke.data))
                        .map_err(|_| "peer's Diffie-Hellman public value is invalid")?,
                )
            }
            None => None,
        };
        let (tsi, tsr) = (
            find_tsi(inner).unwrap_or_default(),
            find_tsr(inner).unwrap_or_default(),
        );
        let (Some(local_ts), Some(remote_ts)) = (
            accept_narrowed(tsi, &req.local_ts),
            accept_narrowed(tsr, &req.remote_ts),
        ) else {
            return Err(format!(
                "traffic selectors unacceptable: peer answered {} === {}, outside what we proposed ({} === {})",
                wire_ts_string(tsi),
                wire_ts_string(tsr),
                list_to_string(&req.local_ts),
                list_to_string(&req.remote_ts)
            ));
        };
        let keys = sa.keys.as_ref().ok_or("no keys")?;
        let k = ChildKeys::derive(
            cfg.ike.prf(),
            keys.sk_d.as_slice(),
            cfg.esp.encr,
            cfg.esp.negotiated_integ(),
            shared.as_deref().map(|s| s.as_slice()),
            ni,
            nr,
        );
        Ok(ChildSa {
            spi_in: req.spi_in,
            spi_out,
            encr: cfg.esp.encr,
            integ: cfg.esp.negotiated_integ(),
            encr_key_in: k.encr_r,
            encr_key_out: k.encr_i,
            integ_key_in: k.integ_r,
            integ_key_out: k.integ_i,
            local_ts,
            remote_ts,
            local: sa.local,
            remote: sa.remote,
            udp_encap: sa.udp_encap(),
            local_behind_nat: sa.nat_local,
            pfs,
            lifetime: cfg.child_lifetime,
        })
    }

    /// Installs a Child SA and reports it (as a rekey of `old_in` if given);
    /// `initiator`: we sent the request that created it.
    fn child_established(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        child: ChildSa,
        old_in: Option<u32>,
        initiator: bool,
    ) {
        let Some(peer) = sa.peer else { return };
        let msg = format!(
            "Child SA {:08x}/{:08x} ({}) {} === {}{}",
            child.spi_in,
            child.spi_out,
            child.algorithms(),
            list_to_string(&child.local_ts),
            list_to_string(&child.remote_ts),
            if child.udp_encap {
                ", UDP-encapsulated"
            } else {
                ""
            }
        );
        let old = old_in.and_then(|o| {
            sa.children
                .iter()
                .find(|c| c.sa.spi_in == o)
                .map(|c| (c.sa.spi_in, c.sa.spi_out))
        });
        self.install_child(now, sa, child.clone());
        match old {
            Some((old_spi_in, old_spi_out)) => {
                self.io.log(
                    Some(peer),
                    Level::Info,
                    "child_rekeyed",
                    format!("rekeyed {:08x}: {msg}", old_spi_in),
                );
                self.io.event(Event::ChildSaRekeyed {
                    peer,
                    old_spi_in,
                    old_spi_out,
                    child,
                    initiator,
                });
            }
            None => {
                self.io
                    .log(Some(peer), Level::Info, "phase2_established", msg);
                self.io.warn_if_narrowed(peer, &child, &sa.cfg);
                self.io.event(Event::ChildSaEstablished {
                    peer,
                    child,
                    initiator,
                });
            }
        }
    }

    // ---- requests on an established SA ------------------------------------------------

    pub(crate) fn handle_request(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: Message,
    ) {
        let h = msg.header;
        let id = h.message_id;
        if let Some((rid, bytes)) = &sa.last_response
            && *rid == id
            && id.wrapping_add(1) == sa.peer_msg_id
        {
            // RFC 7296 §2.1: a retransmitted request gets the cached response.
            self.io.stats.duplicate_requests += 1;
            self.io.send(local, remote, bytes.clone());
            return;
        }
        if id != sa.peer_msg_id || sa.linger_until.is_some() {
            self.io.stats.unexpected += 1;
            return;
        }
        let Some(Payload::Sk(enc)) = msg.payloads.last() else {
            self.io.stats.malformed += 1;
            return;
        };
        let Some(sk) = sa.sk() else { return };
        let inner = match sk.open(data, enc) {
            Ok(p) => p,
            Err(SkError::Integrity) => {
                self.io.stats.integrity_failures += 1;
                return;
            }
            Err(SkError::Decode(e)) => {
                self.io.stats.malformed += 1;
                let data = match e {
                    crate::wire::DecodeError::UnsupportedCriticalPayload(t) => vec![t.0],
                    _ => Vec::new(),
                };
                self.send_response(
                    sa,
                    local,
                    remote,
                    h.exchange,
                    id,
                    vec![Payload::Notify(Notify::new(e.notify(), data))],
                );
                return;
            }
        };
        if ExchangeDh::waits(&sa.exchange_dh, id, false) {
            // Its first copy waits for its shared secret (`offload.rs`).
            self.io.stats.duplicate_requests += 1;
            return;
        }
        sa.last_rx = now;
        self.update_addresses(sa, local, remote);
        match (h.exchange, &sa.state) {
            (ExchangeType::IKE_AUTH, State::ExpectAuthRequest(_)) => {
                self.auth_request(now, sa, local, remote, id, inner)
            }
            (ExchangeType::CREATE_CHILD_SA, State::Established) => {
                self.create_child_request(now, sa, (local, remote, data), id, inner)
            }
            (ExchangeType::INFORMATIONAL, _) => {
                self.informational_request(now, sa, local, remote, id, inner)
            }
            _ => {
                self.io.stats.unexpected += 1;
                self.send_response(
                    sa,
                    local,
                    remote,
                    h.exchange,
                    id,
                    vec![notify(NotifyType::INVALID_SYNTAX)],
                );
            }
        }
        if !sa.dead {
            self.next_task(now, sa);
        }
    }

    /// `dgram`: the request as it arrived, kept if its shared secret is offloaded.
    fn create_child_request(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        dgram: Datagram<'_>,
        id: u32,
        inner: Vec<Payload>,
    ) {
        let (local, remote, _) = dgram;
        let respond = |this: &mut Self, sa: &mut IkeSa, p: Vec<Payload>| {
            this.send_response(sa, local, remote, ExchangeType::CREATE_CHILD_SA, id, p)
        };
        let (Some(sa_p), Some(ni)) = (find_sa(&inner), find_nonce(&inner)) else {
            self.io.stats.malformed += 1;
            respond(self, sa, vec![notify(NotifyType::INVALID_SYNTAX)]);
            return;
        };
        let ni = ni.to_vec();
        if sa_p.proposals.first().map(|p| p.protocol) == Some(ProtocolId::IKE) {
            self.rekey_ike_request(now, sa, dgram, id, &inner, ni);
            return;
        }
        // A second IKE SA of the peer that we answered and took for the redundant twin
        // of a simultaneous initiation (`resolve_duplicates`) may be a childless
        // re-authentication (RFC 6023; strongSwan `childless = force`): its Child SA
        // comes now, and the peer's Delete of the old IKE SA hands the tunnel over
        // (`successor_by_reauth`). Otherwise it goes as planned, Child SA and all.
        let reauth_child =
            sa.duplicate && !sa.initiator && find_notify(&inner, NotifyType::REKEY_SA).is_none();
        // RFC 7296 §2.25.2: no Child SA work while the IKE SA is being rekeyed.
        if (sa.retiring && !reauth_child)
            || matches!(
                sa.pending.as_ref().map(|p| &p.kind),
                Some(Req::RekeyIke { .. })
            )
        {
            respond(self, sa, vec![notify(NotifyType::TEMPORARY_FAILURE)]);
            return;
        }
        let mut old_in = None;
        if let Some(n) = find_notify(&inner, NotifyType::REKEY_SA) {
            let found = n
                .spi32()
                .and_then(|s| sa.child_by_out(s))
                .map(|c| (c.state, c.sa.spi_in));
            match found {
                Some((ChildState::Installed | ChildState::Rekeying, spi_in)) => {
                    old_in = Some(spi_in)
                }
                Some((ChildState::Rekeyed, _)) => {
                    respond(self, sa, vec![notify(NotifyType::TEMPORARY_FAILURE)]);
                    return;
                }
                // Still on the IKE SA this one replaces: the peer's request overtook the
                // Delete that moves it here (RFC 7296 §2.18). Not found would make the
                // peer delete its side of a Child SA that both still need.
                _ if n.spi32().is_some_and(|s| self.child_elsewhere(sa, s)) => {
                    respond(self, sa, vec![notify(NotifyType::TEMPORARY_FAILURE)]);
                    return;
                }
                _ => {
                    let nn = Notify {
                        protocol: ProtocolId::ESP,
                        spi: n.spi.clone(),
                        ntype: NotifyType::CHILD_SA_NOT_FOUND,
                        data: Vec::new(),
                    };
                    respond(self, sa, vec![Payload::Notify(nn)]);
                    return;
                }
            }
        }
        let pfs = sa.cfg.esp.pfs;
        let peer = sa.peer;
        let mut dh = None;
        let mut shared = None;
        if let Some(g) = pfs {
            match find_ke(&inner) {
                Some(ke) if ke.group == g.iana_id() => {
                    let Some((d, s)) = self.request_secret(sa, id, g, &ke.data, dgram) else {
                        return;
                    };
                    match s {
                        Ok(s) => shared = Some(s),
                        Err(_) => {
                            respond(self, sa, vec![notify(NotifyType::INVALID_SYNTAX)]);
                            return;
                        }
                    }
                    dh = Some(d);
                }
                Some(_) if select_esp(sa_p, &sa.cfg.esp, Some(pfs), 0).is_ok() => {
                    self.io.log(
                        peer,
                        Level::Info,
                        "invalid_ke",
                        format!(
                            "peer's CREATE_CHILD_SA KE uses another group; requesting {}",
                            g.name()
                        ),
                    );
                    let n = Notify::new(
                        NotifyType::INVALID_KE_PAYLOAD,
                        g.iana_id().to_be_bytes().to_vec(),
                    );
                    respond(self, sa, vec![Payload::Notify(n)]);
                    return;
                }
                _ => {}
            }
        }
        let nr = self.io.nonce();
        match self.child_responder(
            sa,
            &inner,
            Some(pfs),
            &ni,
            &nr,
            shared.as_deref().map(|s| s.as_slice()),
        ) {
            Err((n, reason)) => {
                self.io.fail(peer, Phase::Phase2, reason);
                respond(self, sa, vec![Payload::Notify(n)]);
            }
            Ok((_, remote_ts, local_ts, child))
                if old_in.is_none() && self.other_traffic(sa, &local_ts, &remote_ts) =>
            {
                // The node sends a tunnel's traffic on one Child SA at a time; a second
                // one for other subnets would take over their traffic (RFC 7296
                // §3.10.1: NO_ADDITIONAL_SAS). Several subnets go in one Child SA's
                // traffic selectors (IKEv2), as the product documentation configures
                // strongSwan.
                self.io.child_spis.remove(&child.spi_in);
                self.io.log(
                    peer,
                    Level::Warn,
                    "child_sa_refused",
                    format!(
                        "refused another Child SA for {} === {} (NO_ADDITIONAL_SAS): the \
                         tunnel carries one Child SA, {}; list every subnet in the peer's \
                         one child (its traffic selectors) instead",
                        list_to_string(&local_ts),
                        list_to_string(&remote_ts),
                        self.current_traffic(sa).unwrap_or_default()
                    ),
                );
                respond(self, sa, vec![notify(NotifyType::NO_ADDITIONAL_SAS)]);
            }
            Ok((answer, remote_ts, local_ts, child)) => {
                let mut out = vec![Payload::Sa(answer), Payload::Nonce(nr.clone())];
                if let Some(d) = &dh {
                    out.push(Payload::Ke(KeyExchange {
                        group: d.group().iana_id(),
                        data: d.public_value().to_vec(),
                    }));
                }
                out.push(Payload::TsI(wire_ts(&remote_ts)));
                out.push(Payload::TsR(wire_ts(&local_ts)));
                respond(self, sa, out);
                let new_in = child.spi_in;
                self.child_established(now, sa, child, old_in, false);
                if let Some(old) = old_in.and_then(|o| sa.child_by_in(o)) {
                    if old.state == ChildState::Rekeying {
                        // RFC 7296 §2.8.1: simultaneous rekey, resolved when ours completes.
                        old.collision = Some((min_nonce(&ni, &nr), new_in));
                    } else {
                        old.state = ChildState::Rekeyed;
                        old.rekey_at = None;
                    }
                }
            }
        }
    }

    /// The installed Child SAs of `sa`'s peer (on any of its IKE SAs) that carry
    /// traffic other than `local === remote`.
    fn other_traffic(&self, sa: &IkeSa, local: &[TsRange], remote: &[TsRange]) -> bool {
        let same =
            |a: &[TsRange], b: &[TsRange]| a.len() == b.len() && a.iter().all(|t| b.contains(t));
        let differs = |c: &Child| {
            matches!(c.state, ChildState::Installed | ChildState::Rekeying)
                && !(same(&c.sa.local_ts, local) && same(&c.sa.remote_ts, remote))
        };
        sa.children.iter().any(differs)
            || sa.peer.is_some_and(|p| {
                self.sas
                    .of_peer(p)
                    .any(|(_, s)| !s.dead && s.children.iter().any(differs))
            })
    }

    /// `local === remote` of the first installed Child SA of `sa`'s peer, for logs.
    fn current_traffic(&self, sa: &IkeSa) -> Option<String> {
        let peer = sa.peer;
        std::iter::once(sa)
            .chain(
                peer.into_iter()
                    .flat_map(|p| self.sas.of_peer(p).map(|(_, s)| s)),
            )
            .flat_map(|s| s.children.iter())
            .find(|c| matches!(c.state, ChildState::Installed | ChildState::Rekeying))
            .map(|c| {
                format!(
                    "{} === {}",
                    list_to_string(&c.sa.local_ts),
                    list_to_string(&c.sa.remote_ts)
                )
            })
    }

    fn rekey_ike_request(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        dgram: Datagram<'_>,
        id: u32,
        inner: &[Payload],
        ni: Vec<u8>,
    ) {
        let (local, remote, _) = dgram;
        let respond = |this: &mut Self, sa: &mut IkeSa, p: Vec<Payload>| {
            this.send_response(sa, local, remote, ExchangeType::CREATE_CHILD_SA, id, p)
        };
        let busy = matches!(
            sa.pending.as_ref().map(|p| &p.kind),
            Some(Req::CreateChild { .. })
        );
        // RFC 7296 §2.25.2: not while a Child SA exchange of ours is outstanding, nor on an
        // IKE SA that is already being replaced (our rekey completed first, and its Delete
        // is on the way).
        if busy || sa.rekeyed_to.is_some() || sa.retiring {
            respond(self, sa, vec![notify(NotifyType::TEMPORARY_FAILURE)]);
            return;
        }
        let Some(sa_p) = find_sa(inner) else { return };
        let new_spi = self.new_ike_spi();
        let (answer, peer_spi) = match select_ike(sa_p, &sa.cfg.ike, Some(new_spi)) {
            Ok(x) => x,
            Err(offer) => {
                self.io.fail(
                    sa.peer,
                    Phase::Phase1,
                    format!(
                        "peer proposed {offer} to rekey the IKE SA; this tunnel allows {}{}",
                        sa.cfg.ike.name(),
                        if needs_unknown_types(sa_p, Some(&sa.cfg.ike), None) {
                            UNKNOWN_TYPES_NOTE
                        } else {
                            ""
                        }
                    ),
                );
                respond(self, sa, vec![notify(NotifyType::NO_PROPOSAL_CHOSEN)]);
                return;
            }
        };
        let Ok(peer_spi) = <[u8; 8]>::try_from(peer_spi.as_slice()).map(u64::from_be_bytes) else {
            respond(self, sa, vec![notify(NotifyType::INVALID_SYNTAX)]);
            return;
        };
        let g = sa.cfg.ike.dh;
        let Some(ke) = find_ke(inner).filter(|k| k.group == g.iana_id()) else {
            respond(
                self,
                sa,
                vec![Payload::Notify(Notify::new(
                    NotifyType::INVALID_KE_PAYLOAD,
                    g.iana_id().to_be_bytes().to_vec(),
                ))],
            );
            return;
        };
        let Some((dh, shared)) = self.request_secret(sa, id, g, &ke.data, dgram) else {
            return;
        };
        let Ok(shared) = shared else {
            respond(self, sa, vec![notify(NotifyType::INVALID_SYNTAX)]);
            return;
        };
        let nr = self.io.nonce();
        let Some(sk_d) = sa.keys.as_ref().map(|k| k.sk_d.clone()) else {
            return;
        };
        let mut new = IkeSa::new(
            sa.cfg.clone(),
            sa.peer,
            false,
            peer_spi,
            new_spi,
            sa.local,
            sa.remote,
            State::Established,
            now,
        );
        new.nat_local = sa.nat_local;
        new.nat_remote = sa.nat_remote;
        new.established_at = Some(now);
        if !self.set_ike_keys(
            &mut new,
            Some((sa.cfg.ike.prf(), sk_d.as_slice())),
            &shared,
            &ni,
            &nr,
        ) {
            return;
        }
        respond(
            self,
            sa,
            vec![
                Payload::Sa(answer),
                Payload::Nonce(nr.clone()),
                Payload::Ke(KeyExchange {
                    group: g.iana_id(),
                    data: dh.public_value().to_vec(),
                }),
            ],
        );
        self.arm_ike_timers(now, &mut new);
        if matches!(
            sa.pending.as_ref().map(|p| &p.kind),
            Some(Req::RekeyIke { .. })
        ) {
            sa.ike_collision = Some((min_nonce(&ni, &nr), new_spi));
            new.rekey_collision = true;
        }
        sa.rekeyed_to = Some(new_spi);
        sa.retiring = true;
        // If the peer's Delete never comes, finish the rekey anyway (RFC 7296 §2.18).
        sa.retire_at = Some(now + self.cfg.retransmit_base * 45);
        self.io.log(
            sa.peer,
            Level::Info,
            "ike_rekey",
            format!("peer rekeyed the IKE SA; new SPIs {peer_spi:016x}_{new_spi:016x}"),
        );
        self.sas.insert(new_spi, new);
    }

    fn informational_request(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        local: SocketAddr,
        remote: SocketAddr,
        id: u32,
        inner: Vec<Payload>,
    ) {
        let peer = sa.peer;
        let mut ours = Vec::new();
        let mut delete_ike = false;
        for d in inner.iter().filter_map(|p| {
            if let Payload::Delete(d) = p {
                Some(d)
            } else {
                None
            }
        }) {
            match d.protocol {
                ProtocolId::IKE => delete_ike = true,
                ProtocolId::ESP | ProtocolId::AH => {
                    for spi in d.spis32() {
                        let Some(pos) = sa.children.iter().position(|c| c.sa.spi_out == spi) else {
                            continue;
                        };
                        let c = sa.children.remove(pos);
                        if c.state == ChildState::Rekeying && c.collision.is_some() {
                            // RFC 7296 §2.8.1: both ends rekeyed it, the peer's rekey
                            // survived and the peer deleted it; what our own rekey
                            // makes is redundant (`create_child_response`).
                            sa.lost_rekey = Some(c.sa.spi_in);
                        }
                        // RFC 7296 §1.4.1: answer with our inbound SPI, unless we are
                        // deleting it ourselves already.
                        if c.state != ChildState::Deleting {
                            ours.push(c.sa.spi_in);
                        }
                        self.io.child_spis.remove(&c.sa.spi_in);
                        if let Some(peer) = peer {
                            self.io.log(
                                Some(peer),
                                Level::Info,
                                "child_deleted",
                                format!(
                                    "peer deleted Child SA {:08x}/{:08x}",
                                    c.sa.spi_in, c.sa.spi_out
                                ),
                            );
                            self.io.event(Event::ChildSaDeleted {
                                peer,
                                spi_in: c.sa.spi_in,
                                spi_out: c.sa.spi_out,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        if delete_ike {
            self.send_response(
                sa,
                local,
                remote,
                ExchangeType::INFORMATIONAL,
                id,
                Vec::new(),
            );
            let moved = sa
                .rekeyed_to
                .filter(|n| self.sas.get(n).is_some_and(|s| !s.retiring && !s.dead));
            let reason = if let Some(new_spi) = moved {
                self.transfer_children(now, sa, new_spi);
                DeleteReason::Rekeyed
            } else if sa.rekey_collision {
                // The redundant one of two simultaneous rekeys (RFC 7296 §2.8.1), deleted
                // by the peer that made it, perhaps before our own rekey's answer came.
                DeleteReason::Duplicate
            } else if let Some((i, r)) = self.successor_by_reauth(now, sa) {
                // RFC 7296 §2.8.3: the peer built a new IKE SA with its Child SAs and
                // now deletes the old one; the tunnel lives on in the new one.
                self.io.log(
                    peer,
                    Level::Info,
                    "ike_reauthenticated",
                    format!(
                        "peer deleted IKE SA {:016x}_{:016x} after re-authenticating; \
                         IKE SA {i:016x}_{r:016x} carries the tunnel",
                        sa.spi_i, sa.spi_r
                    ),
                );
                DeleteReason::Reauthenticated
            } else {
                self.io.log(
                    peer,
                    Level::Info,
                    "ike_deleted",
                    "peer deleted the IKE SA".into(),
                );
                DeleteReason::PeerDeleted
            };
            self.remove_sa(sa, reason);
            return;
        }
        if !sa.initiator && find_notify(&inner, NotifyType::AUTHENTICATION_FAILED).is_some() {
            let reason = rejected_auth(
                "rejected our AUTH (AUTHENTICATION_FAILED)",
                &sa.cfg,
                sa.nat_remote,
            );
            self.io.fail(peer, Phase::Phase1, reason);
            self.send_response(
                sa,
                local,
                remote,
                ExchangeType::INFORMATIONAL,
                id,
                Vec::new(),
            );
            self.remove_sa(sa, DeleteReason::Failed);
            return;
        }
        let out = if ours.is_empty() {
            Vec::new()
        } else {
            vec![Payload::Delete(Delete::esp(&ours))]
        };
        self.send_response(sa, local, remote, ExchangeType::INFORMATIONAL, id, out);
        let _ = now;
    }

    /// Whether another IKE SA with `sa`'s peer holds the Child SA whose outbound SPI is
    /// `spi_out`.
    fn child_elsewhere(&self, sa: &IkeSa, spi_out: u32) -> bool {
        let Some(peer) = sa.peer else { return false };
        self.sas
            .of_peer(peer)
            .any(|(_, s)| s.children.iter().any(|c| c.sa.spi_out == spi_out))
    }

    /// Moves the Child SAs of a rekeyed IKE SA to its successor (RFC 7296 §2.18),
    /// with the Child SA work still queued on the old one.
    pub(crate) fn transfer_children(&mut self, now: Instant, old: &mut IkeSa, new_spi: u64) {
        let Some(mut new) = self.sas.get_mut(&new_spi) else {
            return;
        };
        let mut deleting = Vec::new();
        for mut c in old.children.drain(..) {
            if c.state == ChildState::Rekeying {
                // That exchange dies with the old IKE SA: rekey again on the new one.
                c.state = ChildState::Installed;
                c.collision = None;
                c.rekey_at = Some(now);
            }
            if c.state == ChildState::Installed && c.rekey_at.is_none() && c.expire_at.is_some() {
                c.rekey_at = Some(now);
            }
            if c.state == ChildState::Deleting {
                deleting.push(c.sa.spi_in);
            }
            new.children.push(c);
        }
        for t in old.tasks.drain(..) {
            if matches!(
                t,
                Task::DeleteChildren(_) | Task::RekeyChild(_) | Task::CreateChild
            ) {
                new.tasks.push_back(t);
            }
        }
        if !deleting.is_empty() {
            // Our Delete of them was outstanding on the old IKE SA and dies with it: send
            // it again on the new one, or the peer keeps them (a replaced Child SA pair
            // would stay beside its successor).
            new.tasks.push_back(Task::DeleteChildren(deleting));
        }
        let (o, n) = ((old.spi_i, old.spi_r), (new.spi_i, new.spi_r));
        if let Some(peer) = old.peer {
            self.io.log(
                Some(peer),
                Level::Info,
                "ike_rekeyed",
                format!(
                    "IKE SA {:016x}_{:016x} replaced by {:016x}_{:016x}",
                    o.0, o.1, n.0, n.1
                ),
            );
            self.io.event(Event::IkeSaRekeyed {
                peer,
                old: o,
                new: n,
            });
        }
    }

    fn update_addresses(&mut self, sa: &mut IkeSa, local: SocketAddr, remote: SocketAddr) {
        if (local, remote) == (sa.local, sa.remote) {
            return;
        }
        // RFC 7296 §2.23: behind a NAT, follow the latest authenticated message; and
        // like strongSwan, move to 4500 whenever the peer reaches us there.
        if !(sa.udp_encap() || local.port() == 4500) {
            return;
        }
        sa.local = local;
        sa.remote = remote;
        let encap = sa.udp_encap() || local.port() == 4500;
        for c in &mut sa.children {
            c.sa.local = local;
            c.sa.remote = remote;
            c.sa.udp_encap = encap;
        }
        if let Some(peer) = sa.peer.filter(|_| sa.established()) {
            self.io.log(
                Some(peer),
                Level::Info,
                "addresses_changed",
                format!("peer now at {remote} (local {local})"),
            );
            self.io.event(Event::AddressesChanged {
                peer,
                local,
                remote,
                udp_encap: encap,
            });
        }
    }

    // ---- our requests ----------------------------------------------------------------------

    /// Sends CREATE_CHILD_SA for a Child SA with selectors `ts` (ours, the peer's),
    /// replacing the one with inbound SPI `rekey` (REKEY_SA, RFC 7296 §1.3.3) or a new
    /// one beside none (§1.3.1); with PFS configured it carries a KE.
    fn send_create_child(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        rekey: Option<u32>,
        (local_ts, remote_ts): (Vec<TsRange>, Vec<TsRange>),
    ) {
        let peer = sa.peer;
        let pfs = sa.cfg.esp.pfs;
        let dh = match pfs.map(|g| self.io.dh(g)).transpose() {
            Ok(d) => d,
            Err(e) => {
                self.io.log(
                    peer,
                    Level::Error,
                    "internal",
                    format!("cannot generate a DH key: {e}"),
                );
                return;
            }
        };
        let child = ChildRequest {
            spi_in: self.io.child_spi(),
            local_ts,
            remote_ts,
        };
        let ni = self.io.nonce();
        let mut p = Vec::with_capacity(6);
        if let Some(spi) = rekey {
            p.push(Payload::Notify(Notify {
                protocol: ProtocolId::ESP,
                spi: spi.to_be_bytes().to_vec(),
                ntype: NotifyType::REKEY_SA,
                data: Vec::new(),
            }));
        }
        p.push(Payload::Sa(esp_offer(&sa.cfg.esp, child.spi_in, pfs)));
        p.push(Payload::Nonce(ni.clone()));
        if let Some(d) = &dh {
            p.push(Payload::Ke(KeyExchange {
                group: d.group().iana_id(),
                data: d.public_value().to_vec(),
            }));
        }
        p.push(Payload::TsI(wire_ts(&child.local_ts)));
        p.push(Payload::TsR(wire_ts(&child.remote_ts)));
        self.send_request(
            now,
            sa,
            ExchangeType::CREATE_CHILD_SA,
            p,
            Req::CreateChild {
                rekey,
                child,
                ni,
                dh,
            },
        );
    }

    pub(crate) fn start_task(&mut self, now: Instant, sa: &mut IkeSa, task: Task) {
        let peer = sa.peer;
        match task {
            Task::RekeyChild(spi) => {
                let Some(c) = sa
                    .child_by_in(spi)
                    .filter(|c| c.state == ChildState::Installed)
                else {
                    return;
                };
                c.state = ChildState::Rekeying;
                let ts = (c.sa.local_ts.clone(), c.sa.remote_ts.clone());
                self.io.log(
                    peer,
                    Level::Info,
                    "child_rekey",
                    format!("rekeying Child SA {spi:08x}"),
                );
                self.send_create_child(now, sa, Some(spi), ts);
            }
            Task::CreateChild => {
                // Only while the IKE SA has no Child SA that could carry the tunnel:
                // the peer may have negotiated one meanwhile.
                if sa.children.iter().any(|c| c.state != ChildState::Deleting) {
                    return;
                }
                let ts = configured_ts(&sa.cfg);
                self.io.log(
                    peer,
                    Level::Info,
                    "child_create",
                    "the IKE SA has no Child SA: negotiating one on it (CREATE_CHILD_SA)".into(),
                );
                self.send_create_child(now, sa, None, ts);
            }
            Task::RekeyIke => {
                if sa.retiring {
                    return;
                }
                let mut new_spi = self.new_ike_spi();
                while new_spi == sa.our_spi() {
                    new_spi = self.new_ike_spi();
                }
                let Ok(dh) = self.io.dh(sa.cfg.ike.dh) else {
                    return;
                };
                let ni = self.io.nonce();
                let p = vec![
                    Payload::Sa(ike_offer(&sa.cfg.ike, Some(new_spi))),
                    Payload::Nonce(ni.clone()),
                    Payload::Ke(KeyExchange {
                        group: dh.group().iana_id(),
                        data: dh.public_value().to_vec(),
                    }),
                ];
                self.io
                    .log(peer, Level::Info, "ike_rekey", "rekeying the IKE SA".into());
                self.send_request(
                    now,
                    sa,
                    ExchangeType::CREATE_CHILD_SA,
                    p,
                    Req::RekeyIke { new_spi, ni, dh },
                );
            }
            Task::DeleteChildren(spis) => {
                for s in &spis {
                    if let Some(c) = sa.child_by_in(*s) {
                        c.state = ChildState::Deleting;
                    }
                }
                if spis.is_empty() {
                    return;
                }
                self.io.log(
                    peer,
                    Level::Info,
                    "child_delete",
                    format!("deleting Child SA {}", spis_hex(&spis)),
                );
                self.send_request(
                    now,
                    sa,
                    ExchangeType::INFORMATIONAL,
                    vec![Payload::Delete(Delete::esp(&spis))],
                    Req::DeleteChildren(spis),
                );
            }
            Task::DeleteIke => {
                self.send_request(
                    now,
                    sa,
                    ExchangeType::INFORMATIONAL,
                    vec![Payload::Delete(Delete::ike())],
                    Req::DeleteIke,
                );
            }
            Task::Dpd => {
                self.io
                    .log(peer, Level::Debug, "dpd", "sending liveness check".into());
                self.send_request(now, sa, ExchangeType::INFORMATIONAL, Vec::new(), Req::Dpd);
            }
        }
    }

    pub(crate) fn handle_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: Message,
    ) {
        let h = msg.header;
        let Some(p) = &sa.pending else {
            self.io.stats.unexpected += 1;
            return;
        };
        if p.msg_id != h.message_id || p.exchange != h.exchange {
            self.io.stats.unexpected += 1;
            return;
        }
        if h.exchange == ExchangeType::IKE_SA_INIT {
            self.init_response(now, sa, local, remote, data, msg);
            return;
        }
        let Some(Payload::Sk(enc)) = msg.payloads.last() else {
            self.io.stats.malformed += 1;
            return;
        };
        let Some(sk) = sa.sk() else { return };
        let inner = match sk.open(data, enc) {
            Ok(p) => p,
            Err(SkError::Integrity) => {
                self.io.stats.integrity_failures += 1;
                return;
            }
            Err(SkError::Decode(_)) => {
                self.io.stats.malformed += 1;
                return;
            }
        };
        if ExchangeDh::waits(&sa.exchange_dh, h.message_id, true) {
            // Its first copy waits for its shared secret (`offload.rs`).
            self.io.stats.unexpected += 1;
            return;
        }
        let Some(pending) = sa.pending.take() else {
            return;
        };
        let shared = match response_key(&pending.kind, &inner) {
            Some((key, theirs)) => {
                let dgram = (local, remote, data);
                match self.response_secret(sa, h.message_id, key, theirs, dgram) {
                    Some(s) => Some(s),
                    None => {
                        // Offloaded: handled again when the secret is back.
                        sa.pending = Some(pending);
                        return;
                    }
                }
            }
            None => None,
        };
        sa.last_rx = now;
        self.update_addresses(sa, local, remote);
        match pending.kind {
            Req::Auth => self.auth_response(now, sa, inner),
            Req::CreateChild {
                rekey,
                child,
                ni,
                dh,
            } => {
                let ours = dh.map(|d| (d, shared));
                self.create_child_response(now, sa, inner, rekey, child, ni, ours)
            }
            Req::RekeyIke { new_spi, ni, dh } => {
                self.rekey_ike_response(now, sa, inner, new_spi, ni, dh, shared)
            }
            Req::DeleteChildren(spis) => {
                for s in spis {
                    self.io.child_spis.remove(&s);
                    if let Some(pos) = sa.children.iter().position(|c| c.sa.spi_in == s) {
                        let c = sa.children.remove(pos);
                        if let Some(peer) = sa.peer {
                            self.io.event(Event::ChildSaDeleted {
                                peer,
                                spi_in: c.sa.spi_in,
                                spi_out: c.sa.spi_out,
                            });
                        }
                    }
                }
            }
            Req::DeleteIke => {
                let reason = if sa.retiring {
                    DeleteReason::Rekeyed
                } else {
                    DeleteReason::LocalRequest
                };
                self.remove_sa(sa, reason);
            }
            Req::Dpd | Req::Notify | Req::Init => {}
        }
        if !sa.dead {
            self.next_task(now, sa);
        }
    }

    /// `dh`: with PFS, our key pair and the shared secret if it was computed already.
    #[allow(clippy::too_many_arguments)]
    fn create_child_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        inner: Vec<Payload>,
        rekey: Option<u32>,
        req: ChildRequest,
        ni: Vec<u8>,
        dh: Option<(DhPrivate, Option<DhResult>)>,
    ) {
        let peer = sa.peer;
        let lost = rekey.is_some() && sa.lost_rekey.take() == rekey;
        if let Some(n) = inner.iter().find_map(error_notify) {
            self.io.child_spis.remove(&req.spi_in);
            let ntype = n.ntype;
            let old = rekey.and_then(|o| sa.child_by_in(o));
            let collided = old.as_ref().is_some_and(|c| c.collision.is_some());
            if let Some(c) = old {
                if c.collision.take().is_some() {
                    // The peer's simultaneous rekey is the one that survives.
                    c.state = ChildState::Rekeyed;
                } else if c.state == ChildState::Rekeying {
                    c.state = ChildState::Installed;
                }
            }
            match ntype {
                NotifyType::TEMPORARY_FAILURE if !collided => {
                    // RFC 7296 §2.25: retry after a short random delay.
                    let delay = Duration::from_millis(2000 + u64::from(self.io.u32() % 4000));
                    sa.retry_at = Some(now + delay);
                    sa.tasks
                        .push_front(rekey.map_or(Task::CreateChild, Task::RekeyChild));
                    self.io.log(
                        peer,
                        Level::Info,
                        "temporary_failure",
                        format!(
                            "peer is busy (TEMPORARY_FAILURE); retrying the {}",
                            if rekey.is_some() { "rekey" } else { "Child SA" }
                        ),
                    );
                }
                NotifyType::TEMPORARY_FAILURE => {}
                NotifyType::CHILD_SA_NOT_FOUND => {
                    if let Some(pos) =
                        rekey.and_then(|o| sa.children.iter().position(|c| c.sa.spi_in == o))
                    {
                        let c = sa.children.remove(pos);
                        self.io.child_spis.remove(&c.sa.spi_in);
                        if let Some(peer) = peer {
                            self.io.event(Event::ChildSaDeleted {
                                peer,
                                spi_in: c.sa.spi_in,
                                spi_out: c.sa.spi_out,
                            });
                        }
                    }
                }
                NotifyType::INVALID_KE_PAYLOAD => {
                    let g = <[u8; 2]>::try_from(n.data.as_slice())
                        .map(u16::from_be_bytes)
                        .map_or_else(|_| "?".into(), group_name);
                    let ours = sa.cfg.esp.pfs.map_or("none", |g| g.name());
                    self.io.fail(peer, Phase::Phase2, format!("peer requires PFS group {g} (INVALID_KE_PAYLOAD); this tunnel uses {ours}"));
                }
                NotifyType::NO_PROPOSAL_CHOSEN if rekey.is_some() && sa.cfg.esp.pfs.is_some() => {
                    // The same algorithms without a DH group were accepted for the
                    // Child SA this one replaces (IKE_AUTH carries no KE, RFC 7296
                    // §1.2): what the peer refuses is our PFS group.
                    let reason = format!(
                        "{}: the Child SA being rekeyed has the same algorithms without \
                         PFS, so the peer does not use PFS {}; set ipsec.pfs as on the \
                         peer, or the Child SA expires at the end of its lifetime",
                        child_refusal(NotifyType::NO_PROPOSAL_CHOSEN, &sa.cfg),
                        sa.cfg.esp.pfs.map_or("", |g| g.name()),
                    );
                    self.io.fail(peer, Phase::Phase2, reason);
                }
                other => self
                    .io
                    .fail(peer, Phase::Phase2, child_refusal(other, &sa.cfg)),
            }
            return;
        }
        let Some(nr) = find_nonce(&inner).map(<[u8]>::to_vec) else {
            self.io.stats.malformed += 1;
            return;
        };
        match self.child_initiator(sa, &inner, &req, &ni, &nr, dh) {
            Err(reason) => {
                self.io.fail(peer, Phase::Phase2, reason);
                if let Some(c) = rekey.and_then(|o| sa.child_by_in(o)) {
                    c.state = ChildState::Installed;
                }
                sa.tasks.push_back(Task::DeleteChildren(vec![req.spi_in]));
            }
            Ok(child) => {
                let new_in = child.spi_in;
                self.child_established(now, sa, child, rekey, true);
                if lost {
                    // The answer came after the peer's rekey of the same Child SA won
                    // and the peer deleted it (its answer to our rekey, which told us of
                    // the collision, came late or was lost).
                    self.io.log(
                        peer,
                        Level::Info,
                        "rekey_collision",
                        format!(
                            "simultaneous rekey: the peer's survived; deleting our redundant \
                             Child SA {new_in:08x}"
                        ),
                    );
                    sa.tasks.push_back(Task::DeleteChildren(vec![new_in]));
                    return;
                }
                let Some(old) = rekey.and_then(|o| sa.child_by_in(o)) else {
                    return;
                };
                let old_in = old.sa.spi_in;
                old.state = ChildState::Rekeyed;
                old.rekey_at = None;
                match old.collision.take() {
                    // RFC 7296 §2.8.1: the SA created with the lowest nonce is redundant
                    // and is deleted by the peer that initiated it.
                    Some((theirs, _)) if min_nonce(&ni, &nr) < theirs => {
                        self.io.log(peer, Level::Info, "rekey_collision", format!("simultaneous rekey: our Child SA {new_in:08x} is redundant; deleting it"));
                        sa.tasks.push_back(Task::DeleteChildren(vec![new_in]));
                    }
                    Some(_) => {
                        self.io.log(
                            peer,
                            Level::Info,
                            "rekey_collision",
                            format!("simultaneous rekey: ours wins; deleting {old_in:08x}"),
                        );
                        sa.tasks.push_back(Task::DeleteChildren(vec![old_in]));
                    }
                    None => sa.tasks.push_back(Task::DeleteChildren(vec![old_in])),
                }
            }
        }
    }

    /// `ready`: the shared secret, if it was computed already.
    #[allow(clippy::too_many_arguments)]
    fn rekey_ike_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        inner: Vec<Payload>,
        new_spi: u64,
        ni: Vec<u8>,
        dh: DhPrivate,
        ready: Option<DhResult>,
    ) {
        let peer = sa.peer;
        if let Some(n) = inner.iter().find_map(error_notify) {
            if n.ntype == NotifyType::TEMPORARY_FAILURE && sa.rekeyed_to.is_none() {
                self.io.log(
                    peer,
                    Level::Info,
                    "temporary_failure",
                    "peer is busy (TEMPORARY_FAILURE); retrying the IKE SA rekey".into(),
                );
                sa.retry_at =
                    Some(now + Duration::from_millis(2000 + u64::from(self.io.u32() % 4000)));
                sa.tasks.push_front(Task::RekeyIke);
            } else if n.ntype != NotifyType::TEMPORARY_FAILURE {
                self.io.fail(
                    peer,
                    Phase::Phase1,
                    format!("IKE SA rekey refused by peer ({})", notify_name(n.ntype)),
                );
            }
            return;
        }
        let (Some(sa_p), Some(ke), Some(nr)) =
            (find_sa(&inner), find_ke(&inner), find_nonce(&inner))
        else {
            self.io.stats.malformed += 1;
            return;
        };
        let peer_spi = check_ike_answer(sa_p, &sa.cfg.ike)
            .and_then(|s| <[u8; 8]>::try_from(s.as_slice()).ok())
            .map(u64::from_be_bytes);
        let Some(peer_spi) = peer_spi.filter(|s| *s != 0) else {
            self.io.fail(
                peer,
                Phase::Phase1,
                format!(
                    "peer chose {} to rekey the IKE SA, which we did not offer",
                    describe(sa_p)
                ),
            );
            return;
        };
        let shared = match ready {
            Some(s) => s,
            None => dh.shared_secret(&ke.data),
        };
        let Ok(shared) = shared.map_err(|_| ()).and_then(|s| {
            if ke.group == dh.group().iana_id() {
                Ok(s)
            } else {
                Err(())
            }
        }) else {
            self.io.fail(
                peer,
                Phase::Phase1,
                "peer's KE payload for the IKE SA rekey is invalid".into(),
            );
            return;
        };
        let Some(sk_d) = sa.keys.as_ref().map(|k| k.sk_d.clone()) else {
            return;
        };
        let mut new = IkeSa::new(
            sa.cfg.clone(),
            peer,
            true,
            new_spi,
            peer_spi,
            sa.local,
            sa.remote,
            State::Established,
            now,
        );
        new.nat_local = sa.nat_local;
        new.nat_remote = sa.nat_remote;
        new.established_at = Some(now);
        if !self.set_ike_keys(
            &mut new,
            Some((sa.cfg.ike.prf(), sk_d.as_slice())),
            &shared,
            &ni,
            nr,
        ) {
            return;
        }
        self.arm_ike_timers(now, &mut new);
        let redundant = sa
            .ike_collision
            .as_ref()
            .is_some_and(|(theirs, _)| min_nonce(&ni, nr) < *theirs);
        if redundant {
            // RFC 7296 §2.8.1: ours has the lowest nonce; the peer's SA survives and the
            // peer deletes the old one.
            self.io.log(
                peer,
                Level::Info,
                "rekey_collision",
                "simultaneous IKE SA rekey: ours is redundant; deleting it".into(),
            );
            new.retiring = true;
            new.tasks.push_back(Task::DeleteIke);
            self.next_task(now, &mut new);
            self.sas.insert(new_spi, new);
            return;
        }
        self.sas.insert(new_spi, new);
        if let Some((_, theirs)) = sa.ike_collision.take() {
            self.collision_lost(now, theirs);
        }
        self.transfer_children(now, sa, new_spi);
        sa.retiring = true;
        sa.rekeyed_to = None;
        sa.tasks.clear();
        sa.tasks.push_back(Task::DeleteIke);
    }

    /// Simultaneous IKE SA rekey, ours survives: the IKE SA the peer's rekey made
    /// (`spi`, ours) is redundant and the peer deletes it (RFC 7296 §2.8.1). Marked as
    /// the duplicate it is, so that its deletion is not taken for the tunnel's; should
    /// the peer's Delete never come (its answer to our rekey was lost, so it never
    /// learned of the collision), we delete it ourselves after a while.
    fn collision_lost(&mut self, now: Instant, spi: u64) {
        let Some(mut theirs) = self.sas.get_mut(&spi) else {
            return;
        };
        theirs.duplicate = true;
        theirs.retiring = true;
        theirs.rekey_at = None;
        theirs.retire_at = Some(now + self.cfg.retransmit_base * 8);
        let (i, r, peer) = (theirs.spi_i, theirs.spi_r, theirs.peer);
        drop(theirs);
        self.io.log(
            peer,
            Level::Info,
            "rekey_collision",
            format!(
                "simultaneous IKE SA rekey: ours survives; the peer deletes its redundant \
                 IKE SA {i:016x}_{r:016x}"
            ),
        );
    }
}

// ---- helpers -------------------------------------------------------------------------

/// Our SA answer, narrowed TSi and TSr, and the Child SA.
type ChildOffer = (SaPayload, Vec<TsRange>, Vec<TsRange>, ChildSa);

/// Our key pair and the peer's public value when its answer to our CREATE_CHILD_SA needs
/// the shared secret: it carries a KE payload of our group and no error.
fn response_key<'a>(kind: &'a Req, inner: &'a [Payload]) -> Option<(&'a DhPrivate, &'a [u8])> {
    let key = match kind {
        Req::CreateChild { dh: Some(d), .. } | Req::RekeyIke { dh: d, .. } => d,
        _ => return None,
    };
    if inner.iter().any(|p| error_notify(p).is_some()) {
        return None;
    }
    let ke = find_ke(inner).filter(|k| k.group == key.group().iana_id())?;
    Some((key, &ke.data))
}

fn notify(t: NotifyType) -> Payload {
    Payload::Notify(Notify::new(t, Vec::new()))
}

fn notify_n(t: NotifyType) -> Notify {
    Notify::new(t, Vec::new())
}

fn find_sa(p: &[Payload]) -> Option<&SaPayload> {
    p.iter().find_map(|x| {
        if let Payload::Sa(s) = x {
            Some(s)
        } else {
            None
        }
    })
}

fn find_ke(p: &[Payload]) -> Option<&KeyExchange> {
    p.iter().find_map(|x| {
        if let Payload::Ke(s) = x {
            Some(s)
        } else {
            None
        }
    })
}

fn find_nonce(p: &[Payload]) -> Option<&[u8]> {
    p.iter().find_map(|x| {
        if let Payload::Nonce(s) = x {
            Some(s.as_slice())
        } else {
            None
        }
    })
}

fn find_idi(p: &[Payload]) -> Option<&Identification> {
    p.iter().find_map(|x| {
        if let Payload::IdI(s) = x {
            Some(s)
        } else {
            None
        }
    })
}

fn find_idr(p: &[Payload]) -> Option<&Identification> {
    p.iter().find_map(|x| {
        if let Payload::IdR(s) = x {
            Some(s)
        } else {
            None
        }
    })
}

fn find_auth(p: &[Payload]) -> Option<&Auth> {
    p.iter().find_map(|x| {
        if let Payload::Auth(s) = x {
            Some(s)
        } else {
            None
        }
    })
}

fn find_tsi(p: &[Payload]) -> Option<&[TrafficSelector]> {
    p.iter().find_map(|x| {
        if let Payload::TsI(s) = x {
            Some(s.as_slice())
        } else {
            None
        }
    })
}

fn find_tsr(p: &[Payload]) -> Option<&[TrafficSelector]> {
    p.iter().find_map(|x| {
        if let Payload::TsR(s) = x {
            Some(s.as_slice())
        } else {
            None
        }
    })
}

fn notifies(p: &[Payload], t: NotifyType) -> impl Iterator<Item = &Notify> {
    p.iter().filter_map(move |x| {
        if let Payload::Notify(n) = x {
            (n.ntype == t).then_some(n)
        } else {
            None
        }
    })
}

fn find_notify(p: &[Payload], t: NotifyType) -> Option<&Notify> {
    notifies(p, t).next()
}

fn error_notify(p: &Payload) -> Option<&Notify> {
    if let Payload::Notify(n) = p {
        n.ntype.is_error().then_some(n)
    } else {
        None
    }
}

fn has_nat_d(p: &[Payload]) -> bool {
    find_notify(p, NotifyType::NAT_DETECTION_SOURCE_IP).is_some()
        || find_notify(p, NotifyType::NAT_DETECTION_DESTINATION_IP).is_some()
}

fn wire_ts(list: &[TsRange]) -> Vec<TrafficSelector> {
    list.iter().map(|t| t.to_wire()).collect()
}

fn wire_ts_string(list: &[TrafficSelector]) -> String {
    let v: Vec<TsRange> = list.iter().filter_map(TsRange::from_wire).collect();
    if v.is_empty() {
        "nothing".into()
    } else {
        list_to_string(&v)
    }
}

fn group_name(id: u16) -> String {
    crypto::DhGroup::from_iana(id).map_or_else(|| format!("{id}"), |g| g.name().to_string())
}

fn min_nonce(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.min(b).to_vec()
}

fn nat_note(sa: &IkeSa) -> String {
    match (sa.nat_local, sa.nat_remote) {
        (false, false) => String::new(),
        (true, false) => ", NAT detected (we are behind it)".into(),
        (false, true) => ", NAT detected (peer is behind it)".into(),
        (true, true) => ", NAT detected on both sides".into(),
    }
}

fn child_refusal(n: NotifyType, cfg: &PeerConfig) -> String {
    match n {
        NotifyType::NO_PROPOSAL_CHOSEN => format!(
            "peer rejected our proposal {} (NO_PROPOSAL_CHOSEN)",
            cfg.esp.name()
        ),
        NotifyType::TS_UNACCEPTABLE => {
            let l: Vec<String> = cfg.local_ts.iter().map(ToString::to_string).collect();
            let r: Vec<String> = cfg.remote_ts.iter().map(ToString::to_string).collect();
            format!(
                "traffic selectors unacceptable (TS_UNACCEPTABLE): we proposed {} === {}",
                l.join(" "),
                r.join(" ")
            )
        }
        other => format!("peer refused the Child SA ({})", notify_name(other)),
    }
}

/// Compares MACs in constant time.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The reason for a peer's AUTHENTICATION_FAILED: the pre-shared key, or an identity of
/// ours the peer does not expect (RFC 7296 §2.21.2 does not tell them apart).
/// We name the peer's identity too (IDr, RFC 7296 §3.5), which a peer checks against its
/// own. `nat`: the peer is behind a NAT (RFC 7296 §2.23).
fn rejected_auth(what: &str, cfg: &PeerConfig, nat: bool) -> String {
    format!(
        "authentication failed — the peer {what}: check the pre-shared key, that the peer \
         expects our identity {} (ike.local_id here, the remote ID on the peer), and that \
         its own identity is {} (ike.remote_id here, the local ID on the peer){}",
        cfg.local_id,
        cfg.remote_id,
        if nat {
            "; the peer is behind a NAT, and a device there identifies itself by its \
             private address unless told otherwise"
        } else {
            ""
        }
    )
}

/// The reason for a peer's AUTH payload that is not a pre-shared key MIC: the peer is
/// set up for certificates (or no authentication), which no key here can match.
/// RFC 7296 §3.8; RFC 4754 §7 (ECDSA), RFC 7427 §3 (digital signature), RFC 7619 §3
/// (NULL).
fn other_auth_method(method: AuthMethod, who: &str) -> String {
    let name = match method.0 {
        1 => "RSA signatures (a certificate)".to_string(),
        3 => "DSS signatures (a certificate)".to_string(),
        9..=11 => "ECDSA signatures (a certificate)".to_string(),
        13 => "no authentication (NULL)".to_string(),
        14 => "digital signatures (a certificate)".to_string(),
        m => format!("authentication method {m}"),
    };
    format!(
        "authentication failed — the {who} authenticates with {name}; vpngw authenticates \
         with the pre-shared key alone: set the peer's authentication to a pre-shared key \
         (strongSwan: auth = psk in local and remote)"
    )
}

/// The configured subnets as traffic selectors (ours, the peer's).
fn configured_ts(cfg: &PeerConfig) -> (Vec<TsRange>, Vec<TsRange>) {
    let ranges = |v: &[crate::config::Ipv4Cidr]| {
        v.iter()
            .copied()
            .map(TsRange::from_cidr)
            .collect::<Vec<_>>()
    };
    (ranges(&cfg.local_ts), ranges(&cfg.remote_ts))
}
