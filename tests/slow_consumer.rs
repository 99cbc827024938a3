//! A subscriber that never reads must be cut off (close 1008 or TCP close) once its outbound queue passes
//! `ws.max_outbound_bytes`, without slowing down or starving the others, and without the server's memory growing.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const MESSAGES: usize = 2000;
const NORMAL: usize = 20;
const RSS_LIMIT_KB: u64 = 200 * 1024;

fn payload(i: usize) -> String {
    // ~4 KiB of data per message.
    format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(4000))
}

/// What a never-reading client finds when it finally reads: frames, then close 1008 and/or EOF/reset.
struct SlowEnd {
    messages: usize,
    close: Option<WsFrame>,
    end: String,
}

/// Reads everything a stalled client finally gets. Stops at EOF/reset, or when nothing arrives for `idle`
/// (which means the server never closed the connection).
fn drain_slow(ws: &mut RawWs, idle: Duration) -> SlowEnd {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut messages = 0;
    let mut close = None;
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now()).min(idle);
        match ws.read_frame_timeout(left) {
            Ok(f) if f.is_close() => {
                if close.is_some() {
                    break format!("second close frame {f}");
                }
                close = Some(f);
            }
            Ok(f) if f.opcode == OP_TEXT => {
                if close.is_some() {
                    break format!("data after the close frame: {f}");
                }
                messages += 1;
            }
            Ok(f) if f.opcode == OP_PING || f.opcode == OP_PONG => {}
            Ok(f) => break format!("unexpected frame {f}"),
            Err(WsReadError::Eof { partial }) => break format!("eof(partial={partial})"),
            Err(WsReadError::Io(e)) => break format!("io:{}", e.kind()),
            Err(e) => break format!("still open: {e}"),
        }
    };
    SlowEnd {
        messages,
        close,
        end,
    }
}

fn ended_ok(end: &SlowEnd) -> bool {
    let closed_tcp = end.end.starts_with("eof") || end.end.starts_with("io:");
    let close_ok = end
        .close
        .as_ref()
        .map(|f| f.close_code() == Some(1008))
        .unwrap_or(true);
    closed_tcp && close_ok
}

