//! What every socket type shares: the handle that closes the socket with its
//! last clone, the link to the context, queueing, readiness waits, the
//! blocking form of synchronous calls, cancel and close.

use super::{MessageFlags, WaitType};
use crate::buffer::{ConstBufferSequence, MutableBufferSequence, const_len, const_slices, mut_len, mut_slices};
use crate::cancel::Operation;
use crate::context::{Executor, Inner};
use crate::error::Error;
use crate::op::{
    AcceptOp, Accepted, Completion, Io, RecvFromOp, RecvMsgOp, RecvOp, SendHow, SendOp, SocketOp, WaitOp,
    recv_from_now, recv_msg_now, recv_now, send_now,
};
use crate::reactor::{Attempt, Dir, IoObject, retry_delay};
use crate::sim::net::Endpoint;
use crate::sim::world::World;
use crate::sys::msg::MsgInfo;
use crate::sys::{self, Readiness};
use socket2::{SockAddr, SockRef, Socket};
use std::cell::Cell;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;

/// Closes the socket when the last clone of the socket's handle goes.
struct Handle {
    io: Rc<IoObject>,
    /// The context the socket belongs to.
    ctx: std::rc::Weak<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        drop(self.io.detach());
    }
}

/// The shared part of a socket type: a cheap `Clone` handle on the socket's
/// registration.
#[derive(Clone)]
pub(crate) struct Base {
    h: Rc<Handle>,
}

/// A handle on a socket that does not keep it open (composed operations
/// hold this, so that dropping the user's last handle still closes it, S4).
#[derive(Clone)]
pub(crate) struct WeakBase {
    h: std::rc::Weak<Handle>,
}

impl WeakBase {
    pub(crate) fn upgrade(&self) -> Option<Base> {
        self.h.upgrade().map(|h| Base { h })
    }
}

pub(crate) fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the io context was dropped")
}

/// Fails with `Unsupported` on a simulated context, before anything real
/// (a socket, a bound port, a socket file) is made; with `NotConnected` when
/// the context is gone.
pub(crate) fn require_real(ex: &Executor, what: &str) -> io::Result<()> {
    ex.upgrade().ok_or_else(gone)?.require_real(what)
}

pub(crate) fn bad_descriptor() -> io::Error {
    io::Error::from(Error::BAD_DESCRIPTOR)
}

/// An IP socket address from a socket2 one.
pub(crate) fn ip_addr(a: SockAddr) -> io::Result<SocketAddr> {
    a.as_socket().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP address"))
}

impl Base {
    /// Registers `sock` (made non-blocking here) with `ex`'s context.
    /// `readahead`: receives may read a datagram ahead (UDP only); `stream`:
    /// writes may be partial.
    pub(crate) fn adopt(ex: &Executor, sock: Socket, readahead: bool, stream: bool) -> io::Result<Base> {
        let inner = ex.upgrade().ok_or_else(gone)?;
        // Taking over a real descriptor (`from_std` and the like).
        inner.require_real("a socket")?;
        sock.set_nonblocking(true)?;
        let io = IoObject::new(&inner, sock, readahead);
        io.stream.set(stream);
        Ok(Base { h: Rc::new(Handle { io, ctx: Rc::downgrade(&inner) }) })
    }

    /// `endpoint` in `inner`'s (simulated) context.
    fn on_sim(inner: &Rc<Inner>, endpoint: Endpoint) -> Base {
        let stream = matches!(endpoint, Endpoint::Stream(_));
        let io = IoObject::new_sim(inner, endpoint);
        io.stream.set(stream);
        Base { h: Rc::new(Handle { io, ctx: Rc::downgrade(inner) }) }
    }

    pub(crate) fn downgrade(&self) -> WeakBase {
        WeakBase { h: Rc::downgrade(&self.h) }
    }

    pub(crate) fn io(&self) -> &Rc<IoObject> {
        &self.h.io
    }

    /// The socket's context, while it exists.
    #[inline]
    pub(crate) fn context(&self) -> Option<Rc<Inner>> {
        self.h.ctx.upgrade()
    }

