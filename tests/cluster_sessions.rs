//! Sessions across cluster nodes, against the real binary and a real redis-server (started here, killed by its
//! PID): user / socket / disconnect targets reach the node that holds the connection; user pushes are stored for
//! offline replay and replayed on connect with no gap and no duplicate; upstream events land in a Redis stream;
//! session state lives in Redis with the seed's keys and a killed node's sessions are swept; presence is
//! cluster-wide.

mod common;

use common::redis_server::RedisServer;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// A gateway in cluster mode on `redis` with JWT auth, plus `extra` arguments.
fn node(redis: &RedisServer, extra: &[&str]) -> Server {
    let set = format!("cluster.redis={}", redis.url());
    let mut args: Vec<&str> = JWT_ARGS.to_vec();
    // A fresh Redis per test, no live node to wait for (the quarantine is tested in tests/cluster_faults.rs).
    args.extend_from_slice(&[
        "--set",
        set.as_str(),
        "--set",
        "cluster.node_id_quarantine=0",
    ]);
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn token(sub: &str, device: &str) -> String {
    hs256(&json!({"sub": sub, "device": device, "exp": unix_now() + 600, "channels": ["*"]}))
}

/// A user's connection after its replay: the replayed messages and the `{"type":"replay"}` frame that ends them.
struct UserWs {
    ws: RawWs,
    replayed: Vec<Value>,
    done: Value,
}

impl UserWs {
    fn sid(&self) -> String {
        self.ws.welcome_frame()["sid"].as_str().unwrap().to_string()
    }

    fn node_of(&self) -> u64 {
        let sid: u64 = self.sid().parse().unwrap();
        (sid >> 13) & 1023
    }
}

/// Connects user `sub` (device `device`) to `s` with the extra query `query` (e.g. `since=...`) and reads up to the
/// end of its replay.
fn connect(s: &Server, sub: &str, device: &str, query: &str) -> UserWs {
    let mut path = format!("/ws?token={}", token(sub, device));
    if !query.is_empty() {
        path.push('&');
        path.push_str(query);
    }
    let mut ws = RawWs::connect(s.ws, &path);
    let mut replayed = Vec::new();
    loop {
        let v = ws.expect_json(&format!("replay of {sub}/{device}"));
        if v["type"] == "replay" {
            return UserWs {
                ws,
                replayed,
                done: v,
            };
        }
        replayed.push(v);
    }
}

fn post(s: &Server, path: &str, body: Value) -> HttpResponse {
    Http::connect(s.api).post_json(path, &body.to_string())
}

fn push_user(s: &Server, user: &str, data: Value) {
    let r = post(s, "/api/publish", json!({"user": user, "data": data}));
    assert_eq!(r.status, 200, "push to {user}: {r}");
}

/// Waits until `n` pushes to `user` are stored for replay (the API answers 200 once a push is queued).
fn wait_stored(redis: &RedisServer, user: &str, n: usize) {
    let mut r = redis.client();
    let key = format!("stream:notify:{user}");
    let stored = eventually(READ_TIMEOUT, || {
        let len: usize = redis::cmd("XLEN").arg(&key).query(&mut r).ok()?;
        (len == n).then_some(())
    });
    assert!(stored.is_some(), "{n} pushes to {user} stored");
}

/// The `data` and `id` of a user frame, checking its shape.
fn user_frame(v: &Value, user: &str) -> (Value, String) {
    assert_eq!(v["user"], user, "not a push to {user}: {v}");
    let id = v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("user frame without an id: {v}"))
        .to_string();
    (v["data"].clone(), id)
}

