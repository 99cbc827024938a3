//! Sessions against the real binary: socket ids and the welcome frame, pushes to a user / a socket, presence,
//! user lookups, disconnects, the per-user connection limit, rate limits, the adaptive heartbeat and upstream
//! messages.

#[path = "auth_common/mod.rs"]
mod common;

use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

fn token(sub: &str, device: &str) -> String {
    hs256(&json!({"sub": sub, "device": device, "exp": now() + 300, "channels": ["*"]}))
}

#[test]
fn anonymous_mode_still_works_and_says_welcome() {
    let g = Gate::start(&[]);
    let (mut ws, w) = connect_welcome(&g.url("/ws?channels=doc:42"), &[]);
    assert_eq!(w["heartbeat"], json!({"interval": 25, "timeout": 60}));
    assert!(w.get("user").is_none());
    let (status, body) = g.api(
        "POST",
        "/api/publish",
        Some(&json!({"channel":"doc:42","data":{"x":1}})),
    );
    assert_eq!((status, body), (200, json!({"ok":true,"channels":1})));
    assert_eq!(recv(&mut ws), json!({"channel":"doc:42","data":{"x":1}}));
    let r = request(&mut ws, json!({"op":"refresh","token":"t","id":1}));
    assert_eq!(r["ok"], false);

    // Socket ids are unique and name the reactor that holds the connection.
    let mut sids = HashSet::new();
    sids.insert(w["sid"].as_str().unwrap().to_string());
    for _ in 0..40 {
        let (_ws, w) = connect_welcome(&g.url("/ws"), &[]);
        let sid: u64 = w["sid"].as_str().unwrap().parse().unwrap();
        assert!(((sid >> 7) & 63) < 2, "reactor bits of {sid}");
        assert_eq!((sid >> 13) & 1023, 0, "node bits of {sid}");
        assert!(sids.insert(sid.to_string()));
    }
}

