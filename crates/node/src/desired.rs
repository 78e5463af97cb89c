//! The desired state of a node, derived from the store's resources: which tunnels to run
//! with which IKE configuration, which prefixes go to which connection, which kernel
//! routes point into the TUN device. Pure functions, so every rule is unit-tested.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crypto::{DhGroup as CDh, Encr, Integ};
use ike::{EspProposal, Identity, IkeProposal, Ipv4Cidr, PeerConfig, Psk, V1Mode};
use ipnet::{IpNet, Ipv4Net};
use model::{
    ConnectionStatus, CustomerGateway, DhGroup, Encryption, GatewayStatus, IkeMode, IkeVersion,
    Integrity, PolicyRoute, Route, RoutingMode, Tunnel, TunnelState, VpnConnection, VpnGateway,
};

/// Policy priority of the routes generated from protected flows (as `model` reports it).
const AUTO_POLICY_PRIORITY: u32 = 10;

/// Everything a node runs, in a form the control thread applies idempotently.
#[derive(Debug, Clone, Default)]
pub(crate) struct Desired {
    /// Connections, in a stable order; routes refer to them by index.
    pub conns: Vec<ConnSpec>,
    pub tunnels: Vec<TunnelSpec>,
    /// Destination routes: prefix → (primary, standby) connection indexes.
    pub routes: Vec<(Ipv4Net, Target)>,
    /// Policy routes: (source, destination, priority) → connection indexes.
    pub policies: Vec<(Ipv4Net, Ipv4Net, u32, Target)>,
    /// Prefixes routed into the TUN device (never a default route: LAB.md, decrypted
    /// traffic would loop back into the tunnel).
    pub kernel_routes: BTreeSet<Ipv4Net>,
    /// Connection-wide notes for the connection log (`connection id`, message), e.g. a
    /// route that was not installed and why.
    pub notes: Vec<(String, String)>,
}

/// One connection as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnSpec {
    pub id: String,
    /// Tunnel IDs in order: tunnel 1 (primary), tunnel 2 (secondary).
    pub tunnels: Vec<String>,
    /// The connection's health check, if enabled (see `health.rs`).
    pub health: Option<crate::health::HealthSpec>,
}

/// Connections a prefix goes to: the active one and, if any, the standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub primary: usize,
    pub standby: Option<usize>,
}

/// One tunnel to run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TunnelSpec {
    pub id: String,
    pub conn_id: String,
    /// The IKE configuration, or why this node cannot run the tunnel.
    pub peer: Result<PeerConfig, String>,
    /// Negotiate at once (true) or on the first packet from the VPC / from the peer.
    pub effective_immediately: bool,
}

/// Reads what to run from the resources. `addr_ok` says whether an IPsec address is
/// usable on this node (`Err(reason)` if not).
pub(crate) fn build(
    gateways: &[VpnGateway],
    customer_gateways: &[CustomerGateway],
    connections: &[VpnConnection],
    routes: &HashMap<String, Vec<Route>>,
    policy_routes: &HashMap<String, Vec<PolicyRoute>>,
    addr_ok: &dyn Fn(IpAddr) -> Result<(), String>,
) -> Desired {
    let cgws: HashMap<&str, &CustomerGateway> = customer_gateways
        .iter()
        .map(|c| (c.id.as_str(), c))
        .collect();
    let mut d = Desired::default();
    for gw in gateways
        .iter()
        .filter(|g| g.status != GatewayStatus::Deleting)
    {
        let conns: Vec<&VpnConnection> = connections
            .iter()
            .filter(|c| c.vpn_gateway_id == gw.id && c.status != ConnectionStatus::Deleting)
            .collect();
        let base = d.conns.len();
        let index: HashMap<&str, usize> = conns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.as_str(), base + i))
            .collect();
        for c in &conns {
            let mut ids = Vec::new();
            for t in c
                .tunnels
                .iter()
                .filter(|t| t.state != TunnelState::Deleting)
            {
                ids.push(t.id.clone());
                let peer = match cgws.get(t.customer_gateway_id.as_str()) {
                    Some(cgw) => addr_ok(t.gateway_address).and_then(|()| peer_config(c, t, cgw)),
                    None => Err(format!(
                        "customer gateway {} does not exist",
                        t.customer_gateway_id
                    )),
                };
                d.tunnels.push(TunnelSpec {
                    id: t.id.clone(),
                    conn_id: c.id.clone(),
                    peer,
                    effective_immediately: c.effective_immediately,
                });
            }
            let health = crate::health::spec(c).unwrap_or_else(|why| {
                d.notes.push((c.id.clone(), why));
                None
            });
            d.conns.push(ConnSpec {
                id: c.id.clone(),
                tunnels: ids,
                health,
            });
        }
        let owned: Vec<VpnConnection> = conns.iter().map(|c| (*c).clone()).collect();
        let empty_r = Vec::new();
        let empty_p = Vec::new();
        let table = model::route_table(
            routes.get(&gw.id).unwrap_or(&empty_r),
            policy_routes.get(&gw.id).unwrap_or(&empty_p),
            &owned,
        );
        add_routes(&mut d, gw, &table, &index);
    }
    d
}

