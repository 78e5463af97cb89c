//! Packet buffers with headroom and tailroom, and batches of them.
//!
//! Every buffer is allocated once, when a worker starts, and reused for every packet the
//! worker ever handles: receive calls write into the *data area* (after the headroom), the
//! handler grows or shrinks the packet in place inside the headroom/tailroom, and the send
//! calls read straight out of the same memory.
//!
//! ```text
//! 0            head                     head+len                 capacity
//! | headroom…  | packet data            | tailroom…              |
//! ```
//!
//! At receive time `head == layout.headroom` and the data can be at most `layout.data`
//! bytes, so at least `layout.tailroom` bytes are free after it.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Sizes of one packet buffer. See the crate docs for what ESP needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufLayout {
    /// Bytes reserved in front of a received packet (room for headers pushed in place).
    pub headroom: usize,
    /// Largest packet a receive call may write (the MTU of the link plus any headers).
    pub data: usize,
    /// Bytes reserved after the largest received packet (ESP trailer + ICV).
    pub tailroom: usize,
}

impl BufLayout {
    /// Total size of one buffer.
    pub const fn capacity(&self) -> usize {
        self.headroom + self.data + self.tailroom
    }
}

impl Default for BufLayout {
    /// 64 bytes of headroom (ESP header 8 + IV ≤ 16 + ESP-in-UDP/IP headers 28, rounded
    /// up), 2048 bytes of data (any MTU ≤ 2048) and 64 bytes of tailroom (padding ≤ 15 +
    /// pad length + next header 2 + ICV ≤ 32, rounded up).
    fn default() -> Self {
        Self {
            headroom: 64,
            data: 2048,
            tailroom: 64,
        }
    }
}

/// Returned when a packet cannot grow: not enough headroom or tailroom left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet buffer has no room: wanted {wanted} bytes, {available} available")]
pub struct NoRoom {
    /// Bytes asked for.
    pub wanted: usize,
    /// Bytes there were.
    pub available: usize,
}

/// One packet in a preallocated buffer; the handler edits it in place.
///
/// After any method returns, `head + len <= capacity` holds, so no accessor panics.
pub struct PacketBuf {
    buf: Box<[u8]>,
    head: usize,
    len: usize,
}

impl PacketBuf {
    /// A zeroed buffer of `layout.capacity()` bytes, empty, with the head at the headroom.
    pub fn new(layout: BufLayout) -> Self {
        Self {
            buf: vec![0; layout.capacity()].into_boxed_slice(),
            head: layout.headroom,
            len: 0,
        }
    }

