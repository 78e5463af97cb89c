//! vpngw resource model: the types of the HTTP API, their defaults and every validation
//! rule of the API contract (`API.md`). No IO: time and randomness come from the caller.
//!
//! Each resource has two shapes:
//! - a `*Spec`: what a client sends (every field optional, unknown fields rejected), which
//!   `build`s into
//! - the resource itself (`VpnGateway`, `VpnConnection`, ...): defaults filled in, values
//!   parsed and checked, read-only fields set.
//!
//! A validation failure is a [`FieldError`] naming the JSON path of the offending field
//! (`tunnels[0].pre_shared_key`) and saying what is allowed.

mod asn;
mod bgp;
mod connection;
mod customer_gateway;
mod enums;
mod error;
mod gateway;
mod ids;
mod log;
mod psk;
mod route;
mod status;
mod validate;

pub use asn::{AsnInput, parse_asn};
pub use bgp::{
    BgpOrigin, BgpRoute, BgpRoutes, TunnelBgpRoutes, bgp_route_entries, mark_overridden_static,
    tunnel_bgp_routes,
};
pub use connection::{
    ConnectionContext, ConnectionState, ConnectionStatus, HealthCheck, HealthCheckSpec, IkeConfig,
    IkeSpec, IpsecConfig, IpsecSpec, PskInput, RoutingMode, Tunnel, TunnelBgp, TunnelBgpSpec,
    TunnelRole, TunnelSpec, TunnelState, VpnConnection, VpnConnectionSpec,
};
pub use customer_gateway::{CustomerGateway, CustomerGatewaySpec};
pub use enums::{DhGroup, Encryption, IkeMode, IkeVersion, Integrity, IpsecProtocol, Pfs};
pub use error::FieldError;
pub use gateway::{GatewayStatus, GatewayType, VpnGateway, VpnGatewaySpec};
pub use ids::{IdKind, new_id};
pub use log::{LogEntry, LogLevel};
pub use psk::{PSK_SPECIALS, Psk, generate_psk};
pub use route::{
    PolicyRoute, PolicyRouteSpec, Route, RouteOrigin, RouteSpec, RouteState, RouteTableEntry,
    route_table,
};
pub use status::{
    BgpSessionState, BgpStatus, ChildSaStatus, HealthState, HealthStatus, IkeSaStatus, IkeSpis,
    TunnelPhase, TunnelStatus,
};
pub use validate::merge_patch;

/// Resource tags: at most [`MAX_TAGS`] key/value pairs.
pub type Tags = std::collections::BTreeMap<String, String>;

/// A page of a list: `{"items": [...], "next_page_token": null}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `page_token` to get the next page; `null` on the last page.
    pub next_page_token: Option<String>,
}

/// Limits of the API contract.
pub const MAX_TAGS: usize = 20;
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_DESCRIPTION_LEN: usize = 256;
pub const MAX_SUBNETS: usize = 20;
pub const MAX_LIFETIME_S: u32 = 86_400;
pub const DEFAULT_LOCAL_ASN: u32 = 45_104;

#[cfg(test)]
pub(crate) mod testutil {
    use chrono::{DateTime, Utc};
    use rand::SeedableRng;

    use crate::*;

    pub fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(42)
    }

    pub fn epoch() -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH
    }

    pub fn gateway(addresses: &[&str]) -> VpnGateway {
        VpnGatewaySpec {
            name: Some("gw".into()),
            ipsec_addresses: Some(addresses.iter().map(|a| a.to_string()).collect()),
            local_networks: Some(vec!["10.0.0.0/16".into()]),
            ..Default::default()
        }
        .build("vpn-1".into(), epoch())
        .unwrap()
    }

    pub fn cgw(id: &str, ip: &str, asn: Option<u64>) -> CustomerGateway {
        CustomerGatewaySpec {
            name: Some(id.into()),
            ip_address: Some(ip.into()),
            asn: asn.map(AsnInput::Number),
            ..Default::default()
        }
        .build(id.into(), epoch())
        .unwrap()
    }

    /// A valid dual-tunnel spec on `gateway(["192.0.2.1", "192.0.2.2"])`.
    pub fn spec() -> VpnConnectionSpec {
        VpnConnectionSpec {
            name: Some("c1".into()),
            vpn_gateway_id: Some("vpn-1".into()),
            tunnels: Some(vec![
                TunnelSpec {
                    customer_gateway_id: Some("cgw-a".into()),
                    ..Default::default()
                },
                TunnelSpec {
                    customer_gateway_id: Some("cgw-a".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }
    }
}
