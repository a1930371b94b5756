//! `TcpListener` and `TcpStream`: TCP on the reactor, in the style of
//! `UdpSocket` (Asio's `ip::tcp::acceptor` and `ip::tcp::socket`).

use super::WaitType;
use super::base::{Base, ip_addr, require_real, socket_common, stream_common};
use crate::buffer::{ConstBufferSequence, MutableBufferSequence};
use crate::cancel::Operation;
use crate::context::Executor;
use crate::error::Error;
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::io;
use std::net::SocketAddr;

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
    pub fn bind_with_backlog(ex: &Executor, addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
        require_real(ex, "TcpListener")?;
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
        let ex = self.b.executor();
        self.b.async_accept(move |err, sock| match sock.map(|s| TcpStream::adopt(&ex, s)) {
            Some(Ok(stream)) => handler(err, Some(stream)),
            Some(Err(e)) => handler(Error::from(e), None),
            None => handler(err, None),
        })
    }

    /// Accepts a connection, blocking (unless `set_nonblocking(true)`).
    pub fn accept(&self) -> io::Result<TcpStream> {
        let sock = self.b.accept()?;
        TcpStream::adopt(&self.b.executor(), sock)
    }

    socket_common!();

    /// The address listened on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
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
        require_real(ex, "TcpStream")?;
        Self::adopt(ex, Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?)
    }

    /// Connects to `addr`, blocking.
    pub fn connect(ex: &Executor, addr: SocketAddr) -> io::Result<TcpStream> {
        require_real(ex, "TcpStream")?;
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

    /// `TCP_NODELAY`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.b.sock()?.set_tcp_nodelay(on)
    }

    /// `TCP_NODELAY` as the kernel reports it.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.b.sock()?.tcp_nodelay()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        ip_addr(self.b.sock()?.local_addr()?)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        ip_addr(self.b.sock()?.peer_addr()?)
    }

    /// Bytes that can be read without blocking.
    pub fn available(&self) -> io::Result<usize> {
        self.b.io().available(&*self.b.sock()?)
    }
}
