//! Per-datagram metadata (`async_receive_msg`, `async_send_msg` and the
//! `set_recv_*` switches): each test a real round trip on the loopback
//! interface, and what the simulated backend fills.

// Linux only: the metadata switches, error reports and GRO are Linux only for now.
#![cfg(target_os = "linux")]

mod common;
use common::{addr, ip};
use ioctx::net::{Ecn, MessageFlags, RecvMeta, SendMeta, UdpSocket};
use ioctx::{Error, IoContext};
use std::cell::RefCell;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

type Got = Rc<RefCell<Vec<(Error, RecvMeta, Vec<u8>)>>>;

/// Receives `n` datagrams with their metadata into `len`-byte buffers.
fn receive(ctx: &IoContext, s: &UdpSocket, n: usize, len: usize) -> Vec<(Error, RecvMeta, Vec<u8>)> {
    let got: Got = Rc::new(RefCell::new(Vec::new()));
    for _ in 0..n {
        let g = got.clone();
        s.async_receive_msg(vec![0u8; len], move |e, meta, buf| {
            g.borrow_mut().push((e, meta, buf[..meta.len].to_vec()))
        });
    }
    ctx.run_for(Duration::from_secs(5));
    ctx.restart();
    let got = got.take();
    assert_eq!(got.len(), n, "every receive completed");
    got
}

/// False (with a note) when this host has no IPv6 loopback.
fn have_ipv6() -> bool {
    match std::net::UdpSocket::bind("[::1]:0") {
        Ok(_) => true,
        Err(e) => {
            eprintln!("no IPv6 loopback here ({e}): skipped");
            false
        }
    }
}

#[test]
fn a_socket_bound_to_every_address_learns_where_each_datagram_went_and_answers_from_there() {
    let ctx = IoContext::new().unwrap();
    let server = UdpSocket::bind(&ctx, addr("0.0.0.0:0")).unwrap();
    server.set_recv_pktinfo(true).unwrap();
    let port = server.local_addr().unwrap().port();
    // A connected client takes only datagrams from the address it contacted.
    let client = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    client.connect(SocketAddr::new(ip("127.0.0.2"), port)).unwrap();
    client.send(&b"request"[..]).unwrap();
    let [(e, meta, bytes)] = receive(&ctx, &server, 1, 64).try_into().unwrap();
    assert_eq!((e, bytes.as_slice()), (Error::NONE, &b"request"[..]));
    assert_eq!(meta.local, Some(ip("127.0.0.2")));
    assert!(meta.ifindex.is_some_and(|i| i > 0), "{meta:?}");
    assert_eq!(meta.from, client.local_addr().unwrap());
    assert!(!meta.truncated);
    // Not asked for: none.
    assert_eq!((meta.ecn, meta.ttl, meta.timestamp, meta.segment_size), (None, None, None, None));
    let reply = SendMeta::new().to(meta.from).from_ip(meta.local.unwrap());
    server.async_send_msg(b"answer".to_vec(), reply, |e, n| assert_eq!((e, n), (Error::NONE, 6)));
    ctx.run();
    ctx.restart();
    client.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    let n = client.receive(&mut buf[..]).expect("the connected client took the answer");
    assert_eq!(&buf[..n], b"answer");
}

#[test]
fn ipv6_pktinfo_names_the_destination_too() {
    if !have_ipv6() {
        return;
    }
    let ctx = IoContext::new().unwrap();
    let server = UdpSocket::bind(&ctx, addr("[::]:0")).unwrap();
    server.set_recv_pktinfo(true).unwrap();
    let port = server.local_addr().unwrap().port();
    let client = UdpSocket::bind(&ctx, addr("[::1]:0")).unwrap();
    client.send_to(&b"six"[..], SocketAddr::new(ip("::1"), port)).unwrap();
    let [(e, meta, _)] = receive(&ctx, &server, 1, 16).try_into().unwrap();
    assert_eq!((e, meta.local), (Error::NONE, Some(ip("::1"))));
    let reply = SendMeta::new().to(meta.from).from_ip(ip("::1"));
    server.async_send_msg(b"back".to_vec(), reply, |e, n| assert_eq!((e, n), (Error::NONE, 4)));
    ctx.run();
    let mut buf = [0u8; 8];
    client.set_nonblocking(true).unwrap();
    let (n, from) = client.receive_from(&mut buf[..]).unwrap();
    assert_eq!((&buf[..n], from.ip()), (&b"back"[..], ip("::1")));
}

