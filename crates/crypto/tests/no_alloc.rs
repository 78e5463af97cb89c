//! The batch seal and open calls of the default ESP suite do not allocate (the data
//! plane must not allocate per packet): a counting global allocator
//! (`benchutil::alloc`), in this test binary only, counts the calls made on the
//! testing thread while they run.

use benchutil::alloc::allocations_in;
use crypto::{CbcHmac, Encr, Integ, OpenJob, SealJob};

#[global_allocator]
static COUNTING: benchutil::alloc::Counting = benchutil::alloc::Counting;

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
        let sealed = allocations_in(|| {
            let mut it = bufs.iter_mut().zip(icvs.iter_mut());
            let mut batch: [SealJob<'_>; 16] = core::array::from_fn(|_| match it.next() {
                Some((m, icv)) => SealJob::new(m, ct_start, icv),
                None => SealJob::new(&mut [], 0, &mut []),
            });
            etm.seal_many(&mut batch[..jobs]);
            assert!(batch[..jobs].iter().all(|j| j.result.is_ok()));
        });
        assert_eq!(sealed, 0, "seal_many of {jobs} packets allocated");
        let opened = allocations_in(|| {
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
    assert_eq!(
        allocations_in(|| drop(std::hint::black_box(vec![1u8; 64]))),
        1
    );
}
