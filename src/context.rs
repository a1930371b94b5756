//! `IoContext`: the run loop, work counting, stop/restart, post/dispatch/defer.

use crate::backend::Readiness;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::op::{CancellationType, Completion};
use crate::queue::ReadyQueue;
use crate::reactor::{Owner, Reactor};
use crate::remote::{self, Remote};
use crate::sim::trace::Event;
use crate::sim::world::World;
use crate::sim::{Host, Sim, SimConfig};
use crate::sys::WaitHandler;
use crate::timer::{TimerKey, TimerQueue, TimerTarget, Wake, Watched};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The state behind an `IoContext`; everything else holds it weakly.
pub(crate) struct Inner {
    pub(crate) queue: ReadyQueue,
    /// Pending operations, pending timer waits and live work guards.
    outstanding: Cell<usize>,
    stopped: Cell<bool>,
    /// How many `run*`/`poll*` calls of this context are on the stack.
    depth: Cell<usize>,
    /// `DROPPING` and `TRACING`, in one word so that the paths that queue
    /// handlers test both with one load.
    special: Cell<u8>,
    /// The simulated world (virtual clock, trace) of a simulated context.
    sim: Option<Rc<World>>,
    pub(crate) reactor: Reactor,
    pub(crate) timers: RefCell<TimerQueue>,
    /// What `Remote`s share with the loop, once `remote()` was called.
    remote: RefCell<Option<Arc<remote::Shared>>>,
    /// `remote` is set: the loop checks for remote posts (one flag load).
    has_remote: Cell<bool>,
}

/// `Inner::special`: the context is being dropped; nothing new is queued.
const DROPPING: u8 = 1;
/// `Inner::special`: a simulated context; what is queued is traced.
const TRACING: u8 = 2;

