//! The model-based test for streams (the datagram half is `tests/model.rs`):
//! random sequences of operations on a few TCP connections, half the cases
//! on a real context over loopback and half on a simulated one (random
//! latency and loss, partitions, crashes), with the rules checked as each
//! handler runs and after each case:
//!
//! - every handler runs exactly once, none inside the call that started it;
//! - an end's reads complete in the order started, and its writes too
//!   (apart from operations cancelled one by one);
//! - what a reader gets is, byte for byte, the start of what the writer's
//!   completed writes wrote, in their completion order (partial writes
//!   included): never a byte lost, repeated, reordered or made up;
//! - a read ends with `EOF` only after the writer shut down or closed, with
//!   `CONNECTION_RESET` only after an end closed or crashed, with
//!   `OPERATION_ABORTED` only when cancelled; a write fails only after an
//!   end closed or crashed;
//! - at the end of a case, every end reads until `EOF`: on a connection
//!   nothing disturbed, each side got exactly what the other wrote, and the
//!   loop runs out of work (nothing left waiting for a wakeup);
//! - a simulated case runs twice and leaves the same trace hash.
//!
//! The operations: `async_write_some`, `async_read_some`, the composed
//! `async_write(transfer_all)` and `async_read(transfer_exactly)`,
//! `shutdown(Write)`, `cancel`, `close`, `Operation::cancel`, `run_one`,
//! `poll`, `run_for`; on a simulated context also `Sim::partition`/`heal`,
//! `Sim::hold`/`release` and `Sim::crash`.
//!
//!     IOCTX_MODEL_CASES=2000 cargo test --release --test model_stream -- --nocapture
//!     IOCTX_MODEL_SEED=0x1f2e cargo test --test model_stream -- --nocapture

mod common;
use common::Rng;
use ioctx::net::{TcpListener, TcpStream, async_read, async_write, transfer_all, transfer_exactly};
use ioctx::{CancellationType, Error, IoContext, Operation, SimConfig};
use socket2::Domain;
use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

/// EPIPE: a write after the stream was shut down or reset.
const BROKEN_PIPE: Error = Error::from_raw_os_error(32);

/// The bytes one way: from end `i` of a connection to end `1 - i`.
#[derive(Default)]
struct Way {
    /// What completed writes wrote, in completion order.
    sent: Vec<u8>,
    /// What the reader got, in order.
    received: Vec<u8>,
    /// The next byte's value (each write's bytes differ from the last's).
    pattern: u8,
    /// Writes pending, and whether one of them is a composed write.
    writes: usize,
    composed_write: bool,
    reads: usize,
    composed_read: bool,
    /// The writer shut down writing (no write started after).
    shut: bool,
    /// The reader saw EOF.
    eof: bool,
    /// The reader is in its end-of-case loop (reads until EOF or an error).
    draining: bool,
    /// The end-of-case loop starts when the composed read pending ends (a
    /// read started beside it would take some of its bytes).
    drain_after: bool,
}

struct End {
    stream: Option<TcpStream>,
    host: IpAddr,
    /// Ops started on this end so far get `OPERATION_ABORTED` leave (cancel, close).
    abort_below: u64,
    /// Closed (or crashed): a composed operation whose next step starts
    /// after it ends with `BAD_DESCRIPTOR`, as Asio's does.
    closed: bool,
    /// The seq of the last read (write) completed without an abort.
    last_read: u64,
    last_write: u64,
}

struct Conn {
    ends: [End; 2],
    /// `ways[i]`: from end `i` to end `1 - i`.
    ways: [Way; 2],
    /// An end closed or crashed: resets, EOFs and broken pipes may come,
    /// and the bytes need only be a prefix.
    disturbed: bool,
}

struct OpRec {
    conn: usize,
    end: usize,
    write: bool,
    seq: u64,
    /// `Operation::cancel` returned true: it must end aborted.
    must_abort: bool,
    done: bool,
}

struct St {
    conns: Vec<Conn>,
    ops: Vec<OpRec>,
    seq: u64,
    kept: Vec<(usize, Operation)>,
}

