//! Batched socket IO on loopback inside a fresh network namespace (needs root).

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use common::Netns;
use dataplane::{
    BatchBuf, BatchSocket, BufLayout, Datagram, GroScratch, MsgScratch, SocketOptions,
};

/// Waits (bounded) until `fd` is readable.
fn readable(fd: i32, limit: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut p, 1, limit.as_millis() as i32) > 0 }
}

/// Receives until `want` packets arrived (bounded); returns (payload, meta) pairs and the
/// number of recvmmsg calls that returned data.
fn recv_all(s: &BatchSocket, want: usize) -> (Vec<(Vec<u8>, dataplane::RecvMeta)>, usize) {
    let mut batch = BatchBuf::new(64, BufLayout::default());
    let mut scratch = MsgScratch::new(64);
    let mut got = Vec::new();
    let mut calls = 0;
    let end = Instant::now() + Duration::from_secs(5);
    while got.len() < want && Instant::now() < end {
        if !readable(s.fd(), Duration::from_millis(200)) {
            continue;
        }
        let r = s.recv_batch(&mut batch, &mut scratch).expect("recv_batch");
        assert_eq!(r.truncated + r.malformed, 0, "{r:?}");
        if r.packets > 0 {
            calls += 1;
        }
        for (p, m) in batch.packets().iter().zip(batch.meta()) {
            got.push((p.data().to_vec(), *m));
        }
    }
    (got, calls)
}

#[test]
fn sendmmsg_64_datagrams_in_one_call_and_recvmmsg_them_back() {
    let ns = Netns::new("b");
    ns.run(|| {
        let opts = SocketOptions::default();
        let rx = BatchSocket::udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), &opts).unwrap();
        let tx = BatchSocket::udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), &opts).unwrap();
        assert_ne!(rx.local().port(), 0);
        let payloads: Vec<Vec<u8>> = (0..64u32)
            .map(|i| {
                let mut v = i.to_be_bytes().to_vec();
                v.resize(100 + i as usize * 10, i as u8);
                v
            })
            .collect();
        let mut scratch = MsgScratch::new(64);
        let out = tx.send_batch(
            payloads.iter().map(|p| Datagram {
                data: p,
                remote: rx.local(),
                local: Ipv4Addr::UNSPECIFIED,
            }),
            &mut scratch,
        );
        assert_eq!(out.sent, 64, "{out:?}");
        assert_eq!(out.calls, 1, "one sendmmsg for 64 datagrams");
        assert_eq!(out.messages, 64, "sizes differ: no GSO coalescing");
        assert_eq!(out.failed, 0);
        assert_eq!(out.bytes, payloads.iter().map(Vec::len).sum::<usize>());

        let (got, calls) = recv_all(&rx, 64);
        assert_eq!(got.len(), 64);
        assert!(calls <= 4, "{calls} recvmmsg calls for 64 datagrams");
        for (i, (data, meta)) in got.iter().enumerate() {
            assert_eq!(data, &payloads[i], "datagram {i} in order and intact");
            assert_eq!(meta.remote, tx.local());
            assert_eq!(meta.local, rx.local());
        }
    });
}

