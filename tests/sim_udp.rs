//! UDP on the simulated network (DESIGN §1.7): the rules of a real socket
//! (the same test bodies run on both backends), and what only a simulation
//! can do: latency, loss, duplication, reordering, partitions, held links,
//! full receive buffers, crashes, all from one seed.

mod common;
use common::{addr, ip, on_both_backends};
use ioctx::net::UdpSocket;
use ioctx::sim::{self, Link};
use ioctx::{CancellationType, Error, IoContext, SimConfig};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

// ------------------------------------------------------------ the rules, on both backends

#[test]
fn s1_an_immediate_send_completes_through_the_queue_never_inline() {
    on_both_backends(|ctx| {
        let a = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let b = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let ran = Rc::new(Cell::new(false));
        let r = ran.clone();
        a.async_send_to(b"x".to_vec(), b.local_addr().unwrap(), move |e, n| {
            assert_eq!((e, n), (Error::NONE, 1));
            r.set(true);
        });
        assert!(!ran.get(), "not run inside async_send_to");
        ctx.run();
        assert!(ran.get());
    });
}

#[test]
fn s2_receives_complete_in_the_order_started_with_the_datagrams_in_order() {
    on_both_backends(|ctx| {
        let a = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let b = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let got = Rc::new(RefCell::new(Vec::new()));
        for i in 0..20u8 {
            let g = got.clone();
            b.async_receive_from(vec![0u8; 8], move |e, n, buf, _| {
                assert_eq!((e, n), (Error::NONE, 1));
                g.borrow_mut().push((i, buf[0]));
            });
        }
        for i in 0..20u8 {
            a.async_send_to(vec![i], b.local_addr().unwrap(), |e, _| assert!(e.is_ok()));
        }
        ctx.run();
        assert_eq!(*got.borrow(), (0..20).map(|i| (i, i)).collect::<Vec<_>>());
    });
}

#[test]
fn s4_cancel_and_close_abort_pending_receives_through_the_queue() {
    on_both_backends(|ctx| {
        let s = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let got = Rc::new(RefCell::new(Vec::new()));
        for _ in 0..2 {
            let g = got.clone();
            s.async_receive(vec![0u8; 8], move |e, _, _| g.borrow_mut().push(e));
        }
        s.cancel().unwrap();
        assert!(got.borrow().is_empty(), "through the queue, not inline");
        let g = got.clone();
        s.async_receive(vec![0u8; 8], move |e, _, _| g.borrow_mut().push(e));
        s.close();
        let g = got.clone();
        s.async_receive(vec![0u8; 8], move |e, _, _| g.borrow_mut().push(e));
        ctx.run();
        assert_eq!(
            *got.borrow(),
            vec![Error::OPERATION_ABORTED, Error::OPERATION_ABORTED, Error::OPERATION_ABORTED, Error::BAD_DESCRIPTOR]
        );
    });
}

#[test]
fn s6_a_refused_datagram_gives_connection_refused_on_a_later_receive_and_the_socket_stays_usable() {
    on_both_backends(|ctx| {
        let gone = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let nobody = gone.local_addr().unwrap();
        gone.close();
        let s = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        s.connect(nobody).unwrap();
        let got = Rc::new(RefCell::new(Vec::new()));
        s.async_send(b"anyone?".to_vec(), |e, _| assert!(e.is_ok()));
        let (g, s2) = (got.clone(), s.clone());
        s.async_receive(vec![0u8; 8], move |e, _, _| {
            g.borrow_mut().push(e);
            // Still usable: a send after the refusal goes out.
            let g = g.clone();
            s2.async_send(b"again".to_vec(), move |e, _| g.borrow_mut().push(e));
        });
        ctx.run_for(Duration::from_secs(2));
        assert_eq!(got.borrow()[0], Error::CONNECTION_REFUSED);
        assert_eq!(got.borrow().len(), 2);
    });
}

#[test]
fn s7_s8_zero_length_datagrams_arrive_and_long_ones_are_truncated_to_the_buffer() {
    on_both_backends(|ctx| {
        let a = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let b = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let to = b.local_addr().unwrap();
        a.async_send_to(Vec::<u8>::new(), to, |e, n| assert_eq!((e, n), (Error::NONE, 0)));
        a.async_send_to(b"0123456789".to_vec(), to, |e, n| assert_eq!((e, n), (Error::NONE, 10)));
        let got = Rc::new(RefCell::new(Vec::new()));
        for _ in 0..2 {
            let g = got.clone();
            b.async_receive_from(vec![0u8; 4], move |e, n, buf, from| {
                g.borrow_mut().push((e, n, buf[..n].to_vec(), from));
            });
        }
        ctx.run();
        let from = a.local_addr().unwrap();
        assert_eq!(*got.borrow(), vec![(Error::NONE, 0, vec![], from), (Error::NONE, 4, b"0123".to_vec(), from)]);
    });
}

