//! One pending operation: its handler, its buffers and its result, in one
//! allocation. While pending it sits in its socket's queue (or the timer
//! queue); when done it moves itself onto the ready queue, like Asio's
//! `reactor_op`.

use crate::buffer::{ConstBufferSequence, MutableBufferSequence, const_slices, mut_slices};
use crate::error::Error;
use crate::sys;
use crate::sys::msg::{ErrInfo, MsgInfo, SendInfo};
use socket2::{SockAddr, Socket};
use std::any::Any;
use std::cell::{Cell, RefCell, RefMut};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::ops::{BitAnd, BitOr, BitOrAssign};
use std::rc::Rc;

/// Names one entry of the timer queue (kept here, beneath the queue, because
/// an operation holds the key of its `cancel_after` entry): its slot and the slot's round (which
/// moves on each time an entry of the slot ends), so that the key of an entry
/// that has ended never reaches a later entry in the same slot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct TimerKey {
    pub(crate) idx: u32,
    pub(crate) round: u32,
}

impl TimerKey {
    /// The key in one word, below 2^63 - 1 (rounds have 31 bits, and no
    /// slot index reaches `u32::MAX`).
    pub(crate) fn as_u64(self) -> u64 {
        (u64::from(self.round) << 32) | u64::from(self.idx)
    }

    pub(crate) fn from_u64(v: u64) -> TimerKey {
        TimerKey { idx: v as u32, round: (v >> 32) as u32 }
    }
}

/// State shared by every kind of operation.
pub(crate) struct OpCore {
    done: Cell<bool>,
    err: Cell<Error>,
    n: Cell<usize>,
    /// The entry of a `cancel_after` watching this operation.
    pub(crate) cancel_key: Cell<Option<TimerKey>>,
}

impl Default for OpCore {
    fn default() -> OpCore {
        OpCore { done: Cell::new(false), err: Cell::new(Error::NONE), n: Cell::new(0), cancel_key: Cell::new(None) }
    }
}

impl OpCore {
    /// Back to the state of a new operation (recycled memory).
    #[inline]
    fn reset(&mut self) {
        *self = OpCore::default();
    }

    #[inline]
    pub(crate) fn is_done(&self) -> bool {
        self.done.get()
    }

    #[inline]
    pub(crate) fn set_result(&self, err: Error, n: usize) {
        self.done.set(true);
        self.err.set(err);
        self.n.set(n);
    }

    #[inline]
    pub(crate) fn result(&self) -> (Error, usize) {
        (self.err.get(), self.n.get())
    }
}

thread_local! {
    /// The memory of the operation whose handler ran last, emptied, kept for
    /// the next operation of the same type (Asio's recycling allocator, one
    /// block deep). A handler usually starts its successor, of its own
    /// type, so a steady stream of operations allocates nothing. Per
    /// thread, as Asio's, because the loop that frees an operation is the
    /// loop that starts the next one.
    static RECYCLED: Cell<Option<Rc<dyn Any>>> = const { Cell::new(None) };
}

/// Keeps `op`'s memory for [`recycled`] if nothing else refers to it (no
/// clone, and no `Operation` handle, which would otherwise find a new
/// operation behind its weak link). Its fields must hold no handler or
/// buffers any more.
#[inline]
fn recycle<T: 'static>(mut op: Rc<T>) {
    if Rc::get_mut(&mut op).is_some() {
        let old = RECYCLED.replace(Some(op as Rc<dyn Any>));
        drop(old);
    }
}

/// The recycled block if it holds a `T` (unique: [`recycle`] keeps only
/// blocks nothing else refers to, and nothing can reach it since).
#[inline]
fn recycled<T: 'static>() -> Option<Rc<T>> {
    let block = RECYCLED.take()?;
    match block.downcast::<T>() {
        Ok(rc) => Some(rc),
        Err(other) => {
            RECYCLED.set(Some(other));
            None
        }
    }
}

