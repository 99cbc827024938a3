//! The read-buffer arena. Buffers are lent by index so a connection pays 4 bytes for "no buffer".

use std::io;
use std::os::fd::RawFd;

/// Index of a lent buffer; [`NO_BUF`] means the connection holds none.
pub type BufId = u32;
pub const NO_BUF: BufId = u32::MAX;

/// Buffers kept for reuse are this large; a buffer grown past `KEEP_LIMIT` (a big message) is freed on return.
const BLOCK: usize = 16 * 1024;
const KEEP_LIMIT: usize = 256 * 1024;
/// Returned buffers kept per reactor; the rest go back to the allocator.
const MAX_FREE: usize = 1024;

pub struct BufPool {
    lent: slab::Slab<Vec<u8>>,
    free: Vec<Vec<u8>>,
}

impl Default for BufPool {
    fn default() -> Self {
        Self::new()
    }
}

impl BufPool {
    pub fn new() -> Self {
        BufPool {
            lent: slab::Slab::new(),
            free: Vec::new(),
        }
    }

    /// Lends an empty buffer.
    pub fn lend(&mut self) -> BufId {
        let buf = self.free.pop().unwrap_or_else(|| Vec::with_capacity(BLOCK));
        self.lent.insert(buf) as BufId
    }

    /// Takes a lent buffer back.
    pub fn give_back(&mut self, id: BufId) {
        if id == NO_BUF {
            return;
        }
        if let Some(mut buf) = self.lent.try_remove(id as usize) {
            if buf.capacity() <= KEEP_LIMIT && self.free.len() < MAX_FREE {
                buf.clear();
                self.free.push(buf);
            }
        }
    }

    pub fn get(&mut self, id: BufId) -> &mut Vec<u8> {
        &mut self.lent[id as usize]
    }

    /// Moves a lent buffer out (to process it while the reactor is borrowed elsewhere); pair with [`Self::put`].
    pub fn take(&mut self, id: BufId) -> Vec<u8> {
        std::mem::take(&mut self.lent[id as usize])
    }

    pub fn put(&mut self, id: BufId, buf: Vec<u8>) {
        self.lent[id as usize] = buf;
    }

    /// Buffers currently lent (a gauge for stats).
    pub fn lent_count(&self) -> usize {
        self.lent.len()
    }
}

/// Reads from `fd` into the spare capacity of `buf`, reserving at least `want` bytes of room first.
/// Returns the byte count (0 = end of stream).
pub fn read_into(fd: RawFd, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    buf.reserve(want.max(1));
    let spare = buf.spare_capacity_mut();
    // SAFETY: `spare` is writable, uninitialised memory owned by `buf` of length `spare.len()`; read(2) writes at
    // most that many bytes into it and reports how many.
    let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), spare.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: read(2) initialised exactly `n` bytes after the current length, and n <= spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Largest buffer that [`BufPool`] keeps: callers use it to decide how much to read at once.
pub const fn block_size() -> usize {
    BLOCK
}
