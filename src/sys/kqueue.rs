//! kqueue and a pipe waker: the readiness backend on macOS and the BSDs,
//! with the items of its Linux twin (`epoll.rs`): [`Poller`], [`Events`],
//! [`Waker`] and the event [`bits`].
//!
//! A registration is one filter per direction (`EVFILT_READ`,
//! `EVFILT_WRITE`), level-triggered, or edge-triggered with `EV_CLEAR`,
//! as each registration asks: the reactor's rules are the same as over
//! epoll. A change deletes the filters and adds the wanted ones again, in
//! one call (`EV_RECEIPT` gives each change its own result), because the
//! kernel keeps a filter's `EV_CLEAR` from its first `EV_ADD`; adding a
//! filter checks its condition at once, so a condition that already holds
//! is reported at the next wait, as epoll's `EPOLL_CTL_MOD` does.
//!
//! Not run on this project's machines (Linux): compiled for macOS and
//! FreeBSD by `.ci/run`. It was run once, with the whole test suite, on
//! Linux against libkqueue (an emulation of kqueue over epoll, patched to
//! report socket errors as FreeBSD's and XNU's filters do), which found the
//! two cases marked below.

use super::readiness::{Event, Interest};
use super::{cvt, retry};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// What an [`Event`] says: bits of our own, made from each `kevent`.
pub(crate) mod bits {
    pub(crate) const READ: u32 = 1;
    pub(crate) const WRITE: u32 = 2;
    pub(crate) const PRIORITY: u32 = 4;
    pub(crate) const ERROR: u32 = 8;
    /// Hung up: both directions.
    pub(crate) const HUP: u32 = 16;
    /// The peer shut its sending side down.
    pub(crate) const READ_HUP: u32 = 32;
    /// No more can be sent (the write filter's `EV_EOF`).
    pub(crate) const WRITE_HUP: u32 = 64;
}

/// The readiness backend's instance on this system.
pub(crate) type Poller = Kqueue;

/// A kqueue. The descriptor is close-on-exec, never changes, and closes
/// when the `Kqueue` drops.
pub(crate) struct Kqueue {
    fd: OwnedFd,
}

/// An all-zero `kevent` (every field is an integer or a pointer, for which
/// zero is valid), filled in field by field: the struct's extra fields
/// differ between systems.
fn kevent(ident: RawFd, filter: i16, flags: u16, token: u64) -> libc::kevent {
    // SAFETY: all-zero is a valid `kevent` (integers and a null pointer).
    let mut ev: libc::kevent = unsafe { std::mem::zeroed() };
    ev.ident = ident as _;
    ev.filter = filter as _;
    ev.flags = flags as _;
    ev.udata = token as usize as _;
    ev
}

impl Kqueue {
    /// `kqueue()`, then close-on-exec (macOS has no `kqueue1`).
    pub(crate) fn new() -> io::Result<Kqueue> {
        // SAFETY: no pointers are passed; the call only creates a descriptor.
        let fd = cvt(unsafe { libc::kqueue() })?;
        // SAFETY: the kernel just returned `fd`, open and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        set_cloexec(fd.as_raw_fd())?;
        Ok(Kqueue { fd })
    }

    /// Adds `fd`, reported with `token`. `edge`: `EV_CLEAR` (reported once
    /// per change) instead of level-triggered.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest, edge: bool) -> io::Result<()> {
        self.apply(fd, token, interest, edge, false)
    }

    /// Changes what a registered `fd` waits for and how.
    pub(crate) fn modify(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest, edge: bool) -> io::Result<()> {
        self.apply(fd, token, interest, edge, true)
    }

    /// Removes `fd`'s filters. (Closing a descriptor removes them too.)
    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        let mut changes = [kevent(raw, libc::EVFILT_READ, 0, 0), kevent(raw, libc::EVFILT_WRITE, 0, 0)];
        for c in &mut changes {
            c.flags = (libc::EV_DELETE | libc::EV_RECEIPT) as _;
        }
        self.submit(&mut changes)
    }

    /// The filters of a registration: a delete of each first when it
    /// changes (a missing one is no error), then the wanted ones added.
    fn apply(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest, edge: bool, change: bool) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        let add = libc::EV_ADD | libc::EV_RECEIPT | if edge { libc::EV_CLEAR } else { 0 };
        let mut changes = [kevent(raw, 0, 0, 0); 4];
        let mut n = 0;
        if change {
            for filter in [libc::EVFILT_READ, libc::EVFILT_WRITE] {
                changes[n] = kevent(raw, filter, libc::EV_DELETE | libc::EV_RECEIPT, token);
                n += 1;
            }
        }
        // Priority data and errors come with the read filter (`EV_EOF`
        // with an error); there is no error queue to watch.
        if interest.is_readable() || interest.is_priority() {
            changes[n] = kevent(raw, libc::EVFILT_READ, add, token);
            n += 1;
        }
        if interest.is_writable() {
            changes[n] = kevent(raw, libc::EVFILT_WRITE, add, token);
            n += 1;
        }
        self.submit(&mut changes[..n])
    }

    /// Makes the changes, each with `EV_RECEIPT`: the kernel answers every
    /// one in place with `EV_ERROR` and its error number in `data` (0: done),
    /// and takes no pending event off the queue. A delete of a filter that
    /// was never added (`ENOENT`) is no error.
    fn submit(&self, changes: &mut [libc::kevent]) -> io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let n = changes.len() as libc::c_int;
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        let list = changes.as_mut_ptr();
        // SAFETY: `list` points to `n` initialised kevents, read as changes
        // and overwritten as receipts (at most `n`); `zero` lives across the call.
        let got = retry(|| cvt(unsafe { libc::kevent(self.fd.as_raw_fd(), list, n, list, n, &zero) }))?;
        for ev in &changes[..got as usize] {
            let errno = ev.data as i32;
            let deleting = ev.flags & libc::EV_DELETE != 0;
            if ev.flags & libc::EV_ERROR != 0 && errno != 0 && !(deleting && errno == libc::ENOENT) {
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
        Ok(())
    }

    /// Waits until a registration is ready or `timeout` passes (`None`:
    /// without end), and fills `events`. Returns how many it holds. EINTR
    /// is returned, not retried (as over epoll).
    pub(crate) fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<usize> {
        events.len = 0;
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos() as _,
        });
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        let max = events.buf.len().min(libc::c_int::MAX as usize) as libc::c_int;
        // (Found by the libkqueue run.) kevent() with no room returns 0 at
        // once: fail as epoll_wait does (a loop whose wait cannot report
        // anything must stop, not spin).
        if max == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: no changes are passed; `buf` holds `max` writable kevents,
        // of which the kernel writes at most `max`; `ts` outlives the call.
        let n = cvt(unsafe {
            libc::kevent(self.fd.as_raw_fd(), std::ptr::null(), 0, events.buf.as_mut_ptr(), max, ts_ptr)
        })?;
        events.len = n as usize;
        Ok(events.len)
    }
}

