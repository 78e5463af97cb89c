//! The IKEv2 algorithm matrix and the routing-mode × role combinations, against a real
//! strongSwan 5.9 (needs root; the lab's packages, see `lab`).
//!
//! Like `interop.rs`, each test builds the lab (`vpc — gw — inet — onprem`), runs the
//! HTTP API and the gateway node in-process inside `gw`, configures strongSwan in
//! `onprem` and drives vpngw over HTTP. The matrix reuses one lab per test function: each
//! row reloads strongSwan's proposals and PATCHes the tunnel (which renegotiates), waits
//! for the new IKE SA, has strongSwan rekey the Child SA (so the PFS group is really used:
//! the first Child SA comes with IKE_AUTH without its own Diffie-Hellman, RFC 7296 §1.2)
//! and pings through the tunnel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::time::{Duration, Instant};

mod common;

use common::{
    Gateway, metric, phase, swan_deletes_the_child, swan_reconnects, traffic_both_ways,
    vpc_ping_monitor,
};
use lab::vpngw::id;
use lab::{SaInfo, StrongSwan, SwanctlChild, SwanctlConn, Topology, swanctl};
use serde_json::{Value, json};

const PSK: &str = "lab-psk-Mx4";
const ONPREM: &str = "198.51.100.1";
const GW1: &str = "192.0.2.1";

/// One row of the matrix, in API names.
#[derive(Debug, Clone, Copy)]
struct Row {
    ike_encryption: &'static str,
    ike_integrity: &'static str,
    ike_group: &'static str,
    esp_encryption: &'static str,
    esp_integrity: &'static str,
    /// `disabled` or a group.
    pfs: &'static str,
}

impl Row {
    /// strongSwan's IKE proposal, which is also how our status names the IKE SA
    /// algorithms. AES-GCM has no integrity transform: the integrity knob names the PRF
    /// (RFC 5282 §7).
    fn swan_ike(&self) -> String {
        let enc = swan_enc(self.ike_encryption);
        let dh = swan_group(self.ike_group);
        if self.ike_encryption.starts_with("aes-gcm") {
            format!("{enc}-prf{}-{dh}", self.ike_integrity)
        } else {
            format!("{enc}-{}-{dh}", self.ike_integrity)
        }
    }

    /// strongSwan's ESP proposal without the PFS group: what the first Child SA (from
    /// IKE_AUTH) negotiates.
    fn swan_esp_base(&self) -> String {
        let enc = swan_enc(self.esp_encryption);
        if self.esp_encryption.starts_with("aes-gcm") {
            enc.to_string()
        } else {
            format!("{enc}-{}", self.esp_integrity)
        }
    }

    /// strongSwan's ESP proposal, with the PFS group when enabled.
    fn swan_esp(&self) -> String {
        match self.pfs {
            "disabled" => self.swan_esp_base(),
            g => format!("{}-{}", self.swan_esp_base(), swan_group(g)),
        }
    }

    fn patch(&self) -> Value {
        json!({
            "ike": {
                "encryption": self.ike_encryption,
                "integrity": self.ike_integrity,
                "dh_group": self.ike_group,
            },
            "ipsec": {
                "encryption": self.esp_encryption,
                "integrity": self.esp_integrity,
                "pfs": self.pfs,
            },
        })
    }
}

fn swan_enc(api: &str) -> &'static str {
    match api {
        "aes" => "aes128",
        "aes192" => "aes192",
        "aes256" => "aes256",
        "des" => "des",
        "3des" => "3des",
        "aes-gcm-128" => "aes128gcm16",
        "aes-gcm-256" => "aes256gcm16",
        other => panic!("no strongSwan name for {other}"),
    }
}

fn swan_group(api: &str) -> &'static str {
    match api {
        "group2" => "modp1024",
        "group5" => "modp1536",
        "group14" => "modp2048",
        "group19" => "ecp256",
        other => panic!("no strongSwan name for {other}"),
    }
}

const CIPHERS: [&str; 5] = ["aes", "aes192", "aes256", "des", "3des"];
const INTEGRITY: [&str; 5] = ["md5", "sha1", "sha256", "sha384", "sha512"];
const IKE_GROUPS: [&str; 3] = ["group2", "group5", "group14"];
const PFS: [&str; 4] = ["group2", "group5", "group14", "disabled"];

/// Every seed cipher × integrity pair (same algorithms for IKE and ESP). The groups
/// rotate with `cipher + integrity`, so over a cipher's five rows each IKE group (of
/// three) and each PFS setting (of four, disabled included) comes up at least once, and
/// likewise over an integrity algorithm's five rows.
fn cbc_rows(ciphers: &[&'static str]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &c in ciphers {
        let ci = CIPHERS.iter().position(|x| *x == c).unwrap();
        for (ii, &i) in INTEGRITY.iter().enumerate() {
            rows.push(Row {
                ike_encryption: c,
                ike_integrity: i,
                ike_group: IKE_GROUPS[(ci + ii) % IKE_GROUPS.len()],
                esp_encryption: c,
                esp_integrity: i,
                pfs: PFS[(ci + ii) % PFS.len()],
            });
        }
    }
    rows
}

/// strongSwan on-premises for `row` (the responder; vpngw initiates).
fn onprem_conn(row: &Row, local_ts: &str, remote_ts: &str) -> SwanctlConn {
    SwanctlConn {
        proposals: vec![row.swan_ike()],
        dpd_delay: Some(10),
        ..SwanctlConn::psk("vpn", ONPREM, GW1, PSK)
    }
    .child(SwanctlChild {
        esp_proposals: vec![row.swan_esp()],
        dpd_action: Some("restart".into()),
        ..SwanctlChild::new("net", local_ts, remote_ts)
    })
}

