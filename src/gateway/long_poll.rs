//! HTTP long-poll, the fallback for clients that have neither WebSocket nor EventSource. `POST /poll` without a
//! session opens one (admitted like a WebSocket upgrade) and answers with its first messages (the welcome with the
//! session key). The session is a detached reactor connection — channels, timers, rate limits and the
//! slow-consumer limit as for any connection — whose queued frames wait for the client's next poll:
//! `POST /poll?sid=..&key=..` with a JSON array of ops. The ops are applied, then the poll is answered with
//! everything queued, at once if anything is, else when a message arrives, else with `[]` after
//! `transport.poll_timeout`. One poll waits per session (a new one ends the previous with `[]`); a session without
//! a poll for `transport.session_ttl` ends.
//!
//! Any reactor may get a poll (SO_REUSEPORT); it holds the request and hands the poll to the session's reactor,
//! which sends the answer back: no reactor ever waits for another.

use super::command::Command;
use super::handler::{Client, Gateway};
use super::session_ops::{answer, session_of, unknown_session, JSON};
use super::upgrade::token_deadline;
use crate::frame::close_code;
use crate::frame::deflate::split_frame;
use crate::frame::handshake::{write_response, Reject, Request};
use crate::frame::{encode, OP_CLOSE, OP_TEXT};
use crate::ids::sid;
use crate::protocol;
use crate::reactor::{Core, Key, Reply};
use serde_json::value::RawValue;
use std::collections::HashMap;

/// The route of long-poll.
pub const POLL_PATH: &str = "/poll";

/// Seconds a held poll request waits past `transport.poll_timeout` for its answer before the core answers 503
/// itself (the session's reactor could not send it).
const HOLD_MARGIN: u32 = 5;

/// Where a poll's answer goes: the held request on reactor `reactor`, and the token it holds (a key may name
/// another connection by the time the answer comes).
#[derive(Debug, Clone, Copy)]
pub struct Waiter {
    pub reactor: usize,
    pub key: usize,
    pub token: u64,
}

/// One long-poll session on its reactor.
struct Session {
    /// The poll waiting for messages, and the reactor second at which it gets `[]`.
    waiter: Option<(Waiter, u32)>,
    /// Reactor second of the last poll (or of the last answer): the session ends `session_ttl` after it.
    last_poll: u32,
}

/// This reactor's long-poll sessions, by their detached connection.
pub(super) struct PollSessions {
    sessions: HashMap<Key, Session>,
    poll_timeout: u32,
    ttl: u32,
}

impl PollSessions {
    pub fn new(config: &crate::config::Config) -> PollSessions {
        let secs = |v: u64| v.min(u64::from(u32::MAX / 4)) as u32;
        PollSessions {
            sessions: HashMap::new(),
            poll_timeout: secs(config.transport.poll_timeout),
            ttl: secs(config.transport.session_ttl),
        }
    }

    pub fn contains(&self, key: Key) -> bool {
        self.sessions.contains_key(&key)
    }
}

/// The ops of a poll: a JSON array of objects (an empty body is no ops).
fn parse_ops(body: &[u8]) -> Result<Vec<&RawValue>, &'static str> {
    const BAD: &str = "expected a JSON array of op objects";
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let ops: Vec<&RawValue> = serde_json::from_slice(body).map_err(|_| BAD)?;
    if ops.iter().any(|op| !op.get().starts_with('{')) {
        return Err(BAD);
    }
    Ok(ops)
}

/// Appends a server frame to a JSON array being built (`body` holds "[" and what came before): a text message as
/// it is, a close as `{"type":"close","code":N,"reason":"..."}`; pings and pongs have no place in it.
fn push_message(body: &mut Vec<u8>, frame: &[u8]) {
    let Some((opcode, payload)) = split_frame(frame) else {
        return;
    };
    let item = match opcode {
        OP_TEXT => payload.to_vec(),
        OP_CLOSE => {
            let code = payload
                .get(..2)
                .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
            let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
            serde_json::json!({"type": "close", "code": code, "reason": reason})
                .to_string()
                .into_bytes()
        }
        _ => return,
    };
    if body.len() > 1 {
        body.push(b',');
    }
    body.extend_from_slice(&item);
}