#[test]
fn ecn_marks_arrive_as_sent_on_ipv4_and_ipv6() {
    let mut families = vec![("127.0.0.1:0", "127.0.0.1")];
    if have_ipv6() {
        families.push(("[::1]:0", "::1"));
    }
    for (bind, host) in families {
        let ctx = IoContext::new().unwrap();
        let rx = UdpSocket::bind(&ctx, addr(bind)).unwrap();
        rx.set_recv_ecn(true).unwrap();
        let to = SocketAddr::new(ip(host), rx.local_addr().unwrap().port());
        let tx = UdpSocket::bind(&ctx, addr(bind)).unwrap();
        for ecn in [Ecn::Ect0, Ecn::Ce, Ecn::Ect1, Ecn::NotEct] {
            tx.async_send_msg(vec![ecn.bits()], SendMeta::new().to(to).ecn(ecn), |e, _| assert_eq!(e, Error::NONE));
        }
        let got = receive(&ctx, &rx, 4, 8);
        let marks: Vec<_> = got.iter().map(|(e, m, b)| (*e, m.ecn, b[0])).collect();
        assert_eq!(
            marks,
            [
                (Error::NONE, Some(Ecn::Ect0), 0b10),
                (Error::NONE, Some(Ecn::Ce), 0b11),
                (Error::NONE, Some(Ecn::Ect1), 0b01),
                (Error::NONE, Some(Ecn::NotEct), 0b00)
            ],
            "{host}"
        );
    }
}

#[test]
fn the_ttl_set_on_the_sender_is_seen_by_the_receiver() {
    let ctx = IoContext::new().unwrap();
    let rx = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    rx.set_recv_ttl(true).unwrap();
    let tx = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    tx.set_ttl(7).unwrap();
    tx.send_to(&b"t"[..], rx.local_addr().unwrap()).unwrap();
    let [(e, meta, _)] = receive(&ctx, &rx, 1, 8).try_into().unwrap();
    assert_eq!((e, meta.ttl), (Error::NONE, Some(7)));
    // IPv6: the hop limit.
    if have_ipv6() {
        let rx = UdpSocket::bind(&ctx, addr("[::1]:0")).unwrap();
        rx.set_recv_ttl(true).unwrap();
        let tx = UdpSocket::bind(&ctx, addr("[::1]:0")).unwrap();
        tx.with_socket2(|s| s.set_unicast_hops_v6(9)).unwrap().unwrap();
        tx.send_to(&b"t"[..], rx.local_addr().unwrap()).unwrap();
        let [(e, meta, _)] = receive(&ctx, &rx, 1, 8).try_into().unwrap();
        assert_eq!((e, meta.ttl), (Error::NONE, Some(9)));
    }
}

#[test]
fn receive_timestamps_are_recent_and_never_go_backwards() {
    let ctx = IoContext::new().unwrap();
    let rx = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    rx.set_recv_timestamps(true).unwrap();
    let tx = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    let to = rx.local_addr().unwrap();
    // Linux turns timestamping on for the whole stack lazily (a deferred
    // static key): until it is on, a datagram is stamped when it is read,
    // not when it came, and can look newer than the next one. Let it settle.
    for _ in 0..3 {
        tx.send_to(&[0u8][..], to).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        receive(&ctx, &rx, 1, 8);
    }
    let mut last = SystemTime::UNIX_EPOCH;
    for round in 0..10 {
        for i in 0..100u8 {
            tx.send_to(&[i][..], to).unwrap();
        }
        for (e, meta, _) in receive(&ctx, &rx, 100, 8) {
            assert_eq!(e, Error::NONE);
            let t = meta.timestamp.expect("a timestamp");
            let now = SystemTime::now();
            let off = now.duration_since(t).unwrap_or_else(|e| e.duration());
            assert!(off < Duration::from_secs(1), "round {round}: {off:?} from now");
            assert!(t >= last, "round {round}: went backwards");
            last = t;
        }
    }
}

#[test]
fn a_datagram_longer_than_the_buffers_is_reported_truncated() {
    let ctx = IoContext::new().unwrap();
    let rx = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    let tx = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    tx.send_to(&[9u8; 2000][..], rx.local_addr().unwrap()).unwrap();
    tx.send_to(&[8u8; 100][..], rx.local_addr().unwrap()).unwrap();
    let got = receive(&ctx, &rx, 2, 100);
    assert_eq!((got[0].1.len, got[0].1.truncated, got[0].2.len()), (100, true, 100));
    assert_eq!((got[1].1.len, got[1].1.truncated), (100, false), "exactly the buffer: not truncated");
}

#[test]
fn a_segment_size_cuts_one_send_into_datagrams() {
    let ctx = IoContext::new().unwrap();
    let rx = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    let tx = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    let data: Vec<u8> = (0..1024u32).map(|i| (i / 64) as u8).collect();
    let meta = SendMeta::new().to(rx.local_addr().unwrap()).segment_size(64);
    tx.async_send_msg(data, meta, |e, n| assert_eq!((e, n), (Error::NONE, 1024)));
    let got = receive(&ctx, &rx, 16, 2048);
    for (i, (e, m, b)) in got.iter().enumerate() {
        assert_eq!((*e, m.len), (Error::NONE, 64));
        assert!(b.iter().all(|&x| x == i as u8), "datagram {i} in order");
    }
    // A segment size of 0 is refused in the handler.
    let r = Rc::new(RefCell::new(None));
    let r2 = r.clone();
    let meta = SendMeta::new().to(rx.local_addr().unwrap()).segment_size(0);
    tx.async_send_msg(vec![1u8; 10], meta, move |e, n| *r2.borrow_mut() = Some((e, n)));
    assert!(r.borrow().is_none(), "never inline");
    ctx.run();
    assert_eq!(r.take(), Some((Error::INVALID_ARGUMENT, 0)));
}

