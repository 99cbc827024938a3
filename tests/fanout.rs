//! Fan-out at scale: 1200 subscribers on 4 channels (some on two, some subscribing later by command), 50 messages
//! per channel published through the API in both the `channel` and `channels` forms, plus a broadcast. Every
//! subscriber must get exactly the messages of its channels: no loss, no duplicates, publish order per channel,
//! exact bytes with `data` verbatim.

mod common;

use common::*;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 1200;
const PER_THREAD: usize = 100;
const CHANNELS: usize = 4;
const MESSAGES: usize = 50;

/// Data of message `k` on channel `c`. Even k: published to one channel with the `channel` form; odd k: published
/// with the `channels` list form to c0+c2 or c1+c3 (no client is on both channels of a pair).
fn data_for(c: usize, k: usize) -> String {
    if k.is_multiple_of(2) {
        format!(
            r#"{{"k": {k}, "c": "c{c}", "v": [1.50, "é", null], "pad": "{}"}}"#,
            "p".repeat(k % 7)
        )
    } else {
        format!(
            r#"{{"k":{k},"pair":"{}{}","nested":{{"x":[true,false]}}}}"#,
            c % 2,
            c % 2 + 2
        )
    }
}

fn expected(c: usize, k: usize) -> String {
    format!(r#"{{"channel":"c{c}","data":{}}}"#, data_for(c, k))
}

const BROADCAST_DATA: &str = r#"{"announce": "all hands", "n": [1, 2, 3]}"#;

fn expected_broadcast() -> String {
    format!(r#"{{"broadcast":true,"data":{BROADCAST_DATA}}}"#)
}

/// How client `i` subscribes: (path to connect to, channels to subscribe to by command afterwards, all channels).
fn plan(i: usize) -> (String, Vec<usize>, Vec<usize>) {
    let p = (i / 4) % CHANNELS;
    let q = (p + 1) % CHANNELS;
    match i % 4 {
        0 => (format!("/ws?channels=c{p}"), vec![], vec![p]),
        1 => (format!("/ws?channels=c{p},c{q}"), vec![], vec![p, q]),
        2 => (format!("/ws?channels=c{p}"), vec![q], vec![p, q]),
        _ => ("/ws".to_string(), vec![p], vec![p]),
    }
}

struct Client {
    idx: usize,
    ws: RawWs,
    channels: Vec<usize>,
}

fn channel_of(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    v.get("channel")
        .and_then(|c| c.as_str())
        .map(|s| s.to_string())
}

/// Reads until the client has all messages of its channels and the broadcast. Err describes the first problem.
fn receive_all(cl: &mut Client, deadline: Instant) -> Result<(), String> {
    let mut next = [0usize; CHANNELS];
    let mut got_broadcast = false;
    let channels = cl.channels.clone();
    let bcast = expected_broadcast();
    while !(got_broadcast && channels.iter().all(|&c| next[c] == MESSAGES)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = cl.ws.next_message(left).map_err(|e| {
            format!(
                "client {} {:?}: {e}; progress per channel {:?}, broadcast {got_broadcast}",
                cl.idx, cl.channels, next
            )
        })?;
        if f.opcode != OP_TEXT || !f.fin {
            return Err(format!("client {}: unexpected frame {f}", cl.idx));
        }
        let text = String::from_utf8(f.payload)
            .map_err(|e| format!("client {}: not UTF-8: {e}", cl.idx))?;
        if text == bcast {
            if got_broadcast {
                return Err(format!("client {}: broadcast received twice", cl.idx));
            }
            got_broadcast = true;
            continue;
        }
        let ch = channel_of(&text)
            .ok_or_else(|| format!("client {}: unexpected message {text:?}", cl.idx))?;
        let c = (0..CHANNELS)
            .find(|c| format!("c{c}") == ch)
            .ok_or_else(|| format!("client {}: unknown channel in {text:?}", cl.idx))?;
        if !cl.channels.contains(&c) {
            return Err(format!(
                "client {} {:?}: message for a channel it is not on: {text:?}",
                cl.idx, cl.channels
            ));
        }
        if next[c] >= MESSAGES {
            return Err(format!(
                "client {}: extra message on c{c} after all {MESSAGES}: {text:?}",
                cl.idx
            ));
        }
        let want = expected(c, next[c]);
        if text != want {
            return Err(format!("client {} c{c}: message #{} wrong (loss, duplicate, reorder or altered data)\n  got  {text}\n  want {want}", cl.idx, next[c]));
        }
        next[c] += 1;
    }
    Ok(())
}

/// Reads the end markers (one per channel of the client); anything else is an extra message.
fn receive_end_markers(cl: &mut Client, deadline: Instant) -> Result<(), String> {
    let mut pending: Vec<usize> = cl.channels.clone();
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = cl.ws.next_message(left).map_err(|e| {
            format!(
                "client {}: waiting for end markers {pending:?}: {e}",
                cl.idx
            )
        })?;
        let text = f.text();
        let pos = pending
            .iter()
            .position(|&c| text == format!(r#"{{"channel":"c{c}","data":"end"}}"#));
        match pos {
            Some(p) => {
                pending.remove(p);
            }
            None => {
                return Err(format!(
                    "client {}: extra message before the end markers: {text:?}",
                    cl.idx
                ))
            }
        }
    }
    // Nothing may be left.
    if !cl.ws.buf.is_empty() {
        return Err(format!(
            "client {}: {} extra bytes after the end markers",
            cl.idx,
            cl.ws.buf.len()
        ));
    }
    Ok(())
}

#[test]
fn twelve_hundred_subscribers_get_exactly_their_messages() {
    let s = Server::start(&[]);
    let start = Instant::now();
    let threads = CLIENTS / PER_THREAD;
    let ready = Arc::new(Barrier::new(threads + 1));
    let published = Arc::new(Barrier::new(threads + 1));
    let received = Arc::new(Barrier::new(threads + 1));
    let ended = Arc::new(Barrier::new(threads + 1));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let abort = Arc::new(AtomicBool::new(false));
    let ws_addr = s.ws;
    let mut handles = Vec::new();
    for t in 0..threads {
        let (ready, published, received, ended, errors) = (
            ready.clone(),
            published.clone(),
            received.clone(),
            ended.clone(),
            errors.clone(),
        );
        let abort = abort.clone();
        handles.push(std::thread::spawn(move || {
            let mut clients = Vec::with_capacity(PER_THREAD);
            let mut setup_err = None;
            for idx in t * PER_THREAD..(t + 1) * PER_THREAD {
                let (path, later, channels) = plan(idx);
                match RawWs::connect_with(ws_addr, &path, &[]) {
                    Ok(ws) => clients.push((Client { idx, ws, channels }, later)),
                    Err(e) => {
                        setup_err = Some(format!("client {idx} connect {path}: {e}"));
                        break;
                    }
                }
            }
            // Subscribe by command, then wait for every ok reply.
            if setup_err.is_none() {
                for (cl, later) in clients.iter_mut() {
                    if later.is_empty() {
                        continue;
                    }
                    let chans: Vec<String> = later.iter().map(|c| format!("c{c}")).collect();
                    let id = cl.idx as u64 + 10_000;
                    let cmd =
                        serde_json::json!({"op":"subscribe","channels":chans,"id":id}).to_string();
                    if let Err(e) = cl
                        .ws
                        .try_send_raw(&masked_frame(true, OP_TEXT, cmd.as_bytes()))
                    {
                        setup_err = Some(format!("client {}: send subscribe: {e}", cl.idx));
                        break;
                    }
                }
                for (cl, later) in clients.iter_mut() {
                    if later.is_empty() {
                        continue;
                    }
                    let id = cl.idx as u64 + 10_000;
                    match cl.ws.next_message(Duration::from_secs(10)) {
                        Ok(f) if f.opcode == OP_TEXT => {
                            let v: Value =
                                serde_json::from_slice(&f.payload).unwrap_or(Value::Null);
                            if v != serde_json::json!({"type":"reply","id":id,"ok":true}) {
                                setup_err = Some(format!("client {}: subscribe reply {f}", cl.idx));
                                break;
                            }
                        }
                        Ok(f) => {
                            setup_err = Some(format!("client {}: subscribe reply {f}", cl.idx));
                            break;
                        }
                        Err(e) => {
                            setup_err = Some(format!("client {}: no subscribe reply: {e}", cl.idx));
                            break;
                        }
                    }
                }
            }
            if let Some(e) = setup_err.take() {
                errors.lock().unwrap().push(e);
            }
            ready.wait();
            published.wait();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut clients: Vec<Client> = clients.into_iter().map(|(c, _)| c).collect();
            let mut first_err = None;
            for cl in clients
                .iter_mut()
                .take_while(|_| !abort.load(Ordering::SeqCst))
            {
                if let Err(e) = receive_all(cl, deadline) {
                    first_err = Some(e);
                    break;
                }
            }
            if let Some(e) = first_err.take() {
                errors.lock().unwrap().push(e);
            }
            received.wait();
            ended.wait();
            let deadline = Instant::now() + Duration::from_secs(30);
            for cl in clients
                .iter_mut()
                .take_while(|_| !abort.load(Ordering::SeqCst))
            {
                if let Err(e) = receive_end_markers(cl, deadline) {
                    errors.lock().unwrap().push(e);
                    break;
                }
            }
            clients.len()
        }));
    }
    ready.wait();
    let setup = errors.lock().unwrap().clone();
    let connected_at = start.elapsed();

    // Publish: 50 rounds; in each, even k single-channel publishes, odd k list publishes.
    let mut api = Http::connect(s.api);
    if setup.is_empty() {
        for k in 0..MESSAGES {
            if k.is_multiple_of(2) {
                for c in 0..CHANNELS {
                    publish(&mut api, &format!("c{c}"), &data_for(c, k));
                }
            } else {
                publish_many(&mut api, &["c0", "c2"], &data_for(0, k));
                publish_many(&mut api, &["c1", "c3"], &data_for(1, k));
            }
        }
        broadcast(&mut api, BROADCAST_DATA);
    } else {
        abort.store(true, Ordering::SeqCst);
    }
    let published_at = start.elapsed();
    published.wait();
    received.wait();
    let received_at = start.elapsed();
    if errors.lock().unwrap().is_empty() {
        for c in 0..CHANNELS {
            publish(&mut api, &format!("c{c}"), r#""end""#);
        }
    } else {
        abort.store(true, Ordering::SeqCst);
    }
    ended.wait();
    let mut total = 0;
    for h in handles {
        total += h.join().expect("client thread panicked");
    }
    let errs = errors.lock().unwrap().clone();
    assert!(
        errs.is_empty(),
        "{} problems (first 10): {:#?}\nconnected at {connected_at:?}, published at {published_at:?}\n{}",
        errs.len(),
        &errs[..errs.len().min(10)],
        s.describe()
    );
    assert_eq!(total, CLIENTS);
    eprintln!("fanout: {CLIENTS} clients connected in {connected_at:?}, published by {published_at:?}, all received by {received_at:?}");
}

#[test]
fn unsubscribe_stops_delivery() {
    let s = Server::start(&[]);
    let mut api = Http::connect(s.api);
    // 40 clients on u and marker; the even ones unsubscribe from u.
    let mut clients: Vec<RawWs> = (0..40)
        .map(|_| RawWs::connect(s.ws, "/ws?channels=u,marker"))
        .collect();
    for (i, c) in clients
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| i.is_multiple_of(2))
    {
        c.send_text(&format!(
            r#"{{"op":"unsubscribe","channels":["u"],"id":{i}}}"#
        ));
        let v = c.expect_json("unsubscribe reply");
        assert_eq!(
            v,
            serde_json::json!({"type":"reply","id":i,"ok":true}),
            "unsubscribe reply of client {i}"
        );
    }
    for k in 0..10 {
        publish(&mut api, "u", &format!("{k}"));
    }
    publish(&mut api, "marker", r#""m""#);
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got_u = Vec::new();
        let mut got_marker = false;
        let want_u = if i.is_multiple_of(2) { 0 } else { 10 };
        while !(got_marker && got_u.len() == want_u) {
            let t = c.expect_text(&format!(
                "client {i} (u so far {got_u:?}, marker {got_marker})"
            ));
            if t == r#"{"channel":"marker","data":"m"}"# {
                assert!(!got_marker, "client {i}: marker twice");
                got_marker = true;
            } else {
                assert!(
                    !i.is_multiple_of(2),
                    "client {i} unsubscribed from u but got {t:?}"
                );
                assert_eq!(
                    t,
                    format!(r#"{{"channel":"u","data":{}}}"#, got_u.len()),
                    "client {i}: message on u"
                );
                got_u.push(t);
            }
        }
    }
    // A short quiet period: nothing more may arrive at anyone.
    std::thread::sleep(Duration::from_millis(300));
    for (i, c) in clients.iter_mut().enumerate() {
        c.expect_silence(
            Duration::from_millis(5),
            &format!("client {i} after all messages"),
        );
    }
    // Unsubscribing from a channel one is not on is harmless.
    let c = &mut clients[0];
    c.send_text(r#"{"op":"unsubscribe","channels":["never"],"id":"x"}"#);
    let v = c.expect_json("unsubscribe from a channel never subscribed");
    assert_eq!(v["type"], serde_json::json!("reply"), "{v}");
    assert_eq!(v["id"], serde_json::json!("x"), "{v}");
}

#[test]
fn disconnected_subscribers_do_not_disturb_delivery() {
    // Half of the subscribers vanish (some abruptly) while messages are published; the rest still get everything.
    let s = Server::start(&[]);
    let mut api = Http::connect(s.api);
    let mut stay: Vec<RawWs> = (0..50)
        .map(|_| RawWs::connect(s.ws, "/ws?channels=d"))
        .collect();
    let mut leave: Vec<RawWs> = (0..50)
        .map(|_| RawWs::connect(s.ws, "/ws?channels=d"))
        .collect();
    for k in 0..20 {
        if k == 5 {
            for (i, c) in leave.iter_mut().enumerate() {
                if i.is_multiple_of(2) {
                    c.send_close(1000, "");
                }
            }
        }
        if k == 10 {
            leave.clear(); // abrupt TCP close for the rest
        }
        publish(&mut api, "d", &format!("{k}"));
    }
    for (i, c) in stay.iter_mut().enumerate() {
        for k in 0..20 {
            assert_eq!(
                c.expect_text(&format!("client {i} message {k}")),
                format!(r#"{{"channel":"d","data":{k}}}"#)
            );
        }
    }
    let r = http_get(s.api, "/healthz");
    assert_eq!(r.status, 200, "{r}");
}

/// A publisher much faster than the sockets must be slowed down (backpressure), not turn healthy, reading
/// subscribers into "slow consumers": 3 MB of publishes in one pipelined burst is ~48 times
/// `ws.max_outbound_bytes` (64 KiB here), and every reader still gets every message, in order, without a close.
#[test]
fn publish_burst_beyond_the_outbound_limit_reaches_healthy_readers() {
    const READERS: usize = 20;
    const BURST: usize = 3000;
    let s = Server::start(&["--set", "ws.max_outbound_bytes=65536"]);
    let pad = "b".repeat(1000);
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let mut ws = RawWs::connect(s.ws, "/ws?channels=burst");
            std::thread::spawn(move || {
                for k in 0..BURST {
                    let f = ws
                        .next_message(Duration::from_secs(20))
                        .unwrap_or_else(|e| panic!("message {k} of {BURST}: {e}"));
                    let v: Value = serde_json::from_str(&f.text())
                        .unwrap_or_else(|e| panic!("message {k}: {e}: {}", f.text()));
                    assert_eq!(v["data"]["k"], k, "message {k} out of order: {}", f.text());
                }
            })
        })
        .collect();
    // One write with every request: the API reads them as fast as the reactors accept them.
    let mut api = Http::connect(s.api);
    let mut burst = Vec::new();
    for k in 0..BURST {
        let body = format!(r#"{{"channel":"burst","data":{{"k":{k},"pad":"{pad}"}}}}"#);
        burst.extend(api.build("POST", "/api/publish", &[], body.as_bytes()));
    }
    let writer = std::thread::spawn(move || {
        api.send(&burst);
        for k in 0..BURST {
            let r = api
                .read_response(Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("response {k}: {e}"));
            assert_eq!(r.status, 200, "publish {k}: {r}");
        }
    });
    for r in readers {
        r.join().expect("a reader missed messages");
    }
    writer.join().expect("publisher");
    assert_eq!(
        s.stat("/totals/slow_consumer_closes_total"),
        0,
        "healthy readers were closed"
    );
}