const DEFAULT_ROW: Row = Row {
    ike_encryption: "aes",
    ike_integrity: "sha1",
    ike_group: "group2",
    esp_encryption: "aes",
    esp_integrity: "sha1",
    pfs: "group2",
};

/// Runs `rows` on one lab: vpngw initiates in protected-flows mode, strongSwan responds.
fn run_matrix(rows: &[Row]) {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    let (local_ts, remote_ts) = ("10.2.0.0/24", "172.16.1.0/24");
    swan.load(&swanctl::render(&[onprem_conn(
        &DEFAULT_ROW,
        local_ts,
        remote_ts,
    )]))
    .unwrap();
    let (gw_id, cgw_id) = gw.base_resources(GW1, ONPREM);
    let conn = gw.post(
        "/v1/vpn-connections",
        json!({
            "name": "matrix",
            "vpn_gateway_id": gw_id,
            "routing_mode": "protected_flows",
            "local_subnets": [remote_ts],
            "remote_subnets": [local_ts],
            "effective_immediately": true,
            "tunnels": [{"customer_gateway_id": cgw_id, "pre_shared_key": PSK}],
        }),
    );
    let conn_id = id(&conn);
    let tunnel_id = conn["tunnels"][0]["id"].as_str().unwrap().to_string();
    let mut t = gw.wait_tunnel(
        &conn_id,
        "established (defaults)",
        Duration::from_secs(20),
        |s| phase(s) == "established",
    );
    let path = format!("/v1/vpn-connections/{conn_id}/tunnels/{tunnel_id}");
    let vpc = topo.vpc_ip().to_string();
    for row in rows {
        let started = Instant::now();
        let old_ike = t["status"]["ike_sa"]["spis"]["initiator"].clone();
        swan.load(&swanctl::render(&[onprem_conn(row, local_ts, remote_ts)]))
            .unwrap();
        gw.patch(&path, row.patch());
        let want_ike = row.swan_ike();
        let want_base = row.swan_esp_base();
        let established = gw.try_wait_tunnel(&conn_id, Duration::from_secs(25), |s| {
            phase(s) == "established"
                && s["ike_sa"]["spis"]["initiator"] != old_ike
                && s["ike_sa"]["algorithms"] == want_ike.as_str()
        });
        let Some(est) = established else {
            panic!(
                "{row:?}: no IKE SA {want_ike}; charon.log:\n{}",
                swan.log_tail(60)
            );
        };
        let first = &est["status"]["child_sas"][0];
        assert_eq!(first["algorithms"], want_base.as_str(), "{row:?}: {est:#}");
        let first_spi = first["spi_in"].clone();

        // strongSwan rekeys the Child SA: CREATE_CHILD_SA with KE when PFS is on.
        swan.swanctl(&["--rekey", "--child", "net"]).unwrap();
        let want_esp = row.swan_esp();
        let rekeyed = gw.try_wait_tunnel(&conn_id, Duration::from_secs(15), |s| {
            phase(s) == "established"
                && s["child_sas"].as_array().is_some_and(|c| {
                    !c.is_empty()
                        && c.iter().all(|c| {
                            c["spi_in"] != first_spi && c["algorithms"] == want_esp.as_str()
                        })
                })
        });
        let Some(rekeyed) = rekeyed else {
            panic!(
                "{row:?}: no rekeyed Child SA {want_esp}; charon.log:\n{}",
                swan.log_tail(60)
            );
        };
        let child = swan
            .wait_sa(
                Duration::from_secs(5),
                "strongSwan's rekeyed child",
                |sas| {
                    sas.iter()
                        .flat_map(|sa| sa.children.iter())
                        .find(|c| c.name == "net" && c.state == "INSTALLED" && c.spi_out.len() == 8)
                        .filter(|c| Some(c.spi_out.as_str()) != first_spi.as_str())
                        .cloned()
                },
            )
            .unwrap();
        if row.pfs == "disabled" {
            assert!(child.dh_group.is_empty(), "{row:?}: {child:?}");
        } else {
            assert_eq!(
                child.dh_group.to_lowercase(),
                strongswan_group_label(row.pfs),
                "{row:?}: {child:?}"
            );
        }
        lab::wait_ping(&topo.vpc, &vpc, "10.2.0.1", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{row:?}: {e}; charon.log:\n{}", swan.log_tail(40)));
        let r = lab::ping(&topo.vpc, &vpc, "10.2.0.1", 2, Duration::from_secs(3)).unwrap();
        assert_eq!(r.received, 2, "{row:?}: {r:?}");
        eprintln!(
            "row ok in {:.1} s: ike {want_ike}, esp {want_esp}",
            started.elapsed().as_secs_f64()
        );
        t = rekeyed;
    }
}

/// How `swanctl --list-sas` names a DH group (`MODP_1024`, lower-cased).
fn strongswan_group_label(api: &str) -> &'static str {
    match api {
        "group2" => "modp_1024",
        "group5" => "modp_1536",
        "group14" => "modp_2048",
        "group19" => "ecp_256",
        other => panic!("no strongSwan label for {other}"),
    }
}

#[test]
fn ikev2_matrix_aes_cbc_with_strongswan() {
    run_matrix(&cbc_rows(&["aes", "aes192", "aes256"]));
}

