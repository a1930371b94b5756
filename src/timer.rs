//! The context's timer queue (bucketed deadlines: insertion O(1) within
//! about 4 s of the earliest bucket, O(log b) for b buckets beyond, O(k) into
//! the k items of the current bucket; O(1) removal; equal deadlines in the
//! order set). `SteadyTimer` is in `steady_timer.rs`.
//!
//! A timer wait is not an operation object: its handler sits in its slot of
//! the queue until the wait ends and then moves straight into the ready queue,
//! so a wait costs no allocation and a million pending timers stay compact.

pub(crate) use crate::op::TimerKey;
use crate::op::{CancellationType, Completion};
use crate::sys::{self, WaitHandler};
use slab::Slab;
use std::collections::{BTreeMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Rounds count within 31 bits, so that a key packs below 2^63 ([`Waits`]).
const ROUND_MASK: u32 = u32::MAX >> 1;

/// The round of a retired slot: one whose 2^31 rounds are used up. No key
/// has it, and the slot is never reused, so that no key given out can come
/// back to life (one slot is lost per 2^31 entries).
const RETIRED: u32 = u32::MAX;

/// True while the entry of `key` is queued: a slot's round moves on when its
/// entry ends, and a free slot's round has never been given out.
fn live(rounds: &[u32], key: TimerKey) -> bool {
    rounds.get(key.idx as usize) == Some(&key.round)
}

/// Where every timer counts time from: a day before the process first used
/// a timer, so that deadlines set in the recent past keep their order too.
/// One base for all contexts lets a timer keep its expiry in one word.
pub(crate) fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now)
    })
}

/// `at` in nanoseconds since `base` (0 for anything earlier).
pub(crate) fn ns_since(base: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(base).as_nanos().min(u64::MAX as u128) as u64
}

/// The operation a `cancel_after` entry watches.
pub(crate) enum Watched {
    /// A socket operation.
    Op(Weak<dyn Completion>),
    /// A timer wait.
    Wait(TimerKey),
}

/// Something of the loop's own that asked to be called back at a deadline
/// (a socket retrying sends that no readiness event will announce). It
/// holds no user handler: dropping the entry runs no user code.
pub(crate) trait Wake {
    /// The deadline passed.
    fn wake(self: Rc<Self>);
}

/// What a timer entry does when its deadline passes.
pub(crate) enum TimerTarget {
    /// A pending timer wait: its handler gets `Error::NONE`.
    Wait(WaitHandler),
    /// Cancel this operation if it is still pending (`Operation::cancel_after`).
    CancelAfter(Watched, CancellationType),
    /// Call this back, if it still exists.
    Wake(Weak<dyn Wake>),
}

/// What a free slot holds: a target that does nothing and owns nothing.
const VACANT: TimerTarget =
    TimerTarget::CancelAfter(Watched::Wait(TimerKey { idx: u32::MAX, round: 0 }), CancellationType::NONE);

/// A queued deadline: nanoseconds since the queue's base instant, and the
/// entry. Items of equal deadline keep the order in which they were queued
/// (every step below is stable), which is the order they were set.
type Item = (u64, TimerKey);

/// How many items ahead of the one firing the queue prefetches.
const PREFETCH_AHEAD: usize = 32;

/// Deadlines fall into buckets of 2^20 ns (about 1 ms).
const BUCKET_SHIFT: u32 = 20;

/// Radix sort digits: two passes cover the bits below `BUCKET_SHIFT`.
const RADIX_BITS: u32 = 10;
const RADIX: usize = 1 << RADIX_BITS;
const _: () = assert!(2 * RADIX_BITS == BUCKET_SHIFT);

/// How many consecutive buckets (about 4.4 s) [`Buckets`] indexes directly.
const NEAR_SPAN: u64 = 4096;

/// Unsorted items by bucket: a window of consecutive buckets indexed directly
/// (queueing an item is a push, without a search), and a B-tree for buckets
/// outside the window.
///
/// The window restarts at the next bucket pushed whenever it runs empty, so
/// `near_start` may move back, and a bucket may then have items in both
/// places: those in the B-tree were queued first. Popping a bucket merges
/// the two parts in that order.
#[derive(Default)]
struct Buckets {
    /// `near[i]` holds bucket `near_start + i`.
    near: VecDeque<Vec<Item>>,
    near_start: u64,
    far: BTreeMap<u64, Vec<Item>>,
}

