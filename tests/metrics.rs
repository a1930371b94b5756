//! `IoContext::metrics()`: each counter against a workload whose numbers are
//! known in advance.

mod common;

use common::{connected_pair, local, std_peer};
use ioctx::net::{MessageFlags, TcpListener, TcpStream, UdpSocket};
use ioctx::{IoContext, Metrics, SteadyTimer};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

#[test]
fn posted_handlers_are_counted_and_make_no_reactor_wait() {
    let ctx = IoContext::new().unwrap();
    assert_eq!(ctx.metrics(), Metrics::default());
    let ex = ctx.executor();
    for _ in 0..10 {
        let ex2 = ex.clone();
        ex.post(move || ex2.post(|| {}));
    }
    assert_eq!(ctx.run(), 20);
    let m = ctx.metrics();
    assert_eq!(m.handlers_run, 20);
    // Two turns, each followed by a pass: the 10 posted, then the 10 they
    // posted; out of work, the loop stops without a third.
    assert_eq!(m.loop_turns, 2);
    assert_eq!((m.reactor_waits, m.events), (0, 0), "nothing registered: no epoll_wait");
    assert_eq!((m.datagrams_in, m.bytes_in, m.datagrams_out, m.bytes_out), (0, 0, 0, 0));
    assert_eq!(m.time_waiting, Duration::ZERO);
    assert_eq!(m.longest_handler, None, "timing is off by default");

    ctx.reset_metrics();
    assert_eq!(ctx.metrics(), Metrics::default());
}

#[test]
fn udp_datagrams_and_bytes_count_every_path() {
    let ctx = IoContext::new().unwrap();
    let a = UdpSocket::bind(&ctx, local()).unwrap();
    let b = UdpSocket::bind(&ctx, local()).unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    b.connect(a.local_addr().unwrap()).unwrap();
    // Ten receives wait first, so the datagrams arrive under one readiness
    // event and go through the batched receive.
    let got = Rc::new(Cell::new(0));
    for _ in 0..10 {
        let g = got.clone();
        b.async_receive(vec![0u8; 200], move |e, n, _| {
            assert!(e.is_ok());
            g.set(g.get() + n);
        });
    }
    ctx.poll();
    for i in 0..10 {
        a.async_send(vec![i as u8; 100], |e, n| assert_eq!((e.is_ok(), n), (true, 100)));
    }
    ctx.run();
    assert_eq!(got.get(), 1000);
    let m = ctx.metrics();
    assert_eq!((m.datagrams_out, m.bytes_out), (10, 1000));
    assert_eq!((m.datagrams_in, m.bytes_in), (10, 1000));
    assert_eq!(m.handlers_run, 20);
    assert!(m.events >= 1 && m.reactor_waits >= 1, "{m:?}");

    // Synchronous calls count too; a peek does not (the data is read again).
    ctx.reset_metrics();
    assert_eq!(a.send(&b"sync!"[..]).unwrap(), 5);
    let mut buf = [0u8; 16];
    b.async_receive_with_flags(vec![0u8; 16], MessageFlags::PEEK, |e, n, _| assert_eq!((e.is_ok(), n), (true, 5)));
    ctx.restart();
    ctx.run();
    assert_eq!(b.receive(&mut buf[..]).unwrap(), 5);
    let m = ctx.metrics();
    assert_eq!((m.datagrams_out, m.bytes_out, m.datagrams_in, m.bytes_in), (1, 5, 1, 5), "{m:?}");
}

#[test]
fn segmented_and_one_by_one_sends_each_count_their_datagrams() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    sock.set_gso(true).unwrap();
    let ex = ctx.executor();
    let s = sock.clone();
    // One pass of 8 equal sends: coalesced into one segmented send (or sent
    // one by one where the kernel refuses GSO); 8 datagrams either way.
    ex.post(move || {
        for _ in 0..8 {
            s.async_send(vec![7u8; 300], |e, n| assert_eq!((e.is_ok(), n), (true, 300)));
        }
    });
    ctx.run();
    let mut buf = [0u8; 2000];
    for _ in 0..8 {
        assert_eq!(peer.recv(&mut buf).unwrap(), 300);
    }
    let m = ctx.metrics();
    assert_eq!((m.datagrams_out, m.bytes_out), (8, 2400));
    assert_eq!(m.handlers_run, 9);
}