#[test]
fn ikev2_matrix_des_3des_gcm_with_strongswan() {
    let mut rows = cbc_rows(&["des", "3des"]);
    // AES-GCM: ESP with each key size and each PFS group; IKE with AES-GCM and the
    // integrity setting as its PRF (RFC 5282 §7).
    for (i, (enc, prf)) in [
        ("aes-gcm-128", "sha256"),
        ("aes-gcm-256", "sha384"),
        ("aes-gcm-128", "sha512"),
        ("aes-gcm-256", "sha1"),
    ]
    .into_iter()
    .enumerate()
    {
        rows.push(Row {
            ike_encryption: enc,
            ike_integrity: prf,
            ike_group: IKE_GROUPS[i % IKE_GROUPS.len()],
            esp_encryption: enc,
            esp_integrity: "sha1",
            pfs: PFS[i % PFS.len()],
        });
    }
    // GCM for ESP under a CBC IKE SA too.
    rows.push(Row {
        ike_encryption: "aes256",
        ike_integrity: "sha256",
        ike_group: "group14",
        esp_encryption: "aes-gcm-128",
        esp_integrity: "sha256",
        pfs: "group14",
    });
    run_matrix(&rows);
}

/// strongSwan with the default suite (aes128-sha1-modp1024) and the given children
/// options, on-premises side.
fn default_conn(
    local_ts: &str,
    remote_ts: &str,
    child: impl FnOnce(&mut SwanctlChild),
) -> SwanctlConn {
    let mut conn = onprem_conn(&DEFAULT_ROW, local_ts, remote_ts);
    if let Some(c) = conn.children.first_mut() {
        child(c);
    }
    conn
}

/// Creates the connection and, in destination mode, the route to on-premises; returns
/// the connection id.
fn create_connection(
    gw: &Gateway,
    mode: &str,
    effective_immediately: bool,
    tunnel: Value,
) -> String {
    let (gw_id, cgw_id) = gw.base_resources(GW1, ONPREM);
    let mut tunnel = tunnel;
    tunnel["customer_gateway_id"] = json!(cgw_id);
    tunnel["pre_shared_key"] = json!(PSK);
    let mut body = json!({
        "name": format!("{mode}-conn"),
        "vpn_gateway_id": gw_id,
        "routing_mode": mode,
        "effective_immediately": effective_immediately,
        "tunnels": [tunnel],
    });
    if mode == "protected_flows" {
        body["local_subnets"] = json!(["172.16.1.0/24"]);
        body["remote_subnets"] = json!(["10.2.0.0/24"]);
    }
    let conn_id = id(&gw.post("/v1/vpn-connections", body));
    if mode == "destination" {
        gw.post(
            &format!("/v1/vpn-gateways/{gw_id}/routes"),
            json!({"destination": "10.2.0.0/24", "next_hop": conn_id, "weight": 100}),
        );
    }
    conn_id
}

/// A protected-flows tunnel with strongSwan (default suite; `charon_settings` added to
/// its strongswan.conf), established: vpngw initiates if `vpngw_initiates`, else
/// strongSwan does. Fields drop in order (the daemons before the namespaces), and so
/// do destructured bindings listed in reverse.
struct Up {
    swan: StrongSwan,
    gw: Gateway,
    conn_id: String,
    /// The tunnel as it was when established.
    tunnel: Value,
    /// strongSwan's IKE SA as it was then.
    first: SaInfo,
    topo: Topology,
}

fn protected_flows_up(charon_settings: &str, vpngw_initiates: bool) -> Up {
    let conn = default_conn("10.2.0.0/24", "172.16.1.0/24", |_| {});
    protected_flows_up_with(charon_settings, vpngw_initiates, conn)
}

/// The lab, vpngw's node in `gw` and strongSwan in `onprem` (`charon_settings` added to
/// its strongswan.conf) with the connection `conn` loaded. Bound as `let (topo, gw,
/// swan) = …`, they drop in reverse: the daemons before the namespaces.
fn swan_lab(charon_settings: &str, conn: SwanctlConn) -> (Topology, Gateway, StrongSwan) {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let swan = StrongSwan::start_with(
        &topo.onprem,
        &topo.workdir.subdir("onprem-swan").unwrap(),
        charon_settings,
    )
    .unwrap();
    swan.load(&swanctl::render(&[conn])).unwrap();
    (topo, gw, swan)
}

/// [`protected_flows_up`] with strongSwan's connection `conn`.
fn protected_flows_up_with(charon_settings: &str, vpngw_initiates: bool, conn: SwanctlConn) -> Up {
    let (topo, gw, swan) = swan_lab(charon_settings, conn);
    let conn_id = create_connection(&gw, "protected_flows", vpngw_initiates, json!({}));
    if !vpngw_initiates {
        gw.wait_tunnel(&conn_id, "idle", Duration::from_secs(10), |s| {
            phase(s) == "idle"
        });
        swan.initiate("net").unwrap();
    }
    let tunnel = gw.wait_tunnel(&conn_id, "established", Duration::from_secs(20), |s| {
        phase(s) == "established"
    });
    let first = swan
        .wait_established("vpn", Duration::from_secs(5))
        .unwrap();
    Up {
        swan,
        gw,
        conn_id,
        tunnel,
        first,
        topo,
    }
}

#[test]
fn responder_destination_mode_carries_ping_and_iperf() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    swan.load(&swanctl::render(&[default_conn(
        "0.0.0.0/0",
        "0.0.0.0/0",
        |_| {},
    )]))
    .unwrap();
    let conn_id = create_connection(&gw, "destination", false, json!({}));
    gw.wait_tunnel(&conn_id, "idle", Duration::from_secs(10), |s| {
        phase(s) == "idle"
    });
    swan.initiate("net").unwrap();
    let t = gw.wait_tunnel(&conn_id, "established", Duration::from_secs(20), |s| {
        phase(s) == "established"
    });
    let sa = swan
        .wait_established("vpn", Duration::from_secs(5))
        .unwrap();
    assert!(sa.initiator, "strongSwan initiated: {sa:?}");
    assert_eq!(t["status"]["ike_sa"]["algorithms"], "aes128-sha1-modp1024");
    assert_eq!(
        t["status"]["child_sas"][0]["local_ts"],
        json!(["0.0.0.0/0"])
    );
    assert_eq!(
        t["status"]["child_sas"][0]["remote_ts"],
        json!(["0.0.0.0/0"])
    );
    traffic_both_ways(&topo);
    gw.wait_tunnel(&conn_id, "counters", Duration::from_secs(6), |s| {
        s["child_sas"][0]["bytes_out"].as_u64().unwrap_or(0) >= 100_000_000
            || s["child_sas"][0]["bytes_in"].as_u64().unwrap_or(0) >= 100_000_000
    });
}