impl Inner {
    /// The one place the loop reads the clock: virtual on a simulated context.
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        match &self.sim {
            None => Instant::now(),
            Some(world) => world.now(),
        }
    }

    /// The simulated world, if the context is simulated.
    pub(crate) fn world(&self) -> Option<&Rc<World>> {
        self.sim.as_ref()
    }

    /// Adds `event` to the simulation's trace (simulated contexts only).
    #[cold]
    fn trace(&self, event: Event) {
        if let Some(world) = &self.sim {
            world.trace(event);
        }
    }

    /// Fails with `Unsupported` on a simulated context: `what` needs the real
    /// operating system (a descriptor, a signal, another thread).
    pub(crate) fn require_real(&self, what: &str) -> io::Result<()> {
        match &self.sim {
            None => Ok(()),
            Some(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{what} is not available on a simulated context (it is not simulated yet, or needs the real system)"
                ),
            )),
        }
    }

    /// `now + d`, or a time beyond any deadline when that overflows.
    pub(crate) fn later(&self, d: Duration) -> Instant {
        later(self.now(), d)
    }

    #[inline]
    pub(crate) fn add_work(&self) {
        self.outstanding.set(self.outstanding.get() + 1);
    }

    #[inline]
    fn remove_work(&self) {
        debug_assert!(self.outstanding.get() > 0, "work count went below zero");
        self.outstanding.set(self.outstanding.get().saturating_sub(1));
    }

    pub(crate) fn is_dropping(&self) -> bool {
        self.special.get() & DROPPING != 0
    }

    /// The pass of handlers running now (`None` outside `run*`/`poll*`):
    /// a datagram socket sends the first datagram of a pass at once and
    /// defers the rest to the pass's end (see `IoObject::defer_send`).
    #[inline]
    pub(crate) fn pass(&self) -> Option<u64> {
        (self.depth.get() > 0).then(|| self.queue.passes.get())
    }

    #[inline(always)]
    pub(crate) fn post<F: FnOnce() + 'static>(&self, f: F) {
        if self.special.get() != 0 {
            return self.post_special(f);
        }
        self.queue.push(f);
    }

    /// [`post`](Self::post) while the context is being dropped or simulated.
    #[cold]
    #[inline(never)]
    fn post_special<F: FnOnce() + 'static>(&self, f: F) {
        self.post_traced(Event::Posted, f);
    }

    /// Posts `f`, the handler of an operation that completed at once with
    /// `(err, n)`: as [`post`](Self::post), its result traced on a
    /// simulated context.
    #[inline(always)]
    pub(crate) fn post_done<F: FnOnce() + 'static>(&self, err: Error, n: usize, f: F) {
        if self.special.get() != 0 {
            return self.post_done_special(err, n, f);
        }
        self.queue.push(f);
    }

    #[cold]
    #[inline(never)]
    fn post_done_special<F: FnOnce() + 'static>(&self, err: Error, n: usize, f: F) {
        self.post_traced(Event::Completed { err: err.code(), n: n as u64 }, f);
    }

    fn post_traced<F: FnOnce() + 'static>(&self, event: Event, f: F) {
        if self.is_dropping() {
            log::debug!("handler posted while the context is being dropped: dropped unrun");
            return;
        }
        self.trace(event);
        self.queue.push(f);
    }

    /// Posts `handler(err, n)`. The error and a length below 2^32 share one
    /// word, so that a handler of two words still fits a slot of the ready
    /// ring with its result instead of being boxed.
    #[inline(always)]
    pub(crate) fn post_result<F: FnOnce(Error, usize) + 'static>(&self, handler: F, err: Error, n: usize) {
        match u32::try_from(n) {
            Ok(n32) => {
                let packed = (u64::from(n32) << 32) | u64::from(err.code() as u32);
                self.post_done(err, n, move || {
                    handler(Error::from_code(packed as u32 as i32), (packed >> 32) as usize)
                });
            }
            Err(_) => self.post_done(err, n, move || handler(err, n)),
        }
    }

    /// Removes the `cancel_after` entry `key`, if any, from the timer queue.
    /// It holds no handler: dropping it runs no user code.
    #[inline]
    pub(crate) fn drop_cancel_after(&self, key: Option<TimerKey>) {
        if let Some(key) = key {
            let removed = self.timers.borrow_mut().remove(key);
            drop(removed);
        }
    }

    /// Completes a pending operation: records the result, removes its timer
    /// entries and queues it to have its handler run. The single path by which
    /// every operation leaves the pending state.
    #[inline]
    pub(crate) fn complete(&self, op: Rc<dyn Completion>, err: Error, n: usize) {
        let core = op.core();
        if core.is_done() {
            return;
        }
        core.set_result(err, n);
        self.drop_cancel_after(core.cancel_key.take());
        self.remove_work();
        log::trace!("operation completed: {err:?} {n}");
        if self.special.get() & TRACING != 0 {
            self.trace(Event::Completed { err: err.code(), n: n as u64 });
        }
        self.queue.push(move || op.invoke());
    }

    /// Marks a composed operation complete (its handler is queued by the
    /// caller) and removes the `cancel_after` entry watching it.
    pub(crate) fn complete_composed(&self, core: &crate::op::OpCore) {
        if !core.is_done() {
            core.set_result(Error::NONE, 0);
        }
        self.drop_cancel_after(core.cancel_key.take());
    }

    /// Cancels `op` if it is pending and honours a kind in `ty`.
    pub(crate) fn cancel_op(&self, op: Rc<dyn Completion>, ty: CancellationType) -> bool {
        if !op.supports().intersects(ty) {
            return false;
        }
        if let Some(r) = op.cancel_hook() {
            return r;
        }
        if op.core().is_done() {
            return false;
        }
        self.complete(op, Error::OPERATION_ABORTED, 0);
        true
    }

    /// Ends a pending timer wait: removes the `cancel_after` watching it and
    /// queues its handler with `err`. The single path by which every timer
    /// wait leaves the pending state.
    fn complete_wait(&self, handler: WaitHandler, cancel: Option<TimerKey>, err: Error) {
        self.drop_cancel_after(cancel);
        self.remove_work();
        log::trace!("timer wait completed: {err:?}");
        if self.is_dropping() {
            drop(handler);
        } else {
            if self.special.get() & TRACING != 0 {
                self.trace(Event::TimerEnded { err: err.code() });
            }
            self.queue.push_wait(handler, err);
        }
    }

    /// Cancels the timer wait queued under `key`; false when it has ended.
    pub(crate) fn cancel_wait(&self, key: TimerKey) -> bool {
        let removed = self.timers.borrow_mut().remove_wait(key);
        match removed {
            Some((handler, cancel)) => {
                self.complete_wait(handler, cancel, Error::OPERATION_ABORTED);
                true
            }
            None => false,
        }
    }

    /// Moves what other threads posted into the ready queue, in order.
    #[inline]
    fn drain_remote(&self) {
        if self.has_remote.get() {
            self.drain_remote_posts();
        }
    }

    #[inline(never)]
    fn drain_remote_posts(&self) {
        // No `Arc` clone per pass: posting below never touches `remote`.
        let taken = self.remote.borrow().as_ref().and_then(|r| r.take());
        let Some((jobs, stop)) = taken else { return };
        log::trace!("{} remote posts", jobs.len());
        for job in jobs {
            self.post(job);
        }
        if stop {
            self.stopped.set(true);
        }
    }

    /// Fires the timer entries that are due, at most `FIRE_BATCH` of them:
    /// the rest fire on the next turn, which then does not wait. Handlers
    /// queued in small groups run while the ready ring is still in cache, and
    /// a backlog of a million expired timers never needs a ring that large.
    #[inline]
    fn fire_timers(&self) {
        if self.timers.borrow().len() != 0 {
            self.fire_due_timers();
        }
    }

    /// [`fire_timers`](Self::fire_timers) when there are timers: out of
    /// line, so that the loop of a context without timers does not carry it.
    #[inline(never)]
    fn fire_due_timers(&self) {
        let now = self.timers.borrow().ns(self.now());
        for _ in 0..FIRE_BATCH {
            let due = self.timers.borrow_mut().pop_due(now);
            match due {
                None => break,
                Some((TimerTarget::Wait(handler), cancel)) => self.complete_wait(handler, cancel, Error::NONE),
                Some((TimerTarget::CancelAfter(Watched::Op(w), ty), _)) => {
                    if let Some(op) = w.upgrade() {
                        op.core().cancel_key.set(None);
                        self.cancel_op(op, ty);
                    }
                }
                Some((TimerTarget::CancelAfter(Watched::Wait(key), ty), _)) => {
                    // Timer waits honour every kind of cancellation.
                    if !ty.is_empty() {
                        self.cancel_wait(key);
                    }
                }
                Some((TimerTarget::Wake(w), _)) => {
                    if let Some(w) = w.upgrade() {
                        w.wake();
                    }
                }
            }
        }
    }

    /// One turn of the reactor: wait for I/O at most `timeout` (bounded by the
    /// nearest deadline), perform the operations that became ready, fire timers.
    #[inline(always)]
    fn reactor_turn(&self, timeout: Option<Duration>) {
        // Nothing registered, no timers and no waiting: nothing to poll. This
        // keeps a loop of plain handlers free of system calls (as Asio, which
        // creates no reactor until an I/O object needs one).
        // (A simulated context is never idle: its network may hold datagrams
        // due now, which only its wait delivers; see `with_world`.)
        if timeout == Some(Duration::ZERO) && self.reactor.is_idle() && self.timers.borrow().len() == 0 {
            return;
        }
        self.reactor_turn_io(timeout);
    }

    fn reactor_turn_io(&self, mut timeout: Option<Duration>) {
        if self.reactor.has_backlog() {
            timeout = Some(Duration::ZERO);
            self.reactor.run_backlog(self);
        }
        let next = self.timers.borrow_mut().next_deadline();
        if let Some(at) = next {
            let t = at.saturating_duration_since(self.now());
            timeout = Some(timeout.map_or(t, |x| x.min(t)));
        }
        if let Some(world) = &self.sim {
            // Nothing outside the simulation can happen: a wait is a jump to
            // its end (the nearest deadline or arrival, or the run's end),
            // and what arrived is reported as epoll would report it.
            let c = &self.reactor.counters;
            crate::metrics::bump(&c.reactor_waits, 1);
            // The report's room is kept for the next wait (taken out meanwhile:
            // what the reports set off may not reach it, but should not find
            // it borrowed either).
            let mut ready = world.take_ready_room();
            world.wait(timeout, &mut ready);
            crate::metrics::bump(&c.events, ready.len() as u64);
            for r in ready.drain(..) {
                self.reactor.dispatch(self, r.token, Readiness::simulated(r.readable, r.writable, r.error));
            }
            world.give_ready_room(ready);
            // Real: nothing can become ready without a registration, so a
            // zero wait with none makes no system call.
        } else if (timeout != Some(Duration::ZERO) || self.reactor.has_registrations())
            && let Err(e) = self.reactor.poll(self, timeout)
        {
            // Waiting again would fail again, at once: stop rather than spin.
            // The next run* (after restart) waits again.
            log::error!("the reactor's wait failed, the io context stops: {e}");
            self.stopped.set(true);
            return;
        }
        self.drain_remote();
        self.fire_timers();
    }
}

