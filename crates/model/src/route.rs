use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    FieldError, HealthState, RoutingMode, TunnelPhase, VpnConnection, VpnGateway, validate,
};

/// A destination-based route of a gateway: traffic to `destination` goes through the
/// connection `next_hop`. Weight 100 is active, 0 standby.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Route {
    pub id: String,
    pub vpn_gateway_id: String,
    #[schema(value_type = String)]
    pub destination: IpNet,
    pub next_hop: String,
    pub weight: u8,
    /// Advertise this route into the VPC (and to BGP peers).
    pub publish: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    #[serde(default)]
    pub destination: Option<String>,
    #[serde(default)]
    pub next_hop: Option<String>,
    /// 100 (active, default) or 0 (standby).
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub publish: Option<bool>,
    #[serde(default)]
    pub client_token: Option<String>,
}

/// A policy-based route: traffic from `source` to `destination` goes through
/// `next_hop`; among matching policy routes the lowest `priority` number wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PolicyRoute {
    pub id: String,
    pub vpn_gateway_id: String,
    #[schema(value_type = String)]
    pub source: IpNet,
    #[schema(value_type = String)]
    pub destination: IpNet,
    pub next_hop: String,
    pub priority: u8,
    pub weight: u8,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRouteSpec {
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub destination: Option<String>,
    #[serde(default)]
    pub next_hop: Option<String>,
    /// 1–100, default 10; lower numbers are matched first.
    #[serde(default)]
    pub priority: Option<u32>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub client_token: Option<String>,
}

/// One effective route of a gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteTableEntry {
    #[schema(value_type = String)]
    pub destination: IpNet,
    /// Policy routes only.
    #[schema(value_type = Option<String>)]
    pub source: Option<IpNet>,
    pub next_hop: String,
    pub origin: RouteOrigin,
    pub state: RouteState,
    pub reason: String,
    pub published: bool,
    pub weight: u8,
    /// Policy routes only.
    pub priority: Option<u8>,
    /// The route's ID for `static` and `policy` routes.
    pub route_id: Option<String>,
    /// `bgp` routes: the tunnel whose BGP session learned the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RouteOrigin {
    Static,
    Policy,
    /// Generated from a protected-flows connection's subnets.
    Auto,
    Bgp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RouteState {
    Active,
    Standby,
    Inactive,
}

pub const DEFAULT_POLICY_PRIORITY: u8 = 10;

impl RouteSpec {
    /// `connections` are the gateway's connections (the allowed next hops).
    pub fn build(
        self,
        gateway: &VpnGateway,
        connections: &[VpnConnection],
        id: String,
        now: DateTime<Utc>,
    ) -> Result<Route, FieldError> {
        let d = self.destination.ok_or_else(|| {
            FieldError::new(
                "destination",
                "is required: a CIDR block such as 10.20.0.0/16",
            )
        })?;
        let destination = validate::cidr(&d, "destination")?;
        let next_hop = next_hop(self.next_hop, gateway, connections)?;
        Ok(Route {
            id,
            vpn_gateway_id: gateway.id.clone(),
            destination,
            next_hop,
            weight: weight(self.weight)?,
            publish: self.publish.unwrap_or(false),
            created_at: now,
        })
    }
}

impl PolicyRouteSpec {
    pub fn build(
        self,
        gateway: &VpnGateway,
        connections: &[VpnConnection],
        id: String,
        now: DateTime<Utc>,
    ) -> Result<PolicyRoute, FieldError> {
        let s = self.source.ok_or_else(|| {
            FieldError::new("source", "is required: a CIDR block such as 10.0.0.0/16")
        })?;
        let source = validate::cidr(&s, "source")?;
        let d = self.destination.ok_or_else(|| {
            FieldError::new(
                "destination",
                "is required: a CIDR block such as 10.20.0.0/16",
            )
        })?;
        let destination = validate::cidr(&d, "destination")?;
        let next_hop = next_hop(self.next_hop, gateway, connections)?;
        let priority = match self.priority {
            None => DEFAULT_POLICY_PRIORITY,
            Some(p @ 1..=100) => p as u8,
            Some(p) => {
                return Err(FieldError::new(
                    "priority",
                    format!("must be 1–100, got {p}"),
                ));
            }
        };
        Ok(PolicyRoute {
            id,
            vpn_gateway_id: gateway.id.clone(),
            source,
            destination,
            next_hop,
            priority,
            weight: weight(self.weight)?,
            created_at: now,
        })
    }
}