#[test]
fn initiator_protected_flows_carries_ping_and_iperf() {
    // Bindings drop in reverse: the daemons before the namespaces.
    let Up {
        topo,
        gw,
        swan,
        conn_id,
        tunnel: t,
        ..
    } = protected_flows_up("", true);
    let sa = swan
        .wait_established("vpn", Duration::from_secs(5))
        .unwrap();
    assert!(!sa.initiator, "vpngw initiated: {sa:?}");
    assert_eq!(
        t["status"]["child_sas"][0]["local_ts"],
        json!(["172.16.1.0/24"])
    );
    assert_eq!(
        t["status"]["child_sas"][0]["remote_ts"],
        json!(["10.2.0.0/24"])
    );
    traffic_both_ways(&topo);
    gw.wait_tunnel(&conn_id, "counters", Duration::from_secs(6), |s| {
        s["child_sas"][0]["bytes_out"].as_u64().unwrap_or(0) >= 100_000_000
            || s["child_sas"][0]["bytes_in"].as_u64().unwrap_or(0) >= 100_000_000
    });
}

/// Pings every 50 ms until `done` holds (bounded by `timeout`), then 2 s more, and
/// asserts that no echo request went unanswered.
fn ping_across(topo: &Topology, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let vpc = topo.vpc_ip().to_string();
    lab::wait_ping(&topo.vpc, &vpc, "10.2.0.1", Duration::from_secs(10)).unwrap();
    let monitor = vpc_ping_monitor(topo);
    let start = Instant::now();
    let mut ok = false;
    while start.elapsed() < timeout {
        if done() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(2));
    let report = monitor.stop().unwrap();
    assert!(ok, "timed out waiting for {what}");
    assert!(report.sent > 40, "{report:?}");
    assert!(
        report.losses.is_empty(),
        "lost pings across {what}: {report:?}"
    );
    eprintln!("{what}: {} pings, none lost", report.sent);
}

/// Shared secrets computed on the node's DH threads.
const OFFLOADED: &str = "vpngw_ike_dh_offloaded_total";

#[test]
fn ike_sa_rekey_under_ping_loses_nothing() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    swan.load(&swanctl::render(&[default_conn(
        "10.2.0.0/24",
        "172.16.1.0/24",
        |_| {},
    )]))
    .unwrap();
    let conn_id = create_connection(
        &gw,
        "protected_flows",
        true,
        json!({"ike": {"lifetime_s": 30}}),
    );
    let t = gw.wait_tunnel(&conn_id, "established", Duration::from_secs(20), |s| {
        phase(s) == "established"
    });
    let first_ike = t["status"]["ike_sa"]["spis"].clone();
    let child_spi = t["status"]["child_sas"][0]["spi_in"].clone();
    let first_uid = swan
        .wait_established("vpn", Duration::from_secs(5))
        .unwrap()
        .uniqueid;
    let offloaded = metric(&gw, OFFLOADED);
    // Our IKE SA lifetime is 30 s: we rekey it (CREATE_CHILD_SA, RFC 7296 §2.18) a few
    // seconds before; the Child SA moves to the new IKE SA and ESP goes on.
    ping_across(&topo, "the IKE SA rekey", Duration::from_secs(45), || {
        let c = gw.get(&format!("/v1/vpn-connections/{conn_id}"));
        let s = &c["tunnels"][0]["status"];
        phase(s) == "established"
            && !s["ike_sa"]["spis"].is_null()
            && s["ike_sa"]["spis"] != first_ike
    });
    let sa = swan
        .wait_established("vpn", Duration::from_secs(5))
        .unwrap();
    assert_ne!(
        sa.uniqueid, first_uid,
        "strongSwan has the new IKE SA: {sa:?}"
    );
    assert!(sa.child("net").is_some(), "the Child SA moved over: {sa:?}");
    let r = lab::ping(
        &topo.vpc,
        topo.vpc_ip(),
        "10.2.0.1",
        3,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.received, 3, "after the IKE SA rekey: {r:?}");
    // strongSwan's KE in its answer went to the DH threads (ike/src/offload.rs).
    assert!(metric(&gw, OFFLOADED) > offloaded);
    // A rekey, not a reauthentication: the same Child SA lives on under the new IKE SA
    // (RFC 7296 §2.18), so it was not torn down and recreated.
    let t = gw.get(&format!("/v1/vpn-connections/{conn_id}"));
    let children = t["tunnels"][0]["status"]["child_sas"].clone();
    assert!(
        children
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["spi_in"] == child_spi)),
        "Child SA {child_spi} kept: {children:#}"
    );
}

