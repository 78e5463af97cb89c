//! What the engine reports to its driver.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crypto::{DhGroup, Encr, Integ, Prf};

use crate::config::PeerId;
use crate::keys::Key;
use crate::ts::TsRange;

/// A datagram to send. When either port is 4500 the IO layer prepends the 4-byte
/// non-ESP marker (RFC 3948 §2.2) to `payload`; on port 500 it sends `payload` as is.
#[derive(Clone, PartialEq, Eq)]
pub struct Transmit {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub payload: Vec<u8>,
}

impl fmt::Debug for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Transmit({} -> {}, {} bytes)",
            self.local,
            self.remote,
            self.payload.len()
        )
    }
}

/// The negotiated IKE SA algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IkeAlgorithms {
    pub encr: Encr,
    pub integ: Option<Integ>,
    pub prf: Prf,
    pub dh: DhGroup,
}

impl fmt::Display for IkeAlgorithms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::config::suite_name(
            self.encr,
            self.integ,
            Some(self.prf),
            Some(self.dh),
        ))
    }
}

/// Everything the ESP layer needs for one Child SA (a pair of ESP SAs).
#[derive(Clone, PartialEq, Eq)]
pub struct ChildSa {
    /// SPI the peer puts on packets to us.
    pub spi_in: u32,
    /// SPI we put on packets to the peer.
    pub spi_out: u32,
    pub encr: Encr,
    /// `None` with AEAD ciphers.
    pub integ: Option<Integ>,
    /// For AES-GCM the encryption keys include the 4-byte salt (RFC 4106 §8.1).
    pub encr_key_in: Key,
    pub encr_key_out: Key,
    pub integ_key_in: Key,
    pub integ_key_out: Key,
    /// Negotiated (possibly narrowed) selectors: our side and the peer's side.
    pub local_ts: Vec<TsRange>,
    pub remote_ts: Vec<TsRange>,
    /// Current IKE addresses; ESP goes between the same IPs (port 4500 if `udp_encap`).
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// ESP in UDP (RFC 3948) because a NAT was detected.
    pub udp_encap: bool,
    /// We are behind a NAT: the driver should send NAT keepalives (RFC 3948 §2.3).
    pub local_behind_nat: bool,
    pub pfs: Option<DhGroup>,
    /// Configured lifetime (zero: none); the engine rekeys before it.
    pub lifetime: Duration,
}

impl fmt::Debug for ChildSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSa")
            .field("spi_in", &format_args!("{:08x}", self.spi_in))
            .field("spi_out", &format_args!("{:08x}", self.spi_out))
            .field("encr", &self.encr)
            .field("integ", &self.integ)
            .field("keys", &"<redacted>")
            .field("local_ts", &crate::ts::list_to_string(&self.local_ts))
            .field("remote_ts", &crate::ts::list_to_string(&self.remote_ts))
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("udp_encap", &self.udp_encap)
            .finish()
    }
}

impl ChildSa {
    /// `aes128-sha1` style name.
    pub fn algorithms(&self) -> String {
        crate::config::suite_name(self.encr, self.integ, None, self.pfs)
    }
}

/// Which negotiation phase failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// IKE SA (IKE_SA_INIT, IKE_AUTH authentication).
    Phase1,
    /// Child SA (IKE_AUTH's child part, CREATE_CHILD_SA).
    Phase2,
}

/// Why an IKE SA went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteReason {
    /// The peer sent a Delete.
    PeerDeleted,
    /// We deleted it (remove_peer, reset, hard lifetime, authentication failure).
    LocalRequest,
    /// Replaced by a rekeyed IKE SA (its Child SAs moved to the new one).
    Rekeyed,
    /// The peer stopped answering (retransmissions or DPD timed out).
    PeerDead,
    /// The peer re-authenticated with INITIAL_CONTACT (RFC 7296 §2.4).
    InitialContact,
    /// Negotiation failed before the SA was established.
    Failed,
    /// Both ends initiated at once and this was the redundant one of the two IKE SAs
    /// (the one made with the lowest nonce, as RFC 7296 §2.8.1 resolves rekey
    /// collisions); the other IKE SA with the same peer stays.
    Duplicate,
    /// The peer deleted it while another established IKE SA with it carries Child SAs,
    /// which stays: what a peer that re-authenticates make-before-break does (RFC 7296
    /// §2.8.3).
    Reauthenticated,
}

/// Severity of a [`Event::Log`] line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        })
    }
}