    /// The socket, or `BAD_DESCRIPTOR` once closed (`Unsupported` for a
    /// simulated socket, which has no operating-system socket to offer).
    pub(crate) fn sock(&self) -> io::Result<Rc<Socket>> {
        match self.io().socket() {
            Some(s) => Ok(s),
            None if self.io().is_open() => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a simulated socket has no operating-system socket (options, shutdown, release, GSO)",
            )),
            None => Err(bad_descriptor()),
        }
    }

    /// `BAD_DESCRIPTOR` once closed (a real or a simulated socket).
    pub(crate) fn check_open(&self) -> io::Result<()> {
        if self.io().is_open() { Ok(()) } else { Err(bad_descriptor()) }
    }

    /// A simulated socket (its endpoint made by `make`) in `ex`'s context,
    /// or `None` when the context is a real one.
    pub(crate) fn adopt_sim(
        ex: &Executor,
        make: impl FnOnce(&Rc<World>) -> io::Result<Endpoint>,
    ) -> Option<io::Result<Base>> {
        let inner = match ex.upgrade() {
            Some(inner) => inner,
            None => return Some(Err(gone())),
        };
        let world = inner.world()?.clone();
        Some(make(&world).map(|endpoint| Base::on_sim(&inner, endpoint)))
    }

    /// Takes the socket out of the context, blocking again. Pending
    /// operations complete with `OPERATION_ABORTED`.
    pub(crate) fn release(&self) -> io::Result<Socket> {
        self.sock()?; // a simulated socket has none to give
        let sock = self.io().detach().ok_or_else(bad_descriptor)?;
        let sock = Rc::try_unwrap(sock)
            .map_err(|_| io::Error::other("socket is in use inside with_socket2; it will close"))?;
        sock.set_nonblocking(false)?;
        Ok(sock)
    }

    pub(crate) fn executor(&self) -> Executor {
        Executor { inner: self.h.ctx.clone() }
    }

    /// The context, unless it is gone or being dropped (then the handler of
    /// an operation about to start is dropped unrun).
    #[inline]
    pub(crate) fn live_context(&self) -> Option<Rc<Inner>> {
        let inner = self.context().filter(|i| !i.is_dropping());
        if inner.is_none() {
            log::debug!("operation started after the context was dropped: handler dropped unrun");
        }
        inner
    }

    /// Queues an operation that could not complete at once.
    #[inline]
    pub(crate) fn enqueue(&self, inner: &Rc<Inner>, op: Rc<dyn SocketOp>, dir: Dir) -> Operation {
        let handle = Operation::pending(inner, Rc::downgrade(&op));
        self.io().enqueue(&**inner, op, dir);
        handle
    }

    /// Completes a new operation at once with `err`, through the queue.
    pub(crate) fn complete_now(&self, inner: &Rc<Inner>, op: Rc<dyn Completion>, err: Error) -> Operation {
        inner.add_work();
        let handle = Operation::new(inner, &op);
        inner.complete(op, err, 0);
        handle
    }

    /// Waits until the socket is readable, writable or has an error, without
    /// transferring data. Readiness that already holds is reported.
    pub(crate) fn async_wait<F: FnOnce(Error) + 'static>(&self, what: WaitType, handler: F) -> Operation {
        let Some(inner) = self.live_context() else {
            return Operation::detached();
        };
        match what {
            WaitType::Read => self.enqueue(&inner, Rc::new(WaitOp::new(handler)), Dir::Read),
            WaitType::Write => self.enqueue(&inner, Rc::new(WaitOp::new(handler)), Dir::Write),
            WaitType::Error => {
                let op: Rc<dyn Completion> = Rc::new(WaitOp::new(handler));
                let handle = Operation::new(&inner, &op);
                self.io().start_error_wait(&*inner, op);
                handle
            }
        }
    }

    /// Runs a synchronous call, blocking on `poll(2)` while it would block
    /// unless `set_nonblocking(true)`.
    ///
    /// On a simulated socket the call is made once: nothing could arrive
    /// while the one thread of the simulation waited, so it returns
    /// `WouldBlock` instead of waiting for ever.
    pub(crate) fn blocking<R>(&self, what: Readiness, mut f: impl FnMut() -> io::Result<R>) -> io::Result<R> {
        if self.io().endpoint().is_some() {
            return f();
        }
        let sock = self.sock()?;
        // Waits after which the call still would block.
        let mut futile: u32 = 0;
        let mut read_closed = false;
        loop {
            match f() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !self.io().user_nonblocking.get() => {
                    if read_closed {
                        // Readable for good, yet nothing to read (a datagram
                        // socket shut down for reading): a blocking `recv`
                        // returns at once too, and polling again would spin.
                        return Err(Error::EOF.into());
                    }
                    if futile > 0 && matches!(what, Readiness::Write) {
                        // Writable, yet refusing (an unconnected Unix datagram
                        // socket whose receiver is full: no readiness will
                        // say when it drains). Sleep rather than spin, 1 ms
                        // and twice as long each time, at most 64 ms.
                        std::thread::sleep(retry_delay(futile - 1));
                    }
                    read_closed = sys::wait_fd(sock.as_raw_fd(), what)?;
                    futile += 1;
                }
                r => return r,
            }
        }
    }

    pub(crate) fn set_nonblocking(&self, yes: bool) -> io::Result<()> {
        self.check_open()?;
        self.io().user_nonblocking.set(yes);
        Ok(())
    }

    pub(crate) fn nonblocking(&self) -> bool {
        self.io().user_nonblocking.get()
    }

    /// Completes every pending operation with `OPERATION_ABORTED`.
    pub(crate) fn cancel(&self) -> io::Result<()> {
        self.check_open()?;
        let inner = self.context().ok_or_else(gone)?;
        let n = self.io().cancel_all(&*inner);
        log::debug!("cancel: {n} operations aborted");
        Ok(())
    }

    pub(crate) fn close(&self) {
        drop(self.io().detach());
    }

    pub(crate) fn is_open(&self) -> bool {
        self.io().is_open()
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if let Some(Endpoint::Stream(s)) = self.io().endpoint() {
            return s.shutdown(how);
        }
        self.sock()?.shutdown(how)
    }

    pub(crate) fn with_socket2<R>(&self, f: impl FnOnce(SockRef<'_>) -> R) -> io::Result<R> {
        let sock = self.sock()?;
        Ok(f(SockRef::from(&*sock)))
    }
}

