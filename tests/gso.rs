//! `UdpSocket::set_gso`: sends of one pass leave together with UDP
//! segmentation offload, and every operation still completes on its own.

// Linux only: UDP segmentation offload.
#![cfg(target_os = "linux")]

use ioctx::net::UdpSocket;
use ioctx::{CancellationType, Error, IoContext};
use std::cell::RefCell;
use std::rc::Rc;

mod common;
use common::{epoll_events, local, raw_fd, std_peer as receiver};

/// A socket with GSO on, connected to `rx`.
fn gso_sender(ctx: &IoContext, rx: &std::net::UdpSocket) -> UdpSocket {
    let sock = UdpSocket::bind(ctx, local()).unwrap();
    sock.connect(rx.local_addr().unwrap()).unwrap();
    sock.set_gso(true).unwrap();
    sock
}

fn datagram(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i * 31 + k) as u8).collect()
}

type Log = Rc<RefCell<Vec<(usize, Error, usize)>>>;

fn send(sock: &UdpSocket, log: &Log, i: usize, data: Vec<u8>) {
    let l = log.clone();
    sock.async_send(data, move |e, n| l.borrow_mut().push((i, e, n)));
}

#[test]
fn coalesced_sends_arrive_as_separate_datagrams_each_with_its_own_completion() {
    let ctx = IoContext::new().unwrap();
    let rx = receiver();
    let sock = gso_sender(&ctx, &rx);
    assert!(sock.gso());
    let log: Log = Rc::default();
    // 40 equal datagrams and a shorter last one: one run.
    let lens: Vec<usize> = (0..41).map(|i| if i == 40 { 17 } else { 100 }).collect();
    for (i, len) in lens.iter().enumerate() {
        send(&sock, &log, i, datagram(i, *len));
    }
    // Deferred to the end of the pass: nothing has left yet.
    rx.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    assert!(rx.recv(&mut buf).is_err(), "a send left before the loop ran");
    rx.set_nonblocking(false).unwrap();
    ctx.run();
    let got = log.borrow().clone();
    let want: Vec<_> = lens.iter().enumerate().map(|(i, len)| (i, Error::NONE, *len)).collect();
    assert_eq!(got, want, "each operation completes with its own length, in order");
    for (i, len) in lens.iter().enumerate() {
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &datagram(i, *len)[..], "datagram {i}");
    }
    assert!(sock.gso(), "loopback takes segmentation offload");
}

#[test]
fn runs_break_at_a_shorter_datagram_a_new_size_or_another_destination() {
    let ctx = IoContext::new().unwrap();
    let (rx1, rx2) = (receiver(), receiver());
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    sock.set_gso(true).unwrap();
    let log: Log = Rc::default();
    let plan = [(1, 50), (1, 50), (1, 30), (1, 50), (2, 50), (2, 50), (1, 80), (1, 80), (2, 7)];
    for (i, (to, len)) in plan.iter().enumerate() {
        let dest = if *to == 1 { rx1.local_addr().unwrap() } else { rx2.local_addr().unwrap() };
        let l = log.clone();
        sock.async_send_to(datagram(i, *len), dest, move |e, n| l.borrow_mut().push((i, e, n)));
    }
    ctx.run();
    let want: Vec<_> = plan.iter().enumerate().map(|(i, (_, len))| (i, Error::NONE, *len)).collect();
    assert_eq!(*log.borrow(), want);
    let mut buf = [0u8; 256];
    for (i, (to, len)) in plan.iter().enumerate() {
        let rx = if *to == 1 { &rx1 } else { &rx2 };
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &datagram(i, *len)[..], "datagram {i}");
    }
}

