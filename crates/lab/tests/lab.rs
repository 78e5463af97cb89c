//! The lab harness proven against real peers: namespaces that clean up after a panic,
//! strongSwan↔strongSwan (direct, and through the standard topology with a NAT), FRR
//! BGP sessions, iperf3 through a tunnel, and IPsec outages made with nftables.
//!
//! Needs root and the packages scripts/test installs.

use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lab::{
    BgpConfig, Frr, Iperf3Server, Netns, PingMonitor, Process, StrongSwan, SwanctlChild,
    SwanctlConn, Topology, TopologyConfig, Workdir, iperf3_client, list_netns, nft, ping, swanctl,
    veth, wait_ping,
};
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Bound of every wait for a peer.
const WAIT: Duration = Duration::from_secs(20);
const PSK: &str = "lab-test-psk";
const PROPOSAL: &str = "aes128-sha1-modp1024";

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// Two namespaces on one veth (203.0.113.1 ↔ .2) with 10.1.0.1/24 and 10.2.0.1/24 on
/// their `lo`, a charon in each and an established IKEv2 PSK tunnel
/// 10.1.0.0/24 ↔ 10.2.0.0/24 (LAB.md's first experiment). Fields drop top to bottom:
/// charons, then namespaces, then the work directory.
struct SwanPair {
    left: StrongSwan,
    right: StrongSwan,
    a: Netns,
    b: Netns,
    workdir: Workdir,
}

fn pair_conn(local: &str, remote: &str, local_ts: &str, remote_ts: &str) -> SwanctlConn {
    SwanctlConn {
        proposals: vec![PROPOSAL.into()],
        ..SwanctlConn::psk("gw", local, remote, PSK)
    }
    .child(SwanctlChild {
        esp_proposals: vec![PROPOSAL.into()],
        ..SwanctlChild::new("net", local_ts, remote_ts)
    })
}

fn swan_pair(prefix: &str) -> lab::Result<SwanPair> {
    swan_pair_with(prefix, |c| c)
}

/// [`swan_pair`] with both sides' connection passed through `tweak` first.
fn swan_pair_with(
    prefix: &str,
    tweak: impl Fn(SwanctlConn) -> SwanctlConn,
) -> lab::Result<SwanPair> {
    let workdir = Workdir::new(prefix)?;
    let a = Netns::new("swl")?;
    let b = Netns::new("swr")?;
    veth(&a, "v0", &b, "v0")?;
    a.addr_add("v0", "203.0.113.1/24")?;
    b.addr_add("v0", "203.0.113.2/24")?;
    a.addr_add("lo", "10.1.0.1/24")?;
    b.addr_add("lo", "10.2.0.1/24")?;
    let left = StrongSwan::start(&a, &workdir.subdir("left")?)?;
    let right = StrongSwan::start(&b, &workdir.subdir("right")?)?;
    left.load(&swanctl::render(&[tweak(pair_conn(
        "203.0.113.1",
        "203.0.113.2",
        "10.1.0.0/24",
        "10.2.0.0/24",
    ))]))?;
    right.load(&swanctl::render(&[tweak(pair_conn(
        "203.0.113.2",
        "203.0.113.1",
        "10.2.0.0/24",
        "10.1.0.0/24",
    ))]))?;
    left.initiate("net")?;
    left.wait_established("gw", WAIT)?;
    right.wait_established("gw", WAIT)?;
    Ok(SwanPair {
        left,
        right,
        a,
        b,
        workdir,
    })
}

