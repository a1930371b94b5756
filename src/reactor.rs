//! The reactor: the registrations (a slab of per-descriptor state) in the
//! readiness [`Backend`], and readiness turned into performed operations.
//! Datagram batching, segmentation offload and the read-ahead slot are in
//! [`datagram`]: the reactor proper knows readiness and queues.

mod datagram;

use crate::backend::{Backend, Interest, Readiness, Waker};
use crate::error::Error;
use crate::metrics::{Counters, bump};
use crate::op::{Accepted, Completion, Io, ReportWait, SocketOp, accept_now, connect_outcome_of};
use crate::sim::net::{Endpoint, Port};
use crate::sys;
use crate::sys::msg::{ErrInfo, MsgInfo, SendInfo};
use crate::timer::Wake;
use datagram::{Batch, Datagram, SendBatch};
use slab::Slab;
use socket2::{SockAddr, Socket};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Operations a socket may take per readiness event and direction before the
/// loop runs handlers again (fairness between sockets and handlers).
pub(crate) const DEFAULT_OPERATIONS_PER_EVENT: usize = 64;

/// Read or write side of a descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Dir {
    Read = 0,
    Write = 1,
}

/// Readability is always of interest (it costs nothing while no data
/// arrives); writability and priority data only while an operation waits for
/// them, because a registered EPOLLOUT would wake epoll after every send.
const BASE_INTEREST: Interest = Interest::READABLE;

struct IoState {
    /// Pending operations per direction, FIFO. Cancelled entries stay until
    /// they reach the front (they are already completed).
    ops: [VecDeque<Rc<dyn SocketOp>>; 2],
    /// `async_wait(WaitType::Error)` operations.
    error_waits: VecDeque<Rc<dyn Completion>>,
    /// `async_receive_error` operations, waiting for a report.
    report_waits: VecDeque<Rc<dyn ReportWait>>,
    /// Per direction: false once a call said would-block, true again on an
    /// event (edge-triggered readiness). Only half of the story for reads:
    /// see [`IoState::ready`].
    kernel_ready: [bool; 2],
    /// The last readable event said the read side is closed (`shutdown`
    /// for reading, or a hang-up): a receive that finds nothing queued then
    /// ends with `EOF` instead of waiting, as a blocking `recv` returns 0 at
    /// once. The descriptor stays readable, so waiting would spin
    /// (level-triggered) or hang (edge-triggered).
    read_closed: bool,
    /// One datagram read ahead (see [`Io::recv`]): readable data, as
    /// much as what the kernel holds.
    read_ahead: Option<Datagram>,
    /// What the descriptor is registered for, once it is.
    interest: Interest,
    /// Added to epoll.
    registered: bool,
    /// Registered level-triggered (see [`IoObject::on_event`]): epoll reports
    /// readability while data is queued, so a receive is one plain `recv`
    /// and readiness is left to the next wait. Edge-triggered otherwise.
    level: bool,
    /// On the reactor's list of sockets with deferred sends.
    flush_listed: bool,
    /// Queued sends wait for a retry timer, not for writability (see
    /// [`IoObject::back_off`]): the interest leaves writability out.
    write_backoff: bool,
    /// Per direction: listed on the reactor's backlog, to be looked at next
    /// turn (what is run then is decided from the state then).
    backlog: [bool; 2],
    /// Error reports taken off the kernel's error queue (`set_recv_errors`),
    /// oldest first, for `async_receive_error`; at most `MAX_REPORTS`.
    reports: VecDeque<ErrInfo>,
}

/// Error reports kept for a socket nobody asks: the oldest go first.
const MAX_REPORTS: usize = 64;

impl IoState {
    fn new() -> IoState {
        IoState {
            ops: [VecDeque::new(), VecDeque::new()],
            error_waits: VecDeque::new(),
            report_waits: VecDeque::new(),
            kernel_ready: [true, true],
            read_closed: false,
            read_ahead: None,
            interest: BASE_INTEREST,
            registered: false,
            level: true,
            flush_listed: false,
            write_backoff: false,
            backlog: [false, false],
            reports: VecDeque::new(),
        }
    }

    /// Drops completed (cancelled) entries from the front of a queue.
    #[inline]
    fn prune(&mut self, dir: Dir) {
        let q = &mut self.ops[dir as usize];
        while q.front().is_some_and(|o| o.core().is_done()) {
            q.pop_front();
        }
    }

    /// Operations in `dir` can progress without a new event: the kernel may
    /// hold more (nothing said would-block since the last event), or a
    /// datagram waits in the read-ahead slot. Derived, so that the two can
    /// never disagree: a datagram held in memory is readable whatever the
    /// kernel's queue says, and no event will ever announce it.
    fn ready(&self, dir: Dir) -> bool {
        self.kernel_ready[dir as usize] || (dir == Dir::Read && self.read_ahead.is_some())
    }

    /// An operation waits in `dir` and could progress now: the socket must
    /// be run this turn or the next (on the backlog), or nothing would wake it.
    fn wants_turn(&mut self, dir: Dir) -> bool {
        self.prune(dir);
        !self.ops[dir as usize].is_empty() && self.ready(dir)
    }
}

/// How a write run stopped, for [`IoObject::continue_writes`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteStop {
    /// Not on a send that would block (the queue emptied, or a limit).
    Other,
    /// On its first send.
    BlockedFirst,
    /// After some sends left.
    BlockedAfterSome,
}

/// How long the `n`-th retry in a row of a socket that is writable yet
/// refuses sends waits: 1 ms, doubling, at most 64 ms (the reactor's
/// back-off, and the blocking send's sleep).
pub(crate) fn retry_delay(n: u32) -> Duration {
    Duration::from_millis(1 << n.min(6))
}

/// Writability events in a row whose first send would still block before
/// the sends wait for a retry timer instead (see [`IoObject::continue_writes`]).
const FUTILE_WRITES: u8 = 3;

/// Outcome of [`IoObject::try_now`].
pub(crate) enum Attempt<R> {
    /// Performed at once.
    Done(R),
    /// The socket is closed.
    Closed,
    /// Must be queued.
    Later,
}

/// What the reactor needs of the loop that owns it (the context): itself,
/// the work count, the single way out of the pending state, and the clock.
/// The reactor names no type of the layer above it.
pub(crate) trait Owner {
    /// The reactor (it lives in its owner).
    fn reactor(&self) -> &Reactor;
    /// One more pending operation: work that keeps `run` going.
    fn add_work(&self);
    /// `op` completed with `(err, n)`: its handler is queued, never run here.
    fn complete(&self, op: Rc<dyn Completion>, err: Error, n: usize);
    /// The loop's clock.
    fn now(&self) -> Instant;
    /// Calls `what` back once `after` has passed (unless it is gone by then).
    fn wake_after(&self, what: Weak<dyn Wake>, after: Duration);
}

