//! The IKEv1 engine: Main and Aggressive Mode with pre-shared keys (RFC 2409 §5),
//! Quick Mode (§5.5), informational exchanges (§5.7), DPD (RFC 3706) and NAT-T
//! (RFC 3947), both roles. It shares the endpoint's peers, randomness, queues and
//! counters with the IKEv2 engine and reports through the same events.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crypto::{Cipher, Integ};
use zeroize::Zeroizing;

use crate::DhJob;
use crate::config::{Identity, PeerConfig, PeerId, V1Mode};
use crate::endpoint::{EndpointConfig, Io, spis_hex};
use crate::event::{ChildSa, DeleteReason, Event, IkeAlgorithms, Level, Phase};
use crate::keys::Key;
use crate::sa::{Child, ChildState, soft_lifetime};
use crate::ts::{TsRange, list_to_string};
use crate::v1::keys::{P1Keys, cbc_open, cbc_seal, last_block, nat_d, phase1_iv, phase2_iv};
use crate::v1::proposal::{
    esp_check_answer, esp_choose, esp_offer, p1_check_answer, p1_choose, p1_offer,
};
use crate::v1::sa::{
    AmNext, Dpd, Keying, P1Sa, P1State, Qm, QmAccepted, QmAnswer, QmState, QmTerms, Retx, linger,
    rekeyed_grace,
};
use crate::v1::wire::{
    Attr, Chain, Delete, Exchange, HEADER_LEN, Header, Id, LIFE_SECONDS, Notify, NotifyType,
    PayloadType, RawPayload, SaPayload, cookies, decode_attrs, encode_attrs, encode_chain,
    encode_plain, flags, id_type, p2, proto, vid,
};

/// What the engine borrows from the endpoint for one call.
pub(crate) struct Cx<'a> {
    pub io: &'a mut Io,
    pub ecfg: &'a EndpointConfig,
    pub peers: &'a BTreeMap<PeerId, std::sync::Arc<PeerConfig>>,
    /// IKEv2's half-open responder SAs: they share
    /// [`EndpointConfig::half_open_limit`] with ours.
    pub v2_half_open: usize,
    /// Peers by version and address.
    pub index: &'a crate::table::PeerIndex,
    /// Our initiations in flight per address, shared with IKEv2
    /// ([`EndpointConfig::max_initiating`]).
    pub pacing: &'a mut crate::table::Pacing,
}

/// The IKEv1 SAs of an endpoint.
#[derive(Default)]
pub(crate) struct Engine {
    /// ISAKMP SAs by our cookie. Boxed: an SA is 1.4 KiB and a map node holds eleven,
    /// most of a node's slots empty or moving as SAs come and go.
    pub sas: BTreeMap<u64, Box<P1Sa>>,
    /// Responder: (peer address, CKY-I) → our cookie, to answer retransmitted first
    /// messages.
    pub half_open: HashMap<(SocketAddr, u64), u64>,
    /// Responder ISAKMP SAs (our cookies) whose Main or Aggressive Mode has not
    /// finished: what [`EndpointConfig::half_open_limit`] bounds. Kept by `put_back`,
    /// through which every SA goes back into `sas`.
    negotiating: HashMap<u64, IpAddr>,
    /// How many of `negotiating` came from each address
    /// ([`EndpointConfig::half_open_per_address`]).
    negotiating_from: HashMap<IpAddr, usize>,
    /// `sas` by peer, and each SA's entry there: lookups by peer need not scan every
    /// SA (the node asks per tunnel, thousands of times a status tick at scale).
    /// Kept by `put_back`; an SA out of `sas` while it is handled keeps its entry.
    by_peer: BTreeSet<(PeerId, u64)>,
    peer_of: HashMap<u64, PeerId>,
    /// Each SA's next timer when it was last put back, soonest first, and each SA's
    /// entry there. A timer may only be indexed early, never late: an SA changed in
    /// place (`rekey_ike`, an heir's Child SAs) is indexed again; one whose timer
    /// moved later (`child_activity`) is looked at early and put back.
    timers: BTreeSet<(Instant, u64)>,
    timer_of: HashMap<u64, Instant>,
}

const MAX_SEEN_INFO: usize = 32;

/// How long an ISAKMP SA we replaced lives on before we delete it (see `supersede`).
pub(crate) const REPLACED_SA_GRACE: Duration = Duration::from_secs(5);

impl Engine {
    // ---- commands --------------------------------------------------------------------

    /// Whether the peer has an ISAKMP SA that is up or being negotiated.
    pub fn active(&self, peer: PeerId) -> bool {
        self.of_peer(peer).any(|(_, s)| !s.dead && !s.retiring)
    }

    /// Starts Main or Aggressive Mode with the peer at `remote`.
    pub fn initiate(
        &mut self,
        cx: &mut Cx<'_>,
        now: Instant,
        peer: PeerId,
        cfg: Arc<PeerConfig>,
        remote: SocketAddr,
    ) -> Result<(), crypto::Error> {
        let Some(offer) = p1_offer(&cfg.ike, cfg.ike_lifetime) else {
            cx.io.fail(
                Some(peer),
                Phase::Phase1,
                format!(
                    "IKEv1 protects its own messages with CBC ciphers only: ike.encryption {} \
                     cannot be used with ike.version ikev1 (choose aes, aes192, aes256, 3des or \
                     des; AES-GCM is fine for ipsec.encryption)",
                    cfg.ike.encr.name()
                ),
            );
            return Ok(());
        };
        let cky_i = self.new_cookie(cx);
        let mode = cfg.v1_mode;
        let local = cfg.local;
        let state = match mode {
            V1Mode::Main => P1State::MmI2,
            V1Mode::Aggressive => P1State::AmI2,
        };
        let mut sa = P1Sa::new(peer, cfg, true, mode, cky_i, 0, local, remote, state, now);
        // Holds a slot until Main or Aggressive Mode ends (`put_back`).
        cx.pacing.started(remote.ip());
        sa.paced = Some(remote.ip());
        sa.send_initial_contact = !self.of_peer(peer).any(|(_, s)| s.established() && !s.dead);
        let sa_body = offer.encode();
        sa.hs.sai_b = sa_body.clone();
        let mut p = vec![RawPayload::new(PayloadType::SA, sa_body)];
        if mode == V1Mode::Aggressive {
            let dh = cx.io.dh(sa.suite.2)?;
            sa.hs.gxi = dh.public_value().to_vec();
            sa.hs.ni = nonce(cx);
            sa.hs.dh = Some(Box::new(dh));
            p.push(RawPayload::new(PayloadType::KE, sa.hs.gxi.clone()));
            p.push(RawPayload::new(PayloadType::NONCE, sa.hs.ni.clone()));
            p.push(RawPayload::new(
                PayloadType::ID,
                v1_id(&sa.cfg.local_id).encode(),
            ));
        }
        p.extend(vendor_ids(&sa.cfg));
        cx.io.log(
            Some(peer),
            Level::Info,
            "phase1_start",
            format!(
                "initiating IKEv1 {} {local} -> {remote}, proposing {}",
                mode_name(mode),
                sa.cfg.ike.name()
            ),
        );
        send_p1(cx, now, &mut sa, p, false, Some("message 1"));
        self.put_back(cx, Box::new(sa));
        Ok(())
    }

    /// Deletes every SA of a peer, telling the peer; returns whether there were any.
    pub fn delete_peer(&mut self, cx: &mut Cx<'_>, peer: PeerId) -> bool {
        let ours: Vec<u64> = self.of_peer(peer).map(|(k, _)| k).collect();
        let any = !ours.is_empty();
        for k in ours {
            if let Some(mut sa) = self.sas.remove(&k) {
                if sa.established() {
                    let spis: Vec<u32> = sa.children.iter().map(|c| c.sa.spi_in).collect();
                    if !spis.is_empty() {
                        send_info(
                            cx,
                            &mut sa,
                            vec![RawPayload::new(PayloadType::D, Delete::esp(&spis).encode())],
                        );
                    }
                    send_delete_isakmp(cx, &mut sa);
                }
                remove_sa(cx, &mut sa, DeleteReason::LocalRequest);
                self.put_back(cx, sa);
            }
        }
        any
    }

    pub fn ike_sas(&self, peer: PeerId) -> Vec<(u64, u64)> {
        self.of_peer(peer)
            .filter(|(_, s)| s.established() && !s.retiring && !s.dead)
            .map(|(_, s)| (s.cky_i, s.cky_r))
            .collect()
    }

    pub fn child_sas(&self, peer: PeerId) -> Vec<ChildSa> {
        self.children(peer, |_| true)
    }

    /// The Child SAs of `peer` for which `keep` holds.
    pub(crate) fn children(&self, peer: PeerId, keep: impl Fn(&Child) -> bool) -> Vec<ChildSa> {
        self.of_peer(peer)
            .filter(|(_, s)| !s.dead)
            .flat_map(|(_, s)| s.children.iter().filter(|c| keep(c)).map(|c| c.sa.clone()))
            .collect()
    }

    /// Starts a quick mode rekey of every installed Child SA; false without an SA.
    pub fn rekey_child(&mut self, cx: &mut Cx<'_>, now: Instant, peer: PeerId) -> bool {
        let Some(k) = self.established_cookie(peer) else {
            return false;
        };
        if let Some(mut sa) = self.sas.remove(&k) {
            let spis: Vec<u32> = sa
                .children
                .iter()
                .filter(|c| c.state == ChildState::Installed)
                .map(|c| c.sa.spi_in)
                .collect();
            for s in spis {
                start_qm(cx, now, &mut sa, Some(s));
            }
            self.put_back(cx, sa);
        }
        true
    }

    /// Starts a Quick Mode for the tunnel's Child SA on the established ISAKMP SA when
    /// it carries none and none is being negotiated on it (the peer deleted the last
    /// one); false without an established ISAKMP SA.
    pub fn create_child(&mut self, cx: &mut Cx<'_>, now: Instant, peer: PeerId) -> bool {
        let Some(k) = self.established_cookie(peer) else {
            return false;
        };
        if let Some(mut sa) = self.sas.remove(&k) {
            let has_child = sa
                .children
                .iter()
                .any(|c| matches!(c.state, ChildState::Installed | ChildState::Rekeying));
            let negotiating = sa.qms.values().any(|q| !matches!(q.state, QmState::Done));
            if !has_child && !negotiating {
                cx.io.log(
                    Some(peer),
                    Level::Info,
                    "child_create",
                    "the ISAKMP SA has no IPsec SA: negotiating one on it (Quick Mode)".into(),
                );
                start_qm(cx, now, &mut sa, None);
            }
            self.put_back(cx, sa);
        }
        true
    }

    /// Negotiates a replacement ISAKMP SA now; false without an SA.
    pub fn rekey_ike(&mut self, cx: &mut Cx<'_>, now: Instant, peer: PeerId) -> bool {
        let Some(k) = self.established_cookie(peer) else {
            return false;
        };
        if let Some(sa) = self.sas.get_mut(&k) {
            sa.want_rekey = true;
            let t = sa.next_timeout();
            self.index_timer(k, t);
        }
        self.handle_timeout(cx, now);
        true
    }

    pub fn child_activity(&mut self, now: Instant, peer: PeerId) {
        // Timers only move later here (DPD counts from `last_rx`): no re-indexing.
        let keys = self.by_peer.range((peer, 0)..=(peer, u64::MAX));
        for (_, k) in keys {
            if let Some(sa) = self.sas.get_mut(k)
                && sa.established()
            {
                sa.last_rx = sa.last_rx.max(now);
            }
        }
    }

    // ---- inputs ----------------------------------------------------------------------

