//! `TcpListener` and `TcpStream`: TCP on the reactor, in the style of
//! `UdpSocket` (Asio's `ip::tcp::acceptor` and `ip::tcp::socket`).

use super::WaitType;
use super::base::{Base, gone, ip_addr, socket_common, stream_common};
use crate::buffer::{ConstBufferSequence, MutableBufferSequence};
use crate::cancel::Operation;
use crate::context::Executor;
use crate::error::Error;
use crate::sim::net::Endpoint;
use crate::sim::net::tcp::{Listener, Stream};
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

/// A listening TCP socket (Asio's `ip::tcp::acceptor`).
///
/// A cheap `Clone` handle; the socket closes on [`close`](Self::close), when
/// the last clone is dropped, or when its context is dropped. Accepted
/// connections join the listener's context.
///
/// ```
/// use ioctx::net::{TcpListener, TcpStream};
/// use ioctx::{Error, IoContext};
/// let ctx = IoContext::new().unwrap();
/// let listener = TcpListener::bind(&ctx, "127.0.0.1:0".parse().unwrap()).unwrap();
/// listener.async_accept(|e, peer| {
///     assert_eq!(e, Error::NONE);
///     let peer = peer.unwrap();
///     peer.async_write_some(&b"hello"[..], |e, n| assert_eq!((e, n), (Error::NONE, 5)));
/// });
/// let client = TcpStream::open(&ctx, socket2::Domain::IPV4).unwrap();
/// let c = client.clone();
/// client.async_connect(listener.local_addr().unwrap(), move |e| {
///     assert_eq!(e, Error::NONE);
///     c.async_read_some(vec![0u8; 16], |e, n, buf| assert_eq!((e, &buf[..n]), (Error::NONE, &b"hello"[..])));
/// });
/// ctx.run();
/// ```
#[derive(Clone)]
pub struct TcpListener {
    b: Base,
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener").field("local", &self.local_addr().ok()).field("open", &self.is_open()).finish()
    }
}

impl TcpListener {
    /// Binds to `addr` with `SO_REUSEADDR` (as Asio's acceptor does) and
    /// listens with the system's largest backlog (`SOMAXCONN`).
    pub fn bind(ex: &Executor, addr: SocketAddr) -> io::Result<TcpListener> {
        Self::bind_with_backlog(ex, addr, libc::SOMAXCONN)
    }

    /// As [`bind`](Self::bind), with the listen backlog given.
    ///
    /// On a simulated context the listener is one of the simulated
    /// network's, on any address (see [`crate::sim`]).
    pub fn bind_with_backlog(ex: &Executor, addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
        if let Some(b) = Base::adopt_sim(ex, |world| {
            let l = Listener::new(world.medium(), addr.is_ipv6());
            l.listen(addr, backlog)?;
            Ok(Endpoint::Listener(l))
        }) {
            return Ok(TcpListener { b: b? });
        }
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_reuse_address(true)?;
        sock.bind(&addr.into())?;
        sock.listen(backlog)?;
        Ok(TcpListener { b: Base::adopt(ex, sock, false, false)? })
    }

    /// Takes over a standard listener.
    pub fn from_std(ex: &Executor, l: std::net::TcpListener) -> io::Result<TcpListener> {
        Ok(TcpListener { b: Base::adopt(ex, Socket::from(l), false, false)? })
    }

    /// Takes the listener out of the context as a standard, blocking one.
    /// Pending accepts complete with `OPERATION_ABORTED`.
    pub fn release(&self) -> io::Result<std::net::TcpListener> {
        Ok(self.b.release()?.into())
    }

    /// Accepts a connection. The handler gets the new stream, registered with
    /// the listener's context, or the error and `None`; either way the
    /// listener stays usable (for example after `EMFILE`, when the process
    /// is out of descriptors: the connection waits in the backlog).
    pub fn async_accept<F: FnOnce(Error, Option<TcpStream>) + 'static>(&self, handler: F) -> Operation {
        log::trace!("tcp async_accept");
        self.b.async_accept(move |err, b| handler(err, b.map(|b| TcpStream { b })))
    }

    /// Accepts a connection, blocking (unless `set_nonblocking(true)`). On
    /// a simulated context it never waits (nothing could arrive while the
    /// one thread waited): `WouldBlock` when no connection is pending.
    pub fn accept(&self) -> io::Result<TcpStream> {
        Ok(TcpStream { b: self.b.accept()? })
    }

    socket_common!();

    /// The address listened on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        if let Some(Endpoint::Listener(l)) = self.b.io().endpoint() {
            return l.local_addr();
        }
        ip_addr(self.b.sock()?.local_addr()?)
    }
}

