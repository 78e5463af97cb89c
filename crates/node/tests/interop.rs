//! Interop with a real strongSwan 5.9 (needs root; the lab's packages, see `lab`).
//!
//! Each test builds the lab (`vpc — gw — inet — onprem`), runs the HTTP API and the
//! gateway node in-process inside the `gw` namespace (what `vpngw serve` does: SQLite
//! store, admin token, node subscribed to the API's change notification), configures
//! strongSwan in `onprem` the way the product documentation configures an on-premises
//! peer, creates the gateway, customer gateway, connection and routes over HTTP with the
//! admin token, and checks traffic, tunnel status and connection logs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::time::{Duration, Instant};

mod common;

use common::{
    Gateway, phase, swan_deletes_the_child, swan_reconnects, traffic_both_ways, vpc_ping_monitor,
};
use lab::vpngw::id;
use lab::{StrongSwan, SwanctlChild, SwanctlConn, Topology, swanctl};
use serde_json::{Value, json};

const PSK: &str = "lab-psk-Xq7";
const SUITE: &str = "aes128-sha1-modp1024";
const ONPREM: &str = "198.51.100.1";
const GW1: &str = "192.0.2.1";

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

/// Creates a protected-flows connection (172.16.1.0/24 here, 10.2.0.0/24 on-premises)
/// with one tunnel to strongSwan: the PSK, a new customer gateway and `tunnel`'s
/// settings. Returns the created connection.
fn flows_connection(gw: &Gateway, name: &str, effective_immediately: bool, tunnel: Value) -> Value {
    let (gw_id, cgw_id) = gw.base_resources(GW1, ONPREM);
    let mut t = json!({"customer_gateway_id": cgw_id, "pre_shared_key": PSK});
    if let (Some(t), Value::Object(extra)) = (t.as_object_mut(), tunnel) {
        t.extend(extra);
    }
    gw.post(
        "/v1/vpn-connections",
        json!({
            "name": name,
            "vpn_gateway_id": gw_id,
            "routing_mode": "protected_flows",
            "local_subnets": ["172.16.1.0/24"],
            "remote_subnets": ["10.2.0.0/24"],
            "effective_immediately": effective_immediately,
            "tunnels": [t],
        }),
    )
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
    let gw = Gateway::start(&topo.gw);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    swan.load(&swanctl::render(&[onprem_conn(
        "0.0.0.0/0",
        "0.0.0.0/0",
        PSK,
    )]))
    .unwrap();

    let (gw_id, cgw_id) = gw.base_resources(GW1, ONPREM);
    let conn = gw.post(
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
        &format!("/v1/vpn-gateways/{gw_id}/routes"),
        json!({"destination": "10.2.0.0/24", "next_hop": conn_id, "weight": 100}),
    );
    let t = gw.wait_tunnel(&conn_id, "established", Duration::from_secs(20), |s| {
        phase(s) == "established"
    });
    assert_established(&t);
    swan.wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        t["status"]["child_sas"][0]["local_ts"],
        json!(["0.0.0.0/0"]),
        "destination mode negotiates 0.0.0.0/0"
    );
    let g = gw.get(&format!("/v1/vpn-gateways/{gw_id}"));
    assert_eq!(g["status"], "running", "{g:#}");

    traffic_both_ways(&topo);

    let t = gw.wait_tunnel(&conn_id, "counters", Duration::from_secs(6), |s| {
        s["child_sas"][0]["bytes_out"].as_u64().unwrap_or(0) >= 100_000_000
    });
    assert_eq!(t["status"]["carrying_traffic"], true);
    let c = gw.get(&format!("/v1/vpn-connections/{conn_id}"));
    assert_eq!(c["connection_state"], "established");

    // Reset: the SAs are deleted and the tunnel renegotiates with new ones.
    let tunnel_id = t["id"].as_str().unwrap().to_string();
    let old_spi = t["status"]["child_sas"][0]["spi_in"].clone();
    let old_ike = t["status"]["ike_sa"]["spis"]["initiator"].clone();
    let (s, v) = gw.call(
        "POST",
        &format!("/v1/vpn-connections/{conn_id}/tunnels/{tunnel_id}/reset"),
        None,
    );
    assert_eq!(s, 202, "{v}");
    gw.wait_tunnel(
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
        .logs(&conn_id, 1000)
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_string))
        .collect();
    assert!(events.iter().any(|e| e == "esp_sa_installed"), "{events:?}");
    assert!(events.iter().any(|e| e == "reset_requested"), "{events:?}");
    let text = format!("{:?}", gw.logs(&conn_id, 1000));
    assert!(!text.contains(PSK), "the PSK must never be logged");
}

