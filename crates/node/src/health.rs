//! Health checks (API.md `health_check`): an ICMP echo request from the connection's
//! `source_ip` to its `destination_ip` through each established tunnel every
//! `interval_s`; `retries` consecutive probes without an answer mark the tunnel's health
//! `down`, the first answer marks it `up` again.
//!
//! The probe goes through the tunnel's own outbound SA, not through the route table:
//! a tunnel whose routes were withdrawn must still be probed, or it could never recover.
//! `source_ip` is usually not an address of this host (an address of the VPC), so there
//! is no kernel socket: the control thread writes the echo request itself, encapsulates
//! it with the tunnel's [`OutboundSa`] and sends it like any ESP packet. The peer routes
//! the answer back into one of the connection's tunnels; after decapsulation the worker
//! recognises it ([`intercept`]: an echo reply with this node's ICMP identifier and a
//! payload carrying this node's random nonce), records it in the tunnel's [`Slot`]
//! (atomics: no lock, no allocation) and wakes the control thread instead of writing it
//! to the TUN device. Echo replies for hosts of the VPC do not match and pass on.
//!
//! With `switch_route` a tunnel whose health is `down` is skipped on the packet path
//! (`Slot::withdrawn`, read by `fwd.rs`), the same rule as the gateway route table
//! (`model::route_table`): the connection's other tunnel carries its traffic, and when
//! no tunnel of the connection is left, its routes fall to the standby connection of the
//! prefix. Without `switch_route` the health is only reported.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Cache};
use dataplane::{Action, Dataplane, DropReason, PacketBuf};
use esp::{HEADROOM_MAX, OutboundSa, SaDb, TAILROOM_MAX};
use model::{HealthState, HealthStatus, LogLevel, VpnConnection};

use crate::control::Input;
use crate::desired::ConnSpec;
use crate::fwd::{Fwd, TunnelKey};

/// First bytes of every probe's payload.
const MAGIC: [u8; 8] = *b"vpngw-hc";
/// Probe payload: magic, node nonce, tunnel key, probe number, slot index, send time.
const PAYLOAD_LEN: usize = 8 + 8 + 8 + 4 + 4 + 8;
const IPV4_HEADER_LEN: usize = 20;
const ICMP_HEADER_LEN: usize = 8;
/// Length of a probe (and of its answer): IPv4 + ICMP echo + payload.
pub(crate) const PROBE_LEN: usize = IPV4_HEADER_LEN + ICMP_HEADER_LEN + PAYLOAD_LEN;
const PROTO_ICMP: u8 = 1;
/// RFC 792: echo reply / echo request.
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const TTL: u8 = 64;

/// A connection's health check, as the node runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HealthSpec {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub interval: Duration,
    pub retries: u32,
    pub switch_route: bool,
}

/// The health check of a connection: `Ok(None)` when disabled, `Err(why)` when this node
/// cannot run it.
pub(crate) fn spec(c: &VpnConnection) -> Result<Option<HealthSpec>, String> {
    let h = &c.health_check;
    if !h.enabled {
        return Ok(None);
    }
    match (h.source_ip, h.destination_ip) {
        (Some(IpAddr::V4(source)), Some(IpAddr::V4(destination))) => Ok(Some(HealthSpec {
            source,
            destination,
            interval: Duration::from_secs(u64::from(h.interval_s.max(1))),
            retries: h.retries.max(1),
            switch_route: h.switch_route,
        })),
        (Some(_), Some(_)) => Err(
            "health check not run: IPv6 source or destination addresses are not supported yet"
                .into(),
        ),
        _ => Err("health check not run: source_ip and destination_ip are required".into()),
    }
}

/// One probed tunnel, shared between the control thread and the workers.
#[derive(Debug)]
pub(crate) struct Slot {
    key: TunnelKey,
    /// The probes' source: answers are addressed to it.
    source: Ipv4Addr,
    /// Origin of the send times in the probes.
    epoch: Instant,
    /// Last probe number sent: an answer to a later one is not genuine.
    sent: AtomicU32,
    /// Highest probe number answered (0: none yet).
    answered: AtomicU32,
    /// Round-trip time of the latest answer, in microseconds.
    rtt_us: AtomicU32,
    /// The tunnel's health is down and `switch_route` is on: the packet path skips it.
    withdrawn: AtomicBool,
}

impl Slot {
    /// Whether the packet path must not send the connection's traffic through this
    /// tunnel.
    #[inline]
    pub(crate) fn withdrawn(&self) -> bool {
        self.withdrawn.load(Ordering::Relaxed)
    }

    /// Whether `r` answers a probe sent through this tunnel.
    fn accepts(&self, r: &Reply) -> bool {
        self.key == r.key
            && self.source == r.destination
            && r.probe <= self.sent.load(Ordering::Acquire)
    }

    fn record(&self, r: &Reply) {
        let now_ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let rtt_us = now_ns.saturating_sub(r.sent_ns) / 1000;
        self.rtt_us
            .store(u32::try_from(rtt_us).unwrap_or(u32::MAX), Ordering::Relaxed);
        self.answered.fetch_max(r.probe, Ordering::AcqRel);
    }
}

