//! Interop: our `Session` over a real TCP connection against a real FRR
//! bgpd (the documented on-premises peer), each in its own network
//! namespace joined by a veth carrying the tunnel's /30.
//!
//! Needs root and FRR (`scripts/test` installs it). Everything is torn down
//! on Drop (bgpd by pid, namespaces deleted), every wait is bounded.

// Test helpers outside #[test] fns are not covered by allow-unwrap-in-tests.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use bgp::{Config, DownReason, Event, Ipv4Net, Mode, PeerId, PeerInfo, Rib, RibConfig, Session};
use lab::{BgpConfig, Frr, Netns, Workdir, veth};

const GW: Ipv4Addr = Ipv4Addr::new(169, 254, 10, 2);
const ONPREM: Ipv4Addr = Ipv4Addr::new(169, 254, 10, 1);
const WAIT: Duration = Duration::from_secs(40);

/// Two namespaces joined by a veth carrying the tunnel's /30, FRR in
/// `onprem`. Fields drop in order: bgpd first, then the namespaces, then
/// the work directory (kept with the logs if the test failed).
struct Lab {
    frr: Frr,
    gw: Netns,
    onprem: Netns,
    _workdir: Workdir,
}

impl Lab {
    /// FRR as documented: `router bgp 65530`, `neighbor 169.254.10.2
    /// remote-as <our_asn>`, `timers 10 30`, `network 10.1.0.0/24`.
    fn new(name: &str, our_asn: u32) -> Lab {
        let workdir = Workdir::new(name).unwrap();
        let gw = Netns::new("bgpgw").unwrap();
        let onprem = Netns::new("bgpop").unwrap();
        veth(&gw, "tun1", &onprem, "tun1").unwrap();
        gw.addr_add("tun1", "169.254.10.2/30").unwrap();
        onprem.addr_add("tun1", "169.254.10.1/30").unwrap();
        let config = BgpConfig::new(65530, "169.254.10.1")
            .neighbor("169.254.10.2", our_asn)
            .network("10.1.0.0/24");
        let frr = Frr::start(&onprem, &workdir.subdir("frr").unwrap(), &config.render()).unwrap();
        Lab {
            frr,
            gw,
            onprem,
            _workdir: workdir,
        }
    }

    fn driver(&self, config: Config) -> Driver {
        let (cmd_tx, cmd_rx) = channel();
        let (ev_tx, ev_rx) = channel();
        let session = Session::new(config);
        let thread = self
            .gw
            .spawn_thread(move || drive(session, cmd_rx, ev_tx))
            .unwrap();
        Driver {
            cmds: cmd_tx,
            events: ev_rx,
            thread: Some(thread),
        }
    }
}

enum Cmd {
    Advertise(Vec<Ipv4Net>),
    Withdraw(Vec<Ipv4Net>),
    Stop,
}

/// Stops the driver thread when the test ends, even by panic.
struct Driver {
    cmds: Sender<Cmd>,
    events: Receiver<Event>,
    thread: Option<std::thread::JoinHandle<lab::Result<()>>>,
}

