//! Running the measuring tools (iperf3, ping) inside the lab's namespaces with bounded
//! run times, parsing what they print, reading a process's memory from /proc, and
//! counting established tunnels in a daemon's log as it grows.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use lab::{Netns, Process};

use crate::report::PingStats;

/// Set by SIGINT/SIGTERM: every wait of the benchmark checks it and gives up, so the
/// namespaces and processes are torn down by their `Drop`s.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Fails once the run was interrupted.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d` in small steps, failing early if the run is interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Runs `cmd` to completion, at most `timeout` (then it is killed), with its output in
/// `<dir>/<label>.std{out,err}` (files, so large outputs cannot block it). Returns stdout;
/// a non-zero exit is an error carrying the tail of stderr.
pub fn run_bounded(cmd: Command, dir: &Path, label: &str, timeout: Duration) -> Result<String> {
    let mut p = Process::spawn(cmd, dir, label)?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = p.exit_status() {
            break s;
        }
        check_interrupted()?;
        if start.elapsed() >= timeout {
            bail!("{label}: still running after {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = p.stdout();
    if !status.success() {
        bail!(
            "{label} failed ({status}): {}{}",
            lab::process::tail(
                &std::fs::read_to_string(p.stderr_path()).unwrap_or_default(),
                5
            ),
            lab::process::tail(&out, 5),
        );
    }
    Ok(out)
}

/// Runs `args` inside `ns`, bounded.
pub fn ns_run(
    ns: &Netns,
    args: &[&str],
    dir: &Path,
    label: &str,
    timeout: Duration,
) -> Result<String> {
    let (program, rest) = args.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let mut cmd = ns.command(program);
    cmd.args(rest);
    run_bounded(cmd, dir, label, timeout)
}

/// iperf3 TCP for `secs` seconds from `src` (in `ns`) to a server at `dst:port`, the
/// sender using congestion control `cc`: (receiver bits/s, sender retransmits).
pub fn iperf3_tcp(
    ns: &Netns,
    dir: &Path,
    (src, dst, port): (&str, &str, u16),
    secs: u32,
    cc: &str,
) -> Result<(f64, u64)> {
    let json = ns_run(
        ns,
        &[
            "iperf3",
            "-J",
            "-c",
            dst,
            "-B",
            src,
            "-p",
            &port.to_string(),
            "-t",
            &secs.to_string(),
            "-C",
            cc,
            "--connect-timeout",
            "3000",
        ],
        dir,
        "iperf3-tcp",
        Duration::from_secs(u64::from(secs) + 30),
    )?;
    parse_iperf3_tcp(&json)
}

/// iperf3 UDP at unlimited rate for `secs` seconds: (receiver bits/s, loss %).
/// 1200-byte datagrams fit every tunnel MTU here without fragmentation.
pub fn iperf3_udp(
    ns: &Netns,
    dir: &Path,
    src: &str,
    dst: &str,
    port: u16,
    secs: u32,
) -> Result<(f64, f64)> {
    let json = ns_run(
        ns,
        &[
            "iperf3",
            "-J",
            "-u",
            "-b",
            "0",
            "-l",
            "1200",
            "-w",
            "4M",
            "-c",
            dst,
            "-B",
            src,
            "-p",
            &port.to_string(),
            "-t",
            &secs.to_string(),
            "--connect-timeout",
            "3000",
        ],
        dir,
        "iperf3-udp",
        Duration::from_secs(u64::from(secs) + 30),
    )?;
    parse_iperf3_udp(&json)
}

/// `count` echo requests 10 ms apart from `src` to `dst`.
pub fn ping(ns: &Netns, dir: &Path, src: &str, dst: &str, count: u32) -> Result<PingStats> {
    let mut cmd = ns.command("ping");
    cmd.args([
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.01",
        "-W",
        "2",
        "-w",
        "30",
        "-I",
        src,
        dst,
    ]);
    // ping exits 1 if replies were missing: that is a measurement, not an error.
    let mut p = Process::spawn(cmd, dir, "ping")?;
    let start = Instant::now();
    while p.exit_status().is_none() {
        check_interrupted()?;
        if start.elapsed() > Duration::from_secs(40) {
            bail!("ping still running after 40 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(parse_ping(&p.stdout()))
}

pub fn parse_iperf3_tcp(json: &str) -> Result<(f64, u64)> {
    let v = iperf3_json(json)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3: no end.sum_received.bits_per_second"))?;
    let retr = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok((bps, retr))
}

pub fn parse_iperf3_udp(json: &str) -> Result<(f64, f64)> {
    let v = iperf3_json(json)?;
    let r = &v["end"]["sum_received"];
    let bps = r["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3: no end.sum_received.bits_per_second"))?;
    let loss = r["lost_percent"].as_f64().unwrap_or(0.0);
    Ok((bps, loss))
}

fn iperf3_json(json: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

/// Sent/received from ping's summary, avg and p99 (nearest rank) of the per-reply rtts.
pub fn parse_ping(text: &str) -> PingStats {
    let mut rtts: Vec<f64> = Vec::new();
    let mut stats = PingStats::default();
    for line in text.lines() {
        if line.contains(" bytes from ") {
            if let Some(ms) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("time="))
                .and_then(|t| t.parse::<f64>().ok())
            {
                rtts.push(ms);
            }
        } else if line.contains("packets transmitted") {
            let mut parts = line.split(", ");
            stats.sent = leading_number(parts.next().unwrap_or(""));
            stats.received = leading_number(parts.next().unwrap_or(""));
        }
    }
    if !rtts.is_empty() {
        stats.avg_ms = rtts.iter().sum::<f64>() / rtts.len() as f64;
        rtts.sort_by(f64::total_cmp);
        // Nearest rank: the smallest value with at least 99% of the samples at or below.
        let rank = (rtts.len() * 99).div_ceil(100).max(1);
        stats.p99_ms = rtts[rank - 1];
    }
    stats
}

fn leading_number(s: &str) -> u32 {
    s.trim()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Memory of a process from /proc/PID/status, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mem {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn mem(pid: u32) -> Result<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    parse_status(&text).ok_or_else(|| anyhow!("/proc/{pid}/status has no VmRSS/VmHWM"))
}

pub fn parse_status(text: &str) -> Option<Mem> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(Mem {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// The command name of a process (to check that a pid is the daemon, not a wrapper).
pub fn comm(pid: u32) -> String {
    // The kernel cuts the name at 15 bytes, possibly inside a UTF-8 character.
    std::fs::read(format!("/proc/{pid}/comm"))
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default()
}

/// Waits until `pid`'s resident set has not changed by more than 1% for `quiet`, at
/// most `timeout`; returns the last reading. For "the daemon finished loading".
pub fn wait_rss_settled(pid: u32, quiet: Duration, timeout: Duration) -> Result<Mem> {
    let start = Instant::now();
    let mut last = mem(pid)?;
    let mut stable_since = Instant::now();
    loop {
        sleep(Duration::from_millis(250))?;
        let now = mem(pid)?;
        let delta = now.rss_kib.abs_diff(last.rss_kib);
        if delta * 100 > last.rss_kib.max(1) {
            stable_since = Instant::now();
        }
        last = now;
        if stable_since.elapsed() >= quiet || start.elapsed() >= timeout {
            return Ok(last);
        }
    }
}

/// Which log lines say "a tunnel is up", and which tunnel.
pub type Matcher = fn(&str) -> Option<String>;

/// vpngw (tracing, ike crate): `... peer=Some(PeerId(17)) event="phase2_established"`.
pub fn vpngw_established(line: &str) -> Option<String> {
    if !line.contains("phase2_established") {
        return None;
    }
    let rest = &line[line.find("PeerId(")? + "PeerId(".len()..];
    Some(rest[..rest.find(')')?].to_string())
}

/// charon with `ike_name = yes`: `... <t17|42> CHILD_SA net{42} established with SPIs ...`.
pub fn charon_established(line: &str) -> Option<String> {
    if !(line.contains("CHILD_SA") && line.contains("established with SPIs")) {
        return None;
    }
    let rest = &line[line.find('<')? + 1..];
    Some(rest[..rest.find('|')?].to_string())
}

/// Counts distinct established tunnels in a growing log file, reading only what was
/// appended since the last call.
pub struct LogCounter {
    path: PathBuf,
    offset: u64,
    partial: String,
    seen: HashSet<String>,
    matcher: Matcher,
}

impl LogCounter {
    pub fn new(path: &Path, matcher: Matcher) -> Self {
        LogCounter {
            path: path.to_owned(),
            offset: 0,
            partial: String::new(),
            seen: HashSet::new(),
            matcher,
        }
    }

    /// Starts counting from the current end of the file (ignores what is there).
    pub fn skip_existing(&mut self) -> Result<()> {
        self.offset = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        Ok(())
    }

    /// Reads what was appended and returns the number of distinct tunnels seen so far.
    pub fn poll(&mut self) -> Result<usize> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(self.seen.len()),
            Err(e) => return Err(e).with_context(|| self.path.display().to_string()),
        };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.feed(&String::from_utf8_lossy(&buf));
        Ok(self.seen.len())
    }

    fn feed(&mut self, text: &str) {
        self.partial.push_str(text);
        let complete = match self.partial.rfind('\n') {
            Some(i) => i + 1,
            None => return,
        };
        let lines: String = self.partial.drain(..complete).collect();
        for line in lines.lines() {
            if let Some(key) = (self.matcher)(&strip_ansi(line)) {
                self.seen.insert(key);
            }
        }
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), in case a logger colours its
/// output although it writes to a file.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_avg_and_p99() {
        let mut text =
            String::from("PING 10.2.0.1 (10.2.0.1) from 172.16.1.10 : 56(84) bytes of data.\n");
        for i in 1..=100 {
            // 1.0 .. 100.0 ms
            text.push_str(&format!(
                "64 bytes from 10.2.0.1: icmp_seq={i} ttl=62 time={}.0 ms\n",
                i
            ));
        }
        text.push_str("--- 10.2.0.1 ping statistics ---\n");
        text.push_str("100 packets transmitted, 100 received, 0% packet loss, time 1010ms\n");
        let s = parse_ping(&text);
        assert_eq!((s.sent, s.received), (100, 100));
        assert!((s.avg_ms - 50.5).abs() < 1e-9);
        assert_eq!(s.p99_ms, 99.0);
    }

    #[test]
    fn ping_without_replies() {
        let s = parse_ping("3 packets transmitted, 0 received, 100% packet loss, time 2ms\n");
        assert_eq!((s.sent, s.received), (3, 0));
        assert_eq!(s.avg_ms, 0.0);
    }

    #[test]
    fn iperf3_tcp_and_udp_summaries() {
        let tcp = r#"{"end":{"sum_sent":{"bits_per_second":3.1e9,"retransmits":12},
            "sum_received":{"bits_per_second":3.0e9}}}"#;
        assert_eq!(parse_iperf3_tcp(tcp).unwrap(), (3.0e9, 12));
        let udp = r#"{"end":{"sum_sent":{"bits_per_second":1.1e9,"lost_percent":0},
            "sum_received":{"bits_per_second":2.4e8,"lost_percent":79.3}}}"#;
        assert_eq!(parse_iperf3_udp(udp).unwrap(), (2.4e8, 79.3));
        let err = parse_iperf3_tcp(r#"{"end":{},"error":"unable to connect to server"}"#);
        assert!(err.unwrap_err().to_string().contains("unable to connect"));
        assert!(parse_iperf3_udp("not json").is_err());
    }

    #[test]
    fn proc_status_fields() {
        let text = "Name:\tvpngw\nVmHWM:\t  20480 kB\nVmRSS:\t  18000 kB\n";
        assert_eq!(
            parse_status(text),
            Some(Mem {
                rss_kib: 18000,
                hwm_kib: 20480
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn established_lines() {
        let v = "2025-01-01T00:00:00Z  INFO ike::endpoint: Child SA up peer=Some(PeerId(17)) event=\"phase2_established\"";
        assert_eq!(vpngw_established(v).as_deref(), Some("17"));
        assert_eq!(
            vpngw_established("event=\"phase1_established\" PeerId(3)"),
            None
        );
        let c = "12:00:01 09[IKE] <t17|42> CHILD_SA net{42} established with SPIs c1_i c2_o and TS 0.0.0.0/0 === 0.0.0.0/0";
        assert_eq!(charon_established(c).as_deref(), Some("t17"));
        assert_eq!(
            charon_established("<t1|1> IKE_SA t1[1] established between"),
            None
        );
    }

    #[test]
    fn counter_reads_appends_and_counts_distinct() {
        let dir = std::env::temp_dir().join(format!("labbench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        std::fs::write(&path, "old <t0|1> CHILD_SA net{1} established with SPIs\n").unwrap();
        let mut c = LogCounter::new(&path, charon_established);
        c.skip_existing().unwrap();
        let append = |s: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(s.as_bytes()).unwrap();
        };
        append("<t1|2> CHILD_SA net{2} established with SPIs\n<t2|3> CHILD_SA net{3} est");
        assert_eq!(c.poll().unwrap(), 1);
        append("ablished with SPIs\n<t1|4> CHILD_SA net{4} established with SPIs\n");
        // t2 completed across two reads; t1 twice counts once.
        assert_eq!(c.poll().unwrap(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2mpeer\u{1b}[0m=Some(PeerId(3))"),
            "peer=Some(PeerId(3))"
        );
    }
}
