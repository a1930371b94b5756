//! `Remote`: posting to a context from other threads.

use ioctx::{ContextGone, IoContext, SteadyTimer};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[test]
fn eight_threads_times_ten_thousand_posts_all_run_once_and_in_order_per_thread() {
    const THREADS: usize = 8;
    const PER: usize = 10_000;
    let ctx = IoContext::new().unwrap();
    let remote = ctx.remote().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let out_of_order = Arc::new(AtomicUsize::new(0));
    let next: Arc<Vec<AtomicUsize>> = Arc::new((0..THREADS).map(|_| AtomicUsize::new(0)).collect());
    let _guard = ctx.work_guard(); // run() waits for the posts
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (remote, ran, out_of_order, next) = (remote.clone(), ran.clone(), out_of_order.clone(), next.clone());
            std::thread::spawn(move || {
                for seq in 0..PER {
                    let (ran, out_of_order, next, r) =
                        (ran.clone(), out_of_order.clone(), next.clone(), remote.clone());
                    remote
                        .post(move || {
                            if next[t].swap(seq + 1, Ordering::Relaxed) != seq {
                                out_of_order.fetch_add(1, Ordering::Relaxed);
                            }
                            if ran.fetch_add(1, Ordering::Relaxed) + 1 == THREADS * PER {
                                r.stop().unwrap();
                            }
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    ctx.run();
    for t in threads {
        t.join().unwrap();
    }
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert_eq!(ran.load(Ordering::Relaxed), THREADS * PER, "every post runs exactly once");
    assert_eq!(out_of_order.load(Ordering::Relaxed), 0, "posts of one thread run in their order");
    for n in next.iter() {
        assert_eq!(n.load(Ordering::Relaxed), PER);
    }
    // Nothing is left over to run twice.
    ctx.restart();
    assert_eq!(ctx.poll(), 0);
}

#[test]
fn a_remote_post_wakes_a_loop_that_is_waiting() {
    let ctx = IoContext::new().unwrap();
    let far = SteadyTimer::new(&ctx);
    far.expires_after(Duration::from_secs(60));
    far.async_wait(|_| {});
    let remote = ctx.remote().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let poster = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        let stopper = remote.clone();
        remote
            .post(move || {
                r.fetch_add(1, Ordering::Relaxed);
                stopper.stop().unwrap();
            })
            .unwrap();
    });
    let t0 = Instant::now();
    ctx.run();
    poster.join().unwrap();
    assert_eq!(ran.load(Ordering::Relaxed), 1);
    assert!(t0.elapsed() < Duration::from_secs(5), "the post did not wake the loop: {:?}", t0.elapsed());
    assert!(ctx.stopped());
}

#[test]
fn posts_made_while_the_loop_is_idle_run_on_the_next_poll_each_once() {
    let ctx = IoContext::new().unwrap();
    let remote = ctx.remote().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let r = ran.clone();
        remote
            .post(move || {
                r.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
    }
    assert_eq!(ran.load(Ordering::Relaxed), 0, "posting does not run anything");
    assert_eq!(ctx.poll(), 3, "three posts, three handlers: none coalesced");
    assert_eq!(ran.load(Ordering::Relaxed), 3);
    assert_eq!(ctx.poll(), 0);
}

#[test]
fn remote_stop_leaves_later_handlers_for_after_restart() {
    let ctx = IoContext::new().unwrap();
    let remote = ctx.remote().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    remote.stop().unwrap();
    remote
        .post(move || {
            r.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    let _guard = ctx.work_guard();
    assert_eq!(ctx.run(), 0, "stopped before running the post");
    assert!(ctx.stopped());
    ctx.restart();
    assert_eq!(ctx.poll(), 1);
    assert_eq!(ran.load(Ordering::Relaxed), 1);
}

#[test]
fn posting_after_the_context_is_dropped_fails_and_drops_the_closure() {
    let ctx = IoContext::new().unwrap();
    let remote = ctx.remote().unwrap();
    let token = Arc::new(());
    let queued = token.clone();
    remote.post(move || drop(queued)).unwrap();
    drop(ctx);
    assert_eq!(Arc::strong_count(&token), 1, "a post queued before the drop is dropped unrun");
    let late = token.clone();
    assert_eq!(remote.post(move || drop(late)), Err(ContextGone));
    assert_eq!(Arc::strong_count(&token), 1, "the refused closure is dropped");
    assert_eq!(remote.stop(), Err(ContextGone));
}

#[test]
fn remotes_are_send_sync_and_share_one_waker() {
    fn send_sync<T: Send + Sync + Clone>() {}
    send_sync::<ioctx::Remote>();
    let ctx = IoContext::new().unwrap();
    let a = ctx.remote().unwrap();
    let b = ctx.remote().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let (r1, r2) = (ran.clone(), ran.clone());
    a.post(move || {
        r1.fetch_add(1, Ordering::Relaxed);
    })
    .unwrap();
    b.post(move || {
        r2.fetch_add(10, Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(ctx.poll(), 2);
    assert_eq!(ran.load(Ordering::Relaxed), 11);
}
