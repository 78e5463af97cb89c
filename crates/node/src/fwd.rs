//! The packet path: the [`EspHandler`] the data plane's workers run, and the forwarding
//! snapshot it reads.
//!
//! Per packet there is no allocation and no lock: the forwarding tables are one
//! immutable [`Fwd`] snapshot behind an `ArcSwap` (read through a per-worker
//! `arc_swap::Cache`: one atomic load when nothing changed), SAs come from the
//! [`esp::SaDb`] through a per-worker [`esp::SaDbCache`], and ESP sequence numbers and
//! counters are atomics inside the SAs. The control thread publishes a new snapshot when
//! the configuration changes and swaps SAs in the `SaDb` when IKE creates, rekeys or
//! deletes them.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;

use arc_swap::{ArcSwap, Cache};
use dataplane::{Action, DropReason, Handler, PacketBuf, PolicyTable, RouteTable, WorkerCtx};
use esp::wire::natt::{Udp4500, classify_udp4500};
use esp::{
    Decapsulated, EspError, InboundSa, OpenJob, Opening, OutboundSa, PendingOpen, PendingSeal,
    SaDb, SaDbCache, SealJob,
};

use crate::bgp::{BgpFwd, BgpTarget};
use crate::control::Input;
use crate::health::{self, HealthFwd, Slot};

/// Key of a tunnel's outbound SA in the [`SaDb`]: the tunnel's IKE peer ID.
pub(crate) type TunnelKey = u64;

/// No connection (a route's missing standby).
pub(crate) const NONE: u32 = u32::MAX;

/// The forwarding state the workers read: immutable once published.
#[derive(Default)]
pub(crate) struct Fwd {
    /// Destination routes → index into `targets`.
    pub routes: RouteTable<u32>,
    /// Policy routes (source + destination) → index into `targets`; looked up first.
    pub policy: PolicyTable<u32>,
    /// (primary, standby) connection indexes.
    pub targets: Vec<[u32; 2]>,
    pub conns: Vec<ConnFwd>,
    /// Tunnel ID → its key (not used per packet; the BGP task needs it).
    pub keys: HashMap<String, TunnelKey>,
    /// Health-check answers to recognise after decapsulation (see `health.rs`).
    pub health: HealthFwd,
    /// (our address, customer gateway address) of the tunnels that may initiate → set
    /// by a worker when ESP with an SPI we do not have arrives from there.
    pub unknown_spi: HashMap<(Ipv4Addr, Ipv4Addr), Arc<AtomicBool>>,
}

/// One connection on the packet path.
pub(crate) struct ConnFwd {
    /// Tunnel 1 and tunnel 2 (SaDb keys); tunnel 1 carries traffic while it has an
    /// outbound SA.
    pub tunnels: Vec<TunnelKey>,
    /// The health-check slot of each of `tunnels` (same order), if the connection has a
    /// health check: a tunnel withdrawn by it does not carry the connection's traffic.
    pub health: Vec<Option<Arc<Slot>>>,
    /// Set by a worker when a packet wants this connection and no tunnel is up; the
    /// control thread clears it and starts negotiating (effective_immediately = false).
    pub trigger: Arc<AtomicBool>,
}

/// The data plane handler: ESP encapsulation toward peers, decapsulation toward the VPC,
/// IKE up to the control thread.
pub(crate) struct EspHandler {
    pub fwd: Arc<ArcSwap<Fwd>>,
    /// BGP links and learned routes (see `bgp.rs`).
    pub bgp: Arc<ArcSwap<BgpFwd>>,
    pub sadb: Arc<SaDb<TunnelKey>>,
    /// Wakes the control thread (bounded channel: `try_send` never allocates).
    pub wake: SyncSender<Input>,
    pub ike_port: u16,
    pub natt_port: u16,
}

/// A worker's lock-free views, and the ESP crypto its batch left for `end_batch`.
pub(crate) struct Local {
    fwd: Cache<Arc<ArcSwap<Fwd>>, Arc<Fwd>>,
    bgp: Cache<Arc<ArcSwap<BgpFwd>>, Arc<BgpFwd>>,
    sadb: SaDbCache<TunnelKey>,
    seals: Deferred<OutboundSa, PendingSeal>,
    opens: Deferred<InboundSa, PendingOpen>,
}

