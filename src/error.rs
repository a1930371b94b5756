//! `Error`: the one-word result code that every completion handler receives.

use std::fmt;
use std::io;

/// The outcome of an asynchronous operation, one word wide, like Asio's
/// `boost::system::error_code`.
///
/// `Error::NONE` means success. Positive values are the OS error numbers
/// (`errno`); the few conditions that have no OS number (`EOF`,
/// `ALREADY_OPEN`, ...) are small negative values. Convert to and from
/// [`io::Error`] with `From`/`Into`.
///
/// ```
/// use ioctx::Error;
/// let e = Error::OPERATION_ABORTED;
/// assert!(e.is_err());
/// assert!(Error::NONE.is_ok());
/// let io: std::io::Error = e.into();
/// assert_eq!(Error::from(io), e);
/// ```
///
/// A handler gets its outcome as plain arguments, `(Error, usize, ...)`.
/// [`into_result`](Self::into_result) and [`result`](Self::result) turn them
/// into an [`io::Result`], so that the handler's work can be written with
/// `?` in a function (or closure) that returns one:
///
/// ```
/// use ioctx::{Error, IoContext, net::UdpSocket};
/// use std::{cell::RefCell, io, rc::Rc};
///
/// /// What the server does with one request: any error ends it early.
/// fn answer(err: Error, n: usize, request: &[u8]) -> io::Result<Vec<u8>> {
///     let n = err.into_result(n)?;
///     let name = std::str::from_utf8(&request[..n]).map_err(io::Error::other)?;
///     Ok(format!("hello, {name}").into_bytes())
/// }
///
/// let ctx = IoContext::new()?;
/// let server = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
/// let client = UdpSocket::bind(&ctx, "127.0.0.1:0".parse().unwrap())?;
///
/// let s = server.clone();
/// server.async_receive_from(vec![0u8; 512], move |err, n, buf, from| match answer(err, n, &buf) {
///     Ok(reply) => {
///         s.async_send_to(reply, from, |err, _| assert!(err.is_ok()));
///     }
///     Err(e) => eprintln!("request from {from} dropped: {e}"),
/// });
///
/// let got = Rc::new(RefCell::new(None));
/// let g = got.clone();
/// client.async_send_to(&b"ioctx"[..], server.local_addr()?, |err, _| assert!(err.is_ok()));
/// client.async_receive_from(vec![0u8; 512], move |err, n, buf, _from| {
///     // The same in a closure: `?` returns from the closure, not the handler.
///     let reply = || -> io::Result<String> {
///         let n = err.into_result(n)?;
///         String::from_utf8(buf[..n].to_vec()).map_err(io::Error::other)
///     };
///     *g.borrow_mut() = Some(reply());
/// });
/// ctx.run();
/// assert_eq!(got.take().unwrap()?, "hello, ioctx");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Error(i32);

// Codes below zero: conditions without an errno.
const C_EOF: i32 = -1;
const C_ALREADY_OPEN: i32 = -2;
const C_OTHER: i32 = -3;
const C_NOT_FOUND: i32 = -4;

impl Error {
    /// Success.
    pub const NONE: Error = Error(0);
    /// The operation was cancelled (`ECANCELED`): `cancel()`, `close()`, a
    /// dropped last handle or [`crate::Operation::cancel`].
    pub const OPERATION_ABORTED: Error = Error(libc::ECANCELED);
    /// The socket is closed (`EBADF`).
    pub const BAD_DESCRIPTOR: Error = Error(libc::EBADF);
    /// The peer closed the stream (no OS number).
    pub const EOF: Error = Error(C_EOF);
    /// The datagram is too large for the socket (`EMSGSIZE`).
    pub const MESSAGE_SIZE: Error = Error(libc::EMSGSIZE);
    /// The peer refused the connection or a datagram was answered by an ICMP
    /// port unreachable (`ECONNREFUSED`).
    pub const CONNECTION_REFUSED: Error = Error(libc::ECONNREFUSED);
    /// No route reaches the host, or it did not answer address resolution
    /// (`EHOSTUNREACH`; an ICMP host unreachable, for datagrams).
    pub const HOST_UNREACHABLE: Error = Error(libc::EHOSTUNREACH);
    /// No route reaches the network (`ENETUNREACH`; an ICMP network
    /// unreachable, for datagrams).
    pub const NETWORK_UNREACHABLE: Error = Error(libc::ENETUNREACH);
    /// The connection was reset by the peer (`ECONNRESET`).
    pub const CONNECTION_RESET: Error = Error(libc::ECONNRESET);
    /// The socket is not connected (`ENOTCONN`), or has no destination
    /// (`EDESTADDRREQ` is mapped here too).
    pub const NOT_CONNECTED: Error = Error(libc::ENOTCONN);
    /// An argument was out of range, for example more buffers than the OS
    /// takes in one call (`EINVAL`).
    pub const INVALID_ARGUMENT: Error = Error(libc::EINVAL);
    /// The object is already open (no OS number).
    pub const ALREADY_OPEN: Error = Error(C_ALREADY_OPEN);
    /// The operation timed out (`ETIMEDOUT`).
    pub const TIMED_OUT: Error = Error(libc::ETIMEDOUT);
    /// The operation would block (`EAGAIN`); seen only from non-blocking
    /// synchronous calls, never in a completion handler.
    pub const WOULD_BLOCK: Error = Error(libc::EAGAIN);
    /// An error with no OS number and no better name.
    pub const OTHER: Error = Error(C_OTHER);
    /// `async_read_until` filled its size limit without finding the
    /// delimiter (Asio's `error::not_found`; no OS number).
    pub const NOT_FOUND: Error = Error(C_NOT_FOUND);

