//! A vpngw gateway node: real IPsec tunnels driven by the desired state in the store.
//!
//! [`Node::start`] brings up the data plane (a multi-queue TUN device, UDP sockets on
//! 500/4500 and a raw ESP socket, all bound to the wildcard address so every gateway
//! IPsec address of the host is served; `IP_PKTINFO` tells which one a packet was for)
//! and three pieces that run until [`NodeHandle::shutdown`]:
//!
//! - the **reconciler** (a tokio task): on start, on every change notification and every
//!   [`RESYNC_INTERVAL`], it reads the whole desired state from the [`Store`] (gateways,
//!   customer gateways, connections with tunnels, routes, policy routes), sets each
//!   gateway's status (`running`, or `error` with `status_reason` when an IPsec address
//!   is not on this host) and hands the control thread a fresh desired state;
//! - the **control thread** (a std thread, see `control.rs`): owns the sans-IO
//!   [`ike::Endpoint`]; converges IKE peers (add, update → renegotiate, remove →
//!   INFORMATIONAL Delete), ESP SAs (make-before-break on rekey), kernel routes into the
//!   TUN device (never a default route), the forwarding snapshot of the workers, and
//!   writes tunnel status and connection log entries; retries failed negotiations
//!   ([`QUICK_TRIES`] tries, then every [`SLOW_RETRY`]);
//! - the **writer** (a tokio task): writes what the control thread observed to the store,
//!   in order.
//!
//! The data plane workers run the node's ESP handler (see `fwd.rs`): TUN → policy route,
//! then longest-prefix route → connection → active tunnel (tunnel 1 while it has an
//! outbound SA, else tunnel 2) → ESP in place → UDP 4500 or raw ESP as the SA says; UDP
//! 500 and marked UDP 4500 → control thread; ESP → SPI lookup → decapsulate → TUN. No
//! lock and no allocation per packet.
//!
//! Keys and pre-shared keys never reach logs, status or `Debug` output.

mod bgp;
mod control;
mod desired;
mod dhpool;
mod fwd;
mod health;
mod ikestats;
#[cfg(test)]
mod no_alloc_tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use dataplane::{Config as DpConfig, Dataplane, TunConfig};
use model::{GatewayStatus, VpnGateway};
use store::{ListQuery, Store};
use tokio::sync::{Notify, mpsc, oneshot, watch};

pub use control::{QUICK_RETRY, QUICK_TRIES, SLOW_RETRY, STATUS_INTERVAL};
pub use health::NodeMetrics;
pub use ike::EspEncap;

use crate::control::{Control, Input, Ports, StoreWrite};
use crate::fwd::{EspHandler, Fwd};

/// How often the reconciler re-reads the store even without a change notification.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// Capacity of the control thread's input channel.
const INPUT_CAPACITY: usize = 4096;