fn weight(w: Option<u32>) -> Result<u8, FieldError> {
    match w {
        None | Some(100) => Ok(100),
        Some(0) => Ok(0),
        Some(w) => Err(FieldError::new(
            "weight",
            format!("must be 100 (active) or 0 (standby), got {w}"),
        )),
    }
}

fn next_hop(
    v: Option<String>,
    gateway: &VpnGateway,
    connections: &[VpnConnection],
) -> Result<String, FieldError> {
    let v = v.ok_or_else(|| {
        FieldError::new(
            "next_hop",
            "is required: the ID (vco-…) of a connection of this gateway",
        )
    })?;
    if connections
        .iter()
        .any(|c| c.id == v && c.vpn_gateway_id == gateway.id)
    {
        Ok(v)
    } else {
        Err(FieldError::new(
            "next_hop",
            format!("`{v}` is not a connection of gateway {}", gateway.id),
        ))
    }
}

/// Every effective route of a gateway: static routes, policy routes and the policy routes
/// generated from protected-flows connections, in that order, with their state:
///
/// - `inactive`: the next hop connection cannot carry traffic now (no tunnel
///   established, or its health check failed with `switch_route`); traffic falls through
///   to the next matching route (the weight-0 one for the same prefix);
/// - `active`: weight 100, or weight 0 when no usable weight-100 route for the same
///   prefix (same source, for policy routes) exists;
/// - `standby`: weight 0 while a usable weight-100 route for the same prefix exists.
///
/// The state follows the tunnels' observed status in `connections` (what the gateway
/// node last reported; until a node reports, the weights alone decide); the node itself
/// switches per packet, without waiting for it.
pub fn route_table(
    routes: &[Route],
    policy_routes: &[PolicyRoute],
    connections: &[VpnConnection],
) -> Vec<RouteTableEntry> {
    let down = |hop: &str| unusable(connections, hop);
    let mut out = Vec::new();
    for r in routes {
        let primary = routes
            .iter()
            .find(|o| o.destination == r.destination && o.weight == 100 && o.id != r.id);
        let (state, reason) = state(
            r.weight,
            &r.next_hop,
            primary.map(|p| p.next_hop.as_str()),
            &down,
            || format!("traffic to {}", r.destination),
        );
        out.push(RouteTableEntry {
            destination: r.destination,
            source: None,
            next_hop: r.next_hop.clone(),
            origin: RouteOrigin::Static,
            state,
            reason,
            published: r.publish,
            weight: r.weight,
            priority: None,
            route_id: Some(r.id.clone()),
            tunnel_id: None,
        });
    }
    for r in policy_routes {
        let primary = policy_routes.iter().find(|o| {
            o.source == r.source
                && o.destination == r.destination
                && o.weight == 100
                && o.id != r.id
        });
        let (state, reason) = state(
            r.weight,
            &r.next_hop,
            primary.map(|p| p.next_hop.as_str()),
            &down,
            || {
                format!(
                    "priority {}: traffic from {} to {}",
                    r.priority, r.source, r.destination
                )
            },
        );
        out.push(RouteTableEntry {
            destination: r.destination,
            source: Some(r.source),
            next_hop: r.next_hop.clone(),
            origin: RouteOrigin::Policy,
            state,
            reason,
            published: false,
            weight: r.weight,
            priority: Some(r.priority),
            route_id: Some(r.id.clone()),
            tunnel_id: None,
        });
    }
    for c in connections
        .iter()
        .filter(|c| c.routing_mode == RoutingMode::ProtectedFlows)
    {
        for l in &c.local_subnets {
            for r in &c.remote_subnets {
                let (state, reason) = match down(&c.id) {
                    Some(why) => (
                        RouteState::Inactive,
                        format!(
                            "generated from the protected flows of connection {}, which cannot carry traffic: {why}",
                            c.id
                        ),
                    ),
                    None => (
                        RouteState::Active,
                        format!("generated from the protected flows of connection {}", c.id),
                    ),
                };
                out.push(RouteTableEntry {
                    destination: *r,
                    source: Some(*l),
                    next_hop: c.id.clone(),
                    origin: RouteOrigin::Auto,
                    state,
                    reason,
                    published: false,
                    weight: 100,
                    priority: Some(DEFAULT_POLICY_PRIORITY),
                    route_id: None,
                    tunnel_id: None,
                });
            }
        }
    }
    out
}

