//! A small synchronous rtnetlink client: links, IPv4 addresses, routes and policy rules.
//!
//! Hand-written on purpose: the gateway needs a dozen request shapes, all "send one
//! request, wait for its ACK", and this keeps the dependency tree and the error path
//! short. Kernel errors come back as [`NetlinkError::Kernel`] with the operation, the
//! object, the errno and the kernel's extended-ACK message when it sent one.
//!
//! Message layouts are those of `linux/rtnetlink.h`, `linux/if_addr.h`,
//! `linux/fib_rules.h` and `linux/netlink.h`.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use ipnet::Ipv4Net;

/// The main routing table (`RT_TABLE_MAIN`).
pub const TABLE_MAIN: u32 = 254;
/// Route protocol number written on routes this crate installs, so that `ip route`
/// shows (and an operator can flush) them as ours: `ip route flush proto 86`.
pub const RTPROT_VPNGW: u8 = 86;

/// An error from the netlink socket or from the kernel.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened, written or read.
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused the request.
    #[error("{op} {what}: {source}{}", msg.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        /// The operation, e.g. "add route".
        op: &'static str,
        /// The object, e.g. "10.2.0.0/24 dev 5 table 254".
        what: String,
        /// The errno.
        source: io::Error,
        /// The kernel's extended ACK message.
        msg: Option<String>,
    },
    /// No answer within the timeout.
    #[error("{op} {what}: no answer from the kernel")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The object.
        what: String,
    },
    /// An interface name that does not exist.
    #[error("no such interface: {0}")]
    NoSuchLink(String),
}

/// How an add treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddMode {
    /// Fail with `EEXIST` if it exists (`ip route add`).
    Create,
    /// Create or overwrite (`ip route replace`).
    Replace,
}

/// An IPv4 route out of a device: `dst dev <oif> [src <src>] [metric <m>] table <t>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination prefix.
    pub dst: Ipv4Net,
    /// Output interface index.
    pub oif: u32,
    /// Routing table ([`TABLE_MAIN`] by default).
    pub table: u32,
    /// Preferred source address for locally originated packets.
    pub src: Option<Ipv4Addr>,
    /// Route metric (priority).
    pub metric: Option<u32>,
    /// Next hop on the link (none for a point-to-point TUN device).
    pub gateway: Option<Ipv4Addr>,
}

impl RouteSpec {
    /// `dst dev <oif>` in the main table.
    pub fn dev(dst: Ipv4Net, oif: u32) -> Self {
        Self {
            dst: dst.trunc(),
            oif,
            table: TABLE_MAIN,
            src: None,
            metric: None,
            gateway: None,
        }
    }
}

impl std::fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} dev #{}", self.dst, self.oif)?;
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(s) = self.src {
            write!(f, " src {s}")?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        write!(f, " table {}", self.table)
    }
}

/// A policy routing rule: `ip rule [from <src>] [to <dst>] [pref <priority>] lookup <table>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSpec {
    /// Source prefix (any if `None`).
    pub src: Option<Ipv4Net>,
    /// Destination prefix (any if `None`).
    pub dst: Option<Ipv4Net>,
    /// Table to look up.
    pub table: u32,
    /// Rule preference; lower is tried first. The kernel picks one if `None`.
    pub priority: Option<u32>,
}

impl std::fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(p) = self.priority {
            write!(f, "pref {p} ")?;
        }
        if let Some(s) = self.src {
            write!(f, "from {s} ")?;
        }
        if let Some(d) = self.dst {
            write!(f, "to {d} ")?;
        }
        write!(f, "lookup {}", self.table)
    }
}

/// A NETLINK_ROUTE socket in the network namespace of the thread that opened it.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

// linux/netlink.h
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLMSGERR_ATTR_MSG: u16 = 1;
// linux/rtnetlink.h
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const RT_TABLE_COMPAT: u8 = 252;
// linux/if_addr.h
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
// linux/if_link.h
const IFLA_MTU: u16 = 4;
// linux/fib_rules.h
const FRA_DST: u16 = 1;
const FRA_SRC: u16 = 2;
const FRA_PRIORITY: u16 = 6;
const FRA_TABLE: u16 = 15;
const FR_ACT_TO_TBL: u8 = 1;

