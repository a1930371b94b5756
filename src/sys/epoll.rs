//! epoll and an eventfd waker, owned outright: the only readiness
//! system calls the crate makes (Linux).
//!
//! [`Epoll`] owns its descriptor and registers level- or edge-triggered as
//! each registration asks (mio, used before, registers edge-triggered only).
//! [`Events`] is the buffer one [`Epoll::wait`] fills, reused from wait to
//! wait. [`Waker`] makes a wait return from any thread.

use super::readiness::{Event, Interest};
use super::{cvt, retry};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// The epoll event mask for an interest. `EPOLLRDHUP` comes with
/// readability so that a peer's shutdown is reported as such.
fn epoll_bits(interest: Interest, edge: bool) -> u32 {
    let mut bits = 0;
    if interest.is_readable() {
        bits |= libc::EPOLLIN | libc::EPOLLRDHUP;
    }
    if interest.is_writable() {
        bits |= libc::EPOLLOUT;
    }
    if interest.is_priority() {
        bits |= libc::EPOLLPRI;
    }
    if edge {
        bits |= libc::EPOLLET;
    }
    bits as u32
}

/// What an [`Event`] says, in epoll's own bits (so that an event is the
/// kernel's word, copied as it is).
pub(crate) mod bits {
    pub(crate) const READ: u32 = libc::EPOLLIN as u32;
    pub(crate) const WRITE: u32 = libc::EPOLLOUT as u32;
    pub(crate) const PRIORITY: u32 = libc::EPOLLPRI as u32;
    pub(crate) const ERROR: u32 = libc::EPOLLERR as u32;
    /// Hung up: both directions.
    pub(crate) const HUP: u32 = libc::EPOLLHUP as u32;
    /// The peer shut its sending side down.
    pub(crate) const READ_HUP: u32 = libc::EPOLLRDHUP as u32;
    /// No more can be sent (epoll says so with `HUP` only).
    pub(crate) const WRITE_HUP: u32 = 0;
}

/// The readiness backend's instance on this system.
pub(crate) type Poller = Epoll;

/// An epoll instance. The descriptor is created close-on-exec, never
/// changes, and closes when the `Epoll` drops.
pub(crate) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// `epoll_create1(EPOLL_CLOEXEC)`.
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers are passed; the call only creates a descriptor.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: the kernel just returned `fd`, open and owned by nobody else.
        Ok(Epoll { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Adds `fd`, reported with `token`. `edge`: edge-triggered (reported
    /// once per change) instead of level-triggered (at every wait while the
    /// condition holds).
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest, edge: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, epoll_bits(interest, edge))
    }

    /// Changes what a registered `fd` waits for and how. The kernel checks
    /// readiness again on a change, so a condition that already holds is
    /// reported at the next wait even when edge-triggered.
    pub(crate) fn modify(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest, edge: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, epoll_bits(interest, edge))
    }

    /// Removes `fd`. (Closing a descriptor removes it too, but only once
    /// every duplicate of it is closed.)
    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // A null event is accepted for DEL since Linux 2.6.9.
        // SAFETY: DEL does not read the event pointer, and null is allowed.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd.as_raw_fd(), std::ptr::null_mut()) })
            .map(drop)
    }

    fn ctl(&self, op: i32, fd: BorrowedFd<'_>, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call;
        // the kernel only reads it.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &mut ev) }).map(drop)
    }

    /// Waits until a registration is ready or `timeout` passes (`None`:
    /// without end), and fills `events`. Returns how many it holds. EINTR
    /// is returned, not retried: the caller decides whether its deadline or
    /// a signal's handler needs the loop first.
    pub(crate) fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<usize> {
        events.len = 0;
        let max = events.buf.len().min(i32::MAX as usize) as i32;
        // SAFETY: `buf` holds `max` (or more) writable events, and the
        // kernel writes at most `max` of them.
        let n =
            cvt(unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.buf.as_mut_ptr(), max, timeout_ms(timeout)) })?;
        events.len = n as usize;
        Ok(events.len)
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A wait's timeout in epoll's whole milliseconds, rounded up: a wait that
/// ended before a timer's deadline would find nothing due and wait again
/// for less than a millisecond, which epoll makes a zero wait, spinning
/// until the deadline. `None` is -1, no timeout.
fn timeout_ms(timeout: Option<Duration>) -> i32 {
    let Some(t) = timeout else { return -1 };
    let ms = t.as_secs().saturating_mul(1000).saturating_add(u64::from(t.subsec_nanos().div_ceil(1_000_000)));
    ms.min(i32::MAX as u64) as i32
}

/// The buffer one wait fills: reused, so that a wait allocates nothing.
pub(crate) struct Events {
    buf: Box<[libc::epoll_event]>,
    /// How many the last wait filled.
    len: usize,
}

impl Events {
    /// Room for `n` events per wait (more ready ones wait for the next).
    /// Zero is allowed, and makes every wait fail with EINVAL.
    pub(crate) fn with_capacity(n: usize) -> Events {
        Events { buf: vec![libc::epoll_event { events: 0, u64: 0 }; n].into_boxed_slice(), len: 0 }
    }