/// (source for policy routes, destination, priority) of a forwarding entry.
type RouteKey = (Option<Ipv4Net>, Ipv4Net, u32);

/// Turns a gateway's effective route table into forwarding entries and kernel routes.
fn add_routes(
    d: &mut Desired,
    gw: &VpnGateway,
    table: &[model::RouteTableEntry],
    index: &HashMap<&str, usize>,
) {
    let mut targets: Vec<(RouteKey, Target)> = Vec::new();
    // Weight 100 first, so that the weight-100 route of a prefix is the primary whatever
    // the table order. The table's states (inactive, standby) follow observed status
    // the node reported earlier; the forwarding state must not wait for that: the
    // workers fall through to the standby per packet when the primary connection has
    // no usable tunnel (fwd.rs).
    let mut entries: Vec<&model::RouteTableEntry> = table.iter().collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.weight));
    for e in entries {
        let Some(&conn) = index.get(e.next_hop.as_str()) else {
            continue;
        };
        let (IpNet::V4(dst), src) = (e.destination, e.source) else {
            d.notes.push((
                e.next_hop.clone(),
                format!(
                    "route to {} not installed: IPv6 is not supported yet",
                    e.destination
                ),
            ));
            continue;
        };
        let src = match src {
            None => None,
            Some(IpNet::V4(s)) => Some(s),
            Some(IpNet::V6(_)) => continue,
        };
        let prio = e.priority.map_or(AUTO_POLICY_PRIORITY, u32::from);
        let key = (src, dst, if src.is_some() { prio } else { 0 });
        let standby = e.weight == 0;
        match targets.iter_mut().find(|(k, _)| *k == key) {
            Some((_, t)) if standby => {
                t.standby.get_or_insert(conn);
            }
            Some((_, t)) => {
                // A second active route for the same prefix: keep the first as primary,
                // the other takes over when it has no tunnel up.
                if t.primary != conn {
                    t.standby.get_or_insert(conn);
                }
            }
            None => targets.push((
                key,
                Target {
                    primary: conn,
                    standby: None,
                },
            )),
        }
        if dst.prefix_len() == 0 {
            d.notes.push((
                e.next_hop.clone(),
                "no kernel route into the tunnel device for 0.0.0.0/0: decrypted traffic \
                 would loop back into the tunnel; the route only applies to traffic that \
                 already reaches the gateway's tunnel device"
                    .into(),
            ));
        } else if let Some(n) = gw
            .local_networks
            .iter()
            .find(|n| matches!(n, IpNet::V4(l) if l.contains(&dst) || dst.contains(l)))
        {
            d.notes.push((
                e.next_hop.clone(),
                format!(
                    "no kernel route into the tunnel device for {dst}: it overlaps the \
                     gateway's local network {n}"
                ),
            ));
        } else {
            d.kernel_routes.insert(dst);
        }
    }
    for ((src, dst, prio), t) in targets {
        match src {
            None => d.routes.push((dst, t)),
            Some(s) => d.policies.push((s, dst, prio, t)),
        }
    }
}

