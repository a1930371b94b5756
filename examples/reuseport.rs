//! More than one core: a UDP server on `--threads` threads, each with its own
//! `IoContext` and its own socket, all bound to ONE port with `SO_REUSEPORT`.
//!
//! ioctx runs one loop on one thread. To use more cores, run one loop per
//! core: each server thread opens a socket, sets `set_reuse_port(true)` and
//! binds it to the same address (`open`, `set_reuse_port`, `bind_to`, as
//! Asio's `open`, `set_option`, `bind`). Linux then hands each datagram to
//! one socket of the group, chosen by a hash of the sender's address and
//! port, so one sender always reaches the same thread and the threads share
//! nothing.
//!
//! Each request is 16 bytes: a sequence number and a key. The server answers
//! with 32 bytes: the sequence number, the key, an answer computed from the
//! key (`--work` rounds of a 64-bit mixing function after the first, so the
//! server's cost per request can be raised) and the index of the thread that
//! answered. The client threads, each with its own `IoContext`, send from
//! `--sockets` connected sockets (that many source ports), one request in
//! flight per socket, and check every reply against answers computed before
//! the clock starts. A request unanswered for `--timeout-ms` is resent and
//! counted; a late reply to a resent request is counted and ignored.
//!
//! When every request has been answered and checked, the clients close their
//! sockets and return; the main thread stops the server loops through their
//! `Remote`s and prints what each thread did and the requests per second.
//! The run fails when a reply is wrong, when nothing progresses for 10
//! seconds, or when a server thread answered nothing (with the default 64
//! sockets and 2 threads, a thread gets none with probability 2^-63).
//!
//! The clients run on the same machine and the same cores as the servers:
//! the rate is that of the whole exchange, clients included (see
//! `BENCHMARKS.md`).
//!
//! ```text
//! cargo run --release --example reuseport -- [--threads N] [--client-threads N] [--sockets N]
//!                                            [--requests N] [--work ROUNDS] [--timeout-ms MS]
//! ```

use ioctx::net::UdpSocket;
use ioctx::{Error, IoContext, Remote, SteadyTimer};
use socket2::Domain;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// Sequence number and key.
const REQUEST: usize = 16;
/// Sequence number, key, answer and the answering thread's index.
const REPLY: usize = 32;
/// Distinct keys: the clients check answers against this many, computed
/// before the clock starts.
const KEYS: u64 = 4096;
/// Receives each server keeps pending: a busy loop fills them all from one
/// wakeup (one `recvmmsg`); 16 gave 8% more requests/s than 4 here.
const SERVER_SLOTS: usize = 16;
/// Give up when no reply has been verified for this long.
const STALL_LIMIT: Duration = Duration::from_secs(10);

const USAGE: &str = "\
usage: reuseport [--threads N] [--client-threads N] [--sockets N] [--requests N] [--work ROUNDS] [--timeout-ms MS]

  --threads, -t     server threads, each with its own IoContext and socket  (default 2)
  --client-threads  client threads, each with its own IoContext              (default 1)
  --sockets, -s     client sockets (source ports) in all, one request each  (default 64)
                    in flight
  --requests, -n    requests to send and verify                              (default 200000)
  --work            extra rounds of the mixing function per request         (default 0)
  --timeout-ms      resend a request not answered after MS                  (default 200)";

#[derive(Clone, Copy, Debug)]
struct Config {
    threads: usize,
    client_threads: usize,
    sockets: usize,
    requests: u64,
    work: u32,
    timeout: Duration,
}

fn parse_number(flag: &str, value: Option<String>) -> Result<u64, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value.replace('_', "").parse::<u64>().map_err(|e| format!("{flag} {value:?}: {e}"))
}