    /// How many events the last wait returned.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The events of the last wait, in the order the kernel gave them.
    #[inline]
    pub(crate) fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        // Copied out field by field: `epoll_event` is packed on x86_64, so
        // its fields cannot be borrowed.
        self.buf[..self.len].iter().map(|ev| Event::new(ev.events, ev.u64))
    }
}

/// Makes a wait on the epoll it is registered with return, from any
/// thread: an eventfd whose counter a wake increments. The loop drains it
/// (reads the counter back to zero) when its token is reported.
pub(crate) struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// A non-blocking, close-on-exec eventfd.
    pub(crate) fn new() -> io::Result<Waker> {
        // SAFETY: no pointers are passed; the call only creates a descriptor.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: the kernel just returned `fd`, open and owned by nobody else.
        Ok(Waker { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Makes the descriptor readable. A counter already at its maximum
    /// (EAGAIN) is readable anyway, so that is success too.
    pub(crate) fn wake(&self) -> io::Result<()> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: the buffer is 8 readable bytes, the size an eventfd takes.
        match retry(|| cvt(unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) })) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    /// Resets the counter, so that a level-triggered registration stops
    /// being reported (and the counter never fills). Zero already (EAGAIN) is
    /// success.
    pub(crate) fn drain(&self) -> io::Result<()> {
        let mut buf = [0u8; 8];
        // SAFETY: the buffer is 8 writable bytes, the size an eventfd gives.
        match retry(|| cvt(unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_up_to_whole_milliseconds() {
        assert_eq!(timeout_ms(None), -1);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 0);
        assert_eq!(timeout_ms(Some(Duration::from_nanos(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1500))), 2);
        assert_eq!(timeout_ms(Some(Duration::from_millis(7))), 7);
        assert_eq!(timeout_ms(Some(Duration::MAX)), i32::MAX);
    }

    #[test]
    fn a_wake_is_reported_level_triggered_until_drained() {
        let ep = Epoll::new().unwrap();
        let w = Waker::new().unwrap();
        ep.add(w.as_fd(), 7, Interest::READABLE, false).unwrap();
        let mut ev = Events::with_capacity(4);
        assert_eq!(ep.wait(&mut ev, Some(Duration::ZERO)).unwrap(), 0);
        w.wake().unwrap();
        w.wake().unwrap();
        for _ in 0..2 {
            assert_eq!(ep.wait(&mut ev, Some(Duration::ZERO)).unwrap(), 1);
            let e = ev.iter().next().unwrap();
            assert_eq!(e.token(), 7);
            assert!(e.is_readable() && !e.is_writable() && !e.is_error());
        }
        w.drain().unwrap();
        w.drain().unwrap(); // already zero
        assert_eq!(ep.wait(&mut ev, Some(Duration::ZERO)).unwrap(), 0);
        assert!(ev.iter().next().is_none());
    }

    #[test]
    fn edge_triggered_reports_once_per_change_and_modify_rechecks() {
        let ep = Epoll::new().unwrap();
        let w = Waker::new().unwrap();
        ep.add(w.as_fd(), 1, Interest::READABLE, true).unwrap();
        w.wake().unwrap();
        let mut ev = Events::with_capacity(4);
        assert_eq!(ep.wait(&mut ev, Some(Duration::ZERO)).unwrap(), 1);
        assert_eq!(ep.wait(&mut ev, Some(Duration::ZERO)).unwrap(), 0, "edge-triggered: once");
        ep.modify(w.as_fd(), 2, Interest::READABLE.add(Interest::WRITABLE), true).unwrap();
        assert_eq!(ep.wait(&mut ev, Some(Duration::ZERO)).unwrap(), 1, "a change re-checks");
        let e = ev.iter().next().unwrap();
        assert_eq!(e.token(), 2);
        assert!(e.is_readable() && e.is_writable());
        ep.delete(w.as_fd()).unwrap();
        w.wake().unwrap();
        assert_eq!(ep.wait(&mut ev, Some(Duration::ZERO)).unwrap(), 0);
        assert!(ep.delete(w.as_fd()).is_err(), "no longer registered");
    }

    #[test]
    fn a_wake_from_another_thread_ends_an_endless_wait() {
        fn shared_across_threads<T: Send + Sync>() {}
        shared_across_threads::<Waker>();
        let ep = Epoll::new().unwrap();
        let w = std::sync::Arc::new(Waker::new().unwrap());
        ep.add(w.as_fd(), 3, Interest::READABLE, false).unwrap();
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w2.wake().unwrap();
        });
        let mut ev = Events::with_capacity(1);
        assert_eq!(ep.wait(&mut ev, None).unwrap(), 1);
        t.join().unwrap();
    }

    #[test]
    fn a_buffer_without_room_makes_the_wait_fail() {
        let ep = Epoll::new().unwrap();
        let mut ev = Events::with_capacity(0);
        let e = ep.wait(&mut ev, Some(Duration::ZERO)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }
}
