//! Decode errors, shaped by the NOTIFICATION they cause (RFC 4271 §6) and by
//! RFC 7606 revised error handling (session reset vs. treat-as-withdraw vs.
//! attribute discard).
//!
//! Errors that reset the session are [`DecodeError`]s and map to a
//! [`Notification`] through [`DecodeError::notification`]. Attribute errors
//! that RFC 7606 handles without a reset are [`AttrError`]s carried inside
//! the decoded [`crate::Update`].

use std::fmt;
use std::net::Ipv4Addr;

use crate::message::Notification;

/// NOTIFICATION error codes (RFC 4271 §4.5, RFC 2918/7313, RFC 6608).
pub mod code {
    pub const MESSAGE_HEADER: u8 = 1;
    pub const OPEN_MESSAGE: u8 = 2;
    pub const UPDATE_MESSAGE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    pub const ROUTE_REFRESH: u8 = 7;
}

/// An error that resets the session: the NOTIFICATION to send is
/// [`DecodeError::notification`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// RFC 4271 §6.1: marker not all ones (1/1).
    #[error("message header marker is not all ones (connection not synchronized)")]
    ConnectionNotSynchronized,
    /// RFC 4271 §6.1: length field outside 19..4096 or wrong for the type (1/2).
    #[error("bad message length {0}")]
    BadMessageLength(u16),
    /// RFC 4271 §6.1: unknown message type (1/3).
    #[error("bad message type {0}")]
    BadMessageType(u8),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// RFC 7313 §5: ROUTE-REFRESH whose length is not 23 (7/1).
    #[error("ROUTE-REFRESH message with invalid length {0}")]
    RouteRefreshLength(u16),
}

/// OPEN message errors (RFC 4271 §6.2, RFC 5492, RFC 6793).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("peer speaks BGP version {0}, we support only version 4")]
    UnsupportedVersion(u8),
    #[error("peer announced AS {received} but this session expects AS {expected}")]
    BadPeerAs { expected: u32, received: u32 },
    #[error("peer BGP identifier {0} is not acceptable")]
    BadBgpIdentifier(Ipv4Addr),
    #[error("unsupported optional parameter type {0}")]
    UnsupportedOptionalParameter(u8),
    #[error("unacceptable hold time {0} s (must be 0 or at least 3)")]
    UnacceptableHoldTime(u16),
    #[error("malformed OPEN message: {0}")]
    Malformed(&'static str),
}

/// UPDATE errors that RFC 7606 still handles with a session reset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// RFC 4271 §6.3 / RFC 7606 §4: the withdrawn-routes or total-attribute
    /// length does not fit the message, or MP_REACH/MP_UNREACH repeat
    /// (RFC 7606 §3 g) (3/1).
    #[error("malformed attribute list: {0}")]
    MalformedAttributeList(&'static str),
    /// RFC 4271 §6.3: a well-known attribute we do not know (3/2). The data
    /// is the offending attribute (type, length and value).
    #[error("unrecognized well-known attribute type {type_code}")]
    UnrecognizedWellKnown { type_code: u8, data: Vec<u8> },
    /// RFC 4271 §6.3 / RFC 7606 §5.3: a prefix in withdrawn routes, NLRI or
    /// IPv4 MP NLRI that cannot be parsed (3/10).
    #[error("invalid network field: {0}")]
    InvalidNetworkField(&'static str),
}

/// How RFC 7606 says a malformed attribute is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// RFC 7606 §2: the UPDATE's NLRI are treated as withdrawn.
    TreatAsWithdraw,
    /// RFC 7606 §2: only the malformed attribute is dropped.
    AttributeDiscard,
}

/// A malformed path attribute handled without a session reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrError {
    pub type_code: u8,
    pub kind: AttrErrorKind,
    pub action: ErrorAction,
}

