//! One BGP neighbor: the sans-IO engine the node drives (see the crate
//! docs for the driver loop).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::debug::LogEvent;
use crate::error::{AttrError, AttrErrorKind, ErrorAction, OpenError, code};
use crate::fsm::{Action, Event as FsmEvent, Mode, State, fsm_event};
use crate::message::{
    AFI_IPV4, AS_TRANS, Capability, Ctx, Framer, HEADER_LEN, MAX_MESSAGE_LEN, Message,
    Notification, Open, RouteRefresh, SAFI_UNICAST,
};
use crate::update::{PathAttrs, Update};

/// The gateway's default local ASN.
pub const DEFAULT_LOCAL_ASN: u32 = 45104;
/// RFC 4271 §8.2.2 suggests 4 minutes for the hold timer while waiting for
/// the peer's OPEN.
pub const OPEN_HOLD_TIME: Duration = Duration::from_secs(240);

/// Configuration of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub local_asn: u32,
    pub peer_asn: u32,
    /// Our address on the tunnel's /30 (next hop of what we advertise).
    pub local_addr: Ipv4Addr,
    pub peer_addr: Ipv4Addr,
    /// Our BGP identifier (defaults to `local_addr`).
    pub router_id: Ipv4Addr,
    /// Proposed hold time in seconds (0 disables keepalives; else ≥ 3).
    pub hold_time: u16,
    /// Keepalive interval in seconds; the negotiated one is at most a third
    /// of the negotiated hold time (RFC 4271 §4.4).
    pub keepalive: u16,
    /// RFC 4271 §10 ConnectRetryTime.
    pub connect_retry: Duration,
    /// Delay before an automatic restart after the session went down.
    pub idle_hold: Duration,
    pub mode: Mode,
    /// Most prefixes accepted from the peer (RFC 4486 §4); more ends the
    /// session with Cease 6/1 (restarted after `idle_hold`).
    pub max_prefixes: Option<u32>,
}

impl Config {
    /// Defaults matching the documented peer: local AS 45104, hold 30 s,
    /// keepalive 10 s (FRR `timers 10 30`), active mode.
    pub fn new(local_addr: Ipv4Addr, peer_addr: Ipv4Addr, peer_asn: u32) -> Self {
        Self {
            local_asn: DEFAULT_LOCAL_ASN,
            peer_asn,
            local_addr,
            peer_addr,
            router_id: local_addr,
            hold_time: 30,
            keepalive: 10,
            connect_retry: Duration::from_secs(10),
            idle_hold: Duration::from_secs(5),
            mode: Mode::Active,
            max_prefixes: None,
        }
    }

    /// eBGP unless the peer is in our own AS.
    pub fn is_ebgp(&self) -> bool {
        self.local_asn != self.peer_asn
    }

    /// Checks what would make every OPEN fail or the session misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // RFC 4271 §4.2: hold time 0 or at least 3 seconds.
        if self.hold_time == 1 || self.hold_time == 2 {
            return Err(ConfigError::HoldTime(self.hold_time));
        }
        // RFC 6793 §9: AS_TRANS is reserved; 0 is reserved (RFC 7607).
        for asn in [self.local_asn, self.peer_asn] {
            if asn == 0 || asn == u32::from(AS_TRANS) {
                return Err(ConfigError::ReservedAsn(asn));
            }
        }
        // RFC 6286 §2.2: a non-zero identifier.
        if self.router_id.is_unspecified() {
            return Err(ConfigError::RouterId);
        }
        if self.local_addr == self.peer_addr {
            return Err(ConfigError::SameAddress(self.local_addr));
        }
        Ok(())
    }
}

/// A [`Config`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("hold time {0} s is not allowed (use 0 or at least 3)")]
    HoldTime(u16),
    #[error("AS {0} is reserved and cannot be used for a BGP session")]
    ReservedAsn(u32),
    #[error("the BGP router id must not be 0.0.0.0")]
    RouterId,
    #[error("local and peer BGP address are both {0}")]
    SameAddress(Ipv4Addr),
}

/// Output of the engine, from [`Session::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Open a TCP connection to `peer_addr`, port 179; then call
    /// [`Session::handle_connected`] or [`Session::handle_closed`].
    Connect,
    /// Write what [`Session::poll_transmit`] returns, then close the TCP
    /// connection.
    Close,
    Established {
        peer_asn: u32,
        hold_time: u16,
        router_id: Ipv4Addr,
    },
    /// The session left OpenSent/OpenConfirm/Established.
    Down {
        reason: DownReason,
    },
    /// Adj-RIB-In changed; feed it to [`crate::Rib::apply`].
    RoutesChanged(RouteChanges),
    Log(LogEvent),
}

