//! `SignalSet`: delivery, keeping signals that arrive with no wait, several
//! contexts, cancel, remove and the restored disposition.
//!
//! Signal handling is process-wide, so every test runs in a child process of
//! its own (tests of one binary run on parallel threads).

mod common;

use common::{is_child, run_in_child};
use ioctx::{Error, IoContext, SignalSet};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// Runs the rest of the test in a child process.
macro_rules! in_child {
    ($name:literal) => {
        if !is_child($name) {
            run_in_child($name);
            return;
        }
    };
}

type Got = Rc<RefCell<Vec<(Error, i32)>>>;

fn recorder(got: &Got) -> impl FnOnce(Error, i32) + 'static {
    let g = got.clone();
    move |e, s| g.borrow_mut().push((e, s))
}

/// Sends `sig` to this thread; the handler has run when this returns.
fn raise(sig: i32) {
    assert_eq!(unsafe { libc::raise(sig) }, 0);
}

/// The handler address installed for `sig`.
fn disposition(sig: i32) -> libc::sighandler_t {
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) }, 0);
    old.sa_sigaction
}

#[test]
fn sigusr1_sent_to_the_process_reaches_a_waiting_set() {
    in_child!("sigusr1_sent_to_the_process_reaches_a_waiting_set");
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1]).unwrap();
    let got = Got::default();
    set.async_wait(recorder(&got));
    // Process-directed, from another thread, while the loop sleeps in epoll.
    let pid = std::process::id() as i32;
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    });
    // The pending wait is work: run() returns once it has completed.
    assert_eq!(ctx.run_for(Duration::from_secs(10)), 1);
    sender.join().unwrap();
    assert_eq!(*got.borrow(), vec![(Error::NONE, libc::SIGUSR1)]);
}

#[test]
fn a_signal_with_no_wait_is_kept_for_the_next_and_never_run_inline() {
    in_child!("a_signal_with_no_wait_is_kept_for_the_next_and_never_run_inline");
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1, libc::SIGUSR2]).unwrap();
    raise(libc::SIGUSR2);
    raise(libc::SIGUSR1);
    raise(libc::SIGUSR2);
    let got = Got::default();
    for _ in 0..3 {
        set.async_wait(recorder(&got));
    }
    assert!(got.borrow().is_empty(), "a handler ran inside async_wait");
    ctx.run();
    // Arrival order, each occurrence once.
    let want = vec![(Error::NONE, libc::SIGUSR2), (Error::NONE, libc::SIGUSR1), (Error::NONE, libc::SIGUSR2)];
    assert_eq!(*got.borrow(), want);
    // Nothing left: a fourth wait stays pending.
    set.async_wait(recorder(&got));
    ctx.restart();
    ctx.poll();
    assert_eq!(got.borrow().len(), 3);
}

#[test]
fn waits_complete_in_the_order_started() {
    in_child!("waits_complete_in_the_order_started");
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1]).unwrap();
    let order = Rc::new(RefCell::new(Vec::new()));
    for i in 0..3 {
        let o = order.clone();
        set.async_wait(move |e, s| o.borrow_mut().push((i, e, s)));
    }
    ctx.poll();
    assert!(order.borrow().is_empty());
    raise(libc::SIGUSR1);
    ctx.run_one();
    assert_eq!(*order.borrow(), vec![(0, Error::NONE, libc::SIGUSR1)]);
    raise(libc::SIGUSR1);
    raise(libc::SIGUSR1);
    ctx.run_for(Duration::from_secs(5));
    let who: Vec<i32> = order.borrow().iter().map(|w| w.0).collect();
    assert_eq!(who, vec![0, 1, 2]);
}

#[test]
fn every_context_with_a_set_sees_the_signal() {
    in_child!("every_context_with_a_set_sees_the_signal");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let ctx = IoContext::new().unwrap();
                let set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1]).unwrap();
                let got = Got::default();
                set.async_wait(recorder(&got));
                barrier.wait();
                ctx.run_for(Duration::from_secs(10));
                got.borrow().clone()
            })
        })
        .collect();
    barrier.wait();
    assert_eq!(unsafe { libc::kill(std::process::id() as i32, libc::SIGUSR1) }, 0);
    for t in threads {
        assert_eq!(t.join().unwrap(), vec![(Error::NONE, libc::SIGUSR1)]);
    }
}