/// A crash of a simulated host closes its sockets (`Sim::crash`).
impl Host for Inner {
    fn crash(&self, ip: std::net::IpAddr) {
        for obj in self.reactor.objects() {
            let on_ip = obj.endpoint().and_then(|e| e.local_addr().ok()).is_some_and(|a| a.ip() == ip);
            if on_ip {
                log::debug!(target: "ioctx::sim", "crash of {ip}: a socket closes");
                drop(obj.detach());
            }
        }
    }
}

/// The reactor's view of its loop (the reactor names no type above it).
impl Owner for Inner {
    #[inline]
    fn reactor(&self) -> &Reactor {
        &self.reactor
    }
    #[inline]
    fn add_work(&self) {
        Inner::add_work(self)
    }
    #[inline]
    fn complete(&self, op: Rc<dyn Completion>, err: Error, n: usize) {
        Inner::complete(self, op, err, n)
    }
    #[inline]
    fn now(&self) -> Instant {
        Inner::now(self)
    }
    fn wake_after(&self, what: Weak<dyn Wake>, after: Duration) {
        let at = self.later(after);
        let _key = self.timers.borrow_mut().insert(at, TimerTarget::Wake(what));
    }
}

impl AsRawFd for IoContext {
    /// The context's epoll descriptor, for a host loop (see
    /// [`IoContext::next_timeout`]). It is the same for the context's whole life.
    fn as_raw_fd(&self) -> RawFd {
        self.inner.reactor.raw_fd()
    }
}