#[cfg(test)]
impl Slot {
    /// A slot for tunnel `key` in the given withdrawn state (packet-path tests).
    pub(crate) fn for_test(key: TunnelKey, withdrawn: bool) -> Arc<Slot> {
        Arc::new(Slot {
            key,
            source: Ipv4Addr::UNSPECIFIED,
            epoch: Instant::now(),
            sent: AtomicU32::new(0),
            answered: AtomicU32::new(0),
            rtt_us: AtomicU32::new(0),
            withdrawn: AtomicBool::new(withdrawn),
        })
    }

    pub(crate) fn set_withdrawn(&self, w: bool) {
        self.withdrawn.store(w, Ordering::Relaxed);
    }
}

/// Probe and answer counts of the node (all health checks).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub probes: AtomicU64,
    pub replies: AtomicU64,
    /// Echo replies that looked like answers to our probes but were not valid (bad
    /// length or checksum, another node's nonce, unknown tunnel): dropped.
    pub malformed: AtomicU64,
}

/// The node's lines for `GET /metrics`: health-check probes sent, answers received and
/// answers dropped as malformed, over all health checks; the data plane's packet
/// counters; the IKE engine's counters and half-open IKE SAs. `vpngw serve` hands it to
/// the API (`api::AppState::add_metrics_source`).
#[derive(Clone)]
pub struct NodeMetrics {
    pub(crate) fwd: Arc<ArcSwap<Fwd>>,
    /// The data plane's packet counters (`fwd::render_dataplane`).
    pub(crate) dataplane: dataplane::CounterReader,
    /// What the control thread last published of the IKE endpoint (`ikestats.rs`).
    pub(crate) ike: crate::ikestats::SharedIkeStats,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").finish_non_exhaustive()
    }
}

impl NodeMetrics {
    /// Appends the Prometheus text lines (with `# HELP`/`# TYPE`).
    pub fn render(&self, out: &mut String) {
        render_counters(&self.fwd.load().health.counters, out);
        crate::fwd::render_dataplane(&self.dataplane.totals(), out);
        crate::ikestats::render(&self.ike.load(), out);
    }
}

#[cfg(feature = "api")]
impl api::MetricsSource for NodeMetrics {
    fn render(&self, out: &mut String) {
        NodeMetrics::render(self, out);
    }
}

fn render_counters(c: &Counters, out: &mut String) {
    write_counters(
        out,
        &[
            (
                "vpngw_health_probes_total",
                "Health-check echo requests sent through tunnels.",
                c.probes.load(Ordering::Relaxed),
            ),
            (
                "vpngw_health_replies_total",
                "Echo replies to health-check probes received.",
                c.replies.load(Ordering::Relaxed),
            ),
            (
                "vpngw_health_malformed_total",
                "Packets that claimed to answer a health-check probe but did not check out (dropped).",
                c.malformed.load(Ordering::Relaxed),
            ),
        ],
    );
}

/// Appends each `(name, help, value)` as a counter without labels, with `# HELP` and
/// `# TYPE` (the node's `/metrics` lines).
pub(crate) fn write_counters(out: &mut String, counters: &[(&str, &str, u64)]) {
    use std::fmt::Write;
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
}

/// What the workers need to recognise answers (part of the [`Fwd`] snapshot).
#[derive(Debug, Default)]
pub(crate) struct HealthFwd {
    ident: u16,
    nonce: u64,
    slots: Vec<Arc<Slot>>,
    counters: Arc<Counters>,
}

/// After decapsulation (`action` is what the ESP path decided): an answer to one of our
/// probes is recorded and consumed, anything else goes on unchanged. Lock-free and
/// allocation-free; the cheap tests (any health check at all, ICMP, echo reply, our
/// identifier) come first.
#[inline]
pub(crate) fn intercept(
    fwd: &mut Cache<Arc<ArcSwap<Fwd>>, Arc<Fwd>>,
    wake: &std::sync::mpsc::SyncSender<Input>,
    action: Action,
    pkt: &PacketBuf,
) -> Action {
    if !matches!(action, Action::ToTun) {
        return action;
    }
    let h = &fwd.load().health;
    if h.slots.is_empty() {
        return action;
    }
    match parse_reply(pkt.data(), h.ident, h.nonce) {
        Parsed::NotOurs => action,
        Parsed::Malformed(_) => {
            h.counters.malformed.fetch_add(1, Ordering::Relaxed);
            Action::Drop(DropReason::Malformed)
        }
        Parsed::Reply(r) => match h.slots.get(r.slot as usize) {
            Some(s) if s.accepts(&r) => {
                s.record(&r);
                h.counters.replies.fetch_add(1, Ordering::Relaxed);
                // Recovery is acted on at once, not at the next probe; a full channel
                // only delays it to the next tick.
                let _ = wake.try_send(Input::Health);
                Action::Drop(DropReason::Other)
            }
            _ => {
                h.counters.malformed.fetch_add(1, Ordering::Relaxed);
                Action::Drop(DropReason::Malformed)
            }
        },
    }
}

