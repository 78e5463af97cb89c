//! The endpoint: configured peers, IKE SAs by SPI, inputs, timers and outputs.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crypto::{DhPrivate, Random};

use crate::config::{IkeVersion, PeerConfig, PeerId};
use crate::encap::EspEncap;
use crate::event::{ChildSa, DeleteReason, Event, Level, Phase, Stats, Transmit};
use crate::offload::ExchangeDh;
use crate::sa::{Child, ChildState, IkeSa, Pending, Req, State, Task};
use crate::table::{Pacing, PeerIndex, SaTable};
use crate::wire::registry::{ExchangeType, NotifyType};
use crate::wire::{Message, Payload};

/// Engine-wide tunables.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointConfig {
    /// First retransmission timeout (RFC 7296 §2.1).
    pub retransmit_base: Duration,
    /// Multiplier per retransmission.
    pub retransmit_factor: f64,
    /// Retransmissions before giving up.
    pub retransmit_tries: u32,
    /// How long a responder keeps an IKE SA that saw only IKE_SA_INIT.
    pub half_open_timeout: Duration,
    /// Our IKE SAs to one peer address that may be in IKE_SA_INIT/IKE_AUTH at once;
    /// [`Endpoint::initiate`] queues the others (FIFO) until one completes or fails.
    pub max_initiating: usize,
    /// Raw ESP or ESP in UDP when no NAT is detected (see [`EspEncap`]; IKEv2 only).
    pub esp_encap: EspEncap,
    /// Half-open IKE SAs (IKE_SA_INIT answered, no IKE_AUTH yet) from which on the
    /// responder answers an IKE_SA_INIT without a valid COOKIE with one, keeping no
    /// state and computing no DH, until the initiator proves it gets our replies
    /// (RFC 7296 §2.6). 0: always; `usize::MAX`: never.
    pub cookie_threshold: usize,
    /// Half-open responder IKE SAs (IKEv2 waiting for IKE_AUTH, IKEv1 Main or
    /// Aggressive Mode not finished) from which on a request that would start another
    /// is dropped and counted ([`Stats::half_open_limited`](crate::Stats)); strongSwan's
    /// `charon.init_limit_half_open`. IKEv2 asks for COOKIEs first, so only an
    /// initiator that receives our replies reaches this; IKEv1 has no COOKIE exchange,
    /// so against a flood of forged Main Mode first messages this limit is what bounds
    /// the state they make. Each such SA times out after `half_open_timeout`.
    pub half_open_limit: usize,
    /// IKEv1 responder SAs still in Main or Aggressive Mode from one address, past
    /// which another first message from it is dropped (counted like the limit above).
    /// A flood forged with one peer's address then holds back that address only, not
    /// every tunnel's negotiations. IKEv2 needs none: from a forged address it never
    /// gets past the COOKIE. (strongSwan's `block_threshold`, 5 by default, counts
    /// both versions.)
    pub half_open_per_address: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        // strongSwan's defaults: 4 s, ×1.8, 5 retransmissions (≈165 s in total).
        Self {
            retransmit_base: Duration::from_secs(4),
            retransmit_factor: 1.8,
            retransmit_tries: 5,
            half_open_timeout: Duration::from_secs(30),
            // Enough to keep a peer's CPU busy over a WAN round trip, few enough that
            // a burst fits in its socket buffer and stays under COOKIE thresholds.
            max_initiating: 64,
            esp_encap: EspEncap::default(),
            // strongSwan's charon.cookie_threshold is 10. With DH off the control
            // thread an IKE SA is half-open for about one round trip, and one vpngw
            // peer starts up to `max_initiating` (64) at once: above that, a flood.
            cookie_threshold: 128,
            // One vpngw peer keeps at most `max_initiating` (64) per address in
            // negotiation: this is 64 such peers setting up at once. An IKEv1
            // responder SA holds about 2 KiB until it times out: 8 MiB at the limit.
            half_open_limit: 4096,
            // Twice what one vpngw peer starts at once (`max_initiating`).
            half_open_per_address: 128,
        }
    }
}

/// Errors of the endpoint's commands. Network input never produces these: it is dropped
/// and counted in [`Stats`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no such peer {0}")]
    UnknownPeer(PeerId),
    #[error("peer {0} has no remote address (responder only)")]
    ResponderOnly(PeerId),
    #[error("peer {0} is already configured")]
    DuplicatePeer(PeerId),
    #[error("peer {0} has no established IKE SA")]
    NotEstablished(PeerId),
    #[error("crypto: {0}")]
    Crypto(#[from] crypto::Error),
}

/// Randomness, queues and counters shared by every SA.
pub(crate) struct Io {
    pub rng: Box<dyn Random>,
    /// Key pairs made ahead of time, off the thread that drives the endpoint.
    pub keys: Option<Box<dyn KeySource>>,
    /// Where IKE_SA_INIT's shared secrets are computed, if not on this thread.
    pub offload: Option<Box<dyn crate::DhOffload>>,
    /// The last [`crate::DhJob`]'s ticket.
    pub next_ticket: u64,
    pub transmits: VecDeque<Transmit>,
    pub events: VecDeque<Event>,
    pub stats: Stats,
    /// Inbound ESP SPIs in use, so that no two Child SAs share one.
    pub child_spis: HashSet<u32>,
    /// When a drop at a half-open limit was last logged as a warning.
    pub limit_warned_at: Option<Instant>,
    /// When each tunnel last wrote each kind of row that anyone at its peer's address
    /// can cause ([`Io::row_due`]).
    pub noted_at: HashMap<(PeerId, &'static str), Instant>,
}

/// How often a drop at a half-open limit is logged as a warning (the others only
/// count): often enough to explain a stall, seldom enough to survive a flood.
const LIMIT_WARN_EVERY: Duration = Duration::from_secs(10);

/// How often one tunnel writes a row of one kind that anyone at its peer's address can
/// cause before authentication ([`Io::row_due`]): a real peer's attempt shows at once,
/// a flood writes one row per kind and period instead of one per datagram.
pub(crate) const UNAUTHENTICATED_ROW_EVERY: Duration = Duration::from_secs(10);

/// Past this many entries, [`Io::noted_at`] forgets the ones older than
/// [`UNAUTHENTICATED_ROW_EVERY`] (those of removed tunnels included).
const NOTED_AT_PRUNE: usize = 4096;

impl Io {
    /// Counts a first message (`what`) dropped at a half-open limit; `total` and `from`
    /// are the half-open SAs in all and from the sender's address.
    pub fn half_open_limited(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        what: &str,
        total: usize,
        from: Option<usize>,
    ) {
        self.stats.half_open_limited += 1;
        if self
            .limit_warned_at
            .is_some_and(|t| now < t + LIMIT_WARN_EVERY)
        {
            tracing::debug!(%remote, total, ?from, "{what} dropped: half-open limit");
            return;
        }
        self.limit_warned_at = Some(now);
        tracing::warn!(
            %remote,
            half_open = total,
            half_open_from_address = ?from,
            dropped_so_far = self.stats.half_open_limited,
            "{what} dropped: too many IKE SAs half-open (a flood of first messages, or more \
             peers setting up at once than --ike-half-open-limit or, for IKEv1 from one \
             address, --ike-half-open-per-address allow); the peer will retransmit"
        );
    }

