//! Server → client frames of the session protocol: welcome, heartbeat changes, targeted deliveries and replies
//! with an error code. Each is a complete WebSocket text frame.

use crate::frame::{encode, OP_TEXT};
use crate::ids::StreamId;
use crate::pool::SharedFrame;
use crate::protocol::{message_frame, push_id, text_frame};
use serde_json::value::RawValue;
use std::fmt::Write as _;

/// Codes in replies, close frames and HTTP refusal bodies (documented in docs/PROTOCOL.md).
pub mod code {
    /// Closed through `POST /api/disconnect` without a code.
    pub const DISCONNECTED: u16 = 4000;
    /// Missing, invalid or expired token (HTTP 401 at the handshake, close code when the token expires).
    pub const UNAUTHORIZED: u16 = 4001;
    /// Channel not allowed by the token.
    pub const FORBIDDEN: u16 = 4003;
    /// Message rate limit (reply code; close code after `ws.error_budget` refusals in a row).
    pub const RATE_LIMITED: u16 = 4008;
    /// Too many connections (HTTP 429 at accept or handshake).
    pub const TOO_MANY: u16 = 4029;
    /// The upstream sink did not take a client message.
    pub const UPSTREAM_UNAVAILABLE: u16 = 4013;
    /// Pushes sent with `"ack": true` went unacknowledged: `max_attempts` sends without an ack, or more than
    /// `delivery.max_unacked` waiting. The pushes wait in the replay store for the reconnect.
    pub const NOT_ACKED: u16 = 4010;
}

fn json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// Appends `,"KEY":["a","b"]`.
fn push_str_list<S: AsRef<str>>(json: &mut String, key: &str, list: &[S]) {
    let _ = write!(json, ",\"{key}\":[");
    for (i, c) in list.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json_str(json, c.as_ref());
    }
    json.push(']');
}

/// `{"type":"welcome","sid":"<decimal>","heartbeat":{"interval":N,"timeout":M}}` plus `"user"` when authenticated and
/// `"key"` (the session key a fallback transport's requests carry) on SSE and long-poll sessions.
pub fn push_welcome(
    out: &mut Vec<u8>,
    sid: u64,
    interval: u32,
    timeout: u32,
    user: Option<&str>,
    session_key: Option<&str>,
) {
    let mut json = String::with_capacity(128);
    let _ = write!(json, "{{\"type\":\"welcome\",\"sid\":\"{sid}\"");
    if let Some(k) = session_key {
        // Hex digits only: nothing to escape.
        let _ = write!(json, ",\"key\":\"{k}\"");
    }
    if let Some(u) = user {
        json.push_str(",\"user\":");
        json_str(&mut json, u);
    }
    let _ = write!(
        json,
        ",\"heartbeat\":{{\"interval\":{interval},\"timeout\":{timeout}}}}}"
    );
    encode::push_frame(out, OP_TEXT, json.as_bytes());
}

/// `{"type":"heartbeat","interval":N,"timeout":M}`: the client's new heartbeat interval.
pub fn heartbeat(interval: u32, timeout: u32) -> Vec<u8> {
    text_frame(&format!(
        "{{\"type\":\"heartbeat\",\"interval\":{interval},\"timeout\":{timeout}}}"
    ))
}

/// `{"user":"u1","data":DATA}`, delivered to the user's connections.
pub fn user_message(user: &str, data: &str) -> SharedFrame {
    user_push(user, data, None, false, false)
}

/// A user push: `{"user":"u1","data":DATA}` plus `"id"` when it has one, `"replay":true` when replayed and
/// `"ack":true` when the backend asked for delivery confirmation (the client must ack the id promptly, or the push
/// is sent again).
pub fn user_push(
    user: &str,
    data: &str,
    id: Option<StreamId>,
    replayed: bool,
    ack: bool,
) -> SharedFrame {
    let mut name = String::new();
    json_str(&mut name, user);
    let mut tail = String::new();
    if let Some(id) = id {
        let _ = write!(tail, ",\"id\":\"{id}\"");
    }
    if replayed {
        tail.push_str(",\"replay\":true");
    }
    if ack {
        tail.push_str(",\"ack\":true");
    }
    tail.push('}');
    message_frame(&[
        b"{\"user\":",
        name.as_bytes(),
        b",\"data\":",
        data.as_bytes(),
        tail.as_bytes(),
    ])
}

/// A push sent again: the text frame `frame` (a JSON object) with `,"retry":N` before its closing brace. Built
/// per retransmit and connection (retransmits are the exception, not the hot path).
pub fn retry(frame: &[u8], n: u32) -> Vec<u8> {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    let payload = frame.get(header..).unwrap_or_default();
    let body = payload.strip_suffix(b"}").unwrap_or(payload);
    let tail = format!(",\"retry\":{n}}}");
    let mut json = Vec::with_capacity(body.len() + tail.len());
    json.extend_from_slice(body);
    json.extend_from_slice(tail.as_bytes());
    let mut out = Vec::with_capacity(json.len() + encode::MAX_HEADER);
    encode::push_frame(&mut out, OP_TEXT, &json);
    out
}

