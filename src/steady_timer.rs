//! `SteadyTimer` (Asio's `steady_timer`): a timer's expiry and its waits,
//! over the context's timer queue (`timer.rs`).

use crate::cancel::Operation;
use crate::context::Executor;
use crate::error::Error;
use crate::sys::WaitHandler;
use crate::timer::{TimerTarget, Waits, WaitsView, clock_base, ns_since};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

struct TimerObj {
    exec: Executor,
    /// Nanoseconds since [`clock_base`].
    expiry: Cell<u64>,
    waits: Cell<Waits>,
}

impl TimerObj {
    /// Cancels pending waits, oldest first, at most `limit` of them.
    fn cancel_waits(&self, limit: usize) -> usize {
        let waits = self.waits.replace(Waits::NONE);
        if let WaitsView::None = waits.view() {
            return 0;
        }
        // With the context gone, its queue (and any group) is gone too.
        let Some(inner) = self.exec.upgrade() else {
            return 0;
        };
        if let WaitsView::One(key) = waits.view() {
            // The common case, without a list. A handler dropped by the
            // cancel may start a wait here: it is recorded as usual.
            return usize::from(limit > 0 && inner.cancel_wait(key));
        }
        let keys = inner.timers.borrow_mut().take_waits(waits);
        let mut n = 0;
        let mut keep = Vec::new();
        for key in keys {
            if n < limit {
                // A key whose wait already ended is simply dropped.
                if inner.cancel_wait(key) {
                    n += 1;
                }
            } else {
                keep.push(key);
            }
        }
        let mut timers = inner.timers.borrow_mut();
        // A dropped handler may have started a wait on this timer meanwhile.
        let added = self.waits.replace(Waits::NONE);
        keep.extend(timers.take_waits(added));
        self.waits.set(timers.store_waits(keep));
        n
    }
}

impl Drop for TimerObj {
    fn drop(&mut self) {
        // As Asio's destructor: pending waits complete with OPERATION_ABORTED.
        self.cancel_waits(usize::MAX);
    }
}

/// A timer on the monotonic clock (Asio's `steady_timer`).
///
/// Any number of waits may be pending on one timer; they all complete when
/// the expiry passes, in the order they were started. Changing the expiry
/// cancels them. Clones share the timer; when the last clone is dropped the
/// pending waits complete with `Error::OPERATION_ABORTED`.
///
/// ```
/// # use ioctx::{IoContext, SteadyTimer, Error};
/// # use std::time::Duration;
/// let ctx = IoContext::new().unwrap();
/// let t = SteadyTimer::new(&ctx);
/// t.expires_after(Duration::from_millis(5));
/// t.async_wait(|e| assert_eq!(e, Error::NONE));
/// assert_eq!(ctx.run(), 1);
/// ```
#[derive(Clone)]
pub struct SteadyTimer {
    obj: Rc<TimerObj>,
}

impl std::fmt::Debug for SteadyTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SteadyTimer").field("expiry", &self.expiry()).finish()
    }
}

impl SteadyTimer {
    /// A timer on `ex`'s context that has already expired (its expiry lies
    /// before the context's creation; a wait started before `expires_*`
    /// completes on the next turn of the loop, as with Asio's default expiry).
    pub fn new(ex: &Executor) -> SteadyTimer {
        SteadyTimer { obj: Rc::new(TimerObj { exec: ex.clone(), expiry: Cell::new(0), waits: Cell::new(Waits::NONE) }) }
    }

    /// The current expiry. (Timers count time from a day before the process
    /// first used one; an expiry set earlier than that reads back as that
    /// base, which has passed all the same.)
    pub fn expiry(&self) -> Instant {
        clock_base() + Duration::from_nanos(self.obj.expiry.get())
    }

    /// Sets the expiry to `now + d`; cancels the pending waits and returns how
    /// many it cancelled.
    pub fn expires_after(&self, d: Duration) -> usize {
        let at = match self.obj.exec.upgrade() {
            Some(inner) => inner.later(d),
            None => crate::context::later(Instant::now(), d),
        };
        self.expires_at(at)
    }

