//! Composed stream operations (Asio's free functions `async_read`,
//! `async_write` and `async_read_until`): loops of `async_read_some` /
//! `async_write_some` until a completion condition holds, seen from outside
//! as one operation with one handler and one [`Operation`] handle.

use super::{TcpStream, UnixStream};
use crate::buffer::{ConstBufferSequence, MutableBufferSequence, const_len, mut_len};
use crate::cancel::{CancellationType, Operation};
use crate::context::{Executor, Inner};
use crate::error::Error;
use crate::op::{Completion, OpCore};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// A stream the composed operations work on: [`TcpStream`] and
/// [`UnixStream`].
pub trait AsyncStream: Clone + 'static {
    /// See [`TcpStream::async_read_some`].
    fn async_read_some<B, F>(&self, bufs: B, handler: F) -> Operation
    where
        B: MutableBufferSequence + 'static,
        F: FnOnce(Error, usize, B) + 'static;

    /// See [`TcpStream::async_write_some`].
    fn async_write_some<B, F>(&self, bufs: B, handler: F) -> Operation
    where
        B: ConstBufferSequence + 'static,
        F: FnOnce(Error, usize) + 'static;

    /// The executor of the stream's context.
    fn executor(&self) -> Executor;

    /// A handle that does not keep the stream open.
    #[doc(hidden)]
    fn downgrade(&self) -> WeakStream<Self>;
}

/// What a composed operation keeps of its stream between steps: not a
/// strong handle, which would keep the stream open from its own queue.
#[doc(hidden)]
pub struct WeakStream<S> {
    b: super::base::WeakBase,
    wrap: fn(super::base::Base) -> S,
}

impl<S> WeakStream<S> {
    fn upgrade(&self) -> Option<S> {
        self.b.upgrade().map(self.wrap)
    }
}

macro_rules! async_stream {
    ($t:ty) => {
        impl AsyncStream for $t {
            fn async_read_some<B, F>(&self, bufs: B, handler: F) -> Operation
            where
                B: MutableBufferSequence + 'static,
                F: FnOnce(Error, usize, B) + 'static,
            {
                <$t>::async_read_some(self, bufs, handler)
            }

            fn async_write_some<B, F>(&self, bufs: B, handler: F) -> Operation
            where
                B: ConstBufferSequence + 'static,
                F: FnOnce(Error, usize) + 'static,
            {
                <$t>::async_write_some(self, bufs, handler)
            }

            fn executor(&self) -> Executor {
                <$t>::executor(self)
            }

            fn downgrade(&self) -> WeakStream<Self> {
                WeakStream { b: self.b.downgrade(), wrap: |b| Self { b } }
            }
        }
    };
}

async_stream!(TcpStream);
async_stream!(UnixStream);

/// When a composed read or write is complete (Asio's completion conditions).
/// Every kind also completes when the buffers are full, and on an error.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Transfer {
    /// Until the buffers are full ([`transfer_all`]).
    All,
    /// Until at least this many bytes ([`transfer_at_least`]).
    AtLeast(usize),
    /// Exactly this many bytes, never more ([`transfer_exactly`]).
    Exactly(usize),
}

/// Transfer until the buffers are full or an error occurs.
pub fn transfer_all() -> Transfer {
    Transfer::All
}

/// Transfer at least `n` bytes (more if they come in the same read).
pub fn transfer_at_least(n: usize) -> Transfer {
    Transfer::AtLeast(n)
}

/// Transfer exactly `n` bytes (fewer only when the buffers are smaller).
pub fn transfer_exactly(n: usize) -> Transfer {
    Transfer::Exactly(n)
}

impl Transfer {
    /// How many bytes the next step may move, with `done` moved so far and
    /// `room` left in the buffers; 0 means complete.
    fn next(self, done: usize, room: usize) -> usize {
        match self {
            Transfer::All => room,
            Transfer::AtLeast(n) if done >= n => 0,
            Transfer::AtLeast(_) => room,
            Transfer::Exactly(n) => n.saturating_sub(done).min(room),
        }
    }
}

/// The bytes of a receive's buffers from `skip` on, at most `max` of them.
struct MutWindow<B> {
    bufs: B,
    skip: usize,
    max: usize,
}

impl<B: MutableBufferSequence> MutableBufferSequence for MutWindow<B> {
    fn buffer_count(&self) -> usize {
        self.bufs.buffer_count() // an upper bound, for the IOV_MAX check
    }
    fn scatter<'a>(&'a mut self, out: &mut dyn FnMut(&'a mut [u8])) {
        let (mut skip, mut max) = (self.skip, self.max);
        self.bufs.scatter(&mut |b: &'a mut [u8]| {
            if skip >= b.len() {
                skip -= b.len();
                return;
            }
            let b = &mut b[skip..];
            skip = 0;
            let take = b.len().min(max);
            max -= take;
            if take > 0 {
                out(&mut b[..take]);
            }
        });
    }
}

