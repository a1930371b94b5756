//! ioctx embedded in a host's own event loop.
//!
//! The host here is a plain poll(2) loop (through rustix, to stay free of
//! `unsafe`) that serves a pipe of its own (lines written by another thread,
//! standing in for stdin or a GUI's events). It sleeps on two descriptors,
//! its pipe and the context's, for at most `ctx.next_timeout()`, then calls
//! `ctx.poll()`. Meanwhile ioctx runs
//! a UDP echo between two sockets and a 10 ms ticker. The program prints
//! what each side did and how often the host woke up, and exits by itself.
//!
//!     cargo run --release --example embed

use ioctx::net::UdpSocket;
use ioctx::{Error, IoContext, SteadyTimer};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

const ECHOES: usize = 500;
const TICKS: usize = 20;
const LINES: usize = 50;

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
    c.async_send(k.to_be_bytes().to_vec(), |_, _| {});
    let c2 = c.clone();
    c.async_receive(vec![0u8; 64], move |e, n, buf| {
        if e == Error::NONE && buf[..n] == k.to_be_bytes() {
            echoed.set(echoed.get() + 1);
        }
        client(c2, k + 1, echoed);
    });
}

fn ticker(t: SteadyTimer, ticks: Rc<Cell<usize>>) {
    if ticks.get() == TICKS {
        return;
    }
    t.expires_after(Duration::from_millis(10));
    let t2 = t.clone();
    t.async_wait(move |_| {
        ticks.set(ticks.get() + 1);
        ticker(t2, ticks);
    });
}

fn main() -> std::io::Result<()> {
    // The library logs through `log`: RUST_LOG=ioctx=debug shows its state
    // changes, ioctx=trace every operation. Unset, only warnings, so that
    // the program's own output stands alone.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    // ioctx's side.
    let ctx = IoContext::new()?;
    let _keep = ctx.work_guard(); // poll() out of work would stop the context
    let server = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
    let c = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
    c.connect(server.local_addr()?)?;
    echo_server(server);
    let (echoed, ticks) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    client(c, 0, echoed.clone());
    ticker(SteadyTimer::new(&ctx), ticks.clone());

    // The host's own source: a pipe fed by another thread.
    let (mut rx, mut tx) = std::io::pipe()?;
    let feeder = std::thread::spawn(move || {
        for i in 0..LINES {
            writeln!(tx, "host line {i}").unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    set_nonblocking(&rx)?;

    // The host loop.
    let (mut wakeups, mut lines, mut pipe_open, mut pending) = (0, 0, true, Vec::new());
    let t0 = Instant::now();
    while pipe_open || echoed.get() < ECHOES || ticks.get() < TICKS {
        if t0.elapsed() > Duration::from_secs(10) {
            eprintln!("embed: gave up after 10 s");
            std::process::exit(1);
        }
        // None: only I/O can bring ioctx work, so sleep until a descriptor
        // is readable. poll(2) is level-triggered: nothing can be missed.
        let timeout = ctx.next_timeout().map(|d| Timespec::try_from(d).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 }));
        let pipe_readable = {
            let mut fds = [PollFd::new(&rx, PollFlags::IN), PollFd::new(&ctx, PollFlags::IN)];
            if pipe_open {
                poll(&mut fds, timeout.as_ref())?;
            } else {
                poll(&mut fds[1..], timeout.as_ref())?;
            }
            pipe_open && !fds[0].revents().is_empty()
        };
        wakeups += 1;
        if pipe_readable {
            pipe_open = drain_lines(&mut rx, &mut pending, &mut lines)?;
        }
        ctx.poll(); // whatever woke the host, ioctx gets its turn
    }
    feeder.join().unwrap();
    println!(
        "host served {lines} lines of its pipe; ioctx echoed {} datagrams and ticked {} times; \
         the host woke {wakeups} times in {:.0} ms",
        echoed.get(),
        ticks.get(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    if lines != LINES || echoed.get() != ECHOES || ticks.get() != TICKS {
        eprintln!("embed: something was missed");
        std::process::exit(1);
    }
    Ok(())
}

/// Reads what the pipe holds (until it would block); counts
/// whole lines; false at the end of the pipe.
fn drain_lines(rx: &mut std::io::PipeReader, pending: &mut Vec<u8>, lines: &mut usize) -> std::io::Result<bool> {
    let mut buf = [0u8; 4096];
    loop {
        match rx.read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                    pending.drain(..=i);
                    *lines += 1;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The pipe must not block the host: through socket2's safe fcntl wrapper.
fn set_nonblocking(rx: &std::io::PipeReader) -> std::io::Result<()> {
    socket2::SockRef::from(rx).set_nonblocking(true)
}
