//! Delivery guarantees of user pushes on a standalone node, against the real binary: acks and retransmit on a
//! live connection (`"ack": true`), what happens when a client does not ack, and the in-memory replay of missed
//! pushes at reconnect (the cluster's protocol: ids, `?since=`, cumulative `op: ack` per device).

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn token(sub: &str, device: &str) -> String {
    hs256(&json!({"sub": sub, "device": device, "exp": unix_now() + 300, "channels": ["*"]}))
}

/// Connects `sub`/`device` with the extra `query` and reads up to the end of its replay: (connection, replayed
/// pushes, the `{"type":"replay"}` frame).
fn connect(g: &Server, sub: &str, device: &str, query: &str) -> (RawWs, Vec<Value>, Value) {
    let mut ws = RawWs::connect(g.ws, &format!("/ws?token={}{query}", token(sub, device)));
    let mut replayed = Vec::new();
    loop {
        let v = ws.expect_json("replay");
        if v["type"] == "replay" {
            return (ws, replayed, v);
        }
        replayed.push(v);
    }
}

fn push(g: &Server, body: Value) -> HttpResponse {
    Http::connect(g.api).post_json("/api/publish", &body.to_string())
}

fn sessions(g: &Server, name: &str) -> u64 {
    g.stats()["sessions"][name].as_u64().unwrap_or(0)
}

#[test]
fn a_client_that_drops_the_first_delivery_gets_it_again_marked_retry() {
    // 200 ms rather than the default 50 ms, so that a loaded test machine still acks in time where it must.
    let g = Server::start(&[&JWT_ARGS[..], &["--set", "delivery.ack_timeout=200"]].concat());
    let (mut ws, replayed, done) = connect(&g, "u1", "phone", "");
    assert_eq!(
        (replayed.len(), done),
        (0, json!({"type":"replay","ok":true,"count":0,"last":null}))
    );

    // The client acks at once: no retransmit.
    assert_eq!(
        push(&g, json!({"user":"u1","data":1,"ack":true})).status,
        200
    );
    let first = ws.expect_json("first push");
    assert_eq!((&first["data"], &first["ack"]), (&json!(1), &json!(true)));
    let id1 = first["id"].as_str().unwrap().to_string();
    ws.send_text(&json!({"op":"ack","id":id1}).to_string());
    ws.expect_silence(Duration::from_millis(400), "acked push");

    // The client "loses" the first delivery: it comes again, same id, marked retry 1, about 200 ms later.
    assert_eq!(
        push(&g, json!({"user":"u1","data":2,"ack":true})).status,
        200
    );
    let dropped = ws.expect_json("second push");
    let id2 = dropped["id"].as_str().unwrap().to_string();
    assert!(id2 > id1, "{id2} after {id1}");
    assert!(dropped.get("retry").is_none(), "{dropped}");
    let t = Instant::now();
    let again = ws.expect_json("retransmit");
    assert_eq!(
        again,
        json!({"user":"u1","data":2,"id":id2,"ack":true,"retry":1})
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_millis(2000),
        "{waited:?}"
    );
    // Dedup by id is the client's; acking the retry ends it.
    ws.send_text(&json!({"op":"ack","id":id2}).to_string());
    ws.expect_silence(Duration::from_millis(900), "acked retransmit");

    // Pushes without "ack" are never retransmitted, but carry their id for replay.
    assert_eq!(push(&g, json!({"user":"u1","data":3})).status, 200);
    let plain = ws.expect_json("push without ack");
    assert!(
        plain.get("ack").is_none() && plain["id"].is_string(),
        "{plain}"
    );
    ws.expect_silence(Duration::from_millis(300), "push without ack");
    let acked = eventually(Duration::from_secs(2), || {
        (sessions(&g, "acked_messages_total") == 2).then_some(())
    });
    assert!(acked.is_some(), "{}", g.stats()["sessions"]);
    assert!(sessions(&g, "ack_retransmits_total") >= 1);
}

