//! Palo Alto Networks PAN-OS (`set` commands): IKE and IPsec crypto profiles, an IKE
//! gateway and an IPsec tunnel bound to a `tunnel.N` interface per tunnel; proxy IDs in
//! protected-flows mode; static routes or BGP in the virtual router.

use model::{DhGroup, Encryption, IkeMode, IkeVersion, Integrity, RoutingMode};

use crate::text::{Alg, Out, never_rekeys, question_mark_note, quoted};
use crate::view::{PeerTunnel, PeerView, is_ip, role_name};

/// PAN-OS crypto profile lifetimes: seconds 180–65535, or minutes/hours.
const MIN_SECONDS: u32 = 180;
const MAX_SECONDS: u32 = 65_535;
const NEVER_REKEY_HOURS: u32 = 24;

pub(crate) fn render(v: &PeerView<'_>) -> String {
    let mut o = Out::new("#");
    o.comments(0, v.header("Palo Alto Networks PAN-OS (set commands)"));
    o.comment(
        0,
        "Enter configure mode and paste the set lines (PAN-OS has no comments: skip the '#' lines),",
    );
    o.comment(
        0,
        "then commit. Replace <WAN-INTERFACE> (e.g. ethernet1/1) and <VPN-ZONE>; add security",
    );
    o.comment(
        0,
        "policies between the LAN zone and <VPN-ZONE>. The virtual router is assumed to be 'default'.",
    );
    for t in &v.tunnels {
        if let Some(n) = question_mark_note(
            t.psk,
            "press Ctrl-V before each '?' or enter the key in the web UI",
        ) {
            o.comment(0, format!("tunnel {}: {n}", t.number));
        }
    }
    for t in &v.tunnels {
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
    if v.bgp {
        bgp(&mut o, v);
    } else {
        o.comment(
            0,
            "Route the VPC networks into the tunnels, tunnel 1 preferred (lower metric).",
        );
        for t in &v.tunnels {
            for (i, n) in v.remote_nets.iter().enumerate() {
                o.line(format!(
                    "set network virtual-router default routing-table ip static-route {}-{} interface {} destination {n} metric {}",
                    t.name,
                    i + 1,
                    tunnel_if(t),
                    t.number * 10
                ));
            }
        }
    }
    o.finish()
}

fn tunnel_if(t: &PeerTunnel<'_>) -> String {
    format!("tunnel.{}", t.number)
}

fn tunnel(o: &mut Out, v: &PeerView<'_>, t: &PeerTunnel<'_>) {
    let ike = t.ike;
    let n = &t.name;
    let ikep = format!("set network ike crypto-profiles ike-crypto-profiles {n}");
    o.alg_line(0, group(ike.dh_group), |g| format!("{ikep} dh-group {g}"));
    o.alg_line(0, ike_enc(ike.version, ike.encryption), |e| {
        format!("{ikep} encryption {e}")
    });
    // With AES-GCM the hash is the PRF (RFC 5282 §7).
    o.line(format!("{ikep} hash {}", hash(ike.integrity)));
    let l = lifetime(o, "IKE SA", ike.lifetime_s);
    o.line(format!("{ikep} lifetime {l}"));

    let ip = t.ipsec;
    let ipp = format!("set network ike crypto-profiles ipsec-crypto-profiles {n}");
    o.alg_line(0, esp_enc(ip.encryption), |e| {
        format!("{ipp} esp encryption {e}")
    });
    if ip.encryption.is_aead() {
        o.line(format!("{ipp} esp authentication none"));
    } else {
        o.line(format!("{ipp} esp authentication {}", hash(ip.integrity)));
    }
    match ip.pfs.dh_group() {
        Some(g) => o.alg_line(0, group(g), |g| format!("{ipp} dh-group {g}")),
        None => o.line(format!("{ipp} dh-group no-pfs")),
    }
    let l = lifetime(o, "Child SA", ip.lifetime_s);
    o.line(format!("{ipp} lifetime {l}"));

    let unit = format!("set network interface tunnel units {}", tunnel_if(t));
    o.line(format!(
        "{unit} comment {}",
        quoted(&format!("vpngw tunnel {} {}", t.number, t.id))
    ));
    if let Some(b) = &t.bgp {
        o.line(format!("{unit} ip {}/{}", b.local_ip, b.cidr.prefix_len()));
    }
    o.line(format!(
        "set zone <VPN-ZONE> network layer3 {}",
        tunnel_if(t)
    ));
    o.line(format!(
        "set network virtual-router default interface {}",
        tunnel_if(t)
    ));

    let gw = format!("set network ike gateway {n}");
    o.line(format!(
        "{gw} authentication pre-shared-key key {}",
        quoted(t.psk)
    ));
    let (ver, proto) = match ike.version {
        IkeVersion::Ikev1 => ("ikev1", "ikev1"),
        IkeVersion::Ikev2 => ("ikev2", "ikev2"),
    };
    o.line(format!("{gw} protocol version {ver}"));
    o.line(format!("{gw} protocol {proto} ike-crypto-profile {n}"));
    if ike.version == IkeVersion::Ikev1 {
        o.line(format!(
            "{gw} protocol ikev1 exchange-mode {}",
            match ike.mode {
                IkeMode::Main => "main",
                IkeMode::Aggressive => "aggressive",
            }
        ));
    }
    if t.dpd {
        o.line(format!("{gw} protocol {proto} dpd enable yes"));
        o.line(format!(
            "{gw} protocol {proto} dpd interval {}",
            t.dpd_interval_s.clamp(2, 100)
        ));
        if ike.version == IkeVersion::Ikev1 {
            o.line(format!(
                "{gw} protocol ikev1 dpd retry {}",
                (t.dpd_timeout_s / t.dpd_interval_s.max(1)).clamp(2, 100)
            ));
        }
    } else {
        o.line(format!("{gw} protocol {proto} dpd enable no"));
    }
    o.line(format!("{gw} local-address interface <WAN-INTERFACE>"));
    o.line(format!("{gw} peer-address ip {}", t.remote_addr));
    o.line(format!(
        "{gw} local-id type {} id {}",
        id_type(t.local_id),
        t.local_id
    ));
    o.line(format!(
        "{gw} peer-id type {} id {}",
        id_type(t.remote_id),
        t.remote_id
    ));
    o.line(format!(
        "{gw} protocol-common nat-traversal enable {}",
        if t.nat_traversal { "yes" } else { "no" }
    ));

    let tun = format!("set network tunnel ipsec {n}");
    o.line(format!("{tun} auto-key ike-gateway {n}"));
    o.line(format!("{tun} auto-key ipsec-crypto-profile {n}"));
    o.line(format!("{tun} tunnel-interface {}", tunnel_if(t)));
    if v.routing == RoutingMode::ProtectedFlows {
        let mut i = 0;
        for l in &t.local_ts {
            for r in &t.remote_ts {
                i += 1;
                o.line(format!(
                    "{tun} auto-key proxy-id ts{i} local {l} remote {r} protocol any"
                ));
            }
        }
    }
}

fn bgp(o: &mut Out, v: &PeerView<'_>) {
    let Some(first) = v.tunnels.iter().find_map(|t| t.bgp) else {
        return;
    };
    let asn = first.local_asn;
    let b = "set network virtual-router default protocol bgp";
    o.comment(0, "BGP with vpngw over the tunnels.");
    o.line(format!("{b} enable yes"));
    o.line(format!("{b} router-id {}", first.local_ip));
    o.line(format!("{b} local-as {asn}"));
    o.line(format!("{b} peer-group vpngw type ebgp"));
    for t in &v.tunnels {
        let Some(tb) = t.bgp else { continue };
        if tb.local_asn != asn {
            o.comment(
                0,
                format!(
                    "tunnel {} belongs to customer gateway AS {}: configure it on that device.",
                    t.number, tb.local_asn
                ),
            );
            continue;
        }
        let p = format!("{b} peer-group vpngw peer {}", t.name);
        o.line(format!("{p} peer-as {}", tb.remote_asn));
        o.line(format!(
            "{p} local-address interface {} ip {}/{}",
            tunnel_if(t),
            tb.local_ip,
            tb.cidr.prefix_len()
        ));
        o.line(format!("{p} peer-address ip {}", tb.remote_ip));
        o.line(format!("{p} connection-options keep-alive-interval 10"));
        o.line(format!("{p} connection-options hold-time 30"));
    }
    o.comment(
        0,
        "Redistribute this site's networks to vpngw (a redist-profile / redist-rules entry per network).",
    );
}

/// `seconds N`, or `hours N` for whole hours (PAN-OS caps seconds at 65535).
fn lifetime(o: &mut Out, what: &str, s: u32) -> String {
    if s == 0 {
        o.comment(0, never_rekeys(what, NEVER_REKEY_HOURS * 3600));
        return format!("hours {NEVER_REKEY_HOURS}");
    }
    if s.is_multiple_of(3600) {
        format!("hours {}", s / 3600)
    } else if s <= MAX_SECONDS {
        format!("seconds {}", s.max(MIN_SECONDS))
    } else {
        format!("minutes {}", s / 60)
    }
}

fn id_type(id: &str) -> &'static str {
    if is_ip(id) { "ipaddr" } else { "fqdn" }
}

