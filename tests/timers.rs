//! `SteadyTimer`, `Operation` cancellation and `cancel_after` (DESIGN.md §1.5,
//! §1.6, and the determinism rule of §2). The tests that take no socket and
//! no wall-clock measure run on both backends (`on_both_backends`): the
//! same rules on a real context and on a simulated one.

use ioctx::net::UdpSocket;
use ioctx::{CancellationType, Error, IoContext, Operation, SteadyTimer};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Runs `body` on a real context and on a simulated one (virtual time):
/// the timer rules must hold on both backends. Times are read from the
/// context's clock (`ctx.now()`), which is the real one on a real context.
fn on_both_backends(body: impl Fn(&IoContext)) {
    body(&IoContext::new().unwrap());
    body(&IoContext::simulated(7));
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An expiry that no test waits for.
const FAR: Duration = Duration::from_secs(60);

/// `run()` with a safety net: a wait that should have completed makes the
/// test fail after 2 s instead of hanging until `FAR`. Asserts that it returned
/// for lack of work, as `run()` does.
fn run_bounded(ctx: &IoContext) -> usize {
    let n = ctx.run_for(Duration::from_secs(2));
    assert!(ctx.stopped(), "run() would still be waiting: work is left");
    n
}

/// Records `(id, error)` for each wait handler, in the order they ran.
#[derive(Clone, Default)]
struct Fired(Rc<RefCell<Vec<(usize, Error)>>>);

impl Fired {
    fn handler(&self, id: usize) -> impl FnOnce(Error) + 'static {
        let f = self.0.clone();
        move |e| f.borrow_mut().push((id, e))
    }
    fn get(&self) -> Vec<(usize, Error)> {
        self.0.borrow().clone()
    }
    fn ids(&self) -> Vec<usize> {
        self.0.borrow().iter().map(|(i, _)| *i).collect()
    }
}

// ---------------------------------------------------------------- completion

#[test]
fn a_wait_completes_with_none_and_not_before_its_expiry() {
    on_both_backends(|ctx| {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let mut timers = Vec::new();
        for (i, d) in [30u64, 5, 15].into_iter().enumerate() {
            let t = SteadyTimer::new(ctx);
            let before = ctx.now();
            t.expires_after(ms(d));
            let expiry = t.expiry();
            assert!(expiry >= before + ms(d));
            let (s, ex) = (seen.clone(), ctx.executor());
            t.async_wait(move |e| s.borrow_mut().push((i, e, ex.now() >= expiry)));
            timers.push(t);
        }
        assert_eq!(run_bounded(ctx), 3);
        assert_eq!(*seen.borrow(), vec![(1, Error::NONE, true), (2, Error::NONE, true), (0, Error::NONE, true)]);
    });
}

#[test]
fn an_expired_wait_is_posted_not_completed_inline() {
    let ctx = IoContext::new().unwrap();
    let fired = Fired::default();

    let zero = SteadyTimer::new(&ctx);
    zero.expires_after(Duration::ZERO);
    zero.async_wait(fired.handler(0));

    let past = SteadyTimer::new(&ctx);
    past.expires_at(Instant::now().checked_sub(ms(100)).unwrap_or_else(Instant::now));
    past.async_wait(fired.handler(1));

    // A new timer's expiry is "now": also already expired.
    let fresh = SteadyTimer::new(&ctx);
    fresh.async_wait(fired.handler(2));

    assert_eq!(fired.get(), vec![], "an expired wait completed inside async_wait");

    // From inside a handler too.
    let inside = Rc::new(Cell::new(None));
    let keep: Rc<RefCell<Option<SteadyTimer>>> = Rc::default();
    {
        let (ex, f, inside, keep) = (ctx.executor(), fired.clone(), inside.clone(), keep.clone());
        ctx.post(move || {
            let t = SteadyTimer::new(&ex);
            t.expires_after(Duration::ZERO);
            t.async_wait(f.handler(3));
            inside.set(Some(f.get().iter().any(|(i, _)| *i == 3)));
            // Keep the timer: dropping its last handle would abort the wait.
            *keep.borrow_mut() = Some(t);
        });
    }
    assert_eq!(run_bounded(&ctx), 5);
    assert_eq!(inside.get(), Some(false), "an expired wait completed inside async_wait in a handler");
    let mut got = fired.get();
    got.sort_by_key(|(i, _)| *i);
    assert_eq!(got, (0..4).map(|i| (i, Error::NONE)).collect::<Vec<_>>());
}

// ---------------------------------------------------------------- cancel / cancel_one / expires_*

#[test]
fn cancel_returns_how_many_waits_it_aborted_and_they_get_operation_aborted() {
    on_both_backends(|ctx| {
        let fired = Fired::default();
        let t = SteadyTimer::new(ctx);
        t.expires_after(FAR);
        assert_eq!(t.cancel(), 0, "nothing was pending");
        for i in 0..3 {
            t.async_wait(fired.handler(i));
        }
        assert_eq!(t.cancel(), 3);
        assert_eq!(fired.get(), vec![], "cancel ran handlers inline");
        assert_eq!(t.cancel(), 0, "already cancelled waits were counted again");
        let t0 = ctx.now();
        assert_eq!(run_bounded(ctx), 3);
        assert!((ctx.now() - t0) < ms(500), "run() waited for the cancelled waits' expiry");
        assert_eq!(fired.get(), (0..3).map(|i| (i, Error::OPERATION_ABORTED)).collect::<Vec<_>>());
    });
}

