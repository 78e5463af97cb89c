//! vpngw ↔ vpngw: two gateway nodes, each in its own namespace with its own data
//! directory (SQLite store, admin token), configured to each other through their HTTP
//! APIs; gateway A initiates, gateway B responds; hosts behind each ping each other
//! (needs root). With short Child SA lifetimes on both ends, both rekey in turn under a
//! 50 ms ping that must not lose a packet.
//!
//! ```text
//!  host-a eth0 172.16.1.10/24 — vpc0 172.16.1.1/24  gw-a  pub0 192.0.2.1/24 — gw0 192.0.2.254/24
//!                                                                              inet
//!  host-b eth0 10.2.0.10/24   — vpc0 10.2.0.1/24    gw-b  pub0 198.51.100.1/24 — peer0 198.51.100.254/24
//! ```
//!
//! Each node runs in-process in its namespace as `vpngw serve` runs it (API + node), like
//! the other interop tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::time::{Duration, Instant};

mod common;

use common::{Gateway, metric, phase};
use lab::vpngw::id;
use lab::{Iperf3Server, Netns, PingMonitor, Workdir, veth};
use serde_json::{Value, json};

const PSK: &str = "pair-psk-7Hq";
const A_PUB: &str = "192.0.2.1";
const B_PUB: &str = "198.51.100.1";
const A_NET: &str = "172.16.1.0/24";
const B_NET: &str = "10.2.0.0/24";
const HOST_A: &str = "172.16.1.10";
const HOST_B: &str = "10.2.0.10";
const DAY: u32 = 86_400;

/// The two sites and the router between them. Field order is drop order: the
/// gateways (nodes) stop before their namespaces go.
struct Pair {
    gw_a: Gateway,
    gw_b: Gateway,
    host_a: Netns,
    _a: Netns,
    _inet: Netns,
    _b: Netns,
    host_b: Netns,
    _workdir: Workdir,
}

impl Pair {
    fn new() -> Pair {
        let host_a = Netns::new("hosta").unwrap();
        let a = Netns::new("gwa").unwrap();
        let inet = Netns::new("inet").unwrap();
        let b = Netns::new("gwb").unwrap();
        let host_b = Netns::new("hostb").unwrap();
        let workdir = Workdir::new("pair").unwrap();

        veth(&host_a, "eth0", &a, "vpc0").unwrap();
        host_a.addr_add("eth0", "172.16.1.10/24").unwrap();
        a.addr_add("vpc0", "172.16.1.1/24").unwrap();
        host_a.route_add("default", "172.16.1.1").unwrap();
        veth(&a, "pub0", &inet, "gw0").unwrap();
        a.addr_add("pub0", "192.0.2.1/24").unwrap();
        inet.addr_add("gw0", "192.0.2.254/24").unwrap();
        a.route_add("default", "192.0.2.254").unwrap();

        veth(&host_b, "eth0", &b, "vpc0").unwrap();
        host_b.addr_add("eth0", "10.2.0.10/24").unwrap();
        b.addr_add("vpc0", "10.2.0.1/24").unwrap();
        host_b.route_add("default", "10.2.0.1").unwrap();
        veth(&b, "pub0", &inet, "peer0").unwrap();
        b.addr_add("pub0", "198.51.100.1/24").unwrap();
        inet.addr_add("peer0", "198.51.100.254/24").unwrap();
        b.route_add("default", "198.51.100.254").unwrap();

        for ns in [&a, &inet, &b] {
            ns.enable_forwarding().unwrap();
        }
        let gw_a = Gateway::start(&a);
        let gw_b = Gateway::start(&b);
        Pair {
            gw_a,
            gw_b,
            host_a,
            _a: a,
            _inet: inet,
            _b: b,
            host_b,
            _workdir: workdir,
        }
    }

    /// A protected-flows connection with day-long lifetimes, A initiating, established
    /// at both ends: (A's connection, B's connection).
    fn established() -> (Pair, String, String) {
        let p = Pair::new();
        let mode = "protected_flows";
        let conn_b = p.configure_b(mode, false, DAY, json!({}));
        let conn_a = p.configure_a(mode, true, DAY, json!({}));
        for (gw, conn) in [(&p.gw_a, &conn_a), (&p.gw_b, &conn_b)] {
            gw.wait_tunnel(conn, "established", Duration::from_secs(20), |s| {
                phase(s) == "established"
            });
        }
        (p, conn_a, conn_b)
    }

