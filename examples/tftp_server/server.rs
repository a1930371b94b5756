//! A TFTP server (RFC 1350, with option negotiation, RFC 2347, and the
//! `blksize`, `timeout` and `tsize` options, RFCs 2348 and 2349) on one
//! ioctx loop.
//!
//! The listening socket takes requests; each transfer then runs on a UDP
//! socket of its own, connected to the client (its transfer ID), with a
//! `SteadyTimer` for retransmission. Everything runs on the loop's thread:
//! the file reads and writes are plain blocking calls, which for local
//! files are short.
//!
//! So that no request holds up the other transfers, what one packet makes
//! the loop do is bounded: a block is at most `blksize` bytes read or
//! written, a file is opened without waiting (a FIFO is refused, not waited
//! on), and a netascii read's `tsize` (the file's size once converted,
//! which only reading the whole file tells) is counted only for files up to
//! `max_netascii_tsize` (1 MiB by default); above it the option is left out
//! of the OACK. One wait remains: a write's file is flushed to disk
//! (`fdatasync`) before its last block is acknowledged, so that a full disk
//! is reported to the client; that is bounded by what the client has sent
//! (`max_write_bytes`), and needs `allow_write`.
//!
//! So that no one holds every transfer slot (`max_transfers`), one client
//! (an IPv4 address, or an IPv6 address's /64) may hold at most
//! `max_per_client` transfers (16 by default), and a transfer whose first
//! packet (the OACK, DATA 1 of a read, ACK 0 of a write) is not answered is
//! given up after `first_reply_timeout` (2 s by default, one retransmission
//! included), whatever `timeout` its request asked for: requests from
//! addresses that never answer hold their slots that long only. This also
//! bounds what a forged request makes the server send to the address it
//! names (two packets with the defaults).
//!
//! A request names a file below the served directory: names that are
//! absolute, hold `..`, end in `/` or hold a control character (C0, DEL,
//! C1) are refused with error 2 (access violation), for reads and writes.
//!
//! `main.rs` runs it as a program; the tests include this file with
//! `#[path]` to run it in-process.
//!
//! The server logs through `log` with the target `tftp` (see [`LOG`]), apart
//! from the library's `ioctx::*`: `RUST_LOG=tftp=info,ioctx=warn`.

// The program and the tests each use a part of this module.
#![allow(dead_code)]

use ioctx::net::UdpSocket;
use ioctx::{Error, Executor, SteadyTimer};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::Duration;

/// The target of the server's log records. A fixed name, not the module
/// path, which differs between the program (`tftp_server::server`) and the
/// tests that include this file: one short name to filter on either way.
pub const LOG: &str = "tftp";

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// TFTP error codes (RFC 1350, and 8 from RFC 2347).
pub mod code {
    pub const NOT_DEFINED: u16 = 0;
    pub const FILE_NOT_FOUND: u16 = 1;
    pub const ACCESS_VIOLATION: u16 = 2;
    pub const DISK_FULL: u16 = 3;
    pub const ILLEGAL_OPERATION: u16 = 4;
    pub const UNKNOWN_TID: u16 = 5;
    pub const FILE_EXISTS: u16 = 6;
    pub const OPTION_REFUSED: u16 = 8;
}

/// The largest block size RFC 2348 allows.
pub const MAX_BLKSIZE: usize = 65464;
const DEFAULT_BLKSIZE: usize = 512;

/// What the server allows and how it retransmits.
#[derive(Clone, Debug)]
pub struct Config {
    /// The directory served; requests name files below it.
    pub root: PathBuf,
    /// Write requests are refused unless this is set.
    pub allow_write: bool,
    /// Wait before the first retransmission (doubled at each one, up to
    /// `max_timeout`). Once the client has answered the first packet, its
    /// `timeout` option replaces it unless `ignore_client_timeout` (one
    /// above `max_timeout` is declined).
    pub timeout: Duration,
    /// The longest wait between retransmissions.
    pub max_timeout: Duration,
    /// Retransmissions of one packet before the transfer is given up.
    pub retries: u32,
    /// How long a transfer's first packet (the OACK, or DATA 1 of a read or
    /// ACK 0 of a write) waits for its answer, retransmissions included,
    /// whatever the client's `timeout` option: a request from an address
    /// that never answers (forged, or a flood) then holds its slot only this
    /// long. It is retransmitted once within it (after `timeout`, or half of
    /// this if shorter; unless `retries` is 0), so that one lost packet
    /// costs a client nothing.
    pub first_reply_timeout: Duration,
    /// The largest block size granted (a client may ask for less).
    pub max_blksize: usize,
    /// Transfers at once; further requests get "server busy".
    pub max_transfers: usize,
    /// Transfers one client may hold at once (an IPv4 address, or the /64
    /// of an IPv6 address), so that one host cannot take every slot;
    /// further requests from it are refused. A completed write still
    /// waiting for a resent last block gives its place to a new request.
    pub max_per_client: usize,
    /// The largest file a write request may create.
    pub max_write_bytes: u64,
    /// Do not accept the client's `timeout` option (retransmit on our own
    /// schedule; the option is then left out of the OACK).
    pub ignore_client_timeout: bool,
    /// Fraction of the server's sends to drop (0.0: none), for testing
    /// retransmission; decided by a generator seeded with `seed`.
    pub drop_rate: f64,
    /// Seed of the drop decisions.
    pub seed: u64,
    /// A netascii read's `tsize` is counted only for a file of at most this
    /// many bytes: counting reads the whole file on the loop (about 0.6 ms a
    /// MiB in a release build). Above it the option is left out of the OACK,
    /// as RFC 2349 allows (tftp-hpa's server never counts it).
    pub max_netascii_tsize: u64,
}

