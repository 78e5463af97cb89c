//! BGP over the tunnels: one eBGP session per tunnel of a connection with `enable_bgp`.
//!
//! Each such tunnel has a /30 link network in 169.254.0.0/16 (`tunnel.bgp`): the node
//! puts `local_ip/32` on the TUN device and routes the /30 into it; the packet path sends
//! packets for the /30 through *that* tunnel's outbound SA ([`BgpFwd::links`]), so each
//! session runs over its own tunnel whatever tunnel carries the connection's traffic.
//!
//! The [`run`] task (tokio) watches the tunnels: once a tunnel has an outbound SA (its
//! Child SA is established) it starts a driver task running a [`bgp::Session`] over TCP
//! to the other usable host of the /30, port 179 (RFC 4271 §8), and also accepts the
//! peer's connections on `local_ip:179`. When both ends connect at once (a vpngw peer
//! does), the peer's connection gets a second session until RFC 4271 §6.8 collision
//! detection ([`bgp::collision`]) keeps one. When the tunnel loses its SA, the driver
//! is stopped and what it learned is withdrawn; when BGP is turned off on a tunnel that
//! is still up, the session first ends with Cease / Administrative Shutdown so the
//! peer withdraws our routes at once. Learned prefixes go into
//! [`BgpFwd::routes`] (next hop: the connection; its tunnels that learned the prefix,
//! tunnel 1 first) and, as kernel routes, into the TUN device. With the connection's
//! `bgp_ecmp` a prefix both tunnels' sessions learned is used over both: the packet path
//! picks the tunnel by a hash of the flow ([`crate::fwd::flow_hash`]), so one flow stays
//! on one tunnel, and when one session withdraws the prefix everything goes to the
//! other. A static route of the same prefix wins unless the connection has
//! `bgp_override_static` (see `fwd.rs`). With `bgp_advertise_learned` a connection's
//! sessions also advertise the routes the gateway uses that other connections'
//! sessions learned ([`bgp::Session::advertise_learned`]: our AS prepended to the
//! learned AS path, RFC 4271 §5.1.2); never to the connection they came from, and
//! withdrawn when the source withdraws them. The session status is read by the node's writer
//! into the stored tunnel status (`status.bgp`); the routes each session received and
//! advertised are written to the store by this module's own writer task, for
//! `GET …/bgp-routes` and the `origin: bgp` entries of the route table.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bgp::collision::{Initiator, Loser};
use bgp::{AsSegment, Event, PathAttrs, Session};
use chrono::{DateTime, Utc};
use dataplane::{AddMode, Netlink, RouteSpec, RouteTable};
use esp::SaDb;
use ipnet::{IpNet, Ipv4Net};
use model::{
    BgpOrigin, BgpRoute, BgpRoutes, BgpSessionState, BgpStatus, ConnectionStatus, CustomerGateway,
    GatewayStatus, TunnelState, VpnConnection, VpnGateway,
};
use store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::fwd::{Fwd, TunnelKey};

/// The BGP port (RFC 4271 §8.2.1).
pub const BGP_PORT: u16 = 179;
/// How often tunnel state (outbound SA present or not) is checked.
const TUNNEL_POLL: Duration = Duration::from_secs(1);
/// Bound on an outgoing TCP connect; the session's ConnectRetry timer retries.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long sessions that are turned off get to say so to the peer.
const GRACEFUL_STOP: Duration = Duration::from_secs(1);

/// One tunnel that runs BGP, from the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BgpSpec {
    pub tunnel_id: String,
    pub conn_id: String,
    /// 0 for tunnel 1, 1 for tunnel 2: learned routes prefer tunnel 1's session.
    pub tunnel_index: usize,
    pub link: Ipv4Net,
    pub local_ip: Ipv4Addr,
    pub peer_ip: Ipv4Addr,
    pub local_asn: u32,
    pub peer_asn: u32,
    /// The gateway's local networks (IPv4), originated on the session.
    pub advertise: Vec<Ipv4Net>,
    /// TCP port of both ends: [`BGP_PORT`] (tests use others).
    pub port: u16,
    /// The connection's `bgp_ecmp`: its prefixes go over both tunnels' sessions.
    pub ecmp: bool,
    /// The connection's `bgp_override_static`.
    pub override_static: bool,
    /// The connection's `bgp_advertise_learned`: re-advertise other connections' routes.
    pub advertise_learned: bool,
}

impl BgpSpec {
    /// Whether a session running for `self` goes on under `other`: the routing options
    /// change the tables and what is re-advertised, never the session itself.
    fn same_session(&self, other: &BgpSpec) -> bool {
        let plain = |s: &BgpSpec| BgpSpec {
            ecmp: false,
            override_static: false,
            advertise_learned: false,
            ..s.clone()
        };
        plain(self) == plain(other)
    }
}

/// Routes a session re-advertises: prefix and the attributes it was learned with.
type Exports = Arc<Vec<(Ipv4Net, Arc<PathAttrs>)>>;

/// The BGP part of the packet path, published by [`run`], read lock-free by the workers.
#[derive(Default)]
pub(crate) struct BgpFwd {
    /// Tunnel link /30 → the tunnel whose SA carries it.
    pub links: RouteTable<TunnelKey>,
    /// Learned prefix → index into `targets`.
    pub routes: RouteTable<u32>,
    pub targets: Vec<BgpTarget>,
}

/// Where a learned prefix goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BgpTarget {
    /// The tunnels of the next-hop connection that learned the prefix, preferred first.
    pub tunnels: [Option<TunnelKey>; 2],
    /// `bgp_ecmp`: flows are spread over both tunnels while both have an SA.
    pub ecmp: bool,
    /// `bgp_override_static`: used instead of a static route of the same prefix.
    pub override_static: bool,
}

/// What the BGP task shares with the rest of the node.
#[derive(Default)]
pub(crate) struct BgpShared {
    pub fwd: Arc<ArcSwap<BgpFwd>>,
    /// Tunnel ID → session status; read when the control thread writes tunnel status.
    status: Mutex<HashMap<String, BgpStatus>>,
    /// Notified when a status changed (the node's writer stores it).
    pub changed: tokio::sync::Notify,
}

impl BgpShared {
    /// The `status.bgp` of a tunnel, if it runs BGP.
    pub(crate) fn status(&self, tunnel_id: &str) -> Option<BgpStatus> {
        self.status
            .lock()
            .ok()
            .and_then(|s| s.get(tunnel_id).cloned())
    }

    fn set_status(&self, all: HashMap<String, BgpStatus>) {
        if let Ok(mut s) = self.status.lock()
            && *s != all
        {
            *s = all;
            self.changed.notify_one();
        }
    }
}

/// The BGP specs of every tunnel that runs BGP: connection with `enable_bgp`, tunnel
/// with a `bgp` link and a customer gateway with an `asn`.
pub(crate) fn specs(
    gateways: &[VpnGateway],
    customer_gateways: &[CustomerGateway],
    connections: &[VpnConnection],
) -> Vec<BgpSpec> {
    let mut out = Vec::new();
    for c in connections
        .iter()
        .filter(|c| c.enable_bgp && c.status != ConnectionStatus::Deleting)
    {
        let Some(gw) = gateways
            .iter()
            .find(|g| g.id == c.vpn_gateway_id && g.status != GatewayStatus::Deleting)
        else {
            continue;
        };
        let advertise: Vec<Ipv4Net> = gw
            .local_networks
            .iter()
            .filter_map(|n| match n {
                IpNet::V4(n) => Some(n.trunc()),
                IpNet::V6(_) => None,
            })
            .collect();
        for (i, t) in c.tunnels.iter().enumerate() {
            if t.state == TunnelState::Deleting {
                continue;
            }
            let Some(link) = t.bgp else { continue };
            let Some(peer_asn) = customer_gateways
                .iter()
                .find(|g| g.id == t.customer_gateway_id)
                .and_then(|g| g.asn)
            else {
                continue;
            };
            let Some(peer_ip) = peer_address(link.tunnel_cidr, link.local_ip) else {
                continue;
            };
            out.push(BgpSpec {
                tunnel_id: t.id.clone(),
                conn_id: c.id.clone(),
                tunnel_index: i,
                link: link.tunnel_cidr.trunc(),
                local_ip: link.local_ip,
                peer_ip,
                local_asn: c.local_asn,
                peer_asn,
                advertise: advertise.clone(),
                port: BGP_PORT,
                ecmp: c.bgp_ecmp,
                override_static: c.bgp_override_static,
                advertise_learned: c.bgp_advertise_learned,
            });
        }
    }
    out
}

