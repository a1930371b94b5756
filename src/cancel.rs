//! `Operation` and `CancellationType`: per-operation cancellation, the Rust form
//! of Asio's cancellation slots.

use crate::context::Inner;
pub use crate::op::CancellationType;
use crate::op::Completion;
use crate::timer::{TimerKey, TimerTarget, Watched};
use std::rc::{Rc, Weak};
use std::time::Duration;

/// A handle on one started asynchronous operation, returned by every `async_*`
/// call. Cheap to clone; holding it keeps neither the operation nor the
/// context alive.
///
/// ```
/// # use ioctx::{IoContext, SteadyTimer, CancellationType, Error};
/// # use std::time::Duration;
/// let ctx = IoContext::new().unwrap();
/// let timer = SteadyTimer::new(&ctx);
/// timer.expires_after(Duration::from_secs(60));
/// let op = timer.async_wait(|e| assert_eq!(e, Error::OPERATION_ABORTED));
/// assert!(op.cancel(CancellationType::TERMINAL));
/// assert!(!op.cancel(CancellationType::TERMINAL)); // already completed
/// assert_eq!(ctx.run(), 1);
/// ```
#[derive(Clone, Default)]
pub struct Operation {
    link: Option<Link>,
}

/// What an `Operation` refers to.
#[derive(Clone)]
enum Link {
    /// A socket operation object.
    Op(Weak<Inner>, Weak<dyn Completion>),
    /// A timer wait: an entry of the context's timer queue.
    Wait(Weak<Inner>, TimerKey),
}

impl std::fmt::Debug for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operation").field("pending", &self.is_pending()).finish()
    }
}

impl Operation {
    /// An operation handle that refers to nothing (used when the operation
    /// could not be started because its context is gone).
    pub(crate) fn detached() -> Operation {
        Operation { link: None }
    }

    pub(crate) fn new(inner: &Rc<Inner>, op: &Rc<dyn Completion>) -> Operation {
        Operation { link: Some(Link::Op(Rc::downgrade(inner), Rc::downgrade(op))) }
    }

    /// The handle of a socket operation about to be queued.
    #[inline]
    pub(crate) fn pending(inner: &Rc<Inner>, op: Weak<dyn crate::op::SocketOp>) -> Operation {
        Operation { link: Some(Link::Op(Rc::downgrade(inner), op)) }
    }

    /// The handle of the timer wait queued under `key`.
    pub(crate) fn wait(inner: &Rc<Inner>, key: TimerKey) -> Operation {
        Operation { link: Some(Link::Wait(Rc::downgrade(inner), key)) }
    }

    /// True while the operation has not completed (its handler is not queued yet).
    pub fn is_pending(&self) -> bool {
        match &self.link {
            None => false,
            Some(Link::Op(inner, op)) => {
                inner.strong_count() > 0 && op.upgrade().is_some_and(|op| !op.core().is_done())
            }
            Some(Link::Wait(inner, key)) => inner.upgrade().is_some_and(|i| i.timers.borrow().is_live(*key)),
        }
    }

    /// Requests cancellation. When the operation is still pending and honours
    /// a kind in `ty`, it completes with `Error::OPERATION_ABORTED` through the
    /// handler queue (never inline) and this returns true. An operation that
    /// already completed is not affected and this returns false.
    pub fn cancel(&self, ty: CancellationType) -> bool {
        match &self.link {
            None => false,
            Some(Link::Op(inner, op)) => match (inner.upgrade(), op.upgrade()) {
                (Some(inner), Some(op)) => inner.cancel_op(op, ty),
                _ => false,
            },
            // A wait that has not ended has had no effect: every kind applies.
            Some(Link::Wait(inner, key)) => {
                !ty.is_empty() && inner.upgrade().is_some_and(|inner| inner.cancel_wait(*key))
            }
        }
    }

    /// Cancels the operation with `ty` if it is still pending after `after`.
    /// The timer is removed as soon as the operation completes, so it never
    /// keeps `run()` busy on its own. A second `cancel_after` replaces the first.
    pub fn cancel_after(&self, after: Duration, ty: CancellationType) -> &Self {
        match &self.link {
            None => {}
            Some(Link::Op(inner, op)) => {
                if let (Some(inner), Some(op)) = (inner.upgrade(), op.upgrade())
                    && !op.core().is_done()
                {
                    let at = inner.later(after);
                    let target = TimerTarget::CancelAfter(Watched::Op(Rc::downgrade(&op)), ty);
                    let key = inner.timers.borrow_mut().insert(at, target);
                    inner.drop_cancel_after(op.core().cancel_key.replace(Some(key)));
                }
            }
            Some(Link::Wait(inner, wait)) => {
                if let Some(inner) = inner.upgrade() {
                    let at = inner.later(after);
                    let mut timers = inner.timers.borrow_mut();
                    if timers.is_live(*wait) {
                        let key = timers.insert(at, TimerTarget::CancelAfter(Watched::Wait(*wait), ty));
                        if let Some(Some(old)) = timers.set_wait_cancel(*wait, key) {
                            // A cancel_after entry holds no handler: dropping it runs no user code.
                            drop(timers.remove(old));
                        }
                    }
                }
            }
        }
        self
    }
}
