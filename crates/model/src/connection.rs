use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Utc};
use ipnet::{IpNet, Ipv4Net};
use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    AsnInput, CustomerGateway, DEFAULT_LOCAL_ASN, DhGroup, Encryption, FieldError, IkeMode,
    IkeVersion, Integrity, IpsecProtocol, MAX_LIFETIME_S, MAX_SUBNETS, Pfs, Psk, Tags, TunnelPhase,
    TunnelStatus, VpnGateway, generate_psk, parse_asn, validate,
};

/// An IPsec-VPN connection between a VPN gateway and customer gateway(s): one tunnel per
/// gateway IPsec address, tunnel 1 primary, tunnel 2 secondary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VpnConnection {
    pub id: String,
    pub name: String,
    pub description: String,
    pub tags: Tags,
    pub vpn_gateway_id: String,
    pub routing_mode: RoutingMode,
    #[schema(value_type = Vec<String>)]
    pub local_subnets: Vec<IpNet>,
    #[schema(value_type = Vec<String>)]
    pub remote_subnets: Vec<IpNet>,
    pub effective_immediately: bool,
    pub enable_bgp: bool,
    pub local_asn: u32,
    /// With BGP: a prefix both tunnels' sessions learned is used over both tunnels at
    /// once, each flow (addresses, protocol and ports) staying on one tunnel; off,
    /// tunnel 1's session is preferred and tunnel 2's is the standby.
    #[serde(default)]
    pub bgp_ecmp: bool,
    /// With BGP: also advertise the routes learned over BGP on the gateway's other
    /// connections (AS path: our AS prepended to the learned one; never sent back to
    /// the connection they came from).
    #[serde(default)]
    pub bgp_advertise_learned: bool,
    /// With BGP: a route learned on this connection replaces a static route of the
    /// same destination; off, the static route wins.
    #[serde(default)]
    pub bgp_override_static: bool,
    pub tunnels: Vec<Tunnel>,
    pub health_check: HealthCheck,
    pub status: ConnectionStatus,
    /// Summary of the tunnels' observed state: `established` when a tunnel is up.
    pub connection_state: ConnectionState,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoutingMode {
    /// Selectors 0.0.0.0/0 ↔ 0.0.0.0/0; the gateway's route table picks the connection.
    #[default]
    Destination,
    /// Selectors are the local/remote subnets; policy routes are created automatically.
    ProtectedFlows,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionStatus {
    #[default]
    Creating,
    Running,
    Updating,
    Deleting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    /// No tunnel has started negotiating.
    #[default]
    Idle,
    Negotiating,
    Established,
    /// Negotiation failed on every tunnel that tried.
    Down,
}

/// One tunnel of a connection. The pre-shared key is never serialized: it lives apart
/// in the store and is shown only by the reveal endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Tunnel {
    pub id: String,
    pub role: TunnelRole,
    #[schema(value_type = String)]
    pub gateway_address: IpAddr,
    pub customer_gateway_id: String,
    #[serde(skip)]
    pub pre_shared_key: Psk,
    pub ike: IkeConfig,
    pub ipsec: IpsecConfig,
    pub dpd: bool,
    /// Seconds between DPD probes when the peer is idle.
    pub dpd_interval_s: u32,
    /// Seconds without an answer after which the peer is declared dead.
    pub dpd_timeout_s: u32,
    pub nat_traversal: bool,
    pub bgp: Option<TunnelBgp>,
    pub state: TunnelState,
    pub status: TunnelStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TunnelRole {
    Primary,
    Secondary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TunnelState {
    #[default]
    Active,
    /// The configuration changed; the node renegotiates the tunnel.
    Updating,
    Deleting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IkeConfig {
    pub version: IkeVersion,
    pub mode: IkeMode,
    pub encryption: Encryption,
    pub integrity: Integrity,
    pub dh_group: DhGroup,
    pub lifetime_s: u32,
    pub local_id: String,
    pub remote_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IpsecConfig {
    pub protocol: IpsecProtocol,
    pub encryption: Encryption,
    pub integrity: Integrity,
    pub pfs: Pfs,
    pub lifetime_s: u32,
}

/// The BGP link of a tunnel: a /30 of 169.254.0.0/16 and our address in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TunnelBgp {
    #[schema(value_type = String)]
    pub tunnel_cidr: Ipv4Net,
    #[schema(value_type = String)]
    pub local_ip: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthCheck {
    pub enabled: bool,
    #[schema(value_type = Option<String>)]
    pub source_ip: Option<IpAddr>,
    #[schema(value_type = Option<String>)]
    pub destination_ip: Option<IpAddr>,
    pub interval_s: u32,
    pub retries: u32,
    /// Move traffic to the other tunnel when the check fails.
    pub switch_route: bool,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            enabled: false,
            source_ip: None,
            destination_ip: None,
            interval_s: 3,
            retries: 3,
            switch_route: true,
        }
    }
}

/// What a client sends to create a connection; also the base a PATCH is merged onto.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VpnConnectionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpn_gateway_id: Option<String>,
    /// Shorthand: the customer gateway of every tunnel that does not name its own (and,
    /// when `tunnels` is absent, one default tunnel per gateway IPsec address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_gateway_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_mode: Option<RoutingMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_subnets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_subnets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_immediately: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_bgp: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_asn: Option<AsnInput>,
    /// Default false; needs `enable_bgp` and two tunnels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp_ecmp: Option<bool>,
    /// Default false; needs `enable_bgp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp_advertise_learned: Option<bool>,
    /// Default false; needs `enable_bgp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp_override_static: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnels: Option<Vec<TunnelSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TunnelSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_gateway_id: Option<String>,
    /// Generated (16 characters) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub pre_shared_key: Option<PskInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ike: Option<IkeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipsec: Option<IpsecSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpd: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpd_interval_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpd_timeout_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_traversal: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<TunnelBgpSpec>,
}

/// A pre-shared key as the client sent it, before checking. Redacted in `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PskInput(pub String);

impl fmt::Debug for PskInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PskInput(<redacted>)")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IkeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<IkeVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<IkeMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<Integrity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dh_group: Option<DhGroup>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IpsecSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<IpsecProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<Integrity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pfs: Option<Pfs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_s: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TunnelBgpSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_ip: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_route: Option<bool>,
}

/// What building a connection needs to know about other resources.
pub struct ConnectionContext<'a> {
    /// The gateway named by `vpn_gateway_id`.
    pub gateway: &'a VpnGateway,
    /// Customer gateways the tunnels may name (at least the ones they do).
    pub customer_gateways: &'a [CustomerGateway],
    /// BGP tunnel CIDRs used by the gateway's *other* connections, with their IDs.
    pub tunnel_cidrs_in_use: &'a [(Ipv4Net, String)],
}

const DEFAULT_DPD_INTERVAL_S: u32 = 10;
const DEFAULT_DPD_TIMEOUT_IKEV2_S: u32 = 130;
const DEFAULT_DPD_TIMEOUT_IKEV1_S: u32 = 30;

