//! Regression: a connection closed while decoding input that completed a frame held in a lent read buffer (the
//! client's close reply split across reads, after the server's close) must not panic the reactor.

mod common;

use common::Gateway;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[test]
fn close_reply_split_across_reads_after_server_close() {
    let gw = Gateway::start(&["--threads", "1", "--set", "ws.error_budget=0"]);
    let mut s = TcpStream::connect(gw.addr("ws")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    // One malformed request spends the (zero) error budget: the server sends close 1008 and waits for ours.
    s.write_all(&masked_frame(0x1, b"not json")).unwrap();
    let mut hdr = [0u8; 2];
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(hdr[0], 0x88, "expected a close frame");
    let mut rest = vec![0u8; hdr[1] as usize];
    s.read_exact(&mut rest).unwrap();
    // Our close reply, split so its first bytes wait in a lent buffer.
    let close = masked_frame(0x8, &[0x03, 0xe8]);
    s.write_all(&close[..3]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(&close[3..]).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        s.read(&mut buf).unwrap_or(0),
        0,
        "server closes the TCP connection"
    );
    // The (single) reactor still serves.
    let (status, _) = gw.api("GET", "/healthz", "");
    assert_eq!(status, 200);
    let mut s2 = TcpStream::connect(gw.addr("ws")).unwrap();
    s2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s2.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = s2.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
}
