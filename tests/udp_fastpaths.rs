//! The UDP fast paths: receive read-ahead (`recvmmsg` with a spare slot and
//! the datagram kept for the next receive), immediate completions without an
//! operation, writability registered only while a send waits; plus the
//! handler queue (inline closures in a growable ring) seen through the public
//! API: mixed sizes, posts from handlers, panics, nested `poll()`, teardown.
//!
//! Everything runs on loopback or on an AF_UNIX socketpair, in one thread.

mod common;
use common::{EPOLLIN, EPOLLOUT, connected_pair, epoll_events, local, raw_fd, std_peer};
use ioctx::net::{MessageFlags, UdpSocket, WaitType};
use ioctx::{CancellationType, Error, Executor, IoContext, Operation, SteadyTimer};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// An ioctx socket over one end of an AF_UNIX datagram socketpair, whose
/// sends really would block when the other end (returned, non-blocking)
/// falls behind; loopback UDP never does.
fn unix_pair(ctx: &IoContext) -> (UdpSocket, std::os::unix::net::UnixDatagram) {
    let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let sock = UdpSocket::from_std(ctx, std::os::fd::OwnedFd::from(a).into()).unwrap();
    b.set_nonblocking(true).unwrap();
    (sock, b)
}

/// `restart()` then `poll()`: run what is ready now, whatever happened before.
fn pump(ctx: &IoContext) -> usize {
    ctx.restart();
    ctx.poll()
}

/// `restart()` then `run()`, bounded: returns when out of work as `run()`
/// does, or after two seconds if something hangs (the assertions after it
/// then fail instead of the test hanging). `ctx.stopped()` afterwards tells
/// that it ran out of work.
fn run(ctx: &IoContext) -> usize {
    ctx.restart();
    ctx.run_for(Duration::from_secs(2))
}

/// A synchronous receive (`receive_from` if `from`, else `receive`) of a
/// datagram that must be there, in the kernel or read ahead: fails instead
/// of blocking forever if it is not. Returns the length and the sender
/// (the unspecified address for `receive`).
fn receive_now(sock: &UdpSocket, buf: &mut [u8], from: bool) -> (usize, SocketAddr) {
    sock.set_nonblocking(true).unwrap();
    for _ in 0..1000 {
        let r = if from { sock.receive_from(&mut *buf) } else { sock.receive(&mut *buf).map(|n| (n, unspecified())) };
        match r {
            Ok(r) => return r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("receive failed: {e}"),
        }
    }
    panic!("no datagram to receive");
}

/// One completed receive: its tag, error, bytes and sender.
type Got = (&'static str, Error, Vec<u8>, SocketAddr);

/// Records the receives in the order their handlers run.
#[derive(Clone, Default)]
struct Log(Rc<RefCell<Vec<Got>>>);

impl Log {
    fn recv(&self, tag: &'static str) -> impl FnOnce(Error, usize, Vec<u8>) + 'static {
        let l = self.0.clone();
        move |e, n, b| l.borrow_mut().push((tag, e, b[..n].to_vec(), unspecified()))
    }
    fn recv_from(&self, tag: &'static str) -> impl FnOnce(Error, usize, Vec<u8>, SocketAddr) + 'static {
        let l = self.0.clone();
        move |e, n, b, from| l.borrow_mut().push((tag, e, b[..n].to_vec(), from))
    }
    fn take(&self) -> Vec<Got> {
        std::mem::take(&mut *self.0.borrow_mut())
    }
    fn len(&self) -> usize {
        self.0.borrow().len()
    }
}

fn unspecified() -> SocketAddr {
    "0.0.0.0:0".parse().unwrap()
}

/// A datagram of `len` bytes that starts with `id` and is filled with a
/// pattern derived from both, so that a wrong or shifted payload shows.
fn datagram(id: u32, len: usize) -> Vec<u8> {
    let mut d: Vec<u8> = (0..len).map(|k| (k as u32).wrapping_mul(31).wrapping_add(id) as u8).collect();
    let head = id.to_le_bytes();
    let n = len.min(4);
    d[..n].copy_from_slice(&head[..n]);
    d
}

// ---------------------------------------------------------------------------
// Read-ahead
// ---------------------------------------------------------------------------

#[test]
fn a_datagram_read_ahead_goes_to_the_next_receive_of_any_kind_in_order() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let d1 = b"first".to_vec();
    let d2 = b"second!".to_vec();
    let d3 = b"third-third".to_vec();
    for d in [&d1, &d2, &d3] {
        peer.send(d).unwrap();
    }
    let log = Log::default();

    // #1 by an async receive, which reads #2 ahead.
    let op = sock.async_receive(vec![0u8; 64], log.recv("async #1"));
    assert!(!op.is_pending(), "a datagram was there: the receive completes at once");
    assert_eq!(log.len(), 0, "never inline");
    assert_eq!(run(&ctx), 1);
    assert_eq!(log.take(), vec![("async #1", Error::NONE, d1, unspecified())]);

    // The next datagram's length, as FIONREAD would give it.
    assert_eq!(sock.available().unwrap(), d2.len());

    // A peek sees #2 and leaves it.
    ctx.restart();
    let op = sock.async_receive_with_flags(vec![0u8; 64], MessageFlags::PEEK, log.recv("peek"));
    assert!(!op.is_pending());
    run(&ctx);
    assert_eq!(log.take(), vec![("peek", Error::NONE, d2.clone(), unspecified())]);
    assert_eq!(sock.available().unwrap(), d2.len(), "a peek must not consume");

    // A synchronous receive takes #2.
    let mut buf = [0u8; 64];
    assert_eq!(receive_now(&sock, &mut buf, false).0, d2.len());
    assert_eq!(&buf[..d2.len()], &d2[..]);
    assert_eq!(sock.available().unwrap(), d3.len());

    // An async receive takes #3; nothing is left.
    ctx.restart();
    sock.async_receive(vec![0u8; 64], log.recv("async #3"));
    run(&ctx);
    assert_eq!(log.take(), vec![("async #3", Error::NONE, d3, unspecified())]);
    assert_eq!(sock.available().unwrap(), 0);
    sock.set_nonblocking(true).unwrap();
    let e = sock.receive(&mut buf[..]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "a fourth datagram appeared");
}

#[test]
fn a_synchronous_receive_reads_ahead_for_an_async_one_and_the_other_way_round() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let ds: Vec<Vec<u8>> = (0..4).map(|i| datagram(i, 20 + i as usize)).collect();
    for d in &ds {
        peer.send(d).unwrap();
    }
    let mut buf = [0u8; 64];
    // sync #0 reads #1 ahead; async #1 comes from the read-ahead slot.
    assert_eq!(receive_now(&sock, &mut buf, false).0, 20);
    assert_eq!(&buf[..20], &ds[0][..]);
    let log = Log::default();
    let op = sock.async_receive(vec![0u8; 64], log.recv("async"));
    assert!(!op.is_pending());
    // async #2 reads #3 ahead (or not); sync #3 gets #3 either way.
    sock.async_receive(vec![0u8; 64], log.recv("async"));
    let (n, from) = receive_now(&sock, &mut buf, true);
    assert_eq!((n, from), (23, peer.local_addr().unwrap()));
    assert_eq!(&buf[..23], &ds[3][..]);
    run(&ctx);
    let got: Vec<Vec<u8>> =
        log.take().into_iter().map(|(_, e, d, _)| (e == Error::NONE).then_some(d).unwrap()).collect();
    assert_eq!(got, vec![ds[1].clone(), ds[2].clone()]);
}

#[test]
fn a_datagram_read_ahead_is_truncated_to_the_next_buffer_like_the_kernel_does() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let big = datagram(2, 100);
    peer.send(b"a").unwrap();
    peer.send(&big).unwrap();
    peer.send(b"end").unwrap();
    let log = Log::default();
    sock.async_receive(vec![0u8; 1500], log.recv("#1"));
    // A peek into a short buffer: the first 3 bytes, nothing consumed.
    sock.async_receive_with_flags(vec![0u8; 3], MessageFlags::PEEK, log.recv("peek"));
    // #2 into 10 bytes: its first 10 bytes; the other 90 are gone.
    sock.async_receive(vec![0u8; 10], log.recv("#2"));
    sock.async_receive(vec![0u8; 1500], log.recv("#3"));
    run(&ctx);
    let got = log.take();
    let want = vec![
        ("#1", Error::NONE, b"a".to_vec(), unspecified()),
        ("peek", Error::NONE, big[..3].to_vec(), unspecified()),
        ("#2", Error::NONE, big[..10].to_vec(), unspecified()),
        ("#3", Error::NONE, b"end".to_vec(), unspecified()),
    ];
    assert_eq!(got, want);
    assert_eq!(sock.available().unwrap(), 0);
}

