//! `UnixDatagram`: the rules of `UdpSocket` on Unix-domain datagram sockets.

mod common;

use common::TempDir;
use ioctx::net::{UnixDatagram, WaitType};
use ioctx::{Error, IoContext};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

fn run_bounded(ctx: &IoContext) -> usize {
    let n = ctx.run_for(Duration::from_secs(5));
    assert!(ctx.stopped(), "run() would still be waiting: work is left");
    n
}

type Log<T> = Rc<RefCell<Vec<T>>>;

#[test]
fn a_pair_carries_datagrams_whole_including_empty_ones_and_truncates_to_the_buffer() {
    let ctx = IoContext::new().unwrap();
    let (a, b) = UnixDatagram::pair(&ctx).unwrap();
    let log: Log<(Error, usize, Vec<u8>)> = Rc::default();
    let sent = Rc::new(RefCell::new(false));
    let s = sent.clone();
    a.async_send((b"hello, ".to_vec(), "world"), move |e, n| {
        assert_eq!((e, n), (Error::NONE, 12));
        *s.borrow_mut() = true;
    });
    assert!(!*sent.borrow(), "the handler ran inside the call");
    a.async_send(Vec::<u8>::new(), |e, n| assert_eq!((e, n), (Error::NONE, 0)));
    a.async_send(vec![7u8; 100], |e, n| assert_eq!((e, n), (Error::NONE, 100)));
    for size in [64, 8, 10] {
        let l = log.clone();
        b.async_receive(vec![0u8; size], move |e, n, buf| l.borrow_mut().push((e, n, buf[..n].to_vec())));
    }
    run_bounded(&ctx);
    assert!(*sent.borrow());
    assert_eq!(
        *log.borrow(),
        vec![(Error::NONE, 12, b"hello, world".to_vec()), (Error::NONE, 0, vec![]), (Error::NONE, 10, vec![7u8; 10])]
    );
}

#[test]
fn send_to_and_receive_from_name_the_socket_files() {
    let dir = TempDir::new();
    let ctx = IoContext::new().unwrap();
    let server = UnixDatagram::bind(&ctx, dir.path("server")).unwrap();
    let client = UnixDatagram::bind(&ctx, dir.path("client")).unwrap();
    let anonymous = UnixDatagram::unbound(&ctx).unwrap();
    assert_eq!(server.local_addr().unwrap().as_pathname(), Some(dir.path("server").as_path()));
    let log: Log<(Error, Vec<u8>, Option<PathBuf>, bool)> = Rc::default();
    for _ in 0..2 {
        let l = log.clone();
        server.async_receive_from(vec![0u8; 32], move |e, n, buf, from| {
            let from = from.expect("a sender address");
            l.borrow_mut().push((e, buf[..n].to_vec(), from.as_pathname().map(PathBuf::from), from.is_unnamed()));
        });
    }
    client.async_send_to(&b"named"[..], dir.path("server"), |e, n| assert_eq!((e, n), (Error::NONE, 5)));
    anonymous.async_send_to(&b"anon"[..], dir.path("server"), |e, n| assert_eq!((e, n), (Error::NONE, 4)));
    run_bounded(&ctx);
    assert_eq!(
        *log.borrow(),
        vec![
            (Error::NONE, b"named".to_vec(), Some(dir.path("client")), false),
            (Error::NONE, b"anon".to_vec(), None, true),
        ]
    );
}

#[test]
fn sending_to_a_missing_socket_file_is_an_error_in_the_handler() {
    let ctx = IoContext::new().unwrap();
    let s = UnixDatagram::unbound(&ctx).unwrap();
    let got = Rc::new(RefCell::new(None));
    let g = got.clone();
    s.async_send_to(&b"x"[..], "/nonexistent/ioctx.sock", move |e, n| *g.borrow_mut() = Some((e, n)));
    run_bounded(&ctx);
    assert_eq!(got.borrow_mut().take(), Some((Error::from_raw_os_error(libc::ENOENT), 0)));
}