    /// Sets the expiry; cancels the pending waits and returns how many it
    /// cancelled.
    pub fn expires_at(&self, at: Instant) -> usize {
        let n = self.cancel();
        self.obj.expiry.set(ns_since(clock_base(), at));
        n
    }

    /// Starts a wait for the expiry. The handler gets `Error::NONE` when it
    /// passes (posted, even if it passed already) or `OPERATION_ABORTED` when
    /// cancelled.
    ///
    /// # Errors
    ///
    /// `handler` gets one of two values, nothing else (no system call is
    /// involved):
    ///
    /// - `NONE`: the expiry passed.
    /// - `OPERATION_ABORTED`: the wait was cancelled before, by
    ///   [`cancel`](Self::cancel) or [`cancel_one`](Self::cancel_one), by
    ///   [`expires_after`](Self::expires_after) or
    ///   [`expires_at`](Self::expires_at) (a new expiry cancels the pending
    ///   waits), by the drop of the timer's last clone, or by
    ///   [`Operation::cancel`] / [`cancel_after`](Operation::cancel_after).
    ///
    /// Once the context is gone the handler is dropped unrun, never called.
    ///
    /// A deadline on a receive, as in Asio: whichever ends first cancels the
    /// other. The timer's handler is stored before the call, so its argument
    /// is typed:
    ///
    /// ```
    /// use ioctx::{Error, IoContext, SteadyTimer, net::UdpSocket};
    /// use std::{cell::Cell, rc::Rc, time::Duration};
    ///
    /// let ctx = IoContext::new()?;
    /// let sock = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
    /// let deadline = SteadyTimer::new(&ctx);
    /// deadline.expires_after(Duration::from_millis(10));
    ///
    /// let s = sock.clone();
    /// let on_deadline = move |err: Error| {
    ///     // OPERATION_ABORTED: the datagram came first and cancelled the wait.
    ///     if err.is_ok() {
    ///         s.cancel().ok(); // errs only if the socket is closed already
    ///     }
    /// };
    /// deadline.async_wait(on_deadline);
    ///
    /// let (t, timed_out) = (deadline.clone(), Rc::new(Cell::new(false)));
    /// let flag = timed_out.clone();
    /// sock.async_receive_from(vec![0u8; 512], move |err, _n, _buf, _from| {
    ///     t.cancel(); // a datagram: the deadline's wait ends with OPERATION_ABORTED
    ///     flag.set(err == Error::OPERATION_ABORTED);
    /// });
    /// ctx.run();
    /// assert!(timed_out.get()); // nobody sent anything
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn async_wait<F: FnOnce(Error) + 'static>(&self, handler: F) -> Operation {
        let Some(inner) = self.obj.exec.upgrade() else {
            log::debug!("timer wait started after its context was dropped: handler dropped");
            return Operation::detached();
        };
        inner.add_work();
        let key = {
            let mut timers = inner.timers.borrow_mut();
            debug_assert!(timers.base() == clock_base(), "the queue counts time from the timers' base");
            let key = timers.insert_ns(self.obj.expiry.get(), TimerTarget::Wait(WaitHandler::new(handler)));
            let waits = timers.add_wait(self.obj.waits.get(), key);
            self.obj.waits.set(waits);
            key
        };
        log::trace!("timer wait started");
        Operation::wait(&inner, key)
    }

    /// Cancels every pending wait (each completes with `OPERATION_ABORTED`);
    /// returns how many.
    pub fn cancel(&self) -> usize {
        self.obj.cancel_waits(usize::MAX)
    }

    /// Cancels the oldest pending wait; returns 1, or 0 when none was pending.
    pub fn cancel_one(&self) -> usize {
        self.obj.cancel_waits(1)
    }

    /// The waits recorded on this timer (the queue's tests look at them).
    #[cfg(test)]
    pub(crate) fn waits_view(&self) -> WaitsView {
        self.obj.waits.get().view()
    }
}
