//! Error reports the loopback interface alone cannot produce: a datagram
//! longer than the path MTU, and a host that never answers address
//! resolution. Each test runs in a network namespace of its own, where
//! the loopback MTU is lowered and a veth pair leads nowhere, so nothing
//! on the machine changes.
//!
//! No test harness (`harness = false` in Cargo.toml): `main` runs this
//! same program again under `unshare --user --map-root-user --net`, and
//! that second run, inside the namespace, sets the links up with
//! `ip` (Debian's iproute2) and runs the tests. Where the namespace or
//! `ip` cannot be had, it says so and skips (fails, with
//! `IOCTX_REQUIRE_CLIENTS` set, as in CI). Linux only.

mod common;
use common::{addr, ip};
use ioctx::net::{IcmpError, UdpSocket};
use ioctx::{Error, IoContext};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::process::{Command, ExitCode};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Set in the second run: it is inside the namespace.
const INSIDE: &str = "IOCTX_TEST_IN_NETNS";

/// The loopback MTU inside the namespace.
const LO_MTU: u32 = 1300;

const TESTS: &[(&str, fn())] = &[
    ("a_datagram_longer_than_the_path_mtu_is_refused_and_reported_with_that_mtu", mtu_report),
    ("an_address_nobody_answers_is_reported_host_unreachable_by_the_local_host", host_unreachable),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let chosen: Vec<_> = TESTS.iter().filter(|(name, _)| Selection::from(&args).runs(name)).collect();
    if chosen.is_empty() {
        return ExitCode::SUCCESS;
    }
    if std::env::var_os(INSIDE).is_none() {
        return run_inside_a_namespace(&args);
    }
    setup();
    println!("running {} tests in a network namespace", chosen.len());
    for (name, test) in chosen {
        test();
        println!("test {name} ... ok");
    }
    ExitCode::SUCCESS
}

/// Which tests the arguments select, as libtest reads them: names
/// containing a filter (or equal to it, with `--exact`), minus those
/// containing a `--skip` word; the values of options are no filters.
struct Selection<'a> {
    filters: Vec<&'a str>,
    skips: Vec<&'a str>,
    exact: bool,
}

impl<'a> Selection<'a> {
    fn from(args: &'a [String]) -> Selection<'a> {
        // libtest's options that take a value as the next argument.
        const VALUED: &[&str] = &["--test-threads", "--format", "--color", "--logfile", "--shuffle-seed", "-Z"];
        let mut sel = Selection { filters: Vec::new(), skips: Vec::new(), exact: false };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--skip" => sel.skips.extend(it.next().map(String::as_str)),
                "--exact" => sel.exact = true,
                v if VALUED.contains(&v) => drop(it.next()),
                flag if flag.starts_with('-') => {}
                filter => sel.filters.push(filter),
            }
        }
        sel
    }

    fn runs(&self, name: &str) -> bool {
        let hit = |f: &&str| if self.exact { name == *f } else { name.contains(*f) };
        (self.filters.is_empty() || self.filters.iter().any(hit)) && !self.skips.iter().any(|s| name.contains(*s))
    }
}

/// Says why the tests cannot run here: a skip, or a failure where every
/// test must run (`IOCTX_REQUIRE_CLIENTS`, as CI sets it).
fn cannot_run(why: &str) -> ExitCode {
    if std::env::var_os("IOCTX_REQUIRE_CLIENTS").is_some() {
        eprintln!("netns tests cannot run, and IOCTX_REQUIRE_CLIENTS is set: {why}");
        return ExitCode::FAILURE;
    }
    eprintln!("netns tests skipped: {why}");
    ExitCode::SUCCESS
}

/// Runs this program again in new user and network namespaces.
fn run_inside_a_namespace(args: &[String]) -> ExitCode {
    let possible = Command::new("unshare").args(["--user", "--map-root-user", "--net", "ip", "link"]).output();
    match possible {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let why = String::from_utf8_lossy(&out.stderr);
            return cannot_run(&format!("no network namespace with `ip` here ({})", why.trim()));
        }
        Err(e) => return cannot_run(&format!("`unshare` cannot run here ({e})")),
    }
    let me = std::env::current_exe().expect("this program's path");
    let status = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net"])
        .arg(me)
        .args(args)
        .env(INSIDE, "1")
        .status()
        .expect("unshare ran a moment ago");
    if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The namespace's links: loopback up with a small MTU, and a veth pair
