//! Peer configuration rendering: the configuration an operator pastes into the
//! on-premises device of an IPsec-VPN connection ("Generate Peer Configuration").
//!
//! Everything is written from the peer's point of view: *local* is the peer device (the
//! customer gateway), *remote* is vpngw (the tunnel's gateway address). Both tunnels of a
//! dual-tunnel connection are rendered with every negotiated parameter: IKE version and
//! mode, algorithms, lifetimes, identities, pre-shared keys, DPD, NAT traversal, traffic
//! selectors (0.0.0.0/0 in destination routing mode, the CIDR sets in protected-flows
//! mode) and, with BGP, the tunnel addresses and AS numbers.
//!
//! ```no_run
//! # fn f(c: &model::VpnConnection, g: &model::VpnGateway, cgws: &[model::CustomerGateway])
//! #   -> Result<(), Box<dyn std::error::Error>> {
//! let ctx = peerconf::PeerContext::new(c, g, cgws);
//! let text = peerconf::render("swanctl".parse()?, &ctx)?;
//! # Ok(()) }
//! ```
//!
//! The output contains the pre-shared keys: that is its purpose. They never appear in a
//! [`RenderError`] or in `Debug` output.

mod cisco;
mod fortigate;
mod frr;
mod huawei;
mod ipsec_conf;
mod json;
mod juniper;
mod paloalto;
mod swanctl;
mod text;
mod view;

use std::fmt;
use std::str::FromStr;

use model::{CustomerGateway, VpnConnection, VpnGateway};
use serde::Serialize;

/// The line of the `ipsec-conf` output after which the ipsec.secrets part begins.
pub const IPSEC_SECRETS_MARKER: &str = ipsec_conf::SECRETS_MARKER;

/// An output format of the peer configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// strongSwan swanctl.conf (vici, strongSwan ≥ 5.8).
    Swanctl,
    /// strongSwan legacy ipsec.conf + ipsec.secrets (starter/stroke).
    IpsecConf,
    /// FRR bgpd stanza (BGP-enabled connections only).
    Frr,
    /// Structured form of every parameter (like the cloud API's
    /// DownloadVpnConnectionConfig).
    Json,
    CiscoIos,
    JuniperSrx,
    HuaweiVrp,
    Fortigate,
    Paloalto,
}

impl Format {
    pub const ALL: [Format; 9] = [
        Format::Swanctl,
        Format::IpsecConf,
        Format::Frr,
        Format::Json,
        Format::CiscoIos,
        Format::JuniperSrx,
        Format::HuaweiVrp,
        Format::Fortigate,
        Format::Paloalto,
    ];

    /// The name used in `?format=` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Swanctl => "swanctl",
            Format::IpsecConf => "ipsec-conf",
            Format::Frr => "frr",
            Format::Json => "json",
            Format::CiscoIos => "cisco-ios",
            Format::JuniperSrx => "juniper-srx",
            Format::HuaweiVrp => "huawei-vrp",
            Format::Fortigate => "fortigate",
            Format::Paloalto => "paloalto",
        }
    }

    /// The HTTP media type of the rendered text.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            _ => "text/plain; charset=utf-8",
        }
    }

    /// What the format is and which software versions the template targets.
    pub fn info(self) -> FormatInfo {
        let (title, targets) = match self {
            Format::Swanctl => (
                "strongSwan swanctl.conf",
                "strongSwan 5.8 or later (swanctl/vici); tested with 5.9.8",
            ),
            Format::IpsecConf => (
                "strongSwan ipsec.conf and ipsec.secrets (legacy stroke interface)",
                "strongSwan 5.x with starter (strongswan-starter); tested with 5.9.8",
            ),
            Format::Frr => (
                "FRRouting BGP (bgpd) for BGP-enabled connections",
                "FRR 7.5 or later; tested with 8.4.4",
            ),
            Format::Json => (
                "Structured peer configuration (JSON)",
                "any tool; the API's algorithm names",
            ),
            Format::CiscoIos => (
                "Cisco IOS / IOS XE (route-based VTI; crypto map for protected flows)",
                "IOS XE 16.x/17.x and IOS 15.x with IKEv2 (crypto ikev2) or IKEv1 (crypto isakmp)",
            ),
            Format::JuniperSrx => (
                "Juniper SRX (Junos set commands, route-based st0)",
                "Junos OS 15.1X49 or later on SRX Series / vSRX",
            ),
            Format::HuaweiVrp => (
                "Huawei VRP (AR routers; ipsec profile on a Tunnel interface)",
                "Huawei AR V200R010 or later (VRP 5); H3C Comware uses different algorithm keywords",
            ),
            Format::Fortigate => (
                "Fortinet FortiGate (route-based phase1-interface / phase2-interface)",
                "FortiOS 6.4, 7.0, 7.2, 7.4",
            ),
            Format::Paloalto => (
                "Palo Alto Networks PAN-OS (set commands)",
                "PAN-OS 10.1 or later",
            ),
        };
        FormatInfo {
            name: self.name(),
            title,
            targets,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Format, UnknownFormat> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownFormat(s.to_owned()))
    }
}

