//! The SA database: inbound SAs by SPI, outbound SAs by a caller-chosen key (the tunnel).
//!
//! Lookups never lock: each table is split into [`SHARDS`] shards, each an immutable
//! snapshot behind an [`ArcSwap`]. Updates (a Child SA is created, rekeyed or deleted)
//! copy the one shard the key falls in, change the copy and swap it in, one writer at a
//! time. One copy-on-write table per direction cost O(SAs) per update, O(n²) to bring up
//! n tunnels (issue 8: 10,000 tunnels from one peer); a shard holds 1/[`SHARDS`] of them.
//! A worker that keeps an [`SaDbCache`] pays, per lookup, the shard choice, one relaxed
//! load to see whether that shard changed, and the hash probe.
//!
//! Make-before-break rekeying (RFC 7296 §2.8): [`SaDb::rekey`] installs the new inbound SA
//! *before* it switches the outbound one, so packets the peer protects with the new SA are
//! accepted from the moment we could have told the peer about it; the old inbound SA keeps
//! accepting until [`SaDb::remove_inbound`] (after the IKE Delete).

use core::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, Cache};

use crate::sa::{InboundSa, OutboundSa};

/// Shards per table (a power of two). With 10,000 tunnels an update copies ~160 entries.
pub const SHARDS: usize = 64;

/// Errors of SA database updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaDbError {
    /// An inbound SA with this SPI is installed already (SPIs are ours and must be unique,
    /// RFC 4301 §4.1).
    #[error("inbound SPI {0:#010x} is in use")]
    SpiInUse(u32),
}

type Hashing = BuildHasherDefault<SpiHasher>;
type InboundMap = HashMap<u32, Arc<InboundSa>, Hashing>;
type OutboundMap<K> = HashMap<K, Arc<OutboundSa>, Hashing>;
type Shards<M> = Arc<[ArcSwap<M>]>;

/// The SA database of one gateway node, shared by all workers (`Arc<SaDb<K>>`).
pub struct SaDb<K> {
    inbound: Shards<InboundMap>,
    outbound: Shards<OutboundMap<K>>,
    writer: Mutex<()>,
}

impl<K: Eq + Hash + Clone> SaDb<K> {
    pub fn new() -> Self {
        Self {
            inbound: (0..SHARDS)
                .map(|_| ArcSwap::from_pointee(InboundMap::default()))
                .collect(),
            outbound: (0..SHARDS)
                .map(|_| ArcSwap::from_pointee(OutboundMap::default()))
                .collect(),
            writer: Mutex::new(()),
        }
    }

    /// The inbound SA for `spi`. Lock-free; costs a reference-count increment, which a
    /// worker avoids with [`Self::cache`].
    pub fn inbound(&self, spi: u32) -> Option<Arc<InboundSa>> {
        self.inbound_shard(&spi).load().get(&spi).cloned()
    }

    /// The outbound SA of a tunnel. Lock-free.
    pub fn outbound(&self, key: &K) -> Option<Arc<OutboundSa>> {
        self.outbound_shard(key).load().get(key).cloned()
    }

    /// A per-worker view whose lookups touch no shared counter.
    pub fn cache(&self) -> SaDbCache<K> {
        SaDbCache {
            inbound: (0..SHARDS)
                .map(|i| Cache::new(ShardRef(Arc::clone(&self.inbound), i)))
                .collect(),
            outbound: (0..SHARDS)
                .map(|i| Cache::new(ShardRef(Arc::clone(&self.outbound), i)))
                .collect(),
        }
    }

