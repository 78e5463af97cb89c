//! Per-worker packet counters: plain atomics written by one worker (once per batch, from
//! local sums) and read by anyone as a [`Snapshot`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a packet was dropped. Handlers pick the reason; the IO layer adds its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Not an IPv4 packet, or a protocol the handler does not carry.
    Unsupported,
    /// Could not be parsed.
    Malformed,
    /// No route / no tunnel for the destination.
    NoRoute,
    /// No SA for the SPI, or the SA is not usable.
    NoSa,
    /// Integrity check failed (RFC 4303 §3.4.4).
    AuthFailed,
    /// Sequence number already seen or too old (RFC 4303 §3.4.3).
    Replay,
    /// Inner addresses not allowed by the SA's traffic selectors (RFC 4301 §5.2).
    Policy,
    /// Would not fit (headroom/tailroom/MTU).
    TooBig,
    /// Larger than a receive buffer slot.
    Truncated,
    /// The action named a local address no socket is bound to.
    NoSocket,
    /// The control channel was full.
    ControlFull,
    /// The kernel refused to send it.
    SendFailed,
    /// Anything else the handler decided.
    Other,
    /// A NAT-keepalive from a peer behind a NAT (RFC 3948 §2.3): one octet that only
    /// keeps the NAT's mapping; nothing to forward.
    NatKeepalive,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 14;
    /// Every reason, in index order.
    pub const ALL: [DropReason; Self::COUNT] = [
        Self::Unsupported,
        Self::Malformed,
        Self::NoRoute,
        Self::NoSa,
        Self::AuthFailed,
        Self::Replay,
        Self::Policy,
        Self::TooBig,
        Self::Truncated,
        Self::NoSocket,
        Self::ControlFull,
        Self::SendFailed,
        Self::Other,
        Self::NatKeepalive,
    ];

    /// Stable snake_case name (for metrics labels).
    pub fn name(self) -> &'static str {
        match self {
            Self::Unsupported => "unsupported",
            Self::Malformed => "malformed",
            Self::NoRoute => "no_route",
            Self::NoSa => "no_sa",
            Self::AuthFailed => "auth_failed",
            Self::Replay => "replay",
            Self::Policy => "policy",
            Self::TooBig => "too_big",
            Self::Truncated => "truncated",
            Self::NoSocket => "no_socket",
            Self::ControlFull => "control_full",
            Self::SendFailed => "send_failed",
            Self::Other => "other",
            Self::NatKeepalive => "nat_keepalive",
        }
    }
}

/// Packet and byte counts for one direction of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    /// Packets.
    pub packets: u64,
    /// Bytes (payload as handed to or from the kernel).
    pub bytes: u64,
}

impl Flow {
    pub(crate) fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// A point-in-time copy of counters (of one worker, or summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Read from the TUN device.
    pub tun_rx: Flow,
    /// Written to the TUN device.
    pub tun_tx: Flow,
    /// Received on UDP sockets.
    pub udp_rx: Flow,
    /// Sent on UDP sockets.
    pub udp_tx: Flow,
    /// Received on raw ESP sockets (after the IP header).
    pub esp_rx: Flow,
    /// Sent on raw ESP sockets.
    pub esp_tx: Flow,
    /// Handed to the control channel.
    pub control: Flow,
    /// Batches processed (a batch is one receive call's worth of packets).
    pub batches: u64,
    /// TUN offloads: super-packets read (split into more than one packet).
    pub tun_gso_reads: u64,
    /// TUN offloads: writes that carried coalesced segments (more than one packet).
    pub tun_gro_writes: u64,
    /// UDP GSO: messages sent that carried more than one datagram.
    pub udp_gso_sends: u64,
    /// UDP GRO: messages received that carried more than one datagram.
    pub udp_gro_reads: u64,
    /// UDP GSO turned off on a socket because the kernel refused it.
    pub udp_gso_disabled: u64,
    /// Received packets copied into their batch slot (segments of a TUN super-packet or
    /// of a coalesced UDP message that were not received in place; see `sock::recv_gro`
    /// and the worker's TUN read).
    pub rx_copied: u64,
    /// Drops, indexed by `DropReason as usize`.
    pub drops: [u64; DropReason::COUNT],
}

impl Snapshot {
    /// Drops for one reason.
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    /// All drops.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// `self - earlier`, field by field (for "what happened since").
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let f = |a: Flow, b: Flow| Flow {
            packets: a.packets.wrapping_sub(b.packets),
            bytes: a.bytes.wrapping_sub(b.bytes),
        };
        let mut drops = [0; DropReason::COUNT];
        for (i, d) in drops.iter_mut().enumerate() {
            *d = self.drops[i].wrapping_sub(earlier.drops[i]);
        }
        Snapshot {
            tun_rx: f(self.tun_rx, earlier.tun_rx),
            tun_tx: f(self.tun_tx, earlier.tun_tx),
            udp_rx: f(self.udp_rx, earlier.udp_rx),
            udp_tx: f(self.udp_tx, earlier.udp_tx),
            esp_rx: f(self.esp_rx, earlier.esp_rx),
            esp_tx: f(self.esp_tx, earlier.esp_tx),
            control: f(self.control, earlier.control),
            batches: self.batches.wrapping_sub(earlier.batches),
            tun_gso_reads: self.tun_gso_reads.wrapping_sub(earlier.tun_gso_reads),
            tun_gro_writes: self.tun_gro_writes.wrapping_sub(earlier.tun_gro_writes),
            udp_gso_sends: self.udp_gso_sends.wrapping_sub(earlier.udp_gso_sends),
            udp_gro_reads: self.udp_gro_reads.wrapping_sub(earlier.udp_gro_reads),
            udp_gso_disabled: self.udp_gso_disabled.wrapping_sub(earlier.udp_gso_disabled),
            rx_copied: self.rx_copied.wrapping_sub(earlier.rx_copied),
            drops,
        }
    }
}

