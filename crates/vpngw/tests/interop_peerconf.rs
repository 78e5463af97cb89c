//! Issue 6 acceptance: the on-premises strongSwan configuration downloaded from
//! `GET /v1/vpn-connections/{id}/peer-config?format=swanctl` works unchanged against
//! the real `vpngw serve` (lab `gw` namespace) from a real strongSwan 5.9 (`onprem`).
//!
//! Each test builds its own lab, sets everything up over the HTTP API as an operator
//! would, loads the downloaded file byte for byte into strongSwan, waits for the
//! tunnel(s) on both sides and pings between the VPC host and the on-premises network.
//! Every wait is bounded; everything started is stopped on Drop.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::ops::Deref;
use std::path::Path;
use std::time::Duration;

use lab::starter::Starter;
use lab::vpngw::{established, id, merge};
use lab::{Frr, Netns, StrongSwan, Topology, Vpngw, VpngwConfig};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_vpngw");
const PSK: &str = "peerconf-psk-7Qz";
const ONPREM: &str = "198.51.100.1";
const GW1: &str = "192.0.2.1";
const GW2: &str = "192.0.2.2";
const LISTEN: &str = "127.0.0.1:9281";
const ONPREM_HOST: &str = "10.2.0.1";
/// The second on-premises network of the protected-flows scenario (added on `lo`).
const ONPREM_HOST2: &str = "10.3.0.1";
/// The line of the ipsec-conf download where ipsec.secrets begins
/// (`peerconf::IPSEC_SECRETS_MARKER`; vpngw's tests do not depend on peerconf).
const IPSEC_SECRETS_MARKER: &str = "# ---- /etc/ipsec.secrets ----";
const GW_FQDN: &str = "vpngw.example.com";
const ONPREM_FQDN: &str = "onprem.example.com";

/// `vpngw serve` (the lab's driver) with this file's helpers.
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

    /// A gateway on `addrs` serving `local_networks`, and a customer gateway at the
    /// on-premises public address.
    fn base(&self, addrs: &[&str], local_networks: &[&str]) -> (String, String) {
        let gw = self.post(
            "/v1/vpn-gateways",
            json!({"name": "lab-gw", "ipsec_addresses": addrs, "local_networks": local_networks}),
        );
        let cgw = self.post(
            "/v1/customer-gateways",
            json!({"name": "onprem", "ip_address": ONPREM}),
        );
        (id(&gw), id(&cgw))
    }

    /// Creates a connection with `n` tunnels (`tunnel` merged over each tunnel's
    /// defaults, `conn` over the connection's) and returns its id.
    fn connection(&self, gw: &str, cgw: &str, n: usize, conn: Value, tunnel: Value) -> String {
        let tunnels: Vec<Value> = (0..n)
            .map(|_| {
                let mut t = json!({"customer_gateway_id": cgw, "pre_shared_key": PSK});
                merge(&mut t, tunnel.clone());
                t
            })
            .collect();
        let mut body = json!({
            "name": "peerconf",
            "vpn_gateway_id": gw,
            "routing_mode": "destination",
            "effective_immediately": true,
            "tunnels": tunnels,
        });
        merge(&mut body, conn);
        id(&self.post("/v1/vpn-connections", body))
    }

    fn route(&self, gw: &str, dst: &str, conn: &str) {
        self.post(
            &format!("/v1/vpn-gateways/{gw}/routes"),
            json!({"destination": dst, "next_hop": conn, "weight": 100}),
        );
    }

    /// The downloaded swanctl.conf, exactly as served.
    fn swanctl_conf(&self, conn: &str) -> String {
        self.peer_config(conn, "swanctl")
    }

    /// The downloaded peer configuration in `format`, exactly as served.
    fn peer_config(&self, conn: &str, format: &str) -> String {
        let path = format!("/v1/vpn-connections/{conn}/peer-config?format={format}");
        let (s, text) = self.call_text("GET", &path, None);
        assert_eq!(s, 200, "GET {path}: {text}");
        text
    }

    /// Waits until all `n` tunnels are established with a CHILD SA.
    fn wait_established(&self, conn: &str, n: usize, timeout: Duration) -> Vec<Value> {
        self.wait_tunnels(conn, "all tunnels established", timeout, |t| {
            t.len() == n && t.iter().all(|t| established(&t["status"]))
        })
    }
}

