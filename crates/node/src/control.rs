//! The control thread: it owns the IKE [`Endpoint`] and the [`Dataplane`], applies the
//! desired state, turns IKE events into ESP SAs, kernel routes, tunnel status and
//! connection log entries, and retries failed negotiations.
//!
//! Inputs arrive on one bounded channel ([`Input`]): IKE datagrams forwarded from the
//! data plane's control channel, desired-state updates from the reconciler, commands
//! (reset), wake-ups from the workers (traffic for a tunnel that is down, an SA near the
//! end of its sequence space). The thread sleeps until the next input or the earliest
//! timer (IKE retransmissions/rekeys/DPD, retries, the status refresh).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use dataplane::{
    AddMode, ControlPacket, Dataplane, Netlink, PolicyTable, RouteSpec, RouteTable, Source,
};
use esp::{InboundSa, Lifetime, OutboundSa, SaDb, SaParams, Selectors, TrafficSelector, UdpEncap};
use ike::{ChildSa, DeleteReason, Endpoint, Event, PeerConfig, PeerId, Phase, TsRange};
use ipnet::Ipv4Net;
use model::{
    ChildSaStatus, IkeSaStatus, IkeSpis, IkeVersion, LogEntry, LogLevel, TunnelPhase, TunnelStatus,
};
use tokio::sync::{mpsc, oneshot};

use crate::desired::Desired;
use crate::fwd::{ConnFwd, Fwd, NONE, TunnelKey, carries_traffic};
use crate::health::{self, Health};
use crate::ikestats::{self, IkeSnapshot, SharedIkeStats};

/// Tries in quick succession before a tunnel shows `phase1_failed`/`phase2_failed`
/// (the product documentation: "if 3 retries still fail, it shows Phase 1 failed or
/// Phase 2 failed, and the system retries every 12 seconds").
pub const QUICK_TRIES: u32 = 3;
/// Delay between the quick tries.
pub const QUICK_RETRY: Duration = Duration::from_secs(2);
/// Delay between retries once a tunnel shows failed.
pub const SLOW_RETRY: Duration = Duration::from_secs(12);
/// How often ESP counters are copied into the tunnel status.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// Delay before renegotiating a tunnel that went down while it should be up.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// A Child SA the peer deletes sooner than this after it was negotiated counts as a
/// quick loss (see [`TunnelRt::quick_losses`]).
const QUICK_LOSS: Duration = Duration::from_secs(10);
/// How often a tunnel logs ESP from its peer that its Child SAs drop for a reason the
/// operator can act on (see [`Control::esp_faults`]).
const ESP_FAULT_EVERY: Duration = Duration::from_secs(60);
/// How long an IKE SA that came up without a Child SA (RFC 6023) waits for the peer's
/// CREATE_CHILD_SA before this gateway negotiates the Child SA itself.
const CHILDLESS_WAIT: Duration = Duration::from_secs(5);
/// How long a Child SA negotiated on an existing IKE SA (see [`Control::retries`]) may
/// take before the retry after it starts over with a new IKE SA.
const CHILD_SA_WAIT: Duration = Duration::from_secs(30);
/// How often a gateway address reports first IKE messages from unexpected addresses to
/// its tunnels (see [`Control::unknown_peer`]).
const UNKNOWN_PEER_EVERY: Duration = Duration::from_secs(30);
/// How many of a gateway address's tunnels get such a report at most.
const UNKNOWN_PEER_TUNNELS: usize = 16;
/// Longest a rekeyed Child SA's outbound side waits for proof that the peer has
/// installed its inbound side (see [`ChildRt::defer`]).
const SWITCH_DEFER: Duration = Duration::from_secs(5);
/// How often a deferred outbound switch checks for ESP on the new inbound SA.
const SWITCH_POLL: Duration = Duration::from_millis(100);
/// Inputs handled before pending outputs are flushed.
const BATCH: usize = 64;
/// The shortest time between two status publications (`publish_changed` builds and
/// compares the status of each tunnel marked in [`Dirty`]): a tunnel that goes through
/// several phases within it is written once. Changes reach the store at most this late.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// What the control thread is told.
pub(crate) enum Input {
    /// An IKE message the data plane passed up (non-ESP marker already stripped).
    Packet(ControlPacket),
    /// The whole desired state (replaces the previous one).
    Desired(Box<Desired>),
    /// Tear a tunnel down and renegotiate.
    Reset {
        tunnel_id: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A worker saw traffic for a connection without a tunnel up (see `ConnFwd::trigger`).
    Traffic,
    /// A worker saw ESP with an unknown SPI from a customer gateway (see
    /// `Fwd::unknown_spi`).
    UnknownSpi,
    /// An outbound SA of this tunnel is near the end of its sequence space: rekey.
    SoftExpired(TunnelKey),
    /// A worker recorded an answer to a health-check probe (see `health.rs`).
    Health,
    /// A shared secret computed by a DH worker (`dhpool::DhWorkers`).
    DhDone(ike::DhDone),
    Shutdown,
}

/// Observed state for the store, written in order by the node's writer task.
#[derive(Debug)]
pub(crate) enum StoreWrite {
    Status {
        tunnel_id: String,
        status: TunnelStatus,
    },
    Log {
        connection_id: String,
        entry: LogEntry,
    },
}

/// NAT traversal settings of the data plane: the port (4500 normally; IKE on 500 needs
/// no special handling here) and the NAT-keepalive interval (zero: none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    pub natt: u16,
    pub nat_keepalive: Duration,
}

pub(crate) struct Control {
    endpoint: Endpoint,
    dp: Dataplane,
    netlink: Option<Netlink>,
    ports: Ports,
    fwd: Arc<ArcSwap<Fwd>>,
    sadb: Arc<SaDb<TunnelKey>>,
    writes: mpsc::UnboundedSender<StoreWrite>,
    tunnels: BTreeMap<String, TunnelRt>,
    by_peer: HashMap<PeerId, String>,
    /// Tunnels configured with NAT traversal off, the only ones [`Control::nat_check`]
    /// looks at: it runs for every IKE_SA_INIT request, and a walk over all tunnels
    /// there made a burst of n setups cost O(n²) (issue 8).
    nat_off: BTreeSet<String>,
    /// Connection ID → tunnel IDs in order, as last applied.
    conns: BTreeMap<String, Vec<String>>,
    triggers: HashMap<String, Arc<AtomicBool>>,
    /// The flags of `Fwd::unknown_spi`, kept across snapshots; re-armed every status
    /// tick, so a peer sending on stale SAs wakes this thread at most once per tick.
    unknown_spi: HashMap<(Ipv4Addr, Ipv4Addr), Arc<AtomicBool>>,
    /// The same addresses → the connections with a tunnel between them, so a flag
    /// costs a lookup, not a walk over every tunnel.
    unknown_spi_conns: HashMap<(Ipv4Addr, Ipv4Addr), Vec<String>>,
    /// Tunnels with a Child SA behind a NAT: the only ones
    /// [`Control::nat_keepalives`] looks at.
    natted: BTreeSet<String>,
    /// Gateway address → when a first IKE message from an address no tunnel there
    /// expects was last reported to its tunnels ([`Control::unknown_peer`]).
    unknown_peer_at: HashMap<Ipv4Addr, Instant>,
    health: Health,
    kernel_routes: BTreeSet<Ipv4Net>,
    notes_logged: HashSet<(String, String)>,
    next_peer: u64,
    next_tick: Instant,
    /// When the per-tunnel timers (retries, deferred outbound switches) are next due: no
    /// earlier than this does a loop turn walk the tunnels for them. Every place that
    /// sets such a timer lowers it, so a turn costs O(inputs), not O(tunnels), while
    /// thousands of tunnels come up (issue 8).
    next_walk: Instant,
    /// When `publish_changed` last ran, and whether a loop turn since then skipped it.
    published_at: Instant,
    publish_due: bool,
    /// Tunnels whose status may have changed since the last publication.
    dirty: Dirty,
    /// The endpoint's counters as `GET /metrics` shows them, refreshed every loop pass.
    ike_stats: SharedIkeStats,
}

/// The node's view of one tunnel.
struct TunnelRt {
    id: String,
    conn_id: String,
    peer: PeerId,
    /// The IKE configuration in the endpoint; `None` when the tunnel cannot run here.
    cfg: Option<PeerConfig>,
    effective_immediately: bool,
    /// The tunnel should be kept up (effective immediately, triggered by traffic, or
    /// once it negotiated): retry failures, restart after the peer went away.
    want_up: bool,
    phase: TunnelPhase,
    reason: Option<String>,
    since: DateTime<Utc>,
    ike: Option<IkeInfo>,
    children: Vec<ChildRt>,
    /// IKEv1 Child SAs whose inbound side is installed while we wait for the
    /// initiator's Quick Mode message 3 (`ike::Event::ChildSaPending`).
    pending: Vec<PendingChild>,
    failures: u32,
    retry_at: Option<Instant>,
    /// The pending retry follows the deletion of the tunnel's last Child SA while its
    /// IKE SA stayed up (the peer deleted it, or it expired): the retry negotiates a
    /// Child SA on that IKE SA instead of replacing the IKE SA (see [`Control::retries`]).
    child_gone: bool,
    /// How many of the tunnel's last Child SAs in a row went away within [`QUICK_LOSS`]
    /// of being negotiated, taking the tunnel down (a peer that accepts a Child SA and
    /// then deletes it, e.g. because it cannot install it). Each one doubles the delay
    /// before the next negotiation, up to [`SLOW_RETRY`], instead of one a second.
    quick_losses: u8,
    /// Fingerprint of the status last sent to the writer ([`fingerprint`]), to send it
    /// again only when it changed. A hash, not the status itself: a copy of every
    /// tunnel's `TunnelStatus` (strings, a `Vec` per Child SA) was ~0.8 KiB per tunnel
    /// (issue 8).
    written: Option<u64>,
    /// Set when the peer's IKE_SA_INIT showed a NAT on the way while this tunnel has
    /// NAT traversal off (see [`Control::nat_check`]); shown in the status reason.
    nat_note: Option<String>,
    /// Set while the tunnel is not established and a peer no tunnel expects knocked on
    /// its gateway address (see [`Control::unknown_peer`]); shown in the status reason.
    peer_note: Option<String>,
    /// NAT-keepalive state of the Child SA that sends: its outbound packet count when
    /// last looked at, and when a keepalive is due if that count stays.
    keepalive: (u64, Instant),
    /// When [`Control::esp_faults`] last logged for this tunnel.
    esp_fault_at: Option<Instant>,
}

struct IkeInfo {
    version: IkeVersion,
    spi_i: u64,
    spi_r: u64,
    algorithms: String,
    established_at: DateTime<Utc>,
    lifetime: Duration,
}

