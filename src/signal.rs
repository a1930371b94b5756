//! `SignalSet`: waiting for POSIX signals on the loop (Asio's `signal_set`).
//!
//! Each set owns a socket pair. The process-wide handler (`sys::signal`)
//! writes one byte, the signal's number, to the set's end for every signal
//! the set holds; a wait is a receive on the other end, queued on the
//! reactor like any socket operation. So waits are FIFO, cancel and drop
//! abort them, `cancel_after` works, and a signal that arrives with no wait
//! stays in the socket until the next wait takes it.

use crate::cancel::Operation;
use crate::context::Executor;
use crate::error::Error;
use crate::net::base::{Base, require_real};
use crate::op::{Completion, Io, OpCore, SocketOp};
use crate::reactor::{Attempt, Dir};
use crate::sys::signal::{self as sig, Registration};
use socket2::Socket;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;

/// A set of signals to wait for (Asio's `signal_set`).
///
/// While a set holds a signal, the signal's default action (for `SIGINT`,
/// ending the process) is replaced by delivery to the set's waits; when the
/// last set in the process lets go of it, the action it had before is put
/// back. Every set that holds a signal sees each occurrence, whichever
/// context it belongs to.
///
/// A signal that arrives while no wait is pending is kept and goes to the
/// next wait, in arrival order (occurrences that arrive while the set's
/// socket is full, a few hundred unread, are counted and delivered after
/// the ones it holds). The kernel merges repeats of a standard
/// signal that arrive before the handler runs, so count on one delivery per
/// burst, not per `kill`.
///
/// A pending wait counts as work: `run()` does not return while one waits.
/// A cheap `Clone` handle: the set is released (its signals given back,
/// its waits aborted) when the last clone is dropped.
///
/// After `fork()`, a child that goes on using the loop should make its own
/// sets: if another thread of the parent was inside the signal handler at
/// the moment of the fork, releasing a set inherited by the child waits for
/// a handler that will never finish.
///
/// Signals are the platform's numbers; the common ones are named on the
/// type ([`SignalSet::SIGINT`], ...) and [`SignalSet::realtime`] gives the
/// real-time ones, so that no `libc` is needed.
///
/// ```no_run
/// use ioctx::{IoContext, SignalSet};
///
/// let ctx = IoContext::new()?;
/// let signals = SignalSet::with_signals(&ctx.executor(), &[SignalSet::SIGINT, SignalSet::SIGTERM])?;
/// signals.async_wait(|err, sig| {
///     if err.is_ok() {
///         println!("got signal {sig}, shutting down");
///     }
/// });
/// ctx.run();
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct SignalSet {
    // Declared first so that it drops first: the signals are given back
    // before the socket closes.
    owner: Rc<Owner>,
    b: Base,
}

/// Gives the set's signals back when the last `SignalSet` clone goes.
struct Owner {
    state: Rc<State>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.state.regs.borrow_mut().clear();
    }
}

/// What the set's waits share.
struct State {
    /// One registration per signal held, in the order added.
    regs: RefCell<Vec<Registration>>,
    /// Bit `n` set: signal `n` is held. Bytes of signals no longer held are
    /// dropped when read.
    mask: Cell<u128>,
    /// Signals read from the socket and not yet delivered, oldest first.
    pending: RefCell<VecDeque<u8>>,
    /// The end the signal handler writes to; closed only after every
    /// registration using it is dropped.
    writer: OwnedFd,
}

impl State {
    /// The set holds `signal` (any number: out of range is not held).
    fn holds(&self, signal: i32) -> bool {
        (0..128).contains(&signal) && self.mask.get() & (1u128 << signal) != 0
    }

    /// Moves every signal waiting in the socket into `pending`, dropping
    /// those the set no longer holds. `Err` for a failed read.
    fn drain(&self, sock: &Socket) -> io::Result<()> {
        let mut buf = [0u8; 256];
        loop {
            match (&*sock).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let mut p = self.pending.borrow_mut();
                    p.extend(buf[..n].iter().copied().filter(|&s| self.holds(s.into())));
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Occurrences that found the socket full came after what it held.
        let mut p = self.pending.borrow_mut();
        for r in self.regs.borrow().iter() {
            let n = r.take_overflow();
            p.extend(std::iter::repeat_n(r.signal() as u8, n as usize));
        }
        Ok(())
    }

    /// The oldest undelivered signal; `None` when there is none yet.
    fn take(&self, sock: &Socket) -> Option<(Error, usize)> {
        if let Some(s) = self.pending.borrow_mut().pop_front() {
            return Some((Error::NONE, s as usize));
        }
        if let Err(e) = self.drain(sock) {
            return Some((Error::from(e), 0));
        }
        self.pending.borrow_mut().pop_front().map(|s| (Error::NONE, s as usize))
    }
}

impl fmt::Debug for SignalSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalSet").field("signals", &self.signals()).finish()
    }
}