    pub fn handle_datagram(
        &mut self,
        cx: &mut Cx<'_>,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        let h = match Header::parse(data) {
            Ok(h) => h,
            Err(e) => {
                cx.io.stats.malformed += 1;
                tracing::debug!(%remote, error = %e, "dropping undecodable ISAKMP message");
                return;
            }
        };
        let Some(k) = self.lookup(&h) else {
            let first = (h.exchange == Exchange::MAIN || h.exchange == Exchange::AGGRESSIVE)
                && h.cky_r == 0
                && h.message_id == 0
                && !h.encrypted();
            if !first {
                cx.io.stats.unknown_spi += 1;
                return;
            }
            if let Some(k) = self.half_open.get(&(remote, h.cky_i)).copied() {
                // A retransmitted (or late) message 1 of an SA we already have.
                cx.io.stats.duplicate_requests += 1;
                if let Some(sa) = self.sas.get_mut(&k)
                    && sa.p1_last_rcvd.as_deref() == Some(data)
                    && resend_due(cx, now, &mut sa.p1_sent_at)
                    && let Some(b) = sa.p1_last_sent.clone()
                {
                    cx.io.send(sa.local, sa.remote, b);
                }
                return;
            }
            let total = self.negotiating.len() + cx.v2_half_open;
            let from = self
                .negotiating_from
                .get(&remote.ip())
                .copied()
                .unwrap_or(0);
            if total >= cx.ecfg.half_open_limit || from >= cx.ecfg.half_open_per_address {
                // IKEv1 has no stateless COOKIE exchange (RFC 2408 §2.5.3 cookies are
                // only echoed once the responder keeps state): past a limit, message
                // 1 is dropped and the initiator retransmits it later.
                let what = if h.exchange == Exchange::AGGRESSIVE {
                    "IKEv1 Aggressive Mode message 1"
                } else {
                    "IKEv1 Main Mode message 1"
                };
                cx.io
                    .half_open_limited(now, remote, what, total, Some(from));
                return;
            }
            self.new_responder(cx, now, local, remote, data, h);
            return;
        };
        let Some(mut sa) = self.sas.remove(&k) else {
            return;
        };
        let was_established = sa.established();
        let pending = self.note_replacement(&mut sa);
        let heir = self.borrow_children(&mut sa);
        on_message(cx, now, &mut sa, local, remote, data, &h);
        self.return_children(&mut sa, heir);
        self.park_children(cx, &mut sa, pending);
        if was_established && sa.last_rx == now && !sa.dead {
            // An authenticated message from the peer on this SA: it has the SA.
            sa.unconfirmed_since = None;
            self.heard_from(sa.peer, now);
        }
        let established = std::mem::take(&mut sa.just_established);
        let cookie = sa.our_cookie();
        self.put_back(cx, sa);
        if established {
            self.supersede(cx, now, cookie);
        }
    }

    /// Runs everything due at `now`.
    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>, now: Instant) {
        let due: Vec<u64> = self
            .timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, k)| *k)
            .collect();
        for k in due {
            let Some(mut sa) = self.sas.remove(&k) else {
                self.index_timer(k, None);
                continue;
            };
            if sa.next_timeout().is_none_or(|t| t > now) {
                // Indexed early (its timer moved later in place): not due yet.
                self.put_back(cx, sa);
                continue;
            }
            self.retire_due(cx, now, &mut sa);
            let pending = self.note_replacement(&mut sa);
            let heir = self.borrow_children(&mut sa);
            sa_timers(cx, now, &mut sa);
            self.return_children(&mut sa, heir);
            self.park_children(cx, &mut sa, pending);
            if std::mem::take(&mut sa.disowned) {
                self.disown(cx, now, &mut sa);
            }
            let rekey = std::mem::take(&mut sa.want_rekey) && !sa.dead && !sa.retiring;
            let (peer, cfg) = (sa.peer, sa.cfg.clone());
            self.put_back(cx, sa);
            if rekey {
                self.start_p1_rekey(cx, now, peer, cfg);
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let first = self.timers.first().map(|(t, _)| *t);
        debug_assert!(
            self.sas
                .values()
                .filter_map(|s| s.next_timeout())
                .min()
                .is_none_or(|t| first.is_some_and(|f| f <= t)),
            "an IKEv1 SA's timer is indexed late"
        );
        first
    }

    /// The peer's SAs (those in `sas`), by cookie.
    fn of_peer(&self, peer: PeerId) -> impl DoubleEndedIterator<Item = (u64, &P1Sa)> {
        self.by_peer
            .range((peer, 0)..=(peer, u64::MAX))
            .filter_map(|(_, k)| self.sas.get(k).map(|s| (*k, &**s)))
    }

    fn index_timer(&mut self, k: u64, t: Option<Instant>) {
        reindex(&mut self.timers, &mut self.timer_of, k, t);
    }

    fn index_peer(&mut self, k: u64, peer: Option<PeerId>) {
        reindex(&mut self.by_peer, &mut self.peer_of, k, peer);
    }

    // ---- internals -------------------------------------------------------------------

    fn lookup(&self, h: &Header) -> Option<u64> {
        if let Some(sa) = self.sas.get(&h.cky_i) {
            let waiting = matches!(sa.state, P1State::MmI2 | P1State::AmI2) && sa.cky_r == 0;
            if sa.initiator && (sa.cky_r == h.cky_r || waiting) {
                return Some(h.cky_i);
            }
        }
        match self.sas.get(&h.cky_r) {
            Some(sa) if !sa.initiator && sa.cky_i == h.cky_i && h.cky_r != 0 => Some(h.cky_r),
            _ => None,
        }
    }

    fn established_cookie(&self, peer: PeerId) -> Option<u64> {
        self.of_peer(peer)
            .filter(|(_, s)| s.established() && !s.retiring && !s.dead)
            .map(|(k, _)| k)
            .next_back()
    }

    fn new_cookie(&self, cx: &mut Cx<'_>) -> u64 {
        loop {
            let mut b = [0u8; 8];
            cx.io.rng.fill(&mut b);
            let c = u64::from_be_bytes(b);
            if c != 0 && !self.sas.contains_key(&c) {
                return c;
            }
        }
    }

    /// Responder SAs in Main or Aggressive Mode.
    pub fn half_open_len(&self) -> usize {
        self.negotiating.len()
    }

    /// Main or Aggressive Mode's offloaded shared secret for the SA with our cookie
    /// `done.spi`. Main Mode: the initiator sends message 5, the responder keys itself
    /// and returns a message 5 that came meanwhile. Aggressive Mode: the responder
    /// sends message 2, the initiator checks message 2 and sends message 3. A result
    /// for an SA that is gone, or for an earlier one with its cookie, is dropped.
    pub fn dh_done(
        &mut self,
        cx: &mut Cx<'_>,
        now: Instant,
        done: crate::DhDone,
    ) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        let Some(mut sa) = self.sas.remove(&done.spi) else {
            cx.io.stats.dh_stale += 1;
            return None;
        };
        if let Some(mid) = done.qm {
            let heir = self.borrow_children(&mut sa);
            qm_dh_done(cx, now, &mut sa, mid, done);
            self.return_children(&mut sa, heir);
            self.put_back(cx, sa);
            return None;
        }
        if sa.keying.as_ref().map(|k| k.ticket) != Some(done.ticket) {
            cx.io.stats.dh_stale += 1;
            self.put_back(cx, sa);
            return None;
        }
        let (held, am) = match sa.keying.take() {
            Some(k) => (k.held, k.am),
            None => (None, None),
        };
        match am {
            Some(AmNext::Answer(answer)) => match invalid_dh(&sa, done.shared) {
                Ok(shared) => am_answer(cx, now, &mut sa, &shared, answer),
                Err(f) => am_refuse(cx, now, &mut sa, f),
            },
            Some(AmNext::Check { id_b, hash_r }) => {
                sa.half_open_until = None;
                let r = invalid_dh(&sa, done.shared)
                    .and_then(|shared| am2_keyed(cx, now, &mut sa, &shared, &id_b, &hash_r));
                settle(cx, &mut sa, r);
            }
            None => {
                let r = invalid_dh(&sa, done.shared).and_then(|shared| {
                    if sa.initiator {
                        sa.half_open_until = None;
                        mm4_keyed(cx, now, &mut sa, &shared)
                    } else {
                        mm3_keyed(&mut sa, shared);
                        Ok(())
                    }
                });
                settle(cx, &mut sa, r);
            }
        }
        let held = held.filter(|_| !sa.dead);
        // An Aggressive Mode initiator is up with message 3: its Quick Mode starts
        // here, as after a datagram (`handle_datagram`).
        let established = std::mem::take(&mut sa.just_established);
        let cookie = sa.our_cookie();
        self.put_back(cx, sa);
        if established {
            self.supersede(cx, now, cookie);
        }
        held
    }

    /// Marks an established SA whose peer has a replacement ISAKMP SA in negotiation
    /// (`P1Sa::successor_pending`); returns that replacement.
    fn note_replacement(&self, sa: &mut P1Sa) -> Option<u64> {
        let pending = (sa.established() && !sa.retiring)
            .then(|| {
                self.of_peer(sa.peer)
                    .filter(|(_, s)| !s.dead && !s.established())
                    .map(|(k, _)| k)
                    .next_back()
            })
            .flatten();
        sa.successor_pending = pending.is_some();
        pending
    }

    /// `sa` went while its replacement `pending` was negotiated: its Child SAs wait on
    /// the replacement (`P1Sa::adopted`).
    fn park_children(&mut self, cx: &mut Cx<'_>, sa: &mut P1Sa, pending: Option<u64>) {
        sa.successor_pending = false;
        let Some(hk) = pending.filter(|_| sa.dead && !sa.children.is_empty()) else {
            return;
        };
        let Some(h) = self.sas.get_mut(&hk) else {
            return;
        };
        cx.io.log(
            Some(sa.peer),
            Level::Info,
            "ike_replaced_early",
            format!(
                "ISAKMP SA {:016x}_i {:016x}_r is gone while its replacement is negotiated; \
                 its Child SAs wait for the replacement",
                sa.cky_i, sa.cky_r
            ),
        );
        h.children.append(&mut sa.children);
        h.adopted = Some((sa.cky_i, sa.cky_r));
    }

    /// The peer was heard from on one of its ISAKMP SAs: that is a sign of life for
    /// DPD on the others too (RFC 3706 asks whether the peer is alive, not each SA).
    /// While a new SA is unconfirmed, the peer may still send everything on the old
    /// one, and the new one would otherwise declare it dead.
    fn heard_from(&mut self, peer: PeerId, now: Instant) {
        let keys: Vec<u64> = self
            .of_peer(peer)
            .filter(|(_, s)| s.established() && !s.dead)
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            if let Some(s) = self.sas.get_mut(&k) {
                s.last_rx = s.last_rx.max(now);
            }
        }
    }

    /// Whether the replaced SA `sa` may go now that its time has come: not while the
    /// peer may lack its successor (its last message lost, `P1Sa::unconfirmed_since`),
    /// for deleting it then leaves the peer with nothing to move its Child SAs to, so
    /// they go with it and the tunnel is down at the peer. It waits, asking the
    /// successor for a sign of life, until the peer uses the successor or this SA
    /// reaches its own end of life.
    fn retire_due(&mut self, cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa) {
        if !sa.retiring || sa.retire_at.is_none_or(|t| now < t) {
            return;
        }
        if sa.expire_at.is_some_and(|t| now >= t) {
            return;
        }
        let Some(hk) = self.established_cookie(sa.peer) else {
            return;
        };
        let Some(heir) = self.sas.get_mut(&hk) else {
            return;
        };
        if heir.unconfirmed_since.is_none() {
            return;
        }
        sa.retire_at = Some(now + REPLACED_SA_GRACE);
        if heir.dpd.is_none() && heir.peer_dpd && heir.cfg.dpd_interval.is_some() {
            start_dpd(cx, now, heir);
            let t = heir.next_timeout();
            self.index_timer(hk, t);
        }
    }

    /// `sa` replaced an ISAKMP SA that is still there, but the peer does not have `sa`
    /// (the last message of its Main or Aggressive Mode never arrived, and the peer
    /// gave up on it): the replaced SA takes its Child SAs back and carries the tunnel
    /// again, and a new replacement is negotiated soon. `sa` goes without a Delete,
    /// which the peer could not read.
    fn disown(&mut self, cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa) {
        let Some(ok) = self
            .of_peer(sa.peer)
            .filter(|(_, s)| s.established() && s.retiring && !s.dead)
            .map(|(k, _)| k)
            .next_back()
        else {
            return;
        };
        let Some(old) = self.sas.get_mut(&ok) else {
            return;
        };
        cx.io.log(
            Some(sa.peer),
            Level::Warn,
            "ike_rekey_lost",
            format!(
                "the peer never used ISAKMP SA {:016x}_i {:016x}_r (the last message of its {} \
                 was lost) but still uses {:016x}_i {:016x}_r: keeping that one and \
                 negotiating a replacement again",
                sa.cky_i,
                sa.cky_r,
                mode_name(sa.mode),
                old.cky_i,
                old.cky_r
            ),
        );
        old.children.append(&mut sa.children);
        old.retiring = false;
        old.retire_at = None;
        old.rekey_at = Some(now + REPLACED_SA_GRACE);
        cx.io.event(Event::IkeSaRekeyed {
            peer: sa.peer,
            old: (sa.cky_i, sa.cky_r),
            new: (old.cky_i, old.cky_r),
        });
        let t = old.next_timeout();
        self.index_timer(ok, t);
        remove_sa(cx, sa, DeleteReason::Rekeyed);
    }

    /// A replaced ISAKMP SA handed its Child SAs to its heir (`supersede`), but a Quick
    /// Mode in flight on it finishes on it (its keys come from this SA's SKEYID_d), with
    /// a datagram, a PFS result or a timeout, and the peer may delete Child SAs through
    /// it. While it handles one of these it holds the heir's Child SAs, so that a rekey
    /// finds the SA it replaces, a failed one puts it back, a crossing one is found
    /// redundant, and what it creates lives on with the heir instead of dying with this
    /// SA. Returns the heir, for [`Self::return_children`].
    fn borrow_children(&mut self, sa: &mut P1Sa) -> Option<u64> {
        let heir = sa
            .retiring
            .then(|| self.established_cookie(sa.peer))
            .flatten()?;
        let h = self.sas.get_mut(&heir)?;
        sa.children = std::mem::take(&mut h.children);
        Some(heir)
    }

    fn return_children(&mut self, sa: &mut P1Sa, heir: Option<u64>) {
        if let Some(hk) = heir
            && let Some(h) = self.sas.get_mut(&hk)
        {
            h.children = std::mem::take(&mut sa.children);
            // Child SAs created or rekeyed meanwhile have timers of their own.
            let t = h.next_timeout();
            self.index_timer(hk, t);
        }
    }

    fn put_back(&mut self, cx: &mut Cx<'_>, mut sa: Box<P1Sa>) {
        if sa.retiring && !sa.dead && !sa.children.is_empty() {
            self.hand_over_children(&mut sa);
        }
        if sa.qms.is_empty() {
            // A BTreeMap emptied by `remove` keeps its leaf: 11 Quick Mode slots,
            // 2.7 KiB per ISAKMP SA for as long as it lives.
            sa.qms = BTreeMap::new();
        }
        if let Some(ip) = sa.paced.filter(|_| sa.dead || sa.established()) {
            sa.paced = None;
            cx.pacing.finished(ip);
        }
        let k = sa.our_cookie();
        if sa.initiator || sa.dead || sa.established() {
            if let Some(ip) = self.negotiating.remove(&k)
                && let Some(n) = self.negotiating_from.get_mut(&ip)
            {
                *n -= 1;
                if *n == 0 {
                    self.negotiating_from.remove(&ip);
                }
            }
        } else if let Entry::Vacant(v) = self.negotiating.entry(k) {
            // The address message 1 came from: a NAT-T port float keeps it.
            let ip = *v.insert(sa.remote.ip());
            *self.negotiating_from.entry(ip).or_default() += 1;
        }
        if sa.dead {
            self.index_timer(k, None);
            self.index_peer(k, None);
        } else {
            self.index_timer(k, sa.next_timeout());
            if self.peer_of.get(&k) != Some(&sa.peer) {
                self.index_peer(k, Some(sa.peer));
            }
        }
        if sa.dead {
            if !sa.initiator {
                // Keyed by where message 1 came from: the port may have floated
                // since (NAT-T); only if the peer's IP changed too (NAT rebinding) is
                // the whole map searched.
                let key = (SocketAddr::new(sa.remote.ip(), sa.first_port), sa.cky_i);
                if self.half_open.get(&key) == Some(&k) {
                    self.half_open.remove(&key);
                } else {
                    debug_assert!(
                        self.half_open
                            .iter()
                            .all(|((from, _), v)| *v != k || from.ip() != sa.remote.ip()),
                        "the map of first messages has this SA under another port"
                    );
                    self.half_open.retain(|_, v| *v != k);
                }
            }
            if !sa.established() && !sa.children.is_empty() {
                // A replacement that held the Child SAs of an SA that went
                // (`park_children`) failed: they go now.
                cx.io.log(
                    Some(sa.peer),
                    Level::Warn,
                    "child_deleted",
                    format!(
                        "the replacement ISAKMP SA failed; deleting the Child SAs it held: {}",
                        spis_hex(&sa.children.iter().map(|c| c.sa.spi_in).collect::<Vec<_>>())
                    ),
                );
                for c in &sa.children {
                    cx.io.event(Event::ChildSaDeleted {
                        peer: sa.peer,
                        spi_in: c.sa.spi_in,
                        spi_out: c.sa.spi_out,
                    });
                }
                if let Some((spi_i, spi_r)) = sa.adopted.take() {
                    cx.io.event(Event::IkeSaDeleted {
                        peer: sa.peer,
                        spi_i,
                        spi_r,
                        reason: DeleteReason::LocalRequest,
                    });
                }
            }
            for c in &sa.children {
                cx.io.child_spis.remove(&c.sa.spi_in);
            }
            for q in sa.qms.values() {
                if let Some(spi) = q.state.spi_in() {
                    cx.io.child_spis.remove(&spi);
                }
            }
        } else {
            self.sas.insert(sa.our_cookie(), sa);
        }
    }

    fn start_p1_rekey(
        &mut self,
        cx: &mut Cx<'_>,
        now: Instant,
        peer: PeerId,
        cfg: Arc<PeerConfig>,
    ) {
        // A peer with no fixed address reauthenticates itself: we cannot reach it.
        let Some(target) = cfg.remote_addr() else {
            return;
        };
        if self.of_peer(peer).any(|(_, s)| !s.dead && !s.established()) {
            return;
        }
        cx.io.log(
            Some(peer),
            Level::Info,
            "ike_rekey",
            "ISAKMP SA nearing its lifetime: negotiating a replacement".into(),
        );
        if let Err(e) = self.initiate(cx, now, peer, cfg, target) {
            cx.io
                .fail(Some(peer), Phase::Phase1, format!("cannot rekey: {e}"));
        }
    }

    /// A Quick Mode that was in progress on `sa` when a new ISAKMP SA replaced it made
    /// its Child SA after `supersede` had moved the others: it joins them on the
    /// successor. Left on the replaced SA, it would vanish with it, unreported, while
    /// the peer and the data plane keep it.
    fn hand_over_children(&mut self, sa: &mut P1Sa) {
        let heir = self
            .of_peer(sa.peer)
            .find(|(_, s)| s.established() && !s.retiring && !s.dead)
            .map(|(k, _)| k);
        let Some(k) = heir else { return };
        let Some(heir) = self.sas.get_mut(&k) else {
            return;
        };
        heir.children.append(&mut sa.children);
        let next = heir.next_timeout();
        self.index_timer(k, next);
    }

    /// A new ISAKMP SA is up: older ones of the same peer hand over their Child SAs
    /// (make-before-break), or go away with INITIAL-CONTACT (RFC 2407 §4.6.3.3).
    fn supersede(&mut self, cx: &mut Cx<'_>, now: Instant, new_key: u64) {
        let Some(mut new) = self.sas.remove(&new_key) else {
            return;
        };
        if new.initial_contact
            && let Some(old) = new.adopted.take()
        {
            // The peer started over (RFC 2407 §4.6.3.3): the Child SAs parked here
            // are gone at its end too.
            let spis: Vec<u32> = new.children.iter().map(|c| c.sa.spi_in).collect();
            delete_children(cx, &mut new, &spis);
            cx.io.event(Event::IkeSaDeleted {
                peer: new.peer,
                spi_i: old.0,
                spi_r: old.1,
                reason: DeleteReason::InitialContact,
            });
        }
        if let Some(old) = new.adopted.take() {
            cx.io.log(
                Some(new.peer),
                Level::Info,
                "ike_rekeyed",
                format!(
                    "ISAKMP SA {:016x}_i {:016x}_r replaced by {:016x}_i {:016x}_r, which \
                     now holds its Child SAs",
                    old.0, old.1, new.cky_i, new.cky_r
                ),
            );
            cx.io.event(Event::IkeSaRekeyed {
                peer: new.peer,
                old,
                new: (new.cky_i, new.cky_r),
            });
        }
        let olds: Vec<u64> = self
            .of_peer(new.peer)
            .filter(|(_, s)| s.established() && !s.retiring && !s.dead)
            .map(|(k, _)| k)
            .collect();
        let mut redundant = false;
        for k in olds {
            let Some(mut old) = self.sas.remove(&k) else {
                continue;
            };
            let sibling = old
                .replaced
                .is_some_and(|p| self.sas.get(&p).is_some_and(|s| !s.dead));
            if sibling && !new.initial_contact && (old.cky_i, old.cky_r) > (new.cky_i, new.cky_r) {
                // Both ends replaced the ISAKMP SA at once, and each end sees the two new
                // ones complete in the opposite order. Each end keeping the newer one
                // and deleting the other deleted both. Both keep the one with the
                // greater cookies instead; this one is redundant, and its initiator
                // deletes it (the peer waits for that, as for any replaced SA).
                cx.io.log(
                    Some(new.peer),
                    Level::Info,
                    "ike_rekeyed",
                    format!(
                        "both ends replaced the ISAKMP SA at once: keeping {:016x}_i {:016x}_r, \
                         {:016x}_i {:016x}_r is redundant",
                        old.cky_i, old.cky_r, new.cky_i, new.cky_r
                    ),
                );
                cx.io.event(Event::IkeSaRekeyed {
                    peer: new.peer,
                    old: (new.cky_i, new.cky_r),
                    new: (old.cky_i, old.cky_r),
                });
                redundant = true;
                new.retiring = true;
                new.retire_at = Some(now + replaced_wait(new.initiator));
                self.put_back(cx, old);
                continue;
            }
            if new.initial_contact {
                cx.io.log(
                    Some(new.peer),
                    Level::Info,
                    "initial_contact",
                    "peer sent INITIAL-CONTACT: removing the SAs it no longer has".into(),
                );
                remove_sa(cx, &mut old, DeleteReason::InitialContact);
            } else {
                new.children.append(&mut old.children);
                cx.io.log(
                    Some(new.peer),
                    Level::Info,
                    "ike_rekeyed",
                    format!(
                        "ISAKMP SA {:016x}_i {:016x}_r replaced by {:016x}_i {:016x}_r",
                        old.cky_i, old.cky_r, new.cky_i, new.cky_r
                    ),
                );
                cx.io.event(Event::IkeSaRekeyed {
                    peer: new.peer,
                    old: (old.cky_i, old.cky_r),
                    new: (new.cky_i, new.cky_r),
                });
                new.replaced = Some(k);
                // The replaced SA has no Child SAs left; it is deleted once the peer has
                // had time to move its Child SAs over. strongSwan does that in a job it
                // queues when the new SA is up (IKEv1 has no rekey of the ISAKMP SA,
                // only a new Main Mode), and a Delete for the old SA that it handles
                // before that job runs takes the Child SAs with it: traffic stops. The
                // initiator sends that Delete after `REPLACED_SA_GRACE` (strongSwan
                // waits 10 s after its own reauthentication); the responder waits for
                // it and deletes the old SA itself only after 30 s.
                old.retiring = true;
                old.retire_at = Some(now + replaced_wait(new.initiator));
            }
            self.put_back(cx, old);
        }
        if new.initiator && !redundant && new.children.is_empty() && new.qms.is_empty() {
            start_qm(cx, now, &mut new, None);
        }
        self.put_back(cx, new);
    }

    /// Main or Aggressive Mode message 1 from a new peer.
    fn new_responder(
        &mut self,
        cx: &mut Cx<'_>,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        h: Header,
    ) {
        let Ok(chain) = Chain::decode(h.next, data.get(HEADER_LEN..).unwrap_or_default(), false)
        else {
            cx.io.stats.malformed += 1;
            return;
        };
        let Some(offer) = chain
            .first(PayloadType::SA)
            .and_then(|b| SaPayload::decode(b).ok())
        else {
            cx.io.stats.malformed += 1;
            return;
        };
        let mode = if h.exchange == Exchange::AGGRESSIVE {
            V1Mode::Aggressive
        } else {
            V1Mode::Main
        };
        // Peers that could own this: IKEv1, our address, their address (or any); those
        // with a fixed address first, "any" peers as the fallback. Looked up, not
        // scanned: this runs for every first message, a flood's included.
        let (index, peers) = (cx.index, cx.peers);
        let by_addr = index
            .by_version_address(crate::IkeVersion::V1, local.ip(), remote.ip())
            .filter_map(|p| peers.get(&p).map(|c| (p, &**c)));
        // Refused with NO-PROPOSAL-CHOSEN, as strongSwan answers for a connection it does
        // not have: the peer gives up at once instead of retransmitting.
        let no_proposal = |cx: &mut Cx<'_>| {
            send_plain_notify(
                cx,
                local,
                remote,
                h.cky_i,
                0,
                NotifyType::NO_PROPOSAL_CHOSEN,
            );
        };
        let refuse = |cx: &mut Cx<'_>, p: PeerId, reason: String| {
            cx.io.refuse(now, p, Phase::Phase1, reason);
            no_proposal(cx);
        };
        let Some((first, first_cfg)) = by_addr.clone().next() else {
            match index.by_address(local.ip(), remote.ip()).next() {
                Some(p) => refuse(
                    cx,
                    p,
                    format!(
                        "peer {remote} started IKEv1 {}; this tunnel is configured for IKEv2 \
                         (ike.version must match on both sides)",
                        mode_name(mode)
                    ),
                ),
                None => cx.io.stats.no_peer += 1,
            }
            tracing::debug!(%remote, "IKEv1 {} from an unknown peer", mode_name(mode));
            return;
        };
        let mode_mismatch = |cx: &mut Cx<'_>, p: PeerId, c: &PeerConfig| {
            refuse(
                cx,
                p,
                format!(
                    "peer {remote} started IKEv1 {}; this tunnel is configured for {} \
                     (ike.mode must match on both sides)",
                    mode_name(mode),
                    mode_name(c.v1_mode)
                ),
            );
        };
        let mut chosen = None;
        let mut first_err = None;
        let mut try_choose = |p: PeerId, c: &PeerConfig| match p1_choose(&offer, &c.ike) {
            Ok(ch) => {
                chosen = Some((p, ch));
                true
            }
            Err(e) => {
                first_err.get_or_insert((p, e));
                false
            }
        };
        if mode == V1Mode::Main {
            // Once per proposal among the Main Mode candidates, not once per candidate:
            // a refused message 1 towards n "any" tunnels costs O(proposals).
            match index.first_accepting(crate::IkeVersion::V1, local.ip(), remote.ip(), |o| {
                (o.mode == mode).then(|| p1_choose(&offer, &o.ike))
            }) {
                Ok(found) => chosen = Some(found),
                Err(Some(refusal)) => first_err = Some(refusal),
                Err(None) => {
                    mode_mismatch(cx, first, first_cfg);
                    return;
                }
            }
        } else {
            // Aggressive Mode names the peer in message 1: the PSK is found by its ID,
            // through the identity index (fixed addresses first, then "any").
            let Some(id) = chain
                .first(PayloadType::ID)
                .and_then(|b| Id::decode(b).ok())
            else {
                cx.io.stats.malformed += 1;
                return;
            };
            let mut named: Vec<(PeerId, &PeerConfig)> = index
                .by_v1_remote_id(&id)
                .filter_map(|p| peers.get(&p).map(|c| (p, &**c)))
                .filter(|(_, c)| accepts(c, local, remote))
                .collect();
            named.sort_by_key(|(p, c)| (c.remote_addr().is_none(), *p));
            let (p0, c0) = named.first().copied().unwrap_or((first, first_cfg));
            if named.is_empty() && first_cfg.v1_mode == mode {
                cx.io.refuse(
                    now,
                    first,
                    Phase::Phase1,
                    format!(
                        "peer {remote} identified as {}; this tunnel expects remote ID {} \
                         (check ike.remote_id here and the local ID on the peer)",
                        id.describe(),
                        first_cfg.remote_id
                    ),
                );
                send_plain_notify(
                    cx,
                    local,
                    remote,
                    h.cky_i,
                    0,
                    NotifyType::INVALID_ID_INFORMATION,
                );
                return;
            }
            let mut same_mode = named.iter().filter(|(_, c)| c.v1_mode == mode).peekable();
            if same_mode.peek().is_none() {
                mode_mismatch(cx, p0, c0);
                return;
            }
            for &(p, c) in same_mode {
                if try_choose(p, c) {
                    break;
                }
            }
        }
        let Some((peer, cfg, choice)) =
            chosen.and_then(|(p, ch)| Some((p, Arc::clone(peers.get(&p)?), ch)))
        else {
            match first_err {
                Some((p, e)) => refuse(cx, p, e),
                None => no_proposal(cx),
            }
            return;
        };
        let cky_r = self.new_cookie(cx);
        let state = match mode {
            V1Mode::Main => P1State::MmR3,
            V1Mode::Aggressive => P1State::AmR3,
        };
        let mut sa = P1Sa::new(
            peer, cfg, false, mode, h.cky_i, cky_r, local, remote, state, now,
        );
        sa.lifetime = agreed_lifetime(sa.cfg.ike_lifetime, choice.lifetime);
        sa.hs.sai_b = chain.first(PayloadType::SA).unwrap_or_default().to_vec();
        note_vids(&mut sa, &chain);
        sa.p1_last_rcvd = Some(data.to_vec());
        sa.half_open_until = Some(now + cx.ecfg.half_open_timeout);
        cx.io.log_unauthenticated(
            now,
            peer,
            Level::Info,
            "phase1_start",
            format!(
                "peer {remote} started IKEv1 {} {}; accepted {}",
                mode_name(mode),
                chain.summary(),
                sa.cfg.ike.name()
            ),
        );
        let answer = RawPayload::new(PayloadType::SA, choice.answer.encode());
        match mode {
            V1Mode::Main => {
                let mut p = vec![answer];
                p.extend(vendor_ids(&sa.cfg));
                send_p1(cx, now, &mut sa, p, false, Some("message 2"));
            }
            V1Mode::Aggressive => {
                if let Err(reason) = am_respond(cx, now, &mut sa, &chain, answer) {
                    cx.io.refuse(now, peer, Phase::Phase1, reason);
                    send_plain_notify(
                        cx,
                        local,
                        remote,
                        h.cky_i,
                        cky_r,
                        NotifyType::PAYLOAD_MALFORMED,
                    );
                    return;
                }
                if sa.dead {
                    // Its public value was refused in place (`am_refuse`).
                    return;
                }
            }
        }
        self.half_open.insert((remote, h.cky_i), cky_r);
        self.put_back(cx, Box::new(sa));
    }
}

