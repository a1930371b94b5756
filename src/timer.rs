//! The context's timer queue (bucketed deadlines: insertion O(log b) for b
//! buckets, or O(k) into the k items of the current bucket; O(1) removal;
//! equal deadlines in the order set) and `SteadyTimer`.

use crate::cancel::{CancellationType, Operation};
use crate::context::Executor;
use crate::error::Error;
use crate::op::{Completion, WaitOp};
use slab::Slab;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
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
    /// The sequence number of this entry's item.
    seq: u64,
    target: TimerTarget,
}

/// A queued deadline: nanoseconds since the queue's base instant, then the
/// insertion sequence (FIFO among equal deadlines), then the slot.
type Item = (u64, u64, u32);

/// Deadlines fall into buckets of 2^20 ns (about 1 ms).
const BUCKET_SHIFT: u32 = 20;

/// Deadlines ordered by (time, insertion sequence).
///
/// Items go unsorted into ~1 ms buckets (a B-tree of buckets: insertion is a
/// push); the earliest bucket is sorted once, when it becomes current, and
/// then fires from the front. Removal is O(1): the slot goes and its item
/// becomes dead, skipped when reached, and all dead items are swept out when
/// they outnumber the live ones (amortised O(1), and it bounds the memory
/// they hold). A million pending timers stay cheap: each is touched in
/// cache-sized groups instead of along a heap path of twenty cache misses.
pub(crate) struct TimerQueue {
    base: Instant,
    /// The earliest items, sorted; their buckets are <= `current_bucket`.
    current: VecDeque<Item>,
    current_bucket: Option<u64>,
    /// Later items by bucket, unsorted; every key is > `current_bucket`.
    buckets: BTreeMap<u64, Vec<Item>>,
    slots: Slab<Slot>,
    seq: u64,
    dead: usize,
}

impl TimerQueue {
    pub(crate) fn new(base: Instant) -> TimerQueue {
        TimerQueue {
            base,
            current: VecDeque::new(),
            current_bucket: None,
            buckets: BTreeMap::new(),
            slots: Slab::new(),
            seq: 0,
            dead: 0,
        }
    }

    /// The instant deadlines are counted from (before the context's creation).
    pub(crate) fn base(&self) -> Instant {
        self.base
    }

    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_nanos().min(u64::MAX as u128) as u64
    }

    pub(crate) fn insert(&mut self, at: Instant, target: TimerTarget) -> usize {
        self.seq += 1;
        let key = self.slots.insert(Slot { seq: self.seq, target });
        let item = (self.ns(at), self.seq, key as u32);
        let bucket = item.0 >> BUCKET_SHIFT;
        match self.current_bucket {
            Some(cb) if bucket <= cb => {
                let pos = self.current.partition_point(|x| *x < item);
                self.current.insert(pos, item);
            }
            _ => self.buckets.entry(bucket).or_default().push(item),
        }
        key
    }

    /// Removes an entry; `None` when it is already gone.
    pub(crate) fn remove(&mut self, key: usize) -> Option<TimerTarget> {
        let slot = self.slots.try_remove(key)?;
        self.dead += 1;
        if self.dead > 1024 && self.dead > self.slots.len() {
            self.sweep();
        }
        Some(slot.target)
    }

    /// Drops every dead item.
    fn sweep(&mut self) {
        let slots = &self.slots;
        let live = |&(_, seq, key): &Item| slots.get(key as usize).is_some_and(|s| s.seq == seq);
        self.current.retain(live);
        self.buckets.retain(|_, v| {
            v.retain(live);
            !v.is_empty()
        });
        self.dead = 0;
    }

    fn is_live(&self, &(_, seq, key): &Item) -> bool {
        self.slots.get(key as usize).is_some_and(|s| s.seq == seq)
    }

    /// Makes `current` start with the earliest live item, if there is one.
    fn settle(&mut self) {
        loop {
            while let Some(front) = self.current.front() {
                if self.is_live(front) {
                    return;
                }
                self.current.pop_front();
                self.dead -= 1;
            }
            let Some((bucket, mut items)) = self.buckets.pop_first() else { return };
            items.sort_unstable();
            self.current = VecDeque::from(items);
            self.current_bucket = Some(bucket);
        }
    }

    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        if self.slots.is_empty() {
            if self.dead > 0 {
                // Only dead items left: drop them all at once.
                self.current.clear();
                self.buckets.clear();
                self.dead = 0;
            }
            return None;
        }
        self.settle();
        self.current.front().map(|(at, _, _)| self.base + Duration::from_nanos(*at))
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<TimerTarget> {
        self.settle();
        let &(at, _, key) = self.current.front()?;
        if at > self.ns(now) {
            return None;
        }
        self.current.pop_front();
        self.slots.try_remove(key as usize).map(|s| s.target)
    }

    /// Live entries.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Empties the queue (context teardown).
    pub(crate) fn take_all(&mut self) -> Vec<TimerTarget> {
        self.current.clear();
        self.buckets.clear();
        self.current_bucket = None;
        self.dead = 0;
        self.slots.drain().map(|s| s.target).collect()
    }
}

