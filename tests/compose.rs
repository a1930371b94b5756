//! Composed stream operations (`async_read`, `async_write`,
//! `async_read_until`) and the Unix-domain stream types.

use ioctx::net::{
    TcpStream, UnixListener, UnixStream, async_read, async_read_until, async_write, transfer_all, transfer_at_least,
    transfer_exactly,
};
use ioctx::{CancellationType, Error, IoContext};
use std::cell::RefCell;
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::Duration;

/// `run_for` with a safety net: work left after 5 s fails the test.
fn run_bounded(ctx: &IoContext) -> usize {
    let n = ctx.run_for(Duration::from_secs(5));
    assert!(ctx.stopped(), "run() would still be waiting: work is left");
    n
}

/// A pair: one end on the loop, the other a blocking std stream.
fn std_pair(ctx: &IoContext) -> (UnixStream, std::os::unix::net::UnixStream) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    (UnixStream::from_std(ctx, a).unwrap(), b)
}

type Got<T> = Rc<RefCell<Option<T>>>;

fn got<T>() -> Got<T> {
    Rc::new(RefCell::new(None))
}

#[test]
fn async_read_with_transfer_all_fills_the_buffers_from_many_small_writes() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let expect = data.clone();
    let writer = std::thread::spawn(move || {
        for chunk in data.chunks(100) {
            peer.write_all(chunk).unwrap();
        }
        peer
    });
    let r = got();
    let r2 = r.clone();
    // Two buffers: the read continues across them.
    async_read(&s, vec![vec![0u8; 150_000], vec![0u8; 50_000]], transfer_all(), move |e, n, b| {
        *r2.borrow_mut() = Some((e, n, b.concat()))
    });
    run_bounded(&ctx);
    let (e, n, bytes) = r.borrow_mut().take().unwrap();
    assert_eq!((e, n), (Error::NONE, 200_000));
    assert!(bytes == expect, "bytes differ");
    drop(writer.join().unwrap());
}

#[test]
fn transfer_at_least_and_exactly_stop_where_they_say() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    peer.write_all(b"0123456789").unwrap();
    let r = got();
    let r2 = r.clone();
    let s2 = s.clone();
    async_read(&s, vec![0u8; 64], transfer_exactly(4), move |e, n, b| {
        let first = (e, n, b[..n].to_vec());
        // At least 1: takes what is there (the 6 bytes left), not 64.
        async_read(&s2, vec![0u8; 64], transfer_at_least(1), move |e, n, b| {
            *r2.borrow_mut() = Some((first, (e, n, b[..n].to_vec())));
        });
    });
    run_bounded(&ctx);
    let (first, second) = r.borrow_mut().take().unwrap();
    assert_eq!(first, (Error::NONE, 4, b"0123".to_vec()));
    assert_eq!(second, (Error::NONE, 6, b"456789".to_vec()));
}

#[test]
fn async_read_ends_with_eof_and_the_bytes_read_so_far() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    peer.write_all(b"abc").unwrap();
    drop(peer);
    let r = got();
    let r2 = r.clone();
    async_read(&s, vec![0u8; 10], transfer_all(), move |e, n, b| *r2.borrow_mut() = Some((e, n, b[..n].to_vec())));
    run_bounded(&ctx);
    assert_eq!(r.borrow_mut().take().unwrap(), (Error::EOF, 3, b"abc".to_vec()));
}

#[test]
fn async_write_writes_everything_and_drops_the_buffers_before_the_handler() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    let total = 4 << 20;
    let data: Rc<[u8]> = (0..total).map(|i| (i % 253) as u8).collect::<Vec<u8>>().into();
    let expect = data.to_vec();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        peer.read_to_end(&mut all).unwrap();
        all
    });
    let r = got();
    let (r2, mine, s2) = (r.clone(), data.clone(), s.clone());
    async_write(&s, data, transfer_all(), move |e, n| {
        let mut mine = mine;
        // The write's own reference is gone: the handler's is unique.
        *r2.borrow_mut() = Some((e, n, Rc::get_mut(&mut mine).is_some()));
        s2.close();
    });
    run_bounded(&ctx);
    assert_eq!(r.borrow_mut().take().unwrap(), (Error::NONE, total, true));
    assert!(reader.join().unwrap() == expect, "bytes differ");
}