/// Per-descriptor state: the socket, its operation queues and readiness.
pub(crate) struct IoObject {
    /// The loop it belongs to, for what runs without being handed it (a
    /// receive reading ahead, a socket listed on the backlog, a close).
    owner: Weak<dyn Owner>,
    token: Cell<usize>,
    /// The operating system's socket, until closed.
    sock: RefCell<Option<Rc<Socket>>>,
    /// Or, on a simulated context, an endpoint of the simulated network (the
    /// simulated backend: its readiness comes from the simulation's waits,
    /// its transfers from the endpoint's queues). Apart from `sock`, so that the
    /// real path tests only `sock`, as before simulation existed.
    sim: RefCell<Option<Endpoint>>,
    st: RefCell<IoState>,
    /// Receives may read ahead (IP datagram sockets: the read-ahead space holds
    /// any datagram they can carry).
    can_read_ahead: Cell<bool>,
    /// `UdpSocket::set_gro`: a plain receive takes one segment of what
    /// arrives coalesced ([`IoObject::recv_coalesced`]).
    gro: Cell<bool>,
    /// The metadata of the coalesced datagrams whose segments wait in the
    /// read-ahead slot.
    gro_info: Cell<MsgInfo>,
    /// Metadata switches are on (a real UDP socket): batches of receives
    /// carry control messages ([`IoObject::recv_many_msg`]).
    meta_batch: Cell<bool>,
    /// Sends are deferred to the end of the handler pass and coalesced with
    /// UDP segmentation offload (see `UdpSocket::set_gso`).
    pub(crate) gso: Cell<bool>,
    /// A pass's sends after its first wait for its end (`set_send_coalescing`).
    coalesce: Cell<bool>,
    /// The pass (`Inner::pass`) of the last send started during one.
    send_pass: Cell<u64>,
    /// Set by [`defer_send`](Self::defer_send): the rest of this pass's
    /// sends wait for the pass's end, where they leave together
    /// (`sendmmsg`); cleared by the flush. (`coalesce` is the option.)
    deferring: Cell<bool>,
    /// Segmented sends refused in a row.
    gso_refusals: Cell<u8>,
    /// How many receives the next `recv_many` offers the kernel: twice
    /// what the last batch got (2..=16), so a socket that gets one datagram
    /// per wake-up does not pay for sixteen slots each time.
    batch_hint: Cell<u8>,
    /// How the last write run stopped (read after a writability event or a
    /// retry, see [`IoObject::continue_writes`]).
    write_stop: Cell<WriteStop>,
    /// Writability events in a row whose first send would still block.
    futile_writes: Cell<u8>,
    /// Retries in a row that sent nothing (the next retry waits 2^n ms, at
    /// most 64).
    backoffs: Cell<u8>,
    /// The read-ahead buffer, kept for reuse while no datagram is held.
    read_ahead_buf: RefCell<Vec<u8>>,
    /// `set_nonblocking(true)`: synchronous calls return WouldBlock.
    pub(crate) user_nonblocking: Cell<bool>,
    /// A stream socket: writes may be partial, so they are never batched.
    pub(crate) stream: Cell<bool>,
    /// `set_recv_errors`: ICMP reports go to the error queue, not to a
    /// receive (see [`IoObject::reported_elsewhere`]).
    recv_errors: Cell<bool>,
    /// The context's counters (bytes and datagrams in and out).
    counters: Rc<Counters>,
}