/// The bytes of a send's buffers from `skip` on, at most `max` of them. The
/// buffers are shared with the composed write, which needs them back after
/// each step.
struct ConstWindow<B> {
    bufs: Rc<B>,
    skip: usize,
    max: usize,
}

impl<B: ConstBufferSequence> ConstBufferSequence for ConstWindow<B> {
    fn buffer_count(&self) -> usize {
        self.bufs.buffer_count()
    }
    fn gather<'a>(&'a self, out: &mut dyn FnMut(&'a [u8])) {
        let (mut skip, mut max) = (self.skip, self.max);
        self.bufs.gather(&mut |b: &'a [u8]| {
            if skip >= b.len() {
                skip -= b.len();
                return;
            }
            let b = &b[skip..];
            skip = 0;
            let take = b.len().min(max);
            max -= take;
            if take > 0 {
                out(&b[..take]);
            }
        });
    }
}

/// A composed operation as its [`Operation`] handle sees it.
struct Composed {
    core: OpCore,
    /// The step in progress.
    step: RefCell<Operation>,
    /// Cancellation was asked for: no further step starts.
    cancelled: Cell<bool>,
}

impl Completion for Composed {
    fn core(&self) -> &OpCore {
        &self.core
    }
    // Never queued: each step queues its own completion.
    fn invoke(self: Rc<Self>) {}
    fn abandon(&self) {}
    // Terminal and partial: it ends with the bytes moved so far. Total is
    // ignored (bytes may have moved).
    fn supports(&self) -> CancellationType {
        CancellationType::TERMINAL | CancellationType::PARTIAL
    }
    fn cancel_hook(&self) -> Option<bool> {
        if self.core.is_done() {
            return Some(false);
        }
        // Its outcome is decided now: no longer pending, as a cancelled
        // simple operation whose handler is queued.
        self.core.set_result(Error::OPERATION_ABORTED, 0);
        self.cancelled.set(true);
        let step = self.step.borrow().clone();
        step.cancel(CancellationType::ALL);
        Some(true)
    }
}

/// What every composed operation keeps while it runs.
struct Run {
    inner: Rc<Inner>,
    state: Rc<Composed>,
}

impl Run {
    /// Starts a composed operation; `None` when the stream's context is gone
    /// (the handler is then dropped unrun, as for any operation).
    fn start(ex: &Executor) -> Option<(Run, Operation)> {
        let Some(inner) = ex.upgrade().filter(|i| !i.is_dropping()) else {
            log::debug!("composed operation started after the context was dropped: handler dropped unrun");
            return None;
        };
        let state = Rc::new(Composed {
            core: OpCore::default(),
            step: RefCell::new(Operation::detached()),
            cancelled: Cell::new(false),
        });
        let op = Operation::new(&inner, &(state.clone() as Rc<dyn Completion>));
        Some((Run { inner, state }, op))
    }

    /// Completes: the operation stops being pending now and its handler is
    /// queued (never run from the call that started the operation).
    fn complete(self, f: impl FnOnce() + 'static) {
        self.inner.complete_composed(&self.state.core);
        self.inner.post(f);
    }
}