/// Parses `std::env::args` by hand; `Ok(None)` means `--help` was asked for.
fn parse_args() -> Result<Option<Config>, String> {
    let mut cfg = Config {
        threads: 2,
        client_threads: 1,
        sockets: 64,
        requests: 200_000,
        work: 0,
        timeout: Duration::from_millis(200),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, mut inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.take().or_else(|| args.next());
        match flag.as_str() {
            "--threads" | "-t" => cfg.threads = parse_number(&flag, value())? as usize,
            "--client-threads" => cfg.client_threads = parse_number(&flag, value())? as usize,
            "--sockets" | "-s" => cfg.sockets = parse_number(&flag, value())? as usize,
            "--requests" | "-n" => cfg.requests = parse_number(&flag, value())?,
            "--work" => {
                cfg.work = u32::try_from(parse_number(&flag, value())?).map_err(|_| "--work is too large")?;
            }
            "--timeout-ms" => cfg.timeout = Duration::from_millis(parse_number(&flag, value())?),
            "--help" | "-h" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !(1..=256).contains(&cfg.threads) {
        return Err("--threads must be in 1..=256".into());
    }
    if cfg.client_threads == 0 {
        return Err("--client-threads must be at least 1".into());
    }
    if cfg.sockets < cfg.client_threads {
        return Err("--sockets must be at least --client-threads".into());
    }
    if cfg.requests < cfg.client_threads as u64 {
        return Err("--requests must be at least --client-threads".into());
    }
    if cfg.timeout.is_zero() {
        return Err("--timeout-ms must be at least 1".into());
    }
    Ok(Some(cfg))
}

/// splitmix64's step: one round of the server's work.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The answer to `key`: `1 + work` rounds of `mix`.
fn answer(key: u64, work: u32) -> u64 {
    (0..work).fold(mix(key), |x, _| mix(x))
}

fn word(d: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(d[8 * i..8 * i + 8].try_into().unwrap())
}

/// CPU time this thread has used (user and system), from
/// `/proc/thread-self/stat`; `None` where that cannot be read.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // The fields after the command name, which may hold spaces, in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // In USER_HZ, which Linux fixes at 100 for user space.
    Some(Duration::from_millis(ticks * 10))
}

// ---------------------------------------------------------------- server --

/// What a server thread did.
#[derive(Default)]
struct ServerReport {
    answered: u64,
    errors: u64,
    cpu: Option<Duration>,
    /// The loop's `epoll_wait` calls, the datagrams it received, and the
    /// time it spent blocked: how many requests each wakeup found.
    waits: u64,
    received: u64,
    waiting: Duration,
}

/// One server thread's loop: `SERVER_SLOTS` receives cycling on its socket.
struct Server {
    index: u64,
    sock: UdpSocket,
    work: u32,
    answered: Cell<u64>,
    errors: Cell<u64>,
}

impl Server {
    fn receive(self: &Rc<Self>, buf: Vec<u8>) {
        let me = self.clone();
        self.sock.async_receive_from(buf, move |err, n, buf, from| me.on_request(err, n, buf, from));
    }

    fn on_request(self: &Rc<Self>, err: Error, n: usize, buf: Vec<u8>, from: SocketAddr) {
        if err == Error::OPERATION_ABORTED || err == Error::BAD_DESCRIPTOR {
            return; // closed: this slot ends
        }
        if err.is_err() || n != REQUEST {
            // Not a request: counted and dropped; the server goes on.
            self.errors.set(self.errors.get() + 1);
            return self.receive(buf);
        }
        let (seq, key) = (word(&buf, 0), word(&buf, 1));
        let mut reply = [0u8; REPLY];
        for (i, w) in [seq, key, answer(key, self.work), self.index].into_iter().enumerate() {
            reply[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        let me = self.clone();
        // The reply is tried at once (S1); the buffer goes straight back to
        // a receive instead of waiting for the send's handler.
        self.sock.async_send_to(reply, from, move |err, sent| {
            if err.is_ok() && sent == REPLY {
                me.answered.set(me.answered.get() + 1);
            } else if err != Error::OPERATION_ABORTED && err != Error::BAD_DESCRIPTOR {
                me.errors.set(me.errors.get() + 1);
            }
        });
        self.receive(buf);
    }
}

/// Runs server thread `index` on `addr` until its loop is stopped. Reports
/// its loop's `Remote` and bound address on `ready` before running.
fn serve(
    index: usize,
    addr: SocketAddr,
    work: u32,
    ready: mpsc::Sender<Result<(Remote, SocketAddr), String>>,
) -> ServerReport {
    let setup = || -> std::io::Result<(IoContext, Rc<Server>)> {
        let ctx = IoContext::new()?;
        ctx.set_wait_timing(true); // the report shows each loop's idle time
        let sock = UdpSocket::open(&ctx, Domain::for_address(addr))?;
        sock.set_reuse_port(true)?;
        sock.bind_to(addr)?;
        let server = Rc::new(Server { index: index as u64, sock, work, answered: Cell::new(0), errors: Cell::new(0) });
        Ok((ctx, server))
    };
    let (ctx, server) = match setup() {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(format!("server thread {index}: binding {addr} with SO_REUSEPORT: {e}")));
            return ServerReport::default();
        }
    };
    for _ in 0..SERVER_SLOTS {
        server.receive(vec![0u8; 2048]);
    }
    let started = ctx.remote().and_then(|r| Ok((r, server.sock.local_addr()?)));
    if ready.send(started.map_err(|e| format!("server thread {index}: {e}"))).is_err() {
        return ServerReport::default();
    }
    drop(ready);
    // The pending receives keep run() going until Remote::stop. Then the
    // socket is closed and the loop run again to its end, so that the
    // completions of the last replies are counted (and the aborted receives
    // end).
    ctx.run();
    let m = ctx.metrics();
    server.sock.close();
    ctx.restart();
    ctx.run();
    ServerReport {
        answered: server.answered.get(),
        errors: server.errors.get(),
        cpu: thread_cpu(),
        waits: m.reactor_waits,
        received: m.datagrams_in,
        waiting: m.time_waiting,
    }
}

// ---------------------------------------------------------------- client --

/// What a client thread did.
#[derive(Default)]
struct ClientReport {
    verified: u64,
    /// Replies verified, per answering server thread.
    per_server: Vec<u64>,
    retransmissions: u64,
    late_duplicates: u64,
    send_errors: u64,
    first_send: Option<Instant>,
    last_reply: Option<Instant>,
    failure: Option<String>,
    cpu: Option<Duration>,
}

/// One client socket: one request in flight at a time.
struct Slot {
    sock: UdpSocket,
    /// The request in flight (or last answered): sequence number and key.
    seq: Cell<u64>,
    key: Cell<u64>,
    waiting: Cell<bool>,
    /// The tick at which it is resent, and how often it was sent.
    due_tick: Cell<u64>,
    sends: Cell<u32>,
    /// The highest sequence number sent more than once: replies up to it
    /// may come twice.
    max_resent: Cell<u64>,
}

struct Client {
    threads: usize,
    /// Ticks of the resend timer that make one `--timeout-ms`.
    timeout_ticks: u64,
    tick_every: Duration,
    answers: Arc<Vec<u64>>,
    slots: Vec<Slot>,
    timer: SteadyTimer,
    quota: u64,
    key_base: u64,
    issued: Cell<u64>,
    tick: Cell<u64>,
    stalled: Cell<Duration>,
    progress_mark: Cell<u64>,
    /// Set by `finish`: a timer tick already queued must not re-arm.
    done: Cell<bool>,
    r: RefCell<ClientReport>,
}

impl Client {
    fn start(self: &Rc<Self>) {
        self.r.borrow_mut().first_send = Some(Instant::now());
        for i in 0..self.slots.len() {
            self.receive(i, vec![0u8; 2 * REPLY]);
            self.issue(i);
        }
        self.arm_timer();
    }

    /// Sends slot `i`'s next request, if any is left.
    fn issue(self: &Rc<Self>, i: usize) {
        let issued = self.issued.get();
        if issued == self.quota {
            return;
        }
        self.issued.set(issued + 1);
        let s = &self.slots[i];
        s.seq.set(s.seq.get() + 1);
        s.key.set((self.key_base + issued) % KEYS);
        s.waiting.set(true);
        s.sends.set(1);
        s.due_tick.set(self.tick.get() + self.timeout_ticks);
        self.transmit(i);
    }

    fn transmit(self: &Rc<Self>, i: usize) {
        let s = &self.slots[i];
        let mut req = [0u8; REQUEST];
        req[..8].copy_from_slice(&s.seq.get().to_le_bytes());
        req[8..].copy_from_slice(&s.key.get().to_le_bytes());
        let me = self.clone();
        s.sock.async_send(req, move |err, n| {
            if (err.is_err() || n != REQUEST) && err != Error::OPERATION_ABORTED && err != Error::BAD_DESCRIPTOR {
                // Not on the wire: the timer resends it.
                me.r.borrow_mut().send_errors += 1;
            }
        });
    }

    fn receive(self: &Rc<Self>, i: usize, buf: Vec<u8>) {
        let me = self.clone();
        self.slots[i].sock.async_receive(buf, move |err, n, buf| me.on_reply(i, err, n, buf));
    }

    fn on_reply(self: &Rc<Self>, i: usize, err: Error, n: usize, buf: Vec<u8>) {
        if self.done.get() || err == Error::OPERATION_ABORTED || err == Error::BAD_DESCRIPTOR {
            return;
        }
        if err.is_err() {
            return self.fail(format!("client socket {i}: receive failed: {err:?} ({err})"));
        }
        match self.verify(i, &buf[..n]) {
            Ok(true) => {}
            Ok(false) => return self.receive(i, buf), // a late duplicate
            Err(msg) => return self.fail(msg),
        }
        if self.r.borrow().verified == self.quota {
            self.r.borrow_mut().last_reply = Some(Instant::now());
            return self.finish();
        }
        self.issue(i);
        self.receive(i, buf);
    }

    /// Checks a reply on slot `i`. `Ok(false)`: a second reply to a request
    /// that was sent twice.
    fn verify(&self, i: usize, d: &[u8]) -> Result<bool, String> {
        let s = &self.slots[i];
        if d.len() != REPLY {
            return Err(format!("client socket {i}: reply of {} bytes, expected {REPLY}", d.len()));
        }
        let (seq, key, ans, server) = (word(d, 0), word(d, 1), word(d, 2), word(d, 3));
        if key >= KEYS || ans != self.answers[key as usize] {
            return Err(format!("client socket {i}: wrong answer for key {key} in the reply to #{seq}"));
        }
        if server >= self.threads as u64 {
            return Err(format!("client socket {i}: reply from server thread {server}, which does not exist"));
        }
        let current = s.waiting.get() && seq == s.seq.get();
        if !current {
            let earlier = seq < s.seq.get() || (seq == s.seq.get() && !s.waiting.get());
            if earlier && seq <= s.max_resent.get() {
                self.r.borrow_mut().late_duplicates += 1;
                return Ok(false);
            }
            return Err(format!("client socket {i}: reply to #{seq}, which is not in flight"));
        }
        if key != s.key.get() {
            return Err(format!("client socket {i}: reply to #{seq} carries key {key}, sent {}", s.key.get()));
        }
        s.waiting.set(false);
        let mut r = self.r.borrow_mut();
        r.verified += 1;
        r.per_server[server as usize] += 1;
        Ok(true)
    }

    fn arm_timer(self: &Rc<Self>) {
        self.timer.expires_after(self.tick_every);
        let me = self.clone();
        self.timer.async_wait(move |err| {
            if err.is_ok() {
                me.on_tick();
            }
        });
    }

    /// Resends what has waited past its timeout (doubling with each resend,
    /// up to 16 times); fails on a stall.
    fn on_tick(self: &Rc<Self>) {
        if self.done.get() {
            return;
        }
        let tick = self.tick.get() + 1;
        self.tick.set(tick);
        let mut resent = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if s.waiting.get() && tick >= s.due_tick.get() {
                s.due_tick.set(tick + (self.timeout_ticks << s.sends.get().min(4)));
                s.sends.set(s.sends.get() + 1);
                s.max_resent.set(s.seq.get());
                resent += 1;
                self.transmit(i);
            }
        }
        let verified = {
            let mut r = self.r.borrow_mut();
            r.retransmissions += resent;
            r.verified
        };
        if verified == self.progress_mark.get() {
            self.stalled.set(self.stalled.get() + self.tick_every);
        } else {
            self.progress_mark.set(verified);
            self.stalled.set(Duration::ZERO);
        }
        if self.stalled.get() >= STALL_LIMIT {
            return self.fail(format!("no reply verified for {STALL_LIMIT:?}: {verified} of {}", self.quota));
        }
        self.arm_timer();
    }

    fn fail(self: &Rc<Self>, msg: String) {
        self.r.borrow_mut().failure.get_or_insert(msg);
        self.finish();
    }

    /// Ends the run: with the sockets closed and the timer cancelled, the
    /// pending operations complete with `OPERATION_ABORTED` and `run()`
    /// returns once their handlers have run.
    fn finish(self: &Rc<Self>) {
        self.done.set(true);
        self.timer.cancel();
        for s in &self.slots {
            s.sock.close();
        }
    }
}

