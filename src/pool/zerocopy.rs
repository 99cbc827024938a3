//! Frames the kernel may still read. A zero-copy send (`MSG_ZEROCOPY`, io_uring `SEND_ZC`) hands the kernel the
//! pages of a shared frame instead of copying them, so the frame must outlive the send until the kernel's
//! notification says the pages are released. [`Pinned`] is one connection's ledger of such frames: each zero-copy
//! send gets the next sequence number (the kernel numbers `MSG_ZEROCOPY` sends the same way, per socket), each
//! frame a send touched is kept under that number, and a notification for a range of numbers releases every frame
//! whose number, and every number before it, has been notified. Until then the frame's bytes count against the
//! connection (its outbound limit) and the reactor's gauge.

use super::OutFrame;
use std::collections::VecDeque;

/// True if sequence number `a` comes before `b` (numbers wrap; at most 2^31 sends are in flight).
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[derive(Default)]
pub struct Pinned {
    /// Frames the kernel may read, each under the number of the last zero-copy send that touched it (ascending).
    frames: VecDeque<(u32, OutFrame)>,
    /// Number of the next zero-copy send.
    next: u32,
    /// Every send numbered below this one has been notified.
    done_below: u32,
    /// Notified ranges `[from, to)` past a gap (notifications may arrive out of order).
    early: Vec<(u32, u32)>,
    /// The number of the zero-copy send that wrote part of the frame still at the head of the outbound queue.
    head: Option<u32>,
    /// Bytes of `frames`.
    bytes: usize,
    /// The kernel reported that it copied the pages anyway (loopback, a device without scatter-gather): zero-copy
    /// only costs more on this connection, so it stops using it.
    pub copied: bool,
}

impl Pinned {
    /// Numbers the next zero-copy send (call once the kernel accepted it: it numbers only sends that took bytes).
    pub fn next_send(&mut self) -> u32 {
        let seq = self.next;
        self.next = seq.wrapping_add(1);
        seq
    }

    /// A frame left the outbound queue after a write. `zerocopy` is the send that wrote its last bytes, if it was
    /// a zero-copy one. A frame is kept if that send, or an earlier one that wrote its first bytes, was zero-copy
    /// and has not been notified yet (a head frame partly sent before the notification can leave after it: no
    /// notification would ever release it).
    pub fn left_queue(&mut self, frame: OutFrame, zerocopy: Option<u32>) {
        let head = self.head.take();
        match zerocopy.or(head) {
            Some(seq) if !before(seq, self.done_below) => {
                self.bytes += frame.len();
                self.frames.push_back((seq, frame));
            }
            _ => {}
        }
    }

    /// The frame at the head of the queue was partly written by zero-copy send `seq`.
    pub fn head_written(&mut self, seq: u32) {
        self.head = Some(seq);
    }

    /// Whether the kernel may read part of the frame at the head of the queue (it must outlive the queue).
    pub fn holds_head(&self) -> bool {
        self.head.is_some_and(|seq| !before(seq, self.done_below))
    }

    /// The kernel released the pages of sends `from..=to`. Returns the bytes released.
    pub fn notified(&mut self, from: u32, to: u32) -> usize {
        let end = to.wrapping_add(1);
        if before(self.done_below, from) {
            self.early.push((from, end));
        } else if before(self.done_below, end) {
            self.done_below = end;
        }
        // Ranges that arrived early join once the gap before them closes.
        while let Some(i) = self
            .early
            .iter()
            .position(|&(f, _)| !before(self.done_below, f))
        {
            let (_, e) = self.early.swap_remove(i);
            if before(self.done_below, e) {
                self.done_below = e;
            }
        }
        let before_bytes = self.bytes;
        while let Some((seq, _)) = self.frames.front() {
            if !before(*seq, self.done_below) {
                break;
            }
            if let Some((_, frame)) = self.frames.pop_front() {
                self.bytes -= frame.len();
            }
        }
        if self.frames.is_empty() && self.frames.capacity() > 16 {
            self.frames.shrink_to(4);
        }
        before_bytes - self.bytes
    }