struct Model {
    st: RefCell<St>,
    initiating: Cell<bool>,
    failure: RefCell<Option<String>>,
    log: RefCell<String>,
    sim: bool,
}

impl Model {
    fn fail(&self, msg: String) {
        let _ = writeln!(self.log.borrow_mut(), "FAILURE: {msg}");
        self.failure.borrow_mut().get_or_insert(msg);
    }

    fn note(&self, line: impl FnOnce() -> String) {
        let mut log = self.log.borrow_mut();
        if log.len() < 200_000 {
            let _ = writeln!(log, "{}", line());
        }
    }

    /// A call into the crate that must not run a handler.
    fn initiate<R>(&self, f: impl FnOnce() -> R) -> R {
        self.initiating.set(true);
        let r = f();
        self.initiating.set(false);
        r
    }

    /// Records a new operation of `end` and returns its id.
    fn start(&self, conn: usize, end: usize, write: bool) -> usize {
        let mut st = self.st.borrow_mut();
        st.seq += 1;
        let seq = st.seq;
        let way = if write { end } else { 1 - end };
        let w = &mut st.conns[conn].ways[way];
        if write {
            w.writes += 1;
        } else {
            w.reads += 1;
        }
        st.ops.push(OpRec { conn, end, write, seq, must_abort: false, done: false });
        st.ops.len() - 1
    }

    /// The checks every completion gets; returns false when the error
    /// is not allowed.
    fn complete(&self, id: usize, err: Error, what: &str) -> bool {
        if self.initiating.get() {
            self.fail(format!("{what} #{id} ran inside the call that started it"));
        }
        let mut st = self.st.borrow_mut();
        let op = &mut st.ops[id];
        if op.done {
            drop(st);
            self.fail(format!("{what} #{id} completed twice"));
            return false;
        }
        op.done = true;
        let (conn, end, write, seq, must_abort) = (op.conn, op.end, op.write, op.seq, op.must_abort);
        let c = &mut st.conns[conn];
        let way = if write { end } else { 1 - end };
        if write {
            c.ways[way].writes -= 1;
        } else {
            c.ways[way].reads -= 1;
        }
        let may_abort = must_abort || seq <= c.ends[end].abort_below;
        if must_abort && err != Error::OPERATION_ABORTED {
            drop(st);
            self.fail(format!("{what} #{id}: a cancel returned true, yet it ended with {err:?}"));
            return false;
        }
        if err == Error::OPERATION_ABORTED || (err == Error::BAD_DESCRIPTOR && c.ends[end].closed) {
            if !may_abort {
                drop(st);
                self.fail(format!("{what} #{id} aborted, and nothing cancelled it"));
                return false;
            }
            return true;
        }
        // FIFO among the operations not cancelled one by one.
        let last = if write { &mut c.ends[end].last_write } else { &mut c.ends[end].last_read };
        if seq < *last {
            let l = *last;
            drop(st);
            self.fail(format!("{what} #{id} (seq {seq}) completed after seq {l} of the same end and direction"));
            return false;
        }
        *last = seq;
        let allowed = err == Error::NONE
            || (c.disturbed && [Error::CONNECTION_RESET, BROKEN_PIPE, Error::EOF].contains(&err))
            || (!write && err == Error::EOF && c.ways[way].shut);
        if !allowed {
            drop(st);
            self.fail(format!("{what} #{id} on connection {conn} end {end} ended with {err:?}"));
        }
        allowed
    }

    fn wrote(&self, conn: usize, end: usize, bytes: &[u8]) {
        let mut st = self.st.borrow_mut();
        st.conns[conn].ways[end].sent.extend_from_slice(bytes);
        drop(st);
        self.check_prefix(conn, end);
    }

    fn read(&self, conn: usize, end: usize, bytes: &[u8], eof: bool) {
        let way = 1 - end;
        let mut st = self.st.borrow_mut();
        let w = &mut st.conns[conn].ways[way];
        if w.eof && !bytes.is_empty() {
            drop(st);
            self.fail(format!("connection {conn} end {end} read bytes after EOF"));
            return;
        }
        w.received.extend_from_slice(bytes);
        w.eof |= eof;
        drop(st);
        self.check_prefix(conn, way);
    }

