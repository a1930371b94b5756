//! The model-based test: random sequences of operations on a few UDP and Unix
//! datagram sockets and timers, driven by a seeded generator, with the
//! crate's rules checked during and after each case:
//!
//! - every handler runs exactly once, or is dropped unrun exactly once
//!   because its context is gone; none runs inside the call that started it;
//! - posts run in FIFO order; a socket's operations complete in the order
//!   they were started (per direction, apart from cancellations);
//! - timer waits never complete early, and complete in (deadline, order
//!   started) order;
//! - every datagram received was sent, is received once, from the right
//!   sender, truncated exactly as the kernel would; per sender it arrives in
//!   order; at the end of a case every datagram sent to an open socket has
//!   been received (nothing lost);
//! - no receive stays pending while data waits for it with the loop idle
//!   (a lost wakeup), no timer wait stays pending without a deadline to
//!   wake the loop, no send stays pending with nothing to wait for;
//! - a cancel that returns true ends the operation with `OPERATION_ABORTED`;
//! - no descriptor leaks, no handler leaks.
//!
//! Each case picks random fairness settings and a sequence of: post,
//! dispatch, defer; sends and receives with random sizes and buffer counts
//! (peeks, receives with metadata, read and write waits, synchronous calls); timers with random and
//! equal expiries; `Operation::cancel` of every kind and `cancel_after`;
//! socket cancel, close, drop and release (and adoption again); GSO on and
//! off; send coalescing on and off; error reports (`set_recv_errors`) on a
//! fifth of the UDP sockets, whose receives and sends must then never see a
//! refusal; `shutdown(Read)` of UDP sockets (a receive that finds nothing queued
//! then ends with `EOF`; a spin on the readiness it leaves is caught by
//! `check_no_spin`); work guards; `run_one`/`poll`/`poll_one`/`run_for`; nested runs,
//! `stop` and panics from handlers; and it ends by dropping the context with
//! work pending, or by draining everything and running out of work.
//!
//! `cargo test --test model` runs 300 cases. The environment sets more:
//!
//!     IOCTX_MODEL_CASES=20000 cargo test --release --test model -- --nocapture
//!     IOCTX_MODEL_SEED=0x1f2e cargo test --test model -- --nocapture
//!
//! One case in eight runs on a simulated context (`Profile::Simulated`),
//! twice: the same rules, and the same trace hash both times.
//!
//! `IOCTX_MODEL_SEED` runs the one case with that seed and prints its
//! operations; `IOCTX_MODEL_FIRST` moves the first case's index;
//! `IOCTX_MODEL_KEEP_GOING` runs every case and lists the failing seeds;
//! `IOCTX_MODEL_PROFILE=general|datagrams|server|simulated` runs cases of one kind
//! (see `Profile`). A failure prints the seed and the case's operations.

mod common;

use common::{Rng, TempDir};
use ioctx::net::{MessageFlags, UdpSocket, UnixDatagram, WaitType};
use ioctx::{CancellationType, Error, Executor, IoContext, Operation, SimConfig, SteadyTimer, WorkGuard};
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- generator

/// The seed of case `i`: neighbouring cases get unrelated seeds.
fn case_seed(i: u64) -> u64 {
    Rng(i).next()
}

// ---------------------------------------------------------------- the model

/// What a case exercises.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Profile {
    /// Everything.
    General,
    /// Datagrams only, on one or two UDP sockets: long queues around a
    /// small budget per event.
    Datagrams,
    /// A server's receive loop: receives queued on one socket, datagrams
    /// sent to it in bursts, handlers that start 0, 1 or 2 receives each
    /// and nothing else, a small budget per event. Small schedules of this
    /// kind found the lost wakeup of issue 11.
    Server,
    /// One case in eight: UDP sockets (sends, receives, waits, cancel,
    /// close, drop), posts, timers, cancellation, work guards, stops and
    /// runs on a simulated context (virtual time, the in-memory network with
    /// zero latency), every rule above checked as on a real one; each case
    /// runs twice and the two runs must leave the same trace.
    Simulated,
}

/// The payload of an injected panic (any other panic is a failure).
struct Injected;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fate {
    Pending,
    Ran,
    Dropped,
}

/// One handler given to the crate.
struct TokRec {
    what: String,
    fate: Fate,
    /// A cancel returned true for its operation: it must end aborted.
    expect_abort: bool,
}

#[derive(Clone)]
enum Sock {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

#[derive(Clone, PartialEq, Eq, Debug)]
enum Addr {
    Ip(SocketAddr),
    Path(PathBuf),
}

/// A socket of the case (closed ones stay, for their address).
struct SockRec {
    sock: Option<Sock>,
    open: bool,
    addr: Addr,
    udp: bool,
    /// Connected to this socket (UDP only): the kernel takes datagrams
    /// only from it, and its going away may surface as CONNECTION_REFUSED.
    peer: Option<usize>,
    refused_ok: bool,
    /// `set_recv_errors(true)` (UDP only): a refusal goes to the error
    /// queue and must never end a receive or fail a send (`refused_ok`
    /// stays false).
    reports: bool,
    /// Metadata switches on (`set_recv_pktinfo`, and `set_recv_ttl` and at
    /// times `set_gro` on a real context): its receives batch with control
    /// messages, and each
    /// receive with metadata must name the address it reached.
    meta: bool,
    /// Shut down for reading (UDP only): a receive that finds nothing
    /// queued ends with EOF; datagrams sent to it still arrive (Linux).
    read_shut: bool,
    /// Datagrams sent to it and not received yet, oldest first.
    inbox: Vec<usize>,
    /// Read- and write-queue operations, for the idle checks.
    reads: Vec<(u64, Operation)>,
    writes: Vec<Operation>,
    /// Per receive that got a datagram several fit: the ones it may have had.
    wild: Vec<Vec<usize>>,
    /// Started and not yet completed, by start order (per direction).
    read_order: BTreeSet<u64>,
    write_order: BTreeSet<u64>,
    seq: u64,
}

/// A datagram the case sent (or tried to).
struct Dgram {
    to: usize,
    from: Addr,
    bytes: Vec<u8>,
    /// The send completed (or a synchronous send returned): it is in the
    /// receiver's queue or was received.
    sent: bool,
    received: bool,
    /// Sent by an asynchronous send: ordered with the sender's other ones.
    ordered: bool,
    /// A later datagram of the same sender and receiver was received first.
    overtaken: bool,
    /// Its send failed: it never existed.
    dead: bool,
    /// Its receiver closed: lost, unless a receive completed before the close.
    gone: bool,
}

/// A timer wait that completed with `NONE`.
struct Fired {
    deadline: Instant,
    seq: u64,
}

#[derive(Default, Clone, Copy)]
struct Stats {
    cases: u64,
    actions: u64,
    handlers: u64,
    panics: u64,
    nested: u64,
    drops: u64,
    datagrams: u64,
    idle_checks: u64,
}

struct Model {
    rng: RefCell<Rng>,
    trace: RefCell<String>,
    lines: Cell<usize>,
    failure: RefCell<Option<String>>,
    ctx: RefCell<Option<Rc<IoContext>>>,
    ex: Executor,
    ctx_gone: Cell<bool>,
    /// Inside a call that must not run handlers.
    initiating: Cell<u32>,
    /// Handlers on the stack.
    depth: Cell<u32>,
    /// Handlers check only, they start nothing (idle checks, the end).
    quiet: Cell<bool>,
    /// What the case exercises (see `Profile`).
    profile: Cell<Profile>,
    toks: RefCell<Vec<TokRec>>,
    post_seq: Cell<u64>,
    last_post: Cell<u64>,
    socks: RefCell<Vec<SockRec>>,
    dgrams: RefCell<Vec<Dgram>>,
    timers: RefCell<Vec<Option<SteadyTimer>>>,
    /// Per timer: its waits and their handlers, oldest first.
    timer_waits: RefCell<Vec<Vec<(usize, Operation)>>>,
    wait_seq: Cell<u64>,
    fired: RefCell<Vec<Fired>>,
    /// Recent operations and their handlers, to cancel.
    ops: RefCell<Vec<(usize, Operation)>>,
    /// Timer waits, for the idle check.
    waits: RefCell<Vec<Operation>>,
    guards: RefCell<Vec<WorkGuard>>,
    dir: PathBuf,
    names: Cell<usize>,
    base: Instant,
    stats: RefCell<Stats>,
}

const MAX_TRACE_LINES: usize = 20_000;

impl Model {
    fn rng(&self) -> std::cell::RefMut<'_, Rng> {
        self.rng.borrow_mut()
    }

    fn pct(&self, p: usize) -> bool {
        self.rng().percent(p)
    }

    fn log(&self, line: impl FnOnce() -> String) {
        let n = self.lines.get();
        self.lines.set(n + 1);
        if n < MAX_TRACE_LINES {
            let mut t = self.trace.borrow_mut();
            let _ = writeln!(t, "{:width$}{}", "", line(), width = 2 * self.depth.get() as usize);
        }
    }

    fn fail(&self, msg: String) {
        self.log(|| format!("FAILURE: {msg}"));
        let mut f = self.failure.borrow_mut();
        if f.is_none() {
            *f = Some(msg);
        }
    }

    fn failed(&self) -> bool {
        self.failure.borrow().is_some()
    }

    fn ctx(&self) -> Option<Rc<IoContext>> {
        self.ctx.borrow().clone()
    }

    /// Runs `f`, a call into the crate that must not run any handler.
    fn initiate<R>(&self, f: impl FnOnce() -> R) -> R {
        self.initiating.set(self.initiating.get() + 1);
        let r = f();
        self.initiating.set(self.initiating.get() - 1);
        r
    }

    fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.borrow_mut())
    }
}

/// What a handler carries: it records that the handler ran, or that it was
/// dropped unrun.
struct Tok {
    m: Rc<Model>,
    id: usize,
    ran: bool,
}

impl Tok {
    fn new(m: &Rc<Model>, what: String) -> Tok {
        let mut toks = m.toks.borrow_mut();
        toks.push(TokRec { what, fate: Fate::Pending, expect_abort: false });
        Tok { m: m.clone(), id: toks.len() - 1, ran: false }
    }

