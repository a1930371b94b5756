//! TCP on the simulated network (DESIGN §1.7): the rules of a real stream
//! (the same test bodies run on both backends: accept and connect, refused,
//! bytes in order, EOF, reset, composed operations), and what only a
//! simulation can show: latency, back-pressure from a peer that does not
//! read, loss and partitions that delay bytes but never lose or reorder
//! them, a crash that resets, a connect that times out after 127 s.

mod common;
use common::{addr, ip, on_both_backends};
use ioctx::net::{
    TcpListener, TcpStream, Transfer, WaitType, async_read, async_read_until, async_write, transfer_all,
    transfer_at_least, transfer_exactly,
};
use ioctx::sim::{self, Link};
use ioctx::{CancellationType, Error, IoContext, Operation, SimConfig};
use socket2::Domain;
use std::cell::{Cell, RefCell};
use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

/// `run_for` with a safety net (real or virtual seconds): a bug fails the
/// test instead of hanging it. Asserts that the loop ran out of work.
fn run_bounded(ctx: &IoContext) {
    run_within(ctx, Duration::from_secs(5));
}

fn run_within(ctx: &IoContext, limit: Duration) {
    ctx.run_for(limit);
    assert!(ctx.stopped(), "work is left after {limit:?}: an operation never completed");
    ctx.restart();
}

/// A connected pair (client, server) through a listener on `at`.
fn pair_at(ctx: &IoContext, at: SocketAddr, from: Option<SocketAddr>) -> (TcpStream, TcpStream) {
    let l = TcpListener::bind(ctx, at).unwrap();
    let server = Rc::new(RefCell::new(None));
    let s = server.clone();
    l.async_accept(move |e, peer| {
        assert_eq!(e, Error::NONE);
        *s.borrow_mut() = peer;
    });
    let client = TcpStream::open(ctx, if at.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 }).unwrap();
    if let Some(from) = from {
        client.bind_to(from).unwrap();
    }
    let connected = Rc::new(Cell::new(false));
    let c = connected.clone();
    client.async_connect(l.local_addr().unwrap(), move |e| {
        assert_eq!(e, Error::NONE);
        c.set(true);
    });
    // Simulated: lost SYNs and SYN-ACKs are resent for about a minute.
    run_within(ctx, Duration::from_secs(if ctx.sim().is_some() { 200 } else { 5 }));
    assert!(connected.get());
    let server = server.take().expect("accepted");
    (client, server)
}

fn pair(ctx: &IoContext) -> (TcpStream, TcpStream) {
    pair_at(ctx, addr("127.0.0.1:0"), None)
}

/// Reads until EOF or an error; returns the bytes and how it ended.
fn read_all(ctx: &IoContext, s: &TcpStream) -> (Vec<u8>, Error) {
    read_all_within(ctx, s, Duration::from_secs(5))
}

