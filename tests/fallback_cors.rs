//! The fallback routes from a page of another origin (CORS, docs/PROTOCOL.md "Fallback transports"): the browser's
//! `OPTIONS` preflight is answered for the routes and the headers the JavaScript SDK sends, every fallback answer
//! and refusal is readable by the page, and `server.allowed_origins` still decides who may use them. The browser
//! side of it (a page on another origin running the SDK over SSE and long-poll) is tests/browser/cross_origin.mjs,
//! run by tests/js_sdk.rs.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const PAGE: &str = "http://app.example";

fn preflight(g: &Server, path: &str, origin: &str) -> HttpResponse {
    http_request(
        g.ws,
        "OPTIONS",
        path,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ],
        b"",
    )
}

fn readable_by_any_origin(r: &HttpResponse, what: &str) {
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("*"),
        "{what}: {r}"
    );
}

/// The head of a streamed response (an event stream never ends by itself).
fn stream_head(g: &Server, path: &str) -> String {
    let mut s = tcp_connect(g.ws);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nOrigin: {PAGE}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(
            Instant::now() < deadline,
            "no head: {:?}",
            String::from_utf8_lossy(&got)
        );
        match s.read(&mut buf) {
            Ok(0) => panic!("closed: {:?}", String::from_utf8_lossy(&got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn preflight_allows_the_sdk_requests_on_the_fallback_routes_only() {
    let g = Server::start(&[]);
    for path in ["/poll", "/sse", "/sse/op", "/poll?sid=1&key=2"] {
        let r = preflight(&g, path, PAGE);
        assert_eq!(r.status, 204, "OPTIONS {path}: {r}");
        readable_by_any_origin(&r, path);
        let methods = r.header("access-control-allow-methods").unwrap_or_default();
        assert!(methods.contains("POST") && methods.contains("GET"), "{r}");
        let headers = r
            .header("access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            headers.contains("authorization") && headers.contains("content-type"),
            "{r}"
        );
        assert!(r.header("access-control-max-age").is_some(), "{r}");
        // 204 has no body, so no Content-Length either (RFC 9110 8.6).
        assert_eq!(r.header("content-length"), None, "{r}");
        assert!(r.body.is_empty());
    }
    // Elsewhere OPTIONS means nothing.
    assert_eq!(preflight(&g, "/ws", PAGE).status, 405);
    assert_eq!(preflight(&g, "/elsewhere", PAGE).status, 404);
}

#[test]
fn every_fallback_answer_and_refusal_is_readable_by_a_page_of_another_origin() {
    let g = Server::start(&[]);
    let json = [("Origin", PAGE), ("Content-Type", "application/json")];
    let opened = http_request(g.ws, "POST", "/poll", &json, b"");
    assert_eq!(opened.status, 200, "{opened}");
    readable_by_any_origin(&opened, "a new long-poll session");
    let unknown = http_request(g.ws, "POST", "/poll?sid=1&key=00", &json, b"[]");
    assert_eq!(unknown.status, 404, "{unknown}");
    readable_by_any_origin(&unknown, "a poll of an unknown session");
    let op = http_request(g.ws, "POST", "/sse/op?sid=1&key=00", &json, b"{}");
    assert_eq!(op.status, 404, "{op}");
    readable_by_any_origin(&op, "an op of an unknown session");
    let head = stream_head(&g, "/sse?channels=news");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin: *"),
        "the event stream: {head}"
    );

    // Refused before a session exists: the page still reads why (401 with its close code).
    let jwt = Server::start(&[
        "--set",
        "auth.mode=jwt",
        "--set",
        "auth.hs256_secret=a-test-secret-of-at-least-32-bytes!",
    ]);
    let refused = http_request(jwt.ws, "POST", "/poll", &json, b"");
    assert_eq!(refused.status, 401, "{refused}");
    readable_by_any_origin(&refused, "a refused session");
    assert_eq!(refused.json()["code"], 4001, "{refused}");
}

#[test]
fn allowed_origins_still_decide_who_may_use_the_fallback_routes() {
    let g = Server::start(&["--set", &format!("server.allowed_origins=[\"{PAGE}\"]")]);
    let r = preflight(&g, "/poll", PAGE);
    assert_eq!(r.status, 204, "{r}");
    for path in ["/poll", "/sse", "/sse/op"] {
        let r = preflight(&g, path, "http://elsewhere.example");
        assert_eq!(r.status, 403, "OPTIONS {path} from another origin: {r}");
    }
    let json = [
        ("Origin", "http://elsewhere.example"),
        ("Content-Type", "application/json"),
    ];
    let r = http_request(g.ws, "POST", "/poll", &json, b"");
    assert_eq!(r.status, 403, "{r}");
}