struct ChildRt {
    spi_in: u32,
    spi_out: u32,
    local_ts: Vec<String>,
    remote_ts: Vec<String>,
    algorithms: String,
    inbound: Arc<InboundSa>,
    outbound: Arc<OutboundSa>,
    /// Counters as of the last status refresh: bytes/packets in, bytes/packets out.
    counters: [u64; 4],
    /// A rekey whose outbound side must not be used yet: the peer may not have
    /// installed the matching inbound SA (see `ike::Event::ChildSaRekeyed`). Cleared
    /// when the replaced SA is deleted, when ESP arrives on this SA's inbound side (the
    /// peer sends on it, so it has both), or at the deadline.
    defer: Option<Defer>,
    /// Behind a NAT (ESP in UDP): our and the peer's NAT-T address, which NAT-keepalives
    /// go between while the SA sends nothing (see [`Control::nat_keepalives`]).
    keepalive: Option<(SocketAddrV4, SocketAddrV4)>,
    /// The inbound SA's integrity and selector drops as last logged (see
    /// [`Control::esp_faults`]).
    faults: [u64; 2],
}

/// A Child SA announced by `ike::Event::ChildSaPending`: its inbound SA is in the
/// SADB; both SAs move to a [`ChildRt`] when the Child SA is established.
struct PendingChild {
    spi_in: u32,
    inbound: Arc<InboundSa>,
    outbound: Arc<OutboundSa>,
}

#[derive(Debug, Clone, Copy)]
struct Defer {
    /// Inbound SPI of the Child SA this one replaces.
    old_spi_in: u32,
    until: Instant,
}

impl TunnelRt {
    fn can_initiate(&self) -> bool {
        self.cfg.as_ref().is_some_and(|c| c.remote_addr().is_some())
    }

    fn set_phase(&mut self, phase: TunnelPhase, reason: Option<String>) {
        if phase != self.phase {
            self.phase = phase;
            self.since = Utc::now();
        }
        self.reason = reason;
    }
}