    /// The handler starts.
    fn run(&mut self) {
        let m = &self.m;
        let what = {
            let mut toks = m.toks.borrow_mut();
            let t = &mut toks[self.id];
            if t.fate != Fate::Pending {
                let msg = format!("h{} ({}) ran after it {:?}", self.id, t.what, t.fate);
                drop(toks);
                m.fail(msg);
                return;
            }
            t.fate = Fate::Ran;
            t.what.clone()
        };
        self.ran = true;
        m.count(|s| s.handlers += 1);
        m.log(|| format!("run h{} {what}", self.id));
        if m.initiating.get() > 0 {
            m.fail(format!("h{} ({what}) ran inside the call that started an operation", self.id));
        }
        if m.ctx_gone.get() {
            m.fail(format!("h{} ({what}) ran after its context was dropped", self.id));
        }
    }

    fn expects_abort(&self) -> bool {
        self.m.toks.borrow()[self.id].expect_abort
    }
}

impl Drop for Tok {
    fn drop(&mut self) {
        if self.ran {
            return;
        }
        let msg = {
            let mut toks = self.m.toks.borrow_mut();
            let t = &mut toks[self.id];
            let msg = match t.fate {
                Fate::Pending if self.m.ctx_gone.get() => None,
                Fate::Pending => Some(format!("h{} ({}) was dropped unrun while its context lives", self.id, t.what)),
                f => Some(format!("h{} ({}) dropped after it {f:?}", self.id, t.what)),
            };
            t.fate = Fate::Dropped;
            msg
        };
        self.m.log(|| format!("drop h{}", self.id));
        if let Some(msg) = msg {
            self.m.fail(msg);
        }
    }
}

/// Counts the handlers on the stack, through unwinding too.
struct Depth<'a>(&'a Model);

impl Drop for Depth<'_> {
    fn drop(&mut self) {
        self.0.depth.set(self.0.depth.get() - 1);
    }
}

/// The frame of every handler: it records the run, checks what `check`
/// checks, then (unless quiet) does a few random things itself, and may
/// panic.
fn frame(mut tok: Tok, check: impl FnOnce(&Rc<Model>, &Tok)) {
    tok.run();
    let m = tok.m.clone();
    m.depth.set(m.depth.get() + 1);
    let _depth = Depth(&m);
    check(&m, &tok);
    drop(tok);
    if m.quiet.get() || m.failed() || m.profile.get() == Profile::Server {
        return;
    }
    let n = [0, 0, 0, 1, 1, 2][m.rng().below(6)];
    for _ in 0..n {
        action(&m, true);
    }
    if !m.failed() && m.pct(3) {
        m.count(|s| s.panics += 1);
        m.log(|| "panic".into());
        panic::panic_any(Injected);
    }
}

// ---------------------------------------------------------------- datagrams

/// The bytes of datagram `id`: its id first, so that most are unique.
fn payload(id: usize, len: usize) -> Vec<u8> {
    let key = (id as u64).wrapping_mul(0x9E37_79B9).wrapping_add(0x5151);
    (0..len).map(|i| if i < 8 { key.to_le_bytes()[i] } else { (key as u8).wrapping_add(i as u8) }).collect()
}

/// Splits `len` bytes into `count` buffers (some may be empty).
fn split(m: &Model, bytes: &[u8], count: usize) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = (1..count).map(|_| m.rng().range(0, bytes.len())).collect();
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(count);
    let mut at = 0;
    for c in cuts.into_iter().chain([bytes.len()]) {
        out.push(bytes[at..c].to_vec());
        at = c;
    }
    out
}

/// A datagram length: mostly small, sometimes empty, sometimes large.
fn dgram_len(m: &Model) -> usize {
    let mut r = m.rng();
    match r.below(20) {
        0 => 0,
        1..=5 => r.range(1, 16),
        6..=15 => r.range(17, 1500),
        16..=18 => r.range(1501, 9000),
        _ => r.range(9001, 40_000),
    }
}

/// Most datagrams waiting at one receiver: a full UDP receive buffer would
/// drop (and then nothing proves a loss is a bug), and a Unix receiver's
/// queue holds `net.unix.max_dgram_qlen` (10 by default) before its
/// unconnected senders block with no wakeup from the kernel.
fn room_for(rec: &SockRec, dgrams: &[Dgram], len: usize) -> bool {
    let waiting = rec.inbox.iter().filter(|&&d| !dgrams[d].dead).count();
    let bytes: usize = rec.inbox.iter().map(|&d| dgrams[d].bytes.len() + 1024).sum();
    if rec.udp { waiting < 40 && bytes + len < 150_000 } else { waiting < 8 }
}

/// The receiver's addresses seen as senders.
fn from_addr(from: Option<Addr>) -> String {
    from.map_or_else(|| "?".into(), |a| format!("{a:?}"))
}

impl SockRec {
    /// How many datagrams whose send completed still wait here: those in
    /// the inbox, less the ones ambiguous receives took.
    fn sent_waiting(&self, dgrams: &[Dgram]) -> usize {
        let sent = self.inbox.iter().filter(|&&d| dgrams[d].sent && !dgrams[d].gone).count();
        sent.saturating_sub(self.wild.len())
    }
}

/// A receive on socket `s` got `got` (`room` bytes offered) from `from`
/// (`None` when the form does not report it). Finds the datagram it must
/// be; a peek leaves it waiting. A synchronous receive is matched when it
/// returns, while a receive that completed earlier may not have run its
/// handler yet: it then tells nothing of the order.
///
/// A short or truncated datagram may fit several that wait (the same
/// sender's, sent in another order than started, say): the receive took one
/// of them, which later receives tell (see [`take`]).
fn match_received(m: &Model, s: usize, got: &[u8], room: usize, from: Option<Addr>, peek: bool, sync: bool) {
    let mut socks = m.socks.borrow_mut();
    let mut dgrams = m.dgrams.borrow_mut();
    let rec = &mut socks[s];
    let unordered = sync && rec.reads.iter().any(|(seq, op)| rec.read_order.contains(seq) && !op.is_pending());
    let fits = |g: &Dgram| {
        !g.dead
            && from.as_ref().is_none_or(|f| *f == g.from)
            && got.len() == g.bytes.len().min(room)
            && g.bytes[..got.len()] == *got
    };
    let candidates: Vec<usize> = rec.inbox.iter().copied().filter(|&d| fits(&dgrams[d])).collect();
    let peek_tag = if peek { " (peek)" } else { "" };
    let mut failure = None;
    match candidates[..] {
        [] => {
            // What a peek saw may have been received since, before its handler ran.
            if !(peek && dgrams.iter().any(|g| g.to == s && g.received && fits(g))) {
                let waiting: Vec<String> = rec
                    .inbox
                    .iter()
                    .map(|&d| {
                        format!("d{d}({} B from {:?}, sent {})", dgrams[d].bytes.len(), dgrams[d].from, dgrams[d].sent)
                    })
                    .collect();
                failure = Some(format!(
                    "socket {s} received {} bytes (room {room}) from {} that match no datagram sent to it; waiting: [{}]",
                    got.len(),
                    from_addr(from),
                    waiting.join(", ")
                ));
            }
        }
        _ if peek => m.log(|| format!("  = one of {candidates:?}{peek_tag}")),
        [id] => {
            m.log(|| format!("  = d{id}"));
            // An ambiguous receive may have had it: then order tells nothing.
            let involved = rec.wild.iter().any(|w| w.contains(&id));
            let overtaken = dgrams[id].overtaken && !involved;
            let (sender, ordered) = (dgrams[id].from.clone(), dgrams[id].ordered);
            failure = take(rec, &mut dgrams, id).err();
            if ordered && !unordered && !involved {
                // Earlier datagrams of the same sender that still wait were
                // overtaken: they must never arrive now.
                for &d in &rec.inbox {
                    if d < id
                        && dgrams[d].ordered
                        && dgrams[d].from == sender
                        && !rec.wild.iter().any(|w| w.contains(&d))
                    {
                        dgrams[d].overtaken = true;
                    }
                }
            }
            if overtaken {
                failure =
                    Some(format!("d{id} arrived after a later datagram of the same sender (per-socket FIFO broken)"));
            }
        }
        _ => {
            m.log(|| format!("  = one of {candidates:?}"));
            rec.wild.push(candidates);
        }
    }
    drop((socks, dgrams));
    if !peek {
        m.count(|st| st.datagrams += 1);
    }
    if let Some(f) = failure {
        m.fail(format!("socket {s}: {f}"));
    }
}

/// Datagram `id` was received: it leaves the inbox and the sets of the
/// ambiguous receives; a set left with one datagram says which that receive
/// took, and so on. A set left empty is a receive that got a datagram
/// which cannot be there.
fn take(rec: &mut SockRec, dgrams: &mut [Dgram], id: usize) -> Result<(), String> {
    rec.inbox.retain(|&d| d != id);
    dgrams[id].received = true;
    forget(rec, dgrams, id)
}

/// Datagram `id` is no longer a candidate of the ambiguous receives.
fn forget(rec: &mut SockRec, dgrams: &mut [Dgram], id: usize) -> Result<(), String> {
    let mut out = vec![id];
    while let Some(x) = out.pop() {
        for w in rec.wild.iter_mut() {
            w.retain(|&d| d != x);
        }
        if rec.wild.iter().any(Vec::is_empty) {
            return Err(format!("a receive got a datagram that matches none left (last ruled out: d{x})"));
        }
        while let Some(i) = rec.wild.iter().position(|w| w.len() == 1) {
            let y = rec.wild.remove(i)[0];
            rec.inbox.retain(|&d| d != y);
            dgrams[y].received = true;
            out.push(y);
        }
    }
    Ok(())
}

/// The datagram of a send that did not happen leaves the receiver's inbox.
fn unsend(m: &Model, id: Option<usize>, why: Error) {
    let Some(id) = id else { return };
    let mut dgrams = m.dgrams.borrow_mut();
    if dgrams[id].received {
        drop(dgrams);
        m.fail(format!("d{id} arrived though its send completed with {why:?}"));
        return;
    }
    dgrams[id].dead = true;
    let to = dgrams[id].to;
    let mut socks = m.socks.borrow_mut();
    socks[to].inbox.retain(|&d| d != id);
    let r = forget(&mut socks[to], &mut dgrams, id);
    drop((socks, dgrams));
    if let Err(e) = r {
        m.fail(format!("socket {to}: {e} (d{id}'s send completed with {why:?})"));
    }
}

// ---------------------------------------------------------------- actions

