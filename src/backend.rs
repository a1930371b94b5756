//! The readiness backend: the one boundary through which the reactor
//! registers interest in descriptors, waits for readiness with a timeout and
//! is woken from other threads (DESIGN.md §2, item 5).
//!
//! What crosses it, and nothing else:
//! - in: a descriptor with a `usize` token (the reactor's slab key), an
//!   [`Interest`] and the trigger (level or edge) to register, change or
//!   remove; a timeout (`None`: without end) to wait for;
//! - out: per ready registration, its token and a [`Readiness`] (readable,
//!   writable, error), in the order the backend reports them; a wait error,
//!   which the context answers by stopping (EINTR is not one: it is a wait
//!   that returned nothing); the descriptor a host loop polls
//!   ([`Backend::raw_fd`], the same for the backend's whole life); a
//!   [`Waker`], whose wake makes a wait return.
//!
//! Why a boundary: the reactor decides what to wait for and what readiness
//! means for its queues, the backend only how waiting is done. Everything
//! epoll- or kqueue-specific (event masks, the waker's reserved token,
//! draining it; `sys::poll` is `sys/epoll.rs` on Linux, `sys/kqueue.rs` on
//! macOS and the BSDs) stays on this side, so that another backend (the simulated network of
//! DESIGN.md §1.7) can stand behind the same calls. It is a concrete type,
//! called without dynamic dispatch: the wait and each event are on the
//! hottest path of the loop.

use crate::sys::poll::{Events, Poller};
use crate::sys::readiness::Event;
// The types the boundary is called with, named from here so that its users
// need not know which backend defines them.
pub(crate) use crate::sys::poll::Waker;
pub(crate) use crate::sys::readiness::Interest;
use std::cell::{OnceCell, RefCell, RefMut};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

/// Events one wait takes at most; more ready registrations are reported by
/// the next wait (epoll hands them out round-robin, so none starves; kqueue
/// keeps the rest queued for the next wait).
const EVENTS_PER_WAIT: usize = 256;

/// The token the waker is reported with. The reactor's tokens are slab
/// keys, which never reach it.
const WAKER_TOKEN: u64 = usize::MAX as u64;

/// What a wait reported for one registration. Hang-ups and errors count as
/// readable and writable: the next call in either direction returns at once
/// (with end-of-file or the error), which is how an operation learns of them.
///
/// It holds the event as the kernel gave it and answers each question with
/// one mask test when asked: on the hottest path, only what is asked costs.
#[derive(Clone, Copy)]
pub(crate) struct Readiness(Event);

impl Readiness {
    /// A simulated port's readiness (the simulation's waits report it).
    pub(crate) fn simulated(readable: bool, writable: bool, error: bool) -> Readiness {
        Readiness(Event::simulated(readable, writable, error))
    }

    /// Reading would not block (data, priority data, a closed peer, an error).
    #[inline]
    pub(crate) fn readable(self) -> bool {
        // `|`, not `||`: tests of one word, folded into one mask.
        self.0.is_readable() | self.0.is_read_closed() | self.0.is_error()
    }

    /// Writing would not block (room, a hang-up, an error).
    #[inline]
    pub(crate) fn writable(self) -> bool {
        self.0.is_writable() | self.0.is_write_closed() | self.0.is_error()
    }

    /// The read side is closed: shut down, or hung up. The descriptor is
    /// then readable for good, even with nothing queued to read.
    #[inline]
    pub(crate) fn read_closed(self) -> bool {
        self.0.is_read_closed()
    }

    /// An error or priority data is pending (what `WaitType::Error` waits for).
    #[inline]
    pub(crate) fn error(self) -> bool {
        self.0.is_error() | self.0.is_priority()
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("readable", &self.readable())
            .field("writable", &self.writable())
            .field("error", &self.error())
            .finish()
    }
}

/// The readiness backend: an epoll instance (kqueue on macOS and the BSDs),
/// the buffer its waits fill and, once asked for, the waker registered in it.
pub(crate) struct Backend {
    poller: Poller,
    /// Borrowed by a wait until its [`Reported`] is dropped.
    events: RefCell<Events>,
    /// Created by the first [`waker`](Self::waker) call, then shared.
    waker: OnceCell<Arc<Waker>>,
}

impl Backend {
    /// A new epoll (kqueue) instance with an empty event buffer and no waker yet.
    pub(crate) fn new() -> io::Result<Backend> {
        Ok(Backend {
            poller: Poller::new()?,
            events: RefCell::new(Events::with_capacity(EVENTS_PER_WAIT)),
            waker: OnceCell::new(),
        })
    }

    /// Starts reporting `fd`'s readiness with `token`. `edge`:
    /// edge-triggered (reported once per change) rather than level-triggered
    /// (at every wait while it holds).
    pub(crate) fn register(&self, fd: BorrowedFd<'_>, token: usize, interest: Interest, edge: bool) -> io::Result<()> {
        self.poller.add(fd, token as u64, interest, edge)
    }

    /// Changes a registration. Readiness that already holds is reported
    /// again at the next wait, edge-triggered or not.
    pub(crate) fn reregister(
        &self,
        fd: BorrowedFd<'_>,
        token: usize,
        interest: Interest,
        edge: bool,
    ) -> io::Result<()> {
        self.poller.modify(fd, token as u64, interest, edge)
    }

    /// Stops reporting `fd` (before it is closed: a duplicate of it would
    /// otherwise keep it registered).
    pub(crate) fn deregister(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.poller.delete(fd)
    }

