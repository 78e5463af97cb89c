//! Everything the engine logs, in one enum: the driver gets each as
//! [`crate::Event::Log`] (to keep as the session's negotiation log) and the
//! engine also emits it through `tracing` inside the neighbor's span.

use std::fmt;

use crate::error::{AttrError, DecodeError};
use crate::fsm::State;
use crate::message::Notification;

/// A loggable happening in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// FSM transition (RFC 4271 §8) and the event that caused it.
    StateChange {
        from: State,
        to: State,
        event: String,
    },
    NotificationSent(Notification),
    NotificationReceived(Notification),
    /// A message that could not be decoded; a NOTIFICATION follows.
    DecodeError(DecodeError),
    /// RFC 7606: an UPDATE's NLRI treated as withdrawn.
    TreatAsWithdraw {
        error: AttrError,
        prefixes: usize,
    },
    /// RFC 7606: one attribute dropped, the UPDATE otherwise used.
    AttributeDiscarded(AttrError),
    /// Bytes arrived while no connection is in use (dropped).
    BytesIgnored {
        len: usize,
        state: State,
    },
    /// The peer asked for a ROUTE-REFRESH of a family we did not negotiate.
    RouteRefreshIgnored {
        afi: u16,
        safi: u8,
    },
}

/// How loud a [`LogEvent`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
}

impl LogEvent {
    pub fn level(&self) -> Level {
        match self {
            Self::StateChange { to, .. } if *to == State::Established || *to == State::Idle => {
                Level::Info
            }
            Self::StateChange { .. }
            | Self::BytesIgnored { .. }
            | Self::RouteRefreshIgnored { .. } => Level::Debug,
            Self::NotificationSent(_) | Self::NotificationReceived(_) => Level::Warn,
            Self::DecodeError(_) | Self::TreatAsWithdraw { .. } | Self::AttributeDiscarded(_) => {
                Level::Warn
            }
        }
    }

    pub(crate) fn trace(&self) {
        match self.level() {
            Level::Debug => tracing::debug!("{self}"),
            Level::Info => tracing::info!("{self}"),
            Level::Warn => tracing::warn!("{self}"),
        }
    }
}

impl fmt::Display for LogEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StateChange { from, to, event } => write!(f, "{from} -> {to} on {event}"),
            Self::NotificationSent(n) => write!(f, "sent NOTIFICATION {n}"),
            Self::NotificationReceived(n) => write!(f, "received NOTIFICATION {n}"),
            Self::DecodeError(e) => write!(f, "malformed message from peer: {e}"),
            Self::TreatAsWithdraw { error, prefixes } => {
                write!(f, "UPDATE with {prefixes} prefixes: {error}")
            }
            Self::AttributeDiscarded(e) => write!(f, "UPDATE: {e}"),
            Self::BytesIgnored { len, state } => write!(f, "ignored {len} bytes in state {state}"),
            Self::RouteRefreshIgnored { afi, safi } => {
                write!(
                    f,
                    "ignored ROUTE-REFRESH for AFI {afi} SAFI {safi} (not negotiated)"
                )
            }
        }
    }
}
