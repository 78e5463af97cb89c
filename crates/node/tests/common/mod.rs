//! The gateway under test for the node's interop tests: the HTTP API and the node
//! in-process inside the lab's `gw` namespace (what `vpngw serve` does: SQLite store,
//! admin token, node subscribed to the API's change notification), driven through the
//! lab's [`ApiClient`].
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // test helpers

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lab::vpngw::id;
use lab::{ApiClient, Iperf3Server, Netns, PingMonitor, SaInfo, StrongSwan, Topology};
use node::{Node, NodeConfig};
use serde_json::{Value, json};
use store::{SqliteStore, Store};

/// API + node in a namespace; its API through [`Deref`] to [`ApiClient`]. Stopped on
/// Drop.
pub struct Gateway {
    api: ApiClient,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<lab::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the API on an ephemeral loopback port and the node (two workers) in `ns`.
    pub fn start(ns: &Netns) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().to_owned();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = ns
            .spawn_thread(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
                    let token = api::load_or_create_admin_token(&path).unwrap();
                    let state = api::AppState::new(Arc::clone(&store), token.clone());
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    let port = listener.local_addr().unwrap().port();
                    let router = api::router(state.clone());
                    tokio::spawn(async move { axum::serve(listener, router).await });
                    let config = NodeConfig {
                        workers: 2,
                        ..NodeConfig::default()
                    };
                    let node = Node::start(config, store, state.subscribe()).await.unwrap();
                    state.set_node_control(Arc::new(node.commands()));
                    state.add_metrics_source(Arc::new(node.metrics()));
                    ready_tx.send((port, token)).unwrap();
                    let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                    node.shutdown().await;
                });
            })
            .unwrap();
        let (port, token) = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("gateway node started");
        Gateway {
            api: ApiClient::new(ns, &format!("127.0.0.1:{port}"), &token),
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Polls the connection until `pred` holds for its first tunnel's status.
    pub fn wait_tunnel(
        &self,
        conn: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        self.api.wait_tunnel(conn, 0, what, timeout, pred)
    }

    /// Like [`Gateway::wait_tunnel`], but `None` after `timeout` (the tunnel and the
    /// connection log are printed; the caller adds what it knows, such as the peer's
    /// log).
    pub fn try_wait_tunnel(
        &self,
        conn: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        match self.api.try_wait_tunnels(conn, timeout, |ts| {
            ts.first().is_some_and(|t| pred(&t["status"]))
        }) {
            Ok(ts) => ts.into_iter().next(),
            Err(ts) => {
                eprintln!("tunnels: {ts:#?}\nlogs: {:#?}", self.api.logs(conn, 30));
                None
            }
        }
    }

    /// Creates a single-tunnel gateway on `addr` serving 172.16.0.0/16 and a customer
    /// gateway at `peer`; returns (gateway id, customer gateway id).
    pub fn base_resources(&self, addr: &str, peer: &str) -> (String, String) {
        let gw = self.post(
            "/v1/vpn-gateways",
            json!({"name": "lab-gw", "ipsec_addresses": [addr], "local_networks": ["172.16.0.0/16"]}),
        );
        let cgw = self.post(
            "/v1/customer-gateways",
            json!({"name": "onprem", "ip_address": peer}),
        );
        (id(&gw), id(&cgw))
    }
}

