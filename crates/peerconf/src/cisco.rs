//! Cisco IOS / IOS XE: IKEv2 (`crypto ikev2 proposal/policy/keyring/profile`) or IKEv1
//! (`crypto isakmp policy`, `crypto keyring`, `crypto isakmp profile`), an IPsec
//! transform-set and profile, and a static VTI (`tunnel mode ipsec ipv4` +
//! `tunnel protection`) per tunnel. Protected-flows connections use a crypto map with
//! an ACL instead, because a VTI always negotiates 0.0.0.0/0 selectors.

use model::{DhGroup, Encryption, IkeMode, IkeVersion, Integrity, RoutingMode};

use crate::text::{Alg, Out, net_mask, net_wildcard, never_rekeys, question_mark_note};
use crate::view::{PeerTunnel, PeerView, is_ip, role_name};

/// IOS lifetime limits (seconds) for IKE and IPsec SAs.
const MAX_LIFETIME: u32 = 86_400;
const MIN_IKE_LIFETIME: u32 = 120;
const MIN_IPSEC_LIFETIME: u32 = 120;

pub(crate) fn render(v: &PeerView<'_>) -> String {
    let mut o = Out::new("!");
    o.comments(0, v.header("Cisco IOS / IOS XE"));
    o.comment(
        0,
        "Replace <WAN-INTERFACE> with the Internet-facing interface. Tunnel interface numbers",
    );
    o.comment(
        0,
        "and crypto object names must not clash with existing ones on this router.",
    );
    for t in &v.tunnels {
        if let Some(n) = question_mark_note(t.psk, "type Ctrl-V before each '?'") {
            o.comment(0, format!("tunnel {}: {n}", t.number));
        }
    }
    o.line("!");
    o.line("configure terminal");
    if v.tunnels.iter().any(|t| t.ike.version == IkeVersion::Ikev2) {
        ikev2_policy(&mut o, v);
    }
    for t in &v.tunnels {
        o.line("!");
        o.comment(
            0,
            format!(
                "---- Tunnel {} ({}) {} ----",
                t.number,
                role_name(t.role),
                t.id
            ),
        );
        match t.ike.version {
            IkeVersion::Ikev2 => ikev2(&mut o, v, t),
            IkeVersion::Ikev1 => ikev1(&mut o, v, t),
        }
        ipsec(&mut o, v, t);
        if v.routing == RoutingMode::Destination {
            vti(&mut o, v, t);
        }
    }
    match v.routing {
        RoutingMode::Destination => routes(&mut o, v),
        RoutingMode::ProtectedFlows => crypto_map(&mut o, v),
    }
    if v.bgp {
        bgp(&mut o, v);
    }
    o.line("!");
    o.line("end");
    o.finish()
}

fn obj(v: &PeerView<'_>) -> String {
    format!("VPNGW-{}", v.slug)
}

fn tobj(t: &PeerTunnel<'_>) -> String {
    format!("VPNGW-{}", t.name)
}

fn tunnel_if(t: &PeerTunnel<'_>) -> String {
    format!("Tunnel{}", t.number)
}

