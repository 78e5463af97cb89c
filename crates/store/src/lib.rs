//! Persistence for vpngw behind one object-safe trait, [`Store`], so that callers hold an
//! `Arc<dyn Store>` and a PostgreSQL implementation can join the embedded SQLite one
//! ([`SqliteStore`]) without touching them.
//!
//! The store keeps the desired state written through the API (gateways, customer
//! gateways, connections with their tunnels, routes) and what the gateway node observes
//! (per-tunnel status, per-connection logs), plus the `client_token` records that make
//! POSTs idempotent. Validation is not its job (that is `model`'s); referential integrity
//! and uniqueness are, since only the store can check them atomically.

mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use model::{
    BgpRoutes, ConnectionStatus, CustomerGateway, GatewayStatus, LogEntry, Page, PolicyRoute,
    Route, TunnelState, TunnelStatus, VpnConnection, VpnGateway,
};

pub use sqlite::SqliteStore;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No resource of this kind with this ID.
    #[error("{kind} `{id}` does not exist")]
    NotFound { kind: &'static str, id: String },
    /// The write would break a rule only the store can check: the resource is in use,
    /// a value must be unique, a referenced resource is gone.
    #[error("{0}")]
    Conflict(String),
    /// The `client_token` was already used within 24 h; this is the first use.
    #[error("client token already used")]
    ClientTokenTaken(ClientTokenRecord),
    /// A `page_token` that this store did not hand out.
    #[error("invalid page token")]
    InvalidPageToken,
    /// The database failed or holds something unreadable.
    #[error("storage failure: {0}")]
    Backend(String),
}

/// How long a `client_token` keeps returning the first result.
pub const CLIENT_TOKEN_TTL: chrono::Duration = chrono::Duration::hours(24);

/// A `client_token` to record together with the resource a POST creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientToken {
    /// What the token is for, e.g. `POST /v1/vpn-connections`: the same token on
    /// another endpoint is a different token.
    pub scope: String,
    pub token: String,
    /// A digest of the request body, to tell a retry from a different request.
    pub request_hash: String,
    pub created_at: DateTime<Utc>,
}

/// A recorded `client_token` and the ID of the resource its first request created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTokenRecord {
    pub token: ClientToken,
    pub resource_id: String,
}

/// Filter and page of a list request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Case-insensitive substring of the name.
    pub name_contains: Option<String>,
    /// Every pair must be among the resource's tags.
    pub tags: Vec<(String, String)>,
    /// Connections only: those of this gateway.
    pub vpn_gateway_id: Option<String>,
    /// 1–1000; 0 means the default (100).
    pub page_size: usize,
    pub page_token: Option<String>,
}

impl ListQuery {
    pub const DEFAULT_PAGE_SIZE: usize = 100;
    pub const MAX_PAGE_SIZE: usize = 1000;

    pub fn effective_page_size(&self) -> usize {
        match self.page_size {
            0 => Self::DEFAULT_PAGE_SIZE,
            n => n.min(Self::MAX_PAGE_SIZE),
        }
    }
}

/// Numbers of resources, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub vpn_gateways: u64,
    pub customer_gateways: u64,
    pub vpn_connections: u64,
    pub tunnels: u64,
    pub routes: u64,
    pub policy_routes: u64,
}

/// How many times the gateway node logged an event for a tunnel (see
/// [`Store::tunnel_event_counts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCount {
    pub connection_id: String,
    pub tunnel_id: String,
    /// The log entry's `event`, e.g. `phase1_established`, `phase2_failed`.
    pub event: String,
    pub count: u64,
}

/// One observation of a gateway node, for [`Store::record_observed`].
#[derive(Debug, Clone)]
pub enum Observed {
    TunnelStatus {
        tunnel_id: String,
        status: TunnelStatus,
    },
    Log {
        connection_id: String,
        entry: LogEntry,
    },
}

