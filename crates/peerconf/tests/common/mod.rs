//! The connections the golden and strongSwan tests render, built through the model's
//! own validation (so every fixture is a connection the API could hold).

// Helpers outside #[test] fns are not covered by allow-unwrap-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use chrono::{DateTime, Utc};
use model::{
    AsnInput, ConnectionContext, CustomerGateway, CustomerGatewaySpec, DhGroup, Encryption,
    IkeMode, IkeSpec, IkeVersion, Integrity, IpsecSpec, Pfs, PskInput, RoutingMode, TunnelBgpSpec,
    TunnelSpec, VpnConnection, VpnConnectionSpec, VpnGateway, VpnGatewaySpec,
};
use rand::SeedableRng;

pub struct Fixture {
    pub name: &'static str,
    pub gateway: VpnGateway,
    pub cgws: Vec<CustomerGateway>,
    pub connection: VpnConnection,
}

impl Fixture {
    pub fn ctx(&self) -> peerconf::PeerContext<'_> {
        peerconf::PeerContext::new(&self.connection, &self.gateway, &self.cgws)
    }
}

fn epoch() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

pub fn gateway(addresses: &[&str], networks: &[&str]) -> VpnGateway {
    VpnGatewaySpec {
        name: Some("vpc-gw".into()),
        ipsec_addresses: Some(addresses.iter().map(|a| a.to_string()).collect()),
        local_networks: Some(networks.iter().map(|a| a.to_string()).collect()),
        ..Default::default()
    }
    .build("vpn-fixture".into(), epoch())
    .unwrap()
}

pub fn cgw(id: &str, ip: &str, asn: Option<u64>) -> CustomerGateway {
    CustomerGatewaySpec {
        name: Some(id.into()),
        ip_address: Some(ip.into()),
        asn: asn.map(AsnInput::Number),
        ..Default::default()
    }
    .build(id.into(), epoch())
    .unwrap()
}

