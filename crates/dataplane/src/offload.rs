//! TUN offloads (`IFF_VNET_HDR`): splitting the kernel's GSO super-packets into
//! MTU-sized packets, and coalescing received TCP segments into super-packets.
//!
//! With `IFF_VNET_HDR` every read from and write to the TUN device carries a
//! `virtio_net_hdr` (virtio 1.x §5.1.6, `include/uapi/linux/virtio_net.h`) in front of
//! the packet. After `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | …)` the kernel hands us TCP
//! (and with `TUN_F_USO4` UDP) super-packets of up to 64 KiB with one IP and one L4
//! header plus `gso_size`-sized chunks of payload, and packets whose L4 checksum is only
//! *partial* (the pseudo-header sum, to be finished over `csum_start..`). It takes back
//! super-packets the same way, which is how one `write` can deliver ~45 TCP segments.
//!
//! Everything here is pure: it reads and writes caller buffers, allocates nothing (but
//! [`TunRun::new`]'s spare buffers, once per worker), and turns malformed input into an
//! [`OffloadError`] (the worker drops and counts it).
//!
//! - [`Split::plan`] checks a packet read from the TUN device against its header and
//!   [`Split::segment`] writes segment *i* as a complete IPv4 packet: IP total length,
//!   identification (+i) and header checksum, TCP sequence number (+offset), FIN/PSH
//!   only on the last segment and CWR only on the first (as the kernel's own
//!   `tcp_gso_segment` does), and the L4 checksum computed over the segment.
//! - [`Gro`] decides which consecutive TCP segments of one flow may travel as one
//!   super-packet (same rules as the kernel's `tcp_gro_receive`: identical headers except
//!   length, ID and checksums, contiguous sequence numbers, equal segment sizes with a
//!   shorter last one, no SYN/FIN/RST/URG, no CWR after the first, valid checksums) and
//!   patches the first segment's header into the super-packet's header.
//! - [`TunRun`] holds the last open run back across batches until it is full, the next
//!   packet does not extend it, or the worker is about to wait for input.
//!
//! IPv4 only: the ESP handler carries IPv4, so TSO6 is not turned on and the kernel
//! segments IPv6 itself.

/// `sizeof(struct virtio_net_hdr)`: the TUN default (`TUNSETVNETHDRSZ` not needed).
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: finish the checksum at `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`: the segments carry ECN (CWR on the first only).
pub const GSO_ECN: u8 = 0x80;

use crate::buf::{BufLayout, PacketBuf};

/// Most segments coalesced into one super-packet.
pub const MAX_SEGMENTS: usize = 64;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;
/// RFC 9293 §3.1: the checksum is at offset 16 of the TCP header.
const TCP_CSUM_OFFSET: usize = 16;
/// RFC 768: the checksum is at offset 6 of the UDP header.
const UDP_CSUM_OFFSET: usize = 6;

/// The `virtio_net_hdr` in front of every packet on an `IFF_VNET_HDR` TUN device. TUN
/// uses the host's byte order for it (legacy virtio) unless told otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM` or 0.
    pub flags: u8,
    /// `GSO_*`, possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers (the kernel fills in its linear length: not trusted).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (the L4 header).
    pub csum_start: u16,
    /// Where the checksum goes, relative to `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header from the first [`VNET_HDR_LEN`] bytes.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Why a packet from the TUN device cannot be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The header and the packet do not agree, or the packet is broken.
    #[error("malformed offload packet: {0}")]
    Malformed(&'static str),
    /// A GSO type this data plane did not ask for (IPv6, UFO).
    #[error("unsupported offload: {0}")]
    Unsupported(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One packet; finish the checksum at (start, offset) if set.
    Plain(Option<(usize, usize)>),
    Tcp4,
    Udp4,
}

/// How one packet read from the TUN device becomes [`count`](Self::count) packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    kind: Kind,
    /// IP header length.
    ihl: usize,
    /// IP + L4 header length.
    hdr: usize,
    /// Payload bytes per segment.
    mss: usize,
    /// Packet length.
    len: usize,
    count: usize,
    /// The super-packet's IP ID, TCP sequence number and TCP flags, which each segment
    /// derives its own from.
    id: u16,
    seq: u32,
    flags: u8,
    /// Unfolded sums of the header words that are the same in every segment: the IPv4
    /// header without total length, ID and checksum; the pseudo-header addresses and
    /// protocol with the L4 header without sequence number, offset/flags, length and
    /// checksum. Each segment's checksums start from these (RFC 1624: only the changed
    /// words need summing).
    ip_sum: u64,
    l4_sum: u64,
}

impl Split {
    /// Checks `pkt` (the bytes after the vnet header) against `h`.
    pub fn plan(h: &VnetHdr, pkt: &[u8]) -> Result<Split, OffloadError> {
        Self::plan_head(h, pkt, pkt.len())
    }

    /// Like [`plan`](Self::plan) when only the first bytes `head` of a `len`-byte packet
    /// are at hand (they must hold its IP and L4 headers).
    pub fn plan_head(h: &VnetHdr, head: &[u8], len: usize) -> Result<Split, OffloadError> {
        let plain = |kind| Split {
            kind,
            ihl: 0,
            hdr: 0,
            mss: len,
            len,
            count: 1,
            id: 0,
            seq: 0,
            flags: 0,
            ip_sum: 0,
            l4_sum: 0,
        };
        match h.gso_type & !GSO_ECN {
            GSO_NONE => {
                let csum = if h.flags & F_NEEDS_CSUM != 0 {
                    let (s, o) = (usize::from(h.csum_start), usize::from(h.csum_offset));
                    if s + o + 2 > len {
                        return Err(OffloadError::Malformed("checksum offset beyond packet"));
                    }
                    Some((s, o))
                } else {
                    None
                };
                Ok(plain(Kind::Plain(csum)))
            }
            t @ (GSO_TCPV4 | GSO_UDP_L4) => {
                let pkt = head;
                let ihl = ipv4_header(pkt, len)?;
                let proto = pkt[9];
                let (kind, hdr) = if t == GSO_TCPV4 {
                    if proto != PROTO_TCP {
                        return Err(OffloadError::Malformed("GSO TCPv4 without TCP"));
                    }
                    let doff = usize::from(
                        pkt.get(ihl + 12)
                            .ok_or(OffloadError::Malformed("short TCP header"))?
                            >> 4,
                    ) * 4;
                    if doff < 20 {
                        return Err(OffloadError::Malformed("TCP data offset below 5"));
                    }
                    (Kind::Tcp4, ihl + doff)
                } else {
                    if proto != PROTO_UDP {
                        return Err(OffloadError::Malformed("GSO UDP without UDP"));
                    }
                    (Kind::Udp4, ihl + 8)
                };
                if hdr > len || hdr > pkt.len() {
                    return Err(OffloadError::Malformed("L4 header beyond packet"));
                }
                let mss = usize::from(h.gso_size);
                if mss == 0 {
                    return Err(OffloadError::Malformed("GSO size 0"));
                }
                let count = (len - hdr).div_ceil(mss).max(1);
                let ip_sum = sum(&pkt[..2], 0) + sum(&pkt[6..10], 0) + sum(&pkt[12..ihl], 0);
                let l4 = &pkt[ihl..hdr];
                let pseudo = sum(&pkt[12..20], u64::from(proto));
                let (l4_sum, seq, flags) = if kind == Kind::Tcp4 {
                    let sum = pseudo
                        + sum(&l4[..4], 0)
                        + sum(&l4[8..12], 0)
                        + sum(&l4[14..16], 0)
                        + sum(&l4[18..], 0);
                    (
                        sum,
                        u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
                        l4[13],
                    )
                } else {
                    (pseudo + sum(&l4[..4], 0), 0, 0)
                };
                Ok(Split {
                    kind,
                    ihl,
                    hdr,
                    mss,
                    len,
                    count,
                    id: u16::from_be_bytes([pkt[4], pkt[5]]),
                    seq,
                    flags,
                    ip_sum,
                    l4_sum,
                })
            }
            _ => Err(OffloadError::Unsupported("GSO type not negotiated")),
        }
    }

