//! Upgrade handshake (RFC 6455 §4.2) over raw TCP: the success path and every error path.
//! Contract: errors are an HTTP status with a JSON body, then the server closes the connection.

mod common;

use common::*;
use std::io::Write;
use std::time::{Duration, Instant};

/// Sends `req` on a fresh connection and reads one response.
fn exchange(server: &Server, req: &[u8]) -> (Http, HttpResponse) {
    let mut c = Http::connect(server.ws);
    // The server may answer and close before reading everything (e.g. a huge head): ignore write errors here.
    let _ = c.stream.write_all(req);
    let r = c.read_response(READ_TIMEOUT).unwrap_or_else(|e| {
        panic!(
            "no HTTP response to {:?}: {e}\n{}",
            String::from_utf8_lossy(&req[..req.len().min(300)]),
            server.describe()
        )
    });
    (c, r)
}

/// Asserts an error response: status in `allowed`, a JSON body, and the server closes the connection.
fn expect_error(server: &Server, req: &[u8], allowed: &[u16], ctx: &str) -> HttpResponse {
    let (mut c, r) = exchange(server, req);
    assert!(
        allowed.contains(&r.status),
        "{ctx}: expected status {allowed:?}, got {r}"
    );
    assert!(
        !r.body.is_empty(),
        "{ctx}: error response without a body: {r}"
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{ctx}: error body is not JSON ({e}): {r}"));
    assert!(v.is_object(), "{ctx}: error body is not a JSON object: {r}");
    c.closed_within(Duration::from_secs(3))
        .assert_closed(&format!("{ctx}: after {}", r.status));
    r
}

fn host(server: &Server) -> String {
    server.ws.to_string()
}

fn req(server: &Server, path: &str, omit: &[&str], extra: &[(&str, &str)]) -> Vec<u8> {
    upgrade_request(&host(server), path, SAMPLE_KEY, omit, extra)
}

fn expect_101(server: &Server, request: &[u8], key: &str, ctx: &str) -> Http {
    let (c, r) = exchange(server, request);
    assert_eq!(r.status, 101, "{ctx}: {r}");
    assert!(
        r.header("upgrade")
            .map(|v| v.eq_ignore_ascii_case("websocket"))
            .unwrap_or(false),
        "{ctx}: Upgrade header: {r}"
    );
    assert!(
        r.header("connection")
            .map(|v| v.to_ascii_lowercase().contains("upgrade"))
            .unwrap_or(false),
        "{ctx}: Connection header: {r}"
    );
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some(accept_key(key).as_str()),
        "{ctx}: Sec-WebSocket-Accept: {r}"
    );
    c
}

#[test]
fn valid_upgrade_returns_101_with_accept_key() {
    let s = Server::start(&[]);
    // RFC 6455 sample: key "dGhlIHNhbXBsZSBub25jZQ==" -> accept "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert_eq!(accept_key(SAMPLE_KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let mut c = expect_101(&s, &req(&s, "/ws", &[], &[]), SAMPLE_KEY, "plain upgrade");
    // The first server frame is the welcome (it may have arrived with the 101).
    let bytes = match c.closed_within(Duration::from_secs(2)) {
        PeerEnd::Data(d) => d,
        other => panic!("no welcome frame after the 101: {other:?}"),
    };
    assert!(
        bytes.len() > 2 && bytes[0] == 0x81 && bytes[1] < 126,
        "no short text frame: {bytes:?}"
    );
    let len = bytes[1] as usize;
    assert_eq!(
        bytes.len(),
        2 + len,
        "more than the welcome frame arrived: {bytes:?}"
    );
    check_welcome(std::str::from_utf8(&bytes[2..]).expect("welcome is UTF-8"));
    // Then the connection stays open (no data, no close).
    assert_eq!(
        c.closed_within(Duration::from_millis(300)),
        PeerEnd::StillOpen,
        "connection should stay open after 101"
    );
}

