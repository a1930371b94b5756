//! The comparison program: runs the workloads W1–W5 of BENCHMARKS.md exactly
//! as the peers in `../shared/peers/` do, verifies each result and prints one
//! line per run:
//!
//!     workload=<name> impl=ioctx ops=<N> secs=<float> ops_per_sec=<float>
//!
//! Usage: `bench <post_chain|post_burst|udp_pingpong|udp_blast|timers> [variant]`.
//! On a failed verification it prints `VERIFY FAILED: ...` to stderr and
//! exits 1. Beside the peers:
//! `IOCTX_BENCH=target/release/examples/bench bash ../shared/peers/run.sh`.

use ioctx::net::UdpSocket;
use ioctx::{Error, Executor, IoContext, SteadyTimer};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

const W1_N: u64 = 10_000_000;
const W2_N: u64 = 10_000_000;
const W3_N: u64 = 200_000;
const W4_N: u64 = 2_000_000;
const W4_INFLIGHT: u64 = 16;
const W5_N: u64 = 1_000_000;
const W5_SPAN_US: u64 = 200_000;
const W5_SEED: u64 = 0x5EED_5EED_5EED_5EED;
const W5_EXPECTED_SUM_US: u64 = 99_965_032_853;
const MSG_LEN: usize = 64;

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
    /// Round trips completed by A.
    done: Cell<u64>,
    a_buf: Cell<Vec<u8>>,
    b_buf: Cell<Vec<u8>>,
}

fn a_send(p: Rc<Ping>) {
    let i = p.done.get();
    let mut msg = [0u8; MSG_LEN];
    msg[..8].copy_from_slice(&i.to_le_bytes());
    let a = p.a.clone();
    a.async_send(msg, move |e, n| {
        if e.is_err() || n != MSG_LEN {
            fail(format!("udp_pingpong: A send {e:?} {n}"));
        }
        let a = p.a.clone();
        a.async_receive(p.a_buf.take(), move |e, n, buf| {
            let i = p.done.get();
            if e.is_err() || n != MSG_LEN || buf[..8] != i.to_le_bytes() {
                fail(format!("udp_pingpong: A receive {e:?} {n} for round trip {i}"));
            }
            p.a_buf.set(buf);
            p.done.set(i + 1);
            if i + 1 < W3_N {
                a_send(p);
            } else {
                p.b.close();
            }
        });
    });
}

fn b_receive(p: Rc<Ping>) {
    let b = p.b.clone();
    b.async_receive(p.b_buf.take(), move |e, n, buf| {
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
        b.async_send(echo, move |e, n| {
            if e.is_err() || n != MSG_LEN {
                fail(format!("udp_pingpong: B send {e:?} {n}"));
            }
            b_receive(p);
        });
    });
}

fn udp_pingpong() {
    let ctx = IoContext::new().unwrap();
    let a = UdpSocket::bind(&ctx, local()).unwrap();
    let b = UdpSocket::bind(&ctx, local()).unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    b.connect(a.local_addr().unwrap()).unwrap();
    let p = Rc::new(Ping {
        a,
        b,
        done: Cell::new(0),
        a_buf: Cell::new(vec![0u8; 2 * MSG_LEN]),
        b_buf: Cell::new(vec![0u8; 2 * MSG_LEN]),
    });
    let t0 = Instant::now();
    b_receive(p.clone());
    a_send(p.clone());
    ctx.run();
    let secs = t0.elapsed().as_secs_f64();
    if p.done.get() != W3_N {
        fail(format!("udp_pingpong: {} round trips", p.done.get()));
    }
    report("udp_pingpong", "ioctx", W3_N, secs);
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
    let (imp, gso) = match variant {
        None => ("ioctx", false),
        Some("gso") => ("ioctx_gso", true),
        Some(v) => fail(format!("udp_blast: unknown variant {v}")),
    };
    let ctx = IoContext::new().unwrap();
    let sink = std::net::UdpSocket::bind(local()).unwrap(); // never read
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    sock.connect(sink.local_addr().unwrap()).unwrap();
    sock.set_gso(gso).unwrap();
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
        "udp_pingpong" => udp_pingpong(),
        "udp_blast" => udp_blast(variant.as_deref()),
        "timers" => timers(),
        _ => {
            eprintln!("usage: bench post_chain|post_burst|udp_pingpong|udp_blast|timers [variant]");
            std::process::exit(2);
        }
    }
}