/// What [`Health::tick`] asks the control thread to do.
#[derive(Debug, PartialEq)]
pub(crate) enum Event {
    /// A connection log entry.
    Log {
        conn_id: String,
        tunnel_id: String,
        level: LogLevel,
        event: &'static str,
        message: String,
    },
    /// A probe was the packet that crossed the SA's soft limit: rekey.
    SoftExpired(TunnelKey),
}

/// The control thread's side: one check per (tunnel of a connection with an enabled
/// health check).
pub(crate) struct Health {
    ident: u16,
    nonce: u64,
    epoch: Instant,
    counters: Arc<Counters>,
    /// Tunnel ID → its check.
    checks: BTreeMap<String, Check>,
}

struct Check {
    conn_id: String,
    /// 1 or 2 (tunnel 1 primary, tunnel 2 secondary), for messages.
    number: usize,
    spec: HealthSpec,
    slot: Arc<Slot>,
    index: u32,
    /// Last probe number sent.
    sent: u32,
    /// Last answered probe number acted on.
    seen: u32,
    misses: u32,
    state: HealthState,
    last_rtt_ms: Option<f64>,
    /// `last_rtt_ms` as last reported (refreshed with the status counters).
    shown_rtt_ms: Option<f64>,
    /// When the next probe is due; `None`: once the tunnel has an outbound SA, at the
    /// control thread's next pass (it passes at least every `STATUS_INTERVAL`, so no
    /// timer of its own is needed).
    next_at: Option<Instant>,
}

impl Health {
    pub(crate) fn new(rng: &mut dyn crypto::Random) -> Self {
        let mut b = [0u8; 10];
        rng.fill(&mut b);
        let [i0, i1, n @ ..] = b;
        Self {
            ident: u16::from_be_bytes([i0, i1]),
            nonce: u64::from_be_bytes(n),
            epoch: Instant::now(),
            counters: Arc::new(Counters::default()),
            checks: BTreeMap::new(),
        }
    }

    /// Applies the desired connections: keeps the checks whose tunnel and settings did
    /// not change, starts new ones, drops the rest. `key` maps a tunnel ID to its key.
    pub(crate) fn configure(
        &mut self,
        conns: &[ConnSpec],
        key: impl Fn(&str) -> Option<TunnelKey>,
    ) {
        let mut old = std::mem::take(&mut self.checks);
        for c in conns {
            let Some(spec) = c.health else { continue };
            for (i, id) in c.tunnels.iter().enumerate() {
                let Some(k) = key(id) else { continue };
                let check = match old.remove(id) {
                    Some(ch) if ch.spec == spec && ch.slot.key == k => ch,
                    _ => Check {
                        conn_id: c.id.clone(),
                        number: i + 1,
                        spec,
                        slot: Arc::new(Slot {
                            key: k,
                            source: spec.source,
                            epoch: self.epoch,
                            sent: AtomicU32::new(0),
                            answered: AtomicU32::new(0),
                            rtt_us: AtomicU32::new(0),
                            withdrawn: AtomicBool::new(false),
                        }),
                        index: 0,
                        sent: 0,
                        seen: 0,
                        misses: 0,
                        state: HealthState::Unknown,
                        last_rtt_ms: None,
                        shown_rtt_ms: None,
                        next_at: None,
                    },
                };
                self.checks.insert(id.clone(), check);
            }
        }
        for (i, c) in self.checks.values_mut().enumerate() {
            c.index = u32::try_from(i).unwrap_or(u32::MAX);
        }
    }

    /// The workers' view, for the next forwarding snapshot.
    pub(crate) fn fwd(&self) -> HealthFwd {
        HealthFwd {
            ident: self.ident,
            nonce: self.nonce,
            slots: self.checks.values().map(|c| Arc::clone(&c.slot)).collect(),
            counters: Arc::clone(&self.counters),
        }
    }

    /// The slot of the tunnel with key `key`, if it has a health check.
    pub(crate) fn slot(&self, key: TunnelKey) -> Option<Arc<Slot>> {
        self.checks
            .values()
            .find(|c| c.slot.key == key)
            .map(|c| Arc::clone(&c.slot))
    }

    /// Whether the tunnel with key `key` is withdrawn from forwarding.
    pub(crate) fn withdrawn(&self, key: TunnelKey) -> bool {
        self.checks
            .values()
            .any(|c| c.slot.key == key && c.slot.withdrawn())
    }

