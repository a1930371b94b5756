//! The simulated network: hosts (each distinct IP), UDP ports bound on
//! them, links between hosts with latency, loss, duplication and
//! reordering, partitions and held links, and the datagrams in flight.
//!
//! A [`Port`] is what a simulated UDP socket is: its address, its peer, its
//! receive queue and its pending error. The reactor queues a socket's
//! operations the same way whatever the socket is; it learns of a port's
//! readiness from the world's wait (`World::wait`) instead of epoll,
//! and an operation's transfer calls [`Port::recv`] and [`Port::send`]
//! instead of the kernel.

pub(crate) mod tcp;

use super::trace::{Clock, DatagramFate, Event, Trace};
use crate::sys::msg::{ErrInfo, MsgInfo, SendInfo};
use std::cell::RefMut;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::{Rc, Weak};
use std::time::Duration;

/// The knobs of one direction of a link (or of the whole network's default).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    pub(crate) latency: (Duration, Duration),
    pub(crate) loss: f64,
    pub(crate) duplicate: f64,
    pub(crate) reorder: f64,
}

impl Default for Link {
    /// 1 ms of latency, nothing lost, duplicated or reordered.
    fn default() -> Link {
        Link { latency: (Duration::from_millis(1), Duration::from_millis(1)), loss: 0.0, duplicate: 0.0, reorder: 0.0 }
    }
}

/// A probability, checked: anything outside [0, 1] (or NaN) is a bug in
/// the test that set it.
pub(crate) fn probability(what: &str, p: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) {
        panic!("ioctx::sim: {what} must be a probability in [0, 1], not {p}");
    }
    p
}

impl Link {
    /// A link with the default knobs (1 ms, nothing lost).
    pub fn new() -> Link {
        Link::default()
    }

    /// Latency drawn uniformly from `min..=max` for each datagram.
    ///
    /// # Panics
    /// When `min > max`.
    pub fn latency(mut self, min: Duration, max: Duration) -> Link {
        assert!(min <= max, "ioctx::sim: latency min {min:?} is above max {max:?}");
        self.latency = (min, max);
        self
    }

    /// Each datagram is lost with probability `p`.
    ///
    /// # Panics
    /// When `p` is not in [0, 1].
    pub fn loss(mut self, p: f64) -> Link {
        self.loss = probability("loss", p);
        self
    }

    /// Each datagram arrives twice with probability `p` (the copy with a
    /// latency of its own).
    ///
    /// # Panics
    /// When `p` is not in [0, 1].
    pub fn duplicate(mut self, p: f64) -> Link {
        self.duplicate = probability("duplicate", p);
        self
    }

    /// Each datagram is held back by an extra latency with probability `p`,
    /// so that later ones overtake it.
    ///
    /// # Panics
    /// When `p` is not in [0, 1].
    pub fn reorder(mut self, p: f64) -> Link {
        self.reorder = probability("reorder", p);
        self
    }
}

/// Limits of every port.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Bytes a port's receive queue holds; a datagram that does not fit is dropped.
    pub(crate) recv_buffer: usize,
    /// The largest datagram a send accepts (`MESSAGE_SIZE` beyond).
    pub(crate) max_datagram: usize,
}