#[test]
fn a_gro_receiver_gets_coalesced_datagrams_with_their_stride() {
    let ctx = IoContext::new().unwrap();
    let rx = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    rx.set_gro(true).unwrap();
    let tx = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    let data: Vec<u8> = (0..1024u32).map(|i| (i / 64) as u8).collect();
    let meta = SendMeta::new().to(rx.local_addr().unwrap()).segment_size(64);
    tx.async_send_msg(data.clone(), meta, |e, n| assert_eq!((e, n), (Error::NONE, 1024)));
    ctx.run();
    ctx.restart();
    // However the kernel grouped them: the lengths add up, each with its stride.
    let mut total = 0;
    let mut bytes = Vec::new();
    while total < 1024 {
        let [(e, meta, b)] = receive(&ctx, &rx, 1, 65536).try_into().unwrap();
        assert_eq!(e, Error::NONE);
        assert_eq!(meta.segment_size, Some(64), "{meta:?}");
        total += meta.len;
        bytes.extend_from_slice(&b);
    }
    assert_eq!(total, 1024);
    assert!(bytes == data, "in order, byte for byte");
}

/// Runs `body` on a real context (IPv4, and IPv6 where there is a loopback)
/// and on a simulated one (two hosts there).
fn icmp_on_both_backends(body: impl Fn(&IoContext, &str, &str)) {
    body(&IoContext::new().unwrap(), "127.0.0.1", "127.0.0.1");
    if have_ipv6() {
        body(&IoContext::new().unwrap(), "::1", "::1");
    }
    body(&IoContext::simulated(11), "10.0.0.1", "10.0.0.2");
}

#[test]
fn a_refusal_is_reported_to_an_unconnected_socket_and_its_receive_loop_goes_on() {
    icmp_on_both_backends(|ctx, me, other| {
        let server = UdpSocket::bind(ctx, SocketAddr::new(ip(me), 0)).unwrap();
        server.set_recv_errors(true).unwrap();
        let closed = UdpSocket::bind(ctx, SocketAddr::new(ip(other), 0)).unwrap();
        let gone = closed.local_addr().unwrap();
        closed.close();
        let received = Rc::new(RefCell::new(Vec::new()));
        let r2 = received.clone();
        server.async_receive_from(vec![0u8; 16], move |e, n, b, from| r2.borrow_mut().push((e, b[..n].to_vec(), from)));
        server.async_send_to(b"anyone?".to_vec(), gone, |e, _| assert_eq!(e, Error::NONE));
        let report = Rc::new(RefCell::new(None));
        let r2 = report.clone();
        server.async_receive_error(move |e, icmp| *r2.borrow_mut() = Some((e, icmp)));
        ctx.run_for(Duration::from_secs(1));
        ctx.restart();
        let (e, icmp) = report.take().expect("reported");
        assert_eq!((e, icmp.dest, icmp.error), (Error::NONE, gone, Error::CONNECTION_REFUSED));
        assert_eq!(icmp.reporter, Some(ip(other)));
        assert!(received.borrow().is_empty(), "the receive did not end: {:?}", received.borrow());
        // The receive still takes the next datagram.
        let client = UdpSocket::bind(ctx, SocketAddr::new(ip(other), 0)).unwrap();
        client.async_send_to(b"hello".to_vec(), server.local_addr().unwrap(), |e, _| assert_eq!(e, Error::NONE));
        ctx.run_for(Duration::from_secs(1));
        assert_eq!(*received.borrow(), [(Error::NONE, b"hello".to_vec(), client.local_addr().unwrap())]);
    });
}

