//! UdpSocket rules S1–S8 (DESIGN.md §1.4) and the "never inline" rule.

mod common;
use common::{Seen, connected_pair, example, local, std_peer};
use ioctx::net::{MessageFlags, UdpSocket, WaitType};
use ioctx::{CancellationType, Error, IoContext, MAX_BUFFERS, Operation};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// Starts one of every async operation on `sock`, asserting that no handler
/// ran inside its initiating call; returns what the handlers will record.
fn start_every_operation(sock: &UdpSocket, dest: SocketAddr) -> Seen {
    let seen = Seen::default();
    type Start<'a> = Box<dyn Fn() -> Operation + 'a>;
    let ops: Vec<(&str, Start)> = vec![
        ("async_send", Box::new(|| sock.async_send(b"x".to_vec(), seen.send_handler()))),
        ("async_send_to", Box::new(|| sock.async_send_to(b"x".to_vec(), dest, seen.send_handler()))),
        ("async_receive", Box::new(|| sock.async_receive(vec![0; 8], seen.recv_handler()))),
        ("async_receive_from", Box::new(|| sock.async_receive_from(vec![0; 8], seen.recv_from_handler()))),
        ("async_wait(Read)", Box::new(|| sock.async_wait(WaitType::Read, seen.wait_handler()))),
        ("async_wait(Write)", Box::new(|| sock.async_wait(WaitType::Write, seen.wait_handler()))),
        ("async_wait(Error)", Box::new(|| sock.async_wait(WaitType::Error, seen.wait_handler()))),
        ("async_connect", Box::new(|| sock.async_connect(dest, seen.wait_handler()))),
        (
            "async_send_with_flags",
            Box::new(|| sock.async_send_with_flags(b"x".to_vec(), MessageFlags::NONE, seen.send_handler())),
        ),
    ];
    for (name, start) in ops {
        start();
        assert!(seen.get().is_empty(), "{name}: handler ran inside the initiating call");
    }
    seen
}

#[test]
fn no_handler_runs_inside_its_initiating_call_on_success() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    peer.send(b"incoming").unwrap(); // lets the receives complete at once
    peer.send(b"incoming").unwrap();
    let seen = start_every_operation(&sock, peer.local_addr().unwrap());
    // The waits need events; close from a handler once the rest completed.
    let s = sock.clone();
    let guard = ioctx::SteadyTimer::new(&ctx);
    guard.expires_after(Duration::from_millis(50));
    guard.async_wait(move |_| s.close());
    ctx.run();
    let got = seen.get();
    assert_eq!(got.len(), 9, "{got:?}");
    // The read and error waits see no further event and are aborted by close.
    assert_eq!(got.iter().filter(|(e, _)| e.is_ok()).count(), 7, "{got:?}");
}

#[test]
fn no_handler_runs_inside_its_initiating_call_on_a_closed_socket() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    sock.close();
    let seen = start_every_operation(&sock, peer.local_addr().unwrap());
    assert_eq!(ctx.run(), 9);
    // S5: every operation on a closed socket completes with BAD_DESCRIPTOR.
    assert!(seen.get().iter().all(|(e, n)| *e == Error::BAD_DESCRIPTOR && *n == 0), "{:?}", seen.get());
}

#[test]
fn no_handler_runs_inside_its_initiating_call_on_bad_arguments() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let seen = Seen::default();
    let too_many = vec![&b"a"[..]; MAX_BUFFERS + 1];
    sock.async_send(too_many.clone(), seen.send_handler());
    sock.async_send_to(too_many, peer.local_addr().unwrap(), seen.send_handler());
    let bufs: Vec<Vec<u8>> = (0..=MAX_BUFFERS).map(|_| vec![0u8; 1]).collect();
    let s = seen.0.clone();
    sock.async_receive(bufs, move |e, n, _| s.borrow_mut().push((e, n)));
    // A v6 destination on a v4 socket is refused by the kernel.
    sock.async_send_to(b"x".to_vec(), "[::1]:9".parse().unwrap(), seen.send_handler());
    assert!(seen.get().is_empty());
    ctx.run();
    let got = seen.get();
    assert_eq!(&got[..3], &[(Error::INVALID_ARGUMENT, 0); 3]);
    assert!(got[3].0.is_err() && got[3].1 == 0, "{got:?}");
    // The socket stays usable.
    let ok = Seen::default();
    sock.async_send(b"still fine".to_vec(), ok.send_handler());
    ctx.restart();
    ctx.run();
    assert_eq!(ok.get(), vec![(Error::NONE, 10)]);
    let mut buf = [0u8; 16];
    assert_eq!(peer.recv(&mut buf).unwrap(), 10);
}

#[test]
fn speculative_send_is_on_the_wire_before_run() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let seen = Seen::default();
    sock.async_send(b"early".to_vec(), seen.send_handler());
    let mut buf = [0u8; 16];
    let n = peer.recv(&mut buf).unwrap(); // run() has not been called
    assert_eq!(&buf[..n], b"early");
    assert!(seen.get().is_empty());
    assert_eq!(ctx.run(), 1);
    assert_eq!(seen.get(), vec![(Error::NONE, 5)]);
}

