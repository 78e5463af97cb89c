//! Golden files: every format for every fixture, compared byte for byte with
//! `tests/golden/<fixture>.<format>.txt`. `UPDATE_GOLDEN=1 cargo test -p peerconf --test
//! golden` rewrites them; review the diff before committing.

mod common;

use std::path::PathBuf;

use peerconf::{Format, render};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn rendered(f: &common::Fixture, format: Format) -> String {
    match render(format, &f.ctx()) {
        Ok(text) => text,
        Err(e) => format!("ERROR: {e}\n"),
    }
}

#[test]
fn every_format_of_every_fixture_matches_its_golden_file() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    let mut count = 0;
    for f in common::all() {
        for format in Format::ALL {
            count += 1;
            let path = golden_dir().join(format!("{}.{}.txt", f.name, format.name()));
            let got = rendered(&f, format);
            if update {
                std::fs::write(&path, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
                    path.display()
                )
            });
            if got != want {
                let line = got
                    .lines()
                    .zip(want.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or_else(|| got.lines().count().min(want.lines().count()));
                failures.push(format!(
                    "{}: first difference at line {}:\n  got:  {:?}\n  want: {:?}",
                    path.display(),
                    line + 1,
                    got.lines().nth(line).unwrap_or("<end>"),
                    want.lines().nth(line).unwrap_or("<end>")
                ));
            }
        }
    }
    assert_eq!(count, 45);
    assert!(
        failures.is_empty(),
        "{} golden file(s) differ (UPDATE_GOLDEN=1 rewrites them):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn frr_needs_bgp_and_says_so() {
    let e = render(Format::Frr, &common::ikev2_destination_dual().ctx()).unwrap_err();
    assert!(e.to_string().contains("BGP is not enabled"), "{e}");
    assert!(render(Format::Frr, &common::bgp_dual().ctx()).is_ok());
}

/// With the connection's `bgp_ecmp` the peer is told to use both sessions' routes.
#[test]
fn frr_with_bgp_ecmp_uses_both_tunnels_back() {
    let mut f = common::bgp_dual();
    let plain = render(Format::Frr, &f.ctx()).unwrap();
    assert!(!plain.contains("maximum-paths"), "{plain}");
    f.connection.bgp_ecmp = true;
    let text = render(Format::Frr, &f.ctx()).unwrap();
    let af = text
        .split(" address-family ipv4 unicast")
        .nth(1)
        .and_then(|rest| rest.split(" exit-address-family").next())
        .unwrap();
    assert!(af.lines().any(|l| l == "  maximum-paths 2"), "{text}");
    assert!(!text.contains("Tunnel 1 is preferred"), "{text}");
}

#[test]
fn psks_are_in_the_output_and_never_in_errors_or_debug() {
    for f in common::all() {
        let ctx = f.ctx();
        let debug = format!("{ctx:?}");
        for t in &f.connection.tunnels {
            let key = t.pre_shared_key.expose();
            assert!(!debug.contains(key), "{}: Debug shows a key", f.name);
            for format in [
                Format::Swanctl,
                Format::Json,
                Format::CiscoIos,
                Format::Fortigate,
            ] {
                let text = render(format, &ctx).unwrap();
                assert!(
                    text.contains(key) || text.contains(&key.replace('\\', "\\\\")),
                    "{}: {format} lacks tunnel {}'s key",
                    f.name,
                    t.id
                );
            }
        }
        // Every error path: a missing customer gateway, a missing key.
        let no_cgws = peerconf::PeerContext::new(&f.connection, &f.gateway, &[]);
        let mut keyless = f.connection.clone();
        for t in &mut keyless.tunnels {
            t.pre_shared_key = model::Psk::default();
        }
        let errors = [
            render(Format::Swanctl, &no_cgws).unwrap_err(),
            render(
                Format::Swanctl,
                &peerconf::PeerContext::new(&keyless, &f.gateway, &f.cgws),
            )
            .unwrap_err(),
        ];
        for e in errors {
            let shown = format!("{e} {e:?}");
            for t in &f.connection.tunnels {
                assert!(!shown.contains(t.pre_shared_key.expose()), "{shown}");
            }
        }
    }
}