/// Picks a socket: an open one mostly, a closed one now and then.
fn pick_sock(m: &Model, udp: Option<bool>) -> Option<usize> {
    let socks = m.socks.borrow();
    let fits = |r: &SockRec| udp.is_none_or(|u| r.udp == u);
    let open: Vec<usize> = (0..socks.len()).filter(|&i| socks[i].open && fits(&socks[i])).collect();
    let closed: Vec<usize> = (0..socks.len()).filter(|&i| !socks[i].open && fits(&socks[i])).collect();
    drop(socks);
    let mut r = m.rng();
    if !closed.is_empty() && (open.is_empty() || r.percent(4)) {
        return Some(closed[r.below(closed.len())]);
    }
    (!open.is_empty()).then(|| open[r.below(open.len())])
}

fn sock_of(m: &Model, s: usize) -> Option<Sock> {
    m.socks.borrow()[s].sock.clone()
}

/// Records an operation that can be cancelled later.
fn keep_op(m: &Model, tok: usize, op: &Operation) {
    let mut ops = m.ops.borrow_mut();
    if ops.len() >= 24 {
        ops.remove(0);
    }
    ops.push((tok, op.clone()));
}

/// An operation starts on socket `s` in one direction: its number there.
fn start_op(m: &Model, s: usize, write: bool) -> u64 {
    let mut socks = m.socks.borrow_mut();
    let r = &mut socks[s];
    r.seq += 1;
    let order = if write { &mut r.write_order } else { &mut r.read_order };
    order.insert(r.seq);
    r.seq
}

/// Completion order within one direction of one socket: an operation that
/// ends other than aborted must be the oldest still pending there.
fn check_order(m: &Model, s: usize, write: bool, seq: u64, err: Error) {
    let mut socks = m.socks.borrow_mut();
    let order = if write { &mut socks[s].write_order } else { &mut socks[s].read_order };
    let older = order.range(..seq).next().copied();
    order.remove(&seq);
    drop(socks);
    if err != Error::OPERATION_ABORTED
        && let Some(o) = older
    {
        let dir = if write { "write" } else { "read" };
        m.fail(format!("socket {s}: {dir} operation #{seq} completed ({err:?}) before #{o}, started earlier"));
    }
}

fn new_sock(m: &Rc<Model>) {
    let udp = m.profile.get() != Profile::General || m.pct(70);
    let made = if udp {
        UdpSocket::bind(&m.ex, "127.0.0.1:0".parse().unwrap()).and_then(|s| {
            let _ = s.set_recv_buffer_size(1 << 20);
            Ok((Addr::Ip(s.local_addr()?), Sock::Udp(s)))
        })
    } else {
        let n = m.names.get();
        m.names.set(n + 1);
        let path = m.dir.join(format!("s{n}"));
        UnixDatagram::bind(&m.ex, &path).map(|s| {
            // A small send buffer (the kernel doubles it to 32 KiB): sends
            // block after a few datagrams in flight.
            let _ = s.with_socket2(|s| s.set_send_buffer_size(16_384));
            (Addr::Path(path), Sock::Unix(s))
        })
    };
    let Ok((addr, sock)) = made else {
        m.log(|| "new socket: failed (context gone)".into());
        return;
    };
    let mut socks = m.socks.borrow_mut();
    let id = socks.len();
    let mut peer = None;
    if let Sock::Udp(s) = &sock
        && m.pct(25)
    {
        let others: Vec<usize> = (0..socks.len()).filter(|&i| socks[i].open && socks[i].udp).collect();
        if !others.is_empty() {
            let p = others[m.rng().below(others.len())];
            if let Addr::Ip(a) = socks[p].addr {
                s.connect(a).unwrap();
                peer = Some(p);
            }
        }
    }
    let reports = match &sock {
        Sock::Udp(s) if m.pct(20) => s.set_recv_errors(true).is_ok(),
        _ => false,
    };
    let real = m.profile.get() != Profile::Simulated;
    let meta = match &sock {
        // Half of them with GRO too: their plain receives go through the
        // loop's own space (one datagram each, whatever the kernel coalesced).
        Sock::Udp(s) if m.pct(20) => {
            s.set_recv_pktinfo(true).is_ok()
                && (!real || s.set_recv_ttl(true).is_ok())
                && (!real || !m.pct(50) || s.set_gro(true).is_ok())
        }
        _ => false,
    };
    m.log(|| {
        let connected = peer.map_or(String::new(), |p| format!(" connected to {p}"));
        let reports = if reports { ", error reports on" } else { "" };
        format!("new socket {id} {addr:?}{connected}{reports}{}", if meta { ", metadata on" } else { "" })
    });
    socks.push(SockRec {
        sock: Some(sock),
        open: true,
        addr,
        udp,
        peer,
        refused_ok: false,
        reports,
        meta,
        read_shut: false,
        inbox: Vec::new(),
        wild: Vec::new(),
        reads: Vec::new(),
        writes: Vec::new(),
        read_order: BTreeSet::new(),
        write_order: BTreeSet::new(),
        seq: 0,
    });
}

/// Socket `s` closed (or gone with its last handle): what waited in it is
/// lost (but receives that completed before may still hold some), and
/// sockets connected to it may hear CONNECTION_REFUSED.
fn closed(m: &Model, s: usize) {
    let mut socks = m.socks.borrow_mut();
    socks[s].open = false;
    for r in socks.iter_mut() {
        if r.peer == Some(s) && !r.reports {
            r.refused_ok = true;
        }
    }
    let mut dgrams = m.dgrams.borrow_mut();
    for &d in &socks[s].inbox {
        dgrams[d].gone = true;
    }
}

fn act_send(m: &Rc<Model>) {
    let Some(s) = pick_sock(m, None) else { return };
    let udp = m.socks.borrow()[s].udp;
    let Some(to) = pick_sock(m, Some(udp)) else { return };
    send_on(m, s, to);
}

/// Several sends from one socket to one socket, or several receives on one
/// socket: queues longer than the fairness budget.
fn act_burst(m: &Rc<Model>) {
    let Some(s) = pick_sock(m, None) else { return };
    let udp = m.socks.borrow()[s].udp;
    let Some(to) = pick_sock(m, Some(udp)) else { return };
    let n = m.rng().range(2, 24);
    let sends = m.pct(50);
    m.log(|| format!("burst of {n} {}", if sends { "sends" } else { "receives" }));
    for _ in 0..n {
        if sends { send_on(m, s, to) } else { recv_on(m, s) }
    }
}

fn send_on(m: &Rc<Model>, s: usize, to: usize) {
    let (udp, open, peer, refused_ok, sender_addr) = {
        let socks = m.socks.borrow();
        let r = &socks[s];
        (r.udp, r.open, r.peer, r.refused_ok, r.addr.clone())
    };
    let Some(sock) = sock_of(m, s) else { return };
    // A connected UDP socket sends to its peer with async_send now and then.
    let connected_form = peer == Some(to) && m.pct(50);
    // A Unix datagram must fit the sender's buffer (32 KiB, see `new_sock`).
    let mut len = if udp { dgram_len(m) } else { dgram_len(m).min(20_000) };
    let oversize = udp && m.pct(1);
    if oversize {
        len = 65_508 + m.rng().below(5000);
    }
    let many = !oversize && m.pct(1);
    let count = if many { 1025 + m.rng().below(50) } else { [1, 1, 1, 1, 2, 3, 4][m.rng().below(7)] };
    let (to_open, to_addr, deliverable, fits) = {
        let socks = m.socks.borrow();
        let r = &socks[to];
        let filter = r.peer.is_none_or(|p| p == s);
        (r.open, r.addr.clone(), r.open && filter, room_for(r, &m.dgrams.borrow(), len))
    };
    let expected = if !open {
        Error::BAD_DESCRIPTOR
    } else if many {
        Error::INVALID_ARGUMENT
    } else if oversize {
        Error::MESSAGE_SIZE
    } else {
        Error::NONE
    };
    if expected == Error::NONE && deliverable && !fits {
        return; // the receiver is full: a drop would prove nothing
    }
    if udp && peer.is_some() && !deliverable {
        // Nobody takes it: the ICMP report reaches a connected sender
        // (unless its error reports are on: then only its error queue).
        let r = &mut m.socks.borrow_mut()[s];
        r.refused_ok = !r.reports;
    }
    let id = m.dgrams.borrow().len();
    let bytes = payload(id, len);
    let bufs = if many { vec![vec![0u8; 1]; count] } else { split(m, &bytes, count) };
    let tracked = (expected == Error::NONE && deliverable).then_some(id);
    m.dgrams.borrow_mut().push(Dgram {
        to,
        from: sender_addr,
        bytes,
        sent: false,
        received: false,
        ordered: true,
        overtaken: false,
        dead: tracked.is_none(),
        gone: false,
    });
    if let Some(id) = tracked {
        m.socks.borrow_mut()[to].inbox.push(id);
    }
    let seq = start_op(m, s, true);
    let what = format!("send #{seq} d{id} {len} B in {count} buffers {s} -> {to}");
    let tok = Tok::new(m, what.clone());
    let tid = tok.id;
    m.log(|| format!("h{tid} {what} (expect {expected:?})"));
    let unix_refused = !udp && !to_open;
    let handler = move |err: Error, n: usize| {
        frame(tok, |m, tok| {
            check_order(m, s, true, seq, err);
            let refused_now = m.socks.borrow()[s].refused_ok || refused_ok;
            let unix_gone = !udp && !m.socks.borrow()[to].open;
            let ok = match err {
                Error::NONE => expected == Error::NONE && n == len,
                Error::OPERATION_ABORTED => true,
                e if e == expected => true,
                Error::CONNECTION_REFUSED if refused_now || unix_refused || unix_gone => true,
                Error::NOT_FOUND if unix_refused || unix_gone => true,
                _ => false,
            };
            if !ok {
                m.fail(format!("send d{id} ({len} B) completed with ({err:?}, {n}), expected {expected:?}"));
            }
            if tok.expects_abort() && err != Error::OPERATION_ABORTED {
                m.fail(format!("send d{id}: a cancel returned true, yet it completed with {err:?}"));
            }
            if err == Error::NONE {
                if let Some(id) = tracked {
                    m.dgrams.borrow_mut()[id].sent = true;
                }
            } else {
                unsend(m, tracked, err);
            }
        })
    };
    let op = m.initiate(|| match (&sock, &to_addr) {
        (Sock::Udp(u), _) if connected_form => u.async_send(bufs, handler),
        (Sock::Udp(u), Addr::Ip(a)) => u.async_send_to(bufs, *a, handler),
        (Sock::Unix(u), Addr::Path(p)) => u.async_send_to(bufs, p, handler),
        _ => unreachable!("sockets of one kind"),
    });
    keep_op(m, tid, &op);
    m.socks.borrow_mut()[s].writes.push(op);
}