/// Reads into `bufs` until `cond` holds, the buffers are full, or an error
/// (`EOF` included) ends it; `handler(err, n, bufs)` gets the bytes read in
/// total. Empty buffers (or `transfer_exactly(0)`) complete at once, posted,
/// without I/O. Cancelling the returned [`Operation`] (terminal or partial)
/// ends it with `(OPERATION_ABORTED, bytes read so far)`; total cancellation
/// is ignored. The operation does not keep the stream open: dropping the
/// stream's last handle closes it and ends the operation the same way (S4).
///
/// # Errors
///
/// `handler(err, n, bufs)` always gets `n`, the bytes read in total, which
/// the buffers hold, error or not. `err` is one of:
///
/// - `NONE`: `cond` holds or the buffers are full.
/// - `EOF`: the peer closed its side first.
/// - `OPERATION_ABORTED`: cancelled while pending, by the returned
///   [`Operation`] (terminal or partial, or its
///   [`cancel_after`](Operation::cancel_after)), or by the stream's
///   `cancel`, `close`, `release` or the drop of its last handle.
/// - `BAD_DESCRIPTOR`: the stream was closed when the operation, or one of
///   its reads, started.
/// - `INVALID_ARGUMENT`: more than [`MAX_BUFFERS`](crate::MAX_BUFFERS)
///   buffers.
/// - `CONNECTION_RESET`, or another OS error from `recvmsg(2)` (for example
///   `TIMED_OUT` when TCP gave up on the peer), or epoll's refusal to
///   register the stream (`ENOMEM`, `ENOSPC`).
///
/// Once the context is gone the handler is dropped unrun, never called.
///
/// A request of 8 bytes read whole, the next one cut short by a timeout,
/// then the end of the stream. The handler is stored before the calls, so
/// its arguments are typed:
///
/// ```
/// use ioctx::net::{TcpListener, TcpStream, async_read, transfer_all};
/// use ioctx::{CancellationType, Error, IoContext};
/// use std::{cell::RefCell, rc::Rc, time::Duration};
///
/// let ctx = IoContext::new()?;
/// let listener = TcpListener::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
/// let client = TcpStream::connect(&ctx, listener.local_addr()?)?;
/// let server = listener.accept()?;
///
/// let got = Rc::new(RefCell::new(Vec::new()));
/// let g = got.clone();
/// let on_request = move |err: Error, n: usize, buf: Vec<u8>| g.borrow_mut().push((err, n, buf[..n].to_vec()));
///
/// // Two writes, one handler with all 8 bytes.
/// client.write_some(&b"GET "[..])?;
/// client.write_some(&b"/a\r\n"[..])?;
/// async_read(&server, vec![0u8; 8], transfer_all(), on_request.clone());
/// ctx.run();
///
/// // 3 bytes, then silence: the timeout ends the read with what it got.
/// client.write_some(&b"GET"[..])?;
/// ctx.restart();
/// async_read(&server, vec![0u8; 8], transfer_all(), on_request.clone())
///     .cancel_after(Duration::from_millis(10), CancellationType::PARTIAL);
/// ctx.run();
///
/// drop(client); // closes the connection
/// ctx.restart();
/// async_read(&server, vec![0u8; 8], transfer_all(), on_request);
/// ctx.run();
///
/// assert_eq!(*got.borrow(), [
///     (Error::NONE, 8, b"GET /a\r\n".to_vec()),
///     (Error::OPERATION_ABORTED, 3, b"GET".to_vec()),
///     (Error::EOF, 0, vec![]),
/// ]);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn async_read<S, B, F>(stream: &S, bufs: B, cond: Transfer, handler: F) -> Operation
where
    S: AsyncStream,
    B: MutableBufferSequence + 'static,
    F: FnOnce(Error, usize, B) + 'static,
{
    let Some((run, op)) = Run::start(&stream.executor()) else {
        return Operation::detached();
    };
    read_step(stream.downgrade(), bufs, 0, cond, run, handler);
    op
}

fn read_step<S, B, F>(s: WeakStream<S>, mut bufs: B, done: usize, cond: Transfer, run: Run, handler: F)
where
    S: AsyncStream,
    B: MutableBufferSequence + 'static,
    F: FnOnce(Error, usize, B) + 'static,
{
    // A cancel that returned true ends it aborted, even if the step that
    // completed meanwhile met the condition.
    if run.state.cancelled.get() {
        return run.complete(move || handler(Error::OPERATION_ABORTED, done, bufs));
    }
    let want = cond.next(done, mut_len(&mut bufs).saturating_sub(done));
    if want == 0 {
        return run.complete(move || handler(Error::NONE, done, bufs));
    }
    // The user dropped the stream's last handle: it is closed.
    let Some(stream) = s.upgrade() else {
        return run.complete(move || handler(Error::OPERATION_ABORTED, done, bufs));
    };
    let state = run.state.clone();
    let window = MutWindow { bufs, skip: done, max: want };
    let step = stream.async_read_some(window, move |err, n, w| {
        let done = done + n;
        let err = if run.state.cancelled.get() { Error::OPERATION_ABORTED } else { err };
        if err.is_err() {
            run.complete(move || handler(err, done, w.bufs));
        } else {
            read_step(s, w.bufs, done, cond, run, handler);
        }
    });
    *state.step.borrow_mut() = step;
}

