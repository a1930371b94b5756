//! Every system call the crate makes on a socket, in one place: the seam a
//! simulated backend can later replace. `unsafe` lives only here. The
//! readiness calls (epoll, the waker's eventfd) are in [`epoll`].

use crate::error::Error;
use socket2::{MaybeUninitSlice, SockAddr, Socket};
use std::cell::Cell;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

#[cfg(not(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "dragonfly"
)))]
compile_error!("ioctx runs on Linux, macOS and FreeBSD (see the README's table of systems)");

// The readiness backend: epoll on Linux, kqueue on macOS and the BSDs,
// each as `poll` with the same items (`Poller`, `Events`, `Waker`, `bits`).
mod handler;
pub(crate) mod msg;
#[cfg(target_os = "linux")]
#[path = "epoll.rs"]
pub(crate) mod poll;
#[cfg(not(target_os = "linux"))]
#[path = "kqueue.rs"]
pub(crate) mod poll;
pub(crate) mod readiness;
pub(crate) mod signal;
pub(crate) use handler::{HandlerQueue, WaitHandler};

/// A libc call's return value as a `Result`: -1 means the call failed and
/// `errno` says why (the convention of every call made here).
#[inline(always)]
pub(crate) fn cvt<T: From<i8> + PartialEq>(r: T) -> io::Result<T> {
    if r == T::from(-1) { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// Calls `f` again while it fails with EINTR: a signal that arrived during
/// the call is no reason to fail it (its handler has already run).
#[inline(always)]
pub(crate) fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// Maps a non-blocking call's outcome to an operation result; `None` when it
/// would block.
#[inline]
pub(crate) fn result(r: io::Result<usize>) -> Option<(Error, usize)> {
    match r {
        Ok(n) => Some((Error::NONE, n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => Some((Error::from(e), 0)),
    }
}

/// The address a receive handler gets when there is none to report.
pub(crate) fn unspecified_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
}

/// `sendmsg`: the whole gather list as one datagram, to `dest` or the
/// connected peer. Retries on EINTR.
#[inline]
pub(crate) fn send(sock: &Socket, bufs: &[IoSlice<'_>], dest: Option<&SockAddr>, flags: i32) -> io::Result<usize> {
    // A write to a stream the peer has reset fails with EPIPE in the handler
    // instead of killing a host process that has not ignored SIGPIPE.
    let flags = flags | libc::MSG_NOSIGNAL;
    // One buffer: send(2)/sendto(2), cheaper in the kernel than sendmsg(2).
    retry(|| match (dest, bufs) {
        (Some(addr), [one]) => sock.send_to_with_flags(one, addr, flags),
        (None, [one]) => send_connected(sock, one, flags),
        (Some(addr), _) => sock.send_to_vectored_with_flags(bufs, addr, flags),
        (None, _) => sock.send_vectored_with_flags(bufs, flags),
    })
}

/// send(2) of one buffer to the connected peer (the common case, without
/// socket2's layers).
#[inline]
fn send_connected(sock: &Socket, buf: &[u8], flags: i32) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the call.
    cvt(unsafe { libc::send(sock.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) }).map(|n| n as usize)
}

/// recv(2) into one buffer, without the sender (the common case, without
/// socket2's layers).
#[inline]
fn recv_connected(sock: &Socket, buf: &mut [u8], flags: i32) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call,
    // and the kernel writes only initialised bytes into it.
    cvt(unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) }).map(|n| n as usize)
}

/// Where a receive that reports its sender puts the sender's address
/// (`None`: a receive that does not ask). An out-parameter rather than part
/// of the result, so that the result fits in registers through every layer.
pub(crate) type Sender<'a> = Option<&'a Cell<Option<SocketAddr>>>;

type UninitSlices<'a> = smallvec::SmallVec<[MaybeUninitSlice<'a>; crate::buffer::INLINE_SLICES]>;