    /// A first message (IKE_SA_INIT, IKEv1 Main or Aggressive Mode message 1) refused
    /// before any SA exists: no acceptable proposal, the other IKE version or mode, an
    /// ID no tunnel expects. Anyone who can send from an address a tunnel accepts can
    /// send these, so each is counted ([`Stats::refused`]) but reported as `peer`'s
    /// failure — a log row the node stores — at most once per
    /// [`UNAUTHENTICATED_ROW_EVERY`]; the others go to the debug log.
    pub fn refuse(&mut self, now: Instant, peer: PeerId, phase: Phase, reason: String) {
        self.stats.refused += 1;
        if self.row_due(now, peer, "refused") {
            self.fail(Some(peer), phase, reason);
        } else {
            tracing::debug!(
                ?peer,
                refused = self.stats.refused,
                "refused again: {reason}"
            );
        }
    }

    /// Whether `peer`'s tunnel may write a row of kind `what` that anyone at its peer's
    /// address can cause (a refused, malformed or merely started first message, a
    /// responder SA that never finished): not if it wrote one less than
    /// [`UNAUTHENTICATED_ROW_EVERY`] ago.
    pub fn row_due(&mut self, now: Instant, peer: PeerId, what: &'static str) -> bool {
        if self
            .noted_at
            .get(&(peer, what))
            .is_some_and(|t| now < *t + UNAUTHENTICATED_ROW_EVERY)
        {
            return false;
        }
        if self.noted_at.len() >= NOTED_AT_PRUNE {
            self.noted_at
                .retain(|_, t| now < *t + UNAUTHENTICATED_ROW_EVERY);
        }
        self.noted_at.insert((peer, what), now);
        true
    }

    /// [`Io::log`] for a row anyone at the peer's address can cause: at most one of
    /// each `event` per tunnel and [`UNAUTHENTICATED_ROW_EVERY`], the rest to the debug
    /// log.
    pub fn log_unauthenticated(
        &mut self,
        now: Instant,
        peer: PeerId,
        level: Level,
        event: &'static str,
        message: String,
    ) {
        if self.row_due(now, peer, event) {
            self.log(Some(peer), level, event, message);
        } else {
            tracing::debug!(?peer, event, "{message} (row written less than 10 s ago)");
        }
    }

    pub fn send(&mut self, local: SocketAddr, remote: SocketAddr, payload: Vec<u8>) {
        self.stats.datagrams_out += 1;
        self.transmits.push_back(Transmit {
            local,
            remote,
            payload,
        });
    }

    pub fn event(&mut self, e: Event) {
        self.events.push_back(e);
    }

    /// Logs `ts_narrowed` (see [`crate::ts::narrowed_note`]) if the new Child SA
    /// covers less than `cfg`'s subnets.
    pub fn warn_if_narrowed(&mut self, peer: PeerId, child: &ChildSa, cfg: &PeerConfig) {
        let (l, r) = (&child.local_ts, &child.remote_ts);
        if let Some(note) = crate::ts::narrowed_note(l, r, &cfg.local_ts, &cfg.remote_ts) {
            self.log(Some(peer), Level::Warn, "ts_narrowed", note);
        }
    }

    pub fn log(
        &mut self,
        peer: Option<PeerId>,
        level: Level,
        event: &'static str,
        message: String,
    ) {
        match level {
            Level::Debug => tracing::debug!(?peer, event, "{message}"),
            Level::Info => tracing::info!(?peer, event, "{message}"),
            Level::Warn => tracing::warn!(?peer, event, "{message}"),
            Level::Error => tracing::error!(?peer, event, "{message}"),
        }
        if let Some(peer) = peer {
            self.events.push_back(Event::Log {
                peer,
                level,
                event,
                message,
            });
        }
    }

    pub fn fail(&mut self, peer: Option<PeerId>, phase: Phase, reason: String) {
        self.log(
            peer,
            Level::Error,
            if phase == Phase::Phase1 {
                "phase1_failed"
            } else {
                "phase2_failed"
            },
            reason.clone(),
        );
        if let Some(peer) = peer {
            self.events.push_back(Event::NegotiationFailed {
                peer,
                phase,
                reason,
            });
        }
    }

    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.rng.fill(&mut b);
        u32::from_be_bytes(b)
    }

    pub fn nonce(&mut self) -> Vec<u8> {
        // RFC 7296 §2.10: at least 128 bits and half the PRF key size; 32 bytes
        // covers every PRF here.
        let mut n = vec![0u8; 32];
        self.rng.fill(&mut n);
        n
    }

    /// A new ticket for a [`crate::DhJob`], matching its result to the exchange that
    /// waits for it and not to an earlier one in its place.
    pub(crate) fn next_ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    pub fn child_spi(&mut self) -> u32 {
        loop {
            let s = self.u32();
            // SPIs 1–255 are reserved (RFC 4303 §2.1).
            if s >= 256 && self.child_spis.insert(s) {
                return s;
            }
        }
    }