#[test]
fn a_datagram_read_ahead_scatters_over_buffers_exactly_as_one_received_directly() {
    // The same 100-byte datagram twice: #1 is received by the kernel into the
    // scatter list, #2 comes out of the read-ahead slot into the same shape.
    // Both must fill the buffers identically (zero-length buffers included).
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let d = datagram(7, 100);
    for _ in 0..2 {
        peer.send(&d).unwrap();
    }
    peer.send(&[]).unwrap(); // S7: an empty datagram, read ahead too
    peer.send(b"z").unwrap();
    type Parts = Vec<Vec<u8>>;
    let got: Rc<RefCell<Vec<(Error, usize, Parts)>>> = Rc::default();
    let shapes = [vec![3usize, 0, 4, 60], vec![3, 0, 4, 60], vec![5, 5], vec![5, 5]];
    for shape in shapes {
        let g = got.clone();
        let bufs: Parts = shape.iter().map(|&n| vec![0xEEu8; n]).collect();
        sock.async_receive(bufs, move |e, n, b| g.borrow_mut().push((e, n, b)));
    }
    run(&ctx);
    let got = got.borrow();
    assert_eq!(got.len(), 4);
    let expect_big: Parts = vec![d[..3].to_vec(), vec![], d[3..7].to_vec(), d[7..67].to_vec()];
    assert_eq!(got[0], (Error::NONE, 67, expect_big.clone()), "received directly");
    assert_eq!(got[1], (Error::NONE, 67, expect_big), "from the read-ahead slot");
    assert_eq!(got[2], (Error::NONE, 0, vec![vec![0xEE; 5], vec![0xEE; 5]]), "the empty datagram");
    let mut z = vec![0xEEu8; 5];
    z[0] = b'z';
    assert_eq!(got[3], (Error::NONE, 1, vec![z, vec![0xEE; 5]]));
}

#[test]
fn the_sender_of_a_datagram_read_ahead_is_reported_correctly() {
    let ctx = IoContext::new().unwrap();
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    let to = sock.local_addr().unwrap();
    let (a, b) = (std_peer(), std_peer());
    let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    a.send_to(b"1 from a", to).unwrap();
    b.send_to(b"2 from b", to).unwrap();
    a.send_to(b"3 from a", to).unwrap();
    b.send_to(b"4 from b", to).unwrap();
    a.send_to(b"5 from a", to).unwrap();
    let log = Log::default();
    // A receive that does not ask for the sender reads #2 ahead (with its
    // sender); a receive_from then gets #2 out of the slot.
    sock.async_receive(vec![0u8; 64], log.recv("#1"));
    sock.async_receive_from(vec![0u8; 64], log.recv_from("#2"));
    // A synchronous receive_from reads #4 ahead.
    let mut buf = [0u8; 64];
    let (n, from) = receive_now(&sock, &mut buf, true);
    assert_eq!((&buf[..n], from), (&b"3 from a"[..], aa));
    let (n, from) = receive_now(&sock, &mut buf, true);
    assert_eq!((&buf[..n], from), (&b"4 from b"[..], ba));
    sock.async_receive_from(vec![0u8; 64], log.recv_from("#5"));
    run(&ctx);
    assert_eq!(
        log.take(),
        vec![
            ("#1", Error::NONE, b"1 from a".to_vec(), unspecified()),
            ("#2", Error::NONE, b"2 from b".to_vec(), ba),
            ("#5", Error::NONE, b"5 from a".to_vec(), aa),
        ]
    );
}

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) % n
    }
}

#[test]
fn many_datagrams_stay_in_fifo_order_through_mixed_sync_and_async_receives() {
    const N: u32 = 300;
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let len = |id: u32| (id % 37) as usize * 3; // includes empty datagrams
    type Claimed = Rc<RefCell<Vec<(u32, Error, Vec<u8>)>>>;
    let got: Claimed = Rc::default();
    let mut pending: Vec<Operation> = Vec::new();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut sent, mut claimed) = (0u32, 0u32);
    let (mut sync_count, mut async_waited) = (0, 0);
    while claimed < N {
        // The sender: a burst of 0..5 datagrams.
        for _ in 0..rng.below(5) {
            if sent < N {
                peer.send(&datagram(sent, len(sent))).unwrap();
                sent += 1;
            }
        }
        // The receiver: 0..5 receives. A synchronous one only when its
        // datagram was sent and no async receive waits (a synchronous call
        // does not queue behind those); an async one sometimes ahead of the
        // sender, so that it has to wait.
        for _ in 0..rng.below(5) {
            if claimed == N {
                break;
            }
            pending.retain(Operation::is_pending);
            let id = claimed;
            let there = id < sent;
            if there && pending.is_empty() && rng.below(2) == 0 {
                claimed += 1;
                let mut buf = [0u8; 128];
                let (n, _) = receive_now(&sock, &mut buf, id % 2 == 0);
                got.borrow_mut().push((id, Error::NONE, buf[..n].to_vec()));
                sync_count += 1;
            } else if there || rng.below(2) == 0 {
                claimed += 1;
                let g = got.clone();
                let op =
                    sock.async_receive(vec![0u8; 128], move |e, n, b| g.borrow_mut().push((id, e, b[..n].to_vec())));
                async_waited += usize::from(op.is_pending());
                pending.push(op);
            }
        }
        if rng.below(3) == 0 {
            pump(&ctx);
        }
    }
    while sent < N {
        peer.send(&datagram(sent, len(sent))).unwrap();
        sent += 1;
    }
    ctx.restart();
    ctx.run_for(Duration::from_secs(2));
    assert!(sync_count > 30 && sync_count < N as usize - 30, "a poor mix: {sync_count} synchronous");
    assert!(async_waited > 10, "a poor mix: only {async_waited} async receives waited");
    let mut got = std::mem::take(&mut *got.borrow_mut());
    assert_eq!(got.len(), N as usize, "receives missing");
    // Handlers of immediate receives run later than synchronous calls that
    // came after them, so order by the receive's number: receive k must
    // hold datagram k.
    got.sort_by_key(|g| g.0);
    for (id, e, data) in got {
        assert_eq!(e, Error::NONE, "receive {id}");
        assert_eq!(data, datagram(id, len(id)), "receive {id} got the wrong datagram");
    }
}

#[test]
fn a_receive_after_the_socket_was_drained_completes_with_the_next_datagram() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let peer = Rc::new(peer);
    let log = Log::default();
    peer.send(b"one").unwrap();
    // Takes "one" and learns that the socket is drained.
    assert!(!sock.async_receive(vec![0u8; 16], log.recv("one")).is_pending());
    // Waits: nothing more is queued.
    let op = sock.async_receive(vec![0u8; 16], log.recv("two"));
    assert!(op.is_pending(), "nothing was there to receive");
    // "two" is sent later, from a handler.
    let p = peer.clone();
    ctx.post(move || {
        p.send(b"two").unwrap();
    });
    // ... and "three" later still, from a timer, to a receive started in
    // a handler after the socket drained again. A guard timer ends the test
    // if a receive hangs.
    let guard = SteadyTimer::new(&ctx);
    guard.expires_after(Duration::from_secs(2));
    let s = sock.clone();
    guard.async_wait(move |e| {
        if e == Error::NONE {
            s.close(); // a receive hung: abort it
        }
    });
    let timer = SteadyTimer::new(&ctx);
    let (s, l, p, t, g) = (sock.clone(), log.clone(), peer.clone(), timer.clone(), guard.clone());
    ctx.post(move || {
        let three = l.recv("three");
        s.async_receive(vec![0u8; 16], move |e, n, b| {
            g.cancel();
            three(e, n, b)
        });
        t.expires_after(Duration::from_millis(10));
        t.async_wait(move |e| {
            assert_eq!(e, Error::NONE);
            p.send(b"three").unwrap();
        });
    });
    run(&ctx); // returns by itself
    let got: Vec<(&str, Error, Vec<u8>)> = log.take().into_iter().map(|(t, e, d, _)| (t, e, d)).collect();
    assert_eq!(
        got,
        vec![
            ("one", Error::NONE, b"one".to_vec()),
            ("two", Error::NONE, b"two".to_vec()),
            ("three", Error::NONE, b"three".to_vec()),
        ]
    );
}

