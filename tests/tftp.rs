//! The TFTP server of `examples/tftp_server` against clients nobody here
//! wrote: curl (`tftp://`) and the Debian `tftp-hpa` client, and against a
//! raw UDP client. The server runs in-process, on a thread with its own
//! `IoContext`. A test that needs a missing client is skipped (see
//! `common::client`); `.ci/run` installs them and requires them.

#[path = "../examples/tftp_server/server.rs"]
mod server;

mod common;

use common::TempDir;

use ioctx::{IoContext, Remote};
use server::{Config, Server, Stats, code};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::Duration;

/// A server running on a thread of its own until `stop`.
struct Running {
    addr: SocketAddr,
    remote: Remote,
    thread: Option<JoinHandle<Stats>>,
}

thread_local! {
    /// The server of this thread, for closures posted from the test thread.
    static SERVER: std::cell::RefCell<Option<Server>> = const { std::cell::RefCell::new(None) };
}

fn start(cfg: Config) -> Running {
    start_on("127.0.0.1:0".parse().unwrap(), cfg)
}

/// A server listening on `listen`.
fn start_on(listen: SocketAddr, cfg: Config) -> Running {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let ctx = IoContext::new().unwrap();
        let server = Server::start(&ctx.executor(), listen, cfg).unwrap();
        tx.send((server.local_addr().unwrap(), ctx.remote().unwrap())).unwrap();
        SERVER.with(|s| *s.borrow_mut() = Some(server));
        ctx.run();
        SERVER.with(|s| s.borrow_mut().take().unwrap().stats())
    });
    let (addr, remote) = rx.recv().expect("the server started");
    Running { addr, remote, thread: Some(thread) }
}

impl Running {
    fn url(&self, name: &str) -> String {
        format!("tftp://{}/{name}", self.addr)
    }

    /// What the server has done so far (asked on its own thread).
    fn stats(&self) -> Stats {
        let (tx, rx) = std::sync::mpsc::channel();
        self.remote.post(move || SERVER.with(|s| tx.send(s.borrow().as_ref().unwrap().stats()).unwrap())).unwrap();
        rx.recv_timeout(Duration::from_secs(10)).expect("the server answers")
    }

    /// Stops the loop once `done` holds for the server's stats (a client may
    /// exit before the server has taken its last ACK), or after 10 s.
    fn stop_when(self, done: impl Fn(&Stats) -> bool) -> Stats {
        let t0 = std::time::Instant::now();
        while !done(&self.stats()) && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.stop()
    }

    /// Stops the loop and returns what the server did.
    fn stop(mut self) -> Stats {
        self.remote.stop().unwrap();
        self.thread.take().unwrap().join().expect("the server thread panicked")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.remote.stop();
            let _ = t.join();
        }
    }
}

/// `len` bytes that differ from file to file (`seed`), deterministically.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// curl, or None: the test is then skipped.
fn curl() -> Option<PathBuf> {
    common::client("curl", "curl")
}

/// The tftp-hpa client, or None: the test is then skipped.
fn tftp() -> Option<PathBuf> {
    common::client("tftp", "tftp-hpa")
}

fn run(mut cmd: Command) -> Output {
    cmd.output().unwrap()
}

fn curl_get(curl: &Path, srv: &Running, name: &str, to: &Path, blksize: Option<usize>) -> Output {
    let mut c = Command::new(curl);
    c.args(["-s", "-S", "--max-time", "60"]);
    if let Some(b) = blksize {
        c.args(["--tftp-blksize", &b.to_string()]);
    }
    c.arg("-o").arg(to).arg(srv.url(name));
    run(c)
}

fn curl_put(curl: &Path, srv: &Running, from: &Path, name: &str) -> Output {
    let mut c = Command::new(curl);
    c.args(["-s", "-S", "--max-time", "60", "-T"]).arg(from).arg(srv.url(name));
    run(c)
}

/// tftp-hpa: `get`/`put` in `mode`; it exits 0 even on failure, so callers
/// check its stderr and the files.
fn tftp_hpa(tftp: &Path, srv: &Running, mode: &str, command: &str, a: &Path, b: &str) -> Output {
    tftp_hpa_at(tftp, "127.0.0.1", srv, mode, command, a, b)
}

/// [`tftp_hpa`] talking to the server at `host`.
fn tftp_hpa_at(tftp: &Path, host: &str, srv: &Running, mode: &str, command: &str, a: &Path, b: &str) -> Output {
    let mut c = Command::new(tftp);
    c.arg(host).arg(srv.addr.port().to_string()).args(["-m", mode, "-c", command]);
    if command == "get" {
        c.arg(b).arg(a);
    } else {
        c.arg(a).arg(b);
    }
    run(c)
}

/// The client succeeded and said nothing (curl reports errors on stderr,
/// tftp-hpa on stdout, with exit status 0).
fn assert_ok(out: &Output, what: &str) {
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "{what}: {:?}\n{said}", out.status);
}

fn assert_same(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(x == y, "{} ({} bytes) differs from {} ({} bytes)", a.display(), x.len(), b.display(), y.len());
}

const SIZES: [usize; 5] = [0, 511, 512, 513, 10 << 20];

#[test]
fn curl_and_tftp_hpa_fetch_files_byte_for_byte() {
    let (Some(curl), Some(tftp)) = (curl(), tftp()) else { return };
    let root = TempDir::new();
    let out = TempDir::new();
    for (i, &len) in SIZES.iter().enumerate() {
        std::fs::write(root.path(&format!("f{len}")), content(len, i as u64)).unwrap();
    }
    let srv = start(Config::new(&root.0));
    for &len in &SIZES {
        let name = format!("f{len}");
        let want = root.path(&name);
        let got = out.path(&format!("curl-{len}"));
        assert_ok(&curl_get(&curl, &srv, &name, &got, None), &format!("curl get {name}"));
        assert_same(&got, &want);
        let got = out.path(&format!("curl-1428-{len}"));
        assert_ok(&curl_get(&curl, &srv, &name, &got, Some(1428)), &format!("curl get {name} blksize 1428"));
        assert_same(&got, &want);
        let got = out.path(&format!("hpa-{len}"));
        assert_ok(&tftp_hpa(&tftp, &srv, "binary", "get", &got, &name), &format!("tftp get {name}"));
        assert_same(&got, &want);
    }
    let stats = srv.stop_when(|s| s.completed == 15);
    assert_eq!((stats.started, stats.completed, stats.failed), (15, 15, 0), "{stats:?}");
}