#[test]
fn more_than_one_batch_in_a_pass_and_sends_from_handlers_keep_fifo_order() {
    let ctx = IoContext::new().unwrap();
    let rx = receiver();
    let sock = gso_sender(&ctx, &rx);
    let log: Log = Rc::default();
    // 100 in one pass (more than the 64 segments of one call) ...
    for i in 0..100 {
        send(&sock, &log, i, datagram(i, 64));
    }
    // ... and 16 chains where each completion sends the next, as udp_blast does.
    fn chain(sock: UdpSocket, log: Log, i: usize) {
        let s = sock.clone();
        let l = log.clone();
        sock.async_send(datagram(i, 64), move |e, n| {
            l.borrow_mut().push((i, e, n));
            if i + 16 < 200 {
                chain(s, l, i + 16);
            }
        });
    }
    for k in 0..16 {
        chain(sock.clone(), log.clone(), 100 + k);
    }
    ctx.run();
    let got = log.borrow();
    // (few enough for the receiver's buffer: nobody reads it meanwhile)
    assert_eq!(got.len(), 200);
    assert!(got.iter().all(|(_, e, n)| *e == Error::NONE && *n == 64));
    assert_eq!(got[..100].iter().map(|g| g.0).collect::<Vec<_>>(), (0..100).collect::<Vec<_>>());
    let mut seen = Vec::new();
    let mut buf = [0u8; 128];
    for _ in 0..200 {
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(n, 64);
        let i = (0..200).find(|i| buf[..64] == datagram(*i, 64)[..]).expect("unknown datagram");
        seen.push(i);
    }
    // The wire order is the completion order.
    assert_eq!(seen, got.iter().map(|g| g.0).collect::<Vec<_>>());
}

#[test]
fn an_oversize_datagram_fails_alone_and_its_neighbours_go_out() {
    let ctx = IoContext::new().unwrap();
    let rx = receiver();
    let sock = gso_sender(&ctx, &rx);
    let log: Log = Rc::default();
    send(&sock, &log, 0, datagram(0, 10));
    send(&sock, &log, 1, datagram(1, 10));
    send(&sock, &log, 2, vec![0u8; 70_000]);
    send(&sock, &log, 3, datagram(3, 10));
    send(&sock, &log, 4, datagram(4, 10));
    ctx.run();
    assert_eq!(
        *log.borrow(),
        vec![
            (0, Error::NONE, 10),
            (1, Error::NONE, 10),
            (2, Error::MESSAGE_SIZE, 0),
            (3, Error::NONE, 10),
            (4, Error::NONE, 10)
        ]
    );
    let mut buf = [0u8; 64];
    for i in [0, 1, 3, 4] {
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &datagram(i, 10)[..]);
    }
}

#[test]
fn a_deferred_send_can_be_cancelled_or_aborted_by_close_before_it_leaves() {
    let ctx = IoContext::new().unwrap();
    let rx = receiver();
    let sock = gso_sender(&ctx, &rx);
    let log: Log = Rc::default();
    send(&sock, &log, 0, datagram(0, 20));
    let l = log.clone();
    let op = sock.async_send(datagram(1, 20), move |e, n| l.borrow_mut().push((1, e, n)));
    send(&sock, &log, 2, datagram(2, 20));
    assert!(op.is_pending(), "a deferred send is pending until the pass ends");
    assert!(op.cancel(CancellationType::TOTAL));
    ctx.run();
    assert_eq!(*log.borrow(), vec![(1, Error::OPERATION_ABORTED, 0), (0, Error::NONE, 20), (2, Error::NONE, 20)]);
    let mut buf = [0u8; 64];
    for i in [0, 2] {
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &datagram(i, 20)[..], "the cancelled datagram must not leave");
    }
    // close() aborts what is still deferred.
    log.borrow_mut().clear();
    send(&sock, &log, 5, datagram(5, 20));
    sock.close();
    ctx.restart();
    ctx.run();
    assert_eq!(*log.borrow(), vec![(5, Error::OPERATION_ABORTED, 0)]);
    assert!(sock.set_gso(false).is_err(), "set_gso on a closed socket errs");
}