impl Control {
    pub(crate) fn new(
        endpoint: Endpoint,
        dp: Dataplane,
        ports: Ports,
        fwd: Arc<ArcSwap<Fwd>>,
        sadb: Arc<SaDb<TunnelKey>>,
        writes: mpsc::UnboundedSender<StoreWrite>,
        ike_stats: SharedIkeStats,
    ) -> Self {
        let netlink = match Netlink::open() {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::error!(error = %e, "cannot open rtnetlink: no kernel routes into the tunnel device");
                None
            }
        };
        Self {
            endpoint,
            dp,
            netlink,
            ports,
            fwd,
            sadb,
            writes,
            tunnels: BTreeMap::new(),
            by_peer: HashMap::new(),
            nat_off: BTreeSet::new(),
            conns: BTreeMap::new(),
            triggers: HashMap::new(),
            unknown_spi: HashMap::new(),
            unknown_spi_conns: HashMap::new(),
            unknown_peer_at: HashMap::new(),
            natted: BTreeSet::new(),
            kernel_routes: BTreeSet::new(),
            notes_logged: HashSet::new(),
            next_peer: 1,
            next_tick: Instant::now() + STATUS_INTERVAL,
            next_walk: Instant::now(),
            published_at: Instant::now(),
            publish_due: false,
            dirty: Dirty::default(),
            health: Health::new(&mut crypto::OsRandom),
            ike_stats,
        }
    }

    /// Runs until [`Input::Shutdown`] or until every sender is gone.
    pub(crate) fn run(mut self, rx: Receiver<Input>) {
        'outer: loop {
            let now = Instant::now();
            let wait = self.deadline().saturating_duration_since(now);
            let mut next = match rx.recv_timeout(wait) {
                Ok(i) => Some(i),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut handled = 0;
            while let Some(input) = next.take() {
                if matches!(input, Input::Shutdown) {
                    break 'outer;
                }
                self.input(input);
                handled += 1;
                if handled < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            let now = Instant::now();
            if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                self.endpoint.handle_timeout(now);
            }
            if now >= self.next_walk {
                self.retries(now);
                self.deferred_switches(now);
                self.next_walk = self.tunnel_timers(now);
            }
            self.health_tick(now);
            self.flush();
            // After the inputs and timers of this pass, so a dropped datagram shows in
            // `GET /metrics` without waiting for the status tick.
            ikestats::publish(
                &self.ike_stats,
                IkeSnapshot {
                    stats: self.endpoint.stats(),
                    half_open: self.endpoint.half_open_total(),
                },
            );
            let refresh = now >= self.next_tick;
            if refresh {
                self.next_tick = now + STATUS_INTERVAL;
                self.nat_keepalives(now);
                self.esp_faults(now);
                for flag in self.unknown_spi.values() {
                    flag.store(false, Ordering::Release);
                }
            }
            if refresh || now >= self.published_at + PUBLISH_EVERY {
                self.published_at = now;
                self.publish_due = false;
                self.publish_changed(refresh);
            } else {
                self.publish_due = self.dirty.pending();
            }
        }
        self.shutdown();
    }

    fn deadline(&self) -> Instant {
        let mut d = self.next_tick;
        if let Some(t) = self.health.deadline() {
            d = d.min(t);
        }
        if let Some(t) = self.endpoint.poll_timeout() {
            d = d.min(t);
        }
        if self.publish_due {
            d = d.min(self.published_at + PUBLISH_EVERY);
        }
        d.min(self.next_walk)
    }

    /// The earliest per-tunnel timer (a retry, a deferred switch's deadline, or the
    /// next poll for traffic on a deferred SA), at most [`STATUS_INTERVAL`] away: one
    /// walk over all tunnels, run only when [`Control::next_walk`] is due.
    fn tunnel_timers(&self, now: Instant) -> Instant {
        let mut d = now + STATUS_INTERVAL;
        for t in self.tunnels.values() {
            if let Some(r) = t.retry_at {
                d = d.min(r);
            }
            for c in &t.children {
                if let Some(f) = c.defer {
                    d = d.min(f.until).min(now + SWITCH_POLL);
                }
            }
        }
        d
    }

    fn input(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Packet(p) => {
                if let Source::Udp { local, remote } = p.source {
                    self.nat_check(local, remote, &p.data);
                    let before = self.endpoint.stats();
                    self.endpoint.handle_datagram(
                        now,
                        SocketAddr::V4(local),
                        SocketAddr::V4(remote),
                        &p.data,
                    );
                    let after = self.endpoint.stats();
                    if after.unknown_spi > before.unknown_spi {
                        self.unknown_ike_spi(now, (*local.ip(), *remote.ip()));
                    }
                    if after.no_peer > before.no_peer {
                        self.unknown_peer(now, local, remote);
                    }
                }
            }
            Input::Desired(d) => self.apply(now, *d),
            Input::Reset { tunnel_id, reply } => {
                let _ = reply.send(self.reset(now, &tunnel_id));
            }
            Input::Traffic => self.traffic(now),
            Input::UnknownSpi => self.unknown_spi(now),
            Input::SoftExpired(key) => {
                if let Err(e) = self.endpoint.rekey_child(now, PeerId(key)) {
                    tracing::debug!(error = %e, "rekey on sequence soft limit");
                }
            }
            Input::DhDone(done) => self.endpoint.handle_dh_done(now, done),
            Input::Health | Input::Shutdown => {}
        }
    }

    /// NAT detection for tunnels with NAT traversal off. The engine ignores the peer's
    /// NAT_DETECTION_*_IP notifies then (RFC 7296 §2.23: a responder without NAT-T
    /// support does not answer them), so the tunnel may establish on UDP 500 and still
    /// carry nothing: ESP without UDP encapsulation does not pass a NAPT. The hashes
    /// in the peer's IKE_SA_INIT request still tell whether a NAT rewrote its address
    /// (SPIr is zero in the request), so the status can say why and what to change.
    fn nat_check(&mut self, local: SocketAddrV4, remote: SocketAddrV4, data: &[u8]) {
        use ike::wire::Payload;
        use ike::wire::registry::{ExchangeType, NotifyType};
        // Only IKEv2 IKE_SA_INIT requests on the IKE port (on 4500 NAT-T is in use).
        let is_init = data.len() > 18
            && data.get(17) == Some(&0x20)
            && data.get(18) == Some(&ExchangeType::IKE_SA_INIT.0);
        if self.nat_off.is_empty() || !is_init || local.port() == self.ports.natt {
            return;
        }
        let Ok(msg) = ike::wire::Message::decode(data) else {
            return;
        };
        let h = &msg.header;
        if h.flags.response() || h.spi_r != 0 {
            return;
        }
        let source: Vec<&[u8]> = msg
            .payloads
            .iter()
            .filter_map(|p| match p {
                Payload::Notify(n) if n.ntype == NotifyType::NAT_DETECTION_SOURCE_IP => {
                    Some(n.data.as_slice())
                }
                _ => None,
            })
            .collect();
        let dest: Vec<&[u8]> = msg
            .payloads
            .iter()
            .filter_map(|p| match p {
                Payload::Notify(n) if n.ntype == NotifyType::NAT_DETECTION_DESTINATION_IP => {
                    Some(n.data.as_slice())
                }
                _ => None,
            })
            .collect();
        if source.is_empty() && dest.is_empty() {
            return;
        }
        let seen = ike::keys::nat_hash(h.spi_i, 0, SocketAddr::V4(remote));
        let ours = ike::keys::nat_hash(h.spi_i, 0, SocketAddr::V4(local));
        let peer_natted = !source.is_empty() && !source.contains(&seen.as_slice());
        let we_natted = !dest.is_empty() && !dest.contains(&ours.as_slice());
        let note = (peer_natted || we_natted).then(|| {
            format!(
                "the peer's NAT detection hashes (IKE_SA_INIT from {remote}) say a NAT \
                 is on the path or the peer forces UDP encapsulation, but nat_traversal \
                 is off on this tunnel: ESP cannot pass; enable nat_traversal"
            )
        });
        let mut logs = Vec::new();
        for id in &self.nat_off {
            let Some(t) = self.tunnels.get_mut(id) else {
                continue;
            };
            let Some(cfg) = &t.cfg else { continue };
            if cfg.nat_traversal
                || cfg.local.ip() != IpAddr::V4(*local.ip())
                || cfg
                    .remote_addr()
                    .is_some_and(|r| r.ip() != IpAddr::V4(*remote.ip()))
            {
                continue;
            }
            if t.nat_note != note {
                self.dirty.mark(&t.id);
                if let Some(n) = &note {
                    logs.push((t.conn_id.clone(), t.id.clone(), n.clone()));
                }
                t.nat_note = note.clone();
            }
        }
        for (conn, id, msg) in logs {
            self.log(
                &conn,
                Some(&id),
                LogLevel::Warn,
                "nat_without_nat_traversal",
                msg,
            );
        }
    }

    // ---- desired state ------------------------------------------------------------

    fn apply(&mut self, now: Instant, d: Desired) {
        let wanted: HashSet<&str> = d.tunnels.iter().map(|t| t.id.as_str()).collect();
        let gone: Vec<String> = self
            .tunnels
            .keys()
            .filter(|id| !wanted.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            self.remove_tunnel(now, &id);
        }
        for spec in &d.tunnels {
            let cfg = spec.peer.as_ref().ok().cloned();
            let why = spec.peer.as_ref().err().cloned();
            if !self.tunnels.contains_key(&spec.id) {
                let peer = PeerId(self.next_peer);
                self.next_peer += 1;
                let t = TunnelRt {
                    id: spec.id.clone(),
                    conn_id: spec.conn_id.clone(),
                    peer,
                    cfg: None,
                    effective_immediately: spec.effective_immediately,
                    want_up: false,
                    phase: TunnelPhase::Idle,
                    reason: None,
                    since: Utc::now(),
                    ike: None,
                    children: Vec::new(),
                    pending: Vec::new(),
                    failures: 0,
                    retry_at: None,
                    child_gone: false,
                    quick_losses: 0,
                    written: None,
                    nat_note: None,
                    peer_note: None,
                    keepalive: (0, now),
                    esp_fault_at: None,
                };
                self.by_peer.insert(peer, spec.id.clone());
                self.tunnels.insert(spec.id.clone(), t);
                self.configure(now, &spec.id, cfg, why, spec.effective_immediately, true);
                continue;
            }
            let Some(t) = self.tunnels.get(&spec.id) else {
                continue;
            };
            if t.cfg != cfg || (cfg.is_none() && t.reason != why) {
                self.configure(now, &spec.id, cfg, why, spec.effective_immediately, false);
            } else if t.effective_immediately != spec.effective_immediately {
                let id = spec.id.clone();
                if let Some(t) = self.tunnels.get_mut(&id) {
                    t.effective_immediately = spec.effective_immediately;
                }
                if spec.effective_immediately {
                    self.start(now, &id, "effective immediately");
                }
            }
        }
        self.conns = d
            .conns
            .iter()
            .map(|c| (c.id.clone(), c.tunnels.clone()))
            .collect();
        self.dirty.health_conns = d
            .conns
            .iter()
            .filter(|c| c.health.is_some())
            .map(|c| c.id.clone())
            .collect();
        self.dirty.mark_all();
        let tunnels = &self.tunnels;
        self.health
            .configure(&d.conns, |id| tunnels.get(id).map(|t| t.peer.0));
        self.publish_fwd(&d);
        self.kernel(&d.kernel_routes);
        for (conn, note) in d.notes {
            if self.notes_logged.insert((conn.clone(), note.clone())) {
                self.log(&conn, None, LogLevel::Warn, "route_not_installed", note);
            }
        }
    }

    /// (Re)configures a tunnel in the IKE endpoint.
    fn configure(
        &mut self,
        now: Instant,
        id: &str,
        cfg: Option<PeerConfig>,
        why: Option<String>,
        effective_immediately: bool,
        new: bool,
    ) {
        let Some(t) = self.tunnels.get_mut(id) else {
            return;
        };
        self.dirty.mark(id);
        let peer = t.peer;
        let conn = t.conn_id.clone();
        let had = t.cfg.is_some();
        t.effective_immediately = effective_immediately;
        t.failures = 0;
        t.retry_at = None;
        t.nat_note = None;
        t.peer_note = None;
        let mut renegotiating = false;
        match (had, cfg) {
            (true, Some(c)) => {
                let remote = c.remote_addr().is_some();
                let had_sas = !self.endpoint.ike_sas(peer).is_empty() || t.ike.is_some();
                t.cfg = Some(c.clone());
                if let Err(e) = self.endpoint.update_peer(now, peer, c) {
                    tracing::error!(error = %e, tunnel = id, "update_peer");
                }
                renegotiating = had_sas && remote;
            }
            (false, Some(c)) => {
                t.cfg = Some(c.clone());
                if let Err(e) = self.endpoint.add_peer(peer, c) {
                    tracing::error!(error = %e, tunnel = id, "add_peer");
                }
            }
            (true, None) => {
                t.cfg = None;
                if let Err(e) = self.endpoint.remove_peer(now, peer) {
                    tracing::error!(error = %e, tunnel = id, "remove_peer");
                }
            }
            (false, None) => {}
        }
        let Some(t) = self.tunnels.get_mut(id) else {
            return;
        };
        if t.cfg.as_ref().is_some_and(|c| !c.nat_traversal) {
            self.nat_off.insert(id.to_string());
        } else {
            self.nat_off.remove(id);
        }
        if t.cfg.is_none() {
            t.want_up = false;
            let reason = why.unwrap_or_else(|| "not configured".into());
            t.set_phase(TunnelPhase::Idle, Some(reason.clone()));
            self.log(
                &conn,
                Some(id),
                LogLevel::Error,
                "tunnel_not_runnable",
                reason,
            );
            return;
        }
        let event = if new {
            "tunnel_configured"
        } else {
            "config_changed"
        };
        let msg = if new {
            "tunnel configured on this node".to_string()
        } else {
            "tunnel configuration changed; renegotiating with the new settings".to_string()
        };
        self.log(&conn, Some(id), LogLevel::Info, event, msg);
        if renegotiating {
            if let Some(t) = self.tunnels.get_mut(id) {
                t.want_up = true;
                t.set_phase(
                    TunnelPhase::Phase1Negotiating,
                    Some("configuration changed; renegotiating".into()),
                );
            }
        } else if effective_immediately {
            self.start(now, id, "effective immediately");
        } else if let Some(t) = self.tunnels.get_mut(id) {
            let reason = if t.can_initiate() {
                "waiting for traffic from the VPC or for the peer to initiate"
            } else {
                "waiting for the peer to initiate (customer gateway 0.0.0.0 accepts any peer)"
            };
            t.set_phase(TunnelPhase::Idle, Some(reason.into()));
        }
    }

    /// Starts negotiating a tunnel that is idle, if we can initiate.
    fn start(&mut self, now: Instant, id: &str, why: &str) {
        let Some(t) = self.tunnels.get_mut(id) else {
            return;
        };
        self.dirty.mark(id);
        if !t.can_initiate() {
            t.set_phase(
                TunnelPhase::Idle,
                Some(
                    "waiting for the peer to initiate (customer gateway 0.0.0.0 accepts any peer)"
                        .into(),
                ),
            );
            return;
        }
        t.want_up = true;
        if t.phase == TunnelPhase::Established {
            return;
        }
        match self.endpoint.initiate(now, t.peer) {
            Ok(()) => {
                if !matches!(
                    t.phase,
                    TunnelPhase::Phase1Failed | TunnelPhase::Phase2Failed
                ) {
                    t.set_phase(
                        TunnelPhase::Phase1Negotiating,
                        Some(format!("negotiating ({why})")),
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, tunnel = id, "initiate"),
        }
    }

    fn remove_tunnel(&mut self, now: Instant, id: &str) {
        let Some(peer) = self.tunnels.get(id).map(|t| t.peer) else {
            return;
        };
        if self.tunnels.get(id).is_some_and(|t| t.cfg.is_some()) {
            // Sends INFORMATIONAL Delete for the IKE SA (and so its Child SAs).
            if let Err(e) = self.endpoint.remove_peer(now, peer) {
                tracing::debug!(error = %e, tunnel = id, "remove_peer");
            }
            self.flush();
        }
        self.nat_off.remove(id);
        self.natted.remove(id);
        if let Some(t) = self.tunnels.remove(id) {
            for spi in t.children.iter().map(|c| c.spi_in) {
                self.sadb.remove_inbound(spi);
            }
            for spi in t.pending.iter().map(|p| p.spi_in) {
                self.sadb.remove_inbound(spi);
            }
            self.sadb.remove_outbound(&t.peer.0);
            self.by_peer.remove(&t.peer);
            self.log(
                &t.conn_id,
                Some(id),
                LogLevel::Info,
                "tunnel_removed",
                "tunnel removed; its SAs were deleted".into(),
            );
        }
    }

    fn reset(&mut self, now: Instant, id: &str) -> Result<(), String> {
        let t = self
            .tunnels
            .get_mut(id)
            .ok_or_else(|| format!("tunnel {id} is not running on this node"))?;
        self.dirty.mark(id);
        if t.cfg.is_none() {
            return Err(t
                .reason
                .clone()
                .unwrap_or_else(|| format!("tunnel {id} cannot run on this node")));
        }
        let peer = t.peer;
        t.failures = 0;
        t.retry_at = None;
        if t.can_initiate() {
            t.want_up = true;
            t.set_phase(
                TunnelPhase::Phase1Negotiating,
                Some("reset requested; renegotiating".into()),
            );
        } else {
            t.set_phase(
                TunnelPhase::Idle,
                Some("reset requested; waiting for the peer to initiate".into()),
            );
        }
        let conn = t.conn_id.clone();
        self.endpoint.reset(now, peer).map_err(|e| e.to_string())?;
        self.log(
            &conn,
            Some(id),
            LogLevel::Info,
            "reset_requested",
            "tunnel reset through the API: SAs deleted, renegotiating".into(),
        );
        Ok(())
    }

    fn traffic(&mut self, now: Instant) {
        let mut start = Vec::new();
        for (conn, tunnels) in &self.conns {
            let Some(flag) = self.triggers.get(conn) else {
                continue;
            };
            if !flag.swap(false, Ordering::AcqRel) {
                continue;
            }
            for id in tunnels {
                if self
                    .tunnels
                    .get(id)
                    .is_some_and(|t| t.phase == TunnelPhase::Idle && t.can_initiate())
                {
                    start.push(id.clone());
                }
            }
        }
        for id in start {
            if let Some(t) = self.tunnels.get(&id) {
                let conn = t.conn_id.clone();
                self.log(
                    &conn,
                    Some(&id),
                    LogLevel::Info,
                    "traffic_triggered",
                    "traffic from the VPC for this connection; negotiating".into(),
                );
            }
            self.start(now, &id, "traffic from the VPC");
        }
    }

    /// ESP with an SPI we do not have came from a tunnel's customer gateway: the peer
    /// still holds SAs this node lost (it restarted, or the SAs were deleted without
    /// the peer hearing of it), and sends into the void until its DPD gives up, which
    /// takes minutes. The idle tunnels of the connections with a tunnel to that address
    /// negotiate now (Cisco's invalid-SPI recovery, Juniper's respond-bad-spi); with no
    /// other IKE SA to the peer each sends INITIAL_CONTACT (RFC 7296 §2.4), so the peer
    /// drops the stale SAs.
    fn unknown_spi(&mut self, now: Instant) {
        let from: Vec<(Ipv4Addr, Ipv4Addr)> = self
            .unknown_spi
            .iter()
            .filter(|(_, f)| f.load(Ordering::Acquire))
            .map(|(k, _)| *k)
            .collect();
        self.recover_lost_sas(now, &from, Lost::Esp);
    }

    /// An IKE message on an IKE SA we do not have came from `from` (our address, the
    /// sender's): from a tunnel's customer gateway that is the peer's DPD check on SAs
    /// this node lost, which recovers a tunnel that carries no traffic (see
    /// [`Control::unknown_spi`]). The address's flag bounds this to once per status
    /// tick, as for ESP: anyone can send such messages from the peer's address.
    fn unknown_ike_spi(&mut self, now: Instant, from: (Ipv4Addr, Ipv4Addr)) {
        if self
            .unknown_spi
            .get(&from)
            .is_some_and(|f| !f.swap(true, Ordering::AcqRel))
        {
            self.recover_lost_sas(now, &[from], Lost::Ike);
        }
    }

    /// NAT-keepalives (RFC 3948 §2.3: one octet 0xFF in UDP between the NAT-T
    /// addresses, no non-ESP marker) for Child SAs behind a NAT whose outbound side sent
    /// nothing for [`Ports::nat_keepalive`]: the NAT's mapping would time out and drop
    /// what the peer sends until we next send. Checked each status tick (2 s), over
    /// the tunnels with such an SA only.
    fn nat_keepalives(&mut self, now: Instant) {
        let every = self.ports.nat_keepalive;
        if every.is_zero() {
            return;
        }
        let sadb = Arc::clone(&self.sadb);
        for id in &self.natted {
            let Some(t) = self.tunnels.get_mut(id) else {
                continue;
            };
            // The Child SA the tunnel sends on, else the newest behind the NAT.
            let current = sadb.outbound(&t.peer.0).map(|sa| sa.spi());
            let Some((c, (local, remote))) = t
                .children
                .iter()
                .rev()
                .filter_map(|c| c.keepalive.map(|k| (c, k)))
                .find(|(c, _)| Some(c.spi_out) == current)
                .or_else(|| {
                    t.children
                        .iter()
                        .rev()
                        .find_map(|c| c.keepalive.map(|k| (c, k)))
                })
            else {
                continue;
            };
            let sent = c.outbound.stats().packets;
            if sent != t.keepalive.0 {
                t.keepalive = (sent, now + every);
            } else if now >= t.keepalive.1 {
                t.keepalive.1 = now + every;
                if let Err(e) = self.dp.send_udp(local, remote, &[0xFF]) {
                    tracing::debug!(error = %e, %remote, "sending a NAT-keepalive");
                }
            }
        }
    }

    /// ESP from the peer that the tunnel's Child SAs drop for a reason an operator can
    /// act on, counted by the data plane per SA: inner addresses outside the SA's
    /// traffic selectors (RFC 4301 §5.2: a peer that routes more subnets into the
    /// tunnel than were negotiated, such as a route-based device whose selectors this
    /// gateway narrowed) or a failed integrity check (RFC 4303 §3.4.4). Otherwise only
    /// the gateway-wide drop counters would show them. A warning per tunnel at most
    /// every [`ESP_FAULT_EVERY`], with the counts since the last one.
    fn esp_faults(&mut self, now: Instant) {
        let mut logs = Vec::new();
        for t in self.tunnels.values_mut() {
            if t.children.is_empty() || t.esp_fault_at.is_some_and(|at| now < at + ESP_FAULT_EVERY)
            {
                continue;
            }
            for c in &mut t.children {
                let s = c.inbound.stats();
                let auth = s.auth_failed.saturating_sub(c.faults[0]);
                let outside = s.selector_mismatch.saturating_sub(c.faults[1]);
                c.faults = [s.auth_failed, s.selector_mismatch];
                if let (1.., Some((src, dst))) = (outside, s.last_mismatch) {
                    logs.push((
                        t.conn_id.clone(),
                        t.id.clone(),
                        "esp_selector_mismatch",
                        format!(
                            "{outside} ESP packet(s) from the peer on Child SA {:08x} carried \
                             traffic outside its selectors {} === {} and were dropped (RFC \
                             4301 §5.2), the last {src} -> {dst}: the peer sends traffic this \
                             tunnel does not carry; make the subnets match on both sides \
                             (local_subnets and remote_subnets here)",
                            c.spi_in,
                            c.remote_ts.join(","),
                            c.local_ts.join(","),
                        ),
                    ));
                }
                if auth > 0 {
                    logs.push((
                        t.conn_id.clone(),
                        t.id.clone(),
                        "esp_integrity_failed",
                        format!(
                            "{auth} ESP packet(s) for Child SA {:08x} failed their integrity \
                             check and were dropped (RFC 4303 §3.4.4): the sender's keys for \
                             this SA are not ours (a peer that lost its SAs, or forged \
                             packets) or packets are altered on the way",
                            c.spi_in
                        ),
                    ));
                }
            }
            if logs.last().is_some_and(|(_, id, _, _)| *id == t.id) {
                t.esp_fault_at = Some(now);
            }
        }
        for (conn, id, event, message) in logs {
            self.log(&conn, Some(&id), LogLevel::Warn, event, message);
        }
    }

    /// A first IKE message (IKE_SA_INIT, Main or Aggressive Mode message 1) from an
    /// address that no tunnel on the gateway address it reached expects: the engine
    /// counts and drops it (`no_peer`). The classic cause is a customer gateway whose
    /// `ip_address` is not the device's public address (a NAT's in front of it), so the
    /// tunnels on that address that are not up say so in their status and log; a
    /// tunnel on another address of this node whose peer sent it names the address the
    /// device should use instead (the two tunnels' addresses swapped on it). At
    /// most once per [`UNKNOWN_PEER_EVERY`] per gateway address and to at most
    /// [`UNKNOWN_PEER_TUNNELS`] tunnels: anyone can send such messages.
    fn unknown_peer(&mut self, now: Instant, local: SocketAddrV4, remote: SocketAddrV4) {
        let at = self.unknown_peer_at.entry(*local.ip()).or_insert(now);
        if *at > now {
            return;
        }
        *at = now + UNKNOWN_PEER_EVERY;
        let seen = Utc::now().format("%H:%M:%S UTC");
        let mut logs = Vec::new();
        for t in self.tunnels.values_mut() {
            if logs.len() == UNKNOWN_PEER_TUNNELS {
                break;
            }
            let Some((ours, expected)) = t
                .cfg
                .as_ref()
                .filter(|_| t.phase != TunnelPhase::Established)
                .and_then(|c| Some((c.local.ip(), c.remote_addr()?.ip())))
            else {
                continue;
            };
            let note = if ours == IpAddr::V4(*local.ip()) {
                format!(
                    "at {seen} IKE from {remote} reached {local}, where no tunnel expects \
                     that address; this tunnel expects {expected}: if {} is the peer, set \
                     the customer gateway's ip_address to it (behind a NAT, the NAT's \
                     public address)",
                    remote.ip()
                )
            } else if expected == IpAddr::V4(*remote.ip()) {
                // The tunnel's own peer, at another address of this node: the device
                // has the wrong remote address (the two tunnels' addresses swapped, or
                // another gateway's).
                format!(
                    "at {seen} IKE from this tunnel's peer {remote} reached {local}, not \
                     this tunnel's gateway address {ours}: set the device's remote address \
                     for this tunnel to {ours}"
                )
            } else {
                continue;
            };
            t.peer_note = Some(note.clone());
            self.dirty.mark(&t.id);
            logs.push((t.conn_id.clone(), t.id.clone(), note));
        }
        for (conn, id, note) in logs {
            self.log(&conn, Some(&id), LogLevel::Warn, "unknown_peer", note);
        }
    }

    /// Starts the idle tunnels of every connection with a tunnel to one of `from`.
    fn recover_lost_sas(&mut self, now: Instant, from: &[(Ipv4Addr, Ipv4Addr)], lost: Lost) {
        // The connections with a tunnel to such an address: a restart lost the SAs of
        // all their tunnels, though the peer sends on one only (the standby tunnel of
        // a dual-tunnel connection carries nothing to tell us).
        let mut conns: Vec<&str> = from
            .iter()
            .filter_map(|k| self.unknown_spi_conns.get(k))
            .flatten()
            .map(String::as_str)
            .collect();
        conns.sort_unstable();
        conns.dedup();
        let mut start = Vec::new();
        for conn in conns {
            for id in self.conns.get(conn).into_iter().flatten() {
                let Some(t) = self.tunnels.get(id) else {
                    continue;
                };
                if t.phase != TunnelPhase::Idle || t.ike.is_some() || !t.can_initiate() {
                    continue;
                }
                let key = t.cfg.as_ref().and_then(addresses_v4);
                let message = match key.filter(|k| from.contains(k)) {
                    Some((_, peer)) => format!(
                        "{} from {peer} on an SA this gateway does not have: the peer \
                         still holds SAs this gateway lost (a restart?); negotiating new ones",
                        lost.what()
                    ),
                    None => "the peer sends on SAs this gateway lost (a restart?) on another \
                             tunnel of this connection; negotiating this one too"
                        .to_string(),
                };
                start.push((id.clone(), conn.to_string(), message));
            }
        }
        for (id, conn, message) in start {
            self.log(&conn, Some(&id), LogLevel::Info, lost.event(), message);
            self.start(now, &id, "the peer sends on SAs this gateway lost");
        }
    }

    fn retries(&mut self, now: Instant) {
        let due: Vec<String> = self
            .tunnels
            .values()
            .filter(|t| t.retry_at.is_some_and(|r| r <= now))
            .map(|t| t.id.clone())
            .collect();
        for id in due {
            let Some(t) = self.tunnels.get_mut(&id) else {
                continue;
            };
            self.dirty.mark(&id);
            t.retry_at = None;
            let child_gone = std::mem::take(&mut t.child_gone);
            if !t.want_up || !t.can_initiate() || t.phase == TunnelPhase::Established {
                continue;
            }
            let peer = t.peer;
            let conn = t.conn_id.clone();
            // The peer deleted the last Child SA (or it expired) and kept the IKE SA: a
            // new Child SA on it, as strongSwan does (RFC 7296 §1.3.1; IKEv1: a Quick
            // Mode). It keeps the peer's IKE SA, which an IKEv1 peer that reconnected
            // with INITIAL-CONTACT may still be about to use for its own Quick Mode.
            // After a failed negotiation start over with a fresh IKE SA: a peer checks
            // a new Child SA against the configuration its IKE SA was made with, so a
            // fix loaded there since applies only to a new IKE SA.
            let (r, phase) = if self.endpoint.ike_sas(peer).is_empty() {
                (
                    self.endpoint.initiate(now, peer),
                    TunnelPhase::Phase1Negotiating,
                )
            } else if child_gone && self.endpoint.create_child(now, peer).is_ok() {
                (Ok(()), TunnelPhase::Phase2Negotiating)
            } else {
                (
                    self.endpoint.reset(now, peer),
                    TunnelPhase::Phase1Negotiating,
                )
            };
            match r {
                // API.md: `phase1_negotiating` while an IKE_SA_INIT is outstanding; a
                // tunnel that already shows failed keeps showing it (and why).
                Ok(()) => {
                    if let Some(t) = self.tunnels.get_mut(&id).filter(|t| {
                        matches!(
                            t.phase,
                            TunnelPhase::Idle
                                | TunnelPhase::Phase1Negotiating
                                | TunnelPhase::Phase2Negotiating
                        )
                    }) {
                        let reason = t.reason.clone();
                        t.set_phase(phase, reason);
                        if phase == TunnelPhase::Phase2Negotiating {
                            // A safety net: a Child SA negotiation already under way
                            // on the IKE SA (the peer's Quick Mode) may be abandoned
                            // without a failure to report. Installing one cancels it.
                            t.retry_at = Some(now + CHILD_SA_WAIT);
                            self.next_walk = self.next_walk.min(now + CHILD_SA_WAIT);
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, tunnel = id, "retry"),
            }
            self.log(
                &conn,
                Some(&id),
                LogLevel::Info,
                "retry",
                if phase == TunnelPhase::Phase2Negotiating {
                    "negotiating a new Child SA on the IKE SA".into()
                } else {
                    "negotiating again".into()
                },
            );
        }
    }

    // ---- IKE events ---------------------------------------------------------------

    fn flush(&mut self) {
        loop {
            let mut any = false;
            // Events first: a Child SA's ESP SAs must be installed before the IKE
            // message that lets the peer use them leaves. As responder of a Child SA
            // rekey (RFC 7296 §2.8) the peer sends on the new SA as soon as it has our
            // CREATE_CHILD_SA response; sending that first lost packets to an SPI we
            // had not installed yet.
            while let Some(e) = self.endpoint.poll_event() {
                any = true;
                self.event(e);
            }
            while let Some(t) = self.endpoint.poll_transmit() {
                any = true;
                self.transmit(t);
            }
            if !any {
                break;
            }
        }
    }

    fn transmit(&mut self, t: ike::Transmit) {
        let (SocketAddr::V4(local), SocketAddr::V4(remote)) = (t.local, t.remote) else {
            tracing::warn!(?t, "IPv6 IKE is not supported; dropping");
            return;
        };
        let result = if local.port() == self.ports.natt || remote.port() == self.ports.natt {
            // RFC 3948 §2.2: IKE on port 4500 goes behind the 4-byte non-ESP marker.
            let mut b = Vec::with_capacity(4 + t.payload.len());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&t.payload);
            self.dp.send_udp(local, remote, &b)
        } else {
            self.dp.send_udp(local, remote, &t.payload)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "sending IKE message");
        }
    }

    fn event(&mut self, e: Event) {
        let peer = match &e {
            Event::IkeSaEstablished { peer, .. }
            | Event::IkeSaRekeyed { peer, .. }
            | Event::IkeSaDeleted { peer, .. }
            | Event::ChildSaEstablished { peer, .. }
            | Event::ChildSaPending { peer, .. }
            | Event::ChildSaRekeyed { peer, .. }
            | Event::ChildSaDeleted { peer, .. }
            | Event::AddressesChanged { peer, .. }
            | Event::PeerDead { peer, .. }
            | Event::NegotiationFailed { peer, .. }
            | Event::Unanswered { peer, .. }
            | Event::Log { peer, .. } => *peer,
        };
        let Some(id) = self.by_peer.get(&peer).cloned() else {
            // A tunnel removed a moment ago: its SAs are gone with it.
            if let Event::ChildSaDeleted { spi_in, .. } = e {
                self.sadb.remove_inbound(spi_in);
            }
            return;
        };
        if !matches!(e, Event::Log { .. }) {
            self.dirty.mark(&id);
        }
        let now = Instant::now();
        match e {
            Event::Log {
                level,
                event,
                message,
                ..
            } => {
                let level = match level {
                    ike::Level::Debug => return,
                    ike::Level::Info => LogLevel::Info,
                    ike::Level::Warn => LogLevel::Warn,
                    ike::Level::Error => LogLevel::Error,
                };
                if let Some(conn) = self.tunnels.get(&id).map(|t| t.conn_id.clone()) {
                    self.log(&conn, Some(&id), level, event, message);
                }
            }
            Event::IkeSaEstablished {
                spi_i,
                spi_r,
                algorithms,
                ..
            } => {
                let Some(t) = self.tunnels.get_mut(&id) else {
                    return;
                };
                // The expected peer got through: a stranger's knock no longer explains
                // anything.
                t.peer_note = None;
                t.ike = Some(IkeInfo {
                    version: match t.cfg.as_ref().map(|c| c.version) {
                        Some(ike::IkeVersion::V1) => IkeVersion::Ikev1,
                        _ => IkeVersion::Ikev2,
                    },
                    spi_i,
                    spi_r,
                    algorithms: algorithms.to_string(),
                    established_at: Utc::now(),
                    lifetime: t.cfg.as_ref().map_or(Duration::ZERO, |c| c.ike_lifetime),
                });
                t.want_up = t.want_up || t.can_initiate();
                if t.children.is_empty() && !matches!(t.phase, TunnelPhase::Phase2Failed) {
                    t.set_phase(
                        TunnelPhase::Phase2Negotiating,
                        Some("IKE SA established; negotiating the Child SA".into()),
                    );
                    // A Child SA comes with IKE_AUTH (installing it cancels this), or
                    // with the peer's CREATE_CHILD_SA right after a childless IKE_AUTH
                    // (RFC 6023). A peer that made the IKE SA alone (`swanctl
                    // --initiate --ike`) leaves it to us. (IKEv1 always follows Main
                    // Mode with a Quick Mode, whose own retransmissions take longer.)
                    let v2 = t
                        .cfg
                        .as_ref()
                        .is_some_and(|c| c.version == ike::IkeVersion::V2);
                    if v2 && t.can_initiate() && t.retry_at.is_none() {
                        t.retry_at = Some(now + CHILDLESS_WAIT);
                        t.child_gone = true;
                        self.next_walk = self.next_walk.min(now + CHILDLESS_WAIT);
                    }
                }
            }
            Event::IkeSaRekeyed { new, .. } => {
                if let Some(ike) = self.tunnels.get_mut(&id).and_then(|t| t.ike.as_mut()) {
                    ike.spi_i = new.0;
                    ike.spi_r = new.1;
                    ike.established_at = Utc::now();
                }
            }
            Event::IkeSaDeleted {
                reason,
                spi_i,
                spi_r,
                ..
            } => {
                let Some(t) = self.tunnels.get_mut(&id) else {
                    return;
                };
                if reason == DeleteReason::Rekeyed {
                    return;
                }
                if matches!(
                    reason,
                    DeleteReason::Duplicate | DeleteReason::Reauthenticated
                ) {
                    // Both ends initiated at once, or the peer re-authenticated: the
                    // other IKE SA with the peer stays and carries the tunnel.
                    let shown = t.ike.as_ref().map(|i| (i.spi_i, i.spi_r));
                    if shown == Some((spi_i, spi_r)) {
                        let kept = self
                            .endpoint
                            .ike_sas(t.peer)
                            .into_iter()
                            .find(|s| *s != (spi_i, spi_r));
                        if let (Some(ike), Some((i, r))) = (t.ike.as_mut(), kept) {
                            ike.spi_i = i;
                            ike.spi_r = r;
                        }
                    }
                    return;
                }
                // The tunnel shows another IKE SA of the peer, and that one is up: it
                // does not go down with this one. IKEv1 reports a Main Mode that
                // carries INITIAL-CONTACT (RFC 2407 §4.6.3.3) before the old SAs it
                // removes; the Child SAs of this one go with their own events.
                let shown = t.ike.as_ref().map(|i| (i.spi_i, i.spi_r));
                if shown.is_some_and(|s| {
                    s != (spi_i, spi_r) && self.endpoint.ike_sas(t.peer).contains(&s)
                }) {
                    return;
                }
                t.ike = None;
                let why = match reason {
                    DeleteReason::PeerDeleted => Some("the peer deleted the IKE SA"),
                    // Event::PeerDead follows with the verdict (DPD or retransmissions).
                    DeleteReason::PeerDead => None,
                    DeleteReason::InitialContact => {
                        Some("the peer re-authenticated (INITIAL_CONTACT)")
                    }
                    DeleteReason::LocalRequest if t.phase == TunnelPhase::Established => {
                        Some("the IKE SA was deleted (lifetime or local request)")
                    }
                    _ => None,
                };
                if let Some(why) = why {
                    if t.want_up && t.can_initiate() {
                        t.set_phase(TunnelPhase::Idle, Some(format!("{why}; renegotiating")));
                        t.retry_at = Some(now + RESTART_DELAY);
                        self.next_walk = self.next_walk.min(now + RESTART_DELAY);
                    } else {
                        t.set_phase(TunnelPhase::Idle, Some(why.into()));
                    }
                }
            }
            Event::ChildSaEstablished {
                child, initiator, ..
            } => {
                // A new Child SA beside one that carries the tunnel: the peer
                // re-authenticated and built a new IKE SA before deleting the old one
                // (RFC 7296 §2.8.3). Whether we may send on it at once is the same
                // question as for a rekey (see `ChildSaRekeyed` below).
                let t = self.tunnels.get(&id);
                let v1 = t
                    .and_then(|t| t.cfg.as_ref())
                    .is_some_and(|c| c.version == ike::IkeVersion::V1);
                let defer = if v1 { initiator } else { !initiator };
                let carrying = t
                    .and_then(|t| t.children.iter().rev().find(|c| c.defer.is_none()))
                    .map(|c| c.spi_in)
                    .filter(|_| defer);
                self.install_child(&id, &child, carrying, defer, false);
            }
            Event::ChildSaPending { child, .. } => self.install_pending(&id, &child),
            Event::ChildSaRekeyed {
                old_spi_in,
                child,
                initiator,
                ..
            } => {
                // See the event's documentation: the side that cannot know whether the
                // peer has installed the new inbound SA keeps sending on the old one.
                let v1 = self
                    .tunnels
                    .get(&id)
                    .and_then(|t| t.cfg.as_ref())
                    .is_some_and(|c| c.version == ike::IkeVersion::V1);
                let defer = if v1 { initiator } else { !initiator };
                self.install_child(&id, &child, Some(old_spi_in), defer, true);
            }
            Event::ChildSaDeleted {
                spi_in, spi_out, ..
            } => {
                self.remove_child(now, &id, spi_in, spi_out);
            }
            Event::AddressesChanged {
                local,
                remote,
                udp_encap,
                ..
            } => {
                if let Some(conn) = self.tunnels.get(&id).map(|t| t.conn_id.clone()) {
                    self.log(
                        &conn,
                        Some(&id),
                        LogLevel::Warn,
                        "addresses_changed",
                        format!(
                            "the peer moved (NAT): IKE now {local} <-> {remote} (UDP \
                             encapsulation {udp_encap}); ESP follows at the next Child SA rekey"
                        ),
                    );
                }
            }
            Event::PeerDead { reason, .. } => {
                let Some(t) = self.tunnels.get_mut(&id) else {
                    return;
                };
                t.ike = None;
                if t.want_up && t.can_initiate() {
                    t.set_phase(TunnelPhase::Idle, Some(format!("{reason}; renegotiating")));
                    t.retry_at = Some(now + RESTART_DELAY);
                    self.next_walk = self.next_walk.min(now + RESTART_DELAY);
                } else {
                    t.set_phase(TunnelPhase::Idle, Some(reason));
                }
            }
            Event::Unanswered { reason, .. } => {
                // While an exchange that brings the tunnel up is retransmitted: a
                // tunnel that already shows a failure keeps showing it until this
                // attempt has its verdict.
                if let Some(t) = self.tunnels.get_mut(&id).filter(|t| {
                    matches!(
                        t.phase,
                        TunnelPhase::Phase1Negotiating | TunnelPhase::Phase2Negotiating
                    )
                }) {
                    t.reason = Some(reason);
                }
            }
            Event::NegotiationFailed { phase, reason, .. } => {
                let Some(t) = self.tunnels.get_mut(&id) else {
                    return;
                };
                if t.phase == TunnelPhase::Established {
                    // The tunnel's SAs still carry traffic. A negotiation that failed
                    // beside them — a first message from anyone at the peer's address
                    // that no tunnel accepts, a rekey the peer refused — is in the log
                    // (the engine wrote it), not a reason to tear them down: when they
                    // expire or the peer stops answering, their own events restart the
                    // tunnel.
                    tracing::debug!(tunnel = id, ?phase, %reason, "failure beside established SAs");
                    // A Child SA negotiation inside the IKE SA (authenticated, unlike
                    // a refused first message), usually a rekey: if it keeps failing
                    // the tunnel goes down when its SAs expire, so the status shows it
                    // until a Child SA is installed again (`install_child` clears it).
                    if phase == Phase::Phase2 {
                        t.reason = Some(format!(
                            "{reason} (the tunnel's current SAs still carry traffic)"
                        ));
                    }
                    return;
                }
                t.failures += 1;
                // After a failure the retry starts on a fresh IKE SA (see `retries`).
                t.child_gone = false;
                let can = t.can_initiate();
                if can {
                    t.want_up = true;
                }
                let (negotiating, failed) = match phase {
                    Phase::Phase1 => (TunnelPhase::Phase1Negotiating, TunnelPhase::Phase1Failed),
                    Phase::Phase2 => (TunnelPhase::Phase2Negotiating, TunnelPhase::Phase2Failed),
                };
                if can && t.failures < QUICK_TRIES {
                    let n = t.failures;
                    let already_failed = matches!(
                        t.phase,
                        TunnelPhase::Phase1Failed | TunnelPhase::Phase2Failed
                    );
                    if !already_failed {
                        t.set_phase(
                            negotiating,
                            Some(format!(
                                "attempt {n} of {QUICK_TRIES} failed: {reason}; retrying"
                            )),
                        );
                    }
                    t.retry_at = Some(now + QUICK_RETRY);
                    self.next_walk = self.next_walk.min(now + QUICK_RETRY);
                } else {
                    t.set_phase(failed, Some(reason));
                    if can {
                        t.retry_at = Some(now + SLOW_RETRY);
                        self.next_walk = self.next_walk.min(now + SLOW_RETRY);
                    }
                }
            }
        }
    }

    /// Installs a new Child SA's ESP SAs; with `old_spi_in`, make-before-break: the new
    /// inbound SA first, then the outbound switch (at once, or with `defer` once the
    /// peer has shown it has the new SA: see [`ChildRt::defer`]); the old inbound SA
    /// stays until its Delete.
    /// Installs a Child SA's ESP SAs. With `old_spi_in` it replaces that Child SA
    /// (`rekeyed`) or comes beside it (a re-authentication); with `defer` outbound
    /// traffic stays on the old one until the peer deletes it or uses the new one.
    fn install_child(
        &mut self,
        id: &str,
        child: &ChildSa,
        old_spi_in: Option<u32>,
        defer: bool,
        rekeyed: bool,
    ) {
        let Some(t) = self.tunnels.get_mut(id) else {
            return;
        };
        let conn = t.conn_id.clone();
        let key = t.peer.0;
        // Installed ahead on Quick Mode message 2: keep that inbound SA, with the
        // replay window it may already have moved.
        let pending = t
            .pending
            .iter()
            .position(|p| p.spi_in == child.spi_in)
            .map(|i| t.pending.swap_remove(i));
        let defer = old_spi_in.filter(|_| defer).map(|old| Defer {
            old_spi_in: old,
            until: Instant::now() + SWITCH_DEFER,
        });
        let installed = match pending {
            Some(p) => Ok((p.inbound, p.outbound, true)),
            None => esp_sas(child, self.ports.natt)
                .map(|(i, o)| (Arc::new(i), Arc::new(o), false))
                .map_err(|e| e.to_string()),
        }
        .and_then(|(inbound, outbound, inbound_installed)| {
            let done = match (defer, inbound_installed) {
                (Some(_), true) => Ok(()),
                (Some(_), false) => self.sadb.install_inbound(Arc::clone(&inbound)),
                (None, true) => {
                    self.sadb.set_outbound(key, Arc::clone(&outbound));
                    Ok(())
                }
                (None, false) => self
                    .sadb
                    .rekey(key, Arc::clone(&inbound), Arc::clone(&outbound))
                    .map(|_| ()),
            };
            done.map(|()| (inbound, outbound))
                .map_err(|e| e.to_string())
        });
        let (inbound, outbound) = match installed {
            Ok(sas) => sas,
            Err(e) => {
                let msg = format!(
                    "cannot install Child SA {:08x}/{:08x}: {e}",
                    child.spi_in, child.spi_out
                );
                self.log(
                    &conn,
                    Some(id),
                    LogLevel::Error,
                    "child_sa_install_failed",
                    msg,
                );
                return;
            }
        };
        if defer.is_some() {
            // Polled for traffic on the new SA every SWITCH_POLL until released.
            self.next_walk = self.next_walk.min(Instant::now() + SWITCH_POLL);
        }
        let Some(t) = self.tunnels.get_mut(id) else {
            return;
        };
        // One more slot, not the four a first `push` reserves (issue 8).
        t.children.reserve_exact(1);
        t.children.push(ChildRt {
            spi_in: child.spi_in,
            spi_out: child.spi_out,
            local_ts: ts_strings(&child.local_ts),
            remote_ts: ts_strings(&child.remote_ts),
            algorithms: child.algorithms(),
            inbound,
            outbound,
            counters: [0; 4],
            defer,
            keepalive: match (child.local, child.remote) {
                (SocketAddr::V4(l), SocketAddr::V4(r))
                    if child.local_behind_nat && child.udp_encap =>
                {
                    Some((l, r))
                }
                _ => None,
            },
            faults: [0; 2],
        });
        if t.children.iter().any(|c| c.keepalive.is_some()) {
            // A count no SA has: the next check takes the new SA's as its start.
            t.keepalive.0 = u64::MAX;
            self.natted.insert(t.id.clone());
        }
        t.failures = 0;
        t.retry_at = None;
        t.child_gone = false;
        t.want_up = t.want_up || t.can_initiate();
        t.set_phase(TunnelPhase::Established, None);
        let msg = match old_spi_in {
            Some(old) if defer.is_some() && !rekeyed => format!(
                "ESP SAs installed for Child SA {:08x}/{:08x} beside {old:08x}, for the \
                 same traffic (the peer re-authenticated, or made a second one); sending \
                 on the new SA once the peer deletes {old:08x} or uses the new one",
                child.spi_in, child.spi_out
            ),
            Some(old) if defer.is_some() => format!(
                "ESP SAs installed for rekeyed Child SA {:08x}/{:08x} (replacing {old:08x}); \
                 sending on the new SA once the peer deletes {old:08x} or uses the new one",
                child.spi_in, child.spi_out
            ),
            Some(old) => format!(
                "ESP SAs installed for rekeyed Child SA {:08x}/{:08x} (replacing {old:08x}); \
                 sending on the new SA",
                child.spi_in, child.spi_out
            ),
            None => format!(
                "ESP SAs installed: in {:08x}, out {:08x}, {} <-> {}, {}{}",
                child.spi_in,
                child.spi_out,
                ike::ts::list_to_string(&child.local_ts),
                ike::ts::list_to_string(&child.remote_ts),
                child.algorithms(),
                if child.udp_encap { ", ESP in UDP" } else { "" }
            ),
        };
        self.log(&conn, Some(id), LogLevel::Info, "esp_sa_installed", msg);
    }

    /// Installs the inbound side of a Child SA that is not established yet
    /// (`ike::Event::ChildSaPending`).
    fn install_pending(&mut self, id: &str, child: &ChildSa) {
        let Some(conn) = self.tunnels.get(id).map(|t| t.conn_id.clone()) else {
            return;
        };
        let installed = esp_sas(child, self.ports.natt)
            .map_err(|e| e.to_string())
            .and_then(|(i, o)| {
                let i = Arc::new(i);
                match self.sadb.install_inbound(Arc::clone(&i)) {
                    Ok(()) => Ok((i, Arc::new(o))),
                    Err(e) => Err(e.to_string()),
                }
            });
        match installed {
            Ok((inbound, outbound)) => {
                if let Some(t) = self.tunnels.get_mut(id) {
                    t.pending.push(PendingChild {
                        spi_in: child.spi_in,
                        inbound,
                        outbound,
                    });
                }
            }
            // install_child tries again when the Child SA is established.
            Err(e) => self.log(
                &conn,
                Some(id),
                LogLevel::Warn,
                "child_sa_install_failed",
                format!(
                    "cannot install the inbound SA {:08x} ahead of quick mode message 3: {e}",
                    child.spi_in
                ),
            ),
        }
    }

    fn remove_child(&mut self, now: Instant, id: &str, spi_in: u32, spi_out: u32) {
        self.sadb.remove_inbound(spi_in);
        let Some(t) = self.tunnels.get_mut(id) else {
            return;
        };
        t.pending.retain(|p| p.spi_in != spi_in);
        t.children.retain(|c| c.spi_in != spi_in);
        if !t.children.iter().any(|c| c.keepalive.is_some()) {
            self.natted.remove(&t.id);
        }
        // The replaced SA is gone, so the peer has its successor (RFC 7296 §2.8: the
        // rekey initiator deletes the old SA once the new one is in place).
        let mut released = false;
        for c in &mut t.children {
            if c.defer.is_some_and(|d| d.old_spi_in == spi_in) {
                c.defer = None;
                released = true;
            }
        }
        let current = self.sadb.outbound(&t.peer.0).map(|sa| sa.spi());
        if released || current == Some(spi_out) {
            select_outbound(&self.sadb, t);
        }
        if t.children.is_empty() && t.phase == TunnelPhase::Established {
            if t.want_up && t.can_initiate() {
                let lived = (Utc::now() - t.since).to_std().unwrap_or_default();
                t.quick_losses = if lived < QUICK_LOSS {
                    t.quick_losses.saturating_add(1)
                } else {
                    0
                };
                let delay = RESTART_DELAY
                    .saturating_mul(1 << t.quick_losses.saturating_sub(1).min(8))
                    .min(SLOW_RETRY);
                let quick = t.quick_losses >= 2;
                let reason = if !quick {
                    format!("Child SA {spi_in:08x} was deleted; renegotiating")
                } else {
                    format!(
                        "Child SA {spi_in:08x} was deleted {} s after it was negotiated ({} \
                         times in a row within {} s): the peer accepts Child SAs and then \
                         deletes them (its log says why, e.g. that it could not install \
                         them); renegotiating in {} s",
                        lived.as_secs(),
                        t.quick_losses,
                        QUICK_LOSS.as_secs(),
                        delay.as_secs()
                    )
                };
                t.set_phase(TunnelPhase::Idle, Some(reason.clone()));
                t.retry_at = Some(now + delay);
                t.child_gone = true;
                self.next_walk = self.next_walk.min(now + delay);
                if quick {
                    let conn = t.conn_id.clone();
                    self.log(&conn, Some(id), LogLevel::Warn, "child_sa_lost", reason);
                }
            } else {
                t.set_phase(
                    TunnelPhase::Idle,
                    Some(format!("Child SA {spi_in:08x} was deleted")),
                );
            }
        }
    }

    /// Health-check probes and their outcome (see `health.rs`).
    fn health_tick(&mut self, now: Instant) {
        for e in self.health.tick(now, &self.sadb, &self.dp) {
            match e {
                health::Event::Log {
                    conn_id,
                    tunnel_id,
                    level,
                    event,
                    message,
                } => self.log(&conn_id, Some(&tunnel_id), level, event, message),
                health::Event::SoftExpired(key) => {
                    if let Err(e) = self.endpoint.rekey_child(now, ike::PeerId(key)) {
                        tracing::debug!(error = %e, "rekey on sequence soft limit");
                    }
                }
            }
        }
    }

    /// Ends deferred outbound switches whose deadline passed or whose new inbound SA
    /// has carried ESP (the peer sends on it, so it installed both directions).
    fn deferred_switches(&mut self, now: Instant) {
        for t in self.tunnels.values_mut() {
            let mut released = false;
            for c in &mut t.children {
                let Some(d) = c.defer else { continue };
                if now >= d.until || c.inbound.stats().packets > 0 {
                    c.defer = None;
                    released = true;
                }
            }
            if released {
                self.dirty.mark(&t.id);
                select_outbound(&self.sadb, t);
            }
        }
    }

    // ---- forwarding and kernel routes --------------------------------------------------

    fn publish_fwd(&mut self, d: &Desired) {
        let mut fwd = Fwd::default();
        let mut triggers = HashMap::new();
        for c in &d.conns {
            let trigger = self
                .triggers
                .get(&c.id)
                .cloned()
                .unwrap_or_else(|| Arc::new(AtomicBool::new(false)));
            triggers.insert(c.id.clone(), Arc::clone(&trigger));
            let tunnels: Vec<TunnelKey> = c
                .tunnels
                .iter()
                .filter_map(|id| self.tunnels.get(id).map(|t| t.peer.0))
                .collect();
            fwd.conns.push(ConnFwd {
                health: tunnels.iter().map(|k| self.health.slot(*k)).collect(),
                tunnels,
                trigger,
            });
        }
        self.triggers = triggers;
        self.unknown_spi_conns.clear();
        for t in self.tunnels.values() {
            if let Some(key) = t.cfg.as_ref().and_then(addresses_v4) {
                let flag = self
                    .unknown_spi
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(AtomicBool::new(false)));
                fwd.unknown_spi.insert(key, flag);
                self.unknown_spi_conns
                    .entry(key)
                    .or_default()
                    .push(t.conn_id.clone());
            }
        }
        self.unknown_spi = fwd.unknown_spi.clone();
        fwd.health = self.health.fwd();
        fwd.keys = self
            .tunnels
            .iter()
            .map(|(id, t)| (id.clone(), t.peer.0))
            .collect();
        let idx = |i: usize| u32::try_from(i).unwrap_or(NONE);
        let mut routes = RouteTable::new();
        for (net, t) in &d.routes {
            let i = idx(fwd.targets.len());
            fwd.targets
                .push([idx(t.primary), t.standby.map_or(NONE, idx)]);
            routes.insert(*net, i);
        }
        let mut policy = PolicyTable::new();
        for (src, dst, prio, t) in &d.policies {
            let i = idx(fwd.targets.len());
            fwd.targets
                .push([idx(t.primary), t.standby.map_or(NONE, idx)]);
            policy.insert(*src, *dst, *prio, i);
        }
        fwd.routes = routes;
        fwd.policy = policy;
        self.fwd.store(Arc::new(fwd));
    }

    /// Converges the kernel routes into the TUN device to `want`.
    fn kernel(&mut self, want: &BTreeSet<Ipv4Net>) {
        let index = self.dp.tun_index();
        let Some(nl) = self.netlink.as_mut() else {
            return;
        };
        for net in self.kernel_routes.difference(want) {
            if let Err(e) = nl.del_route(&RouteSpec::dev(*net, index)) {
                tracing::warn!(error = %e, %net, "removing route from the tunnel device");
            }
        }
        let mut installed = BTreeSet::new();
        for net in want {
            // LAB.md: never a default route into the TUN device (desired.rs filters it
            // too; this is the last line of defence).
            if net.prefix_len() == 0 {
                continue;
            }
            match nl.add_route(&RouteSpec::dev(*net, index), AddMode::Replace) {
                Ok(()) => {
                    installed.insert(*net);
                }
                Err(e) => tracing::error!(error = %e, %net, "adding route into the tunnel device"),
            }
        }
        self.kernel_routes = installed;
    }

    // ---- status -------------------------------------------------------------------

    /// Publishes the status of the tunnels marked dirty (and their connections' other
    /// tunnels), of health-checked connections, and with `refresh_counters` of those
    /// whose ESP counters moved. Rebuilding every tunnel's status each time was O(n)
    /// per 100 ms while 10,000 tunnels came up (issue 8).
    fn publish_changed(&mut self, refresh_counters: bool) {
        let tunnels = &self.tunnels;
        let mut ids = self.dirty.take(
            || tunnels.keys().cloned().collect(),
            |id| tunnels.get(id).map(|t| t.conn_id.as_str()),
            &self.conns,
        );
        if refresh_counters {
            ids.extend(
                tunnels
                    .values()
                    .filter(|t| counters_moved(t))
                    .map(|t| t.id.clone()),
            );
        }
        for id in ids {
            let keys: Vec<TunnelKey> = self
                .tunnels
                .get(&id)
                .and_then(|t| self.conns.get(&t.conn_id))
                .map(|ts| {
                    ts.iter()
                        .filter_map(|x| self.tunnels.get(x).map(|t| t.peer.0))
                        .collect()
                })
                .unwrap_or_default();
            self.publish(&id, refresh_counters, &keys);
        }
    }

    fn publish(&mut self, id: &str, refresh_counters: bool, tunnels_of_conn: &[TunnelKey]) {
        let sadb = Arc::clone(&self.sadb);
        let (carrying, health) = match self.tunnels.get(id) {
            Some(t) => (
                carries_traffic(
                    &sadb,
                    tunnels_of_conn,
                    |k| self.health.withdrawn(k),
                    t.peer.0,
                ),
                self.health.status(id, refresh_counters),
            ),
            None => return,
        };
        let Some(t) = self.tunnels.get_mut(id) else {
            return;
        };
        let mut received = false;
        if refresh_counters {
            for c in &mut t.children {
                let i = c.inbound.stats();
                let o = c.outbound.stats();
                received |= i.packets != c.counters[1];
                c.counters = [i.bytes, i.packets, o.bytes, o.packets];
            }
        }
        if received {
            // ESP from the peer proves it alive: DPD probes only idle peers (like
            // strongSwan's dpd_delay, RFC 3706 §5.3 for the idea).
            self.endpoint.handle_child_activity(Instant::now(), t.peer);
        }
        let notes = [&t.reason, &t.nat_note, &t.peer_note];
        let parts: Vec<&str> = notes.iter().filter_map(|n| n.as_deref()).collect();
        let reason = (!parts.is_empty()).then(|| parts.join("; "));
        let status = TunnelStatus {
            phase: t.phase,
            reason,
            since: Some(t.since),
            carrying_traffic: carrying,
            ike_sa: t.ike.as_ref().map(|i| IkeSaStatus {
                version: i.version,
                spis: IkeSpis {
                    initiator: format!("{:016x}", i.spi_i),
                    responder: format!("{:016x}", i.spi_r),
                },
                algorithms: i.algorithms.clone(),
                established_at: Some(i.established_at),
                // The engine rekeys at 85–90 % of the lifetime (soft lifetime with
                // jitter); this is the latest it will.
                rekey_at: (!i.lifetime.is_zero())
                    .then(|| {
                        chrono::Duration::from_std(i.lifetime.mul_f64(0.9))
                            .ok()
                            .map(|d| i.established_at + d)
                    })
                    .flatten(),
            }),
            child_sas: t
                .children
                .iter()
                .map(|c| ChildSaStatus {
                    spi_in: format!("{:08x}", c.spi_in),
                    spi_out: format!("{:08x}", c.spi_out),
                    local_ts: c.local_ts.clone(),
                    remote_ts: c.remote_ts.clone(),
                    algorithms: c.algorithms.clone(),
                    bytes_in: c.counters[0],
                    packets_in: c.counters[1],
                    bytes_out: c.counters[2],
                    packets_out: c.counters[3],
                })
                .collect(),
            bgp: None,
            health,
        };
        let print = fingerprint(&status);
        if t.written != Some(print) {
            t.written = Some(print);
            let _ = self.writes.send(StoreWrite::Status {
                tunnel_id: id.to_string(),
                status,
            });
        }
    }

    fn log(&self, conn: &str, tunnel: Option<&str>, level: LogLevel, event: &str, message: String) {
        let _ = self.writes.send(StoreWrite::Log {
            connection_id: conn.to_string(),
            entry: LogEntry {
                at: Utc::now(),
                tunnel_id: tunnel.map(str::to_string),
                level,
                event: event.to_string(),
                message,
            },
        });
    }

    fn shutdown(&mut self) {
        let now = Instant::now();
        let ids: Vec<String> = self.tunnels.keys().cloned().collect();
        for id in ids {
            if let Some(t) = self.tunnels.get_mut(&id) {
                t.set_phase(TunnelPhase::Idle, Some("the gateway node stopped".into()));
                t.want_up = false;
                let peer = t.peer;
                if t.cfg.is_some() {
                    let _ = self.endpoint.remove_peer(now, peer);
                }
            }
        }
        self.flush();
        for t in self.tunnels.values_mut() {
            t.children.clear();
            t.pending.clear();
            t.ike = None;
        }
        self.dirty.mark_all();
        self.publish_changed(false);
        self.kernel(&BTreeSet::new());
        tracing::info!("gateway node control thread stopped");
    }
}

