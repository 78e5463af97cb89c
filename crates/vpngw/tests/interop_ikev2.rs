//! The real `vpngw serve` binary (API + gateway node) in the lab's `gw` namespace against
//! a real strongSwan 5.9 in `onprem` (needs root and the lab's packages, see `lab`).
//! Resources are created over HTTP with the admin token, as an operator would.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::time::Duration;

use lab::vpngw::id;
use lab::{
    Iperf3Server, StrongSwan, SwanctlChild, SwanctlConn, Topology, Vpngw, VpngwConfig, swanctl,
};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_vpngw");
const PSK: &str = "serve-psk-9Kd";
const SUITE: &str = "aes128-sha1-modp1024";
const ONPREM: &str = "198.51.100.1";
const GW1: &str = "192.0.2.1";
const LISTEN: &str = "127.0.0.1:9280";

/// `vpngw serve` in the `gw` namespace (the lab's driver); stopped on drop.
fn serve(topo: &Topology) -> Vpngw {
    Vpngw::start_on_gw(topo, BIN, LISTEN).unwrap()
}

/// Polls the connection's first tunnel until `pred` holds for its status.
fn wait_tunnel(serve: &Vpngw, conn: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    serve.wait_tunnel(conn, 0, what, Duration::from_secs(30), pred)
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

/// A gateway, strongSwan as its customer gateway, a one-tunnel connection and the route
/// to on-premises through it; returns the gateway's and the connection's IDs.
fn create_connection(serve: &Vpngw, effective_immediately: bool) -> (String, String) {
    let gw = serve.post(
        "/v1/vpn-gateways",
        json!({"name": "lab-gw", "ipsec_addresses": [GW1], "local_networks": ["172.16.0.0/16"]}),
    );
    let gw_id = id(&gw);
    let cgw = serve.post(
        "/v1/customer-gateways",
        json!({"name": "onprem", "ip_address": ONPREM}),
    );
    let conn = serve.post(
        "/v1/vpn-connections",
        json!({
            "name": "to-onprem",
            "vpn_gateway_id": gw_id,
            "effective_immediately": effective_immediately,
            "tunnels": [{"customer_gateway_id": id(&cgw), "pre_shared_key": PSK}],
        }),
    );
    let conn_id = id(&conn);
    serve.post(
        &format!("/v1/vpn-gateways/{gw_id}/routes"),
        json!({"destination": "10.2.0.0/24", "next_hop": conn_id}),
    );
    (gw_id, conn_id)
}

#[test]
fn vpngw_serve_brings_up_a_tunnel_with_strongswan() {
    let topo = Topology::new().unwrap();
    let serve = serve(&topo);
    assert!(serve.data_dir().join("admin.token").exists());
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    swan.load(&swanctl::render(&[onprem_conn()])).unwrap();

    let (gw_id, conn_id) = create_connection(&serve, true);
    let t = wait_tunnel(&serve, &conn_id, "established", |s| {
        s["phase"] == "established"
    });
    assert_eq!(t["status"]["ike_sa"]["algorithms"], SUITE);
    swan.wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        serve.get(&format!("/v1/vpn-gateways/{gw_id}"))["status"],
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

    let t = wait_tunnel(&serve, &conn_id, "counters", |s| {
        s["child_sas"][0]["bytes_out"].as_u64().unwrap_or(0) >= 100_000_000
    });
    assert_eq!(t["status"]["carrying_traffic"], true);
    let logs = serve.get(&format!("/v1/vpn-connections/{conn_id}/logs?limit=1000"));
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

/// `vpngw serve` crashes while strongSwan holds the tunnel's SAs, and is started again
/// on its data directory. A tunnel that initiates (`effective_immediately`) negotiates
/// at once. One that waits for the peer (strongSwan initiated it) would wait until
/// strongSwan's DPD gives up, minutes later, while strongSwan keeps sending ESP on SAs
/// the gateway no longer has: the gateway takes ESP with an unknown SPI from the address
/// of a tunnel's customer gateway as the sign that the peer holds SAs it lost, and
/// negotiates new ones at once (Cisco calls this invalid-SPI recovery). Without
/// `peer_traffic` strongSwan's DPD check (an INFORMATIONAL on the old IKE SA, here
/// after 2 s idle) does the same. Either way the gateway's INITIAL_CONTACT (RFC 7296
/// §2.4) makes strongSwan drop the stale SAs.
fn restart_under_an_established_tunnel(effective_immediately: bool, peer_traffic: bool) {
    let topo = Topology::new().unwrap();
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    let mut conf = onprem_conn();
    if !peer_traffic {
        conf.dpd_delay = Some(2);
    }
    swan.load(&swanctl::render(&[conf])).unwrap();
    let serve = serve(&topo);
    let (_, conn_id) = create_connection(&serve, effective_immediately);
    if !effective_immediately {
        wait_tunnel(&serve, &conn_id, "idle", |s| s["phase"] == "idle");
        swan.initiate("net").unwrap();
    }
    let old = swan
        .wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    wait_tunnel(&serve, &conn_id, "established", |s| {
        s["phase"] == "established"
    });
    let vpc = topo.vpc_ip().to_string();
    lab::wait_ping(&topo.vpc, &vpc, "10.2.0.1", Duration::from_secs(10)).unwrap();

    serve.crash().unwrap();
    let serve = self::serve(&topo);
    let mut pinger = None;
    if !effective_immediately && peer_traffic {
        // A tunnel that waits for the peer waits after a restart too (until the peer's
        // traffic: strongSwan's DPD check may come first, so only with traffic).
        let t = wait_tunnel(&serve, &conn_id, "idle after the restart", |s| {
            s["phase"] == "idle"
        });
        assert!(t["status"]["ike_sa"].is_null(), "{t:#}");
        // On-premises traffic crosses strongSwan's old SAs to the restarted gateway.
        pinger = Some(
            lab::PingMonitor::start(
                &topo.onprem,
                topo.workdir.path(),
                "10.2.0.1",
                &vpc,
                Duration::from_millis(100),
            )
            .unwrap(),
        );
    }
    // The status stored before the crash names the old IKE SA.
    let stale = json!({"initiator": old.spi_i, "responder": old.spi_r});
    let t = wait_tunnel(&serve, &conn_id, "established on new SAs", |s| {
        s["phase"] == "established" && s["ike_sa"]["spis"] != stale
    });
    let spis = &t["status"]["ike_sa"]["spis"];
    let sas = swan
        .wait_sa(Duration::from_secs(10), "one IKE SA, the new one", |sas| {
            (sas.len() == 1 && sas[0].uniqueid != old.uniqueid).then(|| sas.to_vec())
        })
        .unwrap();
    assert_eq!(
        *spis,
        json!({"initiator": sas[0].spi_i, "responder": sas[0].spi_r}),
        "{t:#}"
    );
    assert!(
        !sas[0].initiator,
        "vpngw negotiated the new IKE SA: {sas:?}"
    );
    if let Some(p) = pinger {
        p.wait_replies(1, Duration::from_secs(5)).unwrap();
        let report = p.stop().unwrap();
        assert!(report.received > 0, "{report:?}");
    }
    let r = lab::ping(&topo.vpc, &vpc, "10.2.0.1", 3, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, 3, "VPC → on-premises on the new SAs: {r:?}");
    let events = serve.events(&conn_id);
    let recovered_by = |e: &str| events.iter().any(|x| x == e);
    assert_eq!(
        (
            recovered_by("esp_unknown_spi"),
            recovered_by("ike_unknown_spi")
        ),
        (
            !effective_immediately && peer_traffic,
            !effective_immediately && !peer_traffic
        ),
        "{events:?}"
    );
}

#[test]
fn a_restarted_gateway_renegotiates_the_tunnel_it_initiated() {
    restart_under_an_established_tunnel(true, true);
}

#[test]
fn a_restarted_gateway_recovers_the_tunnel_the_peer_still_holds() {
    restart_under_an_established_tunnel(false, true);
}

#[test]
fn a_restarted_gateway_recovers_an_idle_tunnel_on_the_peers_dpd() {
    restart_under_an_established_tunnel(false, false);
}

/// `vpngw serve` with a connection that waits for the peer; strongSwan (configured by
/// the caller to be refused) initiates. Returns the log message containing `needle`.
fn refused_as_responder(topo: &Topology, swan: &StrongSwan, needle: &str) -> String {
    let serve = serve(topo);
    let (_, conn_id) = create_connection(&serve, false);
    wait_tunnel(&serve, &conn_id, "idle", |s| s["phase"] == "idle");
    // Fails, as the caller arranged.
    let _ = swan.initiate("net");
    serve.wait_log_message(&conn_id, needle, Duration::from_secs(15))
}

/// strongSwan offers extended sequence numbers only (`aes128-sha1-esn`), which vpngw
/// does not use: the Child SA of IKE_AUTH is refused (the IKE SA stays, RFC 7296
/// §1.2) and the reason says that ESN is the one difference.
#[test]
fn a_peer_that_offers_only_esn_is_told_so() {
    let topo = Topology::new().unwrap();
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    let mut conf = onprem_conn();
    conf.children[0].esp_proposals = vec!["aes128-sha1-esn".into()];
    swan.load(&swanctl::render(&[conf])).unwrap();
    // vpngw answers IKE_AUTH with NO_PROPOSAL_CHOSEN for the Child SA.
    let m = refused_as_responder(&topo, &swan, "extended sequence numbers (ESN)");
    assert!(
        m.contains("peer proposed aes128-sha1-esn for the Child SA"),
        "{m}"
    );
}

/// strongSwan set up to authenticate with a certificate (`auth = pubkey`, a
/// self-signed RSA certificate made here with openssl) against a tunnel with a
/// pre-shared key: vpngw refuses IKE_AUTH and says the peer uses signatures, not that
/// the key is wrong.
#[test]
fn a_peer_that_authenticates_with_a_certificate_is_told_so() {
    let topo = Topology::new().unwrap();
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    // swanctl loads credentials from beside the swanctl.conf it is given: the key from
    // private/, the certificate from x509/.
    for d in ["private", "x509"] {
        std::fs::create_dir_all(swan.dir().join(d)).unwrap();
    }
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", &format!("/CN={ONPREM}")])
        .args(["-addext", &format!("subjectAltName=IP:{ONPREM}")])
        .arg("-keyout")
        .arg(swan.dir().join("private/onprem.key"))
        .arg("-out")
        .arg(swan.dir().join("x509/onprem.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = swanctl::render(&[onprem_conn()]).replacen(
        "    local {\n      auth = psk\n",
        "    local {\n      auth = pubkey\n      certs = onprem.pem\n",
        1,
    );
    swan.load(&text).unwrap();
    // vpngw answers IKE_AUTH with AUTHENTICATION_FAILED.
    let m = refused_as_responder(
        &topo,
        &swan,
        "vpngw authenticates with the pre-shared key alone",
    );
    assert!(m.contains("signatures (a certificate)"), "{m}");
    assert!(!m.contains("check the pre-shared key"), "{m}");
}

/// The customer gateway names an address that is not the device's (198.51.100.77;
/// strongSwan is at 198.51.100.1, as if behind a NAT nobody told vpngw about): vpngw's
/// own IKE_SA_INIT goes unanswered and strongSwan's is dropped as from no known peer.
/// The tunnel says that IKE came from 198.51.100.1 and which setting to change; with
/// IKEv1 the same for strongSwan's Main Mode message 1.
#[test]
fn a_customer_gateway_at_the_wrong_address_is_named() {
    for version in [2, 1] {
        customer_gateway_at_the_wrong_address(version);
    }
}

fn customer_gateway_at_the_wrong_address(version: u8) {
    let topo = Topology::new().unwrap();
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    let conf = SwanctlConn {
        version,
        ..onprem_conn()
    };
    swan.load(&swanctl::render(&[conf])).unwrap();
    let serve = serve(&topo);
    let gw = serve.post(
        "/v1/vpn-gateways",
        json!({"name": "lab-gw", "ipsec_addresses": [GW1], "local_networks": ["172.16.0.0/16"]}),
    );
    let cgw = serve.post(
        "/v1/customer-gateways",
        json!({"name": "onprem", "ip_address": "198.51.100.77"}),
    );
    let conn = serve.post(
        "/v1/vpn-connections",
        json!({
            "name": "to-onprem",
            "vpn_gateway_id": id(&gw),
            "tunnels": [{"customer_gateway_id": id(&cgw), "pre_shared_key": PSK,
                         "ike": {"version": format!("ikev{version}")}}],
        }),
    );
    let conn_id = id(&conn);
    // Unanswered: swanctl gives up waiting after a second, charon keeps trying.
    let _ = swan.swanctl(&["--initiate", "--child", "net", "--timeout", "1"]);
    let m = serve.wait_log_message(
        &conn_id,
        "where no tunnel expects that address",
        Duration::from_secs(15),
    );
    assert!(
        m.contains(&format!("IKE from {ONPREM}:500 reached {GW1}:500")),
        "{m}"
    );
    assert!(m.contains("this tunnel expects 198.51.100.77"), "{m}");
    let t = wait_tunnel(&serve, &conn_id, "the note in the status", |s| {
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("set the customer gateway's ip_address"))
    });
    assert_ne!(t["status"]["phase"], "established", "{t:#}");
    // vpngw's own first message to .77 goes unanswered: from its second
    // retransmission (about 11 s) the status says so while it keeps trying.
    let t = wait_tunnel(&serve, &conn_id, "the unanswered first exchange", |s| {
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no answer yet from 198.51.100.77:500 to "))
    });
    assert_eq!(t["status"]["phase"], "phase1_negotiating", "{t:#}");
}

/// strongSwan sends IKE to another address of this gateway host (192.0.2.2) than its
/// tunnel's gateway address (192.0.2.1), as when a device has the two tunnels'
/// addresses swapped: the tunnel names the address the peer used and the one to set,
/// instead of calling its own peer an address no tunnel expects.
#[test]
fn a_peer_that_sends_to_another_gateway_address_is_told_which() {
    const OTHER: &str = "192.0.2.2";
    let topo = Topology::new().unwrap();
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    let conf = SwanctlConn {
        remote_addrs: vec![OTHER.into()],
        ..onprem_conn()
    };
    swan.load(&swanctl::render(&[conf])).unwrap();
    let serve = serve(&topo);
    let (_, conn_id) = create_connection(&serve, false);
    // Unanswered: swanctl gives up waiting after a second, charon keeps trying.
    let _ = swan.swanctl(&["--initiate", "--child", "net", "--timeout", "1"]);
    let m = serve.wait_log_message(&conn_id, "tunnel's peer", Duration::from_secs(15));
    assert!(
        m.contains(&format!(
            "IKE from this tunnel's peer {ONPREM}:500 reached {OTHER}:500, not this tunnel's \
             gateway address {GW1}: set the device's remote address for this tunnel to {GW1}"
        )),
        "{m}"
    );
    let t = wait_tunnel(&serve, &conn_id, "the note in the status", |s| {
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("set the device's remote address"))
    });
    assert_eq!(t["status"]["phase"], "idle", "{t:#}");
}

/// Packets from `from` to `to`:4500 that are NAT-keepalives (RFC 3948 §2.3: one octet,
/// so the UDP length is 9), as counted by the `nat` namespace's table `inet ka`.
fn keepalives(topo: &Topology, from: &str) -> u64 {
    let ruleset = lab::nft::ruleset(topo.nat.as_ref().unwrap()).unwrap();
    ruleset
        .lines()
        .find(|l| l.contains(&format!("ip saddr {from} ")))
        .and_then(|l| l.split("counter packets ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter for {from} in {ruleset}"))
}

/// Gateway B, a second `vpngw serve`, sits behind the lab's masquerading NAT and
/// initiates to gateway A. B knows it is behind a NAT (RFC 7296 §2.23) and, with
/// `--nat-keepalive 2`, sends a NAT-keepalive whenever its Child SA sent nothing for
/// 2 s, so the NAT keeps its mapping while the tunnel is idle; none while traffic
/// flows, and none from A, which is not behind a NAT.
#[test]
fn a_gateway_behind_a_nat_sends_keepalives_while_idle() {
    let topo = Topology::build(lab::TopologyConfig::with_nat()).unwrap();
    let public = topo.onprem_public_ip().to_string();
    let private = topo.onprem_local_ip().to_string();
    // Counters in the NAT's forward hook, which sees B's private address (the
    // masquerading comes after it).
    lab::nft::nft(
        topo.nat.as_ref().unwrap(),
        &format!(
            "table inet ka {{
  chain counting {{
    type filter hook forward priority 0; policy accept;
    ip saddr {private} ip daddr {GW1} udp dport 4500 udp length 9 counter
    ip saddr {GW1} ip daddr {private} udp dport 4500 udp length 9 counter
  }}
}}"
        ),
    )
    .unwrap();
    let a = serve(&topo);
    let (_, a_conn) = create_connection(&a, false);
    let b_dir = topo.workdir.subdir("vpngw-b").unwrap();
    let b = Vpngw::start(
        &topo.onprem,
        &VpngwConfig {
            bin: BIN,
            dir: &b_dir,
            listen: LISTEN,
            extra_args: &["--nat-keepalive", "2"],
        },
    )
    .unwrap();
    let b_gw = b.post(
        "/v1/vpn-gateways",
        json!({"name": "onprem", "ipsec_addresses": [private], "local_networks": ["10.2.0.0/24"]}),
    );
    let b_cgw = b.post(
        "/v1/customer-gateways",
        json!({"name": "vpc", "ip_address": GW1}),
    );
    let b_conn = id(&b.post(
        "/v1/vpn-connections",
        json!({
            "name": "to-vpc",
            "vpn_gateway_id": id(&b_gw),
            "tunnels": [{"customer_gateway_id": id(&b_cgw), "pre_shared_key": PSK,
                         "ike": {"local_id": public}}],
        }),
    ));
    b.post(
        &format!("/v1/vpn-gateways/{}/routes", id(&b_gw)),
        json!({"destination": "172.16.0.0/16", "next_hop": b_conn}),
    );
    wait_tunnel(&a, &a_conn, "established", |s| s["phase"] == "established");
    let vpc = topo.vpc_ip().to_string();
    lab::wait_ping(&topo.vpc, &vpc, "10.2.0.1", Duration::from_secs(10)).unwrap();

    // Idle: B's keepalives every 2 s (checked on its 2 s status tick).
    let idle_from = keepalives(&topo, &private);
    std::thread::sleep(Duration::from_secs(9));
    let idle = keepalives(&topo, &private) - idle_from;
    assert!(
        (2..=5).contains(&idle),
        "{idle} keepalives in 9 idle seconds"
    );

    // Traffic: B's echo replies go out on the Child SA, so no keepalive is due.
    let pinger = lab::PingMonitor::start(
        &topo.vpc,
        topo.workdir.path(),
        &vpc,
        "10.2.0.1",
        Duration::from_millis(200),
    )
    .unwrap();
    pinger.wait_replies(1, Duration::from_secs(5)).unwrap();
    let busy_from = keepalives(&topo, &private);
    std::thread::sleep(Duration::from_secs(6));
    let busy = keepalives(&topo, &private) - busy_from;
    let r = pinger.stop().unwrap();
    assert!(r.received >= 25, "{r:?}");
    assert!(busy <= 1, "{busy} keepalives in 6 seconds of traffic");
    assert_eq!(keepalives(&topo, GW1), 0, "A is not behind a NAT");
    // A consumed them without counting them as anything wrong.
    let consumed = a.metric("vpngw_dataplane_drops_total{reason=\"nat_keepalive\"}");
    assert!(consumed >= idle, "{consumed} < {idle}");
    assert_eq!(
        a.metric("vpngw_dataplane_drops_total{reason=\"malformed\"}"),
        0
    );
}