#[test]
fn cancel_one_cancels_only_the_oldest_pending_wait() {
    on_both_backends(|ctx| {
        let fired = Fired::default();
        let t = SteadyTimer::new(ctx);
        assert_eq!(t.cancel_one(), 0);
        t.expires_after(ms(10));
        for i in 0..3 {
            t.async_wait(fired.handler(i));
        }
        assert_eq!(t.cancel_one(), 1);
        assert_eq!(run_bounded(ctx), 3);
        assert_eq!(fired.get(), vec![(0, Error::OPERATION_ABORTED), (1, Error::NONE), (2, Error::NONE)]);
        assert_eq!(t.cancel_one(), 0, "no wait is pending any more");
    });
}

#[test]
fn cancel_one_skips_waits_that_already_completed() {
    on_both_backends(|ctx| {
        let fired = Fired::default();
        let t = SteadyTimer::new(ctx);
        t.expires_after(FAR);
        let op0 = t.async_wait(fired.handler(0));
        t.async_wait(fired.handler(1));
        t.async_wait(fired.handler(2));
        assert!(op0.cancel(CancellationType::TERMINAL));
        // Wait 0 is no longer pending: the oldest pending one is wait 1.
        assert_eq!(t.cancel_one(), 1);
        assert_eq!(t.cancel_one(), 1);
        assert_eq!(t.cancel_one(), 0);
        assert_eq!(run_bounded(ctx), 3);
        assert_eq!(fired.get(), (0..3).map(|i| (i, Error::OPERATION_ABORTED)).collect::<Vec<_>>());
    });
}

#[test]
fn cancel_counts_only_pending_waits() {
    on_both_backends(|ctx| {
        let fired = Fired::default();
        let t = SteadyTimer::new(ctx);
        t.expires_after(FAR);
        let ops: Vec<Operation> = (0..3).map(|i| t.async_wait(fired.handler(i))).collect();
        assert!(ops[1].cancel(CancellationType::TERMINAL));
        assert_eq!(t.cancel(), 2);
        run_bounded(ctx);
        assert_eq!(fired.ids(), vec![1, 0, 2]);
    });
}

#[test]
fn expires_after_and_expires_at_return_the_number_of_waits_they_cancelled() {
    on_both_backends(|ctx| {
        let fired = Fired::default();
        let t = SteadyTimer::new(ctx);
        t.expires_after(FAR);
        t.async_wait(fired.handler(0));
        t.async_wait(fired.handler(1));
        assert_eq!(t.expires_after(FAR), 2);
        t.async_wait(fired.handler(2));
        assert_eq!(t.expires_at(ctx.now() + ms(5)), 1);
        assert_eq!(t.expires_after(ms(5)), 0);
        t.async_wait(fired.handler(3));
        assert_eq!(fired.get(), vec![]);
        let t0 = ctx.now();
        assert_eq!(run_bounded(ctx), 4);
        assert!((ctx.now() - t0) < ms(500), "a cancelled wait kept its old 60 s expiry");
        assert_eq!(
            fired.get(),
            vec![
                (0, Error::OPERATION_ABORTED),
                (1, Error::OPERATION_ABORTED),
                (2, Error::OPERATION_ABORTED),
                (3, Error::NONE),
            ]
        );
    });
}

#[test]
fn cancelling_after_expiry_but_before_the_handler_runs_changes_nothing() {
    // Waits 0 and 1 share a deadline, so both complete in the same turn;
    // when handler 0 runs, wait 1 has completed (its handler is queued).
    let ctx = IoContext::new().unwrap();
    let fired = Fired::default();
    let at = Instant::now() + ms(5);
    let a = SteadyTimer::new(&ctx);
    let b = SteadyTimer::new(&ctx);
    a.expires_at(at);
    b.expires_at(at);
    let results = Rc::new(Cell::new(None));
    let op_b: Rc<RefCell<Operation>> = Rc::default();
    {
        let (f, b, op_b, results) = (fired.clone(), b.clone(), op_b.clone(), results.clone());
        a.async_wait(move |e| {
            f.0.borrow_mut().push((0, e));
            let op = op_b.borrow();
            results.set(Some((op.is_pending(), op.cancel(CancellationType::ALL), b.cancel(), b.cancel_one())));
        });
    }
    *op_b.borrow_mut() = b.async_wait(fired.handler(1));
    assert!(op_b.borrow().is_pending());
    assert_eq!(run_bounded(&ctx), 2);
    assert_eq!(results.get(), Some((false, false, 0, 0)));
    assert_eq!(fired.get(), vec![(0, Error::NONE), (1, Error::NONE)]);
}

// ---------------------------------------------------------------- ordering

#[test]
fn equal_deadlines_fire_in_the_order_the_waits_were_started() {
    on_both_backends(|ctx| {
        let fired = Fired::default();
        let at = ctx.now() + ms(10);
        let timers: Vec<SteadyTimer> = (0..100)
            .map(|_| {
                let t = SteadyTimer::new(ctx);
                t.expires_at(at);
                t
            })
            .collect();
        // Start the waits in an order unlike the creation order, so that only
        // the start order can explain the firing order.
        let order: Vec<usize> = (0..100).map(|i| (i * 37 + 11) % 100).collect();
        for &i in &order {
            timers[i].async_wait(fired.handler(i));
        }
        assert_eq!(run_bounded(ctx), 100);
        assert_eq!(fired.ids(), order);
        assert!(fired.get().iter().all(|(_, e)| *e == Error::NONE));
    });
}