/// Which kinds of cancellation a request allows (a bit set, as Asio's
/// `cancellation_type`).
///
/// - `TERMINAL`: the operation may be left in an unspecified state; only
///   closing or destroying the object is safe afterwards.
/// - `PARTIAL`: the operation's side effects are well defined (for a
///   composed operation: how many bytes were transferred).
/// - `TOTAL`: nothing happened.
///
/// Socket and timer operations honour all three: an operation that has not
/// completed yet has had no effect, so any request may cancel it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct CancellationType(u8);

impl CancellationType {
    /// No cancellation.
    pub const NONE: CancellationType = CancellationType(0);
    /// Terminal cancellation.
    pub const TERMINAL: CancellationType = CancellationType(1);
    /// Partial cancellation.
    pub const PARTIAL: CancellationType = CancellationType(2);
    /// Total cancellation.
    pub const TOTAL: CancellationType = CancellationType(4);
    /// Every kind.
    pub const ALL: CancellationType = CancellationType(7);

    /// True when every bit of `other` is set in `self`.
    pub const fn contains(self, other: CancellationType) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when `self` and `other` share a bit.
    pub const fn intersects(self, other: CancellationType) -> bool {
        self.0 & other.0 != 0
    }
}

impl BitOr for CancellationType {
    type Output = CancellationType;
    fn bitor(self, rhs: CancellationType) -> CancellationType {
        CancellationType(self.0 | rhs.0)
    }
}

impl BitOrAssign for CancellationType {
    fn bitor_assign(&mut self, rhs: CancellationType) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for CancellationType {
    type Output = CancellationType;
    fn bitand(self, rhs: CancellationType) -> CancellationType {
        CancellationType(self.0 & rhs.0)
    }
}

/// What the ready queue and `Operation` see of any operation.
pub(crate) trait Completion {
    fn core(&self) -> &OpCore;
    /// Runs the handler with the stored result; called once, by the loop.
    fn invoke(self: Rc<Self>);
    /// Drops handler and buffers without running anything (context teardown).
    fn abandon(&self);
    /// The kinds of cancellation this operation honours.
    fn supports(&self) -> CancellationType {
        CancellationType::ALL
    }
    /// Cancels an operation that does not simply complete with
    /// `OPERATION_ABORTED` (a composed one cancels the step in progress);
    /// `None` for the plain way. `Some(false)` when it has completed already.
    fn cancel_hook(&self) -> Option<bool> {
        None
    }
}

/// A wait for an error report (`async_receive_error`): an operation with a
/// place for the report it gets.
pub(crate) trait ReportWait: Completion {
    fn report_slot(&self) -> &Cell<Option<ErrInfo>>;
}

/// An operation whose result is one value beside its `Error`, kept in a
/// slot until its handler runs: an accept (the new connection) and a wait
/// for an error report (the report).
pub(crate) struct SlotOp<T, F> {
    core: OpCore,
    slot: Cell<Option<T>>,
    handler: Cell<Option<F>>,
}

impl<T, F> SlotOp<T, F> {
    pub(crate) fn new(handler: F) -> Self {
        SlotOp { core: OpCore::default(), slot: Cell::new(None), handler: Cell::new(Some(handler)) }
    }
}

impl<T: 'static, F: FnOnce(Error, Option<T>) + 'static> Completion for SlotOp<T, F> {
    fn core(&self) -> &OpCore {
        &self.core
    }
    fn invoke(self: Rc<Self>) {
        let (err, _) = self.core.result();
        let value = self.slot.take();
        if let Some(h) = self.handler.take() {
            drop(self);
            h(err, value);
        }
    }
    fn abandon(&self) {
        drop(self.slot.take());
        drop(self.handler.take());
    }
}

/// `async_receive_error` waiting among its socket's report waits: it takes
/// a report when an error event brings one, and waits on otherwise.
pub(crate) type ReportOp<F> = SlotOp<ErrInfo, F>;

impl<F: FnOnce(Error, Option<ErrInfo>) + 'static> ReportWait for ReportOp<F> {
    fn report_slot(&self) -> &Cell<Option<ErrInfo>> {
        &self.slot
    }
}

