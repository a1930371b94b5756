//! `UdpSocket`: a datagram socket on the reactor, with Asio's `async_send`
//! semantics (speculative send, per-socket FIFO, completions always posted).

use super::base::{Base, datagram_common, ip_addr, socket_common};
use super::meta::{IcmpError, RecvMeta, SendMeta};
use super::{MessageFlags, WaitType};
use crate::buffer::{ConstBufferSequence, MutableBufferSequence, const_slices, mut_slices};
use crate::cancel::Operation;
use crate::context::{Executor, Inner};
use crate::error::Error;
use crate::op::{Completion, Io, ReportOp, WaitOp};
use crate::reactor::IoObject;
use crate::sim::net::{Endpoint, Port};
use crate::sys::msg::ErrInfo;
use crate::sys::{self, Readiness};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::cell::Cell;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::rc::Rc;

/// A UDP socket registered with an [`IoContext`](crate::IoContext) (Asio's
/// `ip::udp::socket`).
///
/// A cheap `Clone` handle: the socket closes on [`close`](Self::close), when
/// the last clone is dropped, or when its context is dropped. Every `async_*`
/// call starts at once and returns an [`Operation`]; its handler always runs
/// later from the loop, never from inside the call.
///
/// - **S1** `async_send` tries the system call at once when nothing is queued
///   on the socket, so the datagram may leave before `run()` is called
///   (unless [`set_gso(true)`](Self::set_gso) defers sends to the end of the
///   pass).
/// - **S2** Sends queue behind sends, receives behind receives (FIFO).
/// - **S3** A send that would block waits for writability; an event drains
///   the queue until would-block (at most a bounded number per turn).
/// - **S4** `cancel`, `close`, dropping the last handle and
///   `Operation::cancel` complete pending operations with
///   `OPERATION_ABORTED` through the queue.
/// - **S5** On a closed socket every operation completes with
///   `BAD_DESCRIPTOR`.
/// - **S6** Errors arrive in the handler and the socket stays usable.
/// - **S7** Zero-length datagrams are sent and received.
/// - **S8** A datagram longer than the receive buffers is truncated; the
///   handler gets the truncated length.
///
/// Receive through the socket's own calls, not through
/// [`with_socket2`](Self::with_socket2): a datagram the loop read ahead (see
/// [`available`](Self::available)) would otherwise be overtaken.
///
/// # Errors
///
/// The `Error` a handler gets is one of these; after each the socket stays
/// usable (S6). [`Error::into_result`] turns it into an `io::Result`.
///
/// | `Error` | when | operations |
/// |---|---|---|
/// | `NONE` | success: `n` is the datagram's length (a receive's cut to its buffers, S8; 0 for an empty datagram, S7) | all |
/// | `OPERATION_ABORTED` | still pending at `cancel`, `close`, `release`, the drop of the last handle, or [`Operation::cancel`] / [`cancel_after`](Operation::cancel_after) (S4) | all |
/// | `BAD_DESCRIPTOR` | the socket was closed when the operation started (S5) | all |
/// | `INVALID_ARGUMENT` | more buffers than [`MAX_BUFFERS`](crate::MAX_BUFFERS); a destination with port 0 | send, receive |
/// | `MESSAGE_SIZE` | the datagram is larger than UDP carries (65,507 bytes of payload over IPv4) | send |
/// | `NOT_CONNECTED` | [`async_send`](Self::async_send) on a socket with no peer | send |
/// | `CONNECTION_REFUSED` | on a connected socket, an earlier datagram was answered by ICMP port unreachable | send, receive |
/// | another OS error, as [`Error::from_raw_os_error`] | what `sendmsg(2)`/`recvmsg(2)` reported, for example `EACCES` (broadcast without [`set_broadcast`](Self::set_broadcast)), `EAFNOSUPPORT` (an IPv6 destination from an IPv4 socket), `ENETUNREACH`; or epoll's refusal to register the socket (`ENOMEM`, `ENOSPC`) | all |
///
/// `async_wait` completes with `NONE` when the readiness holds, and
/// [`async_connect`](Self::async_connect) with what `connect(2)` returned.
/// A receive's sender is the unspecified address `0.0.0.0:0` whenever the
/// `Error` is set. Once the context is dropped no handler is called at all:
/// pending ones are dropped unrun, and so is the handler of an operation
/// started afterwards.
///
/// # Example: a request, its reply, and a timeout
///
/// ```
/// use ioctx::{CancellationType, Error, IoContext, net::UdpSocket};
/// use std::{cell::RefCell, io, net::SocketAddr, rc::Rc, time::Duration};
///
/// /// The server's receive handler: it replies, then waits for the next
/// /// request. It takes its argument types from the return type.
/// fn serve(sock: UdpSocket) -> impl FnOnce(Error, usize, Vec<u8>, SocketAddr) + 'static {
///     move |err, n, buf, from| {
///         match err {
///             Error::NONE => {
///                 sock.async_send_to(buf[..n].to_ascii_uppercase(), from, |err, _| {
///                     if err.is_err() {
///                         eprintln!("reply lost: {err}");
///                     }
///                 });
///             }
///             Error::OPERATION_ABORTED | Error::BAD_DESCRIPTOR => return, // closed: stop serving
///             _ => eprintln!("receive failed: {err}"), // the socket stays usable (S6)
///         }
///         sock.async_receive_from(buf, serve(sock.clone()));
///     }
/// }
///
/// let ctx = IoContext::new()?;
/// let server = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
/// server.async_receive_from(vec![0u8; 512], serve(server.clone()));
///
/// let client = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
/// let reply = Rc::new(RefCell::new(None));
/// // A closure stored before the call names its argument types: Rust infers
/// // them where the closure is written, not from the call that takes it.
/// let (r, srv) = (reply.clone(), server.clone());
/// let on_reply = move |err: Error, n: usize, buf: Vec<u8>, _from: SocketAddr| {
///     *r.borrow_mut() = Some(err.into_result(n).map(|n| buf[..n].to_vec()));
///     srv.close(); // the server's pending receive ends with OPERATION_ABORTED
/// };
/// client.async_send_to(&b"ping"[..], server.local_addr()?, |err, _| assert!(err.is_ok()));
/// client
///     .async_receive_from(vec![0u8; 512], on_reply)
///     // No reply within 5 s: the receive ends with OPERATION_ABORTED.
///     .cancel_after(Duration::from_secs(5), CancellationType::TERMINAL);
///
/// ctx.run(); // returns once the server has stopped
/// assert_eq!(reply.take().unwrap()?, b"PING");
/// # Ok::<(), io::Error>(())
/// ```
///
/// A closure passed straight to an `async_*` call needs no types: it takes
/// them from the call. One stored first needs them on each argument its body
/// calls a method on (`err.is_ok()`, `buf.truncate(n)`), or the compiler
/// asks for "type annotations needed"; annotating every argument, as
/// `on_reply` does, is the simplest. A function that builds handlers, as
/// `serve` does, names the signature once in its return type.
#[derive(Clone)]
pub struct UdpSocket {
    b: Base,
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("local", &self.local_addr().ok())
            .field("peer", &self.peer_addr().ok())
            .field("open", &self.is_open())
            .finish()
    }
}

