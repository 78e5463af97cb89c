//! Policy lookups on (source, destination): the protected-flows mode of the gateway.
//!
//! # Match order
//!
//! A rule matches a packet when its destination prefix contains the packet's destination
//! and its source prefix contains the packet's source. Among matching rules the winner is
//! the one with
//!
//! 1. the **longest destination prefix**; among rules with that same destination prefix,
//! 2. the **lowest `priority` number** (like `ip rule` preferences: 0 is tried first); then
//! 3. the **longest source prefix**.
//!
//! If no rule with the longest matching destination prefix accepts the source, shorter
//! destination prefixes are tried in turn. Two rules with the same source, destination
//! and priority are the same rule (inserting replaces the value).
//!
//! Lookups probe one hash table per destination prefix length that is in use (a bitmap
//! skips the others) and scan the few rules of the hit; no allocation.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::route::mask;

/// One policy rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRule<V> {
    /// Source prefix the rule applies to.
    pub src: Ipv4Net,
    /// Destination prefix the rule applies to.
    pub dst: Ipv4Net,
    /// Lower numbers win among rules with the same destination prefix.
    pub priority: u32,
    /// What the rule selects (e.g. a tunnel index).
    pub value: V,
}

/// (source prefix, destination prefix, priority) → value, looked up per packet.
#[derive(Clone)]
pub struct PolicyTable<V> {
    /// Rules per destination prefix, each list sorted by (priority, longest source).
    by_dst: HashMap<(u32, u8), Vec<PolicyRule<V>>, BuildHasherDefault<PrefixHasher>>,
    /// Bit `l` set when some rule has a destination prefix of length `l`.
    dst_lens: u64,
    len: usize,
}

impl<V: Copy> Default for PolicyTable<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Copy> PolicyTable<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            by_dst: HashMap::default(),
            dst_lens: 0,
            len: 0,
        }
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there is no rule.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts a rule (host bits of the prefixes are ignored), replacing the value of an
    /// identical (src, dst, priority) rule; returns the replaced value.
    pub fn insert(&mut self, src: Ipv4Net, dst: Ipv4Net, priority: u32, value: V) -> Option<V> {
        let (src, dst) = (src.trunc(), dst.trunc());
        let list = self.by_dst.entry(key(dst)).or_default();
        if let Some(r) = list
            .iter_mut()
            .find(|r| r.src == src && r.priority == priority)
        {
            return Some(std::mem::replace(&mut r.value, value));
        }
        let rule = PolicyRule {
            src,
            dst,
            priority,
            value,
        };
        let at = list.partition_point(|r| order(r) <= order(&rule));
        list.insert(at, rule);
        self.dst_lens |= 1 << dst.prefix_len();
        self.len += 1;
        None
    }

    /// Removes the (src, dst, priority) rule; returns its value.
    pub fn remove(&mut self, src: Ipv4Net, dst: Ipv4Net, priority: u32) -> Option<V> {
        let (src, dst) = (src.trunc(), dst.trunc());
        let k = key(dst);
        let list = self.by_dst.get_mut(&k)?;
        let at = list
            .iter()
            .position(|r| r.src == src && r.priority == priority)?;
        let r = list.remove(at);
        if list.is_empty() {
            self.by_dst.remove(&k);
            if !self.by_dst.keys().any(|&(_, l)| l == k.1) {
                self.dst_lens &= !(1 << k.1);
            }
        }
        self.len -= 1;
        Some(r.value)
    }

    /// The winning rule for a packet from `src` to `dst` (see the module docs).
    #[inline]
    pub fn lookup(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Option<&PolicyRule<V>> {
        let (s, d) = (u32::from(src), u32::from(dst));
        let mut lens = self.dst_lens;
        while lens != 0 {
            let l = (63 - lens.leading_zeros()) as u8;
            lens &= !(1 << l);
            if let Some(list) = self.by_dst.get(&(d & mask(l), l)) {
                let src_match = |r: &&PolicyRule<V>| {
                    let sl = r.src.prefix_len();
                    s & mask(sl) == u32::from(r.src.network())
                };
                if let Some(r) = list.iter().find(src_match) {
                    return Some(r);
                }
            }
        }
        None
    }

    /// All rules, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &PolicyRule<V>> {
        self.by_dst.values().flatten()
    }
}

impl<V: Copy + std::fmt::Debug> std::fmt::Debug for PolicyTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

fn key(net: Ipv4Net) -> (u32, u8) {
    (u32::from(net.network()), net.prefix_len())
}

/// Sort key inside one destination prefix: priority ascending, then longest source.
fn order<V>(r: &PolicyRule<V>) -> (u32, u8) {
    (r.priority, 32 - r.src.prefix_len())
}

