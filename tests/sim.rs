//! Simulated contexts (DESIGN §1.7): virtual time, the trace, determinism,
//! and what a simulated context refuses. UDP on the simulated network is in
//! `sim_udp.rs`.

use ioctx::{CancellationType, Error, IoContext, SimConfig, SteadyTimer, sim};
use std::cell::{Cell, RefCell};
use std::io::ErrorKind;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The panic message of `f`, which must panic.
fn panic_message(f: impl FnOnce()) -> String {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic");
    match err.downcast::<String>() {
        Ok(s) => *s,
        Err(e) => e.downcast_ref::<&str>().map(|s| s.to_string()).unwrap_or_default(),
    }
}

#[test]
fn an_hour_of_timers_passes_in_virtual_time_at_once() {
    let ctx = IoContext::simulated(1);
    let sim = ctx.sim().expect("simulated");
    let fired = Rc::new(RefCell::new(Vec::new()));
    let mut timers = Vec::new();
    for mins in [60u64, 1, 30] {
        let t = SteadyTimer::new(&ctx);
        t.expires_after(Duration::from_secs(mins * 60));
        let (f, s) = (fired.clone(), sim.clone());
        t.async_wait(move |e| {
            assert!(e.is_ok());
            f.borrow_mut().push((mins, s.now()));
        });
        timers.push(t);
    }
    let wall = Instant::now();
    assert_eq!(ctx.run(), 3);
    assert!(wall.elapsed() < Duration::from_secs(5), "no real waiting");
    let minutes = |m: u64| Duration::from_secs(m * 60);
    assert_eq!(*fired.borrow(), vec![(1, minutes(1)), (30, minutes(30)), (60, minutes(60))]);
    assert_eq!(sim.now(), minutes(60), "time stops at the last deadline");
}

#[test]
fn run_for_and_run_until_count_virtual_time_and_now_follows_it() {
    let ctx = IoContext::simulated(2);
    let _guard = ctx.work_guard();
    let t0 = ctx.now();
    assert_eq!(ctx.run_for(Duration::from_secs(90)), 0);
    assert_eq!(ctx.now() - t0, Duration::from_secs(90));
    assert_eq!(ctx.sim().unwrap().now(), Duration::from_secs(90));
    ctx.restart();
    ctx.run_until(t0 + Duration::from_secs(100));
    assert_eq!(ctx.now() - t0, Duration::from_secs(100));
    // A timer set from the virtual clock fires on it.
    let t = SteadyTimer::new(&ctx);
    t.expires_at(ctx.now() + Duration::from_millis(250));
    let at = Rc::new(Cell::new(None));
    let a = at.clone();
    let ex = ctx.executor();
    t.async_wait(move |_| a.set(Some(ex.now())));
    ctx.restart();
    ctx.run_for(Duration::from_secs(1));
    assert_eq!(at.get().map(|i| i - t0), Some(Duration::from_millis(100_250)));
    assert_eq!(ctx.next_timeout(), None, "nothing scheduled");
}

#[test]
fn cancel_after_fires_on_virtual_time() {
    let ctx = IoContext::simulated(3);
    let t = SteadyTimer::new(&ctx);
    t.expires_after(Duration::from_secs(10));
    let got = Rc::new(Cell::new(None));
    let (g, sim) = (got.clone(), ctx.sim().unwrap());
    t.async_wait(move |e| g.set(Some((e, sim.now())))).cancel_after(Duration::from_secs(2), CancellationType::ALL);
    ctx.run();
    assert_eq!(got.get(), Some((Error::OPERATION_ABORTED, Duration::from_secs(2))));
}

/// A scenario whose timings come from the seed: its trace depends on the
/// seed and on nothing else.
fn seeded_scenario(ctx: &IoContext) {
    let sim = ctx.sim().unwrap();
    for _ in 0..20 {
        let t = Rc::new(SteadyTimer::new(ctx));
        t.expires_after(Duration::from_micros(sim.random_u64() % 1_000_000));
        let (ex, keep) = (ctx.executor(), t.clone());
        t.async_wait(move |_| {
            ex.post(move || drop(keep));
        });
    }
}

fn trace_of(seed: u64) -> (u64, u64) {
    let ctx = IoContext::simulated(seed);
    seeded_scenario(&ctx);
    ctx.run();
    let sim = ctx.sim().unwrap();
    (sim.trace_hash(), sim.events())
}

