//! `/v1/vpn-gateways`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use model::{IdKind, Page, VpnGateway, VpnGatewaySpec, new_id};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::body::{self, JsonBody, Pairs};
use crate::{ApiError, ApiResult, AppState, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_gateways, create_gateway))
        .routes(routes!(get_gateway, update_gateway, delete_gateway))
}

const READ_ONLY: &[&str] = &[
    "id",
    "status",
    "status_reason",
    "connection_count",
    "created_at",
];

/// Create a VPN gateway.
#[utoipa::path(post, path = "/v1/vpn-gateways", tag = "vpn-gateways",
    request_body = VpnGatewaySpec,
    responses(
        (status = 201, body = VpnGateway),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, description = "client_token reused for another request", body = ErrorBody)))]
async fn create_gateway(
    State(state): State<AppState>,
    JsonBody(mut body): JsonBody,
) -> ApiResult<(StatusCode, Json<VpnGateway>)> {
    body::reject_read_only(&body, "", READ_ONLY)?;
    let token = body::take_client_token(&mut body)?;
    let spec: VpnGatewaySpec = body::parse(body.clone().into())?;
    let st = state.clone();
    let gw = body::idempotent_create(
        &state,
        "POST /v1/vpn-gateways".into(),
        token,
        &body,
        |ct| async move {
            let id = new_id(IdKind::VpnGateway, &mut rand::rng());
            let gw = spec.build(id, Utc::now())?;
            st.store.create_gateway(&gw, ct.as_ref()).await?;
            tracing::info!(gateway = %gw.id, "VPN gateway created");
            st.notify_changed();
            Ok(gw)
        },
        |id| {
            let st = state.clone();
            async move { st.store.gateway(&id).await }
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(gw)))
}

/// List VPN gateways.
#[utoipa::path(get, path = "/v1/vpn-gateways", tag = "vpn-gateways",
    params(
        ("name" = Option<String>, Query, description = "substring of the name"),
        ("page_size" = Option<u32>, Query, description = "1–1000, default 100"),
        ("page_token" = Option<String>, Query),
    ),
    responses((status = 200, body = Page<VpnGateway>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_gateways(
    State(state): State<AppState>,
    q: Pairs,
) -> ApiResult<Json<Page<VpnGateway>>> {
    let (q, _) = body::list_query(body::pairs(q)?, &[])?;
    Ok(Json(state.store.list_gateways(&q).await?))
}

/// Show a VPN gateway.
#[utoipa::path(get, path = "/v1/vpn-gateways/{id}", tag = "vpn-gateways",
    params(("id" = String, Path)),
    responses((status = 200, body = VpnGateway), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_gateway(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<VpnGateway>> {
    Ok(Json(state.store.gateway(&id).await?))
}

/// Update a VPN gateway (JSON merge patch): name, description, tags, local_networks.
#[utoipa::path(patch, path = "/v1/vpn-gateways/{id}", tag = "vpn-gateways",
    params(("id" = String, Path)), request_body = VpnGatewaySpec,
    responses((status = 200, body = VpnGateway), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_gateway(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<VpnGateway>> {
    body::reject_read_only(&body, "", READ_ONLY)?;
    let current = state.store.gateway(&id).await?;
    let spec = body::merged(&current.spec(), body)?;
    let new = current.updated(spec)?;
    for c in state.store.gateway_connections(&id).await? {
        for s in &c.local_subnets {
            if !new.local_networks.iter().any(|n| n.contains(s)) {
                return Err(ApiError::conflict_field(
                    "local_networks",
                    format!(
                        "connection {} has local subnet {s}, which would no longer be inside the gateway's local networks",
                        c.id
                    ),
                ));
            }
        }
    }
    state.store.update_gateway(&new).await?;
    state.notify_changed();
    Ok(Json(state.store.gateway(&id).await?))
}

/// Delete a VPN gateway; 409 while it has connections.
#[utoipa::path(delete, path = "/v1/vpn-gateways/{id}", tag = "vpn-gateways",
    params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_gateway(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.store.delete_gateway(&id).await?;
    tracing::info!(gateway = %id, "VPN gateway deleted");
    state.notify_changed();
    Ok(StatusCode::NO_CONTENT)
}
