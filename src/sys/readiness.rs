//! What a registration waits for ([`Interest`]) and what a wait reports
//! ([`Event`]): the same types over epoll and kqueue. An event's bits are
//! the backend's ([`poll::bits`](super::poll::bits)): epoll's own words on
//! Linux, copied as the kernel gave them.

use super::poll::bits;

/// What a registration waits for. Readability, writability and priority
/// data are all there is to ask of a socket; the bits are ours, not epoll's,
/// so that a backend other than epoll can take the same type.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Interest(u8);

impl Interest {
    /// Data to read, a peer that closed, or an error.
    pub(crate) const READABLE: Interest = Interest(1);
    /// Room to write.
    pub(crate) const WRITABLE: Interest = Interest(2);
    /// Priority data or an error queued (`WaitType::Error`).
    pub(crate) const PRIORITY: Interest = Interest(4);

    /// Both `self` and `other`.
    pub(crate) const fn add(self, other: Interest) -> Interest {
        Interest(self.0 | other.0)
    }

    /// Asks for readability.
    pub(crate) const fn is_readable(self) -> bool {
        self.0 & Self::READABLE.0 != 0
    }

    /// Asks for writability.
    pub(crate) const fn is_writable(self) -> bool {
        self.0 & Self::WRITABLE.0 != 0
    }

    /// Asks for priority data (and errors).
    pub(crate) const fn is_priority(self) -> bool {
        self.0 & Self::PRIORITY.0 != 0
    }
}

/// One readiness report: the registration's token and what holds.
#[derive(Clone, Copy)]
pub(crate) struct Event {
    bits: u32,
    token: u64,
}

impl Event {
    /// An event with these bits ([`poll::bits`](super::poll::bits)).
    #[inline]
    pub(crate) fn new(bits: u32, token: u64) -> Event {
        Event { bits, token }
    }

    /// What a simulated wait reports.
    pub(crate) fn simulated(readable: bool, writable: bool, error: bool) -> Event {
        let pick = |on: bool, bit: u32| if on { bit } else { 0 };
        Event::new(pick(readable, bits::READ) | pick(writable, bits::WRITE) | pick(error, bits::ERROR), 0)
    }

    /// The token the descriptor was registered with.
    #[inline]
    pub(crate) fn token(self) -> u64 {
        self.token
    }

    /// Data to read (or priority data, which is read too).
    #[inline]
    pub(crate) fn is_readable(self) -> bool {
        self.has(bits::READ | bits::PRIORITY)
    }

    /// Room to write.
    #[inline]
    pub(crate) fn is_writable(self) -> bool {
        self.has(bits::WRITE)
    }

    /// An error is pending on the descriptor (`SO_ERROR`).
    #[inline]
    pub(crate) fn is_error(self) -> bool {
        self.has(bits::ERROR)
    }

    /// Hung up, or the peer shut its sending side down: reading gives
    /// end-of-file (or the error) at once.
    #[inline]
    pub(crate) fn is_read_closed(self) -> bool {
        self.has(bits::HUP | bits::READ_HUP)
    }

    /// Hung up, or no more can be sent: writing fails at once.
    #[inline]
    pub(crate) fn is_write_closed(self) -> bool {
        self.has(bits::HUP | bits::WRITE_HUP)
    }

    /// Priority (out-of-band) data.
    #[inline]
    pub(crate) fn is_priority(self) -> bool {
        self.has(bits::PRIORITY)
    }

    #[inline]
    fn has(self, mask: u32) -> bool {
        self.bits & mask != 0
    }
}
