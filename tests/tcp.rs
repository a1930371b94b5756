//! TcpListener and TcpStream: the rules of DESIGN.md §1.2 (never inline),
//! S4/S5 (cancel, close, drop; closed sockets) applied to streams, and the
//! stream-specific behaviour (EOF, reset, refused, partial and blocked
//! writes, zero-length operations, EMFILE on accept).

mod common;
use common::{Seen, is_child, run_in_child};
use ioctx::net::{TcpListener, TcpStream, WaitType};
use ioctx::{CancellationType, Error, IoContext, Operation};
use socket2::{Domain, SockRef, Socket, Type};
use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- fixtures

fn v4() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn v6() -> SocketAddr {
    "[::1]:0".parse().unwrap()
}

/// False (with a note) when this host has no IPv6 loopback.
fn have_ipv6() -> bool {
    match std::net::TcpListener::bind(v6()) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("no IPv6 loopback here ({e}): the ::1 part is skipped");
            false
        }
    }
}

/// `run_for` with a safety net: a bug fails the test instead of hanging it.
/// Asserts that the loop ran out of work (nothing left pending).
fn run_bounded(ctx: &IoContext) -> usize {
    let n = ctx.run_for(Duration::from_secs(5));
    assert!(ctx.stopped(), "work is left after 5 s: an operation never completed");
    ctx.restart();
    n
}

/// A stream on the loop connected to a blocking std stream (2 s timeouts).
fn std_pair(ctx: &IoContext) -> (TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind(v4()).unwrap();
    let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mine, _) = l.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    peer.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    (TcpStream::from_std(ctx, mine).unwrap(), peer)
}

/// A flag that a test sets right after an initiating call returns; handlers
/// assert it, proving that they did not run inside that call (§1.2).
#[derive(Clone, Default)]
struct Returned(Rc<Cell<bool>>);
impl Returned {
    fn set(&self) {
        self.0.set(true);
    }
    fn check(&self, what: &str) {
        assert!(self.0.get(), "{what}: the handler ran inside the initiating call");
    }
}

/// `len` bytes of little-endian u32 words counting up from `first`: any
/// loss, duplication or reordering of bytes shows.
fn pattern(first: u32, len: usize) -> Vec<u8> {
    (first..).flat_map(u32::to_le_bytes).take(len).collect()
}

/// Reads with `async_read_some` until an error (EOF included), appending the
/// bytes to `into`; `end` gets the error that stopped it.
fn read_to_end(s: TcpStream, chunk: usize, into: Rc<RefCell<Vec<u8>>>, end: Rc<Cell<Option<Error>>>) {
    let s2 = s.clone();
    s.async_read_some(vec![0u8; chunk], move |e, n, buf| {
        if e.is_err() {
            assert_eq!(n, 0, "an error with bytes");
            end.set(Some(e));
            return;
        }
        assert!(n > 0, "a successful read_some of a non-empty buffer returned no bytes");
        into.borrow_mut().extend_from_slice(&buf[..n]);
        read_to_end(s2, chunk, into, end);
    });
}

/// Writes 64 KiB chunks until one stays pending (the peer does not read):
/// returns it and what the completed ones recorded.
fn write_until_pending(ctx: &IoContext, s: &TcpStream) -> (Operation, Seen) {
    s.with_socket2(|s| s.set_send_buffer_size(4096)).unwrap().unwrap();
    let seen = Seen::default();
    for _ in 0..10_000 {
        let op = s.async_write_some(vec![7u8; 65536], seen.send_handler());
        if op.is_pending() {
            ctx.poll();
            ctx.restart();
            if op.is_pending() {
                return (op, seen);
            }
        }
    }
    panic!("640 MB written to a peer that never reads: async_write_some never had to wait");
}

// ------------------------------------------------------- 1. round trip

#[test]
fn accept_connect_echo_round_trip_with_handlers_never_inline() {
    let ctx = IoContext::new().unwrap();
    let listener = TcpListener::bind(&ctx, v4()).unwrap();
    let addr = listener.local_addr().unwrap();
    let client = TcpStream::open(&ctx, Domain::IPV4).unwrap();
    let accepted: Rc<RefCell<Option<TcpStream>>> = Rc::default();
    let echoed: Rc<RefCell<Option<Vec<u8>>>> = Rc::default();

    // The server: accept (queued: nothing is pending yet), then echo once.
    let accept_returned = Returned::default();
    let (ar, acc) = (accept_returned.clone(), accepted.clone());
    let op = listener.async_accept(move |e, s| {
        ar.check("async_accept (queued)");
        assert_eq!(e, Error::NONE);
        let s = s.expect("a stream with NONE");
        *acc.borrow_mut() = Some(s.clone());
        let read_returned = Returned::default();
        let rr = read_returned.clone();
        s.clone().async_read_some(vec![0u8; 64], move |e, n, buf| {
            rr.check("server async_read_some");
            assert_eq!((e, &buf[..n]), (Error::NONE, &b"ping"[..]));
            let write_returned = Returned::default();
            let wr = write_returned.clone();
            s.async_write_some(buf[..n].to_vec(), move |e, n| {
                wr.check("server async_write_some");
                assert_eq!((e, n), (Error::NONE, 4));
            });
            write_returned.set();
        });
        read_returned.set();
    });
    assert!(op.is_pending());
    accept_returned.set();

    // The client: connect, send, read the echo.
    let connect_returned = Returned::default();
    let (cr, c, ech) = (connect_returned.clone(), client.clone(), echoed.clone());
    client.async_connect(addr, move |e| {
        cr.check("async_connect");
        assert_eq!(e, Error::NONE);
        let write_returned = Returned::default();
        let wr = write_returned.clone();
        c.async_write_some(&b"ping"[..], move |e, n| {
            wr.check("client async_write_some");
            assert_eq!((e, n), (Error::NONE, 4));
        });
        write_returned.set();
        c.async_read_some(vec![0u8; 64], move |e, n, buf| {
            assert_eq!(e, Error::NONE);
            *ech.borrow_mut() = Some(buf[..n].to_vec());
        });
    });
    connect_returned.set();

    run_bounded(&ctx);
    assert_eq!(echoed.borrow().as_deref(), Some(&b"ping"[..]));
    let server_side = accepted.borrow_mut().take().unwrap();
    assert_eq!(server_side.peer_addr().unwrap(), client.local_addr().unwrap());
    assert_eq!(server_side.local_addr().unwrap(), client.peer_addr().unwrap());
    assert_eq!(server_side.local_addr().unwrap(), addr);

    // An accept with a connection already waiting completes at once: posted.
    let peer = std::net::TcpStream::connect(addr).unwrap();
    let second = Returned::default();
    let (sr, acc) = (second.clone(), accepted.clone());
    listener.async_accept(move |e, s| {
        sr.check("async_accept (connection waiting)");
        assert_eq!(e, Error::NONE);
        *acc.borrow_mut() = s;
    });
    second.set();
    run_bounded(&ctx);
    let s = accepted.borrow_mut().take().expect("second accept");
    assert_eq!(s.peer_addr().unwrap(), peer.local_addr().unwrap());
}