#[test]
fn a_readiness_edge_seen_while_no_receive_waits_is_not_lost() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let log = Log::default();
    // A receive that has to wait, completed by "a" (it drains the socket).
    assert!(sock.async_receive(vec![0u8; 8], log.recv("a")).is_pending());
    peer.send(b"a").unwrap();
    ctx.run_for(Duration::from_millis(500));
    assert_eq!(log.len(), 1);
    // "b" arrives and the loop sees its readiness edge while no receive
    // waits; the next receive must still get it.
    peer.send(b"b").unwrap();
    let keep = ctx.work_guard();
    ctx.restart();
    ctx.run_for(Duration::from_millis(20));
    drop(keep);
    let op = sock.async_receive(vec![0u8; 8], log.recv("b"));
    op.cancel_after(Duration::from_millis(500), CancellationType::ALL);
    ctx.restart();
    run(&ctx);
    // And once more with the socket drained: "c" comes from a handler.
    let op = sock.async_receive(vec![0u8; 8], log.recv("c"));
    assert!(op.is_pending());
    op.cancel_after(Duration::from_millis(500), CancellationType::ALL);
    ctx.post(move || {
        peer.send(b"c").unwrap();
    });
    ctx.restart();
    run(&ctx);
    let got: Vec<(Error, Vec<u8>)> = log.take().into_iter().map(|(_, e, d, _)| (e, d)).collect();
    assert_eq!(got, vec![(Error::NONE, b"a".to_vec()), (Error::NONE, b"b".to_vec()), (Error::NONE, b"c".to_vec())]);
}

#[test]
fn a_read_wait_completes_while_a_datagram_waits_in_the_read_ahead_slot() {
    // After #1 is received with #2 read ahead, the kernel queue is empty but
    // a datagram is ready: a read wait must complete (Asio's null-buffers
    // pattern: wait, then receive synchronously), and a receive behind it too.
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    peer.send(b"#1").unwrap();
    peer.send(b"#2").unwrap();
    let log = Log::default();
    sock.async_receive(vec![0u8; 8], log.recv("#1"));
    let waited = Rc::new(Cell::new(None));
    let w = waited.clone();
    let op = sock.async_wait(WaitType::Read, move |e| w.set(Some(e)));
    sock.async_receive(vec![0u8; 8], log.recv("#2"));
    op.cancel_after(Duration::from_millis(300), CancellationType::ALL);
    ctx.run_for(Duration::from_millis(600));
    assert_eq!(waited.get(), Some(Error::NONE), "the read wait did not see the datagram read ahead");
    let got: Vec<Vec<u8>> = log.take().into_iter().map(|(_, _, d, _)| d).collect();
    assert_eq!(got, vec![b"#1".to_vec(), b"#2".to_vec()]);
}

#[test]
fn close_drops_a_datagram_read_ahead() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    peer.send(b"kept").unwrap();
    peer.send(b"dropped with the socket").unwrap();
    let log = Log::default();
    sock.async_receive(vec![0u8; 64], log.recv("#1"));
    assert_eq!(sock.available().unwrap(), 23);
    sock.close();
    assert!(!sock.is_open());
    assert_eq!(Error::from(sock.available().unwrap_err()), Error::BAD_DESCRIPTOR);
    let mut buf = [0u8; 64];
    assert_eq!(Error::from(sock.receive(&mut buf[..]).unwrap_err()), Error::BAD_DESCRIPTOR);
    assert_eq!(Error::from(sock.receive_from(&mut buf[..]).unwrap_err()), Error::BAD_DESCRIPTOR);
    sock.async_receive(vec![0u8; 64], log.recv("after close"));
    sock.async_receive_with_flags(vec![0u8; 64], MessageFlags::PEEK, log.recv("peek after close"));
    run(&ctx);
    let got: Vec<(&str, Error, Vec<u8>)> = log.take().into_iter().map(|(t, e, d, _)| (t, e, d)).collect();
    assert_eq!(
        got,
        vec![
            ("#1", Error::NONE, b"kept".to_vec()),
            ("after close", Error::BAD_DESCRIPTOR, vec![]),
            ("peek after close", Error::BAD_DESCRIPTOR, vec![]),
        ]
    );
}

#[test]
fn dropping_the_socket_or_the_context_with_a_datagram_read_ahead_is_clean() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let (sock2, peer2) = connected_pair(&ctx);
    for _ in 0..3 {
        peer.send(b"x").unwrap();
        peer2.send(b"y").unwrap();
    }
    let log = Log::default();
    sock.async_receive(vec![0u8; 8], log.recv("x"));
    sock2.async_receive(vec![0u8; 8], log.recv("y"));
    let s2 = sock2.clone();
    sock2.async_receive(vec![0u8; 8], move |_, _, _| drop(s2)); // holds its own socket
    drop(sock); // the last handle: closes with a datagram read ahead
    assert_eq!(run(&ctx), 3);
    sock2.async_receive(vec![0u8; 8], log.recv("y"));
    drop(sock2);
    drop(ctx); // closes sock2 with its queued handler and a datagram read ahead
    assert_eq!(log.len(), 2);
}

#[test]
fn release_never_loses_a_datagram_that_was_read_ahead() {
    // `release()` hands the descriptor back, but a datagram read ahead cannot
    // go back into the kernel: release refuses (ResourceBusy) and changes
    // nothing until it is received, then succeeds. Nothing is lost.
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    peer.send(b"#1").unwrap();
    peer.send(b"#2").unwrap();
    peer.send(b"#3").unwrap();
    let log = Log::default();
    sock.async_receive(vec![0u8; 8], log.recv("#1"));
    run(&ctx);
    assert_eq!(log.len(), 1);
    let e = sock.release().expect_err("released with a datagram read ahead: it would be lost");
    assert_eq!(e.kind(), std::io::ErrorKind::ResourceBusy);
    assert!(sock.is_open(), "a refused release must change nothing");
    assert_eq!(sock.available().unwrap(), 2);
    let mut buf = [0u8; 8];
    assert_eq!(receive_now(&sock, &mut buf, false).0, 2);
    assert_eq!(&buf[..2], b"#2");
    // Receiving #2 may have read #3 ahead: receive until release succeeds,
    // and every datagram shows up exactly once on one side or the other.
    let mut seen = vec![b"#1".to_vec(), b"#2".to_vec()];
    let std_sock = loop {
        match sock.release() {
            Ok(s) => break s,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ResourceBusy);
                let (n, _) = receive_now(&sock, &mut buf, false);
                seen.push(buf[..n].to_vec());
            }
        }
    };
    assert!(!sock.is_open());
    std_sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    peer.send(b"#4").unwrap();
    while let Ok(n) = std_sock.recv(&mut buf) {
        seen.push(buf[..n].to_vec());
        if seen.len() == 4 {
            break;
        }
    }
    assert_eq!(seen, vec![b"#1".to_vec(), b"#2".to_vec(), b"#3".to_vec(), b"#4".to_vec()]);
}

