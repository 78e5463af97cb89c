use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AsnInput, FieldError, Tags, parse_asn, validate};

/// The peer's side: its public (or post-SNAT) address and, for BGP, its AS number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CustomerGateway {
    pub id: String,
    pub name: String,
    pub description: String,
    /// `0.0.0.0` means any peer (responder only, matched by IKE identity).
    #[schema(value_type = String)]
    pub ip_address: IpAddr,
    pub asn: Option<u32>,
    pub tags: Tags,
    /// Read-only: how many tunnels use this customer gateway.
    pub tunnel_count: u32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerGatewaySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// 1–4294967295, as a number or asdot string (`"123.456"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<AsnInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

impl CustomerGatewaySpec {
    pub fn build(self, id: String, now: DateTime<Utc>) -> Result<CustomerGateway, FieldError> {
        let name = validate::name(self.name, "name")?;
        let description = validate::description(self.description, "description")?;
        let tags = validate::tags(self.tags, "tags")?;
        let ip = self.ip_address.ok_or_else(|| {
            FieldError::new(
                "ip_address",
                "is required: the peer's public IP address, or 0.0.0.0 for any peer",
            )
        })?;
        let ip_address = validate::ip(&ip, "ip_address")?;
        if ip_address.is_multicast() || ip_address.is_loopback() {
            return Err(FieldError::new(
                "ip_address",
                format!(
                    "`{ip_address}` cannot be a peer address: use a unicast address or 0.0.0.0"
                ),
            ));
        }
        let asn = match &self.asn {
            Some(a) => Some(parse_asn(a).map_err(|e| e.within("asn"))?),
            None => None,
        };
        Ok(CustomerGateway {
            id,
            name,
            description,
            ip_address,
            asn,
            tags,
            tunnel_count: 0,
            created_at: now,
        })
    }
}

impl CustomerGateway {
    pub fn spec(&self) -> CustomerGatewaySpec {
        CustomerGatewaySpec {
            name: Some(self.name.clone()),
            description: Some(self.description.clone()),
            ip_address: Some(self.ip_address.to_string()),
            asn: self.asn.map(|a| AsnInput::Number(u64::from(a))),
            tags: Some(self.tags.clone()),
            client_token: None,
        }
    }

    /// Applies a merged spec: the address cannot change (tunnels negotiate with it).
    pub fn updated(&self, spec: CustomerGatewaySpec) -> Result<CustomerGateway, FieldError> {
        let new = spec.build(self.id.clone(), self.created_at)?;
        if new.ip_address != self.ip_address {
            return Err(FieldError::new(
                "ip_address",
                "cannot change after creation",
            ));
        }
        Ok(CustomerGateway {
            tunnel_count: self.tunnel_count,
            ..new
        })
    }

    /// True for `0.0.0.0`/`::`: any peer, identified by its IKE ID.
    pub fn is_any_peer(&self) -> bool {
        self.ip_address.is_unspecified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CustomerGatewaySpec {
        CustomerGatewaySpec {
            name: Some("branch".into()),
            ip_address: Some("203.0.113.7".into()),
            ..Default::default()
        }
    }

    fn build(s: CustomerGatewaySpec) -> Result<CustomerGateway, FieldError> {
        s.build("cgw-1".into(), DateTime::<Utc>::UNIX_EPOCH)
    }

    #[test]
    fn builds_and_accepts_any_peer() {
        assert_eq!(build(spec()).unwrap().asn, None);
        let mut s = spec();
        s.ip_address = Some("0.0.0.0".into());
        assert!(build(s).unwrap().is_any_peer());
    }

    #[test]
    fn asn_plain_asdot_and_range() {
        let mut s = spec();
        s.asn = Some(AsnInput::Text("1.10".into()));
        assert_eq!(build(s.clone()).unwrap().asn, Some(65546));
        s.asn = Some(AsnInput::Number(0));
        let e = build(s.clone()).unwrap_err();
        assert_eq!(e.field, "asn");
        assert!(e.message.contains("1–4294967295"));
        s.asn = Some(AsnInput::Number(4_294_967_296));
        assert_eq!(build(s).unwrap_err().field, "asn");
    }

    #[test]
    fn address_required_and_valid() {
        let mut s = spec();
        s.ip_address = None;
        assert_eq!(build(s.clone()).unwrap_err().field, "ip_address");
        s.ip_address = Some("300.1.1.1".into());
        assert_eq!(build(s.clone()).unwrap_err().field, "ip_address");
        s.ip_address = Some("224.0.0.1".into());
        assert!(build(s).is_err());
    }

    #[test]
    fn address_is_immutable() {
        let c = build(spec()).unwrap();
        let mut s = c.spec();
        s.ip_address = Some("203.0.113.8".into());
        assert_eq!(c.updated(s).unwrap_err().field, "ip_address");
        let mut s = c.spec();
        s.asn = Some(AsnInput::Number(65001));
        assert_eq!(c.updated(s).unwrap().asn, Some(65001));
    }
}
