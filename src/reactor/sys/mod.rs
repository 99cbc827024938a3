//! The reactor's OS layer, in one place: readiness (a [`Poller`] backend — epoll today), the cross-thread
//! [`Waker`] (an eventfd) and socket calls ([`net`]). The event loop is generic over the [`Poller`], so another
//! readiness backend (io_uring) is a second implementation of this trait, not a fork of the loop. Other threads
//! (the HTTP API) use the same layer for their own sockets.

mod epoll;
pub mod net;
mod waker;

pub use epoll::Epoll;
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

pub trait Poller: Sized {
    /// A poller that reports up to `capacity` ready sockets per wait.
    fn new(capacity: usize) -> io::Result<Self>;
    /// Registers `fd` for edge-triggered read and write readiness under `token`.
    fn add(&self, fd: RawFd, token: u64) -> io::Result<()>;
    /// Stops watching `fd` (closing it does that too).
    fn remove(&self, fd: RawFd) -> io::Result<()>;
    /// Waits up to `timeout_ms` (-1 = forever) and fills `out` with ready tokens.
    fn wait(&mut self, out: &mut Vec<Ready>, timeout_ms: i32) -> io::Result<()>;
}
