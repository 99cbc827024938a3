//! The gateway's way to hand a command to another reactor ([`gateway::peers::PeerLink`]): a fallback session's
//! op posted on one reactor goes to the reactor that holds the session. Never waits: a full queue is refused and
//! the client is told to retry.

use super::Command;
use crate::gateway::{self, peers::PeerLink};
use crate::reactor::Waker;
use crossbeam_channel::Sender;
use std::sync::Arc;

pub struct Peers {
    pub reactors: Vec<(Sender<Command>, Arc<Waker>)>,
}

impl PeerLink for Peers {
    fn send(&self, reactor: usize, cmd: gateway::command::Command) -> bool {
        let Some((tx, waker)) = self.reactors.get(reactor) else {
            return false;
        };
        let sent = tx.try_send(Command::App(cmd)).is_ok();
        if sent {
            waker.wake();
        }
        sent
    }
}