pub fn build(
    name: &'static str,
    gateway: VpnGateway,
    cgws: Vec<CustomerGateway>,
    spec: VpnConnectionSpec,
) -> Fixture {
    let ids: Vec<String> = (1..=gateway.ipsec_addresses.len())
        .map(|i| format!("tun-{name}-{i}"))
        .collect();
    let ctx = ConnectionContext {
        gateway: &gateway,
        customer_gateways: &cgws,
        tunnel_cidrs_in_use: &[],
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let connection = VpnConnectionSpec {
        vpn_gateway_id: Some(gateway.id.clone()),
        ..spec
    }
    .build(&ctx, format!("vco-{name}"), &ids, epoch(), &mut rng)
    .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    Fixture {
        name,
        gateway,
        cgws,
        connection,
    }
}

fn psk(s: &str) -> Option<PskInput> {
    Some(PskInput(s.into()))
}

/// IKEv2, destination routing mode, two tunnels to one customer gateway, defaults
/// (aes128-sha1-modp1024), keys with characters that need quoting.
pub fn ikev2_destination_dual() -> Fixture {
    let spec = VpnConnectionSpec {
        name: Some("Office VPN".into()),
        customer_gateway_id: Some("cgw-office".into()),
        tunnels: Some(vec![
            TunnelSpec {
                customer_gateway_id: Some("cgw-office".into()),
                pre_shared_key: psk(r#"Tun1#Key{x};'a\b"#),
                ..Default::default()
            },
            TunnelSpec {
                customer_gateway_id: Some("cgw-office".into()),
                pre_shared_key: psk("Tun2-Key=$ecret!"),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    build(
        "v2dest",
        gateway(&["192.0.2.1", "192.0.2.2"], &["10.0.0.0/16"]),
        vec![cgw("cgw-office", "203.0.113.7", None)],
        spec,
    )
}

/// IKEv2, protected flows with several CIDRs, AES-GCM, Curve25519 PFS, ECP IKE group.
pub fn ikev2_protected_flows() -> Fixture {
    let tunnel = |key: &str| TunnelSpec {
        customer_gateway_id: Some("cgw-dc".into()),
        pre_shared_key: psk(key),
        ike: Some(IkeSpec {
            encryption: Some(Encryption::AesGcm128),
            integrity: Some(Integrity::Sha256),
            dh_group: Some(DhGroup::Group19),
            lifetime_s: Some(28_800),
            ..Default::default()
        }),
        ipsec: Some(IpsecSpec {
            encryption: Some(Encryption::AesGcm256),
            pfs: Some(Pfs::Group31),
            lifetime_s: Some(3_600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let spec = VpnConnectionSpec {
        name: Some("dc-flows".into()),
        routing_mode: Some(RoutingMode::ProtectedFlows),
        local_subnets: Some(vec!["10.0.1.0/24".into(), "10.0.2.0/24".into()]),
        remote_subnets: Some(vec![
            "172.16.0.0/24".into(),
            "172.17.0.0/24".into(),
            "172.18.0.0/24".into(),
        ]),
        tunnels: Some(vec![tunnel("FlowKey1?x"), tunnel("FlowKey2")]),
        ..Default::default()
    };
    build(
        "v2flows",
        gateway(&["192.0.2.1", "192.0.2.2"], &["10.0.0.0/16"]),
        vec![cgw("cgw-dc", "198.51.100.20", None)],
        spec,
    )
}

/// IKEv1 main mode, aes192-sha512-modp2048s256 (group 24) with PFS group 24, NAT-T off
/// on tunnel 2.
pub fn ikev1_main() -> Fixture {
    let tunnel = |key: &str, nat: bool| TunnelSpec {
        customer_gateway_id: Some("cgw-branch".into()),
        pre_shared_key: psk(key),
        ike: Some(IkeSpec {
            version: Some(IkeVersion::Ikev1),
            mode: Some(IkeMode::Main),
            encryption: Some(Encryption::Aes192),
            integrity: Some(Integrity::Sha512),
            dh_group: Some(DhGroup::Group24),
            lifetime_s: Some(28_800),
            ..Default::default()
        }),
        ipsec: Some(IpsecSpec {
            encryption: Some(Encryption::TripleDes),
            integrity: Some(Integrity::Md5),
            pfs: Some(Pfs::Group24),
            lifetime_s: Some(3_600),
            ..Default::default()
        }),
        nat_traversal: Some(nat),
        ..Default::default()
    };
    let spec = VpnConnectionSpec {
        name: Some("branch v1".into()),
        tunnels: Some(vec![
            tunnel("V1MainKey1", true),
            tunnel("V1MainKey2", false),
        ]),
        ..Default::default()
    };
    build(
        "v1main",
        gateway(&["192.0.2.1", "192.0.2.2"], &["10.0.0.0/16", "10.1.0.0/16"]),
        vec![cgw("cgw-branch", "203.0.113.9", None)],
        spec,
    )
}

/// IKEv1 aggressive mode with FQDN identities on a single-tunnel gateway; the customer
/// gateway accepts any address (0.0.0.0); PFS off; the Child SA never rekeys.
pub fn ikev1_aggressive_fqdn() -> Fixture {
    let spec = VpnConnectionSpec {
        name: Some("roaming".into()),
        tunnels: Some(vec![TunnelSpec {
            customer_gateway_id: Some("cgw-any".into()),
            pre_shared_key: psk("AggrKey%with^stuff"),
            ike: Some(IkeSpec {
                version: Some(IkeVersion::Ikev1),
                mode: Some(IkeMode::Aggressive),
                integrity: Some(Integrity::Sha256),
                dh_group: Some(DhGroup::Group14),
                local_id: Some("vpn.example.net".into()),
                remote_id: Some("branch.example.com".into()),
                ..Default::default()
            }),
            ipsec: Some(IpsecSpec {
                encryption: Some(Encryption::Aes256),
                integrity: Some(Integrity::Sha256),
                pfs: Some(Pfs::Disabled),
                lifetime_s: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    };
    build(
        "v1aggr",
        gateway(&["192.0.2.10"], &["10.20.0.0/16"]),
        vec![cgw("cgw-any", "0.0.0.0", None)],
        spec,
    )
}

/// BGP over both tunnels, dual egress (two customer gateways with the same AS).
pub fn bgp_dual() -> Fixture {
    let tunnel = |cgw: &str, key: &str, cidr: &str, ip: &str| TunnelSpec {
        customer_gateway_id: Some(cgw.into()),
        pre_shared_key: psk(key),
        ike: Some(IkeSpec {
            encryption: Some(Encryption::Aes256),
            integrity: Some(Integrity::Sha256),
            dh_group: Some(DhGroup::Group14),
            ..Default::default()
        }),
        ipsec: Some(IpsecSpec {
            encryption: Some(Encryption::Aes256),
            integrity: Some(Integrity::Sha256),
            pfs: Some(Pfs::Group14),
            ..Default::default()
        }),
        bgp: Some(TunnelBgpSpec {
            tunnel_cidr: Some(cidr.into()),
            local_ip: Some(ip.into()),
        }),
        ..Default::default()
    };
    let spec = VpnConnectionSpec {
        name: Some("dc-bgp".into()),
        enable_bgp: Some(true),
        local_asn: Some(AsnInput::Number(65_535)),
        remote_subnets: Some(vec!["172.16.20.0/24".into(), "172.16.21.0/24".into()]),
        tunnels: Some(vec![
            tunnel("cgw-e1", "BgpKey1", "169.254.10.0/30", "169.254.10.1"),
            tunnel("cgw-e2", "BgpKey2", "169.254.20.0/30", "169.254.20.1"),
        ]),
        ..Default::default()
    };
    build(
        "bgp",
        gateway(&["192.0.2.1", "192.0.2.2"], &["192.168.0.0/16"]),
        vec![
            cgw("cgw-e1", "203.0.113.7", Some(65_530)),
            cgw("cgw-e2", "203.0.113.8", Some(65_530)),
        ],
        spec,
    )
}

pub fn all() -> Vec<Fixture> {
    vec![
        ikev2_destination_dual(),
        ikev2_protected_flows(),
        ikev1_main(),
        ikev1_aggressive_fqdn(),
        bgp_dual(),
    ]
}

/// A connection between the standard lab topology's gateway addresses (192.0.2.1/.2) and
/// its on-premises peer (198.51.100.1): protected flows 172.16.1.0/24 <-> 10.2.0.0/24,
/// tunnel 1 IKEv2 aes256-sha256-modp2048, tunnel 2 IKEv1 main mode
/// 3des-sha1-modp1536, keys with characters that need escaping.
pub fn lab_pair(onprem_ip: &str) -> Fixture {
    let spec = VpnConnectionSpec {
        name: Some("lab".into()),
        routing_mode: Some(RoutingMode::ProtectedFlows),
        local_subnets: Some(vec!["172.16.1.0/24".into()]),
        remote_subnets: Some(vec!["10.2.0.0/24".into()]),
        tunnels: Some(vec![
            TunnelSpec {
                customer_gateway_id: Some("cgw-lab".into()),
                pre_shared_key: psk(r#"k1\#{};'`$x\"#),
                ike: Some(IkeSpec {
                    encryption: Some(Encryption::Aes256),
                    integrity: Some(Integrity::Sha256),
                    dh_group: Some(DhGroup::Group14),
                    ..Default::default()
                }),
                ipsec: Some(IpsecSpec {
                    encryption: Some(Encryption::Aes256),
                    integrity: Some(Integrity::Sha256),
                    pfs: Some(Pfs::Group14),
                    ..Default::default()
                }),
                ..Default::default()
            },
            TunnelSpec {
                customer_gateway_id: Some("cgw-lab".into()),
                pre_shared_key: psk("k2~!@%^&*()_+=[]|:,.<>/?"),
                ike: Some(IkeSpec {
                    version: Some(IkeVersion::Ikev1),
                    encryption: Some(Encryption::TripleDes),
                    dh_group: Some(DhGroup::Group5),
                    ..Default::default()
                }),
                ipsec: Some(IpsecSpec {
                    encryption: Some(Encryption::TripleDes),
                    pfs: Some(Pfs::Group5),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    build(
        "lab",
        gateway(&["192.0.2.1", "192.0.2.2"], &["172.16.1.0/24"]),
        vec![cgw("cgw-lab", onprem_ip, None)],
        spec,
    )
}