#[test]
fn an_async_receive_waiting_while_a_synchronous_one_reads_ahead_still_completes() {
    // A receive waits; two datagrams arrive; before the loop looks, a
    // synchronous receive takes one and reads the other ahead, leaving the
    // kernel queue empty. The waiting receive must get the one read ahead
    // (no readiness event will ever come for it).
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let log = Log::default();
    let op = sock.async_receive(vec![0u8; 8], log.recv("async"));
    assert!(op.is_pending());
    peer.send(b"#1").unwrap();
    peer.send(b"#2").unwrap();
    let mut buf = [0u8; 8];
    let (n, _) = receive_now(&sock, &mut buf, false);
    op.cancel_after(Duration::from_millis(300), CancellationType::ALL);
    ctx.run_for(Duration::from_millis(600));
    let got: Vec<(Error, Vec<u8>)> = log.take().into_iter().map(|(_, e, d, _)| (e, d)).collect();
    // Which receive gets which datagram is not specified; both must arrive.
    let mut all = vec![buf[..n].to_vec()];
    all.extend(got.iter().filter(|(e, _)| *e == Error::NONE).map(|(_, d)| d.clone()));
    all.sort();
    assert_eq!(got.len(), 1);
    assert_eq!(all, vec![b"#1".to_vec(), b"#2".to_vec()], "the waiting receive got {got:?}");
}

#[test]
fn a_large_datagram_read_ahead_on_an_af_unix_socket_is_not_cut_at_64_kib() {
    // from_std accepts any datagram socket; AF_UNIX datagrams may exceed the
    // largest UDP payload. The one read ahead must arrive whole, as it would
    // have without read-ahead.
    let ctx = IoContext::new().unwrap();
    let (sock, b) = unix_pair(&ctx);
    let big = datagram(9, 70_000);
    b.set_nonblocking(false).unwrap();
    b.send(&big).unwrap();
    b.send(&big).unwrap();
    let lens: Rc<RefCell<Vec<(Error, usize, bool)>>> = Rc::default();
    for _ in 0..2 {
        let (l, big) = (lens.clone(), big.clone());
        sock.async_receive(vec![0u8; 100_000], move |e, n, buf| l.borrow_mut().push((e, n, buf[..n] == big[..n])));
    }
    run(&ctx);
    assert_eq!(*lens.borrow(), vec![(Error::NONE, 70_000, true), (Error::NONE, 70_000, true)]);
}

// ---------------------------------------------------------------------------
// Immediate completions
// ---------------------------------------------------------------------------

#[test]
fn an_immediate_completion_has_no_pending_operation_and_its_handler_is_posted() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    peer.send(b"waiting").unwrap();
    type Order = Rc<RefCell<Vec<(&'static str, Error, usize)>>>;
    let order: Order = Rc::default();
    let o = order.clone();
    ctx.post(move || o.borrow_mut().push(("post before", Error::NONE, 0)));

    let o = order.clone();
    let send = sock.async_send(b"hello".to_vec(), move |e, n| o.borrow_mut().push(("send", e, n)));
    let o = order.clone();
    let recv = sock.async_receive(vec![0u8; 16], move |e, n, b| {
        assert_eq!(&b[..n], b"waiting");
        o.borrow_mut().push(("receive", e, n))
    });
    sock.set_nonblocking(true).unwrap();
    let o = order.clone();
    ctx.post(move || o.borrow_mut().push(("post after", Error::NONE, 0)));
    for op in [&send, &recv] {
        assert!(!op.is_pending());
        assert!(!op.cancel(CancellationType::ALL), "cancel of a completed operation must return false");
        assert!(!op.clone().cancel(CancellationType::TERMINAL));
        op.cancel_after(Duration::ZERO, CancellationType::ALL);
    }
    sock.cancel().unwrap(); // does not touch completed operations (S4)
    assert!(order.borrow().is_empty(), "a handler ran inline");
    assert_eq!(run(&ctx), 4);
    assert_eq!(
        *order.borrow(),
        vec![
            ("post before", Error::NONE, 0),
            ("send", Error::NONE, 5),
            ("receive", Error::NONE, 7),
            ("post after", Error::NONE, 0),
        ]
    );
    let mut buf = [0u8; 16];
    assert_eq!(peer.recv(&mut buf).unwrap(), 5);

    // On a closed socket: completed at once too, with BAD_DESCRIPTOR.
    ctx.restart();
    sock.close();
    let seen = Rc::new(Cell::new(None));
    let s = seen.clone();
    let op = sock.async_send(b"x".to_vec(), move |e, n| s.set(Some((e, n))));
    assert!(!op.is_pending());
    assert!(!op.cancel(CancellationType::ALL));
    run(&ctx);
    assert_eq!(seen.get(), Some((Error::BAD_DESCRIPTOR, 0)));
}

#[test]
fn a_receive_that_waits_is_pending_until_it_completes() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let seen = Rc::new(Cell::new(None));
    let s = seen.clone();
    let op = sock.async_receive(vec![0u8; 8], move |e, n, _| s.set(Some((e, n))));
    assert!(op.is_pending());
    peer.send(b"late").unwrap();
    ctx.run_for(Duration::from_millis(500));
    assert_eq!(seen.get(), Some((Error::NONE, 4)));
    assert!(!op.is_pending());
    assert!(!op.cancel(CancellationType::ALL));
}

#[test]
fn an_immediate_send_drops_its_buffer_before_the_handler_runs() {
    let ctx = IoContext::new().unwrap();
    let (sock, _peer) = connected_pair(&ctx);
    let data: Rc<[u8]> = Rc::from(&b"shared"[..]);
    let mut mine = data.clone();
    let unique = Rc::new(Cell::new(false));
    let u = unique.clone();
    assert!(!sock.async_send(data, move |_, _| u.set(Rc::get_mut(&mut mine).is_some())).is_pending());
    run(&ctx);
    assert!(unique.get());
}

// ---------------------------------------------------------------------------
// Writability registered only while a send waits
// ---------------------------------------------------------------------------

const LEN: usize = 512;

/// Reads at most `max` datagrams of `LEN` bytes from `reader` (non-blocking),
/// recording the number each starts with; returns how many it read.
fn read_some(reader: &std::os::unix::net::UnixDatagram, got: &mut Vec<usize>, max: usize) -> usize {
    let mut buf = [0u8; 2 * LEN];
    for k in 0..max {
        match reader.recv(&mut buf) {
            Ok(n) => {
                assert_eq!(n, LEN);
                got.push(u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize);
            }
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
                return k;
            }
        }
    }
    max
}

