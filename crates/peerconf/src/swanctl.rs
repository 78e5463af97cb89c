//! strongSwan swanctl.conf, in the layout of the product's on-premises examples: one
//! connection per tunnel, one `key = value` per line, braces after the section name.
//! Also the strongSwan algorithm names, shared with the ipsec.conf format.

use model::{
    DhGroup, Encryption, IkeConfig, IkeMode, IkeVersion, Integrity, IpsecConfig, RoutingMode,
};

use crate::text::{Out, quoted};
use crate::view::{PeerTunnel, PeerView, join};

pub(crate) fn render(v: &PeerView<'_>) -> String {
    let mut o = Out::new("#");
    o.comments(0, v.header("strongSwan swanctl.conf"));
    o.comment(
        0,
        "Install as /etc/swanctl/conf.d/<name>.conf (or swanctl.conf), then: swanctl --load-all",
    );
    destination_notes(&mut o, v);
    o.blank();
    o.line("connections {");
    for (i, t) in v.tunnels.iter().enumerate() {
        if i > 0 {
            o.blank();
        }
        connection(&mut o, v, t);
    }
    o.line("}");
    o.blank();
    o.line("secrets {");
    for t in &v.tunnels {
        o.line(format!("    ike-{} {{", t.name));
        o.line(format!("        id-local = {}", t.local_id));
        o.line(format!("        id-remote = {}", t.remote_id));
        o.line(format!("        secret = {}", quoted(t.psk)));
        o.line("    }");
    }
    o.line("}");
    o.finish()
}