impl Deref for Gateway {
    type Target = ApiClient;
    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let end = Instant::now() + Duration::from_secs(15);
            while !t.is_finished() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// The value of one `GET /metrics` series (`name` with its labels, e.g.
/// `vpngw_dataplane_packets_total{path="esp_tx"}`); panics when it is missing.
pub fn metric(api: &ApiClient, name: &str) -> u64 {
    let (status, text) = api.call_text("GET", "/metrics", None);
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// A tunnel status's phase.
pub fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or("")
}

/// Five pings each way between the VPC host and 10.2.0.1 on-premises, then 100 MB of
/// iperf3 TCP from the VPC host, through the tunnel.
pub fn traffic_both_ways(topo: &Topology) {
    let vpc = topo.vpc_ip().to_string();
    lab::wait_ping(&topo.vpc, &vpc, "10.2.0.1", Duration::from_secs(10)).unwrap();
    let r = lab::ping(&topo.vpc, &vpc, "10.2.0.1", 5, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, 5, "VPC → on-premises: {r:?}");
    let r = lab::ping(&topo.onprem, "10.2.0.1", &vpc, 5, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, 5, "on-premises → VPC: {r:?}");
    let server = Iperf3Server::start(&topo.onprem, topo.workdir.path(), "10.2.0.1", 5201).unwrap();
    let r = lab::iperf3_client(
        &topo.vpc,
        &vpc,
        "10.2.0.1",
        server.port(),
        100_000_000,
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(r.bytes_sent >= 100_000_000, "{r:?}");
    eprintln!(
        "iperf3 through the tunnel: {:.0} Mbit/s",
        r.bits_per_second / 1e6
    );
}

/// Pings 10.2.0.1 (on-premises) from the VPC host every 50 ms until stopped: the
/// monitor the make-before-break tests read losses from.
pub fn vpc_ping_monitor(topo: &Topology) -> PingMonitor {
    let vpc = topo.vpc_ip().to_string();
    PingMonitor::start(
        &topo.vpc,
        topo.workdir.path(),
        &vpc,
        "10.2.0.1",
        Duration::from_millis(50),
    )
    .unwrap()
}

/// strongSwan brings up its connection `vpn` (child `net`) towards the gateway, e.g.
/// after a restart; waits until the first tunnel of `conn` runs on strongSwan's new IKE
/// SA with one Child SA and pings cross it, and returns that IKE SA.
pub fn swan_reconnects(gw: &Gateway, conn: &str, swan: &StrongSwan, topo: &Topology) -> SaInfo {
    swan.initiate("net").unwrap();
    let new = swan
        .wait_established("vpn", Duration::from_secs(5))
        .unwrap();
    let spis = json!({"initiator": new.spi_i, "responder": new.spi_r});
    gw.wait_tunnel(
        conn,
        "established on strongSwan's new IKE SA",
        Duration::from_secs(10),
        |s| {
            phase(s) == "established"
                && s["ike_sa"]["spis"] == spis
                && s["child_sas"].as_array().is_some_and(|c| c.len() == 1)
        },
    );
    let vpc = topo.vpc_ip().to_string();
    let r = lab::ping(&topo.vpc, &vpc, "10.2.0.1", 3, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, 3, "on the new SAs: {r:?}");
    new
}

/// strongSwan deletes the tunnel's Child SA and keeps the IKE SA (`swanctl --terminate
/// --child net`). Waits until the first tunnel of `conn` is established on a new Child
/// SA that the gateway negotiated on that same IKE SA, as strongSwan itself would, and
/// checks that pings cross it.
pub fn swan_deletes_the_child(gw: &Gateway, conn: &str, swan: &StrongSwan, topo: &Topology) {
    let before = swan
        .wait_established("vpn", Duration::from_secs(5))
        .unwrap();
    let t = gw.wait_tunnel(conn, "established", Duration::from_secs(5), |s| {
        phase(s) == "established"
    });
    let (ike, child) = (
        t["status"]["ike_sa"]["spis"].clone(),
        t["status"]["child_sas"][0]["spi_in"].clone(),
    );
    swan.terminate_child("net").unwrap();
    let t = gw.wait_tunnel(
        conn,
        "established on a new Child SA",
        Duration::from_secs(10),
        |s| phase(s) == "established" && s["child_sas"][0]["spi_in"] != child,
    );
    assert_eq!(t["status"]["ike_sa"]["spis"], ike, "the same IKE SA: {t:#}");
    let sas = swan.list_sas().unwrap();
    assert_eq!(sas.len(), 1, "{sas:?}");
    assert_eq!(sas[0].uniqueid, before.uniqueid, "the same IKE SA: {sas:?}");
    assert_eq!(sas[0].children.len(), 1, "{sas:?}");
    assert_eq!(sas[0].children[0].state, "INSTALLED", "{sas:?}");
    let vpc = topo.vpc_ip().to_string();
    lab::wait_ping(&topo.vpc, &vpc, "10.2.0.1", Duration::from_secs(5)).unwrap();
    let r = lab::ping(&topo.vpc, &vpc, "10.2.0.1", 3, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, 3, "on the new Child SA: {r:?}");
    let events = gw.events(conn);
    assert!(events.iter().any(|e| e == "child_create"), "{events:?}");
    assert!(!events.iter().any(|e| e == "reset"), "{events:?}");
}