impl IoObject {
    /// Adds `sock` (already non-blocking) to the context's registrations; it
    /// joins epoll later, when an operation first has to wait. `readahead`:
    /// receives may read a datagram ahead (the socket's datagrams always fit
    /// the read-ahead space).
    pub(crate) fn new<O: Owner + 'static>(owner: &Rc<O>, sock: Socket, readahead: bool) -> Rc<IoObject> {
        let obj = IoObject::with_registration(owner, readahead);
        *obj.sock.borrow_mut() = Some(Rc::new(sock));
        obj
    }

    /// A simulated socket (its endpoint already made) in the context's registrations.
    pub(crate) fn new_sim<O: Owner + 'static>(owner: &Rc<O>, endpoint: Endpoint) -> Rc<IoObject> {
        let obj = IoObject::with_registration(owner, false);
        *obj.sim.borrow_mut() = Some(endpoint);
        obj
    }

    fn with_registration<O: Owner + 'static>(owner: &Rc<O>, readahead: bool) -> Rc<IoObject> {
        let link: Weak<dyn Owner> = Rc::downgrade(owner) as Weak<O>;
        let obj = Rc::new(IoObject {
            owner: link,
            token: Cell::new(usize::MAX),
            sock: RefCell::new(None),
            sim: RefCell::new(None),
            st: RefCell::new(IoState::new()),
            can_read_ahead: Cell::new(readahead),
            meta_batch: Cell::new(false),
            gro: Cell::new(false),
            gro_info: Cell::new(MsgInfo::default()),
            gso: Cell::new(false),
            coalesce: Cell::new(false),
            send_pass: Cell::new(u64::MAX),
            deferring: Cell::new(false),
            gso_refusals: Cell::new(0),
            batch_hint: Cell::new((sys::RECV_BATCH - 1) as u8),
            write_stop: Cell::new(WriteStop::Other),
            futile_writes: Cell::new(0),
            backoffs: Cell::new(0),
            read_ahead_buf: RefCell::new(Vec::new()),
            user_nonblocking: Cell::new(false),
            stream: Cell::new(false),
            recv_errors: Cell::new(false),
            counters: owner.reactor().counters.clone(),
        });
        // The descriptor joins epoll only when an operation first has to
        // wait (see `sync_interest`): a socket whose operations all complete at
        // once costs epoll nothing, not even a wake-up callback per send.
        let token = owner.reactor().regs.borrow_mut().insert(obj.clone());
        obj.token.set(token);
        log::debug!("socket added, token {token}");
        obj
    }

    /// The operating system's socket, unless closed (or simulated).
    #[inline]
    pub(crate) fn socket(&self) -> Option<Rc<Socket>> {
        self.sock.borrow().clone()
    }

    /// The simulated UDP port, unless closed (or real, or another kind).
    pub(crate) fn port(&self) -> Option<Rc<Port>> {
        match &*self.sim.borrow() {
            Some(Endpoint::Udp(p)) => Some(p.clone()),
            _ => None,
        }
    }

    /// The simulated endpoint, unless closed (or real).
    pub(crate) fn endpoint(&self) -> Option<Endpoint> {
        self.sim.borrow().clone()
    }

    #[inline]
    pub(crate) fn is_open(&self) -> bool {
        self.sock.borrow().is_some() || self.sim.borrow().is_some()
    }

    /// Receives carry metadata from now on: nothing is read ahead (a
    /// datagram read ahead would lose its metadata to the receive that
    /// takes it), and batches of receives take control messages.
    pub(crate) fn carry_metadata(&self) {
        self.can_read_ahead.set(false);
        self.meta_batch.set(self.sock.borrow().is_some());
    }

    /// The kernel coalesces datagrams (`UDP_GRO` is on).
    pub(crate) fn set_gro(&self, on: bool) {
        self.gro.set(on);
    }

    /// Error reports are taken off the error queue (`IP_RECVERR` is on).
    pub(crate) fn set_recv_errors(&self, on: bool) {
        self.recv_errors.set(on);
        if let Some(Endpoint::Udp(port)) = &*self.sim.borrow() {
            port.set_recv_errors(on);
        }
        if !on {
            // No report will come: the waits end as a new one would.
            let waits: Vec<_> = self.st.borrow_mut().report_waits.drain(..).collect();
            if let Some(owner) = self.owner.upgrade() {
                for op in waits {
                    owner.complete(op, Error::INVALID_ARGUMENT, 0);
                }
            }
        }
    }

    /// Runs the system call `f` once more when it fails with an error the
    /// error queue reports: with error reports on, the kernel also hands an
    /// ICMP error to the next receive or send (as `sk_err`), which must not
    /// end a server's receive loop, nor fail a send to someone else, because
    /// one client went away (see [`retry_reported_after`]).
    ///
    /// Only a socket with the switch on pays for this: the others test one
    /// flag and make the call as before.
    #[inline(always)]
    pub(crate) fn past_reports<T>(&self, send: bool, mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        if self.recv_errors.get() { retry_reported(send, f) } else { f() }
    }

    /// Moves what the error queue holds into `reports` (at most
    /// `MAX_REPORTS`, the oldest dropped): an error event is consumed even
    /// when nobody asks, so that level-triggered readiness does not spin.
    fn drain_reports(&self) {
        let sock = self.sock.borrow();
        let sim = self.sim.borrow();
        loop {
            let next = match (&*sock, &*sim) {
                (Some(sock), _) => sys::msg::recv_err(sock).ok(),
                (None, Some(Endpoint::Udp(port))) => port.take_report(),
                _ => None,
            };
            let Some(report) = next else { return };
            let mut st = self.st.borrow_mut();
            if st.reports.len() == MAX_REPORTS {
                st.reports.pop_front();
                log::debug!("error reports: the oldest dropped (nobody takes them)");
            }
            st.reports.push_back(report);
        }
    }

    /// Turns send coalescing on or off (see [`defer_send`](Self::defer_send)).
    pub(crate) fn set_coalescing(&self, on: bool) {
        self.coalesce.set(on && !self.stream.get());
    }

    pub(crate) fn coalesces(&self) -> bool {
        self.coalesce.get()
    }

    /// Whether a send started now is deferred to the end of the pass. With
    /// coalescing on, inside a pass (`pass` is `Some`) a datagram socket
    /// sends its first datagram at once, as Asio does, and defers the
    /// others, which leave together at the pass's end in one `sendmmsg`: a
    /// server answering a batch of requests makes one system call for its
    /// answers, not one each. Outside a pass every send is tried at once,
    /// and a stream's writes are never deferred (they may be partial).
    #[inline]
    pub(crate) fn defer_send(&self, pass: Option<u64>) -> bool {
        if !self.coalesce.get() {
            return false;
        }
        let Some(pass) = pass else { return false };
        if self.send_pass.replace(pass) != pass {
            return false;
        }
        self.deferring.set(true);
        true
    }

    /// Sends wait for the end of the pass (GSO on, or coalescing this pass).
    #[inline]
    fn defers_sends(&self) -> bool {
        self.gso.get() || self.deferring.get()
    }

    /// Tries an operation at once (Asio's speculative attempt) when nothing
    /// is queued in `dir` and the last attempt did not say would-block.
    /// `Later` means: queue it with [`enqueue`](Self::enqueue).
    #[inline]
    pub(crate) fn try_now<R>(&self, dir: Dir, f: impl FnOnce() -> Option<R>) -> Attempt<R> {
        if !self.is_open() {
            return Attempt::Closed;
        }
        if dir == Dir::Write && self.defers_sends() {
            return Attempt::Later; // deferred to the end of the pass, to coalesce
        }
        {
            let mut st = self.st.borrow_mut();
            st.prune(dir);
            if !st.ops[dir as usize].is_empty() || !st.ready(dir) {
                return Attempt::Later;
            }
        }
        match f() {
            Some(r) => Attempt::Done(r),
            None => {
                self.st.borrow_mut().kernel_ready[dir as usize] = false;
                Attempt::Later
            }
        }
    }

    /// Queues an operation behind the others in `dir` (FIFO); it is performed
    /// when the socket becomes ready. Readiness waits re-arm the descriptor so
    /// that readiness that already holds is reported.
    pub(crate) fn enqueue<O: Owner + ?Sized>(self: &Rc<Self>, owner: &O, op: Rc<dyn SocketOp>, dir: Dir) {
        owner.add_work();
        if !self.is_open() {
            owner.complete(op, Error::BAD_DESCRIPTOR, 0);
            return;
        }
        let wait = op.is_wait();
        if dir == Dir::Read && !wait {
            // The common case, in one borrow: a receive behind a registered
            // socket whose trigger needs no change (see below).
            let mut st = self.st.borrow_mut();
            if st.registered && (st.level || st.ready(Dir::Read)) {
                st.ops[Dir::Read as usize].push_back(op);
                return;
            }
        } else if dir == Dir::Write && !wait && self.defers_sends() {
            // Likewise a deferred send on a socket already on the flush list:
            // it leaves with the flush at the end of the pass.
            let mut st = self.st.borrow_mut();
            if st.flush_listed {
                st.ops[Dir::Write as usize].push_back(op);
                return;
            }
        }
        if wait && dir == Dir::Read && self.has_read_ahead() {
            let mut st = self.st.borrow_mut();
            st.prune(dir);
            if st.ops[dir as usize].is_empty() {
                // Readable now, though the kernel's queue may be empty: no
                // event would come for the datagram already read ahead.
                drop(st);
                owner.complete(op, Error::NONE, 0);
                return;
            }
        }
        let deferred = dir == Dir::Write && !wait && self.defers_sends();
        let (list, listed, registered, edge_drained) = {
            let mut st = self.st.borrow_mut();
            st.ops[dir as usize].push_back(op);
            let list = deferred && st.ready(Dir::Write) && !st.flush_listed;
            st.flush_listed |= list;
            (list, st.flush_listed, st.registered, st.registered && !st.level && !st.ready(Dir::Read))
        };
        if list {
            owner.reactor().flush_list.borrow_mut().push(self.clone());
            owner.reactor().deferred.set(true)
        } else if deferred && listed {
            // It leaves with the flush at the end of the pass.
        } else if wait || dir == Dir::Write || !registered {
            // Whatever waits for an event must be of interest: a deferred
            // send behind a would-block too (a re-sync while no send waited
            // may have dropped writability).
            self.sync_interest(owner, wait);
        } else if dir == Dir::Read && edge_drained {
            // Back to level-triggered once a receive waits on a drained socket.
            self.set_level(owner, true);
        }
    }

    /// Registers the endpoint for `interest` (`again`: changes the
    /// registration made before), with epoll or with the simulation.
    fn register<O: Owner + ?Sized>(&self, owner: &O, interest: Interest, edge: bool, again: bool) -> io::Result<()> {
        let token = self.token.get();
        if let Some(endpoint) = &*self.sim.borrow() {
            endpoint.register(token, interest.is_readable(), interest.is_writable(), edge);
            return Ok(());
        }
        match &*self.sock.borrow() {
            Some(sock) if again => owner.reactor().backend.reregister(sock.as_fd(), token, interest, edge),
            Some(sock) => owner.reactor().backend.register(sock.as_fd(), token, interest, edge),
            None => Err(closed()),
        }
    }

    /// Switches the registration between level- and edge-triggered.
    fn set_level<O: Owner + ?Sized>(&self, owner: &O, level: bool) {
        let mut st = self.st.borrow_mut();
        if !st.registered || st.level == level {
            return;
        }
        match self.register(owner, st.interest, !level, true) {
            Ok(()) => st.level = level,
            Err(e) => log::debug!("token {}: switching the trigger failed: {e}", self.token.get()),
        }
        log::trace!("token {}: level-triggered {level}", self.token.get());
    }

    /// A receive of `n` bytes succeeded.
    #[inline]
    fn counted_in(&self, n: usize) {
        self.counters.received(n, !self.stream.get());
    }

    /// A send of `n` bytes succeeded.
    #[inline]
    fn counted_out(&self, n: usize) {
        self.counters.sent(n, !self.stream.get());
    }

    /// Starts an `async_wait(WaitType::Error)`.
    pub(crate) fn start_error_wait<O: Owner + ?Sized>(&self, owner: &O, op: Rc<dyn Completion>) {
        owner.add_work();
        if !self.is_open() {
            owner.complete(op, Error::BAD_DESCRIPTOR, 0);
            return;
        }
        {
            let mut st = self.st.borrow_mut();
            st.error_waits.retain(|w| !w.core().is_done()); // cancelled ones
            st.error_waits.push_back(op);
        }
        self.sync_interest(owner, true);
    }

    /// Starts a wait for an error report (`async_receive_error`): a report
    /// already kept (or in the kernel's queue) completes it at once, through
    /// the queue; otherwise it waits among the error waits.
    pub(crate) fn start_report_wait<O: Owner + ?Sized>(&self, owner: &O, op: Rc<dyn ReportWait>) {
        owner.add_work();
        if !self.is_open() {
            owner.complete(op, Error::BAD_DESCRIPTOR, 0);
            return;
        }
        if !self.recv_errors.get() {
            // No reports come without the switch: it would wait for ever.
            owner.complete(op, Error::INVALID_ARGUMENT, 0);
            return;
        }
        {
            // Behind the waits already there: reports go out in order.
            let mut st = self.st.borrow_mut();
            st.report_waits.retain(|w| !w.core().is_done()); // cancelled ones
            st.report_waits.push_back(op);
        }
        self.drain_reports();
        self.hand_out_reports(owner);
        if !self.st.borrow().report_waits.is_empty() {
            self.sync_interest(owner, true);
        }
    }

    /// Gives the kept reports to the report waits, in order. Waits left
    /// with none after an error event (a report the kernel dropped leaves
    /// its `sk_err`) have that cleared, so that the error readiness does
    /// not wake the loop again for nothing.
    #[cold]
    fn hand_out_reports<O: Owner + ?Sized>(&self, owner: &O) {
        loop {
            let (op, report) = {
                let mut st = self.st.borrow_mut();
                st.report_waits.retain(|w| !w.core().is_done());
                if st.report_waits.is_empty() {
                    return;
                }
                let Some(report) = st.reports.pop_front() else { break };
                (st.report_waits.pop_front().expect("not empty"), report)
            };
            op.report_slot().set(Some(report));
            owner.complete(op, Error::NONE, 0);
        }
        if let Some(sock) = self.socket() {
            let _ = sock.take_error();
        }
    }

    /// Registers the interest the pending operations need. With `force` it
    /// re-registers even when unchanged, so that readiness that already holds
    /// is reported again (edge-triggered epoll re-checks on EPOLL_CTL_MOD).
    fn sync_interest<O: Owner + ?Sized>(&self, owner: &O, force: bool) {
        let wanted = {
            let mut st = self.st.borrow_mut();
            st.prune(Dir::Write);
            let mut wanted = BASE_INTEREST;
            if !st.ops[Dir::Write as usize].is_empty() && !st.write_backoff {
                wanted = wanted.add(Interest::WRITABLE);
            }
            if !st.error_waits.is_empty() || !st.report_waits.is_empty() {
                wanted = wanted.add(Interest::PRIORITY);
            }
            if st.registered && !force && wanted == st.interest {
                return;
            }
            wanted
        };
        let token = self.token.get();
        let res = {
            let st = self.st.borrow();
            self.register(owner, wanted, !st.level, st.registered)
        };
        match res {
            Ok(()) => {
                let mut st = self.st.borrow_mut();
                st.interest = wanted;
                if !st.registered {
                    st.registered = true;
                    owner.reactor().registered.set(owner.reactor().registered.get() + 1);
                    log::debug!("token {token} registered with epoll");
                }
            }
            // The pending operations then wait for nothing: fail them.
            Err(e) => {
                log::debug!("registering token {token} with epoll failed: {e}");
                let err = Error::from(e);
                for op in self.take_ops() {
                    owner.complete(op, err, 0);
                }
            }
        }
    }

    /// Performs queued operations in `dir` until one would block, the
    /// socket is drained (not [`ready`](IoState::ready): a datagram read
    /// ahead keeps it going), the queue is empty or `limit` completed.
    /// Returns true when stopped by the limit: an operation waits and could
    /// progress, so it [`wants_turn`](IoState::wants_turn).
    #[inline]
    fn run_queue<O: Owner + ?Sized>(&self, owner: &O, dir: Dir, limit: usize) -> bool {
        if !self.is_open() {
            return false;
        }
        // The batches make their system calls here, on the socket itself (a
        // single operation goes through `Io`, which finds the socket).
        let batch_on = |f: &dyn Fn(&Socket) -> Batch| self.socket().map_or(Batch::Single, |s| f(&s));
        let mut done = 0;
        loop {
            let (op, queued) = {
                let mut st = self.st.borrow_mut();
                st.prune(dir);
                let q = &st.ops[dir as usize];
                match q.front() {
                    Some(op) => (op.clone(), q.len()),
                    None => return false,
                }
            };
            if done == limit {
                return true;
            }
            let batch = match dir {
                // A batch needs two receives waiting: skip collecting
                // candidates otherwise. (A datagram held in the read-ahead
                // slot is taken first, alone.)
                Dir::Read if queued > 1 && !self.has_read_ahead() => {
                    if self.can_read_ahead.get() {
                        batch_on(&|s| self.recv_many(owner, s, limit - done))
                    } else if self.meta_batch.get() {
                        batch_on(&|s| self.recv_many_msg(owner, s, limit - done))
                    } else {
                        Batch::Single
                    }
                }
                Dir::Read => Batch::Single,
                Dir::Write if self.gso.get() => batch_on(&|s| self.send_run(owner, s, limit - done)),
                // A stream write may be partial: writes leave one at a time.
                Dir::Write if self.stream.get() => Batch::Single,
                Dir::Write => batch_on(&|s| self.send_many(owner, s, limit - done)),
            };
            match batch {
                Batch::Sent(k) => {
                    done += k;
                    if !self.st.borrow().ready(dir) {
                        return false; // drained
                    }
                    continue;
                }
                Batch::WouldBlock if !self.would_block(dir, done == 0) => return false,
                // (A closed read side: the front receive alone ends below.)
                Batch::WouldBlock | Batch::Single => {}
            }
            match op.perform(self) {
                None => {
                    if !self.would_block(dir, done == 0) {
                        return false;
                    }
                    // The kernel would not wait either: a blocking `recv`
                    // returns 0 at once on a closed read side.
                    let front = self.st.borrow_mut().ops[dir as usize].pop_front();
                    drop(front);
                    log::debug!("token {}: receive on a closed read side: EOF", self.token.get());
                    owner.complete(op, Error::EOF, 0);
                    done += 1;
                }
                Some((err, n)) => {
                    let (front, drained) = {
                        let mut st = self.st.borrow_mut();
                        (st.ops[dir as usize].pop_front(), !st.ready(dir))
                    };
                    drop(front);
                    owner.complete(op, err, n);
                    done += 1;
                    if drained {
                        return false;
                    }
                }
            }
        }
    }

    /// A call in `dir` would block (`first`: before any operation of this
    /// run left). Returns false when the queue waits: for readiness, or for
    /// a retry timer if this was the first send after a writability event
    /// (see [`back_off`](Self::back_off)). True when the read side is
    /// closed: the front receive ends now instead, with `EOF`.
    #[cold]
    #[inline(never)]
    fn would_block(&self, dir: Dir, first: bool) -> bool {
        let mut st = self.st.borrow_mut();
        if dir == Dir::Read && st.read_closed {
            // Still ready: a run stopped by the limit goes on next turn.
            return true;
        }
        st.kernel_ready[dir as usize] = false;
        if dir == Dir::Write {
            self.write_stop.set(if first { WriteStop::BlockedFirst } else { WriteStop::BlockedAfterSome });
        }
        false
    }

    /// Handles a readiness event.
    #[inline]
    fn on_event<O: Owner + ?Sized>(self: &Rc<Self>, owner: &O, ready: Readiness) {
        let (readable, writable, error) = (ready.readable(), ready.writable(), ready.error());
        // One borrow for everything the event changes before queues run.
        let mute = {
            let mut st = self.st.borrow_mut();
            st.kernel_ready[Dir::Read as usize] |= readable;
            st.kernel_ready[Dir::Write as usize] |= writable;
            // Every event carries the whole current mask (a write event
            // too), so the last one is always up to date.
            st.read_closed = ready.read_closed();
            // Level-triggered readiness with no receive to take the data (or
            // an error to consume) would be reported at every wait: go
            // edge-triggered until a receive waits on a drained socket again.
            // Not pruned first (the read run below prunes): a cancelled
            // receive still at the front only delays the switch by one wait,
            // and the usual event, a receive waiting, pays no virtual call
            // to find that out.
            (readable || error) && st.level && st.ops[Dir::Read as usize].is_empty()
        };
        if mute && self.is_open() {
            self.set_level(owner, false);
        }
        if readable {
            self.continue_queue(owner, Dir::Read);
        }
        if writable {
            self.continue_writes(owner, false);
        }
        if error {
            if self.recv_errors.get() {
                // Before the error waits: the report waits take them.
                self.drain_reports();
            }
            let waits: Vec<_> = self.st.borrow_mut().error_waits.drain(..).collect();
            for op in waits {
                owner.complete(op, Error::NONE, 0);
            }
            if self.recv_errors.get() {
                self.hand_out_reports(owner);
            }
        }
    }

    /// Runs a queue. If the limit stopped it, an operation still waits and
    /// could progress, and no event will say so: the socket goes on the
    /// backlog and is looked at again next turn, without waiting. (Any other
    /// stop leaves nothing that could progress: the queue is empty, or the
    /// socket is not [`ready`](IoState::ready), a datagram read ahead
    /// counting as ready.)
    #[inline]
    fn continue_queue<O: Owner + ?Sized>(self: &Rc<Self>, owner: &O, dir: Dir) {
        if self.run_queue(owner, dir, owner.reactor().operations_per_event.get()) {
            self.to_backlog(owner, dir);
        } else if dir == Dir::Write {
            self.drop_idle_write_interest(owner);
        }
    }

    /// Runs the write queue after a writability event (`retry` false) or a
    /// retry timer (`retry` true), and decides how the sends left wait.
    ///
    /// Writable, yet the first send would block: waiting for writability
    /// again would wake at once, for ever. An unconnected Unix datagram
    /// socket whose receiver's queue is full is like that (its own buffer
    /// has room), and the kernel gives no notice when that queue drains.
    /// After [`FUTILE_WRITES`] such events in a row (one could be a race
    /// with another sender to a connected peer, which the kernel does wake
    /// reliably) the sends wait for a retry timer instead (see
    /// [`back_off`](Self::back_off)); after a retry, for the next one while
    /// the socket still refuses them.
    #[inline(never)]
    fn continue_writes<O: Owner + ?Sized>(self: &Rc<Self>, owner: &O, retry: bool) {
        self.write_stop.set(WriteStop::Other);
        if self.run_queue(owner, Dir::Write, owner.reactor().operations_per_event.get()) {
            self.futile_writes.set(0);
            self.to_backlog(owner, Dir::Write);
            return;
        }
        match self.write_stop.get() {
            WriteStop::BlockedFirst if retry || self.futile_writes.get() + 1 >= FUTILE_WRITES => {
                self.back_off(owner, false);
            }
            WriteStop::BlockedFirst => {
                self.futile_writes.set(self.futile_writes.get() + 1);
                self.drop_idle_write_interest(owner);
            }
            WriteStop::BlockedAfterSome if retry => self.back_off(owner, true),
            _ => {
                self.futile_writes.set(0);
                self.backoffs.set(0);
                self.drop_idle_write_interest(owner);
            }
        }
    }

    /// Has the write queue retried on a timer, with writability out of the
    /// interest: 1 ms after a retry that sent something, else twice as long
    /// as the last time, at most 64 ms.
    #[cold]
    fn back_off<O: Owner + ?Sized>(self: &Rc<Self>, owner: &O, progressed: bool) {
        if !self.is_open() {
            return;
        }
        self.futile_writes.set(0);
        let n = if progressed { 0 } else { self.backoffs.get() };
        self.backoffs.set(n.saturating_add(1));
        let after = retry_delay(u32::from(n));
        log::debug!("token {}: writable yet refusing sends: retrying in {after:?}", self.token.get());
        self.st.borrow_mut().write_backoff = true;
        self.sync_interest(owner, false);
        let me: Weak<dyn Wake> = Rc::downgrade(self) as Weak<IoObject>;
        owner.wake_after(me, after);
    }

    /// Drops the write interest once nothing waits for it; registers only if
    /// sends are left waiting (a deferred flush that would block), so a
    /// socket whose sends all leave stays out of epoll.
    fn drop_idle_write_interest<O: Owner + ?Sized>(&self, owner: &O) {
        if !self.is_open() {
            return;
        }
        let (registered, waiting) = {
            let mut st = self.st.borrow_mut();
            st.prune(Dir::Write);
            (st.registered, !st.ops[Dir::Write as usize].is_empty())
        };
        if registered || waiting {
            self.sync_interest(owner, false);
        }
    }

    /// Has the reactor run the `dir` queue on its next turn, without waiting
    /// for an event.
    fn to_backlog<O: Owner + ?Sized>(self: &Rc<Self>, owner: &O, dir: Dir) {
        let mut st = self.st.borrow_mut();
        let listed = st.backlog.iter().any(|b| *b);
        st.backlog[dir as usize] = true;
        if !listed {
            owner.reactor().backlog.borrow_mut().push(self.clone());
            owner.reactor().backlogged.set(true);
        }
    }

    /// After a synchronous receive: if it left a datagram read ahead while
    /// asynchronous receives wait, no readiness event will come for that
    /// datagram (the kernel's queue may be empty), so they are run next turn.
    pub(crate) fn after_sync_recv(self: &Rc<Self>) {
        self.backlog_if_ready(Dir::Read);
    }

    /// Data arrived that no readiness event will announce (it was read into
    /// memory by someone other than a queued operation, as a signal set's
    /// occurrences are): the next receive is tried at once, and queued ones
    /// are run on the next turn.
    pub(crate) fn wake_reads(self: &Rc<Self>) {
        self.st.borrow_mut().kernel_ready[Dir::Read as usize] = true;
        self.backlog_if_ready(Dir::Read);
    }

    /// Lists the socket on the backlog if an operation waits in `dir` and
    /// could progress.
    fn backlog_if_ready(self: &Rc<Self>, dir: Dir) {
        let wants = self.st.borrow_mut().wants_turn(dir);
        if wants && let Some(owner) = self.owner.upgrade() {
            self.to_backlog(&*owner, dir);
        }
    }

    /// Completes every pending operation with `OPERATION_ABORTED`.
    pub(crate) fn cancel_all<O: Owner + ?Sized>(&self, owner: &O) -> usize {
        let ops = self.take_ops();
        let mut n = 0;
        for op in ops {
            if !op.core().is_done() {
                owner.complete(op, Error::OPERATION_ABORTED, 0);
                n += 1;
            }
        }
        n
    }

    fn take_ops(&self) -> Vec<Rc<dyn Completion>> {
        let mut st = self.st.borrow_mut();
        let [r, w] = &mut st.ops;
        let mut v: Vec<Rc<dyn Completion>> = r.drain(..).chain(w.drain(..)).map(|o| o as Rc<dyn Completion>).collect();
        v.extend(st.error_waits.drain(..));
        v.extend(st.report_waits.drain(..).map(|w| w as Rc<dyn Completion>));
        v
    }

    /// Takes the socket out of the reactor: deregisters it and aborts its
    /// pending operations (through the queue). `None` if already closed.
    pub(crate) fn detach(&self) -> Option<Rc<Socket>> {
        let sock = self.sock.borrow_mut().take();
        let endpoint = self.sim.borrow_mut().take();
        if sock.is_none() && endpoint.is_none() {
            return None; // closed already
        }
        {
            let mut st = self.st.borrow_mut();
            drop(st.read_ahead.take());
            st.reports.clear();
        }
        let token = self.token.get();
        if let Some(endpoint) = &endpoint {
            endpoint.deregister(token);
            endpoint.close();
        }
        match self.owner.upgrade() {
            Some(owner) => {
                if std::mem::take(&mut self.st.borrow_mut().registered) {
                    let r = owner.reactor();
                    r.registered.set(r.registered.get() - 1);
                    if let Some(sock) = &sock
                        && let Err(e) = r.backend.deregister(sock.as_fd())
                    {
                        log::debug!("deregistering token {token} failed: {e}");
                    }
                }
                let removed = owner.reactor().regs.borrow_mut().try_remove(token);
                self.cancel_all(&*owner);
                drop(removed);
                log::debug!("socket closed, token {token}");
            }
            None => {
                for op in self.take_ops() {
                    op.abandon();
                }
            }
        }
        sock
    }

    /// Context teardown: close the descriptor and hand over every operation.
    pub(crate) fn teardown(&self, ops: &mut Vec<Rc<dyn Completion>>) {
        drop(self.sock.borrow_mut().take());
        if let Some(endpoint) = self.sim.borrow_mut().take() {
            endpoint.close();
        }
        drop(self.st.borrow_mut().read_ahead.take());
        ops.extend(self.take_ops());
    }
}

