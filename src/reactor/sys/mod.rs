//! The reactor's OS layer, in one place: readiness, accepts, receives and batched writes (a [`Poller`] backend: epoll
//! or io_uring, chosen at start-up by [`probe`]), the cross-thread [`Waker`] (an eventfd) and socket calls
//! ([`net`]). The event loop is generic over the [`Poller`], so each backend is an implementation of this trait,
//! not a fork of the loop. The HTTP API (src/api/, on the reactors) uses its socket calls for the sockets it serves itself.

mod buf_ring;
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
    /// Input the backend received for the connection itself (registered with [`Poller::add_receiving`]): the
    /// reactor takes it with [`Poller::take_received`], decodes it, and hands the buffer back with
    /// [`Poller::recycle`]. In the order the bytes arrived, before any `readable` of the same connection.
    pub received: Option<Received>,
}

/// A buffer of input a backend received for a connection: `len` bytes in its buffer `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub id: u16,
    pub len: u32,
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
    /// Sets up `count` receive buffers (rounded up to a power of two; 0: none) shared by the connections of
    /// [`Self::add_receiving`], before any is added. Epoll has none: the reactor reads on readiness.
    fn receive_buffers(&mut self, _count: usize) -> io::Result<()> {
        Ok(())
    }
    /// Registers a connection's socket under `token`, like [`Self::add`]. A backend that receives by itself
    /// (io_uring with provided buffers) then reports its input as [`Ready::received`] and reports it `readable`
    /// only when the reactor should read it itself (the receive ended: no buffer was free, or the peer closed);
    /// once such a read meets EAGAIN the reactor calls [`Self::drained`]. Epoll: the reactor reads on readiness.
    fn add_receiving(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        self.add(fd, token)
    }
    /// The reactor read the connection `fd` (`token`) until EAGAIN: a backend that receives by itself starts
    /// again. An error leaves the connection without input: the reactor closes it.
    fn drained(&mut self, _fd: RawFd, _token: u64) -> io::Result<()> {
        Ok(())
    }
    /// The bytes of a [`Received`] buffer (all of the buffer; its first `len` bytes are the input), lent to the
    /// reactor until it hands them back with [`Self::recycle`].
    fn take_received(&mut self, _r: Received) -> Box<[u8]> {
        Box::default()
    }
    /// Gives back a buffer from [`Self::take_received`] for the next receives.
    #[allow(clippy::boxed_local)] // the box is the backend's own buffer, handed back
    fn recycle(&mut self, _r: Received, _buf: Box<[u8]>) {}
    /// Stops watching `fd`, which stays open.
    fn remove(&mut self, fd: RawFd) -> io::Result<()>;
    /// Called with the sockets (descriptor and token) about to be closed. Closing a socket ends its epoll
    /// registration, so epoll has nothing to do; an io_uring poll and receive must be cancelled first (and input
    /// they still complete with is dropped: it is never reported for a token after this call).
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