fn act_sync_send(m: &Rc<Model>) {
    let Some(s) = pick_sock(m, None) else { return };
    let (udp, open, sender_addr) = {
        let socks = m.socks.borrow();
        (socks[s].udp, socks[s].open, socks[s].addr.clone())
    };
    let Some(sock) = sock_of(m, s) else { return };
    let Some(to) = pick_sock(m, Some(udp)) else { return };
    let len = if udp { dgram_len(m) } else { dgram_len(m).min(20_000) };
    let (to_addr, deliverable, fits, to_open) = {
        let socks = m.socks.borrow();
        let r = &socks[to];
        (r.addr.clone(), r.open && r.peer.is_none_or(|p| p == s), room_for(r, &m.dgrams.borrow(), len), r.open)
    };
    if deliverable && !fits {
        return;
    }
    if udp && !deliverable && m.socks.borrow()[s].peer.is_some() {
        let r = &mut m.socks.borrow_mut()[s];
        r.refused_ok = !r.reports;
    }
    let id = m.dgrams.borrow().len();
    let bytes = payload(id, len);
    let r = m.initiate(|| match (&sock, &to_addr) {
        (Sock::Udp(u), Addr::Ip(a)) => u.set_nonblocking(true).and_then(|_| u.send_to(&bytes[..], *a)),
        (Sock::Unix(u), Addr::Path(p)) => u.set_nonblocking(true).and_then(|_| u.send_to(&bytes[..], p)),
        _ => unreachable!("sockets of one kind"),
    });
    m.log(|| format!("sync send d{id} {len} B {s} -> {to}: {r:?}"));
    let ok = match &r {
        Ok(n) => open && *n == len,
        Err(e) if !open => e.raw_os_error() == Error::BAD_DESCRIPTOR.raw_os_error(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => !udp,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && m.socks.borrow()[s].refused_ok => true,
        Err(e) => {
            !udp && !to_open && matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound)
        }
    };
    if !ok {
        m.fail(format!("sync send of {len} B from socket {s} (open {open}) to {to}: {r:?}"));
    }
    let sent = r.is_ok() && deliverable;
    m.dgrams.borrow_mut().push(Dgram {
        to,
        from: sender_addr,
        bytes,
        sent,
        received: false,
        ordered: false,
        overtaken: false,
        dead: !sent,
        gone: false,
    });
    if sent {
        m.socks.borrow_mut()[to].inbox.push(id);
    }
}

/// Buffers offering `room` bytes in `count` pieces.
fn recv_bufs(m: &Model) -> Vec<Vec<u8>> {
    let room = {
        let mut r = m.rng();
        match r.below(20) {
            0 => 0,
            1..=4 => r.range(1, 16),
            5..=14 => r.range(17, 2000),
            _ => r.range(2001, 70_000),
        }
    };
    let count = [1, 1, 1, 2, 3][m.rng().below(5)];
    split(m, &vec![0u8; room], count)
}

fn concat(bufs: &[Vec<u8>], n: usize) -> (Vec<u8>, usize) {
    let room = bufs.iter().map(Vec::len).sum();
    let mut all: Vec<u8> = bufs.iter().flatten().copied().collect();
    all.truncate(n);
    (all, room)
}

fn ip_from(a: SocketAddr) -> Option<Addr> {
    Some(Addr::Ip(a))
}

fn act_recv(m: &Rc<Model>) {
    if let Some(s) = pick_sock(m, None) {
        recv_on(m, s);
    }
}

fn recv_on(m: &Rc<Model>, s: usize) {
    let Some(sock) = sock_of(m, s) else { return };
    let open = m.socks.borrow()[s].open;
    let bufs = recv_bufs(m);
    let peek = m.pct(6);
    let with_from = !matches!(sock, Sock::Udp(_)) || m.pct(70);
    let seq = start_op(m, s, false);
    let room: usize = bufs.iter().map(Vec::len).sum();
    let what =
        format!("receive #{seq} on {s}, room {room} in {} buffers{}", bufs.len(), if peek { ", peek" } else { "" });
    let tok = Tok::new(m, what.clone());
    let tid = tok.id;
    m.log(|| format!("h{tid} {what}"));
    let flags = if peek { MessageFlags::PEEK } else { MessageFlags::NONE };
    let done = move |err: Error, n: usize, bufs: Vec<Vec<u8>>, from: Option<Addr>| {
        frame(tok, |m, tok| {
            check_order(m, s, false, seq, err);
            let (refused_ok, read_shut) = {
                let r = &m.socks.borrow()[s];
                (r.refused_ok, r.read_shut)
            };
            match err {
                Error::NONE => {
                    let (got, room) = concat(&bufs, n);
                    if n > room {
                        m.fail(format!("receive on {s}: {n} bytes into {room}"));
                    } else {
                        match_received(m, s, &got, room, from, peek, false);
                    }
                }
                Error::OPERATION_ABORTED => {}
                Error::BAD_DESCRIPTOR if !open => {}
                Error::CONNECTION_REFUSED if refused_ok => {}
                // Nothing was queued when it ran (a datagram still in the
                // inbox goes to a later receive: nothing is lost).
                Error::EOF if read_shut && n == 0 => {}
                e => m.fail(format!("receive on {s} (open {open}) completed with ({e:?}, {n})")),
            }
            if !open && err != Error::BAD_DESCRIPTOR {
                m.fail(format!("receive on closed socket {s} completed with {err:?}, not BAD_DESCRIPTOR"));
            }
            if tok.expects_abort() && err != Error::OPERATION_ABORTED {
                m.fail(format!("receive on {s}: a cancel returned true, yet it completed with {err:?}"));
            }
            // A server's receive loop: the handler starts the next receive.
            if err.is_ok() && !m.quiet.get() {
                let again = if m.profile.get() == Profile::Server {
                    [0, 0, 1, 1, 2][m.rng().below(5)]
                } else {
                    usize::from(m.pct(40))
                };
                for _ in 0..again {
                    m.log(|| "again".into());
                    recv_on(m, s);
                }
            }
        })
    };
    // Some receives ask for the datagram's metadata (`recvmsg`; on a socket
    // with metadata on, `recvmmsg` batches mixing them with plain ones):
    // the same rules hold, a truncated one filled its room, and the
    // switches decide what is filled.
    let (switches, bound) = {
        let r = &m.socks.borrow()[s];
        (r.meta, r.addr.clone())
    };
    let with_meta = with_from && !peek && (m.pct(15) || switches && m.pct(50));
    let real = m.profile.get() != Profile::Simulated;
    let op = m.initiate(|| match &sock {
        Sock::Udp(u) if with_meta => {
            let mm = m.clone();
            u.async_receive_msg(bufs, move |e, meta, b| {
                if e.is_ok() && meta.truncated && meta.len != room {
                    mm.fail(format!("receive_msg on {s}: truncated, yet {} bytes in a room of {room}", meta.len));
                }
                if e.is_ok() {
                    // Every datagram here went to the address the socket is bound to.
                    let expect = match &bound {
                        Addr::Ip(a) if switches && !a.ip().is_unspecified() => Some(a.ip()),
                        _ => None,
                    };
                    if (meta.local.is_some() != switches) || (expect.is_some() && meta.local != expect) {
                        mm.fail(format!(
                            "receive_msg on {s} (metadata {switches}, bound {bound:?}): local {:?}",
                            meta.local
                        ));
                    }
                    if meta.ttl.is_some() != (switches && real) {
                        mm.fail(format!("receive_msg on {s} (metadata {switches}): ttl {:?}", meta.ttl));
                    }
                }
                // Coalesced by GRO: the datagrams before the last, `stride`
                // bytes each, are matched here; the last goes on as one receive.
                if e.is_ok()
                    && let Some(stride) = meta.segment_size.filter(|&st| st > 0 && st < meta.len)
                {
                    let (all, _) = concat(&b, meta.len);
                    let segments: Vec<&[u8]> = all.chunks(stride).collect();
                    let (last, whole) = segments.split_last().expect("two segments at least");
                    for segment in whole {
                        mm.log(|| format!("  coalesced: a datagram of {} B", segment.len()));
                        match_received(&mm, s, segment, usize::MAX, ip_from(meta.from), false, false);
                    }
                    return done(e, last.len(), vec![last.to_vec()], ip_from(meta.from));
                }
                done(e, meta.len, b, ip_from(meta.from))
            })
        }
        Sock::Udp(u) if with_from => {
            u.async_receive_from_with_flags(bufs, flags, move |e, n, b, from| done(e, n, b, ip_from(from)))
        }
        Sock::Udp(u) => u.async_receive_with_flags(bufs, flags, move |e, n, b| done(e, n, b, None)),
        Sock::Unix(u) => u.async_receive_from_with_flags(bufs, flags, move |e, n, b, from| {
            let from = from.and_then(|a| a.as_pathname().map(Path::to_path_buf)).map(Addr::Path);
            done(e, n, b, from)
        }),
    });
    keep_op(m, tid, &op);
    m.socks.borrow_mut()[s].reads.push((seq, op));
}

fn act_sync_recv(m: &Rc<Model>) {
    let Some(s) = pick_sock(m, None) else { return };
    let Some(sock) = sock_of(m, s) else { return };
    let open = m.socks.borrow()[s].open;
    let mut buf = vec![0u8; [16, 2000, 70_000][m.rng().below(3)]];
    let r = m.initiate(|| match &sock {
        Sock::Udp(u) => {
            u.set_nonblocking(true).and_then(|_| u.receive_from(&mut buf[..])).map(|(n, a)| (n, ip_from(a)))
        }
        Sock::Unix(u) => u
            .set_nonblocking(true)
            .and_then(|_| u.receive_from(&mut buf[..]))
            .map(|(n, a)| (n, a.as_pathname().map(|p| Addr::Path(p.to_path_buf())))),
    });
    m.log(|| format!("sync receive on {s}: {:?}", r.as_ref().map(|(n, _)| *n)));
    match r {
        Ok((n, from)) => {
            let room = buf.len();
            buf.truncate(n);
            match_received(m, s, &buf, room, from, false, true);
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            let socks = m.socks.borrow();
            let dgrams = m.dgrams.borrow();
            // A receive that completed and whose handler has not run yet may
            // hold the datagram.
            let r = &socks[s];
            let taken = r.reads.iter().any(|(seq, op)| r.read_order.contains(seq) && !op.is_pending());
            if !taken && r.sent_waiting(&dgrams) > 0 {
                let msg = format!("sync receive on {s} said would-block while a datagram sent to it waits");
                drop((socks, dgrams));
                m.fail(msg);
            }
        }
        Err(_) if !open => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && m.socks.borrow()[s].refused_ok => {}
        Err(e) => m.fail(format!("sync receive on {s}: {e}")),
    }
}