    /// A fresh key pair for one exchange: from the key source when it has one ready,
    /// else drawn here. RFC 7296 §2.12 permits reusing exponentials; we never do, so
    /// every exchange keeps perfect forward secrecy.
    pub fn dh(&mut self, group: crypto::DhGroup) -> Result<DhPrivate, crypto::Error> {
        if let Some(key) = self.keys.as_mut().and_then(|k| k.take(group)) {
            debug_assert_eq!(key.group(), group);
            if key.group() == group {
                self.stats.dh_keys_ready += 1;
                return Ok(key);
            }
        }
        self.stats.dh_keys_inline += 1;
        DhPrivate::generate(group, &mut *self.rng)
    }
}

/// Diffie-Hellman key pairs generated ahead of time (a pool filled by another thread):
/// making a key pair is one modular exponentiation, half of the DH work of an exchange,
/// and needs nothing from the exchange, so it need not run on the thread that drives
/// the endpoint (issue 8: DH off the protocol thread).
pub trait KeySource: Send {
    /// A key pair of `group` never handed out before, or `None` when none is ready
    /// (the endpoint then makes one itself).
    fn take(&mut self, group: crypto::DhGroup) -> Option<DhPrivate>;
}

/// A sans-IO IKEv2 endpoint: see the crate documentation for the driving contract.
pub struct Endpoint {
    pub(crate) cfg: EndpointConfig,
    /// Shared with the IKE SAs made for the peer: one copy per peer, not one per SA.
    pub(crate) peers: BTreeMap<PeerId, Arc<PeerConfig>>,
    /// The IKEv2 peers of `peers` by address and remote identity.
    pub(crate) index: PeerIndex,
    /// IKE SAs by our SPI, indexed by peer and by deadline.
    pub(crate) sas: SaTable,
    /// Our initiations per peer address (see [`EndpointConfig::max_initiating`]).
    pub(crate) pacing: Pacing,
    /// Responder: (peer address, SPIi) → our SPI, to answer retransmitted IKE_SA_INITs.
    pub(crate) half_open: HashMap<(SocketAddr, u64), u64>,
    /// Responder: the secrets of IKE_SA_INIT cookies (RFC 7296 §2.6).
    pub(crate) cookies: crate::cookie::CookieJar,
    pub(crate) io: Io,
    /// The IKEv1 engine's SAs (RFC 2409); see [`crate::v1`].
    pub(crate) v1: crate::v1::engine::Engine,
    /// Peers that refused a Child SA in IKE_AUTH after announcing RFC 6023 support
    /// (strongSwan's `childless = force`): IKE_AUTH leaves it out for them from then
    /// on, as long as they keep announcing that support.
    pub(crate) childless: HashSet<PeerId>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("peers", &self.peers.len())
            .field("ike_sas", &self.sas.len())
            .finish()
    }
}

impl Endpoint {
    pub fn new(cfg: EndpointConfig, rng: Box<dyn Random>) -> Self {
        Self {
            cfg,
            peers: BTreeMap::new(),
            index: PeerIndex::default(),
            sas: SaTable::default(),
            pacing: Pacing::default(),
            half_open: HashMap::new(),
            cookies: crate::cookie::CookieJar::default(),
            v1: Default::default(),
            childless: HashSet::new(),
            io: Io {
                rng,
                keys: None,
                offload: None,
                next_ticket: 0,
                transmits: VecDeque::new(),
                events: VecDeque::new(),
                stats: Stats::default(),
                child_spis: HashSet::new(),
                limit_warned_at: None,
                noted_at: HashMap::new(),
            },
        }
    }

    /// Where fresh DH key pairs come from (see [`KeySource`]); without one, each is
    /// made when an exchange needs it.
    pub fn set_key_source(&mut self, keys: Box<dyn KeySource>) {
        self.io.keys = Some(keys);
    }

    // ---- getters -------------------------------------------------------------------

    pub fn stats(&self) -> Stats {
        self.io.stats
    }

    /// Responder IKE SAs that answered an IKE_SA_INIT and wait for the peer's IKE_AUTH
    /// (the count [`EndpointConfig::cookie_threshold`] is compared with).
    pub fn half_open_count(&self) -> usize {
        self.sas.unidentified_len()
    }

    /// Half-open responder SAs of both versions (the count
    /// [`EndpointConfig::half_open_limit`] is compared with).
    pub fn half_open_total(&self) -> usize {
        self.sas.unidentified_len() + self.v1.half_open_len()
    }

    pub fn peer(&self, peer: PeerId) -> Option<&PeerConfig> {
        self.peers.get(&peer).map(|c| &**c)
    }

    /// The established IKE SAs of a peer as (SPIi, SPIr).
    pub fn ike_sas(&self, peer: PeerId) -> Vec<(u64, u64)> {
        if self.is_v1(peer) {
            return self.v1_ike_sas(peer);
        }
        self.sas
            .of_peer(peer)
            .map(|(_, s)| s)
            .filter(|s| s.established() && !s.dead && s.linger_until.is_none())
            .map(|s| (s.spi_i, s.spi_r))
            .collect()
    }

    /// The installed Child SAs of a peer.
    pub fn child_sas(&self, peer: PeerId) -> Vec<ChildSa> {
        if self.is_v1(peer) {
            return self.v1_child_sas(peer);
        }
        self.sas
            .of_peer(peer)
            .map(|(_, s)| s)
            .filter(|s| s.linger_until.is_none())
            .flat_map(|s| s.children.iter().map(|c| c.sa.clone()))
            .collect()
    }

    /// Starts another IKE SA with `peer` beside the established one, as a peer that
    /// re-authenticates make-before-break does (RFC 7296 §2.8.3; strongSwan's
    /// `make_before_break`). vpngw itself renews IKEv2 SAs by rekeying; this lets
    /// engine tests play such a peer.
    #[cfg(feature = "testing")]
    pub fn initiate_beside(&mut self, now: Instant, peer: PeerId) -> Result<(), Error> {
        let cfg = self
            .peers
            .get(&peer)
            .ok_or(Error::UnknownPeer(peer))?
            .clone();
        self.start_init(now, peer, cfg)
    }

