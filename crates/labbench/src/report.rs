//! What one run measured, and its Markdown rendering with ratios to the
//! strongSwan↔strongSwan baseline and the project's goals.

use crate::vpngw::Ike;
use std::fmt::Write;

/// Who is at each end of the measured path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Setup {
    /// The same namespaces and routers, no IPsec: the ceiling.
    Plain,
    /// strongSwan (kernel-libipsec) at both ends: the baseline every ratio refers to.
    SwanSwan,
    /// vpngw at the gateway, strongSwan on-premises.
    VpngwSwan,
    /// vpngw at both ends.
    VpngwVpngw,
}

impl Setup {
    pub const ALL: [Setup; 4] = [
        Setup::Plain,
        Setup::SwanSwan,
        Setup::VpngwSwan,
        Setup::VpngwVpngw,
    ];

    /// The name `--only` takes.
    pub fn name(self) -> &'static str {
        match self {
            Setup::Plain => "plain",
            Setup::SwanSwan => "swan-swan",
            Setup::VpngwSwan => "vpngw-swan",
            Setup::VpngwVpngw => "vpngw-vpngw",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Setup::Plain => "plain (no IPsec)",
            Setup::SwanSwan => "strongSwan↔strongSwan",
            Setup::VpngwSwan => "vpngw↔strongSwan",
            Setup::VpngwVpngw => "vpngw↔vpngw",
        }
    }
}

/// One iperf3 TCP run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcpRun {
    /// Receiver side, bits/s.
    pub bps: f64,
    /// Retransmissions the sender counted.
    pub retransmits: u64,
}

/// Throughput, loss and latency of one path.
#[derive(Debug, Clone, PartialEq)]
pub struct PathMetrics {
    /// iperf3 TCP runs back to back on the same tunnel (`--repeat`), in the order run.
    /// One run on this 2-core machine varies by ±20 % with where the kernel places the
    /// gateways' threads and iperf3, so the table reports their median and range.
    pub tcp: Vec<TcpRun>,
    /// iperf3 UDP (unlimited rate): what the receiver got (bits/s) and the loss in
    /// percent, or why the UDP run failed (the TCP and ping figures still stand).
    pub udp: Result<(f64, f64), String>,
    pub ping: PingStats,
}

impl PathMetrics {
    /// Median receiver bits/s of the TCP runs (0 without runs).
    pub fn tcp_bps(&self) -> f64 {
        median(&self.tcp_bps_runs()).unwrap_or(0.0)
    }

    /// Median of the runs' retransmission counts (mean of the middle two for an even
    /// count): one run's worth, comparable with single-run reports.
    pub fn tcp_retransmits(&self) -> f64 {
        let retr: Vec<f64> = self.tcp.iter().map(|r| r.retransmits as f64).collect();
        median(&retr).unwrap_or(0.0)
    }

    fn tcp_bps_runs(&self) -> Vec<f64> {
        self.tcp.iter().map(|r| r.bps).collect()
    }
}

/// Median of `values` (mean of the middle two for an even count); `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => v.get(n / 2).copied(),
        _ => Some((v.get(n / 2 - 1)? + v.get(n / 2)?) / 2.0),
    }
}

/// Smallest–largest of bits/s values as `2.61–3.05` Gbit/s; `—` for fewer than two
/// values (one run has no spread).
pub fn min_max_gbps(values: &[f64]) -> String {
    if values.len() < 2 {
        return "—".into();
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2}–{:.2}", min / 1e9, max / 1e9)
}

/// Summary of a ping run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
    pub avg_ms: f64,
    pub p99_ms: f64,
}

/// One line of the data-path table.
#[derive(Debug, Clone, PartialEq)]
pub struct PathRow {
    pub setup: Setup,
    /// Suite name (`aes128-sha1` ...); `None` for the plain path.
    pub suite: Option<&'static str>,
    pub result: Result<PathMetrics, String>,
}

/// Who negotiates in the tunnel setup test (initiator → responder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetupPeers {
    SwanSwan,
    VpngwVpngw,
    /// The same as [`SetupPeers::VpngwVpngw`] over IKEv1 Main Mode: no goal and no
    /// baseline, run only when asked for by name.
    VpngwVpngwIkev1,
    /// The same over IKEv1 Aggressive Mode (likewise).
    VpngwVpngwIkev1Aggressive,
}