impl AsFd for Kqueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Kqueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The buffer one wait fills: reused, so that a wait allocates nothing.
pub(crate) struct Events {
    buf: Box<[libc::kevent]>,
    /// How many the last wait filled.
    len: usize,
}

impl Events {
    /// Room for `n` events per wait (more ready ones wait for the next).
    pub(crate) fn with_capacity(n: usize) -> Events {
        Events { buf: vec![kevent(0, 0, 0, 0); n].into_boxed_slice(), len: 0 }
    }

    /// How many events the last wait returned.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The events of the last wait, one per filter that fired: a socket
    /// readable and writable is reported twice, with the same token.
    #[inline]
    pub(crate) fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.buf[..self.len].iter().map(|ev| Event::new(event_bits(ev), ev.udata as usize as u64))
    }
}

/// One `kevent` as our bits. `EV_EOF` on the read filter is the peer's
/// shutdown (and an error, when `fflags` holds one: `SO_ERROR`); on the
/// write filter, no more can be sent.
fn event_bits(ev: &libc::kevent) -> u32 {
    let eof = ev.flags & libc::EV_EOF != 0;
    let mut b = 0;
    if ev.filter == libc::EVFILT_READ {
        b |= bits::READ;
        if eof {
            b |= bits::READ_HUP;
        } else if ev.data == 0 {
            // (Found by the libkqueue run.) Readable with nothing to read
            // and the read side open: a pending socket error (an ICMP
            // error on a connected UDP socket) fires the filter without
            // `EV_EOF` or `fflags`. (A zero-length datagram looks the same;
            // an error wait that wakes for it finds no error and waits
            // again.)
            b |= bits::ERROR;
        }
    } else if ev.filter == libc::EVFILT_WRITE {
        b |= bits::WRITE;
        if eof {
            b |= bits::WRITE_HUP;
        }
    }
    if (eof && ev.fflags != 0) || ev.flags & libc::EV_ERROR != 0 {
        b |= bits::ERROR;
    }
    b
}

/// Sets close-on-exec on `fd`.
fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD with an integer argument passes no pointer.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }).map(drop)
}

/// Sets `O_NONBLOCK` on `fd`, keeping its other status flags.
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL and F_SETFL with an integer argument pass no pointer.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)).map(drop)
    }
}

/// Makes a wait on the kqueue it is registered with return, from any
/// thread: a non-blocking pipe, whose read end is registered; a wake
/// writes a byte, and the loop drains the pipe when its token is reported.
pub(crate) struct Waker {
    read: OwnedFd,
    write: OwnedFd,
}

impl Waker {
    /// A non-blocking, close-on-exec pipe.
    pub(crate) fn new() -> io::Result<Waker> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors the call writes.
        cvt(unsafe { libc::pipe(fds.as_mut_ptr()) })?;
        // SAFETY: the kernel just returned both, open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for fd in [read.as_raw_fd(), write.as_raw_fd()] {
            set_cloexec(fd)?;
            set_nonblocking(fd)?;
        }
        Ok(Waker { read, write })
    }

    /// Makes the read end readable. A full pipe (EAGAIN) is readable
    /// anyway, so that is success too.
    pub(crate) fn wake(&self) -> io::Result<()> {
        let one = [1u8];
        // SAFETY: the buffer is one readable byte.
        match retry(|| cvt(unsafe { libc::write(self.write.as_raw_fd(), one.as_ptr().cast(), 1) })) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    /// Empties the pipe, so that a level-triggered registration stops being
    /// reported (and the pipe never fills).
    pub(crate) fn drain(&self) -> io::Result<()> {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: the buffer is 64 writable bytes.
            match retry(|| cvt(unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })) {
                Ok(n) if n as usize == buf.len() => {}
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}