// ------------------------------------------------- 2. SO_REUSEADDR, backlog

#[test]
fn bind_sets_reuse_address_and_bind_with_backlog_sets_the_backlog() {
    let ctx = IoContext::new().unwrap();
    let listener = TcpListener::bind(&ctx, v4()).unwrap();
    assert!(listener.with_socket2(|s| s.reuse_address()).unwrap().unwrap(), "bind must set SO_REUSEADDR");
    let small = TcpListener::bind_with_backlog(&ctx, v4(), 1).unwrap();
    assert!(small.with_socket2(|s| s.reuse_address()).unwrap().unwrap());

    // SO_REUSEADDR in use: the port can be bound again while a connection
    // accepted on it lies in TIME_WAIT (the server closed first).
    let addr = listener.local_addr().unwrap();
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let server_side = listener.accept().unwrap();
    server_side.close(); // active close: TIME_WAIT on the server's side
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    drop(client);
    listener.close();
    std::thread::sleep(Duration::from_millis(20)); // the client's FIN reaches the server
    let again = TcpListener::bind(&ctx, addr).expect("rebinding a port in TIME_WAIT (SO_REUSEADDR)");
    drop(again);

    // The backlog is honoured: with backlog 1 the kernel completes at most
    // two handshakes (backlog + 1 on Linux) while nobody accepts; a listener
    // with the default backlog (SOMAXCONN) would complete all four at once.
    let small_addr = small.local_addr().unwrap();
    let connected = Rc::new(Cell::new(0usize));
    let clients: Vec<TcpStream> = (0..4)
        .map(|_| {
            let c = TcpStream::open(&ctx, Domain::IPV4).unwrap();
            let k = connected.clone();
            c.async_connect(small_addr, move |e| {
                assert_eq!(e, Error::NONE);
                k.set(k.get() + 1);
            });
            c
        })
        .collect();
    ctx.run_for(Duration::from_millis(300));
    let early = connected.get();
    assert!((1..4).contains(&early), "{early} of 4 connects completed with backlog 1");
    // Accepting frees room: the rest connect on the SYN retransmission (~1 s).
    let accepted = Rc::new(RefCell::new(Vec::new()));
    fn accept_forever(l: TcpListener, into: Rc<RefCell<Vec<TcpStream>>>) {
        let l2 = l.clone();
        l.async_accept(move |e, s| {
            if e == Error::OPERATION_ABORTED {
                return;
            }
            assert_eq!(e, Error::NONE);
            into.borrow_mut().push(s.unwrap());
            accept_forever(l2, into);
        });
    }
    accept_forever(small.clone(), accepted.clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    while connected.get() < 4 && Instant::now() < deadline {
        ctx.run_one_for(Duration::from_millis(100));
    }
    assert_eq!(connected.get(), 4, "connects did not complete after accepting");
    while accepted.borrow().len() < 4 && Instant::now() < deadline {
        ctx.run_one_for(Duration::from_millis(100));
    }
    assert_eq!(accepted.borrow().len(), 4);
    small.cancel().unwrap();
    run_bounded(&ctx);
    drop(clients);
}

// ----------------------------------------- 3. large payload, small pieces

#[test]
fn reader_reassembles_a_large_payload_written_in_small_pieces() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    const LEN: usize = 4 << 20;
    let writer = std::thread::spawn(move || {
        for chunk in pattern(0, LEN).chunks(100) {
            peer.write_all(chunk).unwrap();
        }
        // Dropping the stream closes it: the reader sees EOF after the data.
    });
    let got = Rc::new(RefCell::new(Vec::with_capacity(LEN)));
    let end = Rc::new(Cell::new(None));
    read_to_end(s, 4096, got.clone(), end.clone());
    run_bounded(&ctx);
    writer.join().unwrap();
    assert_eq!(end.get(), Some(Error::EOF));
    let got = got.borrow();
    assert_eq!(got.len(), LEN);
    if let Some(at) = got.iter().zip(pattern(0, LEN)).position(|(a, b)| *a != b) {
        panic!("byte {at} differs");
    }
}

