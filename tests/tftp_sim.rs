//! The TFTP server of `examples/tftp_server`, unchanged, on a simulated
//! context: clients written with ioctx's own `UdpSocket` read and write
//! files across a network that loses 20% of datagrams, duplicates 5%,
//! reorders 10%, and (every other seed) cuts the server off for longer than
//! either side retransmits. Every transfer must end byte-exact or with a
//! timeout, never hang (the simulation's time limit would fail it) and never
//! leave a corrupt file; and a seed must replay the same run.

#[path = "../examples/tftp_server/server.rs"]
mod server;
#[path = "../examples/tftp_server/simulate.rs"]
mod simulate;

use simulate::{Outcome, Plan};
use std::time::Duration;

fn plan(partition: bool) -> Plan {
    Plan {
        loss: 0.2,
        duplicate: 0.05,
        reorder: 0.1,
        // Longer than the server's retransmissions (about 23 s) and the
        // client's (6 s).
        partition: if partition { Duration::from_secs(30) } else { Duration::ZERO },
        clients: 6,
    }
}

fn session(seed: u64, partition: bool) -> Outcome {
    let dir = simulate::dir_for(seed);
    let o = simulate::run(seed, &plan(partition), &dir);
    let _ = std::fs::remove_dir_all(&dir);
    o
}

#[test]
fn two_hundred_seeds_of_transfers_end_exact_or_timed_out_never_corrupt() {
    let (mut exact, mut timed_out) = (0, 0);
    let (mut exact_cut, mut timed_out_cut) = (0, 0);
    for seed in 0..200 {
        let cut = seed % 2 == 1;
        let o = session(seed, cut);
        assert!(o.wrong.is_empty(), "seed {seed}: {:?}", o.wrong);
        assert_eq!(o.exact + o.timed_out, 6, "seed {seed}: every transfer ended");
        if cut {
            exact_cut += o.exact;
            timed_out_cut += o.timed_out;
        } else {
            exact += o.exact;
            timed_out += o.timed_out;
        }
    }
    // The faults are real: some transfers time out, most do not; a long
    // partition times out many more.
    assert!(exact > timed_out && timed_out > 0, "{exact} exact, {timed_out} timed out");
    assert!(timed_out_cut > timed_out, "the partition: {timed_out_cut} timed out against {timed_out}");
    assert!(exact_cut > 0);
}

#[test]
fn a_seed_replays_the_same_session_and_another_seed_another() {
    let a = session(42, true);
    let b = session(42, true);
    assert_eq!(
        (a.trace_hash, a.exact, a.timed_out, a.virtual_time),
        (b.trace_hash, b.exact, b.timed_out, b.virtual_time)
    );
    assert_ne!(a.trace_hash, session(43, true).trace_hash);
}