    /// [`Self::initiate_beside`] without a Child SA in IKE_AUTH (RFC 6023), as a peer
    /// with strongSwan's `childless = force` re-authenticates; the Child SA follows
    /// with CREATE_CHILD_SA if the responder announced support.
    #[cfg(feature = "testing")]
    pub fn initiate_childless_beside(&mut self, now: Instant, peer: PeerId) -> Result<(), Error> {
        self.childless.insert(peer);
        self.initiate_beside(now, peer)
    }

    /// Deletes the IKE SA `spis` (initiator, responder) of `peer` and its Child SAs,
    /// telling the peer: the last step of a make-before-break re-authentication.
    #[cfg(feature = "testing")]
    pub fn delete_ike_sa(&mut self, now: Instant, peer: PeerId, spis: (u64, u64)) -> bool {
        let Some(spi) = self
            .sas
            .of_peer(peer)
            .find(|(_, s)| (s.spi_i, s.spi_r) == spis)
            .map(|(k, _)| k)
        else {
            return false;
        };
        let Some(mut sa) = self.sas.remove(&spi) else {
            return false;
        };
        self.send_delete_ike_once(now, &mut sa);
        self.remove_sa(&mut sa, DeleteReason::LocalRequest);
        self.put_back(sa);
        true
    }

    /// The Child SAs of `peer` that are neither replaced by a rekey nor being deleted:
    /// what carries the tunnel once the replaced ones are gone.
    #[cfg(feature = "testing")]
    pub fn current_child_sas(&self, peer: PeerId) -> Vec<ChildSa> {
        use crate::sa::{Child, ChildState};
        let current = |c: &Child| matches!(c.state, ChildState::Installed | ChildState::Rekeying);
        if self.is_v1(peer) {
            return self.v1.children(peer, current);
        }
        self.sas
            .of_peer(peer)
            .map(|(_, s)| s)
            .filter(|s| s.linger_until.is_none())
            .flat_map(|s| {
                s.children
                    .iter()
                    .filter(|c| current(c))
                    .map(|c| c.sa.clone())
            })
            .collect()
    }

    // ---- commands ------------------------------------------------------------------

    pub fn add_peer(&mut self, peer: PeerId, cfg: PeerConfig) -> Result<(), Error> {
        if self.peers.contains_key(&peer) {
            return Err(Error::DuplicatePeer(peer));
        }
        self.index.add(peer, &cfg);
        self.peers.insert(peer, Arc::new(cfg));
        Ok(())
    }

    /// Replaces a peer's configuration. If it changed, its SAs are deleted and, when the
    /// peer has a remote address, negotiation restarts with the new settings.
    pub fn update_peer(
        &mut self,
        now: Instant,
        peer: PeerId,
        cfg: PeerConfig,
    ) -> Result<(), Error> {
        let old = self.peers.get(&peer).ok_or(Error::UnknownPeer(peer))?;
        if **old == cfg {
            return Ok(());
        }
        let had = self.delete_peer_sas(now, peer);
        if let Some(old) = self.peers.insert(peer, Arc::new(cfg.clone())) {
            self.index.remove(peer, &old);
        }
        self.index.add(peer, &cfg);
        self.io.log(
            Some(peer),
            Level::Info,
            "config_updated",
            "configuration changed; renegotiating".into(),
        );
        if had && cfg.remote_addr().is_some() {
            self.initiate(now, peer)?;
        }
        Ok(())
    }

    /// Removes a peer, deleting its SAs with an INFORMATIONAL Delete.
    pub fn remove_peer(&mut self, now: Instant, peer: PeerId) -> Result<(), Error> {
        let cfg = self.peers.remove(&peer).ok_or(Error::UnknownPeer(peer))?;
        self.index.remove(peer, &cfg);
        self.childless.remove(&peer);
        self.delete_peer_sas(now, peer);
        Ok(())
    }

    /// Starts IKE_SA_INIT with the peer (no-op if an IKE SA exists or is being made).
    /// With [`EndpointConfig::max_initiating`] initiations to the peer's address in
    /// flight, it waits its turn; it starts from a later `handle_*` call.
    pub fn initiate(&mut self, now: Instant, peer: PeerId) -> Result<(), Error> {
        let cfg = self
            .peers
            .get(&peer)
            .ok_or(Error::UnknownPeer(peer))?
            .clone();
        let live = if cfg.version == IkeVersion::V1 {
            self.v1.active(peer)
        } else {
            self.sas
                .of_peer(peer)
                .any(|(_, s)| !s.dead && !s.retiring && s.linger_until.is_none())
        };
        if live || self.pacing.is_queued(peer) {
            return Ok(());
        }
        let remote = cfg.remote_addr().ok_or(Error::ResponderOnly(peer))?;
        if !self
            .pacing
            .admit(remote.ip(), peer, self.cfg.max_initiating)
        {
            tracing::debug!(%peer, %remote, queued = self.pacing.queued(), "initiation queued");
            return Ok(());
        }
        if cfg.version == IkeVersion::V1 {
            return self.v1_initiate(now, peer, cfg);
        }
        self.start_init(now, peer, cfg)
    }

    /// Tears down the peer's SAs (with Delete) and renegotiates if we can initiate.
    pub fn reset(&mut self, now: Instant, peer: PeerId) -> Result<(), Error> {
        let cfg = self
            .peers
            .get(&peer)
            .ok_or(Error::UnknownPeer(peer))?
            .clone();
        self.delete_peer_sas(now, peer);
        self.io.log(
            Some(peer),
            Level::Info,
            "reset",
            "tunnel reset requested".into(),
        );
        if cfg.version == IkeVersion::V1 && cfg.remote_addr().is_some() {
            self.v1_initiate(now, peer, cfg)
        } else if cfg.remote_addr().is_some() {
            self.start_init(now, peer, cfg)
        } else {
            Ok(())
        }
    }

