//! The real `vpngw serve` binary (API + gateway node) in the lab's `gw` namespace against
//! a real strongSwan 5.9 in `onprem` (needs root and the lab's packages, see `lab`).
//! Resources are created over HTTP with the admin token, as an operator would.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lab::{Iperf3Server, Process, StrongSwan, SwanctlChild, SwanctlConn, Topology, swanctl};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_vpngw");
const PSK: &str = "serve-psk-9Kd";
const SUITE: &str = "aes128-sha1-modp1024";
const ONPREM: &str = "198.51.100.1";
const GW1: &str = "192.0.2.1";
const LISTEN: &str = "127.0.0.1:9280";

/// `vpngw serve` in the `gw` namespace; SIGTERM (then SIGKILL) on drop.
struct Serve {
    process: Process,
    data_dir: PathBuf,
    token: String,
}

impl Serve {
    fn start(topo: &Topology) -> Serve {
        let data_dir = topo.workdir.subdir("vpngw-data").unwrap();
        let dir = data_dir.to_string_lossy().to_string();
        let mut process = topo
            .gw
            .spawn(
                &[BIN, "--data-dir", &dir, "serve", "--listen", LISTEN],
                topo.workdir.path(),
                "vpngw-serve",
            )
            .unwrap();
        let token_file = data_dir.join("admin.token");
        lab::wait_until(Duration::from_secs(20), "vpngw serve healthy", || {
            process.ensure_running()?;
            let healthy = topo.gw.run_in(|| {
                ureq::get(&format!("http://{LISTEN}/healthz"))
                    .timeout(Duration::from_secs(2))
                    .call()
                    .is_ok()
            })?;
            Ok((healthy && token_file.exists()).then_some(()))
        })
        .unwrap();
        let token = std::fs::read_to_string(&token_file)
            .unwrap()
            .trim()
            .to_string();
        Serve {
            process,
            data_dir,
            token,
        }
    }

    fn call(&self, topo: &Topology, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("http://{LISTEN}{path}");
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

    fn wait_tunnel(
        &self,
        topo: &Topology,
        conn: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let t = self.get(topo, &format!("/v1/vpn-connections/{conn}"))["tunnels"][0].clone();
            if pred(&t["status"]) {
                return t;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let logs = self.get(topo, &format!("/v1/vpn-connections/{conn}/logs"));
                panic!(
                    "timed out waiting for {what}; tunnel: {t:#}\nlogs: {:#}\nvpngw log:\n{}",
                    logs["items"],
                    self.process.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

/// strongSwan on-premises as the product documentation configures it (destination
/// routing mode: 0.0.0.0/0 selectors).
fn onprem_conn() -> SwanctlConn {
    SwanctlConn {
        proposals: vec![SUITE.into()],
        dpd_delay: Some(10),
        ..SwanctlConn::psk("vpn", ONPREM, GW1, PSK)
    }
    .child(SwanctlChild {
        esp_proposals: vec![SUITE.into()],
        dpd_action: Some("restart".into()),
        ..SwanctlChild::new("net", "0.0.0.0/0", "0.0.0.0/0")
    })
}

#[test]
fn vpngw_serve_brings_up_a_tunnel_with_strongswan() {
    let topo = Topology::new().unwrap();
    let serve = Serve::start(&topo);
    assert!(serve.data_dir().join("admin.token").exists());
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    swan.load(&swanctl::render(&[onprem_conn()])).unwrap();

    let gw = serve.post(
        &topo,
        "/v1/vpn-gateways",
        json!({"name": "lab-gw", "ipsec_addresses": [GW1], "local_networks": ["172.16.0.0/16"]}),
    );
    let gw_id = id(&gw);
    let cgw = serve.post(
        &topo,
        "/v1/customer-gateways",
        json!({"name": "onprem", "ip_address": ONPREM}),
    );
    let conn = serve.post(
        &topo,
        "/v1/vpn-connections",
        json!({
            "name": "to-onprem",
            "vpn_gateway_id": gw_id,
            "effective_immediately": true,
            "tunnels": [{"customer_gateway_id": id(&cgw), "pre_shared_key": PSK}],
        }),
    );
    let conn_id = id(&conn);
    serve.post(
        &topo,
        &format!("/v1/vpn-gateways/{gw_id}/routes"),
        json!({"destination": "10.2.0.0/24", "next_hop": conn_id}),
    );
    let t = serve.wait_tunnel(&topo, &conn_id, "established", |s| {
        s["phase"] == "established"
    });
    assert_eq!(t["status"]["ike_sa"]["algorithms"], SUITE);
    swan.wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        serve.get(&topo, &format!("/v1/vpn-gateways/{gw_id}"))["status"],
        "running"
    );

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

    let t = serve.wait_tunnel(&topo, &conn_id, "counters", |s| {
        s["child_sas"][0]["bytes_out"].as_u64().unwrap_or(0) >= 100_000_000
    });
    assert_eq!(t["status"]["carrying_traffic"], true);
    let logs = serve.get(
        &topo,
        &format!("/v1/vpn-connections/{conn_id}/logs?limit=1000"),
    );
    let text = logs.to_string();
    assert!(text.contains("esp_sa_installed"), "{text}");
    assert!(!text.contains(PSK));

    // SIGTERM: the node deletes its SAs at the peer on the way out.
    drop(serve);
    swan.wait_sa(
        Duration::from_secs(10),
        "the IKE SA deleted by vpngw's shutdown",
        |sas| (!sas.iter().any(|sa| sa.name == "vpn")).then_some(()),
    )
    .unwrap();
}