#[test]
fn waits_on_one_timer_fire_in_start_order() {
    on_both_backends(|ctx| {
        let fired = Fired::default();
        let t = SteadyTimer::new(ctx);
        t.expires_after(ms(5));
        for i in 0..20 {
            t.async_wait(fired.handler(i));
        }
        assert_eq!(run_bounded(ctx), 20);
        assert_eq!(fired.get(), (0..20).map(|i| (i, Error::NONE)).collect::<Vec<_>>());
    });
}

#[test]
fn different_deadlines_fire_in_deadline_order_whatever_the_start_order() {
    on_both_backends(|ctx| {
        let fired = Fired::default();
        let base = ctx.now();
        let delays = [30u64, 10, 20, 5, 25, 15];
        let timers: Vec<SteadyTimer> = delays
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let t = SteadyTimer::new(ctx);
                t.expires_at(base + ms(*d));
                t.async_wait(fired.handler(i));
                t
            })
            .collect();
        assert_eq!(run_bounded(ctx), delays.len());
        assert_eq!(fired.ids(), vec![3, 1, 5, 2, 4, 0]);
        drop(timers);
    });
}

// ---------------------------------------------------------------- Operation

#[test]
fn operation_cancel_aborts_a_pending_timer_wait_once() {
    on_both_backends(|ctx| {
        let fired = Fired::default();
        let t = SteadyTimer::new(ctx);
        t.expires_after(FAR);
        let op = t.async_wait(fired.handler(0));
        assert!(op.is_pending());
        assert!(!op.cancel(CancellationType::NONE), "an empty cancellation type cancelled");
        assert!(op.is_pending());
        let copy = op.clone();
        assert!(op.cancel(CancellationType::TERMINAL));
        assert!(!op.is_pending());
        assert!(!copy.is_pending());
        assert_eq!(fired.get(), vec![], "cancel ran the handler inline");
        assert!(!op.cancel(CancellationType::TERMINAL), "a second cancel reported success");
        assert!(!copy.cancel(CancellationType::ALL));
        let t0 = ctx.now();
        assert_eq!(run_bounded(ctx), 1);
        assert!((ctx.now() - t0) < ms(500));
        assert_eq!(fired.get(), vec![(0, Error::OPERATION_ABORTED)]);
        assert!(!op.cancel(CancellationType::TERMINAL));
    });
}

#[test]
fn timer_waits_honour_every_cancellation_type() {
    on_both_backends(|ctx| {
        let fired = Fired::default();
        let t = SteadyTimer::new(ctx);
        t.expires_after(FAR);
        let types = [CancellationType::TERMINAL, CancellationType::PARTIAL, CancellationType::TOTAL];
        for (i, ty) in types.into_iter().enumerate() {
            let op = t.async_wait(fired.handler(i));
            assert!(op.cancel(ty), "{ty:?} did not cancel a timer wait");
        }
        assert_eq!(run_bounded(ctx), 3);
        assert_eq!(fired.get(), (0..3).map(|i| (i, Error::OPERATION_ABORTED)).collect::<Vec<_>>());
    });
}

#[test]
fn operation_cancel_after_completion_returns_false() {
    on_both_backends(|ctx| {
        let fired = Fired::default();
        let t = SteadyTimer::new(ctx);
        t.expires_after(ms(5));
        let op = t.async_wait(fired.handler(0));
        assert!(op.is_pending());
        assert_eq!(run_bounded(ctx), 1);
        assert!(!op.is_pending());
        assert!(!op.cancel(CancellationType::ALL));
        assert_eq!(fired.get(), vec![(0, Error::NONE)]);
    });
}

#[test]
fn cancel_after_aborts_a_receive_that_gets_no_data_after_roughly_the_delay() {
    let ctx = IoContext::new().unwrap();
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    let seen = Rc::new(RefCell::new(None));
    let t0 = Instant::now();
    let op = {
        let seen = seen.clone();
        sock.async_receive(vec![7u8; 32], move |e, n, buf| {
            *seen.borrow_mut() = Some((e, n, buf, t0.elapsed()));
        })
    };
    op.cancel_after(ms(20), CancellationType::TERMINAL);
    assert!(op.is_pending());
    // run_for bounds the test if the cancellation never comes.
    assert_eq!(ctx.run_for(Duration::from_secs(2)), 1);
    assert!(ctx.stopped(), "run() did not return when the receive was cancelled");
    let (e, n, buf, took) = seen.borrow_mut().take().expect("the receive handler never ran");
    assert_eq!((e, n), (Error::OPERATION_ABORTED, 0));
    assert_eq!(buf, vec![7u8; 32], "the handler did not get its buffer back untouched");
    assert!(took >= ms(20), "cancelled early, after {took:?}");
    assert!(took < ms(500), "cancelled late, after {took:?}");
    assert!(!op.is_pending());
    assert!(sock.is_open());
}

