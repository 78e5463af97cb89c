//! Linux TUN devices, one queue (file descriptor) per worker.
//!
//! The device is created with `IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE`: every read returns
//! exactly one IP packet with no prefix, and the kernel spreads transmitted packets over
//! the queues by flow hash, so one flow stays on one worker. The device disappears when
//! the last queue is closed (it is not made persistent).
//!
//! # Offloads (issue 8)
//!
//! With [`TunConfig::vnet_hdr`] the device is opened with `IFF_VNET_HDR` and
//! `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN [| TUN_F_USO4])` (USO when the
//! kernel knows it, 6.2+): every read returns a `virtio_net_hdr` and up to 64 KiB of
//! TCP (or UDP) super-packet, and every write must start with such a header — which is
//! what lets the worker write ~45 coalesced TCP segments at once. The splitting and
//! coalescing live in [`offload`](crate::offload). IPv6 offloads stay off: the ESP
//! handler carries IPv4 only.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::buf::PacketBuf;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
const TUN_F_USO4: libc::c_uint = 0x20;

/// How to create the TUN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name (at most 15 bytes).
    pub name: String,
    /// MTU to set; the kernel default (1500) if `None`.
    pub mtu: Option<u32>,
    /// Addresses to put on the device (replacing equal ones).
    pub addresses: Vec<ipnet::Ipv4Net>,
    /// `IFF_VNET_HDR` with checksum and TSO4 (and USO4 if the kernel has it) offloads:
    /// the data plane then reads GSO super-packets and writes coalesced TCP segments.
    pub vnet_hdr: bool,
}

impl TunConfig {
    /// A device called `name` with the kernel's default MTU and no address.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            mtu: None,
            addresses: Vec::new(),
            vnet_hdr: false,
        }
    }
}

/// One queue of a TUN device.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
    vnet_hdr: bool,
}

impl Tun {
    /// Creates (or attaches to) device `name` and opens `queues` non-blocking queues.
    pub fn open(name: &str, queues: usize) -> io::Result<Vec<Tun>> {
        (0..queues.max(1))
            .map(|_| open_queue(name, false))
            .collect()
    }

    /// Like [`open`](Self::open), with `IFF_VNET_HDR` and offloads if `vnet_hdr`.
    pub fn open_with(name: &str, queues: usize, vnet_hdr: bool) -> io::Result<Vec<Tun>> {
        (0..queues.max(1))
            .map(|_| open_queue(name, vnet_hdr))
            .collect()
    }

    /// True if every read and write carries a `virtio_net_hdr`.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Reads one packet (with its vnet header, if any) into `buf`. `Ok(None)` when no
    /// packet is waiting.
    pub fn recv_raw(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: buf is a live, mutably borrowed slice.
        nonblocking_read(|| unsafe {
            libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
        })
    }

    /// Reads one packet (with its vnet header, if any) scattered over `iov`. `Ok(None)`
    /// when no packet is waiting.
    pub fn recv_iov(&self, iov: &[libc::iovec]) -> io::Result<Option<usize>> {
        // SAFETY: the caller's iovecs point at live, writable memory for this call.
        nonblocking_read(|| unsafe {
            libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int)
        })
    }

    /// Writes one packet gathered from `iov` (the vnet header first, if any).
    pub fn send_iov(&self, iov: &[libc::iovec]) -> io::Result<()> {
        loop {
            // SAFETY: the caller's iovecs point at live memory for this call.
            let n = unsafe {
                libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int)
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's file descriptor (for polling).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads one packet into `pkt` at offset `head`, at most `max` bytes. `Ok(false)` when
    /// no packet is waiting.
    pub fn recv(&self, pkt: &mut PacketBuf, head: usize, max: usize) -> io::Result<bool> {
        let (ptr, max) = pkt.rx_area(head, max);
        loop {
            // SAFETY: ptr..ptr+max lies inside pkt's buffer, which we borrow mutably.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), ptr.cast(), max) };
            if n >= 0 {
                pkt.set_rx_len(n as usize);
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(false),
                _ => return Err(e),
            }
        }
    }

    /// Writes one IP packet to the kernel.
    pub fn send(&self, pkt: &[u8]) -> io::Result<()> {
        loop {
            // SAFETY: pkt is a live slice.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Runs a non-blocking `read`/`readv` until it is not interrupted: `Ok(None)` when no
/// packet is waiting (EAGAIN), the byte count otherwise.
fn nonblocking_read(mut read: impl FnMut() -> isize) -> io::Result<Option<usize>> {
    loop {
        let n = read();
        if let Ok(n) = usize::try_from(n) {
            return Ok(Some(n));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Opens one queue of device `name`.
fn open_queue(name: &str, vnet_hdr: bool) -> io::Result<Tun> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    let path = CString::new("/dev/net/tun").map_err(io::Error::other)?;
    // SAFETY: path is NUL-terminated.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("open /dev/net/tun: {e}")));
    }
    // SAFETY: fd is fresh and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zero is a valid value for every field.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | if vnet_hdr { IFF_VNET_HDR } else { 0 };
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which ifr is.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut ifr) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
    }
    if vnet_hdr {
        set_offload(&fd, name)?;
    }
    Ok(Tun {
        fd,
        name: name.to_owned(),
        vnet_hdr,
    })
}

/// `TUNSETOFFLOAD`: checksum, TSO4 (with ECN) and, where the kernel has it, USO4.
fn set_offload(fd: &OwnedFd, name: &str) -> io::Result<()> {
    let base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN;
    for flags in [base | TUN_F_USO4, base] {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD as _, flags as libc::c_ulong) };
        if rc == 0 {
            return Ok(());
        }
    }
    let e = io::Error::last_os_error();
    Err(io::Error::new(
        e.kind(),
        format!("TUNSETOFFLOAD {name}: {e}"),
    ))
}