    /// Number of packets.
    pub fn count(&self) -> usize {
        self.count
    }

    /// IP + L4 header bytes every segment starts with (0 for a plain packet).
    pub fn hdr_len(&self) -> usize {
        self.hdr
    }

    /// Payload bytes per segment (the whole length for a plain packet).
    pub fn mss(&self) -> usize {
        self.mss
    }

    /// Length of packet `i` (0 if `i` is out of range).
    pub fn segment_len(&self, i: usize) -> usize {
        if i >= self.count {
            return 0;
        }
        match self.kind {
            Kind::Plain(_) => self.len,
            _ => {
                let start = i * self.mss;
                self.hdr + (self.len - self.hdr - start).min(self.mss)
            }
        }
    }

    /// Writes packet `i` of `pkt` (the packet [`plan`](Self::plan) checked) into `out`;
    /// returns its length, or `None` if `i` is out of range or `out` too short.
    pub fn segment(&self, pkt: &[u8], i: usize, out: &mut [u8]) -> Option<usize> {
        let n = self.segment_len(i);
        if n == 0 || out.len() < n || pkt.len() != self.len {
            return None;
        }
        match self.kind {
            Kind::Plain(_) => out[..n].copy_from_slice(pkt),
            Kind::Tcp4 | Kind::Udp4 => {
                let hdr = self.hdr;
                let start = hdr + i * self.mss;
                out[..hdr].copy_from_slice(&pkt[..hdr]);
                out[hdr..n].copy_from_slice(&pkt[start..start + (n - hdr)]);
            }
        }
        self.finish_segment(i, out)
    }

    /// Makes packet `i` valid in place: `out` holds the super-packet's headers
    /// ([`hdr_len`](Self::hdr_len) bytes) and then segment `i`'s payload (for a plain
    /// packet: the packet). Sets lengths, ID, sequence number and flags and fills in the
    /// checksums; returns the packet's length, or `None` if `i` is out of range or `out`
    /// too short.
    pub fn finish_segment(&self, i: usize, out: &mut [u8]) -> Option<usize> {
        let n = self.segment_len(i);
        if n == 0 || out.len() < n {
            return None;
        }
        let out = &mut out[..n];
        match self.kind {
            Kind::Plain(csum) => {
                if let Some((s, o)) = csum {
                    // The field holds the pseudo-header sum: summing it in finishes it.
                    let c = !fold(sum(&out[s..], 0));
                    let c = if c == 0 { 0xffff } else { c };
                    out[s + o..s + o + 2].copy_from_slice(&c.to_be_bytes());
                }
            }
            Kind::Tcp4 | Kind::Udp4 => {
                let (ihl, hdr) = (self.ihl, self.hdr);
                let id = self.id.wrapping_add(i as u16);
                out[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                out[4..6].copy_from_slice(&id.to_be_bytes());
                let c = !fold(self.ip_sum + n as u64 + u64::from(id));
                out[10..12].copy_from_slice(&c.to_be_bytes());
                let l4 = n - ihl;
                let payload = sum(&out[hdr..], 0);
                if self.kind == Kind::Tcp4 {
                    let seq = self.seq.wrapping_add((i * self.mss) as u32);
                    out[ihl + 4..ihl + 8].copy_from_slice(&seq.to_be_bytes());
                    let mut flags = self.flags;
                    if i + 1 != self.count {
                        flags &= !(TCP_FIN | TCP_PSH);
                    }
                    if i > 0 {
                        flags &= !TCP_CWR;
                    }
                    out[ihl + 13] = flags;
                    let words = u64::from(seq >> 16)
                        + u64::from(seq & 0xffff)
                        + u64::from(u16::from_be_bytes([out[ihl + 12], flags]));
                    let c = !fold(self.l4_sum + l4 as u64 + words + payload);
                    out[ihl + TCP_CSUM_OFFSET..ihl + TCP_CSUM_OFFSET + 2]
                        .copy_from_slice(&c.to_be_bytes());
                } else {
                    out[ihl + 4..ihl + 6].copy_from_slice(&(l4 as u16).to_be_bytes());
                    // The length counts twice: pseudo-header and UDP header.
                    let c = !fold(self.l4_sum + 2 * l4 as u64 + payload);
                    // RFC 768: a computed 0 is sent as all ones (0 means "no checksum").
                    let c = if c == 0 { 0xffff } else { c };
                    out[ihl + UDP_CSUM_OFFSET..ihl + UDP_CSUM_OFFSET + 2]
                        .copy_from_slice(&c.to_be_bytes());
                }
            }
        }
        Some(n)
    }
}

/// A run of TCP segments being coalesced into one super-packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gro {
    ihl: usize,
    hdr: usize,
    mss: usize,
    total: usize,
    count: usize,
    next_seq: u32,
    next_id: u16,
    df: bool,
    cwr: bool,
    psh: bool,
    /// A shorter segment or a PSH ended the run.
    closed: bool,
}

