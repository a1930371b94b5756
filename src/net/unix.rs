//! `UnixListener` and `UnixStream`: Unix-domain stream sockets on the
//! reactor, with the same operations and rules as the TCP types (Asio's
//! `local::stream_protocol`); `UnixDatagram`, with those of `UdpSocket`
//! (Asio's `local::datagram_protocol`).

use super::base::{Base, datagram_common, require_real, socket_common, stream_common};
use super::{MessageFlags, WaitType};
use crate::buffer::{ConstBufferSequence, MutableBufferSequence, const_slices, mut_slices};
use crate::cancel::Operation;
use crate::context::Executor;
use crate::error::Error;
use crate::op::Io;
use crate::sys::Readiness;
use socket2::{Domain, SockAddr, Socket, Type};
use std::fmt;
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::SocketAddr;
use std::path::Path;

/// A Unix-domain address as std has it: a pathname, an abstract name
/// (Linux), or unnamed (an unbound socket, one of a pair).
fn unix_addr(a: SockAddr) -> io::Result<SocketAddr> {
    if let Some(a) = a.as_unix() {
        return Ok(a);
    }
    #[cfg(target_os = "linux")]
    if let Some(name) = a.as_abstract_namespace() {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name);
    }
    if a.is_unix() || a.family() == 0 {
        // No path: unnamed (a sender that never bound reports no address).
        return SocketAddr::from_pathname("");
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "not a Unix-domain address"))
}

/// A listening Unix-domain stream socket.
///
/// A cheap `Clone` handle with the rules of
/// [`TcpListener`](super::TcpListener). The socket file is not removed on
/// close (as with std and Asio): remove it yourself.
#[derive(Clone)]
pub struct UnixListener {
    b: Base,
}

impl fmt::Debug for UnixListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixListener").field("local", &self.local_addr().ok()).field("open", &self.is_open()).finish()
    }
}

impl UnixListener {
    /// Binds to the socket file `path` and listens (backlog `SOMAXCONN`).
    pub fn bind(ex: &Executor, path: impl AsRef<Path>) -> io::Result<UnixListener> {
        require_real(ex, "UnixListener")?;
        let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        sock.bind(&SockAddr::unix(path)?)?;
        sock.listen(libc::SOMAXCONN)?;
        Ok(UnixListener { b: Base::adopt(ex, sock, false, false)? })
    }

    /// Takes over a standard listener.
    pub fn from_std(ex: &Executor, l: std::os::unix::net::UnixListener) -> io::Result<UnixListener> {
        Ok(UnixListener { b: Base::adopt(ex, Socket::from(OwnedFd::from(l)), false, false)? })
    }

    /// Accepts a connection; as [`TcpListener::async_accept`](super::TcpListener::async_accept).
    pub fn async_accept<F: FnOnce(Error, Option<UnixStream>) + 'static>(&self, handler: F) -> Operation {
        log::trace!("unix async_accept");
        self.b.async_accept(move |err, b| handler(err, b.map(|b| UnixStream { b })))
    }

    /// Accepts a connection, blocking (unless `set_nonblocking(true)`).
    pub fn accept(&self) -> io::Result<UnixStream> {
        Ok(UnixStream { b: self.b.accept()? })
    }

    socket_common!();

    /// The address listened on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        unix_addr(self.b.sock()?.local_addr()?)
    }
}

/// A Unix-domain stream connection, with the operations and rules of
/// [`TcpStream`](super::TcpStream).
#[derive(Clone)]
pub struct UnixStream {
    pub(crate) b: Base,
}

impl fmt::Debug for UnixStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixStream").field("open", &self.is_open()).finish()
    }
}

impl UnixStream {
    fn adopt(ex: &Executor, sock: Socket) -> io::Result<UnixStream> {
        Ok(UnixStream { b: Base::adopt(ex, sock, false, true)? })
    }

    /// An unconnected stream, for [`async_connect`](Self::async_connect).
    pub fn open(ex: &Executor) -> io::Result<UnixStream> {
        require_real(ex, "UnixStream")?;
        Self::adopt(ex, Socket::new(Domain::UNIX, Type::STREAM, None)?)
    }

    /// Connects to the socket file `path`, blocking.
    pub fn connect(ex: &Executor, path: impl AsRef<Path>) -> io::Result<UnixStream> {
        require_real(ex, "UnixStream")?;
        Self::from_std(ex, std::os::unix::net::UnixStream::connect(path)?)
    }

    /// A connected pair of streams.
    pub fn pair(ex: &Executor) -> io::Result<(UnixStream, UnixStream)> {
        require_real(ex, "UnixStream")?;
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        Ok((Self::from_std(ex, a)?, Self::from_std(ex, b)?))
    }

