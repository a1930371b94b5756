//! `IoContext` and `Executor` (DESIGN.md §1.1, §1.2 and §2): the run loop,
//! work counting, stop/restart, post/dispatch/defer, panics and teardown.

use ioctx::net::UdpSocket;
use ioctx::{Error, Executor, IoContext, SteadyTimer, WorkGuard};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::time::{Duration, Instant};

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Runs `body` on a real context and on a simulated one (virtual time):
/// the loop's rules must hold on both backends. Times are read from the
/// context's clock (`ctx.now()`), the real one on a real context.
fn on_both_backends(body: impl Fn(&IoContext)) {
    body(&IoContext::new().unwrap());
    body(&IoContext::simulated(7));
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `run()` with a safety net: if a rule breaks and work is left, the test
/// fails after 2 s instead of hanging. Asserts that it returned for lack of
/// work, as `run()` does.
fn run_bounded(ctx: &IoContext) -> usize {
    let n = ctx.run_for(Duration::from_secs(2));
    assert!(ctx.stopped(), "run() would still be waiting: work is left");
    n
}

/// Records which handlers ran, in order.
#[derive(Clone, Default)]
struct Log(Rc<RefCell<Vec<u32>>>);

impl Log {
    fn push(&self, v: u32) -> impl FnOnce() + 'static {
        let l = self.0.clone();
        move || l.borrow_mut().push(v)
    }
    fn get(&self) -> Vec<u32> {
        self.0.borrow().clone()
    }
}