/// `{"type":"replay","ok":true,"count":N,"last":"<id>"|null}` after the replayed messages of a connection (then live
/// messages follow), or with `"ok":false,"error":"..."` when (the rest of) the replay could not be read.
pub fn replay_done(count: usize, last: Option<StreamId>, error: Option<&str>) -> Vec<u8> {
    let mut json = String::with_capacity(64);
    let _ = write!(
        json,
        "{{\"type\":\"replay\",\"ok\":{},\"count\":{count},\"last\":",
        error.is_none()
    );
    match last {
        Some(id) => {
            let _ = write!(json, "\"{id}\"");
        }
        None => json.push_str("null"),
    }
    if let Some(e) = error {
        json.push_str(",\"error\":");
        json_str(&mut json, e);
    }
    json.push('}');
    text_frame(&json)
}

/// `{"sid":"123","data":DATA}`, delivered to one connection.
pub fn sid_message(sid: u64, data: &str) -> SharedFrame {
    let sid = format!("\"{sid}\"");
    message_frame(&[
        b"{\"sid\":",
        sid.as_bytes(),
        b",\"data\":",
        data.as_bytes(),
        b"}",
    ])
}

/// `{"type":"reply","id":ID,"ok":false,"code":C,"error":"...","channels":[...]}` (`channels` only when given).
pub fn reply_error(
    id: Option<&RawValue>,
    code: u16,
    error: &str,
    channels: Option<&[&str]>,
) -> Vec<u8> {
    let mut json = String::with_capacity(96);
    json.push_str("{\"type\":\"reply\"");
    push_id(&mut json, id);
    let _ = write!(json, ",\"ok\":false,\"code\":{code},\"error\":");
    json_str(&mut json, error);
    if let Some(list) = channels {
        push_str_list(&mut json, "channels", list);
    }
    json.push('}');
    text_frame(&json)
}

/// `{"type":"reply","id":ID,"ok":true,"exp":EXP}` plus `"unsubscribed":[...]` when the new token dropped channels.
pub fn refresh_ok(id: Option<&RawValue>, exp: u64, unsubscribed: &[String]) -> Vec<u8> {
    let mut json = String::with_capacity(64);
    json.push_str("{\"type\":\"reply\"");
    push_id(&mut json, id);
    let _ = write!(json, ",\"ok\":true,\"exp\":{exp}");
    if !unsubscribed.is_empty() {
        push_str_list(&mut json, "unsubscribed", unsubscribed);
    }
    json.push('}');
    text_frame(&json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_the_documented_json() {
        let mut out = Vec::new();
        push_welcome(&mut out, 42, 25, 60, Some("u\"1"), None);
        assert_eq!(
            &out[2..],
            br#"{"type":"welcome","sid":"42","user":"u\"1","heartbeat":{"interval":25,"timeout":60}}"#
        );
        let f = reply_error(None, 4003, "channel not allowed", Some(&["a", "b"]));
        assert_eq!(
            &f[2..],
            br#"{"type":"reply","ok":false,"code":4003,"error":"channel not allowed","channels":["a","b"]}"#
        );
        let f = sid_message(7, "{\"x\":1}");
        assert_eq!(&f[2..], br#"{"sid":"7","data":{"x":1}}"#);
        let f = user_message("u1", "2");
        assert_eq!(&f[2..], br#"{"user":"u1","data":2}"#);
        let f = user_push("u1", "2", Some(StreamId(17, 3)), true, false);
        assert_eq!(
            &f[2..],
            br#"{"user":"u1","data":2,"id":"17-3","replay":true}"#
        );
        let f = user_push("u1", "2", Some(StreamId(17, 3)), false, true);
        assert_eq!(&f[2..], br#"{"user":"u1","data":2,"id":"17-3","ack":true}"#);
        let f = retry(&f, 2);
        assert_eq!(
            &f[2..],
            br#"{"user":"u1","data":2,"id":"17-3","ack":true,"retry":2}"#
        );
        let long = user_push("u1", &"7".repeat(300), Some(StreamId(1, 0)), false, true);
        let again = retry(&long, 1);
        assert_eq!(&again[4..again.len() - 11], &long[4..long.len() - 1]);
        assert!(again.ends_with(br#","retry":1}"#));
        let f = replay_done(2, Some(StreamId(5, 0)), None);
        assert_eq!(
            &f[2..],
            br#"{"type":"replay","ok":true,"count":2,"last":"5-0"}"#
        );
        let id = RawValue::from_string("5".into()).unwrap();
        let f = refresh_ok(Some(&id), 9, &["c".into()]);
        assert_eq!(
            &f[2..],
            br#"{"type":"reply","id":5,"ok":true,"exp":9,"unsubscribed":["c"]}"#
        );
    }
}
