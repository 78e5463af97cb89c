//! The packet loop: one worker thread per core, each with its own TUN queue and sockets.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::buf::{BatchBuf, BufLayout, PacketBuf};
use crate::counters::{Counters, DropReason, Snapshot};
use crate::netlink::{AddMode, Netlink, NetlinkError};
use crate::offload::{MAX_SEGMENTS, OffloadError, Split, TunRun, VNET_HDR_LEN, VnetHdr};
use crate::sock::{BatchSocket, Datagram, GroScratch, MsgScratch, SocketOptions};
use crate::tun::{Tun, TunConfig};

/// How to start a [`Dataplane`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// The TUN device (created, addressed and brought up by `start`).
    pub tun: TunConfig,
    /// UDP addresses to serve, e.g. `192.0.2.1:500` and `192.0.2.1:4500`. Port 0 picks
    /// one free port shared by all workers.
    pub udp: Vec<SocketAddrV4>,
    /// Address for raw ESP (IP protocol 50), if the gateway speaks ESP without UDP.
    pub esp: Option<Ipv4Addr>,
    /// Packets per receive batch (1..=1024).
    pub batch: usize,
    /// Buffer geometry (headroom for in-place encapsulation).
    pub layout: BufLayout,
    /// Capacity of the control channel (IKE packets waiting for the control thread).
    pub control_capacity: usize,
    /// Socket options (`esp_share` is set per worker by `start`).
    pub socket: SocketOptions,
}

impl Config {
    /// Defaults: one worker per core, batches of 256, [`BufLayout::default`], no sockets.
    ///
    /// A 64 KiB TSO super-packet from the TUN is 48 segments of an MSS of 1348, and after
    /// ESP they fill one and a half UDP GSO messages (65,507 bytes each at most). With
    /// room for five super-packets a batch lets the segments of those that are waiting
    /// share messages (measured: 1.5 messages per super-packet instead of 2, and on the
    /// receiving side 0.77 TUN writes per GRO read instead of 1; issue 8). A batch takes
    /// only what is ready, so an idle flow waits no longer than before.
    pub fn new(tun: TunConfig) -> Self {
        Self {
            workers: 0,
            tun,
            udp: Vec::new(),
            esp: None,
            batch: 256,
            layout: BufLayout::default(),
            control_capacity: 1024,
            // The workers read with `recv_gro`: coalesced ESP in UDP from a peer that
            // sends with GSO arrives as one message.
            socket: SocketOptions {
                gro: true,
                ..SocketOptions::default()
            },
        }
    }
}

/// What to do with a packet after the handler looked at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write the packet (now an IP packet) to the TUN device.
    ToTun,
    /// Send the packet as the payload of a UDP datagram from `local` to `remote`.
    ToUdp {
        /// Must be served by one of the configured UDP sockets.
        local: SocketAddrV4,
        /// Destination.
        remote: SocketAddrV4,
    },
    /// Send the packet (ESP header onwards) as IP protocol 50 from `local` to `remote`.
    ToEsp {
        /// Source address (must be the configured ESP address if that is not 0.0.0.0).
        local: Ipv4Addr,
        /// Destination.
        remote: Ipv4Addr,
    },
    /// Copy the packet to the control channel (IKE; rare).
    Control,
    /// Drop the packet and count it under the reason.
    Drop(DropReason),
}

/// Where a control packet came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The TUN device.
    Tun,
    /// A UDP socket.
    Udp {
        /// Our address.
        local: SocketAddrV4,
        /// The sender.
        remote: SocketAddrV4,
    },
    /// The raw ESP socket.
    Esp {
        /// Our address.
        local: Ipv4Addr,
        /// The sender.
        remote: Ipv4Addr,
    },
}

/// A packet a handler sent to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPacket {
    /// The worker that received it.
    pub worker: usize,
    /// Where it came from.
    pub source: Source,
    /// The packet as the handler left it (e.g. with the non-ESP marker stripped).
    pub data: Vec<u8>,
}

/// What a handler sees besides the packet.
#[derive(Debug)]
pub struct WorkerCtx<L> {
    /// This worker's index, `0..workers`.
    pub worker: usize,
    /// Taken once per batch, so handlers need not read the clock per packet.
    pub now: Instant,
    /// The handler's per-worker state (see [`Handler::Local`]).
    pub local: L,
    /// The position in the batch of the packet being handled: the index
    /// [`Handler::end_batch`] finds it at.
    pub slot: usize,
}

