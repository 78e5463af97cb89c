//! Data-path throughput and latency: the lab's `vpc — gw — inet — onprem` with a
//! different pair of IPsec ends each time, iperf3 and ping from the VPC host to the
//! on-premises network (10.2.0.1).
//!
//! Every (setup, suite) gets a fresh topology and fresh daemons, so nothing one run
//! leaves behind (TUN devices, routes, SAs) can affect the next.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use lab::{Iperf3Server, SwanctlChild, SwanctlConn, Topology, swanctl};

use crate::charon::Charon;

use crate::measure::{iperf3_tcp, iperf3_udp, ping};
use crate::report::{PathMetrics, Setup, TcpRun};
use crate::vpngw::{ConnSpec, Crypto, Ike, Launch, Serve};

pub const PSK: &str = "labbench-psk-4Vq";
const GW: &str = "192.0.2.1";
const ONPREM: &str = "198.51.100.1";
const VPC_NET: &str = "172.16.1.0/24";
const ONPREM_NET: &str = "10.2.0.0/24";
const ONPREM_HOST: &str = "10.2.0.1";
const IPERF_PORT: u16 = 5201;
/// Bound on `swanctl --load-all` of one connection.
const LOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// One algorithm suite in both products' terms.
#[derive(Debug, Clone, Copy)]
pub struct Suite {
    pub name: &'static str,
    /// swanctl `proposals`.
    pub swan_ike: &'static str,
    /// swanctl `esp_proposals` (the DH group is PFS for rekeys, as in vpngw's default).
    pub swan_esp: &'static str,
    pub vpngw: Crypto,
}

pub const SUITES: [Suite; 3] = [
    Suite {
        name: "aes128-sha1",
        swan_ike: "aes128-sha1-modp1024",
        swan_esp: "aes128-sha1-modp1024",
        vpngw: Crypto {
            ike_encryption: "aes",
            ike_integrity: "sha1",
            ipsec_encryption: "aes",
            ipsec_integrity: "sha1",
        },
    },
    Suite {
        name: "aes256-sha256",
        swan_ike: "aes256-sha256-modp1024",
        swan_esp: "aes256-sha256-modp1024",
        vpngw: Crypto {
            ike_encryption: "aes256",
            ike_integrity: "sha256",
            ipsec_encryption: "aes256",
            ipsec_integrity: "sha256",
        },
    },
    Suite {
        name: "aes-gcm-128",
        swan_ike: "aes128gcm16-prfsha256-modp1024",
        swan_esp: "aes128gcm16-modp1024",
        vpngw: Crypto {
            ike_encryption: "aes-gcm-128",
            ike_integrity: "sha256",
            ipsec_encryption: "aes-gcm-128",
            ipsec_integrity: "sha256",
        },
    },
];

/// The CPUs the two gateways' daemons are confined to (`--pin`): the one in `gw` and
/// the one in `onprem`, each on a core of its own as if on two one-core machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    pub gw: usize,
    pub onprem: usize,
}

/// How long each measurement runs.
#[derive(Debug, Clone, Copy)]
pub struct Durations {
    pub iperf_secs: u32,
    /// iperf3 TCP runs per path, back to back on the same tunnel (at least 1).
    pub tcp_repeat: u32,
    pub pings: u32,
}