/// The IKE configuration of a tunnel (RFC 7296 terms), from the API's model.
pub(crate) fn peer_config(
    c: &VpnConnection,
    t: &Tunnel,
    cgw: &CustomerGateway,
) -> Result<PeerConfig, String> {
    let IpAddr::V4(local) = t.gateway_address else {
        return Err(format!(
            "IPsec address {} is IPv6, which this node does not support yet",
            t.gateway_address
        ));
    };
    let remote = match cgw.ip_address {
        IpAddr::V4(a) if a.is_unspecified() => None,
        IpAddr::V4(a) => Some(SocketAddr::new(IpAddr::V4(a), 500)),
        IpAddr::V6(a) => {
            return Err(format!(
                "customer gateway address {a} is IPv6, which this node does not support yet"
            ));
        }
    };
    let (local_ts, remote_ts) = match c.routing_mode {
        RoutingMode::Destination => (vec![Ipv4Cidr::ANY], vec![Ipv4Cidr::ANY]),
        RoutingMode::ProtectedFlows => (cidrs(&c.local_subnets)?, cidrs(&c.remote_subnets)?),
    };
    Ok(PeerConfig {
        version: match t.ike.version {
            IkeVersion::Ikev1 => ike::IkeVersion::V1,
            IkeVersion::Ikev2 => ike::IkeVersion::V2,
        },
        v1_mode: match t.ike.mode {
            IkeMode::Main => V1Mode::Main,
            IkeMode::Aggressive => V1Mode::Aggressive,
        },
        local: SocketAddr::new(IpAddr::V4(local), 500),
        remote,
        local_id: identity(&t.ike.local_id),
        remote_id: identity(&t.ike.remote_id),
        psk: Psk::new(t.pre_shared_key.expose().as_bytes()),
        ike: IkeProposal {
            encr: encr(t.ike.encryption),
            integ: integ(t.ike.integrity),
            dh: dh(t.ike.dh_group),
        },
        esp: EspProposal {
            encr: encr(t.ipsec.encryption),
            integ: integ(t.ipsec.integrity),
            pfs: t.ipsec.pfs.dh_group().map(dh),
        },
        ike_lifetime: Duration::from_secs(u64::from(t.ike.lifetime_s)),
        child_lifetime: Duration::from_secs(u64::from(t.ipsec.lifetime_s)),
        local_ts,
        remote_ts,
        dpd_interval: t
            .dpd
            .then(|| Duration::from_secs(u64::from(t.dpd_interval_s.max(1)))),
        dpd_timeout: Duration::from_secs(u64::from(t.dpd_timeout_s.max(1))),
        nat_traversal: t.nat_traversal,
    })
}

fn cidrs(nets: &[IpNet]) -> Result<Vec<Ipv4Cidr>, String> {
    nets.iter()
        .map(|n| match n {
            IpNet::V4(v) => Ok(Ipv4Cidr::new(v.network(), v.prefix_len())),
            IpNet::V6(v) => Err(format!(
                "subnet {v} is IPv6, which this node does not support yet"
            )),
        })
        .collect()
}

fn identity(s: &str) -> Identity {
    match s.parse::<Ipv4Addr>() {
        Ok(a) => Identity::Ipv4(a),
        Err(_) => Identity::Fqdn(s.to_string()),
    }
}

pub(crate) fn encr(e: Encryption) -> Encr {
    match e {
        Encryption::Aes => Encr::AesCbc128,
        Encryption::Aes192 => Encr::AesCbc192,
        Encryption::Aes256 => Encr::AesCbc256,
        Encryption::Des => Encr::Des,
        Encryption::TripleDes => Encr::TripleDes,
        Encryption::AesGcm128 => Encr::AesGcm16_128,
        Encryption::AesGcm256 => Encr::AesGcm16_256,
    }
}

