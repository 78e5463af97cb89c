//! The command line: `vpngw serve` and the client subcommands.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value, json};

use crate::client::Client;
use crate::output;

#[derive(Parser, Debug)]
#[command(
    name = "vpngw",
    version,
    about = "Self-hosted IPsec VPN gateway: server and CLI"
)]
pub struct Cli {
    /// API address for the client commands.
    #[arg(
        long,
        global = true,
        env = "VPNGW_SERVER",
        default_value = "http://127.0.0.1:9280"
    )]
    server: String,
    /// Data directory: where `serve` keeps its database and admin.token, and where the
    /// client commands read the token unless VPNGW_TOKEN is set.
    #[arg(
        long,
        global = true,
        env = "VPNGW_DATA_DIR",
        default_value = "/var/lib/vpngw"
    )]
    data_dir: PathBuf,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Print only IDs (of the resource shown or created, or one per listed item).
    #[arg(long, short, global = true, conflicts_with = "json")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

/// `vpngw serve --esp-encap`.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum EspEncapArg {
    Auto,
    Udp,
    Raw,
}

impl From<EspEncapArg> for node::EspEncap {
    fn from(a: EspEncapArg) -> Self {
        match a {
            EspEncapArg::Auto => Self::Auto,
            EspEncapArg::Udp => Self::Udp,
            EspEncapArg::Raw => Self::Raw,
        }
    }
}

// Parsed once per run: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the vpngw server: the API and a gateway node (all-in-one).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9280")]
        listen: SocketAddr,
        /// Run the controller (API) only, without a gateway node in this process.
        #[arg(long)]
        no_node: bool,
        /// ESP encapsulation when no NAT is detected (IKEv2): `auto` uses ESP in UDP
        /// 4500 between two vpngw gateways (recognised by vpngw's vendor ID; UDP lets
        /// the data plane send with GSO and receive with GRO) and raw ESP with any other
        /// peer; `udp` forces ESP in UDP with every peer (RFC 7296 §2.23, like
        /// strongSwan's encap=yes); `raw` never asks for it (a peer still may). Behind a
        /// NAT ESP is always in UDP. Tunnels with nat_traversal off always use raw ESP.
        #[arg(long, value_enum, env = "VPNGW_ESP_ENCAP", default_value = "auto")]
        esp_encap: EspEncapArg,
        /// Half-open IKE SAs (IKE_SA_INIT answered, IKE_AUTH not yet) from which on an
        /// IKEv2 IKE_SA_INIT is answered with a COOKIE that the peer must send back
        /// before the gateway keeps any state or computes Diffie-Hellman for it
        /// (RFC 7296 §2.6; strongSwan's charon.cookie_threshold). 0 demands one always.
        #[arg(long, env = "VPNGW_IKE_COOKIE_THRESHOLD", default_value_t = node::NodeConfig::default().ike_cookie_threshold)]
        ike_cookie_threshold: usize,
        /// Half-open IKE SAs (IKEv2 before IKE_AUTH, IKEv1 before Main or Aggressive
        /// Mode finished) from which on a peer's request to start one more is dropped
        /// until some finish or time out (strongSwan's charon.init_limit_half_open).
        /// It bounds what a flood of IKEv1 first messages, which have no COOKIE
        /// exchange, can make the gateway keep.
        #[arg(long, env = "VPNGW_IKE_HALF_OPEN_LIMIT", default_value_t = node::NodeConfig::default().ike_half_open_limit)]
        ike_half_open_limit: usize,
        /// Of those, IKEv1 ones from one address: a flood of first messages forged
        /// with one peer's address then holds back that address only (strongSwan's
        /// charon.block_threshold, for IKEv1; IKEv2 has COOKIEs).
        #[arg(long, env = "VPNGW_IKE_HALF_OPEN_PER_ADDRESS", default_value_t = node::NodeConfig::default().ike_half_open_per_address)]
        ike_half_open_per_address: usize,
        /// Seconds a Child SA behind a NAT may send nothing before the gateway sends a
        /// NAT-keepalive to keep the NAT's mapping open (RFC 3948 §2.3; strongSwan's
        /// charon.keep_alive). 0 sends none; at most 86400.
        #[arg(long, env = "VPNGW_NAT_KEEPALIVE", default_value_t = node::NodeConfig::default().nat_keepalive.as_secs(),
              value_parser = clap::value_parser!(u64).range(0..=86_400))]
        nat_keepalive: u64,
    },
    /// VPN gateways.
    #[command(subcommand)]
    Gateway(GatewayCmd),
    /// Customer gateways (the peers).
    #[command(subcommand, name = "customer-gateway")]
    CustomerGateway(CustomerGatewayCmd),
    /// IPsec-VPN connections.
    #[command(subcommand)]
    Connection(ConnectionCmd),
    /// Tunnels of a connection.
    #[command(subcommand)]
    Tunnel(TunnelCmd),
    /// Destination-based routes of a gateway.
    #[command(subcommand)]
    Route(RouteCmd),
    /// Policy-based routes of a gateway.
    #[command(subcommand, name = "policy-route")]
    PolicyRoute(PolicyRouteCmd),
    /// Every effective route of a gateway.
    #[command(name = "route-table")]
    RouteTable {
        /// Gateway ID (vpn-…).
        gateway: String,
    },
    /// The formats of `connection peer-config --format`.
    #[command(name = "peer-config-formats")]
    PeerConfigFormats,
}

