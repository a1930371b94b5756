//! The simulated world as the loop sees it: its seed, the application's
//! random stream, the time limit, and the wait that takes the place of
//! epoll's (a jump of virtual time, then the network's deliveries and
//! readiness reports). It knows nothing of the context above it: the
//! context reads its clock here, hands it the time a turn would wait, and
//! reports what happened to the trace.

use super::net::{Limits, Link, Medium, Net, PortReady};
use super::trace::{Event, Traced, splitmix};
use std::cell::{Cell, RefMut};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// One simulated context's world.
pub(crate) struct World {
    seed: u64,
    /// A run whose virtual time passes this fails (`SimConfig::time_limit`).
    time_limit: Option<Duration>,
    /// The application's stream (`Sim::random_u64`), apart from the
    /// network's so that the application's draws do not move the faults.
    app_rng: Cell<u64>,
    /// The clock, the trace and the network, shared with the ports.
    medium: Rc<Medium>,
    /// Room for a wait's readiness reports, reused.
    ready_room: Cell<Vec<PortReady>>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.medium.shutdown();
    }
}

impl World {
    pub(crate) fn new(seed: u64, time_limit: Option<Duration>, link: Link, limits: Limits) -> World {
        World {
            seed,
            time_limit,
            // Streams seeded apart: the same seed never gives two streams
            // the same numbers.
            app_rng: Cell::new(super::trace::mix(seed ^ 0x6170_705F_726E_6721)),
            medium: Rc::new(Medium::new(seed, link, limits)),
            ready_room: Cell::new(Vec::new()),
        }
    }

    /// What a new port is made on.
    pub(crate) fn medium(&self) -> &Rc<Medium> {
        &self.medium
    }

    /// The room for a wait's reports (see `Inner::reactor_turn_io`).
    pub(crate) fn take_ready_room(&self) -> Vec<PortReady> {
        self.ready_room.take()
    }

    pub(crate) fn give_ready_room(&self, room: Vec<PortReady>) {
        self.ready_room.set(room);
    }

    /// The network (never borrowed across user code).
    pub(crate) fn net(&self) -> RefMut<'_, Net> {
        self.medium.net()
    }

    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// Virtual time since creation.
    pub(crate) fn elapsed(&self) -> Duration {
        self.medium.clock.elapsed()
    }

    /// The virtual clock as an `Instant` (what `Executor::now` returns).
    pub(crate) fn now(&self) -> Instant {
        self.medium.clock.now()
    }
    /// Takes the place of the wait for readiness: nothing outside the
    /// simulation can happen, so waiting `timeout` means jumping straight to
    /// its end. `None` (no deadline, no delivery, yet work outstanding) can
    /// never end: it panics naming the seed, where a real context would
    /// hang for ever.
    pub(crate) fn wait(&self, timeout: Option<Duration>, ready: &mut Vec<PortReady>) {
        // Readiness that already holds ends the wait at once, as epoll
        // reports it: a new registration, a datagram delivered early (a
        // receive call delivers what is due), a write wait.
        self.medium.deliver_due();
        self.net().ready(ready);
        if !ready.is_empty() {
            return;
        }
        // The next arrival bounds the wait like a deadline.
        let arrival = self.next_arrival();
        let timeout = match (timeout, arrival) {
            (Some(t), Some(a)) => Some(t.min(a)),
            (t, a) => t.or(a),
        };
        let Some(d) = timeout else {
            panic!(
                "ioctx::sim (seed {}): run() would wait for ever at {:?}: work is outstanding (a pending \
                 operation or a work guard) but no timer or delivery is scheduled; last event: {}",
                self.seed,
                self.elapsed(),
                self.last_event()
            );
        };
        if !d.is_zero() {
            self.advance(d);
        }
        self.medium.deliver_due();
        self.net().ready(ready);
    }

    /// Moves virtual time `d` forward, within the time limit.
    fn advance(&self, d: Duration) {
        self.medium.clock.advance(d);
        if let Some(limit) = self.time_limit
            && self.elapsed() > limit
        {
            panic!(
                "ioctx::sim (seed {}): virtual time passed the time limit of {limit:?}; last event: {}",
                self.seed,
                self.last_event()
            );
        }
        self.trace(Event::Advanced);
    }

    /// Virtual time until the network has something to report: zero when
    /// a port is ready now, else until the next datagram in flight arrives.
    pub(crate) fn next_arrival(&self) -> Option<Duration> {
        let net = self.net();
        if net.has_reports() {
            return Some(Duration::ZERO);
        }
        let at = net.next_arrival()?;
        Some(Duration::from_nanos(at.saturating_sub(self.medium.clock.now_ns())))
    }

    /// The next number of the application's random stream.
    pub(crate) fn random_u64(&self) -> u64 {
        splitmix(&self.app_rng)
    }

    /// Adds `event`, now, to the trace.
    pub(crate) fn trace(&self, event: Event) {
        self.medium.trace(event);
    }

    pub(crate) fn trace_hash(&self) -> u64 {
        self.medium.trace.hash()
    }

    pub(crate) fn events(&self) -> u64 {
        self.medium.trace.events()
    }

    fn last_event(&self) -> String {
        self.medium.trace.last_event()
    }

    /// Starts keeping every event (for [`take_recording`](Self::take_recording)).
    pub(crate) fn record(&self) {
        self.medium.trace.start_recording();
    }

    /// The events kept since [`record`](Self::record).
    pub(crate) fn take_recording(&self) -> Vec<Traced> {
        self.medium.trace.take_recording()
    }

    /// Releases a held link (see `Medium::release`).
    pub(crate) fn release(&self, from: std::net::IpAddr, to: std::net::IpAddr) {
        self.medium.release(from, to);
    }
}
