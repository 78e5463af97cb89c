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
/// routes. A static route of the same destination wins over a learned one (the packet
/// path does the same: `node/src/fwd.rs`).
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
                let (state, reason) = if static_routes.iter().any(|s| s.destination == destination)
                {
                    (
                        RouteState::Inactive,
                        format!("{learned_on}; a static route to {destination} takes precedence"),
                    )
                } else if r.best {
                    (RouteState::Active, learned_on)
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
}
