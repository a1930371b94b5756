//! Simulation: the same code on virtual time, deterministic from one seed.
//!
//! A context made by [`IoContext::simulated`] runs handlers, posts, work
//! guards, timers, `cancel_after`, `run_for`/`run_until` and
//! `next_timeout` exactly as a real one does (DESIGN §1.1–§1.6), except that
//! time is virtual: when nothing is ready, the loop jumps straight to the
//! next deadline instead of sleeping, so a test of a 30-second timeout takes
//! microseconds, and the same seed gives the same run every time.
//!
//! UDP runs on an in-memory network: [`UdpSocket`](crate::net::UdpSocket)
//! binds any address (each distinct IP is a host; `0.0.0.0`/`::` binds every
//! host, and such a socket sends from the address the last datagram it got
//! was sent to, or from loopback before it has got one: bind a host's IP to
//! be that host; an IPv6 socket does not take IPv4 datagrams),
//! and datagrams travel with the link's latency, lost, duplicated or held
//! back (reordered) as the seed decides ([`SimConfig`] for the whole
//! network, [`Sim::set_link`] per direction). [`Sim::partition`] loses
//! traffic between hosts until [`Sim::heal`], [`Sim::hold`] stalls a link
//! until [`Sim::release`], [`Sim::crash`] closes a host's sockets. A full
//! receive buffer drops, a datagram above `max_datagram` fails with
//! `MESSAGE_SIZE`, one to a port nobody has bound tells a connected sender
//! `CONNECTION_REFUSED`, a short buffer truncates: the rules S1–S8 hold as
//! on a real socket.
//!
//! TCP runs on the same network: [`TcpListener`](crate::net::TcpListener)
//! and [`TcpStream`](crate::net::TcpStream) (`open`, `bind_to`,
//! `async_connect`). A connect completes when the listener's answer
//! arrives, one round trip after it started, and the accept one latency
//! later, when the client's ACK arrives; where nobody listens it gets
//! `CONNECTION_REFUSED`. A SYN nobody answers (lost, partitioned, or
//! dropped by a full backlog) is sent again 1, 2, 4 .. 32 s after the last,
//! and the connect ends with `TIMED_OUT` 127 s after it started, as Linux's
//! does. Bytes arrive in order after the latency. A segment the link loses,
//! or that meets a partition or a held link, is resent after 200 ms,
//! doubling up to 120 s, so bytes are never lost, duplicated or reordered,
//! only late; after 15 resends (about 15 minutes, as Linux's
//! `tcp_retries2`) the writer's connection ends with `TIMED_OUT`. A writer
//! may have at most the peer's receive buffer ([`SimConfig::recv_buffer`])
//! unread at the peer; beyond, its writes wait until the peer reads.
//! Shutting down writing or closing sends a FIN after the bytes written (the
//! peer reads `EOF`); closing with unread bytes, closing a listener with
//! connections not yet accepted, closing a stream still connecting, and a
//! crash send a reset (the peer reads what had arrived, then gets
//! `CONNECTION_RESET`; a write after the peer's FIN gets `BROKEN_PIPE`).
//! A half-open connection (its SYN-ACK sent, the client's ACK not come)
//! resends its SYN-ACK 1, 2, 4 .. 16 s apart and is dropped after 63 s, as
//! Linux's is; until its ACK comes it is not in the backlog. The model is
//! what an application observes, not TCP's machinery: no congestion
//! window, no Nagle delay, no `TIME_WAIT`, no keep-alive, no simultaneous
//! open (a stream cannot connect to itself), no zero-window probes (a
//! writer waiting for a full peer to read is not timed out by a partition,
//! where Linux would end it after about 15 minutes), and an IPv6 listener
//! on `[::]` does not take IPv4 connections (bind one of each family).
//!
//! Every step is recorded in a trace (each handler queued, each operation
//! and timer wait completed with its result, each datagram sent, delivered
//! or dropped, each TCP step (SYN, accept, refusal, bytes sent and
//! delivered, FIN, reset), each jump of virtual time, with its virtual
//! time), whose hash
//! two runs can compare ([`Sim::trace_hash`]); [`check_determinism`] runs a
//! test twice and names the first step where the runs differ. `log` at
//! target `ioctx::sim`, level `trace`, prints every step. A simulated
//! context dropped during a panic prints its seed, and `IOCTX_SIM_SEED`
//! replays it.
//!
//! What has no simulation (Unix sockets, `SignalSet`,
//! `IoContext::remote`, `from_std`/`release`, socket options beyond
//! `TCP_NODELAY`, the blocking `TcpStream::connect`) fails on a simulated
//! context with `ErrorKind::Unsupported` and a message that says why
//! (never a panic); a synchronous receive or accept that finds nothing
//! returns `WouldBlock` (nothing could arrive while it waited). A simulated context
//! is driven by `run*`: `poll` never moves virtual time, and
//! `next_timeout` counts a datagram in flight as a deadline.
//!
//! ```
//! use ioctx::net::UdpSocket;
//! use ioctx::{IoContext, SimConfig};
//! use std::time::Duration;
//!
//! let net = SimConfig::new(7).latency(Duration::from_millis(20), Duration::from_millis(20)).loss(0.1);
//! let ctx = IoContext::simulated_with(net);
//! let a = UdpSocket::bind(&ctx, "10.0.0.1:5000".parse().unwrap())?;
//! let b = UdpSocket::bind(&ctx, "10.0.0.2:5000".parse().unwrap())?;
//! for i in 0..100u8 {
//!     a.async_send_to(vec![i], b.local_addr()?, |e, _| assert!(e.is_ok()));
//! }
//! let got = std::rc::Rc::new(std::cell::Cell::new(0));
//! fn receive(b: UdpSocket, got: std::rc::Rc<std::cell::Cell<u32>>) {
//!     let again = b.clone();
//!     b.async_receive(vec![0u8; 8], move |e, _, _| {
//!         if e.is_ok() {
//!             got.set(got.get() + 1);
//!             receive(again, got);
//!         }
//!     });
//! }
//! receive(b.clone(), got.clone());
//! ctx.run_for(Duration::from_secs(1)); // a virtual second, in microseconds
//! b.close();
//! let sim = ctx.sim().unwrap();
//! // The seed decided which were lost: the same ones on every run.
//! assert!(got.get() > 70 && got.get() < 100, "{}", got.get());
//! assert_eq!(sim.now(), Duration::from_secs(1));
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! A TCP exchange across a 50 ms link, on virtual time:
//!
//! ```
//! use ioctx::net::{TcpListener, TcpStream};
//! use ioctx::{Error, IoContext, SimConfig};
//! use std::time::Duration;
//!
//! let ms = Duration::from_millis(50);
//! let ctx = IoContext::simulated_with(SimConfig::new(3).latency(ms, ms));
//! let listener = TcpListener::bind(&ctx, "10.0.0.2:80".parse().unwrap())?;
//! listener.async_accept(|e, peer| {
//!     assert_eq!(e, Error::NONE);
//!     peer.unwrap().async_write_some(b"hello".to_vec(), |e, _| assert!(e.is_ok()));
//! });
//! let client = TcpStream::open(&ctx, socket2::Domain::IPV4)?;
//! client.bind_to("10.0.0.1:0".parse().unwrap())?;
//! let c = client.clone();
//! client.async_connect("10.0.0.2:80".parse().unwrap(), move |e| {
//!     assert_eq!(e, Error::NONE);
//!     c.async_read_some(vec![0u8; 16], |e, n, buf| assert_eq!((e, &buf[..n]), (Error::NONE, &b"hello"[..])));
//! });
//! ctx.run();
//! // SYN at 50 ms, SYN-ACK at 100 ms (the connect completes), ACK at
//! // 150 ms (the accept completes and writes), the bytes at 200 ms.
//! assert_eq!(ctx.sim().unwrap().now(), Duration::from_millis(200));
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Timers alone:
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
pub(crate) mod net;
pub(crate) mod trace;
pub(crate) mod world;

