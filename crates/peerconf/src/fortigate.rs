//! Fortinet FortiGate (FortiOS CLI): a route-based `vpn ipsec phase1-interface` and
//! `phase2-interface` per tunnel, the tunnel interface addresses for BGP, static routes
//! (tunnel 1 preferred) or `router bgp`.

use model::{DhGroup, Encryption, IkeMode, IkeVersion, Integrity, RoutingMode};

use crate::text::{Alg, Out, net_mask, never_rekeys, question_mark_note, quoted};
use crate::view::{PeerTunnel, PeerView, is_ip, role_name};

/// FortiOS keylife ranges: phase 1 120–172800 s, phase 2 120–172800 s.
const MIN_LIFETIME: u32 = 120;
const MAX_LIFETIME: u32 = 172_800;

pub(crate) fn render(v: &PeerView<'_>) -> String {
    let mut o = Out::new("#");
    o.comments(0, v.header("Fortinet FortiGate (FortiOS CLI)"));
    o.comment(
        0,
        "Replace <WAN-INTERFACE> (e.g. wan1 or port1). Then add firewall policies between the LAN",
    );
    o.comment(
        0,
        "interface and the tunnel interfaces below, in both directions (config firewall policy).",
    );
    for t in &v.tunnels {
        if let Some(n) = question_mark_note(t.psk, "press Ctrl-V before each '?'") {
            o.comment(0, format!("tunnel {}: {n}", t.number));
        }
    }
    o.line("config vpn ipsec phase1-interface");
    for t in &v.tunnels {
        phase1(&mut o, t);
    }
    o.line("end");
    o.line("config vpn ipsec phase2-interface");
    for t in &v.tunnels {
        phase2(&mut o, v, t);
    }
    o.line("end");
    if v.tunnels.iter().any(|t| t.bgp.is_some()) {
        o.line("config system interface");
        for t in &v.tunnels {
            let Some(b) = &t.bgp else { continue };
            o.line(format!("    edit {}", quoted(&t.name)));
            o.line(format!("        set ip {} 255.255.255.255", b.local_ip));
            o.line(format!(
                "        set remote-ip {} {}",
                b.remote_ip,
                b.cidr.netmask()
            ));
            o.line("        set allowaccess ping");
            o.line("    next");
        }
        o.line("end");
    }
    if v.bgp {
        bgp(&mut o, v);
    } else {
        routes(&mut o, v);
    }
    o.finish()
}

fn phase1(o: &mut Out, t: &PeerTunnel<'_>) {
    let ike = t.ike;
    o.comment(
        4,
        format!("Tunnel {} ({}) {}", t.number, role_name(t.role), t.id),
    );
    o.line(format!("    edit {}", quoted(&t.name)));
    o.line("        set interface \"<WAN-INTERFACE>\"");
    o.line(format!(
        "        set ike-version {}",
        match ike.version {
            IkeVersion::Ikev1 => 1,
            IkeVersion::Ikev2 => 2,
        }
    ));
    if ike.version == IkeVersion::Ikev1 {
        o.line(format!(
            "        set mode {}",
            match ike.mode {
                IkeMode::Main => "main",
                IkeMode::Aggressive => "aggressive",
            }
        ));
    }
    if is_ip(t.remote_id) {
        o.line("        set peertype any");
    } else {
        o.line("        set peertype one");
        o.line(format!("        set peerid {}", quoted(t.remote_id)));
    }
    o.line("        set net-device disable");
    o.alg_line(
        8,
        p1_proposal(ike.version, ike.encryption, ike.integrity),
        |p| format!("set proposal {p}"),
    );
    o.alg_line(8, group(ike.dh_group), |g| format!("set dhgrp {g}"));
    o.line(format!("        set remote-gw {}", t.remote_addr));
    if is_ip(t.local_id) {
        if t.local_addr.map(|a| a.to_string()).as_deref() != Some(t.local_id) {
            o.comment(
                8,
                format!(
                    "vpngw expects the IKE ID {}; FortiOS sends the interface address unless localid is set.",
                    t.local_id
                ),
            );
        }
    } else {
        o.line("        set localid-type fqdn");
        o.line(format!("        set localid {}", quoted(t.local_id)));
    }
    o.line(format!("        set psksecret {}", quoted(t.psk)));
    let s = lifetime(o, "IKE SA", ike.lifetime_s);
    o.line(format!("        set keylife {s}"));
    if t.dpd {
        o.line("        set dpd on-idle");
        o.line(format!(
            "        set dpd-retryinterval {}",
            t.dpd_interval_s.clamp(1, 3600)
        ));
        o.line(format!(
            "        set dpd-retrycount {}",
            (t.dpd_timeout_s / t.dpd_interval_s.max(1)).clamp(1, 10)
        ));
    } else {
        o.line("        set dpd disable");
    }
    o.line(format!(
        "        set nattraversal {}",
        if t.nat_traversal { "enable" } else { "disable" }
    ));
    o.line("    next");
}

