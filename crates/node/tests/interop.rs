//! Interop with a real strongSwan 5.9 (needs root; the lab's packages, see `lab`).
//!
//! Each test builds the lab (`vpc — gw — inet — onprem`), runs the HTTP API and the
//! gateway node in-process inside the `gw` namespace (what `vpngw serve` does: SQLite
//! store, admin token, node subscribed to the API's change notification), configures
//! strongSwan in `onprem` the way the product documentation configures an on-premises
//! peer, creates the gateway, customer gateway, connection and routes over HTTP with the
//! admin token, and checks traffic, tunnel status and connection logs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lab::{Iperf3Server, PingMonitor, StrongSwan, SwanctlChild, SwanctlConn, Topology, swanctl};
use node::{Node, NodeConfig};
use serde_json::{Value, json};
use store::{SqliteStore, Store};

const PSK: &str = "lab-psk-Xq7";
const SUITE: &str = "aes128-sha1-modp1024";
const ONPREM: &str = "198.51.100.1";
const GW1: &str = "192.0.2.1";

/// The system under test: API + node in the `gw` namespace. Stopped on Drop.
struct Gateway {
    port: u16,
    token: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<lab::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start(topo: &Topology) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().to_owned();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = topo
            .gw
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
            port,
            token,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// An API call from inside the `gw` namespace; returns (status, body).
    fn call(&self, topo: &Topology, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let auth = format!("Bearer {}", self.token);
        let method = method.to_string();
        topo.gw
            .run_in(move || {
                let req = ureq::request(&method, &url)
                    .set("Authorization", &auth)
                    .timeout(Duration::from_secs(10));
                let r = match body {
                    Some(b) => req.send_json(b),
                    None => req.call(),
                };
                let resp = match r {
                    Ok(r) => r,
                    Err(ureq::Error::Status(_, r)) => r,
                    Err(e) => panic!("{method} {url}: {e}"),
                };
                let status = resp.status();
                let text = resp.into_string().unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            })
            .unwrap()
    }

    fn post(&self, topo: &Topology, path: &str, body: Value) -> Value {
        let (s, v) = self.call(topo, "POST", path, Some(body));
        assert!((200..300).contains(&s), "POST {path}: {s} {v}");
        v
    }

