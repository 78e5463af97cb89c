//! Loc-RIB across sessions: the RFC 4271 §9.1 decision process (enough for
//! eBGP), AS-path loop detection (§9.1.2), an optional ECMP set, and diffs
//! the node installs into the gateway route table.
//!
//! Each session's Adj-RIB-In reaches the RIB as [`crate::RouteChanges`]
//! (from [`crate::Event::RoutesChanged`]); [`Rib::apply`] returns what
//! changed in the selected routes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use crate::session::RouteChanges;
use crate::update::{Origin, PathAttrs};

/// The node's handle for a session (any unique number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// What the decision process needs to know about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub asn: u32,
    /// BGP identifier from its OPEN (tie-break, RFC 4271 §9.1.2.2 f).
    pub router_id: Ipv4Addr,
    /// Peer address (last tie-break, §9.1.2.2 g).
    pub addr: Ipv4Addr,
    pub ebgp: bool,
    /// Degree of preference given to this peer's routes (RFC 4271
    /// §9.1.1: local policy; e.g. prefer tunnel 1 over tunnel 2). `None`:
    /// the default (100), or the received LOCAL_PREF on iBGP.
    pub local_pref: Option<u32>,
}

/// RIB settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibConfig {
    pub local_asn: u32,
    /// Largest ECMP set; 1 disables multipath (FRR `maximum-paths`).
    pub max_paths: usize,
    pub default_local_pref: u32,
}

impl RibConfig {
    pub fn new(local_asn: u32) -> Self {
        Self {
            local_asn,
            max_paths: 1,
            default_local_pref: 100,
        }
    }
}

/// A route from one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub peer: PeerId,
    pub next_hop: Ipv4Addr,
    pub attrs: Arc<PathAttrs>,
}

/// The outcome of the decision process for a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// The best route first, then the other ECMP members (at most
    /// `max_paths` in all), in tie-break order.
    pub paths: Vec<Route>,
}

impl Selected {
    pub fn best(&self) -> Option<&Route> {
        self.paths.first()
    }

    pub fn next_hops(&self) -> Vec<Ipv4Addr> {
        self.paths.iter().map(|r| r.next_hop).collect()
    }
}

/// What changed in the Loc-RIB.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RibDiff {
    pub added: Vec<(Ipv4Net, Selected)>,
    pub changed: Vec<(Ipv4Net, Selected)>,
    pub removed: Vec<Ipv4Net>,
}

impl RibDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Loc-RIB plus the Adj-RIBs-In it was computed from.
#[derive(Debug)]
pub struct Rib {
    config: RibConfig,
    peers: HashMap<PeerId, PeerInfo>,
    /// prefix -> routes by peer.
    candidates: BTreeMap<Ipv4Net, BTreeMap<PeerId, Arc<PathAttrs>>>,
    selected: BTreeMap<Ipv4Net, Selected>,
}

impl Rib {
    pub fn new(config: RibConfig) -> Self {
        Self {
            config,
            peers: HashMap::new(),
            candidates: BTreeMap::new(),
            selected: BTreeMap::new(),
        }
    }

    /// Adds or updates a peer (call on `Established`); re-runs the decision
    /// for its routes if its preference changed.
    pub fn set_peer(&mut self, id: PeerId, info: PeerInfo) -> RibDiff {
        if self.peers.insert(id, info.clone()).as_ref() == Some(&info) {
            return RibDiff::default();
        }
        let affected: BTreeSet<Ipv4Net> = self
            .candidates
            .iter()
            .filter(|(_, c)| c.contains_key(&id))
            .map(|(p, _)| *p)
            .collect();
        self.recompute(affected)
    }

    /// Applies one session's Adj-RIB-In diff.
    pub fn apply(&mut self, peer: PeerId, changes: &RouteChanges) -> RibDiff {
        let mut affected = BTreeSet::new();
        for p in &changes.withdrawn {
            if let Some(c) = self.candidates.get_mut(p) {
                if c.remove(&peer).is_some() {
                    affected.insert(*p);
                }
                if c.is_empty() {
                    self.candidates.remove(p);
                }
            }
        }
        for (p, attrs) in &changes.announced {
            self.candidates
                .entry(*p)
                .or_default()
                .insert(peer, attrs.clone());
            affected.insert(*p);
        }
        self.recompute(affected)
    }