#[test]
fn two_sets_on_one_context_each_see_the_signal() {
    in_child!("two_sets_on_one_context_each_see_the_signal");
    let ctx = IoContext::new().unwrap();
    let a = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1]).unwrap();
    let b = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1, libc::SIGUSR2]).unwrap();
    let (ga, gb) = (Got::default(), Got::default());
    a.async_wait(recorder(&ga));
    b.async_wait(recorder(&gb));
    raise(libc::SIGUSR1);
    ctx.run();
    assert_eq!(*ga.borrow(), vec![(Error::NONE, libc::SIGUSR1)]);
    assert_eq!(*gb.borrow(), vec![(Error::NONE, libc::SIGUSR1)]);
}

#[test]
fn cancel_drop_and_operation_cancel_abort_waits() {
    in_child!("cancel_drop_and_operation_cancel_abort_waits");
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1]).unwrap();
    let got = Got::default();
    set.async_wait(recorder(&got));
    set.async_wait(recorder(&got));
    set.cancel().unwrap();
    assert!(got.borrow().is_empty(), "cancel ran a handler inline");
    ctx.run(); // returns: nothing waits any more
    assert_eq!(*got.borrow(), vec![(Error::OPERATION_ABORTED, 0); 2]);

    // One wait cancelled through its Operation; the other still gets the signal.
    got.borrow_mut().clear();
    ctx.restart();
    let op = set.async_wait(recorder(&got));
    set.async_wait(recorder(&got));
    assert!(op.cancel(ioctx::CancellationType::TERMINAL));
    raise(libc::SIGUSR1);
    ctx.run();
    assert_eq!(*got.borrow(), vec![(Error::OPERATION_ABORTED, 0), (Error::NONE, libc::SIGUSR1)]);

    // A signal that arrived before a cancel stays for the next wait.
    got.borrow_mut().clear();
    ctx.restart();
    raise(libc::SIGUSR1);
    set.cancel().unwrap();
    set.async_wait(recorder(&got));
    ctx.run();
    assert_eq!(*got.borrow(), vec![(Error::NONE, libc::SIGUSR1)]);

    // Dropping the last handle aborts what waits.
    got.borrow_mut().clear();
    ctx.restart();
    set.async_wait(recorder(&got));
    drop(set);
    ctx.run();
    assert_eq!(*got.borrow(), vec![(Error::OPERATION_ABORTED, 0)]);
}

#[test]
fn remove_drops_undelivered_occurrences_and_keeps_the_others_moving() {
    in_child!("remove_drops_undelivered_occurrences_and_keeps_the_others_moving");
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1, libc::SIGUSR2]).unwrap();
    let got = Got::default();
    // The wait is queued before the signals arrive; remove() then reads them
    // out of the socket, so no readiness event will announce SIGUSR2: the
    // wait must still get it.
    set.async_wait(recorder(&got));
    raise(libc::SIGUSR1);
    raise(libc::SIGUSR2);
    set.remove(libc::SIGUSR1).unwrap();
    assert_eq!(set.signals(), vec![libc::SIGUSR2]);
    assert_eq!(ctx.run_for(Duration::from_secs(5)), 1);
    assert_eq!(*got.borrow(), vec![(Error::NONE, libc::SIGUSR2)]);

    // An occurrence from before remove is not delivered after a new add.
    got.borrow_mut().clear();
    ctx.restart();
    set.add(libc::SIGUSR2).unwrap(); // already held: no change
    raise(libc::SIGUSR2);
    set.remove(libc::SIGUSR2).unwrap();
    set.add(libc::SIGUSR2).unwrap();
    set.async_wait(recorder(&got));
    ctx.poll();
    assert!(got.borrow().is_empty(), "an occurrence survived remove: {:?}", got.borrow());
    raise(libc::SIGUSR2);
    ctx.run_one();
    assert_eq!(*got.borrow(), vec![(Error::NONE, libc::SIGUSR2)]);

    // clear() drops everything.
    got.borrow_mut().clear();
    ctx.restart();
    raise(libc::SIGUSR2);
    set.clear().unwrap();
    assert!(set.signals().is_empty());
    set.add(libc::SIGUSR2).unwrap();
    set.async_wait(recorder(&got));
    ctx.poll();
    assert!(got.borrow().is_empty());
}

