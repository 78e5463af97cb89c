//! The workers' TUN offload work makes no allocation per packet (issue 8; DESIGN.md,
//! "Data plane"): a 64 KiB TSO super-packet split into its segments, and those segments
//! held and coalesced back into one TUN write (`TunRun`), under a counting global
//! allocator. The node's `no_alloc_tests` cover the ESP handler between the two.

use benchutil::alloc::allocations_in;
use dataplane::offload::{Split, TunRun, VnetHdr};
use dataplane::{BufLayout, PacketBuf};

#[path = "../benches/common/mod.rs"]
mod segs;

#[global_allocator]
static COUNTING: benchutil::alloc::Counting = benchutil::alloc::Counting;

/// The lab's MSS through the tunnel, and a 64 KiB super-packet's worth of segments.
const MSS: usize = 1348;
const SEGMENTS: usize = 48;
const DST: [u8; 4] = [172, 16, 1, 10];

#[test]
fn counting_allocator_counts() {
    assert!(allocations_in(|| drop(std::hint::black_box(vec![0u8; 8]))) >= 1);
}

#[test]
fn splitting_and_coalescing_a_super_packet_make_no_allocation() {
    let payload: Vec<u8> = (0..MSS * SEGMENTS).map(|i| (i * 7) as u8).collect();
    let tso = segs::tcp(DST, 1, 1000, &payload);
    let hdr = segs::tso_hdr(MSS);
    let layout = BufLayout::default();
    let mut slots: Vec<PacketBuf> = (0..SEGMENTS).map(|_| PacketBuf::new(layout)).collect();
    let mut run = TunRun::new(layout);
    let (mut writes, mut bytes) = (0usize, 0usize);
    let mut write = |h: &VnetHdr, segs: &[PacketBuf], skip: usize| {
        writes += 1;
        bytes += segs.iter().map(PacketBuf::len).sum::<usize>() - skip * (segs.len() - 1);
        assert_eq!(usize::from(h.gso_size), MSS);
    };
    let mut once = |slots: &mut [PacketBuf], run: &mut TunRun| {
        // Sending side: the kernel's super-packet cut into checksummed segments, each
        // into its batch slot.
        let s = Split::plan(&hdr, &tso).expect("a valid TSO packet");
        assert_eq!(s.count(), SEGMENTS);
        for (i, slot) in slots.iter_mut().enumerate() {
            let head = slot.headroom();
            let n = s.segment(&tso, i, &mut slot.buffer_mut()[head..]).unwrap();
            slot.set_range(head, n).unwrap();
        }
        // Receiving side: the same segments (checksums verified) coalesced into one
        // write; `push` swaps each into the run's spare buffers.
        for slot in slots.iter_mut() {
            run.push(slot, &mut write);
        }
        run.flush(&mut write);
    };
    // The first pass shows the work is real: one write of the whole super-packet.
    once(&mut slots, &mut run);
    let n = allocations_in(|| {
        for _ in 0..4 {
            once(&mut slots, &mut run);
        }
    });
    assert_eq!(n, 0, "allocations for 4 super-packets");
    assert_eq!(writes, 5);
    assert_eq!(bytes, 5 * tso.len());
}