#[test]
fn bound_to_every_address_the_server_answers_from_the_one_each_client_contacted() {
    // tftp-hpa drops answers that do not come from the address it sent its
    // request to: from 127.0.0.2 it timed out after the first block while
    // the answers left from 127.0.0.1.
    let Some(tftp) = tftp() else { return };
    let root = TempDir::new();
    let out = TempDir::new();
    std::fs::write(root.path("f"), content(100_000, 7)).unwrap();
    let srv = start_on("0.0.0.0:0".parse().unwrap(), Config::new(&root.0));
    for host in ["127.0.0.2", "127.0.0.1", "127.0.0.3"] {
        let got = out.path(&format!("from-{host}"));
        assert_ok(&tftp_hpa_at(&tftp, host, &srv, "binary", "get", &got, "f"), &format!("tftp get from {host}"));
        assert_same(&got, &root.path("f"));
    }
    let stats = srv.stop_when(|s| s.completed == 3);
    assert_eq!((stats.started, stats.completed, stats.failed), (3, 3, 0), "{stats:?}");
    // The same bound to every IPv6 address, IPv4 clients arriving mapped.
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        return;
    }
    let srv = start_on("[::]:0".parse().unwrap(), Config::new(&root.0));
    for host in ["127.0.0.2", "127.0.0.1"] {
        let got = out.path(&format!("v6-from-{host}"));
        assert_ok(
            &tftp_hpa_at(&tftp, host, &srv, "binary", "get", &got, "f"),
            &format!("tftp get from [::] at {host}"),
        );
        assert_same(&got, &root.path("f"));
    }
    let stats = srv.stop_when(|s| s.completed == 2);
    assert_eq!((stats.started, stats.completed, stats.failed), (2, 2, 0), "{stats:?}");
}

#[test]
fn block_numbers_roll_over_after_65535_blocks() {
    // 65,535 full blocks of 8 bytes, then an empty last block whose number
    // has rolled over to 0.
    let Some(curl) = curl() else { return };
    let root = TempDir::new();
    let out = TempDir::new();
    std::fs::write(root.path("wrap"), content(65_535 * 8, 7)).unwrap();
    let srv = start(Config::new(&root.0));
    let got = out.path("wrap");
    assert_ok(&curl_get(&curl, &srv, "wrap", &got, Some(8)), "curl get with blksize 8");
    assert_same(&got, &root.path("wrap"));
    let stats = srv.stop_when(|s| s.completed == 1);
    assert_eq!((stats.completed, stats.retransmissions), (1, 0), "{stats:?}");
}

#[test]
fn curl_and_tftp_hpa_put_files_and_nothing_is_overwritten() {
    let (Some(curl), Some(tftp)) = (curl(), tftp()) else { return };
    let root = TempDir::new();
    let src = TempDir::new();
    let mut cfg = Config::new(&root.0);
    cfg.allow_write = true;
    let srv = start(cfg);
    for (i, &len) in [0usize, 511, 512, 513, 1 << 20].iter().enumerate() {
        let from = src.path(&format!("s{len}"));
        std::fs::write(&from, content(len, 100 + i as u64)).unwrap();
        assert_ok(&curl_put(&curl, &srv, &from, &format!("curl{len}")), &format!("curl put {len}"));
        assert_same(&root.path(&format!("curl{len}")), &from);
        assert_ok(&tftp_hpa(&tftp, &srv, "binary", "put", &from, &format!("hpa{len}")), &format!("tftp put {len}"));
        // tftp-hpa returns before the server's loop may have closed the file.
        wait_for_len(&root.path(&format!("hpa{len}")), len);
        assert_same(&root.path(&format!("hpa{len}")), &from);
    }
    // An existing file is never overwritten: curl reports the TFTP error
    // (exit 73: "file already exists"), and the file is unchanged.
    let other = src.path("other");
    std::fs::write(&other, b"something else").unwrap();
    let out = curl_put(&curl, &srv, &other, "curl513");
    assert_eq!(out.status.code(), Some(73), "{out:?}");
    assert_same(&root.path("curl513"), &src.path("s513"));
    let out = tftp_hpa(&tftp, &srv, "binary", "put", &other, "hpa513");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Error code 6"), "{out:?}");
    assert_same(&root.path("hpa513"), &src.path("s513"));
    srv.stop();
}

