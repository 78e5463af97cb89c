//! End to end: the real `vpngw serve` binary on a temporary data directory and a free
//! loopback port, driven by the real CLI binary; killed and restarted, it still has
//! everything.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_vpngw");

/// A running `vpngw serve`, killed on drop (also when the test fails).
struct Server {
    child: Child,
    url: String,
    data_dir: PathBuf,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        // The port is free when asked; a race with another process is possible but rare,
        // and then the health wait below fails loudly.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = fs::File::create(data_dir.with_extension(format!("{port}.log"))).unwrap();
        let child = Command::new(BIN)
            .args([
                "serve",
                // No gateway node: this test runs in the host's namespace.
                "--no-node",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .env_remove("VPNGW_TOKEN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vpngw serve");
        let server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            data_dir: data_dir.to_path_buf(),
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(2))
            .build();
        loop {
            let r = agent.get(&format!("{}/healthz", self.url)).call();
            if matches!(r, Ok(r) if r.status() == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "vpngw serve did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the CLI against this server; returns (success, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.cli_stdin(args, None)
    }

    fn cli_stdin(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("VPNGW_SERVER", &self.url)
            .env("VPNGW_DATA_DIR", &self.data_dir)
            .env_remove("VPNGW_TOKEN")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the CLI with `--json` and expects success.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.cli(&all);
        assert!(ok, "vpngw {args:?} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Polls `vpngw --json ARGS` until the JSON pointer `at` equals `want` (bounded).
    fn wait_for(&self, args: &[&str], at: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.json(args);
            if v.pointer(at).and_then(Value::as_str) == Some(want) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{args:?}: {at} stayed {:?}, want {want}",
                v.pointer(at)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap()
}

#[test]
fn cli_against_real_server_survives_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("admin.token")), 0o600);
    assert_eq!(mode(&data.join("vpngw.db")), 0o600);
    let token = fs::read_to_string(data.join("admin.token")).unwrap();

    let gw = server.json(&[
        "gateway",
        "create",
        "--name",
        "hq",
        "--ipsec-address",
        "192.0.2.1",
        "--ipsec-address",
        "192.0.2.2",
        "--local-network",
        "10.0.0.0/16",
        "--tag",
        "env=prod",
    ]);
    let gw_id = s(&gw["id"]).to_string();
    let cgw = server.json(&[
        "customer-gateway",
        "create",
        "--name",
        "branch",
        "--ip-address",
        "203.0.113.7",
        "--asn",
        "1.10",
    ]);
    assert_eq!(cgw["asn"], 65546);
    let cgw_id = s(&cgw["id"]).to_string();
    let conn = server.json(&[
        "connection",
        "create",
        "--name",
        "to-branch",
        "--gateway",
        &gw_id,
        "--customer-gateway",
        &cgw_id,
        "--psk",
        "Sup3r-Secret!",
        "--ike-version",
        "ikev1",
        "--ike-mode",
        "aggressive",
        "--ike-encryption",
        "aes256",
        "--ike-dh-group",
        "group14",
        "--ipsec-integrity",
        "sha256",
        "--pfs",
        "disabled",
        "--remote-id",
        "branch.example.com",
        "--local-subnet",
        "10.0.1.0/24",
        "--remote-subnet",
        "172.16.0.0/24",
        "--routing-mode",
        "protected_flows",
    ]);
    let conn_id = s(&conn["id"]).to_string();
    // Controller only (--no-node): the stored state is applied, and the gateway says that
    // no node is attached.
    let shown_gw = server.wait_for(&["gateway", "show", &gw_id], "/status", "running");
    assert!(
        s(&shown_gw["status_reason"]).contains("no gateway node attached"),
        "{shown_gw}"
    );
    server.wait_for(&["connection", "show", &conn_id], "/status", "running");
    let t0 = &conn["tunnels"][0];
    assert_eq!(t0["ike"]["version"], "ikev1");
    assert_eq!(t0["ike"]["mode"], "aggressive");
    assert_eq!(t0["ike"]["remote_id"], "branch.example.com");
    assert_eq!(conn["tunnels"][1]["ipsec"]["pfs"], "disabled");
    assert!(!conn.to_string().contains("Sup3r-Secret!"));
    let tun_id = s(&t0["id"]).to_string();

    // The peer's configuration: both tunnels, the keys, the addresses seen from the peer.
    let (ok, swanctl, err) = server.cli(&["connection", "peer-config", &conn_id]);
    assert!(ok, "{err}");
    assert_eq!(
        swanctl.matches("secret = \"Sup3r-Secret!\"").count(),
        2,
        "{swanctl}"
    );
    assert_eq!(
        swanctl.matches("local_addrs = 203.0.113.7").count(),
        2,
        "{swanctl}"
    );
    assert!(swanctl.contains("remote_addrs = 192.0.2.1"), "{swanctl}");
    assert!(swanctl.contains("remote_addrs = 192.0.2.2"), "{swanctl}");
    assert!(swanctl.contains("aggressive = yes"), "{swanctl}");
    let file = tmp.path().join("peer.conf");
    let (ok, out, err) = server.cli(&[
        "connection",
        "peer-config",
        &conn_id,
        "--format",
        "swanctl",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("peer.conf"), "{out}");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(fs::read_to_string(&file).unwrap(), swanctl);
    let (ok, json_conf, err) =
        server.cli(&["connection", "peer-config", &conn_id, "--format", "json"]);
    assert!(ok, "{err}");
    let json_conf: Value = serde_json::from_str(&json_conf).unwrap();
    assert!(json_conf.to_string().contains("Sup3r-Secret!"));
    let (ok, _, err) = server.cli(&["connection", "peer-config", &conn_id, "--format", "cisco"]);
    assert!(!ok);
    assert!(
        err.contains("format") && err.contains("cisco-ios") && err.contains("400"),
        "{err}"
    );
    let (ok, _, err) = server.cli(&["connection", "peer-config", &conn_id, "--format", "frr"]);
    assert!(!ok);
    assert!(err.contains("BGP") && err.contains("409"), "{err}");
    let (ok, out, err) = server.cli(&["-q", "peer-config-formats"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "swanctl",
            "ipsec-conf",
            "frr",
            "json",
            "cisco-ios",
            "juniper-srx",
            "huawei-vrp",
            "fortigate",
            "paloalto"
        ]
    );
    let (ok, out, _) = server.cli(&["peer-config-formats"]);
    assert!(
        ok && out.contains("TARGETS") && out.contains("strongSwan"),
        "{out}"
    );

    // A full JSON body on stdin.
    let body = format!(
        r#"{{"name": "from-json", "vpn_gateway_id": "{gw_id}", "tunnels": [
            {{"customer_gateway_id": "{cgw_id}", "ike": {{"integrity": "sha512"}}}},
            {{"customer_gateway_id": "{cgw_id}"}}]}}"#
    );
    let (ok, out, err) = server.cli_stdin(
        &["--json", "connection", "create", "--from-json", "-"],
        Some(&body),
    );
    assert!(ok, "{err}");
    let conn2: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(conn2["tunnels"][0]["ike"]["integrity"], "sha512");
    let conn2_id = s(&conn2["id"]).to_string();