#[test]
fn responder_protected_flows_rekeys_without_loss() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    swan.load(&swanctl::render(&[onprem_conn(
        "10.2.0.0/24",
        "172.16.1.0/24",
        PSK,
    )]))
    .unwrap();

    let conn = flows_connection(&gw, "flows", false, json!({"ipsec": {"lifetime_s": 20}}));
    let conn_id = id(&conn);
    // Not effective immediately: the node waits for the peer.
    let t = gw.wait_tunnel(&conn_id, "idle", Duration::from_secs(10), |s| {
        phase(s) == "idle" && s["reason"].as_str().is_some_and(|r| r.contains("waiting"))
    });
    assert!(t["status"]["ike_sa"].is_null());

    swan.initiate("net").unwrap();
    let t = gw.wait_tunnel(&conn_id, "established", Duration::from_secs(20), |s| {
        phase(s) == "established"
    });
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
    // strongSwan sends no vpngw vendor ID: we answer with the standard NAT detection
    // (whatever encapsulation follows is strongSwan's own choice, as before).
    let logs = gw.logs(&conn_id, 100);
    assert!(
        logs.iter().any(|e| e["event"] == "ike_sa_init")
            && !logs.iter().any(|e| e["message"]
                .as_str()
                .is_some_and(|m| m.contains("UDP encapsulation forced"))),
        "{logs:#?}"
    );
    let gw_id = conn["vpn_gateway_id"].as_str().unwrap();
    let table = gw.get(&format!("/v1/vpn-gateways/{gw_id}/route-table"));
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
    let monitor = vpc_ping_monitor(&topo);
    let t = gw.wait_tunnel(
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
        .logs(&conn_id, 1000)
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
    let (s, v) = gw.call("DELETE", &format!("/v1/vpn-connections/{conn_id}"), None);
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
    let gw = Gateway::start(&topo.gw);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    swan.load(&swanctl::render(&[onprem_conn(
        "10.2.0.0/24",
        "172.16.1.0/24",
        PSK,
    )]))
    .unwrap();
    let (gw_id, cgw_id) = gw.base_resources(GW1, ONPREM);

    // 1. Wrong pre-shared key: phase 1 fails on authentication.
    let conn = gw.post(
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
    let t = gw.wait_tunnel(&conn_id, "phase1_failed", Duration::from_secs(30), |s| {
        phase(s) == "phase1_failed"
    });
    let reason = t["status"]["reason"].as_str().unwrap().to_lowercase();
    assert!(
        reason.contains("authentication") && reason.contains("pre-shared key"),
        "{reason}"
    );
    let c = gw.get(&format!("/v1/vpn-connections/{conn_id}"));
    assert_eq!(c["connection_state"], "down");

    // 2. Right key, proposal mismatch: phase 1 fails naming the proposals.
    let path = format!("/v1/vpn-connections/{conn_id}/tunnels/{tunnel_id}");
    gw.patch(
        &path,
        json!({"pre_shared_key": PSK, "ike": {"encryption": "aes256", "dh_group": "group14"}}),
    );
    let t = gw.wait_tunnel(
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
        &path,
        json!({"ike": {"encryption": "aes", "dh_group": "group2"}}),
    );
    let (s, v) = gw.call(
        "PATCH",
        &format!("/v1/vpn-connections/{conn_id}"),
        Some(json!({"remote_subnets": ["10.9.0.0/24"]})),
    );
    assert_eq!(s, 200, "{v}");
    let t = gw.wait_tunnel(&conn_id, "phase2_failed", Duration::from_secs(40), |s| {
        phase(s) == "phase2_failed"
    });
    let reason = t["status"]["reason"].as_str().unwrap().to_lowercase();
    assert!(reason.contains("traffic selectors"), "{reason}");

    // 4. Repaired: the retries bring the tunnel up without operator action.
    let (s, v) = gw.call(
        "PATCH",
        &format!("/v1/vpn-connections/{conn_id}"),
        Some(json!({"remote_subnets": ["10.2.0.0/24"]})),
    );
    assert_eq!(s, 200, "{v}");
    gw.wait_tunnel(&conn_id, "established", Duration::from_secs(30), |s| {
        phase(s) == "established"
    });

    // 5. An identity of ours the peer does not expect (strongSwan expects our address):
    // the peer answers AUTHENTICATION_FAILED as for a wrong key, so the reason names
    // both and the identity we sent.
    gw.patch(&path, json!({"ike": {"local_id": "gw.example.com"}}));
    let t = gw.wait_tunnel(
        &conn_id,
        "phase1_failed (identity)",
        Duration::from_secs(30),
        |s| {
            phase(s) == "phase1_failed"
                && s["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("gw.example.com"))
        },
    );
    let reason = t["status"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("pre-shared key") && reason.contains("ike.local_id"),
        "{reason}"
    );
    gw.patch(&path, json!({"ike": {"local_id": GW1}}));
    gw.wait_tunnel(
        &conn_id,
        "established (identity repaired)",
        Duration::from_secs(30),
        |s| phase(s) == "established",
    );

    let logs = gw.logs(&conn_id, 1000);
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
    let bad = gw.post("/v1/vpn-gateways",
        json!({"name": "elsewhere", "ipsec_addresses": ["192.0.2.77"], "local_networks": ["172.20.0.0/16"]}),
    );
    let path = format!("/v1/vpn-gateways/{}", id(&bad));
    let start = Instant::now();
    loop {
        let g = gw.get(&path);
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
        gw.get(&format!("/v1/vpn-gateways/{gw_id}"))["status"],
        "running"
    );
}

#[test]
fn ikev1_main_mode_initiator_carries_ping() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let (_swan, _conn_id) = ikev1_tunnel(&topo, &gw, "v1", |_| {}, json!({}));
    let vpc = topo.vpc_ip().to_string();
    let r = lab::ping(&topo.onprem, "10.2.0.1", &vpc, 5, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, 5, "on-premises → VPC over IKEv1: {r:?}");
}

/// An IKEv1 Main Mode tunnel that vpngw initiates to strongSwan (its CHILD_SA shaped
/// by `child`, ours by `ipsec`), up on both ends and carrying pings from the VPC:
/// strongSwan and the connection's id.
fn ikev1_tunnel(
    topo: &Topology,
    gw: &Gateway,
    name: &str,
    child: impl FnOnce(&mut SwanctlChild),
    ipsec: Value,
) -> (StrongSwan, String) {
    ikev1_tunnel_in(topo, gw, name, "main", child, ipsec)
}

/// [`ikev1_tunnel`] in IKEv1 `mode` (`main` or `aggressive`, on both ends).
fn ikev1_tunnel_in(
    topo: &Topology,
    gw: &Gateway,
    name: &str,
    mode: &str,
    child: impl FnOnce(&mut SwanctlChild),
    ipsec: Value,
) -> (StrongSwan, String) {
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    let mut conn = SwanctlConn {
        version: 1,
        aggressive: mode == "aggressive",
        ..onprem_conn("10.2.0.0/24", "172.16.1.0/24", PSK)
    };
    child(&mut conn.children[0]);
    swan.load(&swanctl::render(&[conn])).unwrap();
    let conn = flows_connection(
        gw,
        name,
        true,
        json!({"ike": {"version": "ikev1", "mode": mode}, "ipsec": ipsec}),
    );
    let conn_id = id(&conn);
    let t = gw.wait_tunnel(
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
    (swan, conn_id)
}

/// `ike.version` differs between vpngw and strongSwan, each initiating in turn: every
/// failure names the version setting, and a tunnel's own peer speaking the other version
/// is not reported as an address no tunnel expects (`unknown_peer`).
#[test]
fn an_ike_version_mismatch_is_named_whoever_initiates() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    let (v1, v2) = (
        SwanctlConn {
            version: 1,
            ..onprem_conn("10.2.0.0/24", "172.16.1.0/24", PSK)
        },
        onprem_conn("10.2.0.0/24", "172.16.1.0/24", PSK),
    );
    let conn = flows_connection(&gw, "versions", false, json!({"ike": {"version": "ikev1"}}));
    let conn_id = id(&conn);
    let path = format!(
        "/v1/vpn-connections/{conn_id}/tunnels/{}",
        conn["tunnels"][0]["id"].as_str().unwrap()
    );
    for (ours, theirs) in [("ikev1", &v2), ("ikev2", &v1)] {
        swan.load(&swanctl::render(std::slice::from_ref(theirs)))
            .unwrap();
        // vpngw initiates: strongSwan has no connection of that version for us and
        // answers NO_PROPOSAL_CHOSEN ("no IKE config found").
        let other = if ours == "ikev1" { "IKEv1" } else { "IKEv2" };
        let missing = format!("no {other} connection for this gateway's address");
        gw.patch(&path, json!({"ike": {"version": ours}}));
        let (s, v) = gw.call(
            "PATCH",
            &format!("/v1/vpn-connections/{conn_id}"),
            Some(json!({"effective_immediately": true})),
        );
        assert_eq!(s, 200, "{v}");
        let t = gw.wait_tunnel(&conn_id, "phase1_failed", Duration::from_secs(30), |s| {
            phase(s) == "phase1_failed"
                && s["reason"].as_str().is_some_and(|r| r.contains(&missing))
        });
        let reason = t["status"]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("NO")
                && reason.contains("PROPOSAL")
                && reason.contains("ike.version must match on both sides"),
            "{reason}"
        );
        // strongSwan initiates: vpngw says which version came and which it expects,
        // and answers at once. A refusal is logged at most every 10 s per tunnel, so
        // strongSwan tries until one is.
        let came = if ours == "ikev1" {
            "started IKEv2 (IKE_SA_INIT); this tunnel is configured for IKEv1"
        } else {
            "started IKEv1 Main Mode; this tunnel is configured for IKEv2"
        };
        let logged = |gw: &Gateway| {
            gw.logs(&conn_id, 1000).into_iter().find_map(|e| {
                e["message"]
                    .as_str()
                    .filter(|m| m.contains(came))
                    .map(str::to_string)
            })
        };
        let start = Instant::now();
        let m = loop {
            let tried = Instant::now();
            let refused = swan.initiate("net").unwrap_err().to_string();
            assert!(tried.elapsed() < Duration::from_secs(5), "{refused}");
            assert!(refused.contains("NO_PROP"), "{refused}");
            if let Some(m) = logged(&gw) {
                break m;
            }
            assert!(
                start.elapsed() < Duration::from_secs(25),
                "{:#?}",
                gw.logs(&conn_id, 30)
            );
            std::thread::sleep(Duration::from_secs(1));
        };
        assert!(m.contains("ike.version must match"), "{m}");
    }
    let events = gw.events(&conn_id);
    assert!(!events.iter().any(|e| e == "unknown_peer"), "{events:?}");
}