/// A retry of the sends held back by [`IoObject::back_off`].
impl Wake for IoObject {
    fn wake(self: Rc<Self>) {
        let Some(owner) = self.owner.upgrade() else { return };
        {
            let mut st = self.st.borrow_mut();
            st.write_backoff = false;
            st.kernel_ready[Dir::Write as usize] = true;
        }
        // Listed first: should a buffer's own code panic in the run below,
        // the next turn runs the queue again (no timer or event would).
        self.to_backlog(&*owner, Dir::Write);
        self.continue_writes(&*owner, true);
    }
}

/// A receive on a simulated port (out of line: the real path stays small
/// enough to inline).
#[inline(never)]
fn sim_recv(obj: &IoObject, bufs: &mut [IoSliceMut<'_>], flags: i32, from: sys::Sender<'_>) -> io::Result<usize> {
    // Borrowed for the call: no user code runs in it.
    let sim = obj.sim.borrow();
    let Some(endpoint) = &*sim else { return Err(closed()) };
    let (n, sender) = endpoint.recv(bufs, flags & libc::MSG_PEEK != 0)?;
    if let Some(from) = from {
        from.set(Some(sender));
    }
    Ok(n)
}

/// A send on a simulated port, or on a closed socket (out of line, as
/// [`sim_recv`]).
#[inline(never)]
fn sim_send(obj: &IoObject, bufs: &[IoSlice<'_>], dest: Option<&SockAddr>, flags: i32) -> io::Result<usize> {
    let sim = obj.sim.borrow();
    let Some(endpoint) = &*sim else { return Err(closed()) };
    endpoint.send(bufs, dest.and_then(SockAddr::as_socket), flags)
}

/// [`IoObject::past_reports`] on a socket with error reports on (out of
/// line: the usual path stays as it was).
#[cold]
#[inline(never)]
fn retry_reported<T>(send: bool, mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    match f() {
        Err(e) => retry_reported_after(e, send, f),
        r => r,
    }
}

/// A call failed with `e`: if that may be the `sk_err` copy of a report
/// (reading it cleared it), the call is made once more. Only once: a
/// second failure is the call's own (a send with no route fails so every
/// time, and a datagram too large for the path stays too large).
#[cold]
#[inline(never)]
fn retry_reported_after<T>(e: io::Error, send: bool, mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    if reported_errno(&e, send) {
        log::trace!("an error the error queue reports too: {e}; once more");
        f()
    } else {
        Err(e)
    }
}

/// An error the kernel reports through the error queue too (ICMP
/// unreachables; for a receive, path MTU reports). A send's `EMSGSIZE` is
/// its own (a datagram too large, which queues a report of its own: made
/// again, it would queue a second).
#[cold]
fn reported_errno(e: &io::Error, send: bool) -> bool {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN) => true,
        Some(libc::EMSGSIZE | libc::EPROTO) => !send,
        _ => false,
    }
}