#[test]
fn cancel_after_on_an_operation_that_completes_first_does_not_keep_run_running() {
    let ctx = IoContext::new().unwrap();
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    let dest = sock.local_addr().unwrap();
    let seen = Rc::new(RefCell::new(None));
    let op = {
        let seen = seen.clone();
        sock.async_receive(vec![0u8; 32], move |e, n, buf: Vec<u8>| {
            *seen.borrow_mut() = Some((e, buf[..n].to_vec()));
        })
    };
    // The receive is pending (no data yet) when the timeout is set.
    assert!(op.is_pending());
    op.cancel_after(Duration::from_secs(10), CancellationType::TERMINAL);
    std::net::UdpSocket::bind(local()).unwrap().send_to(b"now", dest).unwrap();
    let t0 = Instant::now();
    assert_eq!(run_bounded(&ctx), 1);
    assert!(t0.elapsed() < ms(500), "run() waited {:?} for a stale cancel_after", t0.elapsed());
    assert_eq!(seen.borrow_mut().take(), Some((Error::NONE, b"now".to_vec())));
}

#[test]
fn cancel_after_on_a_timer_wait() {
    on_both_backends(|ctx| {
        let fired = Fired::default();
        let long = SteadyTimer::new(ctx);
        long.expires_after(FAR);
        long.async_wait(fired.handler(0)).cancel_after(ms(10), CancellationType::TERMINAL);
        let short = SteadyTimer::new(ctx);
        short.expires_after(ms(5));
        short.async_wait(fired.handler(1)).cancel_after(Duration::from_secs(5), CancellationType::TERMINAL);
        let t0 = ctx.now();
        assert_eq!(ctx.run_for(Duration::from_secs(2)), 2);
        let took = ctx.now() - t0;
        assert!(took >= ms(10) && took < ms(500), "took {took:?}");
        assert_eq!(fired.get(), vec![(1, Error::NONE), (0, Error::OPERATION_ABORTED)]);
    });
}

#[test]
fn a_second_cancel_after_on_a_timer_wait_replaces_the_first() {
    on_both_backends(|ctx| {
        let fired = Fired::default();
        // Shortened: the 10 ms cancel replaces the 60 s one.
        let a = SteadyTimer::new(ctx);
        a.expires_after(FAR);
        let op = a.async_wait(fired.handler(0));
        op.cancel_after(FAR, CancellationType::TERMINAL).cancel_after(ms(10), CancellationType::TERMINAL);
        // Lengthened: the 5 ms cancel is replaced by a 60 s one, so the wait
        // completes at its 30 ms expiry, and the replaced entry does not keep
        // run() busy either.
        let b = SteadyTimer::new(ctx);
        b.expires_after(ms(30));
        let op_b = b.async_wait(fired.handler(1));
        op_b.cancel_after(ms(5), CancellationType::TERMINAL).cancel_after(FAR, CancellationType::TERMINAL);
        let t0 = ctx.now();
        assert_eq!(run_bounded(ctx), 2);
        let took = ctx.now() - t0;
        assert!(took >= ms(30) && took < ms(1000), "took {took:?}");
        assert_eq!(fired.get(), vec![(0, Error::OPERATION_ABORTED), (1, Error::NONE)]);
        assert!(!op.is_pending() && !op_b.is_pending());
        assert!(!op.cancel(CancellationType::ALL), "a wait that ended cannot be cancelled");
    });
}

#[test]
fn more_due_timers_than_one_turn_fires_still_all_fire_in_deadline_order() {
    // A turn fires a bounded group of due timers; the rest must still fire,
    // in deadline order, on the following turns.
    let ctx = IoContext::new().unwrap();
    let fired = Fired::default();
    let t0 = Instant::now();
    let timers: Vec<SteadyTimer> = (0..3000)
        .map(|i| {
            let t = SteadyTimer::new(&ctx);
            t.expires_at(t0 - Duration::from_micros(3000 - i as u64));
            t.async_wait(fired.handler(i));
            t
        })
        .collect();
    assert_eq!(run_bounded(&ctx), 3000);
    assert_eq!(fired.ids(), (0..3000).collect::<Vec<_>>());
    drop(timers);
}

// ---------------------------------------------------------------- timers and I/O

#[test]
fn the_nearest_deadline_bounds_the_reactor_wait() {
    // A receive that never gets data must not keep the 20 ms timer waiting.
    let ctx = IoContext::new().unwrap();
    let sock = UdpSocket::bind(&ctx, local()).unwrap();
    let events = Rc::new(RefCell::new(Vec::new()));
    {
        let ev = events.clone();
        sock.async_receive(vec![0u8; 16], move |e, _, _| ev.borrow_mut().push(("receive", e, Duration::ZERO)));
    }
    let t0 = Instant::now();
    let timer = SteadyTimer::new(&ctx);
    timer.expires_after(ms(20));
    {
        let (ev, s) = (events.clone(), sock.clone());
        timer.async_wait(move |e| {
            ev.borrow_mut().push(("timer", e, t0.elapsed()));
            s.close();
        });
    }
    drop(sock);
    // run_for bounds the test: if the timer is ignored the reactor sleeps to this deadline.
    assert_eq!(ctx.run_for(Duration::from_secs(3)), 2);
    let events = events.borrow();
    assert_eq!(events.len(), 2);
    let (what, e, at) = events[0];
    assert_eq!((what, e), ("timer", Error::NONE));
    assert!(at >= ms(20), "fired early, at {at:?}");
    assert!(at < ms(500), "fired late, at {at:?}: the reactor slept past the deadline");
    assert_eq!((events[1].0, events[1].1), ("receive", Error::OPERATION_ABORTED));
}

