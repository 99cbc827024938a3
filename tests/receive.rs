//! Client input on its way in: on io_uring it arrives in the reactor's provided-buffer ring
//! (`server.uring_recv_buffers`), a few KiB per buffer, shared by all connections. Many clients at once against a
//! ring of two buffers (most receives find none and the connection is read instead), messages larger than a
//! buffer, and an upgrade request with frames behind it in one packet: every byte arrives, in order. Runs on each
//! io backend (WSGATE_TEST_IO_BACKEND); on epoll the key changes nothing.

mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// Message `i` of client `c`: its own bytes. Small: the echoes never fill a socket, so no output event can get a
/// connection read again once its receive found no buffer — only the backend's own fallback.
fn message(c: usize, i: usize) -> String {
    let len = 10 + i * 3;
    let head = format!("c{c}-m{i}-");
    let fill: String = (0..len)
        .map(|k| (b'a' + ((c * 31 + i * 7 + k) % 26) as u8) as char)
        .collect();
    head + &fill
}

#[test]
fn many_clients_at_once_against_a_two_buffer_ring_lose_and_reorder_nothing() {
    let s = Server::start(&[
        "--echo-path",
        "/echo",
        "--threads",
        "1",
        "--set",
        "server.uring_recv_buffers=2",
        "--set",
        "limits.ping_rate=1000000000",
        "--set",
        "limits.ping_burst=1000000",
    ]);
    const CLIENTS: usize = 32;
    const BURSTS: usize = 6;
    const PER_BURST: usize = 8;
    let start = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let start = start.clone();
            let mut ws = RawWs::connect(s.ws, "/echo");
            // A server that stops reading fails the test instead of blocking this write.
            ws.stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
            std::thread::spawn(move || {
                start.wait();
                for b in 0..BURSTS {
                    // A burst of frames in one write, more than the whole ring holds: each message behind 30
                    // pong frames (~4 KB of input the server answers with nothing).
                    let ids: Vec<usize> = (b * PER_BURST..(b + 1) * PER_BURST).collect();
                    let pong = masked_frame(true, OP_PONG, &[b'p'; 125]);
                    let burst: Vec<u8> = ids
                        .iter()
                        .flat_map(|&i| {
                            let mut f = pong.repeat(30);
                            f.extend(masked_frame(true, OP_TEXT, message(c, i).as_bytes()));
                            f
                        })
                        .collect();
                    ws.send_raw(&burst);
                    for &i in &ids {
                        let got = ws.expect_text(&format!("client {c} echo {i}"));
                        assert!(
                            got == message(c, i),
                            "client {c} message {i}: got {} bytes starting {:?}",
                            got.len(),
                            &got[..got.len().min(40)]
                        );
                    }
                }
            })
        })
        .collect();
    for (c, t) in clients.into_iter().enumerate() {
        t.join()
            .unwrap_or_else(|_| panic!("client {c} failed\n{}", s.describe()));
    }
    let sent = (CLIENTS * BURSTS * PER_BURST) as u64;
    let counted = s.wait_stat("/totals/messages_in_total", sent, Duration::from_secs(5));
    assert_eq!(counted, sent, "messages decoded: each once");
}

#[test]
fn messages_larger_than_the_receive_buffers_arrive_whole() {
    let s = Server::start(&[
        "--echo-path",
        "/echo",
        "--set",
        "server.uring_recv_buffers=2",
    ]);
    let mut ws = RawWs::connect(s.ws, "/echo");
    for (n, size) in [4_095usize, 4_096, 4_097, 20_000, 250_000, 1_000_000]
        .into_iter()
        .enumerate()
    {
        let text: String = (0..size)
            .map(|k| (b'a' + ((n + k * 13) % 26) as u8) as char)
            .collect();
        ws.send_text(&text);
        let got = ws.expect_text(&format!("echo of {size} bytes"));
        assert!(got == text, "{size} bytes: got {} bytes back", got.len());
    }
    // A message in three fragments of 10 KB, each spanning receive buffers.
    let parts: Vec<String> = (0..3)
        .map(|p| ((b'x' + p) as char).to_string().repeat(10_000))
        .collect();
    ws.send_frame(false, OP_TEXT, parts[0].as_bytes());
    ws.send_frame(false, OP_CONT, parts[1].as_bytes());
    ws.send_frame(true, OP_CONT, parts[2].as_bytes());
    assert_eq!(ws.expect_text("fragmented echo"), parts.concat());
}

#[test]
fn upgrade_request_and_frames_in_one_packet_are_all_decoded() {
    let s = Server::start(&["--echo-path", "/echo"]);
    let mut stream = TcpStream::connect(s.ws).unwrap();
    let key = new_key();
    let mut packet = upgrade_request(&s.ws.to_string(), "/echo", &key, &[], &[]);
    let texts = ["first".to_string(), "x".repeat(6_000), "last".to_string()];
    for t in &texts {
        packet.extend(masked_frame(true, OP_TEXT, t.as_bytes()));
    }
    stream.write_all(&packet).unwrap();
    let mut buf = Vec::new();
    let resp = read_http_response(&mut stream, &mut buf, READ_TIMEOUT).unwrap();
    assert_eq!(resp.status, 101, "{resp}");
    let mut ws = RawWs {
        stream,
        buf,
        response: Some(resp),
        welcome: None,
    };
    for t in &texts {
        assert_eq!(&ws.expect_text("pipelined frame"), t);
    }
    // Nothing else is pending on the connection: it still answers.
    ws.send_text("after");
    assert_eq!(ws.expect_text("after"), "after");
}
