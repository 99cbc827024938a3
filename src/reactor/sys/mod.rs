//! The reactor's OS layer, in one place: readiness, accepts and batched writes (a [`Poller`] backend: epoll or io_uring,
//! chosen at start-up by [`probe`]), the cross-thread [`Waker`] (an eventfd) and socket calls ([`net`]). The event
//! loop is generic over the [`Poller`], so each backend is an implementation of this trait, not a fork of the
//! loop. The HTTP API (src/api/, on the reactors) uses its socket calls for the sockets it serves itself.

mod epoll;
pub mod net;
pub mod probe;
mod uring;
mod waker;

pub use epoll::Epoll;
pub use uring::Uring;
pub use waker::Waker;

use std::io;
use std::net::IpAddr;
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

/// One connection's write in a batch: `iov` is its range in the batch's iovec array. With `zerocopy` set (on a
/// backend whose [`Poller::zerocopy`] is [`ZeroCopy::Ring`]) the kernel reads the pages instead of copying them,
/// and a [`Notification`] with this cookie (below 2^52) says when it has let go of them.
#[derive(Debug, Clone)]
pub struct WriteOp {
    pub fd: RawFd,
    pub iov: std::ops::Range<usize>,
    pub zerocopy: Option<u64>,
}

/// How a backend sends without copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroCopy {
    /// `sendmsg(MSG_ZEROCOPY)` by the reactor; notifications on each socket's error queue.
    Socket,
    /// Zero-copy ops in the write batch ([`WriteOp::zerocopy`]); notifications from the backend
    /// ([`Poller::take_notifications`]).
    Ring,
}

/// The kernel let go of the pages of the zero-copy write `cookie` (`copied`: it had copied them after all).
#[derive(Debug, Clone, Copy)]
pub struct Notification {
    pub cookie: u64,
    pub copied: bool,
}

/// Writes per [`Poller::write_batch`] call, at most.
pub const MAX_BATCH: usize = 512;

pub trait Poller: Sized {
    /// A poller that reports up to `capacity` ready sockets per wait.
    fn new(capacity: usize) -> io::Result<Self>;
    /// Registers `fd` for edge-triggered read and write readiness under `token` (tokens are below 2^32 - 64 or
    /// within 64 of `u64::MAX`).
    fn add(&mut self, fd: RawFd, token: u64) -> io::Result<()>;
    /// Registers a listening socket under `token`, reported readable when connections wait for [`Self::accept`].
    /// Epoll watches it like any socket; io_uring accepts ahead of the reactor (one multishot accept).
    fn add_listener(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        self.add(fd, token)
    }
    /// One connection of the listener `fd` (registered with [`Self::add_listener`]): its socket (non-blocking,
    /// close-on-exec, TCP_NODELAY) and its peer's IP address; EAGAIN when none waits, and `accept4`'s errors.
    fn accept(&mut self, fd: RawFd) -> io::Result<(RawFd, Option<IpAddr>)> {
        net::accept_peer(fd)
    }
    /// Stops watching `fd`, which stays open.
    fn remove(&mut self, fd: RawFd) -> io::Result<()>;
    /// Called with the sockets (descriptor and token) about to be closed. Closing a socket ends its epoll
    /// registration, so epoll has nothing to do; an io_uring poll must be cancelled first.
    fn forget(&mut self, _socks: &[(RawFd, u64)]) -> io::Result<()> {
        Ok(())
    }
    /// Waits up to `timeout_ms` (-1 = forever) and fills `out` with ready tokens.
    fn wait(&mut self, out: &mut Vec<Ready>, timeout_ms: i32) -> io::Result<()>;

    /// How zero-copy sends work on this backend (None: they cannot).
    fn zerocopy(&self) -> Option<ZeroCopy> {
        Some(ZeroCopy::Socket)
    }
    /// Moves the zero-copy notifications received so far into `out`.
    fn take_notifications(&mut self, _out: &mut Vec<Notification>) {}

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
            debug_assert!(op.zerocopy.is_none(), "a batch write that copies");
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