#[test]
fn poll_completes_waits_whose_deadline_has_passed_without_blocking() {
    let ctx = IoContext::new().unwrap();
    let fired = Fired::default();
    let t = SteadyTimer::new(&ctx);
    t.expires_after(ms(30));
    t.async_wait(fired.handler(0));
    let t0 = Instant::now();
    assert_eq!(ctx.poll(), 0, "poll completed a wait before its deadline");
    assert!(t0.elapsed() < ms(30), "poll waited for the timer");
    assert!(!ctx.stopped(), "a pending wait is work");
    std::thread::sleep(ms(40));
    assert_eq!(ctx.poll(), 1);
    assert_eq!(fired.get(), vec![(0, Error::NONE)]);
}

#[test]
fn a_handler_can_rearm_its_own_timer() {
    // The periodic-timer pattern: each tick moves the expiry on by 5 ms.
    struct Tick {
        timer: SteadyTimer,
        ticks: Rc<RefCell<Vec<(Error, bool, usize)>>>,
    }
    impl Tick {
        fn start(self) {
            let timer = self.timer.clone();
            timer.async_wait(move |e| {
                let due = Instant::now() >= self.timer.expiry();
                // The wait that just completed is not pending: nothing to cancel.
                let cancelled = self.timer.expires_at(self.timer.expiry() + ms(5));
                self.ticks.borrow_mut().push((e, due, cancelled));
                if self.ticks.borrow().len() < 5 {
                    self.start();
                }
            });
        }
    }
    let ctx = IoContext::new().unwrap();
    let ticks: Rc<RefCell<Vec<(Error, bool, usize)>>> = Rc::default();
    let timer = SteadyTimer::new(&ctx);
    let t0 = Instant::now();
    timer.expires_at(t0 + ms(5));
    Tick { timer, ticks: ticks.clone() }.start();
    assert_eq!(run_bounded(&ctx), 5);
    assert!(t0.elapsed() >= ms(25), "five 5 ms ticks took {:?}", t0.elapsed());
    assert_eq!(*ticks.borrow(), vec![(Error::NONE, true, 0); 5]);
}

#[test]
fn a_self_reposting_handler_does_not_starve_a_timer() {
    struct Spin {
        ex: ioctx::Executor,
        done: Rc<Cell<bool>>,
        t0: Instant,
    }
    impl Spin {
        fn step(self) {
            // Gives up after 1 s so that a starving loop fails instead of hanging.
            if self.done.get() || self.t0.elapsed() > Duration::from_secs(1) {
                return;
            }
            let ex = self.ex.clone();
            ex.post(move || self.step());
        }
    }
    let ctx = IoContext::new().unwrap();
    let done = Rc::new(Cell::new(false));
    let fired_at = Rc::new(Cell::new(None));
    let t0 = Instant::now();
    let timer = SteadyTimer::new(&ctx);
    timer.expires_after(ms(10));
    {
        let (d, at) = (done.clone(), fired_at.clone());
        timer.async_wait(move |e| {
            at.set(Some((e, t0.elapsed())));
            d.set(true);
        });
    }
    let spin = Spin { ex: ctx.executor(), done: done.clone(), t0 };
    ctx.post(move || spin.step());
    run_bounded(&ctx);
    let (e, at) = fired_at.get().expect("the timer never fired");
    assert_eq!(e, Error::NONE);
    assert!(at >= ms(10) && at < ms(500), "the timer fired at {at:?} while a handler kept re-posting");
}

// ---------------------------------------------------------------- lifetime

#[test]
fn dropping_the_last_timer_handle_aborts_its_pending_waits() {
    on_both_backends(|ctx| {
        let fired = Fired::default();
        let t = SteadyTimer::new(ctx);
        t.expires_after(FAR);
        let op0 = t.async_wait(fired.handler(0));
        let op1 = t.async_wait(fired.handler(1));
        let clone = t.clone();
        drop(t);
        assert!(op0.is_pending(), "dropping a clone that was not the last cancelled the waits");
        drop(clone);
        assert!(!op0.is_pending());
        assert!(!op1.is_pending());
        assert_eq!(fired.get(), vec![], "dropping the timer ran handlers inline");
        let t0 = ctx.now();
        assert_eq!(run_bounded(ctx), 2);
        assert!((ctx.now() - t0) < ms(500));
        assert_eq!(fired.get(), vec![(0, Error::OPERATION_ABORTED), (1, Error::OPERATION_ABORTED)]);
    });
}

#[test]
fn a_timer_whose_context_is_gone_drops_its_handler_unrun() {
    let ctx = IoContext::new().unwrap();
    let ex = ctx.executor();
    let t = SteadyTimer::new(&ctx);
    t.expires_after(ms(5));
    drop(ctx);
    let token = Rc::new(());
    let ran = Rc::new(Cell::new(false));
    let (k, r) = (token.clone(), ran.clone());
    let op = t.async_wait(move |_| {
        r.set(true);
        drop(k);
    });
    assert!(!op.is_pending());
    assert!(!op.cancel(CancellationType::ALL));
    assert_eq!(Rc::strong_count(&token), 1, "the handler was kept");
    assert!(!ran.get());
    let late = SteadyTimer::new(&ex);
    assert!(!late.async_wait(|_| panic!("ran without a context")).is_pending());
    assert_eq!(t.cancel(), 0);
}

// ---------------------------------------------------------------- many timers

