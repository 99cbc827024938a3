//! How reactors reach the cluster bridge, seen from the gateway: session state changes, replay requests and acks.
//! The gateway owns this trait and its data; the bridge (src/cluster/) implements it, so the gateway never depends
//! on the cluster code and a standalone node simply has no link. Every call must return at once: a reactor never
//! waits for a bridge thread or for Redis.

use crate::ids::StreamId;

/// The reactors' way into the cluster bridge (held in `gateway::Shared::bridge`).
pub trait ClusterLink: Send + Sync {
    /// Hands over a state change; one that does not fit is dropped and the bridge rebuilds its state later.
    fn state(&self, ev: StateEvent);
    /// Asks for a replay; false if it could not be queued (the caller fails the replay at once).
    fn replay(&self, req: ReplayRequest) -> bool;
    /// Records an ack; false if it could not be queued (the client's next ack supersedes it).
    fn ack(&self, ack: Ack) -> bool;
    /// False while this node must open no connections: another node holds its node id, so new socket ids could
    /// collide with that node's.
    fn may_open(&self) -> bool;
}

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
    /// The connection that sent it: told when the bridge refuses it (an id beyond the user's messages).
    pub sid: u64,
    pub user: String,
    /// "" for a token without a device.
    pub device: String,
    pub id: StreamId,
}