/// IKEv1 Quick Mode rekeys with strongSwan started by either end: ours on the Child SA
/// lifetime (20 s, so at 17.1-18 s; strongSwan's own would come at 50-55 s),
/// strongSwan's by `swanctl --rekey` halfway through. No ping is lost across them, and
/// the Child SAs do not pile up on either end.
#[test]
fn ikev1_quick_mode_rekeys_from_both_ends_lose_no_ping() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let (swan, conn_id) = ikev1_tunnel(
        &topo,
        &gw,
        "v1-rekeys",
        |c| {
            c.rekey_time = Some(55);
            c.life_time = Some(60);
        },
        json!({"lifetime_s": 20}),
    );
    let monitor = vpc_ping_monitor(&topo);
    // The most Child SAs either end held at once, sampled while `until` runs.
    let mut most = (0, 0);
    let sample = |most: &mut (usize, usize)| {
        let c = gw.get(&format!("/v1/vpn-connections/{conn_id}"));
        let ours = c["tunnels"][0]["status"]["child_sas"]
            .as_array()
            .map_or(0, Vec::len);
        let theirs: usize = swan
            .list_sas()
            .unwrap()
            .iter()
            .filter(|sa| sa.name == "vpn")
            .map(|sa| sa.children.len())
            .sum();
        *most = (most.0.max(ours), most.1.max(theirs));
    };
    let ours = |gw: &Gateway| {
        gw.logs(&conn_id, 1000)
            .iter()
            .filter(|e| {
                e["event"] == "phase2_start"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("rekeying"))
            })
            .count()
    };
    let wait_ours = |n: usize, most: &mut (usize, usize)| {
        let until = Instant::now() + Duration::from_secs(25);
        while ours(&gw) < n {
            assert!(
                Instant::now() < until,
                "no rekey of ours: {:#?}",
                gw.logs(&conn_id, 60)
            );
            sample(most);
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    // Ours, then strongSwan's halfway through the next Child SA's life, then ours.
    wait_ours(1, &mut most);
    let until = Instant::now() + Duration::from_secs(11);
    while Instant::now() < until {
        sample(&mut most);
        std::thread::sleep(Duration::from_millis(300));
    }
    let before = gw.events(&conn_id).len();
    swan.swanctl(&["--rekey", "--child", "net"]).unwrap();
    wait_ours(2, &mut most);
    std::thread::sleep(Duration::from_secs(3));
    sample(&mut most);
    let report = monitor.stop().unwrap();

    assert!(report.sent > 500, "{report:?}");
    assert!(
        report.losses.is_empty(),
        "lost pings across the rekeys: {report:?}"
    );
    let logs = gw.logs(&conn_id, 1000);
    let installed = |from: usize| {
        logs.iter()
            .skip(from)
            .filter(|e| e["event"] == "esp_sa_installed")
            .count()
    };
    // strongSwan's rekey installed a Child SA of its own between ours.
    assert!(installed(before) >= 2, "{logs:#?}");
    assert!(installed(0) >= 4, "{logs:#?}");
    // A replaced Child SA lives on for a while beside its successor; more than two at
    // a time means they pile up.
    assert!(most.0 <= 2, "vpngw held {} Child SAs: {logs:#?}", most.0);
    assert!(most.1 <= 2, "strongSwan held {} Child SAs", most.1);
    let t = gw.wait_tunnel(&conn_id, "established", Duration::from_secs(5), |s| {
        phase(s) == "established"
    });
    assert_eq!(t["status"]["ike_sa"]["version"], "ikev1", "{t:#}");
}

/// How many of the connection's log entries say vpngw started a phase 1 itself.
fn main_modes_we_started(logs: &[Value]) -> usize {
    logs.iter()
        .filter(|e| {
            e["event"] == "phase1_start"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("initiating"))
        })
        .count()
}