#[test]
fn udp_gso_coalesces_equal_sized_runs_and_receiver_sees_datagrams() {
    let ns = Netns::new("g");
    ns.run(|| {
        assert!(dataplane::udp_gso_supported(), "kernel without UDP_SEGMENT");
        let opts = SocketOptions::default();
        let rx1 = BatchSocket::udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), &opts).unwrap();
        let rx2 = BatchSocket::udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), &opts).unwrap();
        let tx = BatchSocket::udp(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), &opts).unwrap();
        assert!(tx.gso());
        // 40 × 1000 bytes + one 300-byte tail to rx1, then 23 × 1000 bytes to rx2 from a
        // chosen source (pktinfo and segment size in one control buffer).
        let mut items: Vec<(Vec<u8>, SocketAddrV4, Ipv4Addr)> = Vec::new();
        for i in 0..41u32 {
            let mut v = i.to_be_bytes().to_vec();
            v.resize(if i == 40 { 300 } else { 1000 }, i as u8);
            items.push((v, rx1.local(), Ipv4Addr::UNSPECIFIED));
        }
        for i in 0..23u32 {
            let mut v = (100 + i).to_be_bytes().to_vec();
            v.resize(1000, 0xaa);
            items.push((v, rx2.local(), Ipv4Addr::new(127, 0, 0, 3)));
        }
        let mut scratch = MsgScratch::new(64);
        let out = tx.send_batch(
            items.iter().map(|(d, r, l)| Datagram {
                data: d,
                remote: *r,
                local: *l,
            }),
            &mut scratch,
        );
        assert_eq!((out.sent, out.failed, out.calls), (64, 0, 1), "{out:?}");
        assert_eq!(out.messages, 2, "two GSO runs: {out:?}");
        assert_eq!(out.bytes, 40 * 1000 + 300 + 23 * 1000);
        let (got1, _) = recv_all(&rx1, 41);
        let (got2, _) = recv_all(&rx2, 23);
        assert_eq!(got1.len(), 41);
        assert_eq!(got2.len(), 23);
        for (i, (d, m)) in got1.iter().enumerate() {
            assert_eq!(d, &items[i].0, "segment {i}");
            assert_eq!(m.remote.port(), tx.local().port());
        }
        for (i, (d, m)) in got2.iter().enumerate() {
            assert_eq!(d, &items[41 + i].0, "segment {i} of the second run");
            assert_eq!(*m.remote.ip(), Ipv4Addr::new(127, 0, 0, 3));
        }

        // Without GSO the same batch is 64 messages, still one call.
        let plain = BatchSocket::udp(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            &SocketOptions { gso: false, ..opts },
        )
        .unwrap();
        assert!(!plain.gso());
        let out = plain.send_batch(
            items.iter().map(|(d, r, _)| Datagram {
                data: d,
                remote: *r,
                local: Ipv4Addr::UNSPECIFIED,
            }),
            &mut scratch,
        );
        assert_eq!((out.sent, out.messages, out.calls), (64, 64, 1), "{out:?}");
        assert_eq!(recv_all(&rx1, 41).0.len(), 41);
        assert_eq!(recv_all(&rx2, 23).0.len(), 23);
    });
}

#[test]
fn gso_run_larger_than_the_path_mtu_falls_back_to_single_datagrams() {
    let ns = Netns::new("m");
    // 2000-byte segments over a 1500-byte link: UDP_SEGMENT refuses (EINVAL), the
    // datagrams go out one by one (fragmented by IP) and still arrive.
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    ns.run(|| {
        let opts = SocketOptions::default();
        let rx = BatchSocket::udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), &opts).unwrap();
        let tx = BatchSocket::udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), &opts).unwrap();
        let data: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 2000]).collect();
        let mut scratch = MsgScratch::new(8);
        let out = tx.send_batch(
            data.iter().map(|d| Datagram {
                data: d,
                remote: rx.local(),
                local: Ipv4Addr::UNSPECIFIED,
            }),
            &mut scratch,
        );
        assert_eq!((out.sent, out.failed), (4, 0), "{out:?}");
        assert_eq!(out.messages, 4, "{out:?}");
        // Linux 6.x refuses an oversized segment with EMSGSIZE, which says nothing about
        // GSO itself: it stays on (older kernels said EINVAL, which turns it off once
        // the datagrams go out alone; then the outcome says so).
        assert_eq!(tx.gso(), !out.gso_disabled, "{out:?}");
        let (got, _) = recv_all(&rx, 4);
        assert_eq!(got.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(), data);
    });
}