fn phase2(o: &mut Out, v: &PeerView<'_>, t: &PeerTunnel<'_>) {
    let ip = t.ipsec;
    // FortiOS negotiates one selector pair per phase2 entry (one Child SA each).
    let mut pairs = Vec::new();
    for l in &t.local_ts {
        for r in &t.remote_ts {
            pairs.push((l, r));
        }
    }
    for (i, (l, r)) in pairs.iter().enumerate() {
        let name = if i == 0 {
            t.name.clone()
        } else {
            format!("{}-{}", t.name, i + 1)
        };
        o.line(format!("    edit {}", quoted(&name)));
        o.line(format!("        set phase1name {}", quoted(&t.name)));
        o.alg_line(8, p2_proposal(ip.encryption, ip.integrity), |p| {
            format!("set proposal {p}")
        });
        match ip.pfs.dh_group() {
            Some(g) => {
                o.line("        set pfs enable");
                o.alg_line(8, group(g), |g| format!("set dhgrp {g}"));
            }
            None => o.line("        set pfs disable"),
        }
        let s = lifetime(o, "Child SA", ip.lifetime_s);
        o.line(format!("        set keylifeseconds {s}"));
        o.line("        set auto-negotiate enable");
        if v.routing == RoutingMode::ProtectedFlows {
            o.line(format!("        set src-subnet {}", net_mask(l)));
            o.line(format!("        set dst-subnet {}", net_mask(r)));
        }
        o.line("    next");
    }
}

fn routes(o: &mut Out, v: &PeerView<'_>) {
    o.comment(
        0,
        "Route the VPC networks into the tunnels, tunnel 1 preferred (lower distance).",
    );
    o.line("config router static");
    for t in &v.tunnels {
        for n in &v.remote_nets {
            o.line("    edit 0");
            o.line(format!("        set dst {}", net_mask(n)));
            o.line(format!("        set device {}", quoted(&t.name)));
            o.line(format!("        set distance {}", 5 + t.number * 5));
            o.line("    next");
        }
    }
    o.line("end");
}

fn bgp(o: &mut Out, v: &PeerView<'_>) {
    let Some(first) = v.tunnels.iter().find_map(|t| t.bgp) else {
        return;
    };
    let asn = first.local_asn;
    o.line("config router bgp");
    o.line(format!("    set as {asn}"));
    o.line(format!("    set router-id {}", first.local_ip));
    o.line("    config neighbor");
    for t in &v.tunnels {
        let Some(b) = t.bgp else { continue };
        if b.local_asn != asn {
            o.comment(
                8,
                format!(
                    "tunnel {} belongs to customer gateway AS {}: configure it on that device.",
                    t.number, b.local_asn
                ),
            );
            continue;
        }
        o.line(format!("        edit {}", quoted(&b.remote_ip.to_string())));
        o.line(format!("            set remote-as {}", b.remote_asn));
        o.line("            set keep-alive-timer 10");
        o.line("            set holdtime-timer 30");
        o.line("        next");
    }
    o.line("    end");
    o.line("    config network");
    if v.local_nets.is_empty() {
        o.comment(8, "Announce this site's networks, e.g.:");
        o.comment(8, "edit 1 / set prefix 172.16.0.0 255.255.0.0 / next");
    } else {
        for (i, n) in v.local_nets.iter().enumerate() {
            o.line(format!("        edit {}", i + 1));
            o.line(format!("            set prefix {}", net_mask(n)));
            o.line("        next");
        }
    }
    o.line("    end");
    o.line("end");
}