    /// Rekeys the peer's Child SAs now (normally driven by lifetimes).
    pub fn rekey_child(&mut self, now: Instant, peer: PeerId) -> Result<(), Error> {
        if self.is_v1(peer) {
            return self.v1_rekey_child(now, peer);
        }
        let spi = self.established_spi(peer)?;
        if let Some(mut sa) = self.sas.remove(&spi) {
            let spis: Vec<u32> = sa
                .children
                .iter()
                .filter(|c| c.state == ChildState::Installed)
                .map(|c| c.sa.spi_in)
                .collect();
            for s in spis {
                sa.tasks.push_back(Task::RekeyChild(s));
            }
            self.next_task(now, &mut sa);
            self.sas.insert(spi, sa);
        }
        Ok(())
    }

    /// Negotiates the tunnel's Child SA on the peer's established IKE SA if that has
    /// none and none is under way (the peer deleted it): CREATE_CHILD_SA without
    /// REKEY_SA (RFC 7296 §1.3.1), or an IKEv1 Quick Mode on the ISAKMP SA. The
    /// IKE SA, its authentication and its DPD stay; [`Endpoint::reset`] would replace
    /// them. `NotEstablished` without an established IKE SA.
    pub fn create_child(&mut self, now: Instant, peer: PeerId) -> Result<(), Error> {
        if self.is_v1(peer) {
            return self.v1_create_child(now, peer);
        }
        let spi = self.established_spi(peer)?;
        if let Some(mut sa) = self.sas.remove(&spi) {
            let under_way = sa.tasks.contains(&Task::CreateChild)
                || matches!(
                    sa.pending.as_ref().map(|p| &p.kind),
                    Some(Req::CreateChild { rekey: None, .. })
                );
            if !under_way {
                sa.tasks.push_back(Task::CreateChild);
                self.next_task(now, &mut sa);
            }
            self.sas.insert(spi, sa);
        }
        Ok(())
    }

    /// Rekeys the peer's IKE SA now (normally driven by lifetimes).
    pub fn rekey_ike(&mut self, now: Instant, peer: PeerId) -> Result<(), Error> {
        if self.is_v1(peer) {
            return self.v1_rekey_ike(now, peer);
        }
        let spi = self.established_spi(peer)?;
        if let Some(mut sa) = self.sas.remove(&spi) {
            sa.tasks.push_back(Task::RekeyIke);
            self.next_task(now, &mut sa);
            self.sas.insert(spi, sa);
        }
        Ok(())
    }

    // ---- inputs --------------------------------------------------------------------

