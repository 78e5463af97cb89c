//! The standard lab of vpngw's interop tests.
//!
//! ```text
//!  ns      interface  address (default)     notes
//!  ------  ---------  --------------------  ------------------------------------------
//!  vpc     eth0       172.16.1.10/24        VPC host; default via 172.16.1.1
//!  gw      vpc0       172.16.1.1/24         where the vpngw node runs; forwarding on;
//!          pub0       192.0.2.1/24          tunnel-1 public IPsec address
//!                     192.0.2.2/24          tunnel-2 public IPsec address
//!                                           default via 192.0.2.254
//!  inet    gw0        192.0.2.254/24        "the internet": a router, forwarding on,
//!          onprem0    198.51.100.254/24     no default route, no route to the VPC
//!  onprem  eth0       198.51.100.1/24       strongSwan/FRR peer; default via .254
//!          lo         10.2.0.1/24           on-premises network(s)
//!
//!  with NAT (TopologyConfig::with_nat()), between inet and onprem:
//!  nat     wan0       198.51.100.1/24       masquerades out of wan0; default via .254
//!          lan0       172.31.0.1/24
//!  onprem  eth0       172.31.0.2/24         default via 172.31.0.1
//!
//!  links:  vpc.eth0 -- gw.vpc0,  gw.pub0 -- inet.gw0,
//!          inet.onprem0 -- onprem.eth0   (or inet.onprem0 -- nat.wan0, nat.lan0 -- onprem.eth0)
//! ```
//!
//! Without NAT, `onprem0` of `inet` and `eth0` of `onprem` are the two ends of one veth.
//! With [`TopologyConfig::nat`], a `nat` namespace sits between them: it owns the
//! on-premises public address (198.51.100.1) and masquerades the private `onprem`
//! (172.31.0.2) behind it, so IKE and ESP go through NAT traversal (RFC 3947/3948).
//! Every address is a field of [`TopologyConfig`]; the defaults are the ones above.

use crate::error::{LabError, Result};
use crate::netns::{Netns, veth};
use crate::nft;
use crate::workdir::Workdir;

/// Addresses of the standard lab, all in CIDR notation. The defaults use RFC 1918 for
/// private networks and the documentation ranges for "public" ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyConfig {
    /// The VPC host (`vpc` ns, `eth0`).
    pub vpc_host: String,
    /// The gateway's VPC-side address (`gw` ns, `vpc0`); the VPC host's default route.
    pub gw_vpc: String,
    /// The gateway's "public" IPsec addresses (`gw` ns, `pub0`): tunnel 1, tunnel 2.
    pub gw_public: Vec<String>,
    /// The router's address toward the gateway (`inet` ns, `gw0`).
    pub inet_gw_side: String,
    /// The router's address toward on-premises (`inet` ns, `onprem0`).
    pub inet_onprem_side: String,
    /// The on-premises public address: on `onprem`'s `eth0`, or on `nat`'s `wan0` with
    /// NAT.
    pub onprem_public: String,
    /// On-premises networks: addresses put on `onprem`'s `lo` (there are no dummy
    /// interfaces in this kernel).
    pub onprem_nets: Vec<String>,
    /// Put `onprem` behind a masquerading NAT.
    pub nat: Option<NatConfig>,
}

/// The private side of the NAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// The NAT's inside address (`nat` ns, `lan0`): `onprem`'s default route.
    pub inside: String,
    /// `onprem`'s private address (`onprem` ns, `eth0`).
    pub onprem_private: String,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            vpc_host: "172.16.1.10/24".into(),
            gw_vpc: "172.16.1.1/24".into(),
            gw_public: vec!["192.0.2.1/24".into(), "192.0.2.2/24".into()],
            inet_gw_side: "192.0.2.254/24".into(),
            inet_onprem_side: "198.51.100.254/24".into(),
            onprem_public: "198.51.100.1/24".into(),
            onprem_nets: vec!["10.2.0.1/24".into()],
            nat: None,
        }
    }
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            inside: "172.31.0.1/24".into(),
            onprem_private: "172.31.0.2/24".into(),
        }
    }
}

impl TopologyConfig {
    /// The default lab with `onprem` behind a NAT.
    pub fn with_nat() -> TopologyConfig {
        TopologyConfig {
            nat: Some(NatConfig::default()),
            ..TopologyConfig::default()
        }
    }
}

/// The namespaces of the standard lab, wired and addressed. Dropping it kills what runs
/// inside and deletes every namespace; the work directory is kept if a test panicked.
///
/// Drop order: fields drop top to bottom, so the namespaces go before the work
/// directory (whose logs a panicking test still wants).
#[derive(Debug)]
pub struct Topology {
    pub vpc: Netns,
    pub gw: Netns,
    pub inet: Netns,
    pub onprem: Netns,
    pub nat: Option<Netns>,
    pub config: TopologyConfig,
    pub workdir: Workdir,
}

impl Topology {
    /// Builds the lab with the default addresses.
    pub fn new() -> Result<Topology> {
        Topology::build(TopologyConfig::default())
    }

