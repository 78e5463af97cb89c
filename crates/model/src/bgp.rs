//! BGP routes of the tunnels' sessions: what each session received and advertised, as
//! the gateway node observed it (`GET /v1/vpn-connections/{id}/bgp-routes`), and the
//! `origin: bgp` entries they put into a gateway's route table.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    BgpSessionState, Route, RouteOrigin, RouteState, RouteTableEntry, TunnelRole, VpnConnection,
};

/// One route of a BGP session (RFC 4271 §5 path attributes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BgpRoute {
    #[schema(value_type = String, example = "10.2.0.0/24")]
    pub prefix: Ipv4Net,
    /// The AS_PATH, nearest AS first (the members of an AS_SET are listed in place).
    pub as_path: Vec<u32>,
    #[schema(value_type = Option<String>)]
    pub next_hop: Option<Ipv4Addr>,
    pub origin: BgpOrigin,
    /// MULTI_EXIT_DISC, when the route carries one.
    pub med: Option<u32>,
    /// Received routes: the gateway forwards this prefix on this session's route (tunnel
    /// 1's session is preferred over tunnel 2's). Advertised routes: always true.
    pub best: bool,
    /// Received routes the gateway never uses, and why (AS path loop, default route,
    /// a tunnel link network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

/// ORIGIN (RFC 4271 §5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BgpOrigin {
    Igp,
    Egp,
    Incomplete,
}

/// What one tunnel's session received and advertised, as the node stores it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct BgpRoutes {
    /// The session's Adj-RIB-In (RFC 4271 §3.2).
    #[serde(default)]
    pub received: Vec<BgpRoute>,
    /// The routes sent to the peer (empty while the session is not established).
    #[serde(default)]
    pub advertised: Vec<BgpRoute>,
}

/// One tunnel's routes in `GET /v1/vpn-connections/{id}/bgp-routes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TunnelBgpRoutes {
    pub tunnel_id: String,
    pub role: TunnelRole,
    /// The session's state (`idle` when the tunnel does not run BGP or is down).
    pub state: BgpSessionState,
    pub peer_asn: Option<u32>,
    pub received: Vec<BgpRoute>,
    pub advertised: Vec<BgpRoute>,
}

/// Every tunnel of a connection, in order, with its session's routes.
pub fn tunnel_bgp_routes(
    c: &VpnConnection,
    stored: &[(String, BgpRoutes)],
) -> Vec<TunnelBgpRoutes> {
    c.tunnels
        .iter()
        .map(|t| {
            let routes = stored
                .iter()
                .find(|(id, _)| *id == t.id)
                .map(|(_, r)| r.clone())
                .unwrap_or_default();
            let bgp = t.status.bgp.as_ref().filter(|_| c.enable_bgp);
            TunnelBgpRoutes {
                tunnel_id: t.id.clone(),
                role: t.role,
                state: bgp.map(|b| b.state).unwrap_or_default(),
                peer_asn: bgp.and_then(|b| b.peer_asn),
                // What a connection without BGP learned before is not in use.
                received: if c.enable_bgp {
                    routes.received
                } else {
                    Vec::new()
                },
                advertised: if c.enable_bgp {
                    routes.advertised
                } else {
                    Vec::new()
                },
            }
        })
        .collect()
}