    /// What was received one way is the start of what was sent (as far as
    /// the writer's handlers have told).
    fn check_prefix(&self, conn: usize, way: usize) {
        let st = self.st.borrow();
        let w = &st.conns[conn].ways[way];
        let n = w.sent.len().min(w.received.len());
        if w.sent[..n] != w.received[..n] {
            let at = (0..n).find(|&i| w.sent[i] != w.received[i]).unwrap_or(n);
            drop(st);
            self.fail(format!("connection {conn}, way {way}: byte {at} received differs from the byte sent"));
        }
    }
}

fn open_end(m: &Model, c: usize, e: usize) -> Option<TcpStream> {
    m.st.borrow().conns[c].ends[e].stream.clone().filter(|s| s.is_open())
}

fn kinds(rng: &mut Rng, n: usize) -> usize {
    rng.below(n)
}

fn pattern(way: &mut Way, len: usize) -> Vec<u8> {
    way.pattern = way.pattern.wrapping_add(1);
    let p = way.pattern;
    (0..len).map(|i| p.wrapping_mul(31).wrapping_add((i % 253) as u8)).collect()
}

fn act_write(m: &Rc<Model>, rng: &mut Rng, c: usize, e: usize) {
    let Some(s) = open_end(m, c, e) else { return };
    let (shut, composed, pending) = {
        let st = m.st.borrow();
        let w = &st.conns[c].ways[e];
        (w.shut, w.composed_write, w.writes)
    };
    if shut || composed {
        return;
    }
    let big = rng.percent(15);
    let len = if big { rng.range(10_000, 300_000) } else { rng.range(1, 3_000) };
    let buf = pattern(&mut m.st.borrow_mut().conns[c].ways[e], len);
    if pending == 0 && rng.percent(40) {
        let id = m.start(c, e, true);
        m.st.borrow_mut().conns[c].ways[e].composed_write = true;
        let kept = buf.clone();
        let mm = m.clone();
        m.note(|| format!("#{id} c{c} e{e} async_write {len}"));
        let op = m.initiate(|| {
            async_write(&s, buf, transfer_all(), move |err, n| {
                mm.st.borrow_mut().conns[c].ways[e].composed_write = false;
                mm.note(|| format!("  #{id} wrote {n}: {err:?}"));
                mm.complete(id, err, "async_write");
                if n > kept.len() || (err == Error::NONE && n != kept.len()) {
                    mm.fail(format!("async_write #{id} reported {n} of {} bytes with {err:?}", kept.len()));
                    return;
                }
                mm.wrote(c, e, &kept[..n]);
            })
        });
        keep(m, rng, id, op);
    } else {
        let id = m.start(c, e, true);
        let kept = buf.clone();
        let mm = m.clone();
        m.note(|| format!("#{id} c{c} e{e} async_write_some {len}"));
        let op = m.initiate(|| {
            s.async_write_some(buf, move |err, n| {
                mm.note(|| format!("  #{id} wrote {n}: {err:?}"));
                let ok = mm.complete(id, err, "async_write_some");
                if n > kept.len() || (err.is_ok() && n == 0) || (err.is_err() && n != 0) {
                    mm.fail(format!("async_write_some #{id} reported {n} of {} bytes with {err:?}", kept.len()));
                    return;
                }
                if ok {
                    mm.wrote(c, e, &kept[..n]);
                }
            })
        });
        keep(m, rng, id, op);
    }
}