/// Packet processing plugged into the workers. See the crate docs for the contract.
pub trait Handler: Send + Sync + 'static {
    /// Per-worker state, made on the worker thread by [`new_local`](Self::new_local) and
    /// only ever touched by that worker (caches, scratch space, `RouteReader`s): this is
    /// where a handler keeps what it would otherwise need a lock for.
    type Local;

    /// Makes worker `worker`'s state.
    fn new_local(&self, worker: usize) -> Self::Local;

    /// Called before each batch is processed (after `ctx.now` is updated).
    fn begin_batch(&self, _ctx: &mut WorkerCtx<Self::Local>) {}

    /// Called after every packet of the batch went through `handle_*` and before any is
    /// sent or written. A handler that left work for here (ESP crypto run over many
    /// packets at once) finishes it and may change any packet's action; `pkts[i]` and
    /// `actions[i]` are the packet that had `ctx.slot == i`. No allocation or lock here
    /// either.
    fn end_batch(
        &self,
        _ctx: &mut WorkerCtx<Self::Local>,
        _pkts: &mut [PacketBuf],
        _actions: &mut [Action],
    ) {
    }

    /// A packet read from the TUN device (an IP packet; outbound traffic).
    fn handle_tun(&self, ctx: &mut WorkerCtx<Self::Local>, pkt: &mut PacketBuf) -> Action;

    /// A UDP payload that arrived at `local` from `remote` (IKE, or ESP-in-UDP).
    fn handle_udp(
        &self,
        ctx: &mut WorkerCtx<Self::Local>,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        pkt: &mut PacketBuf,
    ) -> Action;

    /// An ESP packet (SPI onwards; IP header already stripped) that arrived at `local`
    /// from `remote`. Only called when [`Config::esp`] is set.
    fn handle_esp(
        &self,
        _ctx: &mut WorkerCtx<Self::Local>,
        _local: Ipv4Addr,
        _remote: Ipv4Addr,
        _pkt: &mut PacketBuf,
    ) -> Action {
        Action::Drop(DropReason::Unsupported)
    }
}

/// Errors starting or using the data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The configuration cannot work.
    #[error("invalid data plane configuration: {0}")]
    Config(String),
    /// Creating the TUN device failed.
    #[error("TUN device {name}: {source}")]
    Tun {
        /// Device name.
        name: String,
        /// Cause.
        source: io::Error,
    },
    /// Setting up the TUN device through netlink failed.
    #[error("configuring TUN device {name}: {source}")]
    Netlink {
        /// Device name.
        name: String,
        /// Cause.
        source: NetlinkError,
    },
    /// Opening a socket failed.
    #[error("socket {addr}: {source}")]
    Socket {
        /// The address.
        addr: String,
        /// Cause.
        source: io::Error,
    },
    /// A system call the loop needs (eventfd, thread spawn) failed.
    #[error("{what}: {source}")]
    Sys {
        /// What.
        what: &'static str,
        /// Cause.
        source: io::Error,
    },
    /// No socket is bound to the given local address.
    #[error("no socket serves {0}")]
    NoSocket(String),
    /// The kernel refused a control-plane send.
    #[error("send to {remote}: {source}")]
    Send {
        /// Destination.
        remote: String,
        /// Cause.
        source: io::Error,
    },
}

/// One worker's UDP sockets and raw ESP socket.
type WorkerSockets = (Vec<Arc<BatchSocket>>, Option<Arc<BatchSocket>>);

/// Reads a data plane's counters (see [`Dataplane::counter_reader`]).
#[derive(Clone)]
pub struct CounterReader(Arc<[Counters]>);

impl CounterReader {
    /// Counters summed over the workers.
    pub fn totals(&self) -> Snapshot {
        self.0.iter().map(Counters::snapshot).sum()
    }
}

impl std::fmt::Debug for CounterReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterReader")
            .field("workers", &self.0.len())
            .finish()
    }
}

/// A running data plane; dropping it stops and joins the workers.
pub struct Dataplane {
    workers: Vec<JoinHandle<()>>,
    stop: Arc<OwnedFd>,
    counters: Arc<[Counters]>,
    control: Option<Receiver<ControlPacket>>,
    /// Worker 0's sockets, used (concurrently, which the kernel allows) for control sends.
    udp: Vec<Arc<BatchSocket>>,
    esp: Option<Arc<BatchSocket>>,
    tun_name: String,
    tun_index: u32,
}