/// The `origin: bgp` entries of a gateway's route table: every usable received route of
/// the BGP connections' sessions. `learned` holds, per connection, its tunnels' stored
/// routes. A static route of the same destination wins over a learned one unless the
/// connection has `bgp_override_static` (the packet path does the same:
/// `node/src/fwd.rs`); with `bgp_ecmp` both tunnels' routes can be active at once.
pub fn bgp_route_entries(
    static_routes: &[Route],
    connections: &[VpnConnection],
    learned: &[(String, Vec<(String, BgpRoutes)>)],
) -> Vec<RouteTableEntry> {
    let mut out = Vec::new();
    for c in connections.iter().filter(|c| c.enable_bgp) {
        let Some((_, tunnels)) = learned.iter().find(|(id, _)| *id == c.id) else {
            continue;
        };
        for (i, t) in c.tunnels.iter().enumerate() {
            let Some((_, routes)) = tunnels.iter().find(|(id, _)| *id == t.id) else {
                continue;
            };
            for r in routes.received.iter().filter(|r| r.ignored.is_none()) {
                let destination = IpNet::V4(r.prefix);
                let path = as_path_text(&r.as_path);
                let learned_on = format!(
                    "learned over BGP on tunnel {} ({}) from AS path {path}",
                    i + 1,
                    t.id
                );
                let has_static = static_routes.iter().any(|s| s.destination == destination);
                let (state, reason) = if has_static && !c.bgp_override_static {
                    (
                        RouteState::Inactive,
                        format!("{learned_on}; a static route to {destination} takes precedence"),
                    )
                } else if r.best {
                    let mut reason = learned_on;
                    // ECMP: the connection's other tunnel uses the prefix too.
                    if c.bgp_ecmp
                        && tunnels.iter().any(|(id, o)| {
                            *id != t.id && o.received.iter().any(|x| x.prefix == r.prefix && x.best)
                        })
                    {
                        reason
                            .push_str("; flows are spread over both tunnels' sessions (bgp_ecmp)");
                    }
                    if has_static {
                        reason.push_str(&format!(
                            "; replaces the static route to {destination} (bgp_override_static)"
                        ));
                    }
                    (RouteState::Active, reason)
                } else {
                    (
                        RouteState::Standby,
                        format!(
                            "{learned_on}; used when the preferred session withdraws {destination}"
                        ),
                    )
                };
                out.push(RouteTableEntry {
                    destination,
                    source: None,
                    next_hop: c.id.clone(),
                    origin: RouteOrigin::Bgp,
                    state,
                    reason,
                    published: false,
                    weight: if r.best { 100 } else { 0 },
                    priority: None,
                    route_id: None,
                    tunnel_id: Some(t.id.clone()),
                });
            }
        }
    }
    out
}

/// Static routes that an active BGP route of a connection with `bgp_override_static`
/// replaces become `inactive`, saying which connection's route is used instead.
pub fn mark_overridden_static(items: &mut [RouteTableEntry], connections: &[VpnConnection]) {
    let overriding: Vec<(IpNet, String)> = items
        .iter()
        .filter(|e| {
            e.origin == RouteOrigin::Bgp
                && e.state == RouteState::Active
                && connections
                    .iter()
                    .any(|c| c.id == e.next_hop && c.bgp_override_static)
        })
        .map(|e| (e.destination, e.next_hop.clone()))
        .collect();
    for e in items.iter_mut().filter(|e| e.origin == RouteOrigin::Static) {
        if let Some((_, conn)) = overriding.iter().find(|(d, _)| *d == e.destination) {
            e.state = RouteState::Inactive;
            e.reason = format!(
                "a route learned over BGP on connection {conn} replaces it (bgp_override_static)"
            );
        }
    }
}