/// A stream read that returned no bytes into a non-empty buffer: the peer
/// closed its side.
fn eof(err: Error, n: usize) -> Error {
    if err.is_ok() && n == 0 { Error::EOF } else { err }
}

/// Stream and listener operations, shared by the TCP and Unix socket types.
impl Base {
    /// Reads what is available (at least one byte) into `bufs`; EOF when the
    /// peer closed its side. Empty buffers complete at once with no I/O.
    pub(crate) fn async_read_some<B, F>(&self, mut bufs: B, handler: F) -> Operation
    where
        B: MutableBufferSequence + 'static,
        F: FnOnce(Error, usize, B) + 'static,
    {
        let Some(inner) = self.live_context() else {
            return Operation::detached();
        };
        // Empty buffers: no I/O, but a closed stream still says so (S5).
        if mut_len(&mut bufs) == 0 {
            let err = if self.is_open() { Error::NONE } else { Error::BAD_DESCRIPTOR };
            inner.post_done(err, 0, move || handler(err, 0, bufs));
            return Operation::detached();
        }
        let io = self.io();
        let (err, n) = match io.try_now(Dir::Read, || recv_now(&**io, &mut bufs, 0, None)) {
            Attempt::Done((err, n)) => (eof(err, n), n),
            Attempt::Closed => (Error::BAD_DESCRIPTOR, 0),
            Attempt::Later => {
                let h = move |err: Error, n: usize, bufs: B, _: SocketAddr| handler(eof(err, n), n, bufs);
                return self.enqueue(&inner, RecvOp::rc(bufs, 0, false, h), Dir::Read);
            }
        };
        inner.post_done(err, n, move || handler(err, n, bufs));
        Operation::detached()
    }

