//! Tunnel scale probe: N IKEv2 tunnels from one peer address, told apart by the
//! initiator's FQDN identity (as `labbench --only setup` does over the network), set up
//! between two endpoints in memory. Prints the setup time and the live heap per tunnel
//! of each endpoint, measured with a counting global allocator.
//!
//! `cargo run --release -p ike --example scale -- 1000 10000` (DH group: `--dh 2|14|19|31`,
//! default 2, the seed default labbench uses).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a measuring tool, not network-reachable

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use crypto::{DhGroup, Encr, Integ, Random};
use ike::{
    Endpoint, EndpointConfig, EspProposal, Event, Identity, IkeProposal, IkeVersion, Ipv4Cidr,
    PeerConfig, PeerId, Psk, V1Mode,
};

/// Live heap bytes: allocations minus frees.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

fn main() {
    let mut dh = DhGroup::Modp1024;
    let mut counts = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--dh" {
            dh = match args.next().as_deref() {
                Some("14") => DhGroup::Modp2048,
                Some("19") => DhGroup::Ecp256,
                Some("31") => DhGroup::Curve25519,
                _ => DhGroup::Modp1024,
            };
        } else if a != "--bench" {
            counts.push(a.parse::<usize>().expect("tunnel count"));
        }
    }
    if counts.is_empty() {
        counts = vec![200, 1000];
    }
    println!(
        "| tunnels | DH | setup s | tunnels/s | initiator KiB/tunnel | responder KiB/tunnel |"
    );
    println!("|---:|---|---:|---:|---:|---:|");
    for n in counts {
        run(n, dh);
    }
}

fn run(n: usize, dh: DhGroup) {
    let now = epoch();
    let base = LIVE.load(Ordering::Relaxed);
    let mut resp = Endpoint::new(EndpointConfig::default(), Box::new(Rng(7)));
    for i in 0..n {
        resp.add_peer(PeerId(i as u64), responder(i, dh)).unwrap();
    }
    let resp_cfg = LIVE.load(Ordering::Relaxed);
    let mut init = Endpoint::new(EndpointConfig::default(), Box::new(Rng(11)));
    for i in 0..n {
        init.add_peer(PeerId(i as u64), initiator(i, dh)).unwrap();
    }
    let init_cfg = LIVE.load(Ordering::Relaxed);
    // Per-endpoint heap is told apart by measuring each side's growth around its own
    // calls: everything the responder allocates happens inside its handle_* calls.
    let (mut grow_i, mut grow_r) = (0isize, 0isize);
    let measure = |g: &mut isize, f: &mut dyn FnMut()| {
        let before = LIVE.load(Ordering::Relaxed);
        f();
        *g += LIVE.load(Ordering::Relaxed) - before;
    };
    let start = wall();
    measure(&mut grow_i, &mut || {
        for i in 0..n {
            init.initiate(now, PeerId(i as u64)).unwrap();
        }
    });
    let (mut up_i, mut up_r) = (0, 0);
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut to_r = Vec::new();
        measure(&mut grow_i, &mut || {
            while let Some(t) = init.poll_transmit() {
                to_r.push(t);
            }
            while let Some(e) = init.poll_event() {
                up_i += usize::from(matches!(e, Event::ChildSaEstablished { .. }));
            }
        });
        let mut to_i = Vec::new();
        measure(&mut grow_r, &mut || {
            for t in to_r.drain(..) {
                resp.handle_datagram(now, t.remote, t.local, &t.payload);
            }
            while let Some(t) = resp.poll_transmit() {
                to_i.push(t);
            }
            while let Some(e) = resp.poll_event() {
                up_r += usize::from(matches!(e, Event::ChildSaEstablished { .. }));
            }
        });
        if to_i.is_empty() || rounds > 4 * n + 16 {
            break;
        }
        measure(&mut grow_i, &mut || {
            for t in to_i.drain(..) {
                init.handle_datagram(now, t.remote, t.local, &t.payload);
            }
        });
    }
    let secs = wall().duration_since(start).as_secs_f64();
    assert_eq!((up_i, up_r), (n, n), "every tunnel up on both ends");
    assert_eq!(resp.child_sas(PeerId(0)).len(), 1);
    assert_eq!(init.child_sas(PeerId(n as u64 - 1)).len(), 1);
    let _ = (base, resp_cfg, init_cfg);
    println!(
        "| {n} | {} | {secs:.2} | {:.0} | {:.1} | {:.1} |",
        dh.name(),
        n as f64 / secs,
        grow_i as f64 / 1024.0 / n as f64,
        grow_r as f64 / 1024.0 / n as f64,
    );
    drop((init, resp));
}

/// The gateway: one "any" customer gateway, tunnels told apart by remote identity.
fn responder(i: usize, dh: DhGroup) -> PeerConfig {
    PeerConfig {
        local: SocketAddr::from((GW, 500)),
        remote: None,
        local_id: Identity::Ipv4(GW),
        remote_id: Identity::Fqdn(format!("t{i}.bench.example")),
        ..common(dh)
    }
}

fn initiator(i: usize, dh: DhGroup) -> PeerConfig {
    PeerConfig {
        local: SocketAddr::from((PEER, 500)),
        remote: Some(SocketAddr::from((GW, 500))),
        local_id: Identity::Fqdn(format!("t{i}.bench.example")),
        remote_id: Identity::Ipv4(GW),
        ..common(dh)
    }
}

fn common(dh: DhGroup) -> PeerConfig {
    PeerConfig {
        version: IkeVersion::V2,
        v1_mode: V1Mode::Main,
        local: SocketAddr::from((GW, 500)),
        remote: None,
        local_id: Identity::Ipv4(GW),
        remote_id: Identity::Ipv4(PEER),
        psk: Psk::new("scale-probe-psk-not-a-secret"),
        ike: IkeProposal {
            encr: Encr::AesCbc128,
            integ: Integ::HmacSha1_96,
            dh,
        },
        esp: EspProposal {
            encr: Encr::AesCbc128,
            integ: Integ::HmacSha1_96,
            pfs: None,
        },
        ike_lifetime: Duration::from_secs(3600),
        child_lifetime: Duration::from_secs(1200),
        local_ts: vec![Ipv4Cidr::ANY],
        remote_ts: vec![Ipv4Cidr::ANY],
        dpd_interval: Some(Duration::from_secs(30)),
        dpd_timeout: Duration::from_secs(120),
        nat_traversal: true,
    }
}

/// The virtual clock's epoch: the engine never reads a clock itself.
#[allow(clippy::disallowed_methods)]
fn epoch() -> Instant {
    Instant::now()
}

/// Wall time of the probe itself (not given to the engine).
#[allow(clippy::disallowed_methods)]
fn wall() -> Instant {
    Instant::now()
}

/// SplitMix64: deterministic SPIs, nonces and DH private values.
struct Rng(u64);

impl Random for Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_be_bytes()[..chunk.len()]);
        }
    }
}
