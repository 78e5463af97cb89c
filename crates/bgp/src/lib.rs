//! A sans-IO BGP-4 speaker (RFC 4271) for eBGP over IPsec tunnels.
//!
//! Each tunnel with BGP carries one eBGP session between the tunnel's
//! local BGP address and the peer's, in a 169.254.x.x/30. This crate is the
//! protocol only: it never opens a socket, reads a clock or spawns a task.
//! The node runs the TCP connection (port 179) and feeds this engine.
//!
//! # Layers
//!
//! - [`Message`] and friends: the codec (RFC 4271 §4, RFC 5492
//!   capabilities, RFC 6793 4-octet AS, RFC 4760 IPv4 unicast, RFC 2918
//!   route refresh). Session-resetting errors are [`DecodeError`]s mapping
//!   to the NOTIFICATION of RFC 4271 §6 ([`DecodeError::notification`]);
//!   RFC 7606 treat-as-withdraw and attribute-discard errors are
//!   [`AttrError`]s inside the decoded [`Update`].
//! - [`fsm::fsm_event`]: the RFC 4271 §8 state machine as a pure function
//!   `(State, Event) -> (State, Vec<Action>)`.
//! - [`Session`]: one neighbor, in the quinn-proto style described below.
//! - [`Rib`]: Loc-RIB over all sessions (decision process, loop detection,
//!   ECMP) producing [`RibDiff`]s for the gateway route table.
//!
//! # Driving a [`Session`]
//!
//! ```text
//! let mut s = Session::new(Config::new(local_ip, peer_ip, peer_asn));
//! s.start(now);                          // ManualStart
//! s.advertise(now, &[vpc_cidr]);         // networks the gateway originates
//! s.advertise_learned(now, &routes);   // routes of other peers (our AS prepended)
//! loop {
//!     // 1. inputs, whichever happened:
//!     s.handle_connected(now);           // TCP to/from peer_ip:179 is up
//!     s.handle_bytes(now, &buf[..n]);    // any segmentation
//!     s.handle_closed(now);              // connect failed / EOF / reset
//!     s.handle_timeout(now);             // at or after poll_timeout()
//!     // 2. outputs, in this order:
//!     while let Some(bytes) = s.poll_transmit() { tcp.write_all(&bytes) }
//!     while let Some(ev) = s.poll_event() { match ev {
//!         Event::Connect => start a TCP connect to peer_ip:179,
//!         Event::Close => close the TCP connection (already written),
//!                         or cancel a pending connect,
//!         Event::Established { peer_asn, hold_time, router_id } => rib.set_peer(..),
//!         Event::RoutesChanged(ch) => install(rib.apply(peer_id, &ch)),
//!         Event::Down { reason } => report reason (operator-readable),
//!         Event::Log(l) => keep in the session's log,
//!     }}
//!     sleep until s.poll_timeout() or IO
//! }
//! ```
//!
//! Transmit is drained before events so a NOTIFICATION is written before the
//! [`Event::Close`] that follows it is acted on. The engine uses one TCP
//! connection at a time: in [`fsm::Mode::Active`] it asks for an outgoing
//! connection with [`Event::Connect`]; the driver may also hand it an
//! accepted incoming connection (from the configured peer address only)
//! while it is in `Connect`/`Active` state. A connection offered in `Idle`
//! (for instance during the idle hold after a failure) gets [`Event::Close`].
//! RFC 4271 §6.8 collision detection: a driver that has both an outgoing and
//! an incoming connection with the peer runs a second [`Session`] on the
//! second connection and asks [`collision::resolve`] which one to close
//! ([`Session::collision_dump`], Cease 6/7); the connection initiated by the
//! speaker with the higher BGP Identifier stays. Running one side passive
//! ([`fsm::Mode::Passive`]) avoids collisions entirely.
//!
//! Timers: ConnectRetry (`Config::connect_retry`), Hold (negotiated as the
//! smaller of both OPENs; 240 s while waiting for the OPEN), Keepalive
//! (at most a third of the hold time; none when the hold time is 0) and an
//! idle hold before an automatic restart after a failure. Defaults match the
//! documented FRR peer (`timers 10 30`): hold 30 s, keepalive 10 s, local
//! AS 45104.
//!
//! After a session goes down, everything learned from it is withdrawn with
//! an [`Event::RoutesChanged`] before the [`Event::Down`].
//!
//! # Conformance
//!
//! | RFC | what | here |
//! |---|---|---|
//! | 4271 | BGP-4 | messages, §6 errors, §8 FSM (no DelayOpen, no DampPeerOscillations), §6.8 collision detection ([`collision`]: one session per connection, the driver resolves), §9.1 decision process for eBGP, §9.2 Adj-RIB-Out with originated and re-advertised routes ([`Session::advertise_learned`], attributes per §5.1: [`PathAttrs::exported`]) |
//! | 7606 | revised UPDATE error handling | treat-as-withdraw, attribute discard, session reset as §3–§7 say |
//! | 5492 | capabilities | unknown capabilities kept; capability-less peers accepted |
//! | 6793 | 4-octet AS | capability, AS_TRANS in My AS, 4-octet AS_PATH/AGGREGATOR; AS4_PATH sent to 2-octet peers, AS4_PATH/AS4_AGGREGATOR from them merged (§4.2.3) |
//! | 4760 | multiprotocol | IPv4 unicast MP_REACH/MP_UNREACH decoded; other families carried raw, never negotiated |
//! | 2918 | route refresh | answered, and [`Session::request_refresh`] |
//! | 1997 | communities | decoded and kept |
//! | 4486 | Cease subcodes | prefix limit (6/1), shutdown (6/2) |
//! | 9003 | shutdown communication | sent by [`Session::shutdown`], shown in `Down` reasons |
//! | 6608 | FSM error subcodes | 5/1, 5/2, 5/3 |
//!
//! Not implemented: graceful restart, ADD-PATH, extended messages (RFC 8654),
//! extended optional parameters (RFC 9072), TCP-MD5/TCP-AO (a socket option,
//! the driver's job), MinRouteAdvertisementInterval (our UPDATEs are sent as
//! soon as the origin set changes).

mod codec;
pub mod collision;
pub mod debug;
pub mod error;
pub mod fsm;
#[doc(hidden)]
pub mod fuzz;
pub mod message;
pub mod rib;
mod session;
pub mod update;

pub use debug::LogEvent;
pub use error::{AttrError, AttrErrorKind, DecodeError, ErrorAction, OpenError, UpdateError};
pub use fsm::{Mode, State};
pub use ipnet::Ipv4Net;
pub use message::{
    Capability, Ctx, Framer, Message, MessageType, Notification, Open, RouteRefresh,
};
pub use rib::{PeerId, PeerInfo, Rib, RibConfig, RibDiff, Route, Selected, most_preferred};
pub use session::{
    Config, ConfigError, DEFAULT_LOCAL_ASN, DownReason, Event, RouteChanges, Session, Stats,
};
pub use update::{
    Aggregator, AsPath, AsSegment, MpNlri, MpReach, Origin, PathAttrs, RawAttr, Update,
};