impl Config {
    /// Defaults for serving `root`.
    pub fn new(root: impl Into<PathBuf>) -> Config {
        Config {
            root: root.into(),
            allow_write: false,
            timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(8),
            retries: 5,
            first_reply_timeout: Duration::from_secs(2),
            max_blksize: MAX_BLKSIZE,
            max_transfers: 256,
            max_per_client: 16,
            max_write_bytes: 1 << 30,
            ignore_client_timeout: false,
            drop_rate: 0.0,
            seed: 1,
            max_netascii_tsize: 1 << 20,
        }
    }
}

/// What the server has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Transfers started (read and write).
    pub started: u64,
    /// Transfers that ended with the last block acknowledged.
    pub completed: u64,
    /// Transfers ended by an error, the client's or a timeout.
    pub failed: u64,
    /// Packets sent again after a timeout.
    pub retransmissions: u64,
    /// Error packets sent.
    pub errors_sent: u64,
    /// Sends dropped on purpose (`drop_rate`).
    pub dropped: u64,
    /// Requests or packets ignored or refused as malformed.
    pub malformed: u64,
    /// Transfers running now.
    pub active: u64,
}

/// State shared by the listener and every transfer.
struct Shared {
    ex: Executor,
    /// The address requests arrive at: transfers answer from its IP when it
    /// names one (a multi-homed host, or a simulated one, replies from the
    /// address the client contacted).
    listen_ip: IpAddr,
    cfg: Config,
    /// The served directory, resolved once.
    root: PathBuf,
    stats: Cell<Stats>,
    /// xorshift64* state for `drop_rate`.
    rng: Cell<u64>,
    /// Transfers by client address: a request repeated while its transfer
    /// runs is a retransmission, not a new transfer.
    active: RefCell<HashMap<SocketAddr, u64>>,
    /// Every live transfer (dallying ones too) by client (`client_key`),
    /// oldest first, for `max_per_client`.
    clients: RefCell<HashMap<IpAddr, Vec<Weak<RefCell<Transfer>>>>>,
    next_id: Cell<u64>,
}

impl Shared {
    fn stat(&self, f: impl FnOnce(&mut Stats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// True if this send is to be dropped (test hook).
    fn drop_this(&self) -> bool {
        if self.cfg.drop_rate <= 0.0 {
            return false;
        }
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        let r = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
        if r < self.cfg.drop_rate {
            self.stat(|s| s.dropped += 1);
            return true;
        }
        false
    }
}

/// A running server: the listening socket and what it shares with its
/// transfers. Dropping it closes the listening socket (transfers finish).
pub struct Server {
    sock: UdpSocket,
    shared: Rc<Shared>,
}

impl Server {
    /// Binds `listen` and starts taking requests on `ex`'s loop.
    pub fn start(ex: &Executor, listen: SocketAddr, cfg: Config) -> io::Result<Server> {
        let root = cfg.root.canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a directory", root.display())));
        }
        if !(0.0..1.0).contains(&cfg.drop_rate) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "drop rate must be in [0, 1)"));
        }
        if cfg.max_blksize < 8 || cfg.max_blksize > MAX_BLKSIZE {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "max block size must be in 8..=65464"));
        }
        if cfg.first_reply_timeout.is_zero() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the first reply's timeout must not be zero"));
        }
        if cfg.max_per_client == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "max transfers per client must be at least 1"));
        }
        let sock = UdpSocket::bind(ex, listen)?;
        // Each request's destination address: bound to every address, the
        // server answers from the one the client contacted.
        sock.set_recv_pktinfo(true)?;
        let shared = Rc::new(Shared {
            ex: ex.clone(),
            listen_ip: sock.local_addr()?.ip(),
            rng: Cell::new(cfg.seed | 1),
            cfg,
            root,
            stats: Cell::new(Stats::default()),
            active: RefCell::new(HashMap::new()),
            clients: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
        });
        log::info!(target: LOG, "serving {} on {}", shared.root.display(), sock.local_addr()?);
        listen_loop(sock.clone(), shared.clone());
        Ok(Server { sock, shared })
    }

    /// The address requests go to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// What the server has done so far.
    pub fn stats(&self) -> Stats {
        self.shared.stats.get()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.sock.close();
    }
}

/// Receives requests until the listening socket is closed.
fn listen_loop(sock: UdpSocket, shared: Rc<Shared>) {
    let s2 = sock.clone();
    // One byte more than the largest request we take: a longer one is
    // refused rather than truncated.
    sock.async_receive_msg(vec![0u8; 1025], move |err, meta, buf| {
        if err == Error::OPERATION_ABORTED || err == Error::BAD_DESCRIPTOR {
            return; // closed
        }
        if err.is_ok() {
            on_request(&shared, &buf[..meta.len], meta.from, meta.local);
        } else {
            log::debug!(target: LOG, "listening socket: {err}");
        }
        listen_loop(s2, shared);
    });
}

/// A parsed read or write request.
#[derive(Debug)]
struct Request {
    write: bool,
    filename: String,
    netascii: bool,
    options: Vec<(String, String)>,
}

/// Why a packet cannot be served: the TFTP error code and message.
type Refusal = (u16, String);

fn refuse(code: u16, msg: impl Into<String>) -> Refusal {
    (code, msg.into())
}

fn opcode(p: &[u8]) -> Option<u16> {
    (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]))
}

