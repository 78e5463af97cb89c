//! Setup rate and memory: N tunnels from one peer (on-premises, 198.51.100.1) to one
//! gateway (192.0.2.1), one IKE SA + one Child SA each, told apart by the initiator's
//! identity (`t<i>.bench.example`, RFC 7296 §3.5 ID_FQDN). IKEv2; between two vpngw
//! also IKEv1 Main or Aggressive Mode, when asked for (`setup-vpngw-ikev1`,
//! `setup-vpngw-ikev1-aggressive`).
//!
//! The clock starts when the initiator is told to bring every tunnel up at once
//! (strongSwan: `swanctl --load-all` of connections with `start_action = start`; vpngw:
//! starting the node on a store that already holds the N connections with
//! `effective_immediately`) and stops when the responder's log shows the N-th distinct
//! Child SA established. Logs are read from files, so counting costs the daemons nothing.
//! The wait is bounded: it ends after a stall (no new tunnel for [`STALL`]) or a
//! deadline, and the report says how many came up.
//!
//! Memory is the responder's: VmRSS once its configuration is loaded and settled, VmHWM
//! and VmRSS after the wait.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lab::{Netns, SwanctlChild, SwanctlConn, Topology, swanctl};

use crate::charon::Charon;
use crate::measure::{
    LogCounter, Mem, charon_established, check_interrupted, comm, mem, sleep, vpngw_established,
    wait_rss_settled,
};
use crate::paths::{PSK, SUITES};
use crate::report::SetupMetrics;
use crate::vpngw::{ConnSpec, Ike, Launch, Serve};

const GW: &str = "192.0.2.1";
const ONPREM: &str = "198.51.100.1";

/// No new tunnel for this long ends the wait.
const STALL: Duration = Duration::from_secs(45);

/// The identity of tunnel `i` at the initiator.
fn tunnel_id(i: usize) -> String {
    format!("t{i}.bench.example")
}

/// The longest the wait may last for `n` tunnels.
fn deadline(n: usize) -> Duration {
    Duration::from_secs((n as u64 / 25).clamp(60, 400))
}

/// Findings beside the table (API creation rates).
pub type Notes = Vec<String>;

pub fn strongswan(n: usize) -> Result<SetupMetrics> {
    let topo = Topology::new().context("building the lab topology")?;
    let suite = &SUITES[0];
    let responder = Charon::start(&topo.gw, &topo.workdir.subdir("gw-charon")?, None)?;
    let initiator = Charon::start(&topo.onprem, &topo.workdir.subdir("onprem-charon")?, None)?;
    let conns = |responder_side: bool| -> Vec<SwanctlConn> {
        (0..n)
            .map(|i| {
                let id = tunnel_id(i);
                let (local, remote) = if responder_side {
                    (GW, ONPREM)
                } else {
                    (ONPREM, GW)
                };
                SwanctlConn {
                    proposals: vec![suite.swan_ike.into()],
                    local_id: Some(if responder_side {
                        GW.into()
                    } else {
                        id.clone()
                    }),
                    remote_id: Some(if responder_side {
                        id.clone()
                    } else {
                        GW.into()
                    }),
                    ..SwanctlConn::psk(&format!("t{i}"), local, remote, PSK)
                }
                .child(SwanctlChild {
                    esp_proposals: vec![suite.swan_esp.into()],
                    start_action: (!responder_side).then(|| "start".into()),
                    ..SwanctlChild::new("net", "0.0.0.0/0", "0.0.0.0/0")
                })
            })
            .collect()
    };
    let load_timeout = Duration::from_secs(60 + n as u64 / 20);
    responder
        .load(&swanctl::render(&conns(true)), load_timeout)
        .context("loading the responder's connections")?;
    let before = wait_rss_settled(
        responder.pid(),
        Duration::from_secs(2),
        Duration::from_secs(60),
    )?;
    let initiator_text = swanctl::render(&conns(false));
    let mut counter = LogCounter::new(&responder.log_path(), charon_established);
    counter.skip_existing()?;
    let start = Instant::now();
    // With start_action = start, loading is initiating: the clock runs from here.
    initiator
        .load(&initiator_text, load_timeout)
        .context("loading the initiator's connections")?;
    let mut procs = [responder, initiator];
    let (established, seconds, note) = wait_count(n, start, &mut counter, &mut || {
        for c in procs.iter_mut() {
            c.ensure_running()?;
        }
        Ok(())
    })?;
    let [responder, _initiator] = &procs;
    let after = mem(responder.pid())?;
    let listed = responder
        .installed_children(Duration::from_secs(120))
        .map_or_else(
            |e| format!("listing SAs failed: {e}"),
            |c| format!("swanctl lists {c} installed"),
        );
    Ok(metrics(
        established,
        seconds,
        before,
        after,
        join(note, Some(listed)),
    ))
}