/// A 64-bit hash of everything a status says (its derived `Debug` form, which prints
/// every field, exactly): equal statuses give equal fingerprints, and two different
/// ones collide with probability 2⁻⁶⁴, so a change goes unpublished (until the next one)
/// about never. Formatting straight into the hasher allocates nothing.
fn fingerprint(status: &TunnelStatus) -> u64 {
    use std::fmt::Write as _;
    use std::hash::Hasher as _;
    struct HashWriter(std::hash::DefaultHasher);
    impl std::fmt::Write for HashWriter {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.write(s.as_bytes());
            Ok(())
        }
    }
    let mut w = HashWriter(std::hash::DefaultHasher::new());
    // Writing into the hasher cannot fail.
    let _ = write!(w, "{status:?}");
    w.0.finish()
}

/// Which tunnels' status may have changed since the last publication. A tunnel's
/// `carrying_traffic` depends on its connection's other tunnels (SAs, health), so a mark
/// publishes the whole connection; health-checked connections are re-read every time
/// (probe answers change them without a control-loop event).
#[derive(Debug, Default)]
struct Dirty {
    tunnels: HashSet<String>,
    all: bool,
    /// Connections with a health check, as last applied.
    health_conns: Vec<String>,
}

impl Dirty {
    fn mark(&mut self, tunnel_id: &str) {
        if !self.all && !self.tunnels.contains(tunnel_id) {
            self.tunnels.insert(tunnel_id.to_string());
        }
    }

