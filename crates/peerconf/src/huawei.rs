//! Huawei VRP (AR routers, V200R010 and later): `ike proposal`, `ike peer`,
//! `ipsec proposal`, and an `ipsec profile` on a `Tunnel` interface (route-based) per
//! tunnel; protected-flows connections use an ACL and an `ipsec policy` on the WAN
//! interface instead.

use model::{DhGroup, Encryption, IkeMode, IkeVersion, Integrity, RoutingMode};

use crate::text::{Alg, Out, net_mask, net_wildcard, never_rekeys, question_mark_note};
use crate::view::{PeerTunnel, PeerView, is_ip, role_name};

const MAX_LIFETIME: u32 = 86_400;
/// VRP: ike proposal `sa duration` 60–604800; ipsec `sa duration time-based` 30–604800.
const MIN_IKE_LIFETIME: u32 = 60;
const MIN_IPSEC_LIFETIME: u32 = 30;

pub(crate) fn render(v: &PeerView<'_>) -> String {
    let mut o = Out::new("#");
    o.comments(0, v.header("Huawei VRP (AR series)"));
    o.comment(
        0,
        "Enter in the system view. Replace <WAN-INTERFACE> (e.g. GigabitEthernet0/0/1); proposal",
    );
    o.comment(
        0,
        "numbers, ACL numbers and Tunnel interface numbers must not clash with existing ones.",
    );
    o.comment(
        0,
        "H3C Comware differs (e.g. aes-cbc-128, sha256, ike profile/keychain): adapt the keywords there.",
    );
    for t in &v.tunnels {
        if let Some(n) = question_mark_note(
            t.psk,
            "VRP treats it as a help request: set a key without '?' on this tunnel, or enter it in the web UI",
        ) {
            o.comment(0, format!("tunnel {}: {n}", t.number));
        }
    }
    o.line("system-view");
    if v.routing == RoutingMode::ProtectedFlows {
        acl(&mut o, v);
    }
    for t in &v.tunnels {
        o.line("#");
        o.comment(
            0,
            format!(
                "---- Tunnel {} ({}) {} ----",
                t.number,
                role_name(t.role),
                t.id
            ),
        );
        tunnel(&mut o, v, t);
    }
    if v.routing == RoutingMode::ProtectedFlows {
        o.line("#");
        o.line("interface <WAN-INTERFACE>");
        o.line(format!(" ipsec policy {}", v.slug));
        o.line(" quit");
    } else if !v.bgp {
        o.line("#");
        o.comment(
            0,
            "Destination routing mode: route the VPC networks into the tunnels, tunnel 1 preferred.",
        );
        for t in &v.tunnels {
            for n in &v.remote_nets {
                let pref = if t.number == 1 {
                    String::new()
                } else {
                    format!(" preference {}", 60 + t.number * 10)
                };
                o.line(format!(
                    "ip route-static {} {}{pref}",
                    net_mask(n),
                    tunnel_if(t)
                ));
            }
        }
    }
    if v.bgp {
        bgp(&mut o, v);
    }
    o.line("#");
    o.line("return");
    o.finish()
}

fn tunnel_if(t: &PeerTunnel<'_>) -> String {
    format!("Tunnel0/0/{}", t.number)
}

fn acl_number() -> u32 {
    3900
}

fn acl(o: &mut Out, v: &PeerView<'_>) {
    o.line("#");
    o.comment(
        0,
        "Protected flows: this site's networks <-> the VPC networks.",
    );
    o.line(format!("acl number {}", acl_number()));
    let mut rule = 0;
    if let Some(t) = v.tunnels.first() {
        for l in &t.local_ts {
            for r in &t.remote_ts {
                rule += 5;
                o.line(format!(
                    " rule {rule} permit ip source {} destination {}",
                    net_wildcard(l),
                    net_wildcard(r)
                ));
            }
        }
    }
    o.line(" quit");
}