fn read_all_within(ctx: &IoContext, s: &TcpStream, limit: Duration) -> (Vec<u8>, Error) {
    let got = Rc::new(RefCell::new((Vec::new(), Error::NONE)));
    fn step(s: TcpStream, got: Rc<RefCell<(Vec<u8>, Error)>>) {
        let again = s.clone();
        s.async_read_some(vec![0u8; 1000], move |e, n, buf| {
            if e.is_ok() {
                got.borrow_mut().0.extend_from_slice(&buf[..n]);
                step(again, got);
            } else {
                got.borrow_mut().1 = e;
            }
        });
    }
    step(s.clone(), got.clone());
    run_within(ctx, limit);
    let (bytes, end) = &*got.borrow();
    (bytes.clone(), *end)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

// ------------------------------------------------------------ the rules, on both backends

#[test]
fn a_listener_accepts_and_both_ends_know_each_other() {
    on_both_backends(|ctx| {
        let (client, server) = pair(ctx);
        assert_eq!(client.peer_addr().unwrap(), server.local_addr().unwrap());
        assert_eq!(server.peer_addr().unwrap(), client.local_addr().unwrap());
        assert_eq!(client.local_addr().unwrap().ip(), ip("127.0.0.1"));
        client.set_nodelay(true).unwrap();
        assert!(client.nodelay().unwrap());
    });
}

#[test]
fn bytes_arrive_in_order_and_a_handler_never_runs_inside_the_call() {
    on_both_backends(|ctx| {
        let (client, server) = pair(ctx);
        let started = Rc::new(Cell::new(false));
        for chunk in pattern(3000).chunks(300) {
            let st = started.clone();
            client.async_write_some(chunk.to_vec(), move |e, n| {
                assert!(st.get(), "ran inside the call that started it");
                assert_eq!((e, n), (Error::NONE, 300));
            });
        }
        started.set(true);
        client.shutdown(Shutdown::Write).unwrap();
        let (got, end) = read_all(ctx, &server);
        assert_eq!(got, pattern(3000));
        assert_eq!(end, Error::EOF);
    });
}

#[test]
fn a_connect_where_nobody_listens_is_refused() {
    on_both_backends(|ctx| {
        // A port that was just free: bound, then closed.
        let free = TcpListener::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let to = free.local_addr().unwrap();
        free.close();
        let s = TcpStream::open(ctx, Domain::IPV4).unwrap();
        let got = Rc::new(Cell::new(None));
        let g = got.clone();
        s.async_connect(to, move |e| g.set(Some(e)));
        run_bounded(ctx);
        assert_eq!(got.get(), Some(Error::CONNECTION_REFUSED));
        // The listener's address is free again.
        let again = TcpListener::bind(ctx, to).unwrap();
        assert_eq!(again.local_addr().unwrap(), to);
    });
}

#[test]
fn a_second_listener_on_the_same_address_is_refused() {
    on_both_backends(|ctx| {
        let a = TcpListener::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let e = TcpListener::bind(ctx, a.local_addr().unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AddrInUse);
    });
}

#[test]
fn closing_with_unread_bytes_resets_the_peer() {
    on_both_backends(|ctx| {
        let (client, server) = pair(ctx);
        client.async_write_some(b"unread".to_vec(), |e, _| assert_eq!(e, Error::NONE));
        server.async_wait(WaitType::Read, |e| assert_eq!(e, Error::NONE));
        run_bounded(ctx);
        assert_eq!(server.available().unwrap(), 6);
        server.close(); // with 6 bytes unread: a reset, not a FIN
        let (got, end) = read_all(ctx, &client);
        assert!(got.is_empty());
        assert_eq!(end, Error::CONNECTION_RESET);
    });
}

#[test]
fn a_closed_peer_reads_eof_after_everything_it_wrote() {
    on_both_backends(|ctx| {
        let (client, server) = pair(ctx);
        server.async_write_some(b"last words".to_vec(), |e, n| assert_eq!((e, n), (Error::NONE, 10)));
        run_bounded(ctx);
        server.close();
        let (got, end) = read_all(ctx, &client);
        assert_eq!(got, b"last words");
        assert_eq!(end, Error::EOF);
    });
}

#[test]
fn composed_write_and_read_move_a_megabyte_through_a_full_window() {
    on_both_backends(|ctx| {
        let (client, server) = pair(ctx);
        let data = pattern(1 << 20);
        let wrote = Rc::new(Cell::new(None));
        let w = wrote.clone();
        async_write(&client, data.clone(), transfer_all(), move |e, n| w.set(Some((e, n))));
        let read = Rc::new(RefCell::new(None));
        let r = read.clone();
        async_read(&server, vec![0u8; 1 << 20], transfer_all(), move |e, n, buf| {
            *r.borrow_mut() = Some((e, n, buf));
        });
        run_bounded(ctx);
        assert_eq!(wrote.get(), Some((Error::NONE, 1 << 20)));
        let (e, n, buf) = read.take().unwrap();
        assert_eq!((e, n), (Error::NONE, 1 << 20));
        assert!(buf == data, "the bytes arrived changed");
    });
}

#[test]
fn a_pending_read_is_aborted_by_close_and_the_stream_reports_bad_descriptor_after() {
    on_both_backends(|ctx| {
        let (client, _server) = pair(ctx);
        let got = Rc::new(Cell::new(None));
        let g = got.clone();
        client.async_read_some(vec![0u8; 8], move |e, n, _| g.set(Some((e, n))));
        client.close();
        run_bounded(ctx);
        assert_eq!(got.get(), Some((Error::OPERATION_ABORTED, 0)));
        let g = got.clone();
        client.async_write_some(b"x".to_vec(), move |e, n| g.set(Some((e, n))));
        run_bounded(ctx);
        assert_eq!(got.get(), Some((Error::BAD_DESCRIPTOR, 0)));
    });
}

#[test]
fn a_blocking_accept_takes_a_waiting_connection() {
    on_both_backends(|ctx| {
        let l = TcpListener::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let client = TcpStream::open(ctx, Domain::IPV4).unwrap();
        client.async_connect(l.local_addr().unwrap(), |e| assert_eq!(e, Error::NONE));
        // The connection waits once the client's ACK is in (at once on
        // loopback; one latency after the connect on the simulated network).
        l.async_wait(WaitType::Read, |e| assert_eq!(e, Error::NONE));
        run_bounded(ctx);
        let server = l.accept().unwrap();
        assert_eq!(server.peer_addr().unwrap(), client.local_addr().unwrap());
    });
}

/// Runs until `flag` is set (a bounded run, real or virtual).
fn run_until_set(ctx: &IoContext, flag: &Rc<Cell<bool>>) {
    let f = flag.clone();
    let t = ioctx::SteadyTimer::new(ctx);
    // Work that keeps the loop going while the network does its part.
    fn tick(t: ioctx::SteadyTimer, f: Rc<Cell<bool>>, left: u32) {
        if f.get() || left == 0 {
            return;
        }
        t.expires_after(Duration::from_millis(5));
        let again = t.clone();
        t.async_wait(move |_| tick(again, f, left - 1));
    }
    tick(t, f, 1000);
    run_bounded(ctx);
    assert!(flag.get(), "not reached in 5 s");
}

#[test]
fn bytes_that_arrived_before_a_reset_are_read_first() {
    on_both_backends(|ctx| {
        let (client, server) = pair(ctx);
        server.async_write_some(b"abc".to_vec(), |e, _| assert_eq!(e, Error::NONE));
        client.async_write_some(b"unread".to_vec(), |e, _| assert_eq!(e, Error::NONE));
        let arrived = Rc::new(Cell::new(false));
        let a = arrived.clone();
        server.async_wait(WaitType::Read, move |_| a.set(true));
        run_until_set(ctx, &arrived);
        let arrived = Rc::new(Cell::new(false));
        let a = arrived.clone();
        client.async_wait(WaitType::Read, move |_| a.set(true));
        run_until_set(ctx, &arrived);
        server.close(); // with "unread" unread: a reset
        let (got, end) = read_all(ctx, &client);
        assert_eq!((got.as_slice(), end), (&b"abc"[..], Error::CONNECTION_RESET));
        assert_eq!(client.peer_addr().unwrap_err().kind(), ErrorKind::NotConnected, "no peer after a reset");
    });
}

#[test]
fn shutdown_for_reading_still_reads_what_had_arrived() {
    on_both_backends(|ctx| {
        let (client, server) = pair(ctx);
        client.async_write_some(b"abc".to_vec(), |e, _| assert_eq!(e, Error::NONE));
        let arrived = Rc::new(Cell::new(false));
        let a = arrived.clone();
        server.async_wait(WaitType::Read, move |_| a.set(true));
        run_until_set(ctx, &arrived);
        server.shutdown(Shutdown::Read).unwrap();
        let (got, end) = read_all(ctx, &server);
        assert_eq!((got.as_slice(), end), (&b"abc"[..], Error::EOF));
    });
}

#[test]
fn a_read_started_while_connecting_waits_for_the_bytes() {
    on_both_backends(|ctx| {
        let l = TcpListener::bind(ctx, addr("127.0.0.1:0")).unwrap();
        l.async_accept(|e, peer| {
            assert_eq!(e, Error::NONE);
            peer.unwrap().async_write_some(b"hi".to_vec(), |e, _| assert_eq!(e, Error::NONE));
        });
        let client = TcpStream::open(ctx, Domain::IPV4).unwrap();
        client.async_connect(l.local_addr().unwrap(), |e| assert_eq!(e, Error::NONE));
        let r = got();
        let r2 = r.clone();
        client.async_read_some(vec![0u8; 8], move |e, n, b| *r2.borrow_mut() = Some((e, b[..n].to_vec())));
        run_bounded(ctx);
        assert_eq!(r.take().unwrap(), (Error::NONE, b"hi".to_vec()));
    });
}

#[test]
fn a_write_after_the_peers_fin_and_reset_is_a_broken_pipe() {
    on_both_backends(|ctx| {
        let (client, server) = pair(ctx);
        server.close(); // nothing unread: a FIN
        let (_, end) = read_all(ctx, &client);
        assert_eq!(end, Error::EOF);
        // The first write leaves (the peer answers it with a reset)...
        let r = got();
        let r2 = r.clone();
        client.async_write_some(b"x".to_vec(), move |e, n| *r2.borrow_mut() = Some((e, n)));
        run_bounded(ctx);
        assert_eq!(r.take().unwrap(), (Error::NONE, 1));
        let reset = Rc::new(Cell::new(false));
        let rs = reset.clone();
        client.async_wait(WaitType::Error, move |_| rs.set(true));
        run_until_set(ctx, &reset);
        // ...and the next learns the pipe is broken.
        let r2 = r.clone();
        client.async_write_some(b"y".to_vec(), move |e, n| *r2.borrow_mut() = Some((e, n)));
        run_bounded(ctx);
        assert_eq!(r.take().unwrap(), (Error::from_raw_os_error(32), 0), "EPIPE");
    });
}

#[test]
fn after_a_read_shutdown_a_reset_is_still_reported() {
    on_both_backends(|ctx| {
        let (client, server) = pair(ctx);
        client.shutdown(Shutdown::Read).unwrap();
        client.async_write_some(b"u".to_vec(), |e, _| assert_eq!(e, Error::NONE));
        let arrived = Rc::new(Cell::new(false));
        let a = arrived.clone();
        server.async_wait(WaitType::Read, move |_| a.set(true));
        run_until_set(ctx, &arrived);
        server.close(); // "u" unread: a reset
        let reset = Rc::new(Cell::new(false));
        let rs = reset.clone();
        client.async_wait(WaitType::Error, move |_| rs.set(true));
        run_until_set(ctx, &reset);
        let e = client.read_some(vec![0u8; 4]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionReset);
        let e = client.write_some(b"x".to_vec()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BrokenPipe);
    });
}

#[test]
fn a_refused_connect_completes_even_when_a_read_beside_it_took_the_error() {
    on_both_backends(|ctx| {
        let free = TcpListener::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let to = free.local_addr().unwrap();
        free.close();
        let s = TcpStream::open(ctx, Domain::IPV4).unwrap();
        let seen = Rc::new(RefCell::new(Vec::new()));
        let s2 = seen.clone();
        s.async_connect(to, move |e| s2.borrow_mut().push(("connect", e)));
        let s2 = seen.clone();
        s.async_read_some(vec![0u8; 8], move |e, _, _| s2.borrow_mut().push(("read", e)));
        run_bounded(ctx);
        let seen = seen.take();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen.iter().all(|(_, e)| e.is_err()), "{seen:?}");
        assert!(
            seen.contains(&("read", Error::CONNECTION_REFUSED))
                || seen.contains(&("connect", Error::CONNECTION_REFUSED)),
            "{seen:?}"
        );
    });
}