#[test]
fn cancel_close_and_closed_sockets_follow_the_udp_rules() {
    let ctx = IoContext::new().unwrap();
    let (a, b) = UnixDatagram::pair(&ctx).unwrap();
    let log: Log<Error> = Rc::default();
    let l = log.clone();
    b.async_receive(vec![0u8; 8], move |e, _, _| l.borrow_mut().push(e));
    b.cancel().unwrap();
    let l = log.clone();
    b.async_receive(vec![0u8; 8], move |e, _, _| l.borrow_mut().push(e));
    b.close();
    let l = log.clone();
    b.async_receive(vec![0u8; 8], move |e, _, _| l.borrow_mut().push(e));
    assert!(log.borrow().is_empty(), "handlers ran inside the calls");
    run_bounded(&ctx);
    assert_eq!(*log.borrow(), vec![Error::OPERATION_ABORTED, Error::OPERATION_ABORTED, Error::BAD_DESCRIPTOR]);
    assert_eq!(b.send(&b"x"[..]).unwrap_err().raw_os_error(), Some(libc::EBADF));
    drop(a);
}

#[test]
fn a_read_wait_completes_when_a_datagram_arrives_and_sync_calls_block_or_would_block() {
    let ctx = IoContext::new().unwrap();
    let (a, b) = UnixDatagram::pair(&ctx).unwrap();
    b.set_nonblocking(true).unwrap();
    assert_eq!(b.receive(vec![0u8; 4]).unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
    let waited = Rc::new(RefCell::new(None));
    let w = waited.clone();
    b.async_wait(WaitType::Read, move |e| *w.borrow_mut() = Some(e));
    assert_eq!(a.send(&b"ping"[..]).unwrap(), 4);
    run_bounded(&ctx);
    assert_eq!(waited.borrow_mut().take(), Some(Error::NONE));
    assert_eq!(b.available().unwrap(), 4);
    b.set_nonblocking(false).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(b.receive(&mut buf[..]).unwrap(), 4);
    assert_eq!(&buf[..4], b"ping");
}

#[test]
fn connect_names_the_peer_and_release_gives_back_a_blocking_std_socket() {
    let dir = TempDir::new();
    let ctx = IoContext::new().unwrap();
    let server = UnixDatagram::bind(&ctx, dir.path("server")).unwrap();
    let a = UnixDatagram::unbound(&ctx).unwrap();
    assert!(a.local_addr().unwrap().is_unnamed());
    a.connect(dir.path("server")).unwrap();
    assert_eq!(a.peer_addr().unwrap().as_pathname(), Some(dir.path("server").as_path()));
    let b = UnixDatagram::unbound(&ctx).unwrap();
    let got: Log<Error> = Rc::default();
    let (g1, g2) = (got.clone(), got.clone());
    b.async_connect(dir.path("server"), move |e| g1.borrow_mut().push(e));
    b.async_connect(dir.path("missing"), move |e| g2.borrow_mut().push(e));
    assert!(got.borrow().is_empty(), "a connect handler ran inside the call");
    run_bounded(&ctx);
    assert_eq!(*got.borrow(), vec![Error::NONE, Error::from_raw_os_error(libc::ENOENT)]);
    // A path longer than a socket address holds: an error in the handler.
    let long = dir.path(&"x".repeat(200));
    let r = Rc::new(RefCell::new(None));
    let r2 = r.clone();
    a.async_send_to(&b"x"[..], &long, move |e, n| *r2.borrow_mut() = Some((e, n)));
    ctx.restart();
    run_bounded(&ctx);
    let (e, n) = r.borrow_mut().take().unwrap();
    assert!(e.is_err() && n == 0, "{e:?}");
    // Released: a plain blocking std socket, still connected.
    a.send(&b"before"[..]).unwrap();
    let std_a = a.release().unwrap();
    assert!(!a.is_open());
    std_a.send(b"after").unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(server.receive(&mut buf[..]).unwrap(), 6);
    assert_eq!(server.receive(&mut buf[..]).unwrap(), 5);
    assert_eq!(&buf[..5], b"after");
}

/// An unconnected sender whose receiver's queue is full: the descriptor is
/// writable (its own buffer has room) yet every send would block, and the
/// kernel gives no notice when the queue drains. The sends wait for a retry
/// timer instead of writability, so the loop neither spins on the readiness
/// it cannot use nor hangs: once the receiver reads, every send completes,
/// in order.
#[test]
fn sends_to_a_full_unconnected_receiver_retry_without_spinning_and_all_arrive_in_order() {
    const N: u32 = 2000;
    let dir = TempDir::new();
    let path = dir.path("full.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let ctx = IoContext::new().unwrap();
    let tx = UnixDatagram::unbound(&ctx.executor()).unwrap();
    let done: Log<(u32, Error)> = Rc::default();
    for i in 0..N {
        let d = done.clone();
        tx.async_send_to(i.to_le_bytes().to_vec(), &path, move |e, _| d.borrow_mut().push((i, e)));
    }
    // The receiver's queue fills long before N; nothing reads it yet.
    ctx.run_for(Duration::from_millis(100));
    let blocked = done.borrow().len();
    assert!(blocked < N as usize, "the receiver's queue never filled: {blocked}");
    let waits = ctx.metrics().reactor_waits;
    assert!(waits < 200, "the loop spun on a socket it cannot write to: {waits} waits in 100 ms");

    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        (0..N)
            .map(|_| rx.recv(&mut buf).map(|_| u32::from_le_bytes(buf[..4].try_into().unwrap())).unwrap())
            .collect::<Vec<_>>()
    });
    ctx.restart();
    assert_eq!(run_bounded(&ctx), N as usize - blocked);
    assert_eq!(*done.borrow(), (0..N).map(|i| (i, Error::NONE)).collect::<Vec<_>>());
    assert_eq!(reader.join().unwrap(), (0..N).collect::<Vec<_>>());
}

