//! Server-sent events as a fallback transport (docs/PROTOCOL.md "Fallback transports"), black-box over raw sockets:
//! the stream's welcome with its session key, publications with `id:` positions, ops posted on other connections
//! (and other reactors), `Last-Event-ID` resume, hostile requests on the op route, the slow-consumer limit, and the
//! demo page routes.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[[channels.namespace]]
prefix = "doc:"
history_size = 100
recover = true
"#;

fn start(extra: &[&str]) -> Server {
    let dir = temp_dir("fallback-sse");
    let path = dir.join("config.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let path = path.to_str().unwrap().to_string();
    let mut args = vec!["--config", path.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// One event of the stream.
#[derive(Debug)]
struct Event {
    id: Option<String>,
    name: Option<String>,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{self:?}: {e}"))
    }
}

/// A raw SSE client: the response head checked, then events parsed as they arrive (comments counted).
struct Sse {
    stream: TcpStream,
    buf: Vec<u8>,
    comments: usize,
}

impl Sse {
    fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        Sse::open_on(tcp_connect(addr), addr, path, headers)
    }

    fn open_on(stream: TcpStream, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut all = vec![("Accept", "text/event-stream")];
        all.extend_from_slice(headers);
        let mut s = Sse {
            stream,
            buf: Vec::new(),
            comments: 0,
        };
        let req = build_request(&addr.to_string(), "GET", path, &all, b"");
        s.stream.write_all(&req).unwrap();
        let head_end = loop {
            if let Some(i) = s.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                s.fill(Duration::from_secs(5)),
                "no response head: {:?}",
                s.text()
            );
        };
        let head = String::from_utf8_lossy(&s.buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("content-type: text/event-stream"), "{head}");
        assert!(lower.contains("cache-control: no-store"), "{head}");
        s.buf.drain(..head_end);
        s
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).to_string()
    }

    /// Reads more bytes; false on EOF or timeout.
    fn fill(&mut self, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next event (comments skipped), or None at EOF / after `timeout`.
    fn next(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.buf[..end].to_vec()).expect("UTF-8 events");
                self.buf.drain(..end + 2);
                let mut ev = Event {
                    id: None,
                    name: None,
                    data: String::new(),
                };
                let mut data_lines = Vec::new();
                for line in block.split('\n') {
                    if line.starts_with(':') {
                        continue;
                    }
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    match field {
                        "id" => ev.id = Some(value.to_string()),
                        "event" => ev.name = Some(value.to_string()),
                        "data" => data_lines.push(value.to_string()),
                        other => panic!("unexpected field {other:?} in {block:?}"),
                    }
                }
                if data_lines.is_empty() && ev.name.is_none() {
                    self.comments += 1;
                    continue;
                }
                ev.data = data_lines.join("\n");
                return Some(ev);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.fill(left) {
                return None;
            }
        }
    }

    /// The next event that is not a heartbeat or pong reply matching `pred`, skipping others.
    fn until(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(ev) if pred(&ev) => return ev,
                Some(_) => continue,
                None => panic!("no {what} on the stream (left: {:?})", self.text()),
            }
        }
    }

    /// The welcome event: (sid, key).
    fn welcome(&mut self) -> (String, String) {
        let ev = self.next(Duration::from_secs(5)).expect("welcome event");
        let w = ev.json();
        assert_eq!(w["type"], "welcome", "{ev:?}");
        let key = w["key"].as_str().expect("key in the welcome").to_string();
        assert_eq!(key.len(), 32, "{w}");
        assert!(key
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        (w["sid"].as_str().unwrap().to_string(), key)
    }
}

fn post_op(addr: SocketAddr, sid: &str, key: &str, op: &str) -> HttpResponse {
    http_request(
        addr,
        "POST",
        &format!("/sse/op?sid={sid}&key={key}"),
        &[("Content-Type", "application/json")],
        op.as_bytes(),
    )
}