#[test]
fn a_stream_bound_to_every_host_gives_its_port_back_on_close() {
    on_both_backends(|ctx| {
        let l = TcpListener::bind(ctx, addr("127.0.0.1:0")).unwrap();
        l.async_accept(|e, _| assert_eq!(e, Error::NONE));
        let client = TcpStream::open(ctx, Domain::IPV4).unwrap();
        client.bind_to(addr("0.0.0.0:0")).unwrap();
        client.async_connect(l.local_addr().unwrap(), |e| assert_eq!(e, Error::NONE));
        run_bounded(ctx);
        let port = client.local_addr().unwrap().port();
        client.close();
        let again = TcpListener::bind(ctx, SocketAddr::new(ip("0.0.0.0"), port)).unwrap();
        assert_eq!(again.local_addr().unwrap().port(), port);
    });
}

#[test]
fn a_connect_to_the_unspecified_address_reaches_the_bound_host() {
    on_both_backends(|ctx| {
        let l = TcpListener::bind(ctx, addr("127.0.0.2:0")).unwrap();
        l.async_accept(|e, _| assert_eq!(e, Error::NONE));
        let client = TcpStream::open(ctx, Domain::IPV4).unwrap();
        client.bind_to(addr("127.0.0.2:0")).unwrap();
        let port = l.local_addr().unwrap().port();
        let r = got();
        let r2 = r.clone();
        client.async_connect(SocketAddr::new(ip("0.0.0.0"), port), move |e| *r2.borrow_mut() = Some(e));
        run_bounded(ctx);
        assert_eq!(r.take(), Some(Error::NONE));
        assert_eq!(client.peer_addr().unwrap(), SocketAddr::new(ip("127.0.0.2"), port));
    });
}

#[test]
fn a_second_connect_after_a_refused_one_is_aborted() {
    on_both_backends(|ctx| {
        let free = TcpListener::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let to = free.local_addr().unwrap();
        free.close();
        let s = TcpStream::open(ctx, Domain::IPV4).unwrap();
        let r = got();
        let r2 = r.clone();
        s.async_connect(to, move |e| *r2.borrow_mut() = Some(e));
        run_bounded(ctx);
        assert_eq!(r.take(), Some(Error::CONNECTION_REFUSED));
        let r2 = r.clone();
        s.async_connect(to, move |e| *r2.borrow_mut() = Some(e));
        run_bounded(ctx);
        assert_eq!(r.take(), Some(Error::from_raw_os_error(103)), "ECONNABORTED");
    });
}

// ------------------------------------------------------------ composed operations, on both backends

type Got<T> = Rc<RefCell<Option<T>>>;

fn got<T>() -> Got<T> {
    Rc::new(RefCell::new(None))
}

/// A composed read into `len` bytes; its operation, and where its result
/// (error, count, the bytes read) lands.
fn composed_read(s: &TcpStream, len: usize, cond: Transfer) -> (Operation, Got<(Error, usize, Vec<u8>)>) {
    let r = got();
    let r2 = r.clone();
    let op = async_read(s, vec![0u8; len], cond, move |e, n, b| *r2.borrow_mut() = Some((e, n, b[..n].to_vec())));
    (op, r)
}

#[test]
fn composed_reads_stop_at_exactly_and_at_least() {
    on_both_backends(|ctx| {
        let (client, server) = pair(ctx);
        client.async_write_some(b"0123456789".to_vec(), |e, n| assert_eq!((e, n), (Error::NONE, 10)));
        // Both writes' bytes are there before the reads start.
        server.async_wait(WaitType::Read, |e| assert_eq!(e, Error::NONE));
        run_bounded(ctx);
        let r = got();
        let (r2, s2) = (r.clone(), server.clone());
        async_read(&server, vec![0u8; 64], transfer_exactly(4), move |e, n, b| {
            let first = (e, n, b[..n].to_vec());
            // At least one byte: what is there (the 6 left), not 64.
            async_read(&s2, vec![0u8; 64], transfer_at_least(1), move |e, n, b| {
                *r2.borrow_mut() = Some((first, (e, n, b[..n].to_vec())));
            });
        });
        run_bounded(ctx);
        let (first, second) = r.take().unwrap();
        assert_eq!(first, (Error::NONE, 4, b"0123".to_vec()));
        assert_eq!(second, (Error::NONE, 6, b"456789".to_vec()));
    });
}

#[test]
fn a_composed_read_ends_with_eof_and_the_bytes_so_far() {
    on_both_backends(|ctx| {
        let (client, server) = pair(ctx);
        client.async_write_some(b"abc".to_vec(), |e, _| assert_eq!(e, Error::NONE));
        run_bounded(ctx);
        client.close();
        let (_, r) = composed_read(&server, 10, transfer_all());
        run_bounded(ctx);
        assert_eq!(r.take().unwrap(), (Error::EOF, 3, b"abc".to_vec()));
    });
}

