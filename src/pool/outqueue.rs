//! Outbound data: a per-connection queue of references to shared, immutable frame bytes, flushed with writev.

use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;

/// A complete WebSocket frame (header + payload) built once and shared across reactor threads.
pub type SharedFrame = Arc<Vec<u8>>;

/// A reactor-local handle to a shared frame: cloning it per subscriber is a plain (non-atomic) increment, so the
/// fan-out to thousands of sockets never bounces the `Arc` count between cores.
pub type OutFrame = Rc<SharedFrame>;

/// Queued frames of one connection. `head_sent` bytes of the first frame have already been written.
#[derive(Default)]
pub struct OutQueue {
    frames: std::collections::VecDeque<OutFrame>,
    head_sent: u32,
    queued: u32,
}

/// What a flush achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued was written.
    Done,
    /// The socket is full; wait for EPOLLOUT.
    Blocked,
}

/// Linux IOV_MAX.
const IOV_MAX: usize = 1024;

impl OutQueue {
    pub fn push(&mut self, frame: OutFrame) {
        self.queued = self.queued.saturating_add(frame.len() as u32);
        self.frames.push_back(frame);
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued as usize
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// True if part of the first frame is already on the wire (a frame cannot be dropped or preceded now).
    pub fn mid_frame(&self) -> bool {
        self.head_sent > 0
    }

    /// Drops everything queued; keeps a little capacity so a connection that was busy once does not hold a lot.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.frames.shrink_to(4);
        self.head_sent = 0;
        self.queued = 0;
    }

    /// Takes every queued frame (none of which was started: a queue that is never written).
    pub fn drain(&mut self) -> impl Iterator<Item = OutFrame> + '_ {
        self.head_sent = 0;
        self.queued = 0;
        self.frames.drain(..)
    }

    /// Drops every frame not yet started; a frame already partly written stays (nothing may cut into it).
    pub fn drop_unsent(&mut self) {
        if self.head_sent == 0 {
            return self.clear();
        }
        self.frames.truncate(1);
        self.frames.shrink_to(4);
        self.queued = (self.frames[0].len() - self.head_sent as usize) as u32;
    }

    /// Writes as much as the socket takes, IOV_MAX frames per writev, using `iov` as reusable scratch.
    pub fn flush(&mut self, fd: RawFd, iov: &mut Vec<libc::iovec>) -> io::Result<Flush> {
        while !self.frames.is_empty() {
            iov.clear();
            let offered = self.fill_iov(iov);
            // SAFETY: every iovec points into a frame kept alive by `self.frames` for the duration of the call,
            // and writev(2) only reads from them.
            let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(Flush::Blocked),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            self.advance(n as usize);
            if (n as usize) < offered {
                return Ok(Flush::Blocked);
            }
        }
        if self.frames.capacity() > 64 {
            // A backlog grew the ring; give the memory back now that it is drained.
            self.frames.shrink_to(4);
        }
        Ok(Flush::Done)
    }

    /// Appends one iovec per queued frame (the first from its unsent part), IOV_MAX at most, to `iov`; returns
    /// their bytes. They point into the queued frames: valid until the queue changes. A writer that sends them
    /// reports what the socket took with [`Self::consume`].
    pub fn fill_iov(&self, iov: &mut Vec<libc::iovec>) -> usize {
        let mut offset = self.head_sent as usize;
        let mut total = 0;
        for frame in self.frames.iter().take(IOV_MAX) {
            let bytes = &frame[offset..];
            offset = 0;
            total += bytes.len();
            iov.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
        }
        total
    }

    /// The unsent bytes of the first queued frame (for a writer that transforms bytes before sending them, TLS).
    pub fn front_unsent(&self) -> Option<&[u8]> {
        self.frames.front().map(|f| &f[self.head_sent as usize..])
    }

    /// Frames queued (the first may be partly sent).
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// Marks `n` bytes from the front of the queue as sent (no more than [`Self::front_unsent`] returned).
    pub fn consume(&mut self, n: usize) {
        self.advance(n);
        if self.frames.is_empty() && self.frames.capacity() > 64 {
            self.frames.shrink_to(4);
        }
    }

    /// Like [`Self::consume`], handing every frame that left the queue to `left` (the zero-copy ledger keeps the
    /// ones the kernel may still read).
    pub fn consume_with(&mut self, mut written: usize, mut left: impl FnMut(OutFrame)) {
        self.queued = self.queued.saturating_sub(written as u32);
        while written > 0 {
            let rest = self.frames[0].len() - self.head_sent as usize;
            if written < rest {
                self.head_sent += written as u32;
                break;
            }
            written -= rest;
            self.head_sent = 0;
            if let Some(frame) = self.frames.pop_front() {
                left(frame);
            }
        }
        if self.frames.is_empty() && self.frames.capacity() > 64 {
            self.frames.shrink_to(4);
        }
    }

    /// Removes the first frame, sent or not (a connection being freed hands a frame the kernel may still read to
    /// the zero-copy ledger).
    pub fn take_front(&mut self) -> Option<OutFrame> {
        let frame = self.frames.pop_front()?;
        self.queued = self
            .queued
            .saturating_sub((frame.len() - self.head_sent as usize) as u32);
        self.head_sent = 0;
        Some(frame)
    }

    fn advance(&mut self, mut written: usize) {
        self.queued = self.queued.saturating_sub(written as u32);
        while written > 0 {
            let left = self.frames[0].len() - self.head_sent as usize;
            if written >= left {
                written -= left;
                self.head_sent = 0;
                self.frames.pop_front();
            } else {
                self.head_sent += written as u32;
                written = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8]) -> OutFrame {
        Rc::new(Arc::new(bytes.to_vec()))
    }

    #[test]
    fn flush_writes_all_frames_in_order_through_a_pipe() {
        let mut fds = [0; 2];
        // SAFETY: test-only pipe creation with a valid two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut q = OutQueue::default();
        q.push(frame(b"hello "));
        q.push(frame(b"world"));
        assert_eq!(q.queued_bytes(), 11);
        let mut iov = Vec::new();
        assert_eq!(q.flush(fds[1], &mut iov).unwrap(), Flush::Done);
        assert!(q.is_empty());
        let mut out = [0u8; 32];
        // SAFETY: reading into a stack buffer of the given length.
        let n = unsafe { libc::read(fds[0], out.as_mut_ptr().cast(), out.len()) };
        assert_eq!(&out[..n as usize], b"hello world");
        // SAFETY: closing the fds this test opened.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn drop_unsent_keeps_only_a_partly_written_frame() {
        let mut q = OutQueue::default();
        q.push(frame(b"abc"));
        q.push(frame(b"defg"));
        q.drop_unsent();
        assert!(q.is_empty());
        q.push(frame(b"abc"));
        q.push(frame(b"defg"));
        q.advance(1);
        q.drop_unsent();
        assert_eq!(q.frame_count(), 1);
        assert_eq!(q.queued_bytes(), 2);
        assert_eq!(q.front_unsent(), Some(&b"bc"[..]));
    }

    #[test]
    fn advance_tracks_partial_frames() {
        let mut q = OutQueue::default();
        q.push(frame(b"abc"));
        q.push(frame(b"defg"));
        q.advance(2);
        assert!(q.mid_frame());
        assert_eq!(q.queued_bytes(), 5);
        q.advance(3);
        assert!(q.mid_frame());
        assert_eq!(q.frames.len(), 1);
        q.advance(2);
        assert!(q.is_empty());
        assert!(!q.mid_frame());
    }
}