/// How a node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Name of the TUN device the node creates (at most 15 bytes).
    pub tun_name: String,
    /// Data plane worker threads; 0 means one per core.
    pub workers: usize,
    /// MTU of the TUN device: the largest inner packet; ESP in UDP adds up to 73 bytes
    /// (UDP 8, ESP 8, IV 16, padding 15, trailer 2, ICV 24+) to it.
    pub tun_mtu: u32,
    /// IKE port (500).
    pub ike_port: u16,
    /// NAT-T port for IKE and ESP in UDP (4500).
    pub natt_port: u16,
    /// Also receive and send ESP as IP protocol 50 (peers not using UDP encapsulation).
    pub raw_esp: bool,
    /// TUN offloads (`IFF_VNET_HDR`, TSO/checksum): the data plane reads TCP
    /// super-packets and writes coalesced segments (dataplane's `offload` module).
    pub tun_offloads: bool,
    /// Raw ESP or ESP in UDP without a NAT (IKEv2; `vpngw serve --esp-encap`): `Auto`
    /// uses UDP between two vpngw (vendor ID, forced NAT detection), which the data
    /// plane sends with UDP GSO and receives with UDP GRO.
    pub esp_encap: ike::EspEncap,
    /// Half-open IKE SAs from which on an IKE_SA_INIT must return a COOKIE first
    /// (`vpngw serve --ike-cookie-threshold`; RFC 7296 §2.6, see
    /// [`ike::EndpointConfig::cookie_threshold`]).
    pub ike_cookie_threshold: usize,
    /// Half-open responder IKE SAs (both versions) from which on a request that would
    /// start another negotiation is dropped (`vpngw serve --ike-half-open-limit`; see
    /// [`ike::EndpointConfig::half_open_limit`]).
    pub ike_half_open_limit: usize,
    /// Of those, IKEv1 ones from one address (`vpngw serve
    /// --ike-half-open-per-address`; see [`ike::EndpointConfig::half_open_per_address`]).
    pub ike_half_open_per_address: usize,
    /// How long a Child SA behind a NAT may send nothing before the node sends a
    /// NAT-keepalive (RFC 3948 §2.3) to keep the NAT's mapping; zero: never (`vpngw
    /// serve --nat-keepalive`; strongSwan's charon.keep_alive, 20 s).
    pub nat_keepalive: std::time::Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            tun_name: "vpngw0".into(),
            workers: 0,
            tun_mtu: 1400,
            ike_port: 500,
            natt_port: 4500,
            raw_esp: true,
            tun_offloads: true,
            esp_encap: ike::EspEncap::Auto,
            ike_cookie_threshold: ike::EndpointConfig::default().cookie_threshold,
            ike_half_open_limit: ike::EndpointConfig::default().half_open_limit,
            ike_half_open_per_address: ike::EndpointConfig::default().half_open_per_address,
            nat_keepalive: std::time::Duration::from_secs(20),
        }
    }
}

/// Why a node could not start or could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data plane (TUN device, sockets) could not start: not root, no /dev/net/tun,
    /// port in use...
    #[error("data plane: {0}")]
    Dataplane(#[from] dataplane::DataplaneError),
    /// A thread could not be spawned.
    #[error("spawning {what}: {source}")]
    Spawn {
        what: &'static str,
        source: std::io::Error,
    },
    /// Not called from inside a tokio runtime.
    #[error("the node must be started from inside a tokio runtime")]
    NoRuntime,
    /// The node has stopped.
    #[error("the gateway node is not running")]
    Stopped,
    /// A command was refused (unknown tunnel, tunnel that cannot run here...).
    #[error("{0}")]
    Refused(String),
}