    /// Site A's side of a connection to B (see [`configure`]).
    fn configure_a(
        &self,
        mode: &str,
        initiate: bool,
        child_lifetime_s: u32,
        tunnel: Value,
    ) -> String {
        configure(
            &self.gw_a,
            A_PUB,
            A_NET,
            B_PUB,
            B_NET,
            mode,
            initiate,
            child_lifetime_s,
            tunnel,
        )
    }

    /// Site B's side of a connection to A (see [`configure`]).
    fn configure_b(
        &self,
        mode: &str,
        initiate: bool,
        child_lifetime_s: u32,
        tunnel: Value,
    ) -> String {
        configure(
            &self.gw_b,
            B_PUB,
            B_NET,
            A_PUB,
            A_NET,
            mode,
            initiate,
            child_lifetime_s,
            tunnel,
        )
    }
}

/// Configures one side: its gateway, the other side as customer gateway, a
/// protected-flows connection and returns the connection id.
#[allow(clippy::too_many_arguments)]
fn configure(
    gw: &Gateway,
    own_pub: &str,
    own_net: &str,
    peer_pub: &str,
    peer_net: &str,
    mode: &str,
    initiate: bool,
    child_lifetime_s: u32,
    tunnel: Value,
) -> String {
    let g = gw.post(
        "/v1/vpn-gateways",
        json!({"name": "site", "ipsec_addresses": [own_pub], "local_networks": [own_net]}),
    );
    let cgw = gw.post(
        "/v1/customer-gateways",
        json!({"name": "other-site", "ip_address": peer_pub}),
    );
    let mut body = json!({
        "name": "to-other-site",
        "vpn_gateway_id": id(&g),
        "routing_mode": mode,
        "effective_immediately": initiate,
        "tunnels": [{
            "customer_gateway_id": id(&cgw),
            "pre_shared_key": PSK,
            "ike": {"encryption": "aes256", "integrity": "sha256", "dh_group": "group14"},
            "ipsec": {"encryption": "aes-gcm-128", "pfs": "group14", "lifetime_s": child_lifetime_s},
        }],
    });
    if let (Some(t), Some(extra)) = (body["tunnels"][0].as_object_mut(), tunnel.as_object()) {
        t.extend(extra.clone());
    }
    if mode == "protected_flows" {
        body["local_subnets"] = json!([own_net]);
        body["remote_subnets"] = json!([peer_net]);
    }
    let conn = id(&gw.post("/v1/vpn-connections", body));
    if mode == "destination" {
        gw.post(
            &format!("/v1/vpn-gateways/{}/routes", id(&g)),
            json!({"destination": peer_net, "next_hop": conn, "weight": 100}),
        );
    }
    conn
}

/// Child SA rekeys in the node's log: (ones we initiated, ones we answered). The node
/// logs an answered IKEv2 rekey as waiting for the peer before sending on it.
fn rekeys(gw: &Gateway, conn: &str) -> (usize, usize) {
    let logs = gw.get(&format!("/v1/vpn-connections/{conn}/logs?limit=1000"));
    let installed: Vec<&str> = logs["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|e| e["event"] == "esp_sa_installed")
                .filter_map(|e| e["message"].as_str())
                .filter(|m| m.contains("rekeyed Child SA"))
                .collect()
        })
        .unwrap_or_default();
    let answered = installed
        .iter()
        .filter(|m| m.contains("once the peer deletes"))
        .count();
    (installed.len() - answered, answered)
}

