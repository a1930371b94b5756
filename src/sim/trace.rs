//! What a simulated run records, and its clock: the events with their
//! virtual time, folded into a hash, and the virtual clock itself. The
//! leaf of the simulation: the network and the world record here.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What became of a datagram, as the trace records it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum DatagramFate {
    /// It left, once.
    Sent,
    /// It left, and a copy of it too.
    Duplicated,
    /// The link lost it.
    Lost,
    /// A partition lost it (when sent or when it would have arrived).
    Partitioned,
    /// It reached its port's receive queue.
    Delivered,
    /// Nobody is bound where it arrived (a connected sender learns it).
    Refused,
    /// Its port is connected to another peer.
    Filtered,
    /// Its port's receive buffer was full.
    Overflowed,
    /// Its host had crashed.
    HostDown,
}

/// What happened on a simulated TCP connection, as the trace records it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TcpStep {
    /// A connection request (SYN) left.
    Syn,
    /// A connection request or its answer was lost (by the link, a
    /// partition or a crashed host).
    SynLost,
    /// A listener answered the SYN (its SYN-ACK left).
    Answered,
    /// The client's ACK arrived: the connection joined the backlog.
    Accepted,
    /// Nobody listens there (or the backlog was full): the connect fails.
    Refused,
    /// The connecting side learned its connection is open.
    Established,
    /// The connecting side gave up after its last SYN, or a writer after
    /// its last resend.
    TimedOut,
    /// Bytes were written into the connection.
    Sent,
    /// Bytes reached the peer's receive buffer.
    Delivered,
    /// The writing side was shut down (FIN sent).
    Fin,
    /// The FIN reached the peer (it reads end of file).
    FinDelivered,
    /// The connection was reset (RST sent).
    Reset,
    /// The reset reached the peer.
    ResetDelivered,
    /// A partition or a held link stopped a segment: it will be resent.
    Held,
    /// The link lost a segment: it will be resent.
    Lost,
}

/// One step of a simulated run, as the trace records it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Event {
    /// A handler was queued by `post`, `defer` or `dispatch` (from outside
    /// the loop), or an operation completed at once.
    Posted,
    /// A pending operation completed with this error code and length.
    Completed { err: i32, n: u64 },
    /// A timer wait ended with this error code.
    TimerEnded { err: i32 },
    /// Virtual time jumped forward to the next deadline or arrival.
    Advanced,
    /// A datagram was sent, delivered or dropped.
    Datagram { fate: DatagramFate, from: SocketAddr, to: SocketAddr, len: u64 },
    /// A step of a TCP connection between two addresses.
    Tcp { step: TcpStep, from: SocketAddr, to: SocketAddr, len: u64 },
}

/// An [`Event`] and the virtual time it happened at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Traced {
    /// Nanoseconds of virtual time since the context was created.
    pub(crate) at_ns: u64,
    pub(crate) event: Event,
}

impl fmt::Display for Traced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {:?}: ", Duration::from_nanos(self.at_ns))?;
        match self.event {
            Event::Posted => write!(f, "a handler was posted"),
            Event::Completed { err, n } => write!(f, "an operation completed with error {err} and length {n}"),
            Event::TimerEnded { err } => write!(f, "a timer wait ended with error {err}"),
            Event::Advanced => write!(f, "virtual time advanced"),
            Event::Datagram { fate, from, to, len } => write!(f, "datagram {from} -> {to} ({len} bytes): {fate:?}"),
            Event::Tcp { step, from, to, len } => write!(f, "tcp {from} -> {to} ({len} bytes): {step:?}"),
        }
    }
}

/// SplitMix64: one step of the generator behind every random stream (small,
/// fast, and the same on every platform).
pub(crate) fn splitmix(state: &Cell<u64>) -> u64 {
    let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
    state.set(s);
    mix(s)
}

/// SplitMix64's finaliser: every bit of `z` moves about half the output's.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An address in one word for the trace's hash: an IPv4 address and the
/// port side by side, an IPv6 address's halves folded (the trace's fold
/// mixes the words; a second mix here would only cost).
fn addr_word(a: SocketAddr) -> u64 {
    let ip = match a.ip() {
        std::net::IpAddr::V4(v4) => u64::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => {
            let x = u128::from(v6);
            (x >> 64) as u64 ^ (x as u64).rotate_left(17)
        }
    };
    ip ^ (u64::from(a.port()) << 48)
}

