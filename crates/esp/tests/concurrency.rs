//! Several workers share one SA through `&self`, as the data plane runs them: concurrent
//! encapsulation hands out every sequence number exactly once, concurrent decapsulation
//! (with duplicates racing each other) accepts every packet exactly once.

use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use crypto::{Encr, Integ};
use esp::fuzzing::{buffer_for, peer_packet, sa_pair};
use esp::{Decapsulated, EspError, HEADROOM_MAX, REPLAY_WINDOW};

const THREADS: usize = 4;

#[test]
fn concurrent_encapsulation_never_reuses_a_sequence_number() {
    let (out, inb) = sa_pair(Encr::AesGcm16_128, None, false);
    let out = Arc::new(out);
    let per_thread = 3000;
    let packets: Vec<Vec<(u32, Vec<u8>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let out = Arc::clone(&out);
                scope.spawn(move || {
                    let mut buf = buffer_for(100);
                    (0..per_thread)
                        .map(|_| {
                            let len = peer_packet(&mut buf[HEADROOM_MAX..], 20);
                            let sent = out.encapsulate(&mut buf, HEADROOM_MAX, len).unwrap();
                            (sent.seq, buf[sent.range].to_vec())
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total = THREADS * per_thread;
    let mut all: Vec<(u32, Vec<u8>)> = packets.into_iter().flatten().collect();
    let seqs: HashSet<u32> = all.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs.len(), total);
    assert_eq!(seqs, (1..=total as u32).collect());
    // GCM IVs are the sequence numbers, so they are unique too; and every packet opens.
    all.sort_by_key(|(seq, _)| *seq);
    for (_, mut packet) in all {
        assert!(matches!(
            inb.decapsulate(&mut packet),
            Ok(Decapsulated::Packet { .. })
        ));
    }
    assert_eq!(out.stats().packets, total as u64);
}

#[test]
fn concurrent_decapsulation_accepts_each_packet_exactly_once() {
    for (encr, integ) in [
        (Encr::AesGcm16_128, None),
        (Encr::AesCbc128, Some(Integ::HmacSha1_96)),
    ] {
        let (out, inb) = sa_pair(encr, integ, true);
        let total = 8192;
        let mut buf = buffer_for(100);
        let packets: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..total)
                .map(|_| {
                    let len = peer_packet(&mut buf[HEADROOM_MAX..], 36);
                    let range = out.encapsulate(&mut buf, HEADROOM_MAX, len).unwrap().range;
                    buf[range].to_vec()
                })
                .collect(),
        );
        let inb = Arc::new(inb);
        // Work goes out in rounds of `CHUNK` packets with a barrier between rounds, which
        // keeps the workers within 2 * CHUNK sequence numbers of each other, inside the
        // replay window, so no packet can be refused as too old.
        const CHUNK: usize = 256;
        const _: () = assert!(2 * CHUNK as u64 <= REPLAY_WINDOW);
        let barrier = Arc::new(Barrier::new(THREADS));
        let accepted: Vec<Vec<usize>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (inb, packets, barrier) =
                        (Arc::clone(&inb), Arc::clone(&packets), Arc::clone(&barrier));
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        let mut scratch = Vec::new();
                        for chunk in 0..total / CHUNK {
                            // Each worker takes its own share of the round and, racing,
                            // a duplicate of the next worker's share.
                            for i in chunk * CHUNK..(chunk + 1) * CHUNK {
                                if i % THREADS != t && i % THREADS != (t + 1) % THREADS {
                                    continue;
                                }
                                scratch.clear();
                                scratch.extend_from_slice(&packets[i]);
                                match inb.decapsulate(&mut scratch) {
                                    Ok(Decapsulated::Packet { .. }) => mine.push(i),
                                    Err(EspError::Replayed { seq }) => {
                                        assert_eq!(seq as usize, i + 1);
                                    }
                                    other => panic!("packet {i}: {other:?}"),
                                }
                            }
                            barrier.wait();
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut union = HashSet::new();
        for i in accepted.into_iter().flatten() {
            assert!(union.insert(i), "packet {i} accepted twice");
        }
        assert_eq!(union.len(), total, "every packet accepted once");
        let stats = inb.stats();
        assert_eq!(stats.packets, total as u64);
        assert_eq!(stats.replay, total as u64, "every duplicate refused");
        assert_eq!(stats.highest_seq, total as u64);
    }
}