/// Something due at a time of its own, kept in a heap: earliest first,
/// and at the same time in the order sent (datagrams and TCP's events share
/// the one counter, so the two interleave deterministically).
pub(crate) struct Due<T> {
    /// Virtual nanoseconds.
    at: u64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Due<T> {
    fn eq(&self, other: &Due<T>) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<T> Eq for Due<T> {}

impl<T> PartialOrd for Due<T> {
    fn partial_cmp(&self, other: &Due<T>) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Earliest first in a `BinaryHeap` (a max-heap): the order is reversed.
impl<T> Ord for Due<T> {
    fn cmp(&self, other: &Due<T>) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A datagram on its way.
struct Datagram {
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
    /// The sender, told of a refusal (simulated ICMP) if it is connected.
    sender: Weak<Port>,
}

type Flight = Due<Datagram>;

/// A readiness report of a simulated port.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PortReady {
    /// The reactor's token for the port's socket.
    pub(crate) token: usize,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// An error is pending (what an error wait waits for).
    pub(crate) error: bool,
}

/// What the ports and the world share: the virtual clock, the trace and
/// the network.
pub(crate) struct Medium {
    pub(crate) clock: Clock,
    pub(crate) trace: Trace,
    net: RefCell<Net>,
}

impl Medium {
    pub(crate) fn new(seed: u64, link: Link, limits: Limits) -> Medium {
        Medium { clock: Clock::new(), trace: Trace::new(seed), net: RefCell::new(Net::new(seed, link, limits)) }
    }

    /// The network (never borrowed across user code).
    pub(crate) fn net(&self) -> RefMut<'_, Net> {
        self.net.borrow_mut()
    }

    /// Adds `event`, now, to the trace.
    pub(crate) fn trace(&self, event: Event) {
        self.trace.record(self.clock.now_ns(), event);
    }
}

/// What the network holds besides the ports themselves.
pub(crate) struct Net {
    pub(crate) default_link: Link,
    pub(crate) limits: Limits,
    links: BTreeMap<(IpAddr, IpAddr), Link>,
    /// One-way partitions: a datagram from the first to the second is lost.
    cut: BTreeSet<(IpAddr, IpAddr)>,
    /// Held links: datagrams wait here, in order, until released.
    held: BTreeMap<(IpAddr, IpAddr), VecDeque<Flight>>,
    /// Bound addresses (an unspecified IP binds the port on every host).
    bound: BTreeMap<SocketAddr, Weak<Port>>,
    /// Registered endpoints by the reactor's token, for readiness.
    registered: BTreeMap<usize, Registered>,
    /// Tokens of registered ports with something new to report (an
    /// arrival, an error, a new registration): a wait looks at these only.
    dirty: Vec<usize>,
    /// In flight, earliest arrival first (then the order sent).
    flights: BinaryHeap<Flight>,
    /// Datagram buffers given back by receives, for the next sends.
    pool: Vec<Vec<u8>>,
    /// Crashed hosts, until a socket binds their IP again.
    down: BTreeSet<IpAddr>,
    /// TCP: listeners, bound addresses and segments on their way.
    tcp: tcp::Tcp,
    /// Everything sent (datagrams and TCP events), in order: the tie-break
    /// of two arrivals at the same time.
    sent: u64,
    next_port: u16,
    /// The network's random stream (loss, latency, ...), apart from the application's.
    rng: Cell<u64>,
}

/// What a queued datagram costs a receive buffer beyond its bytes (Linux
/// counts its buffer's bookkeeping too), so that empty datagrams fill a
/// buffer as well.
const DATAGRAM_OVERHEAD: usize = 64;

/// An address as the network compares it: an IPv6 address's flow label
/// and scope are not part of where it goes.
pub(crate) fn normal(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => SocketAddr::new(IpAddr::V6(*v6.ip()), v6.port()),
        v4 => v4,
    }
}

/// The first port an ephemeral bind picks (then upwards, wrapping within the range).
const EPHEMERAL: (u16, u16) = (49152, 65535);

impl Net {
    pub(crate) fn new(seed: u64, default_link: Link, limits: Limits) -> Net {
        Net {
            default_link,
            limits,
            links: BTreeMap::new(),
            cut: BTreeSet::new(),
            held: BTreeMap::new(),
            bound: BTreeMap::new(),
            registered: BTreeMap::new(),
            dirty: Vec::new(),
            flights: BinaryHeap::new(),
            pool: Vec::new(),
            down: BTreeSet::new(),
            tcp: tcp::Tcp::default(),
            sent: 0,
            next_port: EPHEMERAL.0,
            rng: Cell::new(super::trace::mix(seed ^ 0x6E65_745F_726E_6721)),
        }
    }

    fn random(&self) -> u64 {
        super::trace::splitmix(&self.rng)
    }