/// Counts its drops.
struct DropCount(Rc<Cell<u32>>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

fn bump(c: &Rc<Cell<u32>>) {
    c.set(c.get() + 1);
}

// ---------------------------------------------------------------- run / stopped

#[test]
fn run_without_work_returns_zero_and_leaves_the_context_stopped() {
    on_both_backends(|ctx| {
        assert!(!ctx.stopped());
        assert_eq!(ctx.run(), 0);
        assert!(ctx.stopped());

        // A stopped context runs nothing until restart().
        let log = Log::default();
        ctx.post(log.push(1));
        assert_eq!(ctx.run(), 0);
        assert_eq!(log.get(), Vec::<u32>::new());

        ctx.restart();
        assert!(!ctx.stopped());
        assert_eq!(ctx.run(), 1);
        assert_eq!(log.get(), vec![1]);
        assert!(ctx.stopped(), "running out of work stops the context");
    });
}

#[test]
fn an_open_socket_with_nothing_pending_is_not_work() {
    let ctx = IoContext::new().unwrap();
    let _sock = UdpSocket::bind(&ctx, local()).unwrap();
    let t0 = Instant::now();
    assert_eq!(ctx.run_for(Duration::from_secs(2)), 0);
    assert!(t0.elapsed() < ms(500), "run waited on an idle socket");
    assert!(ctx.stopped());
}

// ---------------------------------------------------------------- post / defer / dispatch

/// Checks that `start` (post or defer) never runs the closure inside the call,
/// both outside `run()` and from inside a handler.
fn check_never_inline(start: fn(&Executor, Box<dyn FnOnce()>)) {
    let ctx = IoContext::new().unwrap();

    // Outside run(): the closure sees a flag set after the call returned.
    let returned = Rc::new(Cell::new(false));
    let seen_outside = Rc::new(Cell::new(None));
    {
        let (r, s) = (returned.clone(), seen_outside.clone());
        start(&ctx, Box::new(move || s.set(Some(r.get()))));
    }
    assert_eq!(seen_outside.get(), None, "ran before run()");
    returned.set(true);

    // Inside a handler: not run before the handler returns.
    let seen_inside = Rc::new(Cell::new(None));
    let ran_before_return = Rc::new(Cell::new(None));
    {
        let ex = ctx.executor();
        let (s, b) = (seen_inside.clone(), ran_before_return.clone());
        ctx.post(move || {
            let returned = Rc::new(Cell::new(false));
            let r = returned.clone();
            let s2 = s.clone();
            start(&ex, Box::new(move || s2.set(Some(r.get()))));
            b.set(Some(s.get().is_some()));
            returned.set(true);
        });
    }
    assert_eq!(seen_outside.get(), None);
    assert_eq!(ctx.run(), 3);
    assert_eq!(seen_outside.get(), Some(true));
    assert_eq!(ran_before_return.get(), Some(false), "ran inside the handler that queued it");
    assert_eq!(seen_inside.get(), Some(true));
}

#[test]
fn post_never_runs_inline() {
    check_never_inline(|ex, f| ex.post(f));
}

#[test]
fn defer_never_runs_inline() {
    check_never_inline(|ex, f| ex.defer(f));
}

#[test]
fn dispatch_outside_run_is_posted_not_run() {
    let ctx = IoContext::new().unwrap();
    let log = Log::default();
    ctx.dispatch(log.push(1));
    ctx.executor().dispatch(log.push(2));
    assert_eq!(log.get(), Vec::<u32>::new());
    assert_eq!(ctx.run(), 2);
    assert_eq!(log.get(), vec![1, 2]);
}

#[test]
fn dispatch_inside_a_handler_of_this_context_runs_inline() {
    on_both_backends(|ctx| {
        let log = Log::default();
        let inline = Rc::new(Cell::new(false));
        {
            let (ex, log2, inline) = (ctx.executor(), log.clone(), inline.clone());
            ctx.post(move || {
                ex.post(log2.push(3));
                ex.dispatch(log2.push(2));
                // Inline: it ran before dispatch returned, ahead of the posted one.
                inline.set(log2.get() == vec![2]);
                log2.0.borrow_mut().push(1);
            });
        }
        ctx.run();
        assert!(inline.get());
        assert_eq!(log.get(), vec![2, 1, 3]);
    });
}

#[test]
fn dispatch_from_a_handler_of_another_context_is_posted() {
    // Only this context's own run() makes dispatch inline.
    let ctx = IoContext::new().unwrap();
    let other = IoContext::new().unwrap();
    let log = Log::default();
    let before_return = Rc::new(Cell::new(None));
    {
        let (ex, log, b) = (ctx.executor(), log.clone(), before_return.clone());
        other.post(move || {
            ex.dispatch(log.push(1));
            b.set(Some(log.get().len()));
        });
    }
    assert_eq!(other.run(), 1);
    assert_eq!(before_return.get(), Some(0), "dispatch ran inline under another context's run()");
    assert_eq!(ctx.run(), 1);
    assert_eq!(log.get(), vec![1]);
}

// ---------------------------------------------------------------- ordering

#[test]
fn handlers_run_in_fifo_order() {
    on_both_backends(|ctx| {
        let log = Log::default();
        for i in 0..1000 {
            ctx.post(log.push(i));
        }
        assert_eq!(ctx.run(), 1000);
        assert_eq!(log.get(), (0..1000).collect::<Vec<_>>());
    });
}

#[test]
fn handlers_posted_from_handlers_run_after_those_already_queued() {
    on_both_backends(|ctx| {
        let log = Log::default();
        {
            let (ex, l) = (ctx.executor(), log.clone());
            ctx.post(move || {
                l.0.borrow_mut().push(0);
                ex.post(l.push(10));
                ex.defer(l.push(11));
            });
        }
        ctx.post(log.push(1));
        ctx.post(log.push(2));
        assert_eq!(ctx.run(), 5);
        assert_eq!(log.get(), vec![0, 1, 2, 10, 11]);
    });
}

// ---------------------------------------------------------------- stop / restart

#[test]
fn stop_from_a_handler_returns_run_and_keeps_the_rest_queued() {
    let ctx = Rc::new(IoContext::new().unwrap());
    let log = Log::default();
    let stopped_inside = Rc::new(Cell::new(false));
    ctx.post(log.push(0));
    {
        let (c, l, s) = (ctx.clone(), log.clone(), stopped_inside.clone());
        ctx.post(move || {
            l.0.borrow_mut().push(1);
            c.stop();
            s.set(c.stopped());
        });
    }
    ctx.post(log.push(2));
    ctx.post(log.push(3));

    assert_eq!(ctx.run(), 2);
    assert!(stopped_inside.get());
    assert!(ctx.stopped());
    assert_eq!(log.get(), vec![0, 1]);

    // Still stopped: nothing runs without restart().
    assert_eq!(ctx.run(), 0);
    assert_eq!(ctx.poll(), 0);
    assert_eq!(log.get(), vec![0, 1]);

    ctx.restart();
    assert!(!ctx.stopped());
    assert_eq!(ctx.run(), 2);
    assert_eq!(log.get(), vec![0, 1, 2, 3]);
}

#[test]
fn executor_stop_stops_the_context_like_context_stop() {
    on_both_backends(|ctx| {
        let log = Log::default();
        {
            let (ex, l) = (ctx.executor(), log.clone());
            ctx.post(move || {
                l.0.borrow_mut().push(0);
                ex.stop();
            });
        }
        ctx.post(log.push(1));
        // A work guard too: stop() must end run() even with work outstanding.
        let guard = ctx.work_guard();
        let t0 = ctx.now();
        assert_eq!(ctx.run_for(Duration::from_secs(2)), 1);
        assert!(ctx.now().duration_since(t0) < ms(500));
        assert!(ctx.stopped());
        assert_eq!(log.get(), vec![0]);
        drop(guard);
        ctx.restart();
        assert_eq!(ctx.poll(), 1);
        assert_eq!(log.get(), vec![0, 1]);
    });
}

#[test]
fn stop_before_run_makes_run_return_at_once() {
    on_both_backends(|ctx| {
        let log = Log::default();
        ctx.post(log.push(0));
        ctx.stop();
        assert_eq!(ctx.run(), 0);
        assert_eq!(log.get(), Vec::<u32>::new());
        ctx.restart();
        assert_eq!(ctx.run(), 1);
    });
}

// ---------------------------------------------------------------- work guards

#[test]
fn work_guard_keeps_run_for_waiting_until_its_deadline_without_stopping() {
    on_both_backends(|ctx| {
        let guard = ctx.work_guard();
        assert!(guard.owns_work());
        let t0 = ctx.now();
        assert_eq!(ctx.run_for(ms(30)), 0);
        let took = ctx.now().duration_since(t0);
        assert!(took >= ms(30), "returned after {took:?}");
        assert!(took < ms(500), "returned after {took:?}");
        assert!(!ctx.stopped(), "returning on the deadline must not stop the context");
        drop(guard);
        // Without the guard the same call returns at once, out of work.
        let t0 = ctx.now();
        assert_eq!(ctx.run_for(Duration::from_secs(2)), 0);
        assert!(ctx.now().duration_since(t0) < ms(500));
        assert!(ctx.stopped());
    });
}

#[test]
fn dropping_the_work_guard_in_a_handler_lets_run_return() {
    on_both_backends(|ctx| {
        let guard: Rc<RefCell<Option<WorkGuard>>> = Rc::new(RefCell::new(Some(ctx.work_guard())));
        let timer = SteadyTimer::new(ctx);
        timer.expires_after(ms(10));
        {
            let g = guard.clone();
            timer.async_wait(move |e| {
                assert_eq!(e, Error::NONE);
                drop(g.borrow_mut().take());
            });
        }
        // run_for bounds the test if the rule breaks; out of work it must return
        // long before the deadline and stop, as run() would.
        let t0 = ctx.now();
        assert_eq!(ctx.run_for(Duration::from_secs(2)), 1);
        assert!(ctx.now().duration_since(t0) < ms(500), "the dropped guard still kept run() waiting");
        assert!(ctx.stopped());
        assert!(guard.borrow().is_none());
    });
}

#[test]
fn resetting_the_work_guard_in_a_handler_lets_run_return() {
    on_both_backends(|ctx| {
        let guard = Rc::new(RefCell::new(ctx.work_guard()));
        {
            let g = guard.clone();
            ctx.post(move || g.borrow_mut().reset());
        }
        let t0 = ctx.now();
        assert_eq!(ctx.run_for(Duration::from_secs(2)), 1);
        assert!(ctx.now().duration_since(t0) < ms(500), "the reset guard still kept run() waiting");
        assert!(ctx.stopped());
        assert!(!guard.borrow().owns_work());
        // Dropping a guard that was reset releases nothing twice: another guard still counts.
        let second = ctx.work_guard();
        drop(Rc::try_unwrap(guard).unwrap());
        ctx.restart();
        assert_eq!(ctx.run_for(ms(20)), 0);
        assert!(!ctx.stopped(), "the second guard's work was released by the first guard's drop");
        drop(second);
    });
}

// ---------------------------------------------------------------- run_one / poll / poll_one

#[test]
fn run_one_runs_exactly_one_handler() {
    on_both_backends(|ctx| {
        let log = Log::default();
        for i in 0..3 {
            ctx.post(log.push(i));
        }
        assert_eq!(ctx.run_one(), 1);
        assert_eq!(log.get(), vec![0]);
        assert_eq!(ctx.run_one(), 1);
        assert_eq!(log.get(), vec![0, 1]);
        assert!(!ctx.stopped());
        assert_eq!(ctx.run(), 1);
        assert_eq!(log.get(), vec![0, 1, 2]);
    });
}

#[test]
fn poll_runs_every_ready_handler_without_blocking() {
    let ctx = IoContext::new().unwrap();
    // Work that will not be ready for a while: a guard, a pending receive and
    // a 1 s timer. poll() must not wait for any of it. (If it does, the timer
    // releases the rest so that the test fails instead of hanging.)
    let guard = Rc::new(RefCell::new(Some(ctx.work_guard())));
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    sock.async_receive(vec![0u8; 16], |_, _, _| {});
    let timer = SteadyTimer::new(&ctx);
    timer.expires_after(Duration::from_secs(1));
    {
        let (g, s) = (guard.clone(), sock.clone());
        timer.async_wait(move |_| {
            drop(g.borrow_mut().take());
            s.close();
        });
    }

    let log = Log::default();
    for i in 0..5 {
        ctx.post(log.push(i));
    }
    let t0 = Instant::now();
    assert_eq!(ctx.poll(), 5);
    assert_eq!(log.get(), vec![0, 1, 2, 3, 4]);
    assert_eq!(ctx.poll(), 0);
    assert!(t0.elapsed() < ms(100), "poll blocked for {:?}", t0.elapsed());
    assert!(!ctx.stopped());
}

#[test]
fn poll_one_runs_at_most_one_handler() {
    on_both_backends(|ctx| {
        let _guard = ctx.work_guard();
        // Bounds the test if poll_one() blocks.
        let timer = SteadyTimer::new(ctx);
        timer.expires_after(Duration::from_secs(1));
        timer.async_wait(|_| {});
        let log = Log::default();
        ctx.post(log.push(0));
        ctx.post(log.push(1));
        let t0 = ctx.now();
        assert_eq!(ctx.poll_one(), 1);
        assert_eq!(log.get(), vec![0]);
        assert_eq!(ctx.poll_one(), 1);
        assert_eq!(log.get(), vec![0, 1]);
        assert_eq!(ctx.poll_one(), 0);
        assert!(ctx.now().duration_since(t0) < ms(100), "poll_one blocked");
        assert!(!ctx.stopped());
    });
}

#[test]
fn run_one_for_with_nothing_ready_returns_zero_after_the_timeout() {
    on_both_backends(|ctx| {
        let _guard = ctx.work_guard();
        let t0 = ctx.now();
        assert_eq!(ctx.run_one_for(ms(20)), 0);
        let took = ctx.now().duration_since(t0);
        assert!(took >= ms(20), "returned early, after {took:?}");
        assert!(took < ms(500));
        assert!(!ctx.stopped());

        let t0 = ctx.now();
        assert_eq!(ctx.run_one_until(ctx.now() + ms(15)), 0);
        assert!(ctx.now().duration_since(t0) >= ms(15));
        assert!(!ctx.stopped());
    });
}

#[test]
fn run_one_for_returns_as_soon_as_one_handler_ran() {
    on_both_backends(|ctx| {
        let _guard = ctx.work_guard();
        let timer = SteadyTimer::new(ctx);
        timer.expires_after(ms(10));
        let fired = Rc::new(Cell::new(false));
        let f = fired.clone();
        timer.async_wait(move |e| f.set(e == Error::NONE));
        let t0 = ctx.now();
        assert_eq!(ctx.run_one_for(Duration::from_secs(2)), 1);
        assert!(fired.get());
        assert!(ctx.now().duration_since(t0) < ms(500));
    });
}

#[test]
fn run_for_and_run_until_returning_on_the_deadline_do_not_stop() {
    on_both_backends(|ctx| {
        let timer = SteadyTimer::new(ctx);
        timer.expires_after(ms(40));
        let fired = Rc::new(Cell::new(false));
        let f = fired.clone();
        timer.async_wait(move |_| f.set(true));

        assert_eq!(ctx.run_until(ctx.now() + ms(5)), 0);
        assert!(!ctx.stopped());
        assert_eq!(ctx.run_for(ms(5)), 0);
        assert!(!ctx.stopped());
        assert!(!fired.get());
        // No restart() needed: the context was never stopped.
        assert_eq!(run_bounded(ctx), 1);
        assert!(fired.get());
    });
}

// ---------------------------------------------------------------- panics

#[test]
fn a_panicking_handler_unwinds_out_of_run_and_the_next_run_continues_in_order() {
    on_both_backends(|ctx| {
        let log = Log::default();
        ctx.post(log.push(0));
        {
            let l = log.clone();
            ctx.post(move || {
                l.0.borrow_mut().push(1);
                panic!("handler 1 panics");
            });
        }
        ctx.post(log.push(2));
        ctx.post(log.push(3));

        let r = catch_unwind(AssertUnwindSafe(|| ctx.run()));
        assert!(r.is_err(), "the panic did not reach run()'s caller");
        assert_eq!(log.get(), vec![0, 1]);
        assert!(!ctx.stopped());

        // Outside run() again: dispatch must post, not run inline.
        ctx.dispatch(log.push(4));
        assert_eq!(log.get(), vec![0, 1]);

        assert_eq!(ctx.run(), 3);
        assert_eq!(log.get(), vec![0, 1, 2, 3, 4]);
    });
}

#[test]
fn a_panicking_completion_handler_leaves_the_context_usable() {
    let ctx = IoContext::new().unwrap();
    let log = Log::default();
    let t1 = SteadyTimer::new(&ctx);
    t1.expires_after(ms(5));
    t1.async_wait(|_| panic!("timer handler panics"));
    let t2 = SteadyTimer::new(&ctx);
    t2.expires_after(ms(15));
    {
        let l = log.clone();
        t2.async_wait(move |e| l.0.borrow_mut().push(if e == Error::NONE { 2 } else { 99 }));
    }
    let r = catch_unwind(AssertUnwindSafe(|| ctx.run_for(Duration::from_secs(2))));
    assert!(r.is_err());
    assert_eq!(log.get(), Vec::<u32>::new());
    assert_eq!(run_bounded(&ctx), 1);
    assert_eq!(log.get(), vec![2]);
    assert!(ctx.stopped());
}

// ---------------------------------------------------------------- teardown

/// Posts (and dispatches) from its destructor, as a handler's capture might.
struct PostOnDrop {
    ex: Executor,
    ran: Rc<Cell<u32>>,
    drops: Rc<Cell<u32>>,
}

impl Drop for PostOnDrop {
    fn drop(&mut self) {
        for _ in 0..2 {
            let (r, d) = (self.ran.clone(), DropCount(self.drops.clone()));
            self.ex.post(move || {
                bump(&r);
                drop(d);
            });
        }
        let (r, d) = (self.ran.clone(), DropCount(self.drops.clone()));
        self.ex.dispatch(move || {
            bump(&r);
            drop(d);
        });
    }
}

/// Starts a timer wait from its destructor.
struct WaitOnDrop {
    timer: SteadyTimer,
    ran: Rc<Cell<u32>>,
    drops: Rc<Cell<u32>>,
}

impl Drop for WaitOnDrop {
    fn drop(&mut self) {
        let (r, d) = (self.ran.clone(), DropCount(self.drops.clone()));
        self.timer.async_wait(move |_| {
            bump(&r);
            drop(d);
        });
    }
}

#[test]
fn dropping_the_context_drops_pending_handlers_unrun_and_frees_their_captures() {
    let ctx = IoContext::new().unwrap();
    let ran = Rc::new(Cell::new(0u32));
    let drops = Rc::new(Cell::new(0u32));
    let shared = Rc::new(());

    // Posted handlers.
    for _ in 0..3 {
        let (r, d, s) = (ran.clone(), DropCount(drops.clone()), shared.clone());
        ctx.post(move || {
            bump(&r);
            drop((d, s));
        });
    }

    // A pending receive whose handler holds its own socket.
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    let sock_addr = sock.local_addr().unwrap();
    {
        let (r, d, s, me) = (ran.clone(), DropCount(drops.clone()), shared.clone(), sock.clone());
        let op = sock.async_receive(vec![0u8; 64], move |_, _, _| {
            bump(&r);
            drop((d, s, me));
        });
        assert!(op.is_pending());
    }
    drop(sock);

    // A pending timer wait whose handler holds its own timer.
    let timer = SteadyTimer::new(&ctx);
    timer.expires_after(Duration::from_secs(60));
    {
        let (r, d, s, me) = (ran.clone(), DropCount(drops.clone()), shared.clone(), timer.clone());
        timer.async_wait(move |_| {
            bump(&r);
            drop((d, s, me));
        });
    }
    drop(timer);

    // A completed wait whose handler is queued but has not run.
    let done = SteadyTimer::new(&ctx);
    done.expires_after(Duration::from_secs(60));
    {
        let (r, d, s) = (ran.clone(), DropCount(drops.clone()), shared.clone());
        done.async_wait(move |_| {
            bump(&r);
            drop((d, s));
        });
    }
    assert_eq!(done.cancel(), 1);

    // Captures that post, dispatch and start a timer wait while being dropped.
    {
        let p = PostOnDrop { ex: ctx.executor(), ran: ran.clone(), drops: drops.clone() };
        let r = ran.clone();
        ctx.post(move || {
            bump(&r);
            drop(p);
        });
        let w = WaitOnDrop { timer: SteadyTimer::new(&ctx), ran: ran.clone(), drops: drops.clone() };
        let r = ran.clone();
        ctx.post(move || {
            bump(&r);
            drop(w);
        });
    }

    assert_eq!(ran.get(), 0);
    assert_eq!(drops.get(), 0);
    assert_eq!(Rc::strong_count(&shared), 1 + 6);
    let weak_shared = Rc::downgrade(&shared);

    drop(ctx);

    assert_eq!(ran.get(), 0, "a handler ran during teardown");
    // 6 direct captures + 3 closures posted by PostOnDrop + 1 wait started by WaitOnDrop.
    assert_eq!(drops.get(), 6 + 3 + 1);
    assert_eq!(Rc::strong_count(&shared), 1, "a pending handler's capture leaked");
    drop(shared);
    assert!(weak_shared.upgrade().is_none());
    // The socket was closed: its port is free again.
    std::net::UdpSocket::bind(sock_addr).expect("the context's socket is still open");
}

#[test]
fn executor_does_not_keep_the_context_alive() {
    let ctx = IoContext::new().unwrap();
    let ex = ctx.executor();
    let ex2 = ex.clone();
    assert!(ex.is_alive());
    drop(ctx);
    assert!(!ex.is_alive());
    assert!(!ex2.is_alive());

    let ran = Rc::new(Cell::new(0u32));
    let drops = Rc::new(Cell::new(0u32));
    for start in [Executor::post::<Box<dyn FnOnce()>>, Executor::defer, Executor::dispatch] {
        let (r, d) = (ran.clone(), DropCount(drops.clone()));
        start(
            &ex,
            Box::new(move || {
                bump(&r);
                drop(d);
            }),
        );
    }
    assert_eq!(ran.get(), 0);
    assert_eq!(drops.get(), 3, "the closure was not dropped at once");

    ex.stop();
    let g = ex.work_guard();
    assert!(!g.owns_work());
}

// ---------------------------------------------------------------- fairness

struct Spin {
    ex: Executor,
    done: Rc<Cell<bool>>,
    passes: Rc<Cell<u32>>,
    sender: Rc<std::net::UdpSocket>,
    dest: SocketAddr,
}

impl Spin {
    /// Re-posts itself until `done`, sending the datagram on pass 3. Gives up
    /// after 1000 passes so that a starving loop fails instead of hanging.
    fn step(self) {
        if self.done.get() {
            return;
        }
        let p = self.passes.get() + 1;
        self.passes.set(p);
        if p == 3 {
            self.sender.send_to(b"ping", self.dest).unwrap();
        }
        if p >= 1000 {
            return;
        }
        let ex = self.ex.clone();
        ex.post(move || self.step());
    }
}

#[test]
fn a_self_reposting_handler_does_not_starve_a_pending_receive() {
    let ctx = IoContext::new().unwrap();
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    let dest = sock.local_addr().unwrap();
    let sender = Rc::new(std::net::UdpSocket::bind(local()).unwrap());
    let done = Rc::new(Cell::new(false));
    let passes = Rc::new(Cell::new(0u32));
    let delivered_at = Rc::new(Cell::new(None));
    {
        let (d, p, at) = (done.clone(), passes.clone(), delivered_at.clone());
        sock.async_receive(vec![0u8; 16], move |e, n, buf| {
            assert_eq!(e, Error::NONE);
            assert_eq!(&buf[..n], b"ping");
            at.set(Some(p.get()));
            d.set(true);
        });
    }
    let spin = Spin { ex: ctx.executor(), done: done.clone(), passes: passes.clone(), sender, dest };
    ctx.post(move || spin.step());
    run_bounded(&ctx);
    let at = delivered_at.get().expect("the receive never completed");
    assert!(at < 3 + 10, "the datagram sent on pass 3 was delivered only at pass {at}");
    assert!(passes.get() <= at + 1, "the chain did not stop when the receive completed");
}

// ---------------------------------------------------------------- nesting

#[test]
fn a_handler_may_call_poll_post_and_stop() {
    let ctx = Rc::new(IoContext::new().unwrap());
    let log = Log::default();
    let nested = Rc::new(Cell::new(None));
    {
        let (c, l, n) = (ctx.clone(), log.clone(), nested.clone());
        ctx.post(move || {
            c.post(l.push(1));
            // Runs the handler queued before this one and the one just posted.
            n.set(Some(c.poll()));
            c.post(l.push(2));
            c.stop();
        });
    }
    ctx.post(log.push(0));
    let r = catch_unwind(AssertUnwindSafe(|| ctx.run()));
    assert!(r.is_ok(), "a nested poll/post/stop panicked");
    assert_eq!(nested.get(), Some(2));
    assert_eq!(log.get(), vec![0, 1]);
    assert!(ctx.stopped());
    ctx.restart();
    assert_eq!(ctx.run(), 1);
    assert_eq!(log.get(), vec![0, 1, 2]);
}

#[test]
fn dispatch_is_inline_inside_a_nested_poll() {
    let ctx = Rc::new(IoContext::new().unwrap());
    let log = Log::default();
    {
        let (c, l) = (ctx.clone(), log.clone());
        ctx.post(move || {
            let (c2, l2) = (c.clone(), l.clone());
            c.post(move || {
                c2.dispatch(l2.push(1));
                l2.0.borrow_mut().push(2);
            });
            c.poll();
            l.0.borrow_mut().push(3);
        });
    }
    ctx.run();
    assert_eq!(log.get(), vec![1, 2, 3]);
}

#[test]
fn durations_beyond_the_clock_do_not_panic() {
    let ctx = IoContext::new().unwrap();
    // No work: both return at once instead of overflowing `now + d`.
    assert_eq!(ctx.run_for(Duration::MAX), 0);
    ctx.restart();
    assert_eq!(ctx.run_one_for(Duration::MAX), 0);
    ctx.restart();
    let timer = ioctx::SteadyTimer::new(&ctx);
    timer.expires_after(Duration::MAX);
    let hit = Rc::new(Cell::new(None));
    let h = hit.clone();
    let op = timer.async_wait(move |e| h.set(Some(e)));
    op.cancel_after(Duration::MAX, ioctx::CancellationType::TERMINAL);
    assert!(op.is_pending());
    timer.cancel();
    ctx.run();
    assert_eq!(hit.get(), Some(ioctx::Error::OPERATION_ABORTED));
}
