//! Sans-IO IKEv2 (RFC 7296) for vpngw: codec, proposals, key derivation and the IKE/Child
//! SA state machines, with no sockets, clocks or threads.
//!
//! # Driving an [`Endpoint`]
//!
//! The API follows quinn-proto's four parts:
//!
//! * **Commands**: [`Endpoint::add_peer`], [`Endpoint::update_peer`] (renegotiates if the
//!   configuration changed), [`Endpoint::remove_peer`] (deletes the peer's SAs with an
//!   INFORMATIONAL Delete), [`Endpoint::initiate`], [`Endpoint::reset`],
//!   [`Endpoint::rekey_child`], [`Endpoint::rekey_ike`].
//! * **Inputs**: [`Endpoint::handle_datagram`]`(now, local, remote, bytes)` for every UDP
//!   datagram received on port 500 or 4500 (on 4500, strip the 4-byte non-ESP marker
//!   first; datagrams whose first four bytes are non-zero are ESP and do not belong
//!   here), and [`Endpoint::handle_timeout`]`(now)` when the time returned by
//!   [`Endpoint::poll_timeout`] has come. [`Endpoint::handle_child_activity`] reports
//!   inbound ESP traffic so that DPD only probes idle peers. With a [`DhOffload`]
//!   ([`Endpoint::set_dh_offload`]), run each [`DhJob`] it receives on any thread and
//!   feed the result to [`Endpoint::handle_dh_done`].
//! * **Outputs**: after any input or command, drain [`Endpoint::poll_transmit`] (send
//!   `payload` from `local` to `remote`; when either port is 4500, prepend the 4-byte
//!   zero non-ESP marker, RFC 3948 §2.2), [`Endpoint::poll_event`], and re-arm one timer
//!   at [`Endpoint::poll_timeout`].
//! * **Getters**: [`Endpoint::stats`], [`Endpoint::ike_sas`], [`Endpoint::child_sas`].
//!
//! Time is whatever `Instant` the driver passes; randomness comes from the injected
//! [`crypto::Random`]. Malformed or hostile input never panics: it is dropped and
//! counted in [`Stats`].
//!
//! # Events for the ESP layer
//!
//! [`Event::ChildSaEstablished`] carries a [`ChildSa`] with SPIs, algorithms, the four
//! keys (KEYMAT split per RFC 7296 §2.17), selectors, addresses and whether ESP is
//! UDP-encapsulated. Rekeying is make-before-break: [`Event::ChildSaRekeyed`] announces
//! the new SA while the old one stays valid until its [`Event::ChildSaDeleted`]; its
//! `initiator` flag tells when sending on the new SA is safe (at once for the IKEv2
//! rekey initiator; for the responder once the old SA is deleted or the peer uses the
//! new one). [`Event::AddressesChanged`] moves every Child SA of the peer (NAT-T).
//! [`Event::NegotiationFailed`] carries an operator-readable reason, and
//! [`Event::Log`] lines feed the connection's negotiation log. After
//! [`Event::PeerDead`] or [`Event::IkeSaDeleted`] the endpoint does not renegotiate on
//! its own: the driver calls [`Endpoint::initiate`] when the tunnel should come back.
//!
//! # Scope
//!
//! PSK authentication, one Child SA per IKE_AUTH plus rekeys, IPv4 selectors, NAT-T,
//! DPD, COOKIE and INVALID_KE handling as initiator, simultaneous rekey resolution
//! (RFC 7296 §2.8.1) and the same lowest-nonce rule for IKE SAs both ends initiated at
//! once ([`DeleteReason::Duplicate`]). No fragmentation (RFC 7383), no certificates,
//! no EAP, no CP.

pub mod config;
mod cookie;
mod encap;
mod endpoint;
pub mod event;
mod exchange;
#[doc(hidden)]
pub mod fuzz;
pub mod keys;
mod offload;
pub mod proposal;
mod sa;
pub mod sk;
mod table;
pub mod ts;
pub mod v1;
pub mod wire;

pub use config::{
    EspProposal, Identity, IkeProposal, IkeVersion, Ipv4Cidr, PeerConfig, PeerId, Psk, V1Mode,
};
pub use encap::{EspEncap, VENDOR_ID as VPNGW_VENDOR_ID};
pub use endpoint::{Endpoint, EndpointConfig, Error, KeySource};
pub use event::{ChildSa, DeleteReason, Event, IkeAlgorithms, Level, Phase, Stats, Transmit};
pub use keys::Key;
pub use offload::{DhDone, DhJob, DhOffload};
pub use ts::TsRange;