/// vpngw → vpngw, every tunnel speaking `ike`. IKEv1 Main Mode names the initiator only
/// in message 5, so the responder binds each negotiation to its first "any" tunnel and
/// moves it to the tunnel of the ID in message 5 (`ike::v1`); Aggressive Mode names it
/// in message 1, and its responder computes the Diffie-Hellman secret on message 1.
pub fn vpngw(n: usize, bin: &Path, ike: Ike, notes: &mut Notes) -> Result<SetupMetrics> {
    let topo = Topology::new().context("building the lab topology")?;
    let dir = topo.workdir.path().to_owned();
    let crypto = SUITES[0].vpngw;
    let r_data = topo.workdir.subdir("responder-data")?;
    let i_data = topo.workdir.subdir("initiator-data")?;

    // Configuration through the API, with the controller only (no node yet): what it
    // costs to create N connections is a finding of its own.
    let r_cfg = Serve::start(
        &topo.gw,
        bin,
        &r_data,
        &dir,
        Launch {
            port: 9281,
            node: false,
            label: "responder-config",
            cpu: None,
        },
    )?;
    let t = Instant::now();
    let r_gw = r_cfg.gateway(&topo.gw, GW, &["172.16.0.0/16"])?;
    // 0.0.0.0: any peer, recognised by its identity (responder only).
    let r_cgw = r_cfg.customer_gateway(&topo.gw, "0.0.0.0")?;
    r_cfg.with_client(&topo.gw, |c| {
        for i in 0..n {
            check_interrupted()?;
            let id = tunnel_id(i);
            c.connection(&ConnSpec {
                name: &format!("t{i}"),
                gateway: &r_gw,
                customer_gateway: &r_cgw,
                psk: PSK,
                crypto,
                local_id: None,
                remote_id: Some(&id),
                effective_immediately: false,
                ike,
            })
            .with_context(|| format!("responder connection {i}"))?;
        }
        Ok(())
    })?;
    notes.push(api_note("responder", n, t.elapsed()));
    r_cfg.stop();

    let i_cfg = Serve::start(
        &topo.onprem,
        bin,
        &i_data,
        &dir,
        Launch {
            port: 9282,
            node: false,
            label: "initiator-config",
            cpu: None,
        },
    )?;
    let t = Instant::now();
    let i_gw = i_cfg.gateway(&topo.onprem, ONPREM, &["10.2.0.0/16"])?;
    let i_cgw = i_cfg.customer_gateway(&topo.onprem, GW)?;
    i_cfg.with_client(&topo.onprem, |c| {
        for i in 0..n {
            check_interrupted()?;
            let id = tunnel_id(i);
            c.connection(&ConnSpec {
                name: &format!("t{i}"),
                gateway: &i_gw,
                customer_gateway: &i_cgw,
                psk: PSK,
                crypto,
                local_id: Some(&id),
                remote_id: None,
                effective_immediately: true,
                ike,
            })
            .with_context(|| format!("initiator connection {i}"))?;
        }
        Ok(())
    })?;
    notes.push(api_note("initiator", n, t.elapsed()));
    i_cfg.stop();

    // The responder with its node: wait until the gateway runs and memory settles (the
    // node has read and applied the N tunnels).
    let mut responder = Serve::start(
        &topo.gw,
        bin,
        &r_data,
        &dir,
        Launch {
            port: 9281,
            node: true,
            label: "responder",
            cpu: None,
        },
    )?;
    // The memory figures are read from this pid: make sure it is the daemon itself,
    // not a wrapper (`ip netns exec`, `taskset`) that started it.
    let want = program_comm(bin);
    if comm(responder.pid()) != want {
        bail!(
            "pid {} is {:?}, not {want:?} (the vpngw binary)",
            responder.pid(),
            comm(responder.pid())
        );
    }
    let t = Instant::now();
    loop {
        check_interrupted()?;
        responder.ensure_running()?;
        let g = responder.get(&topo.gw, &format!("/v1/vpn-gateways/{r_gw}"))?;
        if g["status"] == "running" {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("responder gateway not running after 120 s: {g}");
        }
        sleep(Duration::from_millis(200))?;
    }
    let before = wait_rss_settled(
        responder.pid(),
        Duration::from_secs(3),
        Duration::from_secs(120),
    )?;
    let mut counter = LogCounter::new(&responder.stderr_path(), vpngw_established);
    counter.skip_existing()?;

    let start = Instant::now();
    let mut initiator = Serve::start(
        &topo.onprem,
        bin,
        &i_data,
        &dir,
        Launch {
            port: 9282,
            node: true,
            label: "initiator",
            cpu: None,
        },
    )?;
    let (established, seconds, note) = wait_count(n, start, &mut counter, &mut || {
        responder.ensure_running()?;
        initiator.ensure_running()
    })?;
    let after = mem(responder.pid())?;
    // The API shows what the node's writer has stored: it may lag the log.
    let t = Instant::now();
    let listed = loop {
        let count = responder.with_client(&topo.gw, |c| {
            let conns = c.list_all("/v1/vpn-connections")?;
            Ok(conns
                .iter()
                .filter(|c| c["tunnels"][0]["status"]["phase"] == "established")
                .count())
        });
        match count {
            Ok(c) if c >= established || t.elapsed() > Duration::from_secs(30) => {
                break format!(
                    "the responder's API lists {c} established {:.1} s later",
                    t.elapsed().as_secs_f64()
                );
            }
            Ok(_) => sleep(Duration::from_secs(1))?,
            Err(e) => break format!("listing connections failed: {e:#}"),
        }
    };
    notes.push(dh_note("responder", &responder, &topo.gw));
    notes.push(dh_note("initiator", &initiator, &topo.onprem));
    if established < n {
        notes.push(format!(
            "vpngw responder log tail ({established}/{n} up): {}",
            responder.log_tail(5)
        ));
    }
    Ok(metrics(
        established,
        seconds,
        before,
        after,
        join(note, Some(listed)),
    ))
}