#[test]
fn a_cancelled_composed_read_ends_with_the_bytes_so_far_and_cancel_after_too() {
    on_both_backends(|ctx| {
        let (client, server) = pair(ctx);
        client.async_write_some(b"hello".to_vec(), |e, _| assert_eq!(e, Error::NONE));
        let (op, r) = composed_read(&server, 100, transfer_all());
        // The 5 bytes arrive; the read waits for more.
        ctx.run_for(Duration::from_millis(30));
        ctx.restart();
        assert!(op.is_pending());
        assert!(op.cancel(CancellationType::TERMINAL));
        run_bounded(ctx);
        assert_eq!(r.take().unwrap(), (Error::OPERATION_ABORTED, 5, b"hello".to_vec()));

        client.async_write_some(b"ab".to_vec(), |e, _| assert_eq!(e, Error::NONE));
        let (op, r) = composed_read(&server, 10, transfer_all());
        op.cancel_after(Duration::from_millis(20), CancellationType::TERMINAL);
        run_bounded(ctx);
        assert_eq!(r.take().unwrap(), (Error::OPERATION_ABORTED, 2, b"ab".to_vec()));
    });
}

#[test]
fn read_until_finds_a_delimiter_split_across_writes_and_keeps_what_follows() {
    on_both_backends(|ctx| {
        let (client, server) = pair(ctx);
        client.async_write_some(b"GET / HTTP/1.0\r".to_vec(), |e, _| assert_eq!(e, Error::NONE));
        let later = ioctx::SteadyTimer::new(ctx);
        later.expires_after(Duration::from_millis(20));
        let c = client.clone();
        later.async_wait(move |e| {
            assert_eq!(e, Error::NONE);
            c.async_write_some(b"\nHost: x\r\n\r\nbody".to_vec(), |e, _| assert_eq!(e, Error::NONE));
        });
        let r = got();
        let (r2, s2) = (r.clone(), server.clone());
        async_read_until(&server, Vec::new(), "\r\n", 1024, move |e, n, buf| {
            let line = buf[..n].to_vec();
            let mut buf = buf;
            buf.drain(..n);
            // The next call starts from what is buffered.
            async_read_until(&s2, buf, b"\r\n\r\n".to_vec(), 1024, move |e2, n2, buf2| {
                *r2.borrow_mut() = Some(((e, line), (e2, buf2[..n2].to_vec(), buf2[n2..].to_vec())));
            });
        });
        run_bounded(ctx);
        let ((e, line), (e2, headers, rest)) = r.take().unwrap();
        assert_eq!((e, line.as_slice()), (Error::NONE, &b"GET / HTTP/1.0\r\n"[..]));
        assert_eq!((e2, headers.as_slice()), (Error::NONE, &b"Host: x\r\n\r\n"[..]));
        assert_eq!(rest, b"body");
    });
}

#[test]
fn read_until_reports_not_found_at_the_limit_and_eof_with_the_data_kept() {
    on_both_backends(|ctx| {
        let (client, server) = pair(ctx);
        client.async_write_some(vec![b'x'; 100], |e, _| assert_eq!(e, Error::NONE));
        let r = got();
        let r2 = r.clone();
        async_read_until(&server, Vec::new(), b'\n', 64, move |e, n, b| *r2.borrow_mut() = Some((e, n, b.len())));
        run_bounded(ctx);
        assert_eq!(r.take().unwrap(), (Error::NOT_FOUND, 0, 64));

        let (client, server) = pair(ctx);
        client.async_write_some(b"no newline".to_vec(), |e, _| assert_eq!(e, Error::NONE));
        run_bounded(ctx);
        client.close();
        let r = got();
        let r2 = r.clone();
        async_read_until(&server, Vec::new(), b'\n', 64, move |e, n, b| *r2.borrow_mut() = Some((e, n, b)));
        run_bounded(ctx);
        assert_eq!(r.take().unwrap(), (Error::EOF, 0, b"no newline".to_vec()));
    });
}

#[test]
fn dropping_the_last_handle_aborts_a_pending_composed_read() {
    on_both_backends(|ctx| {
        let (_client, server) = pair(ctx);
        let (_, r) = composed_read(&server, 10, transfer_all());
        drop(server);
        run_bounded(ctx);
        assert_eq!(r.take().unwrap(), (Error::OPERATION_ABORTED, 0, Vec::new()));
    });
}

#[test]
fn a_cancelled_blocked_composed_write_reports_the_bytes_written_so_far() {
    on_both_backends(|ctx| {
        let (client, _server) = pair(ctx);
        // More than the peer's buffers take while it does not read.
        let total = 64 << 20;
        let r = got();
        let r2 = r.clone();
        let op = async_write(&client, vec![7u8; total], transfer_all(), move |e, n| *r2.borrow_mut() = Some((e, n)));
        ctx.run_for(Duration::from_millis(50));
        ctx.restart();
        assert!(op.is_pending(), "the peer took everything");
        assert!(op.cancel(CancellationType::TERMINAL));
        run_bounded(ctx);
        let (e, n) = r.take().unwrap();
        assert_eq!(e, Error::OPERATION_ABORTED);
        assert!(n > 0 && n < total, "{n}");
    });
}

// ------------------------------------------------------------ what only a simulation shows

/// A simulated context with `latency` both ways on every link.
fn with_latency(seed: u64, latency: Duration) -> IoContext {
    IoContext::simulated_with(SimConfig::new(seed).latency(latency, latency))
}

#[test]
fn a_connect_takes_a_round_trip_and_an_accept_one_more_latency() {
    let ctx = with_latency(1, Duration::from_millis(10));
    let sim = ctx.sim().unwrap();
    let l = TcpListener::bind(&ctx, addr("10.0.0.2:80")).unwrap();
    let accepted_at = Rc::new(Cell::new(None));
    let server = Rc::new(RefCell::new(None));
    let (a, s, sim2) = (accepted_at.clone(), server.clone(), sim.clone());
    l.async_accept(move |e, peer| {
        assert_eq!(e, Error::NONE);
        a.set(Some(sim2.now()));
        let peer = peer.unwrap();
        peer.async_write_some(b"hello".to_vec(), |e, _| assert_eq!(e, Error::NONE));
        *s.borrow_mut() = Some(peer);
    });
    let client = TcpStream::open(&ctx, Domain::IPV4).unwrap();
    client.bind_to(addr("10.0.0.1:0")).unwrap();
    let connected_at = Rc::new(Cell::new(None));
    let (c, sim2, cl) = (connected_at.clone(), sim.clone(), client.clone());
    let read_at = Rc::new(Cell::new(None));
    let r = read_at.clone();
    client.async_connect(addr("10.0.0.2:80"), move |e| {
        assert_eq!(e, Error::NONE);
        c.set(Some(sim2.now()));
        let sim3 = sim2.clone();
        cl.async_read_some(vec![0u8; 16], move |e, n, buf| {
            assert_eq!((e, &buf[..n]), (Error::NONE, &b"hello"[..]));
            r.set(Some(sim3.now()));
        });
    });
    ctx.run();
    assert_eq!(connected_at.get(), Some(Duration::from_millis(20)), "SYN and SYN-ACK: a round trip");
    assert_eq!(accepted_at.get(), Some(Duration::from_millis(30)), "the ACK: one more latency");
    assert_eq!(read_at.get(), Some(Duration::from_millis(40)), "written on accepting, read 10 ms later");
    let server = server.take().unwrap();
    assert_eq!(server.peer_addr().unwrap(), client.local_addr().unwrap());
    assert_eq!(client.local_addr().unwrap().ip(), ip("10.0.0.1"));
}

