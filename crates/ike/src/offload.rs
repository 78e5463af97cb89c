//! Diffie-Hellman shared secrets computed off the thread that drives the endpoint.
//!
//! Every IKE_SA_INIT costs each end one key pair and one shared secret (g^ir, RFC 7296
//! §2.14). Key pairs come ready-made from a [`crate::KeySource`]; the shared secret
//! needs the peer's public value, so it can only start once IKE_SA_INIT arrives. While
//! thousands of tunnels come up it was the largest single cost of the protocol thread
//! (docs/PERFORMANCE.md), and it serialised every setup behind one core.
//!
//! With a [`DhOffload`] the endpoint hands each IKE_SA_INIT's computation out as a
//! [`DhJob`] and goes on with other SAs; the driver runs [`DhJob::compute`] on any
//! thread and gives the [`DhDone`] back to [`Endpoint::handle_dh_done`]. Meanwhile the
//! SA waits with its keys missing:
//! - responder: the IKE_SA_INIT response goes out at once (it needs no keys); a
//!   request that arrives before the keys (the peer's IKE_AUTH) is held and handled
//!   when they are ready, rather than dropped for a retransmission seconds later;
//! - initiator: IKE_AUTH goes out when the keys are ready.
//!
//! IKEv1 Main Mode offloads the same way (`crate::v1`): the responder sends message 4 at
//! once and holds a message 5 that overtakes its keys; the initiator sends message 5
//! when its keys are ready.
//!
//! Quick Mode with PFS offloads too, initial or rekey: every IKEv1 tunnel's first Quick
//! Mode has PFS by default (`ipsec.pfs` group2), so a burst of Main Modes is followed by
//! as many Quick Mode secrets. The responder sends message 2 once its secret is ready
//! (the inbound SA must be in place first); the initiator sends message 3 then.
//!
//! Aggressive Mode offloads too, though both of its later messages need the keys (RFC
//! 2409 §5.4: HASH_R in message 2, HASH_I in message 3): the responder sends message 2
//! once its keys are ready, the initiator checks it and sends message 3 then. Its
//! message 1 costs the responder a computation before the peer has proven its address,
//! so this keeps a flood of them off the endpoint's thread.
//!
//! IKEv2's CREATE_CHILD_SA with a KE payload (a Child SA with PFS, new or rekeyed; an
//! IKE SA rekey) offloads too. The message whose KE needs the secret — the peer's
//! request, or the answer to ours — is kept in [`ExchangeDh`] and handled again when the
//! secret is back, as if it had arrived only then. Everything before the computation
//! only reads the SA, so the exchange's rules (simultaneous rekeys, RFC 7296 §2.8.1;
//! TEMPORARY_FAILURE while the IKE SA is rekeyed, §2.25.2) see nothing they would not see
//! with a slower network. A retransmission of the kept message is dropped meanwhile. One
//! such exchange per IKE SA waits at a time; a second one (both ends rekeying at once)
//! is computed in place. Rekeys are spread over lifetimes and their jitter, so this
//! matters less for speed than for keeping every modular exponentiation off the thread.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use crypto::{DhGroup, DhPrivate};
use zeroize::Zeroizing;

use crate::endpoint::Endpoint;
use crate::event::{Level, Phase};
use crate::sa::{Handshake, IkeSa};

/// Where the endpoint sends its Diffie-Hellman computations (see the module docs).
pub trait DhOffload: Send {
    /// Queues `job` (boxed: a key pair is a few hundred bytes, and it crosses threads).
    /// Its [`DhDone`] must come back through [`Endpoint::handle_dh_done`]; an offload
    /// that cannot take the job returns it and the endpoint computes it in place.
    fn submit(&mut self, job: Box<DhJob>) -> Result<(), Box<DhJob>>;
}

/// One shared secret to compute: our key pair and the peer's public value.
pub struct DhJob {
    spi: u64,
    ticket: u64,
    key: DhPrivate,
    peer: Vec<u8>,
    /// For an ISAKMP SA (`spi` is our cookie), not an IKEv2 SA.
    v1: bool,
    /// IKEv1: the Quick Mode (message ID) whose PFS secret this is; `None` for Main Mode.
    qm: Option<u32>,
}

