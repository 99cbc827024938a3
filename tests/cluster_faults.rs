//! The cluster under faults, against the real binary and a real redis-server (started here; stopped with SIGSTOP,
//! resumed and killed by its own PID only): a Redis that accepts connections but never answers does not stall
//! publishes, presence lookups, local user pushes, start-up or shutdown; node ids stay unique when Redis loses its
//! data; acks neither replay twice nor mute a device; one forged bus entry does not silence a node; the publisher
//! learns when an event could not be federated.

mod common;

use common::redis_server::RedisServer;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A gateway in cluster mode on `redis` with JWT auth, plus `extra` arguments.
fn node(redis: &RedisServer, extra: &[&str]) -> Server {
    let set = format!("cluster.redis={}", redis.url());
    let mut args: Vec<&str> = JWT_ARGS.to_vec();
    args.extend_from_slice(&["--set", set.as_str()]);
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn user_ws(s: &Server, sub: &str, device: &str) -> RawWs {
    let token =
        hs256(&json!({"sub": sub, "device": device, "exp": unix_now() + 600, "channels": ["*"]}));
    let mut ws = RawWs::connect(s.ws, &format!("/ws?token={token}&channels=room"));
    // Up to the end of its (empty) replay.
    while ws.expect_json("replay")["type"] != "replay" {}
    ws
}

/// Publishes `data` to channel `room` on a keep-alive connection; the time the answer took.
fn timed_publish(api: &mut Http, data: &Value) -> Duration {
    let t = Instant::now();
    let r = api.post_json(
        "/api/publish",
        &json!({"channel": "room", "data": data}).to_string(),
    );
    assert_eq!(r.status, 200, "publish: {r}");
    t.elapsed()
}

#[test]
fn a_hung_redis_stalls_neither_publishes_nor_lookups_nor_local_user_pushes_nor_shutdown() {
    let redis = RedisServer::start();
    let mut a = node(&redis, &["--set", "server.shutdown_timeout=1"]);
    let mut u = user_ws(&a, "u1", "phone");
    let mut api = Http::connect(a.api);
    let mut normal = Duration::ZERO;
    for k in 0..10 {
        normal = normal.max(timed_publish(&mut api, &json!(k)));
        assert_eq!(
            u.expect_json("baseline publish"),
            json!({"channel": "room", "data": k})
        );
    }

    redis.pause();
    let hung = Instant::now();
    // A cluster-wide presence lookup during the hang: answered from this node, within its bound.
    let api_addr = a.api;
    let lookup = std::thread::spawn(move || {
        // Pipelined behind the lookup on its connection: answered after it, in order.
        let mut c = Http::connect(api_addr);
        let mut two = c.build("GET", "/api/presence?channel=room", &[], b"");
        two.extend(c.build("GET", "/healthz", &[], b""));
        let t = Instant::now();
        c.send(&two);
        let r = c.read_response(READ_TIMEOUT).expect("presence answer");
        let took = t.elapsed();
        let health = c.read_response(READ_TIMEOUT).expect("healthz answer");
        assert_eq!((health.status, health.json()), (200, json!({"ok": true})));
        (r, took)
    });
    std::thread::sleep(Duration::from_millis(100));
    // Publishes meanwhile answer as fast as ever (they never wait behind the lookup), and are delivered.
    let mut slowest = Duration::ZERO;
    for k in 100..120 {
        slowest = slowest.max(timed_publish(&mut api, &json!(k)));
        assert_eq!(
            u.expect_json("publish during the hang"),
            json!({"channel": "room", "data": k})
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        slowest < Duration::from_secs(1).max(normal * 10),
        "publish took {slowest:?} during the hang (normal {normal:?})"
    );
    assert_eq!(http_get(a.api, "/healthz").status, 200);
    let (r, took) = lookup.join().unwrap();
    assert_eq!(r.status, 200, "presence during the hang: {r}");
    assert_eq!(r.json()["scope"], "node", "{r}");
    assert!(r.json()["cluster_error"].is_string(), "{r}");
    assert!(took < Duration::from_secs(3), "presence took {took:?}");

    // A local user push leaves without its id within the documented bound (~2.5 s).
    let pushed = Instant::now();
    let r = api.post_json(
        "/api/publish",
        &json!({"user": "u1", "data": "while hung"}).to_string(),
    );
    assert_eq!(r.status, 200, "{r}");
    let v = match u.next_message(Duration::from_secs(5)) {
        Ok(f) => serde_json::from_slice::<Value>(&f.payload).unwrap(),
        Err(e) => panic!("local user push during the hang: {e}\n{}", a.describe()),
    };
    assert_eq!(v, json!({"user": "u1", "data": "while hung"}));
    let waited = pushed.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "user push waited {waited:?}"
    );

    // SIGTERM during the hang: the node exits within server.shutdown_timeout plus its Redis I/O bounds.
    a.signal(libc::SIGTERM);
    let t = Instant::now();
    let status = a.wait_exit(Duration::from_secs(20));
    let exit_took = t.elapsed();
    assert!(
        status.is_some(),
        "no exit 20 s after SIGTERM while Redis hung\n{}",
        a.describe()
    );
    assert!(
        exit_took < Duration::from_secs(1 + 9),
        "exit took {exit_took:?}"
    );
    eprintln!(
        "hung Redis: publish normal {normal:?}, slowest during the hang {slowest:?}; presence {took:?}; \
         local user push {waited:?}; exit after SIGTERM {exit_took:?}"
    );
    assert!(hung.elapsed() < Duration::from_secs(30));
    redis.resume();
}

/// One reactor serves every API connection: a lookup held for a hung Redis holds up only its own connection. The
/// reactor's other connections publish at their usual pace meanwhile, and the requests pipelined behind the lookup
/// are answered after it, in order — the publish among them reaches the subscriber after the other connection's.
#[test]
fn a_held_lookup_holds_up_only_its_own_connection() {
    let redis = RedisServer::start();
    let a = node(&redis, &["--set", "server.threads=1"]);
    let mut u = user_ws(&a, "u1", "phone");
    let mut api = Http::connect(a.api);
    let normal = timed_publish(&mut api, &json!("first"));
    assert_eq!(u.expect_json("first")["data"], "first");

    redis.pause();
    let mut held = Http::connect(a.api);
    let mut wire = held.build("GET", "/api/presence?channel=room", &[], b"");
    let body = json!({"channel": "room", "data": "behind the lookup"}).to_string();
    wire.extend(held.build("POST", "/api/publish", &[], body.as_bytes()));
    wire.extend(held.build("GET", "/healthz", &[], b""));
    held.send(&wire);
    std::thread::sleep(Duration::from_millis(100));
    let mut slowest = Duration::ZERO;
    for k in 0..5 {
        slowest = slowest.max(timed_publish(&mut api, &json!(k)));
        assert_eq!(u.expect_json("while held")["data"], json!(k));
    }
    assert!(
        slowest < Duration::from_millis(500).max(normal * 10),
        "publishes beside a held lookup took {slowest:?} (normal {normal:?})"
    );
    let presence = held.read_response(READ_TIMEOUT).expect("presence answer");
    assert_eq!(presence.status, 200, "{presence}");
    assert_eq!(presence.json()["scope"], "node", "{presence}");
    let published = held.read_response(READ_TIMEOUT).expect("publish answer");
    assert_eq!(published.status, 200, "{published}");
    let health = held.read_response(READ_TIMEOUT).expect("healthz answer");
    assert_eq!((health.status, health.json()), (200, json!({"ok": true})));
    assert_eq!(u.expect_json("behind")["data"], "behind the lookup");
    redis.resume();
}

/// Start-up against a hung Redis ends within `cluster.startup_timeout` with an error naming the cause (a single
/// server, and Redis Cluster).
#[test]
fn start_up_against_a_hung_redis_honours_startup_timeout() {
    for mode in ["standalone", "cluster"] {
        let redis = match mode {
            "cluster" => RedisServer::start_cluster(),
            _ => RedisServer::start(),
        };
        redis.pause();
        let set = format!("cluster.redis={}", redis.url());
        let set_mode = format!("cluster.redis_mode={mode}");
        let t = Instant::now();
        let out = run_cli(
            &[
                "--set",
                &set,
                "--set",
                &set_mode,
                "--set",
                "cluster.startup_timeout=2",
            ],
            &[],
            true,
            Duration::from_secs(20),
        );
        let took = t.elapsed();
        redis.resume();
        assert_ne!(out.code(), Some(0), "{mode}: {out:?}");
        assert!(
            took < Duration::from_secs(6),
            "{mode}: start-up gave up after {took:?}"
        );
        assert!(
            out.stderr.contains("cluster.startup_timeout"),
            "{mode}: {out:?}"
        );
    }
}

fn sid_node(ws: &RawWs) -> u64 {
    let sid: u64 = ws.welcome_frame()["sid"].as_str().unwrap().parse().unwrap();
    (sid >> 13) & 1023
}

#[test]
fn a_node_started_right_after_redis_lost_its_data_does_not_take_a_live_nodes_id() {
    let mut redis = RedisServer::start();
    let q = ["--set", "cluster.node_id_quarantine=3"];
    let a = node(&redis, &q);
    let a_id = a.stats()["cluster"]["node_id"].as_u64().unwrap();
    let wa = user_ws(&a, "ua", "d");
    assert_eq!(sid_node(&wa), a_id);

    // Redis restarts without its data (every lease gone) and a new node starts at once.
    redis.restart();
    let b = node(&redis, &q);
    let b_id = b.stats()["cluster"]["node_id"].as_u64().unwrap();
    assert_ne!(a_id, b_id, "two live nodes lease the same id");
    let wb = user_ws(&b, "ub", "d");
    assert_eq!(sid_node(&wb), b_id);
    assert_ne!(sid_node(&wa), sid_node(&wb));
    // Both hold their own lease; neither finds its id taken.
    for (n, id) in [(&a, a_id), (&b, b_id)] {
        let c = n.stats()["cluster"].clone();
        assert_eq!(c["lease_held"], 1, "node {id}: {c}");
        assert_eq!(c["node_id_taken"], 0, "node {id}: {c}");
    }
}

#[test]
fn a_node_whose_id_is_taken_opens_no_connections_until_it_is_its_own_again() {
    let redis = RedisServer::start();
    let a = node(&redis, &["--set", "server.node_id=5"]);
    let token = hs256(&json!({"sub": "u1", "exp": unix_now() + 600}));
    let path = format!("/ws?token={token}");
    assert_eq!(upgrade_response(a.ws, &path, &[]).status, 101);

    // Another instance's record on id 5; dropping the id mark makes the node re-assert at once.
    let mut r = redis.client();
    let foreign = json!({"node_id": 5, "origin": "someone-else"}).to_string();
    let _: () = redis::cmd("SET")
        .arg("wsgate:node:5")
        .arg(&foreign)
        .arg("PX")
        .arg(60_000)
        .query(&mut r)
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg("wsgate:node-ids:since")
        .query(&mut r)
        .unwrap();
    let taken = eventually(READ_TIMEOUT, || {
        (a.stats()["cluster"]["node_id_taken"] == 1).then_some(())
    });
    assert!(
        taken.is_some(),
        "node_id_taken not raised\n{}",
        a.describe()
    );
    assert!(a.wait_log("leased by another instance", READ_TIMEOUT));
    let refused = upgrade_response(a.ws, &path, &[]);
    assert_eq!(refused.status, 503, "{refused}");
    assert!(refused.text().contains("held by another node"), "{refused}");

    // The other instance goes away: the node takes its id back and accepts connections again.
    let _: () = redis::cmd("DEL")
        .arg("wsgate:node:5")
        .query(&mut r)
        .unwrap();
    let back = eventually(Duration::from_secs(10), || {
        (a.stats()["cluster"]["node_id_taken"] == 0).then_some(())
    });
    assert!(back.is_some(), "id not taken back\n{}", a.describe());
    assert_eq!(upgrade_response(a.ws, &path, &[]).status, 101);
}

/// Connects user `sub`/`device` (replay from its stored ack) and returns the connection and what was replayed.
fn user_replay(s: &Server, sub: &str, device: &str) -> (RawWs, Vec<Value>) {
    let token =
        hs256(&json!({"sub": sub, "device": device, "exp": unix_now() + 600, "channels": ["*"]}));
    let mut ws = RawWs::connect(s.ws, &format!("/ws?token={token}"));
    let mut replayed = Vec::new();
    loop {
        let v = ws.expect_json("replay");
        if v["type"] == "replay" {
            return (ws, replayed);
        }
        replayed.push(v);
    }
}

/// Pushes `data` to `user` and returns the frame `ws` gets (with its id).
fn push_and_receive(s: &Server, ws: &mut RawWs, user: &str, data: &str) -> Value {
    let r = Http::connect(s.api).post_json(
        "/api/publish",
        &json!({"user": user, "data": data}).to_string(),
    );
    assert_eq!(r.status, 200, "{r}");
    let v = ws.expect_json("live push");
    assert_eq!(v["data"], data, "{v}");
    assert!(v["id"].is_string(), "push without an id: {v}");
    v
}

#[test]
fn a_device_that_acks_and_reconnects_at_once_gets_no_duplicates() {
    let redis = RedisServer::start();
    let a = node(&redis, &["--set", "cluster.node_id_quarantine=0"]);
    for delay_ms in [0, 50, 100] {
        let (mut ws, _) = user_replay(&a, "u1", "phone");
        let mut last = Value::Null;
        for k in 0..3 {
            last = push_and_receive(&a, &mut ws, "u1", &format!("m{delay_ms}-{k}"));
        }
        ws.send_text(&json!({"op": "ack", "id": last["id"]}).to_string());
        drop(ws);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let (_ws, replayed) = user_replay(&a, "u1", "phone");
        assert!(
            replayed.is_empty(),
            "reconnect {delay_ms} ms after acking {}: replayed again {replayed:?}",
            last["id"]
        );
    }
}

#[test]
fn an_ack_beyond_the_users_messages_is_refused_and_pushes_keep_flowing() {
    let redis = RedisServer::start();
    let a = node(&redis, &["--set", "cluster.node_id_quarantine=0"]);
    let (mut ws, _) = user_replay(&a, "u1", "phone");
    push_and_receive(&a, &mut ws, "u1", "first");
    let future = "99999999999999-0";
    ws.send_text(&json!({"op": "ack", "id": future}).to_string());
    let reply = ws.expect_json("reply to a future ack");
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["id"], future, "{reply}");
    assert_eq!(reply["ok"], false, "{reply}");
    // Live pushes keep flowing, and a reconnect replays what was not acknowledged.
    push_and_receive(&a, &mut ws, "u1", "second");
    drop(ws);
    let (_ws, replayed) = user_replay(&a, "u1", "phone");
    let data: Vec<&Value> = replayed.iter().map(|v| &v["data"]).collect();
    assert_eq!(data, [&json!("first"), &json!("second")], "{replayed:?}");
    let mut r = redis.client();
    let stored: Option<String> = redis::cmd("HGET")
        .arg("ws:ack:u1")
        .arg("phone")
        .query(&mut r)
        .unwrap();
    assert_eq!(stored, None, "the future ack was stored");
}