/// Moves SA `k` to `(v, k)` in an ordered index (`None`: out of it); `of` remembers
/// each SA's `v` so that the old entry can be found.
fn reindex<V: Ord + Copy>(
    index: &mut BTreeSet<(V, u64)>,
    of: &mut HashMap<u64, V>,
    k: u64,
    v: Option<V>,
) {
    if let Some(old) = of.remove(&k) {
        index.remove(&(old, k));
    }
    if let Some(v) = v {
        index.insert((v, k));
        of.insert(k, v);
    }
}

// ---- message dispatch ---------------------------------------------------------------

fn on_message(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    local: SocketAddr,
    remote: SocketAddr,
    data: &[u8],
    h: &Header,
) {
    match h.exchange {
        Exchange::MAIN | Exchange::AGGRESSIVE if h.message_id == 0 => {
            on_phase1(cx, now, sa, local, remote, data, h);
        }
        Exchange::QUICK if h.message_id != 0 => on_quick(cx, now, sa, local, remote, data, h),
        Exchange::INFORMATIONAL => on_info(cx, now, sa, local, remote, data, h),
        _ => cx.io.stats.unexpected += 1,
    }
}

fn on_phase1(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    local: SocketAddr,
    remote: SocketAddr,
    data: &[u8],
    h: &Header,
) {
    // RFC 2408 §5: a retransmitted message gets our last answer again (an initiator
    // computing its keys elsewhere has no answer yet: message 5 follows them).
    if sa.p1_last_rcvd.as_deref() == Some(data) {
        cx.io.stats.duplicate_requests += 1;
        if !(sa.initiator && sa.keying.is_some())
            && resend_due(cx, now, &mut sa.p1_sent_at)
            && let Some(b) = sa.p1_last_sent.clone()
        {
            cx.io.send(sa.local, sa.remote, b);
        }
        return;
    }
    let want = match sa.mode {
        V1Mode::Main => Exchange::MAIN,
        V1Mode::Aggressive => Exchange::AGGRESSIVE,
    };
    if h.exchange != want || sa.established() {
        cx.io.stats.unexpected += 1;
        return;
    }
    // Encrypted messages are opened with the phase 1 CBC chain; the IV advances
    // only if the message is accepted.
    let (chain, next_iv) = if h.encrypted() {
        if sa.keys.is_none() {
            match sa.keying.as_mut() {
                // Message 5 overtook our keys: handled when they come. (An Aggressive
                // Mode responder has sent nothing the peer could answer yet.)
                Some(k) if !sa.initiator && sa.mode == V1Mode::Main => {
                    k.held = Some((local, remote, data.to_vec()));
                    cx.io.stats.dh_held += 1;
                }
                _ => cx.io.stats.unexpected += 1,
            }
            return;
        }
        let mut opened = open(sa, &sa.iv.clone(), h, data);
        if sa.state == P1State::MmR5 {
            opened = mm5_owner(cx, sa, h, data, opened);
        }
        match opened {
            Some(x) => (x.0, Some(x.1)),
            None => {
                decrypt_failed(cx, sa, local, remote);
                return;
            }
        }
    } else {
        match Chain::decode(h.next, data.get(HEADER_LEN..).unwrap_or_default(), false) {
            Ok(c) => (c, None),
            Err(_) => {
                cx.io.stats.malformed += 1;
                return;
            }
        }
    };
    // A message the current step does not take (a late copy of an earlier one, out
    // of order on the network) leaves everything as it was: it used to clear the
    // retransmission of our last message, and the exchange then waited forever.
    let before = (
        next_iv.is_some().then(|| sa.iv.clone()),
        sa.p1_last_rcvd.take(),
        sa.retx.take(),
        sa.last_rx,
        sa.cky_r,
    );
    if let Some(iv) = next_iv {
        sa.iv = iv;
    }
    sa.p1_last_rcvd = Some(data.to_vec());
    sa.last_rx = now;
    if h.cky_r != 0 && sa.cky_r == 0 {
        sa.cky_r = h.cky_r;
    }
    tracing::debug!(peer = %sa.peer, "received {} {}", h.exchange.name(), chain.summary());
    let r = match sa.state {
        P1State::MmI2 => mm2(cx, now, sa, &chain),
        P1State::MmR3 => mm3(cx, now, sa, &chain, local, remote),
        P1State::MmI4 => mm4(cx, now, sa, &chain, local, remote),
        P1State::MmR5 if h.encrypted() => mm5(cx, now, sa, &chain, local, remote),
        P1State::MmI6 if h.encrypted() => mm6(cx, now, sa, &chain),
        P1State::AmI2 => am2(cx, now, sa, &chain, local, remote),
        P1State::AmR3 => am3(cx, now, sa, &chain, local, remote),
        _ => Err(Fail::Drop),
    };
    if matches!(r, Err(Fail::Drop)) {
        let (iv, last_rcvd, retx, last_rx, cky_r) = before;
        if let Some(iv) = iv {
            sa.iv = iv;
        }
        sa.p1_last_rcvd = last_rcvd;
        sa.retx = retx;
        sa.last_rx = last_rx;
        sa.cky_r = cky_r;
    }
    settle(cx, sa, r);
}

/// What a handshake step's outcome does to the SA.
fn settle(cx: &mut Cx<'_>, sa: &mut P1Sa, r: Result<(), Fail>) {
    match r {
        Ok(()) => {}
        Err(Fail::Drop) => cx.io.stats.unexpected += 1,
        Err(Fail::Phase1(reason, n)) => {
            cx.io.fail(Some(sa.peer), Phase::Phase1, reason);
            if let Some(n) = n {
                notify_error(cx, sa, n);
            }
            sa.dead = true;
        }
    }
}

/// Why a handshake step failed: drop silently, or fail phase 1 (telling the peer).
enum Fail {
    Drop,
    Phase1(String, Option<NotifyType>),
}

fn mm2(cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa, c: &Chain) -> Result<(), Fail> {
    let answer = c
        .first(PayloadType::SA)
        .and_then(|b| SaPayload::decode(b).ok())
        .ok_or(Fail::Drop)?;
    check_p1_answer(sa, &answer)?;
    note_vids(sa, c);
    let dh = cx.io.dh(sa.suite.2).map_err(|_| Fail::Drop)?;
    sa.hs.gxi = dh.public_value().to_vec();
    sa.hs.ni = nonce(cx);
    sa.hs.dh = Some(Box::new(dh));
    let mut p = vec![
        RawPayload::new(PayloadType::KE, sa.hs.gxi.clone()),
        RawPayload::new(PayloadType::NONCE, sa.hs.ni.clone()),
    ];
    p.extend(nat_d_payloads(sa));
    sa.state = P1State::MmI4;
    send_p1(cx, now, sa, p, false, Some("message 3"));
    Ok(())
}

fn mm3(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    c: &Chain,
    local: SocketAddr,
    remote: SocketAddr,
) -> Result<(), Fail> {
    let (gxi, ni) = ke_nonce(sa, c)?;
    let dh = cx.io.dh(sa.suite.2).map_err(|_| Fail::Drop)?;
    sa.hs.gxi = gxi;
    sa.hs.ni = ni;
    sa.hs.gxr = dh.public_value().to_vec();
    sa.hs.nr = nonce(cx);
    // Message 4 needs no keys: with an offload it goes out now, and a message 5 that
    // comes before the keys waits for them.
    let theirs = sa.hs.gxi.clone();
    if let Some(shared) = shared_secret(cx, now, sa, dh, theirs)? {
        mm3_keyed(sa, shared);
    }
    nat_detect(sa, c, local, remote);
    let mut p = vec![
        RawPayload::new(PayloadType::KE, sa.hs.gxr.clone()),
        RawPayload::new(PayloadType::NONCE, sa.hs.nr.clone()),
    ];
    p.extend(nat_d_payloads(sa));
    sa.state = P1State::MmR5;
    send_p1(cx, now, sa, p, false, Some("message 4"));
    Ok(())
}

/// Main Mode responder: SKEYID and the rest from g^xy, kept for message 5 (`mm5_owner`).
fn mm3_keyed(sa: &mut P1Sa, shared: Zeroizing<Vec<u8>>) {
    derive_p1(sa, &shared);
    sa.hs.gxy = Some(shared);
}

fn mm4(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    c: &Chain,
    local: SocketAddr,
    remote: SocketAddr,
) -> Result<(), Fail> {
    let (gxr, nr) = ke_nonce(sa, c)?;
    let dh = sa.hs.dh.take().ok_or(Fail::Drop)?;
    sa.hs.gxr = gxr;
    sa.hs.nr = nr;
    nat_detect(sa, c, local, remote);
    float(sa);
    let theirs = sa.hs.gxr.clone();
    match shared_secret(cx, now, sa, *dh, theirs)? {
        Some(shared) => mm4_keyed(cx, now, sa, &shared),
        // Message 5 goes out when the keys come (`Engine::dh_done`).
        None => Ok(()),
    }
}

/// Main Mode initiator with its keys: message 5.
fn mm4_keyed(cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa, shared: &[u8]) -> Result<(), Fail> {
    derive_p1(sa, shared);
    let id_b = v1_id(&sa.cfg.local_id).encode();
    let hash_i = auth_hash(sa, true, &id_b);
    let mut p = vec![
        RawPayload::new(PayloadType::ID, id_b),
        RawPayload::new(PayloadType::HASH, hash_i),
    ];
    p.extend(initial_contact(sa));
    sa.state = P1State::MmI6;
    send_p1(cx, now, sa, p, true, Some("message 5"));
    Ok(())
}

/// Main or Aggressive Mode's g^xy from our key pair and the peer's public value: computed here, or
/// (`Ok(None)`) handed to the endpoint's [`crate::DhOffload`], the SA waiting in
/// `keying` until [`Engine::dh_done`]. An offload that refuses the job gets it computed
/// here.
fn shared_secret(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    key: crypto::DhPrivate,
    theirs: Vec<u8>,
) -> Result<Option<Zeroizing<Vec<u8>>>, Fail> {
    let ticket = cx.io.next_ticket();
    match offload(cx, DhJob::v1(sa.our_cookie(), None, ticket, key, theirs)) {
        Ok(()) => {
            sa.keying = Some(Box::new(Keying {
                ticket,
                held: None,
                am: None,
            }));
            if sa.initiator {
                // Bounds the wait should the offload never answer (a responder has this
                // deadline from message 1 on).
                sa.half_open_until = Some(now + cx.ecfg.half_open_timeout);
            }
            Ok(None)
        }
        Err(job) => invalid_dh(sa, job.compute().shared).map(Some),
    }
}

/// A shared secret, or why phase 1 fails: the peer's public value was refused.
fn invalid_dh(
    sa: &P1Sa,
    r: Result<Zeroizing<Vec<u8>>, crypto::Error>,
) -> Result<Zeroizing<Vec<u8>>, Fail> {
    r.map_err(|_| {
        let n = (!sa.initiator).then_some(NotifyType::INVALID_KEY_INFORMATION);
        Fail::Phase1("peer's Diffie-Hellman public value is invalid".into(), n)
    })
}

fn mm5(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    c: &Chain,
    local: SocketAddr,
    remote: SocketAddr,
) -> Result<(), Fail> {
    let id_b = c.first(PayloadType::ID).ok_or(Fail::Drop)?.to_vec();
    let id = Id::decode(&id_b).map_err(|_| Fail::Drop)?;
    check_peer_id(sa, &id)?;
    let got = c.first(PayloadType::HASH).ok_or(Fail::Drop)?;
    if !ct_eq(got, &auth_hash(sa, true, &id_b)) {
        return Err(auth_failed("HASH_I in message 5"));
    }
    sa.initial_contact = has_initial_contact(c);
    follow_peer(cx, sa, local, remote);
    let my_id = v1_id(&sa.cfg.local_id).encode();
    let hash_r = auth_hash(sa, false, &my_id);
    let p = vec![
        RawPayload::new(PayloadType::ID, my_id),
        RawPayload::new(PayloadType::HASH, hash_r),
    ];
    send_p1(cx, now, sa, p, true, None);
    established(cx, now, sa);
    Ok(())
}

