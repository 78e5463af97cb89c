//! The connection as the peer sees it: local and remote swapped, every reference
//! resolved and checked once, so the renderers only format.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use model::{
    CustomerGateway, Encryption, IkeConfig, IkeMode, IkeVersion, IpsecConfig, RoutingMode,
    TunnelRole, VpnConnection, VpnGateway,
};

use crate::{PeerContext, RenderError};

pub(crate) struct PeerView<'a> {
    pub conn: &'a VpnConnection,
    pub gateway: &'a VpnGateway,
    /// Short name for the connection's objects on the peer device (`[a-z0-9-]`, ≤ 10).
    pub slug: String,
    pub routing: RoutingMode,
    /// The peer's own networks as far as vpngw knows them (protected flows: the
    /// connection's remote subnets; otherwise the remote subnets if any were given).
    pub local_nets: Vec<IpNet>,
    /// The VPC networks behind vpngw: the connection's local subnets, or the gateway's
    /// local networks when none were given.
    pub remote_nets: Vec<IpNet>,
    pub bgp: bool,
    pub tunnels: Vec<PeerTunnel<'a>>,
    /// Problems every format states at its top (comments) or in `warnings` (JSON).
    pub warnings: Vec<String>,
}

pub(crate) struct PeerTunnel<'a> {
    /// 1 for the primary tunnel, 2 for the secondary.
    pub number: usize,
    pub id: &'a str,
    pub role: TunnelRole,
    /// `<slug>-t<number>`.
    pub name: String,
    pub cgw: &'a CustomerGateway,
    /// The peer's own address; `None` when the customer gateway is 0.0.0.0 (any).
    pub local_addr: Option<IpAddr>,
    /// vpngw's address of this tunnel.
    pub remote_addr: IpAddr,
    /// The peer's IKE identity (vpngw's remote_id).
    pub local_id: &'a str,
    /// vpngw's IKE identity (vpngw's local_id).
    pub remote_id: &'a str,
    pub psk: &'a str,
    pub ike: &'a IkeConfig,
    pub ipsec: &'a IpsecConfig,
    pub dpd: bool,
    pub dpd_interval_s: u32,
    pub dpd_timeout_s: u32,
    pub nat_traversal: bool,
    /// Traffic selectors from the peer's side.
    pub local_ts: Vec<IpNet>,
    pub remote_ts: Vec<IpNet>,
    pub bgp: Option<PeerBgp>,
}

#[derive(Clone, Copy)]
pub(crate) struct PeerBgp {
    pub cidr: Ipv4Net,
    /// The peer's address in the /30: the usable host vpngw does not use.
    pub local_ip: Ipv4Addr,
    /// vpngw's address (the tunnel's bgp.local_ip).
    pub remote_ip: Ipv4Addr,
    /// The customer gateway's AS number.
    pub local_asn: u32,
    pub remote_asn: u32,
}