fn act_read(m: &Rc<Model>, rng: &mut Rng, c: usize, e: usize) {
    let Some(s) = open_end(m, c, e) else { return };
    let (composed, pending, eof) = {
        let st = m.st.borrow();
        let w = &st.conns[c].ways[1 - e];
        (w.composed_read, w.reads, w.eof)
    };
    if composed || eof {
        return;
    }
    let len = if rng.percent(20) { rng.range(10_000, 100_000) } else { rng.range(1, 4_000) };
    if pending == 0 && rng.percent(30) {
        let id = m.start(c, e, false);
        m.st.borrow_mut().conns[c].ways[1 - e].composed_read = true;
        let mm = m.clone();
        m.note(|| format!("#{id} c{c} e{e} async_read exactly {len}"));
        let op = m.initiate(|| {
            async_read(&s, vec![0u8; len], transfer_exactly(len), move |err, n, buf| {
                let drain_after = {
                    let mut st = mm.st.borrow_mut();
                    let w = &mut st.conns[c].ways[1 - e];
                    w.composed_read = false;
                    std::mem::take(&mut w.drain_after)
                };
                mm.note(|| format!("  #{id} read {n}: {err:?}"));
                mm.complete(id, err, "async_read");
                if n > len || (err == Error::NONE && n != len) {
                    mm.fail(format!("async_read #{id} reported {n} of {len} with {err:?}"));
                    return;
                }
                mm.read(c, e, &buf[..n], err == Error::EOF);
                if drain_after {
                    match open_end(&mm, c, e) {
                        Some(s) if err == Error::NONE || err == Error::OPERATION_ABORTED => {
                            read_some(&mm, c, e, &s, 65_536, true)
                        }
                        _ => mm.st.borrow_mut().conns[c].ways[1 - e].draining = false,
                    }
                }
            })
        });
        keep(m, rng, id, op);
    } else {
        read_some(m, c, e, &s, len, false);
    }
}

/// One `async_read_some`; `drain`: the end-of-case loop, which reads
/// again until EOF or an error.
fn read_some(m: &Rc<Model>, c: usize, e: usize, s: &TcpStream, len: usize, drain: bool) {
    let id = m.start(c, e, false);
    let mm = m.clone();
    let again = s.clone();
    m.note(|| format!("#{id} c{c} e{e} async_read_some {len}{}", if drain { " (drain)" } else { "" }));
    m.initiate(|| {
        s.async_read_some(vec![0u8; len], move |err, n, buf| {
            mm.note(|| format!("  #{id} read {n}: {err:?}"));
            let ok = mm.complete(id, err, "async_read_some");
            if (err.is_ok() && n == 0) || n > len || (err.is_err() && n != 0) {
                mm.fail(format!("async_read_some #{id} reported {n} of {len} with {err:?}"));
                return;
            }
            if ok && err != Error::OPERATION_ABORTED {
                mm.read(c, e, &buf[..n], err == Error::EOF);
            }
            if drain && (err == Error::NONE || err == Error::OPERATION_ABORTED) && again.is_open() {
                read_some(&mm, c, e, &again, len, true);
            } else if drain {
                mm.st.borrow_mut().conns[c].ways[1 - e].draining = false;
            }
        })
    });
}

fn keep(m: &Model, rng: &mut Rng, id: usize, op: Operation) {
    let mut st = m.st.borrow_mut();
    if st.kept.len() >= 8 {
        let i = rng.below(st.kept.len());
        st.kept.swap_remove(i);
    }
    st.kept.push((id, op));
}

fn act_cancel_one(m: &Model, rng: &mut Rng) {
    let picked = {
        let st = m.st.borrow();
        if st.kept.is_empty() {
            return;
        }
        let i = rng.below(st.kept.len());
        let (id, op) = &st.kept[i];
        (*id, op.clone())
    };
    let (id, op) = picked;
    let yes = m.initiate(|| op.cancel(CancellationType::TERMINAL));
    m.note(|| format!("cancel #{id}: {yes}"));
    // A composed operation cancelled may still report the bytes it moved
    // (with OPERATION_ABORTED); a plain one ends aborted.
    if yes {
        m.st.borrow_mut().ops[id].must_abort = true;
    }
}

/// `cancel` or `close` of an end: what it started may end aborted.
fn act_end(m: &Model, rng: &mut Rng, c: usize, e: usize, close: bool) {
    let Some(s) = open_end(m, c, e) else { return };
    {
        let mut st = m.st.borrow_mut();
        let seq = st.seq;
        let conn = &mut st.conns[c];
        conn.ends[e].abort_below = seq;
        if close {
            conn.disturbed = true;
            conn.ends[e].closed = true;
        }
    }
    m.note(|| format!("c{c} e{e} {}", if close { "close" } else { "cancel" }));
    if close {
        m.initiate(|| s.close());
        if rng.percent(50) {
            m.st.borrow_mut().conns[c].ends[e].stream = None; // dropped too
        }
    } else if let Err(err) = m.initiate(|| s.cancel()) {
        m.fail(format!("cancel of an open stream failed: {err}"));
    }
}