impl AsFd for IoContext {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.reactor.as_fd()
    }
}

/// The most timer entries one reactor turn fires.
const FIRE_BATCH: usize = 256;

/// `now + d`, or about a century after `now` when that overflows (the
/// furthest a deadline is set).
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or_else(|| far_future(now))
}

fn far_future(now: Instant) -> Instant {
    let mut d = Duration::from_secs(100 * 365 * 24 * 3600);
    loop {
        if let Some(t) = now.checked_add(d) {
            return t;
        }
        d /= 2;
    }
}

/// Counts this context's `run*` calls on the stack, even through a panic.
struct DepthGuard<'a>(&'a Inner);
impl<'a> DepthGuard<'a> {
    fn enter(inner: &'a Inner) -> Self {
        inner.depth.set(inner.depth.get() + 1);
        DepthGuard(inner)
    }
}
impl Drop for DepthGuard<'_> {
    fn drop(&mut self) {
        self.0.depth.set(self.0.depth.get() - 1);
    }
}

/// The event loop: it owns the reactor, the ready queue, the timers and every
/// socket registered with it (Asio's `io_context`).
///
/// Single-threaded (`!Send`, `!Sync`) and not `Clone`: handlers capture an
/// [`Executor`] instead. `IoContext` derefs to `Executor`, so `ctx.post(..)`
/// works and every constructor that takes `&Executor` takes `&ctx`.
///
/// Dropping it closes its sockets and drops every pending handler without
/// running it.
pub struct IoContext {
    exec: Executor,
    inner: Rc<Inner>,
}

impl fmt::Debug for IoContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoContext")
            .field("stopped", &self.inner.stopped.get())
            .field("outstanding", &self.inner.outstanding.get())
            .finish()
    }
}

impl Deref for IoContext {
    type Target = Executor;
    fn deref(&self) -> &Executor {
        &self.exec
    }
}

#[derive(Clone, Copy)]
struct RunMode {
    /// Return after one handler.
    one: bool,
    /// Wait for work (`run*`) or never (`poll*`).
    block: bool,
    deadline: Option<Instant>,
}

impl IoContext {
    /// Creates a context and its reactor (an epoll instance).
    pub fn new() -> io::Result<IoContext> {
        IoContext::with_world(None)
    }

    /// A simulated context (see [`sim`](crate::sim)) on `SimConfig::new(seed)`:
    /// the same types and rules as a real one, on virtual time, the same run
    /// every time for the same seed.
    ///
    /// The environment variable `IOCTX_SIM_SEED`, when set, replaces the
    /// seed (of every simulated context the process makes): a failing test
    /// is replayed with the seed it printed, without editing it. A simulated
    /// context dropped during a panic prints its seed to stderr.
    ///
    /// ```
    /// use ioctx::IoContext;
    /// use std::time::Duration;
    ///
    /// let ctx = IoContext::simulated(1);
    /// let _busy = ctx.work_guard(); // without work, run_for returns at once
    /// let t0 = ctx.now();
    /// ctx.run_for(Duration::from_secs(60)); // a minute of virtual time
    /// assert_eq!(ctx.now() - t0, Duration::from_secs(60));
    /// ```
    ///
    /// # Panics
    /// If the system refuses the one descriptor every context owns (an epoll
    /// instance, kept so that `AsFd` holds on a simulated context too), as
    /// when the process is out of descriptors.
    pub fn simulated(seed: u64) -> IoContext {
        IoContext::simulated_with(SimConfig::new(seed))
    }

    /// [`simulated`](Self::simulated) with a configuration.
    ///
    /// # Panics
    /// As [`simulated`](Self::simulated).
    pub fn simulated_with(config: SimConfig) -> IoContext {
        let config = config.seed_from_env();
        match IoContext::with_world(Some(Rc::new(config.world()))) {
            Ok(ctx) => ctx,
            Err(e) => panic!("a simulated context needs an epoll descriptor, and the system refused it: {e}"),
        }
    }

    fn with_world(sim: Option<Rc<World>>) -> io::Result<IoContext> {
        let reactor = Reactor::new()?;
        if sim.is_some() {
            // The simulated network counts as a registration, so that a turn
            // with nothing registered still waits on it (and delivers what
            // is due), at no cost to a real context's turn.
            reactor.add_standing_registration();
        }
        let inner = Rc::new(Inner {
            queue: ReadyQueue::new(),
            outstanding: Cell::new(0),
            stopped: Cell::new(false),
            depth: Cell::new(0),
            special: Cell::new(if sim.is_some() { TRACING } else { 0 }),
            sim,
            reactor,
            timers: RefCell::new(TimerQueue::new(crate::timer::clock_base())),
            remote: RefCell::new(None),
            has_remote: Cell::new(false),
        });
        Ok(IoContext { exec: Executor { inner: Rc::downgrade(&inner) }, inner })
    }