#[derive(Args, Debug, Default)]
struct ListArgs {
    /// Only names containing this (case-insensitive).
    #[arg(long)]
    name: Option<String>,
    /// Only resources with this tag (KEY=VALUE; repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// Items per page (1–1000).
    #[arg(long)]
    page_size: Option<u32>,
    /// Continue from this page token.
    #[arg(long)]
    page_token: Option<String>,
}

#[derive(Args, Debug, Default)]
struct Meta {
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// A tag KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum GatewayCmd {
    /// Create a VPN gateway.
    Create {
        #[command(flatten)]
        meta: Meta,
        /// IPsec address (give it twice for a dual-tunnel gateway).
        #[arg(long = "ipsec-address", required = true)]
        ipsec_addresses: Vec<String>,
        /// A CIDR block this gateway serves (repeatable).
        #[arg(long = "local-network", required = true)]
        local_networks: Vec<String>,
        /// public or private.
        #[arg(long = "type")]
        gateway_type: Option<String>,
        #[arg(long)]
        client_token: Option<String>,
    },
    List(ListArgs),
    Show {
        id: String,
    },
    /// Change name, description, tags or local networks.
    Update {
        id: String,
        #[command(flatten)]
        meta: Meta,
        #[arg(long = "local-network")]
        local_networks: Vec<String>,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum CustomerGatewayCmd {
    /// Create a customer gateway.
    Create {
        #[command(flatten)]
        meta: Meta,
        /// The peer's public IP (0.0.0.0: any peer, matched by IKE identity).
        #[arg(long)]
        ip_address: String,
        /// AS number, plain or asdot (123.456).
        #[arg(long)]
        asn: Option<String>,
        #[arg(long)]
        client_token: Option<String>,
    },
    List(ListArgs),
    Show {
        id: String,
    },
    /// Change name, description, tags or ASN.
    Update {
        id: String,
        #[command(flatten)]
        meta: Meta,
        #[arg(long)]
        asn: Option<String>,
    },
    Delete {
        id: String,
    },
}

/// Tunnel settings; applied to every tunnel of the connection.
#[derive(Args, Debug, Default)]
struct TunnelOpts {
    /// Pre-shared key (generated when absent).
    #[arg(long)]
    psk: Option<String>,
    /// ikev1 or ikev2.
    #[arg(long)]
    ike_version: Option<String>,
    /// main or aggressive (IKEv1).
    #[arg(long)]
    ike_mode: Option<String>,
    /// aes, aes192, aes256, des, 3des, aes-gcm-128, aes-gcm-256.
    #[arg(long)]
    ike_encryption: Option<String>,
    /// sha1, md5, sha256, sha384, sha512.
    #[arg(long)]
    ike_integrity: Option<String>,
    /// group1, group2, group5, group14, group24, group19, group20, group31.
    #[arg(long)]
    ike_dh_group: Option<String>,
    #[arg(long)]
    ike_lifetime: Option<u32>,
    /// Our IKE identity (IP or FQDN).
    #[arg(long)]
    local_id: Option<String>,
    /// The peer's IKE identity (IP or FQDN).
    #[arg(long)]
    remote_id: Option<String>,
    #[arg(long)]
    ipsec_encryption: Option<String>,
    #[arg(long)]
    ipsec_integrity: Option<String>,
    /// disabled or a DH group.
    #[arg(long)]
    pfs: Option<String>,
    #[arg(long)]
    ipsec_lifetime: Option<u32>,
    /// Dead peer detection on/off.
    #[arg(long)]
    dpd: Option<bool>,
    /// NAT traversal on/off.
    #[arg(long)]
    nat_traversal: Option<bool>,
}

#[derive(Args, Debug, Default)]
struct ConnectionOpts {
    /// destination or protected_flows.
    #[arg(long)]
    routing_mode: Option<String>,
    /// Local CIDR (repeatable).
    #[arg(long = "local-subnet")]
    local_subnets: Vec<String>,
    /// Remote CIDR (repeatable).
    #[arg(long = "remote-subnet")]
    remote_subnets: Vec<String>,
    /// Negotiate now (true) or when traffic arrives (false).
    #[arg(long)]
    effective_immediately: Option<bool>,
    #[arg(long)]
    enable_bgp: Option<bool>,
    #[arg(long)]
    local_asn: Option<String>,
    /// BGP: spread the flows of prefixes both tunnels' sessions learned over both
    /// tunnels (default false: tunnel 1's session preferred).
    #[arg(long)]
    bgp_ecmp: Option<bool>,
    /// BGP: also advertise the routes learned on the gateway's other connections.
    #[arg(long)]
    bgp_advertise_learned: Option<bool>,
    /// BGP: learned routes replace static routes of the same destination.
    #[arg(long)]
    bgp_override_static: Option<bool>,
    /// BGP link of a tunnel as TUNNEL_CIDR,LOCAL_IP (repeat once per tunnel, in order).
    #[arg(long = "bgp", value_name = "CIDR,IP")]
    bgp: Vec<String>,
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum ConnectionCmd {
    /// Create a connection: one tunnel per gateway IPsec address.
    Create {
        #[command(flatten)]
        meta: Meta,
        /// Gateway ID (vpn-…).
        #[arg(long)]
        gateway: Option<String>,
        /// Customer gateway of every tunnel (cgw-…).
        #[arg(long)]
        customer_gateway: Option<String>,
        /// A different customer gateway for tunnel 2.
        #[arg(long)]
        customer_gateway2: Option<String>,
        #[command(flatten)]
        conn: ConnectionOpts,
        #[command(flatten)]
        tunnel: TunnelOpts,
        /// Full request body from a JSON file ('-' for stdin); options above override it.
        #[arg(long, value_name = "FILE|-")]
        from_json: Option<String>,
        #[arg(long)]
        client_token: Option<String>,
    },
    List {
        #[command(flatten)]
        list: ListArgs,
        /// Only this gateway's connections.
        #[arg(long)]
        gateway: Option<String>,
    },
    Show {
        id: String,
    },
    /// Change settings; tunnel options apply to every tunnel.
    Update {
        id: String,
        #[command(flatten)]
        meta: Meta,
        #[command(flatten)]
        conn: ConnectionOpts,
        #[command(flatten)]
        tunnel: TunnelOpts,
        /// A JSON merge patch from a file ('-' for stdin); options above override it.
        #[arg(long, value_name = "FILE|-")]
        from_json: Option<String>,
    },
    Delete {
        id: String,
    },
    /// The configuration of the peer device (both tunnels, with the pre-shared keys),
    /// written as the server renders it.
    #[command(name = "peer-config")]
    PeerConfig {
        id: String,
        /// swanctl, ipsec-conf, frr, json, cisco-ios, juniper-srx, huawei-vrp, fortigate or
        /// paloalto (`vpngw peer-config-formats` lists them).
        #[arg(long, default_value = "swanctl")]
        format: String,
        /// Write to FILE (created with mode 0600: it holds pre-shared keys) instead of
        /// standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// The routes each tunnel's BGP session received and advertised.
    #[command(name = "bgp-routes")]
    BgpRoutes {
        id: String,
    },
    /// Negotiation and state events.
    Logs {
        id: String,
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum TunnelCmd {
    /// The tunnels of a connection.
    List { connection: String },
    Show {
        connection: String,
        tunnel: String,
        /// Include the pre-shared key.
        #[arg(long)]
        reveal_psk: bool,
    },
    Update {
        connection: String,
        tunnel: String,
        #[command(flatten)]
        tunnel_opts: TunnelOpts,
        #[arg(long = "bgp", value_name = "CIDR,IP")]
        bgp: Option<String>,
        /// A JSON merge patch from a file ('-' for stdin); options above override it.
        #[arg(long, value_name = "FILE|-")]
        from_json: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum RouteCmd {
    Add {
        gateway: String,
        #[arg(long)]
        destination: String,
        /// Connection ID (vco-…).
        #[arg(long)]
        next_hop: String,
        /// 100 (active) or 0 (standby).
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long)]
        publish: bool,
        #[arg(long)]
        client_token: Option<String>,
    },
    List {
        gateway: String,
    },
    Delete {
        gateway: String,
        route: String,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyRouteCmd {
    Add {
        gateway: String,
        #[arg(long)]
        source: String,
        #[arg(long)]
        destination: String,
        #[arg(long)]
        next_hop: String,
        /// 1–100, lower first.
        #[arg(long)]
        priority: Option<u32>,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long)]
        client_token: Option<String>,
    },
    List {
        gateway: String,
    },
    Delete {
        gateway: String,
        route: String,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Serve {
        listen,
        no_node,
        esp_encap,
        ike_cookie_threshold,
        ike_half_open_limit,
        ike_half_open_per_address,
        nat_keepalive,
    } = cli.command
    {
        let node = node::NodeConfig {
            esp_encap: esp_encap.into(),
            ike_cookie_threshold,
            ike_half_open_limit,
            ike_half_open_per_address,
            nat_keepalive: std::time::Duration::from_secs(nat_keepalive),
            ..node::NodeConfig::default()
        };
        return crate::serve::run(listen, &cli.data_dir, !no_node, node);
    }
    let client = Client::new(&cli.server, token(&cli.data_dir)?);
    let out = Out {
        json: cli.json,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Serve { .. } => Ok(()),
        Command::Gateway(c) => gateway(&client, &out, c),
        Command::CustomerGateway(c) => customer_gateway(&client, &out, c),
        Command::Connection(c) => connection(&client, &out, c),
        Command::Tunnel(c) => tunnel(&client, &out, c),
        Command::Route(c) => route(&client, &out, c),
        Command::PolicyRoute(c) => policy_route(&client, &out, c),
        Command::RouteTable { gateway } => {
            let v = client.get(&format!("/v1/vpn-gateways/{gateway}/route-table"))?;
            out.list(&v, ROUTE_TABLE_COLUMNS);
            Ok(())
        }
        Command::PeerConfigFormats => {
            let v = client.get("/v1/peer-config-formats")?;
            if out.quiet {
                for f in v["items"].as_array().into_iter().flatten() {
                    if let Some(name) = f["name"].as_str() {
                        say!("{name}");
                    }
                }
            } else {
                out.list(&v, FORMAT_COLUMNS);
            }
            Ok(())
        }
    }
}

/// The bearer token: `VPNGW_TOKEN`, else `DATA_DIR/admin.token`.
fn token(data_dir: &Path) -> anyhow::Result<String> {
    let from_env = std::env::var("VPNGW_TOKEN").ok();
    if let Some(t) = from_env.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(t.to_string());
    }
    let path = data_dir.join(api::ADMIN_TOKEN_FILE);
    let t = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no API token: set VPNGW_TOKEN or point --data-dir/VPNGW_DATA_DIR at the server's data directory ({} not readable)",
            path.display()
        )
    })?;
    Ok(t.trim().to_string())
}

struct Out {
    json: bool,
    quiet: bool,
}

impl Out {
    fn list(&self, v: &Value, columns: &[(&str, &str)]) {
        if self.json {
            say!("{}", pretty(v));
            return;
        }
        let items = v["items"].as_array().cloned().unwrap_or_default();
        if self.quiet {
            for it in &items {
                if let Some(id) = it["id"].as_str().or_else(|| it["route_id"].as_str()) {
                    say!("{id}");
                }
            }
            return;
        }
        output::table(&items, columns);
        if let Some(t) = v["next_page_token"].as_str() {
            say!("(more: --page-token {t})");
        }
    }

    fn one(&self, v: &Value) {
        if self.quiet {
            if let Some(id) = v["id"].as_str() {
                say!("{id}");
            }
        } else if self.json {
            say!("{}", pretty(v));
        } else {
            output::record(v);
        }
    }

    fn deleted(&self, what: &str, id: &str) {
        if self.quiet {
            say!("{id}");
        } else if self.json {
            say!("{}", json!({"deleted": id}));
        } else {
            say!("deleted {what} {id}");
        }
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

const GATEWAY_COLUMNS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("TYPE", "/gateway_type"),
    ("IPSEC ADDRESSES", "/ipsec_addresses"),
    ("LOCAL NETWORKS", "/local_networks"),
    ("CONNECTIONS", "/connection_count"),
    ("STATUS", "/status"),
];
const CGW_COLUMNS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("IP ADDRESS", "/ip_address"),
    ("ASN", "/asn"),
    ("TUNNELS", "/tunnel_count"),
];
const CONNECTION_COLUMNS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("GATEWAY", "/vpn_gateway_id"),
    ("ROUTING", "/routing_mode"),
    ("STATUS", "/status"),
    ("STATE", "/connection_state"),
    ("TUNNEL 1", "/tunnels/0/status/phase"),
    ("TUNNEL 2", "/tunnels/1/status/phase"),
];
const TUNNEL_COLUMNS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("ROLE", "/role"),
    ("GATEWAY ADDRESS", "/gateway_address"),
    ("CUSTOMER GATEWAY", "/customer_gateway_id"),
    ("IKE", "/ike/version"),
    ("STATE", "/state"),
    ("PHASE", "/status/phase"),
];
const ROUTE_COLUMNS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("DESTINATION", "/destination"),
    ("NEXT HOP", "/next_hop"),
    ("WEIGHT", "/weight"),
    ("PUBLISH", "/publish"),
];
const POLICY_ROUTE_COLUMNS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("SOURCE", "/source"),
    ("DESTINATION", "/destination"),
    ("NEXT HOP", "/next_hop"),
    ("PRIORITY", "/priority"),
    ("WEIGHT", "/weight"),
];
const ROUTE_TABLE_COLUMNS: &[(&str, &str)] = &[
    ("DESTINATION", "/destination"),
    ("SOURCE", "/source"),
    ("NEXT HOP", "/next_hop"),
    ("ORIGIN", "/origin"),
    ("TUNNEL", "/tunnel_id"),
    ("STATE", "/state"),
    ("WEIGHT", "/weight"),
    ("PRIORITY", "/priority"),
    ("PUBLISHED", "/published"),
    ("REASON", "/reason"),
];
const FORMAT_COLUMNS: &[(&str, &str)] = &[
    ("NAME", "/name"),
    ("TITLE", "/title"),
    ("TARGETS", "/targets"),
];
const BGP_ROUTE_COLUMNS: &[(&str, &str)] = &[
    ("TUNNEL", "/tunnel_id"),
    ("SESSION", "/state"),
    ("DIRECTION", "/direction"),
    ("PREFIX", "/prefix"),
    ("AS PATH", "/as_path"),
    ("NEXT HOP", "/next_hop"),
    ("ORIGIN", "/origin"),
    ("MED", "/med"),
    ("BEST", "/best"),
    ("IGNORED", "/ignored"),
];

