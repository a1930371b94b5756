//! The reactor: mio's `Poll`, the registrations (a slab of per-descriptor
//! state), and readiness turned into performed operations.

use crate::context::Inner;
use crate::error::Error;
use crate::op::{Completion, SocketOp};
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use slab::Slab;
use socket2::Socket;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::time::Duration;

/// Operations a socket may take per readiness event and direction before the
/// loop runs handlers again (fairness between sockets and handlers).
pub(crate) const DEFAULT_BUDGET: usize = 64;

/// Read or write side of a descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Dir {
    Read = 0,
    Write = 1,
}

const INTEREST: Interest = Interest::READABLE
    .add(Interest::WRITABLE)
    .add(Interest::PRIORITY);

#[derive(Default)]
struct IoState {
    /// Pending operations per direction, FIFO. Cancelled entries stay until
    /// they reach the front (they are already completed).
    ops: [VecDeque<Rc<dyn SocketOp>>; 2],
    /// `async_wait(WaitType::Error)` operations.
    error_waits: VecDeque<Rc<dyn Completion>>,
    /// Per direction: false once a call said would-block, true again on an
    /// event (edge-triggered readiness).
    ready: [bool; 2],
    /// Per direction: the queue stopped at the budget with readiness left, and
    /// the object is on the reactor's backlog.
    backlog: [bool; 2],
}

impl IoState {
    /// Drops completed (cancelled) entries from the front of a queue.
    fn prune(&mut self, dir: Dir) {
        let q = &mut self.ops[dir as usize];
        while q.front().is_some_and(|o| o.core().is_done()) {
            q.pop_front();
        }
    }
}

/// Per-descriptor state: the socket, its operation queues and readiness.
pub(crate) struct IoObject {
    ctx: Weak<Inner>,
    token: Cell<usize>,
    sock: RefCell<Option<Rc<Socket>>>,
    st: RefCell<IoState>,
    /// `set_nonblocking(true)`: synchronous calls return WouldBlock.
    pub(crate) user_nonblocking: Cell<bool>,
}

impl IoObject {
    /// Registers `sock` (already non-blocking) with the context's reactor.
    pub(crate) fn register(inner: &Rc<Inner>, sock: Socket) -> io::Result<Rc<IoObject>> {
        let obj = Rc::new(IoObject {
            ctx: Rc::downgrade(inner),
            token: Cell::new(usize::MAX),
            sock: RefCell::new(None),
            st: RefCell::new(IoState {
                ready: [true, true],
                ..IoState::default()
            }),
            user_nonblocking: Cell::new(false),
        });
        let r = &inner.reactor;
        let token = r.regs.borrow_mut().insert(obj.clone());
        let res = r.poll.borrow().registry().register(
            &mut SourceFd(&sock.as_raw_fd()),
            Token(token),
            INTEREST,
        );
        if let Err(e) = res {
            r.regs.borrow_mut().remove(token);
            return Err(e);
        }
        obj.token.set(token);
        *obj.sock.borrow_mut() = Some(Rc::new(sock));
        log::debug!("socket registered, token {token}");
        Ok(obj)
    }

    /// The socket, unless closed.
    pub(crate) fn socket(&self) -> Option<Rc<Socket>> {
        self.sock.borrow().clone()
    }

    pub(crate) fn context(&self) -> Option<Rc<Inner>> {
        self.ctx.upgrade()
    }

    pub(crate) fn is_open(&self) -> bool {
        self.sock.borrow().is_some()
    }

    /// Starts an operation: performed at once when nothing is queued in its
    /// direction and the last attempt did not say would-block (speculative, as
    /// Asio); otherwise queued in FIFO order. Never runs the handler.
    pub(crate) fn start(&self, inner: &Rc<Inner>, op: Rc<dyn SocketOp>, dir: Dir) {
        inner.add_work();
        let Some(sock) = self.socket() else {
            inner.finish(op, Error::BAD_DESCRIPTOR, 0);
            return;
        };
        let speculate = {
            let mut st = self.st.borrow_mut();
            st.prune(dir);
            st.ops[dir as usize].is_empty() && st.ready[dir as usize] && !op.is_wait()
        };
        if speculate {
            match op.perform(&sock) {
                Some((err, n)) => {
                    inner.finish(op, err, n);
                    return;
                }
                None => self.st.borrow_mut().ready[dir as usize] = false,
            }
        }
        let wait = op.is_wait();
        self.st.borrow_mut().ops[dir as usize].push_back(op);
        if wait {
            self.rearm(inner, &sock);
        }
    }