#[test]
fn netns_and_processes_are_cleaned_up_when_the_body_panics() {
    let seen: Mutex<(Vec<String>, Vec<u32>, Option<std::path::PathBuf>)> =
        Mutex::new((Vec::new(), Vec::new(), None));
    let mut stray = None;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let workdir = Workdir::new("panic").unwrap();
        let a = Netns::new("pa").unwrap();
        let b = Netns::new("pb").unwrap();
        veth(&a, "x0", &b, "y0").unwrap();
        a.addr_add("x0", "203.0.113.9/24").unwrap();
        let guarded = a.spawn(&["sleep", "300"], workdir.path(), "sleep").unwrap();
        // Not owned by any guard: the namespace's Drop must kill it.
        stray = Some(a.command("sleep").arg("301").spawn().unwrap());
        let child = stray.as_ref().unwrap();
        {
            let mut s = seen.lock().unwrap();
            s.0 = vec![a.name().to_owned(), b.name().to_owned()];
            s.1 = vec![guarded.pid(), child.id()];
            s.2 = Some(workdir.path().to_owned());
        }
        assert!(list_netns().unwrap().contains(&a.name().to_owned()));
        // `ip netns exec` enters the namespace just after it starts.
        lab::wait_until(Duration::from_secs(5), "both sleeps inside", || {
            Ok((a.pids()?.len() == 2).then_some(()))
        })
        .unwrap();
        panic!("the test body fails");
    }));
    assert!(result.is_err());
    let (names, pids, dir) = seen.into_inner().unwrap();
    let left = list_netns().unwrap();
    for n in &names {
        assert!(!left.contains(n), "namespace {n} left behind");
    }
    // The stray was killed by the namespace's Drop; reap it (it is our child).
    let status = lab::cmd::wait_until(Duration::from_secs(5), "stray sleep reaped", || {
        Ok(stray.as_mut().unwrap().try_wait()?)
    })
    .unwrap();
    assert!(!status.success());
    for pid in pids {
        assert!(!alive(pid), "pid {pid} still alive");
    }
    // A panicking test keeps its work directory for diagnosis; this one we remove.
    let dir = dir.unwrap();
    assert!(dir.exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn process_guard_kills_stubborn_children_and_keeps_their_output() {
    let workdir = Workdir::new("proc").unwrap();
    let ns = Netns::new("proc").unwrap();
    let mut talker = ns
        .spawn(
            &["sh", "-c", "echo to-stdout; echo to-stderr >&2"],
            workdir.path(),
            "talker",
        )
        .unwrap();
    assert!(talker.wait_exit(Duration::from_secs(5)).unwrap().success());
    let tail = talker.log_tail(5);
    assert!(
        tail.contains("to-stdout") && tail.contains("to-stderr"),
        "{tail}"
    );

    // Ignores SIGTERM: Drop must fall back to SIGKILL after the grace period.
    let stubborn = ns
        .spawn(
            &["sh", "-c", "trap '' TERM; echo ready; exec sleep 300"],
            workdir.path(),
            "stubborn",
        )
        .unwrap();
    let pid = stubborn.pid();
    lab::wait_until(Duration::from_secs(5), "SIGTERM ignored", || {
        Ok(stubborn.stdout().contains("ready").then_some(()))
    })
    .unwrap();
    let start = Instant::now();
    drop(stubborn);
    assert!(start.elapsed() >= lab::process::TERM_GRACE);
    assert!(!alive(pid));
    assert!(ns.pids().unwrap().is_empty());
}

#[test]
fn run_in_binds_sockets_inside_the_namespace() {
    let a = Netns::new("ra").unwrap();
    let b = Netns::new("rb").unwrap();
    veth(&a, "v0", &b, "v0").unwrap();
    a.addr_add("v0", "203.0.113.21/24").unwrap();
    b.addr_add("v0", "203.0.113.22/24").unwrap();
    // The address exists only inside `b`: binding it outside fails.
    assert!(std::net::UdpSocket::bind("203.0.113.22:0").is_err());
    let server = b
        .run_in(|| std::net::UdpSocket::bind("203.0.113.22:0"))
        .unwrap()
        .unwrap();
    let port = server.local_addr().unwrap().port();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (n, from) = server.recv_from(&mut buf).unwrap();
        server.send_to(&buf[..n], from).unwrap();
    });
    let reply = a
        .spawn_thread(move || {
            let s = std::net::UdpSocket::bind("203.0.113.21:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.send_to(b"hello", ("203.0.113.22", port)).unwrap();
            let mut buf = [0u8; 64];
            let n = s.recv(&mut buf).unwrap();
            buf[..n].to_vec()
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    echo.join().unwrap();
    assert_eq!(reply, b"hello");
    // Threads started from inside inherit the namespace (a runtime built there, with its
    // worker threads, lives entirely in it).
    let nested = b
        .run_in(|| {
            std::thread::spawn(|| std::net::UdpSocket::bind("203.0.113.22:0").is_ok())
                .join()
                .unwrap()
        })
        .unwrap();
    assert!(nested);
}

#[test]
fn strongswan_pair_establishes_and_passes_ping() {
    let p = swan_pair("swan").unwrap();
    let sa = p.left.sa("gw").unwrap().expect("IKE SA on the initiator");
    assert_eq!(sa.version, 2);
    assert_eq!(sa.state, "ESTABLISHED");
    assert!(sa.initiator);
    assert_eq!(sa.dh_group, "MODP_1024");
    assert_eq!(sa.remote_host, "203.0.113.2");
    let child = sa.child("net").expect("CHILD_SA net");
    assert_eq!(child.state, "INSTALLED");
    assert_eq!(child.local_ts, vec!["10.1.0.0/24"]);
    assert_eq!(child.remote_ts, vec!["10.2.0.0/24"]);
    assert_eq!(child.spi_in.len(), 8);

    let r = ping(&p.a, "10.1.0.1", "10.2.0.1", 3, Duration::from_secs(5)).unwrap();
    assert_eq!((r.sent, r.received), (3, 3), "{r:?}");
    assert_eq!(r.rtts.len(), 3);

    // The replies went through the tunnel: the responder counted them.
    let right = p.right.sa("gw").unwrap().unwrap();
    let rchild = right.child("net").unwrap();
    assert!(
        rchild.packets_in >= 3 && rchild.packets_out >= 3,
        "{rchild:?}"
    );
    assert_eq!(rchild.spi_in, child.spi_out);

    p.left.terminate_ike("gw").unwrap();
    p.right
        .wait_sa(WAIT, "IKE SA deleted on the responder", |sas| {
            sas.is_empty().then_some(())
        })
        .unwrap();
    let r = ping(&p.a, "10.1.0.1", "10.2.0.1", 1, Duration::from_secs(2)).unwrap();
    assert_eq!(r.received, 0, "no tunnel, no reply");
    assert!(!p.left.log_tail(50).is_empty());
    drop(p.workdir);
}

#[test]
fn swanctl_builder_options_ikev1_aggressive_with_dpd_and_lifetimes() {
    // Every option of the builder, accepted by strongSwan; the responder accepts
    // aggressive mode with a PSK thanks to the lab's strongswan.conf.
    let p = swan_pair_with("ikev1", |c| {
        let mut c = SwanctlConn {
            version: 1,
            aggressive: true,
            encap: true,
            dpd_delay: Some(10),
            dpd_timeout: Some(30),
            rekey_time: Some(3600),
            over_time: Some(360),
            keyingtries: Some(0),
            mobike: Some(false),
            proposals: vec!["3des-sha1-modp1536".into()],
            ..c
        };
        for ch in &mut c.children {
            ch.esp_proposals = vec!["aes128-sha1-modp1536".into()];
            ch.start_action = Some("none".into());
            ch.dpd_action = Some("restart".into());
            ch.close_action = Some("none".into());
            ch.rekey_time = Some(1200);
            ch.life_time = Some(1500);
            ch.priority = Some(1);
        }
        c
    })
    .unwrap();
    let sa = p.left.sa("gw").unwrap().unwrap();
    assert_eq!(sa.version, 1);
    assert_eq!(sa.encr_alg, "3DES_CBC");
    assert_eq!(sa.dh_group, "MODP_1536");
    let child = sa.child("net").unwrap();
    assert_eq!(child.dh_group, "MODP_1536", "PFS group of the CHILD_SA");
    assert!(
        p.left.log_tail(500).contains("Aggressive Mode"),
        "{}",
        p.left.log_tail(40)
    );
    let r = ping(&p.a, "10.1.0.1", "10.2.0.1", 2, Duration::from_secs(5)).unwrap();
    assert_eq!(r.received, 2, "{r:?}");
}

#[test]
fn iperf3_through_strongswan_tunnel_moves_10_mb() {
    const MOVED: u64 = 10 * 1024 * 1024;
    // iperf3's receiver stops counting when the sender has written its last byte; what
    // is still in socket buffers then (at most tcp_wmem + tcp_rmem maxima, 10 MiB on
    // Debian) is not counted. Send enough that 10 MiB are counted in any case.
    const SEND: u64 = 20 * 1024 * 1024;
    let p = swan_pair("iperf").unwrap();
    let _server = Iperf3Server::start(&p.b, p.workdir.path(), "10.2.0.1", 5201).unwrap();
    let r = iperf3_client(
        &p.a,
        "10.1.0.1",
        "10.2.0.1",
        5201,
        SEND,
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(r.bytes_sent >= SEND, "{r:?}");
    assert!(r.bytes_received >= MOVED, "{r:?}");
    assert!(r.bits_per_second > 0.0, "{r:?}");
    // And the responder's CHILD_SA counted it coming in through the tunnel.
    p.right
        .wait_sa(WAIT, "10 MiB received by the responder's CHILD_SA", |sas| {
            let child = sas.first()?.child("net")?;
            (child.bytes_in >= MOVED).then_some(())
        })
        .unwrap();
    eprintln!(
        "iperf3 through the tunnel: {:.0} Mbit/s",
        r.bits_per_second / 1e6
    );
}

/// strongSwan in `gw` (responder on 192.0.2.1, VPC 172.16.1.0/24) and in `onprem`
/// (initiator, 10.2.0.0/24), configured for `topo`.
fn topology_peers(topo: &Topology) -> lab::Result<(StrongSwan, StrongSwan)> {
    let gw = StrongSwan::start(&topo.gw, &topo.workdir.subdir("gw-swan")?)?;
    let onprem = StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan")?)?;
    let gw_ip = topo.gw_public_ip(0).unwrap_or("192.0.2.1");
    gw.load(&swanctl::render(&[SwanctlConn {
        remote_id: Some("onprem.example".into()),
        ..pair_conn(gw_ip, "%any", "172.16.1.0/24", "10.2.0.0/24")
    }]))?;
    onprem.load(&swanctl::render(&[SwanctlConn {
        local_id: Some("onprem.example".into()),
        ..pair_conn(
            topo.onprem_local_ip(),
            gw_ip,
            "10.2.0.0/24",
            "172.16.1.0/24",
        )
    }]))?;
    onprem.initiate("net")?;
    onprem.wait_established("gw", WAIT)?;
    gw.wait_established("gw", WAIT)?;
    Ok((gw, onprem))
}

#[test]
fn topology_with_nat_carries_vpc_traffic_through_strongswan() {
    let topo = Topology::build(TopologyConfig::with_nat()).unwrap();
    // The routed "internet" works before any IPsec: gw's public address reaches the
    // NAT's, and onprem reaches the gateway through the NAT. (The VPC is private: only
    // the tunnel will connect it.)
    let gw_ip = topo.gw_public_ip(0).unwrap();
    wait_ping(&topo.gw, gw_ip, topo.onprem_public_ip(), WAIT).unwrap();
    wait_ping(&topo.onprem, topo.onprem_local_ip(), gw_ip, WAIT).unwrap();
    let (gw, onprem) = topology_peers(&topo).unwrap();

    let o = onprem.sa("gw").unwrap().unwrap();
    assert_eq!(o.local_host, "172.31.0.2");
    assert!(o.nat_local, "onprem must detect its NAT: {o:?}");
    let g = gw.sa("gw").unwrap().unwrap();
    assert_eq!(g.remote_host, "198.51.100.1", "gw sees the NAT's address");
    assert_eq!(g.remote_id, "onprem.example");
    assert!(g.nat_remote);
    assert_eq!(g.local_port, 4500, "NAT-T moved IKE to UDP 4500");
    let child = g.child("net").unwrap();
    assert!(child.encap, "ESP in UDP: {child:?}");

    let r = ping(
        &topo.vpc,
        topo.vpc_ip(),
        "10.2.0.1",
        3,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.received, 3, "{r:?}");
    let child = gw.sa("gw").unwrap().unwrap().child("net").cloned().unwrap();
    assert!(child.packets_out >= 3 && child.packets_in >= 3, "{child:?}");
    drop((gw, onprem));
}

#[test]
fn blocking_ipsec_at_the_router_shows_as_ping_loss() {
    let topo = Topology::new().unwrap();
    let (_gw, _onprem) = topology_peers(&topo).unwrap();
    wait_ping(&topo.vpc, topo.vpc_ip(), "10.2.0.1", WAIT).unwrap();

    let interval = Duration::from_millis(50);
    let monitor = PingMonitor::start(
        &topo.vpc,
        topo.workdir.path(),
        topo.vpc_ip(),
        "10.2.0.1",
        interval,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    nft::drop_ipsec_from(&topo.inet, topo.onprem_public_ip()).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    nft::restore_ipsec_from(&topo.inet, topo.onprem_public_ip()).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let report = monitor.stop().unwrap();

    assert!(report.sent >= 30, "{report:?}");
    let longest = report.longest_loss();
    assert!(
        longest >= Duration::from_millis(700) && longest <= Duration::from_millis(1500),
        "{report:?}"
    );
    assert!(report.losses.len() <= 2, "{report:?}");
    // Traffic came back after the restore.
    let last = report.losses.last().unwrap();
    assert!(last.last_seq + 5 < report.sent, "{report:?}");

    nft::drop_ipsec_to(&topo.inet, topo.onprem_public_ip()).unwrap();
    let r = ping(
        &topo.vpc,
        topo.vpc_ip(),
        "10.2.0.1",
        2,
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(r.received, 0);
    nft::restore_ipsec_to(&topo.inet, topo.onprem_public_ip()).unwrap();
    wait_ping(&topo.vpc, topo.vpc_ip(), "10.2.0.1", WAIT).unwrap();
}

#[test]
fn frr_pair_establishes_bgp_and_exchanges_routes() {
    let workdir = Workdir::new("frr").unwrap();
    let a = Netns::new("bgpa").unwrap();
    let b = Netns::new("bgpb").unwrap();
    veth(&a, "v0", &b, "v0").unwrap();
    a.addr_add("v0", "203.0.113.31/24").unwrap();
    b.addr_add("v0", "203.0.113.32/24").unwrap();
    let fa = Frr::start(
        &a,
        &workdir.subdir("a").unwrap(),
        &BgpConfig::new(65001, "203.0.113.31")
            .neighbor("203.0.113.32", 65002)
            .network("10.1.0.0/24")
            .render(),
    )
    .unwrap();
    let fb = Frr::start(
        &b,
        &workdir.subdir("b").unwrap(),
        &BgpConfig::new(65002, "203.0.113.32")
            .neighbor("203.0.113.31", 65001)
            .network("10.2.0.0/24")
            .render(),
    )
    .unwrap();
    fa.wait_bgp_established("203.0.113.32", WAIT).unwrap();
    fb.wait_bgp_established("203.0.113.31", WAIT).unwrap();
    fb.wait_prefix("10.1.0.0/24", WAIT).unwrap();
    fa.wait_prefix("10.2.0.0/24", WAIT).unwrap();

    // A route originated at run time through vtysh reaches the peer too.
    fa.vtysh_lines(&[
        "configure terminal",
        "router bgp 65001",
        "address-family ipv4 unicast",
        "network 10.11.0.0/24",
    ])
    .unwrap();
    fb.wait_prefix("10.11.0.0/24", WAIT).unwrap();
    let pids = [fa.pid(), fb.pid()];
    drop((fa, fb));
    for pid in pids {
        assert!(!alive(pid));
    }
}

#[test]
fn guarded_process_output_lives_in_the_workdir() {
    let workdir = Workdir::new("out").unwrap();
    let mut cmd = std::process::Command::new("echo");
    cmd.arg("hello");
    let mut p = Process::spawn(cmd, workdir.path(), "echo").unwrap();
    p.wait_exit(Duration::from_secs(5)).unwrap();
    assert!(p.stdout_path().starts_with(workdir.path()));
    assert_eq!(p.stdout(), "hello\n");
}