#[test]
fn buffer_sequences_arrive_as_one_datagram() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let seen = Seen::default();
    sock.async_send((b"ab".to_vec(), "cd", String::from("ef")), seen.send_handler());
    sock.async_send([b"gh".to_vec(), b"ij".to_vec()], seen.send_handler());
    sock.async_send(vec![Rc::<[u8]>::from(&b"kl"[..]), Rc::from(&b"mn"[..]), Rc::from(&b""[..])], seen.send_handler());
    sock.async_send((Box::<[u8]>::from(&b"o"[..]), [b'p'; 2], &b"q"[..], "r"), seen.send_handler());
    ctx.run();
    assert_eq!(seen.get(), vec![(Error::NONE, 6), (Error::NONE, 4), (Error::NONE, 4), (Error::NONE, 5)]);
    let mut buf = [0u8; 64];
    for want in [&b"abcdef"[..], b"ghij", b"klmn", b"oppqr"] {
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], want);
    }
}

#[test]
fn send_drops_its_buffers_before_the_handler_runs() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let data: Rc<[u8]> = Rc::from(&b"payload"[..]);
    let mine = data.clone();
    let unique = Rc::new(Cell::new(false));
    let u = unique.clone();
    sock.async_send(data, move |e, n| {
        let mut mine = mine;
        assert_eq!((e, n), (Error::NONE, 7));
        // Steady state without allocation: the buffer is ours alone again.
        u.set(Rc::get_mut(&mut mine).is_some());
    });
    ctx.run();
    assert!(unique.get());
    let mut buf = [0u8; 16];
    assert_eq!(peer.recv(&mut buf).unwrap(), 7);
}

#[test]
fn queued_sends_keep_fifo_order_behind_a_pending_write_wait() {
    // A write wait in the queue makes later sends queue behind it (S2); the
    // writable event drains the queue in order (S3).
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let order = Rc::new(RefCell::new(Vec::new()));
    let o = order.clone();
    sock.async_wait(WaitType::Write, move |e| o.borrow_mut().push((usize::MAX, e)));
    for i in 0..20usize {
        let o = order.clone();
        sock.async_send(vec![i as u8; i + 1], move |e, n| o.borrow_mut().push((n - 1, e)));
    }
    // Nothing went out speculatively: the queue was not empty.
    peer.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(peer.recv(&mut buf).is_err());
    ctx.run();
    let want: Vec<_> = std::iter::once(usize::MAX).chain(0..20).map(|i| (i, Error::NONE)).collect();
    assert_eq!(*order.borrow(), want);
    peer.set_nonblocking(false).unwrap();
    for i in 0..20usize {
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(n, i + 1);
        assert_eq!(buf[0], i as u8);
    }
}

#[test]
fn would_block_sends_wait_for_writability_and_drain_in_order() {
    // AF_UNIX datagram sockets really block when the reader falls behind;
    // loopback UDP never does, so this exercises the would-block path.
    let ctx = IoContext::new().unwrap();
    let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let sock = UdpSocket::from_std(&ctx, std::os::fd::OwnedFd::from(a).into()).unwrap();
    b.set_nonblocking(true).unwrap();
    const N: usize = 2000;
    let done = Rc::new(RefCell::new(Vec::new()));
    for i in 0..N {
        let d = done.clone();
        let mut msg = vec![0u8; 512];
        msg[..8].copy_from_slice(&(i as u64).to_le_bytes());
        sock.async_send(msg, move |e, n| d.borrow_mut().push((i, e, n)));
    }
    ctx.poll();
    let early = done.borrow().len();
    assert!(early < N, "the slow reader never made a send wait ({early} done)");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..100_000 {
        while let Ok(n) = b.recv(&mut buf) {
            assert_eq!(n, 512);
            got.push(u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize);
        }
        if done.borrow().len() == N {
            break;
        }
        ctx.run_one_for(Duration::from_millis(100));
    }
    while let Ok(n) = b.recv(&mut buf) {
        assert_eq!(n, 512);
        got.push(u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize);
    }
    let done = done.borrow();
    assert_eq!(done.len(), N);
    assert!(done.iter().enumerate().all(|(k, &(i, e, n))| k == i && e == Error::NONE && n == 512));
    assert_eq!(got, (0..N).collect::<Vec<_>>());
}

#[test]
fn datagrams_that_arrived_before_any_receive_are_all_delivered_in_order() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    // Make the socket wait for an edge: a receive that would block, cancelled.
    let first = sock.async_receive(vec![0u8; 8], |e, n, _| assert_eq!((e, n), (Error::OPERATION_ABORTED, 0)));
    assert!(first.cancel(CancellationType::TERMINAL));
    ctx.run();
    for i in 0..64u8 {
        peer.send(&[i; 3]).unwrap();
    }
    // Now 64 datagrams wait behind one readiness edge.
    let got = Rc::new(RefCell::new(Vec::new()));
    for _ in 0..64 {
        let g = got.clone();
        sock.async_receive(vec![0u8; 16], move |e, n, b| {
            assert_eq!((e, n), (Error::NONE, 3));
            g.borrow_mut().push(b[0]);
        });
    }
    ctx.restart();
    ctx.run();
    assert_eq!(*got.borrow(), (0..64).collect::<Vec<u8>>());
}