/// The blocking `send_to` to a full unconnected receiver waits (without
/// spinning) until the receiver reads, as the kernel's own blocking send does.
#[test]
fn a_blocking_send_to_a_full_unconnected_receiver_waits_until_it_reads() {
    let dir = TempDir::new();
    let path = dir.path("full-sync.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let ctx = IoContext::new().unwrap();
    let tx = UnixDatagram::unbound(&ctx.executor()).unwrap();
    // Fill the queue with the non-blocking form.
    tx.set_nonblocking(true).unwrap();
    let mut queued = 0u32;
    while tx.send_to(queued.to_le_bytes().to_vec(), &path).is_ok() {
        queued += 1;
    }
    assert!(queued > 0);
    tx.set_nonblocking(false).unwrap();
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 16];
        (0..=queued)
            .map(|_| rx.recv(&mut buf).map(|_| u32::from_le_bytes(buf[..4].try_into().unwrap())).unwrap())
            .collect::<Vec<_>>()
    });
    let start = std::time::Instant::now();
    let cpu = thread_cpu_ticks();
    assert_eq!(tx.send_to(queued.to_le_bytes().to_vec(), &path).unwrap(), 4);
    assert!(start.elapsed() >= Duration::from_millis(40), "it did not wait for the reader");
    // Spinning would have burnt the whole wait (5 ticks of 10 ms or more).
    assert!(thread_cpu_ticks() - cpu < 3, "the blocking send spun while it waited");
    assert_eq!(reader.join().unwrap(), (0..=queued).collect::<Vec<_>>());
}

/// CPU time this thread has used, in clock ticks (`utime + stime`, usually
/// 10 ms each), from `/proc/thread-self/stat`.
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // The command name may hold spaces: the fields counted start after its ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}