/// `child_lifetime_s`: both ends' Child SA lifetime; below a day, both rekey in turn
/// (whichever soft lifetime, 85–90 % with jitter, comes first) under a continuous ping,
/// which must lose nothing.
fn run_pair(mode: &str, child_lifetime_s: u32) {
    let p = Pair::new();
    // B only responds; A initiates as soon as it is configured.
    let conn_b = p.configure_b(mode, false, child_lifetime_s, json!({}));
    p.gw_b
        .wait_tunnel(&conn_b, "B idle", Duration::from_secs(10), |s| {
            phase(s) == "idle"
        });
    let conn_a = p.configure_a(mode, true, child_lifetime_s, json!({}));
    let ta = p
        .gw_a
        .wait_tunnel(&conn_a, "A established", Duration::from_secs(20), |s| {
            phase(s) == "established"
        });
    let tb = p
        .gw_b
        .wait_tunnel(&conn_b, "B established", Duration::from_secs(10), |s| {
            phase(s) == "established"
        });
    for t in [&ta, &tb] {
        assert_eq!(
            t["status"]["ike_sa"]["algorithms"], "aes256-sha256-modp2048",
            "{t:#}"
        );
        assert_eq!(
            t["status"]["child_sas"][0]["algorithms"], "aes128gcm16",
            "{t:#}"
        );
    }
    // Both ends agree on the SAs: A's outbound SPI is B's inbound one.
    assert_eq!(
        ta["status"]["child_sas"][0]["spi_out"], tb["status"]["child_sas"][0]["spi_in"],
        "A: {ta:#}\nB: {tb:#}"
    );

    lab::wait_ping(&p.host_a, HOST_A, HOST_B, Duration::from_secs(10)).unwrap();
    let r = lab::ping(&p.host_a, HOST_A, HOST_B, 5, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, 5, "site A → site B: {r:?}");
    let r = lab::ping(&p.host_b, HOST_B, HOST_A, 5, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, 5, "site B → site A: {r:?}");

    // The traffic really went through the tunnel: both nodes counted it.
    let tb = p
        .gw_b
        .wait_tunnel(&conn_b, "B counters", Duration::from_secs(6), |s| {
            s["child_sas"][0]["packets_in"].as_u64().unwrap_or(0) >= 10
                && s["child_sas"][0]["packets_out"].as_u64().unwrap_or(0) >= 10
        });
    assert_eq!(tb["status"]["carrying_traffic"], true, "{tb:#}");
    if child_lifetime_s == DAY {
        return;
    }
    // Make-before-break in both directions (RFC 7296 §2.8): the rekey initiator sends
    // on the new SA at once, the responder once the initiator deleted the old one. Both
    // ends are vpngw: a ping every 50 ms must not notice.
    let monitor = PingMonitor::start(
        &p.host_a,
        p._workdir.path(),
        HOST_A,
        HOST_B,
        Duration::from_millis(50),
    )
    .unwrap();
    let start = Instant::now();
    let (mut ours, mut theirs) = (0, 0);
    while (ours < 2 || theirs < 2) && start.elapsed() < Duration::from_secs(180) {
        std::thread::sleep(Duration::from_secs(1));
        (ours, theirs) = rekeys(&p.gw_a, &conn_a);
    }
    std::thread::sleep(Duration::from_secs(2));
    let report = monitor.stop().unwrap();
    println!(
        "{:?}: A initiated {ours} Child SA rekeys and answered {theirs}; ping: {report:?}",
        start.elapsed()
    );
    assert!(
        ours >= 2 && theirs >= 2,
        "rekeys by A: {ours}, by B: {theirs}"
    );
    assert_eq!(rekeys(&p.gw_b, &conn_b).1, ours, "B answered A's rekeys");
    // Each end computed its PFS secrets (group14) on its DH threads, as initiator and as
    // responder: at least IKE_SA_INIT's and those of the four rekeys, less one computed
    // in place for each collision (ike/src/offload.rs); without the offload only 1.
    for gw in [&p.gw_a, &p.gw_b] {
        let offloaded = metric(gw, "vpngw_ike_dh_offloaded_total");
        assert!(offloaded >= 3, "{offloaded} shared secrets offloaded");
    }
    assert!(report.sent > 100, "{report:?}");
    assert!(
        report.losses.is_empty(),
        "lost pings across the rekeys: {report:?}"
    );
    // Both ends moved to the same newest Child SA.
    let ta = p.gw_a.get(&format!("/v1/vpn-connections/{conn_a}"));
    let tb = p.gw_b.get(&format!("/v1/vpn-connections/{conn_b}"));
    let (sa, sb) = (&ta["tunnels"][0]["status"], &tb["tunnels"][0]["status"]);
    assert_eq!(
        sa["child_sas"][0]["algorithms"], "aes128gcm16-modp2048",
        "{sa:#}"
    );
    let newest = |s: &Value, k: &str| {
        s["child_sas"]
            .as_array()
            .and_then(|c| c.last())
            .map(|c| c[k].clone())
    };
    assert_eq!(
        newest(sa, "spi_out"),
        newest(sb, "spi_in"),
        "A: {sa:#}\nB: {sb:#}"
    );
}

#[test]
fn vpngw_pair_protected_flows_hosts_ping_each_other() {
    run_pair("protected_flows", DAY);
}