    let route = server.json(&[
        "route",
        "add",
        &gw_id,
        "--destination",
        "192.168.0.0/16",
        "--next-hop",
        &conn2_id,
        "--publish",
    ]);
    let route_id = s(&route["id"]).to_string();
    let policy = server.json(&[
        "policy-route",
        "add",
        &gw_id,
        "--source",
        "10.0.2.0/24",
        "--destination",
        "192.168.5.0/24",
        "--next-hop",
        &conn2_id,
        "--priority",
        "3",
    ]);

    // Errors: the API's message, non-zero exit.
    let (ok, _, err) = server.cli(&[
        "connection",
        "create",
        "--name",
        "bad",
        "--gateway",
        &gw_id,
        "--customer-gateway",
        &cgw_id,
        "--psk",
        "has space",
    ]);
    assert!(!ok);
    assert!(err.contains("tunnels[0].pre_shared_key"), "{err}");
    assert!(!err.contains("has space"), "{err}");
    let (ok, _, err) = server.cli(&["gateway", "delete", &gw_id]);
    assert!(!ok);
    assert!(err.contains("409") && err.contains("connection"), "{err}");
    let (ok, out, _) = server.cli(&["route-table", &gw_id]);
    assert!(ok);
    assert!(
        out.contains("DESTINATION") && out.contains("auto") && out.contains("policy"),
        "{out}"
    );