/// strongSwan renews the ISAKMP SA of an IKEv1 tunnel vpngw initiated. IKEv1 cannot
/// rekey it, so `swanctl --rekey --ike` re-authenticates: a new Main Mode, to which
/// strongSwan moves its CHILD_SA at once (with `make_before_break` or without), keeping
/// the old ISAKMP SA for a while. No ping may be lost, nothing may renegotiate behind
/// it, and each end uses one ISAKMP SA, strongSwan's new one, with one Child SA.
#[test]
fn ikev1_strongswan_reauthentication_loses_no_ping() {
    strongswan_reauthentication("main");
}

/// The same in Aggressive Mode: strongSwan's new Aggressive Mode arrives beside the
/// ISAKMP SA vpngw initiated, and vpngw answers it as the replacement.
#[test]
fn ikev1_aggressive_mode_strongswan_reauthentication_loses_no_ping() {
    strongswan_reauthentication("aggressive");
}

fn strongswan_reauthentication(mode: &str) {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let (swan, conn_id) = ikev1_tunnel_in(&topo, &gw, "v1-reauth", mode, |_| {}, json!({}));
    let first = swan
        .wait_established("vpn", Duration::from_secs(5))
        .unwrap();
    let monitor = vpc_ping_monitor(&topo);
    std::thread::sleep(Duration::from_secs(1));
    swan.swanctl(&["--rekey", "--ike", "vpn", "--reauth"])
        .unwrap();
    // strongSwan moves its CHILD_SA to the new IKE_SA at once and keeps the old one
    // (REKEYING, no children) for a while; the established ones must match ours.
    let settled = || {
        let mut sas = swan.list_sas().unwrap_or_default();
        sas.retain(|sa| sa.state == "ESTABLISHED");
        let c = gw.get(&format!("/v1/vpn-connections/{conn_id}"));
        let s = &c["tunnels"][0]["status"];
        sas.len() == 1
            && sas[0].uniqueid != first.uniqueid
            && sas[0].children.len() == 1
            && phase(s) == "established"
            && s["child_sas"].as_array().is_some_and(|c| c.len() == 1)
            && s["ike_sa"]["spis"] == json!({"initiator": sas[0].spi_i, "responder": sas[0].spi_r})
    };
    let until = Instant::now() + Duration::from_secs(30);
    while !settled() {
        assert!(
            Instant::now() < until,
            "not settled: {:#?}\n{:?}\n{}",
            gw.logs(&conn_id, 60),
            swan.list_sas(),
            swan.log_tail(80)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Past the replacement grace periods: still one of each, nothing renegotiated.
    std::thread::sleep(Duration::from_secs(6));
    let report = monitor.stop().unwrap();
    assert!(settled(), "{:#?}", gw.logs(&conn_id, 60));
    assert!(report.sent > 100, "{report:?}");
    assert!(
        report.losses.is_empty(),
        "lost pings across the reauthentication: {report:?}\n{:#?}",
        gw.logs(&conn_id, 60)
    );
    // vpngw took strongSwan's Main Mode as the replacement of the ISAKMP SA and began
    // none of its own after the first.
    let logs = gw.logs(&conn_id, 1000);
    let ours = main_modes_we_started(&logs);
    assert_eq!(ours, 1, "{logs:#?}");
    let events = gw.events(&conn_id);
    assert!(events.iter().any(|e| e == "ike_rekeyed"), "{events:?}");
    for wrong in ["retry", "reset", "ike_deleted"] {
        assert!(!events.iter().any(|e| e == wrong), "{wrong} in {events:?}");
    }
}

/// strongSwan deletes the IPsec SA of an IKEv1 tunnel and keeps the ISAKMP SA: vpngw
/// starts a Quick Mode on that ISAKMP SA rather than a new Main Mode.
#[test]
fn ikev1_a_child_sa_the_peer_deletes_is_negotiated_again_on_the_same_isakmp_sa() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let (swan, conn_id) = ikev1_tunnel(&topo, &gw, "v1-child-gone", |_| {}, json!({}));
    swan_deletes_the_child(&gw, &conn_id, &swan, &topo);
}

/// An IKEv1 peer that restarts (a crash, a reboot) and comes back with a new Main Mode
/// carrying INITIAL-CONTACT (RFC 2407 §4.6.3.3): vpngw removes the SAs of the old
/// incarnation at once, carries the tunnel on the new ones and starts no Main Mode of its
/// own beside them.
#[test]
fn ikev1_restarted_strongswan_that_reconnects_replaces_the_old_sas() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let (swan, conn_id) = ikev1_tunnel(&topo, &gw, "v1-restart", |_| {}, json!({}));
    let first = swan
        .wait_established("vpn", Duration::from_secs(5))
        .unwrap();
    swan.crash().unwrap();
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan-2").unwrap()).unwrap();
    let conn = SwanctlConn {
        version: 1,
        ..onprem_conn("10.2.0.0/24", "172.16.1.0/24", PSK)
    };
    swan.load(&swanctl::render(&[conn])).unwrap();
    let new = swan_reconnects(&gw, &conn_id, &swan, &topo);
    let spis = json!({"initiator": new.spi_i, "responder": new.spi_r});
    assert_ne!(
        spis,
        json!({"initiator": first.spi_i, "responder": first.spi_r})
    );
    // Past the node's restart delay: nothing renegotiates beside the new SAs.
    std::thread::sleep(Duration::from_secs(3));
    let sas = swan.list_sas().unwrap();
    assert_eq!(sas.len(), 1, "{sas:?}");
    assert_eq!(sas[0].uniqueid, new.uniqueid, "{sas:?}");
    assert_eq!(sas[0].children.len(), 1, "{sas:?}");
    let logs = gw.logs(&conn_id, 1000);
    let ours = main_modes_we_started(&logs);
    assert_eq!(ours, 1, "only the first Main Mode: {logs:#?}");
    let events = gw.events(&conn_id);
    assert!(events.iter().any(|e| e == "initial_contact"), "{events:?}");
    for wrong in ["retry", "reset"] {
        assert!(!events.iter().any(|e| e == wrong), "{wrong} in {events:?}");
    }
    let c = gw.get(&format!("/v1/vpn-connections/{conn_id}"));
    let s = &c["tunnels"][0]["status"];
    assert_eq!(phase(s), "established", "{c:#}");
    assert_eq!(s["ike_sa"]["spis"], spis, "{c:#}");
    assert_eq!(s["child_sas"].as_array().map(Vec::len), Some(1), "{c:#}");
}

