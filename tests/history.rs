//! Channel history and recovery (standalone): offsets and epochs in the delivered frame, a killed client that
//! resubscribes with its last offset gets every publication exactly once and in order, `recovered:false` when the
//! history no longer reaches back or the epoch changed, clear replies to bad `recover` input, GET /api/history.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// doc: keeps 1000 publications for 300 s with recovery; short: keeps 3; brief: keeps them 1 s; plain: channels
/// without a namespace rule have no history.
const CONFIG: &str = r#"
[[channels.namespace]]
prefix = "doc:"
history_size = 1000
history_ttl = 300
recover = true

[[channels.namespace]]
prefix = "short:"
history_size = 3
recover = true

[[channels.namespace]]
prefix = "brief:"
history_size = 100
history_ttl = 1
recover = true

[[channels.namespace]]
prefix = "norecover:"
history_size = 10

[[channels.namespace]]
prefix = "live:"
history_size = 100
recover = true
merge_ms = 100

[[channels.namespace]]
prefix = "cursor:"
merge_ms = 100
"#;

fn config_file() -> String {
    let dir = std::env::temp_dir().join(format!("wsgate-history-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("history.toml");
    std::fs::write(&path, CONFIG).unwrap();
    path.to_str().unwrap().to_string()
}

fn start() -> Server {
    start_with(&[])
}

fn start_with(extra: &[&str]) -> Server {
    let path = config_file();
    let mut args = vec!["--config", path.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn ws(s: &Server, path: &str) -> RawWs {
    RawWs::connect_with(s.ws, path, &[])
        .unwrap_or_else(|e| panic!("connect {path}: {e}\n{}", s.describe()))
}

/// A publication frame: (offset, epoch, n of `{"n":N}`).
fn publication(v: &Value, channel: &str) -> (u64, String, u64) {
    assert_eq!(v["channel"], json!(channel), "{v}");
    (
        v["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("no offset: {v}")),
        v["epoch"]
            .as_str()
            .unwrap_or_else(|| panic!("no epoch: {v}"))
            .to_string(),
        v["data"]["n"]
            .as_u64()
            .unwrap_or_else(|| panic!("no n: {v}")),
    )
}

fn recover_cmd(channel: &str, offset: u64, epoch: &str) -> String {
    json!({"op":"subscribe","id":7,"channels":[channel],"recover":{channel:{"offset":offset,"epoch":epoch}}})
        .to_string()
}

#[test]
fn frames_carry_offset_and_epoch_only_on_history_channels() {
    let s = start();
    let mut api = Http::connect(s.api);
    let mut a = ws(&s, "/ws");
    let mut b = ws(&s, "/ws?channels=doc:1,plain");
    let v = a.call(r#"{"op":"subscribe","id":1,"channels":["doc:1","plain"]}"#);
    assert_eq!(v["ok"], json!(true), "{v}");
    assert_eq!(v["positions"]["doc:1"]["offset"], json!(0), "{v}");
    let epoch = v["positions"]["doc:1"]["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        epoch.len(),
        8,
        "an epoch before the first publication too: {v}"
    );
    assert!(v.get("recovered").is_none(), "no recover asked: {v}");
    let v = b.expect_json("connect-time positions");
    assert_eq!(v["type"], json!("subscribed"), "{v}");
    assert_eq!(
        (v["offset"].clone(), v["epoch"].clone()),
        (json!(0), json!(epoch)),
        "{v}"
    );

    publish(&mut api, "doc:1", r#"{"n":1}"#);
    publish(&mut api, "plain", r#"{"n":1}"#);
    publish(&mut api, "doc:1", r#"{"n":2}"#);
    let (ta, tb) = (a.expect_text("doc:1 #1"), b.expect_text("doc:1 #1"));
    assert_eq!(ta, tb, "one frame for every subscriber");
    assert_eq!(
        ta,
        format!(r#"{{"channel":"doc:1","offset":1,"epoch":"{epoch}","data":{{"n":1}}}}"#)
    );
    for c in [&mut a, &mut b] {
        assert_eq!(
            c.expect_text("plain"),
            r#"{"channel":"plain","data":{"n":1}}"#,
            "no extra bytes"
        );
        let v = c.expect_json("doc:1 #2");
        assert_eq!(publication(&v, "doc:1"), (2, epoch.clone(), 2));
    }

    // A later subscriber learns the current position.
    let mut c = ws(&s, "/ws");
    let v = c.call(r#"{"op":"subscribe","id":2,"channels":["doc:1"]}"#);
    assert_eq!(
        (v["offset"].clone(), v["epoch"].clone()),
        (json!(2), json!(epoch)),
        "{v}"
    );
}

/// Reads publications of `channel` until `{"n":last}`; returns (offset, n) in arrival order.
fn read_until(c: &mut RawWs, channel: &str, last: u64, epoch: &mut String) -> Vec<(u64, u64)> {
    let mut got = Vec::new();
    loop {
        let v = c.expect_json("publication");
        let (offset, e, n) = publication(&v, channel);
        if epoch.is_empty() {
            *epoch = e.clone();
        }
        assert_eq!(&e, epoch, "{v}");
        got.push((offset, n));
        if n == last {
            return got;
        }
    }
}

#[test]
fn a_killed_client_recovers_every_publication_exactly_once_in_order() {
    const TOTAL: u64 = 2000;
    let s = start();
    let api_addr = s.api;
    let mut c = ws(&s, "/ws?channels=doc:train");
    assert_eq!(c.expect_json("positions")["type"], json!("subscribed"));
    // Publishes keep coming from another thread while the client is killed and reconnects.
    let publisher = std::thread::spawn(move || {
        let mut api = Http::connect(api_addr);
        for n in 1..=TOTAL {
            publish(&mut api, "doc:train", &format!("{{\"n\":{n}}}"));
            if n % 200 == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let mut epoch = String::new();
    let mut got = Vec::new();
    // Killed (no close frame) after every 250 publications; reconnects alternate between the op and the URL.
    for (round, until) in (250..TOTAL).step_by(250).enumerate() {
        got.extend(read_until(&mut c, "doc:train", until, &mut epoch));
        drop(c);
        let last = got.last().unwrap().0;
        if round % 2 == 0 {
            c = ws(&s, "/ws");
            let v = c.call(recover_cmd("doc:train", last, &epoch));
            assert_eq!(
                (v["ok"].clone(), v["recovered"].clone()),
                (json!(true), json!(true)),
                "{v}"
            );
            assert_eq!(v["epoch"], json!(epoch), "{v}");
        } else {
            c = ws(
                &s,
                &format!("/ws?channels=doc:train&recover=doc:train:{last}:{epoch}"),
            );
            let v = c.expect_json("connect-time recovery");
            assert_eq!(
                (v["type"].clone(), v["recovered"].clone()),
                (json!("subscribed"), json!(true)),
                "{v}"
            );
        }
    }
    got.extend(read_until(&mut c, "doc:train", TOTAL, &mut epoch));
    publisher.join().unwrap();

    let expected: Vec<(u64, u64)> = (1..=TOTAL).map(|n| (n, n)).collect();
    let gaps = expected.iter().filter(|e| !got.contains(e)).count();
    assert_eq!((got.len() as u64, gaps), (TOTAL, 0), "0 gaps, 0 duplicates");
    assert_eq!(got, expected, "in order");
    assert!(
        s.stat("/sessions/channel_recoveries_total") >= 7,
        "{}",
        s.stats()
    );
    assert_eq!(
        s.stat("/history/publications"),
        1000,
        "history_size 1000 of 2000 kept"
    );
    assert!(s.stat("/history/bytes") > 50_000, "{}", s.stats());
}

#[test]
fn recovered_false_after_the_window_and_after_an_epoch_change() {
    let mut s = start();
    let mut api = Http::connect(s.api);
    let mut c = ws(&s, "/ws?channels=short:1,brief:1");
    c.expect_json("positions");
    let mut epoch = String::new();
    publish(&mut api, "short:1", r#"{"n":1}"#);
    read_until(&mut c, "short:1", 1, &mut epoch);
    drop(c);
    for n in 2..=10 {
        publish(&mut api, "short:1", &format!("{{\"n\":{n}}}"));
    }
    // Only 8..=10 are kept: 2..=7 are lost.
    let mut c = ws(&s, "/ws");
    let v = c.call(recover_cmd("short:1", 1, &epoch));
    assert_eq!(
        (v["ok"].clone(), v["recovered"].clone()),
        (json!(true), json!(false)),
        "{v}"
    );
    assert_eq!(
        (v["offset"].clone(), v["epoch"].clone()),
        (json!(10), json!(epoch)),
        "{v}"
    );
    // Nothing is replayed after recovered:false; live publications continue from the reported offset.
    publish(&mut api, "short:1", r#"{"n":11}"#);
    assert_eq!(
        publication(&c.expect_json("live"), "short:1"),
        (11, epoch.clone(), 11)
    );
    // Recovering from inside the window still works.
    let mut d = ws(&s, "/ws");
    let v = d.call(recover_cmd("short:1", 9, &epoch));
    assert_eq!(v["recovered"], json!(true), "{v}");
    assert_eq!(publication(&d.expect_json("replay"), "short:1").0, 10);
    assert_eq!(publication(&d.expect_json("replay"), "short:1").0, 11);

    // Age: brief: keeps publications 1 s.
    let mut brief_epoch = String::new();
    publish(&mut api, "brief:1", r#"{"n":1}"#);
    publish(&mut api, "brief:1", r#"{"n":2}"#);
    let mut probe = ws(&s, "/ws?channels=brief:1");
    probe.expect_json("positions");
    publish(&mut api, "brief:1", r#"{"n":3}"#);
    read_until(&mut probe, "brief:1", 3, &mut brief_epoch);
    std::thread::sleep(Duration::from_millis(1300));
    let mut e = ws(&s, "/ws");
    let v = e.call(recover_cmd("brief:1", 1, &brief_epoch));
    assert_eq!(
        v["recovered"],
        json!(false),
        "publications past history_ttl: {v}"
    );

    // Epoch: a restarted standalone node has lost its history.
    drop((c, d, e, probe));
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(10)).expect("server exits");
    let s = start();
    let mut api = Http::connect(s.api);
    publish(&mut api, "short:1", r#"{"n":1}"#);
    let mut c = ws(&s, "/ws");
    let v = c.call(recover_cmd("short:1", 1, &epoch));
    assert_eq!(v["recovered"], json!(false), "{v}");
    assert_ne!(
        v["epoch"],
        json!(epoch),
        "a new epoch after the restart: {v}"
    );
    assert_eq!(v["offset"], json!(1), "{v}");
}

#[test]
fn bad_recover_input_gets_a_clear_reply() {
    let s = start();
    let mut api = Http::connect(s.api);
    publish(&mut api, "doc:x", r#"{"n":1}"#);
    let mut c = ws(&s, "/ws");
    let cases = [
        (
            json!({"doc:other":{"offset":1,"epoch":"e"}}),
            "does not subscribe to",
        ),
        (
            json!({"doc:x":{"offset":"17","epoch":"e"}}),
            "offset must be a non-negative integer",
        ),
        (
            json!({"doc:x":{"offset":-1,"epoch":"e"}}),
            "offset must be a non-negative integer",
        ),
        (
            json!({"doc:x":{"offset":1,"epoch":7}}),
            "epoch must be a string",
        ),
        (
            json!({"doc:x":{"offset":1}}),
            "must be {\"offset\":N,\"epoch\":\"E\"}",
        ),
        (json!(["doc:x"]), "\"recover\" must be an object"),
        (json!({"plain":{"offset":1,"epoch":"e"}}), "has no recovery"),
        (
            json!({"norecover:1":{"offset":1,"epoch":"e"}}),
            "has no recovery",
        ),
    ];
    for (i, (recover, needle)) in cases.into_iter().enumerate() {
        let channels: Vec<String> = ["doc:x", "plain", "norecover:1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let cmd = json!({"op":"subscribe","id":i,"channels":channels,"recover":recover});
        let v = c.call(&cmd);
        assert_eq!(v["ok"], json!(false), "{cmd}: {v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{cmd}: {error:?} lacks {needle:?}");
    }
    // All or nothing: none of the refused requests subscribed anything.
    let v = c.call(r#"{"op":"subscribe","id":20,"channels":["doc:x"]}"#);
    assert_eq!(v["ok"], json!(true), "{v}");
    // Recovering a channel already subscribed would repeat what it got live.
    let v = c.call(recover_cmd("doc:x", 0, "e"));
    assert!(
        v["error"].as_str().unwrap().contains("already subscribed"),
        "{v}"
    );
    // Another epoch is not an error: recovered:false with the current position.
    let mut d = ws(&s, "/ws");
    let v = d.call(recover_cmd("doc:x", 1, "another"));
    assert_eq!(
        (v["ok"].clone(), v["recovered"].clone(), v["offset"].clone()),
        (json!(true), json!(false), json!(1)),
        "{v}"
    );
    // The connect URL refuses bad recover input with 400 and a message.
    for query in [
        "channels=doc:x&recover=doc:x:abc:e",
        "channels=doc:x&recover=doc:y:1:e",
        "channels=doc:x&recover=doc:x",
        "channels=plain&recover=plain:1:e",
    ] {
        let r = upgrade_response(s.ws, &format!("/ws?{query}"), &[]);
        assert_eq!(r.status, 400, "{query}: {r}");
        assert!(r.text().contains("recover"), "{query}: {r}");
    }
}

#[test]
fn api_history_pages_a_channel() {
    let s = start();
    let mut api = Http::connect(s.api);
    for n in 1..=5 {
        publish(&mut api, "short:h", &format!("{{\"n\":{n}}}"));
    }
    let r = api.get("/api/history?channel=short:h");
    assert_eq!(r.status, 200, "{r}");
    let v = r.json();
    assert_eq!(
        (v["offset"].clone(), v["complete"].clone()),
        (json!(5), json!(false)),
        "3 of 5 kept: {v}"
    );
    let offsets: Vec<u64> = v["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![3, 4, 5]);
    assert_eq!(v["publications"][0]["data"], json!({"n":3}));
    let v = api
        .get("/api/history?channel=short:h&since=3&limit=1")
        .json();
    assert_eq!(
        (v["complete"].clone(), v["publications"].clone()),
        (json!(true), json!([{"offset":4,"data":{"n":4}}])),
        "{v}"
    );
    assert_eq!(api.get("/api/history?channel=plain").status, 404);
    assert_eq!(api.get("/api/history?channel=short:h&since=x").status, 400);
    assert_eq!(api.get("/api/history?channel=short:h&limit=0").status, 400);
    assert_eq!(api.get("/api/history").status, 400);
    let v = api.get("/api/history?channel=doc:never").json();
    assert_eq!(
        (v["offset"].clone(), v["publications"].clone()),
        (json!(0), json!([])),
        "{v}"
    );
}

#[test]
fn history_config_errors_name_the_key() {
    let t = Duration::from_secs(10);
    let dir = std::env::temp_dir().join(format!("wsgate-history-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "[[channels.namespace]]\nprefix = \"a:\"\nrecover = true\n",
            "channels.namespace[0].recover",
        ),
        (
            "[[channels.namespace]]\nprefix = \"a:\"\nhistory_size = 100001\n",
            "channels.namespace[0].history_size",
        ),
        (
            "[[channels.namespace]]\nprefix = \"a:\"\nhistory_size = 1\nhistory_ttl = 0\n",
            "channels.namespace[0].history_ttl",
        ),
        (
            "[[channels.namespace]]\nprefix = \"a:\"\n[[channels.namespace]]\nprefix = \"a:\"\n",
            "channels.namespace[1].prefix",
        ),
        (
            "[channels]\nhistory_max_bytes = 5\n",
            "channels.history_max_bytes",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let started = Instant::now();
        let out = run_cli(&["--config", path.to_str().unwrap()], &[], true, t);
        assert_eq!(out.code(), Some(2), "{text}: {out:?}");
        assert!(
            out.stderr.contains(key),
            "{text}: stderr lacks {key}: {}",
            out.stderr
        );
        assert!(started.elapsed() < t);
    }
}

/// Items of a publication frame: one (offset, n) for an ordinary frame, several for a batch.
fn items(v: &Value) -> Vec<(Option<u64>, u64)> {
    match v.get("batch") {
        Some(batch) => batch
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["offset"].as_u64(), i["data"]["n"].as_u64().unwrap()))
            .collect(),
        None => vec![(v["offset"].as_u64(), v["data"]["n"].as_u64().unwrap())],
    }
}

#[test]
fn a_merge_window_sends_one_frame_per_burst() {
    let s = start();
    let mut api = Http::connect(s.api);
    let mut a = ws(&s, "/ws?channels=live:1,cursor:1");
    let mut b = ws(&s, "/ws?channels=live:1,cursor:1");
    a.expect_json("positions");
    b.expect_json("positions");
    for n in 1..=5 {
        publish(&mut api, "live:1", &format!("{{\"n\":{n}}}"));
        publish(&mut api, "cursor:1", &format!("{{\"n\":{n}}}"));
    }
    let (mut live, mut cursor, mut frames) = (Vec::new(), Vec::new(), 0);
    let mut epoch = Value::Null;
    while live.len() < 5 || cursor.len() < 5 {
        let (ta, tb) = (a.expect_text("batch"), b.expect_text("batch"));
        assert_eq!(ta, tb, "one frame per batch for every subscriber");
        let v: Value = serde_json::from_str(&ta).unwrap();
        frames += 1;
        match v["channel"].as_str().unwrap() {
            "live:1" => {
                epoch = v["epoch"].clone();
                live.extend(items(&v));
            }
            _ => {
                assert!(v.get("epoch").is_none(), "no history, no epoch: {v}");
                cursor.extend(items(&v));
            }
        }
    }
    assert_eq!(live, (1..=5).map(|n| (Some(n), n)).collect::<Vec<_>>());
    assert_eq!(cursor, (1..=5).map(|n| (None, n)).collect::<Vec<_>>());
    assert!(
        frames <= 4,
        "10 publications within 100 ms left as {frames} frames"
    );

    // Recovery replays the stored publications one by one, then live batches follow.
    let epoch = epoch.as_str().unwrap().to_string();
    let mut c = ws(&s, "/ws");
    let v = c.call(recover_cmd("live:1", 2, &epoch));
    assert_eq!(v["recovered"], json!(true), "{v}");
    for offset in 3..=5 {
        assert_eq!(publication(&c.expect_json("replay"), "live:1").0, offset);
    }
    publish(&mut api, "live:1", r#"{"n":6}"#);
    publish(&mut api, "live:1", r#"{"n":7}"#);
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(items(&c.expect_json("live batch")));
    }
    assert_eq!(got, vec![(Some(6), 6), (Some(7), 7)]);
}

#[test]
fn a_replay_larger_than_half_the_outbound_limit_is_not_recovered() {
    let s = start_with(&["--set", "ws.max_outbound_bytes=4096"]);
    let mut api = Http::connect(s.api);
    let mut c = ws(&s, "/ws?channels=doc:big,doc:big2");
    let v = c.expect_json("positions");
    let epoch = v["positions"]["doc:big"]["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    let epoch2 = v["positions"]["doc:big2"]["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    drop(c);
    let pad = "x".repeat(100);
    for n in 1..=30 {
        let data = format!("{{\"n\":{n},\"pad\":\"{pad}\"}}");
        publish(&mut api, "doc:big", &data);
        publish(&mut api, "doc:big2", &data);
    }
    // 30 frames of ~170 bytes: more than 2048 bytes.
    let mut c = ws(&s, "/ws");
    let v = c.call(recover_cmd("doc:big", 0, &epoch));
    assert_eq!(
        (v["ok"].clone(), v["recovered"].clone(), v["offset"].clone()),
        (json!(true), json!(false), json!(30)),
        "{v}"
    );
    // The last 10 fit, but not twice in one request: the budget is per request.
    let mut d = ws(&s, "/ws");
    let cmd = json!({"op":"subscribe","id":1,"channels":["doc:big","doc:big2"],
        "recover":{"doc:big":{"offset":20,"epoch":epoch},"doc:big2":{"offset":20,"epoch":epoch2}}});
    let v = d.call(cmd);
    assert_eq!(v["positions"]["doc:big"]["recovered"], json!(true), "{v}");
    assert_eq!(v["positions"]["doc:big2"]["recovered"], json!(false), "{v}");
    assert_eq!(v["recovered"], json!(false), "{v}");
    for offset in 21..=30 {
        assert_eq!(publication(&d.expect_json("replay"), "doc:big").0, offset);
    }
    publish(&mut api, "doc:big2", r#"{"n":31}"#);
    assert_eq!(
        publication(&d.expect_json("live"), "doc:big2").0,
        31,
        "connection still open, live continues"
    );
}