fn poll_response(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 128);
    write_response(&mut out, 200, JSON, body);
    out
}

impl Gateway {
    /// `POST /poll`: opens a session (no `sid`), or polls one.
    pub(super) fn poll_request(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        req: &Request<'_>,
        body: &[u8],
        response: &mut Vec<u8>,
    ) -> Result<Reply, Reject> {
        if let Some(refused) = self.refuse_post(req, response)? {
            return Ok(refused);
        }
        if protocol::query_param(req.query, "sid").is_none() {
            return self.open_poll(core, key, req, response);
        }
        let Some(sid) = session_of(self, req.query) else {
            self.local.tally.fallback_unknown_session_total += 1;
            return Ok(unknown_session(response));
        };
        if let Err(e) = parse_ops(body) {
            return Ok(answer(response, 400, Some(e)));
        }
        self.local.tally.polls_total += 1;
        let token = self.local.sids.next_id();
        core.app_mut(key).sid = token;
        let waiter = Waiter {
            reactor: core.id(),
            key,
            token,
        };
        core.hold(key, core.now() + self.polls.poll_timeout + HOLD_MARGIN);
        let owner = sid::reactor_of(sid);
        if owner == core.id() {
            self.poll(core, sid, body, waiter);
        } else {
            let sent = self.local.shared.peers.as_ref().is_some_and(|p| {
                p.send(
                    owner,
                    Command::Poll {
                        sid,
                        ops: body.into(),
                        waiter,
                    },
                )
            });
            if !sent {
                let mut busy = Vec::new();
                answer(&mut busy, 503, Some("server busy, retry"));
                core.answer_held(key, &busy);
            }
        }
        Ok(Reply::Hold)
    }

    /// Opens a long-poll session on a detached connection; the request is answered with its first messages.
    fn open_poll(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        req: &Request<'_>,
        response: &mut Vec<u8>,
    ) -> Result<Reply, Reject> {
        let admission = self.admit(core, key, req)?;
        let Some(session) = core.open_detached() else {
            self.abandon(admission);
            return Err(Reject::Unavailable("connection limit reached"));
        };
        let mut first = Vec::new();
        self.begin(core, session, admission, true, &mut first);
        let now = core.now();
        self.local.tally.poll_sessions += 1;
        self.polls.sessions.insert(
            session,
            Session {
                waiter: None,
                last_poll: now,
            },
        );
        let deadline = (now + self.polls.ttl).min(token_deadline(core, session));
        core.schedule(session, deadline);
        let mut body = b"[".to_vec();
        let mut rest = &first[..];
        while let Some(len) = encode::frame_len(rest) {
            push_message(&mut body, &rest[..len]);
            rest = &rest[len..];
        }
        body.push(b']');
        write_response(response, 200, JSON, &body);
        Ok(Reply::Respond)
    }

    /// A poll for session `sid` of this reactor (from this reactor's request or another's): ops applied, the
    /// previous waiting poll ended, this one answered now or when messages come.
    pub(super) fn poll(&mut self, core: &mut Core<Client>, sid: u64, ops: &[u8], waiter: Waiter) {
        let session = self.local.registry.by_sid(sid).map(|k| k as Key);
        let Some(key) = session.filter(|&k| core.is_open(k) && self.polls.contains(k)) else {
            let mut gone = Vec::new();
            unknown_session(&mut gone);
            return self.send_answer(core, waiter, gone);
        };
        core.touch(key);
        for op in parse_ops(ops).unwrap_or_default() {
            if !core.is_open(key) {
                break;
            }
            self.on_request(core, key, OP_TEXT, op.get().as_bytes());
        }
        let now = core.now();
        let Some(s) = self.polls.sessions.get_mut(&key) else {
            return;
        };
        s.last_poll = now;
        let deadline = now + self.polls.poll_timeout;
        if let Some((previous, _)) = s.waiter.replace((waiter, deadline)) {
            self.send_answer(core, previous, poll_response(b"[]"));
        }
        if !core.is_open(key) {
            return; // an op ended the session: `on_close` answers with its close
        }
        if core.queued_bytes(key) > 0 {
            return self.answer_poll(core, key);
        }
        core.schedule(key, deadline.min(token_deadline(core, key)));
    }

