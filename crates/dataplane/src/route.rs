//! IPv4 longest-prefix match, and the lock-free snapshot the workers read it through.
//!
//! [`RouteTable`] is a three-level multibit trie with strides 16, 8 and 8 and controlled
//! prefix expansion: a prefix of length 0..=16 is written into the 2^(16-len) root slots
//! it covers, 17..=24 into a 256-slot second-level node, 25..=32 into a third-level node.
//! Each slot holds the longest prefix of *its level* covering it, plus a child pointer, so
//! a lookup reads at most three slots (three dependent loads, no hashing, no allocation)
//! and keeps the deepest hit. Memory: 512 KiB of root plus 2 KiB per populated /16 and
//! per populated /24.
//!
//! Updates are O(2^(stride - len % stride)) slot writes plus a few hash probes to find
//! the covering prefix on removal. Workers never see a table being edited: the control
//! plane edits a clone and publishes it through [`SharedRoutes`] (arc-swap), so lookups
//! take neither a lock nor a reference count per packet.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Cache};
use ipnet::Ipv4Net;

const NONE: u32 = u32::MAX;
const ROOT_SLOTS: usize = 1 << 16;
const NODE_SLOTS: usize = 1 << 8;

#[derive(Clone, Copy)]
struct Slot {
    /// Index into `entries` of the longest prefix of this level covering the slot.
    best: u32,
    /// Index of the next-level node, or `NONE`.
    child: u32,
}

const EMPTY: Slot = Slot {
    best: NONE,
    child: NONE,
};

#[derive(Clone, Copy)]
struct Entry<V> {
    net: u32,
    len: u8,
    value: V,
}

/// IPv4 longest-prefix-match table from prefixes to a small `Copy` value (e.g. a next-hop
/// or tunnel index).
#[derive(Clone)]
pub struct RouteTable<V> {
    root: Box<[Slot]>,
    /// Second- and third-level nodes, `NODE_SLOTS` slots each, back to back.
    nodes: Vec<Slot>,
    /// Per node: prefixes stored in it plus child nodes hanging from it.
    node_refs: Vec<u32>,
    free_nodes: Vec<u32>,
    entries: Vec<Entry<V>>,
    free_entries: Vec<u32>,
    index: HashMap<(u32, u8), u32>,
}