/// One IKEv2 policy offering every tunnel's proposal (IOS selects the policy by local
/// address, not by peer).
fn ikev2_policy(o: &mut Out, v: &PeerView<'_>) {
    for t in v
        .tunnels
        .iter()
        .filter(|t| t.ike.version == IkeVersion::Ikev2)
    {
        let ike = t.ike;
        o.line("!");
        o.line(format!("crypto ikev2 proposal {}", tobj(t)));
        o.alg_line(1, ikev2_enc(ike.encryption), |n| format!("encryption {n}"));
        if ike.encryption.is_aead() {
            // RFC 5282: GCM has no separate integrity transform; the PRF is explicit.
            o.line(format!(" prf {}", ikev2_integ(ike.integrity)));
        } else {
            o.line(format!(" integrity {}", ikev2_integ(ike.integrity)));
        }
        o.alg_line(1, group(ike.dh_group), |n| format!("group {n}"));
    }
    let mut locals: Vec<String> = Vec::new();
    for t in v
        .tunnels
        .iter()
        .filter(|t| t.ike.version == IkeVersion::Ikev2)
    {
        if let Some(a) = t.local_addr.map(|a| a.to_string())
            && !locals.contains(&a)
        {
            locals.push(a);
        }
    }
    o.line("!");
    if locals.is_empty() {
        o.comment(
            0,
            "A policy without 'match address local' applies to every local address of this router.",
        );
    }
    o.line(format!("crypto ikev2 policy {}", obj(v)));
    for a in &locals {
        o.line(format!(" match address local {a}"));
    }
    for t in v
        .tunnels
        .iter()
        .filter(|t| t.ike.version == IkeVersion::Ikev2)
    {
        o.line(format!(" proposal {}", tobj(t)));
    }
}

fn ikev2(o: &mut Out, _v: &PeerView<'_>, t: &PeerTunnel<'_>) {
    o.line(format!("crypto ikev2 keyring {}", tobj(t)));
    o.line(" peer vpngw");
    o.line(format!("  address {}", t.remote_addr));
    o.line(format!("  identity {}", id_kw(t.remote_id)));
    o.line(format!("  pre-shared-key {}", t.psk));
    o.line(" !");
    o.line("!");
    o.line(format!("crypto ikev2 profile {}", tobj(t)));
    if is_ip(t.remote_id) {
        o.line(format!(
            " match identity remote address {} 255.255.255.255",
            t.remote_id
        ));
    } else {
        o.line(format!(" match identity remote fqdn {}", t.remote_id));
    }
    o.line(format!(" identity local {}", id_kw(t.local_id)));
    o.line(" authentication remote pre-share");
    o.line(" authentication local pre-share");
    o.line(format!(" keyring local {}", tobj(t)));
    ike_lifetime(o, t, "lifetime");
    if t.dpd {
        o.line(format!(
            " dpd {} {} periodic",
            t.dpd_interval_s,
            dpd_retry(t)
        ));
    }
    nat_note(o, t);
}

fn ikev1(o: &mut Out, _v: &PeerView<'_>, t: &PeerTunnel<'_>) {
    let ike = t.ike;
    o.line(format!("crypto isakmp policy {}", 10 * t.number));
    o.alg_line(1, ikev1_enc(ike.encryption), |n| format!("encryption {n}"));
    o.line(format!(" hash {}", ikev1_hash(ike.integrity)));
    o.line(" authentication pre-share");
    o.alg_line(1, group(ike.dh_group), |n| format!("group {n}"));
    ike_lifetime(o, t, "lifetime");
    o.line("!");
    o.line(format!("crypto keyring {}", tobj(t)));
    if is_ip(t.remote_id) {
        o.line(format!(
            " pre-shared-key address {} key {}",
            t.remote_addr, t.psk
        ));
    } else {
        o.line(format!(
            " pre-shared-key hostname {} key {}",
            t.remote_id, t.psk
        ));
    }
    o.line("!");
    o.line(format!("crypto isakmp profile {}", tobj(t)));
    o.line(format!(" keyring {}", tobj(t)));
    if is_ip(t.local_id) {
        o.line(" self-identity address");
        if t.local_addr.map(|a| a.to_string()).as_deref() != Some(t.local_id) {
            o.comment(
                1,
                format!(
                    "IOS sends the address of the WAN interface; vpngw expects {}.",
                    t.local_id
                ),
            );
        }
    } else {
        o.comment(
            1,
            format!(
                "IOS sends <hostname>.<ip domain name> as its FQDN: set them so that it reads {}.",
                t.local_id
            ),
        );
        o.line(" self-identity fqdn");
    }
    if is_ip(t.remote_id) {
        o.line(format!(
            " match identity address {} 255.255.255.255",
            t.remote_id
        ));
    } else {
        o.line(format!(" match identity host {}", t.remote_id));
    }
    if ike.mode == IkeMode::Aggressive {
        o.line(" initiate mode aggressive");
    }
    if t.dpd {
        o.line(format!(
            " keepalive {} retry {}",
            t.dpd_interval_s,
            dpd_retry(t)
        ));
    }
    nat_note(o, t);
}