    /// Withdraws everything from `peer` and forgets it.
    pub fn remove_peer(&mut self, peer: PeerId) -> RibDiff {
        let withdrawn: Vec<Ipv4Net> = self
            .candidates
            .iter()
            .filter(|(_, c)| c.contains_key(&peer))
            .map(|(p, _)| *p)
            .collect();
        let diff = self.apply(
            peer,
            &RouteChanges {
                announced: vec![],
                withdrawn,
            },
        );
        self.peers.remove(&peer);
        diff
    }

    pub fn selected(&self, prefix: &Ipv4Net) -> Option<&Selected> {
        self.selected.get(prefix)
    }

    /// All selected routes, in prefix order.
    pub fn iter(&self) -> impl Iterator<Item = (&Ipv4Net, &Selected)> {
        self.selected.iter()
    }

    fn recompute(&mut self, prefixes: BTreeSet<Ipv4Net>) -> RibDiff {
        let mut diff = RibDiff::default();
        for p in prefixes {
            let new = self.candidates.get(&p).and_then(|c| self.decide(c));
            let old = match &new {
                Some(s) => self.selected.insert(p, s.clone()),
                None => self.selected.remove(&p),
            };
            match (old, new) {
                (None, Some(s)) => diff.added.push((p, s)),
                (Some(_), None) => diff.removed.push(p),
                (Some(o), Some(n)) if o != n => diff.changed.push((p, n)),
                _ => {}
            }
        }
        diff
    }

    /// RFC 4271 §9.1.2: phase 1 preference, then the §9.1.2.2 tie-breaks
    /// applied by elimination (so MED only compares routes from the same
    /// neighbouring AS).
    fn decide(&self, candidates: &BTreeMap<PeerId, Arc<PathAttrs>>) -> Option<Selected> {
        let mut c: Vec<Cand<'_>> = candidates
            .iter()
            .filter_map(|(id, attrs)| {
                let peer = self.peers.get(id)?;
                let path = attrs.as_path.as_ref()?;
                // RFC 4271 §9.1.2: a route whose AS_PATH holds our own AS
                // is a loop and excluded.
                if path.contains(self.config.local_asn) {
                    return None;
                }
                let local_pref = peer.local_pref.unwrap_or(if peer.ebgp {
                    self.config.default_local_pref
                } else {
                    attrs.local_pref.unwrap_or(self.config.default_local_pref)
                });
                Some(Cand {
                    id: *id,
                    peer,
                    attrs,
                    next_hop: attrs.next_hop?,
                    local_pref,
                })
            })
            .collect();
        // §9.1.2.1 a.. highest degree of preference.
        keep_best(&mut c, |r| std::cmp::Reverse(r.local_pref));
        // §9.1.2.2 a-c.
        let attrs: Vec<&PathAttrs> = c.iter().map(|r| &**r.attrs).collect();
        let keep = most_preferred(&attrs);
        c = c
            .into_iter()
            .enumerate()
            .filter(|(i, _)| keep.contains(i))
            .map(|(_, r)| r)
            .collect();
        // d: eBGP over iBGP.
        keep_best(&mut c, |r| !r.peer.ebgp);
        // f, g: lowest BGP identifier, then lowest peer address.
        c.sort_by_key(|r| (r.peer.router_id, r.peer.addr, r.id));
        let best = c.first()?;
        let best_path = best.attrs.as_path.clone();
        let paths = c
            .iter()
            .filter(|r| r.attrs.as_path == best_path)
            .take(self.config.max_paths.max(1))
            .map(|r| Route {
                peer: r.id,
                next_hop: r.next_hop,
                attrs: r.attrs.clone(),
            })
            .collect();
        Some(Selected { paths })
    }
}

