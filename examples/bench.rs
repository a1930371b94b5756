//! The comparison program: runs the workloads W1–W6 of BENCHMARKS.md exactly
//! as the peers in `../shared/peers/` do, verifies each result and prints one
//! line per run:
//!
//!     workload=<name> impl=ioctx ops=<N> secs=<float> ops_per_sec=<float>
//!
//! Usage: `bench <post_chain|post_burst|udp_pingpong|udp_blast|udp_server|timers|sim_pingpong> [variant]`.
//! `sim_pingpong` is W3 on a simulated context with zero latency (no peer has one).
//! The variant `gso` of `udp_blast` and `udp_server` turns the socket's GSO
//! option on and prints `impl=ioctx_gso`; the variant `batch` turns send
//! coalescing on (`set_send_coalescing`) and prints `impl=ioctx_batch`. The
//! variant `meta` of `udp_pingpong` receives every datagram with its metadata
//! (pktinfo, ECN, TTL and timestamp switches on) and sends each ECN-marked,
//! and prints `impl=ioctx_meta`; that of `udp_server` receives the requests
//! with pktinfo (batched `recvmmsg` with control messages) and answers each
//! from the address it reached (`async_send_msg` with `from_ip`). On a
//! failed verification it prints
//! `VERIFY FAILED: ...` to stderr and exits 1. Beside the peers:
//! `IOCTX_BENCH=target/release/examples/bench bash ../shared/peers/run.sh`.

use ioctx::net::{Ecn, SendMeta, UdpSocket};
use ioctx::{Error, Executor, IoContext, SimConfig, SteadyTimer};
use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

const W1_N: u64 = 10_000_000;
const W2_N: u64 = 10_000_000;
const W3_N: u64 = 200_000;
const SIM_N: u64 = 1_000_000;
const W4_N: u64 = 2_000_000;
const W4_INFLIGHT: u64 = 16;
const W5_N: u64 = 1_000_000;
const W5_SPAN_US: u64 = 200_000;
const W5_SEED: u64 = 0x5EED_5EED_5EED_5EED;
const W5_EXPECTED_SUM_US: u64 = 99_965_032_853;
const MSG_LEN: usize = 64;
const W6_N: u64 = 1_000_000;
const W6_WINDOW: u64 = 32;
const W6_STOP: u64 = u64::MAX;

fn report(workload: &str, imp: &str, ops: u64, secs: f64) {
    println!("workload={workload} impl={imp} ops={ops} secs={secs:.6} ops_per_sec={:.1}", ops as f64 / secs);
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("VERIFY FAILED: {msg}");
    std::process::exit(1);
}

fn local() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

// ------------------------------------------------------------------ W1
// The handler captures two pointers, the loop's executor and the counter,
// as the peers' handlers do (no reference counting per handler).
fn chain(ex: &'static Executor, count: &'static Cell<u64>) {
    let c = count.get() + 1;
    count.set(c);
    if c < W1_N {
        ex.post(move || chain(ex, count));
    }
}

fn post_chain() {
    let ctx = IoContext::new().unwrap();
    let count: &'static Cell<u64> = Box::leak(Box::new(Cell::new(0)));
    let ex: &'static Executor = Box::leak(Box::new(ctx.executor()));
    let t0 = Instant::now();
    ctx.post(move || chain(ex, count));
    ctx.run();
    let secs = t0.elapsed().as_secs_f64();
    if count.get() != W1_N {
        fail(format!("post_chain: counter {} != {W1_N}", count.get()));
    }
    report("post_chain", "ioctx", W1_N, secs);
}

// ------------------------------------------------------------------ W2
fn post_burst() {
    let ctx = IoContext::new().unwrap();
    let count: &'static Cell<u64> = Box::leak(Box::new(Cell::new(0)));
    let t0 = Instant::now();
    let ex = ctx.executor();
    ctx.post(move || {
        for _ in 0..W2_N {
            ex.post(move || count.set(count.get() + 1));
        }
    });
    ctx.run();
    let secs = t0.elapsed().as_secs_f64();
    if count.get() != W2_N {
        fail(format!("post_burst: counter {} != {W2_N}", count.get()));
    }
    report("post_burst", "ioctx", W2_N, secs);
}