/// Parses an RRQ or WRQ: opcode, filename NUL, mode NUL, then option name
/// NUL value NUL pairs.
fn parse_request(p: &[u8]) -> Result<Request, Refusal> {
    let op = opcode(p).ok_or_else(|| refuse(code::ILLEGAL_OPERATION, "packet too short"))?;
    match op {
        RRQ | WRQ => {}
        DATA | ACK | OACK | ERROR => return Err(refuse(code::ILLEGAL_OPERATION, "expected a read or write request")),
        _ => return Err(refuse(code::ILLEGAL_OPERATION, format!("unknown opcode {op}"))),
    }
    let body = &p[2..];
    if body.last() != Some(&0) {
        return Err(refuse(code::ILLEGAL_OPERATION, "malformed request: fields must end with NUL"));
    }
    let mut fields = Vec::new();
    for f in body[..body.len() - 1].split(|&b| b == 0) {
        let s = std::str::from_utf8(f).map_err(|_| refuse(code::ILLEGAL_OPERATION, "malformed request: not text"))?;
        fields.push(s.to_owned());
    }
    if fields.len() < 2 || fields.len() % 2 != 0 {
        return Err(refuse(code::ILLEGAL_OPERATION, "malformed request: missing field"));
    }
    let netascii = match fields[1].to_ascii_lowercase().as_str() {
        "octet" => false,
        "netascii" => true,
        m => return Err(refuse(code::ILLEGAL_OPERATION, format!("unsupported mode {m:?}"))),
    };
    let options = fields[2..].chunks(2).map(|kv| (kv[0].to_ascii_lowercase(), kv[1].clone())).collect();
    Ok(Request { write: op == WRQ, filename: fields[0].clone(), netascii, options })
}

/// The file a request names, below the root: relative, no `..`, no control
/// characters (NUL cannot occur: it ends the field). Symbolic links that
/// lead out of the root are refused for reads by `open_for_read`.
fn resolve(root: &Path, name: &str) -> Result<PathBuf, Refusal> {
    let path = Path::new(name);
    if name.is_empty() {
        return Err(refuse(code::ACCESS_VIOLATION, "empty file name"));
    }
    // C0, DEL and C1: a name holding them is misread by the shells, logs and
    // terminals that later show it (an escape sequence, a forged log line).
    // A policy on names, like "..": access violation, for reads and writes.
    if name.chars().any(char::is_control) {
        return Err(refuse(code::ACCESS_VIOLATION, "control characters are not allowed in file names"));
    }
    // `Path` drops a trailing "/" or "/.": "dir/" would name a file "dir".
    if matches!(name.rsplit('/').next(), Some("" | ".")) {
        return Err(refuse(code::ACCESS_VIOLATION, "not a file"));
    }
    let mut out = root.to_path_buf();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse(code::ACCESS_VIOLATION, "\"..\" is not allowed")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(code::ACCESS_VIOLATION, "absolute paths are not allowed"));
            }
        }
    }
    if out == root {
        return Err(refuse(code::ACCESS_VIOLATION, "not a file"));
    }
    Ok(out)
}

fn io_refusal(e: &io::Error, what: &str) -> Refusal {
    match e.kind() {
        io::ErrorKind::NotFound => refuse(code::FILE_NOT_FOUND, "file not found"),
        io::ErrorKind::PermissionDenied => refuse(code::ACCESS_VIOLATION, "permission denied"),
        io::ErrorKind::AlreadyExists => refuse(code::FILE_EXISTS, "file already exists"),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge => {
            refuse(code::DISK_FULL, "disk full or allocation exceeded")
        }
        _ => refuse(code::NOT_DEFINED, format!("{what}: {e}")),
    }
}

fn open_for_read(root: &Path, path: &Path) -> Result<File, Refusal> {
    let real = path.canonicalize().map_err(|e| io_refusal(&e, "open"))?;
    if !real.starts_with(root) {
        return Err(refuse(code::ACCESS_VIOLATION, "outside the served directory"));
    }
    // Non-blocking, and the type checked on what was opened: opening a FIFO
    // (or a device) would wait on the loop for a writer; O_NONBLOCK changes
    // nothing for a regular file.
    let file =
        File::options().read(true).custom_flags(libc::O_NONBLOCK).open(&real).map_err(|e| io_refusal(&e, "open"))?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(refuse(code::FILE_NOT_FOUND, "not a regular file"));
    }
    Ok(file)
}

fn create_for_write(root: &Path, path: &Path) -> Result<File, Refusal> {
    let parent = path.parent().ok_or_else(|| refuse(code::ACCESS_VIOLATION, "no directory"))?;
    let real_parent = parent.canonicalize().map_err(|e| io_refusal(&e, "directory"))?;
    if !real_parent.starts_with(root) {
        return Err(refuse(code::ACCESS_VIOLATION, "outside the served directory"));
    }
    // create_new: never overwrites, and refuses a symbolic link in the way.
    File::options().write(true).create_new(true).open(path).map_err(|e| io_refusal(&e, "create"))
}

fn error_packet(code: u16, msg: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + msg.len());
    p.extend_from_slice(&ERROR.to_be_bytes());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

