//! A small swanctl.conf writer for lab peers.
//!
//! It covers what interop tests vary (IKE version, aggressive mode, addresses, ids,
//! proposals, selectors, DPD, rekeying, priorities, forced encapsulation) and writes the
//! layout strongSwan wants: one `key = value` per line, braces after section names.
//! The product's own renderer for customers lives elsewhere; this one is for tests.

use std::fmt::{self, Write};

/// One IKE connection (`connections.<name>`) with its PSK secret and children.
///
/// Start from [`SwanctlConn::psk`] and override fields with struct update syntax. `Debug`
/// never shows the PSK.
#[derive(Clone, PartialEq, Eq)]
pub struct SwanctlConn {
    pub name: String,
    /// 1 or 2 (0: either).
    pub version: u8,
    /// IKEv1 aggressive mode.
    pub aggressive: bool,
    /// `local_addrs`; empty means any.
    pub local_addrs: Vec<String>,
    /// `remote_addrs`; `%any` for a responder that accepts any peer.
    pub remote_addrs: Vec<String>,
    /// `local.id`; defaults to the first local address.
    pub local_id: Option<String>,
    /// `remote.id`; defaults to the first remote address (`%any` if that is `%any`).
    pub remote_id: Option<String>,
    /// Pre-shared key of `secrets.ike-<name>`.
    pub psk: String,
    /// IKE proposals, e.g. `aes128-sha1-modp1024`.
    pub proposals: Vec<String>,
    /// Force UDP encapsulation of ESP.
    pub encap: bool,
    /// `dpd_delay` in seconds.
    pub dpd_delay: Option<u32>,
    /// `dpd_timeout` in seconds (IKEv1 only).
    pub dpd_timeout: Option<u32>,
    /// IKE SA `rekey_time` in seconds (0 disables rekeying).
    pub rekey_time: Option<u32>,
    /// IKE SA `over_time` in seconds.
    pub over_time: Option<u32>,
    /// `keyingtries` (strongSwan's default is 1).
    pub keyingtries: Option<u32>,
    /// `mobike`; `None` keeps strongSwan's default (yes).
    pub mobike: Option<bool>,
    /// A second local authentication round `auth = xauth`, as an IKEv1 remote-access
    /// client is set up (Main Mode then offers XAUTHInitPreShared).
    pub xauth: bool,
    /// `childless` (RFC 6023): `allow` (strongSwan's default), `force` or `never`.
    pub childless: Option<String>,
    pub children: Vec<SwanctlChild>,
}

/// One CHILD_SA configuration (`connections.<conn>.children.<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwanctlChild {
    pub name: String,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    /// ESP proposals, e.g. `aes128-sha1-modp1024` (a DH group means PFS).
    pub esp_proposals: Vec<String>,
    /// `none`, `trap` or `start`.
    pub start_action: Option<String>,
    /// `clear`, `trap` or `restart`.
    pub dpd_action: Option<String>,
    /// `none`, `trap` or `start`.
    pub close_action: Option<String>,
    /// CHILD_SA `rekey_time` in seconds.
    pub rekey_time: Option<u32>,
    /// CHILD_SA `life_time` in seconds.
    pub life_time: Option<u32>,
    /// `priority` of the policies (1 beats 2: the active tunnel of a pair).
    pub priority: Option<u32>,
}

impl SwanctlConn {
    /// An IKEv2 PSK connection between `local_addr` and `remote_addr` with strongSwan's
    /// defaults elsewhere and no children yet.
    pub fn psk(name: &str, local_addr: &str, remote_addr: &str, psk: &str) -> SwanctlConn {
        SwanctlConn {
            name: name.to_owned(),
            version: 2,
            aggressive: false,
            local_addrs: vec![local_addr.to_owned()],
            remote_addrs: vec![remote_addr.to_owned()],
            local_id: None,
            remote_id: None,
            psk: psk.to_owned(),
            proposals: Vec::new(),
            encap: false,
            dpd_delay: None,
            dpd_timeout: None,
            rekey_time: None,
            over_time: None,
            keyingtries: None,
            mobike: None,
            xauth: false,
            childless: None,
            children: Vec::new(),
        }
    }