/// Builds `setup` with `suite` (ignored for the plain path), measures, tears down.
pub fn measure(
    setup: Setup,
    suite: &Suite,
    d: Durations,
    congestion_control: &str,
    pin: Option<Pin>,
    vpngw_bin: &Path,
) -> Result<PathMetrics> {
    let (gw_cpu, onprem_cpu) = (pin.map(|p| p.gw), pin.map(|p| p.onprem));
    let topo = Topology::new().context("building the lab topology")?;
    let dir = topo.workdir.path().to_owned();
    // Declared after the topology: dropped (stopped) before the namespaces go.
    let mut daemons = Daemons::default();
    match setup {
        Setup::Plain => plain_routes(&topo)?,
        Setup::SwanSwan => {
            let mut gw = Charon::start(&topo.gw, &topo.workdir.subdir("gw-swan")?, gw_cpu)?;
            let onprem = Charon::start(
                &topo.onprem,
                &topo.workdir.subdir("onprem-swan")?,
                onprem_cpu,
            )?;
            gw.load(
                &swanctl::render(&[swan_conn(suite, GW, ONPREM, VPC_NET, ONPREM_NET)]),
                LOAD_TIMEOUT,
            )?;
            onprem.load(
                &swanctl::render(&[swan_conn(suite, ONPREM, GW, ONPREM_NET, VPC_NET)]),
                LOAD_TIMEOUT,
            )?;
            gw.initiate("net")?;
            gw.wait_installed(Duration::from_secs(30))?;
            daemons.swans.extend([gw, onprem]);
        }
        Setup::VpngwSwan => {
            let onprem = Charon::start(
                &topo.onprem,
                &topo.workdir.subdir("onprem-swan")?,
                onprem_cpu,
            )?;
            // Destination routing mode: 0.0.0.0/0 selectors, as the product documents.
            onprem.load(
                &swanctl::render(&[swan_conn(suite, ONPREM, GW, "0.0.0.0/0", "0.0.0.0/0")]),
                LOAD_TIMEOUT,
            )?;
            daemons.swans.push(onprem);
            let gw = vpngw_side(&topo, &dir, vpngw_bin, suite, (Side::Gw, gw_cpu), true)?;
            daemons.serves.push(gw);
        }
        Setup::VpngwVpngw => {
            // The on-premises vpngw answers; the gateway initiates.
            let onprem = vpngw_side(
                &topo,
                &dir,
                vpngw_bin,
                suite,
                (Side::Onprem, onprem_cpu),
                false,
            )?;
            daemons.serves.push(onprem);
            let gw = vpngw_side(&topo, &dir, vpngw_bin, suite, (Side::Gw, gw_cpu), true)?;
            daemons.serves.push(gw);
        }
    }
    let vpc = topo.vpc_ip().to_string();
    lab::wait_ping(&topo.vpc, &vpc, ONPREM_HOST, Duration::from_secs(30))
        .context("first ping through the path")?;
    let _server = Iperf3Server::start(&topo.onprem, &dir, ONPREM_HOST, IPERF_PORT)?;
    // Same tunnel and daemons for every run: what varies between runs is where the
    // kernel puts the threads, which is what the median and range describe. A failed
    // run fails the row, as a single run did: a partial median would hide it.
    let mut tcp = Vec::new();
    for i in 1..=d.tcp_repeat.max(1) {
        let (bps, retransmits) = iperf3_tcp(
            &topo.vpc,
            &dir,
            (&vpc, ONPREM_HOST, IPERF_PORT),
            d.iperf_secs,
            congestion_control,
        )
        .with_context(|| format!("TCP run {i} of {}", d.tcp_repeat.max(1)))?;
        tcp.push(TcpRun { bps, retransmits });
    }
    let ping = ping(&topo.vpc, &dir, &vpc, ONPREM_HOST, d.pings)?;
    // Last: a UDP flood can wedge iperf3's own control connection through a saturated
    // tunnel; then only the UDP figure is lost.
    let udp = iperf3_udp(&topo.vpc, &dir, &vpc, ONPREM_HOST, IPERF_PORT, d.iperf_secs)
        .map_err(|e| format!("{e:#}"));
    for s in &mut daemons.serves {
        // A vpngw that crashed under load must not pass as a measurement.
        s.ensure_running()?;
    }
    Ok(PathMetrics { tcp, udp, ping })
}

#[derive(Default)]
struct Daemons {
    swans: Vec<Charon>,
    serves: Vec<Serve>,
}

/// Without IPsec the router in the middle needs routes to both private networks.
fn plain_routes(topo: &Topology) -> Result<()> {
    topo.inet.route_add(VPC_NET, GW)?;
    topo.inet.route_add(ONPREM_NET, ONPREM)?;
    Ok(())
}

fn swan_conn(suite: &Suite, local: &str, remote: &str, lts: &str, rts: &str) -> SwanctlConn {
    SwanctlConn {
        proposals: vec![suite.swan_ike.into()],
        ..SwanctlConn::psk("bench", local, remote, PSK)
    }
    .child(SwanctlChild {
        esp_proposals: vec![suite.swan_esp.into()],
        ..SwanctlChild::new("net", lts, rts)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Gw,
    Onprem,
}

/// Starts `vpngw serve` on one side and configures a single-tunnel connection to the
/// other side over the API; with `initiate`, waits until the tunnel is up.
fn vpngw_side(
    topo: &Topology,
    dir: &Path,
    bin: &Path,
    suite: &Suite,
    (side, cpu): (Side, Option<usize>),
    initiate: bool,
) -> Result<Serve> {
    let (ns, own, peer, local_net, remote_net, port, label) = match side {
        Side::Gw => (
            &topo.gw,
            GW,
            ONPREM,
            "172.16.0.0/16",
            ONPREM_NET,
            9281,
            "vpngw-gw",
        ),
        Side::Onprem => (
            &topo.onprem,
            ONPREM,
            GW,
            ONPREM_NET,
            VPC_NET,
            9282,
            "vpngw-onprem",
        ),
    };
    let data = topo.workdir.subdir(&format!("{label}-data"))?;
    let serve = Serve::start(
        ns,
        bin,
        &data,
        dir,
        Launch {
            port,
            node: true,
            label,
            cpu,
        },
    )?;
    let gw = serve.gateway(ns, own, &[local_net])?;
    let cgw = serve.customer_gateway(ns, peer)?;
    let conn = serve.with_client(ns, |c| {
        let conn = c.connection(&ConnSpec {
            name: "bench",
            gateway: &gw,
            customer_gateway: &cgw,
            psk: PSK,
            crypto: suite.vpngw,
            local_id: None,
            remote_id: None,
            ike: Ike::V2,
            effective_immediately: initiate,
        })?;
        c.route(&gw, remote_net, &conn)?;
        Ok(conn)
    })?;
    if initiate {
        serve
            .wait_established(ns, &conn, Duration::from_secs(30))
            .with_context(|| format!("{label}: {}", serve.log_tail(10)))?;
    }
    Ok(serve)
}