    fn mark_all(&mut self) {
        self.all = true;
        self.tunnels.clear();
    }

    /// Whether a publication has anything to do.
    fn pending(&self) -> bool {
        self.all || !self.tunnels.is_empty() || !self.health_conns.is_empty()
    }

    /// The tunnels to publish, in order; clears the marks. `all` lists every tunnel,
    /// `conn_of` names a tunnel's connection, `conns` lists each connection's tunnels.
    fn take<'a>(
        &mut self,
        all: impl FnOnce() -> BTreeSet<String>,
        conn_of: impl Fn(&str) -> Option<&'a str>,
        conns: &BTreeMap<String, Vec<String>>,
    ) -> BTreeSet<String> {
        if core::mem::take(&mut self.all) {
            return all();
        }
        let mut out = BTreeSet::new();
        for id in self.tunnels.drain() {
            match conn_of(&id).and_then(|c| conns.get(c)) {
                Some(ts) => out.extend(ts.iter().cloned()),
                None => {
                    out.insert(id);
                }
            }
        }
        for c in &self.health_conns {
            out.extend(conns.get(c).into_iter().flatten().cloned());
        }
        out
    }
}

/// Whether a tunnel's ESP counters differ from those in its last status.
fn counters_moved(t: &TunnelRt) -> bool {
    t.children.iter().any(|c| {
        let (i, o) = (c.inbound.stats(), c.outbound.stats());
        [i.bytes, i.packets, o.bytes, o.packets] != c.counters
    })
}