/// The ISAKMP SA's lifetime: ours, or the initiator's if it proposed a shorter one.
fn agreed_lifetime(ours: Duration, proposed: Option<Duration>) -> Duration {
    match proposed.filter(|l| !l.is_zero()) {
        Some(p) if ours.is_zero() || p < ours => p,
        _ => ours,
    }
}

/// At most this many other pre-shared keys are tried on one message 5 (see
/// [`mm5_owner`]): each costs a key derivation and a decryption, and a peer that
/// completed messages 1–4 may send anything as message 5.
const MM5_MAX_KEY_TRIALS: usize = 64;

/// Main Mode responder, message 5: which tunnel it belongs to.
///
/// RFC 2409 §5.4: with pre-shared keys the responder needs the key for message 4's
/// SKEYID before message 5 names the initiator, so the tunnel was picked by address
/// in message 1: the first tunnel accepting that address and the proposal. When
/// several accept it (customer gateways 0.0.0.0 told apart by their IDs, or two
/// connections to one customer gateway), message 5 may belong to another one: its ID
/// is that tunnel's remote ID and its HASH_I verifies with that tunnel's key. The SA
/// then moves to that tunnel (libreswan likewise switches connections once the ID is
/// known). The other tunnels' keys are tried too (up to [`MM5_MAX_KEY_TRIALS`]), so
/// such tunnels need not share one key.
///
/// `opened` is message 5 decrypted with the picked tunnel's keys; the answer is what
/// the rest of Main Mode goes on with (unchanged when no other tunnel owns it).
fn mm5_owner(
    cx: &mut Cx<'_>,
    sa: &mut P1Sa,
    h: &Header,
    data: &[u8],
    opened: Option<(Chain, Vec<u8>)>,
) -> Option<(Chain, Vec<u8>)> {
    let (index, peers) = (cx.index, cx.peers);
    // No other tunnel takes this address (a lookup that stops at the first other one):
    // `mm5` checks message 5 against the picked tunnel.
    if !index
        .by_version_address(crate::IkeVersion::V1, sa.local.ip(), sa.remote.ip())
        .any(|p| p != sa.peer)
    {
        return opened;
    }
    if let (Some((chain, _)), Some(keys)) = (&opened, &sa.keys)
        && mm5_verifies(sa, keys, &sa.cfg, chain)
    {
        return opened;
    }
    // Tunnels that share the picked tunnel's key: message 5 is readable, and its ID
    // finds them in the identity index.
    if let (Some((chain, next_iv)), Some(keys), Some(cipher)) = (&opened, &sa.keys, &sa.cipher)
        && let Some(id) = chain
            .first(PayloadType::ID)
            .and_then(|b| Id::decode(b).ok())
    {
        for p in index.by_v1_remote_id(&id) {
            let Some(cfg) = peers.get(&p).filter(|c| {
                p != sa.peer
                    && accepts(c, sa.local, sa.remote)
                    && mm5_candidate(c, sa)
                    && ct_eq(&c.psk.0, &sa.cfg.psk.0)
            }) else {
                continue;
            };
            if mm5_verifies(sa, keys, cfg, chain) {
                let moved = (keys.clone(), cipher.clone());
                move_mm5(cx, sa, p, cfg, moved, &id);
                return Some((chain.clone(), next_iv.clone()));
            }
        }
    }
    // Tunnels with keys of their own: message 5 decrypted with each.
    let gxy = sa.hs.gxy.clone()?;
    let ct = data.get(HEADER_LEN..)?;
    let (encr, integ, _) = sa.suite;
    let mut trials = 0;
    for p in index.by_version_address(crate::IkeVersion::V1, sa.local.ip(), sa.remote.ip()) {
        let Some(cfg) = peers
            .get(&p)
            .filter(|c| p != sa.peer && mm5_candidate(c, sa) && !ct_eq(&c.psk.0, &sa.cfg.psk.0))
        else {
            continue;
        };
        if trials == MM5_MAX_KEY_TRIALS {
            break;
        }
        trials += 1;
        let keys = P1Keys::derive(
            integ, encr, &cfg.psk.0, &sa.hs.ni, &sa.hs.nr, &gxy, sa.cky_i, sa.cky_r,
        );
        let Ok(cipher) = Cipher::new(encr, keys.enc_key.as_slice()) else {
            continue;
        };
        let Some(chain) = cbc_open(&cipher, &sa.iv, ct)
            .and_then(|plain| Chain::decode(h.next, &plain, true).ok())
        else {
            continue;
        };
        if !mm5_verifies(sa, &keys, cfg, &chain) {
            continue;
        }
        let id = chain
            .first(PayloadType::ID)
            .and_then(|b| Id::decode(b).ok())?;
        move_mm5(cx, sa, p, cfg, (keys, cipher), &id);
        let next_iv = last_block(ct, sa.block());
        return Some((chain, next_iv));
    }
    opened
}

/// Moves a Main Mode responder SA to tunnel `p` (see [`mm5_owner`]), with the keys
/// derived from `p`'s pre-shared key.
fn move_mm5(
    cx: &mut Cx<'_>,
    sa: &mut P1Sa,
    p: PeerId,
    cfg: &Arc<PeerConfig>,
    (keys, cipher): (P1Keys, Cipher),
    id: &Id,
) {
    let id = id.describe();
    cx.io.log(
        Some(sa.peer),
        Level::Info,
        "phase1_moved",
        format!(
            "peer {} identified as {id} in Main Mode message 5: another tunnel that accepts \
             this address expects that ID; the negotiation continues there",
            sa.remote
        ),
    );
    let offered = SaPayload::decode(&sa.hs.sai_b)
        .ok()
        .and_then(|o| p1_choose(&o, &cfg.ike).ok())
        .and_then(|c| c.lifetime);
    sa.lifetime = agreed_lifetime(cfg.ike_lifetime, offered);
    sa.peer = p;
    sa.cfg = Arc::clone(cfg);
    sa.keys = Some(keys);
    sa.cipher = Some(cipher);
    cx.io.log(
        Some(p),
        Level::Info,
        "phase1_start",
        format!(
            "peer {} started IKEv1 Main Mode on another tunnel that accepts its address and \
             identified as {id} in message 5: continuing on this tunnel",
            sa.remote
        ),
    );
}

/// Whether a tunnel takes IKEv1 from `remote` on `local` (its address, or any).
fn accepts(c: &PeerConfig, local: SocketAddr, remote: SocketAddr) -> bool {
    c.local.ip() == local.ip() && c.remote_addr().is_none_or(|r| r.ip() == remote.ip())
}

/// The tunnels besides `sa`'s that could own its Main Mode (see [`mm5_owner`]) with
/// a pre-shared key of their own.
fn other_keys(cx: &Cx<'_>, sa: &P1Sa) -> usize {
    cx.index
        .by_version_address(crate::IkeVersion::V1, sa.local.ip(), sa.remote.ip())
        .filter(|p| *p != sa.peer)
        .filter_map(|p| cx.peers.get(&p))
        .filter(|c| mm5_candidate(c, sa) && !ct_eq(&c.psk.0, &sa.cfg.psk.0))
        .count()
}

/// A tunnel that could take over `sa`'s Main Mode: same mode and suite.
fn mm5_candidate(c: &PeerConfig, sa: &P1Sa) -> bool {
    c.v1_mode == V1Mode::Main && (c.ike.encr, c.ike.integ, c.ike.dh) == sa.suite
}

/// Message 5 (decrypted with `keys`) names `cfg`'s remote ID and its HASH_I verifies.
fn mm5_verifies(sa: &P1Sa, keys: &P1Keys, cfg: &PeerConfig, chain: &Chain) -> bool {
    let Some(id_b) = chain.first(PayloadType::ID) else {
        return false;
    };
    let (Ok(id), Some(got)) = (Id::decode(id_b), chain.first(PayloadType::HASH)) else {
        return false;
    };
    id_matches(&cfg.remote_id, &id) && ct_eq(got, &auth_hash_with(sa, keys, true, id_b))
}

fn mm6(cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa, c: &Chain) -> Result<(), Fail> {
    let id_b = c.first(PayloadType::ID).ok_or(Fail::Drop)?.to_vec();
    let id = Id::decode(&id_b).map_err(|_| Fail::Drop)?;
    check_peer_id(sa, &id)?;
    let got = c.first(PayloadType::HASH).ok_or(Fail::Drop)?;
    if !ct_eq(got, &auth_hash(sa, false, &id_b)) {
        return Err(auth_failed("HASH_R in message 6"));
    }
    established(cx, now, sa);
    Ok(())
}

/// Aggressive Mode responder: message 1 is in `c`; answers with message 2, which
/// carries HASH_R and so needs the keys: with an offload it goes out when they come
/// (`Engine::dh_done`). Until then a retransmitted message 1 gets no answer, and the
/// half-open timeout bounds the wait. This is the one first message that costs a
/// Diffie-Hellman computation (RFC 2409 §5.4), so it must not cost the control thread
/// one. `Err`: message 1 is malformed, no SA is kept.
fn am_respond(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    c: &Chain,
    answer: RawPayload,
) -> Result<(), String> {
    sa.hs.idi_b = c.first(PayloadType::ID).unwrap_or_default().to_vec();
    let (gxi, ni) =
        ke_nonce(sa, c).map_err(|_| "message 1 lacks a valid KE or nonce".to_string())?;
    let dh = cx.io.dh(sa.suite.2).map_err(|e| e.to_string())?;
    sa.hs.gxr = dh.public_value().to_vec();
    sa.hs.nr = nonce(cx);
    sa.hs.gxi = gxi.clone();
    sa.hs.ni = ni;
    match shared_secret(cx, now, sa, dh, gxi) {
        Ok(Some(shared)) => am_answer(cx, now, sa, &shared, answer.body),
        Ok(None) => {
            if let Some(k) = sa.keying.as_mut() {
                k.am = Some(AmNext::Answer(answer.body));
            }
        }
        Err(f) => am_refuse(cx, now, sa, f),
    }
    Ok(())
}

/// Aggressive Mode responder whose peer's public value the group refused: the SA ends
/// with INVALID-KEY-INFORMATION in the clear (RFC 2408 §3.14.1). As for any refused
/// first message the log row is rate-limited: the sender's address is unproven.
fn am_refuse(cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa, f: Fail) {
    let reason = match f {
        Fail::Phase1(reason, _) => reason,
        Fail::Drop => "peer's Diffie-Hellman public value is invalid".into(),
    };
    cx.io.refuse(now, sa.peer, Phase::Phase1, reason);
    send_plain_notify(
        cx,
        sa.local,
        sa.remote,
        sa.cky_i,
        sa.cky_r,
        NotifyType::INVALID_KEY_INFORMATION,
    );
    sa.dead = true;
}

/// Aggressive Mode responder with the shared secret: message 2.
fn am_answer(cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa, shared: &[u8], answer: Vec<u8>) {
    derive_p1(sa, shared);
    let my_id = v1_id(&sa.cfg.local_id).encode();
    let hash_r = auth_hash(sa, false, &my_id);
    let mut p = vec![
        RawPayload::new(PayloadType::SA, answer),
        RawPayload::new(PayloadType::KE, sa.hs.gxr.clone()),
        RawPayload::new(PayloadType::NONCE, sa.hs.nr.clone()),
        RawPayload::new(PayloadType::ID, my_id),
    ];
    p.extend(vendor_ids(&sa.cfg));
    p.extend(nat_d_payloads(sa));
    p.push(RawPayload::new(PayloadType::HASH, hash_r));
    send_p1(cx, now, sa, p, false, Some("message 2"));
}

fn am2(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    c: &Chain,
    local: SocketAddr,
    remote: SocketAddr,
) -> Result<(), Fail> {
    let answer = c
        .first(PayloadType::SA)
        .and_then(|b| SaPayload::decode(b).ok())
        .ok_or(Fail::Drop)?;
    check_p1_answer(sa, &answer)?;
    note_vids(sa, c);
    let (gxr, nr) = ke_nonce(sa, c)?;
    let id_b = c.first(PayloadType::ID).ok_or(Fail::Drop)?.to_vec();
    let id = Id::decode(&id_b).map_err(|_| Fail::Drop)?;
    check_peer_id(sa, &id)?;
    let hash_r = c.first(PayloadType::HASH).ok_or(Fail::Drop)?.to_vec();
    let dh = sa.hs.dh.take().ok_or(Fail::Drop)?;
    sa.hs.gxr = gxr;
    sa.hs.nr = nr;
    // Only records what the NAT-D payloads say; the move to port 4500 waits for
    // HASH_R (`am2_keyed`).
    nat_detect(sa, c, local, remote);
    let theirs = sa.hs.gxr.clone();
    match shared_secret(cx, now, sa, *dh, theirs)? {
        Some(shared) => am2_keyed(cx, now, sa, &shared, &id_b, &hash_r),
        // Message 2 is checked when the keys come (`Engine::dh_done`).
        None => {
            if let Some(k) = sa.keying.as_mut() {
                k.am = Some(AmNext::Check { id_b, hash_r });
            }
            Ok(())
        }
    }
}

/// Aggressive Mode initiator with its keys: checks message 2's HASH_R over the
/// responder's ID payload body `id_b`, then sends message 3.
fn am2_keyed(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    shared: &[u8],
    id_b: &[u8],
    hash_r: &[u8],
) -> Result<(), Fail> {
    derive_p1(sa, shared);
    if !ct_eq(hash_r, &auth_hash(sa, false, id_b)) {
        // Keys from different PSKs: the peer could not read an encrypted notify.
        sa.keys = None;
        return Err(auth_failed("HASH_R in Aggressive Mode message 2"));
    }
    float(sa);
    let my_id = v1_id(&sa.cfg.local_id).encode();
    let hash_i = auth_hash(sa, true, &my_id);
    // strongSwan's order and encryption for message 3: [ HASH NAT-D NAT-D ].
    let mut p = vec![RawPayload::new(PayloadType::HASH, hash_i)];
    p.extend(nat_d_payloads(sa));
    p.extend(initial_contact(sa));
    send_p1(cx, now, sa, p, true, None);
    established(cx, now, sa);
    Ok(())
}

fn am3(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    c: &Chain,
    local: SocketAddr,
    remote: SocketAddr,
) -> Result<(), Fail> {
    let got = c.first(PayloadType::HASH).ok_or(Fail::Drop)?;
    let idii_b = sa.hs.idi_b.clone();
    if !ct_eq(got, &auth_hash(sa, true, &idii_b)) {
        return Err(auth_failed("HASH_I in Aggressive Mode message 3"));
    }
    nat_detect(sa, c, local, remote);
    sa.initial_contact = has_initial_contact(c);
    follow_peer(cx, sa, local, remote);
    established(cx, now, sa);
    Ok(())
}

// ---- phase 1 helpers ------------------------------------------------------------------

fn check_p1_answer(sa: &mut P1Sa, answer: &SaPayload) -> Result<(), Fail> {
    match p1_check_answer(answer, &sa.cfg) {
        Ok(life) => {
            if let Some(l) = life.filter(|l| !l.is_zero())
                && (sa.lifetime.is_zero() || l < sa.lifetime)
            {
                sa.lifetime = l;
            }
            Ok(())
        }
        Err(e) => Err(Fail::Phase1(e, Some(NotifyType::NO_PROPOSAL_CHOSEN))),
    }
}

fn ke_nonce(sa: &P1Sa, c: &Chain) -> Result<(Vec<u8>, Vec<u8>), Fail> {
    let ke = c.first(PayloadType::KE).ok_or(Fail::Drop)?;
    let n = c.first(PayloadType::NONCE).ok_or(Fail::Drop)?;
    // RFC 2409 §5: nonces of 8 to 256 bytes.
    if ke.len() != sa.suite.2.public_len() || !(8..=256).contains(&n.len()) {
        return Err(Fail::Phase1(
            "peer's KE or nonce payload has an invalid length".into(),
            Some(NotifyType::PAYLOAD_MALFORMED),
        ));
    }
    Ok((ke.to_vec(), n.to_vec()))
}

fn check_peer_id(sa: &P1Sa, id: &Id) -> Result<(), Fail> {
    if id_matches(&sa.cfg.remote_id, id) {
        return Ok(());
    }
    Err(Fail::Phase1(
        format!(
            "peer identified as {}; this tunnel expects remote ID {} (check ike.remote_id \
             here and the local ID on the peer)",
            id.describe(),
            sa.cfg.remote_id
        ),
        Some(NotifyType::INVALID_ID_INFORMATION),
    ))
}

fn auth_failed(what: &str) -> Fail {
    Fail::Phase1(
        format!(
            "authentication failed — {what} did not verify: the pre-shared keys differ; \
             check the pre-shared key on both sides"
        ),
        Some(NotifyType::INVALID_HASH_INFORMATION),
    )
}

/// An encrypted handshake message did not decrypt to a valid payload chain: with
/// pre-shared keys that almost always means the keys differ (RFC 2409 §5.4 derives
/// the encryption key from the PSK).
fn decrypt_failed(cx: &mut Cx<'_>, sa: &mut P1Sa, local: SocketAddr, remote: SocketAddr) {
    let which = match sa.state {
        P1State::MmR5 => "message 5",
        P1State::MmI6 => "message 6",
        P1State::AmR3 => "Aggressive Mode message 3",
        _ => "a message",
    };
    let others = if sa.state == P1State::MmR5 {
        other_keys(cx, sa)
    } else {
        0
    };
    let tried = match others {
        0 => String::new(),
        n if n <= MM5_MAX_KEY_TRIALS => {
            format!(" (nor with the keys of the {n} other tunnels that accept this address)")
        }
        n => format!(
            " (nor with the keys of {MM5_MAX_KEY_TRIALS} of the {n} other tunnels that accept \
             this address: Main Mode must find the key by address, before the peer names \
             itself; for that many peers on one address or on customer gateway 0.0.0.0 use \
             Aggressive Mode or IKEv2)"
        ),
    };
    cx.io.fail(
        Some(sa.peer),
        Phase::Phase1,
        format!(
            "authentication failed — the peer's {which} could not be decrypted{tried}: in \
             IKEv1 a wrong pre-shared key shows up as an undecryptable (invalid) message 5; \
             check the pre-shared key on both sides"
        ),
    );
    // The peer cannot read anything encrypted with our keys: tell it in the clear.
    send_plain_notify(
        cx,
        local,
        remote,
        sa.cky_i,
        sa.cky_r,
        NotifyType::PAYLOAD_MALFORMED,
    );
    sa.dead = true;
}

