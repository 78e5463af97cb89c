//! The vpngw data plane substrate: fast Linux packet IO and forwarding structures for a
//! userspace ESP gateway, generic over the packet processing.
//!
//! - [`Tun`]: a multi-queue TUN device (`IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE`), one
//!   non-blocking queue per worker.
//! - [`BatchSocket`]: UDP (500, 4500) and raw IP-protocol-50 sockets with `recvmmsg` /
//!   `sendmmsg` over preallocated [`BatchBuf`]s; `SO_REUSEPORT` (UDP) or a per-worker SPI
//!   BPF filter (raw ESP) spreads peers over the workers; UDP GSO (`UDP_SEGMENT`) sends
//!   runs of equal-size datagrams to one peer as one message, probed per socket, with a
//!   fallback to single datagrams (a socket whose GSO the kernel refuses stops using it,
//!   counted as `udp_gso_disabled`). The workers' UDP sockets also turn on `UDP_GRO`:
//!   a run of datagrams a peer sent with GSO (ESP in UDP between two vpngw) arrives as
//!   one message and is split into the batch's slots by the segment size the kernel
//!   reports ([`BatchSocket::recv_gro`]).
//! - [`offload`]: with [`TunConfig::vnet_hdr`], TSO super-packets read from the TUN
//!   device are split into packets for the handler, and TCP segments going to the TUN
//!   device are coalesced into super-packets (one `writev` per run).
//! - [`RouteTable`] (IPv4 longest-prefix match) and [`PolicyTable`] (source + destination
//!   + priority), shared lock-free with the workers through [`SharedRoutes`].
//! - [`Netlink`]: kernel routes, addresses, link state and policy rules (rtnetlink).
//! - [`Dataplane`]: the worker threads running a [`Handler`] over batches of packets.
//!
//! # The packet loop
//!
//! [`Dataplane::start`] creates the TUN device (one queue per worker), sets its MTU and
//! addresses and brings it up, opens per-worker sockets and spawns one thread per worker.
//! Each worker `poll`s its own descriptors (TUN queue, UDP sockets, ESP socket and a
//! shared eventfd for shutdown), reads up to [`Config::batch`] packets with one
//! `recvmmsg` (or successive TUN `read`s), calls the handler once per packet, then writes
//! the results grouped by destination: one `sendmmsg` per socket, one `write` per TUN
//! packet — or, with offloads, one `read` per super-packet (split into up to a batch of
//! packets, the rest in the next batch) and one `writev` per run of coalesced TCP
//! segments. All buffers are allocated when the worker starts; the steady state allocates
//! nothing and takes no lock. Counters are summed locally and published once per poll
//! round as relaxed atomics ([`Dataplane::counters`], [`Dataplane::totals`]).
//!
//! # Handler contract
//!
//! - The handler gets `&mut PacketBuf` and works **in place**: decrypt/encrypt inside the
//!   buffer, [`PacketBuf::push_front`] / [`PacketBuf::pull_front`] headers,
//!   [`PacketBuf::push_back`] / [`PacketBuf::truncate`] trailers. Whatever
//!   [`PacketBuf::data`] holds when it returns is what gets sent.
//! - It returns an [`Action`]: [`Action::ToTun`] (the data must be an IP packet),
//!   [`Action::ToUdp`] (the data is the UDP payload; `local` must be one of the
//!   configured UDP addresses, else the packet is dropped as `NoSocket`),
//!   [`Action::ToEsp`] (the data starts at the SPI; the kernel adds the IP header),
//!   [`Action::Control`] (the data is copied into a [`ControlPacket`] on a bounded
//!   channel, see [`Dataplane::take_control`]; dropped as `ControlFull` when full) or
//!   [`Action::Drop`] with a [`DropReason`] that is counted.
//! - Inputs: [`Handler::handle_tun`] gets an IP packet as read from the TUN device;
//!   [`Handler::handle_udp`] gets the UDP payload with both addresses (on 4500 that is ESP,
//!   or IKE behind the 4-byte zero non-ESP marker, RFC 3948 §2.2 — the handler tells them
//!   apart); [`Handler::handle_esp`] gets the packet from the SPI on (the IP header already
//!   stripped, its addresses passed in).
//! - The handler is shared by all workers (`&self`): state that changes per packet must
//!   be per worker ([`Handler::Local`], reached through [`WorkerCtx::local`]) or atomics
//!   (e.g. an SA's outbound sequence number). [`WorkerCtx::now`] is read once per batch.
//! - Packets of one UDP 4-tuple, and raw ESP packets of one SPI, always reach the same
//!   worker, so per-SA inbound processing (anti-replay) sees them in order.
//! - A handler must not block: it runs on the packet path. It may panic only on bugs;
//!   a panic ends that worker.
//!
//! # Buffer layout
//!
//! ```text
//! |<- headroom ->|<------------ data ------------>|<- tailroom ->|
//!                ^ received packet starts here      (≥ tailroom free after any packet)
//! ```
//!
//! [`BufLayout::default`] is 64 + 2048 + 64 bytes. Outbound ESP in place: the inner IP
//! packet read from the TUN device grows by the ESP header (8) and IV (8 for GCM, 16 for
//! CBC) at the front — the kernel adds the outer IP (20) and UDP (8) headers, so 64 bytes
//! of headroom leave room even for a future raw path that writes them itself — and by
//! padding (≤ 15 for a 16-byte block), pad length and next header (2) and ICV (≤ 32) at
//! the back: ≤ 49 bytes of tailroom. Both are configurable ([`Config::layout`]); the TUN
//! MTU must not exceed `data`.
//!
//! # Namespaces
//!
//! Every descriptor is created in the network namespace of the thread that calls
//! [`Dataplane::start`] (or [`Netlink::open`]); the workers inherit that thread's
//! namespace. Tests use this to run several data planes in one process.

mod buf;
mod counters;
mod dataplane;
pub mod netlink;
pub mod offload;
mod policy;
mod route;
mod sock;
mod tun;

pub use buf::{BatchBuf, BufLayout, NoRoom, PacketBuf, RecvMeta};
pub use counters::{DropReason, Flow, Snapshot};
pub use dataplane::{
    Action, Config, ControlPacket, CounterReader, Dataplane, DataplaneError, Handler, Source,
    WorkerCtx,
};
pub use netlink::{AddMode, Netlink, NetlinkError, RouteSpec, RuleSpec};
pub use policy::{PolicyRule, PolicyTable};
pub use route::{RouteReader, RouteTable, SharedRoutes};
pub use sock::{
    BatchSocket, Datagram, GroScratch, MsgScratch, Received, SendOutcome, SockKind, SocketOptions,
    udp_gso_supported,
};
pub use tun::{Tun, TunConfig};
