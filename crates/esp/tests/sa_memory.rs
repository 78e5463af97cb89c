//! Heap bytes of one tunnel's ESP SAs (issue 8: 10,000 tunnels in ≤ 8 KiB each). The node
//! keeps each SA in an `Arc`; this binary installs a global allocator that counts the bytes
//! its thread holds and checks what one inbound and one outbound SA cost, boxes included.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use crypto::{CbcHmac, Encr, Integ};
use esp::fuzzing::sa_pair;
use esp::{InboundSa, OutboundSa};

struct Counting;

thread_local! {
    // Const-initialised and without a destructor, so touching it never allocates.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn add(n: isize) {
    let _ = LIVE.try_with(|live| live.set(live.get() + n));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes requested per SA pair, as heaptrack counts them: `Arc<OutboundSa>` and
/// `Arc<InboundSa>` (their 64-byte aligned headers included), boxed key state and the
/// traffic selectors.
fn heap_per_pair(encr: Encr, integ: Option<Integ>) -> isize {
    const PAIRS: usize = 100;
    let mut pairs: Vec<(Arc<OutboundSa>, Arc<InboundSa>)> = Vec::with_capacity(PAIRS);
    let before = LIVE.with(Cell::get);
    for _ in 0..PAIRS {
        let (outbound, inbound) = sa_pair(encr, integ, true);
        pairs.push((Arc::new(outbound), Arc::new(inbound)));
    }
    let bytes = LIVE.with(Cell::get) - before;
    drop(pairs);
    bytes / PAIRS as isize
}

/// Were 3,960 bytes for every suite (2,240 + 1,664 for the two `Arc`s, the rest selectors)
/// while each SA held the largest suite's key state inline.
#[test]
fn a_tunnels_sas_stay_small_on_the_heap() {
    // (suite, encr, integ, bound, the bound assumes the stitched path)
    let cases = [
        (
            "aes128-sha1",
            Encr::AesCbc128,
            Some(Integ::HmacSha1_96),
            1920,
            true,
        ),
        ("aes128gcm16", Encr::AesGcm16_128, None, 3072, false),
        // The separate path, boxed: RustCrypto's AES-256 with both directions and its
        // software fallback's schedule (960 bytes) and an HMAC state sized for SHA-512.
        // 576 bytes more than before, the inline stitched state it does not use; and 80
        // more per SA for the HMAC-SHA-256 key states of the SHA-NI lanes (where the CPU
        // has SHA-NI), which hash several packets at once.
        (
            "aes256-sha256",
            Encr::AesCbc256,
            Some(Integ::HmacSha256_128),
            4696,
            false,
        ),
    ];
    for (name, encr, integ, bound, stitched) in cases {
        if let Some(i) = integ
            && stitched
            && !CbcHmac::new(encr, &vec![0; encr.key_len()], i, &vec![0; i.key_len()])
                .is_ok_and(|k| k.is_stitched())
        {
            // Without AES-NI and SHA-NI the separate path's boxed state is larger.
            eprintln!("{name}: not the stitched path on this CPU, bound not checked");
            continue;
        }
        let bytes = heap_per_pair(encr, integ);
        eprintln!("{name}: {bytes} bytes per SA pair");
        assert!(bytes > 0, "{name}: the counting allocator saw nothing");
        assert!(bytes <= bound, "{name}: {bytes} bytes per SA pair");
    }
}
