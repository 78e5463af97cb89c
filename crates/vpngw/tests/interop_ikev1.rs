//! IKEv1 (RFC 2409) interop: the real `vpngw serve` binary in the lab's `gw` namespace
//! against a real strongSwan 5.9 in `onprem` (and against a second `vpngw serve`), set
//! up over the HTTP API as an operator would (needs root and the lab's packages, see
//! `lab`).
//!
//! Each test builds its own lab; every wait is bounded and everything started is
//! stopped on Drop. When a test fails, the lab keeps its work directory (charon.log at
//! ike=2, vpngw's log) and prints the tails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::net::UdpSocket;
use std::ops::Deref;
use std::path::Path;
use std::time::{Duration, Instant};

use lab::vpngw::{established, id, merge};
use lab::{
    Iperf3Server, Netns, PingMonitor, StrongSwan, SwanctlChild, SwanctlConn, Topology, Vpngw,
    VpngwConfig, swanctl,
};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_vpngw");
const PSK: &str = "ikev1-psk-4Rt";
const ONPREM: &str = "198.51.100.1";
const GW1: &str = "192.0.2.1";
const LISTEN: &str = "127.0.0.1:9280";
const SUITE: &str = "aes128-sha1-modp1024";
/// FQDN identities for aggressive mode.
const GW_FQDN: &str = "vpngw.example.com";
const ONPREM_FQDN: &str = "onprem.example.com";

/// `vpngw serve` in a namespace (the lab's driver) with this file's helpers.
struct Serve(Vpngw);

impl Deref for Serve {
    type Target = Vpngw;
    fn deref(&self) -> &Vpngw {
        &self.0
    }
}

impl Serve {
    fn start(ns: &Netns, dir: &Path) -> Serve {
        let config = VpngwConfig {
            bin: BIN,
            dir,
            listen: LISTEN,
            extra_args: &[],
        };
        Serve(Vpngw::start(ns, &config).unwrap())
    }

    /// A gateway on `addr` serving `local_networks`, and a customer gateway at `peer`.
    fn base(&self, addr: &str, local_networks: &[&str], peer: &str) -> (String, String) {
        let gw = self.post(
            "/v1/vpn-gateways",
            json!({"name": "lab-gw", "ipsec_addresses": [addr], "local_networks": local_networks}),
        );
        let cgw = self.post(
            "/v1/customer-gateways",
            json!({"name": "peer", "ip_address": peer}),
        );
        (id(&gw), id(&cgw))
    }

    /// Creates a connection with one IKEv1 tunnel (`tunnel` is merged over the
    /// defaults) and returns (connection id, tunnel id).
    fn connection(&self, gw: &str, cgw: &str, conn: Value, tunnel: Value) -> (String, String) {
        let mut t = json!({
            "customer_gateway_id": cgw,
            "pre_shared_key": PSK,
            "ike": {"version": "ikev1"},
        });
        merge(&mut t, tunnel);
        let mut body = json!({
            "name": "v1",
            "vpn_gateway_id": gw,
            "routing_mode": "destination",
            "effective_immediately": true,
            "tunnels": [t],
        });
        merge(&mut body, conn);
        let c = self.post("/v1/vpn-connections", body);
        let tunnel_id = c["tunnels"][0]["id"].as_str().unwrap().to_string();
        (id(&c), tunnel_id)
    }

    /// The lab's gateway with one IKEv1 connection to strongSwan that waits for it to
    /// initiate (idle, routed to on-premises); returns the connection id.
    fn responder_connection(&self) -> String {
        let (gw, cgw) = self.base(GW1, &["172.16.0.0/16"], ONPREM);
        let (conn, _) = self.connection(
            &gw,
            &cgw,
            json!({"effective_immediately": false}),
            json!({}),
        );
        self.route(&gw, "10.2.0.0/24", &conn);
        self.wait_tunnel(&conn, "idle", Duration::from_secs(10), |s| {
            phase(s) == "idle"
        });
        conn
    }

    fn route(&self, gw: &str, dst: &str, conn: &str) {
        self.post(
            &format!("/v1/vpn-gateways/{gw}/routes"),
            json!({"destination": dst, "next_hop": conn, "weight": 100}),
        );
    }

    /// Polls the connection's first tunnel until `pred` holds for its status.
    fn wait_tunnel(
        &self,
        conn: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        self.0.wait_tunnel(conn, 0, what, timeout, pred)
    }

    fn wait_established(&self, conn: &str, timeout: Duration) -> Value {
        self.wait_tunnel(conn, "established", timeout, established)
    }
}

fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or("")
}

/// strongSwan on-premises speaking IKEv1 to the gateway's tunnel-1 address.
fn onprem_v1(ike: &str, esp: &str, local_ts: &str, remote_ts: &str) -> SwanctlConn {
    SwanctlConn {
        version: 1,
        proposals: vec![ike.into()],
        dpd_delay: Some(10),
        ..SwanctlConn::psk("vpn", ONPREM, GW1, PSK)
    }
    .child(SwanctlChild {
        esp_proposals: vec![esp.into()],
        ..SwanctlChild::new("net", local_ts, remote_ts)
    })
}

fn start_swan(topo: &Topology, conn: &SwanctlConn) -> StrongSwan {
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    swan.load(&swanctl::render(std::slice::from_ref(conn)))
        .unwrap();
    swan
}

fn start_serve(topo: &Topology) -> Serve {
    Serve::start(&topo.gw, &topo.workdir.subdir("vpngw").unwrap())
}