    /// Writes some of `bufs` (at least one byte unless an error occurs).
    /// Empty buffers complete at once with no I/O.
    pub(crate) fn async_write_some<B, F>(&self, bufs: B, handler: F) -> Operation
    where
        B: ConstBufferSequence + 'static,
        F: FnOnce(Error, usize) + 'static,
    {
        let Some(inner) = self.live_context() else {
            return Operation::detached();
        };
        if const_len(&bufs) == 0 {
            drop(bufs);
            let err = if self.is_open() { Error::NONE } else { Error::BAD_DESCRIPTOR };
            inner.post_done(err, 0, move || handler(err, 0));
            return Operation::detached();
        }
        let io = self.io();
        let (err, n) = match io.try_now(Dir::Write, || send_now(&**io, &bufs, None, 0)) {
            Attempt::Done(r) => r,
            Attempt::Closed => (Error::BAD_DESCRIPTOR, 0),
            Attempt::Later => {
                return self.enqueue(&inner, SendOp::rc(bufs, None, 0, handler), Dir::Write);
            }
        };
        drop(bufs); // before the handler runs, as a queued write does
        inner.post_result(handler, err, n);
        Operation::detached()
    }

    /// Reads what is available into `bufs`, blocking; `Error::EOF` (as an
    /// `io::Error` of kind `UnexpectedEof`) when the peer closed its side.
    pub(crate) fn read_some<B: MutableBufferSequence>(&self, mut bufs: B) -> io::Result<usize> {
        self.check_open()?; // closed: BAD_DESCRIPTOR, even for empty buffers
        if mut_len(&mut bufs) == 0 {
            return Ok(0);
        }
        let mut slices = mut_slices(&mut bufs).ok_or_else(|| io::Error::from(Error::INVALID_ARGUMENT))?;
        let n = self.blocking(Readiness::Read, || self.io().recv(&mut slices, 0, None))?;
        if n == 0 { Err(Error::EOF.into()) } else { Ok(n) }
    }

    /// Writes some of `bufs`, blocking.
    pub(crate) fn write_some<B: ConstBufferSequence>(&self, bufs: B) -> io::Result<usize> {
        let slices = const_slices(&bufs).ok_or_else(|| io::Error::from(Error::INVALID_ARGUMENT))?;
        if slices.iter().all(|s| s.is_empty()) {
            self.check_open()?; // closed: BAD_DESCRIPTOR, even for empty buffers
            return Ok(0);
        }
        self.blocking(Readiness::Write, || self.io().send(&slices, None, 0))
    }

