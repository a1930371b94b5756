//! [`check_determinism`]: the same test twice, event by event.

use crate::context::IoContext;
use crate::sim::trace::Traced;

/// Runs `f` on two fresh simulated contexts made with `seed`, runs each to
/// completion (`run()` after `f` returns) and panics naming the first trace
/// event where the two runs differ: code that lets anything but the seed
/// decide what it does (the real clock, a `HashMap`'s order, another
/// thread) is caught here.
///
/// ```
/// use ioctx::{SteadyTimer, sim};
/// use std::time::Duration;
///
/// sim::check_determinism(3, |ctx| {
///     let t = SteadyTimer::new(ctx);
///     t.expires_after(Duration::from_millis(5));
///     t.async_wait(|_| {});
/// });
/// ```
///
/// # Panics
/// When the runs differ, with the index and both versions of the first
/// event that differs (or the first event one run has and the other not).
pub fn check_determinism(seed: u64, f: impl Fn(&IoContext)) {
    let first = recorded_run(seed, &f);
    let second = recorded_run(seed, &f);
    let at = first.iter().zip(&second).position(|(a, b)| a != b).or_else(|| {
        // One run is a prefix of the other.
        (first.len() != second.len()).then(|| first.len().min(second.len()))
    });
    if let Some(i) = at {
        let show =
            |run: &[Traced]| run.get(i).map_or_else(|| "nothing (the run had ended)".to_string(), |t| t.to_string());
        // The seed the runs had (IOCTX_SIM_SEED may have replaced `seed`).
        let seed = crate::sim::SimConfig::new(seed).seed_from_env().seed();
        panic!(
            "ioctx::sim: not deterministic with seed {seed}: event #{} differs: first run: {}; second run: {} \
             ({} and {} events in all)",
            i + 1,
            show(&first),
            show(&second),
            first.len(),
            second.len()
        );
    }
}

/// One run of `f` on a fresh simulated context, every event kept.
fn recorded_run(seed: u64, f: &impl Fn(&IoContext)) -> Vec<Traced> {
    let ctx = IoContext::simulated(seed);
    let sim = ctx.sim().expect("a simulated context has a simulation");
    sim.world().record();
    f(&ctx);
    ctx.run();
    sim.world().take_recording()
}
