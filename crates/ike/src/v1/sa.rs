//! State of IKEv1 ISAKMP SAs (phase 1) and of their quick mode exchanges (phase 2).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crypto::{Cipher, DhGroup, DhPrivate, Encr, Integ};

use crate::config::{PeerConfig, PeerId, V1Mode};
use crate::endpoint::EndpointConfig;
use crate::event::ChildSa;
use crate::sa::Child;
use crate::ts::TsRange;
use crate::v1::keys::P1Keys;
use crate::v1::wire::RawPayload;

/// Where phase 1 is. `I`/`R` is our role, the number the message we wait for
/// (RFC 2409 §5: Main Mode messages 1–6, Aggressive Mode 1–3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum P1State {
    MmI2,
    MmR3,
    MmI4,
    MmR5,
    MmI6,
    AmI2,
    AmR3,
    Established,
}

impl P1State {
    pub fn waiting_for(self) -> &'static str {
        match self {
            Self::MmI2 => "Main Mode message 2",
            Self::MmR3 => "Main Mode message 3",
            Self::MmI4 => "Main Mode message 4",
            Self::MmR5 => "Main Mode message 5",
            Self::MmI6 => "Main Mode message 6",
            Self::AmI2 => "Aggressive Mode message 2",
            Self::AmR3 => "Aggressive Mode message 3",
            Self::Established => "nothing",
        }
    }
}

/// What the phase 1 hashes and keys are computed from, kept until it completes.
#[derive(Default)]
pub(crate) struct Hs {
    /// The body of the initiator's SA payload (`SAi_b`).
    pub sai_b: Vec<u8>,
    /// Boxed: a key pair is a few hundred bytes, and every SA carries an `Hs`.
    pub dh: Option<Box<DhPrivate>>,
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    pub gxi: Vec<u8>,
    pub gxr: Vec<u8>,
    /// Aggressive Mode responder: the body of the initiator's ID payload (`IDii_b`).
    pub idi_b: Vec<u8>,
    /// Main Mode responder, from message 3 until message 5: `g^xy`, to derive the keys
    /// of another tunnel's pre-shared key should message 5 name that tunnel's peer.
    pub gxy: Option<zeroize::Zeroizing<Vec<u8>>>,
}

/// The last message we sent and are waiting to have answered.
pub(crate) struct Retx {
    pub bytes: Vec<u8>,
    pub next: Instant,
    pub tries: u32,
    pub what: &'static str,
}

impl Retx {
    pub fn new(bytes: Vec<u8>, now: Instant, cfg: &EndpointConfig, what: &'static str) -> Self {
        Self {
            bytes,
            next: now + cfg.retransmit_base,
            tries: 0,
            what,
        }
    }

    /// Arms the next retransmission; false when the tries are used up.
    pub fn step(&mut self, now: Instant, cfg: &EndpointConfig) -> bool {
        if self.tries >= cfg.retransmit_tries {
            return false;
        }
        self.tries += 1;
        let f = cfg
            .retransmit_factor
            .powi(i32::try_from(self.tries).unwrap_or(i32::MAX));
        self.next = now + cfg.retransmit_base.mul_f64(f);
        true
    }
}

/// How long the Child SA a quick mode rekey of ours replaced is kept before we delete
/// it. The peer installs the new SA only when quick mode message 3 arrives (RFC 2409
/// §5.5), and may handle our Delete before it (strongSwan does, on another thread):
/// deleting at once would leave it with no SA for a moment, and a lost message 3 (resent
/// when its message 2 is retransmitted) for longer. Packets in flight on the old SA
/// still decrypt meanwhile.
pub(crate) fn rekeyed_grace(cfg: &EndpointConfig) -> Duration {
    cfg.retransmit_base * 2
}