fn start_serve(topo: &Topology) -> Serve {
    Serve::start(&topo.gw, &topo.workdir.subdir("vpngw").unwrap())
}

/// Loads the downloaded configuration unchanged into a fresh strongSwan in `onprem`
/// and waits until it lists `n` established IKE SAs, each with an installed CHILD SA.
fn swan_with_downloaded_conf(topo: &Topology, conf: &str, n: usize) -> (StrongSwan, Vec<u8>) {
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    if let Err(e) = swan.load(conf) {
        panic!(
            "strongSwan refused the downloaded swanctl.conf: {e}\n--- file ---\n{conf}\n--- charon.log ---\n{}",
            log_tail(&swan, 40)
        );
    }
    let versions = swan
        .wait_sa(
            Duration::from_secs(25),
            "every downloaded connection established at strongSwan",
            |sas| {
                let up: Vec<u8> = sas
                    .iter()
                    .filter(|sa| {
                        sa.state == "ESTABLISHED"
                            && sa.children.iter().any(|c| c.state == "INSTALLED")
                    })
                    .map(|sa| sa.version)
                    .collect();
                (up.len() >= n).then_some(up)
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n--- file ---\n{conf}\n--- charon.log ---\n{}",
                log_tail(&swan, 60)
            )
        });
    (swan, versions)
}

