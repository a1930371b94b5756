//! Hot paths of the loop, so that a regression shows in `cargo bench`:
//! post + run, dispatch, one UDP send completion, timer set/cancel.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ioctx::net::UdpSocket;
use ioctx::{Error, IoContext, SteadyTimer};
use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::time::Duration;

fn post_and_run(c: &mut Criterion) {
    let ctx = IoContext::new().unwrap();
    let count = Rc::new(Cell::new(0u64));
    c.bench_function("post 1000 handlers + run", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                let c = count.clone();
                ctx.post(move || c.set(c.get() + 1));
            }
            ctx.restart();
            black_box(ctx.run())
        })
    });
}

fn dispatch_inline(c: &mut Criterion) {
    let ctx = IoContext::new().unwrap();
    let ex = ctx.executor();
    let count = Rc::new(Cell::new(0u64));
    c.bench_function("dispatch 1000 inline from a handler", |b| {
        b.iter(|| {
            let ex2 = ex.clone();
            let c = count.clone();
            ctx.post(move || {
                for _ in 0..1000 {
                    let c = c.clone();
                    ex2.dispatch(move || c.set(c.get() + 1));
                }
            });
            ctx.restart();
            black_box(ctx.run())
        })
    });
}

fn udp_send_completion(c: &mut Criterion) {
    let ctx = IoContext::new().unwrap();
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sock = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap()).unwrap();
    sock.connect(sink.local_addr().unwrap()).unwrap();
    let payload: Rc<[u8]> = Rc::from(&[0u8; 64][..]);
    c.bench_function("udp async_send 64 B + completion", |b| {
        b.iter(|| {
            sock.async_send(payload.clone(), |e, n| {
                assert_eq!((e, n), (Error::NONE, 64));
            });
            ctx.restart();
            black_box(ctx.run())
        })
    });
}

fn timer_set_cancel(c: &mut Criterion) {
    let ctx = IoContext::new().unwrap();
    c.bench_function("timer wait + cancel among 10k pending", |b| {
        let background: Vec<SteadyTimer> = (0..10_000u64)
            .map(|i| {
                let t = SteadyTimer::new(&ctx);
                t.expires_after(Duration::from_secs(3600 + i));
                t.async_wait(|_| {});
                t
            })
            .collect();
        let t = SteadyTimer::new(&ctx);
        b.iter_batched(
            || (),
            |_| {
                t.expires_after(Duration::from_secs(1800));
                t.async_wait(|_| {});
                black_box(t.cancel());
                ctx.poll_one()
            },
            BatchSize::SmallInput,
        );
        drop(background);
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = post_and_run, dispatch_inline, udp_send_completion, timer_set_cancel
}
criterion_main!(benches);
