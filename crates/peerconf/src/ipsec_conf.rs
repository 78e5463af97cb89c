//! strongSwan's legacy ipsec.conf `conn` sections (read by `starter`, loaded over
//! stroke) and the matching ipsec.secrets lines, in the shape of the product's own
//! downloadable tunnel configuration.

use model::{IkeMode, IkeVersion, RoutingMode};

use crate::swanctl::{esp_proposal, ike_proposal};
use crate::text::Out;
use crate::view::{PeerTunnel, PeerView, join, role_name};

/// The line that separates ipsec.conf from ipsec.secrets in the rendered text.
pub const SECRETS_MARKER: &str = "# ---- /etc/ipsec.secrets ----";

pub(crate) fn render(v: &PeerView<'_>) -> String {
    let mut o = Out::new("#");
    o.line("# ---- /etc/ipsec.conf ----");
    o.comments(0, v.header("strongSwan ipsec.conf + ipsec.secrets"));
    o.comment(
        0,
        "Put the first part in /etc/ipsec.conf and the second in /etc/ipsec.secrets, then: ipsec restart",
    );
    if v.routing == RoutingMode::Destination {
        if v.tunnels.iter().any(|t| v.narrowed(t)) {
            for line in [
                "Destination mode: vpngw accepts any traffic (0.0.0.0/0 both ways); rightsubnet narrows",
                "the VPC side to the VPC networks, so the policies and routes strongSwan installs carry",
                "only traffic to the VPC and IKE/ESP to vpngw keep the normal routes.",
            ] {
                o.comment(0, line);
            }
        }
        if v.tunnels.iter().any(|t| !v.narrowed(t)) {
            for line in [
                "WARNING: a conn below keeps rightsubnet=0.0.0.0/0 (IKEv1 carries one selector pair and",
                "there is more than one VPC network, or none is known): its policy captures all of this",
                "host's traffic. Use IKEv2, or swanctl with an XFRM interface.",
            ] {
                o.comment(0, line);
            }
        }
        if v.bgp {
            o.comment(
                0,
                "BGP: put this device's tunnel addresses on a local interface (lo works), then load the frr format:",
            );
            for t in &v.tunnels {
                if let Some(b) = &t.bgp {
                    o.comment(0, format!("  ip address add {}/32 dev lo", b.local_ip));
                }
            }
        }
    }
    if v.active_standby() {
        o.comment(
            0,
            "ipsec.conf has no policy priority: both tunnels install the same selectors and the",
        );
        o.comment(
            0,
            "newest Child SA carries the traffic. swanctl's priority = 1|2 gives a strict active/standby pair.",
        );
    }
    o.blank();
    o.line("config setup");
    o.line("    uniqueids = yes");
    for t in &v.tunnels {
        o.blank();
        conn(&mut o, v, t);
    }
    o.blank();
    o.line(SECRETS_MARKER);
    o.comment(
        0,
        "<this device's id> <vpngw's id> : PSK \"<key>\"  (one line per tunnel)",
    );
    for t in &v.tunnels {
        o.line(format!(
            "{} {} : PSK {}",
            t.local_id,
            t.remote_id,
            quoted_secret(t.psk)
        ));
    }
    o.finish()
}

fn conn(o: &mut Out, v: &PeerView<'_>, t: &PeerTunnel<'_>) {
    let ike = t.ike;
    o.comment(
        0,
        format!("Tunnel {} ({}) {}", t.number, role_name(t.role), t.id),
    );
    o.line(format!("conn {}", t.name));
    o.line(format!(
        "    keyexchange={}",
        match ike.version {
            IkeVersion::Ikev1 => "ikev1",
            IkeVersion::Ikev2 => "ikev2",
        }
    ));
    if ike.version == IkeVersion::Ikev1 {
        o.line(format!(
            "    aggressive={}",
            if ike.mode == IkeMode::Aggressive {
                "yes"
            } else {
                "no"
            }
        ));
    }
    o.line("    authby=secret");
    o.line("    type=tunnel");
    // `!` makes the proposal strict: exactly what vpngw negotiates, no defaults added.
    o.line(format!("    ike={}!", ike_proposal(ike)));
    o.line(format!("    esp={}!", esp_proposal(t.ipsec)));
    let both_zero = ike.lifetime_s == 0 && t.ipsec.lifetime_s == 0;
    if both_zero {
        o.comment(4, "vpngw never rekeys (lifetimes 0).");
        o.line("    rekey=no");
    } else {
        lifetime(o, "ikelifetime", "IKE SA", ike.lifetime_s);
        lifetime(o, "lifetime", "Child SA", t.ipsec.lifetime_s);
    }
    match t.local_addr {
        Some(a) => o.line(format!("    left={a}")),
        None => o.line("    left=%any"),
    }
    let (local_ts, remote_ts) = v.policy_ts(t);
    o.line(format!("    leftid={}", t.local_id));
    o.line(format!("    leftsubnet={}", subnets(&local_ts)));
    o.line(format!("    right={}", t.remote_addr));
    o.line(format!("    rightid={}", t.remote_id));
    if v.narrowed(t) {
        o.comment(
            4,
            format!(
                "Destination routing mode: the VPC networks ({}){}.",
                join(&v.remote_nets),
                if t.bgp.is_some() {
                    " and vpngw's BGP address"
                } else {
                    ""
                }
            ),
        );
    }
    o.line(format!("    rightsubnet={}", subnets(&remote_ts)));
    if t.dpd {
        o.line("    dpdaction=restart");
        o.line(format!("    dpddelay={}s", t.dpd_interval_s));
        if ike.version == IkeVersion::Ikev1 {
            o.line(format!("    dpdtimeout={}s", t.dpd_timeout_s));
        }
    } else {
        o.line("    dpdaction=none");
    }
    o.line(format!(
        "    forceencaps={}",
        if t.nat_traversal { "yes" } else { "no" }
    ));
    o.line("    keyingtries=%forever");
    o.line("    closeaction=restart");
    o.line("    auto=start");
}

fn lifetime(o: &mut Out, key: &str, what: &str, s: u32) {
    if s == 0 {
        o.comment(
            4,
            format!(
                "vpngw never rekeys the {what} (lifetime 0); strongSwan's default {key} applies."
            ),
        );
    } else {
        o.line(format!("    {key}={s}s"));
    }
}

fn subnets(nets: &[ipnet::IpNet]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// ipsec.secrets takes a double-quoted string up to the next `"` with no escapes; keys
/// never contain `"` (the API's character set), so plain quoting is exact.
fn quoted_secret(psk: &str) -> String {
    if psk.contains('"') {
        // Not reachable with API-validated keys; hex is exact for any bytes.
        let hex: String = psk.bytes().map(|b| format!("{b:02x}")).collect();
        return format!("0x{hex}");
    }
    format!("\"{psk}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_quoted_without_escapes() {
        assert_eq!(quoted_secret("abc#;'{}"), "\"abc#;'{}\"");
        assert_eq!(quoted_secret(r"a\b"), r#""a\b""#);
        assert_eq!(quoted_secret("a\"b"), "0x612262");
    }
}