/// Runs client thread `index`: `sockets` sockets connected to `server`,
/// `quota` requests in all.
fn run_client(
    index: usize,
    cfg: Config,
    server: SocketAddr,
    sockets: usize,
    quota: u64,
    answers: Arc<Vec<u64>>,
) -> Result<ClientReport, String> {
    let e = |what: &'static str| move |err: std::io::Error| format!("client thread {index}: {what}: {err}");
    let ctx = IoContext::new().map_err(e("creating the io context"))?;
    let local: SocketAddr = if server.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" }.parse().unwrap();
    let mut slots = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let sock = UdpSocket::bind(&ctx, local).map_err(e("binding a client socket"))?;
        sock.connect(server).map_err(e("connecting a client socket"))?;
        let (seq, key, due_tick, max_resent) = (Cell::new(0), Cell::new(0), Cell::new(0), Cell::new(0));
        slots.push(Slot { sock, seq, key, waiting: Cell::new(false), due_tick, sends: Cell::new(0), max_resent });
    }
    let tick_every = (cfg.timeout / 4).max(Duration::from_millis(1));
    let client = Rc::new(Client {
        threads: cfg.threads,
        timeout_ticks: (cfg.timeout.as_nanos() / tick_every.as_nanos()).max(1) as u64,
        tick_every,
        answers,
        slots,
        timer: SteadyTimer::new(&ctx),
        quota,
        key_base: index as u64 * 7919,
        issued: Cell::new(0),
        tick: Cell::new(0),
        stalled: Cell::new(Duration::ZERO),
        progress_mark: Cell::new(0),
        done: Cell::new(false),
        r: RefCell::new(ClientReport { per_server: vec![0; cfg.threads], ..ClientReport::default() }),
    });
    client.start();
    ctx.run();
    let mut r = client.r.take();
    r.cpu = thread_cpu();
    Ok(r)
}