#[test]
fn a_writer_stops_at_the_peers_receive_buffer_until_the_peer_reads() {
    let ctx = IoContext::simulated_with(SimConfig::new(2).recv_buffer(10_000));
    let (client, server) = pair(&ctx);
    // Write until a write waits: the peer's buffer holds 10,000 bytes.
    let written = Rc::new(Cell::new(0usize));
    let pending = Rc::new(Cell::new(false));
    fn write(s: TcpStream, written: Rc<Cell<usize>>, pending: Rc<Cell<bool>>) {
        let again = s.clone();
        let p = pending.clone();
        pending.set(true);
        s.async_write_some(vec![1u8; 3000], move |e, n| {
            p.set(false);
            if e.is_ok() {
                written.set(written.get() + n);
                write(again, written, p);
            }
        });
    }
    write(client.clone(), written.clone(), pending.clone());
    ctx.run_for(Duration::from_secs(60));
    ctx.restart();
    assert_eq!(written.get(), 10_000, "exactly the peer's buffer");
    assert!(pending.get(), "the next write waits for the peer");
    assert_eq!(server.available().unwrap(), 10_000);
    // The peer reads 4,000 bytes: the writer goes on by as much.
    server.async_read_some(vec![0u8; 4000], |e, n, _| assert_eq!((e, n), (Error::NONE, 4000)));
    ctx.run_for(Duration::from_secs(60));
    ctx.restart();
    assert_eq!(written.get(), 14_000);
    assert!(pending.get());
    client.close();
}

#[test]
fn loss_delays_bytes_but_never_loses_or_reorders_them() {
    for seed in 0..20 {
        let ctx = IoContext::simulated_with(
            SimConfig::new(seed).latency(Duration::from_millis(1), Duration::from_millis(30)).loss(0.3),
        );
        let (client, server) = pair(&ctx);
        let data = pattern(50_000);
        for chunk in data.chunks(1000) {
            client.async_write_some(chunk.to_vec(), |e, n| assert_eq!((e, n), (Error::NONE, 1000)));
        }
        client.shutdown(Shutdown::Write).unwrap();
        // A segment lost six times in a row arrives 12.6 s late.
        let (got, end) = read_all_within(&ctx, &server, Duration::from_secs(900));
        assert!(got == data, "seed {seed}: the bytes changed ({} of {})", got.len(), data.len());
        assert_eq!(end, Error::EOF, "seed {seed}");
    }
}

#[test]
fn a_partition_holds_the_bytes_until_it_heals() {
    let ctx = with_latency(3, Duration::from_millis(5));
    let sim = ctx.sim().unwrap();
    let (client, server) = pair_at(&ctx, addr("10.0.0.2:7"), Some(addr("10.0.0.1:0")));
    sim.partition(ip("10.0.0.1"), ip("10.0.0.2"));
    client.async_write_some(b"across".to_vec(), |e, n| assert_eq!((e, n), (Error::NONE, 6)));
    let got = Rc::new(RefCell::new(None));
    let (g, sim2) = (got.clone(), sim.clone());
    server.async_read_some(vec![0u8; 16], move |e, n, buf| *g.borrow_mut() = Some((e, buf[..n].to_vec(), sim2.now())));
    let start = sim.now();
    ctx.run_for(Duration::from_secs(10));
    ctx.restart();
    assert!(got.borrow().is_none(), "nothing crosses a partition");
    sim.heal();
    ctx.run();
    let (e, bytes, at) = got.take().expect("delivered after the heal");
    assert_eq!((e, &bytes[..]), (Error::NONE, &b"across"[..]));
    // Resent 0.2, 0.6, 1.4, 3.0, 6.2 and 12.6 s after it left: the first
    // resend after the heal gets through.
    let waited = at - start;
    assert_eq!(waited, Duration::from_millis(12_605), "{waited:?}");
}

#[test]
fn a_held_link_holds_bytes_until_released() {
    let ctx = with_latency(4, Duration::from_millis(5));
    let sim = ctx.sim().unwrap();
    let (client, server) = pair_at(&ctx, addr("10.0.0.2:7"), Some(addr("10.0.0.1:0")));
    sim.hold(ip("10.0.0.1"), ip("10.0.0.2"));
    client.async_write_some(b"held".to_vec(), |e, _| assert_eq!(e, Error::NONE));
    let got = Rc::new(Cell::new(None));
    let (g, sim2) = (got.clone(), sim.clone());
    server.async_wait(WaitType::Read, move |e| g.set(Some((e, sim2.now()))));
    ctx.run_for(Duration::from_secs(3));
    ctx.restart();
    assert_eq!(got.get(), None, "held");
    let released = sim.now();
    sim.release(ip("10.0.0.1"), ip("10.0.0.2"));
    ctx.run();
    let (e, at) = got.get().expect("arrived after the release");
    assert_eq!(e, Error::NONE);
    // Resent 0.2, 0.6, 1.4 and 3.0 s after it left (the back-off): the
    // last one gets through, just after the release.
    assert!(at - released <= Duration::from_millis(10), "{:?}", at - released);
    assert_eq!(server.available().unwrap(), 4);
}

#[test]
fn a_crash_of_the_servers_host_resets_the_client() {
    let ctx = with_latency(5, Duration::from_millis(5));
    let sim = ctx.sim().unwrap();
    let (client, server) = pair_at(&ctx, addr("10.0.0.2:7"), Some(addr("10.0.0.1:0")));
    let got = Rc::new(Cell::new(None));
    let g = got.clone();
    client.async_read_some(vec![0u8; 16], move |e, n, _| g.set(Some((e, n))));
    sim.crash(ip("10.0.0.2"));
    assert!(!server.is_open(), "the crash closed the server's stream");
    ctx.run_for(Duration::from_secs(1));
    ctx.restart();
    assert_eq!(got.get(), Some((Error::CONNECTION_RESET, 0)));
    // A write after the reset fails too, and the loop goes on.
    let g = got.clone();
    client.async_write_some(b"x".to_vec(), move |e, n| g.set(Some((e, n))));
    ctx.run();
    assert!(matches!(got.get(), Some((e, 0)) if e != Error::NONE), "{:?}", got.get());
}

#[test]
fn a_connect_across_a_partition_times_out_after_127_virtual_seconds() {
    let ctx = with_latency(6, Duration::from_millis(5));
    let sim = ctx.sim().unwrap();
    let _l = TcpListener::bind(&ctx, addr("10.0.0.2:7")).unwrap();
    sim.partition(ip("10.0.0.1"), ip("10.0.0.2"));
    let s = TcpStream::open(&ctx, Domain::IPV4).unwrap();
    s.bind_to(addr("10.0.0.1:0")).unwrap();
    let got = Rc::new(Cell::new(None));
    let (g, sim2) = (got.clone(), sim.clone());
    s.async_connect(addr("10.0.0.2:7"), move |e| g.set(Some((e, sim2.now()))));
    ctx.run();
    assert_eq!(got.get(), Some((Error::TIMED_OUT, Duration::from_secs(127))));
}