#[test]
fn the_previous_action_is_restored_when_the_last_set_lets_go() {
    in_child!("the_previous_action_is_restored_when_the_last_set_lets_go");
    unsafe { libc::signal(libc::SIGUSR1, libc::SIG_IGN) };
    assert_eq!(disposition(libc::SIGUSR2), libc::SIG_DFL);
    let ctx = IoContext::new().unwrap();
    let a = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1, libc::SIGUSR2]).unwrap();
    let b = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR2]).unwrap();
    let ours = disposition(libc::SIGUSR2);
    assert_ne!(ours, libc::SIG_DFL);
    assert_eq!(disposition(libc::SIGUSR1), ours);
    a.remove(libc::SIGUSR1).unwrap();
    assert_eq!(disposition(libc::SIGUSR1), libc::SIG_IGN);
    drop(a);
    assert_eq!(disposition(libc::SIGUSR2), ours, "b still holds SIGUSR2");
    let clone = b.clone();
    drop(b);
    assert_eq!(disposition(libc::SIGUSR2), ours, "a clone still holds SIGUSR2");
    drop(clone);
    assert_eq!(disposition(libc::SIGUSR2), libc::SIG_DFL);
}

#[test]
fn bad_signal_numbers_are_refused_and_the_set_stays_usable() {
    in_child!("bad_signal_numbers_are_refused_and_the_set_stays_usable");
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::new(&ctx.executor()).unwrap();
    for bad in [0, -1, 65, 1000, libc::SIGKILL, libc::SIGSTOP, libc::SIGSEGV, libc::SIGFPE, libc::SIGILL, libc::SIGBUS]
    {
        let e = set.add(bad).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "signal {bad}");
        set.remove(bad).unwrap(); // not held: nothing to do
    }
    assert!(set.signals().is_empty());
    assert!(SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1, libc::SIGKILL]).is_err());
    // The failed constructor gave SIGUSR1 back.
    assert_eq!(disposition(libc::SIGUSR1), libc::SIG_DFL);
    set.add(libc::SIGUSR1).unwrap();
    let got = Got::default();
    set.async_wait(recorder(&got));
    raise(libc::SIGUSR1);
    ctx.run();
    assert_eq!(*got.borrow(), vec![(Error::NONE, libc::SIGUSR1)]);
}

#[test]
fn a_set_outliving_its_context_is_harmless() {
    in_child!("a_set_outliving_its_context_is_harmless");
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1]).unwrap();
    let got = Got::default();
    set.async_wait(recorder(&got));
    drop(ctx);
    raise(libc::SIGUSR1); // written to the set's socket; nobody reads it
    set.async_wait(recorder(&got)); // dropped unrun: the context is gone
    assert!(got.borrow().is_empty());
    assert!(set.add(libc::SIGUSR2).is_ok());
    drop(set);
    assert_eq!(disposition(libc::SIGUSR1), libc::SIG_DFL);
}

#[test]
fn a_signal_after_the_context_is_gone_raises_no_sigpipe() {
    in_child!("a_signal_after_the_context_is_gone_raises_no_sigpipe");
    // As in a C host, or any program that has not ignored SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1]).unwrap();
    drop(ctx); // closes the end the set reads
    raise(libc::SIGUSR1); // the handler's write must not raise SIGPIPE
    drop(set);
}

#[test]
fn a_set_holding_sigpipe_outliving_its_context_does_not_spin() {
    in_child!("a_set_holding_sigpipe_outliving_its_context_does_not_spin");
    // Watchdog: a signal storm ends the child with SIGALRM instead of hanging.
    unsafe { libc::alarm(2) };
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGPIPE, libc::SIGUSR1]).unwrap();
    drop(ctx);
    raise(libc::SIGUSR1);
    drop(set);
    unsafe { libc::alarm(0) };
}

#[test]
fn a_long_burst_with_no_wait_loses_no_signal() {
    in_child!("a_long_burst_with_no_wait_loses_no_signal");
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1, libc::SIGUSR2]).unwrap();
    // Each raise runs the handler before it returns: 2000 occurrences, far
    // more than a socket buffer holds as one-byte writes.
    for i in 0..2000 {
        raise(if i == 1000 { libc::SIGUSR2 } else { libc::SIGUSR1 });
    }
    let got = Got::default();
    for _ in 0..2001 {
        set.async_wait(recorder(&got));
    }
    ctx.poll();
    let got = got.borrow();
    assert_eq!(got.len(), 2000, "occurrences lost");
    assert_eq!(got.iter().filter(|g| g.1 == libc::SIGUSR2).count(), 1);
    assert!(got.iter().all(|g| g.0 == Error::NONE));
}

