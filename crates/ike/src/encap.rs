//! When ESP travels in UDP without a NAT: the vpngw vendor ID and forced UDP
//! encapsulation (IKEv2 only).
//!
//! RFC 7296 §2.23 lets an implementation force UDP encapsulation by sending a
//! NAT_DETECTION_SOURCE_IP that does not match its address (strongSwan's `encap = yes`
//! does the same): the peer then sees "our" side as translated and both ends use ESP in
//! UDP on port 4500 (RFC 3948). Two vpngw gateways want that even without a NAT, because
//! ESP in UDP can be sent with UDP GSO and received with UDP GRO (one trip down the
//! stack per ~45 packets), which raw IP protocol 50 cannot. So in [`EspEncap::Auto`]
//! every IKE_SA_INIT we send carries [`VENDOR_ID`], and a responder that sees it in the
//! request forces encapsulation. Any other peer sends no such vendor ID and sees exactly
//! the standard behaviour.

use crate::wire::Payload;

/// How this endpoint chooses between raw ESP and ESP in UDP when no NAT is detected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EspEncap {
    /// Send [`VENDOR_ID`] in IKE_SA_INIT; as responder, force UDP encapsulation when the
    /// initiator sent it (another vpngw). Other peers: UDP only behind a NAT.
    Auto,
    /// Always force UDP encapsulation (as initiator and responder) when the tunnel has
    /// NAT traversal on and the peer supports NAT detection.
    Udp,
    /// The standard rule only: UDP when a NAT is detected, raw ESP otherwise; no vendor
    /// ID, never forced by us (a peer may still force it).
    #[default]
    Raw,
}

impl EspEncap {
    /// Whether we send [`VENDOR_ID`] in IKE_SA_INIT.
    pub fn sends_vendor_id(self) -> bool {
        self != Self::Raw
    }

    /// As IKE_SA_INIT responder: whether to force UDP encapsulation for a request with
    /// these payloads (the caller checks NAT traversal is on and the peer sent NAT_D).
    pub fn forces_as_responder(self, request: &[Payload]) -> bool {
        match self {
            Self::Auto => has_vendor_id(request),
            Self::Udp => true,
            Self::Raw => false,
        }
    }

    /// As IKE_SA_INIT initiator: whether to force UDP encapsulation ourselves (in
    /// `Auto` the vpngw responder does it).
    pub fn forces_as_initiator(self) -> bool {
        self == Self::Udp
    }
}

/// The vpngw vendor ID (RFC 7296 §3.12): an opaque 16-byte value, "vpngw/esp-in-udp".
/// Peers that do not know it ignore it.
pub const VENDOR_ID: [u8; 16] = *b"vpngw/esp-in-udp";

/// Whether the message carries the vpngw vendor ID.
pub fn has_vendor_id(payloads: &[Payload]) -> bool {
    payloads
        .iter()
        .any(|p| matches!(p, Payload::Vendor(v) if v.as_slice() == VENDOR_ID))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responder_forces_only_for_vpngw_in_auto() {
        let vpngw = [Payload::Vendor(VENDOR_ID.to_vec())];
        let other = [Payload::Vendor(b"strongSwan-ish!!".to_vec())];
        assert!(EspEncap::Auto.forces_as_responder(&vpngw));
        assert!(!EspEncap::Auto.forces_as_responder(&other));
        assert!(!EspEncap::Auto.forces_as_responder(&[]));
        assert!(EspEncap::Udp.forces_as_responder(&[]));
        assert!(!EspEncap::Raw.forces_as_responder(&vpngw));
        assert!(EspEncap::Udp.forces_as_initiator());
        assert!(!EspEncap::Auto.forces_as_initiator());
        assert!(!EspEncap::Raw.sends_vendor_id());
        assert!(EspEncap::Auto.sends_vendor_id());
    }
}