/// How long a finished exchange is kept to answer retransmissions: the peer's
/// whole retransmission schedule.
pub(crate) fn linger(cfg: &EndpointConfig) -> Duration {
    let mut total = Duration::ZERO;
    for n in 0..=cfg.retransmit_tries {
        total += cfg
            .retransmit_base
            .mul_f64(cfg.retransmit_factor.powi(i32::try_from(n).unwrap_or(0)));
    }
    total
}

pub(crate) enum QmState {
    /// Initiator: QM1 sent.
    I2 {
        ni: Vec<u8>,
        dh: Option<Box<DhPrivate>>,
        spi_in: u32,
        local_ts: TsRange,
        remote_ts: TsRange,
        rekey_of: Option<u32>,
    },
    /// Responder: QM2 sent, the Child SA ready for QM3.
    R3 {
        ni: Vec<u8>,
        nr: Vec<u8>,
        child: Box<ChildSa>,
    },
    /// Responder: message 1 accepted, its PFS secret computed elsewhere
    /// (`crate::DhOffload`); message 2 goes out once it is ready.
    R2Keying {
        ticket: u64,
        /// Given up (the inbound SPI freed) if the secret has not come by then.
        until: Instant,
        answer: Box<QmAnswer>,
    },
    /// Initiator: message 2 accepted, its PFS secret computed elsewhere; message 3
    /// goes out and the Child SA is installed once it is ready.
    I2Keying {
        ticket: u64,
        until: Instant,
        accepted: Box<QmAccepted>,
    },
    /// Finished; kept to answer retransmissions.
    Done,
}