    /// Starts an `async_wait(WaitType::Error)`.
    pub(crate) fn start_error_wait(&self, inner: &Rc<Inner>, op: Rc<dyn Completion>) {
        inner.add_work();
        let Some(sock) = self.socket() else {
            inner.finish(op, Error::BAD_DESCRIPTOR, 0);
            return;
        };
        self.st.borrow_mut().error_waits.push_back(op);
        self.rearm(inner, &sock);
    }

    /// Re-registers so that readiness that already holds is reported again
    /// (edge-triggered epoll reports the current state on EPOLL_CTL_MOD).
    fn rearm(&self, inner: &Inner, sock: &Socket) {
        let res = inner.reactor.poll.borrow().registry().reregister(
            &mut SourceFd(&sock.as_raw_fd()),
            Token(self.token.get()),
            INTEREST,
        );
        if let Err(e) = res {
            log::debug!("re-arming a descriptor failed: {e}");
        }
    }

    /// Performs queued operations in `dir` until one would block, the queue
    /// is empty or `budget` completed. Returns true when stopped by the budget.
    fn run_queue(&self, inner: &Inner, dir: Dir, budget: usize) -> bool {
        let Some(sock) = self.socket() else {
            return false;
        };
        let mut done = 0;
        loop {
            let op = {
                let mut st = self.st.borrow_mut();
                st.prune(dir);
                match st.ops[dir as usize].front() {
                    Some(op) => op.clone(),
                    None => return false,
                }
            };
            if done == budget {
                return true;
            }
            match op.perform(&sock) {
                None => {
                    self.st.borrow_mut().ready[dir as usize] = false;
                    return false;
                }
                Some((err, n)) => {
                    let front = self.st.borrow_mut().ops[dir as usize].pop_front();
                    drop(front);
                    inner.finish(op, err, n);
                    done += 1;
                }
            }
        }
    }

    /// Handles a readiness event.
    fn on_event(self: &Rc<Self>, inner: &Inner, readable: bool, writable: bool, error: bool) {
        for (dir, yes) in [(Dir::Read, readable), (Dir::Write, writable)] {
            if yes {
                self.st.borrow_mut().ready[dir as usize] = true;
                self.continue_queue(inner, dir);
            }
        }
        if error {
            let waits: Vec<_> = self.st.borrow_mut().error_waits.drain(..).collect();
            for op in waits {
                inner.finish(op, Error::NONE, 0);
            }
        }
    }

    /// Runs a queue; one stopped by the budget goes on the backlog, to be
    /// continued on the next turn without waiting for another event.
    fn continue_queue(self: &Rc<Self>, inner: &Inner, dir: Dir) {
        if !self.run_queue(inner, dir, inner.reactor.budget) {
            return;
        }
        let mut st = self.st.borrow_mut();
        let listed = st.backlog.iter().any(|b| *b);
        st.backlog[dir as usize] = true;
        if !listed {
            inner.reactor.backlog.borrow_mut().push(self.clone());
        }
    }

    /// Completes every pending operation with `OPERATION_ABORTED`.
    pub(crate) fn cancel_all(&self, inner: &Inner) -> usize {
        let ops = self.take_ops();
        let mut n = 0;
        for op in ops {
            if !op.core().is_done() {
                inner.finish(op, Error::OPERATION_ABORTED, 0);
                n += 1;
            }
        }
        n
    }

    fn take_ops(&self) -> Vec<Rc<dyn Completion>> {
        let mut st = self.st.borrow_mut();
        let [r, w] = &mut st.ops;
        let mut v: Vec<Rc<dyn Completion>> = r
            .drain(..)
            .chain(w.drain(..))
            .map(|o| o as Rc<dyn Completion>)
            .collect();
        v.extend(st.error_waits.drain(..));
        v
    }