#[test]
fn one_forged_bus_entry_does_not_silence_a_node() {
    let redis = RedisServer::start();
    let q = ["--set", "cluster.node_id_quarantine=0"];
    let (a, b) = (node(&redis, &q), node(&redis, &q));
    let mut ws = user_ws(&b, "u1", "phone");
    let mut api = Http::connect(a.api);
    timed_publish(&mut api, &json!("before"));
    assert_eq!(
        ws.expect_json("before"),
        json!({"channel": "room", "data": "before"})
    );

    // An entry in a's name with a sequence number far ahead of a's.
    let origin = a.stats()["cluster"]["origin"].as_str().unwrap().to_string();
    let mut r = redis.client();
    let _: String = redis::cmd("XADD")
        .arg("wsgate:bus")
        .arg("*")
        .arg(&[
            ("origin", origin.as_str()),
            ("node", "0"),
            ("seq", "999999999999"),
            ("kind", "channel"),
            ("target", "elsewhere"),
            ("data", "\"forged\""),
            ("trace", "forged-1"),
            ("ts", "1"),
        ])
        .query(&mut r)
        .unwrap();
    // a's later events still reach b.
    for k in 0..3 {
        timed_publish(&mut api, &json!(k));
        assert_eq!(
            ws.expect_json("after the forged entry"),
            json!({"channel": "room", "data": k})
        );
    }
    let c = b.stats()["cluster"].clone();
    assert_eq!(c["events_seq_resets_total"], 1, "{c}");
    assert!(c["events_missed_total"].as_u64().unwrap() <= 100_000, "{c}");
}