// ---------------------------------------- 4. slow reader, blocked writes

#[test]
fn a_blocked_write_completes_only_after_the_peer_reads_and_queued_writes_stay_fifo() {
    let ctx = IoContext::new().unwrap();
    // The peer: a small receive buffer, set before connecting.
    let l = std::net::TcpListener::bind(v4()).unwrap();
    let peer = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    peer.set_recv_buffer_size(4096).unwrap();
    peer.connect(&l.local_addr().unwrap().into()).unwrap();
    let mut peer: std::net::TcpStream = peer.into();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let s = TcpStream::from_std(&ctx, l.accept().unwrap().0).unwrap();
    s.with_socket2(|s| s.set_send_buffer_size(4096)).unwrap().unwrap();

    // The peer reads everything, but only once told to.
    let started = Arc::new(AtomicBool::new(false));
    let (go, wait_go) = std::sync::mpsc::channel::<()>();
    let st = started.clone();
    let reader = std::thread::spawn(move || {
        wait_go.recv().unwrap();
        st.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        peer.read_to_end(&mut all).unwrap();
        all
    });

    // A handler chain writing 64 KiB chunks, each chunk k its own pattern.
    const CHUNK: usize = 65536;
    let chunk = |k: usize| pattern((k * CHUNK / 4) as u32, CHUNK);
    struct Chain {
        log: RefCell<Vec<(usize, Error, usize)>>,
        last: RefCell<Option<Operation>>,
        stop: Cell<bool>,
        started: Arc<AtomicBool>,
    }
    fn write_chain(s: TcpStream, k: usize, c: Rc<Chain>) {
        let s2 = s.clone();
        let c2 = c.clone();
        let op = s.async_write_some(pattern((k * CHUNK / 4) as u32, CHUNK), move |e, n| {
            c2.log.borrow_mut().push((k, e, n));
            assert_eq!(e, Error::NONE);
            assert!(n > 0);
            if c2.stop.get() {
                // The write that had to wait: it finished because the peer read.
                assert!(c2.started.load(Ordering::SeqCst), "the blocked write completed before the peer read");
            } else if k < 2000 {
                write_chain(s2, k + 1, c2);
            }
        });
        *c.last.borrow_mut() = Some(op);
    }
    let chain = Rc::new(Chain {
        log: RefCell::default(),
        last: RefCell::default(),
        stop: Cell::new(false),
        started: started.clone(),
    });
    write_chain(s.clone(), 0, chain.clone());
    ctx.run_for(Duration::from_millis(200));
    let last = chain.last.borrow().clone().unwrap();
    assert!(last.is_pending(), "the chain never blocked ({} writes done)", chain.log.borrow().len());
    let before = chain.log.borrow().len();
    assert!(before < 2000, "{before} chunks went into a peer that does not read");
    ctx.run_for(Duration::from_millis(50));
    assert_eq!(chain.log.borrow().len(), before, "writes completed while the peer did not read");
    assert!(last.is_pending());
    chain.stop.set(true);

    // Three more writes queue behind the pending one; the last shuts down.
    const EXTRA: usize = 100_000;
    for j in 0..3 {
        let c = chain.clone();
        let s2 = s.clone();
        let op = s.async_write_some(chunk(EXTRA + j), move |e, n| {
            c.log.borrow_mut().push((EXTRA + j, e, n));
            assert_eq!(e, Error::NONE);
            if j == 2 {
                s2.shutdown(Shutdown::Write).unwrap();
            }
        });
        assert!(op.is_pending(), "a write did not queue behind a pending one");
    }
    go.send(()).unwrap();
    run_bounded(&ctx);
    let bytes = reader.join().unwrap();

    let log = chain.log.borrow();
    let order: Vec<usize> = log.iter().map(|&(k, _, _)| k).collect();
    let want: Vec<usize> = (0..before + 1).chain(EXTRA..EXTRA + 3).collect();
    assert_eq!(order, want, "writes completed out of FIFO order");
    let expect: Vec<u8> = log.iter().flat_map(|&(k, _, n)| chunk(k)[..n].to_vec()).collect();
    assert_eq!(bytes.len(), expect.len());
    assert!(bytes == expect, "the peer got different bytes than the handlers reported");
}

// ------------------------------------------------------ 5. peer reset

/// A stream on the loop whose peer has just reset the connection (SO_LINGER
/// 0, then close), with a read pending since before the reset; returns
/// what that read got.
fn reset_under_a_pending_read(ctx: &IoContext) -> (TcpStream, Error, usize) {
    let (s, peer) = std_pair(ctx);
    let got = Rc::new(Cell::new(None));
    let g = got.clone();
    let returned = Returned::default();
    let r = returned.clone();
    s.async_read_some(vec![0u8; 64], move |e, n, _| {
        r.check("async_read_some");
        g.set(Some((e, n)));
    });
    returned.set();
    ctx.poll();
    ctx.restart();
    assert_eq!(got.get(), None);
    SockRef::from(&peer).set_linger(Some(Duration::ZERO)).unwrap();
    drop(peer); // RST
    run_bounded(ctx);
    let (e, n) = got.get().expect("the pending read never completed");
    (s, e, n)
}

