//! The node's packet handler makes no allocation per packet (issue 8; DESIGN.md, "Data
//! plane"): whole batches through [`EspHandler`] — outbound, a route lookup, the
//! tunnel's SA and ESP sealed in `end_batch`; inbound, ESP in UDP 4500 opened in
//! `end_batch` and checked against the SA's selectors — under a counting global
//! allocator, for each suite the lab measures. `esp`'s own `no_alloc` test covers the
//! SA code alone; this one covers what the node adds around it (snapshot caches,
//! deferred crypto queues, health-check interception).
//!
//! The allocator (`benchutil::alloc`) counts per thread, so the other tests of this
//! binary, running on other threads, neither disturb the count nor are disturbed by it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::Instant;

use arc_swap::ArcSwap;
use benchutil::alloc::allocations_in;
use crypto::{Encr, Integ};
use dataplane::{Action, BufLayout, Handler, PacketBuf, RouteTable, WorkerCtx};
use esp::{
    InboundSa, Key, Lifetime, OutboundSa, SaDb, SaParams, Selectors, TrafficSelector, UdpEncap,
};

use crate::bgp::BgpFwd;
use crate::fwd::{ConnFwd, EspHandler, Fwd};

#[global_allocator]
static COUNTING: benchutil::alloc::Counting = benchutil::alloc::Counting;

const GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const VPC_HOST: Ipv4Addr = Ipv4Addr::new(172, 16, 1, 10);
const ONPREM_HOST: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
const BATCH: usize = 64;
const INNER: usize = 1400;

/// One direction of the tunnel: keys depend on `spi`, so the two directions differ.
fn params(spi: u32, encr: Encr, integ: Option<Integ>, from: Ipv4Addr, to: Ipv4Addr) -> SaParams {
    let key = |len: usize| Key::new(&(0..len).map(|b| b as u8 ^ spi as u8).collect::<Vec<_>>());
    SaParams {
        spi,
        encr,
        enc_key: key(encr.key_len()),
        integ,
        integ_key: key(integ.map_or(0, |i| i.key_len())),
        local: from,
        remote: to,
        udp_encap: Some(UdpEncap {
            src_port: 4500,
            dst_port: 4500,
        }),
        selectors: Selectors::any(),
        lifetime: Lifetime::default(),
    }
}