#[test]
fn receives_queue_fifo_and_one_event_drains_many_datagrams() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let got = Rc::new(RefCell::new(Vec::new()));
    for k in 0..200usize {
        let g = got.clone();
        let s = sock.clone();
        sock.async_receive_from(vec![0u8; 16], move |e, n, b, from| {
            assert_eq!(e, Error::NONE);
            assert_ne!(from.port(), 0);
            g.borrow_mut().push((k, b[..n].to_vec()));
            if k == 199 {
                s.close(); // the last one: nothing else keeps run() going
            }
        });
    }
    // More than one readiness budget's worth, sent at once.
    for i in 0..200u32 {
        peer.send(&i.to_le_bytes()).unwrap();
    }
    let g = got.clone();
    ctx.post(move || {
        // Runs first: nothing may have been received inline.
        assert!(g.borrow().is_empty());
    });
    // A failure shows as a missing datagram, not a hang.
    ctx.run_for(Duration::from_secs(3));
    let got = got.borrow();
    assert_eq!(got.len(), 200);
    for (i, (k, data)) in got.iter().enumerate() {
        assert_eq!(*k, i, "receives completed out of order");
        assert_eq!(data[..], (i as u32).to_le_bytes());
    }
}

#[test]
fn cancel_aborts_pending_operations_through_the_queue() {
    let ctx = IoContext::new().unwrap();
    let (sock, _peer) = connected_pair(&ctx);
    let seen = Seen::default();
    sock.async_receive(vec![0u8; 8], seen.recv_handler());
    sock.async_receive_from(vec![0u8; 8], seen.recv_from_handler());
    sock.async_wait(WaitType::Error, seen.wait_handler());
    sock.cancel().unwrap();
    assert!(seen.get().is_empty(), "cancel ran a handler inline");
    ctx.run();
    assert_eq!(seen.get(), vec![(Error::OPERATION_ABORTED, 0); 3]);
    assert!(sock.is_open(), "cancel must not close");
}

#[test]
fn a_completed_operation_is_not_affected_by_cancel_or_close() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    peer.send(b"here").unwrap();
    let seen = Seen::default();
    let send = sock.async_send(b"out".to_vec(), seen.send_handler()); // completes at once
    let recv = sock.async_receive(vec![0u8; 8], seen.recv_handler()); // data is there
    assert!(!send.is_pending() && !recv.is_pending());
    assert!(!send.cancel(CancellationType::ALL));
    sock.cancel().unwrap();
    sock.close();
    ctx.run();
    assert_eq!(seen.get(), vec![(Error::NONE, 3), (Error::NONE, 4)]);
}

#[test]
fn close_aborts_pending_operations_then_bad_descriptor() {
    let ctx = IoContext::new().unwrap();
    let (sock, _peer) = connected_pair(&ctx);
    let seen = Seen::default();
    sock.async_receive(vec![0u8; 8], seen.recv_handler());
    sock.async_wait(WaitType::Read, seen.wait_handler());
    sock.close();
    assert!(!sock.is_open());
    assert!(seen.get().is_empty(), "close ran a handler inline");
    sock.async_send(b"late".to_vec(), seen.send_handler());
    ctx.run();
    assert_eq!(
        seen.get(),
        vec![(Error::OPERATION_ABORTED, 0), (Error::OPERATION_ABORTED, 0), (Error::BAD_DESCRIPTOR, 0)]
    );
    // Everything else reports the closed socket too.
    let e = sock.cancel().unwrap_err();
    assert_eq!(Error::from(e), Error::BAD_DESCRIPTOR);
    assert_eq!(Error::from(sock.local_addr().unwrap_err()), Error::BAD_DESCRIPTOR);
    assert_eq!(Error::from(sock.send(&b"x"[..]).unwrap_err()), Error::BAD_DESCRIPTOR);
    sock.close(); // closing twice is harmless
}

#[test]
fn dropping_the_last_handle_aborts_pending_operations() {
    let ctx = IoContext::new().unwrap();
    let (sock, _peer) = connected_pair(&ctx);
    let seen = Seen::default();
    sock.async_receive(vec![0u8; 8], seen.recv_handler());
    let clone = sock.clone();
    drop(sock);
    assert!(clone.is_open(), "a clone keeps the socket open");
    drop(clone);
    assert!(seen.get().is_empty());
    assert_eq!(ctx.run(), 1);
    assert_eq!(seen.get(), vec![(Error::OPERATION_ABORTED, 0)]);
}

#[test]
fn operation_cancel_aborts_only_that_operation() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let seen = Seen::default();
    let first = sock.async_receive(vec![0u8; 16], seen.recv_handler());
    let second = sock.async_receive(vec![0u8; 16], seen.recv_handler());
    assert!(first.is_pending());
    assert!(first.cancel(CancellationType::PARTIAL));
    assert!(!first.cancel(CancellationType::PARTIAL), "second cancel of the same operation");
    assert!(!first.cancel(CancellationType::NONE));
    assert!(seen.get().is_empty());
    peer.send(b"to second").unwrap();
    ctx.run();
    assert_eq!(seen.get(), vec![(Error::OPERATION_ABORTED, 0), (Error::NONE, 9)]);
    assert!(!second.is_pending());
}

#[test]
fn oversize_datagram_gives_message_size_and_the_socket_stays_usable() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let seen = Seen::default();
    sock.async_send(vec![0u8; 70_000], seen.send_handler());
    sock.async_send(b"next".to_vec(), seen.send_handler());
    ctx.run();
    assert_eq!(seen.get(), vec![(Error::MESSAGE_SIZE, 0), (Error::NONE, 4)]);
    let mut buf = [0u8; 16];
    assert_eq!(peer.recv(&mut buf).unwrap(), 4);
}