#[test]
fn turning_gso_off_restores_speculative_sends() {
    let ctx = IoContext::new().unwrap();
    let rx = receiver();
    let sock = gso_sender(&ctx, &rx);
    sock.set_gso(false).unwrap();
    let log: Log = Rc::default();
    send(&sock, &log, 0, datagram(0, 9));
    let mut buf = [0u8; 64];
    // S1 again: on the wire before run().
    assert_eq!(rx.recv(&mut buf).unwrap(), 9);
    ctx.run();
    assert_eq!(*log.borrow(), vec![(0, Error::NONE, 9)]);
}

#[test]
fn a_socket_whose_coalesced_sends_all_leave_stays_out_of_epoll() {
    // No registration means no epoll_wait in a loop that only sends.
    let ctx = IoContext::new().unwrap();
    let rx = receiver();
    let sock = gso_sender(&ctx, &rx);
    let log: Log = Rc::default();
    for i in 0..32 {
        send(&sock, &log, i, datagram(i, 64));
    }
    ctx.run();
    assert_eq!(log.borrow().len(), 32);
    assert_eq!(epoll_events(raw_fd(&sock)), None, "the socket joined epoll");
}

#[test]
fn an_icmp_error_goes_to_the_first_coalesced_send_as_without_gso() {
    // After an ICMP port unreachable, the socket's pending error is consumed
    // by the next send call: the batch's first operation must report it.
    let ctx = IoContext::new().unwrap();
    let dead = std::net::UdpSocket::bind(local()).unwrap().local_addr().unwrap();
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    sock.connect(dead).unwrap();
    sock.send(&b"probe"[..]).unwrap(); // draws the ICMP report
    sock.set_gso(true).unwrap();
    let log: Log = Rc::default();
    for i in 0..3 {
        send(&sock, &log, i, datagram(i, 32));
    }
    ctx.run();
    let got = log.borrow();
    assert_eq!(got[0], (0, Error::CONNECTION_REFUSED, 0), "{got:?}");
    assert_eq!(got.len(), 3);
    assert!(sock.gso(), "a socket error is not a refusal of GSO");
}

/// A `UdpSocket` over one end of a Unix datagram socketpair, whose sends
/// really would block once the other end (returned, non-blocking) falls
/// behind: a UDP send on loopback never does. The reactor code is the same.
fn blocking_pair(ctx: &IoContext) -> (UdpSocket, std::os::unix::net::UnixDatagram) {
    let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    let sock = UdpSocket::from_std(ctx, std::os::fd::OwnedFd::from(a).into()).unwrap();
    (sock, b)
}

/// A send would block (writability becomes of interest), is cancelled, and
/// with `read_wait` a read wait then re-registers the socket while no send
/// waits (writability is dropped). The peer drains; with GSO on, a new send
/// is deferred to the end of the pass, but the socket still counts as not
/// writable. Returns whether that send left.
fn deferred_send_after_a_would_block_leaves(read_wait: bool) -> bool {
    let ctx = IoContext::new().unwrap();
    let (a, b) = blocking_pair(&ctx);
    let mut started = 0;
    while !a.async_send(vec![0u8; 100], |_, _| {}).is_pending() {
        started += 1;
        assert!(started < 10_000, "no send ever had to wait");
    }
    a.cancel().unwrap();
    if read_wait {
        a.async_wait(ioctx::net::WaitType::Read, |_| {});
    }
    let mut buf = [0u8; 256];
    while b.recv(&mut buf).is_ok() {}
    a.set_gso(true).unwrap();
    let sent = Rc::new(RefCell::new(None));
    let s = sent.clone();
    a.async_send(&b"hello"[..], move |e, n| *s.borrow_mut() = Some((e, n)));
    ctx.run_for(std::time::Duration::from_millis(300));
    let r = *sent.borrow();
    assert!(r.is_none_or(|r| r == (Error::NONE, 5)), "{r:?}");
    r.is_some()
}

#[test]
fn a_deferred_send_behind_a_would_block_waits_for_writability_and_leaves() {
    assert!(deferred_send_after_a_would_block_leaves(false));
    // The lost write wakeup: no interest in writability, so no event ever came.
    assert!(deferred_send_after_a_would_block_leaves(true), "the deferred send never left");
}