/// What stands between an operation and the kernel on its socket: the
/// read-ahead slot in front of the receive queue, and the traffic counters.
/// The socket's registration (`reactor::IoObject`) is the one there is; an
/// operation sees only this.
pub(crate) trait Io {
    /// Receives one datagram (or bytes of a stream), from the read-ahead
    /// slot first; its sender goes to `from` when asked for.
    fn recv(&self, bufs: &mut [IoSliceMut<'_>], flags: i32, from: sys::Sender<'_>) -> io::Result<usize>;
    /// Receives one datagram and its sender in any address family.
    fn recv_from_any(&self, bufs: &mut [IoSliceMut<'_>], flags: i32) -> io::Result<(usize, SockAddr)>;
    /// Sends `bufs` now.
    fn send(&self, bufs: &[IoSlice<'_>], dest: Option<&SockAddr>, flags: i32) -> io::Result<usize>;
    /// The operating system's socket, for what only it can do (a signal
    /// set's pipe); `None` once closed or simulated.
    fn os_socket(&self) -> Option<Rc<Socket>>;
    /// Accepts one connection now; `None` when none is pending.
    fn accept(&self) -> Option<Result<Accepted, Error>>;
    /// The outcome of a connect in progress; `None` while it still is.
    fn connect_outcome(&self) -> Option<Error>;
    /// Receives one datagram with its metadata (from the read-ahead slot
    /// first, where a datagram read ahead has only its sender).
    fn recv_msg(&self, bufs: &mut [IoSliceMut<'_>], flags: i32) -> io::Result<MsgInfo>;
    /// Sends one datagram with the control messages of `info`.
    fn send_msg(&self, bufs: &[IoSlice<'_>], dest: Option<&SockAddr>, info: &SendInfo) -> io::Result<usize>;
}

/// A connection an accept took: the kernel's socket, or a simulated stream.
pub(crate) enum Accepted {
    Os(Socket),
    Sim(Rc<crate::sim::net::tcp::Stream>),
}

/// An operation on a socket: it can attempt its system call.
pub(crate) trait SocketOp: Completion {
    /// Attempts the operation; `None` means it would block.
    fn perform(&self, io: &dyn Io) -> Option<(Error, usize)>;
    /// Readiness waits complete on an event and are never tried speculatively.
    fn is_wait(&self) -> bool {
        false
    }
    /// For a pending send that can join a batch (no flags, at most
    /// `MAX_BUFFERS` buffers) whose datagram is at most `room` bytes long: appends the
    /// datagram's bytes to `out` and returns its length and destination
    /// (`None`: the connected peer). `None`, with `out` unchanged, otherwise.
    /// One call per datagram, so that a batch reads each send's buffers once.
    fn append_datagram(&self, _out: &mut Vec<u8>, _room: usize) -> Option<(usize, Option<&SockAddr>)> {
        None
    }
    /// True for a receive without flags, which can join a batch.
    fn is_plain_recv(&self) -> bool {
        false
    }
    /// For a receive without flags that can join a batch: its buffers,
    /// borrowed for as long as the guard lives (the batch's system call);
    /// `None` otherwise.
    fn recv_bufs(&self) -> Option<RefMut<'_, dyn MutableBufferSequence>> {
        None
    }
    /// For a receive completed in a batch: the sender it got.
    fn set_sender(&self, _from: Option<SocketAddr>) {}
    /// True for a receive with metadata and no flags, which can join a
    /// batch that carries control messages.
    fn is_msg_recv(&self) -> bool {
        false
    }
    /// For a receive completed in a batch with control messages: what it
    /// got (a plain receive keeps the sender).
    fn set_info(&self, info: &MsgInfo) {
        self.set_sender(info.from);
    }
}

/// Sends `bufs` as one datagram now; `None` when the socket would block.
pub(crate) fn send_now<B: ConstBufferSequence + ?Sized, I: Io + ?Sized>(
    io: &I,
    bufs: &B,
    dest: Option<&SockAddr>,
    flags: i32,
) -> Option<(Error, usize)> {
    if bufs.buffer_count() == 1 {
        // The common case: no gather list to build.
        let mut one: &[u8] = &[];
        bufs.gather(&mut |b| one = b);
        return sys::result(io.send(&[IoSlice::new(one)], dest, flags));
    }
    let Some(slices) = const_slices(bufs) else {
        return Some((Error::INVALID_ARGUMENT, 0));
    };
    sys::result(io.send(&slices, dest, flags))
}

/// Receives one datagram into `bufs` now, its sender into `from` if asked
/// for; `None` when the socket would block.
pub(crate) fn recv_now<B: MutableBufferSequence + ?Sized, I: Io + ?Sized>(
    io: &I,
    bufs: &mut B,
    flags: i32,
    from: sys::Sender<'_>,
) -> Option<(Error, usize)> {
    let r = if bufs.buffer_count() == 1 {
        // The common case: no scatter list to build.
        let mut one: &mut [u8] = &mut [];
        bufs.scatter(&mut |b| one = b);
        io.recv(&mut [IoSliceMut::new(one)], flags, from)
    } else {
        let Some(mut slices) = mut_slices(bufs) else {
            return Some((Error::INVALID_ARGUMENT, 0));
        };
        io.recv(&mut slices, flags, from)
    };
    sys::result(r)
}

/// How a send is made: with message flags (`async_send`, `async_send_to`:
/// `i32`) or with control messages (`async_send_msg`: `SendInfo`). Chosen at
/// compile time, so the plain send's code is what it would be alone.
pub(crate) trait SendHow: Copy + 'static {
    /// Such a send may wait for the end of the pass and join a batch
    /// (coalescing, GSO); one with control messages goes alone.
    const DEFERRABLE: bool;
    /// Sends `bufs` now; `None` when the socket would block.
    fn send_now<B: ConstBufferSequence + ?Sized, I: Io + ?Sized>(
        self,
        io: &I,
        bufs: &B,
        dest: Option<&SockAddr>,
    ) -> Option<(Error, usize)>;
    /// This send can join a batch (no flags: they apply per datagram).
    fn batchable(self) -> bool;
}

impl SendHow for i32 {
    const DEFERRABLE: bool = true;
    #[inline(always)]
    fn send_now<B: ConstBufferSequence + ?Sized, I: Io + ?Sized>(
        self,
        io: &I,
        bufs: &B,
        dest: Option<&SockAddr>,
    ) -> Option<(Error, usize)> {
        send_now(io, bufs, dest, self)
    }
    #[inline(always)]
    fn batchable(self) -> bool {
        self == 0
    }
}

impl SendHow for SendInfo {
    const DEFERRABLE: bool = false;
    fn send_now<B: ConstBufferSequence + ?Sized, I: Io + ?Sized>(
        self,
        io: &I,
        bufs: &B,
        dest: Option<&SockAddr>,
    ) -> Option<(Error, usize)> {
        send_msg_now(io, bufs, dest, &self)
    }
    fn batchable(self) -> bool {
        false
    }
}

/// A send (`async_send`, `async_send_to`, `async_send_msg`) waiting for the
/// socket; `M` says how it is made (see [`SendHow`]).
pub(crate) struct SendOp<B, F, M = i32> {
    core: OpCore,
    bufs: RefCell<Option<B>>,
    /// Boxed: a socket address is 136 bytes, and most sends go to the
    /// connected peer (`None`).
    dest: Option<Box<SockAddr>>,
    how: M,
    handler: Cell<Option<F>>,
}

impl<B, F, M> SendOp<B, F, M> {
    pub(crate) fn new(bufs: B, dest: Option<SockAddr>, how: M, handler: F) -> Self {
        SendOp {
            core: OpCore::default(),
            bufs: RefCell::new(Some(bufs)),
            dest: dest.map(Box::new),
            how,
            handler: Cell::new(Some(handler)),
        }
    }
}

impl<B: 'static, F: 'static, M: 'static> SendOp<B, F, M> {
    /// A new send in recycled memory when there is some.
    pub(crate) fn rc(bufs: B, dest: Option<SockAddr>, how: M, handler: F) -> Rc<Self> {
        if let Some(mut rc) = recycled::<Self>()
            && let Some(op) = Rc::get_mut(&mut rc)
        {
            // Field by field, in place: no new operation built and copied in.
            op.core.reset();
            *op.bufs.get_mut() = Some(bufs);
            match (&mut op.dest, dest) {
                // The recycled box is reused too.
                (Some(old), Some(new)) => **old = new,
                (slot, new) => *slot = new.map(Box::new),
            }
            op.how = how;
            *op.handler.get_mut() = Some(handler);
            return rc;
        }
        Rc::new(SendOp::new(bufs, dest, how, handler))
    }
}

impl<B: 'static, F: FnOnce(Error, usize) + 'static, M: 'static> Completion for SendOp<B, F, M> {
    fn core(&self) -> &OpCore {
        &self.core
    }
    fn invoke(self: Rc<Self>) {
        // Buffers go first, so a handler holding a clone of an `Rc<[u8]>` finds it unique.
        drop(self.bufs.take());
        let (err, n) = self.core.result();
        if let Some(h) = self.handler.take() {
            recycle(self);
            h(err, n);
        }
    }
    fn abandon(&self) {
        drop(self.bufs.take());
        drop(self.handler.take());
    }
}

impl<B: ConstBufferSequence + 'static, F: FnOnce(Error, usize) + 'static, M: SendHow> SocketOp for SendOp<B, F, M> {
    fn perform(&self, io: &dyn Io) -> Option<(Error, usize)> {
        let bufs = self.bufs.borrow();
        self.how.send_now(io, bufs.as_ref()?, self.dest.as_deref())
    }
    #[inline]
    fn append_datagram(&self, out: &mut Vec<u8>, room: usize) -> Option<(usize, Option<&SockAddr>)> {
        if !self.how.batchable() || self.core.is_done() {
            return None; // flags apply per datagram: not batched; a cancelled send stays
        }
        let bufs = self.bufs.borrow();
        let bufs = bufs.as_ref()?;
        let len = if bufs.buffer_count() == 1 {
            // The common case: one buffer, one look at it.
            let mut one: &[u8] = &[];
            bufs.gather(&mut |b| one = b);
            if one.len() > room {
                return None;
            }
            out.extend_from_slice(one);
            one.len()
        } else {
            append_gathered(bufs, out, room)?
        };
        Some((len, self.dest.as_deref()))
    }
}

/// [`SocketOp::append_datagram`] for a sequence of several buffers (or none):
/// appends them all to `out`, unless there are more than `MAX_BUFFERS` or
/// more than `room` bytes.
#[inline(never)]
fn append_gathered<B: ConstBufferSequence + ?Sized>(bufs: &B, out: &mut Vec<u8>, room: usize) -> Option<usize> {
    if bufs.buffer_count() > crate::buffer::MAX_BUFFERS {
        return None;
    }
    let mut len = 0;
    bufs.gather(&mut |b| len += b.len());
    if len > room {
        return None;
    }
    out.reserve(len);
    bufs.gather(&mut |b| out.extend_from_slice(b));
    Some(len)
}

/// A receive (`async_receive`, `async_receive_from`); the handler gets the
/// buffers back and the sender's address.
pub(crate) struct RecvOp<B, F> {
    core: OpCore,
    bufs: RefCell<Option<B>>,
    flags: i32,
    want_from: bool,
    from: Cell<Option<SocketAddr>>,
    handler: Cell<Option<F>>,
}

impl<B, F> RecvOp<B, F> {
    pub(crate) fn new(bufs: B, flags: i32, want_from: bool, handler: F) -> Self {
        RecvOp {
            core: OpCore::default(),
            bufs: RefCell::new(Some(bufs)),
            flags,
            want_from,
            from: Cell::new(None),
            handler: Cell::new(Some(handler)),
        }
    }
}

impl<B: 'static, F: 'static> RecvOp<B, F> {
    /// A new receive in recycled memory when there is some.
    pub(crate) fn rc(bufs: B, flags: i32, want_from: bool, handler: F) -> Rc<Self> {
        if let Some(mut rc) = recycled::<Self>()
            && let Some(op) = Rc::get_mut(&mut rc)
        {
            op.core.reset();
            *op.bufs.get_mut() = Some(bufs);
            op.flags = flags;
            op.want_from = want_from;
            *op.from.get_mut() = None;
            *op.handler.get_mut() = Some(handler);
            return rc;
        }
        Rc::new(RecvOp::new(bufs, flags, want_from, handler))
    }
}

impl<B: 'static, F: FnOnce(Error, usize, B, SocketAddr) + 'static> Completion for RecvOp<B, F> {
    fn core(&self) -> &OpCore {
        &self.core
    }
    fn invoke(self: Rc<Self>) {
        let (err, n) = self.core.result();
        let from = self.from.get().unwrap_or_else(sys::unspecified_addr);
        if let (Some(h), Some(b)) = (self.handler.take(), self.bufs.take()) {
            recycle(self);
            h(err, n, b, from);
        }
    }
    fn abandon(&self) {
        drop(self.bufs.take());
        drop(self.handler.take());
    }
}

impl<B, F> SocketOp for RecvOp<B, F>
where
    B: MutableBufferSequence + 'static,
    F: FnOnce(Error, usize, B, SocketAddr) + 'static,
{
    fn perform(&self, io: &dyn Io) -> Option<(Error, usize)> {
        let mut bufs = self.bufs.borrow_mut();
        recv_now(io, bufs.as_mut()?, self.flags, self.want_from.then_some(&self.from))
    }
    fn is_plain_recv(&self) -> bool {
        self.flags == 0
    }
    fn recv_bufs(&self) -> Option<RefMut<'_, dyn MutableBufferSequence>> {
        batch_bufs(&self.bufs, self.flags)
    }
    fn set_sender(&self, from: Option<SocketAddr>) {
        if self.want_from {
            self.from.set(from);
        }
    }
}

/// A receive's buffers for a batch's system call, unless it has flags (or
/// its buffers are already borrowed, or gone).
fn batch_bufs<B: MutableBufferSequence + 'static>(
    bufs: &RefCell<Option<B>>,
    flags: i32,
) -> Option<RefMut<'_, dyn MutableBufferSequence>> {
    if flags != 0 {
        return None;
    }
    let bufs = bufs.try_borrow_mut().ok()?;
    RefMut::filter_map(bufs, |b| b.as_mut().map(|b| b as &mut dyn MutableBufferSequence)).ok()
}

/// Receives one datagram with its metadata now; `None` when the socket
/// would block.
pub(crate) fn recv_msg_now<B: MutableBufferSequence + ?Sized, I: Io + ?Sized>(
    io: &I,
    bufs: &mut B,
    flags: i32,
) -> Option<(Error, MsgInfo)> {
    let Some(mut slices) = mut_slices(bufs) else {
        return Some((Error::INVALID_ARGUMENT, MsgInfo::default()));
    };
    match io.recv_msg(&mut slices, flags) {
        Ok(info) => Some((Error::NONE, info)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => Some((Error::from(e), MsgInfo::default())),
    }
}

/// Sends one datagram with control messages now; `None` when the socket
/// would block.
pub(crate) fn send_msg_now<B: ConstBufferSequence + ?Sized, I: Io + ?Sized>(
    io: &I,
    bufs: &B,
    dest: Option<&SockAddr>,
    info: &SendInfo,
) -> Option<(Error, usize)> {
    let Some(slices) = const_slices(bufs) else {
        return Some((Error::INVALID_ARGUMENT, 0));
    };
    sys::result(io.send_msg(&slices, dest, info))
}

/// A receive with metadata (`async_receive_msg`) waiting for a datagram.
pub(crate) struct RecvMsgOp<B, F> {
    core: OpCore,
    bufs: RefCell<Option<B>>,
    flags: i32,
    info: Cell<MsgInfo>,
    handler: Cell<Option<F>>,
}

impl<B, F> RecvMsgOp<B, F> {
    pub(crate) fn new(bufs: B, flags: i32, handler: F) -> Self {
        RecvMsgOp {
            core: OpCore::default(),
            bufs: RefCell::new(Some(bufs)),
            flags,
            info: Cell::new(MsgInfo::default()),
            handler: Cell::new(Some(handler)),
        }
    }
}

impl<B: 'static, F: 'static> RecvMsgOp<B, F> {
    /// A new receive in recycled memory when there is some (a server's
    /// receive loop reuses one block, as plain receives do).
    pub(crate) fn rc(bufs: B, flags: i32, handler: F) -> Rc<Self> {
        if let Some(mut rc) = recycled::<Self>()
            && let Some(op) = Rc::get_mut(&mut rc)
        {
            op.core.reset();
            *op.bufs.get_mut() = Some(bufs);
            op.flags = flags;
            *op.handler.get_mut() = Some(handler);
            return rc;
        }
        Rc::new(RecvMsgOp::new(bufs, flags, handler))
    }
}

impl<B: 'static, F: FnOnce(Error, MsgInfo, B) + 'static> Completion for RecvMsgOp<B, F> {
    fn core(&self) -> &OpCore {
        &self.core
    }
    fn invoke(self: Rc<Self>) {
        let (err, _) = self.core.result();
        let info = if err.is_ok() { self.info.get() } else { MsgInfo::default() };
        if let (Some(h), Some(b)) = (self.handler.take(), self.bufs.take()) {
            recycle(self);
            h(err, info, b);
        }
    }
    fn abandon(&self) {
        drop(self.bufs.take());
        drop(self.handler.take());
    }
}

impl<B: MutableBufferSequence + 'static, F: FnOnce(Error, MsgInfo, B) + 'static> SocketOp for RecvMsgOp<B, F> {
    fn perform(&self, io: &dyn Io) -> Option<(Error, usize)> {
        let mut bufs = self.bufs.borrow_mut();
        let (err, info) = recv_msg_now(io, bufs.as_mut()?, self.flags)?;
        self.info.set(info);
        Some((err, info.len))
    }
    fn is_msg_recv(&self) -> bool {
        self.flags == 0
    }
    fn recv_bufs(&self) -> Option<RefMut<'_, dyn MutableBufferSequence>> {
        batch_bufs(&self.bufs, self.flags)
    }
    fn set_info(&self, info: &MsgInfo) {
        self.info.set(*info);
    }
}

/// A completion with only an `Error`: readiness waits, a non-blocking
/// connect in progress, and operations that finish at once (`async_connect`
/// on a datagram socket).
pub(crate) struct WaitOp<F> {
    core: OpCore,
    /// A connect: the writability event ends it with the error the kernel
    /// recorded (`SO_ERROR`).
    connect: bool,
    handler: Cell<Option<F>>,
}

impl<F> WaitOp<F> {
    pub(crate) fn new(handler: F) -> Self {
        WaitOp { core: OpCore::default(), connect: false, handler: Cell::new(Some(handler)) }
    }

    /// A connect in progress, waiting for writability.
    pub(crate) fn connect(handler: F) -> Self {
        WaitOp { core: OpCore::default(), connect: true, handler: Cell::new(Some(handler)) }
    }
}

impl<F: FnOnce(Error) + 'static> Completion for WaitOp<F> {
    fn core(&self) -> &OpCore {
        &self.core
    }
    fn invoke(self: Rc<Self>) {
        let (err, _) = self.core.result();
        if let Some(h) = self.handler.take() {
            drop(self);
            h(err);
        }
    }
    fn abandon(&self) {
        drop(self.handler.take());
    }
}

impl<F: FnOnce(Error) + 'static> SocketOp for WaitOp<F> {
    // Reached only on a readiness event (a wait is never tried before it).
    fn perform(&self, io: &dyn Io) -> Option<(Error, usize)> {
        if !self.connect {
            return Some((Error::NONE, 0));
        }
        io.connect_outcome().map(|e| (e, 0))
    }
    fn is_wait(&self) -> bool {
        true
    }
}