#[test]
fn peer_reset_gives_connection_reset_to_a_pending_read_and_an_error_to_a_later_write() {
    let ctx = IoContext::new().unwrap();
    let (s, e, n) = reset_under_a_pending_read(&ctx);
    // Linux reports ECONNRESET (not EOF) for a reset connection.
    assert_eq!((e, n), (Error::CONNECTION_RESET, 0));
    let seen = Seen::default();
    s.async_write_some(&b"after reset"[..], seen.send_handler());
    assert!(seen.get().is_empty());
    run_bounded(&ctx);
    let got = seen.get();
    assert_eq!(got.len(), 1);
    let (e, n) = got[0];
    assert!(
        n == 0 && (e == Error::from_raw_os_error(libc::EPIPE) || e == Error::CONNECTION_RESET),
        "write after reset: {got:?}"
    );
    assert!(s.is_open(), "an error in a handler does not close the stream");
}

#[test]
fn write_after_reset_does_not_raise_sigpipe() {
    const NAME: &str = "write_after_reset_does_not_raise_sigpipe";
    if !is_child(NAME) {
        // Rust programs ignore SIGPIPE; the child restores the default (as
        // in a C host embedding the loop) so that a SIGPIPE would kill it.
        run_in_child(NAME);
        return;
    }
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let ctx = IoContext::new().unwrap();
    let (s, e, _) = reset_under_a_pending_read(&ctx);
    assert_eq!(e, Error::CONNECTION_RESET);
    let epipe = Error::from_raw_os_error(libc::EPIPE);
    let seen = Seen::default();
    s.async_write_some(&b"one buffer"[..], seen.send_handler());
    s.async_write_some((&b"two "[..], &b"buffers"[..]), seen.send_handler());
    run_bounded(&ctx);
    assert_eq!(seen.get(), vec![(epipe, 0), (epipe, 0)]);
    let sync = s.write_some(&b"sync"[..]).unwrap_err();
    assert_eq!(sync.raw_os_error(), Some(libc::EPIPE));
}

// ------------------------------------------- 6. refused; IPv6 loopback

#[test]
fn connect_to_a_closed_port_is_refused_and_ipv6_loopback_connects() {
    let ctx = IoContext::new().unwrap();
    let mut families = vec![v4()];
    if have_ipv6() {
        families.push(v6());
    }
    for any in families {
        let domain = Domain::for_address(any);
        // A port that was just listened on and is closed now.
        let closed = {
            let l = TcpListener::bind(&ctx, any).unwrap();
            l.local_addr().unwrap()
        };
        let refused = TcpStream::open(&ctx, domain).unwrap();
        let seen = Seen::default();
        let returned = Returned::default();
        let (r, s) = (returned.clone(), seen.clone());
        refused.async_connect(closed, move |e| {
            r.check("async_connect (refused)");
            s.wait_handler()(e)
        });
        returned.set();
        run_bounded(&ctx);
        assert_eq!(seen.get(), vec![(Error::CONNECTION_REFUSED, 0)], "{any}");

        // And a real connection in the same family.
        let l = TcpListener::bind(&ctx, any).unwrap();
        let c = TcpStream::open(&ctx, domain).unwrap();
        let ok = Seen::default();
        c.async_connect(l.local_addr().unwrap(), ok.wait_handler());
        l.async_accept(ok.accept_handler());
        run_bounded(&ctx);
        let mut got = ok.get();
        got.sort_by_key(|&(_, n)| n);
        assert_eq!(got, vec![(Error::NONE, 0), (Error::NONE, 1)], "{any}");
        assert_eq!(c.peer_addr().unwrap(), l.local_addr().unwrap());
        assert_eq!(c.local_addr().unwrap().is_ipv6(), any.is_ipv6());
    }
}

// ------------------------------------------------------------- 7. EOF

#[test]
fn peer_shutdown_gives_eof_to_a_pending_read_and_unexpected_eof_to_read_some() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    let seen = Rc::new(RefCell::new(Vec::new()));
    for _ in 0..2 {
        let g = seen.clone();
        s.async_read_some(vec![0u8; 64], move |e, n, buf| g.borrow_mut().push((e, buf[..n].to_vec())));
    }
    ctx.poll();
    ctx.restart();
    assert!(seen.borrow().is_empty());
    peer.write_all(b"last").unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    run_bounded(&ctx);
    assert_eq!(*seen.borrow(), vec![(Error::NONE, b"last".to_vec()), (Error::EOF, vec![])]);

    // Once at the end, a new read gets EOF at once (posted), n == 0.
    let again = Seen::default();
    s.async_read_some(vec![0u8; 64], again.recv_handler());
    assert!(again.get().is_empty(), "the EOF was delivered inline");
    run_bounded(&ctx);
    assert_eq!(again.get(), vec![(Error::EOF, 0)]);

    // The synchronous read errs with EOF, kind UnexpectedEof (Asio's read_some).
    let e = s.read_some(vec![0u8; 64]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(Error::from(e), Error::EOF);

    // Our side can still write: the peer only shut down its writing.
    s.write_some(&b"still open"[..]).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(peer.read(&mut buf).unwrap(), 10);

    // A close (rather than a shutdown) of the peer is EOF as well.
    let (s, peer) = std_pair(&ctx);
    let closed = Seen::default();
    s.async_read_some(vec![0u8; 64], closed.recv_handler());
    drop(peer);
    run_bounded(&ctx);
    assert_eq!(closed.get(), vec![(Error::EOF, 0)]);
}

// ----------------------------------------------- 8. zero-length buffers