impl DhJob {
    /// The group of the key pair this job uses.
    pub fn group(&self) -> DhGroup {
        self.key.group()
    }

    /// Validates the peer's public value and computes g^ir. Runs on any thread.
    pub fn compute(self: Box<Self>) -> DhDone {
        DhDone {
            spi: self.spi,
            ticket: self.ticket,
            shared: self.key.shared_secret(&self.peer),
            v1: self.v1,
            qm: self.qm,
        }
    }
}

#[cfg(feature = "testing")]
impl DhJob {
    /// Replaces the peer's public value with zeros, which no group accepts: how tests
    /// reach the refusal of a value that arrived encrypted (IKEv1 Quick Mode's PFS KE),
    /// where a test cannot edit the datagram.
    pub fn spoil_peer_value(&mut self) {
        self.peer.iter_mut().for_each(|b| *b = 0);
    }

    /// A job that belongs to no exchange: how tests outside this crate (the node's DH
    /// workers) get jobs to run.
    pub fn standalone(key: DhPrivate, peer: Vec<u8>) -> Box<Self> {
        Box::new(Self {
            spi: 0,
            ticket: 0,
            key,
            peer,
            v1: false,
            qm: None,
        })
    }
}

impl DhJob {
    /// An ISAKMP SA's job (`cookie`: our cookie); `qm`: the message ID of the Quick
    /// Mode whose PFS secret it is, `None` for Main Mode's g^xy.
    pub(crate) fn v1(
        cookie: u64,
        qm: Option<u32>,
        ticket: u64,
        key: DhPrivate,
        peer: Vec<u8>,
    ) -> Box<Self> {
        Box::new(Self {
            spi: cookie,
            ticket,
            key,
            peer,
            v1: true,
            qm,
        })
    }
}

impl fmt::Debug for DhJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DhJob")
            .field("spi", &format_args!("{:016x}", self.spi))
            .field("group", &self.key.group())
            .finish_non_exhaustive()
    }
}

/// The result of a [`DhJob`], for [`Endpoint::handle_dh_done`].
pub struct DhDone {
    pub(crate) spi: u64,
    pub(crate) ticket: u64,
    pub(crate) shared: Result<Zeroizing<Vec<u8>>, crypto::Error>,
    pub(crate) v1: bool,
    pub(crate) qm: Option<u32>,
}

impl fmt::Debug for DhDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret itself.
        f.debug_struct("DhDone")
            .field("spi", &format_args!("{:016x}", self.spi))
            .field("ok", &self.shared.is_ok())
            .finish_non_exhaustive()
    }
}

/// An IKE SA whose shared secret is being computed elsewhere.
pub(crate) struct Keying {
    /// Matches the [`DhDone`] to this SA and not to an earlier one that had its SPI.
    ticket: u64,
    ni: Vec<u8>,
    nr: Vec<u8>,
    /// Initiator: both IKE_SA_INIT messages, for the IKE_AUTH sent once keyed.
    hs: Option<Handshake>,
    /// A request that arrived before the keys, as (local, remote, datagram).
    held: Option<(SocketAddr, SocketAddr, Vec<u8>)>,
}

impl Keying {
    /// Keeps the peer's request (its IKE_AUTH) until the keys are ready; a
    /// retransmission replaces it.
    pub(crate) fn hold(&mut self, local: SocketAddr, remote: SocketAddr, data: &[u8]) {
        self.held = Some((local, remote, data.to_vec()));
    }
}

/// A datagram as it arrived: (local, remote, bytes).
pub(crate) type Datagram<'a> = (SocketAddr, SocketAddr, &'a [u8]);

/// g^ir, or why the peer's public value was refused.
pub(crate) type DhResult = Result<Zeroizing<Vec<u8>>, crypto::Error>;

/// A CREATE_CHILD_SA message of an established IKE SA whose shared secret is computed
/// elsewhere (see the module docs).
pub(crate) struct ExchangeDh {
    ticket: u64,
    msg_id: u32,
    /// The message is the peer's response to our request, not its request.
    response: bool,
    /// Responder: our key pair, whose public value goes into the response.
    key: Option<DhPrivate>,
    /// Until the secret is back: the message, handled again then.
    held: Option<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Once it is back, until the message takes it.
    shared: Option<DhResult>,
}