fn log_tail(swan: &StrongSwan, n: usize) -> String {
    let log = std::fs::read_to_string(swan.log_path()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `n` pings each way between the VPC host and `onprem_host`, all answered.
fn ping_both_ways(topo: &Topology, onprem_host: &str, n: u32) {
    let vpc = topo.vpc_ip();
    lab::wait_ping(&topo.vpc, vpc, onprem_host, Duration::from_secs(10)).unwrap();
    let r = lab::ping(&topo.vpc, vpc, onprem_host, n, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, n, "VPC → {onprem_host}: {r:?}");
    let r = lab::ping(&topo.onprem, onprem_host, vpc, n, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, n, "{onprem_host} → VPC: {r:?}");
}

#[test]
fn ikev2_destination_mode() {
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let (gw, cgw) = serve.base(&[GW1], &["172.16.0.0/16"]);
    let conn = serve.connection(
        &gw,
        &cgw,
        1,
        json!({}),
        json!({"ike": {"version": "ikev2"}}),
    );
    serve.route(&gw, "10.2.0.0/24", &conn);
    let conf = serve.swanctl_conf(&conn);

    let (_swan, versions) = swan_with_downloaded_conf(&topo, &conf, 1);
    assert_eq!(versions, vec![2]);
    let t = serve.wait_established(&conn, 1, Duration::from_secs(20));
    assert_eq!(t[0]["status"]["ike_sa"]["version"], "ikev2", "{t:#?}");
    ping_both_ways(&topo, ONPREM_HOST, 3);
}

#[test]
fn ikev1_main_mode_destination_mode() {
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let (gw, cgw) = serve.base(&[GW1], &["172.16.0.0/16"]);
    let conn = serve.connection(
        &gw,
        &cgw,
        1,
        json!({}),
        json!({"ike": {"version": "ikev1", "mode": "main"}}),
    );
    serve.route(&gw, "10.2.0.0/24", &conn);
    let conf = serve.swanctl_conf(&conn);

    let (_swan, versions) = swan_with_downloaded_conf(&topo, &conf, 1);
    assert_eq!(versions, vec![1]);
    let t = serve.wait_established(&conn, 1, Duration::from_secs(20));
    assert_eq!(t[0]["status"]["ike_sa"]["version"], "ikev1", "{t:#?}");
    ping_both_ways(&topo, ONPREM_HOST, 3);
}

/// Two local and two remote CIDRs: a second on-premises network on `lo`, and a second
/// VPC-side network on the VPC host (routed to it by the gateway namespace).
#[test]
fn ikev2_protected_flows_two_by_two() {
    const VPC2_NET: &str = "172.17.1.0/24";
    const VPC2_HOST: &str = "172.17.1.10";
    let topo = Topology::new().unwrap();
    topo.onprem.addr_add("lo", "10.3.0.1/24").unwrap();
    topo.vpc.addr_add("eth0", "172.17.1.10/24").unwrap();
    topo.gw.route_add(VPC2_NET, topo.vpc_ip()).unwrap();
    let serve = start_serve(&topo);
    let (gw, cgw) = serve.base(&[GW1], &["172.16.1.0/24", VPC2_NET]);
    let conn = serve.connection(
        &gw,
        &cgw,
        1,
        json!({
            "routing_mode": "protected_flows",
            "local_subnets": ["172.16.1.0/24", VPC2_NET],
            "remote_subnets": ["10.2.0.0/24", "10.3.0.0/24"],
        }),
        json!({"ike": {"version": "ikev2"}}),
    );
    let conf = serve.swanctl_conf(&conn);

    let (swan, _) = swan_with_downloaded_conf(&topo, &conf, 1);
    let t = serve.wait_established(&conn, 1, Duration::from_secs(20));
    let child = &t[0]["status"]["child_sas"][0];
    eprintln!(
        "vpngw child: local {} remote {}",
        child["local_ts"], child["remote_ts"]
    );
    let sas = swan.list_sas().unwrap();
    eprintln!("strongSwan SAs: {sas:#?}");
    ping_both_ways(&topo, ONPREM_HOST, 3);
    ping_both_ways(&topo, ONPREM_HOST2, 3);
    for dst in [ONPREM_HOST, ONPREM_HOST2] {
        let r = lab::ping(&topo.vpc, VPC2_HOST, dst, 3, Duration::from_secs(5)).unwrap();
        assert_eq!(r.received, 3, "{VPC2_HOST} → {dst}: {r:?}");
        let r = lab::ping(&topo.onprem, dst, VPC2_HOST, 3, Duration::from_secs(5)).unwrap();
        assert_eq!(r.received, 3, "{dst} → {VPC2_HOST}: {r:?}");
    }
}

#[test]
fn ikev1_aggressive_mode_fqdn() {
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let (gw, cgw) = serve.base(&[GW1], &["172.16.0.0/16"]);
    let conn = serve.connection(
        &gw,
        &cgw,
        1,
        json!({}),
        json!({"ike": {"version": "ikev1", "mode": "aggressive",
                       "local_id": GW_FQDN, "remote_id": ONPREM_FQDN}}),
    );
    serve.route(&gw, "10.2.0.0/24", &conn);
    let conf = serve.swanctl_conf(&conn);
    assert!(
        conf.contains(GW_FQDN) && conf.contains(ONPREM_FQDN),
        "{conf}"
    );

    let (swan, versions) = swan_with_downloaded_conf(&topo, &conf, 1);
    assert_eq!(versions, vec![1]);
    let sa = &swan.list_sas().unwrap()[0];
    assert_eq!(sa.remote_id, GW_FQDN, "{sa:?}");
    let t = serve.wait_established(&conn, 1, Duration::from_secs(20));
    assert_eq!(t[0]["status"]["ike_sa"]["version"], "ikev1", "{t:#?}");
    ping_both_ways(&topo, ONPREM_HOST, 3);
}

/// Dual tunnel in destination mode with kernel-libipsec, which ignores `if_id` and would
/// install `default dev ipsec0` in table 220 with a bypass route for the first vpngw
/// address only, so tunnel 2's IKE and ESP-in-UDP would loop into tunnel 1. The file
/// narrows the VPC side to the VPC networks instead: table 220 routes only those, both
/// tunnels come up on their own paths, tunnel 1 carries the traffic, and when vpngw
/// breaks tunnel 1 (a PSK the peer does not have) the traffic moves to tunnel 2.
#[test]
fn ikev2_dual_tunnel_destination_mode_fails_over() {
    dual_tunnel_destination_mode_fails_over(json!({"version": "ikev2"}));
}

/// The same with IKEv1 main mode (one VPC network: one selector pair per Quick Mode).
#[test]
fn ikev1_dual_tunnel_destination_mode_fails_over() {
    dual_tunnel_destination_mode_fails_over(json!({"version": "ikev1", "mode": "main"}));
}

fn dual_tunnel_destination_mode_fails_over(ike: Value) {
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let (gw, cgw) = serve.base(&[GW1, GW2], &["172.16.0.0/16"]);
    let conn = serve.connection(&gw, &cgw, 2, json!({}), json!({ "ike": ike }));
    serve.route(&gw, "10.2.0.0/24", &conn);
    let conf = serve.swanctl_conf(&conn);
    assert!(
        !conf.lines().any(|l| l.trim_start().starts_with("if_id")),
        "{conf}"
    );

    let (swan, _) = swan_with_downloaded_conf(&topo, &conf, 2);
    let sas = swan.list_sas().unwrap();
    for gw_addr in [GW1, GW2] {
        assert!(
            sas.iter().any(|sa| sa.remote_host == gw_addr),
            "no IKE SA with {gw_addr}: {sas:#?}"
        );
    }
    let t = serve.wait_established(&conn, 2, Duration::from_secs(20));
    let tunnel_ids: Vec<String> = t.iter().map(id).collect();

    // strongSwan routes only the VPC into ipsec0; both vpngw addresses keep the main
    // table's route (no default route in table 220, nothing for vpngw to loop).
    let table = topo.onprem.ip(&["route", "show", "table", "220"]).unwrap();
    assert!(!table.contains("default"), "table 220:\n{table}");
    assert!(table.contains("172.16.0.0/16"), "table 220:\n{table}");
    for gw_addr in [GW1, GW2] {
        let r = topo.onprem.ip(&["route", "get", gw_addr]).unwrap();
        assert!(!r.contains("ipsec"), "route to {gw_addr}: {r}");
    }

    ping_both_ways(&topo, ONPREM_HOST, 3);
    let t = serve.wait_tunnels(&conn, "tunnel 1 carrying", Duration::from_secs(10), |t| {
        t.len() == 2 && carrying(&t[0]) && !carrying(&t[1])
    });
    assert!(established(&t[1]["status"]), "{t:#?}");
    let t2_child = format!("{}-net", swan_name(&sas, GW2));
    let via2_before = child_packets_out(&swan, &t2_child);

    // Break tunnel 1 from vpngw's side: its SAs are deleted and cannot come back.
    let path = format!("/v1/vpn-connections/{conn}/tunnels/{}", tunnel_ids[0]);
    let (s, v) = serve.call(
        "PATCH",
        &path,
        Some(json!({"pre_shared_key": "wrong-psk-0000"})),
    );
    assert!((200..300).contains(&s), "PATCH {path}: {s} {v}");
    serve.wait_tunnels(&conn, "tunnel 2 carrying", Duration::from_secs(30), |t| {
        t.len() == 2 && !established(&t[0]["status"]) && carrying(&t[1])
    });
    ping_both_ways(&topo, ONPREM_HOST, 3);
    let via2 = child_packets_out(&swan, &t2_child);
    assert!(
        via2 >= via2_before + 3,
        "strongSwan sent {via2_before} → {via2} packets through tunnel 2"
    );
}

fn carrying(t: &Value) -> bool {
    t["status"]["carrying_traffic"] == true
}

/// The IKE SA name strongSwan uses for the tunnel to `gw_addr`.
fn swan_name(sas: &[lab::SaInfo], gw_addr: &str) -> String {
    sas.iter()
        .find(|sa| sa.remote_host == gw_addr)
        .map(|sa| sa.name.clone())
        .unwrap_or_else(|| panic!("no IKE SA with {gw_addr}: {sas:#?}"))
}

/// ESP packets strongSwan sent so far on its installed CHILD SA named `child`.
fn child_packets_out(swan: &StrongSwan, child: &str) -> u64 {
    swan.list_sas()
        .unwrap()
        .iter()
        .flat_map(|sa| sa.children.iter())
        .filter(|c| c.name == child && c.state == "INSTALLED")
        .map(|c| c.packets_out)
        .max()
        .unwrap_or(0)
}

/// Dual tunnel in protected-flows mode.
#[test]
fn ikev2_dual_tunnel_protected_flows() {
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let (gw, cgw) = serve.base(&[GW1, GW2], &["172.16.0.0/16"]);
    let conn = serve.connection(
        &gw,
        &cgw,
        2,
        json!({
            "routing_mode": "protected_flows",
            "local_subnets": ["172.16.1.0/24"],
            "remote_subnets": ["10.2.0.0/24"],
        }),
        json!({"ike": {"version": "ikev2"}}),
    );
    let conf = serve.swanctl_conf(&conn);
    assert!(conf.contains(GW1) && conf.contains(GW2), "{conf}");

    let (swan, _) = swan_with_downloaded_conf(&topo, &conf, 2);
    let remotes: Vec<String> = swan
        .list_sas()
        .unwrap()
        .iter()
        .map(|sa| sa.remote_host.clone())
        .collect();
    assert!(
        remotes.iter().any(|r| r == GW1) && remotes.iter().any(|r| r == GW2),
        "{remotes:?}"
    );
    serve.wait_established(&conn, 2, Duration::from_secs(20));
    ping_both_ways(&topo, ONPREM_HOST, 3);
}

/// The `ipsec-conf` download: the part before the marker is /etc/ipsec.conf, the rest
/// /etc/ipsec.secrets; strongSwan's starter reads them unchanged, loads both conns over
/// stroke, and the dual tunnel in destination mode comes up and carries pings.
#[test]
fn ipsec_conf_through_starter_dual_tunnel_destination_mode() {
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let (gw, cgw) = serve.base(&[GW1, GW2], &["172.16.0.0/16"]);
    let conn = serve.connection(
        &gw,
        &cgw,
        2,
        json!({}),
        json!({"ike": {"version": "ikev2"}}),
    );
    serve.route(&gw, "10.2.0.0/24", &conn);
    let text = serve.peer_config(&conn, "ipsec-conf");
    let starter = starter_with_download(&topo, &text, 2);
    let status = starter.stroke(&["statusall"]).unwrap();
    assert!(
        status.contains(&format!("...{GW1}")) && status.contains(&format!("...{GW2}")),
        "{status}"
    );
    serve.wait_established(&conn, 2, Duration::from_secs(20));
    let table = topo.onprem.ip(&["route", "show", "table", "220"]).unwrap();
    assert!(!table.contains("default"), "table 220:\n{table}");
    ping_both_ways(&topo, ONPREM_HOST, 3);
}

/// The `ipsec-conf` download of an IKEv1 aggressive-mode tunnel with FQDN identities,
/// through starter/stroke.
#[test]
fn ipsec_conf_through_starter_ikev1_aggressive_fqdn() {
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let (gw, cgw) = serve.base(&[GW1], &["172.16.0.0/16"]);
    let conn = serve.connection(
        &gw,
        &cgw,
        1,
        json!({}),
        json!({"ike": {"version": "ikev1", "mode": "aggressive",
                       "local_id": GW_FQDN, "remote_id": ONPREM_FQDN}}),
    );
    serve.route(&gw, "10.2.0.0/24", &conn);
    let text = serve.peer_config(&conn, "ipsec-conf");
    let starter = starter_with_download(&topo, &text, 1);
    let status = starter.stroke(&["statusall"]).unwrap();
    assert!(
        status.contains("IKEv1") && status.contains(&format!("[{GW_FQDN}]")),
        "{status}"
    );
    let t = serve.wait_established(&conn, 1, Duration::from_secs(20));
    assert_eq!(t[0]["status"]["ike_sa"]["version"], "ikev1", "{t:#?}");
    ping_both_ways(&topo, ONPREM_HOST, 3);
}

/// Splits the ipsec-conf download into ipsec.conf and ipsec.secrets, starts starter in
/// `onprem` with them unchanged and waits until its `n` conns are established.
fn starter_with_download(topo: &Topology, text: &str, n: usize) -> Starter {
    let (conf, secrets) = text
        .split_once(IPSEC_SECRETS_MARKER)
        .expect("ipsec-conf output has a secrets part");
    let starter = Starter::start(
        &topo.onprem,
        &topo.workdir.subdir("onprem-starter").unwrap(),
        conf,
        secrets,
    )
    .unwrap_or_else(|e| panic!("starter refused the download: {e}\n--- file ---\n{text}"));
    let names = lab::starter::conn_names(conf);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names.len(), n, "{conf}");
    starter
        .wait_established(&names, Duration::from_secs(25))
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n--- file ---\n{text}\n--- charon.log ---\n{}",
                starter.log_tail(60)
            )
        });
    starter
}

