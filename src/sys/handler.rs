//! Handlers stored inline: a type-erased `FnOnce()` of up to three words (a
//! handler that captures a couple of pointers and a result) lives directly in
//! a slot of the ready ring, larger ones are boxed. Posting a small handler
//! allocates nothing, and a handler is written into its slot and read out of
//! it once, with no copies in between.
//!
//! No crate offers a by-value `dyn FnOnce()` with inline storage on stable
//! Rust (smallbox needs an `unsafe` macro at each use and calls only
//! `FnMut`), hence the `unsafe` here.

use crate::error::Error;
use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::mem::{MaybeUninit, align_of, size_of};

type Storage = [usize; 3];

/// Runs (`true`) or drops (`false`) the closure held in a slot's storage.
type Shim = unsafe fn(*mut Storage, bool);

/// One slot of the ring: a shim and the closure (or a pointer to its box).
struct Slot {
    shim: Shim,
    data: MaybeUninit<Storage>,
}

/// # Safety
/// `data` must hold a valid `F` written by `Slot::write`, not yet taken.
unsafe fn inline_shim<F: FnOnce()>(data: *mut Storage, run: bool) {
    // SAFETY: guaranteed by the caller; after this read the storage is dead.
    let f = unsafe { data.cast::<F>().read() };
    if run {
        f()
    }
}

/// # Safety
/// `data` must hold a pointer from `Box::<F>::into_raw`, not yet taken.
unsafe fn boxed_shim<F: FnOnce()>(data: *mut Storage, run: bool) {
    // SAFETY: guaranteed by the caller: the pointer came from `Box::into_raw`.
    let f = unsafe { Box::from_raw(data.cast::<*mut F>().read()) };
    if run {
        f()
    }
}

impl Slot {
    /// Writes `f` into the uninitialised slot at `slot`.
    ///
    /// # Safety
    /// `slot` must be valid for writes and hold no live closure.
    #[inline(always)]
    unsafe fn write<F: FnOnce() + 'static>(slot: *mut Slot, f: F) {
        // SAFETY: the caller gives us a writable slot; `F` fits in the storage
        // by size and alignment where we store it inline (checked here), and
        // a pointer always fits.
        unsafe {
            let data = (&raw mut (*slot).data).cast::<Storage>();
            if size_of::<F>() <= size_of::<Storage>() && align_of::<F>() <= align_of::<Storage>() {
                data.cast::<F>().write(f);
                (&raw mut (*slot).shim).write(inline_shim::<F>);
            } else {
                data.cast::<*mut F>().write(Box::into_raw(Box::new(f)));
                (&raw mut (*slot).shim).write(boxed_shim::<F>);
            }
        }
    }
}

/// The ready queue's storage: a growable ring of handler slots, FIFO.
/// Not `Send`: the closures may hold `Rc`s.
struct Ring {
    slots: Vec<MaybeUninit<Slot>>,
    head: usize,
    len: usize,
    _not_send: PhantomData<*const ()>,
}

/// A handler taken off the ring: its slot is free again, but the closure is
/// still in the slot's memory until [`Taken::run`] or [`Taken::discard`]
/// moves it out. Nothing may touch the ring in between.
struct Taken {
    slot: *mut Slot,
}

impl Taken {
    /// Moves the closure out of its slot and runs it (`true`) or drops it.
    ///
    /// # Safety
    /// The ring must not have been pushed to or grown since `take`.
    #[inline(always)]
    unsafe fn run_or_drop(self, run: bool) {
        // SAFETY: the slot still holds the closure (the caller guarantees that
        // the ring did not reuse or move it); the shim moves it out before
        // running it, so the closure may push to the ring freely.
        unsafe { ((*self.slot).shim)((&raw mut (*self.slot).data).cast(), run) }
    }
}

impl Ring {
    fn with_capacity(cap: usize) -> Ring {
        let cap = cap.next_power_of_two().max(16);
        let mut slots = Vec::with_capacity(cap);
        slots.resize_with(cap, MaybeUninit::uninit);
        Ring { slots, head: 0, len: 0, _not_send: PhantomData }
    }

    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn push<F: FnOnce() + 'static>(&mut self, f: F) {
        if self.len == self.slots.len() {
            self.grow();
        }
        let idx = (self.head + self.len) & (self.slots.len() - 1);
        // SAFETY: `idx` is a free slot (outside head..head+len), inside the Vec.
        unsafe { Slot::write(self.slots[idx].as_mut_ptr(), f) };
        self.len += 1;
    }

    /// Takes the oldest handler off the ring.
    #[inline(always)]
    fn take(&mut self) -> Option<Taken> {
        if self.len == 0 {
            return None;
        }
        let slot = self.slots[self.head].as_mut_ptr();
        self.head = (self.head + 1) & (self.slots.len() - 1);
        self.len -= 1;
        Some(Taken { slot })
    }

    /// Doubles the ring (only called when full). Growing the Vec in place
    /// lets the allocator move large buffers without copying or faulting in
    /// pages; then the wrapped-around front part moves behind the rest.
    #[cold]
    fn grow(&mut self) {
        let old = self.slots.len();
        self.slots.reserve_exact(old);
        // SAFETY: the capacity is at least 2 * old, and `MaybeUninit` slots
        // need no initialisation.
        unsafe { self.slots.set_len(old * 2) };
        if self.head > 0 {
            let base = self.slots.as_mut_ptr();
            // SAFETY: the ring was full, so slots 0..head hold live closures;
            // they move to old..old + head, which is fresh and disjoint.
            unsafe { std::ptr::copy_nonoverlapping(base, base.add(old), self.head) };
        }
        // Live slots are now head..head + old, contiguous.
    }
}