#[test]
fn strongswan_initiated_child_rekey_under_ping_loses_nothing() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    // strongSwan rekeys its Child SA within 5–10 s (rekey_time minus up to rand_time,
    // which defaults to life_time − rekey_time); ours would only after a day. The hard
    // life_time must stay well above rekey_time: at or near it, strongSwan hard-expires
    // the SA and recreates it (break-before-make) instead of rekeying.
    swan.load(&swanctl::render(&[default_conn(
        "10.2.0.0/24",
        "172.16.1.0/24",
        |c| {
            c.rekey_time = Some(10);
            c.life_time = Some(15);
        },
    )]))
    .unwrap();
    let conn_id = create_connection(&gw, "protected_flows", true, json!({}));
    let t = gw.wait_tunnel(&conn_id, "established", Duration::from_secs(20), |s| {
        phase(s) == "established"
    });
    let mut seen = vec![t["status"]["child_sas"][0]["spi_in"].clone()];
    let offloaded = metric(&gw, OFFLOADED);
    // Two rekeys by strongSwan; each time the new Child SA carries the PFS group.
    ping_across(
        &topo,
        "two strongSwan Child SA rekeys",
        Duration::from_secs(30),
        || {
            let c = gw.get(&format!("/v1/vpn-connections/{conn_id}"));
            for child in c["tunnels"][0]["status"]["child_sas"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if !seen.contains(&child["spi_in"]) {
                    seen.push(child["spi_in"].clone());
                }
            }
            seen.len() >= 3
        },
    );
    let t = gw.wait_tunnel(&conn_id, "established", Duration::from_secs(5), |s| {
        phase(s) == "established"
    });
    assert_eq!(
        t["status"]["child_sas"][0]["algorithms"], "aes128-sha1-modp1024",
        "{t:#}"
    );
    // Each request's PFS secret was computed on the DH threads, its answer sent then.
    assert!(metric(&gw, OFFLOADED) >= offloaded + 2);
    // They were rekeys (CREATE_CHILD_SA with REKEY_SA, RFC 7296 §2.8) initiated by
    // strongSwan, not expiries followed by new Child SAs.
    let log = std::fs::read_to_string(swan.log_path()).unwrap();
    let rekeys = log
        .lines()
        .filter(|l| {
            l.contains("generating CREATE_CHILD_SA request") && l.contains("N(REKEY_SA) SA No KE")
        })
        .count();
    assert!(
        rekeys >= 2,
        "strongSwan rekeyed twice:\n{}",
        swan.log_tail(60)
    );
    assert!(
        !log.contains("closing expired CHILD_SA"),
        "{}",
        swan.log_tail(60)
    );
}

/// The tunnel's status after strongSwan reauthenticated (`swanctl --rekey --ike vpn
/// --reauth`, RFC 7296 §2.8.3): a new IKE SA from IKE_SA_INIT on, with a new Child SA,
/// and the old IKE SA deleted: true once both ends show exactly that.
fn reauthenticated(up: &Up) -> bool {
    let (gw, swan, conn_id) = (&up.gw, &up.swan, &up.conn_id);
    let first_ike = &up.tunnel["status"]["ike_sa"]["spis"];
    let first_uid = up.first.uniqueid;
    let c = gw.get(&format!("/v1/vpn-connections/{conn_id}"));
    let s = &c["tunnels"][0]["status"];
    let swan_new = swan
        .sa("vpn")
        .ok()
        .flatten()
        .is_some_and(|sa| sa.uniqueid != first_uid && sa.child("net").is_some());
    phase(s) == "established"
        && !s["ike_sa"]["spis"].is_null()
        && s["ike_sa"]["spis"] != *first_ike
        && s["child_sas"].as_array().is_some_and(|c| c.len() == 1)
        && swan_new
        && swan.list_sas().is_ok_and(|l| l.len() == 1)
}

/// strongSwan with `make_before_break = yes` re-authenticates a tunnel that vpngw
/// (`vpngw_initiated`) or strongSwan brought up: it builds a new IKE SA with its Child
/// SA beside the old ones, then deletes the old IKE SA (RFC 7296 §2.8.3). vpngw has to
/// take the second IKE SA of the same peer as the replacement: not as the twin of a
/// simultaneous initiation to be deleted while strongSwan deletes the other, and the
/// old one's Delete not as the tunnel going down (which would renegotiate). No ping may
/// be lost: vpngw, the
/// responder of the new IKE_AUTH, keeps sending on the old Child SA until strongSwan
/// uses the new one or deletes the old.
fn make_before_break_reauthentication(vpngw_initiated: bool) {
    let up = protected_flows_up("make_before_break = yes", vpngw_initiated);
    let (topo, gw, swan, conn_id, first) = (&up.topo, &up.gw, &up.swan, &up.conn_id, &up.first);
    assert_eq!(first.initiator, !vpngw_initiated, "{first:?}");
    let mut asked = false;
    ping_across(
        topo,
        "the reauthentication",
        Duration::from_secs(30),
        || {
            if !asked {
                // Pings cross the old SAs for a while first.
                std::thread::sleep(Duration::from_secs(1));
                swan.swanctl(&["--rekey", "--ike", "vpn", "--reauth"])
                    .unwrap();
                asked = true;
            }
            reauthenticated(&up)
        },
    );
    // Past the node's restart delay: nothing renegotiates behind the new IKE SA.
    std::thread::sleep(Duration::from_secs(3));
    let sas = swan.list_sas().unwrap();
    assert_eq!(sas.len(), 1, "{sas:?}");
    assert_eq!(
        sas[0].uniqueid,
        first.uniqueid + 1,
        "strongSwan's re-authenticated IKE SA stays: {sas:?}"
    );
    assert!(sas[0].initiator, "{sas:?}");
    // strongSwan's Delete of the old IKE SA handed the tunnel over. When vpngw
    // initiated the old one, the pair looks like a simultaneous initiation to vpngw:
    // its lowest-nonce rule picked the new one (and took it back when strongSwan
    // deleted the old one) or the old one (which strongSwan deleted, as vpngw waited).
    let events = gw.events(conn_id);
    let count = |name: &str| events.iter().filter(|e| *e == name).count();
    let (reauth, dup) = (count("ike_reauthenticated"), count("duplicate_ike_sa"));
    if vpngw_initiated {
        assert_eq!(dup, 1, "{events:?}");
        assert!(reauth <= 1, "{events:?}");
    } else {
        assert_eq!((reauth, dup), (1, 0), "{events:?}");
    }
    assert_eq!(
        count("phase1_start"),
        usize::from(vpngw_initiated),
        "{events:?}"
    );
    for wrong in ["ike_deleted", "retry", "reset"] {
        assert_eq!(count(wrong), 0, "{wrong} in {events:?}");
    }
    let c = gw.get(&format!("/v1/vpn-connections/{conn_id}"));
    let s = &c["tunnels"][0]["status"];
    assert_eq!(phase(s), "established", "{c:#}");
    assert_eq!(
        s["ike_sa"]["spis"],
        json!({"initiator": sas[0].spi_i, "responder": sas[0].spi_r}),
        "{c:#}"
    );
    let log = std::fs::read_to_string(swan.log_path()).unwrap();
    assert!(
        log.contains("reauthenticating IKE_SA"),
        "{}",
        swan.log_tail(60)
    );
}

