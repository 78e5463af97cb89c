//! An FRR bgpd instance inside a namespace (LAB.md).
//!
//! `-N <name>` gives the instance its own path space (`/var/run/frr/<name>` for the pid
//! file and vty sockets, `/etc/frr/<name>` for vtysh.conf); `-Z` runs bgpd without zebra,
//! so routes are exchanged but not installed in the kernel.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cmd::{run, wait_until};
use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::process::Process;

pub const BGPD: &str = "/usr/lib/frr/bgpd";

/// How long bgpd may take to answer vtysh.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running bgpd. Killed on Drop, its /var/run/frr and /etc/frr directories removed.
#[derive(Debug)]
pub struct Frr {
    name: String,
    run_dir: PathBuf,
    etc_dir: PathBuf,
    process: Process,
}

impl Frr {
    /// Starts bgpd in `ns` with `config` (see [`BgpConfig::render`]); logs go to
    /// `<log_dir>/bgpd.std{out,err}`. The instance is named after the namespace.
    pub fn start(ns: &Netns, log_dir: &Path, config: &str) -> Result<Frr> {
        let name = ns.name().to_owned();
        let run_dir = Path::new("/var/run/frr").join(&name);
        let etc_dir = Path::new("/etc/frr").join(&name);
        std::fs::create_dir_all(&run_dir)?;
        std::fs::create_dir_all(&etc_dir)?;
        // bgpd drops to the frr user before it reads its config and creates sockets.
        let conf = etc_dir.join("bgpd.conf");
        std::fs::write(&conf, config)?;
        std::fs::write(etc_dir.join("vtysh.conf"), "")?;
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644))?;
        for dir in [&run_dir, &etc_dir] {
            run(Command::new("chown").args(["-R", "frr:frr"]).arg(dir))?;
        }
        let mut cmd = ns.command(BGPD);
        cmd.args(["-N", &name, "-Z", "-P", "0", "--log", "stdout", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(run_dir.join("bgpd.pid"));
        let process = match Process::spawn(cmd, log_dir, "bgpd") {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                let _ = std::fs::remove_dir_all(&etc_dir);
                return Err(e);
            }
        };
        let mut frr = Frr {
            name,
            run_dir,
            etc_dir,
            process,
        };
        wait_until(START_TIMEOUT, "bgpd's vty socket", || {
            frr.process.ensure_running()?;
            Ok(frr.vtysh("show bgp summary").ok())
        })?;
        Ok(frr)
    }

    /// The `-N` instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Runs one vtysh command (`show ...`) and returns its output.
    pub fn vtysh(&self, cmd: &str) -> Result<String> {
        self.vtysh_lines(&[cmd])
    }

    /// Runs several vtysh commands in one session, e.g.
    /// `["configure terminal", "router bgp 65001", "network 10.9.0.0/24"]`.
    pub fn vtysh_lines(&self, cmds: &[&str]) -> Result<String> {
        let mut c = Command::new("vtysh");
        c.args(["-N", &self.name]);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        run(&mut c)
    }

    /// The BGP FSM state of `neighbor` (`Established`, `Active`, ...).
    pub fn neighbor_state(&self, neighbor: &str) -> Result<String> {
        let out = self.vtysh(&format!("show bgp neighbors {neighbor} json"))?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| LabError::Parse {
            what: "show bgp neighbors json".into(),
            detail: e.to_string(),
        })?;
        Ok(v[neighbor]["bgpState"].as_str().unwrap_or("").to_owned())
    }

    /// Waits until the session with `neighbor` is Established.
    pub fn wait_bgp_established(&self, neighbor: &str, timeout: Duration) -> Result<()> {
        wait_until(
            timeout,
            &format!("BGP session with {neighbor} Established"),
            || Ok((self.neighbor_state(neighbor)? == "Established").then_some(())),
        )
    }

    /// Prefixes in the IPv4 unicast BGP table (`show ip bgp json`).
    pub fn bgp_prefixes(&self) -> Result<Vec<String>> {
        let out = self.vtysh("show ip bgp json")?;
        parse_bgp_prefixes(&out)
    }

    /// Waits until `prefix` is in the BGP table.
    pub fn wait_prefix(&self, prefix: &str, timeout: Duration) -> Result<()> {
        wait_until(timeout, &format!("{prefix} in the BGP table"), || {
            Ok(self
                .bgp_prefixes()?
                .iter()
                .any(|p| p == prefix)
                .then_some(()))
        })
    }

    /// What bgpd printed (its log).
    pub fn log(&self) -> String {
        self.process.stdout()
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_dir_all(&self.etc_dir);
    }
}

/// A minimal bgpd.conf: one AS, eBGP/iBGP neighbors, originated networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpConfig {
    pub asn: u32,
    pub router_id: String,
    /// (address, remote AS).
    pub neighbors: Vec<(String, u32)>,
    /// Prefixes to originate (`network`); bgpd runs without zebra, so they need not be
    /// in any routing table.
    pub networks: Vec<String>,
    /// Keepalive and hold time in seconds.
    pub timers: (u32, u32),
}

impl BgpConfig {
    pub fn new(asn: u32, router_id: &str) -> BgpConfig {
        BgpConfig {
            asn,
            router_id: router_id.to_owned(),
            neighbors: Vec::new(),
            networks: Vec::new(),
            timers: (10, 30),
        }
    }

    pub fn neighbor(mut self, addr: &str, remote_as: u32) -> BgpConfig {
        self.neighbors.push((addr.to_owned(), remote_as));
        self
    }

    pub fn network(mut self, prefix: &str) -> BgpConfig {
        self.networks.push(prefix.to_owned());
        self
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "log stdout informational\n!\nrouter bgp {}\n bgp router-id {}\n \
             no bgp ebgp-requires-policy\n no bgp network import-check\n",
            self.asn, self.router_id
        );
        let (keepalive, hold) = self.timers;
        for (addr, remote_as) in &self.neighbors {
            s.push_str(&format!(
                " neighbor {addr} remote-as {remote_as}\n neighbor {addr} timers {keepalive} {hold}\n \
                 neighbor {addr} timers connect 1\n"
            ));
        }
        s.push_str(" address-family ipv4 unicast\n");
        for n in &self.networks {
            s.push_str(&format!("  network {n}\n"));
        }
        s.push_str(" exit-address-family\n!\n");
        s
    }
}

fn parse_bgp_prefixes(json: &str) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| LabError::Parse {
        what: "show ip bgp json".into(),
        detail: e.to_string(),
    })?;
    Ok(v["routes"]
        .as_object()
        .map(|routes| routes.keys().cloned().collect())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_minimal_config() {
        let c = BgpConfig::new(65001, "10.99.0.1")
            .neighbor("10.99.0.2", 65002)
            .network("10.1.0.0/24")
            .render();
        assert!(c.contains("router bgp 65001\n bgp router-id 10.99.0.1\n"));
        assert!(c.contains(" neighbor 10.99.0.2 remote-as 65002\n"));
        assert!(c.contains(" neighbor 10.99.0.2 timers 10 30\n"));
        assert!(c.contains("  network 10.1.0.0/24\n"));
    }

    #[test]
    fn parses_bgp_table_prefixes() {
        let json = r#"{"vrfId":0,"routerId":"10.99.0.2","routes":{"10.1.0.0/24":[{"valid":true}],"10.2.0.0/24":[{"valid":true}]}}"#;
        let mut p = parse_bgp_prefixes(json).unwrap();
        p.sort();
        assert_eq!(p, vec!["10.1.0.0/24", "10.2.0.0/24"]);
        assert!(parse_bgp_prefixes("not json").is_err());
    }
}