    /// When the next probe is due.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.checks.values().filter_map(|c| c.next_at).min()
    }

    /// `status.health` of a tunnel (`None` without a health check). The RTT follows the
    /// latest answer only when `refresh` (with the status counters), so that every probe
    /// does not rewrite the status.
    pub(crate) fn status(&mut self, tunnel_id: &str, refresh: bool) -> Option<HealthStatus> {
        let c = self.checks.get_mut(tunnel_id)?;
        if refresh || c.shown_rtt_ms.is_none() {
            c.shown_rtt_ms = c.last_rtt_ms;
        }
        Some(HealthStatus {
            state: c.state,
            last_rtt_ms: c.shown_rtt_ms,
        })
    }

    /// Probes, answers and counts; returns what to log and to rekey.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        sadb: &SaDb<TunnelKey>,
        dp: &Dataplane,
    ) -> Vec<Event> {
        self.tick_with(now, sadb, &mut |sa, p| send(sa, dp, p))
    }

    /// [`Self::tick`] with the sending of probes left to `tx` (`Ok(true)`: the probe
    /// crossed the SA's soft limit).
    fn tick_with(
        &mut self,
        now: Instant,
        sadb: &SaDb<TunnelKey>,
        tx: &mut dyn FnMut(&OutboundSa, &Probe) -> Result<bool, String>,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        for (id, c) in &mut self.checks {
            let Some(sa) = sadb.outbound(&c.slot.key) else {
                // Not established: nothing to probe through; start afresh once it is.
                c.reset();
                continue;
            };
            let answered = c.slot.answered.load(Ordering::Acquire);
            if answered > c.seen {
                c.seen = answered;
                c.misses = 0;
                let rtt = f64::from(c.slot.rtt_us.load(Ordering::Relaxed)) / 1000.0;
                c.last_rtt_ms = Some((rtt * 100.0).round() / 100.0);
                if c.state != HealthState::Up {
                    if c.state == HealthState::Down {
                        events.push(c.recovered(id, rtt));
                    }
                    c.state = HealthState::Up;
                    c.slot.withdrawn.store(false, Ordering::Relaxed);
                }
            }
            if c.next_at.is_some_and(|t| now < t) {
                continue;
            }
            if c.sent > c.seen {
                c.misses += 1;
                if c.misses >= c.spec.retries && c.state != HealthState::Down {
                    c.state = HealthState::Down;
                    c.slot
                        .withdrawn
                        .store(c.spec.switch_route, Ordering::Relaxed);
                    events.push(c.failed(id));
                }
            }
            c.sent = c.sent.wrapping_add(1).max(1);
            c.slot.sent.store(c.sent, Ordering::Release);
            let sent_ns = u64::try_from(now.saturating_duration_since(self.epoch).as_nanos())
                .unwrap_or(u64::MAX);
            let probe = Probe {
                source: c.spec.source,
                destination: c.spec.destination,
                ident: self.ident,
                nonce: self.nonce,
                key: c.slot.key,
                probe: c.sent,
                slot: c.index,
                sent_ns,
            };
            match tx(&sa, &probe) {
                Ok(soft_expired) => {
                    self.counters.probes.fetch_add(1, Ordering::Relaxed);
                    if soft_expired {
                        events.push(Event::SoftExpired(c.slot.key));
                    }
                }
                Err(e) => tracing::debug!(error = %e, tunnel = id, "sending health probe"),
            }
            c.next_at = Some(now + c.spec.interval);
        }
        events
    }
}

impl Check {
    fn reset(&mut self) {
        self.state = HealthState::Unknown;
        self.misses = 0;
        self.seen = self.sent;
        self.next_at = None;
        self.slot.answered.store(self.sent, Ordering::Release);
        self.slot.withdrawn.store(false, Ordering::Relaxed);
    }

    fn failed(&self, id: &str) -> Event {
        let s = &self.spec;
        let consequence = if s.switch_route {
            "routes withdrawn (switch_route): traffic moves to the connection's other \
             tunnel or the standby route"
        } else {
            "switch_route is off: reported only, traffic stays"
        };
        let message = format!(
            "health check: no echo reply from {} via tunnel {} for {} × {} s (probes from {}); {consequence}",
            s.destination,
            self.number,
            s.retries,
            s.interval.as_secs(),
            s.source,
        );
        tracing::warn!(tunnel = id, "{message}");
        Event::Log {
            conn_id: self.conn_id.clone(),
            tunnel_id: id.to_string(),
            level: LogLevel::Warn,
            event: "health_check_failed",
            message,
        }
    }

    fn recovered(&self, id: &str, rtt_ms: f64) -> Event {
        let s = &self.spec;
        let consequence = if s.switch_route {
            "routes restored"
        } else {
            "reported only (switch_route is off)"
        };
        let message = format!(
            "health check: {} answers again via tunnel {} (rtt {rtt_ms:.2} ms); {consequence}",
            s.destination, self.number,
        );
        tracing::info!(tunnel = id, "{message}");
        Event::Log {
            conn_id: self.conn_id.clone(),
            tunnel_id: id.to_string(),
            level: LogLevel::Info,
            event: "health_check_recovered",
            message,
        }
    }
}

/// Encapsulates a probe with `sa` and sends it; `Ok(true)` when it crossed the SA's soft
/// limit.
fn send(sa: &OutboundSa, dp: &Dataplane, p: &Probe) -> Result<bool, String> {
    let mut buf = [0u8; HEADROOM_MAX + PROBE_LEN + TAILROOM_MAX];
    let mut inner = [0u8; PROBE_LEN];
    p.emit(&mut inner);
    buf[HEADROOM_MAX..HEADROOM_MAX + PROBE_LEN].copy_from_slice(&inner);
    let out = sa
        .encapsulate(&mut buf, HEADROOM_MAX, PROBE_LEN)
        .map_err(|e| e.to_string())?;
    let bytes = buf.get(out.range.clone()).ok_or("ESP range")?;
    let r = match sa.udp_encap() {
        Some(u) => dp.send_udp(
            SocketAddrV4::new(sa.local(), u.src_port),
            SocketAddrV4::new(sa.remote(), u.dst_port),
            bytes,
        ),
        None => dp.send_esp(sa.local(), sa.remote(), bytes),
    };
    r.map_err(|e| e.to_string())?;
    Ok(out.soft_expired)
}