#[test]
fn empty_composed_operations_complete_at_once_posted_without_io() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    peer.write_all(b"x").unwrap();
    let log = Rc::new(RefCell::new(Vec::new()));
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    async_read(&s, Vec::<u8>::new(), transfer_all(), move |e, n, _| l1.borrow_mut().push((e, n)));
    async_read(&s, vec![0u8; 8], transfer_exactly(0), move |e, n, _| l2.borrow_mut().push((e, n)));
    async_write(&s, Vec::<u8>::new(), transfer_all(), move |e, n| l3.borrow_mut().push((e, n)));
    assert!(log.borrow().is_empty(), "a handler ran inside the call");
    run_bounded(&ctx);
    assert_eq!(*log.borrow(), vec![(Error::NONE, 0); 3]);
    // The byte waiting was not consumed, and nothing was written.
    assert_eq!(s.read_some(vec![0u8; 4]).unwrap(), 1);
    peer.set_nonblocking(true).unwrap();
    assert_eq!(peer.read(&mut [0u8; 4]).unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn terminal_and_partial_cancellation_end_a_read_with_the_bytes_so_far_and_total_is_ignored() {
    for ty in [CancellationType::TERMINAL, CancellationType::PARTIAL] {
        let ctx = IoContext::new().unwrap();
        let (s, mut peer) = std_pair(&ctx);
        peer.write_all(b"hello").unwrap();
        let r = got();
        let r2 = r.clone();
        let op = async_read(&s, vec![0u8; 100], transfer_all(), move |e, n, b| {
            *r2.borrow_mut() = Some((e, n, b[..n].to_vec()))
        });
        // Let the first 5 bytes arrive, then cancel while the read waits for more.
        ctx.run_for(Duration::from_millis(30));
        assert!(op.is_pending());
        assert!(!op.cancel(CancellationType::TOTAL), "total cancellation is not honoured");
        assert!(op.is_pending());
        assert!(op.cancel(ty));
        assert!(!op.is_pending());
        assert!(!op.cancel(ty), "already ended");
        ctx.restart();
        run_bounded(&ctx);
        assert_eq!(r.borrow_mut().take().unwrap(), (Error::OPERATION_ABORTED, 5, b"hello".to_vec()));
    }
}

#[test]
fn cancel_after_ends_a_composed_read_that_gets_too_little() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    peer.write_all(b"ab").unwrap();
    let r = got();
    let r2 = r.clone();
    async_read(&s, vec![0u8; 10], transfer_all(), move |e, n, _| *r2.borrow_mut() = Some((e, n)))
        .cancel_after(Duration::from_millis(20), CancellationType::TERMINAL);
    run_bounded(&ctx);
    assert_eq!(r.borrow_mut().take().unwrap(), (Error::OPERATION_ABORTED, 2));
}

#[test]
fn read_until_finds_a_delimiter_split_across_reads_and_keeps_what_follows() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    let writer = std::thread::spawn(move || {
        peer.write_all(b"GET / HTTP/1.0\r").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        peer.write_all(b"\nHost: x\r\n\r\nbody").unwrap();
        peer
    });
    let r = got();
    let (r2, s2) = (r.clone(), s.clone());
    async_read_until(&s, Vec::new(), "\r\n", 1024, move |e, n, buf| {
        let line = buf[..n].to_vec();
        let rest = buf[n..].to_vec();
        // The next call starts from what is buffered.
        let mut buf = buf;
        buf.drain(..n);
        async_read_until(&s2, buf, b"\r\n\r\n".to_vec(), 1024, move |e2, n2, buf2| {
            *r2.borrow_mut() = Some(((e, line, rest), (e2, buf2[..n2].to_vec())));
        });
    });
    run_bounded(&ctx);
    let ((e, line, _), (e2, headers)) = r.borrow_mut().take().unwrap();
    assert_eq!((e, line.as_slice()), (Error::NONE, &b"GET / HTTP/1.0\r\n"[..]));
    assert_eq!((e2, headers.as_slice()), (Error::NONE, &b"Host: x\r\n\r\n"[..]));
    drop(writer.join().unwrap());
}

#[test]
fn read_until_with_the_delimiter_already_buffered_completes_posted_without_io() {
    let ctx = IoContext::new().unwrap();
    let (s, _peer) = std_pair(&ctx);
    let r = got();
    let r2 = r.clone();
    async_read_until(&s, b"a;b;".to_vec(), b';', 100, move |e, n, b| *r2.borrow_mut() = Some((e, n, b)));
    assert!(r.borrow().is_none(), "ran inside the call");
    run_bounded(&ctx);
    assert_eq!(r.borrow_mut().take().unwrap(), (Error::NONE, 2, b"a;b;".to_vec()));
}