/// A diff of one session's Adj-RIB-In.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteChanges {
    /// New or changed routes (attributes normalised: `next_hop` set, MP
    /// attributes removed, LOCAL_PREF removed on eBGP).
    pub announced: Vec<(Ipv4Net, Arc<PathAttrs>)>,
    pub withdrawn: Vec<Ipv4Net>,
}

impl RouteChanges {
    pub fn is_empty(&self) -> bool {
        self.announced.is_empty() && self.withdrawn.is_empty()
    }
}

/// Why a session went down, worded for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    Stopped,
    HoldTimerExpired {
        hold_time: u16,
    },
    ConnectionClosed {
        state: State,
    },
    NotificationReceived(Notification),
    /// We found an error and sent `sent`.
    Error {
        sent: Notification,
        detail: String,
    },
    /// The peer sent more prefixes than `Config::max_prefixes`.
    PrefixLimit {
        received: usize,
        limit: u32,
    },
    /// RFC 4271 §6.8: the other connection with the peer was kept.
    CollisionResolved,
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stopped => f.write_str("stopped by the operator"),
            Self::HoldTimerExpired { hold_time } => write!(
                f,
                "hold timer expired: nothing received from the peer for {hold_time} s (tunnel down or peer stopped?)"
            ),
            Self::ConnectionClosed { state } => write!(f, "TCP connection closed in state {state}"),
            Self::NotificationReceived(n) => write!(f, "peer sent NOTIFICATION {n}"),
            Self::Error { sent, detail } => write!(f, "{detail}; sent NOTIFICATION {sent}"),
            Self::PrefixLimit { received, limit } => write!(
                f,
                "peer sent {received} prefixes, more than the limit of {limit}; sent NOTIFICATION 6/1 (Cease / Maximum Number of Prefixes Reached)"
            ),
            Self::CollisionResolved => f.write_str(
                "connection collision: the other TCP connection with the peer was kept (RFC 4271 §6.8); sent NOTIFICATION 6/7",
            ),
        }
    }
}

/// Counters (dropped input is counted, never a panic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub messages_in: u64,
    pub messages_out: u64,
    pub updates_in: u64,
    pub updates_out: u64,
    pub decode_errors: u64,
    pub treat_as_withdraw: u64,
    pub attribute_discards: u64,
    pub bytes_ignored: u64,
    pub established: u64,
}

/// What was agreed in the OPEN exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Negotiated {
    peer_asn: u32,
    peer_id: Ipv4Addr,
    hold_time: u16,
    keepalive: u16,
    route_refresh: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    ConnectRetry = 0,
    Hold = 1,
    Keepalive = 2,
    IdleHold = 3,
}

const TIMERS: [Timer; 4] = [
    Timer::ConnectRetry,
    Timer::Hold,
    Timer::Keepalive,
    Timer::IdleHold,
];

/// A BGP session with one neighbor. See the crate docs for the driver loop.
#[derive(Debug)]
pub struct Session {
    config: Config,
    state: State,
    started: bool,
    framer: Framer,
    out: Vec<u8>,
    events: VecDeque<Event>,
    timers: [Option<Instant>; 4],
    ctx: Ctx,
    negotiated: Option<Negotiated>,
    adj_rib_in: BTreeMap<Ipv4Net, Arc<PathAttrs>>,
    /// RFC 4271 §3.2 Adj-RIB-Out: what we advertise (or will, once
    /// established), with the attributes as sent.
    adj_rib_out: BTreeMap<Ipv4Net, Arc<PathAttrs>>,
    pending_update: Option<Update>,
    /// Why an AutomaticStop is about to happen.
    stop_reason: Option<DownReason>,
    stats: Stats,
    span: tracing::Span,
}

impl Session {
    pub fn new(config: Config) -> Self {
        let span = tracing::info_span!("bgp", peer = %config.peer_addr, peer_asn = config.peer_asn);
        Self {
            config,
            state: State::Idle,
            started: false,
            framer: Framer::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            timers: [None; 4],
            ctx: Ctx::default(),
            negotiated: None,
            adj_rib_in: BTreeMap::new(),
            adj_rib_out: BTreeMap::new(),
            pending_update: None,
            stop_reason: None,
            stats: Stats::default(),
            span,
        }
    }

