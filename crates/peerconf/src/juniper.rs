//! Juniper SRX (Junos `set` commands): `security ike proposal/policy/gateway`,
//! `security ipsec proposal/policy/vpn` bound to an `st0` unit per tunnel; traffic
//! selectors in protected-flows mode.

use model::{DhGroup, Encryption, IkeMode, IkeVersion, Integrity, RoutingMode};

use crate::text::{Alg, Out, never_rekeys, quoted};
use crate::view::{PeerTunnel, PeerView, is_ip, role_name};

/// Junos accepts lifetime-seconds 180–86400 for IKE and IPsec proposals.
const MIN_LIFETIME: u32 = 180;
const MAX_LIFETIME: u32 = 86_400;

pub(crate) fn render(v: &PeerView<'_>) -> String {
    let mut o = Out::new("#");
    o.comments(0, v.header("Juniper SRX (Junos set commands)"));
    o.comment(
        0,
        "Load with: configure; load set terminal; (paste); commit check; commit",
    );
    o.comment(
        0,
        "Replace <WAN-INTERFACE> (e.g. ge-0/0/0.0) and <VPN-ZONE>; the WAN zone must allow IKE",
    );
    o.comment(
        0,
        "(host-inbound-traffic system-services ike), and security policies must permit the traffic.",
    );
    for t in &v.tunnels {
        o.blank();
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
    o.blank();
    if v.routing == RoutingMode::Destination && !v.bgp {
        o.comment(
            0,
            "Destination routing mode: route the VPC networks into the tunnels, tunnel 1 preferred.",
        );
        for n in &v.remote_nets {
            for t in &v.tunnels {
                let unit = st0(t);
                if t.number == 1 {
                    o.line(format!(
                        "set routing-options static route {n} next-hop {unit}"
                    ));
                } else {
                    o.line(format!(
                        "set routing-options static route {n} qualified-next-hop {unit} preference {}",
                        5 + t.number * 5
                    ));
                }
            }
        }
    }
    if v.bgp {
        bgp(&mut o, v);
    }
    o.finish()
}

fn st0(t: &PeerTunnel<'_>) -> String {
    format!("st0.{}", t.number)
}

fn tunnel(o: &mut Out, v: &PeerView<'_>, t: &PeerTunnel<'_>) {
    let ike = t.ike;
    let n = &t.name;
    let p = format!("set security ike proposal {n}-ike");
    o.line(format!("{p} authentication-method pre-shared-keys"));
    o.alg_line(0, group(ike.dh_group), |g| format!("{p} dh-group {g}"));
    if !ike.encryption.is_aead() {
        o.line(format!(
            "{p} authentication-algorithm {}",
            ike_auth(ike.integrity)
        ));
    }
    o.alg_line(0, enc(ike.encryption), |e| {
        format!("{p} encryption-algorithm {e}")
    });
    let l = lifetime(o, "IKE SA", ike.lifetime_s);
    o.line(format!("{p} lifetime-seconds {l}"));
    let pol = format!("set security ike policy {n}-ike");
    if ike.version == IkeVersion::Ikev1 {
        o.line(format!(
            "{pol} mode {}",
            match ike.mode {
                IkeMode::Main => "main",
                IkeMode::Aggressive => "aggressive",
            }
        ));
    }
    o.line(format!("{pol} proposals {n}-ike"));
    o.line(format!("{pol} pre-shared-key ascii-text {}", quoted(t.psk)));
    let gw = format!("set security ike gateway {n}");
    o.line(format!("{gw} ike-policy {n}-ike"));
    o.line(format!("{gw} address {}", t.remote_addr));
    o.line(format!("{gw} external-interface <WAN-INTERFACE>"));
    o.line(format!("{gw} local-identity {}", identity(t.local_id)));
    o.line(format!("{gw} remote-identity {}", identity(t.remote_id)));
    o.line(format!(
        "{gw} version {}",
        match ike.version {
            IkeVersion::Ikev1 => "v1-only",
            IkeVersion::Ikev2 => "v2-only",
        }
    ));
    if t.dpd {
        o.line(format!(
            "{gw} dead-peer-detection interval {}",
            t.dpd_interval_s.clamp(2, 60)
        ));
        o.line(format!(
            "{gw} dead-peer-detection threshold {}",
            (t.dpd_timeout_s / t.dpd_interval_s.max(1)).clamp(1, 5)
        ));
    }
    if !t.nat_traversal {
        o.line(format!("{gw} no-nat-traversal"));
    }

    let ip = t.ipsec;
    let pp = format!("set security ipsec proposal {n}-ipsec");
    o.line(format!("{pp} protocol esp"));
    if !ip.encryption.is_aead() {
        o.line(format!(
            "{pp} authentication-algorithm {}",
            esp_auth(ip.integrity)
        ));
    }
    o.alg_line(0, enc(ip.encryption), |e| {
        format!("{pp} encryption-algorithm {e}")
    });
    let l = lifetime(o, "Child SA", ip.lifetime_s);
    o.line(format!("{pp} lifetime-seconds {l}"));
    let ipol = format!("set security ipsec policy {n}-ipsec");
    match ip.pfs.dh_group() {
        Some(g) => o.alg_line(0, group(g), |g| {
            format!("{ipol} perfect-forward-secrecy keys {g}")
        }),
        None => o.comment(0, "PFS is disabled on this tunnel."),
    }
    o.line(format!("{ipol} proposals {n}-ipsec"));
    let vpn = format!("set security ipsec vpn {n}");
    o.line(format!("{vpn} bind-interface {}", st0(t)));
    o.line(format!("{vpn} ike gateway {n}"));
    o.line(format!("{vpn} ike ipsec-policy {n}-ipsec"));
    o.line(format!("{vpn} establish-tunnels immediately"));
    if v.routing == RoutingMode::ProtectedFlows {
        let mut i = 0;
        for l in &t.local_ts {
            for r in &t.remote_ts {
                i += 1;
                o.line(format!(
                    "{vpn} traffic-selector ts{i} local-ip {l} remote-ip {r}"
                ));
            }
        }
    }
    let unit = format!("set interfaces st0 unit {}", t.number);
    match &t.bgp {
        Some(b) => o.line(format!(
            "{unit} family inet address {}/{}",
            b.local_ip,
            b.cidr.prefix_len()
        )),
        None => o.line(format!("{unit} family inet")),
    }
    o.line(format!(
        "set security zones security-zone <VPN-ZONE> interfaces {}",
        st0(t)
    ));
    if t.bgp.is_some() {
        o.line(format!(
            "set security zones security-zone <VPN-ZONE> interfaces {} host-inbound-traffic protocols bgp",
            st0(t)
        ));
    }
}

fn bgp(o: &mut Out, v: &PeerView<'_>) {
    let Some(asn) = v.tunnels.iter().find_map(|t| t.bgp.map(|b| b.local_asn)) else {
        return;
    };
    o.comment(0, "BGP with vpngw over the tunnels.");
    o.line(format!("set routing-options autonomous-system {asn}"));
    let g = format!("set protocols bgp group {}", v.slug);
    o.line(format!("{g} type external"));
    o.line(format!("{g} hold-time 30"));
    for t in &v.tunnels {
        let Some(b) = t.bgp else { continue };
        if b.local_asn != asn {
            o.comment(
                0,
                format!(
                    "tunnel {} belongs to customer gateway AS {}: configure it on that device.",
                    t.number, b.local_asn
                ),
            );
            continue;
        }
        o.line(format!(
            "{g} neighbor {} peer-as {}",
            b.remote_ip, b.remote_asn
        ));
        o.line(format!(
            "{g} neighbor {} local-address {}",
            b.remote_ip, b.local_ip
        ));
    }
    o.comment(
        0,
        format!("Export this site's networks with a policy, e.g.: {g} export <POLICY>"),
    );
}

/// Junos has no lifetime 0; vpngw's 0 (never rekey) becomes the maximum.
fn lifetime(o: &mut Out, what: &str, s: u32) -> u32 {
    if s == 0 {
        o.comment(0, never_rekeys(what, MAX_LIFETIME));
        MAX_LIFETIME
    } else {
        s.clamp(MIN_LIFETIME, MAX_LIFETIME)
    }
}

fn identity(id: &str) -> String {
    if is_ip(id) {
        format!("inet {id}")
    } else {
        format!("hostname {id}")
    }
}

fn enc(e: Encryption) -> Alg {
    Ok(match e {
        Encryption::Aes => "aes-128-cbc",
        Encryption::Aes192 => "aes-192-cbc",
        Encryption::Aes256 => "aes-256-cbc",
        Encryption::Des => "des-cbc",
        Encryption::TripleDes => "3des-cbc",
        Encryption::AesGcm128 => "aes-128-gcm",
        Encryption::AesGcm256 => "aes-256-gcm",
    })
}

fn ike_auth(i: Integrity) -> &'static str {
    match i {
        Integrity::Md5 => "md5",
        Integrity::Sha1 => "sha1",
        Integrity::Sha256 => "sha-256",
        Integrity::Sha384 => "sha-384",
        Integrity::Sha512 => "sha-512",
    }
}