fn lifetime(o: &mut Out, what: &str, s: u32) -> u32 {
    if s == 0 {
        o.comment(8, never_rekeys(what, MAX_LIFETIME));
        MAX_LIFETIME
    } else {
        s.clamp(MIN_LIFETIME, MAX_LIFETIME)
    }
}

fn cipher(e: Encryption) -> &'static str {
    match e {
        Encryption::Aes => "aes128",
        Encryption::Aes192 => "aes192",
        Encryption::Aes256 => "aes256",
        Encryption::Des => "des",
        Encryption::TripleDes => "3des",
        Encryption::AesGcm128 => "aes128gcm",
        Encryption::AesGcm256 => "aes256gcm",
    }
}

fn hash(i: Integrity) -> &'static str {
    match i {
        Integrity::Md5 => "md5",
        Integrity::Sha1 => "sha1",
        Integrity::Sha256 => "sha256",
        Integrity::Sha384 => "sha384",
        Integrity::Sha512 => "sha512",
    }
}

/// Phase 1: `cipher-hash`; with AES-GCM (IKEv2 only) `cipher-prfhash`.
fn p1_proposal(version: IkeVersion, e: Encryption, i: Integrity) -> Result<String, &'static str> {
    if e.is_aead() {
        if version == IkeVersion::Ikev1 {
            return Err(
                "FortiOS has no AES-GCM for IKEv1 phase 1: use ikev2 or a CBC cipher on this tunnel",
            );
        }
        return Ok(format!("{}-prf{}", cipher(e), hash(i)));
    }
    Ok(format!("{}-{}", cipher(e), hash(i)))
}

/// Phase 2: `cipher-hash`, or the GCM cipher alone (integrity built in).
fn p2_proposal(e: Encryption, i: Integrity) -> Result<String, &'static str> {
    if e.is_aead() {
        Ok(cipher(e).to_owned())
    } else {
        Ok(format!("{}-{}", cipher(e), hash(i)))
    }
}

fn group(g: DhGroup) -> Alg {
    match g {
        DhGroup::Group1 => Ok("1"),
        DhGroup::Group2 => Ok("2"),
        DhGroup::Group5 => Ok("5"),
        DhGroup::Group14 => Ok("14"),
        DhGroup::Group19 => Ok("19"),
        DhGroup::Group20 => Ok("20"),
        DhGroup::Group31 => Ok("31"),
        DhGroup::Group24 => Err(
            "FortiOS offers no DH group 24 (2048-bit MODP with 256-bit subgroup): choose group 14, 19 or 20 on this tunnel",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            p1_proposal(IkeVersion::Ikev2, Encryption::Aes, Integrity::Sha1).unwrap(),
            "aes128-sha1"
        );
        assert_eq!(
            p1_proposal(IkeVersion::Ikev2, Encryption::AesGcm128, Integrity::Sha256).unwrap(),
            "aes128gcm-prfsha256"
        );
        assert!(p1_proposal(IkeVersion::Ikev1, Encryption::AesGcm128, Integrity::Sha256).is_err());
        assert_eq!(
            p2_proposal(Encryption::TripleDes, Integrity::Md5).unwrap(),
            "3des-md5"
        );
        assert_eq!(
            p2_proposal(Encryption::AesGcm256, Integrity::Sha1).unwrap(),
            "aes256gcm"
        );
        assert_eq!(group(DhGroup::Group14).unwrap(), "14");
        assert_eq!(group(DhGroup::Group31).unwrap(), "31");
        assert!(group(DhGroup::Group24).unwrap_err().contains("group 24"));
    }
}
