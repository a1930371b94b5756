//! One datagram with its metadata: `recvmsg` with control messages
//! (destination address and interface, TOS/traffic class, TTL/hop limit,
//! receive timestamp, truncation) and `sendmsg` with the ones a sender sets
//! (source address, TOS/traffic class, segment size). The switches that
//! make the kernel attach them are plain integer socket options.
//!
//! The types and the options are here; the calls are in `msg_linux.rs`
//! (control messages, `recvmmsg`, the error queue) or, elsewhere,
//! `msg_portable.rs` (the sender and truncation only: the other control
//! messages differ between systems and are not read there yet).

use super::cvt;
use socket2::Socket;
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::SystemTime;

#[cfg(target_os = "linux")]
#[path = "msg_linux.rs"]
mod imp;
#[cfg(not(target_os = "linux"))]
#[path = "msg_portable.rs"]
mod imp;
pub(crate) use imp::{dont_fragment, recv_err, recv_msg, recv_msg_many, send_msg, switch};

/// A switch's socket options: (level, name) for IPv4, and for IPv6.
pub(crate) type Switch = ((i32, i32), (i32, i32));
/// An integer socket option to set: (level, name, value).
pub(crate) type IntOption = (i32, i32, i32);

/// What `recv_msg` learned of one datagram, beside its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MsgInfo {
    /// Bytes placed in the buffers.
    pub(crate) len: usize,
    pub(crate) from: Option<SocketAddr>,
    /// The address the datagram was sent to, and the interface it came in
    /// on (`IP_PKTINFO`, `IPV6_PKTINFO`).
    pub(crate) local: Option<IpAddr>,
    pub(crate) ifindex: Option<u32>,
    /// The TOS byte or IPv6 traffic class (its low two bits are ECN).
    pub(crate) tos: Option<u8>,
    /// TTL or hop limit.
    pub(crate) ttl: Option<u8>,
    pub(crate) timestamp: Option<SystemTime>,
    /// The datagram was longer than the buffers (`MSG_TRUNC`).
    pub(crate) truncated: bool,
    /// The stride of coalesced datagrams (`UDP_GRO`).
    pub(crate) segment_size: Option<usize>,
}

/// What a sender sets on one datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SendInfo {
    /// The source address (`IP_PKTINFO`/`IPV6_PKTINFO`), for a socket bound
    /// to every address.
    pub(crate) from_ip: Option<IpAddr>,
    /// The TOS byte or traffic class (ECN in its low two bits).
    pub(crate) tos: Option<u8>,
    /// Segment size for UDP segmentation offload (`UDP_SEGMENT`).
    pub(crate) segment: Option<u16>,
}

/// Sets an integer socket option (the metadata switches).
pub(crate) fn set_int_option(sock: &Socket, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the value pointer and length describe one c_int on the stack.
    cvt(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Reads an integer socket option (a switch's state).
pub(crate) fn int_option(sock: &Socket, level: i32, name: i32) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the value pointer and length describe one c_int on the stack,
    // which the kernel writes (at most `len` bytes).
    cvt(unsafe { libc::getsockopt(sock.as_raw_fd(), level, name, (&mut value as *mut i32).cast(), &mut len) })?;
    Ok(value)
}

/// An error the kernel queued for a socket with `IP_RECVERR`/`IPV6_RECVERR`
/// on: an ICMP report (or a local one) about a datagram it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ErrInfo {
    /// Where the datagram that failed was going.
    pub(crate) dest: Option<SocketAddr>,
    /// Who reported it (the router or host that sent the ICMP message).
    pub(crate) reporter: Option<IpAddr>,
    pub(crate) errno: i32,
    /// The path MTU, with `EMSGSIZE`.
    pub(crate) mtu: Option<u32>,
}
