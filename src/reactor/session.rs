//! The reactor's side of identity, auth and sessions: the per-source connection rate at accept, token checks and
//! the welcome frame at the upgrade, channel grants, per-type message rates, the adaptive heartbeat and token
//! expiry on the timer, `refresh` and `msg` requests, and the session commands from the API. The shared pieces
//! live in src/gateway/ and src/auth/; this file only wires them to the connections this reactor owns.

use super::conn::{flag, State};
use super::Reactor;
use crate::auth::token;
use crate::frame::close_code;
use crate::frame::handshake::{Reject, Request};
use crate::gateway::cluster_link::{Ack, Change as StateChange, ReplayRequest, Since, StateEvent};
use crate::gateway::command::{Command as SessionCommand, ConnSnapshot as SessionInfo};
use crate::gateway::frames::{self, code};
use crate::gateway::heartbeat::Change;
use crate::gateway::{
    Answer, ClientState as ConnSession, ConnInfo, Member, MsgKind, Profile, Query, ReplayOutcome,
    Target, REPLAY_BUFFER_MAX,
};
use crate::ids::sid;
use crate::ids::StreamId;
use crate::pool::OutFrame;
use crate::protocol;
use crate::ratelimit::ip_key;
use crate::upstream::{Event, Origin, Refused};
use serde_json::value::RawValue;
use std::net::IpAddr;
use std::rc::Rc;

/// Close code for a connection whose replay could not keep up with live messages: try again later.
const TRY_AGAIN_LATER: u16 = 1013;

/// Options of a gateway upgrade besides channels and token.
#[derive(Debug, Default)]
pub(super) struct ConnectOptions {
    /// Cluster mode: where the replay of missed user messages starts; None = no replay (`since=$`).
    pub since: Option<Since>,
    /// `?v=` or `X-Client-Version`.
    pub client_version: Option<String>,
}