const NLMSG_HDRLEN: usize = 16;
const TIMEOUT_SECS: libc::time_t = 5;

impl Netlink {
    /// Opens a NETLINK_ROUTE socket (in the calling thread's network namespace).
    pub fn open() -> Result<Self, NetlinkError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // Ask for short ACKs carrying the kernel's explanation (extended ACK); older
        // kernels refuse the option, which only loses the message text.
        for opt in [NETLINK_CAP_ACK, NETLINK_EXT_ACK] {
            let _ = setsockopt(&fd, libc::SOL_NETLINK, opt, &one);
        }
        let tv = libc::timeval {
            tv_sec: TIMEOUT_SECS,
            tv_usec: 0,
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid "kernel assigns pid".
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sa is a valid sockaddr_nl of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(Self {
            fd,
            seq: 1,
            buf: vec![0; 64 * 1024],
        })
    }

    /// The index of interface `name`.
    pub fn link_index(name: &str) -> Result<u32, NetlinkError> {
        let c = std::ffi::CString::new(name).map_err(|_| NetlinkError::NoSuchLink(name.into()))?;
        // SAFETY: c is a valid NUL-terminated string.
        let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if idx == 0 {
            Err(NetlinkError::NoSuchLink(name.into()))
        } else {
            Ok(idx)
        }
    }

