//! ESP over TUN offloads, per suite: the user-space work of one 64 KiB TSO super-packet
//! on the sending gateway (split into 45 segments, each one's checksums computed, each
//! encapsulated; CBC suites sealed together with `seal_many` as the workers do), and of
//! the 45 ESP packets it becomes on the receiving gateway (opened, each inner segment's
//! TCP checksum verified, coalesced back into one super-packet for the TUN write).
//! System calls are not part of it: `labbench` measures the whole path.
//!
//! `cargo bench -p dataplane --bench esp_gso` for numbers; `-- --test` runs each once.

#![allow(clippy::unwrap_used)] // fixtures that cannot fail; a bench is not network-reachable

use std::hint::black_box;

use benchutil::CpuTime;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::offload::{Gro, Split};
use esp::fuzzing::{BENCH_SUITES, PacketPool, buffer_for, params, sa_pair};
use esp::{Decapsulated, HEADROOM_MAX, OpenJob, Opening, SealJob};

const MSS: usize = 1448;
const SEGMENTS: usize = 45;
/// Super-packets encrypted ahead for the receive side (`PacketPool`).
const POOL: usize = 64;
/// 10.2.0.1 → 10.1.0.1: inside `esp::fuzzing`'s selectors.
const DST: [u8; 4] = [10, 1, 0, 1];

mod common;

fn esp_gso(c: &mut Criterion<CpuTime>) {
    let payload: Vec<u8> = (0..MSS * SEGMENTS).map(|i| (i * 7) as u8).collect();
    // What the kernel hands over for TSO: the segments' checksums are computed afresh.
    let tso = common::tcp(DST, 1, 1000, &payload);
    let hdr = common::tso_hdr(MSS);
    let mut g = c.benchmark_group("esp_gso");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    for (name, encr, integ) in BENCH_SUITES {
        let (out, _) = sa_pair(encr, integ, true);

        let mut slots: Vec<Vec<u8>> = (0..SEGMENTS).map(|_| buffer_for(MSS + 40)).collect();
        g.bench_function(BenchmarkId::new("encapsulate_64k_tso", name), |b| {
            b.iter(|| {
                let split = Split::plan(&hdr, black_box(&tso)).unwrap();
                assert_eq!(split.count(), SEGMENTS);
                let mut pending = [None; SEGMENTS];
                for (i, (slot, p)) in slots.iter_mut().zip(&mut pending).enumerate() {
                    let n = split.segment(&tso, i, &mut slot[HEADROOM_MAX..]).unwrap();
                    // AEAD SAs finish here (`None`); CBC ones wait for `seal_many`.
                    *p = out.encapsulate_deferred(slot, HEADROOM_MAX, n).unwrap().1;
                }
                if pending[0].is_some() {
                    let mut it = slots.iter_mut().zip(pending);
                    let mut jobs: [SealJob<'_>; SEGMENTS] = core::array::from_fn(|_| {
                        let (slot, p) = it.next().unwrap();
                        SealJob::new(slot, p.unwrap())
                    });
                    out.seal_many(&mut jobs);
                    assert!(jobs.iter().all(|j| j.result().is_ok()));
                }
                black_box(&slots);
            })
        });

        // The peer's 45 ESP packets per super-packet, POOL super-packets in a row.
        let pool: Vec<Vec<u8>> = (0..POOL * SEGMENTS)
            .map(|k| {
                let i = k % SEGMENTS;
                let seg = common::tcp(
                    DST,
                    i as u16,
                    1000 + (i * MSS) as u32,
                    &payload[i * MSS..(i + 1) * MSS],
                );
                let mut buf = buffer_for(seg.len());
                buf[HEADROOM_MAX..HEADROOM_MAX + seg.len()].copy_from_slice(&seg);
                let range = out
                    .encapsulate(&mut buf, HEADROOM_MAX, seg.len())
                    .unwrap()
                    .range;
                buf[range].to_vec()
            })
            .collect();
        let mut scratch: Vec<Vec<u8>> = pool[..SEGMENTS].to_vec();
        g.bench_function(BenchmarkId::new("decapsulate_coalesce_45", name), |b| {
            let mut pool = PacketPool::new(pool.clone(), params(encr, integ, true));
            b.iter(|| {
                let inb = pool.next_into(&mut scratch);
                let mut inner: [core::ops::Range<usize>; SEGMENTS] = core::array::from_fn(|_| 0..0);
                let mut pending = [None; SEGMENTS];
                for ((s, r), p) in scratch.iter_mut().zip(&mut inner).zip(&mut pending) {
                    match inb.decapsulate_deferred(s).unwrap() {
                        Opening::Done(Decapsulated::Packet { inner, .. }) => *r = inner,
                        Opening::Pending(open) => *p = Some(open),
                        Opening::Done(Decapsulated::Dummy) => unreachable!("no dummies"),
                    }
                }
                if pending[0].is_some() {
                    let mut it = scratch.iter_mut().zip(pending);
                    let mut jobs: [OpenJob<'_>; SEGMENTS] = core::array::from_fn(|_| {
                        let (s, p) = it.next().unwrap();
                        OpenJob::new(s, p.unwrap())
                    });
                    inb.open_many(&mut jobs);
                    for (r, job) in inner.iter_mut().zip(&jobs) {
                        let Ok(Decapsulated::Packet { inner, .. }) = job.result() else {
                            panic!("open failed: {:?}", job.result());
                        };
                        *r = inner.clone();
                    }
                }
                let (first, rest) = scratch.split_first_mut().unwrap();
                let mut gro = Gro::start(&first[inner[0].clone()]).unwrap();
                for (s, r) in rest.iter().zip(&inner[1..]) {
                    assert!(gro.append(&first[inner[0].clone()], &s[r.clone()]));
                }
                assert_eq!(gro.count(), SEGMENTS);
                black_box(gro.finish(&mut first[inner[0].clone()]))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = esp_gso
}
criterion_main!(benches);