#[test]
fn read_until_reports_not_found_at_the_size_limit_and_eof_with_the_data_kept() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    peer.write_all(&[b'x'; 100]).unwrap();
    let r = got();
    let r2 = r.clone();
    async_read_until(&s, Vec::new(), b'\n', 64, move |e, n, b| *r2.borrow_mut() = Some((e, n, b.len())));
    run_bounded(&ctx);
    assert_eq!(r.borrow_mut().take().unwrap(), (Error::NOT_FOUND, 0, 64));

    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    peer.write_all(b"no newline").unwrap();
    drop(peer);
    let r = got();
    let r2 = r.clone();
    async_read_until(&s, Vec::new(), b'\n', 64, move |e, n, b| *r2.borrow_mut() = Some((e, n, b)));
    run_bounded(&ctx);
    assert_eq!(r.borrow_mut().take().unwrap(), (Error::EOF, 0, b"no newline".to_vec()));
}

#[test]
fn read_until_with_an_empty_delimiter_is_an_invalid_argument() {
    let ctx = IoContext::new().unwrap();
    let (s, _peer) = std_pair(&ctx);
    let r = got();
    let r2 = r.clone();
    async_read_until(&s, Vec::new(), "", 64, move |e, n, _| *r2.borrow_mut() = Some((e, n)));
    run_bounded(&ctx);
    assert_eq!(r.borrow_mut().take().unwrap(), (Error::INVALID_ARGUMENT, 0));
}

