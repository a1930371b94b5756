//! Fixtures shared by the socket tests.
#![allow(dead_code)] // each test binary uses its own subset

use ioctx::IoContext;
use ioctx::net::UdpSocket;
use std::net::SocketAddr;
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