impl<V: Copy> Default for RouteTable<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Copy> RouteTable<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            root: vec![EMPTY; ROOT_SLOTS].into_boxed_slice(),
            nodes: Vec::new(),
            node_refs: Vec::new(),
            free_nodes: Vec::new(),
            entries: Vec::new(),
            free_entries: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True if the table has no prefix.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The value of the longest prefix containing `addr`.
    #[inline]
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<V> {
        let best = self.lookup_index(u32::from(addr));
        self.entries.get(best as usize).map(|e| e.value)
    }

    /// The longest prefix containing `addr`, with its value.
    pub fn lookup_prefix(&self, addr: Ipv4Addr) -> Option<(Ipv4Net, V)> {
        let best = self.lookup_index(u32::from(addr));
        self.entries
            .get(best as usize)
            .map(|e| (net_of(e.net, e.len), e.value))
    }

    /// The value stored for exactly `net`.
    pub fn get(&self, net: Ipv4Net) -> Option<V> {
        let net = net.trunc();
        let idx = *self
            .index
            .get(&(u32::from(net.network()), net.prefix_len()))?;
        self.entries.get(idx as usize).map(|e| e.value)
    }

    /// Inserts or replaces `net` (host bits are ignored); returns the previous value.
    pub fn insert(&mut self, net: Ipv4Net, value: V) -> Option<V> {
        let net = net.trunc();
        let (p, len) = (u32::from(net.network()), net.prefix_len());
        if let Some(&idx) = self.index.get(&(p, len)) {
            let e = &mut self.entries[idx as usize];
            return Some(std::mem::replace(&mut e.value, value));
        }
        let idx = self.alloc_entry(Entry { net: p, len, value });
        self.index.insert((p, len), idx);
        let (base, start, count) = match len {
            0..=16 => (None, (p >> 16) as usize, 1usize << (16 - len)),
            17..=24 => {
                let n = self.root_child(p);
                self.node_refs[n as usize] += 1;
                (Some(n), ((p >> 8) & 0xff) as usize, 1 << (24 - len))
            }
            _ => {
                let n1 = self.root_child(p);
                let n2 = self.node_child(n1, ((p >> 8) & 0xff) as usize);
                self.node_refs[n2 as usize] += 1;
                (Some(n2), (p & 0xff) as usize, 1 << (32 - len))
            }
        };
        let entries = &self.entries;
        let slots = match base {
            None => &mut self.root[start..start + count],
            Some(n) => {
                let off = n as usize * NODE_SLOTS + start;
                &mut self.nodes[off..off + count]
            }
        };
        for s in slots {
            // Within one level the longest prefix wins; equal lengths cannot overlap.
            if s.best == NONE || entries[s.best as usize].len < len {
                s.best = idx;
            }
        }
        None
    }

    /// Removes exactly `net`; returns its value.
    pub fn remove(&mut self, net: Ipv4Net) -> Option<V> {
        let net = net.trunc();
        let (p, len) = (u32::from(net.network()), net.prefix_len());
        let idx = self.index.remove(&(p, len))?;
        let value = self.entries[idx as usize].value;
        let level_lo = match len {
            0..=16 => 0,
            17..=24 => 17,
            _ => 25,
        };
        // The slots that pointed at `idx` fall back to the longest shorter prefix of the
        // same level containing `net`: any such prefix covers the whole range.
        let repl = (level_lo..len)
            .rev()
            .find_map(|l| self.index.get(&(p & mask(l), l)).copied())
            .unwrap_or(NONE);
        let r = (p >> 16) as usize;
        let (base, start, count) = match len {
            0..=16 => (None, r, 1usize << (16 - len)),
            17..=24 => (
                Some(self.root[r].child),
                ((p >> 8) & 0xff) as usize,
                1 << (24 - len),
            ),
            _ => {
                let n1 = self.root[r].child;
                let n2 = self.nodes[n1 as usize * NODE_SLOTS + ((p >> 8) & 0xff) as usize].child;
                (Some(n2), (p & 0xff) as usize, 1 << (32 - len))
            }
        };
        let slots = match base {
            None => &mut self.root[start..start + count],
            Some(n) => {
                let off = n as usize * NODE_SLOTS + start;
                &mut self.nodes[off..off + count]
            }
        };
        for s in slots {
            if s.best == idx {
                s.best = repl;
            }
        }
        match len {
            0..=16 => {}
            17..=24 => {
                let n1 = self.root[r].child;
                if self.unref(n1) {
                    self.root[r].child = NONE;
                }
            }
            _ => {
                let n1 = self.root[r].child;
                let j = n1 as usize * NODE_SLOTS + ((p >> 8) & 0xff) as usize;
                let n2 = self.nodes[j].child;
                if self.unref(n2) {
                    self.nodes[j].child = NONE;
                    if self.unref(n1) {
                        self.root[r].child = NONE;
                    }
                }
            }
        }
        self.free_entries.push(idx);
        Some(value)
    }

    /// All prefixes and values, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Net, V)> + '_ {
        self.index.values().map(|&i| {
            let e = &self.entries[i as usize];
            (net_of(e.net, e.len), e.value)
        })
    }

    #[inline]
    fn lookup_index(&self, a: u32) -> u32 {
        let Some(s0) = self.root.get((a >> 16) as usize) else {
            return NONE;
        };
        let mut best = s0.best;
        if s0.child == NONE {
            return best;
        }
        let i1 = ((s0.child as usize) << 8) | ((a >> 8) & 0xff) as usize;
        let Some(s1) = self.nodes.get(i1) else {
            return best;
        };
        if s1.best != NONE {
            best = s1.best;
        }
        if s1.child == NONE {
            return best;
        }
        let i2 = ((s1.child as usize) << 8) | (a & 0xff) as usize;
        match self.nodes.get(i2) {
            Some(s2) if s2.best != NONE => s2.best,
            _ => best,
        }
    }

    fn alloc_entry(&mut self, e: Entry<V>) -> u32 {
        if let Some(i) = self.free_entries.pop() {
            self.entries[i as usize] = e;
            i
        } else {
            self.entries.push(e);
            (self.entries.len() - 1) as u32
        }
    }

    fn alloc_node(&mut self) -> u32 {
        if let Some(n) = self.free_nodes.pop() {
            let off = n as usize * NODE_SLOTS;
            self.nodes[off..off + NODE_SLOTS].fill(EMPTY);
            self.node_refs[n as usize] = 0;
            n
        } else {
            self.nodes.extend_from_slice(&[EMPTY; NODE_SLOTS]);
            self.node_refs.push(0);
            (self.node_refs.len() - 1) as u32
        }
    }

    /// The second-level node under the root slot of `p`, created if missing.
    fn root_child(&mut self, p: u32) -> u32 {
        let r = (p >> 16) as usize;
        if self.root[r].child == NONE {
            let n = self.alloc_node();
            self.root[r].child = n;
        }
        self.root[r].child
    }

    /// The third-level node under slot `j` of node `n1`, created if missing.
    fn node_child(&mut self, n1: u32, j: usize) -> u32 {
        let i = n1 as usize * NODE_SLOTS + j;
        if self.nodes[i].child == NONE {
            let n = self.alloc_node();
            self.nodes[i].child = n;
            self.node_refs[n1 as usize] += 1;
        }
        self.nodes[i].child
    }

    /// Drops one reference to node `n`; frees it and returns true when none is left.
    fn unref(&mut self, n: u32) -> bool {
        let r = &mut self.node_refs[n as usize];
        *r -= 1;
        if *r == 0 {
            self.free_nodes.push(n);
            true
        } else {
            false
        }
    }
}