    /// Adds an inbound SA; it accepts packets as soon as this returns.
    pub fn install_inbound(&self, sa: Arc<InboundSa>) -> Result<(), SaDbError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let shard = self.inbound_shard(&sa.spi());
        let current = shard.load();
        if current.contains_key(&sa.spi()) {
            return Err(SaDbError::SpiInUse(sa.spi()));
        }
        let mut next = InboundMap::clone(&current);
        tracing::debug!(
            spi = format_args!("{:#010x}", sa.spi()),
            "inbound SA installed"
        );
        next.insert(sa.spi(), sa);
        shard.store(Arc::new(next));
        Ok(())
    }

    /// Removes an inbound SA (after the IKE Delete, or when its hard lifetime ends).
    /// Workers that looked it up before may finish the packets they hold.
    pub fn remove_inbound(&self, spi: u32) -> Option<Arc<InboundSa>> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let shard = self.inbound_shard(&spi);
        let current = shard.load();
        let removed = current.get(&spi).cloned()?;
        let mut next = InboundMap::clone(&current);
        next.remove(&spi);
        shard.store(Arc::new(next));
        tracing::debug!(spi = format_args!("{spi:#010x}"), "inbound SA removed");
        Some(removed)
    }

    /// Makes `sa` the tunnel's outbound SA at once; returns the one it replaces.
    pub fn set_outbound(&self, key: K, sa: Arc<OutboundSa>) -> Option<Arc<OutboundSa>> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let shard = self.outbound_shard(&key);
        let mut next = OutboundMap::clone(&shard.load());
        let spi = sa.spi();
        let old = next.insert(key, sa);
        shard.store(Arc::new(next));
        tracing::debug!(
            spi = format_args!("{spi:#010x}"),
            replaced = ?old.as_ref().map(|sa| sa.spi()),
            "outbound SA switched"
        );
        old
    }

    /// Stops sending on a tunnel; returns its outbound SA.
    pub fn remove_outbound(&self, key: &K) -> Option<Arc<OutboundSa>> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let shard = self.outbound_shard(key);
        let current = shard.load();
        let removed = current.get(key).cloned()?;
        let mut next = OutboundMap::clone(&current);
        next.remove(key);
        shard.store(Arc::new(next));
        tracing::debug!(
            spi = format_args!("{:#010x}", removed.spi()),
            "outbound SA removed"
        );
        Some(removed)
    }

    /// Make-before-break: installs `inbound`, then switches the tunnel's outbound SA to
    /// `outbound`. Returns the old outbound SA; the old inbound SA stays installed until
    /// the caller removes it. Fails, changing nothing, if the new SPI is in use.
    pub fn rekey(
        &self,
        key: K,
        inbound: Arc<InboundSa>,
        outbound: Arc<OutboundSa>,
    ) -> Result<Option<Arc<OutboundSa>>, SaDbError> {
        self.install_inbound(inbound)?;
        Ok(self.set_outbound(key, outbound))
    }

    fn inbound_shard(&self, spi: &u32) -> &ArcSwap<InboundMap> {
        &self.inbound[shard_of(spi)]
    }

    fn outbound_shard(&self, key: &K) -> &ArcSwap<OutboundMap<K>> {
        &self.outbound[shard_of(key)]
    }
}

impl<K> SaDb<K> {
    /// Number of inbound SAs.
    pub fn inbound_len(&self) -> usize {
        self.inbound.iter().map(|s| s.load().len()).sum()
    }

    /// Number of tunnels with an outbound SA.
    pub fn outbound_len(&self) -> usize {
        self.outbound.iter().map(|s| s.load().len()).sum()
    }
}

impl<K: Eq + Hash + Clone> Default for SaDb<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> core::fmt::Debug for SaDb<K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SaDb")
            .field("inbound", &self.inbound_len())
            .field("outbound", &self.outbound_len())
            .finish()
    }
}

/// One worker's view of an [`SaDb`] (`Send`, not shared). Lookups return references into
/// the shard snapshots the cache holds; the cache picks up a shard's new snapshot on the
/// next lookup in that shard after an update.
pub struct SaDbCache<K> {
    inbound: Box<[ShardCache<InboundMap>]>,
    outbound: Box<[ShardCache<OutboundMap<K>>]>,
}

type ShardCache<M> = Cache<ShardRef<M>, Arc<M>>;

impl<K: Eq + Hash> SaDbCache<K> {
    pub fn inbound(&mut self, spi: u32) -> Option<&Arc<InboundSa>> {
        self.inbound.get_mut(shard_of(&spi))?.load().get(&spi)
    }