    // ---- getters ----

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// True while the session has no connection and would take one: the
    /// driver may hand it an accepted incoming connection from the peer
    /// (RFC 4271 §8.2.2 Connect and Active states). Incoming connections
    /// at other times should be closed by the driver.
    pub fn wants_connection(&self) -> bool {
        matches!(self.state, State::Connect | State::Active)
    }

    /// Negotiated hold time, once the OPENs were exchanged.
    pub fn hold_time(&self) -> Option<u16> {
        self.negotiated.map(|n| n.hold_time)
    }

    /// Negotiated keepalive interval (0 when the hold time is 0).
    pub fn keepalive_interval(&self) -> Option<u16> {
        self.negotiated.map(|n| n.keepalive)
    }

    pub fn peer_router_id(&self) -> Option<Ipv4Addr> {
        self.negotiated.map(|n| n.peer_id)
    }

    /// What [`crate::Rib::set_peer`] needs, once the OPENs were exchanged.
    pub fn peer_info(&self) -> Option<crate::rib::PeerInfo> {
        self.negotiated.map(|n| crate::rib::PeerInfo {
            asn: n.peer_asn,
            router_id: n.peer_id,
            addr: self.config.peer_addr,
            ebgp: self.config.is_ebgp(),
            local_pref: None,
        })
    }

    /// Routes received from the peer (RFC 4271 §3.2 Adj-RIB-In).
    pub fn adj_rib_in(&self) -> impl Iterator<Item = (&Ipv4Net, &Arc<PathAttrs>)> {
        self.adj_rib_in.iter()
    }