    /// The packet bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.head..self.head + self.len]
    }

    /// The packet bytes, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.head..self.head + self.len]
    }

    /// Packet length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the packet has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Free bytes in front of the packet.
    pub fn headroom(&self) -> usize {
        self.head
    }

    /// Free bytes after the packet.
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.head - self.len
    }

    /// Offset of the packet's first byte in [`buffer`](Self::buffer).
    pub fn head(&self) -> usize {
        self.head
    }

    /// The whole buffer, headroom and tailroom included (for codecs that work on
    /// `(buffer, offset, len)` triples).
    pub fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// The whole buffer, writable. Use [`set_range`](Self::set_range) afterwards to say
    /// where the packet now is.
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Makes `buffer()[head..head + len]` the packet.
    pub fn set_range(&mut self, head: usize, len: usize) -> Result<(), NoRoom> {
        let end = head.checked_add(len).ok_or(NoRoom {
            wanted: usize::MAX,
            available: self.buf.len(),
        })?;
        if end > self.buf.len() {
            return Err(NoRoom {
                wanted: end,
                available: self.buf.len(),
            });
        }
        self.head = head;
        self.len = len;
        Ok(())
    }

    /// Grows the packet by `n` bytes at the front and returns them (to write a header).
    pub fn push_front(&mut self, n: usize) -> Result<&mut [u8], NoRoom> {
        if n > self.head {
            return Err(NoRoom {
                wanted: n,
                available: self.head,
            });
        }
        self.head -= n;
        self.len += n;
        Ok(&mut self.buf[self.head..self.head + n])
    }

    /// Removes `n` bytes from the front (to strip a header).
    pub fn pull_front(&mut self, n: usize) -> Result<(), NoRoom> {
        if n > self.len {
            return Err(NoRoom {
                wanted: n,
                available: self.len,
            });
        }
        self.head += n;
        self.len -= n;
        Ok(())
    }

    /// Grows the packet by `n` bytes at the back and returns them (to write a trailer).
    pub fn push_back(&mut self, n: usize) -> Result<&mut [u8], NoRoom> {
        let room = self.tailroom();
        if n > room {
            return Err(NoRoom {
                wanted: n,
                available: room,
            });
        }
        let start = self.head + self.len;
        self.len += n;
        Ok(&mut self.buf[start..start + n])
    }

    /// Shortens the packet to `len` bytes (no effect if it is not longer).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Replaces the packet with a copy of `bytes`, at the default head position `head`.
    pub fn fill(&mut self, head: usize, bytes: &[u8]) -> Result<(), NoRoom> {
        self.set_range(head, bytes.len())?;
        self.data_mut().copy_from_slice(bytes);
        Ok(())
    }

    /// Raw pointer and length of the receive area starting at `head` with `max` bytes,
    /// for the IO layer.
    pub(crate) fn rx_area(&mut self, head: usize, max: usize) -> (*mut u8, usize) {
        let head = head.min(self.buf.len());
        let max = max.min(self.buf.len() - head);
        self.head = head;
        self.len = 0;
        // SAFETY: head <= buf.len(), so the offset stays inside (or one past) the buffer.
        (unsafe { self.buf.as_mut_ptr().add(head) }, max)
    }

    /// The receive area starting at `head` with at most `max` bytes, for filling by copy
    /// (follow with [`set_rx_len`](Self::set_rx_len)).
    pub(crate) fn rx_slice(&mut self, head: usize, max: usize) -> &mut [u8] {
        let head = head.min(self.buf.len());
        let max = max.min(self.buf.len() - head);
        self.head = head;
        self.len = 0;
        &mut self.buf[head..head + max]
    }

    /// Sets the length after a receive call wrote `len` bytes at the head.
    pub(crate) fn set_rx_len(&mut self, len: usize) {
        self.len = len.min(self.buf.len() - self.head);
    }
}

impl std::fmt::Debug for PacketBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Packet contents may be cleartext user traffic: show only the geometry.
        f.debug_struct("PacketBuf")
            .field("head", &self.head)
            .field("len", &self.len)
            .field("capacity", &self.buf.len())
            .finish()
    }
}

/// Addresses of a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Our address the datagram was sent to (from the bound address, or `IP_PKTINFO` /
    /// the IP header when the socket is bound to a wildcard).
    pub local: SocketAddrV4,
    /// The sender.
    pub remote: SocketAddrV4,
}

impl Default for RecvMeta {
    fn default() -> Self {
        let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        Self {
            local: any,
            remote: any,
        }
    }
}

/// A fixed number of [`PacketBuf`]s filled by one batched receive.
#[derive(Debug)]
pub struct BatchBuf {
    layout: BufLayout,
    pkts: Box<[PacketBuf]>,
    meta: Box<[RecvMeta]>,
    len: usize,
}

impl BatchBuf {
    /// `slots` buffers of `layout`, allocated now and never again.
    pub fn new(slots: usize, layout: BufLayout) -> Self {
        Self {
            layout,
            pkts: (0..slots).map(|_| PacketBuf::new(layout)).collect(),
            meta: vec![RecvMeta::default(); slots].into_boxed_slice(),
            len: 0,
        }
    }

    /// The buffer layout.
    pub fn layout(&self) -> BufLayout {
        self.layout
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.pkts.len()
    }

