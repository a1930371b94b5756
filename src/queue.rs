//! The ready queue: handlers posted by users and completions of operations,
//! run in FIFO order. Instead of Asio's marker entry, the loop counts down the
//! handlers that were queued when it last polled for I/O; at zero it polls
//! again. Handlers posted meanwhile wait for the next pass, exactly as if they
//! had been queued behind a marker, and a handler that re-posts itself cannot
//! starve the sockets.

use crate::error::Error;
use crate::sys::{HandlerQueue, WaitHandler};
use std::cell::Cell;
use std::time::{Duration, Instant};

pub(crate) struct ReadyQueue {
    q: HandlerQueue,
    /// Handlers left to run before the next reactor poll.
    until_poll: Cell<usize>,
    /// The most handlers one pass runs (`usize::MAX`: all that were queued
    /// when it began, Asio's rule).
    pub(crate) per_pass: Cell<usize>,
    /// Handlers run (for `metrics()`), counted a pass at a time to keep the
    /// per-handler path free of it: every handler of a pass is counted when
    /// the pass starts, and those not yet run (`until_poll`) are subtracted
    /// when read, or when a pass is cut short.
    counted: Cell<u64>,
    /// Passes started: the loop's turns (for `metrics()`).
    pub(crate) passes: Cell<u64>,
    /// Each handler is timed (`set_handler_timing`).
    pub(crate) timing: Cell<bool>,
    /// The longest handler timed; `None` while timing has never been on.
    pub(crate) longest: Cell<Option<Duration>>,
}

impl ReadyQueue {
    pub(crate) fn new() -> ReadyQueue {
        ReadyQueue {
            q: HandlerQueue::new(),
            until_poll: Cell::new(0),
            per_pass: Cell::new(usize::MAX),
            counted: Cell::new(0),
            passes: Cell::new(0),
            timing: Cell::new(false),
            longest: Cell::new(None),
        }
    }

    #[inline(always)]
    pub(crate) fn push<F: FnOnce() + 'static>(&self, f: F) {
        self.q.push(f);
    }

    /// Queues a timer wait's handler, to be called with `err`.
    #[inline]
    pub(crate) fn push_wait(&self, h: WaitHandler, err: Error) {
        h.post(&self.q, err);
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.q.len()
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.q.len() == 0
    }

    /// Runs the next handler of this pass; false when the pass is over and
    /// the reactor is due.
    #[inline(always)]
    pub(crate) fn run_next_in_pass(&self) -> bool {
        let left = self.until_poll.get();
        if left == 0 {
            return false;
        }
        self.until_poll.set(left - 1);
        let ran = if self.timing.get() { self.run_timed() } else { self.q.run_next() };
        if !ran {
            // A nested run took the handlers of this pass already.
            self.counted.set(self.counted.get().wrapping_sub(left as u64));
            self.until_poll.set(0);
            return false;
        }
        true
    }

    /// Handlers run so far.
    pub(crate) fn handlers_run(&self) -> u64 {
        self.counted.get().wrapping_sub(self.until_poll.get() as u64)
    }

    /// Restarts `handlers_run` at zero.
    pub(crate) fn reset_count(&self) {
        self.counted.set(self.until_poll.get() as u64);
    }

    /// Runs the next handler, keeping the longest time one took.
    #[cold]
    #[inline(never)]
    fn run_timed(&self) -> bool {
        let start = Instant::now();
        let ran = self.q.run_next();
        let took = start.elapsed();
        if ran && self.longest.get().is_none_or(|l| took > l) {
            self.longest.set(Some(took));
        }
        ran
    }

    /// Starts a pass over the handlers queued now (at most `per_pass` of them).
    pub(crate) fn start_pass(&self) {
        let n = self.len().min(self.per_pass.get());
        // What is left of the previous pass (cut short by stop) never ran.
        let c = self.handlers_run().wrapping_add(n as u64);
        self.counted.set(c);
        self.until_poll.set(n);
        self.passes.set(self.passes.get().wrapping_add(1));
    }

    /// Drops every queued handler unrun (context teardown); returns how many.
    pub(crate) fn drop_all(&self) -> usize {
        self.counted.set(self.handlers_run());
        self.until_poll.set(0);
        self.q.drop_all()
    }
}
