//! Millisecond timers for the application ([`super::Core::schedule_ms`]), beside the one-second wheel of
//! timer.rs: sub-second deadlines (retransmits 50 ms apart) that the loop must wake up for exactly. A binary heap
//! of (deadline, connection) with lazy expiry like the wheel: nothing is ever cancelled; an entry fires at its
//! deadline if its connection is open, and the handler decides from the connection's state whether anything is
//! due (a later or superseded entry finds nothing to do). No allocation once the heap has grown to its working
//! size; a connection that is not using them pays nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Default)]
pub struct MsTimers {
    heap: BinaryHeap<Reverse<(u64, u32)>>,
}

impl MsTimers {
    /// `key` fires at `deadline` (milliseconds on the reactor clock), or on the next expiry if that has passed.
    pub fn schedule(&mut self, key: usize, deadline: u64) {
        self.heap.push(Reverse((deadline, key as u32)));
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((d, _))| *d)
    }

    /// Moves every entry whose deadline is ≤ `now` into `due`, earliest first.
    pub fn expire(&mut self, now: u64, due: &mut Vec<usize>) {
        while let Some(&Reverse((deadline, key))) = self.heap.peek() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            due.push(key as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_order_and_not_before() {
        let mut t = MsTimers::default();
        t.schedule(3, 250);
        t.schedule(1, 50);
        t.schedule(2, 100);
        assert_eq!(t.next(), Some(50));
        let mut due = Vec::new();
        t.expire(49, &mut due);
        assert!(due.is_empty());
        t.expire(100, &mut due);
        assert_eq!(due, vec![1, 2]);
        assert_eq!(t.next(), Some(250));
    }
}