#[test]
fn writability_is_registered_only_while_a_send_waits() {
    let ctx = IoContext::new().unwrap();
    let (sock, reader) = unix_pair(&ctx);
    let fd = raw_fd(&sock);
    // Not registered at all counts as no interest (registration may be lazy).
    let events = || epoll_events(fd).unwrap_or(0);
    assert_eq!(events() & EPOLLOUT, 0, "writability registered while no send waits");

    let msg = |i: usize| {
        let mut m = vec![(i % 251) as u8; LEN];
        m[..8].copy_from_slice(&(i as u64).to_le_bytes());
        m
    };
    let done: Rc<RefCell<Vec<(usize, Error, usize)>>> = Rc::default();
    let send = |i: usize| {
        let d = done.clone();
        sock.async_send(msg(i), move |e, n| d.borrow_mut().push((i, e, n)))
    };
    let mut got = Vec::new();
    // Sends the kernel takes at once: no operation, no writability interest.
    for i in 0..3 {
        assert!(!send(i).is_pending());
    }
    assert_eq!(events() & EPOLLOUT, 0, "EPOLLOUT registered after sends that did not wait");
    run(&ctx);
    read_some(&reader, &mut got, usize::MAX);
    assert_eq!(got, vec![0, 1, 2]);

    // The reader sleeps: a send would block and every later one queues.
    const N: usize = 1000;
    let ops: Vec<Operation> = (3..N).map(&send).collect();
    let first = ops.iter().position(Operation::is_pending).expect("the slow reader never made a send wait");
    assert!(ops[first..].iter().all(Operation::is_pending), "a send overtook a queued one");
    assert_ne!(events() & EPOLLOUT, 0, "a send waits but writability is not registered");
    assert_ne!(events() & EPOLLIN, 0, "readability not registered with writability");
    assert_eq!(pump(&ctx), first, "a queued send completed while the reader slept");
    assert_eq!(done.borrow().len(), 3 + first);

    // The reader catches up slowly: the queue drains in order.
    for _ in 0..100_000 {
        if done.borrow().len() == N {
            break;
        }
        let n = read_some(&reader, &mut got, 7);
        pump(&ctx);
        if n == 0 {
            // Everything sent so far was read: writability must come.
            ctx.restart();
            ctx.run_one_for(Duration::from_millis(50));
        }
    }
    read_some(&reader, &mut got, usize::MAX);
    {
        let done = done.borrow();
        assert_eq!(done.len(), N);
        for (k, &(i, e, n)) in done.iter().enumerate() {
            assert_eq!((i, e, n), (k, Error::NONE, LEN), "send handlers out of order or failed");
        }
    }
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "datagrams out of order");
    assert_eq!(events() & EPOLLOUT, 0, "writability still registered after the queue drained");

    // Sends complete at once again.
    let op = send(N);
    assert!(!op.is_pending(), "a send waited although the socket is writable");
    assert_eq!(events() & EPOLLOUT, 0);
    ctx.restart();
    run(&ctx);
    read_some(&reader, &mut got, usize::MAX);
    assert_eq!(got.last(), Some(&N));

    // A write wait completes while the socket is writable, and its interest
    // goes with it.
    let waited = Rc::new(Cell::new(None));
    let w = waited.clone();
    let op = sock.async_wait(WaitType::Write, move |e| w.set(Some(e)));
    op.cancel_after(Duration::from_millis(500), CancellationType::ALL);
    ctx.restart();
    run(&ctx);
    assert_eq!(waited.get(), Some(Error::NONE));
    assert_eq!(events() & EPOLLOUT, 0, "writability still registered after the write wait");
}

#[test]
fn a_write_wait_queued_behind_blocked_sends_completes_after_them() {
    let ctx = IoContext::new().unwrap();
    let (sock, reader) = unix_pair(&ctx);
    let order: Rc<RefCell<Vec<usize>>> = Rc::default();
    let mut ops = Vec::new();
    for i in 0..200 {
        let o = order.clone();
        ops.push(sock.async_send(vec![1u8; 1024], move |e, _| {
            assert_eq!(e, Error::NONE);
            o.borrow_mut().push(i)
        }));
    }
    assert!(ops.last().unwrap().is_pending(), "the slow reader never made a send wait");
    let o = order.clone();
    let wait = sock.async_wait(WaitType::Write, move |e| {
        assert_eq!(e, Error::NONE);
        o.borrow_mut().push(usize::MAX)
    });
    assert!(wait.is_pending());
    let mut buf = [0u8; 2048];
    for _ in 0..10_000 {
        while reader.recv(&mut buf).is_ok() {}
        if order.borrow().len() == 201 {
            break;
        }
        ctx.restart();
        ctx.run_one_for(Duration::from_millis(50));
    }
    let want: Vec<usize> = (0..200).chain([usize::MAX]).collect();
    assert_eq!(*order.borrow(), want);
}

// ---------------------------------------------------------------------------
// Level-triggered readability
// ---------------------------------------------------------------------------

const EPOLLET: u32 = 1 << 31;

/// Arms one receive; its handler logs the datagram and, from a later pass
/// (a posted closure), arms the next one, until `left` runs out.
fn receive_later(sock: &UdpSocket, log: &Log, left: usize) {
    if left == 0 {
        return;
    }
    let (s, l) = (sock.clone(), log.clone());
    let ex = sock.executor();
    let record = log.recv("rx");
    sock.async_receive(vec![0u8; 16], move |e, n, b| {
        record(e, n, b);
        ex.post(move || receive_later(&s, &l, left - 1));
    });
}

#[test]
fn datagrams_queued_before_one_event_all_reach_receives_armed_later() {
    // A waiting receive registers the socket level-triggered and takes one
    // datagram per call: the others stay in the kernel, reported by the next
    // waits, though no new datagram (no new edge) arrives for them.
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let log = Log::default();
    receive_later(&sock, &log, 4);
    let fd = raw_fd(&sock);
    let ev = epoll_events(fd).expect("a waiting receive registers the socket");
    assert_eq!(ev & EPOLLET, 0, "registered edge-triggered: {ev:x}");
    for d in [&b"#1"[..], b"#2", b"#3", b"#4"] {
        peer.send(d).unwrap();
    }
    run(&ctx);
    let got: Vec<Vec<u8>> = log.take().into_iter().map(|(_, _, d, _)| d).collect();
    assert_eq!(got, vec![b"#1".to_vec(), b"#2".to_vec(), b"#3".to_vec(), b"#4".to_vec()]);
    assert!(ctx.stopped(), "run() did not run out of work");
}

#[test]
fn data_with_no_receive_waiting_goes_edge_triggered_until_a_receive_waits_again() {
    // Level-triggered readiness with nothing to take the data would wake
    // every wait (a busy loop): the socket goes edge-triggered, and back to
    // level once a receive waits on a drained socket. No datagram is lost.
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let fd = raw_fd(&sock);
    let log = Log::default();
    sock.async_receive(vec![0u8; 16], log.recv("#1"));
    assert_eq!(epoll_events(fd).unwrap() & EPOLLET, 0);
    peer.send(b"#1").unwrap();
    run(&ctx);
    assert_eq!(log.len(), 1);

    peer.send(b"#2").unwrap();
    let _guard = ctx.work_guard();
    ctx.restart();
    ctx.run_for(Duration::from_millis(20)); // the event finds no receive
    assert_ne!(epoll_events(fd).unwrap() & EPOLLET, 0, "still level-triggered with no receive waiting");

    sock.async_receive(vec![0u8; 16], log.recv("#2"));
    let op = sock.async_receive(vec![0u8; 16], log.recv("#3"));
    pump(&ctx);
    assert!(op.is_pending());
    assert_eq!(epoll_events(fd).unwrap() & EPOLLET, 0, "a receive waits on a drained socket: level again");
    peer.send(b"#3").unwrap();
    ctx.restart();
    ctx.run_for(Duration::from_millis(50));
    let got: Vec<(&str, Vec<u8>)> = log.take().into_iter().map(|(t, _, d, _)| (t, d)).collect();
    assert_eq!(got, vec![("#1", b"#1".to_vec()), ("#2", b"#2".to_vec()), ("#3", b"#3".to_vec())]);
}

#[test]
fn a_socket_error_with_no_receive_waiting_goes_to_the_next_receive_without_spinning() {
    // An ICMP port-unreachable sets the socket's error: level-triggered epoll
    // would report it at every wait until a call consumes it. With no
    // receive waiting the socket goes edge-triggered; the next receive gets
    // the error, and the socket stays usable.
    let ctx = IoContext::new().unwrap();
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    let dead = std_peer().local_addr().unwrap(); // closed when the temporary drops
    sock.connect(dead).unwrap();
    let fd = raw_fd(&sock);
    let log = Log::default();
    let op = sock.async_receive(vec![0u8; 8], log.recv("cancelled"));
    assert_eq!(epoll_events(fd).unwrap() & EPOLLET, 0, "a waiting receive registers level-triggered");
    op.cancel(CancellationType::ALL);
    run(&ctx);
    assert_eq!(log.take()[0].1, Error::OPERATION_ABORTED);

    let sent = Rc::new(Cell::new(None));
    let s = sent.clone();
    sock.async_send(&b"ping"[..], move |e, n| s.set(Some((e, n))));
    let _guard = ctx.work_guard();
    ctx.restart();
    ctx.run_for(Duration::from_millis(50)); // the error arrives; nothing waits for it
    assert_eq!(sent.get(), Some((Error::NONE, 4)));
    assert_ne!(epoll_events(fd).unwrap() & EPOLLET, 0, "an unconsumed error left the socket level-triggered");

    sock.async_receive(vec![0u8; 8], log.recv("after the error"));
    ctx.restart();
    ctx.run_for(Duration::from_millis(50));
    let got: Vec<(&str, Error)> = log.take().into_iter().map(|(t, e, _, _)| (t, e)).collect();
    assert_eq!(got, vec![("after the error", Error::CONNECTION_REFUSED)]);
}