impl Buckets {
    fn push(&mut self, bucket: u64, item: Item) {
        if self.near.is_empty() {
            // The window starts wherever the first item falls.
            self.near_start = bucket;
        }
        match bucket.checked_sub(self.near_start) {
            Some(i) if i < NEAR_SPAN => {
                let i = i as usize;
                if i >= self.near.len() {
                    self.near.resize_with(i + 1, Vec::new);
                }
                self.near[i].push(item);
            }
            _ => self.far.entry(bucket).or_default().push(item),
        }
    }

    /// Removes and returns the earliest non-empty bucket.
    fn pop_first(&mut self) -> Option<(u64, Vec<Item>)> {
        while self.near.front().is_some_and(Vec::is_empty) {
            self.near.pop_front();
            self.near_start += 1;
        }
        let far_first = self.far.first_key_value().map(|(b, _)| *b);
        if self.near.is_empty() || far_first.is_some_and(|f| f < self.near_start) {
            return self.far.pop_first();
        }
        let mut items = self.near.pop_front()?;
        let bucket = self.near_start;
        self.near_start += 1;
        if far_first == Some(bucket) {
            // The bucket went to the B-tree before the window, restarted when
            // it ran empty, came to cover it: those items were set first.
            let (_, mut older) = self.far.pop_first().expect("the first far bucket");
            older.append(&mut items);
            items = older;
        }
        Some((bucket, items))
    }

    fn retain(&mut self, live: impl Fn(&Item) -> bool) {
        for v in &mut self.near {
            v.retain(&live);
        }
        self.far.retain(|_, v| {
            v.retain(&live);
            !v.is_empty()
        });
    }

    fn clear(&mut self) {
        self.near.clear();
        self.far.clear();
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.near.iter().all(Vec::is_empty) && self.far.is_empty()
    }
}

/// Deadlines ordered by (time, order set).
///
/// Items go unsorted into ~1 ms buckets (insertion is a push); the earliest
/// bucket is sorted once (stably), when it becomes current, and then fires
/// from the front. Removal is O(1): the slot is freed
/// and its item becomes dead, skipped when reached, and all dead items are
/// swept out when they outnumber the live ones (amortised O(1), and it bounds
/// the memory they hold). Items are 16 bytes and a slot holds the handler
/// itself, so a million pending timers are touched in cache-sized groups
/// instead of along a heap path of twenty cache misses.
pub(crate) struct TimerQueue {
    base: Instant,
    /// The earliest items, sorted; their buckets are <= `current_bucket`.
    current: VecDeque<Item>,
    current_bucket: Option<u64>,
    /// Later items by bucket, unsorted; every bucket is > `current_bucket`.
    buckets: Buckets,
    /// Each slot's round: it moves on when the slot's entry ends, so a key is
    /// live exactly while its round is its slot's. Kept apart from the
    /// targets so that the liveness checks of a large queue touch 4 bytes
    /// an entry.
    rounds: Vec<u32>,
    /// Each slot's entry ([`VACANT`] while the slot is free: liveness is
    /// told by the rounds, so no `Option` is needed, which keeps a slot at
    /// 32 bytes).
    targets: Vec<TimerTarget>,
    /// The `cancel_after` entry watching a pending wait, by the wait's key
    /// (rare, so kept out of the slots to keep them small).
    watchers: BTreeMap<u64, TimerKey>,
    /// The wait lists of timers with more than one pending wait ([`Waits`]).
    groups: Slab<Vec<TimerKey>>,
    /// The radix sort's second buffer, kept between sorts.
    scratch: Vec<Item>,
    /// Free slots, reused last-freed first.
    free: Vec<u32>,
    live: usize,
    /// Items still queued whose entry has been removed.
    dead: usize,
}

impl TimerQueue {
    pub(crate) fn new(base: Instant) -> TimerQueue {
        TimerQueue {
            base,
            current: VecDeque::new(),
            current_bucket: None,
            buckets: Buckets::default(),
            rounds: Vec::new(),
            targets: Vec::new(),
            watchers: BTreeMap::new(),
            groups: Slab::new(),
            scratch: Vec::new(),
            free: Vec::new(),
            live: 0,
            dead: 0,
        }
    }

    /// The instant deadlines are counted from (before the context's creation).
    pub(crate) fn base(&self) -> Instant {
        self.base
    }

