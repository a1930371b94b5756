//! # ioctx
//!
//! A single-threaded, callback-driven I/O event loop in the spirit of
//! Boost.Asio's `io_context`, with no async/await. An [`IoContext`] owns
//! sockets, timers and a queue of ready handlers; [`IoContext::run`] drives
//! them. An operation such as `sock.async_send(buffers, |err, n| ...)` starts
//! at once, and its handler is always run later by the loop, never from inside
//! the call that started it, even when the work finished immediately.
//!
//! ```
//! use ioctx::{IoContext, Error, net::UdpSocket};
//! use std::cell::Cell;
//! use std::rc::Rc;
//!
//! let ctx = IoContext::new()?;
//! let server = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
//! let client = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
//! client.connect(server.local_addr()?)?;
//!
//! // Echo one datagram back to whoever sent it.
//! let echo = server.clone();
//! server.async_receive_from(vec![0u8; 1500], move |err, n, mut buf, from| {
//!     assert_eq!(err, Error::NONE);
//!     buf.truncate(n);
//!     echo.async_send_to(buf, from, |err, _| assert!(err.is_ok()));
//! });
//!
//! let got = Rc::new(Cell::new(0));
//! let g = got.clone();
//! // A sequence of buffers leaves as ONE datagram.
//! client.async_send((b"hello, ".to_vec(), "world"), |err, n| {
//!     assert_eq!((err, n), (Error::NONE, 12));
//! });
//! client.async_receive(vec![0u8; 64], move |err, n, buf| {
//!     assert_eq!(&buf[..n], b"hello, world");
//!     g.set(n);
//! });
//!
//! ctx.run(); // returns when no work is left
//! assert_eq!(got.get(), 12);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! ## Asio names and ours
//!
//! | Boost.Asio | ioctx |
//! |---|---|
//! | `io_context` | [`IoContext`] |
//! | `io_context::executor_type`, `any_io_executor` | [`Executor`] (weak: does not keep the context alive) |
//! | `io_context::run`, `run_one`, `run_for`, `run_until`, `run_one_for`, `run_one_until`, `poll`, `poll_one` | the same names on [`IoContext`] |
//! | `io_context::stop`, `stopped`, `restart` | [`IoContext::stop`], [`IoContext::stopped`], [`IoContext::restart`] |
//! | `asio::post`, `asio::dispatch`, `asio::defer` | [`Executor::post`], [`Executor::dispatch`], [`Executor::defer`] |
//! | `make_work_guard`, `executor_work_guard` | [`Executor::work_guard`], [`WorkGuard`] |
//! | `boost::system::error_code` | [`Error`] (`Error::NONE` is success; `err.into_result(n)?` to use `?`) |
//! | `asio::error::operation_aborted`, `bad_descriptor`, `eof`, `message_size`, `connection_refused` | `Error::OPERATION_ABORTED`, `BAD_DESCRIPTOR`, `EOF`, `MESSAGE_SIZE`, `CONNECTION_REFUSED` |
//! | `asio::buffer(...)`, `ConstBufferSequence`, `MutableBufferSequence` | owned buffers: [`ConstBufferSequence`], [`MutableBufferSequence`] (`Vec<u8>`, `Rc<[u8]>`, tuples, arrays, `Vec` of buffers) |
//! | `ip::udp::socket` | [`net::UdpSocket`] |
//! | `socket.async_send`, `async_send_to`, `async_receive`, `async_receive_from`, `async_wait` | the same names; each returns an [`Operation`] |
//! | `socket_base::message_flags` (`message_peek`, ...) | [`net::MessageFlags`] (`PEEK`, `OUT_OF_BAND`, `DO_NOT_ROUTE`) |
//! | `socket_base::wait_type` | [`net::WaitType`] |
//! | `socket.cancel()`, `close()`, `release()`, `available()` | the same names |
//! | `socket.open()`, `socket.bind(ep)`, `set_option(reuse_port)` | [`net::UdpSocket::open`], [`net::UdpSocket::bind_to`] (`bind` is the constructor), [`net::UdpSocket::set_reuse_port`] |
//! | `cancellation_signal` / `cancellation_slot`, `cancellation_type` | [`Operation::cancel`], [`CancellationType`] |
//! | `asio::cancel_after` | [`Operation::cancel_after`] |
//! | `asio::post(io_context, f)` from another thread | [`IoContext::remote`], [`Remote::post`] |
//! | (embedding; Asio has none) | `IoContext` is `AsRawFd`/`AsFd`; [`IoContext::next_timeout`] then [`IoContext::poll`] |
//! | `steady_timer` | [`SteadyTimer`] |
//! | `signal_set` (`add`, `remove`, `clear`, `cancel`, `async_wait`) | [`SignalSet`], the same names; signals by name (`SignalSet::SIGINT`, ...) |
//! | (loop statistics; Asio has none) | [`IoContext::metrics`] → [`Metrics`]; [`IoContext::set_wait_timing`], [`IoContext::set_handler_timing`] |
//! | (fairness knobs; Asio has none) | [`IoContext::set_handlers_per_pass`], [`IoContext::set_operations_per_event`] |
//! | `async_immediate` completion | every immediate completion is posted |
//! | `ip::tcp::acceptor`, `ip::tcp::socket` | [`net::TcpListener`], [`net::TcpStream`] |
//! | `local::stream_protocol::acceptor`, `::socket` | [`net::UnixListener`], [`net::UnixStream`] |
//! | `local::datagram_protocol::socket` | [`net::UnixDatagram`] |
//! | `acceptor.async_accept`, `socket.async_connect`, `async_read_some`, `async_write_some` | the same names; `async_accept`'s handler gets the new stream |
//! | `asio::async_read`, `async_write`, `async_read_until` | [`net::async_read`], [`net::async_write`], [`net::async_read_until`] |
//! | `transfer_all()`, `transfer_at_least(n)`, `transfer_exactly(n)` | [`net::transfer_all`], [`net::transfer_at_least`], [`net::transfer_exactly`] |
//! | `asio::error::not_found` (read_until over its limit) | `Error::NOT_FOUND` |
//! | (no Asio equivalent) | [`net::UdpSocket::set_gso`]: sends of one pass coalesced with UDP segmentation offload, each completing on its own |
//! | (no Asio equivalent) | [`net::UdpSocket::set_send_coalescing`]: a pass's sends after its first leave together in one `sendmmsg`, each completing on its own |
//! | (no Asio equivalent) | [`net::UdpSocket::async_receive_msg`] / [`net::UdpSocket::async_send_msg`]: per-datagram metadata ([`net::RecvMeta`]: pktinfo, ECN, TTL, timestamp, truncation, GRO stride; [`net::SendMeta`]: source address, ECN, segment size), with the `set_recv_*` switches |
//! | (no Asio equivalent) | [`net::UdpSocket::set_recv_errors`], [`net::UdpSocket::async_receive_error`]: ICMP reports as [`net::IcmpError`], which never end a receive |
//! | (simulation; Asio has none) | [`IoContext::simulated`]: the same code on virtual time and an in-memory UDP and TCP network, one seed one run ([`sim`]: [`Sim`], [`SimConfig`], [`sim::Link`], [`sim::check_determinism`]); the context's clock is [`Executor::now`] |
//!
//! ## Rules every operation follows
//!
//! - A handler is never run from inside the call that started its operation.
//! - Sends drop their buffers before the handler runs, so a handler holding
//!   a clone of an `Rc<[u8]>` finds it unique again (`Rc::get_mut` succeeds).
//! - Handlers run in FIFO order; timers with equal deadlines fire in the
//!   order they were set; no hidden threads and no randomness in the loop.
//! - A handler that panics unwinds out of `run()`; the context stays
//!   consistent and `run()` can be called again.
//! - Dropping the context drops every pending handler without running it.
#![deny(missing_docs)]

mod backend;
mod buffer;
mod cancel;
mod context;
mod error;
mod metrics;
pub mod net;
mod op;
mod queue;
mod reactor;
mod remote;
mod signal;
pub mod sim;
mod steady_timer;
mod sys;
mod timer;

pub use buffer::{ConstBuffer, ConstBufferSequence, MAX_BUFFERS, MutableBuffer, MutableBufferSequence};
pub use cancel::{CancellationType, Operation};
pub use context::{Executor, IoContext, WorkGuard};
pub use error::Error;
pub use metrics::Metrics;
pub use remote::{ContextGone, Remote};
pub use signal::SignalSet;
pub use sim::{Sim, SimConfig};
pub use steady_timer::SteadyTimer;

/// The `socket2` crate, as this crate uses it: [`net::UdpSocket::open`] takes
/// a [`socket2::Domain`] and every socket's `with_socket2` hands out a
/// [`socket2::SockRef`], so a user needs no dependency of their own (and no
/// second version of it) to call them.
pub use socket2;