// ---------------------------------------------------------------------------
// Handler-heavy traffic
// ---------------------------------------------------------------------------

const ROUNDS: u64 = 1000;

struct PingPong {
    a: UdpSocket,
    b: UdpSocket,
    rounds: Cell<u64>,
    echoed: Cell<u64>,
}

fn ping_len(i: u64) -> usize {
    8 + (i % 57) as usize
}

fn ping(p: Rc<PingPong>, i: u64) {
    let len = ping_len(i);
    let mut msg = vec![(i % 256) as u8; len];
    msg[..8].copy_from_slice(&i.to_le_bytes());
    p.a.async_send(msg, move |e, n| assert_eq!((e, n), (Error::NONE, len)));
    let q = p.clone();
    p.a.async_receive(vec![0u8; 128], move |e, n, buf| {
        assert_eq!((e, n), (Error::NONE, len), "round trip {i}");
        assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), i);
        assert!(buf[8..n].iter().all(|&x| x == (i % 256) as u8));
        q.rounds.set(i + 1);
        if i + 1 < ROUNDS {
            ping(q, i + 1);
        }
    });
}

fn echo(p: Rc<PingPong>) {
    let q = p.clone();
    p.b.async_receive_from(vec![0u8; 128], move |e, n, mut buf, from| {
        assert_eq!(e, Error::NONE);
        assert_eq!(from, q.a.local_addr().unwrap());
        buf.truncate(n);
        q.b.async_send_to(buf, from, move |e, m| assert_eq!((e, m), (Error::NONE, n)));
        q.echoed.set(q.echoed.get() + 1);
        if q.echoed.get() < ROUNDS {
            echo(q);
        }
    });
}

fn ping_pong_sockets(ctx: &IoContext) -> Rc<PingPong> {
    let a = UdpSocket::bind(ctx, local()).unwrap();
    let b = UdpSocket::bind(ctx, local()).unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    Rc::new(PingPong { a, b, rounds: Cell::new(0), echoed: Cell::new(0) })
}

#[test]
fn a_thousand_round_trips_between_two_sockets_in_one_loop() {
    let ctx = IoContext::new().unwrap();
    let p = ping_pong_sockets(&ctx);
    echo(p.clone());
    ping(p.clone(), 0);
    let ran = run(&ctx); // returns by itself once both sides are done
    assert!(ctx.stopped());
    assert_eq!(p.rounds.get(), ROUNDS);
    assert_eq!(p.echoed.get(), ROUNDS);
    assert!(ran >= 4 * ROUNDS as usize, "{ran} handlers for {ROUNDS} round trips");
}

/// The client keeps `WINDOW` datagrams in flight, so that both sides find
/// several queued at once (read-ahead) and sometimes none (waits).
#[test]
fn a_thousand_round_trips_with_several_in_flight_keep_their_order() {
    const WINDOW: u64 = 8;
    let ctx = IoContext::new().unwrap();
    let p = ping_pong_sockets(&ctx);
    echo(p.clone());
    let next = Rc::new(Cell::new(0u64));
    fn send_next(p: &Rc<PingPong>, next: &Rc<Cell<u64>>) {
        let i = next.get();
        if i == ROUNDS {
            return;
        }
        next.set(i + 1);
        let len = ping_len(i);
        let mut msg = vec![(i % 256) as u8; len];
        msg[..8].copy_from_slice(&i.to_le_bytes());
        p.a.async_send(msg, move |e, n| assert_eq!((e, n), (Error::NONE, len)));
    }
    fn receive_next(p: Rc<PingPong>, next: Rc<Cell<u64>>) {
        let q = p.clone();
        p.a.async_receive(vec![0u8; 128], move |e, n, buf| {
            let i = q.rounds.get();
            assert_eq!((e, n), (Error::NONE, ping_len(i)), "reply {i}");
            assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), i, "replies out of order");
            q.rounds.set(i + 1);
            send_next(&q, &next);
            if i + 1 < ROUNDS {
                receive_next(q, next);
            }
        });
    }
    for _ in 0..WINDOW {
        send_next(&p, &next);
    }
    receive_next(p.clone(), next.clone());
    run(&ctx);
    assert_eq!((p.rounds.get(), p.echoed.get()), (ROUNDS, ROUNDS));
}

// ---------------------------------------------------------------------------
// The handler queue, through the public API
// ---------------------------------------------------------------------------

thread_local! {
    /// What the handlers of the current test ran, in order (tests run on
    /// separate threads, so this is per test).
    static RAN: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

fn ran(id: u64) {
    RAN.with(|r| r.borrow_mut().push(id));
}

fn take_ran() -> Vec<u64> {
    RAN.with(|r| std::mem::take(&mut *r.borrow_mut()))
}

/// Counts drops, to check that each capture is freed exactly once.
struct DropCount(Rc<Cell<usize>>);
impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

#[repr(align(16))]
#[derive(Clone, Copy)]
struct Align16(u64);

#[repr(align(64))]
#[derive(Clone, Copy)]
struct Align64(u64);

/// A handler that captures nothing but its type: zero-sized.
fn zst<const K: u64>() -> impl FnOnce() + 'static {
    || ran(K)
}

/// Posts handler `id`, whose captures (size, alignment, drop glue) depend on
/// `id % 8`; each checks its captured data before recording `id`, so a
/// handler moved or copied wrongly inside the queue is caught.
fn post_mixed(ex: &Executor, id: u64, drops: &Rc<Cell<usize>>, then: impl FnOnce(u64) + 'static) {
    let dc = DropCount(drops.clone());
    match id % 8 {
        0 => ex.post(move || {
            // 8 bytes + the continuation: small, inline.
            let _ = &dc;
            ran(id);
            then(id)
        }),
        1 => {
            let words = [id, !id, id.wrapping_mul(7)]; // exactly three words with `then` boxed below
            let then: Box<dyn FnOnce(u64)> = Box::new(then);
            ex.post(move || {
                assert_eq!(words, [id, !id, id.wrapping_mul(7)]);
                drop(dc);
                ran(id);
                then(id)
            })
        }
        2 => {
            let bytes = [id as u8; 1000]; // large: boxed
            ex.post(move || {
                let _ = &dc;
                assert!(bytes.iter().all(|&b| b == id as u8));
                ran(id);
                then(id)
            })
        }
        3 => {
            let a = Align16(id); // over-aligned
            ex.post(move || {
                let _ = &dc;
                assert_eq!(&raw const a as usize % 16, 0);
                assert_eq!(a.0, id);
                ran(id);
                then(id)
            })
        }
        4 => {
            let a = Align64(!id);
            ex.post(move || {
                let _ = &dc;
                assert_eq!(&raw const a as usize % 64, 0);
                assert_eq!(a.0, !id);
                ran(id);
                then(id)
            })
        }
        5 => {
            let v = (id as u128) << 64 | id as u128;
            ex.post(move || {
                let _ = &dc;
                assert_eq!(v, (id as u128) << 64 | id as u128);
                ran(id);
                then(id)
            })
        }
        6 => {
            let s = format!("handler {id}"); // 24 bytes of String + more
            ex.post(move || {
                let _ = &dc;
                assert_eq!(s, format!("handler {id}"));
                ran(id);
                then(id)
            })
        }
        _ => {
            // A zero-sized handler, plus a second one that carries the rest.
            ex.post(zst::<{ u64::MAX }>());
            ex.post(move || {
                let _ = &dc;
                ran(id);
                then(id)
            })
        }
    }
}