fn ipsec(o: &mut Out, _v: &PeerView<'_>, t: &PeerTunnel<'_>) {
    let p = t.ipsec;
    o.line("!");
    let mut ts = format!("crypto ipsec transform-set {} ", tobj(t));
    match esp_enc(p.encryption) {
        Ok(n) => ts.push_str(n),
        Err(why) => o.comment(0, format!("UNSUPPORTED: {why}")),
    }
    if !p.encryption.is_aead() {
        ts.push(' ');
        ts.push_str(esp_integ(p.integrity));
    }
    o.line(ts);
    o.line(" mode tunnel");
    o.line("!");
    o.line(format!("crypto ipsec profile {}", tobj(t)));
    ipsec_sets(o, t);
}

/// The `set` lines shared by an IPsec profile and a crypto map entry.
fn ipsec_sets(o: &mut Out, t: &PeerTunnel<'_>) {
    let p = t.ipsec;
    o.line(format!(" set transform-set {}", tobj(t)));
    match p.pfs.dh_group() {
        Some(g) => o.alg_line(1, group(g), |n| format!("set pfs group{n}")),
        None => o.comment(1, "PFS is disabled on this tunnel (no 'set pfs')."),
    }
    let s = if p.lifetime_s == 0 {
        o.comment(1, never_rekeys("Child SA", MAX_LIFETIME));
        MAX_LIFETIME
    } else {
        p.lifetime_s.clamp(MIN_IPSEC_LIFETIME, MAX_LIFETIME)
    };
    o.line(format!(" set security-association lifetime seconds {s}"));
    match t.ike.version {
        IkeVersion::Ikev2 => o.line(format!(" set ikev2-profile {}", tobj(t))),
        IkeVersion::Ikev1 => o.line(format!(" set isakmp-profile {}", tobj(t))),
    }
}

fn vti(o: &mut Out, _v: &PeerView<'_>, t: &PeerTunnel<'_>) {
    o.line("!");
    o.line(format!("interface {}", tunnel_if(t)));
    o.line(format!(" description vpngw tunnel {} {}", t.number, t.id));
    match &t.bgp {
        Some(b) => o.line(format!(" ip address {} {}", b.local_ip, b.cidr.netmask())),
        None => o.line(" ip unnumbered <WAN-INTERFACE>"),
    }
    o.line(" tunnel source <WAN-INTERFACE>");
    o.line(" tunnel mode ipsec ipv4");
    o.line(format!(" tunnel destination {}", t.remote_addr));
    o.line(format!(" tunnel protection ipsec profile {}", tobj(t)));
}

fn routes(o: &mut Out, v: &PeerView<'_>) {
    if v.bgp {
        return;
    }
    o.line("!");
    o.comment(
        0,
        "Destination routing mode: route the VPC networks into the tunnels, tunnel 1 preferred.",
    );
    for t in &v.tunnels {
        for n in &v.remote_nets {
            let distance = if t.number == 1 {
                String::new()
            } else {
                format!(" {}", t.number * 10)
            };
            o.line(format!(
                "ip route {} {}{distance}",
                net_mask(n),
                tunnel_if(t)
            ));
        }
    }
}