/// `v0` (10.3.0.1/24, fd00:3::1/64) to `v1` (no address: nobody answers
/// there), whose address resolution gives up after one probe and 100 ms.
fn setup() {
    let lo_mtu = LO_MTU.to_string();
    let steps: &[&[&str]] = &[
        &["link", "set", "lo", "up", "mtu", &lo_mtu],
        &["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
        &["addr", "add", "10.3.0.1/24", "dev", "v0"],
        &["link", "set", "v0", "up"],
        &["link", "set", "v1", "up"],
        &["ntable", "change", "name", "arp_cache", "dev", "v0", "mcast_probes", "1", "retrans", "100"],
        &["addr", "add", "fd00:3::1/64", "dev", "v0", "nodad"],
        &["ntable", "change", "name", "ndisc_cache", "dev", "v0", "mcast_probes", "1", "retrans", "100"],
    ];
    for step in steps {
        let out = Command::new("ip").args(*step).output().expect("ip runs");
        assert!(out.status.success(), "ip {step:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Runs `ctx` until `done` holds (at most 5 s: a receive stays pending,
/// so the loop never runs out of work).
fn run_until(ctx: &IoContext, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() && Instant::now() < deadline {
        ctx.run_one_until(deadline);
    }
    ctx.restart();
}

/// Waits (at most 5 s) for the next error report of `sock`.
fn next_report(ctx: &IoContext, sock: &UdpSocket) -> IcmpError {
    let got = Rc::new(RefCell::new(None));
    let g = got.clone();
    sock.async_receive_error(move |e, report| *g.borrow_mut() = Some((e, report)));
    run_until(ctx, || got.borrow().is_some());
    let (e, report) = got.take().expect("a report within 5 s");
    assert_eq!(e, Error::NONE);
    report
}

/// Sends `len` bytes from `tx` to `to` and returns the send's completion.
fn send(ctx: &IoContext, tx: &UdpSocket, len: usize, to: SocketAddr) -> (Error, usize) {
    let got = Rc::new(RefCell::new(None));
    let g = got.clone();
    tx.async_send_to(vec![7u8; len], to, move |e, n| *g.borrow_mut() = Some((e, n)));
    run_until(ctx, || got.borrow().is_some());
    got.take().expect("the send completed")
}

fn mtu_report() {
    for host in ["127.0.0.1", "::1"] {
        let ctx = IoContext::new().unwrap();
        let rx = UdpSocket::bind(&ctx, SocketAddr::new(host.parse().unwrap(), 0)).unwrap();
        let to = rx.local_addr().unwrap();
        let tx = UdpSocket::bind(&ctx, SocketAddr::new(host.parse().unwrap(), 0)).unwrap();
        tx.set_recv_errors(true).unwrap();
        // The sender keeps a receive waiting throughout: no report ends it.
        let heard = Rc::new(RefCell::new(Vec::new()));
        let h = heard.clone();
        tx.async_receive_from(vec![0u8; 64], move |e, n, _, _| h.borrow_mut().push((e, n)));
        // Fragmentation allowed (the default): 1,400 bytes leave in fragments.
        assert_eq!(send(&ctx, &tx, 1400, to), (Error::NONE, 1400), "{host}");
        let mut buf = vec![0u8; 2000];
        assert_eq!(rx.receive_from(&mut buf[..]).unwrap().0, 1400, "{host}: reassembled");
        // Not with the switch on: the send fails, and says the MTU.
        tx.set_dont_fragment(true).unwrap();
        assert_eq!(send(&ctx, &tx, 1400, to), (Error::MESSAGE_SIZE, 0), "{host}");
        let report = next_report(&ctx, &tx);
        assert_eq!(
            (report.dest.ip(), report.error, report.mtu),
            (to.ip(), Error::MESSAGE_SIZE, Some(LO_MTU)),
            "{host}"
        );
        // (Over IPv4, Linux names no port in a report of its own on an unconnected socket.)
        let port = if to.is_ipv4() { 0 } else { to.port() };
        assert_eq!(report.dest.port(), port, "{host}");
        // What fits still goes, and the waiting receive still gets its datagram.
        assert_eq!(send(&ctx, &tx, 1000, to), (Error::NONE, 1000), "{host}");
        assert_eq!(rx.receive_from(&mut buf[..]).unwrap().0, 1000, "{host}");
        rx.send_to(&b"still here"[..], tx.local_addr().unwrap()).unwrap();
        run_until(&ctx, || !heard.borrow().is_empty());
        assert_eq!(*heard.borrow(), [(Error::NONE, 10)], "{host}");
    }
}

fn host_unreachable() {
    // On v0's networks, where nobody answers ARP or neighbour solicitation.
    for (bind, nobody, local) in [("0.0.0.0:0", "10.3.0.2:9", "10.3.0.1"), ("[::]:0", "[fd00:3::2]:9", "fd00:3::1")] {
        let ctx = IoContext::new().unwrap();
        let tx = UdpSocket::bind(&ctx, addr(bind)).unwrap();
        tx.set_recv_errors(true).unwrap();
        let heard = Rc::new(RefCell::new(Vec::new()));
        let h = heard.clone();
        tx.async_receive_from(vec![0u8; 64], move |e, n, _, _| h.borrow_mut().push((e, n)));
        let nobody = addr(nobody);
        assert_eq!(send(&ctx, &tx, 32, nobody), (Error::NONE, 32), "{nobody}: the send itself succeeds");
        let report = next_report(&ctx, &tx);
        assert_eq!((report.dest, report.error), (nobody, Error::HOST_UNREACHABLE));
        // The local host reports it, from v0's address.
        assert_eq!(report.reporter, Some(ip(local)), "{nobody}");
        // The receive loop goes on.
        let port = tx.local_addr().unwrap().port();
        let lo = if nobody.is_ipv4() { "127.0.0.1" } else { "::1" };
        let peer = UdpSocket::bind(&ctx, SocketAddr::new(ip(lo), 0)).unwrap();
        peer.send_to(&b"hello"[..], SocketAddr::new(ip(lo), port)).unwrap();
        run_until(&ctx, || !heard.borrow().is_empty());
        assert_eq!(*heard.borrow(), [(Error::NONE, 5)], "{nobody}");
    }
}
