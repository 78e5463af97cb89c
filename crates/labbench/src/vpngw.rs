//! `vpngw serve` as a process in a lab namespace, configured over its HTTP API with the
//! admin token — as an operator would.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use lab::{Netns, Process};
use serde_json::{Value, json};

use crate::measure::{check_interrupted, sleep};

/// A running `vpngw serve`; SIGTERM (then SIGKILL) on Drop.
pub struct Serve {
    process: Process,
    port: u16,
    token: String,
}

/// How a gateway negotiates in a benchmark: the API names of one suite.
#[derive(Debug, Clone, Copy)]
pub struct Crypto {
    pub ike_encryption: &'static str,
    pub ike_integrity: &'static str,
    pub ipsec_encryption: &'static str,
    pub ipsec_integrity: &'static str,
}

/// How [`Serve::start`] runs `vpngw serve`.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// The API's port on the namespace's loopback.
    pub port: u16,
    /// With the gateway node (else `--no-node`: the controller alone).
    pub node: bool,
    /// Names the process in logs and errors.
    pub label: &'a str,
    /// Confine the whole process to this CPU (`taskset -c`); see `--pin`.
    pub cpu: Option<usize>,
}

/// `program` in `ns`, under `taskset -c CPU` when `cpu` is given: every thread the
/// process starts inherits the mask, and vpngw sizes its data plane by it (one worker).
pub fn pinned(ns: &Netns, cpu: Option<usize>, program: &str) -> std::process::Command {
    match cpu {
        Some(c) => {
            let mut cmd = ns.command("taskset");
            cmd.args(["-c", &c.to_string(), program]);
            cmd
        }
        None => ns.command(program),
    }
}

impl Serve {
    /// Starts `bin --data-dir <data_dir> serve --listen 127.0.0.1:<port>` in `ns` (with
    /// `--no-node` unless `node`) and waits (bounded) until it answers /healthz.
    pub fn start(
        ns: &Netns,
        bin: &Path,
        data_dir: &Path,
        log_dir: &Path,
        launch: Launch<'_>,
    ) -> Result<Serve> {
        let Launch {
            port,
            node,
            label,
            cpu,
        } = launch;
        std::fs::create_dir_all(data_dir)?;
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = pinned(ns, cpu, &bin.to_string_lossy());
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--listen", &listen]);
        if !node {
            cmd.arg("--no-node");
        }
        // Plain text logs: the tunnel counter reads them.
        cmd.env("NO_COLOR", "1");
        let mut process = Process::spawn(cmd, log_dir, label)?;
        let token_file = data_dir.join("admin.token");
        let url = format!("http://{listen}/healthz");
        let start = Instant::now();
        loop {
            check_interrupted()?;
            process.ensure_running()?;
            let healthy = ns.run_in(|| {
                ureq::get(&url)
                    .timeout(Duration::from_secs(2))
                    .call()
                    .is_ok()
            })?;
            if healthy && token_file.exists() {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("{label} not healthy after 30 s:\n{}", process.log_tail(20));
            }
            sleep(Duration::from_millis(100))?;
        }
        let token = std::fs::read_to_string(&token_file)?.trim().to_string();
        Ok(Serve {
            process,
            port,
            token,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.process.stderr_path().to_owned()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    pub fn ensure_running(&mut self) -> Result<()> {
        Ok(self.process.ensure_running()?)
    }

    /// SIGTERM and wait (the node deletes its SAs on the way out).
    pub fn stop(mut self) {
        self.process.stop();
    }

    /// Runs `f` with an API client inside `ns` (one thread, one keep-alive connection).
    pub fn with_client<T: Send>(
        &self,
        ns: &Netns,
        f: impl FnOnce(&Client) -> Result<T> + Send,
    ) -> Result<T> {
        let client = Client {
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
            base: format!("http://127.0.0.1:{}", self.port),
            auth: format!("Bearer {}", self.token),
        };
        ns.run_in(|| f(&client))?
    }

    pub fn get(&self, ns: &Netns, path: &str) -> Result<Value> {
        self.with_client(ns, |c| c.get(path))
    }

    /// Creates a gateway on `address` serving `local_networks`; returns its ID.
    pub fn gateway(&self, ns: &Netns, address: &str, local_networks: &[&str]) -> Result<String> {
        self.with_client(ns, |c| {
            id(&c.post(
                "/v1/vpn-gateways",
                &json!({"name": "bench-gw", "ipsec_addresses": [address], "local_networks": local_networks}),
            )?)
        })
    }

    pub fn customer_gateway(&self, ns: &Netns, address: &str) -> Result<String> {
        self.with_client(ns, |c| {
            id(&c.post(
                "/v1/customer-gateways",
                &json!({"name": "bench-peer", "ip_address": address}),
            )?)
        })
    }

    /// Waits (bounded) until tunnel 1 of `conn` is `established`; on timeout the error
    /// carries the tunnel status and the connection log.
    pub fn wait_established(&self, ns: &Netns, conn: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            check_interrupted()?;
            let t = self.get(ns, &format!("/v1/vpn-connections/{conn}"))?["tunnels"][0].clone();
            if t["status"]["phase"] == "established" {
                return Ok(());
            }
            if start.elapsed() > timeout {
                let logs = self
                    .get(ns, &format!("/v1/vpn-connections/{conn}/logs?limit=20"))
                    .unwrap_or_default();
                bail!(
                    "tunnel not established after {timeout:?}: status {}; log {}",
                    t["status"],
                    logs["items"]
                );
            }
            sleep(Duration::from_millis(200))?;
        }
    }
}

/// A single-tunnel connection to create.
#[derive(Debug, Clone, Copy)]
pub struct ConnSpec<'a> {
    pub name: &'a str,
    pub gateway: &'a str,
    pub customer_gateway: &'a str,
    pub psk: &'a str,
    pub crypto: Crypto,
    /// `ike.local_id` (default: the gateway's address).
    pub local_id: Option<&'a str>,
    /// `ike.remote_id` (default: the customer gateway's address).
    pub remote_id: Option<&'a str>,
    pub effective_immediately: bool,
    /// Which IKE the connection speaks.
    pub ike: Ike,
}

/// IKEv2 (the default), or IKEv1 in one of its phase 1 modes (`ike.version`,
/// `ike.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ike {
    V2,
    V1Main,
    V1Aggressive,
}

