//! The client JSON protocol on the gateway endpoint: subscribe, unsubscribe, ping (the adaptive heartbeat),
//! refresh, msg (to the upstream sink) and ack, with the per-type message rates and the error budget.

use super::cluster_link::Ack;
use super::frames::{self, code};
use super::handler::{Client, Gateway};
use super::heartbeat::Change;
use super::recovery;
use super::upgrade::{expiry_second, origin};
use super::{ClientState, MsgKind};
use crate::auth::token;
use crate::frame::{close_code, OP_BINARY, OP_TEXT};
use crate::ids::StreamId;
use crate::msgpack;
use crate::protocol;
use crate::reactor::{Core, Key};
use crate::upstream::{Event, Refused};
use serde_json::value::RawValue;

impl Gateway {
    /// A client protocol request on the gateway endpoint.
    pub(super) fn on_request(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        opcode: u8,
        payload: &[u8],
    ) {
        let converted;
        let payload = match opcode {
            OP_BINARY if core.alt_format(key) => match msgpack::to_json(payload) {
                Ok(json) => {
                    converted = json;
                    &converted[..]
                }
                Err(e) => return self.client_error(core, key, e),
            },
            OP_BINARY => {
                return self.client_error(
                    core,
                    key,
                    "binary frames are not part of the protocol (MessagePack needs subprotocol wsgate.msgpack)",
                )
            }
            _ => payload,
        };
        debug_assert!(opcode == OP_TEXT || core.alt_format(key));
        let req: protocol::ClientRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(_) => {
                return self.client_error(core, key, "expected a JSON object with an \"op\" field")
            }
        };
        if !self.allow_message(core, key, &req.op, req.id) {
            return;
        }
        match req.op.as_ref() {
            "ping" => {
                core.send(key, protocol::pong(req.id));
                self.on_heartbeat(core, key)
            }
            "refresh" => self.on_refresh(core, key, req.id, req.token.as_deref()),
            "msg" => self.on_upstream(
                core,
                key,
                req.id,
                req.data,
                req.channel.as_deref(),
                req.trace.as_deref(),
            ),
            "ack" => self.on_ack(core, key, req.id),
            "subscribe" | "unsubscribe" => {
                let mut replay = Vec::new();
                let reply = self.on_subscription(core, key, &req, &mut replay);
                core.send(key, reply);
                Self::queue_replay(core, key, replay);
            }
            _ => core.send(key, protocol::reply(req.id, Some("unknown op"))),
        }
    }

    /// `subscribe` / `unsubscribe`: all or nothing; the reply. A subscribe that recovers history channels leaves
    /// the missed publications in `replay`, to be queued after the reply.
    fn on_subscription(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        req: &protocol::ClientRequest<'_>,
        replay: &mut Vec<crate::pool::SharedFrame>,
    ) -> Vec<u8> {
        let Some(names) = req.channels.as_ref().filter(|c| !c.is_empty()) else {
            return protocol::reply(req.id, Some("\"channels\" must list channels"));
        };
        if let Some(bad) = names.iter().find(|n| !protocol::valid_channel(n)) {
            let msg =
                format!("invalid channel name {bad:?} (1..=255 bytes, no control characters)");
            return protocol::reply(req.id, Some(&msg));
        }
        if req.op == "subscribe" {
            let forbidden = self.forbidden(core, key, names);
            if !forbidden.is_empty() {
                return frames::reply_error(
                    req.id,
                    code::FORBIDDEN,
                    "channel not allowed",
                    Some(&forbidden),
                );
            }
            let have = core.subscription_count(key);
            let new = names.iter().filter(|n| !core.is_subscribed(key, n)).count();
            if have + new > self.policy.max_channels {
                return protocol::reply(req.id, Some("too many channels"));
            }
            let recover = match req.recover.map(|r| recovery::parse_recover(r, names)) {
                None => Vec::new(),
                Some(Ok(r)) => r,
                Some(Err(e)) => return protocol::reply(req.id, Some(&e)),
            };
            if let Err(e) = self.check_recover(core, key, &recover) {
                return protocol::reply(req.id, Some(&e));
            }
            let mut positions = Vec::new();
            for name in names {
                // A channel already subscribed keeps its live stream as it is (no position, no floor).
                if core.is_subscribed(key, name) {
                    continue;
                }
                self.subscribe(core, key, name);
                let since = recover.iter().find(|(c, _)| c == name).map(|(_, p)| p);
                positions.extend(self.position_after_subscribe(core, key, name, since, replay));
            }
            if !positions.is_empty() {
                return recovery::subscribe_reply(req.id, &positions);
            }
        } else {
            for name in names {
                self.unsubscribe(core, key, name);
            }
        }
        protocol::reply(req.id, None)
    }

    /// A malformed request: an error reply until the error budget is spent, then close 1008.
    fn client_error(&mut self, core: &mut Core<Client>, key: Key, message: &str) {
        core.tally().protocol_errors_total += 1;
        let rates = &self.local.shared.message_rates;
        let now_ms = self.local.now_ms();
        let s = core
            .app_mut(key)
            .state
            .get_or_insert_with(|| Box::new(ClientState::new(rates, now_ms)));
        s.errors = s.errors.saturating_add(1);
        if s.errors > self.policy.error_budget {
            core.close(key, close_code::POLICY_VIOLATION, "error budget exhausted");
        } else {
            core.send(key, protocol::error(message));
        }
    }

    /// The per-connection, per-type message rate for a client request. False = refused (see [`Self::allow`]).
    fn allow_message(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        op: &str,
        id: Option<&RawValue>,
    ) -> bool {
        self.allow(core, key, MsgKind::of(op), Some(id))
    }

    /// Takes a token of kind `kind` from the connection's buckets. Refused: a request (`reply` is its id) is
    /// answered with 4008; after more than `ws.error_budget` refusals in a row the connection is closed with 4008.
    pub(super) fn allow(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        kind: MsgKind,
        reply: Option<Option<&RawValue>>,
    ) -> bool {
        let rate = self.local.shared.message_rates[kind as usize];
        if rate.unlimited() {
            return true;
        }
        let now_ms = self.local.now_ms();
        let rates = &self.local.shared.message_rates;
        let s = core
            .app_mut(key)
            .state
            .get_or_insert_with(|| Box::new(ClientState::new(rates, now_ms)));
        if s.buckets[kind as usize].try_take(&rate, now_ms) {
            s.strikes = 0;
            return true;
        }
        s.strikes = s.strikes.saturating_add(1);
        let strikes = s.strikes;
        let t = &mut self.local.tally;
        match kind {
            MsgKind::Ping => t.rate_limited_ping_total += 1,
            MsgKind::Control => t.rate_limited_control_total += 1,
            MsgKind::Upstream => t.rate_limited_upstream_total += 1,
        }
        if strikes > self.policy.error_budget {
            self.local.tally.rate_limit_closes_total += 1;
            core.close(key, code::RATE_LIMITED, "rate limit exceeded");
        } else if let Some(id) = reply {
            let message = format!("rate limit exceeded ({} messages)", kind.name());
            core.send(
                key,
                frames::reply_error(id, code::RATE_LIMITED, &message, None),
            );
        }
        false
    }

    /// Channels of a subscribe request the connection's token does not allow (empty when anonymous).
    fn forbidden<'a>(
        &mut self,
        core: &Core<Client>,
        key: Key,
        names: &'a [String],
    ) -> Vec<&'a str> {
        let Some(p) = core
            .app(key)
            .state
            .as_deref()
            .and_then(|s| s.profile.as_deref())
        else {
            return Vec::new();
        };
        let list: Vec<&str> = names
            .iter()
            .filter(|n| !p.grant.allows(n))
            .map(String::as_str)
            .collect();
        self.local.tally.forbidden_subscribes_total += list.len() as u64;
        list
    }

    /// An application heartbeat (`op: ping`, already answered with a pong): adapts the interval.
    fn on_heartbeat(&mut self, core: &mut Core<Client>, key: Key) {
        let now_ms = self.local.now_ms();
        let now = core.now();
        let last_rx = core.last_rx(key);
        let heartbeat = self.local.shared.heartbeat;
        let rates = &self.local.shared.message_rates;
        let s = core
            .app_mut(key)
            .state
            .get_or_insert_with(|| Box::new(ClientState::new(rates, now_ms)));
        let Some(change) = heartbeat.on_beat(&mut s.heartbeat, now) else {
            return;
        };
        let interval = match change {
            Change::Lengthened(i) => {
                self.local.tally.heartbeat_lengthened_total += 1;
                i
            }
            Change::SnappedBack(i) => {
                self.local.tally.heartbeat_snapbacks_total += 1;
                i
            }
        };
        let next = (last_rx + heartbeat.ping_after(Some(&s.heartbeat))).min(s.expires_at);
        core.send(key, frames::heartbeat(interval, interval + heartbeat.grace));
        if !core.ping_outstanding(key) {
            core.schedule(key, next);
        }
    }

    /// `{"op":"refresh","token":"..."}`: a new token for the same user extends the session; channels the new token
    /// no longer allows are unsubscribed (and listed in the reply).
    fn on_refresh(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        id: Option<&RawValue>,
        token: Option<&str>,
    ) {
        let shared = self.local.shared.clone();
        let result = match (shared.verifier.as_ref(), token) {
            (None, _) => Err("auth.mode is \"none\": there is no token to refresh".to_string()),
            (Some(_), None) => Err("\"token\" is required".to_string()),
            (Some(_), Some(t)) if t.is_empty() || t.len() > token::MAX_TOKEN_LEN => {
                Err("invalid token: empty or too long".to_string())
            }
            (Some(v), Some(t)) => v
                .verify(t)
                .map_err(|e| format!("invalid token: {e}"))
                .map(|i| (i, v.leeway())),
        };
        let (identity, leeway) = match result {
            Ok(r) => r,
            Err(e) => {
                self.local.tally.refresh_failures_total += 1;
                let reply = frames::reply_error(id, code::UNAUTHORIZED, &e, None);
                return core.send(key, reply);
            }
        };
        let current = core
            .app(key)
            .state
            .as_deref()
            .and_then(|s| s.profile.clone());
        let Some(current) = current.filter(|p| *p.user == identity.user) else {
            self.local.tally.refresh_failures_total += 1;
            let reply =
                frames::reply_error(id, code::UNAUTHORIZED, "token is for another user", None);
            return core.send(key, reply);
        };
        let tenant: Option<Box<str>> = identity.tenant.map(Into::into);
        let profile = if current.tenant == tenant && current.grant == identity.grant {
            current
        } else {
            self.profile_for(core, &identity.user, tenant, identity.grant)
        };
        let expires_at = expiry_second(core.now(), identity.exp, leeway);
        let dropped: Vec<String> = core
            .channels_of(key)
            .filter(|name| !profile.grant.allows(name))
            .map(str::to_string)
            .collect();
        for name in &dropped {
            self.unsubscribe(core, key, name);
        }
        if let Some(s) = core.app_mut(key).state.as_deref_mut() {
            s.exp = identity.exp;
            s.expires_at = expires_at;
            s.device = identity.device.map(Into::into);
            s.profile = Some(profile);
        }
        // A token that ends sooner than the connection's next timer moves the timer forward.
        if expires_at < core.timer_deadline(key) {
            core.schedule(key, expires_at);
        }
        self.local.tally.refreshes_total += 1;
        core.send(key, frames::refresh_ok(id, identity.exp, &dropped));
    }

    /// `{"op":"msg","data":...}`: handed to the upstream sink; acknowledged when the request has an `id`. An
    /// optional `channel` (one the connection is subscribed to) and `trace` go along.
    fn on_upstream(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        id: Option<&RawValue>,
        data: Option<&RawValue>,
        channel: Option<&str>,
        trace: Option<&str>,
    ) {
        let Some(data) = data.filter(|d| d.get() != "null") else {
            let reply = protocol::reply(id, Some("\"data\" is required (any JSON value but null)"));
            return core.send(key, reply);
        };
        if let Some(c) = channel {
            if !core.is_subscribed(key, c) {
                let reply =
                    protocol::reply(id, Some("\"channel\" must be a channel you subscribe to"));
                return core.send(key, reply);
            }
        }
        if trace.is_some_and(|t| !valid_trace(t)) {
            let reply = protocol::reply(
                id,
                Some("\"trace\" must be 1..=128 printable ASCII characters"),
            );
            return core.send(key, reply);
        }
        let result = self.local.shared.sink.deliver(&Event::Message {
            origin: origin(core.app(key)),
            data: data.get(),
            channel,
            trace,
        });
        match result {
            Ok(()) => {
                self.local.tally.upstream_messages_total += 1;
                if id.is_some() {
                    core.send(key, protocol::reply(id, None));
                }
            }
            Err(Refused(why)) => {
                self.local.tally.upstream_refused_total += 1;
                let reply = frames::reply_error(id, code::UPSTREAM_UNAVAILABLE, why, None);
                core.send(key, reply);
            }
        }
    }

    /// `{"op":"ack","id":"<stream id>"}`: the client has processed its user's messages up to this id. It confirms
    /// the pushes waiting for an ack on this connection up to it (acks.rs), and is stored per user and device (in
    /// Redis, or standalone in the replay store): where the next connect's replay starts. No reply on success; in
    /// cluster mode an id beyond the user's newest message is refused later by the bridge (`ok:false`,
    /// src/cluster/replay.rs).
    fn on_ack(&mut self, core: &mut Core<Client>, key: Key, id: Option<&RawValue>) {
        let shared = self.local.shared.clone();
        let Some(link) = shared.bridge.clone() else {
            return self.on_standalone_ack(core, key, id);
        };
        let Some((user, device, stream_id)) = ack_target(core, key, id) else {
            return;
        };
        let ack = Ack {
            sid: core.app(key).sid,
            user,
            device,
            id: stream_id,
        };
        self.confirm_pushes(core, key, stream_id);
        if !link.ack(ack) {
            let reply = protocol::reply(id, Some("ack queue full; send a later ack again"));
            core.send(key, reply);
        }
    }
}

