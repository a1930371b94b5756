//! Process-wide signal handling for `SignalSet`: one handler per signal
//! number, installed with `sigaction` while any set holds the signal and
//! restored to the previous action when the last one lets go (Asio restores
//! the default the same way).
//!
//! The handler does only what is async-signal-safe: it walks a fixed table of
//! atomics and writes the signal's number, as one byte, to the non-blocking
//! socket of every set that holds it. Each set reads its socket on its own
//! loop, so sets on several contexts (and threads) each see every signal.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Registrations (set, signal) that may exist at once in the process.
const SLOTS: usize = 1024;

/// Signal numbers are below this (Linux: `SIGRTMAX` is 64).
const NSIG: usize = 65;

/// A slot is 0 when free, else `signal << 32 | fd`, so the handler reads a
/// signal and its descriptor in one load.
static SLOT: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

/// Per slot: occurrences that found the socket full (see `on_signal`),
/// not yet taken by [`Registration::take_overflow`].
static OVERFLOW: [AtomicU32; SLOTS] = [const { AtomicU32::new(0) }; SLOTS];

/// Written after an overflow to wake the reader; never a signal number.
const WAKE: u8 = 0;

/// Slots at or above this are free: the handler looks no further.
static HIGH: AtomicUsize = AtomicUsize::new(0);

/// Handlers running now, on any thread. A descriptor taken out of the table
/// is not closed until this has been seen at zero, so a late handler cannot
/// write to a descriptor number that has been reused.
static INFLIGHT: AtomicUsize = AtomicUsize::new(0);

/// What only registration and removal touch, never the handler.
struct Table {
    /// Registrations per signal.
    count: [u32; NSIG],
    /// The action each signal had before ours was installed.
    previous: [Option<libc::sigaction>; NSIG],
}

// SAFETY: `libc::sigaction` is plain data (a handler address, a mask and
// flags); it is only copied back into the kernel under the mutex.
unsafe impl Send for Table {}

static TABLE: Mutex<Table> = Mutex::new(Table { count: [0; NSIG], previous: [None; NSIG] });

fn table() -> std::sync::MutexGuard<'static, Table> {
    // A panic while holding the lock leaves the table consistent (every
    // update is one store), so a poisoned lock is still usable.
    TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: `errno_location` is this thread's errno; saving and restoring
    // it keeps the interrupted code's errno intact across send(2).
    let errno = unsafe { *super::errno_location() };
    INFLIGHT.fetch_add(1, Ordering::SeqCst);
    let high = HIGH.load(Ordering::SeqCst);
    let byte = sig as u8;
    for (i, slot) in SLOT[..high].iter().enumerate() {
        let v = slot.load(Ordering::SeqCst);
        if v != 0 && (v >> 32) as i32 == sig {
            let fd = v as u32 as i32;
            // SAFETY: as above.
            if !send_byte(fd, byte) && unsafe { *super::errno_location() } == libc::EAGAIN {
                // Full socket: count the occurrence instead, then make sure
                // the reader comes back for the count (if the wake does not
                // fit either, the reader has bytes left to read, after which
                // it takes the count).
                OVERFLOW[i].fetch_add(1, Ordering::SeqCst);
                send_byte(fd, WAKE);
            }
        }
    }
    INFLIGHT.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *super::errno_location() = errno };
}

/// One byte to `fd`; false if it was not sent (errno says why).
fn send_byte(fd: i32, byte: u8) -> bool {
    // SAFETY: the descriptor stays open while it is in the table and until
    // INFLIGHT has been seen at zero after its removal; send(2) is
    // async-signal-safe. MSG_DONTWAIT: a full buffer fails instead of
    // blocking the handler. MSG_NOSIGNAL: a reading end already closed (the
    // context is gone) fails with EPIPE instead of raising SIGPIPE, which
    // would end a process that has not ignored it, and spin forever in a set
    // that holds SIGPIPE.
    unsafe { libc::send(fd, (&byte as *const u8).cast(), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) == 1 }
}