fn dead_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind(local()).unwrap();
    s.local_addr().unwrap() // closed when `s` drops
}

#[test]
fn icmp_port_unreachable_gives_connection_refused_on_a_later_receive() {
    let ctx = IoContext::new().unwrap();
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    sock.connect(dead_port()).unwrap();
    let seen = Seen::default();
    sock.async_send(b"anyone?".to_vec(), seen.send_handler());
    let s = sock.clone();
    let seen2 = seen.clone();
    ctx.post(move || {
        s.async_receive(vec![0u8; 8], seen2.recv_handler());
    });
    ctx.run_for(Duration::from_secs(2));
    assert_eq!(seen.get(), vec![(Error::NONE, 7), (Error::CONNECTION_REFUSED, 0)]);
    // The socket stays usable.
    let peer = std_peer();
    sock.connect(peer.local_addr().unwrap()).unwrap();
    sock.async_send(b"ok".to_vec(), seen.send_handler());
    ctx.restart();
    ctx.run();
    assert_eq!(seen.get()[2], (Error::NONE, 2));
}

#[test]
fn icmp_port_unreachable_gives_connection_refused_on_a_later_send() {
    let ctx = IoContext::new().unwrap();
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    sock.connect(dead_port()).unwrap();
    let seen = Seen::default();
    sock.async_send(b"one".to_vec(), seen.send_handler());
    let s = sock.clone();
    let seen2 = seen.clone();
    ctx.post(move || {
        s.async_send(b"two".to_vec(), seen2.send_handler());
    });
    ctx.run();
    assert_eq!(seen.get(), vec![(Error::NONE, 3), (Error::CONNECTION_REFUSED, 0)]);
}

#[test]
fn zero_length_datagrams_are_sent_and_received() {
    let ctx = IoContext::new().unwrap();
    let a = UdpSocket::bind(&ctx, local()).unwrap();
    let b = UdpSocket::bind(&ctx, local()).unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    b.connect(a.local_addr().unwrap()).unwrap();
    let seen = Seen::default();
    b.async_receive(vec![0u8; 8], seen.recv_handler());
    a.async_send(Vec::<u8>::new(), seen.send_handler());
    a.async_send(b"x".to_vec(), seen.send_handler());
    b.async_receive(vec![0u8; 8], seen.recv_handler());
    ctx.run();
    let mut got = seen.get();
    got.sort_by_key(|p| p.1);
    // Two sends (0 and 1 bytes) and two receives (0 and 1 bytes).
    assert_eq!(got, vec![(Error::NONE, 0), (Error::NONE, 0), (Error::NONE, 1), (Error::NONE, 1)]);
}

#[test]
fn a_datagram_longer_than_the_buffer_is_truncated_to_it() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    peer.send(&[7u8; 100]).unwrap();
    peer.send(&[8u8; 100]).unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    sock.async_receive(vec![0u8; 10], move |e, n, b| g.borrow_mut().push((e, n, b)));
    let g = got.clone();
    // Scatter over two buffers: 4 + 6 bytes.
    sock.async_receive([vec![0u8; 4], vec![0u8; 6]], move |e, n, b| g.borrow_mut().push((e, n, b.concat())));
    ctx.run();
    let got = got.borrow();
    assert_eq!(got[0], (Error::NONE, 10, vec![7u8; 10]));
    assert_eq!(got[1], (Error::NONE, 10, vec![8u8; 10]));
    // The rest of each datagram is gone, not delivered to a later receive.
    assert_eq!(sock.available().unwrap(), 0);
}

#[test]
fn peek_leaves_the_datagram_for_the_next_receive() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    peer.send(b"peeked").unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    for flags in [MessageFlags::PEEK, MessageFlags::NONE] {
        let g = got.clone();
        sock.async_receive_with_flags(vec![0u8; 16], flags, move |e, n, b| {
            assert_eq!(e, Error::NONE);
            g.borrow_mut().push(b[..n].to_vec());
        });
    }
    ctx.run();
    assert_eq!(*got.borrow(), vec![b"peeked".to_vec(), b"peeked".to_vec()]);
    assert_eq!(sock.available().unwrap(), 0);
}

#[test]
fn receive_from_reports_the_sender_and_send_to_needs_no_connection() {
    let ctx = IoContext::new().unwrap();
    let a = UdpSocket::bind(&ctx, local()).unwrap();
    let b = UdpSocket::bind(&ctx, local()).unwrap();
    let from = Rc::new(Cell::new(None));
    let f = from.clone();
    b.async_receive_from(vec![0u8; 8], move |e, n, _, addr| {
        assert_eq!((e, n), (Error::NONE, 2));
        f.set(Some(addr));
    });
    a.async_send_to(b"hi".to_vec(), b.local_addr().unwrap(), |e, n| assert_eq!((e, n), (Error::NONE, 2)));
    ctx.run();
    assert_eq!(from.get(), Some(a.local_addr().unwrap()));
}

