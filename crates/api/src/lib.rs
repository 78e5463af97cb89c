//! The vpngw HTTP API (axum): every resource endpoint of the API contract, bearer-token
//! auth, one error shape, and the OpenAPI document generated from the handlers.
//!
//! Embedding it (this is what `vpngw serve` does, and what the gateway node hooks into):
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let store = Arc::new(store::SqliteStore::open(std::path::Path::new("/var/lib/vpngw"))?);
//! let token = api::load_or_create_admin_token(std::path::Path::new("/var/lib/vpngw"))?;
//! let state = api::AppState::new(store, token);
//! let mut changes = state.subscribe(); // the node: wake up after every write
//! tokio::spawn(async move {
//!     while changes.changed().await.is_ok() { /* reconcile desired state */ }
//! });
//! // Without a node in the process, let the controller apply its own desired state:
//! // tokio::spawn(api::run_without_node(state.clone()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9280").await?;
//! axum::serve(listener, api::router(state)).await?;
//! # Ok(()) }
//! ```

mod bgp_routes;
mod body;
mod connections;
mod controller;
mod customer_gateways;
mod error;
mod gateways;
mod ops;
mod peer_config;
mod routes;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use store::Store;
use tokio::sync::watch;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use controller::{NO_NODE_REASON, apply_without_node, run_without_node};
pub use error::{ApiError, ApiResult, ErrorBody, ErrorDetail};

/// Something that adds lines to `GET /metrics` (the gateway node adds per-tunnel series).
pub trait MetricsSource: Send + Sync {
    /// Appends Prometheus text-format lines (with their `# HELP`/`# TYPE`).
    fn render(&self, out: &mut String);
}

/// Commands the API passes to the gateway node running in the same process (`vpngw
/// serve` wires the node's command channel in with [`AppState::set_node_control`]).
pub trait NodeControl: Send + Sync {
    /// `POST …/tunnels/{tunnel_id}/reset`: delete the tunnel's SAs and renegotiate.
    /// `Err` carries an operator-readable reason (e.g. the tunnel cannot run on the node).
    fn reset_tunnel(&self, tunnel_id: String) -> NodeFuture;
}

/// The future a [`NodeControl`] command returns.
pub type NodeFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The desired and observed state.
    pub store: Arc<dyn Store>,
    admin_token: Arc<str>,
    changes: Arc<watch::Sender<u64>>,
    metrics: Arc<RwLock<Vec<Arc<dyn MetricsSource>>>>,
    node: Arc<RwLock<Option<Arc<dyn NodeControl>>>>,
    started: SystemTime,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, admin_token: String) -> Self {
        let (tx, _) = watch::channel(0);
        AppState {
            store,
            admin_token: admin_token.into(),
            changes: Arc::new(tx),
            metrics: Arc::new(RwLock::new(Vec::new())),
            node: Arc::new(RwLock::new(None)),
            started: SystemTime::now(),
        }
    }

    /// A receiver whose value is bumped after every successful write through the API
    /// (create, update, delete). The gateway node waits on it and then reconciles.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Bumps the change counter (the API calls it after each write; a node that writes
    /// observed status does not need to).
    pub fn notify_changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Connects the gateway node that runs in this process (for tunnel resets).
    pub fn set_node_control(&self, node: Arc<dyn NodeControl>) {
        if let Ok(mut n) = self.node.write() {
            *n = Some(node);
        }
    }

    /// The gateway node of this process, if one runs.
    pub fn node_control(&self) -> Option<Arc<dyn NodeControl>> {
        self.node.read().ok().and_then(|n| n.clone())
    }

    /// Adds a source of extra `/metrics` lines.
    pub fn add_metrics_source(&self, source: Arc<dyn MetricsSource>) {
        if let Ok(mut m) = self.metrics.write() {
            m.push(source);
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vpngw API",
        description = "Self-hosted IPsec VPN gateways: VPN gateways, customer gateways, IPsec-VPN connections and their routes."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routers (protected, open) and the OpenAPI document describing both.
fn api_parts() -> (Router<AppState>, Router<AppState>, utoipa::openapi::OpenApi) {
    let (protected, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(gateways::router())
        .merge(customer_gateways::router())
        .merge(connections::router())
        .merge(peer_config::router())
        .merge(routes::router())
        .merge(bgp_routes::router())
        .merge(ops::router())
        .split_for_parts();
    let (open, open_doc) = ops::open_router().split_for_parts();
    doc.merge(open_doc);
    (protected, open, doc)
}

/// The OpenAPI document of the whole API, as served at `GET /v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_parts().2
}

/// Builds the complete HTTP router: `/v1/...`, `/metrics`, `/v1/openapi.json` behind the
/// bearer token, `/healthz` open. Unknown paths are JSON 404s.
pub fn router(state: AppState) -> Router {
    let (api, open, doc) = api_parts();
    let doc = Arc::new(doc);
    let protected = api
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = Arc::clone(&doc);
                async move { axum::Json((*doc).clone()) }
            }),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(open)
        .merge(protected)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), state.admin_token.as_bytes()) => {
            next.run(req).await
        }
        Some(_) => ApiError::unauthorized("the bearer token is not valid").into_response(),
        None => ApiError::unauthorized(
            "missing `Authorization: Bearer <token>` header (the admin token is in DATA_DIR/admin.token)",
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The file in the data directory that holds the admin bearer token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Reads `data_dir/admin.token`, or on first start generates a token (40 random
/// alphanumerics) and writes it there with mode 0600. The file's mode is enforced.
pub fn load_or_create_admin_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            return Ok(s.trim().to_string());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    Ok(token)
}