    /// The light handle that handlers capture (it does not keep the context alive).
    pub fn executor(&self) -> Executor {
        self.exec.clone()
    }

    /// Runs handlers until there is no more work or `stop()` is called; returns
    /// how many ran. Running out of work leaves the context stopped, as in
    /// Asio: call [`restart`](Self::restart) before running it again.
    pub fn run(&self) -> usize {
        self.run_impl(RunMode { one: false, block: true, deadline: None })
    }

    /// Runs at most one handler, waiting for one if needed; returns 0 or 1.
    pub fn run_one(&self) -> usize {
        self.run_impl(RunMode { one: true, block: true, deadline: None })
    }

    /// As [`run`](Self::run), but returns when `d` has passed. Returning on the
    /// deadline does not stop the context.
    pub fn run_for(&self, d: Duration) -> usize {
        match self.inner.now().checked_add(d) {
            Some(deadline) => self.run_until(deadline),
            None => self.run(), // beyond what the clock can represent: no deadline
        }
    }

    /// As [`run`](Self::run), but returns at `deadline`. Returning on the
    /// deadline does not stop the context.
    pub fn run_until(&self, deadline: Instant) -> usize {
        self.run_impl(RunMode { one: false, block: true, deadline: Some(deadline) })
    }

    /// As [`run_one`](Self::run_one), waiting at most `d`.
    pub fn run_one_for(&self, d: Duration) -> usize {
        match self.inner.now().checked_add(d) {
            Some(deadline) => self.run_one_until(deadline),
            None => self.run_one(),
        }
    }

    /// As [`run_one`](Self::run_one), waiting until `deadline` at most.
    pub fn run_one_until(&self, deadline: Instant) -> usize {
        self.run_impl(RunMode { one: true, block: true, deadline: Some(deadline) })
    }

    /// Runs every handler that is ready, polling for I/O without waiting,
    /// until none is ready; never blocks. As in Asio, handlers posted while it
    /// runs are run too (so a handler that always re-posts itself keeps it
    /// busy: use [`poll_one`](Self::poll_one) for a bounded step).
    pub fn poll(&self) -> usize {
        self.run_impl(RunMode { one: false, block: false, deadline: None })
    }

    /// Runs at most one ready handler without blocking.
    pub fn poll_one(&self) -> usize {
        self.run_impl(RunMode { one: true, block: false, deadline: None })
    }

    /// How long a host loop that embeds this context may sleep on its
    /// descriptor ([`AsRawFd`]) before it calls [`poll`](Self::poll):
    /// `Some(ZERO)` whenever something is ready to run (a handler, including
    /// one queued by a handler that just ran, a socket's unfinished batch,
    /// deferred sends, a remote post); the time to the nearest timer;
    /// `None` when only I/O can bring work (or the context is stopped), so
    /// the host waits on the descriptor alone.
    ///
    /// The descriptor is the context's epoll instance: it never changes, and
    /// it becomes readable whenever any socket the context waits on, or a
    /// remote post, has something for [`poll`](Self::poll). A host that
    /// sleeps on it for at most `next_timeout()` and then calls `poll()`
    /// misses no work and never spins. As in Asio, `poll()` that runs out of
    /// work stops the context: a host that keeps feeding it holds a
    /// [`WorkGuard`] (or calls [`restart`](Self::restart)).
    ///
    /// On a simulated context the time to the next datagram's arrival
    /// counts as a deadline, and a socket with readiness to report gives
    /// `Some(ZERO)`. `poll()` never moves virtual time: a host drives a
    /// simulated context with `run_for(next_timeout)`, which jumps to it.
    pub fn next_timeout(&self) -> Option<Duration> {
        let inner = &*self.inner;
        if inner.stopped.get() {
            return None;
        }
        let remote = inner.has_remote.get() && inner.remote.borrow().as_ref().is_some_and(|r| r.is_pending());
        if !inner.queue.is_empty() || inner.reactor.has_backlog() || inner.reactor.has_deferred() || remote {
            return Some(Duration::ZERO);
        }
        let next = inner.timers.borrow_mut().next_deadline();
        let timer = next.map(|at| at.saturating_duration_since(inner.now()));
        // Simulated: a datagram's arrival is a deadline too (there is no
        // descriptor that would become readable for it).
        match inner.sim.as_ref().and_then(|w| w.next_arrival()) {
            Some(a) => Some(timer.map_or(a, |t| t.min(a))),
            None => timer,
        }
    }

