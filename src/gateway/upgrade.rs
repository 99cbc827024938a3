//! Who may connect, and how a session starts and ends: routing and origin checks, connect-time channels and
//! options, the token and the per-user limit, the socket id and welcome frame, the cluster's session record and
//! replay, and the connect/disconnect events for the upstream sink.

use super::cluster_link::{Change as StateChange, ReplayRequest, Since, StateEvent};
use super::frames::{self, code};
use super::handler::{Client, Endpoint, Gateway};
use super::recovery;
use super::{ClientState, Profile};
use crate::auth::token;
use crate::frame::handshake::{self, Reject, Request};
use crate::ids::{sid, StreamId};
use crate::msgpack;
use crate::protocol;
use crate::reactor::{Core, Key};
use crate::upstream::{Event, Origin};
use std::rc::Rc;

/// Options of a gateway upgrade besides channels and token.
#[derive(Debug, Default)]
pub(super) struct ConnectOptions {
    /// Cluster mode: where the replay of missed user messages starts; None = no replay (`since=$`).
    pub since: Option<Since>,
    /// `?v=` or `X-Client-Version`.
    pub client_version: Option<String>,
}

/// What [`Gateway::admit`] checked and [`Gateway::begin`] applies.
pub(super) struct Admission {
    channels: Vec<String>,
    opts: ConnectOptions,
    recover: recovery::RecoverRequest,
    state: Option<Box<ClientState>>,
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

impl Gateway {
    /// A WebSocket upgrade on `endpoint` (the router picked it by path): the RFC 6455 checks, the origin, and on the
    /// gateway endpoint the session ([`Self::admit`] and [`Self::begin`]). Everything that can refuse runs before
    /// anything changes; then the 101 response, the session and the subscriptions.
    pub(super) fn upgrade(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        req: &Request<'_>,
        endpoint: Endpoint,
        response: &mut Vec<u8>,
    ) -> Result<(), Reject> {
        let ws_key = handshake::check_upgrade(req)?;
        if !self.origin_allowed(req.origin) {
            return Err(Reject::Forbidden("origin not allowed"));
        }
        if endpoint == Endpoint::Echo {
            let deflate = core.negotiate_deflate(key, req);
            handshake::write_switching(response, ws_key, token::reply_protocol(req), deflate);
            let deadline = core.now() + self.policy.ping_interval;
            core.schedule(key, deadline);
            return Ok(());
        }
        let admission = self.admit(core, key, req)?;
        let deflate = core.negotiate_deflate(key, req);
        let protocol = token::reply_protocol(req);
        handshake::write_switching(response, ws_key, protocol, deflate);
        let head_len = response.len();
        self.begin(core, key, admission, false, response);
        if protocol == Some(msgpack::SUBPROTOCOL) {
            core.use_alt_format(key);
            let mut first = response.split_off(head_len);
            msgpack::transcode_frames(&mut first);
            response.extend_from_slice(&first);
        }
        Ok(())
    }

    /// `server.allowed_origins` (empty = any origin; a request without `Origin` is refused when it is set).
    pub(super) fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let allowed = &self.policy.allowed_origins;
        allowed.is_empty() || origin.is_some_and(|o| allowed.iter().any(|a| a == o))
    }

    /// The checks of a session's request (WebSocket upgrade or fallback transport), from its query string and
    /// headers: connect-time channels and options, recovery positions, the token and the per-user limit. Changes
    /// nothing on refusal.
    pub(super) fn admit(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        req: &Request<'_>,
    ) -> Result<Admission, Reject> {
        let channels = match protocol::query_channels(req.query) {
            Ok(c) if c.len() > self.policy.max_channels => {
                return Err(Reject::BadRequest("too many channels"))
            }
            Ok(c) => c,
            Err(msg) => return Err(Reject::BadRequest(msg)),
        };
        let opts = connect_options(req).map_err(Reject::BadRequest)?;
        if self
            .local
            .shared
            .bridge
            .as_ref()
            .is_some_and(|b| !b.may_open())
        {
            return Err(Reject::Unavailable(
                "this node's id is held by another node; connect to another node",
            ));
        }
        let recover =
            recovery::parse_recover_query(req.query, &channels).map_err(Reject::BadRequest)?;
        if self.check_recover(core, key, &recover).is_err() {
            return Err(Reject::BadRequest(
                "recover names a channel without recovery (see [[channels.namespace]] recover)",
            ));
        }
        let state = self.authenticate(core, req)?;
        Ok(Admission {
            channels,
            opts,
            recover,
            state,
        })
    }