fn derive_p1(sa: &mut P1Sa, shared: &[u8]) {
    let (encr, integ, _) = sa.suite;
    let keys = P1Keys::derive(
        integ,
        encr,
        &sa.cfg.psk.0,
        &sa.hs.ni,
        &sa.hs.nr,
        shared,
        sa.cky_i,
        sa.cky_r,
    );
    sa.cipher = Cipher::new(encr, keys.enc_key.as_slice()).ok();
    sa.iv = phase1_iv(integ, &sa.hs.gxi, &sa.hs.gxr, encr.block_len());
    sa.keys = Some(keys);
}

/// HASH_I (`initiator_hash`) or HASH_R over an ID payload body (RFC 2409 §5).
fn auth_hash(sa: &P1Sa, initiator_hash: bool, id_b: &[u8]) -> Vec<u8> {
    match &sa.keys {
        Some(k) => auth_hash_with(sa, k, initiator_hash, id_b),
        None => Vec::new(),
    }
}

/// [`auth_hash`] with `k` instead of the SA's own keys.
fn auth_hash_with(sa: &P1Sa, k: &P1Keys, initiator_hash: bool, id_b: &[u8]) -> Vec<u8> {
    if initiator_hash {
        k.auth_hash(
            &sa.hs.gxi,
            &sa.hs.gxr,
            sa.cky_i,
            sa.cky_r,
            &sa.hs.sai_b,
            id_b,
        )
    } else {
        k.auth_hash(
            &sa.hs.gxr,
            &sa.hs.gxi,
            sa.cky_r,
            sa.cky_i,
            &sa.hs.sai_b,
            id_b,
        )
    }
}

fn nat_d_payloads(sa: &P1Sa) -> Vec<RawPayload> {
    if !(sa.cfg.nat_traversal && sa.peer_natt) {
        return Vec::new();
    }
    let i = sa.suite.1;
    // RFC 3947 §3.2: the remote end's address first, then our own.
    vec![
        RawPayload::new(PayloadType::NAT_D, nat_d(i, sa.cky_i, sa.cky_r, sa.remote)),
        RawPayload::new(PayloadType::NAT_D, nat_d(i, sa.cky_i, sa.cky_r, sa.local)),
    ]
}

/// RFC 3947 §3.2: compares the peer's NAT-D payloads with the addresses the
/// message actually travelled between.
fn nat_detect(sa: &mut P1Sa, c: &Chain, local: SocketAddr, remote: SocketAddr) {
    if !(sa.cfg.nat_traversal && sa.peer_natt) {
        return;
    }
    let hashes: Vec<&[u8]> = c
        .all(PayloadType::NAT_D)
        .chain(c.all(PayloadType::NAT_D_DRAFT))
        .collect();
    let Some((first, rest)) = hashes.split_first() else {
        return;
    };
    let i = sa.suite.1;
    sa.nat_local = *first != nat_d(i, sa.cky_i, sa.cky_r, local).as_slice();
    let theirs = nat_d(i, sa.cky_i, sa.cky_r, remote);
    sa.nat_remote = !rest.contains(&theirs.as_slice());
}

/// RFC 3947 §4: with a NAT in the path the initiator moves to port 4500 from
/// message 5 (Main Mode) or 3 (Aggressive Mode) on.
fn float(sa: &mut P1Sa) {
    if sa.udp_encap() {
        sa.local.set_port(4500);
        sa.remote.set_port(4500);
    }
}

/// Follows the peer to the addresses of its latest authenticated message (NAT-T).
fn follow_peer(cx: &mut Cx<'_>, sa: &mut P1Sa, local: SocketAddr, remote: SocketAddr) {
    if (local, remote) == (sa.local, sa.remote) {
        return;
    }
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
    if sa.established() {
        cx.io.log(
            Some(sa.peer),
            Level::Info,
            "addresses_changed",
            format!("peer now at {remote} (local {local})"),
        );
        cx.io.event(Event::AddressesChanged {
            peer: sa.peer,
            local,
            remote,
            udp_encap: encap,
        });
    }
}

fn note_vids(sa: &mut P1Sa, c: &Chain) {
    for v in c.all(PayloadType::VID) {
        if v == vid::DPD {
            sa.peer_dpd = true;
        } else if v == vid::NAT_T_RFC3947 {
            sa.peer_natt = true;
        }
    }
}

fn vendor_ids(cfg: &PeerConfig) -> Vec<RawPayload> {
    let mut v = Vec::new();
    if cfg.nat_traversal {
        v.push(RawPayload::new(
            PayloadType::VID,
            vid::NAT_T_RFC3947.to_vec(),
        ));
    }
    // We always answer R-U-THERE, so we always announce DPD (RFC 3706 §5.1).
    v.push(RawPayload::new(PayloadType::VID, vid::DPD.to_vec()));
    v
}

fn initial_contact(sa: &P1Sa) -> Vec<RawPayload> {
    // Only on a first contact: a rekeying SA must not make the peer drop the old one.
    if sa.send_initial_contact {
        vec![RawPayload::new(
            PayloadType::N,
            Notify::new(
                proto::ISAKMP,
                NotifyType::INITIAL_CONTACT,
                cookies(sa.cky_i, sa.cky_r),
                Vec::new(),
            )
            .encode(),
        )]
    } else {
        Vec::new()
    }
}

fn has_initial_contact(c: &Chain) -> bool {
    c.all(PayloadType::N)
        .filter_map(|b| Notify::decode(b).ok())
        .any(|n| n.msg_type == NotifyType::INITIAL_CONTACT)
}

fn established(cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa) {
    sa.state = P1State::Established;
    sa.just_established = true;
    sa.last_rx = now;
    // The last message of the exchange is the Main Mode responder's message 6 or the
    // Aggressive Mode initiator's message 3: its sender cannot know it arrived.
    sa.unconfirmed_since = (sa.initiator == (sa.mode == V1Mode::Aggressive)).then_some(now);
    // The initiator replaces the SA first; the responder only if that never happens,
    // so that both rarely negotiate replacements at once (IKEv1 has no collision
    // handling for them).
    let soft = if sa.initiator {
        soft_lifetime(sa.lifetime, cx.io.u32())
    } else {
        (!sa.lifetime.is_zero()).then(|| sa.lifetime.mul_f64(0.97))
    };
    sa.rekey_at = soft.map(|d| now + d);
    sa.expire_at = (!sa.lifetime.is_zero()).then(|| now + sa.lifetime);
    // The handshake values only served Main/Aggressive Mode: a retransmitted last
    // message is answered from `p1_last_sent`. About 0.5 KiB per SA with modp1024.
    sa.hs = Default::default();
    let (encr, integ, dh) = sa.suite;
    let algorithms = IkeAlgorithms {
        encr,
        integ: Some(integ),
        prf: crate::config::prf_for(integ),
        dh,
    };
    let nat = match (sa.nat_local, sa.nat_remote) {
        (true, _) => ", we are behind a NAT",
        (false, true) => ", peer is behind a NAT",
        _ => "",
    };
    cx.io.log(
        Some(sa.peer),
        Level::Info,
        "phase1_established",
        format!(
            "IKEv1 ISAKMP SA established ({}, {algorithms}) {} <-> {}{nat}",
            mode_name(sa.mode),
            sa.local,
            sa.remote
        ),
    );
    cx.io.event(Event::IkeSaEstablished {
        peer: sa.peer,
        spi_i: sa.cky_i,
        spi_r: sa.cky_r,
        initiator: sa.initiator,
        algorithms,
        local: sa.local,
        remote: sa.remote,
    });
}

// ---- quick mode ---------------------------------------------------------------------

/// Starts quick mode for the tunnel's Child SA (or to rekey `rekey_of`).
fn start_qm(cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa, rekey_of: Option<u32>) {
    if !sa.established() || sa.retiring {
        return;
    }
    let (Some(l), Some(r)) = (sa.cfg.local_ts.first(), sa.cfg.remote_ts.first()) else {
        cx.io.fail(
            Some(sa.peer),
            Phase::Phase2,
            "no local or remote subnet configured".into(),
        );
        return;
    };
    if sa.cfg.local_ts.len() > 1 || sa.cfg.remote_ts.len() > 1 {
        cx.io.log(
            Some(sa.peer),
            Level::Warn,
            "ikev1_one_subnet",
            format!(
                "IKEv1 negotiates one subnet per side: using {l} === {r} and ignoring the rest"
            ),
        );
    }
    let (l, r) = (*l, *r);
    let mid = loop {
        let m = cx.io.u32();
        if m != 0 && !sa.qms.contains_key(&m) {
            break m;
        }
    };
    let dh = match sa.cfg.esp.pfs.map(|g| cx.io.dh(g)).transpose() {
        Ok(d) => d,
        Err(e) => {
            cx.io
                .fail(Some(sa.peer), Phase::Phase2, format!("Diffie-Hellman: {e}"));
            return;
        }
    };
    let spi_in = cx.io.child_spi();
    let ni = nonce(cx);
    let offer = esp_offer(&sa.cfg.esp, spi_in, sa.cfg.child_lifetime, sa.udp_encap());
    let mut p = vec![
        RawPayload::new(PayloadType::SA, offer.encode()),
        RawPayload::new(PayloadType::NONCE, ni.clone()),
    ];
    if let Some(d) = &dh {
        p.push(RawPayload::new(PayloadType::KE, d.public_value().to_vec()));
    }
    p.push(RawPayload::new(
        PayloadType::ID,
        Id::subnet(l.addr, l.prefix).encode(),
    ));
    p.push(RawPayload::new(
        PayloadType::ID,
        Id::subnet(r.addr, r.prefix).encode(),
    ));
    let Some(keys) = &sa.keys else { return };
    let p = hashed(keys, &[&mid.to_be_bytes()], p);
    let iv = phase2_iv(sa.suite.1, &sa.iv, mid, sa.block());
    let mut qm = Qm {
        iv,
        state: QmState::I2 {
            ni,
            dh: dh.map(Box::new),
            spi_in,
            local_ts: TsRange::from_cidr(l),
            remote_ts: TsRange::from_cidr(r),
            rekey_of,
        },
        last_sent: None,
        last_rcvd: Vec::new(),
        retx: None,
        linger_until: None,
        sent_at: None,
    };
    if let Some(s) = rekey_of
        && let Some(c) = sa.children.iter_mut().find(|c| c.sa.spi_in == s)
    {
        c.state = ChildState::Rekeying;
    }
    cx.io.log(
        Some(sa.peer),
        Level::Info,
        "phase2_start",
        format!(
            "{} quick mode {l} === {r}, proposing {} (PFS {})",
            if rekey_of.is_some() {
                "rekeying with"
            } else {
                "initiating"
            },
            sa.cfg.esp.name(),
            sa.cfg.esp.pfs.map_or("disabled", |g| g.name())
        ),
    );
    send_qm(cx, now, sa, &mut qm, mid, &p, Some("quick mode message 1"));
    sa.qms.insert(mid, Box::new(qm));
}

fn on_quick(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    local: SocketAddr,
    remote: SocketAddr,
    data: &[u8],
    h: &Header,
) {
    if !sa.established() || !h.encrypted() {
        cx.io.stats.unexpected += 1;
        return;
    }
    let mid = h.message_id;
    let mut qm = match sa.qms.remove(&mid) {
        Some(q) => q,
        None => Box::new(Qm {
            iv: phase2_iv(sa.suite.1, &sa.iv, mid, sa.block()),
            state: QmState::Done,
            last_sent: None,
            last_rcvd: Vec::new(),
            retx: None,
            linger_until: None,
            sent_at: None,
        }),
    };
    let fresh = qm.last_rcvd.is_empty() && qm.last_sent.is_none();
    if qm.last_rcvd == data {
        cx.io.stats.duplicate_requests += 1;
        if resend_due(cx, now, &mut qm.sent_at)
            && let Some(b) = qm.last_sent.clone()
        {
            cx.io.send(sa.local, sa.remote, b);
        }
        sa.qms.insert(mid, qm);
        return;
    }
    if !fresh && matches!(qm.state, QmState::Done) {
        cx.io.stats.unexpected += 1;
        sa.qms.insert(mid, qm);
        return;
    }
    if fresh && answering(sa) >= MAX_ANSWERING_QMS {
        // Each answered Quick Mode holds a DH computation and then an inbound SA until
        // message 3: an authenticated peer starting them without end would pile both
        // up. The peer retransmits message 1, and it is taken once others finish.
        cx.io.stats.half_open_limited += 1;
        cx.io.log_unauthenticated(
            now,
            sa.peer,
            Level::Warn,
            "phase2_limited",
            format!(
                "peer has {MAX_ANSWERING_QMS} quick modes waiting for an answer or for \
                 message 3; dropping another until they finish"
            ),
        );
        return;
    }
    let Some((chain, next_iv)) = open(sa, &qm.iv, h, data) else {
        cx.io.stats.integrity_failures += 1;
        if !fresh {
            sa.qms.insert(mid, qm);
        }
        return;
    };
    let outcome = match qm.state {
        QmState::Done if fresh => qm_responder(cx, now, sa, &mut qm, mid, &chain, next_iv, data),
        QmState::I2 { .. } => qm2(cx, now, sa, &mut qm, mid, &chain, next_iv, data),
        QmState::R3 { .. } => qm3(cx, now, sa, &mut qm, mid, &chain, next_iv, data),
        // Waiting for the PFS secret: only retransmissions (above) are expected.
        QmState::R2Keying { .. } | QmState::I2Keying { .. } | QmState::Done => Outcome::Reject,
    };
    if outcome != Outcome::Reject {
        sa.last_rx = now;
        follow_peer(cx, sa, local, remote);
    }
    if outcome == Outcome::Keep || (outcome == Outcome::Reject && !fresh) {
        sa.qms.insert(mid, qm);
    }
}

/// Quick Modes a responder has in progress on one ISAKMP SA (waiting for their PFS
/// secret or for message 3) before it drops further message 1s. strongSwan starts one
/// per CHILD_SA, all at once; vpngw's own tunnels have one.
const MAX_ANSWERING_QMS: usize = 16;

/// Quick Modes we answer that are still in progress on `sa`.
fn answering(sa: &P1Sa) -> usize {
    sa.qms
        .values()
        .filter(|q| matches!(q.state, QmState::R2Keying { .. } | QmState::R3 { .. }))
        .count()
}

/// What became of a quick mode message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Not accepted (bad hash): the exchange stays as it was.
    Reject,
    /// Accepted; the exchange goes on (or lingers for retransmissions).
    Keep,
    /// Accepted, but the exchange failed and is forgotten.
    Drop,
}

/// Verifies `HASH(n) = prf(SKEYID_a, prefix | payloads after HASH)` with the HASH
/// first (RFC 2409 §5.5).
fn check_hash(sa: &P1Sa, chain: &Chain, prefix: &[&[u8]]) -> bool {
    let (Some(keys), Some(first)) = (&sa.keys, chain.payloads.first()) else {
        return false;
    };
    if first.ptype != PayloadType::HASH {
        return false;
    }
    let mut parts: Vec<&[u8]> = prefix.to_vec();
    parts.push(chain.after(0));
    ct_eq(&first.body, &keys.hash_a(&parts))
}