impl<V: Copy + std::fmt::Debug> std::fmt::Debug for RouteTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Network mask of a prefix length (0..=32).
pub(crate) fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

fn net_of(p: u32, len: u8) -> Ipv4Net {
    // `len` comes from an `Ipv4Net`, so it is <= 32 and this cannot fail.
    Ipv4Net::new(Ipv4Addr::from(p), len).unwrap_or_default()
}

/// A route table shared between the control plane (writer) and the workers (readers).
///
/// Writers clone the current table, edit the clone and publish it atomically; readers
/// keep a [`RouteReader`] each and see either the old or the new table, never a mix.
pub struct SharedRoutes<V> {
    current: Arc<ArcSwap<RouteTable<V>>>,
    /// Serialises writers so that two concurrent updates do not lose each other's edits.
    writer: Arc<Mutex<()>>,
}

impl<V> Clone for SharedRoutes<V> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
            writer: self.writer.clone(),
        }
    }
}

impl<V: Copy> Default for SharedRoutes<V> {
    fn default() -> Self {
        Self::new(RouteTable::new())
    }
}

impl<V: Copy> SharedRoutes<V> {
    /// Shares `table`.
    pub fn new(table: RouteTable<V>) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(table)),
            writer: Arc::new(Mutex::new(())),
        }
    }

    /// The current table (a reference-counted snapshot; for the control plane).
    pub fn snapshot(&self) -> Arc<RouteTable<V>> {
        self.current.load_full()
    }

    /// Applies `edit` to a copy of the current table and publishes the copy. Batch many
    /// edits into one call: each call copies the table once.
    pub fn update<R>(&self, edit: impl FnOnce(&mut RouteTable<V>) -> R) -> R {
        // A poisoned lock only means another writer panicked mid-edit of its own copy,
        // which was never published: the current table is intact.
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = RouteTable::clone(&self.current.load());
        let r = edit(&mut next);
        self.current.store(Arc::new(next));
        r
    }

    /// Replaces the whole table.
    pub fn replace(&self, table: RouteTable<V>) {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.current.store(Arc::new(table));
    }

    /// A per-worker reader.
    pub fn reader(&self) -> RouteReader<V> {
        RouteReader {
            cache: Cache::new(self.current.clone()),
        }
    }
}

