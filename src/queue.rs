//! The ready queue: handlers posted by users and completions of operations,
//! run in FIFO order. Instead of Asio's marker entry, the loop counts down the
//! handlers that were queued when it last polled for I/O; at zero it polls
//! again. Handlers posted meanwhile wait for the next pass, exactly as if they
//! had been queued behind a marker, and a handler that re-posts itself cannot
//! starve the sockets.

use crate::error::Error;
use crate::sys::{HandlerQueue, WaitHandler};
use std::cell::Cell;

pub(crate) struct ReadyQueue {
    q: HandlerQueue,
    /// Handlers left to run before the next reactor poll.
    until_poll: Cell<usize>,
    /// The most handlers one pass runs (`usize::MAX`: all that were queued
    /// when it began, Asio's rule).
    pub(crate) per_pass: Cell<usize>,
}

impl ReadyQueue {
    pub(crate) fn new() -> ReadyQueue {
        ReadyQueue { q: HandlerQueue::new(), until_poll: Cell::new(0), per_pass: Cell::new(usize::MAX) }
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
        if !self.q.run_next() {
            // A nested run took the handlers of this pass already.
            self.until_poll.set(0);
            return false;
        }
        true
    }

    /// Starts a pass over the handlers queued now (at most `per_pass` of them).
    pub(crate) fn start_pass(&self) {
        self.until_poll.set(self.len().min(self.per_pass.get()));
    }

    /// Drops every queued handler unrun (context teardown); returns how many.
    pub(crate) fn drop_all(&self) -> usize {
        self.until_poll.set(0);
        self.q.drop_all()
    }
}
