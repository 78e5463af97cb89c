//! The FRR bgpd stanza of the peer (BGP-enabled connections): one neighbor per tunnel,
//! vpngw's tunnel address with vpngw's AS number, as the product's strongSwan guide
//! configures FRR.

use crate::RenderError;
use crate::text::Out;
use crate::view::{PeerTunnel, PeerView};

/// Keepalive and hold time the product uses for tunnel BGP sessions (RFC 4271 §4.2:
/// hold 30 s, keepalives every 10 s).
const TIMERS: &str = "timers 10 30";

pub(crate) fn render(v: &PeerView<'_>) -> Result<String, RenderError> {
    if !v.bgp {
        return Err(RenderError::BgpNotEnabled {
            connection: v.conn.id.clone(),
        });
    }
    let mut o = Out::new("!");
    o.comments(0, v.header("FRRouting bgpd"));
    o.comment(
        0,
        "Paste into vtysh (configure terminal) or /etc/frr/frr.conf; enable bgpd in /etc/frr/daemons.",
    );
    o.comment(
        0,
        "This device's tunnel addresses must be local addresses (the swanctl format puts them on lo):",
    );
    for t in &v.tunnels {
        if let Some(b) = &t.bgp {
            o.comment(
                0,
                format!(
                    "  tunnel {}: {}/{} (vpngw is {})",
                    t.number,
                    b.local_ip,
                    b.cidr.prefix_len(),
                    b.remote_ip
                ),
            );
        }
    }
    // Tunnels whose customer gateways have different AS numbers end on different
    // devices: one `router bgp` block per AS.
    let mut asns: Vec<u32> = v
        .tunnels
        .iter()
        .filter_map(|t| t.bgp.map(|b| b.local_asn))
        .collect();
    asns.dedup();
    for asn in asns {
        let tunnels: Vec<&PeerTunnel<'_>> = v
            .tunnels
            .iter()
            .filter(|t| t.bgp.is_some_and(|b| b.local_asn == asn))
            .collect();
        o.blank();
        if v.tunnels.len() != tunnels.len() {
            let nums: Vec<String> = tunnels.iter().map(|t| t.number.to_string()).collect();
            o.comment(
                0,
                format!(
                    "Device of customer gateway AS {asn} (tunnel {})",
                    nums.join(", ")
                ),
            );
        }
        router(&mut o, v, asn, &tunnels);
    }
    Ok(o.finish())
}

fn router(o: &mut Out, v: &PeerView<'_>, asn: u32, tunnels: &[&PeerTunnel<'_>]) {
    o.line(format!("router bgp {asn}"));
    if let Some(b) = tunnels.first().and_then(|t| t.bgp) {
        o.line(format!(" bgp router-id {}", b.local_ip));
    }
    o.line(" no bgp ebgp-requires-policy");
    for t in tunnels {
        if let Some(b) = &t.bgp {
            o.line(format!(
                " neighbor {} remote-as {}",
                b.remote_ip, b.remote_asn
            ));
            o.line(format!(
                " neighbor {} description vpngw tunnel {} {}",
                b.remote_ip, t.number, t.id
            ));
            o.line(format!(" neighbor {} {TIMERS}", b.remote_ip));
            // The tunnel is not a connected network when the address sits on lo (or
            // when strongSwan uses policies rather than XFRM interfaces): source the
            // session from our tunnel address and allow the one routed hop.
            o.line(format!(
                " neighbor {} update-source {}",
                b.remote_ip, b.local_ip
            ));
            o.line(format!(" neighbor {} ebgp-multihop 2", b.remote_ip));
        }
    }
    o.line(" !");
    o.line(" address-family ipv4 unicast");
    if v.local_nets.is_empty() {
        o.comment(
            2,
            "Announce this site's own networks to vpngw, one line each, e.g.:",
        );
        o.comment(2, "network 172.16.0.0/16");
    } else {
        o.comment(2, "This site's networks (the connection's remote subnets):");
        for n in &v.local_nets {
            o.line(format!("  network {n}"));
        }
    }
    if tunnels.len() > 1 && v.conn.bgp_ecmp {
        // vpngw's bgp_ecmp: both tunnels carry traffic; eBGP multipath over the two
        // sessions (same neighbouring AS) lets this side spread its flows likewise.
        o.comment(
            2,
            "vpngw spreads flows over both tunnels (bgp_ecmp); use both for the way back too:",
        );
        o.line("  maximum-paths 2");
    } else if tunnels.len() > 1 {
        o.comment(
            2,
            "Tunnel 1 is preferred by vpngw; both sessions stay up for a fast failover.",
        );
    }
    o.line(" exit-address-family");
    o.line("exit");
}
