//! `--simulate SEED`: the same server on a simulated context (virtual time,
//! an in-memory network with loss, duplication, reordering and a
//! partition, all drawn from the seed), driven by TFTP clients written with
//! ioctx's own `UdpSocket` and `SteadyTimer`. Each client reads or writes a
//! file; every transfer must end byte-exact or with the RFC's timeout,
//! never hang and never leave a corrupt file. Prints one line per seed with
//! the outcome and the trace hash.

use crate::server::{Config, Server};
use ioctx::net::UdpSocket;
use ioctx::{Error, Executor, IoContext, SimConfig, SteadyTimer};
use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

/// The network and the session of a simulated run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
    /// A partition between the server and every client, this long, from 2 s
    /// of virtual time (zero: none).
    pub partition: Duration,
    /// Clients, each making one transfer.
    pub clients: u32,
}

/// How a seed's session ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Transfers that ended byte-exact (the file read, or written and on disk).
    pub exact: u32,
    /// Transfers that ended with a timeout (the client's, after its retries).
    pub timed_out: u32,
    /// Transfers that ended any other way: each is a failure.
    pub wrong: Vec<String>,
    pub trace_hash: u64,
    pub virtual_time: Duration,
}

const SERVER: &str = "10.0.0.1:69";
const BLOCK: usize = 512;
/// The client's retransmission interval and retries (RFC 1350 leaves them
/// to the implementation; these are tftp-hpa's client's defaults).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
const CLIENT_RETRIES: u32 = 5;

/// A file's deterministic content: `len` bytes drawn from `seed`.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs the session of `seed` in `dir` (emptied first).
pub fn run(seed: u64, plan: &Plan, dir: &Path) -> Outcome {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("a directory for the served files");
    let config = SimConfig::new(seed)
        .latency(Duration::from_millis(1), Duration::from_millis(20))
        .loss(plan.loss)
        .duplicate(plan.duplicate)
        .reorder(plan.reorder)
        // A session that ran past this would be a hang: fail loudly.
        .time_limit(Duration::from_secs(3600));
    let ctx = IoContext::simulated_with(config);
    let sim = ctx.sim().expect("simulated");
    let mut cfg = Config::new(dir);
    cfg.allow_write = true;
    let server = Server::start(&ctx.executor(), SERVER.parse().unwrap(), cfg).expect("the server starts");
    let outcome = Rc::new(RefCell::new(Outcome::default()));
    let mut expected_files = Vec::new();
    for i in 0..plan.clients {
        // Sizes around the block edges: empty, one block exactly, several.
        let len = [0, BLOCK, BLOCK * 3 + 17, 40_000][(sim.random_u64() % 4) as usize];
        let data = content(seed ^ u64::from(i), len);
        let client = client_ip(i);
        let write = i % 2 == 1;
        let name = format!("f{i}");
        if write {
            expected_files.push((dir.join(&name), data.clone()));
        } else {
            std::fs::write(dir.join(&name), &data).expect("a served file");
        }
        let o = outcome.clone();
        let done = move |r: Result<Vec<u8>, String>| {
            let mut o = o.borrow_mut();
            match r {
                Ok(got) if write || got == data => o.exact += 1,
                Ok(got) => o.wrong.push(format!("read of {len} bytes got {} different bytes", got.len())),
                Err(e) if e == "timeout" => o.timed_out += 1,
                Err(e) => o.wrong.push(format!("{} failed: {e}", if write { "write" } else { "read" })),
            }
        };
        let start = Transfer::start(&ctx.executor(), client, name, write, content(seed ^ u64::from(i), len), done);
        if let Err(e) = start {
            outcome.borrow_mut().wrong.push(format!("client {i} could not start: {e}"));
        }
    }
    if !plan.partition.is_zero() {
        // The partition starts once the transfers are under way.
        let t = Rc::new(SteadyTimer::new(&ctx));
        t.expires_after(Duration::from_secs(2));
        let (s, keep, clients, len) = (sim.clone(), t.clone(), plan.clients, plan.partition);
        t.async_wait(move |_| {
            let server_ip: IpAddr = "10.0.0.1".parse().unwrap();
            for i in 0..clients {
                s.partition(server_ip, client_ip(i));
            }
            keep.expires_after(len);
            let (s2, keep2) = (s.clone(), keep.clone());
            keep.async_wait(move |_| {
                s2.heal();
                drop(keep2);
            });
        });
    }
    // Clients and server run until every client has its answer; the
    // server's listening receive stays pending, so stop it after.
    let total = plan.clients;
    let o = outcome.clone();
    let stop_when_done = Rc::new(SteadyTimer::new(&ctx));
    fn watch(t: Rc<SteadyTimer>, o: Rc<RefCell<Outcome>>, total: u32, ex: Executor) {
        let again = t.clone();
        t.expires_after(Duration::from_millis(100));
        t.async_wait(move |_| {
            let b = o.borrow();
            if b.exact + b.timed_out + b.wrong.len() as u32 >= total {
                ex.stop();
            } else {
                drop(b);
                watch(again, o, total, ex);
            }
        });
    }
    watch(stop_when_done, o, total, ctx.executor());
    ctx.run();
    // Let the server finish dallying and clean up, then stop it.
    ctx.restart();
    ctx.run_for(Duration::from_secs(120));
    drop(server);
    let mut outcome = outcome.take();
    // What was written must be whole, or not there at all.
    for (path, data) in expected_files {
        if let Ok(on_disk) = std::fs::read(&path)
            && on_disk != data
        {
            outcome.wrong.push(format!(
                "{} holds {} bytes, not the {} written",
                path.display(),
                on_disk.len(),
                data.len()
            ));
        }
    }
    outcome.trace_hash = sim.trace_hash();
    outcome.virtual_time = sim.now();
    outcome
}

