//! Throughput of the ESP hot-path primitives and cost of each DH group, so
//! back ends can be chosen by measurement. `cargo bench -p crypto`; quick
//! smoke run: `cargo bench -p crypto -- --test`.

use std::hint::black_box;

use benchutil::CpuTime;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crypto::{
    CbcHmac, Cipher, DhGroup, DhPrivate, Direction, Encr, Integ, Mac, OpenJob, OsRandom, SealJob,
};

/// Small (TCP ACK), medium, and a full-MTU inner packet.
const SIZES: [usize; 3] = [64, 512, 1400];

/// AES-GCM's plaintext for a 1,400-byte inner packet: padded to 4 bytes as peers send
/// it (a 12-byte partial last block), and to 16 as vpngw does (esp `Transform::pad_to`).
const GCM_ESP_SIZES: [usize; 2] = [1404, 1408];

fn ciphers(c: &mut Criterion) {
    let mut g = c.benchmark_group("cipher");
    for encr in Encr::ALL {
        let cipher = Cipher::new(encr, &vec![0x42; encr.key_len()]).expect("key length");
        let iv = vec![0x24; encr.iv_len()];
        let esp_sizes = encr.is_aead().then_some(GCM_ESP_SIZES);
        for size in SIZES.into_iter().chain(esp_sizes.into_iter().flatten()) {
            // CBC needs whole blocks: round up as ESP padding would.
            let len = size.div_ceil(encr.block_len()) * encr.block_len();
            let mut buf = vec![0u8; len];
            g.throughput(Throughput::Bytes(len as u64));
            if encr.is_aead() {
                let mut tag = [0u8; 16];
                let aad = [0u8; 8];
                g.bench_with_input(
                    BenchmarkId::new(format!("{}/seal", encr.name()), size),
                    &size,
                    |b, _| b.iter(|| cipher.aead_seal(&iv, &aad, black_box(&mut buf), &mut tag)),
                );
                cipher
                    .aead_seal(&iv, &aad, &mut buf, &mut tag)
                    .expect("seal");
                g.bench_with_input(
                    BenchmarkId::new(format!("{}/open", encr.name()), size),
                    &size,
                    |b, _| {
                        // Opening with a tag that fails still does the full GHASH
                        // pass, so the buffer need not be restored each round.
                        b.iter(|| cipher.aead_open(&iv, &aad, black_box(&mut buf), &tag))
                    },
                );
            } else {
                g.bench_with_input(
                    BenchmarkId::new(format!("{}/encrypt", encr.name()), size),
                    &size,
                    |b, _| b.iter(|| cipher.cbc_encrypt(&iv, black_box(&mut buf))),
                );
                g.bench_with_input(
                    BenchmarkId::new(format!("{}/decrypt", encr.name()), size),
                    &size,
                    |b, _| b.iter(|| cipher.cbc_decrypt(&iv, black_box(&mut buf))),
                );
            }
        }
    }
    g.finish();
}

fn macs(c: &mut Criterion) {
    let mut g = c.benchmark_group("mac");
    for integ in Integ::ALL {
        let mac = Mac::new(integ, &vec![0x42; integ.key_len()]).expect("key length");
        let mut icv = [0u8; 32];
        for size in SIZES {
            let data = vec![0u8; size];
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::new(integ.name(), size), &size, |b, _| {
                b.iter(|| mac.compute(&[black_box(&data[..8]), black_box(&data[8..])], &mut icv))
            });
        }
    }
    g.finish();
}

/// Encrypt-then-MAC as ESP does it (8-byte header + IV authenticated, payload encrypted),
/// stitched AES-NI/SHA-NI against the separate RustCrypto calls. The stitched keys are one
/// direction's each, as an ESP SA keys them.
fn cbc_hmac(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("cbc_hmac");
    for encr in [Encr::AesCbc128, Encr::AesCbc256] {
        let key = vec![0x42; encr.key_len()];
        let integ = Integ::HmacSha1_96;
        let mac_key = [0x24; 20];
        let keyed = |d| CbcHmac::for_direction(d, encr, &key, integ, &mac_key).expect("keys");
        let (sealer, opener) = (keyed(Direction::Seal), keyed(Direction::Open));
        let separate = CbcHmac::new_separate(encr, &key, integ, &mac_key).expect("keys");
        for (label, etm, opener) in [
            ("stitched", &sealer, &opener),
            ("separate", &separate, &separate),
        ] {
            if label == "stitched" && !etm.is_stitched() {
                continue;
            }
            for size in SIZES {
                let ct_start = 8 + 16;
                let len = ct_start + size.div_ceil(16) * 16;
                let mut buf = vec![0u8; len];
                let mut icv = [0u8; 12];
                g.throughput(Throughput::Bytes(size as u64));
                let name = format!("{}-sha1/{label}", encr.name());
                g.bench_with_input(
                    BenchmarkId::new(format!("{name}/seal"), size),
                    &size,
                    |b, _| b.iter(|| etm.seal(black_box(&mut buf), ct_start, &mut icv)),
                );
                etm.seal(&mut buf, ct_start, &mut icv).expect("seal");
                let sealed = buf.clone();
                g.bench_with_input(
                    BenchmarkId::new(format!("{name}/open"), size),
                    &size,
                    |b, _| {
                        // Each round opens a good packet (the copy back is a few ns of the
                        // total, the same for both paths).
                        b.iter(|| {
                            buf.copy_from_slice(&sealed);
                            opener
                                .open(black_box(&mut buf), ct_start, &icv)
                                .expect("open")
                        })
                    },
                );
            }
        }
    }
    g.finish();
}