/// Sends on the tunnel's newest Child SA whose outbound side may be used; stops
/// sending when it has no Child SA.
fn select_outbound(sadb: &SaDb<TunnelKey>, t: &TunnelRt) {
    let key = t.peer.0;
    let current = sadb.outbound(&key).map(|sa| sa.spi());
    match t.children.iter().rev().find(|c| c.defer.is_none()) {
        Some(c) if current != Some(c.spi_out) => {
            sadb.set_outbound(key, Arc::clone(&c.outbound));
        }
        None if t.children.is_empty() => {
            sadb.remove_outbound(&key);
        }
        _ => {}
    }
}

/// The ESP SAs of a Child SA (inbound, outbound).
fn esp_sas(c: &ChildSa, natt: u16) -> Result<(InboundSa, OutboundSa), esp::EspError> {
    let (IpAddr::V4(local), IpAddr::V4(remote)) = (c.local.ip(), c.remote.ip()) else {
        return Err(esp::EspError::InvalidParams(
            "IPv6 tunnel endpoints are not supported",
        ));
    };
    // RFC 3948: ESP-in-UDP on the NAT-T ports the IKE SA floated to.
    let port = |p: u16| if p == 500 { natt } else { p };
    let udp_encap = c.udp_encap.then(|| UdpEncap {
        src_port: port(c.local.port()),
        dst_port: port(c.remote.port()),
    });
    let selectors = Selectors {
        local: c.local_ts.iter().map(selector).collect(),
        remote: c.remote_ts.iter().map(selector).collect(),
    };
    let params = |spi, enc: &ike::Key, integ: &ike::Key| SaParams {
        spi,
        encr: c.encr,
        enc_key: esp::Key::new(enc.as_slice()),
        integ: c.integ,
        integ_key: esp::Key::new(integ.as_slice()),
        local,
        remote,
        udp_encap,
        selectors: selectors.clone(),
        lifetime: Lifetime::default(),
    };
    let inbound = InboundSa::new(params(c.spi_in, &c.encr_key_in, &c.integ_key_in))?;
    let outbound = OutboundSa::new(
        params(c.spi_out, &c.encr_key_out, &c.integ_key_out),
        &mut crypto::OsRandom,
    )?;
    Ok((inbound, outbound))
}

