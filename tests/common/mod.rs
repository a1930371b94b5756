//! Fixtures shared by the socket tests.
#![allow(dead_code)] // each test binary uses its own subset

use ioctx::net::TcpStream;
use ioctx::net::UdpSocket;
use ioctx::{Error, IoContext};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

/// An ephemeral loopback address.
pub fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A blocking std socket with a timeout, to feed or observe an ioctx socket.
pub fn std_peer() -> std::net::UdpSocket {
    let s = std::net::UdpSocket::bind(local()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// An ioctx socket connected to a std peer (and the peer connected back).
pub fn connected_pair(ctx: &IoContext) -> (UdpSocket, std::net::UdpSocket) {
    let peer = std_peer();
    let sock = UdpSocket::bind(ctx, local()).unwrap();
    sock.connect(peer.local_addr().unwrap()).unwrap();
    peer.connect(sock.local_addr().unwrap()).unwrap();
    (sock, peer)
}

/// The events mask (`EPOLLIN`, `EPOLLOUT`, ...) with which `fd` is registered
/// in an epoll instance of this process, read from `/proc/self/fdinfo`. The
/// entry is matched by descriptor number AND inode, so the epoll instances of
/// tests running in parallel cannot be mistaken for ours.
pub fn epoll_events(fd: RawFd) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?.ino();
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let is_epoll = std::fs::read_link(entry.path()).is_ok_and(|t| t.to_str() == Some("anon_inode:[eventpoll]"));
        if !is_epoll {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{name}")) else { continue };
        for line in info.lines() {
            // "tfd:        5 events: 80002019 data: 0000000000000000  pos:0 ino:7f70 sdev:9"
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() < 4 || words[0] != "tfd:" || words[2] != "events:" {
                continue;
            }
            let same_ino =
                words.iter().any(|w| w.strip_prefix("ino:").and_then(|h| u64::from_str_radix(h, 16).ok()) == Some(ino));
            if words[1].parse::<RawFd>().ok() == Some(fd) && same_ino {
                return u32::from_str_radix(words[3], 16).ok();
            }
        }
    }
    None
}

pub const EPOLLIN: u32 = 0x001;
pub const EPOLLOUT: u32 = 0x004;

pub fn raw_fd(sock: &UdpSocket) -> RawFd {
    sock.with_socket2(|s| s.as_raw_fd()).unwrap()
}

/// The environment variable that tells a re-executed test binary which test
/// it runs as a child (see [`run_in_child`]).
pub const CHILD_ENV: &str = "IOCTX_TEST_CHILD";

/// True inside the child process that [`run_in_child`] started for `test`.
pub fn is_child(test: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == test)
}

/// Re-executes this test binary to run only `test` (`--exact`) in a child
/// process, with [`CHILD_ENV`] set so that the test takes its child branch
/// (for process-wide changes: resource limits, signal dispositions). Asserts
/// that the child ran exactly that one test and exited successfully (a
/// death by signal is reported as such).
pub fn run_in_child(test: &str) {
    use std::os::unix::process::ExitStatusExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, test)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child for {test} failed: {:?} (signal {:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status,
        out.status.signal()
    );
    assert!(stdout.contains("1 passed"), "the child did not run {test}:\n{stdout}\n{stderr}");
}

/// Records each handler's `(Error, usize)` in completion order (for an
/// accept: whether it got a stream).
#[derive(Clone, Default)]
pub struct Seen(pub Rc<RefCell<Vec<(Error, usize)>>>);

impl Seen {
    pub fn send_handler(&self) -> impl FnOnce(Error, usize) + 'static {
        let s = self.0.clone();
        move |e, n| s.borrow_mut().push((e, n))
    }
    pub fn recv_handler(&self) -> impl FnOnce(Error, usize, Vec<u8>) + 'static {
        let s = self.0.clone();
        move |e, n, _| s.borrow_mut().push((e, n))
    }
    pub fn recv_from_handler(&self) -> impl FnOnce(Error, usize, Vec<u8>, SocketAddr) + 'static {
        let s = self.0.clone();
        move |e, n, _, _| s.borrow_mut().push((e, n))
    }
    pub fn wait_handler(&self) -> impl FnOnce(Error) + 'static {
        let s = self.0.clone();
        move |e| s.borrow_mut().push((e, 0))
    }
    pub fn accept_handler(&self) -> impl FnOnce(Error, Option<TcpStream>) + 'static {
        let s = self.0.clone();
        move |e, st| s.borrow_mut().push((e, st.is_some() as usize))
    }
    pub fn get(&self) -> Vec<(Error, usize)> {
        self.0.borrow().clone()
    }
}