pub(crate) fn integ(i: Integrity) -> Integ {
    match i {
        Integrity::Md5 => Integ::HmacMd5_96,
        Integrity::Sha1 => Integ::HmacSha1_96,
        Integrity::Sha256 => Integ::HmacSha256_128,
        Integrity::Sha384 => Integ::HmacSha384_192,
        Integrity::Sha512 => Integ::HmacSha512_256,
    }
}

pub(crate) fn dh(g: DhGroup) -> CDh {
    match g {
        DhGroup::Group1 => CDh::Modp768,
        DhGroup::Group2 => CDh::Modp1024,
        DhGroup::Group5 => CDh::Modp1536,
        DhGroup::Group14 => CDh::Modp2048,
        DhGroup::Group24 => CDh::Modp2048s256,
        DhGroup::Group19 => CDh::Ecp256,
        DhGroup::Group20 => CDh::Ecp384,
        DhGroup::Group31 => CDh::Curve25519,
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use model::{
        AsnInput, CustomerGatewaySpec, PolicyRouteSpec, RouteSpec, TunnelSpec as MTunnelSpec,
        VpnConnectionSpec, VpnGatewaySpec,
    };

    use super::*;

    fn epoch() -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH
    }

    fn gateway() -> VpnGateway {
        VpnGatewaySpec {
            name: Some("gw".into()),
            ipsec_addresses: Some(vec!["192.0.2.1".into(), "192.0.2.2".into()]),
            local_networks: Some(vec!["172.16.0.0/16".into()]),
            ..Default::default()
        }
        .build("vpn-1".into(), epoch())
        .unwrap()
    }

    fn cgw(id: &str, ip: &str) -> CustomerGateway {
        CustomerGatewaySpec {
            name: Some(id.into()),
            ip_address: Some(ip.into()),
            asn: None::<AsnInput>,
            ..Default::default()
        }
        .build(id.into(), epoch())
        .unwrap()
    }

    fn connection(
        id: &str,
        mode: RoutingMode,
        cgws: &[CustomerGateway],
        psk: &str,
    ) -> VpnConnection {
        let gw = gateway();
        let tunnel = || MTunnelSpec {
            customer_gateway_id: Some(cgws[0].id.clone()),
            pre_shared_key: Some(model::PskInput(psk.into())),
            ..Default::default()
        };
        let spec = VpnConnectionSpec {
            name: Some(id.into()),
            vpn_gateway_id: Some(gw.id.clone()),
            routing_mode: Some(mode),
            local_subnets: (mode == RoutingMode::ProtectedFlows)
                .then(|| vec!["172.16.1.0/24".into()]),
            remote_subnets: (mode == RoutingMode::ProtectedFlows)
                .then(|| vec!["10.2.0.0/24".into()]),
            tunnels: Some(vec![tunnel(), tunnel()]),
            ..Default::default()
        };
        let ctx = model::ConnectionContext {
            gateway: &gw,
            customer_gateways: cgws,
            tunnel_cidrs_in_use: &[],
        };
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        let tids = [format!("tun-{id}-1"), format!("tun-{id}-2")];
        spec.build(&ctx, id.into(), &tids, epoch(), &mut rng)
            .unwrap()
    }

    fn all_ok(_: IpAddr) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn destination_mode_maps_to_any_selectors_and_static_routes() {
        let cgws = [cgw("cgw-a", "198.51.100.1")];
        let c = connection("vco-1", RoutingMode::Destination, &cgws, "s3cret-psk");
        let route = RouteSpec {
            destination: Some("10.2.0.0/24".into()),
            next_hop: Some("vco-1".into()),
            ..Default::default()
        }
        .build(
            &gateway(),
            std::slice::from_ref(&c),
            "vrt-1".into(),
            epoch(),
        )
        .unwrap();
        let routes = HashMap::from([("vpn-1".to_string(), vec![route])]);
        let d = build(&[gateway()], &cgws, &[c], &routes, &HashMap::new(), &all_ok);
        assert_eq!(d.tunnels.len(), 2);
        let p = d.tunnels[0].peer.as_ref().unwrap();
        assert_eq!(p.local, "192.0.2.1:500".parse().unwrap());
        assert_eq!(p.remote, Some("198.51.100.1:500".parse().unwrap()));
        assert_eq!(p.local_ts, vec![Ipv4Cidr::ANY]);
        assert_eq!(p.ike.name(), "aes128-sha1-modp1024");
        assert_eq!(p.esp.name(), "aes128-sha1-modp1024");
        assert_eq!(p.local_id, Identity::Ipv4("192.0.2.1".parse().unwrap()));
        assert_eq!(
            d.tunnels[1].peer.as_ref().unwrap().local,
            "192.0.2.2:500".parse().unwrap()
        );
        assert_eq!(d.routes.len(), 1);
        assert_eq!(d.routes[0].0, "10.2.0.0/24".parse::<Ipv4Net>().unwrap());
        assert!(d.kernel_routes.contains(&"10.2.0.0/24".parse().unwrap()));
        assert!(d.policies.is_empty());
    }

    #[test]
    fn protected_flows_make_selectors_and_an_auto_policy_route() {
        let cgws = [cgw("cgw-a", "198.51.100.1")];
        let c = connection("vco-1", RoutingMode::ProtectedFlows, &cgws, "s3cret-psk");
        let d = build(
            &[gateway()],
            &cgws,
            &[c],
            &HashMap::new(),
            &HashMap::new(),
            &all_ok,
        );
        let p = d.tunnels[0].peer.as_ref().unwrap();
        assert_eq!(p.local_ts, vec!["172.16.1.0/24".parse().unwrap()]);
        assert_eq!(p.remote_ts, vec!["10.2.0.0/24".parse().unwrap()]);
        assert_eq!(d.policies.len(), 1);
        let (s, dst, prio, t) = d.policies[0];
        assert_eq!(s, "172.16.1.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(dst, "10.2.0.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(prio, AUTO_POLICY_PRIORITY);
        assert_eq!(t.primary, 0);
        assert_eq!(
            d.kernel_routes.iter().copied().collect::<Vec<_>>(),
            vec!["10.2.0.0/24".parse::<Ipv4Net>().unwrap()]
        );
    }

    #[test]
    fn never_a_default_route_into_the_tunnel_device() {
        let cgws = [cgw("cgw-a", "198.51.100.1")];
        let c = connection("vco-1", RoutingMode::Destination, &cgws, "s3cret-psk");
        let mk = |dst: &str, id: &str| {
            RouteSpec {
                destination: Some(dst.into()),
                next_hop: Some("vco-1".into()),
                ..Default::default()
            }
            .build(&gateway(), std::slice::from_ref(&c), id.into(), epoch())
            .unwrap()
        };
        let routes = HashMap::from([(
            "vpn-1".to_string(),
            vec![mk("0.0.0.0/0", "vrt-1"), mk("172.16.5.0/24", "vrt-2")],
        )]);
        let d = build(&[gateway()], &cgws, &[c], &routes, &HashMap::new(), &all_ok);
        assert!(d.kernel_routes.is_empty(), "{:?}", d.kernel_routes);
        assert_eq!(d.routes.len(), 2, "the forwarding table still has them");
        assert_eq!(d.notes.len(), 2);
    }

    #[test]
    fn policy_routes_and_standby() {
        let cgws = [cgw("cgw-a", "198.51.100.1")];
        let c1 = connection("vco-1", RoutingMode::Destination, &cgws, "s3cret-psk");
        let c2 = connection("vco-2", RoutingMode::Destination, &cgws, "s3cret-psk");
        let conns = vec![c1, c2];
        let pr = |hop: &str, w: u32, id: &str| {
            PolicyRouteSpec {
                source: Some("172.16.1.0/24".into()),
                destination: Some("10.9.0.0/16".into()),
                next_hop: Some(hop.into()),
                priority: Some(5),
                weight: Some(w),
                ..Default::default()
            }
            .build(&gateway(), &conns, id.into(), epoch())
            .unwrap()
        };
        let prs = HashMap::from([(
            "vpn-1".to_string(),
            vec![pr("vco-1", 100, "vpr-1"), pr("vco-2", 0, "vpr-2")],
        )]);
        let d = build(&[gateway()], &cgws, &conns, &HashMap::new(), &prs, &all_ok);
        assert_eq!(d.policies.len(), 1);
        let (_, _, prio, t) = d.policies[0];
        assert_eq!(prio, 5);
        assert_eq!(
            t,
            Target {
                primary: 0,
                standby: Some(1)
            }
        );
    }

    #[test]
    fn weight_100_is_primary_whatever_the_order() {
        let cgws = [cgw("cgw-a", "198.51.100.1")];
        let c1 = connection("vco-1", RoutingMode::Destination, &cgws, "s3cret-psk");
        let c2 = connection("vco-2", RoutingMode::Destination, &cgws, "s3cret-psk");
        let conns = vec![c1, c2];
        let r = |hop: &str, w: u32, id: &str| {
            RouteSpec {
                destination: Some("10.2.0.0/24".into()),
                next_hop: Some(hop.into()),
                weight: Some(w),
                ..Default::default()
            }
            .build(&gateway(), &conns, id.into(), epoch())
            .unwrap()
        };
        // The standby route was created first.
        let routes = HashMap::from([(
            "vpn-1".to_string(),
            vec![r("vco-2", 0, "vrt-1"), r("vco-1", 100, "vrt-2")],
        )]);
        let d = build(
            &[gateway()],
            &cgws,
            &conns,
            &routes,
            &HashMap::new(),
            &all_ok,
        );
        assert_eq!(d.routes.len(), 1);
        assert_eq!(
            d.routes[0].1,
            Target {
                primary: 0,
                standby: Some(1)
            }
        );
    }

    #[test]
    fn unusable_address_is_reported_not_run_and_ikev1_maps() {
        let mut c = connection(
            "vco-1",
            RoutingMode::Destination,
            &[cgw("cgw-a", "198.51.100.1")],
            "s3cret-psk",
        );
        // The same customer gateway, now accepting any peer.
        let cgws = [cgw("cgw-a", "0.0.0.0")];
        c.tunnels[0].ike.version = IkeVersion::Ikev1;
        c.tunnels[0].ike.mode = IkeMode::Aggressive;
        let only_first = |a: IpAddr| {
            if a == "192.0.2.1".parse::<IpAddr>().unwrap() {
                Ok(())
            } else {
                Err(format!("{a} is not an address of this node"))
            }
        };
        let d = build(
            &[gateway()],
            &cgws,
            &[c],
            &HashMap::new(),
            &HashMap::new(),
            &only_first,
        );
        let p = d.tunnels[0].peer.as_ref().unwrap();
        assert_eq!(p.remote, None, "0.0.0.0 is any peer, responder only");
        assert_eq!(p.version, ike::IkeVersion::V1);
        assert_eq!(p.v1_mode, V1Mode::Aggressive);
        assert!(
            d.tunnels[1]
                .peer
                .as_ref()
                .unwrap_err()
                .contains("192.0.2.2")
        );
    }

    #[test]
    fn psk_is_not_in_debug_output() {
        let cgws = [cgw("cgw-a", "198.51.100.1")];
        let c = connection("vco-1", RoutingMode::Destination, &cgws, "Very-Secret-42");
        let d = build(
            &[gateway()],
            &cgws,
            &[c],
            &HashMap::new(),
            &HashMap::new(),
            &all_ok,
        );
        let dbg = format!("{d:?}");
        assert!(!dbg.contains("Very-Secret-42"), "{dbg}");
    }
}
