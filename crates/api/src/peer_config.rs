//! `GET /v1/vpn-connections/{id}/peer-config` and `GET /v1/peer-config-formats`: the
//! configuration of the peer device, rendered by the `peerconf` crate.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use peerconf::{Format, PeerContext, RenderError};
use serde::Serialize;
use store::StoreError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::body::{self, Pairs};
use crate::{ApiError, ApiResult, AppState, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(peer_config))
        .routes(routes!(peer_config_formats))
}

/// The format used when `?format=` is absent.
const DEFAULT_FORMAT: Format = Format::Swanctl;

/// The peer device's configuration of a connection, from the peer's point of view (its
/// local side is the customer gateway, its remote side vpngw): both tunnels with every
/// negotiated parameter **and the pre-shared keys**. This and
/// `GET …/tunnels/{id}?reveal=pre_shared_key` are the only responses that carry keys.
#[utoipa::path(get, path = "/v1/vpn-connections/{id}/peer-config", tag = "vpn-connections",
    params(("id" = String, Path),
        ("format" = Option<String>, Query,
            description = "swanctl (default), ipsec-conf, frr, json, cisco-ios, juniper-srx, huawei-vrp, fortigate or paloalto; see GET /v1/peer-config-formats")),
    responses(
        (status = 200, description = "the configuration text; `application/json` for format json, `text/plain` otherwise",
            content((String = "text/plain"), (serde_json::Value = "application/json"))),
        (status = 400, body = ErrorBody, description = "unknown format or query parameter"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "format frr on a connection without BGP")))]
async fn peer_config(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Pairs,
) -> ApiResult<Response> {
    let mut format = DEFAULT_FORMAT;
    for (k, v) in body::pairs(q)? {
        match k.as_str() {
            "format" => {
                format = v.parse().map_err(|e: peerconf::UnknownFormat| {
                    ApiError::invalid("format", e.to_string())
                })?;
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    "unknown query parameter; allowed: format",
                ));
            }
        }
    }
    // The store loads the tunnels with their pre-shared keys.
    let conn = state.store.connection(&id).await?;
    let gateway = match state.store.gateway(&conn.vpn_gateway_id).await {
        Ok(g) => g,
        // The store keeps a connection's gateway while the connection exists.
        Err(StoreError::NotFound { .. }) => {
            tracing::error!(connection = %id, gateway = %conn.vpn_gateway_id, "gateway of a stored connection is missing");
            return Err(ApiError::internal(
                "the connection's gateway is missing; see the server log",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let mut customer_gateways = Vec::new();
    for t in &conn.tunnels {
        if customer_gateways
            .iter()
            .any(|c: &model::CustomerGateway| c.id == t.customer_gateway_id)
        {
            continue;
        }
        customer_gateways.push(state.store.customer_gateway(&t.customer_gateway_id).await?);
    }
    let ctx = PeerContext::new(&conn, &gateway, &customer_gateways);
    let text = peerconf::render(format, &ctx).map_err(|e| match e {
        RenderError::BgpNotEnabled { .. } => ApiError::conflict_field("format", e.to_string()),
        // RenderError never carries a key (peerconf's guarantee), so it may be logged.
        other => {
            tracing::error!(connection = %id, format = %format, error = %other, "rendering the peer configuration failed");
            ApiError::internal("the peer configuration could not be rendered; see the server log")
        }
    })?;
    tracing::info!(connection = %id, format = %format, "peer configuration (with pre-shared keys) downloaded");
    Ok((
        [
            (CONTENT_TYPE, format.content_type()),
            // It holds pre-shared keys: no cache may keep a copy.
            (CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response())
}

/// One peer configuration format.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeerConfigFormat {
    /// The `?format=` value.
    pub name: String,
    pub title: String,
    /// The software versions the template is written for.
    pub targets: String,
    /// The media type of the rendered configuration.
    pub content_type: String,
}

/// The formats of `GET …/peer-config`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeerConfigFormats {
    pub items: Vec<PeerConfigFormat>,
}

/// The formats `GET /v1/vpn-connections/{id}/peer-config?format=` accepts, with what
/// each targets.
#[utoipa::path(get, path = "/v1/peer-config-formats", tag = "vpn-connections",
    responses((status = 200, body = PeerConfigFormats), (status = 401, body = ErrorBody)))]
async fn peer_config_formats() -> Json<PeerConfigFormats> {
    let items = Format::ALL
        .into_iter()
        .map(|f| {
            let info = f.info();
            PeerConfigFormat {
                name: info.name.to_string(),
                title: info.title.to_string(),
                targets: info.targets.to_string(),
                content_type: f.content_type().to_string(),
            }
        })
        .collect();
    Json(PeerConfigFormats { items })
}
