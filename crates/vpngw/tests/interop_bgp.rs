//! BGP over a tunnel (issue 7): the real `vpngw serve` binary in the lab's `gw`
//! namespace, a real strongSwan 5.9 and FRR bgpd in `onprem` (needs root and the lab's
//! packages, see `lab`). The on-premises network is reachable only through the route
//! vpngw learns over BGP: no static route is configured.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::time::{Duration, Instant};

use lab::{Frr, Process, StrongSwan, SwanctlChild, SwanctlConn, Topology, swanctl};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_vpngw");
const PSK: &str = "bgp-psk-4Rw";
const SUITE: &str = "aes128-sha1-modp1024";
const LISTEN: &str = "127.0.0.1:9281";
const VPC_NET: &str = "172.16.0.0/16";
const ONPREM_NET: &str = "10.2.0.0/24";
const LINK: &str = "169.254.10.0/30";
const GW_BGP_IP: &str = "169.254.10.1";
const ONPREM_BGP_IP: &str = "169.254.10.2";
const GW_ASN: u32 = 45104;
const ONPREM_ASN: u32 = 65530;

/// `vpngw serve` in the `gw` namespace; SIGTERM (then SIGKILL) on drop.
struct Serve {
    process: Process,
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
        Serve { process, token }
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
            if start.elapsed() > Duration::from_secs(60) {
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
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

/// strongSwan on-premises in destination mode (0.0.0.0/0 selectors): with
/// kernel-libipsec everything without a more specific route, the BGP peer address
/// included, goes into the tunnel.
fn onprem_conn(onprem: &str, gw: &str) -> SwanctlConn {
    SwanctlConn {
        proposals: vec![SUITE.into()],
        dpd_delay: Some(10),
        ..SwanctlConn::psk("vpn", onprem, gw, PSK)
    }
    .child(SwanctlChild {
        esp_proposals: vec![SUITE.into()],
        dpd_action: Some("restart".into()),
        ..SwanctlChild::new("net", "0.0.0.0/0", "0.0.0.0/0")
    })
}

/// bgpd on-premises: the neighbor is vpngw's tunnel address, reached through the
/// tunnel (not a connected network, hence `ebgp-multihop`), from our own link address.
fn frr_config() -> String {
    format!(
        "log stdout informational\n!\nrouter bgp {ONPREM_ASN}\n bgp router-id {ONPREM_BGP_IP}\n \
         no bgp ebgp-requires-policy\n no bgp network import-check\n \
         neighbor {GW_BGP_IP} remote-as {GW_ASN}\n \
         neighbor {GW_BGP_IP} update-source {ONPREM_BGP_IP}\n \
         neighbor {GW_BGP_IP} ebgp-multihop 2\n \
         neighbor {GW_BGP_IP} timers 10 30\n \
         neighbor {GW_BGP_IP} timers connect 1\n \
         address-family ipv4 unicast\n  network {ONPREM_NET}\n exit-address-family\n!\n"
    )
}

#[test]
fn bgp_over_a_tunnel_with_frr_routes_the_vpc_to_onprem() {
    let topo = Topology::new().unwrap();
    let onprem_ip = topo.onprem_public_ip().to_string();
    let gw_ip = topo.gw_public_ip(0).unwrap().to_string();
    topo.onprem
        .addr_add("lo", &format!("{ONPREM_BGP_IP}/32"))
        .unwrap();
    let serve = Serve::start(&topo);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    swan.load(&swanctl::render(&[onprem_conn(&onprem_ip, &gw_ip)]))
        .unwrap();
    let frr = Frr::start(
        &topo.onprem,
        &topo.workdir.subdir("frr").unwrap(),
        &frr_config(),
    )
    .unwrap();

    let gw = serve.post(
        &topo,
        "/v1/vpn-gateways",
        json!({"name": "lab-gw", "ipsec_addresses": [gw_ip], "local_networks": [VPC_NET]}),
    );
    let gw_id = id(&gw);
    let cgw = serve.post(
        &topo,
        "/v1/customer-gateways",
        json!({"name": "onprem", "ip_address": onprem_ip, "asn": ONPREM_ASN}),
    );
    let conn = serve.post(
        &topo,
        "/v1/vpn-connections",
        json!({
            "name": "to-onprem",
            "vpn_gateway_id": gw_id,
            "effective_immediately": true,
            "enable_bgp": true,
            "local_asn": GW_ASN,
            "tunnels": [{
                "customer_gateway_id": id(&cgw),
                "pre_shared_key": PSK,
                "bgp": {"tunnel_cidr": LINK, "local_ip": GW_BGP_IP},
            }],
        }),
    );
    let conn_id = id(&conn);
    serve.wait_tunnel(&topo, &conn_id, "established", |s| {
        s["phase"] == "established"
    });

    // The session comes up over the tunnel, both sides agree.
    let t = serve.wait_tunnel(&topo, &conn_id, "BGP established", |s| {
        s["bgp"]["state"] == "established" && s["bgp"]["routes_received"].as_u64() >= Some(1)
    });
    assert_eq!(t["status"]["bgp"]["peer_asn"], ONPREM_ASN, "{t:#}");
    assert_eq!(t["status"]["bgp"]["routes_advertised"], 1, "{t:#}");
    frr.wait_bgp_established(GW_BGP_IP, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nbgpd log:\n{}", frr.log()));
    frr.wait_prefix(VPC_NET, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nbgpd log:\n{}", frr.log()));
    let table = frr.vtysh("show bgp ipv4 unicast").unwrap();
    assert!(table.contains(VPC_NET), "{table}");

    // No static route: the VPC reaches on-premises only through the learned route.
    let routes = serve.get(&topo, &format!("/v1/vpn-gateways/{gw_id}/routes"));
    assert_eq!(
        routes["items"].as_array().map_or(0, Vec::len),
        0,
        "{routes:#}"
    );
    let vpc = topo.vpc_ip().to_string();
    let onprem_host = topo.onprem_net_ip().unwrap_or("10.2.0.1").to_string();
    lab::wait_ping(&topo.vpc, &vpc, &onprem_host, Duration::from_secs(10)).unwrap();
    let r = lab::ping(&topo.vpc, &vpc, &onprem_host, 5, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, 5, "VPC → on-premises over the BGP route: {r:?}");

    // bgpd goes away: the session drops and the learned route is withdrawn, so the
    // on-premises network is unreachable again although the tunnel stays up.
    drop(frr);
    let t = serve.wait_tunnel(&topo, &conn_id, "BGP down", |s| {
        s["bgp"]["state"] != "established" && s["bgp"]["routes_received"] == 0
    });
    assert_eq!(t["status"]["phase"], "established", "{t:#}");
    let r = lab::ping(&topo.vpc, &vpc, &onprem_host, 2, Duration::from_secs(3)).unwrap();
    assert_eq!(r.received, 0, "the withdrawn route still forwards: {r:?}");
    drop(serve);
}