impl VpnConnectionSpec {
    /// Checks every rule of the contract and makes a new connection (status `creating`).
    /// `tunnel_ids` must hold one ID per gateway IPsec address.
    pub fn build(
        self,
        ctx: &ConnectionContext<'_>,
        id: String,
        tunnel_ids: &[String],
        now: DateTime<Utc>,
        rng: &mut impl Rng,
    ) -> Result<VpnConnection, FieldError> {
        let name = validate::name(self.name, "name")?;
        let description = validate::description(self.description, "description")?;
        let tags = validate::tags(self.tags, "tags")?;
        let gw = ctx.gateway;
        match &self.vpn_gateway_id {
            None => {
                return Err(FieldError::new(
                    "vpn_gateway_id",
                    "is required: the ID (vpn-…) of the VPN gateway",
                ));
            }
            Some(g) if *g != gw.id => {
                return Err(FieldError::new(
                    "vpn_gateway_id",
                    format!("`{g}` does not match the gateway being used ({})", gw.id),
                ));
            }
            Some(_) => {}
        }
        let routing_mode = self.routing_mode.unwrap_or_default();
        let local_subnets = subnets(self.local_subnets.as_deref(), "local_subnets", routing_mode)?;
        let remote_subnets = subnets(
            self.remote_subnets.as_deref(),
            "remote_subnets",
            routing_mode,
        )?;
        for (i, s) in local_subnets.iter().enumerate() {
            if !gw.local_networks.iter().any(|n| n.contains(s)) {
                return Err(FieldError::new(
                    format!("local_subnets[{i}]"),
                    format!(
                        "{s} is not inside the gateway's local networks ({})",
                        join(&gw.local_networks)
                    ),
                ));
            }
        }
        for (i, l) in local_subnets.iter().enumerate() {
            if let Some(r) = remote_subnets.iter().find(|r| validate::overlaps(l, r)) {
                return Err(FieldError::new(
                    format!("local_subnets[{i}]"),
                    format!(
                        "{l} overlaps remote subnet {r}: local and remote subnets must not overlap"
                    ),
                ));
            }
        }

        let mut specs = match self.tunnels {
            Some(t) => t,
            None if self.customer_gateway_id.is_some() => {
                vec![TunnelSpec::default(); gw.ipsec_addresses.len()]
            }
            None => {
                return Err(FieldError::new(
                    "tunnels",
                    format!(
                        "is required: one tunnel per gateway IPsec address ({}), each with a customer_gateway_id",
                        gw.ipsec_addresses.len()
                    ),
                ));
            }
        };
        if specs.len() != gw.ipsec_addresses.len() {
            return Err(FieldError::new(
                "tunnels",
                format!(
                    "gateway {} has {} IPsec address(es), so the connection needs exactly {} tunnel(s), got {}",
                    gw.id,
                    gw.ipsec_addresses.len(),
                    gw.ipsec_addresses.len(),
                    specs.len()
                ),
            ));
        }
        if tunnel_ids.len() != specs.len() {
            return Err(FieldError::new(
                "tunnels",
                "internal: tunnel ID count mismatch",
            ));
        }
        for t in &mut specs {
            if t.customer_gateway_id.is_none() {
                t.customer_gateway_id.clone_from(&self.customer_gateway_id);
            }
        }
        let mut tunnels = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let field = format!("tunnels[{i}]");
            let t = spec
                .build(ctx, i, tunnel_ids[i].clone(), rng)
                .map_err(|e| e.within(&field))?;
            tunnels.push(t);
        }

        // More than one traffic selector per side needs IKEv2: IKEv1 negotiates exactly one
        // ID pair per phase 2 (RFC 2409 §5.5), IKEv2 carries TS lists (RFC 7296 §2.9).
        let several = local_subnets.len() > 1 || remote_subnets.len() > 1;
        if several {
            let ikev1 = tunnels
                .iter()
                .position(|t| t.ike.version != IkeVersion::Ikev2);
            if let Some(i) = ikev1 {
                let side = if local_subnets.len() > 1 {
                    "local_subnets"
                } else {
                    "remote_subnets"
                };
                return Err(FieldError::new(
                    side,
                    format!(
                        "more than one CIDR on either side needs ike.version ikev2 on every tunnel; tunnels[{i}] uses ikev1"
                    ),
                ));
            }
        }

        for (i, t) in tunnels.iter().enumerate() {
            let Some(b) = &t.bgp else { continue };
            let field = format!("tunnels[{i}].bgp.tunnel_cidr");
            if let Some(j) = tunnels[..i]
                .iter()
                .position(|o| o.bgp.is_some_and(|ob| ob.tunnel_cidr == b.tunnel_cidr))
            {
                return Err(FieldError::new(
                    field,
                    format!(
                        "{} is already used by tunnels[{j}]: tunnel CIDRs must be unique per gateway",
                        b.tunnel_cidr
                    ),
                ));
            }
            if let Some((_, other)) = ctx
                .tunnel_cidrs_in_use
                .iter()
                .find(|(c, other)| *c == b.tunnel_cidr && *other != id)
            {
                return Err(FieldError::new(
                    field,
                    format!(
                        "{} is already used by connection {other} on this gateway: tunnel CIDRs must be unique per gateway",
                        b.tunnel_cidr
                    ),
                ));
            }
        }

        let enable_bgp = self.enable_bgp.unwrap_or(false);
        let local_asn = match &self.local_asn {
            Some(a) => parse_asn(a).map_err(|e| e.within("local_asn"))?,
            None => DEFAULT_LOCAL_ASN,
        };
        if enable_bgp {
            for (i, t) in tunnels.iter().enumerate() {
                let cgw = find_cgw(ctx, &t.customer_gateway_id).ok_or_else(|| {
                    FieldError::new(format!("tunnels[{i}].customer_gateway_id"), "not found")
                })?;
                if cgw.asn.is_none() {
                    return Err(FieldError::new(
                        format!("tunnels[{i}].customer_gateway_id"),
                        format!(
                            "BGP needs an AS number on the customer gateway, and {} has none: set its asn first",
                            cgw.id
                        ),
                    ));
                }
                if t.bgp.is_none() {
                    return Err(FieldError::new(
                        format!("tunnels[{i}].bgp"),
                        "is required when enable_bgp is true: {tunnel_cidr, local_ip}",
                    ));
                }
            }
        }

        let bgp_ecmp = self.bgp_ecmp.unwrap_or(false);
        let bgp_advertise_learned = self.bgp_advertise_learned.unwrap_or(false);
        let bgp_override_static = self.bgp_override_static.unwrap_or(false);
        for (field, on) in [
            ("bgp_ecmp", bgp_ecmp),
            ("bgp_advertise_learned", bgp_advertise_learned),
            ("bgp_override_static", bgp_override_static),
        ] {
            if on && !enable_bgp {
                return Err(FieldError::new(
                    field,
                    "can be true only with enable_bgp true: set enable_bgp (and each tunnel's bgp) as well, or leave it false",
                ));
            }
        }
        if bgp_ecmp && tunnels.len() < 2 {
            return Err(FieldError::new(
                "bgp_ecmp",
                "spreads traffic over two tunnels, and this connection has one (its gateway has one IPsec address): leave it false",
            ));
        }

        let health_check = health_check(self.health_check.unwrap_or_default())
            .map_err(|e| e.within("health_check"))?;

        let mut conn = VpnConnection {
            id,
            name,
            description,
            tags,
            vpn_gateway_id: gw.id.clone(),
            routing_mode,
            local_subnets,
            remote_subnets,
            effective_immediately: self.effective_immediately.unwrap_or(true),
            enable_bgp,
            local_asn,
            bgp_ecmp,
            bgp_advertise_learned,
            bgp_override_static,
            tunnels,
            health_check,
            status: ConnectionStatus::Creating,
            connection_state: ConnectionState::Idle,
            created_at: now,
        };
        conn.refresh_state();
        Ok(conn)
    }
}

