//! Delivery accounting for one subscriber connection lifetime, without a bitmap per connection: the tracker keeps
//! the next expected sequence number and the list of gaps (missing ranges) it has skipped over. A later arrival inside
//! a gap is out of order; one below `next` outside every gap is a duplicate. Gaps only exist when something went
//! wrong, so in the normal case the list is empty and recording a delivery is a compare and an increment.
//!
//! A lifetime is only expected to receive what was published while it was subscribed: `begin(start)` is called with
//! the number of publishes already sent when the upgrade completed (everything from `start` on was sent after the
//! server had subscribed us) and `finish(end)` with the number acknowledged before we decided to leave.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    InOrder,
    /// Arrived after a later sequence number had (it fills part of a gap).
    OutOfOrder,
    Duplicate,
    /// Published before this lifetime's start: a bonus delivery, not counted against anything.
    Early,
    /// The tracker is not in a lifetime (closing connection): ignored.
    Ignored,
}

#[derive(Debug, Default)]
pub struct SeqTracker {
    active: bool,
    start: u64,
    next: u64,
    /// Missing half-open ranges [a, b) below `next`, in ascending order.
    gaps: Vec<(u64, u64)>,
    received: u64,
    dup: u64,
    ooo: u64,
    early: u64,
}

/// Totals over lifetimes (and over connections and processes, by `add`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqTotals {
    pub lifetimes: u64,
    /// Publishes that fell inside a lifetime's expected range.
    pub expected: u64,
    /// Distinct sequence numbers received inside the expected range.
    pub received_expected: u64,
    /// Distinct sequence numbers received in total (including early / after-end ones).
    pub received: u64,
    /// Expected but never received (publishes that the API refused are not counted here but in `excused`).
    pub lost: u64,
    /// Of `lost`: before a lifetime's first delivery (or lifetimes that received nothing), and after its last one.
    /// Losses concentrated there point at subscribe/unsubscribe boundaries rather than at dropped messages.
    pub lost_head: u64,
    pub lost_tail: u64,
    /// Missing, but the publish itself had failed at the API.
    pub excused: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub early: u64,
}

impl SeqTotals {
    pub fn add(&mut self, o: &SeqTotals) {
        self.lifetimes += o.lifetimes;
        self.expected += o.expected;
        self.received_expected += o.received_expected;
        self.received += o.received;
        self.lost += o.lost;
        self.lost_head += o.lost_head;
        self.lost_tail += o.lost_tail;
        self.excused += o.excused;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.early += o.early;
    }
}