    /// Builds the lab described by `config`.
    pub fn build(config: TopologyConfig) -> Result<Topology> {
        if config.gw_public.is_empty() {
            return Err(LabError::Invalid("gw_public needs an address".into()));
        }
        let workdir = Workdir::new("topo")?;
        let topo = Topology {
            vpc: Netns::new("vpc")?,
            gw: Netns::new("gw")?,
            inet: Netns::new("inet")?,
            onprem: Netns::new("onprem")?,
            nat: match config.nat {
                Some(_) => Some(Netns::new("nat")?),
                None => None,
            },
            config,
            workdir,
        };
        topo.wire()?;
        Ok(topo)
    }

    fn wire(&self) -> Result<()> {
        let c = &self.config;
        veth(&self.vpc, "eth0", &self.gw, "vpc0")?;
        self.vpc.addr_add("eth0", &c.vpc_host)?;
        self.gw.addr_add("vpc0", &c.gw_vpc)?;
        self.vpc.route_add("default", host(&c.gw_vpc))?;

        veth(&self.gw, "pub0", &self.inet, "gw0")?;
        for a in &c.gw_public {
            self.gw.addr_add("pub0", a)?;
        }
        self.inet.addr_add("gw0", &c.inet_gw_side)?;
        self.gw.route_add("default", host(&c.inet_gw_side))?;
        self.gw.enable_forwarding()?;
        self.inet.enable_forwarding()?;

        match (&self.nat, &c.nat) {
            (Some(nat), Some(nc)) => {
                veth(&self.inet, "onprem0", nat, "wan0")?;
                self.inet.addr_add("onprem0", &c.inet_onprem_side)?;
                nat.addr_add("wan0", &c.onprem_public)?;
                nat.route_add("default", host(&c.inet_onprem_side))?;
                veth(nat, "lan0", &self.onprem, "eth0")?;
                nat.addr_add("lan0", &nc.inside)?;
                self.onprem.addr_add("eth0", &nc.onprem_private)?;
                self.onprem.route_add("default", host(&nc.inside))?;
                nat.enable_forwarding()?;
                nft::masquerade(nat, "wan0")?;
            }
            _ => {
                veth(&self.inet, "onprem0", &self.onprem, "eth0")?;
                self.inet.addr_add("onprem0", &c.inet_onprem_side)?;
                self.onprem.addr_add("eth0", &c.onprem_public)?;
                self.onprem
                    .route_add("default", host(&c.inet_onprem_side))?;
            }
        }
        for n in &c.onprem_nets {
            self.onprem.addr_add("lo", n)?;
        }
        Ok(())
    }

    /// The VPC host's address.
    pub fn vpc_ip(&self) -> &str {
        host(&self.config.vpc_host)
    }

    /// The gateway's VPC-side address.
    pub fn gw_vpc_ip(&self) -> &str {
        host(&self.config.gw_vpc)
    }

    /// The gateway's public address `i` (0: tunnel 1, 1: tunnel 2).
    pub fn gw_public_ip(&self, i: usize) -> Option<&str> {
        self.config.gw_public.get(i).map(|a| host(a))
    }

    /// The address the gateway sees on-premises at (the NAT's with NAT).
    pub fn onprem_public_ip(&self) -> &str {
        host(&self.config.onprem_public)
    }

    /// The address `onprem` itself sends from (its private one with NAT).
    pub fn onprem_local_ip(&self) -> &str {
        match &self.config.nat {
            Some(nc) => host(&nc.onprem_private),
            None => host(&self.config.onprem_public),
        }
    }

    /// The first on-premises network's host address (e.g. 10.2.0.1).
    pub fn onprem_net_ip(&self) -> Option<&str> {
        self.config.onprem_nets.first().map(|a| host(a))
    }

    /// The namespaces, for leak checks.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut v = vec![&self.vpc, &self.gw, &self.inet, &self.onprem];
        v.extend(self.nat.as_ref());
        v
    }
}

/// The address part of `a.b.c.d/len`.
pub fn host(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

/// The network of `a.b.c.d/len` (`10.2.0.1/24` → `10.2.0.0/24`), for traffic selectors.
pub fn network(cidr: &str) -> Result<String> {
    let bad = || LabError::Invalid(format!("{cidr:?} is not an IPv4 CIDR"));
    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    Ok(format!(
        "{}/{len}",
        std::net::Ipv4Addr::from(u32::from(addr) & mask)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_helpers() {
        assert_eq!(host("10.2.0.1/24"), "10.2.0.1");
        assert_eq!(host("10.2.0.1"), "10.2.0.1");
        assert_eq!(network("10.2.0.1/24").unwrap(), "10.2.0.0/24");
        assert_eq!(network("172.16.1.10/16").unwrap(), "172.16.0.0/16");
        assert_eq!(network("1.2.3.4/0").unwrap(), "0.0.0.0/0");
        assert_eq!(network("1.2.3.4/32").unwrap(), "1.2.3.4/32");
        assert!(network("1.2.3.4/33").is_err());
        assert!(network("nope").is_err());
    }
}
