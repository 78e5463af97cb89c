//! Observed tunnel status: written by the gateway node, read back in GET responses.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::IkeVersion;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct TunnelStatus {
    pub phase: TunnelPhase,
    /// Why the tunnel is in this phase, in words an operator can act on.
    pub reason: Option<String>,
    /// When the tunnel entered this phase.
    pub since: Option<DateTime<Utc>>,
    /// True while this tunnel is the one carrying the connection's traffic.
    pub carrying_traffic: bool,
    pub ike_sa: Option<IkeSaStatus>,
    pub child_sas: Vec<ChildSaStatus>,
    pub bgp: Option<BgpStatus>,
    pub health: Option<HealthStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TunnelPhase {
    #[default]
    Idle,
    Phase1Negotiating,
    Phase1Failed,
    Phase2Negotiating,
    Phase2Failed,
    Established,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IkeSaStatus {
    pub version: IkeVersion,
    pub spis: IkeSpis,
    /// Negotiated suite, e.g. `aes128-sha1-modp1024`.
    pub algorithms: String,
    pub established_at: Option<DateTime<Utc>>,
    pub rekey_at: Option<DateTime<Utc>>,
}

/// IKE SA SPIs as 16 hex digits each (RFC 7296 §3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IkeSpis {
    pub initiator: String,
    pub responder: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChildSaStatus {
    /// Inbound/outbound ESP SPI as 8 hex digits.
    pub spi_in: String,
    pub spi_out: String,
    /// Traffic selectors as CIDRs.
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    pub algorithms: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BgpStatus {
    pub state: BgpSessionState,
    pub peer_asn: Option<u32>,
    pub routes_received: u64,
    pub routes_advertised: u64,
    /// When the session last reached `established`; null while it is not.
    #[serde(default)]
    pub established_at: Option<DateTime<Utc>>,
    /// Seconds since `established_at`, computed when the status is read.
    #[serde(default)]
    pub uptime_s: Option<u64>,
}

impl BgpStatus {
    /// Fills `uptime_s` from `established_at` as of `now`.
    pub fn refresh_uptime(&mut self, now: DateTime<Utc>) {
        self.uptime_s = self
            .established_at
            .filter(|_| self.state == BgpSessionState::Established)
            .map(|at| u64::try_from((now - at).num_seconds()).unwrap_or(0));
    }
}

/// BGP FSM states (RFC 4271 §8.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BgpSessionState {
    #[default]
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthStatus {
    pub state: HealthState,
    pub last_rtt_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    #[default]
    Unknown,
    Up,
    Down,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_status_is_idle_with_all_fields() {
        let v = serde_json::to_value(TunnelStatus::default()).unwrap();
        assert_eq!(v["phase"], "idle");
        for key in [
            "reason",
            "since",
            "carrying_traffic",
            "ike_sa",
            "child_sas",
            "bgp",
            "health",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        let back: TunnelStatus = serde_json::from_value(v).unwrap();
        assert_eq!(back, TunnelStatus::default());
    }

    #[test]
    fn phase_names() {
        let v = serde_json::to_value(TunnelPhase::Phase2Negotiating).unwrap();
        assert_eq!(v, "phase2_negotiating");
    }
}