    /// Gives up an admitted session that will not start: its per-user slot goes back.
    pub(super) fn abandon(&mut self, admission: Admission) {
        let Some(s) = admission.state else {
            return;
        };
        if let (true, Some(user)) = (s.counted, s.user()) {
            self.local.shared.users.release(user);
        }
    }

    /// Starts an admitted session on connection `key`: socket id, welcome (with the session key of a fallback
    /// transport when `fallback`), subscriptions with their recovery, the connection's timer. The first frames are
    /// appended to `response` as WebSocket frames (the caller converts them to the connection's form).
    pub(super) fn begin(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        admission: Admission,
        fallback: bool,
        response: &mut Vec<u8>,
    ) {
        let Admission {
            channels,
            opts,
            recover,
            state,
        } = admission;
        let channels = self.open_session(core, key, state, channels, opts, fallback, response);
        let mut positions = Vec::new();
        let mut replay = Vec::new();
        for name in &channels {
            self.subscribe(core, key, name);
            let since = recover.iter().find(|(c, _)| c == name).map(|(_, p)| p);
            positions.extend(self.position_after_subscribe(core, key, name, since, &mut replay));
        }
        if !positions.is_empty() {
            // The connection opens with this response, so the replay is copied into it (after the welcome).
            response.extend_from_slice(&recovery::subscribed_frame(&positions));
            for frame in replay {
                response.extend_from_slice(&frame);
            }
        }
        let deadline = (core.now() + self.policy.ping_interval).min(token_deadline(core, key));
        core.schedule(key, deadline);
    }

