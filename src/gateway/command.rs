//! The commands the API and the cluster bridge send to the reactors' gateway state, and the answers they get:
//! plain data, so the senders (the hub) and the receiver (the reactor) share nothing else.

use crate::ids::StreamId;
use crate::pool::SharedFrame;
use crossbeam_channel::Sender;
use std::sync::Arc;

/// Who a disconnect is for.
#[derive(Debug, Clone)]
pub enum Target {
    User(Arc<str>),
    Sid(u64),
}

/// Read-only questions to every reactor.
#[derive(Debug, Clone)]
pub enum Query {
    /// Subscribers of a channel with a socket id above `after`, at most `limit` of them (lowest ids first).
    Presence {
        channel: Arc<str>,
        after: u64,
        limit: usize,
    },
    /// The connections of a user.
    User(Arc<str>),
    /// Every open gateway connection with its identity and channels (cluster mode: repairs the session state in
    /// Redis after state events were dropped).
    Snapshot,
}

/// One connection in a snapshot.
#[derive(Debug, Clone)]
pub struct ConnSnapshot {
    pub sid: u64,
    pub user: Option<String>,
    pub device: Option<String>,
    pub tenant: Option<String>,
    pub channels: Vec<String>,
}

/// One subscriber in a presence answer.
#[derive(Debug, Clone)]
pub struct Member {
    pub sid: u64,
    pub user: Option<String>,
}

/// One connection in a user answer.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub sid: u64,
    pub reactor: usize,
    pub device: Option<String>,
    pub tenant: Option<String>,
    pub exp: u64,
    pub channels: Vec<String>,
    pub allowed: Vec<String>,
}

#[derive(Debug)]
pub enum Answer {
    Disconnected(usize),
    Presence {
        total: usize,
        members: Vec<Member>,
    },
    Connections(Vec<ConnInfo>),
    /// The reactor's connections and the sequence number of its last state event before the snapshot.
    Snapshot {
        reactor: usize,
        seq: u64,
        sessions: Vec<ConnSnapshot>,
    },
}

/// What reading a connection's missed messages gave (cluster mode), for its reactor.
#[derive(Debug, Default)]
pub struct ReplayOutcome {
    /// The replayed frames, in stream order.
    pub frames: Vec<SharedFrame>,
    /// The id the replay started after (the client's `since` or its stored ack); live messages up to it are not
    /// delivered.
    pub floor: Option<StreamId>,
    /// The id of the last replayed message.
    pub last: Option<StreamId>,
    /// Why the replay could not be read (live delivery continues).
    pub error: Option<String>,
    /// More messages follow after `last` (the replay comes in chunks of bounded size).
    pub more: bool,
}

/// Work for the gateway state of one reactor: targeted publishes, disconnects, queries and replay results
/// (carried by the hub's command queue to the reactor).
pub enum Command {
    /// Deliver to every connection of `user` (optionally only its `device` / `tenant`).
    PublishUser {
        user: Arc<str>,
        device: Option<Arc<str>>,
        tenant: Option<Arc<str>>,
        frame: SharedFrame,
        /// The message's id in the user's notify stream (cluster) or replay store (standalone).
        id: Option<StreamId>,
        /// The backend asked for delivery confirmation: each connection must ack `id` or gets it again.
        ack: bool,
    },
    /// Deliver to one connection.
    PublishSid {
        sid: u64,
        frame: SharedFrame,
    },
    /// Close connections with `code` and `reason`; answers [`Answer::Disconnected`].
    Disconnect {
        target: Target,
        code: u16,
        reason: Arc<str>,
        reply: Sender<Answer>,
    },
    Query {
        query: Query,
        reply: Sender<Answer>,
    },
    /// A client op for fallback session `sid` (SSE, long-poll), posted on another reactor's connection.
    SessionOp {
        sid: u64,
        op: Box<[u8]>,
    },
    /// A long-poll for session `sid`, held by reactor `waiter.reactor` (which may be this one).
    Poll {
        sid: u64,
        ops: Box<[u8]>,
        waiter: super::long_poll::Waiter,
    },
    /// The answer to a poll held by this reactor on connection `key`, if it still holds `token`.
    PollAnswer {
        key: usize,
        token: u64,
        response: Vec<u8>,
    },
    /// The missed messages of connection `sid`, read by the bridge: delivered before the live ones held back.
    ReplayDone {
        sid: u64,
        outcome: ReplayOutcome,
    },
}
