//! IKE SA and Child SA state kept by the endpoint.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crypto::{DhGroup, DhPrivate};

use crate::config::{PeerConfig, PeerId};
use crate::event::{ChildSa, IkeAlgorithms};
use crate::keys::{IkeKeys, IkeSuite};
use crate::offload::{ExchangeDh, Keying};
use crate::sk::SkCrypto;
use crate::ts::TsRange;
use crate::wire::registry::ExchangeType;
use crate::wire::{Flags, HeaderRepr};

/// Where the IKE SA's own handshake is. Each handshake state carries exactly what the
/// next message needs, so stale data cannot be reused (rustls style).
pub(crate) enum State {
    /// Initiator: IKE_SA_INIT sent, waiting for the response.
    ExpectInitResponse(Box<ExpectInitResponse>),
    /// Initiator: IKE_AUTH sent.
    ExpectAuthResponse(ExpectAuthResponse),
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
    ExpectAuthRequest(Handshake),
    /// Initiator: IKE_SA_INIT answered, the shared secret computed elsewhere
    /// ([`IkeSa::keying`]); IKE_AUTH goes out when it is ready.
    Keying,
    Established,
}

pub(crate) struct ExpectInitResponse {
    pub dh: DhPrivate,
    pub ni: Vec<u8>,
    pub cookie: Option<Vec<u8>>,
    pub cookie_tries: u8,
}

/// Both IKE_SA_INIT messages as sent/received, signed by AUTH (RFC 7296 §2.15).
pub(crate) struct Handshake {
    pub msg1: Vec<u8>,
    pub msg2: Vec<u8>,
}

pub(crate) struct ExpectAuthResponse {
    pub hs: Handshake,
    /// `None`: a childless IKE_AUTH (RFC 6023); the Child SA follows in CREATE_CHILD_SA.
    pub child: Option<ChildRequest>,
}

/// What we proposed for a Child SA, to check the answer against.
#[derive(Clone)]
pub(crate) struct ChildRequest {
    pub spi_in: u32,
    pub local_ts: Vec<TsRange>,
    pub remote_ts: Vec<TsRange>,
}

/// Our outstanding request (RFC 7296 §2.3: window of one).
pub(crate) struct Pending {
    pub msg_id: u32,
    pub exchange: ExchangeType,
    pub bytes: Vec<u8>,
    pub kind: Req,
    pub first_sent: Instant,
    pub next_retx: Instant,
    pub retx: u32,
}

pub(crate) enum Req {
    Init,
    Auth,
    CreateChild {
        rekey: Option<u32>,
        child: ChildRequest,
        ni: Vec<u8>,
        dh: Option<DhPrivate>,
    },
    RekeyIke {
        new_spi: u64,
        ni: Vec<u8>,
        dh: DhPrivate,
    },
    DeleteChildren(Vec<u32>),
    DeleteIke,
    Dpd,
    /// An error notification we send as initiator (§2.21.2); the answer is ignored.
    Notify,
}

impl Req {
    pub fn name(&self) -> &'static str {
        match self {
            Req::Init => "IKE_SA_INIT",
            Req::Auth => "IKE_AUTH",
            Req::CreateChild { rekey: Some(_), .. } => "CREATE_CHILD_SA (rekey Child SA)",
            Req::CreateChild { .. } => "CREATE_CHILD_SA",
            Req::RekeyIke { .. } => "CREATE_CHILD_SA (rekey IKE SA)",
            Req::DeleteChildren(_) => "INFORMATIONAL (delete Child SA)",
            Req::DeleteIke => "INFORMATIONAL (delete IKE SA)",
            Req::Dpd => "INFORMATIONAL (liveness check)",
            Req::Notify => "INFORMATIONAL (notify)",
        }
    }
}

/// Exchanges waiting for the window to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Task {
    RekeyChild(u32),
    /// A Child SA with the configured selectors on this IKE SA, which has none (the
    /// peer deleted it): CREATE_CHILD_SA without REKEY_SA (RFC 7296 §1.3.1).
    CreateChild,
    RekeyIke,
    DeleteChildren(Vec<u32>),
    DeleteIke,
    Dpd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChildState {
    Installed,
    /// Our CREATE_CHILD_SA rekeying it is outstanding.
    Rekeying,
    /// Replaced; waiting for its Delete.
    Rekeyed,
    /// Our Delete for it is outstanding.
    Deleting,
}

pub(crate) struct Child {
    pub sa: ChildSa,
    pub state: ChildState,
    pub rekey_at: Option<Instant>,
    pub expire_at: Option<Instant>,
    /// The peer rekeyed this child while we were rekeying it (RFC 7296 §2.8.1): the
    /// lowest nonce of the peer's exchange and the SPI of the child it created.
    pub collision: Option<(Vec<u8>, u32)>,
    /// When it was installed.
    pub installed: Instant,
    /// IKEv1: we initiated the Quick Mode that created it (IKEv2 leaves it false).
    pub initiated: bool,
    /// IKEv1: that Quick Mode was our rekey of another Child SA.
    pub our_rekey: bool,
}