/// The scatter list in the form socket2's `recvmsg` takes.
fn uninit_slices<'a>(bufs: &'a mut [IoSliceMut<'_>]) -> UninitSlices<'a> {
    bufs.iter_mut()
        .map(|b| {
            let b: &mut [u8] = b;
            // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and the slice is
            // already initialised. socket2 only lets the kernel write bytes into
            // it, never uninitialised ones, so it stays initialised when the
            // borrow ends. socket2 has no recvmsg over initialised buffers.
            let b: &mut [MaybeUninit<u8>] = unsafe { &mut *(b as *mut [u8] as *mut [MaybeUninit<u8>]) };
            MaybeUninitSlice::new(b)
        })
        .collect()
}

/// `recvmsg` into the scatter list. Retries on EINTR.
///
/// The common case, one buffer and no sender asked for, is a plain
/// `recv(2)` inlined into its caller; the rest is out of line, so that its
/// large stack frame is not paid by every receive.
#[inline]
pub(crate) fn recv(sock: &Socket, bufs: &mut [IoSliceMut<'_>], flags: i32, from: Sender<'_>) -> io::Result<usize> {
    match (bufs, from) {
        ([one], None) => retry(|| recv_connected(sock, one, flags)),
        ([one], Some(from)) => recv_one_from(sock, one, flags, from),
        (bufs, from) => recv_vectored(sock, bufs, flags, from),
    }
}

/// [`recv`] into a scatter list.
#[inline(never)]
fn recv_vectored(sock: &Socket, bufs: &mut [IoSliceMut<'_>], flags: i32, from: Sender<'_>) -> io::Result<usize> {
    let mut slices = uninit_slices(bufs);
    retry(|| match from {
        Some(from) => sock.recv_from_vectored_with_flags(&mut slices, flags).map(|(len, _, addr)| {
            from.set(addr.as_socket());
            len
        }),
        None => sock.recv_vectored_with_flags(&mut slices, flags).map(|(len, _)| len),
    })
}

/// `recvmsg` into the scatter list, with the sender's address whatever its
/// family (a Unix-domain datagram's sender, for one). Retries on EINTR.
pub(crate) fn recv_from_any(sock: &Socket, bufs: &mut [IoSliceMut<'_>], flags: i32) -> io::Result<(usize, SockAddr)> {
    let mut slices = uninit_slices(bufs);
    retry(|| sock.recv_from_vectored_with_flags(&mut slices, flags)).map(|(len, _, addr)| (len, addr))
}

/// One buffer and its sender: recvfrom(2), cheaper in the kernel than
/// recvmsg(2), and no scatter list to build. Retries on EINTR.
#[inline(never)]
fn recv_one_from(sock: &Socket, buf: &mut [u8], flags: i32, from: &Cell<Option<SocketAddr>>) -> io::Result<usize> {
    // SAFETY: as in `recv`: the slice is initialised and socket2 only lets
    // the kernel write bytes into it.
    let buf: &mut [MaybeUninit<u8>] = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    retry(|| {
        sock.recv_from_with_flags(buf, flags).map(|(len, addr)| {
            from.set(addr.as_socket());
            len
        })
    })
}

// The batches: `recvmmsg`, `sendmmsg` and segmentation offload on Linux;
// one call per datagram elsewhere (`send_segments` refused there).
#[cfg(target_os = "linux")]
#[path = "mmsg_linux.rs"]
mod batch;
#[cfg(not(target_os = "linux"))]
#[path = "mmsg_portable.rs"]
mod batch;
pub(crate) use batch::{recv_many, send_many, send_segments};

/// UDP segmentation offload exists (`UDP_SEGMENT`, Linux).
pub(crate) const HAS_GSO: bool = cfg!(target_os = "linux");

/// One datagram of a [`send_many`] batch: its bytes within the batch buffer
/// and its destination (`None`: the connected peer).
pub(crate) struct Part<'a> {
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) dest: Option<&'a SockAddr>,
}

/// Most datagrams one [`send_many`] takes.
pub(crate) const SEND_BATCH: usize = 64;

/// True for the errors with which a kernel or device refuses segmentation
/// offload (rather than the datagrams themselves).
pub(crate) fn gso_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP))
}

/// What a receive with read-ahead produced: the datagram for the caller,
/// and the next one when it was already queued.
pub(crate) struct ReadAhead {
    /// The length of the caller's datagram (its sender is in the `Sender`).
    pub(crate) first: usize,
    /// Length and sender of a second datagram, now in the read-ahead space.
    pub(crate) second: Option<(usize, Option<SocketAddr>)>,
}