/// Sends an error for a request that starts no transfer, from a socket of
/// its own (a new transfer ID, as the reply to a request would come from).
fn send_refusal(shared: &Rc<Shared>, to: SocketAddr, local: Option<IpAddr>, (code, msg): Refusal) {
    log::info!(target: LOG, "{to}: refused: {msg} (error {code})");
    shared.stat(|s| s.errors_sent += 1);
    if shared.drop_this() {
        return;
    }
    match UdpSocket::bind(&shared.ex, SocketAddr::new(reply_ip(shared, to, local), 0)) {
        Ok(sock) => {
            let keep = sock.clone();
            sock.async_send_to(error_packet(code, &msg), to, move |err, _| {
                if err.is_err() {
                    log::debug!(target: LOG, "{to}: error packet not sent: {err}");
                }
                drop(keep);
            });
        }
        Err(e) => log::warn!(target: LOG, "{to}: no socket for an error packet: {e}"),
    }
}

/// A request from `from`, sent to `local` (when the socket could tell).
fn on_request(shared: &Rc<Shared>, p: &[u8], from: SocketAddr, local: Option<IpAddr>) {
    log::trace!(target: LOG, "{from}: request of {} bytes", p.len());
    if opcode(p) == Some(ERROR) {
        shared.stat(|s| s.malformed += 1);
        return; // never answer an error with an error
    }
    if p.len() > 1024 {
        shared.stat(|s| s.malformed += 1);
        return send_refusal(shared, from, local, refuse(code::ILLEGAL_OPERATION, "request too long"));
    }
    let req = match parse_request(p) {
        Ok(r) => r,
        Err(r) => {
            shared.stat(|s| s.malformed += 1);
            return send_refusal(shared, from, local, r);
        }
    };
    if shared.active.borrow().contains_key(&from) {
        log::debug!(target: LOG, "{from}: request repeated while its transfer runs: ignored");
        return;
    }
    if !room_for_client(shared, from) {
        return send_refusal(shared, from, local, refuse(code::NOT_DEFINED, "too many transfers from this address"));
    }
    if shared.stats.get().active as usize >= shared.cfg.max_transfers {
        return send_refusal(shared, from, local, refuse(code::NOT_DEFINED, "server busy, try again later"));
    }
    if let Err(r) = start_transfer(shared, req, from, local) {
        send_refusal(shared, from, local, r);
    }
}