/// The persistence interface. All methods are atomic: a failed call changes nothing.
/// Reads fill the computed fields (`connection_count`, `tunnel_count`, the tunnels'
/// observed `status`, `connection_state`) and the tunnels' pre-shared keys.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- VPN gateways
    /// Inserts a gateway (and records `token`, if any, in the same transaction).
    async fn create_gateway(&self, gw: &VpnGateway, token: Option<&ClientToken>) -> Result<()>;
    async fn gateway(&self, id: &str) -> Result<VpnGateway>;
    async fn list_gateways(&self, q: &ListQuery) -> Result<Page<VpnGateway>>;
    /// Replaces the gateway's configuration (ID and creation time are kept).
    async fn update_gateway(&self, gw: &VpnGateway) -> Result<()>;
    async fn set_gateway_status(
        &self,
        id: &str,
        status: GatewayStatus,
        reason: Option<String>,
    ) -> Result<()>;
    /// Conflict while the gateway has connections.
    async fn delete_gateway(&self, id: &str) -> Result<()>;

    // --- customer gateways
    async fn create_customer_gateway(
        &self,
        cgw: &CustomerGateway,
        token: Option<&ClientToken>,
    ) -> Result<()>;
    async fn customer_gateway(&self, id: &str) -> Result<CustomerGateway>;
    async fn list_customer_gateways(&self, q: &ListQuery) -> Result<Page<CustomerGateway>>;
    async fn update_customer_gateway(&self, cgw: &CustomerGateway) -> Result<()>;
    /// Conflict while tunnels use it.
    async fn delete_customer_gateway(&self, id: &str) -> Result<()>;

    // --- connections and tunnels
    /// Inserts a connection and all its tunnels, or nothing. Conflict when a tunnel CIDR
    /// is already used on the gateway or a referenced gateway is gone.
    async fn create_connection(&self, c: &VpnConnection, token: Option<&ClientToken>)
    -> Result<()>;
    async fn connection(&self, id: &str) -> Result<VpnConnection>;
    async fn list_connections(&self, q: &ListQuery) -> Result<Page<VpnConnection>>;
    /// Every connection of a gateway, oldest first.
    async fn gateway_connections(&self, gateway_id: &str) -> Result<Vec<VpnConnection>>;
    /// Connections in `creating` or `updating`, or with a tunnel in `updating`, oldest
    /// first: what the controller without a node has left to settle after a write.
    /// Loading every connection for that after each create made creating n connections
    /// O(n²) (issue 8).
    async fn unsettled_connections(&self) -> Result<Vec<VpnConnection>>;
    /// The connection that holds a tunnel.
    async fn tunnel_connection(&self, tunnel_id: &str) -> Result<VpnConnection>;
    /// Replaces a connection's configuration and its tunnels' (same tunnel IDs); the
    /// observed tunnel status is kept.
    async fn update_connection(&self, c: &VpnConnection) -> Result<()>;
    async fn set_connection_status(&self, id: &str, status: ConnectionStatus) -> Result<()>;
    async fn set_tunnel_state(&self, tunnel_id: &str, state: TunnelState) -> Result<()>;
    /// Records what the gateway node observes about a tunnel.
    async fn set_tunnel_status(&self, tunnel_id: &str, status: &TunnelStatus) -> Result<()>;
    /// At start-up, before any node reports: what the previous run observed (its SAs,
    /// carrying traffic, BGP session and routes, health, a failure) ended with it, so
    /// every tunnel that shows more than `idle` is set to `idle` since `at` with
    /// `reason`, and its BGP routes are emptied. Configuration and logs stay. Returns
    /// how many tunnels changed.
    async fn end_observed_state(&self, reason: &str, at: DateTime<Utc>) -> Result<usize>;
    /// Records the routes a tunnel's BGP session received and advertised (the node).
    async fn set_tunnel_bgp_routes(&self, tunnel_id: &str, routes: &BgpRoutes) -> Result<()>;
    /// The stored BGP routes of every tunnel of a connection, tunnel 1 first, as
    /// (tunnel ID, routes). NotFound for an unknown connection.
    async fn connection_bgp_routes(&self, connection_id: &str) -> Result<Vec<(String, BgpRoutes)>>;
    /// Deletes the connection, its tunnels and logs. Conflict while routes use it.
    async fn delete_connection(&self, id: &str) -> Result<()>;

    // --- routes
    /// Conflict for a second route with the same destination and next hop.
    async fn create_route(&self, r: &Route, token: Option<&ClientToken>) -> Result<()>;
    async fn route(&self, gateway_id: &str, id: &str) -> Result<Route>;
    async fn routes(&self, gateway_id: &str) -> Result<Vec<Route>>;
    async fn delete_route(&self, gateway_id: &str, id: &str) -> Result<()>;
    /// Conflict for a second policy route with the same source, destination and hop.
    async fn create_policy_route(&self, r: &PolicyRoute, token: Option<&ClientToken>)
    -> Result<()>;
    async fn policy_route(&self, gateway_id: &str, id: &str) -> Result<PolicyRoute>;
    async fn policy_routes(&self, gateway_id: &str) -> Result<Vec<PolicyRoute>>;
    async fn delete_policy_route(&self, gateway_id: &str, id: &str) -> Result<()>;

    // --- logs
    /// Appends an event; the oldest are dropped beyond 10 000 per connection. An entry
    /// with a `tunnel_id` of the connection also counts in [`Store::tunnel_event_counts`].
    async fn append_log(&self, connection_id: &str, entry: &LogEntry) -> Result<()>;
    /// Records a gateway node's observations in order: each applies or fails on its own
    /// (a tunnel deleted meanwhile is NotFound), as [`Store::set_tunnel_status`] and
    /// [`Store::append_log`] would; the results are in the same order. The SQLite store
    /// writes a batch in one transaction: one commit per status change or log entry
    /// held the node's writer behind while 10,000 tunnels came up (issue 8).
    async fn record_observed(&self, batch: &[Observed]) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(batch.len());
        for o in batch {
            out.push(match o {
                Observed::TunnelStatus { tunnel_id, status } => {
                    self.set_tunnel_status(tunnel_id, status).await
                }
                Observed::Log {
                    connection_id,
                    entry,
                } => self.append_log(connection_id, entry).await,
            });
        }
        out
    }

    /// With `since`: the first `limit` entries at or after it; without: the last
    /// `limit`. Oldest first either way.
    async fn logs(
        &self,
        connection_id: &str,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<LogEntry>>;

    /// For every tunnel, how many log entries of each `event` were appended for it since
    /// it was created. Unlike the log these are never trimmed, so they only grow (until
    /// the connection is deleted): the source of the negotiation counters in metrics.
    async fn tunnel_event_counts(&self) -> Result<Vec<EventCount>>;

    // --- idempotency
    /// The record of a token used within 24 h before `now`.
    async fn client_token(
        &self,
        scope: &str,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ClientTokenRecord>>;
    /// Drops records older than 24 h; returns how many.
    async fn purge_client_tokens(&self, now: DateTime<Utc>) -> Result<usize>;

    async fn counts(&self) -> Result<Counts>;
}