/// A fixed-seed linear congruential generator (Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn ten_thousand_timers_fire_in_deadline_order_and_cancelled_ones_abort() {
    const N: usize = 10_000;
    let ctx = IoContext::new().unwrap();
    let mut rng = Lcg(0x5eed);
    let base = Instant::now();
    let deadlines: Vec<Instant> = (0..N).map(|_| base + Duration::from_micros(rng.next() % 20_000)).collect();
    let fired: Rc<RefCell<Vec<(usize, Error, bool)>>> = Rc::default();
    let mut timers = Vec::with_capacity(N);
    let mut ops = Vec::with_capacity(N);
    for (i, &at) in deadlines.iter().enumerate() {
        let t = SteadyTimer::new(&ctx);
        t.expires_at(at);
        let f = fired.clone();
        ops.push(t.async_wait(move |e| f.borrow_mut().push((i, e, Instant::now() >= at))));
        timers.push(t);
    }
    // Cancel every other one, half through Operation::cancel, half through the timer.
    for i in (1..N).step_by(2) {
        if i % 4 == 1 {
            assert!(ops[i].cancel(CancellationType::TERMINAL));
        } else {
            assert_eq!(timers[i].cancel(), 1);
        }
    }
    let t0 = Instant::now();
    assert_eq!(run_bounded(&ctx), N);
    assert!(t0.elapsed() < Duration::from_secs(1));

    let fired = fired.borrow();
    assert_eq!(fired.len(), N);
    let mut seen = vec![false; N];
    for &(i, _, _) in fired.iter() {
        assert!(!std::mem::replace(&mut seen[i], true), "wait {i} completed twice");
    }
    let (live, cancelled): (Vec<_>, Vec<_>) = fired.iter().partition(|(i, _, _)| i % 2 == 0);
    assert_eq!(live.len(), N / 2);
    assert_eq!(cancelled.len(), N / 2);
    assert!(cancelled.iter().all(|(_, e, _)| *e == Error::OPERATION_ABORTED));
    assert!(live.iter().all(|(_, e, _)| *e == Error::NONE));
    assert!(live.iter().all(|(_, _, late_enough)| *late_enough), "a timer fired before its deadline");
    // Non-decreasing deadlines; equal deadlines in start (index) order.
    for w in live.windows(2) {
        let (a, b) = (w[0].0, w[1].0);
        assert!(
            (deadlines[a], a) < (deadlines[b], b),
            "wait {a} (deadline {:?}) fired before wait {b} (deadline {:?})",
            deadlines[a] - base,
            deadlines[b] - base
        );
    }
}

#[test]
fn deadlines_in_the_past_still_fire_in_deadline_order() {
    let before = Instant::now();
    std::thread::sleep(Duration::from_millis(2));
    let ctx = IoContext::new().unwrap();
    let order = Rc::new(RefCell::new(Vec::new()));
    let mut timers = Vec::new();
    // Both lie before the context's creation; the later-set one is earlier.
    for (name, at) in [("later", before + Duration::from_millis(1)), ("earlier", before)] {
        let t = SteadyTimer::new(&ctx);
        t.expires_at(at);
        let o = order.clone();
        t.async_wait(move |e| o.borrow_mut().push((name, e)));
        timers.push(t); // dropping a timer would cancel its wait
    }
    ctx.run();
    assert_eq!(*order.borrow(), vec![("earlier", Error::NONE), ("later", Error::NONE)]);
}

// ---------------------------------------------------------------- queue internals seen from outside

#[test]
fn equal_deadlines_keep_the_order_set_when_a_later_wait_lands_in_a_fresh_bucket_window() {
    // 1000 waits due at `t`, then F due 10 s later (both in the past). The
    // first wait's handler starts G with F's deadline: F was set first, so F
    // must fire first, however many turns the 1000 waits take to fire.
    let ctx = IoContext::new().unwrap();
    let fired = Fired::default();
    let t = Instant::now() - Duration::from_secs(20);
    let mut timers = Vec::new();
    let g = SteadyTimer::new(&ctx);
    g.expires_at(t + Duration::from_secs(10));
    for i in 0..1000 {
        let tm = SteadyTimer::new(&ctx);
        tm.expires_at(t);
        if i == 0 {
            let (g, f) = (g.clone(), fired.clone());
            tm.async_wait(move |e| {
                f.0.borrow_mut().push((0, e));
                g.async_wait(f.handler(2000));
            });
        } else {
            tm.async_wait(fired.handler(i));
        }
        timers.push(tm);
    }
    let f_timer = SteadyTimer::new(&ctx);
    f_timer.expires_at(t + Duration::from_secs(10));
    f_timer.async_wait(fired.handler(1000));
    assert_eq!(run_bounded(&ctx), 1002);
    let ids = fired.ids();
    assert_eq!(&ids[..1000], &(0..1000).collect::<Vec<_>>()[..]);
    assert_eq!(&ids[1000..], &[1000, 2000], "G (set after F, same deadline) fired first");
}

/// Runs `f` when dropped.
struct OnDrop<F: FnMut()>(F);
impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