fn act_shutdown(m: &Model, c: usize, e: usize) {
    let Some(s) = open_end(m, c, e) else { return };
    {
        let st = m.st.borrow();
        let w = &st.conns[c].ways[e];
        // A write still queued in the loop would meet the shut-down socket.
        if w.shut || w.writes > 0 {
            return;
        }
    }
    m.note(|| format!("c{c} e{e} shutdown(Write)"));
    match m.initiate(|| s.shutdown(std::net::Shutdown::Write)) {
        Ok(()) => m.st.borrow_mut().conns[c].ways[e].shut = true,
        Err(err) if m.st.borrow().conns[c].disturbed => m.note(|| format!("  shutdown: {err}")),
        Err(err) => m.fail(format!("shutdown(Write) of connection {c} end {e} failed: {err}")),
    }
}

/// A crash of `host` (simulated): every end on it closes.
fn act_crash(m: &Model, ctx: &IoContext, host: IpAddr) {
    {
        let mut st = m.st.borrow_mut();
        let seq = st.seq;
        for conn in &mut st.conns {
            let hit: Vec<usize> = (0..2).filter(|&e| conn.ends[e].host == host).collect();
            for e in &hit {
                conn.ends[*e].abort_below = seq;
                conn.ends[*e].closed = true;
            }
            if !hit.is_empty() {
                conn.disturbed = true;
            }
        }
    }
    m.note(|| format!("crash {host}"));
    m.initiate(|| ctx.sim().unwrap().crash(host));
}

fn run_step(m: &Model, ctx: &IoContext, rng: &mut Rng) {
    let n = match rng.below(4) {
        0 => ctx.run_one_for(Duration::from_millis(if m.sim { 50 } else { 2 })),
        1 => ctx.poll(),
        _ => ctx.run_for(Duration::from_millis(if m.sim { rng.range(1, 400) as u64 } else { 2 })),
    };
    m.note(|| format!("run: {n} handlers"));
    ctx.restart();
}

/// Connects `n` pairs; on a simulated context each end on its own host.
fn connect(m: &Rc<Model>, ctx: &IoContext, n: usize) -> Vec<TcpListener> {
    let mut listeners = Vec::new();
    for c in 0..n {
        let (server_ip, client_ip): (IpAddr, IpAddr) = if m.sim {
            (format!("10.0.{c}.1").parse().unwrap(), format!("10.0.{c}.2").parse().unwrap())
        } else {
            ("127.0.0.1".parse().unwrap(), "127.0.0.1".parse().unwrap())
        };
        let l = TcpListener::bind(ctx, SocketAddr::new(server_ip, 0)).unwrap();
        let accepted = Rc::new(RefCell::new(None));
        let arm = |l: &TcpListener| {
            let a = accepted.clone();
            l.async_accept(move |err, s| {
                assert_eq!(err, Error::NONE);
                *a.borrow_mut() = s;
            });
        };
        arm(&l);
        // Under heavy simulated loss a handshake can fail for good (every
        // SYN, or every ACK of the SYN-ACKs, lost): connect again with a new
        // stream, as an application would.
        let mut tries = 0;
        let (client, server) = loop {
            tries += 1;
            assert!(tries <= 5, "connection {c}: five connects failed");
            let client = TcpStream::open(ctx, Domain::IPV4).unwrap();
            client.bind_to(SocketAddr::new(client_ip, 0)).unwrap();
            let connected = Rc::new(Cell::new(None));
            let cc = connected.clone();
            client.async_connect(l.local_addr().unwrap(), move |err| cc.set(Some(err)));
            // Real: at once. Simulated: SYNs and SYN-ACKs are resent for about a minute.
            ctx.run_for(Duration::from_secs(if m.sim { 200 } else { 5 }));
            ctx.restart();
            match (connected.get(), accepted.take()) {
                (Some(Error::NONE), Some(server)) => break (client, server),
                (got, server) => {
                    assert!(m.sim, "connection {c}: {got:?} on loopback");
                    m.note(|| format!("connection {c}: the handshake failed ({got:?}); again"));
                    if server.is_some() {
                        arm(&l);
                    }
                }
            }
        };
        let end = |stream: TcpStream, host| End {
            stream: Some(stream),
            host,
            abort_below: 0,
            closed: false,
            last_read: 0,
            last_write: 0,
        };
        m.st.borrow_mut().conns.push(Conn {
            ends: [end(client, client_ip), end(server, server_ip)],
            ways: [Way::default(), Way::default()],
            disturbed: false,
        });
        listeners.push(l);
    }
    listeners
}

