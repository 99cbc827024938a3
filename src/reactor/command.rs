//! Work other threads hand a reactor through its bounded command channel.

use crate::pool::SharedFrame;
use std::sync::Arc;
use std::time::Instant;

/// A command for one reactor. `A` is the application's own command type (see [`super::Handler::Command`]).
pub enum Command<A> {
    /// Deliver `frame` to every local subscriber of `channel`.
    Publish {
        channel: Arc<str>,
        frame: SharedFrame,
        /// When the publish was accepted (the start of its delivery latency).
        since: Instant,
    },
    /// A publication with an offset in its channel's history: handed to [`super::Handler::on_publication`], which
    /// decides who of the channel's local subscribers gets it (a recovering one may already have it).
    PublishAt {
        channel: Arc<str>,
        offset: u64,
        frame: SharedFrame,
        /// When the publish was accepted (the start of its delivery latency).
        since: Instant,
    },
    /// Deliver `frame` to every open connection the application accepts broadcasts on.
    Broadcast { frame: SharedFrame, since: Instant },
    /// Stop accepting, close everyone with 1001, and stop after at most `drain_ms`.
    Shutdown { drain_ms: u64 },
    /// Handed to the application's [`super::Handler::on_command`].
    App(A),
}
