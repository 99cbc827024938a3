//! Identity and sessions: socket ids, per-reactor registries (socket id → connection, user → connections), the
//! state an authenticated connection carries, the adaptive heartbeat, and the commands the API uses to reach
//! sessions (targeted publishes, disconnects, presence and user queries).
//!
//! Nothing on the publish path takes a lock: targeted publishes are commands to the reactors like channel
//! publishes. The only shared, locked structures are touched when a connection opens or closes (per-user
//! connection counts, per-IP connection rate), and they are sharded.

pub mod frames;
pub mod heartbeat;
pub mod registry;
pub mod stats;
pub mod users;

use crate::auth::grant::Grant;
use crate::auth::Verifier;
use crate::config::{AuthMode, Config};
use crate::hub::{Command, Hub, ReactorHandle};
use crate::ids::{sid, StreamId};
use crate::pool::SharedFrame;
use crate::ratelimit::{KeyedLimiter, Rate, TokenBucket};
use crate::upstream::{LogSink, Sink};
use crossbeam_channel::Sender;
use heartbeat::{Heartbeat, HeartbeatPolicy};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the API waits for the reactors to answer a query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Kinds of client messages, each with its own rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgKind {
    Ping = 0,
    Control = 1,
    Upstream = 2,
}

impl MsgKind {
    pub fn of(op: &str) -> MsgKind {
        match op {
            "ping" => MsgKind::Ping,
            "msg" => MsgKind::Upstream,
            _ => MsgKind::Control,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MsgKind::Ping => "ping",
            MsgKind::Control => "control",
            MsgKind::Upstream => "msg",
        }
    }
}

/// Session state shared by every reactor and the API (read-only after start-up except for the sharded,
/// open/close-time structures).
pub struct Shared {
    /// None with `auth.mode = "none"`.
    pub verifier: Option<Verifier>,
    pub max_per_user: u32,
    pub users: users::UserCounts,
    pub connect_limiter: Option<KeyedLimiter<u128>>,
    pub publish_limiter: Option<KeyedLimiter<String>>,
    /// Per-connection message rates, indexed by [`MsgKind`].
    pub message_rates: [Rate; 3],
    pub heartbeat: HeartbeatPolicy,
    pub sink: Arc<dyn Sink>,
    pub node_id: u16,
    pub api: stats::ApiSessionStats,
    /// Cluster mode: where reactors hand session state changes, replay requests and acks (never blocking).
    pub bridge: Option<crate::cluster::SessionLink>,
}

impl Shared {
    /// From the (validated) configuration, with the standalone logging sink.
    pub fn from_config(config: &Config) -> Result<Shared, String> {
        Shared::with_sink(config, Arc::new(LogSink))
    }

    pub fn with_sink(config: &Config, sink: Arc<dyn Sink>) -> Result<Shared, String> {
        let verifier = match config.auth.mode {
            AuthMode::None => None,
            AuthMode::Jwt => Some(
                Verifier::from_config(&config.auth)
                    .map_err(|e| format!("config key `{}`: {}", e.key, e.message))?,
            ),
        };
        let l = &config.limits;
        fn keyed<K: std::hash::Hash + Eq>(rate: f64, burst: u32) -> Option<KeyedLimiter<K>> {
            let rate = Rate::new(rate, burst);
            (!rate.unlimited()).then(|| KeyedLimiter::new(rate))
        }
        Ok(Shared {
            verifier,
            max_per_user: config.auth.max_connections_per_user,
            users: users::UserCounts::default(),
            connect_limiter: keyed(l.connect_rate, l.connect_burst),
            publish_limiter: keyed(l.publish_rate, l.publish_burst),
            message_rates: [
                Rate::new(l.ping_rate, l.ping_burst),
                Rate::new(l.control_rate, l.control_burst),
                Rate::new(l.upstream_rate, l.upstream_burst),
            ],
            heartbeat: HeartbeatPolicy::from_config(config),
            sink,
            node_id: config.server.node_id,
            api: stats::ApiSessionStats::default(),
            bridge: None,
        })
    }