#[test]
fn dropping_the_context_drops_wait_handlers_whose_captures_reenter_timers() {
    let ctx = IoContext::new().unwrap();
    let token = Rc::new(());
    let other = SteadyTimer::new(&ctx);
    other.expires_after(FAR);
    let other_ops: Vec<Operation> = (0..3).map(|_| other.async_wait(|_| panic!("ran"))).collect();
    let log = Rc::new(RefCell::new(Vec::new()));
    for i in 0..4 {
        let t = SteadyTimer::new(&ctx);
        t.expires_after(FAR);
        // A wait whose handler holds the last handle of its own timer (with a
        // group of waits), and whose drop re-enters everything.
        let (t2, o, ops, l, k) = (t.clone(), other.clone(), other_ops.clone(), log.clone(), token.clone());
        let guard = OnDrop(move || {
            let _k = &k;
            l.borrow_mut().push((
                ops[0].is_pending(),
                ops[1].cancel(CancellationType::ALL),
                o.cancel_one(),
                o.expires_after(FAR),
                t2.cancel(),
            ));
            // Starting waits and cancel_after while the context is being dropped.
            ops[2].cancel_after(ms(1), CancellationType::ALL);
            o.async_wait(|_| panic!("ran during teardown")).cancel_after(ms(1), CancellationType::ALL);
            t2.async_wait(|_| panic!("ran during teardown"));
        });
        t.async_wait(move |_| {
            let _g = &guard;
            panic!("ran");
        });
        t.async_wait(|_| panic!("ran"));
        let _ = i;
    }
    drop(ctx);
    assert_eq!(Rc::strong_count(&token), 1, "handlers were not dropped");
    assert_eq!(log.borrow().len(), 4);
    // Each guard but the first cancels the wait the previous one started on `other`.
    let mut expect = vec![(false, false, 1, 0, 0); 4];
    expect[0] = (false, false, 0, 0, 0);
    assert_eq!(*log.borrow(), expect);
    assert!(other_ops.iter().all(|o| !o.is_pending()));
    assert_eq!(other.cancel(), 0);
}

#[test]
fn a_wait_handler_dropped_by_cancel_during_teardown_may_start_a_wait_on_the_same_timer() {
    let ctx = IoContext::new().unwrap();
    let t = SteadyTimer::new(&ctx);
    t.expires_after(FAR);
    let hits = Rc::new(Cell::new(0));
    let holder: Rc<RefCell<Option<SteadyTimer>>> = Rc::default();
    {
        let (h, holder2) = (hits.clone(), holder.clone());
        // Dropped during teardown: drops the timer's last handle, whose Drop
        // cancels the waits started meanwhile.
        let guard = OnDrop(move || {
            h.set(h.get() + 1);
            if let Some(t) = holder2.borrow_mut().take() {
                t.async_wait(|_| panic!("ran"));
                t.async_wait(|_| panic!("ran"));
            }
        });
        let other = SteadyTimer::new(&ctx);
        other.expires_after(FAR);
        other.async_wait(move |_| drop(guard));
        std::mem::forget(other); // keeps its wait pending until the context goes
    }
    *holder.borrow_mut() = Some(t);
    drop(ctx);
    assert_eq!(hits.get(), 1);
}

#[test]
fn operation_and_timer_calls_after_the_context_is_gone_are_harmless() {
    let ctx = IoContext::new().unwrap();
    let t = SteadyTimer::new(&ctx);
    t.expires_after(FAR);
    let token = Rc::new(());
    let ops: Vec<Operation> = (0..3)
        .map(|_| {
            let k = token.clone();
            t.async_wait(move |_| drop(k))
        })
        .collect();
    ops[0].cancel_after(ms(1), CancellationType::ALL);
    drop(ctx);
    assert_eq!(Rc::strong_count(&token), 1, "pending handlers were not dropped with the context");
    for op in &ops {
        assert!(!op.is_pending());
        assert!(!op.cancel(CancellationType::ALL));
        op.cancel_after(ms(1), CancellationType::ALL);
    }
    assert_eq!(t.cancel_one(), 0);
    assert_eq!(t.expires_after(ms(1)), 0);
    assert_eq!(t.cancel(), 0);
    assert!(!t.async_wait(|_| panic!("ran")).is_pending());
    drop(t);
}

#[test]
fn a_panicking_timer_handler_leaves_the_timers_usable() {
    let ctx = IoContext::new().unwrap();
    let fired = Fired::default();
    let t = SteadyTimer::new(&ctx);
    t.expires_after(ms(1));
    t.async_wait(|_| panic!("boom"));
    for i in 0..300 {
        t.async_wait(fired.handler(i));
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.run()));
    assert!(r.is_err());
    ctx.restart();
    assert_eq!(run_bounded(&ctx), 300);
    assert_eq!(fired.ids(), (0..300).collect::<Vec<_>>());
}

#[test]
fn poll_and_run_one_fire_a_backlog_of_due_timers_without_blocking() {
    let ctx = IoContext::new().unwrap();
    let fired = Fired::default();
    let past = Instant::now() - ms(50);
    let t = SteadyTimer::new(&ctx);
    t.expires_at(past);
    for i in 0..1000 {
        t.async_wait(fired.handler(i));
    }
    let far = SteadyTimer::new(&ctx);
    far.expires_after(FAR);
    far.async_wait(|_| {});
    let t0 = Instant::now();
    assert_eq!(ctx.run_one(), 1);
    assert_eq!(ctx.poll_one(), 1);
    assert_eq!(ctx.poll(), 998);
    assert_eq!(ctx.poll(), 0);
    assert!(t0.elapsed() < ms(500));
    assert!(!ctx.stopped());
    assert_eq!(fired.ids(), (0..1000).collect::<Vec<_>>());
    // And run_one_for on an empty backlog returns on its deadline.
    assert_eq!(ctx.run_one_for(ms(20)), 0);
}