/// Packets of the current batch whose ESP crypto waits for `end_batch`, where each SA's
/// packets are sealed or opened together (`crypto::CbcHmac::seal_many`: four CBC chains
/// interleaved, hashes sixteen packets wide with AVX-512). Sized for the largest batch once, so pushing never
/// allocates; an SA is cloned (one reference count) only where it changes from the
/// previous packet's, which for a TSO super-packet's segments is once.
struct Deferred<S, P> {
    /// (batch slot, what the SA returned), in slot order.
    jobs: Vec<(usize, P)>,
    /// (index of the first of `jobs` under the SA, the SA).
    sas: Vec<(usize, Arc<S>)>,
}

impl<S, P> Deferred<S, P> {
    fn new() -> Self {
        Self {
            jobs: Vec::with_capacity(MAX_BATCH),
            sas: Vec::with_capacity(MAX_BATCH),
        }
    }

    fn push(&mut self, sa: &Arc<S>, slot: usize, pending: P) {
        if !self.sas.last().is_some_and(|(_, s)| Arc::ptr_eq(s, sa)) {
            self.sas.push((self.jobs.len(), Arc::clone(sa)));
        }
        self.jobs.push((slot, pending));
    }

    /// Each SA with its jobs.
    fn groups(&self) -> impl Iterator<Item = (&S, &[(usize, P)])> {
        self.sas.iter().enumerate().map(|(g, (start, sa))| {
            let end = self.sas.get(g + 1).map_or(self.jobs.len(), |(s, _)| *s);
            (&**sa, self.jobs.get(*start..end).unwrap_or_default())
        })
    }

    fn clear(&mut self) {
        self.jobs.clear();
        self.sas.clear();
    }
}

/// The data plane's largest batch (`dataplane::Config::batch`).
const MAX_BATCH: usize = 1024;
/// Jobs handed to `seal_many`/`open_many` per call: a stack array that holds all the
/// segments of a TSO super-packet (45 of 1448 bytes).
const CHUNK: usize = 64;

impl Handler for EspHandler {
    type Local = Local;

    fn new_local(&self, _worker: usize) -> Local {
        Local {
            fwd: Cache::new(Arc::clone(&self.fwd)),
            bgp: Cache::new(Arc::clone(&self.bgp)),
            sadb: self.sadb.cache(),
            seals: Deferred::new(),
            opens: Deferred::new(),
        }
    }