/// The gateway node.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Starts the data plane, the control thread, the reconciler and the store writer.
    /// Must be called from inside a tokio runtime (the tasks run on it). `changes` is any
    /// watch channel whose value changes when the desired state may have changed.
    pub async fn start<T: Send + Sync + 'static>(
        config: NodeConfig,
        store: Arc<dyn Store>,
        changes: watch::Receiver<T>,
    ) -> Result<NodeHandle, NodeError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| NodeError::NoRuntime)?;
        let (input_tx, input_rx) = sync_channel::<Input>(INPUT_CAPACITY);
        let fwd = Arc::new(ArcSwap::from_pointee(Fwd::default()));
        let sadb = Arc::new(esp::SaDb::new());
        let bgp_shared = Arc::new(bgp::BgpShared::default());
        let handler = Arc::new(EspHandler {
            fwd: Arc::clone(&fwd),
            bgp: Arc::clone(&bgp_shared.fwd),
            sadb: Arc::clone(&sadb),
            wake: input_tx.clone(),
            ike_port: config.ike_port,
            natt_port: config.natt_port,
        });
        let mut dp_config = DpConfig::new(TunConfig {
            mtu: Some(config.tun_mtu),
            vnet_hdr: config.tun_offloads,
            ..TunConfig::new(config.tun_name.clone())
        });
        dp_config.workers = config.workers;
        dp_config.udp = vec![
            control::any(config.ike_port),
            control::any(config.natt_port),
        ];
        dp_config.esp = config.raw_esp.then_some(std::net::Ipv4Addr::UNSPECIFIED);
        let mut dp = Dataplane::start(dp_config, handler)?;
        let ike_stats: ikestats::SharedIkeStats = Arc::default();
        let metrics = NodeMetrics {
            fwd: Arc::clone(&fwd),
            dataplane: dp.counter_reader(),
            ike: Arc::clone(&ike_stats),
        };
        let packets = dp.take_control().ok_or(NodeError::Stopped)?;

        // The data plane's control channel → the control thread's input channel.
        let fwd_tx = input_tx.clone();
        std::thread::Builder::new()
            .name("node-ike-rx".into())
            .spawn(move || {
                while let Ok(p) = packets.recv() {
                    if fwd_tx.send(Input::Packet(p)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|source| NodeError::Spawn {
                what: "IKE receive thread",
                source,
            })?;

        let (writes_tx, writes_rx) = mpsc::unbounded_channel();
        let ports = Ports {
            natt: config.natt_port,
            nat_keepalive: config.nat_keepalive,
        };
        let (bgp_tx, bgp_rx) = watch::channel(Vec::new());
        rt.spawn(bgp::run(
            Arc::clone(&bgp_shared),
            bgp_rx,
            Arc::clone(&fwd),
            Arc::clone(&sadb),
            config.tun_name.clone(),
            Arc::clone(&store),
        ));
        let dh_tx = input_tx.clone();
        let control_thread = std::thread::Builder::new()
            .name("node-control".into())
            .spawn(move || {
                // The endpoint (and its RNG) lives on this thread only.
                let ike_config = ike::EndpointConfig {
                    esp_encap: config.esp_encap,
                    cookie_threshold: config.ike_cookie_threshold,
                    half_open_limit: config.ike_half_open_limit,
                    half_open_per_address: config.ike_half_open_per_address,
                    ..ike::EndpointConfig::default()
                };
                let mut endpoint = ike::Endpoint::new(ike_config, Box::new(crypto::OsRandom));
                let pool = dhpool::DhPool::new(dhpool::DEPTH);
                let top_up = pool.top_up();
                endpoint.set_key_source(Box::new(pool));
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                let deliver = move |d: ike::DhDone| dh_tx.send(Input::DhDone(d)).is_ok();
                match dhpool::DhWorkers::start(cores, deliver, top_up) {
                    Some(w) => endpoint.set_dh_offload(Box::new(w)),
                    None => tracing::warn!(
                        "no DH worker threads; shared secrets are computed on the control thread"
                    ),
                }
                Control::new(endpoint, dp, ports, fwd, sadb, writes_tx, ike_stats).run(input_rx);
            })
            .map_err(|source| NodeError::Spawn {
                what: "control thread",
                source,
            })?;

        let stop = Arc::new(Notify::new());
        let writer = rt.spawn(write_loop(Arc::clone(&store), writes_rx, bgp_shared));
        let reconciler = rt.spawn(reconcile_loop(
            store,
            changes,
            input_tx.clone(),
            bgp_tx,
            Arc::clone(&stop),
        ));
        tracing::info!(tun = %config.tun_name, "gateway node started");
        Ok(NodeHandle {
            input: input_tx,
            control_thread: Some(control_thread),
            reconciler,
            writer,
            stop,
            metrics,
        })
    }

    /// For a controller whose node could not start: keeps every gateway in status
    /// `error` with `reason` (re-applied on every change), so operators see why nothing
    /// negotiates. Runs until the change channel closes.
    pub fn report_unavailable<T: Send + Sync + 'static>(
        store: Arc<dyn Store>,
        mut changes: watch::Receiver<T>,
        reason: String,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match list_all_gateways(&*store).await {
                    Ok(gws) => {
                        for g in gws {
                            if g.status == GatewayStatus::Deleting
                                || (g.status == GatewayStatus::Error
                                    && g.status_reason.as_deref() == Some(reason.as_str()))
                            {
                                continue;
                            }
                            if let Err(e) = store
                                .set_gateway_status(
                                    &g.id,
                                    GatewayStatus::Error,
                                    Some(reason.clone()),
                                )
                                .await
                            {
                                tracing::warn!(error = %e, gateway = g.id, "set gateway status");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "listing gateways"),
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(RESYNC_INTERVAL) => {}
                }
            }
        })
    }
}