    // Kill hard (no graceful shutdown) and start again on another port.
    server.kill();
    let server = Server::start(&data);
    assert_eq!(fs::read_to_string(data.join("admin.token")).unwrap(), token);
    assert_eq!(mode(&data.join("admin.token")), 0o600);

    let gws = server.json(&["gateway", "list"]);
    assert_eq!(gws["items"].as_array().unwrap().len(), 1);
    assert_eq!(gws["items"][0]["connection_count"], 2);
    assert_eq!(gws["items"][0]["tags"]["env"], "prod");
    assert_eq!(
        server.json(&["customer-gateway", "show", &cgw_id])["tunnel_count"],
        4
    );
    let conns = server.json(&["connection", "list", "--gateway", &gw_id]);
    assert_eq!(conns["items"].as_array().unwrap().len(), 2);
    let shown = server.json(&["connection", "show", &conn_id]);
    assert_eq!(shown["tunnels"][0]["ike"]["encryption"], "aes256");
    assert_eq!(shown["routing_mode"], "protected_flows");
    let revealed = server.json(&["tunnel", "show", &conn_id, &tun_id, "--reveal-psk"]);
    assert_eq!(revealed["pre_shared_key"], "Sup3r-Secret!");
    let routes = server.json(&["route", "list", &gw_id]);
    assert_eq!(routes["items"][0]["id"], route_id.as_str());
    assert_eq!(
        server.json(&["policy-route", "list", &gw_id])["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let table = server.json(&["route-table", &gw_id]);
    let origins: Vec<&str> = table["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(&e["origin"]))
        .collect();
    assert_eq!(origins, ["static", "policy", "auto"]);
    let logs = server.json(&["connection", "logs", &conn_id]);
    assert_eq!(logs["items"][0]["event"], "created");

    // Updates from the CLI, then the human output.
    let updated = server.json(&[
        "tunnel",
        "update",
        &conn_id,
        &tun_id,
        "--psk",
        "Another-Key2",
    ]);
    // `updating` until the controller applied it (it may already have when it answers).
    assert!(
        updated["state"] == "updating" || updated["state"] == "active",
        "{updated}"
    );
    server.wait_for(&["tunnel", "show", &conn_id, &tun_id], "/state", "active");
    server.wait_for(&["connection", "show", &conn_id], "/status", "running");
    let revealed = server.json(&["tunnel", "show", &conn_id, &tun_id, "--reveal-psk"]);
    assert_eq!(revealed["pre_shared_key"], "Another-Key2");
    let (ok, out, _) = server.cli(&["connection", "peer-config", &conn_id]);
    assert!(ok);
    assert!(out.contains("secret = \"Another-Key2\""), "{out}");
    let (ok, out, _) = server.cli(&["connection", "list"]);
    assert!(ok);
    assert!(
        out.contains("to-branch") && out.contains("from-json") && out.contains("running"),
        "{out}"
    );

    let (ok, out, _) = server.cli(&["-q", "tunnel", "list", &conn_id]);
    assert!(ok);
    assert_eq!(out.lines().next(), Some(tun_id.as_str()));
    assert_eq!(out.lines().count(), 2);
    let (ok, out, _) = server.cli(&["-q", "gateway", "list"]);
    assert!(ok);
    assert_eq!(out.trim(), gw_id);

    // Tear down in order.
    let (ok, _, err) = server.cli(&["route", "delete", &gw_id, &route_id]);
    assert!(ok, "{err}");
    let (ok, _, err) = server.cli(&["policy-route", "delete", &gw_id, s(&policy["id"])]);
    assert!(ok, "{err}");
    for c in [&conn_id, &conn2_id] {
        let (ok, _, err) = server.cli(&["connection", "delete", c]);
        assert!(ok, "{err}");
    }
    let (ok, _, err) = server.cli(&["customer-gateway", "delete", &cgw_id]);
    assert!(ok, "{err}");
    let (ok, out, err) = server.cli(&["gateway", "delete", &gw_id]);
    assert!(ok, "{err}");
    assert!(out.contains(&gw_id));
}

#[test]
fn cli_needs_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["gateway", "list", "--server", "http://127.0.0.1:9"])
        .env("VPNGW_DATA_DIR", tmp.path())
        .env_remove("VPNGW_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("VPNGW_TOKEN"));
}

/// The SAs, BGP session and routes a tunnel had ended with the process that had them:
/// after a restart the tunnel shows `idle` and says why, not what the previous run
/// last stored (with `--no-node` nothing would ever replace it). Configuration and logs
/// stay.
#[test]
fn a_restart_clears_what_the_previous_run_observed() {
    use store::Store;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let gw = server.json(&[
        "gateway",
        "create",
        "--name",
        "hq",
        "--ipsec-address",
        "192.0.2.1",
        "--local-network",
        "10.0.0.0/16",
    ]);
    let cgw = server.json(&[
        "customer-gateway",
        "create",
        "--name",
        "branch",
        "--ip-address",
        "203.0.113.7",
    ]);
    let conn = server.json(&[
        "connection",
        "create",
        "--name",
        "to-branch",
        "--gateway",
        s(&gw["id"]),
        "--customer-gateway",
        s(&cgw["id"]),
        "--psk",
        "Sup3r-Secret!",
    ]);
    let conn_id = s(&conn["id"]).to_string();
    let tun_id = s(&conn["tunnels"][0]["id"]).to_string();
    server.kill();

    // What a node stored just before the process died: an established tunnel carrying
    // traffic, with a BGP session and a route it learned.
    let observed: model::TunnelStatus = serde_json::from_value(serde_json::json!({
        "phase": "established",
        "reason": null,
        "since": "2026-11-24T10:00:00Z",
        "carrying_traffic": true,
        "ike_sa": {"version": "ikev2", "spis": {"initiator": "0102030405060708",
                   "responder": "1112131415161718"}, "algorithms": "aes128-sha1-modp1024",
                   "established_at": "2026-11-24T10:00:00Z", "rekey_at": null},
        "child_sas": [{"spi_in": "c0000001", "spi_out": "c0000002", "local_ts": ["10.0.0.0/16"],
                       "remote_ts": ["172.16.0.0/24"], "algorithms": "aes128-sha1",
                       "bytes_in": 1, "bytes_out": 2, "packets_in": 1, "packets_out": 1}],
        "bgp": {"state": "established", "peer_asn": 65530, "routes_received": 1,
                "routes_advertised": 1},
        "health": {"state": "up", "last_rtt_ms": 0.4},
    }))
    .unwrap();
    let routes: model::BgpRoutes = serde_json::from_value(serde_json::json!({
        "received": [{"prefix": "172.16.9.0/24", "as_path": [65530], "next_hop": "169.254.10.2",
                      "origin": "igp", "med": null, "best": true}],
    }))
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = store::SqliteStore::open(&data).unwrap();
        store.set_tunnel_status(&tun_id, &observed).await.unwrap();
        store.set_tunnel_bgp_routes(&tun_id, &routes).await.unwrap();
    });

    let server = Server::start(&data);
    let t = server.json(&["tunnel", "show", &conn_id, &tun_id]);
    let status = &t["status"];
    assert_eq!(status["phase"], "idle", "{t:#}");
    assert!(
        s(&status["reason"]).starts_with("vpngw restarted at "),
        "{t:#}"
    );
    assert_eq!(status["carrying_traffic"], false, "{t:#}");
    for gone in ["ike_sa", "bgp", "health"] {
        assert!(status[gone].is_null(), "{gone}: {t:#}");
    }
    assert_eq!(status["child_sas"], serde_json::json!([]), "{t:#}");
    let bgp = server.json(&["connection", "bgp-routes", &conn_id]);
    assert_eq!(
        bgp["items"][0]["received"],
        serde_json::json!([]),
        "{bgp:#}"
    );
    assert_eq!(t["pre_shared_key"], Value::Null, "never shown unasked");
    let revealed = server.json(&["tunnel", "show", &conn_id, &tun_id, "--reveal-psk"]);
    assert_eq!(revealed["pre_shared_key"], "Sup3r-Secret!");
    let logs = server.json(&["connection", "logs", &conn_id]);
    assert_eq!(logs["items"][0]["event"], "created", "{logs:#}");
}