#[test]
fn a_connect_retried_after_a_heal_succeeds() {
    let ctx = with_latency(7, Duration::from_millis(5));
    let sim = ctx.sim().unwrap();
    let l = TcpListener::bind(&ctx, addr("10.0.0.2:7")).unwrap();
    l.async_accept(|e, _| assert_eq!(e, Error::NONE));
    sim.partition(ip("10.0.0.1"), ip("10.0.0.2"));
    let s = TcpStream::open(&ctx, Domain::IPV4).unwrap();
    s.bind_to(addr("10.0.0.1:0")).unwrap();
    let got = Rc::new(Cell::new(None));
    let (g, sim2) = (got.clone(), sim.clone());
    s.async_connect(addr("10.0.0.2:7"), move |e| g.set(Some((e, sim2.now()))));
    ctx.run_for(Duration::from_millis(2500));
    ctx.restart();
    sim.heal();
    ctx.run();
    // SYNs at 0, 1 and 3 s: the third gets through.
    assert_eq!(got.get(), Some((Error::NONE, Duration::from_millis(3010))));
}

#[test]
fn a_full_backlog_drops_the_syn_and_the_client_gets_in_once_one_is_accepted() {
    let ctx = with_latency(8, Duration::from_millis(5));
    let l = TcpListener::bind_with_backlog(&ctx, addr("10.0.0.2:7"), 1).unwrap();
    let outcomes = Rc::new(RefCell::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let s = TcpStream::open(&ctx, Domain::IPV4).unwrap();
        let o = outcomes.clone();
        s.async_connect(addr("10.0.0.2:7"), move |e| o.borrow_mut().push(e));
        clients.push(s);
    }
    l.async_wait(WaitType::Read, |e| assert_eq!(e, Error::NONE));
    ctx.run_for(Duration::from_millis(500));
    ctx.restart();
    assert_eq!(*outcomes.borrow(), [Error::NONE], "one in the backlog, one SYN dropped");
    let first = l.accept().unwrap();
    assert_eq!(l.accept().unwrap_err().kind(), ErrorKind::WouldBlock, "a simulated accept never blocks");
    // The SYN is sent again after 1 s.
    l.async_wait(WaitType::Read, |e| assert_eq!(e, Error::NONE));
    ctx.run_for(Duration::from_secs(2));
    ctx.restart();
    assert_eq!(*outcomes.borrow(), [Error::NONE, Error::NONE]);
    let second = l.accept().unwrap();
    assert_ne!(first.peer_addr().unwrap(), second.peer_addr().unwrap());
}

#[test]
fn a_client_that_gives_up_while_connecting_leaves_the_server_nothing_to_accept() {
    // Closed after the server answered, before its SYN-ACK arrived.
    let ctx = with_latency(12, Duration::from_millis(50));
    let l = TcpListener::bind(&ctx, addr("10.0.0.2:7")).unwrap();
    let accepted = Rc::new(Cell::new(false));
    let a = accepted.clone();
    l.async_accept(move |_, _| a.set(true));
    let s = TcpStream::open(&ctx, Domain::IPV4).unwrap();
    s.bind_to(addr("10.0.0.1:0")).unwrap();
    s.async_connect(addr("10.0.0.2:7"), |e| assert_eq!(e, Error::OPERATION_ABORTED));
    let t = ioctx::SteadyTimer::new(&ctx);
    t.expires_after(Duration::from_millis(75));
    t.async_wait(move |_| s.close());
    ctx.run_for(Duration::from_secs(3600));
    assert!(!accepted.get(), "a connection the client closed was accepted");

    // Timed out: the SYN-ACKs could not come back through a one-way partition.
    let ctx = with_latency(13, Duration::from_millis(5));
    let sim = ctx.sim().unwrap();
    let l = TcpListener::bind(&ctx, addr("10.0.0.2:7")).unwrap();
    let accepted = Rc::new(Cell::new(false));
    let a = accepted.clone();
    l.async_accept(move |_, _| a.set(true));
    sim.partition_oneway(ip("10.0.0.2"), ip("10.0.0.1"));
    let s = TcpStream::open(&ctx, Domain::IPV4).unwrap();
    s.bind_to(addr("10.0.0.1:0")).unwrap();
    let r = got();
    let r2 = r.clone();
    s.async_connect(addr("10.0.0.2:7"), move |e| *r2.borrow_mut() = Some(e));
    ctx.run_for(Duration::from_secs(3600));
    assert_eq!(r.take(), Some(Error::TIMED_OUT));
    assert!(!accepted.get(), "a connection that never completed was accepted");
}

#[test]
fn one_connect_is_one_accept_even_when_its_answer_is_held() {
    let ctx = with_latency(14, Duration::from_millis(5));
    let sim = ctx.sim().unwrap();
    let l = TcpListener::bind(&ctx, addr("10.0.0.2:7")).unwrap();
    let accepts = Rc::new(Cell::new(0));
    fn accept(l: TcpListener, n: Rc<Cell<u32>>) {
        let again = l.clone();
        l.async_accept(move |e, _| {
            if e.is_ok() {
                n.set(n.get() + 1);
                accept(again, n);
            }
        });
    }
    accept(l.clone(), accepts.clone());
    sim.hold(ip("10.0.0.2"), ip("10.0.0.1"));
    let s = TcpStream::open(&ctx, Domain::IPV4).unwrap();
    s.bind_to(addr("10.0.0.1:0")).unwrap();
    let r = got();
    let r2 = r.clone();
    s.async_connect(addr("10.0.0.2:7"), move |e| *r2.borrow_mut() = Some(e));
    ctx.run_for(Duration::from_secs(7));
    ctx.restart();
    sim.release(ip("10.0.0.2"), ip("10.0.0.1"));
    ctx.run_for(Duration::from_secs(20));
    l.close();
    ctx.restart();
    ctx.run();
    assert_eq!(r.take(), Some(Error::NONE));
    assert_eq!(accepts.get(), 1);
}

#[test]
fn a_connect_whose_listener_closes_at_once_succeeds_and_then_reads_a_reset() {
    for seed in 0..12 {
        let ctx = IoContext::simulated_with(
            SimConfig::new(seed).latency(Duration::from_millis(1), Duration::from_millis(100)),
        );
        let l = TcpListener::bind(&ctx, addr("10.0.0.2:7")).unwrap();
        let s = TcpStream::open(&ctx, Domain::IPV4).unwrap();
        s.bind_to(addr("10.0.0.1:0")).unwrap();
        let r = got();
        let (r2, s2) = (r.clone(), s.clone());
        s.async_connect(addr("10.0.0.2:7"), move |e| {
            assert_eq!(e, Error::NONE, "seed {seed}: the answer came before the reset");
            s2.async_read_some(vec![0u8; 4], move |e, n, _| *r2.borrow_mut() = Some((e, n)));
        });
        // The listener goes as soon as the connection waits in it.
        let l2 = l.clone();
        l.async_wait(WaitType::Read, move |_| l2.close());
        ctx.run();
        assert_eq!(r.take(), Some((Error::CONNECTION_RESET, 0)), "seed {seed}");
    }
}