    /// Takes a publish token for `tenant` (API side); false = over `limits.publish_rate`.
    pub fn allow_publish(&self, tenant: &str) -> bool {
        let Some(limiter) = &self.publish_limiter else {
            return true;
        };
        if limiter.try_take(tenant) {
            true
        } else {
            self.api
                .publish_rate_limited_total
                .fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// What a user's connections on one reactor share when it is the same (one allocation for all of them).
#[derive(Debug, PartialEq, Eq)]
pub struct Profile {
    pub user: Rc<str>,
    pub tenant: Option<Box<str>>,
    pub grant: Grant,
}

/// The per-connection state beyond the bare socket, boxed so that a connection without it (anonymous and silent)
/// pays one pointer: the identity of an authenticated connection, its token expiry, its heartbeat and its
/// message rate buckets. Allocated at the handshake for authenticated connections, at the first message for
/// anonymous ones.
pub struct ConnSession {
    pub profile: Option<Rc<Profile>>,
    pub device: Option<Box<str>>,
    /// `exp` of the token, Unix seconds (0 = none).
    pub exp: u64,
    /// Reactor second at which the token (plus leeway) expires; `u32::MAX` = never.
    pub expires_at: u32,
    /// Holds a slot in [`users::UserCounts`].
    pub counted: bool,
    /// Rate-limited messages in a row.
    pub strikes: u8,
    pub heartbeat: Heartbeat,
    pub buckets: [TokenBucket; 3],
    /// `?v=` or `X-Client-Version` at the upgrade, for upstream events.
    pub client_version: Option<Box<str>>,
    /// Cluster mode: live user messages held back while the connection's missed messages are read from Redis.
    pub replay: Option<Box<ReplayBuf>>,
    /// Cluster mode, after the replay: live user messages with an id at or below it were replayed (or are before
    /// the client's `since`) and are not delivered again. Stream ids only grow, so nothing newer is ever below it.
    pub replay_floor: Option<StreamId>,
}

/// Live user messages that arrived while a replay was being read, in arrival order with their stream ids, and
/// how many messages the replay has delivered so far (it comes in chunks).
#[derive(Default)]
pub struct ReplayBuf {
    pub live: Vec<(Option<StreamId>, SharedFrame)>,
    pub replayed: usize,
    /// Id of the last message replayed so far.
    pub last: Option<StreamId>,
}

/// Live messages held per connection during its replay at most; beyond, the connection is closed (1013) and the
/// client reconnects with the id it has.
pub const REPLAY_BUFFER_MAX: usize = 1024;

impl ConnSession {
    pub fn new(rates: &[Rate; 3], now_ms: u64) -> ConnSession {
        ConnSession {
            profile: None,
            device: None,
            exp: 0,
            expires_at: u32::MAX,
            counted: false,
            strikes: 0,
            heartbeat: Heartbeat::default(),
            buckets: [
                TokenBucket::full(&rates[0], now_ms),
                TokenBucket::full(&rates[1], now_ms),
                TokenBucket::full(&rates[2], now_ms),
            ],
            client_version: None,
            replay: None,
            replay_floor: None,
        }
    }

    pub fn user(&self) -> Option<&str> {
        self.profile.as_deref().map(|p| &*p.user)
    }

    pub fn tenant(&self) -> Option<&str> {
        self.profile.as_deref().and_then(|p| p.tenant.as_deref())
    }
}

/// One reactor's session state: its id generator, its registry and its counters.
pub struct ReactorSessions {
    pub shared: Arc<Shared>,
    pub sids: sid::SidGenerator,
    pub registry: registry::Registry,
    pub tally: stats::SessionTally,
    /// Reusable list of connection keys for targeted deliveries (no allocation per publish).
    pub scratch: Vec<u32>,
    /// Sequence number of this reactor's session state events (cluster mode), so a snapshot can tell which
    /// queued events it already contains.
    pub state_seq: u64,
    clock: Instant,
}

impl ReactorSessions {
    pub fn new(shared: Arc<Shared>, reactor: usize) -> Self {
        ReactorSessions {
            sids: sid::SidGenerator::new(shared.node_id, reactor),
            shared,
            registry: registry::Registry::default(),
            tally: stats::SessionTally::default(),
            scratch: Vec::new(),
            state_seq: 0,
            clock: Instant::now(),
        }
    }

    /// Milliseconds on this reactor's clock (for token buckets).
    pub fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }
}

// ---- commands from the API to the reactors ----------------------------------------------------------------------

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
pub struct SessionInfo {
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
        sessions: Vec<SessionInfo>,
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

/// Session work for a reactor (carried by [`Command::Session`]).
pub enum SessionCommand {
    /// Deliver to every connection of `user` (optionally only its `device` / `tenant`).
    PublishUser {
        user: Arc<str>,
        device: Option<Arc<str>>,
        tenant: Option<Arc<str>>,
        frame: SharedFrame,
        /// Cluster mode: the message's id in the user's notify stream.
        id: Option<StreamId>,
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
    /// The missed messages of connection `sid`, read by the bridge: delivered before the live ones held back.
    ReplayDone {
        sid: u64,
        outcome: ReplayOutcome,
    },
}

/// Why a sid cannot be on this node.
pub fn sid_home(hub: &Hub, sid: u64) -> Result<usize, &'static str> {
    if sid::node_of(sid) != hub.sessions.node_id {
        return Err("socket id belongs to another node");
    }
    let reactor = sid::reactor_of(sid);
    if reactor >= hub.reactors.len() {
        return Err("no such connection");
    }
    Ok(reactor)
}

/// Targeted publishes, disconnects and queries: the API side of sessions.
impl Hub {
    fn send_to(&self, r: &ReactorHandle, cmd: SessionCommand) -> bool {
        let ok = r.tx.send(Command::Session(cmd)).is_ok();
        if ok {
            r.waker.wake();
        }
        ok
    }

    /// Delivers `frame` to every connection of `user` on every reactor (an API publish: counted).
    pub fn publish_user(
        &self,
        user: &str,
        device: Option<&str>,
        tenant: Option<&str>,
        frame: SharedFrame,
    ) {
        self.deliver_user(user, device, tenant, frame, None);
        self.count_user_publish();
    }

    pub fn count_user_publish(&self) {
        self.sessions
            .api
            .user_publishes_total
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Delivers `frame` (with its notify stream id, in cluster mode) to every connection of `user` on every
    /// reactor.
    pub fn deliver_user(
        &self,
        user: &str,
        device: Option<&str>,
        tenant: Option<&str>,
        frame: SharedFrame,
        id: Option<StreamId>,
    ) {
        let user: Arc<str> = Arc::from(user);
        let device: Option<Arc<str>> = device.map(Arc::from);
        let tenant: Option<Arc<str>> = tenant.map(Arc::from);
        for r in &self.reactors {
            self.send_to(
                r,
                SessionCommand::PublishUser {
                    user: user.clone(),
                    device: device.clone(),
                    tenant: tenant.clone(),
                    frame: frame.clone(),
                    id,
                },
            );
        }
    }

    /// Delivers `frame` to one connection, through the one reactor that owns it (an API publish: counted).
    pub fn publish_sid(&self, sid: u64, frame: SharedFrame) -> Result<(), &'static str> {
        self.deliver_sid(sid, frame)?;
        self.sessions
            .api
            .sid_publishes_total
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Delivers `frame` to connection `sid` of this node.
    pub fn deliver_sid(&self, sid: u64, frame: SharedFrame) -> Result<(), &'static str> {
        let reactor = sid_home(self, sid)?;
        self.send_to(
            &self.reactors[reactor],
            SessionCommand::PublishSid { sid, frame },
        );
        Ok(())
    }

    /// Hands a connection's replay result to its reactor.
    pub fn replay_done(&self, sid: u64, outcome: ReplayOutcome) {
        if let Ok(reactor) = sid_home(self, sid) {
            self.send_to(
                &self.reactors[reactor],
                SessionCommand::ReplayDone { sid, outcome },
            );
        }
    }

    /// Closes the target's connections on this node without waiting for the reactors (a disconnect from another
    /// node).
    pub fn disconnect_async(&self, target: Target, code: u16, reason: &str) {
        let only = match &target {
            Target::Sid(sid) => match sid_home(self, *sid) {
                Ok(r) => Some(r),
                Err(_) => return,
            },
            Target::User(_) => None,
        };
        let reason: Arc<str> = Arc::from(reason);
        // Nobody reads the answers: the reactors' sends to a dropped receiver fail quietly.
        let (reply, _) = crossbeam_channel::bounded(self.reactors.len().max(1));
        for (i, r) in self.reactors.iter().enumerate() {
            if only.is_none_or(|o| o == i) {
                self.send_to(
                    r,
                    SessionCommand::Disconnect {
                        target: target.clone(),
                        code,
                        reason: reason.clone(),
                        reply: reply.clone(),
                    },
                );
            }
        }
    }

    /// Every open gateway connection of this node, per reactor with the sequence number of its last state event.
    pub fn snapshot(&self) -> Result<Vec<Answer>, &'static str> {
        self.ask(None, |reply| SessionCommand::Query {
            query: Query::Snapshot,
            reply,
        })
    }

    /// Asks the reactors (all, or the one owning a sid) and collects their answers within [`QUERY_TIMEOUT`].
    fn ask(
        &self,
        only: Option<usize>,
        make: impl Fn(Sender<Answer>) -> SessionCommand,
    ) -> Result<Vec<Answer>, &'static str> {
        let (tx, rx) = crossbeam_channel::bounded(self.reactors.len().max(1));
        let mut asked = 0;
        for (i, r) in self.reactors.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            if self.send_to(r, make(tx.clone())) {
                asked += 1;
            }
        }
        drop(tx);
        let deadline = Instant::now() + QUERY_TIMEOUT;
        let mut answers = Vec::with_capacity(asked);
        while answers.len() < asked {
            match rx.recv_deadline(deadline) {
                Ok(a) => answers.push(a),
                // Disconnected: a reactor stopped (shutdown) without answering; use what arrived.
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    return Err("a reactor did not answer in time")
                }
            }
        }
        Ok(answers)
    }

    /// Closes the target's connections; returns how many were closed.
    pub fn disconnect(
        &self,
        target: Target,
        code: u16,
        reason: &str,
    ) -> Result<usize, &'static str> {
        self.sessions
            .api
            .disconnect_requests_total
            .fetch_add(1, Ordering::Relaxed);
        let only = match &target {
            Target::Sid(sid) => match sid_home(self, *sid) {
                Ok(r) => Some(r),
                Err(_) => return Ok(0),
            },
            Target::User(_) => None,
        };
        let reason: Arc<str> = Arc::from(reason);
        let answers = self.ask(only, |reply| SessionCommand::Disconnect {
            target: target.clone(),
            code,
            reason: reason.clone(),
            reply,
        })?;
        Ok(answers
            .into_iter()
            .map(|a| match a {
                Answer::Disconnected(n) => n,
                _ => 0,
            })
            .sum())
    }

    /// Subscribers of `channel` with a socket id above `after`, lowest first, at most `limit`; also the total
    /// number of subscribers and whether more follow.
    pub fn presence(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<(usize, Vec<Member>, bool), &'static str> {
        let channel: Arc<str> = Arc::from(channel);
        // One more than asked tells whether there is a next page.
        let answers = self.ask(None, |reply| SessionCommand::Query {
            query: Query::Presence {
                channel: channel.clone(),
                after,
                limit: limit + 1,
            },
            reply,
        })?;
        let mut total = 0;
        let mut members = Vec::new();
        for a in answers {
            if let Answer::Presence {
                total: t,
                members: m,
            } = a
            {
                total += t;
                members.extend(m);
            }
        }
        members.sort_unstable_by_key(|m| m.sid);
        let more = members.len() > limit;
        members.truncate(limit);
        Ok((total, members, more))
    }

    /// The connections of `user` on this node, by socket id.
    pub fn user_connections(&self, user: &str) -> Result<Vec<ConnInfo>, &'static str> {
        let user: Arc<str> = Arc::from(user);
        let answers = self.ask(None, |reply| SessionCommand::Query {
            query: Query::User(user.clone()),
            reply,
        })?;
        let mut all: Vec<ConnInfo> = answers
            .into_iter()
            .flat_map(|a| match a {
                Answer::Connections(c) => c,
                _ => Vec::new(),
            })
            .collect();
        all.sort_unstable_by_key(|c| c.sid);
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_state_sizes() {
        // Boxed per connection only when it has a token or has sent a request; shared per user when equal.
        let s = std::mem::size_of::<super::ConnSession>();
        let p = std::mem::size_of::<super::Profile>();
        println!("size_of::<ConnSession>() = {s}, size_of::<Profile>() = {p}");
        assert!(s <= 128, "ConnSession grew to {s} bytes");
    }
}