/// What was wrong with the attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrErrorKind {
    /// RFC 7606 §3 c: optional/transitive bits in conflict with the type.
    Flags(u8),
    /// The length does not fit the attribute type.
    Length(usize),
    /// RFC 7606 §4: attribute runs past the total attribute length, or too
    /// few octets remain for an attribute header.
    Overrun,
    /// RFC 7606 §7.1: ORIGIN value not 0, 1 or 2.
    InvalidOrigin(u8),
    /// RFC 7606 §7.2: unknown segment type, zero-length or overrunning segment.
    MalformedAsPath,
    /// RFC 7606 §3 d: a well-known mandatory attribute is missing.
    MissingWellKnown,
    /// RFC 7606 §7.3 / RFC 4271 §6.3: NEXT_HOP is not a usable unicast
    /// address (or is our own).
    InvalidNextHop(Ipv4Addr),
    /// RFC 4271 §6.3: the leftmost AS of an eBGP route is not the peer's AS.
    FirstAsNotPeer { expected: u32, found: Option<u32> },
    /// RFC 7606 §7.5: LOCAL_PREF from an external peer.
    LocalPrefFromExternal,
    /// RFC 6793 §4.1: AS4_PATH/AS4_AGGREGATOR from a 4-octet-AS speaker.
    As4FromNewSpeaker,
    /// RFC 7606 §3 g: second occurrence of an attribute.
    Duplicate,
}

impl fmt::Display for AttrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            ErrorAction::TreatAsWithdraw => "treat-as-withdraw",
            ErrorAction::AttributeDiscard => "attribute discarded",
        };
        write!(f, "attribute {} ", self.type_code)?;
        match &self.kind {
            AttrErrorKind::Flags(flags) => write!(f, "has conflicting flags {flags:#04x}")?,
            AttrErrorKind::Length(len) => write!(f, "has invalid length {len}")?,
            AttrErrorKind::Overrun => write!(f, "overruns the path attributes")?,
            AttrErrorKind::InvalidOrigin(v) => write!(f, "has invalid ORIGIN value {v}")?,
            AttrErrorKind::MalformedAsPath => write!(f, "is a malformed AS_PATH")?,
            AttrErrorKind::MissingWellKnown => write!(f, "(well-known mandatory) is missing")?,
            AttrErrorKind::InvalidNextHop(a) => write!(f, "carries unusable next hop {a}")?,
            AttrErrorKind::FirstAsNotPeer { expected, found } => match found {
                Some(found) => write!(f, "starts with AS {found}, not the peer's AS {expected}")?,
                None => write!(f, "is empty, but must start with the peer's AS {expected}")?,
            },
            AttrErrorKind::LocalPrefFromExternal => {
                write!(f, "(LOCAL_PREF) sent by an external peer")?
            }
            AttrErrorKind::As4FromNewSpeaker => write!(f, "(AS4_*) sent by a 4-octet-AS speaker")?,
            AttrErrorKind::Duplicate => write!(f, "appears more than once")?,
        }
        write!(f, ": {action}")
    }
}

impl DecodeError {
    /// The NOTIFICATION that RFC 4271 §6 (with RFC 7606) says to send.
    pub fn notification(&self) -> Notification {
        let (code, subcode, data) = match self {
            Self::ConnectionNotSynchronized => (code::MESSAGE_HEADER, 1, Vec::new()),
            Self::BadMessageLength(len) => (code::MESSAGE_HEADER, 2, len.to_be_bytes().to_vec()),
            Self::BadMessageType(t) => (code::MESSAGE_HEADER, 3, vec![*t]),
            Self::Open(e) => return e.notification(),
            Self::Update(e) => match e {
                UpdateError::MalformedAttributeList(_) => (code::UPDATE_MESSAGE, 1, Vec::new()),
                UpdateError::UnrecognizedWellKnown { data, .. } => {
                    (code::UPDATE_MESSAGE, 2, data.clone())
                }
                UpdateError::InvalidNetworkField(_) => (code::UPDATE_MESSAGE, 10, Vec::new()),
            },
            Self::RouteRefreshLength(_) => (code::ROUTE_REFRESH, 1, Vec::new()),
        };
        Notification {
            code,
            subcode,
            data,
        }
    }
}