/// A worker's view of [`SharedRoutes`]: [`table`](Self::table) costs one atomic load when
/// nothing changed, no lock and no reference-count traffic.
pub struct RouteReader<V> {
    cache: Cache<Arc<ArcSwap<RouteTable<V>>>, Arc<RouteTable<V>>>,
}

impl<V> RouteReader<V> {
    /// The newest published table. Call once per batch and look up many packets in it.
    #[inline]
    pub fn table(&mut self) -> &RouteTable<V> {
        self.cache.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn empty_table_finds_nothing() {
        let t = RouteTable::<u32>::new();
        assert_eq!(t.lookup(a("10.0.0.1")), None);
        assert!(t.is_empty());
    }

    #[test]
    fn default_route_and_host_route() {
        let mut t = RouteTable::new();
        t.insert(n("0.0.0.0/0"), 1);
        t.insert(n("192.0.2.7/32"), 2);
        assert_eq!(t.lookup(a("8.8.8.8")), Some(1));
        assert_eq!(t.lookup(a("255.255.255.255")), Some(1));
        assert_eq!(t.lookup(a("192.0.2.7")), Some(2));
        assert_eq!(t.lookup(a("192.0.2.6")), Some(1));
        assert_eq!(
            t.lookup_prefix(a("192.0.2.7")),
            Some((n("192.0.2.7/32"), 2))
        );
        assert_eq!(t.remove(n("0.0.0.0/0")), Some(1));
        assert_eq!(t.lookup(a("8.8.8.8")), None);
        assert_eq!(t.lookup(a("192.0.2.7")), Some(2));
        assert_eq!(t.remove(n("192.0.2.7/32")), Some(2));
        assert_eq!(t.lookup(a("192.0.2.7")), None);
        assert!(t.is_empty());
    }

    #[test]
    fn overlapping_prefixes_at_every_level() {
        let mut t = RouteTable::new();
        for (i, p) in [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/23",
            "10.1.2.0/24",
            "10.1.2.128/25",
            "10.1.2.130/31",
        ]
        .iter()
        .enumerate()
        {
            assert_eq!(t.insert(n(p), i), None);
        }
        assert_eq!(t.lookup(a("10.9.9.9")), Some(0));
        assert_eq!(t.lookup(a("10.1.9.9")), Some(1));
        assert_eq!(t.lookup(a("10.1.3.1")), Some(2));
        assert_eq!(t.lookup(a("10.1.2.1")), Some(3));
        assert_eq!(t.lookup(a("10.1.2.129")), Some(4));
        assert_eq!(t.lookup(a("10.1.2.131")), Some(5));
        // Removing an inner prefix falls back to the next shorter one, level by level.
        t.remove(n("10.1.2.128/25"));
        assert_eq!(t.lookup(a("10.1.2.129")), Some(3));
        assert_eq!(t.lookup(a("10.1.2.131")), Some(5));
        t.remove(n("10.1.2.0/24"));
        assert_eq!(t.lookup(a("10.1.2.1")), Some(2));
        assert_eq!(t.lookup(a("10.1.2.131")), Some(5));
        t.remove(n("10.1.2.130/31"));
        assert_eq!(t.lookup(a("10.1.2.131")), Some(2));
        t.remove(n("10.1.2.0/23"));
        assert_eq!(t.lookup(a("10.1.2.131")), Some(1));
        t.remove(n("10.1.0.0/16"));
        assert_eq!(t.lookup(a("10.1.2.131")), Some(0));
        assert_eq!(t.len(), 1);
        // All second/third-level nodes were released.
        assert_eq!(t.free_nodes.len(), t.node_refs.len());
    }

    #[test]
    fn insert_order_does_not_matter() {
        let mut t = RouteTable::new();
        t.insert(n("10.1.2.0/24"), 3);
        t.insert(n("10.0.0.0/8"), 1);
        t.insert(n("10.1.0.0/17"), 2);
        assert_eq!(t.lookup(a("10.1.2.3")), Some(3));
        assert_eq!(t.lookup(a("10.1.3.3")), Some(2));
        assert_eq!(t.lookup(a("10.1.200.3")), Some(1));
    }

    #[test]
    fn replace_and_exact_get_and_host_bits() {
        let mut t = RouteTable::new();
        assert_eq!(t.insert(n("192.0.2.77/24"), 1), None);
        assert_eq!(t.insert(n("192.0.2.0/24"), 2), Some(1));
        assert_eq!(t.get(n("192.0.2.0/24")), Some(2));
        assert_eq!(t.get(n("192.0.2.0/25")), None);
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(n("192.0.2.0/25")), None);
        assert_eq!(t.remove(n("192.0.2.1/24")), Some(2));
    }

