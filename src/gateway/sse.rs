//! Server-sent events: `GET /sse?channels=...` opens a session like a WebSocket upgrade does (same query, token,
//! recovery), and the connection stays a reactor connection in the stream form below: each server message is one
//! event, with `id:` = its position where it has one, so an EventSource that reconnects by itself sends
//! `Last-Event-ID`, which counts as `recover=` (channel position) or `since=` (user message id). The client's ops
//! arrive as POSTs (session_ops.rs).

use super::handler::{Client, Gateway};
use crate::frame::deflate::split_frame;
use crate::frame::handshake::{Reject, Request};
use crate::frame::{encode, OP_CLOSE, OP_PING, OP_TEXT};
use crate::ids::StreamId;
use crate::protocol;
use crate::reactor::{Core, Key, Reply};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The route of the event stream.
pub const SSE_PATH: &str = "/sse";

/// Readable cross-origin, like every fallback answer (see `frame::handshake::ANY_ORIGIN`).
const HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
X-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n";

impl Gateway {
    /// `GET /sse`: admits the session like an upgrade, answers the stream's head and its first events (welcome with
    /// the session key, recovery).
    pub(super) fn open_sse(
        &mut self,
        core: &mut Core<Client>,
        key: Key,
        req: &Request<'_>,
        response: &mut Vec<u8>,
    ) -> Result<Reply, Reject> {
        if req.method != "GET" {
            return Err(Reject::MethodNotAllowed);
        }
        if !self.fallback_origin_allowed(req.origin) {
            return Err(Reject::Forbidden("origin not allowed"));
        }
        let query = query_with_last_event_id(req);
        let req = Request {
            query: &query,
            ..req.clone()
        };
        let admission = self.admit(core, key, &req)?;
        response.extend_from_slice(HEAD);
        let head_len = response.len();
        self.begin(core, key, admission, true, response);
        self.local.tally.sse_sessions += 1;
        let first = response.split_off(head_len);
        let mut rest = &first[..];
        while let Some(len) = encode::frame_len(rest) {
            response.extend_from_slice(&stream_form(&rest[..len]));
            rest = &rest[len..];
        }
        Ok(Reply::Stream)
    }

    /// Browsers send no `Origin` on a same-origin GET, so on the fallback routes a missing one is allowed; one that
    /// is sent must be in `server.allowed_origins` (when set).
    pub(super) fn fallback_origin_allowed(&self, origin: Option<&str>) -> bool {
        origin.is_none() || self.origin_allowed(origin)
    }
}

/// The query of an SSE request with `Last-Event-ID` applied: an EventSource reconnecting by itself repeats its
/// first URL, so the id (newer than anything in it) replaces the URL's `since=` (user message id form) or the URL's
/// `recover=` entry for its channel (channel position form, for a channel in `channels=`).
fn query_with_last_event_id(req: &Request<'_>) -> String {
    let Some(id) = req.last_event_id.filter(|id| !id.is_empty()) else {
        return req.query.to_string();
    };
    let (param, channel) = if StreamId::parse_lenient(id).is_some() {
        ("since", None)
    } else {
        let Some(channel) = id.rsplitn(3, ':').nth(2) else {
            return req.query.to_string();
        };
        let listed =
            protocol::query_channels(req.query).is_ok_and(|c| c.iter().any(|x| x == channel));
        if !listed {
            return req.query.to_string();
        }
        ("recover", Some(channel))
    };
    let mut query = String::with_capacity(req.query.len() + id.len() + 16);
    for pair in req.query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != param {
            push_pair(&mut query, pair);
            continue;
        }
        let Some(channel) = channel else {
            continue; // since=: replaced
        };
        // recover=: the other channels' entries stay.
        let kept: Vec<&str> = value
            .split(',')
            .filter(|item| {
                let decoded = protocol::percent_decode(item).unwrap_or_default();
                decoded.rsplitn(3, ':').nth(2) != Some(channel)
            })
            .collect();
        if !kept.iter().all(|k| k.is_empty()) {
            push_pair(&mut query, &format!("recover={}", kept.join(",")));
        }
    }
    let mut pair = format!("{param}=");
    percent_encode(&mut pair, id);
    push_pair(&mut query, &pair);
    query
}

fn push_pair(query: &mut String, pair: &str) {
    if !query.is_empty() {
        query.push('&');
    }
    query.push_str(pair);
}

fn percent_encode(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
}

/// A server frame as an SSE event: a text message → `id:` (its position, when it has one) and `data:` lines; a
/// ping → a comment (keeps proxies from timing the stream out); a close → `event: close` with
/// `{"type":"close","code":N,"reason":"..."}` (the long-poll form of a close too). Anything else has no SSE form.
pub fn stream_form(frame: &[u8]) -> Vec<u8> {
    let Some((opcode, payload)) = split_frame(frame) else {
        return Vec::new();
    };
    match opcode {
        OP_TEXT => event(None, payload),
        OP_PING => b":\n\n".to_vec(),
        OP_CLOSE => {
            let code = payload
                .get(..2)
                .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
            let reason = payload.get(2..).unwrap_or_default();
            let mut json = format!("{{\"type\":\"close\",\"code\":{code},\"reason\":");
            json.push_str(
                &serde_json::to_string(&String::from_utf8_lossy(reason)).unwrap_or_default(),
            );
            json.push('}');
            event(Some("close"), json.as_bytes())
        }
        _ => Vec::new(),
    }
}