#[test]
fn unix_listener_accepts_and_streams_echo_through_a_socket_file() {
    let dir = std::env::temp_dir().join(format!("ioctx-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    let _ = std::fs::remove_file(&path);
    let ctx = IoContext::new().unwrap();
    let listener = UnixListener::bind(&ctx, &path).unwrap();
    assert_eq!(listener.local_addr().unwrap().as_pathname(), Some(path.as_path()));
    listener.async_accept(|e, peer| {
        assert_eq!(e, Error::NONE);
        let peer = peer.unwrap();
        let p = peer.clone();
        async_read(&peer, vec![0u8; 5], transfer_all(), move |e, n, buf| {
            assert_eq!((e, n), (Error::NONE, 5));
            async_write(&p, buf, transfer_all(), |e, n| assert_eq!((e, n), (Error::NONE, 5)));
        });
    });
    let client = UnixStream::open(&ctx).unwrap();
    let r = got();
    let (r2, c) = (r.clone(), client.clone());
    client.async_connect(&path, move |e| {
        assert_eq!(e, Error::NONE);
        let c2 = c.clone();
        async_write(&c, &b"hello"[..], transfer_all(), move |_, _| {
            async_read(&c2, vec![0u8; 5], transfer_all(), move |e, n, b| *r2.borrow_mut() = Some((e, n, b)));
        });
    });
    run_bounded(&ctx);
    assert_eq!(r.borrow_mut().take().unwrap(), (Error::NONE, 5, b"hello".to_vec()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unix_connect_to_a_missing_socket_file_fails_in_the_handler() {
    let ctx = IoContext::new().unwrap();
    let client = UnixStream::open(&ctx).unwrap();
    let r = got();
    let r2 = r.clone();
    client.async_connect("/nonexistent/ioctx.sock", move |e| *r2.borrow_mut() = Some(e));
    assert!(r.borrow().is_none(), "ran inside the call");
    run_bounded(&ctx);
    assert_eq!(r.borrow_mut().take().unwrap(), Error::from_raw_os_error(libc::ENOENT));
}

#[test]
fn unix_stream_pair_reads_eof_after_the_peer_closes() {
    let ctx = IoContext::new().unwrap();
    let (a, b) = UnixStream::pair(&ctx).unwrap();
    let r = got();
    let r2 = r.clone();
    a.async_write_some(&b"x"[..], move |e, n| assert_eq!((e, n), (Error::NONE, 1)));
    let b2 = b.clone();
    b.async_read_some(vec![0u8; 4], move |e, n, _| {
        assert_eq!((e, n), (Error::NONE, 1));
        b2.async_read_some(vec![0u8; 4], move |e, n, _| *r2.borrow_mut() = Some((e, n)));
    });
    a.close();
    run_bounded(&ctx);
    assert_eq!(r.borrow_mut().take().unwrap(), (Error::EOF, 0));
}

// ---------------------------------------------------------------- review: stream lifetime, cancel races

/// Bug 1 (S4). A composed operation holds a strong clone of its stream in
/// the step handler, which sits in that stream's own queue: dropping the
/// user's last handle no longer closes the stream, the operation never
/// aborts, run() never runs out of work and the descriptor stays open
/// until the context is dropped. A plain async_read_some aborts.
#[test]
fn dropping_the_last_handle_aborts_a_pending_composed_read() {
    let ctx = IoContext::new().unwrap();
    let (s, _peer) = std_pair(&ctx);
    let r = got();
    let r2 = r.clone();
    let op = async_read(&s, vec![0u8; 10], transfer_all(), move |e, n, _| *r2.borrow_mut() = Some((e, n)));
    drop(s);
    ctx.run_for(Duration::from_millis(300));
    assert!(!op.is_pending(), "the composed read keeps its stream open");
    assert_eq!(r.borrow_mut().take(), Some((Error::OPERATION_ABORTED, 0)));
    assert!(ctx.stopped());
}

#[test]
fn dropping_the_last_handle_aborts_a_blocked_composed_write_and_closes_the_stream() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    let r = got();
    let r2 = r.clone();
    async_write(&s, vec![1u8; 8 << 20], transfer_all(), move |e, n| *r2.borrow_mut() = Some((e, n)));
    ctx.run_for(Duration::from_millis(50)); // blocked: nobody reads
    drop(s);
    ctx.restart();
    ctx.run_for(Duration::from_millis(300));
    let (e, n) = r.borrow_mut().take().expect("the composed write never ended");
    assert_eq!(e, Error::OPERATION_ABORTED);
    assert!(n > 0);
    // The stream is closed: the peer reads the bytes then EOF.
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut peer, &mut all).expect("the stream was not closed");
    assert_eq!(all.len(), n);
}

/// Bug 2 (§1.5, Operation::cancel's contract). cancel() returns true while
/// the step's completion is already queued, yet the handler gets NONE when
/// that step met the condition (or found the delimiter).
#[test]
fn a_cancel_that_returned_true_ends_a_composed_read_aborted() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    peer.write_all(b"abcd").unwrap();
    let r = got();
    let r2 = r.clone();
    let op = async_read(&s, vec![0u8; 4], transfer_all(), move |e, n, _| *r2.borrow_mut() = Some((e, n)));
    assert!(op.cancel(CancellationType::PARTIAL));
    ctx.run_for(Duration::from_millis(300));
    assert_eq!(r.borrow_mut().take().unwrap(), (Error::OPERATION_ABORTED, 4));
}

#[test]
fn a_cancel_that_returned_true_ends_read_until_aborted() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    peer.write_all(b"line\n").unwrap();
    let r = got();
    let r2 = r.clone();
    let op = async_read_until(&s, Vec::new(), b'\n', 100, move |e, n, b| *r2.borrow_mut() = Some((e, n, b)));
    assert!(op.cancel(CancellationType::TERMINAL));
    ctx.run_for(Duration::from_millis(300));
    assert_eq!(r.borrow_mut().take().unwrap(), (Error::OPERATION_ABORTED, 0, b"line\n".to_vec()));
}

/// Bug 3. connect(2) on a non-blocking Unix stream socket whose listener's
/// backlog is full fails with EAGAIN: no connection was started. It is
/// queued as "in progress" (ConnectOp); the unconnected socket reports
/// EPOLLOUT|EPOLLHUP at once, ConnectOp sees no error and no peer, calls it
/// spurious, the registration goes edge-triggered, and the handler never
/// runs (run() hangs).
#[test]
fn a_unix_connect_refused_with_eagain_completes() {
    let dir = std::env::temp_dir().join(format!("ioctx-review-bugs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("full.sock");
    let _ = std::fs::remove_file(&path);
    let l = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    l.bind(&socket2::SockAddr::unix(&path).unwrap()).unwrap();
    l.listen(0).unwrap();
    let mut fill = Vec::new(); // listen(0) takes one connection
    loop {
        let c = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        c.set_nonblocking(true).unwrap();
        if c.connect(&socket2::SockAddr::unix(&path).unwrap()).is_err() {
            break;
        }
        fill.push(c);
    }
    let ctx = IoContext::new().unwrap();
    let c = UnixStream::open(&ctx).unwrap();
    let r = got();
    let r2 = r.clone();
    c.async_connect(&path, move |e| *r2.borrow_mut() = Some(e));
    ctx.run_for(Duration::from_millis(300));
    let _ = std::fs::remove_dir_all(&dir);
    let e = r.borrow_mut().take().expect("async_connect never completed");
    assert_eq!(e, Error::from_raw_os_error(libc::EAGAIN));
    assert!(ctx.stopped());
}

/// Minor (S5 consistency with the async forms): a zero-length sync
/// read_some / write_some on a closed stream returns Ok(0), not
/// BAD_DESCRIPTOR as async_read_some / async_write_some (and Asio) do.
#[test]
fn zero_length_sync_calls_on_a_closed_stream_are_bad_descriptor() {
    let ctx = IoContext::new().unwrap();
    let (s, _peer) = std_pair(&ctx);
    s.close();
    let bad = std::io::Error::from(Error::BAD_DESCRIPTOR).raw_os_error();
    assert_eq!(s.read_some(Vec::<u8>::new()).map_err(|e| e.raw_os_error()), Err(bad));
    assert_eq!(s.write_some(Vec::<u8>::new()).map_err(|e| e.raw_os_error()), Err(bad));
}

/// Kills: no `cancelled` check in read_step. The first step completes at
/// once (its handler is queued) when cancel() is called: no further step
/// may start, the read ends aborted with the 4 bytes read.
#[test]
fn a_composed_read_cancelled_while_its_step_completion_is_queued_starts_no_new_step() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    peer.write_all(b"abcd").unwrap();
    let r = got();
    let r2 = r.clone();
    let op = async_read(&s, vec![0u8; 10], transfer_all(), move |e, n, b| *r2.borrow_mut() = Some((e, n, b)));
    assert!(op.cancel(CancellationType::TERMINAL));
    ctx.run_for(Duration::from_millis(300));
    let (e, n, b) = r.borrow_mut().take().expect("the read started another step and never ended");
    assert_eq!((e, n, &b[..n]), (Error::OPERATION_ABORTED, 4, &b"abcd"[..]));
    assert!(ctx.stopped(), "a step is still pending");
}

/// Kills: no `cancelled` check in write_step. The first step writes part of
/// 8 MiB at once (no reader); cancelled before its handler runs, the write
/// ends aborted with exactly the bytes the peer can read.
#[test]
fn a_composed_write_cancelled_while_its_step_completion_is_queued_starts_no_new_step() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    let r = got();
    let r2 = r.clone();
    let op = async_write(&s, vec![7u8; 8 << 20], transfer_all(), move |e, n| *r2.borrow_mut() = Some((e, n)));
    assert!(op.cancel(CancellationType::PARTIAL));
    ctx.run_for(Duration::from_millis(300));
    let (e, n) = r.borrow_mut().take().expect("the write started another step and never ended");
    assert_eq!(e, Error::OPERATION_ABORTED);
    assert!(n > 0 && n < 8 << 20, "{n}");
    assert!(ctx.stopped(), "a step is still pending");
    peer.set_nonblocking(true).unwrap();
    let mut all = Vec::new();
    let _ = peer.read_to_end(&mut all); // WouldBlock at the end
    assert_eq!(all.len(), n);
}

/// Kills: the error path of write_step reporting 0 instead of the bytes
/// written so far. A write blocked on its second step is cancelled.
#[test]
fn a_cancelled_blocked_composed_write_reports_the_bytes_written_so_far() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    let r = got();
    let r2 = r.clone();
    let op = async_write(&s, vec![7u8; 8 << 20], transfer_all(), move |e, n| *r2.borrow_mut() = Some((e, n)));
    ctx.run_for(Duration::from_millis(50)); // first step done, the next one blocks
    assert!(op.is_pending());
    assert!(op.cancel(CancellationType::TERMINAL));
    ctx.restart();
    ctx.run_for(Duration::from_millis(300));
    let (e, n) = r.borrow_mut().take().unwrap();
    assert_eq!(e, Error::OPERATION_ABORTED);
    peer.set_nonblocking(true).unwrap();
    let mut all = Vec::new();
    let _ = peer.read_to_end(&mut all);
    assert!(n > 0, "bytes written so far lost");
    assert_eq!(all.len(), n);
}

