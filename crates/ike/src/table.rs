//! The endpoint's lookup structures, sized for many tunnels (issue 8: 10,000 tunnels
//! from one peer address): the IKE SA table with an index by peer and a timer index,
//! and the configured peers indexed by address and by remote identity. Nothing here
//! scans every SA or every peer.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use crate::config::{Identity, IkeProposal, IkeVersion, PeerConfig, PeerId, V1Mode};
use crate::sa::IkeSa;
use crate::wire::Identification;
use crate::wire::registry::IdType;

/// IKE SAs by our SPI. Each SA is boxed: B-tree nodes hold eleven slots, and an inline
/// `IkeSa` (about a kilobyte) made them most of the engine's heap.
///
/// Every SA that is processed is taken out ([`SaTable::remove`]) and put back
/// ([`SaTable::insert`]); both keep the indexes exact, and [`SaTable::get_mut`] returns
/// a guard that re-indexes the SA when dropped.
#[derive(Default)]
pub(crate) struct SaTable {
    sas: BTreeMap<u64, Slot>,
    /// (peer, our SPI) of every SA whose peer is known.
    by_peer: BTreeSet<(PeerId, u64)>,
    /// (remote address, our SPI) of responder SAs before IKE_AUTH named their peer.
    unidentified: BTreeSet<(IpAddr, u64)>,
    /// (deadline, our SPI): `IkeSa::next_timeout` of every SA that has one.
    timers: BTreeSet<(Instant, u64)>,
}

struct Slot {
    sa: Box<IkeSa>,
    /// What the SA was indexed under, to remove exactly those entries.
    peer: Option<PeerId>,
    unidentified: Option<IpAddr>,
    due: Option<Instant>,
}

impl SaTable {
    pub fn len(&self) -> usize {
        self.sas.len()
    }

    pub fn contains_key(&self, spi: &u64) -> bool {
        self.sas.contains_key(spi)
    }

    pub fn get(&self, spi: &u64) -> Option<&IkeSa> {
        self.sas.get(spi).map(|s| &*s.sa)
    }

    /// A mutable view that re-indexes the SA (its peer and timers) when dropped.
    pub fn get_mut(&mut self, spi: &u64) -> Option<SaMut<'_>> {
        self.sas.contains_key(spi).then_some(SaMut {
            table: self,
            spi: *spi,
        })
    }

    pub fn insert(&mut self, spi: u64, sa: IkeSa) {
        self.remove(&spi);
        let mut slot = Slot {
            sa: Box::new(sa),
            peer: None,
            unidentified: None,
            due: None,
        };
        self.index(spi, &mut slot);
        self.sas.insert(spi, slot);
    }

    pub fn remove(&mut self, spi: &u64) -> Option<IkeSa> {
        let slot = self.sas.remove(spi)?;
        self.unindex(*spi, &slot);
        Some(*slot.sa)
    }

    /// The SAs of one peer, by SPI: O(log n + the peer's SAs).
    pub fn of_peer(&self, peer: PeerId) -> impl Iterator<Item = (u64, &IkeSa)> {
        self.by_peer
            .range((peer, 0)..=(peer, u64::MAX))
            .filter_map(|(_, spi)| self.get(spi).map(|s| (*spi, s)))
    }

    /// Responder SAs from `remote` whose peer IKE_AUTH has not named yet.
    pub fn unidentified_from(&self, remote: IpAddr) -> impl Iterator<Item = (u64, &IkeSa)> {
        self.unidentified
            .range((remote, 0)..=(remote, u64::MAX))
            .filter_map(|(_, spi)| self.get(spi).map(|s| (*spi, s)))
    }

    /// How many responder SAs [`Self::unidentified`] yields, without walking them.
    pub fn unidentified_len(&self) -> usize {
        self.unidentified.len()
    }

    /// Every responder SA whose peer IKE_AUTH has not named yet (the half-open ones).
    pub fn unidentified(&self) -> impl Iterator<Item = (u64, &IkeSa)> {
        self.unidentified
            .iter()
            .filter_map(|(_, spi)| self.get(spi).map(|s| (*spi, s)))
    }

    /// The SPIs of SAs with a timer due at `now`, earliest first.
    pub fn due(&self, now: Instant) -> Vec<u64> {
        self.timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, spi)| *spi)
            .collect()
    }

    /// The earliest timer of any SA.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    fn index(&mut self, spi: u64, slot: &mut Slot) {
        let sa = &slot.sa;
        slot.peer = sa.peer;
        slot.unidentified = (sa.peer.is_none() && !sa.initiator).then(|| sa.remote.ip());
        slot.due = sa.next_timeout();
        if let Some(p) = slot.peer {
            self.by_peer.insert((p, spi));
        }
        if let Some(ip) = slot.unidentified {
            self.unidentified.insert((ip, spi));
        }
        if let Some(t) = slot.due {
            self.timers.insert((t, spi));
        }
    }

    fn unindex(&mut self, spi: u64, slot: &Slot) {
        if let Some(p) = slot.peer {
            self.by_peer.remove(&(p, spi));
        }
        if let Some(ip) = slot.unidentified {
            self.unidentified.remove(&(ip, spi));
        }
        if let Some(t) = slot.due {
            self.timers.remove(&(t, spi));
        }
    }
}

