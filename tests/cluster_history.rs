//! Channel history in cluster mode over a real redis-server: offsets given in Redis so every node agrees and
//! delivers the same frame, recovery on another node after a client is killed mid-stream (0 gaps, 0 duplicates),
//! history kept in Redis across a node kill and restart, a new epoch when the history is deleted.

mod common;

use common::redis_server::RedisServer;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const CONFIG: &str = r#"
[[channels.namespace]]
prefix = "doc:"
history_size = 1000
history_ttl = 300
recover = true

[[channels.namespace]]
prefix = "burst:"
history_size = 100
recover = true
merge_ms = 100
"#;

fn node(redis: &RedisServer) -> Server {
    let dir = std::env::temp_dir().join(format!("wsgate-cluster-history-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("history.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let set = format!("cluster.redis={}", redis.url());
    Server::start(&["--config", path.to_str().unwrap(), "--set", &set])
}

fn ws(s: &Server, path: &str) -> RawWs {
    RawWs::connect_with(s.ws, path, &[])
        .unwrap_or_else(|e| panic!("connect {path}: {e}\n{}", s.describe()))
}

/// Reads publications until `{"n":last}`: (offset, n) and the epoch.
fn read_until(c: &mut RawWs, last: u64, epoch: &mut String) -> Vec<(u64, u64)> {
    let mut got = Vec::new();
    loop {
        let v = c.expect_json("publication");
        let e = v["epoch"]
            .as_str()
            .unwrap_or_else(|| panic!("no epoch: {v}"));
        if epoch.is_empty() {
            *epoch = e.to_string();
        }
        assert_eq!(e, epoch, "{v}");
        let n = v["data"]["n"].as_u64().unwrap();
        got.push((v["offset"].as_u64().unwrap(), n));
        if n == last {
            return got;
        }
    }
}

fn recover(c: &mut RawWs, channel: &str, offset: u64, epoch: &str) -> Value {
    c.call(json!({"op":"subscribe","id":1,"channels":[channel],"recover":{channel:{"offset":offset,"epoch":epoch}}}))
}

#[test]
fn nodes_agree_on_offsets_and_a_client_recovers_on_another_node() {
    const TOTAL: u64 = 1200;
    let redis = RedisServer::start();
    let a = node(&redis);
    let b = node(&redis);
    let mut on_a = ws(&a, "/ws?channels=doc:c");
    let mut on_b = ws(&b, "/ws?channels=doc:c");
    on_a.expect_json("positions");
    on_b.expect_json("positions");
    // Publishes alternate between the nodes; every node delivers the same frames in the same order.
    let (api_a, api_b) = (a.api, b.api);
    let publisher = std::thread::spawn(move || {
        let mut apis = [Http::connect(api_a), Http::connect(api_b)];
        for n in 1..=TOTAL {
            publish(
                &mut apis[(n % 2) as usize],
                "doc:c",
                &format!("{{\"n\":{n}}}"),
            );
            if n % 200 == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let mut first = Vec::new();
    for _ in 0..10 {
        let (x, y) = (on_a.expect_text("on a"), on_b.expect_text("on b"));
        assert_eq!(x, y, "the same frame on both nodes");
        first.push(serde_json::from_str::<Value>(&x).unwrap());
    }
    let offsets: Vec<u64> = first
        .iter()
        .map(|v| v["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (1..=10).collect::<Vec<_>>());
    drop(on_a);

    // The client on b is killed mid-stream and comes back on a, then on b again (URL form).
    let mut epoch = first[0]["epoch"].as_str().unwrap().to_string();
    let mut got: Vec<(u64, u64)> = first
        .iter()
        .map(|v| {
            (
                v["offset"].as_u64().unwrap(),
                v["data"]["n"].as_u64().unwrap(),
            )
        })
        .collect();
    got.extend(read_until(&mut on_b, 300, &mut epoch));
    drop(on_b);
    let mut c = ws(&a, "/ws");
    let v = recover(&mut c, "doc:c", got.last().unwrap().0, &epoch);
    assert_eq!(
        (v["ok"].clone(), v["recovered"].clone()),
        (json!(true), json!(true)),
        "{v}"
    );
    got.extend(read_until(&mut c, 800, &mut epoch));
    drop(c);
    let last = got.last().unwrap().0;
    let mut c = ws(
        &b,
        &format!("/ws?channels=doc:c&recover=doc:c:{last}:{epoch}"),
    );
    assert_eq!(c.expect_json("recovery")["recovered"], json!(true));
    got.extend(read_until(&mut c, TOTAL, &mut epoch));
    publisher.join().unwrap();
    let expected: Vec<(u64, u64)> = (1..=TOTAL).map(|n| (n, n)).collect();
    assert_eq!(got, expected, "0 gaps, 0 duplicates, in order");

    // The history lives in Redis with a ttl and an approximate bound.
    let mut r = redis.client();
    let ttl: i64 = redis::cmd("TTL")
        .arg("ws:history:doc:c")
        .query(&mut r)
        .unwrap();
    assert!((1..=300).contains(&ttl), "ttl {ttl}");
    let len: u64 = redis::cmd("XLEN")
        .arg("ws:history:doc:c")
        .query(&mut r)
        .unwrap();
    assert!((1000..=1200).contains(&len), "MAXLEN ~ 1000 kept {len}");
}

#[test]
fn a_restarted_node_keeps_the_history_and_a_deleted_history_changes_the_epoch() {
    let redis = RedisServer::start();
    let mut a = node(&redis);
    let mut api = Http::connect(a.api);
    for n in 1..=5 {
        publish(&mut api, "doc:r", &format!("{{\"n\":{n}}}"));
    }
    let before = api.get("/api/history?channel=doc:r").json();
    assert_eq!(before["offset"], json!(5), "{before}");
    let epoch = before["epoch"].as_str().unwrap().to_string();
    drop(api);
    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(10)).expect("node exits");

    let a = node(&redis);
    let mut api = Http::connect(a.api);
    let after = api.get("/api/history?channel=doc:r&since=2").json();
    assert_eq!(
        (
            after["offset"].clone(),
            after["epoch"].clone(),
            after["complete"].clone()
        ),
        (json!(5), json!(epoch), json!(true)),
        "{after}"
    );
    let ns: Vec<u64> = after["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, vec![3, 4, 5]);
    // Offsets continue where they were, in the same epoch.
    let mut c = ws(&a, "/ws?channels=doc:r");
    assert_eq!(
        c.expect_json("positions")["offset"],
        json!(0),
        "nothing read on this node yet"
    );
    publish(&mut api, "doc:r", r#"{"n":6}"#);
    let v = c.expect_json("publication 6");
    assert_eq!(
        (v["offset"].clone(), v["epoch"].clone()),
        (json!(6), json!(epoch)),
        "{v}"
    );
    // A client that had 5 recovers 6 on the restarted node.
    let mut d = ws(&a, "/ws");
    let v = recover(&mut d, "doc:r", 5, &epoch);
    assert_eq!(v["recovered"], json!(true), "{v}");
    assert_eq!(d.expect_json("replay")["offset"], json!(6));

    // The history is deleted in Redis: the next publication starts a new epoch at offset 1.
    let mut r = redis.client();
    let _: () = redis::cmd("DEL")
        .arg("ws:history:meta:doc:r")
        .query(&mut r)
        .unwrap();
    publish(&mut api, "doc:r", r#"{"n":7}"#);
    let v = c.expect_json("publication in the new epoch");
    assert_eq!(v["offset"], json!(1), "{v}");
    let new_epoch = v["epoch"].as_str().unwrap().to_string();
    assert_ne!(new_epoch, epoch);
    let mut e = ws(&a, "/ws");
    let v = recover(&mut e, "doc:r", 6, &epoch);
    assert_eq!(
        (
            v["recovered"].clone(),
            v["epoch"].clone(),
            v["offset"].clone()
        ),
        (json!(false), json!(new_epoch), json!(1)),
        "{v}"
    );
}

#[test]
fn history_with_redis_cluster_mode_is_refused_at_start_up() {
    let out = run_cli(
        &[
            "--set",
            "cluster.redis=redis://127.0.0.1:1",
            "--set",
            "cluster.redis_mode=cluster",
            "--config",
            &{
                let dir = std::env::temp_dir()
                    .join(format!("wsgate-cluster-history-cfg-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                let p = dir.join("h.toml");
                std::fs::write(&p, CONFIG).unwrap();
                p.to_str().unwrap().to_string()
            },
        ],
        &[],
        true,
        Duration::from_secs(10),
    );
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("channels.namespace[0].history_size"),
        "{}",
        out.stderr
    );
}

#[test]
fn merge_windows_batch_what_every_node_reads_from_the_bus() {
    let redis = RedisServer::start();
    let a = node(&redis);
    let b = node(&redis);
    let mut on_b = ws(&b, "/ws?channels=burst:1");
    on_b.expect_json("positions");
    let mut api = Http::connect(a.api);
    for n in 1..=5 {
        publish(&mut api, "burst:1", &format!("{{\"n\":{n}}}"));
    }
    let mut got = Vec::new();
    let mut frames = 0;
    while got.len() < 5 {
        let v = on_b.expect_json("batch");
        frames += 1;
        match v["batch"].as_array() {
            Some(items) => got.extend(items.iter().map(|i| {
                (
                    i["offset"].as_u64().unwrap(),
                    i["data"]["n"].as_u64().unwrap(),
                )
            })),
            None => got.push((
                v["offset"].as_u64().unwrap(),
                v["data"]["n"].as_u64().unwrap(),
            )),
        }
    }
    assert_eq!(got, (1..=5).map(|n| (n, n)).collect::<Vec<_>>());
    assert!(
        frames < 5,
        "5 publications within 100 ms came as {frames} frames"
    );
}