#[test]
fn zero_length_reads_and_writes_complete_posted_with_no_io() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    let seen = Seen::default();
    s.async_write_some(Vec::<u8>::new(), seen.send_handler());
    s.async_write_some(Vec::<Vec<u8>>::new(), seen.send_handler());
    s.async_write_some((&b""[..], Vec::<u8>::new()), seen.send_handler());
    s.async_read_some(Vec::new(), seen.recv_handler());
    let s2 = seen.clone();
    s.async_read_some(vec![Vec::<u8>::new(), Vec::new()], move |e, n, _| s2.0.borrow_mut().push((e, n)));
    assert!(seen.get().is_empty(), "a zero-length operation completed inline");
    run_bounded(&ctx);
    assert_eq!(seen.get(), vec![(Error::NONE, 0); 5]);
    // No I/O: the peer got nothing.
    peer.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(peer.read(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);

    // A zero-length read leaves waiting data where it is.
    peer.set_nonblocking(false).unwrap();
    peer.write_all(b"waiting").unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.available().unwrap() < 7 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let zero = Seen::default();
    s.async_read_some(Vec::new(), zero.recv_handler());
    run_bounded(&ctx);
    assert_eq!(zero.get(), vec![(Error::NONE, 0)]);
    assert_eq!(s.available().unwrap(), 7, "the zero-length read consumed data");
    assert_eq!(s.read_some(vec![0u8; 0]).unwrap(), 0);
    assert_eq!(s.write_some(Vec::<u8>::new()).unwrap(), 0);
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    s.async_read_some(vec![0u8; 16], move |e, n, b| {
        assert_eq!(e, Error::NONE);
        g.borrow_mut().extend_from_slice(&b[..n]);
    });
    run_bounded(&ctx);
    assert_eq!(*got.borrow(), b"waiting");

    // On a closed stream even a zero-length operation reports BAD_DESCRIPTOR (S5).
    s.close();
    let closed = Seen::default();
    s.async_read_some(Vec::new(), closed.recv_handler());
    s.async_write_some(Vec::<u8>::new(), closed.send_handler());
    run_bounded(&ctx);
    assert_eq!(closed.get(), vec![(Error::BAD_DESCRIPTOR, 0); 2]);
}

// ---------------------------------------------- 9. S4 / S5 on streams

#[test]
fn s4_cancel_aborts_a_pending_read_and_accept_through_the_queue_and_both_stay_usable() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    let listener = TcpListener::bind(&ctx, v4()).unwrap();
    let seen = Seen::default();
    s.async_read_some(vec![0u8; 8], seen.recv_handler());
    s.async_read_some(vec![0u8; 8], seen.recv_handler());
    s.async_wait(WaitType::Read, seen.wait_handler());
    listener.async_accept(seen.accept_handler());
    ctx.poll();
    ctx.restart();
    assert!(seen.get().is_empty());
    s.cancel().unwrap();
    listener.cancel().unwrap();
    assert!(seen.get().is_empty(), "cancel ran a handler inline");
    run_bounded(&ctx);
    assert_eq!(seen.get(), vec![(Error::OPERATION_ABORTED, 0); 4]);
    assert!(s.is_open() && listener.is_open(), "cancel must not close");

    // Both stay usable.
    peer.write_all(b"after").unwrap();
    let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let ok = Seen::default();
    s.async_read_some(vec![0u8; 8], ok.recv_handler());
    listener.async_accept(ok.accept_handler());
    run_bounded(&ctx);
    assert_eq!(ok.get(), vec![(Error::NONE, 5), (Error::NONE, 1)]);
    // Cancel with nothing pending is fine.
    s.cancel().unwrap();
    assert_eq!(run_bounded(&ctx), 0);
}

#[test]
fn s4_s5_close_aborts_pending_operations_and_later_ones_get_bad_descriptor() {
    let ctx = IoContext::new().unwrap();
    let (s, peer) = std_pair(&ctx);
    let listener = TcpListener::bind(&ctx, v4()).unwrap();
    let (blocked, writes) = write_until_pending(&ctx, &s);
    let seen = Seen::default();
    let mut ops = vec![blocked];
    ops.push(s.async_write_some(&b"queued"[..], seen.send_handler()));
    ops.push(s.async_read_some(vec![0u8; 8], seen.recv_handler()));
    ops.push(s.async_wait(WaitType::Read, seen.wait_handler()));
    ops.push(listener.async_accept(seen.accept_handler()));
    assert!(ops.iter().all(Operation::is_pending));
    s.close();
    listener.close();
    assert!(seen.get().is_empty(), "close ran a handler inline");
    assert!(ops.iter().all(|op| !op.is_pending()));
    run_bounded(&ctx);
    let w = writes.get();
    assert_eq!(w.last(), Some(&(Error::OPERATION_ABORTED, 0)), "the blocked write");
    assert!(w[..w.len() - 1].iter().all(|&(e, n)| e == Error::NONE && n > 0), "{w:?}");
    assert_eq!(seen.get(), vec![(Error::OPERATION_ABORTED, 0); 4]);
    assert!(!s.is_open() && !listener.is_open());

    // S5: everything afterwards gets BAD_DESCRIPTOR, posted.
    let after = Seen::default();
    s.async_read_some(vec![0u8; 8], after.recv_handler());
    s.async_write_some(&b"x"[..], after.send_handler());
    s.async_wait(WaitType::Read, after.wait_handler());
    s.async_wait(WaitType::Write, after.wait_handler());
    s.async_connect(peer.local_addr().unwrap(), after.wait_handler());
    listener.async_accept(after.accept_handler());
    listener.async_wait(WaitType::Read, after.wait_handler());
    assert!(after.get().is_empty(), "an operation on a closed socket completed inline");
    run_bounded(&ctx);
    assert_eq!(after.get(), vec![(Error::BAD_DESCRIPTOR, 0); 7]);
    let bad = |r: io::Error| Error::from(r);
    assert_eq!(bad(s.read_some(vec![0u8; 8]).unwrap_err()), Error::BAD_DESCRIPTOR);
    assert_eq!(bad(s.write_some(&b"x"[..]).unwrap_err()), Error::BAD_DESCRIPTOR);
    assert_eq!(bad(s.cancel().unwrap_err()), Error::BAD_DESCRIPTOR);
    assert_eq!(bad(s.shutdown(Shutdown::Both).unwrap_err()), Error::BAD_DESCRIPTOR);
    assert_eq!(bad(s.set_nodelay(true).unwrap_err()), Error::BAD_DESCRIPTOR);
    assert_eq!(bad(listener.accept().unwrap_err()), Error::BAD_DESCRIPTOR);
    assert!(s.release().is_err() && listener.release().is_err());
    s.close(); // closing twice does nothing
}

