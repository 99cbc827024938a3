//! Publishing through the hand-over batches: `POST /api/batch` (answers per command), publishes from several API
//! connections reaching subscribers on every reactor in order per connection, one wake-up per reactor per batch,
//! and a hammer that lets the reactors fall asleep between publishes and checks that no publish is left behind
//! (the lost wake-up race).

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The reactor a connection lives on (bits 7..13 of its socket id).
fn reactor_of(ws: &RawWs) -> u64 {
    let sid: u64 = ws.welcome_frame()["sid"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("welcome frame with a sid");
    (sid >> 7) & 63
}

/// Subscribers of `channel` until both reactors hold at least `per_reactor` of them.
fn subscribers_on_both_reactors(s: &Server, channel: &str, per_reactor: usize) -> Vec<RawWs> {
    let mut subs = Vec::new();
    let mut counts = [0usize; 2];
    while counts.iter().any(|&c| c < per_reactor) {
        assert!(
            subs.len() < 64,
            "connections do not spread over reactors: {counts:?}"
        );
        let ws = RawWs::connect(s.ws, &format!("/ws?channels={channel}"));
        let r = reactor_of(&ws) as usize;
        if counts[r] < per_reactor {
            counts[r] += 1;
            subs.push(ws);
        }
    }
    subs
}

/// Each reactor's API connections, as `/api/stats` tells them (`reactors[i].api_connections`).
fn api_connections(stats: &mut Http) -> [u64; 2] {
    let v = stats.get("/api/stats").json();
    [0, 1].map(|i| {
        v["reactors"][i]["api_connections"]
            .as_u64()
            .expect("api_connections")
    })
}

/// API connections until both reactors serve at least `per_reactor` of them (the reactors accept API connections
/// on their own sockets: which one takes a connection is the kernel's choice).
fn api_connections_on_both_reactors(s: &Server, per_reactor: usize) -> Vec<Http> {
    let mut stats = Http::connect(s.api);
    let mut before = api_connections(&mut stats);
    let (mut kept, mut spare) = (Vec::new(), Vec::new());
    let mut have = [0usize; 2];
    while have.iter().any(|&c| c < per_reactor) {
        assert!(
            kept.len() + spare.len() < 64,
            "API connections do not spread over reactors: {have:?}"
        );
        let c = Http::connect(s.api);
        let after = eventually(Duration::from_secs(5), || {
            let now = api_connections(&mut stats);
            (now.iter().sum::<u64>() > before.iter().sum::<u64>()).then_some(now)
        })
        .expect("the new API connection is counted");
        let r = usize::from(after[0] == before[0]);
        before = after;
        if have[r] < per_reactor {
            have[r] += 1;
            kept.push(c);
        } else {
            spare.push(c);
        }
    }
    kept
}

/// A backend opens a few API connections; however the kernel hashes them to the reactors' sockets, each goes to the
/// reactor that serves the fewest, so every reactor parses publishes. (With the kernel's choice alone, ten
/// connections stay this even about once in thirty.)
#[test]
fn api_connections_spread_evenly_over_the_reactors() {
    let s = Server::start(&[]);
    let mut stats = Http::connect(s.api);
    let mut kept = Vec::new();
    for total in 2..=10u64 {
        let mut c = Http::connect(s.api);
        // Answered: served by whichever reactor it was handed to.
        assert_eq!(c.get("/healthz").status, 200);
        kept.push(c);
        let counts = api_connections(&mut stats);
        assert_eq!(counts.iter().sum::<u64>(), total, "{counts:?}");
        assert!(
            counts[0].abs_diff(counts[1]) <= 1,
            "{counts:?} after {total} API connections"
        );
    }
    // A connection a reactor was handed serves pipelined requests like any other.
    for c in &mut kept {
        let mut wire = Vec::new();
        for _ in 0..3 {
            wire.extend(c.build("GET", "/healthz", &[], b""));
        }
        c.send(&wire);
        for _ in 0..3 {
            let r = c.read_response(Duration::from_secs(5)).expect("response");
            assert_eq!(r.status, 200, "{r}");
        }
    }
}

/// Reads text frames until `n` arrived (no per-frame allocation of a big read buffer: thousands of frames).
fn read_texts(ws: &mut RawWs, n: usize, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    let mut tmp = vec![0u8; 64 * 1024];
    while out.len() < n {
        while let Some((frame, used)) = parse_server_frame(&ws.buf).expect("valid frame") {
            ws.buf.drain(..used);
            if frame.opcode == 1 {
                out.push(String::from_utf8(frame.payload).expect("UTF-8"));
            }
            if out.len() == n {
                return out;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {} of {n} messages within {timeout:?}",
            out.len()
        );
        ws.stream.set_read_timeout(Some(left)).expect("timeout");
        match ws.stream.read(&mut tmp) {
            Ok(0) => panic!("subscriber closed after {} of {n} messages", out.len()),
            Ok(k) => ws.buf.extend_from_slice(&tmp[..k]),
            Err(e) => panic!("read after {} of {n} messages: {e}", out.len()),
        }
    }
    out
}

/// The status of each command in a batch answer.
fn statuses(v: &Value) -> Vec<u64> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_u64().expect("status"))
        .collect()
}