/// The signals a program commonly waits for, by name (the platform's
/// numbers), so that no `libc` is needed to name them.
impl SignalSet {
    /// Hangup; by convention, reload the configuration.
    pub const SIGHUP: i32 = libc::SIGHUP;
    /// Interrupt from the terminal (Ctrl-C).
    pub const SIGINT: i32 = libc::SIGINT;
    /// Quit from the terminal (Ctrl-\\).
    pub const SIGQUIT: i32 = libc::SIGQUIT;
    /// Termination request (what `kill` sends by default).
    pub const SIGTERM: i32 = libc::SIGTERM;
    /// User-defined signal 1.
    pub const SIGUSR1: i32 = libc::SIGUSR1;
    /// User-defined signal 2.
    pub const SIGUSR2: i32 = libc::SIGUSR2;
    /// Write to a pipe or socket with no reader. The crate's own sends never
    /// raise it (they pass `MSG_NOSIGNAL`).
    pub const SIGPIPE: i32 = libc::SIGPIPE;
    /// Alarm clock (`alarm(2)`).
    pub const SIGALRM: i32 = libc::SIGALRM;
    /// A child process stopped or exited.
    pub const SIGCHLD: i32 = libc::SIGCHLD;
    /// Continue after a stop.
    pub const SIGCONT: i32 = libc::SIGCONT;
    /// Stop from the terminal (Ctrl-Z).
    pub const SIGTSTP: i32 = libc::SIGTSTP;
    /// The terminal's window size changed.
    pub const SIGWINCH: i32 = libc::SIGWINCH;

    /// The real-time signal `SIGRTMIN + n`, or `None` beyond `SIGRTMAX`.
    /// (The C library reserves the first few for itself, so the range is
    /// known only at run time.) Real-time signals queue: each occurrence
    /// reaches a wait.
    /// Linux only: `None` elsewhere (macOS has none, and FreeBSD's are not
    /// taken yet).
    pub fn realtime(n: u32) -> Option<i32> {
        #[cfg(target_os = "linux")]
        {
            let sig = i32::try_from(n).ok()?.checked_add(libc::SIGRTMIN())?;
            (sig <= libc::SIGRTMAX()).then_some(sig)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = n;
            None
        }
    }
}

impl SignalSet {
    /// An empty set on `ex`'s context.
    pub fn new(ex: &Executor) -> io::Result<SignalSet> {
        require_real(ex, "SignalSet")?;
        let (reader, writer) = UnixStream::pair()?;
        // A full socket must never block the signal handler (it counts the
        // occurrence instead).
        writer.set_nonblocking(true)?;
        let b = Base::adopt(ex, Socket::from(OwnedFd::from(reader)), false, false)?;
        let state = Rc::new(State {
            regs: RefCell::new(Vec::new()),
            mask: Cell::new(0),
            pending: RefCell::new(VecDeque::new()),
            writer: OwnedFd::from(writer),
        });
        Ok(SignalSet { owner: Rc::new(Owner { state }), b })
    }

    /// A set holding `signals`.
    pub fn with_signals(ex: &Executor, signals: &[i32]) -> io::Result<SignalSet> {
        let set = SignalSet::new(ex)?;
        for &s in signals {
            set.add(s)?;
        }
        Ok(set)
    }

    fn state(&self) -> &Rc<State> {
        &self.owner.state
    }