#[test]
fn s4_dropping_the_last_handle_aborts_pending_operations_and_closes() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    let listener = TcpListener::bind(&ctx, v4()).unwrap();
    let (blocked, writes) = write_until_pending(&ctx, &s);
    let seen = Seen::default();
    let read = s.async_read_some(vec![0u8; 8], seen.recv_handler());
    let accept = listener.async_accept(seen.accept_handler());
    let other = s.clone();
    drop(s);
    assert!(read.is_pending(), "dropping one of two handles aborted the read");
    drop(other);
    drop(listener);
    assert!(seen.get().is_empty(), "drop ran a handler inline");
    assert!(!read.is_pending() && !accept.is_pending() && !blocked.is_pending());
    run_bounded(&ctx);
    let w = writes.get();
    assert_eq!(w.last(), Some(&(Error::OPERATION_ABORTED, 0)), "the blocked write");
    assert!(w[..w.len() - 1].iter().all(|&(e, n)| e == Error::NONE && n > 0), "{w:?}");
    assert_eq!(seen.get(), vec![(Error::OPERATION_ABORTED, 0); 2]);
    // The descriptor is closed: the peer reads what was sent, then EOF.
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).unwrap();
}

#[test]
fn s4_operation_cancel_aborts_one_pending_read_and_leaves_the_others() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    let got = Rc::new(RefCell::new(Vec::new()));
    let mut ops = Vec::new();
    for k in 0..4usize {
        let g = got.clone();
        ops.push(s.async_read_some(vec![0u8; 8], move |e, n, b| g.borrow_mut().push((k, e, b[..n].to_vec()))));
    }
    ctx.poll();
    ctx.restart();
    // Each kind of cancellation is honoured by a socket operation.
    assert!(ops[1].cancel(CancellationType::TERMINAL));
    assert!(ops[2].cancel(CancellationType::TOTAL));
    assert!(!ops[1].cancel(CancellationType::ALL), "cancelled twice");
    assert!(!ops[1].is_pending() && ops[0].is_pending() && ops[3].is_pending());
    assert!(got.borrow().is_empty(), "Operation::cancel ran the handler inline");
    run_bounded_until(&ctx, || got.borrow().len() == 2);
    assert_eq!(*got.borrow(), vec![(1, Error::OPERATION_ABORTED, vec![]), (2, Error::OPERATION_ABORTED, vec![])]);
    peer.write_all(b"abc").unwrap();
    run_bounded_until(&ctx, || got.borrow().len() == 3);
    assert!(ops[3].cancel(CancellationType::PARTIAL));
    assert!(!ops[0].cancel(CancellationType::ALL), "a completed read was cancelled");
    run_bounded(&ctx);
    assert_eq!(
        got.borrow()[2..],
        [(0, Error::NONE, b"abc".to_vec()), (3, Error::OPERATION_ABORTED, vec![])],
        "the remaining reads"
    );
    // The stream is still fine.
    peer.write_all(b"more").unwrap();
    let ok = Seen::default();
    s.async_read_some(vec![0u8; 8], ok.recv_handler());
    run_bounded(&ctx);
    assert_eq!(ok.get(), vec![(Error::NONE, 4)]);
}

/// Runs handlers one at a time until `done()` (5 s at most).
fn run_bounded_until(ctx: &IoContext, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() && Instant::now() < deadline {
        ctx.run_one_for(Duration::from_millis(50));
    }
    assert!(done(), "not done after 5 s");
    ctx.restart();
}

// ------------------------------------------------- 10. EMFILE on accept

