//! Simulated TCP: listeners, connections and the segments between them.
//!
//! The model is the one an application can observe, not TCP's machinery.
//! A connect sends a SYN; a listener answers with a SYN-ACK, the first
//! segment on the new connection's wire, and the connection joins the
//! listener's backlog when the client's ACK arrives (one more latency);
//! where nobody listens the host answers with a reset; a SYN nobody answers
//! is sent again 1, 2, 4 .. 32 s after the last, and the connect times out
//! 127 s after it started, as with Linux's six SYN retries. Every segment
//! (SYN-ACK, ACK, bytes, FIN, reset) leaves in order on its stream's wire
//! and arrives after the link's latency, never before the one ahead of it.
//! A segment the link loses, or that meets a partition or a held link, is
//! resent after a retransmission timeout (200 ms, doubling up to 120 s);
//! after 15 resends the writer gives up and its connection ends with
//! `TIMED_OUT` (Linux's `tcp_retries2`, about 15 minutes). So bytes are
//! never lost, duplicated or reordered, only late. A writer may have at most
//! the peer's receive buffer (`SimConfig::recv_buffer`) unread at the peer:
//! beyond, writes would block until the peer reads. Closing sends a FIN
//! after the bytes written (the peer reads EOF), or a reset when unread
//! bytes are thrown away, the host crashed, or the connection was not yet
//! accepted (the peer's next operation gets `CONNECTION_RESET`, or
//! `BROKEN_PIPE` for a write after the peer's FIN).

use super::{Due, Medium, Net, Registered, Report, Watch, loopback, normal, unspecified};
use crate::sim::trace::{Event, TcpStep};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};

/// The first resend after a loss or against a partition (Linux's minimum RTO).
const RTO_NS: u64 = 200_000_000;

/// The longest wait between two resends (Linux's `TCP_RTO_MAX`).
const RTO_MAX_NS: u64 = 120_000_000_000;

/// SYN retries before a connect times out (Linux's `tcp_syn_retries`).
const SYN_RETRIES: u32 = 6;

/// Resends of a segment before its writer gives up (Linux's `tcp_retries2`).
const RETRIES: u32 = 15;

/// SYN-ACK resends before a half-open connection is dropped (Linux's
/// `tcp_synack_retries`: given up 63 s after the SYN came).
const SYNACK_RETRIES: u32 = 5;

/// TCP's part of the network: bound addresses and events on their way.
#[derive(Default)]
pub(crate) struct Tcp {
    /// Addresses held: a listener's (`Some`) or a connecting stream's port.
    bound: BTreeMap<SocketAddr, Option<Weak<Listener>>>,
    events: BinaryHeap<Due<What>>,
}

impl Tcp {
    pub(super) fn next_at(&self) -> Option<u64> {
        self.events.peek().map(|e| e.at)
    }

    /// The next event is due by `now` and comes before `datagram` (the
    /// next datagram due, as (time, order sent)).
    #[inline]
    pub(super) fn due_before(&self, now: u64, datagram: Option<(u64, u64)>) -> bool {
        match self.events.peek() {
            None => false,
            Some(e) => e.at <= now && datagram.is_none_or(|d| (e.at, e.seq) < d),
        }
    }

    /// Every event (to drop them when the world goes).
    pub(super) fn take_events(&mut self) -> BinaryHeap<Due<What>> {
        std::mem::take(&mut self.events)
    }

    pub(super) fn pop(&mut self) -> Due<What> {
        self.events.pop().expect("peeked")
    }

    /// The listener a SYN to `to` reaches: bound on that host or on every host.
    fn listener_for(&self, to: SocketAddr) -> Option<Rc<Listener>> {
        let any = SocketAddr::new(unspecified(to.ip()), to.port());
        let found = self.bound.get(&to).or_else(|| self.bound.get(&any))?;
        found.as_ref().and_then(Weak::upgrade).filter(|l| !l.closed.get())
    }
}

/// What TCP has due at a time of its own.
pub(super) enum What {
    /// A connect's SYN reaches `to`.
    Syn { from: SocketAddr, to: SocketAddr, client: Weak<Stream> },
    /// The client's timer: resend the SYN, or give up.
    SynTimer { client: Weak<Stream>, attempt: u32 },
    /// A half-open server end's timer: resend the SYN-ACK, or drop it.
    SynAckTimer { server: Weak<Stream>, attempt: u32 },
    /// Nobody listens where the SYN went: the reset `to` answered reaches
    /// the client at `from` (unless the way back is cut by then).
    Refused { from: SocketAddr, to: SocketAddr, client: Weak<Stream> },
    /// The head of a stream's outgoing segments is due (the stream is kept
    /// alive until its segments are out, as a closed socket's are).
    Wire { stream: Rc<Stream> },
}