/// The user, device and stream id an `op: ack` names; None (after the error reply) for an anonymous connection or
/// an invalid id.
fn ack_target(
    core: &mut Core<Client>,
    key: Key,
    id: Option<&RawValue>,
) -> Option<(String, String, StreamId)> {
    let s = core.app(key).state.as_deref();
    let Some(user) = s.and_then(|s| s.user()) else {
        let reply = protocol::reply(id, Some("ack needs an authenticated user"));
        core.send(key, reply);
        return None;
    };
    let Some(stream_id) = parse_ack_id(id) else {
        let reply = protocol::reply(id, Some(BAD_ACK_ID));
        core.send(key, reply);
        return None;
    };
    let device = s.and_then(|s| s.device.as_deref()).unwrap_or("");
    Some((user.to_string(), device.to_string(), stream_id))
}

impl Gateway {
    /// `op: ack` on a standalone node: recorded in the replay store (an id above every id sent is refused).
    fn on_standalone_ack(&mut self, core: &mut Core<Client>, key: Key, id: Option<&RawValue>) {
        let shared = self.local.shared.clone();
        let Some(log) = &shared.user_log else {
            let reply = protocol::reply(
                id,
                Some(
                    "ack needs a replay store (cluster.redis, or delivery.offline_maxlen above 0)",
                ),
            );
            return core.send(key, reply);
        };
        let Some((user, device, stream_id)) = ack_target(core, key, id) else {
            return;
        };
        if let Err(why) = log.ack(&user, &device, stream_id) {
            return core.send(key, protocol::reply(id, Some(why)));
        }
        self.confirm_pushes(core, key, stream_id);
    }

    /// The pushes waiting for an ack on this connection, up to `id`, are delivered.
    fn confirm_pushes(&mut self, core: &mut Core<Client>, key: Key, id: StreamId) {
        let pending = core
            .app_mut(key)
            .state
            .as_deref_mut()
            .and_then(|s| s.acks.as_deref_mut());
        if let Some(p) = pending {
            self.local.tally.acked_messages_total += p.ack(id) as u64;
        }
    }
}

const BAD_ACK_ID: &str = "\"id\" must be a message id like \"1700000000000-0\"";

/// The id of an `op: ack`: a JSON string holding a stream id.
fn parse_ack_id(id: Option<&RawValue>) -> Option<StreamId> {
    id.and_then(|raw| serde_json::from_str::<&str>(raw.get()).ok())
        .and_then(StreamId::parse)
}

/// A client trace id: 1..=128 printable ASCII characters.
fn valid_trace(t: &str) -> bool {
    !t.is_empty() && t.len() <= 128 && t.bytes().all(|b| b.is_ascii_graphic())
}
