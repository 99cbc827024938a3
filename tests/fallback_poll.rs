//! HTTP long-poll as a fallback transport (docs/PROTOCOL.md "Fallback transports"), black-box over raw sockets:
//! opening a session, polls answered at once / when a message comes / empty at the timeout, ops in a poll, a
//! second poll ending the first, session expiry, polls crossing reactors, hostile polls, and the slow-consumer limit.

mod common;

use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn post(addr: SocketAddr, path: &str, body: &str) -> HttpResponse {
    let mut c = Http::connect(addr);
    let req = c.build(
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    c.send(&req);
    c.read_response(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Opens a session: (sid, key, first messages).
fn open(addr: SocketAddr, query: &str) -> (String, String, Vec<Value>) {
    let r = post(addr, &format!("/poll{query}"), "");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let msgs: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
    let w = &msgs[0];
    assert_eq!(w["type"], "welcome", "{r}");
    let key = w["key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 32);
    (w["sid"].as_str().unwrap().to_string(), key, msgs)
}

fn poll(addr: SocketAddr, sid: &str, key: &str, ops: &str) -> (u16, Vec<Value>, Duration) {
    let started = Instant::now();
    let r = post(addr, &format!("/poll?sid={sid}&key={key}"), ops);
    let msgs = if r.status == 200 {
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{r}: {e}"))
    } else {
        Vec::new()
    };
    (r.status, msgs, started.elapsed())
}

/// The session ended: its poll gets 404 (counted), and nothing of it is left open.
fn assert_session_gone(s: &Server, sid: &str, key: &str) {
    let (status, _, _) = poll(s.ws, sid, key, "[]");
    assert_eq!(status, 404);
    s.wait_stat(
        "/sessions/fallback_unknown_session_total",
        1,
        Duration::from_secs(2),
    );
    assert_eq!(s.stat("/totals/connections"), 0);
}

#[test]
fn poll_session_open_wait_timeout_ops_and_second_poll() {
    let s = Server::start(&["--set", "transport.poll_timeout=1"]);
    let mut api = Http::connect(s.api);
    let (sid, key, _) = open(s.ws, "?channels=news");

    // Nothing queued: the poll waits its timeout, then gets [].
    let (status, msgs, took) = poll(s.ws, &sid, &key, "[]");
    assert_eq!((status, msgs.len()), (200, 0));
    assert!(took >= Duration::from_millis(900), "{took:?}");

    // Queued before the poll: answered at once, in order.
    publish(&mut api, "news", "1");
    publish(&mut api, "news", "2");
    let (_, msgs, took) = poll(s.ws, &sid, &key, "");
    let data: Vec<&Value> = msgs.iter().map(|m| &m["data"]).collect();
    assert_eq!(data, [&Value::from(1), &Value::from(2)]);
    assert!(took < Duration::from_millis(800), "{took:?}");

    // A waiting poll is answered when a message comes.
    let addr = s.ws;
    let (sid2, key2) = (sid.clone(), key.clone());
    let waiting = std::thread::spawn(move || poll(addr, &sid2, &key2, "[]"));
    std::thread::sleep(Duration::from_millis(300));
    publish(&mut api, "news", "3");
    let (status, msgs, took) = waiting.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["data"], 3);
    assert!(took < Duration::from_millis(900), "{took:?}");

    // Ops in a poll: their replies come in its answer.
    let (_, msgs, _) = poll(
        s.ws,
        &sid,
        &key,
        r#"[{"op":"ping","id":5},{"op":"subscribe","channels":["more"],"id":6}]"#,
    );
    assert_eq!(msgs[0]["type"], "pong", "{msgs:?}");
    assert_eq!(msgs[0]["id"], 5);
    assert!(msgs.iter().any(|m| m["id"] == 6), "{msgs:?}");

    // A second poll ends the first with [].
    let (sid2, key2) = (sid.clone(), key.clone());
    let first = std::thread::spawn(move || poll(addr, &sid2, &key2, "[]"));
    std::thread::sleep(Duration::from_millis(200));
    let (sid2, key2) = (sid.clone(), key.clone());
    let second = std::thread::spawn(move || poll(addr, &sid2, &key2, "[]"));
    let (status, msgs, took) = first.join().unwrap();
    assert_eq!((status, msgs.len()), (200, 0));
    assert!(
        took < Duration::from_millis(900),
        "ended by the second: {took:?}"
    );
    publish(&mut api, "more", r#""m""#);
    let (_, msgs, _) = second.join().unwrap();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["channel"], "more");
}

#[test]
fn an_unpolled_session_expires() {
    let s = Server::start(&[
        "--set",
        "transport.session_ttl=5",
        "--set",
        "transport.poll_timeout=1",
    ]);
    let (sid, key, _) = open(s.ws, "");
    // Counters are published at the end of the loop iteration that answered.
    s.wait_stat("/totals/connections", 1, Duration::from_secs(2));
    assert_eq!(s.stat("/sessions/poll_sessions"), 1);
    std::thread::sleep(Duration::from_millis(6500));
    assert_session_gone(&s, &sid, &key);
    assert_eq!(s.stat("/sessions/poll_sessions"), 0);
}

#[test]
fn polls_reach_sessions_on_every_reactor() {
    let s = Server::start(&[]);
    // Sessions on both reactors (SO_REUSEPORT picks one per connection), so that polls cross reactors.
    let mut sessions = Vec::new();
    while sessions.len() < 6
        || s.stat("/reactors/0/connections") == 0
        || s.stat("/reactors/1/connections") == 0
    {
        assert!(sessions.len() < 40, "every session on one reactor");
        let (sid, key, _) = open(s.ws, "");
        sessions.push((sid, key));
    }
    for round in 0..3 {
        for (i, (sid, key)) in sessions.iter().enumerate() {
            let id = round * 100 + i;
            let (status, msgs, _) =
                poll(s.ws, sid, key, &format!(r#"[{{"op":"ping","id":{id}}}]"#));
            assert_eq!(status, 200);
            assert_eq!(msgs.len(), 1, "{msgs:?}");
            assert_eq!(msgs[0]["id"], id);
        }
    }
}

#[test]
fn hostile_polls_get_clear_errors() {
    let s = Server::start(&["--set", "ws.max_message_size=1024"]);
    let (sid, key, _) = open(s.ws, "?channels=a");
    let wrong = "f".repeat(32);
    let r = post(s.ws, &format!("/poll?sid={sid}&key={wrong}"), "[]");
    assert_eq!(r.status, 404, "{r}");
    assert_eq!(r.json()["ok"], false);
    let r = post(s.ws, &format!("/poll?sid=99&key={key}"), "[]");
    assert_eq!(r.status, 404, "{r}");
    for bad in ["{}", "[1]", "nope", "[{\"op\":\"ping\"}"] {
        let r = post(s.ws, &format!("/poll?sid={sid}&key={key}"), bad);
        assert_eq!(r.status, 400, "{bad}: {r}");
    }
    let r = post(
        s.ws,
        &format!("/poll?sid={sid}&key={key}"),
        &format!("[\"{}\"]", "x".repeat(2000)),
    );
    assert_eq!(r.status, 413, "{r}");
    let r = http_get(s.ws, "/poll");
    assert_eq!(r.status, 405, "{r}");
    let r = post(s.ws, "/poll?channels=%zz", "");
    assert_eq!(r.status, 400, "{r}");
    // The session is unharmed.
    let (status, msgs, _) = poll(s.ws, &sid, &key, r#"[{"op":"ping","id":1}]"#);
    assert_eq!(status, 200);
    assert_eq!(msgs[0]["id"], 1);
}

#[test]
fn an_unpolled_session_past_the_outbound_limit_is_ended() {
    let s = Server::start(&["--set", "ws.max_outbound_bytes=65536"]);
    let (sid, key, _) = open(s.ws, "?channels=flood");
    let mut api = Http::connect(s.api);
    let big = format!("\"{}\"", "z".repeat(16000));
    for _ in 0..8 {
        publish(&mut api, "flood", &big);
    }
    s.wait_stat(
        "/totals/slow_consumer_closes_total",
        1,
        Duration::from_secs(5),
    );
    assert_session_gone(&s, &sid, &key);
}

#[test]
fn fallback_sessions_take_tokens_and_end_when_they_expire() {
    let s = Server::start(&[&JWT_ARGS[..], &["--set", "auth.leeway=0"]].concat());
    let r = post(s.ws, "/poll", "");
    assert_eq!(r.status, 401, "{r}");
    assert_eq!(r.json()["code"], 4001);
    let r = http_get(s.ws, "/sse?token=bad");
    assert_eq!(r.status, 401, "{r}");

    let token = hs256(&serde_json::json!({"sub": "u1", "exp": unix_now() + 2}));
    let mut c = Http::connect(s.ws);
    let bearer = format!("Bearer {token}");
    let r = c.request("POST", "/poll", &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 200, "{r}");
    let msgs: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(msgs[0]["user"], "u1", "{msgs:?}");
    let (sid, key) = (
        msgs[0]["sid"].as_str().unwrap().to_string(),
        msgs[0]["key"].as_str().unwrap().to_string(),
    );
    // The first answer has the replay of the user's missed messages (none); a poll waiting when the token
    // expires gets the session's close as its last message.
    let started = Instant::now();
    let last = loop {
        let (status, msgs, _) = poll(s.ws, &sid, &key, "[]");
        assert_eq!(status, 200);
        if let Some(close) = msgs.iter().find(|m| m["type"] == "close") {
            break close.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no close: {msgs:?}"
        );
    };
    assert_eq!(last["code"], 4001, "{last}");
    let (status, _, _) = poll(s.ws, &sid, &key, "[]");
    assert_eq!(status, 404);
}