/// `GET …/bgp-routes` (per tunnel, received and advertised lists) as one table row per
/// route; a tunnel without routes still gets a row showing its session state.
fn bgp_route_rows(v: &Value) -> Value {
    let mut rows = Vec::new();
    for t in v["items"].as_array().into_iter().flatten() {
        let mut any = false;
        for dir in ["received", "advertised"] {
            for r in t[dir].as_array().into_iter().flatten() {
                any = true;
                let path: Vec<String> = r["as_path"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(Value::to_string)
                    .collect();
                let mut row = r.clone();
                row["tunnel_id"] = t["tunnel_id"].clone();
                row["state"] = t["state"].clone();
                row["direction"] = Value::from(dir);
                row["as_path"] = Value::from(path.join(" "));
                rows.push(row);
            }
        }
        if !any {
            rows.push(serde_json::json!({"tunnel_id": t["tunnel_id"], "state": t["state"]}));
        }
    }
    serde_json::json!({ "items": rows })
}

const LOG_COLUMNS: &[(&str, &str)] = &[
    ("AT", "/at"),
    ("TUNNEL", "/tunnel_id"),
    ("LEVEL", "/level"),
    ("EVENT", "/event"),
    ("MESSAGE", "/message"),
];

fn gateway(c: &Client, out: &Out, cmd: GatewayCmd) -> anyhow::Result<()> {
    match cmd {
        GatewayCmd::Create {
            meta,
            ipsec_addresses,
            local_networks,
            gateway_type,
            client_token,
        } => {
            let mut body = meta.body()?;
            body.insert("ipsec_addresses".into(), json!(ipsec_addresses));
            body.insert("local_networks".into(), json!(local_networks));
            put(&mut body, "gateway_type", gateway_type);
            put(&mut body, "client_token", client_token);
            out.one(&c.post("/v1/vpn-gateways", &Value::Object(body))?);
        }
        GatewayCmd::List(l) => out.list(&c.get(&l.path("/v1/vpn-gateways", &[]))?, GATEWAY_COLUMNS),
        GatewayCmd::Show { id } => out.one(&c.get(&format!("/v1/vpn-gateways/{id}"))?),
        GatewayCmd::Update {
            id,
            meta,
            local_networks,
        } => {
            let mut body = meta.body()?;
            if !local_networks.is_empty() {
                body.insert("local_networks".into(), json!(local_networks));
            }
            out.one(&c.patch(&format!("/v1/vpn-gateways/{id}"), &Value::Object(body))?);
        }
        GatewayCmd::Delete { id } => {
            c.delete(&format!("/v1/vpn-gateways/{id}"))?;
            out.deleted("VPN gateway", &id);
        }
    }
    Ok(())
}

fn customer_gateway(c: &Client, out: &Out, cmd: CustomerGatewayCmd) -> anyhow::Result<()> {
    match cmd {
        CustomerGatewayCmd::Create {
            meta,
            ip_address,
            asn,
            client_token,
        } => {
            let mut body = meta.body()?;
            body.insert("ip_address".into(), json!(ip_address));
            if let Some(a) = asn {
                body.insert("asn".into(), asn_value(&a));
            }
            put(&mut body, "client_token", client_token);
            out.one(&c.post("/v1/customer-gateways", &Value::Object(body))?);
        }
        CustomerGatewayCmd::List(l) => {
            out.list(&c.get(&l.path("/v1/customer-gateways", &[]))?, CGW_COLUMNS)
        }
        CustomerGatewayCmd::Show { id } => out.one(&c.get(&format!("/v1/customer-gateways/{id}"))?),
        CustomerGatewayCmd::Update { id, meta, asn } => {
            let mut body = meta.body()?;
            if let Some(a) = asn {
                body.insert("asn".into(), asn_value(&a));
            }
            out.one(&c.patch(&format!("/v1/customer-gateways/{id}"), &Value::Object(body))?);
        }
        CustomerGatewayCmd::Delete { id } => {
            c.delete(&format!("/v1/customer-gateways/{id}"))?;
            out.deleted("customer gateway", &id);
        }
    }
    Ok(())
}

fn connection(c: &Client, out: &Out, cmd: ConnectionCmd) -> anyhow::Result<()> {
    match cmd {
        ConnectionCmd::Create {
            meta,
            gateway,
            customer_gateway,
            customer_gateway2,
            conn,
            tunnel,
            from_json,
            client_token,
        } => {
            let mut body = match &from_json {
                Some(src) => read_json_object(src)?,
                None => Map::new(),
            };
            body.extend(meta.body()?);
            put(&mut body, "vpn_gateway_id", gateway);
            put(&mut body, "client_token", client_token);
            conn.apply(&mut body);
            let gw_id = body
                .get("vpn_gateway_id")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("--gateway is required (or vpn_gateway_id in --from-json)"))?
                .to_string();
            if !body.contains_key("tunnels") {
                let gw = c.get(&format!("/v1/vpn-gateways/{gw_id}"))?;
                let n = gw["ipsec_addresses"].as_array().map_or(1, Vec::len);
                body.insert("tunnels".into(), Value::Array(vec![json!({}); n]));
            }
            let patch = tunnel.patch()?;
            let bgp = bgp_links(&conn.bgp)?;
            let Some(Value::Array(tunnels)) = body.get_mut("tunnels") else {
                bail!("tunnels in --from-json must be an array");
            };
            for (i, t) in tunnels.iter_mut().enumerate() {
                let cgw = if i == 1 {
                    customer_gateway2
                        .clone()
                        .or_else(|| customer_gateway.clone())
                } else {
                    customer_gateway.clone()
                };
                if let (Some(cgw), Value::Object(m)) = (cgw, &mut *t) {
                    m.insert("customer_gateway_id".into(), json!(cgw));
                }
                model::merge_patch(t, &patch);
                if let (Some(b), Value::Object(m)) = (bgp.get(i), &mut *t) {
                    m.insert("bgp".into(), b.clone());
                }
            }
            out.one(&c.post("/v1/vpn-connections", &Value::Object(body))?);
        }
        ConnectionCmd::List { list, gateway } => {
            let extra: Vec<(&str, String)> =
                gateway.map(|g| ("vpn_gateway_id", g)).into_iter().collect();
            out.list(
                &c.get(&list.path("/v1/vpn-connections", &extra))?,
                CONNECTION_COLUMNS,
            )
        }
        ConnectionCmd::Show { id } => out.one(&c.get(&format!("/v1/vpn-connections/{id}"))?),
        ConnectionCmd::Update {
            id,
            meta,
            conn,
            tunnel,
            from_json,
        } => {
            let mut body = match &from_json {
                Some(src) => read_json_object(src)?,
                None => Map::new(),
            };
            body.extend(meta.body()?);
            conn.apply(&mut body);
            let patch = tunnel.patch()?;
            let bgp = bgp_links(&conn.bgp)?;
            let has_patch = patch.as_object().is_some_and(|m| !m.is_empty());
            if has_patch || !bgp.is_empty() {
                let current = c.get(&format!("/v1/vpn-connections/{id}"))?;
                let n = current["tunnels"].as_array().map_or(0, Vec::len);
                let tunnels: Vec<Value> = (0..n)
                    .map(|i| {
                        let mut t = patch.clone();
                        if let (Some(b), Value::Object(m)) = (bgp.get(i), &mut t) {
                            m.insert("bgp".into(), b.clone());
                        }
                        t
                    })
                    .collect();
                body.insert("tunnels".into(), Value::Array(tunnels));
            }
            out.one(&c.patch(&format!("/v1/vpn-connections/{id}"), &Value::Object(body))?);
        }
        ConnectionCmd::Delete { id } => {
            c.delete(&format!("/v1/vpn-connections/{id}"))?;
            out.deleted("connection", &id);
        }
        ConnectionCmd::PeerConfig { id, format, output } => {
            let text = c.get_text(&with_query(
                &format!("/v1/vpn-connections/{id}/peer-config"),
                &[("format", format.clone())],
            ))?;
            match output {
                Some(path) => {
                    write_private(&path, &text)?;
                    if !out.quiet {
                        say!(
                            "wrote the {format} peer configuration of {id} to {} (mode 0600: it holds the pre-shared keys)",
                            path.display()
                        );
                    }
                }
                None => {
                    use std::io::Write as _;
                    let mut stdout = std::io::stdout().lock();
                    // A closed stdout (`| head`) is not an error.
                    let _ = stdout.write_all(text.as_bytes());
                    let _ = stdout.flush();
                }
            }
        }
        ConnectionCmd::BgpRoutes { id } => {
            let v = c.get(&format!("/v1/vpn-connections/{id}/bgp-routes"))?;
            let rows = if out.json { v } else { bgp_route_rows(&v) };
            out.list(&rows, BGP_ROUTE_COLUMNS);
        }
        ConnectionCmd::Logs { id, since, limit } => {
            let mut q = Vec::new();
            if let Some(s) = since {
                q.push(("since", s));
            }
            if let Some(l) = limit {
                q.push(("limit", l.to_string()));
            }
            let v = c.get(&with_query(&format!("/v1/vpn-connections/{id}/logs"), &q))?;
            out.list(&v, LOG_COLUMNS);
        }
    }
    Ok(())
}