/// A TCP connection (Asio's `ip::tcp::socket`).
///
/// A cheap `Clone` handle, with the rules of [`UdpSocket`](super::UdpSocket):
/// every `async_*` call starts at once and its handler always runs later from
/// the loop; reads queue behind reads and writes behind writes (FIFO); a
/// write is tried at once when nothing is queued; `cancel`, `close`,
/// dropping the last handle and `Operation::cancel` complete pending
/// operations with `OPERATION_ABORTED`; on a closed stream every operation
/// completes with `BAD_DESCRIPTOR`. A read gets `Error::EOF` when the peer
/// has closed its side, and `CONNECTION_RESET` when it reset the connection.
/// Operations on empty buffers complete at once (posted) without I/O.
#[derive(Clone)]
pub struct TcpStream {
    pub(crate) b: Base,
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.local_addr().ok())
            .field("peer", &self.peer_addr().ok())
            .field("open", &self.is_open())
            .finish()
    }
}

impl TcpStream {
    fn adopt(ex: &Executor, sock: Socket) -> io::Result<TcpStream> {
        Ok(TcpStream { b: Base::adopt(ex, sock, false, true)? })
    }

    /// An unconnected stream of `domain` (`Domain::IPV4` or `IPV6`), for
    /// [`async_connect`](Self::async_connect).
    pub fn open(ex: &Executor, domain: Domain) -> io::Result<TcpStream> {
        if let Some(b) = Base::adopt_sim(ex, |world| {
            if domain != Domain::IPV4 && domain != Domain::IPV6 {
                return Err(io::Error::from_raw_os_error(libc::EPROTONOSUPPORT)); // as socket(2) says
            }
            Ok(Endpoint::Stream(Stream::new(world.medium(), domain == Domain::IPV6)))
        }) {
            return Ok(TcpStream { b: b? });
        }
        Self::adopt(ex, Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?)
    }

    /// Binds an [`open`](Self::open)ed stream's local end to `addr` before
    /// [`async_connect`](Self::async_connect) (port 0: a free port), as
    /// Asio's `basic_socket::bind`. Without it a connect picks the address.
    pub fn bind_to(&self, addr: SocketAddr) -> io::Result<()> {
        log::debug!("tcp bind {addr}");
        if let Some(s) = self.sim() {
            return s.bind(addr);
        }
        self.b.sock()?.bind(&addr.into())
    }

    /// Connects to `addr`, blocking.
    ///
    /// On a simulated context it fails with `Unsupported`: a connect takes
    /// virtual time, which passes only while the loop runs, so it could
    /// never finish while the one thread blocked here. Use
    /// [`open`](Self::open) and [`async_connect`](Self::async_connect).
    pub fn connect(ex: &Executor, addr: SocketAddr) -> io::Result<TcpStream> {
        let inner = ex.upgrade().ok_or_else(gone)?;
        if inner.world().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "TcpStream::connect blocks, and on a simulated context virtual time passes only while the loop \
                 runs: use TcpStream::open and async_connect",
            ));
        }
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sock.connect(&addr.into())?;
        Self::adopt(ex, sock)
    }

    /// Takes over a standard stream.
    pub fn from_std(ex: &Executor, s: std::net::TcpStream) -> io::Result<TcpStream> {
        Self::adopt(ex, Socket::from(s))
    }

    /// Takes the stream out of the context as a standard, blocking one.
    /// Pending operations complete with `OPERATION_ABORTED`.
    pub fn release(&self) -> io::Result<std::net::TcpStream> {
        Ok(self.b.release()?.into())
    }

    /// Connects to `addr` without blocking (a real non-blocking connect); the
    /// handler gets `NONE` or the error (`CONNECTION_REFUSED`, ...).
    pub fn async_connect<F: FnOnce(Error) + 'static>(&self, addr: SocketAddr, handler: F) -> Operation {
        log::trace!("tcp async_connect {addr}");
        self.b.async_connect(addr.into(), handler)
    }

    stream_common!();

    socket_common!();

    /// `TCP_NODELAY` (kept, and without effect, on a simulated stream,
    /// whose bytes never wait to be coalesced).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        if let Some(s) = self.sim() {
            return s.set_nodelay(on);
        }
        self.b.sock()?.set_tcp_nodelay(on)
    }

    /// `TCP_NODELAY` as the kernel reports it.
    pub fn nodelay(&self) -> io::Result<bool> {
        if let Some(s) = self.sim() {
            return s.nodelay();
        }
        self.b.sock()?.tcp_nodelay()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        if let Some(s) = self.sim() {
            return s.local_addr();
        }
        ip_addr(self.b.sock()?.local_addr()?)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        if let Some(s) = self.sim() {
            return s.peer_addr();
        }
        ip_addr(self.b.sock()?.peer_addr()?)
    }

    /// Bytes that can be read without blocking.
    pub fn available(&self) -> io::Result<usize> {
        if let Some(s) = self.sim() {
            return s.available();
        }
        self.b.io().available(&*self.b.sock()?)
    }

    /// The simulated stream, on a simulated context (until closed).
    fn sim(&self) -> Option<Rc<Stream>> {
        match self.b.io().endpoint() {
            Some(Endpoint::Stream(s)) => Some(s),
            _ => None,
        }
    }
}
