//! Memory owned by a reactor for its connections: the read-buffer arena (a buffer is lent to a connection only
//! while a frame is partially received), shared immutable frames, per-connection outbound queues and the frames zero-copy sends still lend the kernel; and the
//! process-wide budget for buffered input.

mod budget;
mod buffers;
mod outqueue;
mod zerocopy;

pub use budget::MemoryBudget;
pub use buffers::{block_size, read_into, BufId, BufPool, NEVER, NO_BUF};
pub use outqueue::{Flush, OutFrame, OutQueue, SharedFrame};
pub use zerocopy::Pinned;
