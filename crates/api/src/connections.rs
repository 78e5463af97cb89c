//! `/v1/vpn-connections`, their tunnels and logs.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use ipnet::Ipv4Net;
use model::{
    ConnectionContext, CustomerGateway, IdKind, LogEntry, LogLevel, Page, Tunnel, TunnelState,
    VpnConnection, VpnConnectionSpec, VpnGateway, new_id,
};
use serde::Serialize;
use serde_json::{Map, Value};
use store::{ListQuery, StoreError};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::body::{self, JsonBody, Pairs};
use crate::{ApiError, ApiResult, AppState, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_connections, create_connection))
        .routes(routes!(
            get_connection,
            update_connection,
            delete_connection
        ))
        .routes(routes!(get_tunnel, update_tunnel))
        .routes(routes!(reset_tunnel))
        .routes(routes!(connection_logs))
}

const READ_ONLY: &[&str] = &["id", "status", "connection_state", "created_at"];
const TUNNEL_READ_ONLY: &[&str] = &["id", "role", "gateway_address", "state", "status"];

/// Create an IPsec-VPN connection with its tunnels.
#[utoipa::path(post, path = "/v1/vpn-connections", tag = "vpn-connections",
    request_body = VpnConnectionSpec,
    responses(
        (status = 201, body = VpnConnection),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_connection(
    State(state): State<AppState>,
    JsonBody(mut body): JsonBody,
) -> ApiResult<(StatusCode, Json<VpnConnection>)> {
    check_read_only(&body)?;
    let token = body::take_client_token(&mut body)?;
    let spec: VpnConnectionSpec = body::parse(body.clone().into())?;
    let gw_id = spec.vpn_gateway_id.clone().ok_or_else(|| {
        ApiError::invalid(
            "vpn_gateway_id",
            "is required: the ID (vpn-…) of the VPN gateway",
        )
    })?;
    let st = state.clone();
    let conn = body::idempotent_create(
        &state,
        "POST /v1/vpn-connections".into(),
        token,
        &body,
        |ct| async move {
            let (gw, cgws, in_use) = context(&st, &gw_id, &spec, None).await?;
            let ctx = ConnectionContext {
                gateway: &gw,
                customer_gateways: &cgws,
                tunnel_cidrs_in_use: &in_use,
            };
            let conn = {
                let mut rng = rand::rng();
                let id = new_id(IdKind::Connection, &mut rng);
                let tunnel_ids: Vec<String> = gw
                    .ipsec_addresses
                    .iter()
                    .map(|_| new_id(IdKind::Tunnel, &mut rng))
                    .collect();
                spec.build(&ctx, id, &tunnel_ids, Utc::now(), &mut rng)?
            };
            st.store.create_connection(&conn, ct.as_ref()).await?;
            tracing::info!(connection = %conn.id, gateway = %gw.id, "VPN connection created");
            log(
                &st,
                &conn.id,
                None,
                "created",
                format!(
                    "connection created with {} tunnel(s) on gateway {}",
                    conn.tunnels.len(),
                    gw.id
                ),
            )
            .await;
            st.notify_changed();
            Ok(conn)
        },
        |id| {
            let st = state.clone();
            async move { st.store.connection(&id).await }
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(conn)))
}

/// List IPsec-VPN connections.
#[utoipa::path(get, path = "/v1/vpn-connections", tag = "vpn-connections",
    params(
        ("name" = Option<String>, Query, description = "substring of the name"),
        ("vpn_gateway_id" = Option<String>, Query, description = "only this gateway's connections"),
        ("page_size" = Option<u32>, Query, description = "1–1000, default 100"),
        ("page_token" = Option<String>, Query),
    ),
    responses((status = 200, body = Page<VpnConnection>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_connections(
    State(state): State<AppState>,
    q: Pairs,
) -> ApiResult<Json<Page<VpnConnection>>> {
    let (mut q, extra) = body::list_query(body::pairs(q)?, &["vpn_gateway_id"])?;
    q.vpn_gateway_id = extra.into_iter().map(|(_, v)| v).next_back();
    Ok(Json(state.store.list_connections(&q).await?))
}

/// Show an IPsec-VPN connection (pre-shared keys are never included).
#[utoipa::path(get, path = "/v1/vpn-connections/{id}", tag = "vpn-connections",
    params(("id" = String, Path)),
    responses((status = 200, body = VpnConnection), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_connection(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<VpnConnection>> {
    Ok(Json(state.store.connection(&id).await?))
}

/// Update a connection (JSON merge patch; `tunnels[i]` merge with tunnel i). Only routing
/// mode, effective_immediately, name, description, tags, subnets, BGP, health check and
/// the tunnels' crypto, identity, PSK, DPD and NAT-T settings may change; tunnels whose
/// negotiated settings change go to state `updating` and renegotiate.
#[utoipa::path(patch, path = "/v1/vpn-connections/{id}", tag = "vpn-connections",
    params(("id" = String, Path)), request_body = VpnConnectionSpec,
    responses((status = 200, body = VpnConnection), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_connection(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<VpnConnection>> {
    check_read_only(&body)?;
    let current = state.store.connection(&id).await?;
    let new = apply_patch(&state, &current, body).await?;
    Ok(Json(new))
}

/// Delete a connection and its tunnels; 409 while routes point at it.
#[utoipa::path(delete, path = "/v1/vpn-connections/{id}", tag = "vpn-connections",
    params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_connection(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.store.delete_connection(&id).await?;
    tracing::info!(connection = %id, "VPN connection deleted");
    state.notify_changed();
    Ok(StatusCode::NO_CONTENT)
}

/// Show a tunnel. `?reveal=pre_shared_key` adds the pre-shared key: the only response
/// that ever contains it.
#[utoipa::path(get, path = "/v1/vpn-connections/{id}/tunnels/{tunnel_id}", tag = "vpn-connections",
    params(("id" = String, Path), ("tunnel_id" = String, Path),
        ("reveal" = Option<String>, Query, description = "`pre_shared_key` to include the key")),
    responses((status = 200, body = Tunnel, description = "the tunnel, plus `pre_shared_key` when revealed"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_tunnel(
    State(state): State<AppState>,
    Path((id, tunnel_id)): Path<(String, String)>,
    q: Pairs,
) -> ApiResult<Json<Value>> {
    let mut reveal = false;
    for (k, v) in body::pairs(q)? {
        match (k.as_str(), v.as_str()) {
            ("reveal", "pre_shared_key") => reveal = true,
            ("reveal", other) => {
                return Err(ApiError::invalid(
                    "reveal",
                    format!("`{other}` cannot be revealed; allowed: pre_shared_key"),
                ));
            }
            (other, _) => {
                return Err(ApiError::invalid(
                    other,
                    "unknown query parameter; allowed: reveal",
                ));
            }
        }
    }
    let conn = state.store.connection(&id).await?;
    let t = tunnel_of(&conn, &tunnel_id)?;
    let mut v = to_value(t)?;
    if reveal {
        tracing::info!(connection = %id, tunnel = %tunnel_id, "pre-shared key revealed");
        if let Value::Object(m) = &mut v {
            m.insert(
                "pre_shared_key".into(),
                Value::String(t.pre_shared_key.expose().to_string()),
            );
        }
    }
    Ok(Json(v))
}

/// Update one tunnel (JSON merge patch of its settings).
#[utoipa::path(patch, path = "/v1/vpn-connections/{id}/tunnels/{tunnel_id}", tag = "vpn-connections",
    params(("id" = String, Path), ("tunnel_id" = String, Path)), request_body = model::TunnelSpec,
    responses((status = 200, body = Tunnel), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_tunnel(
    State(state): State<AppState>,
    Path((id, tunnel_id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Tunnel>> {
    body::reject_read_only(&body, "", TUNNEL_READ_ONLY)?;
    let current = state.store.connection(&id).await?;
    let index = current
        .tunnels
        .iter()
        .position(|t| t.id == tunnel_id)
        .ok_or_else(|| {
            ApiError::not_found(format!("connection {id} has no tunnel `{tunnel_id}`"))
        })?;
    let mut tunnels = vec![Value::Object(Map::new()); current.tunnels.len()];
    tunnels[index] = Value::Object(body);
    let mut patch = Map::new();
    patch.insert("tunnels".into(), Value::Array(tunnels));
    let new = apply_patch(&state, &current, patch)
        .await
        .map_err(|mut e| {
            // Name fields relative to the tunnel, as the client sent them.
            let prefix = format!("tunnels[{index}].");
            if let Some(rest) = e.field.as_deref().and_then(|f| f.strip_prefix(&prefix)) {
                e.field = Some(rest.to_string());
            }
            e
        })?;
    let t = tunnel_of(&new, &tunnel_id)?.clone();
    Ok(Json(t))
}

/// Tear a tunnel down (its SAs are deleted with an INFORMATIONAL Delete) and renegotiate
/// it; when the tunnel cannot initiate (customer gateway 0.0.0.0) it waits for the peer.
/// Answers 202 with the tunnel; its `status` and the connection's logs show the outcome.
#[utoipa::path(post, path = "/v1/vpn-connections/{id}/tunnels/{tunnel_id}/reset", tag = "vpn-connections",
    params(("id" = String, Path), ("tunnel_id" = String, Path)),
    responses((status = 202, body = Tunnel), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "no gateway node runs in this process, or the node cannot run the tunnel")))]
async fn reset_tunnel(
    State(state): State<AppState>,
    Path((id, tunnel_id)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Tunnel>)> {
    let conn = state.store.connection(&id).await?;
    let t = tunnel_of(&conn, &tunnel_id)?.clone();
    let node = state.node_control().ok_or_else(|| {
        ApiError::conflict(
            "no gateway node runs in this process (controller only), so the tunnel cannot be reset here",
        )
    })?;
    node.reset_tunnel(tunnel_id.clone())
        .await
        .map_err(|reason| {
            ApiError::conflict(format!("tunnel {tunnel_id} cannot be reset: {reason}"))
        })?;
    tracing::info!(connection = %id, tunnel = %tunnel_id, "tunnel reset requested");
    Ok((StatusCode::ACCEPTED, Json(t)))
}

/// The logs of a connection.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    pub items: Vec<LogEntry>,
}

/// Negotiation and state events of a connection, oldest first. With `since`: the first
/// `limit` events at or after it; without: the last `limit` (default 100, max 1000).
#[utoipa::path(get, path = "/v1/vpn-connections/{id}/logs", tag = "vpn-connections",
    params(("id" = String, Path),
        ("since" = Option<String>, Query, description = "RFC 3339 time"),
        ("limit" = Option<u32>, Query, description = "1–1000, default 100")),
    responses((status = 200, body = LogPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn connection_logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Pairs,
) -> ApiResult<Json<LogPage>> {
    let mut since = None;
    let mut limit = 100;
    for (k, v) in body::pairs(q)? {
        match k.as_str() {
            "since" => {
                since = Some(
                    DateTime::parse_from_rfc3339(&v)
                        .map_err(|_| {
                            ApiError::invalid(
                                "since",
                                format!("`{v}` is not an RFC 3339 time like 2026-01-02T03:04:05Z"),
                            )
                        })?
                        .with_timezone(&Utc),
                );
            }
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid("limit", format!("must be 1–1000, got `{v}`"))
                    })?;
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    "unknown query parameter; allowed: since, limit",
                ));
            }
        }
    }
    let items = state.store.logs(&id, since, limit).await?;
    Ok(Json(LogPage { items }))
}

/// Every connection, across pages.
pub(crate) async fn all_connections(state: &AppState) -> ApiResult<Vec<VpnConnection>> {
    let mut q = ListQuery {
        page_size: ListQuery::MAX_PAGE_SIZE,
        ..Default::default()
    };
    let mut out = Vec::new();
    loop {
        let page = state.store.list_connections(&q).await?;
        out.extend(page.items);
        match page.next_page_token {
            Some(t) => q.page_token = Some(t),
            None => return Ok(out),
        }
    }
}

fn check_read_only(body: &Map<String, Value>) -> ApiResult<()> {
    body::reject_read_only(body, "", READ_ONLY)?;
    if let Some(Value::Array(ts)) = body.get("tunnels") {
        for (i, t) in ts.iter().enumerate() {
            if let Value::Object(t) = t {
                body::reject_read_only(t, &format!("tunnels[{i}]"), TUNNEL_READ_ONLY)?;
            }
        }
    }
    Ok(())
}

/// Merges `patch` onto the connection's spec (tunnels element by element), validates it
/// as a whole and stores it.
async fn apply_patch(
    state: &AppState,
    current: &VpnConnection,
    mut patch: Map<String, Value>,
) -> ApiResult<VpnConnection> {
    patch.remove("client_token");
    let mut base = to_value(&current.spec())?;
    if let Some(tp) = patch.remove("tunnels") {
        let Value::Array(tp) = tp else {
            return Err(ApiError::invalid(
                "tunnels",
                "must be an array of tunnel patches",
            ));
        };
        if tp.len() != current.tunnels.len() {
            return Err(ApiError::invalid(
                "tunnels",
                format!(
                    "the connection has {} tunnel(s); send one patch object per tunnel, in order",
                    current.tunnels.len()
                ),
            ));
        }
        if let Some(Value::Array(bt)) = base.get_mut("tunnels") {
            for (i, (b, p)) in bt.iter_mut().zip(tp).enumerate() {
                if !p.is_object() {
                    return Err(ApiError::invalid(
                        format!("tunnels[{i}]"),
                        "must be an object",
                    ));
                }
                model::merge_patch(b, &p);
            }
        }
    }
    model::merge_patch(&mut base, &Value::Object(patch));
    let spec: VpnConnectionSpec = body::parse(base)?;
    let (gw, cgws, in_use) =
        context(state, &current.vpn_gateway_id, &spec, Some(&current.id)).await?;
    let ctx = ConnectionContext {
        gateway: &gw,
        customer_gateways: &cgws,
        tunnel_cidrs_in_use: &in_use,
    };
    let new = {
        let mut rng = rand::rng();
        current.updated(spec, &ctx, &mut rng)?
    };
    state.store.update_connection(&new).await?;
    let renegotiating: Vec<&str> = new
        .tunnels
        .iter()
        .zip(&current.tunnels)
        .filter(|(n, o)| n.state == TunnelState::Updating && o.state != TunnelState::Updating)
        .map(|(n, _)| n.id.as_str())
        .collect();
    let message = if renegotiating.is_empty() {
        "configuration changed; no tunnel needs to renegotiate".to_string()
    } else {
        format!(
            "configuration changed; tunnel(s) {} will renegotiate",
            renegotiating.join(", ")
        )
    };
    tracing::info!(connection = %new.id, "VPN connection updated");
    log(state, &new.id, None, "config_changed", message).await;
    state.notify_changed();
    Ok(state.store.connection(&new.id).await?)
}

/// The gateway, the customer gateways the spec names, and (when a tunnel has a BGP
/// block) the tunnel CIDRs the gateway's other connections use.
async fn context(
    state: &AppState,
    gw_id: &str,
    spec: &VpnConnectionSpec,
    this: Option<&str>,
) -> ApiResult<(VpnGateway, Vec<CustomerGateway>, Vec<(Ipv4Net, String)>)> {
    let gw = match state.store.gateway(gw_id).await {
        Ok(g) => g,
        Err(StoreError::NotFound { .. }) => {
            return Err(ApiError::invalid(
                "vpn_gateway_id",
                format!("no VPN gateway `{gw_id}` exists"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let mut ids = BTreeSet::new();
    ids.extend(spec.customer_gateway_id.clone());
    for t in spec.tunnels.iter().flatten() {
        ids.extend(t.customer_gateway_id.clone());
    }
    let mut cgws = Vec::new();
    for id in ids {
        match state.store.customer_gateway(&id).await {
            Ok(c) => cgws.push(c),
            // The model names the tunnel whose customer gateway is missing.
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Only tunnels with a BGP block have tunnel CIDRs to check, and loading every
    // connection of the gateway costs O(n) per create: O(n²) to create n connections
    // (87% of the API's CPU at 5,000 connections, docs/PERFORMANCE.md).
    if !spec.tunnels.iter().flatten().any(|t| t.bgp.is_some()) {
        return Ok((gw, cgws, Vec::new()));
    }
    let in_use = state
        .store
        .gateway_connections(gw_id)
        .await?
        .into_iter()
        .filter(|c| Some(c.id.as_str()) != this)
        .flat_map(|c| {
            let id = c.id.clone();
            c.tunnels
                .into_iter()
                .filter_map(move |t| t.bgp.map(|b| (b.tunnel_cidr, id.clone())))
        })
        .collect();
    Ok((gw, cgws, in_use))
}

fn tunnel_of<'a>(conn: &'a VpnConnection, tunnel_id: &str) -> ApiResult<&'a Tunnel> {
    conn.tunnel(tunnel_id).ok_or_else(|| {
        ApiError::not_found(format!(
            "connection {} has no tunnel `{tunnel_id}`",
            conn.id
        ))
    })
}

fn to_value<T: Serialize>(v: &T) -> ApiResult<Value> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(format!("encoding: {e}")))
}

/// Records an API-side event in the connection's log; a failure is logged, not fatal.
async fn log(
    state: &AppState,
    connection_id: &str,
    tunnel_id: Option<String>,
    event: &str,
    message: String,
) {
    let entry = LogEntry {
        at: Utc::now(),
        tunnel_id,
        level: LogLevel::Info,
        event: event.to_string(),
        message,
    };
    if let Err(e) = state.store.append_log(connection_id, &entry).await {
        tracing::warn!(connection = %connection_id, error = %e, "could not record log entry");
    }
}