#[test]
fn stream_bytes_are_counted_without_datagrams() {
    let ctx = IoContext::new().unwrap();
    let listener = TcpListener::bind(&ctx, local()).unwrap();
    let client = TcpStream::connect(&ctx, listener.local_addr().unwrap()).unwrap();
    let server = listener.accept().unwrap();
    let total = Rc::new(Cell::new(0usize));
    fn read_all(s: TcpStream, total: Rc<Cell<usize>>) {
        let s2 = s.clone();
        s.async_read_some(vec![0u8; 4096], move |e, n, _| {
            if e.is_ok() {
                total.set(total.get() + n);
                read_all(s2, total);
            }
        });
    }
    read_all(server.clone(), total.clone());
    ioctx::net::async_write(&client, vec![1u8; 50_000], ioctx::net::transfer_all(), |e, n| {
        assert_eq!((e.is_ok(), n), (true, 50_000))
    });
    let c = client.clone();
    ctx.executor().post(move || c.shutdown(std::net::Shutdown::Write).unwrap());
    ctx.run();
    assert_eq!(total.get(), 50_000);
    let m = ctx.metrics();
    assert_eq!((m.bytes_out, m.bytes_in), (50_000, 50_000));
    assert_eq!((m.datagrams_out, m.datagrams_in), (0, 0));
}

#[test]
fn time_waiting_covers_a_timer_and_a_readiness_event_is_counted() {
    let ctx = IoContext::new().unwrap();
    ctx.set_wait_timing(true);
    let t = SteadyTimer::new(&ctx.executor());
    t.expires_after(Duration::from_millis(30));
    t.async_wait(|e| assert!(e.is_ok()));
    ctx.run();
    let m = ctx.metrics();
    assert!(m.time_waiting >= Duration::from_millis(25), "{m:?}");
    assert!(m.reactor_waits >= 1);
    assert_eq!(m.events, 0, "a timer is no readiness event");
    assert_eq!(m.handlers_run, 1);

    // One datagram arriving at a waiting receive: one event.
    ctx.restart();
    ctx.reset_metrics();
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    sock.async_receive(vec![0u8; 64], |e, n, _| assert_eq!((e.is_ok(), n), (true, 3)));
    ctx.poll();
    std_peer().send_to(b"abc", sock.local_addr().unwrap()).unwrap();
    ctx.run();
    let m = ctx.metrics();
    assert_eq!(m.events, 1, "{m:?}");
    assert_eq!((m.datagrams_in, m.bytes_in), (1, 3));
}

#[test]
fn handler_timing_finds_the_longest_handler() {
    let ctx = IoContext::new().unwrap();
    assert!(!ctx.handler_timing());
    ctx.set_handler_timing(true);
    assert!(ctx.handler_timing());
    assert_eq!(ctx.metrics().longest_handler, Some(Duration::ZERO));
    let ex = ctx.executor();
    ex.post(|| {});
    ex.post(|| std::thread::sleep(Duration::from_millis(20)));
    ex.post(|| {});
    ctx.run();
    let longest = ctx.metrics().longest_handler.unwrap();
    assert!(longest >= Duration::from_millis(20), "{longest:?}");

    ctx.reset_metrics();
    assert_eq!(ctx.metrics().longest_handler, Some(Duration::ZERO));
    ctx.set_handler_timing(false);
    ctx.restart();
    ex.post(|| std::thread::sleep(Duration::from_millis(5)));
    ctx.run();
    assert_eq!(ctx.metrics().longest_handler, Some(Duration::ZERO), "timing off: nothing measured");
    assert_eq!(ctx.metrics().handlers_run, 1);
}