fn tunnel(c: &Client, out: &Out, cmd: TunnelCmd) -> anyhow::Result<()> {
    match cmd {
        TunnelCmd::List { connection } => {
            let conn = c.get(&format!("/v1/vpn-connections/{connection}"))?;
            let items = json!({"items": conn["tunnels"].clone()});
            out.list(&items, TUNNEL_COLUMNS);
        }
        TunnelCmd::Show {
            connection,
            tunnel,
            reveal_psk,
        } => {
            let mut path = format!("/v1/vpn-connections/{connection}/tunnels/{tunnel}");
            if reveal_psk {
                path.push_str("?reveal=pre_shared_key");
            }
            out.one(&c.get(&path)?);
        }
        TunnelCmd::Update {
            connection,
            tunnel,
            tunnel_opts,
            bgp,
            from_json,
        } => {
            let mut body = match &from_json {
                Some(src) => Value::Object(read_json_object(src)?),
                None => json!({}),
            };
            model::merge_patch(&mut body, &tunnel_opts.patch()?);
            if let Some(b) = bgp {
                let link = bgp_links(&[b])?;
                if let (Some(l), Value::Object(m)) = (link.first(), &mut body) {
                    m.insert("bgp".into(), l.clone());
                }
            }
            out.one(&c.patch(
                &format!("/v1/vpn-connections/{connection}/tunnels/{tunnel}"),
                &body,
            )?);
        }
    }
    Ok(())
}