    /// `at` in nanoseconds since the base.
    pub(crate) fn ns(&self, at: Instant) -> u64 {
        ns_since(self.base, at)
    }

    pub(crate) fn insert(&mut self, at: Instant, target: TimerTarget) -> TimerKey {
        self.insert_ns(self.ns(at), target)
    }

    /// Queues `target` for `at_ns` nanoseconds after the base.
    pub(crate) fn insert_ns(&mut self, at_ns: u64, target: TimerTarget) -> TimerKey {
        let key = match self.free.pop() {
            Some(idx) => {
                self.targets[idx as usize] = target;
                TimerKey { idx, round: self.rounds[idx as usize] }
            }
            None => {
                let idx = u32::try_from(self.rounds.len())
                    .ok()
                    .filter(|&i| i < u32::MAX)
                    .expect("more than 2^32 - 1 pending timer entries");
                self.rounds.push(0);
                self.targets.push(target);
                TimerKey { idx, round: 0 }
            }
        };
        self.live += 1;
        let item = (at_ns, key);
        let bucket = item.0 >> BUCKET_SHIFT;
        match self.current_bucket {
            Some(cb) if bucket <= cb => {
                // After every item of the same deadline: those were set earlier.
                let pos = self.current.partition_point(|x| x.0 <= item.0);
                self.current.insert(pos, item);
            }
            _ => self.buckets.push(bucket, item),
        }
        key
    }

    /// True while the entry is queued. (A free slot's round has never been
    /// given out: it moves on when the entry ends.)
    pub(crate) fn is_live(&self, key: TimerKey) -> bool {
        live(&self.rounds, key)
    }

    /// The entry's target, while the entry is queued.
    fn target_mut(&mut self, key: TimerKey) -> Option<&mut TimerTarget> {
        if !self.is_live(key) {
            return None;
        }
        Some(&mut self.targets[key.idx as usize])
    }

    /// Frees the entry's slot and returns its target; `None` when it is
    /// already gone.
    fn free_slot(&mut self, key: TimerKey) -> Option<TimerTarget> {
        if !self.is_live(key) {
            return None;
        }
        let target = std::mem::replace(&mut self.targets[key.idx as usize], VACANT);
        self.end_round(key.idx);
        self.live -= 1;
        Some(target)
    }

    /// Moves the slot's round on and frees the slot, or retires it when its
    /// rounds are used up.
    fn end_round(&mut self, idx: u32) {
        let next = (self.rounds[idx as usize] + 1) & ROUND_MASK;
        if next == 0 {
            self.rounds[idx as usize] = RETIRED;
        } else {
            self.rounds[idx as usize] = next;
            self.free.push(idx);
        }
    }

    /// Removes an entry before its deadline; `None` when it is already gone.
    pub(crate) fn remove(&mut self, key: TimerKey) -> Option<TimerTarget> {
        let target = self.free_slot(key)?;
        self.dead += 1;
        if self.dead > 1024 && self.dead > self.live {
            self.sweep();
        }
        Some(target)
    }

    /// Removes a pending timer wait; returns its handler and the entry of the
    /// `cancel_after` watching it. `None` when `key` is not a pending wait.
    pub(crate) fn remove_wait(&mut self, key: TimerKey) -> Option<(WaitHandler, Option<TimerKey>)> {
        if !matches!(self.target_mut(key)?, TimerTarget::Wait(_)) {
            return None;
        }
        match self.remove(key).expect("a live entry") {
            TimerTarget::Wait(handler) => Some((handler, self.take_watcher(key))),
            TimerTarget::CancelAfter(..) | TimerTarget::Wake(_) => unreachable!("checked to be a wait"),
        }
    }

    /// Removes and returns the `cancel_after` entry's key watching the wait `key`.
    fn take_watcher(&mut self, key: TimerKey) -> Option<TimerKey> {
        if self.watchers.is_empty() {
            return None;
        }
        self.watchers.remove(&key.as_u64())
    }

    /// Makes `cancel` the `cancel_after` entry of a pending wait; returns the
    /// one it replaces. `None` when `key` is not a pending wait.
    pub(crate) fn set_wait_cancel(&mut self, key: TimerKey, cancel: TimerKey) -> Option<Option<TimerKey>> {
        match self.target_mut(key)? {
            TimerTarget::Wait(_) => Some(self.watchers.insert(key.as_u64(), cancel)),
            _ => None,
        }
    }