#[allow(clippy::too_many_arguments)]
fn qm_responder(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    qm: &mut Qm,
    mid: u32,
    c: &Chain,
    next_iv: Vec<u8>,
    data: &[u8],
) -> Outcome {
    if !check_hash(sa, c, &[&mid.to_be_bytes()]) {
        cx.io.stats.integrity_failures += 1;
        return Outcome::Reject;
    }
    qm.iv = next_iv;
    qm.last_rcvd = data.to_vec();
    let Some(offer) = c
        .first(PayloadType::SA)
        .and_then(|b| SaPayload::decode(b).ok())
    else {
        qm_refuse(
            cx,
            sa,
            "quick mode message 1 without a valid SA payload".into(),
            NotifyType::PAYLOAD_MALFORMED,
        );
        return Outcome::Drop;
    };
    let Some(ni) = c.first(PayloadType::NONCE).map(<[u8]>::to_vec) else {
        qm_refuse(
            cx,
            sa,
            "quick mode message 1 without a nonce".into(),
            NotifyType::PAYLOAD_MALFORMED,
        );
        return Outcome::Drop;
    };
    let choice = match esp_choose(&offer, &sa.cfg.esp) {
        Ok(ch) => ch,
        Err(e) => {
            qm_refuse(cx, sa, e, NotifyType::NO_PROPOSAL_CHOSEN);
            return Outcome::Drop;
        }
    };
    // RFC 2409 §5.5: IDci is the initiator's (our remote) side, IDcr ours.
    let ids: Vec<Id> = c
        .all(PayloadType::ID)
        .filter_map(|b| Id::decode(b).ok())
        .collect();
    let (remote_ts, local_ts) = match ids.as_slice() {
        [] => (host_ts(sa.remote.ip()), host_ts(sa.local.ip())),
        [ci, cr] => match (id_ts(ci), id_ts(cr)) {
            (Some(a), Some(b)) => (Some(a), Some(b)),
            _ => (None, None),
        },
        _ => (None, None),
    };
    let ok = |ts: Option<TsRange>, ours: &[crate::Ipv4Cidr]| {
        ts.filter(|t| ours.iter().any(|o| TsRange::from_cidr(*o).contains(t)))
    };
    let (Some(rts), Some(lts)) = (
        ok(remote_ts, &sa.cfg.remote_ts),
        ok(local_ts, &sa.cfg.local_ts),
    ) else {
        let proposed = match ids.as_slice() {
            [ci, cr] => format!("{} === {}", ci.describe(), cr.describe()),
            _ => "invalid IDs".into(),
        };
        let reason = format!(
            "traffic selectors unacceptable: peer proposed {proposed}; this tunnel allows {} \
             === {} (check the local and remote subnets on both sides)",
            cidrs(&sa.cfg.remote_ts),
            cidrs(&sa.cfg.local_ts)
        );
        qm_refuse(cx, sa, reason, NotifyType::INVALID_ID_INFORMATION);
        return Outcome::Drop;
    };
    // The node sends a tunnel's traffic on one Child SA at a time: a Quick Mode for
    // other subnets than the installed Child SA's (a peer with one IPsec SA per subnet
    // pair, such as a crypto ACL of several lines) would take their traffic over.
    // Rekeys repeat the same IDs.
    let other = sa.children.iter().find(|ch| {
        matches!(ch.state, ChildState::Installed | ChildState::Rekeying)
            && (ch.sa.local_ts != [lts] || ch.sa.remote_ts != [rts])
    });
    if let Some(ch) = other {
        let reason = format!(
            "refused a quick mode for {} === {}: the tunnel carries one Child SA, {} === {}; \
             IKEv1 carries one pair of subnets per tunnel (use IKEv2 and list every subnet \
             in the peer's one child for several)",
            list_to_string(&[lts]),
            list_to_string(&[rts]),
            list_to_string(&ch.sa.local_ts),
            list_to_string(&ch.sa.remote_ts)
        );
        qm_refuse(cx, sa, reason, NotifyType::INVALID_ID_INFORMATION);
        return Outcome::Drop;
    }
    let ke = c.first(PayloadType::KE);
    let mut pfs = None;
    let mut my_ke = None;
    if let Some(g) = sa.cfg.esp.pfs {
        let Some(ke) = ke.filter(|k| k.len() == g.public_len()) else {
            qm_refuse(
                cx,
                sa,
                "PFS required but the peer sent no valid KE payload".into(),
                NotifyType::INVALID_KEY_INFORMATION,
            );
            return Outcome::Drop;
        };
        let Ok(dh) = cx.io.dh(g) else {
            return Outcome::Drop;
        };
        my_ke = Some(dh.public_value().to_vec());
        pfs = Some((dh, ke.to_vec()));
    }
    let Some(keys) = &sa.keys else {
        return Outcome::Drop;
    };
    let ours = sa.cfg.child_lifetime;
    let lifetime = match choice.lifetime {
        Some(l) if !l.is_zero() && (ours.is_zero() || l < ours) => l,
        _ => ours,
    };
    let shortened = choice.lifetime.is_some_and(|l| !ours.is_zero() && ours < l);
    let spi_in = cx.io.child_spi();
    let nr = nonce(cx);
    let mut answer = choice.answer.clone();
    answer.spi = spi_in.to_be_bytes().to_vec();
    let mut p = vec![
        RawPayload::new(PayloadType::SA, SaPayload::new(vec![answer]).encode()),
        RawPayload::new(PayloadType::NONCE, nr.clone()),
    ];
    if let Some(k) = &my_ke {
        p.push(RawPayload::new(PayloadType::KE, k.clone()));
    }
    if let [ci, cr] = ids.as_slice() {
        p.push(RawPayload::new(PayloadType::ID, ci.encode()));
        p.push(RawPayload::new(PayloadType::ID, cr.encode()));
    }
    if shortened {
        // RFC 2407 §4.6.3.1: tell the initiator the lifetime we will enforce.
        let attrs = encode_attrs(&[
            Attr::basic(p2::LIFE_TYPE, LIFE_SECONDS),
            Attr::number(
                p2::LIFE_DURATION,
                u32::try_from(ours.as_secs()).unwrap_or(u32::MAX),
            ),
        ]);
        p.push(RawPayload::new(
            PayloadType::N,
            Notify::new(
                proto::ESP,
                NotifyType::RESPONDER_LIFETIME,
                choice.spi_out.to_be_bytes().to_vec(),
                attrs,
            )
            .encode(),
        ));
    }
    let answer = QmAnswer {
        payloads: hashed(keys, &[&mid.to_be_bytes(), &ni], p),
        terms: QmTerms {
            ni,
            nr,
            spi_in,
            spi_out: choice.spi_out,
            local_ts: lts,
            remote_ts: rts,
            lifetime,
        },
    };
    let Some((dh, theirs)) = pfs else {
        return qm1_keyed(cx, now, sa, qm, mid, answer, Ok(None));
    };
    match offload_qm(cx, sa, mid, dh, theirs) {
        Ok(ticket) => {
            qm.state = QmState::R2Keying {
                ticket,
                until: now + cx.ecfg.half_open_timeout,
                answer: Box::new(answer),
            };
            Outcome::Keep
        }
        Err(shared) => qm1_keyed(cx, now, sa, qm, mid, answer, shared),
    }
}

/// A Quick Mode's PFS secret is ready: the exchange goes on where it waited. A result
/// for an exchange that is gone (it timed out, or its SA was replaced) is dropped.
fn qm_dh_done(cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa, mid: u32, done: crate::DhDone) {
    let Some(mut qm) = sa.qms.remove(&mid) else {
        cx.io.stats.dh_stale += 1;
        return;
    };
    let shared = done.shared.map(Some);
    let outcome = match std::mem::replace(&mut qm.state, QmState::Done) {
        QmState::R2Keying { ticket, answer, .. } if ticket == done.ticket => {
            qm1_keyed(cx, now, sa, &mut qm, mid, *answer, shared)
        }
        QmState::I2Keying {
            ticket, accepted, ..
        } if ticket == done.ticket => qm2_keyed(cx, now, sa, &mut qm, mid, *accepted, shared),
        other => {
            cx.io.stats.dh_stale += 1;
            qm.state = other;
            Outcome::Keep
        }
    };
    if outcome == Outcome::Keep {
        sa.qms.insert(mid, qm);
    }
}

/// Quick Mode responder with its keys (and the PFS secret, if any): installs the
/// inbound side and sends message 2.
fn qm1_keyed(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    qm: &mut Qm,
    mid: u32,
    a: QmAnswer,
    gxy: Result<Option<Zeroizing<Vec<u8>>>, crypto::Error>,
) -> Outcome {
    let Ok(gxy) = gxy else {
        cx.io.child_spis.remove(&a.terms.spi_in);
        qm_refuse(
            cx,
            sa,
            "peer's PFS Diffie-Hellman value is invalid".into(),
            NotifyType::INVALID_KEY_INFORMATION,
        );
        return Outcome::Drop;
    };
    let Some(keys) = &sa.keys else {
        cx.io.child_spis.remove(&a.terms.spi_in);
        return Outcome::Drop;
    };
    let child = make_child(sa, keys, gxy.as_deref().map(|g| g.as_slice()), &a.terms);
    let QmAnswer { terms, payloads } = a;
    // The initiator may send on the new SA as soon as it has message 2: the inbound
    // side must be in place before message 2 leaves (Event::ChildSaPending).
    cx.io.event(Event::ChildSaPending {
        peer: sa.peer,
        child: child.clone(),
    });
    qm.state = QmState::R3 {
        ni: terms.ni,
        nr: terms.nr,
        child: Box::new(child),
    };
    send_qm(
        cx,
        now,
        sa,
        qm,
        mid,
        &payloads,
        Some("quick mode message 2"),
    );
    Outcome::Keep
}

#[allow(clippy::too_many_arguments)]
fn qm2(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    qm: &mut Qm,
    mid: u32,
    c: &Chain,
    next_iv: Vec<u8>,
    data: &[u8],
) -> Outcome {
    let QmState::I2 {
        ni,
        dh,
        spi_in,
        local_ts,
        remote_ts,
        rekey_of,
    } = std::mem::replace(&mut qm.state, QmState::Done)
    else {
        return Outcome::Reject;
    };
    let restore = |qm: &mut Qm, dh: Option<Box<crypto::DhPrivate>>| {
        qm.state = QmState::I2 {
            ni: ni.clone(),
            dh,
            spi_in,
            local_ts,
            remote_ts,
            rekey_of,
        };
    };
    if !check_hash(sa, c, &[&mid.to_be_bytes(), &ni]) {
        cx.io.stats.integrity_failures += 1;
        restore(qm, dh);
        return Outcome::Reject;
    }
    qm.iv = next_iv;
    qm.last_rcvd = data.to_vec();
    qm.retx = None;
    let fail = |cx: &mut Cx<'_>, sa: &mut P1Sa, reason: String| {
        qm2_failed(cx, now, sa, spi_in, rekey_of, reason);
    };
    let answer = c
        .first(PayloadType::SA)
        .and_then(|b| SaPayload::decode(b).ok());
    let (spi_out, life) = match answer.map(|a| esp_check_answer(&a, &sa.cfg.esp)) {
        Some(Ok(x)) => x,
        Some(Err(e)) => {
            fail(cx, sa, e);
            return Outcome::Drop;
        }
        None => {
            fail(
                cx,
                sa,
                "quick mode message 2 without a valid SA payload".into(),
            );
            return Outcome::Drop;
        }
    };
    let Some(nr) = c.first(PayloadType::NONCE).map(<[u8]>::to_vec) else {
        fail(cx, sa, "quick mode message 2 without a nonce".into());
        return Outcome::Drop;
    };
    let ids: Vec<Id> = c
        .all(PayloadType::ID)
        .filter_map(|b| Id::decode(b).ok())
        .collect();
    if let [ci, cr] = ids.as_slice() {
        let inside = |id: &Id, ours: &TsRange| id_ts(id).is_some_and(|t| ours.contains(&t));
        if !(inside(ci, &local_ts) && inside(cr, &remote_ts)) {
            fail(
                cx,
                sa,
                format!(
                    "peer answered with traffic selectors {} === {}; we proposed {local_ts} === \
                     {remote_ts}",
                    ci.describe(),
                    cr.describe()
                ),
            );
            return Outcome::Drop;
        }
    }
    let pfs = match (dh, c.first(PayloadType::KE)) {
        (Some(d), Some(ke)) => Some((d, ke.to_vec())),
        (Some(_), None) => {
            fail(
                cx,
                sa,
                "PFS was proposed but the peer sent no KE payload".into(),
            );
            return Outcome::Drop;
        }
        (None, _) => None,
    };
    // RFC 2407 §4.6.3.1: a responder may enforce a shorter lifetime.
    let mut lifetime = sa.cfg.child_lifetime;
    for n in c.all(PayloadType::N).filter_map(|b| Notify::decode(b).ok()) {
        if n.msg_type == NotifyType::RESPONDER_LIFETIME
            && let Some(l) = responder_lifetime(&n.data)
            && (lifetime.is_zero() || l < lifetime)
        {
            lifetime = l;
        }
    }
    if let Some(l) = life.filter(|l| !l.is_zero())
        && (lifetime.is_zero() || l < lifetime)
    {
        lifetime = l;
    }
    let accepted = QmAccepted {
        terms: QmTerms {
            ni,
            nr,
            spi_in,
            spi_out,
            local_ts,
            remote_ts,
            lifetime,
        },
        rekey_of,
    };
    let Some((dh, theirs)) = pfs else {
        return qm2_keyed(cx, now, sa, qm, mid, accepted, Ok(None));
    };
    match offload_qm(cx, sa, mid, *dh, theirs) {
        Ok(ticket) => {
            // Message 1 is answered: a retransmitted message 2 gets nothing until
            // message 3 exists.
            qm.last_sent = None;
            qm.state = QmState::I2Keying {
                ticket,
                until: now + cx.ecfg.half_open_timeout,
                accepted: Box::new(accepted),
            };
            Outcome::Keep
        }
        Err(shared) => qm2_keyed(cx, now, sa, qm, mid, accepted, shared),
    }
}

/// A Quick Mode we initiated failed: the reason, its inbound SPI freed, and the Child
/// SA it was to replace (if a rekey) back to installed.
fn qm2_failed(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    spi_in: u32,
    rekey_of: Option<u32>,
    reason: String,
) {
    cx.io.fail(Some(sa.peer), Phase::Phase2, reason);
    cx.io.child_spis.remove(&spi_in);
    rekey_failed(now, sa, rekey_of);
}

/// Our rekey of Child SA `rekey_of` failed. Unless the peer's own rekey replaced it
/// meanwhile, it is installed again, and the rekey is tried again halfway to its end:
/// left alone it would run out and take the tunnel with it, although the next Quick
/// Mode would most likely get through (a lossy path, a peer that was busy).
fn rekey_failed(now: Instant, sa: &mut P1Sa, rekey_of: Option<u32>) {
    let Some(c) = rekey_of.and_then(|s| sa.children.iter_mut().find(|c| c.sa.spi_in == s)) else {
        return;
    };
    if c.state != ChildState::Rekeying {
        return;
    }
    c.state = ChildState::Installed;
    c.rekey_at = c
        .expire_at
        .map(|t| t.saturating_duration_since(now) / 2)
        .filter(|d| *d >= MIN_REKEY_RETRY)
        .map(|d| now + d);
}

/// The shortest wait before a failed Child SA rekey is tried again.
const MIN_REKEY_RETRY: Duration = Duration::from_secs(5);

/// Hands `job` to the endpoint's [`crate::DhOffload`]; gives it back when there is
/// none or it refused, to be computed in place.
fn offload(cx: &mut Cx<'_>, job: Box<DhJob>) -> Result<(), Box<DhJob>> {
    let Some(o) = cx.io.offload.as_mut() else {
        return Err(job);
    };
    o.submit(job)?;
    cx.io.stats.dh_offloaded += 1;
    Ok(())
}

/// A Quick Mode's PFS secret: handed to the offload (`Ok`: the ticket its result will
/// carry) or, without one, computed here (`Err`: the secret, or why the peer's value
/// was refused).
#[allow(clippy::type_complexity)]
fn offload_qm(
    cx: &mut Cx<'_>,
    sa: &P1Sa,
    mid: u32,
    key: crypto::DhPrivate,
    theirs: Vec<u8>,
) -> Result<u64, Result<Option<Zeroizing<Vec<u8>>>, crypto::Error>> {
    let ticket = cx.io.next_ticket();
    match offload(
        cx,
        DhJob::v1(sa.our_cookie(), Some(mid), ticket, key, theirs),
    ) {
        Ok(()) => Ok(ticket),
        Err(job) => Err(job.compute().shared.map(Some)),
    }
}

/// Quick Mode initiator with its keys (and the PFS secret, if any): sends message 3
/// and installs the Child SA.
fn qm2_keyed(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    qm: &mut Qm,
    mid: u32,
    a: QmAccepted,
    gxy: Result<Option<Zeroizing<Vec<u8>>>, crypto::Error>,
) -> Outcome {
    let QmAccepted { terms, rekey_of } = a;
    let Ok(gxy) = gxy else {
        qm2_failed(
            cx,
            now,
            sa,
            terms.spi_in,
            rekey_of,
            "peer's PFS Diffie-Hellman value is invalid".into(),
        );
        return Outcome::Drop;
    };
    let Some(keys) = sa.keys.clone() else {
        return Outcome::Drop;
    };
    let hash3 = keys.hash_a(&[&[0], &mid.to_be_bytes(), &terms.ni, &terms.nr]);
    let p = vec![RawPayload::new(PayloadType::HASH, hash3)];
    let child = make_child(sa, &keys, gxy.as_deref().map(|g| g.as_slice()), &terms);
    send_qm(cx, now, sa, qm, mid, &p, None);
    qm.linger_until = Some(now + linger(cx.ecfg));
    install_child(cx, now, sa, child, rekey_of, true);
    // Make-before-break: the replaced SA goes after a grace period, not with message 3.
    let grace_end = now + rekeyed_grace(cx.ecfg);
    if let Some(old) = rekey_of.and_then(|s| sa.children.iter_mut().find(|c| c.sa.spi_in == s)) {
        old.expire_at = Some(old.expire_at.map_or(grace_end, |t| t.min(grace_end)));
    }
    Outcome::Keep
}

#[allow(clippy::too_many_arguments)]
fn qm3(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    qm: &mut Qm,
    mid: u32,
    c: &Chain,
    next_iv: Vec<u8>,
    data: &[u8],
) -> Outcome {
    let QmState::R3 { ni, nr, child } = std::mem::replace(&mut qm.state, QmState::Done) else {
        return Outcome::Reject;
    };
    let ok = sa.keys.as_ref().is_some_and(|k| {
        c.payloads.first().is_some_and(|p| {
            p.ptype == PayloadType::HASH
                && ct_eq(&p.body, &k.hash_a(&[&[0], &mid.to_be_bytes(), &ni, &nr]))
        })
    });
    if !ok {
        cx.io.stats.integrity_failures += 1;
        qm.state = QmState::R3 { ni, nr, child };
        return Outcome::Reject;
    }
    qm.iv = next_iv;
    qm.last_rcvd = data.to_vec();
    qm.retx = None;
    qm.linger_until = Some(now + linger(cx.ecfg));
    // A new Child SA with the selectors of one we have replaces it: the peer rekeyed
    // and will delete the old one. IKEv1 does not say which one (IKEv2 has REKEY_SA).
    // One that we are rekeying, or just rekeyed, comes first: the two rekeys crossed,
    // and taking the Child SA our own rekey made for the replaced one would leave each
    // end with a different one marked replaced. Otherwise the oldest installed one,
    // unless our own rekey made it so recently that it cannot be due yet: then the two
    // rekeys crossed and the one both replaced is gone already. (A peer may rekey any
    // Child SA early; it will not rekey the product of our rekey before it could even
    // have been retransmitting the crossing one.)
    let same = |c: &&Child| c.sa.local_ts == child.local_ts && c.sa.remote_ts == child.remote_ts;
    let young = |c: &Child| {
        let due = (c.sa.lifetime / 2).min(linger(cx.ecfg));
        c.our_rekey && now.saturating_duration_since(c.installed) < due
    };
    let old = sa
        .children
        .iter()
        .filter(same)
        .find(|c| matches!(c.state, ChildState::Rekeying | ChildState::Rekeyed))
        .or_else(|| {
            sa.children
                .iter()
                .filter(same)
                .find(|c| c.state == ChildState::Installed && !young(c))
        })
        .map(|c| c.sa.spi_in);
    install_child(cx, now, sa, *child, old, false);
    Outcome::Keep
}

fn qm_refuse(cx: &mut Cx<'_>, sa: &mut P1Sa, reason: String, n: NotifyType) {
    cx.io.fail(Some(sa.peer), Phase::Phase2, reason);
    notify_error(cx, sa, n);
}