/// strongSwan with one IKEv1 child per subnet pair (as a crypto ACL of several lines
/// makes a policy-based device do) starts a Quick Mode for the second pair. A tunnel
/// carries one Child SA, so vpngw refuses it, naming both pairs and what to configure
/// instead, and the first Child SA keeps carrying its traffic.
#[test]
fn ikev1_quick_mode_for_other_subnets_is_refused_with_the_reason() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    let mut conn = SwanctlConn {
        version: 1,
        ..onprem_conn("10.2.0.0/25", "172.16.1.0/24", PSK)
    };
    let mut second = conn.children[0].clone();
    second.name = "net2".into();
    second.local_ts = vec!["10.2.0.128/25".into()];
    conn.children.push(second);
    swan.load(&swanctl::render(&[conn])).unwrap();
    let conn_id = id(&flows_connection(
        &gw,
        "v1-two-pairs",
        false,
        json!({"ike": {"version": "ikev1", "mode": "main"}}),
    ));
    gw.wait_tunnel(&conn_id, "idle", Duration::from_secs(10), |s| {
        phase(s) == "idle"
    });
    swan.initiate("net").unwrap();
    gw.wait_tunnel(&conn_id, "established", Duration::from_secs(20), |s| {
        phase(s) == "established"
    });
    let vpc = topo.vpc_ip().to_string();
    lab::wait_ping(&topo.vpc, &vpc, "10.2.0.1", Duration::from_secs(10)).unwrap();
    let monitor = vpc_ping_monitor(&topo);
    assert!(swan.initiate("net2").is_err());
    std::thread::sleep(Duration::from_secs(3));
    let report = monitor.stop().unwrap();
    assert!(report.losses.is_empty(), "{report:?}");
    let logs = gw.logs(&conn_id, 100);
    assert!(
        logs.iter().any(|e| e["event"] == "ts_narrowed"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("=== 10.2.0.0/25, less"))),
        "{logs:#?}"
    );
    let why = logs
        .iter()
        .filter_map(|e| e["message"].as_str())
        .find(|m| m.starts_with("refused a quick mode"))
        .unwrap_or_else(|| panic!("{logs:#?}"));
    assert!(
        why.contains("172.16.1.0/24 === 10.2.0.128/25")
            && why.contains("172.16.1.0/24 === 10.2.0.0/25")
            && why.contains("IKEv2"),
        "{why}"
    );
    let log = std::fs::read_to_string(swan.log_path()).unwrap();
    assert!(
        log.contains("INVALID_ID_INFORMATION"),
        "{}",
        swan.log_tail(40)
    );
    let c = gw.get(&format!("/v1/vpn-connections/{conn_id}"));
    let s = &c["tunnels"][0]["status"];
    assert_eq!(phase(s), "established", "{c:#}");
    assert_eq!(s["child_sas"].as_array().map(Vec::len), Some(1), "{c:#}");
}