fn as_path_text(p: &[u32]) -> String {
    if p.is_empty() {
        return "(empty)".into();
    }
    p.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, best: bool) -> BgpRoute {
        BgpRoute {
            prefix: prefix.parse().unwrap(),
            as_path: vec![65530],
            next_hop: Some(Ipv4Addr::new(169, 254, 10, 2)),
            origin: BgpOrigin::Igp,
            med: None,
            best,
            ignored: None,
        }
    }

    #[test]
    fn route_json_shape() {
        let v = serde_json::to_value(route("10.2.0.0/24", true)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"prefix": "10.2.0.0/24", "as_path": [65530],
                "next_hop": "169.254.10.2", "origin": "igp", "med": null, "best": true})
        );
        let stored: BgpRoutes = serde_json::from_str("{}").unwrap();
        assert_eq!(stored, BgpRoutes::default());
    }

    #[test]
    fn as_path_reads_like_show_bgp() {
        assert_eq!(as_path_text(&[65530, 65001]), "65530 65001");
        assert_eq!(as_path_text(&[]), "(empty)");
    }

    /// A BGP connection (both tunnels learned 10.2.0.0/24) and a static route to the
    /// same prefix through it.
    fn table(ecmp: bool, override_static: bool, best2: bool) -> Vec<RouteTableEntry> {
        use crate::testutil::*;
        let gw = gateway(&["192.0.2.1", "192.0.2.2"]);
        let cgws = vec![cgw("cgw-b", "203.0.113.8", Some(65010))];
        let ctx = crate::ConnectionContext {
            gateway: &gw,
            customer_gateways: &cgws,
            tunnel_cidrs_in_use: &[],
        };
        let mut s = spec();
        s.enable_bgp = Some(true);
        s.bgp_ecmp = Some(ecmp);
        s.bgp_override_static = Some(override_static);
        for (i, t) in s.tunnels.as_mut().unwrap().iter_mut().enumerate() {
            t.customer_gateway_id = Some("cgw-b".into());
            t.bgp = Some(crate::TunnelBgpSpec {
                tunnel_cidr: Some(format!("169.254.1{i}.0/30")),
                local_ip: Some(format!("169.254.1{i}.1")),
            });
        }
        let ids = ["tun-1".to_string(), "tun-2".to_string()];
        let c = s
            .build(&ctx, "vco-1".into(), &ids, epoch(), &mut rng())
            .unwrap();
        let stat = crate::RouteSpec {
            destination: Some("10.2.0.0/24".into()),
            next_hop: Some("vco-1".into()),
            ..Default::default()
        }
        .build(&gw, std::slice::from_ref(&c), "vrt-1".into(), epoch())
        .unwrap();
        let learned = vec![(
            "vco-1".to_string(),
            vec![
                (
                    ids[0].clone(),
                    BgpRoutes {
                        received: vec![route("10.2.0.0/24", true)],
                        advertised: vec![],
                    },
                ),
                (
                    ids[1].clone(),
                    BgpRoutes {
                        received: vec![route("10.2.0.0/24", best2)],
                        advertised: vec![],
                    },
                ),
            ],
        )];
        let conns = vec![c];
        let mut items = crate::route_table(std::slice::from_ref(&stat), &[], &conns);
        items.extend(bgp_route_entries(
            std::slice::from_ref(&stat),
            &conns,
            &learned,
        ));
        mark_overridden_static(&mut items, &conns);
        items
    }

    fn states(items: &[RouteTableEntry]) -> Vec<(RouteOrigin, RouteState)> {
        items.iter().map(|e| (e.origin, e.state)).collect()
    }

    #[test]
    fn static_routes_win_unless_bgp_override_static() {
        use RouteOrigin::{Bgp, Static};
        use RouteState::{Active, Inactive, Standby};
        assert_eq!(
            states(&table(false, false, false)),
            [(Static, Active), (Bgp, Inactive), (Bgp, Inactive)]
        );
        let t = table(false, true, false);
        assert_eq!(
            states(&t),
            [(Static, Inactive), (Bgp, Active), (Bgp, Standby)]
        );
        assert!(
            t[0].reason.contains("bgp_override_static"),
            "{}",
            t[0].reason
        );
        assert!(
            t[1].reason.contains("replaces the static route"),
            "{}",
            t[1].reason
        );
    }

    #[test]
    fn ecmp_routes_are_active_on_both_tunnels() {
        use RouteOrigin::{Bgp, Static};
        use RouteState::Active;
        let t = table(true, true, true);
        assert_eq!(
            states(&t),
            [(Static, RouteState::Inactive), (Bgp, Active), (Bgp, Active)]
        );
        assert!(t[1].reason.contains("bgp_ecmp"), "{}", t[1].reason);
        assert!(t[2].reason.contains("bgp_ecmp"), "{}", t[2].reason);
    }
}
