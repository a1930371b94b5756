//! Loop metrics: counters kept in plain cells as the loop goes (no system
//! calls, no atomics), read with [`IoContext::metrics`](crate::IoContext::metrics).

use std::cell::Cell;
use std::time::Duration;

/// What a context has done since it was created (or since
/// [`reset_metrics`](crate::IoContext::reset_metrics)): a snapshot, taken
/// by [`IoContext::metrics`](crate::IoContext::metrics).
///
/// Counting costs a few additions per handler and per transfer and never
/// reads the clock. What needs the clock is off until asked for, because a
/// clock read (about 35 ns) costs more than a small handler, and a loop
/// that waits twice per round trip would pay four of them (libuv's idle
/// time is opt-in for the same reason):
/// [`time_waiting`](Self::time_waiting) with
/// [`set_wait_timing`](crate::IoContext::set_wait_timing), and
/// [`longest_handler`](Self::longest_handler) with
/// [`set_handler_timing`](crate::IoContext::set_handler_timing) (as tokio's
/// poll-time histogram is).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Handlers the loop ran: posted closures, completions of operations,
    /// timer waits, remote posts.
    pub handlers_run: u64,
    /// Turns of the loop: reactor steps (Asio's task operation), each
    /// followed by a pass over the handlers then ready, whether or not the
    /// step needed a system call.
    pub loop_turns: u64,
    /// Calls to `epoll_wait`, the ones with a zero timeout included.
    pub reactor_waits: u64,
    /// Readiness events those calls returned (the remote waker's included).
    pub events: u64,
    /// Datagrams received (UDP and Unix datagram sockets), one per
    /// successful receive, asynchronous or not.
    pub datagrams_in: u64,
    /// Bytes received, on every kind of socket.
    pub bytes_in: u64,
    /// Datagrams sent, one per successful send (a batch of `n` counts `n`).
    pub datagrams_out: u64,
    /// Bytes sent, on every kind of socket.
    pub bytes_out: u64,
    /// Time spent inside reactor waits that were allowed to block; zero
    /// unless [`set_wait_timing`](crate::IoContext::set_wait_timing) is on.
    pub time_waiting: Duration,
    /// The longest a single handler has run (including any `run`/`poll`
    /// nested in it); `None` unless handler timing is on.
    pub longest_handler: Option<Duration>,
}

/// The reactor's and the sockets' counters, shared by every socket of a
/// context.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) reactor_waits: Cell<u64>,
    pub(crate) events: Cell<u64>,
    datagrams_in: Cell<u64>,
    bytes_in: Cell<u64>,
    datagrams_out: Cell<u64>,
    bytes_out: Cell<u64>,
    waiting_ns: Cell<u64>,
    /// Waits that may block are timed (`set_wait_timing`).
    pub(crate) wait_timing: Cell<bool>,
}

pub(crate) fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get().wrapping_add(n));
}

impl Counters {
    /// A successful receive of `n` bytes (`datagram`: on a datagram socket).
    #[inline]
    pub(crate) fn received(&self, n: usize, datagram: bool) {
        bump(&self.bytes_in, n as u64);
        bump(&self.datagrams_in, datagram as u64);
    }

    /// A successful send of `n` bytes.
    #[inline]
    pub(crate) fn sent(&self, n: usize, datagram: bool) {
        bump(&self.bytes_out, n as u64);
        bump(&self.datagrams_out, datagram as u64);
    }

    /// `datagrams` datagrams of `n` bytes in all sent by one call.
    #[inline]
    pub(crate) fn sent_datagrams(&self, n: usize, datagrams: usize) {
        bump(&self.bytes_out, n as u64);
        bump(&self.datagrams_out, datagrams as u64);
    }

    pub(crate) fn waited(&self, d: Duration) {
        bump(&self.waiting_ns, d.as_nanos().min(u64::MAX as u128) as u64);
    }

    /// Fills in the fields these counters keep.
    pub(crate) fn snapshot(&self, m: &mut Metrics) {
        m.reactor_waits = self.reactor_waits.get();
        m.events = self.events.get();
        m.datagrams_in = self.datagrams_in.get();
        m.bytes_in = self.bytes_in.get();
        m.datagrams_out = self.datagrams_out.get();
        m.bytes_out = self.bytes_out.get();
        m.time_waiting = Duration::from_nanos(self.waiting_ns.get());
    }

    pub(crate) fn reset(&self) {
        for c in [
            &self.reactor_waits,
            &self.events,
            &self.datagrams_in,
            &self.bytes_in,
            &self.datagrams_out,
            &self.bytes_out,
            &self.waiting_ns,
        ] {
            c.set(0);
        }
    }
}