#[test]
fn traffic_from_the_vpc_triggers_negotiation() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    swan.load(&swanctl::render(&[onprem_conn(
        "0.0.0.0/0",
        "0.0.0.0/0",
        PSK,
    )]))
    .unwrap();
    let (gw_id, cgw_id) = gw.base_resources(GW1, ONPREM);
    let conn = gw.post(
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
        &format!("/v1/vpn-gateways/{gw_id}/routes"),
        json!({"destination": "10.2.0.0/24", "next_hop": conn_id}),
    );
    gw.wait_tunnel(&conn_id, "idle", Duration::from_secs(10), |s| {
        phase(s) == "idle" && s["reason"].as_str().is_some_and(|r| r.contains("traffic"))
    });
    // Nothing negotiates on its own.
    std::thread::sleep(Duration::from_secs(2));
    assert!(swan.list_sas().unwrap().is_empty());

    // The first packets from the VPC start the negotiation; ping then gets through.
    let vpc = topo.vpc_ip().to_string();
    lab::wait_ping(&topo.vpc, &vpc, "10.2.0.1", Duration::from_secs(15)).unwrap();
    let t = gw.wait_tunnel(&conn_id, "established", Duration::from_secs(5), |s| {
        phase(s) == "established"
    });
    assert_established(&t);
    let events: Vec<String> = gw
        .logs(&conn_id, 1000)
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_string))
        .collect();
    assert!(
        events.iter().any(|e| e == "traffic_triggered"),
        "{events:?}"
    );
}

