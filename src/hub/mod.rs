//! Routing between threads. A publish is encoded once into a [`SharedFrame`] and handed to every reactor through
//! its command channel; each reactor queues it on its own local subscribers. No global lock on this path.
//! Targeted publishes, disconnects and queries of the gateway state go the same way ([`targeted`]). Senders go
//! through an [`Outbox`]: one wake-up per reactor per batch of commands, however many it carries.

use crate::gateway::{self, stats::GatewayStats};
use crate::pool::SharedFrame;
use crate::reactor::{self, BusiestChannels, ReactorLatency, ReactorStats, Tally, Waker};
use crossbeam_channel::Sender;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

pub mod merge;
mod outbox;
pub mod peers;
mod targeted;
pub use outbox::{Backlog, HandoffStats, Outbox};
pub use targeted::sid_home;

/// A command for a reactor running the gateway.
pub type Command = reactor::Command<gateway::command::Command>;

/// How other threads reach one reactor.
pub struct ReactorHandle {
    pub tx: Sender<Command>,
    pub waker: Arc<Waker>,
    pub stats: Arc<ReactorStats>,
    /// The counters of the reactor's gateway (sessions, auth, rates, upstream).
    pub gateway: Arc<GatewayStats>,
    /// The reactor's latency histograms (delivery, handshake).
    pub latency: Arc<ReactorLatency>,
    /// The reactor's busiest channels, refreshed a second after [`BusiestChannels::want`].
    pub busiest: Arc<BusiestChannels>,
    /// Batches of commands handed to this reactor: one per outbox flush that gave it commands.
    pub batches_total: AtomicU64,
}

/// Everything the API and the cluster bridge need to reach the reactors.
pub struct Hub {
    pub reactors: Vec<ReactorHandle>,
    /// Connections open across all reactors (enforces `server.max_connections`).
    pub live_connections: Arc<AtomicUsize>,
    pub started: std::time::Instant,
    /// Gateway state shared with the reactors: verifier, limits, per-user counts (src/gateway/).
    pub gateway: Arc<gateway::Shared>,
    /// Batches of channels with a merge window (`merge_ms`); None when no namespace has one.
    pub merger: Option<Arc<merge::Merger>>,
    pub handoff: HandoffStats,
}

impl Hub {
    /// A batch of commands for the reactors; each reactor given one is woken once, when it is flushed or dropped.
    pub fn outbox(&self) -> Outbox<'_> {
        Outbox::new(self, None)
    }

    /// A reactor's batch of commands: it never blocks, and leaves full queues' commands and its wake-ups to
    /// `backlog`, flushed once per loop iteration ([`Backlog::flush`]).
    pub fn reactor_outbox<'h>(&'h self, backlog: &'h mut Backlog) -> Outbox<'h> {
        Outbox::new(self, Some(backlog))
    }

    /// Sum of all reactors' counters.
    pub fn totals(&self) -> Vec<Tally> {
        self.reactors.iter().map(|r| r.stats.load()).collect()
    }
}

/// Publishes, broadcasts and shutdown: handed to every reactor.
impl Outbox<'_> {
    fn send(&mut self, make: impl Fn() -> Command) {
        for i in 0..self.hub.reactors.len() {
            // A reactor that has exited (shutdown) dropped its receiver: nothing to deliver there.
            self.push(i, make());
        }
    }

    /// Hands an encoded channel message to every reactor.
    pub fn publish(&mut self, channel: &str, frame: SharedFrame) {
        let channel: Arc<str> = Arc::from(channel);
        self.count_publish();
        let since = self.accepted();
        self.send(|| Command::Publish {
            channel: channel.clone(),
            frame: frame.clone(),
            since,
        });
    }

    /// A channel publication (raw JSON `data`; `at`: offset and epoch Redis gave it) into the channel's merge
    /// window; false when the channel has none (the caller publishes it directly).
    pub fn merge(&mut self, channel: &str, data: &str, at: Option<(u64, &str)>) -> bool {
        let hub = self.hub;
        let Some(merger) = &hub.merger else {
            return false;
        };
        let Some(window) = merger.window(channel) else {
            return false;
        };
        let item = merge::Item {
            data: Box::from(data),
            at: at.map(|(o, e)| (o, Arc::from(e))),
        };
        merger.add(self, channel, window, item);
        true
    }

    /// Hands a publication with its offset in the channel's history to every reactor.
    pub fn publish_at(&mut self, channel: &str, offset: u64, frame: SharedFrame) {
        let channel: Arc<str> = Arc::from(channel);
        self.count_publish();
        let since = self.accepted();
        self.send(|| Command::PublishAt {
            channel: channel.clone(),
            offset,
            frame: frame.clone(),
            since,
        });
    }

    pub fn broadcast(&mut self, frame: SharedFrame) {
        self.count_publish();
        let since = self.accepted();
        self.send(|| Command::Broadcast {
            frame: frame.clone(),
            since,
        });
    }

    pub fn shutdown(&mut self, drain_ms: u64) {
        self.send(|| Command::Shutdown { drain_ms });
    }
}
