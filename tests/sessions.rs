//! Sessions against the real binary: socket ids and the welcome frame, pushes to a user / a socket, presence,
//! user lookups, disconnects, the per-user connection limit, rate limits, the adaptive heartbeat and upstream
//! messages.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

fn token(sub: &str, device: &str) -> String {
    hs256(&json!({"sub": sub, "device": device, "exp": unix_now() + 300, "channels": ["*"]}))
}

/// Waits until every named counter of the `sessions` object of /api/stats has its value (counters are published
/// once per reactor loop); panics with the counters if they do not get there `within`.
fn expect_session_counters(g: &Server, want: &[(&str, u64)], within: Duration) {
    let reached = eventually(within, || {
        let sessions = g.stats()["sessions"].clone();
        want.iter()
            .all(|(name, value)| sessions[*name] == *value)
            .then_some(())
    });
    assert!(
        reached.is_some(),
        "want {want:?}, sessions: {}",
        g.stats()["sessions"]
    );
}

#[test]
fn anonymous_mode_still_works_and_says_welcome() {
    let g = Server::start(&[]);
    let mut ws = RawWs::connect(g.ws, "/ws?channels=doc:42");
    let w = ws.welcome_frame().clone();
    assert_eq!(w["heartbeat"], json!({"interval": 25, "timeout": 60}));
    assert!(w.get("user").is_none());
    let r = Http::connect(g.api).post_json(
        "/api/publish",
        &json!({"channel":"doc:42","data":{"x":1}}).to_string(),
    );
    assert_eq!((r.status, r.json()), (200, json!({"ok":true,"channels":1})));
    assert_eq!(
        ws.expect_json("delivery"),
        json!({"channel":"doc:42","data":{"x":1}})
    );
    let r = ws.call(json!({"op":"refresh","token":"t","id":1}));
    assert_eq!(r["ok"], false);

    // Socket ids are unique and name the reactor that holds the connection.
    let mut sids = HashSet::new();
    sids.insert(w["sid"].as_str().unwrap().to_string());
    for _ in 0..40 {
        let ws = RawWs::connect(g.ws, "/ws");
        let sid: u64 = ws.welcome_frame()["sid"].as_str().unwrap().parse().unwrap();
        assert!(((sid >> 7) & 63) < 2, "reactor bits of {sid}");
        assert_eq!((sid >> 13) & 1023, 0, "node bits of {sid}");
        assert!(sids.insert(sid.to_string()));
    }
}

/// A user push without its id (every user push carries one: its place in the replay store).
trait WithoutId {
    fn without_id(self) -> serde_json::Value;
}

impl WithoutId for serde_json::Value {
    fn without_id(mut self) -> serde_json::Value {
        let id = self.as_object_mut().and_then(|o| o.remove("id"));
        assert!(
            id.as_ref().is_some_and(|i| i.is_string()),
            "no id in {self}"
        );
        self
    }
}

#[test]
fn pushes_to_a_user_on_every_device_or_to_one_socket() {
    let g = Server::start(&JWT_ARGS);
    let mut phone = RawWs::connect(g.ws, &format!("/ws?since=$&token={}", token("u1", "phone")));
    let mut laptop = RawWs::connect(
        g.ws,
        &format!("/ws?channels=room&since=$&token={}", token("u1", "laptop")),
    );
    let mut other = RawWs::connect(g.ws, &format!("/ws?since=$&token={}", token("u2", "phone")));
    let mut api = Http::connect(g.api);
    let mut post = |path: &str, body: serde_json::Value| api.post_json(path, &body.to_string());

    let r = post("/api/publish", json!({"user":"u1","data":{"n":1}}));
    assert_eq!((r.status, r.json()), (200, json!({"ok":true,"user":"u1"})));
    assert_eq!(
        phone.expect_json("push to u1").without_id(),
        json!({"user":"u1","data":{"n":1}})
    );
    assert_eq!(
        laptop.expect_json("push to u1").without_id(),
        json!({"user":"u1","data":{"n":1}})
    );

    let r = post(
        "/api/publish",
        json!({"user":"u1","device":"laptop","data":2}),
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        laptop.expect_json("push to the laptop").without_id(),
        json!({"user":"u1","data":2})
    );

    let sid = phone.welcome_frame()["sid"].as_str().unwrap().to_string();
    let r = post("/api/publish", json!({"sid": sid, "data":"only you"}));
    assert_eq!((r.status, r.json()), (200, json!({"ok":true,"sid":sid})));
    assert_eq!(
        phone.expect_json("push to the socket"),
        json!({"sid":sid,"data":"only you"})
    );
    other.expect_silence(Duration::from_millis(300), "another user");
    laptop.expect_silence(Duration::from_millis(100), "another socket");

    // Refusals are explicit.
    let r = post("/api/publish", json!({"user":"u1","channel":"x","data":1}));
    assert_eq!(r.status, 400, "{r}");
    let r = post("/api/publish", json!({"sid":"12x","data":1}));
    assert_eq!(r.status, 400, "{r}");
    let foreign = (1u64 << 30) | (5 << 13); // node 5
    let r = post(
        "/api/publish",
        json!({"sid": foreign.to_string(), "data":1}),
    );
    assert_eq!(r.status, 404, "{r}");

    // The user's connections, by socket id.
    let r = api.get("/api/user/u1");
    assert_eq!(r.status, 200, "{r}");
    let body = r.json();
    let conns = body["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2);
    let devices: HashSet<&str> = conns
        .iter()
        .map(|c| c["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, HashSet::from(["phone", "laptop"]));
    let laptop_info = conns.iter().find(|c| c["device"] == "laptop").unwrap();
    assert_eq!(laptop_info["sid"], laptop.welcome_frame()["sid"]);
    assert_eq!(laptop_info["channels"], json!(["room"]));
    let r = api.get("/api/user/nobody");
    assert_eq!(r.json()["connections"], json!([]));

    // Disconnect the user: both devices get the code.
    let mut post = |path: &str, body: serde_json::Value| api.post_json(path, &body.to_string());
    let r = post(
        "/api/disconnect",
        json!({"user":"u1","code":4000,"reason":"bye"}),
    );
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"ok":true,"disconnected":2}))
    );
    phone.expect_close_code(4000, "disconnected by the API");
    laptop.expect_close_code(4000, "disconnected by the API");
    let r = post("/api/disconnect", json!({"user":"u1","code":1001}));
    assert_eq!(
        r.status, 400,
        "1001 is not a code a server API may send: {r}"
    );
    let r = post("/api/disconnect", json!({"user":"u1"}));
    assert_eq!(
        (r.status, r.json()["disconnected"].clone()),
        (200, json!(0))
    );
    drop(other);
}

