//! The busiest channels of a reactor, for the operator: the API asks ([`BusiestChannels::want`]), and at its next
//! one-second tick the reactor lists its channels with the most local subscribers and the most deliveries. Nothing
//! is scanned while nobody asks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// Channels listed per reactor and per kind (most subscribers, most deliveries).
pub const BUSIEST: usize = 10;

/// One channel as a reactor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelLoad {
    pub name: String,
    /// Local subscribers now.
    pub subscribers: u64,
    /// Frames queued to its local subscribers since the channel appeared on this reactor.
    pub deliveries: u64,
}

#[derive(Default)]
pub struct BusiestChannels {
    wanted: AtomicBool,
    list: Mutex<Vec<ChannelLoad>>,
}

impl BusiestChannels {
    /// Asks the reactor to refresh the list at its next tick.
    pub fn want(&self) {
        self.wanted.store(true, Ordering::Relaxed);
    }

    /// True once per request (the reactor then refreshes).
    pub fn take_wanted(&self) -> bool {
        self.wanted.swap(false, Ordering::Relaxed)
    }

    pub fn publish(&self, list: Vec<ChannelLoad>) {
        *self.list.lock().unwrap_or_else(PoisonError::into_inner) = list;
    }

    /// The list as of the reactor's last refresh.
    pub fn snapshot(&self) -> Vec<ChannelLoad> {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