/// The events of a run: folded into a hash, counted, the last one kept
/// (for messages), and all of them while a recording is on.
pub(crate) struct Trace {
    hash: Cell<u64>,
    events: Cell<u64>,
    last: Cell<Option<Traced>>,
    /// Every event, while `check_determinism` compares two runs.
    recording: RefCell<Option<Vec<Traced>>>,
}

impl Trace {
    pub(crate) fn new(seed: u64) -> Trace {
        Trace { hash: Cell::new(mix(seed)), events: Cell::new(0), last: Cell::new(None), recording: RefCell::new(None) }
    }

    /// Adds `event`, which happened at `at_ns` of virtual time.
    pub(crate) fn record(&self, at_ns: u64, event: Event) {
        let t = Traced { at_ns, event };
        // The event as words, each part in a fixed encoding (never an
        // address in memory or anything else a process chooses).
        let words: [u64; 5] = match event {
            Event::Posted => [1, 0, 0, 0, 0],
            Event::Completed { err, n } => [2, err as u64, n, 0, 0],
            Event::TimerEnded { err } => [3, err as u64, 0, 0, 0],
            Event::Advanced => [4, 0, 0, 0, 0],
            Event::Datagram { fate, from, to, len } => [5 + fate as u64, addr_word(from), addr_word(to), len, 0],
            // Past every datagram fate's word.
            Event::Tcp { step, from, to, len } => [32 + step as u64, addr_word(from), addr_word(to), len, 0],
        };
        // Folded cheaply per word (FxHash's step); `hash` mixes the result
        // well on the way out.
        let mut h = self.hash.get();
        for word in std::iter::once(at_ns).chain(words) {
            h = (h.rotate_left(5) ^ word).wrapping_mul(0x517C_C1B7_2722_0A95);
        }
        self.hash.set(h);
        self.events.set(self.events.get() + 1);
        self.last.set(Some(t));
        log::trace!(target: "ioctx::sim", "#{} {t}", self.events.get());
        if let Some(v) = self.recording.borrow_mut().as_mut() {
            v.push(t);
        }
    }

    pub(crate) fn hash(&self) -> u64 {
        mix(self.hash.get())
    }

    pub(crate) fn events(&self) -> u64 {
        self.events.get()
    }

    /// The last event, for messages.
    pub(crate) fn last_event(&self) -> String {
        match self.last.get() {
            Some(t) => format!("#{} {t}", self.events.get()),
            None => "none".to_string(),
        }
    }

    /// Starts keeping every event (for [`take_recording`](Self::take_recording)).
    pub(crate) fn start_recording(&self) {
        *self.recording.borrow_mut() = Some(Vec::new());
    }

    /// The events kept since [`start_recording`](Self::start_recording).
    pub(crate) fn take_recording(&self) -> Vec<Traced> {
        self.recording.borrow_mut().take().unwrap_or_default()
    }
}

/// Virtual time.
pub(crate) struct Clock {
    /// The instant virtual time counts from (the real time at creation:
    /// `Instant`s cannot be made from nothing). Only differences from it are
    /// ever observed, so runs agree whatever it is.
    origin: Instant,
    /// Virtual nanoseconds since `origin`.
    elapsed_ns: Cell<u64>,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock { origin: Instant::now(), elapsed_ns: Cell::new(0) }
    }

    /// Virtual nanoseconds since creation.
    pub(crate) fn now_ns(&self) -> u64 {
        self.elapsed_ns.get()
    }

    /// Virtual time since creation.
    pub(crate) fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_ns.get())
    }

    /// The clock as an `Instant` (what `Executor::now` returns).
    pub(crate) fn now(&self) -> Instant {
        self.origin + self.elapsed()
    }

    /// Moves the clock `d` forward.
    pub(crate) fn advance(&self, d: Duration) {
        let to = self.elapsed_ns.get().saturating_add(d.as_nanos().min(u128::from(u64::MAX)) as u64);
        self.elapsed_ns.set(to);
    }
}
