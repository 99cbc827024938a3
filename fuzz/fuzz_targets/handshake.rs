//! The upgrade request as the gateway handles it: `frame::handshake::parse_request`, `check_upgrade`, the 101 or
//! error response, then what the gateway reads from the request (token sources, connect-time channels, `since`,
//! client version), all on hostile bytes.
//!
//! Checked: an incomplete head below the limit is `Ok(None)`, a complete one is within the limit and no strict
//! prefix of it parses as complete; every response is one well-formed head (no header injection) with a JSON body
//! of the announced length; tokens and channel names obey their limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::auth::token;
use wsgate::frame::handshake::{self, check_upgrade, parse_request, Request};
use wsgate::ids::StreamId;
use wsgate::protocol;

/// `server.max_request_head` default.
const MAX_HEAD: usize = 8192;

/// One response head ending in the only blank line, then `Content-Length` bytes of JSON (if announced).
fn check_response(out: &[u8]) {
    assert!(out.starts_with(b"HTTP/1.1 "));
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head ends")
        + 4;
    let head = std::str::from_utf8(&out[..end]).expect("head is UTF-8");
    assert!(!head[..end - 4].contains("\r\n\r\n"));
    assert!(
        !head.replace("\r\n", "").contains(['\r', '\n']),
        "bare CR/LF in head"
    );
    let body = &out[end..];
    if let Some(len) = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("Content-Length: "))
    {
        assert_eq!(len.parse::<usize>().ok(), Some(body.len()));
        serde_json::from_slice::<&serde_json::value::RawValue>(body).expect("error body is JSON");
    } else {
        assert!(body.is_empty());
    }
}

/// What the gateway's upgrade policy reads from an accepted request.
fn gateway_reads(req: &Request<'_>) {
    match check_upgrade(req) {
        Ok(key) => {
            assert_eq!(key.len(), 24);
            let accept = handshake::accept_value(key);
            assert!(accept.iter().all(|b| b.is_ascii_graphic()));
            let mut out = Vec::new();
            handshake::write_switching(&mut out, key, token::reply_protocol(req), None);
            check_response(&out);
        }
        Err(reject) => {
            let mut out = Vec::new();
            handshake::write_reject(&mut out, reject);
            check_response(&out);
        }
    }
    if let Ok(Some(t)) = token::find(req) {
        assert!(!t.is_empty() && t.len() <= token::MAX_TOKEN_LEN);
    }
    if let Ok(names) = protocol::query_channels(req.query) {
        assert!(names.iter().all(|n| protocol::valid_channel(n)));
    }
    // gateway::upgrade::connect_options, piece by piece (it is private to the gateway).
    if let Some(Ok(since)) = protocol::query_param(req.query, "since") {
        if let Some(id) = StreamId::parse_lenient(&since) {
            assert_eq!(StreamId::parse(&id.to_string()), Some(id));
        }
    }
    if let Some(Ok(v)) = protocol::query_param(req.query, "v") {
        if protocol::valid_client_version(&v) {
            assert!(v.len() <= protocol::MAX_CLIENT_VERSION);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match parse_request(data, MAX_HEAD) {
        Ok(None) => assert!(
            data.len() < MAX_HEAD,
            "partial head of {} bytes",
            data.len()
        ),
        Err(reject) => {
            let mut out = Vec::new();
            handshake::write_reject(&mut out, reject);
            check_response(&out);
        }
        Ok(Some(req)) => {
            assert!(req.head_len <= data.len() && req.head_len <= MAX_HEAD);
            assert!(
                !matches!(
                    parse_request(&data[..req.head_len - 1], MAX_HEAD),
                    Ok(Some(_))
                ),
                "a strict prefix of the head parsed as complete"
            );
            gateway_reads(&req);
        }
    }
});
