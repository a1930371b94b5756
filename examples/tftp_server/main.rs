//! A TFTP server on ioctx (RFC 1350 with options: `blksize`, `timeout`,
//! `tsize`). Serves files from a directory and, with `--allow-write`,
//! takes new files into it. Runs until killed.
//!
//!     cargo run --release --example tftp_server -- --root /srv/tftp
//!     curl -o file tftp://127.0.0.1:6969/file
//!
//! `-- --help` lists the flags. Log records go to stderr through
//! env_logger: `--log LEVEL` (default info) sets one level for all of them,
//! `RUST_LOG` when set replaces it and can tell the server's (target `tftp`)
//! from the library's (`ioctx`):
//!
//!     RUST_LOG=tftp=debug,ioctx=warn cargo run --example tftp_server -- --root /srv/tftp

mod server;
mod simulate;

use ioctx::IoContext;
use server::{Config, Server};
use std::net::SocketAddr;
use std::time::Duration;

const HELP: &str = "usage: tftp_server --root DIR [flags]

  --root DIR               directory to serve (required)
  --listen ADDR:PORT       where requests arrive (default 127.0.0.1:6969)
  --allow-write            accept write requests (never overwriting a file)
  --timeout-ms N           first retransmission after N ms (default 1000), doubled
                           at each retransmission; once the client has answered the
                           first packet, its timeout option wins (one above
                           --max-timeout-ms is declined)
  --max-timeout-ms N       longest wait between retransmissions (default 8000)
  --retries N              retransmissions before a transfer is given up (default 5)
  --first-reply-ms N       a transfer whose first packet (OACK, DATA 1, or ACK 0 of a
                           write) is unanswered after N ms is given up (default 2000),
                           whatever the client's timeout option; the packet is sent
                           again within that time (after --timeout-ms, or N/2)
  --max-blksize N          largest block size granted, 8..=65464 (default 65464)
  --max-transfers N        transfers at once (default 256)
  --max-per-client N       transfers one client may hold at once (default 16): an IPv4
                           address, or an IPv6 address's /64; its further requests are
                           refused, except that a completed write still waiting for a
                           resent last block gives its place
  --max-write-bytes N      largest file a write may create (default 1 GiB)
  --ignore-client-timeout  retransmit on our schedule, not the client's timeout option
  --max-netascii-tsize N   answer a netascii read's tsize only for files of at most N
                           bytes (default 1048576): counting reads the whole file on the
                           loop; above it, tsize is left out of the OACK
  --drop-rate P            drop a fraction P of our sends (testing retransmission)
  --seed S                 seed of those drops (default 1)
  --log LEVEL              error, warn, info (default), debug or trace, for every
                           log target; RUST_LOG, when set, wins over it

Simulation (no real network, no --root; files go in a temporary directory):
  --simulate SEED          run the server on a simulated context (virtual time, an
                           in-memory network) against built-in clients that read and
                           write files, check every transfer, print the trace hash
                           and exit (1 if a transfer ended wrong)
  --seeds N                run seeds SEED..SEED+N (default 1)
  --clients N              clients per seed, each making one transfer, 1..=250 (default 8)
  --loss P, --duplicate P, --reorder P
                           the network's faults (default 0.2, 0.05, 0.1)
  --partition-ms N         cut the server off from every client for N ms of virtual
                           time, 2 s into the session (default 0)

