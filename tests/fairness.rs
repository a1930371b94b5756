//! The fairness settings: handlers per pass and operations per readiness event.

use ioctx::net::UdpSocket;
use ioctx::{IoContext, Operation};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

fn pair(ctx: &IoContext) -> (UdpSocket, UdpSocket) {
    let a = UdpSocket::bind(ctx, "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = UdpSocket::bind(ctx, "127.0.0.1:0".parse().unwrap()).unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    b.connect(a.local_addr().unwrap()).unwrap();
    (a, b)
}

#[test]
fn the_defaults_are_asios_pass_and_64_operations_and_zero_is_refused() {
    let ctx = IoContext::new().unwrap();
    assert_eq!(ctx.handlers_per_pass(), usize::MAX);
    assert_eq!(ctx.operations_per_event(), 64);
    assert_eq!(ctx.set_handlers_per_pass(0).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(ctx.set_operations_per_event(0).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!((ctx.handlers_per_pass(), ctx.operations_per_event()), (usize::MAX, 64), "unchanged");
}

/// Ten handlers are queued; the first sends a datagram to a waiting receive.
/// Returns whether the receive was still pending when the third handler ran.
fn receive_pending_at_the_third_handler(per_pass: Option<usize>) -> bool {
    let ctx = IoContext::new().unwrap();
    if let Some(n) = per_pass {
        ctx.set_handlers_per_pass(n).unwrap();
    }
    let (a, b) = pair(&ctx);
    let op: Rc<RefCell<Operation>> = Rc::default();
    *op.borrow_mut() = b.async_receive(vec![0u8; 8], |_, _, _| {});
    let seen = Rc::new(Cell::new(None));
    for i in 0..10 {
        let (a, op, seen) = (a.clone(), op.clone(), seen.clone());
        ctx.post(move || {
            if i == 0 {
                a.send(&b"x"[..]).unwrap();
            }
            if i == 2 {
                seen.set(Some(op.borrow().is_pending()));
            }
        });
    }
    assert_eq!(ctx.run_for(Duration::from_secs(2)), 11);
    seen.get().unwrap()
}

#[test]
fn io_is_polled_after_each_group_of_handlers_per_pass() {
    // Asio's rule: the ten handlers ready when the pass began all run first.
    assert!(receive_pending_at_the_third_handler(None));
    // Two per pass: I/O is polled after the second, so the receive is done.
    assert!(!receive_pending_at_the_third_handler(Some(2)));
}

/// Ten receives wait on a socket holding ten datagrams; a handler queued
/// before the first turn counts the receives done when it runs.
fn receives_done_after_one_event(per_event: Option<usize>) -> usize {
    let ctx = IoContext::new().unwrap();
    if let Some(n) = per_event {
        ctx.set_operations_per_event(n).unwrap();
    }
    let (a, b) = pair(&ctx);
    let ops: Vec<Operation> = (0..10).map(|_| b.async_receive(vec![0u8; 8], |_, _, _| {})).collect();
    for i in 0..10u8 {
        a.send(vec![i]).unwrap();
    }
    let done = Rc::new(Cell::new(None));
    let d = done.clone();
    ctx.post(move || d.set(Some(ops.iter().filter(|o| !o.is_pending()).count())));
    assert_eq!(ctx.run_for(Duration::from_secs(2)), 11, "every receive completes in the end");
    done.get().unwrap()
}

#[test]
fn a_readiness_event_completes_at_most_operations_per_event_on_one_socket() {
    assert_eq!(receives_done_after_one_event(None), 10);
    assert_eq!(receives_done_after_one_event(Some(3)), 3);
}