    /// Answers the waiting poll of session `key`, if any, with everything queued on it.
    fn answer_poll(&mut self, core: &mut Core<Client>, key: Key) {
        let Some(s) = self.polls.sessions.get_mut(&key) else {
            return;
        };
        let Some((waiter, _)) = s.waiter.take() else {
            return;
        };
        let now = core.now();
        s.last_poll = now;
        let mut body = b"[".to_vec();
        core.take_queued(key, |frame| push_message(&mut body, frame));
        body.push(b']');
        self.send_answer(core, waiter, poll_response(&body));
        if core.is_open(key) {
            let deadline = (now + self.polls.ttl).min(token_deadline(core, key));
            core.schedule(key, deadline);
        }
    }

    /// Frames were queued on a detached connection: a waiting poll gets them.
    pub(super) fn poll_output(&mut self, core: &mut Core<Client>, key: Key) {
        self.answer_poll(core, key);
    }

    /// The timer of a long-poll session: token expiry, the waiting poll's timeout, the session's time to live.
    pub(super) fn poll_timer(&mut self, core: &mut Core<Client>, key: Key) {
        let now = core.now();
        let expires_at = token_deadline(core, key);
        if expires_at <= now {
            self.local.tally.token_expired_closes_total += 1;
            return core.close(key, super::frames::code::UNAUTHORIZED, "token expired");
        }
        let Some(s) = self.polls.sessions.get_mut(&key) else {
            return;
        };
        if let Some((waiter, deadline)) = s.waiter {
            if now < deadline {
                return core.schedule(key, deadline.min(expires_at));
            }
            s.waiter = None;
            s.last_poll = now;
            self.send_answer(core, waiter, poll_response(b"[]"));
            return core.schedule(key, (now + self.polls.ttl).min(expires_at));
        }
        if now >= s.last_poll + self.polls.ttl {
            core.tally().idle_timeouts_total += 1;
            return core.close(key, close_code::GOING_AWAY, "session expired");
        }
        let next = s.last_poll + self.polls.ttl;
        core.schedule(key, next.min(expires_at));
    }

    /// A long-poll session ended: a waiting poll gets what was queued, the close last.
    pub(super) fn end_poll(&mut self, core: &mut Core<Client>, key: Key) {
        self.answer_poll(core, key);
        if self.polls.sessions.remove(&key).is_some() {
            self.local.tally.poll_sessions -= 1;
        }
    }

    /// Sends a poll's answer to its held request, here or on its reactor. An answer whose request is gone (its
    /// client left, or the held request timed out) is dropped.
    fn send_answer(&mut self, core: &mut Core<Client>, waiter: Waiter, response: Vec<u8>) {
        if waiter.reactor == core.id() {
            return held_answer(core, waiter.key, waiter.token, &response);
        }
        if let Some(peers) = &self.local.shared.peers {
            peers.send(
                waiter.reactor,
                Command::PollAnswer {
                    key: waiter.key,
                    token: waiter.token,
                    response,
                },
            );
        }
    }
}

/// Answers held request `key` if it is still the one that holds `token`.
pub(super) fn held_answer(core: &mut Core<Client>, key: Key, token: u64, response: &[u8]) {
    if core.is_held(key) && core.app(key).sid == token {
        core.answer_held(key, response);
    }
}