/// An accept waiting for a connection; the handler gets the new socket.
pub(crate) type AcceptOp<F> = SlotOp<Accepted, F>;

/// Accepts one connection now; `None` when none is pending. A connection
/// that was reset before it could be accepted is skipped, as Asio does.
pub(crate) fn accept_now(sock: &Socket) -> Option<Result<Accepted, Error>> {
    loop {
        match sock.accept() {
            Ok((s, _)) => return Some(Ok(Accepted::Os(s))),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e)
                if e.kind() == std::io::ErrorKind::Interrupted
                    || e.raw_os_error() == Some(libc::ECONNABORTED)
                    || e.raw_os_error() == Some(libc::EPROTO) =>
            {
                continue;
            }
            Err(e) => return Some(Err(Error::from(e))),
        }
    }
}

/// The outcome of a non-blocking connect on `sock`, after a writability
/// event: the error the kernel recorded, `NONE` once connected, `None`
/// while still in progress (a spurious event). No error and no peer on a
/// socket that hung up: the connect failed and another operation (a read
/// started beside it) took its error; `NOT_CONNECTED` then, as the
/// simulated backend says too.
pub(crate) fn connect_outcome_of(sock: &Socket) -> Option<Error> {
    use std::os::fd::AsRawFd;
    match sock.take_error() {
        Ok(None) if sock.peer_addr().is_err() => {
            sys::hung_up(sock.as_raw_fd()).unwrap_or(false).then_some(Error::NOT_CONNECTED)
        }
        Ok(None) => Some(Error::NONE),
        Ok(Some(e)) | Err(e) => Some(Error::from(e)),
    }
}