#[test]
fn unacked_pushes_close_the_connection_and_come_back_at_the_reconnect() {
    let g = Server::start(
        &[
            &JWT_ARGS[..],
            &[
                "--set",
                "delivery.ack_timeout=20",
                "--set",
                "delivery.max_attempts=3",
            ],
        ]
        .concat(),
    );
    // Never acked: sent 3 times (retry 1, 2), then close 4010.
    let (mut ws, _, _) = connect(&g, "u1", "phone", "");
    assert_eq!(
        push(&g, json!({"user":"u1","data":"a","ack":true})).status,
        200
    );
    let (close, before) = ws.expect_close_within("ack timeout", Duration::from_secs(3));
    assert_eq!(close.close_code(), Some(4010), "{close}");
    let texts: Vec<Value> = before
        .iter()
        .map(|f| serde_json::from_slice(&f.payload).unwrap())
        .collect();
    let retries: Vec<&Value> = texts.iter().map(|v| &v["retry"]).collect();
    assert_eq!(retries, [&Value::Null, &json!(1), &json!(2)], "{texts:?}");

    // The reconnect replays it (the device never acked), marked replay; acked, it is not replayed again.
    let (mut ws, replayed, done) = connect(&g, "u1", "phone", "");
    assert_eq!(replayed.len(), 1, "{replayed:?}");
    assert_eq!(
        (&replayed[0]["data"], &replayed[0]["replay"]),
        (&json!("a"), &json!(true))
    );
    assert_eq!(done["count"], 1);
    ws.send_text(&json!({"op":"ack","id":replayed[0]["id"]}).to_string());
    let r = ws.call(json!({"op":"ping","id":1}));
    assert_eq!(r["type"], "pong", "the ack was taken before: {r}");
    assert_eq!(sessions(&g, "ack_timeout_closes_total"), 1);

    // More than delivery.max_unacked waiting: close 4010; the third push is not sent, it waits for the replay.
    let g = Server::start(
        &[
            &JWT_ARGS[..],
            &[
                "--set",
                "delivery.ack_timeout=5000",
                "--set",
                "delivery.max_unacked=2",
            ],
        ]
        .concat(),
    );
    let (mut ws, _, _) = connect(&g, "u1", "phone", "");
    for n in 0..3 {
        assert_eq!(
            push(&g, json!({"user":"u1","data":n,"ack":true})).status,
            200
        );
    }
    let (close, _) = ws.expect_close_within("unacked overflow", Duration::from_secs(3));
    assert_eq!(close.close_code(), Some(4010), "{close}");
    assert!(close.to_string().contains("unacknowledged"), "{close}");
    let (_ws, replayed, _) = connect(&g, "u1", "phone", "");
    let data: Vec<&Value> = replayed.iter().map(|v| &v["data"]).collect();
    assert_eq!(data, [&json!(0), &json!(1), &json!(2)], "{replayed:?}");
    assert_eq!(sessions(&g, "unacked_overflow_closes_total"), 1);
}

