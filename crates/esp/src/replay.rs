//! Lock-free anti-replay window (RFC 4303 §3.4.3), shared by all workers that decapsulate
//! for one inbound SA.
//!
//! The window is a ring of 64-bit atomic slots. Each slot holds one 32-bit *block* of the
//! bitmap together with the number of the block it currently describes:
//! `slot = block_number << 32 | bitmap` (the low 32 bits of the number, compared in
//! serial number arithmetic: see `judge`), with `block_number = seq / 32` and the slot index
//! `block_number % SLOTS` (the ring without bit shifting of RFC 6479, with a tag per slot).
//! Because every slot names its block, a thread marks a sequence number with one
//! compare-and-swap on one word and never has to clear other words when the window moves;
//! a slot's block number only ever grows, which is what makes it safe without a lock:
//!
//! - tag == block: the bit says whether `seq` was seen;
//! - tag <  block: nothing of this block was seen yet; the CAS replaces the stale block,
//!   whose numbers are all more than `(SLOTS - 1) * 32` below `seq` and thus outside the
//!   window from now on (a later duplicate of one finds a newer tag and is rejected);
//! - tag >  block: the ring has moved more than a whole ring past `seq`: too old.
//!
//! `top` (the highest sequence number accepted) is kept with `fetch_max` and only gives the
//! exact left edge of the window; correctness against replays rests on the slot tags alone.

use core::sync::atomic::{AtomicU64, Ordering};

/// Number of sequence numbers behind the highest one seen that are still accepted once
/// (RFC 4303 §3.4.3 says 32 at least, 64 by default; we take many more because several
/// workers on several cores reorder packets of one SA).
pub const REPLAY_WINDOW: u64 = 2048;

const BLOCK_BITS: u64 = 32;
// Exactly enough slots (the assertion below), not a power of two: a ring of 128 was
// 1 KiB per inbound SA, half of it never needed (issue 8: memory per tunnel). The
// remainder by a constant compiles to a multiplication.
const SLOTS: usize = 65;
// The ring must hold the window plus one partial block at each edge.
const _: () = assert!((SLOTS as u64 - 1) * BLOCK_BITS >= REPLAY_WINDOW);

/// Why a sequence number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// Seen before, inside the window.
    Replayed,
    /// Left of the window (or zero, which a sender never uses: RFC 4303 §3.3.3).
    TooOld,
}

/// The receive window of one inbound SA. 528 bytes; `Sync`, used through `&self`.
pub struct ReplayWindow {
    top: AtomicU64,
    slots: [AtomicU64; SLOTS],
}

impl ReplayWindow {
    pub const fn new() -> Self {
        Self {
            top: AtomicU64::new(0),
            slots: [const { AtomicU64::new(0) }; SLOTS],
        }
    }

    /// The highest sequence number accepted so far (0 before the first).
    pub fn top(&self) -> u64 {
        self.top.load(Ordering::Relaxed)
    }

    /// Read-only test, done before the ICV check to drop replays cheaply (RFC 4303
    /// §3.4.3). A sequence number that passes may still fail [`Self::accept`] if another
    /// thread accepts it first.
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        self.left_edge(seq)?;
        let (slot, block, mask) = locate(seq);
        let current = self.slots[slot].load(Ordering::Acquire);
        judge(current, block, mask).map(|_| ())
    }

    /// Marks `seq` as received, after its ICV has been verified (RFC 4303 §3.4.3: the
    /// window is updated only for authenticated packets). Exactly one of several threads
    /// accepting the same `seq` concurrently succeeds.
    pub fn accept(&self, seq: u64) -> Result<(), ReplayError> {
        self.left_edge(seq)?;
        let (slot, block, mask) = locate(seq);
        let slot = &self.slots[slot];
        let mut current = slot.load(Ordering::Acquire);
        loop {
            let next = judge(current, block, mask)?;
            match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        // Most packets are not the newest when several workers share the SA: a plain load
        // spares them the read-modify-write on the shared word.
        if seq > self.top() {
            self.top.fetch_max(seq, Ordering::Relaxed);
        }
        Ok(())
    }

    fn left_edge(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 || seq.saturating_add(REPLAY_WINDOW) <= self.top() {
            return Err(ReplayError::TooOld);
        }
        Ok(())
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("top", &self.top())
            .field("size", &REPLAY_WINDOW)
            .finish()
    }
}