#[test]
fn handlers_run_matches_what_the_run_calls_returned_through_stop_run_one_and_nested_polls() {
    let ctx = Rc::new(IoContext::new().unwrap());
    let ex = ctx.executor();
    let mut returned = 0;
    for _ in 0..5 {
        ex.post(|| {});
    }
    // run_one leaves the rest of the pass queued.
    returned += ctx.run_one();
    assert_eq!(ctx.metrics().handlers_run, 1);
    // A handler that stops the loop mid-pass; the rest wait for a restart.
    let c = ctx.clone();
    ex.post(move || c.stop());
    for _ in 0..3 {
        ex.post(|| {});
    }
    returned += ctx.run();
    assert_eq!(ctx.metrics().handlers_run, returned as u64);
    // A handler that runs a nested poll, which takes the rest of the pass
    // and what it posts.
    let (c, e) = (ctx.clone(), ex.clone());
    let nested = Rc::new(Cell::new(0));
    let n2 = nested.clone();
    ex.post(move || {
        e.post(|| {});
        n2.set(c.poll());
    });
    ctx.restart();
    returned += ctx.run();
    assert_eq!(ctx.metrics().handlers_run, (returned + nested.get()) as u64);
    // 5 posted first, the stopper and its 3, the nested poller and its 1.
    assert_eq!(ctx.metrics().handlers_run, 5 + 4 + 2, "every handler once");
}

#[test]
fn reset_inside_a_handler_counts_the_rest_of_the_pass() {
    let ctx = Rc::new(IoContext::new().unwrap());
    let ex = ctx.executor();
    ex.post(|| {});
    let c = ctx.clone();
    ex.post(move || c.reset_metrics());
    for _ in 0..3 {
        ex.post(|| {});
    }
    assert_eq!(ctx.run(), 5);
    assert_eq!(ctx.metrics().handlers_run, 3, "the three after the reset");
}

#[test]
fn a_peek_with_the_sender_is_not_counted() {
    use ioctx::net::UnixDatagram;
    let ctx = IoContext::new().unwrap();
    let (a, b) = UnixDatagram::pair(&ctx).unwrap();
    assert_eq!(a.send(&b"hello"[..]).unwrap(), 5);
    b.async_receive_from_with_flags(vec![0u8; 16], MessageFlags::PEEK, |e, n, _, _| {
        assert_eq!((e.is_ok(), n), (true, 5))
    });
    ctx.run();
    let mut buf = [0u8; 16];
    assert_eq!(b.receive_from(&mut buf[..]).unwrap().0, 5);
    let m = ctx.metrics();
    assert_eq!((m.datagrams_out, m.bytes_out, m.datagrams_in, m.bytes_in), (1, 5, 1, 5), "{m:?}");
}

#[test]
fn time_waiting_stays_zero_until_wait_timing_is_on() {
    let ctx = IoContext::new().unwrap();
    assert!(!ctx.wait_timing(), "off by default");
    let wait_for_timer = |ms| {
        let t = SteadyTimer::new(&ctx.executor());
        t.expires_after(Duration::from_millis(ms));
        t.async_wait(|e| assert!(e.is_ok()));
        ctx.restart();
        ctx.run();
    };
    wait_for_timer(20);
    let m = ctx.metrics();
    assert!(m.reactor_waits >= 1, "{m:?}");
    assert_eq!(m.time_waiting, Duration::ZERO, "timing off: the wait was not measured");

    ctx.set_wait_timing(true);
    assert!(ctx.wait_timing());
    wait_for_timer(20);
    assert!(ctx.metrics().time_waiting >= Duration::from_millis(15), "{:?}", ctx.metrics());
    ctx.set_wait_timing(false);
    let before = ctx.metrics().time_waiting;
    wait_for_timer(10);
    assert_eq!(ctx.metrics().time_waiting, before, "off again: nothing added");
}

#[test]
fn waits_that_may_not_block_add_no_time_waiting() {
    let ctx = IoContext::new().unwrap();
    ctx.set_wait_timing(true); // else nothing would be measured anyway
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    sock.async_receive(vec![0u8; 16], |_, _, _| {});
    for _ in 0..10 {
        ctx.poll();
    }
    let m = ctx.metrics();
    assert!(m.reactor_waits >= 10, "{m:?}");
    assert_eq!(m.time_waiting, Duration::ZERO, "{m:?}");
}