/// nftables table `inet qm3`: drops IKEv1 Quick Mode message 3 from `from` to `to`.
/// The exchange type is in the clear at ISAKMP header byte 18 (RFC 2408 §3.1): bit
/// 208 of the transport header on port 500 (after the 8-byte UDP header), bit 240 on
/// port 4500 (after the 4-byte non-ESP marker too, RFC 3948 §2.2). Of a Quick Mode's
/// three messages only the third is this short (HASH alone: 60 bytes with SHA-1).
fn hold_quick_mode_3(from: &str, to: &str) -> String {
    format!(
        "table inet qm3 {{
  chain prerouting {{
    type filter hook prerouting priority raw; policy accept;
    ip saddr {from} ip daddr {to} udp dport 500 @th,208,8 32 udp length < 100 counter drop
    ip saddr {from} ip daddr {to} udp dport 4500 @th,240,8 32 udp length < 104 counter drop
  }}
}}"
    )
}

/// `n` pings each way between the VPC host and 10.2.0.1, all answered.
fn ping_both_ways(topo: &Topology, n: u32) {
    let vpc = topo.vpc_ip();
    lab::wait_ping(&topo.vpc, vpc, "10.2.0.1", Duration::from_secs(10)).unwrap();
    let r = lab::ping(&topo.vpc, vpc, "10.2.0.1", n, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, n, "VPC → on-premises: {r:?}");
    let r = lab::ping(&topo.onprem, "10.2.0.1", vpc, n, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, n, "on-premises → VPC: {r:?}");
}