fn post(api: &mut Http, path: &str, body: &str) -> (u16, Value) {
    let r = api.post_json(path, body);
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {r}"));
    (r.status, v)
}

#[test]
fn batch_answers_every_command_in_order() {
    let s = Server::start(&[]);
    let mut sub = RawWs::connect(s.ws, "/ws?channels=a,b");
    let mut api = Http::connect(s.api);
    let batch = json!([
        {"publish": {"channel": "a", "data": 1}},
        {"publish": {"channel": "bad\u{1}name", "data": 2}},
        {"broadcast": {"data": 3}},
        {"publish": {"channel": "b"}},
        {"frobnicate": {"data": 4}},
        {"publish": {"channels": ["b", "a"], "data": 5}},
        {"publish": {"sid": "1152", "data": 6}},
        {"publish": {"user": "u1", "data": 7}},
        {"publish": {"channel": "a", "data": 8}, "broadcast": {"data": 8}},
        "not an object",
    ]);
    let (status, v) = post(&mut api, "/api/batch", &batch.to_string());
    assert_eq!(status, 200, "{v}");
    let results = v["results"].as_array().expect("results");
    assert_eq!(
        statuses(&v),
        [200, 400, 200, 400, 400, 200, 404, 200, 400, 400],
        "{v}"
    );
    assert_eq!(v["failed"], json!(6), "{v}");
    assert_eq!(
        results[0],
        json!({"status": 200, "ok": true, "channels": 1})
    );
    assert_eq!(
        results[5],
        json!({"status": 200, "ok": true, "channels": 2})
    );
    assert_eq!(results[7], json!({"status": 200, "ok": true, "user": "u1"}));
    for i in [1, 3, 4, 6, 8, 9] {
        assert_eq!(results[i]["ok"], json!(false), "{i}: {v}");
        assert!(
            results[i]["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{i}: {v}"
        );
    }
    // The good commands were done, in order; the bad ones were not.
    let got = read_texts(&mut sub, 4, Duration::from_secs(5));
    assert_eq!(
        got,
        [
            r#"{"channel":"a","data":1}"#,
            r#"{"broadcast":true,"data":3}"#,
            r#"{"channel":"b","data":5}"#,
            r#"{"channel":"a","data":5}"#,
        ]
    );

    // Every command well-formed JSON (the one-pass parse), one of them refused: answered in its slot too.
    let batch = json!([
        {"publish": {"channel": "a", "data": 9}},
        {"publish": {"channel": "a", "data": null}},
        {"publish": {"channel": "b", "data": 10}},
    ]);
    let (status, v) = post(&mut api, "/api/batch", &batch.to_string());
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (statuses(&v), &v["failed"]),
        (vec![200, 400, 200], &json!(1)),
        "{v}"
    );
    let got = read_texts(&mut sub, 2, Duration::from_secs(5));
    assert_eq!(
        got,
        [
            r#"{"channel":"a","data":9}"#,
            r#"{"channel":"b","data":10}"#
        ]
    );

    // The request as a whole: not an array, empty, too many commands, wrong method.
    for (body, why) in [
        (
            r#"{"publish":{"channel":"a","data":1}}"#.to_string(),
            "an object",
        ),
        ("[]".to_string(), "empty"),
        (
            serde_json::to_string(&vec![json!({"broadcast": {"data": 0}}); 10_001]).unwrap(),
            "10 001 commands",
        ),
    ] {
        let (status, v) = post(&mut api, "/api/batch", &body);
        assert_eq!(status, 400, "{why}: {v}");
        assert_eq!(v["ok"], json!(false), "{why}: {v}");
    }
    assert_eq!(api.get("/api/batch").status, 405);
    let stats = s.stats();
    assert_eq!(stats["api"]["batches_total"], json!(2), "{stats}");
    assert_eq!(stats["api"]["batch_commands_total"], json!(13), "{stats}");
    assert_eq!(
        stats["api"]["batch_failed_commands_total"],
        json!(7),
        "{stats}"
    );
    let metrics = api.get("/metrics").text();
    for series in [
        "wsgate_api_batches_total 2",
        "wsgate_handoff_publishes_total ",
        "wsgate_handoff_batches_total{reactor=\"1\"}",
        "wsgate_wakeups_total{reactor=\"0\"}",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
    // Nothing more arrives.
    assert!(sub.read_frame_timeout(Duration::from_millis(200)).is_err());
}

#[test]
fn batch_keeps_the_api_key_and_publish_rate() {
    let s = Server::start(&[
        "--set",
        "api.api_key=k1",
        "--set",
        "limits.publish_rate=1",
        "--set",
        "limits.publish_burst=2",
    ]);
    let mut api = Http::connect(s.api);
    let body = json!([{"broadcast": {"data": 1}}]).to_string();
    assert_eq!(post(&mut api, "/api/batch", &body).0, 401);
    let body = json!([
        {"broadcast": {"data": 1, "tenant": "t"}},
        {"broadcast": {"data": 2, "tenant": "t"}},
        {"broadcast": {"data": 3, "tenant": "t"}},
    ])
    .to_string();
    let r = api.request(
        "POST",
        "/api/batch",
        &[
            ("Authorization", "apikey k1"),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    );
    let v = r.json();
    assert_eq!(statuses(&v).iter().filter(|&&s| s == 429).count(), 1, "{v}");
}

/// A batch is one hand-over per other reactor: the reactor that read it queues its own subscribers' frames
/// itself, and the other one, asleep before it, is woken once however many publishes it carries.
#[test]
fn one_wakeup_per_reactor_per_batch() {
    let s = Server::start(&[]);
    let mut subs = subscribers_on_both_reactors(&s, "w", 1);
    let mut api = Http::connect(s.api);
    std::thread::sleep(Duration::from_millis(300)); // the reactors go to sleep
                                                    // Read on this connection: a new one may be handed to the other reactor, which wakes it.
    let before = api.get("/api/stats").json()["handoff"].clone();
    let batch: Vec<Value> = (0..500)
        .map(|i| json!({"publish": {"channel": "w", "data": i}}))
        .collect();
    let (status, v) = post(&mut api, "/api/batch", &Value::Array(batch).to_string());
    assert_eq!((status, &v["failed"]), (200, &json!(0)), "{v}");
    for sub in &mut subs {
        let got = read_texts(sub, 500, Duration::from_secs(10));
        assert_eq!(got[499], r#"{"channel":"w","data":499}"#);
    }
    let after = api.get("/api/stats").json()["handoff"].clone();
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(delta("publishes_total"), 500, "{before} → {after}");
    assert_eq!(delta("batches_total"), 1, "{before} → {after}");
    assert!(delta("wakeups_total") <= 1, "{before} → {after}");

    // More publishes than a reactor's queue holds (1024 commands): what a full queue does not take waits in the
    // reading reactor's backlog, retried every iteration (else it would wait for a timer tick, up to a second).
    let batch: Vec<Value> = (0..10_000)
        .map(|i| json!({"publish": {"channel": "w", "data": i}}))
        .collect();
    let start = Instant::now();
    let (status, v) = post(&mut api, "/api/batch", &Value::Array(batch).to_string());
    let took = start.elapsed();
    assert_eq!((status, &v["failed"]), (200, &json!(0)), "{v}");
    for sub in &mut subs {
        let got = read_texts(sub, 10_000, Duration::from_secs(20));
        assert_eq!(got[9999], r#"{"channel":"w","data":9999}"#);
    }
    assert!(
        took < Duration::from_secs(3),
        "a batch of 10 000 took {took:?}"
    );
}

/// Pipelined publishes from 4 API connections, single and batched, reach every subscriber on both reactors, each
/// connection's in the order it sent them.
#[test]
fn publishes_from_every_connection_reach_every_reactor_in_order() {
    let s = Server::start(&[]);
    let mut subs = subscribers_on_both_reactors(&s, "o", 2);
    const PUBLISHERS: usize = 4;
    const EACH: usize = 600;
    // Publishers on both reactors: each publish is queued by the reactor that read it for its own subscribers and
    // handed to the other reactor.
    let publishers = api_connections_on_both_reactors(&s, PUBLISHERS / 2);
    std::thread::scope(|scope| {
        for (p, mut api) in publishers.into_iter().enumerate() {
            scope.spawn(move || {
                let mut n = 0;
                while n < EACH {
                    // 20 single publishes pipelined, then a batch of 10.
                    let mut wire = Vec::new();
                    for _ in 0..20 {
                        let body = json!({"channel": "o", "data": {"p": p, "n": n}}).to_string();
                        wire.extend(api.build("POST", "/api/publish", &[], body.as_bytes()));
                        n += 1;
                    }
                    let batch: Vec<Value> = (n..n + 10)
                        .map(|i| json!({"publish": {"channel": "o", "data": {"p": p, "n": i}}}))
                        .collect();
                    n += 10;
                    let body = Value::Array(batch).to_string();
                    wire.extend(api.build("POST", "/api/batch", &[], body.as_bytes()));
                    api.send(&wire);
                    for _ in 0..21 {
                        let r = api
                            .read_response(Duration::from_secs(10))
                            .expect("response");
                        assert_eq!(r.status, 200, "{r}");
                    }
                }
            });
        }
        for sub in subs.iter_mut() {
            scope.spawn(move || {
                let got = read_texts(sub, PUBLISHERS * EACH, Duration::from_secs(30));
                let mut next = [0u64; PUBLISHERS];
                for text in got {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    let p = v["data"]["p"].as_u64().unwrap() as usize;
                    assert_eq!(
                        v["data"]["n"].as_u64().unwrap(),
                        next[p],
                        "publisher {p}: {text}"
                    );
                    next[p] += 1;
                }
            });
        }
    });
}

/// The lost wake-up hammer: 4 connections publish in small pipelined bursts, each waiting until its burst has
/// reached every subscriber before the next, so the reactors keep falling asleep and being woken during the API's
/// passes. A command left in a sleeping reactor's queue without a wake-up waits for the reactor's next timer tick
/// (up to a second): such stalls are counted, and every publish must arrive, in order per connection.
#[test]
fn lost_wakeup_hammer() {
    let s = Server::start(&[]);
    let mut subs = subscribers_on_both_reactors(&s, "h", 1);
    const PUBLISHERS: usize = 4;
    const EACH: usize = 1500;
    let publishers = api_connections_on_both_reactors(&s, PUBLISHERS / 2);
    // seen[sub * PUBLISHERS + p]: messages of publisher p that subscriber sub has received.
    let seen: Vec<AtomicUsize> = (0..subs.len() * PUBLISHERS)
        .map(|_| AtomicUsize::new(0))
        .collect();
    let stalls = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for (p, mut api) in publishers.into_iter().enumerate() {
            let (seen, stalls, n_subs) = (&seen, &stalls, subs.len());
            scope.spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (p as u64 + 1);
                let mut n = 0;
                while n < EACH {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let burst = (1 + rng % 6) as usize;
                    let mut wire = Vec::new();
                    let mut sent = 0;
                    while sent < burst && n < EACH {
                        let body = json!({"channel": "h", "data": [p, n]}).to_string();
                        wire.extend(api.build("POST", "/api/publish", &[], body.as_bytes()));
                        n += 1;
                        sent += 1;
                    }
                    let start = Instant::now();
                    api.send(&wire);
                    for _ in 0..sent {
                        let r = api
                            .read_response(Duration::from_secs(10))
                            .expect("response");
                        assert_eq!(r.status, 200, "{r}");
                    }
                    while (0..n_subs)
                        .any(|sub| seen[sub * PUBLISHERS + p].load(Ordering::Acquire) < n)
                    {
                        assert!(
                            start.elapsed() < Duration::from_secs(10),
                            "publish {n} never arrived"
                        );
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    if start.elapsed() > Duration::from_millis(300) {
                        stalls.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        for (i, sub) in subs.iter_mut().enumerate() {
            let seen = &seen[i * PUBLISHERS..(i + 1) * PUBLISHERS];
            scope.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                for _ in 0..PUBLISHERS * EACH {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let text = read_texts(sub, 1, left).pop().unwrap();
                    let v: Value = serde_json::from_str(&text).unwrap();
                    let p = v["data"][0].as_u64().unwrap() as usize;
                    let n = v["data"][1].as_u64().unwrap() as usize;
                    assert_eq!(
                        n,
                        seen[p].load(Ordering::Relaxed),
                        "publisher {p} out of order"
                    );
                    seen[p].store(n + 1, Ordering::Release);
                }
            });
        }
    });
    // A lost wake-up stalls a burst for up to a second; allow a couple of scheduler hiccups on a busy machine.
    let stalls = stalls.into_inner();
    assert!(stalls <= 2, "{stalls} bursts took over 300 ms to arrive");
    let handoff = s.stats()["handoff"].clone();
    assert_eq!(
        handoff["publishes_total"],
        json!(PUBLISHERS * EACH),
        "{handoff}"
    );
    // Never more than one wake-up per reactor per batch.
    assert!(
        handoff["wakeups_total"].as_u64() <= handoff["batches_total"].as_u64(),
        "{handoff}"
    );
}

/// Both reactors hand each other more publishes than a queue holds (1024 commands), at the same time. A reactor
/// never blocks on another's full queue (each would wait for the other): what a full queue does not take waits
/// in the reading reactor's backlog while its API connections are not read, and every publish arrives, in order
/// per publisher connection.
#[test]
fn full_queues_both_ways_do_not_deadlock() {
    let s = Server::start(&[]);
    let mut subs = subscribers_on_both_reactors(&s, "f", 1);
    const PUBLISHERS: usize = 4;
    const BATCH: usize = 2000;
    const BATCHES: usize = 2;
    let publishers = api_connections_on_both_reactors(&s, PUBLISHERS / 2);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for (p, mut api) in publishers.into_iter().enumerate() {
            scope.spawn(move || {
                let mut wire = Vec::new();
                for b in 0..BATCHES {
                    let batch: Vec<Value> = (b * BATCH..(b + 1) * BATCH)
                        .map(|n| json!({"publish": {"channel": "f", "data": [p, n]}}))
                        .collect();
                    let body = Value::Array(batch).to_string();
                    wire.extend(api.build("POST", "/api/batch", &[], body.as_bytes()));
                }
                api.send(&wire);
                for _ in 0..BATCHES {
                    let r = api
                        .read_response(Duration::from_secs(20))
                        .expect("batch answered");
                    assert_eq!((r.status, &r.json()["failed"]), (200, &json!(0)), "{r}");
                }
            });
        }
        for sub in subs.iter_mut() {
            scope.spawn(move || {
                let got = read_texts(sub, PUBLISHERS * BATCH * BATCHES, Duration::from_secs(30));
                let mut next = [0u64; PUBLISHERS];
                for text in got {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    let p = v["data"][0].as_u64().unwrap() as usize;
                    assert_eq!(v["data"][1].as_u64().unwrap(), next[p], "publisher {p}");
                    next[p] += 1;
                }
            });
        }
    });
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The API still answers on both reactors.
    for mut c in api_connections_on_both_reactors(&s, 1) {
        assert_eq!(c.get("/healthz").status, 200);
    }
}