/// Polls `counter` until `n` tunnels are up, a stall, or the deadline; `alive` checks
/// the daemons. Returns (established, seconds to the last one seen, why it stopped early).
fn wait_count(
    n: usize,
    start: Instant,
    counter: &mut LogCounter,
    alive: &mut dyn FnMut() -> Result<()>,
) -> Result<(usize, f64, Option<String>)> {
    let limit = deadline(n);
    let mut last_change = Instant::now();
    let mut last_count = 0;
    let mut last_at = start.elapsed();
    loop {
        check_interrupted()?;
        let count = counter.poll()?;
        if count != last_count {
            last_count = count;
            last_change = Instant::now();
            last_at = start.elapsed();
        }
        if count >= n {
            return Ok((count, last_at.as_secs_f64(), None));
        }
        if let Err(e) = alive() {
            return Ok((
                count,
                last_at.as_secs_f64(),
                Some(format!("a daemon died: {e}")),
            ));
        }
        if last_change.elapsed() > STALL {
            return Ok((
                count,
                last_at.as_secs_f64(),
                Some(format!("stalled: no new tunnel for {STALL:?}")),
            ));
        }
        if start.elapsed() > limit {
            return Ok((
                count,
                start.elapsed().as_secs_f64(),
                Some(format!("deadline of {limit:?} reached")),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metrics(
    established: usize,
    seconds: f64,
    before: Mem,
    after: Mem,
    note: Option<String>,
) -> SetupMetrics {
    SetupMetrics {
        established,
        seconds,
        rss_before_kib: before.rss_kib,
        hwm_kib: after.hwm_kib,
        rss_after_kib: after.rss_kib,
        note,
    }
}

/// Where a node's Diffie-Hellman work went during the run: key pairs from the pool or
/// made on the control thread, shared secrets computed on the DH threads.
fn dh_note(side: &str, serve: &Serve, ns: &Netns) -> String {
    const SERIES: [&str; 3] = [
        "vpngw_ike_dh_keys_total{source=\"ready\"}",
        "vpngw_ike_dh_keys_total{source=\"inline\"}",
        "vpngw_ike_dh_offloaded_total",
    ];
    match serve.with_client(ns, |c| c.metrics(&SERIES)) {
        Ok(v) => format!(
            "vpngw {side} DH: {} key pairs from the pool, {} made on the control thread; \
             {} shared secrets on the DH threads",
            v[0], v[1], v[2]
        ),
        Err(e) => format!("vpngw {side} metrics: {e:#}"),
    }
}

fn join(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

fn api_note(side: &str, n: usize, took: Duration) -> String {
    format!(
        "vpngw API (controller only, SQLite): {n} connections created on the {side} in {:.1} s ({:.0}/s)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64().max(1e-9)
    )
}

/// The name the kernel gives a process started from `bin` (`/proc/PID/comm`): the
/// file name, cut to 15 bytes (TASK_COMM_LEN less the NUL). `--vpngw` may name a copy
/// of the binary under another name.
fn program_comm(bin: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let name = bin.file_name().map(|n| n.as_bytes()).unwrap_or_default();
    String::from_utf8_lossy(&name[..name.len().min(15)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_comm_is_the_file_name_cut_to_fifteen_bytes() {
        assert_eq!(program_comm(Path::new("/usr/bin/vpngw")), "vpngw");
        assert_eq!(program_comm(Path::new("/tmp/vpngw-head")), "vpngw-head");
        assert_eq!(
            program_comm(Path::new("/tmp/vpngw-0123456789abcdef")),
            "vpngw-012345678"
        );
    }
}