fn too_many_buffers() -> io::Error {
    io::Error::from(Error::INVALID_ARGUMENT)
}

use sys::msg::Switch;
use sys::msg::switch::{ECN, GRO, PKTINFO, RECV_ERRORS, TIMESTAMPS, TTL};
/// The switches that attach control messages to received datagrams.
const METADATA: [Option<Switch>; 5] = [PKTINFO, ECN, TTL, TIMESTAMPS, GRO];

/// The error of a switch this system does not have (`Switch` `None`).
fn no_switch(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("{what}: not on this system (Linux only for now)"))
}

impl UdpSocket {
    /// Creates a socket bound to `addr` (`127.0.0.1:0` for an ephemeral port).
    pub fn bind(ex: &Executor, addr: SocketAddr) -> io::Result<UdpSocket> {
        // A simulated context: a port of its network, on any address.
        if let Some(b) = Base::adopt_sim(ex, |world| {
            let port = Port::new(world.medium(), addr.is_ipv6());
            port.bind(addr)?;
            Ok(Endpoint::Udp(port))
        }) {
            return Ok(UdpSocket { b: b? });
        }
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        sock.bind(&addr.into())?;
        Self::adopt(ex, sock)
    }

    /// Creates an unbound socket of `domain` (`Domain::IPV4` or `IPV6`), for
    /// options that must be set before binding (Asio's `socket.open()`); bind
    /// it with [`bind_to`](Self::bind_to).
    pub fn open(ex: &Executor, domain: Domain) -> io::Result<UdpSocket> {
        if let Some(b) = Base::adopt_sim(ex, |world| {
            if domain != Domain::IPV4 && domain != Domain::IPV6 {
                return Err(io::Error::from_raw_os_error(libc::EPROTONOSUPPORT)); // as socket(2) says
            }
            Ok(Endpoint::Udp(Port::new(world.medium(), domain == Domain::IPV6)))
        }) {
            return Ok(UdpSocket { b: b? });
        }
        Self::adopt(ex, Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?)
    }

    /// Binds an [`open`](Self::open)ed socket to `addr` (Asio's
    /// `basic_socket::bind`; named so because [`bind`](Self::bind) is the
    /// constructor that opens and binds in one step).
    ///
    /// Fails with `ErrorKind::AddrInUse` when another socket holds the
    /// address (unless both set [`set_reuse_port`](Self::set_reuse_port)),
    /// `InvalidInput` when the socket is already bound, and `BAD_DESCRIPTOR`
    /// when it is closed.
    pub fn bind_to(&self, addr: SocketAddr) -> io::Result<()> {
        log::debug!("udp bind {addr}");
        if let Some(port) = self.io().port() {
            return port.bind(addr);
        }
        self.sock()?.bind(&addr.into())
    }

    /// Takes over a standard socket.
    pub fn from_std(ex: &Executor, sock: std::net::UdpSocket) -> io::Result<UdpSocket> {
        Self::adopt(ex, Socket::from(sock))
    }