/// 10 MB of TCP from the VPC host to on-premises.
fn iperf_10mb(topo: &Topology) -> lab::Iperf3Result {
    let server = Iperf3Server::start(&topo.onprem, topo.workdir.path(), "10.2.0.1", 5201).unwrap();
    let r = lab::iperf3_client(
        &topo.vpc,
        topo.vpc_ip(),
        "10.2.0.1",
        server.port(),
        10_000_000,
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(r.bytes_sent >= 10_000_000, "{r:?}");
    eprintln!(
        "iperf3 through the IKEv1 tunnel: {:.0} Mbit/s",
        r.bits_per_second / 1e6
    );
    r
}

fn assert_v1(t: &Value, ike_algs: &str) {
    let s = &t["status"];
    assert_eq!(phase(s), "established", "{t:#}");
    assert_eq!(s["ike_sa"]["version"], "ikev1", "{t:#}");
    assert_eq!(s["ike_sa"]["algorithms"], ike_algs, "{t:#}");
}

#[test]
fn main_mode_initiator_destination_mode() {
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let swan = start_swan(&topo, &onprem_v1(SUITE, SUITE, "0.0.0.0/0", "0.0.0.0/0"));

    let (gw, cgw) = serve.base(GW1, &["172.16.0.0/16"], ONPREM);
    let (conn, _) = serve.connection(&gw, &cgw, json!({}), json!({"ike": {"mode": "main"}}));
    serve.route(&gw, "10.2.0.0/24", &conn);
    let t = serve.wait_established(&conn, Duration::from_secs(20));
    assert_v1(&t, SUITE);
    assert_eq!(
        t["status"]["child_sas"][0]["local_ts"],
        json!(["0.0.0.0/0"])
    );
    let sa = swan
        .wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    assert_eq!(sa.version, 1);
    assert!(!sa.initiator);
    assert_eq!(sa.remote_id, GW1);

    ping_both_ways(&topo, 5);
    let received = iperf_10mb(&topo).bytes_received;
    // Counters are of inner packets (IP headers included); the gateway refreshes them
    // every few seconds.
    let t = serve.wait_tunnel(&conn, "byte counters", Duration::from_secs(5), |s| {
        s["child_sas"][0]["bytes_out"].as_u64().unwrap_or(0) >= received
    });
    assert_eq!(t["status"]["carrying_traffic"], true);
    let sa = swan.sa("vpn").unwrap().unwrap();
    assert!(sa.child("net").unwrap().bytes_in >= received, "{sa:?}");
}

#[test]
fn main_mode_responder_destination_mode() {
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    // strongSwan rekeys its quick mode SA after 5–15 s: vpngw answers the rekey.
    let mut conf = onprem_v1(SUITE, SUITE, "0.0.0.0/0", "0.0.0.0/0");
    conf.children[0].rekey_time = Some(15);
    conf.children[0].life_time = Some(25);
    let swan = start_swan(&topo, &conf);

    let conn = serve.responder_connection();
    swan.initiate("net").unwrap();
    let sa = swan
        .wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    assert!(sa.initiator && sa.version == 1);
    let t = serve.wait_established(&conn, Duration::from_secs(10));
    assert_v1(&t, SUITE);
    let first_spi = t["status"]["child_sas"][0]["spi_in"].clone();
    // Main Mode's shared secret and Quick Mode's PFS secret (strongSwan proposes
    // modp1024 for ESP) were computed on the node's DH threads.
    assert_eq!(serve.metric("vpngw_ike_dh_offloaded_total"), 2);

    ping_both_ways(&topo, 5);
    iperf_10mb(&topo);

    // The rekeys strongSwan initiates, under a continuous ping: nothing lost. IKEv1 has
    // no implicit deletion: the replaced SA lives until its negotiated 25 s lifetime
    // ends (RFC 2407 §4.5), then it is deleted while traffic uses the new one.
    //
    // strongSwan installs the new SA when it has Quick Mode message 2 and sends on it
    // at once, before its message 3 reaches us. The gateway holds strongSwan's
    // message 3 of the first rekey back until strongSwan has sent replies on the new SA,
    // so those can only arrive if vpngw had the inbound SA in place with message 2.
    lab::nft::nft(&topo.gw, &hold_quick_mode_3(ONPREM, GW1)).unwrap();
    let monitor = PingMonitor::start(
        &topo.vpc,
        topo.workdir.path(),
        topo.vpc_ip(),
        "10.2.0.1",
        Duration::from_millis(50),
    )
    .unwrap();
    let first_out = first_spi.as_str().unwrap_or_default().to_owned();
    let sent_ahead = swan
        .wait_sa(
            Duration::from_secs(30),
            "strongSwan's quick mode rekey, sending on the new SA",
            |sas| {
                let sa = sas.iter().find(|sa| sa.name == "vpn")?;
                let new = sa.children.iter().find(|c| c.spi_out != first_out)?;
                (new.packets_out >= 20).then_some(new.packets_out)
            },
        )
        .unwrap();
    let held = lab::nft::ruleset(&topo.gw).unwrap();
    lab::nft::nft(&topo.gw, "delete table inet qm3").unwrap();
    let dropped: u64 = held
        .split("counter packets ")
        .skip(1)
        .filter_map(|s| s.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(dropped > 0, "message 3 was never held back: {held}");
    eprintln!("strongSwan sent {sent_ahead} packets on the new SA before message 3 got through");
    serve.wait_tunnel(
        &conn,
        "strongSwan's quick mode rekey, then the first SA's expiry",
        Duration::from_secs(40),
        |s| {
            phase(s) == "established"
                && s["child_sas"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c["spi_in"] != first_spi))
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let report = monitor.stop().unwrap();
    assert!(report.sent > 20, "{report:?}");
    assert!(
        report.losses.is_empty(),
        "lost pings across strongSwan's rekey: {report:?}"
    );
    let r = lab::ping(
        &topo.onprem,
        "10.2.0.1",
        topo.vpc_ip(),
        3,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.received, 3, "after the rekey: {r:?}");
}

/// Two responder-only IKEv1 Main Mode tunnels on customer gateway 0.0.0.0 (any peer,
/// told apart by ID), each with a key of its own. Main Mode names the peer only in
/// message 5, so vpngw first binds strongSwan to the tunnel that comes first; message
/// 5 shows it belongs to the other one (its ID, its key), and the negotiation moves
/// there. Before, the first tunnel failed with an undecryptable message 5.
#[test]
fn main_mode_responder_finds_the_tunnel_by_id_among_any_peers() {
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let swan_conn = SwanctlConn {
        local_id: Some(ONPREM_FQDN.into()),
        remote_id: Some(GW1.into()),
        ..onprem_v1(SUITE, SUITE, "0.0.0.0/0", "0.0.0.0/0")
    };
    let swan = start_swan(&topo, &swan_conn);
    let (gw, any) = serve.base(GW1, &["172.16.0.0/16"], "0.0.0.0");
    let idle = |conn: &str| {
        serve.wait_tunnel(conn, "idle", Duration::from_secs(10), |s| {
            phase(s) == "idle"
        });
    };
    // Created (and so numbered) first: the tunnel Main Mode message 1 binds to.
    let (other, _) = serve.connection(
        &gw,
        &any,
        json!({"effective_immediately": false}),
        json!({"pre_shared_key": "another-branch-9Zq",
               "ike": {"remote_id": "other.example.com"}}),
    );
    idle(&other);
    let (conn, _) = serve.connection(
        &gw,
        &any,
        json!({"effective_immediately": false}),
        json!({"ike": {"remote_id": ONPREM_FQDN}}),
    );
    serve.route(&gw, "10.2.0.0/24", &conn);
    idle(&conn);

    swan.initiate("net").unwrap();
    let sa = swan
        .wait_established("vpn", Duration::from_secs(15))
        .unwrap();
    assert!(sa.initiator && sa.version == 1);
    assert_eq!(sa.local_id, ONPREM_FQDN);
    let t = serve.wait_established(&conn, Duration::from_secs(10));
    assert_v1(&t, SUITE);
    ping_both_ways(&topo, 3);

    let log = serve
        .get(&format!("/v1/vpn-connections/{other}/logs?limit=100"))
        .to_string();
    assert!(log.contains("phase1_moved"), "{log}");
    assert!(
        !log.contains("another-branch-9Zq") && !log.contains(PSK),
        "{log}"
    );
    let t = serve.get(&format!("/v1/vpn-connections/{other}"));
    assert_eq!(phase(&t["tunnels"][0]["status"]), "idle", "{t:#}");
    let log = serve
        .get(&format!("/v1/vpn-connections/{conn}/logs?limit=100"))
        .to_string();
    assert!(log.contains("phase1_established"), "{log}");
}

/// Aggressive mode with FQDN identities, vpngw first initiator, then responder.
#[test]
fn aggressive_mode_fqdn_both_roles() {
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let swan_conn = SwanctlConn {
        aggressive: true,
        local_id: Some(ONPREM_FQDN.into()),
        remote_id: Some(GW_FQDN.into()),
        ..onprem_v1(SUITE, SUITE, "10.2.0.0/24", "172.16.1.0/24")
    };
    let swan = start_swan(&topo, &swan_conn);
    let (gw, cgw) = serve.base(GW1, &["172.16.0.0/16"], ONPREM);
    let tunnel =
        json!({"ike": {"mode": "aggressive", "local_id": GW_FQDN, "remote_id": ONPREM_FQDN}});
    let flows = json!({
        "routing_mode": "protected_flows",
        "local_subnets": ["172.16.1.0/24"],
        "remote_subnets": ["10.2.0.0/24"],
    });

    // 1. vpngw initiates.
    let (conn, _) = serve.connection(&gw, &cgw, flows.clone(), tunnel.clone());
    let t = serve.wait_established(&conn, Duration::from_secs(20));
    assert_v1(&t, SUITE);
    let sa = swan
        .wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    assert!(!sa.initiator);
    assert_eq!(sa.remote_id, GW_FQDN);
    assert_eq!(sa.local_id, ONPREM_FQDN);
    // Aggressive Mode's shared secret and Quick Mode's PFS secret were computed on the
    // node's DH threads.
    assert_eq!(serve.metric("vpngw_ike_dh_offloaded_total"), 2);
    ping_both_ways(&topo, 3);

    // 2. The connection goes (its SAs deleted at the peer); a responder-only one comes.
    serve.delete(&format!("/v1/vpn-connections/{conn}"));
    swan.wait_sa(Duration::from_secs(10), "the old IKE SA deleted", |sas| {
        (!sas.iter().any(|sa| sa.name == "vpn")).then_some(())
    })
    .unwrap();
    let mut flows = flows;
    merge(&mut flows, json!({"effective_immediately": false}));
    let (conn, _) = serve.connection(&gw, &cgw, flows, tunnel);
    serve.wait_tunnel(&conn, "idle", Duration::from_secs(10), |s| {
        phase(s) == "idle"
    });
    swan.initiate("net").unwrap();
    let sa = swan
        .wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    assert!(sa.initiator);
    assert_eq!(sa.remote_id, GW_FQDN);
    let t = serve.wait_established(&conn, Duration::from_secs(10));
    assert_v1(&t, SUITE);
    // As responder too: message 2 went out once the DH threads had the keys.
    assert_eq!(serve.metric("vpngw_ike_dh_offloaded_total"), 4);
    ping_both_ways(&topo, 3);
}

/// Protected flows (one CIDR each side), vpngw initiator, with a 20 s ESP lifetime and
/// a 30 s ISAKMP SA lifetime: the quick mode rekey and the ISAKMP SA replacement under
/// a continuous ping lose nothing.
#[test]
fn protected_flows_and_rekeys_without_loss() {
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let swan = start_swan(
        &topo,
        &onprem_v1(SUITE, SUITE, "10.2.0.0/24", "172.16.1.0/24"),
    );
    let (gw, cgw) = serve.base(GW1, &["172.16.0.0/16"], ONPREM);
    let (conn, _) = serve.connection(
        &gw,
        &cgw,
        json!({
            "routing_mode": "protected_flows",
            "local_subnets": ["172.16.1.0/24"],
            "remote_subnets": ["10.2.0.0/24"],
        }),
        json!({"ike": {"lifetime_s": 30}, "ipsec": {"lifetime_s": 20}}),
    );
    let t = serve.wait_established(&conn, Duration::from_secs(20));
    assert_v1(&t, SUITE);
    let first_ike = t["status"]["ike_sa"]["spis"]["initiator"].clone();
    let child = &t["status"]["child_sas"][0];
    assert_eq!(child["local_ts"], json!(["172.16.1.0/24"]));
    assert_eq!(child["remote_ts"], json!(["10.2.0.0/24"]));
    let first_spi = child["spi_in"].clone();
    let sa = swan
        .wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    let c = sa.child("net").unwrap();
    assert_eq!(c.local_ts, vec!["10.2.0.0/24"]);
    assert_eq!(c.remote_ts, vec!["172.16.1.0/24"]);
    ping_both_ways(&topo, 3);

    let monitor = PingMonitor::start(
        &topo.vpc,
        topo.workdir.path(),
        topo.vpc_ip(),
        "10.2.0.1",
        Duration::from_millis(50),
    )
    .unwrap();
    serve.wait_tunnel(
        &conn,
        "a rekeyed quick mode SA and a new ISAKMP SA",
        Duration::from_secs(40),
        |s| {
            phase(s) == "established"
                && s["ike_sa"]["spis"]["initiator"] != first_ike
                && s["child_sas"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c["spi_in"] != first_spi))
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let report = monitor.stop().unwrap();
    assert!(report.sent > 20, "{report:?}");
    assert!(
        report.losses.is_empty(),
        "lost pings across the rekey: {report:?}"
    );
    // strongSwan is left with the new SAs only (the old ones deleted by vpngw).
    let sa = swan
        .wait_sa(
            Duration::from_secs(10),
            "one IKE SA with one CHILD_SA at strongSwan",
            |sas| {
                let ours: Vec<_> = sas.iter().filter(|sa| sa.name == "vpn").collect();
                match ours[..] {
                    [sa] if sa.state == "ESTABLISHED"
                        && sa.children.len() == 1
                        && sa.children[0].state == "INSTALLED" =>
                    {
                        Some(sa.clone())
                    }
                    _ => None,
                }
            },
        )
        .unwrap();
    assert_ne!(Some(sa.spi_i.as_str()), first_ike.as_str());
    assert_ne!(
        Some(&sa.children[0].spi_out),
        first_spi.as_str().map(str::to_string).as_ref()
    );
    let events = serve.events(&conn);
    assert!(
        events.iter().filter(|e| *e == "esp_sa_installed").count() >= 2,
        "{events:?}"
    );
}

/// One negotiation per row on the same lab: the gateway's tunnel is patched (it
/// renegotiates) and strongSwan is reloaded with the row's proposals only.
#[test]
fn algorithm_matrix() {
    struct Row {
        swan_ike: String,
        swan_esp: String,
        ike: Value,
        ipsec: Value,
        /// What strongSwan lists: IKE cipher, IKE group, ESP cipher, PFS group.
        swan_sees: [String; 4],
    }
    // Every seed encryption × integrity pair (API name, strongSwan name, strongSwan's
    // listing), with the seed groups 2/5/14 rotating across the rows and PFS
    // alternating on (same group) and off, so each group meets each cipher.
    let ciphers = [
        ("aes", "aes128", "AES_CBC"),
        ("aes192", "aes192", "AES_CBC"),
        ("aes256", "aes256", "AES_CBC"),
        ("des", "des", "DES_CBC"),
        ("3des", "3des", "3DES_CBC"),
    ];
    let integrities = ["md5", "sha1", "sha256", "sha384", "sha512"];
    let groups = [
        ("group2", "modp1024", "MODP_1024"),
        ("group5", "modp1536", "MODP_1536"),
        ("group14", "modp2048", "MODP_2048"),
    ];
    let mut rows = Vec::new();
    for (i, (enc, swan_enc, listed_enc)) in ciphers.iter().enumerate() {
        for (j, integ) in integrities.iter().enumerate() {
            let n = i * integrities.len() + j;
            let (group, swan_group, listed_group) = groups[(i + j) % groups.len()];
            let pfs = n.is_multiple_of(2);
            let swan_ike = format!("{swan_enc}-{integ}-{swan_group}");
            rows.push(Row {
                swan_esp: if pfs {
                    swan_ike.clone()
                } else {
                    format!("{swan_enc}-{integ}")
                },
                swan_ike,
                ike: json!({"encryption": enc, "integrity": integ, "dh_group": group}),
                ipsec: json!({"encryption": enc, "integrity": integ,
                              "pfs": if pfs { group } else { "disabled" }}),
                swan_sees: [
                    listed_enc.to_string(),
                    listed_group.to_string(),
                    listed_enc.to_string(),
                    if pfs {
                        listed_group.to_string()
                    } else {
                        String::new()
                    },
                ],
            });
        }
    }
    // Beyond the grid: group 24, group 1 and AES-GCM in ESP.
    let special = [
        (
            "aes192-sha512-modp2048s256",
            "aes192-sha512-modp2048s256",
            json!({"encryption": "aes192", "integrity": "sha512", "dh_group": "group24"}),
            json!({"encryption": "aes192", "integrity": "sha512", "pfs": "group24"}),
            ["AES_CBC", "MODP_2048_256", "AES_CBC", "MODP_2048_256"],
        ),
        (
            "des-sha1-modp768",
            "des-sha1-modp768",
            json!({"encryption": "des", "integrity": "sha1", "dh_group": "group1"}),
            json!({"encryption": "des", "integrity": "sha1", "pfs": "group1"}),
            ["DES_CBC", "MODP_768", "DES_CBC", "MODP_768"],
        ),
        (
            "aes128-sha1-modp1024",
            "aes128gcm16-modp1024",
            json!({"encryption": "aes", "integrity": "sha1", "dh_group": "group2"}),
            json!({"encryption": "aes-gcm-128", "pfs": "group2"}),
            ["AES_CBC", "MODP_1024", "AES_GCM_16", "MODP_1024"],
        ),
    ];
    for (swan_ike, swan_esp, ike, ipsec, sees) in special {
        rows.push(Row {
            swan_ike: swan_ike.into(),
            swan_esp: swan_esp.into(),
            ike,
            ipsec,
            swan_sees: sees.map(String::from),
        });
    }

    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    let (gw, cgw) = serve.base(GW1, &["172.16.0.0/16"], ONPREM);
    let mut conn_tunnel: Option<(String, String)> = None;
    let mut failures = Vec::new();
    for row in &rows {
        swan.load(&swanctl::render(&[onprem_v1(
            &row.swan_ike,
            &row.swan_esp,
            "0.0.0.0/0",
            "0.0.0.0/0",
        )]))
        .unwrap();
        let crypto = json!({"ike": &row.ike, "ipsec": &row.ipsec});
        let old_spi = match &conn_tunnel {
            None => {
                let (conn, tunnel) = serve.connection(&gw, &cgw, json!({}), crypto);
                serve.route(&gw, "10.2.0.0/24", &conn);
                conn_tunnel = Some((conn, tunnel));
                Value::Null
            }
            Some((conn, tunnel)) => {
                let old = serve.get(&format!("/v1/vpn-connections/{conn}"))["tunnels"][0]["status"]
                    ["ike_sa"]["spis"]["initiator"]
                    .clone();
                serve.patch(
                    &format!("/v1/vpn-connections/{conn}/tunnels/{tunnel}"),
                    crypto,
                );
                old
            }
        };
        let (conn, _) = conn_tunnel.as_ref().unwrap();
        let t = serve.wait_tunnel(conn, &row.swan_ike, Duration::from_secs(25), |s| {
            phase(s) == "established"
                && s["ike_sa"]["spis"]["initiator"] != old_spi
                && !s["child_sas"].as_array().is_none_or(Vec::is_empty)
        });
        let algs = t["status"]["ike_sa"]["algorithms"].as_str().unwrap_or("");
        let child_algs = t["status"]["child_sas"][0]["algorithms"]
            .as_str()
            .unwrap_or("");
        if (algs, child_algs) != (row.swan_ike.as_str(), row.swan_esp.as_str()) {
            failures.push(format!(
                "{} / {}: vpngw shows {algs} / {child_algs}",
                row.swan_ike, row.swan_esp
            ));
        }
        let spi_i = t["status"]["ike_sa"]["spis"]["initiator"]
            .as_str()
            .unwrap()
            .to_string();
        let sa = swan
            .wait_sa(Duration::from_secs(10), "this row's SAs", |sas| {
                sas.iter()
                    .find(|sa| sa.spi_i == spi_i && sa.child("net").is_some())
                    .cloned()
            })
            .unwrap();
        let child = sa.child("net").unwrap();
        let seen = [
            sa.encr_alg.as_str(),
            &sa.dh_group,
            &child.encr_alg,
            &child.dh_group,
        ];
        if seen != row.swan_sees.each_ref().map(String::as_str) {
            failures.push(format!(
                "{} / {}: strongSwan lists {seen:?}",
                row.swan_ike, row.swan_esp
            ));
        }
        let r = lab::ping(
            &topo.vpc,
            topo.vpc_ip(),
            "10.2.0.1",
            3,
            Duration::from_secs(5),
        )
        .unwrap();
        if r.received == 0 {
            failures.push(format!(
                "{} / {}: no ping reply ({r:?})",
                row.swan_ike, row.swan_esp
            ));
        }
        eprintln!(
            "row {} / {}: child {}, {} of 3 pings",
            row.swan_ike, row.swan_esp, t["status"]["child_sas"][0]["algorithms"], r.received
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A lab with `vpngw serve` waiting for the peer on a responder connection and
/// strongSwan loaded with `conf`, which the caller made to be refused; strongSwan
/// initiates. Returns the lab, strongSwan and the log message containing `needle` (in
/// that order, so that bindings drop strongSwan before the lab).
fn refused_as_responder(conf: &SwanctlConn, needle: &str) -> (Topology, StrongSwan, String) {
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let swan = start_swan(&topo, conf);
    let conn = serve.responder_connection();
    // Fails, as the caller arranged.
    let _ = swan.initiate("net");
    let m = serve.wait_log_message(&conn, needle, Duration::from_secs(15));
    (topo, swan, m)
}

/// strongSwan asks for extended sequence numbers only (`-esn`, RFC 4304), which vpngw
/// does not use. vpngw refuses the Quick Mode and says that ESN is the one difference;
/// taking the transform without noticing the attribute would have brought up SAs whose
/// every packet fails the integrity check (the ICV covers the counter's high half).
#[test]
fn a_peer_that_offers_only_esn_is_told_so() {
    // vpngw answers the Quick Mode with NO-PROPOSAL-CHOSEN.
    let (_topo, swan, m) = refused_as_responder(
        &onprem_v1(SUITE, "aes128-sha1-modp1024-esn", "0.0.0.0/0", "0.0.0.0/0"),
        "extended sequence numbers (ESN)",
    );
    assert!(
        m.contains("peer proposed ESP aes128-sha1-modp1024-esn;"),
        "{m}"
    );
    let sas = swan.list_sas().unwrap();
    assert!(
        sas.iter().all(|sa| sa.children.is_empty()),
        "no IPsec SA: {sas:?}"
    );
}

/// strongSwan set up as an IKEv1 remote-access client (a second round with XAUTH)
/// offers Main Mode with XAUTHInitPreShared: vpngw refuses it and says that the
/// algorithms match and the authentication method does not.
#[test]
fn a_peer_that_offers_xauth_is_told_so() {
    // vpngw answers Main Mode with NO-PROPOSAL-CHOSEN.
    let (_topo, swan, m) = refused_as_responder(
        &SwanctlConn {
            xauth: true,
            ..onprem_v1(SUITE, SUITE, "0.0.0.0/0", "0.0.0.0/0")
        },
        "the authentication method does not",
    );
    assert!(
        m.contains("peer proposed aes128-sha1-modp1024 with XAUTH and a pre-shared key;"),
        "{m}"
    );
    assert!(swan.list_sas().unwrap().is_empty());
}

/// Kills the lab's gateway (SIGKILL), starts it again on its data directory, waits
/// until `conn`'s tunnel shows idle (it waits for the peer) and starts pinging the VPC
/// from on-premises, over the peer's old SAs.
fn crash_and_restart(topo: &Topology, serve: Serve, conn: &str) -> (Serve, PingMonitor) {
    let Serve(crashed) = serve;
    crashed.crash().unwrap();
    let serve = start_serve(topo);
    let t = serve.wait_tunnel(
        conn,
        "idle after the restart",
        Duration::from_secs(10),
        |s| phase(s) == "idle",
    );
    assert!(t["status"]["ike_sa"].is_null(), "{t:#}");
    let pinger = PingMonitor::start(
        &topo.onprem,
        topo.workdir.path(),
        "10.2.0.1",
        topo.vpc_ip(),
        Duration::from_millis(100),
    )
    .unwrap();
    (serve, pinger)
}

/// The gateway crashes while strongSwan, which started the tunnel, holds its IKEv1 SAs,
/// and is started again on its data directory: ESP from strongSwan on the SAs it lost
/// makes it negotiate a new Main Mode at once, whose INITIAL-CONTACT (RFC 2407
/// §4.6.3.3) makes strongSwan drop the stale SAs (see the IKEv2 test in
/// `interop_ikev2.rs`).
#[test]
fn a_restarted_gateway_recovers_the_main_mode_tunnel_the_peer_still_holds() {
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let swan = start_swan(&topo, &onprem_v1(SUITE, SUITE, "0.0.0.0/0", "0.0.0.0/0"));
    let conn = serve.responder_connection();
    swan.initiate("net").unwrap();
    let old = swan
        .wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    serve.wait_established(&conn, Duration::from_secs(10));
    ping_both_ways(&topo, 2);

    let (serve, pinger) = crash_and_restart(&topo, serve, &conn);
    serve.wait_established(&conn, Duration::from_secs(15));
    swan.wait_sa(
        Duration::from_secs(10),
        "one ISAKMP SA with one Child SA, the new ones",
        |sas| {
            (sas.len() == 1 && sas[0].uniqueid != old.uniqueid && sas[0].children.len() == 1)
                .then_some(())
        },
    )
    .unwrap();
    pinger.wait_replies(1, Duration::from_secs(5)).unwrap();
    let report = pinger.stop().unwrap();
    assert!(report.received > 0, "{report:?}");
    ping_both_ways(&topo, 3);
    let events = serve.events(&conn);
    assert!(events.iter().any(|e| e == "esp_unknown_spi"), "{events:?}");
}

/// strongSwan dies: DPD declares the peer dead; strongSwan comes back with the same
/// configuration and the gateway renegotiates by itself.
#[test]
fn dpd_detects_a_dead_peer_and_the_tunnel_comes_back() {
    const DPD_INTERVAL_S: u64 = 2;
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let conf = onprem_v1(SUITE, SUITE, "0.0.0.0/0", "0.0.0.0/0");
    let swan = start_swan(&topo, &conf);
    let (gw, cgw) = serve.base(GW1, &["172.16.0.0/16"], ONPREM);
    let (conn, _) = serve.connection(
        &gw,
        &cgw,
        json!({}),
        json!({"dpd_interval_s": DPD_INTERVAL_S, "dpd_timeout_s": 6}),
    );
    serve.route(&gw, "10.2.0.0/24", &conn);
    let t = serve.wait_established(&conn, Duration::from_secs(20));
    let old_ike = t["status"]["ike_sa"]["spis"]["initiator"].clone();
    swan.wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    ping_both_ways(&topo, 2);

    // Idle longer than interval + timeout: strongSwan answers vpngw's R-U-THERE
    // (RFC 3706), so a live peer is never declared dead.
    std::thread::sleep(Duration::from_secs(10));
    let t = serve.get(&format!("/v1/vpn-connections/{conn}"))["tunnels"][0].clone();
    assert_eq!(phase(&t["status"]), "established", "{t:#}");
    assert_eq!(t["status"]["ike_sa"]["spis"]["initiator"], old_ike);
    let log = std::fs::read_to_string(swan.log_path()).unwrap();
    let probes = log.matches("[ HASH N(DPD) ]").count();
    let acks = log.matches("[ HASH N(DPD_ACK) ]").count();
    assert!(probes >= 2 && acks >= 2, "R-U-THERE {probes}, ACK {acks}");

    // SIGKILL: no Delete reaches the gateway, only silence.
    swan.crash().unwrap();
    let killed = Instant::now();
    let t = serve.wait_tunnel(
        &conn,
        "the peer declared dead by DPD",
        Duration::from_secs(DPD_INTERVAL_S + 30),
        |s| phase(s) != "established" && s["reason"].as_str().is_some_and(|r| r.contains("DPD")),
    );
    eprintln!(
        "DPD declared the peer dead after {:?}: {}",
        killed.elapsed(),
        t["status"]["reason"]
    );
    let events = serve.events(&conn);
    assert!(
        events
            .iter()
            .any(|e| e.contains("dpd") || e.contains("peer_dead")),
        "{events:?}"
    );

    let swan = start_swan(&topo, &conf);
    serve.wait_tunnel(
        &conn,
        "renegotiated after strongSwan's restart",
        Duration::from_secs(45),
        |s| {
            phase(s) == "established"
                && s["ike_sa"]["spis"]["initiator"] != old_ike
                && !s["child_sas"].as_array().is_none_or(Vec::is_empty)
        },
    );
    swan.wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    ping_both_ways(&topo, 3);
}

/// Two `vpngw serve` speaking IKEv1 to each other: gateway A in `gw` (the VPC side),
/// gateway B in `onprem` (serving 10.2.0.0/24 on its `lo`). B initiates main mode.
#[test]
fn vpngw_to_vpngw() {
    let (topo, _a, _b, _, _) = vpngw_pair();
    iperf_10mb(&topo);
}

/// Two `vpngw serve` speaking IKEv1 as in [`vpngw_to_vpngw`], tunnel up: (topology, A,
/// B, A's connection, B's connection).
fn vpngw_pair() -> (Topology, Serve, Serve, String, String) {
    let topo = Topology::new().unwrap();
    let a = start_serve(&topo);
    let b = Serve::start(&topo.onprem, &topo.workdir.subdir("vpngw-b").unwrap());

    let (a_gw, a_cgw) = a.base(GW1, &["172.16.0.0/16"], ONPREM);
    let crypto = json!({
        "ike": {"encryption": "aes256", "integrity": "sha256", "dh_group": "group14"},
        "ipsec": {"encryption": "aes256", "integrity": "sha256", "pfs": "group14"},
    });
    let (a_conn, _) = a.connection(
        &a_gw,
        &a_cgw,
        json!({"effective_immediately": false}),
        crypto.clone(),
    );
    a.route(&a_gw, "10.2.0.0/24", &a_conn);
    let (b_gw, b_cgw) = b.base(ONPREM, &["10.2.0.0/24"], GW1);
    let (b_conn, _) = b.connection(&b_gw, &b_cgw, json!({}), crypto);
    b.route(&b_gw, "172.16.0.0/16", &b_conn);

    let tb = b.wait_established(&b_conn, Duration::from_secs(20));
    let ta = a.wait_established(&a_conn, Duration::from_secs(10));
    assert_v1(&ta, "aes256-sha256-modp2048");
    assert_v1(&tb, "aes256-sha256-modp2048");
    assert_eq!(
        ta["status"]["child_sas"][0]["spi_in"],
        tb["status"]["child_sas"][0]["spi_out"]
    );
    ping_both_ways(&topo, 5);
    (topo, a, b, a_conn, b_conn)
}

/// The responding gateway of a vpngw pair crashes and is started again on its data
/// directory: the other one keeps sending on the old SAs, which makes the restarted one
/// negotiate at once (invalid-SPI recovery), and the other one takes its Main Mode with
/// INITIAL-CONTACT as the replacement of everything it had: one ISAKMP SA and one Child
/// SA on each side, the same ones.
#[test]
fn vpngw_to_vpngw_recovers_from_a_crash_of_the_responder() {
    let (topo, a, b, a_conn, b_conn) = vpngw_pair();
    let (a, m) = crash_and_restart(&topo, a, &a_conn);
    let ta = a.wait_established(&a_conn, Duration::from_secs(15));
    let spis = ta["status"]["ike_sa"]["spis"].clone();
    let tb = b.wait_tunnel(&b_conn, "on A's new SAs", Duration::from_secs(10), |s| {
        established(s) && s["ike_sa"]["spis"] == spis
    });
    assert_eq!(
        ta["status"]["child_sas"][0]["spi_in"], tb["status"]["child_sas"][0]["spi_out"],
        "{ta:#}\n{tb:#}"
    );
    assert_eq!(tb["status"]["child_sas"].as_array().map(Vec::len), Some(1));
    m.wait_replies(1, Duration::from_secs(5)).unwrap();
    let r = m.stop().unwrap();
    assert!(r.received > 0, "{r:?}");
    ping_both_ways(&topo, 3);
    assert!(
        a.events(&a_conn).iter().any(|e| e == "esp_unknown_spi"),
        "{:?}",
        a.events(&a_conn)
    );
    assert!(
        b.events(&b_conn).iter().any(|e| e == "initial_contact"),
        "{:?}",
        b.events(&b_conn)
    );
}

/// A flood of forged Main Mode first messages from the peer's own address. IKEv1 has
/// no COOKIE exchange, so each would make a half-open ISAKMP SA: vpngw keeps at most
/// `--ike-half-open-per-address` of them, drops and counts the rest, and the tunnel
/// that is up keeps carrying traffic. Once the forged SAs time out (30 s, as in IKEv2),
/// strongSwan negotiates a new ISAKMP SA.
#[test]
fn forged_main_mode_flood_is_bounded_and_the_tunnel_stays_up() {
    const LIMIT: u64 = 16;
    const FORGED: u64 = 300;
    const DROPPED: &str = "vpngw_ike_dropped_total{reason=\"half_open_limit\"}";
    const HALF_OPEN: &str = "vpngw_ike_half_open_sas";
    let topo = Topology::new().unwrap();
    let dir = topo.workdir.subdir("vpngw").unwrap();
    let limit = LIMIT.to_string();
    let serve = Serve(
        Vpngw::start(
            &topo.gw,
            &VpngwConfig {
                bin: BIN,
                dir: &dir,
                listen: LISTEN,
                extra_args: &["--ike-half-open-per-address", &limit],
            },
        )
        .unwrap(),
    );
    let swan = start_swan(&topo, &onprem_v1(SUITE, SUITE, "0.0.0.0/0", "0.0.0.0/0"));
    let conn = serve.responder_connection();
    swan.initiate("net").unwrap();
    swan.wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    let up = serve.wait_established(&conn, Duration::from_secs(10));
    ping_both_ways(&topo, 3);
    assert_eq!(serve.metric(HALF_OPEN), 0);

    // From another port of the peer's address, paced so that no socket buffer
    // overflows: every forged message reaches the engine.
    let first = main_mode_1();
    topo.onprem
        .run_in(|| {
            let s = UdpSocket::bind((ONPREM, 0)).unwrap();
            for k in 0..FORGED {
                let mut m = first.clone();
                // RFC 2408 §3.1: CKY-I is the header's first 8 bytes.
                m[..8].copy_from_slice(&(0x5eed_0000 + k).to_be_bytes());
                s.send_to(&m, (GW1, 500)).unwrap();
                if k % 10 == 9 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while serve.metric(DROPPED) < FORGED - LIMIT {
        assert!(
            Instant::now() < deadline,
            "{DROPPED} at {} after 10 s",
            serve.metric(DROPPED)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(serve.metric(DROPPED), FORGED - LIMIT);
    assert_eq!(serve.metric(HALF_OPEN), LIMIT);

    // The tunnel is untouched: the same ISAKMP SA, traffic both ways.
    ping_both_ways(&topo, 3);
    let t = serve.wait_established(&conn, Duration::from_secs(5));
    let spis = &up["status"]["ike_sa"]["spis"];
    assert!(spis["initiator"].is_string(), "{up:#}");
    assert_eq!(&t["status"]["ike_sa"]["spis"], spis);

    // The forged SAs go after 30 s; then strongSwan brings up a new ISAKMP SA.
    let deadline = Instant::now() + Duration::from_secs(45);
    while serve.metric(HALF_OPEN) > 0 {
        assert!(
            Instant::now() < deadline,
            "{HALF_OPEN} still {} after 45 s",
            serve.metric(HALF_OPEN)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    swan.terminate_ike("vpn").unwrap();
    swan.initiate("net").unwrap();
    swan.wait_established("vpn", Duration::from_secs(10))
        .unwrap();
    let again = serve.wait_tunnel(&conn, "a new ISAKMP SA", Duration::from_secs(10), |s| {
        established(s) && &s["ike_sa"]["spis"] != spis
    });
    assert_v1(&again, SUITE);
    ping_both_ways(&topo, 3);
    assert_eq!(serve.metric(DROPPED), FORGED - LIMIT);
}

/// Main Mode message 1 as a peer at `ONPREM` offering [`SUITE`] sends it.
fn main_mode_1() -> Vec<u8> {
    use crypto::{DhGroup, Encr, Integ};
    let cfg = ike::PeerConfig {
        version: ike::IkeVersion::V1,
        v1_mode: ike::V1Mode::Main,
        local: (ONPREM.parse::<std::net::Ipv4Addr>().unwrap(), 500).into(),
        remote: Some((GW1.parse::<std::net::Ipv4Addr>().unwrap(), 500).into()),
        local_id: ike::Identity::Ipv4(ONPREM.parse().unwrap()),
        remote_id: ike::Identity::Ipv4(GW1.parse().unwrap()),
        psk: ike::Psk::new(PSK),
        ike: ike::IkeProposal {
            encr: Encr::AesCbc128,
            integ: Integ::HmacSha1_96,
            dh: DhGroup::Modp1024,
        },
        esp: ike::EspProposal {
            encr: Encr::AesCbc128,
            integ: Integ::HmacSha1_96,
            pfs: None,
        },
        ike_lifetime: Duration::from_secs(28_800),
        child_lifetime: Duration::from_secs(3_600),
        local_ts: vec![ike::Ipv4Cidr::ANY],
        remote_ts: vec![ike::Ipv4Cidr::ANY],
        dpd_interval: None,
        dpd_timeout: Duration::from_secs(30),
        nat_traversal: true,
    };
    let mut e = ike::Endpoint::new(ike::EndpointConfig::default(), Box::new(crypto::OsRandom));
    e.add_peer(ike::PeerId(1), cfg).unwrap();
    e.initiate(Instant::now(), ike::PeerId(1)).unwrap();
    e.poll_transmit().unwrap().payload
}