    /// Fairness: how many handlers one pass runs before I/O is polled again.
    /// The default, `usize::MAX`, is Asio's rule: every handler that was
    /// ready when the pass began, and none queued during it (so a handler
    /// that re-posts itself cannot starve sockets). A smaller number polls
    /// I/O more often under a deep queue: a latency-sensitive socket then
    /// waits behind at most `n` handlers. Zero is `INVALID_ARGUMENT`.
    pub fn set_handlers_per_pass(&self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a pass runs at least one handler"));
        }
        self.inner.queue.per_pass.set(n);
        Ok(())
    }

    /// See [`set_handlers_per_pass`](Self::set_handlers_per_pass).
    pub fn handlers_per_pass(&self) -> usize {
        self.inner.queue.per_pass.get()
    }

    /// Fairness: how many operations one socket may complete in each
    /// direction per readiness event (for UDP: datagrams received or sent)
    /// before the other sockets and the handlers get their turn; the rest
    /// continue on the next turn without waiting. Default 64. Zero is
    /// `INVALID_ARGUMENT`.
    pub fn set_operations_per_event(&self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "an event completes at least one operation"));
        }
        self.inner.reactor.operations_per_event.set(n);
        Ok(())
    }

    /// See [`set_operations_per_event`](Self::set_operations_per_event).
    pub fn operations_per_event(&self) -> usize {
        self.inner.reactor.operations_per_event.get()
    }

    /// What the loop has done so far: handlers run, loop turns, reactor
    /// waits and events, datagrams and bytes in and out and, with
    /// [`set_wait_timing`](Self::set_wait_timing), the time spent waiting and,
    /// with [`set_handler_timing`](Self::set_handler_timing), the longest
    /// handler. Counting makes no system calls; see [`Metrics`].
    ///
    /// ```
    /// use ioctx::IoContext;
    ///
    /// let ctx = IoContext::new()?;
    /// for _ in 0..3 {
    ///     ctx.executor().post(|| {});
    /// }
    /// ctx.run();
    /// assert_eq!(ctx.metrics().handlers_run, 3);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn metrics(&self) -> Metrics {
        let q = &self.inner.queue;
        let mut m = Metrics { handlers_run: q.handlers_run(), longest_handler: q.longest.get(), ..Metrics::default() };
        self.inner.reactor.counters.snapshot(&mut m);
        m.loop_turns = q.passes.get();
        m
    }

    /// Sets every metric back to zero (the longest handler to zero too if
    /// timing is on, else to `None`).
    pub fn reset_metrics(&self) {
        let q = &self.inner.queue;
        q.reset_count();
        q.passes.set(0);
        q.longest.set(q.timing.get().then_some(Duration::ZERO));
        self.inner.reactor.counters.reset();
    }

    /// Times every handler, for [`Metrics::longest_handler`]. Off by
    /// default: it reads the clock twice per handler, which can cost more
    /// than a small handler itself.
    pub fn set_handler_timing(&self, on: bool) {
        let q = &self.inner.queue;
        q.timing.set(on);
        if on && q.longest.get().is_none() {
            q.longest.set(Some(Duration::ZERO));
        }
    }

    /// See [`set_handler_timing`](Self::set_handler_timing).
    pub fn handler_timing(&self) -> bool {
        self.inner.queue.timing.get()
    }

    /// Times every reactor wait that may block, for
    /// [`Metrics::time_waiting`] (the loop's idle time; busy share =
    /// 1 − waiting / elapsed). Off by default: it reads the clock twice per
    /// such wait, which a ping-pong loop does twice per round trip, a cost
    /// of several percent (libuv's idle time is opt-in for the same reason).
    ///
    /// ```
    /// use ioctx::{IoContext, SteadyTimer};
    /// use std::time::Duration;
    ///
    /// let ctx = IoContext::new()?;
    /// ctx.set_wait_timing(true);
    /// let t = SteadyTimer::new(&ctx.executor());
    /// t.expires_after(Duration::from_millis(5));
    /// t.async_wait(|_| {});
    /// ctx.run();
    /// assert!(ctx.metrics().time_waiting >= Duration::from_millis(4));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_wait_timing(&self, on: bool) {
        self.inner.reactor.counters.wait_timing.set(on);
    }

    /// See [`set_wait_timing`](Self::set_wait_timing).
    pub fn wait_timing(&self) -> bool {
        self.inner.reactor.counters.wait_timing.get()
    }

    /// A handle that posts to this context from any thread (Asio's
    /// `post(io_context, f)` from another thread). All remotes share one
    /// waker (an eventfd in the context's epoll), created on the first call.
    ///
    /// On a simulated context it fails with `ErrorKind::Unsupported`: other
    /// threads are outside the simulation.
    pub fn remote(&self) -> io::Result<Remote> {
        let inner = &*self.inner;
        inner.require_real("IoContext::remote")?;
        if let Some(shared) = inner.remote.borrow().as_ref() {
            return Ok(Remote { shared: shared.clone() });
        }
        let shared = Arc::new(remote::Shared::new(inner.reactor.waker()?));
        *inner.remote.borrow_mut() = Some(shared.clone());
        inner.has_remote.set(true);
        log::debug!("remote waker registered");
        Ok(Remote { shared })
    }

    /// Makes `run*` and `poll*` return as soon as possible; ready handlers stay
    /// queued for after [`restart`](Self::restart).
    pub fn stop(&self) {
        self.exec.stop();
    }

    /// True after `stop()` or after `run()` ran out of work.
    pub fn stopped(&self) -> bool {
        self.inner.stopped.get()
    }

    /// Clears the stopped state so that `run*` can be called again.
    pub fn restart(&self) {
        self.inner.stopped.set(false);
    }

    fn run_impl(&self, mode: RunMode) -> usize {
        let inner = &*self.inner;
        let _depth = DepthGuard::enter(inner);
        let mut n = 0;
        // Sends deferred to the end of the pass leave whenever the call
        // returns, at the pass's end or not.
        let leave = |n| {
            inner.reactor.flush_deferred(inner);
            n
        };
        loop {
            if inner.stopped.get() {
                return leave(n);
            }
            if let Some(d) = mode.deadline
                && inner.now() >= d
            {
                return leave(n);
            }
            if inner.queue.run_next_in_pass() {
                n += 1;
                if mode.one {
                    return leave(n);
                }
                continue;
            }
            // The pass is over: poll for I/O, as Asio does on meeting its
            // marker, after sending what the pass deferred.
            inner.reactor.flush_deferred(inner);
            inner.drain_remote();
            if inner.stopped.get() {
                return n; // Remote::stop
            }
            let more = !inner.queue.is_empty();
            if !more && inner.outstanding.get() == 0 {
                inner.stopped.set(true);
                log::debug!("io context out of work: stopped");
                return n;
            }
            let timeout = if more || !mode.block {
                Some(Duration::ZERO)
            } else {
                mode.deadline.map(|d| d.saturating_duration_since(inner.now()))
            };
            inner.reactor_turn(timeout);
            inner.queue.start_pass();
            if !mode.block && inner.queue.is_empty() {
                return n;
            }
        }
    }
}

