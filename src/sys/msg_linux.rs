//! The metadata calls on Linux: control messages, `recvmmsg` with a
//! control buffer per message, the error queue (`MSG_ERRQUEUE`).

use super::super::{cvt, ip_addr, retry};
use super::{ErrInfo, IntOption, MsgInfo, SendInfo, Switch};
use socket2::{SockAddr, Socket};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::{MaybeUninit, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

/// Room for every control message a receive can carry here (pktinfo,
/// TOS, TTL, timestamp, GRO), each well under 64 bytes with its header.
const CONTROL: usize = 256;

/// The switches' options (`None` where a system has none).
pub(crate) mod switch {
    use super::Switch;
    pub(crate) const PKTINFO: Option<Switch> =
        Some(((libc::IPPROTO_IP, libc::IP_PKTINFO), (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)));
    pub(crate) const ECN: Option<Switch> =
        Some(((libc::IPPROTO_IP, libc::IP_RECVTOS), (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS)));
    pub(crate) const TTL: Option<Switch> =
        Some(((libc::IPPROTO_IP, libc::IP_RECVTTL), (libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT)));
    pub(crate) const TIMESTAMPS: Option<Switch> =
        Some(((libc::SOL_SOCKET, libc::SO_TIMESTAMPNS), (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS)));
    pub(crate) const GRO: Option<Switch> = Some(((libc::SOL_UDP, libc::UDP_GRO), (libc::SOL_UDP, libc::UDP_GRO)));
    pub(crate) const RECV_ERRORS: Option<Switch> =
        Some(((libc::IPPROTO_IP, libc::IP_RECVERR), (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)));
}

/// The options of `set_dont_fragment(on)`: (level, name, value) for IPv4
/// (`IP_PMTUDISC_DO`, or the default `IP_PMTUDISC_WANT`) and for IPv6
/// (`IPV6_DONTFRAG`).
pub(crate) fn dont_fragment(on: bool) -> Option<(IntOption, IntOption)> {
    let v4 = if on { libc::IP_PMTUDISC_DO } else { libc::IP_PMTUDISC_WANT };
    Some(((libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, v4), (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, i32::from(on))))
}

/// Calls `f(level, type, data, payload length)` for each control message
/// the kernel placed in `msg`.
///
/// # Safety
/// `msg` must come from a successful `recvmsg`: its control buffer holds
/// `msg_controllen` bytes of well-formed control messages.
unsafe fn each_cmsg(msg: &libc::msghdr, mut f: impl FnMut(i32, i32, *const u8, usize)) {
    // SAFETY: the caller's promise; CMSG_FIRSTHDR/CMSG_NXTHDR stay within
    // the control buffer and each payload length is bounded by `cmsg_len`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            let data = libc::CMSG_DATA(cmsg);
            let payload = (c.cmsg_len as usize).saturating_sub(data as usize - cmsg as usize);
            f(c.cmsg_level, c.cmsg_type, data, payload);
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
}

/// Receives one datagram into `bufs` with its metadata.
pub(crate) fn recv_msg(sock: &Socket, bufs: &mut [IoSliceMut<'_>], flags: i32) -> io::Result<MsgInfo> {
    let mut control = [MaybeUninit::<u64>::uninit(); CONTROL / 8];
    let mut name = MaybeUninit::<libc::sockaddr_storage>::uninit();
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = name.as_mut_ptr().cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = bufs.as_mut_ptr().cast(); // IoSliceMut is an iovec on Unix
    msg.msg_iovlen = bufs.len() as _;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL as _;
    // SAFETY: `msg` points to the name storage, the iovecs (which describe
    // the caller's buffers, writable, for the duration of the call) and the
    // control buffer, all alive across the call.
    let n = retry(|| cvt(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) }))? as usize;
    // SAFETY: `msg` comes from the recvmsg above, which wrote `msg_namelen`
    // bytes of the name.
    Ok(unsafe { read_info(&msg, name.as_ptr(), n) })
}