#[test]
fn sse_session_welcome_publications_ops_and_resume() {
    let s = start(&[]);
    let mut api = Http::connect(s.api);
    let mut sse = Sse::open(s.ws, "/sse?channels=doc:1", &[]);
    let (sid, key) = sse.welcome();

    publish(&mut api, "doc:1", r#"{"n":1}"#);
    let first = sse.until("publication", |e| e.data.contains("\"data\""));
    let p = first.json();
    assert_eq!(p["data"]["n"], 1);
    let epoch = p["epoch"].as_str().unwrap().to_string();
    assert_eq!(first.id.as_deref(), Some(&*format!("doc:1:1:{epoch}")));

    // An op on another connection: accepted, its reply on the stream.
    let r = post_op(s.ws, &sid, &key, r#"{"op":"ping","id":7}"#);
    assert_eq!(r.status, 202, "{r}");
    assert_eq!(r.json(), serde_json::json!({"ok": true}));
    let pong = sse.until("pong", |e| e.data.contains("pong")).json();
    assert_eq!(pong["id"], 7);

    // Subscribing through an op: publications of the new channel follow, pretty-printed JSON included.
    let r = post_op(
        s.ws,
        &sid,
        &key,
        r#"{"op":"subscribe","channels":["news"],"id":8}"#,
    );
    assert_eq!(r.status, 202, "{r}");
    sse.until("subscribe reply", |e| e.data.contains("\"id\":8"));
    let mut body = Vec::new();
    body.extend_from_slice(b"{\"channel\":\"news\",\"data\":{\n  \"multi\": \"line\"\n}}");
    let r = api.post_json("/api/publish", std::str::from_utf8(&body).unwrap());
    assert_eq!(r.status, 200, "{r}");
    let news = sse.until("news", |e| e.data.contains("\"news\""));
    assert_eq!(news.json()["data"]["multi"], "line");
    assert!(news.id.is_none(), "no history, no position: {news:?}");

    // Resume: two publications while away, then a reconnect with Last-Event-ID gets exactly those (an EventSource
    // repeats its first URL: the id supersedes the URL's older recover= position).
    drop(sse);
    publish(&mut api, "doc:1", r#"{"n":2}"#);
    publish(&mut api, "doc:1", r#"{"n":3}"#);
    let last = first.id.unwrap();
    let url = format!("/sse?channels=doc:1&recover=doc:1:0:{epoch}");
    let mut again = Sse::open(s.ws, &url, &[("Last-Event-ID", &last)]);
    let (sid2, _) = again.welcome();
    assert_ne!(sid2, sid);
    let mut got = Vec::new();
    while got.len() < 2 {
        let ev = again.until("recovered publication", |e| e.data.contains("\"data\""));
        got.push((ev.json()["data"]["n"].as_u64().unwrap(), ev.id.unwrap()));
    }
    assert_eq!(
        got,
        vec![
            (2, format!("doc:1:2:{epoch}")),
            (3, format!("doc:1:3:{epoch}"))
        ]
    );
    // The ended session's key no longer opens anything.
    let r = post_op(s.ws, &sid, &key, r#"{"op":"ping"}"#);
    assert_eq!(r.status, 404, "{r}");
}

#[test]
fn ops_reach_sessions_on_every_reactor() {
    // Two reactors: SO_REUSEPORT spreads the streams and the op requests over both, so ops cross reactors.
    let s = start(&[]);
    let mut streams = Vec::new();
    while streams.len() < 6
        || s.stat("/reactors/0/connections") == 0
        || s.stat("/reactors/1/connections") == 0
    {
        assert!(streams.len() < 40, "every stream on one reactor");
        let mut sse = Sse::open(s.ws, "/sse", &[]);
        let (sid, key) = sse.welcome();
        streams.push((sse, sid, key));
    }
    for round in 0..4 {
        for (i, (_, sid, key)) in streams.iter().enumerate() {
            let op = format!(r#"{{"op":"ping","id":{}}}"#, round * 100 + i);
            let r = post_op(s.ws, sid, key, &op);
            assert_eq!(r.status, 202, "{r}");
        }
    }
    for (i, (sse, _, _)) in streams.iter_mut().enumerate() {
        for round in 0..4 {
            let want = (round * 100 + i) as u64;
            let pong = sse.until("pong", |e| e.data.contains("pong")).json();
            assert_eq!(pong["id"], want, "stream {i}");
        }
    }
}

#[test]
fn hostile_op_requests_get_clear_errors_and_hurt_nobody() {
    let s = start(&[
        "--set",
        "ws.max_message_size=1024",
        "--set",
        "server.handshake_timeout=1",
    ]);
    let mut api = Http::connect(s.api);
    let mut sse = Sse::open(s.ws, "/sse?channels=doc:h", &[]);
    let (sid, key) = sse.welcome();
    let wrong = "0".repeat(32);

    let r = post_op(s.ws, &sid, &wrong, r#"{"op":"ping"}"#);
    assert_eq!(r.status, 404, "wrong key: {r}");
    assert_eq!(r.json()["ok"], false);
    assert!(r.json()["error"].as_str().unwrap().contains("session"));
    let r = post_op(s.ws, "12345", &key, r#"{"op":"ping"}"#);
    assert_eq!(r.status, 404, "unknown sid: {r}");
    let r = post_op(s.ws, "not-a-number", &key, r#"{"op":"ping"}"#);
    assert_eq!(r.status, 404, "bad sid: {r}");
    let r = post_op(s.ws, &sid, &key, "not json");
    assert_eq!(r.status, 400, "bad body: {r}");
    assert_eq!(r.json()["ok"], false);
    let r = post_op(
        s.ws,
        &sid,
        &key,
        &format!(r#"{{"op":"msg","data":"{}"}}"#, "x".repeat(2000)),
    );
    assert_eq!(r.status, 413, "too large: {r}");
    let r = http_request(
        s.ws,
        "GET",
        &format!("/sse/op?sid={sid}&key={key}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 405, "{r}");
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    let r = http_request(
        s.ws,
        "POST",
        &format!("/sse/op?sid={sid}&key={key}"),
        &[("Transfer-Encoding", "chunked")],
        b"",
    );
    assert_eq!(r.status, 400, "chunked: {r}");
    let r = http_request(s.ws, "POST", "/sse", &[], b"");
    assert_eq!(r.status, 405, "{r}");

    // A body that never completes: 408 at the handshake timeout, not a hang.
    let mut slow = Http::connect(s.ws);
    slow.send(
        format!(
            "POST /sse/op?sid={sid}&key={key} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"op\""
        )
        .as_bytes(),
    );
    let started = Instant::now();
    let r = slow
        .read_response(Duration::from_secs(5))
        .expect("an answer");
    assert_eq!(r.status, 408, "{r}");
    assert!(started.elapsed() < Duration::from_secs(4));

    // The session took none of it and still works.
    let r = post_op(s.ws, &sid, &key, r#"{"op":"ping","id":1}"#);
    assert_eq!(r.status, 202, "{r}");
    assert_eq!(
        sse.until("pong", |e| e.data.contains("pong")).json()["id"],
        1
    );
    publish(&mut api, "doc:h", r#"{"ok":1}"#);
    sse.until("publication", |e| e.data.contains("\"doc:h\""));
}

#[test]
fn a_slow_sse_consumer_is_ended() {
    let s = start(&["--set", "ws.max_outbound_bytes=65536"]);
    let stream = tcp_connect_small_rcvbuf(s.ws, 4096);
    let mut slow = Sse::open_on(stream, s.ws, "/sse?channels=flood", &[]);
    slow.welcome();
    let mut fast = Sse::open(s.ws, "/sse?channels=flood", &[]);
    fast.welcome();
    let mut api = Http::connect(s.api);
    let big = format!("\"{}\"", "y".repeat(16000));
    let mut sent = 0;
    while s.stat("/totals/slow_consumer_closes_total") == 0 {
        assert!(sent < 3000, "the slow stream was never ended");
        publish(&mut api, "flood", &big);
        sent += 1;
        // The fast reader keeps up with every one.
        let ev = fast.until("flood", |e| e.data.contains("\"flood\""));
        assert!(ev.data.len() > 16000, "{sent}");
    }
    assert_eq!(s.stat("/totals/slow_consumer_closes_total"), 1);
    // The slow stream ends with a close event after what it had started to receive.
    let mut closed = None;
    while let Some(ev) = slow.next(Duration::from_secs(5)) {
        if ev.name.as_deref() == Some("close") {
            closed = Some(ev);
        }
    }
    let close = closed.expect("a close event").json();
    assert_eq!(close["type"], "close");
    assert_eq!(close["code"], 1008);
    assert_eq!(close["reason"], "slow consumer");
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.stat("/sessions/sse_sessions") != 1 {
        assert!(Instant::now() < deadline, "the slow session still counted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn demo_page_routes() {
    let s = start(&["--set", "debug.demo_path=/demo"]);
    let r = http_get(s.ws, "/demo");
    assert_eq!(r.status, 308, "{r}");
    assert_eq!(r.header("location"), Some("/demo/"));
    let r = http_get(s.ws, "/demo/?token=x");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let page = r.text();
    assert!(page.contains("content=\"/ws\""), "ws path filled in");
    assert!(!page.contains("{{WS_PATH}}"));
    let r = http_get(s.ws, "/demo/wsgate.js");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(!r.body.is_empty());
    assert_eq!(http_get(s.ws, "/demo/other").status, 404);
    assert_eq!(http_get(s.ws, "/demox").status, 404);
    assert_eq!(http_request(s.ws, "POST", "/demo/", &[], b"").status, 405);

    let off = start(&[]);
    assert_eq!(http_get(off.ws, "/demo/").status, 404);

    for bad in ["demo", "/ws", "/sse"] {
        let out = run_cli(
            &["--set", &format!("debug.demo_path={bad}")],
            &[],
            true,
            Duration::from_secs(10),
        );
        assert_ne!(out.code(), Some(0), "{bad}");
        assert!(
            out.stderr.contains("debug.demo_path"),
            "{bad}: {}",
            out.stderr
        );
    }
}
