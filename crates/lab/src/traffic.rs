//! Traffic through the lab: ping, a continuous ping that reports loss, iperf3.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::cmd::{output, wait_until};
use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::process::Process;

/// Interval between echo requests of [`ping`].
const PING_INTERVAL: &str = "0.2";

/// What a ping run saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PingResult {
    pub sent: u32,
    pub received: u32,
    /// Round-trip time of each reply, in arrival order.
    pub rtts: Vec<Duration>,
}

impl PingResult {
    /// At least one reply.
    pub fn ok(&self) -> bool {
        self.received > 0
    }
}

/// Sends `count` echo requests from `src` (an address of the namespace) to `dst`, 0.2 s
/// apart, and returns what came back; no reply is a result, not an error. `timeout`
/// bounds the whole run.
pub fn ping(ns: &Netns, src: &str, dst: &str, count: u32, timeout: Duration) -> Result<PingResult> {
    let deadline = timeout.as_secs().max(1).to_string();
    let mut cmd = ns.command("ping");
    cmd.args([
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        PING_INTERVAL,
        "-W",
        "1",
        "-w",
        &deadline,
        "-I",
        src,
        dst,
    ]);
    let out = output(&mut cmd, None, timeout + Duration::from_secs(5))?;
    // ping exits 1 when nothing came back, 2 on other errors (bad address ...).
    if out.status.code() == Some(2) {
        return Err(LabError::Command {
            cmd: format!("ping -I {src} {dst}"),
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        });
    }
    Ok(parse_ping(&out.stdout))
}

/// Pings until `dst` answers, at most `timeout`: for "the tunnel carries traffic now".
pub fn wait_ping(ns: &Netns, src: &str, dst: &str, timeout: Duration) -> Result<()> {
    wait_until(timeout, &format!("{dst} to answer ping from {src}"), || {
        Ok(ping(ns, src, dst, 1, Duration::from_secs(1))?
            .ok()
            .then_some(()))
    })
}

/// A ping running in the background (`ping -O`), for measuring outages during
/// failover. Stop it with [`PingMonitor::stop`] to get the loss report.
#[derive(Debug)]
pub struct PingMonitor {
    process: Process,
    interval: Duration,
}

/// What a [`PingMonitor`] saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PingReport {
    pub sent: u32,
    pub received: u32,
    /// Runs of consecutive unanswered requests, in order.
    pub losses: Vec<LossInterval>,
}

/// Consecutive echo requests (by `icmp_seq`) that got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossInterval {
    pub first_seq: u32,
    pub last_seq: u32,
    /// When the first lost request was sent, from the start of the monitor.
    pub start: Duration,
    /// How long the outage lasted (lost requests × interval).
    pub duration: Duration,
}

impl PingReport {
    /// The longest outage, zero if none.
    pub fn longest_loss(&self) -> Duration {
        self.losses
            .iter()
            .map(|l| l.duration)
            .max()
            .unwrap_or_default()
    }
}

impl PingMonitor {
    /// Starts pinging `dst` from `src` every `interval` (at least 2 ms; ping refuses
    /// less as root). Output goes to `<log_dir>/ping-monitor.stdout`.
    pub fn start(
        ns: &Netns,
        log_dir: &Path,
        src: &str,
        dst: &str,
        interval: Duration,
    ) -> Result<PingMonitor> {
        let secs = format!("{:.3}", interval.as_secs_f64().max(0.002));
        let process = ns.spawn(
            &["ping", "-n", "-O", "-W", "1", "-i", &secs, "-I", src, dst],
            log_dir,
            "ping-monitor",
        )?;
        Ok(PingMonitor { process, interval })
    }

    /// Waits (at most `timeout`) until at least `n` echo replies have come back. A test
    /// that asserts replies calls this before [`PingMonitor::stop`]: a recovery faster
    /// than the interval would otherwise leave only the request that was lost.
    pub fn wait_replies(&self, n: usize, timeout: Duration) -> Result<()> {
        wait_until(timeout, &format!("{n} echo replies"), || {
            let got = self
                .process
                .stdout()
                .lines()
                .filter(|l| l.contains(" bytes from "))
                .count();
            Ok((got >= n).then_some(()))
        })
    }

    /// Stops the ping (SIGINT, so it prints its summary) and reports losses. Requests
    /// still in flight when it stops do not count as lost.
    pub fn stop(mut self) -> Result<PingReport> {
        self.process.signal(Signal::SIGINT)?;
        self.process.wait_exit(Duration::from_secs(5))?;
        let text = self.process.stdout();
        Ok(loss_report(&text, self.interval))
    }
}