    /// Takes over a standard stream.
    pub fn from_std(ex: &Executor, s: std::os::unix::net::UnixStream) -> io::Result<UnixStream> {
        Self::adopt(ex, Socket::from(OwnedFd::from(s)))
    }

    /// Takes the stream out of the context as a standard, blocking one.
    pub fn release(&self) -> io::Result<std::os::unix::net::UnixStream> {
        Ok(OwnedFd::from(self.b.release()?).into())
    }

    /// Connects to the socket file `path` without blocking.
    pub fn async_connect<F: FnOnce(Error) + 'static>(&self, path: impl AsRef<Path>, handler: F) -> Operation {
        match SockAddr::unix(path) {
            Ok(addr) => self.b.async_connect(addr, handler),
            // A path too long for a socket address: reported like any failure.
            Err(e) => self.b.async_connect_failed(Error::from(e), handler),
        }
    }

    stream_common!();

    socket_common!();

    /// The local address (unnamed for a pair or a client).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        unix_addr(self.b.sock()?.local_addr()?)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        unix_addr(self.b.sock()?.peer_addr()?)
    }
}

/// A Unix-domain datagram socket, with the operations and rules of
/// [`UdpSocket`](super::UdpSocket) (S1–S8), addressed by socket files.
/// Datagrams are never read ahead on it.
///
/// Its handlers get the errors of [`UdpSocket`'s](super::UdpSocket#errors),
/// read for socket files: `CONNECTION_REFUSED` when nobody is bound to the
/// file, `ENOENT` (as [`Error::from_raw_os_error`]) when there is no such
/// file, and `MESSAGE_SIZE` for a datagram larger than the send buffer.
#[derive(Clone)]
pub struct UnixDatagram {
    b: Base,
}

impl fmt::Debug for UnixDatagram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixDatagram").field("local", &self.local_addr().ok()).field("open", &self.is_open()).finish()
    }
}

fn unix_dest(path: impl AsRef<Path>) -> Result<SockAddr, Error> {
    SockAddr::unix(path).map_err(Error::from)
}

impl UnixDatagram {
    fn adopt(ex: &Executor, sock: Socket) -> io::Result<UnixDatagram> {
        Ok(UnixDatagram { b: Base::adopt(ex, sock, false, false)? })
    }

    /// A socket bound to the socket file `path`.
    pub fn bind(ex: &Executor, path: impl AsRef<Path>) -> io::Result<UnixDatagram> {
        require_real(ex, "UnixDatagram")?;
        let sock = Socket::new(Domain::UNIX, Type::DGRAM, None)?;
        sock.bind(&SockAddr::unix(path)?)?;
        Self::adopt(ex, sock)
    }

    /// An unbound socket (its datagrams carry no sender name).
    pub fn unbound(ex: &Executor) -> io::Result<UnixDatagram> {
        require_real(ex, "UnixDatagram")?;
        Self::adopt(ex, Socket::new(Domain::UNIX, Type::DGRAM, None)?)
    }

    /// A connected pair of sockets.
    pub fn pair(ex: &Executor) -> io::Result<(UnixDatagram, UnixDatagram)> {
        require_real(ex, "UnixDatagram")?;
        let (a, b) = std::os::unix::net::UnixDatagram::pair()?;
        Ok((Self::from_std(ex, a)?, Self::from_std(ex, b)?))
    }

    /// Takes over a standard socket.
    pub fn from_std(ex: &Executor, s: std::os::unix::net::UnixDatagram) -> io::Result<UnixDatagram> {
        Self::adopt(ex, Socket::from(OwnedFd::from(s)))
    }

    /// Takes the socket out of the context as a standard, blocking one.
    pub fn release(&self) -> io::Result<std::os::unix::net::UnixDatagram> {
        Ok(OwnedFd::from(self.b.release()?).into())
    }

    /// Sets the default peer.
    pub fn connect(&self, path: impl AsRef<Path>) -> io::Result<()> {
        self.b.sock()?.connect(&SockAddr::unix(path)?)
    }