fn make_child(sa: &P1Sa, keys: &P1Keys, gxy: Option<&[u8]>, t: &QmTerms) -> ChildSa {
    let QmTerms {
        ref ni,
        ref nr,
        spi_in,
        spi_out,
        local_ts,
        remote_ts,
        lifetime,
    } = *t;
    let esp = &sa.cfg.esp;
    let e = esp.encr.key_len();
    let i = esp.negotiated_integ().map_or(0, Integ::key_len);
    // RFC 2409 §5.5: each direction's KEYMAT uses the SPI its receiver chose;
    // the encryption key comes first, then the authentication key.
    let kin = keys.keymat(gxy, proto::ESP, spi_in, ni, nr, e + i);
    let kout = keys.keymat(gxy, proto::ESP, spi_out, ni, nr, e + i);
    let split = |k: &Zeroizing<Vec<u8>>| {
        (
            Key::from_slice(k.get(..e).unwrap_or_default()),
            Key::from_slice(k.get(e..e + i).unwrap_or_default()),
        )
    };
    let (encr_key_in, integ_key_in) = split(&kin);
    let (encr_key_out, integ_key_out) = split(&kout);
    ChildSa {
        spi_in,
        spi_out,
        encr: esp.encr,
        integ: esp.negotiated_integ(),
        encr_key_in,
        encr_key_out,
        integ_key_in,
        integ_key_out,
        local_ts: vec![local_ts],
        remote_ts: vec![remote_ts],
        local: sa.local,
        remote: sa.remote,
        udp_encap: sa.udp_encap(),
        local_behind_nat: sa.nat_local,
        pfs: esp.pfs,
        lifetime,
    }
}

/// `initiator`: we initiated the Quick Mode that created `child`.
fn install_child(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    child: ChildSa,
    rekey_of: Option<u32>,
    initiator: bool,
) {
    let peer = sa.peer;
    let lifetime = child.lifetime;
    let soft = soft_lifetime(lifetime, cx.io.u32());
    cx.io.log(
        Some(peer),
        Level::Info,
        "phase2_established",
        format!(
            "Child SA established with SPIs {:08x}_i {:08x}_o, {} === {}, {}{}",
            child.spi_in,
            child.spi_out,
            crate::ts::list_to_string(&child.local_ts),
            crate::ts::list_to_string(&child.remote_ts),
            child.algorithms(),
            if child.udp_encap {
                ", UDP-encapsulated"
            } else {
                ""
            }
        ),
    );
    let old = rekey_of.and_then(|s| sa.children.iter_mut().find(|c| c.sa.spi_in == s));
    match old {
        Some(o) => {
            o.state = ChildState::Rekeyed;
            o.rekey_at = None;
            cx.io.event(Event::ChildSaRekeyed {
                peer,
                old_spi_in: o.sa.spi_in,
                old_spi_out: o.sa.spi_out,
                child: child.clone(),
                initiator,
            });
        }
        None => {
            cx.io.warn_if_narrowed(peer, &child, &sa.cfg);
            cx.io.event(Event::ChildSaEstablished {
                peer,
                child: child.clone(),
                initiator,
            })
        }
    }
    sa.children.push(Child {
        sa: child,
        state: ChildState::Installed,
        rekey_at: soft.map(|d| now + d),
        expire_at: (!lifetime.is_zero()).then(|| now + lifetime),
        collision: None,
        installed: now,
        initiated: initiator,
        our_rekey: initiator && rekey_of.is_some(),
    });
    drop_redundant(cx, now, sa);
}

/// Both ends rekeyed a Child SA at once, or one end's rekey took the other's new
/// Child SA for the old one: now there are two installed Child SAs with the same
/// selectors, and each would be rekeyed on its own from then on, for as long as the
/// tunnel lives (a lossy network makes more of them at each crossing). IKEv1 has no
/// rule for this; like RFC 7296 §2.8.1, both ends keep the same one, here the one with
/// the greatest SPIs, which both ends see, and each other one is deleted by the end
/// that initiated it, after the grace period of a rekeyed one. A peer that does not
/// do this (strongSwan) keeps its own; those of ours still go.
fn drop_redundant(cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa) {
    let Some((lts, rts)) = sa
        .children
        .last()
        .map(|c| (c.sa.local_ts.clone(), c.sa.remote_ts.clone()))
    else {
        return;
    };
    let spis = |c: &Child| {
        let (i, o) = (c.sa.spi_in, c.sa.spi_out);
        (i.min(o), i.max(o))
    };
    let same = |c: &Child| {
        c.state == ChildState::Installed && c.sa.local_ts == lts && c.sa.remote_ts == rts
    };
    let Some(keep) = sa.children.iter().filter(|c| same(c)).map(spis).max() else {
        return;
    };
    let grace_end = now + rekeyed_grace(cx.ecfg);
    let mut redundant = Vec::new();
    for c in sa.children.iter_mut() {
        if same(c) && c.initiated && spis(c) != keep {
            c.state = ChildState::Rekeyed;
            c.rekey_at = None;
            c.expire_at = Some(c.expire_at.map_or(grace_end, |t| t.min(grace_end)));
            redundant.push(c.sa.spi_in);
        }
    }
    if !redundant.is_empty() {
        cx.io.log(
            Some(sa.peer),
            Level::Info,
            "child_redundant",
            format!(
                "both ends rekeyed at once: Child SA {} is redundant and goes in {} s",
                spis_hex(&redundant),
                rekeyed_grace(cx.ecfg).as_secs()
            ),
        );
    }
}

/// Deletes our Child SAs `spis` (inbound SPIs), telling the peer (RFC 2408 §3.15).
fn delete_children(cx: &mut Cx<'_>, sa: &mut P1Sa, spis: &[u32]) {
    let gone: Vec<Child> = {
        let (gone, keep): (Vec<Child>, Vec<Child>) = std::mem::take(&mut sa.children)
            .into_iter()
            .partition(|c| spis.contains(&c.sa.spi_in));
        sa.children = keep;
        gone
    };
    if gone.is_empty() {
        return;
    }
    let ins: Vec<u32> = gone.iter().map(|c| c.sa.spi_in).collect();
    send_info(
        cx,
        sa,
        vec![RawPayload::new(PayloadType::D, Delete::esp(&ins).encode())],
    );
    for c in gone {
        cx.io.child_spis.remove(&c.sa.spi_in);
        cx.io.event(Event::ChildSaDeleted {
            peer: sa.peer,
            spi_in: c.sa.spi_in,
            spi_out: c.sa.spi_out,
        });
    }
    cx.io.log(
        Some(sa.peer),
        Level::Info,
        "child_deleted",
        format!("deleted Child SA {}", spis_hex(&ins)),
    );
}

fn responder_lifetime(data: &[u8]) -> Option<Duration> {
    // The notify data is a list of SA attributes (RFC 2407 §4.6.3.1).
    let mut ty = None;
    for a in decode_attrs(data)? {
        if a.typ == p2::LIFE_TYPE {
            ty = a.as_u32();
        } else if a.typ == p2::LIFE_DURATION && ty == Some(u32::from(LIFE_SECONDS)) {
            return a.as_u32().map(|s| Duration::from_secs(u64::from(s)));
        }
    }
    None
}

// ---- informational ------------------------------------------------------------------

fn on_info(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    local: SocketAddr,
    remote: SocketAddr,
    data: &[u8],
    h: &Header,
) {
    let chain = if h.encrypted() {
        if sa.keys.is_none() {
            cx.io.stats.unexpected += 1;
            return;
        }
        let seed = sa.iv.clone();
        let iv = phase2_iv(sa.suite.1, &seed, h.message_id, sa.block());
        let Some((c, _)) = open(sa, &iv, h, data) else {
            cx.io.stats.integrity_failures += 1;
            return;
        };
        if !check_hash(sa, &c, &[&h.message_id.to_be_bytes()]) {
            cx.io.stats.integrity_failures += 1;
            return;
        }
        if sa.seen_info.contains(&h.message_id) {
            cx.io.stats.duplicate_requests += 1;
            return;
        }
        sa.seen_info.push_back(h.message_id);
        if sa.seen_info.len() > MAX_SEEN_INFO {
            sa.seen_info.pop_front();
        }
        sa.last_rx = now;
        follow_peer(cx, sa, local, remote);
        c
    } else {
        // Unprotected notifications are only believed while phase 1 has not
        // authenticated the peer (they cannot be anything else then).
        if sa.established() {
            cx.io.stats.unexpected += 1;
            return;
        }
        match Chain::decode(h.next, data.get(HEADER_LEN..).unwrap_or_default(), false) {
            Ok(c) => c,
            Err(_) => {
                cx.io.stats.malformed += 1;
                return;
            }
        }
    };
    for p in &chain.payloads {
        match p.ptype {
            PayloadType::N => {
                if let Ok(n) = Notify::decode(&p.body) {
                    on_notify(cx, now, sa, &n);
                }
            }
            PayloadType::D if h.encrypted() => {
                if let Ok(d) = Delete::decode(&p.body) {
                    on_delete(cx, sa, &d);
                }
            }
            _ => {}
        }
        if sa.dead {
            return;
        }
    }
}

fn on_notify(cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa, n: &Notify) {
    match n.msg_type {
        NotifyType::R_U_THERE if sa.established() => {
            let ack = Notify::new(
                proto::ISAKMP,
                NotifyType::R_U_THERE_ACK,
                cookies(sa.cky_i, sa.cky_r),
                n.data.clone(),
            );
            send_info(cx, sa, vec![RawPayload::new(PayloadType::N, ack.encode())]);
        }
        NotifyType::R_U_THERE_ACK => {
            let seq = <[u8; 4]>::try_from(n.data.as_slice()).map(u32::from_be_bytes);
            if let (Some(d), Ok(seq)) = (&sa.dpd, seq) {
                // RFC 3706 §5.5: any outstanding sequence number acknowledges.
                if seq.wrapping_sub(d.first_seq) < d.sent {
                    sa.dpd_seq = d.first_seq.wrapping_add(d.sent);
                    sa.dpd = None;
                    sa.last_rx = now;
                }
            }
        }
        t if t.is_error() => {
            let during = if sa.established() {
                let mids: Vec<u32> = sa
                    .qms
                    .iter()
                    .filter(|(_, q)| matches!(q.state, QmState::I2 { .. }))
                    .map(|(m, _)| *m)
                    .collect();
                if mids.is_empty() {
                    cx.io.log(
                        Some(sa.peer),
                        Level::Warn,
                        "peer_notify",
                        format!("peer sent {}", t.name()),
                    );
                    return;
                }
                for m in mids {
                    if let Some(q) = sa.qms.remove(&m)
                        && let QmState::I2 {
                            spi_in, rekey_of, ..
                        } = q.state
                    {
                        cx.io.child_spis.remove(&spi_in);
                        rekey_failed(now, sa, rekey_of);
                    }
                }
                Phase::Phase2
            } else {
                Phase::Phase1
            };
            let reason = notify_reason(t, during, sa.state, &sa.cfg.local_id);
            cx.io.fail(Some(sa.peer), during, reason);
            if during == Phase::Phase1 {
                sa.dead = true;
            }
        }
        _ => {}
    }
}

/// `ours` is the identity we sent (a peer without a configuration for it reports
/// AUTHENTICATION-FAILED as for a wrong key: strongSwan's "no peer config found").
fn notify_reason(t: NotifyType, phase: Phase, state: P1State, ours: &Identity) -> String {
    let what = if phase == Phase::Phase1 {
        "IKE (phase 1)"
    } else {
        "IPsec (phase 2)"
    };
    match t {
        NotifyType::NO_PROPOSAL_CHOSEN => format!(
            "peer rejected our {what} proposal (NO-PROPOSAL-CHOSEN): the algorithms differ — \
             compare encryption, integrity, DH group{} and mode with the peer{}",
            if phase == Phase::Phase2 { ", PFS" } else { "" },
            // strongSwan answers so for a connection it does not have as well.
            if phase == Phase::Phase1 {
                " — or it has no IKEv1 connection for this gateway's address (ike.version \
                 must match on both sides)"
            } else {
                ""
            }
        ),
        NotifyType::INVALID_ID_INFORMATION => format!(
            "peer rejected our {} (INVALID-ID-INFORMATION): check {}",
            if phase == Phase::Phase1 {
                "identity"
            } else {
                "traffic selectors"
            },
            if phase == Phase::Phase1 {
                "ike.local_id here and the remote ID on the peer"
            } else {
                "that the local and remote subnets mirror the peer's"
            }
        ),
        NotifyType::AUTHENTICATION_FAILED | NotifyType::INVALID_HASH_INFORMATION => format!(
            "authentication failed — peer reported {}: check the pre-shared key on both sides, \
             and that the peer expects our identity {ours} (ike.local_id here, the remote ID \
             on the peer)",
            t.name()
        ),
        NotifyType::PAYLOAD_MALFORMED | NotifyType::INVALID_PAYLOAD_TYPE
            if matches!(state, P1State::MmI6 | P1State::Established) =>
        {
            format!(
                "authentication failed — peer could not decrypt our message 5 ({}): in IKEv1 a \
                 wrong pre-shared key shows up as an invalid message 5; check the pre-shared key",
                t.name()
            )
        }
        _ => format!("peer sent {} during {what} negotiation", t.name()),
    }
}

fn on_delete(cx: &mut Cx<'_>, sa: &mut P1Sa, d: &Delete) {
    match d.protocol {
        proto::ISAKMP => {
            let ours = cookies(sa.cky_i, sa.cky_r);
            if d.spis.contains(&ours) {
                let reason = if sa.retiring {
                    DeleteReason::Rekeyed
                } else if sa.successor_pending {
                    // The peer has its replacement already, we not yet (its last
                    // message is still on the way): the Child SAs wait for it.
                    sa.retiring = true;
                    DeleteReason::Rekeyed
                } else {
                    cx.io.log(
                        Some(sa.peer),
                        Level::Info,
                        "ike_deleted",
                        "peer deleted the ISAKMP SA".into(),
                    );
                    DeleteReason::PeerDeleted
                };
                remove_sa(cx, sa, reason);
            }
        }
        proto::ESP => {
            // The peer names its inbound SPIs: our outbound ones.
            let theirs = d.esp_spis();
            let gone: Vec<Child> = {
                let (gone, keep): (Vec<Child>, Vec<Child>) = std::mem::take(&mut sa.children)
                    .into_iter()
                    .partition(|c| theirs.contains(&c.sa.spi_out));
                sa.children = keep;
                gone
            };
            for c in gone {
                cx.io.child_spis.remove(&c.sa.spi_in);
                cx.io.log(
                    Some(sa.peer),
                    Level::Info,
                    "child_deleted",
                    format!(
                        "peer deleted Child SA {:08x}_i {:08x}_o",
                        c.sa.spi_in, c.sa.spi_out
                    ),
                );
                cx.io.event(Event::ChildSaDeleted {
                    peer: sa.peer,
                    spi_in: c.sa.spi_in,
                    spi_out: c.sa.spi_out,
                });
            }
        }
        _ => {}
    }
}

// ---- timers ---------------------------------------------------------------------------

fn sa_timers(cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa) {
    if sa.initiator && sa.keying.is_some() && sa.half_open_until.is_some_and(|t| now >= t) {
        cx.io.fail(
            Some(sa.peer),
            Phase::Phase1,
            "the Diffie-Hellman computation did not finish in time".into(),
        );
        sa.dead = true;
        return;
    }
    if !sa.established() && sa.half_open_until.is_some_and(|t| now >= t) {
        // Only responders have this deadline: anyone at the address can start one.
        cx.io.log_unauthenticated(
            now,
            sa.peer,
            Level::Warn,
            "half_open_timeout",
            format!(
                "peer {} did not finish {} within {} s (waiting for {}){}",
                sa.remote,
                mode_name(sa.mode),
                cx.ecfg.half_open_timeout.as_secs(),
                sa.state.waiting_for(),
                crate::endpoint::moved_to_4500_hint(sa.state == P1State::MmR5 && sa.udp_encap())
            ),
        );
        sa.dead = true;
        return;
    }
    if let Some(r) = &mut sa.retx
        && now >= r.next
    {
        if r.step(now, cx.ecfg) {
            cx.io.stats.retransmits += 1;
            let (b, what, n) = (r.bytes.clone(), r.what, r.tries);
            cx.io.log(
                Some(sa.peer),
                Level::Debug,
                "retransmit",
                format!("retransmitting {} {what} (try {n})", mode_name(sa.mode)),
            );
            cx.io.send(sa.local, sa.remote, b);
            if sa.initiator && sa.state != P1State::Established && n >= 2 {
                let hint = crate::endpoint::unanswered_hint(
                    matches!(sa.state, P1State::MmI2 | P1State::AmI2),
                    sa.local,
                    sa.remote,
                );
                cx.io.event(Event::Unanswered {
                    peer: sa.peer,
                    reason: format!(
                        "no answer yet from {} to {} {what} (sent {} times){hint}",
                        sa.remote,
                        mode_name(sa.mode),
                        n + 1
                    ),
                });
            }
        } else {
            let what = r.what;
            if sa.initiator {
                cx.io.fail(
                    Some(sa.peer),
                    Phase::Phase1,
                    format!(
                        "peer {} did not answer {} {what} (waiting for {}){}",
                        sa.remote,
                        mode_name(sa.mode),
                        sa.state.waiting_for(),
                        crate::endpoint::unanswered_hint(
                            matches!(sa.state, P1State::MmI2 | P1State::AmI2),
                            sa.local,
                            sa.remote
                        )
                    ),
                );
            } else {
                cx.io.log_unauthenticated(
                    now,
                    sa.peer,
                    Level::Warn,
                    "half_open_timeout",
                    format!(
                        "peer {} abandoned {} before {}{}",
                        sa.remote,
                        mode_name(sa.mode),
                        sa.state.waiting_for(),
                        crate::endpoint::moved_to_4500_hint(
                            sa.state == P1State::MmR5 && sa.udp_encap()
                        )
                    ),
                );
            }
            sa.dead = true;
            return;
        }
    }
    qm_timers(cx, now, sa);
    if !sa.established() {
        return;
    }
    if sa.retiring {
        if sa.retire_at.is_some_and(|t| now >= t) {
            sa.retire_at = None;
            send_delete_isakmp(cx, sa);
            remove_sa(cx, sa, DeleteReason::Rekeyed);
        }
        return;
    }
    if sa.expire_at.is_some_and(|t| now >= t) && sa.successor_pending {
        // Its replacement is still being negotiated (a lossy path): the Child SAs wait
        // for it.
        send_delete_isakmp(cx, sa);
        sa.retiring = true;
        remove_sa(cx, sa, DeleteReason::Rekeyed);
        return;
    }
    if sa.expire_at.is_some_and(|t| now >= t) {
        cx.io.log(
            Some(sa.peer),
            Level::Warn,
            "ike_expired",
            "ISAKMP SA reached its lifetime without a replacement; deleting".into(),
        );
        let spis: Vec<u32> = sa.children.iter().map(|c| c.sa.spi_in).collect();
        delete_children(cx, sa, &spis);
        send_delete_isakmp(cx, sa);
        remove_sa(cx, sa, DeleteReason::LocalRequest);
        return;
    }
    if sa.rekey_at.is_some_and(|t| now >= t) {
        // Tried again halfway to the end if no replacement has taken over by then (its
        // Main Mode failed, or the peer never got its last message).
        sa.rekey_at = sa
            .expire_at
            .map(|t| t.saturating_duration_since(now) / 2)
            .filter(|d| *d >= MIN_REKEY_RETRY)
            .map(|d| now + d);
        sa.want_rekey = true;
    }
    let mut expired = Vec::new();
    let mut replaced = Vec::new();
    let mut rekey = Vec::new();
    for c in &mut sa.children {
        if c.expire_at.is_some_and(|t| now >= t) {
            c.expire_at = None;
            c.rekey_at = None;
            if c.state == ChildState::Rekeyed {
                replaced.push(c.sa.spi_in);
            } else {
                expired.push(c.sa.spi_in);
            }
        } else if c.rekey_at.is_some_and(|t| now >= t) {
            c.rekey_at = None;
            if c.state == ChildState::Installed {
                rekey.push(c.sa.spi_in);
            }
        }
    }
    if !expired.is_empty() {
        cx.io.log(
            Some(sa.peer),
            Level::Warn,
            "child_expired",
            format!(
                "Child SA {} reached its lifetime; deleting",
                spis_hex(&expired)
            ),
        );
        delete_children(cx, sa, &expired);
    }
    if !replaced.is_empty() {
        delete_children(cx, sa, &replaced);
    }
    for s in rekey {
        start_qm(cx, now, sa, Some(s));
    }
    dpd_timers(cx, now, sa);
}

