//! `/v1/customer-gateways`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use model::{CustomerGateway, CustomerGatewaySpec, IdKind, Page, new_id};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::body::{self, JsonBody, Pairs};
use crate::{ApiError, ApiResult, AppState, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_customer_gateways, create_customer_gateway))
        .routes(routes!(
            get_customer_gateway,
            update_customer_gateway,
            delete_customer_gateway
        ))
}

const READ_ONLY: &[&str] = &["id", "tunnel_count", "created_at"];

/// Create a customer gateway (the peer).
#[utoipa::path(post, path = "/v1/customer-gateways", tag = "customer-gateways",
    request_body = CustomerGatewaySpec,
    responses(
        (status = 201, body = CustomerGateway),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, description = "client_token reused for another request", body = ErrorBody)))]
async fn create_customer_gateway(
    State(state): State<AppState>,
    JsonBody(mut body): JsonBody,
) -> ApiResult<(StatusCode, Json<CustomerGateway>)> {
    body::reject_read_only(&body, "", READ_ONLY)?;
    let token = body::take_client_token(&mut body)?;
    let spec: CustomerGatewaySpec = body::parse(body.clone().into())?;
    let st = state.clone();
    let gw = body::idempotent_create(
        &state,
        "POST /v1/customer-gateways".into(),
        token,
        &body,
        |ct| async move {
            let id = new_id(IdKind::CustomerGateway, &mut rand::rng());
            let gw = spec.build(id, Utc::now())?;
            st.store.create_customer_gateway(&gw, ct.as_ref()).await?;
            tracing::info!(customer_gateway = %gw.id, "customer gateway created");
            st.notify_changed();
            Ok(gw)
        },
        |id| {
            let st = state.clone();
            async move { st.store.customer_gateway(&id).await }
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(gw)))
}

/// List customer gateways.
#[utoipa::path(get, path = "/v1/customer-gateways", tag = "customer-gateways",
    params(
        ("name" = Option<String>, Query, description = "substring of the name"),
        ("page_size" = Option<u32>, Query, description = "1–1000, default 100"),
        ("page_token" = Option<String>, Query),
    ),
    responses((status = 200, body = Page<CustomerGateway>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_customer_gateways(
    State(state): State<AppState>,
    q: Pairs,
) -> ApiResult<Json<Page<CustomerGateway>>> {
    let (q, _) = body::list_query(body::pairs(q)?, &[])?;
    Ok(Json(state.store.list_customer_gateways(&q).await?))
}

/// Show a customer gateway.
#[utoipa::path(get, path = "/v1/customer-gateways/{id}", tag = "customer-gateways",
    params(("id" = String, Path)),
    responses((status = 200, body = CustomerGateway), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_customer_gateway(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<CustomerGateway>> {
    Ok(Json(state.store.customer_gateway(&id).await?))
}

/// Update a customer gateway (JSON merge patch): name, description, tags, asn.
#[utoipa::path(patch, path = "/v1/customer-gateways/{id}", tag = "customer-gateways",
    params(("id" = String, Path)), request_body = CustomerGatewaySpec,
    responses((status = 200, body = CustomerGateway), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_customer_gateway(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<CustomerGateway>> {
    body::reject_read_only(&body, "", READ_ONLY)?;
    let current = state.store.customer_gateway(&id).await?;
    let spec = body::merged(&current.spec(), body)?;
    let new = current.updated(spec)?;
    if new.asn.is_none() && current.asn.is_some() {
        let users = crate::connections::all_connections(&state).await?;
        if let Some(c) = users
            .iter()
            .find(|c| c.enable_bgp && c.tunnels.iter().any(|t| t.customer_gateway_id == id))
        {
            return Err(ApiError::conflict_field(
                "asn",
                format!(
                    "connection {} runs BGP with this customer gateway, so its asn cannot be removed",
                    c.id
                ),
            ));
        }
    }
    state.store.update_customer_gateway(&new).await?;
    state.notify_changed();
    Ok(Json(state.store.customer_gateway(&id).await?))
}

/// Delete a customer gateway; 409 while tunnels use it.
#[utoipa::path(delete, path = "/v1/customer-gateways/{id}", tag = "customer-gateways",
    params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_customer_gateway(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.store.delete_customer_gateway(&id).await?;
    tracing::info!(customer_gateway = %id, "customer gateway deleted");
    state.notify_changed();
    Ok(StatusCode::NO_CONTENT)
}
