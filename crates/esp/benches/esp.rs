//! Data-path costs: encapsulate/decapsulate per suite and size, the anti-replay window,
//! SA lookup. `cargo bench -p esp` measures; `cargo bench -p esp -- --test` runs each once.

#![allow(clippy::unwrap_used)] // fixtures that cannot fail; a bench is not network-reachable

use std::hint::black_box;
use std::sync::Arc;

use benchutil::CpuTime;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crypto::{Encr, Integ};
use esp::fuzzing::{
    BENCH_SUITES, PacketPool, TestRandom, buffer_for, params, peer_packet, sa_pair,
};
use esp::replay::ReplayWindow;
use esp::{HEADROOM_MAX, InboundSa, OpenJob, Opening, SaDb, SealJob};

const SIZES: [usize; 3] = [64, 512, 1400];

fn encapsulate(c: &mut Criterion<CpuTime>) {
    let mut group = c.benchmark_group("encapsulate");
    for (name, encr, integ) in BENCH_SUITES {
        let (out, _) = sa_pair(encr, integ, true);
        for size in SIZES {
            let mut buf = buffer_for(size);
            let len = peer_packet(&mut buf[HEADROOM_MAX..], size - 28);
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(BenchmarkId::new(name, size), |b| {
                // Re-encrypting the previous output in place is as costly as fresh data.
                b.iter(|| black_box(out.encapsulate(black_box(&mut buf), HEADROOM_MAX, len)).ok());
            });
        }
    }
    group.finish();
}

fn decapsulate(c: &mut Criterion<CpuTime>) {
    let mut group = c.benchmark_group("decapsulate");
    for (name, encr, integ) in BENCH_SUITES {
        let (out, _) = sa_pair(encr, integ, true);
        for size in SIZES {
            // A pool of distinct packets, so the replay window does not refuse repeats:
            // each iteration takes a fresh inbound SA only when the pool is used up.
            let pool: Vec<Vec<u8>> = (0..4096)
                .map(|_| {
                    let mut buf = buffer_for(size);
                    let len = peer_packet(&mut buf[HEADROOM_MAX..], size - 28);
                    let range = out.encapsulate(&mut buf, HEADROOM_MAX, len).unwrap().range;
                    buf[range].to_vec()
                })
                .collect();
            let mut scratch = [pool[0].clone()];
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(BenchmarkId::new(name, size), |b| {
                let mut pool = PacketPool::new(pool.clone(), params(encr, integ, true));
                b.iter(|| {
                    let inb = pool.next_into(&mut scratch);
                    black_box(inb.decapsulate(black_box(&mut scratch[0]))).unwrap()
                });
            });
        }
    }
    group.finish();
}

