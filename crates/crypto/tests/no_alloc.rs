//! The batch seal and open calls of the default ESP suite do not allocate (the data
//! plane must not allocate per packet): a counting global allocator, in this test
//! binary only, counts the calls made on the testing thread while they run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use crypto::{CbcHmac, Encr, Integ, OpenJob, SealJob};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // `const` with no destructor: reading it from inside the allocator never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every call is passed to `System` unchanged; counting touches only an atomic
// and a thread-local `Cell` that needs no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as in `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations on this thread while `f` runs.
fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.load(Ordering::Relaxed) - before
}

/// Sixteen full-size packets and batches of other sizes and uneven lengths (the
/// sixteen-lane and VAES paths where the CPU has them, the four-lane ones otherwise)
/// through `seal_many` and `open_many`: no allocation, and the counter does count.
#[test]
fn seal_many_and_open_many_do_not_allocate() {
    let etm = CbcHmac::new(
        Encr::AesCbc128,
        &[0x42; 16],
        Integ::HmacSha1_96,
        &[0x24; 20],
    )
    .expect("keys");
    let ct_start = 24;
    for (jobs, short) in [(16, 0), (16, 1408 - 96), (9, 640), (5, 0), (2, 800)] {
        let mut bufs: Vec<Vec<u8>> = (0..jobs)
            .map(|j| vec![j as u8; ct_start + 1408 - if j + 1 == jobs { short } else { 0 }])
            .collect();
        let mut icvs = vec![[0u8; 12]; jobs];
        let sealed = allocations(|| {
            let mut it = bufs.iter_mut().zip(icvs.iter_mut());
            let mut batch: [SealJob<'_>; 16] = core::array::from_fn(|_| match it.next() {
                Some((m, icv)) => SealJob::new(m, ct_start, icv),
                None => SealJob::new(&mut [], 0, &mut []),
            });
            etm.seal_many(&mut batch[..jobs]);
            assert!(batch[..jobs].iter().all(|j| j.result.is_ok()));
        });
        assert_eq!(sealed, 0, "seal_many of {jobs} packets allocated");
        let opened = allocations(|| {
            let mut it = bufs.iter_mut().zip(icvs.iter());
            let mut batch: [OpenJob<'_>; 16] = core::array::from_fn(|_| match it.next() {
                Some((m, icv)) => OpenJob::new(m, ct_start, icv),
                None => OpenJob::new(&mut [], 0, &[]),
            });
            etm.open_many(&mut batch[..jobs]);
            assert!(batch[..jobs].iter().all(|j| j.result.is_ok()));
        });
        assert_eq!(opened, 0, "open_many of {jobs} packets allocated");
    }
    // The counter sees an allocation on this thread.
    assert_eq!(allocations(|| drop(std::hint::black_box(vec![1u8; 64]))), 1);
}