#[test]
fn a_datagram_too_large_fails_with_message_size_alone() {
    on_both_backends(|ctx| {
        let a = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let b = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let got = Rc::new(RefCell::new(Vec::new()));
        let (g1, g2) = (got.clone(), got.clone());
        a.async_send_to(vec![0u8; 70_000], b.local_addr().unwrap(), move |e, _| g1.borrow_mut().push(e));
        a.async_send_to(vec![1u8; 10], b.local_addr().unwrap(), move |e, _| g2.borrow_mut().push(e));
        ctx.run();
        assert_eq!(*got.borrow(), vec![Error::MESSAGE_SIZE, Error::NONE]);
    });
}

// ------------------------------------------------------------ the simulated network

/// An echo server on `server` and a client on `client` sending `n`
/// numbered datagrams; returns the numbers the client got back, in order.
fn echo_run(ctx: &IoContext, n: u32) -> Vec<u32> {
    let server = UdpSocket::bind(ctx, addr("10.0.0.1:7")).unwrap();
    let client = UdpSocket::bind(ctx, addr("10.0.0.2:0")).unwrap();
    fn serve(s: UdpSocket) {
        let again = s.clone();
        s.async_receive_from(vec![0u8; 64], move |e, n, buf, from| {
            if e == Error::OPERATION_ABORTED {
                return;
            }
            again.async_send_to(buf[..n].to_vec(), from, |_, _| {});
            serve(again);
        });
    }
    serve(server.clone());
    let got = Rc::new(RefCell::new(Vec::new()));
    for i in 0..n {
        client.async_send_to(i.to_le_bytes().to_vec(), addr("10.0.0.1:7"), |e, _| assert!(e.is_ok()));
    }
    fn collect(c: UdpSocket, got: Rc<RefCell<Vec<u32>>>) {
        let again = c.clone();
        c.async_receive(vec![0u8; 64], move |e, n, buf| {
            if e == Error::OPERATION_ABORTED {
                return;
            }
            got.borrow_mut().push(u32::from_le_bytes(buf[..n].try_into().unwrap()));
            collect(again, got);
        });
    }
    collect(client.clone(), got.clone());
    ctx.run_for(Duration::from_secs(10));
    server.close();
    client.close();
    ctx.restart();
    ctx.run();
    got.take()
}

#[test]
fn latency_is_virtual_time_a_round_trip_of_two_links() {
    let ctx =
        IoContext::simulated_with(SimConfig::new(1).latency(Duration::from_millis(40), Duration::from_millis(40)));
    let a = UdpSocket::bind(&ctx, addr("10.0.0.1:1000")).unwrap();
    let b = UdpSocket::bind(&ctx, addr("10.0.0.2:2000")).unwrap();
    let sim = ctx.sim().unwrap();
    let at = Rc::new(Cell::new(Duration::ZERO));
    let (b2, s2) = (b.clone(), sim.clone());
    b.async_receive_from(vec![0u8; 8], move |_, n, buf, from| {
        assert_eq!(from, addr("10.0.0.1:1000"), "the sender's address");
        assert_eq!(s2.now(), Duration::from_millis(40));
        b2.async_send_to(buf[..n].to_vec(), from, |_, _| {});
    });
    let at2 = at.clone();
    a.async_receive(vec![0u8; 8], move |e, n, buf| {
        assert_eq!((e, &buf[..n]), (Error::NONE, &b"ping"[..]));
        at2.set(sim.now());
    });
    a.async_send_to(b"ping".to_vec(), addr("10.0.0.2:2000"), |_, _| {});
    ctx.run();
    assert_eq!(at.get(), Duration::from_millis(80));
}

#[test]
fn a_lossless_network_delivers_everything_in_order_and_loss_drops_a_seeded_share() {
    assert_eq!(echo_run(&IoContext::simulated(3), 500), (0..500).collect::<Vec<_>>());
    let lossy = |seed| echo_run(&IoContext::simulated_with(SimConfig::new(seed).loss(0.2)), 1000);
    let got = lossy(5);
    // Each of the two links loses 20%: about 64% come back.
    assert!((560..720).contains(&got.len()), "{} of 1000 came back", got.len());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "losses do not reorder");
    assert_eq!(got, lossy(5), "the same seed loses the same datagrams");
    assert_ne!(got, lossy(6), "another seed loses others");
}

#[test]
fn duplication_delivers_copies_and_reordering_lets_later_datagrams_overtake() {
    let dup = echo_run(&IoContext::simulated_with(SimConfig::new(1).duplicate(1.0)), 10);
    // Both links duplicate: each number comes back four times.
    assert_eq!(dup.len(), 40);
    for i in 0..10 {
        assert_eq!(dup.iter().filter(|&&x| x == i).count(), 4);
    }
    let config = SimConfig::new(2).latency(Duration::from_millis(1), Duration::from_millis(5)).reorder(0.3);
    let got = echo_run(&IoContext::simulated_with(config), 200);
    assert_eq!(got.len(), 200, "reordering loses nothing");
    assert!(got.windows(2).any(|w| w[0] > w[1]), "some arrive out of order");
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, (0..200).collect::<Vec<_>>());
}