#[test]
fn reports_nobody_takes_do_not_spin_the_loop_and_wait_for_a_later_ask() {
    icmp_on_both_backends(|ctx, me, other| {
        let s = UdpSocket::bind(ctx, SocketAddr::new(ip(me), 0)).unwrap();
        s.set_recv_errors(true).unwrap();
        let mut gone = Vec::new();
        for _ in 0..3 {
            let closed = UdpSocket::bind(ctx, SocketAddr::new(ip(other), 0)).unwrap();
            gone.push(closed.local_addr().unwrap());
            closed.close();
        }
        // A receive keeps the socket registered while the errors come in.
        s.async_receive(vec![0u8; 4], |e, _, _| assert_eq!(e, Error::OPERATION_ABORTED));
        for to in &gone {
            s.async_send_to(b"x".to_vec(), *to, |e, _| assert_eq!(e, Error::NONE));
        }
        let before = ctx.metrics().loop_turns;
        ctx.run_for(Duration::from_millis(100));
        ctx.restart();
        assert!(ctx.metrics().loop_turns - before < 50, "the loop spun on error readiness");
        let got = Rc::new(RefCell::new(Vec::new()));
        for _ in 0..3 {
            let g = got.clone();
            s.async_receive_error(move |e, icmp| g.borrow_mut().push((e, icmp.dest)));
        }
        s.cancel().unwrap();
        ctx.run();
        let got = got.take();
        assert_eq!(got, gone.iter().map(|a| (Error::NONE, *a)).collect::<Vec<_>>(), "in order, each once");
    });
}

#[test]
fn a_send_that_fails_for_itself_still_fails_with_error_reports_on() {
    if !have_ipv6() {
        return;
    }
    let ctx = IoContext::new().unwrap();
    // An IPv6-only socket has no route to an IPv4-mapped address: every
    // send fails so, and must not be taken for a report and retried for ever.
    let s = UdpSocket::open(&ctx, socket2::Domain::IPV6).unwrap();
    s.with_socket2(|s| s.set_only_v6(true)).unwrap().unwrap();
    s.bind_to(addr("[::1]:0")).unwrap();
    s.set_recv_errors(true).unwrap();
    let e = s.send_to(&b"x"[..], addr("[::ffff:127.0.0.1]:9")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(101), "ENETUNREACH: {e}");
    let r = Rc::new(RefCell::new(None));
    let r2 = r.clone();
    s.async_send_to(b"x".to_vec(), addr("[::ffff:127.0.0.1]:9"), move |e, n| *r2.borrow_mut() = Some((e, n)));
    ctx.run();
    assert_eq!(r.take(), Some((Error::from_raw_os_error(101), 0)));
}

#[test]
fn a_report_wait_is_an_operation_like_any_other() {
    let ctx = IoContext::new().unwrap();
    let s = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    let seen = Rc::new(RefCell::new(Vec::new()));
    // Without the switch no report would ever come: said at once.
    let s2 = seen.clone();
    s.async_receive_error(move |e, _| s2.borrow_mut().push(("no switch", e)));
    assert!(seen.borrow().is_empty(), "never inline");
    ctx.run();
    ctx.restart();
    s.set_recv_errors(true).unwrap();
    // Cancelled: aborted; the next report goes to the next wait.
    let s2 = seen.clone();
    let op = s.async_receive_error(move |e, _| s2.borrow_mut().push(("cancelled", e)));
    assert!(op.cancel(ioctx::CancellationType::TERMINAL));
    let s2 = seen.clone();
    s.async_receive_error(move |e, icmp| s2.borrow_mut().push(("reported", if e.is_ok() { icmp.error } else { e })));
    let closed = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    let gone = closed.local_addr().unwrap();
    closed.close();
    s.send_to(&b"x"[..], gone).unwrap();
    s.send_to(&b"y"[..], gone).unwrap();
    ctx.run_for(Duration::from_secs(1));
    ctx.restart();
    // A report kept when the socket closes is not handed out after.
    s.close();
    let s2 = seen.clone();
    s.async_receive_error(move |e, _| s2.borrow_mut().push(("closed", e)));
    ctx.run();
    assert_eq!(
        *seen.borrow(),
        [
            ("no switch", Error::INVALID_ARGUMENT),
            ("cancelled", Error::OPERATION_ABORTED),
            ("reported", Error::CONNECTION_REFUSED),
            ("closed", Error::BAD_DESCRIPTOR)
        ]
    );
}

#[test]
fn batched_receives_go_on_past_a_report_and_waits_get_reports_in_order() {
    let ctx = IoContext::new().unwrap();
    let s = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    s.set_recv_errors(true).unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    // Several receives queued: the loop takes them in one recvmmsg batch.
    for _ in 0..4 {
        let g = got.clone();
        s.async_receive_from(vec![0u8; 8], move |e, n, _, _| g.borrow_mut().push((e, n)));
    }
    // Two waits, the older first; the second starts after the error came.
    let order = Rc::new(RefCell::new(Vec::new()));
    let o = order.clone();
    s.async_receive_error(move |e, _| o.borrow_mut().push(("first", e)));
    ctx.poll();
    let closed = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    let gone = closed.local_addr().unwrap();
    closed.close();
    s.send_to(&b"x"[..], gone).unwrap();
    s.send_to(&b"y"[..], gone).unwrap();
    // The datagrams and the refusal's error come in one event; the batch
    // runs before the reports are drained, with the socket's error set.
    let peer = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    for i in 0..4u8 {
        peer.send_to(&[i; 4][..], s.local_addr().unwrap()).unwrap();
    }
    ctx.run_for(Duration::from_millis(300));
    ctx.restart();
    assert_eq!(*got.borrow(), [(Error::NONE, 4); 4], "no receive ended with the refusal");
    let o = order.clone();
    s.async_receive_error(move |e, _| o.borrow_mut().push(("second", e)));
    ctx.run_for(Duration::from_millis(100));
    assert_eq!(*order.borrow(), [("first", Error::NONE), ("second", Error::NONE)]);
}