/// RFC 4271 §9.1.2.2 a-c among routes of equal degree of preference: the indices (in
/// input order) of the routes that survive, by elimination, the shortest AS_PATH, then
/// the lowest ORIGIN, then the lowest MED among routes from the same neighbouring AS
/// (a missing MED is 0; MEDs of different neighbouring ASes are not compared).
pub fn most_preferred(routes: &[&PathAttrs]) -> Vec<usize> {
    let path_len = |a: &PathAttrs| a.as_path.as_ref().map_or(0, |p| p.path_len());
    let origin = |a: &PathAttrs| a.origin.unwrap_or(Origin::Incomplete);
    let neighbor_as = |a: &PathAttrs| a.as_path.as_ref().and_then(|p| p.first_as());
    let med = |a: &PathAttrs| a.med.unwrap_or(0);
    let mut keep: Vec<usize> = (0..routes.len()).collect();
    // a: shortest AS_PATH.
    if let Some(best) = keep.iter().map(|&i| path_len(routes[i])).min() {
        keep.retain(|&i| path_len(routes[i]) == best);
    }
    // b: lowest ORIGIN.
    if let Some(best) = keep.iter().map(|&i| origin(routes[i])).min() {
        keep.retain(|&i| origin(routes[i]) == best);
    }
    // c: MED within the same neighbouring AS.
    let meds: Vec<(Option<u32>, u32)> = keep
        .iter()
        .map(|&i| (neighbor_as(routes[i]), med(routes[i])))
        .collect();
    keep.retain(|&i| {
        !meds
            .iter()
            .any(|(n, m)| *n == neighbor_as(routes[i]) && *m < med(routes[i]))
    });
    keep
}

struct Cand<'a> {
    id: PeerId,
    peer: &'a PeerInfo,
    attrs: &'a Arc<PathAttrs>,
    next_hop: Ipv4Addr,
    local_pref: u32,
}

