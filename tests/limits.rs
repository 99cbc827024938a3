//! Limits on what a client may hold while its input is incomplete: `ws.message_timeout` (a message or frame must
//! complete in time, however it trickles) and `server.max_buffered_bytes` (the process-wide budget for buffered
//! input: past it the largest holders are closed with 1008 "memory budget", well-behaved connections untouched).

mod common;

use common::*;
use std::time::{Duration, Instant};

/// The frame header of a masked binary frame announcing `len` payload bytes (the payload follows separately).
fn header(fin: bool, opcode: u8, len: usize, mask: [u8; 4]) -> Vec<u8> {
    frame_header(fin, 0, opcode, len as u64, Some(mask))
}

/// Sends `bytes` one at a time, `every` apart, until the server closes or `limit` passes; returns what ended it.
fn trickle(ws: &mut RawWs, every: Duration, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ws.try_send_raw(&[0x55]).is_err() {
            return Ok(()); // the server closed on us
        }
        std::thread::sleep(every);
        if ws.stream.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0) {
            return Ok(()); // the server has something to say (its close frame)
        }
    }
    Err(format!("still open after trickling for {limit:?}"))
}

fn timeout_server() -> Server {
    Server::start(&[
        "--threads",
        "1",
        "--echo-path",
        "/echo",
        "--set",
        "ws.message_timeout=2",
        "--set",
        "ws.ping_interval=1",
        "--set",
        "ws.idle_timeout=4",
    ])
}

#[test]
fn a_frame_trickled_forever_is_closed_with_1008_message_timeout() {
    let s = timeout_server();
    let mut ws = RawWs::connect(s.ws, "/echo");
    ws.send_raw(&header(true, OP_BINARY, 100_000, [1, 2, 3, 4]));
    // One byte every 300 ms: the connection is never silent, so only the message timeout can end it.
    ws.stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let trickled = trickle(&mut ws, Duration::from_millis(300), Duration::from_secs(10));
    assert!(trickled.is_ok(), "{trickled:?}\n{}", s.describe());
    let close = ws.expect_close_code(1008, "trickled frame");
    assert_eq!(close.close_reason(), "message timeout");
    assert!(s.wait_stat("/totals/message_timeouts_total", 1, Duration::from_secs(5)) >= 1);
    wait_stat_zero(&s, "/totals/read_buffers_lent");
}