    /// Drops every dead item.
    fn sweep(&mut self) {
        let rounds = &self.rounds;
        let live = |&(_, key): &Item| live(rounds, key);
        self.current.retain(live);
        self.buckets.retain(live);
        self.dead = 0;
    }

    /// Drops a bucket's dead items and sorts the rest by deadline, stably
    /// (the items were queued in the order set). All of them share the bits
    /// above `BUCKET_SHIFT`, so an LSD radix sort of two 10-bit passes does it
    /// in linear time.
    fn sort_bucket(&mut self, mut items: Vec<Item>) -> Vec<Item> {
        let before = items.len();
        let rounds = &self.rounds;
        items.retain(|&(_, key)| live(rounds, key));
        self.dead -= before - items.len();
        if items.len() <= 64 {
            items.sort_by_key(|i| i.0);
            return items;
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        out.resize(items.len(), (0, TimerKey { idx: 0, round: 0 }));
        for shift in [0, RADIX_BITS] {
            let digit = |at: u64| (at >> shift) as usize & (RADIX - 1);
            let mut next = [0usize; RADIX];
            for it in &items {
                next[digit(it.0)] += 1;
            }
            let mut sum = 0;
            for n in next.iter_mut() {
                (*n, sum) = (sum, sum + *n);
            }
            for it in &items {
                let d = digit(it.0);
                out[next[d]] = *it;
                next[d] += 1;
            }
            std::mem::swap(&mut items, &mut out);
        }
        self.scratch = out;
        items
    }

    /// Makes `current` start with the earliest live item, if there is one.
    fn settle(&mut self) {
        loop {
            while let Some(&(_, key)) = self.current.front() {
                if self.is_live(key) {
                    return;
                }
                self.current.pop_front();
                self.dead -= 1;
            }
            let Some((bucket, items)) = self.buckets.pop_first() else { return };
            let items = self.sort_bucket(items);
            self.current = VecDeque::from(items);
            self.current_bucket = Some(bucket);
        }
    }

    #[inline]
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        if self.live == 0 && self.dead == 0 {
            return None; // the common case of a loop without timers, inline
        }
        self.next_deadline_slow()
    }

    #[inline(never)]
    fn next_deadline_slow(&mut self) -> Option<Instant> {
        if self.live == 0 {
            if self.dead > 0 {
                // Only dead items left: drop them all at once.
                self.current.clear();
                self.buckets.clear();
                self.dead = 0;
            }
            return None;
        }
        self.settle();
        self.current.front().map(|(at, _)| self.base + Duration::from_nanos(*at))
    }

    /// Removes and returns the earliest entry if it is due at `now_ns` (see
    /// [`ns`](Self::ns)); for a wait, with the `cancel_after` entry watching it.
    pub(crate) fn pop_due(&mut self, now_ns: u64) -> Option<(TimerTarget, Option<TimerKey>)> {
        self.settle();
        let &(at, key) = self.current.front()?;
        if at > now_ns {
            return None;
        }
        self.current.pop_front();
        // Start loading the entry fired a few pops from now. (Its round was
        // read when the bucket was sorted, so that is in cache already.)
        if let Some(&(_, ahead)) = self.current.get(PREFETCH_AHEAD) {
            sys::prefetch(&self.targets[ahead.idx as usize]);
        }
        let target = self.free_slot(key).expect("settle leaves a live item in front");
        let watcher = match &target {
            TimerTarget::Wait(_) => self.take_watcher(key),
            TimerTarget::CancelAfter(Watched::Wait(wait), _) => {
                // This entry no longer watches the wait (it may not have
                // cancelled it: `CancellationType::NONE`).
                if self.watchers.get(&wait.as_u64()) == Some(&key) {
                    self.watchers.remove(&wait.as_u64());
                }
                None
            }
            TimerTarget::CancelAfter(Watched::Op(_), _) | TimerTarget::Wake(_) => None,
        };
        Some((target, watcher))
    }

    /// Live entries.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Empties the queue (context teardown). The round of every slot in use
    /// moves on, so no key given out so far matches anything afterwards.
    pub(crate) fn take_all(&mut self) -> Vec<TimerTarget> {
        self.current.clear();
        self.buckets.clear();
        self.current_bucket = None;
        self.dead = 0;
        self.live = 0;
        self.watchers.clear();
        let mut vacant = vec![false; self.targets.len()];
        for &idx in &self.free {
            vacant[idx as usize] = true;
        }
        let mut out = Vec::new();
        for (idx, vacant) in vacant.into_iter().enumerate() {
            if !vacant && self.rounds[idx] != RETIRED {
                out.push(std::mem::replace(&mut self.targets[idx], VACANT));
                self.end_round(idx as u32);
            }
        }
        out
    }
}

