//! The reactor's sense of time: real for a running gateway, driven by hand for the harness (harness.rs), so a
//! test or a fuzzer can fire timers without waiting for them.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

pub(super) enum Clock {
    Real(Instant),
    /// Milliseconds since start, set by whoever holds the other `Rc`.
    Manual(Rc<Cell<u64>>),
}

impl Clock {
    pub fn real() -> Clock {
        Clock::Real(Instant::now())
    }

    /// Time since the reactor started.
    pub fn elapsed(&self) -> Duration {
        match self {
            Clock::Real(start) => start.elapsed(),
            Clock::Manual(ms) => Duration::from_millis(ms.get()),
        }
    }
}