Log records go to stderr, each with its time and target: the server's are
\"tftp\", the library's \"ioctx::...\". RUST_LOG filters them by target, e.g.
RUST_LOG=tftp=debug,ioctx=warn (env_logger's syntax).

File names are relative to --root: names that are absolute, hold \"..\", end in /
or hold a control character are refused with error 2 (access violation).";

fn usage(msg: &str) -> ! {
    eprintln!("tftp_server: {msg}\n{HELP}");
    std::process::exit(2);
}

fn value<T: std::str::FromStr>(args: &mut impl Iterator<Item = String>, flag: &str) -> T {
    let v = args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
    v.parse().unwrap_or_else(|_| usage(&format!("bad value for {flag}: {v:?}")))
}

fn main() {
    let mut sim_seed: Option<u64> = None;
    let mut seeds = 1u64;
    let mut plan = simulate::Plan { loss: 0.2, duplicate: 0.05, reorder: 0.1, partition: Duration::ZERO, clients: 8 };
    let mut root = None;
    let mut listen: SocketAddr = "127.0.0.1:6969".parse().unwrap();
    let mut cfg = Config::new(".");
    let mut level = log::LevelFilter::Info;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--root" => root = Some(value::<String>(&mut args, &a)),
            "--listen" => listen = value(&mut args, &a),
            "--allow-write" => cfg.allow_write = true,
            "--timeout-ms" => cfg.timeout = Duration::from_millis(value(&mut args, &a)),
            "--max-timeout-ms" => cfg.max_timeout = Duration::from_millis(value(&mut args, &a)),
            "--retries" => cfg.retries = value(&mut args, &a),
            "--first-reply-ms" => cfg.first_reply_timeout = Duration::from_millis(value(&mut args, &a)),
            "--max-blksize" => cfg.max_blksize = value(&mut args, &a),
            "--max-transfers" => cfg.max_transfers = value(&mut args, &a),
            "--max-per-client" => cfg.max_per_client = value(&mut args, &a),
            "--max-write-bytes" => cfg.max_write_bytes = value(&mut args, &a),
            "--ignore-client-timeout" => cfg.ignore_client_timeout = true,
            "--max-netascii-tsize" => cfg.max_netascii_tsize = value(&mut args, &a),
            "--drop-rate" => cfg.drop_rate = value(&mut args, &a),
            "--seed" => cfg.seed = value(&mut args, &a),
            "--log" => level = value(&mut args, &a),
            "--simulate" => sim_seed = Some(value(&mut args, &a)),
            "--seeds" => seeds = value(&mut args, &a),
            "--clients" => plan.clients = value(&mut args, &a),
            "--loss" => plan.loss = probability(&mut args, &a),
            "--duplicate" => plan.duplicate = probability(&mut args, &a),
            "--reorder" => plan.reorder = probability(&mut args, &a),
            "--partition-ms" => plan.partition = Duration::from_millis(value(&mut args, &a)),
            "-h" | "--help" => {
                println!("{HELP}");
                return;
            }
            _ => usage(&format!("unknown argument {a:?}")),
        }
    }
    if let Some(first) = sim_seed {
        // One transfer per client, all at once: past the server's limit of
        // transfers at once, some would rightly be told "server busy".
        if plan.clients == 0 || plan.clients > 250 {
            usage("--clients must be in 1..=250");
        }
        init_log(level);
        std::process::exit(simulate_seeds(first, seeds, &plan));
    }
    cfg.root = root.unwrap_or_else(|| usage("--root is required")).into();
    if cfg.timeout.is_zero() {
        usage("--timeout-ms must be at least 1");
    }
    if cfg.first_reply_timeout.is_zero() {
        usage("--first-reply-ms must be at least 1");
    }
    init_log(level);

    let ctx = IoContext::new().unwrap_or_else(|e| usage(&format!("cannot create the loop: {e}")));
    let server = Server::start(&ctx.executor(), listen, cfg).unwrap_or_else(|e| usage(&format!("cannot start: {e}")));
    // Tells a script or a test where the server is (useful with port 0).
    println!("listening on {}", server.local_addr().expect("bound"));
    // The listening receive is always pending: run() returns only if the
    // loop fails, which it does not.
    ctx.run();
}

fn init_log(level: log::LevelFilter) {
    // --log is the convenient switch; RUST_LOG, when set, is taken as is,
    // so that the server's and the library's records can be chosen apart.
    // Milliseconds, so that retransmission intervals can be read off.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level.as_str()))
        .format_timestamp_millis()
        .init();
}

fn probability(args: &mut impl Iterator<Item = String>, flag: &str) -> f64 {
    let p: f64 = value(args, flag);
    if !(0.0..=1.0).contains(&p) {
        usage(&format!("{flag} must be in [0, 1]"));
    }
    p
}

/// Runs the simulated sessions of seeds `first..first + n`; the exit status.
fn simulate_seeds(first: u64, n: u64, plan: &simulate::Plan) -> i32 {
    let mut status = 0;
    let wall = std::time::Instant::now();
    let mut virtual_total = Duration::ZERO;
    for seed in first..first + n {
        let dir = simulate::dir_for(seed);
        let o = simulate::run(seed, plan, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        virtual_total += o.virtual_time;
        println!(
            "seed {seed}: {} transfers: {} exact, {} timed out, {} wrong; {:?} of virtual time; trace hash {:016x}",
            plan.clients,
            o.exact,
            o.timed_out,
            o.wrong.len(),
            o.virtual_time,
            o.trace_hash
        );
        for w in &o.wrong {
            println!("  wrong: {w}");
        }
        if !o.wrong.is_empty() || o.exact + o.timed_out != plan.clients {
            status = 1;
        }
    }
    println!("{n} seeds: {virtual_total:?} of virtual time in {:?} of wall time", wall.elapsed());
    status
}