    /// As [`connect`](Self::connect), with the result posted to `handler`.
    pub fn async_connect<F: FnOnce(Error) + 'static>(&self, path: impl AsRef<Path>, handler: F) -> Operation {
        let err = match (self.b.sock(), unix_dest(path)) {
            (Ok(s), Ok(addr)) => s.connect(&addr).err().map_or(Error::NONE, Error::from),
            (Err(e), _) => Error::from(e),
            (_, Err(e)) => e,
        };
        self.b.async_connect_failed(err, handler)
    }

    /// The local address (unnamed when unbound).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        unix_addr(self.b.sock()?.local_addr()?)
    }

    /// The connected peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        unix_addr(self.b.sock()?.peer_addr()?)
    }

    datagram_common!();

    /// Sends `bufs` as one datagram to the socket file `path`.
    ///
    /// When the receiver's queue is full the send waits, as a blocking
    /// `sendto` does. The kernel gives an unconnected sender no notice when
    /// that queue drains (the socket stays writable), so once writability
    /// has failed to help three times in a row the socket's sends retry on a
    /// timer, 1 ms and doubling while nothing leaves, up to 64 ms, in order.
    /// A connected socket (`connect`, then `async_send`) is woken by the
    /// kernel as soon as there is room.
    #[inline]
    pub fn async_send_to<B, F>(&self, bufs: B, path: impl AsRef<Path>, handler: F) -> Operation
    where
        B: ConstBufferSequence + 'static,
        F: FnOnce(Error, usize) + 'static,
    {
        self.async_send_to_with_flags(bufs, path, MessageFlags::NONE, handler)
    }

    /// [`async_send_to`](Self::async_send_to) with message flags.
    #[inline]
    pub fn async_send_to_with_flags<B, F>(
        &self,
        bufs: B,
        path: impl AsRef<Path>,
        flags: MessageFlags,
        handler: F,
    ) -> Operation
    where
        B: ConstBufferSequence + 'static,
        F: FnOnce(Error, usize) + 'static,
    {
        match unix_dest(path) {
            Ok(dest) => self.b.start_send(bufs, Some(&dest), flags.bits(), handler),
            // A path too long for a socket address: an error in the handler.
            Err(e) => self.b.async_connect_failed(e, move |e| handler(e, 0)),
        }
    }

    /// Receives one datagram and its sender (`None` on an error).
    #[inline]
    pub fn async_receive_from<B, F>(&self, bufs: B, handler: F) -> Operation
    where
        B: MutableBufferSequence + 'static,
        F: FnOnce(Error, usize, B, Option<SocketAddr>) + 'static,
    {
        self.async_receive_from_with_flags(bufs, MessageFlags::NONE, handler)
    }

    /// [`async_receive_from`](Self::async_receive_from) with message flags.
    #[inline]
    pub fn async_receive_from_with_flags<B, F>(&self, bufs: B, flags: MessageFlags, handler: F) -> Operation
    where
        B: MutableBufferSequence + 'static,
        F: FnOnce(Error, usize, B, Option<SocketAddr>) + 'static,
    {
        self.b.start_recv_from_any(bufs, flags, move |e, n, b, from| {
            let from = if e.is_ok() { from.and_then(|a| unix_addr(a).ok()) } else { None };
            handler(e, n, b, from)
        })
    }

    socket_common!();

    /// Sends one datagram to the connected peer, blocking.
    pub fn send<B: ConstBufferSequence>(&self, bufs: B) -> io::Result<usize> {
        let slices = const_slices(&bufs).ok_or_else(|| io::Error::from(Error::INVALID_ARGUMENT))?;
        self.b.blocking(Readiness::Write, || self.b.io().send(&slices, None, 0))
    }

    /// Sends one datagram to the socket file `path`, blocking.
    pub fn send_to<B: ConstBufferSequence>(&self, bufs: B, path: impl AsRef<Path>) -> io::Result<usize> {
        let slices = const_slices(&bufs).ok_or_else(|| io::Error::from(Error::INVALID_ARGUMENT))?;
        let dest = SockAddr::unix(path)?;
        self.b.blocking(Readiness::Write, || self.b.io().send(&slices, Some(&dest), 0))
    }

    /// Receives one datagram, blocking; returns its (possibly truncated) length.
    pub fn receive<B: MutableBufferSequence>(&self, mut bufs: B) -> io::Result<usize> {
        let mut slices = mut_slices(&mut bufs).ok_or_else(|| io::Error::from(Error::INVALID_ARGUMENT))?;
        self.b.blocking(Readiness::Read, || self.b.io().recv(&mut slices, 0, None))
    }

    /// Receives one datagram and its sender, blocking.
    pub fn receive_from<B: MutableBufferSequence>(&self, mut bufs: B) -> io::Result<(usize, SocketAddr)> {
        let mut slices = mut_slices(&mut bufs).ok_or_else(|| io::Error::from(Error::INVALID_ARGUMENT))?;
        let (n, from) = self.b.blocking(Readiness::Read, || self.b.io().recv_from_any(&mut slices, 0))?;
        Ok((n, unix_addr(from)?))
    }

    /// Size of the next datagram waiting (0 when none).
    pub fn available(&self) -> io::Result<usize> {
        self.b.io().available(&*self.b.sock()?)
    }

    /// Shuts down reading, writing or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.b.shutdown(how)
    }
}
