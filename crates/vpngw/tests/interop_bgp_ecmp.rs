//! The BGP options of a connection (issue 7) end to end: the real `vpngw serve` binary
//! in the lab's `gw` namespace, a real strongSwan and FRR bgpd in `onprem` (needs root
//! and the lab's packages, see `lab`).
//!
//! One gateway, two dual-tunnel connections to the same FRR (AS 65530): connection A
//! (`bgp_ecmp`) learns the on-premises network on both tunnels' sessions; connection B
//! (`bgp_advertise_learned`, from a second on-premises address) learns nothing and
//! re-advertises what A learned. FRR accepts its own AS back on B's neighbors
//! (`allowas-in`) so that the re-advertised path shows in its table.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::time::{Duration, Instant};

use lab::vpngw::id;
use lab::{Frr, StrongSwan, SwanctlChild, SwanctlConn, Topology, Vpngw, swanctl};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_vpngw");
const PSK: &str = "bgp-ecmp-psk-7Kq";
const SUITE: &str = "aes128-sha1-modp1024";
const LISTEN: &str = "127.0.0.1:9282";
const VPC_NET: &str = "172.16.0.0/16";
const ONPREM_NET: &str = "10.2.0.0/24";
/// The second on-premises address (connection B's customer gateway).
const ONPREM_B: &str = "198.51.100.2";
const GW_ASN: u32 = 45104;
const ONPREM_ASN: u32 = 65530;
/// (link, vpngw's address, on-premises address) of A's and B's tunnels.
const LINKS: [(&str, &str, &str); 4] = [
    ("169.254.10.0/30", "169.254.10.1", "169.254.10.2"),
    ("169.254.11.0/30", "169.254.11.1", "169.254.11.2"),
    ("169.254.12.0/30", "169.254.12.1", "169.254.12.2"),
    ("169.254.13.0/30", "169.254.13.1", "169.254.13.2"),
];

fn serve(topo: &Topology) -> Vpngw {
    Vpngw::start_on_gw(topo, BIN, LISTEN).unwrap()
}

/// One strongSwan connection per tunnel: its own BGP link, plus (`data`) the networks.
fn onprem_conn(name: &str, local: &str, gw: &str, link: usize, data: Option<u32>) -> SwanctlConn {
    let (_, gw_bgp, onprem_bgp) = LINKS[link];
    let (mut l, mut r) = (
        vec![format!("{onprem_bgp}/32")],
        vec![format!("{gw_bgp}/32")],
    );
    if data.is_some() {
        l.insert(0, ONPREM_NET.into());
        r.insert(0, VPC_NET.into());
    }
    SwanctlConn {
        proposals: vec![SUITE.into()],
        dpd_delay: Some(10),
        ..SwanctlConn::psk(name, local, gw, PSK)
    }
    .child(SwanctlChild {
        local_ts: l,
        remote_ts: r,
        esp_proposals: vec![SUITE.into()],
        dpd_action: Some("restart".into()),
        start_action: Some("start".into()),
        close_action: Some("start".into()),
        priority: data,
        ..SwanctlChild::new(&format!("{name}-net"), ONPREM_NET, VPC_NET)
    })
}

/// bgpd with a neighbor per tunnel; B's neighbors get nothing from it (so vpngw learns
/// the on-premises network only over A) and accept paths with its own AS.
fn frr_config() -> String {
    let mut c = format!(
        "log stdout informational\n!\nrouter bgp {ONPREM_ASN}\n bgp router-id {}\n \
         no bgp ebgp-requires-policy\n no bgp network import-check\n",
        LINKS[0].2
    );
    for (_, gw, local) in LINKS {
        c.push_str(&format!(
            " neighbor {gw} remote-as {GW_ASN}\n neighbor {gw} update-source {local}\n \
             neighbor {gw} ebgp-multihop 2\n neighbor {gw} timers 10 30\n \
             neighbor {gw} timers connect 1\n"
        ));
    }
    c.push_str(&format!(
        " address-family ipv4 unicast\n  network {ONPREM_NET}\n"
    ));
    for (_, gw, _) in &LINKS[2..] {
        c.push_str(&format!(
            "  neighbor {gw} allowas-in\n  neighbor {gw} route-map NOTHING out\n"
        ));
    }
    c.push_str(" exit-address-family\n!\nroute-map NOTHING deny 10\n!\n");
    c
}

/// ESP packets vpngw sent on each tunnel of `conn` (its status counters).
fn packets_out(serve: &Vpngw, conn: &str) -> [u64; 2] {
    let c = serve.get(&format!("/v1/vpn-connections/{conn}"));
    let of = |t: usize| {
        c["tunnels"][t]["status"]["child_sas"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["packets_out"].as_u64()).sum())
            .unwrap_or(0)
    };
    [of(0), of(1)]
}