/// The end of a case: every open end reads until EOF; once no write is
/// pending, every end shuts down writing; the loop must then run out of
/// work, and the bytes must match.
fn finish(m: &Rc<Model>, ctx: &IoContext) {
    if let Some(sim) = ctx.sim() {
        sim.heal();
        for c in 0..m.st.borrow().conns.len() {
            let hosts = {
                let st = m.st.borrow();
                [st.conns[c].ends[0].host, st.conns[c].ends[1].host]
            };
            sim.release(hosts[0], hosts[1]);
            sim.release(hosts[1], hosts[0]);
        }
    }
    let n = m.st.borrow().conns.len();
    for c in 0..n {
        for e in 0..2 {
            let Some(s) = open_end(m, c, e) else { continue };
            let skip = {
                let st = m.st.borrow();
                let w = &st.conns[c].ways[1 - e];
                w.eof || w.draining
            };
            if !skip {
                let mut st = m.st.borrow_mut();
                let w = &mut st.conns[c].ways[1 - e];
                w.draining = true;
                if w.composed_read {
                    w.drain_after = true;
                } else {
                    drop(st);
                    read_some(m, c, e, &s, 65_536, true);
                }
            }
        }
    }
    // Writes finish once the peers read (or the connection breaks).
    let limit = if m.sim { Duration::from_secs(600) } else { Duration::from_secs(5) };
    let mut waited = Duration::ZERO;
    let step = Duration::from_millis(if m.sim { 500 } else { 5 });
    while m.st.borrow().conns.iter().any(|c| c.ways.iter().any(|w| w.writes > 0)) {
        if waited > limit || m.failure.borrow().is_some() {
            m.fail(format!("writes still pending after {waited:?} while every peer reads"));
            return;
        }
        ctx.run_for(step);
        ctx.restart();
        waited += step;
    }
    for c in 0..n {
        for e in 0..2 {
            act_shutdown(m, c, e);
        }
    }
    ctx.run_for(limit);
    if !ctx.stopped() {
        m.fail(format!("work left {limit:?} after every end shut down: an operation never completed"));
        return;
    }
    let st = m.st.borrow();
    for (i, op) in st.ops.iter().enumerate() {
        if !op.done {
            drop(st);
            m.fail(format!("operation #{i} never completed"));
            return;
        }
    }
    for (c, conn) in st.conns.iter().enumerate() {
        for (way, w) in conn.ways.iter().enumerate() {
            let n = w.sent.len().min(w.received.len());
            if w.sent[..n] != w.received[..n] || w.received.len() > w.sent.len() {
                let msg = format!(
                    "connection {c}, way {way}: received {} bytes, not a prefix of the {} sent",
                    w.received.len(),
                    w.sent.len()
                );
                drop(st);
                m.fail(msg);
                return;
            }
            if !conn.disturbed && (w.received.len() != w.sent.len() || !w.eof) {
                let msg = format!(
                    "connection {c}, way {way}: {} bytes sent, {} received, EOF {}, on a connection nothing disturbed",
                    w.sent.len(),
                    w.received.len(),
                    w.eof
                );
                drop(st);
                m.fail(msg);
                return;
            }
        }
    }
}