fn act_wait(m: &Rc<Model>) {
    let Some(s) = pick_sock(m, None) else { return };
    let Some(sock) = sock_of(m, s) else { return };
    let open = m.socks.borrow()[s].open;
    let write = m.pct(35);
    let seq = start_op(m, s, write);
    let what = format!("{} wait #{seq} on {s}", if write { "write" } else { "read" });
    let tok = Tok::new(m, what.clone());
    let tid = tok.id;
    m.log(|| format!("h{tid} {what}"));
    let handler = move |err: Error| {
        frame(tok, |m, tok| {
            check_order(m, s, write, seq, err);
            let ok = match err {
                Error::NONE | Error::OPERATION_ABORTED => open,
                Error::BAD_DESCRIPTOR => !open,
                Error::CONNECTION_REFUSED => m.socks.borrow()[s].refused_ok,
                _ => false,
            };
            if !ok {
                m.fail(format!("{what} (open {open}) completed with {err:?}"));
            }
            if tok.expects_abort() && err != Error::OPERATION_ABORTED {
                m.fail(format!("{what}: a cancel returned true, yet it completed with {err:?}"));
            }
        })
    };
    let ty = if write { WaitType::Write } else { WaitType::Read };
    let op = m.initiate(|| match &sock {
        Sock::Udp(u) => u.async_wait(ty, handler),
        Sock::Unix(u) => u.async_wait(ty, handler),
    });
    keep_op(m, tid, &op);
    let mut socks = m.socks.borrow_mut();
    if write { socks[s].writes.push(op) } else { socks[s].reads.push((seq, op)) }
}

fn act_post(m: &Rc<Model>, how: usize) {
    let inside = m.depth.get() > 0;
    // dispatch from inside the loop runs inline; anything else is a post
    let inline = how == 2 && inside;
    let seq = if inline {
        None
    } else {
        m.post_seq.set(m.post_seq.get() + 1);
        Some(m.post_seq.get())
    };
    let name = ["post", "defer", "dispatch"][how];
    let what = format!("{name}{}", seq.map_or(String::new(), |s| format!(" #{s}")));
    let tok = Tok::new(m, what.clone());
    let tid = tok.id;
    m.log(|| format!("h{tid} {what}"));
    let f = move || {
        frame(tok, |m, _| {
            if let Some(seq) = seq {
                if seq <= m.last_post.get() {
                    m.fail(format!("post #{seq} ran after post #{} (FIFO broken)", m.last_post.get()));
                }
                m.last_post.set(seq);
            }
        })
    };
    match how {
        0 => m.initiate(|| m.ex.post(f)),
        1 => m.initiate(|| m.ex.defer(f)),
        _ if inline => m.ex.dispatch(f),
        _ => m.initiate(|| m.ex.dispatch(f)),
    }
    if inline && !m.ctx_gone.get() && m.toks.borrow()[tid].fate != Fate::Ran {
        m.fail(format!("h{tid}: dispatch from inside the loop did not run inline"));
    }
}

fn pick_timer(m: &Model) -> Option<(usize, SteadyTimer)> {
    let timers = m.timers.borrow();
    let live: Vec<usize> = (0..timers.len()).filter(|&i| timers[i].is_some()).collect();
    if live.is_empty() {
        return None;
    }
    let i = live[m.rng().below(live.len())];
    Some((i, timers[i].clone().unwrap()))
}

fn act_timer(m: &Rc<Model>) {
    let choice = m.rng().below(20);
    if choice == 0 || m.timers.borrow().iter().all(Option::is_none) {
        new_timer(m);
        return;
    }
    let Some((i, t)) = pick_timer(m) else { return };
    match choice {
        1..=5 => {
            // Mostly deadlines whose outcome does not hang on how fast the
            // machine is (a seed then replays the same): steps in the past
            // from one base (equal deadlines are common), now, or beyond
            // the case. One in ten is a few milliseconds ahead: those
            // check that waits do wait.
            let (d, at) = {
                let mut r = m.rng();
                match r.below(10) {
                    0..=3 => (None, Some(m.base + Duration::from_micros(500 * r.below(12) as u64))),
                    4 | 5 => (Some(Duration::ZERO), None),
                    6..=8 => (Some(Duration::from_millis(r.range(500, 1000) as u64)), None),
                    _ => (Some(Duration::from_micros(r.range(300, 3000) as u64)), None),
                }
            };
            let pending = pending_waits(m, i);
            let n = m.initiate(|| match (d, at) {
                (Some(d), _) => t.expires_after(d),
                (_, Some(at)) => t.expires_at(at),
                _ => unreachable!(),
            });
            m.log(|| format!("timer {i} expires {d:?}{at:?}: {n} cancelled"));
            cancelled_waits(m, i, "expires", n, &pending);
        }
        6..=14 => {
            let deadline = t.expiry();
            let seq = m.wait_seq.get() + 1;
            m.wait_seq.set(seq);
            let what = format!("timer {i} wait #{seq}");
            let tok = Tok::new(m, what.clone());
            let tid = tok.id;
            m.log(|| format!("h{tid} {what}"));
            let started = Rc::new(Cell::new(None::<Instant>));
            let started2 = started.clone();
            let ex = m.ex.clone();
            let op = m.initiate(|| {
                t.async_wait(move |err| {
                    let now = ex.now();
                    frame(tok, |m, tok| match err {
                        Error::NONE => {
                            if now < deadline {
                                m.fail(format!("{what} completed {:?} early", deadline - now));
                            }
                            let start = started2.get().unwrap_or(now);
                            for f in m.fired.borrow().iter() {
                                // Both were pending when the other fired: the
                                // earlier (deadline, start order) goes first.
                                if start < f.deadline && (deadline, seq) < (f.deadline, f.seq) {
                                    m.fail(format!("{what} completed after wait #{} with a later deadline", f.seq));
                                }
                            }
                            m.fired.borrow_mut().push(Fired { deadline, seq });
                            if tok.expects_abort() {
                                m.fail(format!("{what}: a cancel returned true, yet it completed"));
                            }
                        }
                        Error::OPERATION_ABORTED => {}
                        e => m.fail(format!("{what} completed with {e:?}")),
                    })
                })
            });
            // Taken after the call: the wait was pending from before this instant.
            started.set(Some(m.ex.now()));
            keep_op(m, tid, &op);
            m.timer_waits.borrow_mut()[i].push((tid, op.clone()));
            m.waits.borrow_mut().push(op);
        }
        15..=16 => {
            let pending = pending_waits(m, i);
            let n = m.initiate(|| t.cancel());
            m.log(|| format!("timer {i} cancel: {n}"));
            cancelled_waits(m, i, "cancel", n, &pending);
        }
        17..=18 => {
            let pending = pending_waits(m, i);
            let n = m.initiate(|| t.cancel_one());
            m.log(|| format!("timer {i} cancel_one: {n}"));
            // The oldest pending wait, and only it.
            cancelled_waits(m, i, "cancel_one", n, &pending[..pending.len().min(1)]);
        }
        _ => {
            // The last handle: as Asio's destructor, it cancels the waits.
            let pending = pending_waits(m, i);
            m.log(|| format!("timer {i} dropped"));
            let t2 = m.timers.borrow_mut()[i].take();
            m.initiate(|| drop((t, t2)));
            cancelled_waits(m, i, "drop", pending.len(), &pending);
        }
    }
}

fn new_timer(m: &Model) {
    m.log(|| "new timer".into());
    m.timers.borrow_mut().push(Some(SteadyTimer::new(&m.ex)));
    m.timer_waits.borrow_mut().push(Vec::new());
}

/// The handlers of timer `i`'s pending waits, oldest first.
fn pending_waits(m: &Model, i: usize) -> Vec<usize> {
    m.timer_waits.borrow()[i].iter().filter(|(_, op)| op.is_pending()).map(|(t, _)| *t).collect()
}

/// `what` on timer `i` said it cancelled `n` waits, and should have
/// cancelled exactly those of `expected`: each must end aborted.
fn cancelled_waits(m: &Model, i: usize, what: &str, n: usize, expected: &[usize]) {
    if n != expected.len() {
        m.fail(format!("timer {i}: {what} cancelled {n} waits, {} were due to be (h{expected:?})", expected.len()));
    }
    let mut toks = m.toks.borrow_mut();
    for &t in expected {
        toks[t].expect_abort = true;
    }
    drop(toks);
    let still: Vec<usize> = m.timer_waits.borrow()[i]
        .iter()
        .filter(|(t, op)| expected.contains(t) && op.is_pending())
        .map(|(t, _)| *t)
        .collect();
    if !still.is_empty() {
        m.fail(format!("timer {i}: after {what}, waits h{still:?} are still pending"));
    }
}

fn cancel_type(m: &Model) -> CancellationType {
    let all = [
        CancellationType::TERMINAL,
        CancellationType::PARTIAL,
        CancellationType::TOTAL,
        CancellationType::ALL,
        CancellationType::TERMINAL | CancellationType::PARTIAL,
        CancellationType::NONE,
    ];
    all[m.rng().below(all.len())]
}

