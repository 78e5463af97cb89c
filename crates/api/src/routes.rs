//! Routes of a gateway: `/v1/vpn-gateways/{id}/routes`, `/policy-routes`, `/route-table`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use model::{
    IdKind, Page, PolicyRoute, PolicyRouteSpec, Route, RouteSpec, RouteTableEntry,
    bgp_route_entries, mark_overridden_static, new_id, route_table,
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::body::{self, JsonBody};
use crate::{ApiResult, AppState, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_routes, create_route))
        .routes(routes!(get_route, delete_route))
        .routes(routes!(list_policy_routes, create_policy_route))
        .routes(routes!(get_policy_route, delete_policy_route))
        .routes(routes!(get_route_table))
}

/// Create a destination-based route.
#[utoipa::path(post, path = "/v1/vpn-gateways/{id}/routes", tag = "routes",
    params(("id" = String, Path)), request_body = RouteSpec,
    responses((status = 201, body = Route), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_route(
    State(state): State<AppState>,
    Path(gw_id): Path<String>,
    JsonBody(mut body): JsonBody,
) -> ApiResult<(StatusCode, Json<Route>)> {
    let token = body::take_client_token(&mut body)?;
    let spec: RouteSpec = body::parse(body.clone().into())?;
    let gw = state.store.gateway(&gw_id).await?;
    let st = state.clone();
    let scope = format!("POST /v1/vpn-gateways/{gw_id}/routes");
    let route = body::idempotent_create(
        &state,
        scope,
        token,
        &body,
        |ct| async move {
            let conns = st.store.gateway_connections(&gw.id).await?;
            let id = new_id(IdKind::Route, &mut rand::rng());
            let r = spec.build(&gw, &conns, id, Utc::now())?;
            st.store.create_route(&r, ct.as_ref()).await?;
            tracing::info!(gateway = %gw.id, route = %r.id, "route created");
            st.notify_changed();
            Ok(r)
        },
        |id| {
            let (st, g) = (state.clone(), gw_id.clone());
            async move { st.store.route(&g, &id).await }
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(route)))
}

/// List a gateway's destination-based routes.
#[utoipa::path(get, path = "/v1/vpn-gateways/{id}/routes", tag = "routes",
    params(("id" = String, Path)),
    responses((status = 200, body = Page<Route>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_routes(
    State(state): State<AppState>,
    Path(gw_id): Path<String>,
) -> ApiResult<Json<Page<Route>>> {
    Ok(Json(Page {
        items: state.store.routes(&gw_id).await?,
        next_page_token: None,
    }))
}

/// Show a destination-based route.
#[utoipa::path(get, path = "/v1/vpn-gateways/{id}/routes/{route_id}", tag = "routes",
    params(("id" = String, Path), ("route_id" = String, Path)),
    responses((status = 200, body = Route), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_route(
    State(state): State<AppState>,
    Path((gw_id, id)): Path<(String, String)>,
) -> ApiResult<Json<Route>> {
    Ok(Json(state.store.route(&gw_id, &id).await?))
}

/// Delete a destination-based route.
#[utoipa::path(delete, path = "/v1/vpn-gateways/{id}/routes/{route_id}", tag = "routes",
    params(("id" = String, Path), ("route_id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_route(
    State(state): State<AppState>,
    Path((gw_id, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.store.delete_route(&gw_id, &id).await?;
    state.notify_changed();
    Ok(StatusCode::NO_CONTENT)
}

/// Create a policy-based route.
#[utoipa::path(post, path = "/v1/vpn-gateways/{id}/policy-routes", tag = "routes",
    params(("id" = String, Path)), request_body = PolicyRouteSpec,
    responses((status = 201, body = PolicyRoute), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_policy_route(
    State(state): State<AppState>,
    Path(gw_id): Path<String>,
    JsonBody(mut body): JsonBody,
) -> ApiResult<(StatusCode, Json<PolicyRoute>)> {
    let token = body::take_client_token(&mut body)?;
    let spec: PolicyRouteSpec = body::parse(body.clone().into())?;
    let gw = state.store.gateway(&gw_id).await?;
    let st = state.clone();
    let scope = format!("POST /v1/vpn-gateways/{gw_id}/policy-routes");
    let route = body::idempotent_create(
        &state,
        scope,
        token,
        &body,
        |ct| async move {
            let conns = st.store.gateway_connections(&gw.id).await?;
            let id = new_id(IdKind::PolicyRoute, &mut rand::rng());
            let r = spec.build(&gw, &conns, id, Utc::now())?;
            st.store.create_policy_route(&r, ct.as_ref()).await?;
            tracing::info!(gateway = %gw.id, route = %r.id, "policy route created");
            st.notify_changed();
            Ok(r)
        },
        |id| {
            let (st, g) = (state.clone(), gw_id.clone());
            async move { st.store.policy_route(&g, &id).await }
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(route)))
}

/// List a gateway's policy-based routes.
#[utoipa::path(get, path = "/v1/vpn-gateways/{id}/policy-routes", tag = "routes",
    params(("id" = String, Path)),
    responses((status = 200, body = Page<PolicyRoute>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_policy_routes(
    State(state): State<AppState>,
    Path(gw_id): Path<String>,
) -> ApiResult<Json<Page<PolicyRoute>>> {
    Ok(Json(Page {
        items: state.store.policy_routes(&gw_id).await?,
        next_page_token: None,
    }))
}

/// Show a policy-based route.
#[utoipa::path(get, path = "/v1/vpn-gateways/{id}/policy-routes/{route_id}", tag = "routes",
    params(("id" = String, Path), ("route_id" = String, Path)),
    responses((status = 200, body = PolicyRoute), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_policy_route(
    State(state): State<AppState>,
    Path((gw_id, id)): Path<(String, String)>,
) -> ApiResult<Json<PolicyRoute>> {
    Ok(Json(state.store.policy_route(&gw_id, &id).await?))
}

/// Delete a policy-based route.
#[utoipa::path(delete, path = "/v1/vpn-gateways/{id}/policy-routes/{route_id}", tag = "routes",
    params(("id" = String, Path), ("route_id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_policy_route(
    State(state): State<AppState>,
    Path((gw_id, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state.store.delete_policy_route(&gw_id, &id).await?;
    state.notify_changed();
    Ok(StatusCode::NO_CONTENT)
}

/// Every effective route of a gateway.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteTable {
    pub items: Vec<RouteTableEntry>,
}

/// The gateway's effective routes: static, policy, `auto` policy routes from
/// protected-flows connections, and `bgp` routes learned by the connections' BGP
/// sessions (with the tunnel that learned them), each with its state and the reason.
#[utoipa::path(get, path = "/v1/vpn-gateways/{id}/route-table", tag = "routes",
    params(("id" = String, Path)),
    responses((status = 200, body = RouteTable), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_route_table(
    State(state): State<AppState>,
    Path(gw_id): Path<String>,
) -> ApiResult<Json<RouteTable>> {
    let routes = state.store.routes(&gw_id).await?;
    let policy = state.store.policy_routes(&gw_id).await?;
    let conns = state.store.gateway_connections(&gw_id).await?;
    let learned = crate::bgp_routes::learned(&state, &conns).await?;
    let mut items = route_table(&routes, &policy, &conns);
    items.extend(bgp_route_entries(&routes, &conns, &learned));
    mark_overridden_static(&mut items, &conns);
    Ok(Json(RouteTable { items }))
}