#[test]
fn wildcard_socket_learns_and_chooses_local_address_with_pktinfo() {
    let ns = Netns::new("p");
    ns.run(|| {
        let opts = SocketOptions::default();
        let rx = BatchSocket::udp(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), &opts).unwrap();
        let tx = BatchSocket::udp(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), &opts).unwrap();
        let to = |ip: [u8; 4], port| SocketAddrV4::new(Ipv4Addr::from(ip), port);
        let mut scratch = MsgScratch::new(8);
        // Two destinations inside 127/8 and two chosen sources.
        let out = tx.send_batch(
            [
                Datagram {
                    data: b"a",
                    remote: to([127, 0, 0, 5], rx.local().port()),
                    local: Ipv4Addr::new(127, 0, 0, 7),
                },
                Datagram {
                    data: b"b",
                    remote: to([127, 0, 0, 6], rx.local().port()),
                    local: Ipv4Addr::new(127, 0, 0, 8),
                },
            ],
            &mut scratch,
        );
        assert_eq!(out.sent, 2, "{out:?}");
        let (got, _) = recv_all(&rx, 2);
        assert_eq!(got[0].0, b"a");
        assert_eq!(got[0].1.local, to([127, 0, 0, 5], rx.local().port()));
        assert_eq!(got[0].1.remote, to([127, 0, 0, 7], tx.local().port()));
        assert_eq!(got[1].1.local, to([127, 0, 0, 6], rx.local().port()));
        assert_eq!(got[1].1.remote, to([127, 0, 0, 8], tx.local().port()));
    });
}

#[test]
fn truncated_datagrams_are_counted_not_delivered() {
    let ns = Netns::new("t");
    ns.run(|| {
        let opts = SocketOptions::default();
        let rx = BatchSocket::udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), &opts).unwrap();
        let tx = BatchSocket::udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), &opts).unwrap();
        let big = vec![7u8; 3000];
        let mut scratch = MsgScratch::new(4);
        let items = [&big[..], b"small"].map(|d| Datagram {
            data: d,
            remote: rx.local(),
            local: Ipv4Addr::UNSPECIFIED,
        });
        assert_eq!(tx.send_batch(items, &mut scratch).sent, 2);
        let mut batch = BatchBuf::new(4, BufLayout::default());
        let mut seen = (0, 0);
        let end = Instant::now() + Duration::from_secs(5);
        while seen.0 + seen.1 < 2 && Instant::now() < end {
            if readable(rx.fd(), Duration::from_millis(200)) {
                let r = rx.recv_batch(&mut batch, &mut scratch).unwrap();
                seen.0 += r.packets;
                seen.1 += r.truncated;
                if r.packets > 0 {
                    assert_eq!(batch.packets()[0].data(), b"small");
                }
            }
        }
        assert_eq!(seen, (1, 1));
    });
}

#[test]
fn raw_esp_sockets_split_spis_between_workers() {
    let ns = Netns::new("e");
    ns.run(|| {
        let lo = Ipv4Addr::LOCALHOST;
        let share = |i| SocketOptions {
            esp_share: Some((i, 2)),
            ..SocketOptions::default()
        };
        let w0 = BatchSocket::esp(lo, &share(0)).unwrap();
        let w1 = BatchSocket::esp(lo, &share(1)).unwrap();
        // The sender gets its own copies too (raw sockets), which the test ignores.
        let tx = BatchSocket::esp(Ipv4Addr::UNSPECIFIED, &SocketOptions::default()).unwrap();
        let pkts: Vec<Vec<u8>> = (1..=64u32)
            .map(|spi| {
                let mut v = spi.to_be_bytes().to_vec();
                v.extend_from_slice(&1u32.to_be_bytes()); // sequence number
                v.extend_from_slice(&[0xee; 32]);
                v
            })
            .collect();
        let mut scratch = MsgScratch::new(64);
        let out = tx.send_batch(
            pkts.iter().map(|p| Datagram {
                data: p,
                remote: SocketAddrV4::new(lo, 0),
                local: Ipv4Addr::new(127, 0, 0, 9),
            }),
            &mut scratch,
        );
        assert_eq!((out.sent, out.calls), (64, 1), "{out:?}");
        let (even, _) = recv_all(&w0, 32);
        let (odd, _) = recv_all(&w1, 32);
        let spi = |d: &[u8]| u32::from_be_bytes(d[..4].try_into().unwrap());
        assert_eq!(even.len(), 32);
        assert_eq!(odd.len(), 32);
        assert!(even.iter().all(|(d, _)| spi(d) % 2 == 0));
        assert!(odd.iter().all(|(d, _)| spi(d) % 2 == 1));
        for (d, m) in even.iter().chain(&odd) {
            assert_eq!(
                d,
                &pkts[spi(d) as usize - 1],
                "IP header stripped, ESP intact"
            );
            assert_eq!(*m.remote.ip(), Ipv4Addr::new(127, 0, 0, 9));
            assert_eq!(*m.local.ip(), lo);
        }
        // Nothing more arrived at the workers: each SPI went to exactly one of them.
        assert!(!readable(w0.fd(), Duration::from_millis(100)));
        assert!(!readable(w1.fd(), Duration::from_millis(100)));
    });
}