/// The other usable host of a /30 (RFC 3021 aside, a /30 has two).
pub(crate) fn peer_address(link: Ipv4Net, local: Ipv4Addr) -> Option<Ipv4Addr> {
    if link.prefix_len() != 30 || !link.contains(&local) {
        return None;
    }
    link.hosts().find(|h| *h != local)
}

/// Runs the BGP sessions of the node until `specs` closes.
pub(crate) async fn run(
    shared: Arc<BgpShared>,
    mut specs: watch::Receiver<Vec<BgpSpec>>,
    fwd: Arc<ArcSwap<Fwd>>,
    sadb: Arc<SaDb<TunnelKey>>,
    tun_name: String,
    store: Arc<dyn Store>,
) {
    let (reports_tx, mut reports) = mpsc::unbounded_channel::<Report>();
    let (routes_tx, routes_rx) = watch::channel(HashMap::new());
    let writer = tokio::spawn(write_routes(store, routes_rx));
    // Stops the writer with the manager (it ends when `routes_tx` is dropped anyway).
    let _writer = AbortOnDrop(writer);
    let mut m = Manager {
        shared,
        fwd,
        sadb,
        tun_name,
        netlink: None,
        drivers: HashMap::new(),
        links: BTreeMap::new(),
        learned: HashMap::new(),
        received: HashMap::new(),
        status: HashMap::new(),
        kernel: BTreeSet::new(),
        reports: reports_tx,
        routes: routes_tx,
    };
    let mut tick = tokio::time::interval(TUNNEL_POLL);
    loop {
        let want = specs.borrow_and_update().clone();
        m.stop_gracefully(&want).await;
        m.converge(&want);
        tokio::select! {
            // The node stopped: dropping the manager stops the sessions and removes
            // the routes and link addresses.
            r = specs.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
            Some(r) = reports.recv() => {
                m.report(r);
                while let Ok(r) = reports.try_recv() {
                    m.report(r);
                }
            }
        }
    }
}