    /// Starts a non-blocking connect; the handler gets its outcome.
    pub(crate) fn async_connect<F: FnOnce(Error) + 'static>(&self, addr: SockAddr, handler: F) -> Operation {
        let Some(inner) = self.live_context() else {
            return Operation::detached();
        };
        let Some(sock) = self.io().socket() else {
            return self.sim_connect(&inner, addr, handler);
        };
        match sock.connect(&addr) {
            Ok(()) => self.complete_now(&inner, Rc::new(WaitOp::new(handler)), Error::NONE),
            // In progress. (EAGAIN, from a Unix socket whose listener's backlog
            // is full, started nothing: no event would ever end it. It is
            // reported as the error it is, as std and mio do.)
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                self.enqueue(&inner, Rc::new(WaitOp::connect(handler)), Dir::Write)
            }
            Err(e) => self.complete_now(&inner, Rc::new(WaitOp::new(handler)), Error::from(e)),
        }
    }

    /// A connect on a simulated stream: the SYN leaves now, and the
    /// outcome comes as the kernel's does, with writability.
    #[cold]
    fn sim_connect<F: FnOnce(Error) + 'static>(&self, inner: &Rc<Inner>, addr: SockAddr, handler: F) -> Operation {
        let started = match (self.io().endpoint(), addr.as_socket()) {
            (Some(Endpoint::Stream(s)), Some(to)) => s.connect(to).map_err(Error::from),
            (Some(_), _) => Err(Error::INVALID_ARGUMENT),
            (None, _) => Err(Error::BAD_DESCRIPTOR),
        };
        match started {
            Ok(()) => self.enqueue(inner, Rc::new(WaitOp::connect(handler)), Dir::Write),
            Err(e) => self.complete_now(inner, Rc::new(WaitOp::new(handler)), e),
        }
    }

    /// Posts `err` to a connect that could not start.
    pub(crate) fn async_connect_failed<F: FnOnce(Error) + 'static>(&self, err: Error, handler: F) -> Operation {
        match self.live_context() {
            Some(inner) => self.complete_now(&inner, Rc::new(WaitOp::new(handler)), err),
            None => Operation::detached(),
        }
    }

    /// Accepts a connection: the handler gets it, registered with this
    /// socket's context as a stream, or the error with `None`.
    pub(crate) fn async_accept<F: FnOnce(Error, Option<Base>) + 'static>(&self, handler: F) -> Operation {
        let Some(inner) = self.live_context() else {
            return Operation::detached();
        };
        let ex = self.executor();
        let handler = move |err: Error, a: Option<Accepted>| match a.map(|a| Base::adopt_accepted(&ex, a)) {
            Some(Ok(b)) => handler(err, Some(b)),
            Some(Err(e)) => handler(Error::from(e), None),
            None => handler(err, None),
        };
        let io = self.io();
        let (err, accepted) = match io.try_now(Dir::Read, || io.accept()) {
            Attempt::Done(Ok(a)) => (Error::NONE, Some(a)),
            Attempt::Done(Err(e)) => (e, None),
            Attempt::Closed => (Error::BAD_DESCRIPTOR, None),
            Attempt::Later => return self.enqueue(&inner, Rc::new(AcceptOp::new(handler)), Dir::Read),
        };
        inner.post_done(err, 0, move || handler(err, accepted));
        Operation::detached()
    }

    /// Accepts a connection, blocking; it joins this socket's context.
    pub(crate) fn accept(&self) -> io::Result<Base> {
        self.check_open()?;
        let a = self.blocking(Readiness::Read, || match self.io().accept() {
            Some(Ok(a)) => Ok(a),
            Some(Err(e)) => Err(e.into()),
            None => Err(io::ErrorKind::WouldBlock.into()),
        })?;
        Base::adopt_accepted(&self.executor(), a)
    }

    /// An accepted connection as a stream of `ex`'s context.
    fn adopt_accepted(ex: &Executor, a: Accepted) -> io::Result<Base> {
        match a {
            Accepted::Os(sock) => Base::adopt(ex, sock, false, true),
            Accepted::Sim(stream) => {
                let inner = ex.upgrade().ok_or_else(gone)?;
                Ok(Base::on_sim(&inner, Endpoint::Stream(stream)))
            }
        }
    }

    // ---- datagram operations (UDP and Unix datagrams)

    /// Starts a send: performed at once when the socket allows (S1), its
    /// completion posted without allocating an operation; otherwise queued.
    /// `dest` is borrowed: the address is copied only if the send must wait.
    /// `how`: message flags (`i32`, a plain send, which may be deferred to
    /// the end of the pass and batched), or control messages (`SendInfo`,
    /// a send with metadata, which goes alone).
    #[inline]
    pub(crate) fn start_send<B, F, M: SendHow>(&self, bufs: B, dest: Option<&SockAddr>, how: M, handler: F) -> Operation
    where
        B: ConstBufferSequence + 'static,
        F: FnOnce(Error, usize) + 'static,
    {
        let Some(inner) = self.live_context() else {
            return Operation::detached();
        };
        let io = self.io();
        let now = if M::DEFERRABLE && io.defer_send(inner.pass()) {
            Attempt::Later
        } else {
            io.try_now(Dir::Write, || how.send_now(&**io, &bufs, dest))
        };
        let (err, n) = match now {
            Attempt::Done(r) => r,
            Attempt::Closed => (Error::BAD_DESCRIPTOR, 0),
            Attempt::Later => {
                let op = SendOp::rc(bufs, dest.cloned(), how, handler);
                return self.enqueue(&inner, op, Dir::Write);
            }
        };
        drop(bufs); // before the handler runs, as a queued send does
        inner.post_result(handler, err, n);
        Operation::detached()
    }

    /// Starts a receive: performed at once when a datagram may be waiting,
    /// otherwise queued.
    #[inline]
    pub(crate) fn start_recv<B, F>(&self, mut bufs: B, flags: MessageFlags, want_from: bool, handler: F) -> Operation
    where
        B: MutableBufferSequence + 'static,
        F: FnOnce(Error, usize, B, SocketAddr) + 'static,
    {
        let Some(inner) = self.live_context() else {
            return Operation::detached();
        };
        let io = self.io();
        let from = Cell::new(None);
        let sender = want_from.then_some(&from);
        let (err, n) = match io.try_now(Dir::Read, || recv_now(&**io, &mut bufs, flags.bits(), sender)) {
            Attempt::Done(r) => r,
            Attempt::Closed => (Error::BAD_DESCRIPTOR, 0),
            Attempt::Later => {
                return self.enqueue(&inner, RecvOp::rc(bufs, flags.bits(), want_from, handler), Dir::Read);
            }
        };
        let from = from.get().unwrap_or_else(sys::unspecified_addr);
        inner.post_done(err, n, move || handler(err, n, bufs, from));
        Operation::detached()
    }
}

