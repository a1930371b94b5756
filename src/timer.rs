//! The context's timer queue (an indexed binary heap: insert and remove in
//! O(log n), equal deadlines in the order set) and `SteadyTimer`.

use crate::cancel::{CancellationType, Operation};
use crate::context::Executor;
use crate::error::Error;
use crate::op::{Completion, WaitOp};
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

/// What a timer entry does when its deadline passes.
pub(crate) enum TimerTarget {
    /// Complete this wait with `Error::NONE`.
    Wait(Rc<dyn Completion>),
    /// Cancel this operation if it is still pending (`Operation::cancel_after`).
    CancelAfter(Weak<dyn Completion>, CancellationType),
}

struct Slot {
    pos: usize,
    target: TimerTarget,
}

#[derive(Clone, Copy)]
struct HeapEntry {
    at: Instant,
    seq: u64,
    key: usize,
}

impl HeapEntry {
    fn before(&self, other: &HeapEntry) -> bool {
        (self.at, self.seq) < (other.at, other.seq)
    }
}

/// Deadlines ordered by (time, insertion sequence); slots know their heap
/// position so that removal is O(log n).
#[derive(Default)]
pub(crate) struct TimerQueue {
    heap: Vec<HeapEntry>,
    slots: Slab<Slot>,
    seq: u64,
}

impl TimerQueue {
    pub(crate) fn insert(&mut self, at: Instant, target: TimerTarget) -> usize {
        let pos = self.heap.len();
        let key = self.slots.insert(Slot { pos, target });
        self.seq += 1;
        self.heap.push(HeapEntry { at, seq: self.seq, key });
        self.sift_up(pos);
        key
    }