#[test]
fn remove_and_clear_after_the_context_is_gone_succeed() {
    in_child!("remove_and_clear_after_the_context_is_gone_succeed");
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1, libc::SIGUSR2]).unwrap();
    drop(ctx);
    set.remove(libc::SIGUSR1).unwrap();
    assert_eq!(disposition(libc::SIGUSR1), libc::SIG_DFL);
    set.clear().unwrap();
    assert_eq!(disposition(libc::SIGUSR2), libc::SIG_DFL);
}

#[test]
fn adding_a_held_signal_again_delivers_each_occurrence_once() {
    in_child!("adding_a_held_signal_again_delivers_each_occurrence_once");
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1]).unwrap();
    set.add(libc::SIGUSR1).unwrap();
    assert_eq!(set.signals(), vec![libc::SIGUSR1]);
    raise(libc::SIGUSR1);
    let got = Got::default();
    set.async_wait(recorder(&got));
    set.async_wait(recorder(&got));
    ctx.poll();
    assert_eq!(*got.borrow(), vec![(Error::NONE, libc::SIGUSR1)], "one occurrence, one delivery");
}

#[test]
fn clear_drops_occurrences_already_read_from_the_socket() {
    in_child!("clear_drops_occurrences_already_read_from_the_socket");
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1]).unwrap();
    raise(libc::SIGUSR1);
    raise(libc::SIGUSR1);
    let got = Got::default();
    set.async_wait(recorder(&got)); // reads both, delivers one, keeps one
    ctx.poll();
    assert_eq!(got.borrow().len(), 1);
    set.clear().unwrap();
    set.add(libc::SIGUSR1).unwrap();
    set.async_wait(recorder(&got));
    ctx.restart();
    ctx.poll();
    assert_eq!(got.borrow().len(), 1, "an occurrence survived clear: {:?}", got.borrow());
}

#[test]
fn dropping_the_last_handle_gives_the_signal_back_before_the_aborted_wait_runs() {
    in_child!("dropping_the_last_handle_gives_the_signal_back_before_the_aborted_wait_runs");
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1]).unwrap();
    let got = Got::default();
    set.async_wait(recorder(&got)); // its aborted completion waits in the queue
    drop(set);
    assert_eq!(disposition(libc::SIGUSR1), libc::SIG_DFL);
    ctx.run();
    assert_eq!(*got.borrow(), vec![(Error::OPERATION_ABORTED, 0)]);
}

#[test]
#[cfg(target_os = "linux")] // errno through `__errno_location`
fn the_handler_leaves_errno_as_it_found_it() {
    in_child!("the_handler_leaves_errno_as_it_found_it");
    let ctx = IoContext::new().unwrap();
    let _set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1]).unwrap();
    // Enough occurrences that the handler's own write fails (full socket).
    for _ in 0..2000 {
        unsafe { *libc::__errno_location() = 4242 };
        raise(libc::SIGUSR1);
        assert_eq!(unsafe { *libc::__errno_location() }, 4242);
    }
}

#[test]
#[cfg(target_os = "linux")] // `gettid` and /proc
fn a_system_call_the_signal_interrupts_is_restarted() {
    in_child!("a_system_call_the_signal_interrupts_is_restarted");
    let ctx = IoContext::new().unwrap();
    let _set = SignalSet::with_signals(&ctx.executor(), &[libc::SIGUSR1]).unwrap();
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (rd, wr) = (fds[0], fds[1]);
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        tx.send((unsafe { libc::gettid() }, unsafe { libc::pthread_self() })).unwrap();
        let mut b = 0u8;
        unsafe { libc::read(rd, (&mut b as *mut u8).cast(), 1) }
    });
    let (tid, thread) = rx.recv().unwrap();
    // Wait until the reader sleeps in read(2), then interrupt it.
    let path = format!("/proc/self/task/{tid}/syscall");
    while !std::fs::read_to_string(&path).unwrap().starts_with(&format!("{} ", libc::SYS_read)) {
        std::thread::yield_now();
    }
    assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR1) }, 0);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(unsafe { libc::write(wr, b"x".as_ptr().cast(), 1) }, 1);
    assert_eq!(reader.join().unwrap(), 1, "read(2) failed with EINTR instead of restarting");
}