impl Dataplane {
    /// Creates the TUN device and sockets (in the calling thread's network namespace,
    /// which the workers inherit) and starts the workers.
    pub fn start<H: Handler>(config: Config, handler: Arc<H>) -> Result<Self, DataplaneError> {
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        validate(&config)?;
        let name = config.tun.name.clone();
        let tuns = Tun::open_with(&name, workers, config.tun.vnet_hdr).map_err(|source| {
            DataplaneError::Tun {
                name: name.clone(),
                source,
            }
        })?;
        let tun_index = setup_link(&config.tun).map_err(|source| DataplaneError::Netlink {
            name: name.clone(),
            source,
        })?;

        // Sockets: port 0 is resolved by the first worker's socket so all share one port.
        let mut udp_addrs = config.udp.clone();
        let mut sockets: Vec<WorkerSockets> = Vec::new();
        for w in 0..workers {
            let mut udp = Vec::with_capacity(udp_addrs.len());
            for a in udp_addrs.iter_mut() {
                let s = BatchSocket::udp(*a, &config.socket).map_err(|source| {
                    DataplaneError::Socket {
                        addr: format!("udp {a}"),
                        source,
                    }
                })?;
                *a = s.local();
                udp.push(Arc::new(s));
            }
            let esp = match config.esp {
                None => None,
                Some(ip) => {
                    let opts = SocketOptions {
                        esp_share: Some((w as u32, workers as u32)),
                        ..config.socket
                    };
                    let s =
                        BatchSocket::esp(ip, &opts).map_err(|source| DataplaneError::Socket {
                            addr: format!("esp {ip}"),
                            source,
                        })?;
                    Some(Arc::new(s))
                }
            };
            sockets.push((udp, esp));
        }

        // SAFETY: plain eventfd(2) call, result checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(DataplaneError::Sys {
                what: "eventfd",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: efd is fresh and owned by nobody else.
        let stop = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let counters: Arc<[Counters]> = (0..workers).map(|_| Counters::default()).collect();
        let (control_tx, control_rx) = sync_channel(config.control_capacity.max(1));

        let (udp0, esp0) = sockets.first().cloned().unwrap_or_default();
        let mut dp = Dataplane {
            workers: Vec::with_capacity(workers),
            stop: stop.clone(),
            counters: counters.clone(),
            control: Some(control_rx),
            udp: udp0,
            esp: esp0,
            tun_name: name,
            tun_index,
        };
        for (index, (tun, (udp, esp))) in tuns.into_iter().zip(sockets).enumerate() {
            let w = Worker {
                index,
                handler: handler.clone(),
                tun,
                udp,
                esp,
                stop: stop.clone(),
                counters: counters.clone(),
                control: control_tx.clone(),
                batch: config.batch,
                layout: config.layout,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("dp-worker-{index}"))
                .spawn(move || w.run());
            match spawned {
                Ok(h) => dp.workers.push(h),
                // Dropping `dp` stops the workers already started.
                Err(source) => {
                    return Err(DataplaneError::Sys {
                        what: "spawn worker",
                        source,
                    });
                }
            }
        }
        tracing::info!(tun = %dp.tun_name, workers, "data plane started");
        Ok(dp)
    }

    /// The control channel's receiving end (once): IKE packets the handlers passed up.
    pub fn take_control(&mut self) -> Option<Receiver<ControlPacket>> {
        self.control.take()
    }

    /// Sends `bytes` over UDP from `local` (must be a configured address) to `remote`,
    /// from the calling thread, without disturbing the workers.
    pub fn send_udp(
        &self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        bytes: &[u8],
    ) -> Result<(), DataplaneError> {
        let s = self
            .udp
            .iter()
            .find(|s| s.serves(local))
            .ok_or_else(|| DataplaneError::NoSocket(local.to_string()))?;
        s.send_one(Datagram {
            data: bytes,
            remote,
            local: *local.ip(),
        })
        .map_err(|source| DataplaneError::Send {
            remote: remote.to_string(),
            source,
        })
    }

    /// Sends `bytes` (ESP header onwards) as IP protocol 50 to `remote`.
    pub fn send_esp(
        &self,
        local: Ipv4Addr,
        remote: Ipv4Addr,
        bytes: &[u8],
    ) -> Result<(), DataplaneError> {
        let s = self
            .esp
            .as_ref()
            .ok_or_else(|| DataplaneError::NoSocket(format!("esp {local}")))?;
        s.send_one(Datagram {
            data: bytes,
            remote: SocketAddrV4::new(remote, 0),
            local,
        })
        .map_err(|source| DataplaneError::Send {
            remote: remote.to_string(),
            source,
        })
    }

    /// The UDP addresses actually bound (port 0 resolved).
    pub fn udp_addrs(&self) -> Vec<SocketAddrV4> {
        self.udp.iter().map(|s| s.local()).collect()
    }

    /// Counters per worker.
    pub fn counters(&self) -> Vec<Snapshot> {
        self.counters.iter().map(Counters::snapshot).collect()
    }

    /// Counters summed over the workers.
    pub fn totals(&self) -> Snapshot {
        self.counters.iter().map(Counters::snapshot).sum()
    }

    /// A handle that reads the counters from anywhere, for as long as it lives (e.g. a
    /// metrics endpoint on another thread).
    pub fn counter_reader(&self) -> CounterReader {
        CounterReader(Arc::clone(&self.counters))
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.counters.len()
    }

    /// The TUN device name.
    pub fn tun_name(&self) -> &str {
        &self.tun_name
    }

    /// The TUN device's interface index (for routes).
    pub fn tun_index(&self) -> u32 {
        self.tun_index
    }

    /// Stops and joins the workers (what `Drop` does).
    pub fn stop(self) {}
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to our eventfd.
        let rc = unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if rc < 0 {
            tracing::error!(err = %io::Error::last_os_error(), "cannot signal data plane workers");
            return;
        }
        for h in self.workers.drain(..) {
            if h.join().is_err() {
                tracing::error!("a data plane worker panicked");
            }
        }
    }
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("tun", &self.tun_name)
            .field("workers", &self.workers.len())
            .finish()
    }
}

