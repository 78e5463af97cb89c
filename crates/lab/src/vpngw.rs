//! `vpngw serve` as a lab participant: started in a namespace, driven over its HTTP API.
//!
//! Every interop test of the real binary needs the same steps — start it with its own
//! data directory, wait for `/healthz` and the admin token it writes, call the API with
//! that token from inside the namespace, poll a tunnel's status until a condition holds
//! — so they live here once. [`Vpngw`] stops the process on Drop (SIGTERM, then SIGKILL,
//! through [`Process`]).
//!
//! [`ApiClient`] is the API side alone, for tests that run the API in-process (the node
//! crate's tests) and for [`Vpngw`], which dereferences to it. Its request helpers
//! ([`ApiClient::post`], [`ApiClient::get`], …) are assertions: a non-2xx answer panics
//! with the method, path, status and body, which is what a test wants to see;
//! [`ApiClient::call`] returns the status for tests that expect an error. When a test
//! panics, the [`Process`] prints vpngw's log tail as it is dropped.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Netns, Process, Result, Topology, wait_until};

/// How long `vpngw serve` may take to answer `/healthz` after it is spawned.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound of one HTTP request to the API.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`ApiClient::wait_tunnels`] polls.
const POLL: Duration = Duration::from_millis(100);

/// A running `vpngw serve` inside a namespace; its API through [`Deref`] to
/// [`ApiClient`].
pub struct Vpngw {
    api: ApiClient,
    process: Process,
    data_dir: PathBuf,
}

/// The vpngw HTTP API at `listen` inside a namespace, called with the admin token.
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// The namespace handle (`/run/netns/<name>`).
    ns: PathBuf,
    listen: String,
    token: String,
}

/// How to start `vpngw serve`.
#[derive(Debug, Clone)]
pub struct VpngwConfig<'p> {
    /// The `vpngw` binary (`env!("CARGO_BIN_EXE_vpngw")` in the vpngw crate's tests).
    pub bin: &'p str,
    /// Its data directory is `<dir>/data`; its output goes to files in `dir`.
    pub dir: &'p Path,
    /// The API's listen address (loopback of the namespace).
    pub listen: &'p str,
    /// Extra arguments after `serve --listen ADDR` (e.g. `--no-node`).
    pub extra_args: &'p [&'p str],
}

impl Vpngw {
    /// Spawns `vpngw --data-dir <dir>/data serve --listen <listen>` in `ns` and waits
    /// until it is healthy and has written its admin token.
    pub fn start(ns: &Netns, config: &VpngwConfig<'_>) -> Result<Vpngw> {
        let data_dir = config.dir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let d = data_dir.to_string_lossy().to_string();
        let mut args = vec![
            config.bin,
            "--data-dir",
            &d,
            "serve",
            "--listen",
            config.listen,
        ];
        args.extend_from_slice(config.extra_args);
        let mut process = ns.spawn(&args, config.dir, "vpngw-serve")?;
        let token_file = data_dir.join("admin.token");
        let health = format!("http://{}/healthz", config.listen);
        wait_until(START_TIMEOUT, "vpngw serve healthy", || {
            process.ensure_running()?;
            let healthy = ns.run_in(|| {
                ureq::get(&health)
                    .timeout(Duration::from_secs(2))
                    .call()
                    .is_ok()
            })?;
            Ok((healthy && token_file.exists()).then_some(()))
        })?;
        let token = std::fs::read_to_string(&token_file)?.trim().to_string();
        Ok(Vpngw {
            api: ApiClient::new(ns, config.listen, &token),
            process,
            data_dir,
        })
    }

    /// `vpngw serve` with the node in the topology's gateway namespace, its files in the
    /// topology's work directory (`vpngw/`): what every single-gateway interop test runs.
    pub fn start_on_gw(topo: &Topology, bin: &str, listen: &str) -> Result<Vpngw> {
        let dir = topo.workdir.subdir("vpngw")?;
        let config = VpngwConfig {
            bin,
            dir: &dir,
            listen,
            extra_args: &[],
        };
        Vpngw::start(&topo.gw, &config)
    }