pub(crate) struct IkeSa {
    /// `None` for a responder until IKE_AUTH identifies the peer.
    pub peer: Option<PeerId>,
    /// Responder before IKE_AUTH: the first peer this SA could belong to (same
    /// addresses and IKE algorithms), for logs, and whether it is the only one. The
    /// whole set is not stored: IKE_AUTH looks the peer up by identity (`PeerIndex`);
    /// with 10,000 tunnels from one address a list per SA was 10,000 ids (issue 8).
    pub candidate: Option<PeerId>,
    pub sole_candidate: bool,
    /// Responder: our entry in `Endpoint::half_open` (peer address, SPIi).
    pub half_open_key: Option<(SocketAddr, u64)>,
    /// Initiator: holds a slot of `Endpoint::pacing` for this address until IKE_AUTH
    /// completes or the SA dies.
    pub paced: Option<std::net::IpAddr>,
    /// The peer's configuration, shared with the endpoint's peer table.
    pub cfg: Arc<PeerConfig>,
    /// We set the Initiator flag (original initiator, or initiator of the rekey
    /// exchange that created this SA).
    pub initiator: bool,
    pub spi_i: u64,
    pub spi_r: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: State,
    pub algs: Option<IkeAlgorithms>,
    /// The SK keys; the keyed SK transforms are built from them per message
    /// ([`IkeSa::sk`]) instead of being kept: expanded cipher and MAC states of both
    /// directions were 2.6 KiB of every IKE SA (issue 8), an expansion costs microseconds.
    pub keys: Option<IkeKeys>,
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    pub next_msg_id: u32,
    pub peer_msg_id: u32,
    pub last_response: Option<(u32, Vec<u8>)>,
    /// Boxed: 456 bytes (a DH key of a rekey in flight) that an established SA carries
    /// only while one of its exchanges is outstanding (issue 8).
    pub pending: Option<Box<Pending>>,
    pub tasks: VecDeque<Task>,
    pub children: Vec<Child>,
    pub nat_local: bool,
    pub nat_remote: bool,
    /// Initiator: the peer's IKE_SA_INIT response announced CHILDLESS_IKEV2_SUPPORTED
    /// (RFC 6023 §3), so IKE_AUTH may leave the Child SA out.
    pub childless_supported: bool,
    pub last_rx: Instant,
    pub rekey_at: Option<Instant>,
    pub expire_at: Option<Instant>,
    pub retry_at: Option<Instant>,
    pub half_open_until: Option<Instant>,
    /// Kept only to answer retransmitted requests after a failure.
    pub linger_until: Option<Instant>,
    /// Replaced by a rekey; no new exchanges start on it.
    pub retiring: bool,
    /// As rekey responder: our SPI of the IKE SA that replaces this one.
    pub rekeyed_to: Option<u64>,
    /// As rekey responder: when to stop waiting for the peer's Delete of this SA.
    pub retire_at: Option<Instant>,
    /// Simultaneous IKE SA rekey: the peer's exchange's lowest nonce and the SA it made.
    pub ike_collision: Option<(Vec<u8>, u64)>,
    /// The Child SA (our inbound SPI) our outstanding rekey was for, deleted by the peer
    /// after its simultaneous rekey of it survived: our rekey's result is redundant.
    pub lost_rekey: Option<u32>,
    /// Made by the peer's IKE SA rekey while ours of the same IKE SA was outstanding
    /// (RFC 7296 §2.8.1): if the peer deletes it, it was the redundant one.
    pub rekey_collision: bool,
    /// Made by IKE_SA_INIT (not by an IKE SA rekey): takes part in the duplicate check
    /// after simultaneous initiation (see `Endpoint::resolve_duplicates`).
    pub from_init: bool,
    /// The redundant one of two IKE SAs that simultaneous initiation created; its
    /// initiator deletes it (reported as [`crate::DeleteReason::Duplicate`]).
    pub duplicate: bool,
    /// When this SA's first message went out or came in.
    pub started: Instant,
    /// When it was established (IKE_AUTH done, or the rekey that made it).
    pub established_at: Option<Instant>,
    /// The shared secret of IKE_SA_INIT is being computed off the endpoint's thread
    /// (see `offload.rs`); `keys` is `None` until it is ready.
    pub keying: Option<Box<Keying>>,
    /// A CREATE_CHILD_SA message waiting for its offloaded shared secret (`offload.rs`).
    pub exchange_dh: Option<Box<ExchangeDh>>,
    pub dead: bool,
}