    /// Runs the ESP crypto the batch's packets left: each SA's packets sealed or opened
    /// together. A packet that fails is dropped and counted as the one-packet path
    /// would; opened packets then go through the health-check interception as before.
    fn end_batch(
        &self,
        ctx: &mut WorkerCtx<Local>,
        pkts: &mut [PacketBuf],
        actions: &mut [Action],
    ) {
        let Local {
            fwd, seals, opens, ..
        } = &mut ctx.local;
        for (sa, group) in seals.groups() {
            for chunk in group.chunks(CHUNK) {
                let mut pick = Picker::new(pkts);
                let mut jobs: [SealJob<'_>; CHUNK] = core::array::from_fn(|k| {
                    match chunk
                        .get(k)
                        .and_then(|(slot, p)| Some((pick.take(*slot)?, p)))
                    {
                        Some((pkt, p)) => SealJob::new(pkt.buffer_mut(), *p),
                        None => SealJob::new(&mut [], PendingSeal::default()),
                    }
                });
                sa.seal_many(&mut jobs[..chunk.len()]);
                for ((slot, _), job) in chunk.iter().zip(&jobs) {
                    // Never send a packet whose encryption did not run.
                    if job.result().is_err()
                        && let Some(a) = actions.get_mut(*slot)
                    {
                        *a = Action::Drop(DropReason::Other);
                    }
                }
            }
        }
        seals.clear();
        for (sa, group) in opens.groups() {
            for chunk in group.chunks(CHUNK) {
                let mut results: [Result<Decapsulated, EspError>; CHUNK] =
                    core::array::from_fn(|_| Err(EspError::AuthFailed));
                {
                    let mut pick = Picker::new(pkts);
                    let mut jobs: [OpenJob<'_>; CHUNK] = core::array::from_fn(|k| {
                        match chunk
                            .get(k)
                            .and_then(|(slot, p)| Some((pick.take(*slot)?, p)))
                        {
                            Some((pkt, p)) => OpenJob::new(pkt.data_mut(), *p),
                            None => OpenJob::new(&mut [], PendingOpen::default()),
                        }
                    });
                    sa.open_many(&mut jobs[..chunk.len()]);
                    for (r, job) in results.iter_mut().zip(&jobs) {
                        *r = job.result().clone();
                    }
                }
                for ((slot, _), r) in chunk.iter().zip(results) {
                    if let (Some(pkt), Some(a)) = (pkts.get_mut(*slot), actions.get_mut(*slot)) {
                        let action = delivered(r, pkt);
                        *a = health::intercept(fwd, &self.wake, action, pkt);
                    }
                }
            }
        }
        opens.clear();
    }

    fn handle_tun(&self, ctx: &mut WorkerCtx<Local>, pkt: &mut PacketBuf) -> Action {
        let d = pkt.data();
        let (src, dst) = match d {
            [
                b0,
                _,
                _,
                _,
                _,
                _,
                _,
                _,
                _,
                _,
                _,
                _,
                s0,
                s1,
                s2,
                s3,
                d0,
                d1,
                d2,
                d3,
                ..,
            ] if b0 >> 4 == 4 => (
                Ipv4Addr::new(*s0, *s1, *s2, *s3),
                Ipv4Addr::new(*d0, *d1, *d2, *d3),
            ),
            _ => return Action::Drop(DropReason::Unsupported),
        };
        let slot = ctx.slot;
        let Local {
            fwd,
            bgp,
            sadb,
            seals,
            ..
        } = &mut ctx.local;
        let fwd = fwd.load();
        let bgp = bgp.load();
        let key = match bgp.links.lookup(dst) {
            // A BGP session's own traffic goes through its tunnel, whichever tunnel
            // carries the connection's traffic.
            Some(link) => link,
            None => match route(fwd, bgp, sadb, src, dst, d) {
                Routed::Tunnel(key) => key,
                Routed::Drop(reason) => return Action::Drop(reason),
                Routed::NoSa(primary) => {
                    if let Some(c) = fwd.conns.get(primary as usize) {
                        // Traffic-triggered negotiation: one wake-up per flag flip,
                        // whatever the packet rate.
                        if !c.trigger.swap(true, Ordering::AcqRel)
                            && self.wake.try_send(Input::Traffic).is_err()
                        {
                            // The control thread is swamped: let a later packet try
                            // again.
                            c.trigger.store(false, Ordering::Release);
                        }
                    }
                    return Action::Drop(DropReason::NoSa);
                }
            },
        };
        let Some(sa) = sadb.outbound(&key) else {
            return Action::Drop(DropReason::NoSa);
        };
        let (head, len) = (pkt.head(), pkt.len());
        // Sequence number, IV, padding and headers now; the encryption and ICV in
        // `end_batch`, with the batch's other packets of this SA.
        let out = match sa.encapsulate_deferred(pkt.buffer_mut(), head, len) {
            Ok((out, pending)) => {
                if let Some(p) = pending {
                    seals.push(sa, slot, p);
                }
                out
            }
            // The rekey was requested when the soft limit fired (once per SA); until the
            // new SA is installed these packets cannot be sent.
            Err(EspError::SequenceExhausted | EspError::HardExpired) => {
                return Action::Drop(DropReason::NoSa);
            }
            Err(EspError::TooBig) => return Action::Drop(DropReason::TooBig),
            Err(_) => return Action::Drop(DropReason::Other),
        };
        if out.soft_expired {
            let _ = self.wake.try_send(Input::SoftExpired(key));
        }
        if pkt.set_range(out.range.start, out.range.len()).is_err() {
            return Action::Drop(DropReason::Other);
        }
        match sa.udp_encap() {
            Some(u) => Action::ToUdp {
                local: SocketAddrV4::new(sa.local(), u.src_port),
                remote: SocketAddrV4::new(sa.remote(), u.dst_port),
            },
            None => Action::ToEsp {
                local: sa.local(),
                remote: sa.remote(),
            },
        }
    }

    fn handle_udp(
        &self,
        ctx: &mut WorkerCtx<Local>,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        pkt: &mut PacketBuf,
    ) -> Action {
        if local.port() == self.ike_port {
            return Action::Control;
        }
        if local.port() != self.natt_port {
            return Action::Drop(DropReason::Unsupported);
        }
        // RFC 3948 §2: IKE behind the non-ESP marker, ESP, or a NAT-keepalive.
        match classify_udp4500(pkt.data()) {
            Udp4500::Ike(_) => match pkt.pull_front(esp::wire::natt::NON_ESP_MARKER_LEN) {
                Ok(()) => Action::Control,
                Err(_) => Action::Drop(DropReason::Malformed),
            },
            Udp4500::Esp => self.decapsulate(ctx, (*local.ip(), *remote.ip()), pkt),
            Udp4500::Keepalive => Action::Drop(DropReason::NatKeepalive),
            Udp4500::Invalid => Action::Drop(DropReason::Malformed),
        }
    }

    fn handle_esp(
        &self,
        ctx: &mut WorkerCtx<Local>,
        local: Ipv4Addr,
        remote: Ipv4Addr,
        pkt: &mut PacketBuf,
    ) -> Action {
        self.decapsulate(ctx, (local, remote), pkt)
    }
}