fn validate(c: &Config) -> Result<(), DataplaneError> {
    let bad = |s: String| Err(DataplaneError::Config(s));
    if !(1..=1024).contains(&c.batch) {
        return bad(format!("batch size {} is not in 1..=1024", c.batch));
    }
    if let Some(mtu) = c.tun.mtu {
        if mtu as usize > c.layout.data {
            return bad(format!(
                "TUN MTU {mtu} is larger than the buffer data size {}",
                c.layout.data
            ));
        }
    } else if c.layout.data < 1500 {
        return bad(format!(
            "buffer data size {} is below the default MTU 1500",
            c.layout.data
        ));
    }
    Ok(())
}

/// Sets MTU and addresses and brings the link up; returns its index.
fn setup_link(t: &TunConfig) -> Result<u32, NetlinkError> {
    let index = Netlink::link_index(&t.name)?;
    let mut nl = Netlink::open()?;
    if t.mtu.is_some() {
        nl.set_link(index, None, t.mtu)?;
    }
    for a in &t.addresses {
        nl.add_address(index, *a, AddMode::Replace)?;
    }
    nl.set_link(index, Some(true), None)?;
    Ok(index)
}

/// Batches a worker reads from one source before looking at the others (fairness).
const ROUNDS: usize = 8;
/// Coalesced messages (up to 64 KiB each) one `UDP_GRO` read takes: 512 KiB per worker.
const GRO_MESSAGES: usize = 8;

#[derive(Clone, Copy)]
enum Src {
    Tun,
    Udp,
    Esp,
}

#[derive(Clone, Copy)]
enum Out {
    None,
    Tun,
    Udp {
        sock: usize,
        remote: SocketAddrV4,
        local: Ipv4Addr,
    },
    Esp {
        remote: Ipv4Addr,
        local: Ipv4Addr,
    },
}

fn dropped(sums: &mut Snapshot, r: DropReason) -> Out {
    sums.drops[r as usize] += 1;
    Out::None
}

struct Worker<H: Handler> {
    index: usize,
    handler: Arc<H>,
    tun: Tun,
    udp: Vec<Arc<BatchSocket>>,
    esp: Option<Arc<BatchSocket>>,
    stop: Arc<OwnedFd>,
    counters: Arc<[Counters]>,
    control: SyncSender<ControlPacket>,
    batch: usize,
    layout: BufLayout,
}

/// A worker's buffers and state on its own thread.
struct Running<H: Handler> {
    w: Worker<H>,
    ctx: WorkerCtx<H::Local>,
    rx: BatchBuf,
    rx_scratch: MsgScratch,
    /// Large buffers for UDP sockets with `UDP_GRO` (shared by them: a socket's pending
    /// segments are always handed out before another socket is read).
    gro_scratch: GroScratch,
    tx_scratch: MsgScratch,
    out: Vec<Out>,
    /// The handler's verdicts for the batch, until [`Handler::end_batch`] has run.
    actions: Vec<Action>,
    sums: Snapshot,
    /// With `IFF_VNET_HDR`: the super-packet buffers.
    vnet: Option<Vnet>,
}

/// Preallocated state for TUN offloads (see [`offload`](crate::offload)).
struct Vnet {
    /// One read from the TUN device: vnet header + up to 64 KiB of packet (also where
    /// what batch slots cannot take lands).
    read: Box<[u8]>,
    /// The scattered read: vnet header, batch slots, the rest of `read`.
    riov: Vec<libc::iovec>,
    /// Header length and segment payload of the last super-packet split: what reads
    /// into batch slots are cut for (a plain packet fits the first slot anyway).
    geometry: (usize, usize),
    /// The super-packet in `read` still being split: (plan, next segment, length).
    pending: Option<(Split, usize, usize)>,
    /// One coalesced write: vnet header, the first segment, the others' payloads.
    iov: Vec<libc::iovec>,
    /// The open TCP run for the TUN device held back across batches.
    run: TunRun,
}

/// vnet header + the largest IPv4 packet.
const VNET_READ_LEN: usize = VNET_HDR_LEN + 65_535;
/// Largest IPv4 + TCP header (RFC 791 §3.1, RFC 9293 §3.1: 15 words each).
const MAX_HDR_LEN: usize = 120;

impl<H: Handler> Worker<H> {
    fn run(self) {
        let ctx = WorkerCtx {
            worker: self.index,
            now: Instant::now(),
            local: self.handler.new_local(self.index),
            slot: 0,
        };
        let mut r = Running {
            rx: BatchBuf::new(self.batch, self.layout),
            rx_scratch: MsgScratch::new(self.batch),
            gro_scratch: GroScratch::new(if self.udp.iter().any(|s| s.gro()) {
                GRO_MESSAGES
            } else {
                1
            }),
            tx_scratch: MsgScratch::new(self.batch),
            out: vec![Out::None; self.batch],
            actions: vec![Action::Drop(DropReason::Other); self.batch],
            sums: Snapshot::default(),
            vnet: self.tun.vnet_hdr().then(|| Vnet {
                read: vec![0; VNET_READ_LEN].into_boxed_slice(),
                riov: Vec::with_capacity(self.batch + 2),
                geometry: (0, self.layout.data),
                pending: None,
                iov: Vec::with_capacity(MAX_SEGMENTS + 1),
                run: TunRun::new(self.layout),
            }),
            ctx,
            w: self,
        };
        r.run();
    }
}

