//! Embedding: a host event loop (here a real epoll loop of its own, through
//! rustix) sleeps on the context's descriptor for at most `next_timeout()`
//! and then calls `poll()`.

// Linux only: a host loop on epoll, through rustix.
#![cfg(target_os = "linux")]

mod common;

use common::tick;
use ioctx::net::UdpSocket;
use ioctx::{Error, IoContext, SteadyTimer};
use rustix::event::{Timespec, epoll};
use std::cell::Cell;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

const ECHOES: usize = 100;
const TICKS: usize = 10;

/// The host's own epoll instance, watching the context's descriptor.
struct Host {
    epoll: OwnedFd,
    events: [epoll::Event; 8],
}

impl Host {
    fn new(ctx: &IoContext) -> Host {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        epoll::add(&epoll, ctx.as_fd(), epoll::EventData::new_u64(0), epoll::EventFlags::IN).unwrap();
        let none = epoll::Event { flags: epoll::EventFlags::empty(), data: epoll::EventData::new_u64(0) };
        Host { epoll, events: [none; 8] }
    }

    /// Sleeps until the context's descriptor is readable, at most `timeout`
    /// (`None`: without end). epoll rounds the timeout up to milliseconds.
    fn wait(&mut self, timeout: Option<Duration>) {
        let timeout = timeout.map(|d| Timespec::try_from(d).unwrap());
        epoll::wait(&self.epoll, &mut self.events, timeout.as_ref()).unwrap();
    }
}

fn echo_server(s: UdpSocket) {
    let s2 = s.clone();
    s.async_receive_from(vec![0u8; 64], move |e, n, mut buf, from| {
        if e.is_err() {
            return;
        }
        buf.truncate(n);
        s2.async_send_to(buf, from, |_, _| {});
        echo_server(s2);
    });
}

fn client(c: UdpSocket, k: usize, echoed: Rc<Cell<usize>>) {
    if k == ECHOES {
        return;
    }
    c.async_send(k.to_be_bytes().to_vec(), |e, _| assert_eq!(e, Error::NONE));
    let c2 = c.clone();
    c.async_receive(vec![0u8; 64], move |e, n, buf| {
        assert_eq!((e, &buf[..n]), (Error::NONE, &k.to_be_bytes()[..]));
        echoed.set(echoed.get() + 1);
        client(c2, k + 1, echoed);
    });
}

#[test]
fn a_host_loop_drives_udp_echo_and_timers_through_the_fd_and_next_timeout_without_spinning() {
    let ctx = IoContext::new().unwrap();
    assert_eq!(ctx.as_fd().as_raw_fd(), ctx.as_raw_fd());
    assert_eq!(ctx.next_timeout(), None, "nothing scheduled");
    let server = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap()).unwrap();
    let c = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap()).unwrap();
    c.connect(server.local_addr().unwrap()).unwrap();
    echo_server(server.clone());
    let (echoed, ticks) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    client(c.clone(), 0, echoed.clone());
    tick(SteadyTimer::new(&ctx), TICKS, ticks.clone());
    assert_eq!(ctx.next_timeout(), Some(Duration::ZERO), "handlers are ready");

    let mut host = Host::new(&ctx);
    let mut wakeups = 0;
    let t0 = Instant::now();
    while echoed.get() < ECHOES || ticks.get() < TICKS {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "work was missed: {} echoes, {} ticks",
            echoed.get(),
            ticks.get()
        );
        host.wait(ctx.next_timeout());
        wakeups += 1;
        ctx.poll();
    }
    // About one wake-up per echo and per tick; a spinning host makes thousands.
    assert!(wakeups <= 2 * (ECHOES + TICKS) + 20, "{wakeups} wake-ups for {ECHOES} echoes and {TICKS} ticks");

    // Idle: the server's receive waits on I/O only; a far timer bounds the sleep.
    assert_eq!(ctx.next_timeout(), None);
    let far = SteadyTimer::new(&ctx);
    far.expires_after(Duration::from_secs(3600));
    far.async_wait(|_| {});
    let t = ctx.next_timeout().unwrap();
    assert!(t > Duration::from_secs(3500) && t <= Duration::from_secs(3600), "{t:?}");
    // A datagram arriving makes the descriptor readable: the host wakes at once.
    let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    other.send_to(b"ping", server.local_addr().unwrap()).unwrap();
    let t1 = Instant::now();
    host.wait(ctx.next_timeout());
    assert!(t1.elapsed() < Duration::from_secs(2), "the host slept through a datagram");
    ctx.poll();
    let mut buf = [0u8; 8];
    other.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(other.recv(&mut buf).unwrap(), 4, "echoed from inside the host loop");
}

#[test]
fn next_timeout_is_zero_while_handlers_wait_and_none_when_stopped() {
    let ctx = IoContext::new().unwrap();
    // As with Asio, poll() that runs out of work stops the context: a host
    // holds a work guard to keep feeding it.
    ctx.post(|| {});
    assert_eq!(ctx.poll(), 1);
    assert!(ctx.stopped());
    assert_eq!(ctx.next_timeout(), None);
    ctx.restart();
    let _guard = ctx.work_guard();
    ctx.post(|| {});
    assert_eq!(ctx.next_timeout(), Some(Duration::ZERO));
    let remote = ctx.remote().unwrap();
    assert_eq!(ctx.poll(), 1);
    assert_eq!(ctx.next_timeout(), None);
    remote.post(|| {}).unwrap();
    assert_eq!(ctx.next_timeout(), Some(Duration::ZERO), "a remote post is ready work");
    assert_eq!(ctx.poll(), 1);
    ctx.post(|| {});
    ctx.stop();
    assert_eq!(ctx.next_timeout(), None, "a stopped context does nothing until restart");
    ctx.restart();
    assert_eq!(ctx.next_timeout(), Some(Duration::ZERO));
}

/// A context with a `Remote` and nothing else registered: once `poll()` has
/// run a remote post, the descriptor must not stay readable, or a host that
/// sleeps on it would spin without end.
#[test]
fn a_remote_post_leaves_the_descriptor_quiet_once_polled() {
    let ctx = IoContext::new().unwrap();
    let _guard = ctx.work_guard();
    let remote = ctx.remote().unwrap();
    let mut host = Host::new(&ctx);
    let ran = Rc::new(Cell::new(0));
    for round in 1..=3 {
        let r = ran.clone();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rem = remote.clone();
        std::thread::spawn(move || {
            rem.post(move || drop(tx)).unwrap();
        })
        .join()
        .unwrap();
        host.wait(Some(Duration::from_secs(2)));
        assert_eq!(ctx.poll(), 1, "round {round}: the remote post runs");
        assert!(rx.recv().is_err(), "round {round}: the remote closure ran and dropped its sender");
        r.set(r.get() + 1);
        assert_eq!(ctx.next_timeout(), None);
        // Quiet: the host's wait now times out instead of returning at once.
        let t = Instant::now();
        let n =
            epoll::wait(&host.epoll, &mut host.events, Some(&Timespec::try_from(Duration::from_millis(30)).unwrap()))
                .unwrap();
        assert_eq!(n, 0, "round {round}: the descriptor is still readable after poll()");
        assert!(t.elapsed() >= Duration::from_millis(25));
    }
    assert_eq!(ran.get(), 3);
}