/// A buffer whose own code runs a hook the first time the reactor reads it:
/// the one place where user code runs while a batch is being assembled.
struct Hooked {
    data: Vec<u8>,
    hook: RefCell<Option<Box<dyn FnOnce()>>>,
}

impl ioctx::ConstBufferSequence for Hooked {
    fn buffer_count(&self) -> usize {
        1
    }
    fn gather<'a>(&'a self, out: &mut dyn FnMut(&'a [u8])) {
        if let Some(hook) = self.hook.borrow_mut().take() {
            hook();
        }
        out(&self.data);
    }
}

#[test]
fn a_batch_completes_its_own_sends_even_when_a_buffer_reshapes_the_queue() {
    // While the flush copies B's datagram, B's buffer cancels A (already in
    // the batch) and starts a write wait, which prunes A from the queue: the
    // front of the queue is then [B, wait]. The batch must take B off the
    // queue, not the wait, which still completes.
    let ctx = IoContext::new().unwrap();
    let rx = receiver();
    let sock = gso_sender(&ctx, &rx);
    let log: Log = Rc::default();
    let l = log.clone();
    let a = sock.async_send(datagram(0, 40), move |e, n| l.borrow_mut().push((0, e, n)));
    let (s, l) = (sock.clone(), log.clone());
    let hook: Box<dyn FnOnce()> = Box::new(move || {
        assert!(a.cancel(CancellationType::TOTAL));
        s.async_wait(ioctx::net::WaitType::Write, move |e| l.borrow_mut().push((2, e, 0)));
    });
    let l = log.clone();
    sock.async_send(Hooked { data: datagram(1, 40), hook: RefCell::new(Some(hook)) }, move |e, n| {
        l.borrow_mut().push((1, e, n))
    });
    ctx.run_for(std::time::Duration::from_secs(5));
    assert_eq!(
        *log.borrow(),
        vec![(0, Error::OPERATION_ABORTED, 0), (1, Error::NONE, 40), (2, Error::NONE, 0)],
        "each completes once, the wait too"
    );
    assert!(ctx.stopped(), "nothing is left pending");
}

#[test]
fn a_sendmmsg_batch_completes_its_own_sends_even_when_a_buffer_reshapes_the_queue() {
    // The same through `sendmmsg` (GSO off): the sends queue behind a socket
    // that would block, and leave together when it becomes writable.
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = blocking_pair(&ctx);
    let mut started = 0;
    while !sock.async_send(vec![0u8; 100], |_, _| {}).is_pending() {
        started += 1;
        assert!(started < 10_000, "no send ever had to wait");
    }
    sock.cancel().unwrap(); // their handlers (which log nothing) run in run_for below
    let log: Log = Rc::default();
    let l = log.clone();
    let a = sock.async_send(datagram(0, 40), move |e, n| l.borrow_mut().push((0, e, n)));
    assert!(a.is_pending());
    let (s, l) = (sock.clone(), log.clone());
    let hook: Box<dyn FnOnce()> = Box::new(move || {
        assert!(a.cancel(CancellationType::TOTAL));
        s.async_wait(ioctx::net::WaitType::Write, move |e| l.borrow_mut().push((2, e, 0)));
    });
    let l = log.clone();
    sock.async_send(Hooked { data: datagram(1, 40), hook: RefCell::new(Some(hook)) }, move |e, n| {
        l.borrow_mut().push((1, e, n))
    });
    let mut buf = [0u8; 256];
    while peer.recv(&mut buf).is_ok() {}
    ctx.run_for(std::time::Duration::from_secs(5));
    assert_eq!(
        *log.borrow(),
        vec![(0, Error::OPERATION_ABORTED, 0), (1, Error::NONE, 40), (2, Error::NONE, 0)],
        "each completes once, the wait too"
    );
    assert!(ctx.stopped(), "nothing is left pending");
}