/// A format name that is not one of [`Format::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown peer configuration format `{0}`: use one of {list}", list = format_names())]
pub struct UnknownFormat(pub String);

fn format_names() -> String {
    Format::ALL.map(Format::name).join(", ")
}

/// One entry of `GET /v1/peer-config-formats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FormatInfo {
    /// The `?format=` value.
    pub name: &'static str,
    pub title: &'static str,
    /// Software versions the template is written for.
    pub targets: &'static str,
}

/// Every format with its title and targets, in a stable order.
pub fn formats() -> Vec<FormatInfo> {
    Format::ALL.into_iter().map(Format::info).collect()
}

/// What rendering needs: the connection (with its tunnels' pre-shared keys, as the store
/// loads it), its gateway and the customer gateways its tunnels name.
#[derive(Debug, Clone, Copy)]
pub struct PeerContext<'a> {
    pub connection: &'a VpnConnection,
    pub gateway: &'a VpnGateway,
    /// At least the customer gateways the tunnels name; others are ignored.
    pub customer_gateways: &'a [CustomerGateway],
}

impl<'a> PeerContext<'a> {
    pub fn new(
        connection: &'a VpnConnection,
        gateway: &'a VpnGateway,
        customer_gateways: &'a [CustomerGateway],
    ) -> PeerContext<'a> {
        PeerContext {
            connection,
            gateway,
            customer_gateways,
        }
    }
}

/// Why a configuration cannot be rendered. Never carries a pre-shared key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("connection {connection} belongs to gateway {expected}, not {given}")]
    GatewayMismatch {
        connection: String,
        expected: String,
        given: String,
    },
    #[error("connection {connection} has no tunnels")]
    NoTunnels { connection: String },
    #[error("customer gateway {customer_gateway} of tunnel {tunnel} was not given")]
    CustomerGatewayMissing {
        tunnel: String,
        customer_gateway: String,
    },
    #[error("tunnel {tunnel} has no pre-shared key loaded (load the connection with its keys)")]
    MissingPsk { tunnel: String },
    #[error(
        "BGP is not enabled on connection {connection}: the frr format renders BGP only; use swanctl, ipsec-conf or a vendor format"
    )]
    BgpNotEnabled { connection: String },
    #[error("BGP is enabled but customer gateway {customer_gateway} has no asn")]
    MissingAsn { customer_gateway: String },
    #[error("BGP is enabled but tunnel {tunnel} has no bgp tunnel_cidr/local_ip")]
    MissingTunnelBgp { tunnel: String },
    #[error("JSON encoding failed: {0}")]
    Json(String),
}

/// Renders the peer configuration of `ctx.connection` in `format`.
pub fn render(format: Format, ctx: &PeerContext<'_>) -> Result<String, RenderError> {
    let v = view::PeerView::new(ctx)?;
    match format {
        Format::Swanctl => Ok(swanctl::render(&v)),
        Format::IpsecConf => Ok(ipsec_conf::render(&v)),
        Format::Frr => frr::render(&v),
        Format::Json => json::render(&v),
        Format::CiscoIos => Ok(cisco::render(&v)),
        Format::JuniperSrx => Ok(juniper::render(&v)),
        Format::HuaweiVrp => Ok(huawei::render(&v)),
        Format::Fortigate => Ok(fortigate::render(&v)),
        Format::Paloalto => Ok(paloalto::render(&v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
            assert_eq!(f.to_string(), f.name());
        }
        let e = "cisco".parse::<Format>().unwrap_err().to_string();
        assert!(e.contains("`cisco`") && e.contains("cisco-ios") && e.contains("swanctl"));
    }

    #[test]
    fn formats_lists_every_format_once() {
        let list = formats();
        assert_eq!(list.len(), Format::ALL.len());
        let names: Vec<&str> = list.iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            [
                "swanctl",
                "ipsec-conf",
                "frr",
                "json",
                "cisco-ios",
                "juniper-srx",
                "huawei-vrp",
                "fortigate",
                "paloalto"
            ]
        );
        assert!(
            list.iter()
                .all(|f| !f.title.is_empty() && !f.targets.is_empty())
        );
        let json = serde_json::to_value(&list[0]).unwrap();
        assert_eq!(json["name"], "swanctl");
    }
}