impl Base {
    /// Starts a receive with metadata (`recvmsg` with control messages):
    /// performed at once when a datagram may be waiting, otherwise queued.
    /// Never batched: each gets its own metadata.
    pub(crate) fn start_recv_msg<B, F>(&self, mut bufs: B, flags: MessageFlags, handler: F) -> Operation
    where
        B: MutableBufferSequence + 'static,
        F: FnOnce(Error, MsgInfo, B) + 'static,
    {
        let Some(inner) = self.live_context() else {
            return Operation::detached();
        };
        let io = self.io();
        let (err, info) = match io.try_now(Dir::Read, || recv_msg_now(&**io, &mut bufs, flags.bits())) {
            Attempt::Done(r) => r,
            Attempt::Closed => (Error::BAD_DESCRIPTOR, MsgInfo::default()),
            Attempt::Later => {
                return self.enqueue(&inner, RecvMsgOp::rc(bufs, flags.bits(), handler), Dir::Read);
            }
        };
        inner.post_done(err, info.len, move || handler(err, info, bufs));
        Operation::detached()
    }

    /// Starts a receive that reports the sender in any address family.
    pub(crate) fn start_recv_from_any<B, F>(&self, mut bufs: B, flags: MessageFlags, handler: F) -> Operation
    where
        B: MutableBufferSequence + 'static,
        F: FnOnce(Error, usize, B, Option<SockAddr>) + 'static,
    {
        let Some(inner) = self.live_context() else {
            return Operation::detached();
        };
        let io = self.io();
        let (err, n, from) = match io.try_now(Dir::Read, || recv_from_now(&**io, &mut bufs, flags.bits())) {
            Attempt::Done(r) => r,
            Attempt::Closed => (Error::BAD_DESCRIPTOR, 0, None),
            Attempt::Later => {
                return self.enqueue(&inner, Rc::new(RecvFromOp::new(bufs, flags.bits(), handler)), Dir::Read);
            }
        };
        inner.post_done(err, n, move || handler(err, n, bufs, from));
        Operation::detached()
    }
}

/// The methods every socket type has, delegated to its `b: Base`.
macro_rules! socket_common {
    () => {
        /// Waits until the socket is readable, writable or has an error,
        /// without transferring data. Readiness that already holds is
        /// reported.
        pub fn async_wait<F: FnOnce(Error) + 'static>(&self, what: WaitType, handler: F) -> Operation {
            self.b.async_wait(what, handler)
        }

        /// The executor of the socket's context.
        pub fn executor(&self) -> Executor {
            self.b.executor()
        }

        /// With `true`, the synchronous calls return `WouldBlock` instead of
        /// waiting. Asynchronous operations are not affected.
        pub fn set_nonblocking(&self, yes: bool) -> io::Result<()> {
            self.b.set_nonblocking(yes)
        }

        /// The mode set by `set_nonblocking`.
        pub fn nonblocking(&self) -> bool {
            self.b.nonblocking()
        }

        /// Completes every pending operation with `OPERATION_ABORTED`
        /// (through the queue). Errs with `BAD_DESCRIPTOR` when closed.
        pub fn cancel(&self) -> io::Result<()> {
            self.b.cancel()
        }

        /// Closes the socket; pending operations complete with
        /// `OPERATION_ABORTED`. Closing a closed socket does nothing.
        pub fn close(&self) {
            self.b.close()
        }

        /// True until closed.
        pub fn is_open(&self) -> bool {
            self.b.is_open()
        }

        /// Runs `f` on the socket for any option socket2 offers. Errs with
        /// `BAD_DESCRIPTOR` when closed.
        pub fn with_socket2<R>(&self, f: impl FnOnce(socket2::SockRef<'_>) -> R) -> io::Result<R> {
            self.b.with_socket2(f)
        }
    };
}
pub(crate) use socket_common;