fn wait_for_len(p: &Path, len: usize) {
    for _ in 0..200 {
        if std::fs::metadata(p).is_ok_and(|m| m.len() == len as u64) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn netascii_both_ways_with_tftp_hpa() {
    let Some(tftp) = tftp() else { return };
    let root = TempDir::new();
    let src = TempDir::new();
    let text = b"first line\nsecond line\r\na bare CR\rand\n\nlast line without newline".to_vec();
    std::fs::write(root.path("text"), &text).unwrap();
    let mut cfg = Config::new(&root.0);
    cfg.allow_write = true;
    let srv = start(cfg);
    let got = src.path("got");
    assert_ok(&tftp_hpa(&tftp, &srv, "netascii", "get", &got, "text"), "netascii get");
    assert_eq!(std::fs::read(&got).unwrap(), text);
    // A block boundary inside a CR LF pair: 511 bytes then a newline.
    let mut long = vec![b'x'; 511];
    long.extend_from_slice(b"\nafter\r\n");
    let from = src.path("long");
    std::fs::write(&from, &long).unwrap();
    assert_ok(&tftp_hpa(&tftp, &srv, "netascii", "put", &from, "long"), "netascii put");
    wait_for_len(&root.path("long"), long.len());
    assert_eq!(std::fs::read(root.path("long")).unwrap(), long);
    let back = src.path("back");
    assert_ok(&tftp_hpa(&tftp, &srv, "netascii", "get", &back, "long"), "netascii get across a block boundary");
    assert_eq!(std::fs::read(&back).unwrap(), long);
    srv.stop();
}

#[test]
fn ten_concurrent_downloads() {
    let Some(curl) = curl() else { return };
    let root = TempDir::new();
    let out = TempDir::new();
    for i in 0..10 {
        std::fs::write(root.path(&format!("c{i}")), content((1 << 20) + i * 1000, 200 + i as u64)).unwrap();
    }
    let srv = start(Config::new(&root.0));
    let children: Vec<_> = (0..10)
        .map(|i| {
            let mut c = Command::new(&curl);
            let blksize = if i % 2 == 0 { "512" } else { "1400" };
            c.args(["-s", "-S", "--max-time", "60", "--tftp-blksize", blksize, "-o"])
                .arg(out.path(&format!("c{i}")))
                .arg(srv.url(&format!("c{i}")));
            c.spawn().unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "download {i}: {o:?}");
        assert_same(&out.path(&format!("c{i}")), &root.path(&format!("c{i}")));
    }
    let stats = srv.stop_when(|s| s.completed == 10);
    assert_eq!((stats.started, stats.completed, stats.failed), (10, 10, 0), "{stats:?}");
}

/// Sends `packet` to the server and returns the (code, message) of the
/// ERROR that comes back.
fn error_for(srv: &Running, packet: &[u8]) -> (u16, String) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 600];
    // Sent again if nothing comes back: a flood may have filled the
    // server's receive queue, and the kernel then drops the request.
    let (n, from) = (0..10)
        .find_map(|_| {
            s.send_to(packet, srv.addr).unwrap();
            s.recv_from(&mut buf).ok()
        })
        .expect("an error packet");
    assert_ne!(from, srv.addr, "replies come from a new transfer ID");
    assert_eq!(&buf[..2], &[0, 5], "not an ERROR: {:?}", &buf[..n]);
    assert_eq!(buf[n - 1], 0, "message not NUL-terminated");
    let code = u16::from_be_bytes([buf[2], buf[3]]);
    (code, String::from_utf8_lossy(&buf[4..n - 1]).into_owned())
}

fn request(op: u8, name: &str, mode: &str) -> Vec<u8> {
    let mut p = vec![0, op];
    p.extend_from_slice(name.as_bytes());
    p.push(0);
    p.extend_from_slice(mode.as_bytes());
    p.push(0);
    p
}

#[test]
fn bad_requests_get_a_clear_error_packet() {
    let root = TempDir::new();
    std::fs::write(root.path("exists"), b"x").unwrap();
    let ro = start(Config::new(&root.0));
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (vec![0, 9, b'a', 0, b'o', 0], code::ILLEGAL_OPERATION, "unknown opcode"),
        (request(1, "missing", "octet"), code::FILE_NOT_FOUND, "not found"),
        (request(1, "exists", "mail"), code::ILLEGAL_OPERATION, "mode"),
        (request(1, "exists", "octet")[..9].to_vec(), code::ILLEGAL_OPERATION, "malformed"),
        (vec![0, 1, b'x', 0], code::ILLEGAL_OPERATION, "malformed"),
        (request(1, "../etc/passwd", "octet"), code::ACCESS_VIOLATION, ".."),
        (request(1, "a/../../exists", "octet"), code::ACCESS_VIOLATION, ".."),
        (request(1, "/etc/passwd", "octet"), code::ACCESS_VIOLATION, "absolute"),
        (request(2, "new", "octet"), code::ACCESS_VIOLATION, "not allowed"),
        (vec![0, 4, 0, 1], code::ILLEGAL_OPERATION, "expected a read or write request"),
        (vec![0], code::ILLEGAL_OPERATION, "too short"),
    ];
    for (packet, want, words) in &cases {
        let (got, msg) = error_for(&ro, packet);
        assert_eq!(got, *want, "{packet:?}: {msg}");
        assert!(msg.contains(words), "{packet:?}: {msg:?} should mention {words:?}");
    }
    assert!(!root.path("new").exists());
    let stats = ro.stop();
    assert_eq!(stats.started, 0);

    let mut cfg = Config::new(&root.0);
    cfg.allow_write = true;
    let rw = start(cfg);
    let (got, msg) = error_for(&rw, &request(2, "exists", "octet"));
    assert_eq!(got, code::FILE_EXISTS, "{msg}");
    assert_eq!(std::fs::read(root.path("exists")).unwrap(), b"x");
    let (got, _) = error_for(&rw, &request(2, "../escape", "octet"));
    assert_eq!(got, code::ACCESS_VIOLATION);
    rw.stop();
}

