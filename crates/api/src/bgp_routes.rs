//! BGP routes of a connection: `GET /v1/vpn-connections/{id}/bgp-routes` (an addition
//! to API.md, see docs/API-NOTES.md). The gateway node stores what each tunnel's session
//! received and advertised; the learned ones also appear in the gateway's route table
//! with `origin: bgp` (`routes.rs`).

use axum::Json;
use axum::extract::{Path, State};
use model::{BgpRoutes, TunnelBgpRoutes, VpnConnection, tunnel_bgp_routes};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{ApiResult, AppState, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_bgp_routes))
}

/// Per tunnel, in tunnel order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BgpRouteList {
    pub items: Vec<TunnelBgpRoutes>,
}

/// The routes each tunnel's BGP session received (its Adj-RIB-In, `best` marking the
/// ones the gateway forwards on) and advertised. Tunnels without a running session
/// show state `idle` and no routes.
#[utoipa::path(get, path = "/v1/vpn-connections/{id}/bgp-routes", tag = "connections",
    params(("id" = String, Path)),
    responses((status = 200, body = BgpRouteList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_bgp_routes(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<BgpRouteList>> {
    let c = state.store.connection(&id).await?;
    let stored = state.store.connection_bgp_routes(&id).await?;
    Ok(Json(BgpRouteList {
        items: tunnel_bgp_routes(&c, &stored),
    }))
}

/// The stored routes of every BGP connection among `conns`, for the route table.
pub(crate) async fn learned(
    state: &AppState,
    conns: &[VpnConnection],
) -> ApiResult<Vec<(String, Vec<(String, BgpRoutes)>)>> {
    let mut out = Vec::new();
    for c in conns.iter().filter(|c| c.enable_bgp) {
        match state.store.connection_bgp_routes(&c.id).await {
            Ok(r) => out.push((c.id.clone(), r)),
            // Deleted since the list was read.
            Err(store::StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}