impl Gro {
    /// Starts a run with `first`, if it is a TCP/IPv4 segment that may be coalesced.
    pub fn start(first: &[u8]) -> Option<Gro> {
        let seg = TcpSeg::parse(first)?;
        if seg.flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG) != 0
            || seg.flags & TCP_ACK == 0
            || seg.payload == 0
            || !tcp_csum_ok(first, seg.ihl)
        {
            return None;
        }
        Some(Gro {
            ihl: seg.ihl,
            hdr: seg.hdr,
            mss: seg.payload,
            total: first.len(),
            count: 1,
            next_seq: seg.seq.wrapping_add(seg.payload as u32),
            next_id: seg.id.wrapping_add(1),
            df: seg.df,
            cwr: seg.flags & TCP_CWR != 0,
            psh: seg.flags & TCP_PSH != 0,
            closed: seg.flags & TCP_PSH != 0,
        })
    }

    /// Segments in the run.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Header bytes of each segment (the part [`append`](Self::append)ed segments leave
    /// out).
    pub fn hdr_len(&self) -> usize {
        self.hdr
    }

    /// Whether another segment of the run's size may still join: no PSH or shorter
    /// segment closed it, and neither the segment count nor the IPv4 total length
    /// (RFC 791 §3.1: 16 bits) would be exceeded by one more.
    pub fn is_open(&self) -> bool {
        !self.closed && self.count < MAX_SEGMENTS && self.total + self.mss <= usize::from(u16::MAX)
    }

    /// Adds `next` to the run if it continues it; `first` is the run's first segment.
    pub fn append(&mut self, first: &[u8], next: &[u8]) -> bool {
        if self.closed || self.count >= MAX_SEGMENTS {
            return false;
        }
        let Some(seg) = TcpSeg::parse(next) else {
            return false;
        };
        let (ihl, hdr) = (self.ihl, self.hdr);
        let ok = seg.ihl == ihl
            && seg.hdr == hdr
            && seg.payload > 0
            && seg.payload <= self.mss
            && self.total + seg.payload <= usize::from(u16::MAX)
            && seg.seq == self.next_seq
            && (self.df || seg.id == self.next_id)
            && seg.df == self.df
            // Version/IHL, TOS; flags/fragment offset, TTL, protocol; addresses.
            && first.get(0..2) == next.get(0..2)
            && first.get(6..10) == next.get(6..10)
            && first.get(12..ihl) == next.get(12..ihl)
            // Ports; acknowledgment number; data offset.
            && first.get(ihl..ihl + 4) == next.get(ihl..ihl + 4)
            && first.get(ihl + 8..ihl + 13) == next.get(ihl + 8..ihl + 13)
            // Flags except PSH, with no CWR after the first segment.
            && (first.get(ihl + 13).map(|f| f & !(TCP_PSH | TCP_CWR))
                == next.get(ihl + 13).map(|f| f & !(TCP_PSH | TCP_CWR)))
            && seg.flags & TCP_CWR == 0
            // Window, urgent pointer, options.
            && first.get(ihl + 14..ihl + 16) == next.get(ihl + 14..ihl + 16)
            && first.get(ihl + 18..hdr) == next.get(ihl + 18..hdr)
            && tcp_csum_ok(next, ihl);
        if !ok {
            return false;
        }
        self.count += 1;
        self.total += seg.payload;
        self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        self.next_id = seg.id.wrapping_add(1);
        if seg.flags & TCP_PSH != 0 {
            self.psh = true;
            self.closed = true;
        }
        if seg.payload < self.mss {
            self.closed = true;
        }
        true
    }

    /// Turns the first segment's header into the super-packet's (IP total length and
    /// checksum, PSH if any segment had it, the TCP checksum field holding the
    /// pseudo-header sum as `NEEDS_CSUM` wants) and returns the vnet header to write in
    /// front. With one segment the packet is left alone and the header says so.
    pub fn finish(&self, first: &mut [u8]) -> VnetHdr {
        if self.count == 1 {
            return VnetHdr::default();
        }
        let ihl = self.ihl;
        if first.len() < self.hdr {
            return VnetHdr::default();
        }
        set_ipv4_len_and_csum(first, self.total);
        if self.psh {
            first[ihl + 13] |= TCP_PSH;
        }
        let l4 = self.total - ihl;
        let partial = fold(pseudo_sum(first, l4));
        first[ihl + TCP_CSUM_OFFSET..ihl + TCP_CSUM_OFFSET + 2]
            .copy_from_slice(&partial.to_be_bytes());
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | if self.cwr { GSO_ECN } else { 0 },
            hdr_len: self.hdr as u16,
            gso_size: self.mss as u16,
            csum_start: ihl as u16,
            csum_offset: TCP_CSUM_OFFSET as u16,
        }
    }
}

/// The last open run of TCP segments bound for the TUN device, held back across UDP GRO
/// messages and batches so that one write carries as many segments as the kernel takes
/// (64 KiB) instead of ending at every batch boundary.
///
/// The peer's 64 KiB TSO super-packets leave it as two UDP GSO messages (the 65,507-byte
/// UDP limit) and arrive as separate GRO messages, often in separate batches: cut at the
/// batch, each TUN write carried about half a super-packet. Every write is one trip
/// through the receiving host's TCP stack and a wakeup of its application.
///
/// Held segments are moved out of the batch by swapping their buffers with spare ones of
/// the same layout (no bytes copied, nothing allocated after [`new`](Self::new)), so the
/// batch's slots are free for the next read. A run is written (in order, before
/// anything that follows it):
/// - when a packet for the TUN device does not extend it ([`push`](Self::push)), which
///   keeps every flow's and the device's packet order;
/// - when it cannot grow: a PSH or shorter segment closed it, as the kernel's
///   `tcp_gro_receive` flushes on them (a PSH marks where the sender wants the data
///   delivered now), or the next full segment would pass 64 KiB or the segment limit;
/// - when the worker asks ([`flush`](Self::flush)): before it blocks in `poll`, and
///   after a pass over its sources in which no segment joined ([`take_fresh`](Self::take_fresh)),
///   so a flow that pauses never waits for traffic that is not coming.
pub struct TunRun {
    /// `held[..len]` are the run's segments; the rest are spare buffers.
    held: Box<[PacketBuf]>,
    len: usize,
    /// The run's state while `len > 0`.
    gro: Option<Gro>,
    /// A segment joined since the last [`take_fresh`](Self::take_fresh).
    fresh: bool,
}

impl TunRun {
    /// A run holder with [`MAX_SEGMENTS`] spare buffers of `layout` (the batch's).
    pub fn new(layout: BufLayout) -> Self {
        Self {
            held: (0..MAX_SEGMENTS).map(|_| PacketBuf::new(layout)).collect(),
            len: 0,
            gro: None,
            fresh: false,
        }
    }

    /// Segments held back.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Whether a segment joined the run since the last call (and forgets it).
    pub fn take_fresh(&mut self) -> bool {
        std::mem::take(&mut self.fresh)
    }

    /// Takes `pkt`, the next packet for the TUN device. Calls `write` for every
    /// (super-)packet that must go out now, in order, with its vnet header, its segments
    /// and the header bytes to leave out of every segment but the first. `pkt` either
    /// goes out at once or is held, in which case it is swapped with a spare buffer
    /// (the caller must not rely on its contents afterwards).
    pub fn push<W>(&mut self, pkt: &mut PacketBuf, write: &mut W)
    where
        W: FnMut(&VnetHdr, &[PacketBuf], usize),
    {
        if self.len > 0 {
            // Only ask the run when a spare buffer is left: a segment it accepts must be
            // held, or its header would count bytes that are not written.
            let room = self.len < self.held.len();
            let joined = room
                && match (self.gro.as_mut(), self.held.first()) {
                    (Some(g), Some(first)) => g.append(first.data(), pkt.data()),
                    _ => false,
                };
            if joined && self.hold(pkt) {
                if !self.gro.as_ref().is_some_and(Gro::is_open) {
                    self.flush(write);
                }
                return;
            }
            self.flush(write);
        }
        match Gro::start(pkt.data()) {
            Some(g) if g.is_open() => {
                self.gro = Some(g);
                if self.hold(pkt) {
                    return;
                }
                self.gro = None;
                write(&VnetHdr::default(), std::slice::from_ref(pkt), 0);
            }
            // Not coalescable, or closed by its own PSH: as it came.
            _ => write(&VnetHdr::default(), std::slice::from_ref(pkt), 0),
        }
    }

    /// Writes the held run, if any, through `write` (see [`push`](Self::push)).
    pub fn flush<W>(&mut self, write: &mut W)
    where
        W: FnMut(&VnetHdr, &[PacketBuf], usize),
    {
        let n = std::mem::take(&mut self.len);
        let Some(g) = self.gro.take() else { return };
        let Some(run) = self.held.get_mut(..n) else {
            return;
        };
        let Some(first) = run.first_mut() else { return };
        let hdr = g.finish(first.data_mut());
        write(&hdr, run, g.hdr_len());
    }

    /// Moves `pkt` into the next spare buffer; false if there is none.
    fn hold(&mut self, pkt: &mut PacketBuf) -> bool {
        let Some(slot) = self.held.get_mut(self.len) else {
            return false;
        };
        std::mem::swap(slot, pkt);
        self.len += 1;
        self.fresh = true;
        true
    }
}

