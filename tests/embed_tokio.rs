//! Embedding inside another real event loop: tokio's current-thread runtime
//! watches the context's descriptor with `AsyncFd`, sleeps at most
//! `next_timeout()`, and calls `poll()`. The peer of ioctx's UDP echo server
//! is a tokio socket in a task on the same thread, so every echo needs the
//! host to drive ioctx while that task waits.

mod common;

use common::tick;
use ioctx::net::UdpSocket;
use ioctx::{Error, IoContext, SteadyTimer};
use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

const ECHOES: usize = 200;
const TICKS: usize = 10;

fn echo_server(s: UdpSocket, served: Rc<Cell<usize>>) {
    let s2 = s.clone();
    s.async_receive_from(vec![0u8; 64], move |e, n, mut buf, from| {
        if e.is_err() {
            return;
        }
        buf.truncate(n);
        s2.async_send_to(buf, from, |e, _| assert_eq!(e, Error::NONE));
        served.set(served.get() + 1);
        echo_server(s2, served);
    });
}

/// The context, as tokio's `AsyncFd` sees it: its epoll descriptor.
struct Host(Rc<IoContext>);

impl AsRawFd for Host {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The host side: wait until the context's descriptor is readable or
/// `next_timeout()` has passed, then `poll()`; until `done`. Returns how many
/// times it woke.
async fn drive(ctx: Rc<IoContext>, done: impl Fn() -> bool) -> usize {
    // SAFETY: the descriptor is the context's epoll instance, which is open
    // and the same for the context's whole life; `Host` holds the context, so
    // it lives as long as the AsyncFd.
    let afd = unsafe { AsyncFd::register_with_interest(Host(ctx.clone()), Interest::READABLE) }.unwrap();
    let mut wakeups = 0;
    loop {
        ctx.poll();
        if done() {
            return wakeups;
        }
        let readable = async {
            // tokio's registration is edge-triggered: clear before poll(), so
            // that anything arriving after poll() makes a new edge.
            afd.readable().await.unwrap().clear_ready();
        };
        match ctx.next_timeout() {
            // Handlers are ready: let the other tasks run, then poll again.
            Some(Duration::ZERO) => tokio::task::yield_now().await,
            Some(d) => {
                let _ = tokio::time::timeout(d, readable).await;
            }
            None => readable.await,
        }
        wakeups += 1;
    }
}

#[test]
fn tokio_drives_udp_echo_and_timers_through_async_fd() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().unwrap();
    let local = tokio::task::LocalSet::new();
    let ctx = Rc::new(IoContext::new().unwrap());
    let _work = ctx.executor().work_guard(); // poll() out of work would stop it
    let server = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    let (served, ticks) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    echo_server(server.clone(), served.clone());
    tick(SteadyTimer::new(&ctx.executor()), TICKS, ticks.clone());

    let echoed = Rc::new(Cell::new(0));
    let (e2, t2, s2) = (echoed.clone(), ticks.clone(), served.clone());
    let wakeups = local.block_on(&rt, async move {
        let client = local_client(addr, e2.clone());
        let host = tokio::task::spawn_local(drive(ctx.clone(), move || e2.get() == ECHOES && t2.get() == TICKS));
        client.await;
        let wakeups = tokio::time::timeout(Duration::from_secs(10), host).await.expect("host loop stuck").unwrap();
        assert_eq!(s2.get(), ECHOES);
        wakeups
    });
    assert_eq!((echoed.get(), ticks.get(), served.get()), (ECHOES, TICKS, ECHOES));
    // No busy loop: each echo needs a few wake-ups (the datagram in, the
    // handlers, the reply's turn), each tick one or two.
    eprintln!("wakeups {wakeups}");
    assert!(wakeups <= 4 * ECHOES + 3 * TICKS + 20, "{wakeups} wake-ups: the host spun");
}

/// A tokio UDP client: sends each message and awaits its echo.
async fn local_client(server: std::net::SocketAddr, echoed: Rc<Cell<usize>>) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server).await.unwrap();
    let mut buf = [0u8; 64];
    for k in 0..ECHOES {
        sock.send(&k.to_be_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf)).await.expect("echo lost").unwrap();
        assert_eq!(&buf[..n], &k.to_be_bytes()[..]);
        echoed.set(echoed.get() + 1);
    }
}