/// See [`SaTable::get_mut`].
pub(crate) struct SaMut<'a> {
    table: &'a mut SaTable,
    spi: u64,
}

impl std::ops::Deref for SaMut<'_> {
    type Target = IkeSa;

    fn deref(&self) -> &IkeSa {
        // The slot exists: `get_mut` checked it and the guard borrows the table.
        &self.table.sas[&self.spi].sa
    }
}

impl std::ops::DerefMut for SaMut<'_> {
    fn deref_mut(&mut self) -> &mut IkeSa {
        #[allow(clippy::expect_used)] // `get_mut` checked it and the guard borrows the table
        let slot = self
            .table
            .sas
            .get_mut(&self.spi)
            .expect("slot checked by get_mut");
        &mut slot.sa
    }
}

impl Drop for SaMut<'_> {
    fn drop(&mut self) {
        if let Some(mut slot) = self.table.sas.remove(&self.spi) {
            self.table.unindex(self.spi, &slot);
            self.table.index(self.spi, &mut slot);
            self.table.sas.insert(self.spi, slot);
        }
    }
}

/// Peers by version and address, and by version and remote identity: what the
/// responder looks up per IKE_SA_INIT, IKEv1 first message, IKE_AUTH and IKEv1 message
/// with an ID (Aggressive Mode 1, Main Mode 5).
#[derive(Default)]
pub(crate) struct PeerIndex {
    by_addr: HashMap<AddrKey, BTreeSet<PeerId>>,
    /// The same peers, per address key grouped by what a first message must match
    /// ([`OfferKey`]), so that a first message is checked once per group, not once
    /// per peer: a flood of refused ones towards 10,000 "any" tunnels that share a
    /// proposal costs one check each.
    by_offer: HashMap<AddrKey, Vec<(OfferKey, BTreeSet<PeerId>)>>,
    by_remote_id: HashMap<(IkeVersion, IdKey), BTreeSet<PeerId>>,
}

/// (version, local IP, remote IP or `None` for a peer that may come from anywhere).
type AddrKey = (IkeVersion, IpAddr, Option<IpAddr>);

/// What decides whether a tunnel takes a first message: its IKE proposal and, for
/// IKEv1, its mode (the proposal alone for IKEv2, whose mode field is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OfferKey {
    pub ike: IkeProposal,
    pub mode: V1Mode,
}

impl OfferKey {
    pub fn of(cfg: &PeerConfig) -> Self {
        Self {
            ike: cfg.ike,
            mode: match cfg.version {
                IkeVersion::V1 => cfg.v1_mode,
                IkeVersion::V2 => V1Mode::default(),
            },
        }
    }
}

/// An identity as compared on the wire: FQDNs case-insensitively (`Identity::matches`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct IdKey(IdType, Vec<u8>);

impl IdKey {
    pub fn of(id: &Identity) -> Self {
        Self::from_wire(&id.to_wire())
    }

    pub fn from_wire(id: &Identification) -> Self {
        let mut data = id.data.clone();
        if id.id_type == IdType::FQDN {
            data.make_ascii_lowercase();
        }
        Self(id.id_type, data)
    }
}