#[test]
fn thousands_of_mixed_handlers_posted_from_handlers_run_once_in_fifo_order() {
    // A binary tree of handlers: each posts its two children. FIFO order
    // makes the run order breadth-first, i.e. 0, 1, 2, ... The queue keeps
    // growing while its head moves, so it grows while wrapped around.
    const N: u64 = 20_000;
    let ctx = IoContext::new().unwrap();
    let drops = Rc::new(Cell::new(0));
    fn spawn(ex: Executor, id: u64, drops: Rc<Cell<usize>>) {
        let (ex2, d2) = (ex.clone(), drops.clone());
        post_mixed(&ex, id, &drops, move |id| {
            for child in [2 * id + 1, 2 * id + 2] {
                if child < N {
                    spawn(ex2.clone(), child, d2.clone());
                }
            }
        });
    }
    spawn(ctx.executor(), 0, drops.clone());
    ctx.run();
    let got: Vec<u64> = take_ran().into_iter().filter(|&x| x != u64::MAX).collect();
    assert_eq!(got.len(), N as usize);
    assert!(got.iter().copied().eq(0..N), "handlers ran out of FIFO order");
    assert_eq!(drops.get(), N as usize, "captures not freed exactly once");
}

#[test]
fn a_burst_posted_while_the_queue_is_wrapped_keeps_fifo_order() {
    let ctx = IoContext::new().unwrap();
    let drops = Rc::new(Cell::new(0));
    let ex = ctx.executor();
    for round in 0..6u64 {
        // Move the head forward, then post a burst from a handler so that
        // the queue grows (several times) while its head is not at 0.
        for k in 0..(37 + 11 * round) {
            ex.post(move || ran(round * 100_000 + k));
        }
        ctx.restart();
        for _ in 0..(29 + 5 * round) {
            assert_eq!(ctx.poll_one(), 1);
        }
        let (ex2, d2) = (ex.clone(), drops.clone());
        ex.post(move || {
            for k in 0..(500 * (round + 1)) {
                post_mixed(&ex2, round * 100_000 + 50_000 + k, &d2, |_| {});
            }
        });
        ctx.restart();
        ctx.run();
    }
    let got: Vec<u64> = take_ran().into_iter().filter(|&x| x != u64::MAX).collect();
    let mut want = Vec::new();
    for round in 0..6u64 {
        want.extend((0..(37 + 11 * round)).map(|k| round * 100_000 + k));
        want.extend((0..(500 * (round + 1))).map(|k| round * 100_000 + 50_000 + k));
    }
    assert_eq!(got, want);
    assert_eq!(drops.get(), (1..=6).map(|r| 500 * r).sum::<usize>());
}

#[test]
fn a_panicking_handler_unwinds_out_of_run_and_the_queue_stays_consistent() {
    let ctx = IoContext::new().unwrap();
    let drops = Rc::new(Cell::new(0));
    ctx.post(|| ran(1));
    let dc = DropCount(drops.clone());
    let big = [7u8; 300];
    ctx.post(move || {
        let _dc = dc;
        assert_eq!(big[299], 7);
        panic!("handler 2 panics");
    });
    let ex = ctx.executor();
    ctx.post(move || {
        ran(3);
        ex.post(|| ran(5));
    });
    let dc = DropCount(drops.clone());
    ctx.post(move || {
        let _dc = dc;
        ran(4)
    });
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.run()));
    assert!(r.is_err(), "the panic did not unwind out of run()");
    assert_eq!(take_ran(), vec![1]);
    assert_eq!(drops.get(), 1, "the panicking handler's captures were not freed exactly once");
    // Not inside run() any more: dispatch must not run inline.
    ctx.dispatch(|| ran(6));
    assert_eq!(take_ran(), Vec::<u64>::new());
    ctx.restart();
    ctx.run();
    assert_eq!(take_ran(), vec![3, 4, 6, 5]);
    assert_eq!(drops.get(), 2);
}

#[test]
fn nested_poll_runs_each_handler_once_in_order() {
    let ctx = Rc::new(IoContext::new().unwrap());
    let c = ctx.clone();
    ctx.post(move || {
        ran(1);
        let c2 = c.clone();
        c.post(move || {
            ran(10);
            // A poll nested two deep, with a handler of its own.
            c2.post(|| ran(20));
            c2.dispatch(|| ran(11)); // inside run: inline
            c2.poll();
            ran(12);
        });
        c.poll(); // runs 2, 3, then 10 (and 20 inside it)
        ran(13);
    });
    ctx.post(|| ran(2));
    let dc = [3u64; 9];
    ctx.post(move || ran(dc[8]));
    ctx.run();
    assert_eq!(take_ran(), vec![1, 2, 3, 10, 11, 20, 12, 13]);
    assert_eq!(Rc::strong_count(&ctx), 1, "a handler's captures were not freed");
}

#[test]
fn a_panic_inside_a_nested_poll_leaves_the_context_usable() {
    let ctx = Rc::new(IoContext::new().unwrap());
    let c = ctx.clone();
    ctx.post(move || {
        ran(1);
        c.post(|| panic!("inside the nested poll"));
        c.post(|| ran(3));
        c.poll();
        ran(99); // not reached
    });
    ctx.post(|| ran(2));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.run()));
    assert!(r.is_err());
    assert_eq!(take_ran(), vec![1, 2]);
    ctx.dispatch(|| ran(4)); // outside run(): posted
    assert_eq!(take_ran(), Vec::<u64>::new());
    ctx.restart();
    ctx.run();
    assert_eq!(take_ran(), vec![3, 4]);
    assert_eq!(Rc::strong_count(&ctx), 1);
}

#[test]
fn dropping_the_context_frees_every_queued_handler_unrun() {
    let ctx = IoContext::new().unwrap();
    let drops = Rc::new(Cell::new(0));
    let ex = ctx.executor();
    for id in 0..1000 {
        post_mixed(&ex, id, &drops, |_| panic!("ran at teardown"));
    }
    // Handlers whose captures post when dropped (the context is going: the
    // post is dropped too), and one holding a socket with a pending receive.
    struct PostOnDrop(Executor, Rc<Cell<usize>>);
    impl Drop for PostOnDrop {
        fn drop(&mut self) {
            let d = DropCount(self.1.clone());
            self.0.post(move || {
                let _d = d;
                panic!("ran at teardown");
            });
        }
    }
    for _ in 0..10 {
        let p = PostOnDrop(ctx.executor(), drops.clone());
        ctx.post(move || drop(p));
    }
    let (sock, _peer) = connected_pair(&ctx);
    let dc = DropCount(drops.clone());
    let s = sock.clone();
    sock.async_receive(vec![0u8; 8], move |_, _, _| {
        let _ = (&s, &dc);
        panic!("ran at teardown");
    });
    drop(sock);
    drop(ctx);
    assert_eq!(take_ran(), Vec::<u64>::new());
    assert_eq!(drops.get(), 1000 + 10 + 1);
    assert!(!ex.is_alive());
    ex.post(|| panic!("posted after the context was dropped"));
}