/// An echo request of ours (RFC 792), before encapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probe {
    source: Ipv4Addr,
    destination: Ipv4Addr,
    ident: u16,
    nonce: u64,
    key: TunnelKey,
    probe: u32,
    slot: u32,
    sent_ns: u64,
}

impl Probe {
    /// Writes the IPv4 packet (exactly [`PROBE_LEN`] bytes) into `out`.
    fn emit(&self, out: &mut [u8; PROBE_LEN]) {
        let (ip, rest) = out.split_at_mut(IPV4_HEADER_LEN);
        let total = PROBE_LEN as u16;
        ip.copy_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            // Identification: the probe number; DF is off, the probe is small.
            (self.probe >> 8) as u8,
            self.probe as u8,
            0,
            0,
            TTL,
            PROTO_ICMP,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ]);
        ip[12..16].copy_from_slice(&self.source.octets());
        ip[16..20].copy_from_slice(&self.destination.octets());
        let sum = esp::wire::checksum(ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let (icmp, payload) = rest.split_at_mut(ICMP_HEADER_LEN);
        payload[0..8].copy_from_slice(&MAGIC);
        payload[8..16].copy_from_slice(&self.nonce.to_be_bytes());
        payload[16..24].copy_from_slice(&self.key.to_be_bytes());
        payload[24..28].copy_from_slice(&self.probe.to_be_bytes());
        payload[28..32].copy_from_slice(&self.slot.to_be_bytes());
        payload[32..40].copy_from_slice(&self.sent_ns.to_be_bytes());
        icmp.copy_from_slice(&[ICMP_ECHO_REQUEST, 0, 0, 0, 0, 0, 0, 0]);
        icmp[4..6].copy_from_slice(&self.ident.to_be_bytes());
        // Sequence number: the probe number's low bits (the payload has all of it).
        icmp[6..8].copy_from_slice(&(self.probe as u16).to_be_bytes());
        let sum = esp::wire::checksum(rest);
        rest[2..4].copy_from_slice(&sum.to_be_bytes());
    }
}