/// What a client calls when its transfer ends: the bytes read (empty for a
/// write), or why not ("timeout" for a timeout).
type Done = Box<dyn FnOnce(Result<Vec<u8>, String>)>;

/// Client `i`'s host: 10.0.1.1, 10.0.1.2, ... (250 to a /24).
fn client_ip(i: u32) -> IpAddr {
    IpAddr::from([10, 0, (1 + i / 250) as u8, (1 + i % 250) as u8])
}

/// One client's transfer (octet mode, 512-byte blocks, no options).
struct Transfer {
    sock: UdpSocket,
    timer: SteadyTimer,
    write: bool,
    /// The file's bytes: to send (a write), or received so far (a read).
    data: RefCell<Vec<u8>>,
    /// A read: the block expected next. A write: the block last sent.
    block: Cell<u16>,
    /// The server's transfer port, once known.
    peer: Cell<Option<SocketAddr>>,
    /// What the last send was, to send again on a timeout.
    last: RefCell<Vec<u8>>,
    tries: Cell<u32>,
    done: RefCell<Option<Done>>,
}

fn packet(op: u16, rest: &[u8]) -> Vec<u8> {
    let mut p = op.to_be_bytes().to_vec();
    p.extend_from_slice(rest);
    p
}

fn request(op: u16, name: &str) -> Vec<u8> {
    let mut rest = name.as_bytes().to_vec();
    rest.push(0);
    rest.extend_from_slice(b"octet\0");
    packet(op, &rest)
}

impl Transfer {
    fn start(
        ex: &Executor,
        ip: IpAddr,
        name: String,
        write: bool,
        data: Vec<u8>,
        done: impl FnOnce(Result<Vec<u8>, String>) + 'static,
    ) -> std::io::Result<()> {
        let sock = UdpSocket::bind(ex, SocketAddr::new(ip, 0))?;
        let t = Rc::new(Transfer {
            sock,
            timer: SteadyTimer::new(ex),
            write,
            data: RefCell::new(if write { data } else { Vec::new() }),
            block: Cell::new(if write { 0 } else { 1 }),
            peer: Cell::new(None),
            last: RefCell::new(request(if write { 2 } else { 1 }, &name)),
            tries: Cell::new(0),
            done: RefCell::new(Some(Box::new(done))),
        });
        t.send_last();
        t.receive();
        Ok(())
    }

    fn finish(self: &Rc<Self>, r: Result<Vec<u8>, String>) {
        self.timer.cancel();
        self.sock.close();
        if let Some(done) = self.done.borrow_mut().take() {
            done(r);
        }
    }