#[test]
fn sends_queued_behind_a_blocked_socket_leave_in_order_with_their_own_lengths() {
    // They are flushed together (sendmmsg) when the socket becomes writable;
    // a readiness wait in the queue splits the batch but keeps its place.
    let ctx = IoContext::new().unwrap();
    let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let sock = UdpSocket::from_std(&ctx, std::os::fd::OwnedFd::from(a).into()).unwrap();
    b.set_nonblocking(true).unwrap();
    let order: Rc<RefCell<Vec<(usize, Error, usize)>>> = Rc::default();
    // Fill the peer until a send has to wait.
    let mut i = 0;
    loop {
        let o = order.clone();
        let k = i;
        let op = sock.async_send(vec![k as u8; 700], move |e, n| o.borrow_mut().push((k, e, n)));
        i += 1;
        if op.is_pending() {
            break;
        }
        assert!(i < 100_000, "the socket never blocked");
    }
    let first_queued = i - 1;
    // Different sizes, and a write wait in the middle.
    for len in [1usize, 2, 3] {
        let o = order.clone();
        let k = i;
        sock.async_send(vec![k as u8; len], move |e, n| o.borrow_mut().push((k, e, n)));
        i += 1;
    }
    let o = order.clone();
    sock.async_wait(WaitType::Write, move |e| o.borrow_mut().push((usize::MAX, e, 0)));
    for len in [4usize, 5] {
        let o = order.clone();
        let k = i;
        sock.async_send(vec![k as u8; len], move |e, n| o.borrow_mut().push((k, e, n)));
        i += 1;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..10_000 {
        while let Ok(n) = b.recv(&mut buf) {
            got.push((buf[0] as usize, n));
        }
        if order.borrow().len() == i + 1 {
            break;
        }
        ctx.run_one_for(Duration::from_millis(100));
    }
    while let Ok(n) = b.recv(&mut buf) {
        got.push((buf[0] as usize, n));
    }
    let order = order.borrow();
    assert_eq!(order.len(), i + 1);
    let tail: Vec<_> = order.iter().filter(|(k, _, _)| *k >= first_queued).copied().collect();
    let mut want: Vec<_> = (first_queued..first_queued + 4)
        .map(|k| (k, Error::NONE, if k == first_queued { 700 } else { k - first_queued }))
        .collect();
    want.push((usize::MAX, Error::NONE, 0));
    want.extend([(first_queued + 4, Error::NONE, 4), (first_queued + 5, Error::NONE, 5)]);
    assert_eq!(tail, want);
    let lens: Vec<usize> = got.iter().map(|g| g.1).collect();
    assert_eq!(&lens[lens.len() - 6..], &[700, 1, 2, 3, 4, 5]);
    assert_eq!(got.len(), i);
    assert!(got.iter().enumerate().all(|(k, (tag, _))| *tag == k % 256), "datagrams out of order");
}

#[test]
fn several_pending_receives_are_filled_by_one_batch_with_their_own_shapes_and_senders() {
    let ctx = IoContext::new().unwrap();
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    let (p1, p2) = (std_peer(), std_peer());
    type Got = Rc<RefCell<Vec<(usize, Error, Vec<u8>, SocketAddr)>>>;
    let got: Got = Rc::default();
    // Receives wait first (nothing queued yet), then the datagrams arrive.
    let g = got.clone();
    sock.async_receive_from(vec![0u8; 64], move |e, n, b, f| g.borrow_mut().push((0, e, b[..n].to_vec(), f)));
    let g = got.clone();
    sock.async_receive_from([vec![0u8; 4], vec![0u8; 6]], move |e, n, b, f| {
        g.borrow_mut().push((1, e, b.concat()[..n].to_vec(), f))
    });
    let g = got.clone();
    sock.async_receive_from(vec![0u8; 3], move |e, n, b, f| g.borrow_mut().push((2, e, b[..n].to_vec(), f)));
    let g = got.clone();
    sock.async_receive_with_flags(vec![0u8; 64], MessageFlags::PEEK, move |e, n, b| {
        g.borrow_mut().push((3, e, b[..n].to_vec(), "0.0.0.0:0".parse().unwrap()))
    });
    let g = got.clone();
    sock.async_receive_from(vec![0u8; 64], move |e, n, b, f| g.borrow_mut().push((4, e, b[..n].to_vec(), f)));
    let to = sock.local_addr().unwrap();
    p1.send_to(b"first", to).unwrap();
    p2.send_to(b"second-dgram", to).unwrap();
    p1.send_to(b"truncated", to).unwrap();
    p2.send_to(b"peeked", to).unwrap();
    ctx.run_for(Duration::from_millis(500));
    let got = got.borrow();
    let want = [
        (0, &b"first"[..], p1.local_addr().unwrap()),
        (1, &b"second-dgr"[..], p2.local_addr().unwrap()), // 10 bytes of scatter room
        (2, &b"tru"[..], p1.local_addr().unwrap()),
        (3, &b"peeked"[..], "0.0.0.0:0".parse().unwrap()),
        (4, &b"peeked"[..], p2.local_addr().unwrap()),
    ];
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((k, e, data, from), (wk, wdata, wfrom)) in got.iter().zip(want) {
        assert_eq!((*k, *e, &data[..], *from), (wk, Error::NONE, wdata, wfrom));
    }
}

#[test]
fn a_read_wait_behind_receives_that_drained_the_socket_waits_for_new_data() {
    // As in Asio: the receives ahead of it took every datagram, so the
    // socket is not readable until another one arrives.
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let n = Rc::new(Cell::new(0));
    for _ in 0..3 {
        let n = n.clone();
        sock.async_receive(vec![0u8; 16], move |e, _, _| {
            assert_eq!(e, Error::NONE);
            n.set(n.get() + 1);
        });
    }
    let woke = Rc::new(Cell::new(false));
    let w = woke.clone();
    sock.async_wait(WaitType::Read, move |e| {
        assert_eq!(e, Error::NONE);
        w.set(true);
    });
    for i in 0..3u8 {
        peer.send(&[i]).unwrap();
    }
    ctx.run_for(Duration::from_millis(50));
    assert_eq!(n.get(), 3);
    assert!(!woke.get(), "the wait completed on a drained socket");
    peer.send(b"more").unwrap();
    ctx.restart();
    ctx.run_for(Duration::from_millis(500));
    assert!(woke.get(), "the wait missed the new datagram");
    assert_eq!(sock.available().unwrap(), 4, "a wait does not consume");
}

/// The memory of a completed operation is reused for the next operation of
/// the same type, but never while an `Operation` handle still refers to it:
/// cancelling the old handle must not reach the new operation.
#[test]
fn a_handle_on_a_completed_receive_never_reaches_the_receive_started_after_it() {
    let ctx = IoContext::new().unwrap();
    let (sock, peer) = connected_pair(&ctx);
    let old: Rc<RefCell<Option<Operation>>> = Rc::default();
    let next: Rc<RefCell<Option<Operation>>> = Rc::default();
    let got: Rc<RefCell<Vec<(Error, usize)>>> = Rc::default();
    fn arm(
        sock: &UdpSocket,
        got: &Rc<RefCell<Vec<(Error, usize)>>>,
        next: &Rc<RefCell<Option<Operation>>>,
        again: bool,
    ) -> Operation {
        let (s, g, n) = (sock.clone(), got.clone(), next.clone());
        sock.async_receive(vec![0u8; 16], move |e, len, _| {
            g.borrow_mut().push((e, len));
            if again {
                // The same closure type, so the same operation type: it may
                // take the memory of the one whose handler this is.
                *n.borrow_mut() = Some(arm(&s, &g, &n, false));
            }
        })
    }
    // Two rounds: the first keeps the handle (no reuse may happen), the
    // second drops it at once (reuse may happen), and both behave the same.
    for keep in [true, false] {
        got.borrow_mut().clear();
        let op = arm(&sock, &got, &next, true);
        assert!(op.is_pending());
        if keep {
            *old.borrow_mut() = Some(op);
        } else {
            drop(op);
        }
        peer.send(b"one").unwrap();
        assert_eq!(run_until_len(&ctx, &got, 1), 1);
        let follower = next.borrow_mut().take().expect("the handler started the next receive");
        assert!(follower.is_pending());
        if let Some(old) = old.borrow_mut().take() {
            assert!(!old.is_pending());
            assert!(!old.cancel(CancellationType::ALL), "the old handle reached the new receive");
        }
        assert!(follower.is_pending(), "the new receive is still pending");
        peer.send(b"second").unwrap();
        assert_eq!(run_until_len(&ctx, &got, 2), 2);
        assert_eq!(*got.borrow(), [(Error::NONE, 3), (Error::NONE, 6)]);
        assert!(!follower.is_pending());
    }
}

/// Polls until `got` holds `n` entries (or two seconds pass); returns its length.
fn run_until_len<T>(ctx: &IoContext, got: &Rc<RefCell<Vec<T>>>, n: usize) -> usize {
    let end = std::time::Instant::now() + Duration::from_secs(2);
    while got.borrow().len() < n && std::time::Instant::now() < end {
        ctx.restart();
        ctx.run_one_for(Duration::from_millis(50));
    }
    got.borrow().len()
}