impl SetupPeers {
    pub const ALL: [SetupPeers; 4] = [
        SetupPeers::SwanSwan,
        SetupPeers::VpngwVpngw,
        SetupPeers::VpngwVpngwIkev1,
        SetupPeers::VpngwVpngwIkev1Aggressive,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SetupPeers::SwanSwan => "setup-swan",
            SetupPeers::VpngwVpngw => "setup-vpngw",
            SetupPeers::VpngwVpngwIkev1 => "setup-vpngw-ikev1",
            SetupPeers::VpngwVpngwIkev1Aggressive => "setup-vpngw-ikev1-aggressive",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SetupPeers::SwanSwan => "strongSwan→strongSwan",
            SetupPeers::VpngwVpngw => "vpngw→vpngw",
            SetupPeers::VpngwVpngwIkev1 => "vpngw→vpngw, IKEv1 Main Mode",
            SetupPeers::VpngwVpngwIkev1Aggressive => "vpngw→vpngw, IKEv1 Aggressive Mode",
        }
    }

    /// Whether its row has a ratio to strongSwan→strongSwan (IKEv2) in the same run.
    fn compared(self) -> bool {
        matches!(self, SetupPeers::SwanSwan | SetupPeers::VpngwVpngw)
    }

    /// What the vpngw rows' tunnels speak.
    pub fn ike(self) -> Ike {
        match self {
            SetupPeers::VpngwVpngwIkev1 => Ike::V1Main,
            SetupPeers::VpngwVpngwIkev1Aggressive => Ike::V1Aggressive,
            SetupPeers::SwanSwan | SetupPeers::VpngwVpngw => Ike::V2,
        }
    }
}

/// What the N-tunnel setup test saw.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupMetrics {
    /// Distinct tunnels the responder reported established within the bounded wait.
    pub established: usize,
    /// From the first initiate to the last tunnel seen established (or to the end of
    /// the wait if not all came up).
    pub seconds: f64,
    /// Responder resident set before the initiator started (configuration loaded), KiB.
    pub rss_before_kib: u64,
    /// Responder peak resident set (VmHWM), KiB.
    pub hwm_kib: u64,
    /// Responder resident set once the tunnels were up, KiB.
    pub rss_after_kib: u64,
    /// Why the wait ended early, if it did (stall, timeout, a process died).
    pub note: Option<String>,
}

impl SetupMetrics {
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.established as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Resident-set growth per established tunnel, KiB.
    pub fn kib_per_tunnel(&self) -> Option<f64> {
        (self.established > 0).then(|| {
            self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / self.established as f64
        })
    }
}

/// One line of the setup table.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupRow {
    pub peers: SetupPeers,
    pub tunnels: usize,
    pub result: Result<SetupMetrics, String>,
}

/// Everything one run produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// `key: value` lines about the machine and the run.
    pub machine: Vec<(String, String)>,
    pub paths: Vec<PathRow>,
    pub setups: Vec<SetupRow>,
    /// Findings made along the way (API creation rates, failures worth reading).
    pub notes: Vec<String>,
}

impl Report {
    fn baseline_path(&self, suite: Option<&str>) -> Option<&PathMetrics> {
        self.paths
            .iter()
            .find(|r| r.setup == Setup::SwanSwan && r.suite == suite)
            .and_then(|r| r.result.as_ref().ok())
    }

    fn baseline_setup(&self, tunnels: usize) -> Option<&SetupMetrics> {
        self.setups
            .iter()
            .find(|r| r.peers == SetupPeers::SwanSwan && r.tunnels == tunnels)
            .and_then(|r| r.result.as_ref().ok())
    }