#[test]
fn strongswan_reauthenticates_a_tunnel_vpngw_initiated_without_loss() {
    make_before_break_reauthentication(true);
}

#[test]
fn strongswan_reauthenticates_a_tunnel_it_initiated_without_loss() {
    make_before_break_reauthentication(false);
}

#[test]
fn strongswan_break_before_make_reauthentication_brings_the_tunnel_back() {
    let up = protected_flows_up("", true);
    let (topo, gw, swan, conn_id) = (&up.topo, &up.gw, &up.swan, &up.conn_id);
    let vpc = topo.vpc_ip().to_string();
    lab::wait_ping(&topo.vpc, &vpc, "10.2.0.1", Duration::from_secs(10)).unwrap();
    // strongSwan 5.9's default: delete the old IKE SA first, then start over. The
    // tunnel is down for the round trips of IKE_SA_INIT and IKE_AUTH and comes back
    // without anyone touching vpngw.
    swan.swanctl(&["--rekey", "--ike", "vpn", "--reauth"])
        .unwrap();
    let start = Instant::now();
    while !reauthenticated(&up) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not reauthenticated: {:#}\n{}",
            gw.get(&format!("/v1/vpn-connections/{conn_id}")),
            swan.log_tail(60)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let r = lab::ping(&topo.vpc, &vpc, "10.2.0.1", 3, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, 3, "after the reauthentication: {r:?}");
}

/// strongSwan deletes the tunnel's Child SA and keeps the IKE SA: vpngw negotiates a new
/// Child SA on that IKE SA (CREATE_CHILD_SA without REKEY_SA, RFC 7296 §1.3.1) rather
/// than replacing the IKE SA, whether it or strongSwan initiated the IKE SA.
#[test]
fn a_child_sa_the_peer_deletes_is_negotiated_again_on_the_same_ike_sa() {
    for vpngw_initiates in [true, false] {
        let up = protected_flows_up("", vpngw_initiates);
        swan_deletes_the_child(&up.gw, &up.conn_id, &up.swan, &up.topo);
    }
}

/// A peer that deletes each new Child SA right after it is negotiated (as strongSwan
/// does when it cannot install one) is not answered with a new one every second: each
/// quick loss in a row doubles the delay (1, 2, 4 s, … up to 12 s), and the status says
/// what the peer does. A Child SA that stays resets it.
#[test]
fn a_peer_that_keeps_deleting_new_child_sas_gets_them_ever_more_slowly() {
    let up = protected_flows_up("", true);
    let mut spi = up.tunnel["status"]["child_sas"][0]["spi_in"].clone();
    for _ in 0..3 {
        up.swan.terminate_child("net").unwrap();
        let t = up.gw.wait_tunnel(
            &up.conn_id,
            "a new Child SA",
            Duration::from_secs(15),
            |s| phase(s) == "established" && s["child_sas"][0]["spi_in"] != spi,
        );
        spi = t["status"]["child_sas"][0]["spi_in"].clone();
    }
    let lost: Vec<String> = up
        .gw
        .logs(&up.conn_id, 100)
        .iter()
        .filter(|e| e["event"] == "child_sa_lost")
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect();
    assert_eq!(lost.len(), 2, "the second and the third: {lost:#?}");
    for (m, (n, delay)) in lost.iter().zip([(2, 2), (3, 4)]) {
        assert!(
            m.contains(&format!(
                "after it was negotiated ({n} times in a row within 10 s): the peer accepts \
                 Child SAs and then deletes them"
            )) && m.ends_with(&format!("renegotiating in {delay} s")),
            "{m}"
        );
    }
    let events = up.gw.events(&up.conn_id);
    assert_eq!(
        events.iter().filter(|e| *e == "child_create").count(),
        3,
        "{events:?}"
    );
}

/// After strongSwan deletes the tunnel's Child SA, the CREATE_CHILD_SA that negotiates a
/// new one on the IKE SA goes unanswered (the router drops it; everything else passes):
/// from its second retransmission on the status says so, while the tunnel shows
/// `phase2_negotiating`, and once the path carries it again the tunnel comes back on
/// the same IKE SA.
#[test]
fn an_unanswered_child_sa_negotiation_shows_in_the_status() {
    let up = protected_flows_up("", true);
    let ike = up.tunnel["status"]["ike_sa"]["spis"].clone();
    // The router drops IKE messages of exchange type 36 (CREATE_CHILD_SA, octet 18 of
    // the IKE header, RFC 7296 §3.1) towards strongSwan: behind the 4-byte non-ESP
    // marker on UDP 4500 (RFC 3948 §2.2), right after the UDP header on 500.
    lab::nft::nft(
        &up.topo.inet,
        "table inet child {
  chain drops {
    type filter hook forward priority 0; policy accept;
    ip daddr 198.51.100.1 udp dport 4500 @th,240,8 36 counter drop
    ip daddr 198.51.100.1 udp dport 500 @th,208,8 36 counter drop
  }
}",
    )
    .unwrap();
    up.swan.terminate_child("net").unwrap();
    let t = up.gw.wait_tunnel(
        &up.conn_id,
        "an interim reason",
        Duration::from_secs(20),
        |s| {
            s["reason"]
                .as_str()
                .is_some_and(|r| r.contains("to CREATE_CHILD_SA (sent 3 times)"))
        },
    );
    let s = &t["status"];
    assert_eq!(phase(s), "phase2_negotiating", "{t:#}");
    let reason = s["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("no answer yet from 198.51.100.1:")
            && reason.contains("the peer answered on this IKE SA before"),
        "{reason}"
    );
    lab::nft::nft(&up.topo.inet, "delete table inet child").unwrap();
    let t = up.gw.wait_tunnel(
        &up.conn_id,
        "established again",
        Duration::from_secs(30),
        |s| phase(s) == "established",
    );
    assert_eq!(t["status"]["ike_sa"]["spis"], ike, "the same IKE SA: {t:#}");
    assert!(t["status"]["reason"].is_null(), "{t:#}");
}