// ------------------------------------------------------------------ W3
// Each side keeps one receive buffer that travels through its handlers, and
// handlers capture one pointer, so that steady state allocates only what the
// library itself needs.
struct Ping {
    a: UdpSocket,
    b: UdpSocket,
    /// Round trips to make.
    rounds: u64,
    /// Round trips completed by A.
    done: Cell<u64>,
    a_buf: Cell<Vec<u8>>,
    b_buf: Cell<Vec<u8>>,
}

/// A receive on `s`, with metadata in the `meta` variant (`META`: chosen at
/// compile time, so that W3's own code is what it was); `then(err, n, buf)`.
#[inline(always)]
fn receive<const META: bool>(s: &UdpSocket, buf: Vec<u8>, then: impl FnOnce(Error, usize, Vec<u8>) + 'static) {
    if META {
        s.async_receive_msg(buf, move |e, meta, buf| {
            if e.is_ok() && (meta.ecn != Some(Ecn::Ect0) || meta.ttl.is_none() || meta.timestamp.is_none()) {
                fail(format!("udp_pingpong meta: metadata missing: {meta:?}"));
            }
            then(e, meta.len, buf)
        });
    } else {
        s.async_receive(buf, then);
    }
}

/// A send of `msg` on `s` to its peer, ECN-marked in the `meta` variant.
#[inline(always)]
fn send<const META: bool>(s: &UdpSocket, msg: [u8; MSG_LEN], then: impl FnOnce(Error, usize) + 'static) {
    if META {
        s.async_send_msg(msg, SendMeta::new().ecn(Ecn::Ect0), then);
    } else {
        s.async_send(msg, then);
    }
}

fn a_send<const META: bool>(p: Rc<Ping>) {
    let i = p.done.get();
    let mut msg = [0u8; MSG_LEN];
    msg[..8].copy_from_slice(&i.to_le_bytes());
    let a = p.a.clone();
    send::<META>(&a, msg, move |e, n| {
        if e.is_err() || n != MSG_LEN {
            fail(format!("udp_pingpong: A send {e:?} {n}"));
        }
        let a = p.a.clone();
        receive::<META>(&a, p.a_buf.take(), move |e, n, buf| {
            let i = p.done.get();
            if e.is_err() || n != MSG_LEN || buf[..8] != i.to_le_bytes() {
                fail(format!("udp_pingpong: A receive {e:?} {n} for round trip {i}"));
            }
            p.a_buf.set(buf);
            p.done.set(i + 1);
            if i + 1 < p.rounds {
                a_send::<META>(p);
            } else {
                p.b.close();
            }
        });
    });
}

fn b_receive<const META: bool>(p: Rc<Ping>) {
    let b = p.b.clone();
    receive::<META>(&b, p.b_buf.take(), move |e, n, buf| {
        if e == Error::OPERATION_ABORTED {
            return;
        }
        if e.is_err() || n != MSG_LEN {
            fail(format!("udp_pingpong: B receive {e:?} {n}"));
        }
        let mut echo = [0u8; MSG_LEN];
        echo.copy_from_slice(&buf[..MSG_LEN]);
        p.b_buf.set(buf);
        let b = p.b.clone();
        send::<META>(&b, echo, move |e, n| {
            if e.is_err() || n != MSG_LEN {
                fail(format!("udp_pingpong: B send {e:?} {n}"));
            }
            b_receive::<META>(p);
        });
    });
}

fn udp_pingpong(variant: Option<&str>) {
    match variant {
        None => pingpong::<false>(&IoContext::new().unwrap(), "udp_pingpong", W3_N),
        Some("meta") => pingpong::<true>(&IoContext::new().unwrap(), "udp_pingpong", W3_N),
        Some(v) => fail(format!("udp_pingpong: unknown variant {v}")),
    }
}