    /// The whole report as Markdown.
    pub fn markdown(&self, title: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "## {title}\n");
        for (k, v) in &self.machine {
            let _ = writeln!(out, "- {k}: {v}");
        }
        if !self.paths.is_empty() {
            out.push('\n');
            out.push_str(&self.path_table());
        }
        if !self.setups.is_empty() {
            out.push('\n');
            out.push_str(&self.setup_table());
        }
        let goals = self.goals();
        if !goals.is_empty() {
            out.push_str("\nGoals (ratios to strongSwan↔strongSwan in the same run):\n\n");
            out.push_str("| goal | measured | met |\n|---|---|---|\n");
            for (goal, measured, met) in goals {
                let _ = writeln!(out, "| {goal} | {measured} | {met} |");
            }
        }
        if !self.notes.is_empty() {
            out.push_str("\nNotes:\n\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {}", one_line(n));
            }
        }
        out
    }

    fn path_table(&self) -> String {
        let mut out = String::from(
            "| path | suite | TCP Gbit/s median | TCP min–max | ×sw | TCP retr median | UDP Gbit/s | ×sw | UDP loss | ping avg ms | ping p99 ms | ping recv |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.paths {
            let suite = r.suite.unwrap_or("—");
            match &r.result {
                Ok(m) => {
                    let base = self.baseline_path(r.suite);
                    let base_udp = base.and_then(|b| b.udp.as_ref().ok()).map(|u| u.0);
                    let udp = match &m.udp {
                        Ok((bps, loss)) => {
                            format!("{:.3} | {} | {loss:.1}%", bps / 1e9, ratio(*bps, base_udp))
                        }
                        Err(e) => format!("failed: {} | — | —", cell(e)),
                    };
                    let _ = writeln!(
                        out,
                        "| {} | {suite} | {:.3} | {} | {} | {:.0} | {udp} | {:.3} | {:.3} | {}/{} |",
                        r.setup.label(),
                        m.tcp_bps() / 1e9,
                        min_max_gbps(&m.tcp_bps_runs()),
                        ratio(m.tcp_bps(), base.map(PathMetrics::tcp_bps)),
                        m.tcp_retransmits(),
                        m.ping.avg_ms,
                        m.ping.p99_ms,
                        m.ping.received,
                        m.ping.sent,
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        out,
                        "| {} | {suite} | failed: {} ||||||||||",
                        r.setup.label(),
                        cell(e)
                    );
                }
            }
        }
        out
    }

    fn setup_table(&self) -> String {
        let mut out = String::from(
            "| setup (IKEv2 unless said) | tunnels | established | seconds | tunnels/s | ×sw | responder RSS before MiB | VmHWM MiB | RSS after MiB | KiB/tunnel | note |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for r in &self.setups {
            match &r.result {
                Ok(m) => {
                    let base = self
                        .baseline_setup(r.tunnels)
                        .filter(|_| r.peers.compared());
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {:.2} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
                        r.peers.label(),
                        r.tunnels,
                        m.established,
                        m.seconds,
                        m.rate(),
                        ratio(m.rate(), base.map(SetupMetrics::rate)),
                        m.rss_before_kib as f64 / 1024.0,
                        m.hwm_kib as f64 / 1024.0,
                        m.rss_after_kib as f64 / 1024.0,
                        m.kib_per_tunnel()
                            .map_or_else(|| "—".to_string(), |k| format!("{k:.1}")),
                        m.note.as_deref().map(cell).unwrap_or_default(),
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | failed: {} |||||||||",
                        r.peers.label(),
                        r.tunnels,
                        cell(e)
                    );
                }
            }
        }
        out
    }

    /// (goal, measured, met) for each goal of the project that this run measured.
    pub fn goals(&self) -> Vec<(String, String, &'static str)> {
        let mut goals = Vec::new();
        for (suite, want) in [("aes128-sha1", 10.0), ("aes-gcm-128", 15.0)] {
            let ours = self
                .paths
                .iter()
                .find(|r| r.setup == Setup::VpngwVpngw && r.suite == Some(suite));
            let Some(ours) = ours else { continue };
            let goal = format!("vpngw↔vpngw TCP {suite} ≥ {want}× strongSwan↔strongSwan");
            let (measured, runs) = match (&ours.result, self.baseline_path(Some(suite))) {
                (Ok(m), Some(b)) if b.tcp_bps() > 0.0 => (
                    m.tcp_bps() / b.tcp_bps(),
                    runs_phrase(m.tcp.len(), b.tcp.len()),
                ),
                (Ok(_), _) => {
                    goals.push((goal, "no strongSwan baseline in this run".into(), "?"));
                    continue;
                }
                (Err(_), _) => {
                    goals.push((goal, "vpngw↔vpngw failed".into(), "no"));
                    continue;
                }
            };
            goals.push((
                goal,
                format!("{measured:.2}× ({runs})"),
                yes_no(measured >= want),
            ));
        }
        for r in self
            .setups
            .iter()
            .filter(|r| r.peers == SetupPeers::VpngwVpngw)
        {
            let goal = format!("IKEv2 setup rate ≥ 2× strongSwan's ({} tunnels)", r.tunnels);
            match (&r.result, self.baseline_setup(r.tunnels)) {
                (Ok(m), Some(b)) if b.rate() > 0.0 => {
                    let x = m.rate() / b.rate();
                    goals.push((goal, format!("{x:.2}×"), yes_no(x >= 2.0)));
                }
                // strongSwan brought up none (it stalls at 10,000): any rate is more.
                (Ok(m), Some(_)) if m.rate() > 0.0 => goals.push((
                    goal,
                    format!("{:.1}/s against none established", m.rate()),
                    "yes",
                )),
                (Ok(_), _) => goals.push((goal, "no strongSwan baseline in this run".into(), "?")),
                (Err(_), _) => goals.push((goal, "vpngw→vpngw failed".into(), "no")),
            }
            if r.tunnels >= 10_000 {
                let goal = format!("{} tunnels from one peer in < 30 s", r.tunnels);
                match &r.result {
                    Ok(m) => {
                        let ok = m.established >= r.tunnels && m.seconds < 30.0;
                        goals.push((
                            goal,
                            format!("{} up in {:.1} s", m.established, m.seconds),
                            yes_no(ok),
                        ));
                        let goal = "responder RSS growth ≤ 8 KiB per tunnel".to_string();
                        match m.kib_per_tunnel() {
                            Some(k) => goals.push((goal, format!("{k:.1} KiB"), yes_no(k <= 8.0))),
                            None => goals.push((goal, "no tunnel up".into(), "no")),
                        }
                    }
                    Err(_) => goals.push((goal, "failed".into(), "no")),
                }
            }
        }
        goals
    }
}