fn tunnel(o: &mut Out, v: &PeerView<'_>, t: &PeerTunnel<'_>) {
    let ike = t.ike;
    let n = &t.name;
    o.line(format!("ike proposal {}", 10 * t.number));
    o.alg_line(1, enc(ike.encryption), |e| {
        format!("encryption-algorithm {e}")
    });
    if ike.version == IkeVersion::Ikev1 || !ike.encryption.is_aead() {
        o.line(format!(" authentication-algorithm {}", auth(ike.integrity)));
    }
    if ike.version == IkeVersion::Ikev2 {
        if !ike.encryption.is_aead() {
            o.line(format!(" integrity-algorithm {}", hmac(ike.integrity)));
        }
        o.line(format!(" prf {}", hmac(ike.integrity)));
    }
    o.alg_line(1, group(ike.dh_group), |g| format!("dh {g}"));
    let s = lifetime(o, "IKE SA", ike.lifetime_s, MIN_IKE_LIFETIME);
    o.line(format!(" sa duration {s}"));
    o.line(" quit");
    o.line("#");
    o.line(format!("ike peer {n}"));
    match ike.version {
        IkeVersion::Ikev1 => {
            o.line(" version 1");
            if ike.mode == IkeMode::Aggressive {
                o.line(" exchange-mode aggressive");
            }
        }
        IkeVersion::Ikev2 => o.line(" undo version 1"),
    }
    o.line(format!(" pre-shared-key cipher {}", t.psk));
    o.line(format!(" ike-proposal {}", 10 * t.number));
    if is_ip(t.local_id) {
        o.line(" local-id-type ip");
        if t.local_addr.map(|a| a.to_string()).as_deref() != Some(t.local_id) {
            o.line(format!(" local-id {}", t.local_id));
        }
    } else {
        o.line(" local-id-type fqdn");
        o.line(format!(" local-id {}", t.local_id));
    }
    if is_ip(t.remote_id) {
        o.line(" remote-id-type ip");
    } else {
        o.line(" remote-id-type fqdn");
    }
    o.line(format!(" remote-id {}", t.remote_id));
    o.line(format!(" remote-address {}", t.remote_addr));
    if t.dpd {
        o.line(" dpd type periodic");
        o.line(format!(
            " dpd idle-time {}",
            t.dpd_interval_s.clamp(10, 3600)
        ));
    }
    if !t.nat_traversal {
        o.line(" undo nat traversal");
    }
    o.line(" quit");
    o.line("#");
    let ip = t.ipsec;
    o.line(format!("ipsec proposal {n}"));
    o.line(" transform esp");
    if !ip.encryption.is_aead() {
        o.line(format!(
            " esp authentication-algorithm {}",
            auth(ip.integrity)
        ));
    }
    o.alg_line(1, esp_enc(ip.encryption), |e| {
        format!("esp encryption-algorithm {e}")
    });
    o.line(" quit");
    o.line("#");
    match v.routing {
        RoutingMode::Destination => {
            o.line(format!("ipsec profile {n}"));
            o.line(format!(" ike-peer {n}"));
        }
        RoutingMode::ProtectedFlows => {
            o.line(format!("ipsec policy {} {} isakmp", v.slug, 10 * t.number));
            o.line(format!(" security acl {}", acl_number()));
            o.line(format!(" ike-peer {n}"));
        }
    }
    o.line(format!(" proposal {n}"));
    match ip.pfs.dh_group() {
        Some(g) => o.alg_line(1, group(g), |g| format!("pfs dh-{g}")),
        None => o.comment(1, "PFS is disabled on this tunnel."),
    }
    let s = lifetime(o, "Child SA", ip.lifetime_s, MIN_IPSEC_LIFETIME);
    o.line(format!(" sa duration time-based {s}"));
    o.line(" quit");
    if v.routing == RoutingMode::Destination {
        o.line("#");
        o.line(format!("interface {}", tunnel_if(t)));
        o.line(format!(" description vpngw tunnel {} {}", t.number, t.id));
        match &t.bgp {
            Some(b) => o.line(format!(" ip address {} {}", b.local_ip, b.cidr.netmask())),
            None => o.line(" ip address unnumbered interface <WAN-INTERFACE>"),
        }
        o.line(" tunnel-protocol ipsec");
        o.line(" source <WAN-INTERFACE>");
        o.line(format!(" destination {}", t.remote_addr));
        o.line(format!(" ipsec profile {n}"));
        o.line(" quit");
    }
}