#[test]
fn a_lossy_server_still_completes_every_transfer() {
    let (Some(curl), Some(tftp)) = (curl(), tftp()) else { return };
    let root = TempDir::new();
    let out = TempDir::new();
    let mut cfg = Config::new(&root.0);
    cfg.allow_write = true;
    cfg.drop_rate = 0.2;
    cfg.seed = 0x7F7F;
    cfg.timeout = Duration::from_millis(20);
    cfg.max_timeout = Duration::from_millis(200);
    cfg.retries = 30;
    // curl asks for a retransmission timeout of seconds; ours stays short.
    cfg.ignore_client_timeout = true;
    let sizes = [0usize, 1, 511, 512, 513, 20_000, 100_000];
    for (i, &len) in sizes.iter().enumerate() {
        std::fs::write(root.path(&format!("l{len}")), content(len, 300 + i as u64)).unwrap();
    }
    let srv = start(cfg);
    for &len in &sizes {
        let name = format!("l{len}");
        let got = out.path(&format!("curl-{name}"));
        assert_ok(&curl_get(&curl, &srv, &name, &got, None), &format!("lossy curl get {name}"));
        assert_same(&got, &root.path(&name));
        let got = out.path(&format!("hpa-{name}"));
        assert_ok(&tftp_hpa(&tftp, &srv, "binary", "get", &got, &name), &format!("lossy tftp get {name}"));
        assert_same(&got, &root.path(&name));
    }
    // Uploads: our lost ACKs are retransmitted on our timer; a lost last ACK
    // is answered when curl resends the last block (after its own timeout:
    // `--max-time 5` makes that one second).
    for &len in &[513usize, 30_000] {
        let from = out.path(&format!("up{len}"));
        std::fs::write(&from, content(len, 400 + len as u64)).unwrap();
        let mut c = Command::new(&curl);
        c.args(["-s", "-S", "--max-time", "5", "-T"]).arg(&from).arg(srv.url(&format!("up{len}")));
        assert_ok(&run(c), &format!("lossy curl put {len}"));
        assert_same(&root.path(&format!("up{len}")), &from);
    }
    let want = 2 * sizes.len() as u64 + 2;
    let stats = srv.stop_when(|s| s.completed == want);
    assert!(stats.dropped > 20 && stats.retransmissions >= stats.dropped / 2, "{stats:?}");
    assert_eq!(stats.completed, want, "{stats:?}");
}

#[test]
fn malformed_input_never_crashes_the_server() {
    let Some(curl) = curl() else { return };
    let root = TempDir::new();
    let out = TempDir::new();
    std::fs::write(root.path("good"), content(5000, 9)).unwrap();
    let srv = start(Config::new(&root.0));
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Random packets, then every truncation of valid requests with options.
    let mut x: u64 = 0xDEAD_BEEF;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..3000 {
        let len = (rnd() % 700) as usize;
        let mut p: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        if len >= 2 && rnd() % 2 == 0 {
            p[0] = 0;
            p[1] = (rnd() % 8) as u8; // a plausible opcode, garbage after it
        }
        s.send_to(&p, srv.addr).unwrap();
    }
    let mut full = request(1, "good", "octet");
    for opt in ["blksize", "99999999999999999999", "tsize", "x", "timeout", "0", "blksize", "7"] {
        full.extend_from_slice(opt.as_bytes());
        full.push(0);
    }
    for cut in 0..full.len() {
        s.send_to(&full[..cut], srv.addr).unwrap();
    }
    // Every packet that reached the server has been handled once this
    // request's reply is back (the kernel may have dropped some of the
    // flood: the count below is not exact).
    let (code_back, _) = error_for(&srv, &request(1, "missing", "octet"));
    assert_eq!(code_back, code::FILE_NOT_FOUND);
    // The server is still there and still right.
    let got = out.path("good");
    assert_ok(&curl_get(&curl, &srv, "good", &got, Some(1024)), "curl get after the garbage");
    assert_same(&got, &root.path("good"));
    let stats = srv.stop_when(|s| s.completed >= 1);
    assert!(stats.malformed > 10, "{stats:?}");
    assert!(stats.completed >= 1, "{stats:?}");
}