impl SeqTracker {
    pub fn begin(&mut self, start: u64) {
        self.active = true;
        self.start = start;
        self.next = start;
        self.gaps.clear();
        self.received = 0;
        self.dup = 0;
        self.ooo = 0;
        self.early = 0;
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    pub fn record(&mut self, seq: u64) -> Outcome {
        if !self.active {
            return Outcome::Ignored;
        }
        if seq == self.next {
            self.next += 1;
            self.received += 1;
            return Outcome::InOrder;
        }
        if seq > self.next {
            self.gaps.push((self.next, seq));
            self.next = seq + 1;
            self.received += 1;
            return Outcome::InOrder;
        }
        if seq < self.start {
            self.early += 1;
            return Outcome::Early;
        }
        // Below `next`: fills a gap (search from the newest, where late arrivals usually land) or is a duplicate.
        for i in (0..self.gaps.len()).rev() {
            let (a, b) = self.gaps[i];
            if seq >= b {
                break;
            }
            if seq >= a {
                match (seq == a, seq + 1 == b) {
                    (true, true) => {
                        self.gaps.remove(i);
                    }
                    (true, false) => self.gaps[i].0 = seq + 1,
                    (false, true) => self.gaps[i].1 = seq,
                    (false, false) => {
                        self.gaps[i].1 = seq;
                        self.gaps.insert(i + 1, (seq + 1, b));
                    }
                }
                self.received += 1;
                self.ooo += 1;
                return Outcome::OutOfOrder;
            }
        }
        self.dup += 1;
        Outcome::Duplicate
    }

    /// True when everything in [start, end) has arrived.
    pub fn is_complete(&self, end: u64) -> bool {
        !self.active || (self.next >= end && self.gaps.first().is_none_or(|&(a, _)| a >= end))
    }

    /// Ends the lifetime with expected range [start, end). `failed(a, b)` counts publishes in [a, b) that the API
    /// refused (those are excused, not lost).
    pub fn finish(&mut self, end: u64, failed: &dyn Fn(u64, u64) -> u64) -> SeqTotals {
        if !self.active {
            return SeqTotals::default();
        }
        self.active = false;
        let end = end.max(self.start);
        let start = self.start;
        let (mut excused, mut head, mut middle, mut tail) = (0u64, 0u64, 0u64, 0u64);
        // Missing publishes in [a, b) clipped to the lifetime, less those the API refused.
        let mut missing = |a: u64, b: u64| -> u64 {
            let (a, b) = (a.max(start), b.min(end));
            if a >= b {
                return 0;
            }
            let f = failed(a, b);
            excused += f;
            b - a - f
        };
        for (k, &(a, b)) in self.gaps.iter().enumerate() {
            let m = missing(a, b);
            if k == 0 && a == start {
                head += m;
            } else if b >= end {
                tail += m; // nothing in range arrived after this gap
            } else {
                middle += m;
            }
        }
        let m = missing(self.next, end);
        if self.next == start {
            head += m; // nothing arrived in this lifetime at all
        } else {
            tail += m;
        }
        let lost = head + middle + tail;
        let expected = end - start;
        let t = SeqTotals {
            lifetimes: 1,
            expected,
            received_expected: expected - lost - excused,
            received: self.received,
            lost,
            lost_head: head,
            lost_tail: tail,
            excused,
            duplicates: self.dup,
            out_of_order: self.ooo,
            early: self.early,
        };
        self.gaps.clear();
        if self.gaps.capacity() > 64 {
            self.gaps = Vec::new();
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: u64, _: u64) -> u64 {
        0
    }

    #[test]
    fn in_order_complete() {
        let mut t = SeqTracker::default();
        t.begin(0);
        for s in 0..100 {
            assert_eq!(t.record(s), Outcome::InOrder);
        }
        assert!(t.is_complete(100));
        assert!(!t.is_complete(101));
        let r = t.finish(100, &none);
        assert_eq!(
            r,
            SeqTotals {
                lifetimes: 1,
                expected: 100,
                received_expected: 100,
                received: 100,
                ..Default::default()
            }
        );
        assert_eq!(t.record(5), Outcome::Ignored);
    }

    #[test]
    fn loss_reorder_and_duplicates() {
        let mut t = SeqTracker::default();
        t.begin(0);
        for s in [0, 1, 4, 2, 2, 7, 5, 9, 4] {
            t.record(s);
        }
        // received 0,1,2,4,5,7,9; missing 3,6,8; 2 and 5 arrived late; second 2 and 4 duplicates.
        assert!(!t.is_complete(10));
        let r = t.finish(10, &none);
        assert_eq!(r.received, 7);
        assert_eq!(r.lost, 3);
        assert_eq!(r.out_of_order, 2);
        assert_eq!(r.duplicates, 2);
        assert_eq!(r.received_expected, 7);
    }

    #[test]
    fn gap_split_in_the_middle() {
        let mut t = SeqTracker::default();
        t.begin(0);
        t.record(10); // gap [0,10)
        t.record(5); // splits into [0,5) and [6,10)
        t.record(0);
        t.record(9);
        t.record(6);
        // missing 1..=4, 7, 8
        assert_eq!(t.record(5), Outcome::Duplicate);
        let r = t.finish(11, &none);
        assert_eq!(r.lost, 6);
        assert_eq!(r.out_of_order, 4);
        assert_eq!(r.duplicates, 1);
    }

    #[test]
    fn tail_loss_and_lifetime_window() {
        let mut t = SeqTracker::default();
        t.begin(50);
        assert_eq!(t.record(49), Outcome::Early);
        for s in 50..60 {
            t.record(s);
        }
        t.record(75); // after the lifetime's end: fine, but 60..70 are lost
        let r = t.finish(70, &none);
        assert_eq!(r.expected, 20);
        assert_eq!(r.lost, 10);
        assert_eq!((r.lost_head, r.lost_tail), (0, 10));
        assert_eq!(r.early, 1);
        assert_eq!(r.received_expected, 10);
    }

    #[test]
    fn loss_positions() {
        let mut t = SeqTracker::default();
        t.begin(10);
        for s in [12, 13, 15, 16] {
            t.record(s);
        }
        let r = t.finish(20, &none);
        // head: 10, 11; middle: 14; tail: 17, 18, 19
        assert_eq!((r.lost, r.lost_head, r.lost_tail), (6, 2, 3));
        let mut t = SeqTracker::default();
        t.begin(5);
        let r = t.finish(8, &none);
        assert_eq!((r.lost, r.lost_head, r.lost_tail), (3, 3, 0));
    }

    #[test]
    fn failed_publishes_are_excused() {
        let failed = |a: u64, b: u64| (a..b).filter(|s| *s == 3 || *s == 8).count() as u64;
        let mut t = SeqTracker::default();
        t.begin(0);
        for s in [0, 1, 2, 4, 5, 6] {
            t.record(s);
        }
        let r = t.finish(10, &failed);
        // missing 3 (failed), 7, 8 (failed), 9
        assert_eq!(r.lost, 2);
        assert_eq!(r.excused, 2);
    }

    #[test]
    fn end_before_start_means_nothing_expected() {
        let mut t = SeqTracker::default();
        t.begin(10);
        let r = t.finish(5, &none);
        assert_eq!((r.expected, r.lost), (0, 0));
    }

    #[test]
    fn totals_add() {
        let a = SeqTotals {
            lifetimes: 1,
            expected: 5,
            lost: 1,
            ..Default::default()
        };
        let mut b = a;
        b.add(&a);
        assert_eq!((b.lifetimes, b.expected, b.lost), (2, 10, 2));
    }
}