/// The ready queue's handlers: a [`Ring`] behind a `RefCell`, with a safe
/// interface. The borrow is released before a handler runs (the handler may
/// post), and nothing can reach the ring between taking a handler off it and
/// moving the closure out of the slot, which is what makes that sound.
pub(crate) struct HandlerQueue {
    ring: RefCell<Ring>,
    /// The ring's length, readable without a borrow (the loop asks often).
    len: Cell<usize>,
}

impl HandlerQueue {
    pub(crate) fn new() -> HandlerQueue {
        HandlerQueue { ring: RefCell::new(Ring::with_capacity(64)), len: Cell::new(0) }
    }

    #[inline(always)]
    pub(crate) fn push<F: FnOnce() + 'static>(&self, f: F) {
        let mut ring = self.ring.borrow_mut();
        ring.push(f);
        self.len.set(ring.len());
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len.get()
    }

    /// Takes the oldest closure off the ring and runs it (`run`) or drops it;
    /// false when the queue is empty.
    #[inline(always)]
    fn next(&self, run: bool) -> bool {
        let taken = {
            let mut ring = self.ring.borrow_mut();
            let t = ring.take();
            self.len.set(ring.len());
            t
        };
        match taken {
            // SAFETY: the borrow above has ended and no code ran since `take`,
            // so the ring has not been pushed to or grown.
            Some(t) => unsafe { t.run_or_drop(run) },
            None => return false,
        }
        true
    }

    /// Runs the oldest handler; false when the queue is empty.
    #[inline(always)]
    pub(crate) fn run_next(&self) -> bool {
        self.next(true)
    }

    /// Drops every queued closure unrun, oldest first; closures dropped here
    /// may post new ones, which are dropped too.
    pub(crate) fn drop_all(&self) -> usize {
        let mut n = 0;
        while self.next(false) {
            n += 1;
        }
        n
    }
}

/// A pending `FnOnce(Error)` (a timer wait's handler) stored inline when it
/// is small, boxed otherwise. It is kept in the timer queue's slot until the
/// wait ends, then moved straight into the ready ring with its result, so a
/// timer wait needs no allocation of its own.
pub(crate) struct WaitHandler {
    /// Posts (`Some`) or drops (`None`) the closure held in `data`.
    shim: WaitShim,
    data: MaybeUninit<Storage>,
    _not_send: PhantomData<*const ()>,
}

type WaitShim = unsafe fn(*mut Storage, Option<(&HandlerQueue, Error)>);

/// # Safety
/// `data` must hold a valid `F` written by `WaitHandler::new`, not yet taken.
unsafe fn inline_wait_shim<F: FnOnce(Error) + 'static>(data: *mut Storage, post: Option<(&HandlerQueue, Error)>) {
    // SAFETY: guaranteed by the caller; after this read the storage is dead.
    let f = unsafe { data.cast::<F>().read() };
    if let Some((q, err)) = post {
        q.push(move || f(err));
    }
}

/// # Safety
/// `data` must hold a pointer from `Box::<F>::into_raw`, not yet taken.
unsafe fn boxed_wait_shim<F: FnOnce(Error) + 'static>(data: *mut Storage, post: Option<(&HandlerQueue, Error)>) {
    // SAFETY: guaranteed by the caller: the pointer came from `Box::into_raw`.
    let f = unsafe { Box::from_raw(data.cast::<*mut F>().read()) };
    if let Some((q, err)) = post {
        q.push(move || f(err));
    }
}

impl WaitHandler {
    pub(crate) fn new<F: FnOnce(Error) + 'static>(f: F) -> WaitHandler {
        let mut data = MaybeUninit::<Storage>::uninit();
        let ptr = data.as_mut_ptr();
        let shim: WaitShim = if size_of::<F>() <= size_of::<Storage>() && align_of::<F>() <= align_of::<Storage>() {
            // SAFETY: `F` fits in the storage by size and alignment (checked).
            unsafe { ptr.cast::<F>().write(f) };
            inline_wait_shim::<F>
        } else {
            // SAFETY: a pointer always fits in the storage.
            unsafe { ptr.cast::<*mut F>().write(Box::into_raw(Box::new(f))) };
            boxed_wait_shim::<F>
        };
        WaitHandler { shim, data, _not_send: PhantomData }
    }

    /// Queues the handler on `q`, to be called with `err`.
    pub(crate) fn post(self, q: &HandlerQueue, err: Error) {
        let mut me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `data` holds the closure written by `new`; `me` is never
        // dropped, so the shim's move out is the only one.
        unsafe { (me.shim)(me.data.as_mut_ptr(), Some((q, err))) }
    }
}

