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

pub(crate) mod epoll;
mod handler;
pub(crate) mod msg;
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

/// Sends `buf` as datagrams of `segment` bytes each (the last may be
/// shorter) in one `sendmsg` with a `UDP_SEGMENT` control message: UDP
/// generic segmentation offload. The kernel cuts the buffer; the cost per
/// datagram falls well below one system call's.
pub(crate) fn send_segments(sock: &Socket, buf: &[u8], dest: Option<&SockAddr>, segment: u16) -> io::Result<usize> {
    const SPACE: usize = 32; // >= CMSG_SPACE(sizeof(u16)) on every Linux ABI
    let mut control = [0u64; SPACE / 8];
    let mut iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some(d) = dest {
        msg.msg_name = d.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = d.len();
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as _;
    debug_assert!(msg.msg_controllen as usize <= SPACE);
    // SAFETY: `msg_control` points to `control`, large enough for one header
    // with a u16 payload (checked above), so the first header and its data
    // lie inside it; the data pointer may be unaligned for u16, hence
    // write_unaligned.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        libc::CMSG_DATA(cmsg).cast::<u16>().write_unaligned(segment);
    }
    // SAFETY: `msg` and everything it points to (name, iovec, buffer,
    // control) are valid for the duration of the call.
    retry(|| cvt(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })).map(|n| n as usize)
}

/// One datagram of a [`send_many`] batch: its bytes within the batch buffer
/// and its destination (`None`: the connected peer).
pub(crate) struct Part<'a> {
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) dest: Option<&'a SockAddr>,
}

/// `sendmmsg`: several datagrams, each with its own destination, in one
/// system call. Returns how many the kernel took (at least one); an error
/// means the first one failed.
pub(crate) fn send_many(sock: &Socket, buf: &[u8], parts: &[Part<'_>]) -> io::Result<usize> {
    if parts.len() > SEND_BATCH {
        return Err(io::Error::from(Error::INVALID_ARGUMENT));
    }
    // Written in place, not collected: this runs for every batch of sends.
    let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; SEND_BATCH];
    let mut msgs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; SEND_BATCH];
    for ((p, iov), m) in parts.iter().zip(iovs.iter_mut()).zip(msgs.iter_mut()) {
        let data = &buf[p.start..p.start + p.len];
        let iov = iov.write(libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() });
        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        if let Some(d) = p.dest {
            hdr.msg_name = d.as_ptr() as *mut libc::c_void;
            hdr.msg_namelen = d.len();
        }
        hdr.msg_iov = iov;
        hdr.msg_iovlen = 1;
        m.write(libc::mmsghdr { msg_hdr: hdr, msg_len: 0 });
    }
    // SAFETY: the first `parts.len()` headers are initialised above and
    // point to their iovec in `iovs`, their bytes in `buf` and their name in
    // `parts`, all alive and unmoved for the call; the kernel only reads
    // them (and writes `msg_len` into `msgs`, which we own).
    retry(|| {
        cvt(unsafe {
            libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr().cast(), parts.len() as u32, libc::MSG_NOSIGNAL)
        })
    })
    .map(|n| n as usize)
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

/// Most datagrams one [`recv_many`] takes (receives plus the read-ahead slot).
pub(crate) const RECV_BATCH: usize = 17;

/// `recvmmsg` into several receives' scatter lists at once, plus `ahead` (the read-ahead space)
/// last: message `i` fills the next `counts[i]` slices of `bufs`. Returns
/// how many datagrams arrived (at least one), and puts the length and sender
/// of the `i`-th in `got[i]` (the caller's room, at least `counts.len() + 1`
/// long: nothing is collected or moved here); one more than `counts.len()`
/// means the read-ahead slot got a datagram too, fewer means the socket is
/// drained.
pub(crate) fn recv_many(
    sock: &Socket,
    bufs: &mut [IoSliceMut<'_>],
    counts: &[usize],
    ahead: &mut [u8],
    got: &mut [(usize, Option<SocketAddr>)],
) -> io::Result<usize> {
    let n = counts.len() + 1;
    if n > RECV_BATCH || got.len() < n || counts.iter().sum::<usize>() != bufs.len() {
        return Err(io::Error::from(Error::INVALID_ARGUMENT));
    }
    // Nothing here is zeroed first: the kernel writes the names, and each
    // header is written whole before the call.
    let mut names = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; RECV_BATCH];
    let name_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let mut ahead_iov = libc::iovec { iov_base: ahead.as_mut_ptr().cast(), iov_len: ahead.len() };
    let base: *mut libc::iovec = bufs.as_mut_ptr().cast();
    let mut msgs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; RECV_BATCH];
    let mut start = 0;
    for (i, (m, name)) in msgs.iter_mut().zip(names.iter_mut()).take(n).enumerate() {
        let (iov, iovlen) = match counts.get(i) {
            // SAFETY: start + c <= bufs.len() (the counts sum to it), so the
            // pointer stays inside `bufs`; `IoSliceMut` is ABI-compatible
            // with `iovec` on Unix (documented by std).
            Some(&c) => (unsafe { base.add(start) }, c),
            None => (&raw mut ahead_iov, 1),
        };
        start += counts.get(i).copied().unwrap_or(0);
        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_name = name.as_mut_ptr().cast();
        hdr.msg_namelen = name_len;
        hdr.msg_iov = iov;
        hdr.msg_iovlen = iovlen as _;
        m.write(libc::mmsghdr { msg_hdr: hdr, msg_len: 0 });
    }
    // SAFETY: the first `n` headers are initialised and point into `bufs`,
    // `ahead_iov`/`ahead` and `names`, all alive and unmoved for the call;
    // the descriptor is non-blocking, so the call returns the datagrams
    // already queued.
    let received = retry(|| {
        cvt(unsafe { libc::recvmmsg(sock.as_raw_fd(), msgs.as_mut_ptr().cast(), n as u32, 0, std::ptr::null_mut()) })
    })? as usize;
    let k = received.min(n);
    for ((m, name), out) in msgs.iter().zip(&names).zip(got.iter_mut()).take(k) {
        // SAFETY: the first `k` headers were initialised above, and the
        // kernel wrote each one's `msg_len` and `msg_namelen` bytes of its name.
        let m = unsafe { m.assume_init_ref() };
        // SAFETY: as just said: `msg_namelen` bytes of the name are initialised.
        let from = unsafe { ip_addr(name.as_ptr(), m.msg_hdr.msg_namelen) };
        *out = (m.msg_len as usize, from);
    }
    Ok(k)
}

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
        Readiness::Read => libc::POLLIN | libc::POLLRDHUP,
        Readiness::Write => libc::POLLOUT,
    };
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and we pass a count of 1.
    retry(|| cvt(unsafe { libc::poll(&mut pfd, 1, -1) }))?;
    Ok(matches!(what, Readiness::Read) && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0)
}

/// Whether `fd` reports a hang-up now (`POLLHUP`), without waiting: a TCP
/// socket still connecting does not, one whose connect failed does.
pub(crate) fn hung_up(fd: RawFd) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd, events: 0, revents: 0 };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and we pass a count of 1.
    let n = retry(|| cvt(unsafe { libc::poll(&mut pfd, 1, 0) }))?;
    Ok(n > 0 && pfd.revents & libc::POLLHUP != 0)
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