    /// True with probability `p` (no draw at all for 0 and 1, so that a
    /// lossless network's stream is not moved by loss checks).
    fn chance(&self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        ((self.random() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn latency(&self, link: &Link) -> u64 {
        let ns = |d: Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
        let (min, max) = (ns(link.latency.0), ns(link.latency.1));
        match (max - min).checked_add(1) {
            _ if min == max => min,
            Some(span) => min + self.random() % span,
            None => min.saturating_add(self.random()), // the whole range of u64
        }
    }

    fn link(&self, from: IpAddr, to: IpAddr) -> Link {
        self.links.get(&(from, to)).copied().unwrap_or(self.default_link)
    }

    pub(crate) fn set_link(&mut self, from: IpAddr, to: IpAddr, link: Link) {
        self.links.insert((from, to), link);
    }

    pub(crate) fn partition_oneway(&mut self, from: IpAddr, to: IpAddr) {
        self.cut.insert((from, to));
    }

    /// Ends every partition (held links stay held until released).
    pub(crate) fn heal(&mut self) {
        self.cut.clear();
    }

    pub(crate) fn hold(&mut self, from: IpAddr, to: IpAddr) {
        self.held.entry((from, to)).or_default();
    }

    fn is_cut(&self, from: IpAddr, to: IpAddr) -> bool {
        !self.cut.is_empty() && self.cut.contains(&(from, to))
    }

    /// The port a datagram to `to` reaches: bound on that host, or on every host.
    fn port_for(&self, to: SocketAddr) -> Option<Rc<Port>> {
        let any = SocketAddr::new(unspecified(to.ip()), to.port());
        self.bound.get(&to).or_else(|| self.bound.get(&any)).and_then(Weak::upgrade)
    }

    /// Binds `port` to `addr`, picking a free port number for port 0.
    fn bind(&mut self, port: &Rc<Port>, addr: SocketAddr) -> io::Result<SocketAddr> {
        self.bound.retain(|_, p| p.strong_count() > 0);
        let addr = choose(&mut self.next_port, &self.bound, addr)?;
        self.bound.insert(addr, Rc::downgrade(port));
        self.down.remove(&addr.ip()); // a restart
        Ok(addr)
    }

    fn unbind(&mut self, addr: SocketAddr) {
        self.bound.remove(&addr);
    }

    pub(crate) fn register(&mut self, token: usize, endpoint: Registered) {
        self.registered.insert(token, endpoint);
        self.dirty.push(token);
    }

    pub(crate) fn deregister(&mut self, token: usize) {
        self.registered.remove(&token);
    }

    /// A registered port has something to report (the next wait returns
    /// at once).
    pub(crate) fn has_reports(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The arrival time of the next datagram in flight.
    pub(crate) fn next_arrival(&self) -> Option<u64> {
        let datagram = self.flights.peek().map(|f| f.at);
        match self.tcp.next_at() {
            Some(t) => Some(datagram.map_or(t, |d| d.min(t))),
            None => datagram,
        }
    }

    /// Host `ip` is down: every datagram in flight or held to it is lost
    /// (returned, to be traced), and so is every later one until a socket
    /// binds `ip` again (a restart).
    fn crash(&mut self, ip: IpAddr) -> Vec<(SocketAddr, SocketAddr, usize)> {
        self.down.insert(ip);
        let mut lost = Vec::new();
        let mut keep = |f: &Flight| {
            let hit = f.item.to.ip() == ip;
            if hit {
                lost.push((f.item.from, f.item.to, f.item.data.len()));
            }
            !hit
        };
        self.flights.retain(&mut keep);
        for q in self.held.values_mut() {
            q.retain(&mut keep);
        }
        lost.sort(); // the heap's order is not the order sent
        lost
    }

    /// Registered ports by token, in token order, that have something to
    /// report, with what holds.
    pub(crate) fn ready(&mut self, out: &mut Vec<PortReady>) {
        if self.dirty.is_empty() {
            return;
        }
        self.dirty.sort_unstable();
        self.dirty.dedup();
        for i in 0..self.dirty.len() {
            let token = self.dirty[i];
            let Some(endpoint) = self.registered.get(&token) else { continue };
            if let Some((readable, writable, error)) = endpoint.report() {
                out.push(PortReady { token, readable, writable, error });
            }
        }
        self.dirty.clear(); // keeps its room
    }

    /// A buffer for a datagram of `len` bytes, from the pool if it has one.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b.reserve(len);
        b
    }

    /// Takes back a datagram's buffer (a few are kept; large ones are not).
    fn give_back(&mut self, b: Vec<u8>) {
        if self.pool.len() < 64 && b.capacity() <= 4096 {
            self.pool.push(b);
        }
    }
}

/// `addr`, or for port 0 a free port number on its IP, unless `table`
/// holds it already (`AddrInUse`). Ephemeral ports are handed out in turn
/// from `next`, so the same run picks the same ones.
fn choose<V>(next: &mut u16, table: &BTreeMap<SocketAddr, V>, addr: SocketAddr) -> io::Result<SocketAddr> {
    if addr.port() != 0 {
        return if in_use(table, addr) { Err(io::Error::from_raw_os_error(libc::EADDRINUSE)) } else { Ok(addr) };
    }
    let span = u32::from(EPHEMERAL.1 - EPHEMERAL.0) + 1;
    (0..span)
        .find_map(|_| {
            let n = *next;
            *next = if n == EPHEMERAL.1 { EPHEMERAL.0 } else { n + 1 };
            let candidate = SocketAddr::new(addr.ip(), n);
            (!in_use(table, candidate)).then_some(candidate)
        })
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EADDRINUSE))
}

/// `table` holds `addr`: the same address, or the same port number on every
/// host, or (for an unspecified IP) on any host.
fn in_use<V>(table: &BTreeMap<SocketAddr, V>, addr: SocketAddr) -> bool {
    let any = SocketAddr::new(unspecified(addr.ip()), addr.port());
    if table.contains_key(&addr) || table.contains_key(&any) {
        return true;
    }
    addr.ip().is_unspecified() && table.keys().any(|a| a.port() == addr.port() && a.is_ipv4() == addr.is_ipv4())
}

/// The unspecified address of `ip`'s family.
fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// The loopback address of `ip`'s family (the source of a datagram sent by
/// a port bound to every host).
fn loopback(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// How an endpoint is registered with the reactor.
#[derive(Clone, Copy)]
struct Reg {
    token: usize,
    read: bool,
    write: bool,
    edge: bool,
}

/// What a wait asks of a registered endpoint: its readiness now, as
/// (readable, writable, error), or `None` when there is nothing to report.
pub(crate) trait Report {
    fn report(&self) -> Option<(bool, bool, bool)>;
}

/// A registered endpoint, as the network keeps it (weakly: closing it
/// deregisters it, and a wait must not keep it alive). An enum rather than
/// a `dyn Report`: each wait asks every endpoint with news, and a direct
/// call is the cheaper one.
pub(crate) enum Registered {
    Udp(Weak<Port>),
    Stream(Weak<tcp::Stream>),
    Listener(Weak<tcp::Listener>),
}

impl Registered {
    fn report(&self) -> Option<(bool, bool, bool)> {
        match self {
            Registered::Udp(p) => p.upgrade()?.report(),
            Registered::Stream(s) => s.upgrade()?.report(),
            Registered::Listener(l) => l.upgrade()?.report(),
        }
    }
}

/// An endpoint's registration and its edges: what epoll would report for
/// it, level- or edge-triggered.
pub(crate) struct Watch {
    reg: Cell<Option<Reg>>,
    /// Report the current readiness at the next wait (a registration was
    /// made or changed, as epoll re-checks on `EPOLL_CTL_MOD`).
    armed: Cell<bool>,
    /// Something changed since the last report (an edge).
    changed: Cell<bool>,
}

impl Watch {
    pub(crate) fn new() -> Watch {
        Watch { reg: Cell::new(None), armed: Cell::new(false), changed: Cell::new(false) }
    }

    /// Registers (or re-registers) `endpoint` under `token`.
    pub(crate) fn register(
        &self,
        net: &mut Net,
        endpoint: Registered,
        token: usize,
        read: bool,
        write: bool,
        edge: bool,
    ) {
        self.reg.set(Some(Reg { token, read, write, edge }));
        self.armed.set(true);
        net.register(token, endpoint);
    }

    pub(crate) fn deregister(&self, net: &mut Net, token: usize) {
        self.reg.set(None);
        net.deregister(token);
    }

    /// Something changed: the next wait looks at this endpoint.
    pub(crate) fn changed(&self, net: &mut Net) {
        self.changed.set(true);
        if let Some(reg) = self.reg.get() {
            net.dirty.push(reg.token);
        }
    }

    /// What a wait reports, given the endpoint's readiness now: a
    /// level-triggered registration reports what holds, an edge-triggered
    /// one only after a change or a (re-)registration. An error is
    /// reported whatever the interest, as epoll reports `EPOLLERR`.
    pub(crate) fn report(&self, readable: bool, writable: bool, error: bool) -> Option<(bool, bool, bool)> {
        let reg = self.reg.get()?;
        let (armed, changed) = (self.armed.replace(false), self.changed.replace(false));
        let fresh = !reg.edge || armed || changed;
        let read = reg.read && readable;
        let write = reg.write && writable;
        ((read || write || error) && fresh).then_some((readable, writable, error))
    }
}

/// A simulated UDP socket.
pub(crate) struct Port {
    world: Rc<Medium>,
    v6: bool,
    local: Cell<Option<SocketAddr>>,
    peer: Cell<Option<SocketAddr>>,
    /// Each datagram with its sender and the IP it was sent to.
    queue: RefCell<VecDeque<(Vec<u8>, SocketAddr, IpAddr)>>,
    queued_bytes: Cell<usize>,
    /// An error the next send or receive reports (a refusal: ICMP port unreachable).
    error: Cell<Option<i32>>,
    watch: Watch,
    /// The IP the last datagram received here was sent to (what a socket
    /// bound to every host answers from).
    reached_at: Cell<Option<IpAddr>>,
    /// `set_recv_pktinfo`: a receive with metadata reports where each
    /// datagram was sent to.
    pktinfo: Cell<bool>,
    /// `set_recv_errors`: refusals go to `reports` (a simulated error
    /// queue), connected or not, instead of to the next operation.
    recv_errors: Cell<bool>,
    reports: RefCell<VecDeque<ErrInfo>>,
    closed: Cell<bool>,
}

impl Port {
    /// An unbound port of the family of `v6`.
    pub(crate) fn new(world: &Rc<Medium>, v6: bool) -> Rc<Port> {
        Rc::new(Port {
            world: world.clone(),
            v6,
            local: Cell::new(None),
            peer: Cell::new(None),
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            error: Cell::new(None),
            watch: Watch::new(),
            reached_at: Cell::new(None),
            pktinfo: Cell::new(false),
            recv_errors: Cell::new(false),
            reports: RefCell::new(VecDeque::new()),
            closed: Cell::new(false),
        })
    }

    fn family_ok(&self, addr: SocketAddr) -> io::Result<()> {
        if addr.is_ipv6() == self.v6 { Ok(()) } else { Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)) }
    }