impl std::fmt::Debug for TunRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Held segments are cleartext user traffic: show only the state.
        f.debug_struct("TunRun")
            .field("pending", &self.len)
            .field("fresh", &self.fresh)
            .finish()
    }
}

/// The fields of a TCP/IPv4 segment that coalescing looks at.
struct TcpSeg {
    ihl: usize,
    hdr: usize,
    payload: usize,
    seq: u32,
    id: u16,
    df: bool,
    flags: u8,
}

impl TcpSeg {
    /// A TCP segment in an unfragmented IPv4 packet without IP options whose total
    /// length is the packet's length and whose header checksum verifies. The checksum
    /// matters because coalescing replaces every header but the first and recomputes
    /// that one: a segment whose header the kernel would have refused (RFC 1122
    /// §3.2.1.2; `inet_gro_receive` does not merge it either) must go out alone, to be
    /// refused, not be laundered into a valid super-packet.
    fn parse(p: &[u8]) -> Option<TcpSeg> {
        let ihl = ipv4_header(p, p.len()).ok()?;
        let frag = u16::from_be_bytes([p[6], p[7]]);
        // RFC 791 §3.1: MF is 0x2000, the offset the low 13 bits.
        if ihl != 20 || p[9] != PROTO_TCP || frag & 0x3fff != 0 {
            return None;
        }
        if fold(sum(&p[..ihl], 0)) != 0xffff {
            return None;
        }
        let doff = usize::from(*p.get(ihl + 12)? >> 4) * 4;
        let hdr = ihl + doff;
        if doff < 20 || hdr > p.len() {
            return None;
        }
        Some(TcpSeg {
            ihl,
            hdr,
            payload: p.len() - hdr,
            seq: u32::from_be_bytes([p[ihl + 4], p[ihl + 5], p[ihl + 6], p[ihl + 7]]),
            id: u16::from_be_bytes([p[4], p[5]]),
            df: frag & 0x4000 != 0,
            flags: p[ihl + 13],
        })
    }
}

/// Checks the IPv4 header at the start of `p`, a packet of `len` bytes, and returns its
/// length: version 4, IHL ≥ 5, total length equal to `len` (RFC 791 §3.1).
fn ipv4_header(p: &[u8], len: usize) -> Result<usize, OffloadError> {
    let b0 = *p.first().ok_or(OffloadError::Malformed("empty packet"))?;
    if b0 >> 4 != 4 {
        return Err(OffloadError::Unsupported("not IPv4"));
    }
    let ihl = usize::from(b0 & 0x0f) * 4;
    if ihl < 20 || p.len() < ihl {
        return Err(OffloadError::Malformed("bad IPv4 header length"));
    }
    if usize::from(u16::from_be_bytes([p[2], p[3]])) != len {
        return Err(OffloadError::Malformed(
            "IPv4 total length differs from packet",
        ));
    }
    Ok(ihl)
}

/// Sets the IPv4 total length to `len` and recomputes the header checksum. `p` holds at
/// least a checked IPv4 header.
fn set_ipv4_len_and_csum(p: &mut [u8], len: usize) {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[10..12].fill(0);
    let c = !fold(sum(&p[..ihl], 0));
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Sum of the IPv4 pseudo-header (RFC 9293 §3.1; RFC 768) of packet `p` for an L4 length.
fn pseudo_sum(p: &[u8], l4_len: usize) -> u64 {
    sum(&p[12..20], u64::from(p[9]) + l4_len as u64)
}

/// True if the TCP checksum of the IPv4 packet `p` (header length `ihl`) verifies.
fn tcp_csum_ok(p: &[u8], ihl: usize) -> bool {
    fold(sum(&p[ihl..], pseudo_sum(p, p.len() - ihl))) == 0xffff
}

/// RFC 1071 one's-complement sum of `data` as big-endian 16-bit words, added to `init`
/// (unfolded; [`fold`] it).
///
/// RFC 1071 §2(B): the sum is independent of byte order up to a final swap, so the bytes
/// are added as native-endian words and the result swapped once. Every TCP segment is
/// summed once on each gateway (finished when a TSO super-packet is split, verified
/// before segments are coalesced): with the portable loop that was 6–7% of a data-plane
/// worker's samples (profile of 2026-11-23 08:46 UTC, issue 8); with AVX2 a 1,348-byte
/// segment takes about half the time.
pub fn sum(data: &[u8], init: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return finish_sum(unsafe { avx2::native_sum(data) }, init);
    }
    finish_sum(native_sum(data), init)
}

/// Folds a native-endian word sum to 16 bits at 16-bit multiples (the end-around carries
/// stay in the sum), swaps it to big-endian and adds `init`.
fn finish_sum(mut acc: u128, init: u64) -> u64 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    let native = acc as u16;
    let be = if cfg!(target_endian = "little") {
        native.swap_bytes()
    } else {
        native
    };
    u64::from(be) + init
}

/// The portable sum of `data` as native-endian words, unfolded: 32-bit words into four
/// 64-bit lanes (no carries to track, and a loop the compiler vectorises), the tail as
/// 16-bit words, an odd last byte padded with zero (RFC 1071 §4.1).
fn native_sum(data: &[u8]) -> u128 {
    let mut lanes = [0u64; 4];
    let mut chunks = data.chunks_exact(16);
    for c in &mut chunks {
        for (k, lane) in lanes.iter_mut().enumerate() {
            let w = [c[4 * k], c[4 * k + 1], c[4 * k + 2], c[4 * k + 3]];
            *lane += u64::from(u32::from_ne_bytes(w));
        }
    }
    let mut rest = chunks.remainder();
    let mut acc = lanes.iter().map(|&l| u128::from(l)).sum::<u128>();
    while let [a, b, r @ ..] = rest {
        acc += u128::from(u16::from_ne_bytes([*a, *b]));
        rest = r;
    }
    if let [a] = rest {
        acc += u128::from(u16::from_ne_bytes([*a, 0]));
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_add_epi32, _mm256_add_epi64, _mm256_and_si256, _mm256_castsi256_si128,
        _mm256_cvtepu32_epi64, _mm256_extracti128_si256, _mm256_loadu_si256, _mm256_set1_epi32,
        _mm256_setzero_si256, _mm256_srli_epi32, _mm256_storeu_si256,
    };

    /// 64-byte blocks summed into the 32-bit lanes before they are widened: each block
    /// adds at most 2 × 0xffff to a lane, so 4,096 blocks stay below 2^29.
    const BLOCKS_PER_ROUND: usize = 4096;

    /// [`native_sum`](super::native_sum) with AVX2: each 32-bit lane of a 32-byte load
    /// holds two 16-bit words, added as `w & 0xffff` and `w >> 16` into 32-bit lanes
    /// (shifts and masks, no shuffles), widened to 64 bits every
    /// [`BLOCKS_PER_ROUND`] blocks. The tail (under 64 bytes, starting at an even offset)
    /// goes through the portable loop.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn native_sum(data: &[u8]) -> u128 {
        let mask = _mm256_set1_epi32(0xffff);
        let mut wide = _mm256_setzero_si256();
        let mut blocks = data.chunks_exact(64);
        loop {
            let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            let mut n = 0;
            for b in blocks.by_ref().take(BLOCKS_PER_ROUND) {
                // SAFETY: `b` is 64 bytes; unaligned loads of 32 bytes at 0 and 32.
                let (v0, v1) = unsafe {
                    (
                        _mm256_loadu_si256(b.as_ptr().cast()),
                        _mm256_loadu_si256(b.as_ptr().add(32).cast()),
                    )
                };
                lo = _mm256_add_epi32(lo, _mm256_and_si256(v0, mask));
                hi = _mm256_add_epi32(hi, _mm256_srli_epi32(v0, 16));
                lo = _mm256_add_epi32(lo, _mm256_and_si256(v1, mask));
                hi = _mm256_add_epi32(hi, _mm256_srli_epi32(v1, 16));
                n += 1;
            }
            wide = _mm256_add_epi64(wide, _mm256_add_epi64(widen(lo), widen(hi)));
            if n < BLOCKS_PER_ROUND {
                break;
            }
        }
        let mut lanes = [0u64; 4];
        // SAFETY: `lanes` is 32 bytes; unaligned store.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), wide) };
        lanes.iter().map(|&l| u128::from(l)).sum::<u128>() + super::native_sum(blocks.remainder())
    }

    /// The sum of each pair of 32-bit lanes as four 64-bit lanes.
    #[target_feature(enable = "avx2")]
    fn widen(v: __m256i) -> __m256i {
        _mm256_add_epi64(
            _mm256_cvtepu32_epi64(_mm256_castsi256_si128(v)),
            _mm256_cvtepu32_epi64(_mm256_extracti128_si256::<1>(v)),
        )
    }
}