#[test]
fn json_is_the_peer_view() {
    let f = common::bgp_dual();
    let v: serde_json::Value =
        serde_json::from_str(&render(Format::Json, &f.ctx()).unwrap()).unwrap();
    let t = &v["tunnels"][0];
    assert_eq!(t["local_address"], "203.0.113.7");
    assert_eq!(t["remote_address"], "192.0.2.1");
    assert_eq!(t["local_id"], "203.0.113.7");
    assert_eq!(t["remote_id"], "192.0.2.1");
    assert_eq!(t["pre_shared_key"], "BgpKey1");
    assert_eq!(t["ike"]["encryption"], "aes256");
    assert_eq!(t["ipsec"]["pfs"], "group14");
    assert_eq!(t["bgp"]["local_ip"], "169.254.10.2");
    assert_eq!(t["bgp"]["remote_ip"], "169.254.10.1");
    assert_eq!(t["bgp"]["local_asn"], 65_530);
    assert_eq!(t["bgp"]["remote_asn"], 65_535);
    assert_eq!(v["tunnels"][1]["local_address"], "203.0.113.8");
    assert_eq!(v["remote_subnets"][0], "192.168.0.0/16");
    assert_eq!(v["local_subnets"][1], "172.16.21.0/24");

    let f = common::ikev1_aggressive_fqdn();
    let v: serde_json::Value =
        serde_json::from_str(&render(Format::Json, &f.ctx()).unwrap()).unwrap();
    let t = &v["tunnels"][0];
    assert!(t["local_address"].is_null());
    assert_eq!(t["local_id"], "branch.example.com");
    assert_eq!(t["remote_id"], "vpn.example.net");
    assert_eq!(t["ike"]["mode"], "aggressive");
}

/// Destination mode: the strongSwan formats narrow the VPC side (so a Linux strongSwan
/// routes only the VPC into the tunnel, kernel-libipsec included), while the JSON and the
/// vendor route-based templates keep vpngw's 0.0.0.0/0.
#[test]
fn strongswan_destination_mode_narrows_the_vpc_side() {
    let lines = |text: &str, key: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| l.starts_with(key))
            .map(str::to_owned)
            .collect()
    };
    let f = common::ikev2_destination_dual();
    let swanctl = render(Format::Swanctl, &f.ctx()).unwrap();
    assert_eq!(lines(&swanctl, "remote_ts"), ["remote_ts = 10.0.0.0/16"; 2]);
    assert_eq!(lines(&swanctl, "local_ts"), ["local_ts = 0.0.0.0/0"; 2]);
    assert!(!swanctl.contains("if_id"), "{swanctl}");
    let ipsec = render(Format::IpsecConf, &f.ctx()).unwrap();
    assert_eq!(lines(&ipsec, "rightsubnet"), ["rightsubnet=10.0.0.0/16"; 2]);
    let json: serde_json::Value =
        serde_json::from_str(&render(Format::Json, &f.ctx()).unwrap()).unwrap();
    assert_eq!(json["tunnels"][0]["remote_ts"][0], "0.0.0.0/0", "{json:#}");

    // BGP: each tunnel also carries vpngw's BGP address of that tunnel.
    let f = common::bgp_dual();
    let swanctl = render(Format::Swanctl, &f.ctx()).unwrap();
    assert_eq!(
        lines(&swanctl, "remote_ts"),
        [
            "remote_ts = 192.168.0.0/16,169.254.10.1/32",
            "remote_ts = 192.168.0.0/16,169.254.20.1/32"
        ]
    );
    assert!(swanctl.contains("#   ip address add 169.254.20.2/32 dev lo"));

    // IKEv1 has one selector pair per Quick Mode: two VPC networks stay 0.0.0.0/0, with a
    // warning.
    let f = common::ikev1_main();
    let swanctl = render(Format::Swanctl, &f.ctx()).unwrap();
    assert_eq!(lines(&swanctl, "remote_ts"), ["remote_ts = 0.0.0.0/0"; 2]);
    assert!(swanctl.contains("WARNING: a tunnel below keeps 0.0.0.0/0"));

    // Protected flows are unchanged.
    let f = common::ikev2_protected_flows();
    let swanctl = render(Format::Swanctl, &f.ctx()).unwrap();
    assert!(
        !lines(&swanctl, "remote_ts")
            .iter()
            .any(|l| l.contains("0.0.0.0/0"))
    );
}