/// What a driver tells the manager.
enum Report {
    Status {
        tunnel_id: String,
        status: BgpStatus,
    },
    /// The session's whole Adj-RIB-In after a change: every route, and the prefixes
    /// that may be installed (no AS path loop).
    Learned {
        tunnel_id: String,
        prefixes: BTreeSet<Ipv4Net>,
        received: Vec<(Ipv4Net, Arc<PathAttrs>)>,
    },
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Driver {
    spec: BgpSpec,
    task: JoinHandle<()>,
    /// Asks the driver to end the session with a NOTIFICATION (Cease) and return.
    stop: Option<oneshot::Sender<()>>,
    /// What the session re-advertises (`bgp_advertise_learned`).
    export: watch::Sender<Exports>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Manager {
    shared: Arc<BgpShared>,
    fwd: Arc<ArcSwap<Fwd>>,
    sadb: Arc<SaDb<TunnelKey>>,
    tun_name: String,
    netlink: Option<Netlink>,
    drivers: HashMap<String, Driver>,
    /// Tunnel ID → (link, local address) as installed on the TUN device.
    links: BTreeMap<String, (Ipv4Net, Ipv4Addr)>,
    /// Tunnel ID → prefixes its session has learned.
    learned: HashMap<String, BTreeSet<Ipv4Net>>,
    /// Tunnel ID → its session's Adj-RIB-In, for the store.
    received: HashMap<String, Vec<(Ipv4Net, Arc<PathAttrs>)>>,
    status: HashMap<String, BgpStatus>,
    /// Learned prefixes routed into the TUN device.
    kernel: BTreeSet<Ipv4Net>,
    reports: mpsc::UnboundedSender<Report>,
    /// Tunnel ID → its session's routes, for the writer.
    routes: watch::Sender<HashMap<String, BgpRoutes>>,
}

impl Manager {
    /// Sessions whose tunnel still has its SA but whose configuration changed or went
    /// away (BGP turned off, tunnel or connection deleted): tell the peer with Cease /
    /// Administrative Shutdown (RFC 4486 §4, RFC 9003) and close the connection while
    /// the link address is still there, so the peer withdraws our routes at once
    /// instead of after its hold time. Bounded by [`GRACEFUL_STOP`].
    async fn stop_gracefully(&mut self, want: &[BgpSpec]) {
        let ids: Vec<String> = {
            let fwd = self.fwd.load();
            self.drivers
                .iter()
                .filter(|(id, d)| {
                    !want.iter().any(|w| w.same_session(&d.spec))
                        && fwd
                            .keys
                            .get(id.as_str())
                            .is_some_and(|k| self.sadb.outbound(k).is_some())
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        let mut stopping: Vec<Driver> = ids
            .iter()
            .filter_map(|id| self.drivers.remove(id))
            .collect();
        if stopping.is_empty() {
            return;
        }
        for d in &mut stopping {
            if let Some(tx) = d.stop.take() {
                let _ = tx.send(());
            }
        }
        let _ = tokio::time::timeout(GRACEFUL_STOP, async {
            for d in &mut stopping {
                let _ = (&mut d.task).await;
            }
        })
        .await;
        // Dropping them aborts what did not finish in time.
    }

    fn converge(&mut self, want: &[BgpSpec]) {
        let fwd = self.fwd.load();
        let key = |id: &str| fwd.keys.get(id).copied();
        // Stop drivers of tunnels that went away, changed or lost their SA.
        let up: HashMap<&str, TunnelKey> = want
            .iter()
            .filter_map(|s| {
                key(&s.tunnel_id)
                    .filter(|k| self.sadb.outbound(k).is_some())
                    .map(|k| (s.tunnel_id.as_str(), k))
            })
            .collect();
        self.drivers.retain(|id, d| {
            up.contains_key(id.as_str()) && want.iter().any(|w| w.same_session(&d.spec))
        });
        for s in want {
            if let Some(d) = self.drivers.get_mut(&s.tunnel_id) {
                d.spec = s.clone();
            }
        }
        let running: BTreeSet<&String> = self.drivers.keys().collect();
        self.learned.retain(|id, _| running.contains(id));
        self.received.retain(|id, _| running.contains(id));
        self.status
            .retain(|id, _| want.iter().any(|s| s.tunnel_id == *id));
        self.links_converge(want);
        for s in want {
            if up.contains_key(s.tunnel_id.as_str()) && !self.drivers.contains_key(&s.tunnel_id) {
                tracing::info!(tunnel = s.tunnel_id, peer = %s.peer_ip, "starting BGP session");
                let (stop, stopped) = oneshot::channel();
                let (export, exports) = watch::channel(Exports::default());
                let task = tokio::spawn(drive(s.clone(), self.reports.clone(), stopped, exports));
                self.drivers.insert(
                    s.tunnel_id.clone(),
                    Driver {
                        spec: s.clone(),
                        task,
                        stop: Some(stop),
                        export,
                    },
                );
            }
            if !self.drivers.contains_key(&s.tunnel_id) {
                self.status.insert(
                    s.tunnel_id.clone(),
                    BgpStatus {
                        state: BgpSessionState::Idle,
                        peer_asn: Some(s.peer_asn),
                        routes_received: 0,
                        routes_advertised: 0,
                        established_at: None,
                        uptime_s: None,
                    },
                );
            }
        }
        self.publish(want, &fwd);
    }

    fn report(&mut self, r: Report) {
        match r {
            Report::Status { tunnel_id, status } => {
                if self.drivers.contains_key(&tunnel_id) {
                    self.status.insert(tunnel_id, status);
                }
            }
            Report::Learned {
                tunnel_id,
                prefixes,
                received,
            } => {
                if self.drivers.contains_key(&tunnel_id) {
                    self.received.insert(tunnel_id.clone(), received);
                    self.learned.insert(tunnel_id, prefixes);
                }
            }
        }
    }

    fn netlink(&mut self) -> Option<(&mut Netlink, u32)> {
        let index = Netlink::link_index(&self.tun_name).ok()?;
        if self.netlink.is_none() {
            match Netlink::open() {
                Ok(n) => self.netlink = Some(n),
                Err(e) => {
                    tracing::error!(error = %e, "cannot open rtnetlink: no BGP routes");
                    return None;
                }
            }
        }
        self.netlink.as_mut().map(|n| (n, index))
    }

    /// `local_ip/32` on the TUN device and the /30 routed into it, per BGP tunnel.
    fn links_converge(&mut self, want: &[BgpSpec]) {
        let wanted: BTreeMap<String, (Ipv4Net, Ipv4Addr)> = want
            .iter()
            .map(|s| (s.tunnel_id.clone(), (s.link, s.local_ip)))
            .collect();
        if wanted == self.links {
            return;
        }
        let old = std::mem::take(&mut self.links);
        let Some((nl, index)) = self.netlink() else {
            return;
        };
        for (id, (link, ip)) in &old {
            if wanted.get(id) == Some(&(*link, *ip)) {
                continue;
            }
            let _ = nl.del_route(&RouteSpec::dev(*link, index));
            let _ = nl.del_address(index, Ipv4Net::from(*ip));
        }
        let mut installed = BTreeMap::new();
        for (id, (link, ip)) in wanted {
            let r = nl
                .add_address(index, Ipv4Net::from(ip), AddMode::Replace)
                .and_then(|()| nl.add_route(&RouteSpec::dev(link, index), AddMode::Replace));
            match r {
                Ok(()) => {
                    installed.insert(id, (link, ip));
                }
                Err(e) => {
                    tracing::error!(error = %e, tunnel = id, %link, "BGP link on the tunnel device")
                }
            }
        }
        self.links = installed;
    }

    /// Publishes the packet-path tables, the kernel routes and the status.
    fn publish(&mut self, want: &[BgpSpec], fwd: &Fwd) {
        let (out, kernel, best) = tables(want, &self.learned, &self.received, &fwd.keys);
        self.shared.fwd.store(Arc::new(out));
        self.kernel_converge(kernel, fwd);
        self.shared.set_status(self.status.clone());
        let exports = exports(want, &best, &self.received);
        for (id, d) in &self.drivers {
            let e = exports.get(id).cloned().unwrap_or_default();
            d.export.send_if_modified(|cur| {
                let changed = **cur != *e;
                *cur = e;
                changed
            });
        }
        let routes = want
            .iter()
            .map(|s| {
                let established = self
                    .status
                    .get(&s.tunnel_id)
                    .is_some_and(|st| st.state == BgpSessionState::Established);
                let received = self
                    .received
                    .get(&s.tunnel_id)
                    .map_or(&[][..], Vec::as_slice);
                let exported = exports.get(&s.tunnel_id).map_or(&[][..], |e| e.as_slice());
                (
                    s.tunnel_id.clone(),
                    session_routes(s, want, established, received, &best, exported),
                )
            })
            .collect();
        self.routes.send_if_modified(|r| {
            let changed = *r != routes;
            *r = routes;
            changed
        });
    }

    fn kernel_converge(&mut self, want: BTreeSet<Ipv4Net>, fwd: &Fwd) {
        if want == self.kernel {
            return;
        }
        let old = std::mem::take(&mut self.kernel);
        let Some((nl, index)) = self.netlink() else {
            return;
        };
        for net in old.difference(&want) {
            // A static route of the same prefix is the control thread's.
            if fwd.routes.get(*net).is_none() {
                let _ = nl.del_route(&RouteSpec::dev(*net, index));
            }
        }
        let mut installed = BTreeSet::new();
        for net in want {
            match nl.add_route(&RouteSpec::dev(net, index), AddMode::Replace) {
                Ok(()) => {
                    installed.insert(net);
                }
                Err(e) => tracing::error!(error = %e, %net, "adding a BGP route"),
            }
        }
        self.kernel = installed;
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.drivers.clear();
        let kernel = std::mem::take(&mut self.kernel);
        let links = std::mem::take(&mut self.links);
        if let Some((nl, index)) = self.netlink() {
            for net in kernel {
                let _ = nl.del_route(&RouteSpec::dev(net, index));
            }
            for (link, ip) in links.into_values() {
                let _ = nl.del_route(&RouteSpec::dev(link, index));
                let _ = nl.del_address(index, Ipv4Net::from(ip));
            }
        }
    }
}

/// The packet-path tables and the kernel routes for what the sessions learned. Each
/// connection that learned a prefix competes with its primary route (tunnel 1's session
/// if it learned the prefix, else tunnel 2's: the product's primary/secondary roles); the
/// connection whose route wins RFC 4271 §9.1.2.2 a-c (shortest AS_PATH, lowest ORIGIN,
/// lowest MED from the same neighbouring AS) gets the prefix, ties to tunnel 1 routes,
/// then to store order. Its other tunnel, if it learned the prefix too, is the fallback;
/// with `bgp_ecmp` both carry flows at once, but only while their routes are equally
/// good and have the same AS_PATH (as FRR's multipath without `multipath-relax`): a
/// peer that prepends its AS on one tunnel makes that tunnel the backup. Also returns,
/// per prefix, the tunnels whose sessions' routes are in use (`best`).
fn tables(
    want: &[BgpSpec],
    learned: &HashMap<String, BTreeSet<Ipv4Net>>,
    received: &HashMap<String, Vec<(Ipv4Net, Arc<PathAttrs>)>>,
    keys: &HashMap<String, TunnelKey>,
) -> (BgpFwd, BTreeSet<Ipv4Net>, BTreeMap<Ipv4Net, Vec<String>>) {
    let mut out = BgpFwd::default();
    for s in want {
        if let Some(k) = keys.get(&s.tunnel_id) {
            out.links.insert(s.link, *k);
        }
    }
    // A session's Adj-RIB-In comes in prefix order (a BTreeMap walked in order).
    let attrs_of = |s: &BgpSpec, prefix: &Ipv4Net| -> Option<&PathAttrs> {
        let rib = received.get(&s.tunnel_id)?;
        let i = rib.binary_search_by(|(p, _)| p.cmp(prefix)).ok()?;
        rib.get(i).map(|(_, a)| &**a)
    };
    // Prefix → (session, tunnel key, attributes) candidates in spec order (connections
    // in store order, tunnel 1 before tunnel 2).
    let mut by_prefix: BTreeMap<Ipv4Net, Vec<(&BgpSpec, TunnelKey, &PathAttrs)>> = BTreeMap::new();
    for s in want {
        let (Some(prefixes), Some(k)) = (learned.get(&s.tunnel_id), keys.get(&s.tunnel_id)) else {
            continue;
        };
        for p in prefixes {
            if let Some(a) = attrs_of(s, p) {
                by_prefix.entry(*p).or_default().push((s, *k, a));
            }
        }
    }
    let mut kernel = BTreeSet::new();
    let mut best = BTreeMap::new();
    for (prefix, mut cands) in by_prefix {
        // Never a default route into the TUN device (LAB.md), nor our own links.
        if prefix.prefix_len() == 0 || out.links.get(prefix).is_some() {
            continue;
        }
        // Stable: spec order stays within each tunnel index.
        cands.sort_by_key(|(s, _, _)| s.tunnel_index);
        let mut primaries: Vec<(&BgpSpec, TunnelKey, &PathAttrs)> = Vec::new();
        for c in &cands {
            if !primaries.iter().any(|(p, _, _)| p.conn_id == c.0.conn_id) {
                primaries.push(*c);
            }
        }
        let paths: Vec<&PathAttrs> = primaries.iter().map(|(_, _, a)| *a).collect();
        let Some(&(first, k1, a1)) = bgp::most_preferred(&paths)
            .first()
            .and_then(|&i| primaries.get(i))
        else {
            continue;
        };
        let second = cands
            .iter()
            .find(|(s, _, _)| s.conn_id == first.conn_id && s.tunnel_id != first.tunnel_id);
        let ecmp = first.ecmp
            && second.is_some_and(|(_, _, a2)| {
                a1.as_path == a2.as_path && bgp::most_preferred(&[a1, a2]).len() == 2
            });
        let Ok(i) = u32::try_from(out.targets.len()) else {
            break;
        };
        out.targets.push(BgpTarget {
            tunnels: [Some(k1), second.map(|(_, k, _)| *k)],
            ecmp,
            override_static: first.override_static,
        });
        out.routes.insert(prefix, i);
        kernel.insert(prefix);
        let mut used = vec![first.tunnel_id.clone()];
        if let Some((s2, _, _)) = second.filter(|_| ecmp) {
            used.push(s2.tunnel_id.clone());
        }
        best.insert(prefix, used);
    }
    (out, kernel, best)
}

/// What each session re-advertises under `bgp_advertise_learned`: every prefix in use
/// (`best`) that a session of another connection learned, with the attributes of the
/// route in use; never a prefix the session originates (the gateway's networks).
fn exports(
    want: &[BgpSpec],
    best: &BTreeMap<Ipv4Net, Vec<String>>,
    received: &HashMap<String, Vec<(Ipv4Net, Arc<PathAttrs>)>>,
) -> HashMap<String, Exports> {
    let conn_of: HashMap<&str, &str> = want
        .iter()
        .map(|s| (s.tunnel_id.as_str(), s.conn_id.as_str()))
        .collect();
    let mut learned: Vec<(Ipv4Net, &str, Arc<PathAttrs>)> = Vec::new();
    for (prefix, used) in best {
        let Some(tunnel) = used.first() else { continue };
        let Some(conn) = conn_of.get(tunnel.as_str()) else {
            continue;
        };
        // The Adj-RIB-In is in prefix order (it comes from a BTreeMap).
        let attrs = received.get(tunnel).and_then(|r| {
            r.binary_search_by(|(p, _)| p.cmp(prefix))
                .ok()
                .and_then(|i| r.get(i))
        });
        if let Some((_, a)) = attrs {
            learned.push((*prefix, conn, a.clone()));
        }
    }
    want.iter()
        .map(|s| {
            let routes: Vec<(Ipv4Net, Arc<PathAttrs>)> = if s.advertise_learned {
                learned
                    .iter()
                    .filter(|(p, conn, _)| *conn != s.conn_id && !s.advertise.contains(p))
                    .map(|(p, _, a)| (*p, a.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            (s.tunnel_id.clone(), Arc::new(routes))
        })
        .collect()
}

/// What one session received and advertised, as `GET …/bgp-routes` shows it.
fn session_routes(
    s: &BgpSpec,
    want: &[BgpSpec],
    established: bool,
    received: &[(Ipv4Net, Arc<PathAttrs>)],
    best: &BTreeMap<Ipv4Net, Vec<String>>,
    exported: &[(Ipv4Net, Arc<PathAttrs>)],
) -> BgpRoutes {
    let received = received
        .iter()
        .map(|(prefix, a)| {
            let as_path = flat_path(a);
            // The same filters as `drive` (loops) and `tables` (default, links).
            let ignored = if as_path.contains(&s.local_asn) {
                Some(format!(
                    "the AS path holds our own AS {} (a loop, RFC 4271 §9.1.2)",
                    s.local_asn
                ))
            } else if prefix.prefix_len() == 0 {
                Some("a default route is never installed".to_string())
            } else if want.iter().any(|w| w.link == *prefix) {
                Some("a BGP link network of this gateway".to_string())
            } else {
                None
            };
            BgpRoute {
                prefix: *prefix,
                as_path,
                next_hop: a.next_hop,
                origin: origin_of(a),
                med: a.med,
                best: ignored.is_none()
                    && best
                        .get(prefix)
                        .is_some_and(|used| used.contains(&s.tunnel_id)),
                ignored,
            }
        })
        .collect();
    // RFC 4271 §5.1.2/§5.1.3: to an external peer we prepend our AS and are the next hop.
    let advertised = if established {
        let originated = s.advertise.iter().map(|p| BgpRoute {
            prefix: *p,
            as_path: vec![s.local_asn],
            next_hop: Some(s.local_ip),
            origin: BgpOrigin::Igp,
            med: None,
            best: true,
            ignored: None,
        });
        // Exactly what the session sends (RFC 4271 §5.1; RFC 1997 communities).
        let relayed = exported.iter().filter_map(|(p, a)| {
            let e = PathAttrs::exported(a, s.local_asn, s.local_ip, s.local_asn != s.peer_asn)?;
            Some(BgpRoute {
                prefix: *p,
                as_path: flat_path(&e),
                next_hop: e.next_hop,
                origin: origin_of(&e),
                med: e.med,
                best: true,
                ignored: None,
            })
        });
        originated.chain(relayed).collect()
    } else {
        Vec::new()
    };
    BgpRoutes {
        received,
        advertised,
    }
}

/// An AS_PATH as the API lists it: nearest AS first, set members in place.
fn flat_path(a: &PathAttrs) -> Vec<u32> {
    a.as_path
        .iter()
        .flat_map(|p| p.segments.iter())
        .flat_map(|seg| match seg {
            AsSegment::Set(v)
            | AsSegment::Sequence(v)
            | AsSegment::ConfedSequence(v)
            | AsSegment::ConfedSet(v) => v.iter().copied(),
        })
        .collect()
}

fn origin_of(a: &PathAttrs) -> BgpOrigin {
    match a.origin {
        Some(bgp::Origin::Egp) => BgpOrigin::Egp,
        Some(bgp::Origin::Incomplete) => BgpOrigin::Incomplete,
        Some(bgp::Origin::Igp) | None => BgpOrigin::Igp,
    }
}

/// Writes each tunnel's routes to the store when they change; a tunnel that no longer
/// runs BGP gets its routes cleared once.
async fn write_routes(store: Arc<dyn Store>, mut rx: watch::Receiver<HashMap<String, BgpRoutes>>) {
    let mut last: HashMap<String, BgpRoutes> = HashMap::new();
    loop {
        let now = rx.borrow_and_update().clone();
        let gone = last
            .keys()
            .filter(|id| !now.contains_key(*id))
            .map(|id| (id.clone(), BgpRoutes::default()));
        let changed: Vec<(String, BgpRoutes)> = now
            .iter()
            .filter(|(id, r)| last.get(*id) != Some(r))
            .map(|(id, r)| (id.clone(), r.clone()))
            .chain(gone)
            .collect();
        for (id, r) in &changed {
            match store.set_tunnel_bgp_routes(id, r).await {
                Ok(()) | Err(store::StoreError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(error = %e, tunnel = id, "writing BGP routes"),
            }
        }
        last = now;
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// One session's driver: TCP in and out, the engine's timers, reports to the manager.
async fn drive(
    spec: BgpSpec,
    reports: mpsc::UnboundedSender<Report>,
    mut stop: oneshot::Receiver<()>,
    mut export: watch::Receiver<Exports>,
) {
    let span = tracing::info_span!("bgp", tunnel = spec.tunnel_id, peer = %spec.peer_ip);
    let _enter = span.enter();
    let mut config = bgp::Config::new(spec.local_ip, spec.peer_ip, spec.peer_asn);
    config.local_asn = spec.local_asn;
    config.hold_time = 30;
    config.keepalive = 10;
    if let Err(e) = config.validate() {
        tracing::error!(error = %e, "BGP configuration refused");
        return;
    }
    let listener = listen(spec.local_ip, spec.port)
        .map_err(|e| tracing::warn!(error = %e, "cannot accept BGP connections"))
        .ok();
    let mut exported: Exports = export.borrow_and_update().clone();
    let mut export_gone = false;
    let new_session = |now, exported: &Exports| {
        let mut s = Session::new(config.clone());
        s.start(now);
        s.advertise(now, &spec.advertise);
        s.advertise_learned(now, exported);
        s
    };
    let mut s = new_session(Instant::now().into_std(), &exported);
    let mut stream: Option<TcpStream> = None;
    // Who opened `stream` (RFC 4271 §6.8 needs it).
    let mut s_by = Initiator::Local;
    // A second connection with the peer while `s` is opening its own (both sides
    // connected at once): its own session until collision detection picks one.
    let mut second: Option<(TcpStream, Session, Initiator)> = None;
    let mut buf2 = vec![0u8; 8192];
    let mut connecting: Option<JoinHandle<std::io::Result<TcpStream>>> = None;
    let mut buf = vec![0u8; 8192];
    let mut last: Option<BgpStatus> = None;
    let mut established_at: Option<DateTime<Utc>> = None;
    let mut stop_gone = false;
    loop {
        // Outputs: transmit before events (a NOTIFICATION before its Close).
        let mut failed = false;
        while let Some(bytes) = s.poll_transmit() {
            if let Some(st) = stream.as_mut()
                && !failed
                && st.write_all(&bytes).await.is_err()
            {
                failed = true;
            }
        }
        if failed {
            stream = None;
            s.handle_closed(Instant::now().into_std());
            continue;
        }
        let mut learned_changed = false;
        let now = Instant::now().into_std();
        if let Some((mut st2, mut s2, s2_by)) = second.take() {
            let mut open = true;
            while let Some(bytes) = s2.poll_transmit() {
                open = open && st2.write_all(&bytes).await.is_ok();
            }
            // Its Connect (it was started like `s`), Established and routes wait
            // until it is kept.
            while let Some(ev) = s2.poll_event() {
                open = open && ev != Event::Close;
            }
            match bgp::collision::resolve((&s, s_by), (&s2, s2_by)) {
                Some(Loser::Second) => {
                    tracing::info!("BGP connection collision: keeping the first connection");
                    s2.collision_dump(now);
                    while let Some(bytes) = s2.poll_transmit() {
                        let _ = st2.write_all(&bytes).await;
                    }
                }
                Some(Loser::First) => {
                    tracing::info!("BGP connection collision: keeping the peer's connection");
                    s.collision_dump(now);
                    while let Some(bytes) = s.poll_transmit() {
                        if let Some(st) = stream.as_mut() {
                            let _ = st.write_all(&bytes).await;
                        }
                    }
                    (s, stream, s_by) = (s2, Some(st2), s2_by);
                    if s.is_established() {
                        established_at = Some(Utc::now());
                    }
                    learned_changed = true;
                }
                None if open => second = Some((st2, s2, s2_by)),
                None => {}
            }
        }
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::Connect => {
                    if let Some(c) = connecting.take() {
                        c.abort();
                    }
                    connecting = Some(tokio::spawn(connect(
                        spec.local_ip,
                        spec.peer_ip,
                        spec.port,
                    )));
                }
                Event::Close => {
                    stream = None;
                    if let Some(c) = connecting.take() {
                        c.abort();
                    }
                    // The peer gave up our connection (it resolved the collision
                    // first): go on with the other one.
                    if let Some((st2, s2, s2_by)) = second.take() {
                        (s, stream, s_by) = (s2, Some(st2), s2_by);
                        learned_changed = true;
                        if s.is_established() {
                            established_at = Some(Utc::now());
                        }
                    }
                }
                Event::Established {
                    peer_asn,
                    hold_time,
                    ..
                } => {
                    established_at = Some(Utc::now());
                    tracing::info!(peer_asn, hold_time, "BGP session established");
                }
                Event::RoutesChanged(_) => learned_changed = true,
                Event::Down { reason } => tracing::warn!(%reason, "BGP session down"),
                Event::Log(l) => tracing::debug!(event = ?l, "bgp"),
            }
        }
        if learned_changed {
            // RFC 4271 §9.1.2: a route whose AS_PATH holds our own AS is a loop (a peer
            // may send our own networks back); it must never be installed.
            let prefixes = s
                .adj_rib_in()
                .filter(|(_, a)| {
                    !a.as_path
                        .as_ref()
                        .is_some_and(|p| p.contains(spec.local_asn))
                })
                .map(|(p, _)| *p)
                .collect();
            let received = s.adj_rib_in().map(|(p, a)| (*p, Arc::clone(a))).collect();
            let _ = reports.send(Report::Learned {
                tunnel_id: spec.tunnel_id.clone(),
                prefixes,
                received,
            });
        }
        if !s.is_established() {
            established_at = None;
        }
        let status = status_of(&s, spec.peer_asn, established_at);
        if last.as_ref() != Some(&status) {
            last = Some(status.clone());
            let _ = reports.send(Report::Status {
                tunnel_id: spec.tunnel_id.clone(),
                status,
            });
        }
        let deadline = s
            .poll_timeout()
            .into_iter()
            .chain(second.as_ref().and_then(|(_, s2, _)| s2.poll_timeout()))
            .min()
            .map(Instant::from_std);
        tokio::select! {
            r = pending_connect(&mut connecting) => {
                connecting = None;
                let now = Instant::now().into_std();
                match r {
                    Ok(Ok(st)) if stream.is_none() => {
                        stream = Some(st);
                        s_by = Initiator::Local;
                        s.handle_connected(now);
                    }
                    // The peer's connection was accepted while ours was opening: both
                    // exist (RFC 4271 §6.8) and the OPENs decide which one stays. The
                    // peer does the same, so both keep the same one; dropping ours here
                    // while the peer drops its own would leave none (both would wait
                    // out ConnectRetryTime).
                    Ok(Ok(st))
                        if second.is_none()
                            && matches!(s.state(), bgp::State::OpenSent | bgp::State::OpenConfirm) =>
                    {
                        let mut s2 = new_session(now, &exported);
                        s2.handle_connected(now);
                        second = Some((st, s2, Initiator::Local));
                    }
                    Ok(Ok(_)) => {}
                    // Our connect failing does not matter once the peer's is in use.
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "BGP connect failed");
                        if stream.is_none() {
                            s.handle_closed(now);
                        }
                    }
                    Err(_) => {
                        if stream.is_none() {
                            s.handle_closed(now);
                        }
                    }
                }
            }
            r = accept(listener.as_ref()) => {
                match r {
                    // Only the configured peer.
                    // Our own connect, if one is opening, goes on (see its arm above).
                    Ok((st, SocketAddr::V4(from))) if *from.ip() == spec.peer_ip && stream.is_none() => {
                        let _ = st.set_nodelay(true);
                        stream = Some(st);
                        s_by = Initiator::Remote;
                        s.handle_connected(Instant::now().into_std());
                    }
                    // RFC 4271 §6.8: the peer connected while ours is opening; both
                    // run until the OPENs tell which one stays. Once established,
                    // a new connection is refused (closed) at once.
                    Ok((st, SocketAddr::V4(from)))
                        if *from.ip() == spec.peer_ip
                            && second.is_none()
                            && matches!(s.state(), bgp::State::OpenSent | bgp::State::OpenConfirm) =>
                    {
                        let _ = st.set_nodelay(true);
                        let now = Instant::now().into_std();
                        let mut s2 = new_session(now, &exported);
                        s2.handle_connected(now);
                        second = Some((st, s2, Initiator::Remote));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "accepting a BGP connection"),
                }
            }
            r = read(stream.as_mut(), &mut buf) => {
                let now = Instant::now().into_std();
                match r {
                    Ok(0) | Err(_) => {
                        stream = None;
                        s.handle_closed(now);
                    }
                    Ok(n) => s.handle_bytes(now, buf.get(..n).unwrap_or_default()),
                }
            }
            r = read(second.as_mut().map(|(st, _, _)| st), &mut buf2) => {
                let now = Instant::now().into_std();
                if let Some((_, s2, _)) = second.as_mut() {
                    match r {
                        Ok(0) | Err(_) => second = None,
                        Ok(n) => s2.handle_bytes(now, buf2.get(..n).unwrap_or_default()),
                    }
                }
            }
            r = export.changed(), if !export_gone => {
                if r.is_err() {
                    export_gone = true;
                    continue;
                }
                // RFC 4271 §9.2: what the source withdrew is withdrawn here too.
                let new = export.borrow_and_update().clone();
                let keep: BTreeSet<Ipv4Net> = new.iter().map(|(p, _)| *p).collect();
                let gone: Vec<Ipv4Net> = exported
                    .iter()
                    .map(|(p, _)| *p)
                    .filter(|p| !keep.contains(p))
                    .collect();
                let now = Instant::now().into_std();
                s.withdraw(now, &gone);
                s.advertise_learned(now, &new);
                if let Some((_, s2, _)) = second.as_mut() {
                    s2.withdraw(now, &gone);
                    s2.advertise_learned(now, &new);
                }
                exported = new;
            }
            r = &mut stop, if !stop_gone => {
                if r.is_err() {
                    // The manager went away without asking (it aborts us as well).
                    stop_gone = true;
                    continue;
                }
                let now = Instant::now().into_std();
                s.shutdown(now, "BGP turned off on this tunnel");
                if let Some(mut st) = stream.take() {
                    while let Some(bytes) = s.poll_transmit() {
                        if st.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    let _ = st.shutdown().await;
                    // Wait for the peer to close its side: that it read the
                    // NOTIFICATION. Returning at once would let the manager remove
                    // the link address and the packet path to the peer while the
                    // NOTIFICATION may still sit in the TUN queue or need a TCP
                    // retransmission, and the peer would only notice at its hold
                    // time. The manager bounds this wait (GRACEFUL_STOP).
                    while let Ok(n) = st.read(&mut buf).await
                        && n > 0
                    {}
                }
                tracing::info!("BGP session stopped: turned off");
                return;
            }
            () = sleep_until(deadline) => {
                let now = Instant::now().into_std();
                s.handle_timeout(now);
                if let Some((_, s2, _)) = second.as_mut() {
                    s2.handle_timeout(now);
                }
            }
        }
    }
}

fn status_of(s: &Session, peer_asn: u32, established_at: Option<DateTime<Utc>>) -> BgpStatus {
    let established = s.is_established();
    BgpStatus {
        state: match s.state() {
            bgp::State::Idle => BgpSessionState::Idle,
            bgp::State::Connect => BgpSessionState::Connect,
            bgp::State::Active => BgpSessionState::Active,
            bgp::State::OpenSent => BgpSessionState::OpenSent,
            bgp::State::OpenConfirm => BgpSessionState::OpenConfirm,
            bgp::State::Established => BgpSessionState::Established,
        },
        peer_asn: Some(peer_asn),
        routes_received: s.adj_rib_in().count() as u64,
        routes_advertised: if established {
            s.adj_rib_out().count() as u64
        } else {
            0
        },
        established_at,
        uptime_s: None,
    }
}

// Each input is "never ready" while absent, so one `select!` covers every state.

async fn pending_connect(
    c: &mut Option<JoinHandle<std::io::Result<TcpStream>>>,
) -> Result<std::io::Result<TcpStream>, tokio::task::JoinError> {
    match c {
        Some(c) => c.await,
        None => std::future::pending().await,
    }
}

async fn accept(l: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn read(st: Option<&mut TcpStream>, buf: &mut [u8]) -> std::io::Result<usize> {
    match st {
        Some(st) => st.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn listen(local: Ipv4Addr, port: u16) -> std::io::Result<TcpListener> {
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(SocketAddr::V4(SocketAddrV4::new(local, port)))?;
    sock.listen(4)
}

async fn connect(local: Ipv4Addr, peer: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::V4(SocketAddrV4::new(local, 0)))?;
    let st = tokio::time::timeout(
        CONNECT_TIMEOUT,
        sock.connect(SocketAddr::V4(SocketAddrV4::new(peer, port))),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    st.set_nodelay(true)?;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use model::{
        AsnInput, CustomerGatewaySpec, TunnelBgpSpec, TunnelSpec, VpnConnectionSpec, VpnGatewaySpec,
    };

    use super::*;

    fn epoch() -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH
    }

    /// Route attributes as a session hands them over: AS path `path`, ORIGIN IGP.
    fn path_attrs(path: &[u32]) -> Arc<PathAttrs> {
        Arc::new(PathAttrs {
            origin: Some(bgp::Origin::Igp),
            as_path: Some(bgp::AsPath::sequence(path)),
            next_hop: Some(Ipv4Addr::new(169, 254, 10, 2)),
            ..Default::default()
        })
    }

    /// Every learned prefix with the same attributes: only roles and order decide.
    fn same_attrs(
        learned: &HashMap<String, BTreeSet<Ipv4Net>>,
    ) -> HashMap<String, Vec<(Ipv4Net, Arc<PathAttrs>)>> {
        learned
            .iter()
            .map(|(t, ps)| {
                (
                    t.clone(),
                    ps.iter().map(|p| (*p, path_attrs(&[65530]))).collect(),
                )
            })
            .collect()
    }

    fn fixtures(enable_bgp: bool) -> (VpnGateway, CustomerGateway, VpnConnection) {
        let gw = VpnGatewaySpec {
            name: Some("gw".into()),
            ipsec_addresses: Some(vec!["192.0.2.1".into(), "192.0.2.2".into()]),
            local_networks: Some(vec!["172.16.0.0/16".into(), "2001:db8::/48".into()]),
            ..Default::default()
        }
        .build("vpn-1".into(), epoch())
        .unwrap();
        let cgw = CustomerGatewaySpec {
            name: Some("onprem".into()),
            ip_address: Some("198.51.100.1".into()),
            asn: Some(AsnInput::Number(65530)),
            ..Default::default()
        }
        .build("cgw-1".into(), epoch())
        .unwrap();
        let tunnel = |cidr: &str, ip: &str| TunnelSpec {
            customer_gateway_id: Some(cgw.id.clone()),
            pre_shared_key: Some(model::PskInput("bgp-test-psk".into())),
            bgp: Some(TunnelBgpSpec {
                tunnel_cidr: Some(cidr.into()),
                local_ip: Some(ip.into()),
            }),
            ..Default::default()
        };
        let spec = VpnConnectionSpec {
            name: Some("c".into()),
            vpn_gateway_id: Some(gw.id.clone()),
            enable_bgp: Some(enable_bgp),
            tunnels: Some(vec![
                tunnel("169.254.10.0/30", "169.254.10.1"),
                tunnel("169.254.11.0/30", "169.254.11.2"),
            ]),
            ..Default::default()
        };
        let ctx = model::ConnectionContext {
            gateway: &gw,
            customer_gateways: std::slice::from_ref(&cgw),
            tunnel_cidrs_in_use: &[],
        };
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        let tids = ["tun-1".to_string(), "tun-2".to_string()];
        let c = spec
            .build(&ctx, "vco-1".into(), &tids, epoch(), &mut rng)
            .unwrap();
        (gw, cgw, c)
    }

    #[test]
    fn every_bgp_tunnel_gets_a_session_spec() {
        let (gw, cgw, c) = fixtures(true);
        let s = specs(&[gw], &[cgw], &[c]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].tunnel_id, "tun-1");
        assert_eq!(s[0].tunnel_index, 0);
        assert_eq!(s[0].peer_ip, Ipv4Addr::new(169, 254, 10, 2));
        assert_eq!(s[1].tunnel_index, 1);
        assert_eq!(s[1].local_ip, Ipv4Addr::new(169, 254, 11, 2));
        assert_eq!(s[1].peer_ip, Ipv4Addr::new(169, 254, 11, 1));
        assert_eq!(s[0].local_asn, bgp::DEFAULT_LOCAL_ASN);
        assert_eq!(s[0].peer_asn, 65530);
        // IPv6 local networks are not advertised over this IPv4 unicast session.
        assert_eq!(
            s[0].advertise,
            vec!["172.16.0.0/16".parse::<Ipv4Net>().unwrap()]
        );
    }

    #[test]
    fn learned_routes_prefer_tunnel_1_and_skip_default_and_links() {
        let (gw, cgw, c) = fixtures(true);
        let want = specs(&[gw], &[cgw], &[c]);
        let keys = HashMap::from([("tun-1".to_string(), 11), ("tun-2".to_string(), 12)]);
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let learned = HashMap::from([
            (
                "tun-1".to_string(),
                BTreeSet::from([net("10.2.0.0/24"), net("0.0.0.0/0")]),
            ),
            (
                "tun-2".to_string(),
                BTreeSet::from([
                    net("10.2.0.0/24"),
                    net("10.3.0.0/16"),
                    net("169.254.10.0/30"),
                ]),
            ),
        ]);
        let (out, kernel, best) = tables(&want, &learned, &same_attrs(&learned), &keys);
        assert_eq!(
            best.get(&net("10.2.0.0/24")),
            Some(&vec!["tun-1".to_string()])
        );
        assert_eq!(
            best.get(&net("10.3.0.0/16")),
            Some(&vec!["tun-2".to_string()])
        );
        assert_eq!(best.get(&net("0.0.0.0/0")), None);
        assert_eq!(
            kernel,
            BTreeSet::from([net("10.2.0.0/24"), net("10.3.0.0/16")])
        );
        let target = |a: [u8; 4]| {
            let i = out.routes.lookup(Ipv4Addr::from(a)).unwrap();
            out.targets[i as usize]
        };
        let t = target([10, 2, 0, 1]);
        assert_eq!(t.tunnels, [Some(11), Some(12)]);
        assert!(!t.ecmp && !t.override_static);
        assert_eq!(target([10, 3, 0, 1]).tunnels, [Some(12), None]);
        assert_eq!(out.routes.lookup(Ipv4Addr::new(192, 0, 2, 9)), None);
        assert_eq!(out.links.lookup(Ipv4Addr::new(169, 254, 10, 2)), Some(11));
        assert_eq!(out.links.lookup(Ipv4Addr::new(169, 254, 11, 1)), Some(12));
    }

    #[test]
    fn session_routes_mark_best_ignored_and_advertised() {
        let (gw, cgw, c) = fixtures(true);
        let want = specs(&[gw], &[cgw], &[c]);
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let attrs = |path: &[u32]| {
            Arc::new(PathAttrs {
                origin: Some(bgp::Origin::Incomplete),
                as_path: Some(bgp::AsPath::sequence(path)),
                next_hop: Some(Ipv4Addr::new(169, 254, 11, 1)),
                med: Some(7),
                ..Default::default()
            })
        };
        let received = vec![
            (net("10.2.0.0/24"), attrs(&[65530])),
            (net("10.3.0.0/24"), attrs(&[65530])),
            (net("172.16.0.0/16"), attrs(&[65530, 45104])),
            (net("0.0.0.0/0"), attrs(&[65530])),
            (net("169.254.10.0/30"), attrs(&[65530])),
        ];
        // Tunnel 1's session has the best route for 10.2.0.0/24, ours for 10.3.0.0/24.
        let best = BTreeMap::from([
            (net("10.2.0.0/24"), vec!["tun-1".to_string()]),
            (net("10.3.0.0/24"), vec!["tun-2".to_string()]),
        ]);
        let r = session_routes(&want[1], &want, true, &received, &best, &[]);
        let by = |p: &str| r.received.iter().find(|x| x.prefix == net(p)).unwrap();
        assert!(!by("10.2.0.0/24").best);
        assert_eq!(by("10.2.0.0/24").ignored, None);
        let b = by("10.3.0.0/24");
        assert!(b.best);
        assert_eq!(b.as_path, vec![65530]);
        assert_eq!(b.med, Some(7));
        assert_eq!(b.origin, BgpOrigin::Incomplete);
        assert_eq!(b.next_hop, Some(Ipv4Addr::new(169, 254, 11, 1)));
        assert!(
            by("172.16.0.0/16")
                .ignored
                .as_ref()
                .unwrap()
                .contains("loop")
        );
        assert!(by("0.0.0.0/0").ignored.is_some());
        assert!(by("169.254.10.0/30").ignored.is_some());
        assert_eq!(r.advertised.len(), 1);
        assert_eq!(r.advertised[0].prefix, net("172.16.0.0/16"));
        assert_eq!(r.advertised[0].as_path, vec![bgp::DEFAULT_LOCAL_ASN]);
        assert_eq!(
            r.advertised[0].next_hop,
            Some(Ipv4Addr::new(169, 254, 11, 2))
        );
        // Nothing is advertised while the session is down.
        let down = session_routes(&want[1], &want, false, &received, &best, &[]);
        assert!(down.advertised.is_empty());
    }

    /// Two drivers over loopback TCP that connect to each other at the same moment
    /// (on a current-thread runtime both listeners exist before either connect runs,
    /// so both connections are accepted): RFC 4271 §6.8 keeps one connection and both
    /// sessions come up once and stay up. Without collision detection each side
    /// would drop the other's connection and both sessions would fail.
    #[tokio::test(flavor = "current_thread")]
    async fn simultaneous_connects_resolve_to_one_session() {
        let port = 20_000 + (std::process::id() % 20_000) as u16;
        let (a_ip, b_ip) = (Ipv4Addr::new(127, 0, 79, 1), Ipv4Addr::new(127, 0, 79, 2));
        let spec = |local, peer, local_asn, peer_asn, net: &str| BgpSpec {
            tunnel_id: format!("tun-{local}"),
            conn_id: "vco-1".into(),
            tunnel_index: 0,
            link: "127.0.79.0/30".parse().unwrap(),
            local_ip: local,
            peer_ip: peer,
            local_asn,
            peer_asn,
            advertise: vec![net.parse().unwrap()],
            port,
            ecmp: false,
            override_static: false,
            advertise_learned: false,
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (_stop_a, stopped_a) = oneshot::channel();
        let (_stop_b, stopped_b) = oneshot::channel();
        let (_export_a, exports_a) = watch::channel(Exports::default());
        let (_export_b, exports_b) = watch::channel(Exports::default());
        let a = tokio::spawn(drive(
            spec(a_ip, b_ip, 65000, 65001, "172.16.1.0/24"),
            tx.clone(),
            stopped_a,
            exports_a,
        ));
        let b = tokio::spawn(drive(
            spec(b_ip, a_ip, 65001, 65000, "10.2.0.0/24"),
            tx,
            stopped_b,
            exports_b,
        ));
        let mut established: HashMap<String, usize> = HashMap::new();
        let mut learned: HashMap<String, BTreeSet<Ipv4Net>> = HashMap::new();
        let mut was_up: HashMap<String, bool> = HashMap::new();
        // Well under ConnectRetryTime (10 s, RFC 4271 §10): a run where both sides drop
        // the connection the other keeps would only come up after a retry.
        let deadline = Instant::now() + Duration::from_secs(6);
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            match r {
                Report::Status { tunnel_id, status } => {
                    let up = status.state == BgpSessionState::Established;
                    let was = was_up.insert(tunnel_id.clone(), up).unwrap_or(false);
                    if up && !was {
                        *established.entry(tunnel_id).or_default() += 1;
                    }
                }
                Report::Learned {
                    tunnel_id,
                    prefixes,
                    ..
                } => {
                    learned.insert(tunnel_id, prefixes);
                }
            }
        }
        a.abort();
        b.abort();
        let ta = format!("tun-{a_ip}");
        let tb = format!("tun-{b_ip}");
        assert_eq!(established.get(&ta), Some(&1), "{established:?} {was_up:?}");
        assert_eq!(established.get(&tb), Some(&1), "{established:?} {was_up:?}");
        assert_eq!(was_up.get(&ta), Some(&true));
        assert_eq!(was_up.get(&tb), Some(&true));
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert_eq!(learned[&ta], BTreeSet::from([net("10.2.0.0/24")]));
        assert_eq!(learned[&tb], BTreeSet::from([net("172.16.1.0/24")]));
    }

    /// bgp_ecmp: a prefix both sessions learned is in use on both tunnels (one packet
    /// path target with both, both marked best); a prefix only one learned has one.
    #[test]
    fn ecmp_uses_both_sessions_routes() {
        let (gw, cgw, mut c) = fixtures(true);
        c.bgp_ecmp = true;
        c.bgp_override_static = true;
        let want = specs(&[gw], &[cgw], &[c]);
        assert!(
            want.iter()
                .all(|s| s.ecmp && s.override_static && !s.advertise_learned)
        );
        let keys = HashMap::from([("tun-1".to_string(), 11), ("tun-2".to_string(), 12)]);
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let learned = HashMap::from([
            ("tun-1".to_string(), BTreeSet::from([net("10.2.0.0/24")])),
            (
                "tun-2".to_string(),
                BTreeSet::from([net("10.2.0.0/24"), net("10.3.0.0/16")]),
            ),
        ]);
        let (out, _, best) = tables(&want, &learned, &same_attrs(&learned), &keys);
        let i = out.routes.lookup(Ipv4Addr::new(10, 2, 0, 1)).unwrap();
        assert_eq!(
            out.targets[i as usize],
            BgpTarget {
                tunnels: [Some(11), Some(12)],
                ecmp: true,
                override_static: true
            }
        );
        assert_eq!(
            best[&net("10.2.0.0/24")],
            ["tun-1".to_string(), "tun-2".to_string()]
        );
        assert_eq!(best[&net("10.3.0.0/16")], ["tun-2".to_string()]);
        // Tunnel 1's session withdraws it: tunnel 2 alone.
        let learned = HashMap::from([("tun-2".to_string(), BTreeSet::from([net("10.2.0.0/24")]))]);
        let (out, _, best) = tables(&want, &learned, &same_attrs(&learned), &keys);
        let i = out.routes.lookup(Ipv4Addr::new(10, 2, 0, 1)).unwrap();
        assert_eq!(out.targets[i as usize].tunnels, [Some(12), None]);
        assert_eq!(best[&net("10.2.0.0/24")], ["tun-2".to_string()]);
        // Only the routing options changed: the sessions go on.
        let mut other = want[0].clone();
        other.ecmp = false;
        other.advertise_learned = true;
        assert!(other.same_session(&want[0]));
        other.peer_asn = 65531;
        assert!(!other.same_session(&want[0]));
    }

    /// RFC 4271 §9.1.2.2 decides between the tunnels' routes: ECMP only over routes with
    /// the same AS_PATH (a peer prepending on tunnel 2 makes it the backup, not an equal
    /// path), and between connections the better route wins over store order.
    #[test]
    fn ecmp_needs_equal_routes_and_connections_compete_by_as_path() {
        let (gw, cgw, mut c) = fixtures(true);
        c.bgp_ecmp = true;
        let want = specs(
            std::slice::from_ref(&gw),
            std::slice::from_ref(&cgw),
            std::slice::from_ref(&c),
        );
        let keys = HashMap::from([("tun-1".to_string(), 11), ("tun-2".to_string(), 12)]);
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let p = net("10.2.0.0/24");
        let learned = HashMap::from([
            ("tun-1".to_string(), BTreeSet::from([p])),
            ("tun-2".to_string(), BTreeSet::from([p])),
        ]);
        let received = |a1: &[u32], a2: &[u32]| {
            HashMap::from([
                ("tun-1".to_string(), vec![(p, path_attrs(a1))]),
                ("tun-2".to_string(), vec![(p, path_attrs(a2))]),
            ])
        };
        let target = |out: &BgpFwd| {
            let i = out.routes.lookup(Ipv4Addr::new(10, 2, 0, 1)).unwrap();
            out.targets[i as usize]
        };
        // Equal: both tunnels.
        let (out, _, best) = tables(&want, &learned, &received(&[65530], &[65530]), &keys);
        assert_eq!(target(&out).tunnels, [Some(11), Some(12)]);
        assert!(target(&out).ecmp);
        assert_eq!(best[&p].len(), 2);
        // Tunnel 2's route prepended: tunnel 1 alone carries flows, 2 is the fallback.
        let (out, _, best) = tables(&want, &learned, &received(&[65530], &[65530, 65530]), &keys);
        assert_eq!(target(&out).tunnels, [Some(11), Some(12)]);
        assert!(!target(&out).ecmp);
        assert_eq!(best[&p], ["tun-1".to_string()]);
        // Same length, different AS_PATH: not one multipath set either.
        let (out, _, _) = tables(&want, &learned, &received(&[65530, 1], &[65530, 2]), &keys);
        assert!(!target(&out).ecmp);

        // Two connections learn the prefix; the first in store order has the longer path.
        let mut c2 = c.clone();
        c2.id = "vco-2".into();
        c2.bgp_ecmp = false;
        for (t, (id, link)) in c2
            .tunnels
            .iter_mut()
            .zip([("tun-3", "169.254.30.0/30"), ("tun-4", "169.254.31.0/30")])
        {
            t.id = id.into();
            if let Some(b) = t.bgp.as_mut() {
                b.tunnel_cidr = net(link);
                b.local_ip = net(link).hosts().next().unwrap();
            }
        }
        let want = specs(&[gw], &[cgw], &[c, c2]);
        assert_eq!(want.len(), 4);
        let keys: HashMap<String, TunnelKey> =
            [("tun-1", 11), ("tun-2", 12), ("tun-3", 13), ("tun-4", 14)]
                .into_iter()
                .map(|(t, k)| (t.to_string(), k))
                .collect();
        let learned: HashMap<String, BTreeSet<Ipv4Net>> = ["tun-1", "tun-3"]
            .into_iter()
            .map(|t| (t.to_string(), BTreeSet::from([p])))
            .collect();
        let received = HashMap::from([
            (
                "tun-1".to_string(),
                vec![(p, path_attrs(&[65530, 65530, 65530]))],
            ),
            ("tun-3".to_string(), vec![(p, path_attrs(&[65530]))]),
        ]);
        let (out, _, best) = tables(&want, &learned, &received, &keys);
        assert_eq!(target(&out).tunnels, [Some(13), None]);
        assert_eq!(best[&p], ["tun-3".to_string()]);
        // Equal paths: store order (the first connection) as before.
        let (out, _, _) = tables(&want, &learned, &same_attrs(&learned), &keys);
        assert_eq!(target(&out).tunnels, [Some(11), None]);
    }

    /// bgp_advertise_learned: connection B's sessions re-advertise what A's session
    /// learned (with A's attributes; the AS path the peer sees is ours prepended), never
    /// B's own routes back to B, never the gateway's own networks, nothing without the
    /// option; when A's session withdraws the prefix, B's export loses it.
    #[test]
    fn learned_routes_are_readvertised_to_other_connections_only() {
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let spec = |tunnel: &str, conn: &str, link: &str, advertise_learned: bool| BgpSpec {
            tunnel_id: tunnel.into(),
            conn_id: conn.into(),
            tunnel_index: 0,
            link: net(link),
            local_ip: net(link).hosts().next().unwrap(),
            peer_ip: net(link).hosts().nth(1).unwrap(),
            local_asn: 45104,
            peer_asn: if conn == "vco-a" { 65001 } else { 65002 },
            advertise: vec![net("172.16.0.0/16")],
            port: BGP_PORT,
            ecmp: false,
            override_static: false,
            advertise_learned,
        };
        let want = vec![
            spec("tun-a", "vco-a", "169.254.20.0/30", true),
            spec("tun-b", "vco-b", "169.254.21.0/30", true),
            spec("tun-c", "vco-c", "169.254.22.0/30", false),
        ];
        let keys: HashMap<String, TunnelKey> = [("tun-a", 1), ("tun-b", 2), ("tun-c", 3)]
            .into_iter()
            .map(|(t, k)| (t.to_string(), k))
            .collect();
        let attrs = |path: &[u32]| {
            Arc::new(PathAttrs {
                origin: Some(bgp::Origin::Igp),
                as_path: Some(bgp::AsPath::sequence(path)),
                next_hop: Some(Ipv4Addr::new(169, 254, 20, 2)),
                med: Some(5),
                ..Default::default()
            })
        };
        let received = HashMap::from([
            (
                "tun-a".to_string(),
                vec![
                    (net("10.1.0.0/24"), attrs(&[65001])),
                    (net("10.9.0.0/24"), attrs(&[65001, 65009])),
                    // Our own network, sent back: never re-advertised.
                    (net("172.16.0.0/16"), attrs(&[65001])),
                ],
            ),
            (
                "tun-b".to_string(),
                vec![(net("10.2.0.0/24"), attrs(&[65002]))],
            ),
        ]);
        let learned: HashMap<String, BTreeSet<Ipv4Net>> = received
            .iter()
            .map(|(t, r)| (t.clone(), r.iter().map(|(p, _)| *p).collect()))
            .collect();
        let (_, _, best) = tables(&want, &learned, &received, &keys);
        let ex = exports(&want, &best, &received);
        let prefixes = |t: &str| ex[t].iter().map(|(p, _)| *p).collect::<Vec<_>>();
        assert_eq!(
            prefixes("tun-a"),
            [net("10.2.0.0/24")],
            "B's route to A, not A's own"
        );
        assert_eq!(
            prefixes("tun-b"),
            [net("10.1.0.0/24"), net("10.9.0.0/24")],
            "A's routes to B, not our network"
        );
        assert!(prefixes("tun-c").is_empty(), "option off");
        // What B's peer sees: our AS before A's path, our next hop, no MED.
        let r = session_routes(&want[1], &want, true, &[], &best, &ex["tun-b"]);
        let adv: Vec<_> = r
            .advertised
            .iter()
            .map(|a| (a.prefix, a.as_path.clone(), a.next_hop, a.med))
            .collect();
        let nh = Some(Ipv4Addr::new(169, 254, 21, 1));
        assert_eq!(
            adv,
            [
                (net("172.16.0.0/16"), vec![45104], nh, None),
                (net("10.1.0.0/24"), vec![45104, 65001], nh, None),
                (net("10.9.0.0/24"), vec![45104, 65001, 65009], nh, None),
            ]
        );
        // A's session withdraws 10.9.0.0/24: gone from B's export.
        let mut learned = learned;
        learned
            .get_mut("tun-a")
            .unwrap()
            .remove(&net("10.9.0.0/24"));
        let (_, _, best) = tables(&want, &learned, &received, &keys);
        let ex = exports(&want, &best, &received);
        assert_eq!(
            ex["tun-b"].iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            [net("10.1.0.0/24")]
        );
    }

    #[test]
    fn no_session_without_enable_bgp() {
        let (gw, cgw, c) = fixtures(false);
        assert!(specs(&[gw], &[cgw], &[c]).is_empty());
    }

    #[test]
    fn peer_is_the_other_host_of_the_link() {
        let link: Ipv4Net = "169.254.10.0/30".parse().unwrap();
        assert_eq!(
            peer_address(link, "169.254.10.1".parse().unwrap()),
            Some("169.254.10.2".parse().unwrap())
        );
        assert_eq!(
            peer_address(link, "169.254.10.2".parse().unwrap()),
            Some("169.254.10.1".parse().unwrap())
        );
        assert_eq!(peer_address(link, "169.254.11.1".parse().unwrap()), None);
        let wide: Ipv4Net = "169.254.10.0/29".parse().unwrap();
        assert_eq!(peer_address(wide, "169.254.10.1".parse().unwrap()), None);
    }
}