    /// Builds an `Error` from an OS error number.
    pub const fn from_raw_os_error(code: i32) -> Error {
        Error(code)
    }

    /// The code in one word, for packing (see `Inner::post_result`).
    #[inline]
    pub(crate) const fn code(self) -> i32 {
        self.0
    }

    /// The error of a code from [`code`](Self::code).
    #[inline]
    pub(crate) const fn from_code(code: i32) -> Error {
        Error(code)
    }

    /// True for [`Error::NONE`].
    pub const fn is_ok(self) -> bool {
        self.0 == 0
    }

    /// True for anything but [`Error::NONE`].
    pub const fn is_err(self) -> bool {
        self.0 != 0
    }

    /// The OS error number, when this error has one.
    pub const fn raw_os_error(self) -> Option<i32> {
        if self.0 > 0 { Some(self.0) } else { None }
    }

    /// `Ok(value)` for [`Error::NONE`], else this error as an [`io::Error`]
    /// (converted as by `Into<io::Error>`: the OS number is kept, so
    /// `OPERATION_ABORTED` reads back as `ECANCELED`; `EOF` has kind
    /// `UnexpectedEof`; [`Error::from`] gives the `Error` back).
    ///
    /// For a handler's result, so that its body can use `?`:
    /// `let n = err.into_result(n)?;`, or `err.into_result((n, from))?` to
    /// keep more than the length.
    ///
    /// ```
    /// use ioctx::Error;
    /// assert_eq!(Error::NONE.into_result(5_usize).unwrap(), 5);
    /// let e = Error::OPERATION_ABORTED.into_result(0_usize).unwrap_err();
    /// assert_eq!(Error::from(e), Error::OPERATION_ABORTED);
    /// let e = Error::EOF.into_result(3_usize).unwrap_err();
    /// assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    /// ```
    pub fn into_result<T>(self, value: T) -> io::Result<T> {
        if self.is_ok() { Ok(value) } else { Err(self.into()) }
    }

    /// `Ok(())` for [`Error::NONE`], else this error as an [`io::Error`]: the
    /// form of [`into_result`](Self::into_result) for handlers that get only
    /// an `Error` (timer and readiness waits, `async_connect`).
    ///
    /// ```
    /// use ioctx::Error;
    /// assert!(Error::NONE.result().is_ok());
    /// assert_eq!(Error::TIMED_OUT.result().unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    /// ```
    pub fn result(self) -> io::Result<()> {
        self.into_result(())
    }