fn event(name: Option<&str>, data: &[u8]) -> Vec<u8> {
    let id = if name.is_none() { event_id(data) } else { None };
    let mut out = Vec::with_capacity(data.len() + 64);
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    // A line break ends an SSE field, so a message with any (published JSON may be pretty-printed) is sent as
    // several data lines, which the client joins with "\n": the same JSON.
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        for part in line.split(|&b| b == b'\r') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(part);
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    out
}

/// The position a message carries: `channel:offset:epoch` for a channel publication with an offset (the last one
/// of a merge batch), the id of a user message.
fn event_id(json: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Offset {
        offset: Option<u64>,
    }
    #[derive(Deserialize)]
    struct Fields<'a> {
        #[serde(borrow)]
        channel: Option<Cow<'a, str>>,
        offset: Option<u64>,
        #[serde(borrow)]
        epoch: Option<Cow<'a, str>>,
        batch: Option<Vec<Offset>>,
        #[serde(borrow)]
        user: Option<&'a RawValue>,
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    let f: Fields = serde_json::from_slice(json).ok()?;
    let id = if let (Some(channel), Some(epoch)) = (&f.channel, &f.epoch) {
        let last = f
            .offset
            .or_else(|| f.batch.as_ref()?.iter().rev().find_map(|b| b.offset))?;
        format!("{channel}:{last}:{epoch}")
    } else if f.user.is_some() {
        serde_json::from_str::<String>(f.id?.get()).ok()?
    } else {
        return None;
    };
    // A field value ends at a line break; such an id is not sent rather than cut.
    (!id.contains(['\n', '\r', '\0'])).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(query: &str, id: &str) -> String {
        let head = format!("GET /sse?{query} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {id}\r\n\r\n");
        let req = crate::frame::handshake::parse_request(head.as_bytes(), 8192)
            .unwrap()
            .unwrap();
        query_with_last_event_id(&req)
    }

    #[test]
    fn last_event_id_replaces_the_urls_position() {
        assert_eq!(
            with_id("channels=a,b&recover=a:1:E,b:2:E", "a:9:E"),
            "channels=a,b&recover=b:2:E&recover=a:9:E"
        );
        assert_eq!(with_id("channels=a", "a:9:E"), "channels=a&recover=a:9:E");
        assert_eq!(
            with_id("channels=a", "zz:9:E"),
            "channels=a",
            "not a listed channel"
        );
        assert_eq!(
            with_id("channels=a&since=1-0", "1700000000000-3"),
            "channels=a&since=1700000000000-3"
        );
        assert_eq!(
            with_id("channels=a%3Ab&recover=a%3Ab:1:E", "a:b:4:E"),
            "channels=a%3Ab&recover=a:b:4:E"
        );
    }

    fn text(json: &str) -> Vec<u8> {
        let mut f = Vec::new();
        encode::push_frame(&mut f, OP_TEXT, json.as_bytes());
        f
    }

    #[test]
    fn events_carry_positions() {
        let pubn = text(r#"{"channel":"doc:1","offset":17,"epoch":"x7Kq","data":{"a":1}}"#);
        assert_eq!(
            String::from_utf8(stream_form(&pubn)).unwrap(),
            "id: doc:1:17:x7Kq\ndata: {\"channel\":\"doc:1\",\"offset\":17,\"epoch\":\"x7Kq\",\"data\":{\"a\":1}}\n\n"
        );
        let batch = text(
            r#"{"channel":"c","epoch":"E","batch":[{"offset":4,"data":1},{"offset":5,"data":2}]}"#,
        );
        assert!(String::from_utf8(stream_form(&batch))
            .unwrap()
            .starts_with("id: c:5:E\n"));
        let user = text(r#"{"user":"u1","data":1,"id":"1700000000000-3"}"#);
        assert!(String::from_utf8(stream_form(&user))
            .unwrap()
            .starts_with("id: 1700000000000-3\ndata: "));
        let pong = text(r#"{"type":"pong","id":5}"#);
        assert!(String::from_utf8(stream_form(&pong))
            .unwrap()
            .starts_with("data: "));
    }

    #[test]
    fn line_breaks_become_data_lines() {
        let f = text("{\"channel\":\"c\",\n\"data\":\r\n[1,\r2]}");
        assert_eq!(
            String::from_utf8(stream_form(&f)).unwrap(),
            "data: {\"channel\":\"c\",\ndata: \"data\":\ndata: [1,\ndata: 2]}\n\n"
        );
    }

    #[test]
    fn control_frames() {
        let mut ping = Vec::new();
        encode::push_frame(&mut ping, OP_PING, b"");
        assert_eq!(stream_form(&ping), b":\n\n");
        let close = encode::close_frame(1008, "slow consumer");
        assert_eq!(
            String::from_utf8(stream_form(&close)).unwrap(),
            "event: close\ndata: {\"type\":\"close\",\"code\":1008,\"reason\":\"slow consumer\"}\n\n"
        );
        let mut pong = Vec::new();
        encode::push_frame(&mut pong, crate::frame::OP_PONG, b"");
        assert!(stream_form(&pong).is_empty());
    }
}