    /// Routes we advertise to this peer (RFC 4271 §3.2 Adj-RIB-Out),
    /// originated or re-advertised, with the attributes sent.
    pub fn adj_rib_out(&self) -> impl Iterator<Item = (&Ipv4Net, &Arc<PathAttrs>)> {
        self.adj_rib_out.iter()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    // ---- commands ----

    /// RFC 4271 ManualStart: start connecting (active) or waiting for the
    /// peer (passive). After a failure the session restarts by itself
    /// after `idle_hold`, until [`Session::stop`].
    pub fn start(&mut self, now: Instant) {
        let _g = self.span.clone().entered();
        self.started = true;
        self.step(now, FsmEvent::ManualStart);
    }

    /// RFC 4271 ManualStop: Cease/Administrative Shutdown if connected.
    pub fn stop(&mut self, now: Instant) {
        let _g = self.span.clone().entered();
        self.started = false;
        self.timers[Timer::IdleHold as usize] = None;
        self.step(now, FsmEvent::ManualStop);
    }

    /// Like [`Session::stop`], with an operator message the peer can show
    /// (RFC 9003 Shutdown Communication in Cease/Administrative Shutdown).
    pub fn shutdown(&mut self, now: Instant, message: &str) {
        let _g = self.span.clone().entered();
        self.started = false;
        self.timers[Timer::IdleHold as usize] = None;
        self.stop_reason = Some(DownReason::Stopped);
        self.step(
            now,
            FsmEvent::AutomaticStop(Notification::shutdown(message)),
        );
        self.stop_reason = None;
    }

    /// Originate `prefixes` (ORIGIN IGP, AS_PATH `[local_asn]` on eBGP,
    /// NEXT_HOP `local_addr`); sent now if established, else on
    /// establishment.
    pub fn advertise(&mut self, now: Instant, prefixes: &[Ipv4Net]) {
        let attrs = Arc::new(PathAttrs::originated(
            self.config.local_asn,
            self.config.local_addr,
            self.config.is_ebgp(),
        ));
        let routes: Vec<(Ipv4Net, Arc<PathAttrs>)> =
            prefixes.iter().map(|p| (*p, attrs.clone())).collect();
        self.put_routes(now, routes);
    }

    /// Re-advertise routes learned from other peers (`learned`: the
    /// attributes as received there), with the attributes RFC 4271 §5.1
    /// prescribes ([`PathAttrs::exported`]: our AS prepended on eBGP, our
    /// address as NEXT_HOP, no MED). A route whose communities forbid
    /// advertising it (RFC 1997 NO_EXPORT, NO_ADVERTISE) is withdrawn if it
    /// was advertised, else skipped. Replaces what was advertised for each
    /// prefix (originated or learned); sent now if established, else on
    /// establishment. The caller keeps a route away from the peer it came
    /// from (RFC 4271 §9.2 leaves that to policy; the node never sends a
    /// connection's routes back to it).
    pub fn advertise_learned(&mut self, now: Instant, learned: &[(Ipv4Net, Arc<PathAttrs>)]) {
        let mut routes = Vec::new();
        let mut forbidden = Vec::new();
        for (p, a) in learned {
            match PathAttrs::exported(
                a,
                self.config.local_asn,
                self.config.local_addr,
                self.config.is_ebgp(),
            ) {
                Some(e) => routes.push((*p, Arc::new(e))),
                None => forbidden.push(*p),
            }
        }
        self.put_routes(now, routes);
        self.withdraw(now, &forbidden);
    }

    /// Stop advertising `prefixes`.
    pub fn withdraw(&mut self, now: Instant, prefixes: &[Ipv4Net]) {
        let gone: Vec<Ipv4Net> = prefixes
            .iter()
            .map(|p| p.trunc())
            .filter(|p| self.adj_rib_out.remove(p).is_some())
            .collect();
        if self.is_established() && !gone.is_empty() {
            self.send_withdraw(now, &gone);
        }
    }

    /// RFC 4271 §6.8: collision detection ([`crate::collision::resolve`]) chose
    /// another connection with this peer; close this session's connection
    /// with Cease/Connection Collision Resolution (event 23,
    /// OpenCollisionDump). The session does not restart by itself: the driver
    /// goes on with the session of the kept connection.
    pub fn collision_dump(&mut self, now: Instant) {
        let _g = self.span.clone().entered();
        self.started = false;
        self.timers[Timer::IdleHold as usize] = None;
        self.stop_reason = Some(DownReason::CollisionResolved);
        self.step(now, FsmEvent::OpenCollisionDump);
        self.stop_reason = None;
    }

    /// Ask the peer to resend its routes (RFC 2918), if it supports it.
    pub fn request_refresh(&mut self) -> bool {
        if !self.is_established() || !self.negotiated.is_some_and(|n| n.route_refresh) {
            return false;
        }
        self.send(&Message::RouteRefresh(RouteRefresh::ipv4_unicast()));
        true
    }

    // ---- inputs ----

    /// The TCP connection to/from the peer is up.
    pub fn handle_connected(&mut self, now: Instant) {
        let _g = self.span.clone().entered();
        self.framer.clear();
        self.out.clear();
        self.step(now, FsmEvent::TcpConnectionConfirmed);
    }

    /// The TCP connection failed, or was closed by the peer.
    pub fn handle_closed(&mut self, now: Instant) {
        let _g = self.span.clone().entered();
        if self.state != State::Idle {
            self.step(now, FsmEvent::TcpConnectionFails);
        }
    }

    /// Bytes read from the TCP connection, in any segmentation.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        let _g = self.span.clone().entered();
        if !self.has_connection() {
            self.stats.bytes_ignored += bytes.len() as u64;
            self.log(LogEvent::BytesIgnored {
                len: bytes.len(),
                state: self.state,
            });
            return;
        }
        self.framer.push(bytes);
        while self.has_connection() {
            let ctx = self.ctx;
            let msg = match self.framer.next_frame() {
                Ok(None) => break,
                Ok(Some(frame)) => Message::decode(frame, &ctx),
                Err(e) => Err(e),
            };
            self.stats.messages_in += 1;
            match msg {
                Ok(m) => self.handle_message(now, m),
                Err(e) => {
                    self.stats.decode_errors += 1;
                    self.log(LogEvent::DecodeError(e.clone()));
                    self.step(now, FsmEvent::MessageError(e));
                }
            }
        }
    }