impl TunnelSpec {
    fn build(
        self,
        ctx: &ConnectionContext<'_>,
        index: usize,
        id: String,
        rng: &mut impl Rng,
    ) -> Result<Tunnel, FieldError> {
        let gateway_address = ctx.gateway.ipsec_addresses[index];
        let cgw_id = self.customer_gateway_id.ok_or_else(|| {
            FieldError::new(
                "customer_gateway_id",
                "is required: the ID (cgw-…) of the peer's customer gateway",
            )
        })?;
        let cgw = find_cgw(ctx, &cgw_id).ok_or_else(|| {
            FieldError::new(
                "customer_gateway_id",
                format!("no customer gateway `{cgw_id}` exists"),
            )
        })?;
        let pre_shared_key = match &self.pre_shared_key {
            Some(k) => Psk::parse(&k.0).map_err(|e| e.within("pre_shared_key"))?,
            None => generate_psk(rng),
        };

        let ike = self.ike.unwrap_or_default();
        let version = ike.version.unwrap_or_default();
        if version == IkeVersion::Ikev2 && ike.mode == Some(IkeMode::Aggressive) {
            return Err(FieldError::new(
                "ike.mode",
                "aggressive mode exists only in IKEv1: use mode main (or omit it) with ikev2, or set ike.version ikev1",
            ));
        }
        // RFC 2409 (and RFC 5282 only for IKEv2) defines no AEAD transform for the
        // ISAKMP SA, so no IKEv1 implementation can negotiate a GCM phase 1; ESP in Quick
        // Mode may still use GCM (RFC 4106).
        if version == IkeVersion::Ikev1
            && let Some(e) = ike.encryption.filter(|e| e.is_aead())
        {
            return Err(FieldError::new(
                "ike.encryption",
                format!(
                    "{} cannot be used with ike.version ikev1: IKEv1 (RFC 2409) has no AEAD cipher for phase 1; use aes, aes192, aes256, des or 3des with ikev1, or set ike.version ikev2 (ipsec.encryption may still be aes-gcm-128/aes-gcm-256)",
                    e.name()
                ),
            ));
        }
        let ike_lifetime = lifetime(ike.lifetime_s, "ike.lifetime_s")?;
        let local_id = ike.local_id.unwrap_or_else(|| gateway_address.to_string());
        validate::identity(&local_id, "ike.local_id")?;
        let remote_id = match ike.remote_id {
            Some(r) => r,
            None if cgw.is_any_peer() => {
                return Err(FieldError::new(
                    "ike.remote_id",
                    format!(
                        "is required because customer gateway {} accepts any peer (0.0.0.0): the peer is matched by its IKE identity",
                        cgw.id
                    ),
                ));
            }
            None => cgw.ip_address.to_string(),
        };
        validate::identity(&remote_id, "ike.remote_id")?;

        let ipsec = self.ipsec.unwrap_or_default();
        let ipsec_lifetime = lifetime(ipsec.lifetime_s, "ipsec.lifetime_s")?;

        let dpd_interval_s = self.dpd_interval_s.unwrap_or(DEFAULT_DPD_INTERVAL_S);
        if !(1..=3600).contains(&dpd_interval_s) {
            return Err(FieldError::new(
                "dpd_interval_s",
                format!("must be 1–3600 seconds, got {dpd_interval_s}"),
            ));
        }
        let dpd_timeout_s = self.dpd_timeout_s.unwrap_or(match version {
            IkeVersion::Ikev2 => DEFAULT_DPD_TIMEOUT_IKEV2_S,
            IkeVersion::Ikev1 => DEFAULT_DPD_TIMEOUT_IKEV1_S,
        });
        if dpd_timeout_s <= dpd_interval_s || dpd_timeout_s > MAX_LIFETIME_S {
            return Err(FieldError::new(
                "dpd_timeout_s",
                format!(
                    "must be more than dpd_interval_s ({dpd_interval_s}) and at most {MAX_LIFETIME_S} seconds, got {dpd_timeout_s}"
                ),
            ));
        }

        let bgp = match self.bgp {
            Some(b) => Some(tunnel_bgp(b).map_err(|e| e.within("bgp"))?),
            None => None,
        };

        Ok(Tunnel {
            id,
            role: if index == 0 {
                TunnelRole::Primary
            } else {
                TunnelRole::Secondary
            },
            gateway_address,
            customer_gateway_id: cgw_id,
            pre_shared_key,
            ike: IkeConfig {
                version,
                mode: ike.mode.unwrap_or_default(),
                encryption: ike.encryption.unwrap_or_default(),
                integrity: ike.integrity.unwrap_or_default(),
                dh_group: ike.dh_group.unwrap_or_default(),
                lifetime_s: ike_lifetime,
                local_id,
                remote_id,
            },
            ipsec: IpsecConfig {
                protocol: ipsec.protocol.unwrap_or_default(),
                encryption: ipsec.encryption.unwrap_or_default(),
                integrity: ipsec.integrity.unwrap_or_default(),
                pfs: ipsec.pfs.unwrap_or_default(),
                lifetime_s: ipsec_lifetime,
            },
            dpd: self.dpd.unwrap_or(true),
            dpd_interval_s,
            dpd_timeout_s,
            nat_traversal: self.nat_traversal.unwrap_or(true),
            bgp,
            state: TunnelState::Active,
            status: TunnelStatus::default(),
        })
    }
}

impl VpnConnection {
    /// The spec that builds this connection again (pre-shared keys included): the base a
    /// PATCH is merged onto. Never send it to a client.
    pub fn spec(&self) -> VpnConnectionSpec {
        VpnConnectionSpec {
            name: Some(self.name.clone()),
            description: Some(self.description.clone()),
            tags: Some(self.tags.clone()),
            vpn_gateway_id: Some(self.vpn_gateway_id.clone()),
            customer_gateway_id: None,
            routing_mode: Some(self.routing_mode),
            local_subnets: Some(self.local_subnets.iter().map(|s| s.to_string()).collect()),
            remote_subnets: Some(self.remote_subnets.iter().map(|s| s.to_string()).collect()),
            effective_immediately: Some(self.effective_immediately),
            enable_bgp: Some(self.enable_bgp),
            local_asn: Some(AsnInput::Number(u64::from(self.local_asn))),
            bgp_ecmp: Some(self.bgp_ecmp),
            bgp_advertise_learned: Some(self.bgp_advertise_learned),
            bgp_override_static: Some(self.bgp_override_static),
            tunnels: Some(self.tunnels.iter().map(Tunnel::spec).collect()),
            health_check: Some(HealthCheckSpec {
                enabled: Some(self.health_check.enabled),
                source_ip: self.health_check.source_ip.map(|i| i.to_string()),
                destination_ip: self.health_check.destination_ip.map(|i| i.to_string()),
                interval_s: Some(self.health_check.interval_s),
                retries: Some(self.health_check.retries),
                switch_route: Some(self.health_check.switch_route),
            }),
            client_token: None,
        }
    }