fn qm_timers(cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa) {
    let mids: Vec<u32> = sa.qms.keys().copied().collect();
    for mid in mids {
        let Some(mut q) = sa.qms.remove(&mid) else {
            continue;
        };
        if q.linger_until.is_some_and(|t| now >= t) {
            continue;
        }
        if q.state.keying_until().is_some_and(|t| now >= t) {
            // The offload never answered (it only fails to when its threads are gone).
            let why = "the PFS Diffie-Hellman computation did not finish".to_string();
            match q.state {
                QmState::I2Keying { accepted: a, .. } => {
                    qm2_failed(cx, now, sa, a.terms.spi_in, a.rekey_of, why);
                }
                QmState::R2Keying { answer, .. } => {
                    cx.io.child_spis.remove(&answer.terms.spi_in);
                    cx.io
                        .log(Some(sa.peer), Level::Warn, "phase2_abandoned", why);
                }
                _ => {}
            }
            continue;
        }
        if let Some(r) = &mut q.retx
            && now >= r.next
        {
            if r.step(now, cx.ecfg) {
                cx.io.stats.retransmits += 1;
                cx.io.send(sa.local, sa.remote, r.bytes.clone());
                // A Quick Mode that brings the tunnel's Child SA (it replaces none).
                if let QmState::I2 { rekey_of: None, .. } = q.state
                    && r.tries >= 2
                {
                    cx.io.event(Event::Unanswered {
                        peer: sa.peer,
                        reason: format!(
                            "no answer yet from {} to {} (sent {} times){}",
                            sa.remote,
                            r.what,
                            r.tries + 1,
                            crate::endpoint::PHASE2_UNANSWERED
                        ),
                    });
                }
            } else {
                let what = r.what;
                match q.state {
                    QmState::I2 {
                        spi_in, rekey_of, ..
                    } => {
                        cx.io.fail(
                            Some(sa.peer),
                            Phase::Phase2,
                            format!("peer {} did not answer {what}", sa.remote),
                        );
                        cx.io.child_spis.remove(&spi_in);
                        rekey_failed(now, sa, rekey_of);
                    }
                    QmState::R3 { child, .. } => {
                        cx.io.log(
                            Some(sa.peer),
                            Level::Warn,
                            "phase2_abandoned",
                            "peer never sent quick mode message 3".into(),
                        );
                        abandon_pending(cx, sa.peer, &child);
                    }
                    QmState::R2Keying { .. } | QmState::I2Keying { .. } | QmState::Done => {}
                }
                continue;
            }
        }
        sa.qms.insert(mid, q);
    }
}

fn dpd_timers(cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa) {
    let Some(interval) = sa.cfg.dpd_interval.filter(|_| sa.peer_dpd) else {
        return;
    };
    if let Some(d) = &sa.dpd {
        if now >= d.first_sent + sa.cfg.dpd_timeout && sa.last_rx > d.first_sent {
            // No acknowledgement, but authenticated traffic from the peer since the first
            // R-U-THERE (its own R-U-THERE, a Quick Mode, a Delete, ESP through
            // `handle_child_activity`): it is alive, and only the acknowledgements were
            // lost. RFC 3706 asks for proof of liveness only when the peer is silent.
            // Unless the peer never used this SA at all, for longer than it could
            // still be retransmitting the exchange that made it: then it spoke on
            // another one and does not have this one.
            sa.dpd_seq = d.first_seq.wrapping_add(d.sent);
            sa.dpd = None;
            sa.disowned = sa
                .unconfirmed_since
                .is_some_and(|t| now >= t + linger(cx.ecfg));
            return;
        }
        if now >= d.first_sent + sa.cfg.dpd_timeout {
            let waited = now - d.first_sent;
            cx.io.log(
                Some(sa.peer),
                Level::Error,
                "peer_dead",
                format!(
                    "peer {} did not answer R-U-THERE for {}s; declaring it dead",
                    sa.remote,
                    waited.as_secs()
                ),
            );
            // PeerDead last, once the SAs are reported gone: it is the verdict a
            // driver shows an operator (RFC 3706 DPD), not one more SA deletion.
            remove_sa(cx, sa, DeleteReason::PeerDead);
            cx.io.event(Event::PeerDead {
                peer: sa.peer,
                reason: format!(
                    "DPD: peer {} did not answer for {} s",
                    sa.remote,
                    waited.as_secs()
                ),
            });
            return;
        }
        if now >= d.next_send {
            let sent = d.sent + 1;
            let f = cx
                .ecfg
                .retransmit_factor
                .powi(i32::try_from(sent).unwrap_or(i32::MAX));
            if let Some(d) = &mut sa.dpd {
                d.sent = sent;
                d.next_send = now + cx.ecfg.retransmit_base.mul_f64(f);
            }
            cx.io.stats.retransmits += 1;
            send_r_u_there(cx, sa);
        }
        return;
    }
    if now >= sa.last_rx + interval {
        start_dpd(cx, now, sa);
    }
}

/// Sends the first R-U-THERE of a liveness check (RFC 3706 §5).
fn start_dpd(cx: &mut Cx<'_>, now: Instant, sa: &mut P1Sa) {
    send_r_u_there(cx, sa);
    let first_seq = sa.dpd_seq;
    sa.dpd = Some(Dpd {
        first_seq,
        first_sent: now,
        next_send: now + cx.ecfg.retransmit_base,
        sent: 1,
    });
}

fn send_r_u_there(cx: &mut Cx<'_>, sa: &mut P1Sa) {
    if sa.dpd_seq == 0 && sa.dpd.is_none() {
        // RFC 3706 §7: start from a random sequence number.
        sa.dpd_seq = cx.io.u32() & 0x7fff_ffff;
    }
    let seq = match &sa.dpd {
        Some(d) => d.first_seq.wrapping_add(d.sent - 1),
        None => sa.dpd_seq,
    };
    let n = Notify::new(
        proto::ISAKMP,
        NotifyType::R_U_THERE,
        cookies(sa.cky_i, sa.cky_r),
        seq.to_be_bytes().to_vec(),
    );
    send_info(cx, sa, vec![RawPayload::new(PayloadType::N, n.encode())]);
}

// ---- sending --------------------------------------------------------------------------

fn header(sa: &P1Sa, exchange: Exchange, mid: u32) -> Header {
    Header {
        cky_i: sa.cky_i,
        cky_r: sa.cky_r,
        next: PayloadType::NONE,
        exchange,
        flags: 0,
        message_id: mid,
        length: 0,
    }
}

/// Encrypts `payloads` after `h` with `iv`; returns the message and the next IV.
fn seal(cipher: &Cipher, iv: &[u8], mut h: Header, payloads: &[RawPayload]) -> (Vec<u8>, Vec<u8>) {
    let mut plain = Vec::with_capacity(256);
    h.next = encode_chain(payloads, &mut plain);
    let ct = cbc_seal(cipher, iv, plain);
    h.flags |= flags::ENCRYPTION;
    h.length = u32::try_from(HEADER_LEN + ct.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
    h.emit(&mut out);
    out.extend_from_slice(&ct);
    let next = last_block(&ct, cipher.encr().block_len());
    (out, next)
}

/// Decrypts an encrypted message with `iv`: the payload chain and the next IV.
fn open(sa: &P1Sa, iv: &[u8], h: &Header, data: &[u8]) -> Option<(Chain, Vec<u8>)> {
    let cipher = sa.cipher.as_ref()?;
    let ct = data.get(HEADER_LEN..)?;
    let plain = cbc_open(cipher, iv, ct)?;
    let chain = Chain::decode(h.next, &plain, true).ok()?;
    Some((chain, last_block(ct, sa.block())))
}

fn send_p1(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &mut P1Sa,
    payloads: Vec<RawPayload>,
    encrypt: bool,
    expect_reply: Option<&'static str>,
) {
    let exchange = match sa.mode {
        V1Mode::Main => Exchange::MAIN,
        V1Mode::Aggressive => Exchange::AGGRESSIVE,
    };
    let h = header(sa, exchange, 0);
    let bytes = match (&sa.cipher, encrypt) {
        (Some(c), true) => {
            let (b, iv) = seal(c, &sa.iv, h, &payloads);
            sa.iv = iv;
            b
        }
        _ => encode_plain(h, &payloads),
    };
    tracing::debug!(peer = %sa.peer, "sending {}", exchange.name());
    cx.io.send(sa.local, sa.remote, bytes.clone());
    sa.p1_last_sent = Some(bytes.clone());
    sa.p1_sent_at = Some(now);
    sa.retx = expect_reply.map(|w| Retx::new(bytes, now, cx.ecfg, w));
}

fn send_qm(
    cx: &mut Cx<'_>,
    now: Instant,
    sa: &P1Sa,
    qm: &mut Qm,
    mid: u32,
    payloads: &[RawPayload],
    expect_reply: Option<&'static str>,
) {
    let Some(c) = &sa.cipher else { return };
    let (bytes, iv) = seal(c, &qm.iv, header(sa, Exchange::QUICK, mid), payloads);
    qm.iv = iv;
    cx.io.send(sa.local, sa.remote, bytes.clone());
    qm.last_sent = Some(bytes.clone());
    qm.sent_at = Some(now);
    qm.retx = expect_reply.map(|w| Retx::new(bytes, now, cx.ecfg, w));
}

/// Sends an informational exchange: encrypted with HASH(1) once keys exist
/// (RFC 2409 §5.7), in the clear before.
fn send_info(cx: &mut Cx<'_>, sa: &mut P1Sa, payloads: Vec<RawPayload>) {
    let mid = loop {
        let m = cx.io.u32();
        if m != 0 {
            break m;
        }
    };
    let h = header(sa, Exchange::INFORMATIONAL, mid);
    let bytes = match (&sa.keys, &sa.cipher) {
        (Some(k), Some(c)) => {
            let p = hashed(k, &[&mid.to_be_bytes()], payloads);
            let iv = phase2_iv(sa.suite.1, &sa.iv, mid, sa.block());
            seal(c, &iv, h, &p).0
        }
        _ => encode_plain(Header { message_id: 0, ..h }, &payloads),
    };
    cx.io.send(sa.local, sa.remote, bytes);
}

/// `[ HASH(prf(SKEYID_a, prefix | payloads)) payloads… ]` (RFC 2409 §5.5, §5.7).
fn hashed(keys: &P1Keys, prefix: &[&[u8]], payloads: Vec<RawPayload>) -> Vec<RawPayload> {
    let mut rest = Vec::new();
    encode_chain(&payloads, &mut rest);
    let mut parts: Vec<&[u8]> = prefix.to_vec();
    parts.push(&rest);
    let mut out = vec![RawPayload::new(PayloadType::HASH, keys.hash_a(&parts))];
    out.extend(payloads);
    out
}

/// An error notification about phase 1 or 2, protected if the peer can read it.
fn notify_error(cx: &mut Cx<'_>, sa: &mut P1Sa, n: NotifyType) {
    let spi = cookies(sa.cky_i, sa.cky_r);
    let body = Notify::new(proto::ISAKMP, n, spi, Vec::new()).encode();
    send_info(cx, sa, vec![RawPayload::new(PayloadType::N, body)]);
}

fn send_plain_notify(
    cx: &mut Cx<'_>,
    local: SocketAddr,
    remote: SocketAddr,
    cky_i: u64,
    cky_r: u64,
    n: NotifyType,
) {
    let h = Header {
        cky_i,
        cky_r,
        next: PayloadType::NONE,
        exchange: Exchange::INFORMATIONAL,
        flags: 0,
        message_id: 0,
        length: 0,
    };
    let body = Notify::new(proto::ISAKMP, n, cookies(cky_i, cky_r), Vec::new()).encode();
    cx.io.send(
        local,
        remote,
        encode_plain(h, &[RawPayload::new(PayloadType::N, body)]),
    );
}

fn send_delete_isakmp(cx: &mut Cx<'_>, sa: &mut P1Sa) {
    let d = Delete::isakmp(sa.cky_i, sa.cky_r);
    send_info(cx, sa, vec![RawPayload::new(PayloadType::D, d.encode())]);
}

/// A Quick Mode we answered ended without message 3: the inbound SA announced by
/// [`Event::ChildSaPending`] goes away.
fn abandon_pending(cx: &mut Cx<'_>, peer: PeerId, child: &ChildSa) {
    cx.io.child_spis.remove(&child.spi_in);
    cx.io.event(Event::ChildSaDeleted {
        peer,
        spi_in: child.spi_in,
        spi_out: child.spi_out,
    });
}

/// Removes an SA, reporting its Child SAs (installed or pending) and itself as deleted.
/// A replaced SA's Child SAs belong to its heir, even while it holds them for a
/// message (`handle_datagram`): they stay.
fn remove_sa(cx: &mut Cx<'_>, sa: &mut P1Sa, reason: DeleteReason) {
    for q in sa.qms.values_mut() {
        if let QmState::R3 { child, .. } = std::mem::replace(&mut q.state, QmState::Done) {
            abandon_pending(cx, sa.peer, &child);
        }
    }
    let children = if sa.retiring {
        Vec::new()
    } else {
        std::mem::take(&mut sa.children)
    };
    for c in children {
        cx.io.child_spis.remove(&c.sa.spi_in);
        cx.io.event(Event::ChildSaDeleted {
            peer: sa.peer,
            spi_in: c.sa.spi_in,
            spi_out: c.sa.spi_out,
        });
    }
    if sa.established() {
        cx.io.event(Event::IkeSaDeleted {
            peer: sa.peer,
            spi_i: sa.cky_i,
            spi_r: sa.cky_r,
            reason,
        });
    }
    sa.dead = true;
}

// ---- small helpers --------------------------------------------------------------------

/// How long a replaced ISAKMP SA lives on (see `Engine::supersede`): the initiator of its
/// replacement deletes it after `REPLACED_SA_GRACE`; the responder waits for that Delete
/// and deletes it itself after 30 s.
fn replaced_wait(initiated_replacement: bool) -> Duration {
    if initiated_replacement {
        REPLACED_SA_GRACE
    } else {
        Duration::from_secs(30)
    }
}

/// Whether a retransmitted message should get our last message again. Both IKEv1
/// peers answer retransmissions (RFC 2408 §5), so copies that arrive together
/// (duplicated by the network) get one answer: otherwise each side's answer to
/// the other's duplicate would be duplicated in turn, without end.
fn resend_due(cx: &Cx<'_>, now: Instant, sent_at: &mut Option<Instant>) -> bool {
    let guard = (cx.ecfg.retransmit_base / 2).min(Duration::from_secs(1));
    if sent_at.is_some_and(|t| now < t + guard) {
        return false;
    }
    *sent_at = Some(now);
    true
}

fn nonce(cx: &mut Cx<'_>) -> Vec<u8> {
    let mut n = vec![0u8; 32];
    cx.io.rng.fill(&mut n);
    n
}

fn mode_name(m: V1Mode) -> &'static str {
    match m {
        V1Mode::Main => "Main Mode",
        V1Mode::Aggressive => "Aggressive Mode",
    }
}

pub(crate) fn v1_id(i: &Identity) -> Id {
    match i {
        Identity::Ipv4(a) => Id::ipv4(*a),
        Identity::Fqdn(n) => Id::fqdn(n),
    }
}

pub(crate) fn id_matches(i: &Identity, id: &Id) -> bool {
    match i {
        Identity::Ipv4(a) => id.id_type == id_type::IPV4_ADDR && id.data == a.octets(),
        Identity::Fqdn(n) => {
            id.id_type == id_type::FQDN && id.data.eq_ignore_ascii_case(n.as_bytes())
        }
    }
}

fn id_ts(id: &Id) -> Option<TsRange> {
    let (start, end) = id.ipv4_range()?;
    let (start_port, end_port) = if id.port == 0 {
        (0, u16::MAX)
    } else {
        (id.port, id.port)
    };
    Some(TsRange {
        ip_proto: id.protocol,
        start_port,
        end_port,
        start,
        end,
    })
}

fn host_ts(ip: IpAddr) -> Option<TsRange> {
    match ip {
        IpAddr::V4(a) => Some(TsRange::from_cidr(crate::Ipv4Cidr::new(a, 32))),
        IpAddr::V6(_) => None,
    }
}

fn cidrs(c: &[crate::Ipv4Cidr]) -> String {
    c.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Compares MACs in constant time.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