    /// Fire every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _g = self.span.clone().entered();
        // Each firing may re-arm timers; bound the loop by the table size
        // times two so a zero-length timer cannot spin.
        for _ in 0..TIMERS.len() * 2 {
            let Some(t) = TIMERS
                .iter()
                .copied()
                .filter(|t| self.timers[*t as usize].is_some_and(|d| d <= now))
                .min_by_key(|t| self.timers[*t as usize])
            else {
                return;
            };
            self.timers[t as usize] = None;
            let ev = match t {
                Timer::ConnectRetry => FsmEvent::ConnectRetryTimerExpires,
                Timer::Hold => FsmEvent::HoldTimerExpires,
                Timer::Keepalive => FsmEvent::KeepaliveTimerExpires,
                Timer::IdleHold => FsmEvent::AutomaticStart,
            };
            self.step(now, ev);
        }
    }

    // ---- outputs ----

    /// Bytes to write to the TCP connection (all queued messages).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.out.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.out))
        }
    }

    /// When to call [`Session::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().min().copied()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- internals ----

    fn has_connection(&self) -> bool {
        matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        )
    }

    fn handle_message(&mut self, now: Instant, msg: Message) {
        let ev = match msg {
            // An OPEN outside OpenSent is an FSM error (RFC 6608), whatever
            // it says.
            Message::Open(_) if self.state != State::OpenSent => FsmEvent::BgpOpen,
            Message::Open(open) => match self.check_open(&open) {
                Ok(n) => {
                    self.negotiated = Some(n);
                    self.ctx.four_octet_as = open.four_octet_as().is_some();
                    FsmEvent::BgpOpen
                }
                Err(e) => FsmEvent::MessageError(e.into()),
            },
            Message::Update(u) => {
                self.stats.updates_in += 1;
                self.pending_update = Some(u);
                FsmEvent::UpdateMsg
            }
            Message::Notification(n) => {
                self.log(LogEvent::NotificationReceived(n.clone()));
                if n.code == code::OPEN_MESSAGE && n.subcode == 1 {
                    FsmEvent::NotifMsgVerErr
                } else {
                    FsmEvent::NotifMsg(n)
                }
            }
            Message::Keepalive => FsmEvent::KeepAliveMsg,
            Message::RouteRefresh(rr) => {
                // RFC 2918 §4: ignore a family we did not advertise.
                if (rr.afi, rr.safi) != (AFI_IPV4, SAFI_UNICAST) {
                    self.log(LogEvent::RouteRefreshIgnored {
                        afi: rr.afi,
                        safi: rr.safi,
                    });
                    return;
                }
                FsmEvent::RouteRefreshMsg
            }
        };
        self.step(now, ev);
        self.pending_update = None;
        // RFC 4486 §4: over the configured limit, Cease/Maximum Number of
        // Prefixes Reached carrying AFI, SAFI and the limit.
        if let Some(limit) = self.config.max_prefixes {
            let received = self.adj_rib_in.len();
            if self.is_established() && received > limit as usize {
                let mut data = AFI_IPV4.to_be_bytes().to_vec();
                data.push(SAFI_UNICAST);
                data.extend_from_slice(&limit.to_be_bytes());
                let n = Notification {
                    code: code::CEASE,
                    subcode: 1,
                    data,
                };
                self.stop_reason = Some(DownReason::PrefixLimit { received, limit });
                self.step(now, FsmEvent::AutomaticStop(n));
            }
        }
    }

    /// RFC 4271 §6.2 checks that need the configuration.
    fn check_open(&self, open: &Open) -> Result<Negotiated, OpenError> {
        let peer_asn = open.asn();
        if peer_asn != self.config.peer_asn {
            return Err(OpenError::BadPeerAs {
                expected: self.config.peer_asn,
                received: peer_asn,
            });
        }
        // RFC 6286 §2.2: same identifier only rejected from an internal peer.
        if !self.config.is_ebgp() && open.bgp_id == self.config.router_id {
            return Err(OpenError::BadBgpIdentifier(open.bgp_id));
        }
        // RFC 4271 §4.2: the smaller hold time; keepalive a third of it.
        let hold_time = self.config.hold_time.min(open.hold_time);
        let keepalive = match (hold_time, self.config.keepalive) {
            (0, _) => 0,
            (h, 0) => h / 3,
            (h, k) => k.min(h / 3),
        };
        Ok(Negotiated {
            peer_asn,
            peer_id: open.bgp_id,
            hold_time,
            keepalive,
            route_refresh: open.has(&Capability::RouteRefresh),
        })
    }

    fn step(&mut self, now: Instant, event: FsmEvent) {
        let from = self.state;
        let (to, actions) = fsm_event(from, &event, self.config.mode);
        self.state = to;
        if from != to {
            self.log(LogEvent::StateChange {
                from,
                to,
                event: event_name(&event),
            });
        }
        for action in actions {
            self.run(now, from, &event, action);
        }
        if to == State::Idle && from != State::Idle && self.started {
            // RFC 4271 §8.1.1 AutomaticStart after an IdleHoldTime.
            self.timers[Timer::IdleHold as usize] = Some(now + self.config.idle_hold);
        }
    }

    fn run(&mut self, now: Instant, from: State, event: &FsmEvent, action: Action) {
        let neg = self.negotiated;
        match action {
            Action::Connect => self.events.push_back(Event::Connect),
            Action::Close => {
                self.framer.clear();
                self.ctx = Ctx::default();
                self.events.push_back(Event::Close);
            }
            Action::SendOpen => {
                let open = Open::new(
                    self.config.local_asn,
                    self.config.hold_time,
                    self.config.router_id,
                );
                self.send(&Message::Open(open));
            }
            Action::SendKeepalive => self.send(&Message::Keepalive),
            Action::SendNotification(n) => {
                self.log(LogEvent::NotificationSent(n.clone()));
                self.send(&Message::Notification(n));
            }
            Action::ArmConnectRetry => {
                self.arm(Timer::ConnectRetry, now, Some(self.config.connect_retry))
            }
            Action::StopConnectRetry => self.timers[Timer::ConnectRetry as usize] = None,
            Action::ArmHoldLarge => self.arm(Timer::Hold, now, Some(OPEN_HOLD_TIME)),
            Action::ArmHold => {
                let d = neg
                    .map(|n| n.hold_time)
                    .filter(|&h| h > 0)
                    .map(|h| Duration::from_secs(h.into()));
                self.arm(Timer::Hold, now, d);
            }
            Action::ArmKeepalive => {
                let d = neg
                    .map(|n| n.keepalive)
                    .filter(|&k| k > 0)
                    .map(|k| Duration::from_secs(k.into()));
                self.arm(Timer::Keepalive, now, d);
            }
            Action::StopTimers => {
                for t in [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive] {
                    self.timers[t as usize] = None;
                }
            }
            Action::Established => {
                self.stats.established += 1;
                if let Some(n) = neg {
                    self.events.push_back(Event::Established {
                        peer_asn: n.peer_asn,
                        hold_time: n.hold_time,
                        router_id: n.peer_id,
                    });
                }
                self.resend_all(now);
            }
            Action::ProcessUpdate => {
                if let Some(u) = self.pending_update.take() {
                    self.process_update(u);
                }
            }
            Action::ResendRoutes => self.resend_all(now),
            Action::Down => {
                let all: Vec<Ipv4Net> = std::mem::take(&mut self.adj_rib_in).into_keys().collect();
                if !all.is_empty() {
                    self.events.push_back(Event::RoutesChanged(RouteChanges {
                        announced: vec![],
                        withdrawn: all,
                    }));
                }
                let reason = self.down_reason(from, event);
                tracing::info!("session down: {reason}");
                self.events.push_back(Event::Down { reason });
                self.negotiated = None;
            }
        }
    }

    fn down_reason(&mut self, from: State, event: &FsmEvent) -> DownReason {
        if let Some(r) = self.stop_reason.take() {
            return r;
        }
        match event {
            FsmEvent::ManualStop => DownReason::Stopped,
            FsmEvent::HoldTimerExpires => DownReason::HoldTimerExpired {
                hold_time: self
                    .negotiated
                    .map_or(OPEN_HOLD_TIME.as_secs() as u16, |n| n.hold_time),
            },
            FsmEvent::TcpConnectionFails => DownReason::ConnectionClosed { state: from },
            FsmEvent::NotifMsg(n) => DownReason::NotificationReceived(n.clone()),
            FsmEvent::NotifMsgVerErr => DownReason::NotificationReceived(Notification {
                code: code::OPEN_MESSAGE,
                subcode: 1,
                data: vec![],
            }),
            FsmEvent::MessageError(e) => DownReason::Error {
                sent: e.notification(),
                detail: e.to_string(),
            },
            other => {
                let sub = match from {
                    State::OpenSent => 1,
                    State::OpenConfirm => 2,
                    _ => 3,
                };
                DownReason::Error {
                    sent: Notification::new(code::FSM, sub),
                    detail: format!("unexpected {} in state {from}", event_name(other)),
                }
            }
        }
    }

    fn arm(&mut self, t: Timer, now: Instant, d: Option<Duration>) {
        self.timers[t as usize] = d.map(|d| now + d);
    }

    fn log(&mut self, e: LogEvent) {
        e.trace();
        self.events.push_back(Event::Log(e));
    }

    fn send(&mut self, msg: &Message) {
        self.stats.messages_out += 1;
        self.out.extend_from_slice(&msg.encode(&self.ctx));
    }

    /// Puts `routes` into the Adj-RIB-Out and sends those that changed.
    fn put_routes(&mut self, now: Instant, routes: Vec<(Ipv4Net, Arc<PathAttrs>)>) {
        let mut new = Vec::new();
        for (p, a) in routes {
            let p = p.trunc();
            if self.adj_rib_out.get(&p) != Some(&a) {
                self.adj_rib_out.insert(p, a.clone());
                new.push((p, a));
            }
        }
        if self.is_established() && !new.is_empty() {
            self.send_announce(now, &new);
        }
    }

    fn resend_all(&mut self, now: Instant) {
        let all: Vec<(Ipv4Net, Arc<PathAttrs>)> = self
            .adj_rib_out
            .iter()
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        if !all.is_empty() {
            self.send_announce(now, &all);
        }
    }

    /// One UPDATE per set of equal attributes (RFC 4271 §4.3: the NLRI of
    /// an UPDATE share its path attributes), split to fit the message size.
    fn send_announce(&mut self, now: Instant, routes: &[(Ipv4Net, Arc<PathAttrs>)]) {
        let mut groups: Vec<(Arc<PathAttrs>, Vec<Ipv4Net>)> = Vec::new();
        let mut index: HashMap<Arc<PathAttrs>, usize> = HashMap::new();
        for (p, a) in routes {
            match index.get(a) {
                Some(&i) => {
                    if let Some(g) = groups.get_mut(i) {
                        g.1.push(*p);
                    }
                }
                None => {
                    index.insert(a.clone(), groups.len());
                    groups.push((a.clone(), vec![*p]));
                }
            }
        }
        for (attrs, prefixes) in groups {
            let probe = Message::Update(Update {
                attrs: (*attrs).clone(),
                ..Update::default()
            })
            .encode(&self.ctx);
            // Each prefix takes at most 5 octets (RFC 4271 §4.3).
            let per_msg = (MAX_MESSAGE_LEN.saturating_sub(probe.len()) / 5).max(1);
            for chunk in prefixes.chunks(per_msg) {
                self.stats.updates_out += 1;
                let u = Update {
                    attrs: (*attrs).clone(),
                    nlri: chunk.to_vec(),
                    ..Update::default()
                };
                self.send(&Message::Update(u));
            }
        }
        self.rearm_keepalive(now);
    }

    fn send_withdraw(&mut self, now: Instant, prefixes: &[Ipv4Net]) {
        let per_msg = (MAX_MESSAGE_LEN - HEADER_LEN - 4) / 5;
        for chunk in prefixes.chunks(per_msg) {
            self.stats.updates_out += 1;
            self.send(&Message::Update(Update {
                withdrawn: chunk.to_vec(),
                ..Update::default()
            }));
        }
        self.rearm_keepalive(now);
    }

    /// RFC 4271 §10: an UPDATE also counts as a keepalive.
    fn rearm_keepalive(&mut self, now: Instant) {
        if self.timers[Timer::Keepalive as usize].is_some() {
            let d = self
                .negotiated
                .map(|n| Duration::from_secs(n.keepalive.into()));
            self.arm(Timer::Keepalive, now, d);
        }
    }

    /// RFC 4271 §9 (Adj-RIB-In part) with RFC 7606 outcomes.
    fn process_update(&mut self, u: Update) {
        let mut changes = RouteChanges::default();
        for p in u.withdrawn_all() {
            if self.adj_rib_in.remove(p).is_some() {
                changes.withdrawn.push(*p);
            }
        }
        for e in u
            .errors
            .iter()
            .filter(|e| e.action == ErrorAction::AttributeDiscard)
        {
            self.stats.attribute_discards += 1;
            self.log(LogEvent::AttributeDiscarded(e.clone()));
        }
        let announced: Vec<Ipv4Net> = u.announced().copied().collect();
        if !announced.is_empty() {
            let reject = u
                .errors
                .iter()
                .find(|e| e.action == ErrorAction::TreatAsWithdraw)
                .cloned()
                .or_else(|| self.semantic_error(&u));
            match reject {
                Some(error) => {
                    self.stats.treat_as_withdraw += 1;
                    self.log(LogEvent::TreatAsWithdraw {
                        error,
                        prefixes: announced.len(),
                    });
                    for p in &announced {
                        if self.adj_rib_in.remove(p).is_some() {
                            changes.withdrawn.push(*p);
                        }
                    }
                }
                None => {
                    let mut attrs = u.attrs.clone();
                    attrs.next_hop = u.next_hop();
                    attrs.mp_reach = None;
                    attrs.mp_unreach = None;
                    if self.config.is_ebgp() && attrs.local_pref.take().is_some() {
                        // RFC 4271 §5.1.5 / RFC 7606 §7.5.
                        self.stats.attribute_discards += 1;
                        self.log(LogEvent::AttributeDiscarded(AttrError {
                            type_code: crate::update::attr_type::LOCAL_PREF,
                            kind: AttrErrorKind::LocalPrefFromExternal,
                            action: ErrorAction::AttributeDiscard,
                        }));
                    }
                    let attrs = Arc::new(attrs);
                    for p in announced {
                        changes.withdrawn.retain(|w| *w != p);
                        if self.adj_rib_in.insert(p, attrs.clone()).as_ref() != Some(&attrs) {
                            changes.announced.push((p, attrs.clone()));
                        }
                    }
                }
            }
        }
        if !changes.is_empty() {
            self.events.push_back(Event::RoutesChanged(changes));
        }
    }

    /// RFC 4271 §6.3 checks that need the session: the leftmost AS of an
    /// eBGP route and a usable NEXT_HOP. Both make the routes unusable
    /// without resetting the session (RFC 7606 §7.2, §7.3).
    fn semantic_error(&self, u: &Update) -> Option<AttrError> {
        let tw = |type_code, kind| {
            Some(AttrError {
                type_code,
                kind,
                action: ErrorAction::TreatAsWithdraw,
            })
        };
        if self.config.is_ebgp() {
            let first = u.attrs.as_path.as_ref().and_then(|p| p.first_as());
            if first != Some(self.config.peer_asn) {
                return tw(
                    crate::update::attr_type::AS_PATH,
                    AttrErrorKind::FirstAsNotPeer {
                        expected: self.config.peer_asn,
                        found: first,
                    },
                );
            }
        }
        let nh = u.next_hop()?;
        if nh.is_unspecified()
            || nh.is_broadcast()
            || nh.is_multicast()
            || nh == self.config.local_addr
        {
            return tw(
                crate::update::attr_type::NEXT_HOP,
                AttrErrorKind::InvalidNextHop(nh),
            );
        }
        None
    }
}