/// Slot index (always `< SLOTS`), block number and bit mask of `seq`.
fn locate(seq: u64) -> (usize, u64, u64) {
    let block = seq / BLOCK_BITS;
    let slot = (block % SLOTS as u64) as usize;
    (slot, block, 1u64 << (seq % BLOCK_BITS))
}

/// The slot value after marking `mask` of `block`, or why it cannot be marked.
///
/// A slot has room for only the low 32 bits of its block number, and with extended
/// sequence numbers (RFC 4303 §2.2.1) block numbers go up to 2^59. Tags are therefore
/// compared in serial number arithmetic (RFC 1982 §3.2): `block` is newer than the tag
/// when it is less than 2^31 blocks ahead modulo 2^32. That is exact while every slot is
/// rewritten within 2^31 blocks (2^36 sequence numbers); a sender numbers consecutively
/// (RFC 4303 §3.3.3), so each slot comes round again every `SLOTS` blocks.
/// A slot never written is 0 (a written one has a bit set) and takes any block.
fn judge(current: u64, block: u64, mask: u64) -> Result<u64, ReplayError> {
    let tag = (current >> 32) as u32;
    let low = block as u32;
    let ahead = low.wrapping_sub(tag) as i32;
    if current == 0 {
        return Ok(u64::from(low) << 32 | mask);
    }
    if ahead < 0 {
        return Err(ReplayError::TooOld);
    }
    if ahead > 0 {
        return Ok(u64::from(low) << 32 | mask);
    }
    if current & mask != 0 {
        return Err(ReplayError::Replayed);
    }
    Ok(current | mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_then_duplicate() {
        let window = ReplayWindow::new();
        for seq in 1..=100 {
            window.check(seq).unwrap();
            window.accept(seq).unwrap();
        }
        assert_eq!(window.top(), 100);
        assert_eq!(window.check(50), Err(ReplayError::Replayed));
        assert_eq!(window.accept(100), Err(ReplayError::Replayed));
        assert_eq!(window.accept(1), Err(ReplayError::Replayed));
    }

    #[test]
    fn zero_is_never_accepted() {
        let window = ReplayWindow::new();
        assert_eq!(window.check(0), Err(ReplayError::TooOld));
        assert_eq!(window.accept(0), Err(ReplayError::TooOld));
    }

    #[test]
    fn out_of_order_inside_window() {
        let window = ReplayWindow::new();
        window.accept(10).unwrap();
        window.accept(5).unwrap();
        window.accept(7).unwrap();
        window.accept(6).unwrap();
        assert_eq!(window.accept(5), Err(ReplayError::Replayed));
        assert_eq!(window.top(), 10);
    }

    #[test]
    fn exactly_window_size_behind_is_too_old() {
        let window = ReplayWindow::new();
        let top = 10_000;
        window.accept(top).unwrap();
        // RFC 4303 §3.4.3: the window covers top - W + 1 ..= top.
        assert_eq!(window.check(top - REPLAY_WINDOW), Err(ReplayError::TooOld));
        assert_eq!(window.accept(top - REPLAY_WINDOW), Err(ReplayError::TooOld));
        window.accept(top - REPLAY_WINDOW + 1).unwrap();
        assert_eq!(
            window.accept(top - REPLAY_WINDOW + 1),
            Err(ReplayError::Replayed)
        );
    }

    #[test]
    fn window_slides() {
        let window = ReplayWindow::new();
        for seq in 1..=REPLAY_WINDOW * 3 {
            window.accept(seq).unwrap();
        }
        let top = REPLAY_WINDOW * 3;
        // Everything still inside is a replay, everything left of it too old.
        assert_eq!(
            window.check(top - REPLAY_WINDOW + 1),
            Err(ReplayError::Replayed)
        );
        assert_eq!(window.check(top - REPLAY_WINDOW), Err(ReplayError::TooOld));
        assert_eq!(window.check(1), Err(ReplayError::TooOld));
        window.accept(top + 1).unwrap();
    }

    #[test]
    fn far_ahead_jump_forgets_old_bits() {
        let window = ReplayWindow::new();
        for seq in 1..=64 {
            window.accept(seq).unwrap();
        }
        // A jump of many whole rings: the slots still carry old blocks, which must read as
        // empty for the new blocks that map onto them.
        let far = 1_000_000;
        window.accept(far).unwrap();
        assert_eq!(window.top(), far);
        for seq in far - REPLAY_WINDOW + 1..far {
            window.check(seq).unwrap();
        }
        window.accept(far - 1).unwrap();
        window.accept(far - REPLAY_WINDOW + 1).unwrap();
        assert_eq!(window.check(far - REPLAY_WINDOW), Err(ReplayError::TooOld));
        assert_eq!(window.check(64), Err(ReplayError::TooOld));
        assert_eq!(window.accept(far), Err(ReplayError::Replayed));
    }

    #[test]
    fn jump_of_exactly_the_window() {
        let window = ReplayWindow::new();
        window.accept(1).unwrap();
        window.accept(1 + REPLAY_WINDOW).unwrap();
        assert_eq!(window.check(1), Err(ReplayError::TooOld));
        window.accept(2).unwrap();
    }

    #[test]
    fn the_smallest_ring_holds_the_whole_window() {
        // Every number of the window behind the newest, offered newest first, is accepted
        // once and then refused as a replay: no two of them share a slot's block.
        for top in [10_000u64, 10_015, 10_016, 10_031, 1 << 36] {
            let window = ReplayWindow::new();
            window.accept(top).unwrap();
            let oldest = top - (REPLAY_WINDOW - 1);
            for seq in (oldest..top).rev() {
                assert_eq!(window.accept(seq), Ok(()), "top {top} seq {seq}");
            }
            for seq in oldest..=top {
                assert_eq!(
                    window.check(seq),
                    Err(ReplayError::Replayed),
                    "top {top} seq {seq}"
                );
            }
            assert_eq!(window.check(oldest - 1), Err(ReplayError::TooOld));
        }
        assert!(core::mem::size_of::<ReplayWindow>() <= 528);
    }

    #[test]
    fn replays_are_refused_past_two_to_the_thirty_seven() {
        // With extended sequence numbers (RFC 4303 §2.2.1) a long-lived SA passes 2^37
        // packets, where the block number no longer fits the slot's 32-bit tag.
        for top in [1u64 << 37, (1 << 37) + 31, (1 << 40) + 5, u64::MAX - 1] {
            let window = ReplayWindow::new();
            for seq in top - 3 * REPLAY_WINDOW..=top {
                window.accept(seq).unwrap();
            }
            for seq in [top, top - 1, top - 40, top - REPLAY_WINDOW + 1] {
                assert_eq!(window.check(seq), Err(ReplayError::Replayed), "{top} {seq}");
                assert_eq!(
                    window.accept(seq),
                    Err(ReplayError::Replayed),
                    "{top} {seq}"
                );
            }
            assert_eq!(window.check(top - REPLAY_WINDOW), Err(ReplayError::TooOld));
        }
    }

    #[test]
    fn stale_slot_tag_rejects_even_if_top_lags() {
        // A slot whose tag is newer than the block of `seq` means the ring has moved past
        // it, whatever `top` says.
        let (slot, block, mask) = locate(40);
        assert_eq!(slot, 1);
        assert_eq!(
            judge((block + SLOTS as u64) << 32, block, mask),
            Err(ReplayError::TooOld)
        );
        assert_eq!(
            judge((block - 1) << 32 | 0xffff_ffff, block, mask),
            Ok(block << 32 | mask)
        );
    }

    #[test]
    fn concurrent_accepts_are_exactly_once() {
        use std::sync::Arc;
        let window = Arc::new(ReplayWindow::new());
        let threads = 4;
        let per_thread = 20_000u64;
        let accepted: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let window = Arc::clone(&window);
                    scope.spawn(move || {
                        let mut ok = 0u64;
                        // Every thread offers every sequence number, in a different order
                        // within a sliding chunk, so the same numbers race.
                        for chunk in 0..per_thread / 64 {
                            for i in 0..64 {
                                let seq = 1 + chunk * 64 + ((i * 7 + t * 13) % 64);
                                if window.accept(seq).is_ok() {
                                    ok += 1;
                                }
                            }
                        }
                        ok
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        // Each number accepted at most once; those that were not accepted were refused
        // because a faster thread moved the window more than REPLAY_WINDOW past them,
        // which the chunked offering keeps from happening here.
        assert_eq!(accepted, per_thread / 64 * 64);
        assert_eq!(window.top(), per_thread / 64 * 64);
    }
}