impl EspHandler {
    /// ESP (from the SPI on) → the inner IPv4 packet, in place. CBC SAs only run the
    /// checks before the ICV here and leave the rest to `end_batch`; the action returned
    /// for them is provisional. `from` is (our address, the sender's).
    fn decapsulate(
        &self,
        ctx: &mut WorkerCtx<Local>,
        from: (Ipv4Addr, Ipv4Addr),
        pkt: &mut PacketBuf,
    ) -> Action {
        let slot = ctx.slot;
        let Local {
            fwd, sadb, opens, ..
        } = &mut ctx.local;
        let spi = match pkt.data() {
            [a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]),
            _ => return Action::Drop(DropReason::Malformed),
        };
        let Some(sa) = sadb.inbound(spi) else {
            // From a tunnel's customer gateway: the peer holds SAs this node does not
            // (it restarted). One wake-up per flag flip; the control thread re-arms
            // the flag every status tick.
            if let Some(flag) = fwd.load().unknown_spi.get(&from)
                && !flag.swap(true, Ordering::AcqRel)
                && self.wake.try_send(Input::UnknownSpi).is_err()
            {
                flag.store(false, Ordering::Release);
            }
            return Action::Drop(DropReason::NoSa);
        };
        match sa.decapsulate_deferred(pkt.data_mut()) {
            Ok(Opening::Pending(p)) => {
                opens.push(sa, slot, p);
                Action::ToTun
            }
            Ok(Opening::Done(d)) => {
                let action = delivered(Ok(d), pkt);
                health::intercept(fwd, &self.wake, action, pkt)
            }
            Err(e) => Action::Drop(drop_reason(e)),
        }
    }
}

/// `pkts[slot]` for strictly increasing slots, each borrowed for as long as `pkts`.
struct Picker<'a> {
    rest: &'a mut [PacketBuf],
    base: usize,
}

impl<'a> Picker<'a> {
    fn new(pkts: &'a mut [PacketBuf]) -> Self {
        Self {
            rest: pkts,
            base: 0,
        }
    }

    fn take(&mut self, slot: usize) -> Option<&'a mut PacketBuf> {
        let skip = slot.checked_sub(self.base)?;
        let rest = std::mem::take(&mut self.rest);
        let (_, tail) = rest.split_at_mut_checked(skip)?;
        let (first, tail) = tail.split_first_mut()?;
        self.rest = tail;
        self.base = slot + 1;
        Some(first)
    }
}

/// Where [`route`] sends a packet from the VPC.
enum Routed {
    Tunnel(TunnelKey),
    Drop(DropReason),
    /// Routed to this connection (primary), which has no tunnel up.
    NoSa(u32),
}

/// The tunnel a packet (`pkt`, the IPv4 packet from the VPC) goes through: policy routes
/// first, then the longest prefix of the static and BGP-learned routes (a static route
/// wins at equal length unless the learned route's connection has
/// `bgp_override_static`).
#[inline]
fn route(
    fwd: &Fwd,
    bgp: &BgpFwd,
    sadb: &mut SaDbCache<TunnelKey>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    pkt: &[u8],
) -> Routed {
    let policy = fwd.policy.lookup(src, dst).map(|r| r.value);
    let fixed = fwd.routes.lookup_prefix(dst);
    let learned = match (policy, fixed, bgp.routes.lookup_prefix(dst)) {
        (None, None, Some((_, i))) => Some(i),
        (None, Some((s, _)), Some((l, i)))
            if l.prefix_len() > s.prefix_len()
                || (l.prefix_len() == s.prefix_len()
                    && bgp
                        .targets
                        .get(i as usize)
                        .is_some_and(|t| t.override_static)) =>
        {
            Some(i)
        }
        _ => None,
    };
    if let Some(i) = learned {
        let Some(target) = bgp.targets.get(i as usize) else {
            return Routed::Drop(DropReason::NoRoute);
        };
        return match bgp_tunnel(target, sadb, pkt) {
            Some(k) => Routed::Tunnel(k),
            None => Routed::Drop(DropReason::NoSa),
        };
    }
    let target = policy.or(fixed.map(|(_, t)| t));
    let Some(&[primary, standby]) = target.and_then(|t| fwd.targets.get(t as usize)) else {
        return Routed::Drop(DropReason::NoRoute);
    };
    match active_tunnel(&fwd.conns, sadb, primary)
        .or_else(|| active_tunnel(&fwd.conns, sadb, standby))
    {
        Some(k) => Routed::Tunnel(k),
        // Up but withdrawn by its health check: nothing to negotiate.
        None if fwd
            .conns
            .get(primary as usize)
            .is_some_and(|c| c.tunnels.iter().any(|k| sadb.outbound(k).is_some())) =>
        {
            Routed::Drop(DropReason::NoRoute)
        }
        None => Routed::NoSa(primary),
    }
}