    /// Bytes of frames the kernel may still read.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True while a zero-copy send has not been notified (the connection's memory must not be freed yet).
    pub fn in_flight(&self) -> bool {
        self.done_below != self.next || !self.frames.is_empty()
    }

    /// Made ready for another connection (keeps the ring's capacity).
    pub fn reset(&mut self) {
        self.frames.clear();
        self.frames.shrink_to(4);
        self.early.clear();
        *self = Pinned {
            frames: std::mem::take(&mut self.frames),
            early: std::mem::take(&mut self.early),
            ..Pinned::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::sync::Arc;

    fn frame(len: usize) -> OutFrame {
        Rc::new(Arc::new(vec![0u8; len]))
    }

    #[test]
    fn frames_live_until_their_send_is_notified() {
        let mut p = Pinned::default();
        let a = frame(100);
        let s0 = p.next_send();
        p.left_queue(a.clone(), Some(s0));
        let s1 = p.next_send();
        p.left_queue(frame(50), Some(s1));
        assert_eq!(p.bytes(), 150);
        assert_eq!(Rc::strong_count(&a), 2, "the ledger holds the frame");
        assert_eq!(p.notified(s0, s0), 100);
        assert_eq!(Rc::strong_count(&a), 1);
        assert!(p.in_flight());
        assert_eq!(p.notified(s1, s1), 50);
        assert!(!p.in_flight());
    }

    #[test]
    fn plain_writes_keep_nothing_unless_the_head_was_sent_zero_copy() {
        let mut p = Pinned::default();
        p.left_queue(frame(10), None);
        assert_eq!(p.bytes(), 0);
        // Part of a frame left with a zero-copy send; the rest with a plain write: the frame is kept under the
        // zero-copy send's number.
        let s = p.next_send();
        p.head_written(s);
        assert!(p.holds_head());
        p.left_queue(frame(70), None);
        p.left_queue(frame(5), None);
        assert_eq!(p.bytes(), 70);
        assert_eq!(p.notified(s, s), 70);
        assert!(!p.in_flight());
    }

    #[test]
    fn a_head_frame_whose_send_was_notified_before_it_left_is_not_kept() {
        let mut p = Pinned::default();
        let s = p.next_send();
        p.head_written(s);
        p.notified(s, s);
        assert!(
            !p.holds_head(),
            "the kernel let go of the head's first bytes"
        );
        // The rest leaves with a plain write (the connection stopped lending pages): nothing would release it.
        p.left_queue(frame(64), None);
        assert_eq!(p.bytes(), 0);
        assert!(!p.in_flight());
    }

    #[test]
    fn out_of_order_notifications_release_only_once_the_gap_closes() {
        let mut p = Pinned::default();
        let seqs: Vec<u32> = (0..4).map(|_| p.next_send()).collect();
        for &s in &seqs {
            p.left_queue(frame(1), Some(s));
        }
        assert_eq!(p.notified(2, 3), 0, "send 0 and 1 are still in the kernel");
        assert_eq!(p.notified(0, 0), 1);
        assert_eq!(p.notified(1, 1), 3);
        assert!(!p.in_flight());
    }

    #[test]
    fn coalesced_ranges_and_wrapping_numbers() {
        let mut p = Pinned {
            next: u32::MAX - 1,
            done_below: u32::MAX - 1,
            ..Pinned::default()
        };
        let seqs: Vec<u32> = (0..4).map(|_| p.next_send()).collect();
        assert_eq!(seqs, vec![u32::MAX - 1, u32::MAX, 0, 1]);
        for &s in &seqs {
            p.left_queue(frame(2), Some(s));
        }
        assert_eq!(
            p.notified(u32::MAX - 1, 0),
            6,
            "one notification covers three sends"
        );
        assert_eq!(p.notified(1, 1), 2);
        assert!(!p.in_flight());
        // A repeated (stale) range changes nothing.
        assert_eq!(p.notified(0, 0), 0);
        assert!(!p.in_flight());
    }

    #[test]
    fn a_send_without_frames_still_counts_as_in_flight() {
        let mut p = Pinned::default();
        let s = p.next_send();
        assert!(p.in_flight());
        p.notified(s, s);
        assert!(!p.in_flight());
        p.reset();
        assert_eq!(p.next_send(), 0);
    }
}
