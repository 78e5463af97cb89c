//! TUN offload work per super-packet: splitting a 64 KiB TSO packet into MSS-sized
//! segments (checksums included), and coalescing 45 decapsulated segments back into one
//! (headers compared, each segment's TCP checksum verified), and the RFC 1071 sum both
//! rely on.
//!
//! `cargo bench -p dataplane --bench offload` for numbers; `-- --test` runs each once.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dataplane::offload::{F_NEEDS_CSUM, GSO_TCPV4, Gro, Split, VnetHdr, fold, sum};

const MSS: usize = 1448;
const SEGMENTS: usize = 45;

/// An IPv4/TCP packet (no options) with valid checksums.
fn tcp(id: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let total = 40 + payload.len();
    let mut p = vec![
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 2, 0, 1, 172, 16, 1, 10, 0x14, 0x51, 0xc3,
        0x50,
    ];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 7, 0x50, 0x10, 0x01, 0xf6, 0, 0, 0, 0]);
    p.extend_from_slice(payload);
    let c = !fold(sum(&p[..20], 0));
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let pseudo = sum(&p[12..20], 6 + (total - 20) as u64);
    let c = !fold(sum(&p[20..], pseudo));
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

fn offload(c: &mut Criterion) {
    let payload: Vec<u8> = (0..MSS * SEGMENTS).map(|i| (i * 7) as u8).collect();
    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Bytes(payload.len() as u64));

    // What the kernel hands over for TSO (the checksum field content does not matter:
    // every segment's checksum is computed afresh).
    let tso = tcp(1, 1000, &payload);
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 40,
        gso_size: MSS as u16,
        csum_start: 20,
        csum_offset: 16,
    };
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
            tcp(
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