impl std::ops::Add for Snapshot {
    type Output = Snapshot;
    fn add(self, o: Snapshot) -> Snapshot {
        let f = |a: Flow, b: Flow| Flow {
            packets: a.packets + b.packets,
            bytes: a.bytes + b.bytes,
        };
        let mut drops = self.drops;
        for (d, x) in drops.iter_mut().zip(o.drops) {
            *d += x;
        }
        Snapshot {
            tun_rx: f(self.tun_rx, o.tun_rx),
            tun_tx: f(self.tun_tx, o.tun_tx),
            udp_rx: f(self.udp_rx, o.udp_rx),
            udp_tx: f(self.udp_tx, o.udp_tx),
            esp_rx: f(self.esp_rx, o.esp_rx),
            esp_tx: f(self.esp_tx, o.esp_tx),
            control: f(self.control, o.control),
            batches: self.batches + o.batches,
            tun_gso_reads: self.tun_gso_reads + o.tun_gso_reads,
            tun_gro_writes: self.tun_gro_writes + o.tun_gro_writes,
            udp_gso_sends: self.udp_gso_sends + o.udp_gso_sends,
            udp_gro_reads: self.udp_gro_reads + o.udp_gro_reads,
            udp_gso_disabled: self.udp_gso_disabled + o.udp_gso_disabled,
            rx_copied: self.rx_copied + o.rx_copied,
            drops,
        }
    }
}

impl std::iter::Sum for Snapshot {
    fn sum<I: Iterator<Item = Snapshot>>(iter: I) -> Snapshot {
        iter.fold(Snapshot::default(), |a, b| a + b)
    }
}

/// One worker's shared counters, on their own cache lines so that workers do not
/// false-share.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    // 7 flows × 2 + batches + the five offload counts + copies, then the drops.
    flows: [AtomicU64; 21],
    drops: [AtomicU64; DropReason::COUNT],
}

impl Counters {
    /// Adds a worker's local sums (one relaxed `fetch_add` per non-zero field).
    pub(crate) fn add(&self, d: &Snapshot) {
        let flows = [
            d.tun_rx.packets,
            d.tun_rx.bytes,
            d.tun_tx.packets,
            d.tun_tx.bytes,
            d.udp_rx.packets,
            d.udp_rx.bytes,
            d.udp_tx.packets,
            d.udp_tx.bytes,
            d.esp_rx.packets,
            d.esp_rx.bytes,
            d.esp_tx.packets,
            d.esp_tx.bytes,
            d.control.packets,
            d.control.bytes,
            d.batches,
            d.tun_gso_reads,
            d.tun_gro_writes,
            d.udp_gso_sends,
            d.udp_gro_reads,
            d.udp_gso_disabled,
            d.rx_copied,
        ];
        for (c, v) in self.flows.iter().zip(flows) {
            if v != 0 {
                c.fetch_add(v, Relaxed);
            }
        }
        for (c, &v) in self.drops.iter().zip(d.drops.iter()) {
            if v != 0 {
                c.fetch_add(v, Relaxed);
            }
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let v = |i: usize| self.flows[i].load(Relaxed);
        let f = |i: usize| Flow {
            packets: v(i),
            bytes: v(i + 1),
        };
        let mut drops = [0; DropReason::COUNT];
        for (d, c) in drops.iter_mut().zip(self.drops.iter()) {
            *d = c.load(Relaxed);
        }
        Snapshot {
            tun_rx: f(0),
            tun_tx: f(2),
            udp_rx: f(4),
            udp_tx: f(6),
            esp_rx: f(8),
            esp_tx: f(10),
            control: f(12),
            batches: v(14),
            tun_gso_reads: v(15),
            tun_gro_writes: v(16),
            udp_gso_sends: v(17),
            udp_gro_reads: v(18),
            udp_gso_disabled: v(19),
            rx_copied: v(20),
            drops,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn add_snapshot_since_and_sum() {
        let c = Counters::default();
        let mut d = Snapshot::default();
        d.tun_rx.add(100);
        d.udp_tx.add(120);
        d.control.add(5);
        d.batches = 1;
        d.tun_gro_writes = 3;
        d.udp_gro_reads = 4;
        d.udp_gso_disabled = 1;
        d.rx_copied = 6;
        d.drops[DropReason::Replay as usize] = 2;
        c.add(&d);
        let s1 = c.snapshot();
        assert_eq!(s1, d);
        c.add(&d);
        let s2 = c.snapshot();
        assert_eq!(s2.since(&s1), d);
        assert_eq!(s2.dropped(DropReason::Replay), 4);
        assert_eq!([s1, s1].into_iter().sum::<Snapshot>(), s2);
        assert_eq!(s2.udp_tx.bytes, 240);
    }
}