/// RFC 4868 truncations: SHA-256/384/512 HMACs use half the hash as ICV.
fn esp_auth(i: Integrity) -> &'static str {
    match i {
        Integrity::Md5 => "hmac-md5-96",
        Integrity::Sha1 => "hmac-sha1-96",
        Integrity::Sha256 => "hmac-sha-256-128",
        Integrity::Sha384 => "hmac-sha-384-192",
        Integrity::Sha512 => "hmac-sha-512-256",
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
            "Junos on SRX offers no Curve25519 (DH group 31): choose group19, group20 or group14 on this tunnel",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(group(DhGroup::Group14).unwrap(), "group14");
        assert_eq!(group(DhGroup::Group24).unwrap(), "group24");
        assert!(group(DhGroup::Group31).is_err());
        assert_eq!(enc(Encryption::Aes).unwrap(), "aes-128-cbc");
        assert_eq!(enc(Encryption::TripleDes).unwrap(), "3des-cbc");
        assert_eq!(enc(Encryption::AesGcm256).unwrap(), "aes-256-gcm");
        assert_eq!(ike_auth(Integrity::Sha256), "sha-256");
        assert_eq!(esp_auth(Integrity::Sha1), "hmac-sha1-96");
        assert_eq!(esp_auth(Integrity::Sha256), "hmac-sha-256-128");
        assert_eq!(identity("192.0.2.1"), "inet 192.0.2.1");
        assert_eq!(identity("vpn.example.com"), "hostname vpn.example.com");
    }
}