impl OpenError {
    /// RFC 4271 §6.2 subcodes.
    pub fn notification(&self) -> Notification {
        let (subcode, data) = match self {
            // RFC 4271 §6.2: data is the largest locally supported version.
            Self::UnsupportedVersion(_) => (1, 4u16.to_be_bytes().to_vec()),
            Self::BadPeerAs { .. } => (2, Vec::new()),
            Self::BadBgpIdentifier(_) => (3, Vec::new()),
            Self::UnsupportedOptionalParameter(_) => (4, Vec::new()),
            Self::UnacceptableHoldTime(_) => (6, Vec::new()),
            Self::Malformed(_) => (0, Vec::new()),
        };
        Notification {
            code: code::OPEN_MESSAGE,
            subcode,
            data,
        }
    }
}

/// Human names for NOTIFICATION code/subcode pairs, used in `Down` reasons.
pub fn notification_name(code: u8, subcode: u8) -> (&'static str, &'static str) {
    let c = match code {
        1 => "Message Header Error",
        2 => "OPEN Message Error",
        3 => "UPDATE Message Error",
        4 => "Hold Timer Expired",
        5 => "Finite State Machine Error",
        6 => "Cease",
        7 => "ROUTE-REFRESH Message Error",
        _ => "Unknown Error",
    };
    let s = match (code, subcode) {
        (_, 0) => "Unspecific",
        (1, 1) => "Connection Not Synchronized",
        (1, 2) => "Bad Message Length",
        (1, 3) => "Bad Message Type",
        (2, 1) => "Unsupported Version Number",
        (2, 2) => "Bad Peer AS",
        (2, 3) => "Bad BGP Identifier",
        (2, 4) => "Unsupported Optional Parameter",
        (2, 6) => "Unacceptable Hold Time",
        (2, 7) => "Unsupported Capability",
        (3, 1) => "Malformed Attribute List",
        (3, 2) => "Unrecognized Well-known Attribute",
        (3, 3) => "Missing Well-known Attribute",
        (3, 4) => "Attribute Flags Error",
        (3, 5) => "Attribute Length Error",
        (3, 6) => "Invalid ORIGIN Attribute",
        (3, 8) => "Invalid NEXT_HOP Attribute",
        (3, 9) => "Optional Attribute Error",
        (3, 10) => "Invalid Network Field",
        (3, 11) => "Malformed AS_PATH",
        (5, 1) => "Receive Unexpected Message in OpenSent State",
        (5, 2) => "Receive Unexpected Message in OpenConfirm State",
        (5, 3) => "Receive Unexpected Message in Established State",
        (6, 1) => "Maximum Number of Prefixes Reached",
        (6, 2) => "Administrative Shutdown",
        (6, 3) => "Peer De-configured",
        (6, 4) => "Administrative Reset",
        (6, 5) => "Connection Rejected",
        (6, 6) => "Other Configuration Change",
        (6, 7) => "Connection Collision Resolution",
        (6, 8) => "Out of Resources",
        (6, 9) => "Hard Reset",
        (7, 1) => "Invalid Message Length",
        _ => "Unknown Subcode",
    };
    (c, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_mapping() {
        let n = DecodeError::BadMessageLength(5000).notification();
        assert_eq!(
            (n.code, n.subcode, n.data.as_slice()),
            (1, 2, &[0x13, 0x88][..])
        );
        let n = DecodeError::BadMessageType(9).notification();
        assert_eq!((n.code, n.subcode, n.data.as_slice()), (1, 3, &[9][..]));
        let n = DecodeError::from(OpenError::UnsupportedVersion(3)).notification();
        assert_eq!((n.code, n.subcode, n.data.as_slice()), (2, 1, &[0, 4][..]));
        let n = DecodeError::from(OpenError::BadPeerAs {
            expected: 1,
            received: 2,
        })
        .notification();
        assert_eq!((n.code, n.subcode), (2, 2));
        let n = DecodeError::from(UpdateError::InvalidNetworkField("x")).notification();
        assert_eq!((n.code, n.subcode), (3, 10));
        assert_eq!(
            notification_name(2, 2),
            ("OPEN Message Error", "Bad Peer AS")
        );
    }
}