impl Drop for WaitHandler {
    fn drop(&mut self) {
        // SAFETY: `data` still holds the closure: `post` consumes the handler
        // without running this destructor.
        unsafe { (self.shim)(self.data.as_mut_ptr(), None) }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        while let Some(t) = self.take() {
            // SAFETY: just taken and nothing touched the ring since.
            unsafe { t.run_or_drop(false) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn small_and_large_closures_run_once_in_order_and_drop_once() {
        let hits = Rc::new(Cell::new(0u64));
        let order = Rc::new(std::cell::RefCell::new(Vec::new()));
        let ring = HandlerQueue::new();
        for i in 0..100u64 {
            let (h, o) = (hits.clone(), order.clone());
            if i % 2 == 0 {
                ring.push(move || {
                    h.set(h.get() + 1);
                    o.borrow_mut().push(i);
                });
            } else {
                let big = [i; 16];
                ring.push(move || {
                    h.set(h.get() + big[15]);
                    o.borrow_mut().push(i);
                });
            }
        }
        assert_eq!(ring.len(), 100);
        while ring.run_next() {}
        assert_eq!(*order.borrow(), (0..100).collect::<Vec<_>>());
        assert_eq!(hits.get(), 50 + (1..100).step_by(2).sum::<u64>());
        assert_eq!(Rc::strong_count(&hits), 1, "captures freed after the call");
        let (c, d) = (hits.clone(), hits.clone());
        ring.push(move || drop(c));
        ring.push(move || drop((d, [0u64; 16])));
        drop(ring);
        assert_eq!(Rc::strong_count(&hits), 1, "captures freed without a call");
    }

    #[test]
    fn growing_a_wrapped_ring_keeps_fifo_order() {
        let order = Rc::new(std::cell::RefCell::new(Vec::new()));
        let q = HandlerQueue::new();
        let mut next = 0;
        // Move the head forward, then fill past the capacity while wrapped.
        for round in 0..5 {
            for _ in 0..(40 + round * 50) {
                let o = order.clone();
                let i = next;
                next += 1;
                q.push(move || o.borrow_mut().push(i));
            }
            for _ in 0..30 {
                assert!(q.run_next());
            }
        }
        while q.run_next() {}
        assert_eq!(*order.borrow(), (0..next).collect::<Vec<_>>());
    }

    #[test]
    fn wait_handlers_post_with_their_result_or_drop_their_captures() {
        let token = Rc::new(());
        let got = Rc::new(std::cell::RefCell::new(Vec::new()));
        let q = HandlerQueue::new();
        let (g1, t1) = (got.clone(), token.clone());
        let small = WaitHandler::new(move |e: Error| {
            let _t = t1;
            g1.borrow_mut().push(e)
        });
        let (g2, big) = (got.clone(), [7u64; 8]);
        let large = WaitHandler::new(move |e: Error| {
            g2.borrow_mut().push(Error::from_raw_os_error(e.raw_os_error().unwrap_or(0) + big[7] as i32))
        });
        let (t3, t4) = (token.clone(), token.clone());
        let dropped_small = WaitHandler::new(move |_: Error| drop(t3));
        let dropped_large = WaitHandler::new(move |_: Error| drop((t4, [0u64; 8])));
        assert_eq!(Rc::strong_count(&token), 4);
        drop((dropped_small, dropped_large));
        assert_eq!(Rc::strong_count(&token), 2, "dropping a wait handler frees its captures");
        small.post(&q, Error::OPERATION_ABORTED);
        large.post(&q, Error::from_raw_os_error(1));
        assert!(got.borrow().is_empty(), "posting does not run the handler");
        while q.run_next() {}
        assert_eq!(*got.borrow(), vec![Error::OPERATION_ABORTED, Error::from_raw_os_error(8)]);
        assert_eq!(Rc::strong_count(&token), 1);
    }

    #[test]
    fn a_panicking_handler_frees_its_captures() {
        let token = Rc::new(());
        let t = token.clone();
        let ring = HandlerQueue::new();
        ring.push(move || {
            let _t = t;
            panic!("boom");
        });
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ring.run_next()));
        assert!(r.is_err());
        assert_eq!(ring.len(), 0);
        assert_eq!(Rc::strong_count(&token), 1);
        assert_eq!(size_of::<Slot>(), 32);
    }
}