impl<'a> PeerView<'a> {
    pub fn new(ctx: &PeerContext<'a>) -> Result<PeerView<'a>, RenderError> {
        let conn = ctx.connection;
        if conn.vpn_gateway_id != ctx.gateway.id {
            return Err(RenderError::GatewayMismatch {
                connection: conn.id.clone(),
                expected: conn.vpn_gateway_id.clone(),
                given: ctx.gateway.id.clone(),
            });
        }
        if conn.tunnels.is_empty() {
            return Err(RenderError::NoTunnels {
                connection: conn.id.clone(),
            });
        }
        let remote_nets = if conn.local_subnets.is_empty() {
            ctx.gateway.local_networks.clone()
        } else {
            conn.local_subnets.clone()
        };
        let (local_ts, remote_ts) = match conn.routing_mode {
            RoutingMode::Destination => (vec![any4()], vec![any4()]),
            RoutingMode::ProtectedFlows => {
                (conn.remote_subnets.clone(), conn.local_subnets.clone())
            }
        };
        let mut warnings = Vec::new();
        let mut tunnels = Vec::with_capacity(conn.tunnels.len());
        for (i, t) in conn.tunnels.iter().enumerate() {
            let cgw = ctx
                .customer_gateways
                .iter()
                .find(|c| c.id == t.customer_gateway_id)
                .ok_or_else(|| RenderError::CustomerGatewayMissing {
                    tunnel: t.id.clone(),
                    customer_gateway: t.customer_gateway_id.clone(),
                })?;
            if t.pre_shared_key.is_empty() {
                return Err(RenderError::MissingPsk {
                    tunnel: t.id.clone(),
                });
            }
            let bgp = if conn.enable_bgp {
                let b = t.bgp.ok_or_else(|| RenderError::MissingTunnelBgp {
                    tunnel: t.id.clone(),
                })?;
                let local_asn = cgw.asn.ok_or_else(|| RenderError::MissingAsn {
                    customer_gateway: cgw.id.clone(),
                })?;
                Some(PeerBgp {
                    cidr: b.tunnel_cidr,
                    local_ip: other_host(b.tunnel_cidr, b.local_ip),
                    remote_ip: b.local_ip,
                    local_asn,
                    remote_asn: conn.local_asn,
                })
            } else {
                None
            };
            let number = i + 1;
            if t.ike.version == IkeVersion::Ikev1 && t.ike.encryption.is_aead() {
                // RFC 5282 defines AES-GCM for IKEv2 SAs only; IKEv1 phase 1 has no AEAD.
                warnings.push(format!(
                    "tunnel {number}: ike.encryption {} is not defined for IKEv1 (RFC 5282 covers IKEv2 only); phase 1 will not negotiate: use ikev2 or a CBC cipher",
                    api_name(t.ike.encryption)
                ));
            }
            if t.ike.version == IkeVersion::Ikev1 && t.ike.mode == IkeMode::Aggressive {
                warnings.push(format!(
                    "tunnel {number}: IKEv1 aggressive mode sends the identities unprotected and exposes a PSK hash to offline guessing; prefer IKEv2"
                ));
            }
            tunnels.push(PeerTunnel {
                number,
                id: &t.id,
                role: t.role,
                name: String::new(),
                cgw,
                local_addr: (!cgw.is_any_peer()).then_some(cgw.ip_address),
                remote_addr: t.gateway_address,
                local_id: &t.ike.remote_id,
                remote_id: &t.ike.local_id,
                psk: t.pre_shared_key.expose(),
                ike: &t.ike,
                ipsec: &t.ipsec,
                dpd: t.dpd,
                dpd_interval_s: t.dpd_interval_s,
                dpd_timeout_s: t.dpd_timeout_s,
                nat_traversal: t.nat_traversal,
                local_ts: local_ts.clone(),
                remote_ts: remote_ts.clone(),
                bgp,
            });
        }
        let slug = slug(&conn.name);
        for t in &mut tunnels {
            t.name = format!("{slug}-t{}", t.number);
        }
        Ok(PeerView {
            conn,
            gateway: ctx.gateway,
            slug,
            routing: conn.routing_mode,
            local_nets: conn.remote_subnets.clone(),
            remote_nets,
            bgp: conn.enable_bgp,
            tunnels,
            warnings,
        })
    }

    /// The selectors a strongSwan peer installs as its policies, `(local_ts, remote_ts)`.
    ///
    /// Protected flows: the connection's CIDR sets. Destination mode: vpngw proposes and
    /// accepts 0.0.0.0/0 both ways, but a Linux strongSwan that installs 0.0.0.0/0 as a
    /// plain policy (kernel-netlink without XFRM interfaces, or kernel-libipsec, which
    /// ignores `if_id`) routes *everything* into the tunnel, including IKE and ESP-in-UDP
    /// to the other tunnel's vpngw address (kernel-libipsec adds its bypass ("throw")
    /// route only for the first tunnel's peer, since the second default route already
    /// exists). So the VPC side is narrowed to the VPC networks plus vpngw's BGP address
    /// of the tunnel; vpngw accepts that narrowing (RFC 7296 §2.9) whichever side
    /// initiates. IKEv1 Quick Mode carries one selector pair (RFC 2409 §5.5, strongSwan
    /// uses the first only): with more than one network it stays 0.0.0.0/0.
    pub fn policy_ts(&self, t: &PeerTunnel<'_>) -> (Vec<IpNet>, Vec<IpNet>) {
        if self.routing == RoutingMode::ProtectedFlows {
            return (t.local_ts.clone(), t.remote_ts.clone());
        }
        let mut remote: Vec<IpNet> = self.remote_nets.clone();
        if let Some(b) = &t.bgp {
            let host = IpNet::V4(Ipv4Net::from(b.remote_ip));
            if !remote.iter().any(|n| n.contains(&host)) {
                remote.push(host);
            }
        }
        let single_pair = t.ike.version == IkeVersion::Ikev1;
        if remote.is_empty() || (single_pair && remote.len() > 1) {
            return (vec![any4()], vec![any4()]);
        }
        (vec![any4()], remote)
    }

    /// Whether [`PeerView::policy_ts`] narrowed the VPC side of tunnel `t`.
    pub fn narrowed(&self, t: &PeerTunnel<'_>) -> bool {
        self.routing == RoutingMode::Destination && self.policy_ts(t).1 != vec![any4()]
    }

    /// Two tunnels carrying the same traffic: tunnel 1 active, tunnel 2 standby.
    pub fn active_standby(&self) -> bool {
        self.tunnels.len() > 1
    }

    /// The common header of every text format, one line per element (without the
    /// comment marker).
    pub fn header(&self, title: &str) -> Vec<String> {
        let c = self.conn;
        let mut h = vec![
            format!("vpngw peer configuration: {title}"),
            format!(
                "connection {} ({}) on VPN gateway {} ({})",
                c.id, c.name, self.gateway.id, self.gateway.name
            ),
            "Written for the peer device: \"local\" is this device, \"remote\" is vpngw."
                .to_owned(),
            "It contains the pre-shared keys: store and transfer it as a secret.".to_owned(),
        ];
        for t in &self.tunnels {
            h.push(format!(
                "tunnel {} ({}, {}): this device {} <-> vpngw {}",
                t.number,
                role_name(t.role),
                t.id,
                t.local_addr
                    .map_or_else(|| "(any address)".to_owned(), |a| a.to_string()),
                t.remote_addr
            ));
        }
        match self.routing {
            RoutingMode::Destination => h.push(format!(
                "Routing: destination mode (selectors 0.0.0.0/0); route the VPC networks {} into the tunnels{}.",
                join(&self.remote_nets),
                if self.bgp { " (learned by BGP)" } else { "" }
            )),
            RoutingMode::ProtectedFlows => h.push(format!(
                "Routing: protected flows {} (this side) <-> {} (VPC).",
                join(&self.local_nets),
                join(&self.conn.local_subnets)
            )),
        }
        for w in &self.warnings {
            h.push(format!("WARNING: {w}"));
        }
        h
    }
}

pub(crate) fn role_name(r: TunnelRole) -> &'static str {
    match r {
        TunnelRole::Primary => "primary",
        TunnelRole::Secondary => "secondary",
    }
}