    fn adopt(ex: &Executor, sock: Socket) -> io::Result<UdpSocket> {
        // Read-ahead needs a landing space that holds any datagram: true of
        // UDP (64 KiB at most), not of every datagram socket `from_std` takes.
        let ip = sock.local_addr().is_ok_and(|a| a.is_ipv4() || a.is_ipv6());
        // Switches turned on before (by us, before a `release`, or by the
        // caller): the loop must know, or a datagram read ahead would lose
        // its metadata, and reports would stay in the error queue.
        let on = |opts: Option<Switch>| {
            opts.is_some_and(|((l4, n4), (l6, n6))| {
                [(l4, n4), (l6, n6)]
                    .into_iter()
                    .any(|(level, name)| sys::msg::int_option(&sock, level, name).is_ok_and(|v| v != 0))
            })
        };
        let (metadata, reports, gro) = (ip && METADATA.into_iter().any(on), ip && on(RECV_ERRORS), ip && on(GRO));
        let s = UdpSocket { b: Base::adopt(ex, sock, ip, false)? };
        if metadata {
            s.io().carry_metadata();
            s.io().set_gro(gro);
        }
        if reports {
            s.io().set_recv_errors(true);
        }
        Ok(s)
    }

    /// Takes the socket out of the context and returns it as a standard,
    /// blocking socket. Pending operations complete with `OPERATION_ABORTED`.
    ///
    /// The loop may have read one datagram ahead of the receives (see
    /// [`available`](Self::available)); it cannot go back into the kernel, so
    /// while one is held `release` fails with `ErrorKind::ResourceBusy` and
    /// changes nothing: receive it (for example with
    /// [`receive_from`](Self::receive_from)), then release.
    pub fn release(&self) -> io::Result<std::net::UdpSocket> {
        if self.io().has_read_ahead() {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "a datagram read ahead is held by the socket: receive it before release",
            ));
        }
        Ok(self.b.release()?.into())
    }

    fn io(&self) -> &Rc<IoObject> {
        self.b.io()
    }

    fn sock(&self) -> io::Result<Rc<Socket>> {
        self.b.sock()
    }

    socket_common!();

    /// Sets the default peer: `send`/`async_send` go to it and only its
    /// datagrams are received.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        if let Some(port) = self.io().port() {
            return port.connect(addr);
        }
        self.sock()?.connect(&addr.into())
    }

    /// As [`connect`](Self::connect) (immediate for a datagram socket), with
    /// the result posted to `handler`.
    pub fn async_connect<F: FnOnce(Error) + 'static>(&self, addr: SocketAddr, handler: F) -> Operation {
        let Some(inner) = self.live_context() else {
            return Operation::detached();
        };
        let err = match (self.io().socket(), self.io().port()) {
            (Some(s), _) => s.connect(&addr.into()).err().map_or(Error::NONE, Error::from),
            (None, Some(p)) => p.connect(addr).err().map_or(Error::NONE, Error::from),
            (None, None) => Error::BAD_DESCRIPTOR,
        };
        log::trace!("udp async_connect {addr}: {err:?}");
        self.b.complete_now(&inner, Rc::new(WaitOp::new(handler)), err)
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        if let Some(port) = self.io().port() {
            return port.local_addr();
        }
        ip_addr(self.sock()?.local_addr()?)
    }

    /// The connected peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        if let Some(port) = self.io().port() {
            return port.peer_addr();
        }
        ip_addr(self.sock()?.peer_addr()?)
    }

    fn live_context(&self) -> Option<Rc<Inner>> {
        self.b.live_context()
    }

    datagram_common!();

    /// Sends `bufs` as one datagram to `dest`; `handler(err, n)`.
    ///
    /// # Errors
    ///
    /// `handler` gets `NONE` with the datagram's length, or with `n` = 0:
    /// `OPERATION_ABORTED` (cancelled before the datagram left, S4),
    /// `BAD_DESCRIPTOR` (closed, S5), `MESSAGE_SIZE` (too large),
    /// `INVALID_ARGUMENT` (more than [`MAX_BUFFERS`](crate::MAX_BUFFERS)
    /// buffers, or port 0), `CONNECTION_REFUSED` (a connected socket learnt of
    /// an ICMP port unreachable), or another OS error from `sendmsg(2)`; see
    /// the [table](Self#errors). The socket stays usable after each.
    ///
    /// ```
    /// use ioctx::{Error, IoContext, net::UdpSocket};
    ///
    /// let ctx = IoContext::new()?;
    /// let sock = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
    /// let to = sock.local_addr()?;
    /// sock.async_send_to(vec![0u8; 70_000], to, |err, n| assert_eq!((err, n), (Error::MESSAGE_SIZE, 0)));
    /// sock.async_send_to(&b"next"[..], to, |err, n| assert_eq!((err, n), (Error::NONE, 4)));
    /// assert_eq!(ctx.run(), 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn async_send_to<B, F>(&self, bufs: B, dest: SocketAddr, handler: F) -> Operation
    where
        B: ConstBufferSequence + 'static,
        F: FnOnce(Error, usize) + 'static,
    {
        self.async_send_to_with_flags(bufs, dest, MessageFlags::NONE, handler)
    }

    /// [`async_send_to`](Self::async_send_to) with message flags.
    #[inline]
    pub fn async_send_to_with_flags<B, F>(
        &self,
        bufs: B,
        dest: SocketAddr,
        flags: MessageFlags,
        handler: F,
    ) -> Operation
    where
        B: ConstBufferSequence + 'static,
        F: FnOnce(Error, usize) + 'static,
    {
        log::trace!("udp async_send_to {dest}, {} buffers", bufs.buffer_count());
        self.b.start_send(bufs, Some(&dest.into()), flags.bits(), handler)
    }

    /// Receives one datagram into `bufs`; `handler(err, n, bufs, from)` gets
    /// the buffers back and the sender (the unspecified address on error).
    ///
    /// # Errors
    ///
    /// `handler` gets `NONE` with the datagram's length (cut to the buffers,
    /// S8), or with `n` = 0 and `from` = `0.0.0.0:0`: `OPERATION_ABORTED`
    /// (cancelled, S4), `BAD_DESCRIPTOR` (closed, S5), `INVALID_ARGUMENT`
    /// (more than [`MAX_BUFFERS`](crate::MAX_BUFFERS) buffers),
    /// `CONNECTION_REFUSED` (a connected socket learnt of an ICMP port
    /// unreachable), or another OS error from `recvmsg(2)`; see the
    /// [table](Self#errors).
    ///
    /// A receive that nobody answers, ended by a timeout; the handler is
    /// stored before the call, so its arguments are typed:
    ///
    /// ```
    /// use ioctx::{CancellationType, Error, IoContext, net::UdpSocket};
    /// use std::{net::SocketAddr, time::Duration};
    ///
    /// let ctx = IoContext::new()?;
    /// let sock = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
    /// let on_recv = |err: Error, n: usize, buf: Vec<u8>, from: SocketAddr| {
    ///     assert_eq!((err, n, buf.len()), (Error::OPERATION_ABORTED, 0, 512));
    ///     assert!(from.ip().is_unspecified());
    /// };
    /// sock.async_receive_from(vec![0u8; 512], on_recv)
    ///     .cancel_after(Duration::from_millis(10), CancellationType::TERMINAL);
    /// assert_eq!(ctx.run(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[inline]
    pub fn async_receive_from<B, F>(&self, bufs: B, handler: F) -> Operation
    where
        B: MutableBufferSequence + 'static,
        F: FnOnce(Error, usize, B, SocketAddr) + 'static,
    {
        self.async_receive_from_with_flags(bufs, MessageFlags::NONE, handler)
    }

    /// [`async_receive_from`](Self::async_receive_from) with message flags.
    #[inline]
    pub fn async_receive_from_with_flags<B, F>(&self, bufs: B, flags: MessageFlags, handler: F) -> Operation
    where
        B: MutableBufferSequence + 'static,
        F: FnOnce(Error, usize, B, SocketAddr) + 'static,
    {
        log::trace!("udp async_receive_from");
        self.b.start_recv(bufs, flags, true, handler)
    }

    /// Receives one datagram into `bufs` with its metadata;
    /// `handler(err, meta, bufs)`. `meta.len` bytes were placed,
    /// `meta.truncated` says the datagram was longer, and the fields the
    /// `set_recv_*` switches ask for are filled (the others are `None`).
    /// Such receives are never read ahead, so each gets its own metadata (a
    /// datagram a plain receive read ahead before a switch was turned on
    /// has only its sender); several queued on a socket whose switches are
    /// on share one `recvmmsg`, each with its own control messages. On
    /// macOS and FreeBSD only `len`, `from` and `truncated` are filled for
    /// now (the switches are Linux only).
    ///
    /// ```
    /// use ioctx::net::UdpSocket;
    /// use ioctx::{Error, IoContext};
    /// let ctx = IoContext::new()?;
    /// let server = UdpSocket::bind(&ctx, "0.0.0.0:0".parse().unwrap())?;
    /// server.set_recv_pktinfo(true)?;
    /// let port = server.local_addr()?.port();
    /// let client = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
    /// client.send_to(&b"hi"[..], format!("127.0.0.2:{port}").parse().unwrap())?;
    /// server.async_receive_msg(vec![0u8; 1], |e, meta, _| {
    ///     assert_eq!(e, Error::NONE);
    ///     // Sent to 127.0.0.2: a reply should leave from there.
    ///     assert_eq!(meta.local, Some("127.0.0.2".parse().unwrap()));
    ///     assert!(meta.truncated && meta.len == 1);
    /// });
    /// ctx.run();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn async_receive_msg<B, F>(&self, bufs: B, handler: F) -> Operation
    where
        B: MutableBufferSequence + 'static,
        F: FnOnce(Error, RecvMeta, B) + 'static,
    {
        log::trace!("udp async_receive_msg");
        self.b.start_recv_msg(bufs, MessageFlags::NONE, move |err, info, bufs| {
            let meta = if err.is_ok() { RecvMeta::from_info(info) } else { RecvMeta::empty() };
            handler(err, meta, bufs)
        })
    }

    /// Sends `bufs` as one datagram with what `meta` sets: its destination
    /// (`None`: the connected peer), its source address (a socket bound to
    /// every address answering from the address a request came to), its
    /// ECN codepoint, and a segment size (the kernel cuts it into datagrams
    /// of that size, at most 64 of them); `handler(err, n)`. A segment size
    /// of 0 or above 65,535 is `INVALID_ARGUMENT`. Such sends are never
    /// batched or deferred. On macOS and FreeBSD only the destination is
    /// taken for now: a send that sets the others completes with
    /// `EOPNOTSUPP`.
    pub fn async_send_msg<B, F>(&self, bufs: B, meta: SendMeta, handler: F) -> Operation
    where
        B: ConstBufferSequence + 'static,
        F: FnOnce(Error, usize) + 'static,
    {
        log::trace!("udp async_send_msg {meta:?}");
        match meta.info() {
            Ok(info) => self.b.start_send(bufs, meta.to.map(SockAddr::from).as_ref(), info, handler),
            Err(err) => {
                if let Some(inner) = self.live_context() {
                    drop(bufs);
                    inner.post_result(handler, err, 0);
                }
                Operation::detached()
            }
        }
    }

    /// With `true`, each datagram's destination address and arrival
    /// interface reach [`RecvMeta::local`] and [`RecvMeta::ifindex`]
    /// (`IP_PKTINFO`, `IPV6_RECVPKTINFO`). Simulated: the destination only.
    /// Linux only for now: `Unsupported` on macOS and FreeBSD.
    pub fn set_recv_pktinfo(&self, on: bool) -> io::Result<()> {
        if let Some(port) = self.io().port() {
            port.set_recv_pktinfo(on);
            return Ok(());
        }
        self.switch(on, PKTINFO.ok_or_else(|| no_switch("pktinfo"))?)
    }

    /// With `true`, each datagram's ECN codepoint reaches [`RecvMeta::ecn`]
    /// (`IP_RECVTOS`, `IPV6_RECVTCLASS`). Not simulated (`Unsupported`).
    /// Linux only for now: `Unsupported` on macOS and FreeBSD.
    pub fn set_recv_ecn(&self, on: bool) -> io::Result<()> {
        self.real_switch("ECN marks", on, ECN)
    }

    /// With `true`, each datagram's TTL (hop limit on IPv6) reaches
    /// [`RecvMeta::ttl`] (`IP_RECVTTL`, `IPV6_RECVHOPLIMIT`). Not simulated
    /// (`Unsupported`). Linux only for now: `Unsupported` on macOS and FreeBSD.
    pub fn set_recv_ttl(&self, on: bool) -> io::Result<()> {
        self.real_switch("TTLs", on, TTL)
    }

    /// With `true`, the kernel's receive time of each datagram reaches
    /// [`RecvMeta::timestamp`] (`SO_TIMESTAMPNS`). Not simulated
    /// (`Unsupported`). Linux only for now: `Unsupported` on macOS and FreeBSD.
    pub fn set_recv_timestamps(&self, on: bool) -> io::Result<()> {
        self.real_switch("receive timestamps", on, TIMESTAMPS)
    }

    /// With `true`, the kernel may coalesce datagrams of one flow that
    /// arrive together into one (generic receive offload, `UDP_GRO`), which
    /// costs it less per datagram.
    /// [`async_receive_msg`](Self::async_receive_msg) then gets several
    /// datagrams at once, and [`RecvMeta::segment_size`] says where they
    /// split: each is that long, the last possibly shorter. Give it buffers
    /// of 64 KiB. A plain receive (`async_receive`, `async_receive_from`,
    /// the blocking ones) still gets one datagram: the loop receives the
    /// coalesced ones into its own space and hands them to the next
    /// receives one at a time, with the metadata they arrived with (a copy
    /// each, which the metadata receive does not pay). Turn it off on a
    /// drained socket only: datagrams the kernel has already coalesced stay
    /// so, and without the switch it no longer says where they split.
    /// Linux only
    /// (`Unsupported` on macOS and FreeBSD); not simulated (`Unsupported`).
    pub fn set_gro(&self, on: bool) -> io::Result<()> {
        self.real_switch("coalesced receives", on, GRO)?;
        self.io().set_gro(on);
        Ok(())
    }

    /// With `true`, the errors the network reports about datagrams this
    /// socket sent (ICMP port, host or network unreachable, fragmentation
    /// needed) are queued for [`async_receive_error`](Self::async_receive_error)
    /// (`IP_RECVERR`, `IPV6_RECVERR`), connected or not, and never end a
    /// receive: an unconnected server's receive loop goes on when one
    /// client's port is closed. A connected socket's refusal, too, becomes
    /// a report instead of failing its next operation. At most 64 reports
    /// wait; older ones are dropped. Linux only (`Unsupported` on macOS and
    /// FreeBSD, which have no error queue). Simulated: refusals (nobody bound
    /// where a datagram went).
    pub fn set_recv_errors(&self, on: bool) -> io::Result<()> {
        if self.io().port().is_none() {
            self.switch_options(on, RECV_ERRORS.ok_or_else(|| no_switch("error reports"))?)?;
        }
        self.io().set_recv_errors(on);
        Ok(())
    }

    /// With `true`, datagrams are never fragmented: they leave with the
    /// don't-fragment bit (IPv4 `IP_PMTUDISC_DO`, IPv6 `IPV6_DONTFRAG`),
    /// and one longer than the path MTU the kernel knows fails with
    /// `MESSAGE_SIZE` (with [`set_recv_errors`](Self::set_recv_errors) on,
    /// a report with that MTU is queued too; ICMP "fragmentation needed"
    /// messages lower the MTU the kernel knows). What QUIC, DTLS and path
    /// MTU probing need. With `false`, the kernel's default: IPv4 sets the
    /// bit on datagrams that fit and fragments the others, IPv6 fragments
    /// at the sender. Not simulated (`Unsupported`). Linux only for now:
    /// `Unsupported` on macOS and FreeBSD.
    pub fn set_dont_fragment(&self, on: bool) -> io::Result<()> {
        if self.io().port().is_some() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "fragmentation is not simulated"));
        }
        let (v4, v6) = sys::msg::dont_fragment(on).ok_or_else(|| no_switch("don't fragment"))?;
        self.set_options(v4, v6)
    }

    /// Waits for the next error report (see
    /// [`set_recv_errors`](Self::set_recv_errors)); `handler(err, report)`.
    /// A report already queued completes it at once (posted). Without the
    /// switch it completes with `INVALID_ARGUMENT` (no report would come);
    /// on a closed socket with `BAD_DESCRIPTOR`; cancelled, with
    /// `OPERATION_ABORTED`.
    ///
    /// ```
    /// use ioctx::net::UdpSocket;
    /// use ioctx::{Error, IoContext};
    /// let ctx = IoContext::new()?;
    /// let sock = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
    /// sock.set_recv_errors(true)?;
    /// let closed = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
    /// let to = closed.local_addr()?;
    /// closed.close();
    /// sock.send_to(&b"anyone?"[..], to)?;
    /// sock.async_receive_error(move |e, report| {
    ///     assert_eq!((e, report.dest, report.error), (Error::NONE, to, Error::CONNECTION_REFUSED));
    /// });
    /// ctx.run();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn async_receive_error<F: FnOnce(Error, IcmpError) + 'static>(&self, handler: F) -> Operation {
        let Some(inner) = self.live_context() else {
            return Operation::detached();
        };
        let op = Rc::new(ReportOp::new(move |err, report: Option<ErrInfo>| {
            handler(err, report.map_or_else(IcmpError::empty, IcmpError::from_info))
        }));
        let handle = Operation::new(&inner, &(op.clone() as Rc<dyn Completion>));
        self.io().start_report_wait(&*inner, op);
        handle
    }

    /// A switch the simulated backend does not have.
    fn real_switch(&self, what: &str, on: bool, opts: Option<Switch>) -> io::Result<()> {
        if self.io().port().is_some() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, format!("{what} are not simulated")));
        }
        self.switch(on, opts.ok_or_else(|| no_switch(what))?)
    }

    /// Sets a metadata switch: the IPv4 option, and on an IPv6 socket the
    /// IPv6 one (and the IPv4 one too, for IPv4 traffic on a dual-stack
    /// socket, where the kernel takes it). A metadata socket reads nothing
    /// ahead: a datagram read ahead would lose its metadata.
    fn switch(&self, on: bool, opts: Switch) -> io::Result<()> {
        self.switch_options(on, opts)?;
        if on {
            self.io().carry_metadata();
        }
        Ok(())
    }

    /// Sets the socket options of a switch (see [`switch`](Self::switch)).
    fn switch_options(&self, on: bool, ((l4, n4), (l6, n6)): Switch) -> io::Result<()> {
        self.set_options((l4, n4, i32::from(on)), (l6, n6, i32::from(on)))
    }

    /// Sets an integer option: `v4` (level, name, value) on an IPv4
    /// socket; `v6` on an IPv6 one, and `v4` there too, for the IPv4
    /// traffic of a dual-stack socket.
    fn set_options(&self, v4: sys::msg::IntOption, v6: sys::msg::IntOption) -> io::Result<()> {
        let sock = self.sock()?;
        let set = |(level, name, value): sys::msg::IntOption| {
            sys::msg::set_int_option(&sock, level, name, value).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOPROTOOPT | libc::EOPNOTSUPP) => {
                    io::Error::new(io::ErrorKind::Unsupported, format!("the kernel refuses this switch: {e}"))
                }
                _ => e,
            })
        };
        if sock.local_addr()?.is_ipv6() {
            set(v6)?;
            if v4 != v6 {
                let _ = set(v4); // refused on a v6-only socket: nothing to report
            }
        } else {
            set(v4)?;
        }
        Ok(())
    }

    fn blocking<R>(&self, what: Readiness, f: impl FnMut() -> io::Result<R>) -> io::Result<R> {
        self.b.blocking(what, f)
    }

    /// Sends `bufs` as one datagram to the connected peer, blocking.
    pub fn send<B: ConstBufferSequence>(&self, bufs: B) -> io::Result<usize> {
        self.send_with_flags(bufs, MessageFlags::NONE)
    }

    /// [`send`](Self::send) with message flags.
    pub fn send_with_flags<B: ConstBufferSequence>(&self, bufs: B, flags: MessageFlags) -> io::Result<usize> {
        let slices = const_slices(&bufs).ok_or_else(too_many_buffers)?;
        self.blocking(Readiness::Write, || self.b.io().send(&slices, None, flags.bits()))
    }

    /// Sends `bufs` as one datagram to `dest`, blocking.
    pub fn send_to<B: ConstBufferSequence>(&self, bufs: B, dest: SocketAddr) -> io::Result<usize> {
        let slices = const_slices(&bufs).ok_or_else(too_many_buffers)?;
        let dest = SockAddr::from(dest);
        self.blocking(Readiness::Write, || self.b.io().send(&slices, Some(&dest), 0))
    }

    /// Receives one datagram from the connected peer, blocking; returns its
    /// (possibly truncated) length.
    pub fn receive<B: MutableBufferSequence>(&self, mut bufs: B) -> io::Result<usize> {
        let mut slices = mut_slices(&mut bufs).ok_or_else(too_many_buffers)?;
        let r = self.blocking(Readiness::Read, || self.io().recv(&mut slices, 0, None));
        self.io().after_sync_recv();
        r
    }

    /// Receives one datagram, blocking; returns its length and sender.
    pub fn receive_from<B: MutableBufferSequence>(&self, mut bufs: B) -> io::Result<(usize, SocketAddr)> {
        let mut slices = mut_slices(&mut bufs).ok_or_else(too_many_buffers)?;
        let from = Cell::new(None);
        let r = self.blocking(Readiness::Read, || {
            let n = self.io().recv(&mut slices, 0, Some(&from))?;
            Ok((n, from.get().unwrap_or_else(sys::unspecified_addr)))
        });
        self.io().after_sync_recv();
        r
    }

    /// Turns UDP generic segmentation offload (`UDP_SEGMENT`) on or off for
    /// the asynchronous sends of this socket.
    ///
    /// With it on, `async_send`/`async_send_to` no longer try the system call
    /// at once (S1 does not hold): the sends made during one pass of the loop
    /// are queued and leave together at the end of the pass, each run of
    /// equal-size datagrams to one destination (the last may be shorter; up
    /// to 64 datagrams and 64 KB) in ONE `sendmsg` that the kernel cuts into
    /// datagrams. Every operation still completes on its own, with its own
    /// `(Error, usize)`, in FIFO order. If the kernel or the device refuses
    /// segmentation, the socket turns it off by itself and sends one by one
    /// ([`gso`](Self::gso) then reads false). A synchronous [`send`](Self::send)
    /// leaves at once, ahead of the deferred ones. Errs with `BAD_DESCRIPTOR`
    /// when closed. Linux only: on macOS and FreeBSD, turning it on is
    /// `Unsupported` (off is accepted).
    pub fn set_gso(&self, on: bool) -> io::Result<()> {
        self.sock()?;
        if on && !sys::HAS_GSO {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "UDP segmentation offload is Linux only"));
        }
        self.io().gso.set(on);
        log::debug!("udp gso {}", if on { "on" } else { "off" });
        Ok(())
    }

    /// True while sends are coalesced with segmentation offload.
    pub fn gso(&self) -> bool {
        self.io().gso.get()
    }

    /// Coalesces the sends a pass of handlers makes: off by default.
    ///
    /// With it on, the first `async_send`/`async_send_to` of each pass of the
    /// loop still tries the system call at once (S1), and the pass's later
    /// ones are queued and leave together at the end of the pass (before the
    /// loop polls again, or when `run*`/`poll*` returns) in ONE `sendmmsg`,
    /// whatever their sizes and destinations. Every operation still completes
    /// on its own, with its own `(Error, usize)`, in FIFO order. A server that
    /// answers a batch of requests then makes one system call for its answers
    /// instead of one each (W6 in `BENCHMARKS.md`: about 18% more requests per
    /// second on the VM measured). Sends made outside a pass (before `run()`)
    /// still go at once. A synchronous [`send`](Self::send) leaves at once,
    /// ahead of the deferred ones: a handler that waits for a peer's answer
    /// with a blocking call must not count on its second datagram having
    /// left. Errs with `BAD_DESCRIPTOR` when closed.
    ///
    /// ```
    /// use ioctx::{IoContext, net::UdpSocket};
    ///
    /// let ctx = IoContext::new()?;
    /// let server = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
    /// server.set_send_coalescing(true)?;
    /// assert!(server.send_coalescing());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_send_coalescing(&self, on: bool) -> io::Result<()> {
        self.b.check_open()?;
        self.io().set_coalescing(on);
        log::debug!("udp send coalescing {}", if on { "on" } else { "off" });
        Ok(())
    }

    /// True while a pass's later sends are coalesced
    /// ([`set_send_coalescing`](Self::set_send_coalescing)).
    pub fn send_coalescing(&self) -> bool {
        self.io().coalesces()
    }

    /// Size of the next datagram waiting to be received (0 when none).
    ///
    /// A receive on an IP socket reads one datagram ahead when one is queued
    /// behind the one it takes (one `recvmmsg` then also tells the loop that
    /// the socket is drained); that datagram goes to the next receive of any
    /// kind, is seen by `PEEK`, is counted here, and is dropped by `close`.
    pub fn available(&self) -> io::Result<usize> {
        if let Some(port) = self.io().port() {
            return Ok(port.available());
        }
        self.io().available(&*self.sock()?)
    }

    /// Shuts down reading, writing or both. After `Shutdown::Read`, a
    /// receive still takes a datagram if one is queued (Linux keeps queueing
    /// them), and otherwise ends at once with [`Error::EOF`] (the synchronous
    /// forms: an `UnexpectedEof` error), as a blocking `recv` returns at once.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.b.shutdown(how)
    }

    /// `SO_BROADCAST`.
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        self.sock()?.set_broadcast(on)
    }

    /// `SO_REUSEADDR`.
    pub fn set_reuse_address(&self, on: bool) -> io::Result<()> {
        self.sock()?.set_reuse_address(on)
    }

    /// `SO_REUSEPORT`: sockets bound to the same address and port, each with
    /// this set, by the same user, share it; Linux load-balances the
    /// datagrams arriving there across them by a hash of the sender's
    /// address and port, so one sender's datagrams all go to one socket.
    ///
    /// This is how a server grows past one core: one [`IoContext`](crate::IoContext)
    /// per thread, each with its own socket on the same port. The option
    /// counts only at bind time, so set it between [`open`](Self::open) and
    /// [`bind_to`](Self::bind_to) (Asio: `open`, `set_option`, `bind`):
    ///
    /// ```
    /// use ioctx::{IoContext, net::UdpSocket};
    /// use socket2::Domain;
    /// let ctx = IoContext::new()?;
    /// let a = UdpSocket::open(&ctx, Domain::IPV4)?;
    /// a.set_reuse_port(true)?;
    /// a.bind_to("127.0.0.1:0".parse().unwrap())?;
    /// // Another thread's context would do the same with a's address.
    /// let b = UdpSocket::open(&ctx, Domain::IPV4)?;
    /// b.set_reuse_port(true)?;
    /// b.bind_to(a.local_addr()?)?;
    /// assert_eq!(a.local_addr()?, b.local_addr()?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// Closing one socket of the group drops the datagrams queued on it, and
    /// its senders' next datagrams go to the others. Other systems may accept
    /// the option without spreading the datagrams (FreeBSD balances only
    /// with `SO_REUSEPORT_LB`).
    ///
    /// `examples/reuseport.rs` runs such a server on several threads.
    pub fn set_reuse_port(&self, on: bool) -> io::Result<()> {
        self.sock()?.set_reuse_port(on)
    }

    /// `SO_REUSEPORT` as the kernel reports it.
    pub fn reuse_port(&self) -> io::Result<bool> {
        self.sock()?.reuse_port()
    }

    /// `SO_SNDBUF`.
    pub fn set_send_buffer_size(&self, size: usize) -> io::Result<()> {
        self.sock()?.set_send_buffer_size(size)
    }

    /// `SO_RCVBUF`.
    pub fn set_recv_buffer_size(&self, size: usize) -> io::Result<()> {
        self.sock()?.set_recv_buffer_size(size)
    }

    /// `SO_SNDBUF` as the kernel reports it.
    pub fn send_buffer_size(&self) -> io::Result<usize> {
        self.sock()?.send_buffer_size()
    }

    /// `SO_RCVBUF` as the kernel reports it.
    pub fn recv_buffer_size(&self) -> io::Result<usize> {
        self.sock()?.recv_buffer_size()
    }

    /// The unicast TTL: `IP_TTL` on an IPv4 socket, `IPV6_UNICAST_HOPS` on an
    /// IPv6 one.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        let sock = self.sock()?;
        if sock.local_addr()?.is_ipv6() { sock.set_unicast_hops_v6(ttl) } else { sock.set_ttl_v4(ttl) }
    }

    /// The unicast TTL as the kernel reports it (see [`set_ttl`](Self::set_ttl)).
    pub fn ttl(&self) -> io::Result<u32> {
        let sock = self.sock()?;
        if sock.local_addr()?.is_ipv6() { sock.unicast_hops_v6() } else { sock.ttl_v4() }
    }

    /// Joins an IPv4 multicast group on `interface` (`0.0.0.0` for any).
    pub fn join_multicast_v4(&self, group: Ipv4Addr, interface: Ipv4Addr) -> io::Result<()> {
        self.sock()?.join_multicast_v4(&group, &interface)
    }

    /// Leaves an IPv4 multicast group.
    pub fn leave_multicast_v4(&self, group: Ipv4Addr, interface: Ipv4Addr) -> io::Result<()> {
        self.sock()?.leave_multicast_v4(&group, &interface)
    }

    /// Joins an IPv6 multicast group on interface index `interface` (0 for any).
    pub fn join_multicast_v6(&self, group: Ipv6Addr, interface: u32) -> io::Result<()> {
        self.sock()?.join_multicast_v6(&group, interface)
    }

    /// Leaves an IPv6 multicast group.
    pub fn leave_multicast_v6(&self, group: Ipv6Addr, interface: u32) -> io::Result<()> {
        self.sock()?.leave_multicast_v6(&group, interface)
    }
}
