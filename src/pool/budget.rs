//! The process-wide memory budget for buffered input (`server.max_buffered_bytes`): every reactor adds the bytes
//! its read-buffer arena lends out, and the API adds the request bodies it holds. Past the limit, whoever holds the
//! most is closed (reactors: 1008 "memory budget"); well-behaved connections hold nothing and are never touched.

use std::sync::atomic::{AtomicUsize, Ordering};

pub struct MemoryBudget {
    limit: usize,
    held: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Self {
        MemoryBudget {
            limit,
            held: AtomicUsize::new(0),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held across the process, as last reported.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Replaces one holder's reported share (`*reported`) with `now`; returns the process-wide total.
    pub fn report(&self, reported: &mut usize, now: usize) -> usize {
        let total = if now >= *reported {
            self.held.fetch_add(now - *reported, Ordering::Relaxed) + (now - *reported)
        } else {
            self.held.fetch_sub(*reported - now, Ordering::Relaxed) - (*reported - now)
        };
        *reported = now;
        total
    }

    /// True while the total is over the limit.
    pub fn exceeded(&self, total: usize) -> bool {
        total > self.limit
    }
}

impl Default for MemoryBudget {
    /// No limit (a budget nobody can exceed).
    fn default() -> Self {
        MemoryBudget::new(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_replace_a_holders_share() {
        let b = super::MemoryBudget::new(100);
        let (mut r1, mut r2) = (0, 0);
        assert_eq!(b.report(&mut r1, 60), 60);
        assert_eq!(b.report(&mut r2, 50), 110);
        assert!(b.exceeded(110));
        assert_eq!(b.report(&mut r1, 10), 60);
        assert!(!b.exceeded(b.held()));
    }
}