/// BGP: the `frr` download loaded into bgpd on-premises, behind the strongSwan that
/// loaded the `swanctl` download, establishes a session with vpngw over each tunnel and
/// learns the VPC network. The only step besides the two files is the one the swanctl
/// file prints: this device's tunnel addresses on `lo`.
#[test]
fn frr_download_establishes_both_bgp_sessions() {
    const GW_ASN: u32 = 45104;
    const ONPREM_ASN: u32 = 65530;
    const VPC_NET: &str = "172.16.0.0/16";
    let topo = Topology::new().unwrap();
    let serve = start_serve(&topo);
    let gw = id(&serve.post(
        "/v1/vpn-gateways",
        json!({"name": "lab-gw", "ipsec_addresses": [GW1, GW2], "local_networks": [VPC_NET]}),
    ));
    let cgw = id(&serve.post(
        "/v1/customer-gateways",
        json!({"name": "onprem", "ip_address": ONPREM, "asn": ONPREM_ASN}),
    ));
    let tunnel = |cidr: &str, ip: &str| {
        json!({"customer_gateway_id": cgw, "pre_shared_key": PSK,
               "bgp": {"tunnel_cidr": cidr, "local_ip": ip}})
    };
    let conn = id(&serve.post(
        "/v1/vpn-connections",
        json!({
            "name": "peerconf-bgp",
            "vpn_gateway_id": gw,
            "effective_immediately": true,
            "enable_bgp": true,
            "local_asn": GW_ASN,
            "tunnels": [tunnel("169.254.10.0/30", "169.254.10.1"),
                        tunnel("169.254.20.0/30", "169.254.20.1")],
        }),
    ));
    let swanctl = serve.swanctl_conf(&conn);
    let frr_conf = serve.peer_config(&conn, "frr");

    // The setup lines the swanctl file prints for BGP, run as printed.
    let setup: Vec<&str> = swanctl
        .lines()
        .filter_map(|l| l.strip_prefix("#   ip "))
        .collect();
    assert_eq!(setup.len(), 2, "{swanctl}");
    for line in setup {
        let args: Vec<&str> = line.split_whitespace().collect();
        topo.onprem.ip(&args).unwrap();
    }
    let (_swan, _) = swan_with_downloaded_conf(&topo, &swanctl, 2);
    serve.wait_established(&conn, 2, Duration::from_secs(20));
    let frr = Frr::start(
        &topo.onprem,
        &topo.workdir.subdir("frr").unwrap(),
        &frr_conf,
    )
    .unwrap_or_else(|e| panic!("bgpd refused the download: {e}\n{frr_conf}"));
    for neighbor in ["169.254.10.1", "169.254.20.1"] {
        frr.wait_bgp_established(neighbor, Duration::from_secs(40))
            .unwrap_or_else(|e| panic!("{e}\n{frr_conf}\nbgpd log:\n{}", frr.log()));
    }
    frr.wait_prefix(VPC_NET, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nbgpd log:\n{}", frr.log()));
    let t = serve.wait_tunnels(
        &conn,
        "BGP established on both tunnels",
        Duration::from_secs(30),
        |t| {
            t.len() == 2
                && t.iter()
                    .all(|t| t["status"]["bgp"]["state"] == "established")
        },
    );
    for t in &t {
        assert_eq!(t["status"]["bgp"]["peer_asn"], ONPREM_ASN, "{t:#}");
    }
    // The same children carry the VPC's traffic (bgpd runs without zebra here, so the
    // on-premises network comes from a static route rather than from BGP).
    serve.route(&gw, "10.2.0.0/24", &conn);
    ping_both_ways(&topo, ONPREM_HOST, 3);
}