/// Control space for one message of a batch, aligned as `cmsghdr` needs.
type Control = [MaybeUninit<u64>; CONTROL / 8];

/// `recvmmsg` with control messages: message `i` fills the next `counts[i]`
/// slices of `bufs`, and its length, sender and metadata go to `infos[i]`.
/// Returns how many datagrams arrived (at least one); fewer than
/// `counts.len()` means the socket is drained. (No read-ahead slot: a
/// datagram kept for later would have to keep its metadata too.)
pub(crate) fn recv_msg_many(
    sock: &Socket,
    bufs: &mut [IoSliceMut<'_>],
    counts: &[usize],
    infos: &mut [MsgInfo],
) -> io::Result<usize> {
    const MAX: usize = super::super::RECV_BATCH;
    let n = counts.len();
    if !super::super::batch_fits(bufs.len(), counts, n, infos.len()) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut names = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; MAX];
    let mut controls: [Control; MAX] = [const { [MaybeUninit::<u64>::uninit(); CONTROL / 8] }; MAX];
    let mut msgs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; MAX];
    let base: *mut libc::iovec = bufs.as_mut_ptr().cast();
    let mut start = 0;
    for (((m, name), control), &c) in msgs.iter_mut().zip(names.iter_mut()).zip(controls.iter_mut()).zip(counts) {
        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_name = name.as_mut_ptr().cast();
        hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: start + c <= bufs.len() (the counts sum to it), so the
        // pointer stays inside `bufs`; `IoSliceMut` is an `iovec` on Unix.
        hdr.msg_iov = unsafe { base.add(start) };
        hdr.msg_iovlen = c as _;
        hdr.msg_control = (control as *mut Control).cast();
        hdr.msg_controllen = CONTROL as _;
        start += c;
        m.write(libc::mmsghdr { msg_hdr: hdr, msg_len: 0 });
    }
    // SAFETY: the first `n` headers are initialised and point into `bufs`,
    // `names` and `controls`, all alive and unmoved for the call; the
    // descriptor is non-blocking.
    let received = retry(|| {
        cvt(unsafe { libc::recvmmsg(sock.as_raw_fd(), msgs.as_mut_ptr().cast(), n as u32, 0, std::ptr::null_mut()) })
    })? as usize;
    let k = received.min(n);
    for ((m, name), out) in msgs.iter().zip(&names).zip(infos.iter_mut()).take(k) {
        // SAFETY: the first `k` headers were initialised above and filled by
        // the kernel: `msg_len`, the name's `msg_namelen` bytes, and
        // `msg_controllen` bytes of control messages.
        *out = unsafe {
            let m = m.assume_init_ref();
            read_info(&m.msg_hdr, name.as_ptr(), m.msg_len as usize)
        };
    }
    Ok(k)
}