#[test]
fn the_example_binary_serves_curl_and_refuses_writes_by_default() {
    let Some(curl) = curl() else { return };
    let root = TempDir::new();
    let out = TempDir::new();
    std::fs::write(root.path("hello.txt"), b"hello from the tftp example\n").unwrap();
    let mut child = Command::new(common::example("tftp_server"))
        .arg("--root")
        .arg(&root.0)
        .args(["--listen", "127.0.0.1:0", "--log", "warn"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the example");
    let stdout = child.stdout.take().unwrap();
    let _server = common::Server(child);
    let port = common::first_line_port(stdout);
    let url = |name: &str| format!("tftp://127.0.0.1:{port}/{name}");
    let got = out.path("hello.txt");
    let mut c = Command::new(&curl);
    c.args(["-s", "-S", "--max-time", "20", "-o"]).arg(&got).arg(url("hello.txt"));
    assert_ok(&run(c), "curl get from the example binary");
    assert_same(&got, &root.path("hello.txt"));
    // Without --allow-write, a put is refused (curl: 69, access violation).
    let mut c = Command::new(&curl);
    c.args(["-s", "--max-time", "20", "-T"]).arg(&got).arg(url("copy.txt"));
    assert_eq!(run(c).status.code(), Some(69));
    assert!(!root.path("copy.txt").exists());
}

// ---------------------------------------------------------------------------
// Protocol edge cases, with a raw UDP client.

/// A hand-driven TFTP client: requests go to the server's port, the rest to
/// the transfer ID of the first reply.
struct Raw {
    s: UdpSocket,
    server: SocketAddr,
    tid: Option<SocketAddr>,
}

impl Raw {
    fn new(srv: &Running) -> Raw {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        Raw { s, server: srv.addr, tid: None }
    }

    fn request(&mut self, p: &[u8]) {
        self.tid = None;
        self.s.send_to(p, self.server).unwrap();
    }

    fn send(&self, p: &[u8]) {
        self.s.send_to(p, self.tid.expect("a transfer ID")).unwrap();
    }

    /// The next packet (from the server's side), or None after `wait`.
    fn recv_within(&mut self, wait: Duration) -> Option<Vec<u8>> {
        self.s.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0u8; 70_000];
        let (n, from) = self.s.recv_from(&mut buf).ok()?;
        if self.tid.is_none() {
            self.tid = Some(from);
        }
        buf.truncate(n);
        Some(buf)
    }

    fn recv(&mut self) -> Vec<u8> {
        self.recv_within(Duration::from_secs(2)).expect("a reply from the server")
    }
}

fn request_with(op: u8, name: &str, mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut p = request(op, name, mode);
    for (n, v) in opts {
        p.extend_from_slice(n.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

/// The options of an OACK, as (name, value) pairs.
fn oack_options(p: &[u8]) -> Vec<(String, String)> {
    assert_eq!(&p[..2], &[0, 6], "not an OACK: {p:?}");
    let f: Vec<String> =
        p[2..p.len() - 1].split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect();
    f.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect()
}

fn ack(block: u16) -> Vec<u8> {
    let mut p = vec![0, 4];
    p.extend_from_slice(&block.to_be_bytes());
    p
}

fn data(block: u16, bytes: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 3];
    p.extend_from_slice(&block.to_be_bytes());
    p.extend_from_slice(bytes);
    p
}

#[test]
fn netascii_read_with_tsize_sends_the_file() {
    // Counting the netascii size read the file through a dup of its
    // descriptor, which shares the offset: the transfer then found the file
    // at its end and sent an empty block after announcing tsize 6.
    let root = TempDir::new();
    std::fs::write(root.path("text"), b"a\nb\n").unwrap();
    let srv = start(Config::new(&root.0));
    let mut c = Raw::new(&srv);
    c.request(&request_with(1, "text", "netascii", &[("tsize", "0")]));
    let oack = c.recv();
    assert_eq!(oack_options(&oack), vec![("tsize".to_string(), "6".to_string())]);
    c.send(&ack(0));
    assert_eq!(c.recv(), data(1, b"a\r\nb\r\n"));
    c.send(&ack(1));
    let stats = srv.stop_when(|s| s.completed == 1);
    assert_eq!((stats.completed, stats.failed), (1, 0), "{stats:?}");
}

#[test]
fn a_new_request_from_the_same_port_is_served_while_a_write_dallies() {
    // A client that keeps its port (tftp-hpa in interactive mode does) puts
    // a file, then gets one: the server, dallying after the put (8 s by
    // default), took the new request for a repeat of the old one and
    // ignored it.
    let root = TempDir::new();
    std::fs::write(root.path("other"), b"hello").unwrap();
    let mut cfg = Config::new(&root.0);
    cfg.allow_write = true;
    let srv = start(cfg);
    let mut c = Raw::new(&srv);
    c.request(&request(2, "up", "octet"));
    assert_eq!(c.recv(), ack(0));
    c.send(&data(1, b"abc"));
    assert_eq!(c.recv(), ack(1));
    c.request(&request(1, "other", "octet"));
    assert_eq!(c.recv(), data(1, b"hello"), "the read was not served during the dally");
    c.send(&ack(1));
    assert_eq!(std::fs::read(root.path("up")).unwrap(), b"abc");
    let stats = srv.stop_when(|s| s.completed == 2);
    assert_eq!((stats.started, stats.completed, stats.failed), (2, 2, 0), "{stats:?}");
}

#[test]
fn a_client_timeout_beyond_max_timeout_is_declined() {
    // The client's `timeout` option replaced the server's timeout even above
    // `max_timeout`: one request with `timeout 255` held a transfer slot for
    // 255 s x (retries + 1), and a write's dally for 510 s. RFC 2349 lets the
    // server decline it (it may not answer another value).
    let root = TempDir::new();
    std::fs::write(root.path("f"), b"x").unwrap();
    let mut cfg = Config::new(&root.0);
    cfg.timeout = Duration::from_millis(50);
    cfg.max_timeout = Duration::from_millis(100);
    cfg.retries = 2;
    let srv = start(cfg);
    let mut c = Raw::new(&srv);
    c.request(&request_with(1, "f", "octet", &[("timeout", "255"), ("blksize", "1024")]));
    let oack = c.recv();
    assert_eq!(oack_options(&oack), vec![("blksize".to_string(), "1024".to_string())]);
    // No ACK: the transfer is given up on the server's schedule (50 + 100
    // + 100 ms), not the client's.
    std::thread::sleep(Duration::from_millis(1500));
    let stats = srv.stats();
    assert_eq!((stats.active, stats.failed), (0, 1), "{stats:?}");
}

#[test]
fn names_with_a_trailing_slash_are_refused() {
    // "dir/" (or "dir/.") named a file "dir": a put of "new/" created a
    // regular file "new", a get of "f/" served the file "f".
    let root = TempDir::new();
    std::fs::write(root.path("f"), b"x").unwrap();
    let mut cfg = Config::new(&root.0);
    cfg.allow_write = true;
    let srv = start(cfg);
    let (got, msg) = error_for(&srv, &request(2, "new/", "octet"));
    assert_eq!(got, code::ACCESS_VIOLATION, "{msg}");
    assert!(!root.path("new").exists());
    let (got, msg) = error_for(&srv, &request(2, "new/.", "octet"));
    assert_eq!(got, code::ACCESS_VIOLATION, "{msg}");
    assert!(!root.path("new").exists());
    let (got, msg) = error_for(&srv, &request(1, "f/", "octet"));
    assert_eq!(got, code::ACCESS_VIOLATION, "{msg}");
    srv.stop();
}

#[test]
fn names_with_control_characters_are_refused() {
    // "nul\x01name" and the like were accepted for writing: names a shell,
    // a log or a terminal would misread. Refused for reads and writes.
    let root = TempDir::new();
    let mut cfg = Config::new(&root.0);
    cfg.allow_write = true;
    let srv = start(cfg);
    for name in ["nul\u{1}name", "line\nbreak", "tab\there", "esc\u{1b}[2J", "del\u{7f}", "csi\u{9b}x"] {
        let (got, msg) = error_for(&srv, &request(2, name, "octet"));
        assert_eq!(got, code::ACCESS_VIOLATION, "write {name:?}: {msg}");
        assert!(msg.contains("control character"), "{msg:?}");
        assert!(!root.path(name).exists(), "write {name:?} created the file");
        // A file that exists under such a name is not served either.
        std::fs::write(root.path(name), b"x").unwrap();
        let (got, msg) = error_for(&srv, &request(1, name, "octet"));
        assert_eq!(got, code::ACCESS_VIOLATION, "read {name:?}: {msg}");
    }
    let stats = srv.stop();
    assert_eq!(stats.started, 0, "{stats:?}");
}

/// A full tmpfs mounted at a fresh directory (None where mounting is not
/// allowed: the test is then skipped); unmounted when dropped.
struct FullDisk(TempDir);

impl FullDisk {
    fn new() -> Option<FullDisk> {
        let dir = TempDir::new();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&dir.0)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let disk = FullDisk(dir);
        let mut f = std::fs::File::create(disk.0.path("filler")).unwrap();
        let chunk = [0u8; 4096];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        Some(disk)
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0.0).status();
    }
}

#[test]
fn a_write_that_fails_on_its_last_block_leaves_no_partial_file() {
    // A file smaller than the write buffer reaches the disk only when its
    // last block is in: if that fails (disk full), the transfer failed but
    // the file it had created stayed (empty), and a retry got "file exists".
    let Some(disk) = FullDisk::new() else {
        common::skipped("cannot mount a tmpfs here (needs root and mount(8)); this test did not run");
        return;
    };
    let mut cfg = Config::new(&disk.0.0);
    cfg.allow_write = true;
    let srv = start(cfg);
    let mut c = Raw::new(&srv);
    c.request(&request(2, "small", "octet"));
    assert_eq!(c.recv(), ack(0));
    c.send(&data(1, b"abc"));
    let reply = c.recv();
    assert_eq!(&reply[..4], &[0, 5, 0, code::DISK_FULL as u8], "{reply:?}");
    let stats = srv.stop_when(|s| s.active == 0);
    assert_eq!((stats.completed, stats.failed), (0, 1), "{stats:?}");
    assert!(!disk.0.path("small").exists(), "the partial file was left behind");
}

#[test]
#[cfg(target_os = "linux")] // prlimit
fn a_write_request_that_cannot_get_a_socket_leaves_no_file() {
    // The file of a write request was created before the transfer's socket:
    // when the socket could not be had (out of descriptors), the request was
    // refused but the new, empty file stayed, and every retry then got "file
    // exists". Run on the example binary, whose descriptor limit prlimit(2)
    // lowers to leave exactly one free.
    let root = TempDir::new();
    let mut child = Command::new(common::example("tftp_server"))
        .arg("--root")
        .arg(&root.0)
        .args(["--listen", "127.0.0.1:0", "--log", "error", "--allow-write"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the example");
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let _server = common::Server(child);
    let port = common::first_line_port(stdout);
    let fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    // Descriptors are allocated lowest first and the limit bounds their
    // numbers: with the lowest free one as the only one below it, one more
    // descriptor can be had.
    let lowest_free = (0..).find(|n| !fds.contains(n)).unwrap();
    let soft = set_soft_nofile(pid, (lowest_free + 1).into());
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    s.send_to(&request(2, "new", "octet"), ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 600];
    let _ = s.recv_from(&mut buf); // no socket for an error packet either
    std::thread::sleep(Duration::from_millis(200));
    assert!(!root.path("new").exists(), "a refused write request left its file behind");
    // With descriptors again, the client's retry is served.
    set_soft_nofile(pid, soft);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(&request(2, "new", "octet"), ("127.0.0.1", port)).unwrap();
    let (n, _) = s.recv_from(&mut buf).expect("a reply to the retry");
    assert_eq!(&buf[..n], &ack(0)[..], "the retry was refused");
}

/// Sets the soft descriptor limit of process `pid` (hard limit kept) and
/// returns the one it had. The system call rather than prlimit(1): the test
/// then needs no program beyond the toolchain.
#[cfg(target_os = "linux")]
fn set_soft_nofile(pid: u32, soft: libc::rlim_t) -> libc::rlim_t {
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `old` is a valid rlimit to write to; no new limit is passed.
    let got = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(got, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit { rlim_cur: soft, rlim_max: old.rlim_max };
    // SAFETY: `new` is a valid rlimit to read; the old one is not asked for.
    let set = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

// ---------------------------------------------------------------------------
// Abuse: requests that cost the server more than they cost the sender.

#[test]
fn netascii_tsize_of_a_huge_file_does_not_stall_other_transfers() {
    // Counting the netascii size of a file read it all on the loop: four
    // 40-byte requests for a 1 GiB file stalled every other transfer for
    // seconds. Above a limit the size is not counted and tsize is left out
    // of the OACK.
    let Some(curl) = curl() else { return };
    let root = TempDir::new();
    let out = TempDir::new();
    std::fs::File::create(root.path("huge")).unwrap().set_len(1 << 30).unwrap(); // sparse
    std::fs::write(root.path("small"), content(2000, 11)).unwrap();
    let srv = start(Config::new(&root.0));
    // One socket each: requests from one port are repeats of one transfer.
    let askers: Vec<Raw> = (0..4)
        .map(|_| {
            let mut c = Raw::new(&srv);
            c.request(&request_with(1, "huge", "netascii", &[("tsize", "0"), ("blksize", "1024")]));
            c
        })
        .collect();
    let t0 = std::time::Instant::now();
    let got = out.path("small");
    assert_ok(&curl_get(&curl, &srv, "small", &got, None), "curl get behind the netascii tsize requests");
    let took = t0.elapsed();
    println!("download behind four netascii tsize requests for 1 GiB: {took:?}");
    assert_same(&got, &root.path("small"));
    assert!(took < Duration::from_millis(500), "the download took {took:?}");
    for mut c in askers {
        let oack = c.recv();
        assert_eq!(oack_options(&oack), vec![("blksize".to_string(), "1024".to_string())], "tsize not declined");
    }
}

#[test]
fn netascii_tsize_is_counted_up_to_the_limit_only() {
    let root = TempDir::new();
    std::fs::write(root.path("four"), b"a\nb\n").unwrap();
    std::fs::write(root.path("five"), b"a\nb\nc").unwrap();
    let mut cfg = Config::new(&root.0);
    cfg.max_netascii_tsize = 4;
    let srv = start(cfg);
    let mut c = Raw::new(&srv);
    c.request(&request_with(1, "four", "netascii", &[("tsize", "0"), ("blksize", "512")]));
    let oack = c.recv();
    let want = |tsize: Option<&str>| {
        let mut v = vec![];
        if let Some(t) = tsize {
            v.push(("tsize".to_string(), t.to_string()));
        }
        v.push(("blksize".to_string(), "512".to_string()));
        v
    };
    assert_eq!(oack_options(&oack), want(Some("6")));
    c.send(&ack(0));
    assert_eq!(c.recv(), data(1, b"a\r\nb\r\n"));
    c.send(&ack(1));
    let mut c = Raw::new(&srv);
    c.request(&request_with(1, "five", "netascii", &[("tsize", "0"), ("blksize", "512")]));
    assert_eq!(oack_options(&c.recv()), want(None), "a file above the limit is not counted");
    c.send(&ack(0));
    assert_eq!(c.recv(), data(1, b"a\r\nb\r\nc"), "the file is still served");
    c.send(&ack(1));
    let stats = srv.stop_when(|s| s.completed == 2);
    assert_eq!((stats.completed, stats.failed), (2, 0), "{stats:?}");
}

/// Sends a read request for `name` with `timeout 8` from one new socket on
/// each of `ips`, and takes the first reply of each, never answering it.
/// The sockets are returned to stay open: a closed one would make the
/// server's retransmission fail (port unreachable) and end its transfer.
/// Returns them with the number of requests answered by an OACK (a transfer
/// slot held) and by an ERROR (refused).
fn silent_requests(srv: &Running, name: &str, ips: &[std::net::Ipv4Addr]) -> (Vec<UdpSocket>, usize, usize) {
    let packet = request_with(1, name, "octet", &[("timeout", "8")]);
    let (mut held, mut refused) = (0, 0);
    let mut socks = Vec::new();
    let mut buf = [0u8; 600];
    for &ip in ips {
        let s = UdpSocket::bind((ip, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        // Sent again if nothing comes back (the kernel may drop a request
        // when the listening socket's queue is full); a repeat of a request
        // whose transfer runs is ignored by the server.
        let n = (0..10)
            .find_map(|_| {
                s.send_to(&packet, srv.addr).unwrap();
                s.recv_from(&mut buf).ok().map(|(n, _)| n)
            })
            .expect("a reply to a silent request");
        match &buf[..2] {
            [0, 6] => held += 1,
            [0, 5] => refused += 1,
            other => panic!("unexpected reply {other:?} ({n} bytes)"),
        }
        socks.push(s);
    }
    (socks, held, refused)
}

/// Runs curl until it gets `name` (a refused attempt is retried 50 ms
/// later), for at most `limit`; returns the time it took and the attempts.
fn curl_until_served(curl: &Path, srv: &Running, name: &str, to: &Path, limit: Duration) -> (Duration, u32) {
    let t0 = std::time::Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut c = Command::new(curl);
        c.args(["-s", "--max-time", "5", "-o"]).arg(to).arg(srv.url(name));
        if run(c).status.success() {
            return (t0.elapsed(), attempts);
        }
        assert!(t0.elapsed() < limit, "not served within {limit:?} ({attempts} attempts)");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn silent_requests_from_one_address_leave_room_for_others() {
    // 256 requests that never acknowledge, each asking for `timeout 8`, held
    // every transfer slot for 48 s. One address now holds at most
    // `max_per_client` of them; the others are refused at once.
    let Some(curl) = curl() else { return };
    let root = TempDir::new();
    let out = TempDir::new();
    std::fs::write(root.path("f"), content(3000, 12)).unwrap();
    let mut cfg = Config::new(&root.0);
    // The limit alone protects here: the first packets' budget outlasts the
    // test.
    cfg.first_reply_timeout = Duration::from_secs(60);
    let per_client = cfg.max_per_client;
    let srv = start(cfg);
    let attacker = [std::net::Ipv4Addr::new(127, 0, 0, 2); 256];
    let (_socks, held, refused) = silent_requests(&srv, "f", &attacker);
    println!("256 silent requests from one address: {held} held, {refused} refused");
    let got = out.path("f");
    let (took, attempts) = curl_until_served(&curl, &srv, "f", &got, Duration::from_secs(5));
    println!("legitimate client served after {took:?} ({attempts} attempts)");
    assert_same(&got, &root.path("f"));
    assert_eq!((held, refused), (per_client, 256 - per_client));
    assert_eq!(attempts, 1, "the legitimate client was refused");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn silent_requests_from_many_addresses_expire_quickly() {
    // The same flood from 256 addresses, one request each: no per-client
    // limit applies, but a first packet that is never acknowledged is given
    // up after a short budget, whatever the `timeout` option asked for.
    let Some(curl) = curl() else { return };
    let root = TempDir::new();
    let out = TempDir::new();
    std::fs::write(root.path("f"), content(3000, 13)).unwrap();
    let srv = start(Config::new(&root.0));
    let first = u32::from(std::net::Ipv4Addr::new(127, 0, 0, 2));
    let attackers: Vec<_> = (0..256).map(|i| std::net::Ipv4Addr::from(first + i)).collect();
    let (_socks, held, refused) = silent_requests(&srv, "f", &attackers);
    println!("256 silent requests from 256 addresses: {held} held, {refused} refused");
    assert_eq!((held, refused), (256, 0));
    let got = out.path("f");
    let (took, attempts) = curl_until_served(&curl, &srv, "f", &got, Duration::from_secs(5));
    println!("legitimate client served after {took:?} ({attempts} attempts)");
    assert_same(&got, &root.path("f"));
    assert!(took < Duration::from_secs(5), "{took:?}");
    // They expire together: curl may have taken the first slot freed.
    let stats = srv.stop_when(|s| s.failed == 256);
    assert_eq!((stats.failed, stats.completed), (256, 1), "{stats:?}");
}

#[test]
fn an_unanswered_first_packet_is_sent_again_once_then_given_up() {
    // The first packet waited for its answer on the client's `timeout`
    // schedule: 8 s, doubled up to 8 s, five times (48 s). It now has a
    // budget of its own (here 300 ms: sent at 0 and 100 ms, given up at 300).
    let root = TempDir::new();
    std::fs::write(root.path("f"), b"hello").unwrap();
    let mut cfg = Config::new(&root.0);
    cfg.allow_write = true;
    cfg.timeout = Duration::from_millis(100);
    cfg.first_reply_timeout = Duration::from_millis(300);
    let srv = start(cfg);
    let timeout8 = [("timeout", "8")];

    // A client that lost the OACK gets it again, well before 8 s.
    let mut c = Raw::new(&srv);
    c.request(&request_with(1, "f", "octet", &timeout8));
    let oack = c.recv();
    assert_eq!(oack_options(&oack), vec![("timeout".to_string(), "8".to_string())]);
    assert_eq!(c.recv_within(Duration::from_millis(250)).as_deref(), Some(&oack[..]), "no retransmission");
    c.send(&ack(0));
    assert_eq!(c.recv(), data(1, b"hello"));
    c.send(&ack(1));

    // Never answered: given up (with an ERROR) once the budget is spent, for
    // a read and for a write (whose new file is removed).
    for (op, name) in [(1, "f"), (2, "new")] {
        let mut c = Raw::new(&srv);
        let t0 = std::time::Instant::now();
        c.request(&request_with(op, name, "octet", &timeout8));
        let first = c.recv();
        assert_eq!(c.recv(), first, "the first packet is sent again");
        let error = c.recv();
        let took = t0.elapsed();
        println!("unanswered first packet of a request {op} given up after {took:?}");
        assert_eq!(&error[..4], &[0, 5, 0, code::NOT_DEFINED as u8], "{error:?}");
        assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(1500), "{took:?}");
    }
    // The file goes after the ERROR is sent: once the transfer has ended.
    let stats = srv.stop_when(|s| s.active == 0);
    assert_eq!((stats.completed, stats.failed, stats.retransmissions), (1, 2, 3), "{stats:?}");
    assert!(!root.path("new").exists(), "the unanswered write left its file");
}

#[test]
fn a_dallying_write_gives_its_place_to_a_new_request_from_its_client() {
    // A completed write waits a while for a resent last block: it counts
    // against its client's limit, but is ended to make room rather than have
    // a client that puts several files in a row refused.
    let root = TempDir::new();
    std::fs::write(root.path("other"), b"hello").unwrap();
    let mut cfg = Config::new(&root.0);
    cfg.allow_write = true;
    cfg.max_per_client = 1;
    let srv = start(cfg);
    let mut c = Raw::new(&srv);
    c.request(&request(2, "up", "octet"));
    assert_eq!(c.recv(), ack(0));
    c.send(&data(1, b"abc"));
    assert_eq!(c.recv(), ack(1));
    let mut d = Raw::new(&srv);
    d.request(&request(1, "other", "octet"));
    assert_eq!(d.recv(), data(1, b"hello"), "refused while the write dallied");
    // The read runs: a third transfer from the same address is refused.
    let (got, msg) = error_for(&srv, &request(1, "other", "octet"));
    assert_eq!(got, code::NOT_DEFINED, "{msg}");
    assert!(msg.contains("too many"), "{msg:?}");
    d.send(&ack(1));
    assert_eq!(std::fs::read(root.path("up")).unwrap(), b"abc");
    let stats = srv.stop_when(|s| s.completed == 2 && s.active == 0);
    assert_eq!((stats.started, stats.completed, stats.failed, stats.active), (2, 2, 0, 0), "{stats:?}");
}

#[test]
fn clients_are_counted_by_ipv4_address_or_ipv6_slash_64() {
    let key = |a: &str| server::client_key(a.parse().unwrap());
    assert_eq!(key("127.0.0.2:1"), key("127.0.0.2:2"));
    assert_ne!(key("127.0.0.2:1"), key("127.0.0.3:1"));
    assert_eq!(key("[::ffff:127.0.0.2]:1"), key("127.0.0.2:1"), "an IPv4-mapped address is its IPv4 client");
    assert_eq!(key("[2001:db8:0:1::5]:1"), key("[2001:db8:0:1:ffff:ffff:ffff:ffff]:1"));
    assert_ne!(key("[2001:db8:0:1::5]:1"), key("[2001:db8:0:2::5]:1"));
}

#[test]
fn a_fifo_is_refused_without_waiting_for_a_writer() {
    // Opening a FIFO for reading waits for a writer: on the loop, that
    // would stop every transfer.
    let root = TempDir::new();
    std::fs::write(root.path("f"), b"x").unwrap();
    // mkfifo(3) rather than mkfifo(1): no program beyond the toolchain.
    let fifo = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(root.path("fifo").as_os_str())).unwrap();
    // SAFETY: `fifo` is a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo: {}", std::io::Error::last_os_error());
    let srv = start(Config::new(&root.0));
    // Should the server be stuck in open(2), this gives it a writer when the
    // test ends (before `srv` is dropped and joined), so that a regression
    // fails instead of hanging: an O_RDWR open of a FIFO never waits.
    struct Writer(std::path::PathBuf);
    impl Drop for Writer {
        fn drop(&mut self) {
            let _ = std::fs::File::options().read(true).write(true).open(&self.0);
        }
    }
    let _writer = Writer(root.path("fifo"));
    let (got, msg) = error_for(&srv, &request(1, "fifo", "octet"));
    assert_eq!(got, code::FILE_NOT_FOUND, "{msg}");
    assert!(msg.contains("not a regular file"), "{msg:?}");
    let mut c = Raw::new(&srv);
    c.request(&request(1, "f", "octet"));
    assert_eq!(c.recv(), data(1, b"x"));
    c.send(&ack(1));
    srv.stop();
}