#[test]
fn send_on_an_unconnected_socket_is_an_error_in_the_handler() {
    let ctx = IoContext::new().unwrap();
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    let seen = Seen::default();
    sock.async_send(b"nowhere".to_vec(), seen.send_handler());
    let addr = Rc::new(Cell::new(None));
    let a = addr.clone();
    sock.close();
    sock.async_receive_from(vec![0u8; 4], move |e, _, _, from| a.set(Some((e, from))));
    ctx.run();
    assert_eq!(seen.get(), vec![(Error::NOT_CONNECTED, 0)]);
    let (e, from) = addr.get().unwrap();
    assert_eq!(e, Error::BAD_DESCRIPTOR);
    assert!(from.ip().is_unspecified(), "an error reports the unspecified address");
}

#[test]
fn read_wait_reports_data_that_is_already_there() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    peer.send(b"ready").unwrap();
    let seen = Seen::default();
    // Let the loop see (and consume) the readiness edge first.
    ctx.poll();
    ctx.restart();
    sock.async_wait(WaitType::Read, seen.wait_handler());
    ctx.run_for(Duration::from_secs(1));
    assert_eq!(seen.get(), vec![(Error::NONE, 0)]);
    assert_eq!(sock.available().unwrap(), 5, "a wait does not consume data");
}

#[test]
fn error_wait_completes_when_an_icmp_error_is_pending() {
    let ctx = IoContext::new().unwrap();
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    sock.connect(dead_port()).unwrap();
    let seen = Seen::default();
    sock.async_wait(WaitType::Error, seen.wait_handler());
    sock.async_send(b"x".to_vec(), seen.send_handler());
    ctx.run_for(Duration::from_secs(2));
    assert_eq!(seen.get(), vec![(Error::NONE, 1), (Error::NONE, 0)]);
}

#[test]
fn sync_operations_block_unless_nonblocking() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let mut buf = [0u8; 16];
    sock.set_nonblocking(true).unwrap();
    let e = sock.receive(&mut buf[..]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    sock.set_nonblocking(false).unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        peer.send(b"late").unwrap();
        peer
    });
    // Blocks until the other thread sends.
    assert_eq!(sock.receive(&mut buf[..]).unwrap(), 4);
    let peer = t.join().unwrap();
    assert_eq!(sock.send((&b"ab"[..], "cd")).unwrap(), 4);
    assert_eq!(peer.recv(&mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"abcd");
    assert_eq!(sock.send_to(&b"to"[..], peer.local_addr().unwrap()).unwrap(), 2);
    peer.send(b"back").unwrap();
    let (n, from) = sock.receive_from(&mut buf[..]).unwrap();
    assert_eq!((n, from), (4, peer.local_addr().unwrap()));
    let too_many = vec![&b"a"[..]; MAX_BUFFERS + 1];
    assert_eq!(Error::from(sock.send(too_many).unwrap_err()), Error::INVALID_ARGUMENT);
}

#[test]
fn release_returns_a_blocking_std_socket_and_aborts_pending_operations() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let seen = Seen::default();
    sock.async_receive(vec![0u8; 8], seen.recv_handler());
    let std_sock = sock.release().unwrap();
    assert!(!sock.is_open());
    ctx.run();
    assert_eq!(seen.get(), vec![(Error::OPERATION_ABORTED, 0)]);
    peer.send(b"std").unwrap();
    std_sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(std_sock.recv(&mut buf).unwrap(), 3);
    assert!(sock.release().is_err());
}

#[test]
fn options_and_addresses() {
    let ctx = IoContext::new().unwrap();
    let sock = UdpSocket::open(&ctx, socket2::Domain::IPV4).unwrap();
    sock.set_reuse_address(true).unwrap();
    sock.set_broadcast(true).unwrap();
    sock.set_ttl(7).unwrap();
    assert_eq!(sock.ttl().unwrap(), 7);
    sock.set_recv_buffer_size(1 << 16).unwrap();
    assert!(sock.recv_buffer_size().unwrap() >= 1 << 16);
    sock.set_send_buffer_size(1 << 16).unwrap();
    assert!(sock.send_buffer_size().unwrap() >= 1 << 16);
    assert!(sock.with_socket2(|s| s.broadcast().unwrap()).unwrap());
    sock.join_multicast_v4("239.1.2.3".parse().unwrap(), "127.0.0.1".parse().unwrap()).unwrap();
    sock.leave_multicast_v4("239.1.2.3".parse().unwrap(), "127.0.0.1".parse().unwrap()).unwrap();
    assert!(sock.peer_addr().is_err());
    let v6 = UdpSocket::bind(&ctx, "[::1]:0".parse().unwrap()).unwrap();
    assert!(v6.local_addr().unwrap().is_ipv6());
    sock.shutdown(std::net::Shutdown::Both).ok(); // unconnected: ENOTCONN is fine
}

#[test]
fn ipv6_round_trip() {
    let ctx = IoContext::new().unwrap();
    let a = UdpSocket::bind(&ctx, "[::1]:0".parse().unwrap()).unwrap();
    let b = UdpSocket::bind(&ctx, "[::1]:0".parse().unwrap()).unwrap();
    let seen = Seen::default();
    b.async_receive_from(vec![0u8; 8], seen.recv_from_handler());
    a.async_send_to(b"six".to_vec(), b.local_addr().unwrap(), seen.send_handler());
    ctx.run();
    assert_eq!(seen.get().len(), 2);
    assert!(seen.get().iter().all(|p| *p == (Error::NONE, 3)));
}

