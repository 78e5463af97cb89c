//! A blocking client of the vpngw API (ureq, no OpenSSL).

use std::time::Duration;

use anyhow::{Context, anyhow};
use serde_json::Value;

pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Client {
    pub fn new(server: &str, token: String) -> Client {
        Client {
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
            base: server.trim_end_matches('/').to_string(),
            token,
        }
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send("POST", path, Some(body))
    }

    pub fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send("PATCH", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send("DELETE", path, None)
    }

    /// A GET whose answer is not JSON (a peer configuration): the body as it came.
    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        self.request("GET", path, None)
    }

    /// Sends a request and parses the JSON answer (empty: `null`).
    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let text = self.request(method, path, body)?;
        if text.trim().is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_str(&text).context("the server's answer is not JSON")
        }
    }

    /// Sends a request; the body of a 2xx answer, or the API error's message (and field).
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let req = self
            .agent
            .request(method, &url)
            .set("Authorization", &format!("Bearer {}", self.token));
        let result = match body {
            Some(b) => req.send_json(b.clone()),
            None => req.call(),
        };
        match result {
            Ok(resp) => resp.into_string().context("reading the response"),
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let err = &v["error"];
                match err["message"].as_str() {
                    Some(m) => match err["field"].as_str() {
                        Some(f) => Err(anyhow!("{f}: {m} (HTTP {code})")),
                        None => Err(anyhow!("{m} (HTTP {code})")),
                    },
                    None => Err(anyhow!("HTTP {code}: {text}")),
                }
            }
            Err(e) => Err(anyhow!("cannot reach vpngw at {}: {e}", self.base)),
        }
    }
}
