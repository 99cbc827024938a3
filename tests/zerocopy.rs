//! Zero-copy sends of large frames (`ws.zerocopy_threshold`): frames arrive intact and in order around small ones,
//! subscribers that vanish while the kernel still holds the pages leave nothing behind, and the slow-consumer
//! limit still holds. Runs on each io backend (WSGATE_TEST_IO_BACKEND).

mod common;

use common::*;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const THRESHOLD: &str = "ws.zerocopy_threshold=8192";

fn large(i: usize) -> String {
    // ~64 KiB, different for every message so that a frame sent from reused memory would show.
    let fill: String = (0..64 * 1024)
        .map(|k| (b'a' + ((i * 7 + k) % 26) as u8) as char)
        .collect();
    format!(r#"{{"i":{i},"big":"{fill}"}}"#)
}

fn small(i: usize) -> String {
    format!(r#"{{"i":{i}}}"#)
}

/// Message `i` of the test sequence: every third one small.
fn message(i: usize) -> String {
    if i % 3 == 1 {
        small(i)
    } else {
        large(i)
    }
}

fn expected(channel: &str, i: usize) -> String {
    format!(r#"{{"channel":"{channel}","data":{}}}"#, message(i))
}

/// Nothing is held for zero-copy sends any more, and no connection waits for a notification.
fn assert_released(s: &Server, ctx: &str) {
    let released = eventually(Duration::from_secs(10), || {
        let st = s.stats();
        let pinned = st.pointer("/totals/zerocopy_pinned_bytes")?.as_u64()?;
        let parked = st.pointer("/totals/zerocopy_parked")?.as_u64()?;
        (pinned == 0 && parked == 0).then_some(())
    });
    assert!(
        released.is_some(),
        "{ctx}: zero-copy memory not released: {}\n{}",
        s.stats()["totals"],
        s.describe()
    );
}

#[test]
fn large_frames_arrive_intact_and_in_order_among_small_ones() {
    // All 24 messages (~1.1 MB) are published before anyone reads: room for them all above the default 1 MiB
    // slow-consumer limit, which a test of its own below covers.
    let s = Server::start(&["--set", THRESHOLD, "--set", "ws.max_outbound_bytes=8388608"]);
    const SUBSCRIBERS: usize = 40;
    const MESSAGES: usize = 24;
    let mut clients: Vec<Tws> = (0..SUBSCRIBERS)
        .map(|_| ws_connect(s.ws, "/ws?channels=z"))
        .collect();
    let mut api = Http::connect(s.api);
    for i in 0..MESSAGES {
        publish(&mut api, "z", &message(i));
    }
    for (n, ws) in clients.iter_mut().enumerate() {
        let mut i = 0;
        while i < MESSAGES {
            match ws.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    assert!(
                        t.as_str() == expected("z", i),
                        "subscriber {n}: message {i} differs (len {} vs {})",
                        t.len(),
                        expected("z", i).len()
                    );
                    i += 1;
                }
                Ok(tungstenite::Message::Ping(_)) | Ok(tungstenite::Message::Pong(_)) => {}
                other => panic!("subscriber {n} at message {i}: {other:?}"),
            }
        }
    }
    assert!(
        s.stat("/totals/zerocopy_sends_total") > 0,
        "no zero-copy send happened: {}",
        s.stats()["totals"]
    );
    drop(clients);
    s.assert_idle("after the subscribers left");
    assert_released(&s, "after the subscribers left");
}

/// Closes with SO_LINGER 0: the server's socket gets a reset while its sends are in flight.
fn reset(stream: std::net::TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket the test owns, with a live linger struct and its size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

#[test]
fn subscribers_that_vanish_mid_send_leave_nothing_behind() {
    let s = Server::start(&["--set", THRESHOLD, "--set", "ws.max_outbound_bytes=4194304"]);
    // Stalled subscribers (small receive buffers, never read): the server's sends stay in flight.
    let mut stalled: Vec<RawWs> = (0..16)
        .map(|_| {
            let stream = tcp_connect_small_rcvbuf(s.ws, 4096);
            RawWs::upgrade(stream, s.ws, "/ws?channels=v", &[]).expect("upgrade")
        })
        .collect();
    let mut api = Http::connect(s.api);
    for i in 0..12 {
        publish(&mut api, "v", &large(i));
    }
    // Wait until the server has written to them, then half reset, half close with a close frame unread.
    s.wait_stat("/totals/bytes_out_total", 16 * 64 * 1024, READ_TIMEOUT);
    // Their peers read nothing, so the kernel still holds pages of the zero-copy sends when they vanish.
    assert!(
        s.wait_stat("/totals/zerocopy_pinned_bytes", 1, READ_TIMEOUT) > 0,
        "no zero-copy send in flight: {}",
        s.stats()["totals"]
    );
    for (n, ws) in stalled.drain(..).enumerate() {
        if n % 2 == 0 {
            reset(ws.stream);
        } else {
            let mut stream = ws.stream;
            let _ = stream.write_all(&masked_frame(true, OP_CLOSE, &close_payload(1000, b"")));
        }
    }
    // The server goes on serving: a new subscriber gets large frames intact.
    let mut ws = ws_connect(s.ws, "/ws?channels=v");
    for i in 100..104 {
        publish(&mut api, "v", &large(i));
    }
    for i in 100..104 {
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    assert!(t.as_str() == format!(r#"{{"channel":"v","data":{}}}"#, large(i)));
                    break;
                }
                Ok(tungstenite::Message::Ping(_)) | Ok(tungstenite::Message::Pong(_)) => {}
                other => panic!("message {i}: {other:?}"),
            }
        }
    }
    drop(ws);
    s.assert_idle("after every subscriber left");
    assert_released(&s, "after every subscriber left");
}

#[test]
fn a_reader_that_takes_frames_in_small_bites_gets_them_all_and_leaves_nothing_pinned() {
    // A small receive buffer makes the zero-copy sends partial; the rest of a frame may leave after the kernel's
    // first notification (which on loopback also says it copied, so the rest goes without zero-copy).
    let s = Server::start(&["--set", THRESHOLD, "--set", "ws.max_outbound_bytes=4194304"]);
    const MESSAGES: usize = 8;
    let mut readers: Vec<RawWs> = (0..4)
        .map(|_| {
            // Smaller than a frame, not so small that the kernel drops the copies it makes of zero-copy
            // packets at local delivery (they take a page per fragment).
            let stream = tcp_connect_small_rcvbuf(s.ws, 32 * 1024);
            RawWs::upgrade(stream, s.ws, "/ws?channels=b", &[]).expect("upgrade")
        })
        .collect();
    let mut api = Http::connect(s.api);
    for i in 0..MESSAGES {
        publish(&mut api, "b", &large(i));
    }
    std::thread::sleep(Duration::from_millis(200));
    for (n, ws) in readers.iter_mut().enumerate() {
        for i in 0..MESSAGES {
            let f = ws
                .read_frame_timeout(READ_TIMEOUT)
                .unwrap_or_else(|e| panic!("reader {n} at {i}: {e}"));
            assert!(f.text() == format!(r#"{{"channel":"b","data":{}}}"#, large(i)));
        }
    }
    assert_released(&s, "while the readers are still connected");
    drop(readers);
    s.assert_idle("after the readers left");
    assert_released(&s, "after the readers left");
}

#[test]
fn slow_consumer_of_zero_copy_frames_is_closed_at_the_limit() {
    let s = Server::start(&["--set", THRESHOLD, "--set", "ws.max_outbound_bytes=262144"]);
    let stream = tcp_connect_small_rcvbuf(s.ws, 4096);
    let mut slow = RawWs::upgrade(stream, s.ws, "/ws?channels=q", &[]).expect("upgrade");
    let mut reader = ws_connect(s.ws, "/ws?channels=q");
    let mut api = Http::connect(s.api);
    const MESSAGES: usize = 40;
    for i in 0..MESSAGES {
        publish(&mut api, "q", &large(i));
        // The reading subscriber keeps up, so only the stalled one falls behind.
        loop {
            match reader.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    assert!(t.as_str() == format!(r#"{{"channel":"q","data":{}}}"#, large(i)));
                    break;
                }
                Ok(tungstenite::Message::Ping(_)) | Ok(tungstenite::Message::Pong(_)) => {}
                other => panic!("reader at {i}: {other:?}"),
            }
        }
    }
    assert!(
        s.wait_stat("/totals/slow_consumer_closes_total", 1, READ_TIMEOUT) >= 1,
        "the stalled subscriber was not closed: {}",
        s.stats()["totals"]
    );
    // What it finally reads: whole frames, then the close 1008 (or the end of the connection).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut frames = 0;
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match slow.read_frame_timeout(left.min(Duration::from_secs(5))) {
            Ok(f) if f.is_close() => break format!("close {:?}", f.close_code()),
            Ok(f) if f.opcode == OP_TEXT => {
                let i = frames;
                assert!(f.text() == format!(r#"{{"channel":"q","data":{}}}"#, large(i)));
                frames += 1;
            }
            Ok(_) => {}
            Err(WsReadError::Eof { .. }) | Err(WsReadError::Io(_)) => break "eof".to_string(),
            Err(e) => break format!("still open: {e}"),
        }
    };
    assert!(
        end == "close Some(1008)" || end == "eof",
        "stalled subscriber ended with {end} after {frames} frames"
    );
    assert!(frames < MESSAGES, "the stalled subscriber got everything");
    drop(reader);
    drop(slow);
    s.assert_idle("after the slow consumer");
    assert_released(&s, "after the slow consumer");
}