    /// Feeds one received IKE message (port 4500: without the non-ESP marker).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        self.io.stats.datagrams_in += 1;
        self.dispatch(now, local, remote, data);
    }

    /// [`Endpoint::handle_datagram`] past the counter (also for held requests).
    pub(crate) fn dispatch(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        if crate::v1::is_v1(data) {
            self.v1_datagram(now, local, remote, data);
            self.start_queued(now);
            return;
        }
        let msg = match Message::decode(data) {
            Ok(m) => m,
            Err(e) => {
                self.io.stats.malformed += 1;
                tracing::debug!(%remote, error = %e, "dropping undecodable IKE message");
                return;
            }
        };
        let h = msg.header;
        if h.exchange == ExchangeType::IKE_SA_INIT && !h.flags.response() {
            if h.spi_r == 0 && h.flags.initiator() && h.message_id == 0 {
                self.handle_init_request(now, local, remote, data, msg);
            } else {
                self.io.stats.unexpected += 1;
            }
            return;
        }
        let our_spi = if h.flags.initiator() {
            h.spi_r
        } else {
            h.spi_i
        };
        let Some(mut sa) = self.sas.remove(&our_spi) else {
            self.io.stats.unknown_spi += 1;
            return;
        };
        let other_ok = if sa.initiator {
            h.spi_r == sa.spi_r
                || (h.exchange == ExchangeType::IKE_SA_INIT
                    && matches!(sa.state, State::ExpectInitResponse(_)))
        } else {
            h.spi_i == sa.spi_i
        };
        if sa.initiator == h.flags.initiator() || !other_ok {
            self.io.stats.unexpected += 1;
        } else if let Some(k) = sa.keying.as_mut() {
            // The keys to open it are still being computed (`offload.rs`): a request
            // (the peer's IKE_AUTH) waits for them; nothing else is due yet.
            if h.flags.response() {
                self.io.stats.unexpected += 1;
            } else {
                k.hold(local, remote, data);
                self.io.stats.dh_held += 1;
            }
        } else if h.flags.response() {
            self.handle_response(now, &mut sa, local, remote, data, msg);
        } else {
            self.handle_request(now, &mut sa, local, remote, data, msg);
        }
        self.put_back(sa);
        self.start_queued(now);
    }

    /// Tells the engine that ESP traffic arrived from the peer: like strongSwan's
    /// `dpddelay`, liveness checks are only sent after that long without any traffic.
    pub fn handle_child_activity(&mut self, now: Instant, peer: PeerId) {
        self.v1_child_activity(now, peer);
        let spis: Vec<u64> = self
            .sas
            .of_peer(peer)
            .filter(|(_, s)| s.established())
            .map(|(spi, _)| spi)
            .collect();
        for spi in spis {
            if let Some(mut sa) = self.sas.get_mut(&spi) {
                sa.last_rx = sa.last_rx.max(now);
            }
        }
    }

    /// Runs everything due at `now`: retransmissions, rekeys, DPD, expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        for spi in self.sas.due(now) {
            if let Some(mut sa) = self.sas.remove(&spi) {
                self.sa_timers(now, &mut sa);
                self.put_back(sa);
            }
        }
        self.v1_timeout(now);
        self.start_queued(now);
    }

    // ---- outputs -------------------------------------------------------------------

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.io.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.io.events.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sas
            .next_timeout()
            .into_iter()
            .chain(self.v1_poll_timeout())
            .min()
    }

    // ---- internals -----------------------------------------------------------------

    /// [`Event::Unanswered`] from the second retransmission of an exchange that
    /// brings the tunnel up on (IKEv2: about 11 s after the first send; strongSwan's
    /// schedule), with `hint` on what to check.
    pub(crate) fn unanswered(
        &mut self,
        peer: PeerId,
        remote: SocketAddr,
        what: &str,
        retransmissions: u32,
        hint: &str,
    ) {
        if retransmissions < 2 {
            return;
        }
        self.io.event(Event::Unanswered {
            peer,
            reason: format!(
                "no answer yet from {remote} to {what} (sent {} times){hint}",
                retransmissions + 1
            ),
        });
    }

    fn established_spi(&self, peer: PeerId) -> Result<u64, Error> {
        self.sas
            .of_peer(peer)
            .find(|(_, s)| s.established() && !s.retiring && s.linger_until.is_none())
            .map(|(k, _)| k)
            .ok_or(Error::NotEstablished(peer))
    }

    pub(crate) fn put_back(&mut self, mut sa: IkeSa) {
        if let Some(ip) = sa.paced.filter(|_| sa.dead || sa.established()) {
            sa.paced = None;
            self.pacing.finished(ip);
        }
        if sa.dead {
            if let Some(k) = sa.half_open_key
                && self.half_open.get(&k) == Some(&sa.our_spi())
            {
                self.half_open.remove(&k);
            }
            for c in &sa.children {
                self.io.child_spis.remove(&c.sa.spi_in);
            }
        } else {
            self.sas.insert(sa.our_spi(), sa);
        }
    }

    /// Starts the initiations that waited for a slot (see `Pacing`).
    pub(crate) fn start_queued(&mut self, now: Instant) {
        while let Some(peer) = self.pacing.next_ready(self.cfg.max_initiating) {
            let Some(cfg) = self.peers.get(&peer).cloned() else {
                continue; // removed while it waited
            };
            let live = self
                .sas
                .of_peer(peer)
                .any(|(_, s)| !s.dead && !s.retiring && s.linger_until.is_none());
            let started = match cfg.version {
                IkeVersion::V1 => self.v1_initiate(now, peer, cfg),
                IkeVersion::V2 if !live => self.start_init(now, peer, cfg),
                IkeVersion::V2 => Ok(()),
            };
            if let Err(e) = started {
                tracing::warn!(%peer, error = %e, "queued initiation failed");
            }
        }
    }

    pub(crate) fn new_ike_spi(&mut self) -> u64 {
        loop {
            let mut b = [0u8; 8];
            self.io.rng.fill(&mut b);
            let s = u64::from_be_bytes(b);
            if s != 0 && !self.sas.contains_key(&s) {
                return s;
            }
        }
    }

    /// Deletes every SA of a peer, telling the peer; returns whether there were any.
    fn delete_peer_sas(&mut self, now: Instant, peer: PeerId) -> bool {
        let v1 = self.v1_delete_peer(peer);
        // Half-open responder SAs that can only be this peer's go too.
        let half_open = self
            .sas
            .unidentified()
            .filter(|(_, s)| s.candidate == Some(peer) && s.sole_candidate);
        let spis: Vec<u64> = self
            .sas
            .of_peer(peer)
            .chain(half_open)
            .map(|(k, _)| k)
            .collect();
        let any = !spis.is_empty();
        for spi in spis {
            if let Some(mut sa) = self.sas.remove(&spi) {
                if sa.established() && sa.linger_until.is_none() {
                    self.send_delete_ike_once(now, &mut sa);
                }
                self.remove_sa(&mut sa, DeleteReason::LocalRequest);
                self.put_back(sa);
            }
        }
        self.start_queued(now);
        any || v1
    }

    fn is_v1(&self, peer: PeerId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|c| c.version == IkeVersion::V1)
    }

    /// Removes an SA, reporting its Child SAs and itself as deleted.
    pub(crate) fn remove_sa(&mut self, sa: &mut IkeSa, reason: DeleteReason) {
        let reason = if sa.duplicate {
            DeleteReason::Duplicate
        } else {
            reason
        };
        if let Some(peer) = sa.peer {
            for c in sa.children.drain(..) {
                self.io.child_spis.remove(&c.sa.spi_in);
                self.io.event(Event::ChildSaDeleted {
                    peer,
                    spi_in: c.sa.spi_in,
                    spi_out: c.sa.spi_out,
                });
            }
            if sa.established() && sa.linger_until.is_none() {
                self.io.event(Event::IkeSaDeleted {
                    peer,
                    spi_i: sa.spi_i,
                    spi_r: sa.spi_r,
                    reason,
                });
            }
        }
        sa.dead = true;
    }

    /// Runs the timers of one SA.
    fn sa_timers(&mut self, now: Instant, sa: &mut IkeSa) {
        if let Some(l) = sa.linger_until {
            if now >= l {
                sa.dead = true;
            }
            return;
        }
        if sa.half_open_until.is_some_and(|t| now >= t) {
            sa.half_open_until = None;
            if sa.initiator && sa.keying.is_some() {
                self.io.fail(
                    sa.peer,
                    Phase::Phase1,
                    "the Diffie-Hellman computation did not finish in time".into(),
                );
                sa.dead = true;
                return;
            }
            if !sa.established() {
                let msg = format!(
                    "IKE SA with {} never completed IKE_AUTH; dropped{}",
                    sa.remote,
                    moved_to_4500_hint(sa.udp_encap())
                );
                match sa.candidate {
                    Some(p) => {
                        self.io
                            .log_unauthenticated(now, p, Level::Warn, "half_open_timeout", msg);
                    }
                    None => tracing::warn!("{msg}"),
                }
                sa.dead = true;
                return;
            }
        }
        if self.pending_timers(now, sa) {
            return;
        }
        if sa.retry_at.is_some_and(|t| now >= t) {
            sa.retry_at = None;
        }
        if sa.retire_at.is_some_and(|t| now >= t) {
            sa.retire_at = None;
            if sa.duplicate && sa.pending.is_none() {
                // The peer should have deleted its redundant IKE SA by now (a peer
                // that does not resolve duplicates never will): delete it ourselves.
                sa.tasks.push_back(Task::DeleteIke);
            }
            let target = sa
                .rekeyed_to
                .filter(|n| self.sas.get(n).is_some_and(|s| !s.retiring && !s.dead));
            if let Some(new_spi) = target {
                self.transfer_children(now, sa, new_spi);
                self.io.log(
                    sa.peer,
                    Level::Warn,
                    "ike_rekey",
                    "peer never deleted the rekeyed IKE SA; dropping it".into(),
                );
                self.remove_sa(sa, DeleteReason::Rekeyed);
                return;
            }
        }
        if sa.established() && !sa.retiring {
            if sa.expire_at.is_some_and(|t| now >= t) {
                self.io.log(
                    sa.peer,
                    Level::Warn,
                    "ike_expired",
                    "IKE SA reached its lifetime without a successful rekey; deleting".into(),
                );
                self.send_delete_ike_once(now, sa);
                self.remove_sa(sa, DeleteReason::LocalRequest);
                return;
            }
            if sa.rekey_at.is_some_and(|t| now >= t) {
                sa.rekey_at = None;
                sa.tasks.push_back(Task::RekeyIke);
            }
            let mut expired = Vec::new();
            for c in &mut sa.children {
                if c.expire_at.is_some_and(|t| now >= t) {
                    c.expire_at = None;
                    c.rekey_at = None;
                    expired.push(c.sa.spi_in);
                } else if c.rekey_at.is_some_and(|t| now >= t) {
                    c.rekey_at = None;
                    if c.state == ChildState::Installed {
                        sa.tasks.push_back(Task::RekeyChild(c.sa.spi_in));
                    }
                }
            }
            if !expired.is_empty() {
                self.io.log(
                    sa.peer,
                    Level::Warn,
                    "child_expired",
                    format!(
                        "Child SA {} reached its lifetime; deleting",
                        spis_hex(&expired)
                    ),
                );
                sa.tasks.push_front(Task::DeleteChildren(expired));
            }
            if let Some(i) = sa.cfg.dpd_interval
                && sa.pending.is_none()
                && sa.tasks.is_empty()
                && now >= sa.last_rx + i
            {
                sa.tasks.push_back(Task::Dpd);
            }
        }
        self.next_task(now, sa);
    }

    /// Retransmission and DPD deadlines; returns true if the SA died.
    fn pending_timers(&mut self, now: Instant, sa: &mut IkeSa) -> bool {
        let Some(p) = &mut sa.pending else {
            return false;
        };
        let dpd_expired = matches!(p.kind, Req::Dpd) && now >= p.first_sent + sa.cfg.dpd_timeout;
        if !dpd_expired && now < p.next_retx {
            return false;
        }
        // The answer is here; only its shared secret is still being computed elsewhere
        // (`offload.rs`). The retransmission schedule bounds that wait.
        let computing = ExchangeDh::waits(&sa.exchange_dh, p.msg_id, true);
        if !dpd_expired && p.retx < self.cfg.retransmit_tries {
            p.retx += 1;
            let factor = self
                .cfg
                .retransmit_factor
                .powi(i32::try_from(p.retx).unwrap_or(i32::MAX));
            p.next_retx = now + self.cfg.retransmit_base.mul_f64(factor);
            if computing {
                return false;
            }
            self.io.stats.retransmits += 1;
            let (bytes, what, n) = (p.bytes.clone(), p.kind.name(), p.retx);
            // The exchanges a tunnel waits for to come up; a rekey or a liveness
            // check happens beside SAs that still carry it.
            let hint = match p.kind {
                Req::Init | Req::Auth => Some(unanswered_hint(
                    matches!(p.kind, Req::Init),
                    sa.local,
                    sa.remote,
                )),
                Req::CreateChild { rekey: None, .. } => Some(PHASE2_UNANSWERED.to_string()),
                _ => None,
            };
            self.io.log(
                sa.peer.or(sa.candidate),
                Level::Debug,
                "retransmit",
                format!("retransmitting {what} (try {n})"),
            );
            self.io.send(sa.local, sa.remote, bytes);
            if let (Some(hint), Some(peer)) = (hint, sa.peer) {
                self.unanswered(peer, sa.remote, what, n, &hint);
            }
            return false;
        }
        let what = p.kind.name();
        let retx = p.retx;
        let waited = now.saturating_duration_since(p.first_sent).as_secs();
        let dpd = matches!(p.kind, Req::Dpd);
        let peer = sa.peer;
        if computing {
            let phase = match p.kind {
                Req::RekeyIke { .. } => Phase::Phase1,
                _ => Phase::Phase2,
            };
            self.io.fail(
                peer,
                phase,
                format!(
                    "the Diffie-Hellman computation for {what} did not finish in time; \
                     deleting the IKE SA"
                ),
            );
            self.send_delete_ike_once(now, sa);
            self.remove_sa(sa, DeleteReason::LocalRequest);
            return true;
        }
        match p.kind {
            Req::Init | Req::Auth => {
                let hint = unanswered_hint(matches!(p.kind, Req::Init), sa.local, sa.remote);
                self.io.fail(
                    peer,
                    Phase::Phase1,
                    format!(
                        "peer {} did not respond to {what} ({retx} retransmissions){hint}",
                        sa.remote
                    ),
                );
                sa.dead = true;
            }
            Req::DeleteIke | Req::Notify => {
                let reason = if sa.retiring {
                    DeleteReason::Rekeyed
                } else {
                    DeleteReason::LocalRequest
                };
                self.remove_sa(sa, reason);
            }
            _ => {
                let reason = if dpd {
                    // RFC 7296 §2.4: an unanswered liveness check.
                    format!("DPD: peer {} did not answer for {waited} s", sa.remote)
                } else {
                    format!(
                        "peer {} did not answer {what} for {waited} s ({retx} retransmissions)",
                        sa.remote
                    )
                };
                self.io.log(
                    peer,
                    Level::Error,
                    "peer_dead",
                    format!("{reason}; declaring it dead"),
                );
                // PeerDead last, once the SAs are reported gone: it is the verdict a
                // driver shows an operator, not one more SA deletion (as in IKEv1).
                self.remove_sa(sa, DeleteReason::PeerDead);
                if let Some(peer) = peer {
                    self.io.event(Event::PeerDead { peer, reason });
                }
            }
        }
        true
    }

    /// Starts the next queued exchange if the window is free (RFC 7296 §2.3).
    pub(crate) fn next_task(&mut self, now: Instant, sa: &mut IkeSa) {
        while sa.pending.is_none()
            && sa.established()
            && !sa.dead
            && sa.linger_until.is_none()
            && sa.retry_at.is_none()
        {
            let Some(task) = sa.tasks.pop_front() else {
                return;
            };
            self.start_task(now, sa, task);
        }
    }

    /// Sends an encrypted request and makes it the outstanding one.
    pub(crate) fn send_request(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        exchange: ExchangeType,
        payloads: Vec<Payload>,
        kind: Req,
    ) {
        let Some(sk) = sa.sk() else { return };
        let msg_id = sa.next_msg_id;
        sa.next_msg_id = sa.next_msg_id.wrapping_add(1);
        let bytes = sk.seal(
            sa.header(exchange, false, msg_id),
            &payloads,
            &mut *self.io.rng,
        );
        self.io.send(sa.local, sa.remote, bytes.clone());
        sa.pending = Some(Box::new(Pending {
            msg_id,
            exchange,
            bytes,
            kind,
            first_sent: now,
            next_retx: now + self.cfg.retransmit_base,
            retx: 0,
        }));
    }

    /// Sends an encrypted response and caches it for retransmitted requests.
    pub(crate) fn send_response(
        &mut self,
        sa: &mut IkeSa,
        local: SocketAddr,
        remote: SocketAddr,
        exchange: ExchangeType,
        msg_id: u32,
        payloads: Vec<Payload>,
    ) {
        let Some(sk) = sa.sk() else { return };
        let bytes = sk.seal(
            sa.header(exchange, true, msg_id),
            &payloads,
            &mut *self.io.rng,
        );
        self.io.send(local, remote, bytes.clone());
        sa.last_response = Some((msg_id, bytes));
        sa.peer_msg_id = msg_id.wrapping_add(1);
    }

    /// Sends a Delete for the IKE SA without waiting for the answer (the SA is being
    /// removed locally anyway).
    pub(crate) fn send_delete_ike_once(&mut self, now: Instant, sa: &mut IkeSa) {
        sa.pending = None;
        self.send_request(
            now,
            sa,
            ExchangeType::INFORMATIONAL,
            vec![Payload::Delete(crate::wire::Delete::ike())],
            Req::DeleteIke,
        );
    }

    /// Installs a new Child SA with its lifetime timers.
    pub(crate) fn install_child(&mut self, now: Instant, sa: &mut IkeSa, child: ChildSa) {
        let lifetime = sa.cfg.child_lifetime;
        let soft = crate::sa::soft_lifetime(lifetime, self.io.u32());
        // Exactly one more slot: `push` on an empty Vec reserves four Child SAs (1.2 KiB)
        // where an IKE SA nearly always holds one (issue 8).
        sa.children.reserve_exact(1);
        sa.children.push(Child {
            sa: child,
            state: ChildState::Installed,
            rekey_at: soft.map(|d| now + d),
            expire_at: (!lifetime.is_zero()).then(|| now + lifetime),
            collision: None,
            installed: now,
            initiated: false,
            our_rekey: false,
        });
    }
}