/// The waits started on one timer, oldest first (entries that ended are
/// pruned lazily), packed in one word so that a timer fits a 48-byte
/// allocation: 0 is none, a key + 1 is one wait (the common case), and
/// `GROUP | g` several, listed in the queue's group `g`.
#[derive(Clone, Copy, Default)]
pub(crate) struct Waits(u64);

const GROUP: u64 = 1 << 63;

pub(crate) enum WaitsView {
    None,
    One(TimerKey),
    Group(usize),
}

impl Waits {
    pub(crate) const NONE: Waits = Waits(0);

    fn one(key: TimerKey) -> Waits {
        Waits(key.as_u64() + 1)
    }

    pub(crate) fn view(self) -> WaitsView {
        match self.0 {
            0 => WaitsView::None,
            v if v & GROUP != 0 => WaitsView::Group((v & !GROUP) as usize),
            v => WaitsView::One(TimerKey::from_u64(v - 1)),
        }
    }
}

impl TimerQueue {
    /// `waits` with `key` added and the waits that ended pruned.
    pub(crate) fn add_wait(&mut self, waits: Waits, key: TimerKey) -> Waits {
        match waits.view() {
            WaitsView::None => Waits::one(key),
            WaitsView::One(k) if !self.is_live(k) => Waits::one(key),
            WaitsView::One(k) => Waits(GROUP | self.groups.insert(vec![k, key]) as u64),
            WaitsView::Group(g) => {
                let rounds = &self.rounds;
                let list = &mut self.groups[g];
                list.retain(|&k| live(rounds, k));
                list.push(key);
                waits
            }
        }
    }

    /// Takes the keys out of `waits` (its group, if any, is freed).
    pub(crate) fn take_waits(&mut self, waits: Waits) -> Vec<TimerKey> {
        match waits.view() {
            WaitsView::None => Vec::new(),
            WaitsView::One(k) => vec![k],
            WaitsView::Group(g) => self.groups.remove(g),
        }
    }