fn selector(t: &TsRange) -> TrafficSelector {
    TrafficSelector {
        start_addr: t.start,
        end_addr: t.end,
        protocol: t.ip_proto,
        start_port: t.start_port,
        end_port: t.end_port,
    }
}

/// Selectors as CIDRs where they are prefixes (`10.2.0.0/24`), else as ranges.
fn ts_strings(list: &[TsRange]) -> Vec<String> {
    list.iter()
        .map(|t| {
            let (s, e) = (u32::from(t.start), u32::from(t.end));
            let span = e.wrapping_sub(s).wrapping_add(1);
            let cidr = if s == 0 && e == u32::MAX {
                Some(0)
            } else if span.is_power_of_two() && s % span == 0 {
                Some(32 - span.trailing_zeros())
            } else {
                None
            };
            let base = match cidr {
                Some(len) => format!("{}/{len}", t.start),
                None => format!("{}-{}", t.start, t.end),
            };
            if t.ip_proto == 0 {
                base
            } else {
                format!("{base}[{}/{}-{}]", t.ip_proto, t.start_port, t.end_port)
            }
        })
        .collect()
}

/// `SocketAddrV4` of a wildcard local address on a port.
pub(crate) fn any(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, port)
}

/// What arrived on SAs this node does not have (see [`Control::recover_lost_sas`]).
#[derive(Debug, Clone, Copy)]
enum Lost {
    Esp,
    Ike,
}

