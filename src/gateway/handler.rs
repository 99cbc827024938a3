//! The gateway as a reactor [`Handler`]: one [`Gateway`] per reactor thread, holding that reactor's share of the
//! sessions (socket ids, the registry, counters) and the policy copied out of the config. The hooks are spread
//! over the files of this folder by concern: upgrade.rs (who may connect and how), requests.rs (the client JSON
//! protocol), timer.rs (heartbeat and token expiry), deliver.rs (commands from the API and the cluster bridge).

use super::acks::AckPolicy;
use super::command::Command;
use super::stats::GatewayStats;
use super::{ClientState, MsgKind, ReactorState, Shared};
use crate::config::Config;
use crate::frame::handshake::{Reject, Request};
use crate::pool::SharedFrame;
use crate::ratelimit::ip_key;
use crate::reactor::{Core, Handler, Key, Reply};
use std::net::IpAddr;
use std::sync::Arc;

/// Which endpoint an open connection upgraded on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The gateway endpoint: the JSON client protocol.
    Gateway,
    /// The debug echo endpoint.
    Echo,
}

/// The gateway's part of a connection, inline in the reactor's slab: every idle connection pays for it, so it is
/// two words; whatever else a connection needs is boxed in [`ClientState`], allocated only when used.
#[derive(Default)]
pub struct Client {
    /// Socket id, given at the upgrade on the gateway endpoint; 0 before, and on the echo endpoint.
    pub sid: u64,
    /// Identity, token expiry, heartbeat, message rates and errors; None for an anonymous connection that has
    /// not sent a request yet.
    pub state: Option<Box<ClientState>>,
}

impl Client {
    /// The endpoint of an open connection (only the gateway endpoint gives socket ids).
    pub fn endpoint(&self) -> Endpoint {
        if self.sid != 0 {
            Endpoint::Gateway
        } else {
            Endpoint::Echo
        }
    }
}

/// Settings of the client protocol, copied out of the config.
pub(super) struct Policy {
    pub ws_path: String,
    pub echo_path: String,
    pub allowed_origins: Vec<String>,
    pub max_channels: usize,
    pub error_budget: u8,
    pub ping_interval: u32,
    pub acks: AckPolicy,
    /// Largest replay one subscribe request (or connect URL) sends over all its channels (half of
    /// `ws.max_outbound_bytes`); a channel whose replay does not fit is answered `recovered:false`.
    pub max_replay_bytes: usize,
}

/// One reactor's gateway.
pub struct Gateway {
    pub(super) policy: Policy,
    /// This reactor's share of the gateway state: socket ids, registry, counters.
    pub(super) local: ReactorState,
    /// This reactor's long-poll sessions.
    pub(super) polls: super::long_poll::PollSessions,
    stats: Arc<GatewayStats>,
}

impl Gateway {
    /// The gateway of reactor `reactor`, publishing its counters into `stats`.
    pub fn new(
        config: &Config,
        shared: Arc<Shared>,
        reactor: usize,
        stats: Arc<GatewayStats>,
    ) -> Gateway {
        Gateway {
            policy: Policy {
                ws_path: config.server.ws_path.clone(),
                echo_path: config.debug.echo_path.clone(),
                allowed_origins: config.server.allowed_origins.clone(),
                max_channels: config.ws.max_channels_per_connection,
                error_budget: config.ws.error_budget.min(255) as u8,
                ping_interval: config.ws.ping_interval.min(u32::MAX as u64 / 4) as u32,
                acks: AckPolicy::from_config(config),
                max_replay_bytes: config.ws.max_outbound_bytes / 2,
            },
            local: ReactorState::new(shared, reactor),
            polls: super::long_poll::PollSessions::new(config),
            stats,
        }
    }
}

impl Handler for Gateway {
    type Conn = Client;
    type Command = Command;

    /// The per-source-address connection rate (`limits.connect_rate`), checked right after accept.
    fn on_accept(&mut self, _core: &mut Core<Client>, peer: Option<IpAddr>) -> Result<(), Reject> {
        let (Some(limiter), Some(ip)) = (&self.local.shared.connect_limiter, peer) else {
            return Ok(());
        };
        if limiter.try_take(&ip_key(ip)) {
            return Ok(());
        }
        self.local.tally.connect_rate_limited_total += 1;
        Err(Reject::TooManyRequests(
            "too many new connections from this address",
        ))
    }

    fn on_http(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        req: &Request<'_>,
        body: &[u8],
        response: &mut Vec<u8>,
    ) -> Result<Reply, Reject> {
        self.route(core, key, req, body, response)
    }

    fn on_message(&mut self, core: &mut Core<Client>, key: Key, opcode: u8, payload: &[u8]) {
        match core.app(key).endpoint() {
            Endpoint::Echo => {
                let mut frame =
                    Vec::with_capacity(payload.len() + crate::frame::encode::MAX_HEADER);
                crate::frame::encode::push_frame(&mut frame, opcode, payload);
                core.send(key, frame);
            }
            Endpoint::Gateway => self.on_request(core, key, opcode, payload),
        }
    }

    /// WebSocket pings and pongs count against the connection's `ping` budget (`limits.ping_rate`), like
    /// `op: ping`: a flood of control frames gets no pongs, then close 4008.
    fn on_control(&mut self, core: &mut Core<Client>, key: Key) -> bool {
        self.allow(core, key, MsgKind::Ping, None)
    }

    fn on_timer(&mut self, core: &mut Core<Client>, key: Key) {
        if core.is_detached(key) {
            return self.poll_timer(core, key);
        }
        self.on_open_timer(core, key);
    }

    fn on_ms_timer(&mut self, core: &mut Core<Client>, key: Key) {
        if core.app(key).endpoint() == Endpoint::Gateway {
            self.replay_from_store(core, key);
            self.retransmit(core, key);
        }
    }

    fn on_close(&mut self, core: &mut Core<Client>, key: Key) {
        if core.app(key).endpoint() == Endpoint::Gateway {
            self.end_session(core, key);
        }
        if core.is_detached(key) {
            self.end_poll(core, key);
        }
    }

    /// A long-poll session got messages.
    fn on_output(&mut self, core: &mut Core<Client>, key: Key) {
        self.poll_output(core, key);
    }

    fn on_command(&mut self, core: &mut Core<Client>, cmd: Command) {
        self.deliver(core, cmd);
    }

    fn on_publication(
        &mut self,
        core: &mut Core<Client>,
        channel: &str,
        offset: u64,
        frame: SharedFrame,
    ) -> usize {
        self.publication(core, channel, offset, frame)
    }

    fn takes_broadcast(conn: &Client) -> bool {
        conn.endpoint() == Endpoint::Gateway
    }

    /// `wsgate.msgpack` connections get MessagePack binary frames.
    fn transcode(frame: &[u8]) -> Option<Vec<u8>> {
        crate::msgpack::transcode_frame(frame)
    }

    /// Streams are server-sent events.
    fn stream_form(frame: &[u8]) -> Vec<u8> {
        super::sse::stream_form(frame)
    }

    fn on_iteration(&mut self, _core: &Core<Client>) {
        self.stats.store(&self.local.tally);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_idle_connection_stays_small() {
        // The reactor's slab entry with the gateway's part: the budget is 256 bytes of user-space memory per idle
        // connection (bench/RESULTS.md has the measured figure), and this entry is most of it.
        let size = crate::reactor::conn_size::<super::Client>();
        println!("connection slab entry: {size} bytes");
        assert!(size <= 144, "a connection grew to {size} bytes");
    }
}
