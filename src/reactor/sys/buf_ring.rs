//! A provided-buffer ring (io_uring `IORING_REGISTER_PBUF_RING`): buffers the kernel picks from when a receive
//! completes, so a connection holds a buffer only from the moment its bytes arrive until the reactor has decoded
//! them, never while it is idle. One ring per reactor, shared by all its connections.
//!
//! The ring is an array of entries (address, length, buffer id) in memory shared with the kernel, which takes
//! entries at its head; buffers are given back by writing an entry at the tail and publishing the new tail.
//! Each buffer is in exactly one place: in the ring, in a completion not yet taken, or lent to the reactor.

use io_uring::types::BufRingEntry;
use io_uring::Submitter;
use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

/// Bytes per buffer: a few small messages or request heads, or a piece of a large frame or TLS record (the
/// reactor appends pieces to the connection's lent buffer, as with a short read).
pub const BUF_SIZE: usize = 4096;
/// The kernel's limit on entries per ring.
pub const MAX_BUFFERS: usize = 1 << 15;
/// Alignment the kernel requires of the entry array.
const PAGE: usize = 4096;

pub struct BufRing {
    entries: NonNull<BufRingEntry>,
    layout: Layout,
    mask: u16,
    /// Our tail: entries up to here have been written; published to the kernel after each recycle.
    tail: u16,
    /// The buffers by id; an empty box while the buffer is lent to the reactor.
    bufs: Vec<Box<[u8]>>,
    pub group: u16,
}

impl BufRing {
    /// A ring of `count` buffers (rounded up to a power of two, at most [`MAX_BUFFERS`]), registered with the ring
    /// of `submitter` as buffer group `group`. The buffers are written once here, so their pages are resident
    /// from the start: a fixed cost per reactor, not growing with the connections that use them.
    pub fn new(submitter: &Submitter<'_>, count: usize, group: u16) -> io::Result<BufRing> {
        let count = count.clamp(1, MAX_BUFFERS).next_power_of_two();
        let layout = Layout::from_size_align(count * std::mem::size_of::<BufRingEntry>(), PAGE)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the layout has a non-zero size (at least one 16-byte entry).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let Some(entries) = NonNull::new(ptr.cast::<BufRingEntry>()) else {
            alloc::handle_alloc_error(layout)
        };
        let mut ring = BufRing {
            entries,
            layout,
            mask: (count - 1) as u16,
            tail: 0,
            bufs: (0..count)
                .map(|_| {
                    let mut buf = vec![0u8; BUF_SIZE].into_boxed_slice();
                    for page in buf.chunks_mut(PAGE) {
                        // SAFETY: a write into the buffer's own memory; volatile so that the page is really
                        // touched (a zeroed allocation may not be resident yet).
                        unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0) };
                    }
                    buf
                })
                .collect(),
            group,
        };
        // SAFETY: the entry array is page-aligned, `count` entries long (a power of two, at most 2^15), and lives
        // until `self` is dropped, which happens only after the ring is unregistered or the io_uring is gone
        // (the owner unregisters it in its `Drop`, and declares the io_uring before this ring).
        unsafe {
            submitter.register_buf_ring_with_flags(ptr as u64, count as u16, group, 0)?;
        }
        for id in 0..count {
            let buf = std::mem::take(&mut ring.bufs[id]);
            ring.recycle(id as u16, buf);
        }
        Ok(ring)
    }

    /// Buffer `id`, which a completion handed over, lent until [`Self::recycle`].
    pub fn take(&mut self, id: u16) -> Box<[u8]> {
        self.bufs
            .get_mut(id as usize)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Puts buffer `id` back into the ring for the kernel to fill again.
    pub fn recycle(&mut self, id: u16, mut buf: Box<[u8]>) {
        let Some(slot) = self.bufs.get_mut(id as usize) else {
            return;
        };
        if buf.len() != BUF_SIZE || !slot.is_empty() {
            debug_assert!(false, "recycling a buffer that is not lent: {id}");
            return;
        }
        let index = (self.tail & self.mask) as usize;
        // SAFETY: `index` is within the `mask + 1` entries of the array. The kernel reads entries only between
        // its head and the published tail, and this one is past the tail until the store below; it never
        // writes them (no incremental consumption).
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        entry.set_addr(buf.as_mut_ptr() as u64);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(id);
        // The heap block does not move with the box: the address stays valid while the buffer is in the ring.
        *slot = buf;
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is the `resv` field of the first entry, a naturally aligned u16 the kernel reads
        // with acquire semantics; the release store publishes the entry written above.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Buffers lent to the reactor (taken, not yet recycled).
    #[cfg(test)]
    pub fn lent(&self) -> usize {
        self.bufs.iter().filter(|b| b.is_empty()).count()
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the kernel no longer uses it (see `new`).
        unsafe { alloc::dealloc(self.entries.as_ptr().cast(), self.layout) };
    }
}
