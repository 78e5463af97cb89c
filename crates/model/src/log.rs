use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One negotiation or state event of a connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogEntry {
    pub at: DateTime<Utc>,
    /// The tunnel the event concerns; `null` for connection-wide events.
    pub tunnel_id: Option<String>,
    pub level: LogLevel,
    /// A short machine-readable name such as `config_changed` or `ike_sa_established`.
    pub event: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}
