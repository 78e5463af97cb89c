//! UDP and raw-ESP sockets with batched `recvmmsg`/`sendmmsg` over preallocated buffers.
//!
//! One [`BatchSocket`] per worker and local address: UDP sockets share their port with
//! `SO_REUSEPORT`, so the kernel spreads peers over the workers by 4-tuple hash (one peer
//! stays on one worker, which keeps ESP sequence numbers in order). Raw IP-protocol-50
//! sockets cannot share that way — every raw socket gets a copy of every packet — so each
//! worker's ESP socket carries a classic BPF filter that accepts only the SPIs with
//! `spi % workers == worker` (RFC 4303 §2.1: the SPI is the first word after the IP
//! header), which again keeps one SA on one worker.
//!
//! A socket bound to a wildcard address turns on `IP_PKTINFO` to learn, per datagram,
//! which local address it was sent to, and to choose the source address per datagram on
//! send.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::buf::{BatchBuf, RecvMeta};

/// Which kind of socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockKind {
    /// UDP (IKE on 500, IKE and ESP-in-UDP on 4500).
    Udp,
    /// Raw IP protocol 50 (ESP, RFC 4303), IPv4.
    Esp,
}

/// Options for opening a [`BatchSocket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// `SO_REUSEPORT` (UDP): let every worker bind the same address.
    pub reuse_port: bool,
    /// For ESP: this socket takes the SPIs with `spi % count == index`.
    pub esp_share: Option<(u32, u32)>,
    /// `SO_RCVBUF` in bytes, if set (capped by `net.core.rmem_max`).
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` in bytes, if set (capped by `net.core.wmem_max`).
    pub send_buffer: Option<usize>,
    /// UDP: coalesce equal-size datagrams to one peer with `UDP_SEGMENT` when the kernel
    /// supports it.
    pub gso: bool,
    /// UDP: let the kernel hand over runs of datagrams as one coalesced message
    /// (`UDP_GRO`); such a socket must be read with [`BatchSocket::recv_gro`]. Off by
    /// default here; [`crate::Config::new`] turns it on for the workers.
    pub gro: bool,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            reuse_port: true,
            esp_share: None,
            recv_buffer: Some(4 << 20),
            send_buffer: Some(4 << 20),
            gso: true,
            gro: false,
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// Payload (for ESP: the ESP header onwards; the kernel adds the IP header).
    pub data: &'a [u8],
    /// Destination (port ignored for ESP).
    pub remote: SocketAddrV4,
    /// Source address; only used when the socket is bound to the wildcard address.
    pub local: Ipv4Addr,
}

/// What a batched receive got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// Datagrams the kernel returned (good or not).
    pub datagrams: usize,
    /// Good packets now in the batch.
    pub packets: usize,
    /// Datagrams larger than a buffer slot, dropped.
    pub truncated: usize,
    /// Datagrams that could not be parsed (raw ESP with a bad IP header), dropped.
    pub malformed: usize,
    /// With `UDP_GRO`: messages that carried more than one datagram.
    pub coalesced: usize,
    /// With `UDP_GRO`: packets copied into their slot from a spill buffer (the others
    /// were received in place).
    pub copied: usize,
    /// The socket may have more to read now: the call filled its batch, or (with
    /// `UDP_GRO`) segments of a coalesced message are still waiting for a batch slot.
    pub more: bool,
}

/// What a batched send did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOutcome {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Messages those datagrams travelled in (fewer than `sent` with GSO).
    pub messages: usize,
    /// Payload bytes of the datagrams accepted.
    pub bytes: usize,
    /// Datagrams refused (skipped; the rest of the batch was still sent).
    pub failed: usize,
    /// `sendmmsg` calls made.
    pub calls: usize,
    /// Messages that carried more than one datagram (UDP GSO).
    pub coalesced: usize,
    /// The kernel refused UDP GSO on this socket during this call: it is off from now on.
    pub gso_disabled: bool,
    /// The last error seen, if any.
    pub last_error: Option<io::ErrorKind>,
}

/// Per-call arrays for `recvmmsg`/`sendmmsg`, allocated once.
pub struct MsgScratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in>,
    ctrl: Vec<Cmsg>,
    groups: Vec<Group>,
}

/// One message being built for `sendmmsg`: `count` datagrams in `iovs[iov..iov + count]`.
#[derive(Clone, Copy)]
struct Group {
    remote: SocketAddrV4,
    local: Ipv4Addr,
    /// Segment size (the first datagram's length).
    seg: usize,
    count: usize,
    bytes: usize,
    /// A shorter datagram ended the run.
    closed: bool,
    iov: usize,
}

// SAFETY: the raw pointers inside the libc structs are only written and read within one
// `recv_batch`/`send_batch` call, which borrows the scratch mutably; between calls they
// dangle harmlessly and are never dereferenced.
unsafe impl Send for MsgScratch {}

/// Room for an `IP_PKTINFO` control message (and one more small one), aligned for
/// `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Cmsg([u8; 64]);

impl MsgScratch {
    /// Room for batches of `n` datagrams.
    pub fn new(n: usize) -> Self {
        // SAFETY: these libc structs are plain data for which all-zero is valid.
        unsafe {
            Self {
                hdrs: vec![zeroed(); n],
                iovs: vec![zeroed(); n],
                names: vec![zeroed(); n],
                ctrl: vec![Cmsg([0; 64]); n],
                groups: vec![
                    Group {
                        remote: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                        local: Ipv4Addr::UNSPECIFIED,
                        seg: 0,
                        count: 0,
                        bytes: 0,
                        closed: true,
                        iov: 0,
                    };
                    n
                ],
            }
        }
    }