/// A lossy, duplicating, reordering exchange of datagrams: its trace holds
/// every datagram's fate.
fn udp_trace_of(seed: u64) -> u64 {
    let net = SimConfig::new(seed)
        .latency(Duration::from_millis(1), Duration::from_millis(9))
        .loss(0.2)
        .duplicate(0.1)
        .reorder(0.2);
    let ctx = IoContext::simulated_with(net);
    let a = ioctx::net::UdpSocket::bind(&ctx, "10.0.0.1:1".parse().unwrap()).unwrap();
    let b = ioctx::net::UdpSocket::bind(&ctx, "10.0.0.2:2".parse().unwrap()).unwrap();
    for i in 0..50u8 {
        a.async_send_to(vec![i; i as usize], "10.0.0.2:2".parse().unwrap(), |_, _| {});
    }
    fn receive(b: ioctx::net::UdpSocket) {
        let again = b.clone();
        b.async_receive(vec![0u8; 64], move |e, _, _| {
            if e.is_ok() {
                receive(again);
            }
        });
    }
    receive(b.clone());
    ctx.run_for(Duration::from_secs(1));
    b.close();
    ctx.restart();
    ctx.run();
    ctx.sim().unwrap().trace_hash()
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    let a = trace_of(42);
    assert_eq!(a, trace_of(42));
    assert_eq!(a.1, 20 + 20 + 20, "20 jumps of time, 20 timer ends, 20 posts");
    let others: Vec<_> = (0..10).map(trace_of).collect();
    for (i, o) in others.iter().enumerate() {
        assert_ne!(o.0, a.0, "seed {i} gave seed 42's trace");
    }
}

/// The hash must not depend on the process (no randomly seeded hasher, no
/// address, no real time in it): this value was computed once. Changing
/// what the trace records changes it, legitimately; anything else that
/// changes it makes runs in different processes disagree.
#[test]
fn the_trace_hash_is_the_same_in_every_process() {
    let (timers, events) = trace_of(42);
    assert_eq!(events, 60);
    assert_eq!(timers, trace_of(42).0);
    let udp = udp_trace_of(42);
    assert_eq!(udp, udp_trace_of(42));
    assert_ne!(udp, udp_trace_of(43));
    let hash = timers ^ udp.rotate_left(1);
    let expected = std::env::var("IOCTX_EXPECTED_TRACE_42").ok();
    if let Some(e) = expected {
        assert_eq!(format!("{hash:016x}"), e);
    }
    // A second process, this test binary again, must agree.
    if std::env::var_os("IOCTX_SIM_CHILD").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "the_trace_hash_is_the_same_in_every_process", "--nocapture"])
            .env("IOCTX_SIM_CHILD", "1")
            .env("IOCTX_EXPECTED_TRACE_42", format!("{hash:016x}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the child process computed another hash: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"), "the child ran the test");
    }
}

#[test]
fn check_determinism_passes_deterministic_code() {
    sim::check_determinism(7, seeded_scenario);
}

#[test]
fn check_determinism_catches_code_that_reads_the_real_clock() {
    let msg = panic_message(|| {
        sim::check_determinism(7, |ctx| {
            let t = Rc::new(SteadyTimer::new(ctx));
            // The real clock, not the context's: its value differs from run to
            // run. (The wall clock: the second run is later than the first,
            // so its nanoseconds modulo a prime coincide about once in 10^9
            // runs; `Instant::now()` against the context's creation can come
            // out equal to the nanosecond.)
            let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            t.expires_after(Duration::from_nanos((wall.as_nanos() % 1_000_000_007) as u64));
            let keep = t.clone();
            t.async_wait(move |_| drop(keep));
        })
    });
    assert!(msg.contains("not deterministic with seed 7"), "{msg}");
    assert!(msg.contains("event #1 differs"), "the first event, the jump in time: {msg}");
}

#[test]
fn check_determinism_names_the_first_event_one_run_has_and_the_other_not() {
    let runs = Cell::new(0);
    let msg = panic_message(|| {
        sim::check_determinism(9, |ctx| {
            runs.set(runs.get() + 1);
            // Something outside the seed (here, how often the test ran) decides.
            for _ in 0..runs.get() {
                ctx.post(|| {});
            }
        })
    });
    assert!(msg.contains("event #2 differs"), "{msg}");
    assert!(msg.contains("first run: nothing (the run had ended)"), "{msg}");
    assert!(msg.contains("a handler was posted"), "{msg}");
}

#[test]
fn passing_the_time_limit_panics_naming_the_seed_and_the_last_event() {
    let msg = panic_message(|| {
        let ctx = IoContext::simulated_with(SimConfig::new(11).time_limit(Duration::from_secs(5)));
        fn rearm(t: Rc<SteadyTimer>) {
            t.expires_after(Duration::from_secs(1));
            let again = t.clone();
            t.async_wait(move |_| rearm(again));
        }
        rearm(Rc::new(SteadyTimer::new(&ctx)));
        ctx.run();
    });
    assert!(msg.contains("seed 11") && msg.contains("time limit of 5s"), "{msg}");
    assert!(msg.contains("last event: #"), "{msg}");
}

#[test]
fn waiting_for_ever_panics_instead_of_hanging() {
    let msg = panic_message(|| {
        let ctx = IoContext::simulated(12);
        let _guard = ctx.work_guard();
        ctx.run();
    });
    assert!(msg.contains("seed 12") && msg.contains("wait for ever"), "{msg}");
}

