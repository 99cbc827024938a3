//! The gateway application layer: what a client connection is beyond its socket. Per-reactor registries (socket
//! id → connection, user → connections), the state a client connection carries ([`ClientState`]: identity, token
//! expiry, heartbeat, message rates), the adaptive heartbeat, the commands that reach a reactor's clients
//! ([`command`]), and the [`ClusterLink`] through which reactors talk to the cluster bridge without depending on it.
//!
//! Nothing on the publish path takes a lock: targeted publishes are commands to the reactors like channel
//! publishes. The only shared, locked structures are touched when a connection opens or closes (per-user
//! connection counts, per-IP connection rate), and they are sharded.

mod acks;
pub mod cluster_link;
pub mod command;
mod cors;
mod deliver;
pub mod demo;
pub mod demo_relay;
pub mod fallback_sessions;
pub mod frames;
mod handler;
pub mod heartbeat;
pub mod long_poll;
pub mod peers;
mod recovery;
pub mod registry;
mod requests;
mod routes;
pub mod scripted;
mod session_ops;
pub mod sse;
pub mod stats;
mod timer;
mod upgrade;
pub mod user_log;
pub mod users;

pub use handler::{Client, Endpoint, Gateway};

use crate::auth::grant::Grant;
use crate::auth::Verifier;
use crate::config::{AuthMode, Config};
use crate::history::History;
use crate::ids::{sid, StreamId};
use crate::pool::SharedFrame;
use crate::ratelimit::{KeyedLimiter, Rate, TokenBucket};
use crate::upstream::{LogSink, Sink};
use heartbeat::{Heartbeat, HeartbeatPolicy};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub use cluster_link::ClusterLink;
pub use command::{Answer, ConnInfo, ConnSnapshot, Member, Query, ReplayOutcome, Target};

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

/// Gateway state shared by every reactor and the API (read-only after start-up except for the sharded,
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
    pub api: stats::ApiGatewayStats,
    /// Cluster mode: where reactors hand session state changes, replay requests and acks (never blocking).
    pub bridge: Option<Arc<dyn ClusterLink>>,
    /// Standalone mode: the in-memory replay store of user pushes (None in cluster mode, or when
    /// `delivery.offline_maxlen` is 0).
    pub user_log: Option<user_log::UserLog>,
    /// Channel history (standalone), when a `[[channels.namespace]]` keeps one; the API writes, reactors read.
    pub history: Option<Arc<History>>,
    /// Live SSE and long-poll sessions and their keys, seen from every reactor.
    pub fallback: fallback_sessions::FallbackSessions,
    /// How a reactor hands a fallback session's op to the reactor that holds the session (set at start-up).
    pub peers: Option<Arc<dyn peers::PeerLink>>,
    /// The demo page and SDK (`debug.demo_path`), when on.
    pub demo: Option<demo::DemoPages>,
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
            api: stats::ApiGatewayStats::default(),
            bridge: None,
            user_log: if config.cluster.redis.is_empty() {
                user_log::UserLog::new(&config.delivery)
            } else {
                None
            },
            history: History::from_config(&config.channels, !config.cluster.redis.is_empty()),
            fallback: fallback_sessions::FallbackSessions::new()
                .map_err(|e| format!("reading /dev/urandom for session keys: {e}"))?,
            peers: None,
            demo: demo::DemoPages::new(&config.debug.demo_path, &config.server.ws_path),
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
pub struct ClientState {
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
    /// Malformed requests so far (the error budget).
    pub errors: u8,
    pub heartbeat: Heartbeat,
    pub buckets: [TokenBucket; 3],
    /// `?v=` or `X-Client-Version` at the upgrade, for upstream events.
    pub client_version: Option<Box<str>>,
    /// Cluster mode: live user messages held back while the connection's missed messages are read from Redis.
    pub replay: Option<Box<ReplayBuf>>,
    /// Cluster mode, after the replay: live user messages with an id at or below it were replayed (or are before
    /// the client's `since`) and are not delivered again. Stream ids only grow, so nothing newer is ever below it.
    pub replay_floor: Option<StreamId>,
    /// User pushes sent with `"ack": true` that the client has not acknowledged yet (src/gateway/acks.rs).
    pub acks: Option<Box<acks::PendingAcks>>,
}

/// Live user messages that arrived while a replay was being read, in arrival order with their stream ids, and
/// how many messages the replay has delivered so far (it comes in chunks).
#[derive(Default)]
pub struct ReplayBuf {
    /// Held back: stream id, frame, and whether the push wants an ack.
    pub live: Vec<(Option<StreamId>, SharedFrame, bool)>,
    pub replayed: usize,
    /// Id of the last message replayed so far.
    pub last: Option<StreamId>,
    /// Standalone: where the next chunk is read from the replay store, on the connection's millisecond timer.
    pub local: Option<cluster_link::Since>,
}

/// Live messages held per connection during its replay at most; beyond, the connection is closed (1013) and the
/// client reconnects with the id it has.
pub const REPLAY_BUFFER_MAX: usize = 1024;

impl ClientState {
    pub fn new(rates: &[Rate; 3], now_ms: u64) -> ClientState {
        ClientState {
            profile: None,
            device: None,
            exp: 0,
            expires_at: u32::MAX,
            counted: false,
            strikes: 0,
            errors: 0,
            heartbeat: Heartbeat::default(),
            buckets: [
                TokenBucket::full(&rates[0], now_ms),
                TokenBucket::full(&rates[1], now_ms),
                TokenBucket::full(&rates[2], now_ms),
            ],
            client_version: None,
            replay: None,
            replay_floor: None,
            acks: None,
        }
    }

    pub fn user(&self) -> Option<&str> {
        self.profile.as_deref().map(|p| &*p.user)
    }

    pub fn tenant(&self) -> Option<&str> {
        self.profile.as_deref().and_then(|p| p.tenant.as_deref())
    }
}

/// One reactor's gateway state: its id generator, its registry and its counters.
pub struct ReactorState {
    pub shared: Arc<Shared>,
    pub sids: sid::SidGenerator,
    pub registry: registry::Registry,
    pub tally: stats::GatewayTally,
    /// Reusable list of connection keys for targeted deliveries (no allocation per publish).
    pub scratch: Vec<u32>,
    /// Sequence number of this reactor's session state events (cluster mode), so a snapshot can tell which
    /// queued events it already contains.
    pub state_seq: u64,
    /// The reactor this state belongs to.
    pub reactor: usize,
    clock: Instant,
    /// Per history channel, connections that recovered or subscribed at an offset that live publications still
    /// in the command queue may not exceed (src/gateway/recovery.rs).
    floors: HashMap<Box<str>, Vec<recovery::Floor>>,
}

impl ReactorState {
    pub fn new(shared: Arc<Shared>, reactor: usize) -> Self {
        ReactorState {
            sids: sid::SidGenerator::new(shared.node_id, reactor),
            shared,
            registry: registry::Registry::default(),
            tally: stats::GatewayTally::default(),
            scratch: Vec::new(),
            state_seq: 0,
            reactor,
            clock: Instant::now(),
            floors: HashMap::new(),
        }
    }

    /// Milliseconds on this reactor's clock (for token buckets).
    pub fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_state_sizes() {
        // Boxed per connection only when it has a token or has sent a request; shared per user when equal.
        let s = std::mem::size_of::<super::ClientState>();
        let p = std::mem::size_of::<super::Profile>();
        println!("size_of::<ClientState>() = {s}, size_of::<Profile>() = {p}");
        assert!(s <= 128, "ClientState grew to {s} bytes");
    }
}