    /// Applies a merged spec (PATCH). The gateway and the tunnels' customer gateways
    /// cannot change. Tunnels whose negotiated settings changed go to state `updating`, and
    /// then the connection's status too, so that the node renegotiates them.
    pub fn updated(
        &self,
        spec: VpnConnectionSpec,
        ctx: &ConnectionContext<'_>,
        rng: &mut impl Rng,
    ) -> Result<VpnConnection, FieldError> {
        if spec.vpn_gateway_id.as_deref() != Some(self.vpn_gateway_id.as_str()) {
            return Err(FieldError::new(
                "vpn_gateway_id",
                "cannot change after creation",
            ));
        }
        if let Some(ts) = &spec.tunnels {
            if ts.len() != self.tunnels.len() {
                return Err(FieldError::new(
                    "tunnels",
                    format!(
                        "the number of tunnels cannot change after creation ({})",
                        self.tunnels.len()
                    ),
                ));
            }
            for (i, (t, old)) in ts.iter().zip(&self.tunnels).enumerate() {
                if t.customer_gateway_id.as_deref() != Some(old.customer_gateway_id.as_str()) {
                    return Err(FieldError::new(
                        format!("tunnels[{i}].customer_gateway_id"),
                        "cannot change after creation: create a new connection instead",
                    ));
                }
            }
        }
        let ids: Vec<String> = self.tunnels.iter().map(|t| t.id.clone()).collect();
        // A key removed by the patch (`"pre_shared_key": null`) is generated anew.
        let mut new = spec.build(ctx, self.id.clone(), &ids, self.created_at, rng)?;
        let selectors_changed = new.routing_mode != self.routing_mode
            || new.local_subnets != self.local_subnets
            || new.remote_subnets != self.remote_subnets
            || new.enable_bgp != self.enable_bgp
            || new.local_asn != self.local_asn;
        let mut any = false;
        for (t, old) in new.tunnels.iter_mut().zip(&self.tunnels) {
            t.status = old.status.clone();
            t.state = old.state;
            if selectors_changed || !t.same_settings(old) {
                t.state = TunnelState::Updating;
                any = true;
            }
        }
        new.status = if any {
            ConnectionStatus::Updating
        } else {
            self.status
        };
        new.refresh_state();
        Ok(new)
    }

    /// Recomputes `connection_state` from the tunnels' observed status.
    pub fn refresh_state(&mut self) {
        let phases: Vec<TunnelPhase> = self.tunnels.iter().map(|t| t.status.phase).collect();
        self.connection_state = if phases.contains(&TunnelPhase::Established) {
            ConnectionState::Established
        } else if phases.iter().any(|p| {
            matches!(
                p,
                TunnelPhase::Phase1Negotiating | TunnelPhase::Phase2Negotiating
            )
        }) {
            ConnectionState::Negotiating
        } else if phases
            .iter()
            .any(|p| matches!(p, TunnelPhase::Phase1Failed | TunnelPhase::Phase2Failed))
        {
            ConnectionState::Down
        } else {
            ConnectionState::Idle
        };
    }

    pub fn tunnel(&self, id: &str) -> Option<&Tunnel> {
        self.tunnels.iter().find(|t| t.id == id)
    }
}

impl Tunnel {
    fn spec(&self) -> TunnelSpec {
        TunnelSpec {
            customer_gateway_id: Some(self.customer_gateway_id.clone()),
            pre_shared_key: Some(PskInput(self.pre_shared_key.expose().to_string())),
            ike: Some(IkeSpec {
                version: Some(self.ike.version),
                mode: Some(self.ike.mode),
                encryption: Some(self.ike.encryption),
                integrity: Some(self.ike.integrity),
                dh_group: Some(self.ike.dh_group),
                lifetime_s: Some(self.ike.lifetime_s),
                local_id: Some(self.ike.local_id.clone()),
                remote_id: Some(self.ike.remote_id.clone()),
            }),
            ipsec: Some(IpsecSpec {
                protocol: Some(self.ipsec.protocol),
                encryption: Some(self.ipsec.encryption),
                integrity: Some(self.ipsec.integrity),
                pfs: Some(self.ipsec.pfs),
                lifetime_s: Some(self.ipsec.lifetime_s),
            }),
            dpd: Some(self.dpd),
            dpd_interval_s: Some(self.dpd_interval_s),
            dpd_timeout_s: Some(self.dpd_timeout_s),
            nat_traversal: Some(self.nat_traversal),
            bgp: self.bgp.map(|b| TunnelBgpSpec {
                tunnel_cidr: Some(b.tunnel_cidr.to_string()),
                local_ip: Some(b.local_ip.to_string()),
            }),
        }
    }

    /// Same configuration (ignoring the read-only state and status).
    fn same_settings(&self, other: &Tunnel) -> bool {
        self.pre_shared_key == other.pre_shared_key
            && self.ike == other.ike
            && self.ipsec == other.ipsec
            && self.dpd == other.dpd
            && self.dpd_interval_s == other.dpd_interval_s
            && self.dpd_timeout_s == other.dpd_timeout_s
            && self.nat_traversal == other.nat_traversal
            && self.bgp == other.bgp
    }
}

/// The link-local /30s reserved by the cloud products this API follows.
const RESERVED_TUNNEL_CIDRS: [&str; 7] = [
    "169.254.0.0/30",
    "169.254.1.0/30",
    "169.254.2.0/30",
    "169.254.3.0/30",
    "169.254.4.0/30",
    "169.254.5.0/30",
    "169.254.169.252/30",
];

fn tunnel_bgp(spec: TunnelBgpSpec) -> Result<TunnelBgp, FieldError> {
    let rule =
        "a /30 inside 169.254.0.0/16, not 169.254.0.0/30 … 169.254.5.0/30 nor 169.254.169.252/30";
    let c = spec
        .tunnel_cidr
        .ok_or_else(|| FieldError::new("tunnel_cidr", format!("is required: {rule}")))?;
    let net: Ipv4Net = c.parse().map_err(|_| {
        FieldError::new(
            "tunnel_cidr",
            format!("`{c}` is not an IPv4 CIDR: use {rule}"),
        )
    })?;
    let link_local: Ipv4Net = Ipv4Net::new(Ipv4Addr::new(169, 254, 0, 0), 16)
        .map_err(|_| FieldError::new("tunnel_cidr", "internal"))?;
    if net.prefix_len() != 30 || !link_local.contains(&net) {
        return Err(FieldError::new(
            "tunnel_cidr",
            format!("`{c}` must be {rule}"),
        ));
    }
    if net.trunc() != net {
        return Err(FieldError::new(
            "tunnel_cidr",
            format!("`{c}` has host bits set: the network is {}", net.trunc()),
        ));
    }
    if RESERVED_TUNNEL_CIDRS
        .iter()
        .any(|r| r.parse::<Ipv4Net>().ok() == Some(net))
    {
        return Err(FieldError::new(
            "tunnel_cidr",
            format!("{net} is reserved: use {rule}"),
        ));
    }
    let ip = spec.local_ip.ok_or_else(|| {
        FieldError::new("local_ip", format!("is required: a host address of {net}"))
    })?;
    let local_ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| FieldError::new("local_ip", format!("`{ip}` is not an IPv4 address")))?;
    if !net.contains(&local_ip) || local_ip == net.network() || local_ip == net.broadcast() {
        return Err(FieldError::new(
            "local_ip",
            format!(
                "{local_ip} must be one of the two host addresses of {net} ({} or {})",
                Ipv4Addr::from(u32::from(net.network()).wrapping_add(1)),
                Ipv4Addr::from(u32::from(net.broadcast()).wrapping_sub(1)),
            ),
        ));
    }
    Ok(TunnelBgp {
        tunnel_cidr: net,
        local_ip,
    })
}