impl IkeSa {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<PeerConfig>,
        peer: Option<PeerId>,
        initiator: bool,
        spi_i: u64,
        spi_r: u64,
        local: SocketAddr,
        remote: SocketAddr,
        state: State,
        now: Instant,
    ) -> Self {
        Self {
            peer,
            candidate: peer,
            sole_candidate: peer.is_some(),
            half_open_key: None,
            paced: None,
            cfg,
            initiator,
            spi_i,
            spi_r,
            local,
            remote,
            state,
            algs: None,
            keys: None,
            ni: Vec::new(),
            nr: Vec::new(),
            next_msg_id: 0,
            peer_msg_id: 0,
            last_response: None,
            pending: None,
            tasks: VecDeque::new(),
            children: Vec::new(),
            nat_local: false,
            nat_remote: false,
            childless_supported: false,
            last_rx: now,
            rekey_at: None,
            expire_at: None,
            retry_at: None,
            half_open_until: None,
            linger_until: None,
            retiring: false,
            rekeyed_to: None,
            retire_at: None,
            ike_collision: None,
            rekey_collision: false,
            lost_rekey: None,
            from_init: false,
            duplicate: false,
            started: now,
            established_at: None,
            keying: None,
            exchange_dh: None,
            dead: false,
        }
    }

    /// Our SPI, the key of the endpoint's SA table.
    pub fn our_spi(&self) -> u64 {
        if self.initiator {
            self.spi_i
        } else {
            self.spi_r
        }
    }

    pub fn header(&self, exchange: ExchangeType, response: bool, message_id: u32) -> HeaderRepr {
        let mut flags = 0;
        if self.initiator {
            flags |= Flags::INITIATOR;
        }
        if response {
            flags |= Flags::RESPONSE;
        }
        HeaderRepr {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            next_payload: crate::wire::registry::PayloadType::NONE,
            exchange,
            flags: Flags(flags),
            message_id,
            length: 0,
        }
    }

    pub fn established(&self) -> bool {
        matches!(self.state, State::Established)
    }

    pub fn suite(&self) -> IkeSuite {
        let p = &self.cfg.ike;
        IkeSuite {
            encr: p.encr,
            integ: p.negotiated_integ(),
            prf: p.prf(),
        }
    }

    /// The SK payload transforms, keyed from [`Self::keys`] with the suite they were
    /// derived for (`algs`); `None` before the keys exist.
    pub fn sk(&self) -> Option<SkCrypto> {
        let (a, keys) = (self.algs?, self.keys.as_ref()?);
        let suite = IkeSuite {
            encr: a.encr,
            integ: a.integ,
            prf: a.prf,
        };
        // The same keys were accepted when the SA was keyed (`set_ike_keys`).
        SkCrypto::new(suite, keys, self.initiator).ok()
    }

    pub fn dh_group(&self) -> DhGroup {
        self.cfg.ike.dh
    }

    pub fn udp_encap(&self) -> bool {
        self.nat_local || self.nat_remote
    }

    pub fn child_by_in(&mut self, spi_in: u32) -> Option<&mut Child> {
        self.children.iter_mut().find(|c| c.sa.spi_in == spi_in)
    }

    pub fn child_by_out(&mut self, spi_out: u32) -> Option<&mut Child> {
        self.children.iter_mut().find(|c| c.sa.spi_out == spi_out)
    }

    /// The next time anything about this SA is due.
    pub fn next_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if self.linger_until.is_some() {
            at(self.linger_until);
            return t;
        }
        if let Some(p) = &self.pending {
            at(Some(p.next_retx));
            if matches!(p.kind, Req::Dpd) {
                at(Some(p.first_sent + self.cfg.dpd_timeout));
            }
        }
        at(self.half_open_until);
        at(self.retry_at);
        at(self.retire_at);
        if self.established()
            && self.pending.is_none()
            && self.retry_at.is_none()
            && !self.tasks.is_empty()
        {
            // Work was queued from outside this SA's own processing: due now.
            at(Some(self.last_rx));
        }
        if self.established() && !self.retiring {
            at(self.rekey_at);
            at(self.expire_at);
            for c in &self.children {
                at(c.rekey_at);
                at(c.expire_at);
            }
            if let (Some(i), None, None, true) = (
                self.cfg.dpd_interval,
                &self.pending,
                self.retry_at,
                self.tasks.is_empty(),
            ) {
                at(Some(self.last_rx + i));
            }
        }
        t
    }
}

/// Soft lifetime: 90% of the lifetime minus up to 5% random jitter, so that both
/// peers rarely rekey at the same moment; `None` for a zero lifetime (no rekey).
pub(crate) fn soft_lifetime(lifetime: Duration, random: u32) -> Option<Duration> {
    if lifetime.is_zero() {
        return None;
    }
    let jitter = lifetime.mul_f64(0.05 * f64::from(random) / f64::from(u32::MAX));
    Some(lifetime.mul_f64(0.9).saturating_sub(jitter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ike_sa_stays_small() {
        // Each IKE SA is boxed in the table: 10,000 tunnels hold 10,000 of these (issue 8).
        // The SK transforms (2.6 KiB), an outstanding request and the peer's
        // configuration are not kept inline.
        assert!(
            std::mem::size_of::<IkeSa>() <= 1024,
            "IkeSa is {} bytes",
            std::mem::size_of::<IkeSa>()
        );
    }

    #[test]
    fn soft_lifetime_bounds() {
        let l = Duration::from_secs(3600);
        assert_eq!(soft_lifetime(l, 0), Some(Duration::from_secs(3240)));
        let max_jitter = soft_lifetime(l, u32::MAX).unwrap();
        assert!(max_jitter >= Duration::from_secs(3059) && max_jitter <= Duration::from_secs(3061));
        assert_eq!(soft_lifetime(Duration::ZERO, 7), None);
    }
}