/// W3 on a simulated context with zero latency: what a simulated round trip
/// costs in wall time (DESIGN §1.7).
fn sim_pingpong() {
    let config = SimConfig::new(1).latency(Duration::ZERO, Duration::ZERO);
    let ctx = IoContext::simulated_with(config);
    pingpong::<false>(&ctx, "sim_pingpong", SIM_N);
    let sim = ctx.sim().unwrap();
    if sim.now() != Duration::ZERO {
        fail(format!("sim_pingpong: {:?} of virtual time passed with zero latency", sim.now()));
    }
}

fn pingpong<const META: bool>(ctx: &IoContext, name: &str, rounds: u64) {
    let a = UdpSocket::bind(ctx, local()).unwrap();
    let b = UdpSocket::bind(ctx, local()).unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    b.connect(a.local_addr().unwrap()).unwrap();
    if META {
        for s in [&a, &b] {
            s.set_recv_pktinfo(true).unwrap();
            s.set_recv_ecn(true).unwrap();
            s.set_recv_ttl(true).unwrap();
            s.set_recv_timestamps(true).unwrap();
        }
    }
    let p = Rc::new(Ping {
        a,
        b,
        rounds,
        done: Cell::new(0),
        a_buf: Cell::new(vec![0u8; 2 * MSG_LEN]),
        b_buf: Cell::new(vec![0u8; 2 * MSG_LEN]),
    });
    let t0 = Instant::now();
    b_receive::<META>(p.clone());
    a_send::<META>(p.clone());
    ctx.run();
    let secs = t0.elapsed().as_secs_f64();
    if p.done.get() != rounds {
        fail(format!("{name}: {} round trips", p.done.get()));
    }
    report(name, if META { "ioctx_meta" } else { "ioctx" }, rounds, secs);
}

// ------------------------------------------------------------------ W4
static PAYLOAD: [u8; MSG_LEN] = [0u8; MSG_LEN];

struct Blast {
    sock: UdpSocket,
    issued: Cell<u64>,
    completed: Cell<u64>,
}

fn blast_one(s: Rc<Blast>) {
    s.issued.set(s.issued.get() + 1);
    let sock = s.sock.clone();
    sock.async_send(&PAYLOAD[..], move |e, n| {
        if e.is_err() || n != MSG_LEN {
            fail(format!("udp_blast: send completed with {e:?} {n}"));
        }
        s.completed.set(s.completed.get() + 1);
        if s.issued.get() < W4_N {
            blast_one(s);
        }
    });
}

fn udp_blast(variant: Option<&str>) {
    let (imp, gso, batch, meta) = match variant {
        None => ("ioctx", false, false, false),
        Some("gso") => ("ioctx_gso", true, false, false),
        Some("batch") => ("ioctx_batch", false, true, false),
        Some("meta") => ("ioctx_meta", false, false, true),
        Some(v) => fail(format!("udp_blast: unknown variant {v}")),
    };
    let ctx = IoContext::new().unwrap();
    let sink = std::net::UdpSocket::bind(local()).unwrap(); // never read
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    sock.connect(sink.local_addr().unwrap()).unwrap();
    sock.set_gso(gso).unwrap();
    sock.set_send_coalescing(batch).unwrap();
    sock.set_recv_pktinfo(meta).unwrap();
    let s = Rc::new(Blast { sock, issued: Cell::new(0), completed: Cell::new(0) });
    let t0 = Instant::now();
    for _ in 0..W4_INFLIGHT {
        blast_one(s.clone());
    }
    ctx.run();
    let secs = t0.elapsed().as_secs_f64();
    if s.completed.get() != W4_N || s.issued.get() != W4_N {
        fail(format!("udp_blast: {} issued, {} completed", s.issued.get(), s.completed.get()));
    }
    if gso && !s.sock.gso() {
        eprintln!("udp_blast: the kernel refused UDP_SEGMENT; sent one by one");
    }
    report("udp_blast", imp, W4_N, secs);
    drop(sink);
}

