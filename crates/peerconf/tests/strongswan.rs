//! The rendered strongSwan and FRR configurations, loaded into the real daemons: a
//! charon over vici (swanctl.conf), starter + charon over stroke (ipsec.conf and
//! ipsec.secrets) and an FRR bgpd. Each runs in a namespace of its own that has only
//! `lo`, so the IKE packets they try to send (start_action = start) go nowhere.
//!
//! Needs root and the packages `scripts/test` installs, plus strongswan-starter for the
//! ipsec.conf test.

mod common;

use std::path::Path;
use std::time::Duration;

use lab::{
    Frr, Netns, Process, StrongSwan, SwanctlChild, SwanctlConn, Topology, Workdir, wait_until,
};
use peerconf::{Format, IPSEC_SECRETS_MARKER, render};

const STARTER: &str = "/usr/lib/ipsec/starter";

#[test]
fn swanctl_output_loads_into_charon() {
    let wd = Workdir::new("peerconf-swanctl").unwrap();
    let ns = Netns::new("pcswan").unwrap();
    let swan = StrongSwan::start(&ns, &wd.subdir("charon").unwrap()).unwrap();
    for f in common::all() {
        let text = render(Format::Swanctl, &f.ctx()).unwrap();
        let path = swan.dir().join(format!("{}.swanctl.conf", f.name));
        std::fs::write(&path, &text).unwrap();
        let out = swan
            .swanctl(&["--load-all", "--clear", "--file", &path.to_string_lossy()])
            .unwrap_or_else(|e| panic!("{}: swanctl --load-all failed: {e}", f.name));
        let n = f.connection.tunnels.len();
        // --clear unloads the previous fixture's connections: count only the loads.
        assert!(
            out.contains(&format!("successfully loaded {n} connections,")),
            "{}: {out}",
            f.name
        );
        assert!(
            out.contains(&format!("loaded {n} secrets")) || out.contains("loaded ike secret"),
            "{}: {out}",
            f.name
        );
        assert!(!out.contains("failed"), "{}: {out}", f.name);
        let conns = swan.swanctl(&["--list-conns"]).unwrap();
        for (i, t) in f.connection.tunnels.iter().enumerate() {
            let name = tunnel_name(&text, i);
            assert!(
                out.contains(&format!("loaded ike secret 'ike-{name}'")),
                "{}: {out}",
                f.name
            );
            assert!(
                out.contains(&format!("loaded connection '{name}'")),
                "{}: {out}",
                f.name
            );
            let version = match t.ike.version {
                model::IkeVersion::Ikev1 => "IKEv1",
                model::IkeVersion::Ikev2 => "IKEv2",
            };
            assert!(
                conns.contains(&format!("{name}: {version}")),
                "{}: {conns}",
                f.name
            );
            assert!(
                conns.contains(&format!("{name}-net: TUNNEL")),
                "{}: {conns}",
                f.name
            );
        }
    }
}