    /// The token and the per-user connection limit. `Ok(None)` with `auth.mode = "none"`. On success with a token
    /// the connection's state is built (and holds its per-user slot); nothing is allocated for a refused one.
    fn authenticate(
        &mut self,
        core: &Core<Client>,
        req: &Request<'_>,
    ) -> Result<Option<Box<ClientState>>, Reject> {
        let shared = self.local.shared.clone();
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
                self.local.tally.auth_failures_total += 1;
                return Err(Reject::Unauthorized(why));
            }
        };
        let counted = shared.max_per_user > 0;
        if counted
            && !shared
                .users
                .try_acquire(&identity.user, shared.max_per_user)
        {
            self.local.tally.user_limit_refusals_total += 1;
            return Err(Reject::TooManyRequests(
                "too many connections for this user (auth.max_connections_per_user)",
            ));
        }
        let mut s = Box::new(ClientState::new(&shared.message_rates, self.local.now_ms()));
        s.expires_at = expiry_second(core.now(), identity.exp, verifier.leeway());
        s.exp = identity.exp;
        s.counted = counted;
        s.device = identity.device.map(Into::into);
        s.profile = Some(self.profile_for(
            core,
            &identity.user,
            identity.tenant.map(Into::into),
            identity.grant,
        ));
        Ok(Some(s))
    }

    /// The profile for a user's connection: shared with the user's other connections on this reactor when equal.
    pub(super) fn profile_for(
        &self,
        core: &Core<Client>,
        user: &str,
        tenant: Option<Box<str>>,
        grant: crate::auth::grant::Grant,
    ) -> Rc<Profile> {
        let existing = self
            .local
            .registry
            .user_keys(user)
            .first()
            .and_then(|&k| core.app(k as usize).state.as_deref())
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

    #[allow(clippy::too_many_arguments)]
    /// After the checks on the gateway endpoint: gives the connection its socket id, registers it, appends the
    /// welcome frame (and a refusal for connect-time channels the token does not allow) to the 101 response, and
    /// reports the connect upstream. In cluster mode also records the session in Redis (through the state thread)
    /// and starts the replay of the user's missed messages. Returns the channels to subscribe.
    fn open_session(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        state: Option<Box<ClientState>>,
        channels: Vec<String>,
        opts: ConnectOptions,
        fallback: bool,
        response: &mut Vec<u8>,
    ) -> Vec<String> {
        let sid = self.local.sids.next_id();
        let heartbeat = self.local.shared.heartbeat;
        let profile = state.as_ref().and_then(|s| s.profile.clone());
        let session_key = fallback.then(|| {
            self.local.shared.fallback.open(sid);
            self.local.shared.fallback.key(sid)
        });
        frames::push_welcome(
            response,
            sid,
            heartbeat.interval(None),
            heartbeat.timeout(None),
            profile.as_deref().map(|p| &*p.user),
            session_key.as_deref(),
        );
        let allowed = match &profile {
            Some(p) => {
                let (allowed, forbidden): (Vec<String>, Vec<String>) =
                    channels.into_iter().partition(|c| p.grant.allows(c));
                if !forbidden.is_empty() {
                    self.local.tally.forbidden_subscribes_total += forbidden.len() as u64;
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
        self.local
            .registry
            .insert(sid, key as u32, profile.as_ref().map(|p| &p.user));
        if profile.is_some() {
            self.local.tally.authenticated += 1;
        }
        let client = core.app_mut(key);
        client.sid = sid;
        client.state = state;
        if let Some(v) = opts.client_version {
            let rates = &self.local.shared.message_rates;
            let now_ms = self.local.now_ms();
            client
                .state
                .get_or_insert_with(|| Box::new(ClientState::new(rates, now_ms)))
                .client_version = Some(v.into());
        }
        if self.local.shared.bridge.is_some() {
            let s = core.app(key).state.as_deref();
            let change = StateChange::Open {
                sid,
                user: s.and_then(|s| s.user()).map(str::to_string),
                device: s.and_then(|s| s.device.as_deref()).map(str::to_string),
                tenant: s.and_then(|s| s.tenant()).map(str::to_string),
            };
            self.state_change(change);
            if let Some(since) = opts.since {
                self.start_replay(core, key, since, response);
            }
        } else if let (Some(since), Some(_)) = (opts.since, &self.local.shared.user_log) {
            self.start_replay(core, key, since, response);
        }
        self.emit_event(core, key, true);
        allowed
    }

    /// When a gateway connection leaves the open state: unregisters it, frees its per-user slot and reports the
    /// disconnect upstream.
    pub(super) fn end_session(&mut self, core: &Core<Client>, key: Key) {
        self.drop_floors(core, key);
        let client = core.app(key);
        if core.is_stream(key) {
            self.local.tally.sse_sessions -= 1;
        }
        if core.is_stream(key) || core.is_detached(key) {
            self.local.shared.fallback.close(client.sid);
        }
        self.state_change(StateChange::Close { sid: client.sid });
        let s = client.state.as_deref();
        let user = s.and_then(|s| s.user());
        self.local.registry.remove(client.sid, key as u32, user);
        if let Some(user) = user {
            self.local.tally.authenticated -= 1;
            if s.is_some_and(|s| s.counted) {
                self.local.shared.users.release(user);
            }
        }
        self.emit_event(core, key, false);
    }

    /// Subscribes the connection; in cluster mode the session record follows.
    pub(super) fn subscribe(&mut self, core: &mut Core<Client>, key: Key, name: &str) {
        if core.subscribe(key, name) && self.local.shared.bridge.is_some() {
            let sid = core.app(key).sid;
            self.state_change(StateChange::Subscribe {
                sid,
                channel: name.to_string(),
            });
        }
    }

    pub(super) fn unsubscribe(&mut self, core: &mut Core<Client>, key: Key, name: &str) {
        self.drop_floor(key, name);
        if core.unsubscribe(key, name) && self.local.shared.bridge.is_some() {
            let sid = core.app(key).sid;
            self.state_change(StateChange::Unsubscribe {
                sid,
                channel: name.to_string(),
            });
        }
    }

    /// Cluster mode: hands a session state change to the state thread (never blocks).
    pub(super) fn state_change(&mut self, change: StateChange) {
        let Some(link) = &self.local.shared.bridge else {
            return;
        };
        self.local.state_seq += 1;
        link.state(StateEvent {
            reactor: self.local.reactor,
            seq: self.local.state_seq,
            change,
        });
    }

    /// Cluster mode, a user's connection: live user messages are held back until the bridge has read what the
    /// user missed (after `since`, or after the device's stored ack). Without a user there is nothing to replay.
    fn start_replay(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        since: Since,
        response: &mut Vec<u8>,
    ) {
        let has_user = core
            .app(key)
            .state
            .as_deref()
            .is_some_and(|s| s.user().is_some());
        if !has_user {
            return;
        }
        if self.request_replay(core, key, since) {
            if let Some(s) = core.app_mut(key).state.as_deref_mut() {
                s.replay.get_or_insert_with(Box::default);
            }
        } else {
            response.extend_from_slice(&frames::replay_done(
                0,
                None,
                Some("replay queue full; live messages follow"),
            ));
        }
    }

    /// Asks the bridge for (the next chunk of) the connection's missed messages — or, standalone, reads it from
    /// the replay store on the connection's millisecond timer, once the connection is open and what is queued
    /// has been flushed. False if it could not be asked.
    pub(super) fn request_replay(&self, core: &mut Core<Client>, key: Key, since: Since) -> bool {
        if self.local.shared.user_log.is_some() {
            let Some(s) = core.app_mut(key).state.as_deref_mut() else {
                return false;
            };
            s.replay.get_or_insert_with(Box::default).local = Some(since);
            let now = core.now_ms();
            core.schedule_ms(key, now);
            return true;
        }
        let Some(link) = &self.local.shared.bridge else {
            return false;
        };
        let client = core.app(key);
        let Some(s) = client.state.as_deref() else {
            return false;
        };
        let Some(user) = s.user() else {
            return false;
        };
        link.replay(ReplayRequest {
            sid: client.sid,
            user: user.to_string(),
            device: s.device.as_deref().map(str::to_string),
            tenant: s.tenant().map(str::to_string),
            since,
        })
    }

    /// Standalone: the next chunk of the connection's replay, if one is due, read from the replay store.
    pub(super) fn replay_from_store(&mut self, core: &mut Core<Client>, key: Key) {
        let shared = self.local.shared.clone();
        let Some(log) = &shared.user_log else {
            return;
        };
        // The next chunk once the socket has taken the previous one, so a long replay never makes a reader that
        // keeps up look like a slow consumer.
        let (queued, now) = (core.queued_bytes(key), core.now_ms());
        let client = core.app_mut(key);
        let sid = client.sid;
        let Some(s) = client.state.as_deref_mut() else {
            return;
        };
        let Some(replay) = s.replay.as_deref_mut().filter(|r| r.local.is_some()) else {
            return;
        };
        if queued > 0 {
            return core.schedule_ms(key, now + REPLAY_DRAIN_WAIT_MS);
        }
        let Some(since) = replay.local.take() else {
            return;
        };
        let Some(user) = s.user() else {
            return;
        };
        let outcome = log.read(
            user,
            s.device.as_deref(),
            s.tenant(),
            since,
            super::user_log::CHUNK_BYTES,
        );
        self.finish_replay(core, sid, outcome);
    }

    /// A connect (`true`) or disconnect event for the upstream sink.
    fn emit_event(&mut self, core: &Core<Client>, key: Key, connect: bool) {
        let origin = origin(core.app(key));
        let event = if connect {
            Event::Connect(origin)
        } else {
            Event::Disconnect(origin)
        };
        // A refused connect/disconnect event has nobody to tell; a sink logs and counts its own refusals.
        let _ = self.local.shared.sink.deliver(&event);
        if connect {
            self.local.tally.upstream_connects_total += 1;
        } else {
            self.local.tally.upstream_disconnects_total += 1;
        }
    }
}

/// Standalone replay: how long to wait before looking again whether the socket took the previous chunk.
const REPLAY_DRAIN_WAIT_MS: u64 = 10;

/// Who a connection is, for upstream events.
pub(super) fn origin(client: &Client) -> Origin<'_> {
    let s = client.state.as_deref();
    Origin {
        sid: client.sid,
        user: s.and_then(|s| s.user()),
        device: s.and_then(|s| s.device.as_deref()),
        tenant: s.and_then(|s| s.tenant()),
        client_version: s.and_then(|s| s.client_version.as_deref()),
    }
}

/// The reactor second at which the connection's token expires (`u32::MAX` = never).
pub(super) fn token_deadline(core: &Core<Client>, key: Key) -> u32 {
    core.app(key)
        .state
        .as_deref()
        .map_or(u32::MAX, |s| s.expires_at)
}

/// The reactor second at which a token with `exp` (Unix seconds) stops being valid, `now` being the reactor
/// second.
pub(super) fn expiry_second(now: u32, exp: u64, leeway: u64) -> u32 {
    let now_unix = sid::unix_ms() / 1000;
    let left = exp.saturating_add(leeway).saturating_sub(now_unix);
    now.saturating_add(left.min(u64::from(u32::MAX / 2)) as u32)
}