/// Outputs of [`crate::Endpoint::poll_event`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    IkeSaEstablished {
        peer: PeerId,
        spi_i: u64,
        spi_r: u64,
        /// Whether we were the initiator.
        initiator: bool,
        algorithms: IkeAlgorithms,
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// An IKE SA was replaced (RFC 7296 §2.18); its Child SAs now live under the new one.
    IkeSaRekeyed {
        peer: PeerId,
        old: (u64, u64),
        new: (u64, u64),
    },
    IkeSaDeleted {
        peer: PeerId,
        spi_i: u64,
        spi_r: u64,
        reason: DeleteReason,
    },
    ChildSaEstablished {
        peer: PeerId,
        child: ChildSa,
        /// We initiated the exchange that created `child`. A new Child SA can come
        /// beside one that carries the same traffic (the peer re-authenticated, RFC 7296
        /// §2.8.3, and builds the new IKE SA before deleting the old): then the same
        /// rule as for [`Event::ChildSaRekeyed`] says which end may send on it at once.
        initiator: bool,
    },
    /// IKEv1 Quick Mode responder (RFC 2409 §5.5): install `child`'s *inbound* SA now,
    /// and do not send on it yet. The initiator may install both directions as soon
    /// as it has our message 2 and send on the new SA before its message 3 reaches us
    /// (strongSwan does); without the inbound SA those packets would be lost. When
    /// message 3 arrives, [`Event::ChildSaEstablished`] or [`Event::ChildSaRekeyed`]
    /// with the same `spi_in` follows; when it never does, [`Event::ChildSaDeleted`].
    ChildSaPending { peer: PeerId, child: ChildSa },
    /// Make-before-break: install `child`'s inbound SA now; the old SA stays valid
    /// until its [`Event::ChildSaDeleted`] follows.
    ///
    /// When to send on the new SA depends on who can know that the peer has installed
    /// its inbound side. IKEv2 (RFC 7296 §2.8): the responder installs both directions
    /// before it answers CREATE_CHILD_SA, so the rekey *initiator* (`initiator: true`)
    /// may send on the new SA at once; the *responder* only learns it when the
    /// initiator deletes the old SA (or sends on the new one), and should keep sending
    /// on the old SA until then. IKEv1 Quick Mode (RFC 2409 §5.5) is the other way
    /// round: the responder's inbound SA is in place from message 2 on
    /// ([`Event::ChildSaPending`]) and this event comes on message 3, which the
    /// initiator sends after installing both directions, so the responder may switch
    /// at once and the initiator should wait.
    ChildSaRekeyed {
        peer: PeerId,
        old_spi_in: u32,
        old_spi_out: u32,
        child: ChildSa,
        /// We initiated the exchange that created `child`.
        initiator: bool,
    },
    ChildSaDeleted {
        peer: PeerId,
        spi_in: u32,
        spi_out: u32,
    },
    /// NAT-T moved the IKE SA (and its Child SAs) to new addresses/ports.
    AddressesChanged {
        peer: PeerId,
        local: SocketAddr,
        remote: SocketAddr,
        udp_encap: bool,
    },
    /// Retransmissions or a liveness check went unanswered; the IKE SA is gone. Comes
    /// after the [`Event::IkeSaDeleted`] of that SA: it is the verdict to show.
    PeerDead {
        peer: PeerId,
        /// Operator-readable, e.g. "DPD: peer 192.0.2.1:500 did not answer for 130 s".
        reason: String,
    },
    NegotiationFailed {
        peer: PeerId,
        phase: Phase,
        reason: String,
    },
    /// Our first exchange with the peer (IKE_SA_INIT or IKE_AUTH; IKEv1 Main or
    /// Aggressive Mode) is still unanswered after a few retransmissions. `reason` says
    /// so and what to check, for the status while the negotiation goes on; a reply, a
    /// [`Event::NegotiationFailed`] or an established SA replaces it.
    Unanswered { peer: PeerId, reason: String },
    /// A line for the connection's negotiation log.
    Log {
        peer: PeerId,
        level: Level,
        event: &'static str,
        message: String,
    },
}

/// Counters of [`crate::Endpoint::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Undecodable messages (bad header, payload chain, inner payloads).
    pub malformed: u64,
    /// SK payloads whose ICV did not verify.
    pub integrity_failures: u64,
    /// Messages for IKE SAs we do not have.
    pub unknown_spi: u64,
    /// Requests outside the window and responses to nothing outstanding (or copies of
    /// a response that waits for its offloaded shared secret).
    pub unexpected: u64,
    /// Duplicate requests answered from the response cache, or dropped while the first
    /// copy waits for its offloaded shared secret.
    pub duplicate_requests: u64,
    pub retransmits: u64,
    /// IKE_SA_INIT requests no configured peer could take.
    pub no_peer: u64,
    /// DH key pairs taken ready-made from the [`crate::KeySource`].
    pub dh_keys_ready: u64,
    /// DH key pairs made by the endpoint itself (no key source, or none ready).
    pub dh_keys_inline: u64,
    /// Shared secrets handed to the [`crate::DhOffload`] (IKE_SA_INIT, CREATE_CHILD_SA
    /// with a KE payload, IKEv1 Main, Aggressive and Quick Mode).
    pub dh_offloaded: u64,
    /// Offloaded results that came back for an SA already gone (timed out, deleted).
    pub dh_stale: u64,
    /// Requests (the peer's IKE_AUTH) that arrived before their IKE SA's offloaded keys
    /// and were kept until they were ready.
    pub dh_held: u64,
    /// IKE_SA_INIT requests answered with a COOKIE instead of state, because the
    /// responder had [`crate::EndpointConfig::cookie_threshold`] half-open IKE SAs
    /// (RFC 7296 §2.6).
    pub cookies_sent: u64,
    /// IKE_SA_INIT requests whose COOKIE did not verify (forged, or made with a secret
    /// already retired); answered like requests without one.
    pub cookies_invalid: u64,
    /// Requests that would have started a negotiation (IKE_SA_INIT, IKEv1 Main or
    /// Aggressive Mode message 1), dropped because
    /// [`crate::EndpointConfig::half_open_limit`] responder SAs were half-open; and
    /// IKEv1 Quick Mode message 1s dropped because 16 Quick Modes the peer started on
    /// that ISAKMP SA were still in progress.
    pub half_open_limited: u64,
    /// First messages (IKE_SA_INIT, IKEv1 Main or Aggressive Mode message 1) refused
    /// with a notification: no acceptable proposal, the other IKE version or mode, an
    /// ID no tunnel expects. Each tunnel logs one as a failure at most every 10 s.
    pub refused: u64,
}