    /// Batch size.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }
}

impl std::fmt::Debug for MsgScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgScratch")
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// Receive state for [`BatchSocket::recv_gro`]: per message read, a 64 KiB spill buffer
/// for what does not land in batch slots, plus the segments not yet handed out and the
/// segment size the next read expects. Allocated once per worker.
pub struct GroScratch {
    bufs: Box<[u8]>,
    hdrs: Vec<libc::mmsghdr>,
    /// Per message: its batch slots' iovecs, then its spill buffer's. Sized on the first
    /// read for the batch's capacity and never again.
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in>,
    ctrl: Vec<Cmsg>,
    /// Per message of the last read: the batch slots `[start, end)` it was given.
    slots: Vec<(usize, usize)>,
    msgs: Vec<GroMsg>,
    /// Messages waiting in spill buffers, the one being split, and the offset in it.
    count: usize,
    next: usize,
    offset: usize,
    /// The segment size of the last coalesced message (0: none yet). Reads give every
    /// batch slot exactly this many bytes, so a message coalesced from segments of this
    /// size lands one segment per slot, with no copy.
    seg_guess: usize,
}

/// A received (possibly coalesced) message, or its tail, waiting in a spill buffer of
/// [`GroScratch`].
#[derive(Clone, Copy, Default)]
struct GroMsg {
    /// Index of its spill buffer (the bytes start at the buffer's beginning).
    buf: usize,
    len: usize,
    /// Segment size (the whole length when not coalesced); never 0.
    seg: usize,
    meta: RecvMeta,
}

// SAFETY: as for MsgScratch: the raw pointers are only used within one recv_gro call.
unsafe impl Send for GroScratch {}

impl GroScratch {
    /// Room for `messages` coalesced messages per read.
    pub fn new(messages: usize) -> Self {
        let k = messages.max(1);
        // SAFETY: these libc structs are plain data for which all-zero is valid.
        unsafe {
            Self {
                bufs: vec![0; k * GRO_BUF_LEN].into_boxed_slice(),
                hdrs: vec![zeroed(); k],
                iovs: Vec::new(),
                names: vec![zeroed(); k],
                ctrl: vec![Cmsg([0; 64]); k],
                slots: vec![(0, 0); k],
                msgs: vec![GroMsg::default(); k],
                count: 0,
                next: 0,
                offset: 0,
                seg_guess: 0,
            }
        }
    }

    /// Bytes per batch slot for the next read (of at most `data`), and the slots one
    /// whole coalesced message of that segment size needs.
    fn slot_geometry(&self, data: usize) -> (usize, usize) {
        let g = match self.seg_guess {
            0 => data,
            x => x.min(data),
        }
        .max(1);
        (g, GRO_MAX_SEGMENTS.min(GRO_BUF_LEN.div_ceil(g)))
    }

    /// Whether segments of the last read are still waiting.
    pub fn pending(&self) -> bool {
        self.next < self.count
    }

    /// The next segment and its addresses, advancing the cursor.
    fn next_segment(&mut self) -> Option<(&[u8], RecvMeta)> {
        if !self.pending() {
            return None;
        }
        let m = *self.msgs.get(self.next)?;
        let start = self.offset;
        let end = start.saturating_add(m.seg).min(m.len);
        if end >= m.len {
            self.next += 1;
            self.offset = 0;
        } else {
            self.offset = end;
        }
        let base = m.buf * GRO_BUF_LEN;
        Some((self.bufs.get(base + start..base + end)?, m.meta))
    }

    /// Copies waiting segments into the batch's slots from `n` on; returns the new count.
    fn hand_out(&mut self, batch: &mut BatchBuf, mut n: usize, out: &mut Received) -> usize {
        let layout = batch.layout();
        let (pkts, metas) = batch.slots_mut();
        while let Some(pkt) = pkts.get_mut(n) {
            let Some((bytes, meta)) = self.next_segment() else {
                break;
            };
            let dst = pkt.rx_slice(layout.headroom, layout.data);
            let Some(d) = dst.get_mut(..bytes.len()) else {
                out.truncated += 1;
                continue;
            };
            d.copy_from_slice(bytes);
            pkt.set_rx_len(bytes.len());
            out.copied += 1;
            if let Some(m) = metas.get_mut(n) {
                *m = meta;
            }
            n += 1;
        }
        n
    }

    /// Queues a spill buffer's first `len` bytes as segments of `seg` bytes.
    fn queue(&mut self, buf: usize, len: usize, seg: usize, meta: RecvMeta) {
        if let Some(m) = self.msgs.get_mut(self.count) {
            *m = GroMsg {
                buf,
                len,
                seg,
                meta,
            };
            self.count += 1;
        }
    }
}

impl std::fmt::Debug for GroScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroScratch")
            .field("messages", &self.msgs.len())
            .field("pending", &self.pending())
            .finish()
    }
}

/// A UDP or raw-ESP socket bound to one local address, with batched IO.
#[derive(Debug)]
pub struct BatchSocket {
    fd: OwnedFd,
    local: SocketAddrV4,
    kind: SockKind,
    /// UDP GSO in use; cleared if the kernel refuses it at send time.
    gso: AtomicBool,
    /// `UDP_GRO` is on: read with [`BatchSocket::recv_gro`].
    gro: bool,
}