pub use check::check_determinism;
pub use net::Link;

use net::{Limits, probability};
use std::fmt;
use std::net::IpAddr;
use std::rc::{Rc, Weak};
use std::time::Duration;
use world::World;

/// How a simulated context is set up: the seed that fixes the whole run,
/// the network's default link, the ports' limits, and a time limit.
#[derive(Clone, Debug)]
pub struct SimConfig {
    seed: u64,
    time_limit: Option<Duration>,
    link: Link,
    limits: Limits,
}

impl SimConfig {
    /// A configuration with `seed`: 1 ms of latency on every link, nothing
    /// lost, duplicated or reordered, receive buffers of 212,992 bytes,
    /// datagrams of at most 65,507 bytes, no time limit.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            time_limit: None,
            link: Link::default(),
            limits: Limits { recv_buffer: 212_992, max_datagram: 65_507 },
        }
    }

    /// Every link's latency, drawn uniformly from `min..=max` per datagram.
    ///
    /// # Panics
    /// When `min > max`.
    pub fn latency(mut self, min: Duration, max: Duration) -> SimConfig {
        self.link = self.link.latency(min, max);
        self
    }

    /// Every datagram is lost with probability `p`.
    ///
    /// # Panics
    /// When `p` is not in [0, 1].
    pub fn loss(mut self, p: f64) -> SimConfig {
        self.link.loss = probability("loss", p);
        self
    }

    /// Every datagram arrives twice with probability `p`.
    ///
    /// # Panics
    /// When `p` is not in [0, 1].
    pub fn duplicate(mut self, p: f64) -> SimConfig {
        self.link.duplicate = probability("duplicate", p);
        self
    }

    /// Every datagram is held back by an extra latency with probability
    /// `p`, so that later ones overtake it.
    ///
    /// # Panics
    /// When `p` is not in [0, 1].
    pub fn reorder(mut self, p: f64) -> SimConfig {
        self.link.reorder = probability("reorder", p);
        self
    }

    /// Bytes each port's receive queue holds; a datagram that does not fit
    /// is dropped, as Linux drops it. Also each TCP stream's receive
    /// buffer: a writer may have this much unread at its peer, and its
    /// writes wait beyond.
    pub fn recv_buffer(mut self, bytes: usize) -> SimConfig {
        self.limits.recv_buffer = bytes;
        self
    }

    /// The largest datagram a send accepts; larger ones fail with
    /// `Error::MESSAGE_SIZE`.
    pub fn max_datagram(mut self, bytes: usize) -> SimConfig {
        self.limits.max_datagram = bytes;
        self
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
        World::new(self.seed, self.time_limit, self.link, self.limits)
    }

    /// The seed of `IOCTX_SIM_SEED` instead, when it is set (a replay).
    ///
    /// # Panics
    /// When it is set to something that is not a number (decimal, or hex
    /// with `0x`).
    pub(crate) fn seed_from_env(mut self) -> SimConfig {
        if let Ok(v) = std::env::var("IOCTX_SIM_SEED") {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            let seed = parsed.unwrap_or_else(|_| panic!("IOCTX_SIM_SEED={v} is not a number"));
            log::debug!(target: "ioctx::sim", "seed {} replaced by IOCTX_SIM_SEED={seed}", self.seed);
            self.seed = seed;
        }
        self
    }
}