    /// Packs `keys` (in a group when there are several).
    pub(crate) fn store_waits(&mut self, keys: Vec<TimerKey>) -> Waits {
        match keys.len() {
            0 => Waits::NONE,
            1 => Waits::one(keys[0]),
            _ => Waits(GROUP | self.groups.insert(keys) as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::sys::HandlerQueue;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A wait entry whose handler records `id` when it runs.
    fn wait(log: &Rc<RefCell<Vec<u64>>>, id: u64) -> TimerTarget {
        let log = log.clone();
        TimerTarget::Wait(WaitHandler::new(move |_: Error| log.borrow_mut().push(id)))
    }

    fn run((target, _): (TimerTarget, Option<TimerKey>)) {
        let TimerTarget::Wait(handler) = target else { panic!("not a wait") };
        let q = HandlerQueue::new();
        handler.post(&q, Error::NONE);
        assert!(q.run_next());
    }

    /// Fires everything queued, in order.
    fn drain(q: &mut TimerQueue) {
        while let Some(d) = q.next_deadline() {
            run(q.pop_due(q.ns(d)).expect("nothing due at the next deadline"));
        }
    }

    #[test]
    fn queue_orders_by_deadline_then_order_set_and_removes_anywhere() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new(t0);
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut keys = Vec::new();
        // Deadlines repeat so that the order set decides ties; enough removals
        // to trigger a sweep of the dead items.
        for i in 0..5000u64 {
            let at = t0 + Duration::from_micros((i * 7919) % 50);
            keys.push((at, i, q.insert(at, wait(&log, i))));
        }
        for &(_, i, k) in &keys {
            if i % 3 == 0 {
                assert!(q.remove(k).is_some());
                assert!(q.remove(k).is_none());
                assert!(!q.is_live(k));
            }
        }
        assert_eq!(q.len(), keys.iter().filter(|o| o.1 % 3 != 0).count());
        let mut expect: Vec<_> = keys.iter().filter(|o| o.1 % 3 != 0).map(|o| (o.0, o.1)).collect();
        expect.sort();
        while let Some(at) = q.next_deadline() {
            let target = q.pop_due(q.ns(at)).expect("nothing due at the next deadline");
            run(target);
        }
        let got: Vec<_> = log.borrow().iter().map(|&i| (keys[i as usize].0, i)).collect();
        assert_eq!(got, expect);
        assert_eq!(q.len(), 0);
        assert!(q.current.is_empty() && q.buckets.is_empty());
    }

    #[test]
    fn entries_set_into_the_current_bucket_keep_deadline_then_order_set() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new(t0);
        let log = Rc::new(RefCell::new(Vec::new()));
        let at = |us| t0 + Duration::from_micros(us);
        q.insert(at(100), wait(&log, 0));
        q.insert(at(300), wait(&log, 1));
        // Makes the first bucket current; later entries go into it sorted.
        assert_eq!(q.next_deadline(), Some(at(100)));
        q.insert(at(300), wait(&log, 2));
        q.insert(at(200), wait(&log, 3));
        q.insert(at(100), wait(&log, 4));
        drain(&mut q);
        assert_eq!(*log.borrow(), vec![0, 4, 3, 1, 2]);
    }

    #[test]
    fn deadlines_inside_and_outside_the_direct_window_fire_in_order() {
        // The window starts at the first deadline queued (10 s); earlier and
        // much later deadlines go to the B-tree and must still interleave.
        let t0 = Instant::now();
        let mut q = TimerQueue::new(t0);
        let log = Rc::new(RefCell::new(Vec::new()));
        let offsets_ms = [10_000u64, 1, 5_000, 12_000, 30_000, 2, 10_000, 14_900, 9_999, 3];
        for (i, &off) in offsets_ms.iter().enumerate() {
            q.insert(t0 + Duration::from_millis(off), wait(&log, i as u64));
        }
        drain(&mut q);
        let mut expect: Vec<u64> = (0..offsets_ms.len() as u64).collect();
        expect.sort_by_key(|&i| offsets_ms[i as usize]);
        assert_eq!(*log.borrow(), expect);
        assert!(q.buckets.is_empty());
    }

    #[test]
    fn a_reused_slot_does_not_revive_a_removed_item() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new(t0);
        let log = Rc::new(RefCell::new(Vec::new()));
        let a = q.insert(t0 + Duration::from_millis(1), wait(&log, 1));
        q.remove(a);
        let b = q.insert(t0 + Duration::from_millis(5), wait(&log, 5));
        assert_eq!(a.idx, b.idx, "the slot is reused");
        assert!(!q.is_live(a) && q.is_live(b));
        assert!(q.remove(a).is_none(), "the old key does not reach the new entry");
        // The old item (1 ms) must not fire the new entry early.
        assert!(q.pop_due(q.ns(t0 + Duration::from_millis(2))).is_none());
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(5)));
        run(q.pop_due(q.ns(t0 + Duration::from_millis(5))).unwrap());
        assert_eq!(*log.borrow(), vec![5]);
    }

    #[test]
    fn take_all_ends_every_key_given_out() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new(t0);
        let log = Rc::new(RefCell::new(Vec::new()));
        let a = q.insert(t0, wait(&log, 1));
        assert_eq!(q.take_all().len(), 1);
        let b = q.insert(t0, wait(&log, 2));
        assert_eq!(a.idx, b.idx);
        assert!(q.remove_wait(a).is_none());
        assert!(q.remove_wait(b).is_some());
    }

    #[test]
    fn a_bucket_queued_far_and_later_near_keeps_deadline_then_order_set() {
        // The window starts at P's bucket; F (5 s later) goes to the B-tree.
        // Once P's bucket is current the window is empty and restarts at the
        // next bucket pushed, here F's own: G (same deadline, set after F)
        // lands in the window while F is still in the B-tree.
        let t0 = Instant::now();
        let mut q = TimerQueue::new(t0);
        let log = Rc::new(RefCell::new(Vec::new()));
        let at = |ms| t0 + Duration::from_millis(ms);
        q.insert(at(1), wait(&log, 0)); // P
        q.insert(at(5_001), wait(&log, 1)); // F
        assert_eq!(q.next_deadline(), Some(at(1))); // P's bucket becomes current
        q.insert(at(5_001), wait(&log, 2)); // G: same deadline as F, set later
        drain(&mut q);
        assert_eq!(*log.borrow(), vec![0, 1, 2]);
    }

    #[test]
    fn a_bucket_queued_far_and_later_near_keeps_deadline_order() {
        // As above, but G (set later) is also later than F within the same ~1 ms bucket.
        let t0 = Instant::now();
        let mut q = TimerQueue::new(t0);
        let log = Rc::new(RefCell::new(Vec::new()));
        let bucket_start = |ms: u64| {
            let ns = (ms * 1_000_000) >> BUCKET_SHIFT << BUCKET_SHIFT;
            t0 + Duration::from_nanos(ns)
        };
        let b = bucket_start(6_000);
        q.insert(t0 + Duration::from_millis(1), wait(&log, 0));
        q.insert(b + Duration::from_micros(100), wait(&log, 1)); // F, early in the bucket
        q.next_deadline();
        q.insert(b + Duration::from_micros(900), wait(&log, 2)); // G, later in the same bucket
        drain(&mut q);
        assert_eq!(*log.borrow(), vec![0, 1, 2]);
    }
}