    /// Takes the socket out of the reactor: deregisters it and aborts its
    /// pending operations (through the queue). `None` if already closed.
    pub(crate) fn detach(&self) -> Option<Rc<Socket>> {
        let sock = self.sock.borrow_mut().take()?;
        match self.ctx.upgrade() {
            Some(inner) => {
                let token = self.token.get();
                let res = inner
                    .reactor
                    .poll
                    .borrow()
                    .registry()
                    .deregister(&mut SourceFd(&sock.as_raw_fd()));
                if let Err(e) = res {
                    log::debug!("deregistering token {token} failed: {e}");
                }
                let removed = inner.reactor.regs.borrow_mut().try_remove(token);
                self.cancel_all(&inner);
                drop(removed);
                log::debug!("socket closed, token {token}");
            }
            None => {
                for op in self.take_ops() {
                    op.abandon();
                }
            }
        }
        Some(sock)
    }

    /// Context teardown: close the descriptor and hand over every operation.
    pub(crate) fn teardown(&self, ops: &mut Vec<Rc<dyn Completion>>) {
        drop(self.sock.borrow_mut().take());
        ops.extend(self.take_ops());
    }
}

/// mio's poll plus the registrations.
pub(crate) struct Reactor {
    poll: RefCell<mio::Poll>,
    events: RefCell<Events>,
    regs: RefCell<Slab<Rc<IoObject>>>,
    /// Sockets whose queue stopped at the budget with readiness left.
    backlog: RefCell<Vec<Rc<IoObject>>>,
    budget: usize,
}

impl Reactor {
    pub(crate) fn new() -> io::Result<Reactor> {
        Ok(Reactor {
            poll: RefCell::new(mio::Poll::new()?),
            events: RefCell::new(Events::with_capacity(256)),
            regs: RefCell::new(Slab::new()),
            backlog: RefCell::new(Vec::new()),
            budget: DEFAULT_BUDGET,
        })
    }

    pub(crate) fn has_registrations(&self) -> bool {
        !self.regs.borrow().is_empty()
    }

    /// Nothing registered and nothing left over from the last turn.
    #[inline]
    pub(crate) fn is_idle(&self) -> bool {
        self.regs.borrow().is_empty() && self.backlog.borrow().is_empty()
    }

    pub(crate) fn has_backlog(&self) -> bool {
        !self.backlog.borrow().is_empty()
    }

    /// Continues the queues that stopped at the budget last turn.
    pub(crate) fn run_backlog(&self, inner: &Inner) {
        let list = std::mem::take(&mut *self.backlog.borrow_mut());
        for obj in list {
            let dirs = std::mem::take(&mut obj.st.borrow_mut().backlog);
            for dir in [Dir::Read, Dir::Write] {
                if dirs[dir as usize] {
                    obj.continue_queue(inner, dir);
                }
            }
        }
    }

    /// Waits for events at most `timeout` and handles them.
    pub(crate) fn poll(&self, inner: &Inner, timeout: Option<Duration>) {
        let mut events = self.events.borrow_mut();
        if let Err(e) = self.poll.borrow_mut().poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("reactor poll failed: {e}");
            }
            return;
        }
        for ev in events.iter() {
            let obj = self.regs.borrow().get(ev.token().0).cloned();
            let Some(obj) = obj else { continue };
            let error = ev.is_error();
            let readable = ev.is_readable() || ev.is_read_closed() || error;
            let writable = ev.is_writable() || ev.is_write_closed() || error;
            log::trace!(
                "event token {} r={readable} w={writable} e={error}",
                ev.token().0
            );
            obj.on_event(inner, readable, writable, error || ev.is_priority());
        }
    }

    /// Empties the registrations (context teardown).
    pub(crate) fn take_all(&self) -> Vec<Rc<IoObject>> {
        self.backlog.borrow_mut().clear();
        self.regs.borrow_mut().drain().collect()
    }
}
