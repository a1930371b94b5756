//! The ready queue: handlers posted by users and operations that completed,
//! plus the reactor marker (Asio's task operation) that makes the loop poll
//! for I/O once per pass through the queue.

use crate::op::Completion;
use std::rc::Rc;

/// One entry of the ready queue.
pub(crate) enum Ready {
    /// Where the loop polls the reactor; exactly one is in the queue.
    Marker,
    /// A closure from `post`, `defer` or `dispatch`.
    Fn(Box<dyn FnOnce()>),
    /// A completed operation whose handler is to run.
    Op(Rc<dyn Completion>),
}