#[test]
fn a_partition_loses_datagrams_both_ways_until_healed() {
    let ctx = IoContext::simulated(4);
    let sim = ctx.sim().unwrap();
    let a = UdpSocket::bind(&ctx, addr("10.0.0.1:1")).unwrap();
    let b = UdpSocket::bind(&ctx, addr("10.0.0.2:2")).unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    b.async_receive(vec![0u8; 8], move |_, n, buf| g.borrow_mut().push(buf[..n].to_vec()));
    sim.partition(ip("10.0.0.1"), ip("10.0.0.2"));
    a.async_send_to(b"lost".to_vec(), addr("10.0.0.2:2"), |e, _| assert!(e.is_ok(), "a partition is silent"));
    ctx.run_for(Duration::from_secs(1));
    assert!(got.borrow().is_empty());
    sim.heal();
    a.async_send_to(b"found".to_vec(), addr("10.0.0.2:2"), |_, _| {});
    ctx.restart();
    ctx.run();
    assert_eq!(*got.borrow(), vec![b"found".to_vec()]);
    // One way only: b still reaches a.
    sim.partition_oneway(ip("10.0.0.1"), ip("10.0.0.2"));
    let g = got.clone();
    a.async_receive(vec![0u8; 8], move |_, n, buf| g.borrow_mut().push(buf[..n].to_vec()));
    b.async_send_to(b"back".to_vec(), addr("10.0.0.1:1"), |_, _| {});
    ctx.restart();
    ctx.run();
    assert_eq!(got.borrow().last().unwrap(), b"back");
}

#[test]
fn a_partition_that_starts_while_a_datagram_flies_loses_it_on_arrival() {
    let ctx =
        IoContext::simulated_with(SimConfig::new(5).latency(Duration::from_millis(50), Duration::from_millis(50)));
    let sim = ctx.sim().unwrap();
    let a = UdpSocket::bind(&ctx, addr("10.0.0.1:1")).unwrap();
    let b = UdpSocket::bind(&ctx, addr("10.0.0.2:2")).unwrap();
    let got = Rc::new(Cell::new(false));
    let g = got.clone();
    b.async_receive(vec![0u8; 8], move |e, _, _| g.set(e.is_ok()))
        .cancel_after(Duration::from_millis(200), CancellationType::ALL);
    a.async_send_to(b"x".to_vec(), addr("10.0.0.2:2"), |_, _| {});
    ctx.run_for(Duration::from_millis(10));
    sim.partition(ip("10.0.0.1"), ip("10.0.0.2"));
    ctx.restart();
    ctx.run();
    assert!(!got.get(), "lost in flight");
}

#[test]
fn a_held_link_delays_traffic_which_flows_in_order_when_released() {
    let ctx = IoContext::simulated(6);
    let sim = ctx.sim().unwrap();
    let a = UdpSocket::bind(&ctx, addr("10.0.0.1:1")).unwrap();
    let b = UdpSocket::bind(&ctx, addr("10.0.0.2:2")).unwrap();
    sim.hold(ip("10.0.0.1"), ip("10.0.0.2"));
    for i in 0..5u8 {
        a.async_send_to(vec![i], addr("10.0.0.2:2"), |_, _| {});
    }
    let got = Rc::new(RefCell::new(Vec::new()));
    for _ in 0..5 {
        let (g, s) = (got.clone(), sim.clone());
        b.async_receive(vec![0u8; 8], move |_, _, buf| g.borrow_mut().push((buf[0], s.now())));
    }
    let _busy = ctx.work_guard();
    ctx.run_for(Duration::from_secs(3));
    assert!(got.borrow().is_empty(), "held");
    sim.release(ip("10.0.0.1"), ip("10.0.0.2"));
    ctx.restart();
    ctx.run_for(Duration::from_secs(1));
    let got = got.borrow();
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert!(got.iter().all(|g| g.1 >= Duration::from_secs(3)), "none before the release");
}

#[test]
fn a_full_receive_buffer_drops_what_does_not_fit() {
    // Each queued datagram costs its bytes and 64 of bookkeeping: 1100
    // bytes hold three of 300.
    let ctx = IoContext::simulated_with(SimConfig::new(7).recv_buffer(1100));
    let a = UdpSocket::bind(&ctx, addr("10.0.0.1:1")).unwrap();
    let b = UdpSocket::bind(&ctx, addr("10.0.0.2:2")).unwrap();
    for _ in 0..10 {
        a.async_send_to(vec![0u8; 300], addr("10.0.0.2:2"), |e, _| assert!(e.is_ok()));
    }
    let _busy = ctx.work_guard();
    ctx.run_for(Duration::from_millis(100));
    assert_eq!(b.available().unwrap(), 300);
    let mut n = 0;
    while b.receive(vec![0u8; 400]).is_ok() {
        n += 1;
    }
    assert_eq!(n, 3, "1100 bytes hold three datagrams of 300");
}

