//! The structured peer configuration (like the cloud API's DownloadVpnConnectionConfig),
//! in the peer's view and with the API's own algorithm names.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use model::{
    DhGroup, Encryption, IkeMode, IkeVersion, Integrity, IpsecProtocol, Pfs, RoutingMode,
    TunnelRole,
};
use serde::Serialize;

use crate::RenderError;
use crate::view::{PeerTunnel, PeerView};

#[derive(Serialize)]
struct PeerConfig<'a> {
    connection_id: &'a str,
    connection_name: &'a str,
    vpn_gateway_id: &'a str,
    routing_mode: RoutingMode,
    /// This device's networks (the connection's remote subnets).
    local_subnets: &'a [IpNet],
    /// The VPC networks behind vpngw.
    remote_subnets: &'a [IpNet],
    enable_bgp: bool,
    tunnels: Vec<TunnelConfig<'a>>,
    warnings: &'a [String],
}

#[derive(Serialize)]
struct TunnelConfig<'a> {
    tunnel_id: &'a str,
    role: TunnelRole,
    customer_gateway_id: &'a str,
    /// This device's address; `null` when the customer gateway is 0.0.0.0 (any).
    local_address: Option<IpAddr>,
    remote_address: IpAddr,
    local_id: &'a str,
    remote_id: &'a str,
    pre_shared_key: &'a str,
    ike: Ike,
    ipsec: Ipsec,
    local_ts: &'a [IpNet],
    remote_ts: &'a [IpNet],
    dpd: bool,
    dpd_interval_s: u32,
    dpd_timeout_s: u32,
    nat_traversal: bool,
    /// Active/standby order: 1 for tunnel 1.
    priority: usize,
    bgp: Option<Bgp>,
}

#[derive(Serialize)]
struct Ike {
    version: IkeVersion,
    mode: IkeMode,
    encryption: Encryption,
    integrity: Integrity,
    dh_group: DhGroup,
    lifetime_s: u32,
}

#[derive(Serialize)]
struct Ipsec {
    protocol: IpsecProtocol,
    encryption: Encryption,
    integrity: Integrity,
    pfs: Pfs,
    lifetime_s: u32,
}

#[derive(Serialize)]
struct Bgp {
    tunnel_cidr: Ipv4Net,
    local_ip: Ipv4Addr,
    remote_ip: Ipv4Addr,
    local_asn: u32,
    remote_asn: u32,
}

pub(crate) fn render(v: &PeerView<'_>) -> Result<String, RenderError> {
    let doc = PeerConfig {
        connection_id: &v.conn.id,
        connection_name: &v.conn.name,
        vpn_gateway_id: &v.gateway.id,
        routing_mode: v.routing,
        local_subnets: &v.local_nets,
        remote_subnets: &v.remote_nets,
        enable_bgp: v.bgp,
        tunnels: v.tunnels.iter().map(tunnel).collect(),
        warnings: &v.warnings,
    };
    let mut s = serde_json::to_string_pretty(&doc).map_err(|e| RenderError::Json(e.to_string()))?;
    s.push('\n');
    Ok(s)
}

fn tunnel<'a>(t: &'a PeerTunnel<'a>) -> TunnelConfig<'a> {
    TunnelConfig {
        tunnel_id: t.id,
        role: t.role,
        customer_gateway_id: &t.cgw.id,
        local_address: t.local_addr,
        remote_address: t.remote_addr,
        local_id: t.local_id,
        remote_id: t.remote_id,
        pre_shared_key: t.psk,
        ike: Ike {
            version: t.ike.version,
            mode: t.ike.mode,
            encryption: t.ike.encryption,
            integrity: t.ike.integrity,
            dh_group: t.ike.dh_group,
            lifetime_s: t.ike.lifetime_s,
        },
        ipsec: Ipsec {
            protocol: t.ipsec.protocol,
            encryption: t.ipsec.encryption,
            integrity: t.ipsec.integrity,
            pfs: t.ipsec.pfs,
            lifetime_s: t.ipsec.lifetime_s,
        },
        local_ts: &t.local_ts,
        remote_ts: &t.remote_ts,
        dpd: t.dpd,
        dpd_interval_s: t.dpd_interval_s,
        dpd_timeout_s: t.dpd_timeout_s,
        nat_traversal: t.nat_traversal,
        priority: t.number,
        bgp: t.bgp.map(|b| Bgp {
            tunnel_cidr: b.cidr,
            local_ip: b.local_ip,
            remote_ip: b.remote_ip,
            local_asn: b.local_asn,
            remote_asn: b.remote_asn,
        }),
    }
}