fn wait_stat_zero(s: &Server, pointer: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.stat(pointer) != 0 {
        assert!(
            Instant::now() < deadline,
            "{pointer} stays above 0\n{}",
            s.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_fragmented_message_kept_alive_by_pings_is_closed_with_1008_message_timeout() {
    let s = timeout_server();
    let mut ws = RawWs::connect(s.ws, "/echo");
    ws.send_frame(
        false,
        OP_TEXT,
        b"first fragment of a message that never ends",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut closed = None;
    while Instant::now() < deadline && closed.is_none() {
        // Pings are answered (the connection is alive), but the message never completes.
        if ws
            .try_send_raw(&masked_frame(true, OP_PING, b"alive"))
            .is_err()
        {
            break;
        }
        while let Ok(f) = ws.read_frame_timeout(Duration::from_millis(400)) {
            if f.is_close() {
                closed = Some(f);
                break;
            }
        }
    }
    let close = closed.unwrap_or_else(|| panic!("no close within 10 s\n{}", s.describe()));
    assert_eq!(close.close_code(), Some(1008), "{close}");
    assert_eq!(close.close_reason(), "message timeout");
}

#[test]
fn a_message_that_keeps_arriving_in_time_is_not_cut_off() {
    let s = timeout_server();
    let mut ws = RawWs::connect(s.ws, "/echo");
    // Four seconds of messages, each complete within a second: frames complete, so nothing is stale.
    for i in 0..8 {
        let payload = vec![b'a' + i as u8; 3000];
        let frame = masked_frame(true, OP_TEXT, &payload);
        ws.send_raw(&frame[..1500]);
        std::thread::sleep(Duration::from_millis(250));
        ws.send_raw(&frame[1500..]);
        std::thread::sleep(Duration::from_millis(250));
        let echo = loop {
            let f = ws.read_frame().expect("echo");
            if f.opcode != OP_PING {
                break f; // the server pings on its own schedule (ws.ping_interval=1)
            }
        };
        assert_eq!(echo.opcode, OP_TEXT, "message {i}: {echo}");
        assert_eq!(echo.payload, payload, "message {i}");
    }
}

#[test]
fn past_the_memory_budget_the_largest_holder_gets_1008_and_the_others_are_untouched() {
    let s = Server::start(&[
        "--threads",
        "1",
        "--echo-path",
        "/echo",
        "--set",
        "server.max_buffered_bytes=2097152",
        "--set",
        "ws.max_message_size=8388608",
    ]);
    let mut sub = RawWs::connect(s.ws, "/ws?channels=news");
    // Three hoarders, each announcing an 8 MiB frame and sending part of it: 1500, 900 and 64 KiB. Together they
    // hold more than the 2 MiB budget; closing the largest is enough.
    let mut hoarders = Vec::new();
    for kib in [1500usize, 900, 64] {
        let mut ws = RawWs::connect(s.ws, "/echo");
        ws.send_raw(&header(true, OP_BINARY, 8 << 20, [9, 8, 7, 6]));
        ws.send_raw(&vec![0u8; kib * 1024]);
        hoarders.push((kib, ws));
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        s.wait_stat(
            "/totals/memory_budget_closes_total",
            1,
            Duration::from_secs(5)
        ) >= 1,
        "{}",
        s.describe()
    );
    let (_, largest) = &mut hoarders[0];
    let close = largest.expect_close_code(1008, "the largest holder");
    assert_eq!(close.close_reason(), "memory budget");
    // The smallest holder is far below the budget and the largest is gone: it stays open.
    let (_, smallest) = &mut hoarders[2];
    match smallest.read_frame_timeout(Duration::from_millis(500)) {
        Err(WsReadError::Timeout { .. }) => {}
        other => panic!("holder of 64 KiB: expected nothing, got {other:?}"),
    }
    assert!(
        s.stat("/totals/buffered_bytes") <= 2 << 20,
        "buffered bytes over the budget after the closes\n{}",
        s.describe()
    );
    // A subscriber holds no input: it still receives what is published.
    let mut api = Http::connect(s.api);
    publish(&mut api, "news", r#""still here""#);
    let f = sub.read_frame().expect("publish after the budget closes");
    assert!(f.text().contains("still here"), "{f}");
    s.signal(libc::SIGTERM);
}

#[test]
fn a_ping_flood_gets_at_most_the_burst_of_pongs_then_4008() {
    // WebSocket pings count against limits.ping_rate / ping_burst like `op: ping` (docs/PROTOCOL.md).
    let s = Server::start(&["--threads", "1"]);
    let mut ws = RawWs::connect(s.ws, "/ws");
    let mut flood = Vec::new();
    for i in 0..200u32 {
        flood.extend_from_slice(&masked_frame(true, OP_PING, &i.to_be_bytes()));
    }
    ws.send_raw(&flood);
    let (close, before) = ws.expect_close("ping flood");
    let pongs = before.iter().filter(|f| f.opcode == OP_PONG).count();
    assert!(
        (1..=21).contains(&pongs),
        "pongs for a flood of 200 pings within the burst of 20: {pongs}"
    );
    assert_eq!(close.close_code(), Some(4008), "{close}");
    assert_eq!(close.close_reason(), "rate limit exceeded");
    // The server still serves others.
    let mut other = RawWs::connect(s.ws, "/ws");
    other.send_text(r#"{"op":"ping","id":1}"#);
    let f = other.read_frame().expect("pong reply");
    assert!(f.text().contains("pong"), "{f}");
}

#[test]
fn an_api_body_past_the_memory_budget_gets_503_and_the_api_keeps_serving() {
    let s = Server::start(&[
        "--set",
        "server.max_buffered_bytes=1048576",
        "--set",
        "api.max_body=4194304",
    ]);
    let mut api = Http::connect(s.api);
    let head = "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 3000000\r\n\r\n";
    api.send(head.as_bytes());
    // More than the budget of body bytes, in pieces (the server may stop reading once it refuses).
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..24 {
        if write_all_lenient(&mut api.stream, &chunk).is_err() {
            break;
        }
    }
    let r = api
        .read_response(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("no answer to a body over the budget: {e}\n{}", s.describe()));
    assert_eq!(r.status, 503, "{r}");
    assert!(r.text().contains("memory budget"), "{r}");
    let health = http_get(s.api, "/healthz");
    assert_eq!(health.status, 200, "{health}");
    // The refused body no longer counts: an ordinary publish goes through.
    let mut api = Http::connect(s.api);
    publish(&mut api, "news", r#""after""#);
}