impl Drop for IoContext {
    fn drop(&mut self) {
        let inner = &*self.inner;
        if let Some(world) = &inner.sim
            && std::thread::panicking()
        {
            // A failing test's only chance to say which seed to replay: the
            // test harness shows a failing test's stderr.
            eprintln!(
                "ioctx::sim: a simulated context with seed {} was dropped during a panic, at {:?} of virtual time; \
                 replay it with IOCTX_SIM_SEED={}",
                world.seed(),
                world.elapsed(),
                world.seed()
            );
        }
        inner.special.set(inner.special.get() | DROPPING);
        inner.stopped.set(true);
        // Remote posts fail from now on; what they queued is dropped unrun.
        if let Some(shared) = inner.remote.borrow_mut().take() {
            let dropped = shared.close();
            log::debug!("{dropped} remote posts dropped with the context");
        }
        // Dropping a handler can drop sockets and timers, which may cancel
        // more operations: repeat until nothing is left anywhere.
        loop {
            let mut ops: Vec<Rc<dyn Completion>> = Vec::new();
            let objects = inner.reactor.take_all();
            for o in &objects {
                o.teardown(&mut ops);
            }
            let targets = inner.timers.borrow_mut().take_all();
            let ready = inner.queue.drop_all();
            if objects.is_empty() && targets.is_empty() && ready == 0 && ops.is_empty() {
                break;
            }
            for op in &ops {
                op.abandon();
            }
            drop((ops, objects, targets));
        }
        log::debug!("io context dropped");
    }
}

/// The light, cloneable handle on a context that handlers capture (Asio's
/// `io_context::executor_type`). It does not keep the context alive: once
/// the context is gone, `post` drops the closure unrun.
///
/// # Errors
///
/// None reach a closure given to [`post`](Self::post),
/// [`defer`](Self::defer) or [`dispatch`](Self::dispatch): it takes no
/// arguments, and the calls return nothing to check. It runs exactly once,
/// from `run*`/`poll*` (or at once, for `dispatch` from inside the loop), or
/// never: when the context is dropped, the closures queued and any posted
/// afterwards are dropped unrun (logged at `debug`);
/// [`is_alive`](Self::is_alive) tells which. A closure that panics unwinds
/// out of `run()`.
///
/// ```
/// use ioctx::IoContext;
/// use std::{cell::RefCell, rc::Rc};
///
/// let ctx = IoContext::new()?;
/// let ex = ctx.executor();
/// let order = Rc::new(RefCell::new(Vec::new()));
///
/// // A closure without arguments needs no types, even stored before the call.
/// let o = order.clone();
/// let then = move || o.borrow_mut().push("posted");
/// let (ex2, o) = (ex.clone(), order.clone());
/// ex.post(move || {
///     ex2.post(then); // queued: runs after this handler returns
///     let o2 = o.clone();
///     ex2.dispatch(move || o2.borrow_mut().push("dispatched")); // inside the loop: runs now
///     o.borrow_mut().push("handler");
/// });
/// assert!(order.borrow().is_empty()); // post never runs the closure inline
/// assert_eq!(ctx.run(), 2); // the dispatched closure ran inside a handler
/// assert_eq!(*order.borrow(), ["dispatched", "handler", "posted"]);
///
/// drop(ctx);
/// assert!(!ex.is_alive());
/// ex.post(|| unreachable!("the context is gone: dropped unrun"));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Executor {
    pub(crate) inner: Weak<Inner>,
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor").field("alive", &self.is_alive()).finish()
    }
}