fn health_check(spec: HealthCheckSpec) -> Result<HealthCheck, FieldError> {
    let d = HealthCheck::default();
    let enabled = spec.enabled.unwrap_or(d.enabled);
    let source_ip = match &spec.source_ip {
        Some(s) => Some(validate::ip(s, "source_ip")?),
        None => None,
    };
    let destination_ip = match &spec.destination_ip {
        Some(s) => Some(validate::ip(s, "destination_ip")?),
        None => None,
    };
    if enabled {
        if source_ip.is_none() {
            return Err(FieldError::new(
                "source_ip",
                "is required when the health check is enabled: a local address to probe from",
            ));
        }
        if destination_ip.is_none() {
            return Err(FieldError::new(
                "destination_ip",
                "is required when the health check is enabled: a remote address to probe",
            ));
        }
    }
    let interval_s = spec.interval_s.unwrap_or(d.interval_s);
    if !(1..=3600).contains(&interval_s) {
        return Err(FieldError::new(
            "interval_s",
            format!("must be 1–3600 seconds, got {interval_s}"),
        ));
    }
    let retries = spec.retries.unwrap_or(d.retries);
    if !(1..=100).contains(&retries) {
        return Err(FieldError::new(
            "retries",
            format!("must be 1–100, got {retries}"),
        ));
    }
    Ok(HealthCheck {
        enabled,
        source_ip,
        destination_ip,
        interval_s,
        retries,
        switch_route: spec.switch_route.unwrap_or(d.switch_route),
    })
}

fn subnets(v: Option<&[String]>, field: &str, mode: RoutingMode) -> Result<Vec<IpNet>, FieldError> {
    let v = v.unwrap_or_default();
    if v.is_empty() && mode == RoutingMode::ProtectedFlows {
        return Err(FieldError::new(
            field,
            "is required in protected_flows routing mode: 1–20 CIDR blocks",
        ));
    }
    if v.len() > MAX_SUBNETS {
        return Err(FieldError::new(
            field,
            format!(
                "at most {MAX_SUBNETS} CIDR blocks are allowed, got {}",
                v.len()
            ),
        ));
    }
    validate::cidrs(v, field)
}

fn lifetime(v: Option<u32>, field: &str) -> Result<u32, FieldError> {
    let v = v.unwrap_or(MAX_LIFETIME_S);
    if v > MAX_LIFETIME_S {
        return Err(FieldError::new(
            field,
            format!("must be 0–{MAX_LIFETIME_S} seconds, got {v}"),
        ));
    }
    Ok(v)
}

fn find_cgw<'a>(ctx: &'a ConnectionContext<'_>, id: &str) -> Option<&'a CustomerGateway> {
    ctx.customer_gateways.iter().find(|c| c.id == id)
}

