//! How one reactor's gateway hands work to another's. A fallback transport's client speaks through HTTP requests
//! that SO_REUSEPORT may give to any reactor, while its session lives on the reactor that opened it (named by the
//! socket id). The hub implements this trait, since it owns the reactors' command queues; the gateway never
//! imports the hub.

use super::command::Command;

pub trait PeerLink: Send + Sync {
    /// Hands `cmd` to reactor `reactor` without waiting; false when its queue is full or it has stopped.
    fn send(&self, reactor: usize, cmd: Command) -> bool;
}