#[test]
fn an_oversized_send_is_its_own_error_and_queues_one_report() {
    let ctx = IoContext::new().unwrap();
    let s = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    s.set_recv_errors(true).unwrap();
    let e = s.send_to(&vec![0u8; 65_510][..], addr("127.0.0.1:9")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(90), "EMSGSIZE: {e}");
    let got = Rc::new(RefCell::new(Vec::new()));
    for _ in 0..2 {
        let g = got.clone();
        s.async_receive_error(move |e, icmp| g.borrow_mut().push((e, icmp.error)));
    }
    ctx.run_for(Duration::from_millis(100));
    ctx.restart();
    // One report (the kernel's own), the second wait still waiting.
    assert_eq!(*got.borrow(), [(Error::NONE, Error::MESSAGE_SIZE)]);
    // Turning the switch off ends it: no report could come.
    s.set_recv_errors(false).unwrap();
    ctx.run();
    assert_eq!(got.borrow()[1], (Error::INVALID_ARGUMENT, Error::NONE));
}

#[test]
fn a_connected_socket_with_error_reports_on_gets_its_refusal_as_a_report() {
    let ctx = IoContext::new().unwrap();
    let s = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    let closed = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    let gone = closed.local_addr().unwrap();
    closed.close();
    s.connect(gone).unwrap();
    s.set_recv_errors(true).unwrap();
    let received = Rc::new(RefCell::new(None));
    let r2 = received.clone();
    s.async_receive(vec![0u8; 4], move |e, n, _| *r2.borrow_mut() = Some((e, n)));
    s.send(&b"x"[..]).unwrap();
    let report = Rc::new(RefCell::new(None));
    let r2 = report.clone();
    s.async_receive_error(move |e, icmp| *r2.borrow_mut() = Some((e, icmp.dest, icmp.error)));
    ctx.run_for(Duration::from_millis(200));
    assert_eq!(report.take(), Some((Error::NONE, gone, Error::CONNECTION_REFUSED)));
    assert_eq!(received.take(), None, "the receive waits on");
    assert_eq!(s.send(&b"y"[..]).unwrap(), 1, "and sends go on");
}

#[test]
fn a_dual_stack_socket_reports_and_answers_ipv4_traffic_in_its_own_family() {
    if !have_ipv6() {
        return;
    }
    let ctx = IoContext::new().unwrap();
    let server = UdpSocket::bind(&ctx, addr("[::]:0")).unwrap();
    server.set_recv_pktinfo(true).unwrap();
    server.set_recv_ecn(true).unwrap();
    let port = server.local_addr().unwrap().port();
    let client = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    client.set_recv_ecn(true).unwrap();
    client.connect(SocketAddr::new(ip("127.0.0.2"), port)).unwrap();
    client.send(&b"v4"[..]).unwrap();
    let [(e, meta, _)] = receive(&ctx, &server, 1, 8).try_into().unwrap();
    assert_eq!((e, meta.local), (Error::NONE, Some(ip("::ffff:127.0.0.2"))));
    // The answer leaves from 127.0.0.2 (the client is connected there),
    // ECN-marked though the socket is IPv6.
    let reply = SendMeta::new().to(meta.from).from_ip(meta.local.unwrap()).ecn(Ecn::Ce);
    server.async_send_msg(b"back".to_vec(), reply, |e, n| assert_eq!((e, n), (Error::NONE, 4)));
    let [(e, meta, bytes)] = receive(&ctx, &client, 1, 8).try_into().unwrap();
    assert_eq!((e, bytes.as_slice(), meta.ecn), (Error::NONE, &b"back"[..], Some(Ecn::Ce)));
    // A source of the wrong family is refused, not ignored.
    let bad = SendMeta::new().to(addr("127.0.0.1:9")).from_ip(ip("::1"));
    let r = Rc::new(RefCell::new(None));
    let r2 = r.clone();
    let v4 = UdpSocket::bind(&ctx, addr("0.0.0.0:0")).unwrap();
    v4.async_send_msg(vec![1u8], bad, move |e, n| *r2.borrow_mut() = Some((e, n)));
    ctx.run();
    assert_eq!(r.take(), Some((Error::INVALID_ARGUMENT, 0)));
}

