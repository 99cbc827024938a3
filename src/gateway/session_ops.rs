//! Client ops of a fallback session, posted on their own HTTP requests (`POST /sse/op?sid=..&key=..`, one op
//! object as body). Any reactor may get the request: it checks the session key and the op's shape, then the op
//! goes to the reactor that holds the session — applied there like a message on a WebSocket (rate limits, error
//! budget, replies on the event stream), and counting as the client's sign of life.

use super::command::Command;
use super::handler::{Client, Gateway};
use crate::frame::handshake::{write_response, Reject, Request};
use crate::frame::OP_TEXT;
use crate::ids::sid;
use crate::protocol;
use crate::reactor::{Core, Key, Reply};

/// The route of an SSE session's ops.
pub const SSE_OP_PATH: &str = "/sse/op";

/// The headers of a fallback route's JSON answer; readable cross-origin (see `frame::handshake::ANY_ORIGIN`).
pub(super) const JSON: &str =
    "Content-Type: application/json\r\nCache-Control: no-store\r\nAccess-Control-Allow-Origin: *\r\n";

/// A JSON answer on a fallback route: `{"ok":true}` or `{"ok":false,"error":...}`.
pub(super) fn answer(response: &mut Vec<u8>, status: u16, error: Option<&str>) -> Reply {
    let body = match error {
        None => "{\"ok\":true}".to_string(),
        Some(e) => serde_json::json!({"ok": false, "error": e}).to_string(),
    };
    let headers = if status == 405 {
        "Content-Type: application/json\r\nCache-Control: no-store\r\nAccess-Control-Allow-Origin: *\r\n\
         Allow: POST, OPTIONS\r\n"
    } else {
        JSON
    };
    write_response(response, status, headers, body.as_bytes());
    Reply::Respond
}

/// The session a fallback request names (`sid` and `key` in its query), if it is live and the key is its own.
pub(super) fn session_of(gateway: &Gateway, query: &str) -> Option<u64> {
    let sid = match protocol::query_param(query, "sid") {
        Some(Ok(s)) => sid::parse(&s)?,
        _ => return None,
    };
    let key = match protocol::query_param(query, "key") {
        Some(Ok(k)) => k,
        _ => return None,
    };
    let shared = &gateway.local.shared;
    (sid::node_of(sid) == shared.node_id && shared.fallback.check(sid, &key)).then_some(sid)
}

/// The answer to a request for a session that is not (or no longer) here, or with the wrong key.
pub(super) fn unknown_session(response: &mut Vec<u8>) -> Reply {
    answer(
        response,
        404,
        Some("unknown session (ended, or wrong sid or key): open a new one"),
    )
}

impl Gateway {
    /// The checks every fallback POST route makes first: the method (405) and the origin (403). `Some` = answered.
    pub(super) fn refuse_post(
        &self,
        req: &Request<'_>,
        response: &mut Vec<u8>,
    ) -> Result<Option<Reply>, Reject> {
        if req.method != "POST" {
            return Ok(Some(answer(response, 405, Some("use POST"))));
        }
        if !self.fallback_origin_allowed(req.origin) {
            return Err(Reject::Forbidden("origin not allowed"));
        }
        Ok(None)
    }

    /// `POST /sse/op`: 202 once the op is on its way to the session; 404 for an unknown or ended session or a
    /// wrong key, 400 for a body that is not one op object, 503 when the owning reactor's queue is full.
    pub(super) fn post_op(
        &mut self,
        core: &mut Core<Client>,
        req: &Request<'_>,
        body: &[u8],
        response: &mut Vec<u8>,
    ) -> Result<Reply, Reject> {
        if let Some(refused) = self.refuse_post(req, response)? {
            return Ok(refused);
        }
        let Some(sid) = session_of(self, req.query) else {
            self.local.tally.fallback_unknown_session_total += 1;
            return Ok(unknown_session(response));
        };
        if serde_json::from_slice::<protocol::ClientRequest>(body).is_err() {
            return Ok(answer(
                response,
                400,
                Some("expected one JSON object with an \"op\" field"),
            ));
        }
        if !self.forward_op(core, sid, body) {
            return Ok(answer(response, 503, Some("server busy, retry")));
        }
        self.local.tally.fallback_ops_total += 1;
        Ok(answer(response, 202, None))
    }

    /// Applies `op` to session `sid` here, or hands it to the reactor that holds it. False when that reactor's
    /// queue is full.
    fn forward_op(&mut self, core: &mut Core<Client>, sid: u64, op: &[u8]) -> bool {
        let owner = sid::reactor_of(sid);
        if owner == core.id() {
            self.session_op(core, sid, op);
            return true;
        }
        let Some(peers) = &self.local.shared.peers else {
            return false;
        };
        peers.send(owner, Command::SessionOp { sid, op: op.into() })
    }

    /// An op for session `sid` of this reactor: the client is alive, and the op is handled as a message on the
    /// session's connection. A session that ended meanwhile has nothing to do with it.
    pub(super) fn session_op(&mut self, core: &mut Core<Client>, sid: u64, op: &[u8]) {
        let Some(key) = self.local.registry.by_sid(sid).map(|k| k as Key) else {
            return;
        };
        if !core.is_open(key) || !core.is_stream(key) {
            return;
        }
        core.touch(key);
        self.on_request(core, key, OP_TEXT, op);
    }
}
