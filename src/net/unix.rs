//! `UnixListener` and `UnixStream`: Unix-domain stream sockets on the
//! reactor, with the same operations and rules as the TCP types (Asio's
//! `local::stream_protocol`).

use super::WaitType;
use super::base::Base;
use crate::buffer::{ConstBufferSequence, MutableBufferSequence};
use crate::cancel::Operation;
use crate::context::Executor;
use crate::error::Error;
use socket2::{Domain, SockAddr, SockRef, Socket, Type};
use std::fmt;
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::SocketAddr;
use std::path::Path;

fn unix_addr(a: SockAddr) -> io::Result<SocketAddr> {
    a.as_unix().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a Unix-domain address"))
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
        let ex = self.b.executor();
        self.b.async_accept(move |err, sock| match sock.map(|s| UnixStream::adopt(&ex, s)) {
            Some(Ok(stream)) => handler(err, Some(stream)),
            Some(Err(e)) => handler(Error::from(e), None),
            None => handler(err, None),
        })
    }

    /// Accepts a connection, blocking (unless `set_nonblocking(true)`).
    pub fn accept(&self) -> io::Result<UnixStream> {
        let sock = self.b.accept()?;
        UnixStream::adopt(&self.b.executor(), sock)
    }

    /// Waits until a connection is pending (`Read`) or an error is.
    pub fn async_wait<F: FnOnce(Error) + 'static>(&self, what: WaitType, handler: F) -> Operation {
        self.b.async_wait(what, handler)
    }

    /// The address listened on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        unix_addr(self.b.sock()?.local_addr()?)
    }

    /// The executor of the listener's context.
    pub fn executor(&self) -> Executor {
        self.b.executor()
    }

    /// With `true`, [`accept`](Self::accept) returns `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&self, yes: bool) -> io::Result<()> {
        self.b.set_nonblocking(yes)
    }

    /// Completes every pending accept with `OPERATION_ABORTED`.
    pub fn cancel(&self) -> io::Result<()> {
        self.b.cancel()
    }

    /// Closes the listener; pending accepts complete with `OPERATION_ABORTED`.
    pub fn close(&self) {
        self.b.close()
    }

    /// True until closed.
    pub fn is_open(&self) -> bool {
        self.b.is_open()
    }

    /// Runs `f` on the socket for any option socket2 offers.
    pub fn with_socket2<R>(&self, f: impl FnOnce(SockRef<'_>) -> R) -> io::Result<R> {
        self.b.with_socket2(f)
    }
}

/// A Unix-domain stream connection, with the operations and rules of
/// [`TcpStream`](super::TcpStream).
#[derive(Clone)]
pub struct UnixStream {
    b: Base,
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
        Self::adopt(ex, Socket::new(Domain::UNIX, Type::STREAM, None)?)
    }

    /// Connects to the socket file `path`, blocking.
    pub fn connect(ex: &Executor, path: impl AsRef<Path>) -> io::Result<UnixStream> {
        Self::from_std(ex, std::os::unix::net::UnixStream::connect(path)?)
    }

    /// A connected pair of streams.
    pub fn pair(ex: &Executor) -> io::Result<(UnixStream, UnixStream)> {
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

    /// As [`TcpStream::async_read_some`](super::TcpStream::async_read_some).
    pub fn async_read_some<B, F>(&self, bufs: B, handler: F) -> Operation
    where
        B: MutableBufferSequence + 'static,
        F: FnOnce(Error, usize, B) + 'static,
    {
        self.b.async_read_some(bufs, handler)
    }

    /// As [`TcpStream::async_write_some`](super::TcpStream::async_write_some).
    pub fn async_write_some<B, F>(&self, bufs: B, handler: F) -> Operation
    where
        B: ConstBufferSequence + 'static,
        F: FnOnce(Error, usize) + 'static,
    {
        self.b.async_write_some(bufs, handler)
    }

    /// Waits until the stream is readable, writable or has an error.
    pub fn async_wait<F: FnOnce(Error) + 'static>(&self, what: WaitType, handler: F) -> Operation {
        self.b.async_wait(what, handler)
    }

    /// Reads what is available, blocking; `Error::EOF` at the end.
    pub fn read_some<B: MutableBufferSequence>(&self, bufs: B) -> io::Result<usize> {
        self.b.read_some(bufs)
    }

    /// Writes some of `bufs`, blocking.
    pub fn write_some<B: ConstBufferSequence>(&self, bufs: B) -> io::Result<usize> {
        self.b.write_some(bufs)
    }

    /// Shuts down reading, writing or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.b.shutdown(how)
    }

    /// The local address (unnamed for a pair or a client).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        unix_addr(self.b.sock()?.local_addr()?)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        unix_addr(self.b.sock()?.peer_addr()?)
    }

    /// The executor of the stream's context.
    pub fn executor(&self) -> Executor {
        self.b.executor()
    }

    /// With `true`, the synchronous calls return `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&self, yes: bool) -> io::Result<()> {
        self.b.set_nonblocking(yes)
    }

    /// Completes every pending operation with `OPERATION_ABORTED`.
    pub fn cancel(&self) -> io::Result<()> {
        self.b.cancel()
    }

    /// Closes the stream; pending operations complete with `OPERATION_ABORTED`.
    pub fn close(&self) {
        self.b.close()
    }

    /// True until closed.
    pub fn is_open(&self) -> bool {
        self.b.is_open()
    }

    /// Runs `f` on the socket for any option socket2 offers.
    pub fn with_socket2<R>(&self, f: impl FnOnce(SockRef<'_>) -> R) -> io::Result<R> {
        self.b.with_socket2(f)
    }
}