    /// Sends the last packet again (or the first time) and arms the timer.
    fn send_last(self: &Rc<Self>) {
        let to = self.peer.get().unwrap_or_else(|| SERVER.parse().unwrap());
        self.sock.async_send_to(self.last.borrow().clone(), to, |_, _| {});
        self.timer.expires_after(CLIENT_TIMEOUT);
        let t = self.clone();
        self.timer.async_wait(move |e| {
            if e == Error::OPERATION_ABORTED || t.done.borrow().is_none() {
                return;
            }
            if t.tries.get() >= CLIENT_RETRIES {
                t.finish(Err("timeout".into()));
                return;
            }
            t.tries.set(t.tries.get() + 1);
            t.send_last();
        });
    }

    fn receive(self: &Rc<Self>) {
        let t = self.clone();
        self.sock.async_receive_from(vec![0u8; BLOCK + 4], move |e, n, buf, from| {
            if t.done.borrow().is_none() || e == Error::OPERATION_ABORTED {
                return;
            }
            if e.is_ok() {
                t.on_packet(&buf[..n], from);
            }
            if t.done.borrow().is_some() {
                t.receive();
            }
        });
    }

    fn on_packet(self: &Rc<Self>, p: &[u8], from: SocketAddr) {
        if p.len() < 4 {
            return;
        }
        match self.peer.get() {
            None => self.peer.set(Some(from)),
            Some(peer) if peer != from => return, // another transfer's ID (RFC 1350 §4)
            _ => {}
        }
        let op = u16::from_be_bytes([p[0], p[1]]);
        let n = u16::from_be_bytes([p[2], p[3]]);
        match (op, self.write) {
            (5, _) => {
                let msg = String::from_utf8_lossy(&p[4..]).trim_end_matches('\0').to_string();
                // The server gave up after its retransmissions: RFC 1350 has
                // no code for it, the server sends error 0 "timed out".
                let r = if n == 0 && msg == "timed out" {
                    "timeout".to_string()
                } else {
                    format!("error {n} from the server: {msg}")
                };
                self.finish(Err(r));
            }
            (3, false) if n == self.block.get() => {
                // The next block: keep it and acknowledge it.
                self.data.borrow_mut().extend_from_slice(&p[4..]);
                *self.last.borrow_mut() = packet(4, &n.to_be_bytes());
                self.tries.set(0);
                self.block.set(n.wrapping_add(1));
                if p.len() - 4 < BLOCK {
                    // The last: acknowledged once (the server dallies and
                    // would resend it if this ACK were lost; RFC 1350 §6).
                    let ack = self.last.borrow().clone();
                    self.sock.async_send_to(ack, from, |_, _| {});
                    let data = std::mem::take(&mut *self.data.borrow_mut());
                    self.finish(Ok(data));
                } else {
                    self.send_last();
                }
            }
            (3, false) if n == self.block.get().wrapping_sub(1) => {
                // A duplicate of the block before: its ACK was lost, send it again.
                self.sock.async_send_to(packet(4, &n.to_be_bytes()), from, |_, _| {});
            }
            (4, true) if n == self.block.get() => {
                let sent = usize::from(n) * BLOCK;
                let len = self.data.borrow().len();
                if n > 0 && sent > len {
                    // The last block (shorter than 512) is acknowledged.
                    self.finish(Ok(Vec::new()));
                    return;
                }
                let next = n.wrapping_add(1);
                let chunk = self.data.borrow()[sent.min(len)..(sent + BLOCK).min(len)].to_vec();
                let mut rest = next.to_be_bytes().to_vec();
                rest.extend_from_slice(&chunk);
                *self.last.borrow_mut() = packet(3, &rest);
                self.block.set(next);
                self.tries.set(0);
                self.send_last();
            }
            _ => {} // a stale or duplicated packet
        }
    }
}

/// A fresh directory for a seed's files (apart from any other session's,
/// in this process or another).
pub fn dir_for(seed: u64) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("ioctx-tftp-sim-{}-{n}-{seed}", std::process::id()))
}