impl PeerIndex {
    pub fn add(&mut self, peer: PeerId, cfg: &PeerConfig) {
        self.by_addr.entry(addr_key(cfg)).or_default().insert(peer);
        let groups = self.by_offer.entry(addr_key(cfg)).or_default();
        let offer = OfferKey::of(cfg);
        match groups.iter_mut().find(|(k, _)| *k == offer) {
            Some((_, peers)) => {
                peers.insert(peer);
            }
            None => groups.push((offer, BTreeSet::from([peer]))),
        }
        self.by_remote_id
            .entry((cfg.version, IdKey::of(&cfg.remote_id)))
            .or_default()
            .insert(peer);
    }

    pub fn remove(&mut self, peer: PeerId, cfg: &PeerConfig) {
        let k = addr_key(cfg);
        if let Some(set) = self.by_addr.get_mut(&k) {
            set.remove(&peer);
            if set.is_empty() {
                self.by_addr.remove(&k);
            }
        }
        if let Some(groups) = self.by_offer.get_mut(&k) {
            let offer = OfferKey::of(cfg);
            for (_, peers) in groups.iter_mut().filter(|(o, _)| *o == offer) {
                peers.remove(&peer);
            }
            groups.retain(|(_, peers)| !peers.is_empty());
            if groups.is_empty() {
                self.by_offer.remove(&k);
            }
        }
        let k = (cfg.version, IdKey::of(&cfg.remote_id));
        if let Some(set) = self.by_remote_id.get_mut(&k) {
            set.remove(&peer);
            if set.is_empty() {
                self.by_remote_id.remove(&k);
            }
        }
    }

    /// IKEv2 peers that accept IKE_SA_INIT from `remote` on `local`: those configured
    /// with this exact address first, then "any" peers, each by id.
    pub fn by_address(&self, local: IpAddr, remote: IpAddr) -> impl Iterator<Item = PeerId> {
        self.by_version_address(IkeVersion::V2, local, remote)
    }

    /// [`PeerIndex::by_address`] for either version.
    pub fn by_version_address(
        &self,
        version: IkeVersion,
        local: IpAddr,
        remote: IpAddr,
    ) -> impl Iterator<Item = PeerId> + Clone {
        let exact = self.by_addr.get(&(version, local, Some(remote)));
        let any = self.by_addr.get(&(version, local, None));
        exact.into_iter().chain(any).flatten().copied()
    }

    /// The peer that takes a first message of `version` from `remote` on `local`: `f`
    /// runs once per group of candidates sharing an [`OfferKey`] (`None`: the group is
    /// no candidate; `Err`: it refuses the message). The answer is the lowest id among
    /// the accepting groups — those configured with this exact address before "any"
    /// ones — which is the first accepting peer in [`Self::by_version_address`]
    /// order. Without one: the refusal of the first refusing peer in that order (`None`
    /// if no group was a candidate).
    pub fn first_accepting<T, E>(
        &self,
        version: IkeVersion,
        local: IpAddr,
        remote: IpAddr,
        mut f: impl FnMut(&OfferKey) -> Option<Result<T, E>>,
    ) -> Result<(PeerId, T), Option<(PeerId, E)>> {
        let mut refusal = None;
        for key in [(version, local, Some(remote)), (version, local, None)] {
            let mut best: Option<(PeerId, T)> = None;
            let mut tier_refusal: Option<(PeerId, E)> = None;
            for (offer, peers) in self.by_offer.get(&key).into_iter().flatten() {
                let Some(&p) = peers.first() else {
                    continue;
                };
                match f(offer) {
                    None => {}
                    Some(Ok(t)) if best.as_ref().is_none_or(|(b, _)| p < *b) => {
                        best = Some((p, t));
                    }
                    Some(Err(e)) if tier_refusal.as_ref().is_none_or(|(b, _)| p < *b) => {
                        tier_refusal = Some((p, e));
                    }
                    Some(_) => {}
                }
            }
            if let Some(b) = best {
                return Ok(b);
            }
            refusal = refusal.or(tier_refusal);
        }
        Err(refusal)
    }