    /// Removes an entry; `None` when it is already gone.
    pub(crate) fn remove(&mut self, key: usize) -> Option<TimerTarget> {
        let slot = self.slots.try_remove(key)?;
        let pos = slot.pos;
        let last = self.heap.len() - 1;
        if pos != last {
            self.heap.swap(pos, last);
            self.slots[self.heap[pos].key].pos = pos;
        }
        self.heap.pop();
        if pos < self.heap.len() {
            self.sift_down(pos);
            self.sift_up(pos);
        }
        Some(slot.target)
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.first().map(|e| e.at)
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<TimerTarget> {
        let top = *self.heap.first()?;
        if top.at > now {
            return None;
        }
        self.remove(top.key)
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Empties the queue (context teardown).
    pub(crate) fn take_all(&mut self) -> Vec<TimerTarget> {
        self.heap.clear();
        self.slots.drain().map(|s| s.target).collect()
    }

    fn set(&mut self, pos: usize, e: HeapEntry) {
        self.slots[e.key].pos = pos;
        self.heap[pos] = e;
    }

    fn sift_up(&mut self, mut pos: usize) {
        let e = self.heap[pos];
        while pos > 0 {
            let parent = (pos - 1) / 2;
            let p = self.heap[parent];
            if !e.before(&p) {
                break;
            }
            self.set(pos, p);
            pos = parent;
        }
        self.set(pos, e);
    }

    fn sift_down(&mut self, mut pos: usize) {
        let e = self.heap[pos];
        let n = self.heap.len();
        loop {
            let mut child = 2 * pos + 1;
            if child >= n {
                break;
            }
            if child + 1 < n && self.heap[child + 1].before(&self.heap[child]) {
                child += 1;
            }
            let c = self.heap[child];
            if !c.before(&e) {
                break;
            }
            self.set(pos, c);
            pos = child;
        }
        self.set(pos, e);
    }
}

struct TimerObj {
    exec: Executor,
    expiry: Cell<Instant>,
    /// The waits started on this timer, oldest first (entries that completed
    /// are pruned lazily).
    waits: RefCell<VecDeque<Weak<dyn Completion>>>,
}

impl TimerObj {
    /// Cancels pending waits, oldest first, at most `limit` of them.
    fn cancel_waits(&self, limit: usize) -> usize {
        let Some(inner) = self.exec.upgrade() else {
            return 0;
        };
        let mut n = 0;
        while n < limit {
            let Some(w) = self.waits.borrow_mut().pop_front() else {
                break;
            };
            if let Some(op) = w.upgrade()
                && inner.cancel_op(op, CancellationType::ALL)
            {
                n += 1;
            }
        }
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
        f.debug_struct("SteadyTimer").field("expiry", &self.obj.expiry.get()).finish()
    }
}

impl SteadyTimer {
    /// A timer on `ex`'s context whose expiry is now (a wait started before
    /// `expires_*` completes on the next turn of the loop).
    pub fn new(ex: &Executor) -> SteadyTimer {
        let now = ex.upgrade().map_or_else(Instant::now, |i| i.now());
        SteadyTimer {
            obj: Rc::new(TimerObj { exec: ex.clone(), expiry: Cell::new(now), waits: RefCell::new(VecDeque::new()) }),
        }
    }

    /// The current expiry.
    pub fn expiry(&self) -> Instant {
        self.obj.expiry.get()
    }

    /// Sets the expiry to `now + d`; cancels the pending waits and returns how
    /// many it cancelled.
    pub fn expires_after(&self, d: Duration) -> usize {
        let now = self.obj.exec.upgrade().map_or_else(Instant::now, |i| i.now());
        self.expires_at(now + d)
    }

    /// Sets the expiry; cancels the pending waits and returns how many it
    /// cancelled.
    pub fn expires_at(&self, at: Instant) -> usize {
        let n = self.cancel();
        self.obj.expiry.set(at);
        n
    }

    /// Starts a wait for the expiry. The handler gets `Error::NONE` when it
    /// passes (posted, even if it passed already) or `OPERATION_ABORTED` when
    /// cancelled.
    pub fn async_wait<F: FnOnce(Error) + 'static>(&self, handler: F) -> Operation {
        let Some(inner) = self.obj.exec.upgrade() else {
            log::debug!("timer wait started after its context was dropped: handler dropped");
            return Operation::detached();
        };
        let op: Rc<dyn Completion> = Rc::new(WaitOp::new(handler));
        inner.add_work();
        let key = inner.timers.borrow_mut().insert(self.obj.expiry.get(), TimerTarget::Wait(op.clone()));
        op.core().timer_key.set(Some(key));
        let mut waits = self.obj.waits.borrow_mut();
        while waits.front().is_some_and(|w| w.upgrade().is_none_or(|o| o.core().is_done())) {
            waits.pop_front();
        }
        waits.push_back(Rc::downgrade(&op));
        log::trace!("timer wait started");
        Operation::new(&inner, &op)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_orders_by_deadline_then_sequence_and_removes_anywhere() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        let mut keys = Vec::new();
        // Deadlines repeat so that the sequence decides ties.
        for i in 0..200u64 {
            let at = t0 + Duration::from_micros((i * 7919) % 50);
            keys.push((
                at,
                i,
                q.insert(at, TimerTarget::CancelAfter(Weak::<WaitOp<fn(Error)>>::new(), CancellationType::ALL)),
            ));
        }
        for (_, i, k) in keys.iter() {
            if i % 3 == 0 {
                assert!(q.remove(*k).is_some());
                assert!(q.remove(*k).is_none());
            }
        }
        let mut expect: Vec<_> = keys.iter().filter(|(_, i, _)| i % 3 != 0).map(|(at, i, _)| (*at, *i)).collect();
        expect.sort();
        let mut got = Vec::new();
        while let Some(at) = q.next_deadline() {
            let key = q.heap[0].key;
            let (_, i, _) = keys.iter().find(|(_, _, k)| *k == key).copied().unwrap();
            got.push((at, i));
            assert!(q.pop_due(at).is_some());
        }
        assert_eq!(got, expect);
        assert_eq!(q.len(), 0);
    }
}