    /// Sets a link up or down and/or its MTU (`ip link set dev X up mtu N`).
    pub fn set_link(
        &mut self,
        index: u32,
        up: Option<bool>,
        mtu: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_SETLINK, 0);
        // struct ifinfomsg { family u8, pad u8, type u16, index i32, flags u32, change u32 }
        m.u8(libc::AF_UNSPEC as u8).u8(0).u16(0).u32(index);
        let flag = libc::IFF_UP as u32;
        match up {
            Some(true) => m.u32(flag).u32(flag),
            Some(false) => m.u32(0).u32(flag),
            None => m.u32(0).u32(0),
        };
        if let Some(mtu) = mtu {
            m.attr(IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.request(m, "set link", || format!("#{index} up={up:?} mtu={mtu:?}"))
    }

    /// Adds an IPv4 address to a link (`ip addr add|replace A/L dev X`).
    pub fn add_address(
        &mut self,
        index: u32,
        addr: Ipv4Net,
        mode: AddMode,
    ) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | add_flags(mode));
        Self::ifaddr(&mut m, index, addr);
        self.request(m, "add address", || format!("{addr} dev #{index}"))
    }

    /// Removes an IPv4 address from a link.
    pub fn del_address(&mut self, index: u32, addr: Ipv4Net) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_DELADDR, 0);
        Self::ifaddr(&mut m, index, addr);
        self.request(m, "delete address", || format!("{addr} dev #{index}"))
    }

    /// Adds (or replaces) a route.
    pub fn add_route(&mut self, r: &RouteSpec, mode: AddMode) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | add_flags(mode));
        Self::rtmsg(&mut m, r);
        self.request(m, "add route", || r.to_string())
    }

    /// Deletes a route (matched on destination, table, device and, if given, metric).
    pub fn del_route(&mut self, r: &RouteSpec) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_DELROUTE, 0);
        Self::rtmsg(&mut m, r);
        self.request(m, "delete route", || r.to_string())
    }

    /// Adds a policy rule (`ip rule add ...`).
    pub fn add_rule(&mut self, r: &RuleSpec) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL);
        Self::fib_rule(&mut m, r);
        self.request(m, "add rule", || r.to_string())
    }

    /// Deletes a policy rule.
    pub fn del_rule(&mut self, r: &RuleSpec) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_DELRULE, 0);
        Self::fib_rule(&mut m, r);
        self.request(m, "delete rule", || r.to_string())
    }

    fn ifaddr(m: &mut Msg, index: u32, addr: Ipv4Net) {
        // struct ifaddrmsg { family u8, prefixlen u8, flags u8, scope u8, index u32 }
        m.u8(libc::AF_INET as u8)
            .u8(addr.prefix_len())
            .u8(0)
            .u8(RT_SCOPE_UNIVERSE)
            .u32(index);
        let a = addr.addr().octets();
        m.attr(IFA_LOCAL, &a);
        m.attr(IFA_ADDRESS, &a);
    }

    fn rtmsg(m: &mut Msg, r: &RouteSpec) {
        let dst = r.dst.trunc();
        // struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type: u8; flags: u32 }
        let table8 = u8::try_from(r.table).unwrap_or(RT_TABLE_COMPAT);
        let scope = if r.gateway.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        };
        m.u8(libc::AF_INET as u8)
            .u8(dst.prefix_len())
            .u8(0)
            .u8(0)
            .u8(table8)
            .u8(RTPROT_VPNGW)
            .u8(scope)
            .u8(RTN_UNICAST)
            .u32(0);
        if dst.prefix_len() > 0 {
            m.attr(RTA_DST, &dst.network().octets());
        }
        m.attr(RTA_OIF, &r.oif.to_ne_bytes());
        m.attr(RTA_TABLE, &r.table.to_ne_bytes());
        if let Some(g) = r.gateway {
            m.attr(RTA_GATEWAY, &g.octets());
        }
        if let Some(s) = r.src {
            m.attr(RTA_PREFSRC, &s.octets());
        }
        if let Some(p) = r.metric {
            m.attr(RTA_PRIORITY, &p.to_ne_bytes());
        }
    }

    fn fib_rule(m: &mut Msg, r: &RuleSpec) {
        let src = r.src.map(|n| n.trunc());
        let dst = r.dst.map(|n| n.trunc());
        let table8 = u8::try_from(r.table).unwrap_or(0);
        // struct fib_rule_hdr { family, dst_len, src_len, tos, table, res1, res2, action: u8; flags: u32 }
        m.u8(libc::AF_INET as u8)
            .u8(dst.map_or(0, |n| n.prefix_len()))
            .u8(src.map_or(0, |n| n.prefix_len()))
            .u8(0)
            .u8(table8)
            .u8(0)
            .u8(0)
            .u8(FR_ACT_TO_TBL)
            .u32(0);
        if let Some(n) = dst.filter(|n| n.prefix_len() > 0) {
            m.attr(FRA_DST, &n.network().octets());
        }
        if let Some(n) = src.filter(|n| n.prefix_len() > 0) {
            m.attr(FRA_SRC, &n.network().octets());
        }
        if let Some(p) = r.priority {
            m.attr(FRA_PRIORITY, &p.to_ne_bytes());
        }
        m.attr(FRA_TABLE, &r.table.to_ne_bytes());
    }

    /// Sends `m` and waits for the ACK carrying its sequence number.
    fn request(
        &mut self,
        mut m: Msg,
        op: &'static str,
        what: impl Fn() -> String,
    ) -> Result<(), NetlinkError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let bytes = m.finish(seq);
        // SAFETY: bytes is a valid buffer; the kernel (pid 0) is the default destination
        // of an unconnected netlink socket only via sendto, so pass it explicitly.
        let mut dst: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        dst.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: pointers and lengths describe live buffers.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&dst as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error().into());
        }
        loop {
            // SAFETY: self.buf is a live, writable buffer of the given length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        Err(NetlinkError::Timeout { op, what: what() })
                    }
                    _ => Err(e.into()),
                };
            }
            let mut rest = self.buf.get(..n as usize).unwrap_or_default();
            while let Some(h) = Header::parse(rest) {
                let body = rest.get(NLMSG_HDRLEN..h.len).unwrap_or_default();
                if h.seq == seq && h.kind == NLMSG_ERROR {
                    return ack_result(h, body, op, &what);
                }
                rest = rest.get(align(h.len)..).unwrap_or_default();
            }
        }
    }
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