#[test]
fn user_sid_and_disconnect_targets_cross_nodes() {
    let redis = RedisServer::start();
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis, &[])).collect();
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut on_a1 = connect(a, "u1", "phone", "");
    let mut on_a2 = connect(a, "u1", "laptop", "");
    let mut on_c = connect(c, "u1", "tablet", "");
    let mut other = connect(b, "u2", "phone", "");
    for u in [&on_a1, &on_a2, &on_c, &other] {
        assert_eq!(
            u.done,
            json!({"type":"replay","ok":true,"count":0,"last":null})
        );
    }

    // A push accepted on B reaches every connection of u1, on A and on C, exactly once, with its stream id.
    push_user(b, "u1", json!({"n": 1}));
    let mut ids = Vec::new();
    for (name, u) in [("a1", &mut on_a1), ("a2", &mut on_a2), ("c", &mut on_c)] {
        let (data, id) = user_frame(&u.ws.expect_json(&format!("push on {name}")), "u1");
        assert_eq!(data, json!({"n": 1}), "{name}");
        ids.push(id);
    }
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one id everywhere: {ids:?}"
    );
    // Device filter across nodes.
    let r = post(
        b,
        "/api/publish",
        json!({"user":"u1","device":"tablet","data":2}),
    );
    assert_eq!(r.status, 200, "{r}");
    let (data, _) = user_frame(&on_c.ws.expect_json("push to the tablet"), "u1");
    assert_eq!(data, json!(2));
    for (name, u) in [
        ("a1", &mut on_a1),
        ("a2", &mut on_a2),
        ("other", &mut other),
    ] {
        u.ws.expect_silence(
            Duration::from_millis(300),
            &format!("{name} after the pushes"),
        );
    }
    on_c.ws
        .expect_silence(Duration::from_millis(50), "c after the pushes");

    // A socket id of node C, published on A: only that connection gets it; no more 404 in cluster mode.
    let sid_c = on_c.sid();
    assert_ne!(on_c.node_of(), on_a1.node_of());
    let r = post(a, "/api/publish", json!({"sid": sid_c, "data": "only you"}));
    assert_eq!((r.status, r.json()), (200, json!({"ok":true,"sid":sid_c})));
    assert_eq!(
        on_c.ws.expect_json("sid push from A"),
        json!({"sid": sid_c, "data": "only you"})
    );
    on_a1
        .ws
        .expect_silence(Duration::from_millis(200), "a1 after the sid push");

    // Disconnect one socket of node A from node C, then the whole user from B.
    let sid_a2 = on_a2.sid();
    let r = post(
        c,
        "/api/disconnect",
        json!({"sid": sid_a2, "code": 4100, "reason": "bye a2"}),
    );
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"ok":true,"disconnected":0,"forwarded":true}))
    );
    let f = on_a2.ws.expect_close_code(4100, "a2 disconnected from C");
    assert_eq!(f.close_reason(), "bye a2");
    on_a1
        .ws
        .expect_silence(Duration::from_millis(200), "a1 keeps its connection");

    let r = post(b, "/api/disconnect", json!({"user": "u1"}));
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"ok":true,"disconnected":0,"forwarded":true}))
    );
    on_a1
        .ws
        .expect_close_code(4000, "u1 on A disconnected from B");
    on_c.ws
        .expect_close_code(4000, "u1 on C disconnected from B");
    other
        .ws
        .expect_silence(Duration::from_millis(200), "u2 stays");

    // Bus entries carry the routing fields of the new kinds.
    let mut r = redis.client();
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("wsgate:bus")
        .arg("-")
        .arg("+")
        .query(&mut r)
        .unwrap();
    let kinds: Vec<String> = entries
        .ids
        .iter()
        .map(|e| e.get::<String>("kind").unwrap())
        .collect();
    assert_eq!(kinds, ["user", "user", "sid", "disconnect", "disconnect"]);
    let dev: String = entries.ids[1].get("device").unwrap();
    assert_eq!(dev, "tablet");
    let nid: String = entries.ids[0].get("nid").unwrap();
    assert_eq!(nid, ids[0]);
    let scope: String = entries.ids[3].get("scope").unwrap();
    assert_eq!(scope, "sid");
}

