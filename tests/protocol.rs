//! The client JSON protocol on /ws: subscribe/unsubscribe/ping replies, errors and the error budget, channel-name
//! rules, the `channels` query parameter, message framing, and heartbeats.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn ws(s: &Server, path: &str) -> RawWs {
    RawWs::connect_with(s.ws, path, &[])
        .unwrap_or_else(|e| panic!("connect {path}: {e}\n{}", s.describe()))
}

fn assert_reply_ok(v: &Value, id: Value, ctx: &str) {
    assert_eq!(v["type"], json!("reply"), "{ctx}: {v}");
    assert_eq!(v["id"], id, "{ctx}: {v}");
    assert_eq!(v["ok"], json!(true), "{ctx}: {v}");
}

fn assert_reply_err(v: &Value, id: Value, ctx: &str) {
    assert_eq!(v["type"], json!("reply"), "{ctx}: {v}");
    assert_eq!(v["id"], id, "{ctx}: {v}");
    assert_eq!(v["ok"], json!(false), "{ctx}: {v}");
    assert!(
        v["error"].as_str().map(|e| !e.is_empty()).unwrap_or(false),
        "{ctx}: ok:false reply without an error string: {v}"
    );
}

fn subscribe(ws: &mut RawWs, channels: &[&str], id: i64) {
    let cmd = json!({"op": "subscribe", "channels": channels, "id": id}).to_string();
    let v = ws.call(&cmd);
    assert_reply_ok(&v, json!(id), &cmd);
}

