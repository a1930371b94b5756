//! Datagram work on top of the reactor's readiness and queues: receives
//! batched with `recvmmsg`, sends batched with `sendmmsg` or coalesced with
//! UDP segmentation offload (GSO), and the read-ahead slot, where a receive
//! keeps the next datagram so that one call also says whether the socket is
//! drained.
//!
//! Kept apart from the reactor proper (`reactor.rs`), which knows readiness
//! and the per-socket queues only, no protocol. A child module, so these stay
//! methods of [`IoObject`] and [`Reactor`] over their private state, called
//! from `run_queue` and the `Io` impl.

use super::{Dir, IoObject, Owner, Reactor};
use crate::buffer::{MAX_BUFFERS, MutableBufferSequence, scatter};
use crate::error::Error;
use crate::op::SocketOp;
use crate::sys;
use smallvec::SmallVec;
use socket2::{SockAddr, Socket};
use std::cell::RefMut;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;

/// Where the reactor assembles a batch of sends: their datagrams laid end
/// to end, and the operations, in queue order. The room is kept from one
/// batch to the next.
#[derive(Default)]
pub(super) struct SendBatch {
    bytes: Vec<u8>,
    ops: Vec<Rc<dyn SocketOp>>,
}

/// Result of a batch attempt (`recv_many`, `send_many`, `send_run`).
pub(super) enum Batch {
    /// This many operations completed in one call.
    Sent(usize),
    /// The socket would block: wait for writability.
    WouldBlock,
    /// Send the front operation on its own.
    Single,
}

/// Limits of one segmented send (Linux: at most 64 segments, and the whole
/// buffer must fit one IP datagram's payload).
const MAX_SEGMENTS: usize = 64;
/// Largest segment: the largest UDP payload over IPv4.
const MAX_SEGMENT: usize = 65_507;
/// Largest whole buffer of one segmented send: one IP datagram's payload,
/// with a margin.
const MAX_GSO_BYTES: usize = 65_000;

/// Size of the space a datagram read ahead lands in: the largest UDP payload.
const READ_AHEAD_SPACE: usize = 65_536;

/// A datagram received ahead of any receive operation; or, on a GRO
/// socket, the rest of a coalesced one, which receives take a segment at a
/// time.
pub(super) struct Datagram {
    data: Vec<u8>,
    from: Option<SocketAddr>,
    /// The segment size of coalesced datagrams (0: one datagram).
    stride: usize,
    /// Where the next segment starts.
    offset: usize,
}