impl Lost {
    fn what(self) -> &'static str {
        match self {
            Lost::Esp => "ESP",
            Lost::Ike => "an IKE message",
        }
    }

    fn event(self) -> &'static str {
        match self {
            Lost::Esp => "esp_unknown_spi",
            Lost::Ike => "ike_unknown_spi",
        }
    }
}

/// A tunnel's (our address, the customer gateway's address), if both are IPv4 and the
/// customer gateway is a real address (not "any").
fn addresses_v4(cfg: &PeerConfig) -> Option<(Ipv4Addr, Ipv4Addr)> {
    match (cfg.local.ip(), cfg.remote_addr()?.ip()) {
        (IpAddr::V4(l), IpAddr::V4(r)) => Some((l, r)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn r(a: &str, b: &str) -> TsRange {
        TsRange {
            ip_proto: 0,
            start_port: 0,
            end_port: u16::MAX,
            start: a.parse::<Ipv4Addr>().unwrap(),
            end: b.parse::<Ipv4Addr>().unwrap(),
        }
    }

    #[test]
    fn selectors_print_as_cidrs() {
        assert_eq!(
            ts_strings(&[
                r("0.0.0.0", "255.255.255.255"),
                r("10.2.0.0", "10.2.0.255"),
                r("10.2.0.1", "10.2.0.1"),
                r("10.2.0.1", "10.2.0.9"),
            ]),
            vec![
                "0.0.0.0/0",
                "10.2.0.0/24",
                "10.2.0.1/32",
                "10.2.0.1-10.2.0.9"
            ]
        );
    }

    /// 1,000 connections of two tunnels (`c<i>` → `c<i>t1`, `c<i>t2`).
    fn conns() -> BTreeMap<String, Vec<String>> {
        (0..1000)
            .map(|i| (format!("c{i}"), vec![format!("c{i}t1"), format!("c{i}t2")]))
            .collect()
    }

    fn take(d: &mut Dirty, conns: &BTreeMap<String, Vec<String>>) -> Vec<String> {
        let owner: BTreeMap<&str, &str> = conns
            .iter()
            .flat_map(|(c, ts)| ts.iter().map(move |t| (t.as_str(), c.as_str())))
            .collect();
        let all = || conns.values().flatten().cloned().collect();
        let conn_of = |id: &str| owner.get(id).copied();
        d.take(all, conn_of, conns).into_iter().collect()
    }

    #[test]
    fn publishes_exactly_the_marked_connections() {
        let conns = conns();
        let mut d = Dirty::default();
        assert!(!d.pending());
        assert!(take(&mut d, &conns).is_empty());
        d.mark("c7t2");
        d.mark("c7t2");
        d.mark("c42t1");
        assert!(d.pending());
        // Each marked tunnel with its connection's other tunnel (whether it carries
        // traffic depends on the marked one), nothing else.
        assert_eq!(take(&mut d, &conns), ["c42t1", "c42t2", "c7t1", "c7t2"]);
        assert!(!d.pending());
        assert!(take(&mut d, &conns).is_empty());
        // A tunnel whose connection is not (or no longer) known is still published.
        d.mark("gone");
        assert_eq!(take(&mut d, &conns), ["gone"]);
    }

    #[test]
    fn mark_all_publishes_every_tunnel_once() {
        let conns = conns();
        let mut d = Dirty::default();
        d.mark("c1t1");
        d.mark_all();
        d.mark("c2t1");
        assert_eq!(take(&mut d, &conns).len(), 2000);
        assert!(take(&mut d, &conns).is_empty());
    }

    #[test]
    fn fingerprint_changes_exactly_when_the_status_does() {
        let child = ChildSaStatus {
            spi_in: "c0000001".into(),
            spi_out: "c0000002".into(),
            local_ts: vec!["0.0.0.0/0".into()],
            remote_ts: vec!["0.0.0.0/0".into()],
            algorithms: "aes128-sha1".into(),
            bytes_in: 0,
            packets_in: 0,
            bytes_out: 0,
            packets_out: 0,
        };
        let base = TunnelStatus {
            phase: TunnelPhase::Established,
            reason: None,
            since: Some(Utc::now()),
            carrying_traffic: true,
            ike_sa: Some(IkeSaStatus {
                version: IkeVersion::Ikev2,
                spis: IkeSpis {
                    initiator: format!("{:016x}", 1u64),
                    responder: format!("{:016x}", 2u64),
                },
                algorithms: "aes128-sha1-modp1024".into(),
                established_at: Some(Utc::now()),
                rekey_at: None,
            }),
            child_sas: vec![child],
            bgp: None,
            health: None,
        };
        // Equal values (built apart) give equal fingerprints: nothing is re-sent.
        assert_eq!(fingerprint(&base), fingerprint(&base.clone()));
        let variants: [fn(&mut TunnelStatus); 8] = [
            |s| s.phase = TunnelPhase::Phase2Negotiating,
            |s| s.reason = Some("peer went away".into()),
            |s| s.carrying_traffic = false,
            |s| s.ike_sa = None,
            |s| s.child_sas[0].packets_in = 1,
            |s| s.child_sas[0].bytes_out = 1500,
            |s| s.child_sas[0].remote_ts.push("10.0.0.0/8".into()),
            |s| s.child_sas.push(s.child_sas[0].clone()),
        ];
        let mut seen = vec![fingerprint(&base)];
        for change in &variants {
            let mut s = base.clone();
            change(&mut s);
            let print = fingerprint(&s);
            assert!(!seen.contains(&print), "{s:?} fingerprints like another");
            seen.push(print);
        }
    }

    #[test]
    fn health_checked_connections_publish_every_time() {
        let conns = conns();
        let mut d = Dirty {
            health_conns: vec!["c3".into(), "nope".into()],
            ..Dirty::default()
        };
        assert!(d.pending());
        assert_eq!(take(&mut d, &conns), ["c3t1", "c3t2"]);
        d.mark("c9t1");
        assert_eq!(take(&mut d, &conns), ["c3t1", "c3t2", "c9t1", "c9t2"]);
    }
}
