//! A TCP echo server on ioctx.
//!
//! With no arguments: the server and 8 concurrent clients run in one loop on
//! 127.0.0.1. Each client sends messages of several sizes (1 byte to 1 MiB),
//! reads each one back, checks every byte, and the program prints the
//! throughput and exits 0 (1 if anything did not verify).
//!
//! With `--listen ADDR:PORT`: only the server, until killed. It prints
//! `listening on ADDR:PORT` first (useful with port 0).
//!
//!     cargo run --release --example tcp_echo
//!     cargo run --release --example tcp_echo -- --listen 127.0.0.1:7000

use ioctx::net::{TcpListener, TcpStream, async_read, async_write, transfer_all, transfer_exactly};
use ioctx::{Error, IoContext, SteadyTimer};
use std::cell::Cell;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 8;
const SIZES: [usize; 6] = [1, 100, 1500, 65_536, 300_000, 1 << 20];
const ROUNDS: usize = 3;

/// Accepts connections forever; each one echoes what it reads.
fn accept_loop(listener: TcpListener) {
    let l = listener.clone();
    listener.async_accept(move |e, peer| {
        match peer {
            Some(peer) => echo(peer, vec![0u8; 64 * 1024]),
            // Closed (or cancelled): stop accepting.
            None if e == Error::OPERATION_ABORTED || e == Error::BAD_DESCRIPTOR => return,
            // Anything else (EMFILE, ...) leaves the listener usable: the
            // connection waits in the backlog, so try again a little later.
            None => {
                eprintln!("accept failed: {e}; retrying in 100 ms");
                let t = SteadyTimer::new(&l.executor());
                t.expires_after(Duration::from_millis(100));
                let t2 = t.clone();
                t.async_wait(move |_| {
                    drop(t2);
                    accept_loop(l);
                });
                return;
            }
        }
        accept_loop(l);
    });
}

fn echo(peer: TcpStream, buf: Vec<u8>) {
    let p = peer.clone();
    peer.async_read_some(buf, move |e, n, mut buf| {
        if e.is_err() {
            return; // EOF or reset: the connection closes with its last handle
        }
        buf.truncate(n);
        let p2 = p.clone();
        async_write(&p, buf, transfer_all(), move |e, _| {
            if e.is_ok() {
                echo(p2, vec![0u8; 64 * 1024]);
            }
        });
    });
}

/// The bytes of message `k` of client `c`: different everywhere.
fn message(c: usize, k: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 * 31 + c as u64 * 7 + k as u64 * 13) as u8).collect()
}

struct Stats {
    bytes: Cell<usize>,
    messages: Cell<usize>,
    failures: Cell<usize>,
    clients_done: Cell<usize>,
}

/// Sends message `k` and reads it back, concurrently (a 1 MiB message does
/// not fit the socket buffers: writing and reading must overlap).
fn client_round(s: TcpStream, c: usize, k: usize, stats: Rc<Stats>, listener: TcpListener) {
    if k == SIZES.len() * ROUNDS {
        stats.clients_done.set(stats.clients_done.get() + 1);
        s.close();
        if stats.clients_done.get() == CLIENTS {
            listener.close(); // the loop runs out of work and run() returns
        }
        return;
    }
    let len = SIZES[k % SIZES.len()];
    let msg = message(c, k, len);
    let st = stats.clone();
    async_write(&s, msg, transfer_all(), move |e, n| {
        if e.is_err() || n != len {
            eprintln!("client {c}: write {k} ended with {e} after {n} bytes");
            st.failures.set(st.failures.get() + 1);
        }
    });
    let s2 = s.clone();
    async_read(&s, vec![0u8; len], transfer_exactly(len), move |e, n, back| {
        if e != Error::NONE || n != len || back != message(c, k, len) {
            eprintln!("client {c}: echo {k} of {len} bytes did not verify ({e}, {n} bytes)");
            stats.failures.set(stats.failures.get() + 1);
        }
        stats.bytes.set(stats.bytes.get() + 2 * n);
        stats.messages.set(stats.messages.get() + 1);
        client_round(s2, c, k + 1, stats, listener);
    });
}

fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let ctx = IoContext::new()?;
    let listener = TcpListener::bind(&ctx, addr)?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    accept_loop(listener);
    ctx.run();
    Ok(())
}

fn demo() -> std::io::Result<bool> {
    let ctx = IoContext::new()?;
    let listener = TcpListener::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
    let addr = listener.local_addr()?;
    println!("echo server on {addr}, {CLIENTS} clients, messages of {SIZES:?} bytes, {ROUNDS} rounds each");
    accept_loop(listener.clone());
    let stats = Rc::new(Stats {
        bytes: Cell::new(0),
        messages: Cell::new(0),
        failures: Cell::new(0),
        clients_done: Cell::new(0),
    });
    for c in 0..CLIENTS {
        let s = TcpStream::open(&ctx, socket2::Domain::IPV4)?;
        let (s2, st, l) = (s.clone(), stats.clone(), listener.clone());
        s.async_connect(addr, move |e| {
            if e.is_err() {
                eprintln!("client {c}: connect failed: {e}");
                st.failures.set(st.failures.get() + 1);
                return;
            }
            client_round(s2, c, 0, st, l);
        });
    }
    let t0 = Instant::now();
    let handlers = ctx.run();
    let secs = t0.elapsed().as_secs_f64();
    let mb = stats.bytes.get() as f64 / 1e6;
    println!(
        "{} messages echoed and verified, {:.1} MB through the server in {:.3} s: {:.0} MB/s, {} handlers",
        stats.messages.get(),
        mb,
        secs,
        mb / secs,
        handlers
    );
    let ok = stats.failures.get() == 0 && stats.messages.get() == CLIENTS * SIZES.len() * ROUNDS;
    if !ok {
        eprintln!("FAILED: {} failures, {} messages", stats.failures.get(), stats.messages.get());
    }
    Ok(ok)
}

fn main() {
    // The library logs through `log`: RUST_LOG=ioctx=debug shows its state
    // changes, ioctx=trace every operation. Unset, only warnings, so that
    // the program's own output stands alone.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => demo(),
        [flag, addr] if flag == "--listen" => match addr.parse() {
            Ok(addr) => serve(addr).map(|()| true),
            Err(e) => {
                eprintln!("bad address {addr}: {e}");
                std::process::exit(2);
            }
        },
        _ => {
            eprintln!("usage: tcp_echo [--listen ADDR:PORT]");
            std::process::exit(2);
        }
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("tcp_echo: {e}");
            std::process::exit(1);
        }
    }
}