/// One case; returns its log, and on a simulated context the trace hash.
fn run_case(seed: u64) -> Result<(String, Option<u64>), String> {
    let mut rng = Rng(seed);
    let sim = seed % 2 == 1;
    let ctx = if sim {
        let lat = Duration::from_millis(rng.range(0, 30) as u64);
        let mut cfg = SimConfig::new(seed).latency(Duration::ZERO, lat).time_limit(Duration::from_secs(100_000));
        if rng.percent(50) {
            cfg = cfg.loss([0.0, 0.05, 0.3][rng.below(3)]);
        }
        if rng.percent(30) {
            cfg = cfg.recv_buffer(rng.range(1_000, 100_000));
        }
        IoContext::simulated_with(cfg)
    } else {
        IoContext::new().unwrap()
    };
    let m = Rc::new(Model {
        st: RefCell::new(St { conns: Vec::new(), ops: Vec::new(), seq: 0, kept: Vec::new() }),
        initiating: Cell::new(false),
        failure: RefCell::new(None),
        log: RefCell::new(format!("case {seed:#x} ({})\n", if sim { "simulated" } else { "real" })),
        sim,
    });
    let pairs = rng.range(1, 3);
    let listeners = connect(&m, &ctx, pairs);
    let actions = rng.range(5, 40);
    for _ in 0..actions {
        if m.failure.borrow().is_some() {
            break;
        }
        let c = rng.below(pairs);
        let e = rng.below(2);
        match kinds(&mut rng, 100) {
            0..=29 => act_write(&m, &mut rng, c, e),
            30..=54 => act_read(&m, &mut rng, c, e),
            55..=74 => run_step(&m, &ctx, &mut rng),
            75..=79 => act_cancel_one(&m, &mut rng),
            80..=82 => act_end(&m, &mut rng, c, e, false),
            83..=84 => act_end(&m, &mut rng, c, e, true),
            85..=88 => act_shutdown(&m, c, e),
            89..=93 if sim => {
                let hosts = {
                    let st = m.st.borrow();
                    [st.conns[c].ends[0].host, st.conns[c].ends[1].host]
                };
                let s = ctx.sim().unwrap();
                match rng.below(3) {
                    0 => {
                        m.note(|| format!("partition c{c}"));
                        s.partition(hosts[0], hosts[1]);
                    }
                    1 => {
                        m.note(|| format!("hold c{c}"));
                        s.hold(hosts[e], hosts[1 - e]);
                    }
                    _ => {
                        m.note(|| "heal".to_string());
                        s.heal();
                    }
                }
            }
            94..=95 if sim => {
                let host = m.st.borrow().conns[c].ends[e].host;
                act_crash(&m, &ctx, host);
            }
            _ => run_step(&m, &ctx, &mut rng),
        }
    }
    if m.failure.borrow().is_none() {
        finish(&m, &ctx);
    }
    drop(listeners);
    let hash = ctx.sim().map(|s| s.trace_hash());
    let log = m.log.take();
    match m.failure.take() {
        Some(f) => Err(format!("{f}\n\nseed {seed:#x}, the case's operations:\n{log}")),
        None => Ok((log, hash)),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    Some(match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).expect("a hex number"),
        None => v.parse().expect("a number"),
    })
}

#[test]
fn random_stream_sequences_keep_every_rule() {
    let seeds: Vec<u64> = match env_u64("IOCTX_MODEL_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("IOCTX_MODEL_CASES").unwrap_or(200)).map(|i| Rng(i ^ 0x5354_5245_414D).next()).collect(),
    };
    let one = seeds.len() == 1;
    for seed in seeds {
        let result = run_case(seed).and_then(|(log, hash)| match hash {
            None => Ok(log),
            Some(first) => match run_case(seed) {
                Ok((_, Some(again))) if again == first => Ok(log),
                Ok(_) => Err(format!("simulated case {seed:#x} ran differently the second time\n{log}")),
                Err(report) => Err(format!("the second run of simulated case {seed:#x} failed: {report}")),
            },
        });
        match result {
            Ok(log) if one => eprintln!("{log}"),
            Ok(_) => {}
            Err(report) => panic!("{report}"),
        }
    }
}