#[test]
fn ipsec_conf_output_loads_into_starter_and_charon() {
    assert!(
        Path::new(STARTER).exists(),
        "{STARTER} is missing: apt-get install strongswan-starter"
    );
    lab::strongswan::check_plugins().unwrap();
    let wd = Workdir::new("peerconf-starter").unwrap();
    for f in common::all() {
        let dir = wd.subdir(f.name).unwrap();
        let text = render(Format::IpsecConf, &f.ctx()).unwrap();
        let (conf, secrets) = text
            .split_once(IPSEC_SECRETS_MARKER)
            .expect("ipsec-conf output has a secrets part");
        std::fs::write(dir.join("ipsec.conf"), conf).unwrap();
        std::fs::write(dir.join("ipsec.secrets"), secrets).unwrap();
        std::fs::write(dir.join("strongswan.conf"), stroke_conf(&dir)).unwrap();

        let ns = Netns::new("pcstroke").unwrap();
        let mut cmd = ns.command("unshare");
        // A private /run: starter and charon keep pid files and the stroke socket there.
        cmd.args([
            "-m",
            "sh",
            "-c",
            &format!(
                "mount -t tmpfs none /run && exec {STARTER} --nofork --conf {}",
                dir.join("ipsec.conf").display()
            ),
        ])
        .env("STRONGSWAN_CONF", dir.join("strongswan.conf"));
        let mut starter = Process::spawn(cmd, &dir, "starter").unwrap();
        let log = dir.join("charon.log");
        let names: Vec<String> = (0..f.connection.tunnels.len())
            .map(|i| conn_name(conf, i))
            .collect();
        wait_until(Duration::from_secs(15), "charon adds every conn", || {
            starter.ensure_running()?;
            let l = std::fs::read_to_string(&log).unwrap_or_default();
            Ok(names
                .iter()
                .all(|n| l.contains(&format!("added configuration '{n}'")))
                .then_some(()))
        })
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", f.name, starter.log_tail(30)));
        let l = std::fs::read_to_string(&log).unwrap();
        for t in &f.connection.tunnels {
            assert!(
                l.contains(&format!(
                    "loaded IKE secret for {} {}",
                    t.ike.remote_id, t.ike.local_id
                )),
                "{}: {l}",
                f.name
            );
        }
        for bad in ["invalid", "skipped", "failed to", "parse error"] {
            assert!(!l.contains(bad), "{}: charon.log has {bad:?}:\n{l}", f.name);
        }
        let out = starter.stdout() + &std::fs::read_to_string(starter.stderr_path()).unwrap();
        assert!(!out.contains("###"), "{}: starter: {out}", f.name);
        let status = ns
            .exec(&[
                "nsenter",
                "-t",
                &starter.pid().to_string(),
                "-m",
                "/usr/lib/ipsec/stroke",
                "statusall",
            ])
            .unwrap();
        for (i, t) in f.connection.tunnels.iter().enumerate() {
            let version = match t.ike.version {
                model::IkeVersion::Ikev1 => "IKEv1",
                model::IkeVersion::Ikev2 => "IKEv2",
            };
            assert!(
                status.contains(&format!("{}: ", names[i])) && status.contains(version),
                "{}: {status}",
                f.name
            );
            // The peer's identity is vpngw's remote_id, and the other way round.
            assert!(
                status.contains(&format!("local:  [{}]", t.ike.remote_id))
                    && status.contains(&format!("remote: [{}]", t.ike.local_id)),
                "{}: {status}",
                f.name
            );
        }
    }
}

#[test]
fn frr_output_is_accepted_by_bgpd() {
    let f = common::bgp_dual();
    let text = render(Format::Frr, &f.ctx()).unwrap();
    let wd = Workdir::new("peerconf-frr").unwrap();
    let ns = Netns::new("pcfrr").unwrap();
    let frr = Frr::start(&ns, &wd.subdir("frr").unwrap(), &text).unwrap();
    let running = frr.vtysh("show running-config").unwrap();
    for line in [
        "router bgp 65530",
        "bgp router-id 169.254.10.2",
        "no bgp ebgp-requires-policy",
        "neighbor 169.254.10.1 remote-as 65535",
        "neighbor 169.254.10.1 timers 10 30",
        "neighbor 169.254.20.1 remote-as 65535",
        "neighbor 169.254.20.1 timers 10 30",
        "network 172.16.20.0/24",
        "network 172.16.21.0/24",
    ] {
        assert!(running.contains(line), "missing {line:?} in:\n{running}");
    }
}

/// With `bgp_ecmp`, bgpd takes the `maximum-paths 2` line too.
#[test]
fn frr_ecmp_output_is_accepted_by_bgpd() {
    let mut f = common::bgp_dual();
    f.connection.bgp_ecmp = true;
    let text = render(Format::Frr, &f.ctx()).unwrap();
    let wd = Workdir::new("peerconf-frr-ecmp").unwrap();
    let ns = Netns::new("pcfrre").unwrap();
    let frr = Frr::start(&ns, &wd.subdir("frr").unwrap(), &text).unwrap();
    let running = frr.vtysh("show running-config").unwrap();
    assert!(
        running.lines().any(|l| l.trim() == "maximum-paths 2"),
        "maximum-paths missing in:\n{running}"
    );
}