#[test]
#[cfg(target_os = "linux")] // /proc/self/fd
fn accept_out_of_descriptors_reports_emfile_and_the_listener_stays_usable() {
    const NAME: &str = "accept_out_of_descriptors_reports_emfile_and_the_listener_stays_usable";
    if !is_child(NAME) {
        // Lowering RLIMIT_NOFILE would hit every test of this process.
        run_in_child(NAME);
        return;
    }
    let ctx = IoContext::new().unwrap();
    let listener = TcpListener::bind(&ctx, v4()).unwrap();
    let client = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap(); // its fd, before the limit
    let seen = Seen::default();
    let returned = Returned::default();
    let (r, s) = (returned.clone(), seen.clone());
    listener.async_accept(move |e, st| {
        r.check("async_accept (EMFILE)");
        s.accept_handler()(e, st)
    });
    returned.set();

    // Descriptors run out: the limit is the highest open one + 1, and every
    // free number below it is taken.
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    let low = libc::rlimit { rlim_cur: highest + 1, rlim_max: old.rlim_max };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    let mut fillers = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => fillers.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("{e}"),
        }
    }

    let emfile = Error::from_raw_os_error(libc::EMFILE);
    // The queued accept meets the connection with no descriptor to give it.
    client.connect(&listener.local_addr().unwrap().into()).unwrap();
    run_bounded(&ctx);
    assert_eq!(seen.get(), vec![(emfile, 0)], "queued accept");

    // Again, with the connection already waiting in the backlog.
    let again = Seen::default();
    let returned = Returned::default();
    let (r, s) = (returned.clone(), again.clone());
    listener.async_accept(move |e, st| {
        r.check("async_accept (EMFILE, immediate)");
        s.accept_handler()(e, st)
    });
    returned.set();
    run_bounded(&ctx);
    assert_eq!(again.get(), vec![(emfile, 0)], "accept with the connection waiting");
    assert!(listener.is_open());

    // One descriptor free: the waiting connection is accepted.
    drop(fillers.pop());
    let got: Rc<RefCell<Option<TcpStream>>> = Rc::default();
    let g = got.clone();
    listener.async_accept(move |e, st| {
        assert_eq!(e, Error::NONE);
        *g.borrow_mut() = st;
    });
    run_bounded(&ctx);
    let stream = got.borrow_mut().take().expect("the connection waiting in the backlog");
    assert_eq!(stream.peer_addr().unwrap(), client.local_addr().unwrap().as_socket().unwrap());
    // And it works.
    drop(fillers);
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) }, 0);
    let mut client: std::net::TcpStream = client.into();
    client.write_all(b"hi").unwrap();
    let data = Seen::default();
    stream.async_read_some(vec![0u8; 8], data.recv_handler());
    run_bounded(&ctx);
    assert_eq!(data.get(), vec![(Error::NONE, 2)]);
}

// ---------------------------------------------------------- 11. async_wait

#[test]
fn async_wait_reports_readable_and_writable_streams_and_a_pending_connection() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    // Read: completes when data arrives, and leaves the data in place.
    let seen = Seen::default();
    let returned = Returned::default();
    let (r, sn) = (returned.clone(), seen.clone());
    s.async_wait(WaitType::Read, move |e| {
        r.check("async_wait(Read)");
        sn.wait_handler()(e)
    });
    returned.set();
    ctx.run_for(Duration::from_millis(30));
    ctx.restart();
    assert!(seen.get().is_empty(), "a read wait completed with no data");
    peer.write_all(b"data").unwrap();
    run_bounded(&ctx);
    assert_eq!(seen.get(), vec![(Error::NONE, 0)]);
    assert_eq!(s.available().unwrap(), 4);

    // Data already there: completes at once (on the next poll of the reactor).
    let there = Seen::default();
    let returned = Returned::default();
    let (r, t) = (returned.clone(), there.clone());
    s.async_wait(WaitType::Read, move |e| {
        r.check("async_wait(Read), data waiting");
        t.wait_handler()(e)
    });
    returned.set();
    let t0 = Instant::now();
    run_bounded(&ctx);
    assert_eq!(there.get(), vec![(Error::NONE, 0)]);
    assert!(t0.elapsed() < Duration::from_millis(500), "took {:?}", t0.elapsed());
    assert_eq!(s.read_some(vec![0u8; 8]).unwrap(), 4);

    // Write: a connected stream with room is writable.
    let w = Seen::default();
    let returned = Returned::default();
    let (r, ww) = (returned.clone(), w.clone());
    s.async_wait(WaitType::Write, move |e| {
        r.check("async_wait(Write)");
        ww.wait_handler()(e)
    });
    returned.set();
    run_bounded(&ctx);
    assert_eq!(w.get(), vec![(Error::NONE, 0)]);

    // Read on a listener: a connection is pending.
    let listener = TcpListener::bind(&ctx, v4()).unwrap();
    let l = Seen::default();
    listener.async_wait(WaitType::Read, l.wait_handler());
    ctx.run_for(Duration::from_millis(30));
    ctx.restart();
    assert!(l.get().is_empty(), "a listener read wait completed with no connection");
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    run_bounded(&ctx);
    assert_eq!(l.get(), vec![(Error::NONE, 0)]);
    listener.set_nonblocking(true).unwrap();
    let accepted = listener.accept().expect("the wait said a connection is pending");
    assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());
}

// ------------------------------------------- 12. sync read/write modes