    /// Adds `signal` to the set; nothing happens if it is already held.
    /// `InvalidInput` for a number that is not a signal, or one that cannot
    /// be waited for (`SIGKILL`, `SIGSTOP`, and the fault signals `SIGSEGV`,
    /// `SIGBUS`, `SIGILL`, `SIGFPE`).
    pub fn add(&self, signal: i32) -> io::Result<()> {
        let st = self.state();
        if st.holds(signal) {
            return Ok(());
        }
        let reg = sig::register(signal, st.writer.as_fd())?;
        st.regs.borrow_mut().push(reg);
        st.mask.set(st.mask.get() | 1u128 << signal);
        log::debug!("signal set: added {signal}");
        Ok(())
    }

    /// Removes `signal` from the set, with any of its occurrences not yet
    /// delivered; nothing happens if it is not held.
    pub fn remove(&self, signal: i32) -> io::Result<()> {
        let st = self.state();
        if !st.holds(signal) {
            return Ok(());
        }
        // Dropping the registration waits out a handler that may be writing;
        // after that every occurrence is in the socket, to be read and kept
        // or dropped here.
        st.regs.borrow_mut().retain(|r| r.signal() != signal);
        let read = self.b.sock().map_or(Ok(()), |sock| st.drain(&sock));
        st.mask.set(st.mask.get() & !(1u128 << signal));
        st.pending.borrow_mut().retain(|&s| s as i32 != signal);
        self.after_drain();
        log::debug!("signal set: removed {signal}");
        read
    }

    /// Removes every signal from the set, with every occurrence not yet
    /// delivered.
    pub fn clear(&self) -> io::Result<()> {
        let st = self.state();
        st.regs.borrow_mut().clear();
        st.mask.set(0);
        let read = self.b.sock().map_or(Ok(()), |sock| st.drain(&sock));
        st.pending.borrow_mut().clear();
        log::debug!("signal set: cleared");
        read
    }

    /// Signals read from the socket by `remove` belong to the waits: let them
    /// take them now rather than on a readiness event that will not come.
    fn after_drain(&self) {
        if !self.state().pending.borrow().is_empty() {
            self.b.io().wake_reads();
        }
    }

    /// The signals held, in the order added.
    pub fn signals(&self) -> Vec<i32> {
        self.state().regs.borrow().iter().map(Registration::signal).collect()
    }

    /// Completes every pending wait with `OPERATION_ABORTED` (and signal 0).
    /// Undelivered signals stay for later waits.
    pub fn cancel(&self) -> io::Result<()> {
        self.b.cancel()
    }

    /// Waits for a signal in the set; the handler gets `(Error::NONE,
    /// signal)`, or `(OPERATION_ABORTED, 0)` when cancelled. A signal that
    /// arrived earlier completes the wait at once (through the queue, never
    /// inline). Waits complete in the order they were started.
    pub fn async_wait<F: FnOnce(Error, i32) + 'static>(&self, handler: F) -> Operation {
        log::trace!("signal async_wait");
        let Some(inner) = self.b.live_context() else {
            return Operation::detached();
        };
        let st = self.state().clone();
        let io = self.b.io();
        let (err, n) = match io.try_now(Dir::Read, || st.take(&*io.os_socket()?)) {
            Attempt::Done(r) => r,
            Attempt::Closed => (Error::BAD_DESCRIPTOR, 0),
            Attempt::Later => {
                let op = SignalOp { core: OpCore::default(), state: st, handler: Cell::new(Some(handler)) };
                return self.b.enqueue(&inner, Rc::new(op), Dir::Read);
            }
        };
        inner.post(move || handler(err, n as i32));
        Operation::detached()
    }
}

/// A wait for a signal, queued on the set's socket.
struct SignalOp<F> {
    core: OpCore,
    state: Rc<State>,
    handler: Cell<Option<F>>,
}

impl<F: FnOnce(Error, i32) + 'static> Completion for SignalOp<F> {
    fn core(&self) -> &OpCore {
        &self.core
    }
    fn invoke(self: Rc<Self>) {
        let (err, n) = self.core.result();
        if let Some(h) = self.handler.take() {
            drop(self);
            h(err, if err.is_ok() { n as i32 } else { 0 });
        }
    }
    fn abandon(&self) {
        drop(self.handler.take());
    }
}

impl<F: FnOnce(Error, i32) + 'static> SocketOp for SignalOp<F> {
    fn perform(&self, io: &dyn Io) -> Option<(Error, usize)> {
        let Some(sock) = io.os_socket() else {
            return Some((Error::BAD_DESCRIPTOR, 0));
        };
        self.state.take(&sock)
    }
}