/// Reads `since` and the client version from an upgrade request.
pub(super) fn connect_options(req: &Request<'_>) -> Result<ConnectOptions, &'static str> {
    const BAD_SINCE: &str = "invalid since (a stream id like 1700000000000-0, or $)";
    let since = match protocol::query_param(req.query, "since") {
        None => Some(Since::Stored),
        Some(Ok(v)) if v == "$" => None,
        Some(Ok(v)) => Some(Since::After(StreamId::parse_lenient(&v).ok_or(BAD_SINCE)?)),
        Some(Err(())) => return Err(BAD_SINCE),
    };
    let client_version = match protocol::query_param(req.query, "v") {
        Some(Ok(v)) => Some(v),
        Some(Err(())) => return Err("invalid client version"),
        None => req.client_version.map(str::to_string),
    };
    if client_version
        .as_deref()
        .is_some_and(|v| !protocol::valid_client_version(v))
    {
        return Err("invalid client version (1..=64 printable ASCII characters)");
    }
    Ok(ConnectOptions {
        since,
        client_version,
    })
}

impl Reactor {
    /// Per-source-address connection rate (`limits.connect_rate`), checked right after accept. False = refuse.
    pub(super) fn admit(&mut self, peer: Option<IpAddr>) -> bool {
        let (Some(limiter), Some(ip)) = (&self.sess.shared.connect_limiter, peer) else {
            return true;
        };
        if limiter.try_take(&ip_key(ip)) {
            return true;
        }
        self.sess.tally.connect_rate_limited_total += 1;
        false
    }

    /// Handshake step for the gateway endpoint: the token and the per-user connection limit. `Ok(None)` with
    /// `auth.mode = "none"`. On success with a token the connection's session is built (and holds its per-user
    /// slot); nothing is allocated for a refused one.
    pub(super) fn authenticate(
        &mut self,
        req: &Request<'_>,
    ) -> Result<Option<Box<ConnSession>>, Reject> {
        let shared = self.sess.shared.clone();
        let Some(verifier) = shared.verifier.as_ref() else {
            return Ok(None);
        };
        let found = match token::find(req) {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(
                "missing token (Authorization: Bearer, Sec-WebSocket-Protocol bearer.<token> or ?token=)",
            ),
            Err(e) => Err(e),
        };
        let identity = match found.and_then(|t| verifier.verify(&t)) {
            Ok(i) => i,
            Err(why) => {
                self.sess.tally.auth_failures_total += 1;
                return Err(Reject::Unauthorized(why));
            }
        };
        let counted = shared.max_per_user > 0;
        if counted
            && !shared
                .users
                .try_acquire(&identity.user, shared.max_per_user)
        {
            self.sess.tally.user_limit_refusals_total += 1;
            return Err(Reject::TooManyRequests(
                "too many connections for this user (auth.max_connections_per_user)",
            ));
        }
        let mut s = Box::new(ConnSession::new(&shared.message_rates, self.sess.now_ms()));
        s.expires_at = self.expiry_second(identity.exp, verifier.leeway());
        s.exp = identity.exp;
        s.counted = counted;
        s.device = identity.device.map(Into::into);
        s.profile = Some(self.profile_for(
            &identity.user,
            identity.tenant.map(Into::into),
            identity.grant,
        ));
        Ok(Some(s))
    }

    /// The reactor second at which a token with `exp` (Unix seconds) stops being valid.
    fn expiry_second(&self, exp: u64, leeway: u64) -> u32 {
        let now_unix = sid::unix_ms() / 1000;
        let left = exp.saturating_add(leeway).saturating_sub(now_unix);
        self.now
            .saturating_add(left.min(u64::from(u32::MAX / 2)) as u32)
    }

    /// The profile for a user's connection: shared with the user's other connections on this reactor when equal.
    fn profile_for(
        &self,
        user: &str,
        tenant: Option<Box<str>>,
        grant: crate::auth::grant::Grant,
    ) -> Rc<Profile> {
        let existing = self
            .sess
            .registry
            .user_keys(user)
            .first()
            .and_then(|&k| self.conns.get(k as usize))
            .and_then(|c| c.session.as_deref())
            .and_then(|s| s.profile.clone());
        match existing {
            Some(p) if p.tenant == tenant && p.grant == grant => p,
            Some(p) => Rc::new(Profile {
                user: p.user.clone(),
                tenant,
                grant,
            }),
            None => Rc::new(Profile {
                user: Rc::from(user),
                tenant,
                grant,
            }),
        }
    }

    /// After a successful upgrade on the gateway endpoint: gives the connection its socket id, registers it,
    /// appends the welcome frame (and a refusal for connect-time channels the token does not allow) to the 101
    /// response, and reports the connect upstream. In cluster mode also records the session in Redis (through the
    /// state thread) and starts the replay of the user's missed messages. Returns the channels to subscribe.
    pub(super) fn open_session(
        &mut self,
        key: usize,
        session: Option<Box<ConnSession>>,
        channels: Vec<String>,
        opts: ConnectOptions,
        response: &mut Vec<u8>,
    ) -> Vec<String> {
        let sid = self.sess.sids.next_id();
        let policy = self.sess.shared.heartbeat;
        let profile = session.as_ref().and_then(|s| s.profile.clone());
        frames::push_welcome(
            response,
            sid,
            policy.interval(None),
            policy.timeout(None),
            profile.as_deref().map(|p| &*p.user),
        );
        let allowed = match &profile {
            Some(p) => {
                let (allowed, forbidden): (Vec<String>, Vec<String>) =
                    channels.into_iter().partition(|c| p.grant.allows(c));
                if !forbidden.is_empty() {
                    self.sess.tally.forbidden_subscribes_total += forbidden.len() as u64;
                    let list: Vec<&str> = forbidden.iter().map(String::as_str).collect();
                    response.extend_from_slice(&frames::reply_error(
                        None,
                        code::FORBIDDEN,
                        "channel not allowed",
                        Some(&list),
                    ));
                }
                allowed
            }
            None => channels,
        };
        self.sess
            .registry
            .insert(sid, key as u32, profile.as_ref().map(|p| &p.user));
        if profile.is_some() {
            self.sess.tally.authenticated += 1;
        }
        let conn = &mut self.conns[key];
        conn.sid = sid;
        conn.session = session;
        if let Some(v) = opts.client_version {
            let rates = &self.sess.shared.message_rates;
            let now_ms = self.sess.now_ms();
            conn.session
                .get_or_insert_with(|| Box::new(ConnSession::new(rates, now_ms)))
                .client_version = Some(v.into());
        }
        if self.sess.shared.bridge.is_some() {
            let s = self.conns[key].session.as_deref();
            let change = StateChange::Open {
                sid,
                user: s.and_then(|s| s.user()).map(str::to_string),
                device: s.and_then(|s| s.device.as_deref()).map(str::to_string),
                tenant: s.and_then(|s| s.tenant()).map(str::to_string),
            };
            self.state_change(change);
            if let Some(since) = opts.since {
                self.start_replay(key, since, response);
            }
        }
        self.emit_event(key, true);
        allowed
    }

    /// Cluster mode: hands a session state change to the state thread (never blocks; see src/cluster/link.rs).
    pub(super) fn state_change(&mut self, change: StateChange) {
        if self.sess.shared.bridge.is_none() {
            return;
        }
        self.sess.state_seq += 1;
        let ev = StateEvent {
            reactor: self.id,
            seq: self.sess.state_seq,
            change,
        };
        if let Some(link) = &self.sess.shared.bridge {
            link.state(ev);
        }
    }

    /// Cluster mode, a user's connection: live user messages are held back until the bridge has read what the
    /// user missed (after `since`, or after the device's stored ack). Without a user there is nothing to replay.
    fn start_replay(&mut self, key: usize, since: Since, response: &mut Vec<u8>) {
        let has_user = self.conns[key]
            .session
            .as_deref()
            .is_some_and(|s| s.user().is_some());
        if !has_user {
            return;
        }
        if self.request_replay(key, since) {
            if let Some(s) = self.conns[key].session.as_deref_mut() {
                s.replay = Some(Box::default());
            }
        } else {
            response.extend_from_slice(&frames::replay_done(
                0,
                None,
                Some("replay queue full; live messages follow"),
            ));
        }
    }

    /// Asks the bridge for (the next chunk of) the connection's missed messages. False if it could not be asked.
    fn request_replay(&mut self, key: usize, since: Since) -> bool {
        let Some(link) = &self.sess.shared.bridge else {
            return false;
        };
        let conn = &self.conns[key];
        let Some(s) = conn.session.as_deref() else {
            return false;
        };
        let Some(user) = s.user() else {
            return false;
        };
        link.replay(ReplayRequest {
            sid: conn.sid,
            user: user.to_string(),
            device: s.device.as_deref().map(str::to_string),
            tenant: s.tenant().map(str::to_string),
            since,
        })
    }

    /// When a gateway connection leaves the open state: unregisters it, frees its per-user slot and reports the
    /// disconnect upstream.
    pub(super) fn end_session(&mut self, key: usize) {
        let sid = self.conns[key].sid;
        self.state_change(StateChange::Close { sid });
        let conn = &self.conns[key];
        let s = conn.session.as_deref();
        let user = s.and_then(|s| s.user());
        self.sess.registry.remove(conn.sid, key as u32, user);
        if let Some(user) = user {
            self.sess.tally.authenticated -= 1;
            if s.is_some_and(|s| s.counted) {
                self.sess.shared.users.release(user);
            }
        }
        self.emit_event(key, false);
    }

    fn origin(&self, key: usize) -> Origin<'_> {
        let c = &self.conns[key];
        let s = c.session.as_deref();
        Origin {
            sid: c.sid,
            user: s.and_then(|s| s.user()),
            device: s.and_then(|s| s.device.as_deref()),
            tenant: s.and_then(|s| s.tenant()),
            client_version: s.and_then(|s| s.client_version.as_deref()),
        }
    }

    /// A connect (`true`) or disconnect event for the upstream sink.
    fn emit_event(&mut self, key: usize, connect: bool) {
        let origin = self.origin(key);
        let event = if connect {
            Event::Connect(origin)
        } else {
            Event::Disconnect(origin)
        };
        // A refused connect/disconnect event has nobody to tell; a sink logs and counts its own refusals.
        let _ = self.sess.shared.sink.deliver(&event);
        if connect {
            self.sess.tally.upstream_connects_total += 1;
        } else {
            self.sess.tally.upstream_disconnects_total += 1;
        }
    }

    /// The reactor second at which the connection's token expires (`u32::MAX` = never).
    pub(super) fn token_deadline(&self, key: usize) -> u32 {
        self.conns
            .get(key)
            .and_then(|c| c.session.as_deref())
            .map_or(u32::MAX, |s| s.expires_at)
    }

    // ---- client requests --------------------------------------------------------------------------------------

    /// The per-connection, per-type message rate. False = refused (already answered with 4008, or closed with
    /// 4008 after `ws.error_budget` refusals in a row).
    pub(super) fn allow_message(&mut self, key: usize, op: &str, id: Option<&RawValue>) -> bool {
        let kind = MsgKind::of(op);
        let rate = self.sess.shared.message_rates[kind as usize];
        if rate.unlimited() {
            return true;
        }
        let now_ms = self.sess.now_ms();
        let rates = &self.sess.shared.message_rates;
        let s = self.conns[key]
            .session
            .get_or_insert_with(|| Box::new(ConnSession::new(rates, now_ms)));
        if s.buckets[kind as usize].try_take(&rate, now_ms) {
            s.strikes = 0;
            return true;
        }
        s.strikes = s.strikes.saturating_add(1);
        let strikes = s.strikes;
        let t = &mut self.sess.tally;
        match kind {
            MsgKind::Ping => t.rate_limited_ping_total += 1,
            MsgKind::Control => t.rate_limited_control_total += 1,
            MsgKind::Upstream => t.rate_limited_upstream_total += 1,
        }
        if strikes > self.limits.error_budget {
            self.sess.tally.rate_limit_closes_total += 1;
            self.send_close(key, code::RATE_LIMITED, "rate limit exceeded");
        } else {
            let message = format!("rate limit exceeded ({} messages)", kind.name());
            self.client_reply(
                key,
                frames::reply_error(id, code::RATE_LIMITED, &message, None),
            );
        }
        false
    }

    /// Channels of a subscribe request the connection's token does not allow (empty when anonymous).
    pub(super) fn forbidden<'a>(&mut self, key: usize, names: &'a [String]) -> Vec<&'a str> {
        let Some(p) = self.conns[key]
            .session
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
        self.sess.tally.forbidden_subscribes_total += list.len() as u64;
        list
    }

    /// An application heartbeat (`op: ping`, already answered with a pong): adapts the interval.
    pub(super) fn on_heartbeat(&mut self, key: usize) {
        let now_ms = self.sess.now_ms();
        let policy = self.sess.shared.heartbeat;
        let rates = &self.sess.shared.message_rates;
        let conn = &mut self.conns[key];
        let s = conn
            .session
            .get_or_insert_with(|| Box::new(ConnSession::new(rates, now_ms)));
        let Some(change) = policy.on_beat(&mut s.heartbeat, self.now) else {
            return;
        };
        let interval = match change {
            Change::Lengthened(i) => {
                self.sess.tally.heartbeat_lengthened_total += 1;
                i
            }
            Change::SnappedBack(i) => {
                self.sess.tally.heartbeat_snapbacks_total += 1;
                i
            }
        };
        let next = (conn.last_rx + policy.ping_after(Some(&s.heartbeat))).min(s.expires_at);
        self.client_reply(key, frames::heartbeat(interval, interval + policy.grace));
        if self.conns.get(key).is_some_and(|c| !c.has(flag::PING_SENT)) {
            self.timers.schedule(&mut self.conns, key, next);
        }
    }

    /// `{"op":"refresh","token":"..."}`: a new token for the same user extends the session; channels the new token
    /// no longer allows are unsubscribed (and listed in the reply).
    pub(super) fn on_refresh(&mut self, key: usize, id: Option<&RawValue>, token: Option<&str>) {
        let shared = self.sess.shared.clone();
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
                self.sess.tally.refresh_failures_total += 1;
                return self
                    .client_reply(key, frames::reply_error(id, code::UNAUTHORIZED, &e, None));
            }
        };
        let current = self.conns[key]
            .session
            .as_deref()
            .and_then(|s| s.profile.clone());
        let Some(current) = current.filter(|p| *p.user == identity.user) else {
            self.sess.tally.refresh_failures_total += 1;
            return self.client_reply(
                key,
                frames::reply_error(id, code::UNAUTHORIZED, "token is for another user", None),
            );
        };
        let tenant: Option<Box<str>> = identity.tenant.map(Into::into);
        let profile = if current.tenant == tenant && current.grant == identity.grant {
            current
        } else {
            self.profile_for(&identity.user, tenant, identity.grant)
        };
        let expires_at = self.expiry_second(identity.exp, leeway);
        let dropped: Vec<String> = self.conns[key]
            .subs
            .as_slice()
            .iter()
            .map(|sub| self.channels.name(sub.channel))
            .filter(|name| !profile.grant.allows(name))
            .map(str::to_string)
            .collect();
        for name in &dropped {
            self.unsubscribe(key, name);
        }
        if let Some(s) = self.conns[key].session.as_deref_mut() {
            s.exp = identity.exp;
            s.expires_at = expires_at;
            s.device = identity.device.map(Into::into);
            s.profile = Some(profile);
        }
        // A token that ends sooner than the connection's next timer moves the timer forward.
        if let Some(conn) = self.conns.get_mut(key) {
            if expires_at < conn.timer.deadline {
                self.timers.schedule(&mut self.conns, key, expires_at);
            }
        }
        self.sess.tally.refreshes_total += 1;
        self.client_reply(key, frames::refresh_ok(id, identity.exp, &dropped));
    }

    /// `{"op":"msg","data":...}`: handed to the upstream sink; acknowledged when the request has an `id`. An
    /// optional `channel` (one the connection is subscribed to) and `trace` go along.
    pub(super) fn on_upstream(
        &mut self,
        key: usize,
        id: Option<&RawValue>,
        data: Option<&RawValue>,
        channel: Option<&str>,
        trace: Option<&str>,
    ) {
        let Some(data) = data.filter(|d| d.get() != "null") else {
            return self.client_reply(
                key,
                protocol::reply(id, Some("\"data\" is required (any JSON value but null)")),
            );
        };
        if let Some(c) = channel {
            if !self.is_subscribed(key, c) {
                return self.client_reply(
                    key,
                    protocol::reply(id, Some("\"channel\" must be a channel you subscribe to")),
                );
            }
        }
        if trace.is_some_and(|t| !valid_trace(t)) {
            return self.client_reply(
                key,
                protocol::reply(
                    id,
                    Some("\"trace\" must be 1..=128 printable ASCII characters"),
                ),
            );
        }
        let result = self.sess.shared.sink.deliver(&Event::Message {
            origin: self.origin(key),
            data: data.get(),
            channel,
            trace,
        });
        match result {
            Ok(()) => {
                self.sess.tally.upstream_messages_total += 1;
                if id.is_some() {
                    self.client_reply(key, protocol::reply(id, None));
                }
            }
            Err(Refused(why)) => {
                self.sess.tally.upstream_refused_total += 1;
                self.client_reply(
                    key,
                    frames::reply_error(id, code::UPSTREAM_UNAVAILABLE, why, None),
                );
            }
        }
    }

    /// `{"op":"ack","id":"<stream id>"}` (cluster mode): the client has processed its user's messages up to this
    /// id; stored per user and device, it is where the next connect's replay starts. No reply on success.
    pub(super) fn on_ack(&mut self, key: usize, id: Option<&RawValue>) {
        let Some(link) = self.sess.shared.bridge.clone() else {
            return self.client_reply(
                key,
                protocol::reply(id, Some("ack needs cluster mode (cluster.redis)")),
            );
        };
        let s = self.conns[key].session.as_deref();
        let Some(user) = s.and_then(|s| s.user()) else {
            return self.client_reply(
                key,
                protocol::reply(id, Some("ack needs an authenticated user")),
            );
        };
        let Some(stream_id) = id
            .and_then(|raw| serde_json::from_str::<&str>(raw.get()).ok())
            .and_then(StreamId::parse)
        else {
            return self.client_reply(
                key,
                protocol::reply(
                    id,
                    Some("\"id\" must be a message id like \"1700000000000-0\""),
                ),
            );
        };
        let ack = Ack {
            user: user.to_string(),
            device: s
                .and_then(|s| s.device.as_deref())
                .unwrap_or("")
                .to_string(),
            id: stream_id,
        };
        if !link.ack(ack) {
            self.client_reply(
                key,
                protocol::reply(id, Some("ack queue full; send a later ack again")),
            );
        }
    }

    // ---- timer -----------------------------------------------------------------------------------------------

    /// The timer of an open connection: token expiry, then silence (server ping, idle close), with the intervals
    /// of the connection's heartbeat.
    pub(super) fn on_open_timer(&mut self, key: usize) {
        let now = self.now;
        let policy = self.sess.shared.heartbeat;
        let conn = &mut self.conns[key];
        let session = conn.session.as_deref();
        let expires_at = session.map_or(u32::MAX, |s| s.expires_at);
        if expires_at <= now {
            self.sess.tally.token_expired_closes_total += 1;
            self.send_close(key, code::UNAUTHORIZED, "token expired");
            self.close_after_flush(key);
            return;
        }
        let hb = session.map(|s| &s.heartbeat);
        let (ping_after, timeout) = (policy.ping_after(hb), policy.timeout(hb));
        let silent = now.saturating_sub(conn.last_rx);
        if silent >= timeout {
            self.tally.idle_timeouts_total += 1;
            self.send_close(key, close_code::GOING_AWAY, "idle timeout");
            self.close_after_flush(key);
            return;
        }
        let next = if silent >= ping_after && !conn.has(flag::PING_SENT) {
            conn.flags |= flag::PING_SENT;
            let ping = self.ping_frame.clone();
            self.queue(key, ping);
            match self.conns.get(key) {
                Some(conn) => conn.last_rx + timeout,
                None => return,
            }
        } else if conn.has(flag::PING_SENT) {
            conn.last_rx + timeout
        } else {
            conn.last_rx + ping_after
        };
        if self.conns.contains(key) {
            self.timers
                .schedule(&mut self.conns, key, next.min(expires_at));
        }
    }

    // ---- commands from the API -------------------------------------------------------------------------------

    pub(super) fn on_session_command(&mut self, cmd: SessionCommand) {
        match cmd {
            SessionCommand::PublishUser {
                user,
                device,
                tenant,
                frame,
                id,
            } => {
                let mut keys = std::mem::take(&mut self.sess.scratch);
                keys.clear();
                keys.extend_from_slice(self.sess.registry.user_keys(&user));
                let shared = frame.clone();
                let frame: OutFrame = Rc::new(frame);
                for &k in &keys {
                    let Some(conn) = self.conns.get_mut(k as usize) else {
                        continue; // closed while delivering (slow consumer)
                    };
                    let s = conn.session.as_deref_mut();
                    let device_ok = device
                        .as_deref()
                        .is_none_or(|d| s.as_ref().and_then(|s| s.device.as_deref()) == Some(d));
                    let tenant_ok = tenant
                        .as_deref()
                        .is_none_or(|t| s.as_ref().and_then(|s| s.tenant()) == Some(t));
                    if conn.state != State::Open || !device_ok || !tenant_ok {
                        continue;
                    }
                    if let (Some(id), Some(floor)) = (id, s.as_ref().and_then(|s| s.replay_floor)) {
                        if id <= floor {
                            self.sess.tally.replay_duplicates_dropped_total += 1;
                            continue;
                        }
                    }
                    self.sess.tally.user_deliveries_total += 1;
                    // Replay in flight: hold the live message back until the replayed ones are out.
                    if let Some(buf) = s.and_then(|s| s.replay.as_deref_mut()) {
                        if buf.live.len() < REPLAY_BUFFER_MAX {
                            buf.live.push((id, shared.clone()));
                        } else {
                            self.sess.tally.replay_overflow_closes_total += 1;
                            self.send_close(
                                k as usize,
                                TRY_AGAIN_LATER,
                                "replay overflow; reconnect with since",
                            );
                        }
                        continue;
                    }
                    self.queue(k as usize, frame.clone());
                }
                self.sess.scratch = keys;
            }
            SessionCommand::ReplayDone { sid, outcome } => self.finish_replay(sid, outcome),
            SessionCommand::PublishSid { sid, frame } => {
                match self.sess.registry.by_sid(sid).map(|k| k as usize) {
                    Some(k) if self.conns.get(k).is_some_and(|c| c.state == State::Open) => {
                        self.sess.tally.sid_deliveries_total += 1;
                        self.queue(k, Rc::new(frame));
                    }
                    _ => self.sess.tally.sid_misses_total += 1,
                }
            }
            SessionCommand::Disconnect {
                target,
                code,
                reason,
                reply,
            } => {
                let keys: Vec<u32> = match &target {
                    Target::User(u) => self.sess.registry.user_keys(u).to_vec(),
                    Target::Sid(sid) => self.sess.registry.by_sid(*sid).into_iter().collect(),
                };
                let mut closed = 0;
                for k in keys.into_iter().map(|k| k as usize) {
                    if self.conns.get(k).is_some_and(|c| c.state == State::Open) {
                        self.send_close(k, code, &reason);
                        closed += 1;
                    }
                }
                self.sess.tally.api_disconnects_total += closed as u64;
                let _ = reply.send(Answer::Disconnected(closed));
            }
            SessionCommand::Query { query, reply } => {
                let answer = self.answer(query);
                let _ = reply.send(answer);
            }
        }
    }

    /// The bridge has read connection `sid`'s missed messages: they go out first, then a `{"type":"replay"}`
    /// frame, then the live messages held back meanwhile — without those the replay already contained (id at or
    /// below the last replayed one, or the `since` floor).
    fn finish_replay(&mut self, sid: u64, outcome: ReplayOutcome) {
        let Some(k) = self.sess.registry.by_sid(sid).map(|k| k as usize) else {
            return; // closed meanwhile
        };
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        if conn.state != State::Open {
            return;
        }
        let Some(s) = conn.session.as_deref_mut() else {
            return;
        };
        let Some(buf) = s.replay.as_deref_mut() else {
            return;
        };
        let floor = outcome.last.max(outcome.floor).max(s.replay_floor);
        s.replay_floor = floor;
        buf.replayed += outcome.frames.len();
        buf.last = outcome.last.or(buf.last);
        self.sess.tally.replayed_messages_total += outcome.frames.len() as u64;
        for f in outcome.frames {
            self.queue(k, Rc::new(f));
        }
        if !self.conns.get(k).is_some_and(|c| c.state == State::Open) {
            return; // closed as a slow consumer while queueing
        }
        // More to come: ask for the next chunk (live messages stay held back meanwhile).
        if outcome.more && outcome.error.is_none() {
            if let Some(since) = floor {
                if self.request_replay(k, Since::After(since)) {
                    return;
                }
            }
        }
        let Some(buf) = self.conns[k]
            .session
            .as_deref_mut()
            .and_then(|s| s.replay.take())
        else {
            return;
        };
        let error = match (&outcome.error, outcome.more) {
            (Some(e), _) => Some(e.as_str()),
            (None, true) => Some("replay queue full; live messages follow"),
            (None, false) => None,
        };
        self.client_reply(k, frames::replay_done(buf.replayed, buf.last, error));
        for (id, f) in buf.live {
            if let (Some(id), Some(floor)) = (id, floor) {
                if id <= floor {
                    self.sess.tally.replay_duplicates_dropped_total += 1;
                    continue;
                }
            }
            self.queue(k, Rc::new(f));
        }
    }

    fn answer(&self, query: Query) -> Answer {
        match query {
            Query::Snapshot => {
                let sessions = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.state == State::Open && c.sid != 0)
                    .map(|(_, c)| {
                        let s = c.session.as_deref();
                        SessionInfo {
                            sid: c.sid,
                            user: s.and_then(|s| s.user()).map(str::to_string),
                            device: s.and_then(|s| s.device.as_deref()).map(str::to_string),
                            tenant: s.and_then(|s| s.tenant()).map(str::to_string),
                            channels: c
                                .subs
                                .as_slice()
                                .iter()
                                .map(|sub| self.channels.name(sub.channel).to_string())
                                .collect(),
                        }
                    })
                    .collect();
                Answer::Snapshot {
                    reactor: self.id,
                    seq: self.sess.state_seq,
                    sessions,
                }
            }
            Query::Presence {
                channel,
                after,
                limit,
            } => {
                let Some(id) = self.channels.lookup(&channel) else {
                    return Answer::Presence {
                        total: 0,
                        members: Vec::new(),
                    };
                };
                let subscribers = self.channels.subscribers(id);
                let mut page: Vec<(u64, u32)> = subscribers
                    .iter()
                    .map(|&k| (self.conns[k as usize].sid, k))
                    .filter(|&(sid, _)| sid > after)
                    .collect();
                page.sort_unstable();
                page.truncate(limit);
                let members = page
                    .into_iter()
                    .map(|(sid, k)| Member {
                        sid,
                        user: self.conns[k as usize]
                            .session
                            .as_deref()
                            .and_then(|s| s.user())
                            .map(str::to_string),
                    })
                    .collect();
                Answer::Presence {
                    total: subscribers.len(),
                    members,
                }
            }
            Query::User(user) => {
                let list = self
                    .sess
                    .registry
                    .user_keys(&user)
                    .iter()
                    .filter_map(|&k| self.conns.get(k as usize))
                    .map(|c| {
                        let s = c.session.as_deref();
                        ConnInfo {
                            sid: c.sid,
                            reactor: self.id,
                            device: s.and_then(|s| s.device.as_deref()).map(str::to_string),
                            tenant: s.and_then(|s| s.tenant()).map(str::to_string),
                            exp: s.map_or(0, |s| s.exp),
                            channels: c
                                .subs
                                .as_slice()
                                .iter()
                                .map(|sub| self.channels.name(sub.channel).to_string())
                                .collect(),
                            allowed: s
                                .and_then(|s| s.profile.as_deref())
                                .map(|p| p.grant.describe())
                                .unwrap_or_default(),
                        }
                    })
                    .collect();
                Answer::Connections(list)
            }
        }
    }
}

/// A client trace id: 1..=128 printable ASCII characters.
fn valid_trace(t: &str) -> bool {
    !t.is_empty() && t.len() <= 128 && t.bytes().all(|b| b.is_ascii_graphic())
}