#[test]
fn large_and_overaligned_wait_handlers_run_and_drop_once() {
    #[repr(align(64))]
    struct Aligned(u8);
    let ctx = IoContext::new().unwrap();
    let token = Rc::new(());
    let got = Rc::new(RefCell::new(Vec::new()));
    let t = SteadyTimer::new(&ctx);
    let (k1, k2, k3, g1, g2, g3) = (token.clone(), token.clone(), token.clone(), got.clone(), got.clone(), got.clone());
    let big = [3u64; 16];
    let al = Aligned(9);
    t.async_wait(move |e| g1.borrow_mut().push((1, e, big[15] as usize, Rc::strong_count(&k1))));
    t.async_wait(move |e| {
        assert_eq!(&al as *const Aligned as usize % 64, 0);
        g2.borrow_mut().push((2, e, al.0 as usize, Rc::strong_count(&k2)))
    });
    t.async_wait(move |e| g3.borrow_mut().push((3, e, 0, Rc::strong_count(&k3))));
    assert_eq!(run_bounded(&ctx), 3);
    assert_eq!(
        got.borrow().iter().map(|x| (x.0, x.1, x.2)).collect::<Vec<_>>(),
        vec![(1, Error::NONE, 3), (2, Error::NONE, 9), (3, Error::NONE, 0)]
    );
    assert_eq!(Rc::strong_count(&token), 1);
    // Dropped unrun, boxed and inline.
    let (k4, k5) = (token.clone(), token.clone());
    let al = Aligned(1);
    t.expires_after(FAR);
    t.async_wait(move |_| drop((k4, al)));
    t.async_wait(move |_| drop(k5));
    drop(ctx);
    assert_eq!(Rc::strong_count(&token), 1);
}

#[test]
fn a_backlog_of_due_timers_fires_in_bounded_groups_between_other_handlers() {
    // 2000 waits are due at once. A handler posted by the first one must
    // not queue behind all of them: a turn fires a bounded group of timers.
    const N: usize = 2_000;
    let ctx = IoContext::new().unwrap();
    let order = Rc::new(RefCell::new(Vec::new()));
    let t = SteadyTimer::new(&ctx);
    t.expires_at(Instant::now() - ms(10));
    for i in 0..N {
        let (o, ex) = (order.clone(), ctx.executor());
        t.async_wait(move |_| {
            o.borrow_mut().push(i);
            if i == 0 {
                let o = o.clone();
                ex.post(move || o.borrow_mut().push(usize::MAX));
            }
        });
    }
    assert_eq!(run_bounded(&ctx), N + 1);
    let order = order.borrow();
    let posted_at = order.iter().position(|&i| i == usize::MAX).unwrap();
    assert!(posted_at < N / 2, "the posted handler ran after {posted_at} timer handlers");
    let timers: Vec<usize> = order.iter().copied().filter(|&i| i != usize::MAX).collect();
    assert_eq!(timers, (0..N).collect::<Vec<_>>());
}

#[test]
fn equal_deadlines_in_a_small_bucket_keep_the_order_set() {
    // 60 waits within about 1 ms (a bucket small enough for the comparison
    // sort), three deadlines interleaved: ties must keep the start order.
    let ctx = IoContext::new().unwrap();
    let fired = Fired::default();
    let at = Instant::now() + ms(5);
    let offset = |i: usize| Duration::from_micros(((i * 7) % 3) as u64 * 200);
    let timers: Vec<SteadyTimer> = (0..60)
        .map(|i| {
            let t = SteadyTimer::new(&ctx);
            t.expires_at(at + offset(i));
            t.async_wait(fired.handler(i));
            t
        })
        .collect();
    assert_eq!(run_bounded(&ctx), 60);
    let mut expect: Vec<usize> = (0..60).collect();
    expect.sort_by_key(|&i| (offset(i), i));
    assert_eq!(fired.ids(), expect);
    drop(timers);
}

#[test]
fn cancel_after_with_no_cancellation_type_leaves_a_timer_wait_alone() {
    let ctx = IoContext::new().unwrap();
    let fired = Fired::default();
    let t = SteadyTimer::new(&ctx);
    t.expires_after(ms(20));
    let op = t.async_wait(fired.handler(0));
    op.cancel_after(ms(1), CancellationType::NONE);
    assert_eq!(run_bounded(&ctx), 1);
    assert_eq!(fired.get(), vec![(0, Error::NONE)]);
}

#[test]
fn a_wait_started_while_cancel_drops_handlers_at_teardown_stays_recorded() {
    // While the context is being dropped, cancelling drops handlers instead
    // of queueing them; a handler dropped so may start a wait on the timer
    // being cancelled, and the timer must still know it.
    let ctx = IoContext::new().unwrap();
    let t = SteadyTimer::new(&ctx);
    t.expires_after(FAR);
    let counts = Rc::new(Cell::new(None));
    let guard = {
        let (t, counts) = (t.clone(), counts.clone());
        OnDrop(move || {
            let t2 = t.clone();
            let starts_another = OnDrop(move || {
                t2.async_wait(|_| panic!("ran"));
            });
            t.async_wait(move |_| drop(starts_another));
            t.async_wait(|_| panic!("ran"));
            let first = t.cancel();
            counts.set(Some((first, t.cancel())));
        })
    };
    let holder = SteadyTimer::new(&ctx);
    holder.expires_after(FAR);
    holder.async_wait(move |_| drop(guard));
    drop(ctx);
    assert_eq!(counts.get(), Some((2, 1)));
    drop((t, holder));
}