#[test]
fn receive_and_send_msg_keep_the_rules_never_inline_closed_and_aborted() {
    let ctx = IoContext::new().unwrap();
    let s = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s2 = seen.clone();
    s.async_receive_msg(vec![0u8; 8], move |e, m, _| s2.borrow_mut().push((e, m.len)));
    s.close();
    let s2 = seen.clone();
    s.async_receive_msg(vec![0u8; 8], move |e, m, _| s2.borrow_mut().push((e, m.len)));
    let s2 = seen.clone();
    s.async_send_msg(vec![1u8], SendMeta::new().to(addr("127.0.0.1:9")), move |e, n| s2.borrow_mut().push((e, n)));
    assert!(seen.borrow().is_empty(), "never inline");
    ctx.run();
    assert_eq!(*seen.borrow(), [(Error::OPERATION_ABORTED, 0), (Error::BAD_DESCRIPTOR, 0), (Error::BAD_DESCRIPTOR, 0)]);
}

#[test]
fn the_simulated_backend_fills_the_sender_the_destination_and_truncation() {
    let ctx = IoContext::simulated(5);
    let server = UdpSocket::bind(&ctx, addr("0.0.0.0:53")).unwrap();
    let before = receive_after(&ctx, &server, "10.0.0.7");
    assert_eq!(before.local, None, "not asked for");
    server.set_recv_pktinfo(true).unwrap();
    let meta = receive_after(&ctx, &server, "10.0.0.8");
    assert_eq!((meta.local, meta.from.ip(), meta.len, meta.truncated), (Some(ip("10.0.0.8")), ip("10.0.0.1"), 4, true));
    // ECN, TTLs, timestamps and GRO are not simulated: said so.
    for r in
        [server.set_recv_ecn(true), server.set_recv_ttl(true), server.set_recv_timestamps(true), server.set_gro(true)]
    {
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Unsupported);
    }
    // An answer from the address named leaves from there.
    let client = UdpSocket::bind(&ctx, addr("10.0.0.1:0")).unwrap();
    let reply = SendMeta::new().to(client.local_addr().unwrap()).from_ip(ip("10.0.0.9"));
    server.async_send_msg(b"hi".to_vec(), reply, |e, n| assert_eq!((e, n), (Error::NONE, 2)));
    let [(e, meta, _)] = receive(&ctx, &client, 1, 8).try_into().unwrap();
    assert_eq!((e, meta.from), (Error::NONE, addr("10.0.0.9:53")));
}

/// A 10-byte datagram from 10.0.0.1 to `host`:53, received into 4 bytes.
fn receive_after(ctx: &IoContext, server: &UdpSocket, host: &str) -> RecvMeta {
    let client = UdpSocket::bind(ctx, addr("10.0.0.1:0")).unwrap();
    client.async_send_to(vec![0u8; 10], SocketAddr::new(ip(host), 53), |e, _| assert_eq!(e, Error::NONE));
    let [(e, meta, _)] = receive(ctx, server, 1, 4).try_into().unwrap();
    assert_eq!(e, Error::NONE);
    meta
}

/// Log records of the `ioctx` crate, with the thread that logged each: a
/// test reads its own thread's, to see which system call the loop chose.
struct Records(std::sync::Mutex<Vec<(std::thread::ThreadId, String)>>);

impl log::Log for Records {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.target().starts_with("ioctx")
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = record.args().to_string();
            self.0.lock().unwrap().push((std::thread::current().id(), line));
        }
    }
    fn flush(&self) {}
}

static RECORDS: Records = Records(std::sync::Mutex::new(Vec::new()));

/// This thread's log lines from now on (the logger is the process's,
/// installed once).
fn log_lines_of_this_thread<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&RECORDS).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Trace);
    });
    let me = std::thread::current().id();
    RECORDS.0.lock().unwrap().retain(|(t, _)| *t != me);
    let r = f();
    let lines = RECORDS.0.lock().unwrap().iter().filter(|(t, _)| *t == me).map(|(_, l)| l.clone()).collect();
    (r, lines)
}

