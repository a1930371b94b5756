//! What every socket type shares: the handle that closes the socket with its
//! last clone, the link to the context, queueing, readiness waits, the
//! blocking form of synchronous calls, cancel and close.

use super::WaitType;
use crate::cancel::Operation;
use crate::context::{Executor, Inner};
use crate::error::Error;
use crate::op::{Completion, SocketOp, WaitOp};
use crate::reactor::{Dir, IoObject};
use crate::sys::{self, Readiness};
use socket2::{SockAddr, SockRef, Socket};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;

/// Closes the socket when the last clone of the socket's handle goes.
struct Handle {
    io: Rc<IoObject>,
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

pub(crate) fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the io context was dropped")
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
        sock.set_nonblocking(true)?;
        let io = IoObject::new(&inner, sock, readahead);
        io.stream.set(stream);
        Ok(Base { h: Rc::new(Handle { io }) })
    }

    pub(crate) fn io(&self) -> &Rc<IoObject> {
        &self.h.io
    }

    /// The socket, or `BAD_DESCRIPTOR` once closed.
    pub(crate) fn sock(&self) -> io::Result<Rc<Socket>> {
        self.io().socket().ok_or_else(bad_descriptor)
    }

    /// Takes the socket out of the context, blocking again. Pending
    /// operations complete with `OPERATION_ABORTED`.
    pub(crate) fn release(&self) -> io::Result<Socket> {
        let sock = self.io().detach().ok_or_else(bad_descriptor)?;
        let sock = Rc::try_unwrap(sock)
            .map_err(|_| io::Error::other("socket is in use inside with_socket2; it will close"))?;
        sock.set_nonblocking(false)?;
        Ok(sock)
    }

    pub(crate) fn executor(&self) -> Executor {
        Executor { inner: self.io().context().as_ref().map_or_else(std::rc::Weak::new, Rc::downgrade) }
    }

    /// The context, unless it is gone or being dropped (then the handler of
    /// an operation about to start is dropped unrun).
    pub(crate) fn live_context(&self) -> Option<Rc<Inner>> {
        let inner = self.io().context().filter(|i| !i.is_shut());
        if inner.is_none() {
            log::debug!("operation started after the context was dropped: handler dropped unrun");
        }
        inner
    }

    /// Queues an operation that could not complete at once.
    pub(crate) fn enqueue(&self, inner: &Rc<Inner>, op: Rc<dyn SocketOp>, dir: Dir) -> Operation {
        let handle = Operation::new(inner, &(op.clone() as Rc<dyn Completion>));
        self.io().enqueue(inner, op, dir);
        handle
    }

    /// Completes a new operation at once with `err`, through the queue.
    pub(crate) fn complete_now(&self, inner: &Rc<Inner>, op: Rc<dyn Completion>, err: Error) -> Operation {
        inner.add_work();
        let handle = Operation::new(inner, &op);
        inner.finish(op, err, 0);
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
                self.io().start_error_wait(&inner, op);
                handle
            }
        }
    }

    /// Runs a synchronous call, blocking on `poll(2)` while it would block
    /// unless `set_nonblocking(true)`.
    pub(crate) fn blocking<R>(&self, what: Readiness, mut f: impl FnMut(&Socket) -> io::Result<R>) -> io::Result<R> {
        let sock = self.sock()?;
        loop {
            match f(&sock) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !self.io().user_nonblocking.get() => {
                    sys::wait_fd(sock.as_raw_fd(), what, None)?;
                }
                r => return r,
            }
        }
    }

    pub(crate) fn set_nonblocking(&self, yes: bool) -> io::Result<()> {
        self.sock()?;
        self.io().user_nonblocking.set(yes);
        Ok(())
    }

    pub(crate) fn nonblocking(&self) -> bool {
        self.io().user_nonblocking.get()
    }

    /// Completes every pending operation with `OPERATION_ABORTED`.
    pub(crate) fn cancel(&self) -> io::Result<()> {
        self.sock()?;
        let inner = self.io().context().ok_or_else(gone)?;
        let n = self.io().cancel_all(&inner);
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
        self.sock()?.shutdown(how)
    }

    pub(crate) fn with_socket2<R>(&self, f: impl FnOnce(SockRef<'_>) -> R) -> io::Result<R> {
        let sock = self.sock()?;
        Ok(f(SockRef::from(&*sock)))
    }
}
