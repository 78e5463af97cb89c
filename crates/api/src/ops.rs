//! `/healthz` and `/metrics`.

use std::fmt::Write;
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
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
    let sources = state.metrics.read().map(|m| m.clone()).unwrap_or_default();
    for s in sources {
        s.render(&mut out);
    }
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], out))
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