#[test]
fn a_reconnect_gets_what_it_missed_exactly_once_in_order() {
    let g = Server::start(&JWT_ARGS);
    let (mut ws, _, _) = connect(&g, "u1", "phone", "");
    let mut ids = Vec::new();
    for n in 0..3 {
        assert_eq!(push(&g, json!({"user":"u1","data":n})).status, 200);
        let v = ws.expect_json("live push");
        assert_eq!(v["data"], n);
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    // Processed up to the second; the third is lost with the connection.
    ws.send_text(&json!({"op":"ack","id":ids[1]}).to_string());
    let r = ws.call(json!({"op":"ack","id":"nope"}));
    assert_eq!(r["ok"], false, "{r}");
    let r = ws.call(json!({"op":"ack","id":"99999999999999-0"}));
    assert_eq!(r["ok"], false, "{r}");
    drop(ws);
    for n in 3..5 {
        assert_eq!(push(&g, json!({"user":"u1","data":n})).status, 200);
    }
    // Another device of the user, and another user, are not affected.
    assert_eq!(
        push(&g, json!({"user":"u1","device":"laptop","data":"l"})).status,
        200
    );
    assert_eq!(push(&g, json!({"user":"u2","data":"x"})).status, 200);

    let (mut ws, replayed, done) = connect(&g, "u1", "phone", "");
    let data: Vec<&Value> = replayed.iter().map(|v| &v["data"]).collect();
    assert_eq!(data, [&json!(2), &json!(3), &json!(4)], "{replayed:?}");
    assert!(replayed.iter().all(|v| v["replay"] == true));
    assert_eq!(done["last"], replayed[2]["id"]);
    // Live again after the replay.
    assert_eq!(push(&g, json!({"user":"u1","data":5})).status, 200);
    assert_eq!(ws.expect_json("live after replay")["data"], 5);

    // ?since= picks the start; $ skips the replay.
    let since = replayed[1]["id"].as_str().unwrap();
    let (_, replayed, _) = connect(&g, "u1", "phone", &format!("&since={since}"));
    let data: Vec<&Value> = replayed.iter().map(|v| &v["data"]).collect();
    assert_eq!(data, [&json!(4), &json!(5)], "{replayed:?}");
    let mut ws = RawWs::connect(g.ws, &format!("/ws?token={}&since=$", token("u1", "phone")));
    assert_eq!(push(&g, json!({"user":"u1","data":6})).status, 200);
    assert_eq!(ws.expect_json("no replay with since=$")["data"], 6);
    assert_eq!(sessions(&g, "replay_store_messages"), 9);
    assert!(sessions(&g, "replay_store_bytes") > 9 * 128);
}

#[test]
fn ack_is_for_user_pushes_only() {
    let g = Server::start(&JWT_ARGS);
    for body in [
        json!({"channel":"c","data":1,"ack":true}),
        json!({"sid":"1","data":1,"ack":true}),
    ] {
        let r = push(&g, body);
        assert_eq!(r.status, 400, "{r}");
        assert_eq!(r.json()["error"], "\"ack\" needs \"user\"", "{r}");
    }
    let g = Server::start(&[&JWT_ARGS[..], &["--set", "delivery.offline_maxlen=0"]].concat());
    let r = push(&g, json!({"user":"u1","data":1,"ack":true}));
    assert_eq!(r.status, 400, "{r}");
}

/// Cluster mode speaks the same protocol: a push with `"ack": true` accepted on one node is retransmitted by the
/// node that holds the connection, and replayed with its `"ack"` mark.
#[test]
fn cluster_nodes_retransmit_and_replay_the_same_way() {
    let redis = common::redis_server::RedisServer::start();
    let set = format!("cluster.redis={}", redis.url());
    let args = ["--set", set.as_str(), "--set", "delivery.ack_timeout=300"];
    let node = || Server::start(&[&JWT_ARGS[..], &args[..]].concat());
    let (a, b) = (node(), node());
    let (mut ws, _, done) = connect(&a, "u1", "phone", "");
    assert_eq!(done["ok"], true, "{done}");

    assert_eq!(
        push(&b, json!({"user":"u1","data":1,"ack":true})).status,
        200
    );
    let first = ws.expect_json("push from the other node");
    let id = first["id"].as_str().unwrap().to_string();
    assert_eq!(first["ack"], true, "{first}");
    assert_eq!(
        ws.expect_json("retransmit"),
        json!({"user":"u1","data":1,"id":id,"ack":true,"retry":1})
    );
    ws.send_text(&json!({"op":"ack","id":id}).to_string());
    ws.expect_silence(Duration::from_millis(500), "acked");
    drop(ws);

    assert_eq!(
        push(&a, json!({"user":"u1","data":2,"ack":true})).status,
        200
    );
    let stored = eventually(Duration::from_secs(5), || {
        let (_, replayed, _) = connect(&b, "u1", "phone", &format!("&since={id}"));
        (replayed.len() == 1).then_some(replayed)
    })
    .expect("the push made while away is replayed");
    assert_eq!(
        (&stored[0]["data"], &stored[0]["replay"], &stored[0]["ack"]),
        (&json!(2), &json!(true), &json!(true))
    );
}

/// A replay larger than one chunk (256 KiB) comes in order, whole, and is followed by live pushes.
#[test]
fn a_long_replay_comes_in_chunks_in_order() {
    let g = Server::start(&JWT_ARGS);
    let big = "y".repeat(3000);
    let mut api = Http::connect(g.api);
    for n in 0..200 {
        let r = api.post_json(
            "/api/publish",
            &json!({"user":"u1","data":{"n":n,"pad":big}}).to_string(),
        );
        assert_eq!(r.status, 200, "{r}");
    }
    let (mut ws, replayed, done) = connect(&g, "u1", "phone", "");
    let ns: Vec<u64> = replayed
        .iter()
        .map(|v| v["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (0..200).collect::<Vec<u64>>());
    assert_eq!(
        (done["count"].clone(), done["ok"].clone()),
        (json!(200), json!(true))
    );
    assert_eq!(push(&g, json!({"user":"u1","data":"live"})).status, 200);
    assert_eq!(ws.expect_json("live after a long replay")["data"], "live");
}
