//! The batch calls where `recvmmsg`, `sendmmsg` and `UDP_SEGMENT` are not
//! to be had (macOS; the BSDs, whose `recvmmsg` is not used yet): one
//! `recvmsg` or `sendmsg` per datagram, with the results the Linux calls
//! give, so the reactor above is the same.

use super::{Part, SEND_BATCH, batch_fits, cvt, ip_addr, retry};
use crate::error::Error;
use socket2::{SockAddr, Socket};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Segmentation offload is Linux's: refused (`EOPNOTSUPP`, which the
/// reactor takes as "send them one by one").
pub(crate) fn send_segments(_sock: &Socket, _buf: &[u8], _dest: Option<&SockAddr>, _segment: u16) -> io::Result<usize> {
    Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
}

/// Sends each part with its own `sendmsg`, in order, until one fails.
/// Returns how many were sent (at least one); an error means the first
/// one failed, as with `sendmmsg`.
pub(crate) fn send_many(sock: &Socket, buf: &[u8], parts: &[Part<'_>]) -> io::Result<usize> {
    if parts.len() > SEND_BATCH {
        return Err(io::Error::from(Error::INVALID_ARGUMENT));
    }
    for (i, p) in parts.iter().enumerate() {
        let data = [IoSlice::new(&buf[p.start..p.start + p.len])];
        match super::send(sock, &data, p.dest, 0) {
            Ok(_) => {}
            Err(e) if i == 0 => return Err(e),
            Err(_) => return Ok(i),
        }
    }
    Ok(parts.len())
}

/// Receives into several receives' scatter lists plus `ahead`, one
/// `recvmsg` each, until the socket would block: the results of the Linux
/// `recv_many` (see there).
pub(crate) fn recv_many(
    sock: &Socket,
    bufs: &mut [IoSliceMut<'_>],
    counts: &[usize],
    ahead: &mut [u8],
    got: &mut [(usize, Option<SocketAddr>)],
) -> io::Result<usize> {
    let n = counts.len() + 1;
    if !batch_fits(bufs.len(), counts, n, got.len()) {
        return Err(io::Error::from(Error::INVALID_ARGUMENT));
    }
    let mut rest = bufs;
    for (i, &c) in counts.iter().enumerate() {
        let (list, tail) = std::mem::take(&mut rest).split_at_mut(c);
        rest = tail;
        match recv_one(sock, list, 0) {
            Ok((len, from, _)) => got[i] = (len, from),
            // A later failure stays for the next call (the datagrams so far are the result).
            Err(e) if i == 0 => return Err(e),
            Err(_) => return Ok(i),
        }
    }
    let k = counts.len();
    match recv_one(sock, &mut [IoSliceMut::new(ahead)], 0) {
        Ok((len, from, _)) => {
            got[k] = (len, from);
            Ok(k + 1)
        }
        Err(e) if k == 0 => Err(e),
        Err(_) => Ok(k),
    }
}

/// One `recvmsg` into `bufs`: the length, the sender, and whether the
/// datagram was longer than the buffers (`MSG_TRUNC`).
pub(super) fn recv_one(
    sock: &Socket,
    bufs: &mut [IoSliceMut<'_>],
    flags: i32,
) -> io::Result<(usize, Option<SocketAddr>, bool)> {
    let mut name = MaybeUninit::<libc::sockaddr_storage>::uninit();
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = name.as_mut_ptr().cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = bufs.as_mut_ptr().cast(); // IoSliceMut is an iovec on Unix
    msg.msg_iovlen = bufs.len() as _;
    // SAFETY: `msg` points to the name storage and the iovecs (the caller's
    // writable buffers), all alive across the call.
    let n = retry(|| cvt(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) }))? as usize;
    // SAFETY: the kernel wrote `msg_namelen` bytes of address into `name`.
    let from = unsafe { ip_addr(name.as_ptr(), msg.msg_namelen) };
    Ok((n, from, msg.msg_flags & libc::MSG_TRUNC != 0))
}
