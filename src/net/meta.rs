//! What a datagram carries beside its bytes: [`RecvMeta`] for a receive,
//! [`SendMeta`] for a send, and the [`Ecn`] codepoint both use.

use crate::error::Error;
use crate::sys::msg::{ErrInfo, MsgInfo, SendInfo};
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

/// An Explicit Congestion Notification codepoint (RFC 3168): the low two
/// bits of the IPv4 TOS byte or the IPv6 traffic class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ecn {
    /// `00`: the sender does not do ECN.
    NotEct,
    /// `01`: ECN-capable transport, ECT(1).
    Ect1,
    /// `10`: ECN-capable transport, ECT(0).
    Ect0,
    /// `11`: congestion experienced.
    Ce,
}

impl Ecn {
    /// The codepoint in the low two bits of a TOS byte or traffic class.
    pub fn from_bits(tos: u8) -> Ecn {
        match tos & 0b11 {
            0b00 => Ecn::NotEct,
            0b01 => Ecn::Ect1,
            0b10 => Ecn::Ect0,
            _ => Ecn::Ce,
        }
    }

    /// The two bits, as they go into a TOS byte or traffic class.
    pub fn bits(self) -> u8 {
        match self {
            Ecn::NotEct => 0b00,
            Ecn::Ect1 => 0b01,
            Ecn::Ect0 => 0b10,
            Ecn::Ce => 0b11,
        }
    }
}

/// What [`UdpSocket::async_receive_msg`](super::UdpSocket::async_receive_msg)
/// learned of one datagram. A field the socket did not ask for (with the
/// `set_recv_*` switches) is `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecvMeta {
    /// Bytes placed in the buffers (at most their length).
    pub len: usize,
    /// The sender.
    pub from: SocketAddr,
    /// The local address the datagram reached (`set_recv_pktinfo`): what a
    /// socket bound to every address answers from (for a unicast datagram
    /// its destination; for an IPv4 broadcast one the receiving interface's
    /// address). On a dual-stack socket, IPv4 traffic's is IPv4-mapped, as
    /// `from` is.
    pub local: Option<IpAddr>,
    /// The interface it came in on (`set_recv_pktinfo`).
    pub ifindex: Option<u32>,
    /// Its ECN codepoint (`set_recv_ecn`).
    pub ecn: Option<Ecn>,
    /// Its TTL, or hop limit on IPv6 (`set_recv_ttl`).
    pub ttl: Option<u8>,
    /// When the kernel received it (`set_recv_timestamps`).
    pub timestamp: Option<SystemTime>,
    /// The datagram was longer than the buffers: `len` bytes of it were
    /// kept, the rest dropped.
    pub truncated: bool,
    /// The size of each datagram coalesced into this one by the kernel
    /// (generic receive offload), the last one possibly shorter.
    pub segment_size: Option<usize>,
}

impl RecvMeta {
    /// The metadata of a receive that got nothing (an error).
    pub(crate) fn empty() -> RecvMeta {
        RecvMeta::from_info(MsgInfo::default())
    }

    /// From what the system call said (the kernel attaches only what the
    /// socket's switches ask for).
    pub(crate) fn from_info(info: MsgInfo) -> RecvMeta {
        RecvMeta {
            len: info.len,
            from: info.from.unwrap_or_else(crate::sys::unspecified_addr),
            local: info.local,
            ifindex: info.ifindex,
            ecn: info.tos.map(Ecn::from_bits),
            ttl: info.ttl,
            timestamp: info.timestamp,
            truncated: info.truncated,
            segment_size: info.segment_size,
        }
    }
}