pub(crate) fn spis_hex(spis: &[u32]) -> String {
    spis.iter()
        .map(|s| format!("{s:08x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn notify_name(n: NotifyType) -> String {
    n.name()
        .map_or_else(|| format!("notify {}", n.0), str::to_string)
}

/// What an unanswered Child SA negotiation on an established IKE SA (CREATE_CHILD_SA
/// without REKEY_SA, an IKEv1 Quick Mode that replaces none) points to.
pub(crate) const PHASE2_UNANSWERED: &str = ": the peer answered on this IKE SA before; it, \
     or the path to it, stopped answering since (its own log says whether the request \
     arrived); the IKE SA is declared dead after the last retransmission";

/// What to check when the peer never answered our first exchanges. Nothing at all:
/// reachability and the peer's configuration for our address. IKE_SA_INIT answered but
/// not IKE_AUTH on UDP 4500, where IKE moves once a NAT is detected (RFC 7296 §2.23):
/// the classic firewall that lets UDP 500 through and not 4500. IKEv1's Main Mode
/// messages 5 and 6 move the same way (RFC 3947 §4).
pub(crate) fn unanswered_hint(first: bool, local: SocketAddr, remote: SocketAddr) -> String {
    if first {
        format!(
            ": nothing came back from {}; check that the device is reachable there over \
             UDP 500 and 4500 (firewalls, ACLs) and has a connection for this gateway's \
             address {}",
            remote.ip(),
            local.ip()
        )
    } else if remote.port() == 4500 || local.port() == 4500 {
        format!(
            ": the peer answered on UDP 500, but nothing came back on UDP 4500, where IKE \
             moved because a NAT was detected (or encapsulation was forced); check that UDP \
             4500 is open both ways between {} and {}",
            local.ip(),
            remote.ip()
        )
    } else {
        ": the peer answered the first exchange but not this one; its own log says why it \
         dropped it"
            .to_string()
    }
}

/// For a responder whose peer went quiet after IKE moved to UDP 4500 (a NAT detected,
/// RFC 7296 §2.23, RFC 3947 §4): the same firewall as in [`unanswered_hint`], seen
/// from the other end.
pub(crate) fn moved_to_4500_hint(moved: bool) -> &'static str {
    if moved {
        " (a NAT was detected, so the peer was to send its next message to UDP 4500: \
         check that UDP 4500 is open both ways)"
    } else {
        ""
    }
}