/// What a [`Sim`] needs of its context beyond the world: closing the
/// sockets of a crashed host (implemented by the context, which the
/// simulation does not name).
pub(crate) trait Host {
    /// Closes, as `close()` does, every socket whose port is on `ip`.
    fn crash(&self, ip: IpAddr);
}

/// A handle on a simulated context's world (from `IoContext::sim` or
/// `Executor::sim`): its seed, its virtual time, its random numbers and its
/// trace. Cloning it is cheap; it does not keep the context alive, and once
/// the context is gone it reports the state the run ended in.
#[derive(Clone)]
pub struct Sim {
    world: Rc<World>,
    host: Weak<dyn Host>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim").field("seed", &self.seed()).field("now", &self.now()).finish()
    }
}

impl Sim {
    pub(crate) fn new(world: Rc<World>, host: Weak<dyn Host>) -> Sim {
        Sim { world, host }
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

    /// Sets the link from `from` to `to` (one direction).
    pub fn set_link(&self, from: IpAddr, to: IpAddr, link: Link) {
        self.world.net().set_link(from, to, link);
    }

    /// Cuts `a` and `b` apart, both ways: datagrams between them are lost,
    /// when sent or when they would arrive.
    pub fn partition(&self, a: IpAddr, b: IpAddr) {
        let mut net = self.world.net();
        net.partition_oneway(a, b);
        net.partition_oneway(b, a);
    }

    /// Cuts the way from `from` to `to` only.
    pub fn partition_oneway(&self, from: IpAddr, to: IpAddr) {
        self.world.net().partition_oneway(from, to);
    }

    /// Ends every partition.
    pub fn heal(&self) {
        self.world.net().heal();
    }

    /// Holds traffic from `from` to `to`: datagrams wait (a stalled path)
    /// until [`release`](Self::release).
    pub fn hold(&self, from: IpAddr, to: IpAddr) {
        self.world.net().hold(from, to);
    }

    /// Lets held traffic from `from` to `to` flow again, in order.
    pub fn release(&self, from: IpAddr, to: IpAddr) {
        self.world.release(from, to);
    }

    /// Crashes host `ip`: every socket bound on it is closed as by
    /// `close()` (pending operations end with `OPERATION_ABORTED`), and
    /// datagrams on their way to it, or sent to it later, are lost, also for
    /// a socket bound to every host. Binding a socket on `ip` again is a
    /// restart.
    pub fn crash(&self, ip: IpAddr) {
        self.world.medium().crash(ip);
        if let Some(host) = self.host.upgrade() {
            host.crash(ip);
        }
    }
}