impl ExchangeDh {
    /// The message `msg_id` (a request, or a `response`) waits for its secret.
    pub(crate) fn waits(x: &Option<Box<Self>>, msg_id: u32, response: bool) -> bool {
        x.as_ref()
            .is_some_and(|x| x.msg_id == msg_id && x.response == response && x.shared.is_none())
    }
}

impl Endpoint {
    /// Sends Diffie-Hellman shared secrets to `offload` instead of computing them on the
    /// caller's thread (see [`DhOffload`] and the module docs for which).
    pub fn set_dh_offload(&mut self, offload: Box<dyn DhOffload>) {
        self.io.offload = Some(offload);
    }

    /// Whether shared secrets go to a [`DhOffload`].
    pub(crate) fn offloads_dh(&self) -> bool {
        self.io.offload.is_some()
    }

    /// Hands the shared secret of `sa` (not in the SA table) to the offload; `sa` waits
    /// in [`IkeSa::keying`] until [`Endpoint::handle_dh_done`]. Computes it here if
    /// the offload refuses the job.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn offload_keys(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        key: DhPrivate,
        peer: Vec<u8>,
        ni: Vec<u8>,
        nr: Vec<u8>,
        hs: Option<Handshake>,
    ) {
        let ticket = self.io.next_ticket();
        let job = Box::new(DhJob {
            spi: sa.our_spi(),
            ticket,
            key,
            peer,
            v1: false,
            qm: None,
        });
        sa.keying = Some(Box::new(Keying {
            ticket,
            ni,
            nr,
            hs,
            held: None,
        }));
        if sa.initiator {
            // Bounds the wait should the offload never answer (responders have this
            // deadline from IKE_SA_INIT on).
            sa.half_open_until = Some(now + self.cfg.half_open_timeout);
        }
        let refused = match self.io.offload.as_mut() {
            Some(o) => o.submit(job).err(),
            None => Some(job),
        };
        match refused {
            None => self.io.stats.dh_offloaded += 1,
            Some(job) => {
                let done = job.compute();
                self.keyed(now, sa, done);
            }
        }
    }

    /// Feeds the result of a [`DhJob`]: the SA gets its keys and goes on (initiator:
    /// sends IKE_AUTH; responder: handles an IKE_AUTH that came meanwhile). A result
    /// for an SA that is gone (it timed out, or was deleted) is dropped.
    pub fn handle_dh_done(&mut self, now: Instant, done: DhDone) {
        if done.v1 {
            self.v1_dh_done(now, done);
            self.start_queued(now);
            return;
        }
        let Some(mut sa) = self.sas.remove(&done.spi) else {
            self.io.stats.dh_stale += 1;
            return;
        };
        if sa.keying.as_ref().map(|k| k.ticket) != Some(done.ticket) {
            let waiting = sa
                .exchange_dh
                .as_ref()
                .is_some_and(|x| x.ticket == done.ticket && x.shared.is_none());
            if waiting {
                self.exchange_keyed(now, sa, done);
                return;
            }
            self.io.stats.dh_stale += 1;
            self.put_back(sa);
            return;
        }
        let held = self.keyed(now, &mut sa, done);
        let alive = !sa.dead;
        self.put_back(sa);
        if let (Some((local, remote, data)), true) = (held, alive) {
            // Not counted again in `datagrams_in`: it was when it arrived.
            self.dispatch(now, local, remote, &data);
        }
        self.start_queued(now);
    }

    /// The result of a CREATE_CHILD_SA's job: its message is handled again with the
    /// secret at hand.
    fn exchange_keyed(&mut self, now: Instant, mut sa: IkeSa, done: DhDone) {
        let spi = sa.our_spi();
        let held = sa.exchange_dh.as_mut().and_then(|x| {
            x.shared = Some(done.shared);
            x.held.take()
        });
        self.put_back(sa);
        if let Some((local, remote, data)) = held {
            self.dispatch(now, local, remote, &data);
        }
        // The message may have ended elsewhere (the SA is being rekeyed: TEMPORARY_FAILURE)
        // without taking its secret.
        if let Some(mut sa) = self.sas.get_mut(&spi)
            && sa
                .exchange_dh
                .as_ref()
                .is_some_and(|x| x.ticket == done.ticket)
        {
            sa.exchange_dh = None;
        }
        self.start_queued(now);
    }

    /// Responder of CREATE_CHILD_SA request `msg_id`, whose KE (`theirs`) is of our group
    /// `g`: a fresh key pair and the shared secret. `None` when they went to the offload
    /// (the request, `dgram`, is kept and handled again when they are back) or no key
    /// pair could be made.
    pub(crate) fn request_secret(
        &mut self,
        sa: &mut IkeSa,
        msg_id: u32,
        g: DhGroup,
        theirs: &[u8],
        dgram: Datagram<'_>,
    ) -> Option<(DhPrivate, DhResult)> {
        if let Some(x) = Self::take_secret(sa, msg_id, false) {
            return Some((x.key?, x.shared?));
        }
        let key = self.io.dh(g).ok()?;
        match self.exchange_job(sa, msg_id, false, &key, theirs, dgram) {
            Some(shared) => Some((key, shared)),
            None => {
                if let Some(x) = sa.exchange_dh.as_mut() {
                    x.key = Some(key);
                }
                None
            }
        }
    }

    /// Initiator: the shared secret of our `key` and the KE (`theirs`) of the peer's
    /// response `msg_id`. `None` when it went to the offload; the response (`dgram`) is
    /// kept and handled again when it is back.
    pub(crate) fn response_secret(
        &mut self,
        sa: &mut IkeSa,
        msg_id: u32,
        key: &DhPrivate,
        theirs: &[u8],
        dgram: Datagram<'_>,
    ) -> Option<DhResult> {
        if let Some(x) = Self::take_secret(sa, msg_id, true) {
            return x.shared;
        }
        self.exchange_job(sa, msg_id, true, key, theirs, dgram)
    }

    /// The secret of message `msg_id` that came back from the offload, if any.
    fn take_secret(sa: &mut IkeSa, msg_id: u32, response: bool) -> Option<ExchangeDh> {
        let x = sa.exchange_dh.take()?;
        if x.msg_id == msg_id && x.response == response && x.shared.is_some() {
            return Some(*x);
        }
        sa.exchange_dh = Some(x);
        None
    }

    /// Hands g^ir of `key` and `theirs` to the offload and keeps `dgram`; computes it
    /// here (and returns it) without an offload, when the offload refuses the job, or
    /// while another message of this SA waits.
    fn exchange_job(
        &mut self,
        sa: &mut IkeSa,
        msg_id: u32,
        response: bool,
        key: &DhPrivate,
        theirs: &[u8],
        (local, remote, data): Datagram<'_>,
    ) -> Option<DhResult> {
        if self.io.offload.is_none() || sa.exchange_dh.is_some() {
            return Some(key.shared_secret(theirs));
        }
        let ticket = self.io.next_ticket();
        let job = Box::new(DhJob {
            spi: sa.our_spi(),
            ticket,
            key: key.clone(),
            peer: theirs.to_vec(),
            v1: false,
            qm: None,
        });
        if let Some(Err(job)) = self.io.offload.as_mut().map(|o| o.submit(job)) {
            return Some(job.compute().shared);
        }
        self.io.stats.dh_offloaded += 1;
        sa.exchange_dh = Some(Box::new(ExchangeDh {
            ticket,
            msg_id,
            response,
            key: None,
            held: Some((local, remote, data.to_vec())),
            shared: None,
        }));
        None
    }

    /// Installs the keys of a waiting SA; returns the request held meanwhile.
    fn keyed(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        done: DhDone,
    ) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        let k = *sa.keying.take()?;
        let shared = match done.shared {
            Ok(s) => s,
            Err(_) => {
                let reason = "peer's Diffie-Hellman public value is invalid";
                if sa.initiator {
                    self.io.fail(sa.peer, Phase::Phase1, reason.into());
                } else {
                    // As when computed in place: a responder's peer is not known yet.
                    self.io.stats.malformed += 1;
                    self.io
                        .log(sa.candidate, Level::Warn, "malformed", reason.into());
                }
                sa.dead = true;
                return None;
            }
        };
        if !self.set_ike_keys(sa, None, &shared, &k.ni, &k.nr) {
            sa.dead = true;
            return None;
        }
        if let Some(hs) = k.hs {
            sa.half_open_until = None;
            self.send_auth(now, sa, hs);
        }
        k.held
    }
}
