//! State shared between the coordinating parent and its forked workers through one MAP_SHARED page range: the phase
//! the run is in, the publisher's progress (how many publishes were sent / acknowledged, which ones failed), and one
//! progress slot per worker. Everything is an atomic, so no locks and no messages are needed while the load runs;
//! the final results travel over a pipe.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::sys::SharedMap;

pub const MAX_PROCS: usize = 64;

/// Workers open their connections.
pub const PHASE_CONNECT: u32 = 0;
/// Everything is up: publish / echo / churn.
pub const PHASE_GO: u32 = 1;
/// Load is over: wait for stragglers until `drain_deadline_ns`, then report.
pub const PHASE_DRAIN: u32 = 2;
/// Stop now (parent hit its own deadline or was interrupted).
pub const PHASE_ABORT: u32 = 3;

#[repr(C)]
#[derive(Default)]
pub struct Slot {
    /// Connections currently open (upgraded).
    pub open: AtomicU64,
    pub failed: AtomicU64,
    /// Every connection of the first round was attempted and has either succeeded or failed.
    pub conn_done: AtomicU32,
    pub finished: AtomicU32,
    pub deliveries: AtomicU64,
    pub echoes: AtomicU64,
}

#[repr(C)]
pub struct Header {
    pub phase: AtomicU32,
    /// Publishes written to the API so far (the next seq to be sent).
    pub sent: AtomicU64,
    /// Every seq below this has had its API response (ok or failed).
    pub acked: AtomicU64,
    /// Final number of publishes, valid once the phase is DRAIN.
    pub end_seq: AtomicU64,
    pub go_mono_ns: AtomicU64,
    pub drain_deadline_ns: AtomicU64,
    pub failed_total: AtomicU64,
    pub slots: [Slot; MAX_PROCS],
}

pub struct Shared {
    map: SharedMap,
    words: usize,
}

impl Shared {
    /// Room for the header and a failure bitmap for `messages` publishes.
    pub fn new(messages: u64) -> std::io::Result<Shared> {
        let words = (messages as usize).div_ceil(64).max(1);
        let len = std::mem::size_of::<Header>() + words * 8;
        let map = SharedMap::new(len)?;
        Ok(Shared { map, words })
    }

    pub fn hdr(&self) -> &Header {
        // SAFETY: the mapping is page-aligned, at least size_of::<Header>() long and zero-filled; all-zero bytes are
        // a valid value for every atomic in Header. The reference borrows `self`, which owns the mapping.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    fn bitmap(&self) -> &[AtomicU64] {
        // SAFETY: `words` u64s follow the header inside the mapping (see `new`); Header's size is a multiple of 8,
        // so they are aligned. Zero is a valid AtomicU64.
        unsafe {
            let p = self.map.as_ptr().add(std::mem::size_of::<Header>()) as *const AtomicU64;
            std::slice::from_raw_parts(p, self.words)
        }
    }

    pub fn phase(&self) -> u32 {
        self.hdr().phase.load(Ordering::Acquire)
    }

    pub fn set_phase(&self, p: u32) {
        self.hdr().phase.store(p, Ordering::Release);
    }

    pub fn slot(&self, i: usize) -> &Slot {
        &self.hdr().slots[i]
    }

    pub fn mark_failed(&self, seq: u64) {
        let w = (seq / 64) as usize;
        if w < self.words {
            self.bitmap()[w].fetch_or(1 << (seq % 64), Ordering::Release);
            self.hdr().failed_total.fetch_add(1, Ordering::Release);
        }
    }

    /// Number of failed publishes with seq in [a, b).
    pub fn failed_in(&self, a: u64, b: u64) -> u64 {
        if self.hdr().failed_total.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let bm = self.bitmap();
        (a..b)
            .filter(|&s| {
                let w = (s / 64) as usize;
                w < bm.len() && bm[w].load(Ordering::Acquire) & (1 << (s % 64)) != 0
            })
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_bitmap() {
        let s = Shared::new(1000).unwrap();
        assert_eq!(s.phase(), PHASE_CONNECT);
        assert_eq!(s.failed_in(0, 1000), 0);
        s.mark_failed(3);
        s.mark_failed(64);
        s.mark_failed(999);
        s.mark_failed(5000); // out of range: ignored by the bitmap
        assert_eq!(s.failed_in(0, 1000), 3);
        assert_eq!(s.failed_in(4, 999), 1);
        s.set_phase(PHASE_GO);
        assert_eq!(s.phase(), PHASE_GO);
        assert_eq!(std::mem::size_of::<Header>() % 8, 0);
    }
}