    /// Binds to `addr` (port 0: a free one); an unspecified IP binds every host.
    pub(crate) fn bind(self: &Rc<Self>, addr: SocketAddr) -> io::Result<()> {
        self.family_ok(addr)?;
        if self.local.get().is_some() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let addr = self.world.net().bind(self, normal(addr))?;
        log::debug!(target: "ioctx::sim", "udp bound {addr}");
        self.local.set(Some(addr));
        Ok(())
    }

    /// Binds to a free port on every host if not bound yet (as the kernel
    /// does on a first send or connect).
    fn autobind(self: &Rc<Self>) -> io::Result<SocketAddr> {
        if let Some(a) = self.local.get() {
            return Ok(a);
        }
        let any = if self.v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
        self.bind(SocketAddr::new(any, 0))?;
        Ok(self.local.get().expect("just bound"))
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local.get().unwrap_or_else(|| {
            let any = if self.v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
            SocketAddr::new(any, 0)
        }))
    }

    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.peer.get().ok_or_else(|| io::Error::from_raw_os_error(libc::ENOTCONN))
    }

    /// Sends go to `addr` by default, and only its datagrams are received.
    pub(crate) fn connect(self: &Rc<Self>, addr: SocketAddr) -> io::Result<()> {
        self.family_ok(addr)?;
        self.autobind()?;
        // Datagrams already queued from others stay, as Linux keeps them;
        // only later arrivals are filtered.
        self.peer.set(Some(normal(addr)));
        Ok(())
    }

    /// Takes the pending error, if any.
    fn take_error(&self) -> io::Result<()> {
        match self.error.take() {
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => Ok(()),
        }
    }

    /// The length of the next datagram (0 when none).
    pub(crate) fn available(&self) -> usize {
        self.world.deliver_due();
        self.queue.borrow().front().map_or(0, |d| d.0.len())
    }

    /// Receives the next datagram into `bufs` (truncated to them, as the
    /// kernel does); `peek` leaves it queued. `WouldBlock` when none.
    pub(crate) fn recv(&self, bufs: &mut [std::io::IoSliceMut<'_>], peek: bool) -> io::Result<(usize, SocketAddr)> {
        self.take(bufs, peek).map(|(n, from, _, _)| (n, from))
    }

    pub(crate) fn set_recv_pktinfo(&self, on: bool) {
        self.pktinfo.set(on);
    }

    pub(crate) fn set_recv_errors(&self, on: bool) {
        self.recv_errors.set(on);
    }

    /// The oldest error report (a refusal), as the kernel's error queue
    /// would give it.
    pub(crate) fn take_report(&self) -> Option<ErrInfo> {
        self.reports.borrow_mut().pop_front()
    }

    /// A datagram this port sent to `to` found no socket there (simulated
    /// ICMP port unreachable, answered by `to`'s host).
    fn refused(&self, to: SocketAddr) {
        if self.closed.get() {
            return;
        }
        if self.recv_errors.get() {
            let mut reports = self.reports.borrow_mut();
            if reports.len() < 64 {
                let report = ErrInfo { dest: Some(to), reporter: Some(to.ip()), errno: libc::ECONNREFUSED, mtu: None };
                reports.push_back(report);
            }
        } else if self.peer.get() == Some(to) {
            // A connected sender learns it at its next operation.
            self.error.set(Some(libc::ECONNREFUSED));
        } else {
            return;
        }
        self.mark();
    }

    /// [`recv`](Self::recv), with the address the datagram was sent to and
    /// whether it was truncated.
    pub(crate) fn recv_msg(&self, bufs: &mut [std::io::IoSliceMut<'_>], peek: bool) -> io::Result<MsgInfo> {
        let (len, from, to_ip, truncated) = self.take(bufs, peek)?;
        let local = self.pktinfo.get().then_some(to_ip);
        Ok(MsgInfo { len, from: Some(from), local, truncated, ..MsgInfo::default() })
    }

    /// The next datagram into `bufs`: its length there, its sender, where
    /// it was sent, whether it was truncated.
    #[inline]
    fn take(&self, bufs: &mut [std::io::IoSliceMut<'_>], peek: bool) -> io::Result<(usize, SocketAddr, IpAddr, bool)> {
        if self.closed.get() {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        self.world.deliver_due();
        self.take_error()?;
        let mut q = self.queue.borrow_mut();
        let Some((data, from, to_ip)) = q.front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let off = crate::buffer::scatter(data, bufs);
        let got = (off, *from, *to_ip, off < data.len());
        if !peek {
            let (data, _, to_ip) = q.pop_front().expect("front seen");
            // The reply to this datagram leaves from where it arrived (the
            // last one taken, not the last one queued).
            self.reached_at.set(Some(to_ip));
            self.queued_bytes.set(self.queued_bytes.get() - (data.len() + DATAGRAM_OVERHEAD));
            self.world.net().give_back(data);
        }
        Ok(got)
    }

    /// Sends the gathered `data` to `dest`, or to the peer.
    /// `flags` are a send's `MSG_*` flags: out-of-band data is refused, as
    /// UDP refuses it; the others change nothing in the simulation.
    pub(crate) fn send(
        self: &Rc<Self>,
        data: &[std::io::IoSlice<'_>],
        dest: Option<SocketAddr>,
        flags: i32,
    ) -> io::Result<usize> {
        self.send_with(data, dest, flags, None)
    }

    /// [`send`](Self::send) with what a sender may set per datagram: its
    /// source address, and a segment size (the datagram leaves as several,
    /// as with UDP segmentation offload). ECN marks are not simulated.
    pub(crate) fn send_msg(
        self: &Rc<Self>,
        data: &[std::io::IoSlice<'_>],
        dest: Option<SocketAddr>,
        info: &SendInfo,
    ) -> io::Result<usize> {
        self.send_with(data, dest, 0, Some(info))
    }

    // Inlined into both callers: `send` pays nothing for `info`.
    #[inline(always)]
    fn send_with(
        self: &Rc<Self>,
        data: &[std::io::IoSlice<'_>],
        dest: Option<SocketAddr>,
        flags: i32,
        info: Option<&SendInfo>,
    ) -> io::Result<usize> {
        if self.closed.get() {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if flags & libc::MSG_OOB != 0 {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        // An explicit destination of port 0 is refused (EINVAL, before a
        // pending error is reported); a peer connected at port 0 is not, as
        // on Linux.
        if dest.is_some_and(|d| d.port() == 0) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.take_error()?;
        let to = match dest.map(normal).or(self.peer.get()) {
            Some(to) => to,
            None => return Err(io::Error::from_raw_os_error(libc::EDESTADDRREQ)),
        };
        self.family_ok(to)?;
        let len: usize = data.iter().map(|d| d.len()).sum();
        let net_limit = self.world.net().limits.max_datagram;
        let segment = info.and_then(|i| i.segment).map_or(len.max(1), usize::from);
        // At most 64 segments, as Linux's UDP_MAX_SEGMENTS.
        if info.is_some_and(|i| i.segment.is_some()) && len > segment * 64 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if segment.min(len) > net_limit {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        let local = self.autobind()?;
        // Bound to every host: the reply goes out from the address the last
        // datagram came to (a server answering its clients), or, before
        // any, from loopback. A socket meant to be one host binds its IP.
        // A source the sender names (IP_PKTINFO) goes first.
        let from_ip = match (info.and_then(|i| i.from_ip), local.ip().is_unspecified(), self.reached_at.get()) {
            (Some(ip), ..) if ip.is_ipv6() != self.v6 => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
            (Some(ip), ..) => ip,
            (None, false, _) => local.ip(),
            (None, true, Some(ip)) => ip,
            (None, true, None) => loopback(to.ip()),
        };
        let from = SocketAddr::new(from_ip, local.port());
        let mut bytes = self.world.net().buffer(len);
        for d in data {
            bytes.extend_from_slice(d);
        }
        if segment >= len {
            self.world.launch(from, to, bytes, Rc::downgrade(self));
        } else {
            for chunk in bytes.chunks(segment) {
                self.world.launch(from, to, chunk.to_vec(), Rc::downgrade(self));
            }
        }
        Ok(len)
    }

    /// Closes the port: unbound, nothing more is received.
    pub(crate) fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        let mut net = self.world.net();
        if let Some(a) = self.local.get() {
            net.unbind(a);
        }
        self.queue.borrow_mut().clear();
        self.queued_bytes.set(0);
    }

    pub(crate) fn register(self: &Rc<Self>, token: usize, read: bool, write: bool, edge: bool) {
        self.watch.register(&mut self.world.net(), Registered::Udp(Rc::downgrade(self)), token, read, write, edge);
    }

    /// Has the next wait look at this port (something changed).
    fn mark(&self) {
        self.watch.changed(&mut self.world.net());
    }

    pub(crate) fn deregister(&self, token: usize) {
        self.watch.deregister(&mut self.world.net(), token);
    }

    /// A datagram arrives: queued unless the buffer is full or it is not
    /// from the connected peer.
    fn deliver(&self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) -> DatagramFate {
        if self.closed.get() {
            return DatagramFate::Refused;
        }
        if self.peer.get().is_some_and(|p| p != from) {
            return DatagramFate::Filtered;
        }
        let limit = self.world.net().limits.recv_buffer;
        let cost = data.len() + DATAGRAM_OVERHEAD;
        if self.queued_bytes.get() + cost > limit {
            return DatagramFate::Overflowed;
        }
        self.queued_bytes.set(self.queued_bytes.get() + cost);
        self.queue.borrow_mut().push_back((data, from, to.ip()));
        self.mark();
        DatagramFate::Delivered
    }
}

/// A port is always writable (sends never wait in the simulation); a
/// pending error (a refusal) makes it readable too, as on Linux.
impl Report for Port {
    fn report(&self) -> Option<(bool, bool, bool)> {
        let error = self.error.get().is_some() || !self.reports.borrow().is_empty();
        let readable = !self.queue.borrow().is_empty() || self.error.get().is_some();
        self.watch.report(readable, true, error)
    }
}

/// A simulated socket of any kind, as the reactor holds it: what it
/// registers, transfers through and closes.
#[derive(Clone)]
pub(crate) enum Endpoint {
    Udp(Rc<Port>),
    Stream(Rc<tcp::Stream>),
    Listener(Rc<tcp::Listener>),
}

impl Endpoint {
    pub(crate) fn register(&self, token: usize, read: bool, write: bool, edge: bool) {
        match self {
            Endpoint::Udp(p) => p.register(token, read, write, edge),
            Endpoint::Stream(s) => s.register(token, read, write, edge),
            Endpoint::Listener(l) => l.register(token, read, write, edge),
        }
    }

    pub(crate) fn deregister(&self, token: usize) {
        match self {
            Endpoint::Udp(p) => p.deregister(token),
            Endpoint::Stream(s) => s.deregister(token),
            Endpoint::Listener(l) => l.deregister(token),
        }
    }

    pub(crate) fn close(&self) {
        match self {
            Endpoint::Udp(p) => p.close(),
            Endpoint::Stream(s) => s.close(),
            Endpoint::Listener(l) => l.close(),
        }
    }

    /// The local address (what a crash of a host matches).
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Endpoint::Udp(p) => p.local_addr(),
            Endpoint::Stream(s) => s.local_addr(),
            Endpoint::Listener(l) => l.local_addr(),
        }
    }

    /// Receives a datagram, or bytes of a stream (their sender: the peer).
    pub(crate) fn recv(&self, bufs: &mut [std::io::IoSliceMut<'_>], peek: bool) -> io::Result<(usize, SocketAddr)> {
        match self {
            Endpoint::Udp(p) => p.recv(bufs, peek),
            Endpoint::Stream(s) => Ok((s.read(bufs, peek)?, s.peer())),
            Endpoint::Listener(_) => Err(io::Error::from_raw_os_error(libc::ENOTCONN)),
        }
    }

    /// Sends a datagram, or bytes into a stream (which has no destination
    /// but its peer: an address given is ignored, as Linux ignores it).
    pub(crate) fn send(
        &self,
        data: &[std::io::IoSlice<'_>],
        dest: Option<SocketAddr>,
        flags: i32,
    ) -> io::Result<usize> {
        match self {
            Endpoint::Udp(p) => p.send(data, dest, flags),
            Endpoint::Stream(s) => s.write(data),
            Endpoint::Listener(_) => Err(io::Error::from_raw_os_error(libc::ENOTCONN)),
        }
    }

    /// A receive with metadata: a datagram's, or a stream read's (its
    /// sender, the peer).
    pub(crate) fn recv_msg(&self, bufs: &mut [std::io::IoSliceMut<'_>], peek: bool) -> io::Result<MsgInfo> {
        match self {
            Endpoint::Udp(p) => p.recv_msg(bufs, peek),
            Endpoint::Stream(s) => Ok(MsgInfo { len: s.read(bufs, peek)?, from: Some(s.peer()), ..MsgInfo::default() }),
            Endpoint::Listener(_) => Err(io::Error::from_raw_os_error(libc::ENOTCONN)),
        }
    }

    /// A send with control messages (a datagram's; a stream has none).
    pub(crate) fn send_msg(
        &self,
        data: &[std::io::IoSlice<'_>],
        dest: Option<SocketAddr>,
        info: &SendInfo,
    ) -> io::Result<usize> {
        match self {
            Endpoint::Udp(p) => p.send_msg(data, dest, info),
            Endpoint::Stream(_) | Endpoint::Listener(_) => Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
        }
    }
}

impl Medium {
    /// Sends a datagram into the network: the link decides its fate and
    /// latency (and maybe a copy's).
    fn launch(&self, from: SocketAddr, to: SocketAddr, data: Vec<u8>, sender: Weak<Port>) {
        let mut net = self.net();
        let len = data.len();
        let (fi, ti) = (from.ip(), to.ip());
        if !net.down.is_empty() && net.down.contains(&fi) {
            // A crashed host sends nothing (a socket bound to every host
            // answering from the crashed address, until the host restarts).
            drop(net);
            self.trace(Event::Datagram { fate: DatagramFate::HostDown, from, to, len: len as u64 });
            return;
        }
        if net.is_cut(fi, ti) {
            drop(net);
            self.trace(Event::Datagram { fate: DatagramFate::Partitioned, from, to, len: len as u64 });
            return;
        }
        let link = net.link(fi, ti);
        if net.chance(link.loss) {
            drop(net);
            self.trace(Event::Datagram { fate: DatagramFate::Lost, from, to, len: len as u64 });
            return;
        }
        let copies = if net.chance(link.duplicate) { 2 } else { 1 };
        let now = self.clock.now_ns();
        let held = net.held.contains_key(&(fi, ti));
        let mut data = Some(data);
        for i in 0..copies {
            let mut lat = net.latency(&link);
            if net.chance(link.reorder) {
                lat = lat.saturating_add(net.latency(&link).max(1));
            }
            // The last copy takes the bytes; a duplicate gets a clone.
            let bytes =
                if i + 1 == copies { data.take().unwrap_or_default() } else { data.clone().unwrap_or_default() };
            net.sent += 1;
            let item = Datagram { from, to, data: bytes, sender: sender.clone() };
            let f = Flight { at: now.saturating_add(lat), seq: net.sent, item };
            if held {
                net.held.entry((fi, ti)).or_default().push_back(f);
            } else {
                net.flights.push(f);
            }
        }
        drop(net);
        let fate = if copies == 2 { DatagramFate::Duplicated } else { DatagramFate::Sent };
        self.trace(Event::Datagram { fate, from, to, len: len as u64 });
    }

    /// Releases a held link: its datagrams leave now, in order, each with a
    /// fresh latency.
    pub(crate) fn release(&self, from: IpAddr, to: IpAddr) {
        let mut net = self.net();
        let Some(q) = net.held.remove(&(from, to)) else { return };
        let link = net.link(from, to);
        let now = self.clock.now_ns();
        // In order: each leaves no earlier than the one before it.
        let mut at = now;
        for mut f in q {
            at = at.max(now.saturating_add(net.latency(&link)));
            net.sent += 1;
            (f.at, f.seq) = (at, net.sent);
            net.flights.push(f);
        }
    }

    /// Lets go of what the network keeps alive (TCP segments on their way
    /// hold their stream, which holds this medium): called when the world
    /// goes, so the two are freed.
    pub(crate) fn shutdown(&self) {
        let events = self.net().tcp.take_events();
        drop(events);
    }

    /// Crashes host `ip` (see `Sim::crash`): what was on its way to it is
    /// lost, and traced so.
    pub(crate) fn crash(&self, ip: IpAddr) {
        let lost = self.net().crash(ip);
        for (from, to, len) in lost {
            self.trace(Event::Datagram { fate: DatagramFate::HostDown, from, to, len: len as u64 });
        }
    }

    /// Delivers every datagram and TCP event due by now.
    pub(crate) fn deliver_due(&self) {
        let now = self.clock.now_ns();
        loop {
            // One borrow per datagram: the next due, and where it lands.
            let (f, cut, down, port) = {
                let mut net = self.net();
                let datagram = match net.flights.peek() {
                    Some(f) if f.at <= now => Some((f.at, f.seq)),
                    _ => None,
                };
                // TCP's events and the datagrams, in one order: by time, then
                // the order sent.
                if net.tcp.due_before(now, datagram) {
                    let event = net.tcp.pop();
                    drop(net);
                    tcp::handle(self, event);
                    continue;
                }
                if datagram.is_none() {
                    return;
                }
                let Some(f) = net.flights.pop() else { return };
                let d = &f.item;
                let (cut, down) = (net.is_cut(d.from.ip(), d.to.ip()), net.down.contains(&d.to.ip()));
                let port = net.port_for(d.to);
                (f, cut, down, port)
            };
            let Datagram { from, to, data, sender } = f.item;
            let len = data.len() as u64;
            let fate = match (cut, port) {
                _ if down => DatagramFate::HostDown,
                (true, _) => DatagramFate::Partitioned,
                (false, Some(port)) => port.deliver(from, to, data),
                (false, None) => DatagramFate::Refused,
            };
            // No socket takes it (none bound, or the one bound is connected
            // to another peer): the host answers with ICMP port unreachable.
            if matches!(fate, DatagramFate::Refused | DatagramFate::Filtered)
                && let Some(sender) = sender.upgrade()
            {
                sender.refused(to);
            }
            self.trace(Event::Datagram { fate, from, to, len });
        }
    }
}
