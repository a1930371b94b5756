//! `Remote`: posting to a context from other threads (on the backend's
//! [`Waker`]).

use crate::backend::Waker;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

type Job = Box<dyn FnOnce() + Send>;

/// What a context and its `Remote`s share.
pub(crate) struct Shared {
    /// Closures posted and not yet taken by the loop; `None` once the
    /// context is gone.
    queue: Mutex<Option<VecDeque<Job>>>,
    /// Something was posted (or a stop asked) since the loop last looked:
    /// the loop's only cost while nobody posts is loading this flag.
    pending: AtomicBool,
    stop: AtomicBool,
    waker: Arc<Waker>,
}

impl Shared {
    pub(crate) fn new(waker: Arc<Waker>) -> Shared {
        Shared {
            queue: Mutex::new(Some(VecDeque::new())),
            pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            waker,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<VecDeque<Job>>> {
        // A closure is only moved in and out under the lock, never run: a
        // poisoned lock holds a consistent queue.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks work pending and wakes the loop unless a wake is on its way.
    fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel)
            && let Err(e) = self.waker.wake()
        {
            log::error!("waking the io context failed: {e}");
        }
    }

    /// Takes what was posted, oldest first, and whether a stop was asked.
    pub(crate) fn take(&self) -> Option<(VecDeque<Job>, bool)> {
        if !self.pending.load(Ordering::Acquire) {
            return None;
        }
        // The wake is consumed here, where the posts are, not only when a
        // wait reports it: a loop that skips the wait (nothing else
        // registered) would otherwise leave its descriptor readable for
        // ever, and a host sleeping on it would spin. Drained before
        // `pending` clears, so a post racing in after this still finds
        // `pending` false and wakes again.
        if let Err(e) = self.waker.drain() {
            log::error!("draining the remote waker failed: {e}");
        }
        if !self.pending.swap(false, Ordering::AcqRel) {
            return None;
        }
        let jobs = self.lock().as_mut().map(std::mem::take).unwrap_or_default();
        Some((jobs, self.stop.swap(false, Ordering::AcqRel)))
    }

    /// Something was posted (or a stop asked) that the loop has not taken.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// The context is gone: later posts fail; queued closures are dropped.
    pub(crate) fn close(&self) -> usize {
        let jobs = self.lock().take();
        jobs.map_or(0, |j| j.len())
    }
}

/// Posts to an [`IoContext`](crate::IoContext) from any thread
/// (`Send + Sync + Clone`), from [`IoContext::remote`](crate::IoContext::remote).
///
/// Every closure posted runs exactly once, on the loop's thread, in the order
/// posted by each thread; none is coalesced away. Posting wakes the loop if
/// it is waiting. A remote post is not work by itself: `run()` that has
/// nothing else to do returns, and the closure runs on the next `run*` or
/// `poll*` (hold a [`WorkGuard`](crate::WorkGuard) to keep `run()` waiting
/// for remote posts).
///
/// # Errors
///
/// [`post`](Self::post) and [`stop`](Self::stop) return
/// `Err(`[`ContextGone`]`)` once the context is dropped, and nothing else;
/// a closure posted before that but not yet run is dropped unrun with the
/// context. The closure itself takes no arguments: no `Error` reaches it.
///
/// Work done on another thread, its result handed to the loop. A closure
/// posted from a thread must be `Send`, so it carries values, not the
/// loop's `Rc` state:
///
/// ```
/// use ioctx::{ContextGone, IoContext};
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// let ctx = IoContext::new()?;
/// let remote = ctx.remote()?;
/// let _work = ctx.work_guard(); // run() waits for the worker instead of returning
/// let sum = Arc::new(AtomicU64::new(0));
///
/// let (r, s) = (remote.clone(), sum.clone());
/// let worker = std::thread::spawn(move || -> Result<(), ContextGone> {
///     let total = (1..=100u64).sum(); // off the loop
///     let done = r.clone();
///     r.post(move || {
///         // On the loop's thread.
///         s.store(total, Ordering::Relaxed);
///         // The guard keeps run() going: stop it (Err only if the context is gone).
///         done.stop().ok();
///     })
/// });
/// ctx.run();
/// worker.join().unwrap()?;
/// assert_eq!(sum.load(Ordering::Relaxed), 5050);
///
/// drop(ctx);
/// assert_eq!(remote.post(|| {}), Err(ContextGone));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Remote {
    pub(crate) shared: Arc<Shared>,
}

/// [`Remote::post`] or [`Remote::stop`] after the context was dropped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ContextGone;

impl fmt::Display for ContextGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the io context was dropped")
    }
}

impl std::error::Error for ContextGone {}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("alive", &self.shared.lock().is_some()).finish()
    }
}

impl Remote {
    /// Queues `f` to run on the loop and wakes it.
    ///
    /// # Errors
    ///
    /// `Err(ContextGone)` after the context is dropped; `f` is dropped
    /// unrun.
    pub fn post<F: FnOnce() + Send + 'static>(&self, f: F) -> Result<(), ContextGone> {
        {
            let mut q = self.shared.lock();
            let Some(q) = q.as_mut() else { return Err(ContextGone) };
            q.push_back(Box::new(f));
        }
        self.shared.wake();
        Ok(())
    }

    /// Stops the context (as [`IoContext::stop`](crate::IoContext::stop)),
    /// from any thread, after the closures posted before it have been taken
    /// (taken into the queue, not run: as after any stop, they run on the
    /// next `run*` after [`restart`](crate::IoContext::restart)).
    ///
    /// # Errors
    ///
    /// `Err(ContextGone)` after the context is dropped.
    pub fn stop(&self) -> Result<(), ContextGone> {
        if self.shared.lock().is_none() {
            return Err(ContextGone);
        }
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake();
        Ok(())
    }
}
