//! `/healthz` and `/metrics`.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use model::{GatewayStatus, TunnelPhase, TunnelRole};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{ApiResult, AppState, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// The endpoints that need no token.
pub fn open_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`
    pub status: String,
}

/// Liveness; needs no token.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Prometheus metrics: process and resource figures, plus whatever the gateway node adds.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String), (status = 401, body = ErrorBody)))]
async fn metrics(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    let counts = state.store.counts().await?;
    let mut out = String::new();
    let start = state
        .started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    gauge(
        &mut out,
        "vpngw_build_info",
        "Version of this vpngw.",
        &[(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), 1.0)],
    );
    gauge(
        &mut out,
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch.",
        &[("", start)],
    );
    if let Some(rss) = resident_bytes() {
        gauge(
            &mut out,
            "process_resident_memory_bytes",
            "Resident memory size.",
            &[("", rss)],
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            &mut out,
            "process_open_fds",
            "Open file descriptors.",
            &[("", fds.count() as f64)],
        );
    }
    gauge(
        &mut out,
        "vpngw_resources",
        "Number of stored resources by kind.",
        &[
            ("kind=\"vpn_gateway\"", counts.vpn_gateways as f64),
            ("kind=\"customer_gateway\"", counts.customer_gateways as f64),
            ("kind=\"vpn_connection\"", counts.vpn_connections as f64),
            ("kind=\"tunnel\"", counts.tunnels as f64),
            ("kind=\"route\"", counts.routes as f64),
            ("kind=\"policy_route\"", counts.policy_routes as f64),
        ],
    );
    resource_metrics(&state, &mut out).await?;
    let sources = state.metrics.read().map(|m| m.clone()).unwrap_or_default();
    for s in sources {
        s.render(&mut out);
    }
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// Per-gateway and per-tunnel series, from what the gateway node stored: each tunnel's
/// observed status (phase, Child SA counters) and its logged negotiation events.
async fn resource_metrics(state: &AppState, out: &mut String) -> ApiResult<()> {
    let gateways = crate::controller::all_gateways(state).await?;
    let connections = crate::connections::all_connections(state).await?;
    let events: HashMap<(String, String), u64> = state
        .store
        .tunnel_event_counts()
        .await?
        .into_iter()
        .map(|e| ((e.tunnel_id, e.event), e.count))
        .collect();

    let gw_up: Vec<(String, f64)> = gateways
        .iter()
        .map(|g| {
            let up = g.status == GatewayStatus::Running;
            (labels(&[("gateway", &g.id)]), f64::from(u8::from(up)))
        })
        .collect();
    series(
        out,
        "vpngw_gateway_up",
        "gauge",
        "1 while the VPN gateway is running (status running).",
        &gw_up,
    );
    let established: Vec<(String, f64)> = gateways
        .iter()
        .map(|g| {
            let n = connections
                .iter()
                .filter(|c| c.vpn_gateway_id == g.id)
                .flat_map(|c| &c.tunnels)
                .filter(|t| t.status.phase == TunnelPhase::Established)
                .count();
            (labels(&[("gateway", &g.id)]), n as f64)
        })
        .collect();
    series(
        out,
        "vpngw_gateway_tunnels_established",
        "gauge",
        "Tunnels of the gateway whose IKE and Child SAs are established.",
        &established,
    );

    let mut up = Vec::new();
    let mut bytes = Vec::new();
    let mut packets = Vec::new();
    let mut negotiations = Vec::new();
    for c in &connections {
        for t in &c.tunnels {
            let base = [
                ("gateway", c.vpn_gateway_id.as_str()),
                ("connection", c.id.as_str()),
                ("tunnel", t.id.as_str()),
                ("role", role_name(t.role)),
            ];
            let st = &t.status;
            up.push((
                labels(&base),
                f64::from(u8::from(st.phase == TunnelPhase::Established)),
            ));
            let sum = |f: fn(&model::ChildSaStatus) -> u64| {
                st.child_sas.iter().map(f).fold(0u64, u64::saturating_add) as f64
            };
            for (dir, b, p) in [
                ("in", sum(|c| c.bytes_in), sum(|c| c.packets_in)),
                ("out", sum(|c| c.bytes_out), sum(|c| c.packets_out)),
            ] {
                let l = labels(&with(&base, ("direction", dir)));
                bytes.push((l.clone(), b));
                packets.push((l, p));
            }
            for (event, phase, result) in NEGOTIATION_EVENTS {
                let n = events
                    .get(&(t.id.clone(), event.to_string()))
                    .copied()
                    .unwrap_or(0);
                let l = labels(&with(&with(&base, ("phase", phase)), ("result", result)));
                negotiations.push((l, n as f64));
            }
        }
    }
    series(
        out,
        "vpngw_tunnel_up",
        "gauge",
        "1 while the tunnel is established (IKE SA and Child SA up).",
        &up,
    );
    series(
        out,
        "vpngw_tunnel_bytes_total",
        "counter",
        "Bytes carried by the tunnel's current Child SAs by direction (restarts at each Child SA rekey).",
        &bytes,
    );
    series(
        out,
        "vpngw_tunnel_packets_total",
        "counter",
        "ESP packets of the tunnel's current Child SAs by direction (restarts at each Child SA rekey).",
        &packets,
    );
    series(
        out,
        "vpngw_ike_negotiations_total",
        "counter",
        "Completed IKE negotiations of the tunnel by phase (phase1: IKE/ISAKMP SA, phase2: Child SA) and result.",
        &negotiations,
    );
    Ok(())
}

/// The log events that end a negotiation (written by the `ike` engine through the node),
/// with the `phase` and `result` labels they count under.
const NEGOTIATION_EVENTS: [(&str, &str, &str); 4] = [
    ("phase1_established", "phase1", "success"),
    ("phase1_failed", "phase1", "failure"),
    ("phase2_established", "phase2", "success"),
    ("phase2_failed", "phase2", "failure"),
];

fn role_name(r: TunnelRole) -> &'static str {
    match r {
        TunnelRole::Primary => "primary",
        TunnelRole::Secondary => "secondary",
    }
}

fn with<'a>(base: &[(&'a str, &'a str)], extra: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    let mut v = base.to_vec();
    v.push(extra);
    v
}

/// `a="x",b="y"` with values escaped as the text format requires.
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s
}

fn series(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Resident set size from /proc/self/statm (Linux), in bytes.
fn resident_bytes() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0)
}