#[test]
fn queued_receives_on_a_metadata_socket_share_one_recvmmsg_and_each_keeps_its_own() {
    let ctx = IoContext::new().unwrap();
    let rx = UdpSocket::bind(&ctx, addr("0.0.0.0:0")).unwrap();
    rx.set_recv_pktinfo(true).unwrap();
    rx.set_recv_ttl(true).unwrap();
    rx.set_recv_ecn(true).unwrap();
    let port = rx.local_addr().unwrap().port();
    // Eight receives wait, two of them plain (they take a sender only).
    type Seen = Rc<RefCell<Vec<(usize, Option<RecvMeta>, Vec<u8>)>>>;
    let seen: Seen = Rc::new(RefCell::new(Vec::new()));
    for i in 0..8 {
        let s = seen.clone();
        if i == 2 || i == 6 {
            rx.async_receive_from(vec![0u8; 64], move |e, n, buf, from| {
                assert_eq!(e, Error::NONE);
                assert_eq!(from.ip(), ip("127.0.0.1"));
                s.borrow_mut().push((i, None, buf[..n].to_vec()))
            });
        } else {
            rx.async_receive_msg(vec![0u8; 64], move |e, meta, buf| {
                assert_eq!(e, Error::NONE);
                s.borrow_mut().push((i, Some(meta), buf[..meta.len].to_vec()))
            });
        }
    }
    ctx.poll();
    ctx.restart();
    assert!(seen.borrow().is_empty());
    // Eight datagrams, each with its own TTL, mark and destination, queued
    // before the loop hears of any.
    let marks = [Ecn::Ect0, Ecn::Ce, Ecn::Ect1, Ecn::NotEct];
    // The sixth is longer than its buffer.
    let size = |i: usize| if i == 5 { 100 } else { 10 + i };
    let senders = IoContext::new().unwrap();
    for i in 0..8u8 {
        let tx = UdpSocket::bind(&senders, addr("127.0.0.1:0")).unwrap();
        tx.set_ttl(20 + u32::from(i)).unwrap();
        let to = SocketAddr::new(ip(if i % 2 == 0 { "127.0.0.1" } else { "127.0.0.2" }), port);
        let meta = SendMeta::new().to(to).ecn(marks[usize::from(i) % 4]);
        tx.async_send_msg(vec![i; size(usize::from(i))], meta, |e, _| assert_eq!(e, Error::NONE));
    }
    senders.run();
    let ((), lines) = log_lines_of_this_thread(|| {
        ctx.run_for(Duration::from_secs(5));
    });
    let seen = seen.take();
    assert_eq!(seen.len(), 8, "every receive completed");
    for (k, (i, meta, bytes)) in seen.into_iter().enumerate() {
        assert_eq!(i, k, "in the order they were started");
        let n = i as u8;
        assert_eq!(bytes, vec![n; size(i).min(64)], "receive {i} got datagram {i}");
        if let Some(meta) = meta {
            assert_eq!((meta.len, meta.truncated), (size(i).min(64), size(i) > 64), "receive {i}");
            assert_eq!(meta.ttl, Some(20 + n), "receive {i}");
            assert_eq!(meta.ecn, Some(marks[i % 4]), "receive {i}");
            assert_eq!(meta.local, Some(ip(if i % 2 == 0 { "127.0.0.1" } else { "127.0.0.2" })), "receive {i}");
            assert_eq!(meta.from.ip(), ip("127.0.0.1"));
            assert!(meta.ifindex.is_some());
        }
    }
    assert!(
        lines.iter().any(|l| l == "received 8 datagrams with metadata in one call"),
        "one recvmmsg took all eight: {lines:?}"
    );
}

#[test]
fn a_socket_adopted_with_its_switches_on_keeps_its_metadata_and_its_reports() {
    let ctx = IoContext::new().unwrap();
    let s = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    s.set_recv_pktinfo(true).unwrap();
    s.set_recv_errors(true).unwrap();
    // Out of the loop and back: the kernel keeps the switches, and so must the loop.
    let s = UdpSocket::from_std(&ctx.executor(), s.release().unwrap()).unwrap();
    let to = s.local_addr().unwrap();
    let peer = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    peer.send_to(&b"one"[..], to).unwrap();
    peer.send_to(&b"two"[..], to).unwrap();
    // A plain receive first: were the loop to read the second datagram
    // ahead for it, that datagram would lose its metadata.
    let plain = Rc::new(RefCell::new(Vec::new()));
    let p = plain.clone();
    s.async_receive_from(vec![0u8; 8], move |e, n, _, _| p.borrow_mut().push((e, n)));
    let [(e, meta, bytes)] = receive(&ctx, &s, 1, 8).try_into().unwrap();
    assert_eq!(*plain.borrow(), [(Error::NONE, 3)]);
    assert_eq!((e, bytes.as_slice(), meta.local), (Error::NONE, &b"two"[..], Some(ip("127.0.0.1"))));
    // And reports still go to the error queue, not to a receive.
    let closed = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    let gone = closed.local_addr().unwrap();
    closed.close();
    s.send_to(&b"x"[..], gone).unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    s.async_receive_error(move |e, icmp| g.borrow_mut().push((e, icmp.error, icmp.dest)));
    ctx.run_for(Duration::from_millis(200));
    assert_eq!(*got.borrow(), [(Error::NONE, Error::CONNECTION_REFUSED, gone)]);
}

