//! The data path neither allocates nor locks per packet (DESIGN.md, "Data plane"). This
//! binary installs a counting global allocator and asserts that encapsulate, decapsulate
//! (successes and every kind of drop) and SA lookups make zero allocations.
//!
//! Locks: the crate's per-packet code takes no `Mutex`/`RwLock` (the only lock is the
//! writer lock of `SaDb` updates); it uses `AtomicU64`, which is lock-free on x86_64 and
//! aarch64.

use std::sync::Arc;

use benchutil::alloc::allocations_in;
use crypto::{Encr, Integ};
use esp::fuzzing::{buffer_for, params, peer_packet, sa_pair, suites};
use esp::{HEADROOM_MAX, InboundSa, OpenJob, Opening, SaDb, SealJob};

#[global_allocator]
static COUNTING: benchutil::alloc::Counting = benchutil::alloc::Counting;

#[test]
fn counting_allocator_counts() {
    assert!(allocations_in(|| drop(std::hint::black_box(vec![1u8; 10]))) >= 1);
}

#[test]
fn encapsulate_and_decapsulate_do_not_allocate() {
    for (encr, integ) in suites() {
        for udp in [false, true] {
            let (out, inb) = sa_pair(encr, integ, udp);
            let mut buf = buffer_for(1400);
            let mut bad = buffer_for(1400);
            let n = allocations_in(|| {
                for i in 0..60 {
                    let len = peer_packet(&mut buf[HEADROOM_MAX..], i * 7 % 1372);
                    let sent = if i % 2 == 0 {
                        out.encapsulate(&mut buf, HEADROOM_MAX, len).unwrap()
                    } else {
                        out.encapsulate_ipv4(&mut buf, HEADROOM_MAX, len).unwrap()
                    };
                    let esp = if i % 2 == 0 {
                        sent.range
                    } else {
                        sent.range.start + out.outer_headroom_needed() - out.headroom_needed()
                            ..sent.range.end
                    };
                    // A forgery and a replay are dropped without allocating too.
                    let esp_len = esp.len();
                    bad[..esp_len].copy_from_slice(&buf[esp.clone()]);
                    bad[esp_len - 1] ^= 1;
                    assert!(inb.decapsulate(&mut bad[..esp_len]).is_err());
                    bad[esp_len - 1] ^= 1;
                    let _ = inb.decapsulate(&mut buf[esp]).unwrap();
                    assert!(inb.decapsulate(&mut bad[..esp_len]).is_err());
                    assert!(inb.decapsulate(&mut bad[..3]).is_err());
                }
                let _ = (out.stats(), inb.stats());
            });
            assert_eq!(n, 0, "{encr:?} {integ:?} udp={udp}");
        }
    }
}

#[test]
fn sa_lookup_does_not_allocate() {
    let db = SaDb::<u32>::new();
    for spi in 1..100u32 {
        let mut p = params(Encr::AesCbc128, Some(Integ::HmacSha1_96), false);
        p.spi = spi;
        db.install_inbound(Arc::new(InboundSa::new(p).unwrap()))
            .unwrap();
    }
    let (out, _) = sa_pair(Encr::AesGcm16_128, None, false);
    db.set_outbound(1, Arc::new(out));
    let mut cache = db.cache();
    let _ = cache.inbound(1);
    let n = allocations_in(|| {
        for spi in 0..200u32 {
            let _ = std::hint::black_box(db.inbound(spi));
            let _ = std::hint::black_box(cache.inbound(spi));
            let _ = std::hint::black_box(cache.outbound(&1));
        }
    });
    assert_eq!(n, 0);
}

/// The batch path the data plane uses (`encapsulate_deferred` + `seal_many`,
/// `decapsulate_deferred` + `open_many`) allocates nothing either, for every suite and
/// for batches large enough for the sixteen-lane hash (40 packets, uneven sizes). Only
/// the calls into the SAs are counted: the test's own job lists are built between them.
#[test]
fn batched_encapsulate_and_decapsulate_do_not_allocate() {
    const N: usize = 40;
    for (encr, integ) in suites() {
        let (out, inb) = sa_pair(encr, integ, false);
        let mut bufs: Vec<Vec<u8>> = (0..N).map(|_| buffer_for(1400)).collect();
        let mut ranges = vec![0..0; N];
        let mut seals = vec![None; N];
        let mut opens = vec![None; N];
        let mut n = 0;
        for round in 0..3 {
            n += allocations_in(|| {
                for (i, buf) in bufs.iter_mut().enumerate() {
                    let len = peer_packet(&mut buf[HEADROOM_MAX..], (i * 37 + round) % 1372);
                    let (sent, pending) = out.encapsulate_deferred(buf, HEADROOM_MAX, len).unwrap();
                    ranges[i] = sent.range;
                    seals[i] = pending;
                }
            });
            let mut jobs: Vec<SealJob<'_>> = bufs
                .iter_mut()
                .zip(&seals)
                .filter_map(|(b, p)| p.map(|p| SealJob::new(b, p)))
                .collect();
            n += allocations_in(|| out.seal_many(&mut jobs));
            assert!(
                jobs.iter().all(|j| j.result().is_ok()),
                "{encr:?} {integ:?}"
            );
            drop(jobs);
            n += allocations_in(|| {
                for (i, buf) in bufs.iter_mut().enumerate() {
                    opens[i] = match inb.decapsulate_deferred(&mut buf[ranges[i].clone()]) {
                        Ok(Opening::Pending(p)) => Some(p),
                        Ok(Opening::Done(_)) => None,
                        Err(e) => panic!("{encr:?} {integ:?} #{i}: {e}"),
                    };
                }
            });
            let mut jobs: Vec<OpenJob<'_>> = bufs
                .iter_mut()
                .zip(&ranges)
                .zip(&opens)
                .filter_map(|((b, r), p)| p.map(|p| OpenJob::new(&mut b[r.clone()], p)))
                .collect();
            n += allocations_in(|| inb.open_many(&mut jobs));
            assert!(
                jobs.iter().all(|j| j.result().is_ok()),
                "{encr:?} {integ:?}"
            );
        }
        assert_eq!(n, 0, "{encr:?} {integ:?}");
    }
}