/// The read-ahead slot: a receive served from it, or filling it.
impl IoObject {
    /// An operation's receive before it is counted ([`Io::recv`]): from the
    /// read-ahead slot if a datagram waits there; one plain `recv` on a
    /// level-triggered registration; otherwise, on a read-ahead socket, one
    /// `recvmmsg` that also fills the slot, or says the socket is drained.
    ///
    /// [`Io::recv`]: crate::op::Io::recv
    // Always inlined into `Io::recv` (it has a second, cold caller, for
    // sockets with error reports on, which would stop the inlining).
    #[inline(always)]
    pub(super) fn recv_uncounted(
        &self,
        sock: &Socket,
        bufs: &mut [IoSliceMut<'_>],
        flags: i32,
        from: sys::Sender<'_>,
    ) -> io::Result<usize> {
        let level = {
            let mut st = self.st.borrow_mut();
            if let Some(d) = st.read_ahead.as_ref() {
                if d.stride != 0 {
                    drop(st);
                    return Ok(self.take_segment(bufs, flags, from).len);
                }
                let len = scatter(&d.data, bufs);
                if let Some(from) = from {
                    from.set(d.from);
                }
                if flags & libc::MSG_PEEK == 0
                    && let Some(d) = st.read_ahead.take()
                {
                    *self.read_ahead_buf.borrow_mut() = d.data;
                }
                return Ok(len);
            }
            st.registered && st.level
        };
        if level {
            // Level-triggered: the next wait reports any datagram left.
            let r = self.recv_one(sock, bufs, flags, from)?;
            self.st.borrow_mut().kernel_ready[Dir::Read as usize] = false;
            return Ok(r);
        }
        let owner = match self.owner.upgrade() {
            Some(owner) if flags == 0 && self.can_read_ahead.get() => owner,
            _ => return self.recv_one(sock, bufs, flags, from),
        };
        let mut space = owner.reactor().read_ahead_space();
        let r = sys::recv_read_ahead(sock, bufs, from, &mut space)?;
        match r.second {
            Some((len, from)) => {
                self.keep_read_ahead(&space[..len], from, 0);
            }
            // Drained. (Should the second receive have failed with an error
            // instead, such as an ICMP report racing in between, the kernel
            // keeps it for the next call, which the next datagram triggers.)
            None => self.st.borrow_mut().kernel_ready[Dir::Read as usize] = false,
        }
        Ok(r.first)
    }

    /// One datagram, no read-ahead: `recv`, or on a GRO socket the first
    /// of the datagrams the kernel coalesced.
    #[inline(always)]
    fn recv_one(
        &self,
        sock: &Socket,
        bufs: &mut [IoSliceMut<'_>],
        flags: i32,
        from: sys::Sender<'_>,
    ) -> io::Result<usize> {
        if self.gro.get() {
            let (info, _) = self.recv_coalesced(sock, bufs, flags)?;
            if let Some(from) = from {
                from.set(info.from);
            }
            return Ok(info.len);
        }
        sys::recv(sock, bufs, flags, from)
    }

    /// A plain receive on a GRO socket, which must get one datagram as
    /// on any other socket: the coalesced datagrams land in the read-ahead
    /// space, the first goes to `bufs`, and the rest wait in the read-ahead
    /// slot for the next receives, a segment each, with the metadata they
    /// came with ([`take_segment`](Self::take_segment)). Returns what
    /// `bufs` got and the first datagram's whole length.
    #[cold]
    #[inline(never)]
    fn recv_coalesced(
        &self,
        sock: &Socket,
        bufs: &mut [IoSliceMut<'_>],
        flags: i32,
    ) -> io::Result<(sys::msg::MsgInfo, usize)> {
        // The context's space; a socket that outlived its context, its own.
        let owner = self.owner.upgrade();
        let mut guard = owner.as_ref().map(|o| o.reactor().read_ahead_space());
        let mut own = Vec::new();
        let space: &mut [u8] = match guard.as_deref_mut() {
            Some(space) => space,
            None => {
                own.resize(READ_AHEAD_SPACE, 0);
                &mut own
            }
        };
        let info = sys::msg::recv_msg(sock, &mut [IoSliceMut::new(space)], flags)?;
        let first = match info.segment_size {
            Some(stride) if stride > 0 && stride < info.len => stride,
            _ => info.len,
        };
        let len = scatter(&space[..first], bufs);
        if first < info.len && flags & libc::MSG_PEEK == 0 {
            log::trace!("coalesced datagrams: {} bytes in segments of {first}", info.len);
            self.gro_info.set(info);
            self.keep_read_ahead(&space[first..info.len], info.from, first);
        }
        Ok((sys::msg::MsgInfo { len, truncated: len < first, segment_size: None, ..info }, first))
    }

    /// The length of the first datagram the kernel holds, coalesced or not
    /// (which `FIONREAD` does not tell): a peek.
    #[cold]
    fn first_coalesced(&self, sock: &Socket) -> io::Result<usize> {
        match self.recv_coalesced(sock, &mut [], libc::MSG_PEEK) {
            Ok((_, first)) => Ok(first),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// The next segment of coalesced datagrams held in the read-ahead slot
    /// (see [`recv_coalesced`](Self::recv_coalesced)), with the metadata
    /// they arrived with.
    #[cold]
    #[inline(never)]
    fn take_segment(&self, bufs: &mut [IoSliceMut<'_>], flags: i32, from: sys::Sender<'_>) -> sys::msg::MsgInfo {
        let mut st = self.st.borrow_mut();
        let Some(d) = st.read_ahead.as_mut() else {
            return sys::msg::MsgInfo::default();
        };
        let end = (d.offset + d.stride).min(d.data.len());
        let segment = &d.data[d.offset..end];
        let len = scatter(segment, bufs);
        let info = sys::msg::MsgInfo { len, truncated: len < segment.len(), segment_size: None, ..self.gro_info.get() };
        if let Some(from) = from {
            from.set(d.from);
        }
        if flags & libc::MSG_PEEK == 0 {
            d.offset = end;
            if end == d.data.len()
                && let Some(d) = st.read_ahead.take()
            {
                *self.read_ahead_buf.borrow_mut() = d.data;
            }
        }
        info
    }

    /// A receive with metadata: from the read-ahead slot first (a datagram
    /// read ahead kept only its sender: the other fields are unknown; a
    /// segment of coalesced datagrams has theirs), else `recvmsg` with
    /// control messages.
    pub(super) fn recv_msg_uncounted(
        &self,
        sock: &Socket,
        bufs: &mut [IoSliceMut<'_>],
        flags: i32,
    ) -> io::Result<sys::msg::MsgInfo> {
        let level = {
            let mut st = self.st.borrow_mut();
            if let Some(d) = st.read_ahead.as_ref() {
                if d.stride != 0 {
                    drop(st);
                    return Ok(self.take_segment(bufs, flags, None));
                }
                let len = scatter(&d.data, bufs);
                let info = sys::msg::MsgInfo { len, from: d.from, truncated: len < d.data.len(), ..Default::default() };
                if flags & libc::MSG_PEEK == 0
                    && let Some(d) = st.read_ahead.take()
                {
                    *self.read_ahead_buf.borrow_mut() = d.data;
                }
                return Ok(info);
            }
            st.registered && st.level
        };
        let info = sys::msg::recv_msg(sock, bufs, flags)?;
        if level {
            // Level-triggered: the next wait reports any datagram left.
            self.st.borrow_mut().kernel_ready[Dir::Read as usize] = false;
        }
        Ok(info)
    }

    /// Holds a datagram read ahead for the next receive, in the reused
    /// buffer (`stride` > 0: the rest of coalesced datagrams, that long each).
    fn keep_read_ahead(&self, datagram: &[u8], from: Option<SocketAddr>, stride: usize) {
        let mut data = std::mem::take(&mut *self.read_ahead_buf.borrow_mut());
        data.clear();
        data.extend_from_slice(datagram);
        self.st.borrow_mut().read_ahead = Some(Datagram { data, from, stride, offset: 0 });
    }

    /// True while a datagram read ahead waits for a receive.
    #[inline]
    pub(crate) fn has_read_ahead(&self) -> bool {
        self.st.borrow().read_ahead.is_some()
    }

    /// Length of the next datagram: the one read ahead, else the kernel's.
    pub(crate) fn available(&self, sock: &Socket) -> io::Result<usize> {
        match self.st.borrow().read_ahead.as_ref() {
            Some(d) if d.stride != 0 => Ok(d.stride.min(d.data.len() - d.offset)),
            Some(d) => Ok(d.data.len()),
            None if self.gro.get() => {
                // A peek would take a pending error (the kernel reports it
                // before any datagram) from the receive it belongs to: then
                // `FIONREAD` answers, which may count coalesced datagrams as one.
                let queued = sys::available(sock)?;
                if queued == 0 || sys::error_pending(sock.as_raw_fd())? {
                    return Ok(queued);
                }
                self.first_coalesced(sock)
            }
            None => sys::available(sock),
        }
    }
}

/// Batches: several queued operations completed by one system call.
impl IoObject {
    /// Receives into the plain receives pending at the front of the read
    /// queue (two or more) with one `recvmmsg`, plus the read-ahead slot, so that
    /// the same call says whether the socket is drained (as `recv` does for
    /// one receive). Each completes with its own length and sender.
    #[inline(never)]
    pub(super) fn recv_many<O: Owner + ?Sized>(&self, owner: &O, sock: &Socket, max: usize) -> Batch {
        self.recv_batch::<O, false>(owner, sock, max)
    }

    /// On a socket whose metadata switches are on: receives into the
    /// receives pending at the front of the read queue (two or more, with
    /// metadata or plain) with one `recvmmsg` that carries each datagram's
    /// control messages. No read-ahead slot (its datagram would lose them):
    /// fewer datagrams than receives says the socket is drained.
    #[inline(never)]
    pub(super) fn recv_many_msg<O: Owner + ?Sized>(&self, owner: &O, sock: &Socket, max: usize) -> Batch {
        self.recv_batch::<O, true>(owner, sock, max)
    }

    /// The two batches above: `META` picks the system call and which
    /// receives may join.
    #[inline(always)]
    fn recv_batch<O: Owner + ?Sized, const META: bool>(&self, owner: &O, sock: &Socket, max: usize) -> Batch {
        // Fixed arrays, not collected vectors: a batch is built on every
        // readable event of a busy server, and collecting cost more per
        // receive than the rest of the batch's bookkeeping.
        const N: usize = sys::RECV_BATCH - 1;
        let mut candidates: [Option<Rc<dyn SocketOp>>; N] = Default::default();
        let mut n = 0;
        {
            let limit = max.min(usize::from(self.batch_hint.get())).min(N);
            let st = self.st.borrow();
            for op in st.ops[Dir::Read as usize].iter().take(limit) {
                // (On a GRO socket a plain receive takes one segment of
                // what arrives coalesced: it cannot join.)
                let joins =
                    if META { op.is_msg_recv() || op.is_plain_recv() && !self.gro.get() } else { op.is_plain_recv() };
                if op.core().is_done() || !joins {
                    break;
                }
                candidates[n] = Some(op.clone());
                n += 1;
            }
        }
        if n < 2 {
            return Batch::Single;
        }
        // Every buffer stays borrowed (the guards) until the call returns.
        // A receive that cannot join (flags, too many buffers) ends the batch.
        let mut guards: [Option<RefMut<'_, dyn MutableBufferSequence>>; N] = Default::default();
        let mut ops = 0;
        for op in candidates[..n].iter().flatten() {
            match op.recv_bufs().filter(|b| b.buffer_count() <= MAX_BUFFERS) {
                Some(g) => guards[ops] = Some(g),
                None => break,
            }
            ops += 1;
        }
        if ops < 2 {
            return Batch::Single;
        }
        let mut counts: SmallVec<[usize; N]> = SmallVec::new();
        let mut slices: SmallVec<[IoSliceMut<'_>; N]> = SmallVec::new();
        for g in guards[..ops].iter_mut().flatten() {
            let before = slices.len();
            g.scatter(&mut |b| slices.push(IoSliceMut::new(b)));
            counts.push(slices.len() - before);
        }
        if META {
            let mut infos = [sys::msg::MsgInfo::default(); N];
            let result = self.past_reports(false, || sys::msg::recv_msg_many(sock, &mut slices, &counts, &mut infos));
            drop(slices);
            drop(guards);
            let received = match result {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Batch::WouldBlock,
                Err(e) => return self.fail_front(owner, Dir::Read, e),
            };
            let k = received.min(ops);
            self.batch_hint.set((2 * received).clamp(2, N) as u8);
            if received < ops {
                // Fewer datagrams than receives: the socket is drained.
                self.st.borrow_mut().kernel_ready[Dir::Read as usize] = false;
            }
            log::trace!("received {k} datagrams with metadata in one call");
            let done = (0..k).filter_map(|i| {
                let op = candidates[i].take()?;
                op.set_info(&infos[i]);
                Some((op, infos[i].len))
            });
            return self.complete_front(owner, Dir::Read, k, done);
        }
        let mut space = owner.reactor().read_ahead_space();
        let mut got = [(0, None); sys::RECV_BATCH];
        let result = self.past_reports(false, || sys::recv_many(sock, &mut slices, &counts, &mut space, &mut got));
        drop(slices);
        drop(guards);
        match result {
            Ok(received) => {
                let k = received.min(ops);
                let hint = (2 * received).clamp(2, N);
                self.batch_hint.set(hint as u8);
                if received > ops {
                    let (len, from) = got[ops];
                    self.keep_read_ahead(&space[..len], from, 0);
                } else {
                    // Fewer datagrams than slots: the socket is drained.
                    self.st.borrow_mut().kernel_ready[Dir::Read as usize] = false;
                }
                drop(space);
                log::trace!("received {k} datagrams in one call");
                // By index: iterating the arrays by value would copy them whole.
                let done = (0..k).filter_map(|i| {
                    let op = candidates[i].take()?;
                    let (len, from) = got[i];
                    op.set_sender(from);
                    Some((op, len))
                });
                self.complete_front(owner, Dir::Read, k, done)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Batch::WouldBlock,
            Err(e) => {
                drop(space);
                self.fail_front(owner, Dir::Read, e)
            }
        }
    }

    /// A batch call completed the `k` operations at the front of the `dir`
    /// queue: each leaves the queue and completes with its own length.
    fn complete_front<O: Owner + ?Sized>(
        &self,
        owner: &O,
        dir: Dir,
        k: usize,
        done: impl Iterator<Item = (Rc<dyn SocketOp>, usize)>,
    ) -> Batch {
        self.st.borrow_mut().ops[dir as usize].drain(..k);
        for (op, len) in done {
            match dir {
                Dir::Read => self.counted_in(len),
                Dir::Write => self.counted_out(len),
            }
            owner.complete(op, Error::NONE, len);
        }
        Batch::Sent(k)
    }

    /// A batch call failed on its first datagram: the error (its own, or the
    /// socket's pending one, which the call consumed) goes to the operation
    /// at the front, as it would without batching; the others stay queued.
    fn fail_front<O: Owner + ?Sized>(&self, owner: &O, dir: Dir, e: io::Error) -> Batch {
        let front = self.st.borrow_mut().ops[dir as usize].pop_front();
        if let Some(op) = front {
            owner.complete(op, Error::from(e), 0);
        }
        Batch::Sent(1)
    }

    /// The `i`-th operation of the write queue: the next candidate for a
    /// batch (which [`SocketOp::append_datagram`] refuses if it is done).
    /// Cloned out of the borrow, because looking at it runs the buffers' own
    /// code.
    #[inline]
    fn queued_send(&self, i: usize) -> Option<Rc<dyn SocketOp>> {
        self.st.borrow().ops[Dir::Write as usize].get(i).cloned()
    }

    /// Fewer than two sends are queued: no batch to make.
    #[inline]
    fn lone_send(&self) -> bool {
        self.st.borrow().ops[Dir::Write as usize].len() < 2
    }

    /// One system call sent the first `k` sends of `ops`, the front of the
    /// write queue in order: each leaves the queue and completes with its own
    /// length, `len(i)` for the `i`-th.
    fn complete_sends<O: Owner + ?Sized>(
        &self,
        owner: &O,
        ops: &mut Vec<Rc<dyn SocketOp>>,
        k: usize,
        len: impl Fn(usize) -> usize,
    ) -> Batch {
        {
            // `ops` holds a clone of each, so none is dropped (and no user
            // code runs) while the queue is borrowed.
            let mut st = self.st.borrow_mut();
            let q = &mut st.ops[Dir::Write as usize];
            let sent = &ops[..k];
            if q.len() >= k && q.iter().zip(sent).all(|(a, b)| Rc::ptr_eq(a, b)) {
                q.drain(..k);
            } else {
                // The buffers' own code changed the queue meanwhile.
                q.retain(|o| !sent.iter().any(|op| Rc::ptr_eq(o, op)));
            }
        }
        let mut bytes = 0;
        for (i, op) in ops.drain(..k).enumerate() {
            let n = len(i);
            bytes += n;
            owner.complete(op, Error::NONE, n);
        }
        // Batches are datagrams: a stream writes one at a time.
        self.counters.sent_datagrams(bytes, k);
        Batch::Sent(k)
    }

    /// Runs `make` with the reactor's batch, taken out of it for the while
    /// (no borrow is held while the buffers' own code runs, nor while an
    /// operation left over is dropped), then gives the room back.
    #[inline]
    fn with_batch<O: Owner + ?Sized>(&self, owner: &O, make: impl FnOnce(&mut SendBatch) -> Batch) -> Batch {
        let reactor = owner.reactor();
        let mut b = reactor.batch.take().unwrap_or_default();
        b.bytes.clear();
        let r = make(&mut b);
        b.ops.clear();
        reactor.batch.set(Some(b));
        r
    }

    /// Sends the queued sends at the front of the write queue (any sizes and
    /// destinations) in one `sendmmsg`, each completing with its own result.
    /// Sends queue only behind a socket that would block, so this is the
    /// flush when it becomes writable again. `Single` when fewer than two.
    #[inline(never)]
    pub(super) fn send_many<O: Owner + ?Sized>(&self, owner: &O, sock: &Socket, max: usize) -> Batch {
        if self.lone_send() {
            return Batch::Single;
        }
        let max = max.min(MAX_SEGMENTS);
        self.with_batch(owner, |SendBatch { bytes, ops }| {
            // Length of each, and the destinations of those that have one
            // (by index: most sends go to the connected peer, and an address
            // is 128 bytes to copy).
            let mut lens: SmallVec<[usize; MAX_SEGMENTS]> = SmallVec::new();
            let mut dests: SmallVec<[(usize, SockAddr); 4]> = SmallVec::new();
            while ops.len() < max {
                let Some(op) = self.queued_send(ops.len()) else { break };
                let Some((len, dest)) = op.append_datagram(bytes, usize::MAX) else { break };
                if let Some(d) = dest {
                    dests.push((ops.len(), d.clone()));
                }
                lens.push(len);
                ops.push(op);
            }
            if ops.len() < 2 {
                return Batch::Single;
            }
            let mut parts: SmallVec<[sys::Part<'_>; MAX_SEGMENTS]> = SmallVec::new();
            let (mut start, mut next_dest) = (0, dests.iter().peekable());
            for (i, &len) in lens.iter().enumerate() {
                let dest = next_dest.next_if(|(j, _)| *j == i).map(|(_, d)| d);
                parts.push(sys::Part { start, len, dest });
                start += len;
            }
            let r = if self.recv_errors.get() {
                super::retry_reported(true, || sys::send_many(sock, bytes, &parts))
            } else {
                sys::send_many(sock, bytes, &parts)
            };
            drop(parts);
            match r {
                Ok(k) => {
                    log::trace!("sent {k} of {} queued datagrams in one call", ops.len());
                    let k = k.min(ops.len());
                    self.complete_sends(owner, ops, k, |i| lens[i])
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Batch::WouldBlock,
                Err(e) => self.fail_front(owner, Dir::Write, e),
            }
        })
    }

    /// Sends the run of equal-size datagrams (same destination, the last may
    /// be shorter) at the front of the write queue in one system call with
    /// UDP segmentation offload; each operation completes with its own length.
    /// `Single` when there is no run of two or more, or when the kernel
    /// refused the batch: the operations then go one by one, each with its
    /// own result (and a refusal of GSO itself turns it off for the socket).
    ///
    /// Each send is looked at once: its datagram is appended to the batch
    /// if it fits the run (see [`SocketOp::append_datagram`]).
    #[inline(never)]
    pub(super) fn send_run<O: Owner + ?Sized>(&self, owner: &O, sock: &Socket, max: usize) -> Batch {
        if self.lone_send() {
            return Batch::Single;
        }
        let max = max.min(MAX_SEGMENTS);
        self.with_batch(owner, |b| self.send_run_in(owner, sock, max, b))
    }

    /// [`send_run`](Self::send_run) with the batch's room `b`, taken out of the
    /// reactor meanwhile.
    fn send_run_in<O: Owner + ?Sized>(&self, owner: &O, sock: &Socket, max: usize, b: &mut SendBatch) -> Batch {
        let SendBatch { bytes, ops } = b;
        let mut segment = 0;
        let mut dest: Option<SockAddr> = None;
        while ops.len() < max {
            let Some(op) = self.queued_send(ops.len()) else { break };
            // The first sets the segment size; the others must not exceed it,
            // nor the room left in one IP datagram.
            let room =
                if ops.is_empty() { MAX_SEGMENT } else { segment.min(MAX_GSO_BYTES.saturating_sub(bytes.len())) };
            let Some((len, d)) = op.append_datagram(bytes, room) else { break };
            if ops.is_empty() {
                if len == 0 {
                    break; // a zero-length datagram goes on its own
                }
                segment = len;
                dest = d.cloned();
            } else if len == 0 || d != dest.as_ref() {
                bytes.truncate(bytes.len() - len);
                break;
            }
            ops.push(op);
            if len < segment {
                break; // only the last segment may be shorter
            }
        }
        if ops.len() < 2 {
            return Batch::Single;
        }
        let sent = if self.recv_errors.get() {
            super::retry_reported(true, || sys::send_segments(sock, bytes, dest.as_ref(), segment as u16))
        } else {
            sys::send_segments(sock, bytes, dest.as_ref(), segment as u16)
        };
        match sent {
            Ok(_) => {
                self.gso_refusals.set(0);
                let k = ops.len();
                log::trace!("sent {k} datagrams of {segment} bytes in one call");
                let last = bytes.len() - segment * (k - 1);
                self.complete_sends(owner, ops, k, |i| if i + 1 == k { last } else { segment })
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Batch::WouldBlock,
            Err(e) if sys::gso_refused(&e) || e.raw_os_error() == Some(libc::EMSGSIZE) => {
                // About the batch, not the datagrams: send them one by one,
                // each with its own result. EINVAL may concern this batch only
                // (segments above the path MTU), so GSO goes off for the
                // socket only after several refusals in a row.
                if sys::gso_refused(&e) {
                    let n = self.gso_refusals.get() + 1;
                    self.gso_refusals.set(n);
                    if e.raw_os_error() != Some(libc::EINVAL) || n >= 4 {
                        log::debug!("UDP segmentation offload refused ({e}): sending one by one");
                        self.gso.set(false);
                    }
                }
                Batch::Single
            }
            Err(e) => {
                // The socket's own pending error (an ICMP report, say): the
                // call consumed it, so it goes to the first send, as it would
                // without batching; the others stay queued.
                self.fail_front(owner, Dir::Write, e)
            }
        }
    }
}

/// The read-ahead space, one per reactor (a receive fills it and copies out
/// at once, so its sockets can share it).
impl Reactor {
    /// Where the kernel writes a datagram read ahead: the largest UDP payload, allocated on first use.
    fn read_ahead_space(&self) -> std::cell::RefMut<'_, Box<[u8]>> {
        let mut space = self.read_ahead_space.borrow_mut();
        if space.is_empty() {
            *space = vec![0u8; READ_AHEAD_SPACE].into_boxed_slice();
        }
        space
    }
}