#[test]
fn sync_read_some_and_write_some_block_unless_nonblocking_then_would_block() {
    let ctx = IoContext::new().unwrap();
    let (s, peer) = std_pair(&ctx);
    assert!(!s.nonblocking());
    // Blocking read: waits for the peer (which writes from a thread later).
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        (&peer).write_all(b"late").unwrap();
        peer
    });
    let mut buf = [0u8; 16];
    let t0 = Instant::now();
    let n = s.read_some(&mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"late");
    assert!(t0.elapsed() >= Duration::from_millis(20), "read_some did not block");
    let mut peer = writer.join().unwrap();
    assert_eq!(s.write_some(&b"back"[..]).unwrap(), 4);
    let mut four = [0u8; 4];
    peer.read_exact(&mut four).unwrap();
    assert_eq!(&four, b"back");

    // Non-blocking: WouldBlock instead of waiting.
    s.set_nonblocking(true).unwrap();
    assert!(s.nonblocking());
    assert_eq!(s.read_some(vec![0u8; 16]).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    s.with_socket2(|s| s.set_send_buffer_size(4096)).unwrap().unwrap();
    let mut sent = 0usize;
    let full = loop {
        match s.write_some(vec![1u8; 65536]) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
        assert!(sent < 1 << 30, "write_some never would block");
    };
    assert_eq!(full.kind(), io::ErrorKind::WouldBlock);
    assert_eq!(Error::from(full), Error::WOULD_BLOCK);

    // Blocking again: write_some waits until the peer makes room.
    s.set_nonblocking(false).unwrap();
    let drain = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        let mut total = 0usize;
        let mut buf = vec![0u8; 65536];
        while total < sent + 1 {
            total += peer.read(&mut buf).unwrap();
        }
        peer
    });
    let t0 = Instant::now();
    assert!(s.write_some(&[2u8; 100][..]).unwrap() > 0);
    assert!(t0.elapsed() >= Duration::from_millis(20), "write_some did not block on a full buffer");
    let _peer = drain.join().unwrap(); // kept open: no EOF below

    // The mode is for sync calls only: async reads still wait.
    s.set_nonblocking(true).unwrap();
    let seen = Seen::default();
    s.async_read_some(vec![0u8; 8], seen.recv_handler());
    ctx.poll();
    assert!(seen.get().is_empty());
    s.cancel().unwrap();
    run_bounded(&ctx);
    assert_eq!(seen.get(), vec![(Error::OPERATION_ABORTED, 0)]);
}

// --------------------------------------- 13. from_std / release; nodelay

#[test]
fn from_std_and_release_round_trip_and_nodelay() {
    let ctx = IoContext::new().unwrap();
    // Listener: std -> ioctx -> std.
    let std_l = std::net::TcpListener::bind(v4()).unwrap();
    let addr = std_l.local_addr().unwrap();
    let listener = TcpListener::from_std(&ctx, std_l).unwrap();
    assert_eq!(listener.local_addr().unwrap(), addr);
    let c1 = std::net::TcpStream::connect(addr).unwrap();
    let got: Rc<RefCell<Option<TcpStream>>> = Rc::default();
    let g = got.clone();
    listener.async_accept(move |e, s| {
        assert_eq!(e, Error::NONE);
        *g.borrow_mut() = s;
    });
    run_bounded(&ctx);
    let s1 = got.borrow_mut().take().unwrap();
    assert_eq!(s1.peer_addr().unwrap(), c1.local_addr().unwrap());
    let pending = Seen::default();
    listener.async_accept(pending.accept_handler());
    let std_l = listener.release().unwrap();
    assert!(!listener.is_open());
    run_bounded(&ctx);
    assert_eq!(pending.get(), vec![(Error::OPERATION_ABORTED, 0)], "release aborts pending accepts");
    // Blocking again: accept waits for the connection made by a thread.
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        std::net::TcpStream::connect(addr).unwrap()
    });
    let (a, _) = std_l.accept().expect("the released listener is blocking and listening");
    let c2 = t.join().unwrap();
    assert_eq!(a.peer_addr().unwrap(), c2.local_addr().unwrap());

    // Stream: std -> ioctx -> std, the connection intact.
    let s = TcpStream::from_std(&ctx, a).unwrap();
    s.set_nodelay(true).unwrap();
    assert!(s.nodelay().unwrap());
    s.set_nodelay(false).unwrap();
    assert!(!s.nodelay().unwrap());
    s.set_nodelay(true).unwrap();
    let sent = Seen::default();
    s.async_write_some(&b"from ioctx"[..], sent.send_handler());
    let reading = Seen::default();
    s.async_read_some(vec![0u8; 8], reading.recv_handler());
    run_bounded_until(&ctx, || !sent.get().is_empty());
    let mut back = s.release().unwrap();
    assert!(!s.is_open());
    run_bounded(&ctx);
    assert_eq!(sent.get(), vec![(Error::NONE, 10)]);
    assert_eq!(reading.get(), vec![(Error::OPERATION_ABORTED, 0)], "release aborts pending reads");
    assert!(SockRef::from(&back).tcp_nodelay().unwrap(), "options survive release");
    let mut c2 = c2;
    let mut buf = [0u8; 10];
    c2.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from ioctx");
    // Blocking again: a read waits for the thread's late write.
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        c2.write_all(b"to std").unwrap();
        c2
    });
    let mut six = [0u8; 6];
    back.read_exact(&mut six).expect("the released stream is blocking");
    assert_eq!(&six, b"to std");
    drop(t.join().unwrap());
    drop((s1, c1));
}

// ---------------------------------------------- 14. FIFO of queued reads

#[test]
fn queued_reads_complete_in_fifo_order_with_the_data_in_order() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    let got = Rc::new(RefCell::new(Vec::new()));
    for k in 0..50usize {
        let g = got.clone();
        s.async_read_some(vec![0u8; 4], move |e, n, b| {
            assert_eq!(e, Error::NONE);
            g.borrow_mut().push((k, b[..n].to_vec()));
        });
    }
    let g = got.clone();
    ctx.post(move || assert!(g.borrow().is_empty(), "a read completed before the data was written"));
    ctx.poll();
    ctx.restart();
    // One write: one readiness event serves every queued read, in order.
    let data = pattern(0, 200);
    peer.write_all(&data).unwrap();
    run_bounded(&ctx);
    let got = got.borrow();
    assert_eq!(got.iter().map(|(k, _)| *k).collect::<Vec<_>>(), (0..50).collect::<Vec<_>>());
    assert!(got.iter().all(|(_, b)| b.len() == 4));
    assert_eq!(got.iter().flat_map(|(_, b)| b.clone()).collect::<Vec<_>>(), data);
}