/// The tunnel of a BGP-learned route: with `bgp_ecmp` and both tunnels' SAs up, the one
/// the packet's flow hashes to; else tunnel 1's session first, then tunnel 2's (module
/// docs of `bgp.rs`). A tunnel without an outbound SA is never picked, so when one
/// tunnel goes every flow moves to the other.
#[inline]
fn bgp_tunnel(
    target: &BgpTarget,
    sadb: &mut SaDbCache<TunnelKey>,
    pkt: &[u8],
) -> Option<TunnelKey> {
    if let [Some(a), Some(b)] = target.tunnels
        && target.ecmp
        && sadb.outbound(&a).is_some()
        && sadb.outbound(&b).is_some()
    {
        return Some(if flow_hash(pkt) & 1 == 0 { a } else { b });
    }
    target
        .tunnels
        .iter()
        .flatten()
        .copied()
        .find(|k| sadb.outbound(k).is_some())
}

/// A stable hash of an IPv4 packet's flow for ECMP: addresses, protocol and, for TCP,
/// UDP, SCTP and UDP-Lite packets that are not fragments, the ports. No seed and no
/// state, so every worker and every packet of a flow agree (one TCP connection stays on
/// one tunnel and is not reordered). Fragments hash without ports: all fragments of a
/// datagram take the same tunnel. Short or odd packets hash what they have.
#[inline]
pub(crate) fn flow_hash(pkt: &[u8]) -> u32 {
    let addrs = match pkt.get(12..20) {
        Some(&[a, b, c, d, e, f, g, h]) => u64::from_be_bytes([a, b, c, d, e, f, g, h]),
        _ => 0,
    };
    let proto = pkt.get(9).copied().unwrap_or(0);
    let ihl = usize::from(pkt.first().copied().unwrap_or(0) & 0x0f) * 4;
    // RFC 791: More Fragments bit and fragment offset.
    let fragment = pkt
        .get(6..8)
        .is_some_and(|f| u16::from_be_bytes([f[0], f[1]]) & 0x3fff != 0);
    let ports = match (proto, fragment) {
        // TCP, UDP, UDP-Lite, SCTP: source and destination port first.
        (6 | 17 | 132 | 136, false) => match pkt.get(ihl..ihl + 4) {
            Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
            _ => 0,
        },
        _ => 0,
    };
    let h = mix64(addrs ^ mix64((u64::from(ports) << 8) | u64::from(proto)));
    (h >> 32) as u32 ^ h as u32
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
#[inline]
fn mix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The tunnel of connection `conn` that carries its traffic: tunnel 1 while it has an
/// outbound SA, else tunnel 2 (active/standby, DESIGN.md); a tunnel withdrawn by the
/// health check (switch_route) is skipped.
#[inline]
fn active_tunnel(
    conns: &[ConnFwd],
    sadb: &mut SaDbCache<TunnelKey>,
    conn: u32,
) -> Option<TunnelKey> {
    let c = conns.get(conn as usize)?;
    c.tunnels
        .iter()
        .enumerate()
        .find(|(i, k)| {
            !c.health
                .get(*i)
                .and_then(Option::as_ref)
                .is_some_and(|s| s.withdrawn())
                && sadb.outbound(k).is_some()
        })
        .map(|(_, k)| *k)
}

/// What to do with a packet after its decapsulation: the inner packet to the TUN device.
#[inline]
fn delivered(r: Result<Decapsulated, EspError>, pkt: &mut PacketBuf) -> Action {
    match r {
        Ok(Decapsulated::Packet { inner, .. }) => {
            let head = pkt.head();
            match pkt.set_range(head + inner.start, inner.len()) {
                Ok(()) => Action::ToTun,
                Err(_) => Action::Drop(DropReason::Malformed),
            }
        }
        Ok(Decapsulated::Dummy) => Action::Drop(DropReason::Other),
        Err(e) => Action::Drop(drop_reason(e)),
    }
}

fn drop_reason(e: EspError) -> DropReason {
    match e {
        EspError::AuthFailed => DropReason::AuthFailed,
        EspError::Replayed { .. } | EspError::TooOld { .. } => DropReason::Replay,
        EspError::SelectorMismatch => DropReason::Policy,
        EspError::HardExpired | EspError::SequenceExhausted | EspError::WrongSpi { .. } => {
            DropReason::NoSa
        }
        _ => DropReason::Malformed,
    }
}

/// Whether connection `conn`'s tunnel `key` is the one carrying its traffic now (the
/// rule of [`active_tunnel`]; `withdrawn` says which tunnels the health check withdrew).
pub(crate) fn carries_traffic(
    sadb: &SaDb<TunnelKey>,
    tunnels: &[TunnelKey],
    withdrawn: impl Fn(TunnelKey) -> bool,
    key: TunnelKey,
) -> bool {
    tunnels
        .iter()
        .copied()
        .find(|k| !withdrawn(*k) && sadb.outbound(k).is_some())
        == Some(key)
}

/// The data plane's counters as `GET /metrics` lines: packets per path, the UDP and TUN
/// offload counts (is GSO/GRO in use?) and drops by reason.
pub(crate) fn render_dataplane(t: &dataplane::Snapshot, out: &mut String) {
    use std::fmt::Write;
    let name = "vpngw_dataplane_packets_total";
    let _ = writeln!(
        out,
        "# HELP {name} Packets the data plane moved, by path (esp: raw IP protocol 50).\n# TYPE {name} counter"
    );
    for (path, f) in [
        ("tun_rx", t.tun_rx),
        ("tun_tx", t.tun_tx),
        ("udp_rx", t.udp_rx),
        ("udp_tx", t.udp_tx),
        ("esp_rx", t.esp_rx),
        ("esp_tx", t.esp_tx),
    ] {
        let _ = writeln!(out, "{name}{{path=\"{path}\"}} {}", f.packets);
    }
    crate::health::write_counters(
        out,
        &[
            (
                "vpngw_dataplane_udp_gso_sends_total",
                "UDP messages sent with GSO (more than one ESP-in-UDP datagram each).",
                t.udp_gso_sends,
            ),
            (
                "vpngw_dataplane_udp_gro_reads_total",
                "UDP messages received coalesced by GRO (more than one datagram each).",
                t.udp_gro_reads,
            ),
            (
                "vpngw_dataplane_udp_gso_disabled_total",
                "Sockets on which the kernel refused UDP GSO (sending unsegmented since).",
                t.udp_gso_disabled,
            ),
            (
                "vpngw_dataplane_tun_gso_reads_total",
                "TSO super-packets read from the TUN device.",
                t.tun_gso_reads,
            ),
            (
                "vpngw_dataplane_tun_gro_writes_total",
                "Coalesced writes to the TUN device.",
                t.tun_gro_writes,
            ),
            (
                "vpngw_dataplane_rx_copied_total",
                "Received packets copied into their buffer (the others were read in place).",
                t.rx_copied,
            ),
        ],
    );
    let name = "vpngw_dataplane_drops_total";
    let _ = writeln!(
        out,
        "# HELP {name} Packets the data plane dropped, by reason.\n# TYPE {name} counter"
    );
    for r in DropReason::ALL {
        let _ = writeln!(out, "{name}{{reason=\"{}\"}} {}", r.name(), t.dropped(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::tests::outbound;

    #[test]
    fn dataplane_metrics_lines() {
        let mut t = dataplane::Snapshot::default();
        t.udp_tx.packets = 90;
        t.udp_gso_sends = 2;
        t.udp_gro_reads = 3;
        t.drops[DropReason::Replay as usize] = 4;
        let mut out = String::new();
        render_dataplane(&t, &mut out);
        for line in [
            "vpngw_dataplane_packets_total{path=\"udp_tx\"} 90",
            "vpngw_dataplane_packets_total{path=\"esp_tx\"} 0",
            "vpngw_dataplane_udp_gso_sends_total 2",
            "vpngw_dataplane_udp_gro_reads_total 3",
            "vpngw_dataplane_udp_gso_disabled_total 0",
            "vpngw_dataplane_drops_total{reason=\"replay\"} 4",
            "# TYPE vpngw_dataplane_drops_total counter",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
    }

    /// 10.2.0.0/24 → connection 0 (weight 100, two tunnels: keys 1 and 2), standby
    /// connection 1 (one tunnel: key 3); connection 0 has a health check on both tunnels.
    fn fwd(slots: &[Arc<Slot>; 2]) -> Fwd {
        let mut routes = RouteTable::new();
        routes.insert("10.2.0.0/24".parse().unwrap(), 0);
        Fwd {
            routes,
            targets: vec![[0, 1]],
            conns: vec![
                ConnFwd {
                    tunnels: vec![1, 2],
                    health: slots.iter().cloned().map(Some).collect(),
                    trigger: Arc::default(),
                },
                ConnFwd {
                    tunnels: vec![3],
                    health: vec![None],
                    trigger: Arc::default(),
                },
            ],
            ..Fwd::default()
        }
    }

    fn tunnel(fwd: &Fwd, sadb: &SaDb<TunnelKey>) -> Option<TunnelKey> {
        let mut cache = sadb.cache();
        match route(
            fwd,
            &BgpFwd::default(),
            &mut cache,
            Ipv4Addr::new(172, 16, 1, 10),
            Ipv4Addr::new(10, 2, 0, 1),
            &[],
        ) {
            Routed::Tunnel(k) => Some(k),
            _ => None,
        }
    }

    /// The packet path follows the route table's health rule: a withdrawn tunnel is
    /// skipped, the connection's other tunnel carries, and with none left the prefix's
    /// standby connection does; restored tunnels take the traffic back.
    #[test]
    fn health_withdrawn_tunnels_are_skipped() {
        let slots = [Slot::for_test(1, false), Slot::for_test(2, false)];
        let f = fwd(&slots);
        let sadb = SaDb::new();
        for k in 1..=3 {
            sadb.set_outbound(k, outbound(0x100 + k as u32));
        }
        assert_eq!(tunnel(&f, &sadb), Some(1));
        slots[0].set_withdrawn(true);
        assert_eq!(
            tunnel(&f, &sadb),
            Some(2),
            "tunnel 2 of the same connection"
        );
        assert!(carries_traffic(&sadb, &[1, 2], |k| k == 1, 2));
        slots[1].set_withdrawn(true);
        assert_eq!(tunnel(&f, &sadb), Some(3), "the standby connection");
        // No standby tunnel either: dropped as unroutable, not a negotiation trigger.
        sadb.remove_outbound(&3);
        let mut cache = sadb.cache();
        assert!(matches!(
            route(
                &f,
                &BgpFwd::default(),
                &mut cache,
                Ipv4Addr::new(172, 16, 1, 10),
                Ipv4Addr::new(10, 2, 0, 1),
                &[],
            ),
            Routed::Drop(DropReason::NoRoute)
        ));
        sadb.set_outbound(3, outbound(0x103));
        slots[0].set_withdrawn(false);
        assert_eq!(tunnel(&f, &sadb), Some(1), "restored");
    }

    /// An IPv4 packet 172.16.1.10 → 10.2.0.1 with a TCP (or other `proto`) header.
    fn packet(proto: u8, sport: u16, dport: u16, id: u16, ttl: u8, payload: u8) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 44];
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&[0, 0, ttl, proto, 0, 0, 172, 16, 1, 10, 10, 2, 0, 1]);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[payload; 20]);
        p
    }

    /// 10.2.0.0/24 learned over BGP on both tunnels (keys 1 and 2) of one connection; a
    /// static route of the same prefix through another connection (tunnel key 3).
    fn bgp_fwd(ecmp: bool, override_static: bool) -> (Fwd, BgpFwd) {
        let mut routes = RouteTable::new();
        routes.insert("10.2.0.0/24".parse().unwrap(), 0);
        let fwd = Fwd {
            routes,
            targets: vec![[0, NONE]],
            conns: vec![ConnFwd {
                tunnels: vec![3],
                health: vec![None],
                trigger: Arc::default(),
            }],
            ..Fwd::default()
        };
        let mut bgp = BgpFwd::default();
        bgp.routes.insert("10.2.0.0/24".parse().unwrap(), 0);
        bgp.targets.push(BgpTarget {
            tunnels: [Some(1), Some(2)],
            ecmp,
            override_static,
        });
        (fwd, bgp)
    }

    fn via(fwd: &Fwd, bgp: &BgpFwd, sadb: &SaDb<TunnelKey>, pkt: &[u8]) -> Option<TunnelKey> {
        let mut cache = sadb.cache();
        match route(
            fwd,
            bgp,
            &mut cache,
            Ipv4Addr::new(172, 16, 1, 10),
            Ipv4Addr::new(10, 2, 0, 1),
            pkt,
        ) {
            Routed::Tunnel(k) => Some(k),
            _ => None,
        }
    }

    /// bgp_ecmp: flows are spread over both tunnels, each flow always on the same one;
    /// with one tunnel's SA gone every flow uses the other; off, tunnel 1 carries all.
    #[test]
    fn ecmp_spreads_flows_over_both_tunnels_and_keeps_each_flow_on_one() {
        let sadb = SaDb::new();
        for k in 1..=3 {
            sadb.set_outbound(k, outbound(0x200 + k as u32));
        }
        let (fwd, bgp) = bgp_fwd(true, true);
        let mut per_tunnel = [0u32; 3];
        for sport in 40_000..40_400u16 {
            let first = via(&fwd, &bgp, &sadb, &packet(6, sport, 443, 1, 64, 0)).unwrap();
            // Every packet of the flow: other IP ID, TTL and payload, same tunnel.
            for (id, ttl, payload) in [(2, 63, 7), (999, 1, 255)] {
                let again = via(&fwd, &bgp, &sadb, &packet(6, sport, 443, id, ttl, payload));
                assert_eq!(again, Some(first), "flow {sport} moved");
            }
            per_tunnel[first as usize - 1] += 1;
        }
        assert_eq!(per_tunnel[2], 0, "the static route lost to the BGP route");
        assert!(
            per_tunnel[0] > 140 && per_tunnel[1] > 140,
            "400 flows spread {per_tunnel:?}"
        );
        // Tunnel 2 down: everything on tunnel 1; tunnel 1 down: everything on 2.
        sadb.remove_outbound(&2);
        for sport in 40_000..40_050u16 {
            assert_eq!(
                via(&fwd, &bgp, &sadb, &packet(17, sport, 53, 1, 64, 0)),
                Some(1)
            );
        }
        sadb.set_outbound(2, outbound(0x302));
        sadb.remove_outbound(&1);
        for sport in 40_000..40_050u16 {
            assert_eq!(
                via(&fwd, &bgp, &sadb, &packet(17, sport, 53, 1, 64, 0)),
                Some(2)
            );
        }
        // ECMP off: tunnel 1 preferred for every flow.
        sadb.set_outbound(1, outbound(0x301));
        let (fwd, bgp) = bgp_fwd(false, true);
        for sport in 40_000..40_050u16 {
            assert_eq!(
                via(&fwd, &bgp, &sadb, &packet(6, sport, 443, 1, 64, 0)),
                Some(1)
            );
        }
    }

    /// Without bgp_override_static the static route of the same prefix wins.
    #[test]
    fn static_route_wins_unless_bgp_override_static() {
        let sadb = SaDb::new();
        for k in 1..=3 {
            sadb.set_outbound(k, outbound(0x400 + k as u32));
        }
        let pkt = packet(6, 1234, 80, 1, 64, 0);
        let (fwd, bgp) = bgp_fwd(true, false);
        assert_eq!(via(&fwd, &bgp, &sadb, &pkt), Some(3));
        let (fwd, bgp) = bgp_fwd(false, true);
        assert_eq!(via(&fwd, &bgp, &sadb, &pkt), Some(1));
    }

    /// The flow hash reads only the 5-tuple, ignores ports of fragments and never panics
    /// on short input.
    #[test]
    fn flow_hash_is_the_5_tuple() {
        let a = packet(6, 1000, 80, 1, 64, 0);
        assert_eq!(flow_hash(&a), flow_hash(&packet(6, 1000, 80, 77, 9, 3)));
        assert_ne!(flow_hash(&a), flow_hash(&packet(6, 1001, 80, 1, 64, 0)));
        assert_ne!(flow_hash(&a), flow_hash(&packet(17, 1000, 80, 1, 64, 0)));
        // ICMP has no ports: only addresses and protocol count.
        assert_eq!(
            flow_hash(&packet(1, 1, 2, 1, 64, 0)),
            flow_hash(&packet(1, 3, 4, 1, 64, 0))
        );
        // A fragment (More Fragments set, or an offset) hashes without ports, like the
        // later fragments of its datagram that have none.
        let mut frag = packet(17, 1000, 80, 1, 64, 0);
        frag[6] = 0x20;
        let mut later = packet(17, 5555, 6666, 1, 64, 0);
        later[7] = 0xb9;
        assert_eq!(flow_hash(&frag), flow_hash(&later));
        for n in 0..a.len() {
            let _ = flow_hash(&a[..n]);
        }
    }
}