/// What a received message says of its datagram: `len` bytes arrived, from
/// the sender in `name`, with the control messages in `msg`.
///
/// # Safety
/// `msg` must come from a successful `recvmsg`/`recvmmsg` that wrote
/// `msg_namelen` bytes of address at `name` and `msg_controllen` bytes of
/// control messages.
#[inline(always)]
unsafe fn read_info(msg: &libc::msghdr, name: *const libc::sockaddr_storage, len: usize) -> MsgInfo {
    let mut info = MsgInfo {
        len,
        // SAFETY: the caller's promise on the name.
        from: unsafe { ip_addr(name, msg.msg_namelen) },
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        ..MsgInfo::default()
    };
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        log::debug!("control messages truncated: some metadata is missing");
    }
    // SAFETY: the caller's promise on the control messages; each payload
    // is read unaligned, within its length.
    unsafe {
        each_cmsg(msg, |level, kind, data, payload| {
            let int = || (payload >= size_of::<libc::c_int>()).then(|| data.cast::<libc::c_int>().read_unaligned());
            match (level, kind) {
                // The local address a reply can leave from (for a unicast
                // datagram its destination; for a broadcast one the
                // interface's address).
                (libc::IPPROTO_IP, libc::IP_PKTINFO) if payload >= size_of::<libc::in_pktinfo>() => {
                    let p = data.cast::<libc::in_pktinfo>().read_unaligned();
                    info.local = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(p.ipi_spec_dst.s_addr))));
                    info.ifindex = Some(p.ipi_ifindex as u32);
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if payload >= size_of::<libc::in6_pktinfo>() => {
                    let p = data.cast::<libc::in6_pktinfo>().read_unaligned();
                    info.local = Some(IpAddr::V6(Ipv6Addr::from(p.ipi6_addr.s6_addr)));
                    info.ifindex = Some(p.ipi6_ifindex);
                }
                // IPv4 hands the TOS over as one byte, IPv6 the class as an int.
                (libc::IPPROTO_IP, libc::IP_TOS) if payload >= 1 => info.tos = Some(data.read()),
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => info.tos = int().map(|v| v as u8),
                (libc::IPPROTO_IP, libc::IP_TTL) => info.ttl = int().map(|v| v as u8),
                (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => info.ttl = int().map(|v| v as u8),
                (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) if payload >= size_of::<libc::timespec>() => {
                    let t = data.cast::<libc::timespec>().read_unaligned();
                    let since = Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32);
                    info.timestamp = SystemTime::UNIX_EPOCH.checked_add(since);
                }
                (libc::SOL_UDP, libc::UDP_GRO) => info.segment_size = int().map(|v| v.max(0) as usize),
                _ => {}
            }
        });
    }
    // A dual-stack socket hears of IPv4 traffic in both families: report
    // the local address in the sender's (IPv4 mapped into IPv6), so that a
    // reply can name it.
    if let (Some(SocketAddr::V6(_)), Some(IpAddr::V4(v4))) = (info.from, info.local) {
        info.local = Some(IpAddr::V6(v4.to_ipv6_mapped()));
    }
    info
}

/// Sends `bufs` as one datagram to `dest` (or the connected peer) with the
/// control messages `info` asks for.
pub(crate) fn send_msg(
    sock: &Socket,
    bufs: &[IoSlice<'_>],
    dest: Option<&SockAddr>,
    info: &SendInfo,
) -> io::Result<usize> {
    let mut control = [0u64; CONTROL / 8];
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some(d) = dest {
        msg.msg_name = d.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = d.len();
    }
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec; // IoSlice is an iovec on Unix
    msg.msg_iovlen = bufs.len() as _;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL as _;
    // The source in the destination's family: an IPv4 address travels
    // mapped to an IPv4-mapped destination of a dual-stack socket, and a
    // mapped one unmapped to an IPv4 destination; any other mismatch is
    // an invalid argument. (A connected socket's family is not looked up:
    // the kernel then ignores a source of the other family.)
    let from_ip = match (info.from_ip, dest.map(|d| d.is_ipv6())) {
        (Some(IpAddr::V4(v4)), Some(true)) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
        (Some(IpAddr::V6(v6)), Some(false)) => match v6.to_ipv4_mapped() {
            Some(v4) => Some(IpAddr::V4(v4)),
            None => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        },
        (ip, _) => ip,
    };
    let mut used = 0usize;
    // SAFETY: every header written lies within `control` (CONTROL bytes;
    // the four possible messages need at most 4 * 40 bytes), placed by
    // CMSG_FIRSTHDR/CMSG_NXTHDR over a zeroed buffer of the declared length
    // (a null header, which cannot happen at these sizes, is skipped);
    // payloads are written unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        let mut put = |level: i32, kind: i32, len: usize, write: &dyn Fn(*mut u8)| {
            if cmsg.is_null() {
                return;
            }
            (*cmsg).cmsg_level = level;
            (*cmsg).cmsg_type = kind;
            (*cmsg).cmsg_len = libc::CMSG_LEN(len as u32) as _;
            write(libc::CMSG_DATA(cmsg));
            used += libc::CMSG_SPACE(len as u32) as usize;
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        };
        match from_ip {
            Some(IpAddr::V4(ip)) => {
                let p = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr { s_addr: u32::from(ip).to_be() },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                put(libc::IPPROTO_IP, libc::IP_PKTINFO, size_of::<libc::in_pktinfo>(), &|d| {
                    d.cast::<libc::in_pktinfo>().write_unaligned(p)
                });
            }
            Some(IpAddr::V6(ip)) => {
                let p = libc::in6_pktinfo { ipi6_addr: libc::in6_addr { s6_addr: ip.octets() }, ipi6_ifindex: 0 };
                put(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, size_of::<libc::in6_pktinfo>(), &|d| {
                    d.cast::<libc::in6_pktinfo>().write_unaligned(p)
                });
            }
            None => {}
        }
        // Both levels: each path of the kernel reads its own and skips the
        // other's, and an IPv4-mapped destination of a dual-stack socket
        // takes the IPv4 path.
        if let Some(tos) = info.tos {
            for (level, kind) in [(libc::IPPROTO_IP, libc::IP_TOS), (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)] {
                put(level, kind, size_of::<libc::c_int>(), &|d| d.cast::<libc::c_int>().write_unaligned(tos.into()));
            }
        }
        if let Some(seg) = info.segment {
            put(libc::SOL_UDP, libc::UDP_SEGMENT, size_of::<u16>(), &|d| d.cast::<u16>().write_unaligned(seg));
        }
    }
    msg.msg_controllen = used as _;
    if used == 0 {
        msg.msg_control = std::ptr::null_mut();
    }
    // SAFETY: `msg` and everything it points to (name, iovecs and their
    // buffers, control) are valid for the duration of the call.
    retry(|| cvt(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })).map(|n| n as usize)
}