impl QmState {
    /// When a state waiting for its PFS secret gives up.
    pub fn keying_until(&self) -> Option<Instant> {
        match self {
            QmState::R2Keying { until, .. } | QmState::I2Keying { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// The inbound SPI this exchange holds, not yet in an installed Child SA.
    pub fn spi_in(&self) -> Option<u32> {
        match self {
            QmState::I2 { spi_in, .. } => Some(*spi_in),
            QmState::R3 { child, .. } => Some(child.spi_in),
            QmState::R2Keying { answer, .. } => Some(answer.terms.spi_in),
            QmState::I2Keying { accepted, .. } => Some(accepted.terms.spi_in),
            QmState::Done => None,
        }
    }
}

/// What both ends agreed in a Quick Mode: all a Child SA's keys need besides the PFS
/// secret (RFC 2409 §5.5).
pub(crate) struct QmTerms {
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    pub spi_in: u32,
    pub spi_out: u32,
    pub local_ts: TsRange,
    pub remote_ts: TsRange,
    pub lifetime: Duration,
}

/// A responder's Quick Mode message 2, ready but for the PFS secret.
pub(crate) struct QmAnswer {
    pub terms: QmTerms,
    /// Message 2's payloads, HASH(2) first.
    pub payloads: Vec<RawPayload>,
}

/// What an initiator took from Quick Mode message 2, waiting for the PFS secret.
pub(crate) struct QmAccepted {
    pub terms: QmTerms,
    pub rekey_of: Option<u32>,
}

/// One quick mode exchange, by message ID (RFC 2409 §5.5).
pub(crate) struct Qm {
    /// The CBC IV of this exchange: derived from phase 1, then chained.
    pub iv: Vec<u8>,
    pub state: QmState,
    pub last_sent: Option<Vec<u8>>,
    pub last_rcvd: Vec<u8>,
    pub retx: Option<Retx>,
    pub linger_until: Option<Instant>,
    /// When `last_sent` last went out (see `resend_due`).
    pub sent_at: Option<Instant>,
}

/// An outstanding liveness check (RFC 3706 §5).
pub(crate) struct Dpd {
    pub first_seq: u32,
    pub first_sent: Instant,
    pub next_send: Instant,
    pub sent: u32,
}

/// An ISAKMP SA and everything negotiated under it.
pub(crate) struct P1Sa {
    pub peer: PeerId,
    /// The tunnel's configuration, shared with the endpoint's peer table.
    pub cfg: Arc<PeerConfig>,
    pub initiator: bool,
    pub mode: V1Mode,
    pub cky_i: u64,
    pub cky_r: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The port `remote` had at message 1: with the cookie, the SA's key in the
    /// responder's map of first messages after a NAT-T float moved `remote`.
    pub first_port: u16,
    pub state: P1State,
    pub hs: Hs,
    pub suite: (Encr, Integ, DhGroup),
    pub keys: Option<P1Keys>,
    pub cipher: Option<Cipher>,
    /// Phase 1's CBC chain; once established, its last block, the seed of every
    /// phase 2 IV (RFC 2409 Appendix B).
    pub iv: Vec<u8>,
    pub p1_last_sent: Option<Vec<u8>>,
    pub p1_last_rcvd: Option<Vec<u8>>,
    pub p1_sent_at: Option<Instant>,
    pub retx: Option<Retx>,
    /// Boxed: a map leaf holds eleven values, and most SAs have none or one.
    pub qms: BTreeMap<u32, Box<Qm>>,
    /// Message IDs of informational exchanges seen, to drop replays.
    pub seen_info: VecDeque<u32>,
    pub children: Vec<Child>,
    pub peer_dpd: bool,
    pub peer_natt: bool,
    pub nat_local: bool,
    pub nat_remote: bool,
    /// The peer sent INITIAL-CONTACT (RFC 2407 §4.6.3.3).
    pub initial_contact: bool,
    /// We send INITIAL-CONTACT: no other ISAKMP SA with this peer exists.
    pub send_initial_contact: bool,
    pub dpd: Option<Dpd>,
    pub dpd_seq: u32,
    pub last_rx: Instant,
    pub lifetime: Duration,
    pub rekey_at: Option<Instant>,
    pub expire_at: Option<Instant>,
    /// A replacement ISAKMP SA should be negotiated (set by the rekey timer).
    pub want_rekey: bool,
    /// Replaced by a newer ISAKMP SA; waiting for the peer's Delete.
    pub retiring: bool,
    pub retire_at: Option<Instant>,
    /// Our cookie of the ISAKMP SA this one replaced: while that one still exists, a
    /// second replacement of it is a sibling (both ends started a Main Mode at once).
    pub replaced: Option<u64>,
    /// Phase 1 completed during the last input; the engine looks at siblings.
    pub just_established: bool,
    /// Established, but the peer may not have it (since when): nothing acknowledges a
    /// Main Mode responder's message 6 or an Aggressive Mode initiator's message 3, and
    /// the peer's end of the SA exists only once it has that message. Cleared by the
    /// peer's first authenticated message on the SA; while it is set, the SA this one
    /// replaced is not deleted (`Engine::retire_due`).
    pub unconfirmed_since: Option<Instant>,
    /// A replacement of this peer's ISAKMP SA is being negotiated (set by the engine
    /// while this SA handles an input): if this SA goes now (the peer deletes it or its
    /// lifetime ends), its Child SAs wait for the replacement instead of going with it
    /// (IKEv1 Child SAs do not depend on the ISAKMP SA that made them).
    pub successor_pending: bool,
    /// Not yet established, holding the Child SAs of the peer's ISAKMP SA (these
    /// cookies) that went while this one was negotiated: this one replaces it once
    /// established; if it fails, they are deleted.
    pub adopted: Option<(u64, u64)>,
    /// Unconfirmed, and its R-U-THEREs went unanswered while the peer spoke on another
    /// ISAKMP SA: the peer does not have this one (`Engine::disown`).
    pub disowned: bool,
    pub dead: bool,
    /// Responder: when the SA goes if Main or Aggressive Mode has not finished
    /// ([`crate::EndpointConfig::half_open_timeout`], as for IKEv2).
    pub half_open_until: Option<Instant>,
    /// Initiator: holds a slot of `Endpoint::pacing` for this address until Main or
    /// Aggressive Mode completes or the SA dies.
    pub paced: Option<std::net::IpAddr>,
    /// Main or Aggressive Mode's shared secret is being computed elsewhere
    /// (`crate::offload`).
    pub keying: Option<Box<Keying>>,
}

/// An offloaded Main or Aggressive Mode shared secret, awaited.
pub(crate) struct Keying {
    /// Matches the result to this SA and not to an earlier one with its cookie.
    pub ticket: u64,
    /// Main Mode responder: a message 5 that came before the keys, as (local, remote,
    /// datagram).
    pub held: Option<(std::net::SocketAddr, std::net::SocketAddr, Vec<u8>)>,
    /// Aggressive Mode: the step that needs the keys.
    pub am: Option<AmNext>,
}

/// What an Aggressive Mode SA does once its keys come: both of its steps after
/// message 1 carry or check a hash made with them (RFC 2409 §5.4).
pub(crate) enum AmNext {
    /// Responder: send message 2, answering with this SA payload body.
    Answer(Vec<u8>),
    /// Initiator: check message 2's HASH_R over the peer's ID payload body, then send
    /// message 3.
    Check { id_b: Vec<u8>, hash_r: Vec<u8> },
}

impl P1Sa {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        peer: PeerId,
        cfg: Arc<PeerConfig>,
        initiator: bool,
        mode: V1Mode,
        cky_i: u64,
        cky_r: u64,
        local: SocketAddr,
        remote: SocketAddr,
        state: P1State,
        now: Instant,
    ) -> Self {
        let suite = (cfg.ike.encr, cfg.ike.integ, cfg.ike.dh);
        let lifetime = cfg.ike_lifetime;
        Self {
            peer,
            cfg,
            initiator,
            mode,
            cky_i,
            cky_r,
            first_port: remote.port(),
            local,
            remote,
            state,
            hs: Hs::default(),
            suite,
            keys: None,
            cipher: None,
            iv: Vec::new(),
            p1_last_sent: None,
            p1_last_rcvd: None,
            p1_sent_at: None,
            retx: None,
            qms: BTreeMap::new(),
            seen_info: VecDeque::new(),
            children: Vec::new(),
            peer_dpd: false,
            peer_natt: false,
            nat_local: false,
            nat_remote: false,
            initial_contact: false,
            send_initial_contact: false,
            dpd: None,
            dpd_seq: 0,
            last_rx: now,
            lifetime,
            rekey_at: None,
            expire_at: None,
            want_rekey: false,
            retiring: false,
            retire_at: None,
            replaced: None,
            just_established: false,
            unconfirmed_since: None,
            disowned: false,
            successor_pending: false,
            adopted: None,
            paced: None,
            keying: None,
            dead: false,
            half_open_until: None,
        }
    }

    pub fn our_cookie(&self) -> u64 {
        if self.initiator {
            self.cky_i
        } else {
            self.cky_r
        }
    }

    pub fn established(&self) -> bool {
        self.state == P1State::Established
    }

    pub fn udp_encap(&self) -> bool {
        self.nat_local || self.nat_remote
    }

    pub fn block(&self) -> usize {
        self.suite.0.block_len()
    }

    /// The next time anything about this SA is due.
    pub fn next_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        at(self.retx.as_ref().map(|r| r.next));
        for q in self.qms.values() {
            at(q.retx.as_ref().map(|r| r.next));
            at(q.linger_until);
            at(q.state.keying_until());
        }
        if !self.established() {
            at(self.half_open_until);
            return t;
        }
        at(self.retire_at);
        if self.retiring {
            return t;
        }
        at(self.expire_at);
        at(self.rekey_at);
        if self.want_rekey {
            at(Some(self.last_rx));
        }
        for c in &self.children {
            at(c.rekey_at);
            at(c.expire_at);
        }
        match (&self.dpd, self.cfg.dpd_interval) {
            (Some(d), _) => {
                at(Some(d.next_send));
                at(Some(d.first_sent + self.cfg.dpd_timeout));
            }
            (None, Some(i)) if self.peer_dpd => at(Some(self.last_rx + i)),
            _ => {}
        }
        t
    }
}