#[test]
fn offline_user_gets_missed_pushes_on_connect_exactly_once_in_order() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);

    // Offline when pushed: replayed at the first connect (no ack stored yet: everything kept).
    push_user(&a, "u1", json!("while away 1"));
    push_user(&a, "u1", json!("while away 2"));
    // 200 means queued; wait until both are stored, so both are missed rather than one arriving live.
    wait_stored(&redis, "u1", 2);
    let mut r = redis.client();
    // Kept at most cluster.offline_max_age: the stream expires when the user gets no more pushes.
    let pttl: i64 = redis::cmd("PTTL")
        .arg("stream:notify:u1")
        .query(&mut r)
        .unwrap();
    assert!(pttl > 0 && pttl <= 604_800_000, "PTTL {pttl}");
    let first = connect(&b, "u1", "phone", "");
    let got: Vec<Value> = first.replayed.iter().map(|v| v["data"].clone()).collect();
    assert_eq!(got, [json!("while away 1"), json!("while away 2")]);
    assert!(first.replayed.iter().all(|v| v["replay"] == true));
    let last_id = first.replayed[1]["id"].as_str().unwrap().to_string();
    assert_eq!(first.done["count"], 2);
    assert_eq!(first.done["last"], last_id.as_str());
    let mut ws = first.ws;

    // Live pushes, acknowledged as they are processed.
    let mut seen: Vec<(i64, String)> = Vec::new();
    let mut api = Http::connect(a.api);
    for n in 0..3 {
        let r = api.post_json(
            "/api/publish",
            &json!({"user":"u1","data":{"n":n}}).to_string(),
        );
        assert_eq!(r.status, 200, "{r}");
        let (data, id) = user_frame(&ws.expect_json("live push"), "u1");
        ws.send_text(&json!({"op":"ack","id":id}).to_string());
        seen.push((data["n"].as_i64().unwrap(), id));
    }
    // Acks are stored per user and device (merged, so only the last one matters).
    let last_ack = seen.last().unwrap().1.clone();
    let stored = eventually(READ_TIMEOUT, || {
        let v: Option<String> = redis::cmd("HGET")
            .arg("ws:ack:u1")
            .arg("phone")
            .query(&mut r)
            .ok()?;
        (v.as_deref() == Some(last_ack.as_str())).then_some(())
    });
    assert!(stored.is_some(), "ack {last_ack} not stored");
    ws.send_close(1000, "");
    drop(ws);

    // Pushes while offline, and more from another thread while the client reconnects (with its stored ack, to
    // the other node): every one arrives exactly once and in order, replayed first, then live.
    for n in 3..6 {
        let r = api.post_json(
            "/api/publish",
            &json!({"user":"u1","data":{"n":n}}).to_string(),
        );
        assert_eq!(r.status, 200, "{r}");
    }
    let api_addr = a.api;
    let pusher = std::thread::spawn(move || {
        let mut api = Http::connect(api_addr);
        for n in 6..40 {
            let r = api.post_json(
                "/api/publish",
                &json!({"user":"u1","data":{"n":n}}).to_string(),
            );
            assert_eq!(r.status, 200, "{r}");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    std::thread::sleep(Duration::from_millis(30));
    let again = connect(&b, "u1", "phone", "");
    let mut ws = again.ws;
    let mut got: Vec<i64> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for v in &again.replayed {
        let (data, id) = user_frame(v, "u1");
        assert_eq!(v["replay"], true, "{v}");
        got.push(data["n"].as_i64().unwrap());
        ids.push(id);
    }
    while got.last() != Some(&39) {
        let v = ws.expect_json(&format!("live after the replay, have {got:?}"));
        let (data, id) = user_frame(&v, "u1");
        assert!(v.get("replay").is_none(), "{v}");
        got.push(data["n"].as_i64().unwrap());
        ids.push(id);
    }
    pusher.join().unwrap();
    assert_eq!(
        got,
        (3..40).collect::<Vec<i64>>(),
        "no gap, no duplicate, in order"
    );
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    });
    assert_eq!(ids, sorted, "ids increase");
    ws.expect_silence(Duration::from_millis(300), "nothing after the last push");

    // `since` overrides the stored ack; `since=$` skips the replay.
    let from = connect(&a, "u1", "phone", &format!("since={}", ids[30]));
    let replayed: Vec<i64> = from
        .replayed
        .iter()
        .map(|v| v["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(replayed, (34..40).collect::<Vec<i64>>());
    let mut none = RawWs::connect(a.ws, &format!("/ws?since=$&token={}", token("u1", "phone")));
    none.expect_silence(Duration::from_millis(300), "since=$: no replay frame");
    let bad = RawWs::connect_with(
        a.ws,
        &format!("/ws?since=x-1&token={}", token("u1", "phone")),
        &[],
    );
    assert!(
        matches!(&bad, Err(e) if e.contains("400")),
        "since=x-1 must be refused"
    );
    // Acks are checked.
    let mut w = from.ws;
    let r = w.call(json!({"op":"ack","id":"nope"}));
    assert_eq!(r["ok"], false, "{r}");
}

/// The fields of one stream entry as strings.
fn entry_fields(e: &redis::streams::StreamId) -> std::collections::HashMap<String, String> {
    e.map
        .iter()
        .map(|(k, v)| (k.clone(), redis::from_redis_value::<String>(v).unwrap()))
        .collect()
}

#[test]
fn upstream_events_land_in_a_stream_for_consumer_groups() {
    let redis = RedisServer::start();
    let a = node(&redis, &["--set", "cluster.upstream_stream=app:upstream"]);
    let mut r = redis.client();
    // A backend's consumer group, created before any traffic.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("app:upstream")
        .arg("backend")
        .arg("$")
        .arg("MKSTREAM")
        .query(&mut r)
        .unwrap();

    let mut u = connect(&a, "u1", "phone", "v=web-1.2.3&channels=doc:1");
    let sid = u.sid();
    let r1 = u
        .ws
        .call(json!({"op":"msg","data":{"typing":true},"channel":"doc:1","trace":"t-42","id":1}));
    assert_eq!(r1, json!({"type":"reply","id":1,"ok":true}));
    let r2 =
        u.ws.call(json!({"op":"msg","data":[1,2],"channel":"doc:2","id":2}));
    assert_eq!(
        r2["ok"], false,
        "a channel the client is not subscribed to: {r2}"
    );
    u.ws.send_text(&json!({"op":"msg","data":"plain"}).to_string());
    let token = token("u2", "laptop");
    let mut by_header = RawWs::connect_with(
        a.ws,
        &format!("/ws?since=$&token={token}"),
        &[("X-Client-Version", "ios-7")],
    )
    .unwrap();
    u.ws.send_close(1000, "");
    u.ws.expect_close("close handshake");
    by_header.send_close(1000, "");
    by_header.expect_close("close handshake");

    // connect u1, message, message, connect u2, disconnect u1, disconnect u2 (u2's connect may come earlier or
    // later than u1's messages: different connections).
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + READ_TIMEOUT;
    while got.len() < 6 && std::time::Instant::now() < deadline {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("backend")
            .arg("worker-1")
            .arg("COUNT")
            .arg(10)
            .arg("BLOCK")
            .arg(500)
            .arg("STREAMS")
            .arg("app:upstream")
            .arg(">")
            .query(&mut r)
            .unwrap();
        for k in reply.keys {
            got.extend(k.ids.iter().map(entry_fields));
        }
    }
    let of_u1: Vec<_> = got.iter().filter(|f| f["X-ID"] == sid).collect();
    let events: Vec<&str> = of_u1.iter().map(|f| f["X-Event"].as_str()).collect();
    assert_eq!(
        events,
        ["connect", "message", "message", "disconnect"],
        "{got:#?}"
    );
    for f in &of_u1 {
        assert_eq!(f["X-Uid"], "u1");
        assert_eq!(f["X-Client-Version"], "web-1.2.3");
        assert_eq!(f["X-Device"], "phone");
        assert!(!f["X-Trace-ID"].is_empty());
        let ts: u64 = f["ts"].parse().unwrap();
        assert!(ts > 1_700_000_000_000, "{f:?}");
    }
    assert_eq!(of_u1[0]["data"], "null");
    assert_eq!(of_u1[1]["data"], r#"{"typing":true}"#);
    assert_eq!(of_u1[1]["X-Guid"], "doc:1");
    assert_eq!(of_u1[1]["X-Trace-ID"], "t-42");
    assert_eq!(of_u1[2]["data"], r#""plain""#);
    assert_eq!(of_u1[2]["X-Guid"], "");
    assert_ne!(of_u1[2]["X-Trace-ID"], of_u1[0]["X-Trace-ID"]);
    let of_u2: Vec<_> = got.iter().filter(|f| f["X-Uid"] == "u2").collect();
    assert_eq!(of_u2.len(), 2, "{got:#?}");
    assert_eq!(of_u2[0]["X-Client-Version"], "ios-7");
    // Counted once the replies are in (a moment after the entries are readable).
    let n = a.wait_stat("/cluster/upstream_events_total", 6, READ_TIMEOUT);
    assert_eq!(n, 6);
}

/// Fast session sync and sweep for tests: stale after 3 × 1 s + 3 s.
const FAST_STATE: [&str; 6] = [
    "--set",
    "cluster.sync_interval=1",
    "--set",
    "cluster.sweep_interval=1",
    "--set",
    "cluster.node_lease_ttl=3",
];

fn zscore(r: &mut redis::Connection, key: &str, member: &str) -> Option<f64> {
    redis::cmd("ZSCORE").arg(key).arg(member).query(r).unwrap()
}

fn hash(r: &mut redis::Connection, key: &str) -> std::collections::HashMap<String, String> {
    redis::cmd("HGETALL").arg(key).query(r).unwrap()
}

#[test]
fn session_state_lives_in_redis_and_a_killed_nodes_sessions_are_swept() {
    let redis = RedisServer::start();
    let mut a = node(&redis, &FAST_STATE);
    let mut b = node(&redis, &FAST_STATE);
    let node_a = a.stats()["cluster"]["node_id"].as_u64().unwrap();
    let mut on_a = connect(&a, "u1", "phone", "channels=doc:1,doc:2");
    let mut on_b = connect(&b, "u2", "laptop", "channels=doc:1");
    let (sid_a, sid_b) = (on_a.sid(), on_b.sid());
    let mut r = redis.client();

    // Written on connect and subscribe, with the seed's keys.
    let h = eventually(READ_TIMEOUT, || {
        let h = hash(&mut r, &format!("ws:client:{sid_a}"));
        (h.get("channels").map(String::as_str) == Some(r#"["doc:1","doc:2"]"#)).then_some(h)
    })
    .expect("ws:client hash of the session on A");
    assert_eq!(h["user"], "u1");
    assert_eq!(h["device"], "phone");
    assert_eq!(h["node"], node_a.to_string());
    assert!(zscore(&mut r, "ws:user:clients:u1", &sid_a).is_some());
    assert!(zscore(&mut r, "ws:guid:clients:doc:2", &sid_a).is_some());
    let ok = eventually(READ_TIMEOUT, || {
        let a = zscore(&mut r, "ws:guid:clients:doc:1", &sid_a)?;
        let b = zscore(&mut r, "ws:guid:clients:doc:1", &sid_b)?;
        Some((a, b))
    });
    assert!(ok.is_some(), "both members of doc:1");

    // Unsubscribe removes the membership.
    let reply = on_a
        .ws
        .call(json!({"op":"unsubscribe","channels":["doc:2"],"id":1}));
    assert_eq!(reply["ok"], true);
    let gone = eventually(READ_TIMEOUT, || {
        zscore(&mut r, "ws:guid:clients:doc:2", &sid_a)
            .is_none()
            .then_some(())
    });
    assert!(gone.is_some(), "membership of doc:2 removed");

    // Last-seen moves forward with the batched sync (every second here), not with each heartbeat.
    let first = zscore(&mut r, "ws:clients", &sid_a).unwrap();
    let later = eventually(Duration::from_secs(4), || {
        zscore(&mut r, "ws:user:clients:u1", &sid_a).filter(|&s| s > first)
    });
    assert!(later.is_some(), "last-seen of {sid_a} refreshed");

    // A node killed with SIGKILL leaves its entries; another node sweeps them once they are stale
    // (3 × sync_interval + node_lease_ttl = 6 s); the live node's entries stay.
    a.signal(libc::SIGKILL);
    assert!(a.wait_exit(Duration::from_secs(5)).is_some(), "SIGKILL");
    assert!(
        zscore(&mut r, "ws:clients", &sid_a).is_some(),
        "left behind at first"
    );
    let swept = eventually(Duration::from_secs(15), || {
        let all_gone = zscore(&mut r, "ws:clients", &sid_a).is_none()
            && zscore(&mut r, "ws:user:clients:u1", &sid_a).is_none()
            && zscore(&mut r, "ws:guid:clients:doc:1", &sid_a).is_none()
            && hash(&mut r, &format!("ws:client:{sid_a}")).is_empty();
        all_gone.then_some(())
    });
    assert!(
        swept.is_some(),
        "the killed node's session was not swept\n{}",
        b.describe()
    );
    assert!(
        zscore(&mut r, "ws:clients", &sid_b).is_some(),
        "live session kept"
    );
    assert!(zscore(&mut r, "ws:guid:clients:doc:1", &sid_b).is_some());
    assert_eq!(hash(&mut r, &format!("ws:client:{sid_b}"))["user"], "u2");
    assert!(
        b.stats()["cluster"]["sessions_swept_total"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // A closed connection is deleted at once.
    on_b.ws.send_close(1000, "");
    on_b.ws.expect_close("close handshake");
    let deleted = eventually(READ_TIMEOUT, || {
        (zscore(&mut r, "ws:clients", &sid_b).is_none()
            && zscore(&mut r, "ws:user:clients:u2", &sid_b).is_none()
            && hash(&mut r, &format!("ws:client:{sid_b}")).is_empty())
        .then_some(())
    });
    assert!(deleted.is_some(), "closed session deleted");

    // A graceful stop (SIGTERM) removes the node's sessions on the way out.
    let on_b2 = connect(&b, "u2", "tablet", "channels=doc:3");
    let sid_b2 = on_b2.sid();
    let written = eventually(READ_TIMEOUT, || {
        zscore(&mut r, "ws:guid:clients:doc:3", &sid_b2).map(|_| ())
    });
    assert!(written.is_some());
    b.signal(libc::SIGTERM);
    assert!(b.wait_exit(Duration::from_secs(10)).is_some(), "SIGTERM");
    assert!(zscore(&mut r, "ws:clients", &sid_b2).is_none());
    assert!(zscore(&mut r, "ws:guid:clients:doc:3", &sid_b2).is_none());
    assert!(hash(&mut r, &format!("ws:client:{sid_b2}")).is_empty());
}

#[test]
fn presence_and_user_lookups_are_cluster_wide() {
    let mut redis = RedisServer::start();
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis, &[])).collect();
    let u1_a = connect(&nodes[0], "u1", "phone", "channels=lobby");
    let u2_b = connect(&nodes[1], "u2", "phone", "channels=lobby");
    let u3_c = connect(&nodes[2], "u3", "phone", "channels=lobby");
    let u1_c = connect(&nodes[2], "u1", "laptop", "channels=other");
    let mut want: Vec<u64> = [u1_a.sid(), u2_b.sid(), u3_c.sid()]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    want.sort();

    // From every node: all three members, paged by socket id.
    for n in &nodes {
        let mut api = Http::connect(n.api);
        let first = eventually(READ_TIMEOUT, || {
            let r = api.get("/api/presence?channel=lobby&limit=2");
            (r.status == 200 && r.json()["total"] == 3).then(|| r.json())
        })
        .expect("three members of lobby");
        assert_eq!(first["scope"], "cluster");
        let cursor = first["next_cursor"].as_str().unwrap().to_string();
        let second = api
            .get(&format!(
                "/api/presence?channel=lobby&limit=2&cursor={cursor}"
            ))
            .json();
        assert_eq!(second["next_cursor"], Value::Null);
        let members: Vec<&Value> = first["members"]
            .as_array()
            .unwrap()
            .iter()
            .chain(second["members"].as_array().unwrap())
            .collect();
        let sids: Vec<u64> = members
            .iter()
            .map(|m| m["sid"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(sids, want);
        let mut users: Vec<&str> = members
            .iter()
            .map(|m| m["user"].as_str().unwrap())
            .collect();
        users.sort();
        assert_eq!(users, ["u1", "u2", "u3"]);
    }

    // A user's connections on every node, asked on a node holding none of them.
    let mut api = Http::connect(nodes[1].api);
    let body = eventually(READ_TIMEOUT, || {
        let b = api.get("/api/user/u1").json();
        (b["connections"].as_array()?.len() == 2).then_some(b)
    })
    .expect("u1 has two connections");
    assert_eq!(body["scope"], "cluster");
    let conns = body["connections"].as_array().unwrap();
    let by_sid = |sid: &str| conns.iter().find(|c| c["sid"] == sid).unwrap().clone();
    let on_a = by_sid(&u1_a.sid());
    assert_eq!(on_a["node"], u1_a.node_of());
    assert_eq!(on_a["device"], "phone");
    assert_eq!(on_a["channels"], json!(["lobby"]));
    assert!(on_a["last_seen_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(by_sid(&u1_c.sid())["channels"], json!(["other"]));
    // On a node that holds one: that one with its full local details.
    let local = Http::connect(nodes[0].api).get("/api/user/u1").json();
    let mine = local["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["sid"] == u1_a.sid().as_str())
        .unwrap()
        .clone();
    assert!(mine["exp"].as_u64().is_some() && mine["allowed_channels"] == json!(["*"]));
    assert_eq!(local["connections"].as_array().unwrap().len(), 2);

    // Redis down: this node's view, quickly, saying so.
    redis.kill();
    let t = std::time::Instant::now();
    let r = api.get("/api/presence?channel=lobby");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let body = r.json();
    assert_eq!(
        (r.status, body["scope"].clone()),
        (200, json!("node")),
        "{body}"
    );
    assert!(body["cluster_error"].as_str().is_some(), "{body}");
    assert_eq!(body["total"], 1, "u2 on this node: {body}");
    let body = api.get("/api/user/u2").json();
    assert_eq!(body["scope"], "node", "{body}");
    assert_eq!(body["connections"].as_array().unwrap().len(), 1);
}

#[test]
fn a_large_replay_comes_in_chunks_without_a_slow_consumer_close() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    // 60 pushes of 30 KB while offline: 1.8 MB, more than ws.max_outbound_bytes (1 MiB) at once.
    let pad = "x".repeat(30_000);
    let mut api = Http::connect(a.api);
    for n in 0..60 {
        let r = api.post_json(
            "/api/publish",
            &json!({"user":"big","data":{"n":n,"pad":pad}}).to_string(),
        );
        assert_eq!(r.status, 200, "{r}");
    }
    wait_stored(&redis, "big", 60);
    let mut u = connect(&a, "big", "phone", "");
    let got: Vec<i64> = u
        .replayed
        .iter()
        .map(|v| v["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(got, (0..60).collect::<Vec<i64>>());
    assert_eq!(u.done["ok"], true, "{}", u.done);
    assert_eq!(u.done["count"], 60);
    assert_eq!(u.done["last"], u.replayed[59]["id"]);
    // Still connected and live.
    push_user(&a, "big", json!("live"));
    let (data, _) = user_frame(&u.ws.expect_json("live after a big replay"), "big");
    assert_eq!(data, json!("live"));
}

#[test]
fn sessions_replay_and_upstream_work_on_redis_cluster() {
    let redis = RedisServer::start_cluster();
    let mut r = redis.client();
    let mode = ["--set", "cluster.redis_mode=cluster"];
    let a = node(&redis, &mode);
    let b = node(&redis, &mode);
    push_user(&a, "u1", json!("stored"));
    wait_stored(&redis, "u1", 1);
    let mut u = connect(&b, "u1", "phone", "channels=room");
    assert_eq!(u.replayed.len(), 1, "{:?}", u.replayed);
    assert_eq!(u.replayed[0]["data"], "stored");
    push_user(&a, "u1", json!("live"));
    let (data, id) = user_frame(&u.ws.expect_json("live push"), "u1");
    assert_eq!(data, json!("live"));
    u.ws.send_text(&json!({"op":"ack","id":id}).to_string());
    let sid = u.sid();
    let stored = eventually(READ_TIMEOUT, || {
        let h = hash(&mut r, &format!("ws:client:{sid}"));
        let ack: Option<String> = redis::cmd("HGET")
            .arg("ws:ack:u1")
            .arg("phone")
            .query(&mut r)
            .ok()?;
        (h.get("user").map(String::as_str) == Some("u1") && ack.as_deref() == Some(id.as_str()))
            .then_some(())
    });
    assert!(stored.is_some(), "session hash and ack in Redis Cluster");
    let presence = eventually(READ_TIMEOUT, || {
        let b = Http::connect(a.api)
            .get("/api/presence?channel=room")
            .json();
        (b["total"] == 1).then_some(b)
    })
    .expect("presence from the other node");
    assert_eq!(presence["scope"], "cluster");
    let len: usize = redis::cmd("XLEN")
        .arg("wsgate:upstream")
        .query(&mut r)
        .unwrap();
    assert!(len >= 1, "the connect event");
}

#[test]
fn redis_outage_user_pushes_still_reach_local_connections_and_state_is_rewritten() {
    let mut redis = RedisServer::start();
    let a = node(&redis, &FAST_STATE);
    let mut u = connect(&a, "u1", "phone", "channels=room");
    let sid = u.sid();
    let mut r = redis.client();
    let written = eventually(READ_TIMEOUT, || {
        (!hash(&mut r, &format!("ws:client:{sid}")).is_empty()).then_some(())
    });
    assert!(written.is_some());

    // Redis down: after a second the push goes to this node's connections at once, without an id.
    redis.kill();
    push_user(&a, "u1", json!("during the outage"));
    let v = u.ws.expect_json("local push while Redis is down");
    assert_eq!(v, json!({"user":"u1","data":"during the outage"}));

    // Redis back without its data: the node rewrites its sessions, and stores the push for replay then.
    redis.restart();
    let mut r = redis.client();
    let back = eventually(Duration::from_secs(15), || {
        let h = hash(&mut r, &format!("ws:client:{sid}"));
        let n: usize = redis::cmd("XLEN")
            .arg("stream:notify:u1")
            .query(&mut r)
            .ok()?;
        (h.get("channels").map(String::as_str) == Some(r#"["room"]"#) && n == 1).then_some(())
    });
    assert!(
        back.is_some(),
        "state rewritten and push stored after the restart\n{}",
        a.describe()
    );
    assert!(zscore(&mut r, "ws:guid:clients:room", &sid).is_some());
    u.ws.expect_silence(Duration::from_millis(300), "not delivered twice");
}
