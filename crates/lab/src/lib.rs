//! The interop lab: real peers (strongSwan, FRR, iperf3) in Linux network namespaces,
//! built by tests and torn down on Drop.
//!
//! Other crates use it as a dev-dependency (`lab = { path = "../lab" }`) to prove
//! vpngw against real implementations. It needs root, the Debian packages that
//! `scripts/test` installs (strongswan-charon, strongswan-swanctl,
//! libcharon-extra-plugins, libstrongswan-extra-plugins, frr, iperf3, iproute2,
//! iputils-ping, nftables) and a kernel with network namespaces, veth, TUN and nftables.
//! The machines have no kernel ESP, so strongSwan runs its userspace `kernel-libipsec`
//! (ESP always in UDP 4500).
//!
//! # Pieces
//!
//! - [`Netns`]: a uniquely named namespace (`<prefix>-<pid>-<n>`) with `lo` up; [`veth`]
//!   pairs, addresses, routes, forwarding, [`Netns::run_in`] to run in-process code
//!   (binding sockets) inside it. Dropping it kills what still runs inside and deletes it.
//! - [`Process`]: a spawned program whose output goes to files; SIGTERM, SIGKILL after
//!   [`process::TERM_GRACE`], reaped on Drop; log tails printed if the test panics.
//! - [`StrongSwan`]: a charon with a private `/run`, its own strongswan.conf and vici
//!   socket; [`SwanctlConn`]/[`SwanctlChild`] + [`swanctl::render`] write swanctl.conf;
//!   [`StrongSwan::list_sas`] parses IKE/CHILD SA state into [`SaInfo`].
//! - [`starter::Starter`]: strongSwan's legacy stack (starter + stroke) loading an
//!   ipsec.conf and ipsec.secrets, for the `ipsec-conf` peer-config download.
//! - [`Frr`]: a bgpd (`-N <ns> -Z`) configured from a [`BgpConfig`], driven by vtysh.
//! - [`traffic`]: [`ping`], [`PingMonitor`] (loss intervals during failover),
//!   [`Iperf3Server`]/[`iperf3_client`].
//! - [`nft`]: drop/restore IKE+ESP from or to an address, masquerade.
//! - [`Topology`]: the standard lab `vpc — gw — inet — [nat —] onprem` (addresses in
//!   [`topology`]'s docs and [`TopologyConfig`]).
//! - [`Vpngw`]: `vpngw serve` started in a namespace and driven over its HTTP API with
//!   the admin token it writes; tunnel status polling with bounded waits.
//! - [`Workdir`]: the per-test directory for configs and logs, kept when a test fails
//!   (or when `VPNGW_LAB_KEEP` is set).
//!
//! Every wait is bounded ([`wait_until`], [`cmd::COMMAND_TIMEOUT`] for each helper
//! command); errors are [`LabError`] values carrying the command and its stderr.
//!
//! # Example: strongSwan on-premises, the gateway side under test
//!
//! ```no_run
//! use std::time::Duration;
//! use lab::{StrongSwan, SwanctlChild, SwanctlConn, Topology, swanctl};
//!
//! # fn main() -> lab::Result<()> {
//! let topo = Topology::new()?;
//! // On-premises peer: initiates to the gateway's tunnel-1 address.
//! let onprem = StrongSwan::start(&topo.onprem, &topo.workdir.subdir("onprem-swan")?)?;
//! let conn = SwanctlConn {
//!     proposals: vec!["aes128-sha1-modp1024".into()],
//!     ..SwanctlConn::psk("vpn", topo.onprem_local_ip(), "192.0.2.1", "lab-psk")
//! }
//! .child(SwanctlChild {
//!     esp_proposals: vec!["aes128-sha1-modp1024".into()],
//!     ..SwanctlChild::new("net", "10.2.0.0/24", "172.16.1.0/24")
//! });
//! onprem.load(&swanctl::render(&[conn]))?;
//!
//! // ... start the vpngw node in `topo.gw` (e.g. with `topo.gw.spawn_thread(..)`) ...
//!
//! onprem.initiate("net")?;
//! let sa = onprem.wait_established("vpn", Duration::from_secs(20))?;
//! assert!(sa.child("net").is_some());
//! let r = lab::ping(&topo.vpc, topo.vpc_ip(), "10.2.0.1", 3, Duration::from_secs(5))?;
//! assert_eq!(r.received, 3);
//! # Ok(())
//! # }
//! ```
//!
//! Drop order matters only for diagnostics: declare peers (`StrongSwan`, `Frr`,
//! `Process`) after the `Topology` so they drop first and their logs are still in the
//! work directory when a panicking test prints them.

pub mod cmd;
pub mod error;
pub mod frr;
pub mod netns;
pub mod nft;
pub mod process;
pub mod starter;
pub mod strongswan;
pub mod swanctl;
pub mod topology;
pub mod traffic;
pub mod vpngw;
pub mod workdir;

pub use cmd::wait_until;
pub use error::{LabError, Result};
pub use frr::{BgpConfig, Frr};
pub use netns::{Netns, list_netns, veth};
pub use process::Process;
pub use strongswan::{ChildSaInfo, SaInfo, StrongSwan};
pub use swanctl::{SwanctlChild, SwanctlConn};
pub use topology::{NatConfig, Topology, TopologyConfig};
pub use traffic::{
    Iperf3Result, Iperf3Server, LossInterval, PingMonitor, PingReport, PingResult, iperf3_client,
    ping, wait_ping,
};
pub use vpngw::{ApiClient, Vpngw, VpngwConfig};
pub use workdir::Workdir;