/// The example binary `cargo test` built next to this test's directory.
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>/deps/<test>");
    let path = dir.join("examples").join(name);
    if !path.exists() {
        // `cargo test` builds the examples; a run of this test alone does not.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build
            .args(["build", "--example", name, "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo");
        assert!(status.success() && path.exists(), "could not build the example {name}");
    }
    path
}

/// Kills the server however the test ends.
pub struct Server(pub std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The port at the end of a server's first line of output
/// (`listening on 127.0.0.1:PORT`).
pub fn first_line_port(stdout: std::process::ChildStdout) -> u16 {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
    line.trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no port in the server's first line {line:?}"))
}

/// A fresh directory, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ioctx-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Ticks `left` times, 5 ms apart, counting in `ticks`.
pub fn tick(t: ioctx::SteadyTimer, left: usize, ticks: Rc<std::cell::Cell<usize>>) {
    if left == 0 {
        return;
    }
    t.expires_after(Duration::from_millis(5));
    let t2 = t.clone();
    t.async_wait(move |e| {
        assert_eq!(e, Error::NONE);
        ticks.set(ticks.get() + 1);
        tick(t2, left - 1, ticks);
    });
}

/// The environment variable that turns a missing external client into a
/// failure (`.ci/run` sets it, so that CI never passes without interop).
pub const REQUIRE_CLIENTS_ENV: &str = "IOCTX_REQUIRE_CLIENTS";

/// The external client `program` (from the Debian package `package`) found
/// on PATH, for interop tests that drive a program nobody here wrote. When it
/// is missing, the test is skipped (see [`skipped`]) and None returned, so
/// that `cargo test` passes with the Rust toolchain alone; or, with
/// [`REQUIRE_CLIENTS_ENV`] set to anything non-empty, the test fails.
pub fn client(program: &str, package: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Resolved here rather than by Command, so that "missing" is decided
    // once, before the test starts its server.
    let found = std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute()) // a relative entry would depend on the working directory
        .map(|dir| dir.join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0));
    if found.is_none() {
        if std::env::var_os(REQUIRE_CLIENTS_ENV).is_some_and(|v| !v.is_empty()) {
            panic!(
                "{program} is required ({REQUIRE_CLIENTS_ENV} is set) but not found on PATH: \
                 install the Debian package {package}"
            );
        }
        skipped(&format!("{program} is not installed (Debian package {package}); this interop test did not run"));
    }
    found
}

/// Says that the running test did not run, and why, where a plain `cargo
/// test` shows it: libtest captures only the `print!` family of macros
/// (rust-lang/rust#90785), so a write to `io::stderr()` reaches the terminal
/// even for a passing test. The line also goes through `print!`, to be part
/// of the test's captured output (`--show-output`), should libtest one day
/// capture stderr whole; with `--nocapture` it therefore shows twice. Not
/// written uncaptured to stdout: that is libtest's own stream (`--format`).
pub fn skipped(why: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("<unnamed>").to_owned();
    let line = format!("skipped: {why} ({test})\n");
    // One write: a whole line even among parallel tests.
    let _ = std::io::stderr().write_all(line.as_bytes());
    print!("{line}");
}

/// An address from text (a test's own literal).
pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// An IP from text (a test's own literal).
pub fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

/// Runs `body` on a real context and on a simulated one: the rule it
/// checks must hold on both.
pub fn on_both_backends(body: impl Fn(&IoContext)) {
    body(&IoContext::new().unwrap());
    body(&IoContext::simulated(99));
}

/// splitmix64, the model-based tests' generator: small, fast, and the same
/// on every platform.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// lo..=hi.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    pub fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
}
