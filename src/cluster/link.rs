//! The reactors' way into the bridge (cluster mode): session state changes, replay requests and acks. Every hand-
//! over is a `try_send` on a bounded channel, so a reactor never waits for a bridge thread or for Redis; what does
//! not fit is counted and dropped, and each kind says how it recovers:
//! - a dropped state change makes the state thread rebuild its table from a snapshot of the reactors;
//! - a replay request that does not fit is answered at once with a failed replay (live delivery continues);
//! - a dropped ack is superseded by the client's next one (acks are cumulative).

use super::BridgeStats;
use crate::gateway::cluster_link::{Ack, ClusterLink, ReplayRequest, StateEvent};
use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// State changes queued between the reactors and the state thread.
const STATE_QUEUE: usize = 65_536;
/// Replay requests queued (connections opening faster than Redis answers).
const REPLAY_QUEUE: usize = 4096;
/// Acks queued before they are merged per user and device.
const ACK_QUEUE: usize = 65_536;

/// The receiving ends, taken by the bridge threads at start.
pub(crate) struct LinkReceivers {
    pub state: Receiver<StateEvent>,
    pub replay: Receiver<ReplayRequest>,
    pub acks: Receiver<Ack>,
}

/// The bridge's end of the gateway's [`ClusterLink`], held by every reactor (through `gateway::Shared::bridge`).
/// Cheap to clone.
#[derive(Clone)]
pub struct BridgeLink {
    state: Sender<StateEvent>,
    replay: Sender<ReplayRequest>,
    acks: Sender<Ack>,
    /// Set when a state change was dropped: the state thread then rebuilds from a snapshot.
    pub(crate) state_lost: Arc<AtomicBool>,
    stats: Arc<BridgeStats>,
}

impl BridgeLink {
    pub(crate) fn new(stats: Arc<BridgeStats>) -> (BridgeLink, LinkReceivers) {
        let (state, state_rx) = crossbeam_channel::bounded(STATE_QUEUE);
        let (replay, replay_rx) = crossbeam_channel::bounded(REPLAY_QUEUE);
        let (acks, acks_rx) = crossbeam_channel::bounded(ACK_QUEUE);
        (
            BridgeLink {
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
}

impl ClusterLink for BridgeLink {
    /// Hands over a state change; when the queue is full it is dropped, counted, and the state is rebuilt later.
    fn state(&self, ev: StateEvent) {
        if self.state.try_send(ev).is_err() {
            self.stats
                .state_events_dropped_total
                .fetch_add(1, Ordering::Relaxed);
            self.state_lost.store(true, Ordering::Relaxed);
        }
    }

    /// Asks for a replay; false if the queue is full (the caller fails the replay at once).
    fn replay(&self, req: ReplayRequest) -> bool {
        let ok = self.replay.try_send(req).is_ok();
        if !ok {
            self.stats
                .replay_failures_total
                .fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    fn may_open(&self) -> bool {
        !self.stats.node_id_taken.load(Ordering::Relaxed)
    }

    /// Records an ack; false (counted) if the queue is full.
    fn ack(&self, ack: Ack) -> bool {
        let ok = self.acks.try_send(ack).is_ok();
        if !ok {
            self.stats
                .acks_dropped_total
                .fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}