    /// The data directory (`store.db`, `admin.token`, …).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process, e.g. for its log tail or to check it still runs.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// The last `lines` lines of its output (stderr carries the tracing log).
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Kills it with SIGKILL, as a crash would: it deletes nothing at its peers.
    /// Returns once it has exited; its data directory stays for a restart.
    pub fn crash(mut self) -> Result<()> {
        self.process.signal(nix::sys::signal::Signal::SIGKILL)?;
        self.process.wait_exit(START_TIMEOUT).map(drop)
    }
}

impl Deref for Vpngw {
    type Target = ApiClient;
    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl ApiClient {
    /// The API listening on `listen` (e.g. `127.0.0.1:9280`) inside `ns`.
    pub fn new(ns: &Netns, listen: &str, token: &str) -> ApiClient {
        ApiClient {
            ns: ns.path(),
            listen: listen.to_string(),
            token: token.to_string(),
        }
    }

    /// The admin token the API expects.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// One request with the token; returns the status and the body as text. Panics
    /// only when no HTTP answer came at all (refused, timed out).
    pub fn call_text(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        let url = format!("http://{}{path}", self.listen);
        let auth = format!("Bearer {}", self.token);
        let target = url.clone();
        let answer = Netns::run_in_path(&self.ns, move || {
            let req = ureq::request(method, &target)
                .set("Authorization", &auth)
                .timeout(REQUEST_TIMEOUT);
            let r = match body {
                Some(b) => req.send_json(b),
                None => req.call(),
            };
            match r {
                Ok(r) | Err(ureq::Error::Status(_, r)) => {
                    let status = r.status();
                    Ok((status, r.into_string().unwrap_or_default()))
                }
                Err(e) => Err(e.to_string()),
            }
        });
        match answer {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => panic!("{method} {url}: {e}"),
            Err(e) => panic!("{method} {url}: cannot enter the namespace: {e}"),
        }
    }

    /// The value of `series` in `GET /metrics`: an unlabelled series, or one sample
    /// with its labels spelled out (`name{label="value"}`); 0 when absent. Panics if
    /// the scrape fails.
    pub fn metric(&self, series: &str) -> u64 {
        let (status, text) = self.call_text("GET", "/metrics", None);
        assert_eq!(status, 200, "GET /metrics: {text}");
        sample(&text, series)
    }

    /// One request with the token; returns the status and the JSON body (`Null` when
    /// the body is empty or not JSON).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (s, text) = self.call_text(method, path, body);
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `method path` that must succeed (2xx); returns the JSON body.
    pub fn send(&self, method: &str, path: &str, body: Value) -> Value {
        let (s, v) = self.call(method, path, Some(body));
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    /// `POST path` that must succeed.
    pub fn post(&self, path: &str, body: Value) -> Value {
        self.send("POST", path, body)
    }

    /// `PATCH path` that must succeed.
    pub fn patch(&self, path: &str, body: Value) -> Value {
        self.send("PATCH", path, body)
    }

    /// `GET path` that must answer 200.
    pub fn get(&self, path: &str) -> Value {
        let (s, v) = self.call("GET", path, None);
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    /// `DELETE path` that must succeed.
    pub fn delete(&self, path: &str) {
        let (s, v) = self.call("DELETE", path, None);
        assert!((200..300).contains(&s), "DELETE {path}: {s} {v}");
    }

    /// The connection's log entries (oldest first), at most `limit`.
    pub fn logs(&self, conn: &str, limit: usize) -> Vec<Value> {
        self.get(&format!("/v1/vpn-connections/{conn}/logs?limit={limit}"))["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The `event` names of the connection's log.
    pub fn events(&self, conn: &str) -> Vec<String> {
        self.logs(conn, 1000)
            .iter()
            .filter_map(|e| e["event"].as_str().map(str::to_string))
            .collect()
    }

    /// Polls the connection until `pred` holds for its tunnels (bounded by `timeout`)
    /// and returns them; `Err` with the last tunnels seen when time runs out (the
    /// caller adds what it knows, such as the peer's log).
    pub fn try_wait_tunnels(
        &self,
        conn: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> std::result::Result<Vec<Value>, Vec<Value>> {
        let start = Instant::now();
        loop {
            let c = self.get(&format!("/v1/vpn-connections/{conn}"));
            let tunnels = c["tunnels"].as_array().cloned().unwrap_or_default();
            if pred(&tunnels) {
                return Ok(tunnels);
            }
            if start.elapsed() > timeout {
                return Err(tunnels);
            }
            std::thread::sleep(POLL);
        }
    }

    /// [`ApiClient::try_wait_tunnels`] that panics with the tunnels' status and the
    /// connection log when time runs out.
    pub fn wait_tunnels(
        &self,
        conn: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        self.try_wait_tunnels(conn, timeout, pred)
            .unwrap_or_else(|tunnels| {
                let statuses: Vec<&Value> = tunnels.iter().map(|t| &t["status"]).collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; tunnel status: {statuses:#?}\nlogs: {:#?}",
                    self.logs(conn, 60),
                )
            })
    }

    /// Polls the connection's tunnel number `index` (0-based) until `pred` holds for
    /// its `status`; returns the whole tunnel.
    pub fn wait_tunnel(
        &self,
        conn: &str,
        index: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let tunnels = self.wait_tunnels(conn, what, timeout, |ts| {
            ts.get(index).is_some_and(|t| pred(&t["status"]))
        });
        tunnels[index].clone()
    }

    /// Polls the connection's log (its last 1,000 entries) until an entry's message
    /// contains `needle` and returns that message; panics with the tunnels' status and
    /// the log when `timeout` runs out.
    pub fn wait_log_message(&self, conn: &str, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let logs = self.logs(conn, 1000);
            if let Some(m) = logs
                .iter()
                .filter_map(|e| e["message"].as_str())
                .find(|m| m.contains(needle))
            {
                return m.to_string();
            }
            if start.elapsed() > timeout {
                let c = self.get(&format!("/v1/vpn-connections/{conn}"));
                panic!(
                    "timed out after {timeout:?} waiting for a log message with {needle:?}; \
                     tunnels: {:#?}\nlogs: {logs:#?}",
                    c["tunnels"]
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The value of `series` — an unlabelled series, or one sample with its labels spelled
/// out (`name{label="value"}`) — in a metrics exposition (`GET /metrics`); 0 when absent.
pub fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The `id` of an API resource.
pub fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}

/// A tunnel status whose phase is `established` with at least one Child SA.
pub fn established(status: &Value) -> bool {
    status["phase"] == "established"
        && status["child_sas"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
}

/// RFC 7386 JSON merge patch of `patch` onto `base` (null deletes), for building
/// request bodies from defaults.
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_sample_is_found_by_its_name_and_labels() {
        let text = "# TYPE vpngw_ike_dh_keys_total counter\n\
                    vpngw_ike_dh_keys_total{source=\"ready\"} 10\n\
                    vpngw_ike_dh_keys_total{source=\"inline\"} 11\n\
                    vpngw_ike_dh_offloaded_total 12\n";
        assert_eq!(
            sample(text, "vpngw_ike_dh_keys_total{source=\"inline\"}"),
            11
        );
        assert_eq!(sample(text, "vpngw_ike_dh_offloaded_total"), 12);
        // A name that is only a prefix of another series is not that series.
        assert_eq!(sample(text, "vpngw_ike_dh_keys_total"), 0);
        assert_eq!(sample(text, "vpngw_ike_dh_stale_total"), 0);
    }

    #[test]
    fn merge_overrides_nests_and_deletes() {
        let mut base = json!({"a": 1, "t": {"x": 1, "y": 2}, "gone": true});
        merge(
            &mut base,
            json!({"a": 2, "t": {"y": 3, "z": 4}, "gone": null}),
        );
        assert_eq!(base, json!({"a": 2, "t": {"x": 1, "y": 3, "z": 4}}));
    }

    #[test]
    fn established_needs_a_child_sa() {
        assert!(established(
            &json!({"phase": "established", "child_sas": [{}]})
        ));
        assert!(!established(
            &json!({"phase": "established", "child_sas": []})
        ));
        assert!(!established(&json!({"phase": "phase1_negotiating"})));
        assert_eq!(id(&json!({"id": "vco-1"})), "vco-1");
    }
}
