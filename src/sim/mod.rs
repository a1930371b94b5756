//! Simulation: the same code on virtual time, deterministic from one seed.
//!
//! A context made by [`IoContext::simulated`] runs handlers, posts, work
//! guards, timers, `cancel_after`, `run_for`/`run_until` and
//! `next_timeout` exactly as a real one does (DESIGN §1.1–§1.6), except that
//! time is virtual: when nothing is ready, the loop jumps straight to the
//! next deadline instead of sleeping, so a test of a 30-second timeout takes
//! microseconds, and the same seed gives the same run every time.
//!
//! Every step is recorded in a trace (each handler queued, each operation
//! and timer wait completed with its result, each jump of virtual time, with
//! its virtual time), whose hash two runs can compare ([`Sim::trace_hash`]);
//! [`check_determinism`] runs a test twice and names the first step where
//! the runs differ. `log` at target `ioctx::sim`, level `trace`, prints
//! every step.
//!
//! Not simulated yet: the network. Sockets of every kind, `SignalSet` and
//! `IoContext::remote` fail on a simulated context with
//! `ErrorKind::Unsupported` (never a panic).
//!
//! ```
//! use ioctx::{IoContext, SteadyTimer};
//! use std::time::Duration;
//!
//! let ctx = IoContext::simulated(7);
//! let timer = SteadyTimer::new(&ctx);
//! timer.expires_after(Duration::from_secs(3600));
//! timer.async_wait(|e| assert!(e.is_ok()));
//! ctx.run(); // returns at once: an hour of virtual time
//! let sim = ctx.sim().unwrap();
//! assert_eq!(sim.now(), Duration::from_secs(3600));
//! assert_eq!(sim.seed(), 7);
//! ```
//!
//! [`IoContext::simulated`]: crate::IoContext::simulated

mod check;
pub(crate) mod world;

pub use check::check_determinism;

use std::fmt;
use std::rc::Rc;
use std::time::Duration;
use world::World;

/// How a simulated context is set up: the seed that fixes the whole run,
/// and limits.
#[derive(Clone, Debug)]
pub struct SimConfig {
    seed: u64,
    time_limit: Option<Duration>,
}

impl SimConfig {
    /// A configuration with `seed` and no time limit.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig { seed, time_limit: None }
    }

    /// A run whose virtual time passes `d` panics, naming the seed and the
    /// last event: a test that would wait for ever fails instead.
    pub fn time_limit(mut self, d: Duration) -> SimConfig {
        self.time_limit = Some(d);
        self
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub(crate) fn world(&self) -> World {
        World::new(self.seed, self.time_limit)
    }
}

/// A handle on a simulated context's world (from `IoContext::sim` or
/// `Executor::sim`): its seed, its virtual time, its random numbers and its
/// trace. Cloning it is cheap; it does not keep the context alive, and once
/// the context is gone it reports the state the run ended in.
#[derive(Clone)]
pub struct Sim {
    world: Rc<World>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim").field("seed", &self.seed()).field("now", &self.now()).finish()
    }
}

impl Sim {
    pub(crate) fn new(world: Rc<World>) -> Sim {
        Sim { world }
    }

    /// The seed the context was made with.
    pub fn seed(&self) -> u64 {
        self.world.seed()
    }

    /// Virtual time since the context was made.
    pub fn now(&self) -> Duration {
        self.world.elapsed()
    }

    /// The next number of a random stream drawn from the seed, for the
    /// application: the same seed gives the same numbers. Apart from the
    /// stream the simulation itself draws from, so the application's draws
    /// do not change what the simulation decides.
    pub fn random_u64(&self) -> u64 {
        self.world.random_u64()
    }

    /// A hash of every event so far (what happened, with its result and its
    /// virtual time). Two runs of the same code with the same seed have the
    /// same hash.
    pub fn trace_hash(&self) -> u64 {
        self.world.trace_hash()
    }

    /// How many events the trace holds.
    pub fn events(&self) -> u64 {
        self.world.events()
    }

    pub(crate) fn world(&self) -> &World {
        &self.world
    }
}