/// strongSwan with `childless = force` (RFC 6023) makes the IKE SA without a Child SA
/// in IKE_AUTH and then the Child SA with CREATE_CHILD_SA, with a Diffie-Hellman
/// exchange of its own; as responder it accepts only IKE SAs initiated that way and
/// drops one whose IKE_AUTH carries a Child SA. Either side initiating, the tunnel
/// comes up and carries ping; vpngw as initiator learns it from the first refusal,
/// says so, and starts over at once without a Child SA in IKE_AUTH. strongSwan's
/// make-before-break re-authentication, childless too, loses no packet.
#[test]
fn strongswan_that_forces_childless_ike_sas() {
    for vpngw_initiates in [true, false] {
        let mut conn = default_conn("10.2.0.0/24", "172.16.1.0/24", |_| {});
        conn.childless = Some("force".into());
        let up = protected_flows_up_with("make_before_break = yes", vpngw_initiates, conn);
        let vpc = up.topo.vpc_ip().to_string();
        lab::wait_ping(&up.topo.vpc, &vpc, "10.2.0.1", Duration::from_secs(10)).unwrap();
        let events = up.gw.events(&up.conn_id);
        let count = |name: &str| events.iter().filter(|e| *e == name).count();
        let expected: &[(&str, usize)] = if vpngw_initiates {
            &[
                ("childless_required", 1),
                ("phase1_start", 2),
                ("child_create", 1),
            ]
        } else {
            &[("childless", 1), ("phase1_start", 0)]
        };
        for (name, n) in expected {
            assert_eq!(count(name), *n, "{name} in {events:?}");
        }
        for wrong in ["phase1_failed", "phase2_failed", "retry", "reset"] {
            assert_eq!(count(wrong), 0, "{wrong} in {events:?}");
        }
        let c = up.gw.get(&format!("/v1/vpn-connections/{}", up.conn_id));
        let s = &c["tunnels"][0]["status"];
        assert_eq!(phase(s), "established", "{c:#}");
        // The Child SA of CREATE_CHILD_SA used the PFS group (IKE_AUTH's would not).
        assert_eq!(
            s["child_sas"][0]["algorithms"], "aes128-sha1-modp1024",
            "{c:#}"
        );
        // strongSwan re-authenticates make-before-break the same way: a new IKE SA
        // without a Child SA, its Child SA with CREATE_CHILD_SA, then the old IKE SA's
        // Delete. Not a ping may be lost.
        let mut asked = false;
        ping_across(
            &up.topo,
            "the childless re-authentication",
            Duration::from_secs(30),
            || {
                if !asked {
                    up.swan
                        .swanctl(&["--rekey", "--ike", "vpn", "--reauth"])
                        .unwrap();
                    asked = true;
                }
                reauthenticated(&up)
            },
        );
        let events = up.gw.events(&up.conn_id);
        for wrong in [
            "phase1_failed",
            "phase2_failed",
            "retry",
            "reset",
            "ike_deleted",
        ] {
            assert_eq!(
                events.iter().filter(|e| *e == wrong).count(),
                0,
                "{wrong} in {events:?}"
            );
        }
    }
}

/// strongSwan brings up the IKE SA alone (`swanctl --initiate --ike`: childless, RFC
/// 6023) and no Child SA follows from it. vpngw, which may initiate this tunnel,
/// negotiates the Child SA on that IKE SA itself a few seconds later.
#[test]
fn a_childless_ike_sa_the_peer_leaves_without_a_child_sa_gets_one() {
    let (topo, gw, swan) = swan_lab("", default_conn("10.2.0.0/24", "172.16.1.0/24", |_| {}));
    let conn_id = create_connection(&gw, "protected_flows", false, json!({}));
    gw.wait_tunnel(&conn_id, "idle", Duration::from_secs(10), |s| {
        phase(s) == "idle"
    });
    swan.swanctl(&["--initiate", "--ike", "vpn"]).unwrap();
    let t = gw.wait_tunnel(
        &conn_id,
        "IKE SA without a Child SA",
        Duration::from_secs(10),
        |s| phase(s) == "phase2_negotiating",
    );
    let ike = t["status"]["ike_sa"]["spis"].clone();
    let t = gw.wait_tunnel(&conn_id, "established", Duration::from_secs(15), |s| {
        phase(s) == "established"
    });
    assert_eq!(t["status"]["ike_sa"]["spis"], ike, "the same IKE SA: {t:#}");
    let events = gw.events(&conn_id);
    let count = |name: &str| events.iter().filter(|e| *e == name).count();
    for (name, n) in [("childless", 1), ("child_create", 1), ("phase1_start", 0)] {
        assert_eq!(count(name), n, "{name} in {events:?}");
    }
    let sas = swan.list_sas().unwrap();
    assert_eq!(sas.len(), 1, "{sas:?}");
    assert_eq!(sas[0].children.len(), 1, "{sas:?}");
    let vpc = topo.vpc_ip().to_string();
    lab::wait_ping(&topo.vpc, &vpc, "10.2.0.1", Duration::from_secs(5)).unwrap();
}

