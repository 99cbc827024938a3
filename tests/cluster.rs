//! Cluster federation over a real redis-server (started by the tests on a free port, killed by its PID): several
//! gateway processes on one Redis; publishes and broadcasts accepted on any node reach subscribers on every node
//! exactly once and in order; node ids are leased distinct; bus entries carry the routing fields; hostile bus
//! entries and a garbage-speaking "Redis" are survived; a Redis restart keeps local delivery going and federation
//! resumes; the outbox is bounded while Redis is down; Redis Cluster and Sentinel (with a failover) modes work.

mod common;

use common::redis_server::RedisServer;
use common::*;
use redis::streams::StreamRangeReply;
use serde_json::Value;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BUS: &str = "wsgate:bus";

/// A gateway in cluster mode on `redis`, plus `extra` arguments.
fn node(redis: &RedisServer, extra: &[&str]) -> Server {
    let set = format!("cluster.redis={}", redis.url());
    // A fresh Redis per test, no live node to wait for (the quarantine is tested in tests/cluster_faults.rs).
    let mut args = vec![
        "--set",
        set.as_str(),
        "--set",
        "cluster.node_id_quarantine=0",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn cluster_stats(s: &Server) -> Value {
    let r = http_get(s.api, "/api/stats");
    assert_eq!(r.status, 200, "stats: {r}");
    r.json()["cluster"].clone()
}

fn metric(s: &Server, name: &str) -> f64 {
    let text = http_get(s.api, "/metrics").text();
    metric_value(&text, name).unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

/// Waits (bounded) until metric `name` of `s` satisfies `ok`; panics with the last value otherwise.
fn wait_metric(s: &Server, name: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    let mut last = f64::NAN;
    eventually(timeout, || {
        last = metric(s, name);
        ok(last).then_some(last)
    })
    .unwrap_or_else(|| panic!("{name} = {last} after {timeout:?}\n{}", s.describe()))
}

fn sub(s: &Server, channels: &str) -> RawWs {
    RawWs::connect(s.ws, &format!("/ws?channels={channels}"))
}

fn channel_msg(channel: &str, data: &str) -> String {
    format!(r#"{{"channel":"{channel}","data":{data}}}"#)
}

/// `n` text messages from `ws`, each within the default read timeout.
fn recv_n(ws: &mut RawWs, n: usize, ctx: &str) -> Vec<String> {
    (0..n)
        .map(|i| ws.expect_text(&format!("{ctx} (message {i} of {n})")))
        .collect()
}

fn alive(s: &mut Server) {
    assert!(
        s.wait_exit(Duration::ZERO).is_none(),
        "gateway exited\n{}",
        s.describe()
    );
    assert_eq!(http_get(s.api, "/healthz").status, 200);
}

#[test]
fn publish_on_any_node_reaches_every_node_once_in_order() {
    let redis = RedisServer::start();
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis, &[])).collect();
    let mut subs: Vec<(usize, RawWs)> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        subs.push((i, sub(n, "news")));
        subs.push((i, sub(n, "news,sport")));
    }
    let mut sport_only = sub(&nodes[1], "sport");

    for (origin, count) in [(0usize, 20usize), (1, 10), (2, 10)] {
        let mut api = Http::connect(nodes[origin].api);
        for k in 0..count {
            publish(&mut api, "news", &format!(r#"{{"from":{origin},"k":{k}}}"#));
        }
        for (at, ws) in subs.iter_mut() {
            let got = recv_n(
                ws,
                count,
                &format!("sub on node {at}, publishes on node {origin}"),
            );
            let want: Vec<String> = (0..count)
                .map(|k| channel_msg("news", &format!(r#"{{"from":{origin},"k":{k}}}"#)))
                .collect();
            assert_eq!(got, want, "sub on node {at}, publishes on node {origin}");
        }
    }
    // The list form crosses nodes too, one frame per channel.
    let mut api = Http::connect(nodes[2].api);
    publish_many(&mut api, &["news", "sport"], r#"{"both":true}"#);
    for (i, (at, ws)) in subs.iter_mut().enumerate() {
        let both = r#"{"both":true}"#;
        assert_eq!(
            ws.expect_text(&format!("list form, sub on node {at}")),
            channel_msg("news", both)
        );
        if i % 2 == 1 {
            assert_eq!(
                ws.expect_text(&format!("list form, sub on node {at}")),
                channel_msg("sport", both)
            );
        }
    }
    assert_eq!(
        sport_only.expect_text("sport-only sub on node 1"),
        channel_msg("sport", r#"{"both":true}"#)
    );
    // Exactly once: nothing more arrives anywhere.
    for (at, ws) in subs.iter_mut() {
        ws.expect_silence(Duration::from_millis(300), &format!("sub on node {at}"));
    }
    sport_only.expect_silence(Duration::from_millis(100), "sport-only sub");

    // Node 1 received 20 events from node 0, 10 from node 2 and 2 (list form) from node 2; it wrote its 10.
    wait_metric(
        &nodes[1],
        "wsgate_cluster_events_in_total",
        READ_TIMEOUT,
        |v| v == 32.0,
    );
    assert_eq!(metric(&nodes[1], "wsgate_cluster_events_out_total"), 10.0);
    assert_eq!(metric(&nodes[0], "wsgate_cluster_events_out_total"), 20.0);
    for n in &nodes {
        assert_eq!(metric(n, "wsgate_cluster_events_dropped_total"), 0.0);
        assert_eq!(metric(n, "wsgate_cluster_events_duplicate_total"), 0.0);
        assert_eq!(metric(n, "wsgate_cluster_redis_connected"), 1.0);
    }
}

#[test]
fn broadcast_reaches_every_node_once() {
    let redis = RedisServer::start();
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis, &[])).collect();
    let mut subs: Vec<RawWs> = nodes
        .iter()
        .flat_map(|n| [RawWs::connect(n.ws, "/ws"), sub(n, "news")])
        .collect();
    let mut api = Http::connect(nodes[1].api);
    broadcast(&mut api, r#"{"all":[1,"two"]}"#);
    broadcast(&mut api, r#""second""#);
    for (i, ws) in subs.iter_mut().enumerate() {
        let got = recv_n(ws, 2, &format!("subscriber {i}"));
        assert_eq!(
            got,
            vec![
                r#"{"broadcast":true,"data":{"all":[1,"two"]}}"#.to_string(),
                r#"{"broadcast":true,"data":"second"}"#.to_string()
            ],
            "subscriber {i}"
        );
        ws.expect_silence(Duration::from_millis(200), &format!("subscriber {i}"));
    }
}

#[test]
fn node_ids_are_leased_distinct_and_released_on_shutdown() {
    let redis = RedisServer::start();
    let mut nodes: Vec<Server> = (0..3).map(|_| node(&redis, &[])).collect();
    let stats: Vec<Value> = nodes.iter().map(cluster_stats).collect();
    let ids: Vec<u64> = stats
        .iter()
        .map(|s| s["node_id"].as_u64().expect("node_id"))
        .collect();
    let distinct: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "node ids {ids:?}");
    assert!(ids.iter().all(|&id| id <= 1023), "{ids:?}");

    // Socket ids minted on each node carry that node's leased id (bits 13..23 of the sid, docs/PROTOCOL.md), so
    // sids are unique across the cluster.
    for (n, &id) in nodes.iter().zip(&ids) {
        let ws = sub(n, "x");
        let welcome = ws.welcome.as_ref().expect("welcome frame");
        let sid: u64 = welcome["sid"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            (sid >> 13) & 0x3ff,
            id,
            "sid {sid} from node {id}: {welcome}"
        );
    }

    // Each lease is a health record naming the node, with a TTL.
    let mut r = redis.client();
    for (n, s) in nodes.iter().zip(&stats) {
        let key = format!("wsgate:node:{}", s["node_id"]);
        let raw: String = redis::cmd("GET").arg(&key).query(&mut r).unwrap();
        let rec: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(rec["origin"], s["origin"], "{raw}");
        assert_eq!(rec["ws"], n.ws.to_string(), "{raw}");
        assert_eq!(rec["api"], n.api.to_string(), "{raw}");
        assert_eq!(rec["node_id"], s["node_id"], "{raw}");
        let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut r).unwrap();
        assert!(pttl > 0 && pttl <= 30_000, "PTTL {key} = {pttl}");
    }

    // Pinning an id that a live node holds fails start-up, naming the key.
    let taken = *ids.iter().find(|&&id| id != 0).unwrap();
    let out = run_cli(
        &[
            "--set",
            &format!("cluster.redis={}", redis.url()),
            "--set",
            &format!("server.node_id={taken}"),
            "--set",
            "cluster.startup_timeout=1",
        ],
        &[],
        true,
        Duration::from_secs(15),
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("server.node_id") && out.stderr.contains("leased by another"),
        "{}",
        out.stderr
    );

    // A graceful stop frees the id at once; the next node takes the lowest free id.
    let lowest = *ids.iter().min().unwrap();
    let idx = ids.iter().position(|&i| i == lowest).unwrap();
    nodes[idx].signal(libc::SIGTERM);
    assert!(
        nodes[idx].wait_exit(Duration::from_secs(10)).is_some(),
        "SIGTERM"
    );
    let key = format!("wsgate:node:{lowest}");
    let gone: Option<String> = redis::cmd("GET").arg(&key).query(&mut r).unwrap();
    assert_eq!(gone, None, "{key} after shutdown");
    let fresh = node(&redis, &[]);
    assert_eq!(cluster_stats(&fresh)["node_id"], lowest);
}

#[test]
fn bus_entries_carry_the_routing_fields() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let st = cluster_stats(&a);
    let mut api = Http::connect(a.api);
    let before = event_now_ms();
    publish(&mut api, "doc:1", r#"{"x":[1,2]}"#);
    broadcast(&mut api, r#""hi""#);
    let mut r = redis.client();
    let entries = eventually(READ_TIMEOUT, || {
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(BUS)
            .arg("-")
            .arg("+")
            .query(&mut r)
            .ok()?;
        (reply.ids.len() == 2).then_some(reply.ids)
    })
    .expect("two entries in the bus stream");
    let field = |i: usize, f: &str| -> String {
        redis::from_redis_value(
            entries[i]
                .map
                .get(f)
                .unwrap_or_else(|| panic!("no field {f}")),
        )
        .unwrap()
    };
    for i in 0..2 {
        assert_eq!(field(i, "origin"), st["origin"].as_str().unwrap());
        assert_eq!(field(i, "node"), st["node_id"].to_string());
        assert_eq!(field(i, "seq"), (i + 1).to_string());
        assert!(!field(i, "trace").is_empty());
        let ts: u64 = field(i, "ts").parse().unwrap();
        assert!(ts >= before && ts < before + 60_000, "ts {ts}");
    }
    assert_eq!(field(0, "kind"), "channel");
    assert_eq!(field(0, "target"), "doc:1");
    assert_eq!(field(0, "data"), r#"{"x":[1,2]}"#);
    assert_eq!(field(1, "kind"), "broadcast");
    assert_eq!(field(1, "target"), "");
    assert_eq!(field(1, "data"), r#""hi""#);
}

fn event_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn hostile_bus_entries_are_skipped_and_counted() {
    let redis = RedisServer::start();
    let mut a = node(&redis, &[]);
    let own = cluster_stats(&a)["origin"].as_str().unwrap().to_string();
    let mut ws = sub(&a, "news");
    let mut r = redis.client();
    let long = "a".repeat(300);
    let entries: Vec<Vec<(&str, &[u8])>> = vec![
        // malformed: not JSON, no kind, bad UTF-8, bad channel name, no origin
        vec![
            ("origin", b"evil"),
            ("kind", b"channel"),
            ("target", b"news"),
            ("data", b"{broken"),
        ],
        vec![("origin", b"evil"), ("target", b"news"), ("data", b"1")],
        vec![
            ("origin", b"evil"),
            ("kind", b"channel"),
            ("target", b"news"),
            ("data", b"\"\xff\xfe\""),
        ],
        vec![
            ("origin", b"evil"),
            ("kind", b"channel"),
            ("target", long.as_bytes()),
            ("data", b"1"),
        ],
        vec![("foo", b"bar")],
        // malformed targeted kinds: a socket id that is not a number, a disconnect without a scope
        vec![
            ("origin", b"evil"),
            ("kind", b"sid"),
            ("target", b"12x"),
            ("data", b"1"),
        ],
        vec![
            ("origin", b"evil"),
            ("kind", b"disconnect"),
            ("target", b"u1"),
            ("data", br#"{"code":4000}"#),
        ],
        // an unknown kind
        vec![
            ("origin", b"evil"),
            ("kind", b"teleport"),
            ("target", b"news"),
            ("data", b"1"),
        ],
        // a user push for a user without connections here: handled, delivered to nobody
        vec![
            ("origin", b"evil"),
            ("kind", b"user"),
            ("target", b"u1"),
            ("data", b"1"),
        ],
        // this node's own event: skipped
        vec![
            ("origin", own.as_bytes()),
            ("seq", b"1"),
            ("kind", b"channel"),
            ("target", b"news"),
            ("data", b"\"own\""),
        ],
        // good, duplicate, and a gap of 3
        vec![
            ("origin", b"evil"),
            ("seq", b"5"),
            ("kind", b"channel"),
            ("target", b"news"),
            ("data", br#"{"ok":1}"#),
        ],
        vec![
            ("origin", b"evil"),
            ("seq", b"5"),
            ("kind", b"channel"),
            ("target", b"news"),
            ("data", br#"{"ok":"dup"}"#),
        ],
        vec![
            ("origin", b"evil"),
            ("seq", b"9"),
            ("kind", b"channel"),
            ("target", b"news"),
            ("data", br#"{"ok":2}"#),
        ],
    ];
    for fields in &entries {
        let mut c = redis::cmd("XADD");
        c.arg(BUS).arg("*");
        for (k, v) in fields {
            c.arg(*k).arg(*v);
        }
        let _: String = c.query(&mut r).unwrap();
    }
    assert_eq!(
        ws.expect_text("first good entry"),
        channel_msg("news", r#"{"ok":1}"#)
    );
    assert_eq!(
        ws.expect_text("second good entry"),
        channel_msg("news", r#"{"ok":2}"#)
    );
    ws.expect_silence(Duration::from_millis(300), "after the good entries");
    wait_metric(&a, "wsgate_cluster_events_in_total", READ_TIMEOUT, |v| {
        v == 3.0
    });
    assert_eq!(metric(&a, "wsgate_cluster_events_invalid_total"), 7.0);
    assert_eq!(metric(&a, "wsgate_cluster_events_ignored_total"), 1.0);
    assert_eq!(metric(&a, "wsgate_cluster_events_duplicate_total"), 1.0);
    assert_eq!(metric(&a, "wsgate_cluster_events_missed_total"), 3.0);
    // A key of the wrong type where the stream should be: the node keeps serving locally.
    let _: () = redis::cmd("DEL").arg(BUS).query(&mut r).unwrap();
    let _: () = redis::cmd("SET")
        .arg(BUS)
        .arg("not a stream")
        .query(&mut r)
        .unwrap();
    let mut api = Http::connect(a.api);
    publish(&mut api, "news", "42");
    assert_eq!(ws.expect_text("local publish"), channel_msg("news", "42"));
    wait_metric(&a, "wsgate_cluster_redis_errors_total", READ_TIMEOUT, |v| {
        v > 0.0
    });
    alive(&mut a);
}

/// A fake "Redis" that answers anything with garbage (bad lengths, bad types, a huge array header, non-UTF-8).
fn garbage_server(stop: Arc<AtomicBool>) -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let t = std::thread::spawn(move || {
        let replies: [&[u8]; 5] = [
            b"*2\r\n$-9\r\n%\xff\r\n",
            b":notanumber\r\n",
            b"*99999999999\r\n",
            b"$5\r\nab\r\n",
            b"\xff\xfe\x00garbage\r\n",
        ];
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(replies[i % replies.len()]);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (port, t)
}

#[test]
fn garbage_speaking_redis_never_takes_the_node_down() {
    let stop = Arc::new(AtomicBool::new(false));
    let (port, t) = garbage_server(stop.clone());
    // A configured node id: start-up does not need Redis.
    let mut a = Server::start(&[
        "--set",
        &format!("cluster.redis=redis://127.0.0.1:{port}/"),
        "--set",
        "server.node_id=7",
    ]);
    let mut ws = sub(&a, "news");
    let mut api = Http::connect(a.api);
    for k in 0..5 {
        publish(&mut api, "news", &k.to_string());
        assert_eq!(
            ws.expect_text("local delivery"),
            channel_msg("news", &k.to_string())
        );
    }
    wait_metric(&a, "wsgate_cluster_redis_errors_total", READ_TIMEOUT, |v| {
        v >= 3.0
    });
    assert_eq!(metric(&a, "wsgate_cluster_redis_connected"), 0.0);
    assert_eq!(cluster_stats(&a)["node_id"], 7);
    std::thread::sleep(Duration::from_millis(500));
    alive(&mut a);
    stop.store(true, Ordering::Relaxed);
    let _ = t.join();
}

#[test]
fn redis_restart_keeps_local_delivery_and_federation_resumes() {
    let mut redis = RedisServer::start();
    let mut nodes: Vec<Server> = (0..3).map(|_| node(&redis, &[])).collect();
    let mut subs: Vec<RawWs> = nodes.iter().map(|n| sub(n, "news")).collect();
    let mut apis: Vec<Http> = nodes.iter().map(|n| Http::connect(n.api)).collect();
    publish(&mut apis[0], "news", r#""m1""#);
    for (i, ws) in subs.iter_mut().enumerate() {
        assert_eq!(
            ws.expect_text(&format!("m1 on node {i}")),
            channel_msg("news", r#""m1""#)
        );
    }

    // m1 acknowledged by Redis everywhere (else a reply lost in the kill makes node 0 retry it later).
    for n in &nodes {
        wait_metric(n, "wsgate_cluster_outbox_events", READ_TIMEOUT, |v| {
            v == 0.0
        });
    }
    redis.kill();
    for n in &nodes {
        wait_metric(n, "wsgate_cluster_redis_connected", READ_TIMEOUT, |v| {
            v == 0.0
        });
    }
    // Local delivery goes on; the other nodes' copies wait in the outbox.
    publish(&mut apis[0], "news", r#""m2""#);
    publish(&mut apis[1], "news", r#""m3""#);
    assert_eq!(
        subs[0].expect_text("m2 local on node 0"),
        channel_msg("news", r#""m2""#)
    );
    assert_eq!(
        subs[1].expect_text("m3 local on node 1"),
        channel_msg("news", r#""m3""#)
    );
    subs[2].expect_silence(Duration::from_millis(300), "node 2 during the outage");
    wait_metric(
        &nodes[0],
        "wsgate_cluster_outbox_events",
        READ_TIMEOUT,
        |v| v == 1.0,
    );
    wait_metric(
        &nodes[1],
        "wsgate_cluster_outbox_events",
        READ_TIMEOUT,
        |v| v == 1.0,
    );
    for n in nodes.iter_mut() {
        alive(n);
    }

    redis.restart();
    let resume = Duration::from_secs(10);
    for n in &nodes {
        wait_metric(n, "wsgate_cluster_redis_connected", resume, |v| v == 1.0);
        wait_metric(n, "wsgate_cluster_outbox_events", resume, |v| v == 0.0);
    }
    // Redis came back empty: every node re-creates its lease at once, not a heartbeat period later.
    let mut r = redis.client();
    for n in &nodes {
        let key = format!("wsgate:node:{}", cluster_stats(n)["node_id"]);
        eventually(READ_TIMEOUT, || {
            let v: Option<String> = redis::cmd("GET").arg(&key).query(&mut r).ok()?;
            v.map(|_| ())
        })
        .unwrap_or_else(|| panic!("{key} not renewed after the restart"));
    }
    // The buffered events arrive late, once each.
    assert_eq!(
        subs[0].expect_text("m3 on node 0 after restart"),
        channel_msg("news", r#""m3""#)
    );
    assert_eq!(
        subs[1].expect_text("m2 on node 1 after restart"),
        channel_msg("news", r#""m2""#)
    );
    let late: HashSet<String> = recv_n(&mut subs[2], 2, "m2+m3 on node 2")
        .into_iter()
        .collect();
    let want: HashSet<String> = [r#""m2""#, r#""m3""#]
        .iter()
        .map(|d| channel_msg("news", d))
        .collect();
    assert_eq!(late, want);
    // And federation is live again.
    publish(&mut apis[2], "news", r#""m4""#);
    for (i, ws) in subs.iter_mut().enumerate() {
        assert_eq!(
            ws.expect_text(&format!("m4 on node {i}")),
            channel_msg("news", r#""m4""#)
        );
        ws.expect_silence(Duration::from_millis(200), &format!("node {i} after m4"));
    }
    for n in nodes.iter_mut() {
        assert_eq!(metric(n, "wsgate_cluster_events_dropped_total"), 0.0);
        assert!(metric(n, "wsgate_cluster_redis_errors_total") > 0.0);
        alive(n);
    }
}

#[test]
fn outbox_is_bounded_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let mut a = node(&redis, &["--set", "cluster.outbox_limit=20"]);
    let mut ws = sub(&a, "news");
    redis.kill();
    wait_metric(&a, "wsgate_cluster_redis_connected", READ_TIMEOUT, |v| {
        v == 0.0
    });
    let mut api = Http::connect(a.api);
    for k in 0..100 {
        publish(&mut api, "news", &k.to_string());
    }
    for k in 0..100 {
        assert_eq!(
            ws.expect_text("local delivery"),
            channel_msg("news", &k.to_string())
        );
    }
    assert_eq!(metric(&a, "wsgate_cluster_outbox_events"), 20.0);
    assert!(metric(&a, "wsgate_cluster_outbox_bytes") > 0.0);
    assert_eq!(metric(&a, "wsgate_cluster_events_dropped_total"), 80.0);
    let stats = cluster_stats(&a);
    assert_eq!(stats["events_dropped_total"], 80, "{stats}");
    alive(&mut a);

    // The 20 kept are the oldest 20, written once Redis is back.
    redis.restart();
    wait_metric(
        &a,
        "wsgate_cluster_outbox_events",
        Duration::from_secs(10),
        |v| v == 0.0,
    );
    assert_eq!(metric(&a, "wsgate_cluster_events_out_total"), 20.0);
    assert_eq!(metric(&a, "wsgate_cluster_outbox_bytes"), 0.0);
    let mut r = redis.client();
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(BUS)
        .arg("-")
        .arg("+")
        .query(&mut r)
        .unwrap();
    let data: Vec<String> = reply
        .ids
        .iter()
        .map(|e| redis::from_redis_value(&e.map["data"]).unwrap())
        .collect();
    let want: Vec<String> = (0..20).map(|k: i32| k.to_string()).collect();
    assert_eq!(data, want);
}

#[test]
fn cluster_config_errors_and_unreachable_redis_at_start() {
    let out = run_cli(
        &["--set", "cluster.redis=http://nope"],
        &[],
        true,
        READ_TIMEOUT,
    );
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("cluster.redis"), "{}", out.stderr);
    let out = run_cli(
        &["--set", "cluster.redis_mode=primary"],
        &[],
        true,
        READ_TIMEOUT,
    );
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("cluster.redis_mode"), "{}", out.stderr);
    let out = run_cli(
        &["--set", "cluster.outbox_limit=0"],
        &[],
        true,
        READ_TIMEOUT,
    );
    assert_eq!(out.code(), Some(2), "{out:?}");

    // Nothing listens there: a node that must lease its id cannot start.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run_cli(
        &[
            "--set",
            &format!("cluster.redis=redis://127.0.0.1:{port}/"),
            "--set",
            "cluster.startup_timeout=1",
        ],
        &[],
        true,
        Duration::from_secs(15),
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("no node id"), "{}", out.stderr);

    // Standalone by default: no cluster section in the stats, no cluster metrics.
    let s = Server::start(&[]);
    assert_eq!(cluster_stats(&s), Value::Null);
    let text = http_get(s.api, "/metrics").text();
    assert!(!text.contains("wsgate_cluster_"), "{text}");
}

#[test]
fn redis_cluster_mode_federates() {
    let redis = RedisServer::start_cluster();
    let mode = ["--set", "cluster.redis_mode=cluster"];
    let nodes: Vec<Server> = (0..2).map(|_| node(&redis, &mode)).collect();
    let ids: HashSet<u64> = nodes
        .iter()
        .map(|n| cluster_stats(n)["node_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    let mut subs: Vec<RawWs> = nodes.iter().map(|n| sub(n, "news")).collect();
    let mut api = Http::connect(nodes[0].api);
    for k in 0..5 {
        publish(&mut api, "news", &k.to_string());
    }
    for (i, ws) in subs.iter_mut().enumerate() {
        let got = recv_n(ws, 5, &format!("node {i}"));
        let want: Vec<String> = (0..5)
            .map(|k| channel_msg("news", &k.to_string()))
            .collect();
        assert_eq!(got, want, "node {i}");
    }
}

#[test]
fn sentinel_mode_follows_a_failover() {
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let mut rc = replica.client();
    eventually(Duration::from_secs(10), || {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut rc).ok()?;
        info.contains("master_link_status:up").then_some(())
    })
    .expect("replica in sync");
    let sentinel = RedisServer::start_sentinel("wsgprimary", primary.port, 500);
    let mut sc = sentinel.client();
    eventually(Duration::from_secs(15), || {
        let r: Vec<redis::Value> = redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg("wsgprimary")
            .query(&mut sc)
            .ok()?;
        (!r.is_empty()).then_some(())
    })
    .expect("Sentinel knows the replica");

    let sentinels = format!("cluster.sentinels=redis://127.0.0.1:{}/", sentinel.port);
    let args = [
        "--set",
        "cluster.redis_mode=sentinel",
        "--set",
        "cluster.redis=redis://wsgprimary/",
        "--set",
        sentinels.as_str(),
        "--set",
        "cluster.node_id_quarantine=0",
    ];
    let nodes: Vec<Server> = (0..2).map(|_| Server::start(&args)).collect();
    let mut subs: Vec<RawWs> = nodes.iter().map(|n| sub(n, "news")).collect();
    let mut api0 = Http::connect(nodes[0].api);
    publish(&mut api0, "news", r#""before""#);
    for (i, ws) in subs.iter_mut().enumerate() {
        assert_eq!(
            ws.expect_text(&format!("node {i} before")),
            channel_msg("news", r#""before""#)
        );
    }
    for n in &nodes {
        wait_metric(n, "wsgate_cluster_outbox_events", READ_TIMEOUT, |v| {
            v == 0.0
        });
    }

    primary.kill();
    let promoted = eventually(Duration::from_secs(20), || {
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg("wsgprimary")
            .query(&mut sc)
            .ok()?;
        addr.filter(|(_, p)| *p == replica.port.to_string())
    });
    assert!(promoted.is_some(), "Sentinel did not promote the replica");
    for n in &nodes {
        wait_metric(
            n,
            "wsgate_cluster_redis_connected",
            Duration::from_secs(15),
            |v| v == 1.0,
        );
    }
    let mut api1 = Http::connect(nodes[1].api);
    publish(&mut api1, "news", r#""after""#);
    for (i, ws) in subs.iter_mut().enumerate() {
        assert_eq!(
            ws.expect_text(&format!("node {i} after")),
            channel_msg("news", r#""after""#)
        );
        ws.expect_silence(Duration::from_millis(200), &format!("node {i}"));
    }
}

/// `POST /api/batch` federates each command like its single route: every command's result says it was queued for
/// the other nodes, and the other node delivers the batch in order (its reader hands a whole read over at once).
#[test]
fn batch_commands_federate_in_order() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut on_a = sub(&a, "feed");
    let mut on_b = sub(&b, "feed");
    let commands: Vec<Value> = (0..200)
        .map(|k| serde_json::json!({"publish": {"channel": "feed", "data": k}}))
        .chain([serde_json::json!({"broadcast": {"data": "end"}})])
        .collect();
    let mut api = Http::connect(a.api);
    let r = api.post_json("/api/batch", &Value::Array(commands).to_string());
    let v = r.json();
    assert_eq!(
        (r.status, &v["failed"]),
        (200, &serde_json::json!(0)),
        "{v}"
    );
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 201);
    assert!(
        results
            .iter()
            .all(|r| r["federated"] == serde_json::json!(true)),
        "{v}"
    );
    let mut want: Vec<String> = (0..200)
        .map(|k| channel_msg("feed", &k.to_string()))
        .collect();
    want.push(r#"{"broadcast":true,"data":"end"}"#.to_string());
    assert_eq!(recv_n(&mut on_a, 201, "sub on the publishing node"), want);
    assert_eq!(recv_n(&mut on_b, 201, "sub on the other node"), want);
    wait_metric(&b, "wsgate_cluster_events_in_total", READ_TIMEOUT, |v| {
        v == 201.0
    });
}