/// The API's name of an encryption algorithm.
pub(crate) fn api_name(e: Encryption) -> &'static str {
    match e {
        Encryption::Aes => "aes",
        Encryption::Aes192 => "aes192",
        Encryption::Aes256 => "aes256",
        Encryption::Des => "des",
        Encryption::TripleDes => "3des",
        Encryption::AesGcm128 => "aes-gcm-128",
        Encryption::AesGcm256 => "aes-gcm-256",
    }
}

pub(crate) fn join(nets: &[IpNet]) -> String {
    if nets.is_empty() {
        return "(none given)".to_owned();
    }
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn any4() -> IpNet {
    IpNet::V4(Ipv4Net::default())
}

pub(crate) fn is_ip(id: &str) -> bool {
    id.parse::<IpAddr>().is_ok()
}

/// The usable host of a /30 that is not `used` (RFC 3021 aside, a /30 has two).
pub(crate) fn other_host(cidr: Ipv4Net, used: Ipv4Addr) -> Ipv4Addr {
    let first = u32::from(cidr.network()).wrapping_add(1);
    let second = first.wrapping_add(1);
    if u32::from(used) == first {
        Ipv4Addr::from(second)
    } else {
        Ipv4Addr::from(first)
    }
}

/// `[a-z0-9-]`, at most 10 characters (FortiGate interface names are ≤ 15 with the
/// `-t1` suffix), never empty.
fn slug(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if s.len() >= 10 {
            break;
        }
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.is_empty() && !s.ends_with('-') {
            s.push('-');
        }
    }
    while s.ends_with('-') {
        s.pop();
    }
    if s.is_empty() || !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        s.insert_str(0, "vpn");
        s.truncate(10);
        while s.ends_with('-') {
            s.pop();
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_host_of_a_slash_30() {
        let n: Ipv4Net = "169.254.10.0/30".parse().unwrap();
        assert_eq!(
            other_host(n, "169.254.10.1".parse().unwrap()),
            "169.254.10.2".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            other_host(n, "169.254.10.2".parse().unwrap()),
            "169.254.10.1".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn slugs_are_short_and_safe() {
        assert_eq!(slug("Office VPN"), "office-vpn");
        assert_eq!(slug("a very long connection name"), "a-very-lon");
        assert_eq!(slug("  --  "), "vpn");
        assert_eq!(slug("2nd link"), "vpn2nd-lin");
        assert_eq!(slug("Zweigstelle München"), "zweigstell");
        assert!(
            slug("x!@#$%^&*()")
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        );
    }
}