fn act_cancel(m: &Rc<Model>) {
    let picked = {
        let ops = m.ops.borrow();
        (!ops.is_empty()).then(|| ops[m.rng().below(ops.len())].clone())
    };
    let Some((tok, op)) = picked else { return };
    let ty = cancel_type(m);
    if m.pct(40) {
        // Now, beyond the case, or (one in ten) a few milliseconds ahead.
        let d = {
            let mut r = m.rng();
            match r.below(10) {
                0..=4 => Duration::ZERO,
                5..=8 => Duration::from_millis(r.range(500, 1000) as u64),
                _ => Duration::from_micros(r.range(300, 2500) as u64),
            }
        };
        m.log(|| format!("cancel_after h{tok} {d:?} {ty:?}"));
        m.initiate(|| {
            op.cancel_after(d, ty);
        });
        return;
    }
    let was = op.is_pending();
    let r = m.initiate(|| op.cancel(ty));
    m.log(|| format!("cancel h{tok} {ty:?} (pending {was}): {r}"));
    // Socket operations and timer waits honour every kind.
    if r != (was && !ty.is_empty()) {
        m.fail(format!("cancel({ty:?}) of h{tok} (pending {was}) returned {r}"));
    }
    if r {
        if op.is_pending() {
            m.fail(format!("h{tok} still pending after a cancel returned true"));
        }
        m.toks.borrow_mut()[tok].expect_abort = true;
    }
}

fn act_socket(m: &Rc<Model>) {
    // A simulated socket is made, cancelled, closed and dropped; it has no
    // OS socket to release, shut down or set options on.
    let choice = if m.profile.get() == Profile::Simulated { m.rng().below(8) } else { m.rng().below(13) };
    let open_count = m.socks.borrow().iter().filter(|r| r.open).count();
    if choice < 3 || open_count == 0 {
        if open_count < 6 {
            new_sock(m);
        }
        return;
    }
    let Some(s) = pick_sock(m, None) else { return };
    let Some(sock) = sock_of(m, s) else { return };
    let open = m.socks.borrow()[s].open;
    match choice {
        3..=5 => {
            let r = m.initiate(|| match &sock {
                Sock::Udp(u) => u.cancel(),
                Sock::Unix(u) => u.cancel(),
            });
            m.log(|| format!("cancel socket {s}: {r:?}"));
            if r.is_ok() != open {
                m.fail(format!("cancel of socket {s} (open {open}): {r:?}"));
            }
        }
        6 => {
            m.log(|| format!("close socket {s}"));
            m.initiate(|| match &sock {
                Sock::Udp(u) => u.close(),
                Sock::Unix(u) => u.close(),
            });
            closed(m, s);
        }
        7 => {
            m.log(|| format!("drop socket {s}"));
            let last = m.socks.borrow_mut()[s].sock.take();
            m.initiate(|| drop((sock, last)));
            closed(m, s);
        }
        8..=9 => {
            let again = m.pct(60);
            let ex = m.ex.clone();
            let r = m.initiate(|| match &sock {
                Sock::Udp(u) => {
                    u.release().map(|std| if again { UdpSocket::from_std(&ex, std).ok().map(Sock::Udp) } else { None })
                }
                Sock::Unix(u) => u
                    .release()
                    .map(|std| if again { UnixDatagram::from_std(&ex, std).ok().map(Sock::Unix) } else { None }),
            });
            m.log(|| format!("release socket {s} (adopt again {again}): {:?}", r.as_ref().map(Option::is_some)));
            match r {
                Ok(Some(new)) => m.socks.borrow_mut()[s].sock = Some(new),
                Ok(None) => {
                    let old = m.socks.borrow_mut()[s].sock.take();
                    m.initiate(|| drop((sock, old)));
                    closed(m, s);
                }
                // A datagram read ahead is held (UDP): nothing changed.
                Err(e) if open && e.kind() == std::io::ErrorKind::ResourceBusy => {}
                Err(_) if !open => {}
                Err(e) => m.fail(format!("release of socket {s}: {e}")),
            }
        }
        12 => {
            // Unix datagram sockets refuse senders once shut for reading
            // (EPIPE), which the send checks do not model: UDP only.
            if let Sock::Udp(u) = &sock {
                let r = m.initiate(|| u.shutdown(std::net::Shutdown::Read));
                m.log(|| format!("socket {s} shutdown(Read): {r:?}"));
                match r {
                    // Linux shuts an unconnected socket down too, though it
                    // says ENOTCONN.
                    Ok(()) => m.socks.borrow_mut()[s].read_shut = true,
                    Err(e) if open && e.kind() == std::io::ErrorKind::NotConnected => {
                        m.socks.borrow_mut()[s].read_shut = true;
                    }
                    Err(_) if !open => {}
                    Err(e) => m.fail(format!("shutdown(Read) of socket {s}: {e}")),
                }
            }
        }
        10 => {
            if let Sock::Udp(u) = &sock {
                let on = m.pct(50);
                let r = m.initiate(|| u.set_send_coalescing(on));
                m.log(|| format!("socket {s} set_send_coalescing({on}): {r:?}"));
            }
        }
        _ => {
            if let Sock::Udp(u) = &sock {
                let on = m.pct(50);
                let r = m.initiate(|| u.set_gso(on));
                m.log(|| format!("socket {s} set_gso({on}): {r:?}"));
            }
        }
    }
}

fn act_misc(m: &Rc<Model>) {
    let Some(ctx) = m.ctx() else { return };
    let choice = m.rng().below(6);
    match choice {
        0 => {
            m.log(|| "work guard".into());
            let g = m.initiate(|| m.ex.work_guard());
            m.guards.borrow_mut().push(g);
        }
        1 => {
            let g = {
                let mut gs = m.guards.borrow_mut();
                (!gs.is_empty()).then(|| {
                    let i = m.rng().below(gs.len());
                    gs.remove(i)
                })
            };
            m.log(|| "work guard released".into());
            m.initiate(|| drop(g));
        }
        2 => {
            let n = [0, 1, 2, 3, 5, 8, usize::MAX][m.rng().below(7)];
            let r = m.initiate(|| ctx.set_handlers_per_pass(n));
            m.log(|| format!("handlers per pass {n}: {r:?}"));
            if r.is_ok() == (n == 0) {
                m.fail(format!("set_handlers_per_pass({n}): {r:?}"));
            }
        }
        3 => {
            let n = [0, 1, 2, 3, 5, 8, 64][m.rng().below(7)];
            let r = m.initiate(|| ctx.set_operations_per_event(n));
            m.log(|| format!("operations per event {n}: {r:?}"));
            if r.is_ok() == (n == 0) {
                m.fail(format!("set_operations_per_event({n}): {r:?}"));
            }
        }
        _ => {
            m.log(|| "stop".into());
            m.initiate(|| m.ex.stop());
        }
    }
}

/// How long a bounded run may take: none, or more than the handlers ready
/// need (and then it waits for I/O). A bound that cut a run short at a
/// point that depends on the machine's speed would make a seed replay
/// differently.
fn run_bound(m: &Model) -> Duration {
    if m.pct(70) { Duration::ZERO } else { Duration::from_millis(5) }
}

/// A run from inside a handler.
fn act_nested(m: &Rc<Model>) {
    if m.depth.get() == 0 || m.depth.get() > 3 {
        return;
    }
    let Some(ctx) = m.ctx() else { return };
    let which = m.rng().below(4);
    let d = run_bound(m);
    m.count(|s| s.nested += 1);
    m.log(|| format!("nested {}", ["poll", "poll_one", "run_one_for", "run_for"][which]));
    let n = match which {
        0 => ctx.poll(),
        1 => ctx.poll_one(),
        2 => ctx.run_one_for(d),
        _ => ctx.run_for(d),
    };
    m.log(|| format!("nested run: {n} handlers"));
}

/// One step of a `Profile::Server` case: receives queued on socket 0,
/// datagrams sent to it from socket 1, runs, idle checks.
fn server_step(m: &Rc<Model>, choice: usize) {
    match choice {
        0..=24 => {
            let n = m.rng().range(1, 16);
            m.log(|| format!("queue {n} receives"));
            for _ in 0..n {
                recv_on(m, 0);
            }
        }
        25..=49 => {
            let n = m.rng().range(1, 16);
            m.log(|| format!("send {n} datagrams"));
            for _ in 0..n {
                send_on(m, 1, 0);
            }
        }
        50..=84 => act_run(m),
        _ => check_idle(m),
    }
}

/// One random thing, from the top level or from a handler.
fn action(m: &Rc<Model>, in_handler: bool) {
    if m.failed() {
        return;
    }
    m.count(|s| s.actions += 1);
    let k = m.rng().below(100);
    if m.profile.get() == Profile::Simulated {
        // What a simulated context offers: no socket options, and no
        // synchronous call can wait.
        match k {
            0..=14 => act_post(m, k % 3),
            15..=34 => act_send(m),
            35..=37 => act_burst(m),
            38..=54 => act_recv(m),
            55..=57 => act_wait(m),
            58..=71 => act_timer(m),
            72..=79 => act_cancel(m),
            80..=85 => act_socket(m),
            86..=90 => act_misc(m),
            _ if in_handler => act_nested(m),
            _ => act_post(m, 0),
        }
        return;
    }
    if m.profile.get() != Profile::General {
        // Datagrams only: long queues on one or two sockets.
        match k {
            0..=29 => act_send(m),
            30..=54 => act_recv(m),
            55..=74 => act_burst(m),
            75..=79 => act_sync_send(m),
            80..=84 => act_sync_recv(m),
            85..=89 => act_cancel(m),
            90..=94 => act_post(m, 0),
            _ if in_handler => act_nested(m),
            _ => act_post(m, 2),
        }
        return;
    }
    match k {
        0..=7 => act_post(m, 0),
        8..=10 => act_post(m, 1),
        11..=15 => act_post(m, 2),
        16..=31 => act_send(m),
        32..=33 => act_burst(m),
        34..=36 => act_sync_send(m),
        37..=51 => act_recv(m),
        52..=53 => act_burst(m),
        54..=56 => act_sync_recv(m),
        57..=59 => act_wait(m),
        60..=72 => act_timer(m),
        73..=80 => act_cancel(m),
        81..=87 => act_socket(m),
        88..=91 => act_misc(m),
        _ if in_handler => act_nested(m),
        _ => act_post(m, 0),
    }
}

// ---------------------------------------------------------------- running

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".into())
}

/// Runs `f` on the context from the top level; an injected panic out of it
/// is expected, any other is a failure.
fn top_run(m: &Rc<Model>, what: &str, f: impl FnOnce(&IoContext) -> usize) -> Option<usize> {
    let ctx = m.ctx()?;
    let r = panic::catch_unwind(AssertUnwindSafe(|| f(&ctx)));
    match r {
        Ok(n) => {
            m.log(|| format!("{what}: {n} handlers"));
            Some(n)
        }
        Err(p) if p.is::<Injected>() => {
            m.log(|| format!("{what}: unwound by an injected panic"));
            None
        }
        Err(p) => {
            m.fail(format!("{what}: panicked: {}", panic_message(&*p)));
            None
        }
    }
}