    /// How many peers of `version` take first messages from `remote` on `local` with
    /// this offer: O(groups).
    pub fn count_with_offer(
        &self,
        version: IkeVersion,
        local: IpAddr,
        remote: IpAddr,
        offer: &OfferKey,
    ) -> usize {
        [(version, local, Some(remote)), (version, local, None)]
            .iter()
            .filter_map(|k| self.by_offer.get(k))
            .flatten()
            .filter(|(o, _)| o == offer)
            .map(|(_, peers)| peers.len())
            .sum()
    }

    /// IKEv2 peers whose configured remote identity is `id`.
    pub fn by_remote_id(&self, id: &Identification) -> impl Iterator<Item = PeerId> {
        self.by_version_remote_id(IkeVersion::V2, IdKey::from_wire(id))
    }

    /// IKEv1 peers whose configured remote identity is `id` (its type and data; the
    /// protocol and port are not part of a tunnel's identity).
    pub fn by_v1_remote_id(&self, id: &crate::v1::wire::Id) -> impl Iterator<Item = PeerId> {
        let wire = Identification {
            id_type: IdType(id.id_type),
            data: id.data.clone(),
        };
        self.by_version_remote_id(IkeVersion::V1, IdKey::from_wire(&wire))
    }

    fn by_version_remote_id(&self, v: IkeVersion, k: IdKey) -> impl Iterator<Item = PeerId> {
        self.by_remote_id
            .get(&(v, k))
            .into_iter()
            .flatten()
            .copied()
    }
}

/// Our initiations in flight per peer address. A gateway told to bring up 10,000
/// tunnels to one peer at once would otherwise send 10,000 IKE_SA_INITs in one burst:
/// most are lost in socket buffers or answered with COOKIEs (RFC 7296 §2.6), and the
/// rest of the setup is paced by retransmission timers (issue 8). At most
/// `EndpointConfig::max_initiating` of our IKE SAs to one address are before the end
/// of IKE_AUTH; the others wait in FIFO order and start as those complete or fail.
#[derive(Default)]
pub(crate) struct Pacing {
    windows: HashMap<IpAddr, Window>,
    queued: HashSet<PeerId>,
    /// Addresses that may have a free slot and a waiting peer.
    ready: BTreeSet<IpAddr>,
}

#[derive(Default)]
struct Window {
    in_flight: usize,
    queue: VecDeque<PeerId>,
}

impl Pacing {
    pub fn is_queued(&self, peer: PeerId) -> bool {
        self.queued.contains(&peer)
    }

    /// Whether an initiation to `ip` may start now; if not, `peer` waits its turn.
    pub fn admit(&mut self, ip: IpAddr, peer: PeerId, max: usize) -> bool {
        let w = self.windows.entry(ip).or_default();
        if w.in_flight < max.max(1) && w.queue.is_empty() {
            return true;
        }
        if self.queued.insert(peer) {
            w.queue.push_back(peer);
        }
        false
    }

    pub fn started(&mut self, ip: IpAddr) {
        self.windows.entry(ip).or_default().in_flight += 1;
    }

    pub fn finished(&mut self, ip: IpAddr) {
        let Some(w) = self.windows.get_mut(&ip) else {
            return;
        };
        w.in_flight = w.in_flight.saturating_sub(1);
        if !w.queue.is_empty() {
            self.ready.insert(ip);
        } else if w.in_flight == 0 {
            self.windows.remove(&ip);
        }
    }

    /// The next waiting peer whose address has a free slot.
    pub fn next_ready(&mut self, max: usize) -> Option<PeerId> {
        loop {
            let ip = *self.ready.first()?;
            match self.windows.get_mut(&ip) {
                Some(w) if w.in_flight < max.max(1) => {
                    if let Some(p) = w.queue.pop_front() {
                        self.queued.remove(&p);
                        return Some(p);
                    }
                    self.ready.remove(&ip);
                    if w.in_flight == 0 {
                        self.windows.remove(&ip);
                    }
                }
                _ => {
                    self.ready.remove(&ip);
                }
            }
        }
    }

    /// Peers waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }
}

fn addr_key(cfg: &PeerConfig) -> AddrKey {
    (
        cfg.version,
        cfg.local.ip(),
        cfg.remote_addr().map(|r| r.ip()),
    )
}