#[test]
fn the_publisher_is_told_when_an_event_cannot_be_federated() {
    let mut redis = RedisServer::start();
    let a = node(
        &redis,
        &[
            "--set",
            "cluster.node_id_quarantine=0",
            "--set",
            "cluster.outbox_limit=2",
        ],
    );
    let mut ws = user_ws(&a, "u1", "phone");
    redis.kill();
    let mut api = Http::connect(a.api);
    let publish = |api: &mut Http, path: &str, body: Value| {
        let r = api.post_json(path, &body.to_string());
        assert_eq!(r.status, 200, "{r}");
        r.json()
    };
    for k in 0..2 {
        let r = publish(
            &mut api,
            "/api/publish",
            json!({"channel": "room", "data": k}),
        );
        assert_eq!(r["federated"], true, "{r}");
    }
    // The outbox is full: delivered here, and the publisher learns the other nodes will not get it.
    let r = publish(
        &mut api,
        "/api/publish",
        json!({"channels": ["room", "x"], "data": 2}),
    );
    assert_eq!(r["federated"], false, "{r}");
    assert_eq!(r["not_federated"], 2, "{r}");
    assert!(r["warning"].as_str().unwrap().contains("outbox"), "{r}");
    let r = publish(&mut api, "/api/broadcast", json!({"data": 3}));
    assert_eq!(r["federated"], false, "{r}");
    let r = publish(&mut api, "/api/publish", json!({"user": "u1", "data": 4}));
    assert_eq!(r["federated"], false, "{r}");
    for k in 0..3 {
        assert_eq!(
            ws.expect_json("local delivery"),
            json!({"channel": "room", "data": k})
        );
    }
    assert_eq!(ws.expect_json("broadcast")["data"], 3);
    assert_eq!(ws.expect_json("user push")["data"], 4);
    let dropped = a.stats()["cluster"]["events_dropped_total"]
        .as_u64()
        .unwrap();
    assert_eq!(dropped, 4);
}
