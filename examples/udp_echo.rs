//! A UDP echo server and a client in ONE `IoContext`, on loopback.
//!
//! The server keeps a few `async_receive_from` operations cycling: each one
//! receives a datagram, `async_send_to`s the same bytes back to the sender,
//! and, when that send completes, re-arms the receive with the same buffer.
//!
//! The client is a connected `UdpSocket` that sends `--count` datagrams,
//! keeping `--window` of them in flight. Each datagram carries its sequence
//! number (u64 LE), the time it was sent (u64 LE, nanoseconds since the start)
//! and a payload derived from the sequence number, so every echo is checked
//! for length and content and its round trip is measured. Each sequence
//! number must be echoed exactly once.
//!
//! Loopback UDP can still drop datagrams when the socket buffers overflow
//! (try a large `--window` with a large `--size`). A `SteadyTimer` resends
//! what has gone unanswered for `--timeout-ms` (oldest first, at most 32 per
//! tick, the timeout doubling with each resend of a datagram); the output
//! counts the retransmissions and the late duplicates they can cause, so the
//! result is never faked. The run fails when nothing progresses for 10
//! seconds.
//!
//! When every echo has been verified the client closes both sockets; the
//! pending receives complete with `OPERATION_ABORTED`, nothing is left to do,
//! and `run()` returns by itself.
//!
//! ```text
//! cargo run --release --example udp_echo -- [--count N] [--window W] [--size BYTES] [--timeout-ms MS]
//! RUST_LOG=ioctx=debug cargo run --release --example udp_echo -- --count 100
//! ```
//!
//! `RUST_LOG` selects the library's log records (`ioctx=debug`: state
//! changes; `ioctx=trace`: every operation), printed to stderr.

use ioctx::net::UdpSocket;
use ioctx::{Error, Executor, IoContext, SimConfig, SteadyTimer};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Sequence number and send timestamp.
const HEADER: usize = 16;
/// Receives the server keeps pending.
const SERVER_SLOTS: usize = 4;
/// Give up when no echo has been verified for this long.
const STALL_LIMIT: Duration = Duration::from_secs(10);
/// At most this many datagrams are resent per timer tick.
const RESEND_BURST: usize = 32;
/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

const USAGE: &str = "\
usage: udp_echo [--count N | -n N] [--window W | -w W] [--size BYTES] [--timeout-ms MS]

  --count, -n    datagrams to send and verify          (default 100000)
  --window, -w   datagrams in flight at once            (default 16)
  --size         bytes per datagram, at least 16         (default 64)
  --timeout-ms   resend a datagram not echoed after MS   (default 200)
  --simulate S   run on a simulated context with seed S: virtual time, an
                 in-memory network that loses 5%, duplicates 1% and reorders
                 5% of datagrams (the seed decides which); prints the trace
                 hash, the same for every run of S

RUST_LOG=ioctx=debug (or trace) prints the library's log records to stderr.";

#[derive(Clone, Copy, Debug)]
struct Config {
    count: u64,
    window: usize,
    size: usize,
    timeout: Duration,
    /// Run on a simulated context with this seed.
    simulate: Option<u64>,
}

fn parse_number(flag: &str, value: Option<String>) -> Result<u64, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value.replace('_', "").parse::<u64>().map_err(|e| format!("{flag} {value:?}: {e}"))
}