/// The byte-stream methods of `TcpStream` and `UnixStream`.
macro_rules! stream_common {
    () => {
        /// Reads what is available (at least one byte) into `bufs`;
        /// `handler(err, n, bufs)` gets the buffers back. `Error::EOF` when
        /// the peer has closed its side; empty buffers complete at once,
        /// posted, without I/O.
        pub fn async_read_some<B, F>(&self, bufs: B, handler: F) -> Operation
        where
            B: MutableBufferSequence + 'static,
            F: FnOnce(Error, usize, B) + 'static,
        {
            self.b.async_read_some(bufs, handler)
        }

        /// Writes some of `bufs` (at least one byte unless an error occurs);
        /// `handler(err, n)`. Tried at once when no write is queued; empty
        /// buffers complete at once, posted, without I/O.
        pub fn async_write_some<B, F>(&self, bufs: B, handler: F) -> Operation
        where
            B: ConstBufferSequence + 'static,
            F: FnOnce(Error, usize) + 'static,
        {
            self.b.async_write_some(bufs, handler)
        }

        /// Reads what is available, blocking (unless `set_nonblocking(true)`).
        /// At the end of the stream it errs with `Error::EOF` (kind
        /// `UnexpectedEof`), as Asio's `read_some` does.
        pub fn read_some<B: MutableBufferSequence>(&self, bufs: B) -> io::Result<usize> {
            self.b.read_some(bufs)
        }

        /// Writes some of `bufs`, blocking (unless `set_nonblocking(true)`).
        pub fn write_some<B: ConstBufferSequence>(&self, bufs: B) -> io::Result<usize> {
            self.b.write_some(bufs)
        }

        /// Shuts down reading, writing or both.
        pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
            self.b.shutdown(how)
        }
    };
}
pub(crate) use stream_common;

/// The connected-peer datagram operations of `UdpSocket` and `UnixDatagram`.
macro_rules! datagram_common {
    () => {
        /// Sends `bufs` as one datagram to the connected peer; `handler(err, n)`.
        #[inline]
        pub fn async_send<B, F>(&self, bufs: B, handler: F) -> Operation
        where
            B: ConstBufferSequence + 'static,
            F: FnOnce(Error, usize) + 'static,
        {
            self.async_send_with_flags(bufs, MessageFlags::NONE, handler)
        }

        /// [`async_send`](Self::async_send) with message flags.
        #[inline]
        pub fn async_send_with_flags<B, F>(&self, bufs: B, flags: MessageFlags, handler: F) -> Operation
        where
            B: ConstBufferSequence + 'static,
            F: FnOnce(Error, usize) + 'static,
        {
            log::trace!("async_send {} buffers", bufs.buffer_count());
            self.b.start_send(bufs, None, flags.bits(), handler)
        }

        /// Receives one datagram from the connected peer into `bufs`;
        /// `handler(err, n, bufs)` gets the buffers back.
        #[inline]
        pub fn async_receive<B, F>(&self, bufs: B, handler: F) -> Operation
        where
            B: MutableBufferSequence + 'static,
            F: FnOnce(Error, usize, B) + 'static,
        {
            self.async_receive_with_flags(bufs, MessageFlags::NONE, handler)
        }

        /// [`async_receive`](Self::async_receive) with message flags.
        #[inline]
        pub fn async_receive_with_flags<B, F>(&self, bufs: B, flags: MessageFlags, handler: F) -> Operation
        where
            B: MutableBufferSequence + 'static,
            F: FnOnce(Error, usize, B) + 'static,
        {
            log::trace!("async_receive");
            self.b.start_recv(bufs, flags, false, move |e, n, b, _| handler(e, n, b))
        }
    };
}
pub(crate) use datagram_common;