#[cfg(test)]
mod round_tests {
    use super::*;
    use crate::error::Error;
    use crate::{IoContext, SteadyTimer};

    #[test]
    fn a_stale_key_does_not_reach_another_timers_wait_after_the_round_wraps() {
        let ctx = IoContext::new().unwrap();
        let idle = SteadyTimer::new(&ctx);
        let old_op = idle.async_wait(|_| {}); // already expired
        assert_eq!(ctx.run(), 1);
        ctx.restart();
        // `idle` keeps the key of its completed wait (round 0 of its slot).
        // With a last-freed-first free list, one busy timer reuses that slot
        // for each of its waits: fast-forward to its last 31-bit round.
        let inner = ctx.executor().upgrade().unwrap();
        let WaitsView::One(k) = idle.waits_view() else { panic!("one wait recorded") };
        assert_eq!(k.round, 0);
        inner.timers.borrow_mut().rounds[k.idx as usize] = ROUND_MASK;
        let busy = SteadyTimer::new(&ctx);
        busy.async_wait(|_| {}); // takes the slot's last round
        assert_eq!(ctx.run(), 1);
        ctx.restart();
        busy.expires_after(Duration::from_secs(60));
        let busy_op = busy.async_wait(|e| assert_eq!(e, Error::OPERATION_ABORTED));
        assert!(!old_op.is_pending(), "an old Operation reports another timer's wait as its own");
        assert_eq!(idle.cancel(), 0, "an idle timer cancelled another timer's wait");
        assert!(busy_op.is_pending());
        assert_eq!(busy.cancel(), 1);
        assert_eq!(ctx.run(), 1);
    }
}

#[cfg(test)]
mod internal_tests {
    use super::*;
    use crate::{CancellationType, IoContext, SteadyTimer};
    use std::rc::Rc;

    fn inner(ctx: &IoContext) -> Rc<crate::context::Inner> {
        ctx.executor().upgrade().unwrap()
    }

    /// Items still queued anywhere (live and dead).
    fn queued(q: &TimerQueue) -> usize {
        q.current.len()
            + q.buckets.near.iter().map(Vec::len).sum::<usize>()
            + q.buckets.far.values().map(Vec::len).sum::<usize>()
    }

    #[test]
    fn cancel_after_entries_leave_the_queue_with_their_wait() {
        let ctx = IoContext::new().unwrap();
        let t = SteadyTimer::new(&ctx);
        // Fired, cancelled through the timer, cancelled through the operation.
        t.async_wait(|_| {}).cancel_after(Duration::from_secs(60), CancellationType::ALL);
        assert_eq!(ctx.run(), 1);
        ctx.restart();
        t.expires_after(Duration::from_secs(60));
        t.async_wait(|_| {}).cancel_after(Duration::from_secs(60), CancellationType::ALL);
        assert_eq!(t.cancel(), 1);
        let op = t.async_wait(|_| {});
        op.cancel_after(Duration::from_secs(60), CancellationType::ALL);
        assert!(op.cancel(CancellationType::ALL));
        // A cancel_after on a wait that has ended queues nothing.
        op.cancel_after(Duration::from_secs(60), CancellationType::ALL);
        assert_eq!(ctx.run(), 2);
        let i = inner(&ctx);
        let q = i.timers.borrow();
        assert_eq!(q.len(), 0, "a cancel_after entry outlived its wait");
        assert!(q.watchers.is_empty(), "a watcher outlived its wait");
    }