impl Net {
    fn schedule(&mut self, at: u64, what: What) {
        self.sent += 1;
        let seq = self.sent;
        self.tcp.events.push(Due { at, seq, item: what });
    }

    /// A segment's latency from `from` to `to`.
    fn latency_between(&self, from: SocketAddr, to: SocketAddr) -> u64 {
        let link = self.link(from.ip(), to.ip());
        self.latency(&link)
    }

    /// The link from `from` to `to` loses this attempt.
    fn loses(&self, from: SocketAddr, to: SocketAddr) -> bool {
        let link = self.link(from.ip(), to.ip());
        self.chance(link.loss)
    }

    /// A partition or a held link (`Sim::hold`) stops TCP's segments alike:
    /// they are resent, backing off, until the way is open again.
    fn blocked(&self, from: SocketAddr, to: SocketAddr) -> bool {
        self.is_cut(from.ip(), to.ip()) || (!self.held.is_empty() && self.held.contains_key(&(from.ip(), to.ip())))
    }

    fn path_open(&self, from: SocketAddr, to: SocketAddr) -> bool {
        !self.blocked(from, to) && !self.down.contains(&to.ip())
    }
}

/// A simulated listening socket.
pub(crate) struct Listener {
    world: Rc<Medium>,
    v6: bool,
    local: Cell<Option<SocketAddr>>,
    /// Connections whose handshake is done, not yet accepted.
    pending: RefCell<VecDeque<Rc<Stream>>>,
    /// Connections answered (SYN-ACK sent) whose ACK has not come yet.
    half_open: RefCell<Vec<Rc<Stream>>>,
    /// At most this many connections pending and half-open together.
    backlog: Cell<usize>,
    listening: Cell<bool>,
    watch: Watch,
    closed: Cell<bool>,
}

impl Listener {
    pub(crate) fn new(world: &Rc<Medium>, v6: bool) -> Rc<Listener> {
        Rc::new(Listener {
            world: world.clone(),
            v6,
            local: Cell::new(None),
            pending: RefCell::new(VecDeque::new()),
            half_open: RefCell::new(Vec::new()),
            backlog: Cell::new(0),
            listening: Cell::new(false),
            watch: Watch::new(),
            closed: Cell::new(false),
        })
    }

    /// Binds to `addr` and listens, with at most `backlog` connections
    /// waiting to be accepted (at least one).
    pub(crate) fn listen(self: &Rc<Self>, addr: SocketAddr, backlog: i32) -> io::Result<()> {
        if addr.is_ipv6() != self.v6 {
            return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
        }
        let mut net = self.world.net();
        let Net { next_port, tcp, down, .. } = &mut *net;
        tcp.bound.retain(|_, l| l.as_ref().is_none_or(|l| l.strong_count() > 0));
        let addr = super::choose(next_port, &tcp.bound, normal(addr))?;
        tcp.bound.insert(addr, Some(Rc::downgrade(self)));
        down.remove(&addr.ip()); // a restart
        self.local.set(Some(addr));
        self.backlog.set(usize::try_from(backlog).unwrap_or(0).max(1));
        self.listening.set(true);
        log::debug!(target: "ioctx::sim", "tcp listening on {addr}");
        Ok(())
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.local.get().ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// The next connection, or `WouldBlock`.
    pub(crate) fn accept(&self) -> io::Result<Rc<Stream>> {
        if self.closed.get() {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if !self.listening.get() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.world.deliver_due();
        let s = self.pending.borrow_mut().pop_front();
        s.ok_or_else(|| io::ErrorKind::WouldBlock.into())
    }

    /// Forgets half-open connections that ended (reset, or given up).
    fn prune(&self) {
        self.half_open.borrow_mut().retain(|s| s.state.get() == State::Received && !s.closed.get());
    }

    /// Closes the listener: unbound, and the connections it had not handed
    /// out, complete or not, are reset, as Linux resets them.
    pub(crate) fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        if let Some(a) = self.local.get() {
            self.world.net().tcp.bound.remove(&a);
        }
        let mut ended: Vec<_> = self.pending.borrow_mut().drain(..).collect();
        ended.append(&mut self.half_open.borrow_mut());
        for s in ended {
            s.abort();
        }
    }

    pub(crate) fn register(self: &Rc<Self>, token: usize, read: bool, write: bool, edge: bool) {
        self.watch.register(&mut self.world.net(), Registered::Listener(Rc::downgrade(self)), token, read, write, edge);
    }

    pub(crate) fn deregister(&self, token: usize) {
        self.watch.deregister(&mut self.world.net(), token);
    }
}

impl Report for Listener {
    fn report(&self) -> Option<(bool, bool, bool)> {
        self.watch.report(!self.pending.borrow().is_empty(), false, false)
    }
}

/// Where a stream is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Not connected yet.
    Fresh,
    /// A SYN is out (a client).
    Connecting,
    /// The SYN-ACK is out, the ACK has not come (a server's half-open end).
    Received,
    Open,
    /// Refused, timed out or reset: reads end, writes fail.
    Done,
}