fn crypto_map(o: &mut Out, v: &PeerView<'_>) {
    let acl = obj(v);
    o.line("!");
    o.comment(
        0,
        "Protected flows: this site's networks <-> the VPC networks.",
    );
    o.line(format!("ip access-list extended {acl}"));
    if let Some(t) = v.tunnels.first() {
        for l in &t.local_ts {
            for r in &t.remote_ts {
                o.line(format!(
                    " permit ip {} {}",
                    net_wildcard(l),
                    net_wildcard(r)
                ));
            }
        }
    }
    for t in &v.tunnels {
        o.line("!");
        if t.number > 1 {
            o.comment(
                0,
                "IOS sends matching traffic through the lowest-numbered entry whose SA is up;",
            );
            o.comment(0, "this entry is the standby tunnel.");
        }
        o.line(format!(
            "crypto map {} {} ipsec-isakmp",
            obj(v),
            10 * t.number
        ));
        o.line(format!(" description vpngw tunnel {} {}", t.number, t.id));
        o.line(format!(" set peer {}", t.remote_addr));
        ipsec_sets(o, t);
        o.line(format!(" match address {acl}"));
    }
    o.line("!");
    o.line("interface <WAN-INTERFACE>");
    o.line(format!(" crypto map {}", obj(v)));
}

fn bgp(o: &mut Out, v: &PeerView<'_>) {
    let Some(asn) = v.tunnels.iter().find_map(|t| t.bgp.map(|b| b.local_asn)) else {
        return;
    };
    o.line("!");
    o.line(format!("router bgp {asn}"));
    for t in &v.tunnels {
        if let Some(b) = &t.bgp {
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
            o.line(format!(
                " neighbor {} remote-as {}",
                b.remote_ip, b.remote_asn
            ));
            o.line(format!(" neighbor {} timers 10 30", b.remote_ip));
        }
    }
    o.line(" address-family ipv4 unicast");
    for t in &v.tunnels {
        if let Some(b) = t.bgp.filter(|b| b.local_asn == asn) {
            o.line(format!("  neighbor {} activate", b.remote_ip));
        }
    }
    if v.local_nets.is_empty() {
        o.comment(
            2,
            "Announce this site's networks, e.g.: network 172.16.0.0 mask 255.255.0.0",
        );
    } else {
        for n in &v.local_nets {
            if let ipnet::IpNet::V4(n4) = n {
                o.line(format!("  network {} mask {}", n4.network(), n4.netmask()));
            }
        }
    }
    o.line(" exit-address-family");
}

fn ike_lifetime(o: &mut Out, t: &PeerTunnel<'_>, kw: &str) {
    let s = if t.ike.lifetime_s == 0 {
        o.comment(1, never_rekeys("IKE SA", MAX_LIFETIME));
        MAX_LIFETIME
    } else {
        t.ike.lifetime_s.clamp(MIN_IKE_LIFETIME, MAX_LIFETIME)
    };
    o.line(format!(" {kw} {s}"));
}

fn nat_note(o: &mut Out, t: &PeerTunnel<'_>) {
    if !t.nat_traversal {
        o.comment(
            1,
            "NAT traversal is off on this tunnel: keep this router's public address un-NATed.",
        );
    }
}

/// IOS retransmits a DPD probe every `retry` seconds, five times, before declaring the
/// peer dead; spread vpngw's timeout over those five.
fn dpd_retry(t: &PeerTunnel<'_>) -> u32 {
    (t.dpd_timeout_s.saturating_sub(t.dpd_interval_s) / 5).clamp(2, 60)
}

fn id_kw(id: &str) -> String {
    if is_ip(id) {
        format!("address {id}")
    } else {
        format!("fqdn {id}")
    }
}

fn ikev2_enc(e: Encryption) -> Alg {
    Ok(match e {
        Encryption::Aes => "aes-cbc-128",
        Encryption::Aes192 => "aes-cbc-192",
        Encryption::Aes256 => "aes-cbc-256",
        Encryption::Des => "des",
        Encryption::TripleDes => "3des",
        Encryption::AesGcm128 => "aes-gcm-128",
        Encryption::AesGcm256 => "aes-gcm-256",
    })
}

