//! The batch calls on Linux: `recvmmsg`, `sendmmsg` and UDP segmentation
//! offload (`UDP_SEGMENT`).

use super::{Part, RECV_BATCH, SEND_BATCH, batch_fits, cvt, ip_addr, retry};
use crate::error::Error;
use socket2::{SockAddr, Socket};
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

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
    if !batch_fits(bufs.len(), counts, n, got.len()) {
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