impl Executor {
    #[inline]
    pub(crate) fn upgrade(&self) -> Option<Rc<Inner>> {
        self.inner.upgrade()
    }

    /// True while the context exists.
    pub fn is_alive(&self) -> bool {
        self.inner.strong_count() > 0
    }

    /// The context's clock: `Instant::now()` on a real context, virtual time
    /// on a simulated one (what timers and `run_for` count). The real clock
    /// once the context is gone.
    pub fn now(&self) -> Instant {
        match self.inner.upgrade() {
            Some(inner) => inner.now(),
            None => Instant::now(),
        }
    }

    /// The simulation behind a simulated context (`None` on a real one, or
    /// once the context is gone).
    pub fn sim(&self) -> Option<Sim> {
        let inner = self.inner.upgrade()?;
        let host: Weak<dyn Host> = Rc::downgrade(&inner) as Weak<Inner>;
        inner.sim.clone().map(|w| Sim::new(w, host))
    }

    /// Queues `f` to run from `run*`/`poll*`; never runs it inline.
    pub fn post<F: FnOnce() + 'static>(&self, f: F) {
        match self.inner.upgrade() {
            Some(inner) => inner.post(f),
            None => log::debug!("post after the context was dropped: handler dropped unrun"),
        }
    }

    /// As [`post`](Self::post) (Asio's hint that `f` continues the current
    /// handler; in a single-threaded loop both queue at the back).
    pub fn defer<F: FnOnce() + 'static>(&self, f: F) {
        self.post(f)
    }

    /// Runs `f` at once when called from inside this context's `run*`/`poll*`,
    /// otherwise posts it.
    pub fn dispatch<F: FnOnce() + 'static>(&self, f: F) {
        match self.inner.upgrade() {
            Some(inner) if inner.depth.get() > 0 && !inner.is_dropping() => {
                drop(inner);
                f()
            }
            Some(inner) => inner.post(f),
            None => log::debug!("dispatch after the context was dropped: handler dropped unrun"),
        }
    }

    /// Stops the context (see [`IoContext::stop`]).
    pub fn stop(&self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.stopped.set(true);
            log::debug!("io context stopped");
        }
    }

    /// Keeps `run()` from returning for lack of work until the guard is dropped.
    pub fn work_guard(&self) -> WorkGuard {
        if let Some(inner) = self.inner.upgrade() {
            inner.add_work();
        }
        WorkGuard { inner: self.inner.clone(), active: self.is_alive() }
    }
}

/// Counts as work while it lives (Asio's `executor_work_guard`).
#[derive(Debug)]
pub struct WorkGuard {
    inner: Weak<Inner>,
    active: bool,
}

impl WorkGuard {
    /// Releases the work now instead of at drop.
    pub fn reset(&mut self) {
        if std::mem::take(&mut self.active)
            && let Some(inner) = self.inner.upgrade()
        {
            inner.remove_work();
        }
    }

    /// True until [`reset`](Self::reset) or drop.
    pub fn owns_work(&self) -> bool {
        self.active
    }
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `post_result` packs the error and the length into one word when the
    /// length allows: every code (those below zero too) and every length
    /// must come out as they went in, on both sides of 2^32.
    #[test]
    fn a_posted_result_reaches_its_handler_unchanged_whatever_its_code_and_length() {
        let ctx = IoContext::new().unwrap();
        let got: Rc<RefCell<Vec<(Error, usize)>>> = Rc::default();
        let cases = [
            (Error::NONE, 0),
            (Error::EOF, 5),
            (Error::OTHER, u32::MAX as usize),
            (Error::from_raw_os_error(libc::EPIPE), u32::MAX as usize + 7),
            (Error::NOT_FOUND, usize::MAX),
            (Error::from_raw_os_error(i32::MAX), 1 << 31),
        ];
        for (err, n) in cases {
            let g = got.clone();
            ctx.inner.post_result(move |e, m| g.borrow_mut().push((e, m)), err, n);
        }
        assert!(got.borrow().is_empty(), "posted, never run inline");
        assert_eq!(ctx.run(), cases.len());
        assert_eq!(*got.borrow(), cases);
    }
}
