//! TUN offload work per super-packet: splitting a 64 KiB TSO packet into MSS-sized
//! segments (checksums included), and coalescing 45 decapsulated segments back into one
//! (headers compared, each segment's TCP checksum verified), and the RFC 1071 sum both
//! rely on.
//!
//! `cargo bench -p dataplane --bench offload` for numbers; `-- --test` runs each once.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dataplane::offload::{Gro, Split, fold, sum};

mod common;

/// 10.2.0.1 → 172.16.1.10, the lab's on-premises host to the VPC host.
const DST: [u8; 4] = [172, 16, 1, 10];

const MSS: usize = 1448;
const SEGMENTS: usize = 45;

fn offload(c: &mut Criterion) {
    let payload: Vec<u8> = (0..MSS * SEGMENTS).map(|i| (i * 7) as u8).collect();
    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Bytes(payload.len() as u64));

    // What the kernel hands over for TSO (the checksum field content does not matter:
    // every segment's checksum is computed afresh).
    let tso = common::tcp(DST, 1, 1000, &payload);
    let hdr = common::tso_hdr(MSS);
    g.bench_function("checksum_64k", |b| {
        b.iter(|| black_box(fold(sum(black_box(&payload), 0))))
    });

    let mut slot = vec![0u8; 2048];
    g.bench_function("split_64k_tso", |b| {
        b.iter(|| {
            let s = Split::plan(&hdr, black_box(&tso)).expect("valid TSO packet");
            for i in 0..s.count() {
                black_box(s.segment(&tso, i, &mut slot));
            }
        })
    });

    let segs: Vec<Vec<u8>> = (0..SEGMENTS)
        .map(|i| {
            common::tcp(
                DST,
                i as u16,
                1000 + (i * MSS) as u32,
                &payload[i * MSS..(i + 1) * MSS],
            )
        })
        .collect();
    g.bench_function("coalesce_45_segments", |b| {
        b.iter(|| {
            let mut first = segs[0].clone();
            let mut gro = Gro::start(&first).expect("coalescable");
            for s in &segs[1..] {
                assert!(gro.append(&first, black_box(s)));
            }
            black_box(gro.finish(&mut first))
        })
    });
    g.finish();
}

criterion_group!(benches, offload);
criterion_main!(benches);