#[test]
fn presence_pages_through_subscribers_by_socket_id() {
    let g = Server::start(&[]);
    let mut sockets = Vec::new();
    let mut sids = Vec::new();
    for _ in 0..5 {
        let ws = RawWs::connect(g.ws, "/ws?channels=lobby");
        sids.push(
            ws.welcome_frame()["sid"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
        sockets.push(ws);
    }
    sids.sort();
    let mut api = Http::connect(g.api);
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for page in 0.. {
        let r = api.get(&format!(
            "/api/presence?channel=lobby&limit=2&cursor={cursor}"
        ));
        assert_eq!(r.status, 200, "{r}");
        let body = r.json();
        assert_eq!(body["total"], 5);
        for m in body["members"].as_array().unwrap() {
            seen.push(m["sid"].as_str().unwrap().parse::<u64>().unwrap());
            assert_eq!(m["user"], serde_json::Value::Null);
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
        assert!(page < 5);
    }
    assert_eq!(seen, sids);
    let r = api.get("/api/presence");
    assert_eq!(r.status, 400, "{r}");
    let r = api.get("/api/presence?channel=empty");
    assert_eq!((r.status, r.json()["members"].clone()), (200, json!([])));
}

#[test]
fn max_connections_per_user_is_a_clear_429() {
    let g = Server::start(&[&JWT_ARGS[..], &["--set", "auth.max_connections_per_user=2"]].concat());
    let path = format!("/ws?since=$&token={}", token("u1", "d"));
    let a = RawWs::connect(g.ws, &path);
    let _b = RawWs::connect(g.ws, &path);
    let r = upgrade_response(g.ws, &path, &[]);
    assert_eq!(r.status, 429, "{r}");
    assert_eq!(r.json()["code"], 4029, "{r}");
    // Another user is not affected; a closed connection frees its slot.
    RawWs::connect(g.ws, &format!("/ws?since=$&token={}", token("u2", "d")));
    drop(a);
    assert!(
        eventually(Duration::from_secs(3), || RawWs::connect_with(
            g.ws,
            &path,
            &[]
        )
        .ok())
        .is_some(),
        "no slot after a connection closed\n{}",
        g.describe()
    );
}

#[test]
fn message_rate_limits_refuse_then_recover() {
    let g = Server::start(&[
        "--set",
        "limits.control_rate=2",
        "--set",
        "limits.control_burst=2",
        "--set",
        "limits.ping_rate=0.5",
        "--set",
        "limits.ping_burst=1",
        "--set",
        "ws.error_budget=3",
    ]);
    let mut ws = RawWs::connect(g.ws, "/ws");
    for id in 0..2 {
        let r = ws.call(json!({"op":"subscribe","channels":["a"],"id":id}));
        assert_eq!(r["ok"], true);
    }
    let r = ws.call(json!({"op":"subscribe","channels":["a"],"id":2}));
    assert_eq!(r["code"], 4008, "{r}");
    assert_eq!(r["id"], 2);
    // Other kinds have their own buckets.
    assert_eq!(ws.call(json!({"op":"ping","id":3}))["type"], "pong");
    std::thread::sleep(Duration::from_millis(600));
    let r = ws.call(json!({"op":"subscribe","channels":["a"],"id":4}));
    assert_eq!(r["ok"], true, "recovered after the refill: {r}");
    // Refusals in a row beyond ws.error_budget close with 4008.
    for _ in 0..3 {
        let r = ws.call(json!({"op":"ping"}));
        assert_eq!(r["code"], 4008);
    }
    ws.send_text(&json!({"op":"ping"}).to_string());
    ws.expect_close_code(4008, "refusals beyond the error budget");
    expect_session_counters(
        &g,
        &[
            ("rate_limited_ping_total", 4),
            ("rate_limit_closes_total", 1),
        ],
        Duration::from_secs(2),
    );
    let metrics = http_get(g.api, "/metrics").text();
    assert!(
        metrics.contains("wsgate_rate_limited_control_total{reactor="),
        "{metrics}"
    );
}

#[test]
fn connection_and_publish_rates_refuse_then_recover() {
    let g = Server::start(&[
        "--set",
        "limits.connect_rate=2",
        "--set",
        "limits.connect_burst=2",
        "--set",
        "limits.publish_rate=1",
        "--set",
        "limits.publish_burst=1",
    ]);
    let _a = RawWs::connect(g.ws, "/ws");
    let _b = RawWs::connect(g.ws, "/ws");
    let r = upgrade_response(g.ws, "/ws", &[]);
    assert_eq!(r.status, 429, "{r}");
    let body = r.text();
    assert!(body.contains("4029") && body.contains("address"), "{body}");
    std::thread::sleep(Duration::from_millis(600));
    RawWs::connect(g.ws, "/ws");

    let mut api = Http::connect(g.api);
    let mut publish = |tenant: &str| {
        api.post_json(
            "/api/publish",
            &json!({"channel":"c","tenant":tenant,"data":1}).to_string(),
        )
        .status
    };
    assert_eq!(publish("t1"), 200);
    assert_eq!(publish("t1"), 429);
    assert_eq!(publish("t2"), 200, "tenants have their own buckets");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(publish("t1"), 200);
    assert_eq!(
        g.wait_stat(
            "/sessions/connect_rate_limited_total",
            1,
            Duration::from_secs(2)
        ),
        1
    );
    assert_eq!(g.stat("/sessions/api_publish_rate_limited_total"), 1);
}

#[test]
fn adaptive_heartbeat_lengthens_and_snaps_back() {
    // Base 1 s, grace 7 s, +1 s after 2 healthy beats, up to 3 s; a beat more than 1 s late is missed.
    let g = Server::start(&[
        "--set",
        "ws.ping_interval=1",
        "--set",
        "ws.idle_timeout=8",
        "--set",
        "heartbeat.healthy_beats=2",
        "--set",
        "heartbeat.step=1",
        "--set",
        "heartbeat.max_interval=3",
        "--set",
        "heartbeat.tolerance=1",
    ]);
    let mut ws = RawWs::connect(g.ws, "/ws");
    assert_eq!(
        ws.welcome_frame()["heartbeat"],
        json!({"interval":1,"timeout":8})
    );
    let beat = |ws: &mut RawWs| {
        let pong = ws.call(json!({"op":"ping"}));
        assert_eq!(pong["type"], "pong");
    };
    beat(&mut ws); // starts the count
    let mut interval = 1u64;
    let mut changes = Vec::new();
    for _ in 0..12 {
        if changes.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(interval * 1000));
        beat(&mut ws);
        match ws.next_message(Duration::from_millis(200)) {
            Ok(f) => {
                let v = f.json();
                assert_eq!(v["type"], "heartbeat", "{v}");
                interval = v["interval"].as_u64().unwrap();
                assert_eq!(v["timeout"].as_u64().unwrap(), interval + 7);
                changes.push(interval);
            }
            Err(WsReadError::Timeout { partial: 0 }) => {}
            Err(e) => panic!("after a beat: {e}"),
        }
    }
    assert_eq!(changes, vec![2, 3]);
    // Miss a beat (3 s interval + 1 s tolerance), staying under the 10 s timeout: back to the base.
    std::thread::sleep(Duration::from_millis(5500));
    beat(&mut ws);
    assert_eq!(
        ws.expect_json("heartbeat snap-back"),
        json!({"type":"heartbeat","interval":1,"timeout":8})
    );
    expect_session_counters(
        &g,
        &[
            ("heartbeat_lengthened_total", 2),
            ("heartbeat_snapbacks_total", 1),
        ],
        Duration::from_secs(2),
    );
}

#[test]
fn upstream_messages_are_accepted_acknowledged_and_counted() {
    let g = Server::start(&JWT_ARGS);
    let mut ws = RawWs::connect(g.ws, &format!("/ws?since=$&token={}", token("u1", "d")));
    let r = ws.call(json!({"op":"msg","data":{"cursor":[1,2]},"id":7}));
    assert_eq!(r, json!({"type":"reply","id":7,"ok":true}));
    ws.send_text(&json!({"op":"msg","data":"no ack without id"}).to_string());
    let r = ws.call(json!({"op":"msg","id":8}));
    assert_eq!(r["ok"], false);
    assert_eq!(r["id"], 8);
    drop(ws);
    expect_session_counters(
        &g,
        &[
            ("upstream_messages_total", 2),
            ("upstream_connects_total", 1),
            ("upstream_disconnects_total", 1),
        ],
        Duration::from_secs(3),
    );
}
