//! IKEv1 (RFC 2409 with RFC 2407/2408, RFC 3706 DPD, RFC 3947 NAT-T) in the same
//! sans-IO [`Endpoint`] as IKEv2.
//!
//! A peer speaks IKEv1 when its [`PeerConfig::version`](crate::PeerConfig) is
//! [`IkeVersion::V1`](crate::IkeVersion); [`V1Mode`](crate::V1Mode) picks Main or
//! Aggressive Mode. As responder the ISAKMP header's major version picks the engine.
//! Both engines report through the same [`Event`](crate::Event)s and
//! [`ChildSa`]: the IKE SA's SPIs are the ISAKMP cookies
//! (CKY-I, CKY-R), and a quick mode yields a Child SA whose KEYMAT is split
//! encryption key first, then authentication key, per direction (RFC 2409 §5.5).
//!
//! # Scope
//!
//! Pre-shared keys; Main Mode (identities encrypted) and Aggressive Mode (the
//! responder finds the peer, and so the key, by the ID in message 1); CBC ciphers for
//! the ISAKMP SA (AES-GCM only for ESP); one subnet pair per tunnel in quick mode,
//! with or without PFS; RESPONDER-LIFETIME; informational Delete and error
//! notifications; DPD; NAT-T with the RFC 3947 vendor ID and port float; phase 2
//! rekeying make-before-break and phase 1 replacement. No XAUTH/mode config, no
//! certificates, no commit bit, no IKE fragmentation.

pub(crate) mod engine;
#[doc(hidden)]
pub mod fuzz;
pub mod keys;
pub mod proposal;
pub(crate) mod sa;
pub mod wire;

use std::net::SocketAddr;
use std::time::Instant;

use crate::config::{PeerConfig, PeerId};
use crate::endpoint::{Endpoint, Error};
use crate::event::ChildSa;
use engine::Cx;

/// Whether a datagram is ISAKMP/IKEv1 (major version 1 in the header).
pub fn is_v1(data: &[u8]) -> bool {
    data.get(17).is_some_and(|v| v >> 4 == 1)
}

impl Endpoint {
    fn v1_cx(&mut self) -> (&mut engine::Engine, Cx<'_>) {
        let Endpoint {
            cfg,
            peers,
            io,
            v1,
            sas,
            index,
            pacing,
            ..
        } = self;
        (
            v1,
            Cx {
                io,
                ecfg: cfg,
                peers,
                v2_half_open: sas.unidentified_len(),
                index,
                pacing,
            },
        )
    }

    pub(crate) fn v1_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        let (v1, mut cx) = self.v1_cx();
        v1.handle_datagram(&mut cx, now, local, remote, data);
    }

    /// An ISAKMP SA's offloaded shared secret (see `crate::offload`); a message 5 that
    /// came before it is handled now.
    pub(crate) fn v1_dh_done(&mut self, now: Instant, done: crate::DhDone) {
        let (v1, mut cx) = self.v1_cx();
        if let Some((local, remote, data)) = v1.dh_done(&mut cx, now, done) {
            self.v1_datagram(now, local, remote, &data);
        }
    }

    pub(crate) fn v1_timeout(&mut self, now: Instant) {
        let (v1, mut cx) = self.v1_cx();
        v1.handle_timeout(&mut cx, now);
    }

    pub(crate) fn v1_initiate(
        &mut self,
        now: Instant,
        peer: PeerId,
        cfg: std::sync::Arc<PeerConfig>,
    ) -> Result<(), Error> {
        let remote = cfg.remote_addr().ok_or(Error::ResponderOnly(peer))?;
        let (v1, mut cx) = self.v1_cx();
        if v1.active(peer) {
            return Ok(());
        }
        v1.initiate(&mut cx, now, peer, cfg, remote)?;
        Ok(())
    }

    pub(crate) fn v1_delete_peer(&mut self, peer: PeerId) -> bool {
        let (v1, mut cx) = self.v1_cx();
        v1.delete_peer(&mut cx, peer)
    }

    pub(crate) fn v1_rekey_child(&mut self, now: Instant, peer: PeerId) -> Result<(), Error> {
        let (v1, mut cx) = self.v1_cx();
        if v1.rekey_child(&mut cx, now, peer) {
            Ok(())
        } else {
            Err(Error::NotEstablished(peer))
        }
    }

    pub(crate) fn v1_create_child(&mut self, now: Instant, peer: PeerId) -> Result<(), Error> {
        let (v1, mut cx) = self.v1_cx();
        if v1.create_child(&mut cx, now, peer) {
            Ok(())
        } else {
            Err(Error::NotEstablished(peer))
        }
    }

    pub(crate) fn v1_rekey_ike(&mut self, now: Instant, peer: PeerId) -> Result<(), Error> {
        let (v1, mut cx) = self.v1_cx();
        if v1.rekey_ike(&mut cx, now, peer) {
            Ok(())
        } else {
            Err(Error::NotEstablished(peer))
        }
    }

    pub(crate) fn v1_ike_sas(&self, peer: PeerId) -> Vec<(u64, u64)> {
        self.v1.ike_sas(peer)
    }

    pub(crate) fn v1_child_sas(&self, peer: PeerId) -> Vec<ChildSa> {
        self.v1.child_sas(peer)
    }

    pub(crate) fn v1_child_activity(&mut self, now: Instant, peer: PeerId) {
        self.v1.child_activity(now, peer);
    }

    pub(crate) fn v1_poll_timeout(&self) -> Option<Instant> {
        self.v1.poll_timeout()
    }
}