#[test]
fn what_needs_the_real_system_is_unsupported_and_creates_nothing() {
    let ctx = IoContext::simulated(13);
    let unsupported = |r: std::io::Result<()>| matches!(r, Err(e) if e.kind() == ErrorKind::Unsupported);
    let local = "127.0.0.1:0".parse().unwrap();
    // UDP and TCP are simulated (tests/sim_udp.rs, tests/sim_tcp.rs), but
    // a blocking connect could never finish on virtual time.
    assert!(unsupported(ioctx::net::TcpStream::connect(&ctx, local).map(drop)));
    let std_listener = std::net::TcpListener::bind(local).unwrap();
    assert!(unsupported(ioctx::net::TcpListener::from_std(&ctx, std_listener).map(drop)));
    // A real socket cannot join a simulated network.
    let std_sock = std::net::UdpSocket::bind(local).unwrap();
    assert!(unsupported(ioctx::net::UdpSocket::from_std(&ctx, std_sock).map(drop)));
    let path = std::env::temp_dir().join(format!("ioctx-sim-{}.sock", std::process::id()));
    assert!(unsupported(ioctx::net::UnixDatagram::bind(&ctx, &path).map(drop)));
    assert!(!path.exists(), "no socket file was made");
    assert!(unsupported(ioctx::net::UnixStream::pair(&ctx).map(drop)));
    assert!(unsupported(ioctx::SignalSet::new(&ctx).map(drop)));
    assert!(unsupported(ctx.remote().map(drop)));
    // The context is unharmed.
    ctx.post(|| {});
    assert_eq!(ctx.run(), 1);
}

#[test]
fn a_real_context_has_no_simulation_and_the_real_clock() {
    let ctx = IoContext::new().unwrap();
    assert!(ctx.sim().is_none());
    let before = Instant::now();
    let now = ctx.now();
    assert!(now >= before && now <= Instant::now());
}

#[test]
fn the_sim_handle_outlives_the_context_and_draws_from_the_seed() {
    let draws = |seed| {
        let ctx = IoContext::simulated(seed);
        let sim = ctx.sim().unwrap();
        drop(ctx);
        (0..4).map(|_| sim.random_u64()).collect::<Vec<_>>()
    };
    assert_eq!(draws(5), draws(5));
    assert_ne!(draws(5), draws(6));
    let ctx = IoContext::simulated(5);
    let ex = ctx.executor();
    drop(ctx);
    assert!(ex.sim().is_none(), "gone with its context");
}

#[test]
fn handlers_keep_fifo_order_and_equal_deadlines_their_order_in_virtual_time() {
    let ctx = IoContext::simulated(14);
    let order = Rc::new(RefCell::new(Vec::new()));
    let mut timers = Vec::new();
    for i in 0..5 {
        let t = SteadyTimer::new(&ctx);
        t.expires_after(Duration::from_millis(10));
        let o = order.clone();
        t.async_wait(move |_| o.borrow_mut().push(i));
        timers.push(t);
    }
    for i in 5..8 {
        let o = order.clone();
        ctx.post(move || o.borrow_mut().push(i));
    }
    ctx.run();
    assert_eq!(*order.borrow(), vec![5, 6, 7, 0, 1, 2, 3, 4]);
}

/// `IOCTX_SIM_SEED` replaces the seed, and a simulated context dropped
/// during a panic names its seed (in a child process: the variable is
/// process-wide).
#[test]
fn ioctx_sim_seed_replays_a_seed_and_a_failing_test_prints_its_seed() {
    if std::env::var_os("IOCTX_SIM_REPLAY_CHILD").is_some() {
        let ctx = IoContext::simulated(5);
        println!("seed in the child: {}", ctx.sim().unwrap().seed());
        panic!("a deliberate failure");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "ioctx_sim_seed_replays_a_seed_and_a_failing_test_prints_its_seed", "--nocapture"])
        .env("IOCTX_SIM_REPLAY_CHILD", "1")
        .env("IOCTX_SIM_SEED", "77")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the child's test fails");
    assert!(stdout.contains("seed in the child: 77"), "{stdout}");
    assert!(stderr.contains("replay it with IOCTX_SIM_SEED=77"), "{stderr}");
}

#[test]
fn a_probability_outside_zero_to_one_panics_with_its_value() {
    let msg = panic_message(|| {
        let _ = SimConfig::new(1).loss(1.5);
    });
    assert!(msg.contains("loss") && msg.contains("1.5"), "{msg}");
    let msg = panic_message(|| {
        let _ = ioctx::sim::Link::new().duplicate(f64::NAN);
    });
    assert!(msg.contains("duplicate") && msg.contains("NaN"), "{msg}");
    let msg = panic_message(|| {
        let _ = SimConfig::new(1).latency(Duration::from_secs(2), Duration::from_secs(1));
    });
    assert!(msg.contains("latency"), "{msg}");
}