/// Writes `bufs` until `cond` holds, all of it is written, or an error ends
/// it; `handler(err, n)` gets the bytes written in total. The buffers are
/// dropped before the handler runs. Empty buffers complete at once, posted,
/// without I/O. Cancellation as for [`async_read`].
///
/// # Errors
///
/// `handler(err, n)` always gets `n`, the bytes written in total. `err` is
/// one of [`async_read`'s](async_read#errors) but `EOF`, from
/// `sendmsg(2)`: a peer that has gone shows as `CONNECTION_RESET` or
/// `EPIPE` (no `SIGPIPE`: sends pass `MSG_NOSIGNAL`).
pub fn async_write<S, B, F>(stream: &S, bufs: B, cond: Transfer, handler: F) -> Operation
where
    S: AsyncStream,
    B: ConstBufferSequence + 'static,
    F: FnOnce(Error, usize) + 'static,
{
    let Some((run, op)) = Run::start(&stream.executor()) else {
        return Operation::detached();
    };
    let total = const_len(&bufs);
    write_step(stream.downgrade(), Rc::new(bufs), total, 0, cond, run, handler);
    op
}

fn write_step<S, B, F>(s: WeakStream<S>, bufs: Rc<B>, total: usize, done: usize, cond: Transfer, run: Run, handler: F)
where
    S: AsyncStream,
    B: ConstBufferSequence + 'static,
    F: FnOnce(Error, usize) + 'static,
{
    if run.state.cancelled.get() {
        drop(bufs);
        return run.complete(move || handler(Error::OPERATION_ABORTED, done));
    }
    let want = cond.next(done, total - done);
    if want == 0 {
        drop(bufs);
        return run.complete(move || handler(Error::NONE, done));
    }
    // The user dropped the stream's last handle: it is closed.
    let Some(stream) = s.upgrade() else {
        drop(bufs);
        return run.complete(move || handler(Error::OPERATION_ABORTED, done));
    };
    let state = run.state.clone();
    let window = ConstWindow { bufs: bufs.clone(), skip: done, max: want };
    let step = stream.async_write_some(window, move |err, n| {
        let done = done + n;
        let err = if run.state.cancelled.get() { Error::OPERATION_ABORTED } else { err };
        if err.is_err() {
            drop(bufs);
            run.complete(move || handler(err, done));
        } else {
            write_step(s, bufs, total, done, cond, run, handler);
        }
    });
    *state.step.borrow_mut() = step;
}

/// A delimiter for [`async_read_until`]: a byte or a byte string.
pub trait Delimiter: 'static {
    /// The delimiter's bytes.
    fn bytes(&self) -> &[u8];
}

impl Delimiter for u8 {
    fn bytes(&self) -> &[u8] {
        std::slice::from_ref(self)
    }
}