/// Parses `std::env::args` by hand; `Ok(None)` means `--help` was asked for.
fn parse_args() -> Result<Option<Config>, String> {
    let mut cfg = Config { count: 100_000, window: 16, size: 64, timeout: Duration::from_millis(200), simulate: None };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, mut inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.take().or_else(|| args.next());
        match flag.as_str() {
            "--count" | "-n" => cfg.count = parse_number(&flag, value())?,
            "--window" | "-w" => cfg.window = parse_number(&flag, value())? as usize,
            "--size" => cfg.size = parse_number(&flag, value())? as usize,
            "--timeout-ms" => cfg.timeout = Duration::from_millis(parse_number(&flag, value())?),
            "--simulate" => cfg.simulate = Some(parse_number(&flag, value())?),
            "--help" | "-h" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if cfg.count == 0 {
        return Err("--count must be at least 1".into());
    }
    if cfg.window == 0 {
        return Err("--window must be at least 1".into());
    }
    if !(HEADER..=MAX_DATAGRAM).contains(&cfg.size) {
        return Err(format!("--size must be in {HEADER}..={MAX_DATAGRAM}"));
    }
    if cfg.timeout.is_zero() {
        return Err("--timeout-ms must be at least 1".into());
    }
    Ok(Some(cfg))
}

/// The payload byte at `i` of datagram `seq` (after the header).
fn pattern(seq: u64, i: usize) -> u8 {
    (seq.wrapping_mul(31) as u8).wrapping_add(i as u8)
}

fn make_datagram(seq: u64, sent_ns: u64, size: usize) -> Vec<u8> {
    let mut d = Vec::with_capacity(size);
    d.extend_from_slice(&seq.to_le_bytes());
    d.extend_from_slice(&sent_ns.to_le_bytes());
    d.extend((HEADER..size).map(|i| pattern(seq, i)));
    d
}

// ---------------------------------------------------------------- server --

/// The echo server: `SERVER_SLOTS` receive/send cycles on one socket.
struct Server {
    sock: UdpSocket,
    buf_len: usize,
    echoed: Cell<u64>,
    errors: Cell<u64>,
}

impl Server {
    fn start(self: &Rc<Self>) {
        for _ in 0..SERVER_SLOTS {
            self.receive(vec![0u8; self.buf_len]);
        }
    }

    fn receive(self: &Rc<Self>, buf: Vec<u8>) {
        let me = self.clone();
        self.sock.async_receive_from(buf, move |err, n, buf, from| me.on_receive(err, n, buf, from));
    }

    fn on_receive(self: &Rc<Self>, err: Error, n: usize, mut buf: Vec<u8>, from: SocketAddr) {
        if err == Error::OPERATION_ABORTED || err == Error::BAD_DESCRIPTOR {
            return; // closed: this slot ends
        }
        if err.is_err() {
            self.errors.set(self.errors.get() + 1);
            eprintln!("server: receive failed: {err}");
            buf.resize(self.buf_len, 0);
            return self.receive(buf);
        }
        // Send exactly the bytes received. The send owns the buffer until it
        // completes and drops it before running the handler, so our clone of
        // the Rc is unique again there and the Vec is reused for the next
        // receive: no allocation per datagram.
        buf.truncate(n);
        let shared = Rc::new(buf);
        let keep = shared.clone();
        let me = self.clone();
        self.sock.async_send_to(shared, from, move |err, sent| {
            if err == Error::OPERATION_ABORTED || err == Error::BAD_DESCRIPTOR {
                return;
            }
            if err.is_ok() && sent == n {
                me.echoed.set(me.echoed.get() + 1);
            } else {
                me.errors.set(me.errors.get() + 1);
                eprintln!("server: send to {from} failed: ({err:?}, {sent} of {n})");
            }
            let mut buf = Rc::try_unwrap(keep).unwrap_or_else(|rc| (*rc).clone());
            buf.resize(me.buf_len, 0);
            me.receive(buf);
        });
    }
}

// ---------------------------------------------------------------- client --

/// A datagram sent and not yet echoed.
struct InFlight {
    /// When it was first sent, and last sent.
    first_ns: u64,
    last_ns: u64,
    /// How many times it was sent.
    sends: u32,
    /// When to resend it if no echo has come (the timeout doubles with
    /// each resend, up to 16 times `--timeout-ms`).
    due_ns: u64,
}

#[derive(Default)]
struct ClientState {
    next_seq: u64,
    in_flight: BTreeMap<u64, InFlight>,
    /// Per sequence number: echoed yet?
    echoed: Vec<bool>,
    /// Per sequence number: sent more than once?
    resent: Vec<bool>,
    verified: u64,
    rtt_ns: Vec<u64>,
    retransmissions: u64,
    late_duplicates: u64,
    send_errors: u64,
    first_send: Option<Instant>,
    last_echo: Option<Instant>,
    /// `verified` at the last timer tick, and how long it has not moved.
    progress_mark: u64,
    stalled: Duration,
    done: bool,
    failure: Option<String>,
}

struct Client {
    cfg: Config,
    sock: UdpSocket,
    server: Rc<Server>,
    timer: SteadyTimer,
    tick: Duration,
    /// The context's clock (virtual on a simulated context).
    ex: Executor,
    epoch: Instant,
    st: RefCell<ClientState>,
}

impl Client {
    fn now_ns(&self) -> u64 {
        (self.ex.now() - self.epoch).as_nanos() as u64
    }

    fn start(self: &Rc<Self>) {
        self.receive(vec![0u8; self.cfg.size + 64]);
        let first = (self.cfg.window as u64).min(self.cfg.count);
        self.st.borrow_mut().first_send = Some(self.ex.now());
        for _ in 0..first {
            self.send_next();
        }
        self.arm_timer();
    }

    /// Sends the next new sequence number, if any is left.
    fn send_next(self: &Rc<Self>) {
        let (seq, now) = {
            let mut st = self.st.borrow_mut();
            if st.next_seq >= self.cfg.count {
                return;
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            let now = self.now_ns();
            let due_ns = now + self.cfg.timeout.as_nanos() as u64;
            st.in_flight.insert(seq, InFlight { first_ns: now, last_ns: now, sends: 1, due_ns });
            (seq, now)
        };
        self.transmit(seq, now);
    }

    fn transmit(self: &Rc<Self>, seq: u64, now: u64) {
        let me = self.clone();
        let size = self.cfg.size;
        self.sock.async_send(make_datagram(seq, now, size), move |err, n| {
            if err == Error::OPERATION_ABORTED || err == Error::BAD_DESCRIPTOR {
                return;
            }
            if err.is_err() || n != size {
                // Not on the wire: the timer resends it.
                let mut st = me.st.borrow_mut();
                st.send_errors += 1;
                if st.send_errors <= 5 {
                    eprintln!("client: send of #{seq} failed: ({err:?}, {n})");
                }
            }
        });
    }

    fn receive(self: &Rc<Self>, buf: Vec<u8>) {
        let me = self.clone();
        self.sock.async_receive(buf, move |err, n, buf| me.on_echo(err, n, buf));
    }

    fn on_echo(self: &Rc<Self>, err: Error, n: usize, buf: Vec<u8>) {
        if self.st.borrow().done {
            return;
        }
        if err.is_err() {
            return self.fail(format!("client receive failed: {err:?} ({err})"));
        }
        let now = self.now_ns();
        let fresh = match self.verify(&buf[..n], now) {
            Ok(fresh) => fresh,
            Err(msg) => return self.fail(msg),
        };
        let finished = {
            let st = self.st.borrow();
            st.verified == self.cfg.count
        };
        if finished {
            self.st.borrow_mut().last_echo = Some(self.ex.now());
            return self.finish();
        }
        // Keep the window full: one verified, one more goes out (a late
        // duplicate frees no room in the window).
        if fresh {
            self.send_next();
        }
        self.receive(buf);
    }

    /// Checks one echo and, when it is the first for its sequence number,
    /// records its round trip. `Ok(false)`: a late duplicate of a datagram
    /// that was sent more than once.
    fn verify(&self, d: &[u8], now: u64) -> Result<bool, String> {
        if d.len() != self.cfg.size {
            return Err(format!("echo of {} bytes, expected {}", d.len(), self.cfg.size));
        }
        let seq = u64::from_le_bytes(d[0..8].try_into().unwrap());
        let sent = u64::from_le_bytes(d[8..16].try_into().unwrap());
        if seq >= self.cfg.count {
            return Err(format!("echo carries sequence number {seq}, never sent"));
        }
        if let Some(i) = (HEADER..d.len()).find(|&i| d[i] != pattern(seq, i)) {
            return Err(format!("echo of #{seq}: payload byte {i} is wrong"));
        }
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let idx = seq as usize;
        if st.echoed[idx] {
            // A second echo is fine only when we sent the datagram twice, or
            // on a simulated network, which duplicates some datagrams.
            if st.resent[idx] || self.cfg.simulate.is_some() {
                st.late_duplicates += 1;
                return Ok(false);
            }
            return Err(format!("#{seq} echoed twice but sent once"));
        }
        let Some(flight) = st.in_flight.remove(&seq) else {
            return Err(format!("echo of #{seq}, which is not in flight"));
        };
        let known = if flight.sends == 1 {
            sent == flight.first_ns
        } else {
            (flight.first_ns..=flight.last_ns).contains(&sent)
        };
        if !known {
            return Err(format!("echo of #{seq} carries a timestamp it was never sent with"));
        }
        st.echoed[idx] = true;
        st.verified += 1;
        st.rtt_ns.push(now.saturating_sub(sent));
        Ok(true)
    }

    fn arm_timer(self: &Rc<Self>) {
        self.timer.expires_after(self.tick);
        let me = self.clone();
        self.timer.async_wait(move |err| {
            if err.is_ok() {
                me.on_tick();
            }
        });
    }

    /// Resends what has waited longer than the timeout; fails on a stall.
    fn on_tick(self: &Rc<Self>) {
        let now = self.now_ns();
        let timeout = self.cfg.timeout.as_nanos() as u64;
        let (resend, stalled) = {
            let mut st = self.st.borrow_mut();
            if st.done {
                return;
            }
            let mut resend = Vec::new();
            // Oldest first, a bounded burst per tick: resending a whole
            // large window at once would only overflow the buffers again.
            for (&seq, f) in st.in_flight.iter_mut() {
                if resend.len() == RESEND_BURST {
                    break;
                }
                if now >= f.due_ns {
                    f.last_ns = now;
                    f.sends += 1;
                    f.due_ns = now + (timeout << (f.sends - 1).min(4));
                    resend.push(seq);
                }
            }
            for &seq in &resend {
                st.resent[seq as usize] = true;
            }
            st.retransmissions += resend.len() as u64;
            if st.verified == st.progress_mark {
                st.stalled += self.tick;
            } else {
                st.progress_mark = st.verified;
                st.stalled = Duration::ZERO;
            }
            (resend, st.stalled >= STALL_LIMIT)
        };
        if stalled {
            let st = self.st.borrow();
            let msg = format!(
                "no echo verified for {STALL_LIMIT:?}: {} of {} verified, {} in flight",
                st.verified,
                self.cfg.count,
                st.in_flight.len()
            );
            drop(st);
            return self.fail(msg);
        }
        for seq in resend {
            self.transmit(seq, now);
        }
        self.arm_timer();
    }

    fn fail(self: &Rc<Self>, msg: String) {
        {
            let mut st = self.st.borrow_mut();
            if st.failure.is_none() {
                st.failure = Some(msg);
            }
        }
        self.finish();
    }

    /// Ends the run: with both sockets closed and the timer cancelled, the
    /// pending operations complete with `OPERATION_ABORTED` and `run()`
    /// returns once their handlers have run.
    fn finish(self: &Rc<Self>) {
        self.st.borrow_mut().done = true;
        self.timer.cancel();
        self.sock.close();
        self.server.sock.close();
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn main() -> ExitCode {
    // The library logs through `log`: RUST_LOG=ioctx=debug shows its state
    // changes, ioctx=trace every operation. Unset, only warnings, so that
    // the program's own output stands alone.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cfg = match parse_args() {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("udp_echo: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("VERIFY FAILED: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Turns an `io::Error` into a message saying what failed.
fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn run(cfg: Config) -> Result<(), String> {
    // The same code on both: only the context and the addresses differ (a
    // simulated network has a host per IP).
    let (ctx, server_at, client_at) = match cfg.simulate {
        None => (IoContext::new().map_err(io("creating the io context"))?, "127.0.0.1:0", "127.0.0.1:0"),
        Some(seed) => {
            let net = SimConfig::new(seed)
                .latency(Duration::from_micros(100), Duration::from_millis(2))
                .loss(0.05)
                .duplicate(0.01)
                .reorder(0.05);
            (IoContext::simulated_with(net), "10.0.0.1:7", "10.0.0.2:0")
        }
    };
    let loopback: SocketAddr = client_at.parse().unwrap();

    let server_sock = UdpSocket::bind(&ctx, server_at.parse().unwrap()).map_err(io("binding the server"))?;
    let server_addr = server_sock.local_addr().map_err(io("server address"))?;
    let server = Rc::new(Server {
        sock: server_sock,
        buf_len: (cfg.size + 1).max(2048),
        echoed: Cell::new(0),
        errors: Cell::new(0),
    });

    let client_sock = UdpSocket::bind(&ctx, loopback).map_err(io("binding the client"))?;
    client_sock.connect(server_addr).map_err(io("connecting the client"))?;
    let client_addr = client_sock.local_addr().map_err(io("client address"))?;

    let client = Rc::new(Client {
        cfg,
        sock: client_sock,
        server: server.clone(),
        timer: SteadyTimer::new(&ctx),
        tick: (cfg.timeout / 4).max(Duration::from_millis(1)),
        ex: ctx.executor(),
        epoch: ctx.now(),
        st: RefCell::new(ClientState {
            echoed: vec![false; cfg.count as usize],
            resent: vec![false; cfg.count as usize],
            rtt_ns: Vec::with_capacity(cfg.count as usize),
            ..ClientState::default()
        }),
    });

    println!(
        "udp_echo: {} datagrams of {} bytes, window {}, server {server_addr}, client {client_addr}",
        cfg.count, cfg.size, cfg.window
    );

    server.start();
    client.start();
    let handlers = ctx.run();

    let st = client.st.borrow();
    if let Some(msg) = &st.failure {
        return Err(msg.clone());
    }
    if st.verified != cfg.count {
        return Err(format!("run() returned with {} of {} echoes verified", st.verified, cfg.count));
    }
    if let Some(missing) = st.echoed.iter().position(|e| !e) {
        return Err(format!("#{missing} was never echoed"));
    }

    let elapsed = match (st.first_send, st.last_echo) {
        (Some(a), Some(b)) => b - a,
        _ => Duration::ZERO,
    };
    let secs = elapsed.as_secs_f64();
    let rate = cfg.count as f64 / secs;
    let mut rtt = st.rtt_ns.clone();
    rtt.sort_unstable();

    println!("verified:      {} echoes (length and content checked, each sequence number once)", st.verified);
    println!(
        "retransmitted: {} (late duplicates {}, send errors {}; server echoed {}, server errors {})",
        st.retransmissions,
        st.late_duplicates,
        st.send_errors,
        server.echoed.get(),
        server.errors.get()
    );
    let clock = if ctx.sim().is_some() { " (virtual)" } else { "" };
    println!("elapsed:       {secs:.3} s{clock}");
    println!("rate:          {rate:.0} datagrams/s echoed ({:.0} datagrams/s through the loop, both ways)", rate * 2.0);
    println!(
        "round trip:    p50 {:.1} us, p90 {:.1} us, p99 {:.1} us, max {:.1} us",
        micros(percentile(&rtt, 50.0)),
        micros(percentile(&rtt, 90.0)),
        micros(percentile(&rtt, 99.0)),
        micros(rtt.last().copied().unwrap_or(0)),
    );
    println!("handlers run:  {handlers}");
    if let Some(sim) = ctx.sim() {
        println!(
            "simulated:     seed {}, {:?} of virtual time, {} trace events, trace hash {:016x}",
            sim.seed(),
            sim.now(),
            sim.events(),
            sim.trace_hash()
        );
    }
    Ok(())
}
