//! Sockets on the reactor.

pub(crate) mod base;
mod compose;
mod meta;
mod tcp;
mod udp;
mod unix;

pub use compose::{
    AsyncStream, Delimiter, Transfer, async_read, async_read_until, async_write, transfer_all, transfer_at_least,
    transfer_exactly,
};
pub use meta::{Ecn, IcmpError, RecvMeta, SendMeta};
pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;
pub use unix::{UnixDatagram, UnixListener, UnixStream};

use std::ops::BitOr;

/// What an `async_wait` waits for (Asio's `wait_type`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum WaitType {
    /// The socket has data to read (or an error to report).
    Read,
    /// The socket can take more data.
    Write,
    /// The socket has an error or exceptional condition pending.
    Error,
}

/// Flags for the `_with_flags` operations (Asio's `message_flags`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct MessageFlags(i32);

impl MessageFlags {
    /// No flags.
    pub const NONE: MessageFlags = MessageFlags(0);
    /// Look at the incoming data without removing it (`MSG_PEEK`).
    pub const PEEK: MessageFlags = MessageFlags(libc::MSG_PEEK);
    /// Out-of-band data (`MSG_OOB`).
    pub const OUT_OF_BAND: MessageFlags = MessageFlags(libc::MSG_OOB);
    /// Send without using routing tables (`MSG_DONTROUTE`).
    pub const DO_NOT_ROUTE: MessageFlags = MessageFlags(libc::MSG_DONTROUTE);

    /// The raw `MSG_*` bits.
    pub const fn bits(self) -> i32 {
        self.0
    }

    /// True when every flag of `other` is set.
    pub const fn contains(self, other: MessageFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for MessageFlags {
    type Output = MessageFlags;
    fn bitor(self, rhs: MessageFlags) -> MessageFlags {
        MessageFlags(self.0 | rhs.0)
    }
}
