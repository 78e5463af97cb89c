//! `labbench`: vpngw and strongSwan measured side by side in one run, in the lab's
//! network namespaces (needs root and the lab's packages; see the `lab` crate).
//!
//! ```text
//! cargo build --release -p vpngw
//! cargo run --release -p labbench -- [--quick] [--repeat N] [--only NAME]... [--out FILE]
//! ```
//!
//! Data path (iperf3 TCP `--repeat` times back to back, reported as median and
//! min–max; iperf3 UDP; ping avg/p99) for plain routing, strongSwan↔strongSwan
//! (kernel-libipsec at both ends), vpngw↔strongSwan and vpngw↔vpngw, each with
//! aes128-sha1, aes256-sha256 and aes-gcm-128; then IKEv2 tunnels established per
//! second and responder memory for N tunnels from one peer (strongSwan→strongSwan and
//! vpngw→vpngw). Prints a Markdown table with ratios to strongSwan↔strongSwan and
//! writes it to `--out`. Every namespace and process is removed at the end, also on
//! failure or Ctrl-C; every wait is bounded; traffic stays inside the lab's namespaces.

mod charon;
mod measure;
mod paths;
mod report;
mod setup;
mod vpngw;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use clap::Parser;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use crate::measure::INTERRUPTED;
use crate::paths::{Durations, Pin, SUITES};
use crate::report::{PathRow, Report, Setup, SetupPeers, SetupRow};