/// A running node. Dropping it stops the node too (without waiting).
#[derive(Debug)]
pub struct NodeHandle {
    input: SyncSender<Input>,
    control_thread: Option<JoinHandle<()>>,
    reconciler: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
    stop: Arc<Notify>,
    metrics: NodeMetrics,
}

/// A cloneable way to send commands to a running node (for the API's reset endpoint).
#[derive(Debug, Clone)]
pub struct NodeCommands {
    input: SyncSender<Input>,
}

impl NodeCommands {
    /// `POST …/tunnels/{id}/reset`: deletes the tunnel's SAs (INFORMATIONAL Delete) and
    /// renegotiates (or waits for the peer when it cannot initiate).
    pub async fn reset_tunnel(&self, tunnel_id: &str) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        let input = self.input.clone();
        let tunnel_id = tunnel_id.to_string();
        // A bounded std channel: send from a blocking-capable thread.
        tokio::task::spawn_blocking(move || input.send(Input::Reset { tunnel_id, reply }))
            .await
            .map_err(|_| NodeError::Stopped)?
            .map_err(|_| NodeError::Stopped)?;
        rx.await
            .map_err(|_| NodeError::Stopped)?
            .map_err(NodeError::Refused)
    }
}

#[cfg(feature = "api")]
impl api::NodeControl for NodeCommands {
    fn reset_tunnel(&self, tunnel_id: String) -> api::NodeFuture {
        let commands = self.clone();
        Box::pin(async move {
            commands
                .reset_tunnel(&tunnel_id)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

impl NodeHandle {
    pub fn commands(&self) -> NodeCommands {
        NodeCommands {
            input: self.input.clone(),
        }
    }

    /// The node's `/metrics` lines (health-check probes, data plane and IKE engine
    /// counters).
    pub fn metrics(&self) -> NodeMetrics {
        self.metrics.clone()
    }

    /// See [`NodeCommands::reset_tunnel`].
    pub async fn reset_tunnel(&self, tunnel_id: &str) -> Result<(), NodeError> {
        self.commands().reset_tunnel(tunnel_id).await
    }

    /// Deletes every SA (telling the peers), removes the kernel routes, stops the data
    /// plane and waits for the control thread.
    pub async fn shutdown(mut self) {
        self.stop.notify_one();
        let _ = self.input.try_send(Input::Shutdown);
        if let Some(t) = self.control_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        // Let the writer store the final statuses (bounded).
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.writer).await;
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.stop.notify_one();
        self.reconciler.abort();
        let _ = self.input.try_send(Input::Shutdown);
    }
}

/// glibc's malloc raises its mmap threshold to the size of each large block freed (up
/// to 32 MiB, `mallopt(3)`); from then on transient buffers of up to that size (the
/// forwarding snapshot and route tables rebuilt as tunnels come up, store pages) are
/// carved from the heap arenas, whose free space stays resident. A fixed threshold keeps
/// large blocks mmapped, returned to the kernel when freed: with 10,000 tunnels the
/// responder grew by 7.1 KiB per tunnel instead of 8.0–8.3 (issue 8).
///
/// A process-wide setting, so the program that runs the node calls it (`vpngw serve`
/// does, before [`Node::start`]); a library does not change its host's allocator.
pub fn fix_malloc_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets an allocator parameter; M_MMAP_THRESHOLD with a value
    // below its 32 MiB maximum is valid at any time and from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Most observations written in one store transaction.
const WRITE_BATCH: usize = 512;

/// Writes observed state to the store in the order the control thread produced it, with
/// each tunnel's BGP status (`status.bgp`, from the BGP task) filled in; a BGP status
/// change rewrites the tunnel's stored status with the new `bgp`. What has queued up
/// meanwhile goes in one batch ([`Store::record_observed`]: one transaction): a commit
/// per write held the writer, and the store's lock, behind while 10,000 tunnels came up
/// (issue 8).
async fn write_loop(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<StoreWrite>,
    bgp: Arc<bgp::BgpShared>,
) {
    let mut written = BgpWritten::default();
    loop {
        let mut batch = Vec::new();
        let w = tokio::select! {
            w = rx.recv() => match w {
                Some(w) => w,
                None => return,
            },
            () = bgp.changed.notified() => {
                // Every earlier batch is in the store (`write` is awaited), so the stored
                // status is the last one written: only its `bgp` changes.
                for (id, b) in written.changes(|id| bgp.status(id)) {
                    match stored_status(&*store, &id).await {
                        Some(mut status) => {
                            status.bgp = b;
                            batch.push(store::Observed::TunnelStatus { tunnel_id: id, status });
                        }
                        None => written.forget(&id),
                    }
                }
                write(&*store, &batch).await;
                continue;
            }
        };
        batch.push(observed(w, &bgp, &mut written));
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(observed(w, &bgp, &mut written)),
                Err(_) => break,
            }
        }
        write(&*store, &batch).await;
    }
}

/// What the writer remembers of the statuses it wrote: which tunnels have one, and the
/// `bgp` part of those that run BGP. Not the whole status: a copy of every tunnel's
/// `TunnelStatus` was ~0.8 KiB per tunnel (issue 8); the store has it when BGP changes.
#[derive(Default)]
struct BgpWritten {
    tunnels: std::collections::HashSet<String>,
    bgp: HashMap<String, model::BgpStatus>,
}

impl BgpWritten {
    /// Notes a status written for `id` with `bgp`.
    fn wrote(&mut self, id: &str, bgp: Option<&model::BgpStatus>) {
        if !self.tunnels.contains(id) {
            self.tunnels.insert(id.to_string());
        }
        match bgp {
            Some(b) => {
                self.bgp.insert(id.to_string(), b.clone());
            }
            None => {
                self.bgp.remove(id);
            }
        }
    }