fn event_name(e: &FsmEvent) -> String {
    match e {
        FsmEvent::MessageError(err) => format!("MessageError({err})"),
        FsmEvent::NotifMsg(n) => format!("NotifMsg({n})"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new(
            Ipv4Addr::new(169, 254, 10, 2),
            Ipv4Addr::new(169, 254, 10, 1),
            65530,
        )
    }

    #[test]
    fn defaults_match_the_documented_peer() {
        let c = config();
        assert_eq!((c.local_asn, c.hold_time, c.keepalive), (45104, 30, 10));
        assert_eq!(c.router_id, c.local_addr);
        assert!(c.is_ebgp());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn validate_rejects_unworkable_configs() {
        let mut c = config();
        c.hold_time = 2;
        assert_eq!(c.validate(), Err(ConfigError::HoldTime(2)));
        let mut c = config();
        c.peer_asn = 23456;
        assert_eq!(c.validate(), Err(ConfigError::ReservedAsn(23456)));
        let mut c = config();
        c.local_asn = 0;
        assert_eq!(c.validate(), Err(ConfigError::ReservedAsn(0)));
        let mut c = config();
        c.router_id = Ipv4Addr::UNSPECIFIED;
        assert_eq!(c.validate(), Err(ConfigError::RouterId));
        let mut c = config();
        c.peer_addr = c.local_addr;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("169.254.10.2")
        );
        let mut c = config();
        c.hold_time = 0;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn down_reasons_read_well() {
        assert_eq!(
            DownReason::HoldTimerExpired { hold_time: 30 }.to_string(),
            "hold timer expired: nothing received from the peer for 30 s (tunnel down or peer stopped?)"
        );
        let e = crate::error::DecodeError::from(OpenError::BadPeerAs {
            expected: 65530,
            received: 65000,
        });
        let r = DownReason::Error {
            sent: e.notification(),
            detail: e.to_string(),
        };
        assert_eq!(
            r.to_string(),
            "peer announced AS 65000 but this session expects AS 65530; sent NOTIFICATION 2/2 (OPEN Message Error / Bad Peer AS)"
        );
    }
}