/// The error a call on a closed socket gets (EBADF, as the kernel's).
#[cold]
fn closed() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

/// An operation's system calls on this socket: receives go through the
/// read-ahead slot, and every transfer is counted.
impl Io for IoObject {
    /// From the read-ahead slot if a datagram waits there, else from the
    /// socket. A plain receive uses `recvmmsg` with a read-ahead slot, so that one
    /// call also says whether the socket is drained (then the read side
    /// waits for the next edge without another call).
    fn recv(&self, bufs: &mut [IoSliceMut<'_>], flags: i32, from: sys::Sender<'_>) -> io::Result<usize> {
        // Borrowed for the call (no user code runs in it): a close from a
        // buffer's own code before it finds the socket gone.
        let sock = self.sock.borrow();
        let n = match &*sock {
            Some(sock) => match self.recv_uncounted(sock, bufs, flags, from) {
                Ok(n) => n,
                Err(e) if self.recv_errors.get() => {
                    retry_reported_after(e, false, || self.recv_uncounted(sock, bufs, flags, from))?
                }
                Err(e) => return Err(e),
            },
            None => sim_recv(self, bufs, flags, from)?,
        };
        if flags & libc::MSG_PEEK == 0 {
            self.counted_in(n);
        }
        Ok(n)
    }

    fn recv_from_any(&self, bufs: &mut [IoSliceMut<'_>], flags: i32) -> io::Result<(usize, SockAddr)> {
        let sock = self.sock.borrow();
        let r = match (&*sock, self.endpoint()) {
            (Some(sock), _) => sys::recv_from_any(sock, bufs, flags)?,
            (None, Some(endpoint)) => {
                let (n, from) = endpoint.recv(bufs, flags & libc::MSG_PEEK != 0)?;
                (n, from.into())
            }
            (None, None) => return Err(closed()),
        };
        if flags & libc::MSG_PEEK == 0 {
            self.counted_in(r.0);
        }
        Ok(r)
    }

    #[inline]
    fn send(&self, bufs: &[IoSlice<'_>], dest: Option<&SockAddr>, flags: i32) -> io::Result<usize> {
        let sock = self.sock.borrow();
        let n = match &*sock {
            Some(sock) => match sys::send(sock, bufs, dest, flags) {
                Ok(n) => n,
                Err(e) if self.recv_errors.get() => {
                    retry_reported_after(e, true, || sys::send(sock, bufs, dest, flags))?
                }
                Err(e) => return Err(e),
            },
            None => sim_send(self, bufs, dest, flags)?,
        };
        self.counted_out(n);
        Ok(n)
    }

    fn os_socket(&self) -> Option<Rc<Socket>> {
        self.socket()
    }

    fn accept(&self) -> Option<Result<Accepted, Error>> {
        if let Some(sock) = &*self.sock.borrow() {
            return accept_now(sock);
        }
        match self.endpoint() {
            Some(Endpoint::Listener(l)) => match l.accept() {
                Ok(s) => Some(Ok(Accepted::Sim(s))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) => Some(Err(Error::from(e))),
            },
            Some(_) => Some(Err(Error::INVALID_ARGUMENT)), // not listening
            None => Some(Err(Error::BAD_DESCRIPTOR)),
        }
    }

    fn recv_msg(&self, bufs: &mut [IoSliceMut<'_>], flags: i32) -> io::Result<MsgInfo> {
        let sock = self.sock.borrow();
        let info = match &*sock {
            Some(sock) => self.past_reports(false, || self.recv_msg_uncounted(sock, bufs, flags))?,
            None => match &*self.sim.borrow() {
                Some(endpoint) => endpoint.recv_msg(bufs, flags & libc::MSG_PEEK != 0)?,
                None => return Err(closed()),
            },
        };
        if flags & libc::MSG_PEEK == 0 {
            self.counted_in(info.len);
        }
        Ok(info)
    }

    fn send_msg(&self, bufs: &[IoSlice<'_>], dest: Option<&SockAddr>, info: &SendInfo) -> io::Result<usize> {
        let sock = self.sock.borrow();
        let n = match &*sock {
            Some(sock) => self.past_reports(true, || sys::msg::send_msg(sock, bufs, dest, info))?,
            None => match &*self.sim.borrow() {
                Some(endpoint) => endpoint.send_msg(bufs, dest.and_then(SockAddr::as_socket), info)?,
                None => return Err(closed()),
            },
        };
        self.counted_out(n);
        Ok(n)
    }

    fn connect_outcome(&self) -> Option<Error> {
        if let Some(sock) = &*self.sock.borrow() {
            return connect_outcome_of(sock);
        }
        match self.endpoint() {
            Some(Endpoint::Stream(s)) => s.connect_outcome().map(|r| r.map_or_else(Error::from, |()| Error::NONE)),
            Some(_) => Some(Error::INVALID_ARGUMENT),
            None => Some(Error::BAD_DESCRIPTOR),
        }
    }
}

/// The readiness backend plus the registrations.
pub(crate) struct Reactor {
    /// Where descriptors are registered and readiness is waited for.
    backend: Backend,
    regs: RefCell<Slab<Rc<IoObject>>>,
    /// Sockets whose queue stopped at the limit with readiness left.
    backlog: RefCell<Vec<Rc<IoObject>>>,
    /// Operations one socket may complete per direction per turn.
    pub(crate) operations_per_event: Cell<usize>,
    /// Where a receive puts the datagram it reads ahead (allocated on first use).
    read_ahead_space: RefCell<Box<[u8]>>,
    /// Descriptors added to epoll.
    registered: Cell<usize>,
    /// `backlog` is not empty (read on every pass, without a borrow).
    backlogged: Cell<bool>,
    /// `flush_list` is not empty.
    deferred: Cell<bool>,
    /// Sockets with sends deferred to the end of the pass.
    flush_list: RefCell<Vec<Rc<IoObject>>>,
    /// Where a batch of sends is assembled (`sendmmsg`, or one segmented
    /// send), from the first batch on. Boxed: one word in the reactor.
    batch: Cell<Option<Box<SendBatch>>>,
    /// The loop's counters (see `metrics()`), shared with every socket.
    pub(crate) counters: Rc<Counters>,
}

impl Reactor {
    pub(crate) fn new() -> io::Result<Reactor> {
        Ok(Reactor {
            backend: Backend::new()?,
            regs: RefCell::new(Slab::new()),
            backlog: RefCell::new(Vec::new()),
            operations_per_event: Cell::new(DEFAULT_OPERATIONS_PER_EVENT),
            read_ahead_space: RefCell::new(Box::default()),
            registered: Cell::new(0),
            backlogged: Cell::new(false),
            deferred: Cell::new(false),
            flush_list: RefCell::new(Vec::new()),
            batch: Cell::default(),
            counters: Rc::default(),
        })
    }

    /// One registration that is never removed (a simulated context's network).
    pub(crate) fn add_standing_registration(&self) {
        self.registered.set(self.registered.get() + 1);
    }

    pub(crate) fn has_registrations(&self) -> bool {
        self.registered.get() > 0
    }

    /// Sends the sends deferred during the pass (sockets with GSO on), each
    /// socket's queue coalesced into as few system calls as it allows.
    #[inline]
    pub(crate) fn flush_deferred<O: Owner + ?Sized>(&self, owner: &O) {
        if self.deferred.get() {
            self.flush_listed(owner);
        }
    }

    /// [`flush_deferred`](Self::flush_deferred) when a socket is listed: out
    /// of line, so that the loop of a context without GSO sockets does not
    /// carry it.
    #[inline(never)]
    fn flush_listed<O: Owner + ?Sized>(&self, owner: &O) {
        self.deferred.set(false);
        let mut list = std::mem::take(&mut *self.flush_list.borrow_mut());
        for obj in list.drain(..) {
            obj.st.borrow_mut().flush_listed = false;
            obj.deferring.set(false);
            obj.continue_queue(owner, Dir::Write);
        }
        // The list's room serves the next pass (a socket listed meanwhile
        // keeps the one it made).
        let mut next = self.flush_list.borrow_mut();
        if next.is_empty() {
            *next = list;
        }
    }

    /// Nothing registered and nothing left over from the last turn.
    #[inline]
    pub(crate) fn is_idle(&self) -> bool {
        self.registered.get() == 0 && !self.backlogged.get()
    }

    pub(crate) fn has_backlog(&self) -> bool {
        self.backlogged.get()
    }

    /// Continues the queues listed last turn. An entry says only "look
    /// again": whether the queue runs is decided from the socket's state now
    /// (an event since may have drained it, or left a datagram read ahead),
    /// so an entry can never be stale in either direction.
    pub(crate) fn run_backlog<O: Owner + ?Sized>(&self, owner: &O) {
        let list = std::mem::take(&mut *self.backlog.borrow_mut());
        self.backlogged.set(false);
        for obj in list {
            let dirs = std::mem::take(&mut obj.st.borrow_mut().backlog);
            for dir in [Dir::Read, Dir::Write] {
                if dirs[dir as usize] && obj.st.borrow_mut().wants_turn(dir) {
                    obj.continue_queue(owner, dir);
                }
            }
        }
    }

    /// Waits for events at most `timeout` and handles them. An error is
    /// the backend's wait failing (not EINTR, which is a wait that reported
    /// nothing): waiting again at once would most likely fail the same way.
    pub(crate) fn poll<O: Owner + ?Sized>(&self, owner: &O, timeout: Option<Duration>) -> io::Result<()> {
        let c = &self.counters;
        bump(&c.reactor_waits, 1);
        // The clock is read only around a wait that may block, and only if
        // asked for: two reads would cost more than the rest of a turn.
        let start = (c.wait_timing.get() && timeout != Some(Duration::ZERO)).then(|| owner.now());
        let r = self.backend.wait(timeout);
        if let Some(start) = start {
            c.waited(owner.now().saturating_duration_since(start));
        }
        let reported = r?;
        bump(&c.events, reported.len() as u64);
        reported.for_each(|token, ready| self.dispatch(owner, token, ready));
        Ok(())
    }

    /// Hands `ready` to the socket registered as `token` (from a wait of
    /// the backend, or of the simulation).
    #[inline]
    pub(crate) fn dispatch<O: Owner + ?Sized>(&self, owner: &O, token: usize, ready: Readiness) {
        // A clone, not a borrow of the slab: what the event sets off may
        // add or remove registrations, even this one.
        let obj = self.regs.borrow().get(token).cloned();
        if let Some(obj) = obj {
            obj.on_event(owner, ready);
        }
    }

    /// Every socket of the context, in token order (a simulated crash
    /// closes some).
    pub(crate) fn objects(&self) -> Vec<Rc<IoObject>> {
        self.regs.borrow().iter().map(|(_, o)| o.clone()).collect()
    }

    /// The backend's descriptor: stable for the reactor's life, whatever is
    /// registered or not (a host loop polls it for readability).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.backend.raw_fd()
    }

    /// [`raw_fd`](Self::raw_fd), borrowed for as long as the reactor lives.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.backend.as_fd()
    }

    /// Sends are deferred to the end of the pass (GSO sockets).
    pub(crate) fn has_deferred(&self) -> bool {
        self.deferred.get()
    }

    /// The backend, for tests that provoke its failures.
    #[cfg(test)]
    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The backend's waker (created on the first call, then shared): a
    /// wake from any thread makes the loop's wait return.
    pub(crate) fn waker(&self) -> io::Result<Arc<Waker>> {
        self.backend.waker()
    }

    /// Empties the registrations (context teardown).
    pub(crate) fn take_all(&self) -> Vec<Rc<IoObject>> {
        self.backlog.borrow_mut().clear();
        self.backlogged.set(false);
        self.deferred.set(false);
        self.flush_list.borrow_mut().clear();
        self.regs.borrow_mut().drain().collect()
    }
}
