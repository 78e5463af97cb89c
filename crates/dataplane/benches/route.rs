//! Route and policy lookups at the size the gateway must handle (10k prefixes).
//!
//! `cargo bench -p dataplane --bench route` for numbers; `-- --test` runs each once.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::{PolicyTable, RouteTable};
use ipnet::Ipv4Net;

/// Deterministic xorshift32.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
}

/// 10k prefixes shaped like a routing table: mostly /24, some /16–/23, a few /25–/32,
/// plus a default route.
fn prefixes(n: usize, rng: &mut Rng) -> Vec<Ipv4Net> {
    let mut v = vec![Ipv4Net::default()];
    while v.len() < n {
        let r = rng.next();
        let len = match r % 100 {
            0..=59 => 24,
            60..=89 => 16 + (r >> 8) as u8 % 8,
            _ => 25 + (r >> 8) as u8 % 8,
        };
        let net = Ipv4Net::new(Ipv4Addr::from(rng.next()), len)
            .expect("len <= 32")
            .trunc();
        v.push(net);
    }
    v
}

fn bench_routes(c: &mut Criterion) {
    let mut rng = Rng(0x1234_5678);
    let nets = prefixes(10_000, &mut rng);
    let mut table = RouteTable::new();
    for (i, n) in nets.iter().enumerate() {
        table.insert(*n, i as u32);
    }
    // Half the probes inside inserted prefixes, half random (mostly the default route).
    let probes: Vec<Ipv4Addr> = (0..1024)
        .map(|i| {
            if i % 2 == 0 {
                let n = nets[rng.next() as usize % nets.len()];
                let host = rng.next() & !u32::from(n.netmask());
                Ipv4Addr::from(u32::from(n.network()) | host)
            } else {
                Ipv4Addr::from(rng.next())
            }
        })
        .collect();

    let mut g = c.benchmark_group("route_10k");
    g.throughput(Throughput::Elements(probes.len() as u64));
    g.bench_function("lookup_1024", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for a in &probes {
                acc = acc.wrapping_add(table.lookup(black_box(*a)).unwrap_or(0));
            }
            acc
        })
    });
    g.finish();

    let extra = prefixes(1001, &mut Rng(0x9abc_def0));
    let mut g = c.benchmark_group("route_10k_update");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("insert_remove_1000", |b| {
        b.iter_batched_ref(
            || table.clone(),
            |t| {
                for (i, n) in extra[1..].iter().enumerate() {
                    t.insert(*n, i as u32);
                }
                for n in &extra[1..] {
                    t.remove(*n);
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("clone_for_publish", |b| b.iter(|| table.clone()));
    g.finish();
}

fn bench_policy(c: &mut Criterion) {
    let mut rng = Rng(0x0bad_cafe);
    let mut t = PolicyTable::new();
    let nets = prefixes(1000, &mut rng);
    for (i, d) in nets.iter().enumerate() {
        let s = Ipv4Net::new(Ipv4Addr::new(10, (i % 200) as u8, 0, 0), 16).expect("len");
        t.insert(s, *d, (i % 7) as u32, i as u32);
    }
    // Hits: the source matches the rule of the longest destination prefix.
    let hits: Vec<(Ipv4Addr, Ipv4Addr)> = (0..1024)
        .map(|_| {
            let j = rng.next() as usize % nets.len();
            let dst = Ipv4Addr::from(u32::from(nets[j].network()) | 1);
            (Ipv4Addr::new(10, (j % 200) as u8, 1, 1), dst)
        })
        .collect();
    // Worst case: no source matches, so every destination length in use is probed.
    let misses: Vec<(Ipv4Addr, Ipv4Addr)> = hits
        .iter()
        .map(|&(_, d)| (Ipv4Addr::new(172, 16, 0, 1), d))
        .collect();
    let mut g = c.benchmark_group("policy_1k");
    g.throughput(Throughput::Elements(1024));
    for (name, probes) in [("lookup_hit_1024", &hits), ("lookup_miss_1024", &misses)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut acc = 0u32;
                for (s, d) in probes {
                    acc = acc.wrapping_add(
                        t.lookup(black_box(*s), black_box(*d))
                            .map_or(0, |r| r.value),
                    );
                }
                acc
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_routes, bench_policy);
criterion_main!(benches);