    pub fn outbound(&mut self, key: &K) -> Option<&Arc<OutboundSa>> {
        self.outbound.get_mut(shard_of(key))?.load().get(key)
    }
}

/// One shard of a table, as an [`arc_swap::Cache`] wants it: something that derefs to
/// the shard's [`ArcSwap`].
struct ShardRef<M>(Shards<M>, usize);

impl<M> core::ops::Deref for ShardRef<M> {
    type Target = ArcSwap<M>;

    fn deref(&self) -> &ArcSwap<M> {
        // The index was taken from `0..SHARDS` over this same slice.
        &self.0[self.1]
    }
}

/// The shard of a key: bits of its hash above those a shard's own map uses for buckets
/// and control bytes at any realistic size, so that the keys of one shard still spread
/// over that shard's buckets.
fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    let h = Hashing::default().hash_one(key);
    (h >> 40) as usize & (SHARDS - 1)
}

/// Hasher for SPIs. Our inbound SPIs are random (chosen by us), and a peer can only look up
/// keys, not insert them, so a multiplicative mix is enough and much cheaper than SipHash.
#[derive(Default, Clone, Copy)]
pub struct SpiHasher(u64);

impl Hasher for SpiHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        // Fibonacci hashing; fold the high half down so the low bits (bucket index) and
        // the top 7 bits (control byte) both depend on every input bit.
        let m = (self.0 ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = m ^ (m >> 32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::{TestRandom, buffer_for, params, peer_packet};
    use crate::{Decapsulated, HEADROOM_MAX, SaParams};
    use crypto::Encr;

    fn inbound(spi: u32) -> Arc<InboundSa> {
        Arc::new(InboundSa::new(with_spi(spi)).unwrap())
    }

    fn outbound(spi: u32) -> Arc<OutboundSa> {
        let mut p = with_spi(spi);
        core::mem::swap(&mut p.local, &mut p.remote);
        core::mem::swap(&mut p.selectors.local, &mut p.selectors.remote);
        Arc::new(OutboundSa::new(p, &mut TestRandom(u64::from(spi))).unwrap())
    }

    fn with_spi(spi: u32) -> SaParams {
        let mut p = params(Encr::AesGcm16_128, None, true);
        p.spi = spi;
        p
    }

    fn send(sa: &OutboundSa) -> Vec<u8> {
        let mut buf = buffer_for(100);
        let len = peer_packet(&mut buf[HEADROOM_MAX..], 20);
        let range = sa.encapsulate(&mut buf, HEADROOM_MAX, len).unwrap().range;
        buf[range].to_vec()
    }

    /// The receive path of a worker: SPI from the header, SA from the database.
    fn receive(db: &SaDb<&'static str>, mut packet: Vec<u8>) -> Result<u32, String> {
        let spi = u32::from_be_bytes(packet[..4].try_into().unwrap());
        let sa = db.inbound(spi).ok_or("no SA")?;
        match sa.decapsulate(&mut packet) {
            Ok(Decapsulated::Packet { .. }) => Ok(spi),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn lookup_install_remove() {
        let db = SaDb::<&str>::new();
        assert!(db.inbound(1).is_none());
        db.install_inbound(inbound(1)).unwrap();
        db.install_inbound(inbound(2)).unwrap();
        assert_eq!(db.install_inbound(inbound(1)), Err(SaDbError::SpiInUse(1)));
        assert_eq!(db.inbound(1).unwrap().spi(), 1);
        assert_eq!(db.inbound_len(), 2);
        assert_eq!(db.remove_inbound(1).unwrap().spi(), 1);
        assert!(db.remove_inbound(1).is_none());
        assert!(db.inbound(1).is_none());
        assert!(db.outbound(&"t1").is_none());
        assert!(db.set_outbound("t1", outbound(10)).is_none());
        assert_eq!(db.outbound(&"t1").unwrap().spi(), 10);
        assert_eq!(db.remove_outbound(&"t1").unwrap().spi(), 10);
        assert_eq!(db.outbound_len(), 0);
    }

    #[test]
    fn make_before_break_rekey() {
        // Two gateways, A (this db) and B (the peer). Old SA pair: B→A SPI 0x100 (A's
        // inbound), A→B SPI 0x200.
        let a = SaDb::<&str>::new();
        let peer_old = outbound(0x100);
        a.install_inbound(inbound(0x100)).unwrap();
        a.set_outbound("t1", outbound(0x200));
        let in_flight_old = send(&peer_old);

        // Rekey: A installs its new inbound 0x101 before switching outbound to 0x201.
        let replaced = a.rekey("t1", inbound(0x101), outbound(0x201)).unwrap();
        assert_eq!(replaced.unwrap().spi(), 0x200);
        assert_eq!(a.outbound(&"t1").unwrap().spi(), 0x201);
        // The peer may already send on the new SA...
        let peer_new = outbound(0x101);
        assert_eq!(receive(&a, send(&peer_new)), Ok(0x101));
        // ...and packets on the old one still arrive until it is deleted.
        assert_eq!(receive(&a, in_flight_old), Ok(0x100));
        assert_eq!(receive(&a, send(&peer_old)), Ok(0x100));
        a.remove_inbound(0x100);
        assert_eq!(receive(&a, send(&peer_old)), Err("no SA".into()));
        assert_eq!(receive(&a, send(&peer_new)), Ok(0x101));
        // A clashing SPI changes nothing.
        assert!(matches!(
            a.rekey("t1", inbound(0x101), outbound(0x202)),
            Err(SaDbError::SpiInUse(0x101))
        ));
        assert_eq!(a.outbound(&"t1").unwrap().spi(), 0x201);
    }

    #[test]
    fn worker_cache_sees_updates() {
        let db = SaDb::<u32>::new();
        let mut cache = db.cache();
        assert!(cache.inbound(7).is_none());
        db.install_inbound(inbound(7)).unwrap();
        assert_eq!(cache.inbound(7).unwrap().spi(), 7);
        db.set_outbound(1, outbound(8));
        assert_eq!(cache.outbound(&1).unwrap().spi(), 8);
        db.set_outbound(1, outbound(9));
        assert_eq!(cache.outbound(&1).unwrap().spi(), 9);
        db.remove_inbound(7);
        assert!(cache.inbound(7).is_none());
    }

    #[test]
    fn lookups_race_with_updates() {
        let db = Arc::new(SaDb::<u32>::new());
        db.install_inbound(inbound(1)).unwrap();
        std::thread::scope(|scope| {
            for _ in 0..2 {
                let db = Arc::clone(&db);
                scope.spawn(move || {
                    let mut cache = db.cache();
                    for _ in 0..20_000 {
                        // SPI 1 is never removed: every lookup must find it.
                        assert!(cache.inbound(1).is_some());
                        assert!(db.inbound(1).is_some());
                    }
                });
            }
            for spi in 2..200 {
                db.install_inbound(inbound(spi)).unwrap();
                if spi % 2 == 0 {
                    db.remove_inbound(spi);
                }
            }
        });
        assert_eq!(db.inbound_len(), 1 + 99);
    }

    #[test]
    fn an_update_copies_only_its_shard() {
        let db = SaDb::<u64>::new();
        for spi in 0..1000 {
            db.install_inbound(inbound(spi)).unwrap();
            db.set_outbound(u64::from(spi), outbound(spi));
        }
        let before: Vec<_> = db.inbound.iter().map(ArcSwap::load_full).collect();
        let out_before: Vec<_> = db.outbound.iter().map(ArcSwap::load_full).collect();
        db.install_inbound(inbound(5000)).unwrap();
        db.set_outbound(5000, outbound(5000));
        fn changed<M>(old: &[Arc<M>], new: &[ArcSwap<M>]) -> Vec<usize> {
            (0..SHARDS)
                .filter(|&i| !Arc::ptr_eq(&old[i], &new[i].load()))
                .collect()
        }
        assert_eq!(changed(&before, &db.inbound), vec![shard_of(&5000u32)]);
        assert_eq!(changed(&out_before, &db.outbound), vec![shard_of(&5000u64)]);
        // The copy holds its shard's share, not the whole table.
        let largest = db.inbound.iter().map(|s| s.load().len()).max().unwrap();
        assert!(largest < 3 * 1001 / SHARDS, "{largest}");
    }

    #[test]
    fn many_sas_install_and_remove_across_shards() {
        let db = SaDb::<u64>::new();
        let mut cache = db.cache();
        // Sequential SPIs (how some peers allocate them) and random-looking ones.
        let spis: Vec<u32> = (1..=3000u32)
            .map(|i| {
                if i % 2 == 0 {
                    i
                } else {
                    i.wrapping_mul(0x9e37_79b9)
                }
            })
            .collect();
        for &spi in &spis {
            db.install_inbound(inbound(spi)).unwrap();
            assert!(db.set_outbound(u64::from(spi), outbound(spi)).is_none());
        }
        assert_eq!(db.inbound_len(), spis.len());
        assert_eq!(db.outbound_len(), spis.len());
        assert!(db.inbound.iter().all(|s| !s.load().is_empty()));
        for &spi in &spis {
            assert_eq!(cache.inbound(spi).unwrap().spi(), spi);
            assert_eq!(cache.outbound(&u64::from(spi)).unwrap().spi(), spi);
        }
        for &spi in spis.iter().step_by(3) {
            assert_eq!(db.remove_inbound(spi).unwrap().spi(), spi);
            assert_eq!(db.remove_outbound(&u64::from(spi)).unwrap().spi(), spi);
        }
        for (i, &spi) in spis.iter().enumerate() {
            let kept = i % 3 != 0;
            assert_eq!(cache.inbound(spi).is_some(), kept, "{spi:#x}");
            assert_eq!(db.outbound(&u64::from(spi)).is_some(), kept, "{spi:#x}");
            assert_eq!(
                db.install_inbound(inbound(spi)) == Err(SaDbError::SpiInUse(spi)),
                kept
            );
        }
    }

    #[test]
    fn readers_in_every_shard_race_with_updates() {
        let db = Arc::new(SaDb::<u64>::new());
        // One SA that is never removed in each shard (and its tunnel's outbound SA).
        let mut fixed = vec![None; SHARDS];
        let mut spi = 1u32;
        while fixed.iter().any(Option::is_none) {
            fixed[shard_of(&spi)].get_or_insert(spi);
            spi += 1;
        }
        let fixed: Vec<u32> = fixed.into_iter().flatten().collect();
        for &spi in &fixed {
            db.install_inbound(inbound(spi)).unwrap();
            db.set_outbound(u64::from(spi), outbound(spi));
        }
        std::thread::scope(|scope| {
            for _ in 0..2 {
                let (db, fixed) = (Arc::clone(&db), &fixed);
                scope.spawn(move || {
                    let mut cache = db.cache();
                    for round in 0..300 {
                        for &spi in fixed {
                            assert_eq!(cache.inbound(spi).map(|s| s.spi()), Some(spi));
                            let key = u64::from(spi);
                            assert_eq!(cache.outbound(&key).map(|s| s.spi()), Some(spi));
                            if round % 50 == 0 {
                                assert!(db.inbound(spi).is_some());
                            }
                        }
                    }
                });
            }
            for spi in 100_000..101_000u32 {
                db.install_inbound(inbound(spi)).unwrap();
                db.set_outbound(u64::from(spi), outbound(spi));
                if spi % 2 == 0 {
                    db.remove_inbound(spi);
                    db.remove_outbound(&u64::from(spi));
                }
            }
        });
        assert_eq!(db.inbound_len(), fixed.len() + 500);
        assert_eq!(db.outbound_len(), fixed.len() + 500);
    }

    #[test]
    fn spi_hash_spreads_low_bits() {
        // Sequential SPIs (some peers allocate them so) must not share buckets.
        let buckets: std::collections::HashSet<u64> = (0u32..256)
            .map(|spi| {
                let mut h = SpiHasher::default();
                h.write_u32(spi);
                h.finish() & 0xff
            })
            .collect();
        assert!(buckets.len() > 150, "{}", buckets.len());
    }
}