fn ikev2_integ(i: Integrity) -> &'static str {
    match i {
        Integrity::Md5 => "md5",
        Integrity::Sha1 => "sha1",
        Integrity::Sha256 => "sha256",
        Integrity::Sha384 => "sha384",
        Integrity::Sha512 => "sha512",
    }
}

fn ikev1_enc(e: Encryption) -> Alg {
    match e {
        Encryption::Aes => Ok("aes"),
        Encryption::Aes192 => Ok("aes 192"),
        Encryption::Aes256 => Ok("aes 256"),
        Encryption::Des => Ok("des"),
        Encryption::TripleDes => Ok("3des"),
        Encryption::AesGcm128 | Encryption::AesGcm256 => Err(
            "IOS has no AES-GCM for IKEv1 (isakmp) policies: use ikev2 or a CBC cipher on this tunnel",
        ),
    }
}

fn ikev1_hash(i: Integrity) -> &'static str {
    match i {
        Integrity::Md5 => "md5",
        Integrity::Sha1 => "sha",
        Integrity::Sha256 => "sha256",
        Integrity::Sha384 => "sha384",
        Integrity::Sha512 => "sha512",
    }
}

/// The number after `group` / `set pfs group`.
fn group(g: DhGroup) -> Alg {
    match g {
        DhGroup::Group1 => Ok("1"),
        DhGroup::Group2 => Ok("2"),
        DhGroup::Group5 => Ok("5"),
        DhGroup::Group14 => Ok("14"),
        DhGroup::Group24 => Ok("24"),
        DhGroup::Group19 => Ok("19"),
        DhGroup::Group20 => Ok("20"),
        DhGroup::Group31 => Err(
            "IOS / IOS XE offer no Curve25519 (DH group 31): choose group 19, 20 or 14 on this tunnel",
        ),
    }
}

fn esp_enc(e: Encryption) -> Alg {
    Ok(match e {
        Encryption::Aes => "esp-aes",
        Encryption::Aes192 => "esp-aes 192",
        Encryption::Aes256 => "esp-aes 256",
        Encryption::Des => "esp-des",
        Encryption::TripleDes => "esp-3des",
        Encryption::AesGcm128 => "esp-gcm",
        Encryption::AesGcm256 => "esp-gcm 256",
    })
}

fn esp_integ(i: Integrity) -> &'static str {
    match i {
        Integrity::Md5 => "esp-md5-hmac",
        Integrity::Sha1 => "esp-sha-hmac",
        Integrity::Sha256 => "esp-sha256-hmac",
        Integrity::Sha384 => "esp-sha384-hmac",
        Integrity::Sha512 => "esp-sha512-hmac",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_numbers() {
        for g in [
            DhGroup::Group1,
            DhGroup::Group2,
            DhGroup::Group5,
            DhGroup::Group14,
            DhGroup::Group24,
            DhGroup::Group19,
            DhGroup::Group20,
        ] {
            assert_eq!(group(g).unwrap(), g.number().to_string());
        }
        assert!(group(DhGroup::Group31).unwrap_err().contains("group 31"));
    }

    #[test]
    fn cipher_names() {
        assert_eq!(ikev2_enc(Encryption::Aes).unwrap(), "aes-cbc-128");
        assert_eq!(ikev2_enc(Encryption::AesGcm256).unwrap(), "aes-gcm-256");
        assert_eq!(ikev1_enc(Encryption::Aes256).unwrap(), "aes 256");
        assert!(ikev1_enc(Encryption::AesGcm128).is_err());
        assert_eq!(ikev1_hash(Integrity::Sha1), "sha");
        assert_eq!(ikev2_integ(Integrity::Sha1), "sha1");
        assert_eq!(esp_enc(Encryption::Aes).unwrap(), "esp-aes");
        assert_eq!(esp_enc(Encryption::AesGcm128).unwrap(), "esp-gcm");
        assert_eq!(esp_integ(Integrity::Sha256), "esp-sha256-hmac");
    }
}
