//! strongSwan's legacy stack inside a namespace: `starter` reads an ipsec.conf, starts
//! charon and loads the `conn` sections over the stroke socket; charon's stroke plugin
//! reads the ipsec.secrets.
//!
//! Like [`crate::StrongSwan`], the instance gets a private `/run` (`unshare -m` plus a
//! tmpfs: starter and charon keep their pid files and the stroke socket there) and its
//! own `strongswan.conf` through `STRONGSWAN_CONF`, which also points the stroke plugin
//! at the instance's ipsec.secrets. `starter --conf` names the ipsec.conf, so nothing
//! under /etc is read or written. Needs Debian's strongswan-starter.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd::wait_until;
use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::process::{PANIC_TAIL_LINES, Process, read_lossy, tail};
use crate::strongswan::{PLUGINS, check_plugins};

/// Where Debian's strongswan-starter installs starter and stroke.
pub const STARTER: &str = "/usr/lib/ipsec/starter";
pub const STROKE: &str = "/usr/lib/ipsec/stroke";

/// How long starter may take until charon has read every `conn`.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running starter (and the charon it started). Stopped on Drop; on a panicking Drop
/// the tail of `charon.log` is printed.
#[derive(Debug)]
pub struct Starter {
    dir: PathBuf,
    process: Process,
}

impl Starter {
    /// Writes `ipsec_conf` and `ipsec_secrets` to `dir` (created; one directory per
    /// instance), starts starter in `ns` and waits until charon has added the
    /// configuration of every `conn` section.
    pub fn start(ns: &Netns, dir: &Path, ipsec_conf: &str, ipsec_secrets: &str) -> Result<Starter> {
        if !Path::new(STARTER).exists() {
            return Err(LabError::Invalid(format!(
                "{STARTER} is missing (apt-get install strongswan-starter)"
            )));
        }
        check_plugins()?;
        std::fs::create_dir_all(dir)?;
        let conf_path = dir.join("ipsec.conf");
        std::fs::write(&conf_path, ipsec_conf)?;
        std::fs::write(dir.join("ipsec.secrets"), ipsec_secrets)?;
        let swan_conf = dir.join("strongswan.conf");
        std::fs::write(&swan_conf, strongswan_conf(dir))?;
        let mut cmd = ns.command("unshare");
        cmd.args([
            "-m",
            "sh",
            "-c",
            &format!(
                "mount -t tmpfs none /run && exec {STARTER} --nofork --conf {}",
                conf_path.display()
            ),
        ])
        .env("STRONGSWAN_CONF", &swan_conf);
        let process = Process::spawn(cmd, dir, "starter")?;
        let mut starter = Starter {
            dir: dir.to_owned(),
            process,
        };
        let names = conn_names(ipsec_conf);
        wait_until(
            START_TIMEOUT,
            "charon adds every conn of ipsec.conf",
            || {
                starter.process.ensure_running()?;
                let log = read_lossy(&starter.log_path());
                Ok(names
                    .iter()
                    .all(|n| log.contains(&format!("added configuration '{n}'")))
                    .then_some(()))
            },
        )?;
        Ok(starter)
    }

    /// The instance's directory (ipsec.conf, ipsec.secrets, strongswan.conf, charon.log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("charon.log")
    }

    /// starter's pid; starter, charon and the stroke socket share its mount namespace.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Runs `stroke <args>` (e.g. `statusall`, `up <conn>`) against this instance.
    pub fn stroke(&self, args: &[&str]) -> Result<String> {
        let pid = self.pid().to_string();
        let mut cmd = std::process::Command::new("nsenter");
        cmd.args(["-t", &pid, "-m", STROKE]).args(args);
        crate::cmd::run(&mut cmd)
    }

    /// The `conn` names with an ESTABLISHED IKE SA and an INSTALLED CHILD SA, from
    /// `stroke statusall`.
    pub fn established(&self) -> Result<Vec<String>> {
        Ok(parse_established(&self.stroke(&["statusall"])?))
    }

    /// Waits until every conn of `names` is established with an installed CHILD SA.
    pub fn wait_established(&self, names: &[&str], timeout: Duration) -> Result<()> {
        wait_until(
            timeout,
            &format!("stroke shows {} established", names.join(", ")),
            || {
                let up = self.established()?;
                Ok(names
                    .iter()
                    .all(|n| up.iter().any(|u| u == n))
                    .then_some(()))
            },
        )
    }

    /// The last `lines` lines of charon.log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&read_lossy(&self.log_path()), lines)
    }
}