#[test]
fn operations_started_after_the_context_is_gone_drop_their_handler_unrun() {
    let ctx = IoContext::new().unwrap();
    let (sock, _peer) = connected_pair(&ctx);
    drop(ctx);
    assert!(!sock.is_open(), "dropping the context closes its sockets");
    let token = Rc::new(());
    let t = token.clone();
    let op = sock.async_send(b"x".to_vec(), move |_, _| {
        let _ = &t;
        panic!("must not run");
    });
    assert!(!op.is_pending());
    assert_eq!(Rc::strong_count(&token), 1, "the handler was not dropped");
}

#[test]
fn ttl_applies_to_the_socket_family() {
    let ctx = IoContext::new().unwrap();
    let v6 = UdpSocket::bind(&ctx, "[::1]:0".parse().unwrap()).unwrap();
    v6.set_ttl(9).unwrap();
    assert_eq!(v6.ttl().unwrap(), 9);
    assert_eq!(v6.with_socket2(|s| s.unicast_hops_v6().unwrap()).unwrap(), 9, "IPV6_UNICAST_HOPS was not set");
    let v4 = UdpSocket::bind(&ctx, local()).unwrap();
    v4.set_ttl(11).unwrap();
    assert_eq!(v4.with_socket2(|s| s.ttl_v4().unwrap()).unwrap(), 11);
}

/// An opened IPv4 socket with `SO_REUSEPORT` on, bound to `addr`.
fn reuse_port_socket(ctx: &IoContext, addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let sock = UdpSocket::open(ctx, socket2::Domain::IPV4)?;
    sock.set_reuse_port(true)?;
    sock.bind_to(addr)?;
    Ok(sock)
}

#[test]
fn bind_to_binds_an_opened_socket_that_then_works_as_a_bound_one() {
    let ctx = IoContext::new().unwrap();
    let sock = UdpSocket::open(&ctx, socket2::Domain::IPV4).unwrap();
    sock.bind_to(local()).unwrap();
    let addr = sock.local_addr().unwrap();
    assert_ne!(addr.port(), 0);
    // The socket was registered before it had an address: it receives as
    // one from `UdpSocket::bind` does.
    let peer = std_peer();
    peer.send_to(b"one", addr).unwrap();
    peer.send_to(b"two", addr).unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    for _ in 0..2 {
        let g = got.clone();
        sock.async_receive_from(vec![0u8; 8], move |e, n, buf, from| g.borrow_mut().push((e, buf[..n].to_vec(), from)));
    }
    ctx.run();
    let from = peer.local_addr().unwrap();
    assert_eq!(*got.borrow(), [(Error::NONE, b"one".to_vec(), from), (Error::NONE, b"two".to_vec(), from)]);

    assert_eq!(sock.bind_to(local()).unwrap_err().kind(), std::io::ErrorKind::InvalidInput, "bound twice");
    sock.close();
    let bad = std::io::Error::from(Error::BAD_DESCRIPTOR).raw_os_error();
    assert_eq!(sock.bind_to(local()).unwrap_err().raw_os_error(), bad);
    assert_eq!(sock.set_reuse_port(true).unwrap_err().raw_os_error(), bad);
    assert_eq!(sock.reuse_port().unwrap_err().raw_os_error(), bad);
}