fn route(c: &Client, out: &Out, cmd: RouteCmd) -> anyhow::Result<()> {
    match cmd {
        RouteCmd::Add {
            gateway,
            destination,
            next_hop,
            weight,
            publish,
            client_token,
        } => {
            let mut body = Map::new();
            body.insert("destination".into(), json!(destination));
            body.insert("next_hop".into(), json!(next_hop));
            body.insert("publish".into(), json!(publish));
            put(&mut body, "weight", weight);
            put(&mut body, "client_token", client_token);
            out.one(&c.post(
                &format!("/v1/vpn-gateways/{gateway}/routes"),
                &Value::Object(body),
            )?);
        }
        RouteCmd::List { gateway } => out.list(
            &c.get(&format!("/v1/vpn-gateways/{gateway}/routes"))?,
            ROUTE_COLUMNS,
        ),
        RouteCmd::Delete { gateway, route } => {
            c.delete(&format!("/v1/vpn-gateways/{gateway}/routes/{route}"))?;
            out.deleted("route", &route);
        }
    }
    Ok(())
}

fn policy_route(c: &Client, out: &Out, cmd: PolicyRouteCmd) -> anyhow::Result<()> {
    match cmd {
        PolicyRouteCmd::Add {
            gateway,
            source,
            destination,
            next_hop,
            priority,
            weight,
            client_token,
        } => {
            let mut body = Map::new();
            body.insert("source".into(), json!(source));
            body.insert("destination".into(), json!(destination));
            body.insert("next_hop".into(), json!(next_hop));
            put(&mut body, "priority", priority);
            put(&mut body, "weight", weight);
            put(&mut body, "client_token", client_token);
            out.one(&c.post(
                &format!("/v1/vpn-gateways/{gateway}/policy-routes"),
                &Value::Object(body),
            )?);
        }
        PolicyRouteCmd::List { gateway } => out.list(
            &c.get(&format!("/v1/vpn-gateways/{gateway}/policy-routes"))?,
            POLICY_ROUTE_COLUMNS,
        ),
        PolicyRouteCmd::Delete { gateway, route } => {
            c.delete(&format!("/v1/vpn-gateways/{gateway}/policy-routes/{route}"))?;
            out.deleted("policy route", &route);
        }
    }
    Ok(())
}