#[test]
fn refused_installs_leave_no_registration_behind() {
    in_child!("refused_installs_leave_no_registration_behind");
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::new(&ctx.executor()).unwrap();
    // glibc keeps 32 (thread cancellation) for itself: sigaction refuses it.
    if set.add(32).is_ok() {
        return;
    }
    for _ in 0..1100 {
        assert!(set.add(32).is_err());
    }
    set.add(libc::SIGUSR1).expect("registrations leaked by refused installs");
}

#[test]
#[cfg(target_os = "linux")] // real-time signals
fn queued_realtime_signals_from_another_thread_all_arrive() {
    in_child!("queued_realtime_signals_from_another_thread_all_arrive");
    let ctx = IoContext::new().unwrap();
    let rt = libc::SIGRTMIN() + 1;
    let set = SignalSet::with_signals(&ctx.executor(), &[rt]).unwrap();
    let count = Rc::new(std::cell::Cell::new(0u32));
    fn wait_again(set: SignalSet, count: Rc<std::cell::Cell<u32>>) {
        let s = set.clone();
        set.async_wait(move |e, _| {
            if e.is_ok() {
                count.set(count.get() + 1);
                wait_again(s, count);
            }
        });
    }
    wait_again(set.clone(), count.clone());
    // Realtime signals queue: each one queued is delivered once. The
    // sender outpaces the loop, so the set's socket fills up.
    let pid = std::process::id() as i32;
    let sender = std::thread::spawn(move || {
        let v: libc::sigval = unsafe { std::mem::zeroed() };
        (0..20_000).filter(|_| unsafe { libc::sigqueue(pid, rt, v) } == 0).count() as u32
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sender.is_finished() {
        ctx.run_for(Duration::from_millis(5));
    }
    let queued = sender.join().unwrap();
    while count.get() < queued && std::time::Instant::now() < deadline {
        ctx.run_for(Duration::from_millis(5));
    }
    assert_eq!(count.get(), queued, "occurrences lost");
}

#[test]
#[cfg(target_os = "linux")] // real-time signals
fn the_named_signals_are_the_platforms_and_a_set_waits_for_them() {
    in_child!("the_named_signals_are_the_platforms_and_a_set_waits_for_them");
    let named = [
        (SignalSet::SIGHUP, libc::SIGHUP),
        (SignalSet::SIGINT, libc::SIGINT),
        (SignalSet::SIGQUIT, libc::SIGQUIT),
        (SignalSet::SIGTERM, libc::SIGTERM),
        (SignalSet::SIGUSR1, libc::SIGUSR1),
        (SignalSet::SIGUSR2, libc::SIGUSR2),
        (SignalSet::SIGPIPE, libc::SIGPIPE),
        (SignalSet::SIGALRM, libc::SIGALRM),
        (SignalSet::SIGCHLD, libc::SIGCHLD),
        (SignalSet::SIGCONT, libc::SIGCONT),
        (SignalSet::SIGTSTP, libc::SIGTSTP),
        (SignalSet::SIGWINCH, libc::SIGWINCH),
    ];
    for (ours, platform) in named {
        assert_eq!(ours, platform);
    }
    assert_eq!(SignalSet::realtime(0), Some(libc::SIGRTMIN()));
    let span = (libc::SIGRTMAX() - libc::SIGRTMIN()) as u32;
    assert_eq!(SignalSet::realtime(span), Some(libc::SIGRTMAX()));
    assert_eq!(SignalSet::realtime(span + 1), None);
    assert_eq!(SignalSet::realtime(u32::MAX), None);
    // Named and real-time signals, without libc, reach a wait.
    let rt = SignalSet::realtime(1).unwrap();
    let ctx = IoContext::new().unwrap();
    let set = SignalSet::with_signals(&ctx.executor(), &[SignalSet::SIGUSR2, rt]).unwrap();
    assert_eq!(set.signals(), vec![SignalSet::SIGUSR2, rt]);
    raise(rt);
    raise(SignalSet::SIGUSR2);
    let got = Got::default();
    set.async_wait(recorder(&got));
    set.async_wait(recorder(&got));
    ctx.run();
    assert_eq!(*got.borrow(), vec![(Error::NONE, rt), (Error::NONE, SignalSet::SIGUSR2)]);
}