/// One piece of what a stream sends, in order.
enum Seg {
    /// A listener's answer to a SYN (the first segment of a server's end).
    SynAck,
    /// The client's answer to the SYN-ACK (the first of a client's end).
    Ack,
    Data(Vec<u8>),
    Fin,
    Rst,
}

struct Segment {
    /// Arrival, in virtual nanoseconds (never before the one ahead of it).
    at: u64,
    seg: Seg,
}

/// A simulated TCP connection's endpoint.
pub(crate) struct Stream {
    world: Rc<Medium>,
    v6: bool,
    local: Cell<Option<SocketAddr>>,
    peer: Cell<Option<SocketAddr>>,
    state: Cell<State>,
    /// It was open once (a second connect is `EISCONN`, not `ECONNABORTED`).
    was_open: Cell<bool>,
    /// The other end (set when a listener answers the SYN).
    remote: RefCell<Weak<Stream>>,
    /// A server's end: the listener whose backlog it joins on the ACK.
    listener: RefCell<Weak<Listener>>,
    /// Bytes received, not read yet.
    rx: RefCell<VecDeque<u8>>,
    /// The receive buffer (`SimConfig::recv_buffer`, kept here: a wait asks
    /// for readiness while the network is borrowed).
    window: usize,
    /// Bytes sent to this end and not read yet (received or on their way):
    /// what the writer's window counts.
    reserved: Cell<usize>,
    /// The peer's FIN arrived, after all its bytes.
    fin_in: Cell<bool>,
    /// This end sent its FIN (`shutdown(Write)` or close).
    fin_out: Cell<bool>,
    read_shut: Cell<bool>,
    /// An error the next operation reports (refused, timed out, reset).
    error: Cell<Option<i32>>,
    /// Segments on their way to the peer, in order.
    wire: RefCell<VecDeque<Segment>>,
    /// When the `Wire` event for the head of `wire` is due (`None`: none
    /// is); an earlier event that is not this one is stale.
    wire_at: Cell<Option<u64>>,
    /// Resends of the head of `wire` so far.
    retries: Cell<u32>,
    /// The key this stream holds in `Tcp::bound` (a client's own port; it
    /// may differ from `local`, which a connect makes specific).
    bound_key: Cell<Option<SocketAddr>>,
    nodelay: Cell<bool>,
    watch: Watch,
    closed: Cell<bool>,
}

impl Stream {
    /// An unconnected stream of the family of `v6`.
    pub(crate) fn new(world: &Rc<Medium>, v6: bool) -> Rc<Stream> {
        let window = world.net().limits.recv_buffer;
        Stream::with_window(world, v6, window)
    }

    /// As [`new`](Self::new), the receive buffer given (the network is
    /// borrowed by the caller).
    fn with_window(world: &Rc<Medium>, v6: bool, window: usize) -> Rc<Stream> {
        Rc::new(Stream {
            world: world.clone(),
            v6,
            local: Cell::new(None),
            peer: Cell::new(None),
            state: Cell::new(State::Fresh),
            was_open: Cell::new(false),
            remote: RefCell::new(Weak::new()),
            listener: RefCell::new(Weak::new()),
            rx: RefCell::new(VecDeque::new()),
            window,
            reserved: Cell::new(0),
            fin_in: Cell::new(false),
            fin_out: Cell::new(false),
            read_shut: Cell::new(false),
            error: Cell::new(None),
            wire: RefCell::new(VecDeque::new()),
            wire_at: Cell::new(None),
            retries: Cell::new(0),
            bound_key: Cell::new(None),
            nodelay: Cell::new(false),
            watch: Watch::new(),
            closed: Cell::new(false),
        })
    }