impl BatchSocket {
    /// A UDP socket bound to `local` (a wildcard IP turns on `IP_PKTINFO`).
    pub fn udp(local: SocketAddrV4, opts: &SocketOptions) -> io::Result<Self> {
        let fd = socket(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
        if opts.reuse_port {
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1 as libc::c_int)?;
        }
        Self::finish(fd, local, SockKind::Udp, opts)
    }

    /// A raw IPv4 socket for IP protocol 50 bound to `local` (the source address of what
    /// it sends; with a specific address it only receives ESP sent to that address).
    pub fn esp(local: Ipv4Addr, opts: &SocketOptions) -> io::Result<Self> {
        let fd = socket(libc::SOCK_RAW, libc::IPPROTO_ESP)?;
        if let Some((index, count)) = opts.esp_share.filter(|&(_, c)| c > 1) {
            attach_spi_filter(&fd, index, count)?;
        }
        Self::finish(fd, SocketAddrV4::new(local, 0), SockKind::Esp, opts)
    }

    fn finish(
        fd: OwnedFd,
        local: SocketAddrV4,
        kind: SockKind,
        opts: &SocketOptions,
    ) -> io::Result<Self> {
        if local.ip().is_unspecified() {
            setsockopt(&fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1 as libc::c_int)?;
        }
        // Buffer sizes are best effort: the kernel caps them silently, and refusing to
        // start for a smaller buffer would help nobody.
        if let Some(n) = opts.recv_buffer {
            let _ = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, n as libc::c_int);
        }
        if let Some(n) = opts.send_buffer {
            let _ = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, n as libc::c_int);
        }
        let sa = sockaddr(local);
        // SAFETY: sa is a valid sockaddr_in.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("bind {kind:?} {local}: {e}"),
            ));
        }
        let local = if kind == SockKind::Udp && local.port() == 0 {
            local_addr(&fd)?
        } else {
            local
        };
        // Setting the socket's default segment size to 0 (none) probes for UDP_SEGMENT
        // without changing how plain sends behave.
        let gso = kind == SockKind::Udp
            && opts.gso
            && setsockopt(&fd, libc::IPPROTO_UDP, UDP_SEGMENT, 0 as libc::c_int).is_ok();
        // Best effort too: without it (Linux < 5.0) the kernel delivers datagrams one by
        // one and the plain receive path is used.
        let gro = kind == SockKind::Udp
            && opts.gro
            && setsockopt(&fd, libc::IPPROTO_UDP, UDP_GRO, 1 as libc::c_int).is_ok();
        Ok(Self {
            fd,
            local,
            kind,
            gso: AtomicBool::new(gso),
            gro,
        })
    }

    /// The bound address (port 0 for ESP).
    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }

    /// UDP or ESP.
    pub fn kind(&self) -> SockKind {
        self.kind
    }

    /// The file descriptor (for polling).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// True if this socket sends and receives for `local` (exact, or wildcard + port).
    pub fn serves(&self, local: SocketAddrV4) -> bool {
        self.local.port() == local.port()
            && (self.local.ip() == local.ip() || self.local.ip().is_unspecified())
    }

    /// Receives up to `min(batch.capacity(), scratch.capacity())` datagrams with one
    /// `recvmmsg` call without blocking; the batch then holds the good ones. For ESP the
    /// IP header is stripped (the packet starts at the SPI) and the addresses come from it.
    pub fn recv_batch(
        &self,
        batch: &mut BatchBuf,
        scratch: &mut MsgScratch,
    ) -> io::Result<Received> {
        let layout = batch.layout();
        let n = batch.capacity().min(scratch.capacity());
        let (pkts, metas) = batch.slots_mut();
        let MsgScratch {
            hdrs,
            iovs,
            names,
            ctrl,
            ..
        } = scratch;
        for i in 0..n {
            let (ptr, len) = pkts[i].rx_area(layout.headroom, layout.data);
            iovs[i] = libc::iovec {
                iov_base: ptr.cast(),
                iov_len: len,
            };
            recv_hdr(&mut hdrs[i], &mut names[i], &mut iovs[i], 1, &mut ctrl[i]);
        }
        // SAFETY: hdrs[..n] point at live iovecs, names and control buffers, and the
        // iovecs at the slots' receive areas, all borrowed mutably for this call.
        let rc = match unsafe { recvmmsg(&self.fd, &mut hdrs[..n]) } {
            Ok(rc) => rc,
            Err(e) => {
                batch.set_len(0);
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(Received::default()),
                    _ => Err(e),
                };
            }
        };
        let mut out = Received {
            datagrams: rc,
            more: rc == n,
            ..Received::default()
        };
        let mut kept = 0;
        for i in 0..rc {
            let h = &hdrs[i];
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                out.truncated += 1;
                continue;
            }
            pkts[i].set_rx_len(h.msg_len as usize);
            let meta = match self.kind {
                SockKind::Udp => self.recv_meta(&h.msg_hdr, &names[i]),
                SockKind::Esp => match strip_ipv4_header(&mut pkts[i]) {
                    Some(m) => m,
                    None => {
                        out.malformed += 1;
                        continue;
                    }
                },
            };
            // Keep good packets at the front; swapping boxes moves no packet bytes.
            pkts.swap(kept, i);
            metas[kept] = meta;
            kept += 1;
        }
        out.packets = kept;
        batch.set_len(kept);
        Ok(out)
    }

    /// The addresses of a datagram received on this UDP socket: ours from the bound
    /// address or, on a wildcard socket, from `IP_PKTINFO`.
    fn recv_meta(&self, h: &libc::msghdr, name: &libc::sockaddr_in) -> RecvMeta {
        let ip = if self.local.ip().is_unspecified() {
            // SAFETY: the kernel filled msg_control/msg_controllen.
            unsafe { pktinfo_dst(h) }.unwrap_or(Ipv4Addr::UNSPECIFIED)
        } else {
            *self.local.ip()
        };
        RecvMeta {
            local: SocketAddrV4::new(ip, self.local.port()),
            remote: from_sockaddr(name),
        }
    }

    /// Whether `UDP_GRO` is on (read with [`recv_gro`](Self::recv_gro)).
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Receives without blocking from a socket with `UDP_GRO`: a coalesced message is split
    /// into the batch's slots by the segment size the kernel reports (`UDP_GRO` control
    /// message; the last segment may be shorter). Segments that do not fit the batch stay
    /// in `scratch` for the next call, which hands them out before reading again; call it
    /// while [`Received::more`] is set so none are left behind. Works on sockets without
    /// `UDP_GRO` too (every message is one datagram).
    ///
    /// No copy in the common case: each message is read straight into free batch slots,
    /// every slot taking as many bytes as the last coalesced message's segment size, and
    /// a 64 KiB spill buffer after them. When the size is still right, each slot holds
    /// one segment. What spills over, and a message whose segment size changed, go
    /// through the spill buffer and are copied into slots (in order, behind the others).
    pub fn recv_gro(&self, batch: &mut BatchBuf, scratch: &mut GroScratch) -> io::Result<Received> {
        let mut out = Received::default();
        let mut n = scratch.hand_out(batch, 0, &mut out);
        // Only read when nothing is pending, so nothing received is overwritten; read
        // again while a whole message still fits in place (the rest of a super-packet
        // the peer had to send as two GSO messages then shares this batch, and one TUN
        // write, with its first part).
        for _ in 0..GRO_READS {
            if n >= batch.capacity() || scratch.pending() {
                break;
            }
            match self.recv_gro_messages(batch, n, scratch, &mut out) {
                Ok(m) => n = scratch.hand_out(batch, m, &mut out),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Segments already in the batch are still delivered.
                Err(e) if n == 0 => {
                    batch.set_len(0);
                    return Err(e);
                }
                Err(_) => break,
            }
            let (_, per) = scratch.slot_geometry(batch.layout().data);
            if batch.capacity() - n < per {
                break;
            }
        }
        out.packets = n;
        out.more |= scratch.pending();
        batch.set_len(n);
        Ok(out)
    }

    /// One `recvmmsg` into the batch's slots from `n` on (and the spill buffers); leaves
    /// the segments that landed one per slot at `n..` (returns the new count) and queues
    /// the rest in `s`.
    fn recv_gro_messages(
        &self,
        batch: &mut BatchBuf,
        n: usize,
        s: &mut GroScratch,
        out: &mut Received,
    ) -> io::Result<usize> {
        let layout = batch.layout();
        let (pkts, metas) = batch.slots_mut();
        let cap = pkts.len();
        let free = cap.saturating_sub(n);
        let (g, per) = s.slot_geometry(layout.data);
        // As many whole messages as fit, at least one (what its slots cannot take
        // spills).
        let k = (free / per).clamp(1, s.msgs.len());
        let need = free + k;
        if s.iovs.len() < need {
            // SAFETY: iovec is plain data for which all-zero is valid.
            s.iovs.resize(need, unsafe { zeroed() });
        }
        let mut v = 0;
        for i in 0..k {
            let start = (n + i * per).min(cap);
            let end = if i + 1 == k { cap } else { start + per };
            for p in &mut pkts[start..end] {
                let (ptr, len) = p.rx_area(layout.headroom, g);
                s.iovs[v] = libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: len,
                };
                v += 1;
            }
            // SAFETY: i < k buffers of GRO_BUF_LEN bytes each.
            s.iovs[v] = libc::iovec {
                iov_base: unsafe { s.bufs.as_mut_ptr().add(i * GRO_BUF_LEN) }.cast(),
                iov_len: GRO_BUF_LEN,
            };
            v += 1;
            s.slots[i] = (start, end);
        }
        let iov = s.iovs.as_mut_ptr();
        let mut first = 0;
        for i in 0..k {
            let (start, end) = s.slots[i];
            let count = end - start + 1;
            // SAFETY: first + count <= v <= iovs.len().
            let msg_iov = unsafe { iov.add(first) };
            recv_hdr(
                &mut s.hdrs[i],
                &mut s.names[i],
                msg_iov,
                count,
                &mut s.ctrl[i],
            );
            first += count;
        }
        // SAFETY: hdrs[..k] point at live iovecs (into the batch's slots, borrowed mutably
        // for this call, and `bufs`), names and control buffers.
        let rc = unsafe { recvmmsg(&self.fd, &mut s.hdrs[..k]) }?;
        out.more = rc == k;
        s.count = 0;
        s.next = 0;
        s.offset = 0;
        // While true, every message so far sat wholly in its slots: the next may stay
        // there too. After a message that needs the spill path, the rest follow it
        // there, which keeps the datagrams in order.
        let mut in_place = true;
        let mut m = n;
        for i in 0..rc {
            let h = &s.hdrs[i];
            let len = h.msg_len as usize;
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                out.truncated += 1;
                continue;
            }
            // SAFETY: the kernel filled msg_control/msg_controllen.
            let seg = unsafe { gro_segment_size(&h.msg_hdr) };
            let Some((seg, segs)) = segmentation(len, seg) else {
                out.malformed += 1;
                continue;
            };
            out.datagrams += segs;
            if segs > 1 {
                out.coalesced += 1;
                s.seg_guess = seg;
            }
            let meta = self.recv_meta(&h.msg_hdr, &s.names[i]);
            let (start, end) = s.slots[i];
            let in_slots = len.min((end - start) * g);
            let base = i * GRO_BUF_LEN;
            if in_place && (seg == g || (segs == 1 && len <= g)) {
                // Segment j is in slot start + j; move it down to m (swapping boxes
                // moves no packet bytes; later messages' slots are above start + j).
                for j in 0..in_slots.div_ceil(g) {
                    pkts.swap(m, start + j);
                    pkts[m].set_rx_len((in_slots - j * g).min(g));
                    metas[m] = meta;
                    m += 1;
                }
                if len > in_slots {
                    s.queue(i, len - in_slots, g, meta);
                    in_place = false;
                }
                continue;
            }
            in_place = false;
            // The segment size changed (or a datagram larger than the slots came): put
            // the message together in its spill buffer, then split it from there.
            if len > GRO_BUF_LEN {
                out.truncated += segs;
                continue;
            }
            let tail = len - in_slots;
            s.bufs.copy_within(base..base + tail, base + in_slots);
            for j in 0..in_slots.div_ceil(g) {
                let p = &mut pkts[start + j];
                p.set_rx_len((in_slots - j * g).min(g));
                let at = base + j * g;
                s.bufs[at..at + p.len()].copy_from_slice(p.data());
            }
            s.queue(i, len, seg, meta);
        }
        Ok(m)
    }

    /// Sends datagrams with as few `sendmmsg` calls as the scratch size allows. A datagram
    /// the kernel refuses is counted and skipped; the others are still sent.
    ///
    /// With UDP GSO (`UDP_SEGMENT`, when the socket has it), consecutive datagrams to the
    /// same peer from the same address and of the same size (the last of a run may be
    /// shorter) go down the stack as one message of up to 64 segments, gathered from the
    /// packet buffers with one iovec each: no copy, one traversal of the stack per run.
    pub fn send_batch<'a>(
        &self,
        items: impl IntoIterator<Item = Datagram<'a>>,
        scratch: &mut MsgScratch,
    ) -> SendOutcome {
        let mut out = SendOutcome::default();
        let gso = self.gso.load(Relaxed);
        let cap = scratch.capacity();
        let (mut m, mut v) = (0, 0);
        for d in items {
            let len = d.data.len();
            let join = gso
                && v < cap
                && m > 0
                && scratch.groups.get(m - 1).is_some_and(|g| {
                    !g.closed
                        && g.remote == d.remote
                        && g.local == d.local
                        && len > 0
                        && len <= g.seg
                        && g.count < GSO_MAX_SEGMENTS
                        && g.bytes + len <= GSO_MAX_BYTES
                });
            if !join && (m == cap || v == cap) {
                self.flush(scratch, m, &mut out);
                (m, v) = (0, 0);
            }
            scratch.iovs[v] = libc::iovec {
                iov_base: d.data.as_ptr() as *mut libc::c_void,
                iov_len: len,
            };
            if join {
                let g = &mut scratch.groups[m - 1];
                g.count += 1;
                g.bytes += len;
                g.closed = len < g.seg;
            } else {
                scratch.groups[m] = Group {
                    remote: d.remote,
                    local: d.local,
                    seg: len,
                    count: 1,
                    bytes: len,
                    closed: false,
                    iov: v,
                };
                m += 1;
            }
            v += 1;
        }
        if m > 0 {
            self.flush(scratch, m, &mut out);
        }
        out
    }

    /// Sends one datagram (control-plane path; also fine from another thread while a
    /// worker uses the socket).
    pub fn send_one(&self, d: Datagram<'_>) -> io::Result<()> {
        let mut scratch = MsgScratch::new(1);
        let out = self.send_batch([d], &mut scratch);
        match out.last_error {
            Some(kind) if out.sent == 0 => Err(io::Error::from(kind)),
            _ => Ok(()),
        }
    }

    /// Whether this socket coalesces datagrams with UDP GSO.
    pub fn gso(&self) -> bool {
        self.gso.load(Relaxed)
    }

    /// Builds the headers of messages `0..m` from their groups and sends them.
    fn flush(&self, s: &mut MsgScratch, m: usize, out: &mut SendOutcome) {
        let pktinfo = self.local.ip().is_unspecified();
        for i in 0..m {
            let g = s.groups[i];
            s.names[i] = sockaddr(g.remote);
            let h = &mut s.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&mut s.names[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut s.iovs[g.iov];
            h.msg_hdr.msg_iovlen = g.count as _;
            h.msg_hdr.msg_flags = 0;
            let src = (pktinfo && !g.local.is_unspecified()).then_some(g.local);
            let seg = (g.count > 1).then_some(g.seg as u16);
            if src.is_some() || seg.is_some() {
                s.ctrl[i].0 = [0; 64];
                h.msg_hdr.msg_control = s.ctrl[i].0.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = size_of::<Cmsg>() as _;
                // SAFETY: the zeroed control buffer is 64 bytes, aligned, and described by
                // the header; two small messages fit.
                h.msg_hdr.msg_controllen = unsafe { write_cmsgs(&mut h.msg_hdr, src, seg) } as _;
            } else {
                h.msg_hdr.msg_control = std::ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
            }
        }
        let mut off = 0;
        while off < m {
            // SAFETY: hdrs[off..m] point at names, iovecs and control buffers in `s` and
            // at packet bytes the caller's items borrow for the duration of send_batch.
            let rc = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    s.hdrs.as_mut_ptr().add(off),
                    (m - off) as libc::c_uint,
                    0,
                )
            };
            out.calls += 1;
            if rc > 0 {
                let done = off + rc as usize;
                for g in &s.groups[off..done] {
                    out.sent += g.count;
                    out.bytes += g.bytes;
                    if g.count > 1 {
                        out.coalesced += 1;
                    }
                }
                out.messages += rc as usize;
                off = done;
                continue;
            }
            let e = io::Error::last_os_error();
            if rc < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let g = s.groups[off];
            if g.count > 1 {
                // A coalesced run was refused: send its datagrams one by one. A device
                // without checksum offload (EIO) never takes GSO; EINVAL is GSO itself
                // refused when the same datagrams then go out one by one (not, say, a
                // segment larger than the path MTU). Either way stop trying on this
                // socket.
                let failed = out.failed;
                self.send_each(s, g, out);
                let refused = match e.raw_os_error() {
                    Some(libc::EIO) => true,
                    Some(libc::EINVAL) => out.failed == failed,
                    _ => false,
                };
                if refused && self.gso.swap(false, Relaxed) {
                    out.gso_disabled = true;
                    tracing::warn!(local = %self.local, err = %e, "UDP GSO refused; sending unsegmented");
                }
            } else {
                // The datagram was refused (e.g. no route, message too long).
                out.failed += 1;
                out.last_error = Some(e.kind());
            }
            off += 1;
        }
    }

    /// Sends a group's datagrams one `sendmsg` each (fallback path; nothing allocated).
    fn send_each(&self, s: &mut MsgScratch, g: Group, out: &mut SendOutcome) {
        let pktinfo = self.local.ip().is_unspecified();
        let src = (pktinfo && !g.local.is_unspecified()).then_some(g.local);
        let mut name = sockaddr(g.remote);
        let mut ctrl = Cmsg([0; 64]);
        for k in g.iov..g.iov + g.count {
            let Some(iov) = s.iovs.get_mut(k) else { break };
            let len = iov.iov_len;
            // SAFETY: msghdr is plain data for which all-zero is valid.
            let mut h: libc::msghdr = unsafe { zeroed() };
            h.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = iov;
            h.msg_iovlen = 1;
            if src.is_some() {
                ctrl.0 = [0; 64];
                h.msg_control = ctrl.0.as_mut_ptr().cast();
                h.msg_controllen = size_of::<Cmsg>() as _;
                // SAFETY: the zeroed control buffer is 64 bytes, aligned, and described
                // by the header.
                h.msg_controllen = unsafe { write_cmsgs(&mut h, src, None) } as _;
            }
            let rc = loop {
                // SAFETY: h points at live name, iovec (into the caller's packet) and
                // control buffer.
                let rc = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &h, 0) };
                if rc >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    break rc;
                }
            };
            out.calls += 1;
            if rc >= 0 {
                out.sent += 1;
                out.messages += 1;
                out.bytes += len;
            } else {
                out.failed += 1;
                out.last_error = Some(io::Error::last_os_error().kind());
            }
        }
    }
}