/// A batch of sixteen ESP-sized packets (segments of a TSO super-packet) sealed and
/// opened with `seal_many`/`open_many` against the same packets one by one (throughput
/// is all sixteen).
fn cbc_hmac_many(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("cbc_hmac_many");
    let encr = Encr::AesCbc128;
    let keyed = |d| {
        CbcHmac::for_direction(d, encr, &[0x42; 16], Integ::HmacSha1_96, &[0x24; 20]).expect("keys")
    };
    let (etm, opener) = (keyed(Direction::Seal), keyed(Direction::Open));
    for size in SIZES {
        let ct_start = 8 + 16;
        let len = ct_start + size.div_ceil(16) * 16;
        let mut bufs = vec![vec![0u8; len]; BATCH];
        let mut icvs = [[0u8; 12]; BATCH];
        g.throughput(Throughput::Bytes((BATCH * size) as u64));
        let name = format!("{}-sha1/stitched={}", encr.name(), etm.is_stitched());
        g.bench_with_input(
            BenchmarkId::new(format!("{name}/seal_one_by_one"), size),
            &size,
            |b, _| {
                b.iter(|| {
                    for (m, icv) in bufs.iter_mut().zip(&mut icvs) {
                        etm.seal(black_box(m), ct_start, icv).expect("seal");
                    }
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new(format!("{name}/seal_many"), size),
            &size,
            |b, _| {
                b.iter(|| {
                    let mut jobs = jobs_of(&mut bufs, &mut icvs, ct_start);
                    etm.seal_many(black_box(&mut jobs));
                })
            },
        );
        let sealed = bufs.clone();
        g.bench_with_input(
            BenchmarkId::new(format!("{name}/open_one_by_one"), size),
            &size,
            |b, _| {
                b.iter(|| {
                    for ((m, s), icv) in bufs.iter_mut().zip(&sealed).zip(&icvs) {
                        m.copy_from_slice(s);
                        opener.open(black_box(m), ct_start, icv).expect("open");
                    }
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new(format!("{name}/open_many"), size),
            &size,
            |b, _| {
                b.iter(|| {
                    for (m, s) in bufs.iter_mut().zip(&sealed) {
                        m.copy_from_slice(s);
                    }
                    let mut jobs: [OpenJob<'_>; BATCH] = {
                        let mut it = bufs.iter_mut().zip(&icvs);
                        core::array::from_fn(|_| match it.next() {
                            Some((m, icv)) => OpenJob::new(m, ct_start, icv),
                            None => OpenJob::new(&mut [], 0, &[]),
                        })
                    };
                    opener.open_many(black_box(&mut jobs));
                    assert!(jobs.iter().all(|j| j.result.is_ok()));
                })
            },
        );
    }
    g.finish();
}

const BATCH: usize = 16;

fn jobs_of<'a>(
    bufs: &'a mut [Vec<u8>],
    icvs: &'a mut [[u8; 12]],
    ct_start: usize,
) -> [SealJob<'a>; BATCH] {
    let mut it = bufs.iter_mut().zip(icvs.iter_mut());
    core::array::from_fn(|_| match it.next() {
        Some((m, icv)) => SealJob::new(m, ct_start, icv),
        None => SealJob::new(&mut [], 0, &mut []),
    })
}

fn dh(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("dh");
    g.sample_size(10);
    for group in DhGroup::ALL {
        g.bench_function(BenchmarkId::new("generate", group.name()), |b| {
            b.iter(|| DhPrivate::generate(group, &mut OsRandom).expect("generate"))
        });
        let a = DhPrivate::generate(group, &mut OsRandom).expect("generate");
        let peer = DhPrivate::generate(group, &mut OsRandom).expect("generate");
        g.bench_function(BenchmarkId::new("shared_secret", group.name()), |b| {
            b.iter(|| {
                a.shared_secret(black_box(peer.public_value()))
                    .expect("agree")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, ciphers, macs);
criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(CpuTime);
    targets = cbc_hmac, cbc_hmac_many, dh
}
criterion_main!(benches, cpu_time);