    fn get(&self, topo: &Topology, path: &str) -> Value {
        let (s, v) = self.call(topo, "GET", path, None);
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    fn patch(&self, topo: &Topology, path: &str, body: Value) -> Value {
        let (s, v) = self.call(topo, "PATCH", path, Some(body));
        assert_eq!(s, 200, "PATCH {path}: {v}");
        v
    }

    /// Polls the connection until `pred` holds for its first tunnel's status.
    fn wait_tunnel(
        &self,
        topo: &Topology,
        conn: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let c = self.get(topo, &format!("/v1/vpn-connections/{conn}"));
            let t = c["tunnels"][0].clone();
            if pred(&t["status"]) {
                return t;
            }
            if start.elapsed() > timeout {
                let logs = self.get(topo, &format!("/v1/vpn-connections/{conn}/logs?limit=50"));
                panic!(
                    "timed out waiting for {what}; tunnel: {:#}\nlogs: {:#}",
                    t, logs["items"]
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn logs(&self, topo: &Topology, conn: &str) -> Vec<Value> {
        self.get(topo, &format!("/v1/vpn-connections/{conn}/logs?limit=1000"))["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Creates a single-tunnel gateway on 192.0.2.1 and the on-premises customer gateway;
    /// returns (gateway id, customer gateway id).
    fn base_resources(&self, topo: &Topology) -> (String, String) {
        let gw = self.post(
            topo,
            "/v1/vpn-gateways",
            json!({"name": "lab-gw", "ipsec_addresses": [GW1], "local_networks": ["172.16.0.0/16"]}),
        );
        let cgw = self.post(
            topo,
            "/v1/customer-gateways",
            json!({"name": "onprem", "ip_address": ONPREM}),
        );
        (id(&gw), id(&cgw))
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

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or("")
}

/// strongSwan on-premises as the product documentation configures it.
fn onprem_conn(local_ts: &str, remote_ts: &str, psk: &str) -> SwanctlConn {
    SwanctlConn {
        proposals: vec![SUITE.into()],
        dpd_delay: Some(10),
        ..SwanctlConn::psk("vpn", ONPREM, GW1, psk)
    }
    .child(SwanctlChild {
        esp_proposals: vec![SUITE.into()],
        dpd_action: Some("restart".into()),
        ..SwanctlChild::new("net", local_ts, remote_ts)
    })
}

fn traffic_both_ways(topo: &Topology) {
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

fn assert_established(t: &Value) {
    let s = &t["status"];
    assert_eq!(phase(s), "established", "{t:#}");
    assert_eq!(s["ike_sa"]["version"], "ikev2");
    assert_eq!(s["ike_sa"]["algorithms"], "aes128-sha1-modp1024");
    let child = &s["child_sas"][0];
    // The first Child SA comes with IKE_AUTH, without its own DH (RFC 7296 §1.2);
    // rekeys add the PFS group.
    let algs = child["algorithms"].as_str().unwrap_or("");
    assert!(algs.starts_with("aes128-sha1"), "{algs}");
    assert_eq!(child["spi_in"].as_str().map(str::len), Some(8));
}

#[test]
fn initiator_destination_mode_carries_ping_and_iperf() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    swan.load(&swanctl::render(&[onprem_conn(
        "0.0.0.0/0",
        "0.0.0.0/0",
        PSK,
    )]))
    .unwrap();

    let (gw_id, cgw_id) = gw.base_resources(&topo);
    let conn = gw.post(
        &topo,
        "/v1/vpn-connections",
        json!({
            "name": "to-onprem",
            "vpn_gateway_id": gw_id,
            "routing_mode": "destination",
            "effective_immediately": true,
            "tunnels": [{"customer_gateway_id": cgw_id, "pre_shared_key": PSK}],
        }),
    );
    let conn_id = id(&conn);
    gw.post(
        &topo,
        &format!("/v1/vpn-gateways/{gw_id}/routes"),
        json!({"destination": "10.2.0.0/24", "next_hop": conn_id, "weight": 100}),
    );
    let t = gw.wait_tunnel(
        &topo,
        &conn_id,
        "established",
        Duration::from_secs(20),
        |s| phase(s) == "established",
    );
    assert_established(&t);
    swan.wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        t["status"]["child_sas"][0]["local_ts"],
        json!(["0.0.0.0/0"]),
        "destination mode negotiates 0.0.0.0/0"
    );
    let g = gw.get(&topo, &format!("/v1/vpn-gateways/{gw_id}"));
    assert_eq!(g["status"], "running", "{g:#}");

    traffic_both_ways(&topo);

    let t = gw.wait_tunnel(&topo, &conn_id, "counters", Duration::from_secs(6), |s| {
        s["child_sas"][0]["bytes_out"].as_u64().unwrap_or(0) >= 100_000_000
    });
    assert_eq!(t["status"]["carrying_traffic"], true);
    let c = gw.get(&topo, &format!("/v1/vpn-connections/{conn_id}"));
    assert_eq!(c["connection_state"], "established");

    // Reset: the SAs are deleted and the tunnel renegotiates with new ones.
    let tunnel_id = t["id"].as_str().unwrap().to_string();
    let old_spi = t["status"]["child_sas"][0]["spi_in"].clone();
    let old_ike = t["status"]["ike_sa"]["spis"]["initiator"].clone();
    let (s, v) = gw.call(
        &topo,
        "POST",
        &format!("/v1/vpn-connections/{conn_id}/tunnels/{tunnel_id}/reset"),
        None,
    );
    assert_eq!(s, 202, "{v}");
    gw.wait_tunnel(
        &topo,
        &conn_id,
        "renegotiated after reset",
        Duration::from_secs(20),
        |s| {
            phase(s) == "established"
                && s["ike_sa"]["spis"]["initiator"] != old_ike
                && s["child_sas"][0]["spi_in"] != old_spi
        },
    );
    let r = lab::ping(
        &topo.vpc,
        topo.vpc_ip(),
        "10.2.0.1",
        3,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.received, 3, "after reset: {r:?}");

    let events: Vec<String> = gw
        .logs(&topo, &conn_id)
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_string))
        .collect();
    assert!(events.iter().any(|e| e == "esp_sa_installed"), "{events:?}");
    assert!(events.iter().any(|e| e == "reset_requested"), "{events:?}");
    let text = format!("{:?}", gw.logs(&topo, &conn_id));
    assert!(!text.contains(PSK), "the PSK must never be logged");
}

#[test]
fn responder_protected_flows_rekeys_without_loss() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    swan.load(&swanctl::render(&[onprem_conn(
        "10.2.0.0/24",
        "172.16.1.0/24",
        PSK,
    )]))
    .unwrap();

    let (gw_id, cgw_id) = gw.base_resources(&topo);
    let conn = gw.post(
        &topo,
        "/v1/vpn-connections",
        json!({
            "name": "flows",
            "vpn_gateway_id": gw_id,
            "routing_mode": "protected_flows",
            "local_subnets": ["172.16.1.0/24"],
            "remote_subnets": ["10.2.0.0/24"],
            "effective_immediately": false,
            "tunnels": [{
                "customer_gateway_id": cgw_id,
                "pre_shared_key": PSK,
                "ipsec": {"lifetime_s": 20},
            }],
        }),
    );
    let conn_id = id(&conn);
    // Not effective immediately: the node waits for the peer.
    let t = gw.wait_tunnel(&topo, &conn_id, "idle", Duration::from_secs(10), |s| {
        phase(s) == "idle" && s["reason"].as_str().is_some_and(|r| r.contains("waiting"))
    });
    assert!(t["status"]["ike_sa"].is_null());

    swan.initiate("net").unwrap();
    let t = gw.wait_tunnel(
        &topo,
        &conn_id,
        "established",
        Duration::from_secs(20),
        |s| phase(s) == "established",
    );
    assert_established(&t);
    assert_eq!(
        t["status"]["child_sas"][0]["local_ts"],
        json!(["172.16.1.0/24"])
    );
    assert_eq!(
        t["status"]["child_sas"][0]["remote_ts"],
        json!(["10.2.0.0/24"])
    );
    let first_spi = t["status"]["child_sas"][0]["spi_in"].clone();
    let table = gw.get(&topo, &format!("/v1/vpn-gateways/{gw_id}/route-table"));
    assert!(
        table["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["origin"] == "auto" && r["source"] == "172.16.1.0/24"),
        "{table:#}"
    );

    traffic_both_ways(&topo);

    // The Child SA lifetime is 20 s: we rekey at 17–18 s. A ping every 50 ms across it
    // must not lose a packet (make-before-break).
    let vpc = topo.vpc_ip().to_string();
    let monitor = PingMonitor::start(
        &topo.vpc,
        topo.workdir.path(),
        &vpc,
        "10.2.0.1",
        Duration::from_millis(50),
    )
    .unwrap();
    let t = gw.wait_tunnel(
        &topo,
        &conn_id,
        "a rekeyed Child SA",
        Duration::from_secs(30),
        |s| {
            phase(s) == "established"
                && s["child_sas"]
                    .as_array()
                    .is_some_and(|c| c.iter().all(|c| c["spi_in"] != first_spi) && !c.is_empty())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let report = monitor.stop().unwrap();
    assert!(report.sent > 20, "{report:?}");
    assert!(
        report.losses.is_empty(),
        "lost pings across the rekey: {report:?}"
    );
    assert_established(&t);
    let events: Vec<String> = gw
        .logs(&topo, &conn_id)
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_string))
        .collect();
    assert!(
        events.iter().filter(|e| *e == "esp_sa_installed").count() >= 2,
        "{events:?}"
    );

    // Deleting the connection deletes its SAs at the peer (INFORMATIONAL Delete) and
    // its kernel route.
    assert!(
        !topo
            .gw
            .ip(&["route", "show", "10.2.0.0/24"])
            .unwrap()
            .trim()
            .is_empty()
    );
    let (s, v) = gw.call(
        &topo,
        "DELETE",
        &format!("/v1/vpn-connections/{conn_id}"),
        None,
    );
    assert_eq!(s, 204, "{v}");
    swan.wait_sa(Duration::from_secs(10), "no IKE SA left", |sas| {
        (!sas.iter().any(|sa| sa.name == "vpn")).then_some(())
    })
    .unwrap();
    lab::wait_until(Duration::from_secs(5), "kernel route removed", || {
        Ok(topo
            .gw
            .ip(&["route", "show", "10.2.0.0/24"])?
            .trim()
            .is_empty()
            .then_some(()))
    })
    .unwrap();
}

#[test]
fn negotiation_failures_are_reported() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    swan.load(&swanctl::render(&[onprem_conn(
        "10.2.0.0/24",
        "172.16.1.0/24",
        PSK,
    )]))
    .unwrap();
    let (gw_id, cgw_id) = gw.base_resources(&topo);

    // 1. Wrong pre-shared key: phase 1 fails on authentication.
    let conn = gw.post(
        &topo,
        "/v1/vpn-connections",
        json!({
            "name": "failing",
            "vpn_gateway_id": gw_id,
            "routing_mode": "protected_flows",
            "local_subnets": ["172.16.1.0/24"],
            "remote_subnets": ["10.2.0.0/24"],
            "effective_immediately": true,
            "tunnels": [{"customer_gateway_id": cgw_id, "pre_shared_key": "not-the-psk"}],
        }),
    );
    let conn_id = id(&conn);
    let tunnel_id = conn["tunnels"][0]["id"].as_str().unwrap().to_string();
    let t = gw.wait_tunnel(
        &topo,
        &conn_id,
        "phase1_failed",
        Duration::from_secs(30),
        |s| phase(s) == "phase1_failed",
    );
    let reason = t["status"]["reason"].as_str().unwrap().to_lowercase();
    assert!(reason.contains("authentication"), "{reason}");
    let c = gw.get(&topo, &format!("/v1/vpn-connections/{conn_id}"));
    assert_eq!(c["connection_state"], "down");

    // 2. Right key, proposal mismatch: phase 1 fails naming the proposals.
    let path = format!("/v1/vpn-connections/{conn_id}/tunnels/{tunnel_id}");
    gw.patch(
        &topo,
        &path,
        json!({"pre_shared_key": PSK, "ike": {"encryption": "aes256", "dh_group": "group14"}}),
    );
    let t = gw.wait_tunnel(
        &topo,
        &conn_id,
        "phase1_failed (proposal)",
        Duration::from_secs(30),
        |s| {
            phase(s) == "phase1_failed"
                && s["reason"].as_str().is_some_and(|r| r.contains("aes256"))
        },
    );
    let reason = t["status"]["reason"].as_str().unwrap();
    assert!(reason.contains("aes256-sha1-modp2048"), "{reason}");

    // 3. Right proposal, traffic selectors the peer does not accept: phase 2 fails.
    gw.patch(
        &topo,
        &path,
        json!({"ike": {"encryption": "aes", "dh_group": "group2"}}),
    );
    let (s, v) = gw.call(
        &topo,
        "PATCH",
        &format!("/v1/vpn-connections/{conn_id}"),
        Some(json!({"remote_subnets": ["10.9.0.0/24"]})),
    );
    assert_eq!(s, 200, "{v}");
    let t = gw.wait_tunnel(
        &topo,
        &conn_id,
        "phase2_failed",
        Duration::from_secs(40),
        |s| phase(s) == "phase2_failed",
    );
    let reason = t["status"]["reason"].as_str().unwrap().to_lowercase();
    assert!(reason.contains("traffic selectors"), "{reason}");

    // 4. Repaired: the retries bring the tunnel up without operator action.
    let (s, v) = gw.call(
        &topo,
        "PATCH",
        &format!("/v1/vpn-connections/{conn_id}"),
        Some(json!({"remote_subnets": ["10.2.0.0/24"]})),
    );
    assert_eq!(s, 200, "{v}");
    gw.wait_tunnel(
        &topo,
        &conn_id,
        "established",
        Duration::from_secs(30),
        |s| phase(s) == "established",
    );

    let logs = gw.logs(&topo, &conn_id);
    let events: Vec<&str> = logs.iter().filter_map(|e| e["event"].as_str()).collect();
    for e in [
        "phase1_failed",
        "phase2_failed",
        "config_changed",
        "esp_sa_installed",
    ] {
        assert!(events.contains(&e), "no {e} in {events:?}");
    }
    let text = format!("{logs:?}");
    assert!(!text.contains(PSK) && !text.contains("not-the-psk"));

    // A gateway whose IPsec address is not on this node is in error, saying why.
    let bad = gw.post(
        &topo,
        "/v1/vpn-gateways",
        json!({"name": "elsewhere", "ipsec_addresses": ["192.0.2.77"], "local_networks": ["172.20.0.0/16"]}),
    );
    let path = format!("/v1/vpn-gateways/{}", id(&bad));
    let start = Instant::now();
    loop {
        let g = gw.get(&topo, &path);
        if g["status"] == "error" {
            let reason = g["status_reason"].as_str().unwrap();
            assert!(
                reason.contains("192.0.2.77") && reason.contains("not configured"),
                "{reason}"
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{g:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        gw.get(&topo, &format!("/v1/vpn-gateways/{gw_id}"))["status"],
        "running"
    );
}

#[test]
fn ikev1_main_mode_initiator_carries_ping() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    let conn = SwanctlConn {
        version: 1,
        ..onprem_conn("10.2.0.0/24", "172.16.1.0/24", PSK)
    };
    swan.load(&swanctl::render(&[conn])).unwrap();
    let (gw_id, cgw_id) = gw.base_resources(&topo);
    let conn = gw.post(
        &topo,
        "/v1/vpn-connections",
        json!({
            "name": "v1",
            "vpn_gateway_id": gw_id,
            "routing_mode": "protected_flows",
            "local_subnets": ["172.16.1.0/24"],
            "remote_subnets": ["10.2.0.0/24"],
            "effective_immediately": true,
            "tunnels": [{
                "customer_gateway_id": cgw_id,
                "pre_shared_key": PSK,
                "ike": {"version": "ikev1", "mode": "main"},
            }],
        }),
    );
    let conn_id = id(&conn);
    let t = gw.wait_tunnel(
        &topo,
        &conn_id,
        "established (IKEv1)",
        Duration::from_secs(20),
        |s| phase(s) == "established",
    );
    assert_eq!(t["status"]["ike_sa"]["version"], "ikev1", "{t:#}");
    swan.wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    let vpc = topo.vpc_ip().to_string();
    lab::wait_ping(&topo.vpc, &vpc, "10.2.0.1", Duration::from_secs(10)).unwrap();
    let r = lab::ping(&topo.onprem, "10.2.0.1", &vpc, 5, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, 5, "on-premises → VPC over IKEv1: {r:?}");
}

#[test]
fn traffic_from_the_vpc_triggers_negotiation() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    swan.load(&swanctl::render(&[onprem_conn(
        "0.0.0.0/0",
        "0.0.0.0/0",
        PSK,
    )]))
    .unwrap();
    let (gw_id, cgw_id) = gw.base_resources(&topo);
    let conn = gw.post(
        &topo,
        "/v1/vpn-connections",
        json!({
            "name": "on-demand",
            "vpn_gateway_id": gw_id,
            "effective_immediately": false,
            "tunnels": [{"customer_gateway_id": cgw_id, "pre_shared_key": PSK}],
        }),
    );
    let conn_id = id(&conn);
    gw.post(
        &topo,
        &format!("/v1/vpn-gateways/{gw_id}/routes"),
        json!({"destination": "10.2.0.0/24", "next_hop": conn_id}),
    );
    gw.wait_tunnel(&topo, &conn_id, "idle", Duration::from_secs(10), |s| {
        phase(s) == "idle" && s["reason"].as_str().is_some_and(|r| r.contains("traffic"))
    });
    // Nothing negotiates on its own.
    std::thread::sleep(Duration::from_secs(2));
    assert!(swan.list_sas().unwrap().is_empty());

    // The first packets from the VPC start the negotiation; ping then gets through.
    let vpc = topo.vpc_ip().to_string();
    lab::wait_ping(&topo.vpc, &vpc, "10.2.0.1", Duration::from_secs(15)).unwrap();
    let t = gw.wait_tunnel(
        &topo,
        &conn_id,
        "established",
        Duration::from_secs(5),
        |s| phase(s) == "established",
    );
    assert_established(&t);
    let events: Vec<String> = gw
        .logs(&topo, &conn_id)
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_string))
        .collect();
    assert!(
        events.iter().any(|e| e == "traffic_triggered"),
        "{events:?}"
    );
}