#[test]
fn pushes_to_a_user_on_every_device_or_to_one_socket() {
    let g = Gate::start(&jwt_sets());
    let (mut phone, pw) =
        connect_welcome(&g.url(&format!("/ws?token={}", token("u1", "phone"))), &[]);
    let (mut laptop, lw) = connect_welcome(
        &g.url(&format!(
            "/ws?channels=room&token={}",
            token("u1", "laptop")
        )),
        &[],
    );
    let (mut other, _) =
        connect_welcome(&g.url(&format!("/ws?token={}", token("u2", "phone"))), &[]);

    let (status, body) = g.api(
        "POST",
        "/api/publish",
        Some(&json!({"user":"u1","data":{"n":1}})),
    );
    assert_eq!((status, body), (200, json!({"ok":true,"user":"u1"})));
    assert_eq!(recv(&mut phone), json!({"user":"u1","data":{"n":1}}));
    assert_eq!(recv(&mut laptop), json!({"user":"u1","data":{"n":1}}));

    let (status, _) = g.api(
        "POST",
        "/api/publish",
        Some(&json!({"user":"u1","device":"laptop","data":2})),
    );
    assert_eq!(status, 200);
    assert_eq!(recv(&mut laptop), json!({"user":"u1","data":2}));

    let sid = pw["sid"].as_str().unwrap();
    let (status, body) = g.api(
        "POST",
        "/api/publish",
        Some(&json!({"sid": sid, "data":"only you"})),
    );
    assert_eq!((status, body), (200, json!({"ok":true,"sid":sid})));
    assert_eq!(recv(&mut phone), json!({"sid":sid,"data":"only you"}));
    assert!(silent_for(&mut other, Duration::from_millis(300)));
    assert!(silent_for(&mut laptop, Duration::from_millis(100)));

    // Refusals are explicit.
    let (status, _) = g.api(
        "POST",
        "/api/publish",
        Some(&json!({"user":"u1","channel":"x","data":1})),
    );
    assert_eq!(status, 400);
    let (status, _) = g.api("POST", "/api/publish", Some(&json!({"sid":"12x","data":1})));
    assert_eq!(status, 400);
    let foreign = (1u64 << 30) | (5 << 13); // node 5
    let (status, body) = g.api(
        "POST",
        "/api/publish",
        Some(&json!({"sid": foreign.to_string(), "data":1})),
    );
    assert_eq!(status, 404, "{body}");

    // The user's connections, by socket id.
    let (status, body) = g.api("GET", "/api/user/u1", None);
    assert_eq!(status, 200);
    let conns = body["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2);
    let devices: HashSet<&str> = conns
        .iter()
        .map(|c| c["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, HashSet::from(["phone", "laptop"]));
    let laptop_info = conns.iter().find(|c| c["device"] == "laptop").unwrap();
    assert_eq!(laptop_info["sid"], lw["sid"]);
    assert_eq!(laptop_info["channels"], json!(["room"]));
    let (_, body) = g.api("GET", "/api/user/nobody", None);
    assert_eq!(body["connections"], json!([]));

    // Disconnect the user: both devices get the code.
    let (status, body) = g.api(
        "POST",
        "/api/disconnect",
        Some(&json!({"user":"u1","code":4000,"reason":"bye"})),
    );
    assert_eq!((status, body), (200, json!({"ok":true,"disconnected":2})));
    assert_eq!(recv_close(&mut phone), Some(4000));
    assert_eq!(recv_close(&mut laptop), Some(4000));
    let (status, _) = g.api(
        "POST",
        "/api/disconnect",
        Some(&json!({"user":"u1","code":1001})),
    );
    assert_eq!(status, 400, "1001 is not a code a server API may send");
    let (status, body) = g.api("POST", "/api/disconnect", Some(&json!({"user":"u1"})));
    assert_eq!((status, body["disconnected"].clone()), (200, json!(0)));
    let _ = &mut other;
}

#[test]
fn presence_pages_through_subscribers_by_socket_id() {
    let g = Gate::start(&[]);
    let mut sockets = Vec::new();
    let mut sids = Vec::new();
    for _ in 0..5 {
        let (ws, w) = connect_welcome(&g.url("/ws?channels=lobby"), &[]);
        sids.push(w["sid"].as_str().unwrap().parse::<u64>().unwrap());
        sockets.push(ws);
    }
    sids.sort();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for page in 0.. {
        let (status, body) = g.api(
            "GET",
            &format!("/api/presence?channel=lobby&limit=2&cursor={cursor}"),
            None,
        );
        assert_eq!(status, 200, "{body}");
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
    let (status, _) = g.api("GET", "/api/presence", None);
    assert_eq!(status, 400);
    let (status, body) = g.api("GET", "/api/presence?channel=empty", None);
    assert_eq!((status, body["members"].clone()), (200, json!([])));
}

#[test]
fn max_connections_per_user_is_a_clear_429() {
    let g = Gate::start(&[jwt_sets(), vec!["auth.max_connections_per_user=2".into()]].concat());
    let t = token("u1", "d");
    let (a, _) = connect_welcome(&g.url(&format!("/ws?token={t}")), &[]);
    let (_b, _) = connect_welcome(&g.url(&format!("/ws?token={t}")), &[]);
    let (status, _, body) = raw_upgrade(g.ws, &format!("/ws?token={t}"), &[]);
    assert_eq!(status, 429);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], 4029);
    // Another user is not affected; a closed connection frees its slot.
    connect_welcome(&g.url(&format!("/ws?token={}", token("u2", "d"))), &[]);
    drop(a);
    assert!(eventually(Duration::from_secs(3), || {
        raw_upgrade(g.ws, &format!("/ws?token={t}"), &[]).0 == 101
    }));
}

#[test]
fn message_rate_limits_refuse_then_recover() {
    let g = Gate::start(&[
        "limits.control_rate=2".into(),
        "limits.control_burst=2".into(),
        "limits.ping_rate=0.5".into(),
        "limits.ping_burst=1".into(),
        "ws.error_budget=3".into(),
    ]);
    let (mut ws, _) = connect_welcome(&g.url("/ws"), &[]);
    for id in 0..2 {
        let r = request(&mut ws, json!({"op":"subscribe","channels":["a"],"id":id}));
        assert_eq!(r["ok"], true);
    }
    let r = request(&mut ws, json!({"op":"subscribe","channels":["a"],"id":2}));
    assert_eq!(r["code"], 4008, "{r}");
    assert_eq!(r["id"], 2);
    // Other kinds have their own buckets.
    assert_eq!(
        request(&mut ws, json!({"op":"ping","id":3}))["type"],
        "pong"
    );
    std::thread::sleep(Duration::from_millis(600));
    let r = request(&mut ws, json!({"op":"subscribe","channels":["a"],"id":4}));
    assert_eq!(r["ok"], true, "recovered after the refill: {r}");
    // Refusals in a row beyond ws.error_budget close with 4008.
    for _ in 0..3 {
        let r = request(&mut ws, json!({"op":"ping"}));
        assert_eq!(r["code"], 4008);
    }
    send(&mut ws, json!({"op":"ping"}));
    assert_eq!(recv_close(&mut ws), Some(4008));
    assert!(eventually(Duration::from_secs(2), || {
        g.session_stat("rate_limited_ping_total") == 4
            && g.session_stat("rate_limit_closes_total") == 1
    }));
    let (_, _, metrics) = http(g.api, "GET", "/metrics", &[], b"");
    assert!(
        metrics.contains("wsgate_rate_limited_control_total{reactor="),
        "{metrics}"
    );
}

#[test]
fn connection_and_publish_rates_refuse_then_recover() {
    let g = Gate::start(&[
        "limits.connect_rate=2".into(),
        "limits.connect_burst=2".into(),
        "limits.publish_rate=1".into(),
        "limits.publish_burst=1".into(),
    ]);
    let _a = connect_welcome(&g.url("/ws"), &[]);
    let _b = connect_welcome(&g.url("/ws"), &[]);
    let (status, _, body) = raw_upgrade(g.ws, "/ws", &[]);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("4029") && body.contains("address"), "{body}");
    std::thread::sleep(Duration::from_millis(600));
    connect_welcome(&g.url("/ws"), &[]);

    let publish = |tenant: &str| {
        g.api(
            "POST",
            "/api/publish",
            Some(&json!({"channel":"c","tenant":tenant,"data":1})),
        )
        .0
    };
    assert_eq!(publish("t1"), 200);
    assert_eq!(publish("t1"), 429);
    assert_eq!(publish("t2"), 200, "tenants have their own buckets");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(publish("t1"), 200);
    assert!(eventually(Duration::from_secs(2), || g
        .session_stat("connect_rate_limited_total")
        == 1));
    assert_eq!(g.session_stat("api_publish_rate_limited_total"), 1);
}

#[test]
fn adaptive_heartbeat_lengthens_and_snaps_back() {
    // Base 1 s, grace 7 s, +1 s after 2 healthy beats, up to 3 s; a beat more than 1 s late is missed.
    let g = Gate::start(&[
        "ws.ping_interval=1".into(),
        "ws.idle_timeout=8".into(),
        "heartbeat.healthy_beats=2".into(),
        "heartbeat.step=1".into(),
        "heartbeat.max_interval=3".into(),
        "heartbeat.tolerance=1".into(),
    ]);
    let (mut ws, w) = connect_welcome(&g.url("/ws"), &[]);
    assert_eq!(w["heartbeat"], json!({"interval":1,"timeout":8}));
    let beat = |ws: &mut Ws| {
        let pong = request(ws, json!({"op":"ping"}));
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
        ws.get_mut()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(tungstenite::Message::Text(t)) = ws.read() {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["type"], "heartbeat", "{v}");
            interval = v["interval"].as_u64().unwrap();
            assert_eq!(v["timeout"].as_u64().unwrap(), interval + 7);
            changes.push(interval);
        }
        ws.get_mut()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
    }
    assert_eq!(changes, vec![2, 3]);
    // Miss a beat (3 s interval + 1 s tolerance), staying under the 10 s timeout: back to the base.
    std::thread::sleep(Duration::from_millis(5500));
    beat(&mut ws);
    assert_eq!(
        recv(&mut ws),
        json!({"type":"heartbeat","interval":1,"timeout":8})
    );
    assert!(eventually(Duration::from_secs(2), || {
        g.session_stat("heartbeat_lengthened_total") == 2
            && g.session_stat("heartbeat_snapbacks_total") == 1
    }));
}

#[test]
fn upstream_messages_are_accepted_acknowledged_and_counted() {
    let g = Gate::start(&jwt_sets());
    let (mut ws, _) = connect_welcome(&g.url(&format!("/ws?token={}", token("u1", "d"))), &[]);
    let r = request(&mut ws, json!({"op":"msg","data":{"cursor":[1,2]},"id":7}));
    assert_eq!(r, json!({"type":"reply","id":7,"ok":true}));
    send(&mut ws, json!({"op":"msg","data":"no ack without id"}));
    let r = request(&mut ws, json!({"op":"msg","id":8}));
    assert_eq!(r["ok"], false);
    assert_eq!(r["id"], 8);
    drop(ws);
    assert!(eventually(Duration::from_secs(3), || {
        let s = g.stats()["sessions"].clone();
        s["upstream_messages_total"] == 2
            && s["upstream_connects_total"] == 1
            && s["upstream_disconnects_total"] == 1
    }));
}