/// An IPv4/TCP packet of `len` bytes, `src → dst`, with correct header checksum (the
/// handler does not look further).
fn ipv4_tcp(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[32] = 0x50; // TCP data offset 5
    let mut sum: u32 = p[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p
}

/// Runs one batch: `fill` puts packet `i` into its buffer, `handle` is the handler's
/// entry for it; then `end_batch`. Returns nothing: the actions stay in `actions`.
fn batch(
    h: &EspHandler,
    ctx: &mut WorkerCtx<crate::fwd::Local>,
    pkts: &mut [PacketBuf],
    actions: &mut [Action],
    mut fill: impl FnMut(usize, &mut PacketBuf),
    mut handle: impl FnMut(&EspHandler, &mut WorkerCtx<crate::fwd::Local>, &mut PacketBuf) -> Action,
) {
    for (i, (pkt, a)) in pkts.iter_mut().zip(actions.iter_mut()).enumerate() {
        fill(i, pkt);
        ctx.slot = i;
        *a = handle(h, ctx, pkt);
    }
    h.end_batch(ctx, pkts, actions);
}

/// The node's handler over `fwd` and `sadb`, and the control thread's end of its
/// wake-up channel.
fn handler(
    fwd: Fwd,
    sadb: Arc<SaDb<crate::fwd::TunnelKey>>,
) -> (EspHandler, Receiver<crate::control::Input>) {
    let (wake, wakes) = sync_channel(16);
    let h = EspHandler {
        fwd: Arc::new(ArcSwap::from_pointee(fwd)),
        bgp: Arc::new(ArcSwap::from_pointee(BgpFwd::default())),
        sadb,
        wake,
        ike_port: 500,
        natt_port: 4500,
    };
    (h, wakes)
}

fn worker_ctx(h: &EspHandler) -> WorkerCtx<crate::fwd::Local> {
    WorkerCtx {
        worker: 0,
        now: Instant::now(),
        local: h.new_local(0),
        slot: 0,
    }
}

#[test]
fn whole_batches_through_the_handler_make_no_allocation() {
    for (encr, integ) in [
        (Encr::AesCbc128, Some(Integ::HmacSha1_96)),
        (Encr::AesCbc256, Some(Integ::HmacSha256_128)),
        (Encr::AesGcm16_128, None),
    ] {
        let what = format!("{encr:?}");
        // Our tunnel 1 to the peer, and the peer's SA towards us (what we receive).
        let sadb = Arc::new(SaDb::new());
        let ours = params(0x1001, encr, integ, GW, PEER);
        sadb.set_outbound(
            1,
            Arc::new(OutboundSa::new(ours, &mut crypto::OsRandom).unwrap()),
        );
        let mut theirs = params(0x2002, encr, integ, PEER, GW);
        // Checked on every opened packet (RFC 4301 §5.2): our side, then the peer's.
        theirs.selectors = Selectors {
            local: vec![TrafficSelector::cidr(Ipv4Addr::new(172, 16, 1, 0), 24).unwrap()],
            remote: vec![TrafficSelector::cidr(Ipv4Addr::new(10, 2, 0, 0), 24).unwrap()],
        };
        sadb.install_inbound(Arc::new(InboundSa::new(theirs.clone()).unwrap()))
            .unwrap();
        let peer = OutboundSa::new(theirs, &mut crypto::OsRandom).unwrap();

        let mut routes = RouteTable::new();
        routes.insert("10.2.0.0/24".parse().unwrap(), 0);
        let fwd = Fwd {
            routes,
            targets: vec![[0, crate::fwd::NONE]],
            conns: vec![ConnFwd {
                tunnels: vec![1],
                health: vec![None],
                trigger: Arc::default(),
            }],
            ..Fwd::default()
        };
        let (h, _wakes) = handler(fwd, sadb);
        let layout = BufLayout::default();
        let mut ctx = worker_ctx(&h);
        let mut pkts: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new(layout)).collect();
        let mut actions = vec![Action::Control; BATCH];

        // Outbound: VPC host → on-premises host, through tunnel 1.
        let inner = ipv4_tcp(VPC_HOST, ONPREM_HOST, INNER);
        let send = |pkts: &mut [PacketBuf], actions: &mut [Action], ctx: &mut _| {
            batch(
                &h,
                ctx,
                pkts,
                actions,
                |_, p| p.fill(layout.headroom, &inner).unwrap(),
                |h, ctx, p| h.handle_tun(ctx, p),
            );
        };
        // The first batch fills the worker's caches; later ones must allocate nothing.
        send(&mut pkts, &mut actions, &mut ctx);
        let n = allocations_in(|| {
            for _ in 0..4 {
                send(&mut pkts, &mut actions, &mut ctx);
            }
        });
        assert_eq!(n, 0, "{what}: allocations sending 4 batches");
        let to_peer = Action::ToUdp {
            local: SocketAddrV4::new(GW, 4500),
            remote: SocketAddrV4::new(PEER, 4500),
        };
        assert!(actions.iter().all(|a| *a == to_peer), "{what}: {actions:?}");

        // Inbound: the peer's ESP for the VPC host, made beforehand (fresh sequence
        // numbers for every batch: the replay window).
        let back = ipv4_tcp(ONPREM_HOST, VPC_HOST, INNER);
        let esp: Vec<Vec<u8>> = (0..5 * BATCH)
            .map(|_| {
                let mut buf = vec![0u8; layout.capacity()];
                buf[layout.headroom..layout.headroom + INNER].copy_from_slice(&back);
                let out = peer.encapsulate(&mut buf, layout.headroom, INNER).unwrap();
                buf[out.range].to_vec()
            })
            .collect();
        let mut next = esp.iter();
        let mut receive = |pkts: &mut [PacketBuf], actions: &mut [Action], ctx: &mut _| {
            batch(
                &h,
                ctx,
                pkts,
                actions,
                |_, p| p.fill(layout.headroom, next.next().unwrap()).unwrap(),
                |h, ctx, p| {
                    h.handle_udp(
                        ctx,
                        SocketAddrV4::new(GW, 4500),
                        SocketAddrV4::new(PEER, 4500),
                        p,
                    )
                },
            );
        };
        receive(&mut pkts, &mut actions, &mut ctx);
        let n = allocations_in(|| {
            for _ in 0..4 {
                receive(&mut pkts, &mut actions, &mut ctx);
            }
        });
        assert_eq!(n, 0, "{what}: allocations receiving 4 batches");
        assert!(
            actions.iter().all(|a| *a == Action::ToTun),
            "{what}: {actions:?}"
        );
        assert!(pkts.iter().all(|p| p.data() == back), "{what}: decrypted");
    }
}

