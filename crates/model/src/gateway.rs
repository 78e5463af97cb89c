use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{FieldError, MAX_SUBNETS, Tags, validate};

/// A VPN gateway: one or two IPsec addresses serving the VPC networks `local_networks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VpnGateway {
    pub id: String,
    pub name: String,
    pub description: String,
    pub gateway_type: GatewayType,
    /// IPsec address 1 and 2: two give dual-tunnel connections, one single-tunnel ones.
    #[schema(value_type = Vec<String>)]
    pub ipsec_addresses: Vec<IpAddr>,
    #[schema(value_type = Vec<String>)]
    pub local_networks: Vec<IpNet>,
    pub tags: Tags,
    pub status: GatewayStatus,
    pub status_reason: Option<String>,
    /// Read-only: the number of connections on this gateway.
    pub connection_count: u32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GatewayType {
    #[default]
    Public,
    /// Encrypted private connection over a leased line.
    Private,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GatewayStatus {
    #[default]
    Creating,
    Running,
    Deleting,
    Error,
}

/// What a client sends to create (POST) or, merged onto the current one, update (PATCH) a
/// gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VpnGatewaySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_type: Option<GatewayType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipsec_addresses: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_networks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    /// Idempotency token (POST only): a retry with the same token within 24 h returns
    /// the gateway the first request created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

impl VpnGatewaySpec {
    /// Checks the spec and makes a new gateway with status `creating`.
    pub fn build(self, id: String, now: DateTime<Utc>) -> Result<VpnGateway, FieldError> {
        let name = validate::name(self.name, "name")?;
        let description = validate::description(self.description, "description")?;
        let tags = validate::tags(self.tags, "tags")?;
        let addrs = self.ipsec_addresses.ok_or_else(|| {
            FieldError::new(
                "ipsec_addresses",
                "is required: one or two IP addresses (IPsec address 1 and 2)",
            )
        })?;
        if addrs.is_empty() || addrs.len() > 2 {
            return Err(FieldError::new(
                "ipsec_addresses",
                format!("must hold one or two IP addresses, got {}", addrs.len()),
            ));
        }
        let mut ipsec_addresses = Vec::with_capacity(addrs.len());
        for (i, a) in addrs.iter().enumerate() {
            let field = format!("ipsec_addresses[{i}]");
            let ip = validate::ip(a, &field)?;
            if ip.is_multicast() || ip.is_unspecified() {
                return Err(FieldError::new(
                    field,
                    format!(
                        "`{ip}` cannot be an IPsec address: use a unicast address of this host"
                    ),
                ));
            }
            if ipsec_addresses.contains(&ip) {
                return Err(FieldError::new(
                    field,
                    "IPsec address 2 must differ from IPsec address 1",
                ));
            }
            ipsec_addresses.push(ip);
        }
        let nets = self.local_networks.ok_or_else(|| {
            FieldError::new(
                "local_networks",
                "is required: the CIDR blocks this gateway serves, e.g. [\"10.0.0.0/16\"]",
            )
        })?;
        if nets.is_empty() || nets.len() > MAX_SUBNETS {
            return Err(FieldError::new(
                "local_networks",
                format!("must hold 1–{MAX_SUBNETS} CIDR blocks, got {}", nets.len()),
            ));
        }
        let local_networks = validate::cidrs(&nets, "local_networks")?;
        Ok(VpnGateway {
            id,
            name,
            description,
            gateway_type: self.gateway_type.unwrap_or_default(),
            ipsec_addresses,
            local_networks,
            tags,
            status: GatewayStatus::Creating,
            status_reason: None,
            connection_count: 0,
            created_at: now,
        })
    }
}

impl VpnGateway {
    /// The spec that builds this gateway again: the base a PATCH is merged onto.
    pub fn spec(&self) -> VpnGatewaySpec {
        VpnGatewaySpec {
            name: Some(self.name.clone()),
            description: Some(self.description.clone()),
            gateway_type: Some(self.gateway_type),
            ipsec_addresses: Some(self.ipsec_addresses.iter().map(|a| a.to_string()).collect()),
            local_networks: Some(self.local_networks.iter().map(|n| n.to_string()).collect()),
            tags: Some(self.tags.clone()),
            client_token: None,
        }
    }

    /// Applies an already merged spec: only name, description, tags and local networks
    /// may change.
    pub fn updated(&self, spec: VpnGatewaySpec) -> Result<VpnGateway, FieldError> {
        let new = spec.build(self.id.clone(), self.created_at)?;
        if new.gateway_type != self.gateway_type {
            return Err(FieldError::new(
                "gateway_type",
                "cannot change after creation",
            ));
        }
        if new.ipsec_addresses != self.ipsec_addresses {
            return Err(FieldError::new(
                "ipsec_addresses",
                "cannot change after creation: connections are bound to them",
            ));
        }
        Ok(VpnGateway {
            status: self.status,
            status_reason: self.status_reason.clone(),
            connection_count: self.connection_count,
            ..new
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VpnGatewaySpec {
        VpnGatewaySpec {
            name: Some("gw1".into()),
            ipsec_addresses: Some(vec!["192.0.2.1".into(), "192.0.2.2".into()]),
            local_networks: Some(vec!["10.0.0.0/16".into()]),
            ..Default::default()
        }
    }

    fn build(s: VpnGatewaySpec) -> Result<VpnGateway, FieldError> {
        s.build("vpn-1".into(), DateTime::<Utc>::UNIX_EPOCH)
    }

    #[test]
    fn builds_with_defaults() {
        let g = build(spec()).unwrap();
        assert_eq!(g.gateway_type, GatewayType::Public);
        assert_eq!(g.status, GatewayStatus::Creating);
        assert_eq!(g.ipsec_addresses.len(), 2);
    }

    #[test]
    fn ipsec_addresses_one_or_two_distinct() {
        let mut s = spec();
        s.ipsec_addresses = Some(vec!["192.0.2.1".into()]);
        assert!(build(s.clone()).is_ok());
        s.ipsec_addresses = Some(vec![]);
        assert_eq!(build(s.clone()).unwrap_err().field, "ipsec_addresses");
        s.ipsec_addresses = Some(vec!["192.0.2.1".into(), "192.0.2.1".into()]);
        assert_eq!(build(s.clone()).unwrap_err().field, "ipsec_addresses[1]");
        s.ipsec_addresses = Some(vec!["192.0.2.1".into(), "x".into()]);
        assert_eq!(build(s.clone()).unwrap_err().field, "ipsec_addresses[1]");
        s.ipsec_addresses = Some(vec!["0.0.0.0".into()]);
        assert!(build(s).is_err());
    }

    #[test]
    fn name_description_tags_rules_apply() {
        let mut s = spec();
        s.name = Some("n".repeat(129));
        assert_eq!(build(s).unwrap_err().field, "name");
        let mut s = spec();
        s.description = Some("d".repeat(257));
        assert_eq!(build(s).unwrap_err().field, "description");
        let mut s = spec();
        s.local_networks = Some(vec!["10.0.0.5/16".into()]);
        assert_eq!(build(s).unwrap_err().field, "local_networks[0]");
    }

    #[test]
    fn update_keeps_addresses_fixed() {
        let g = build(spec()).unwrap();
        let mut s = g.spec();
        s.name = Some("renamed".into());
        assert_eq!(g.updated(s).unwrap().name, "renamed");
        let mut s = g.spec();
        s.ipsec_addresses = Some(vec!["192.0.2.9".into()]);
        assert_eq!(g.updated(s).unwrap_err().field, "ipsec_addresses");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = serde_json::from_str::<VpnGatewaySpec>(r#"{"nmae":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("nmae"));
    }
}