impl Drop for Starter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- charon.log {}:\n{}",
                self.log_path().display(),
                self.log_tail(PANIC_TAIL_LINES)
            );
        }
        // The Process field then stops starter, which stops charon.
    }
}

/// The `conn` section names of an ipsec.conf (`%default` excluded).
pub fn conn_names(ipsec_conf: &str) -> Vec<String> {
    ipsec_conf
        .lines()
        .filter_map(|l| l.strip_prefix("conn "))
        .map(|n| n.trim().to_owned())
        .filter(|n| n != "%default")
        .collect()
}

/// Conns with both `<name>[n]: ESTABLISHED` and `<name>{m}:  INSTALLED` lines.
pub fn parse_established(statusall: &str) -> Vec<String> {
    let mut ike = Vec::new();
    let mut child = Vec::new();
    for line in statusall.lines().map(str::trim_start) {
        if let Some((name, rest)) = line.split_once('[')
            && rest
                .split_once("]: ")
                .is_some_and(|(_, s)| s.starts_with("ESTABLISHED"))
        {
            ike.push(name.to_owned());
        }
        if let Some((name, rest)) = line.split_once('{')
            && rest
                .split_once("}:")
                .is_some_and(|(_, s)| s.trim_start().starts_with("INSTALLED"))
        {
            child.push(name.to_owned());
        }
    }
    ike.retain(|n| child.contains(n));
    ike.dedup();
    ike
}

/// charon with the stroke plugin (which reads `<dir>/ipsec.secrets`) instead of vici,
/// kernel-libipsec for ESP and a `charon.log` like [`crate::StrongSwan`]'s.
pub fn strongswan_conf(dir: &Path) -> String {
    let d = dir.display();
    let plugins = PLUGINS.replace(" vici", "");
    format!(
        "charon {{
  load = {plugins} stroke
  install_routes = yes
  filelog {{
    clog {{
      path = {d}/charon.log
      time_format = %H:%M:%S
      flush_line = yes
      default = 1
      ike = 2
    }}
  }}
  plugins {{
    stroke {{
      secrets_file = {d}/ipsec.secrets
    }}
  }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_names_skip_default() {
        let c = "config setup\n\nconn %default\n    ike=x\n\nconn a-t1\n    right=1\nconn b\n";
        assert_eq!(conn_names(c), vec!["a-t1", "b"]);
    }

    #[test]
    fn established_needs_ike_and_child() {
        let s = "Security Associations (2 up, 0 connecting):
   office-t2[2]: ESTABLISHED 3 seconds ago, 198.51.100.1[198.51.100.1]...192.0.2.2[192.0.2.2]
   office-t2[2]: IKEv2 SPIs: 11_i* 22_r, pre-shared key reauthentication in 2 hours
   office-t1[1]: ESTABLISHED 3 seconds ago, 198.51.100.1[198.51.100.1]...192.0.2.1[192.0.2.1]
   office-t1{1}:  INSTALLED, TUNNEL, reqid 1, ESP in UDP SPIs: c1_i c2_o
   office-t1{1}:   0.0.0.0/0 === 172.16.0.0/16
   office-t3[3]: CONNECTING, 198.51.100.1[%any]...192.0.2.3[%any]
";
        assert_eq!(parse_established(s), vec!["office-t1"]);
    }

    #[test]
    fn conf_has_stroke_and_secrets() {
        let c = strongswan_conf(Path::new("/tmp/s"));
        assert!(c.contains("secrets_file = /tmp/s/ipsec.secrets"));
        assert!(c.contains(" stroke\n") && !c.contains("vici"));
    }
}