/// At most this many segments per GSO message (`UDP_MAX_SEGMENTS` in older kernels).
const GSO_MAX_SEGMENTS: usize = 64;
/// At most this many payload bytes per GSO message (one IPv4 datagram's worth).
const GSO_MAX_BYTES: usize = 65_000;
/// `UDP_SEGMENT` (linux/udp.h).
const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` (linux/udp.h): socket option and control message type.
const UDP_GRO: libc::c_int = 104;
/// One coalesced message: the largest UDP payload of an IPv4 datagram, rounded up.
const GRO_BUF_LEN: usize = 65_536;
/// At most this many datagrams in one coalesced message (`UDP_GRO_CNT_MAX`).
const GRO_MAX_SEGMENTS: usize = 64;
/// At most this many `recvmmsg` calls per [`BatchSocket::recv_gro`].
const GRO_READS: usize = 4;

/// Whether the kernel does UDP segmentation offload (`UDP_SEGMENT`, Linux ≥ 4.18).
pub fn udp_gso_supported() -> bool {
    socket(libc::SOCK_DGRAM, libc::IPPROTO_UDP)
        .and_then(|fd| setsockopt(&fd, libc::IPPROTO_UDP, UDP_SEGMENT, 1400 as libc::c_int))
        .is_ok()
}

/// Points `h` at one message's address, `iovlen` iovecs from `iov` and control buffer,
/// for `recvmmsg`.
fn recv_hdr(
    h: &mut libc::mmsghdr,
    name: &mut libc::sockaddr_in,
    iov: *mut libc::iovec,
    iovlen: usize,
    ctrl: &mut Cmsg,
) {
    h.msg_len = 0;
    h.msg_hdr.msg_name = (name as *mut libc::sockaddr_in).cast();
    h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    h.msg_hdr.msg_iov = iov;
    h.msg_hdr.msg_iovlen = iovlen as _;
    h.msg_hdr.msg_control = ctrl.0.as_mut_ptr().cast();
    h.msg_hdr.msg_controllen = size_of::<Cmsg>() as _;
    h.msg_hdr.msg_flags = 0;
}

/// `recvmmsg` without blocking, retried on EINTR; returns the messages received.
///
/// # Safety
/// Every header in `hdrs` must point at live, writable buffers it describes.
unsafe fn recvmmsg(fd: &OwnedFd, hdrs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    loop {
        // SAFETY: per the contract.
        let rc = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn socket(ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call, result checked.
    let fd = unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, val: T) -> io::Result<()> {
    // SAFETY: val is a live T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&val as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddrV4> {
    // SAFETY: sockaddr_in is plain data.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: sa and len are live and describe each other.
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut sa as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(from_sockaddr(&sa))
}

pub(crate) fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr = libc::in_addr {
        s_addr: u32::from_ne_bytes(a.ip().octets()),
    };
    sa
}

fn from_sockaddr(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(sa.sin_port),
    )
}

/// The destination address of a received datagram from its `IP_PKTINFO` message.
///
/// # Safety
/// `h` must describe a control buffer filled by the kernel.
unsafe fn pktinfo_dst(h: &libc::msghdr) -> Option<Ipv4Addr> {
    // SAFETY: per the contract, the CMSG macros walk a kernel-filled buffer.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let info = libc::CMSG_DATA(c)
                    .cast::<libc::in_pktinfo>()
                    .read_unaligned();
                return Some(Ipv4Addr::from(info.ipi_addr.s_addr.to_ne_bytes()));
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// The segment size of a coalesced datagram from its `UDP_GRO` control message (the
/// kernel sends it only when it merged more than one datagram).
///
/// # Safety
/// `h` must describe a control buffer filled by the kernel (or built with the CMSG
/// macros).
unsafe fn gro_segment_size(h: &libc::msghdr) -> Option<u16> {
    // SAFETY: per the contract, the CMSG macros walk a well-formed buffer.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP
                && (*c).cmsg_type == UDP_GRO
                && (*c).cmsg_len as usize
                    >= libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize
            {
                let v = libc::CMSG_DATA(c).cast::<libc::c_int>().read_unaligned();
                return u16::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// How a received message of `len` bytes splits: (segment size, segments). `None` for an
/// empty message (nothing a peer sends on purpose). A missing or zero segment size means
/// one datagram.
fn segmentation(len: usize, seg: Option<u16>) -> Option<(usize, usize)> {
    if len == 0 {
        return None;
    }
    let seg = seg
        .map(usize::from)
        .filter(|&s| s > 0 && s < len)
        .unwrap_or(len);
    Some((seg, len.div_ceil(seg)))
}

/// Writes an `IP_PKTINFO` message choosing the source address and/or a `UDP_SEGMENT`
/// message with the GSO segment size; returns the control length.
///
/// # Safety
/// `h.msg_control` must point at a zeroed, writable, aligned buffer of
/// `h.msg_controllen` bytes with room for both messages.
unsafe fn write_cmsgs(h: &mut libc::msghdr, src: Option<Ipv4Addr>, seg: Option<u16>) -> usize {
    let mut len = 0;
    // SAFETY: per the contract; the buffer is zeroed so CMSG_NXTHDR reads a zero length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        if let Some(src) = src {
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(src.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            libc::CMSG_DATA(c)
                .cast::<libc::in_pktinfo>()
                .write_unaligned(info);
            len += libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
            c = libc::CMSG_NXTHDR(h, c);
        }
        if let Some(seg) = seg {
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
            libc::CMSG_DATA(c).cast::<u16>().write_unaligned(seg);
            len += libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
        }
    }
    len
}

/// Raw IPv4 sockets deliver the IP header: take the addresses from it and strip it
/// (RFC 791 §3.1: IHL in 32-bit words, at least 5).
fn strip_ipv4_header(pkt: &mut crate::buf::PacketBuf) -> Option<RecvMeta> {
    let d = pkt.data();
    let first = *d.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || d.len() < ihl {
        return None;
    }
    let src = Ipv4Addr::new(d[12], d[13], d[14], d[15]);
    let dst = Ipv4Addr::new(d[16], d[17], d[18], d[19]);
    pkt.pull_front(ihl).ok()?;
    Some(RecvMeta {
        local: SocketAddrV4::new(dst, 0),
        remote: SocketAddrV4::new(src, 0),
    })
}

/// Attaches `ldxb 4*([0]&0xf); ld [x+0]; mod #count; jeq #index, accept, drop`.
fn attach_spi_filter(fd: &OwnedFd, index: u32, count: u32) -> io::Result<()> {
    // linux/bpf_common.h
    const LD: u16 = 0x00;
    const LDX: u16 = 0x01;
    const ALU: u16 = 0x04;
    const JMP: u16 = 0x05;
    const RET: u16 = 0x06;
    const W: u16 = 0x00;
    const B: u16 = 0x10;
    const IND: u16 = 0x40;
    const MSH: u16 = 0xa0;
    const MOD: u16 = 0x90;
    const JEQ: u16 = 0x10;
    const K: u16 = 0x00;
    let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let mut prog = [
        ins(LDX | B | MSH, 0, 0, 0),
        ins(LD | W | IND, 0, 0, 0),
        ins(ALU | MOD | K, 0, 0, count),
        ins(JMP | JEQ | K, 0, 1, index),
        ins(RET | K, 0, 0, u32::MAX),
        ins(RET | K, 0, 0, 0),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, fprog)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::{BufLayout, PacketBuf};

    #[test]
    fn esp_header_strip_takes_addresses_and_rejects_garbage() {
        let mut p = PacketBuf::new(BufLayout::default());
        let mut ip = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 50, 0, 0, 192, 0, 2, 1, 198, 51, 100, 1,
        ];
        ip.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 1]);
        p.fill(64, &ip).unwrap();
        let m = strip_ipv4_header(&mut p).unwrap();
        assert_eq!(m.remote, "192.0.2.1:0".parse().unwrap());
        assert_eq!(m.local, "198.51.100.1:0".parse().unwrap());
        assert_eq!(p.data(), &[0, 0, 0, 7, 0, 0, 0, 1]);
        for bad in [&[][..], &[0x45, 0, 0][..], &[0x65; 40][..], &[0x44; 40][..]] {
            p.fill(64, bad).unwrap();
            assert!(strip_ipv4_header(&mut p).is_none(), "{bad:?}");
        }
    }

    /// A control buffer as the kernel fills it: `IP_PKTINFO` then `UDP_GRO`.
    fn gro_cmsgs(seg: Option<libc::c_int>) -> (Cmsg, usize) {
        let mut ctrl = Cmsg([0; 64]);
        // SAFETY: msghdr is plain data; the buffer is 64 aligned bytes, room for both.
        let len = unsafe {
            let mut h: libc::msghdr = zeroed();
            h.msg_control = ctrl.0.as_mut_ptr().cast();
            h.msg_controllen = 64;
            let mut len = write_cmsgs(&mut h, Some(Ipv4Addr::new(192, 0, 2, 1)), None);
            if let Some(seg) = seg {
                let c = (ctrl.0.as_mut_ptr().add(len)).cast::<libc::cmsghdr>();
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = UDP_GRO;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as _;
                libc::CMSG_DATA(c)
                    .cast::<libc::c_int>()
                    .write_unaligned(seg);
                len += libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) as usize;
            }
            len
        };
        (ctrl, len)
    }

    fn parse_gro(ctrl: &mut Cmsg, len: usize) -> Option<u16> {
        // SAFETY: msghdr is plain data; the control buffer was built with the macros.
        unsafe {
            let mut h: libc::msghdr = zeroed();
            h.msg_control = ctrl.0.as_mut_ptr().cast();
            h.msg_controllen = len as _;
            gro_segment_size(&h)
        }
    }

    #[test]
    fn gro_segment_size_is_read_after_other_messages() {
        let (mut c, len) = gro_cmsgs(Some(1452));
        assert_eq!(parse_gro(&mut c, len), Some(1452));
        let (mut c, len) = gro_cmsgs(None);
        assert_eq!(parse_gro(&mut c, len), None, "not coalesced");
        let (mut c, len) = gro_cmsgs(Some(-1));
        assert_eq!(parse_gro(&mut c, len), None, "nonsense size");
        let (mut c, len) = gro_cmsgs(Some(70_000));
        assert_eq!(parse_gro(&mut c, len), None, "larger than any datagram");
        assert_eq!(parse_gro(&mut Cmsg([0; 64]), 0), None, "no control data");
        // A UDP_GRO message too short to hold its int is ignored, not read past.
        let (mut c, len) = gro_cmsgs(Some(1452));
        // SAFETY: CMSG_SPACE is arithmetic; `at` is where gro_cmsgs put the aligned
        // UDP_GRO header.
        unsafe {
            let at = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
            let h = c.0.as_mut_ptr().add(at).cast::<libc::cmsghdr>();
            (*h).cmsg_len = libc::CMSG_LEN(2) as _;
        }
        assert_eq!(parse_gro(&mut c, len), None, "truncated UDP_GRO message");
    }

    #[test]
    fn segmentation_of_coalesced_messages() {
        assert_eq!(segmentation(1452 * 44 + 100, Some(1452)), Some((1452, 45)));
        assert_eq!(segmentation(1452 * 3, Some(1452)), Some((1452, 3)));
        assert_eq!(segmentation(900, None), Some((900, 1)));
        assert_eq!(segmentation(900, Some(0)), Some((900, 1)));
        assert_eq!(segmentation(900, Some(1452)), Some((900, 1)));
        assert_eq!(segmentation(0, Some(1452)), None);
    }

    /// Segments come out in order with the message's addresses, the last one shorter,
    /// and a second message follows the first.
    #[test]
    fn gro_scratch_hands_out_segments_in_order() {
        let mut g = GroScratch::new(2);
        let a = RecvMeta {
            local: "192.0.2.1:4500".parse().unwrap(),
            remote: "198.51.100.1:4500".parse().unwrap(),
        };
        let b = RecvMeta {
            remote: "203.0.113.7:4500".parse().unwrap(),
            ..a
        };
        for (i, x) in g.bufs[..250].iter_mut().enumerate() {
            *x = i as u8;
        }
        g.bufs[GRO_BUF_LEN..GRO_BUF_LEN + 10].fill(0xee);
        g.msgs[0] = GroMsg {
            buf: 0,
            len: 250,
            seg: 100,
            meta: a,
        };
        g.msgs[1] = GroMsg {
            buf: 1,
            len: 10,
            seg: 10,
            meta: b,
        };
        g.count = 2;
        assert!(g.pending());
        let (s, m) = g.next_segment().unwrap();
        assert_eq!((s.len(), s[0], s[99], m), (100, 0, 99, a));
        let (s, _) = g.next_segment().unwrap();
        assert_eq!((s.len(), s[0]), (100, 100));
        let (s, _) = g.next_segment().unwrap();
        assert_eq!((s.len(), s[0], s[49]), (50, 200, 249));
        let (s, m) = g.next_segment().unwrap();
        assert_eq!((s, m), (&[0xee; 10][..], b));
        assert!(!g.pending());
        assert!(g.next_segment().is_none());
    }

    #[test]
    fn sockaddr_round_trip() {
        let a: SocketAddrV4 = "203.0.113.9:4500".parse().unwrap();
        assert_eq!(from_sockaddr(&sockaddr(a)), a);
    }
}
