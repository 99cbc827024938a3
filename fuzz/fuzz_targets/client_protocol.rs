//! The client JSON protocol: a text frame parsed as `protocol::ClientRequest` (as `gateway::requests` does) and
//! the replies built from it, plus the query-string helpers the upgrade uses (`query_channels`, `query_param`,
//! `percent_decode`) on the same bytes.
//!
//! Checked: every reply the gateway builds from a request (which echoes the request's `id` verbatim) is one text
//! frame holding valid JSON; names accepted by `valid_channel` obey its rule; percent-decoding agrees with a
//! strict reference decoder (`%` + exactly two hex digits, `+` is a space, the result UTF-8); a `recover` request
//! (object or connect-URL form) names only the request's channels with epochs of at most 32 bytes; publication
//! frames with offsets and merge batches are valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::ids::StreamId;
use wsgate::protocol::{self, ClientRequest};

/// The JSON payload of a server text frame (FIN + text, unmasked, 7- or 16-bit length; replies are small).
///
/// JSON syntax only (RFC 8259 has no number range: an echoed id like `1E999` is valid JSON, though it does not fit
/// an f64, so parsing into `serde_json::Value` would be the wrong check).
fn json_payload(frame: &[u8]) {
    assert_eq!(frame[0], 0x81);
    let (len, start) = match frame[1] {
        126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
        127 => (
            usize::try_from(u64::from_be_bytes(frame[2..10].try_into().unwrap())).unwrap(),
            10,
        ),
        n => (usize::from(n), 2),
    };
    assert_eq!(frame.len(), start + len, "frame length");
    serde_json::from_slice::<&serde_json::value::RawValue>(&frame[start..]).expect("reply is JSON");
}

/// Strict reference for `protocol::percent_decode`.
fn reference_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let hi = hex(*b.get(i + 1)?)?;
                let lo = hex(*b.get(i + 2)?)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn valid_channel_rule(n: &str) -> bool {
    !n.is_empty() && n.len() <= protocol::MAX_CHANNEL_LEN && !n.chars().any(char::is_control)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<ClientRequest>(data) {
        json_payload(&protocol::reply(req.id, None));
        json_payload(&protocol::reply(req.id, Some(&req.op)));
        json_payload(&protocol::pong(req.id));
        json_payload(&protocol::error(&req.op));
        for name in req.channels.iter().flatten() {
            assert_eq!(protocol::valid_channel(name), valid_channel_rule(name));
            if protocol::valid_channel(name) {
                let data = req.data.map_or("null", |d| d.get());
                json_payload(&protocol::channel_message(name, data));
                let (frame, data_at) = protocol::channel_message_at(name, u64::MAX, "x7Kq0aZ3", data);
                json_payload(&frame);
                assert_eq!(&frame[data_at..frame.len() - 1], data.as_bytes());
                json_payload(&protocol::batch_message(name, Some("e"), &[1, 2], &[data, data]));
                json_payload(&protocol::batch_message(name, None, &[], &[data]));
            }
        }
        let channels = req.channels.clone().unwrap_or_default();
        if let Some(Ok(entries)) = req.recover.map(|r| protocol::parse_recover(r, &channels)) {
            for (channel, _, epoch) in &entries {
                assert!(channels.contains(channel));
                assert!(epoch.len() <= protocol::MAX_EPOCH_LEN);
            }
        }
        // `ack`: the id must be a stream id string.
        if let Some(id) = req
            .id
            .and_then(|raw| serde_json::from_str::<&str>(raw.get()).ok())
            .and_then(StreamId::parse)
        {
            assert_eq!(StreamId::parse(&id.to_string()), Some(id));
        }
    }
    if let Ok(query) = std::str::from_utf8(data) {
        assert_eq!(protocol::percent_decode(query), reference_decode(query));
        if let Ok(names) = protocol::query_channels(query) {
            assert!(names.iter().all(|n| valid_channel_rule(n)));
            if let Ok(entries) = protocol::query_recover(query, &names) {
                for (channel, _, epoch) in &entries {
                    assert!(names.contains(channel));
                    assert!(epoch.len() <= protocol::MAX_EPOCH_LEN);
                }
            }
        }
        for name in ["channels", "since", "v", "token"] {
            let raw = query.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then_some(v)
            });
            let expected = raw.map(|v| reference_decode(v).ok_or(()));
            assert_eq!(protocol::query_param(query, name), expected);
        }
    }
});
