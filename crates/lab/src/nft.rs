//! nftables helpers: cut IPsec to or from an address (failover tests) and masquerade
//! (NAT traversal tests).
//!
//! The kernel has no netem (LAB.md), so outages are made by dropping packets. The rules
//! live in a table `inet lab` of the namespace; two sets, `ipsec_from` and `ipsec_to`,
//! list the addresses whose IKE (UDP 500/4500, either port, since a NAT may have moved
//! one of them) and ESP packets are dropped, so blocking and restoring is adding and
//! removing a set element.

use crate::error::Result;
use crate::netns::Netns;

const FILTER_TABLE: &str = "
table inet lab {
  set ipsec_from { type ipv4_addr; }
  set ipsec_to { type ipv4_addr; }
  chain prerouting {
    type filter hook prerouting priority raw; policy accept;
    ip saddr @ipsec_from udp sport { 500, 4500 } drop
    ip saddr @ipsec_from udp dport { 500, 4500 } drop
    ip saddr @ipsec_from ip protocol esp drop
    ip daddr @ipsec_to udp sport { 500, 4500 } drop
    ip daddr @ipsec_to udp dport { 500, 4500 } drop
    ip daddr @ipsec_to ip protocol esp drop
  }
  chain output {
    type filter hook output priority raw; policy accept;
    ip saddr @ipsec_from udp sport { 500, 4500 } drop
    ip saddr @ipsec_from udp dport { 500, 4500 } drop
    ip saddr @ipsec_from ip protocol esp drop
    ip daddr @ipsec_to udp sport { 500, 4500 } drop
    ip daddr @ipsec_to udp dport { 500, 4500 } drop
    ip daddr @ipsec_to ip protocol esp drop
  }
}
";

/// Runs an nft script inside `ns` (`nft -f -`).
pub fn nft(ns: &Netns, script: &str) -> Result<()> {
    let mut cmd = ns.command("nft");
    cmd.args(["-f", "-"]);
    crate::cmd::run_with_input(&mut cmd, script).map(drop)
}

/// Lists the ruleset of `ns` (for diagnosis and counters).
pub fn ruleset(ns: &Netns) -> Result<String> {
    ns.exec(&["nft", "list", "ruleset"])
}

/// Drops IKE and ESP packets coming from `addr` that pass through or originate in `ns`.
pub fn drop_ipsec_from(ns: &Netns, addr: &str) -> Result<()> {
    set_element(ns, "add", "ipsec_from", addr)
}

/// Undoes [`drop_ipsec_from`].
pub fn restore_ipsec_from(ns: &Netns, addr: &str) -> Result<()> {
    set_element(ns, "delete", "ipsec_from", addr)
}

/// Drops IKE and ESP packets going to `addr` that pass through or originate in `ns`.
pub fn drop_ipsec_to(ns: &Netns, addr: &str) -> Result<()> {
    set_element(ns, "add", "ipsec_to", addr)
}

/// Undoes [`drop_ipsec_to`].
pub fn restore_ipsec_to(ns: &Netns, addr: &str) -> Result<()> {
    set_element(ns, "delete", "ipsec_to", addr)
}

/// Source-NATs everything leaving `ns` through `out_if` to that interface's address.
pub fn masquerade(ns: &Netns, out_if: &str) -> Result<()> {
    nft(
        ns,
        &format!(
            "table ip lab_nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"{out_if}\" masquerade
  }}
}}
"
        ),
    )
}

fn set_element(ns: &Netns, op: &str, set: &str, addr: &str) -> Result<()> {
    // `add table` and friends are idempotent in nft scripts; declaring the table again
    // is not, so only create it when it is missing.
    if ns.exec(&["nft", "list", "table", "inet", "lab"]).is_err() {
        nft(ns, FILTER_TABLE)?;
    }
    nft(ns, &format!("{op} element inet lab {set} {{ {addr} }}\n"))
}
