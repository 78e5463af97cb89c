//! The benchmark's charon: the baseline every ratio refers to, for the data path and the
//! many-tunnel setup test.
//!
//! `lab::StrongSwan` writes its own strongswan.conf (made for interop tests); the
//! benchmark needs other settings, so it starts charon the same way (private `/run`,
//! `STRONGSWAN_CONF`, vici socket in its own directory) with this file instead:
//!
//! - The lab's plugins with `openssl` loaded first ([`bench_plugins`]): charon's crypto
//!   factory prefers the implementation registered first, and the lab's order (`aes`,
//!   `sha1`, …, `gcm` before `openssl`) makes charon use its portable C AES and software
//!   GHASH. With OpenSSL first charon gets AES-NI, PCLMULQDQ and SHA-NI, as a strongSwan
//!   would in production: a fair baseline (measured: AES-GCM through the lab's order ran
//!   at 0.03 Gbit/s).
//! - `block_threshold`, `cookie_threshold` and `cookie_threshold_ip` raised: by default a
//!   responder refuses more than 5 half-open IKE SAs per peer address and demands
//!   COOKIEs beyond 3 per address (30 in all) — denial-of-service protection that turns
//!   "N tunnels from one peer" into a test of retransmission timers (a first run with
//!   only the first two raised brought up 0 of 10,000). vpngw has no such limit yet, so
//!   both run without one.
//! - `ikesa_table_size = 4096`, `ikesa_table_segments = 16`: the default (1, 1) makes
//!   the IKE SA table a single list; strongSwan's documentation says to raise it for
//!   many SAs, and the baseline should be a strongSwan sized for the job.
//! - `ike_name = yes` in the log, so each "CHILD_SA ... established" line names its
//!   connection and the counter can count distinct tunnels; `ike = 1` (lab: 2) to keep
//!   the logging cost close to vpngw's info level.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use lab::{Netns, Process, strongswan::PLUGINS};

/// The lab's plugin list with `openssl` moved right after the entropy plugins (`random`,
/// `nonce`), so OpenSSL's AES-NI/PCLMUL/SHA-NI code wins over the portable plugins.
pub fn bench_plugins() -> String {
    let mut names: Vec<&str> = PLUGINS
        .split_whitespace()
        .filter(|p| *p != "openssl")
        .collect();
    let at = names
        .iter()
        .position(|p| *p == "nonce")
        .map_or(0, |i| i + 1);
    names.insert(at, "openssl");
    names.join(" ")
}

use crate::measure::{run_bounded, sleep};

pub struct Charon {
    dir: PathBuf,
    conf: PathBuf,
    process: Process,
}

impl Charon {
    /// Starts charon in `ns` with its files in `dir`; with `cpu`, confined to that CPU
    /// (`--pin`).
    pub fn start(ns: &Netns, dir: &Path, cpu: Option<usize>) -> Result<Charon> {
        lab::strongswan::check_plugins()?;
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("strongswan.conf");
        std::fs::write(&conf, conf_text(dir))?;
        let mut cmd = crate::vpngw::pinned(ns, cpu, "unshare");
        cmd.args([
            "-m",
            "sh",
            "-c",
            &format!(
                "mount -t tmpfs none /run && exec {}",
                lab::strongswan::CHARON
            ),
        ])
        .env("STRONGSWAN_CONF", &conf);
        let process = Process::spawn(cmd, dir, "charon")?;
        let mut c = Charon {
            dir: dir.to_owned(),
            conf,
            process,
        };
        for _ in 0..100 {
            c.process.ensure_running()?;
            if c.swanctl(&["--stats"], Duration::from_secs(5)).is_ok() {
                return Ok(c);
            }
            sleep(Duration::from_millis(100))?;
        }
        bail!("charon's vici socket did not answer within 10 s")
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("charon.log")
    }

    pub fn ensure_running(&mut self) -> Result<()> {
        Ok(self.process.ensure_running()?)
    }

    pub fn swanctl(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let mut cmd = Command::new("swanctl");
        cmd.args(args).env("STRONGSWAN_CONF", &self.conf);
        run_bounded(cmd, &self.dir, "swanctl", timeout)
    }

    /// Writes and loads `swanctl_conf` (bounded by `timeout`: thousands of connections
    /// take a while).
    pub fn load(&self, swanctl_conf: &str, timeout: Duration) -> Result<()> {
        let path = self.dir.join("swanctl.conf");
        std::fs::write(&path, swanctl_conf)?;
        self.swanctl(
            &["--load-all", "--clear", "--file", &path.to_string_lossy()],
            timeout,
        )
        .map(drop)
    }

    /// Initiates CHILD_SA `child` (and its IKE SA); returns when it is up or failed.
    pub fn initiate(&self, child: &str) -> Result<()> {
        self.swanctl(
            &["--initiate", "--child", child, "--timeout", "20"],
            Duration::from_secs(30),
        )
        .map(drop)
    }

    /// Waits until at least one CHILD_SA is installed, at most `timeout`.
    pub fn wait_installed(&mut self, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            if self.installed_children(Duration::from_secs(10))? > 0 {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                bail!("no CHILD_SA installed within {timeout:?}");
            }
            sleep(Duration::from_millis(200))?;
        }
    }

    /// Installed CHILD_SAs as `swanctl --list-sas` shows them.
    pub fn installed_children(&self, timeout: Duration) -> Result<usize> {
        let out = self.swanctl(&["--list-sas"], timeout)?;
        Ok(out
            .lines()
            .filter(|l| l.contains("INSTALLED, TUNNEL"))
            .count())
    }
}

fn conf_text(dir: &Path) -> String {
    let d = dir.display();
    let plugins = bench_plugins();
    format!(
        "charon {{
  load = {plugins}
  install_routes = yes
  block_threshold = 1000000
  cookie_threshold = 1000000
  cookie_threshold_ip = 1000000
  ikesa_table_size = 4096
  ikesa_table_segments = 16
  filelog {{
    clog {{
      path = {d}/charon.log
      time_format = %H:%M:%S
      flush_line = yes
      ike_name = yes
      default = 1
      ike = 1
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{d}/charon.vici
    }}
  }}
}}
swanctl {{
  socket = unix://{d}/charon.vici
}}
"
    )
}