#[test]
fn max_datagram_and_a_link_of_its_own() {
    let ctx = IoContext::simulated_with(SimConfig::new(8).max_datagram(100));
    let sim = ctx.sim().unwrap();
    sim.set_link(ip("10.0.0.1"), ip("10.0.0.2"), Link::new().latency(Duration::from_secs(1), Duration::from_secs(1)));
    let a = UdpSocket::bind(&ctx, addr("10.0.0.1:1")).unwrap();
    let b = UdpSocket::bind(&ctx, addr("10.0.0.2:2")).unwrap();
    let errs = Rc::new(RefCell::new(Vec::new()));
    let (e1, e2) = (errs.clone(), errs.clone());
    a.async_send_to(vec![0u8; 101], addr("10.0.0.2:2"), move |e, _| e1.borrow_mut().push(e));
    a.async_send_to(vec![0u8; 100], addr("10.0.0.2:2"), move |e, _| e2.borrow_mut().push(e));
    let at = Rc::new(Cell::new(Duration::ZERO));
    let (at2, s2) = (at.clone(), sim.clone());
    b.async_receive(vec![0u8; 200], move |_, n, _| {
        assert_eq!(n, 100);
        at2.set(s2.now());
    });
    ctx.run();
    assert_eq!(*errs.borrow(), vec![Error::MESSAGE_SIZE, Error::NONE]);
    assert_eq!(at.get(), Duration::from_secs(1), "this link's latency, not the default");
}

#[test]
fn a_connected_socket_receives_only_from_its_peer() {
    let ctx = IoContext::simulated(9);
    let s = UdpSocket::bind(&ctx, addr("10.0.0.1:1")).unwrap();
    let peer = UdpSocket::bind(&ctx, addr("10.0.0.2:2")).unwrap();
    let other = UdpSocket::bind(&ctx, addr("10.0.0.3:3")).unwrap();
    s.connect(addr("10.0.0.2:2")).unwrap();
    assert_eq!(s.peer_addr().unwrap(), addr("10.0.0.2:2"));
    other.async_send_to(b"stranger".to_vec(), addr("10.0.0.1:1"), |_, _| {});
    peer.async_send_to(b"peer".to_vec(), addr("10.0.0.1:1"), |_, _| {});
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    s.async_receive(vec![0u8; 16], move |_, n, buf| g.borrow_mut().push(buf[..n].to_vec()));
    ctx.run();
    assert_eq!(*got.borrow(), vec![b"peer".to_vec()]);
}