#[test]
fn upgrade_with_query_string_and_header_case_variants() {
    let s = Server::start(&[]);
    let key = new_key();
    let r = upgrade_request(
        &host(&s),
        "/ws?channels=a,b",
        &key,
        &["Upgrade", "Connection"],
        &[("upgrade", "WebSocket"), ("CONNECTION", "UPGRADE")],
    );
    expect_101(&s, &r, &key, "query string + header case");
}

#[test]
fn connection_keep_alive_upgrade_list_is_accepted() {
    let s = Server::start(&[]);
    let key = new_key();
    let r = upgrade_request(
        &host(&s),
        "/ws",
        &key,
        &[],
        &[("Connection", "keep-alive, Upgrade")],
    );
    expect_101(&s, &r, &key, "Connection: keep-alive, Upgrade");
}

#[test]
fn post_is_405() {
    let s = Server::start(&[]);
    let mut r = req(&s, "/ws", &[], &[]);
    r.splice(0..3, b"POST".iter().copied());
    // POST with a zero body length, so the request is complete.
    let text =
        String::from_utf8(r)
            .unwrap()
            .replacen("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n", 1);
    expect_error(&s, text.as_bytes(), &[405], "POST /ws");
}

#[test]
fn http_1_0_is_400() {
    let s = Server::start(&[]);
    let text = String::from_utf8(req(&s, "/ws", &[], &[]))
        .unwrap()
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    expect_error(&s, text.as_bytes(), &[400], "HTTP/1.0 upgrade");
}

#[test]
fn missing_upgrade_header_is_an_error() {
    let s = Server::start(&[]);
    let r = expect_error(
        &s,
        &req(&s, "/ws", &["Upgrade"], &[]),
        &[400, 426],
        "no Upgrade header",
    );
    assert!(r.status >= 400);
    // Upgrade with a value other than websocket
    expect_error(
        &s,
        &req(&s, "/ws", &[], &[("Upgrade", "h2c")]),
        &[400, 426],
        "Upgrade: h2c",
    );
}

#[test]
fn missing_connection_upgrade_is_400() {
    let s = Server::start(&[]);
    expect_error(
        &s,
        &req(&s, "/ws", &["Connection"], &[]),
        &[400],
        "no Connection header",
    );
    expect_error(
        &s,
        &req(&s, "/ws", &[], &[("Connection", "keep-alive")]),
        &[400],
        "Connection: keep-alive only",
    );
}

#[test]
fn version_8_is_426_with_supported_version_header() {
    let s = Server::start(&[]);
    let r = expect_error(
        &s,
        &req(&s, "/ws", &[], &[("Sec-WebSocket-Version", "8")]),
        &[426],
        "version 8",
    );
    assert_eq!(
        r.header("sec-websocket-version").map(|v| v.trim()),
        Some("13"),
        "426 must name version 13: {r}"
    );
}

#[test]
fn missing_or_bad_key_is_400() {
    let s = Server::start(&[]);
    expect_error(
        &s,
        &req(&s, "/ws", &["Sec-WebSocket-Key"], &[]),
        &[400],
        "no key",
    );
    // base64 of 15 bytes
    expect_error(
        &s,
        &req(
            &s,
            "/ws",
            &[],
            &[("Sec-WebSocket-Key", "MTIzNDU2Nzg5MDEyMzQ1")],
        ),
        &[400],
        "15-byte key",
    );
    // base64 of 17 bytes
    expect_error(
        &s,
        &req(
            &s,
            "/ws",
            &[],
            &[("Sec-WebSocket-Key", "MTIzNDU2Nzg5MDEyMzQ1Njc=")],
        ),
        &[400],
        "17-byte key",
    );
    // not base64 at all, 24 chars
    expect_error(
        &s,
        &req(
            &s,
            "/ws",
            &[],
            &[("Sec-WebSocket-Key", "!!!!!!!!!!!!!!!!!!!!!!==")],
        ),
        &[400],
        "non-base64 key",
    );
    // empty key
    expect_error(
        &s,
        &req(&s, "/ws", &[], &[("Sec-WebSocket-Key", "")]),
        &[400],
        "empty key",
    );
}