// ------------------------------------------------------------------ W5
fn splitmix64(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn w5_deadlines() -> (Vec<u64>, u64) {
    let mut s = W5_SEED;
    let (mut sum, mut max_live) = (0u64, 0u64);
    let mut d = Vec::with_capacity(W5_N as usize);
    for i in 0..W5_N {
        let v = splitmix64(&mut s) % W5_SPAN_US;
        sum += v;
        if i & 1 == 0 {
            max_live = max_live.max(v);
        }
        d.push(v);
    }
    if sum != W5_EXPECTED_SUM_US {
        fail(format!("timers: deadline generator mismatch: sum={sum}"));
    }
    (d, max_live)
}

struct TimerState {
    fired: Cell<u64>,
    aborted: Cell<u64>,
    bad: Cell<u64>,
}

fn timers() {
    let (d, max_live) = w5_deadlines();
    let ctx = IoContext::new().unwrap();
    let st: &'static TimerState =
        Box::leak(Box::new(TimerState { fired: Cell::new(0), aborted: Cell::new(0), bad: Cell::new(0) }));
    let mut timers = Vec::with_capacity(W5_N as usize);
    let t0 = Instant::now();
    for (i, off) in d.iter().enumerate() {
        let t = SteadyTimer::new(&ctx);
        t.expires_at(t0 + Duration::from_micros(*off));
        t.async_wait(move |e| match e {
            Error::NONE if i & 1 == 0 => st.fired.set(st.fired.get() + 1),
            Error::OPERATION_ABORTED if i & 1 == 1 => st.aborted.set(st.aborted.get() + 1),
            _ => st.bad.set(st.bad.get() + 1),
        });
        timers.push(t);
    }
    let t_sched = t0.elapsed();
    for t in timers.iter().skip(1).step_by(2) {
        t.cancel();
    }
    let t_cancel = t0.elapsed();
    ctx.run();
    if std::env::var_os("W5_PHASES").is_some() {
        eprintln!("scheduled at {t_sched:?}, cancelled at {t_cancel:?}, ran until {:?}", t0.elapsed());
    }
    let secs = t0.elapsed().as_secs_f64();
    if st.fired.get() != W5_N / 2 || st.aborted.get() != W5_N / 2 || st.bad.get() != 0 {
        fail(format!("timers: fired {} aborted {} bad {}", st.fired.get(), st.aborted.get(), st.bad.get()));
    }
    if secs * 1e6 + 1000.0 < max_live as f64 {
        fail(format!("timers: finished after {secs:.6} s, before the last live deadline {max_live} us"));
    }
    report("timers", "ioctx", W5_N, secs);
    drop(timers);
}

// ------------------------------------------------------------------ W6
// The client is the peers' `w6_client` (rust/src/lib.rs, common/w6_client.h)
// line for line, so that every implementation is timed by the same code: a
// thread with a blocking socket connected to the server, W6_WINDOW requests
// outstanding, every reply checked against the outstanding set, the stop
// datagram at the end. Join it for the seconds it measured.
fn w6_client(server: SocketAddr) -> std::thread::JoinHandle<f64> {
    std::thread::spawn(move || {
        let s = std::net::UdpSocket::bind(local()).unwrap_or_else(|e| fail(format!("udp_server client: bind: {e}")));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.connect(server).unwrap();
        let mut outstanding = vec![false; W6_N as usize];
        let mut buf = [0u8; MSG_LEN];
        let (mut next, mut replies) = (0u64, 0u64);
        let t0 = Instant::now();
        let send = |s: &std::net::UdpSocket, i: u64, buf: &mut [u8; MSG_LEN]| {
            buf[..8].copy_from_slice(&i.to_le_bytes());
            if s.send(buf).unwrap_or_else(|e| fail(format!("udp_server client: send: {e}"))) != MSG_LEN {
                fail("udp_server client: short send");
            }
        };
        while next < W6_WINDOW.min(W6_N) {
            send(&s, next, &mut buf);
            outstanding[next as usize] = true;
            next += 1;
        }
        while replies < W6_N {
            let n = s.recv(&mut buf).unwrap_or_else(|e| fail(format!("udp_server client: reply after {replies}: {e}")));
            if n != MSG_LEN {
                fail(format!("udp_server client: reply of {n} bytes"));
            }
            let i = u64::from_le_bytes(buf[..8].try_into().unwrap());
            if i >= W6_N || !outstanding[i as usize] {
                fail(format!("udp_server client: unexpected reply {i}"));
            }
            outstanding[i as usize] = false;
            replies += 1;
            if next < W6_N {
                send(&s, next, &mut buf);
                outstanding[next as usize] = true;
                next += 1;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let mut stop = [0u8; MSG_LEN];
        stop[..8].copy_from_slice(&W6_STOP.to_le_bytes());
        let _ = s.send(&stop);
        secs
    })
}

/// Receives kept outstanding on the server socket: one wakeup then fills
/// them all from one `recvmmsg`. `W6_RECEIVES=<k>` overrides it (to compare).
const W6_RECEIVES: usize = 16;
/// Room offered to each receive: any datagram up to this size is echoed whole.
const W6_BUF: usize = 2048;

/// The server: one unconnected socket, and the buffers not lent to the loop.
struct Echo {
    sock: UdpSocket,
    pool: RefCell<Vec<Vec<u8>>>,
    echoed: Cell<u64>,
    stopped: Cell<bool>,
    /// `udp_server meta`: receives with metadata (pktinfo on), each answer
    /// sent from the address its request reached, as a DNS server bound to
    /// every address does.
    meta: bool,
}

/// A received datagram on its way back: the receive's own buffer (no copy),
/// which returns to the pool when the loop drops it after the send, so
/// steady state allocates no buffers.
struct Reply {
    buf: Vec<u8>,
    len: usize,
    srv: &'static Echo,
}

impl ioctx::ConstBuffer for Reply {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl ioctx::ConstBufferSequence for Reply {
    fn buffer_count(&self) -> usize {
        1
    }
    fn gather<'a>(&'a self, out: &mut dyn FnMut(&'a [u8])) {
        out(&self.buf[..self.len])
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.srv.pool.borrow_mut().push(std::mem::take(&mut self.buf));
    }
}

// The handlers capture the leaked server by reference (as in W1), so no
// reference count moves per request.
fn echo_receive(srv: &'static Echo, buf: Vec<u8>) {
    if srv.meta {
        srv.sock.async_receive_msg(buf, move |e, meta, buf| {
            if e.is_ok() && meta.local.is_none() {
                fail("udp_server meta: no destination address");
            }
            on_request(srv, e, meta.len, buf, meta.from, meta.local)
        });
    } else {
        srv.sock.async_receive_from(buf, move |e, n, buf, from| on_request(srv, e, n, buf, from, None));
    }
}

fn on_request(srv: &'static Echo, e: Error, n: usize, buf: Vec<u8>, from: SocketAddr, local: Option<IpAddr>) {
    if e == Error::OPERATION_ABORTED && srv.stopped.get() {
        return; // the other receives, ended by the close below
    }
    if e.is_err() {
        fail(format!("udp_server: receive_from: {e:?}"));
    }
    if n >= 8 && buf[..8] == W6_STOP.to_le_bytes() {
        // Pending receives end with OPERATION_ABORTED, and run() returns.
        srv.stopped.set(true);
        srv.sock.close();
        return;
    }
    // The echo first (it is tried at once, S1), then the slot re-armed with
    // a spare buffer rather than after the send's completion.
    let sent = move |e: Error, sent: usize| {
        if e.is_err() || sent != n {
            fail(format!("udp_server: send_to: {e:?} {sent} of {n}"));
        }
        srv.echoed.set(srv.echoed.get() + 1);
    };
    let reply = Reply { buf, len: n, srv };
    match local {
        Some(ip) => srv.sock.async_send_msg(reply, SendMeta::new().to(from).from_ip(ip), sent),
        None => srv.sock.async_send_to(reply, from, sent),
    };
    let spare = srv.pool.borrow_mut().pop().unwrap_or_else(|| vec![0u8; W6_BUF]);
    echo_receive(srv, spare);
}

fn udp_server(variant: Option<&str>) {
    let (imp, gso, batch, meta) = match variant {
        None => ("ioctx", false, false, false),
        Some("gso") => ("ioctx_gso", true, false, false),
        Some("batch") => ("ioctx_batch", false, true, false),
        Some("meta") => ("ioctx_meta", false, false, true),
        Some(v) => fail(format!("udp_server: unknown variant {v}")),
    };
    let k = match std::env::var("W6_RECEIVES") {
        Ok(v) => v.parse().ok().filter(|&k| k > 0).unwrap_or_else(|| fail(format!("W6_RECEIVES={v}"))),
        Err(_) => W6_RECEIVES,
    };
    let ctx = IoContext::new().unwrap();
    // W6_STATS=1 reports the time blocked, which needs the clock (off otherwise).
    ctx.set_wait_timing(std::env::var_os("W6_STATS").is_some());
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    sock.set_gso(gso).unwrap();
    sock.set_send_coalescing(batch).unwrap();
    sock.set_recv_pktinfo(meta).unwrap();
    // Spares for the sends in flight: at most one per outstanding request.
    let pool = (0..W6_WINDOW as usize).map(|_| vec![0u8; W6_BUF]).collect();
    let srv: &'static Echo = Box::leak(Box::new(Echo {
        sock,
        pool: RefCell::new(pool),
        echoed: Cell::new(0),
        stopped: Cell::new(false),
        meta,
    }));
    for _ in 0..k {
        echo_receive(srv, vec![0u8; W6_BUF]);
    }
    let client = w6_client(srv.sock.local_addr().unwrap());
    ctx.run();
    let secs = client.join().unwrap_or_else(|_| fail("udp_server: client panicked"));
    if !srv.stopped.get() || srv.echoed.get() != W6_N {
        fail(format!("udp_server: {} echoes sent, stopped: {}", srv.echoed.get(), srv.stopped.get()));
    }
    if gso && !srv.sock.gso() {
        eprintln!("udp_server: the kernel refused UDP_SEGMENT; sent one by one");
    }
    // W6_STATS=1: how well the receives were batched, to compare values of K.
    if std::env::var_os("W6_STATS").is_some() {
        let m = ctx.metrics();
        eprintln!(
            "k={k}: {:.2} datagrams per epoll_wait, {:.2} handlers per turn, blocked {:.3} s, spare buffers {}",
            m.datagrams_in as f64 / m.reactor_waits.max(1) as f64,
            m.handlers_run as f64 / m.loop_turns.max(1) as f64,
            m.time_waiting.as_secs_f64(),
            srv.pool.borrow().len()
        );
    }
    report("udp_server", imp, W6_N, secs);
}

fn main() {
    // The library logs through `log`: RUST_LOG=ioctx=debug shows its state
    // changes, ioctx=trace every operation. Unset, only warnings, so that
    // the program's own output stands alone. A record below the filter
    // costs one comparison, as it does with no logger, so timings keep.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let mut args = std::env::args().skip(1);
    let workload = args.next().unwrap_or_default();
    let variant = args.next();
    match workload.as_str() {
        "post_chain" => post_chain(),
        "post_burst" => post_burst(),
        "udp_pingpong" => udp_pingpong(variant.as_deref()),
        "udp_blast" => udp_blast(variant.as_deref()),
        "udp_server" => udp_server(variant.as_deref()),
        "timers" => timers(),
        "sim_pingpong" => sim_pingpong(),
        _ => {
            eprintln!(
                "usage: bench post_chain|post_burst|udp_pingpong|udp_blast|udp_server|timers|sim_pingpong [variant]"
            );
            std::process::exit(2);
        }
    }
}