    #[test]
    fn a_timers_wait_list_drops_the_waits_that_ended() {
        let ctx = IoContext::new().unwrap();
        let t = SteadyTimer::new(&ctx);
        // One wait at a time: no group is ever needed.
        for _ in 0..3 {
            t.async_wait(|_| {});
            assert!(matches!(t.waits_view(), WaitsView::One(_)));
            assert_eq!(ctx.run(), 1);
            ctx.restart();
        }
        assert_eq!(inner(&ctx).timers.borrow().groups.len(), 0);
        // Two at a time, many times: the group holds the pending ones only.
        for _ in 0..100 {
            t.async_wait(|_| {});
            t.async_wait(|_| {});
            assert_eq!(ctx.run(), 2);
            ctx.restart();
        }
        t.async_wait(|_| {});
        let WaitsView::Group(g) = t.waits_view() else { panic!("no group") };
        let i = inner(&ctx);
        assert_eq!(i.timers.borrow().groups.len(), 1);
        assert_eq!(i.timers.borrow().groups[g].len(), 1, "ended waits kept in the timer's list");
    }

    #[test]
    fn dead_items_are_swept_and_dropped_when_their_bucket_becomes_current() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new(t0);
        let keys: Vec<TimerKey> = (0..5000u64).map(|i| q.insert(t0 + Duration::from_micros(i * 3), VACANT)).collect();
        for k in &keys[..4000] {
            q.remove(*k);
        }
        assert_eq!(q.len(), 1000);
        assert!(queued(&q) <= 2 * q.len() + 1024, "{} items queued for {} live", queued(&q), q.len());
        // Few removals (no sweep): the bucket's dead items go when it becomes current.
        let mut q = TimerQueue::new(t0);
        let keys: Vec<TimerKey> = (0..100u64).map(|i| q.insert(t0 + Duration::from_micros(i), VACANT)).collect();
        for k in keys.iter().step_by(2) {
            q.remove(*k);
        }
        q.next_deadline();
        assert_eq!((q.current.len(), q.dead), (50, 0));
        // Nothing live: everything queued goes at once.
        for k in keys.iter().skip(1).step_by(2) {
            q.remove(*k);
        }
        let far = q.insert(t0 + Duration::from_secs(100), VACANT);
        q.remove(far);
        assert_eq!(q.next_deadline(), None);
        assert_eq!((queued(&q), q.dead), (0, 0));
    }

    #[test]
    fn deadlines_within_the_window_are_indexed_directly() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new(t0);
        for s in [10u64, 11, 14] {
            q.insert(t0 + Duration::from_secs(s), VACANT);
        }
        assert!(q.buckets.far.is_empty(), "a deadline within ~4 s of the first went to the B-tree");
        q.insert(t0 + Duration::from_secs(20), VACANT);
        assert_eq!(q.buckets.far.len(), 1);
        // Once the window has run empty it restarts at the next deadline.
        while let Some(d) = q.next_deadline() {
            q.pop_due(q.ns(d)).unwrap();
        }
        for s in [100u64, 101, 103] {
            q.insert(t0 + Duration::from_secs(s), VACANT);
        }
        assert!(q.buckets.far.is_empty(), "the window did not restart");
    }

    #[test]
    fn keys_of_the_last_round_pack_below_the_group_bit() {
        let ctx = IoContext::new().unwrap();
        let t = SteadyTimer::new(&ctx);
        let i = inner(&ctx);
        // Slots 0 and 1 start at their last round.
        i.timers.borrow_mut().rounds.extend([ROUND_MASK, ROUND_MASK]);
        i.timers.borrow_mut().targets.extend([VACANT, VACANT]);
        i.timers.borrow_mut().free.extend([1, 0]);
        t.expires_after(Duration::from_secs(60));
        t.async_wait(|_| {});
        assert!(matches!(t.waits_view(), WaitsView::One(k) if k.round == ROUND_MASK));
        t.async_wait(|_| {});
        assert_eq!(t.cancel(), 2);
        assert_eq!(ctx.run(), 2);
        ctx.restart();
        // Their rounds are used up: new waits get keys that were never given out.
        t.async_wait(|_| {});
        assert!(matches!(t.waits_view(), WaitsView::One(k) if k.idx >= 2), "a used-up slot was reused");
        assert_eq!(t.cancel(), 1);
        assert_eq!(ctx.run(), 1);
    }
}