#[test]
fn unknown_path_is_404() {
    let s = Server::start(&[]);
    expect_error(&s, &req(&s, "/nope", &[], &[]), &[404], "GET /nope");
    expect_error(&s, &req(&s, "/wsx", &[], &[]), &[404], "GET /wsx");
}

#[test]
fn oversized_head_is_431_or_400() {
    let s = Server::start(&[]);
    let pad = "a".repeat(9000);
    let r = req(&s, "/ws", &[], &[("X-Pad", &pad)]);
    assert!(r.len() > 8192);
    expect_error(&s, &r, &[431, 400], "9 KB head");
    // Many small headers over the limit too.
    let many: Vec<(String, String)> = (0..400)
        .map(|i| (format!("X-H{i}"), "b".repeat(20)))
        .collect();
    let many_ref: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = req(&s, "/ws", &[], &many_ref);
    assert!(r.len() > 8192);
    expect_error(&s, &r, &[431, 400], "400 headers");
}

#[test]
fn oversized_head_without_terminator_is_rejected() {
    // A head that never ends: the server must not buffer it forever.
    let s = Server::start(&[]);
    let mut c = Http::connect(s.ws);
    let mut head = b"GET /ws HTTP/1.1\r\nX-Pad: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 20_000));
    let _ = c.stream.write_all(&head);
    match c.read_response(READ_TIMEOUT) {
        Ok(r) => assert!(
            r.status == 431 || r.status == 400,
            "unterminated 20 KB head: {r}"
        ),
        Err(e) => panic!(
            "unterminated 20 KB head: expected 431/400, got {e}\n{}",
            s.describe()
        ),
    }
    c.closed_within(Duration::from_secs(3))
        .assert_closed("after rejecting the head");
}

#[test]
fn garbage_is_400_then_close() {
    let s = Server::start(&[]);
    let garbage = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xde\xad\xbe\xef garbage\r\n\r\n";
    expect_error(&s, garbage, &[400], "TLS-looking garbage");
    expect_error(&s, b"HELLO\r\n\r\n", &[400], "one-word request line");
    expect_error(
        &s,
        b"GET /ws\r\nHost: x\r\n\r\n",
        &[400],
        "request line without version",
    );
}

#[test]
fn handshake_timeout_closes_silent_and_slow_connections() {
    let s = Server::start(&["--set", "server.handshake_timeout=1"]);
    let start = Instant::now();
    let mut silent = Http::connect(s.ws);
    let mut slow = Http::connect(s.ws);
    slow.send(b"GET /ws HTTP/1.1\r\nHost: x\r\n");
    let end_silent = silent.closed_within(Duration::from_secs(7));
    let t_silent = start.elapsed();
    // A silent connection may get nothing or a 408 before the close.
    assert!(
        matches!(end_silent, PeerEnd::Eof | PeerEnd::Reset | PeerEnd::Data(_)),
        "silent connection not closed within 7 s: {end_silent:?}"
    );
    if let PeerEnd::Data(d) = &end_silent {
        let t = String::from_utf8_lossy(d);
        assert!(
            t.starts_with("HTTP/1.1 408") || t.starts_with("HTTP/1.1 400"),
            "silent connection got unexpected bytes: {t:?}"
        );
        let mut rest = silent.closed_within(Duration::from_secs(7));
        if let PeerEnd::Data(_) = rest {
            rest = silent.closed_within(Duration::from_secs(7));
        }
        assert!(
            matches!(rest, PeerEnd::Eof | PeerEnd::Reset),
            "not closed after 408: {rest:?}"
        );
    }
    assert!(
        t_silent >= Duration::from_millis(500),
        "closed after {t_silent:?}: too early for a 1 s handshake timeout"
    );
    let end_slow = slow.closed_within(Duration::from_secs(7));
    assert!(
        matches!(end_slow, PeerEnd::Eof | PeerEnd::Reset | PeerEnd::Data(_)),
        "half-sent head not closed within 7 s: {end_slow:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "timeouts took {:?}",
        start.elapsed()
    );
    // The server still works.
    let key = new_key();
    expect_101(
        &s,
        &upgrade_request(&host(&s), "/ws", &key, &[], &[]),
        &key,
        "after timeouts",
    );
}