impl Driver {
    /// Waits for the first event `pick` accepts, skipping others.
    fn wait_for<T>(&self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        #[allow(clippy::disallowed_methods)]
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            #[allow(clippy::disallowed_methods)]
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ev) => {
                    if let Some(v) = pick(&ev) {
                        return v;
                    }
                    seen.push(ev);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!("timed out waiting for {what}; events seen: {seen:#?}")
                }
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            // The loop polls its command channel every 50 ms.
            for _ in 0..100 {
                if t.is_finished() {
                    let _ = t.join();
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The node's job, in miniature: one blocking TCP socket with a short read
/// timeout, the engine's timers from `poll_timeout`.
#[allow(clippy::disallowed_methods)]
fn drive(mut s: Session, cmds: Receiver<Cmd>, events: Sender<Event>) {
    let mut tcp: Option<TcpStream> = None;
    let mut buf = [0u8; 4096];
    // Passive mode: listen on our tunnel address, accept only the peer.
    let listener = (s.config().mode == Mode::Passive).then(|| {
        let l = TcpListener::bind((s.config().local_addr, 179)).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    });
    s.start(Instant::now());
    loop {
        let now = Instant::now();
        if let Some(Ok((t, from))) = listener.as_ref().map(TcpListener::accept)
            && tcp.is_none()
            && s.wants_connection()
            && from.ip() == s.config().peer_addr
        {
            t.set_nonblocking(false).unwrap();
            t.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            tcp = Some(t);
            s.handle_connected(now);
        }
        // Otherwise `t` drops here: connection closed.
        match cmds.try_recv() {
            Ok(Cmd::Advertise(p)) => s.advertise(now, &p),
            Ok(Cmd::Withdraw(p)) => s.withdraw(now, &p),
            Ok(Cmd::Stop) | Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                s.stop(now);
                if let (Some(t), Some(bytes)) = (tcp.as_mut(), s.poll_transmit()) {
                    let _ = t.write_all(&bytes);
                }
                return;
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        if let Some(t) = tcp.as_mut() {
            match t.read(&mut buf) {
                Ok(0) => {
                    tcp = None;
                    s.handle_closed(Instant::now());
                }
                Ok(n) => s.handle_bytes(Instant::now(), &buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => {
                    tcp = None;
                    s.handle_closed(Instant::now());
                }
            }
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
        if s.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            s.handle_timeout(Instant::now());
        }
        // Transmit first, then events (so a NOTIFICATION precedes Close).
        while let Some(bytes) = s.poll_transmit() {
            if let Some(t) = tcp.as_mut()
                && t.write_all(&bytes).is_err()
            {
                tcp = None;
                s.handle_closed(Instant::now());
            }
        }
        while let Some(ev) = s.poll_event() {
            match &ev {
                Event::Connect => {
                    let addr = SocketAddr::from((s.config().peer_addr, 179));
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                        Ok(t) => {
                            t.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                            t.set_nodelay(true).unwrap();
                            tcp = Some(t);
                            s.handle_connected(Instant::now());
                        }
                        Err(_) => s.handle_closed(Instant::now()),
                    }
                }
                Event::Close => tcp = None,
                _ => {}
            }
            if events.send(ev).is_err() {
                return;
            }
        }
    }
}

#[test]
fn frr_establishes_and_exchanges_routes() {
    let lab = Lab::new("bgp-frr", 45104);
    let frr = &lab.frr;
    let d = lab.driver(Config::new(GW, ONPREM, 65530));
    d.cmds
        .send(Cmd::Advertise(vec!["10.0.0.0/16".parse().unwrap()]))
        .unwrap();

    let (peer_asn, hold_time) = d.wait_for("Established", |e| match e {
        Event::Established {
            peer_asn,
            hold_time,
            ..
        } => Some((*peer_asn, *hold_time)),
        _ => None,
    });
    assert_eq!((peer_asn, hold_time), (65530, 30));
    frr.wait_bgp_established("169.254.10.2", WAIT).unwrap();

    // FRR's `network` route reaches us with FRR's AS and next hop, into a
    // Loc-RIB as the node would feed it. FRR also sends our own route back
    // (AS_PATH 65530 45104): loop detection keeps it out of the Loc-RIB.
    let mut rib = Rib::new(RibConfig::new(45104));
    let peer = PeerId(1);
    rib.set_peer(
        peer,
        PeerInfo {
            asn: 65530,
            router_id: ONPREM,
            addr: ONPREM,
            ebgp: true,
            local_pref: None,
        },
    );
    let mut looped = None;
    let frr_net: Ipv4Net = "10.1.0.0/24".parse().unwrap();
    let ours: Ipv4Net = "10.0.0.0/16".parse().unwrap();
    d.wait_for("FRR's route and our own looped back", |e| {
        if let Event::RoutesChanged(c) = e {
            for (p, a) in &c.announced {
                if *p == ours {
                    looped = Some(a.clone());
                }
            }
            rib.apply(peer, c);
        }
        (rib.selected(&frr_net).is_some() && looped.is_some()).then_some(())
    });
    let best = rib.selected(&frr_net).unwrap().best().unwrap().clone();
    assert_eq!(best.next_hop, ONPREM);
    assert_eq!(best.attrs.as_path.as_ref().unwrap().to_string(), "65530");
    assert_eq!(
        looped.unwrap().as_path.as_ref().unwrap().to_string(),
        "65530 45104"
    );
    assert!(
        rib.selected(&ours).is_none(),
        "AS-path loop must be excluded"
    );

    // Ours is in FRR's table with our AS path.
    frr.wait_prefix("10.0.0.0/16", WAIT).unwrap();
    let table = frr.vtysh("show bgp ipv4 unicast").unwrap();
    let line = table
        .lines()
        .find(|l| l.contains("10.0.0.0/16"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("169.254.10.2") && line.contains("45104"),
        "{table}"
    );

    // Withdrawals both ways.
    d.cmds
        .send(Cmd::Withdraw(vec!["10.0.0.0/16".parse().unwrap()]))
        .unwrap();
    lab::wait_until(WAIT, "10.0.0.0/16 withdrawn from FRR", || {
        Ok((!frr.bgp_prefixes()?.iter().any(|p| p == "10.0.0.0/16")).then_some(()))
    })
    .unwrap();
    frr.vtysh_lines(&[
        "configure terminal",
        "router bgp 65530",
        "address-family ipv4 unicast",
        "no network 10.1.0.0/24",
    ])
    .unwrap();
    d.wait_for("FRR's withdrawal", |e| match e {
        Event::RoutesChanged(c) => {
            let diff = rib.apply(peer, c);
            diff.removed.contains(&frr_net).then_some(())
        }
        _ => None,
    });
    assert!(rib.iter().next().is_none());

    // An administrative shutdown on FRR's side: Down with FRR's message.
    frr.vtysh_lines(&[
        "configure terminal",
        "router bgp 65530",
        "neighbor 169.254.10.2 shutdown message maintenance",
    ])
    .unwrap();
    let reason = d.wait_for("Down", |e| match e {
        Event::Down { reason } => Some(reason.clone()),
        _ => None,
    });
    let DownReason::NotificationReceived(n) = &reason else {
        panic!("{reason:?}")
    };
    assert_eq!((n.code, n.subcode), (6, 2));
    assert_eq!(n.shutdown_message(), Some("maintenance"));
    assert!(reason.to_string().contains("maintenance"), "{reason}");

    // And back: the session re-establishes by itself.
    frr.vtysh_lines(&[
        "configure terminal",
        "router bgp 65530",
        "no neighbor 169.254.10.2 shutdown",
    ])
    .unwrap();
    d.wait_for("Established again", |e| {
        matches!(e, Event::Established { .. }).then_some(())
    });
    frr.wait_bgp_established("169.254.10.2", WAIT).unwrap();
}

#[test]
fn frr_connects_to_a_passive_gateway_with_a_4_octet_asn() {
    const ASN: u32 = 4_200_000_001;
    let lab = Lab::new("bgp-frr-passive", ASN);
    let frr = &lab.frr;
    let mut config = Config::new(GW, ONPREM, 65530);
    // We only listen; FRR (`timers connect 1`) connects to us.
    config.mode = Mode::Passive;
    // FRR learns our AS from the 4-octet AS capability; My AS carries
    // AS_TRANS (RFC 6793).
    config.local_asn = ASN;
    let d = lab.driver(config);
    d.cmds
        .send(Cmd::Advertise(vec!["10.0.0.0/16".parse().unwrap()]))
        .unwrap();
    d.wait_for("Established", |e| {
        matches!(e, Event::Established { .. }).then_some(())
    });
    frr.wait_bgp_established("169.254.10.2", WAIT).unwrap();
    d.wait_for("FRR's route", |e| match e {
        Event::RoutesChanged(c) => c
            .announced
            .iter()
            .any(|(p, _)| p.to_string() == "10.1.0.0/24")
            .then_some(()),
        _ => None,
    });
    frr.wait_prefix("10.0.0.0/16", WAIT).unwrap();
    let table = frr.vtysh("show bgp ipv4 unicast 10.0.0.0/16").unwrap();
    assert!(table.contains("4200000001"), "{table}");
    let neighbor = frr.vtysh("show bgp neighbors 169.254.10.2").unwrap();
    assert!(neighbor.contains("remote AS 4200000001"), "{neighbor}");
}

#[test]
fn frr_hold_timer_expires_when_the_tunnel_goes_silent() {
    let lab = Lab::new("bgp-frr-hold", 45104);
    let d = lab.driver(Config::new(GW, ONPREM, 65530));
    d.wait_for("Established", |e| {
        matches!(e, Event::Established { .. }).then_some(())
    });
    d.wait_for("FRR's route", |e| match e {
        Event::RoutesChanged(c) => c
            .announced
            .iter()
            .any(|(p, _)| p.to_string() == "10.1.0.0/24")
            .then_some(()),
        _ => None,
    });
    // The tunnel black-holes BGP: nothing in either direction, no RST.
    lab::nft::nft(
        &lab.onprem,
        "table inet bgpcut {
           chain pre { type filter hook prerouting priority raw; policy accept; tcp sport 179 drop; tcp dport 179 drop; }
           chain out { type filter hook output priority raw; policy accept; tcp sport 179 drop; tcp dport 179 drop; }
         }",
    )
    .unwrap();
    #[allow(clippy::disallowed_methods)]
    let cut = Instant::now();
    let mut withdrawn = false;
    let reason = d.wait_for("Down", |e| match e {
        Event::RoutesChanged(c) => {
            withdrawn |= c.withdrawn.iter().any(|p| p.to_string() == "10.1.0.0/24");
            None
        }
        Event::Down { reason } => Some(reason.clone()),
        _ => None,
    });
    let after = cut.elapsed();
    assert_eq!(reason, DownReason::HoldTimerExpired { hold_time: 30 });
    assert!(
        withdrawn,
        "routes from the dead session must be withdrawn before Down"
    );
    // Hold 30 s after the last KEEPALIVE, which came at most 10 s before.
    assert!(
        after >= Duration::from_secs(19) && after <= Duration::from_secs(32),
        "{after:?}"
    );

    // The tunnel heals: the session comes back by itself.
    lab::nft::nft(&lab.onprem, "delete table inet bgpcut").unwrap();
    d.wait_for("Established again", |e| {
        matches!(e, Event::Established { .. }).then_some(())
    });
    lab.frr.wait_bgp_established("169.254.10.2", WAIT).unwrap();
}
