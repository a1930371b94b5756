//! Every system call the crate makes on a socket, in one place: the seam a
//! simulated backend can later replace. `unsafe` lives only here.

use crate::error::Error;
use socket2::{MaybeUninitSlice, SockAddr, Socket};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

mod handler;
pub(crate) use handler::HandlerQueue;

/// Maps a non-blocking call's outcome to an operation result; `None` when it
/// would block.
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
pub(crate) fn send(
    sock: &Socket,
    bufs: &[IoSlice<'_>],
    dest: Option<&SockAddr>,
    flags: i32,
) -> io::Result<usize> {
    loop {
        let r = match dest {
            Some(addr) => sock.send_to_vectored_with_flags(bufs, addr, flags),
            None => sock.send_vectored_with_flags(bufs, flags),
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// What one `recvmsg` produced.
pub(crate) struct Received {
    pub(crate) len: usize,
    pub(crate) from: Option<SocketAddr>,
}

/// `recvmsg` into the scatter list. Retries on EINTR.
pub(crate) fn recv(
    sock: &Socket,
    bufs: &mut [IoSliceMut<'_>],
    flags: i32,
    want_from: bool,
) -> io::Result<Received> {
    let mut slices: smallvec::SmallVec<[MaybeUninitSlice<'_>; crate::buffer::INLINE_SLICES]> = bufs
        .iter_mut()
        .map(|b| {
            let b: &mut [u8] = b;
            // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and the slice is
            // already initialised. socket2 only lets the kernel write bytes into
            // it, never uninitialised ones, so it stays initialised when the
            // borrow ends. socket2 has no recvmsg over initialised buffers.
            let b: &mut [MaybeUninit<u8>] =
                unsafe { &mut *(b as *mut [u8] as *mut [MaybeUninit<u8>]) };
            MaybeUninitSlice::new(b)
        })
        .collect();
    loop {
        let r = if want_from {
            sock.recv_from_vectored_with_flags(&mut slices, flags)
                .map(|(len, _, addr)| Received {
                    len,
                    from: addr.as_socket(),
                })
        } else {
            sock.recv_vectored_with_flags(&mut slices, flags)
                .map(|(len, _)| Received { len, from: None })
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Which readiness a blocking synchronous call waits for.
#[derive(Clone, Copy)]
pub(crate) enum Readiness {
    Read,
    Write,
}

/// Blocks on `poll(2)` until `fd` is ready (or `timeout` passes). Used by the
/// synchronous socket calls, whose descriptor is non-blocking for the reactor.
pub(crate) fn wait_fd(fd: RawFd, what: Readiness, timeout: Option<Duration>) -> io::Result<bool> {
    let events = match what {
        Readiness::Read => libc::POLLIN,
        Readiness::Write => libc::POLLOUT,
    };
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    loop {
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and we pass a count of 1.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(r > 0);
    }
}

/// Bytes that can be read without blocking (`FIONREAD`; for a datagram
/// socket, the size of the next datagram).
pub(crate) fn available(sock: &Socket) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points to `n`.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}