/// A multiplicative hasher for the `(u32, u8)` prefix keys: the keys are not chosen by
/// the network (only by the operator), so a DoS-resistant hash buys nothing here.
#[derive(Default)]
pub(crate) struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        // Final avalanche (MurmurHash3 fmix64): the multiply only mixes low bits upwards,
        // and the table indexes buckets by the low bits, which prefixes leave zero.
        let mut z = self.0;
        z ^= z >> 33;
        z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
        z ^= z >> 33;
        z
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u8(b);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
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
    fn longest_destination_wins_over_priority() {
        let mut t = PolicyTable::new();
        t.insert(n("0.0.0.0/0"), n("10.0.0.0/8"), 1, "wide");
        t.insert(n("0.0.0.0/0"), n("10.2.0.0/16"), 100, "narrow");
        assert_eq!(
            t.lookup(a("192.0.2.1"), a("10.2.0.1")).unwrap().value,
            "narrow"
        );
        assert_eq!(
            t.lookup(a("192.0.2.1"), a("10.3.0.1")).unwrap().value,
            "wide"
        );
        assert!(t.lookup(a("192.0.2.1"), a("11.0.0.1")).is_none());
    }

    #[test]
    fn priority_then_longest_source_break_ties() {
        let mut t = PolicyTable::new();
        t.insert(n("10.1.0.0/16"), n("10.2.0.0/16"), 20, "p20-long-src");
        t.insert(n("10.0.0.0/8"), n("10.2.0.0/16"), 10, "p10-short-src");
        t.insert(n("10.1.2.0/24"), n("10.2.0.0/16"), 10, "p10-longer-src");
        assert_eq!(
            t.lookup(a("10.1.2.3"), a("10.2.0.1")).unwrap().value,
            "p10-longer-src"
        );
        assert_eq!(
            t.lookup(a("10.1.9.3"), a("10.2.0.1")).unwrap().value,
            "p10-short-src"
        );
        t.remove(n("10.0.0.0/8"), n("10.2.0.0/16"), 10);
        assert_eq!(
            t.lookup(a("10.1.9.3"), a("10.2.0.1")).unwrap().value,
            "p20-long-src"
        );
        assert!(t.lookup(a("172.16.0.1"), a("10.2.0.1")).is_none());
    }

    #[test]
    fn source_mismatch_falls_back_to_shorter_destination() {
        let mut t = PolicyTable::new();
        t.insert(n("10.1.0.0/24"), n("10.2.0.0/24"), 1, "specific");
        t.insert(n("0.0.0.0/0"), n("0.0.0.0/0"), 1000, "catch-all");
        assert_eq!(
            t.lookup(a("10.1.0.5"), a("10.2.0.5")).unwrap().value,
            "specific"
        );
        assert_eq!(
            t.lookup(a("10.9.0.5"), a("10.2.0.5")).unwrap().value,
            "catch-all"
        );
        assert_eq!(
            t.lookup(a("0.0.0.0"), a("255.255.255.255")).unwrap().value,
            "catch-all"
        );
    }

    #[test]
    fn host_prefixes_replace_and_remove() {
        let mut t = PolicyTable::new();
        assert_eq!(
            t.insert(n("192.0.2.1/32"), n("198.51.100.1/32"), 5, 1),
            None
        );
        assert_eq!(
            t.insert(n("192.0.2.1/32"), n("198.51.100.1/32"), 5, 2),
            Some(1)
        );
        assert_eq!(
            t.insert(n("192.0.2.1/32"), n("198.51.100.1/32"), 6, 3),
            None
        );
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.lookup(a("192.0.2.1"), a("198.51.100.1")).unwrap().value,
            2
        );
        assert!(t.lookup(a("192.0.2.2"), a("198.51.100.1")).is_none());
        assert_eq!(
            t.remove(n("192.0.2.1/32"), n("198.51.100.1/32"), 5),
            Some(2)
        );
        assert_eq!(
            t.lookup(a("192.0.2.1"), a("198.51.100.1")).unwrap().value,
            3
        );
        assert_eq!(t.remove(n("192.0.2.1/32"), n("198.51.100.1/32"), 5), None);
        assert_eq!(
            t.remove(n("192.0.2.1/32"), n("198.51.100.1/32"), 6),
            Some(3)
        );
        assert!(t.is_empty());
        assert_eq!(t.dst_lens, 0);
        assert!(t.lookup(a("192.0.2.1"), a("198.51.100.1")).is_none());
    }

    #[test]
    fn length_bit_stays_while_other_prefixes_of_that_length_remain() {
        let mut t = PolicyTable::new();
        let any = n("0.0.0.0/0");
        t.insert(any, n("10.1.0.0/16"), 1, 1);
        t.insert(any, n("10.2.0.0/16"), 1, 2);
        t.remove(any, n("10.1.0.0/16"), 1);
        assert_eq!(t.lookup(a("1.1.1.1"), a("10.2.3.4")).unwrap().value, 2);
    }
}