/// Benchmarks vpngw against strongSwan in network namespaces (needs root).
#[derive(Debug, Parser)]
#[command(name = "labbench", version)]
struct Args {
    /// Short runs: one 3 s iperf3 TCP run, 100 tunnels in the setup test.
    #[arg(long)]
    quick: bool,
    /// Run only these parts (repeatable): plain, swan-swan, vpngw-swan, vpngw-vpngw,
    /// setup-swan, setup-vpngw, or the groups `paths` and `setup`. The strongSwan
    /// baseline of a part is not added by itself: name it too to get ratios.
    #[arg(long = "only", value_name = "NAME")]
    only: Vec<String>,
    /// Only these suites for the data path (repeatable): aes128-sha1, aes256-sha256,
    /// aes-gcm-128.
    #[arg(long = "suite", value_name = "NAME")]
    suites: Vec<String>,
    /// Tunnel counts of the setup test (default 1000 and 10000; 100 with --quick).
    #[arg(long = "tunnels", value_name = "N", value_delimiter = ',')]
    tunnels: Vec<usize>,
    /// iperf3 duration in seconds (default 10; 3 with --quick).
    #[arg(long, value_name = "SECS")]
    iperf_secs: Option<u32>,
    /// iperf3 TCP runs per path and suite, back to back on the same tunnel; the table
    /// shows their median and min–max (default 3; 1 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    repeat: Option<u32>,
    /// Confine each gateway's daemon (vpngw or charon, whole process) to a core of its
    /// own: the one in `gw` to CPU 0, the one in `onprem` to CPU 1 (`taskset -c`), as if
    /// each ran on a one-core machine of its own; iperf3 and the kernel stay unpinned.
    /// Without it the kernel may put both gateways on one core (see docs/PERFORMANCE.md).
    /// Needs at least 2 CPUs; the data-path parts only.
    #[arg(long)]
    pin: bool,
    /// TCP congestion control of the iperf3 sender (`iperf3 -C`) on every path
    /// (default cubic, the kernel's default). Set so that the result does not depend on
    /// the machine's `net.ipv4.tcp_congestion_control`; any name in
    /// `/proc/sys/net/ipv4/tcp_available_congestion_control`.
    #[arg(long, value_name = "NAME", default_value = "cubic")]
    congestion_control: String,
    /// The vpngw binary (default: `vpngw` next to this program, built if missing when
    /// run through cargo).
    #[arg(long, value_name = "PATH")]
    vpngw: Option<PathBuf>,
    /// Also write the Markdown report to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

const PART_NAMES: [&str; 10] = [
    "plain",
    "swan-swan",
    "vpngw-swan",
    "vpngw-vpngw",
    "setup-swan",
    "setup-vpngw",
    "setup-vpngw-ikev1",
    "setup-vpngw-ikev1-aggressive",
    "paths",
    "setup",
];

fn main() -> Result<()> {
    let args = Args::parse();
    for o in &args.only {
        if !PART_NAMES.contains(&o.as_str()) {
            bail!("--only {o}: expected one of {}", PART_NAMES.join(", "));
        }
    }
    for s in &args.suites {
        if !SUITES.iter().any(|x| x.name == s) {
            bail!("--suite {s}: expected aes128-sha1, aes256-sha256 or aes-gcm-128");
        }
    }
    let pin = if args.pin {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 2 {
            bail!("--pin needs at least 2 CPUs, this process may use {cpus}");
        }
        Some(Pin { gw: 0, onprem: 1 })
    } else {
        None
    };
    check_congestion_control(&args.congestion_control)?;
    if !nix::unistd::geteuid().is_root() {
        bail!("labbench needs root (network namespaces, TUN devices, strongSwan)");
    }
    install_signal_handlers()?;
    let wanted = |name: &str, group: &str| {
        args.only.is_empty() || args.only.iter().any(|o| o == name || o == group)
    };
    // IKEv1 setup has no goal: only when asked for by name.
    let setup_wanted = |p: SetupPeers| match p {
        SetupPeers::VpngwVpngwIkev1 | SetupPeers::VpngwVpngwIkev1Aggressive => {
            args.only.iter().any(|o| o == p.name())
        }
        _ => wanted(p.name(), "setup"),
    };
    let durations = Durations {
        iperf_secs: args.iperf_secs.unwrap_or(if args.quick { 3 } else { 10 }),
        tcp_repeat: args.repeat.unwrap_or(if args.quick { 1 } else { 3 }),
        pings: 100,
    };
    let tunnels = if !args.tunnels.is_empty() {
        args.tunnels.clone()
    } else if args.quick {
        vec![100]
    } else {
        vec![1000, 10_000]
    };
    let needs_vpngw = Setup::ALL
        .iter()
        .any(|s| matches!(s, Setup::VpngwSwan | Setup::VpngwVpngw) && wanted(s.name(), "paths"))
        || setup_wanted(SetupPeers::VpngwVpngw)
        || setup_wanted(SetupPeers::VpngwVpngwIkev1)
        || setup_wanted(SetupPeers::VpngwVpngwIkev1Aggressive);
    let bin = if needs_vpngw {
        Some(vpngw_binary(args.vpngw.clone())?)
    } else {
        None
    };

    let mut report = Report {
        machine: machine_info(
            &args,
            durations,
            Parts {
                paths: Setup::ALL.iter().any(|s| wanted(s.name(), "paths")),
                setup: SetupPeers::ALL.into_iter().any(setup_wanted),
            },
            &tunnels,
            bin.as_deref(),
        ),
        ..Report::default()
    };
    let suites: Vec<_> = SUITES
        .iter()
        .filter(|s| args.suites.is_empty() || args.suites.iter().any(|n| n == s.name))
        .collect();

    for setup in Setup::ALL {
        if !wanted(setup.name(), "paths") {
            continue;
        }
        let per_suite: Vec<Option<&paths::Suite>> = if setup == Setup::Plain {
            vec![None]
        } else {
            suites.iter().map(|s| Some(*s)).collect()
        };
        for suite in per_suite {
            if INTERRUPTED.load(Ordering::Relaxed) {
                break;
            }
            let label = format!("{} {}", setup.label(), suite.map_or("", |s| s.name));
            eprintln!("labbench: measuring {label}");
            let result = paths::measure(
                setup,
                suite.unwrap_or(&SUITES[0]),
                durations,
                &args.congestion_control,
                pin,
                bin.as_deref().unwrap_or(std::path::Path::new("vpngw")),
            )
            .map_err(|e| format!("{e:#}"));
            match &result {
                Ok(m) => eprintln!(
                    "labbench:   TCP {:.3} Gbit/s (median of [{}]), UDP {}, ping avg {:.3} ms p99 {:.3} ms",
                    m.tcp_bps() / 1e9,
                    m.tcp
                        .iter()
                        .map(|r| format!("{:.3}", r.bps / 1e9))
                        .collect::<Vec<_>>()
                        .join(", "),
                    match &m.udp {
                        Ok((bps, loss)) => format!("{:.3} Gbit/s ({loss:.1}% loss)", bps / 1e9),
                        Err(e) => format!("failed ({e})"),
                    },
                    m.ping.avg_ms,
                    m.ping.p99_ms
                ),
                Err(e) => eprintln!("labbench:   failed: {e}"),
            }
            report.paths.push(PathRow {
                setup,
                suite: suite.map(|s| s.name),
                result,
            });
        }
    }

    for &n in &tunnels {
        for peers in SetupPeers::ALL {
            if !setup_wanted(peers) || INTERRUPTED.load(Ordering::Relaxed) {
                continue;
            }
            eprintln!("labbench: {} tunnels, {}", n, peers.label());
            let result = match (peers, bin.as_deref()) {
                (SetupPeers::SwanSwan, _) => setup::strongswan(n),
                (_, Some(bin)) => setup::vpngw(n, bin, peers.ike(), &mut report.notes),
                (_, None) => Err(anyhow::anyhow!("no vpngw binary")),
            }
            .map_err(|e| format!("{e:#}"));
            match &result {
                Ok(m) => eprintln!(
                    "labbench:   {}/{n} established in {:.2} s ({:.1}/s), responder VmHWM {:.1} MiB{}",
                    m.established,
                    m.seconds,
                    m.rate(),
                    m.hwm_kib as f64 / 1024.0,
                    m.note
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                ),
                Err(e) => eprintln!("labbench:   failed: {e}"),
            }
            report.setups.push(SetupRow {
                peers,
                tunnels: n,
                result,
            });
        }
    }
    report.machine.push((
        "load after the run (uptime)".into(),
        Command::new("uptime")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
    ));
    if INTERRUPTED.load(Ordering::Relaxed) {
        report
            .notes
            .push("the run was interrupted: the tables are incomplete".into());
    }

    // "full" only when every part ran; otherwise the parts run name the report.
    let scope = match (args.quick, args.only.is_empty()) {
        (true, _) => "quick".to_string(),
        (false, true) => "full".to_string(),
        (false, false) => args.only.join(", "),
    };
    let title = format!(
        "labbench {} ({scope}{})",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        if args.pin { ", gateways pinned" } else { "" }
    );
    let md = report.markdown(&title);
    println!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("labbench: report written to {}", out.display());
    }
    Ok(())
}