/// Kills: no `cancelled` check in until_step. Three bytes without the
/// delimiter are read at once; cancelled before that step's handler runs.
#[test]
fn read_until_cancelled_while_its_step_completion_is_queued_starts_no_new_step() {
    let ctx = IoContext::new().unwrap();
    let (s, mut peer) = std_pair(&ctx);
    peer.write_all(b"abc").unwrap();
    let r = got();
    let r2 = r.clone();
    let op = async_read_until(&s, Vec::new(), b'\n', 100, move |e, n, b| *r2.borrow_mut() = Some((e, n, b)));
    assert!(op.cancel(CancellationType::TERMINAL));
    ctx.run_for(Duration::from_millis(300));
    let res = r.borrow_mut().take().expect("read_until started another step and never ended");
    assert_eq!(res, (Error::OPERATION_ABORTED, 0, b"abc".to_vec()));
}

/// Kills: the search ignoring `max`. Only the first `max` bytes of what is
/// buffered are searched (Asio's dynamic buffer of max_size 4): NOT_FOUND.
#[test]
fn read_until_does_not_search_past_max_in_what_is_already_buffered() {
    let ctx = IoContext::new().unwrap();
    let (s, _peer) = std_pair(&ctx);
    let r = got();
    let r2 = r.clone();
    async_read_until(&s, b"abcdefgh\nxyz".to_vec(), b'\n', 4, move |e, n, b| *r2.borrow_mut() = Some((e, n, b)));
    assert!(r.borrow().is_none());
    ctx.run_for(Duration::from_millis(300));
    assert_eq!(r.borrow_mut().take().unwrap(), (Error::NOT_FOUND, 0, b"abcdefgh\nxyz".to_vec()));
    // And a delimiter inside the limit is found.
    let r2 = r.clone();
    async_read_until(&s, b"ab\ncdefgh".to_vec(), b'\n', 4, move |e, n, b| *r2.borrow_mut() = Some((e, n, b)));
    ctx.restart();
    ctx.run_for(Duration::from_millis(300));
    assert_eq!(r.borrow_mut().take().unwrap(), (Error::NONE, 3, b"ab\ncdefgh".to_vec()));
}