/// `recvmmsg` into the caller's buffers plus `ahead` (the read-ahead space): one system call that
/// receives a datagram AND tells whether the queue is now empty (a second
/// datagram lands in `ahead`, else the queue was drained). This saves the
/// extra receive that edge-triggered readiness otherwise costs to learn that
/// the socket would block.
pub(crate) fn recv_read_ahead(
    sock: &Socket,
    bufs: &mut [IoSliceMut<'_>],
    from: Sender<'_>,
    ahead: &mut [u8],
) -> io::Result<ReadAhead> {
    // One receive and the read-ahead slot: a batch of one.
    let count = bufs.len();
    let mut got = [(0, None); 2];
    let n = recv_many(sock, bufs, &[count], ahead, &mut got)?;
    let (len, sender) = got[0];
    if let Some(from) = from {
        from.set(sender);
    }
    Ok(ReadAhead { first: len, second: (n > 1).then_some(got[1]) })
}

/// Whether a batch's arguments agree: `slots` messages (at most
/// [`RECV_BATCH`], at least one), results room for each, and `counts`
/// dividing exactly the `bufs` scatter lists among the receives. Shared by
/// every `recv_many` and `recv_msg_many`, whatever system call they make.
pub(crate) fn batch_fits(bufs: usize, counts: &[usize], slots: usize, room: usize) -> bool {
    (1..=RECV_BATCH).contains(&slots) && room >= slots && counts.iter().sum::<usize>() == bufs
}

/// Most datagrams one [`recv_many`] takes (receives plus the read-ahead slot).
pub(crate) const RECV_BATCH: usize = 17;

/// The IP address in a socket address the kernel wrote (the one place
/// `sys` reads one); `None` for any other family.
///
/// # Safety
/// `len` bytes at `name` must be initialised.
unsafe fn ip_addr(name: *const libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    // SAFETY: the family field is the first of every address, and the
    // caller vouches for `len` initialised bytes (checked against each
    // family's size before the cast).
    unsafe {
        if len < std::mem::size_of::<libc::sa_family_t>() {
            return None;
        }
        match i32::from((*name).ss_family) {
            libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
                let a = &*name.cast::<libc::sockaddr_in>();
                let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
            }
            libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
                let a = &*name.cast::<libc::sockaddr_in6>();
                let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                    ip,
                    u16::from_be(a.sin6_port),
                    u32::from_be(a.sin6_flowinfo),
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// `poll`'s report of a peer's shutdown, with readability (Linux's
/// `POLLRDHUP`; elsewhere `POLLHUP` alone says it).
#[cfg(target_os = "linux")]
const POLL_READ_HUP: libc::c_short = libc::POLLRDHUP;
#[cfg(not(target_os = "linux"))]
const POLL_READ_HUP: libc::c_short = 0;

/// Where this thread's `errno` lives (read and restored by the signal
/// handler, which must leave it as it found it).
pub(crate) fn errno_location() -> *mut libc::c_int {
    // SAFETY: each returns the calling thread's errno slot; no arguments.
    #[cfg(target_os = "linux")]
    return unsafe { libc::__errno_location() };
    // SAFETY: as above.
    #[cfg(not(target_os = "linux"))]
    return unsafe { libc::__error() };
}

/// Which readiness a blocking synchronous call waits for.
#[derive(Clone, Copy)]
pub(crate) enum Readiness {
    Read,
    Write,
}

/// Blocks on `poll(2)` until `fd` is ready. Used by the synchronous socket
/// calls, whose descriptor is non-blocking for the reactor. Returns true
/// when a wait for reading found the read side closed (shut down, or hung
/// up): the descriptor is then readable for good, even with nothing to read.
pub(crate) fn wait_fd(fd: RawFd, what: Readiness) -> io::Result<bool> {
    let events = match what {
        Readiness::Read => libc::POLLIN | POLL_READ_HUP,
        Readiness::Write => libc::POLLOUT,
    };
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and we pass a count of 1.
    retry(|| cvt(unsafe { libc::poll(&mut pfd, 1, -1) }))?;
    Ok(matches!(what, Readiness::Read) && pfd.revents & (POLL_READ_HUP | libc::POLLHUP) != 0)
}

/// Whether `fd` reports a hang-up now (`POLLHUP`), without waiting: a TCP
/// socket still connecting does not, one whose connect failed does.
pub(crate) fn hung_up(fd: RawFd) -> io::Result<bool> {
    Ok(poll_now(fd)? & libc::POLLHUP != 0)
}

/// Whether `fd` has an error pending now (`POLLERR`: the socket's error,
/// or a report in its error queue), without waiting and without taking
/// it, as a receive or `SO_ERROR` would.
pub(crate) fn error_pending(fd: RawFd) -> io::Result<bool> {
    Ok(poll_now(fd)? & libc::POLLERR != 0)
}

/// What `poll(2)` reports of `fd` now (hang-ups and errors are always
/// reported, whatever is asked).
fn poll_now(fd: RawFd) -> io::Result<libc::c_short> {
    let mut pfd = libc::pollfd { fd, events: 0, revents: 0 };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and we pass a count of 1.
    let n = retry(|| cvt(unsafe { libc::poll(&mut pfd, 1, 0) }))?;
    Ok(if n > 0 { pfd.revents } else { 0 })
}

/// Bytes that can be read without blocking (`FIONREAD`; for a datagram
/// socket, the size of the next datagram).
pub(crate) fn available(sock: &Socket) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points to `n`.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) })?;
    Ok(n.max(0) as usize)
}

/// Hints the CPU to start loading the cache line of `r`: the timer queue walks
/// its entries in deadline order, which is random in memory, and loading a
/// few entries ahead overlaps their cache and TLB misses. No safe API exists
/// for the prefetch instruction.
#[inline(always)]
pub(crate) fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults, whatever the
    // address, and changes no memory; `r` is a valid reference anyway. SSE is
    // part of the x86_64 baseline, so the instruction always exists.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((r as *const T).cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}