/// Result of an iperf3 client run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Iperf3Result {
    pub bytes_sent: u64,
    /// What the server had counted when the client finished sending: less than
    /// `bytes_sent` when data was still in flight (check the far end for totals).
    pub bytes_received: u64,
    /// Receiver-side throughput.
    pub bits_per_second: f64,
    pub seconds: f64,
}

/// An `iperf3 -s` listening in a namespace; killed on Drop.
#[derive(Debug)]
pub struct Iperf3Server {
    process: Process,
    port: u16,
}

impl Iperf3Server {
    /// Starts a server bound to `bind:port` in `ns` and waits until it listens.
    pub fn start(ns: &Netns, log_dir: &Path, bind: &str, port: u16) -> Result<Iperf3Server> {
        let port_s = port.to_string();
        let mut process = ns.spawn(
            &["iperf3", "-s", "-B", bind, "-p", &port_s],
            log_dir,
            "iperf3-server",
        )?;
        let filter = format!("sport = :{port}");
        wait_until(Duration::from_secs(10), "iperf3 server listening", || {
            process.ensure_running()?;
            let out = ns.exec(&["ss", "-Hltn", &filter])?;
            Ok((!out.trim().is_empty()).then_some(()))
        })?;
        Ok(Iperf3Server { process, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the server printed.
    pub fn log(&self) -> String {
        self.process.stdout()
    }
}

/// Sends `bytes` over TCP from `src` to an [`Iperf3Server`] at `dst:port` and returns
/// iperf3's JSON summary. `timeout` bounds the run.
pub fn iperf3_client(
    ns: &Netns,
    src: &str,
    dst: &str,
    port: u16,
    bytes: u64,
    timeout: Duration,
) -> Result<Iperf3Result> {
    let mut cmd = ns.command("iperf3");
    cmd.args([
        "-J",
        "-c",
        dst,
        "-B",
        src,
        "-p",
        &port.to_string(),
        "-n",
        &bytes.to_string(),
        "--connect-timeout",
        "3000",
    ]);
    let out = output(&mut cmd, None, timeout)?;
    let parsed = parse_iperf3(&out.stdout);
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("iperf3 -c {dst} -B {src}"),
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        });
    }
    parsed
}

fn parse_iperf3(json: &str) -> Result<Iperf3Result> {
    let bad = |detail: String| LabError::Parse {
        what: "iperf3 -J output".into(),
        detail,
    };
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    if let Some(err) = v["error"].as_str() {
        return Err(bad(format!("iperf3 reported: {err}")));
    }
    let end = &v["end"];
    let num = |section: &str, key: &str| end[section][key].as_f64();
    let (Some(sent), Some(received), Some(bps), Some(secs)) = (
        num("sum_sent", "bytes"),
        num("sum_received", "bytes"),
        num("sum_received", "bits_per_second"),
        num("sum_received", "seconds"),
    ) else {
        return Err(bad("no end.sum_sent/sum_received".into()));
    };
    // iperf3 prints byte counts as JSON integers; f64 holds them exactly below 2^53.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(Iperf3Result {
        bytes_sent: sent as u64,
        bytes_received: received as u64,
        bits_per_second: bps,
        seconds: secs,
    })
}

fn parse_ping(text: &str) -> PingResult {
    let mut r = PingResult::default();
    for line in text.lines() {
        if let Some(rtt) = reply_rtt(line) {
            r.rtts.push(rtt);
        } else if line.contains("packets transmitted") {
            // "3 packets transmitted, 3 received, 0% packet loss, time 401ms"
            let mut parts = line.split(", ");
            r.sent = leading_number(parts.next().unwrap_or(""));
            r.received = leading_number(parts.next().unwrap_or(""));
        }
    }
    r
}