/// A GSO run sent to a socket with `UDP_GRO` arrives as one coalesced message, which
/// `recv_gro` splits back into the original datagrams (the last one shorter) across
/// batches smaller than the run, with nothing lost between calls.
#[test]
fn gro_socket_receives_a_gso_run_as_one_message_and_splits_it() {
    let ns = Netns::new("g");
    ns.run(|| {
        let gro = SocketOptions {
            gro: true,
            ..SocketOptions::default()
        };
        let rx = BatchSocket::udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), &gro).unwrap();
        assert!(rx.gro());
        let tx = BatchSocket::udp(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            &SocketOptions::default(),
        )
        .unwrap();
        let items: Vec<Vec<u8>> = (0..40u32)
            .map(|i| {
                let mut v = i.to_be_bytes().to_vec();
                v.resize(if i == 39 { 500 } else { 1400 }, i as u8);
                v
            })
            .collect();
        let mut scratch = MsgScratch::new(64);
        let out = tx.send_batch(
            items.iter().map(|d| Datagram {
                data: d,
                remote: rx.local(),
                local: Ipv4Addr::UNSPECIFIED,
            }),
            &mut scratch,
        );
        assert_eq!(
            (out.sent, out.messages, out.coalesced),
            (40, 1, 1),
            "{out:?}"
        );

        // Batches of 16: the 40 segments take three calls.
        let mut batch = BatchBuf::new(16, BufLayout::default());
        let mut g = GroScratch::new(4);
        let (mut got, mut coalesced, mut calls) = (Vec::new(), 0, 0);
        let end = Instant::now() + Duration::from_secs(5);
        while got.len() < 40 && Instant::now() < end {
            if !g.pending() && !readable(rx.fd(), Duration::from_millis(200)) {
                continue;
            }
            let r = rx.recv_gro(&mut batch, &mut g).unwrap();
            assert_eq!(r.truncated + r.malformed, 0, "{r:?}");
            calls += 1;
            coalesced += r.coalesced;
            for (p, m) in batch.packets().iter().zip(batch.meta()) {
                assert_eq!(m.remote, tx.local());
                assert_eq!(m.local, rx.local());
                got.push(p.data().to_vec());
            }
        }
        assert_eq!(got, items);
        assert_eq!(coalesced, 1, "one coalesced message");
        assert_eq!(calls, 3);
        assert!(!g.pending());
        assert!(!readable(rx.fd(), Duration::from_millis(50)));
    });
}

/// `count` datagrams of `size` bytes (the last `last` bytes), each tagged with `tag` and
/// its index so order and content can be checked.
fn run(tag: u8, count: usize, size: usize, last: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut v = vec![tag, i as u8];
            v.resize(if i + 1 == count { last } else { size }, tag ^ i as u8);
            v
        })
        .collect()
}

/// Sends each run as one `sendmmsg` batch (one GSO message per run) from `tx` to `rx`.
fn send_runs(tx: &BatchSocket, rx: &BatchSocket, runs: &[&[Vec<u8>]]) {
    let mut scratch = MsgScratch::new(64);
    for r in runs {
        let out = tx.send_batch(
            r.iter().map(|d| Datagram {
                data: d,
                remote: rx.local(),
                local: Ipv4Addr::UNSPECIFIED,
            }),
            &mut scratch,
        );
        assert_eq!((out.sent, out.failed), (r.len(), 0), "{out:?}");
    }
}