impl<F: FnOnce(Error, Option<Accepted>) + 'static> SocketOp for AcceptOp<F> {
    fn perform(&self, io: &dyn Io) -> Option<(Error, usize)> {
        match io.accept()? {
            Ok(s) => {
                self.slot.set(Some(s));
                Some((Error::NONE, 0))
            }
            Err(e) => Some((e, 0)),
        }
    }
}

/// A receive that hands back the sender's address in any family (Unix
/// datagrams); the UDP path keeps `std::net::SocketAddr` in [`RecvOp`].
pub(crate) struct RecvFromOp<B, F> {
    core: OpCore,
    bufs: RefCell<Option<B>>,
    flags: i32,
    from: RefCell<Option<SockAddr>>,
    handler: Cell<Option<F>>,
}

impl<B, F> RecvFromOp<B, F> {
    pub(crate) fn new(bufs: B, flags: i32, handler: F) -> Self {
        RecvFromOp {
            core: OpCore::default(),
            bufs: RefCell::new(Some(bufs)),
            flags,
            from: RefCell::new(None),
            handler: Cell::new(Some(handler)),
        }
    }
}

/// Receives one datagram and its sender now; `None` when it would block.
pub(crate) fn recv_from_now<B: MutableBufferSequence + ?Sized, I: Io + ?Sized>(
    io: &I,
    bufs: &mut B,
    flags: i32,
) -> Option<(Error, usize, Option<SockAddr>)> {
    let Some(mut slices) = mut_slices(bufs) else {
        return Some((Error::INVALID_ARGUMENT, 0, None));
    };
    match io.recv_from_any(&mut slices, flags) {
        Ok((n, from)) => Some((Error::NONE, n, Some(from))),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(e) => Some((Error::from(e), 0, None)),
    }
}

impl<B: 'static, F: FnOnce(Error, usize, B, Option<SockAddr>) + 'static> Completion for RecvFromOp<B, F> {
    fn core(&self) -> &OpCore {
        &self.core
    }
    fn invoke(self: Rc<Self>) {
        let (err, n) = self.core.result();
        let from = self.from.take();
        if let (Some(h), Some(b)) = (self.handler.take(), self.bufs.take()) {
            drop(self);
            h(err, n, b, from);
        }
    }
    fn abandon(&self) {
        drop(self.bufs.take());
        drop(self.handler.take());
    }
}

impl<B, F> SocketOp for RecvFromOp<B, F>
where
    B: MutableBufferSequence + 'static,
    F: FnOnce(Error, usize, B, Option<SockAddr>) + 'static,
{
    fn perform(&self, io: &dyn Io) -> Option<(Error, usize)> {
        let mut bufs = self.bufs.borrow_mut();
        let (err, n, from) = recv_from_now(io, bufs.as_mut()?, self.flags)?;
        *self.from.borrow_mut() = from;
        Some((err, n))
    }
}