#[test]
fn origin_allow_list() {
    let s = Server::start(&["--set", r#"server.allowed_origins=["https://ok.example"]"#]);
    let key = new_key();
    expect_101(
        &s,
        &upgrade_request(
            &host(&s),
            "/ws",
            &key,
            &[],
            &[("Origin", "https://ok.example")],
        ),
        &key,
        "allowed origin",
    );
    expect_error(
        &s,
        &req(&s, "/ws", &[], &[("Origin", "https://evil.example")]),
        &[403],
        "other origin",
    );
    expect_error(
        &s,
        &req(&s, "/ws", &[], &[("Origin", "https://ok.example.evil.com")]),
        &[403],
        "prefix-matching origin",
    );
}

#[test]
fn any_origin_allowed_by_default() {
    let s = Server::start(&[]);
    let key = new_key();
    expect_101(
        &s,
        &upgrade_request(
            &host(&s),
            "/ws",
            &key,
            &[],
            &[("Origin", "https://anything.example")],
        ),
        &key,
        "default any origin",
    );
}

#[test]
fn frame_in_same_packet_as_handshake_is_processed() {
    // Bytes after the head (a client that pipelines its first frame) must not be lost.
    let s = Server::start(&["--echo-path", "/echo"]);
    let mut stream = tcp_connect(s.ws);
    let key = new_key();
    let mut bytes = upgrade_request(&host(&s), "/echo", &key, &[], &[]);
    bytes.extend(masked_frame(true, OP_TEXT, b"early bird"));
    stream.write_all(&bytes).unwrap();
    let mut buf = Vec::new();
    let r = read_http_response(&mut stream, &mut buf, READ_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.describe()));
    assert_eq!(r.status, 101, "{r}");
    let mut ws = RawWs {
        stream,
        buf,
        response: Some(r),
        welcome: None,
    };
    let f = ws
        .next_message(READ_TIMEOUT)
        .unwrap_or_else(|e| panic!("no echo of the pipelined frame: {e}"));
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_TEXT, &b"early bird"[..]),
        "echo: {f}"
    );
}

#[test]
fn server_survives_many_bad_handshakes() {
    let s = Server::start(&[]);
    for i in 0..50 {
        let mut c = Http::connect(s.ws);
        let _ = c
            .stream
            .write_all(format!("BREW /pot{i} HTCPCP/1.0\r\n\r\n").as_bytes());
        let _ = c.read_response(Duration::from_secs(2));
    }
    let key = new_key();
    expect_101(
        &s,
        &upgrade_request(&host(&s), "/ws", &key, &[], &[]),
        &key,
        "after 50 bad handshakes",
    );
}

#[test]
fn over_max_connections_is_503() {
    // docs/PROTOCOL.md: 503 over server.max_connections.
    let s = Server::start(&["--set", "server.max_connections=3"]);
    let held: Vec<RawWs> = (0..3).map(|_| RawWs::connect(s.ws, "/ws")).collect();
    expect_error(
        &s,
        &req(&s, "/ws", &[], &[]),
        &[503],
        "4th connection with max_connections=3",
    );
    drop(held);
    // Room again once they are gone.
    let ok = eventually(Duration::from_secs(3), || {
        RawWs::connect_with(s.ws, "/ws", &[]).ok()
    });
    assert!(
        ok.is_some(),
        "no room after the held connections closed\n{}",
        s.describe()
    );
}