/// The highest signal number: `SIGRTMAX` on Linux; elsewhere the classic
/// signals only (macOS has no real-time signals).
fn max_signal() -> i32 {
    #[cfg(target_os = "linux")]
    return libc::SIGRTMAX();
    #[cfg(not(target_os = "linux"))]
    return 31;
}

/// Signals a set may not take: those that cannot be caught, and the ones
/// the kernel raises for a faulting instruction (returning from a handler
/// would run it again).
fn refused(sig: i32) -> bool {
    matches!(sig, libc::SIGKILL | libc::SIGSTOP | libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE)
}

/// A signal's delivery to one descriptor; dropping it stops the delivery and
/// waits until no handler can still be writing to the descriptor.
pub(crate) struct Registration {
    slot: usize,
    sig: i32,
}

/// Delivers `sig` to `fd` (a non-blocking socket) as one byte per signal,
/// until the registration is dropped. The descriptor must outlive it.
pub(crate) fn register(sig: i32, fd: BorrowedFd<'_>) -> io::Result<Registration> {
    if sig <= 0 || sig > max_signal() || sig as usize >= NSIG || refused(sig) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("signal {sig} cannot be waited for")));
    }
    let mut t = table();
    let slot = SLOT
        .iter()
        .position(|s| s.load(Ordering::SeqCst) == 0)
        .ok_or_else(|| io::Error::other("too many signal registrations in this process"))?;
    OVERFLOW[slot].store(0, Ordering::SeqCst);
    SLOT[slot].store((sig as u64) << 32 | fd.as_raw_fd() as u32 as u64, Ordering::SeqCst);
    HIGH.fetch_max(slot + 1, Ordering::SeqCst);
    let s = sig as usize;
    if t.count[s] == 0 {
        if let Err(e) = install(sig).map(|prev| t.previous[s] = Some(prev)) {
            SLOT[slot].store(0, Ordering::SeqCst);
            return Err(e);
        }
        log::debug!("signal {sig}: handler installed");
    }
    t.count[s] += 1;
    Ok(Registration { slot, sig })
}

/// Installs `on_signal` for `sig`, returning the action it replaces.
fn install(sig: i32) -> io::Result<libc::sigaction> {
    // SAFETY: a zeroed `sigaction` is a valid value (no handler, empty mask,
    // no flags); the fields are then set as sigaction(2) describes.
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SA_RESTART: system calls that the signal interrupts elsewhere in the
    // process are restarted rather than failing with EINTR.
    new.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa_mask` is a valid sigset_t to fill.
    unsafe { libc::sigfillset(&mut new.sa_mask) };
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to valid, initialised sigaction structures.
    if unsafe { libc::sigaction(sig, &new, &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(old)
}

impl Registration {
    /// The signal number.
    pub(crate) fn signal(&self) -> i32 {
        self.sig
    }

    /// Occurrences that found the socket full since the last call. Read
    /// after the socket has been drained: they came after what it held.
    pub(crate) fn take_overflow(&self) -> u32 {
        OVERFLOW[self.slot].swap(0, Ordering::SeqCst)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut t = table();
        SLOT[self.slot].store(0, Ordering::SeqCst);
        // A handler that read the slot before the store has raised INFLIGHT
        // before reading it; wait until every such handler has finished.
        while INFLIGHT.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        let s = self.sig as usize;
        t.count[s] -= 1;
        if t.count[s] == 0
            && let Some(prev) = t.previous[s].take()
        {
            // SAFETY: `prev` is the action sigaction(2) returned for this
            // signal when ours was installed.
            if unsafe { libc::sigaction(self.sig, &prev, std::ptr::null_mut()) } != 0 {
                log::debug!(
                    "signal {}: restoring the previous action failed: {}",
                    self.sig,
                    io::Error::last_os_error()
                );
            } else {
                log::debug!("signal {}: previous action restored", self.sig);
            }
        }
    }
}