    #[test]
    fn prefix_lengths_at_stride_edges() {
        let mut t = RouteTable::new();
        for len in 0..=32u8 {
            t.insert(Ipv4Net::new(a("203.0.113.255"), len).unwrap(), len);
        }
        for len in 0..=32u8 {
            // The address that differs from 203.0.113.255 first at bit `len`.
            let probe = if len == 32 {
                u32::from(a("203.0.113.255"))
            } else {
                u32::from(a("203.0.113.255")) ^ (1 << (31 - len))
            };
            let want = if len == 32 { 32 } else { len };
            assert_eq!(t.lookup(Ipv4Addr::from(probe)), Some(want), "len {len}");
        }
        for len in (0..=32u8).rev() {
            t.remove(Ipv4Net::new(a("203.0.113.255"), len).unwrap());
            let expect = len.checked_sub(1);
            assert_eq!(
                t.lookup(a("203.0.113.255")),
                expect,
                "after removing /{len}"
            );
        }
    }

    #[test]
    fn agrees_with_linear_scan_on_random_tables() {
        // xorshift so the test is deterministic.
        let mut s = 0x9e37_79b9_u32;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        let mut t = RouteTable::new();
        let mut all: Vec<(Ipv4Net, u32)> = Vec::new();
        for i in 0..2000u32 {
            // Cluster addresses in 10.0.0.0/12 so prefixes overlap a lot.
            let addr = 0x0a00_0000 | (rnd() & 0x000f_ffff);
            let len = (rnd() % 33) as u8;
            let net = Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc();
            t.insert(net, i);
            all.retain(|(x, _)| *x != net);
            all.push((net, i));
            if i % 3 == 0 && !all.is_empty() {
                let k = (rnd() as usize) % all.len();
                let (gone, v) = all.swap_remove(k);
                assert_eq!(t.remove(gone), Some(v));
            }
        }
        assert_eq!(t.len(), all.len());
        for _ in 0..20_000 {
            let addr = Ipv4Addr::from(0x0a00_0000 | (rnd() & 0x000f_ffff));
            let want = all
                .iter()
                .filter(|(net, _)| net.contains(&addr))
                .max_by_key(|(net, _)| net.prefix_len())
                .map(|(_, v)| *v);
            assert_eq!(t.lookup(addr), want, "{addr}");
        }
    }

    #[test]
    fn shared_routes_publish_atomically() {
        let shared = SharedRoutes::default();
        let mut reader = shared.reader();
        assert_eq!(reader.table().lookup(a("10.0.0.1")), None);
        shared.update(|t| {
            t.insert(n("10.0.0.0/8"), 7u32);
            t.insert(n("10.1.0.0/16"), 8);
        });
        assert_eq!(reader.table().lookup(a("10.0.0.1")), Some(7));
        assert_eq!(reader.table().lookup(a("10.1.0.1")), Some(8));
        let old = shared.snapshot();
        shared.update(|t| t.remove(n("10.1.0.0/16")));
        // A snapshot taken earlier is unchanged; readers see the new table.
        assert_eq!(old.lookup(a("10.1.0.1")), Some(8));
        assert_eq!(reader.table().lookup(a("10.1.0.1")), Some(7));
        shared.replace(RouteTable::new());
        assert_eq!(reader.table().lookup(a("10.1.0.1")), None);
    }
}