/// An answer to one of our probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reply {
    /// Inner destination: the probe's source.
    destination: Ipv4Addr,
    key: TunnelKey,
    probe: u32,
    slot: u32,
    sent_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parsed {
    /// Not an answer to a health probe of this node: forward it.
    NotOurs,
    Reply(Reply),
    /// Claims to answer one of our probes but is not valid: drop and count.
    Malformed(&'static str),
}

/// Classifies a decapsulated inner packet. Never panics: every access is checked.
fn parse_reply(pkt: &[u8], ident: u16, nonce: u64) -> Parsed {
    // IPv4 (RFC 791): version 4, protocol ICMP, not a fragment.
    let Some(ip) = pkt
        .get(..IPV4_HEADER_LEN)
        .and_then(|b| <&[u8; IPV4_HEADER_LEN]>::try_from(b).ok())
    else {
        return Parsed::NotOurs;
    };
    if ip[0] >> 4 != 4 || ip[9] != PROTO_ICMP {
        return Parsed::NotOurs;
    }
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    if fragment != 0 {
        return Parsed::NotOurs;
    }
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let Some(icmp) = pkt.get(hl.max(IPV4_HEADER_LEN)..total.min(pkt.len())) else {
        return Parsed::NotOurs;
    };
    // RFC 792 echo reply with our identifier and our payload's magic.
    let ours = matches!(icmp, [ICMP_ECHO_REPLY, 0, _, _, i0, i1, _, _, ..]
        if u16::from_be_bytes([*i0, *i1]) == ident)
        && icmp.get(ICMP_HEADER_LEN..ICMP_HEADER_LEN + MAGIC.len()) == Some(&MAGIC[..]);
    if !ours {
        return Parsed::NotOurs;
    }
    if hl != IPV4_HEADER_LEN || total != pkt.len() {
        return Parsed::Malformed("IPv4 options or length");
    }
    let Some(p) = icmp.get(ICMP_HEADER_LEN..) else {
        return Parsed::Malformed("length");
    };
    if p.len() != PAYLOAD_LEN {
        return Parsed::Malformed("payload length");
    }
    if esp::wire::checksum(icmp) != 0 {
        return Parsed::Malformed("ICMP checksum");
    }
    let be64 = |r: std::ops::Range<usize>| {
        p.get(r)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    };
    let be32 = |r: std::ops::Range<usize>| {
        p.get(r)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
    };
    let (Some(n), Some(key), Some(probe), Some(slot), Some(sent_ns)) = (
        be64(8..16),
        be64(16..24),
        be32(24..28),
        be32(28..32),
        be64(32..40),
    ) else {
        return Parsed::Malformed("payload length");
    };
    if n != nonce {
        return Parsed::Malformed("another node's probe");
    }
    let seq = match icmp {
        [_, _, _, _, _, _, s0, s1, ..] => u16::from_be_bytes([*s0, *s1]),
        _ => return Parsed::Malformed("length"),
    };
    if seq != probe as u16 || probe == 0 {
        return Parsed::Malformed("sequence number");
    }
    Parsed::Reply(Reply {
        destination: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        key,
        probe,
        slot,
        sent_ns,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const IDENT: u16 = 0x4a7b;
    const NONCE: u64 = 0x0123_4567_89ab_cdef;

    fn probe() -> Probe {
        Probe {
            source: Ipv4Addr::new(172, 16, 1, 250),
            destination: Ipv4Addr::new(10, 2, 0, 9),
            ident: IDENT,
            nonce: NONCE,
            key: 7,
            probe: 0x0001_0003,
            slot: 2,
            sent_ns: 123_456_789,
        }
    }

    /// What a host does with our echo request (RFC 792): swap the addresses, type 0,
    /// fix the checksums; identifier, sequence and data are echoed.
    fn answer(req: &[u8; PROBE_LEN]) -> [u8; PROBE_LEN] {
        let mut r = *req;
        r[12..16].copy_from_slice(&req[16..20]);
        r[16..20].copy_from_slice(&req[12..16]);
        r[10..12].copy_from_slice(&[0, 0]);
        let sum = esp::wire::checksum(&r[..20]);
        r[10..12].copy_from_slice(&sum.to_be_bytes());
        r[20] = ICMP_ECHO_REPLY;
        r[22..24].copy_from_slice(&[0, 0]);
        let sum = esp::wire::checksum(&r[20..]);
        r[22..24].copy_from_slice(&sum.to_be_bytes());
        r
    }

    fn emitted() -> [u8; PROBE_LEN] {
        let mut b = [0u8; PROBE_LEN];
        probe().emit(&mut b);
        b
    }

    #[test]
    fn probe_is_a_valid_echo_request() {
        let b = emitted();
        assert_eq!(b[0], 0x45);
        assert_eq!(usize::from(u16::from_be_bytes([b[2], b[3]])), PROBE_LEN);
        assert_eq!(b[9], PROTO_ICMP);
        assert_eq!(esp::wire::checksum(&b[..20]), 0, "IPv4 header checksum");
        assert_eq!(&b[12..16], &[172, 16, 1, 250]);
        assert_eq!(&b[16..20], &[10, 2, 0, 9]);
        assert_eq!(b[20], ICMP_ECHO_REQUEST);
        assert_eq!(esp::wire::checksum(&b[20..]), 0, "ICMP checksum");
        assert_eq!(u16::from_be_bytes([b[24], b[25]]), IDENT);
        assert_eq!(
            u16::from_be_bytes([b[26], b[27]]),
            3,
            "low bits of the probe"
        );
        assert_eq!(&b[28..36], b"vpngw-hc");
        // Our own request is not an answer.
        assert_eq!(parse_reply(&b, IDENT, NONCE), Parsed::NotOurs);
    }

    #[test]
    fn answer_parses_back() {
        let r = answer(&emitted());
        assert_eq!(
            parse_reply(&r, IDENT, NONCE),
            Parsed::Reply(Reply {
                destination: Ipv4Addr::new(172, 16, 1, 250),
                key: 7,
                probe: 0x0001_0003,
                slot: 2,
                sent_ns: 123_456_789,
            })
        );
    }

    #[test]
    fn other_traffic_is_not_ours() {
        let r = answer(&emitted());
        // Another identifier (a VPC host's own ping).
        assert_eq!(parse_reply(&r, IDENT ^ 1, NONCE), Parsed::NotOurs);
        // Our identifier by chance, but not our payload.
        let mut other = r;
        other[28] = b'x';
        assert_eq!(parse_reply(&other, IDENT, NONCE), Parsed::NotOurs);
        // UDP, a fragment, IPv6, nothing.
        let mut udp = r;
        udp[9] = 17;
        assert_eq!(parse_reply(&udp, IDENT, NONCE), Parsed::NotOurs);
        let mut frag = r;
        frag[6] = 0x20;
        assert_eq!(parse_reply(&frag, IDENT, NONCE), Parsed::NotOurs);
        let mut v6 = r;
        v6[0] = 0x60;
        assert_eq!(parse_reply(&v6, IDENT, NONCE), Parsed::NotOurs);
        assert_eq!(parse_reply(&[], IDENT, NONCE), Parsed::NotOurs);
    }

    #[test]
    fn malformed_answers_are_flagged() {
        let r = answer(&emitted());
        let mut bad_sum = r;
        bad_sum[PROBE_LEN - 1] ^= 0xff;
        assert!(matches!(
            parse_reply(&bad_sum, IDENT, NONCE),
            Parsed::Malformed(_)
        ));
        assert!(matches!(
            parse_reply(&r, IDENT, NONCE ^ 1),
            Parsed::Malformed("another node's probe")
        ));
        // Truncated: the IPv4 total length says more than there is.
        assert!(matches!(
            parse_reply(&r[..PROBE_LEN - 4], IDENT, NONCE),
            Parsed::Malformed(_)
        ));
        // Sequence number that does not match the payload's probe number.
        let mut seq = r;
        seq[27] ^= 1;
        seq[22..24].copy_from_slice(&[0, 0]);
        let sum = esp::wire::checksum(&seq[20..]);
        seq[22..24].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(
            parse_reply(&seq, IDENT, NONCE),
            Parsed::Malformed("sequence number")
        );
    }

    #[test]
    fn no_input_panics() {
        // Every truncation and every single-byte corruption of an answer.
        let r = answer(&emitted());
        for n in 0..=PROBE_LEN {
            let _ = parse_reply(&r[..n], IDENT, NONCE);
        }
        for i in 0..PROBE_LEN {
            for v in [0u8, 1, 0x0f, 0x45, 0x4f, 0x80, 0xff] {
                let mut b = r;
                b[i] = v;
                let _ = parse_reply(&b, IDENT, NONCE);
                let _ = parse_reply(&b[..i], IDENT, NONCE);
            }
        }
        // A header length longer than the packet, a total length of zero.
        let mut b = r;
        b[0] = 0x4f;
        assert_eq!(parse_reply(&b[..40], IDENT, NONCE), Parsed::NotOurs);
        let mut b = r;
        b[2] = 0;
        b[3] = 0;
        let _ = parse_reply(&b, IDENT, NONCE);
    }

    #[test]
    fn counters_render_as_prometheus_text() {
        let c = Counters::default();
        c.probes.store(7, Ordering::Relaxed);
        c.replies.store(5, Ordering::Relaxed);
        c.malformed.store(1, Ordering::Relaxed);
        let mut out = String::new();
        render_counters(&c, &mut out);
        assert!(out.contains("# TYPE vpngw_health_probes_total counter\n"));
        assert!(out.contains("\nvpngw_health_probes_total 7\n"), "{out}");
        assert!(out.contains("\nvpngw_health_replies_total 5\n"), "{out}");
        assert!(out.contains("\nvpngw_health_malformed_total 1\n"), "{out}");
    }

    #[test]
    fn slot_records_the_latest_answer_and_rtt() {
        let epoch = Instant::now();
        let s = Slot {
            key: 7,
            source: Ipv4Addr::new(172, 16, 1, 250),
            epoch,
            sent: AtomicU32::new(0),
            answered: AtomicU32::new(0),
            rtt_us: AtomicU32::new(0),
            withdrawn: AtomicBool::new(false),
        };
        let reply = |probe| Reply {
            destination: s.source,
            key: 7,
            probe,
            slot: 0,
            sent_ns: 0,
        };
        // Nothing sent yet: no answer is genuine; nor one for another tunnel or source.
        assert!(!s.accepts(&reply(1)));
        s.sent.store(6, Ordering::Relaxed);
        assert!(s.accepts(&reply(6)));
        assert!(!s.accepts(&reply(7)), "a probe not sent yet");
        assert!(!s.accepts(&Reply { key: 8, ..reply(1) }));
        assert!(!s.accepts(&Reply {
            destination: Ipv4Addr::new(172, 16, 1, 251),
            ..reply(1)
        }));
        s.record(&reply(5));
        // A late answer to an older probe does not go back.
        s.record(&reply(3));
        assert_eq!(s.answered.load(Ordering::Relaxed), 5);
        // A send time in the future (forged) gives 0, not a wrap.
        s.record(&Reply {
            sent_ns: u64::MAX,
            ..reply(6)
        });
        assert_eq!(s.rtt_us.load(Ordering::Relaxed), 0);
    }

    fn spec(switch_route: bool) -> HealthSpec {
        HealthSpec {
            source: Ipv4Addr::new(172, 16, 1, 250),
            destination: Ipv4Addr::new(10, 2, 0, 9),
            interval: Duration::from_secs(3),
            retries: 3,
            switch_route,
        }
    }

    fn conn(switch_route: bool) -> ConnSpec {
        ConnSpec {
            id: "vco-1".into(),
            tunnels: vec!["tun-1".into(), "tun-2".into()],
            health: Some(spec(switch_route)),
        }
    }

    pub(crate) fn outbound(spi: u32) -> Arc<OutboundSa> {
        let params = esp::SaParams {
            spi,
            encr: crypto::Encr::AesCbc128,
            enc_key: esp::Key::new(&[7; 16]),
            integ: Some(crypto::Integ::HmacSha1_96),
            integ_key: esp::Key::new(&[9; 20]),
            local: Ipv4Addr::new(192, 0, 2, 1),
            remote: Ipv4Addr::new(198, 51, 100, 1),
            udp_encap: None,
            selectors: esp::Selectors {
                local: Vec::new(),
                remote: Vec::new(),
            },
            lifetime: esp::Lifetime::default(),
        };
        Arc::new(OutboundSa::new(params, &mut crypto::OsRandom).unwrap())
    }

    /// The probe-answer cycle on a virtual clock: unknown until the first answer, down
    /// after `retries` unanswered probes (withdrawn with switch_route), up again on the
    /// first answer, unknown while the tunnel has no SA.
    #[test]
    fn misses_mark_down_and_one_answer_recovers() {
        let mut h = Health::new(&mut crypto::OsRandom);
        let t0 = Instant::now();
        h.configure(&[conn(true)], |id| match id {
            "tun-1" => Some(1),
            "tun-2" => Some(2),
            _ => None,
        });
        assert_eq!(h.fwd().slots.len(), 2);
        let sadb = SaDb::new();
        let mut sent: Vec<Probe> = Vec::new();
        let tick = |h: &mut Health, at: Duration, sent: &mut Vec<Probe>| {
            h.tick_with(t0 + at, &sadb, &mut |_, p| {
                sent.push(*p);
                Ok(false)
            })
        };
        // No SA yet: nothing to probe through, and no timer to wake up for.
        assert!(tick(&mut h, Duration::ZERO, &mut sent).is_empty());
        assert!(sent.is_empty());
        assert_eq!(h.deadline(), None);
        assert_eq!(h.status("tun-1", true).unwrap().state, HealthState::Unknown);

        sadb.set_outbound(1, outbound(0x100));
        tick(&mut h, Duration::ZERO, &mut sent);
        assert_eq!(sent.len(), 1, "tunnel 1 probed, tunnel 2 (no SA) not");
        let answer_last = |h: &Health, sent: &[Probe]| {
            let mut b = [0u8; PROBE_LEN];
            sent.last().unwrap().emit(&mut b);
            let Parsed::Reply(r) = parse_reply(&answer(&b), h.ident, h.nonce) else {
                panic!("not parsed")
            };
            let slot = &h.fwd().slots[r.slot as usize];
            assert!(slot.accepts(&r));
            slot.record(&r);
        };
        answer_last(&h, &sent);
        assert!(tick(&mut h, Duration::from_millis(5), &mut sent).is_empty());
        let st = h.status("tun-1", true).unwrap();
        assert_eq!(st.state, HealthState::Up);
        assert!(st.last_rtt_ms.is_some());
        assert_eq!(sent.len(), 1, "no probe before the interval");
        assert_eq!(h.deadline(), Some(t0 + Duration::from_secs(3)));

        // The destination stops answering: probes at 3, 6, 9 s go unanswered; the third
        // miss (noticed at 12 s) marks it down.
        let mut events = Vec::new();
        for s in [3, 6, 9, 12] {
            events.extend(tick(&mut h, Duration::from_secs(s), &mut sent));
        }
        assert_eq!(sent.len(), 5);
        assert_eq!(h.status("tun-1", true).unwrap().state, HealthState::Down);
        assert!(h.withdrawn(1));
        assert!(h.slot(1).unwrap().withdrawn());
        assert!(!h.withdrawn(2));
        let [Event::Log { event, message, .. }] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(*event, "health_check_failed");
        assert!(
            message.contains("no echo reply from 10.2.0.9 via tunnel 1 for 3 × 3 s"),
            "{message}"
        );

        // One answer restores it at once.
        answer_last(&h, &sent);
        let events = tick(&mut h, Duration::from_millis(12_010), &mut sent);
        assert!(
            matches!(
                events.as_slice(),
                [Event::Log {
                    event: "health_check_recovered",
                    ..
                }]
            ),
            "{events:?}"
        );
        assert_eq!(h.status("tun-1", true).unwrap().state, HealthState::Up);
        assert!(!h.withdrawn(1));

        // The SA goes: unknown, not withdrawn, no probes.
        sadb.remove_outbound(&1);
        let n = sent.len();
        tick(&mut h, Duration::from_secs(30), &mut sent);
        assert_eq!(sent.len(), n);
        assert_eq!(h.status("tun-1", true).unwrap().state, HealthState::Unknown);
    }

    #[test]
    fn without_switch_route_down_is_only_reported() {
        let mut h = Health::new(&mut crypto::OsRandom);
        let t0 = Instant::now();
        h.configure(&[conn(false)], |id| (id == "tun-1").then_some(1));
        let sadb = SaDb::new();
        sadb.set_outbound(1, outbound(0x100));
        let mut events = Vec::new();
        for s in 0..=3 {
            events.extend(
                h.tick_with(t0 + Duration::from_secs(3 * s), &sadb, &mut |_, _| {
                    Ok(false)
                }),
            );
        }
        assert_eq!(h.status("tun-1", true).unwrap().state, HealthState::Down);
        assert!(!h.withdrawn(1), "switch_route off: never withdrawn");
        assert!(format!("{events:?}").contains("switch_route is off"));
    }

    #[test]
    fn reconfiguring_keeps_unchanged_checks_and_drops_disabled_ones() {
        let mut h = Health::new(&mut crypto::OsRandom);
        let key = |id: &str| (id == "tun-1").then_some(1);
        h.configure(&[conn(true)], key);
        let before = h.slot(1).unwrap();
        h.configure(&[conn(true)], key);
        assert!(Arc::ptr_eq(&before, &h.slot(1).unwrap()), "same check kept");
        h.configure(&[conn(false)], key);
        assert!(
            !Arc::ptr_eq(&before, &h.slot(1).unwrap()),
            "settings changed"
        );
        let mut off = conn(true);
        off.health = None;
        h.configure(&[off], key);
        assert!(h.slot(1).is_none());
        assert!(h.fwd().slots.is_empty());
        assert!(h.status("tun-1", true).is_none());
    }
}