#[test]
fn plain_receives_on_a_gro_socket_still_get_one_datagram_each() {
    let ctx = IoContext::new().unwrap();
    let rx = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    rx.set_gro(true).unwrap();
    rx.set_recv_pktinfo(true).unwrap();
    let tx = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    let from = tx.local_addr().unwrap();
    // Sixteen datagrams of 64 bytes, the last one 40, numbered.
    let data: Vec<u8> = (0..1000u32).map(|i| (i / 64) as u8).collect();
    let meta = SendMeta::new().to(rx.local_addr().unwrap()).segment_size(64);
    tx.async_send_msg(data.clone(), meta, |e, n| assert_eq!((e, n), (Error::NONE, 1000)));
    ctx.run();
    ctx.restart();
    // However the kernel grouped them, plain receives get them one by one;
    // a peek and `available` see the next one without taking it.
    let mut got = Vec::new();
    for i in 0..16u8 {
        let expect = if i == 15 { 40 } else { 64 };
        assert_eq!(rx.available().unwrap(), expect, "datagram {i}");
        if i % 5 == 4 {
            // With metadata, one segment is one datagram: no stride.
            let [(e, meta, b)] = receive(&ctx, &rx, 1, 65536).try_into().unwrap();
            assert_eq!((e, meta.len, meta.segment_size, meta.truncated), (Error::NONE, expect, None, false));
            assert_eq!(meta.local, Some(ip("127.0.0.1")), "the segments keep the metadata they came with");
            got.push(b);
            continue;
        }
        let peeked = Rc::new(RefCell::new(None));
        let p = peeked.clone();
        rx.async_receive_from_with_flags(vec![0u8; 8], MessageFlags::PEEK, move |e, n, b, _| {
            *p.borrow_mut() = Some((e, n, b[0]))
        });
        ctx.run();
        ctx.restart();
        assert_eq!(peeked.take(), Some((Error::NONE, 8, i)));
        let mut buf = [0u8; 100];
        let (n, sender) = rx.receive_from(&mut buf[..]).unwrap();
        assert_eq!((n, sender), (expect, from), "datagram {i}");
        got.push(buf[..n].to_vec());
    }
    assert!(got.concat() == data, "in order, byte for byte");
    // A small buffer takes the front of a segment, as of any datagram.
    tx.async_send_msg(data.clone(), meta, |e, _| assert_eq!(e, Error::NONE));
    ctx.run();
    ctx.restart();
    let mut small = [0u8; 10];
    assert_eq!(rx.receive_from(&mut small[..]).unwrap().0, 10);
    let mut buf = [0u8; 100];
    let (n, _) = rx.receive_from(&mut buf[..]).unwrap();
    assert_eq!((n, buf[0]), (64, 1), "the rest of the first segment is gone, the second is whole");
    for _ in 2..16 {
        rx.receive_from(&mut buf[..]).unwrap();
    }
    // Receives queued together are not batched into coalesced datagrams either.
    let lens = Rc::new(RefCell::new(Vec::new()));
    for _ in 0..16 {
        let l = lens.clone();
        rx.async_receive_from(vec![0u8; 2000], move |e, n, b, _| l.borrow_mut().push((e, n, b[0])));
    }
    ctx.poll();
    tx.async_send_msg(data, meta, |e, _| assert_eq!(e, Error::NONE));
    ctx.run_for(Duration::from_secs(2));
    let expect: Vec<_> = (0..16u8).map(|i| (Error::NONE, if i == 15 { 40 } else { 64 }, i)).collect();
    assert_eq!(*lens.borrow(), expect);
}

#[test]
fn available_on_a_gro_socket_leaves_a_pending_error_to_the_receive_it_belongs_to() {
    let ctx = IoContext::new().unwrap();
    // A connected socket with a datagram queued, then a refusal: the
    // kernel holds the error ahead of the datagram.
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let rx = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    rx.set_gro(true).unwrap();
    rx.connect(peer.local_addr().unwrap()).unwrap();
    peer.send_to(&b"data"[..], rx.local_addr().unwrap()).unwrap();
    drop(peer);
    rx.send(&b"x"[..]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // `available` answers without taking the error from the receive.
    assert_eq!(rx.available().unwrap(), 4);
    let got = Rc::new(RefCell::new(Vec::new()));
    for _ in 0..2 {
        let g = got.clone();
        rx.async_receive(vec![0u8; 8], move |e, n, _| g.borrow_mut().push((e, n)));
    }
    ctx.run_for(Duration::from_millis(200));
    assert_eq!(*got.borrow(), [(Error::CONNECTION_REFUSED, 0), (Error::NONE, 4)]);
    // With error reports on, the refusal is a report, still there after `available`.
    let rx = UdpSocket::bind(&ctx, addr("127.0.0.1:0")).unwrap();
    rx.set_gro(true).unwrap();
    rx.set_recv_errors(true).unwrap();
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    rx.send_to(&b"x"[..], closed).unwrap();
    rx.send_to(&b"self"[..], rx.local_addr().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rx.available().unwrap(), 4);
    let report = Rc::new(RefCell::new(None));
    let r = report.clone();
    rx.async_receive_error(move |e, icmp| *r.borrow_mut() = Some((e, icmp.error)));
    ctx.restart();
    ctx.run_for(Duration::from_millis(200));
    assert_eq!(report.take(), Some((Error::NONE, Error::CONNECTION_REFUSED)));
}