/// Takes the oldest error of the socket's error queue without waiting:
/// `WouldBlock` when it is empty.
pub(crate) fn recv_err(sock: &Socket) -> io::Result<ErrInfo> {
    let mut control = [MaybeUninit::<u64>::uninit(); CONTROL / 8];
    let mut name = MaybeUninit::<libc::sockaddr_storage>::uninit();
    // The failed datagram's bytes come back too; they are not wanted.
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: byte.len() };
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = name.as_mut_ptr().cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL as _;
    // SAFETY: `msg` points to the name storage, the one-byte iovec and the
    // control buffer, all alive across the call.
    retry(|| cvt(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) }))?;
    // SAFETY: the kernel wrote `msg_namelen` bytes of address into `name`.
    let mut info =
        ErrInfo { dest: unsafe { ip_addr(name.as_ptr(), msg.msg_namelen) }, reporter: None, errno: 0, mtu: None };
    // SAFETY: `msg` comes from the recvmsg above; the extended error and
    // the offender's address that follows it are copied out unaligned,
    // within the message's length.
    unsafe {
        each_cmsg(&msg, |level, kind, data, payload| {
            let ours = matches!(
                (level, kind),
                (libc::IPPROTO_IP, libc::IP_RECVERR) | (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
            );
            if ours && payload >= size_of::<libc::sock_extended_err>() {
                let ee = data.cast::<libc::sock_extended_err>().read_unaligned();
                info.errno = ee.ee_errno as i32;
                info.mtu = (info.errno == libc::EMSGSIZE).then_some(ee.ee_info);
                // The offender's address follows (SO_EE_OFFENDER), when known.
                let rest = payload - size_of::<libc::sock_extended_err>();
                let mut storage: libc::sockaddr_storage = std::mem::zeroed();
                let n = rest.min(size_of::<libc::sockaddr_storage>());
                std::ptr::copy_nonoverlapping(
                    data.add(size_of::<libc::sock_extended_err>()),
                    (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                    n,
                );
                info.reporter = ip_addr(&storage, n as libc::socklen_t).map(|a| a.ip());
            }
        });
    }
    Ok(info)
}