    /// The matching [`io::ErrorKind`] (`Other` for success).
    pub fn kind(self) -> io::ErrorKind {
        match self.0 {
            0 => io::ErrorKind::Other,
            C_EOF => io::ErrorKind::UnexpectedEof,
            C_ALREADY_OPEN => io::ErrorKind::AlreadyExists,
            C_OTHER => io::ErrorKind::Other,
            C_NOT_FOUND => io::ErrorKind::InvalidData,
            code => io::Error::from_raw_os_error(code).kind(),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Error::NONE => "NONE",
            Error::OPERATION_ABORTED => "OPERATION_ABORTED",
            Error::BAD_DESCRIPTOR => "BAD_DESCRIPTOR",
            Error::EOF => "EOF",
            Error::MESSAGE_SIZE => "MESSAGE_SIZE",
            Error::CONNECTION_REFUSED => "CONNECTION_REFUSED",
            Error::HOST_UNREACHABLE => "HOST_UNREACHABLE",
            Error::NETWORK_UNREACHABLE => "NETWORK_UNREACHABLE",
            Error::CONNECTION_RESET => "CONNECTION_RESET",
            Error::NOT_CONNECTED => "NOT_CONNECTED",
            Error::INVALID_ARGUMENT => "INVALID_ARGUMENT",
            Error::ALREADY_OPEN => "ALREADY_OPEN",
            Error::TIMED_OUT => "TIMED_OUT",
            Error::WOULD_BLOCK => "WOULD_BLOCK",
            Error::OTHER => "OTHER",
            Error::NOT_FOUND => "NOT_FOUND",
            Error(code) => return write!(f, "Error({code})"),
        };
        f.write_str(name)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("success"),
            C_EOF => f.write_str("end of file"),
            C_ALREADY_OPEN => f.write_str("already open"),
            C_OTHER => f.write_str("other error"),
            C_NOT_FOUND => f.write_str("delimiter not found within the size limit"),
            code => write!(f, "{}", io::Error::from_raw_os_error(code)),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        if let Some(code) = e.raw_os_error() {
            // A destination-less send reports EDESTADDRREQ; users think of it as "not connected".
            if code == libc::EDESTADDRREQ {
                return Error::NOT_CONNECTED;
            }
            return Error(code);
        }
        if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
            return *inner;
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof => Error::EOF,
            io::ErrorKind::InvalidInput => Error::INVALID_ARGUMENT,
            io::ErrorKind::TimedOut => Error::TIMED_OUT,
            io::ErrorKind::WouldBlock => Error::WOULD_BLOCK,
            io::ErrorKind::NotConnected => Error::NOT_CONNECTED,
            io::ErrorKind::ConnectionRefused => Error::CONNECTION_REFUSED,
            io::ErrorKind::ConnectionReset => Error::CONNECTION_RESET,
            io::ErrorKind::Interrupted => Error(libc::EINTR),
            _ => Error::OTHER,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(e.kind(), e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_io_error() {
        for e in [
            Error::OPERATION_ABORTED,
            Error::EOF,
            Error::ALREADY_OPEN,
            Error::MESSAGE_SIZE,
            Error::OTHER,
            Error::NOT_FOUND,
        ] {
            let io: io::Error = e.into();
            assert_eq!(Error::from(io), e);
        }
        assert_eq!(Error::EOF.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(Error::CONNECTION_REFUSED.raw_os_error(), Some(libc::ECONNREFUSED));
        assert_eq!(Error::EOF.raw_os_error(), None);
        assert_eq!(std::mem::size_of::<Error>(), 4);
        assert_eq!(format!("{:?}", Error::MESSAGE_SIZE), "MESSAGE_SIZE");
        assert_eq!(format!("{:?}", Error::HOST_UNREACHABLE), "HOST_UNREACHABLE");
        assert_eq!(Error::from(io::Error::from_raw_os_error(libc::ENETUNREACH)), Error::NETWORK_UNREACHABLE);
        assert!(!Error::MESSAGE_SIZE.to_string().is_empty());
    }

    #[test]
    fn into_result_keeps_the_value_on_success_and_the_error_otherwise() {
        assert_eq!(Error::NONE.into_result(7usize).unwrap(), 7);
        assert_eq!(Error::NONE.into_result((3usize, "kept")).unwrap(), (3, "kept"));
        assert!(Error::NONE.result().is_ok());

        // An OS error keeps its number (as `Into<io::Error>` does).
        let e = Error::OPERATION_ABORTED.into_result(5usize).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECANCELED));
        assert_eq!(Error::from(e), Error::OPERATION_ABORTED);
        let e = Error::CONNECTION_REFUSED.result().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED));
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);

        // One without an OS number keeps its kind and comes back whole.
        let e = Error::EOF.into_result(0usize).unwrap_err();
        assert_eq!(e.raw_os_error(), None);
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(Error::from(e), Error::EOF);
        let e = Error::NOT_FOUND.result().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(Error::from(e), Error::NOT_FOUND);

        // Any error but NONE is an Err, whatever the value.
        for code in [1, libc::EAGAIN, libc::EMSGSIZE, -1, -2, -3, -4] {
            assert!(Error::from_raw_os_error(code).into_result(9usize).is_err(), "{code}");
            assert!(Error::from_raw_os_error(code).result().is_err(), "{code}");
        }
    }
}