/// An API connection from inside the namespace.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Client {
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let r = self
            .agent
            .post(&format!("{}{path}", self.base))
            .set("Authorization", &self.auth)
            .send_json(body.clone());
        answer("POST", path, r)
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        let r = self
            .agent
            .get(&format!("{}{path}", self.base))
            .set("Authorization", &self.auth)
            .call();
        answer("GET", path, r)
    }

    /// The values of `series` (each spelled with its labels, as in the exposition
    /// format) in one `GET /metrics` scrape; 0 for a series that is absent.
    pub fn metrics(&self, series: &[&str]) -> Result<Vec<u64>> {
        let mut text = String::new();
        // Not `into_string`: its 10 MB cap is below the per-tunnel series of 10,000
        // tunnels.
        self.agent
            .get(&format!("{}/metrics", self.base))
            .set("Authorization", &self.auth)
            .call()
            .map_err(|e| anyhow!("GET /metrics: {e}"))?
            .into_reader()
            .read_to_string(&mut text)?;
        Ok(series
            .iter()
            .map(|s| lab::vpngw::sample(&text, s))
            .collect())
    }

    /// Every item of a paginated collection (`page_size` 1000).
    pub fn list_all(&self, collection: &str) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        // 10,000 pages of 1000 is far beyond any benchmark: the bound only stops a loop.
        for _ in 0..10_000 {
            let path = match &token {
                Some(t) => format!("{collection}?page_size=1000&page_token={t}"),
                None => format!("{collection}?page_size=1000"),
            };
            let page = self.get(&path)?;
            if let Some(a) = page["items"].as_array() {
                items.extend(a.iter().cloned());
            }
            match page["next_page_token"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => return Ok(items),
            }
        }
        bail!("{collection}: too many pages")
    }

    /// Creates a single-tunnel connection in destination routing mode; returns its ID.
    pub fn connection(&self, spec: &ConnSpec<'_>) -> Result<String> {
        let c = spec.crypto;
        let mut ike = json!({
            "encryption": c.ike_encryption,
            "integrity": c.ike_integrity,
            "dh_group": "group2",
        });
        if let Some(l) = spec.local_id {
            ike["local_id"] = json!(l);
        }
        if let Some(r) = spec.remote_id {
            ike["remote_id"] = json!(r);
        }
        match spec.ike {
            Ike::V2 => {}
            Ike::V1Main => ike["version"] = json!("ikev1"),
            Ike::V1Aggressive => {
                ike["version"] = json!("ikev1");
                ike["mode"] = json!("aggressive");
            }
        }
        id(&self.post(
            "/v1/vpn-connections",
            &json!({
                "name": spec.name,
                "vpn_gateway_id": spec.gateway,
                "effective_immediately": spec.effective_immediately,
                "tunnels": [{
                    "customer_gateway_id": spec.customer_gateway,
                    "pre_shared_key": spec.psk,
                    "ike": ike,
                    "ipsec": {
                        "encryption": c.ipsec_encryption,
                        "integrity": c.ipsec_integrity,
                        "pfs": "group2",
                    },
                }],
            }),
        )?)
    }

    pub fn route(&self, gateway: &str, destination: &str, conn: &str) -> Result<()> {
        self.post(
            &format!("/v1/vpn-gateways/{gateway}/routes"),
            &json!({"destination": destination, "next_hop": conn}),
        )
        .map(drop)
    }
}

fn answer(method: &str, path: &str, r: Result<ureq::Response, ureq::Error>) -> Result<Value> {
    match r {
        Ok(resp) => {
            let text = resp.into_string()?;
            if text.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON"))
        }
        Err(ureq::Error::Status(code, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            Err(anyhow!("{method} {path}: {code} {text}"))
        }
        Err(e) => Err(anyhow!("{method} {path}: {e}")),
    }
}

fn id(v: &Value) -> Result<String> {
    v["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no id in {v}"))
}