#[test]
fn a_refusal_that_cannot_come_back_leaves_the_connect_to_time_out() {
    let ctx = with_latency(15, Duration::from_millis(5));
    let sim = ctx.sim().unwrap();
    sim.partition_oneway(ip("10.0.0.2"), ip("10.0.0.1"));
    let s = TcpStream::open(&ctx, Domain::IPV4).unwrap();
    s.bind_to(addr("10.0.0.1:0")).unwrap();
    let r = got();
    let r2 = r.clone();
    s.async_connect(addr("10.0.0.2:7"), move |e| *r2.borrow_mut() = Some(e));
    ctx.run();
    assert_eq!(r.take(), Some(Error::TIMED_OUT));
    assert_eq!(sim.now(), Duration::from_secs(127));
}

#[test]
fn bytes_that_can_never_cross_end_the_connection_after_15_resends() {
    let ctx = with_latency(16, Duration::from_millis(5));
    let sim = ctx.sim().unwrap();
    let (client, _server) = pair_at(&ctx, addr("10.0.0.2:7"), Some(addr("10.0.0.1:0")));
    sim.partition(ip("10.0.0.1"), ip("10.0.0.2"));
    let start = sim.now();
    client.async_write_some(b"lost".to_vec(), |e, n| assert_eq!((e, n), (Error::NONE, 4)));
    let r = got();
    let (r2, sim2) = (r.clone(), sim.clone());
    client.async_read_some(vec![0u8; 4], move |e, _, _| *r2.borrow_mut() = Some((e, sim2.now())));
    ctx.run();
    let (e, at) = r.take().unwrap();
    assert_eq!(e, Error::TIMED_OUT);
    // 0.2 s doubling to 120 s, 15 resends: about 924.6 s, as Linux's.
    let gave_up = at - start;
    assert!(gave_up > Duration::from_secs(920) && gave_up < Duration::from_secs(930), "{gave_up:?}");
}

#[test]
fn a_lost_ack_leaves_the_client_connected_and_the_backlog_free_after_a_minute() {
    let ctx = with_latency(17, Duration::from_millis(5));
    let sim = ctx.sim().unwrap();
    let l = TcpListener::bind_with_backlog(&ctx, addr("10.0.0.2:7"), 1).unwrap();
    let accepted = Rc::new(RefCell::new(Vec::new()));
    fn accept(l: TcpListener, got: Rc<RefCell<Vec<SocketAddr>>>) {
        let again = l.clone();
        l.async_accept(move |e, s| {
            if e.is_ok() {
                got.borrow_mut().push(s.unwrap().peer_addr().unwrap());
                accept(again, got);
            }
        });
    }
    accept(l.clone(), accepted.clone());
    let a = TcpStream::open(&ctx, Domain::IPV4).unwrap();
    a.bind_to(addr("10.0.0.1:0")).unwrap();
    a.async_connect(addr("10.0.0.2:7"), |e| assert_eq!(e, Error::NONE));
    // The SYN-ACK gets through at 10 ms; the ACKs back never do.
    let t = ioctx::SteadyTimer::new(&ctx);
    t.expires_after(Duration::from_millis(7));
    let s2 = sim.clone();
    t.async_wait(move |_| s2.partition_oneway(ip("10.0.0.1"), ip("10.0.0.2")));
    let read = got();
    let r2 = read.clone();
    a.async_read_some(vec![0u8; 4], move |e, n, _| *r2.borrow_mut() = Some((e, n)));
    ctx.run_for(Duration::from_secs(1000));
    ctx.restart();
    assert_eq!(*read.borrow(), None, "an idle connection is never timed out");
    assert!(accepted.borrow().is_empty());
    sim.heal();
    // The half-open end was dropped after 63 s: the backlog takes another.
    let b = TcpStream::open(&ctx, Domain::IPV4).unwrap();
    b.bind_to(addr("10.0.0.3:0")).unwrap();
    let r = got();
    let r2 = r.clone();
    b.async_connect(addr("10.0.0.2:7"), move |e| *r2.borrow_mut() = Some(e));
    ctx.run_for(Duration::from_secs(1));
    ctx.restart();
    assert_eq!(r.take(), Some(Error::NONE));
    assert_eq!(*accepted.borrow(), [b.local_addr().unwrap()]);
    // A's first write meets a server that forgot it: a reset.
    a.async_write_some(b"late".to_vec(), |e, _| assert_eq!(e, Error::NONE));
    ctx.run_for(Duration::from_secs(1));
    assert_eq!(read.take(), Some((Error::CONNECTION_RESET, 0)));
}

#[test]
fn a_half_open_connection_whose_answer_cannot_arrive_is_dropped_after_a_minute() {
    let ctx = with_latency(18, Duration::from_millis(5));
    let sim = ctx.sim().unwrap();
    let l = TcpListener::bind_with_backlog(&ctx, addr("10.0.0.2:7"), 1).unwrap();
    l.async_accept(|e, _| assert_eq!(e, Error::NONE));
    sim.partition_oneway(ip("10.0.0.2"), ip("10.0.0.1"));
    let a = TcpStream::open(&ctx, Domain::IPV4).unwrap();
    a.bind_to(addr("10.0.0.1:0")).unwrap();
    let r = got();
    let r2 = r.clone();
    a.async_connect(addr("10.0.0.2:7"), move |e| *r2.borrow_mut() = Some(e));
    ctx.run_for(Duration::from_secs(130));
    ctx.restart();
    assert_eq!(r.take(), Some(Error::TIMED_OUT));
    sim.heal();
    let b = TcpStream::open(&ctx, Domain::IPV4).unwrap();
    b.bind_to(addr("10.0.0.3:0")).unwrap();
    let r2 = r.clone();
    b.async_connect(addr("10.0.0.2:7"), move |e| *r2.borrow_mut() = Some(e));
    ctx.run();
    assert_eq!(r.take(), Some(Error::NONE), "the backlog is free again");
}

#[test]
fn closing_a_listener_while_its_answer_is_on_the_way_resets_the_connection() {
    let ctx = with_latency(19, Duration::from_millis(50));
    let l = TcpListener::bind(&ctx, addr("10.0.0.2:7")).unwrap();
    let s = TcpStream::open(&ctx, Domain::IPV4).unwrap();
    s.bind_to(addr("10.0.0.1:0")).unwrap();
    let r = got();
    let (r2, s2) = (r.clone(), s.clone());
    s.async_connect(addr("10.0.0.2:7"), move |e| {
        assert_eq!(e, Error::NONE, "the answer had left");
        s2.async_read_some(vec![0u8; 4], move |e, n, _| *r2.borrow_mut() = Some((e, n)));
    });
    let t = ioctx::SteadyTimer::new(&ctx);
    t.expires_after(Duration::from_millis(75)); // the SYN came at 50 ms
    t.async_wait(move |_| l.close());
    ctx.run();
    assert_eq!(r.take(), Some((Error::CONNECTION_RESET, 0)));
}