/// A tunnel with NAT traversal off says why ESP will not pass when the peer's
/// IKE_SA_INIT shows a NAT (here: strongSwan's `encap = yes`, which fakes its NAT
/// detection hash, RFC 7296 §2.23), and stops saying so once NAT traversal is on.
#[test]
fn nat_traversal_off_names_the_nat_the_peer_reports() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    let mut conn = onprem_conn("10.2.0.0/24", "172.16.1.0/24", PSK);
    conn.encap = true;
    swan.load(&swanctl::render(&[conn])).unwrap();
    let created = flows_connection(&gw, "no-natt", false, json!({"nat_traversal": false}));
    let conn_id = id(&created);
    gw.wait_tunnel(&conn_id, "idle", Duration::from_secs(10), |s| {
        phase(s) == "idle"
    });
    // Whether the exchange completes without NAT-T is strongSwan's affair; the
    // IKE_SA_INIT request is what the note comes from.
    let _ = swan.initiate("net");
    let note = |s: &Value| {
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("enable nat_traversal"))
    };
    gw.wait_tunnel(&conn_id, "the NAT note", Duration::from_secs(15), note);
    let logs = gw.logs(&conn_id, 100);
    assert!(
        logs.iter()
            .any(|e| e["event"] == "nat_without_nat_traversal"),
        "{logs:#?}"
    );

    // With NAT traversal on, the tunnel renegotiates in UDP 4500 and the note goes.
    let tunnel_id = created["tunnels"][0]["id"].as_str().unwrap().to_string();
    gw.patch(
        &format!("/v1/vpn-connections/{conn_id}/tunnels/{tunnel_id}"),
        json!({"nat_traversal": true}),
    );
    let _ = swan.initiate("net");
    let t = gw.wait_tunnel(
        &conn_id,
        "established without the note",
        Duration::from_secs(20),
        |s| phase(s) == "established" && !note(s),
    );
    assert_established(&t);
}