/// A responder under load (here `--ike-cookie-threshold 0`: every IKE_SA_INIT gets a
/// COOKIE first) and strongSwan as the initiator: strongSwan repeats its request with
/// the cookie (RFC 7296 §2.6) and the tunnel comes up and carries traffic.
#[test]
fn strongswan_returns_the_cookie_of_a_loaded_responder() {
    let topo = Topology::new().unwrap();
    let dir = topo.workdir.subdir("vpngw").unwrap();
    let serve = Vpngw::start(
        &topo.gw,
        &VpngwConfig {
            bin: BIN,
            dir: &dir,
            listen: LISTEN,
            extra_args: &["--ike-cookie-threshold", "0"],
        },
    )
    .unwrap();
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    swan.load(&swanctl::render(&[onprem_conn()])).unwrap();
    // Not effective immediately: vpngw waits, strongSwan initiates.
    let (_, conn_id) = create_connection(&serve, false);
    assert_eq!(serve.metric("vpngw_ike_cookies_sent_total"), 0);
    swan.initiate("net").unwrap();
    let t = wait_tunnel(&serve, &conn_id, "established", |s| {
        s["phase"] == "established"
    });
    assert_eq!(t["status"]["ike_sa"]["algorithms"], SUITE);
    swan.wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    assert!(serve.metric("vpngw_ike_cookies_sent_total") >= 1);
    assert_eq!(serve.metric("vpngw_ike_cookies_invalid_total"), 0);
    let vpc = topo.vpc_ip().to_string();
    lab::wait_ping(&topo.vpc, &vpc, "10.2.0.1", Duration::from_secs(10)).unwrap();
}