/// aes128-sha1 over batches of 16 packets of one SA (segments of one TSO super-packet):
/// `encapsulate_deferred` + `seal_many` and `decapsulate_deferred` + `open_many` against
/// `encapsulate`/`decapsulate` one by one. Throughput counts all 16 packets.
fn batched(c: &mut Criterion<CpuTime>) {
    const BATCH: usize = 16;
    let mut group = c.benchmark_group("batched");
    let (encr, integ) = (Encr::AesCbc128, Some(Integ::HmacSha1_96));
    let (out, _) = sa_pair(encr, integ, true);
    for size in SIZES {
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| buffer_for(size)).collect();
        let len = peer_packet(&mut bufs[0][HEADROOM_MAX..], size - 28);
        let first = bufs[0].clone();
        for b in &mut bufs {
            b.copy_from_slice(&first);
        }
        group.throughput(Throughput::Bytes((BATCH * size) as u64));
        group.bench_function(BenchmarkId::new("encapsulate/one_by_one", size), |b| {
            b.iter(|| {
                for buf in &mut bufs {
                    black_box(out.encapsulate(black_box(buf), HEADROOM_MAX, len)).ok();
                }
            });
        });
        group.bench_function(BenchmarkId::new("encapsulate/seal_many", size), |b| {
            b.iter(|| {
                let mut pending = [None; BATCH];
                for (buf, p) in bufs.iter_mut().zip(&mut pending) {
                    *p = out
                        .encapsulate_deferred(black_box(buf), HEADROOM_MAX, len)
                        .unwrap()
                        .1;
                }
                let mut it = bufs.iter_mut().zip(pending);
                let mut jobs: [SealJob<'_>; BATCH] = core::array::from_fn(|_| {
                    let (buf, p) = it.next().unwrap();
                    SealJob::new(buf, p.unwrap())
                });
                out.seal_many(&mut jobs);
            });
        });
        // Inbound: a pool of distinct packets, batches taken in turn; a fresh SA when the
        // pool is used up (as in `decapsulate`).
        let pool: Vec<Vec<u8>> = (0..BATCH * 256)
            .map(|_| {
                let mut buf = first.clone();
                let range = out.encapsulate(&mut buf, HEADROOM_MAX, len).unwrap().range;
                buf[range].to_vec()
            })
            .collect();
        let mut scratch: Vec<Vec<u8>> = pool[..BATCH].to_vec();
        for (label, many) in [
            ("decapsulate/one_by_one", false),
            ("decapsulate/open_many", true),
        ] {
            group.bench_function(BenchmarkId::new(label, size), |b| {
                let mut pool = PacketPool::new(pool.clone(), params(encr, integ, true));
                b.iter(|| {
                    let inb = pool.next_into(&mut scratch);
                    if !many {
                        for s in &mut scratch {
                            let _ = black_box(inb.decapsulate(black_box(s))).unwrap();
                        }
                        return;
                    }
                    let mut it = scratch.iter_mut();
                    let mut jobs: [OpenJob<'_>; BATCH] = core::array::from_fn(|_| {
                        let s = it.next().unwrap();
                        let Ok(Opening::Pending(p)) = inb.decapsulate_deferred(s) else {
                            panic!("not deferred");
                        };
                        OpenJob::new(s, p)
                    });
                    inb.open_many(&mut jobs);
                    assert!(jobs.iter().all(|j| j.result().is_ok()));
                });
            });
        }
    }
    group.finish();
}

fn anti_replay(c: &mut Criterion) {
    let mut group = c.benchmark_group("anti_replay");
    let window = ReplayWindow::new();
    let mut seq = 0u64;
    group.bench_function("check_and_accept_in_order", |b| {
        b.iter(|| {
            seq += 1;
            window.check(black_box(seq)).unwrap();
            window.accept(black_box(seq)).unwrap();
        });
    });
    let window = ReplayWindow::new();
    window.accept(1_000_000).unwrap();
    group.bench_function("check_replayed", |b| {
        b.iter(|| window.check(black_box(1_000_000)).is_err());
    });
    group.finish();
}

fn sa_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("sa_lookup");
    let db = SaDb::<u32>::new();
    let mut rng = TestRandom(42);
    let mut spis = Vec::new();
    for _ in 0..1000 {
        let mut p = params(Encr::AesGcm16_128, None, false);
        p.spi = (rng.next_u64() as u32) | 1;
        spis.push(p.spi);
        db.install_inbound(Arc::new(InboundSa::new(p).unwrap()))
            .unwrap();
    }
    let mut i = 0;
    group.bench_function("shared_1000_sas", |b| {
        b.iter(|| {
            i = (i + 1) % spis.len();
            black_box(db.inbound(black_box(spis[i]))).is_some()
        });
    });
    let mut cache = db.cache();
    group.bench_function("worker_cache_1000_sas", |b| {
        b.iter(|| {
            i = (i + 1) % spis.len();
            black_box(cache.inbound(black_box(spis[i]))).is_some()
        });
    });
    group.bench_function("miss", |b| {
        b.iter(|| black_box(cache.inbound(black_box(0xdead_beef))).is_none());
    });
    group.finish();
}

criterion_group!(benches, anti_replay, sa_lookup);
criterion_group! {
    name = crypto_bound;
    config = Criterion::default().with_measurement(CpuTime);
    targets = encapsulate, decapsulate, batched
}
criterion_main!(crypto_bound, benches);