impl Meta {
    fn body(&self) -> anyhow::Result<Map<String, Value>> {
        let mut m = Map::new();
        put(&mut m, "name", self.name.clone());
        put(&mut m, "description", self.description.clone());
        if !self.tags.is_empty() {
            let mut tags = Map::new();
            for t in &self.tags {
                let (k, v) = t
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--tag `{t}` must look like KEY=VALUE"))?;
                tags.insert(k.to_string(), json!(v));
            }
            m.insert("tags".into(), Value::Object(tags));
        }
        Ok(m)
    }
}

impl ListArgs {
    fn path(&self, base: &str, extra: &[(&str, String)]) -> String {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(n) = &self.name {
            q.push(("name", n.clone()));
        }
        let tags: Vec<(String, String)> = self
            .tags
            .iter()
            .map(|t| match t.split_once('=') {
                Some((k, v)) => (format!("tag.{k}"), v.to_string()),
                None => (format!("tag.{t}"), String::new()),
            })
            .collect();
        for (k, v) in &tags {
            q.push((k.as_str(), v.clone()));
        }
        if let Some(s) = self.page_size {
            q.push(("page_size", s.to_string()));
        }
        if let Some(t) = &self.page_token {
            q.push(("page_token", t.clone()));
        }
        q.extend(extra.iter().cloned());
        with_query(base, &q)
    }
}