fn ike_enc(version: IkeVersion, e: Encryption) -> Alg {
    match e {
        Encryption::Aes => Ok("aes-128-cbc"),
        Encryption::Aes192 => Ok("aes-192-cbc"),
        Encryption::Aes256 => Ok("aes-256-cbc"),
        Encryption::Des => Ok("des"),
        Encryption::TripleDes => Ok("3des"),
        Encryption::AesGcm128 | Encryption::AesGcm256 if version == IkeVersion::Ikev1 => Err(
            "PAN-OS offers AES-GCM in IKE crypto profiles for IKEv2 only: use ikev2 or a CBC cipher on this tunnel",
        ),
        Encryption::AesGcm128 => Ok("aes-128-gcm"),
        Encryption::AesGcm256 => Ok("aes-256-gcm"),
    }
}

fn esp_enc(e: Encryption) -> Alg {
    Ok(match e {
        Encryption::Aes => "aes-128-cbc",
        Encryption::Aes192 => "aes-192-cbc",
        Encryption::Aes256 => "aes-256-cbc",
        Encryption::Des => "des",
        Encryption::TripleDes => "3des",
        Encryption::AesGcm128 => "aes-128-gcm",
        Encryption::AesGcm256 => "aes-256-gcm",
    })
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

fn group(g: DhGroup) -> Alg {
    match g {
        DhGroup::Group1 => Ok("group1"),
        DhGroup::Group2 => Ok("group2"),
        DhGroup::Group5 => Ok("group5"),
        DhGroup::Group14 => Ok("group14"),
        DhGroup::Group19 => Ok("group19"),
        DhGroup::Group20 => Ok("group20"),
        DhGroup::Group24 => Err(
            "PAN-OS offers no DH group 24 (2048-bit MODP with 256-bit subgroup): choose group14, group19 or group20 on this tunnel",
        ),
        DhGroup::Group31 => Err(
            "PAN-OS offers no Curve25519 (DH group 31): choose group19, group20 or group14 on this tunnel",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(group(DhGroup::Group14).unwrap(), "group14");
        assert!(group(DhGroup::Group24).is_err());
        assert!(group(DhGroup::Group31).is_err());
        assert_eq!(
            ike_enc(IkeVersion::Ikev2, Encryption::Aes).unwrap(),
            "aes-128-cbc"
        );
        assert_eq!(
            ike_enc(IkeVersion::Ikev2, Encryption::AesGcm256).unwrap(),
            "aes-256-gcm"
        );
        assert!(ike_enc(IkeVersion::Ikev1, Encryption::AesGcm256).is_err());
        assert_eq!(esp_enc(Encryption::TripleDes).unwrap(), "3des");
        assert_eq!(hash(Integrity::Sha384), "sha384");
        assert_eq!(id_type("192.0.2.1"), "ipaddr");
        assert_eq!(id_type("vpn.example.com"), "fqdn");
    }

    #[test]
    fn lifetimes() {
        let mut o = Out::new("#");
        assert_eq!(lifetime(&mut o, "x", 86400), "hours 24");
        assert_eq!(lifetime(&mut o, "x", 3000), "seconds 3000");
        assert_eq!(lifetime(&mut o, "x", 100), "seconds 180");
        assert_eq!(lifetime(&mut o, "x", 70_000), "minutes 1166");
        assert!(o.finish().is_empty());
        let mut o = Out::new("#");
        assert_eq!(lifetime(&mut o, "IKE SA", 0), "hours 24");
        assert!(o.finish().contains("never rekeys"));
    }
}