impl Delimiter for &'static [u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl Delimiter for &'static str {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Delimiter for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl Delimiter for String {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl<const N: usize> Delimiter for [u8; N] {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Where `delim` ends in `buf`, searching from `from`.
fn find_end(buf: &[u8], from: usize, delim: &[u8]) -> Option<usize> {
    let hay = buf.get(from..)?;
    let at = match delim {
        [one] => hay.iter().position(|b| b == one),
        _ => hay.windows(delim.len()).position(|w| w == delim),
    };
    at.map(|i| from + i + delim.len())
}

/// The most a step of [`async_read_until`] reads.
const READ_UNTIL_STEP: usize = 64 * 1024;

/// Reads into the growable `buf` (appending to what it holds) until it
/// contains `delim`; `handler(err, n, buf)` gets `n`, the length up to and
/// including the first delimiter. `buf` may hold more bytes after it: keep
/// them for the next call, as with Asio's dynamic buffers. When `max` bytes
/// are buffered without a delimiter the handler gets `(Error::NOT_FOUND, 0,
/// buf)`; on a read error (`EOF` included) `(err, 0, buf)` with what was
/// read kept in `buf`. An empty delimiter is `INVALID_ARGUMENT`. A
/// delimiter already in `buf` completes at once, posted, without I/O.
/// Cancellation as for [`async_read`], with `n` = 0.
pub fn async_read_until<S, D, F>(stream: &S, buf: Vec<u8>, delim: D, max: usize, handler: F) -> Operation
where
    S: AsyncStream,
    D: Delimiter,
    F: FnOnce(Error, usize, Vec<u8>) + 'static,
{
    let Some((run, op)) = Run::start(&stream.executor()) else {
        return Operation::detached();
    };
    if delim.bytes().is_empty() {
        run.complete(move || handler(Error::INVALID_ARGUMENT, 0, buf));
        return op;
    }
    until_step(stream.downgrade(), buf, 0, Rc::new(delim), max, run, handler);
    op
}

fn until_step<S, D, F>(s: WeakStream<S>, mut buf: Vec<u8>, from: usize, delim: Rc<D>, max: usize, run: Run, handler: F)
where
    S: AsyncStream,
    D: Delimiter,
    F: FnOnce(Error, usize, Vec<u8>) + 'static,
{
    if run.state.cancelled.get() {
        return run.complete(move || handler(Error::OPERATION_ABORTED, 0, buf));
    }
    let d = delim.bytes();
    if let Some(end) = find_end(&buf[..buf.len().min(max)], from, d) {
        return run.complete(move || handler(Error::NONE, end, buf));
    }
    if buf.len() >= max {
        return run.complete(move || handler(Error::NOT_FOUND, 0, buf));
    }
    let Some(stream) = s.upgrade() else {
        return run.complete(move || handler(Error::OPERATION_ABORTED, 0, buf));
    };
    // A delimiter may straddle what is buffered and what comes next.
    let from = buf.len().saturating_sub(d.len() - 1);
    let old = buf.len();
    let room = (max - old).min(old.max(512)).min(READ_UNTIL_STEP);
    buf.resize(old + room, 0);
    let state = run.state.clone();
    let window = MutWindow { bufs: buf, skip: old, max: room };
    let step = stream.async_read_some(window, move |err, n, w| {
        let mut buf = w.bufs;
        buf.truncate(old + n);
        let err = if run.state.cancelled.get() { Error::OPERATION_ABORTED } else { err };
        if err.is_err() {
            run.complete(move || handler(err, 0, buf));
        } else {
            until_step(s, buf, from, delim, max, run, handler);
        }
    });
    *state.step.borrow_mut() = step;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_ask_for_what_is_left() {
        assert_eq!(transfer_all().next(10, 90), 90);
        assert_eq!(transfer_all().next(100, 0), 0);
        assert_eq!(transfer_at_least(5).next(0, 90), 90);
        assert_eq!(transfer_at_least(5).next(5, 85), 0);
        assert_eq!(transfer_exactly(50).next(20, 80), 30);
        assert_eq!(transfer_exactly(50).next(0, 10), 10);
        assert_eq!(transfer_exactly(0).next(0, 10), 0);
    }

    #[test]
    fn windows_skip_and_limit_across_buffers() {
        let mut w = MutWindow { bufs: vec![vec![0u8; 3], vec![0u8; 4], vec![0u8; 5]], skip: 5, max: 4 };
        let mut lens = Vec::new();
        w.scatter(&mut |b| lens.push(b.len()));
        assert_eq!(lens, vec![2, 2]);
        let c = ConstWindow { bufs: Rc::new((&b"abc"[..], &b"defg"[..], &b"hijkl"[..])), skip: 2, max: 6 };
        let mut got = Vec::new();
        c.gather(&mut |b| got.extend_from_slice(b));
        assert_eq!(got, b"cdefgh");
    }

    #[test]
    fn a_completed_composed_operation_leaves_no_cancel_after_entry_behind() {
        use crate::IoContext;
        use std::io::Write;
        let ctx = IoContext::new().unwrap();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let s = UnixStream::from_std(&ctx, a).unwrap();
        b.write_all(b"abcd").unwrap();
        let done = Rc::new(Cell::new(false));
        let d = done.clone();
        async_read(&s, vec![0u8; 4], transfer_all(), move |e, n, _| d.set(e.is_ok() && n == 4))
            .cancel_after(std::time::Duration::from_secs(3600), CancellationType::TERMINAL);
        let inner = ctx.executor().upgrade().unwrap();
        assert_eq!(inner.timers.borrow().len(), 1);
        ctx.run();
        assert!(done.get());
        assert_eq!(inner.timers.borrow().len(), 0, "the cancel_after entry outlived its operation");
    }

    #[test]
    fn every_delimiter_kind_gives_its_bytes() {
        // Qualified: `str` and `String` have an inherent `bytes` too.
        assert_eq!(Delimiter::bytes(&b'\n'), b"\n");
        assert_eq!(Delimiter::bytes(&&b"\r\n"[..]), b"\r\n");
        assert_eq!(Delimiter::bytes(&"\r\n"), b"\r\n");
        assert_eq!(Delimiter::bytes(&b"\r\n".to_vec()), b"\r\n");
        assert_eq!(Delimiter::bytes(&String::from("\r\n")), b"\r\n");
        assert_eq!(Delimiter::bytes(b"\r\n"), b"\r\n");
    }

    #[test]
    fn delimiters_are_found_across_the_search_start() {
        assert_eq!(find_end(b"abc\r\ndef", 0, b"\r\n"), Some(5));
        assert_eq!(find_end(b"abc\r\ndef", 4, b"\r\n"), None);
        assert_eq!(find_end(b"abc\r\ndef", 3, b"\r\n"), Some(5));
        assert_eq!(find_end(b"a;b", 0, b";"), Some(2));
        assert_eq!(find_end(b"ab", 5, b";"), None);
    }
}
