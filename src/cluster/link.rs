//! The reactors' way into the bridge (cluster mode): session state changes, replay requests and acks. Every hand-
//! over is a `try_send` on a bounded channel, so a reactor never waits for a bridge thread or for Redis; what does
//! not fit is counted and dropped, and each kind says how it recovers:
//! - a dropped state change makes the state thread rebuild its table from a snapshot of the reactors;
//! - a replay request that does not fit is answered at once with a failed replay (live delivery continues);
//! - a dropped ack is superseded by the client's next one (acks are cumulative).

use super::BridgeStats;
use crate::ids::StreamId;
use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// State changes queued between the reactors and the state thread.
const STATE_QUEUE: usize = 65_536;
/// Replay requests queued (connections opening faster than Redis answers).
const REPLAY_QUEUE: usize = 4096;
/// Acks queued before they are merged per user and device.
const ACK_QUEUE: usize = 65_536;

/// A change of a connection's session state.
#[derive(Debug)]
pub enum Change {
    Open {
        sid: u64,
        user: Option<String>,
        device: Option<String>,
        tenant: Option<String>,
    },
    Subscribe {
        sid: u64,
        channel: String,
    },
    Unsubscribe {
        sid: u64,
        channel: String,
    },
    Close {
        sid: u64,
    },
}

/// A change, numbered per reactor so that a snapshot can tell which queued changes it already contains.
#[derive(Debug)]
pub struct StateEvent {
    pub reactor: usize,
    pub seq: u64,
    pub change: Change,
}

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// After the id this user's device acknowledged last (everything kept when it never did).
    Stored,
    /// After this id (`?since=`).
    After(StreamId),
}

/// Read the messages user `user` missed and hand them to connection `sid`.
#[derive(Debug)]
pub struct ReplayRequest {
    pub sid: u64,
    pub user: String,
    pub device: Option<String>,
    pub tenant: Option<String>,
    pub since: Since,
}

/// A client's `{"op":"ack"}`: it has processed the messages of its user up to `id`.
#[derive(Debug)]
pub struct Ack {
    pub user: String,
    /// "" for a token without a device.
    pub device: String,
    pub id: StreamId,
}

/// The receiving ends, taken by the bridge threads at start.
pub(crate) struct LinkReceivers {
    pub state: Receiver<StateEvent>,
    pub replay: Receiver<ReplayRequest>,
    pub acks: Receiver<Ack>,
}

/// Held by every reactor (through `session::Shared::bridge`). Cheap to clone.
#[derive(Clone)]
pub struct SessionLink {
    state: Sender<StateEvent>,
    replay: Sender<ReplayRequest>,
    acks: Sender<Ack>,
    /// Set when a state change was dropped: the state thread then rebuilds from a snapshot.
    pub(crate) state_lost: Arc<AtomicBool>,
    stats: Arc<BridgeStats>,
}

impl SessionLink {
    pub(crate) fn new(stats: Arc<BridgeStats>) -> (SessionLink, LinkReceivers) {
        let (state, state_rx) = crossbeam_channel::bounded(STATE_QUEUE);
        let (replay, replay_rx) = crossbeam_channel::bounded(REPLAY_QUEUE);
        let (acks, acks_rx) = crossbeam_channel::bounded(ACK_QUEUE);
        (
            SessionLink {
                state,
                replay,
                acks,
                state_lost: Arc::new(AtomicBool::new(false)),
                stats,
            },
            LinkReceivers {
                state: state_rx,
                replay: replay_rx,
                acks: acks_rx,
            },
        )
    }

    /// Hands over a state change; when the queue is full it is dropped, counted, and the state is rebuilt later.
    pub fn state(&self, ev: StateEvent) {
        if self.state.try_send(ev).is_err() {
            self.stats
                .state_events_dropped_total
                .fetch_add(1, Ordering::Relaxed);
            self.state_lost.store(true, Ordering::Relaxed);
        }
    }

    /// Asks for a replay; false if the queue is full (the caller fails the replay at once).
    pub fn replay(&self, req: ReplayRequest) -> bool {
        let ok = self.replay.try_send(req).is_ok();
        if !ok {
            self.stats
                .replay_failures_total
                .fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Records an ack; false (counted) if the queue is full.
    pub fn ack(&self, ack: Ack) -> bool {
        let ok = self.acks.try_send(ack).is_ok();
        if !ok {
            self.stats
                .acks_dropped_total
                .fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}