/// The state of one route: `weight` and `hop` are the route's, `primary` the next hop of
/// the weight-100 route for the same prefix, if any; `what` names the traffic.
fn state(
    weight: u8,
    hop: &str,
    primary: Option<&str>,
    down: &dyn Fn(&str) -> Option<String>,
    what: impl Fn() -> String,
) -> (RouteState, String) {
    if let Some(why) = down(hop) {
        return (
            RouteState::Inactive,
            format!(
                "connection {hop} cannot carry traffic: {why}; {} falls through to the next matching route",
                what()
            ),
        );
    }
    match (weight, primary) {
        (100, _) => (
            RouteState::Active,
            format!("weight 100: carries the {}", what()),
        ),
        (_, Some(p)) => match down(p) {
            None => (
                RouteState::Standby,
                format!("weight 0: takes over when the weight-100 route via {p} is unavailable"),
            ),
            Some(why) => (
                RouteState::Active,
                format!(
                    "weight 0, active because the weight-100 route via {p} is inactive ({why}): carries the {}",
                    what()
                ),
            ),
        },
        (_, None) => (
            RouteState::Active,
            format!(
                "weight 0, but no weight-100 route for this prefix exists, so this one carries the {}",
                what()
            ),
        ),
    }
}

/// Why connection `id` cannot carry traffic now, or `None` if it can (or is unknown).
fn unusable(connections: &[VpnConnection], id: &str) -> Option<String> {
    let c = connections.iter().find(|c| c.id == id)?;
    // No gateway node has reported on these tunnels yet (controller only, or the node
    // is starting): nothing is known, so the state follows the weights.
    if c.tunnels.iter().all(|t| t.status.since.is_none()) {
        return None;
    }
    let established = c
        .tunnels
        .iter()
        .filter(|t| t.status.phase == TunnelPhase::Established)
        .collect::<Vec<_>>();
    if established.is_empty() {
        return Some("none of its tunnels is established".into());
    }
    let withdrawn = c.health_check.enabled
        && c.health_check.switch_route
        && established.iter().all(|t| {
            t.status
                .health
                .as_ref()
                .is_some_and(|h| h.state == HealthState::Down)
        });
    withdrawn.then(|| {
        format!(
            "its health check (ping {} from {}) failed; routes withdrawn (switch_route)",
            c.health_check
                .destination_ip
                .map_or_else(|| "?".into(), |a| a.to_string()),
            c.health_check
                .source_ip
                .map_or_else(|| "?".into(), |a| a.to_string()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::{ConnectionContext, RoutingMode};

    fn conns() -> (VpnGateway, Vec<VpnConnection>) {
        let gw = gateway(&["192.0.2.1"]);
        let cgws = vec![cgw("cgw-a", "203.0.113.7", None)];
        let ctx = ConnectionContext {
            gateway: &gw,
            customer_gateways: &cgws,
            tunnel_cidrs_in_use: &[],
        };
        let mut s = spec();
        s.tunnels.as_mut().unwrap().pop();
        let a = s
            .clone()
            .build(&ctx, "vco-a".into(), &["tun-a".into()], epoch(), &mut rng())
            .unwrap();
        s.routing_mode = Some(RoutingMode::ProtectedFlows);
        s.local_subnets = Some(vec!["10.0.1.0/24".into(), "10.0.2.0/24".into()]);
        s.remote_subnets = Some(vec!["172.16.0.0/24".into()]);
        let b = s
            .build(&ctx, "vco-b".into(), &["tun-b".into()], epoch(), &mut rng())
            .unwrap();
        (gw, vec![a, b])
    }

    fn route(dest: &str, hop: &str, weight: Option<u32>) -> RouteSpec {
        RouteSpec {
            destination: Some(dest.into()),
            next_hop: Some(hop.into()),
            weight,
            ..Default::default()
        }
    }

    #[test]
    fn route_rules() {
        let (gw, cs) = conns();
        let ok = route("172.20.0.0/16", "vco-a", None)
            .build(&gw, &cs, "vrt-1".into(), epoch())
            .unwrap();
        assert_eq!((ok.weight, ok.publish), (100, false));
        let e = route("172.20.0.0/16", "vco-a", Some(50))
            .build(&gw, &cs, "vrt-1".into(), epoch())
            .unwrap_err();
        assert_eq!(e.field, "weight");
        let e = route("172.20.0.1/16", "vco-a", None)
            .build(&gw, &cs, "vrt-1".into(), epoch())
            .unwrap_err();
        assert_eq!(e.field, "destination");
        let e = route("172.20.0.0/16", "vco-zzz", None)
            .build(&gw, &cs, "vrt-1".into(), epoch())
            .unwrap_err();
        assert_eq!(e.field, "next_hop");
        let mut other = gw.clone();
        other.id = "vpn-2".into();
        let e = route("172.20.0.0/16", "vco-a", None)
            .build(&other, &cs, "vrt-1".into(), epoch())
            .unwrap_err();
        assert_eq!(e.field, "next_hop");
    }

    #[test]
    fn policy_route_rules() {
        let (gw, cs) = conns();
        let spec = |prio: Option<u32>, src: &str| PolicyRouteSpec {
            source: Some(src.into()),
            destination: Some("172.20.0.0/16".into()),
            next_hop: Some("vco-a".into()),
            priority: prio,
            ..Default::default()
        };
        let p = spec(None, "10.0.0.0/16")
            .build(&gw, &cs, "vpr-1".into(), epoch())
            .unwrap();
        assert_eq!(p.priority, 10);
        assert!(
            spec(Some(1), "10.0.0.0/16")
                .build(&gw, &cs, "x".into(), epoch())
                .is_ok()
        );
        assert!(
            spec(Some(100), "10.0.0.0/16")
                .build(&gw, &cs, "x".into(), epoch())
                .is_ok()
        );
        for bad in [0, 101] {
            let e = spec(Some(bad), "10.0.0.0/16")
                .build(&gw, &cs, "x".into(), epoch())
                .unwrap_err();
            assert_eq!(e.field, "priority");
        }
        let e = spec(None, "bogus")
            .build(&gw, &cs, "x".into(), epoch())
            .unwrap_err();
        assert_eq!(e.field, "source");
    }

    fn up(cs: &mut [VpnConnection]) {
        for c in cs {
            for t in &mut c.tunnels {
                t.status.phase = TunnelPhase::Established;
                t.status.since = Some(epoch());
            }
        }
    }

    #[test]
    fn table_states_by_weight_and_auto_routes() {
        let (gw, mut cs) = conns();
        up(&mut cs);
        let r1 = route("172.20.0.0/16", "vco-a", None)
            .build(&gw, &cs, "vrt-1".into(), epoch())
            .unwrap();
        let r2 = route("172.20.0.0/16", "vco-b", Some(0))
            .build(&gw, &cs, "vrt-2".into(), epoch())
            .unwrap();
        let r3 = route("172.30.0.0/16", "vco-b", Some(0))
            .build(&gw, &cs, "vrt-3".into(), epoch())
            .unwrap();
        let table = route_table(&[r1, r2, r3], &[], &cs);
        assert_eq!(table[0].state, RouteState::Active);
        assert_eq!(table[1].state, RouteState::Standby);
        assert!(table[1].reason.contains("vco-a"));
        assert_eq!(table[2].state, RouteState::Active);
        let auto: Vec<_> = table
            .iter()
            .filter(|e| e.origin == RouteOrigin::Auto)
            .collect();
        assert_eq!(auto.len(), 2);
        assert_eq!(auto[0].next_hop, "vco-b");
        assert_eq!(auto[0].state, RouteState::Active);
        assert_eq!(auto[0].source.unwrap().to_string(), "10.0.1.0/24");
        assert_eq!(auto[0].destination.to_string(), "172.16.0.0/24");
    }

    #[test]
    fn routes_via_a_connection_without_tunnels_are_inactive_and_the_standby_takes_over() {
        let (gw, mut cs) = conns();
        up(&mut cs);
        // vco-a's only tunnel is down.
        cs[0].tunnels[0].status.phase = TunnelPhase::Phase1Failed;
        let r1 = route("172.20.0.0/16", "vco-a", None)
            .build(&gw, &cs, "vrt-1".into(), epoch())
            .unwrap();
        let r2 = route("172.20.0.0/16", "vco-b", Some(0))
            .build(&gw, &cs, "vrt-2".into(), epoch())
            .unwrap();
        let p1 = PolicyRouteSpec {
            source: Some("10.0.0.0/16".into()),
            destination: Some("172.20.0.0/16".into()),
            next_hop: Some("vco-a".into()),
            priority: Some(1),
            ..Default::default()
        }
        .build(&gw, &cs, "vpr-1".into(), epoch())
        .unwrap();
        let p2 = PolicyRouteSpec {
            source: Some("10.0.0.0/16".into()),
            destination: Some("172.20.0.0/16".into()),
            next_hop: Some("vco-b".into()),
            priority: Some(1),
            weight: Some(0),
            ..Default::default()
        }
        .build(&gw, &cs, "vpr-2".into(), epoch())
        .unwrap();
        let table = route_table(&[r1, r2], &[p1, p2], &cs);
        assert_eq!(table[0].state, RouteState::Inactive);
        assert!(
            table[0].reason.contains("none of its tunnels"),
            "{}",
            table[0].reason
        );
        assert!(
            table[0].reason.contains("falls through"),
            "{}",
            table[0].reason
        );
        assert_eq!(table[1].state, RouteState::Active);
        assert!(table[1].reason.contains("inactive"), "{}", table[1].reason);
        assert_eq!(table[2].state, RouteState::Inactive);
        assert_eq!(table[2].origin, RouteOrigin::Policy);
        assert_eq!(table[3].state, RouteState::Active);
        // Every tunnel down: the auto routes of vco-b are inactive too.
        cs[1].tunnels[0].status.phase = TunnelPhase::Idle;
        let table = route_table(&[], &[], &cs);
        assert!(table.iter().all(|e| e.state == RouteState::Inactive));
        // Nothing reported yet (no node): the weights decide.
        cs[1].tunnels[0].status.since = None;
        let table = route_table(&[], &[], &cs);
        assert!(table.iter().all(|e| e.state == RouteState::Active));
    }

    #[test]
    fn failed_health_check_withdraws_routes_only_with_switch_route() {
        let (gw, mut cs) = conns();
        up(&mut cs);
        let r1 = route("172.20.0.0/16", "vco-a", None)
            .build(&gw, &cs, "vrt-1".into(), epoch())
            .unwrap();
        let r2 = route("172.20.0.0/16", "vco-b", Some(0))
            .build(&gw, &cs, "vrt-2".into(), epoch())
            .unwrap();
        let hc = &mut cs[0].health_check;
        hc.enabled = true;
        hc.source_ip = Some("10.0.1.1".parse().unwrap());
        hc.destination_ip = Some("172.20.0.1".parse().unwrap());
        cs[0].tunnels[0].status.health = Some(crate::HealthStatus {
            state: HealthState::Down,
            last_rtt_ms: None,
        });
        let routes = [r1, r2];
        let table = route_table(&routes, &[], &cs);
        assert_eq!(table[0].state, RouteState::Inactive);
        assert!(
            table[0].reason.contains("health check"),
            "{}",
            table[0].reason
        );
        assert_eq!(table[1].state, RouteState::Active);
        cs[0].health_check.switch_route = false;
        let table = route_table(&routes, &[], &cs);
        assert_eq!(table[0].state, RouteState::Active);
        assert_eq!(table[1].state, RouteState::Standby);
    }
}