#[test]
fn reuse_port_lets_sockets_share_a_port_only_when_each_sets_it() {
    let ctx = IoContext::new().unwrap();
    let probe = UdpSocket::open(&ctx, socket2::Domain::IPV4).unwrap();
    assert!(!probe.reuse_port().unwrap(), "off by default");
    probe.set_reuse_port(true).unwrap();
    assert!(probe.reuse_port().unwrap());

    let a = reuse_port_socket(&ctx, local()).unwrap();
    let addr = a.local_addr().unwrap();
    let b = reuse_port_socket(&ctx, addr).unwrap();
    assert_eq!(b.local_addr().unwrap(), addr);

    // A socket without the option cannot join them, in either form of bind.
    let plain = UdpSocket::open(&ctx, socket2::Domain::IPV4).unwrap();
    assert_eq!(plain.bind_to(addr).unwrap_err().kind(), std::io::ErrorKind::AddrInUse);
    assert_eq!(UdpSocket::bind(&ctx, addr).unwrap_err().kind(), std::io::ErrorKind::AddrInUse);

    // Nor can one with it join a socket that was bound without it.
    let first = UdpSocket::bind(&ctx, local()).unwrap();
    let err = reuse_port_socket(&ctx, first.local_addr().unwrap()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

/// Two sockets of one `SO_REUSEPORT` group and what each received.
struct Group {
    socks: [UdpSocket; 2],
    guard: ioctx::SteadyTimer,
    /// (receiving socket, sender index) of every datagram.
    got: RefCell<Vec<(usize, u8)>>,
    expected: usize,
}

impl Group {
    fn receive(self: Rc<Self>, which: usize) {
        let g = self.clone();
        self.socks[which].async_receive_from(vec![0u8; 8], move |e, n, buf, _| {
            if e.is_err() {
                return; // closed
            }
            assert_eq!(n, 1);
            g.got.borrow_mut().push((which, buf[0]));
            if g.got.borrow().len() == g.expected {
                g.close();
            } else {
                g.receive(which);
            }
        });
    }

    fn close(&self) {
        self.socks.iter().for_each(UdpSocket::close);
        self.guard.cancel();
    }
}

#[test]
fn reuse_port_spreads_senders_across_the_sockets() {
    // Linux picks the socket of a group by a hash of the sender's and the
    // receiver's address and port, keyed by a secret drawn at boot: one
    // sender always lands on the same socket, and which one cannot be known
    // in advance. 64 senders (64 source ports) all landing on the same one
    // of two sockets has a probability of 2^-63: never, in practice.
    const SENDERS: usize = 64;
    let ctx = IoContext::new().unwrap();
    let a = reuse_port_socket(&ctx, local()).unwrap();
    let addr = a.local_addr().unwrap();
    let b = reuse_port_socket(&ctx, addr).unwrap();
    // All open at once, so that the 64 source ports differ.
    let senders: Vec<_> = (0..SENDERS).map(|_| std_peer()).collect();
    for (i, s) in senders.iter().enumerate() {
        s.send_to(&[i as u8], addr).unwrap();
    }

    let group = Rc::new(Group {
        socks: [a, b],
        guard: ioctx::SteadyTimer::new(&ctx),
        got: RefCell::default(),
        expected: SENDERS,
    });
    group.clone().receive(0);
    group.clone().receive(1);
    let g = group.clone();
    group.guard.expires_after(Duration::from_secs(5));
    group.guard.async_wait(move |e| {
        if e.is_ok() {
            g.close(); // the assertions below say what was missing
        }
    });
    ctx.run();

    let got = group.got.borrow();
    let mut senders_seen: Vec<u8> = got.iter().map(|&(_, i)| i).collect();
    senders_seen.sort_unstable();
    assert_eq!(senders_seen, (0..SENDERS as u8).collect::<Vec<_>>(), "each datagram received once");
    let on_a = got.iter().filter(|&&(which, _)| which == 0).count();
    assert!(on_a > 0 && on_a < SENDERS, "{on_a} of {SENDERS} senders on the first socket: not spread");
}

#[test]
fn the_reuseport_example_answers_every_request_from_each_of_its_threads() {
    let out = std::process::Command::new(example("reuseport"))
        .args(["--threads", "2", "--requests", "3000"])
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("verified:      3000 replies"), "{stdout}");
    // "server thread 0:     1523 requests answered (...)"
    let answered: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("server thread ")?.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert_eq!(answered.len(), 2, "{stdout}");
    assert!(answered.iter().all(|&n| n > 0), "{stdout}");
}

/// Receives batched into one `recvmmsg` each get their own sender, in both
/// families (the batch reads the kernel's addresses itself).
#[test]
fn batched_receives_report_each_sender_in_both_families() {
    for host in ["127.0.0.1", "[::1]"] {
        let ctx = IoContext::new().unwrap();
        let server = UdpSocket::bind(&ctx, format!("{host}:0").parse().unwrap()).unwrap();
        let got: Rc<RefCell<Vec<(Error, usize, SocketAddr)>>> = Rc::default();
        for _ in 0..4 {
            let g = got.clone();
            server.async_receive_from(vec![0u8; 16], move |e, n, _, from| g.borrow_mut().push((e, n, from)));
        }
        // Four senders, one datagram each, all queued before the loop runs:
        // the first readiness event takes them in one batch.
        let senders: Vec<std::net::UdpSocket> =
            (0..4).map(|_| std::net::UdpSocket::bind(format!("{host}:0")).unwrap()).collect();
        for (i, s) in senders.iter().enumerate() {
            s.send_to(&vec![7u8; i + 1], server.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        ctx.run_for(Duration::from_secs(2));
        let got = got.borrow();
        let want: Vec<_> =
            senders.iter().enumerate().map(|(i, s)| (Error::NONE, i + 1, s.local_addr().unwrap())).collect();
        assert_eq!(*got, want, "{host}");
        assert!(ctx.metrics().reactor_waits <= 3, "{host}: not batched? {:?}", ctx.metrics());
    }
}

/// After `shutdown(Read)` the descriptor is readable for good, with or
/// without a datagram queued. A receive takes what is queued (Linux still
/// queues datagrams that arrive later) and otherwise ends at once with
/// `EOF`, as a blocking `recv` returns at once: it neither waits for ever
/// nor makes the loop spin on the readiness it cannot consume.
#[test]
fn receives_after_shutdown_for_reading_take_what_is_queued_then_end_with_eof() {
    let ctx = IoContext::new().unwrap();
    let (a, b) = connected_pair(&ctx);
    type Got = Rc<RefCell<Vec<(Error, Vec<u8>)>>>;
    let got: Got = Rc::default();
    let record = |got: &Got| {
        let got = got.clone();
        move |e: Error, n: usize, buf: Vec<u8>| got.borrow_mut().push((e, buf[..n].to_vec()))
    };
    // Pending before the shutdown: it ends with EOF.
    a.async_receive(vec![0u8; 64], record(&got));
    ctx.poll();
    a.shutdown(std::net::Shutdown::Read).unwrap();
    assert_eq!(ctx.run_for(Duration::from_secs(5)), 1);
    assert_eq!(*got.borrow(), vec![(Error::EOF, vec![])]);
    let m = ctx.metrics();
    assert!(m.reactor_waits < 10, "the loop spun: {m:?}");

    // A datagram queued after the shutdown is still received, then EOF again.
    b.send(b"late").unwrap();
    got.borrow_mut().clear();
    a.async_receive(vec![0u8; 64], record(&got));
    a.async_receive(vec![0u8; 64], record(&got));
    ctx.restart();
    ctx.reset_metrics();
    assert_eq!(ctx.run_for(Duration::from_secs(5)), 2);
    assert_eq!(*got.borrow(), vec![(Error::NONE, b"late".to_vec()), (Error::EOF, vec![])]);
    assert!(ctx.metrics().reactor_waits < 10, "the loop spun: {:?}", ctx.metrics());

    // The blocking form returns the same error instead of polling for ever.
    let (tx, rx) = std::sync::mpsc::channel();
    let sock = a.release().unwrap();
    std::thread::spawn(move || {
        let ctx = IoContext::new().unwrap();
        let a = UdpSocket::from_std(&ctx.executor(), sock).unwrap();
        let _ = tx.send(a.receive(&mut [0u8; 64][..]).map_err(|e| e.kind()));
    });
    let r = rx.recv_timeout(Duration::from_secs(5)).expect("the blocking receive hung or spun");
    assert_eq!(r, Err(std::io::ErrorKind::UnexpectedEof));
}

/// With send coalescing on, inside a pass of handlers a datagram socket
/// sends its first datagram at once and defers the others to the end of the
/// pass, where they leave together (one `sendmmsg`), each completing with its
/// own result, in order. Outside a pass every send is tried at once, and a
/// call that returns early (`stop`) still sends what its handlers deferred.
/// Off (the default), every send of a pass is tried at once (S1).
#[test]
fn a_pass_s_later_sends_leave_together_at_its_end_and_in_order() {
    let ctx = IoContext::new().unwrap();
    let (a, peer) = connected_pair(&ctx);
    peer.set_nonblocking(true).unwrap();
    let recv = |peer: &std::net::UdpSocket| {
        let mut buf = [0u8; 64];
        peer.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    };
    // Off: every send of a pass leaves at once.
    assert!(!a.send_coalescing());
    let (a0, p0) = (a.clone(), peer.try_clone().unwrap());
    ctx.executor().post(move || {
        for i in 0..3u8 {
            a0.async_send(vec![i; 2], |e, _| assert_eq!(e, Error::NONE));
        }
        for i in 0..3u8 {
            let mut buf = [0u8; 8];
            assert_eq!(p0.recv(&mut buf).map(|n| buf[..n].to_vec()).ok(), Some(vec![i; 2]));
        }
    });
    ctx.run();
    a.set_send_coalescing(true).unwrap();
    assert!(a.send_coalescing());
    // Outside a pass: both at once.
    a.async_send(vec![1u8; 3], |e, n| assert_eq!((e, n), (Error::NONE, 3)));
    a.async_send(vec![2u8; 3], |e, n| assert_eq!((e, n), (Error::NONE, 3)));
    assert_eq!((recv(&peer), recv(&peer)), (Some(vec![1; 3]), Some(vec![2; 3])));
    ctx.restart();
    ctx.run();

    // Inside a pass: the first at once, the rest when the pass ends.
    let done = Rc::new(RefCell::new(Vec::new()));
    let (a2, d, p) = (a.clone(), done.clone(), peer.try_clone().unwrap());
    ctx.restart();
    ctx.executor().post(move || {
        for i in 0..5u8 {
            let d = d.clone();
            a2.async_send(vec![i; 10], move |e, n| d.borrow_mut().push((i, e, n)));
        }
        let mut buf = [0u8; 64];
        assert_eq!(p.recv(&mut buf).unwrap(), 10, "the pass's first send left at once");
        assert_eq!(buf[0], 0);
        assert!(p.recv(&mut buf).is_err(), "the others wait for the end of the pass");
    });
    ctx.run();
    assert_eq!(*done.borrow(), (0..5).map(|i| (i, Error::NONE, 10)).collect::<Vec<_>>());
    for i in 1..5u8 {
        assert_eq!(recv(&peer), Some(vec![i; 10]));
    }
    assert_eq!(recv(&peer), None);

    // A handler that stops the loop: what it deferred leaves as run() returns.
    let (a3, ex) = (a.clone(), ctx.executor());
    ctx.restart();
    ctx.executor().post(move || {
        for i in 0..3u8 {
            a3.async_send(vec![i; 4], |e, _| assert_eq!(e, Error::NONE));
        }
        ex.stop();
    });
    ctx.run();
    for i in 0..3u8 {
        assert_eq!(recv(&peer), Some(vec![i; 4]), "datagram {i} left when run() returned");
    }

    // Likewise `run_one`, which returns after one handler, mid-pass (the
    // stopped run's completions are run first).
    ctx.restart();
    ctx.run();
    let a4 = a.clone();
    ctx.restart();
    ctx.executor().post(move || {
        for i in 0..3u8 {
            a4.async_send(vec![i; 5], |e, _| assert_eq!(e, Error::NONE));
        }
    });
    ctx.executor().post(|| {});
    assert_eq!(ctx.run_one(), 1);
    for i in 0..3u8 {
        assert_eq!(recv(&peer), Some(vec![i; 5]), "datagram {i} left when run_one() returned");
    }
    ctx.run();
}