struct TimerObj {
    exec: Executor,
    expiry: Cell<Instant>,
    /// The waits started on this timer, oldest first (entries that completed
    /// are pruned lazily).
    waits: RefCell<SmallVec<[Weak<dyn Completion>; 1]>>,
}

impl TimerObj {
    /// Cancels pending waits, oldest first, at most `limit` of them.
    fn cancel_waits(&self, limit: usize) -> usize {
        if self.waits.borrow().is_empty() {
            return 0;
        }
        let Some(inner) = self.exec.upgrade() else {
            return 0;
        };
        // Cancelling runs no handler, so no wait is added meanwhile: the
        // ones not reached go back as they were.
        let mut waits = std::mem::take(&mut *self.waits.borrow_mut()).into_iter();
        let mut n = 0;
        while n < limit {
            let Some(w) = waits.next() else { break };
            if let Some(op) = w.upgrade()
                && inner.cancel_op(op, CancellationType::ALL)
            {
                n += 1;
            }
        }
        *self.waits.borrow_mut() = waits.collect();
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
    /// A timer on `ex`'s context that has already expired (its expiry lies
    /// before the context's creation; a wait started before `expires_*`
    /// completes on the next turn of the loop, as with Asio's default expiry).
    pub fn new(ex: &Executor) -> SteadyTimer {
        let now = ex.upgrade().map_or_else(Instant::now, |i| i.timers.borrow().base());
        SteadyTimer {
            obj: Rc::new(TimerObj { exec: ex.clone(), expiry: Cell::new(now), waits: RefCell::new(SmallVec::new()) }),
        }
    }

    /// The current expiry.
    pub fn expiry(&self) -> Instant {
        self.obj.expiry.get()
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
        // Waits complete in start order, so the finished ones are in front.
        let finished = waits.iter().take_while(|w| w.upgrade().is_none_or(|o| o.core().is_done())).count();
        waits.drain(..finished);
        waits.push(Rc::downgrade(&op));
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
    fn queue_orders_by_deadline_then_sequence_and_removes_anywhere() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new(t0);
        let mut ops: Vec<(Instant, u64, usize, Rc<dyn Completion>)> = Vec::new();
        // Deadlines repeat so that the sequence decides ties; enough removals
        // to trigger a sweep of the dead items.
        for i in 0..5000u64 {
            let at = t0 + Duration::from_micros((i * 7919) % 50);
            let op: Rc<dyn Completion> = Rc::new(WaitOp::new(|_: Error| {}));
            let key = q.insert(at, TimerTarget::Wait(op.clone()));
            ops.push((at, i, key, op));
        }
        for (_, i, k, _) in ops.iter() {
            if i % 3 == 0 {
                assert!(q.remove(*k).is_some());
                assert!(q.remove(*k).is_none());
            }
        }
        assert_eq!(q.len(), ops.iter().filter(|o| o.1 % 3 != 0).count());
        let mut expect: Vec<_> = ops.iter().filter(|o| o.1 % 3 != 0).map(|o| (o.0, o.1)).collect();
        expect.sort();
        let mut got = Vec::new();
        while let Some(at) = q.next_deadline() {
            let Some(TimerTarget::Wait(op)) = q.pop_due(at) else { panic!("nothing due at the next deadline") };
            let (at, i, _, _) = ops.iter().find(|o| Rc::ptr_eq(&o.3, &op)).unwrap();
            got.push((*at, *i));
        }
        assert_eq!(got, expect);
        assert_eq!(q.len(), 0);
        assert!(q.current.is_empty() && q.buckets.is_empty());
    }

    #[test]
    fn a_reused_slot_does_not_revive_a_removed_item() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new(t0);
        let a = q.insert(
            t0 + Duration::from_millis(1),
            TimerTarget::CancelAfter(Weak::<WaitOp<fn(Error)>>::new(), CancellationType::ALL),
        );
        q.remove(a);
        let b = q.insert(
            t0 + Duration::from_millis(5),
            TimerTarget::CancelAfter(Weak::<WaitOp<fn(Error)>>::new(), CancellationType::ALL),
        );
        assert_eq!(a, b, "the slab reuses the slot");
        // The old item (1 ms) must not fire the new entry early.
        assert!(q.pop_due(t0 + Duration::from_millis(2)).is_none());
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(5)));
        assert!(q.pop_due(t0 + Duration::from_millis(5)).is_some());
    }
}