/// ESP with an SPI the node does not have, from the address of a tunnel's customer
/// gateway, wakes the control thread once per flag flip (invalid-SPI recovery, see
/// `Control::unknown_spi`) and is dropped; from any other address it is only dropped.
/// A flood of either allocates nothing.
#[test]
fn esp_on_unknown_spis_wakes_the_control_thread_once_per_flip_without_allocating() {
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fwd = Fwd {
        unknown_spi: [((GW, PEER), Arc::clone(&flag))].into_iter().collect(),
        ..Fwd::default()
    };
    let (h, wakes) = handler(fwd, Arc::new(SaDb::new()));
    let layout = BufLayout::default();
    let mut ctx = worker_ctx(&h);
    let mut pkts: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::new(layout)).collect();
    let mut actions = vec![Action::Control; BATCH];
    // SPI, sequence number, then what would be the IV and ciphertext.
    let mut esp = vec![0u8; 200];
    esp[..4].copy_from_slice(&0x0bad_5b1fu32.to_be_bytes());
    esp[7] = 1;
    let mut receive = |from: Ipv4Addr, pkts: &mut [PacketBuf], actions: &mut [Action]| {
        batch(
            &h,
            &mut ctx,
            pkts,
            actions,
            |_, p| p.fill(layout.headroom, &esp).unwrap(),
            |h, ctx, p| {
                h.handle_udp(
                    ctx,
                    SocketAddrV4::new(GW, 4500),
                    SocketAddrV4::new(from, 4500),
                    p,
                )
            },
        );
    };
    let stranger = Ipv4Addr::new(203, 0, 113, 9);
    receive(stranger, &mut pkts, &mut actions);
    assert!(wakes.try_recv().is_err(), "not from a customer gateway");
    let n = allocations_in(|| {
        for _ in 0..4 {
            receive(PEER, &mut pkts, &mut actions);
            receive(stranger, &mut pkts, &mut actions);
        }
    });
    assert_eq!(n, 0, "allocations dropping 8 batches");
    let no_sa = Action::Drop(dataplane::DropReason::NoSa);
    assert!(actions.iter().all(|a| *a == no_sa), "{actions:?}");
    assert!(matches!(
        wakes.try_recv(),
        Ok(crate::control::Input::UnknownSpi)
    ));
    assert!(wakes.try_recv().is_err(), "one wake-up for 256 packets");
    // The control thread re-arms the flag (every status tick): the next packet wakes
    // it again.
    flag.store(false, std::sync::atomic::Ordering::Release);
    receive(PEER, &mut pkts, &mut actions);
    assert!(matches!(
        wakes.try_recv(),
        Ok(crate::control::Input::UnknownSpi)
    ));
    assert!(wakes.try_recv().is_err());
}