#[test]
fn binding_picks_ports_deterministically_and_refuses_an_address_in_use() {
    let ports = || {
        let ctx = IoContext::simulated(10);
        (0..3).map(|_| UdpSocket::bind(&ctx, addr("10.0.0.1:0")).unwrap().local_addr().unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(ports(), ports());
    let ctx = IoContext::simulated(10);
    let a = UdpSocket::bind(&ctx, addr("0.0.0.0:53")).unwrap();
    let e = UdpSocket::bind(&ctx, addr("10.0.0.9:53")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "port 53 is bound on every host");
    // A wildcard bind receives what is sent to any host.
    let c = UdpSocket::bind(&ctx, addr("10.0.0.2:0")).unwrap();
    c.async_send_to(b"q".to_vec(), addr("10.0.0.77:53"), |_, _| {});
    let got = Rc::new(Cell::new(0));
    let g = got.clone();
    a.async_receive_from(vec![0u8; 8], move |_, n, _, from| {
        assert_eq!(from.ip(), ip("10.0.0.2"));
        g.set(n);
    });
    ctx.run();
    assert_eq!(got.get(), 1);
}

#[test]
fn a_crash_closes_the_host_s_sockets_and_a_restart_binds_again() {
    let ctx = IoContext::simulated(11);
    let sim = ctx.sim().unwrap();
    let server = UdpSocket::bind(&ctx, addr("10.0.0.1:9")).unwrap();
    let survivor = UdpSocket::bind(&ctx, addr("10.0.0.2:9")).unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    server.async_receive(vec![0u8; 8], move |e, _, _| g.borrow_mut().push(e));
    sim.crash(ip("10.0.0.1"));
    ctx.run();
    assert_eq!(*got.borrow(), vec![Error::OPERATION_ABORTED]);
    assert!(!server.is_open() && survivor.is_open());
    let again = UdpSocket::bind(&ctx, addr("10.0.0.1:9")).unwrap();
    assert_eq!(again.local_addr().unwrap(), addr("10.0.0.1:9"));
}

#[test]
fn what_the_simulation_has_no_socket_for_is_unsupported() {
    let ctx = IoContext::simulated(12);
    let s = UdpSocket::bind(&ctx, addr("10.0.0.1:1")).unwrap();
    let unsupported = |r: std::io::Result<()>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::Unsupported);
    assert!(unsupported(s.set_broadcast(true)));
    assert!(unsupported(s.set_gso(true)));
    assert!(unsupported(s.release().map(drop)));
    assert!(s.is_open(), "refusing changed nothing");
    // A synchronous receive with nothing queued cannot wait in a simulation.
    let e = s.receive(vec![0u8; 8]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn a_lossy_exchange_is_deterministic() {
    let config = || {
        SimConfig::new(21)
            .latency(Duration::from_millis(1), Duration::from_millis(30))
            .loss(0.1)
            .duplicate(0.05)
            .reorder(0.1)
    };
    // check_determinism takes a seed: the lossy links are set through `Sim`.
    sim::check_determinism(21, |ctx| {
        let sim = ctx.sim().unwrap();
        let link = Link::new()
            .latency(Duration::from_millis(1), Duration::from_millis(30))
            .loss(0.1)
            .duplicate(0.05)
            .reorder(0.1);
        sim.set_link(ip("10.0.0.1"), ip("10.0.0.2"), link);
        sim.set_link(ip("10.0.0.2"), ip("10.0.0.1"), link);
        echo_run(ctx, 300);
    });
    let hash = |c: SimConfig| {
        let ctx = IoContext::simulated_with(c);
        echo_run(&ctx, 300);
        let s = ctx.sim().unwrap();
        (s.trace_hash(), s.events())
    };
    assert_eq!(hash(config()), hash(config()));
    let other_seed = SimConfig::new(22)
        .latency(Duration::from_millis(1), Duration::from_millis(30))
        .loss(0.1)
        .duplicate(0.05)
        .reorder(0.1);
    assert_ne!(hash(config()).0, hash(other_seed).0, "the same network, another seed: other faults");
}

#[test]
fn next_timeout_counts_a_datagram_in_flight_as_a_deadline() {
    let ctx =
        IoContext::simulated_with(SimConfig::new(13).latency(Duration::from_millis(30), Duration::from_millis(30)));
    let a = UdpSocket::bind(&ctx, addr("10.0.0.1:1")).unwrap();
    let b = UdpSocket::bind(&ctx, addr("10.0.0.2:2")).unwrap();
    let got = Rc::new(Cell::new(false));
    let g = got.clone();
    b.async_receive(vec![0u8; 8], move |e, _, _| g.set(e.is_ok()));
    a.async_send_to(b"x".to_vec(), addr("10.0.0.2:2"), |_, _| {});
    ctx.poll(); // the send's handler; the datagram is on its way
    assert_eq!(ctx.next_timeout(), Some(Duration::from_millis(30)));
    // A host loop that sleeps that long (virtually: run_for) and polls finds it.
    ctx.restart();
    ctx.run_for(Duration::from_millis(30));
    ctx.poll();
    assert!(got.get());
    assert_eq!(ctx.sim().unwrap().now(), Duration::from_millis(30));
}

// ------------------------------------------------------------ readiness that already holds
// (found by review: the simulated wait once jumped time before reporting it)

#[test]
fn a_write_wait_completes_at_once_not_at_the_next_deadline() {
    let ctx = IoContext::simulated(1);
    let sim = ctx.sim().unwrap();
    let s = UdpSocket::bind(&ctx, addr("10.0.0.1:1")).unwrap();
    let t = ioctx::SteadyTimer::new(&ctx);
    t.expires_after(Duration::from_secs(10));
    t.async_wait(|_| {});
    let at = Rc::new(Cell::new(None));
    let (a, s2) = (at.clone(), sim.clone());
    s.async_wait(ioctx::net::WaitType::Write, move |e| a.set(Some((e, s2.now()))));
    ctx.run();
    assert_eq!(at.get(), Some((Error::NONE, Duration::ZERO)));
}

#[test]
fn a_read_wait_on_a_datagram_already_queued_completes_at_once() {
    let ctx = IoContext::simulated(1);
    let sim = ctx.sim().unwrap();
    let a = UdpSocket::bind(&ctx, addr("10.0.0.1:1")).unwrap();
    let b = UdpSocket::bind(&ctx, addr("10.0.0.2:2")).unwrap();
    a.async_send_to(b"x".to_vec(), addr("10.0.0.2:2"), |_, _| {});
    {
        let _busy = ctx.work_guard();
        ctx.run_for(Duration::from_millis(5)); // delivered at 1 ms, queued on b
    }
    ctx.restart();
    assert_eq!(b.available().unwrap(), 1);
    let at = Rc::new(Cell::new(None));
    let (g, s2) = (at.clone(), sim.clone());
    b.async_wait(ioctx::net::WaitType::Read, move |e| g.set(Some((e, s2.now()))));
    let t0 = sim.now();
    ctx.run(); // nothing else scheduled: this once panicked ("would wait for ever")
    assert_eq!(at.get(), Some((Error::NONE, t0)));
}

#[test]
fn a_datagram_delivered_during_another_socket_s_call_is_reported_at_once() {
    let ctx = IoContext::simulated_with(SimConfig::new(1).latency(Duration::ZERO, Duration::ZERO));
    let sim = ctx.sim().unwrap();
    let a = UdpSocket::bind(&ctx, addr("10.0.0.1:1")).unwrap();
    let b = UdpSocket::bind(&ctx, addr("10.0.0.2:2")).unwrap();
    let c = UdpSocket::bind(&ctx, addr("10.0.0.3:3")).unwrap();
    let at = Rc::new(Cell::new(None));
    let (g, s2) = (at.clone(), sim.clone());
    a.async_receive(vec![0u8; 8], move |e, _, _| g.set(Some((e, s2.now()))));
    let t = ioctx::SteadyTimer::new(&ctx);
    t.expires_after(Duration::from_secs(10));
    t.async_wait(|_| {});
    let (b2, c2) = (b.clone(), c.clone());
    ctx.post(move || {
        b2.send_to(&b"x"[..], addr("10.0.0.1:1")).unwrap();
        let _ = c2.available(); // a receive-side call on another socket delivers what is due
    });
    ctx.run();
    assert_eq!(at.get(), Some((Error::NONE, Duration::ZERO)));
}

#[test]
fn the_reactor_style_wait_then_read_gets_every_datagram_on_both_backends() {
    on_both_backends(|ctx| {
        let a = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let b = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        b.set_nonblocking(true).unwrap();
        let got = Rc::new(Cell::new(0));
        fn wait(b: UdpSocket, got: Rc<Cell<usize>>) {
            let again = b.clone();
            b.async_wait(ioctx::net::WaitType::Read, move |e| {
                if e.is_err() {
                    return;
                }
                if again.receive(vec![0u8; 8]).is_ok() {
                    got.set(got.get() + 1);
                }
                if got.get() < 2 {
                    wait(again, got);
                }
            });
        }
        wait(b.clone(), got.clone());
        a.send_to(&b"1"[..], b.local_addr().unwrap()).unwrap();
        a.send_to(&b"2"[..], b.local_addr().unwrap()).unwrap();
        ctx.run();
        assert_eq!(got.get(), 2);
    });
}

// ------------------------------------------------------------ fidelity to Linux
// (found by review)

#[test]
fn edge_cases_of_sending_fail_as_on_linux_on_both_backends() {
    on_both_backends(|ctx| {
        let s = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let got = Rc::new(RefCell::new(Vec::new()));
        let (g1, g2) = (got.clone(), got.clone());
        s.async_send_to(b"x".to_vec(), addr("127.0.0.1:0"), move |e, _| g1.borrow_mut().push(e));
        let to = s.local_addr().unwrap();
        s.async_send_to_with_flags(b"x".to_vec(), to, ioctx::net::MessageFlags::OUT_OF_BAND, move |e, _| {
            g2.borrow_mut().push(e)
        });
        ctx.run();
        assert_eq!(
            *got.borrow(),
            vec![Error::from_raw_os_error(libc::EINVAL), Error::from_raw_os_error(libc::EOPNOTSUPP)]
        );
    });
}

#[test]
fn a_datagram_to_a_port_connected_elsewhere_is_refused_on_both_backends() {
    on_both_backends(|ctx| {
        let busy = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let other = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        busy.connect(other.local_addr().unwrap()).unwrap();
        let s = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        s.connect(busy.local_addr().unwrap()).unwrap();
        s.async_send(b"hello?".to_vec(), |e, _| assert!(e.is_ok()));
        let got = Rc::new(Cell::new(Error::NONE));
        let g = got.clone();
        s.async_receive(vec![0u8; 8], move |e, _, _| g.set(e))
            .cancel_after(Duration::from_secs(1), CancellationType::ALL);
        ctx.run();
        assert_eq!(got.get(), Error::CONNECTION_REFUSED);
    });
}

#[test]
fn connect_keeps_the_datagrams_already_queued_on_both_backends() {
    on_both_backends(|ctx| {
        let s = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let a = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        let b = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        a.send_to(&b"x"[..], s.local_addr().unwrap()).unwrap();
        {
            let _busy = ctx.work_guard();
            ctx.run_for(Duration::from_millis(20));
        }
        ctx.restart();
        s.connect(b.local_addr().unwrap()).unwrap();
        b.send_to(&b"y"[..], s.local_addr().unwrap()).unwrap();
        a.send_to(&b"z"[..], s.local_addr().unwrap()).unwrap(); // filtered now
        let got = Rc::new(RefCell::new(Vec::new()));
        for _ in 0..2 {
            let g = got.clone();
            s.async_receive(vec![0u8; 8], move |_, n, buf| g.borrow_mut().extend_from_slice(&buf[..n]));
        }
        ctx.run();
        assert_eq!(*got.borrow(), b"xy".to_vec());
    });
}

#[test]
fn a_server_bound_to_every_host_answers_from_the_address_it_was_reached_at() {
    let ctx = IoContext::simulated(15);
    let sim = ctx.sim().unwrap();
    let server = UdpSocket::bind(&ctx, addr("0.0.0.0:7")).unwrap();
    let client = UdpSocket::bind(&ctx, addr("10.0.0.2:0")).unwrap();
    client.connect(addr("10.0.0.1:7")).unwrap();
    let s2 = server.clone();
    server.async_receive_from(vec![0u8; 8], move |_, n, buf, from| {
        s2.async_send_to(buf[..n].to_vec(), from, |_, _| {});
    });
    let got = Rc::new(Cell::new(0));
    let g = got.clone();
    client.async_send(b"ping".to_vec(), |_, _| {});
    client.async_receive(vec![0u8; 8], move |e, n, _| {
        assert!(e.is_ok());
        g.set(n);
    });
    ctx.run();
    assert_eq!(got.get(), 4, "the connected client accepts the reply: it comes from 10.0.0.1:7");
    // And partitions apply to it: cut, the next exchange is lost.
    sim.partition(ip("10.0.0.1"), ip("10.0.0.2"));
    let s2 = server.clone();
    server.async_receive_from(vec![0u8; 8], move |e, n, buf, from| {
        if e.is_ok() {
            s2.async_send_to(buf[..n].to_vec(), from, |_, _| {});
        }
    });
    let lost = Rc::new(Cell::new(Error::NONE));
    let l = lost.clone();
    client.async_send(b"ping".to_vec(), |_, _| {});
    client
        .async_receive(vec![0u8; 8], move |e, _, _| l.set(e))
        .cancel_after(Duration::from_secs(1), CancellationType::ALL);
    ctx.restart();
    ctx.run_for(Duration::from_secs(2));
    assert_eq!(lost.get(), Error::OPERATION_ABORTED);
    server.close();
}

#[test]
fn a_crashed_host_receives_nothing_even_on_a_socket_bound_to_every_host_until_it_restarts() {
    let ctx = IoContext::simulated(16);
    let sim = ctx.sim().unwrap();
    let wild = UdpSocket::bind(&ctx, addr("0.0.0.0:9")).unwrap();
    let client = UdpSocket::bind(&ctx, addr("10.0.0.2:0")).unwrap();
    sim.crash(ip("10.0.0.1"));
    client.send_to(&b"lost"[..], addr("10.0.0.1:9")).unwrap();
    client.send_to(&b"kept"[..], addr("10.0.0.3:9")).unwrap();
    let _busy = ctx.work_guard();
    ctx.run_for(Duration::from_millis(10));
    let mut buf = [0u8; 8];
    let n = wild.receive(&mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"kept");
    assert!(wild.receive(&mut buf[..]).is_err(), "nothing for the crashed host");
    // A restart: a socket bound on the IP brings the host back.
    let restarted = UdpSocket::bind(&ctx, addr("10.0.0.1:10")).unwrap();
    client.send_to(&b"back"[..], addr("10.0.0.1:9")).unwrap();
    ctx.restart();
    ctx.run_for(Duration::from_millis(10));
    let n = wild.receive(&mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"back");
    drop(restarted);
}

#[test]
fn ipv6_flow_labels_and_empty_datagrams_and_extreme_latencies_are_handled() {
    // A flow label is not part of the address.
    let ctx = IoContext::simulated_with(SimConfig::new(17).recv_buffer(65 + 64 * 9));
    let a = UdpSocket::bind(&ctx, addr("[::1]:0")).unwrap();
    let b = UdpSocket::bind(&ctx, addr("[::1]:5000")).unwrap();
    let to = SocketAddr::V6(std::net::SocketAddrV6::new("::1".parse().unwrap(), 5000, 7, 0));
    a.send_to(&b"x"[..], to).unwrap();
    // Empty datagrams fill a receive buffer too (64 bytes of bookkeeping
    // each): the one-byte datagram and nine empty ones fit, no more.
    for _ in 0..100 {
        a.send_to(&b""[..], addr("[::1]:5000")).unwrap();
    }
    let _busy = ctx.work_guard();
    ctx.run_for(Duration::from_millis(10));
    let mut buf = [0u8; 8];
    let (len, from) = b.receive_from(&mut buf[..]).unwrap();
    assert_eq!((len, buf[0], from), (1, b'x', a.local_addr().unwrap()), "the datagram sent with a flow label");
    let mut n = 1;
    while b.receive(vec![0u8; 8]).is_ok() {
        n += 1;
    }
    assert_eq!(n, 10);
    // The widest latency range does not overflow.
    let ctx = IoContext::simulated_with(SimConfig::new(18).latency(Duration::ZERO, Duration::MAX).reorder(1.0));
    let a = UdpSocket::bind(&ctx, addr("10.0.0.1:1")).unwrap();
    a.send_to(&b"x"[..], addr("10.0.0.2:2")).unwrap();
    // Not a UDP domain: refused as socket(2) refuses it.
    let e = UdpSocket::open(&ctx, socket2::Domain::UNIX).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPROTONOSUPPORT));
}

#[test]
fn a_server_bound_to_every_host_answers_each_client_from_where_that_client_reached_it() {
    // Two requests queued before the server reads either: each reply must
    // leave from the address its own request was sent to.
    let ctx = IoContext::simulated(19);
    let server = UdpSocket::bind(&ctx, addr("0.0.0.0:7")).unwrap();
    let c1 = UdpSocket::bind(&ctx, addr("10.0.0.2:0")).unwrap();
    let c2 = UdpSocket::bind(&ctx, addr("10.0.0.3:0")).unwrap();
    c1.connect(addr("10.0.0.1:7")).unwrap();
    c2.connect(addr("10.0.0.9:7")).unwrap();
    c1.send(&b"one"[..]).unwrap();
    c2.send(&b"two"[..]).unwrap();
    {
        let _busy = ctx.work_guard();
        ctx.run_for(Duration::from_millis(10)); // both queued at the server
    }
    let mut buf = [0u8; 8];
    for _ in 0..2 {
        let (n, from) = server.receive_from(&mut buf[..]).unwrap();
        server.send_to(&buf[..n], from).unwrap();
    }
    let got = Rc::new(RefCell::new(Vec::new()));
    for c in [&c1, &c2] {
        let g = got.clone();
        c.async_receive(vec![0u8; 8], move |e, n, buf| g.borrow_mut().push((e, buf[..n].to_vec())))
            .cancel_after(Duration::from_secs(1), CancellationType::ALL);
    }
    ctx.restart();
    ctx.run();
    // Each connected client accepts only a reply from the address it sent to.
    assert_eq!(*got.borrow(), vec![(Error::NONE, b"one".to_vec()), (Error::NONE, b"two".to_vec())]);
    server.close();
}

#[test]
fn a_socket_bound_to_every_host_sends_nothing_from_a_crashed_host() {
    let ctx = IoContext::simulated(20);
    let sim = ctx.sim().unwrap();
    let wild = UdpSocket::bind(&ctx, addr("0.0.0.0:9")).unwrap();
    let client = UdpSocket::bind(&ctx, addr("10.0.0.2:0")).unwrap();
    client.connect(addr("10.0.0.1:9")).unwrap();
    client.send(&b"hi"[..]).unwrap();
    let _busy = ctx.work_guard();
    ctx.run_for(Duration::from_millis(10));
    let mut buf = [0u8; 8];
    let (_, from) = wild.receive_from(&mut buf[..]).unwrap(); // reached at 10.0.0.1
    sim.crash(ip("10.0.0.1"));
    wild.send_to(&b"ghost"[..], from).unwrap();
    ctx.restart();
    ctx.run_for(Duration::from_millis(10));
    assert!(client.receive(&mut buf[..]).is_err(), "a crashed host answered");
}

#[test]
fn a_socket_connected_to_port_zero_may_send_on_both_backends() {
    // Linux accepts connect(..:0) on UDP, and sends to it; only an explicit
    // destination of port 0 is refused.
    on_both_backends(|ctx| {
        let s = UdpSocket::bind(ctx, addr("127.0.0.1:0")).unwrap();
        s.connect(addr("127.0.0.1:0")).unwrap();
        let got = Rc::new(Cell::new(None));
        let g = got.clone();
        s.async_send(b"x".to_vec(), move |e, n| g.set(Some((e, n))));
        ctx.run();
        assert_eq!(got.get(), Some((Error::NONE, 1)));
    });
}

#[test]
fn next_timeout_is_zero_while_a_socket_has_readiness_to_report() {
    // An embedding host sleeps for next_timeout(): a write wait, ready at
    // once, must not be left sleeping with no deadline (None).
    let ctx = IoContext::simulated(21);
    let s = UdpSocket::bind(&ctx, addr("10.0.0.1:1")).unwrap();
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    s.async_wait(ioctx::net::WaitType::Write, move |e| d.set(e.is_ok()));
    assert_eq!(ctx.next_timeout(), Some(Duration::ZERO));
    ctx.poll();
    assert!(done.get());
    assert_eq!(ctx.next_timeout(), None, "nothing left to report");
}