    /// Waits at most `timeout` (`None`: until something is ready or a wake)
    /// and returns what is ready, to be walked before the next wait. A wait
    /// interrupted by a signal reports nothing; any other error is returned.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> io::Result<Reported<'_>> {
        let mut events = self.events.borrow_mut();
        match self.poller.wait(&mut events, timeout) {
            Ok(_) => {}
            // Not a failure: the loop goes round and waits again (after any
            // handler the signal's delivery queued).
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        Ok(Reported { events, waker: self.waker.get().map(|w| &**w) })
    }

    /// The epoll (kqueue) descriptor: readable whenever a wait would report
    /// something. It is the same for the backend's whole life, whatever is
    /// registered, so a host loop can poll it once and for all.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.poller.as_raw_fd()
    }

    /// [`raw_fd`](Self::raw_fd), borrowed for as long as the backend lives.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.poller.as_fd()
    }

    /// The waker (one per backend, created and registered on the first
    /// call): a wake from any thread makes the current or next wait return.
    /// Its reports are consumed here, never handed to the reactor.
    pub(crate) fn waker(&self) -> io::Result<Arc<Waker>> {
        if let Some(w) = self.waker.get() {
            return Ok(w.clone());
        }
        let w = Arc::new(Waker::new()?);
        // Edge-triggered: a wake is reported once even if draining it
        // failed, so a broken waker cannot make every wait return at once.
        self.poller.add(w.as_fd(), WAKER_TOKEN, Interest::READABLE, true)?;
        Ok(self.waker.get_or_init(|| w).clone())
    }

    /// Replaces the event buffer with one of `n` entries (zero makes every
    /// wait fail with EINVAL, a real failure for the tests to provoke).
    #[cfg(test)]
    pub(crate) fn set_events_per_wait(&self, n: usize) {
        *self.events.borrow_mut() = Events::with_capacity(n);
    }
}

/// What one wait reported: the events it returned (see
/// [`len`](Self::len)), handed out by [`for_each`](Self::for_each). Holds
/// the event buffer: it must be dropped before the next wait.
pub(crate) struct Reported<'a> {
    events: RefMut<'a, Events>,
    waker: Option<&'a Waker>,
}

impl Reported<'_> {
    /// How many events the wait returned, the waker's included.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// Calls `f(token, readiness)` for each registration reported, in
    /// order. The waker's report is not handed out: it is drained here, so
    /// that its counter never fills.
    #[inline]
    pub(crate) fn for_each(self, mut f: impl FnMut(usize, Readiness)) {
        for ev in self.events.iter() {
            if ev.token() != WAKER_TOKEN {
                f(ev.token() as usize, Readiness(ev));
            } else if let Some(w) = self.waker
                && let Err(e) = w.drain()
            {
                log::error!("draining the waker failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IoContext;
    use std::time::Instant;

    fn collect(r: Reported<'_>) -> Vec<(usize, Readiness)> {
        let mut v = Vec::new();
        r.for_each(|token, ready| v.push((token, ready)));
        v
    }

    #[test]
    fn a_wake_is_consumed_by_the_backend_and_not_reported_as_a_token() {
        let b = Backend::new().unwrap();
        let w = b.waker().unwrap();
        assert!(Arc::ptr_eq(&w, &b.waker().unwrap()), "one waker per backend");
        w.wake().unwrap();
        let r = b.wait(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(r.len(), 1);
        assert!(collect(r).is_empty(), "the waker's event is not handed out");
        assert_eq!(b.wait(Some(Duration::ZERO)).unwrap().len(), 0, "drained");
    }

    #[test]
    fn a_registration_is_reported_with_its_token_until_deregistered() {
        let b = Backend::new().unwrap();
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.register(s.as_fd(), 42, Interest::READABLE, false).unwrap();
        assert!(collect(b.wait(Some(Duration::ZERO)).unwrap()).is_empty());
        b.reregister(s.as_fd(), 43, Interest::READABLE.add(Interest::WRITABLE), false).unwrap();
        let got = collect(b.wait(Some(Duration::ZERO)).unwrap());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 43);
        let ready = got[0].1;
        assert!(ready.writable() && !ready.readable() && !ready.error(), "{ready:?}");
        b.deregister(s.as_fd()).unwrap();
        assert!(collect(b.wait(Some(Duration::ZERO)).unwrap()).is_empty());
    }

    /// A wait that fails (here EINVAL, from an event buffer without room)
    /// stops the context instead of being retried at once forever; once the
    /// cause is gone, `restart()` and `run()` wait again.
    #[test]
    fn a_failing_wait_stops_run_and_a_restart_waits_again() {
        let ctx = IoContext::new().unwrap();
        let fired = std::rc::Rc::new(std::cell::Cell::new(false));
        let timer = crate::SteadyTimer::new(&ctx);
        timer.expires_after(Duration::from_millis(20));
        let f = fired.clone();
        timer.async_wait(move |e| {
            assert!(e.is_ok());
            f.set(true);
        });
        let inner = ctx.executor().upgrade().unwrap();
        inner.reactor.backend().set_events_per_wait(0);
        let t0 = Instant::now();
        assert_eq!(ctx.run_for(Duration::from_secs(10)), 0);
        assert!(ctx.stopped(), "a failed wait stops the context");
        assert!(t0.elapsed() < Duration::from_secs(5), "run returned at once instead of spinning");
        assert!(!fired.get());
        assert_eq!(ctx.poll(), 0, "stopped: poll does nothing");

        inner.reactor.backend().set_events_per_wait(EVENTS_PER_WAIT);
        ctx.restart();
        assert_eq!(ctx.run(), 1, "the next run waits again and the timer fires");
        assert!(fired.get());
    }
}