// ------------------------------------------------------------------ main --

fn main() -> ExitCode {
    let cfg = match parse_args() {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("reuseport: {msg}\n\n{USAGE}");
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

/// `n` split into `parts` shares that differ by at most one.
fn share(n: u64, parts: usize, i: usize) -> u64 {
    n / parts as u64 + u64::from((i as u64) < n % parts as u64)
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

fn seconds(d: Option<Duration>) -> String {
    d.map_or_else(|| "?".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn run(cfg: Config) -> Result<(), String> {
    // Server 0 picks the port; the others join it.
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut servers = Vec::with_capacity(cfg.threads);
    let mut remotes = Vec::with_capacity(cfg.threads);
    let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    for index in 0..cfg.threads {
        let ready = ready_tx.clone();
        let spawned = thread::Builder::new()
            .name(format!("server-{index}"))
            .spawn(move || serve(index, addr, cfg.work, ready))
            .map_err(|e| format!("spawning server thread {index}: {e}"))?;
        servers.push(spawned);
        let (remote, bound) = ready_rx.recv().map_err(|_| format!("server thread {index} ended"))??;
        remotes.push(remote);
        addr = bound;
    }
    drop(ready_tx);

    println!(
        "reuseport: {} on {addr} (SO_REUSEPORT), {} with {}, {} requests, work {} rounds",
        plural(cfg.threads, "server thread"),
        plural(cfg.client_threads, "client thread"),
        plural(cfg.sockets, "socket"),
        cfg.requests,
        cfg.work
    );

    let answers: Arc<Vec<u64>> = Arc::new((0..KEYS).map(|k| answer(k, cfg.work)).collect());
    let mut clients = Vec::with_capacity(cfg.client_threads);
    for index in 0..cfg.client_threads {
        let sockets = share(cfg.sockets as u64, cfg.client_threads, index) as usize;
        let quota = share(cfg.requests, cfg.client_threads, index);
        let answers = answers.clone();
        let spawned = thread::Builder::new()
            .name(format!("client-{index}"))
            .spawn(move || run_client(index, cfg, addr, sockets, quota, answers))
            .map_err(|e| format!("spawning client thread {index}: {e}"))?;
        clients.push(spawned);
    }
    let reports: Vec<Result<ClientReport, String>> =
        clients.into_iter().map(|c| c.join().unwrap_or_else(|_| Err("a client thread panicked".into()))).collect();

    // The clients are done: stop the server loops.
    for r in &remotes {
        let _ = r.stop();
    }
    let served: Vec<ServerReport> = servers.into_iter().map(|s| s.join().unwrap_or_default()).collect();

    let reports = reports.into_iter().collect::<Result<Vec<_>, _>>()?;
    if let Some(msg) = reports.iter().find_map(|r| r.failure.clone()) {
        return Err(msg);
    }
    let verified: u64 = reports.iter().map(|r| r.verified).sum();
    if verified != cfg.requests {
        return Err(format!("{verified} of {} replies verified", cfg.requests));
    }
    let first = reports.iter().filter_map(|r| r.first_send).min();
    let last = reports.iter().filter_map(|r| r.last_reply).max();
    let secs = match (first, last) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    };

    for (index, s) in served.iter().enumerate() {
        let seen: u64 = reports.iter().map(|r| r.per_server[index]).sum();
        println!(
            "server thread {index}: {:>8} requests answered ({seen} verified by the clients, {} errors), cpu {}, \
             {:.1} requests per epoll_wait, blocked {:.2} s",
            s.answered,
            s.errors,
            seconds(s.cpu),
            s.received as f64 / s.waits.max(1) as f64,
            s.waiting.as_secs_f64()
        );
    }
    for (index, r) in reports.iter().enumerate() {
        println!("client thread {index}: {:>8} replies verified, cpu {}", r.verified, seconds(r.cpu));
    }
    let sum = |f: fn(&ClientReport) -> u64| reports.iter().map(f).sum::<u64>();
    println!(
        "verified:      {verified} replies (each request answered once, answer and key checked)\n\
         retransmitted: {} (late duplicates {}, send errors {})\n\
         elapsed:       {secs:.3} s\n\
         rate:          {:.0} requests/s",
        sum(|r| r.retransmissions),
        sum(|r| r.late_duplicates),
        sum(|r| r.send_errors),
        verified as f64 / secs,
    );
    // Every reply answers a datagram a client sent: more would mean a
    // request was received twice.
    let answered: u64 = served.iter().map(|s| s.answered).sum();
    let sent = verified + sum(|r| r.retransmissions);
    if answered > sent {
        return Err(format!("the servers answered {answered} requests, more than the {sent} sent"));
    }
    if let Some(idle) = (0..cfg.threads).find(|&i| reports.iter().all(|r| r.per_server[i] == 0)) {
        return Err(format!(
            "server thread {idle} answered no request: the kernel picks a thread by the hash of the sender's \
             address and port, and {} client sockets were too few to reach every one",
            cfg.sockets
        ));
    }
    Ok(())
}