/// Folds a sum from [`sum`] to 16 bits (not complemented).
pub fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 §4.1's reference: 16-bit words one at a time.
    fn ref_csum(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from(c[0]) << 8
            };
            s += u32::from(w);
            while s >> 16 != 0 {
                s = (s & 0xffff) + (s >> 16);
            }
        }
        !(s as u16)
    }

    fn ref_l4_csum(p: &[u8]) -> u16 {
        let ihl = usize::from(p[0] & 0xf) * 4;
        let mut ph = Vec::new();
        ph.extend_from_slice(&p[12..20]);
        ph.extend_from_slice(&[0, p[9]]);
        ph.extend_from_slice(&((p.len() - ihl) as u16).to_be_bytes());
        ph.extend_from_slice(&p[ihl..]);
        ref_csum(&ph)
    }

    /// Checks every checksum of `p` against the reference computation.
    fn assert_valid(p: &[u8]) {
        let ihl = usize::from(p[0] & 0xf) * 4;
        assert_eq!(ref_csum(&p[..ihl]), 0, "IPv4 header checksum");
        assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
        assert_eq!(ref_l4_csum(p), 0, "L4 checksum");
    }

    /// A TCP/IPv4 packet with `opts` TCP options and `payload` bytes, checksums valid.
    fn tcp(id: u16, seq: u32, flags: u8, opts: &[u8], payload: &[u8]) -> Vec<u8> {
        let doff = 20 + opts.len();
        let total = 20 + doff + payload.len();
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0, 10, 2, 0, 1, 172, 16, 1, 10,
        ];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&[0x14, 0x51, 0xc3, 0x50]);
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&7u32.to_be_bytes());
        p.push(((doff / 4) as u8) << 4);
        p.push(flags);
        p.extend_from_slice(&[0x01, 0xf6, 0, 0, 0, 0]);
        p.extend_from_slice(opts);
        p.extend_from_slice(payload);
        let c = ref_csum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let c = ref_l4_csum(&p);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        assert_valid(&p);
        p
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// What the kernel hands over for TSO: one header, all the payload, and the TCP
    /// checksum field holding only the pseudo-header sum.
    fn tso(opts: &[u8], data: &[u8], flags: u8) -> Vec<u8> {
        let mut p = tcp(100, 1000, flags, opts, &[]);
        let total = p.len() + data.len();
        p.extend_from_slice(data);
        set_ipv4_len_and_csum(&mut p, total);
        let partial = fold(pseudo_sum(&p, total - 20));
        p[36..38].copy_from_slice(&partial.to_be_bytes());
        p
    }

    fn split_all(h: &VnetHdr, p: &[u8]) -> Vec<Vec<u8>> {
        let s = Split::plan(h, p).unwrap();
        (0..s.count())
            .map(|i| {
                let mut out = vec![0; 2048];
                let n = s.segment(p, i, &mut out).unwrap();
                out.truncate(n);
                out
            })
            .collect()
    }

    fn tso_hdr(mss: u16) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: mss,
            csum_start: 20,
            csum_offset: 16,
        }
    }

    #[test]
    fn sum_matches_reference_at_every_length_and_alignment() {
        let d = payload(300);
        for start in 0..9 {
            for len in 0..(300 - start) {
                let s = &d[start..start + len];
                assert_eq!(!fold(sum(s, 0)), ref_csum(s), "start {start} len {len}");
            }
        }
        let ones = vec![0xff; 70_000];
        assert_eq!(!fold(sum(&ones, 0)), ref_csum(&ones));
    }

    /// The AVX2 sum against the portable one: every length and alignment around its
    /// 64-byte blocks, and all-ones inputs long enough to pass the point where its
    /// 32-bit lanes are widened (4,096 blocks) more than once.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_sum_equals_portable_sum() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        // SAFETY: AVX2 checked above.
        let simd = |d: &[u8]| finish_sum(unsafe { avx2::native_sum(d) }, 0);
        let d = payload(1500);
        for start in 0..5 {
            for len in (0..400).chain(1300..1500 - start) {
                let s = &d[start..start + len];
                assert_eq!(
                    fold(simd(s)),
                    fold(finish_sum(native_sum(s), 0)),
                    "start {start} len {len}"
                );
            }
        }
        for len in [64 * 4096, 64 * 4096 + 1, 3 * 64 * 4096 + 65, 65_535] {
            let ones = vec![0xff; len];
            assert_eq!(!fold(simd(&ones)), ref_csum(&ones), "len {len}");
        }
    }

    #[test]
    fn vnet_hdr_round_trips() {
        let h = tso_hdr(1448);
        assert_eq!(VnetHdr::parse(&h.encode()), Some(h));
        assert_eq!(VnetHdr::parse(&[0; 9]), None);
    }

    #[test]
    fn tso_split_gives_valid_segments_with_short_last_and_options() {
        // Timestamps option (RFC 7323 §3): 12 bytes with padding.
        let opts = [1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 5];
        let data = payload(1448 * 3 + 100);
        let p = tso(&opts, &data, TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR);
        let segs = split_all(&tso_hdr(1448), &p);
        assert_eq!(segs.len(), 4);
        let mut got = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert_valid(s);
            let seq = u32::from_be_bytes(s[24..28].try_into().unwrap());
            assert_eq!(seq, 1000 + (i * 1448) as u32);
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 100 + i as u16);
            assert_eq!(&s[40..52], &opts);
            let flags = s[33];
            let last = i == 3;
            assert_eq!(flags & (TCP_PSH | TCP_FIN) != 0, last, "segment {i}");
            assert_eq!(flags & TCP_CWR != 0, i == 0, "segment {i}");
            assert_eq!(s.len(), if last { 52 + 100 } else { 52 + 1448 });
            got.extend_from_slice(&s[52..]);
        }
        assert_eq!(got, data);
    }

    /// What the worker does when a super-packet was read straight into batch slots:
    /// plan from the first bytes, then finish each slot (headers + its payload) in place.
    #[test]
    fn segments_finished_in_place_equal_copied_ones() {
        let opts = [1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 5];
        let data = payload(1448 * 3 + 100);
        let p = tso(&opts, &data, TCP_ACK | TCP_PSH | TCP_CWR);
        let h = tso_hdr(1448);
        let s = Split::plan_head(&h, &p[..200], p.len()).unwrap();
        assert_eq!(s, Split::plan(&h, &p).unwrap());
        assert_eq!((s.hdr_len(), s.mss(), s.count()), (52, 1448, 4));
        for i in 0..s.count() {
            let mut slot = p[..52].to_vec();
            slot.extend_from_slice(&p[52 + i * 1448..(52 + (i + 1) * 1448).min(p.len())]);
            let n = s.finish_segment(i, &mut slot).unwrap();
            let mut copied = vec![0; 2048];
            let m = s.segment(&p, i, &mut copied).unwrap();
            assert_eq!(&slot[..n], &copied[..m], "segment {i}");
            assert_valid(&slot[..n]);
        }
        assert_eq!(s.finish_segment(4, &mut [0; 2048]), None, "out of range");
        assert_eq!(s.finish_segment(0, &mut [0; 100]), None, "slot too short");
        // The first bytes must hold the headers.
        assert!(Split::plan_head(&h, &p[..40], p.len()).is_err());
        assert!(
            Split::plan_head(&h, &p[..200], p.len() - 1).is_err(),
            "length"
        );
    }

    #[test]
    fn exact_multiple_and_single_segment() {
        let data = payload(1000 * 2);
        let segs = split_all(&tso_hdr(1000), &tso(&[], &data, TCP_ACK));
        assert_eq!(segs.len(), 2);
        segs.iter().for_each(|s| assert_valid(s));
        let segs = split_all(&tso_hdr(1448), &tso(&[], &payload(10), TCP_ACK));
        assert_eq!(segs.len(), 1);
        assert_valid(&segs[0]);
    }

    #[test]
    fn uso_split_fixes_udp_length_and_checksum() {
        let data = payload(1200 * 2 + 5);
        let mut p = vec![
            0x45, 0, 0, 0, 0, 9, 0, 0, 64, PROTO_UDP, 0, 0, 10, 2, 0, 1, 172, 16, 1, 10, 0x13,
            0x88, 0x13, 0x89, 0, 0, 0, 0,
        ];
        p.extend_from_slice(&data);
        let total = p.len();
        set_ipv4_len_and_csum(&mut p, total);
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: 28,
            gso_size: 1200,
            csum_start: 20,
            csum_offset: 6,
        };
        let segs = split_all(&h, &p);
        assert_eq!(segs.len(), 3);
        for (i, s) in segs.iter().enumerate() {
            assert_valid(s);
            assert_eq!(
                usize::from(u16::from_be_bytes([s[24], s[25]])),
                s.len() - 20
            );
            assert_eq!(&s[28..], &data[i * 1200..(i * 1200 + 1200).min(data.len())]);
        }
    }

    #[test]
    fn partial_checksum_of_a_plain_packet_is_finished() {
        let mut p = tcp(1, 5, TCP_ACK, &[], &payload(333));
        let partial = fold(pseudo_sum(&p, p.len() - 20));
        p[36..38].copy_from_slice(&partial.to_be_bytes());
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let segs = split_all(&h, &p);
        assert_eq!(segs.len(), 1);
        assert_valid(&segs[0]);
        // Without the flag the packet passes unchanged (also non-TCP, non-IP).
        let other = b"\x60not ipv4 at all".to_vec();
        assert_eq!(split_all(&VnetHdr::default(), &other), vec![other.clone()]);
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        let p = tso(&[], &payload(3000), TCP_ACK);
        let bad = [
            VnetHdr {
                gso_size: 0,
                ..tso_hdr(0)
            },
            VnetHdr {
                gso_type: 4, // TCPv6: not negotiated
                ..tso_hdr(1448)
            },
            VnetHdr {
                gso_type: 3, // UFO
                ..tso_hdr(1448)
            },
            VnetHdr {
                flags: F_NEEDS_CSUM,
                csum_start: 5000,
                csum_offset: 16,
                ..VnetHdr::default()
            },
            VnetHdr {
                gso_type: GSO_UDP_L4,
                ..tso_hdr(1448)
            },
        ];
        for h in bad {
            assert!(Split::plan(&h, &p).is_err(), "{h:?}");
        }
        for cut in [0, 1, 19, 20, 30, 51, 100] {
            assert!(Split::plan(&tso_hdr(1448), &p[..cut]).is_err(), "cut {cut}");
        }
        let mut wrong_len = p.clone();
        wrong_len[2] ^= 1;
        assert!(Split::plan(&tso_hdr(1448), &wrong_len).is_err());
        let mut v6 = p.clone();
        v6[0] = 0x60;
        assert!(Split::plan(&tso_hdr(1448), &v6).is_err());
        // Out-of-range segment and a short output buffer.
        let s = Split::plan(&tso_hdr(1448), &p).unwrap();
        assert_eq!(s.segment(&p, 3, &mut [0; 2048]), None);
        assert_eq!(s.segment(&p, 0, &mut [0; 100]), None);
    }

    /// Coalesces `pkts` like the worker does and returns (vnet header, super-packet)
    /// per write.
    fn coalesce(pkts: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < pkts.len() {
            let mut first = pkts[i].clone();
            let mut j = i + 1;
            if let Some(mut g) = Gro::start(&first) {
                while j < pkts.len() && g.append(&first, &pkts[j]) {
                    j += 1;
                }
                let h = g.finish(&mut first);
                for p in &pkts[i + 1..j] {
                    first.extend_from_slice(&p[g.hdr_len()..]);
                }
                out.push((h, first));
            } else {
                out.push((VnetHdr::default(), first));
            }
            i = j;
        }
        out
    }

    #[test]
    fn coalesced_super_packet_splits_back_into_the_same_segments() {
        let opts = [1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 5];
        let mut pkts = Vec::new();
        let mut seq = 77_000u32;
        for i in 0..5u16 {
            let len = if i == 4 { 500 } else { 1400 };
            let flags = if i == 4 { TCP_ACK | TCP_PSH } else { TCP_ACK };
            pkts.push(tcp(20 + i, seq, flags, &opts, &payload(len)));
            seq += len as u32;
        }
        let writes = coalesce(&pkts);
        assert_eq!(writes.len(), 1);
        let (h, sp) = &writes[0];
        assert_eq!(h.gso_type, GSO_TCPV4);
        assert_eq!(h.gso_size, 1400);
        assert_eq!(usize::from(h.hdr_len), 52);
        assert_eq!(usize::from(u16::from_be_bytes([sp[2], sp[3]])), sp.len());
        assert_eq!(ref_csum(&sp[..20]), 0);
        // What the kernel's segmentation would produce equals what was sent.
        let back = split_all(h, sp);
        assert_eq!(back, pkts);
    }

    #[test]
    fn gro_keeps_apart_what_must_not_merge() {
        let a = |id, seq, flags, n| tcp(id, seq, flags, &[], &payload(n));
        // A gap in the sequence, a SYN, a pure ACK, a bad TCP checksum and a bad IP
        // header checksum (the ID changed: not covered by the TCP checksum) each start
        // anew.
        let mut bad_csum = a(4, 3800, TCP_ACK, 1000);
        bad_csum[60] ^= 0xff;
        let mut bad_ip_csum = a(8, 12_000, TCP_ACK, 1000);
        bad_ip_csum[5] ^= 1;
        let pkts = vec![
            a(1, 1000, TCP_ACK, 1000),
            a(2, 2000, TCP_ACK, 1000),
            a(3, 3500, TCP_ACK, 1000),
            bad_csum,
            a(5, 0, TCP_SYN, 0),
            a(6, 9000, TCP_ACK, 0),
            a(7, 11_000, TCP_ACK, 1000),
            bad_ip_csum,
        ];
        let writes = coalesce(&pkts);
        let counts: Vec<u8> = writes.iter().map(|(h, _)| h.gso_type).collect();
        assert_eq!(
            counts,
            vec![
                GSO_TCPV4, GSO_NONE, GSO_NONE, GSO_NONE, GSO_NONE, GSO_NONE, GSO_NONE
            ]
        );
        assert_eq!(
            writes[6].1, pkts[7],
            "written as received, for the kernel to refuse"
        );
        assert_eq!(writes[0].1.len(), 40 + 2000);
        // Unmerged packets are written exactly as received.
        assert_eq!(writes[1].1, pkts[2]);
        assert_eq!(writes[2].1, pkts[3]);
        // A larger segment after a shorter one, different ports, CWR later, non-TCP.
        let mut other_port = a(2, 1500, TCP_ACK, 500);
        other_port[21] ^= 1;
        let c = ref_l4_csum(&{
            let mut q = other_port.clone();
            q[36..38].fill(0);
            q
        });
        other_port[36..38].copy_from_slice(&c.to_be_bytes());
        let udp = {
            let mut q = a(9, 0, TCP_ACK, 100);
            q[9] = PROTO_UDP;
            q
        };
        let pkts = vec![
            a(1, 1000, TCP_ACK, 500),
            a(2, 1500, TCP_ACK, 400),
            a(3, 1900, TCP_ACK, 500),
            other_port,
            a(4, 2400, TCP_ACK | TCP_CWR, 500),
            udp,
        ];
        let writes = coalesce(&pkts);
        assert_eq!(writes.len(), 5);
        assert_eq!(writes[0].1.len(), 40 + 900);
        assert!(writes[1..].iter().all(|(h, _)| h.gso_type == GSO_NONE));
    }

    #[test]
    fn gro_stops_at_the_ip_length_limit_and_segment_count() {
        let mut pkts = Vec::new();
        for i in 0..80u32 {
            pkts.push(tcp(i as u16, i * 1400, TCP_ACK, &[], &payload(1400)));
        }
        let writes = coalesce(&pkts);
        assert!(writes.iter().all(|(_, p)| p.len() <= 65535));
        let total: usize = writes.iter().map(|(h, p)| split_all(h, p).len()).sum();
        assert_eq!(total, 80);
        assert_eq!(writes[0].0.gso_type, GSO_TCPV4);
        assert_eq!(split_all(&writes[0].0, &writes[0].1), pkts[..46].to_vec());
    }

    fn pbuf(bytes: &[u8]) -> PacketBuf {
        let layout = BufLayout::default();
        let mut p = PacketBuf::new(layout);
        p.fill(layout.headroom, bytes).unwrap();
        p
    }

    /// Feeds `calls` (each a batch of packets for the TUN device) through one
    /// [`TunRun`], the run flushed after the calls listed in `idle` (the worker found no
    /// more input); returns per write the call during which it happened and the
    /// packets it carries after the kernel's segmentation.
    fn run_calls(calls: &[Vec<Vec<u8>>], idle: &[usize]) -> Vec<(usize, Vec<Vec<u8>>)> {
        let mut run = TunRun::new(BufLayout::default());
        let mut writes = Vec::new();
        for (c, call) in calls.iter().enumerate() {
            let mut write = |h: &VnetHdr, segs: &[PacketBuf], skip: usize| {
                let mut sp = segs[0].data().to_vec();
                for s in &segs[1..] {
                    sp.extend_from_slice(&s.data()[skip..]);
                }
                writes.push((c, split_all(h, &sp)));
            };
            // Batch slots, reused by the next call as the worker's are.
            let mut slots: Vec<PacketBuf> = call.iter().map(|p| pbuf(p)).collect();
            for slot in &mut slots {
                run.push(slot, &mut write);
            }
            if idle.contains(&c) {
                run.flush(&mut write);
                assert_eq!(run.pending(), 0);
            }
        }
        writes
    }

    fn seg(id: u16, seq: u32, flags: u8, n: usize) -> Vec<u8> {
        tcp(id, seq, flags, &[], &payload(n))
    }

    #[test]
    fn tun_run_extends_across_calls_until_idle() {
        let pkts: Vec<Vec<u8>> = (0..6u32)
            .map(|i| seg(i as u16, 1000 + i * 1000, TCP_ACK, 1000))
            .collect();
        // Three batches of two: nothing is written until the worker goes idle.
        let calls = vec![
            pkts[0..2].to_vec(),
            pkts[2..4].to_vec(),
            pkts[4..6].to_vec(),
        ];
        let writes = run_calls(&calls, &[2]);
        assert_eq!(writes, vec![(2, pkts.clone())]);
        // Idle after the first batch: that part goes out then, the rest at the end.
        let writes = run_calls(&calls, &[0, 2]);
        assert_eq!(
            writes,
            vec![(0, pkts[0..2].to_vec()), (2, pkts[2..6].to_vec())]
        );
    }

    #[test]
    fn tun_run_flushes_before_a_packet_that_does_not_extend_it() {
        let a = |id, seq| seg(id, seq, TCP_ACK, 1000);
        let mut other_flow = a(9, 50_000);
        other_flow[21] ^= 1;
        let c = ref_l4_csum(&{
            let mut q = other_flow.clone();
            q[36..38].fill(0);
            q
        });
        other_flow[36..38].copy_from_slice(&c.to_be_bytes());
        let pure_ack = seg(10, 9000, TCP_ACK, 0);
        let udp = {
            let mut q = a(11, 0);
            q[9] = PROTO_UDP;
            q
        };
        let calls = vec![
            vec![a(1, 1000), a(2, 2000)],
            // A gap in the sequence: the held run goes first, then a new one starts
            // (and is held in turn).
            vec![a(3, 3500), a(4, 4500)],
            // Another flow, a pure ACK and a non-TCP packet each end what is held and
            // leave in arrival order; nothing overtakes the held run.
            vec![other_flow.clone(), pure_ack.clone(), udp.clone()],
        ];
        let writes = run_calls(&calls, &[2]);
        assert_eq!(
            writes,
            vec![
                (1, vec![a(1, 1000), a(2, 2000)]),
                (2, vec![a(3, 3500), a(4, 4500)]),
                (2, vec![other_flow]),
                (2, vec![pure_ack]),
                (2, vec![udp]),
            ]
        );
    }

    #[test]
    fn tun_run_writes_at_once_when_full_or_closed_by_psh_or_a_short_segment() {
        // 1400-byte segments: 46 fill 64 KiB (40 + 46 * 1400 = 64,440; one more would
        // pass 65,535), so the 46th goes out in the call it arrived in.
        let pkts: Vec<Vec<u8>> = (0..50u32)
            .map(|i| seg(i as u16, i * 1400, TCP_ACK, 1400))
            .collect();
        let calls: Vec<Vec<Vec<u8>>> = pkts.chunks(10).map(<[_]>::to_vec).collect();
        let writes = run_calls(&calls, &[4]);
        assert_eq!(
            writes,
            vec![(4, pkts[..46].to_vec()), (4, pkts[46..].to_vec())]
        );
        let writes = run_calls(&calls[..1], &[]);
        assert!(writes.is_empty(), "ten segments are still held");

        // PSH (tcp_gro_receive flushes on it) and a shorter segment close the run: out
        // in the same call, without waiting for the next packet.
        let psh = vec![
            seg(1, 0, TCP_ACK, 1000),
            seg(2, 1000, TCP_ACK | TCP_PSH, 1000),
        ];
        assert_eq!(run_calls(std::slice::from_ref(&psh), &[]), vec![(0, psh)]);
        let short = vec![seg(1, 0, TCP_ACK, 1000), seg(2, 1000, TCP_ACK, 10)];
        assert_eq!(
            run_calls(std::slice::from_ref(&short), &[]),
            vec![(0, short)]
        );
        // A lone PSH segment is not held either.
        let lone = vec![seg(1, 0, TCP_ACK | TCP_PSH, 1000)];
        assert_eq!(run_calls(std::slice::from_ref(&lone), &[]), vec![(0, lone)]);
    }

    #[test]
    fn tun_run_swaps_buffers_and_reports_fresh_joins() {
        let mut run = TunRun::new(BufLayout::default());
        let writes = std::cell::Cell::new(0);
        let mut write = |_: &VnetHdr, _: &[PacketBuf], _: usize| writes.set(writes.get() + 1);
        assert!(!run.take_fresh());
        run.flush(&mut write);
        let first = seg(1, 0, TCP_ACK, 1000);
        let mut slot = pbuf(&first);
        run.push(&mut slot, &mut write);
        // The slot got a spare buffer: the segment itself is held.
        assert_ne!(slot.data(), &first[..]);
        assert_eq!(run.pending(), 1);
        assert!(run.take_fresh());
        assert!(!run.take_fresh(), "no join since");
        let mut slot = pbuf(&seg(2, 1000, TCP_ACK, 1000));
        run.push(&mut slot, &mut write);
        assert!(run.take_fresh());
        run.flush(&mut write);
        run.flush(&mut write);
        assert_eq!((run.pending(), writes.get()), (0, 1));
        // Garbage is written as it came (the kernel judges it), never held.
        let mut slot = pbuf(&[0x45, 0, 0]);
        run.push(&mut slot, &mut write);
        assert_eq!((run.pending(), writes.get()), (0, 2));
        assert!(format!("{run:?}").contains("pending"));
    }

    /// Whether both checksums of `p` verify (the reference computation), without
    /// panicking on packets that are not IPv4/TCP at all.
    fn checksums_verify(p: &[u8]) -> bool {
        let ihl = usize::from(p.first().map_or(0, |b| b & 0xf)) * 4;
        ihl >= 20 && p.len() >= ihl + 20 && ref_csum(&p[..ihl]) == 0 && ref_l4_csum(p) == 0
    }

    /// `p` without its IP ID and header checksum: the kernel's segmentation numbers a
    /// super-packet's segments from the first one's ID, and with DF set coalescing does
    /// not require consecutive IDs (RFC 6864 §4.1: the ID of an atomic datagram carries
    /// no meaning).
    fn without_id(p: &[u8]) -> Vec<u8> {
        let mut q = p.to_vec();
        q[4..6].fill(0);
        q[10..12].fill(0);
        q
    }

    /// The packets for the TUN device come from hosts behind the peer's gateway and are
    /// whatever those hosts send. Streams of segments mutated at random — bits flipped
    /// and bytes replaced anywhere, cut short (to nothing, too), flags, sizes, gaps and
    /// repeats — go through a `TunRun` in batches of random size, flushed at random.
    /// Nothing panics; every packet leaves exactly once and in order; one written alone
    /// is written exactly as received; and a coalesced write holds only segments whose
    /// checksums verified, since the kernel trusts a super-packet's checksum
    /// (`NEEDS_CSUM` recomputes it, which would launder a corrupted segment), and splits
    /// back into those same segments.
    #[test]
    fn hostile_streams_leave_whole_in_order_and_never_coalesce_a_bad_segment() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n.max(1)
        };
        let opts = [1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 5];
        let (mut coalesced, mut alone) = (0usize, 0usize);
        for _ in 0..400 {
            let mut pkts = Vec::new();
            let mut seq = rnd(u64::from(u32::MAX)) as u32;
            for i in 0..1 + rnd(150) {
                let len = match rnd(8) {
                    0 => 0,
                    1 => rnd(1400) as usize,
                    _ => 1348,
                };
                let flags = match rnd(24) {
                    0 => TCP_ACK | TCP_PSH,
                    1 => TCP_ACK | TCP_CWR,
                    2 => TCP_SYN,
                    3 => TCP_ACK | TCP_FIN,
                    4 => TCP_ACK | TCP_URG,
                    _ => TCP_ACK,
                };
                let o: &[u8] = if rnd(5) == 0 { &[] } else { &opts };
                let mut p = tcp(i as u16, seq, flags, o, &payload(len));
                // Mostly the next segment; sometimes a repeat, sometimes a gap.
                match rnd(10) {
                    0 => {}
                    1 => seq = seq.wrapping_add(len as u32 + 1),
                    _ => seq = seq.wrapping_add(len as u32),
                }
                match rnd(12) {
                    0 => {
                        let k = rnd(p.len() as u64) as usize;
                        p[k] ^= 1 << rnd(8);
                    }
                    1 => p.truncate(rnd(p.len() as u64 + 1) as usize),
                    2 => {
                        let k = rnd(60.min(p.len() as u64)) as usize;
                        p[k] = rnd(256) as u8;
                    }
                    _ => {}
                }
                pkts.push(p);
            }
            let mut run = TunRun::new(BufLayout::default());
            let mut next = 0usize;
            let mut write = |h: &VnetHdr, segs: &[PacketBuf], skip: usize| {
                let ins = &pkts[next..next + segs.len()];
                next += segs.len();
                if segs.len() == 1 {
                    assert_eq!(*h, VnetHdr::default());
                    assert_eq!(segs[0].data(), &ins[0][..], "a packet alone is as it came");
                    alone += 1;
                    return;
                }
                coalesced += 1;
                for p in ins {
                    assert!(checksums_verify(p), "a bad segment joined: {p:02x?}");
                }
                let mut sp = segs[0].data().to_vec();
                for s in &segs[1..] {
                    sp.extend_from_slice(&s.data()[skip..]);
                }
                assert!(sp.len() <= usize::from(u16::MAX));
                let back: Vec<Vec<u8>> = split_all(h, &sp).iter().map(|p| without_id(p)).collect();
                let sent: Vec<Vec<u8>> = ins.iter().map(|p| without_id(p)).collect();
                assert_eq!(back, sent, "the kernel's segmentation gives back what came");
            };
            let mut i = 0;
            while i < pkts.len() {
                let n = (1 + rnd(64) as usize).min(pkts.len() - i);
                let mut slots: Vec<PacketBuf> = pkts[i..i + n].iter().map(|p| pbuf(p)).collect();
                for slot in &mut slots {
                    run.push(slot, &mut write);
                }
                if rnd(3) == 0 {
                    run.flush(&mut write);
                }
                i += n;
            }
            run.flush(&mut write);
            assert_eq!(next, pkts.len(), "every packet left exactly once");
        }
        // The streams exercise both outcomes.
        assert!(coalesced > 100 && alone > 1000, "{coalesced} {alone}");
    }
}
