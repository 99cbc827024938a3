//! The reactor's OS layer, in one place: readiness and batched writes (a [`Poller`] backend: epoll or io_uring,
//! chosen at start-up by [`probe`]), the cross-thread [`Waker`] (an eventfd) and socket calls ([`net`]). The event
//! loop is generic over the [`Poller`], so each backend is an implementation of this trait, not a fork of the
//! loop. Other threads (the HTTP API) use the same layer for their own sockets.

mod epoll;
pub mod net;
pub mod probe;
mod uring;
mod waker;

pub use epoll::Epoll;
pub use uring::Uring;
pub use waker::Waker;

use std::io;
use std::os::fd::RawFd;

/// Readiness bits reported for a token.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
    /// Error or hang-up on the socket.
    pub error: bool,
}

/// One connection's write in a batch: `iov` is its range in the batch's iovec array.
#[derive(Debug, Clone)]
pub struct WriteOp {
    pub fd: RawFd,
    pub iov: std::ops::Range<usize>,
}

/// Writes per [`Poller::write_batch`] call, at most.
pub const MAX_BATCH: usize = 512;

pub trait Poller: Sized {
    /// A poller that reports up to `capacity` ready sockets per wait.
    fn new(capacity: usize) -> io::Result<Self>;
    /// Registers `fd` for edge-triggered read and write readiness under `token` (tokens are below 2^32 - 64 or
    /// within 64 of `u64::MAX`).
    fn add(&mut self, fd: RawFd, token: u64) -> io::Result<()>;
    /// Stops watching `fd`, which stays open.
    fn remove(&mut self, fd: RawFd) -> io::Result<()>;
    /// Called with the sockets (descriptor and token) about to be closed. Closing a socket ends its epoll
    /// registration, so epoll has nothing to do; an io_uring poll must be cancelled first.
    fn forget(&mut self, _socks: &[(RawFd, u64)]) -> io::Result<()> {
        Ok(())
    }
    /// Waits up to `timeout_ms` (-1 = forever) and fills `out` with ready tokens.
    fn wait(&mut self, out: &mut Vec<Ready>, timeout_ms: i32) -> io::Result<()>;

    /// Whether [`Self::write_batch`] writes many sockets in one system call, so the reactor should hand it a
    /// flush pass's writes together rather than write each connection itself.
    const BATCHES_WRITES: bool = false;
    /// Writes every op (at most [`MAX_BATCH`]) on its non-blocking socket; `results[i]` is the byte count of op
    /// `i` or a negated errno (EAGAIN when its socket is full). Every write has completed when this returns.
    fn write_batch(
        &mut self,
        ops: &[WriteOp],
        iov: &[libc::iovec],
        results: &mut Vec<i32>,
    ) -> io::Result<()> {
        results.clear();
        for op in ops {
            let vecs = &iov[op.iov.clone()];
            // SAFETY: the iovecs point into buffers the caller keeps alive across this call; writev only reads.
            let n = unsafe { libc::writev(op.fd, vecs.as_ptr(), vecs.len() as libc::c_int) };
            results.push(if n < 0 {
                -io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO)
            } else {
                n as i32
            });
        }
        Ok(())
    }
}
