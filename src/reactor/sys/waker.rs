//! Cross-thread wake-up of a reactor: an eventfd that is written only when the reactor is about to sleep, so a
//! stream of publishes to a busy reactor costs no syscalls.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub struct Waker {
    fd: RawFd,
    sleeping: AtomicBool,
    /// Eventfd writes: times a sender woke the reactor from sleep.
    wakeups: AtomicU64,
}

impl Waker {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Waker {
            fd,
            sleeping: AtomicBool::new(false),
            wakeups: AtomicU64::new(0),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Called by a sender after queueing a command (see src/hub/outbox.rs for why no command is missed).
    pub fn wake(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd. A full counter (EAGAIN) still leaves it
            // readable, which is all that matters.
            unsafe { libc::write(self.fd, (&one as *const u64).cast(), 8) };
        }
    }

    /// Eventfd writes so far.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Called by the reactor before it blocks; it must then re-check its queue before sleeping.
    pub fn arm(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
    }

    pub fn disarm(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Consumes a wake-up.
    pub fn drain(&self) {
        let mut buf: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        unsafe { libc::read(self.fd, (&mut buf as *mut u64).cast(), 8) };
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor and close it once.
        unsafe { libc::close(self.fd) };
    }
}