fn act_run(m: &Rc<Model>) {
    let Some(ctx) = m.ctx() else { return };
    let restart = m.pct(85);
    if restart {
        ctx.restart();
    }
    let was_stopped = ctx.stopped();
    let us = run_bound(m).as_micros() as u64;
    let which = m.rng().below(7);
    let what = ["poll", "poll_one", "run_one_for", "run_for", "run_until", "run_one_until", "run_one"][which];
    if which == 6 && !was_stopped {
        // run_one has no bound: a handler is made ready first, so it returns.
        act_post(m, 0);
    }
    let n = top_run(m, what, |c| match which {
        0 => c.poll(),
        1 => c.poll_one(),
        2 => c.run_one_for(Duration::from_micros(us)),
        3 => c.run_for(Duration::from_micros(us)),
        4 => c.run_until(c.now() + Duration::from_micros(us)),
        5 => c.run_one_until(c.now() + Duration::from_micros(us)),
        _ => c.run_one(),
    });
    if was_stopped && n.is_some_and(|n| n > 0) {
        m.fail(format!("{what} on a stopped context ran {n:?} handlers"));
    }
    if [1, 2, 5, 6].contains(&which) && n.is_some_and(|n| n > 1) {
        m.fail(format!("{what} ran {n:?} handlers"));
    }
    if which == 6 && !was_stopped && n == Some(0) {
        m.fail("run_one with a handler ready ran none".into());
    }
}

/// Runs what is ready until the loop is idle: every ready handler has run
/// and the reactor has been polled with nothing left to do. Handlers start
/// nothing meanwhile.
fn drive_to_idle(m: &Rc<Model>) -> bool {
    let Some(ctx) = m.ctx() else { return false };
    let quiet = m.quiet.replace(true);
    let mut idle = false;
    for _ in 0..1000 {
        top_run(m, "poll until idle", |c| {
            c.restart();
            c.poll()
        });
        if ctx.stopped() || ctx.next_timeout() != Some(Duration::ZERO) {
            idle = true;
            break;
        }
    }
    m.quiet.set(quiet);
    if !idle {
        m.fail("the loop never went idle (1000 polls with work ready)".into());
    }
    idle
}

/// The loop is idle: nothing may wait for a wakeup that will not come.
/// Then, now and then, a receive is started on each socket where data
/// waits and none is pending, and must complete too: a lost wakeup with no
/// receive pending shows only when the next receive starts, and traffic
/// would otherwise heal it before anyone looks.
fn check_idle(m: &Rc<Model>) {
    if !drive_to_idle(m) {
        return;
    }
    m.count(|s| s.idle_checks += 1);
    if let Some(msg) = lost_wakeup(m) {
        m.fail(msg);
        return;
    }
    if m.pct(10) {
        check_no_spin(m);
    }
    if !m.pct(50) {
        return;
    }
    let probes: Vec<usize> = {
        let socks = m.socks.borrow();
        let dgrams = m.dgrams.borrow();
        (0..socks.len())
            .filter(|&i| {
                let r = &socks[i];
                r.open
                    && !r.reads.iter().any(|(_, op)| op.is_pending())
                    && (r.sent_waiting(&dgrams) > 0 || available(r) > 0)
            })
            .collect()
    };
    if probes.is_empty() {
        return;
    }
    for &s in &probes {
        m.log(|| format!("probe receive on {s}"));
        drain_one(m, s);
    }
    if drive_to_idle(m)
        && let Some(msg) = lost_wakeup(m)
    {
        m.fail(msg);
    }
}

/// The opposite of a lost wakeup: with the loop idle, a readiness the loop
/// keeps being told of but cannot act on makes it spin. It waits 2 ms: the
/// reactor may wake for timers that come due meanwhile and the handlers
/// they queue, not thousands of times.
fn check_no_spin(m: &Rc<Model>) {
    let Some(ctx) = m.ctx() else { return };
    if ctx.stopped() {
        return;
    }
    let before = ctx.metrics().reactor_waits;
    let quiet = m.quiet.replace(true);
    let ran = top_run(m, "run_for 2 ms, looking for a spin", |c| c.run_for(Duration::from_millis(2))).unwrap_or(0);
    m.quiet.set(quiet);
    let waits = ctx.metrics().reactor_waits - before;
    if waits > 20 + 4 * ran as u64 {
        m.fail(format!("the loop spins: {waits} reactor waits in 2 ms while {ran} handlers ran"));
    }
}

/// What a socket says waits in it (0 when closed).
fn available(r: &SockRec) -> usize {
    match r.sock.as_ref().filter(|_| r.open) {
        Some(Sock::Udp(u)) => u.available().unwrap_or(0),
        Some(Sock::Unix(u)) => u.available().unwrap_or(0),
        None => 0,
    }
}

/// With the loop idle: a receive pending while data waits for it, or a
/// timer wait pending with nothing to wake the loop for it.
fn lost_wakeup(m: &Model) -> Option<String> {
    let ctx = m.ctx()?;
    let socks = m.socks.borrow();
    let dgrams = m.dgrams.borrow();
    for (i, r) in socks.iter().enumerate() {
        if !r.open || !r.reads.iter().any(|(_, op)| op.is_pending()) {
            continue;
        }
        let (avail, sent) = (available(r), r.sent_waiting(&dgrams));
        if avail > 0 || sent > 0 {
            return Some(format!(
                "lost wakeup: a receive on socket {i} is pending with the loop idle while data waits \
                 (available {avail}, datagrams sent to it {sent})"
            ));
        }
    }
    let waiting = m.waits.borrow().iter().any(Operation::is_pending);
    (waiting && !ctx.stopped() && ctx.next_timeout().is_none())
        .then(|| "a timer wait is pending but next_timeout() is None: nothing will wake the loop".into())
}

/// Ends a case with the context alive: every datagram is received, every
/// send completes, then everything is closed and `run()` runs out of work.
fn finish_alive(m: &Rc<Model>) {
    m.quiet.set(true);
    let guards = std::mem::take(&mut *m.guards.borrow_mut());
    m.initiate(|| drop(guards));
    for _ in 0..200 {
        check_idle(m);
        if m.failed() {
            return;
        }
        let mut started = false;
        let n = m.socks.borrow().len();
        for s in 0..n {
            let drain = {
                let socks = m.socks.borrow();
                let r = &socks[s];
                let reading = r.reads.iter().any(|(_, op)| op.is_pending());
                r.open && !reading && (r.sent_waiting(&m.dgrams.borrow()) > 0 || available(r) > 0)
            };
            if drain {
                drain_one(m, s);
                started = true;
            }
        }
        let sending = m.socks.borrow().iter().any(|r| r.writes.iter().any(Operation::is_pending));
        if !started && !sending {
            break;
        }
        if !started && sending {
            m.fail("a send is pending with the loop idle and every receiver drained".into());
            return;
        }
    }
    {
        let socks = m.socks.borrow();
        let dgrams = m.dgrams.borrow();
        for (i, r) in socks.iter().enumerate() {
            if r.open && r.sent_waiting(&dgrams) > 0 {
                let msg = format!("socket {i}: datagrams sent to it were never received: {:?}", r.inbox);
                drop((socks, dgrams));
                m.fail(msg);
                return;
            }
        }
    }
    // Close everything: what is pending ends aborted, and run() runs out of work.
    let socks: Vec<Option<Sock>> = m.socks.borrow_mut().iter_mut().map(|r| r.sock.take()).collect();
    let timers = std::mem::take(&mut *m.timers.borrow_mut());
    m.initiate(|| drop((socks, timers)));
    let n = m.socks.borrow().len();
    for s in 0..n {
        closed(m, s);
    }
    let Some(ctx) = m.ctx() else { return };
    top_run(m, "final run", |c| {
        c.restart();
        c.run_for(Duration::from_secs(5))
    });
    if !ctx.stopped() {
        m.fail("run() did not run out of work after everything was closed".into());
    }
    let toks = m.toks.borrow();
    if let Some((i, t)) = toks.iter().enumerate().find(|(_, t)| t.fate != Fate::Ran) {
        let msg = format!("h{i} ({}) is {:?} after run() ran out of work", t.what, t.fate);
        drop(toks);
        m.fail(msg);
    }
}

/// Starts a receive that takes whatever waits on socket `s`.
fn drain_one(m: &Rc<Model>, s: usize) {
    let Some(sock) = sock_of(m, s) else { return };
    let seq = start_op(m, s, false);
    let tok = Tok::new(m, format!("drain receive #{seq} on {s}"));
    let done = move |err: Error, n: usize, bufs: Vec<u8>, from: Option<Addr>| {
        frame(tok, |m, _| {
            check_order(m, s, false, seq, err);
            if err.is_ok() {
                let room = bufs.len();
                match_received(m, s, &bufs[..n.min(room)], room, from, false, false);
            } else {
                let allowed = {
                    let r = &m.socks.borrow()[s];
                    (err == Error::CONNECTION_REFUSED && r.refused_ok) || (err == Error::EOF && r.read_shut)
                };
                if !allowed {
                    m.fail(format!("drain receive on {s}: {err:?}"));
                }
            }
        })
    };
    let bufs = vec![0u8; 70_000];
    let op = m.initiate(|| match &sock {
        Sock::Udp(u) => u.async_receive_from(bufs, move |e, n, b, from| done(e, n, b, ip_from(from))),
        Sock::Unix(u) => u.async_receive_from(bufs, move |e, n, b, from| {
            done(e, n, b, from.and_then(|a| a.as_pathname().map(|p| Addr::Path(p.to_path_buf()))))
        }),
    });
    m.socks.borrow_mut()[s].reads.push((seq, op));
}