/// 40 UDP flows (destination ports 5001–5040), 20 datagrams each, from the VPC host to
/// the on-premises host; returns how many more ESP packets each of A's tunnels sent.
fn flows(topo: &Topology, serve: &Vpngw, conn: &str, onprem_host: &str) -> [u64; 2] {
    let before = packets_out(serve, conn);
    let script = format!(
        "for p in $(seq 5001 5040); do for i in $(seq 20); do \
         echo flow > /dev/udp/{onprem_host}/$p; done; done"
    );
    topo.vpc.exec(&["bash", "-c", &script]).unwrap();
    // The node refreshes the stored counters every 2 s.
    std::thread::sleep(Duration::from_secs(5));
    let after = packets_out(serve, conn);
    [after[0] - before[0], after[1] - before[1]]
}

#[test]
fn bgp_ecmp_spreads_flows_and_learned_routes_are_readvertised() {
    let topo = Topology::new().unwrap();
    let onprem_a = topo.onprem_public_ip().to_string();
    let gw1 = topo.gw_public_ip(0).unwrap().to_string();
    let gw2 = topo.gw_public_ip(1).unwrap().to_string();
    topo.onprem
        .addr_add("eth0", &format!("{ONPREM_B}/24"))
        .unwrap();
    for (_, _, a) in LINKS {
        topo.onprem.addr_add("lo", &format!("{a}/32")).unwrap();
    }
    let serve = serve(&topo);
    let swan =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    let frr = Frr::start(
        &topo.onprem,
        &topo.workdir.subdir("frr").unwrap(),
        &frr_config(),
    )
    .unwrap();
    let gw = serve.post(
        "/v1/vpn-gateways",
        json!({"name": "lab-gw", "ipsec_addresses": [gw1, gw2], "local_networks": [VPC_NET]}),
    );
    let gw_id = id(&gw);
    let mut conns = Vec::new();
    for (name, addr, links, options) in [
        ("a", onprem_a.as_str(), [0, 1], json!({"bgp_ecmp": true})),
        (
            "b",
            ONPREM_B,
            [2, 3],
            json!({"bgp_advertise_learned": true}),
        ),
    ] {
        let cgw = serve.post(
            "/v1/customer-gateways",
            json!({"name": format!("onprem-{name}"), "ip_address": addr, "asn": ONPREM_ASN}),
        );
        let tunnel = |l: usize| {
            json!({"customer_gateway_id": id(&cgw), "pre_shared_key": PSK,
                   "bgp": {"tunnel_cidr": LINKS[l].0, "local_ip": LINKS[l].1}})
        };
        let mut body = json!({
            "name": format!("to-onprem-{name}"),
            "vpn_gateway_id": gw_id,
            "effective_immediately": false,
            "enable_bgp": true,
            "local_asn": GW_ASN,
            "tunnels": [tunnel(links[0]), tunnel(links[1])],
        });
        body.as_object_mut()
            .unwrap()
            .extend(options.as_object().unwrap().clone());
        let c = serve.post("/v1/vpn-connections", body);
        conns.push(id(&c));
    }
    let (conn_a, conn_b) = (conns[0].clone(), conns[1].clone());
    let c = serve.get(&format!("/v1/vpn-connections/{conn_a}"));
    assert_eq!(
        (&c["bgp_ecmp"], &c["bgp_advertise_learned"]),
        (&json!(true), &json!(false))
    );
    swan.load(&swanctl::render(&[
        onprem_conn("a1", &onprem_a, &gw1, 0, Some(1)),
        onprem_conn("a2", &onprem_a, &gw2, 1, Some(2)),
        onprem_conn("b1", ONPREM_B, &gw1, 2, None),
        onprem_conn("b2", ONPREM_B, &gw2, 3, None),
    ]))
    .unwrap();

    let start = Instant::now();
    let up = |s: &Value| s["phase"] == "established" && s["bgp"]["state"] == "established";
    loop {
        let a = serve.get(&format!("/v1/vpn-connections/{conn_a}"));
        let b = serve.get(&format!("/v1/vpn-connections/{conn_b}"));
        let ts = [
            &a["tunnels"][0],
            &a["tunnels"][1],
            &b["tunnels"][0],
            &b["tunnels"][1],
        ];
        if ts.iter().all(|t| up(&t["status"]))
            && a["tunnels"][0]["status"]["bgp"]["routes_received"].as_u64() >= Some(1)
            && a["tunnels"][1]["status"]["bgp"]["routes_received"].as_u64() >= Some(1)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "four tunnels and sessions up: {a:#}\n{b:#}\nvpngw log:\n{}\nbgpd log:\n{}",
            serve.log_tail(60),
            frr.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // ECMP: both of A's routes are active.
    let table = || serve.get(&format!("/v1/vpn-gateways/{gw_id}/route-table"));
    let active_a = |t: &Value| {
        t["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["origin"] == "bgp"
                    && e["destination"] == ONPREM_NET
                    && e["next_hop"] == conn_a.as_str()
                    && e["state"] == "active"
            })
            .count()
    };
    let start = Instant::now();
    while active_a(&table()) < 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "{:#}", table());
        std::thread::sleep(Duration::from_millis(200));
    }

    // Re-advertised: B's neighbors give FRR the on-premises network learned over A,
    // AS path 45104 65530 (our AS prepended to the learned path); A's neighbors never
    // get it back.
    let path_via = |neighbor: &str| -> Option<String> {
        let out = frr
            .vtysh(&format!("show bgp ipv4 unicast {ONPREM_NET} json"))
            .ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        v["paths"].as_array()?.iter().find_map(|p| {
            (p["peer"]["peerId"] == neighbor)
                .then(|| p["aspath"]["string"].as_str().unwrap_or("").to_string())
        })
    };
    let start = Instant::now();
    loop {
        let (b1, b2) = (path_via(LINKS[2].1), path_via(LINKS[3].1));
        if b1.is_some() && b2.is_some() {
            assert_eq!(b1.as_deref(), Some("45104 65530"));
            assert_eq!(b2.as_deref(), Some("45104 65530"));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "re-advertised route at FRR: {}\nvpngw log:\n{}",
            frr.vtysh(&format!("show bgp ipv4 unicast {ONPREM_NET}"))
                .unwrap_or_default(),
            serve.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(path_via(LINKS[0].1), None, "sent back to connection A");
    assert_eq!(path_via(LINKS[1].1), None, "sent back to connection A");
    let br = serve.get(&format!("/v1/vpn-connections/{conn_b}/bgp-routes"));
    let adv = &br["items"][0]["advertised"];
    assert!(
        adv.as_array()
            .unwrap()
            .iter()
            .any(|r| r["prefix"] == ONPREM_NET && r["as_path"] == json!([GW_ASN, ONPREM_ASN])),
        "{br:#}"
    );

    // Traffic: with ECMP on, 40 flows go out over both tunnels; with it off, tunnel 1
    // carries them (tunnel 2 only its BGP keepalives).
    let onprem_host = topo.onprem_net_ip().unwrap_or("10.2.0.1").to_string();
    let on = flows(&topo, &serve, &conn_a, &onprem_host);
    println!("ESP packets per tunnel with bgp_ecmp: {on:?}");
    assert!(
        on[0] >= 100 && on[1] >= 100,
        "800 datagrams in 40 flows: {on:?}"
    );
    let (s, v) = serve.call(
        "PATCH",
        &format!("/v1/vpn-connections/{conn_a}"),
        Some(json!({"bgp_ecmp": false})),
    );
    assert_eq!(s, 200, "{v}");
    let start = Instant::now();
    while active_a(&table()) != 1 {
        assert!(start.elapsed() < Duration::from_secs(30), "{:#}", table());
        std::thread::sleep(Duration::from_millis(200));
    }
    let off = flows(&topo, &serve, &conn_a, &onprem_host);
    println!("ESP packets per tunnel without bgp_ecmp: {off:?}");
    assert!(off[0] >= 700 && off[1] < 20, "{off:?}");
    // The option change kept the sessions (no renegotiation, no reset).
    let c = serve.get(&format!("/v1/vpn-connections/{conn_a}"));
    assert!(
        c["tunnels"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| up(&t["status"])),
        "{c:#}"
    );

    // Withdrawn at the source: FRR stops announcing the network to A, so vpngw
    // withdraws it from B's neighbors.
    frr.vtysh_lines(&[
        "configure terminal",
        &format!("router bgp {ONPREM_ASN}"),
        "address-family ipv4 unicast",
        &format!("no network {ONPREM_NET}"),
    ])
    .unwrap();
    let start = Instant::now();
    while path_via(LINKS[2].1).is_some() || path_via(LINKS[3].1).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still re-advertised after the source withdrew it: {}",
            frr.vtysh(&format!("show bgp ipv4 unicast {ONPREM_NET}"))
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(frr);
    drop(swan);
    drop(serve);
}