#[test]
fn a_reset_comes_after_the_bytes_already_sent() {
    let ctx = with_latency(20, Duration::from_millis(50));
    let (client, server) = pair_at(&ctx, addr("10.0.0.2:7"), Some(addr("10.0.0.1:0")));
    client.async_write_some(b"xyz".to_vec(), |e, _| assert_eq!(e, Error::NONE));
    server.async_wait(WaitType::Read, |e| assert_eq!(e, Error::NONE));
    ctx.run();
    ctx.restart();
    server.async_write_some(b"abc".to_vec(), |e, _| assert_eq!(e, Error::NONE));
    let t = ioctx::SteadyTimer::new(&ctx);
    t.expires_after(Duration::from_millis(10));
    let s2 = server.clone();
    t.async_wait(move |_| s2.close()); // "xyz" unread: a reset, behind "abc"
    let (got, end) = read_all(&ctx, &client);
    assert_eq!((got.as_slice(), end), (&b"abc"[..], Error::CONNECTION_RESET));
}

#[test]
fn a_reset_after_a_heal_leaves_at_once() {
    let ctx = with_latency(21, Duration::from_millis(5));
    let sim = ctx.sim().unwrap();
    let (client, server) = pair_at(&ctx, addr("10.0.0.2:7"), Some(addr("10.0.0.1:0")));
    server.async_write_some(b"u".to_vec(), |e, _| assert_eq!(e, Error::NONE));
    client.async_wait(WaitType::Read, |e| assert_eq!(e, Error::NONE));
    ctx.run();
    ctx.restart();
    sim.partition(ip("10.0.0.1"), ip("10.0.0.2"));
    client.async_write_some(b"x".to_vec(), |e, _| assert_eq!(e, Error::NONE));
    // Five minutes pass: "x" is resent, backing off, up to 120 s apart.
    let t = ioctx::SteadyTimer::new(&ctx);
    t.expires_after(Duration::from_secs(300));
    t.async_wait(|e| assert_eq!(e, Error::NONE));
    ctx.run();
    ctx.restart();
    sim.heal();
    let closed_at = sim.now();
    client.close(); // "u" unread: a reset
    let r = got();
    let (r2, sim2) = (r.clone(), sim.clone());
    server.async_read_some(vec![0u8; 4], move |e, n, _| *r2.borrow_mut() = Some((e, n, sim2.now())));
    ctx.run();
    let (e, n, at) = r.take().unwrap();
    assert_eq!((e, n), (Error::CONNECTION_RESET, 0));
    assert!(at - closed_at <= Duration::from_millis(5), "{:?}", at - closed_at);
}

#[test]
fn closing_a_listener_resets_the_connections_it_had_not_handed_out() {
    let ctx = with_latency(9, Duration::from_millis(5));
    let l = TcpListener::bind(&ctx, addr("10.0.0.2:7")).unwrap();
    let s = TcpStream::open(&ctx, Domain::IPV4).unwrap();
    s.async_connect(addr("10.0.0.2:7"), |e| assert_eq!(e, Error::NONE));
    ctx.run();
    ctx.restart();
    l.close();
    let (_, end) = read_all(&ctx, &s);
    assert_eq!(end, Error::CONNECTION_RESET);
}

#[test]
fn ipv6_streams_connect_and_an_ipv4_listener_does_not_take_them() {
    let ctx = IoContext::simulated(10);
    let (client, server) = pair_at(&ctx, addr("[fd00::2]:7"), Some(addr("[fd00::1]:0")));
    assert_eq!(server.peer_addr().unwrap(), client.local_addr().unwrap());
    let _v4 = TcpListener::bind(&ctx, addr("10.0.0.2:8")).unwrap();
    let s = TcpStream::open(&ctx, Domain::IPV6).unwrap();
    let got = Rc::new(Cell::new(None));
    let g = got.clone();
    s.async_connect(addr("10.0.0.2:8"), move |e| g.set(Some(e)));
    ctx.run();
    // EAFNOSUPPORT, as Linux answers a connect to the other family.
    assert_eq!(got.get(), Some(Error::from_raw_os_error(97)));
}

#[test]
fn what_a_simulated_stream_cannot_do_is_unsupported() {
    let ctx = IoContext::simulated(11);
    let unsupported = |r: std::io::Result<()>| matches!(r, Err(e) if e.kind() == ErrorKind::Unsupported);
    // A blocking connect could never finish: virtual time stands still while it waits.
    let e = TcpStream::connect(&ctx, addr("10.0.0.2:7")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("async_connect"), "{e}");
    // A real stream cannot join a simulated network, nor a simulated one leave it.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(unsupported(TcpListener::from_std(&ctx, l).map(drop)));
    let (client, _server) = pair(&ctx);
    assert!(unsupported(client.release().map(drop)));
    assert!(unsupported(client.with_socket2(|_| ())));
    ctx.post(|| {});
    assert_eq!(ctx.run(), 1);
}

// ------------------------------------------------------------ determinism

/// A lossy, reordering transfer in both directions; returns the trace hash.
fn lossy_exchange(seed: u64) -> u64 {
    let ctx = IoContext::simulated_with(
        SimConfig::new(seed).latency(Duration::from_millis(1), Duration::from_millis(40)).loss(0.2),
    );
    let sim = ctx.sim().unwrap();
    sim.set_link(ip("10.0.0.1"), ip("10.0.0.2"), Link::new().loss(0.4));
    let (client, server) = pair_at(&ctx, addr("10.0.0.2:7"), Some(addr("10.0.0.1:0")));
    for i in 0..20u8 {
        client.async_write_some(vec![i; 500], |e, _| assert_eq!(e, Error::NONE));
        server.async_write_some(vec![i; 300], |e, _| assert_eq!(e, Error::NONE));
    }
    client.shutdown(Shutdown::Write).unwrap();
    server.shutdown(Shutdown::Write).unwrap();
    // Losses back off (0.2 s, doubling): allow minutes of virtual time.
    let (a, _) = read_all_within(&ctx, &server, Duration::from_secs(900));
    let (b, _) = read_all_within(&ctx, &client, Duration::from_secs(900));
    assert_eq!((a.len(), b.len()), (10_000, 6_000));
    sim.trace_hash()
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    assert_eq!(lossy_exchange(21), lossy_exchange(21));
    assert_ne!(lossy_exchange(21), lossy_exchange(22));
    sim::check_determinism(23, |ctx| {
        let (client, server) = pair(ctx);
        client.async_write_some(b"same".to_vec(), |e, _| assert_eq!(e, Error::NONE));
        server.async_read_some(vec![0u8; 4], |e, n, _| assert_eq!((e, n), (Error::NONE, 4)));
        ctx.run();
    });
}
