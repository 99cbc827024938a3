//! Memory owned by a reactor for its connections: the read-buffer arena (a buffer is lent to a connection only
//! while a frame is partially received), shared immutable frames, and per-connection outbound queues.

mod buffers;
mod outqueue;

pub use buffers::{block_size, read_into, BufId, BufPool, NO_BUF};
pub use outqueue::{Flush, OutFrame, OutQueue, SharedFrame};