impl ConnectionOpts {
    fn apply(&self, body: &mut Map<String, Value>) {
        put(body, "routing_mode", self.routing_mode.clone());
        if !self.local_subnets.is_empty() {
            body.insert("local_subnets".into(), json!(self.local_subnets));
        }
        if !self.remote_subnets.is_empty() {
            body.insert("remote_subnets".into(), json!(self.remote_subnets));
        }
        put(body, "effective_immediately", self.effective_immediately);
        put(body, "enable_bgp", self.enable_bgp);
        if let Some(a) = &self.local_asn {
            body.insert("local_asn".into(), asn_value(a));
        }
        put(body, "bgp_ecmp", self.bgp_ecmp);
        put(body, "bgp_advertise_learned", self.bgp_advertise_learned);
        put(body, "bgp_override_static", self.bgp_override_static);
    }
}

impl TunnelOpts {
    /// The tunnel settings as a JSON merge patch.
    fn patch(&self) -> anyhow::Result<Value> {
        let mut t = Map::new();
        put(&mut t, "pre_shared_key", self.psk.clone());
        put(&mut t, "dpd", self.dpd);
        put(&mut t, "nat_traversal", self.nat_traversal);
        let mut ike = Map::new();
        put(&mut ike, "version", self.ike_version.clone());
        put(&mut ike, "mode", self.ike_mode.clone());
        put(&mut ike, "encryption", self.ike_encryption.clone());
        put(&mut ike, "integrity", self.ike_integrity.clone());
        put(&mut ike, "dh_group", self.ike_dh_group.clone());
        put(&mut ike, "lifetime_s", self.ike_lifetime);
        put(&mut ike, "local_id", self.local_id.clone());
        put(&mut ike, "remote_id", self.remote_id.clone());
        if !ike.is_empty() {
            t.insert("ike".into(), Value::Object(ike));
        }
        let mut ipsec = Map::new();
        put(&mut ipsec, "encryption", self.ipsec_encryption.clone());
        put(&mut ipsec, "integrity", self.ipsec_integrity.clone());
        put(&mut ipsec, "pfs", self.pfs.clone());
        put(&mut ipsec, "lifetime_s", self.ipsec_lifetime);
        if !ipsec.is_empty() {
            t.insert("ipsec".into(), Value::Object(ipsec));
        }
        Ok(Value::Object(t))
    }
}

fn bgp_links(specs: &[String]) -> anyhow::Result<Vec<Value>> {
    specs
        .iter()
        .map(|s| {
            let (cidr, ip) = s.split_once(',').ok_or_else(|| {
                anyhow!("--bgp `{s}` must look like 169.254.10.0/30,169.254.10.1")
            })?;
            Ok(json!({"tunnel_cidr": cidr, "local_ip": ip}))
        })
        .collect()
}

fn put<T: serde::Serialize>(m: &mut Map<String, Value>, key: &str, v: Option<T>) {
    if let Some(v) = v.and_then(|v| serde_json::to_value(v).ok()) {
        m.insert(key.to_string(), v);
    }
}