/// Reads with `recv_gro` until `want` datagrams arrived (bounded).
fn recv_gro_all(
    rx: &BatchSocket,
    batch: &mut BatchBuf,
    g: &mut GroScratch,
    want: usize,
) -> (Vec<Vec<u8>>, usize) {
    let (mut got, mut copied) = (Vec::new(), 0);
    let end = Instant::now() + Duration::from_secs(5);
    while got.len() < want && Instant::now() < end {
        if !g.pending() && !readable(rx.fd(), Duration::from_millis(200)) {
            continue;
        }
        let r = rx.recv_gro(batch, g).expect("recv_gro");
        assert_eq!(r.truncated + r.malformed, 0, "{r:?}");
        assert_eq!(r.packets, batch.len());
        copied += r.copied;
        got.extend(batch.packets().iter().map(|p| p.data().to_vec()));
    }
    (got, copied)
}

/// Once `recv_gro` has seen a segment size, messages of that size land one segment per
/// batch slot (no copy); a message with another segment size, a datagram larger than
/// the slots, one longer than the batch (the rest spills) and small ones after it all
/// still come out whole and in order, the short last segments included.
#[test]
fn gro_receive_in_place_and_when_the_segment_size_changes() {
    let ns = Netns::new("gz");
    ns.run(|| {
        let gro = SocketOptions {
            gro: true,
            ..SocketOptions::default()
        };
        let rx = BatchSocket::udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), &gro).unwrap();
        let tx = BatchSocket::udp(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            &SocketOptions::default(),
        )
        .unwrap();
        let mut batch = BatchBuf::new(128, BufLayout::default());
        let mut g = GroScratch::new(4);

        // Learns 1400 (slots of 2048 do not match: copied).
        let a = run(1, 30, 1400, 700);
        send_runs(&tx, &rx, &[&a]);
        assert_eq!(
            recv_gro_all(&rx, &mut batch, &mut g, a.len()),
            (a.clone(), 30)
        );

        // Two messages of 1400-byte segments, read in place by one recvmmsg; then one of
        // 1000-byte segments and a lone 1800-byte datagram, both put together again.
        let b = run(2, 45, 1400, 1399);
        let c = run(3, 20, 1400, 1400);
        let d = run(4, 25, 1000, 1);
        let e = run(5, 1, 1800, 1800);
        send_runs(&tx, &rx, &[&b, &c]);
        let want: Vec<Vec<u8>> = [&b, &c].into_iter().flatten().cloned().collect();
        assert_eq!(recv_gro_all(&rx, &mut batch, &mut g, 65), (want, 0));
        // The tail of one GSO send (three segments) and the next whole message: one
        // call reads again while a whole message still fits, both in place.
        let mut sixty = BatchBuf::new(60, BufLayout::default());
        let t = run(8, 3, 1400, 10);
        let u = run(9, 45, 1400, 1400);
        send_runs(&tx, &rx, &[&t, &u]);
        assert!(readable(rx.fd(), Duration::from_secs(2)));
        let r = rx.recv_gro(&mut sixty, &mut g).expect("recv_gro");
        assert_eq!((r.packets, r.copied, r.coalesced), (48, 0, 2), "{r:?}");
        let got: Vec<Vec<u8>> = sixty.packets().iter().map(|p| p.data().to_vec()).collect();
        let want: Vec<Vec<u8>> = [&t, &u].into_iter().flatten().cloned().collect();
        assert_eq!(got, want);

        send_runs(&tx, &rx, &[&d, &e]);
        let want: Vec<Vec<u8>> = [&d, &e].into_iter().flatten().cloned().collect();
        assert_eq!(recv_gro_all(&rx, &mut batch, &mut g, 26), (want, 26));

        // Now 1000: a message longer than a 16-slot batch fills the slots in place and
        // spills the rest; a small datagram behind it keeps its place.
        let mut small = BatchBuf::new(16, BufLayout::default());
        let f = run(6, 40, 1000, 999);
        let h = run(7, 1, 60, 60);
        send_runs(&tx, &rx, &[&f, &h]);
        let want: Vec<Vec<u8>> = [&f, &h].into_iter().flatten().cloned().collect();
        assert_eq!(recv_gro_all(&rx, &mut small, &mut g, 41), (want, 24));
        assert!(!g.pending());
        assert!(!readable(rx.fd(), Duration::from_millis(50)));
    });
}
