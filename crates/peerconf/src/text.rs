//! Small text helpers shared by the renderers.

use std::fmt::Write as _;

use ipnet::IpNet;

/// An algorithm a target cannot do: the reason goes into a comment line instead of a
/// silently wrong configuration line.
pub(crate) type Alg = Result<&'static str, &'static str>;

/// A text being built line by line.
pub(crate) struct Out {
    buf: String,
    comment: &'static str,
}

impl Out {
    pub fn new(comment: &'static str) -> Out {
        Out {
            buf: String::new(),
            comment,
        }
    }

    pub fn line(&mut self, s: impl AsRef<str>) {
        self.buf.push_str(s.as_ref());
        self.buf.push('\n');
    }

    pub fn blank(&mut self) {
        self.buf.push('\n');
    }

    /// A comment line at `indent` spaces.
    pub fn comment(&mut self, indent: usize, s: impl AsRef<str>) {
        if s.as_ref().is_empty() {
            let _ = writeln!(self.buf, "{:indent$}{}", "", self.comment, indent = indent);
            return;
        }
        let _ = writeln!(
            self.buf,
            "{:indent$}{} {}",
            "",
            self.comment,
            s.as_ref(),
            indent = indent
        );
    }

    pub fn comments<S: AsRef<str>>(&mut self, indent: usize, lines: impl IntoIterator<Item = S>) {
        for l in lines {
            self.comment(indent, l);
        }
    }

    /// A line built from a possibly unsupported algorithm: the line when `alg` is
    /// supported, a comment naming the reason otherwise.
    pub fn alg_line<S: AsRef<str>>(
        &mut self,
        indent: usize,
        alg: Result<S, &str>,
        line: impl FnOnce(&str) -> String,
    ) {
        match alg {
            Ok(name) => {
                let l = line(name.as_ref());
                let _ = writeln!(self.buf, "{:indent$}{l}", "", indent = indent);
            }
            Err(why) => self.comment(indent, format!("UNSUPPORTED: {why}")),
        }
    }

    pub fn finish(self) -> String {
        self.buf
    }
}

/// `network mask` for IPv4 (Cisco, Huawei, FortiGate); CIDR for IPv6.
pub(crate) fn net_mask(n: &IpNet) -> String {
    match n {
        IpNet::V4(v4) => format!("{} {}", v4.network(), v4.netmask()),
        IpNet::V6(_) => n.trunc().to_string(),
    }
}

/// `network wildcard` (Cisco ACLs, Huawei ACL rules); CIDR for IPv6.
pub(crate) fn net_wildcard(n: &IpNet) -> String {
    match n {
        IpNet::V4(v4) => format!("{} {}", v4.network(), v4.hostmask()),
        IpNet::V6(_) => n.trunc().to_string(),
    }
}

/// A double-quoted string with `\` and `"` escaped (strongSwan settings, Junos,
/// FortiOS, PAN-OS).
pub(crate) fn quoted(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '\\' || c == '"' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// The line an operator needs when a key contains `?`: on Cisco, Huawei, FortiGate and
/// PAN-OS CLIs a typed `?` opens the help instead of entering the character.
pub(crate) fn question_mark_note(psk: &str, how: &str) -> Option<String> {
    psk.contains('?').then(|| {
        format!(
            "The pre-shared key below contains '?': when typing or pasting it into the CLI, {how}."
        )
    })
}

/// Lifetime text used by the vendor formats for lifetime 0 (vpngw never rekeys).
pub(crate) fn never_rekeys(what: &str, max: u32) -> String {
    format!(
        "vpngw never rekeys the {what} (lifetime 0); this device cannot disable rekeying, so the maximum {max} s is set"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_wildcards() {
        let n: IpNet = "10.0.0.0/16".parse().unwrap();
        assert_eq!(net_mask(&n), "10.0.0.0 255.255.0.0");
        assert_eq!(net_wildcard(&n), "10.0.0.0 0.0.255.255");
        let any: IpNet = "0.0.0.0/0".parse().unwrap();
        assert_eq!(net_mask(&any), "0.0.0.0 0.0.0.0");
    }

    #[test]
    fn quoting_escapes_backslash_and_quote() {
        assert_eq!(quoted(r#"a\b"c"#), r#""a\\b\"c""#);
        assert_eq!(quoted("#{};'"), "\"#{};'\"");
    }

    #[test]
    fn unsupported_algorithms_become_comments() {
        let mut o = Out::new("!");
        o.alg_line(1, Ok("group 14"), |n| n.to_owned());
        o.alg_line(1, Err::<&str, _>("no group 24 here"), |n| n.to_owned());
        assert_eq!(o.finish(), " group 14\n ! UNSUPPORTED: no group 24 here\n");
    }

    #[test]
    fn question_mark_note_only_when_needed() {
        assert!(question_mark_note("abc", "x").is_none());
        assert!(
            question_mark_note("a?c", "press Ctrl-V first")
                .unwrap()
                .contains("Ctrl-V")
        );
    }
}
