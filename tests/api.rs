//! The HTTP/1.1 API: publish/broadcast, errors as JSON, body limits, keep-alive, pipelining, API key, health,
//! stats and metrics.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn assert_json_error(r: &HttpResponse, status: u16, ctx: &str) {
    assert_eq!(r.status, status, "{ctx}: {r}");
    let v: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{ctx}: error body is not JSON ({e}): {r}"));
    assert_eq!(v["ok"], json!(false), "{ctx}: {r}");
    assert!(
        v["error"].as_str().map(|e| !e.is_empty()).unwrap_or(false),
        "{ctx}: no error message: {r}"
    );
}

fn assert_ok(r: &HttpResponse, ctx: &str) {
    assert_eq!(r.status, 200, "{ctx}: {r}");
    let v: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{ctx}: body is not JSON ({e}): {r}"));
    assert_eq!(v["ok"], json!(true), "{ctx}: {r}");
}

#[test]
fn publish_and_broadcast_ok() {
    let s = Server::start(&[]);
    let mut sub = RawWs::connect(s.ws, "/ws?channels=doc:42");
    let mut api = Http::connect(s.api);
    let r = api.post_json(
        "/api/publish",
        r#"{"channel":"doc:42","data":{"hello":"world"}}"#,
    );
    assert_ok(&r, "publish channel form");
    assert!(
        r.header("content-type")
            .map(|v| v.contains("json"))
            .unwrap_or(false),
        "Content-Type: {r}"
    );
    assert_eq!(
        sub.expect_text("delivery"),
        r#"{"channel":"doc:42","data":{"hello":"world"}}"#
    );
    let r = api.post_json(
        "/api/publish",
        r#"{"channels":["doc:42","other"],"data":[1,2]}"#,
    );
    assert_ok(&r, "publish channels form");
    assert_eq!(
        sub.expect_text("delivery"),
        r#"{"channel":"doc:42","data":[1,2]}"#
    );
    // Publishing to a channel nobody is on is fine.
    assert_ok(
        &api.post_json("/api/publish", r#"{"channel":"nobody","data":1}"#),
        "publish to an empty channel",
    );
    let r = api.post_json("/api/broadcast", r#"{"data":{"x":1}}"#);
    assert_ok(&r, "broadcast");
    assert_eq!(
        sub.expect_text("broadcast"),
        r#"{"broadcast":true,"data":{"x":1}}"#
    );
    // Whitespace and field order in the request do not matter.
    assert_ok(
        &api.post_json(
            "/api/publish",
            "{ \"data\" : \"s\" ,\n \"channel\" : \"doc:42\" }\n",
        ),
        "reordered fields",
    );
    assert_eq!(
        sub.expect_text("delivery"),
        r#"{"channel":"doc:42","data":"s"}"#
    );
}

#[test]
fn publish_errors_are_400_json() {
    let s = Server::start(&[]);
    let mut api = Http::connect(s.api);
    let cases = [
        ("bad JSON", "{not json"),
        ("truncated JSON", r#"{"channel":"a","data":"#),
        ("not an object", "[1,2]"),
        ("missing channel", r#"{"data":1}"#),
        ("data missing", r#"{"channel":"a"}"#),
        // docs/API.md: `data` missing or null is 400.
        ("data null", r#"{"channel":"a","data":null}"#),
        ("empty channel", r#"{"channel":"","data":1}"#),
        (
            "control char in channel",
            r#"{"channel":"a\u0001b","data":1}"#,
        ),
        ("channel not a string", r#"{"channel":5,"data":1}"#),
        ("channels not a list", r#"{"channels":"a","data":1}"#),
        ("empty body", ""),
    ];
    for (name, body) in cases {
        // Keep-alive: a well-formed request with a bad body does not break the connection, but the server may close
        // after a parse error, so use a fresh connection for each.
        let r = http_request(
            s.api,
            "POST",
            "/api/publish",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_json_error(&r, 400, name);
    }
    let long = "x".repeat(256);
    let r = api.post_json(
        "/api/publish",
        &format!(r#"{{"channel":"{long}","data":1}}"#),
    );
    assert_json_error(&r, 400, "256-byte channel");
    let r = api.post_json("/api/broadcast", r#"{"nodata":1}"#);
    assert_json_error(&r, 400, "broadcast without data");
    // The connection still works after errors in well-formed requests.
    assert_ok(
        &api.post_json("/api/publish", r#"{"channel":"a","data":1}"#),
        "publish after errors",
    );
}

#[test]
fn wrong_method_is_405_and_unknown_path_is_404() {
    let s = Server::start(&[]);
    let mut api = Http::connect(s.api);
    let r = api.get("/api/publish");
    assert_json_error(&r, 405, "GET /api/publish");
    assert!(
        r.header("allow")
            .map(|a| a.contains("POST"))
            .unwrap_or(false),
        "405 should name the allowed method (Allow: POST): {r}"
    );
    assert_json_error(
        &api.request("DELETE", "/api/broadcast", &[], b""),
        405,
        "DELETE /api/broadcast",
    );
    assert_json_error(
        &api.request("POST", "/healthz", &[], b""),
        405,
        "POST /healthz",
    );
    assert_json_error(&api.get("/nope"), 404, "GET /nope");
    assert_json_error(&api.post_json("/api/nope", "{}"), 404, "POST /api/nope");
    assert_ok(
        &api.get("/healthz"),
        "healthz after errors on the same connection",
    );
}

#[test]
fn body_over_max_body_is_413() {
    let s = Server::start(&["--set", "api.max_body=1024"]);
    let ok_body = format!(r#"{{"channel":"a","data":"{}"}}"#, "y".repeat(900));
    assert!(ok_body.len() <= 1024);
    assert_ok(
        &http_request(s.api, "POST", "/api/publish", &[], ok_body.as_bytes()),
        "body under max_body",
    );
    let big = format!(r#"{{"channel":"a","data":"{}"}}"#, "y".repeat(2000));
    let mut c = Http::connect(s.api);
    let req = c.build(
        "POST",
        "/api/publish",
        &[("Content-Type", "application/json")],
        big.as_bytes(),
    );
    let _ = std::io::Write::write_all(&mut c.stream, &req);
    let r = c
        .read_response(READ_TIMEOUT)
        .unwrap_or_else(|e| panic!("413 expected: {e}\n{}", s.describe()));
    assert_json_error(&r, 413, "2 KB body with max_body=1024");
    // Only the announced length matters: a huge Content-Length is refused without waiting for the body.
    let mut c = Http::connect(s.api);
    c.send(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n");
    let r = c
        .read_response(READ_TIMEOUT)
        .unwrap_or_else(|e| panic!("413 for a 1 GB Content-Length: {e}"));
    assert_json_error(&r, 413, "1 GB Content-Length");
    c.closed_within(Duration::from_secs(3))
        .assert_closed("after 413");
}

#[test]
fn keep_alive_100_requests_on_one_connection() {
    let s = Server::start(&[]);
    let mut sub = RawWs::connect(s.ws, "/ws?channels=k");
    let mut api = Http::connect(s.api);
    for i in 0..100 {
        let r = api.post_json("/api/publish", &format!(r#"{{"channel":"k","data":{i}}}"#));
        assert_ok(&r, &format!("request {i}"));
        assert!(
            !r.closes(),
            "request {i}: server asked to close a keep-alive connection: {r}"
        );
    }
    for i in 0..100 {
        assert_eq!(
            sub.expect_text(&format!("message {i}")),
            format!(r#"{{"channel":"k","data":{i}}}"#)
        );
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Server::start(&[]);
    let mut sub = RawWs::connect(s.ws, "/ws?channels=p");
    let mut api = Http::connect(s.api);
    // 10 requests of different kinds in one write.
    let mut bytes = Vec::new();
    let mut expect = Vec::new();
    for i in 0..10 {
        match i % 5 {
            0 | 3 => {
                bytes.extend(api.build(
                    "POST",
                    "/api/publish",
                    &[],
                    format!(r#"{{"channel":"p","data":{i}}}"#).as_bytes(),
                ));
                expect.push(200);
            }
            1 => {
                bytes.extend(api.build("GET", "/healthz", &[], b""));
                expect.push(200);
            }
            2 => {
                bytes.extend(api.build("GET", "/nope", &[], b""));
                expect.push(404);
            }
            _ => {
                bytes.extend(api.build("POST", "/api/publish", &[], br#"{"channel":"p"}"#));
                expect.push(400);
            }
        }
    }
    api.send(&bytes);
    let mut got = Vec::new();
    for i in 0..10 {
        let r = api
            .read_response(READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("pipelined response {i} (got {got:?}): {e}"));
        got.push(r.status);
    }
    assert_eq!(got, expect, "statuses of 10 pipelined requests");
    // The publishes happened in request order.
    for i in [0, 3, 5, 8] {
        assert_eq!(
            sub.expect_text("pipelined publish"),
            format!(r#"{{"channel":"p","data":{i}}}"#)
        );
    }
    // Requests split at odd places also work.
    let req = api.build(
        "POST",
        "/api/publish",
        &[],
        br#"{"channel":"p","data":"split"}"#,
    );
    for chunk in req.chunks(7) {
        api.send(chunk);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_ok(
        &api.read_response(READ_TIMEOUT).expect("split request"),
        "split request",
    );
    assert_eq!(
        sub.expect_text("split publish"),
        r#"{"channel":"p","data":"split"}"#
    );
}

#[test]
fn api_key_is_required_when_set() {
    let s = Server::start(&["--set", "api.api_key=secret"]);
    let body = br#"{"channel":"a","data":1}"#;
    assert_json_error(
        &http_request(s.api, "POST", "/api/publish", &[], body),
        401,
        "no Authorization",
    );
    assert_json_error(
        &http_request(
            s.api,
            "POST",
            "/api/publish",
            &[("Authorization", "apikey wrong")],
            body,
        ),
        401,
        "wrong key",
    );
    assert_json_error(
        &http_request(
            s.api,
            "POST",
            "/api/publish",
            &[("Authorization", "apikey secrets")],
            body,
        ),
        401,
        "key with suffix",
    );
    assert_json_error(
        &http_request(
            s.api,
            "POST",
            "/api/publish",
            &[("Authorization", "Bearer secret")],
            body,
        ),
        401,
        "wrong scheme",
    );
    assert_ok(
        &http_request(
            s.api,
            "POST",
            "/api/publish",
            &[("Authorization", "apikey secret")],
            body,
        ),
        "right key",
    );
    assert_json_error(
        &http_request(s.api, "GET", "/api/stats", &[], b""),
        401,
        "stats without key",
    );
    assert_eq!(
        http_request(
            s.api,
            "GET",
            "/api/stats",
            &[("Authorization", "apikey secret")],
            b""
        )
        .status,
        200
    );
    assert_eq!(
        http_get(s.api, "/healthz").status,
        200,
        "healthz needs no key"
    );
}

#[test]
fn healthz_is_200_ok() {
    let s = Server::start(&[]);
    let r = http_get(s.api, "/healthz");
    assert_ok(&r, "healthz");
}

fn stats_connections(v: &Value) -> Option<u64> {
    v.pointer("/totals/connections")
        .and_then(|c| c.as_u64())
        .or_else(|| v.get("connections").and_then(|c| c.as_u64()))
}

#[test]
fn stats_and_metrics_count_connections() {
    let s = Server::start(&[]);
    let mut clients: Vec<RawWs> = (0..7)
        .map(|i| RawWs::connect(s.ws, &format!("/ws?channels=s{}", i % 3)))
        .collect();
    let mut api = Http::connect(s.api);
    let count = |api: &mut Http| -> (Option<u64>, Option<f64>, HttpResponse, String) {
        let r = api.get("/api/stats");
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let m = api.get("/metrics");
        (
            stats_connections(&v),
            metric_value(&m.text(), "wsgate_connections"),
            r,
            m.text(),
        )
    };
    let seen = eventually(Duration::from_secs(3), || {
        let (st, me, _, _) = count(&mut api);
        (st == Some(7) && me == Some(7.0)).then_some(())
    });
    if seen.is_none() {
        let (st, me, r, m) = count(&mut api);
        panic!("with 7 clients: stats totals.connections={st:?}, metrics wsgate_connections={me:?}\nstats: {r}\nmetrics:\n{m}");
    }
    // Close 3 (one cleanly, two abruptly): the counts follow.
    clients[0].send_close(1000, "");
    let _ = clients[0].expect_close("close");
    clients.remove(0);
    clients.truncate(4);
    let seen = eventually(Duration::from_secs(3), || {
        let (st, me, _, _) = count(&mut api);
        (st == Some(4) && me == Some(4.0)).then_some(())
    });
    if seen.is_none() {
        let (st, me, r, m) = count(&mut api);
        panic!(
            "with 4 clients: stats connections={st:?}, metrics={me:?}\nstats: {r}\nmetrics:\n{m}"
        );
    }
    let (_, _, r, m) = count(&mut api);
    assert!(r.json().is_object(), "stats is a JSON object: {r}");
    assert_eq!(
        metric_type(&m, "wsgate_connections").as_deref(),
        Some("gauge"),
        "wsgate_connections should be a gauge:\n{m}"
    );
    for counter in [
        "wsgate_messages_out_total",
        "wsgate_slow_consumer_closes_total",
    ] {
        assert_eq!(
            metric_type(&m, counter).as_deref(),
            Some("counter"),
            "{counter} should be a counter:\n{m}"
        );
        assert!(
            metric_value(&m, counter).is_some(),
            "{counter} has no sample:\n{m}"
        );
    }
}

#[test]
fn messages_out_counter_counts_deliveries() {
    let s = Server::start(&[]);
    let mut subs: Vec<RawWs> = (0..5)
        .map(|_| RawWs::connect(s.ws, "/ws?channels=mo"))
        .collect();
    let mut api = Http::connect(s.api);
    let before =
        metric_value(&api.get("/metrics").text(), "wsgate_messages_out_total").unwrap_or(0.0);
    for i in 0..10 {
        publish(&mut api, "mo", &i.to_string());
    }
    for c in subs.iter_mut() {
        for i in 0..10 {
            assert_eq!(
                c.expect_text("delivery"),
                format!(r#"{{"channel":"mo","data":{i}}}"#)
            );
        }
    }
    let ok = eventually(Duration::from_secs(3), || {
        let after =
            metric_value(&api.get("/metrics").text(), "wsgate_messages_out_total").unwrap_or(0.0);
        (after - before >= 50.0).then_some(())
    });
    assert!(
        ok.is_some(),
        "wsgate_messages_out_total did not grow by 50:\n{}",
        api.get("/metrics").text()
    );
}

#[test]
fn oversized_api_head_is_rejected() {
    let s = Server::start(&[]);
    let mut c = Http::connect(s.api);
    let pad = "a".repeat(40_000);
    let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n");
    let _ = std::io::Write::write_all(&mut c.stream, req.as_bytes());
    let r = c
        .read_response(READ_TIMEOUT)
        .unwrap_or_else(|e| panic!("huge API head: {e}"));
    assert!(r.status == 431 || r.status == 400, "huge API head: {r}");
    assert_eq!(http_get(s.api, "/healthz").status, 200);
}

#[test]
fn chunked_body_is_411() {
    // docs/API.md: request bodies need Content-Length; Transfer-Encoding gets 411 and the connection is closed.
    let s = Server::start(&[]);
    let mut c = Http::connect(s.api);
    c.send(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n18\r\n{\"channel\":\"a\",\"data\":1}\r\n0\r\n\r\n");
    let r = c
        .read_response(READ_TIMEOUT)
        .unwrap_or_else(|e| panic!("chunked publish: {e}"));
    assert_json_error(&r, 411, "chunked body");
    c.closed_within(Duration::from_secs(3))
        .assert_closed("after 411");
}

/// A client that pipelines requests but never reads its responses is throttled (the server stops reading it)
/// instead of having its responses buffered without bound; it gets every response once it reads.
#[test]
fn pipelining_client_that_does_not_read_is_throttled() {
    use std::io::{Read, Write};
    let s = Server::start(&[]);
    let rss_before = s.rss_kb().unwrap_or(0);
    // ~4 KB per request so 40k of them (160 MB) are far beyond what socket buffers absorb.
    let request = format!(
        "GET /api/stats HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(4000)
    );
    let request = request.as_bytes();
    let mut stream = tcp_connect(s.api);
    stream
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // Each /api/stats response is several hundred bytes; 40k of them would be >20 MB if buffered.
    let mut sent = 0usize;
    let mut blocked = false;
    let started = Instant::now();
    while sent < 40_000 && started.elapsed() < Duration::from_secs(20) {
        match stream.write(request) {
            Ok(n) if n == request.len() => sent += 1,
            Ok(_) | Err(_) => {
                blocked = true; // the server stopped reading us
                break;
            }
        }
    }
    assert!(
        blocked,
        "the server kept reading {sent} requests without us reading any response"
    );
    // Others are unaffected.
    assert_eq!(http_get(s.api, "/healthz").status, 200);
    let rss_after = s.rss_kb().unwrap_or(0);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "server RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Reading the responses lets the server continue; count complete status lines until it goes quiet.
    stream
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut responses = 0;
    let mut tail = Vec::new();
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        responses += tail.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
        let keep = tail.len().min(14);
        tail.drain(..tail.len() - keep);
    }
    assert!(
        responses >= sent.saturating_sub(1) && responses > 1000,
        "{responses} responses for {sent} requests"
    );
}

/// Attack: hold every API connection slot with requests that never finish (a byte now and then). Each such request
/// gets 408 once `api.request_timeout` (10 s by default) has passed since its first byte, however often bytes
/// trickle in. Meanwhile a client beyond the slot limit still gets `/healthz` and `/metrics`, and a clear 503 for
/// anything else (docs/API.md).
#[test]
fn slot_holders_get_408_and_health_answers_while_slots_are_full() {
    use std::io::Write;
    const SLOTS: usize = 1024;
    assert!(
        raise_nofile(4096) >= 2 * SLOTS as u64,
        "need file descriptors"
    );
    let s = Server::start(&[]);
    let started = Instant::now();
    let mut holders: Vec<Http> = (0..SLOTS).map(|_| Http::connect(s.api)).collect();
    for h in holders.iter_mut() {
        h.send(b"G");
    }
    // Idle connections beyond the limit as well: they must not lock out a health probe either.
    let extra: Vec<Http> = (0..100).map(|_| Http::connect(s.api)).collect();
    std::thread::sleep(Duration::from_millis(500));

    for path in ["/healthz", "/metrics"] {
        let r = http_get(s.api, path);
        assert_eq!(r.status, 200, "{path} with every API slot held: {r}");
    }
    let mut c = Http::connect(s.api);
    let r = c.post_json("/api/publish", r#"{"channel":"a","data":1}"#);
    assert_json_error(&r, 503, "publish with every API slot held");
    c.closed_within(Duration::from_secs(3))
        .assert_closed("after 503 for a connection beyond the limit");

    // A byte every few seconds does not extend the deadline of the request.
    std::thread::sleep(Duration::from_secs(4));
    for h in holders.iter_mut() {
        let _ = h.stream.write_all(b"E");
    }
    let h = &mut holders[0];
    let r = h
        .read_response(Duration::from_secs(12))
        .unwrap_or_else(|e| panic!("slot holder after {:?}: {e}", started.elapsed()));
    assert_json_error(&r, 408, "request not finished within api.request_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(14),
        "408 came after {:?}",
        started.elapsed()
    );
    h.closed_within(Duration::from_secs(3))
        .assert_closed("after 408");
    drop(extra);
    // The slots are free again.
    let ok = eventually(Duration::from_secs(5), || {
        let mut api = Http::connect(s.api);
        let r = api.post_json("/api/publish", r#"{"channel":"a","data":1}"#);
        (r.status == 200).then_some(())
    });
    assert!(
        ok.is_some(),
        "publish after the slot holders were timed out"
    );
}

#[test]
fn request_and_idle_timeouts_are_configurable() {
    let s = Server::start(&[
        "--set",
        "api.request_timeout=1",
        "--set",
        "api.idle_timeout=2",
    ]);
    // A head that never ends.
    let mut c = Http::connect(s.api);
    c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
    let r = c
        .read_response(Duration::from_secs(4))
        .unwrap_or_else(|e| panic!("unfinished head: {e}"));
    assert_json_error(&r, 408, "unfinished head");
    // A body shorter than its Content-Length.
    let mut c = Http::connect(s.api);
    c.send(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"chan");
    let r = c
        .read_response(Duration::from_secs(4))
        .unwrap_or_else(|e| panic!("unfinished body: {e}"));
    assert_json_error(&r, 408, "unfinished body");
    c.closed_within(Duration::from_secs(3))
        .assert_closed("after 408");
    // Keep-alive: an idle connection stays open until api.idle_timeout, then is closed without a response.
    let mut c = Http::connect(s.api);
    assert_eq!(c.get("/healthz").status, 200);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(c.get("/healthz").status, 200, "idle below api.idle_timeout");
    let t = Instant::now();
    c.closed_within(Duration::from_secs(5))
        .assert_closed("idle keep-alive connection");
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}",
        t.elapsed()
    );
}

/// Attack: one connection sends a 1 MiB body and then ~1 MB of pipelined `GET /metrics` without reading. The
/// server must neither read all of it at once nor queue a response for every request: memory stays bounded.
#[test]
fn pipelined_responses_are_bounded_per_connection() {
    use std::io::{Read, Write};
    let s = Server::start(&[]);
    let rss_before = s.rss_kb().unwrap_or(0);
    let prefix = r#"{"channel":"nobody","data":""#;
    let suffix = r#""}"#;
    let body = format!(
        "{prefix}{}{suffix}",
        "x".repeat((1 << 20) - prefix.len() - suffix.len())
    );
    let mut bytes = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let gets = (1 << 20) / get.len();
    for _ in 0..gets {
        bytes.extend_from_slice(get);
    }
    let mut stream = tcp_connect(s.api);
    let mut writer = stream.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
    });
    let mut peak = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        peak = peak.max(s.rss_kb().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        peak < rss_before + 32 * 1024,
        "server RSS grew from {rss_before} KiB to {peak} KiB"
    );
    // Reading lets the server go on: the publish is answered, then the metrics.
    stream
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut seen = Vec::new();
    let t = Instant::now();
    let mut responses = 0;
    while t.elapsed() < Duration::from_secs(5) && responses < 100 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        responses = seen.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    }
    assert!(responses >= 100, "{responses} responses after reading");
    drop(stream);
    let _ = sender.join();
    assert_eq!(http_get(s.api, "/healthz").status, 200);
}

/// RFC 9110 §8.6: Content-Length = 1*DIGIT, one value. Duplicates (repeated lines or a list) are refused even when
/// identical, a number too large for the body limit is 413.
#[test]
fn content_length_is_strict() {
    let s = Server::start(&[]);
    let body = r#"{"channel":"a","data":1}"#; // 24 bytes
    for (value, status) in [
        ("+24", 400),
        ("-24", 400),
        ("0x18", 400),
        ("24a", 400),
        ("2 4", 400),
        ("", 400),
        ("24, 24", 400),
        ("24,25", 400),
        ("99999999999999999999999999", 413),
    ] {
        let mut c = Http::connect(s.api);
        c.send(
            format!(
                "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n{body}"
            )
            .as_bytes(),
        );
        let r = c
            .read_response(READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("Content-Length: {value}: {e}"));
        assert_json_error(&r, status, &format!("Content-Length: {value}"));
        c.closed_within(Duration::from_secs(3))
            .assert_closed(&format!("after Content-Length: {value}"));
    }
    for (a, b) in [("24", "24"), ("24", "25")] {
        let mut c = Http::connect(s.api);
        c.send(
            format!("POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {a}\r\nContent-Length: {b}\r\n\r\n{body}")
                .as_bytes(),
        );
        let r = c
            .read_response(READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("Content-Length twice ({a}, {b}): {e}"));
        assert_json_error(&r, 400, &format!("Content-Length twice ({a}, {b})"));
    }
    // Leading zeros and optional whitespace around the value are fine.
    let mut c = Http::connect(s.api);
    c.send(
        format!("POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: \t0024 \r\n\r\n{body}")
            .as_bytes(),
    );
    let r = c.read_response(READ_TIMEOUT).unwrap();
    assert_ok(&r, "Content-Length: 0024 with whitespace");
}