fn join(nets: &[IpNet]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    struct Fixture {
        gw: VpnGateway,
        cgws: Vec<CustomerGateway>,
        in_use: Vec<(Ipv4Net, String)>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                gw: gateway(&["192.0.2.1", "192.0.2.2"]),
                cgws: vec![
                    cgw("cgw-a", "203.0.113.7", None),
                    cgw("cgw-b", "203.0.113.8", Some(65010)),
                    cgw("cgw-any", "0.0.0.0", Some(65011)),
                ],
                in_use: vec![],
            }
        }

        fn ctx(&self) -> ConnectionContext<'_> {
            ConnectionContext {
                gateway: &self.gw,
                customer_gateways: &self.cgws,
                tunnel_cidrs_in_use: &self.in_use,
            }
        }

        fn build(&self, s: VpnConnectionSpec) -> Result<VpnConnection, FieldError> {
            let ids: Vec<String> = (0..self.gw.ipsec_addresses.len())
                .map(|i| format!("tun-{i}"))
                .collect();
            s.build(&self.ctx(), "vco-1".into(), &ids, epoch(), &mut rng())
        }

        fn err(&self, s: VpnConnectionSpec) -> FieldError {
            self.build(s).unwrap_err()
        }
    }

    fn with_tunnel(f: impl Fn(&mut TunnelSpec)) -> VpnConnectionSpec {
        let mut s = spec();
        for t in s.tunnels.as_mut().unwrap() {
            f(t);
        }
        s
    }

    fn with_first_tunnel(f: impl FnOnce(&mut TunnelSpec)) -> VpnConnectionSpec {
        let mut s = spec();
        f(&mut s.tunnels.as_mut().unwrap()[0]);
        s
    }

    fn ike(f: impl Fn(&mut IkeSpec)) -> impl Fn(&mut TunnelSpec) {
        move |t| {
            let mut i = t.ike.clone().unwrap_or_default();
            f(&mut i);
            t.ike = Some(i);
        }
    }

    fn bgp(cidr: &str, ip: &str) -> Option<TunnelBgpSpec> {
        Some(TunnelBgpSpec {
            tunnel_cidr: Some(cidr.into()),
            local_ip: Some(ip.into()),
        })
    }

    #[test]
    fn defaults_match_the_contract() {
        let f = Fixture::new();
        let c = f.build(spec()).unwrap();
        assert_eq!(c.routing_mode, RoutingMode::Destination);
        assert!(c.effective_immediately);
        assert!(!c.enable_bgp);
        assert_eq!(c.local_asn, 45104);
        assert_eq!(c.status, ConnectionStatus::Creating);
        assert_eq!(c.connection_state, ConnectionState::Idle);
        assert_eq!(c.health_check, HealthCheck::default());
        assert_eq!(c.health_check.interval_s, 3);
        let t = &c.tunnels[0];
        assert_eq!(t.role, TunnelRole::Primary);
        assert_eq!(c.tunnels[1].role, TunnelRole::Secondary);
        assert_eq!(t.gateway_address.to_string(), "192.0.2.1");
        assert_eq!(c.tunnels[1].gateway_address.to_string(), "192.0.2.2");
        assert_eq!(t.ike.version, IkeVersion::Ikev2);
        assert_eq!(t.ike.mode, IkeMode::Main);
        assert_eq!(t.ike.encryption, Encryption::Aes);
        assert_eq!(t.ike.integrity, Integrity::Sha1);
        assert_eq!(t.ike.dh_group, DhGroup::Group2);
        assert_eq!(t.ike.lifetime_s, 86400);
        assert_eq!(t.ike.local_id, "192.0.2.1");
        assert_eq!(c.tunnels[1].ike.local_id, "192.0.2.2");
        assert_eq!(t.ike.remote_id, "203.0.113.7");
        assert_eq!(t.ipsec.protocol, IpsecProtocol::Esp);
        assert_eq!(t.ipsec.encryption, Encryption::Aes);
        assert_eq!(t.ipsec.integrity, Integrity::Sha1);
        assert_eq!(t.ipsec.pfs, Pfs::Group2);
        assert_eq!(t.ipsec.lifetime_s, 86400);
        assert!(t.dpd && t.nat_traversal);
        assert_eq!((t.dpd_interval_s, t.dpd_timeout_s), (10, 130));
        assert_eq!(t.state, TunnelState::Active);
        assert_eq!(t.status.phase, TunnelPhase::Idle);
        assert_eq!(t.pre_shared_key.expose().len(), 16);
        assert_ne!(t.pre_shared_key, c.tunnels[1].pre_shared_key);
    }

    #[test]
    fn ikev1_dpd_timeout_default_is_30() {
        let f = Fixture::new();
        let c = f
            .build(with_tunnel(ike(|i| i.version = Some(IkeVersion::Ikev1))))
            .unwrap();
        assert_eq!(c.tunnels[0].dpd_timeout_s, 30);
    }

    #[test]
    fn dpd_timeout_must_exceed_interval() {
        let f = Fixture::new();
        let e = f.err(with_first_tunnel(|t| {
            t.dpd_interval_s = Some(20);
            t.dpd_timeout_s = Some(20);
        }));
        assert_eq!(e.field, "tunnels[0].dpd_timeout_s");
        let e = f.err(with_first_tunnel(|t| t.dpd_interval_s = Some(0)));
        assert_eq!(e.field, "tunnels[0].dpd_interval_s");
    }

    #[test]
    fn psk_rules_name_the_field_and_hide_the_key() {
        let f = Fixture::new();
        let e = f.err(with_first_tunnel(|t| {
            t.pre_shared_key = Some(PskInput("has space".into()))
        }));
        assert_eq!(e.field, "tunnels[0].pre_shared_key");
        assert!(!e.message.contains("has space"));
        let e = f.err(with_first_tunnel(|t| {
            t.pre_shared_key = Some(PskInput(String::new()))
        }));
        assert_eq!(e.field, "tunnels[0].pre_shared_key");
        let c = f
            .build(with_first_tunnel(|t| {
                t.pre_shared_key = Some(PskInput("Abc123!@#".into()))
            }))
            .unwrap();
        assert_eq!(c.tunnels[0].pre_shared_key.expose(), "Abc123!@#");
        assert!(!format!("{c:?}").contains("Abc123!@#"));
        assert!(!serde_json::to_string(&c).unwrap().contains("Abc123!@#"));
    }

    #[test]
    fn psk_input_debug_is_redacted() {
        let s = with_first_tunnel(|t| t.pre_shared_key = Some(PskInput("Sekr3t".into())));
        assert!(!format!("{s:?}").contains("Sekr3t"));
    }

    #[test]
    fn lifetimes_0_to_86400() {
        let f = Fixture::new();
        assert!(
            f.build(with_tunnel(ike(|i| i.lifetime_s = Some(0))))
                .is_ok()
        );
        let e = f.err(with_tunnel(ike(|i| i.lifetime_s = Some(86401))));
        assert_eq!(e.field, "tunnels[0].ike.lifetime_s");
        assert!(e.message.contains("0–86400"));
        let e = f.err(with_first_tunnel(|t| {
            t.ipsec = Some(IpsecSpec {
                lifetime_s: Some(90000),
                ..Default::default()
            })
        }));
        assert_eq!(e.field, "tunnels[0].ipsec.lifetime_s");
    }

    #[test]
    fn aggressive_mode_needs_ikev1() {
        let f = Fixture::new();
        let e = f.err(with_tunnel(ike(|i| i.mode = Some(IkeMode::Aggressive))));
        assert_eq!(e.field, "tunnels[0].ike.mode");
        let c = f
            .build(with_tunnel(ike(|i| {
                i.mode = Some(IkeMode::Aggressive);
                i.version = Some(IkeVersion::Ikev1);
            })))
            .unwrap();
        assert_eq!(c.tunnels[1].ike.mode, IkeMode::Aggressive);
    }

    #[test]
    fn identities_ip_or_fqdn() {
        let f = Fixture::new();
        let c = f
            .build(with_tunnel(ike(|i| {
                i.local_id = Some("gw.example.com".into());
                i.remote_id = Some("peer.example.net".into());
            })))
            .unwrap();
        assert_eq!(c.tunnels[0].ike.remote_id, "peer.example.net");
        let e = f.err(with_tunnel(ike(|i| i.local_id = Some("bad id".into()))));
        assert_eq!(e.field, "tunnels[0].ike.local_id");
        let e = f.err(with_tunnel(ike(|i| i.remote_id = Some("x y".into()))));
        assert_eq!(e.field, "tunnels[0].ike.remote_id");
    }

    #[test]
    fn any_peer_customer_gateway_needs_remote_id() {
        let f = Fixture::new();
        let e = f.err(with_tunnel(|t| {
            t.customer_gateway_id = Some("cgw-any".into())
        }));
        assert_eq!(e.field, "tunnels[0].ike.remote_id");
        let c = f.build(with_tunnel(|t| {
            t.customer_gateway_id = Some("cgw-any".into());
            t.ike = Some(IkeSpec {
                remote_id: Some("branch.example.com".into()),
                ..Default::default()
            });
        }));
        assert!(c.is_ok());
    }

    #[test]
    fn tunnel_count_must_match_gateway_addresses() {
        let f = Fixture::new();
        let mut s = spec();
        s.tunnels.as_mut().unwrap().pop();
        let e = f.err(s);
        assert_eq!(e.field, "tunnels");
        assert!(e.message.contains("exactly 2"), "{e}");
        let mut s = spec();
        s.tunnels = None;
        assert_eq!(f.err(s).field, "tunnels");

        let mut single = Fixture::new();
        single.gw = gateway(&["192.0.2.1"]);
        let e = single.err(spec());
        assert!(e.message.contains("exactly 1"), "{e}");
    }

    #[test]
    fn shorthand_customer_gateway_fills_every_tunnel() {
        let f = Fixture::new();
        let mut s = spec();
        s.tunnels = None;
        s.customer_gateway_id = Some("cgw-b".into());
        let c = f.build(s).unwrap();
        assert_eq!(c.tunnels.len(), 2);
        assert!(c.tunnels.iter().all(|t| t.customer_gateway_id == "cgw-b"));
    }

    #[test]
    fn customer_gateway_must_exist() {
        let f = Fixture::new();
        let e = f.err(with_first_tunnel(|t| {
            t.customer_gateway_id = Some("cgw-zz".into())
        }));
        assert_eq!(e.field, "tunnels[0].customer_gateway_id");
        let e = f.err(with_first_tunnel(|t| t.customer_gateway_id = None));
        assert_eq!(e.field, "tunnels[0].customer_gateway_id");
    }

    #[test]
    fn protected_flows_needs_subnets() {
        let f = Fixture::new();
        let mut s = spec();
        s.routing_mode = Some(RoutingMode::ProtectedFlows);
        assert_eq!(f.err(s.clone()).field, "local_subnets");
        s.local_subnets = Some(vec!["10.0.1.0/24".into()]);
        assert_eq!(f.err(s.clone()).field, "remote_subnets");
        s.remote_subnets = Some(vec!["172.16.0.0/24".into()]);
        assert!(f.build(s).is_ok());
    }

    #[test]
    fn local_subnets_inside_gateway_networks() {
        let f = Fixture::new();
        let mut s = spec();
        s.local_subnets = Some(vec!["10.0.1.0/24".into(), "10.1.0.0/24".into()]);
        let e = f.err(s);
        assert_eq!(e.field, "local_subnets[1]");
        assert!(e.message.contains("10.0.0.0/16"), "{e}");
    }

    #[test]
    fn local_and_remote_must_not_overlap() {
        let f = Fixture::new();
        let mut s = spec();
        s.local_subnets = Some(vec!["10.0.1.0/24".into()]);
        s.remote_subnets = Some(vec!["10.0.0.0/8".into()]);
        let e = f.err(s);
        assert_eq!(e.field, "local_subnets[0]");
        assert!(e.message.contains("overlap"));
    }

    #[test]
    fn at_most_20_subnets_per_side() {
        let f = Fixture::new();
        let mut s = spec();
        s.remote_subnets = Some((0..21).map(|i| format!("172.16.{i}.0/24")).collect());
        let e = f.err(s.clone());
        assert_eq!(e.field, "remote_subnets");
        s.remote_subnets = Some((0..20).map(|i| format!("172.16.{i}.0/24")).collect());
        assert!(f.build(s).is_ok());
        let mut s = spec();
        s.local_subnets = Some((0..21).map(|i| format!("10.0.{i}.0/24")).collect());
        assert_eq!(f.err(s).field, "local_subnets");
    }

    #[test]
    fn several_cidrs_need_ikev2_on_every_tunnel() {
        let f = Fixture::new();
        let mut s = with_first_tunnel(ike(|i| i.version = Some(IkeVersion::Ikev1)));
        s.local_subnets = Some(vec!["10.0.1.0/24".into()]);
        s.remote_subnets = Some(vec!["172.16.0.0/24".into(), "172.17.0.0/24".into()]);
        let e = f.err(s.clone());
        assert_eq!(e.field, "remote_subnets");
        assert!(
            e.message.contains("ikev2") && e.message.contains("tunnels[0]"),
            "{e}"
        );
        s.remote_subnets = Some(vec!["172.16.0.0/24".into()]);
        assert!(f.build(s).is_ok());
    }

    #[test]
    fn ikev1_phase1_cannot_use_gcm_but_esp_can() {
        let f = Fixture::new();
        for enc in [Encryption::AesGcm128, Encryption::AesGcm256] {
            let e = f.err(with_first_tunnel(ike(|i| {
                i.version = Some(IkeVersion::Ikev1);
                i.encryption = Some(enc);
            })));
            assert_eq!(e.field, "tunnels[0].ike.encryption");
            assert!(
                e.message.contains(enc.name())
                    && e.message.contains("ikev1")
                    && e.message.contains("aes256")
                    && e.message.contains("ikev2"),
                "{e}"
            );
        }
        // IKEv2 may use GCM for the IKE SA (RFC 5282).
        let c = f
            .build(with_first_tunnel(ike(|i| {
                i.encryption = Some(Encryption::AesGcm256);
            })))
            .unwrap();
        assert_eq!(c.tunnels[0].ike.encryption, Encryption::AesGcm256);
        // IKEv1 with GCM for ESP only is fine.
        let c = f
            .build(with_first_tunnel(|t| {
                ike(|i| i.version = Some(IkeVersion::Ikev1))(t);
                t.ipsec = Some(IpsecSpec {
                    encryption: Some(Encryption::AesGcm128),
                    ..Default::default()
                });
            }))
            .unwrap();
        assert_eq!(c.tunnels[0].ipsec.encryption, Encryption::AesGcm128);
        assert_eq!(c.tunnels[0].ike.version, IkeVersion::Ikev1);
    }

    #[test]
    fn bgp_needs_asn_on_every_customer_gateway() {
        let f = Fixture::new();
        let mut s = spec();
        s.enable_bgp = Some(true);
        s.tunnels.as_mut().unwrap()[0].bgp = bgp("169.254.10.0/30", "169.254.10.1");
        s.tunnels.as_mut().unwrap()[1].bgp = bgp("169.254.11.0/30", "169.254.11.1");
        let e = f.err(s.clone());
        assert_eq!(e.field, "tunnels[0].customer_gateway_id");
        assert!(e.message.contains("asn"), "{e}");
        for t in s.tunnels.as_mut().unwrap() {
            t.customer_gateway_id = Some("cgw-b".into());
        }
        let c = f.build(s.clone()).unwrap();
        assert!(c.enable_bgp);
        s.tunnels.as_mut().unwrap()[1].bgp = None;
        assert_eq!(f.err(s).field, "tunnels[1].bgp");
    }

    /// A BGP connection on both tunnels with customer gateway cgw-b (AS 65010).
    fn bgp_spec() -> VpnConnectionSpec {
        let mut s = spec();
        s.enable_bgp = Some(true);
        for (i, t) in s.tunnels.as_mut().unwrap().iter_mut().enumerate() {
            t.customer_gateway_id = Some("cgw-b".into());
            t.bgp = bgp(&format!("169.254.1{i}.0/30"), &format!("169.254.1{i}.1"));
        }
        s
    }

    #[test]
    fn bgp_options_default_off_need_bgp_and_change_without_renegotiating() {
        let f = Fixture::new();
        let c = f.build(bgp_spec()).unwrap();
        assert!(!c.bgp_ecmp && !c.bgp_advertise_learned && !c.bgp_override_static);
        let v = serde_json::to_value(&c).unwrap();
        for k in ["bgp_ecmp", "bgp_advertise_learned", "bgp_override_static"] {
            assert_eq!(v[k], false, "{k} shown in GET");
        }
        // Each needs enable_bgp, and says so with its own name.
        for field in ["bgp_ecmp", "bgp_advertise_learned", "bgp_override_static"] {
            let mut s = spec();
            match field {
                "bgp_ecmp" => s.bgp_ecmp = Some(true),
                "bgp_advertise_learned" => s.bgp_advertise_learned = Some(true),
                _ => s.bgp_override_static = Some(true),
            }
            let e = f.err(s);
            assert_eq!(e.field, field);
            assert!(e.message.contains("enable_bgp"), "{e}");
        }
        // On, and turned off again by a PATCH: no tunnel renegotiates.
        let mut s = bgp_spec();
        s.bgp_ecmp = Some(true);
        s.bgp_advertise_learned = Some(true);
        s.bgp_override_static = Some(true);
        let on = f.build(s).unwrap();
        assert!(on.bgp_ecmp && on.bgp_advertise_learned && on.bgp_override_static);
        assert_eq!(on.spec().bgp_ecmp, Some(true));
        let mut s = on.spec();
        s.bgp_ecmp = Some(false);
        s.bgp_override_static = Some(false);
        let off = on.updated(s, &f.ctx(), &mut rng()).unwrap();
        assert!(!off.bgp_ecmp && off.bgp_advertise_learned && !off.bgp_override_static);
        assert!(off.tunnels.iter().all(|t| t.state == TunnelState::Active));
        // Turning BGP off with an option still on names the option.
        let mut s = on.spec();
        s.enable_bgp = Some(false);
        assert_eq!(
            on.updated(s, &f.ctx(), &mut rng()).unwrap_err().field,
            "bgp_ecmp"
        );
        // A document stored before the options existed reads as all off.
        let mut old = serde_json::to_value(&c).unwrap();
        for k in ["bgp_ecmp", "bgp_advertise_learned", "bgp_override_static"] {
            old.as_object_mut().unwrap().remove(k);
        }
        let back = serde_json::from_value::<VpnConnection>(old).unwrap();
        assert!(!back.bgp_ecmp && !back.bgp_advertise_learned && !back.bgp_override_static);
        assert_eq!(serde_json::to_value(&back).unwrap(), v);
    }

    #[test]
    fn bgp_ecmp_needs_two_tunnels() {
        let mut f = Fixture::new();
        f.gw = gateway(&["192.0.2.1"]);
        let mut s = bgp_spec();
        s.tunnels.as_mut().unwrap().truncate(1);
        s.bgp_ecmp = Some(true);
        let e = f.err(s.clone());
        assert_eq!(e.field, "bgp_ecmp");
        assert!(e.message.contains("two tunnels"), "{e}");
        s.bgp_ecmp = Some(false);
        assert!(f.build(s).is_ok());
    }

    #[test]
    fn local_asn_plain_or_asdot() {
        let f = Fixture::new();
        let mut s = spec();
        s.local_asn = Some(AsnInput::Text("1.1".into()));
        assert_eq!(f.build(s.clone()).unwrap().local_asn, 65537);
        s.local_asn = Some(AsnInput::Number(0));
        assert_eq!(f.err(s).field, "local_asn");
    }

    #[test]
    fn tunnel_cidr_rules() {
        let f = Fixture::new();
        let check = |cidr: &str, ip: &str| f.build(with_first_tunnel(|t| t.bgp = bgp(cidr, ip)));
        assert!(check("169.254.10.0/30", "169.254.10.2").is_ok());
        assert!(check("169.254.6.0/30", "169.254.6.1").is_ok());
        for bad in [
            "169.254.0.0/30",
            "169.254.3.0/30",
            "169.254.5.0/30",
            "169.254.169.252/30",
            "169.254.10.0/29",
            "10.0.0.0/30",
            "169.254.10.1/30",
            "nope",
        ] {
            let e = check(bad, "169.254.0.1").unwrap_err();
            assert_eq!(e.field, "tunnels[0].bgp.tunnel_cidr", "{bad}");
        }
        for bad_ip in ["169.254.10.0", "169.254.10.3", "169.254.11.1", "x"] {
            let e = check("169.254.10.0/30", bad_ip).unwrap_err();
            assert_eq!(e.field, "tunnels[0].bgp.local_ip", "{bad_ip}");
        }
    }

    #[test]
    fn tunnel_cidr_unique_per_gateway() {
        let mut f = Fixture::new();
        let mut s = spec();
        s.tunnels.as_mut().unwrap()[0].bgp = bgp("169.254.10.0/30", "169.254.10.1");
        s.tunnels.as_mut().unwrap()[1].bgp = bgp("169.254.10.0/30", "169.254.10.2");
        assert_eq!(f.err(s).field, "tunnels[1].bgp.tunnel_cidr");
        f.in_use = vec![("169.254.20.0/30".parse().unwrap(), "vco-other".into())];
        let e = f.err(with_first_tunnel(|t| {
            t.bgp = bgp("169.254.20.0/30", "169.254.20.1")
        }));
        assert_eq!(e.field, "tunnels[0].bgp.tunnel_cidr");
        assert!(e.message.contains("vco-other"));
    }

    #[test]
    fn health_check_rules() {
        let f = Fixture::new();
        let mut s = spec();
        s.health_check = Some(HealthCheckSpec {
            enabled: Some(true),
            ..Default::default()
        });
        assert_eq!(f.err(s.clone()).field, "health_check.source_ip");
        s.health_check = Some(HealthCheckSpec {
            enabled: Some(true),
            source_ip: Some("10.0.0.1".into()),
            destination_ip: Some("172.16.0.1".into()),
            retries: Some(0),
            ..Default::default()
        });
        assert_eq!(f.err(s).field, "health_check.retries");
    }

    #[test]
    fn enum_and_unknown_field_errors_from_serde() {
        let e = serde_json::from_str::<VpnConnectionSpec>(
            r#"{"tunnels":[{"ike":{"encryption":"blowfish"}}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("aes256") && e.contains("blowfish"), "{e}");
        let e = serde_json::from_str::<VpnConnectionSpec>(r#"{"tunels":[]}"#).unwrap_err();
        assert!(e.to_string().contains("tunels"));
    }

    #[test]
    fn name_description_tags_are_checked() {
        let f = Fixture::new();
        let mut s = spec();
        s.name = None;
        assert_eq!(f.err(s).field, "name");
        let mut s = spec();
        s.description = Some("x".repeat(257));
        assert_eq!(f.err(s).field, "description");
        let mut s = spec();
        s.tags = Some(
            (0..21)
                .map(|i| (format!("k{i}"), "v".to_string()))
                .collect(),
        );
        assert_eq!(f.err(s).field, "tags");
    }

    #[test]
    fn update_marks_changed_tunnels_updating() {
        let f = Fixture::new();
        let c = f.build(spec()).unwrap();
        let mut s = c.spec();
        s.name = Some("renamed".into());
        let u = c.updated(s, &f.ctx(), &mut rng()).unwrap();
        assert_eq!(u.name, "renamed");
        assert_eq!(u.status, ConnectionStatus::Creating);
        assert!(u.tunnels.iter().all(|t| t.state == TunnelState::Active));
        assert_eq!(u.tunnels[0].pre_shared_key, c.tunnels[0].pre_shared_key);
        assert_eq!(u.tunnels[0].id, c.tunnels[0].id);

        let mut s = c.spec();
        s.tunnels.as_mut().unwrap()[1]
            .ike
            .as_mut()
            .unwrap()
            .encryption = Some(Encryption::Aes256);
        let u = c.updated(s, &f.ctx(), &mut rng()).unwrap();
        assert_eq!(u.status, ConnectionStatus::Updating);
        assert_eq!(u.tunnels[0].state, TunnelState::Active);
        assert_eq!(u.tunnels[1].state, TunnelState::Updating);

        let mut s = c.spec();
        s.remote_subnets = Some(vec!["172.16.0.0/24".into()]);
        let u = c.updated(s, &f.ctx(), &mut rng()).unwrap();
        assert!(u.tunnels.iter().all(|t| t.state == TunnelState::Updating));
    }

    #[test]
    fn update_rejects_immutable_changes() {
        let f = Fixture::new();
        let c = f.build(spec()).unwrap();
        let mut s = c.spec();
        s.vpn_gateway_id = Some("vpn-2".into());
        assert_eq!(
            c.updated(s, &f.ctx(), &mut rng()).unwrap_err().field,
            "vpn_gateway_id"
        );
        let mut s = c.spec();
        s.tunnels.as_mut().unwrap()[1].customer_gateway_id = Some("cgw-b".into());
        assert_eq!(
            c.updated(s, &f.ctx(), &mut rng()).unwrap_err().field,
            "tunnels[1].customer_gateway_id"
        );
    }

    #[test]
    fn connection_state_follows_tunnel_phases() {
        let f = Fixture::new();
        let mut c = f.build(spec()).unwrap();
        c.tunnels[1].status.phase = TunnelPhase::Phase1Failed;
        c.refresh_state();
        assert_eq!(c.connection_state, ConnectionState::Down);
        c.tunnels[0].status.phase = TunnelPhase::Phase2Negotiating;
        c.refresh_state();
        assert_eq!(c.connection_state, ConnectionState::Negotiating);
        c.tunnels[0].status.phase = TunnelPhase::Established;
        c.refresh_state();
        assert_eq!(c.connection_state, ConnectionState::Established);
    }
}