#[test]
fn vpngw_pair_destination_mode_hosts_ping_each_other() {
    run_pair("destination", DAY);
}

#[test]
fn vpngw_pair_child_rekeys_both_ways_under_ping_lose_nothing() {
    run_pair("protected_flows", 12);
}

/// DPD between two vpngw gateways: the path to B breaks, A's liveness checks go
/// unanswered, and A's tunnel status says it was DPD and for how long; while A retries,
/// the phase is `phase1_negotiating` (API.md), not `idle`; when the path is back the
/// tunnel comes back by itself (both ends may initiate at once then: one IKE SA stays).
/// A in destination mode proposes 0.0.0.0/0 and B, in protected flows with half of
/// A's network (172.16.1.0/25), narrows the Child SA to that. A routes by destination
/// alone, as a route-based device does, so traffic from 172.16.1.200 goes into the SA
/// too: B drops it (RFC 4301 §5.2) and says which traffic and why, while traffic from
/// 172.16.1.10 still gets through.
#[test]
fn vpngw_pair_traffic_outside_the_selectors_is_named_by_the_receiver() {
    let p = Pair::new();
    let half = "172.16.1.0/25";
    let conn_b = configure(
        &p.gw_b,
        B_PUB,
        B_NET,
        A_PUB,
        half,
        "protected_flows",
        false,
        DAY,
        json!({}),
    );
    let conn_a = p.configure_a("destination", true, DAY, json!({}));
    for (gw, conn) in [(&p.gw_a, &conn_a), (&p.gw_b, &conn_b)] {
        gw.wait_tunnel(conn, "established", Duration::from_secs(20), |s| {
            phase(s) == "established"
        });
    }
    p.host_a.addr_add("eth0", "172.16.1.200/24").unwrap();
    lab::wait_ping(&p.host_a, HOST_A, HOST_B, Duration::from_secs(10)).unwrap();
    let r = lab::ping(&p.host_a, "172.16.1.200", HOST_B, 3, Duration::from_secs(3)).unwrap();
    assert_eq!(r.received, 0, "{r:?}");
    let m = p.gw_b.wait_log_message(
        &conn_b,
        "carried traffic outside its selectors",
        Duration::from_secs(10),
    );
    assert!(
        m.contains("ESP packet(s) from the peer on Child SA")
            && m.contains(&format!("selectors {half} === {B_NET}"))
            && m.contains(&format!("the last 172.16.1.200 -> {HOST_B}")),
        "{m}"
    );
    let logs = p.gw_b.logs(&conn_b, 100);
    assert!(
        logs.iter()
            .any(|e| e["event"] == "esp_selector_mismatch" && e["level"] == "warn"),
        "{logs:#?}"
    );
    assert!(
        !logs.iter().any(|e| e["event"] == "esp_integrity_failed"),
        "{logs:#?}"
    );
    // The traffic the SA carries still flows.
    let r = lab::ping(&p.host_a, HOST_A, HOST_B, 3, Duration::from_secs(3)).unwrap();
    assert_eq!(r.received, 3, "{r:?}");
}

/// ESP with the SPI of A's inbound SA that was not sealed with its keys (forged here,
/// from B's address): A drops it on the integrity check, says so once in the tunnel's
/// log with the count, and the tunnel carries on.
#[test]
fn vpngw_pair_esp_that_fails_its_integrity_check_is_named() {
    let (p, conn_a, _) = Pair::established();
    lab::wait_ping(&p.host_a, HOST_A, HOST_B, Duration::from_secs(10)).unwrap();
    let t = p.gw_a.get(&format!("/v1/vpn-connections/{conn_a}"));
    let spi_in = t["tunnels"][0]["status"]["child_sas"][0]["spi_in"]
        .as_str()
        .unwrap()
        .to_string();
    let spi = u32::from_str_radix(&spi_in, 16).unwrap();
    const FORGED: u32 = 5;
    p._b.run_in(|| {
        let sock = std::net::UdpSocket::bind((B_PUB, 0)).unwrap();
        for seq in 1..=FORGED {
            // SPI, sequence number, then 8 bytes of IV, 48 of "ciphertext" and a
            // 16-byte ICV (aes-gcm-128) that cannot verify.
            let mut esp = Vec::with_capacity(80);
            esp.extend_from_slice(&spi.to_be_bytes());
            esp.extend_from_slice(&(1_000_000 + seq).to_be_bytes());
            esp.extend_from_slice(&[0xA5; 72]);
            sock.send_to(&esp, (A_PUB, 4500)).unwrap();
        }
    })
    .unwrap();
    let m = p.gw_a.wait_log_message(
        &conn_a,
        "failed their integrity check",
        Duration::from_secs(10),
    );
    // All of them, unless the node's 2-second check fell between two sends: the rest
    // then waits for the next row, a minute later.
    let (count, rest) = m.split_once(' ').unwrap();
    assert!(
        (1..=FORGED).contains(&count.parse().unwrap())
            && rest.starts_with(&format!(
                "ESP packet(s) for Child SA {spi_in} failed their integrity check"
            )),
        "{m}"
    );
    let r = lab::ping(&p.host_a, HOST_A, HOST_B, 3, Duration::from_secs(3)).unwrap();
    assert_eq!(r.received, 3, "{r:?}");
    let t = p.gw_a.get(&format!("/v1/vpn-connections/{conn_a}"));
    assert_eq!(
        t["tunnels"][0]["status"]["child_sas"][0]["spi_in"], spi_in,
        "{t:#}"
    );
}