fn bgp(o: &mut Out, v: &PeerView<'_>) {
    let Some(asn) = v.tunnels.iter().find_map(|t| t.bgp.map(|b| b.local_asn)) else {
        return;
    };
    o.line("#");
    o.line(format!("bgp {asn}"));
    for t in &v.tunnels {
        let Some(b) = t.bgp else { continue };
        if b.local_asn != asn {
            o.comment(
                1,
                format!(
                    "tunnel {} belongs to customer gateway AS {}: configure it on that device.",
                    t.number, b.local_asn
                ),
            );
            continue;
        }
        o.line(format!(" peer {} as-number {}", b.remote_ip, b.remote_asn));
        o.line(format!(" peer {} timer keepalive 10 hold 30", b.remote_ip));
    }
    o.line(" ipv4-family unicast");
    for t in &v.tunnels {
        if let Some(b) = t.bgp.filter(|b| b.local_asn == asn) {
            o.line(format!("  peer {} enable", b.remote_ip));
        }
    }
    if v.local_nets.is_empty() {
        o.comment(
            2,
            "Announce this site's networks, e.g.: network 172.16.0.0 255.255.0.0",
        );
    } else {
        for n in &v.local_nets {
            o.line(format!("  network {}", net_mask(n)));
        }
    }
    o.line("  quit");
    o.line(" quit");
}

fn lifetime(o: &mut Out, what: &str, s: u32, min: u32) -> u32 {
    if s == 0 {
        o.comment(1, never_rekeys(what, MAX_LIFETIME));
        MAX_LIFETIME
    } else {
        s.max(min)
    }
}

fn enc(e: Encryption) -> Alg {
    match e {
        Encryption::Aes => Ok("aes-128"),
        Encryption::Aes192 => Ok("aes-192"),
        Encryption::Aes256 => Ok("aes-256"),
        Encryption::Des => Ok("des"),
        Encryption::TripleDes => Ok("3des"),
        Encryption::AesGcm128 | Encryption::AesGcm256 => Err(
            "VRP on AR routers offers no AES-GCM for IKE proposals: choose a CBC cipher on this tunnel",
        ),
    }
}

fn esp_enc(e: Encryption) -> Alg {
    Ok(match e {
        Encryption::Aes => "aes-128",
        Encryption::Aes192 => "aes-192",
        Encryption::Aes256 => "aes-256",
        Encryption::Des => "des",
        Encryption::TripleDes => "3des",
        Encryption::AesGcm128 => "aes-128-gcm-128",
        Encryption::AesGcm256 => "aes-256-gcm-128",
    })
}

fn auth(i: Integrity) -> &'static str {
    match i {
        Integrity::Md5 => "md5",
        Integrity::Sha1 => "sha1",
        Integrity::Sha256 => "sha2-256",
        Integrity::Sha384 => "sha2-384",
        Integrity::Sha512 => "sha2-512",
    }
}

fn hmac(i: Integrity) -> &'static str {
    match i {
        Integrity::Md5 => "hmac-md5",
        Integrity::Sha1 => "hmac-sha1",
        Integrity::Sha256 => "hmac-sha2-256",
        Integrity::Sha384 => "hmac-sha2-384",
        Integrity::Sha512 => "hmac-sha2-512",
    }
}

fn group(g: DhGroup) -> Alg {
    match g {
        DhGroup::Group1 => Ok("group1"),
        DhGroup::Group2 => Ok("group2"),
        DhGroup::Group5 => Ok("group5"),
        DhGroup::Group14 => Ok("group14"),
        DhGroup::Group24 => Ok("group24"),
        DhGroup::Group19 => Ok("group19"),
        DhGroup::Group20 => Ok("group20"),
        DhGroup::Group31 => Err(
            "VRP on AR routers offers no Curve25519 (DH group 31): choose group19, group20 or group14 on this tunnel",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(enc(Encryption::Aes).unwrap(), "aes-128");
        assert!(enc(Encryption::AesGcm128).is_err());
        assert_eq!(esp_enc(Encryption::AesGcm256).unwrap(), "aes-256-gcm-128");
        assert_eq!(auth(Integrity::Sha256), "sha2-256");
        assert_eq!(hmac(Integrity::Sha1), "hmac-sha1");
        assert_eq!(group(DhGroup::Group14).unwrap(), "group14");
        assert!(group(DhGroup::Group31).is_err());
    }
}