fn keep_best<K: Ord>(c: &mut Vec<Cand<'_>>, key: impl Fn(&Cand<'_>) -> K) {
    if let Some(best) = c.iter().map(&key).min() {
        c.retain(|r| key(r) == best);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::AsPath;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn attrs(path: &[u32], nh: [u8; 4], med: Option<u32>, origin: Origin) -> Arc<PathAttrs> {
        Arc::new(PathAttrs {
            origin: Some(origin),
            as_path: Some(AsPath::sequence(path)),
            next_hop: Some(Ipv4Addr::from(nh)),
            med,
            ..PathAttrs::default()
        })
    }

    fn peer(asn: u32, id: u8) -> PeerInfo {
        PeerInfo {
            asn,
            router_id: Ipv4Addr::new(10, 0, 0, id),
            addr: Ipv4Addr::new(169, 254, id, 2),
            ebgp: true,
            local_pref: None,
        }
    }

    fn announce(p: &str, a: Arc<PathAttrs>) -> RouteChanges {
        RouteChanges {
            announced: vec![(net(p), a)],
            withdrawn: vec![],
        }
    }

    fn two_peer_rib(max_paths: usize) -> Rib {
        let mut rib = Rib::new(RibConfig {
            max_paths,
            ..RibConfig::new(45104)
        });
        rib.set_peer(PeerId(1), peer(65530, 1));
        rib.set_peer(PeerId(2), peer(65530, 2));
        rib
    }

    #[test]
    fn shortest_as_path_wins_and_diffs() {
        let mut rib = two_peer_rib(1);
        let d = rib.apply(
            PeerId(2),
            &announce(
                "10.1.0.0/24",
                attrs(&[65530, 65001], [169, 254, 2, 2], None, Origin::Igp),
            ),
        );
        assert_eq!(d.added.len(), 1);
        assert_eq!(d.added[0].1.next_hops(), [Ipv4Addr::new(169, 254, 2, 2)]);
        let d = rib.apply(
            PeerId(1),
            &announce(
                "10.1.0.0/24",
                attrs(&[65530], [169, 254, 1, 2], None, Origin::Igp),
            ),
        );
        assert!(d.added.is_empty());
        assert_eq!(d.changed.len(), 1);
        assert_eq!(d.changed[0].1.best().unwrap().peer, PeerId(1));
        // Withdrawing the best falls back to the other.
        let d = rib.apply(
            PeerId(1),
            &RouteChanges {
                announced: vec![],
                withdrawn: vec![net("10.1.0.0/24")],
            },
        );
        assert_eq!(d.changed[0].1.best().unwrap().peer, PeerId(2));
        // Removing the last path removes the prefix.
        let d = rib.remove_peer(PeerId(2));
        assert_eq!(d.removed, [net("10.1.0.0/24")]);
        assert!(rib.iter().next().is_none());
        // Re-announcing the same thing is no change.
        let a = attrs(&[65530], [169, 254, 1, 2], None, Origin::Igp);
        assert_eq!(
            rib.apply(PeerId(1), &announce("10.9.0.0/16", a.clone()))
                .added
                .len(),
            1
        );
        assert!(rib.apply(PeerId(1), &announce("10.9.0.0/16", a)).is_empty());
    }

    #[test]
    fn local_pref_origin_med_and_tie_break() {
        let mut rib = two_peer_rib(1);
        // Peer 2 gets a higher preference: it wins despite a longer path.
        let mut p2 = peer(65530, 2);
        p2.local_pref = Some(200);
        rib.set_peer(PeerId(2), p2);
        rib.apply(
            PeerId(1),
            &announce(
                "10.1.0.0/24",
                attrs(&[65530], [169, 254, 1, 2], None, Origin::Igp),
            ),
        );
        rib.apply(
            PeerId(2),
            &announce(
                "10.1.0.0/24",
                attrs(&[65530, 1], [169, 254, 2, 2], None, Origin::Igp),
            ),
        );
        assert_eq!(
            rib.selected(&net("10.1.0.0/24"))
                .unwrap()
                .best()
                .unwrap()
                .peer,
            PeerId(2)
        );
        // Dropping the preference re-runs the decision.
        let d = rib.set_peer(PeerId(2), peer(65530, 2));
        assert_eq!(d.changed[0].1.best().unwrap().peer, PeerId(1));

        // Lower ORIGIN wins.
        rib.apply(
            PeerId(1),
            &announce(
                "10.2.0.0/24",
                attrs(&[65530], [169, 254, 1, 2], None, Origin::Incomplete),
            ),
        );
        rib.apply(
            PeerId(2),
            &announce(
                "10.2.0.0/24",
                attrs(&[65530], [169, 254, 2, 2], None, Origin::Egp),
            ),
        );
        assert_eq!(
            rib.selected(&net("10.2.0.0/24"))
                .unwrap()
                .best()
                .unwrap()
                .peer,
            PeerId(2)
        );
        // Lower MED from the same neighbour AS wins.
        rib.apply(
            PeerId(1),
            &announce(
                "10.3.0.0/24",
                attrs(&[65530], [169, 254, 1, 2], Some(20), Origin::Igp),
            ),
        );
        rib.apply(
            PeerId(2),
            &announce(
                "10.3.0.0/24",
                attrs(&[65530], [169, 254, 2, 2], Some(10), Origin::Igp),
            ),
        );
        assert_eq!(
            rib.selected(&net("10.3.0.0/24"))
                .unwrap()
                .best()
                .unwrap()
                .peer,
            PeerId(2)
        );
        // Equal everything: lowest router id.
        rib.apply(
            PeerId(2),
            &announce(
                "10.4.0.0/24",
                attrs(&[65530], [169, 254, 2, 2], None, Origin::Igp),
            ),
        );
        rib.apply(
            PeerId(1),
            &announce(
                "10.4.0.0/24",
                attrs(&[65530], [169, 254, 1, 2], None, Origin::Igp),
            ),
        );
        assert_eq!(
            rib.selected(&net("10.4.0.0/24"))
                .unwrap()
                .best()
                .unwrap()
                .peer,
            PeerId(1)
        );
    }

    #[test]
    fn med_not_compared_across_neighbour_as() {
        let mut rib = Rib::new(RibConfig::new(45104));
        rib.set_peer(PeerId(1), peer(65530, 1));
        rib.set_peer(PeerId(2), peer(65531, 2));
        // Peer 1 has the worse MED but from another AS: router id decides.
        rib.apply(
            PeerId(1),
            &announce(
                "10.5.0.0/24",
                attrs(&[65530], [169, 254, 1, 2], Some(500), Origin::Igp),
            ),
        );
        rib.apply(
            PeerId(2),
            &announce(
                "10.5.0.0/24",
                attrs(&[65531], [169, 254, 2, 2], Some(5), Origin::Igp),
            ),
        );
        assert_eq!(
            rib.selected(&net("10.5.0.0/24"))
                .unwrap()
                .best()
                .unwrap()
                .peer,
            PeerId(1)
        );
    }

    #[test]
    fn as_path_loop_is_excluded() {
        let mut rib = two_peer_rib(1);
        // RFC 4271 §9.1.2: our own AS 45104 in the path.
        let d = rib.apply(
            PeerId(1),
            &announce(
                "10.6.0.0/24",
                attrs(&[65530, 45104, 7], [169, 254, 1, 2], None, Origin::Igp),
            ),
        );
        assert!(d.is_empty());
        assert!(rib.selected(&net("10.6.0.0/24")).is_none());
        // A loop-free path from the other peer is used even if longer.
        rib.apply(
            PeerId(2),
            &announce(
                "10.6.0.0/24",
                attrs(&[65530, 1, 2, 3], [169, 254, 2, 2], None, Origin::Igp),
            ),
        );
        assert_eq!(
            rib.selected(&net("10.6.0.0/24"))
                .unwrap()
                .best()
                .unwrap()
                .peer,
            PeerId(2)
        );
        // The looped route replacing a good one removes it.
        let d = rib.apply(
            PeerId(2),
            &announce(
                "10.6.0.0/24",
                attrs(&[65530, 45104], [169, 254, 2, 2], None, Origin::Igp),
            ),
        );
        assert_eq!(d.removed, [net("10.6.0.0/24")]);
    }

    #[test]
    fn multipath_set() {
        let mut rib = two_peer_rib(32);
        rib.set_peer(PeerId(3), peer(65530, 3));
        rib.apply(
            PeerId(2),
            &announce(
                "10.7.0.0/24",
                attrs(&[65530], [169, 254, 2, 2], None, Origin::Igp),
            ),
        );
        let d = rib.apply(
            PeerId(1),
            &announce(
                "10.7.0.0/24",
                attrs(&[65530], [169, 254, 1, 2], None, Origin::Igp),
            ),
        );
        assert_eq!(
            d.changed[0].1.next_hops(),
            [Ipv4Addr::new(169, 254, 1, 2), Ipv4Addr::new(169, 254, 2, 2)]
        );
        // A different AS_PATH of the same length is not part of the set.
        rib.apply(
            PeerId(3),
            &announce(
                "10.7.0.0/24",
                attrs(&[65533], [169, 254, 3, 2], None, Origin::Igp),
            ),
        );
        assert_eq!(rib.selected(&net("10.7.0.0/24")).unwrap().paths.len(), 2);
        // max_paths 1 keeps only the best.
        let mut rib1 = two_peer_rib(1);
        rib1.apply(
            PeerId(2),
            &announce(
                "10.7.0.0/24",
                attrs(&[65530], [169, 254, 2, 2], None, Origin::Igp),
            ),
        );
        rib1.apply(
            PeerId(1),
            &announce(
                "10.7.0.0/24",
                attrs(&[65530], [169, 254, 1, 2], None, Origin::Igp),
            ),
        );
        assert_eq!(rib1.selected(&net("10.7.0.0/24")).unwrap().paths.len(), 1);
    }
}