#[test]
fn vpngw_pair_dpd_reason_and_phase_while_retrying() {
    let p = Pair::new();
    let mode = "protected_flows";
    let conn_b = p.configure_b(
        mode,
        false,
        DAY,
        json!({"dpd_interval_s": 2, "dpd_timeout_s": 6}),
    );
    let conn_a = p.configure_a(
        mode,
        true,
        DAY,
        json!({"dpd_interval_s": 2, "dpd_timeout_s": 6}),
    );
    for (gw, conn) in [(&p.gw_a, &conn_a), (&p.gw_b, &conn_b)] {
        gw.wait_tunnel(conn, "established", Duration::from_secs(20), |s| {
            phase(s) == "established"
        });
    }
    lab::wait_ping(&p.host_a, HOST_A, HOST_B, Duration::from_secs(10)).unwrap();

    // The path to B goes away: nothing from A reaches B any more.
    p._inet.link_down("peer0").unwrap();
    let broke = Instant::now();
    let t = p.gw_a.wait_tunnel(
        &conn_a,
        "DPD declares B dead",
        Duration::from_secs(40),
        |s| phase(s) != "established",
    );
    let reason = t["status"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    println!("after {:?}: {:#}", broke.elapsed(), t["status"]);
    assert!(
        // ESP in UDP between two vpngw: IKE moved to 4500 too (RFC 7296 §2.23).
        reason.starts_with("DPD: peer 198.51.100.1:4500 did not answer for "),
        "{t:#}"
    );
    // Retrying: an IKE_SA_INIT is outstanding, and the reason still says why.
    let t = p.gw_a.wait_tunnel(
        &conn_a,
        "A retrying in phase1_negotiating",
        Duration::from_secs(10),
        |s| phase(s) == "phase1_negotiating",
    );
    assert!(
        t["status"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("DPD: ")),
        "{t:#}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let s = &p.gw_a.get(&format!("/v1/vpn-connections/{conn_a}"))["tunnels"][0]["status"];
    assert_eq!(phase(s), "phase1_negotiating", "{s:#}");

    // The path is back: the tunnel recovers without help and carries traffic.
    p._inet.link_up("peer0").unwrap();
    for (gw, conn) in [(&p.gw_a, &conn_a), (&p.gw_b, &conn_b)] {
        gw.wait_tunnel(conn, "re-established", Duration::from_secs(60), |s| {
            phase(s) == "established"
        });
    }
    lab::wait_ping(&p.host_a, HOST_A, HOST_B, Duration::from_secs(10)).unwrap();
    let r = lab::ping(&p.host_b, HOST_B, HOST_A, 5, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, 5, "site B → site A after recovery: {r:?}");
    // One IKE SA and one Child SA on each side, and they match.
    std::thread::sleep(Duration::from_secs(4));
    let ta = p.gw_a.get(&format!("/v1/vpn-connections/{conn_a}"));
    let tb = p.gw_b.get(&format!("/v1/vpn-connections/{conn_b}"));
    let (sa, sb) = (&ta["tunnels"][0]["status"], &tb["tunnels"][0]["status"]);
    assert_eq!(
        sa["ike_sa"]["spis"], sb["ike_sa"]["spis"],
        "A: {sa:#}\nB: {sb:#}"
    );
    assert_eq!(sa["child_sas"].as_array().map(Vec::len), Some(1), "{sa:#}");
    assert_eq!(sa["child_sas"][0]["spi_out"], sb["child_sas"][0]["spi_in"]);
}

/// Both gateways initiate as soon as they are configured, within the same moment:
/// each end sees two IKE SAs come up and both keep the same one (the engine's
/// lowest-nonce rule), so each side ends with one IKE SA and one Child SA that match.
#[test]
fn vpngw_pair_both_initiate_end_with_one_ike_sa() {
    let p = Pair::new();
    let mode = "protected_flows";
    let (conn_a, conn_b) = std::thread::scope(|s| {
        let b = s.spawn(|| {
            configure(
                &p.gw_b,
                B_PUB,
                B_NET,
                A_PUB,
                A_NET,
                mode,
                true,
                DAY,
                json!({}),
            )
        });
        let a = configure(
            &p.gw_a,
            A_PUB,
            A_NET,
            B_PUB,
            B_NET,
            mode,
            true,
            DAY,
            json!({}),
        );
        (a, b.join().unwrap())
    });
    for (gw, conn) in [(&p.gw_a, &conn_a), (&p.gw_b, &conn_b)] {
        gw.wait_tunnel(conn, "established", Duration::from_secs(30), |s| {
            phase(s) == "established"
        });
    }
    lab::wait_ping(&p.host_a, HOST_A, HOST_B, Duration::from_secs(10)).unwrap();
    // Give a duplicate IKE SA time to be deleted (one round trip), then compare.
    std::thread::sleep(Duration::from_secs(3));
    let ta = p.gw_a.get(&format!("/v1/vpn-connections/{conn_a}"));
    let tb = p.gw_b.get(&format!("/v1/vpn-connections/{conn_b}"));
    let (sa, sb) = (&ta["tunnels"][0]["status"], &tb["tunnels"][0]["status"]);
    let logs = p
        .gw_a
        .get(&format!("/v1/vpn-connections/{conn_a}/logs?limit=1000"));
    let duplicates = logs["items"].as_array().map_or(0, |i| {
        i.iter()
            .filter(|e| e["event"] == "duplicate_ike_sa")
            .count()
    });
    println!("duplicate IKE SAs resolved at A: {duplicates}");
    assert_eq!(sa["phase"], "established", "{sa:#}");
    assert_eq!(sb["phase"], "established", "{sb:#}");
    assert_eq!(
        sa["ike_sa"]["spis"], sb["ike_sa"]["spis"],
        "A: {sa:#}\nB: {sb:#}"
    );
    assert_eq!(sa["child_sas"].as_array().map(Vec::len), Some(1), "{sa:#}");
    assert_eq!(sb["child_sas"].as_array().map(Vec::len), Some(1), "{sb:#}");
    assert_eq!(sa["child_sas"][0]["spi_out"], sb["child_sas"][0]["spi_in"]);
    assert_eq!(sa["child_sas"][0]["spi_in"], sb["child_sas"][0]["spi_out"]);
    let r = lab::ping(&p.host_b, HOST_B, HOST_A, 5, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, 5, "site B → site A: {r:?}");
}

/// Two vpngw without a NAT between them carry ESP in UDP 4500 (the vpngw vendor ID makes
/// the responder force UDP encapsulation, RFC 7296 §2.23), which the data plane sends
/// with UDP GSO and receives with UDP GRO: 100 MB of TCP through the tunnel, not one raw
/// ESP packet, and both offloads counted in `/metrics`.
#[test]
fn vpngw_pair_uses_esp_in_udp_with_gso_and_gro() {
    let (p, conn_a, conn_b) = Pair::established();
    for (gw, conn) in [(&p.gw_a, &conn_a), (&p.gw_b, &conn_b)] {
        let installed: Vec<String> = gw
            .logs(conn, 100)
            .iter()
            .filter(|e| e["event"] == "esp_sa_installed")
            .filter_map(|e| e["message"].as_str().map(String::from))
            .collect();
        assert!(
            !installed.is_empty() && installed.iter().all(|m| m.contains("ESP in UDP")),
            "{installed:#?}"
        );
    }
    bulk_tcp_a_to_b(&p, "ESP in UDP");

    for (name, gw) in [("A", &p.gw_a), ("B", &p.gw_b)] {
        let (_, text) = gw.call_text("GET", "/metrics", None);
        let busy: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("vpngw_dataplane") && !l.ends_with(" 0"))
            .collect();
        println!("{name}: {busy:#?}");
    }
    let m = |gw: &Gateway, name: &str| metric(gw, name);
    for gw in [&p.gw_a, &p.gw_b] {
        assert_eq!(m(gw, r#"vpngw_dataplane_packets_total{path="esp_tx"}"#), 0);
        assert_eq!(m(gw, r#"vpngw_dataplane_packets_total{path="esp_rx"}"#), 0);
        assert_eq!(m(gw, "vpngw_dataplane_udp_gso_disabled_total"), 0);
    }
    // A sent the bulk: TSO super-packets from its TUN device went out as GSO runs, and B
    // read them coalesced and wrote them to its TUN device coalesced again.
    let (sends, reads) = (
        m(&p.gw_a, "vpngw_dataplane_udp_gso_sends_total"),
        m(&p.gw_b, "vpngw_dataplane_udp_gro_reads_total"),
    );
    println!("A: {sends} GSO sends; B: {reads} GRO reads");
    assert!(m(&p.gw_a, "vpngw_dataplane_tun_gso_reads_total") > 0);
    assert!(sends > 0, "A sent no GSO message");
    assert!(reads > 0, "B received no GRO message");
    assert!(m(&p.gw_b, "vpngw_dataplane_tun_gro_writes_total") > 0);
    assert!(m(&p.gw_b, r#"vpngw_dataplane_packets_total{path="udp_rx"}"#) > 60_000);
}

/// Once host A reaches host B through the tunnel, 100 MB of iperf3 TCP from A to B
/// (bounded at 60 s); prints the rate under `what`.
fn bulk_tcp_a_to_b(p: &Pair, what: &str) {
    lab::wait_ping(&p.host_a, HOST_A, HOST_B, Duration::from_secs(10)).unwrap();
    let server = Iperf3Server::start(&p.host_b, p._workdir.path(), HOST_B, 5201).unwrap();
    let r = lab::iperf3_client(
        &p.host_a,
        HOST_A,
        HOST_B,
        server.port(),
        100_000_000,
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(r.bytes_sent >= 100_000_000, "{r:?}");
    println!(
        "iperf3 through {what}: {:.0} Mbit/s",
        r.bits_per_second / 1e6
    );
}

/// The seed's default suite (AES-128-CBC + HMAC-SHA1-96, MODP1024 PFS) between two
/// vpngw: the per-batch crypto (`Handler::end_batch`: four interleaved CBC chains, the
/// HMAC sixteen packets wide where the CPU has AVX-512) seals and opens 100 MB of TCP
/// with not one ICV failure, replay or malformed packet on either side, and the
/// tunnel still answers pings afterwards.
#[test]
fn vpngw_pair_carries_bulk_tcp_with_the_default_cbc_suite() {
    let p = Pair::new();
    let mode = "protected_flows";
    let cbc = || json!({"ipsec": {"encryption": "aes", "integrity": "sha1", "pfs": "group2", "lifetime_s": DAY}});
    let conn_b = p.configure_b(mode, false, DAY, cbc());
    let conn_a = p.configure_a(mode, true, DAY, cbc());
    for (gw, conn) in [(&p.gw_a, &conn_a), (&p.gw_b, &conn_b)] {
        let t = gw.wait_tunnel(conn, "established", Duration::from_secs(20), |s| {
            phase(s) == "established"
        });
        assert_eq!(
            t["status"]["child_sas"][0]["algorithms"], "aes128-sha1",
            "{t:#}"
        );
    }
    bulk_tcp_a_to_b(&p, "aes128-sha1");
    for gw in [&p.gw_a, &p.gw_b] {
        for reason in ["auth_failed", "replay", "malformed", "truncated"] {
            let name = format!(r#"vpngw_dataplane_drops_total{{reason="{reason}"}}"#);
            assert_eq!(metric(gw, &name), 0, "{name}");
        }
    }
    assert!(metric(&p.gw_b, r#"vpngw_dataplane_packets_total{path="udp_rx"}"#) > 60_000);
    lab::wait_ping(&p.host_b, HOST_B, HOST_A, Duration::from_secs(10)).unwrap();
}

/// IKE_SA_INIT with one proposal, 3DES-SHA1-MODP1024, that no tunnel here allows:
/// header (RFC 7296 §3.1), SA with one IKE proposal of four transforms (§3.3), KE for
/// group 2 and a nonce. `n` varies the initiator SPI.
fn ike_sa_init_3des(n: u8) -> Vec<u8> {
    let mut m = vec![0x5a, 0x17, 0, 0, 0, 0, 0, n]; // SPIi
    m.extend([0; 8]); // SPIr
    m.extend([33, 0x20, 34, 0x08]); // next SA, version 2.0, IKE_SA_INIT, initiator
    m.extend([0; 4]); // message ID
    m.extend(244u32.to_be_bytes());
    m.extend([34, 0, 0, 44]); // SA, next KE
    m.extend([0, 0, 0, 40, 1, 1, 0, 4]); // last proposal, #1, IKE, no SPI, 4 transforms
    m.extend([3, 0, 0, 8, 1, 0, 0, 3]); // ENCR_3DES
    m.extend([3, 0, 0, 8, 2, 0, 0, 2]); // PRF_HMAC_SHA1
    m.extend([3, 0, 0, 8, 3, 0, 0, 2]); // AUTH_HMAC_SHA1_96
    m.extend([0, 0, 0, 8, 4, 0, 0, 2]); // 1024-bit MODP
    m.extend([40, 0, 0, 136, 0, 2, 0, 0]); // KE, next nonce, group 2
    m.extend([0x5c; 128]);
    m.extend([0, 0, 0, 36]); // nonce, last
    m.extend([0xa7; 32]);
    assert_eq!(m.len(), 244);
    m
}

/// First messages that no tunnel accepts, from the peer's address — anyone can send
/// them; here from another port of B's address: A answers each NO_PROPOSAL_CHOSEN,
/// counts each, logs why once for the lot, and leaves the established tunnel alone:
/// same IKE SA, same Child SA, still carrying traffic. (A refusal used to mark the
/// tunnel failed, and two seconds later the retry reset its IKE SA.)
#[test]
fn vpngw_pair_refused_first_messages_leave_the_established_tunnel_alone() {
    use ike::wire::registry::NotifyType;
    use ike::wire::{Message, Payload};

    let (p, conn_a, _) = Pair::established();
    lab::wait_ping(&p.host_a, HOST_A, HOST_B, Duration::from_secs(10)).unwrap();
    let status = |conn: &str| {
        p.gw_a.get(&format!("/v1/vpn-connections/{conn}"))["tunnels"][0]["status"].clone()
    };
    let before = status(&conn_a);

    const SENT: usize = 20;
    let answers =
        p._b.run_in(|| {
            let sock = std::net::UdpSocket::bind((B_PUB, 0)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut answers = Vec::new();
            for n in 0..SENT {
                sock.send_to(&ike_sa_init_3des(n as u8), (A_PUB, 500))
                    .unwrap();
                let mut buf = [0u8; 1500];
                if let Ok(len) = sock.recv(&mut buf) {
                    answers.push(buf[..len].to_vec());
                }
            }
            answers
        })
        .unwrap();
    assert_eq!(answers.len(), SENT, "every refusal is answered");
    for a in &answers {
        let m = Message::decode(a).unwrap();
        assert!(
            m.payloads.iter().any(
                |p| matches!(p, Payload::Notify(n) if n.ntype == NotifyType::NO_PROPOSAL_CHOSEN)
            ),
            "{m:?}"
        );
    }

    // Longer than the node's quick retry (2 s) after a failure.
    std::thread::sleep(Duration::from_secs(5));
    let after = status(&conn_a);
    assert_eq!(phase(&after), "established", "{after:#}");
    assert_eq!(
        after["ike_sa"]["spis"], before["ike_sa"]["spis"],
        "{after:#}"
    );
    assert_eq!(
        after["child_sas"][0]["spi_in"], before["child_sas"][0]["spi_in"],
        "{after:#}"
    );
    let r = lab::ping(&p.host_a, HOST_A, HOST_B, 5, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, 5, "site A → site B after the refusals: {r:?}");

    let refusals: Vec<String> = p
        .gw_a
        .logs(&conn_a, 1000)
        .iter()
        .filter(|e| e["event"] == "phase1_failed")
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect();
    assert_eq!(
        refusals.len(),
        1,
        "one report for {SENT} refusals: {refusals:?}"
    );
    assert!(
        refusals[0].starts_with("peer proposed 3des") && refusals[0].contains("this tunnel allows"),
        "{refusals:?}"
    );
    assert_eq!(metric(&p.gw_a, "vpngw_ike_refused_total"), SENT as u64);
}