/// SIGINT/SIGTERM set a flag that every wait checks, so the run unwinds through the
/// `Drop`s that delete namespaces and stop daemons instead of dying with them in place.
fn install_signal_handlers() -> Result<()> {
    extern "C" fn on_signal(_: nix::libc::c_int) {
        // An atomic store is async-signal-safe.
        INTERRUPTED.store(true, Ordering::Relaxed);
    }
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.context("installing a signal handler")?;
    }
    Ok(())
}

/// The vpngw binary: `--vpngw`, else `vpngw` beside this program; under `cargo run`
/// (CARGO set) a missing one is built with the same profile and target directory.
fn vpngw_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.exists() {
            bail!("--vpngw {}: no such file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the program has no directory")?;
    let bin = dir.join("vpngw");
    if !bin.exists() {
        let Ok(cargo) = std::env::var("CARGO") else {
            bail!(
                "{} not found: run `cargo build --release -p vpngw` or pass --vpngw",
                bin.display()
            );
        };
        let release = dir.file_name().is_some_and(|n| n == "release");
        eprintln!(
            "labbench: building vpngw ({})",
            if release { "release" } else { "debug" }
        );
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "vpngw"]);
        if release {
            cmd.arg("--release");
        }
        if !cmd.status()?.success() || !bin.exists() {
            bail!("building vpngw failed; run `cargo build --release -p vpngw`");
        }
    }
    Ok(bin)
}

/// The sender's congestion control must be one the kernel has: iperf3 would otherwise
/// fail only once the first path is up.
fn check_congestion_control(name: &str) -> Result<()> {
    const AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";
    let available =
        std::fs::read_to_string(AVAILABLE).with_context(|| format!("reading {AVAILABLE}"))?;
    if !available.split_whitespace().any(|a| a == name) {
        bail!(
            "--congestion-control {name}: not available in this kernel; expected one of: {}",
            available.trim()
        );
    }
    Ok(())
}

/// Which kinds of parts run, so that the method line describes only those.
#[derive(Clone, Copy)]
struct Parts {
    paths: bool,
    setup: bool,
}

fn machine_info(
    args: &Args,
    d: Durations,
    parts: Parts,
    tunnels: &[usize],
    bin: Option<&std::path::Path>,
) -> Vec<(String, String)> {
    let sh = |cmd: &str| {
        Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let mut m = vec![
        (
            "CPU".into(),
            format!(
                "{} × {}",
                sh("nproc"),
                sh("lscpu | sed -n 's/^Model name: *//p'")
            ),
        ),
        ("kernel".into(), sh("uname -r")),
        ("load before the run (uptime)".into(), sh("uptime")),
        (
            "strongSwan".into(),
            sh("dpkg-query -W -f '${Version}' strongswan-charon 2>/dev/null"),
        ),
        ("iperf3".into(), sh("iperf3 --version | head -1")),
    ];
    let mut method = Vec::new();
    if parts.paths {
        method.push(format!(
            "iperf3 TCP and UDP (-b 0, 1200-byte datagrams) {} s each from the VPC host to 10.2.0.1 on-premises, TCP {} back to back on the same tunnel (median and min–max; retransmissions: median; congestion control {} on the sender, the machine's default is {}); {} pings 10 ms apart",
            d.iperf_secs,
            match d.tcp_repeat {
                1 => "once".to_string(),
                n => format!("{n} times"),
            },
            args.congestion_control,
            sh("cat /proc/sys/net/ipv4/tcp_congestion_control"),
            d.pings,
        ));
    }
    if parts.setup {
        method.push(format!(
            "setup test with {} tunnels",
            tunnels
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" and ")
        ));
    }
    m.push(("method".into(), method.join("; ")));
    if let Some(b) = bin {
        m.push(("vpngw".into(), b.display().to_string()));
    }
    if !args.only.is_empty() {
        m.push(("parts".into(), args.only.join(", ")));
    }
    if args.pin {
        m.push((
            "placement".into(),
            "--pin: the gateway daemon in gw (vpngw or charon, every thread) confined to CPU 0, the one in onprem to CPU 1 (taskset -c); iperf3 and the kernel unpinned".into(),
        ));
    }
    m
}