/// Whether an IKE_SA_INIT from `remote` to `local` could be from this peer (the filter
/// behind [`PeerIndex::by_address`]).
pub(crate) fn accepts(cfg: &PeerConfig, local: IpAddr, remote: IpAddr) -> bool {
    cfg.version == IkeVersion::V2
        && cfg.local.ip() == local
        && cfg.remote_addr().is_none_or(|r| r.ip() == remote)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::{Duration, Instant};

    use crypto::{DhGroup, Encr, Integ, Random};

    use crate::config::{EspProposal, IkeProposal, Ipv4Cidr, Psk, V1Mode};
    use crate::{Endpoint, EndpointConfig, Event};

    use super::*;

    const GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

    /// Many tunnels from one peer address, told apart by the initiator's FQDN (the
    /// `labbench` setup test): the responder indexes them by identity.
    #[test]
    fn responder_finds_the_peer_by_identity_among_many() {
        let (mut init, mut resp, now) = pair(300);
        init.initiate(now, PeerId(137)).unwrap();
        init.initiate(now, PeerId(5)).unwrap();
        pump_init(&mut init, &mut resp, now);
        // After IKE_SA_INIT: two half-open SAs, neither tied to one peer (300 peers
        // share the addresses and algorithms), none indexed by peer yet.
        let half: Vec<&IkeSa> = resp.sas.unidentified().map(|(_, s)| s).collect();
        assert_eq!(half.len(), 2);
        assert!(half.iter().all(|s| s.peer.is_none() && !s.sole_candidate));
        assert_eq!(resp.half_open.len(), 2);
        pump(&mut init, &mut resp, now);
        assert_eq!(established(&mut resp), 2);
        for p in [5, 137] {
            assert_eq!(resp.child_sas(PeerId(p)).len(), 1, "peer {p}");
            assert_eq!(resp.sas.of_peer(PeerId(p)).count(), 1);
        }
        assert!(resp.child_sas(PeerId(6)).is_empty());
        assert_eq!(resp.sas.unidentified().count(), 0);
        assert_eq!(resp.sas.len(), 2);
    }

    /// A peer configured with the initiator's exact address wins over an "any" peer
    /// with the same identity, whatever their ids.
    #[test]
    fn exact_address_peer_comes_before_any_peer() {
        let (mut init, mut resp, now) = pair(3);
        let mut exact = responder(1);
        exact.remote = Some(SocketAddr::from((PEER, 500)));
        resp.add_peer(PeerId(1000), exact).unwrap();
        init.initiate(now, PeerId(1)).unwrap();
        pump(&mut init, &mut resp, now);
        assert_eq!(resp.child_sas(PeerId(1000)).len(), 1);
        assert!(resp.child_sas(PeerId(1)).is_empty());
    }

    /// A first message is checked once per group of candidates sharing an offer, and
    /// the answer is what a walk over the candidates would find: exact addresses
    /// before "any", then the lowest id; the refusal is the first refusing candidate's.
    #[test]
    fn first_accepting_checks_each_offer_once_in_candidate_order() {
        let gw = IpAddr::from(GW);
        let peer = IpAddr::from(PEER);
        let ike = |dh| IkeProposal {
            encr: Encr::AesCbc128,
            integ: Integ::HmacSha1_96,
            dh,
        };
        let (p1024, p2048) = (ike(DhGroup::Modp1024), ike(DhGroup::Modp2048));
        let any = |i: u64, ike| PeerConfig {
            ike,
            ..responder(i)
        };
        let fixed = |i: u64, ike| PeerConfig {
            remote: Some(SocketAddr::from((PEER, 500))),
            ..any(i, ike)
        };
        let mut index = PeerIndex::default();
        // "any": 10..=19 modp1024 except 12 (modp2048); fixed: 30 and 31 modp2048.
        for i in 10..20 {
            index.add(PeerId(i), &any(i, if i == 12 { p2048 } else { p1024 }));
        }
        index.add(PeerId(31), &fixed(31, p2048));
        index.add(PeerId(30), &fixed(30, p2048));
        let mut checks = 0;
        let mut ask = |wanted: IkeProposal| {
            index.first_accepting(IkeVersion::V2, gw, peer, |o| {
                checks += 1;
                Some(if o.ike == wanted {
                    Ok(())
                } else {
                    Err(o.ike.dh)
                })
            })
        };
        // modp2048: the fixed-address tunnels come first, lowest id.
        assert_eq!(ask(p2048), Ok((PeerId(30), ())));
        // modp1024: no fixed tunnel has it; the lowest "any" one.
        assert_eq!(ask(p1024), Ok((PeerId(10), ())));
        // Nobody: the first refusing candidate in walk order is a fixed one.
        let other = ike(DhGroup::Ecp256);
        assert_eq!(ask(other), Err(Some((PeerId(30), DhGroup::Modp2048))));
        // Three groups (fixed modp2048, any modp1024, any modp2048) per message, not
        // 12 peers; the first message stopped after the fixed tier.
        assert_eq!(checks, 1 + 3 + 3);
        // Not a candidate at all (another version, or a filter saying no).
        let none: Result<(PeerId, ()), Option<(PeerId, ())>> =
            index.first_accepting(IkeVersion::V2, gw, peer, |_| None);
        assert_eq!(none, Err(None));
        assert_eq!(
            index.first_accepting(IkeVersion::V1, gw, peer, |_| Some(Ok::<(), ()>(()))),
            Err(None)
        );
        let key = |ike| OfferKey {
            ike,
            mode: V1Mode::default(),
        };
        assert_eq!(
            index.count_with_offer(IkeVersion::V2, gw, peer, &key(p2048)),
            3
        );
        assert_eq!(
            index.count_with_offer(IkeVersion::V2, gw, peer, &key(p1024)),
            9
        );
        // Removing peers shrinks and drops groups.
        index.remove(PeerId(30), &fixed(30, p2048));
        index.remove(PeerId(31), &fixed(31, p2048));
        index.remove(PeerId(12), &any(12, p2048));
        assert_eq!(
            index.count_with_offer(IkeVersion::V2, gw, peer, &key(p2048)),
            0
        );
        let mut groups = 0;
        let found = index.first_accepting(IkeVersion::V2, gw, peer, |o| {
            groups += 1;
            Some(if o.ike == p2048 { Ok(()) } else { Err(()) })
        });
        assert_eq!((found, groups), (Err(Some((PeerId(10), ()))), 1));
    }

    /// The index follows `update_peer` and `remove_peer`.
    #[test]
    fn index_follows_peer_changes() {
        let (mut init, mut resp, now) = pair(4);
        let mut moved = responder(2);
        moved.remote_id = Identity::Fqdn("T3.bench.example".into());
        resp.remove_peer(now, PeerId(3)).unwrap();
        resp.update_peer(now, PeerId(2), moved).unwrap();
        let id = Identity::Fqdn("t3.bench.example".into()).to_wire();
        assert_eq!(
            resp.index.by_remote_id(&id).collect::<Vec<_>>(),
            [PeerId(2)]
        );
        let old = Identity::Fqdn("t2.bench.example".into()).to_wire();
        assert_eq!(resp.index.by_remote_id(&old).count(), 0);
        init.initiate(now, PeerId(3)).unwrap();
        pump(&mut init, &mut resp, now);
        assert_eq!(resp.child_sas(PeerId(2)).len(), 1);
    }

    /// A half-open SA that times out leaves neither the SA table nor the map that
    /// answers retransmitted IKE_SA_INITs.
    #[test]
    fn half_open_timeout_frees_every_index_entry() {
        let (mut init, mut resp, now) = pair(2);
        init.initiate(now, PeerId(0)).unwrap();
        pump_init(&mut init, &mut resp, now);
        assert_eq!(resp.half_open.len(), 1);
        let t = resp.poll_timeout().unwrap();
        assert_eq!(t, now + EndpointConfig::default().half_open_timeout);
        resp.handle_timeout(t);
        assert_eq!(resp.sas.len(), 0);
        assert!(resp.half_open.is_empty());
        assert_eq!(resp.sas.unidentified().count(), 0);
        assert_eq!(resp.poll_timeout(), None);
    }

    /// Removing the only peer an IKE_SA_INIT could be from drops its half-open SA.
    #[test]
    fn remove_peer_drops_its_sole_half_open_sa() {
        let (mut init, mut resp, now) = pair(1);
        init.initiate(now, PeerId(0)).unwrap();
        pump_init(&mut init, &mut resp, now);
        assert!(resp.sas.unidentified().all(|(_, s)| s.sole_candidate));
        resp.remove_peer(now, PeerId(0)).unwrap();
        assert_eq!(resp.sas.len(), 0);
    }

    /// The timer index follows changes made through `get_mut` (ESP activity moves
    /// the DPD deadline) and through take-out/put-back.
    #[test]
    fn timer_index_follows_dpd_activity() {
        let (mut init, mut resp, now) = pair(1);
        init.initiate(now, PeerId(0)).unwrap();
        pump(&mut init, &mut resp, now);
        // DPD (30 s) is the earliest deadline of the established SA.
        assert_eq!(resp.poll_timeout(), Some(now + Duration::from_secs(30)));
        resp.handle_child_activity(now + Duration::from_secs(10), PeerId(0));
        assert_eq!(resp.poll_timeout(), Some(now + Duration::from_secs(40)));
        // At the deadline the liveness check goes out and the next timer is its
        // retransmission.
        let t = now + Duration::from_secs(40);
        resp.handle_timeout(t);
        assert!(resp.poll_transmit().is_some());
        assert_eq!(
            resp.poll_timeout(),
            Some(t + EndpointConfig::default().retransmit_base)
        );
    }

    /// Initiations to one address beyond `max_initiating` wait and start, in order, as
    /// earlier ones complete: the burst on the wire is bounded, every tunnel comes up.
    /// IKEv1 too: there a slot is held until Main Mode ends, and the responder binds
    /// each Main Mode to its first "any" tunnel until message 5 names the right one.
    #[test]
    fn initiations_to_one_address_are_paced() {
        for version in [IkeVersion::V2, IkeVersion::V1] {
            initiations_are_paced(version);
        }
    }

    fn initiations_are_paced(version: IkeVersion) {
        let (mut init, mut resp, now) = pair_of(10, version);
        init.cfg.max_initiating = 3;
        for i in 0..10 {
            init.initiate(now, PeerId(i)).unwrap();
        }
        // A queued peer is not queued twice nor started by a second `initiate`.
        init.initiate(now, PeerId(9)).unwrap();
        assert_eq!(init.pacing.queued(), 7);
        let mut burst = Vec::new();
        while let Some(t) = init.poll_transmit() {
            burst.push(t);
        }
        assert_eq!(burst.len(), 3, "one IKE_SA_INIT per slot");
        for t in burst {
            resp.handle_datagram(now, t.remote, t.local, &t.payload);
        }
        let mut most = 0;
        for _ in 0..40 {
            let mut moved = false;
            let mut in_flight = 0;
            while let Some(t) = resp.poll_transmit() {
                init.handle_datagram(now, t.remote, t.local, &t.payload);
                moved = true;
            }
            while let Some(t) = init.poll_transmit() {
                resp.handle_datagram(now, t.remote, t.local, &t.payload);
                in_flight += 1;
                moved = true;
            }
            most = most.max(in_flight);
            if !moved {
                break;
            }
        }
        // IKEv1: a Quick Mode follows each Main Mode outside the window.
        let bound = if version == IkeVersion::V1 { 6 } else { 3 };
        assert!(most <= bound, "{version:?}: {most} requests in one round");
        assert_eq!(established(&mut resp), 10);
        assert_eq!(init.pacing.queued(), 0);
        for i in 0..10 {
            assert_eq!(init.child_sas(PeerId(i)).len(), 1, "peer {i}");
        }
    }

    /// A failed initiation frees its slot too: removing the peers in flight starts the
    /// queued ones.
    #[test]
    fn removing_peers_in_flight_starts_queued_ones() {
        for version in [IkeVersion::V2, IkeVersion::V1] {
            let (mut init, mut resp, now) = pair_of(4, version);
            init.cfg.max_initiating = 2;
            for i in 0..4 {
                init.initiate(now, PeerId(i)).unwrap();
            }
            assert_eq!(init.pacing.queued(), 2, "{version:?}");
            while init.poll_transmit().is_some() {}
            init.remove_peer(now, PeerId(0)).unwrap();
            init.remove_peer(now, PeerId(1)).unwrap();
            assert_eq!(init.pacing.queued(), 0, "{version:?}");
            pump(&mut init, &mut resp, now);
            assert_eq!(established(&mut resp), 2, "{version:?}");
            assert_eq!(init.child_sas(PeerId(3)).len(), 1, "{version:?}");
        }
    }

    fn pair(n: u64) -> (Endpoint, Endpoint, Instant) {
        pair_of(n, IkeVersion::V2)
    }

    fn pair_of(n: u64, version: IkeVersion) -> (Endpoint, Endpoint, Instant) {
        let mut init = Endpoint::new(EndpointConfig::default(), Box::new(Rng(1)));
        let mut resp = Endpoint::new(EndpointConfig::default(), Box::new(Rng(2)));
        for i in 0..n {
            let (a, b) = (initiator(i), responder(i));
            init.add_peer(PeerId(i), PeerConfig { version, ..a })
                .unwrap();
            resp.add_peer(PeerId(i), PeerConfig { version, ..b })
                .unwrap();
        }
        (init, resp, epoch())
    }

    /// IKE_SA_INIT only: the initiator's requests to the responder and back.
    fn pump_init(init: &mut Endpoint, resp: &mut Endpoint, now: Instant) {
        while let Some(t) = init.poll_transmit() {
            resp.handle_datagram(now, t.remote, t.local, &t.payload);
        }
    }

    fn pump(init: &mut Endpoint, resp: &mut Endpoint, now: Instant) {
        for _ in 0..8 {
            let mut moved = false;
            while let Some(t) = init.poll_transmit() {
                resp.handle_datagram(now, t.remote, t.local, &t.payload);
                moved = true;
            }
            while let Some(t) = resp.poll_transmit() {
                init.handle_datagram(now, t.remote, t.local, &t.payload);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    fn established(e: &mut Endpoint) -> usize {
        std::iter::from_fn(|| e.poll_event())
            .filter(|ev| matches!(ev, Event::ChildSaEstablished { .. }))
            .count()
    }

    /// The gateway side: "any" peer address, told apart by remote identity.
    fn responder(i: u64) -> PeerConfig {
        PeerConfig {
            local: SocketAddr::from((GW, 500)),
            remote: None,
            local_id: Identity::Ipv4(GW),
            remote_id: Identity::Fqdn(format!("t{i}.bench.example")),
            ..common()
        }
    }

    fn initiator(i: u64) -> PeerConfig {
        PeerConfig {
            local: SocketAddr::from((PEER, 500)),
            remote: Some(SocketAddr::from((GW, 500))),
            local_id: Identity::Fqdn(format!("t{i}.bench.example")),
            remote_id: Identity::Ipv4(GW),
            ..common()
        }
    }

    fn common() -> PeerConfig {
        PeerConfig {
            version: IkeVersion::V2,
            v1_mode: V1Mode::Main,
            local: SocketAddr::from((GW, 500)),
            remote: None,
            local_id: Identity::Ipv4(GW),
            remote_id: Identity::Ipv4(PEER),
            psk: Psk::new("table-test-psk"),
            ike: IkeProposal {
                encr: Encr::AesCbc128,
                integ: Integ::HmacSha1_96,
                dh: DhGroup::Curve25519,
            },
            esp: EspProposal {
                encr: Encr::AesCbc128,
                integ: Integ::HmacSha1_96,
                pfs: None,
            },
            ike_lifetime: Duration::from_secs(3600),
            child_lifetime: Duration::from_secs(1200),
            local_ts: vec![Ipv4Cidr::ANY],
            remote_ts: vec![Ipv4Cidr::ANY],
            dpd_interval: Some(Duration::from_secs(30)),
            dpd_timeout: Duration::from_secs(120),
            nat_traversal: true,
        }
    }

    /// The virtual clock's epoch: the engine never reads a clock itself.
    #[allow(clippy::disallowed_methods)]
    fn epoch() -> Instant {
        Instant::now()
    }

    /// SplitMix64: deterministic SPIs, nonces and DH values.
    struct Rng(u64);

    impl Random for Rng {
        fn fill(&mut self, buf: &mut [u8]) {
            for chunk in buf.chunks_mut(8) {
                self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = self.0;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                chunk.copy_from_slice(&z.to_be_bytes()[..chunk.len()]);
            }
        }
    }
}