/// The client a transfer counts against for `max_per_client`: its IPv4
/// address (an IPv4-mapped IPv6 one too), or the /64 of its IPv6 address
/// (a host commonly has a whole /64 to pick addresses from).
pub fn client_key(peer: SocketAddr) -> IpAddr {
    match peer.ip().to_canonical() {
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// True if `from`'s client may start another transfer: it holds fewer than
/// `max_per_client`, or one of them is a completed write that dallies (the
/// oldest such one is ended to make room: it only waited for a resend).
fn room_for_client(shared: &Rc<Shared>, from: SocketAddr) -> bool {
    let dallying = {
        let clients = shared.clients.borrow();
        let Some(held) = clients.get(&client_key(from)) else { return true };
        if held.len() < shared.cfg.max_per_client {
            return true;
        }
        held.iter().filter_map(Weak::upgrade).find(|t| t.borrow().state == State::Dallying)
    };
    match dallying {
        Some(t) => {
            log::debug!(target: LOG, "{from}: transfer {} ends its dally to make room", t.borrow().id);
            finish(&t, true);
            true
        }
        None => false,
    }
}

/// Options granted, in the order the client gave them.
struct Granted {
    blksize: usize,
    timeout: Option<Duration>,
    oack: Vec<(String, String)>,
}

fn negotiate(
    cfg: &Config,
    req: &Request,
    tsize: impl FnOnce(&str) -> Result<Option<u64>, Refusal>,
) -> Result<Granted, Refusal> {
    let mut g = Granted { blksize: DEFAULT_BLKSIZE, timeout: None, oack: Vec::new() };
    let mut tsize = Some(tsize);
    for (name, value) in &req.options {
        if g.oack.iter().any(|(n, _)| n == name) {
            continue; // repeated: the first one counts
        }
        match name.as_str() {
            "blksize" => {
                // Outside 8..=65464: declined (left out of the OACK).
                if let Ok(v) = value.parse::<usize>()
                    && (8..=MAX_BLKSIZE).contains(&v)
                {
                    g.blksize = v.min(cfg.max_blksize);
                    g.oack.push((name.clone(), g.blksize.to_string()));
                }
            }
            "timeout" if !cfg.ignore_client_timeout => {
                // Above our longest wait: declined (RFC 2349 does not let
                // the server answer another value), so that one request
                // cannot hold a transfer for 255 s x (retries + 1).
                if let Ok(v) = value.parse::<u64>()
                    && (1..=255).contains(&v)
                    && Duration::from_secs(v) <= cfg.max_timeout
                {
                    g.timeout = Some(Duration::from_secs(v));
                    g.oack.push((name.clone(), v.to_string()));
                }
            }
            "tsize" => {
                if let Some(f) = tsize.take()
                    && let Some(size) = f(value)?
                {
                    g.oack.push((name.clone(), size.to_string()));
                }
            }
            _ => {} // unknown options are left out of the OACK
        }
    }
    Ok(g)
}

fn oack_packet(opts: &[(String, String)]) -> Vec<u8> {
    let mut p = OACK.to_be_bytes().to_vec();
    for (n, v) in opts {
        p.extend_from_slice(n.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

/// The size of `file` once converted to netascii (each LF and CR becomes
/// two bytes), or `None` for a file of more than `limit` bytes, which is not
/// read: counting runs on the loop, and a 40-byte request must not make it
/// read a large file through. Then puts the offset back at the start for the
/// transfer (a `try_clone` would share that offset, not save it).
fn netascii_size(file: &File, limit: u64) -> io::Result<Option<u64>> {
    if file.metadata()?.len() > limit {
        return Ok(None);
    }
    // The file may have grown since: no more than one byte over the limit is
    // read, which is enough to tell.
    let mut r = BufReader::with_capacity(64 * 1024, file.take(limit.saturating_add(1)));
    let (mut read, mut size) = (0u64, 0u64);
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        read += n as u64;
        size += n as u64 + buf.iter().filter(|&&b| b == b'\n' || b == b'\r').count() as u64;
        r.consume(n);
    }
    let mut f: &File = file;
    f.seek(SeekFrom::Start(0))?;
    Ok((read <= limit).then_some(size))
}

fn start_transfer(shared: &Rc<Shared>, req: Request, peer: SocketAddr, local: Option<IpAddr>) -> Result<(), Refusal> {
    let path = resolve(&shared.root, &req.filename)?;
    let cfg = &shared.cfg;
    if req.write && !cfg.allow_write {
        return Err(refuse(code::ACCESS_VIOLATION, "write requests are not allowed"));
    }
    // The socket first: a write's file, once created, is not to be left
    // behind by a failure after it.
    let bind = SocketAddr::new(reply_ip(shared, peer, local), 0);
    let sock = UdpSocket::bind(&shared.ex, bind).map_err(|e| io_refusal(&e, "socket"))?;
    sock.connect(peer).map_err(|e| io_refusal(&e, "connect"))?;
    let (kind, granted) = if req.write {
        let max = cfg.max_write_bytes;
        let granted = negotiate(cfg, &req, |v| match v.parse::<u64>() {
            Ok(n) if n > max => Err(refuse(code::DISK_FULL, format!("file larger than {max} bytes"))),
            Ok(n) => Ok(Some(n)),
            Err(_) => Ok(None),
        })?;
        let file = create_for_write(&shared.root, &path)?;
        let sink = Sink { out: BufWriter::new(file), netascii: req.netascii, cr: false, written: 0 };
        (Kind::Write { sink: Some(sink), path: path.clone(), acked: 0 }, granted)
    } else {
        let file = open_for_read(&shared.root, &path)?;
        let netascii = req.netascii;
        let limit = cfg.max_netascii_tsize;
        let granted = negotiate(cfg, &req, |_| {
            let size = if netascii {
                let size = netascii_size(&file, limit);
                if let Ok(None) = size {
                    log::debug!(target: LOG, "{peer}: tsize declined: netascii file above {limit} bytes");
                }
                size
            } else {
                file.metadata().map(|m| Some(m.len()))
            };
            // An empty file's size is left out of the OACK (RFC 2349 lets the
            // server decline): curl takes `tsize 0` for a broken reply.
            size.map(|n| n.filter(|&n| n > 0)).map_err(|e| io_refusal(&e, "size"))
        })?;
        let source = Source { inp: BufReader::new(file), netascii, pending: None, eof: false };
        (Kind::Read { source, block: 0, last: false }, granted)
    };
    let id = shared.next_id.get();
    shared.next_id.set(id + 1);
    let base = granted.timeout.unwrap_or(cfg.timeout);
    log::info!(target: LOG,
        "{peer}: transfer {id} started: {} {:?} ({}, block size {}{})",
        if req.write { "write" } else { "read" },
        req.filename,
        if req.netascii { "netascii" } else { "octet" },
        granted.blksize,
        if granted.oack.is_empty() { String::new() } else { format!(", options {:?}", granted.oack) },
    );
    let t = Rc::new(RefCell::new(Transfer {
        id,
        peer,
        sock,
        timer: SteadyTimer::new(&shared.ex),
        shared: shared.clone(),
        kind,
        blksize: granted.blksize,
        base_timeout: base,
        timeout: base,
        tries: 0,
        packet: Rc::from(Vec::new()),
        state: State::Running,
        first: true,
        first_waited: Duration::ZERO,
    }));
    shared.active.borrow_mut().insert(peer, id);
    shared.clients.borrow_mut().entry(client_key(peer)).or_default().push(Rc::downgrade(&t));
    shared.stat(|s| {
        s.started += 1;
        s.active += 1;
    });
    receive_loop(t.clone());
    let first = if !granted.oack.is_empty() {
        oack_packet(&granted.oack)
    } else {
        let mut tr = t.borrow_mut();
        match &mut tr.kind {
            Kind::Write { .. } => ack_packet(0),
            Kind::Read { .. } => match tr.next_data() {
                Ok(p) => p,
                Err(e) => {
                    drop(tr);
                    fail(&t, Some(io_refusal(&e, "read")));
                    return Ok(());
                }
            },
        }
    };
    send_new(&t, first);
    Ok(())
}

/// The IP a transfer's socket binds: the listening address's when it is a
/// specific one of the peer's family, else the one the request was sent to
/// (`local`, from pktinfo: a client checks that the answers come from the
/// address it contacted), else any (connecting picks the route).
fn reply_ip(shared: &Shared, peer: SocketAddr, local: Option<IpAddr>) -> IpAddr {
    let same_family = |ip: &IpAddr| !ip.is_unspecified() && ip.is_ipv4() == peer.is_ipv4();
    [Some(shared.listen_ip), local].into_iter().flatten().find(same_family).unwrap_or_else(|| unspecified_like(peer))
}

fn unspecified_like(peer: SocketAddr) -> std::net::IpAddr {
    if peer.is_ipv4() { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() }
}

/// File bytes, as blocks of the wire format.
struct Source {
    inp: BufReader<File>,
    netascii: bool,
    /// The second byte of a netascii pair that did not fit the last block.
    pending: Option<u8>,
    eof: bool,
}

impl Source {
    /// Up to `size` bytes of the next block (fewer only at the end).
    fn next_block(&mut self, size: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let start = out.len();
        if !self.netascii {
            out.resize(start + size, 0);
            let mut got = 0;
            while got < size {
                match self.inp.read(&mut out[start + got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            out.truncate(start + got);
            return Ok(());
        }
        // netascii: LF becomes CR LF, a bare CR becomes CR NUL.
        while out.len() - start < size {
            if let Some(b) = self.pending.take() {
                out.push(b);
                continue;
            }
            if self.eof {
                break;
            }
            let mut one = [0u8; 1];
            match self.inp.read(&mut one) {
                Ok(0) => self.eof = true,
                Ok(_) => match one[0] {
                    b'\n' => {
                        out.push(b'\r');
                        self.pending = Some(b'\n');
                    }
                    b'\r' => {
                        out.push(b'\r');
                        self.pending = Some(0);
                    }
                    b => out.push(b),
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Wire-format blocks, written to the file.
struct Sink {
    out: BufWriter<File>,
    netascii: bool,
    /// The last block ended with a CR whose meaning the next byte decides.
    cr: bool,
    written: u64,
}

impl Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if !self.netascii {
            self.written += data.len() as u64;
            return self.out.write_all(data);
        }
        // netascii: CR LF is LF, CR NUL is CR; a CR before anything else is
        // kept as it is (lenient: some clients send bare CRs).
        let mut plain = Vec::with_capacity(data.len() + 1);
        for &b in data {
            if self.cr {
                self.cr = false;
                match b {
                    b'\n' => {
                        plain.push(b'\n');
                        continue;
                    }
                    0 => {
                        plain.push(b'\r');
                        continue;
                    }
                    _ => plain.push(b'\r'),
                }
            }
            if b == b'\r' {
                self.cr = true;
            } else {
                plain.push(b);
            }
        }
        self.written += plain.len() as u64;
        self.out.write_all(&plain)
    }

    fn finish(mut self) -> io::Result<()> {
        if self.cr {
            self.out.write_all(b"\r")?;
        }
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }
}

enum Kind {
    Read {
        source: Source,
        /// The block last sent (0: the OACK).
        block: u16,
        /// That block was the last (shorter than the block size).
        last: bool,
    },
    Write {
        /// `None` once the file is complete.
        sink: Option<Sink>,
        path: PathBuf,
        /// The block last acknowledged (0: the request).
        acked: u16,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Running,
    /// The last block of a write is in and acknowledged: the socket stays
    /// open for a while to acknowledge it again if the client resends it.
    Dallying,
    Done,
}

struct Transfer {
    id: u64,
    peer: SocketAddr,
    sock: UdpSocket,
    timer: SteadyTimer,
    shared: Rc<Shared>,
    kind: Kind,
    blksize: usize,
    base_timeout: Duration,
    /// The current wait before retransmitting (backs off).
    timeout: Duration,
    /// Retransmissions of the current packet.
    tries: u32,
    /// The packet to retransmit on timeout.
    packet: Rc<[u8]>,
    state: State,
    /// The client has not answered the first packet yet: it is
    /// retransmitted on the server's schedule, within `first_reply_timeout`.
    first: bool,
    /// How long the first packet has waited so far.
    first_waited: Duration,
}

fn ack_packet(block: u16) -> Vec<u8> {
    let mut p = ACK.to_be_bytes().to_vec();
    p.extend_from_slice(&block.to_be_bytes());
    p
}

impl Transfer {
    /// Reads the next block and builds its DATA packet.
    fn next_data(&mut self) -> io::Result<Vec<u8>> {
        let size = self.blksize;
        let Kind::Read { source, block, last } = &mut self.kind else { unreachable!("reads only") };
        let mut p = Vec::with_capacity(4 + size);
        *block = block.wrapping_add(1); // block numbers roll over after 65535
        p.extend_from_slice(&DATA.to_be_bytes());
        p.extend_from_slice(&block.to_be_bytes());
        source.next_block(size, &mut p)?;
        *last = p.len() - 4 < size;
        Ok(p)
    }
}

/// Sends a new packet (not a retransmission) and arms the timer for it.
fn send_new(t: &Rc<RefCell<Transfer>>, packet: Vec<u8>) {
    {
        let mut tr = t.borrow_mut();
        tr.packet = Rc::from(packet);
        tr.tries = 0;
        // The client's timeout option is agreed only once it answers the
        // first packet (an OACK may yet be refused); until then, ours.
        tr.timeout = if tr.first { first_wait(&tr.shared.cfg) } else { tr.base_timeout };
    }
    transmit(t);
}

fn transmit(t: &Rc<RefCell<Transfer>>) {
    let (sock, packet, shared, id) = {
        let tr = t.borrow();
        (tr.sock.clone(), tr.packet.clone(), tr.shared.clone(), tr.id)
    };
    if shared.drop_this() {
        log::trace!(target: LOG, "transfer {id}: send dropped (test hook)");
    } else {
        sock.async_send(packet, move |err, _| {
            if err.is_err() && err != Error::OPERATION_ABORTED {
                log::debug!(target: LOG, "transfer {id}: send failed: {err}");
            }
        });
    }
    arm_timer(t);
}

/// Waits for the reply to the packet last sent; retransmits on timeout.
fn arm_timer(t: &Rc<RefCell<Transfer>>) {
    let tr = t.borrow();
    tr.timer.expires_after(tr.timeout); // cancels the previous wait
    let t2 = t.clone();
    tr.timer.async_wait(move |err| {
        if err.is_ok() {
            on_timeout(&t2);
        }
    });
}

fn on_timeout(t: &Rc<RefCell<Transfer>>) {
    let state = t.borrow().state;
    match state {
        State::Done => {}
        State::Dallying => finish(t, true),
        State::Running => {
            let next = next_wait(&mut t.borrow_mut());
            match next {
                Some(wait) => {
                    {
                        let mut tr = t.borrow_mut();
                        tr.tries += 1;
                        tr.timeout = wait;
                        tr.shared.stat(|s| s.retransmissions += 1);
                        log::debug!(target: LOG, "transfer {}: timeout, retransmission {}", tr.id, tr.tries);
                    }
                    transmit(t);
                }
                None => fail(t, Some(refuse(code::NOT_DEFINED, "timed out"))),
            }
        }
    }
}

/// The first wait for an answer to the first packet: short enough for a
/// retransmission within `first_reply_timeout`.
fn first_wait(cfg: &Config) -> Duration {
    cfg.timeout.min(cfg.first_reply_timeout / 2).max(Duration::from_millis(1))
}

/// After a wait of `tr.timeout` that went unanswered: the wait after the
/// retransmission (doubled, up to the longest), or `None` if the transfer is
/// to be given up.
fn next_wait(tr: &mut Transfer) -> Option<Duration> {
    let shared = tr.shared.clone();
    let cfg = &shared.cfg;
    if tr.tries >= cfg.retries {
        log::info!(target: LOG, "transfer {}: no answer after {} retransmissions: given up", tr.id, tr.tries);
        return None;
    }
    let doubled = (tr.timeout * 2).min(cfg.max_timeout.max(tr.base_timeout));
    if !tr.first {
        return Some(doubled);
    }
    tr.first_waited += tr.timeout;
    let left = cfg.first_reply_timeout.saturating_sub(tr.first_waited);
    if left.is_zero() {
        log::info!(target: LOG, "transfer {}: first packet unanswered after {:?}: given up", tr.id, tr.first_waited);
        return None;
    }
    Some(doubled.min(left))
}

/// Receives the client's packets until the transfer ends.
fn receive_loop(t: Rc<RefCell<Transfer>>) {
    let (sock, size) = {
        let tr = t.borrow();
        // One byte over the largest DATA packet, to notice oversize ones.
        (tr.sock.clone(), tr.blksize + 5)
    };
    sock.async_receive(vec![0u8; size], move |err, n, buf| {
        if t.borrow().state == State::Done {
            return;
        }
        if err == Error::CONNECTION_REFUSED {
            // ICMP port unreachable: the client has gone away.
            let id = t.borrow().id;
            log::info!(target: LOG, "transfer {id}: the client went away");
            let dallying = t.borrow().state == State::Dallying;
            if dallying {
                finish(&t, true);
            } else {
                fail(&t, None);
            }
            return;
        }
        if err.is_err() {
            if err != Error::OPERATION_ABORTED {
                log::debug!(target: LOG, "transfer {}: receive failed: {err}", t.borrow().id);
                receive_loop(t);
            }
            return;
        }
        on_packet(&t, &buf[..n]);
        if t.borrow().state != State::Done {
            receive_loop(t);
        }
    });
}

fn on_packet(t: &Rc<RefCell<Transfer>>, p: &[u8]) {
    let id = t.borrow().id;
    let op = opcode(p);
    if t.borrow().state == State::Dallying {
        // Only a resent last block matters now; anything else ends the dally.
        match (op, p.get(2..4)) {
            (Some(DATA), Some(b)) => on_data(t, u16::from_be_bytes([b[0], b[1]]), &p[4..]),
            _ => finish(t, true),
        }
        return;
    }
    if op == Some(ERROR) {
        let code = p.get(2..4).map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
        let msg = p.get(4..).map(|m| String::from_utf8_lossy(m.split(|&b| b == 0).next().unwrap_or(&[])).into_owned());
        log::info!(target: LOG, "transfer {id}: the client sent error {code}: {}", msg.unwrap_or_default());
        fail(t, None);
        return;
    }
    let block = p.get(2..4).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let is_write = matches!(t.borrow().kind, Kind::Write { .. });
    match (op, block, is_write) {
        (Some(ACK), Some(b), false) if p.len() == 4 => on_ack(t, b),
        (Some(DATA), Some(b), true) => on_data(t, b, &p[4..]),
        _ => {
            t.borrow().shared.stat(|s| s.malformed += 1);
            log::info!(target: LOG, "transfer {id}: unexpected packet (opcode {op:?}, {} bytes)", p.len());
            fail(t, Some(refuse(code::ILLEGAL_OPERATION, "unexpected packet")));
        }
    }
}

/// An ACK on a read transfer.
fn on_ack(t: &Rc<RefCell<Transfer>>, b: u16) {
    let (current, last) = match &t.borrow().kind {
        Kind::Read { block, last, .. } => (*block, *last),
        Kind::Write { .. } => unreachable!("reads only"),
    };
    if b != current {
        // An ACK for an earlier block is a duplicate (our retransmission
        // crossed its first copy): ignored, so that it cannot trigger another
        // DATA (the Sorcerer's Apprentice bug).
        log::trace!(target: LOG, "transfer {}: duplicate ACK {b} (at {current})", t.borrow().id);
        return;
    }
    t.borrow_mut().first = false;
    if last {
        finish(t, true);
        return;
    }
    let next = t.borrow_mut().next_data();
    match next {
        Ok(p) => send_new(t, p),
        Err(e) => fail(t, Some(io_refusal(&e, "read"))),
    }
}

/// A DATA packet on a write transfer.
fn on_data(t: &Rc<RefCell<Transfer>>, b: u16, data: &[u8]) {
    let (acked, blksize, max, state) = {
        let tr = t.borrow();
        let Kind::Write { acked, .. } = &tr.kind else { unreachable!("writes only") };
        (*acked, tr.blksize, tr.shared.cfg.max_write_bytes, tr.state)
    };
    if b == acked {
        // Our ACK was lost, so the client sent the block again: ACK it again
        // (without writing it twice).
        let p = ack_packet(b);
        let sock = t.borrow().sock.clone();
        sock.async_send(p, |_, _| {});
        return;
    }
    if state != State::Running || b != acked.wrapping_add(1) {
        return; // not the block we wait for: ignored
    }
    t.borrow_mut().first = false;
    if data.len() > blksize {
        fail(t, Some(refuse(code::ILLEGAL_OPERATION, "block larger than the block size")));
        return;
    }
    let written = {
        let mut tr = t.borrow_mut();
        let Kind::Write { sink, acked, .. } = &mut tr.kind else { unreachable!("writes only") };
        let sink = sink.as_mut().expect("running write has a file");
        if sink.written + data.len() as u64 > max {
            Err(refuse(code::DISK_FULL, format!("file larger than {max} bytes")))
        } else {
            *acked = b;
            sink.write(data).map_err(|e| io_refusal(&e, "write"))
        }
    };
    if let Err(r) = written {
        fail(t, Some(r));
        return;
    }
    if data.len() < blksize {
        // The last block: close the file before acknowledging it.
        let done = {
            let mut tr = t.borrow_mut();
            let Kind::Write { sink, .. } = &mut tr.kind else { unreachable!("writes only") };
            sink.take().expect("running write has a file").finish()
        };
        if let Err(e) = done {
            fail(t, Some(io_refusal(&e, "write")));
            return;
        }
        {
            let mut tr = t.borrow_mut();
            tr.state = State::Dallying;
            // A new request from the client's port is a new transfer now.
            release_peer(&tr);
            tr.shared.stat(|s| s.completed += 1);
            log::info!(target: LOG, "transfer {}: write complete", tr.id);
        }
        // Acknowledge, then stay a while for a resent last block: as long as
        // a client may wait before resending it (our longest wait, or twice
        // the agreed timeout).
        let p = ack_packet(b);
        send_new(t, p);
        let mut tr = t.borrow_mut();
        tr.timeout = tr.shared.cfg.max_timeout.max(tr.base_timeout * 2);
        drop(tr);
        arm_timer(t);
        return;
    }
    send_new(t, ack_packet(b));
}

/// Lets a new request from the transfer's peer start a transfer.
fn release_peer(tr: &Transfer) {
    let mut active = tr.shared.active.borrow_mut();
    if active.get(&tr.peer) == Some(&tr.id) {
        active.remove(&tr.peer);
    }
}

/// Ends the transfer; `ok`: it completed.
fn finish(t: &Rc<RefCell<Transfer>>, ok: bool) {
    let mut tr = t.borrow_mut();
    if tr.state == State::Done {
        return;
    }
    let was = tr.state;
    tr.state = State::Done;
    tr.timer.cancel();
    tr.sock.close();
    release_peer(&tr);
    let key = client_key(tr.peer);
    let mut clients = tr.shared.clients.borrow_mut();
    if let Some(held) = clients.get_mut(&key) {
        held.retain(|w| !std::ptr::eq(w.as_ptr(), Rc::as_ptr(t)));
        if held.is_empty() {
            clients.remove(&key);
        }
    }
    drop(clients);
    let shared = tr.shared.clone();
    let id = tr.id;
    shared.stat(|s| {
        s.active -= 1;
        // A write counted as complete when its last block came in.
        if ok && was != State::Dallying {
            s.completed += 1;
        }
        if !ok {
            s.failed += 1;
        }
    });
    if ok && was == State::Running {
        log::info!(target: LOG, "transfer {id}: read complete");
    }
}

/// Ends the transfer as failed, telling the client why (`Some`), and
/// removes a partly written file.
fn fail(t: &Rc<RefCell<Transfer>>, why: Option<Refusal>) {
    if t.borrow().state == State::Done {
        return;
    }
    if let Some((code, msg)) = why {
        let tr = t.borrow();
        log::info!(target: LOG, "transfer {}: failed: {msg} (error {code})", tr.id);
        tr.shared.stat(|s| s.errors_sent += 1);
        if !tr.shared.drop_this() {
            tr.sock.async_send(error_packet(code, &msg), |_, _| {});
        }
    }
    // A write not yet complete leaves no file, even when it failed in
    // `Sink::finish` (the sink already taken).
    let partial = {
        let mut tr = t.borrow_mut();
        let running = tr.state == State::Running;
        match &mut tr.kind {
            Kind::Write { sink, path, .. } if running => Some((sink.take(), path.clone())),
            _ => None,
        }
    };
    if let Some((sink, path)) = partial {
        drop(sink);
        match std::fs::remove_file(&path) {
            Ok(()) => log::info!(target: LOG, "removed the partial file {}", path.display()),
            Err(e) => log::warn!(target: LOG, "could not remove the partial file {}: {e}", path.display()),
        }
    }
    finish(t, false);
}
