//! The read-buffer arena. Buffers are lent by index so a connection pays 4 bytes for "no buffer". Each lent buffer
//! remembers its owner and since when it holds incomplete input, so the reactor can enforce the memory budget
//! (close whoever holds the most) and the message timeout (close whoever trickles a message forever) without
//! walking its connections.

use std::io;
use std::os::fd::RawFd;

/// Index of a lent buffer; [`NO_BUF`] means the connection holds none.
pub type BufId = u32;
pub const NO_BUF: BufId = u32::MAX;

/// `since` of a buffer that holds no incomplete input (outbound bytes waiting for the socket): never times out.
pub const NEVER: u32 = u32::MAX;

/// Buffers kept for reuse are this large; a buffer grown past `KEEP_LIMIT` (a big message) is freed on return.
const BLOCK: usize = 16 * 1024;
const KEEP_LIMIT: usize = 256 * 1024;
/// Returned buffers kept per reactor; the rest go back to the allocator.
const MAX_FREE: usize = 1024;

struct Lent {
    buf: Vec<u8>,
    /// The capacity counted in `BufPool::held` (the buffer may be moved out and grown meanwhile).
    counted: usize,
    /// The connection holding it.
    owner: u32,
    /// Reactor second since which it holds incomplete input ([`NEVER`] for outbound bytes).
    since: u32,
}

pub struct BufPool {
    lent: slab::Slab<Lent>,
    free: Vec<Vec<u8>>,
    /// Bytes of capacity lent out (the reactor's share of `server.max_buffered_bytes`).
    held: usize,
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
            held: 0,
        }
    }

    /// Lends an empty buffer to connection `owner`, holding incomplete input since `since` (or [`NEVER`]).
    pub fn lend(&mut self, owner: u32, since: u32) -> BufId {
        let buf = self.free.pop().unwrap_or_else(|| Vec::with_capacity(BLOCK));
        self.held += buf.capacity();
        self.lent.insert(Lent {
            counted: buf.capacity(),
            buf,
            owner,
            since,
        }) as BufId
    }

    /// Takes a lent buffer back.
    pub fn give_back(&mut self, id: BufId) {
        if id == NO_BUF {
            return;
        }
        if let Some(Lent {
            mut buf, counted, ..
        }) = self.lent.try_remove(id as usize)
        {
            self.held -= counted;
            if buf.capacity() <= KEEP_LIMIT && self.free.len() < MAX_FREE {
                buf.clear();
                self.free.push(buf);
            }
        }
    }

    /// Appends to a lent buffer.
    pub fn append(&mut self, id: BufId, bytes: &[u8]) {
        let slot = &mut self.lent[id as usize];
        slot.buf.extend_from_slice(bytes);
        let cap = slot.buf.capacity();
        self.held = self.held + cap - slot.counted;
        slot.counted = cap;
    }

    /// The bytes of a lent buffer.
    pub fn bytes(&self, id: BufId) -> &[u8] {
        &self.lent[id as usize].buf
    }

    /// Moves a lent buffer's bytes out (to process them while the reactor is borrowed elsewhere); the buffer stays
    /// lent and counted. Pair with [`Self::put`].
    pub fn take(&mut self, id: BufId) -> Vec<u8> {
        std::mem::take(&mut self.lent[id as usize].buf)
    }

    pub fn put(&mut self, id: BufId, buf: Vec<u8>) {
        let slot = &mut self.lent[id as usize];
        self.held = self.held + buf.capacity() - slot.counted;
        slot.counted = buf.capacity();
        slot.buf = buf;
    }

    /// The input a buffer holds made progress (a frame or message completed): its age starts again.
    pub fn touch(&mut self, id: BufId, now: u32) {
        self.lent[id as usize].since = now;
    }

    /// Buffers currently lent (a gauge for stats).
    pub fn lent_count(&self) -> usize {
        self.lent.len()
    }

    /// Bytes of capacity currently lent.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Owners of buffers holding incomplete input since `deadline` or earlier (an owner may appear twice).
    pub fn stale_owners(&self, deadline: u32, out: &mut Vec<u32>) {
        out.extend(
            self.lent
                .iter()
                .filter(|(_, l)| l.since != NEVER && l.since <= deadline)
                .map(|(_, l)| l.owner),
        );
    }

    /// Every owner of incoming bytes with the capacity it holds (an owner may appear twice).
    pub fn holders(&self, out: &mut Vec<(usize, u32)>) {
        out.extend(
            self.lent
                .iter()
                .filter(|(_, l)| l.since != NEVER)
                .map(|(_, l)| (l.counted, l.owner)),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_bytes_follow_lending_growth_and_return() {
        let mut pool = BufPool::new();
        let a = pool.lend(7, 1);
        let base = pool.held();
        assert!(base >= BLOCK);
        pool.append(a, &vec![1u8; 100_000]);
        assert!(pool.held() >= 100_000);
        let mut buf = pool.take(a);
        buf.reserve(1 << 20);
        let cap = buf.capacity();
        pool.put(a, buf);
        assert_eq!(pool.held(), cap);
        let b = pool.lend(9, NEVER);
        let mut holders = Vec::new();
        pool.holders(&mut holders);
        assert_eq!(
            holders,
            vec![(cap, 7)],
            "outbound buffers are not input holders"
        );
        pool.give_back(a);
        pool.give_back(b);
        assert_eq!(pool.held(), 0);
    }

    #[test]
    fn stale_owners_are_those_without_progress() {
        let mut pool = BufPool::new();
        let a = pool.lend(1, 10);
        let _b = pool.lend(2, 20);
        let _c = pool.lend(3, NEVER);
        let mut out = Vec::new();
        pool.stale_owners(15, &mut out);
        assert_eq!(out, vec![1]);
        pool.touch(a, 30);
        out.clear();
        pool.stale_owners(25, &mut out);
        assert_eq!(out, vec![2]);
    }
}