/// Builds the loss report from `ping -O` output: every `icmp_seq` up to the highest
/// one seen and answered before the end counts; unanswered runs become intervals.
fn loss_report(text: &str, interval: Duration) -> PingReport {
    let mut answered = std::collections::BTreeSet::new();
    let mut max_seq = 0;
    let mut sent = 0;
    for line in text.lines() {
        if let Some(seq) = icmp_seq(line) {
            max_seq = max_seq.max(seq);
            if reply_rtt(line).is_some() {
                answered.insert(seq);
            }
        } else if line.contains("packets transmitted") {
            sent = leading_number(line);
        }
    }
    // Requests after the last line we have may still have been in flight at SIGINT.
    let last = answered.last().copied().unwrap_or(0).max(max_seq);
    let mut losses: Vec<LossInterval> = Vec::new();
    for seq in 1..=last {
        if answered.contains(&seq) {
            continue;
        }
        match losses.last_mut() {
            Some(l) if l.last_seq + 1 == seq => {
                l.last_seq = seq;
                l.duration += interval;
            }
            _ => losses.push(LossInterval {
                first_seq: seq,
                last_seq: seq,
                start: interval * (seq - 1),
                duration: interval,
            }),
        }
    }
    let received = u32::try_from(answered.len()).unwrap_or(u32::MAX);
    PingReport {
        sent: sent.max(last),
        received,
        losses,
    }
}

/// The rtt of a reply line ("64 bytes from 10.2.0.1: icmp_seq=1 ttl=64 time=0.955 ms").
fn reply_rtt(line: &str) -> Option<Duration> {
    if !line.contains(" bytes from ") {
        return None;
    }
    let ms: f64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("time="))?
        .parse()
        .ok()?;
    Some(Duration::from_secs_f64(ms / 1000.0))
}

fn icmp_seq(line: &str) -> Option<u32> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("icmp_seq="))?
        .parse()
        .ok()
}

fn leading_number(s: &str) -> u32 {
    s.trim()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_output() {
        let text = "PING 10.2.0.1 (10.2.0.1) from 10.1.0.1 : 56(84) bytes of data.
64 bytes from 10.2.0.1: icmp_seq=1 ttl=64 time=3.33 ms
64 bytes from 10.2.0.1: icmp_seq=3 ttl=64 time=1.27 ms

--- 10.2.0.1 ping statistics ---
3 packets transmitted, 2 received, 33.3333% packet loss, time 401ms
rtt min/avg/max/mdev = 0.955/1.849/3.325/1.051 ms
";
        let r = parse_ping(text);
        assert_eq!((r.sent, r.received), (3, 2));
        assert_eq!(r.rtts.len(), 2);
        assert_eq!(r.rtts[0], Duration::from_micros(3330));
    }

    #[test]
    fn no_reply_is_zero_received() {
        let text = "PING 10.2.0.1 (10.2.0.1) from 10.1.0.1 : 56(84) bytes of data.

--- 10.2.0.1 ping statistics ---
2 packets transmitted, 0 received, 100% packet loss, time 1010ms
";
        let r = parse_ping(text);
        assert_eq!((r.sent, r.received), (2, 0));
        assert!(!r.ok());
    }

    #[test]
    fn loss_report_finds_runs() {
        let text = "PING 10.2.0.1 (10.2.0.1) from 172.16.1.10 : 56(84) bytes of data.
64 bytes from 10.2.0.1: icmp_seq=1 ttl=63 time=1.0 ms
no answer yet for icmp_seq=2
no answer yet for icmp_seq=3
64 bytes from 10.2.0.1: icmp_seq=4 ttl=63 time=1.0 ms
no answer yet for icmp_seq=5
64 bytes from 10.2.0.1: icmp_seq=6 ttl=63 time=1.0 ms

--- 10.2.0.1 ping statistics ---
7 packets transmitted, 3 received, 57% packet loss, time 600ms
";
        let r = loss_report(text, Duration::from_millis(100));
        assert_eq!((r.sent, r.received), (7, 3));
        assert_eq!(r.losses.len(), 2);
        assert_eq!((r.losses[0].first_seq, r.losses[0].last_seq), (2, 3));
        assert_eq!(r.losses[0].start, Duration::from_millis(100));
        assert_eq!(r.losses[0].duration, Duration::from_millis(200));
        assert_eq!(r.longest_loss(), Duration::from_millis(200));
        // seq 7 was in flight at the end: not a loss.
        assert_eq!(r.losses[1].last_seq, 5);
    }

    #[test]
    fn parses_iperf3_json() {
        let json = r#"{"start":{},"end":{"sum_sent":{"bytes":10485760,"seconds":0.3,"bits_per_second":2.7e8},
            "sum_received":{"bytes":10485760,"seconds":0.31,"bits_per_second":2.6e8}}}"#;
        let r = parse_iperf3(json).unwrap();
        assert_eq!(r.bytes_received, 10_485_760);
        assert!(r.bits_per_second > 2.5e8);
        assert!(parse_iperf3(r#"{"start":{},"end":{},"error":"unable to connect"}"#).is_err());
    }
}