impl<H: Handler> Running<H> {
    fn run(&mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(2 + self.w.udp.len() + 1);
        let pfd = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        fds.push(pfd(self.w.stop.as_raw_fd()));
        fds.push(pfd(self.w.tun.fd()));
        fds.extend(self.w.udp.iter().map(|s| pfd(s.fd())));
        if let Some(e) = &self.w.esp {
            fds.push(pfd(e.fd()));
        }
        let n_udp = self.w.udp.len();
        loop {
            // With a TCP run held back for the TUN device, only look whether more input
            // is ready: if none is, the run goes out before the worker blocks, so a flow
            // that paused never waits on a coalescing buffer.
            let timeout = if self.held_segments() > 0 { 0 } else { -1 };
            // SAFETY: fds is a live array of pollfd of the given length.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(worker = self.w.index, err = %e, "poll failed; worker stops");
                return;
            }
            if rc == 0 {
                self.write_held();
                self.w.counters[self.w.index].add(&self.sums);
                self.sums = Snapshot::default();
                continue;
            }
            if fds[0].revents != 0 {
                self.write_held();
                self.w.counters[self.w.index].add(&self.sums);
                return;
            }
            if fds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
                tracing::error!(
                    worker = self.w.index,
                    "polled a closed descriptor; worker stops"
                );
                return;
            }
            if fds[1].revents != 0 {
                self.drain_tun();
            }
            for k in 0..n_udp {
                if fds[2 + k].revents != 0 {
                    self.drain_socket(Src::Udp, k);
                }
            }
            if fds.len() > 2 + n_udp && fds[2 + n_udp].revents != 0 {
                self.drain_socket(Src::Esp, 0);
            }
            // A run no segment joined during a whole pass belongs to a flow that paused:
            // it does not wait behind other sources' traffic for the poll to come up
            // empty.
            if let Some(v) = self.vnet.as_mut()
                && !v.run.take_fresh()
            {
                self.write_held();
            }
            self.w.counters[self.w.index].add(&self.sums);
            self.sums = Snapshot::default();
        }
    }

    /// Segments held back for the TUN device.
    fn held_segments(&self) -> usize {
        self.vnet.as_ref().map_or(0, |v| v.run.pending())
    }

    /// Writes the TCP run held back for the TUN device, if any.
    fn write_held(&mut self) {
        let Some(v) = self.vnet.as_mut() else { return };
        let (tun, sums) = (&self.w.tun, &mut self.sums);
        let iov = &mut v.iov;
        v.run
            .flush(&mut |h: &VnetHdr, segs: &[PacketBuf], skip: usize| {
                write_tun_vnet(tun, iov, sums, h, segs, skip)
            });
    }

    fn drain_tun(&mut self) {
        if self.vnet.is_some() {
            return self.drain_tun_vnet();
        }
        let (head, max) = (self.w.layout.headroom, self.w.layout.data);
        for _ in 0..ROUNDS {
            let cap = self.rx.capacity();
            let (pkts, _) = self.rx.slots_mut();
            let mut n = 0;
            while n < cap {
                match self.w.tun.recv(&mut pkts[n], head, max) {
                    Ok(true) => n += 1,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(worker = self.w.index, err = %e, "TUN read failed");
                        break;
                    }
                }
            }
            self.rx.set_len(n);
            if n == 0 {
                return;
            }
            self.process(Src::Tun);
            if n < cap {
                return;
            }
        }
    }

    /// Reads (super-)packets with their vnet headers and splits them into the batch's
    /// slots. A batch takes whole super-packets when it can (one UDP GSO message each
    /// on the way out): a read that might not fit the free slots waits for the next
    /// batch. A super-packet that does not fit at all continues in the next one.
    fn drain_tun_vnet(&mut self) {
        let cap = self.rx.capacity();
        let mut n = 0;
        let mut rounds = 0;
        loop {
            let Some(v) = self.vnet.as_mut() else { return };
            if let Some((split, next, len)) = v.pending.as_mut() {
                let (head, max) = (self.w.layout.headroom, self.w.layout.data);
                let pkt = &v.read[VNET_HDR_LEN..VNET_HDR_LEN + *len];
                let (slots, _) = self.rx.slots_mut();
                while *next < split.count() && n < cap {
                    let slot = &mut slots[n];
                    match split.segment(pkt, *next, slot.rx_slice(head, max)) {
                        Some(len) => {
                            slot.set_rx_len(len);
                            self.sums.rx_copied += 1;
                            n += 1;
                        }
                        None => self.sums.drops[DropReason::TooBig as usize] += 1,
                    }
                    *next += 1;
                }
                if *next >= split.count() {
                    v.pending = None;
                }
            }
            let wanted = self.tun_slots_wanted();
            let full = n == cap || (wanted <= cap && n > 0 && cap - n < wanted);
            if full {
                self.rx.set_len(n);
                self.process(Src::Tun);
                n = 0;
                rounds += 1;
                continue;
            }
            // Only read when nothing is pending, so nothing read is ever left behind.
            if rounds >= ROUNDS {
                break;
            }
            match self.read_tun_vnet(n) {
                Ok(Some(m)) => n = m,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(worker = self.w.index, err = %e, "TUN read failed");
                    break;
                }
            }
        }
        if n > 0 {
            self.rx.set_len(n);
            self.process(Src::Tun);
        }
    }

    /// Batch slots the next TUN read may fill in place: a largest super-packet of the
    /// segment geometry last seen. `usize::MAX` when the batch is too small for that
    /// (reads then go through the copy path and never wait for free slots).
    fn tun_slots_wanted(&self) -> usize {
        let Some(v) = self.vnet.as_ref() else {
            return usize::MAX;
        };
        let (hdr, mss) = v.geometry;
        let slots = (VNET_READ_LEN - VNET_HDR_LEN)
            .saturating_sub(hdr)
            .div_ceil(mss.max(1));
        if slots > self.rx.capacity() || hdr + mss > self.w.layout.data {
            usize::MAX
        } else {
            slots
        }
    }

    /// Reads one packet from the TUN device with slots from `n` on free. With room for a
    /// whole super-packet the read is scattered straight into the slots: the first slot
    /// takes the headers and the first segment's payload, every further slot one
    /// payload after a gap for the headers, which are then copied in and finished per
    /// segment (no copy of the payload). When the geometry was not what the slots were
    /// cut for, the pieces are put back together in the read buffer and split from
    /// there (`pending`). Returns the new number of packets in the batch; `None` when
    /// no packet was waiting.
    fn read_tun_vnet(&mut self, n: usize) -> io::Result<Option<usize>> {
        let wanted = self.tun_slots_wanted();
        let cap = self.rx.capacity();
        let head = self.w.layout.headroom;
        let Some(v) = self.vnet.as_mut() else {
            return Ok(None);
        };
        let zero_copy = wanted <= cap - n;
        let (hdr, mss) = v.geometry;
        let (slots, _) = self.rx.slots_mut();
        v.riov.clear();
        let read_base = v.read.as_mut_ptr();
        let covered = if zero_copy {
            v.riov.push(libc::iovec {
                iov_base: read_base.cast(),
                iov_len: VNET_HDR_LEN,
            });
            for (k, slot) in slots[n..n + wanted].iter_mut().enumerate() {
                let (ptr, len) = slot.rx_area(head, hdr + mss);
                let skip = if k == 0 { 0 } else { hdr };
                v.riov.push(libc::iovec {
                    // SAFETY: skip <= hdr < len (tun_slots_wanted checked hdr + mss <=
                    // the data area).
                    iov_base: unsafe { ptr.add(skip) }.cast(),
                    iov_len: len - skip,
                });
            }
            hdr + wanted * mss
        } else {
            0
        };
        // What the slots cannot take goes where it would be in one linear read.
        let spill = VNET_HDR_LEN + covered;
        if spill < v.read.len() {
            v.riov.push(libc::iovec {
                // SAFETY: spill < read.len().
                iov_base: unsafe { read_base.add(spill) }.cast(),
                iov_len: v.read.len() - spill,
            });
        }
        let Some(got) = self.w.tun.recv_iov(&v.riov)? else {
            return Ok(None);
        };
        let Some(h) = VnetHdr::parse(&v.read[..got.min(VNET_HDR_LEN)]) else {
            self.sums.drops[DropReason::Malformed as usize] += 1;
            return Ok(Some(n));
        };
        let len = got - VNET_HDR_LEN;
        if zero_copy {
            let first = &slots[n];
            let head_bytes = &first.buffer()[head..head + len.min(hdr + mss)];
            let plan = Split::plan_head(&h, head_bytes, len);
            if let Ok(split) = plan
                && (split.count() == 1 && len <= hdr + mss
                    || (split.hdr_len(), split.mss()) == (hdr, mss))
            {
                if split.count() > 1 {
                    self.sums.tun_gso_reads += 1;
                }
                let in_slots = split.count().min(wanted);
                // Each slot gets the super-packet's headers before any is finished.
                let mut hb = [0u8; MAX_HDR_LEN];
                let hl = split.hdr_len();
                if let (Some(dst), Some(src)) =
                    (hb.get_mut(..hl), slots[n].buffer().get(head..head + hl))
                {
                    dst.copy_from_slice(src);
                }
                if in_slots < split.count() {
                    // The rest is in the read buffer after where the headers belong.
                    v.read[VNET_HDR_LEN..VNET_HDR_LEN + hl].copy_from_slice(&hb[..hl]);
                    v.pending = Some((split, in_slots, len));
                }
                let mut m = n;
                for i in 0..in_slots {
                    let slot = &mut slots[n + i];
                    slot.set_rx_len(split.segment_len(i));
                    let d = slot.data_mut();
                    if i > 0 {
                        d[..hl].copy_from_slice(&hb[..hl]);
                    }
                    match split.finish_segment(i, d) {
                        Some(_) => {
                            slots.swap(m, n + i);
                            m += 1;
                        }
                        None => self.sums.drops[DropReason::TooBig as usize] += 1,
                    }
                }
                return Ok(Some(m));
            }
            // Not cut to this geometry: put the pieces back in line.
            let mut at = 0;
            for (k, slot) in slots[n..n + wanted].iter().enumerate() {
                let skip = if k == 0 { 0 } else { hdr };
                let take = (hdr + mss - skip).min(len.saturating_sub(at));
                if take == 0 {
                    break;
                }
                let src = &slot.buffer()[head + skip..head + skip + take];
                v.read[VNET_HDR_LEN + at..VNET_HDR_LEN + at + take].copy_from_slice(src);
                at += take;
            }
        }
        match Split::plan(&h, &v.read[VNET_HDR_LEN..got]) {
            Ok(split) => {
                if split.count() > 1 {
                    self.sums.tun_gso_reads += 1;
                    v.geometry = (split.hdr_len(), split.mss());
                }
                v.pending = Some((split, 0, len));
            }
            Err(e) => {
                let r = match e {
                    OffloadError::Malformed(_) => DropReason::Malformed,
                    OffloadError::Unsupported(_) => DropReason::Unsupported,
                };
                self.sums.drops[r as usize] += 1;
            }
        }
        Ok(Some(n))
    }

    fn drain_socket(&mut self, from: Src, k: usize) {
        for round in 0.. {
            let sock = match from {
                Src::Esp => self.w.esp.as_ref(),
                _ => self.w.udp.get(k),
            };
            let Some(sock) = sock else { return };
            let got = if sock.gro() {
                sock.recv_gro(&mut self.rx, &mut self.gro_scratch)
            } else {
                sock.recv_batch(&mut self.rx, &mut self.rx_scratch)
            };
            let got = match got {
                Ok(got) => got,
                Err(e) => {
                    tracing::warn!(worker = self.w.index, local = %sock.local(), err = %e, "receive failed");
                    return;
                }
            };
            self.sums.drops[DropReason::Truncated as usize] += got.truncated as u64;
            self.sums.drops[DropReason::Malformed as usize] += got.malformed as u64;
            self.sums.udp_gro_reads += got.coalesced as u64;
            self.sums.rx_copied += got.copied as u64;
            if got.packets > 0 {
                self.process(from);
            }
            // Segments already received are never left behind; new reads stop after
            // ROUNDS batches (fairness).
            if !got.more || (round + 1 >= ROUNDS && !self.gro_scratch.pending()) {
                return;
            }
        }
    }

    /// Runs the handler over the batch, then sends the results grouped by destination.
    fn process(&mut self, from: Src) {
        let n = self.rx.len();
        self.ctx.now = Instant::now();
        self.sums.batches += 1;
        let h = &*self.w.handler;
        h.begin_batch(&mut self.ctx);
        for i in 0..n {
            let Some((pkt, meta)) = self.rx.get_mut(i) else {
                break;
            };
            let rx_flow = match from {
                Src::Tun => &mut self.sums.tun_rx,
                Src::Udp => &mut self.sums.udp_rx,
                Src::Esp => &mut self.sums.esp_rx,
            };
            rx_flow.add(pkt.len());
            self.ctx.slot = i;
            let action = match from {
                Src::Tun => h.handle_tun(&mut self.ctx, pkt),
                Src::Udp => h.handle_udp(&mut self.ctx, meta.local, meta.remote, pkt),
                Src::Esp => h.handle_esp(&mut self.ctx, *meta.local.ip(), *meta.remote.ip(), pkt),
            };
            if let Some(a) = self.actions.get_mut(i) {
                *a = action;
            }
        }
        let n = n.min(self.actions.len());
        if let Some(pkts) = self.rx.packets_mut().get_mut(..n) {
            h.end_batch(&mut self.ctx, pkts, &mut self.actions[..n]);
        }
        for i in 0..n {
            let Some((pkt, meta)) = self.rx.get_mut(i) else {
                break;
            };
            self.out[i] = match self.actions[i] {
                Action::ToTun => Out::Tun,
                Action::ToUdp { local, remote } => {
                    match self.w.udp.iter().position(|s| s.serves(local)) {
                        Some(sock) => Out::Udp {
                            sock,
                            remote,
                            local: *local.ip(),
                        },
                        None => dropped(&mut self.sums, DropReason::NoSocket),
                    }
                }
                Action::ToEsp { local, remote } => match &self.w.esp {
                    Some(s) if s.local().ip().is_unspecified() || *s.local().ip() == local => {
                        Out::Esp { remote, local }
                    }
                    _ => dropped(&mut self.sums, DropReason::NoSocket),
                },
                Action::Control => {
                    let source = match from {
                        Src::Tun => Source::Tun,
                        Src::Udp => Source::Udp {
                            local: meta.local,
                            remote: meta.remote,
                        },
                        Src::Esp => Source::Esp {
                            local: *meta.local.ip(),
                            remote: *meta.remote.ip(),
                        },
                    };
                    // The only allocation on a worker: control packets are rare (IKE).
                    let cp = ControlPacket {
                        worker: self.w.index,
                        source,
                        data: pkt.data().to_vec(),
                    };
                    match self.w.control.try_send(cp) {
                        Ok(()) => self.sums.control.add(pkt.len()),
                        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                            self.sums.drops[DropReason::ControlFull as usize] += 1;
                        }
                    }
                    Out::None
                }
                Action::Drop(r) => dropped(&mut self.sums, r),
            };
        }
        self.flush(n);
    }

    fn flush(&mut self, n: usize) {
        if self.vnet.is_some() {
            self.flush_tun_vnet(n);
        }
        let pkts = self.rx.packets();
        let outs = &self.out[..n];
        if self.vnet.is_none() {
            for (pkt, o) in pkts.iter().zip(outs) {
                if let Out::Tun = o {
                    match self.w.tun.send(pkt.data()) {
                        Ok(()) => self.sums.tun_tx.add(pkt.len()),
                        Err(_) => self.sums.drops[DropReason::SendFailed as usize] += 1,
                    }
                }
            }
        }
        for (k, sock) in self.w.udp.iter().enumerate() {
            let items = pkts.iter().zip(outs).filter_map(|(p, o)| match *o {
                Out::Udp {
                    sock,
                    remote,
                    local,
                } if sock == k => Some(Datagram {
                    data: p.data(),
                    remote,
                    local,
                }),
                _ => None,
            });
            let r = sock.send_batch(items, &mut self.tx_scratch);
            self.sums.udp_tx.packets += r.sent as u64;
            self.sums.udp_tx.bytes += r.bytes as u64;
            self.sums.udp_gso_sends += r.coalesced as u64;
            self.sums.udp_gso_disabled += u64::from(r.gso_disabled);
            self.sums.drops[DropReason::SendFailed as usize] += r.failed as u64;
        }
        if let Some(sock) = &self.w.esp {
            let items = pkts.iter().zip(outs).filter_map(|(p, o)| match *o {
                Out::Esp { remote, local } => Some(Datagram {
                    data: p.data(),
                    remote: SocketAddrV4::new(remote, 0),
                    local,
                }),
                _ => None,
            });
            let r = sock.send_batch(items, &mut self.tx_scratch);
            self.sums.esp_tx.packets += r.sent as u64;
            self.sums.esp_tx.bytes += r.bytes as u64;
            self.sums.drops[DropReason::SendFailed as usize] += r.failed as u64;
        }
    }

    /// Writes the batch's packets for the TUN device, consecutive TCP segments of one
    /// flow coalesced into super-packets: one `writev` per run (vnet header, the first
    /// segment with its header patched, the other segments' payloads in place). The
    /// last run stays open across batches while it may still grow (see [`TunRun`]).
    fn flush_tun_vnet(&mut self, n: usize) {
        let Some(v) = self.vnet.as_mut() else { return };
        let (tun, sums) = (&self.w.tun, &mut self.sums);
        let (iov, run) = (&mut v.iov, &mut v.run);
        let mut write = |h: &VnetHdr, segs: &[PacketBuf], skip: usize| {
            write_tun_vnet(tun, iov, sums, h, segs, skip)
        };
        let pkts = self.rx.packets_mut();
        for (p, o) in pkts.iter_mut().zip(self.out.iter().take(n)) {
            if matches!(o, Out::Tun) {
                run.push(p, &mut write);
            }
        }
    }
}

/// One `writev` to the TUN device: the vnet header `h`, then `segs` (all of the first,
/// the others from `skip` on) as one (super-)packet; counted in `sums`.
fn write_tun_vnet(
    tun: &Tun,
    iov: &mut Vec<libc::iovec>,
    sums: &mut Snapshot,
    h: &VnetHdr,
    segs: &[PacketBuf],
    skip: usize,
) {
    let hbytes = h.encode();
    iov.clear();
    iov.push(libc::iovec {
        iov_base: hbytes.as_ptr() as *mut libc::c_void,
        iov_len: hbytes.len(),
    });
    let mut bytes = 0;
    for (k, p) in segs.iter().enumerate() {
        let d = if k == 0 {
            p.data()
        } else {
            p.data().get(skip..).unwrap_or_default()
        };
        iov.push(libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        });
        bytes += d.len();
    }
    let count = segs.len() as u64;
    match tun.send_iov(iov) {
        Ok(()) => {
            sums.tun_tx.packets += count;
            sums.tun_tx.bytes += bytes as u64;
            if count > 1 {
                sums.tun_gro_writes += 1;
            }
        }
        Err(_) => sums.drops[DropReason::SendFailed as usize] += count,
    }
}