    /// Adds a child and returns the connection (builder style).
    pub fn child(mut self, child: SwanctlChild) -> SwanctlConn {
        self.children.push(child);
        self
    }

    /// The effective `local.id`.
    pub fn effective_local_id(&self) -> String {
        self.local_id
            .clone()
            .or_else(|| self.local_addrs.first().cloned())
            .unwrap_or_else(|| "%any".to_owned())
    }

    /// The effective `remote.id`.
    pub fn effective_remote_id(&self) -> String {
        self.remote_id
            .clone()
            .or_else(|| self.remote_addrs.first().cloned())
            .unwrap_or_else(|| "%any".to_owned())
    }
}

impl fmt::Debug for SwanctlConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwanctlConn")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("aggressive", &self.aggressive)
            .field("local_addrs", &self.local_addrs)
            .field("remote_addrs", &self.remote_addrs)
            .field("local_id", &self.local_id)
            .field("remote_id", &self.remote_id)
            .field("psk", &"<redacted>")
            .field("proposals", &self.proposals)
            .field("encap", &self.encap)
            .field("dpd_delay", &self.dpd_delay)
            .field("dpd_timeout", &self.dpd_timeout)
            .field("rekey_time", &self.rekey_time)
            .field("over_time", &self.over_time)
            .field("keyingtries", &self.keyingtries)
            .field("mobike", &self.mobike)
            .field("xauth", &self.xauth)
            .field("childless", &self.childless)
            .field("children", &self.children)
            .finish()
    }
}

impl SwanctlChild {
    /// A tunnel-mode child between `local_ts` and `remote_ts` (one prefix each; push
    /// more onto the vectors for several).
    pub fn new(name: &str, local_ts: &str, remote_ts: &str) -> SwanctlChild {
        SwanctlChild {
            name: name.to_owned(),
            local_ts: vec![local_ts.to_owned()],
            remote_ts: vec![remote_ts.to_owned()],
            esp_proposals: Vec::new(),
            start_action: None,
            dpd_action: None,
            close_action: None,
            rekey_time: None,
            life_time: None,
            priority: None,
        }
    }
}