#[test]
fn slow_consumer_is_closed_others_get_everything_memory_bounded() {
    let s = Server::start(&["--set", "ws.max_outbound_bytes=65536"]);
    let rss_start = s.rss_kb().unwrap_or(0);

    // The slow one: tiny receive buffer, never reads until the end.
    let stream = tcp_connect_small_rcvbuf(s.ws, 4096);
    let mut slow = RawWs::upgrade(stream, s.ws, "/ws?channels=s", &[])
        .unwrap_or_else(|e| panic!("slow client: {e}"));

    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..NORMAL).map(|_| AtomicUsize::new(0)).collect());
    let ready = Arc::new(Barrier::new(NORMAL + 1));
    let mut handles = Vec::new();
    for n in 0..NORMAL {
        let progress = progress.clone();
        let ready = ready.clone();
        let addr = s.ws;
        handles.push(std::thread::spawn(move || -> Result<(), String> {
            let ws = std::panic::catch_unwind(|| ws_connect(addr, "/ws?channels=s"));
            ready.wait();
            let mut ws = ws.map_err(|_| format!("normal client {n}: connect failed"))?;
            ws.get_mut()
                .set_read_timeout(Some(Duration::from_secs(15)))
                .unwrap();
            for i in 0..MESSAGES {
                match ws.read() {
                    Ok(tungstenite::Message::Text(t)) => {
                        let want = format!(r#"{{"channel":"s","data":{}}}"#, payload(i));
                        if t != want {
                            return Err(format!(
                                "normal client {n}: message {i} wrong: {:?}...",
                                &t[..t.len().min(60)]
                            ));
                        }
                        progress[n].store(i + 1, Ordering::Release);
                    }
                    Ok(tungstenite::Message::Ping(_)) | Ok(tungstenite::Message::Pong(_)) => {
                        continue
                    }
                    Ok(other) => return Err(format!("normal client {n}: at {i} got {other:?}")),
                    Err(e) => return Err(format!("normal client {n}: at message {i}: {e}")),
                }
            }
            Ok(())
        }));
    }
    ready.wait();

    // Publish in small batches and let the normal readers keep up, so only the slow one ever falls behind.
    let mut api = Http::connect(s.api);
    let mut max_rss = rss_start;
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    const BATCH: usize = 8;
    while sent < MESSAGES {
        for _ in 0..BATCH.min(MESSAGES - sent) {
            publish(&mut api, "s", &payload(sent));
            sent += 1;
        }
        loop {
            let min = progress
                .iter()
                .map(|p| p.load(Ordering::Acquire))
                .min()
                .unwrap();
            if min >= sent {
                break;
            }
            if handles.iter().any(|h| h.is_finished()) || Instant::now() > deadline {
                // A normal reader failed (or everything stalled): collect its error below.
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if handles.iter().any(|h| h.is_finished())
            && progress.iter().any(|p| p.load(Ordering::Acquire) < sent)
        {
            break;
        }
        if sent.is_multiple_of(200) {
            max_rss = max_rss.max(s.rss_kb().unwrap_or(0));
            let h = http_get(s.api, "/healthz");
            assert_eq!(h.status, 200, "healthz during publishing: {h}");
        }
        assert!(
            Instant::now() < deadline,
            "publishing stalled at {sent}; progress {:?}",
            progress
                .iter()
                .map(|p| p.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        );
    }
    let mut errors = Vec::new();
    for h in handles {
        if let Err(e) = h.join().expect("reader thread panicked") {
            errors.push(e);
        }
    }
    assert!(
        errors.is_empty(),
        "normal subscribers lost messages: {errors:#?}\n{}",
        s.describe()
    );

    // The slow one was cut off long before 2000 messages.
    let end = drain_slow(&mut slow, Duration::from_secs(3));
    assert!(
        end.messages < MESSAGES,
        "slow consumer got all {MESSAGES} messages: it was never cut off"
    );
    assert!(
        ended_ok(&end),
        "slow consumer: got {} messages, close {:?}, then {} (want close 1008 and/or EOF/reset)",
        end.messages,
        end.close.as_ref().map(|f| f.to_string()),
        end.end
    );

    max_rss = max_rss.max(s.rss_kb().unwrap_or(0));
    assert!(
        max_rss < RSS_LIMIT_KB,
        "server RSS reached {} MiB (start {} MiB)",
        max_rss / 1024,
        rss_start / 1024
    );
    let h = http_get(s.api, "/healthz");
    assert_eq!(h.status, 200, "healthz after: {h}");
    let m = http_get(s.api, "/metrics").text();
    let closes = metric_value(&m, "wsgate_slow_consumer_closes_total");
    assert!(
        closes.unwrap_or(0.0) >= 1.0,
        "wsgate_slow_consumer_closes_total should count the slow consumer, got {closes:?}"
    );
    eprintln!(
        "slow consumer: got {} messages before being cut off ({}), RSS max {} MiB",
        end.messages,
        end.end,
        max_rss / 1024
    );
}

#[test]
fn many_slow_consumers_keep_memory_bounded() {
    // 20 stalled clients, each offered ~10 MB: more than the kernel's socket buffers (tcp_wmem max 4 MiB) can hide,
    // so the gateway's own queue limit must cut every one of them off.
    const SLOW: usize = 20;
    const COUNT: usize = 1200;
    let big = |i: usize| format!(r#"{{"i":{i},"pad":"{}"}}"#, "z".repeat(8000));
    let s = Server::start(&["--set", "ws.max_outbound_bytes=65536"]);
    let mut slow: Vec<RawWs> = (0..SLOW)
        .map(|_| {
            RawWs::upgrade(
                tcp_connect_small_rcvbuf(s.ws, 4096),
                s.ws,
                "/ws?channels=m",
                &[],
            )
            .unwrap()
        })
        .collect();
    let mut good = RawWs::connect(s.ws, "/ws?channels=m");
    let mut api = Http::connect(s.api);
    let mut max_rss = 0;
    for i in 0..COUNT {
        publish(&mut api, "m", &big(i));
        // The good client keeps up.
        let t = good.expect_text(&format!("good client message {i}"));
        assert_eq!(
            t,
            format!(r#"{{"channel":"m","data":{}}}"#, big(i)),
            "good client message {i}"
        );
        if i.is_multiple_of(100) {
            max_rss = max_rss.max(s.rss_kb().unwrap_or(0));
        }
    }
    max_rss = max_rss.max(s.rss_kb().unwrap_or(0));
    assert!(
        max_rss < RSS_LIMIT_KB,
        "server RSS reached {} MiB with {SLOW} stalled clients",
        max_rss / 1024
    );
    let mut bad = Vec::new();
    for (i, c) in slow.iter_mut().enumerate() {
        let end = drain_slow(c, Duration::from_secs(2));
        if !ended_ok(&end) || end.messages >= COUNT {
            bad.push(format!(
                "slow {i}: {} messages, close {:?}, end {}",
                end.messages,
                end.close.map(|f| f.to_string()),
                end.end
            ));
        }
    }
    assert!(bad.is_empty(), "slow consumers not cut off: {bad:#?}");
    assert_eq!(http_get(s.api, "/healthz").status, 200);
}