    /// The tunnels whose BGP status (`current`) differs from the one last written, with
    /// the new one; each counts as written from now on.
    fn changes(
        &mut self,
        current: impl Fn(&str) -> Option<model::BgpStatus>,
    ) -> Vec<(String, Option<model::BgpStatus>)> {
        let changed: Vec<_> = self
            .tunnels
            .iter()
            .filter_map(|id| {
                let b = current(id);
                (b.as_ref() != self.bgp.get(id)).then(|| (id.clone(), b))
            })
            .collect();
        for (id, b) in &changed {
            self.wrote(id, b.as_ref());
        }
        changed
    }

    /// The tunnel is gone from the store.
    fn forget(&mut self, id: &str) {
        self.tunnels.remove(id);
        self.bgp.remove(id);
    }
}

/// The tunnel's status as stored; `None` when the tunnel is gone (or unreadable: logged).
async fn stored_status(store: &dyn Store, tunnel_id: &str) -> Option<model::TunnelStatus> {
    match store.tunnel_connection(tunnel_id).await {
        Ok(c) => c
            .tunnels
            .into_iter()
            .find(|t| t.id == tunnel_id)
            .map(|t| t.status),
        Err(store::StoreError::NotFound { .. }) => None,
        Err(e) => {
            tracing::warn!(error = %e, tunnel_id, "reading a tunnel's status for its BGP status");
            None
        }
    }
}

fn observed(w: StoreWrite, bgp: &bgp::BgpShared, written: &mut BgpWritten) -> store::Observed {
    match w {
        StoreWrite::Status {
            tunnel_id,
            mut status,
        } => {
            status.bgp = bgp.status(&tunnel_id);
            written.wrote(&tunnel_id, status.bgp.as_ref());
            store::Observed::TunnelStatus { tunnel_id, status }
        }
        StoreWrite::Log {
            connection_id,
            entry,
        } => store::Observed::Log {
            connection_id,
            entry,
        },
    }
}

async fn write(store: &dyn Store, batch: &[store::Observed]) {
    if batch.is_empty() {
        return;
    }
    for r in store.record_observed(batch).await {
        match r {
            Ok(()) => {}
            // The resource was deleted meanwhile: nothing to report on.
            Err(store::StoreError::NotFound { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "writing observed state"),
        }
    }
}

async fn reconcile_loop<T: Send + Sync + 'static>(
    store: Arc<dyn Store>,
    mut changes: watch::Receiver<T>,
    input: SyncSender<Input>,
    bgp: watch::Sender<Vec<bgp::BgpSpec>>,
    stop: Arc<Notify>,
) {
    let mut watching = true;
    loop {
        match load(&*store).await {
            Ok((d, connections, specs)) => {
                bgp.send_if_modified(|s| {
                    let changed = *s != specs;
                    *s = specs;
                    changed
                });
                let input = input.clone();
                let sent =
                    tokio::task::spawn_blocking(move || input.send(Input::Desired(Box::new(d))))
                        .await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
                applied(&*store, &connections).await;
            }
            Err(e) => tracing::warn!(error = %e, "reading the desired state"),
        }
        tokio::select! {
            r = changes.changed(), if watching => {
                if r.is_err() {
                    watching = false;
                }
            }
            () = tokio::time::sleep(RESYNC_INTERVAL) => {}
            () = stop.notified() => return,
        }
    }
}

/// Marks connections and tunnels whose configuration the node has taken on as
/// `running` / `active` (the API leaves them `creating` / `updating`).
async fn applied(store: &dyn Store, connections: &[model::VpnConnection]) {
    use model::{ConnectionStatus, TunnelState};
    for c in connections {
        if matches!(
            c.status,
            ConnectionStatus::Creating | ConnectionStatus::Updating
        ) && let Err(e) = store
            .set_connection_status(&c.id, ConnectionStatus::Running)
            .await
        {
            tracing::debug!(error = %e, connection = c.id, "set connection status");
        }
        for t in c
            .tunnels
            .iter()
            .filter(|t| t.state == TunnelState::Updating)
        {
            if let Err(e) = store.set_tunnel_state(&t.id, TunnelState::Active).await {
                tracing::debug!(error = %e, tunnel = t.id, "set tunnel state");
            }
        }
    }
}

/// Reads the whole desired state and sets the gateways' status.
async fn load(
    store: &dyn Store,
) -> Result<
    (
        desired::Desired,
        Vec<model::VpnConnection>,
        Vec<bgp::BgpSpec>,
    ),
    store::StoreError,
> {
    let gateways = list_all_gateways(store).await?;
    let customer_gateways =
        list_all(|q| async move { store.list_customer_gateways(&q).await }).await?;
    let connections = list_all(|q| async move { store.list_connections(&q).await }).await?;
    let mut routes = HashMap::new();
    let mut policy_routes = HashMap::new();
    for g in &gateways {
        routes.insert(g.id.clone(), store.routes(&g.id).await?);
        policy_routes.insert(g.id.clone(), store.policy_routes(&g.id).await?);
        gateway_status(store, g).await;
    }
    let d = desired::build(
        &gateways,
        &customer_gateways,
        &connections,
        &routes,
        &policy_routes,
        &address_usable,
    );
    let specs = bgp::specs(&gateways, &customer_gateways, &connections);
    Ok((d, connections, specs))
}

async fn gateway_status(store: &dyn Store, g: &VpnGateway) {
    if g.status == GatewayStatus::Deleting {
        return;
    }
    let problems: Vec<String> = g
        .ipsec_addresses
        .iter()
        .filter_map(|a| address_usable(*a).err())
        .collect();
    let (status, reason) = if problems.is_empty() {
        (GatewayStatus::Running, None)
    } else {
        (GatewayStatus::Error, Some(problems.join("; ")))
    };
    if (g.status != status || g.status_reason != reason)
        && let Err(e) = store.set_gateway_status(&g.id, status, reason).await
    {
        tracing::warn!(error = %e, gateway = g.id, "set gateway status");
    }
}

/// Whether this host can send and receive IKE on `addr`: it must be one of its
/// addresses (binding a UDP socket to it tells, without side effects).
fn address_usable(addr: IpAddr) -> Result<(), String> {
    if addr.is_ipv6() {
        return Err(format!(
            "IPsec address {addr} is IPv6, which this node does not support yet"
        ));
    }
    match std::net::UdpSocket::bind(SocketAddr::new(addr, 0)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Err(format!(
            "IPsec address {addr} is not configured on this node: add it to an interface"
        )),
        Err(e) => Err(format!("IPsec address {addr} cannot be used: {e}")),
    }
}

async fn list_all_gateways(store: &dyn Store) -> Result<Vec<VpnGateway>, store::StoreError> {
    list_all(|q| async move { store.list_gateways(&q).await }).await
}

async fn list_all<T, F, Fut>(mut page: F) -> Result<Vec<T>, store::StoreError>
where
    F: FnMut(ListQuery) -> Fut,
    Fut: std::future::Future<Output = Result<model::Page<T>, store::StoreError>>,
{
    let mut out = Vec::new();
    let mut q = ListQuery {
        page_size: ListQuery::MAX_PAGE_SIZE,
        ..Default::default()
    };
    loop {
        let p = page(q.clone()).await?;
        out.extend(p.items);
        match p.next_page_token {
            Some(t) => q.page_token = Some(t),
            None => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn established(routes: u64) -> model::BgpStatus {
        model::BgpStatus {
            state: model::BgpSessionState::Established,
            peer_asn: Some(65001),
            routes_received: routes,
            routes_advertised: 1,
            established_at: None,
            uptime_s: None,
        }
    }

    #[test]
    fn bgp_changes_are_those_since_the_last_write() {
        let mut w = BgpWritten::default();
        w.wrote("t1", None);
        w.wrote("t2", Some(&established(1)));
        let now: HashMap<&str, model::BgpStatus> = [("t2", established(1))].into();
        // Nothing moved: nothing to rewrite, and tunnels never written are not invented.
        assert!(w.changes(|id| now.get(id).cloned()).is_empty());
        // t1 starts BGP, t2 learns a route, t3 (no status written yet) is left alone.
        let now: HashMap<&str, model::BgpStatus> = [
            ("t1", established(0)),
            ("t2", established(2)),
            ("t3", established(0)),
        ]
        .into();
        let mut got = w.changes(|id| now.get(id).cloned());
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [
                ("t1".to_string(), Some(established(0))),
                ("t2".to_string(), Some(established(2)))
            ]
        );
        // Counted as written: asking again finds nothing.
        assert!(w.changes(|id| now.get(id).cloned()).is_empty());
        // BGP turned off on t2: its status loses `bgp`.
        let now: HashMap<&str, model::BgpStatus> = [("t1", established(0))].into();
        assert_eq!(
            w.changes(|id| now.get(id).cloned()),
            [("t2".to_string(), None)]
        );
        // A status the control thread writes records the BGP status it carried.
        w.wrote("t1", Some(&established(5)));
        assert_eq!(
            w.changes(|id| now.get(id).cloned()),
            [("t1".to_string(), Some(established(0)))]
        );
        // A tunnel gone from the store is not rewritten again.
        w.forget("t1");
        assert_eq!(
            w.changes(|_| Some(established(9))),
            [("t2".to_string(), Some(established(9)))]
        );
    }
}