/// Kills: async_write_some keeping its buffers until after the handler on
/// the immediate path (§1.3: an `Rc<[u8]>` is unique again in the handler).
#[test]
fn an_immediate_stream_write_drops_its_buffers_before_the_handler() {
    let ctx = IoContext::new().unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let s = TcpStream::from_std(&ctx, l.accept().unwrap().0).unwrap();
    let data: Rc<[u8]> = Rc::from(&b"hello"[..]);
    let r = got();
    let (r2, mut mine) = (r.clone(), data.clone());
    s.async_write_some(data, move |e, n| *r2.borrow_mut() = Some((e, n, Rc::get_mut(&mut mine).is_some())));
    ctx.run_for(Duration::from_millis(300));
    assert_eq!(r.borrow_mut().take().unwrap(), (Error::NONE, 5, true));
}

#[test]
fn unix_streams_connect_and_accept_blocking_and_release_to_std() {
    let dir = std::env::temp_dir().join(format!("ioctx-unix-sync-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sync.sock");
    let ctx = IoContext::new().unwrap();
    let listener = UnixListener::bind(&ctx, &path).unwrap();
    let client = UnixStream::connect(&ctx, &path).unwrap();
    let served = listener.accept().unwrap();
    assert_eq!(client.peer_addr().unwrap().as_pathname(), Some(path.as_path()));
    assert!(served.peer_addr().unwrap().is_unnamed(), "the client never bound");
    assert_eq!(client.write_some(&b"ping"[..]).unwrap(), 4);
    let mut buf = [0u8; 8];
    assert_eq!(served.read_some(&mut buf[..]).unwrap(), 4);
    let mut std_client = client.release().unwrap();
    assert!(!client.is_open());
    std_client.write_all(b"pong").unwrap();
    assert_eq!(served.read_some(&mut buf[..]).unwrap(), 4);
    assert_eq!(&buf[..4], b"pong");
    listener.set_nonblocking(true).unwrap();
    assert_eq!(listener.accept().unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
    let _ = std::fs::remove_dir_all(&dir);
}