/// ASNs go as numbers when plain, as strings when asdot.
fn asn_value(a: &str) -> Value {
    a.parse::<u64>().map_or_else(|_| json!(a), |n| json!(n))
}

fn read_json_object(src: &str) -> anyhow::Result<Map<String, Value>> {
    let text = if src == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading JSON from stdin")?;
        s
    } else {
        std::fs::read_to_string(src).with_context(|| format!("reading {src}"))?
    };
    match serde_json::from_str(&text).with_context(|| format!("parsing JSON from {src}"))? {
        Value::Object(m) => Ok(m),
        _ => bail!("{src} must hold a JSON object"),
    }
}

/// Writes `text` to `path` readable by the owner only (0600, also when the file existed),
/// since a peer configuration holds pre-shared keys.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // `mode` applies to new files only: tighten an existing one before writing the keys.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn with_query(path: &str, q: &[(&str, String)]) -> String {
    if q.is_empty() {
        return path.to_string();
    }
    let parts: Vec<String> = q
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    format!("{path}?{}", parts.join("&"))
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3).
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bgp_routes_become_one_row_per_route() {
        let v = serde_json::json!({"items": [
            {"tunnel_id": "tun-1", "role": "primary", "state": "established", "peer_asn": 65530,
             "received": [{"prefix": "10.2.0.0/24", "as_path": [65530, 65001], "next_hop": "169.254.10.2",
                           "origin": "igp", "med": null, "best": true}],
             "advertised": [{"prefix": "172.16.0.0/16", "as_path": [45104], "next_hop": "169.254.10.1",
                             "origin": "igp", "med": null, "best": true}]},
            {"tunnel_id": "tun-2", "role": "secondary", "state": "idle", "peer_asn": 65530,
             "received": [], "advertised": []}]});
        let rows = bgp_route_rows(&v);
        let rows = rows["items"].as_array().unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["direction"], "received");
        assert_eq!(rows[0]["as_path"], "65530 65001");
        assert_eq!(rows[0]["state"], "established");
        assert_eq!(rows[1]["direction"], "advertised");
        assert_eq!(rows[1]["prefix"], "172.16.0.0/16");
        assert_eq!(
            rows[2],
            serde_json::json!({"tunnel_id": "tun-2", "state": "idle"})
        );
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            with_query(
                "/x",
                &[
                    ("name", "a b".into()),
                    ("since", "2026-01-01T00:00:00+01:00".into())
                ]
            ),
            "/x?name=a%20b&since=2026-01-01T00%3A00%3A00%2B01%3A00"
        );
        assert_eq!(with_query("/x", &[]), "/x");
    }

    #[test]
    fn tunnel_options_become_a_patch() {
        let t = TunnelOpts {
            psk: Some("k".into()),
            ike_version: Some("ikev1".into()),
            pfs: Some("disabled".into()),
            dpd: Some(false),
            ..Default::default()
        };
        assert_eq!(
            t.patch().unwrap(),
            json!({"pre_shared_key": "k", "dpd": false, "ike": {"version": "ikev1"}, "ipsec": {"pfs": "disabled"}})
        );
        assert_eq!(TunnelOpts::default().patch().unwrap(), json!({}));
    }

    #[test]
    fn asn_and_bgp_parsing() {
        assert_eq!(asn_value("65000"), json!(65000));
        assert_eq!(asn_value("1.2"), json!("1.2"));
        assert_eq!(
            bgp_links(&["169.254.10.0/30,169.254.10.1".into()]).unwrap(),
            vec![json!({"tunnel_cidr": "169.254.10.0/30", "local_ip": "169.254.10.1"})]
        );
        assert!(bgp_links(&["nope".into()]).is_err());
    }

    #[test]
    fn cli_parses() {
        Cli::command().debug_assert();
    }

    /// `--nat-keepalive` is bounded: a huge value would overflow the control thread's
    /// `Instant` arithmetic. The error names the option and the allowed range.
    #[test]
    fn nat_keepalive_is_bounded() {
        let serve = |v: &str| Cli::try_parse_from(["vpngw", "serve", "--nat-keepalive", v]);
        assert!(serve("0").is_ok());
        assert!(serve("86400").is_ok());
        let err = serve("18446744073709551615").unwrap_err().to_string();
        assert!(err.contains("--nat-keepalive"), "{err}");
        assert!(err.contains("0..=86400"), "{err}");
        assert!(serve("-1").is_err());
    }

    #[test]
    fn bgp_option_flags_go_into_the_body() {
        let cli = Cli::try_parse_from([
            "vpngw",
            "connection",
            "update",
            "vco-1",
            "--bgp-ecmp",
            "true",
            "--bgp-advertise-learned",
            "false",
            "--bgp-override-static",
            "true",
        ])
        .unwrap();
        let Command::Connection(ConnectionCmd::Update { conn, .. }) = cli.command else {
            panic!("{cli:?}");
        };
        let mut body = Map::new();
        conn.apply(&mut body);
        assert_eq!(
            Value::Object(body),
            json!({"bgp_ecmp": true, "bgp_advertise_learned": false, "bgp_override_static": true})
        );
    }

    #[test]
    fn peer_config_file_is_private_even_when_it_existed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.conf");
        std::fs::write(&path, "old and longer text").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "secret = \"k\"\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret = \"k\"\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let fresh = dir.path().join("new.conf");
        write_private(&fresh, "x").unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    use clap::CommandFactory;
}