    /// Number of packets received (or pushed) since the last [`clear`](Self::clear).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no packet is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets all packets (the memory stays).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The packets held.
    pub fn packets(&self) -> &[PacketBuf] {
        &self.pkts[..self.len]
    }

    /// The packets held, writable.
    pub fn packets_mut(&mut self) -> &mut [PacketBuf] {
        &mut self.pkts[..self.len]
    }

    /// Addresses of the packets held (same indices as [`packets`](Self::packets)).
    pub fn meta(&self) -> &[RecvMeta] {
        &self.meta[..self.len]
    }

    /// Packet `i` and its addresses.
    pub fn get_mut(&mut self, i: usize) -> Option<(&mut PacketBuf, RecvMeta)> {
        if i >= self.len {
            return None;
        }
        Some((&mut self.pkts[i], self.meta[i]))
    }

    /// Appends a copy of `bytes` as the next packet (for building batches to send, in
    /// tests and tools; the data plane itself works in place).
    pub fn push(&mut self, bytes: &[u8], meta: RecvMeta) -> Result<(), NoRoom> {
        let cap = self.pkts.len();
        let Some(pkt) = self.pkts.get_mut(self.len) else {
            return Err(NoRoom {
                wanted: cap + 1,
                available: cap,
            });
        };
        if bytes.len() > self.layout.data {
            return Err(NoRoom {
                wanted: bytes.len(),
                available: self.layout.data,
            });
        }
        pkt.fill(self.layout.headroom, bytes)?;
        self.meta[self.len] = meta;
        self.len += 1;
        Ok(())
    }

    /// All slots with their metadata, for the receive calls.
    pub(crate) fn slots_mut(&mut self) -> (&mut [PacketBuf], &mut [RecvMeta]) {
        (&mut self.pkts, &mut self.meta)
    }

    /// Sets the number of packets held after a receive call.
    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len.min(self.pkts.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> BufLayout {
        BufLayout {
            headroom: 8,
            data: 16,
            tailroom: 4,
        }
    }

    #[test]
    fn push_and_pull_stay_in_bounds() {
        let mut p = PacketBuf::new(small());
        p.fill(8, b"hello").unwrap();
        assert_eq!(p.headroom(), 8);
        assert_eq!(p.tailroom(), 28 - 13);
        p.push_front(3).unwrap().copy_from_slice(b"abc");
        assert_eq!(p.data(), b"abchello");
        assert_eq!(
            p.push_front(6),
            Err(NoRoom {
                wanted: 6,
                available: 5
            })
        );
        p.pull_front(3).unwrap();
        assert_eq!(p.data(), b"hello");
        assert!(p.pull_front(6).is_err());
        p.push_back(2).unwrap().copy_from_slice(b"!!");
        assert_eq!(p.data(), b"hello!!");
        assert!(p.push_back(100).is_err());
        p.truncate(4);
        assert_eq!(p.data(), b"hell");
        assert!(p.set_range(20, 9).is_err());
        assert!(p.set_range(usize::MAX, 2).is_err());
        p.set_range(0, 28).unwrap();
        assert_eq!(p.len(), 28);
        assert_eq!(p.tailroom(), 0);
    }

    #[test]
    fn batch_push_respects_slots_and_data_size() {
        let mut b = BatchBuf::new(2, small());
        b.push(b"one", RecvMeta::default()).unwrap();
        assert!(b.push(&[0; 17], RecvMeta::default()).is_err());
        b.push(b"two", RecvMeta::default()).unwrap();
        assert!(b.push(b"three", RecvMeta::default()).is_err());
        assert_eq!(b.len(), 2);
        assert_eq!(b.packets()[1].data(), b"two");
        b.clear();
        assert!(b.is_empty());
        assert!(b.get_mut(0).is_none());
    }

    #[test]
    fn debug_does_not_show_contents() {
        let mut p = PacketBuf::new(small());
        p.fill(8, b"secret").unwrap();
        let s = format!("{p:?}");
        assert!(!s.contains("secret") && !s.contains("115"), "{s}");
    }
}