/// Destination mode: what the narrowed selectors mean for this device, and where the
/// BGP tunnel addresses go (see [`PeerView::policy_ts`]).
fn destination_notes(o: &mut Out, v: &PeerView<'_>) {
    if v.routing != RoutingMode::Destination {
        return;
    }
    o.comment(0, "");
    if v.tunnels.iter().any(|t| v.narrowed(t)) {
        for line in [
            "Destination mode: vpngw accepts any traffic (0.0.0.0/0 both ways). The children below",
            "narrow the VPC side to the VPC networks, so strongSwan's policies and the routes it",
            "installs (table 220) carry only traffic to the VPC, while IKE and ESP to both vpngw",
            "addresses keep the normal routes. This works as is with kernel-netlink and with",
            "kernel-libipsec; no XFRM interface is needed. Download again when the VPC networks change.",
        ] {
            o.comment(0, line);
        }
    }
    if v.tunnels.iter().any(|t| !v.narrowed(t)) {
        for line in [
            "WARNING: a tunnel below keeps 0.0.0.0/0 on the VPC side (IKEv1 carries one selector pair",
            "and there is more than one VPC network, or none is known): its policy captures all of this",
            "host's traffic. Bind it to an XFRM interface (if_id_in/if_id_out) or use IKEv2.",
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

fn connection(o: &mut Out, v: &PeerView<'_>, t: &PeerTunnel<'_>) {
    let ike = t.ike;
    o.comment(
        4,
        format!(
            "Tunnel {} ({}) {}",
            t.number,
            crate::view::role_name(t.role),
            t.id
        ),
    );
    o.line(format!("    {} {{", t.name));
    o.line(format!(
        "        version = {}",
        match ike.version {
            IkeVersion::Ikev1 => 1,
            IkeVersion::Ikev2 => 2,
        }
    ));
    if ike.version == IkeVersion::Ikev1 && ike.mode == IkeMode::Aggressive {
        o.line("        aggressive = yes");
    }
    match t.local_addr {
        Some(a) => {
            o.comment(
                8,
                "This device's address (the customer gateway). Behind NAT, use the local interface address or %any.",
            );
            o.line(format!("        local_addrs = {a}"));
        }
        None => {
            o.comment(8, "The customer gateway is 0.0.0.0: any local address.");
            o.line("        local_addrs = %any");
        }
    }
    o.line(format!("        remote_addrs = {}", t.remote_addr));
    o.line(format!("        proposals = {}", ike_proposal(ike)));
    if ike.lifetime_s == 0 {
        o.comment(8, "vpngw never rekeys the IKE SA (lifetime 0).");
        o.line("        rekey_time = 0");
    } else {
        let (rekey, over) = rekey_split(ike.lifetime_s);
        o.comment(
            8,
            format!(
                "IKE SA lifetime {} s: rekey before vpngw's SA expires.",
                ike.lifetime_s
            ),
        );
        o.line(format!("        rekey_time = {rekey}s"));
        o.line(format!("        over_time = {over}s"));
    }
    if t.dpd {
        o.line(format!("        dpd_delay = {}s", t.dpd_interval_s));
        if ike.version == IkeVersion::Ikev1 {
            o.line(format!("        dpd_timeout = {}s", t.dpd_timeout_s));
        }
    } else {
        o.comment(8, "DPD is disabled on this tunnel.");
        o.line("        dpd_delay = 0");
    }
    if t.nat_traversal {
        o.comment(
            8,
            "NAT traversal: always encapsulate ESP in UDP 4500 (RFC 3948).",
        );
        o.line("        encap = yes");
    } else {
        o.line("        encap = no");
    }
    o.comment(8, "Keep retrying: vpngw may be unreachable for a while.");
    o.line("        keyingtries = 0");
    o.line("        local {");
    o.line("            auth = psk");
    o.line(format!("            id = {}", t.local_id));
    o.line("        }");
    o.line("        remote {");
    o.line("            auth = psk");
    o.line(format!("            id = {}", t.remote_id));
    o.line("        }");
    o.line("        children {");
    o.line(format!("            {}-net {{", t.name));
    let (local_ts, remote_ts) = v.policy_ts(t);
    if v.narrowed(t) {
        o.comment(
            16,
            format!(
                "Destination routing mode: any source here; the VPC networks ({}){} there.",
                join(&v.remote_nets),
                if t.bgp.is_some() {
                    " and vpngw's BGP address"
                } else {
                    ""
                }
            ),
        );
    } else if v.routing == RoutingMode::Destination {
        o.comment(16, "Destination routing mode: 0.0.0.0/0 both ways.");
    }
    o.line(format!("                local_ts = {}", ts_list(&local_ts)));
    o.line(format!(
        "                remote_ts = {}",
        ts_list(&remote_ts)
    ));
    o.line(format!(
        "                esp_proposals = {}",
        esp_proposal(t.ipsec)
    ));
    if t.ipsec.lifetime_s == 0 {
        o.comment(16, "vpngw never rekeys the Child SA (lifetime 0).");
        o.line("                rekey_time = 0");
    } else {
        let (rekey, _) = rekey_split(t.ipsec.lifetime_s);
        o.line(format!("                rekey_time = {rekey}s"));
        o.line(format!(
            "                life_time = {}s",
            t.ipsec.lifetime_s
        ));
    }
    o.line("                mode = tunnel");
    if v.active_standby() {
        o.comment(
            16,
            "Active/standby pair: the lower priority value wins while its SA is up.",
        );
        o.line(format!("                priority = {}", t.number));
    }
    o.line("                start_action = start");
    o.line("                dpd_action = restart");
    o.line("                close_action = start");
    o.line("            }");
    o.line("        }");
    o.line("    }");
}

/// Rekey at 90 % of the lifetime, leaving the rest as margin (`over_time`).
pub(crate) fn rekey_split(lifetime_s: u32) -> (u32, u32) {
    // Never 0 for a non-zero lifetime: a rekey_time of 0 means "never" to strongSwan.
    let rekey = u32::try_from(u64::from(lifetime_s) * 9 / 10)
        .unwrap_or(lifetime_s)
        .max(1)
        .min(lifetime_s);
    (rekey, lifetime_s - rekey)
}

fn ts_list(nets: &[ipnet::IpNet]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `enc-integ-dh`, or `enc-prf-dh` for AES-GCM, whose integrity is built in and whose
/// PRF must then be named (RFC 5282 §7, strongSwan's `prf*` keywords).
pub(crate) fn ike_proposal(ike: &IkeConfig) -> String {
    let second = if ike.encryption.is_aead() {
        prf(ike.integrity)
    } else {
        integ(ike.integrity)
    };
    format!("{}-{}-{}", enc(ike.encryption), second, dh(ike.dh_group))
}

/// `enc-integ[-dh]`; AES-GCM carries no integrity transform (RFC 4106 §8.1), and the
/// DH group is the PFS group, absent when PFS is disabled.
pub(crate) fn esp_proposal(ipsec: &IpsecConfig) -> String {
    let mut p = enc(ipsec.encryption).to_owned();
    if !ipsec.encryption.is_aead() {
        p.push('-');
        p.push_str(integ(ipsec.integrity));
    }
    if let Some(g) = ipsec.pfs.dh_group() {
        p.push('-');
        p.push_str(dh(g));
    }
    p
}

pub(crate) fn enc(e: Encryption) -> &'static str {
    match e {
        Encryption::Aes => "aes128",
        Encryption::Aes192 => "aes192",
        Encryption::Aes256 => "aes256",
        Encryption::Des => "des",
        Encryption::TripleDes => "3des",
        Encryption::AesGcm128 => "aes128gcm16",
        Encryption::AesGcm256 => "aes256gcm16",
    }
}

pub(crate) fn integ(i: Integrity) -> &'static str {
    match i {
        Integrity::Md5 => "md5",
        Integrity::Sha1 => "sha1",
        Integrity::Sha256 => "sha256",
        Integrity::Sha384 => "sha384",
        Integrity::Sha512 => "sha512",
    }
}

pub(crate) fn prf(i: Integrity) -> &'static str {
    match i {
        Integrity::Md5 => "prfmd5",
        Integrity::Sha1 => "prfsha1",
        Integrity::Sha256 => "prfsha256",
        Integrity::Sha384 => "prfsha384",
        Integrity::Sha512 => "prfsha512",
    }
}

/// RFC 7296 §3.3.2 / RFC 5114 / RFC 5903 / RFC 8031 groups by strongSwan keyword.
pub(crate) fn dh(g: DhGroup) -> &'static str {
    match g {
        DhGroup::Group1 => "modp768",
        DhGroup::Group2 => "modp1024",
        DhGroup::Group5 => "modp1536",
        DhGroup::Group14 => "modp2048",
        DhGroup::Group24 => "modp2048s256",
        DhGroup::Group19 => "ecp256",
        DhGroup::Group20 => "ecp384",
        DhGroup::Group31 => "curve25519",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{IpsecProtocol, Pfs};

    fn ike(e: Encryption, i: Integrity, g: DhGroup) -> IkeConfig {
        IkeConfig {
            version: IkeVersion::Ikev2,
            mode: IkeMode::Main,
            encryption: e,
            integrity: i,
            dh_group: g,
            lifetime_s: 86400,
            local_id: "192.0.2.1".into(),
            remote_id: "203.0.113.7".into(),
        }
    }

    fn esp(e: Encryption, i: Integrity, pfs: Pfs) -> IpsecConfig {
        IpsecConfig {
            protocol: IpsecProtocol::Esp,
            encryption: e,
            integrity: i,
            pfs,
            lifetime_s: 3600,
        }
    }

    #[test]
    fn dh_groups_by_number() {
        let table = [
            (DhGroup::Group1, "modp768"),
            (DhGroup::Group2, "modp1024"),
            (DhGroup::Group5, "modp1536"),
            (DhGroup::Group14, "modp2048"),
            (DhGroup::Group24, "modp2048s256"),
            (DhGroup::Group19, "ecp256"),
            (DhGroup::Group20, "ecp384"),
            (DhGroup::Group31, "curve25519"),
        ];
        for (g, name) in table {
            assert_eq!(dh(g), name, "group {}", g.number());
        }
    }

    #[test]
    fn ciphers_and_integrity() {
        assert_eq!(enc(Encryption::Aes), "aes128");
        assert_eq!(enc(Encryption::Aes192), "aes192");
        assert_eq!(enc(Encryption::Aes256), "aes256");
        assert_eq!(enc(Encryption::Des), "des");
        assert_eq!(enc(Encryption::TripleDes), "3des");
        assert_eq!(enc(Encryption::AesGcm128), "aes128gcm16");
        assert_eq!(enc(Encryption::AesGcm256), "aes256gcm16");
        assert_eq!(integ(Integrity::Md5), "md5");
        assert_eq!(integ(Integrity::Sha512), "sha512");
        assert_eq!(prf(Integrity::Sha256), "prfsha256");
    }

    #[test]
    fn ike_proposals() {
        assert_eq!(
            ike_proposal(&ike(Encryption::Aes, Integrity::Sha1, DhGroup::Group2)),
            "aes128-sha1-modp1024"
        );
        // GCM: integrity is implied, the PRF must be named.
        assert_eq!(
            ike_proposal(&ike(
                Encryption::AesGcm128,
                Integrity::Sha256,
                DhGroup::Group19
            )),
            "aes128gcm16-prfsha256-ecp256"
        );
    }

    #[test]
    fn esp_proposals() {
        assert_eq!(
            esp_proposal(&esp(Encryption::Aes256, Integrity::Sha256, Pfs::Group14)),
            "aes256-sha256-modp2048"
        );
        assert_eq!(
            esp_proposal(&esp(Encryption::TripleDes, Integrity::Md5, Pfs::Disabled)),
            "3des-md5"
        );
        assert_eq!(
            esp_proposal(&esp(Encryption::AesGcm256, Integrity::Sha1, Pfs::Group31)),
            "aes256gcm16-curve25519"
        );
    }

    #[test]
    fn rekey_at_ninety_percent() {
        assert_eq!(rekey_split(86400), (77760, 8640));
        assert_eq!(rekey_split(3600), (3240, 360));
        assert_eq!(rekey_split(5), (4, 1));
        assert_eq!(rekey_split(1), (1, 0));
    }
}