    fn family_ok(&self, addr: SocketAddr) -> io::Result<()> {
        if addr.is_ipv6() == self.v6 { Ok(()) } else { Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)) }
    }

    fn check_open(&self) -> io::Result<()> {
        if self.closed.get() { Err(io::Error::from_raw_os_error(libc::EBADF)) } else { Ok(()) }
    }

    /// Binds the local end to `addr` (port 0: a free one), before a connect.
    pub(crate) fn bind(&self, addr: SocketAddr) -> io::Result<()> {
        self.check_open()?;
        self.family_ok(addr)?;
        if self.local.get().is_some() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut net = self.world.net();
        let Net { next_port, tcp, down, .. } = &mut *net;
        tcp.bound.retain(|_, l| l.as_ref().is_none_or(|l| l.strong_count() > 0));
        let addr = super::choose(next_port, &tcp.bound, normal(addr))?;
        tcp.bound.insert(addr, None);
        down.remove(&addr.ip());
        self.local.set(Some(addr));
        self.bound_key.set(Some(addr));
        Ok(())
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.check_open()?;
        Ok(self.local.get().unwrap_or_else(|| SocketAddr::new(self.any_ip(), 0)))
    }

    fn any_ip(&self) -> std::net::IpAddr {
        if self.v6 { std::net::Ipv6Addr::UNSPECIFIED.into() } else { std::net::Ipv4Addr::UNSPECIFIED.into() }
    }

    /// The peer, while connected (`ENOTCONN` before, and after a reset).
    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.check_open()?;
        match (self.state.get(), self.peer.get()) {
            (State::Open, Some(p)) => Ok(p),
            _ => Err(io::Error::from_raw_os_error(libc::ENOTCONN)),
        }
    }

    /// The address connected to (whatever the state), for what a read
    /// reports as its sender.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer.get().unwrap_or_else(|| SocketAddr::new(self.any_ip(), 0))
    }

    pub(crate) fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.check_open()?;
        self.nodelay.set(on);
        Ok(())
    }

    pub(crate) fn nodelay(&self) -> io::Result<bool> {
        self.check_open()?;
        Ok(self.nodelay.get())
    }

    /// Bytes that can be read now.
    pub(crate) fn available(&self) -> io::Result<usize> {
        self.check_open()?;
        self.world.deliver_due();
        Ok(self.rx.borrow().len())
    }

    /// Starts connecting to `to`: `Ok` when the SYN is out (the outcome is
    /// reported through readiness and [`connect_outcome`](Self::connect_outcome)).
    pub(crate) fn connect(self: &Rc<Self>, to: SocketAddr) -> io::Result<()> {
        self.check_open()?;
        self.family_ok(to)?;
        match self.state.get() {
            State::Fresh => {}
            State::Connecting | State::Received => return Err(io::Error::from_raw_os_error(libc::EALREADY)),
            State::Open => return Err(io::Error::from_raw_os_error(libc::EISCONN)),
            // A connect that failed leaves the socket unusable, as on Linux.
            State::Done if self.was_open.get() => return Err(io::Error::from_raw_os_error(libc::EISCONN)),
            State::Done => return Err(io::Error::from_raw_os_error(libc::ECONNABORTED)),
        }
        let bound_ip = self.local.get().map(|a| a.ip()).filter(|ip| !ip.is_unspecified());
        // The unspecified address is this host: the bound address's, or loopback.
        let to = if to.ip().is_unspecified() {
            SocketAddr::new(bound_ip.unwrap_or_else(|| loopback(to.ip())), to.port())
        } else {
            normal(to)
        };
        match self.local.get() {
            None => self.bind(SocketAddr::new(loopback(to.ip()), 0))?,
            // Bound to every host: the connection leaves from loopback.
            Some(a) if a.ip().is_unspecified() => self.local.set(Some(SocketAddr::new(loopback(to.ip()), a.port()))),
            Some(_) => {}
        }
        self.peer.set(Some(to));
        self.state.set(State::Connecting);
        self.send_syn(0);
        Ok(())
    }

    fn ends(&self) -> (SocketAddr, SocketAddr) {
        let unset = SocketAddr::new(self.any_ip(), 0);
        (self.local.get().unwrap_or(unset), self.peer.get().unwrap_or(unset))
    }

    fn trace(&self, step: TcpStep, len: usize) {
        let (from, to) = self.ends();
        self.world.trace(Event::Tcp { step, from, to, len: len as u64 });
    }

    /// Sends SYN number `attempt` and sets the timer that resends it.
    fn send_syn(self: &Rc<Self>, attempt: u32) {
        let (from, to) = self.ends();
        let now = self.world.clock.now_ns();
        let mut net = self.world.net();
        let lost = !net.path_open(from, to) || net.loses(from, to);
        if !lost {
            let at = now.saturating_add(net.latency_between(from, to));
            net.schedule(at, What::Syn { from, to, client: Rc::downgrade(self) });
        }
        let timer = now.saturating_add(1_000_000_000u64 << attempt);
        net.schedule(timer, What::SynTimer { client: Rc::downgrade(self), attempt });
        drop(net);
        self.trace(if lost { TcpStep::SynLost } else { TcpStep::Syn }, 0);
    }

    /// The outcome of a connect once it is known: `None` while in progress.
    pub(crate) fn connect_outcome(&self) -> Option<io::Result<()>> {
        if self.closed.get() {
            return Some(Err(io::Error::from_raw_os_error(libc::EBADF)));
        }
        if let Some(e) = self.error.take() {
            return Some(Err(io::Error::from_raw_os_error(e)));
        }
        match self.state.get() {
            State::Connecting | State::Received => None,
            State::Open => Some(Ok(())),
            State::Fresh | State::Done => Some(Err(io::Error::from_raw_os_error(libc::ENOTCONN))),
        }
    }

    /// What a read and a write check first (after delivering what is due):
    /// `ENOTCONN` before a connect, `WouldBlock` while it is under way.
    fn transferable(&self) -> io::Result<()> {
        self.check_open()?;
        self.world.deliver_due();
        match self.state.get() {
            State::Fresh => Err(io::Error::from_raw_os_error(libc::ENOTCONN)),
            State::Connecting | State::Received => Err(io::ErrorKind::WouldBlock.into()),
            State::Open | State::Done => Ok(()),
        }
    }

    fn take_error(&self) -> io::Result<()> {
        match self.error.take() {
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => Ok(()),
        }
    }

    /// Reads what has arrived into `bufs`; `Ok(0)` at the end of the stream;
    /// `peek` leaves it. `WouldBlock` when nothing has arrived. Bytes that
    /// arrived are read before a reset or a shutdown is reported, as on Linux.
    pub(crate) fn read(&self, bufs: &mut [std::io::IoSliceMut<'_>], peek: bool) -> io::Result<usize> {
        self.transferable()?;
        let mut rx = self.rx.borrow_mut();
        if rx.is_empty() {
            drop(rx);
            // The peer's FIN came first: the end of the stream, whatever
            // came after it (a write learns of that). Then a pending error,
            // then this end's own shutdown, as Linux orders them.
            if self.fin_in.get() {
                return Ok(0);
            }
            self.take_error()?;
            let end = self.read_shut.get() || self.state.get() == State::Done;
            return if end { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        let n = crate::buffer::scatter(rx.make_contiguous(), bufs);
        if !peek {
            rx.drain(..n);
            drop(rx);
            self.reserved.set(self.reserved.get().saturating_sub(n));
            // The window opens: the writer may go on.
            if let Some(r) = self.remote.borrow().upgrade() {
                r.mark();
            }
        }
        Ok(n)
    }

    /// Writes as much of `data` as the peer's window takes; `WouldBlock`
    /// when it takes nothing.
    pub(crate) fn write(self: &Rc<Self>, data: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
        self.transferable()?;
        self.take_error()?;
        if self.fin_out.get() || self.state.get() == State::Done {
            return Err(io::Error::from_raw_os_error(libc::EPIPE));
        }
        let len: usize = data.iter().map(|d| d.len()).sum();
        let remote = self.remote.borrow().upgrade().filter(|r| !r.closed.get());
        let space = remote.as_ref().map_or(len, |r| r.space());
        let n = len.min(space);
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if let Some(r) = &remote {
            r.reserved.set(r.reserved.get() + n);
        }
        let mut bytes = Vec::with_capacity(n);
        for d in data {
            let take = (n - bytes.len()).min(d.len());
            bytes.extend_from_slice(&d[..take]);
        }
        self.push(Seg::Data(bytes));
        self.trace(TcpStep::Sent, n);
        Ok(n)
    }

    /// What a writer to this end may still send.
    fn space(&self) -> usize {
        self.window.saturating_sub(self.reserved.get())
    }

    /// Queues `seg` behind the segments on their way, with its own latency.
    fn push(self: &Rc<Self>, seg: Seg) {
        let (from, to) = self.ends();
        let now = self.world.clock.now_ns();
        let mut net = self.world.net();
        let latency = net.latency_between(from, to);
        let mut wire = self.wire.borrow_mut();
        let at = wire.back().map_or(0, |s| s.at).max(now.saturating_add(latency));
        wire.push_back(Segment { at, seg });
        let head = wire.front().map_or(at, |s| s.at);
        drop(wire);
        self.schedule_wire(&mut net, head);
    }

    /// Has the head of `wire` go out at `at`, unless an event comes sooner.
    fn schedule_wire(self: &Rc<Self>, net: &mut Net, at: u64) {
        if self.wire_at.get().is_none_or(|w| at < w) {
            self.wire_at.set(Some(at));
            net.schedule(at, What::Wire { stream: self.clone() });
        }
    }

    /// Shuts down reading, writing or both.
    pub(crate) fn shutdown(self: &Rc<Self>, how: std::net::Shutdown) -> io::Result<()> {
        self.check_open()?;
        if self.state.get() != State::Open {
            return Err(io::Error::from_raw_os_error(libc::ENOTCONN));
        }
        if matches!(how, std::net::Shutdown::Read | std::net::Shutdown::Both) {
            self.read_shut.set(true);
        }
        if matches!(how, std::net::Shutdown::Write | std::net::Shutdown::Both) && !self.fin_out.replace(true) {
            self.push(Seg::Fin);
            self.trace(TcpStep::Fin, 0);
        }
        self.mark();
        Ok(())
    }

    /// Closes this end: a FIN after what was written, or a reset when
    /// unread bytes are thrown away or the host is down.
    pub(crate) fn close(self: &Rc<Self>) {
        self.close_with(false);
    }

    /// Closes an end no socket holds yet (a connection a closed listener
    /// had not handed out): reset, as Linux resets it.
    fn abort(self: &Rc<Self>) {
        self.close_with(true);
    }

    fn close_with(self: &Rc<Self>, reset: bool) {
        if self.closed.replace(true) {
            return;
        }
        let (local, _) = self.ends();
        let host_down = {
            let mut net = self.world.net();
            if let Some(key) = self.bound_key.take() {
                net.tcp.bound.remove(&key);
            }
            net.down.contains(&local.ip())
        };
        let answered = self.remote.borrow().strong_count() > 0;
        match self.state.get() {
            State::Open if reset || host_down || !self.rx.borrow().is_empty() => self.reset_peer(),
            State::Open => {
                if !self.fin_out.replace(true) {
                    self.push(Seg::Fin);
                    self.trace(TcpStep::Fin, 0);
                }
            }
            // The handshake was under way: the other end must not keep a
            // connection this end gave up (Linux answers with a reset).
            State::Connecting if answered => self.reset_peer(),
            State::Received => self.reset_peer(),
            State::Fresh | State::Connecting | State::Done => {}
        }
        self.rx.borrow_mut().clear();
    }

    /// Resets the peer. What is in flight arrives first; what is being
    /// resent (backing off) is given up, and the reset leaves now.
    fn reset_peer(self: &Rc<Self>) {
        if self.retries.replace(0) > 0 {
            self.wire.borrow_mut().clear();
        }
        self.push(Seg::Rst);
        self.trace(TcpStep::Reset, 0);
    }

    /// The connection ends with `err` (a reset from the peer, a refusal, a
    /// time-out). A reset is a refusal while connecting, and a broken pipe
    /// after the peer's FIN, as Linux reports them.
    fn reset(&self, err: i32) {
        if self.closed.get() || self.state.get() == State::Done {
            return;
        }
        let err = match self.state.get() {
            State::Connecting if err == libc::ECONNRESET => libc::ECONNREFUSED,
            _ if err == libc::ECONNRESET && self.fin_in.get() => libc::EPIPE,
            _ => err,
        };
        self.state.set(State::Done);
        self.error.set(Some(err));
        self.wire.borrow_mut().clear();
        self.mark();
    }

    fn mark(&self) {
        self.watch.changed(&mut self.world.net());
    }

    pub(crate) fn register(self: &Rc<Self>, token: usize, read: bool, write: bool, edge: bool) {
        self.watch.register(&mut self.world.net(), Registered::Stream(Rc::downgrade(self)), token, read, write, edge);
    }

    pub(crate) fn deregister(&self, token: usize) {
        self.watch.deregister(&mut self.world.net(), token);
    }
}

impl Report for Stream {
    fn report(&self) -> Option<(bool, bool, bool)> {
        let error = self.error.get().is_some();
        let state = self.state.get();
        let readable =
            error || state == State::Done || self.read_shut.get() || self.fin_in.get() || !self.rx.borrow().is_empty();
        let writable = error
            || state == State::Done
            || (state == State::Open
                && (self.fin_out.get()
                    || self.remote.borrow().upgrade().filter(|r| !r.closed.get()).is_none_or(|r| r.space() > 0)));
        self.watch.report(readable, writable, error)
    }
}

/// Carries out `event`, which is due (called with the network unborrowed).
/// Out of line: the datagram path through `deliver_due` stays small.
#[inline(never)]
pub(super) fn handle(medium: &Medium, event: Due<What>) {
    let now = medium.clock.now_ns();
    let due = event.at;
    match event.item {
        What::Syn { from, to, client } => syn(medium, now, from, to, client),
        What::Refused { from, to, client } => {
            let Some(client) = client.upgrade() else { return };
            if client.closed.get() || client.state.get() != State::Connecting {
                return;
            }
            if !medium.net().path_open(to, from) {
                client.trace(TcpStep::SynLost, 0); // the reset was lost: the SYN timer goes on
                return;
            }
            client.trace(TcpStep::Refused, 0);
            client.reset(libc::ECONNREFUSED);
        }
        What::SynTimer { client, attempt } => {
            let Some(client) = client.upgrade() else { return };
            if client.closed.get() || client.state.get() != State::Connecting {
                return;
            }
            if attempt < SYN_RETRIES {
                client.send_syn(attempt + 1);
            } else {
                client.trace(TcpStep::TimedOut, 0);
                client.reset(libc::ETIMEDOUT);
            }
        }
        What::SynAckTimer { server, attempt } => {
            let Some(server) = server.upgrade() else { return };
            if server.closed.get() || server.state.get() != State::Received {
                return;
            }
            if attempt < SYNACK_RETRIES {
                server.push(Seg::SynAck);
                server.schedule_synack_timer(attempt + 1);
            } else {
                server.trace(TcpStep::TimedOut, 0);
                server.reset(libc::ETIMEDOUT); // the listener forgets it
            }
        }
        What::Wire { stream } => {
            // Only the latest event of a stream's wire counts.
            if stream.wire_at.get() == Some(due) {
                stream.wire_at.set(None);
                deliver_wire(medium, &stream, now);
            }
        }
    }
}

/// A SYN from `from` reaches `to`: a listener there answers (once per
/// client: a SYN sent again while the answer is on its way is dropped, the
/// answer being resent as any segment is), the host refuses, or a full
/// backlog drops it.
fn syn(medium: &Medium, now: u64, from: SocketAddr, to: SocketAddr, client: Weak<Stream>) {
    let Some(client) = client.upgrade() else { return };
    if client.closed.get() || client.state.get() != State::Connecting {
        return;
    }
    let trace = |step| medium.trace(Event::Tcp { step, from, to, len: 0 });
    let mut net = medium.net();
    if !net.path_open(from, to) {
        drop(net);
        return trace(TcpStep::SynLost);
    }
    let answered = client.remote.borrow().upgrade();
    if let Some(server) = answered {
        drop(net);
        // A SYN sent again: its answer was lost or is late; answer again.
        if server.state.get() == State::Received && !server.closed.get() {
            server.push(Seg::SynAck);
        }
        return;
    }
    let Some(listener) = net.tcp.listener_for(to).filter(|l| l.v6 == to.is_ipv6()) else {
        let back = now.saturating_add(net.latency_between(to, from));
        net.schedule(back, What::Refused { from, to, client: Rc::downgrade(&client) });
        drop(net);
        return trace(TcpStep::Refused);
    };
    listener.prune();
    if listener.pending.borrow().len() + listener.half_open.borrow().len() >= listener.backlog.get() {
        drop(net);
        // A full backlog drops the SYN; the client will send it again.
        return trace(TcpStep::SynLost);
    }
    let server = Stream::with_window(&listener.world, to.is_ipv6(), net.limits.recv_buffer);
    drop(net);
    server.local.set(Some(to));
    server.peer.set(Some(from));
    server.state.set(State::Received);
    *server.remote.borrow_mut() = Rc::downgrade(&client);
    *server.listener.borrow_mut() = Rc::downgrade(&listener);
    *client.remote.borrow_mut() = Rc::downgrade(&server);
    listener.half_open.borrow_mut().push(server.clone());
    trace(TcpStep::Answered);
    server.push(Seg::SynAck);
    server.schedule_synack_timer(0);
}

impl Stream {
    /// A half-open end resends its SYN-ACK 1, 2, 4 .. 16 s apart, and is
    /// dropped 32 s after the last.
    fn schedule_synack_timer(self: &Rc<Self>, attempt: u32) {
        let at = self.world.clock.now_ns().saturating_add(1_000_000_000u64 << attempt);
        self.world.net().schedule(at, What::SynAckTimer { server: Rc::downgrade(self), attempt });
    }

    /// A half-open server end gets its client's ACK (or a segment that
    /// carries one): it joins its listener's backlog.
    fn establish(self: &Rc<Self>, medium: &Medium) {
        self.state.set(State::Open);
        self.was_open.set(true);
        let listener = self.listener.borrow().upgrade().filter(|l| !l.closed.get());
        if let Some(l) = listener {
            l.half_open.borrow_mut().retain(|s| !Rc::ptr_eq(s, self));
            l.pending.borrow_mut().push_back(self.clone());
            l.watch.changed(&mut medium.net());
            self.trace(TcpStep::Accepted, 0);
        }
    }
}

/// Delivers the due segments at the head of `stream`'s wire, in order. A
/// segment the link loses, or that a partition or a held link stops, is
/// resent after a back-off; after `RETRIES` resends the writer gives up. A
/// handshake segment (SYN-ACK, ACK) is not resent from here: the ends'
/// timers send it again.
fn deliver_wire(medium: &Medium, stream: &Rc<Stream>, now: u64) {
    let (from, to) = stream.ends();
    loop {
        let mut net = medium.net();
        let mut wire = stream.wire.borrow_mut();
        let Some(head) = wire.front_mut() else { return };
        if head.at > now {
            let at = head.at;
            drop(wire);
            stream.schedule_wire(&mut net, at);
            return;
        }
        // The last resend went unanswered for its whole timeout: give up.
        if stream.retries.get() > RETRIES {
            wire.clear();
            drop((wire, net));
            stream.trace(TcpStep::TimedOut, 0);
            stream.reset(libc::ETIMEDOUT);
            return;
        }
        let blocked = net.blocked(from, to);
        if blocked || net.loses(from, to) {
            let step = if blocked { TcpStep::Held } else { TcpStep::Lost };
            if matches!(head.seg, Seg::SynAck | Seg::Ack) {
                wire.pop_front();
                drop((wire, net));
                medium.trace(Event::Tcp { step, from, to, len: 0 });
                continue;
            }
            let retries = stream.retries.get() + 1;
            stream.retries.set(retries);
            let rto = RTO_NS.saturating_mul(1 << (retries - 1).min(20)).min(RTO_MAX_NS);
            head.at = now.saturating_add(rto);
            let at = head.at;
            drop(wire);
            stream.schedule_wire(&mut net, at);
            drop(net);
            medium.trace(Event::Tcp { step, from, to, len: 0 });
            return;
        }
        stream.retries.set(0);
        let seg = wire.pop_front().expect("front seen").seg;
        drop((wire, net));
        arrive(medium, stream, seg, from, to);
    }
}

/// `seg`, from `stream` (at `from`), reaches the other end (at `to`).
fn arrive(medium: &Medium, stream: &Rc<Stream>, seg: Seg, from: SocketAddr, to: SocketAddr) {
    let trace = |step, len: usize| medium.trace(Event::Tcp { step, from, to, len: len as u64 });
    let remote = stream.remote.borrow().upgrade();
    let live = remote.as_ref().filter(|r| !r.closed.get() && r.state.get() != State::Done);
    match (seg, live) {
        (Seg::SynAck, Some(client)) => {
            if client.state.get() == State::Connecting {
                client.state.set(State::Open);
                client.was_open.set(true);
                client.mark();
                client.trace(TcpStep::Established, 0);
            }
            // Each SYN-ACK is acknowledged (a repeated one: the last ACK was lost).
            if client.state.get() == State::Open {
                client.push(Seg::Ack);
            }
        }
        (Seg::Ack, Some(server)) => {
            if server.state.get() == State::Received {
                server.establish(medium);
            }
        }
        // Any segment from the client acknowledges the SYN-ACK too.
        (seg @ (Seg::Data(_) | Seg::Fin), Some(r)) if r.state.get() == State::Received => {
            r.establish(medium);
            arrive(medium, stream, seg, from, to);
        }
        (Seg::Data(bytes), Some(r)) => {
            let len = bytes.len();
            r.rx.borrow_mut().extend(bytes);
            r.mark();
            trace(TcpStep::Delivered, len);
        }
        (Seg::Fin, Some(r)) => {
            r.fin_in.set(true);
            r.mark();
            trace(TcpStep::FinDelivered, 0);
        }
        (Seg::Rst, Some(r)) => {
            r.reset(libc::ECONNRESET);
            trace(TcpStep::ResetDelivered, 0);
        }
        // Nobody at the other end: anything but a reset is answered with a
        // reset (the sender learns of it); a reset is dropped.
        (Seg::SynAck | Seg::Ack | Seg::Data(_) | Seg::Fin, None) => {
            stream.wire.borrow_mut().clear();
            if let Some(r) = &remote {
                r.reserved.set(0);
            }
            stream.reset(libc::ECONNRESET);
            medium.trace(Event::Tcp { step: TcpStep::ResetDelivered, from: to, to: from, len: 0 });
        }
        (Seg::Rst, None) => {}
    }
}