/// Ends a case by dropping the context with work pending; a few things are
/// started after it is gone (their handlers are dropped unrun).
fn finish_by_drop(m: &Rc<Model>) {
    m.count(|s| s.drops += 1);
    m.log(|| "drop the context".into());
    m.ctx_gone.set(true);
    let ctx = m.ctx.borrow_mut().take();
    m.initiate(|| drop(ctx));
    for r in m.socks.borrow_mut().iter_mut() {
        r.open = false;
    }
    m.quiet.set(true);
    let after = m.rng().below(6);
    for _ in 0..after {
        let choice = m.rng().below(4);
        let how = m.rng().below(3);
        match choice {
            0 => act_post(m, how),
            1 => act_send(m),
            2 => act_recv(m),
            _ => act_timer(m),
        }
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Whether case `seed` runs on a simulated context: one case in eight,
/// drawn apart from the case's own stream so that the other cases replay as
/// they always did.
fn simulated_case(seed: u64) -> bool {
    match forced_profile() {
        Some(p) => p == Profile::Simulated,
        None => Rng(seed.rotate_left(17) ^ 0x5111).below(8) == 0,
    }
}

/// Runs case `seed`; the error is the failure and the case's operations.
/// A simulated case also gives its trace's hash and length.
fn run_case(seed: u64, dir: &Path, total: &mut Stats) -> Result<(String, Option<(u64, u64)>), String> {
    let fds = open_fds();
    let simulated = simulated_case(seed);
    // Simulated: datagrams arrive at once, as on loopback, so that what the
    // model expects of a quiet loop holds on both backends.
    let ctx = Rc::new(if simulated {
        IoContext::simulated_with(SimConfig::new(seed).latency(Duration::ZERO, Duration::ZERO))
    } else {
        IoContext::new().expect("an io context")
    });
    let sim = ctx.sim();
    let m = Rc::new(Model {
        rng: RefCell::new(Rng(seed)),
        trace: RefCell::new(String::new()),
        lines: Cell::new(0),
        failure: RefCell::new(None),
        ex: ctx.executor(),
        ctx: RefCell::new(Some(ctx.clone())),
        ctx_gone: Cell::new(false),
        initiating: Cell::new(0),
        depth: Cell::new(0),
        quiet: Cell::new(false),
        profile: Cell::new(Profile::General),
        toks: RefCell::new(Vec::new()),
        post_seq: Cell::new(0),
        last_post: Cell::new(0),
        socks: RefCell::new(Vec::new()),
        dgrams: RefCell::new(Vec::new()),
        timers: RefCell::new(Vec::new()),
        timer_waits: RefCell::new(Vec::new()),
        wait_seq: Cell::new(0),
        fired: RefCell::new(Vec::new()),
        ops: RefCell::new(Vec::new()),
        waits: RefCell::new(Vec::new()),
        guards: RefCell::new(Vec::new()),
        dir: dir.to_path_buf(),
        names: Cell::new(0),
        // Every step from it is in the past: those deadlines are due at once.
        base: ctx.now() - Duration::from_millis(10),
        stats: RefCell::new(Stats::default()),
    });
    drop(ctx);
    // Fairness settings of the case.
    // Some cases only move datagrams, through long queues on few sockets.
    let drawn = match m.rng().below(10) {
        0..=3 => Profile::General,
        4..=5 => Profile::Datagrams,
        _ => Profile::Server,
    };
    let profile = if simulated { Profile::Simulated } else { forced_profile().unwrap_or(drawn) };
    m.profile.set(profile);
    let per_pass = [usize::MAX, usize::MAX, 1, 2, 3, 7][m.rng().below(6)];
    let per_event = if matches!(profile, Profile::General | Profile::Simulated) {
        [64, 64, 1, 2, 3, 5][m.rng().below(6)]
    } else {
        m.rng().range(1, 6)
    };
    {
        let ctx = m.ctx().unwrap();
        ctx.set_handlers_per_pass(per_pass).unwrap();
        ctx.set_operations_per_event(per_event).unwrap();
    }
    m.log(|| format!("case {seed:#x}: {profile:?}, handlers per pass {per_pass}, operations per event {per_event}"));
    let socks = match profile {
        Profile::General => m.rng().range(1, 4),
        Profile::Datagrams => m.rng().range(1, 2),
        Profile::Server => 2,
        Profile::Simulated => m.rng().range(1, 3),
    };
    let timers = m.rng().range(if simulated { 1 } else { 0 }, 2);
    for _ in 0..socks {
        new_sock(&m);
    }
    for _ in 0..timers {
        new_timer(&m);
    }
    let steps = if matches!(profile, Profile::General | Profile::Simulated) {
        m.rng().range(10, 70)
    } else {
        m.rng().range(30, 120)
    };
    let mut dropped = false;
    for _ in 0..steps {
        if m.failed() {
            break;
        }
        let choice = m.rng().below(100);
        if profile == Profile::Server {
            server_step(&m, choice);
            continue;
        }
        match choice {
            0..=54 => action(&m, false),
            55..=84 => {
                act_run(&m);
                // Traffic heals a lost wakeup (the next datagram's event runs
                // the queue): look while the loop is quiet, often.
                if profile == Profile::Datagrams && m.pct(50) {
                    check_idle(&m);
                }
            }
            85..=97 => check_idle(&m),
            _ => {
                if m.pct(30) {
                    finish_by_drop(&m);
                    dropped = true;
                    break;
                }
            }
        }
    }
    if !m.failed() && !dropped {
        if m.pct(35) {
            // Sometimes right after starting things, sometimes once idle.
            if m.pct(50) {
                check_idle(&m);
            }
            if !m.failed() {
                finish_by_drop(&m);
            }
        } else {
            finish_alive(&m);
        }
    }
    // Whatever is left goes: the context first (if still here), then the
    // sockets, timers and operations the model holds. No handler may run.
    m.ctx_gone.set(true);
    let ctx = m.ctx.borrow_mut().take();
    m.initiate(|| drop(ctx));
    let socks: Vec<Option<Sock>> = m.socks.borrow_mut().iter_mut().map(|r| r.sock.take()).collect();
    let timers = std::mem::take(&mut *m.timers.borrow_mut());
    let guards = std::mem::take(&mut *m.guards.borrow_mut());
    m.initiate(|| drop((socks, timers, guards)));
    m.ops.borrow_mut().clear();
    if !m.failed() {
        let toks = m.toks.borrow();
        if let Some((i, t)) = toks.iter().enumerate().find(|(_, t)| t.fate == Fate::Pending) {
            let msg = format!("h{i} ({}) was never run nor dropped: leaked", t.what);
            drop(toks);
            m.fail(msg);
        }
    }
    if !m.failed() && Rc::strong_count(&m) != 1 {
        m.fail(format!("{} references to the model outlive the case: a handler leaked", Rc::strong_count(&m) - 1));
    }
    let now = open_fds();
    if !m.failed() && now != fds {
        m.fail(format!("descriptors: {fds} before the case, {now} after"));
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    let s = *m.stats.borrow();
    total.cases += 1;
    total.actions += s.actions;
    total.handlers += s.handlers;
    total.panics += s.panics;
    total.nested += s.nested;
    total.drops += s.drops;
    total.datagrams += s.datagrams;
    total.idle_checks += s.idle_checks;
    let trace = std::mem::take(&mut *m.trace.borrow_mut());
    let trace = if m.lines.get() > MAX_TRACE_LINES {
        format!("{trace}... ({} more lines)\n", m.lines.get() - MAX_TRACE_LINES)
    } else {
        trace
    };
    match m.failure.borrow_mut().take() {
        Some(f) => Err(format!("{f}\n\noperations of the case:\n{trace}")),
        None => Ok((trace, sim.map(|s| (s.trace_hash(), s.events())))),
    }
}

/// `IOCTX_MODEL_PROFILE=general|datagrams|server|simulated` runs cases of one kind only.
fn forced_profile() -> Option<Profile> {
    let v = std::env::var("IOCTX_MODEL_PROFILE").ok()?;
    match v.as_str() {
        "general" => Some(Profile::General),
        "datagrams" => Some(Profile::Datagrams),
        "server" => Some(Profile::Server),
        "simulated" => Some(Profile::Simulated),
        _ => panic!("IOCTX_MODEL_PROFILE={v}: general, datagrams, server or simulated"),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

#[test]
fn random_operation_sequences_keep_every_rule() {
    // Injected panics are expected: keep them quiet, report the others.
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if !info.payload().is::<Injected>() {
            default_hook(info);
        }
    }));
    let dir = TempDir::new();
    let mut total = Stats::default();
    let started = Instant::now();
    let seeds: Vec<u64> = match env_u64("IOCTX_MODEL_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("IOCTX_MODEL_FIRST").unwrap_or(0);
            let cases = env_u64("IOCTX_MODEL_CASES").unwrap_or(300);
            (first..first + cases).map(case_seed).collect()
        }
    };
    let one = seeds.len() == 1;
    // With IOCTX_MODEL_KEEP_GOING set, every case runs and the failing seeds
    // are listed at the end (the first failure's report is printed whole).
    let keep_going = std::env::var_os("IOCTX_MODEL_KEEP_GOING").is_some();
    let mut failed: Vec<u64> = Vec::new();
    for seed in seeds {
        // A simulated case runs twice: the same seed must give the same run.
        let result = run_case(seed, &dir.0, &mut total).and_then(|(trace, sim)| match sim {
            None => Ok(trace),
            Some(first) => match run_case(seed, &dir.0, &mut Stats::default()) {
                Ok((_, Some(again))) if again == first => Ok(trace),
                Ok((_, again)) => Err(format!(
                    "a simulated case ran differently the second time: trace (hash, events) {first:x?}, then \
                     {again:x?}\n\noperations of the case:\n{trace}"
                )),
                Err(report) => Err(format!("the second run of a simulated case failed: {report}")),
            },
        });
        match result {
            Ok(trace) if one => eprintln!("{trace}"),
            Ok(_) => {}
            Err(report) => {
                let msg = format!(
                    "model case failed after {} cases; reproduce with IOCTX_MODEL_SEED={seed:#x} cargo test --test \
                     model -- --nocapture\n{report}",
                    total.cases
                );
                if !keep_going {
                    let _ = panic::take_hook();
                    panic!("{msg}");
                }
                if failed.is_empty() {
                    eprintln!("{msg}");
                }
                failed.push(seed);
            }
        }
    }
    if !failed.is_empty() {
        let _ = panic::take_hook();
        let seeds: Vec<String> = failed.iter().map(|s| format!("{s:#x}")).collect();
        panic!("{} of {} model cases failed: {}", failed.len(), total.cases, seeds.join(" "));
    }
    eprintln!(
        "model: {} cases, {} operations, {} handlers run, {} panics injected, {} nested runs, {} contexts dropped \
         with work pending, {} datagrams received, {} idle checks, 0 failures, in {:.1?}",
        total.cases,
        total.actions,
        total.handlers,
        total.panics,
        total.nested,
        total.drops,
        total.datagrams,
        total.idle_checks,
        started.elapsed()
    );
}