/// An on-premises device that restarts (a crash, a reboot) forgets its SAs and, coming
/// back, starts a new IKE SA with INITIAL_CONTACT (RFC 7296 §2.4): it holds no other
/// IKE SA with us. vpngw drops what it held with the old incarnation at once, carries
/// the tunnel on the new SAs and does not negotiate an IKE SA of its own beside them.
#[test]
fn a_restarted_strongswan_that_reconnects_replaces_the_old_sas() {
    let up = protected_flows_up("", true);
    let Up {
        swan,
        gw,
        conn_id,
        tunnel,
        first: _,
        topo,
    } = up;
    let vpc = topo.vpc_ip().to_string();
    lab::wait_ping(&topo.vpc, &vpc, "10.2.0.1", Duration::from_secs(10)).unwrap();
    swan.crash().unwrap();
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan-2").unwrap()).unwrap();
    swan.load(&swanctl::render(&[default_conn(
        "10.2.0.0/24",
        "172.16.1.0/24",
        |_| {},
    )]))
    .unwrap();
    let new = swan_reconnects(&gw, &conn_id, &swan, &topo);
    let spis = json!({"initiator": new.spi_i, "responder": new.spi_r});
    assert_ne!(tunnel["status"]["ike_sa"]["spis"], spis);
    // Past the node's restart delay: nothing renegotiates beside the new IKE SA.
    std::thread::sleep(Duration::from_secs(3));
    let sas = swan.list_sas().unwrap();
    assert_eq!(sas.len(), 1, "{sas:?}");
    assert_eq!(sas[0].uniqueid, new.uniqueid, "{sas:?}");
    let events = gw.events(&conn_id);
    let count = |name: &str| events.iter().filter(|e| *e == name).count();
    assert_eq!(count("initial_contact"), 1, "{events:?}");
    assert_eq!(
        count("phase1_start"),
        1,
        "only the first IKE SA: {events:?}"
    );
    for wrong in ["duplicate_ike_sa", "retry", "reset"] {
        assert_eq!(count(wrong), 0, "{wrong} in {events:?}");
    }
    let c = gw.get(&format!("/v1/vpn-connections/{conn_id}"));
    let s = &c["tunnels"][0]["status"];
    assert_eq!(phase(s), "established", "{c:#}");
    assert_eq!(s["ike_sa"]["spis"], spis, "{c:#}");
}

/// strongSwan configured with one child per subnet (as policy-based devices often are)
/// asks for a second Child SA on the IKE SA for other subnets. vpngw carries a tunnel
/// on one Child SA at a time, so it refuses the second (NO_ADDITIONAL_SAS) and says why
/// and what to configure instead, and the first one keeps carrying its traffic.
#[test]
fn a_second_child_sa_for_other_subnets_is_refused_with_the_reason() {
    let topo = Topology::new().unwrap();
    let gw = Gateway::start(&topo.gw);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    let mut conn = default_conn("10.2.0.0/25", "172.16.1.0/24", |_| {});
    let mut second = conn.children[0].clone();
    second.name = "net2".into();
    second.local_ts = vec!["10.2.0.128/25".into()];
    conn.children.push(second);
    swan.load(&swanctl::render(&[conn])).unwrap();
    let conn_id = create_connection(&gw, "protected_flows", false, json!({}));
    gw.wait_tunnel(&conn_id, "idle", Duration::from_secs(10), |s| {
        phase(s) == "idle"
    });
    swan.initiate("net").unwrap();
    gw.wait_tunnel(&conn_id, "established", Duration::from_secs(20), |s| {
        phase(s) == "established"
    });
    let monitor = vpc_ping_monitor(&topo);
    let refused = swan.initiate("net2").unwrap_err().to_string();
    assert!(refused.contains("NO_ADDITIONAL_SAS"), "{refused}");
    // Past the 5 s a Child SA beside another would wait before taking the traffic.
    std::thread::sleep(Duration::from_secs(7));
    let report = monitor.stop().unwrap();
    assert!(report.sent > 100, "{report:?}");
    assert!(report.losses.is_empty(), "{report:?}");
    let logs = gw.logs(&conn_id, 100);
    // The first Child SA covers half of what the tunnel allows, and the log says so.
    let narrowed = logs
        .iter()
        .find(|e| e["event"] == "ts_narrowed")
        .and_then(|e| e["message"].as_str())
        .unwrap_or_else(|| panic!("{logs:#?}"));
    assert!(
        narrowed.contains(
            "172.16.1.0/24 === 10.2.0.0/25, less than the tunnel's 172.16.1.0/24 === 10.2.0.0/24"
        ),
        "{narrowed}"
    );
    let why = logs
        .iter()
        .find(|e| e["event"] == "child_sa_refused")
        .and_then(|e| e["message"].as_str())
        .unwrap_or_else(|| panic!("{logs:#?}"));
    assert!(
        why.contains("172.16.1.0/24 === 10.2.0.128/25")
            && why.contains("172.16.1.0/24 === 10.2.0.0/25")
            && why.contains("one child"),
        "{why}"
    );
    let c = gw.get(&format!("/v1/vpn-connections/{conn_id}"));
    let s = &c["tunnels"][0]["status"];
    assert_eq!(phase(s), "established", "{c:#}");
    assert_eq!(s["child_sas"].as_array().map(Vec::len), Some(1), "{c:#}");
    assert_eq!(
        s["child_sas"][0]["remote_ts"],
        json!(["10.2.0.0/25"]),
        "{c:#}"
    );
}
