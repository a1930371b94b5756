//! The seed example, from Asio's `basic_datagram_socket::async_send` page:
//!
//! ```text
//! socket.async_send(boost::asio::buffer(data, size), handler);
//! ```
//!
//! A connected UDP socket sends one buffer, then two buffer sequences: a
//! tuple `(header, body)` and a `Vec<Rc<[u8]>>`. Each sequence leaves as ONE
//! datagram (scatter/gather `sendmsg`), which a receiver in the same loop
//! shows. As the Asio page says, the handler is never run from inside
//! `async_send`, even when the send completed at once: it runs from `run()`.
//!
//! ```text
//! cargo run --example async_send
//! ```

use ioctx::net::UdpSocket;
use ioctx::{Error, IoContext};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;

/// Shows bytes as text where they are printable.
fn show(bytes: &[u8]) -> String {
    format!("{:?} ({} bytes)", String::from_utf8_lossy(bytes), bytes.len())
}

/// Receives `left` datagrams, one after another, recording each.
fn receive(sock: UdpSocket, left: usize, got: Rc<RefCell<Vec<Vec<u8>>>>) {
    if left == 0 {
        return;
    }
    let s = sock.clone();
    sock.async_receive_from(vec![0u8; 1500], move |err, n, buf, from| {
        println!("  [receiver handler] ({err:?}, {n}) from {from}: {}", show(&buf[..n]));
        if err.is_ok() {
            got.borrow_mut().push(buf[..n].to_vec());
            receive(s, left - 1, got);
        }
    });
}

fn main() -> ExitCode {
    // The library logs through `log`: RUST_LOG=ioctx=debug shows its state
    // changes, ioctx=trace every operation. Unset, only warnings, so that
    // the program's own output stands alone.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("FAILED: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let ctx = IoContext::new().map_err(|e| e.to_string())?;
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let receiver = UdpSocket::bind(&ctx, local).map_err(|e| e.to_string())?;
    let socket = UdpSocket::bind(&ctx, local).map_err(|e| e.to_string())?;
    let to = receiver.local_addr().map_err(|e| e.to_string())?;
    socket.connect(to).map_err(|e| e.to_string())?;
    println!("socket {} connected to receiver {to}", socket.local_addr().unwrap());

    let got = Rc::new(RefCell::new(Vec::new()));
    receive(receiver.clone(), 3, got.clone());

    // Set just before run(): a handler that sees it false would have been run
    // from inside async_send.
    let running = Rc::new(Cell::new(false));
    let results = Rc::new(RefCell::new(Vec::<(Error, usize)>::new()));
    let handler = |what: &'static str| {
        let running = running.clone();
        let results = results.clone();
        move |err: Error, n: usize| {
            println!("  [send handler] {what}: ({err:?}, {n}), called from run(): {}", running.get());
            results.borrow_mut().push((err, n));
        }
    };

    // 1. One buffer: the Rust form of `socket.async_send(buffer(data, size), handler)`.
    let data = b"one buffer".to_vec();
    println!("async_send(Vec<u8>):          {}", show(&data));
    socket.async_send(data, handler("Vec<u8>"));
    println!("  async_send returned; handlers run so far: {}", results.borrow().len());

    // 2. A tuple of buffers, sent as one datagram.
    let header = b"HDR1 len=5 ".to_vec();
    let body = String::from("hello");
    println!("async_send((Vec<u8>, String)): {} + {}", show(&header), show(body.as_bytes()));
    socket.async_send((header, body), handler("(Vec<u8>, String)"));
    println!("  async_send returned; handlers run so far: {}", results.borrow().len());

    // 3. A Vec of shared chunks. The send drops its buffers before its handler
    //    runs, so the handler finds our clones unique again (Rc::get_mut works)
    //    and could reuse them without allocating.
    let chunks: Vec<Rc<[u8]>> = vec![Rc::from(&b"alpha,"[..]), Rc::from(&b"beta,"[..]), Rc::from(&b"gamma"[..])];
    let mut kept = chunks.clone();
    println!("async_send(Vec<Rc<[u8]>>):     {}", chunks.iter().map(|c| show(c)).collect::<Vec<_>>().join(" + "));
    let unique = Rc::new(Cell::new(false));
    let (u, h) = (unique.clone(), handler("Vec<Rc<[u8]>>"));
    socket.async_send(chunks, move |err, n| {
        h(err, n);
        u.set(kept.iter_mut().all(|c| Rc::get_mut(c).is_some()));
        println!("  [send handler] our Rc<[u8]> clones are unique again: {}", u.get());
    });
    println!("  async_send returned; handlers run so far: {}", results.borrow().len());

    // The sends were tried at once (nothing was queued on the socket), so the
    // first datagram is usually waiting at the receiver already.
    println!(
        "before run(): {} bytes waiting at the receiver, {} send handlers run",
        receiver.available().unwrap_or(0),
        results.borrow().len()
    );

    println!("run():");
    running.set(true);
    let n = ctx.run();
    running.set(false);
    println!("run() returned after {n} handlers: no work left");

    // Check what happened.
    let results = results.borrow();
    let expected_sends = [(Error::NONE, 10), (Error::NONE, 16), (Error::NONE, 16)];
    if results.as_slice() != expected_sends {
        return Err(format!("send results {results:?}, expected {expected_sends:?}"));
    }
    let got = got.borrow();
    let expected: [&[u8]; 3] = [b"one buffer", b"HDR1 len=5 hello", b"alpha,beta,gamma"];
    if got.len() != expected.len() || got.iter().zip(expected).any(|(g, e)| g != e) {
        return Err(format!("received {got:?}"));
    }
    if !unique.get() {
        return Err("the send still held our Rc<[u8]> chunks when its handler ran".into());
    }
    println!("ok: 3 sends, 3 datagrams, each sequence arrived as one datagram");
    Ok(())
}