/// `value / base` as `12.3×`, or `—` without a baseline.
fn ratio(value: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => format!("{:.2}×", value / b),
        _ => "—".into(),
    }
}

/// What a TCP ratio of `ours` runs to `base` runs is made of: `median of 3`, or
/// `1 run` when nothing was repeated.
fn runs_phrase(ours: usize, base: usize) -> String {
    match (ours, base) {
        (1, 1) => "1 run".into(),
        (a, b) if a == b => format!("median of {a}"),
        (a, b) => format!("medians of {a} and {b} runs"),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Text that is safe inside a Markdown table cell: one line, no pipes, bounded length.
pub fn cell(s: &str) -> String {
    let flat = one_line(s).replace('|', "/");
    const MAX: usize = 300;
    if flat.chars().count() > MAX {
        let cut: String = flat.chars().take(MAX).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(tcp: f64) -> PathMetrics {
        PathMetrics {
            tcp: vec![TcpRun {
                bps: tcp,
                retransmits: 3,
            }],
            udp: Ok((tcp / 2.0, 1.25)),
            ping: PingStats {
                sent: 100,
                received: 99,
                avg_ms: 0.1234,
                p99_ms: 0.5,
            },
        }
    }

    fn setup(peers: SetupPeers, tunnels: usize, secs: f64, after: u64) -> SetupRow {
        SetupRow {
            peers,
            tunnels,
            result: Ok(SetupMetrics {
                established: tunnels,
                seconds: secs,
                rss_before_kib: 10_240,
                hwm_kib: after + 100,
                rss_after_kib: after,
                note: None,
            }),
        }
    }

    #[test]
    fn path_ratios_refer_to_the_same_suite() {
        let report = Report {
            paths: vec![
                PathRow {
                    setup: Setup::SwanSwan,
                    suite: Some("aes128-sha1"),
                    result: Ok(metrics(0.32e9)),
                },
                PathRow {
                    setup: Setup::VpngwVpngw,
                    suite: Some("aes128-sha1"),
                    result: Ok(metrics(3.2e9)),
                },
                PathRow {
                    setup: Setup::VpngwVpngw,
                    suite: Some("aes-gcm-128"),
                    result: Ok(PathMetrics {
                        udp: Err("iperf3-udp: still running".into()),
                        ..metrics(1e9)
                    }),
                },
            ],
            ..Report::default()
        };
        let md = report.markdown("t");
        assert!(
            md.contains(
                "| vpngw↔vpngw | aes128-sha1 | 3.200 | — | 10.00× | 3 | 1.600 | 10.00× | 1.2% | 0.123 | 0.500 | 99/100 |"
            ),
            "{md}"
        );
        // No strongSwan row for GCM: no ratio, and the goal is "not measured".
        assert!(
            md.contains("| vpngw↔vpngw | aes-gcm-128 | 1.000 | — | — |"),
            "{md}"
        );
        let goals = report.goals();
        assert_eq!(goals[0].1, "10.00× (1 run)", "{goals:?}");
        assert_eq!(goals[0].2, "yes", "{goals:?}");
        assert_eq!(goals[1].2, "?", "{goals:?}");
    }

    /// Metrics whose TCP runs are `gbps` (in the order run), retransmissions `retr`.
    fn repeated(gbps: &[f64], retr: &[u64]) -> PathMetrics {
        PathMetrics {
            tcp: gbps
                .iter()
                .zip(retr)
                .map(|(g, r)| TcpRun {
                    bps: g * 1e9,
                    retransmits: *r,
                })
                .collect(),
            ..metrics(0.0)
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[5.0]), Some(5.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        // Even: the mean of the middle two, whatever the input order.
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[2.0, 9.0]), Some(5.5));
        let m = repeated(&[2.4, 3.5, 2.6], &[10, 0, 4]);
        assert!((m.tcp_bps() - 2.6e9).abs() < 1.0, "{}", m.tcp_bps());
        assert_eq!(m.tcp_retransmits(), 4.0);
        let m = repeated(&[1.0, 1.0, 1.0, 1.0], &[10, 0, 4, 8]);
        assert_eq!(m.tcp_retransmits(), 6.0);
        assert_eq!(repeated(&[], &[]).tcp_bps(), 0.0);
    }

    #[test]
    fn min_max_is_gbit_with_two_decimals_and_a_dash_for_one_run() {
        assert_eq!(min_max_gbps(&[2.8e9, 3.05e9, 2.61e9]), "2.61–3.05");
        assert_eq!(min_max_gbps(&[0.2204e9, 0.3296e9]), "0.22–0.33");
        assert_eq!(min_max_gbps(&[2.8e9]), "—");
        assert_eq!(min_max_gbps(&[]), "—");
    }

    #[test]
    fn ratios_and_goal_verdicts_come_from_medians() {
        let row = |setup, suite, m| PathRow {
            setup,
            suite: Some(suite),
            result: Ok(m),
        };
        let report = Report {
            paths: vec![
                // strongSwan medians: 0.25 and 0.22 Gbit/s.
                row(
                    Setup::SwanSwan,
                    "aes128-sha1",
                    repeated(&[0.2, 0.3, 0.25], &[100, 300, 200]),
                ),
                row(
                    Setup::SwanSwan,
                    "aes-gcm-128",
                    repeated(&[0.2, 0.25, 0.22], &[1, 2, 3]),
                ),
                // First run alone 2.4 / 0.2 = 12×, but the median is 2.6 / 0.25 = 10.4×.
                row(
                    Setup::VpngwVpngw,
                    "aes128-sha1",
                    repeated(&[2.4, 3.5, 2.6], &[10, 0, 4]),
                ),
                // Means would give 3.367 / 0.2233 = 15.07× (met); medians 3.2 / 0.22 =
                // 14.55× (not met).
                row(
                    Setup::VpngwVpngw,
                    "aes-gcm-128",
                    repeated(&[3.0, 3.9, 3.2], &[0, 0, 0]),
                ),
            ],
            ..Report::default()
        };
        let md = report.markdown("t");
        assert!(
            md.contains(
                "| strongSwan↔strongSwan | aes128-sha1 | 0.250 | 0.20–0.30 | 1.00× | 200 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| vpngw↔vpngw | aes128-sha1 | 2.600 | 2.40–3.50 | 10.40× | 4 |"),
            "{md}"
        );
        assert!(
            md.contains("| vpngw↔vpngw | aes-gcm-128 | 3.200 | 3.00–3.90 | 14.55× | 0 |"),
            "{md}"
        );
        let goals = report.goals();
        assert_eq!(goals.len(), 2, "{goals:?}");
        assert_eq!(goals[0].1, "10.40× (median of 3)");
        assert_eq!(goals[0].2, "yes");
        assert_eq!(goals[1].1, "14.55× (median of 3)");
        assert_eq!(goals[1].2, "no");
        assert!(
            md.contains("| vpngw↔vpngw TCP aes-gcm-128 ≥ 15× strongSwan↔strongSwan | 14.55× (median of 3) | no |"),
            "{md}"
        );
        assert_eq!(runs_phrase(3, 2), "medians of 3 and 2 runs");
    }

    #[test]
    fn setup_goals_use_rate_time_and_memory() {
        let report = Report {
            setups: vec![
                setup(SetupPeers::SwanSwan, 10_000, 100.0, 50_000),
                // 4× the rate, in 25 s, (10240 + 70000 - 10240) / 10000 = 7 KiB per tunnel.
                setup(SetupPeers::VpngwVpngw, 10_000, 25.0, 10_240 + 70_000),
            ],
            ..Report::default()
        };
        let goals = report.goals();
        let find = |s: &str| goals.iter().find(|g| g.0.contains(s)).unwrap().clone();
        assert_eq!(find("setup rate").1, "4.00×");
        assert_eq!(find("setup rate").2, "yes");
        assert_eq!(find("< 30 s").2, "yes");
        assert_eq!(find("KiB per tunnel").1, "7.0 KiB");

        // A baseline that established nothing: vpngw's rate is more than any multiple.
        let mut none = setup(SetupPeers::SwanSwan, 10_000, 342.0, 50_000);
        if let Ok(m) = &mut none.result {
            m.established = 0;
        }
        let stalled = Report {
            setups: vec![
                none,
                setup(SetupPeers::VpngwVpngw, 10_000, 25.0, 10_240 + 70_000),
            ],
            ..Report::default()
        };
        let goals = stalled.goals();
        let rate = goals.iter().find(|g| g.0.contains("setup rate")).unwrap();
        assert_eq!(rate.1, "400.0/s against none established");
        assert_eq!(rate.2, "yes");
        let md = report.markdown("t");
        assert!(
            md.contains("| vpngw→vpngw | 10000 | 10000 | 25.00 | 400.0 | 4.00× |"),
            "{md}"
        );
    }

    #[test]
    fn failures_are_rows_and_cells_stay_on_one_line() {
        let report = Report {
            paths: vec![PathRow {
                setup: Setup::VpngwSwan,
                suite: Some("aes256-sha256"),
                result: Err("tunnel | not up\nafter 30 s".into()),
            }],
            setups: vec![SetupRow {
                peers: SetupPeers::VpngwVpngw,
                tunnels: 100,
                result: Err("boom".into()),
            }],
            notes: vec!["multi\nline".into()],
            ..Report::default()
        };
        let md = report.markdown("t");
        assert!(md.contains("failed: tunnel / not up after 30 s"), "{md}");
        assert!(md.contains("| vpngw→vpngw | 100 | failed: boom"), "{md}");
        assert!(md.contains("- multi line"), "{md}");
        assert_eq!(cell(&"x".repeat(400)).chars().count(), 301);
    }

    #[test]
    fn per_tunnel_memory_needs_a_tunnel() {
        let mut m = SetupMetrics {
            established: 0,
            seconds: 0.0,
            rss_before_kib: 100,
            hwm_kib: 50,
            rss_after_kib: 50,
            note: None,
        };
        assert_eq!(m.kib_per_tunnel(), None);
        assert_eq!(m.rate(), 0.0);
        m.established = 10;
        m.seconds = 2.0;
        // RSS shrank: growth is zero, not negative.
        assert_eq!(m.kib_per_tunnel(), Some(0.0));
        assert_eq!(m.rate(), 5.0);
    }
}
