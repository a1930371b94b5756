//! `Operation` and `CancellationType`: per-operation cancellation, the Rust form
//! of Asio's cancellation slots.

use crate::context::Inner;
use crate::op::Completion;
use crate::timer::TimerTarget;
use std::ops::{BitAnd, BitOr, BitOrAssign};
use std::rc::{Rc, Weak};
use std::time::Duration;

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
    link: Option<(Weak<Inner>, Weak<dyn Completion>)>,
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
        Operation { link: Some((Rc::downgrade(inner), Rc::downgrade(op))) }
    }

    fn upgrade(&self) -> Option<(Rc<Inner>, Rc<dyn Completion>)> {
        let (inner, op) = self.link.as_ref()?;
        Some((inner.upgrade()?, op.upgrade()?))
    }

    /// True while the operation has not completed (its handler is not queued yet).
    pub fn is_pending(&self) -> bool {
        self.upgrade().is_some_and(|(_, op)| !op.core().is_done())
    }

    /// Requests cancellation. When the operation is still pending and honours
    /// a kind in `ty`, it completes with `Error::OPERATION_ABORTED` through the
    /// handler queue (never inline) and this returns true. An operation that
    /// already completed is not affected and this returns false.
    pub fn cancel(&self, ty: CancellationType) -> bool {
        match self.upgrade() {
            Some((inner, op)) => inner.cancel_op(op, ty),
            None => false,
        }
    }

    /// Cancels the operation with `ty` if it is still pending after `after`.
    /// The timer is removed as soon as the operation completes, so it never
    /// keeps `run()` busy on its own.
    pub fn cancel_after(&self, after: Duration, ty: CancellationType) -> &Self {
        if let Some((inner, op)) = self.upgrade()
            && !op.core().is_done()
        {
            let at = inner.later(after);
            let key = inner.timers.borrow_mut().insert(at, TimerTarget::CancelAfter(Rc::downgrade(&op), ty));
            // A second cancel_after replaces the first.
            if let Some(old) = op.core().cancel_key.replace(Some(key)) {
                let removed = inner.timers.borrow_mut().remove(old);
                drop(removed);
            }
        }
        self
    }
}
