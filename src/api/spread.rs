//! API connections spread evenly over the reactors. The kernel hashes each connection to one reactor's
//! SO_REUSEPORT socket of `api.listen`; with the few connections a backend opens, that often leaves one reactor
//! with all of them and another with none, and publish capacity then stops growing with reactors (and varies from
//! one set of connections to the next). So the reactor that accepts a connection serves it only if no other
//! reactor serves fewer; otherwise it hands the socket to the one that serves the fewest, before reading a byte.

use super::ReactorApiStats;
use crate::hub::Hub;
use crossbeam_channel::{Receiver, Sender};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

/// Every reactor's way to hand a socket to another (one per reactor, shared by all).
pub struct Spread {
    to: Vec<Sender<RawFd>>,
}

/// The sockets other reactors handed to this one.
pub struct Handed(Receiver<RawFd>);

impl Spread {
    /// The spread for `reactors` reactors, and each reactor's end.
    pub fn new(reactors: usize) -> (Spread, Vec<Handed>) {
        let (to, from) = (0..reactors)
            .map(|_| crossbeam_channel::unbounded())
            .unzip::<_, _, Vec<_>, Vec<_>>();
        (Spread { to }, from.into_iter().map(Handed).collect())
    }

    /// Places a socket reactor `me` accepted: `me` unless another reactor serves fewer API connections, then the
    /// one that serves the fewest. The connection is counted for the chosen reactor at once (`connections`), so the
    /// next accept, on any reactor, sees it; the owner takes the count back when it closes the connection.
    pub fn place(&self, me: usize, counts: &[ReactorApiStats]) -> usize {
        let load = |i: usize| counts[i].connections.load(Ordering::Relaxed);
        let fewest = (0..counts.len()).min_by_key(|&i| load(i)).unwrap_or(me);
        let chosen = if load(fewest) < load(me) { fewest } else { me };
        counts[chosen].connections.fetch_add(1, Ordering::Relaxed);
        chosen
    }

    /// Hands `fd` to reactor `to` and wakes it; false (the socket stays with the caller) if that reactor is gone.
    pub fn hand(&self, to: usize, fd: RawFd, hub: &Hub) -> bool {
        if self.to[to].send(fd).is_err() {
            return false;
        }
        // Sent before the wake-up: a reactor looks at its handed sockets after it announced it may sleep
        // (`Handler::before_wait`), so either it sees this one then or the wake-up ends its sleep.
        hub.reactors[to].waker.wake();
        true
    }
}

impl Handed {
    /// The next socket handed over, if any.
    pub fn next(&self) -> Option<RawFd> {
        self.0.try_recv().ok()
    }
}