#[test]
fn subscribe_unsubscribe_and_ping_replies_echo_ids() {
    let s = Server::start(&[]);
    let mut api = Http::connect(s.api);
    let mut c = ws(&s, "/ws");
    let v = c.call(r#"{"op":"subscribe","channels":["a","b"],"id":1}"#);
    assert_reply_ok(&v, json!(1), "subscribe a,b");
    let v = c.call(r#"{"op":"unsubscribe","channels":["a"],"id":2}"#);
    assert_reply_ok(&v, json!(2), "unsubscribe a");
    let v = c.call(r#"{"op":"ping","id":3}"#);
    assert_eq!(v, json!({"type":"pong","id":3}), "ping 3");
    let v = c.call(r#"{"op":"ping","id":"abc-☃"}"#);
    assert_eq!(
        v,
        json!({"type":"pong","id":"abc-☃"}),
        "ping with string id"
    );
    let v = c.call(r#"{"op":"ping","id":1.5}"#);
    assert_eq!(v["type"], json!("pong"));
    assert_eq!(v["id"].as_f64(), Some(1.5), "float id: {v}");
    let v = c.call(r#"{"op":"ping","id":123456789012}"#);
    assert_eq!(v["id"], json!(123456789012i64), "big id: {v}");
    let v = c.call(r#"{"op":"ping"}"#);
    assert_eq!(v["type"], json!("pong"), "ping without id: {v}");
    assert!(
        v.get("id").map(|i| i.is_null()).unwrap_or(true),
        "ping without id got an id: {v}"
    );
    let v = c.call(r#"{"op":"subscribe","channels":["z"]}"#);
    assert_eq!(
        (v["type"].clone(), v["ok"].clone()),
        (json!("reply"), json!(true)),
        "subscribe without id: {v}"
    );

    // The subscriptions took effect: a was dropped, b and z remain.
    publish(&mut api, "a", r#"{"n":"a"}"#);
    publish(&mut api, "b", r#"{"n":"b"}"#);
    assert_eq!(
        c.expect_text("message on b"),
        r#"{"channel":"b","data":{"n":"b"}}"#
    );
    publish(&mut api, "z", r#"{"n":"z"}"#);
    assert_eq!(
        c.expect_text("message on z"),
        r#"{"channel":"z","data":{"n":"z"}}"#
    );
    c.expect_silence(Duration::from_millis(300), "nothing else (no message on a)");
}

#[test]
fn published_data_is_forwarded_verbatim() {
    let s = Server::start(&[]);
    let mut api = Http::connect(s.api);
    let mut c = ws(&s, "/ws?channels=doc:42");
    for data in [
        r#"{"a": [1, 2.50, "x\u00e9\n"], "b": null,  "c":{"d":true}}"#,
        r#""just a string""#,
        "42",
        "-0.5e10",
        "true",
        "[]",
        r#"[{"k":"v"},"é✓😀"]"#,
    ] {
        publish(&mut api, "doc:42", data);
        let got = c.expect_text(&format!("publish {data}"));
        assert_eq!(
            got,
            format!(r#"{{"channel":"doc:42","data":{data}}}"#),
            "data must be forwarded verbatim"
        );
    }
    // List form: one message per channel, each carrying its channel name.
    let mut c2 = ws(&s, "/ws?channels=x");
    publish_many(&mut api, &["doc:42", "x"], r#"{"both": 1}"#);
    assert_eq!(
        c.expect_text("list publish on doc:42"),
        r#"{"channel":"doc:42","data":{"both": 1}}"#
    );
    assert_eq!(
        c2.expect_text("list publish on x"),
        r#"{"channel":"x","data":{"both": 1}}"#
    );
    broadcast(&mut api, r#"{"all": [1, 2]}"#);
    assert_eq!(
        c.expect_text("broadcast"),
        r#"{"broadcast":true,"data":{"all": [1, 2]}}"#
    );
    assert_eq!(
        c2.expect_text("broadcast"),
        r#"{"broadcast":true,"data":{"all": [1, 2]}}"#
    );
}

#[test]
fn duplicate_subscribe_delivers_once() {
    let s = Server::start(&[]);
    let mut api = Http::connect(s.api);
    let mut c = ws(&s, "/ws?channels=dup");
    subscribe(&mut c, &["dup", "dup"], 7);
    subscribe(&mut c, &["dup"], 8);
    publish(&mut api, "dup", "1");
    assert_eq!(
        c.expect_text("first delivery"),
        r#"{"channel":"dup","data":1}"#
    );
    c.expect_silence(Duration::from_millis(300), "no duplicate delivery");
    // One unsubscribe removes the subscription entirely.
    let v = c.call(r#"{"op":"unsubscribe","channels":["dup"],"id":9}"#);
    assert_reply_ok(&v, json!(9), "unsubscribe dup");
    publish(&mut api, "dup", "2");
    c.expect_silence(Duration::from_millis(300), "nothing after unsubscribe");
}

#[test]
fn invalid_json_gets_an_error_reply_and_the_connection_stays() {
    let s = Server::start(&[]);
    let mut c = ws(&s, "/ws");
    for bad in ["not json", "{\"op\":", "[1,2,3]", "42", ""] {
        let v = c.call(bad);
        assert_eq!(v["type"], json!("error"), "reply to {bad:?}: {v}");
        assert!(
            v["error"].as_str().map(|e| !e.is_empty()).unwrap_or(false),
            "error without message for {bad:?}: {v}"
        );
    }
    // Unknown op: an error, either as {"type":"error"} or as a failed reply carrying the id.
    let v = c.call(r#"{"op":"dance","id":5}"#);
    assert!(
        v["type"] == json!("error")
            || (v["type"] == json!("reply") && v["ok"] == json!(false) && v["id"] == json!(5)),
        "unknown op: {v}"
    );
    let v = c.call(r#"{"op":"ping","id":6}"#);
    assert_eq!(
        v,
        json!({"type":"pong","id":6}),
        "still connected and working"
    );
}

#[test]
fn error_budget_exhausted_closes_with_1008() {
    let s = Server::start(&["--set", "ws.error_budget=3"]);
    let mut c = ws(&s, "/ws");
    for i in 1..=3 {
        let v = c.call(format!("garbage {i}"));
        assert_eq!(v["type"], json!("error"), "malformed #{i}: {v}");
    }
    c.send_text("garbage 4");
    let (f, before) = c.expect_close("4th malformed message");
    for b in &before {
        assert!(
            b.opcode != OP_TEXT || b.json()["type"] == json!("error"),
            "unexpected frame before close: {b}"
        );
    }
    assert_eq!(
        f.close_code(),
        Some(1008),
        "close after the error budget: {f}"
    );
    c.wait_closed(Duration::from_secs(5))
        .assert_closed("after 1008");
}

#[test]
fn invalid_channel_names_are_rejected() {
    let s = Server::start(&[]);
    let mut c = ws(&s, "/ws");
    let long255 = "x".repeat(255);
    let long256 = "x".repeat(256);
    let e128 = "é".repeat(128); // 256 bytes, 128 chars
    let cases: Vec<(&str, &str)> = vec![
        ("empty", ""),
        ("256 bytes", &long256),
        ("256 bytes of 2-byte chars", &e128),
        ("control char", "a\u{1}b"),
        ("newline", "a\nb"),
        ("NUL", "a\0b"),
    ];
    for (i, (name, ch)) in cases.iter().enumerate() {
        let id = 100 + i as i64;
        let cmd = json!({"op":"subscribe","channels":[ch],"id":id}).to_string();
        let v = c.call(&cmd);
        assert_reply_err(&v, json!(id), &format!("subscribe to {name} channel"));
    }
    // Valid edge cases.
    subscribe(&mut c, &[&long255], 1);
    subscribe(&mut c, &["doc:é✓ with spaces/and.dots"], 2);
    // Rejected names were not subscribed, the valid ones were.
    let mut api = Http::connect(s.api);
    publish(&mut api, &long255, "1");
    assert_eq!(
        c.expect_text("255-byte channel"),
        format!(r#"{{"channel":"{long255}","data":1}}"#)
    );
    publish(&mut api, "doc:é✓ with spaces/and.dots", "2");
    assert_eq!(
        c.expect_text("unicode channel"),
        r#"{"channel":"doc:é✓ with spaces/and.dots","data":2}"#
    );
    // Subscribe with channels that is not a list of strings.
    let v = c.call(r#"{"op":"subscribe","channels":[1,2],"id":50}"#);
    assert!(
        v["type"] == json!("error") || (v["type"] == json!("reply") && v["ok"] == json!(false)),
        "channels [1,2]: {v}"
    );
}

#[test]
fn channel_limit_per_connection() {
    let s = Server::start(&["--set", "ws.max_channels_per_connection=3"]);
    let mut c = ws(&s, "/ws");
    subscribe(&mut c, &["c1", "c2", "c3"], 1);
    let v = c.call(r#"{"op":"subscribe","channels":["c4"],"id":2}"#);
    assert_reply_err(
        &v,
        json!(2),
        "4th channel over max_channels_per_connection=3",
    );
    // Re-subscribing an existing channel is not a new one.
    subscribe(&mut c, &["c1"], 3);
    // After unsubscribing one there is room again.
    let v = c.call(r#"{"op":"unsubscribe","channels":["c2"],"id":4}"#);
    assert_reply_ok(&v, json!(4), "unsubscribe c2");
    subscribe(&mut c, &["c4"], 5);
}

#[test]
fn channels_query_parameter_is_url_decoded() {
    let s = Server::start(&[]);
    let mut api = Http::connect(s.api);
    let mut c = ws(&s, "/ws?channels=a%2Cb,c,doc%3A%C3%A9");
    publish(&mut api, "a", r#""only a""#);
    publish(&mut api, "a,b", r#""a,b""#);
    assert_eq!(
        c.expect_text("channel a,b"),
        r#"{"channel":"a,b","data":"a,b"}"#,
        "'a' must not be subscribed, 'a,b' must be"
    );
    publish(&mut api, "c", r#""c""#);
    assert_eq!(c.expect_text("channel c"), r#"{"channel":"c","data":"c"}"#);
    publish(&mut api, "doc:é", r#""e""#);
    assert_eq!(
        c.expect_text("channel doc:é"),
        r#"{"channel":"doc:é","data":"e"}"#
    );
    publish(&mut api, "b", r#""only b""#);
    c.expect_silence(Duration::from_millis(300), "no message for a or b");
    // Other query parameters are ignored.
    let mut d = ws(&s, "/ws?token=xyz&channels=q&v=2");
    publish(&mut api, "q", "1");
    assert_eq!(
        d.expect_text("channel q with other params"),
        r#"{"channel":"q","data":1}"#
    );
}

#[test]
fn client_close_on_ws_path_is_answered() {
    let s = Server::start(&[]);
    let mut c = ws(&s, "/ws?channels=x");
    c.send_close(1000, "done");
    let (f, _) = c.expect_close("close reply on /ws");
    assert_eq!(f.close_code(), Some(1000), "{f}");
    c.wait_closed(Duration::from_secs(3))
        .assert_closed("after the close handshake");
}

#[test]
fn heartbeat_pings_silent_clients_and_closes_them_1001() {
    let s = Server::start(&["--set", "ws.ping_interval=1", "--set", "ws.idle_timeout=3"]);
    let start = Instant::now();
    let mut silent = ws(&s, "/ws?channels=hb");
    let mut lively = ws(&s, "/ws?channels=hb");

    // The lively client answers pings (in a thread) and must stay open past idle_timeout.
    let lively_thread = std::thread::spawn(move || {
        let mut pings = 0;
        let deadline = Instant::now() + Duration::from_millis(5500);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match lively.read_frame_timeout(left) {
                Ok(f) if f.opcode == OP_PING => {
                    pings += 1;
                    lively.send_raw(&masked_frame(true, OP_PONG, &f.payload));
                }
                Ok(f) => return Err(format!("lively client got {f} after {:?}", Instant::now())),
                Err(WsReadError::Timeout { partial: 0 }) => break,
                Err(e) => return Err(format!("lively client: {e}")),
            }
        }
        // Still open: a protocol ping gets its pong.
        lively.send_text(r#"{"op":"ping","id":1}"#);
        let v = lively.expect_json("lively ping after 5.5 s");
        if v != json!({"type":"pong","id":1}) {
            return Err(format!("lively client: {v}"));
        }
        Ok(pings)
    });

    // The silent client: a ping within ~2 s, then close 1001 within ~5 s, never answering.
    let mut got_ping_at = None;
    let close = loop {
        let left = (start + Duration::from_secs(7)).saturating_duration_since(Instant::now());
        match silent.read_frame_timeout(left) {
            Ok(f) if f.opcode == OP_PING => {
                got_ping_at.get_or_insert(start.elapsed());
            }
            Ok(f) if f.is_close() => break f,
            Ok(f) => panic!("silent client: unexpected {f}"),
            Err(e) => panic!(
                "silent client: no close within 7 s ({e}); ping at {got_ping_at:?}\n{}",
                s.describe()
            ),
        }
    };
    let closed_at = start.elapsed();
    let ping_at = got_ping_at
        .unwrap_or_else(|| panic!("silent client closed at {closed_at:?} without a ping first"));
    assert!(
        ping_at <= Duration::from_millis(2800),
        "first ping after {ping_at:?} (ping_interval=1)"
    );
    assert_eq!(close.close_code(), Some(1001), "idle close {close}");
    assert!(
        closed_at >= Duration::from_millis(2500),
        "closed after {closed_at:?}: before idle_timeout=3"
    );
    assert!(
        closed_at <= Duration::from_millis(6000),
        "closed after {closed_at:?}: idle_timeout=3"
    );
    silent
        .wait_closed(Duration::from_secs(3))
        .assert_closed("silent client after 1001");
    let pings = lively_thread
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", s.describe()));
    assert!(pings >= 1, "lively client never got a ping");
}

#[test]
fn client_traffic_counts_as_activity() {
    // A client that never answers WebSocket pings but sends protocol pings is not idle.
    let s = Server::start(&["--set", "ws.ping_interval=1", "--set", "ws.idle_timeout=3"]);
    let mut c = ws(&s, "/ws");
    let start = Instant::now();
    let mut id = 0;
    while start.elapsed() < Duration::from_millis(4500) {
        id += 1;
        c.send_text(&format!(r#"{{"op":"ping","id":{id}}}"#));
        loop {
            let f = c
                .read_frame()
                .unwrap_or_else(|e| panic!("after {:?}: {e}", start.elapsed()));
            match f.opcode {
                OP_PING => continue, // deliberately not answered
                // Adaptive heartbeat: regular pings lengthen the interval, announced by a heartbeat frame.
                OP_TEXT if f.json()["type"] == "heartbeat" => continue,
                OP_TEXT => {
                    assert_eq!(f.json(), json!({"type":"pong","id":id}));
                    break;
                }
                _ => panic!("after {:?}: unexpected {f}", start.elapsed()),
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn query_plus_is_space_and_invalid_query_channels_refuse_the_upgrade() {
    // docs/PROTOCOL.md: names are split on ',' then percent-decoded, '+' is a space; invalid names → 400.
    let s = Server::start(&[]);
    let mut api = Http::connect(s.api);
    let mut c = ws(&s, "/ws?channels=hello+world");
    publish(&mut api, "hello world", "1");
    assert_eq!(
        c.expect_text("channel 'hello world'"),
        r#"{"channel":"hello world","data":1}"#
    );
    let long = "x".repeat(256);
    for (name, query) in [("256-byte name", long.as_str()), ("control char", "a%01b")] {
        match RawWs::connect_with(s.ws, &format!("/ws?channels={query}"), &[]) {
            Ok(_) => panic!("{name}: upgrade accepted for /ws?channels={query}"),
            Err(e) => assert!(e.contains(" 400 "), "{name}: expected 400, got {e}"),
        }
    }
}

#[test]
fn binary_frame_on_ws_path_is_an_error_reply() {
    // docs/PROTOCOL.md: a binary frame is answered with {"type":"error"} (and counts against the error budget).
    let s = Server::start(&[]);
    let mut c = ws(&s, "/ws");
    c.send_frame(true, OP_BINARY, br#"{"op":"ping","id":1}"#);
    let v = c.expect_json("reply to a binary frame");
    assert_eq!(v["type"], json!("error"), "{v}");
    let v = c.call(r#"{"op":"ping","id":2}"#);
    assert_eq!(v, json!({"type":"pong","id":2}));
}