fn add_flags(mode: AddMode) -> u16 {
    match mode {
        AddMode::Create => NLM_F_EXCL,
        AddMode::Replace => NLM_F_REPLACE,
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: val points at a live T of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A received `struct nlmsghdr`.
#[derive(Debug, Clone, Copy)]
struct Header {
    len: usize,
    kind: u16,
    flags: u16,
    seq: u32,
}

impl Header {
    fn parse(b: &[u8]) -> Option<Self> {
        let len = u32::from_ne_bytes(b.get(0..4)?.try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            return None;
        }
        Some(Self {
            len,
            kind: u16::from_ne_bytes(b.get(4..6)?.try_into().ok()?),
            flags: u16::from_ne_bytes(b.get(6..8)?.try_into().ok()?),
            seq: u32::from_ne_bytes(b.get(8..12)?.try_into().ok()?),
        })
    }
}

/// Interprets an NLMSG_ERROR body: `struct nlmsgerr { int error; struct nlmsghdr msg; }`
/// followed, with extended ACK, by attributes (linux/netlink.h).
fn ack_result(
    h: Header,
    body: &[u8],
    op: &'static str,
    what: &dyn Fn() -> String,
) -> Result<(), NetlinkError> {
    let Some(code) = body
        .get(0..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
    else {
        return Err(NetlinkError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink error message",
        )));
    };
    if code == 0 {
        return Ok(());
    }
    let mut msg = None;
    if h.flags & NLM_F_ACK_TLVS != 0 {
        // The echoed request: only its header when capped, else the whole request.
        let echoed = body
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
            .unwrap_or(0) as usize;
        let skip = 4 + if h.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            align(echoed.max(NLMSG_HDRLEN))
        };
        let mut attrs = body.get(skip..).unwrap_or_default();
        while attrs.len() >= 4 {
            let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
            let atype = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
            let Some(val) = attrs.get(4..alen) else { break };
            if atype == NLMSGERR_ATTR_MSG {
                let text = val.split(|&b| b == 0).next().unwrap_or_default();
                msg = Some(String::from_utf8_lossy(text).into_owned());
            }
            attrs = attrs.get(align(alen.max(4))..).unwrap_or_default();
        }
    }
    Err(NetlinkError::Kernel {
        op,
        what: what(),
        source: io::Error::from_raw_os_error(code.saturating_neg()),
        msg,
    })
}

/// A netlink request being built: header placeholder, fixed part, attributes.
struct Msg {
    b: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16) -> Self {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // seq, set by finish
        b.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it in
        Self { b }
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.b.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.b.extend_from_slice(&v.to_ne_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.b.extend_from_slice(&v.to_ne_bytes());
        self
    }
    /// Appends a `struct rtattr` (same layout as `struct nlattr`), padded to 4 bytes.
    fn attr(&mut self, kind: u16, val: &[u8]) -> &mut Self {
        let len = (4 + val.len()) as u16;
        self.u16(len).u16(kind);
        self.b.extend_from_slice(val);
        self.b.resize(align(self.b.len()), 0);
        self
    }
    fn finish(&mut self, seq: u32) -> &[u8] {
        let len = (self.b.len() as u32).to_ne_bytes();
        self.b[0..4].copy_from_slice(&len);
        self.b[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_request_layout() {
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE);
        let r = RouteSpec {
            table: 1000,
            src: Some(Ipv4Addr::new(10, 1, 0, 1)),
            ..RouteSpec::dev("10.2.0.0/24".parse().unwrap(), 7)
        };
        Netlink::rtmsg(&mut m, &r);
        let b = m.finish(9).to_vec();
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), RTM_NEWROUTE);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 9);
        // rtmsg: family, dst_len, src_len, tos, table (compat for > 255), proto, scope, type
        assert_eq!(
            &b[16..24],
            &[2, 24, 0, 0, 252, RTPROT_VPNGW, RT_SCOPE_LINK, RTN_UNICAST]
        );
        // first attribute: RTA_DST 10.2.0.0
        assert_eq!(&b[28..36], &[8, 0, 1, 0, 10, 2, 0, 0]);
        assert_eq!(b.len() % 4, 0);
    }

    #[test]
    fn kernel_error_with_extended_ack_message() {
        let mut body = Vec::new();
        body.extend_from_slice(&(-libc::ENODEV).to_ne_bytes());
        body.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
        let text = b"Device not found\0";
        body.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        body.extend_from_slice(text);
        let h = Header {
            len: 0,
            kind: NLMSG_ERROR,
            flags: NLM_F_CAPPED | NLM_F_ACK_TLVS,
            seq: 1,
        };
        let e = ack_result(h, &body, "add route", &|| "x".into()).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("add route x: "), "{s}");
        assert!(s.ends_with("(Device not found)"), "{s}");
        assert!(
            matches!(e, NetlinkError::Kernel { ref source, .. } if source.raw_os_error() == Some(libc::ENODEV))
        );
        assert!(ack_result(h, &0i32.to_ne_bytes(), "x", &String::new).is_ok());
        assert!(ack_result(h, &[1, 2], "x", &String::new).is_err());
    }
}