/// IKEv1 with an identity of ours that strongSwan has no configuration for: it answers
/// AUTHENTICATION-FAILED as for a wrong key ("no peer config found"), so the reason
/// names the key and the identity we sent; setting `ike.local_id` right brings the
/// tunnel up.
#[test]
fn ikev1_an_identity_the_peer_does_not_expect_is_named() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    let conn = SwanctlConn {
        version: 1,
        ..onprem_conn("10.2.0.0/24", "172.16.1.0/24", PSK)
    };
    swan.load(&swanctl::render(&[conn])).unwrap();
    let conn = flows_connection(
        &gw,
        "v1-id",
        true,
        json!({"ike": {"version": "ikev1", "mode": "main", "local_id": "gw.example.com"}}),
    );
    let conn_id = id(&conn);
    let t = gw.wait_tunnel(&conn_id, "phase1_failed", Duration::from_secs(30), |s| {
        phase(s) == "phase1_failed"
    });
    let reason = t["status"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("pre-shared key")
            && reason.contains("our identity gw.example.com")
            && reason.contains("ike.local_id"),
        "{reason}"
    );
    let log = std::fs::read_to_string(swan.log_path()).unwrap();
    assert!(
        log.contains("no peer config found"),
        "{}",
        swan.log_tail(40)
    );
    let tunnel_id = conn["tunnels"][0]["id"].as_str().unwrap();
    gw.patch(
        &format!("/v1/vpn-connections/{conn_id}/tunnels/{tunnel_id}"),
        json!({"ike": {"local_id": GW1}}),
    );
    gw.wait_tunnel(&conn_id, "established", Duration::from_secs(30), |s| {
        phase(s) == "established"
    });
}

/// A PFS mismatch cannot show when the tunnel comes up (the first Child SA comes with
/// IKE_AUTH, without KE: RFC 7296 §1.2); it shows at the first rekey, which one side
/// then refuses, and the Child SA would expire at the end of its lifetime. vpngw says
/// so, whichever side has PFS and whichever side rekeys.
#[test]
fn a_pfs_mismatch_is_named_at_the_first_rekey() {
    // (strongSwan's ESP proposal, our ipsec.pfs, what the reason says)
    for (swan_esp, ours, says) in [
        // strongSwan rekeys with a DH group; we have PFS off.
        ("aes128-sha1-modp2048", "disabled", "ipsec.pfs disabled"),
        // strongSwan rekeys without one; we have PFS on. Then our own rekey (20 s
        // lifetime) is refused too.
        ("aes128-sha1", "group14", "only the PFS group differs"),
    ] {
        let topo = Topology::new().unwrap();
        let gw = Gateway::start(&topo.gw);
        let swan =
            StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
        let mut conn = onprem_conn("10.2.0.0/24", "172.16.1.0/24", PSK);
        conn.children[0].esp_proposals = vec![swan_esp.into()];
        swan.load(&swanctl::render(&[conn])).unwrap();
        let conn = flows_connection(
            &gw,
            "pfs",
            true,
            json!({"ipsec": {"pfs": ours, "lifetime_s": 20}}),
        );
        let conn_id = id(&conn);
        gw.wait_tunnel(&conn_id, "established", Duration::from_secs(30), |s| {
            phase(s) == "established"
        });
        swan.swanctl(&["--rekey", "--child", "net"]).unwrap();
        let failed = |needle: &str| {
            gw.logs(&conn_id, 100).into_iter().find(|e| {
                e["event"] == "phase2_failed"
                    && e["message"].as_str().is_some_and(|m| m.contains(needle))
            })
        };
        let until = Instant::now() + Duration::from_secs(10);
        while failed(says).is_none() {
            assert!(
                Instant::now() < until,
                "{swan_esp} / {ours}: {:#?}",
                gw.logs(&conn_id, 100)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The status says it too, while the tunnel stays up on its SAs.
        let t = gw.wait_tunnel(
            &conn_id,
            "the failure in the status",
            Duration::from_secs(5),
            |s| phase(s) == "established" && s["reason"].as_str().is_some_and(|r| r.contains(says)),
        );
        assert_eq!(t["status"]["carrying_traffic"], true, "{t:#}");
        if ours == "disabled" {
            // Set as on the peer: strongSwan's next rekey goes through, with the group,
            // and the status no longer shows the failure.
            let tunnel_id = conn["tunnels"][0]["id"].as_str().unwrap();
            gw.patch(
                &format!("/v1/vpn-connections/{conn_id}/tunnels/{tunnel_id}"),
                json!({"ipsec": {"pfs": "group14"}}),
            );
            gw.wait_tunnel(
                &conn_id,
                "established again",
                Duration::from_secs(20),
                |s| phase(s) == "established",
            );
            swan.swanctl(&["--rekey", "--child", "net"]).unwrap();
            gw.wait_tunnel(&conn_id, "rekeyed with PFS", Duration::from_secs(10), |s| {
                phase(s) == "established"
                    && s["reason"].is_null()
                    && s["child_sas"].as_array().is_some_and(|c| {
                        c.iter().any(|c| c["algorithms"] == "aes128-sha1-modp2048")
                    })
            });
        } else {
            // Our rekey at 17–18 s: strongSwan answers NO_PROPOSAL_CHOSEN.
            let until = Instant::now() + Duration::from_secs(25);
            while failed("the peer does not use PFS modp2048").is_none() {
                assert!(Instant::now() < until, "{:#?}", gw.logs(&conn_id, 100));
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}