/// Renders `connections { … }` and `secrets { … }` for `conns`.
pub fn render(conns: &[SwanctlConn]) -> String {
    let mut out = String::new();
    out.push_str("connections {\n");
    for c in conns {
        render_conn(&mut out, c);
    }
    out.push_str("}\n\nsecrets {\n");
    for c in conns {
        let _ = writeln!(out, "  ike-{} {{", c.name);
        let ids = [c.effective_local_id(), c.effective_remote_id()];
        for (n, id) in (1..).zip(ids.iter().filter(|id| id.as_str() != "%any")) {
            let _ = writeln!(out, "    id-{n} = {id}");
        }
        let _ = writeln!(out, "    secret = \"{}\"", escape(&c.psk));
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

fn render_conn(out: &mut String, c: &SwanctlConn) {
    let _ = writeln!(out, "  {} {{", c.name);
    kv(out, 4, "version", Some(c.version));
    if c.aggressive {
        kv(out, 4, "aggressive", Some("yes"));
    }
    list(out, 4, "local_addrs", &c.local_addrs);
    list(out, 4, "remote_addrs", &c.remote_addrs);
    list(out, 4, "proposals", &c.proposals);
    if c.encap {
        kv(out, 4, "encap", Some("yes"));
    }
    kv(out, 4, "dpd_delay", c.dpd_delay.map(|s| format!("{s}s")));
    kv(
        out,
        4,
        "dpd_timeout",
        c.dpd_timeout.map(|s| format!("{s}s")),
    );
    kv(out, 4, "rekey_time", c.rekey_time.map(|s| format!("{s}s")));
    kv(out, 4, "over_time", c.over_time.map(|s| format!("{s}s")));
    kv(out, 4, "keyingtries", c.keyingtries);
    kv(out, 4, "mobike", c.mobike.map(yes_no));
    kv(out, 4, "childless", c.childless.as_deref());
    for (section, id) in [
        ("local", c.effective_local_id()),
        ("remote", c.effective_remote_id()),
    ] {
        let _ = writeln!(out, "    {section} {{");
        kv(out, 6, "auth", Some("psk"));
        kv(out, 6, "id", Some(id));
        out.push_str("    }\n");
    }
    if c.xauth {
        out.push_str("    local-xauth {\n");
        kv(out, 6, "auth", Some("xauth"));
        out.push_str("    }\n");
    }
    out.push_str("    children {\n");
    for ch in &c.children {
        let _ = writeln!(out, "      {} {{", ch.name);
        list(out, 8, "local_ts", &ch.local_ts);
        list(out, 8, "remote_ts", &ch.remote_ts);
        list(out, 8, "esp_proposals", &ch.esp_proposals);
        kv(out, 8, "start_action", ch.start_action.as_deref());
        kv(out, 8, "dpd_action", ch.dpd_action.as_deref());
        kv(out, 8, "close_action", ch.close_action.as_deref());
        kv(out, 8, "rekey_time", ch.rekey_time.map(|s| format!("{s}s")));
        kv(out, 8, "life_time", ch.life_time.map(|s| format!("{s}s")));
        kv(out, 8, "priority", ch.priority);
        out.push_str("      }\n");
    }
    out.push_str("    }\n  }\n");
}

fn kv(out: &mut String, indent: usize, key: &str, value: Option<impl fmt::Display>) {
    if let Some(v) = value {
        let _ = writeln!(out, "{:indent$}{key} = {v}", "");
    }
}

fn list(out: &mut String, indent: usize, key: &str, values: &[String]) {
    if !values.is_empty() {
        kv(out, indent, key, Some(values.join(",")));
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// strongSwan's settings parser reads `\"` and `\\` inside double quotes.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SwanctlConn {
        SwanctlConn {
            proposals: vec!["aes128-sha1-modp1024".into()],
            dpd_delay: Some(10),
            ..SwanctlConn::psk("gw", "203.0.113.1", "203.0.113.2", "s3cr\"et")
        }
        .child(SwanctlChild {
            esp_proposals: vec!["aes128-sha1-modp1024".into()],
            start_action: Some("start".into()),
            dpd_action: Some("restart".into()),
            priority: Some(1),
            ..SwanctlChild::new("net", "10.1.0.0/24", "10.2.0.0/24")
        })
    }

    #[test]
    fn renders_swanctl_layout() {
        let text = render(&[sample()]);
        let expected = "connections {
  gw {
    version = 2
    local_addrs = 203.0.113.1
    remote_addrs = 203.0.113.2
    proposals = aes128-sha1-modp1024
    dpd_delay = 10s
    local {
      auth = psk
      id = 203.0.113.1
    }
    remote {
      auth = psk
      id = 203.0.113.2
    }
    children {
      net {
        local_ts = 10.1.0.0/24
        remote_ts = 10.2.0.0/24
        esp_proposals = aes128-sha1-modp1024
        start_action = start
        dpd_action = restart
        priority = 1
      }
    }
  }
}

secrets {
  ike-gw {
    id-1 = 203.0.113.1
    id-2 = 203.0.113.2
    secret = \"s3cr\\\"et\"
  }
}
";
        assert_eq!(text, expected);
    }

    #[test]
    fn any_remote_is_not_a_secret_id() {
        let c = SwanctlConn::psk("r", "192.0.2.1", "%any", "k");
        let text = render(&[c]);
        assert!(text.contains("id-1 = 192.0.2.1\n    secret"));
        assert!(!text.contains("id-2"));
    }

    #[test]
    fn debug_redacts_psk() {
        let dbg = format!("{:?}", sample());
        assert!(dbg.contains("<redacted>"));
        assert!(!dbg.contains("s3cr"));
    }
}