/// What [`UdpSocket::async_send_msg`](super::UdpSocket::async_send_msg)
/// sets on one datagram, built with its methods:
///
/// ```
/// use ioctx::net::{Ecn, SendMeta};
/// let meta = SendMeta::new().to("127.0.0.1:9".parse().unwrap()).ecn(Ecn::Ect0);
/// assert_eq!(meta.ecn, Some(Ecn::Ect0));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendMeta {
    /// The destination (`None`: the connected peer).
    pub to: Option<SocketAddr>,
    /// The source address, for a socket bound to every address (a server
    /// answering from the address a request came to, `RecvMeta::local`).
    /// Given in the other family than `to`'s, it is mapped where it can be
    /// (an IPv4 address to an IPv4-mapped destination of a dual-stack
    /// socket, and back); otherwise the send fails with `INVALID_ARGUMENT`.
    /// Without `to` (a connected socket), a source of the other family is
    /// ignored by the kernel.
    pub from_ip: Option<IpAddr>,
    /// The ECN codepoint to send with.
    pub ecn: Option<Ecn>,
    /// Cut the datagram into datagrams of this many bytes (UDP segmentation
    /// offload, as [`UdpSocket::set_gso`](super::UdpSocket::set_gso) does
    /// for a batch), the last possibly shorter.
    pub segment_size: Option<usize>,
}

impl SendMeta {
    /// Nothing set: to the connected peer, from the address the kernel picks.
    pub fn new() -> SendMeta {
        SendMeta::default()
    }

    /// To `addr`.
    pub fn to(mut self, addr: SocketAddr) -> SendMeta {
        self.to = Some(addr);
        self
    }

    /// From `ip`.
    pub fn from_ip(mut self, ip: IpAddr) -> SendMeta {
        self.from_ip = Some(ip);
        self
    }

    /// With ECN codepoint `ecn`.
    pub fn ecn(mut self, ecn: Ecn) -> SendMeta {
        self.ecn = Some(ecn);
        self
    }

    /// Cut into datagrams of `bytes` each.
    pub fn segment_size(mut self, bytes: usize) -> SendMeta {
        self.segment_size = Some(bytes);
        self
    }

    /// The control messages it asks of `sendmsg`; `INVALID_ARGUMENT` for a
    /// segment size of 0 or above 65,535.
    pub(crate) fn info(&self) -> Result<SendInfo, crate::Error> {
        let segment = match self.segment_size {
            None => None,
            Some(s) => Some(u16::try_from(s).ok().filter(|&s| s > 0).ok_or(crate::Error::INVALID_ARGUMENT)?),
        };
        Ok(SendInfo { from_ip: self.from_ip, tos: self.ecn.map(Ecn::bits), segment })
    }
}

/// An error the network reported about a datagram this socket sent (an
/// ICMP message, or the kernel's own report), from
/// [`UdpSocket::async_receive_error`](super::UdpSocket::async_receive_error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IcmpError {
    /// Where the datagram that failed was going. (In a report the local
    /// host made of a datagram it refused to send, such as `MESSAGE_SIZE`,
    /// Linux gives the port over IPv4 only on a connected socket: 0
    /// otherwise.)
    pub dest: SocketAddr,
    /// Who reported it (the host or router that sent the ICMP message),
    /// when known.
    pub reporter: Option<IpAddr>,
    /// What went wrong: `CONNECTION_REFUSED` (port unreachable),
    /// `HOST_UNREACHABLE`, `NETWORK_UNREACHABLE`, `MESSAGE_SIZE` (see
    /// `mtu`), ...
    pub error: Error,
    /// The path MTU, with `MESSAGE_SIZE`.
    pub mtu: Option<u32>,
}

impl IcmpError {
    /// The report of a wait that got none (an error of its own).
    pub(crate) fn empty() -> IcmpError {
        IcmpError::from_info(ErrInfo { dest: None, reporter: None, errno: 0, mtu: None })
    }

    pub(crate) fn from_info(info: ErrInfo) -> IcmpError {
        IcmpError {
            dest: info.dest.unwrap_or_else(crate::sys::unspecified_addr),
            reporter: info.reporter,
            error: Error::from_raw_os_error(info.errno),
            mtu: info.mtu,
        }
    }
}