/// The rendered swanctl.conf on the on-premises strongSwan negotiates both tunnels with
/// a strongSwan standing in for vpngw, configured independently from the tunnels'
/// vpngw-side settings (its keys in hex, so no quoting is shared with the renderer).
#[test]
fn swanctl_output_establishes_both_tunnels_with_a_stand_in_gateway() {
    let topo = Topology::new().unwrap();
    let f = common::lab_pair(topo.onprem_public_ip());
    let gw = StrongSwan::start(&topo.gw, &topo.workdir.subdir("gw-swan").unwrap()).unwrap();
    let onprem =
        StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan").unwrap()).unwrap();
    // vpngw's side of each tunnel, spelled out by hand in strongSwan's names.
    let algs = [
        ("aes256-sha256-modp2048", "aes256-sha256-modp2048"),
        ("3des-sha1-modp1536", "3des-sha1-modp1536"),
    ];
    let conns: Vec<SwanctlConn> = f
        .connection
        .tunnels
        .iter()
        .zip(algs)
        .enumerate()
        .map(|(i, (t, (ike, esp)))| {
            let hex: String = t
                .pre_shared_key
                .expose()
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect();
            SwanctlConn {
                version: if t.ike.version == model::IkeVersion::Ikev1 {
                    1
                } else {
                    2
                },
                local_id: Some(t.ike.local_id.clone()),
                remote_id: Some(t.ike.remote_id.clone()),
                proposals: vec![ike.into()],
                encap: true,
                ..SwanctlConn::psk(
                    &format!("gw-t{}", i + 1),
                    &t.gateway_address.to_string(),
                    topo.onprem_public_ip(),
                    &format!("0x{hex}"),
                )
            }
            .child(SwanctlChild {
                esp_proposals: vec![esp.into()],
                ..SwanctlChild::new(
                    &format!("gw-t{}-net", i + 1),
                    "172.16.1.0/24",
                    "10.2.0.0/24",
                )
            })
        })
        .collect();
    gw.load(&lab::swanctl::render(&conns)).unwrap();
    // start_action = start: loading makes the peer initiate both tunnels.
    onprem
        .load(&render(Format::Swanctl, &f.ctx()).unwrap())
        .unwrap();
    for (name, version) in [("lab-t1", 2), ("lab-t2", 1)] {
        let sa = onprem
            .wait_established(name, Duration::from_secs(30))
            .unwrap();
        assert_eq!(sa.version, version);
        let child = sa.child(&format!("{name}-net")).unwrap();
        assert_eq!(child.local_ts, vec!["10.2.0.0/24"]);
        assert_eq!(child.remote_ts, vec!["172.16.1.0/24"]);
        assert!(child.encap, "{name}: ESP in UDP");
    }
}

/// The name of connection `i` in a rendered swanctl.conf (`<slug>-t<i+1>`).
fn tunnel_name(text: &str, i: usize) -> String {
    let suffix = format!("-t{} {{", i + 1);
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_suffix(&suffix).map(|s| format!("{s}-t{}", i + 1)))
        .expect("connection section")
}

fn conn_name(conf: &str, i: usize) -> String {
    conf.lines()
        .filter_map(|l| l.strip_prefix("conn "))
        .nth(i)
        .expect("conn section")
        .to_owned()
}

/// charon with the stroke plugin (which reads ipsec.secrets) instead of vici.
fn stroke_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "charon {{
  load = {} stroke
  filelog {{
    clog {{
      path = {d}/charon.log
      flush_line = yes
      default = 1
    }}
  }}
  plugins {{
    stroke {{
      secrets_file = {d}/ipsec.secrets
    }}
  }}
}}
",
        lab::strongswan::PLUGINS.replace("vici ", "")
    )
}
