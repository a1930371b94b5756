//! The metadata calls where only the portable part is read (macOS and the
//! BSDs, for now): a receive with metadata gets its length, sender and
//! truncation; the switches, sending with control messages and the error
//! queue are refused (`Unsupported`, `EOPNOTSUPP`). Their control messages
//! differ from Linux's (`IP_RECVDSTADDR`, `IP_RECVTTL` as a byte, ...) and
//! are left for when they can be tested on those systems.

use super::super::batch::recv_one;
use super::{ErrInfo, IntOption, MsgInfo, SendInfo, Switch};
use socket2::{SockAddr, Socket};
use std::io::{self, IoSlice, IoSliceMut};

/// The switches' options: none here.
pub(crate) mod switch {
    use super::Switch;
    pub(crate) const PKTINFO: Option<Switch> = None;
    pub(crate) const ECN: Option<Switch> = None;
    pub(crate) const TTL: Option<Switch> = None;
    pub(crate) const TIMESTAMPS: Option<Switch> = None;
    pub(crate) const GRO: Option<Switch> = None;
    pub(crate) const RECV_ERRORS: Option<Switch> = None;
}

/// `set_dont_fragment`'s options: not here yet.
pub(crate) fn dont_fragment(_on: bool) -> Option<(IntOption, IntOption)> {
    None
}

/// Receives one datagram into `bufs`: its length, sender and truncation.
pub(crate) fn recv_msg(sock: &Socket, bufs: &mut [IoSliceMut<'_>], flags: i32) -> io::Result<MsgInfo> {
    let (len, from, truncated) = recv_one(sock, bufs, flags)?;
    Ok(MsgInfo { len, from, truncated, ..MsgInfo::default() })
}

/// Receives into several receives' scatter lists, one `recvmsg` each,
/// until the socket would block (see the Linux `recv_msg_many`).
pub(crate) fn recv_msg_many(
    sock: &Socket,
    bufs: &mut [IoSliceMut<'_>],
    counts: &[usize],
    infos: &mut [MsgInfo],
) -> io::Result<usize> {
    if !super::super::batch_fits(bufs.len(), counts, counts.len(), infos.len()) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut rest = bufs;
    for (i, &c) in counts.iter().enumerate() {
        let (list, tail) = std::mem::take(&mut rest).split_at_mut(c);
        rest = tail;
        match recv_msg(sock, list, 0) {
            Ok(info) => infos[i] = info,
            Err(e) if i == 0 => return Err(e),
            Err(_) => return Ok(i),
        }
    }
    Ok(counts.len())
}

/// Sends `bufs` as one datagram to `dest` (or the connected peer); a
/// source address, an ECN mark or a segment size is refused here.
pub(crate) fn send_msg(
    sock: &Socket,
    bufs: &[IoSlice<'_>],
    dest: Option<&SockAddr>,
    info: &SendInfo,
) -> io::Result<usize> {
    if *info != SendInfo::default() {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    super::super::send(sock, bufs, dest, 0)
}

/// There is no error queue here: `set_recv_errors` is refused, so this is
/// never asked.
pub(crate) fn recv_err(_sock: &Socket) -> io::Result<ErrInfo> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}
