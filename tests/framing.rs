//! RFC 6455 framing against the echo endpoint (`--echo-path /echo`), with hand-built masked frames on raw TCP.
//! Every protocol violation must produce the right close code; valid traffic must be echoed byte for byte.

mod common;

use common::*;
use std::time::Duration;

fn echo_server(extra: &[&str]) -> Server {
    let mut args = vec!["--echo-path", "/echo"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn connect(s: &Server) -> RawWs {
    RawWs::connect_with(s.ws, "/echo", &[])
        .unwrap_or_else(|e| panic!("connect /echo: {e}\n{}", s.describe()))
}

/// Reads one whole message (assembling continuation frames), answering pings and skipping pongs.
fn read_message(ws: &mut RawWs, timeout: Duration, ctx: &str) -> (u8, Vec<u8>) {
    let first = ws
        .next_message(timeout)
        .unwrap_or_else(|e| panic!("{ctx}: expected a message, got {e}"));
    assert!(
        first.opcode == OP_TEXT || first.opcode == OP_BINARY,
        "{ctx}: expected a data frame, got {first}"
    );
    assert_eq!(first.rsv, 0, "{ctx}: server set RSV bits: {first}");
    let opcode = first.opcode;
    let mut data = first.payload;
    let mut fin = first.fin;
    while !fin {
        let f = ws
            .next_message(timeout)
            .unwrap_or_else(|e| panic!("{ctx}: expected a continuation, got {e}"));
        assert_eq!(
            f.opcode, OP_CONT,
            "{ctx}: expected a continuation frame, got {f}"
        );
        data.extend_from_slice(&f.payload);
        fin = f.fin;
    }
    (opcode, data)
}

fn expect_echo(ws: &mut RawWs, opcode: u8, payload: &[u8], ctx: &str) {
    let (op, data) = read_message(ws, Duration::from_secs(10), ctx);
    assert_eq!(op, opcode, "{ctx}: echoed opcode");
    assert_eq!(data.len(), payload.len(), "{ctx}: echoed length");
    assert!(
        data == payload,
        "{ctx}: echoed bytes differ (first difference at {:?})",
        data.iter().zip(payload).position(|(a, b)| a != b)
    );
}

/// The server fails the connection: a close frame with `code` (only pings/pongs before it), then it closes TCP.
fn expect_fail(s: &Server, ws: &mut RawWs, code: u16, ctx: &str) {
    let f = ws.expect_close_code(code, ctx);
    // Answer like a conforming client (the server may wait briefly for this), then the server must drop TCP.
    let _ = ws.try_send_raw(&masked_frame(true, OP_CLOSE, &f.payload));
    ws.wait_closed(Duration::from_secs(3))
        .assert_closed(&format!("{ctx}: after close {code}\n{}", s.describe()));
}

fn ascii(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ----------------------------------------------------------------------------------------------- valid traffic

#[test]
fn echoes_text_and_binary() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    ws.send_text("hello");
    expect_echo(&mut ws, OP_TEXT, b"hello", "small text");
    ws.send_frame(true, OP_TEXT, "héllo wörld ✓ 😀".as_bytes());
    expect_echo(
        &mut ws,
        OP_TEXT,
        "héllo wörld ✓ 😀".as_bytes(),
        "unicode text",
    );
    let bin = [0u8, 1, 2, 0xFF, 0xFE, 0x80, 0xC0];
    ws.send_frame(true, OP_BINARY, &bin);
    expect_echo(&mut ws, OP_BINARY, &bin, "binary with non-UTF-8 bytes");
    ws.send_frame(true, OP_TEXT, b"");
    expect_echo(&mut ws, OP_TEXT, b"", "empty text");
    ws.send_frame(true, OP_BINARY, b"");
    expect_echo(&mut ws, OP_BINARY, b"", "empty binary");
    // Length boundaries: 7-bit / 16-bit / 64-bit encodings.
    for n in [125usize, 126, 127, 65535, 65536] {
        let p = pseudo_random(n, n as u64);
        ws.send_frame(true, OP_BINARY, &p);
        expect_echo(&mut ws, OP_BINARY, &p, &format!("binary {n} bytes"));
    }
}

#[test]
fn echoes_many_messages_in_one_write() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    let mut bytes = Vec::new();
    for i in 0..200 {
        bytes.extend(masked_frame(true, OP_TEXT, format!("msg {i}").as_bytes()));
    }
    ws.send_raw(&bytes);
    for i in 0..200 {
        expect_echo(
            &mut ws,
            OP_TEXT,
            format!("msg {i}").as_bytes(),
            &format!("batched message {i}"),
        );
    }
}

#[test]
fn frames_split_byte_by_byte_are_reassembled() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    let f = masked_frame(true, OP_TEXT, "split across many TCP writes ✓".as_bytes());
    for b in &f {
        ws.send_raw(&[*b]);
        std::thread::sleep(Duration::from_millis(2));
    }
    expect_echo(
        &mut ws,
        OP_TEXT,
        "split across many TCP writes ✓".as_bytes(),
        "byte-by-byte frame",
    );
    // A 16-bit-length frame whose header is split.
    let p = ascii(300);
    let f = masked_frame(true, OP_BINARY, &p);
    ws.send_raw(&f[..3]);
    std::thread::sleep(Duration::from_millis(20));
    ws.send_raw(&f[3..7]);
    std::thread::sleep(Duration::from_millis(20));
    ws.send_raw(&f[7..]);
    expect_echo(&mut ws, OP_BINARY, &p, "split 16-bit header");
}

#[test]
fn ping_gets_pong_with_same_payload_and_unsolicited_pong_is_ignored() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    ws.send_frame(true, OP_PING, b"are you there");
    let f = ws.expect_frame("pong");
    assert_eq!(
        (f.opcode, f.fin, f.payload.as_slice()),
        (OP_PONG, true, &b"are you there"[..]),
        "pong: {f}"
    );
    let max = vec![7u8; 125];
    ws.send_frame(true, OP_PING, &max);
    let f = ws.expect_frame("pong 125");
    assert_eq!(
        (f.opcode, f.payload.clone()),
        (OP_PONG, max),
        "pong to a 125-byte ping: {f}"
    );
    ws.send_frame(true, OP_PONG, b"unsolicited");
    ws.send_text("still here");
    expect_echo(&mut ws, OP_TEXT, b"still here", "after unsolicited pong");
}

#[test]
fn fragmented_text_with_interleaved_ping() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    ws.send_frame(false, OP_TEXT, b"Hello, ");
    ws.send_frame(true, OP_PING, b"p1");
    let f = ws.expect_frame("pong in the middle of a fragmented message");
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_PONG, &b"p1"[..]),
        "expected the pong first, got {f}"
    );
    ws.send_frame(false, OP_CONT, b"wor");
    ws.send_frame(true, OP_CONT, b"ld");
    expect_echo(&mut ws, OP_TEXT, b"Hello, world", "assembled fragments");
    // Binary, many fragments, including empty ones.
    ws.send_frame(false, OP_BINARY, b"");
    for i in 0..20u8 {
        ws.send_frame(false, OP_CONT, &[i; 10]);
    }
    ws.send_frame(true, OP_CONT, b"");
    let want: Vec<u8> = (0..20u8).flat_map(|i| [i; 10]).collect();
    expect_echo(&mut ws, OP_BINARY, &want, "binary in 22 fragments");
}

#[test]
fn utf8_char_split_across_fragments_is_valid() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    // 😀 = F0 9F 98 80 split 2/2, and é = C3 A9 split 1/1, and ✓ = E2 9C 93 split 1/1/1.
    ws.send_frame(false, OP_TEXT, &[b'a', 0xF0, 0x9F]);
    ws.send_frame(false, OP_CONT, &[0x98, 0x80, b'b', 0xC3]);
    ws.send_frame(false, OP_CONT, &[0xA9, 0xE2]);
    ws.send_frame(false, OP_CONT, &[0x9C]);
    ws.send_frame(true, OP_CONT, &[0x93]);
    expect_echo(
        &mut ws,
        OP_TEXT,
        "a😀bé✓".as_bytes(),
        "split multi-byte chars",
    );
}

#[test]
fn large_messages_64k_and_1m_are_echoed() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    let p = pseudo_random(64 * 1024, 1);
    ws.send_frame(true, OP_BINARY, &p);
    expect_echo(&mut ws, OP_BINARY, &p, "64 KiB binary");
    let t = ascii(65535);
    ws.send_frame(true, OP_TEXT, &t);
    expect_echo(&mut ws, OP_TEXT, &t, "65535-byte text (16-bit length)");
    // Exactly the default max_message_size (1 MiB) is allowed.
    let m = pseudo_random(1024 * 1024, 2);
    let f = masked_frame(true, OP_BINARY, &m);
    let mut w = ws.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut w, &f));
    expect_echo(&mut ws, OP_BINARY, &m, "1 MiB binary (64-bit length)");
    writer.join().unwrap().expect("write 1 MiB");
}

#[test]
fn message_of_16_mib_is_echoed_intact() {
    let s = echo_server(&["--set", "ws.max_message_size=16777216"]);
    let mut ws = connect(&s);
    // Single 16 MiB text frame.
    let text = ascii(16 * 1024 * 1024);
    let f = masked_frame(true, OP_TEXT, &text);
    let mut w = ws.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut w, &f));
    let (op, data) = read_message(&mut ws, Duration::from_secs(30), "16 MiB text");
    writer.join().unwrap().expect("write 16 MiB");
    assert_eq!(op, OP_TEXT);
    assert_eq!(data.len(), text.len(), "16 MiB text length");
    assert!(
        data == text,
        "16 MiB text corrupted at {:?}",
        data.iter().zip(&text).position(|(a, b)| a != b)
    );
    drop(data);
    // 16 MiB binary in 256 fragments of 64 KiB.
    let bin = pseudo_random(16 * 1024 * 1024, 9);
    let mut frames = Vec::with_capacity(bin.len() + 256 * 14);
    for (i, chunk) in bin.chunks(64 * 1024).enumerate() {
        let op = if i == 0 { OP_BINARY } else { OP_CONT };
        frames.extend(masked_frame(i == 255, op, chunk));
    }
    let mut w = ws.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut w, &frames));
    let (op, data) = read_message(&mut ws, Duration::from_secs(30), "16 MiB fragmented binary");
    writer.join().unwrap().expect("write fragments");
    assert_eq!(op, OP_BINARY);
    assert_eq!(data.len(), bin.len());
    assert!(
        data == bin,
        "16 MiB binary corrupted at {:?}",
        data.iter().zip(&bin).position(|(a, b)| a != b)
    );
    // Still usable.
    ws.send_text("after");
    expect_echo(&mut ws, OP_TEXT, b"after", "after 16 MiB");
}

// ----------------------------------------------------------------------------------------------- 1002 protocol errors

#[test]
fn unmasked_frame_is_1002() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    ws.send_raw(&build_frame(true, 0, OP_TEXT, b"no mask", None));
    expect_fail(&s, &mut ws, 1002, "unmasked text");
}

#[test]
fn rsv_bits_are_1002() {
    let s = echo_server(&[]);
    for rsv in [4u8, 2, 1] {
        let mut ws = connect(&s);
        ws.send_raw(&build_frame(true, rsv, OP_TEXT, b"rsv", Some(next_mask())));
        expect_fail(&s, &mut ws, 1002, &format!("RSV bits {rsv:03b}"));
    }
}

#[test]
fn reserved_opcodes_are_1002() {
    let s = echo_server(&[]);
    for op in [3u8, 7, 0xB, 0xF] {
        let mut ws = connect(&s);
        ws.send_raw(&build_frame(true, 0, op, b"x", Some(next_mask())));
        expect_fail(&s, &mut ws, 1002, &format!("opcode {op}"));
    }
}

#[test]
fn ping_with_126_byte_payload_is_1002() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    ws.send_frame(true, OP_PING, &[1u8; 126]);
    expect_fail(&s, &mut ws, 1002, "126-byte ping");
}

#[test]
fn fragmented_ping_is_1002() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    ws.send_frame(false, OP_PING, b"frag");
    expect_fail(&s, &mut ws, 1002, "ping with FIN=0");
}

#[test]
fn continuation_without_start_is_1002() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    ws.send_frame(true, OP_CONT, b"orphan");
    expect_fail(&s, &mut ws, 1002, "continuation without a message");
    // Also right after a complete message.
    let mut ws = connect(&s);
    ws.send_text("complete");
    expect_echo(&mut ws, OP_TEXT, b"complete", "complete message");
    ws.send_frame(false, OP_CONT, b"orphan");
    expect_fail(&s, &mut ws, 1002, "continuation after a complete message");
}

#[test]
fn new_message_while_fragmented_is_1002() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    ws.send_frame(false, OP_TEXT, b"first half");
    ws.send_frame(true, OP_TEXT, b"new message");
    expect_fail(&s, &mut ws, 1002, "text while a text is fragmented");
    let mut ws = connect(&s);
    ws.send_frame(false, OP_BINARY, b"first half");
    ws.send_frame(false, OP_TEXT, b"new message");
    expect_fail(&s, &mut ws, 1002, "text while a binary is fragmented");
}

// ----------------------------------------------------------------------------------------------- 1007 invalid UTF-8

#[test]
fn invalid_utf8_text_is_1007() {
    let s = echo_server(&[]);
    let cases: [(&str, &[u8]); 5] = [
        ("0xFF byte", &[b'a', 0xFF, b'b']),
        ("overlong encoding", &[0xC0, 0xAF]),
        ("UTF-16 surrogate", &[0xED, 0xA0, 0x80]),
        ("above U+10FFFF", &[0xF4, 0x90, 0x80, 0x80]),
        ("truncated at the end", &[b'o', b'k', 0xE2, 0x82]),
    ];
    for (name, bytes) in cases {
        let mut ws = connect(&s);
        ws.send_frame(true, OP_TEXT, bytes);
        expect_fail(&s, &mut ws, 1007, name);
    }
}

#[test]
fn invalid_utf8_across_fragments_is_1007() {
    let s = echo_server(&[]);
    // First fragment ends inside a valid 3-byte sequence; the next continues it wrongly.
    let mut ws = connect(&s);
    ws.send_frame(false, OP_TEXT, &[b'a', 0xE2, 0x82]);
    ws.send_frame(true, OP_CONT, &[0x28, b'b']);
    expect_fail(&s, &mut ws, 1007, "broken sequence across fragments");
    // Message ends with an incomplete sequence in the last (valid-so-far) fragment.
    let mut ws = connect(&s);
    ws.send_frame(false, OP_TEXT, b"abc");
    ws.send_frame(true, OP_CONT, &[0xF0, 0x9F, 0x98]);
    expect_fail(
        &s,
        &mut ws,
        1007,
        "incomplete sequence at the end of a fragmented message",
    );
    // Invalid byte in a middle fragment, message never finished: must fail without waiting for FIN.
    let mut ws = connect(&s);
    ws.send_frame(false, OP_TEXT, b"abc");
    ws.send_frame(false, OP_CONT, &[b'x', 0xFF]);
    expect_fail(
        &s,
        &mut ws,
        1007,
        "invalid byte in an unfinished fragmented message",
    );
}

#[test]
fn invalid_utf8_in_partial_frame_fails_fast() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    // Header announces 100 bytes; send 20 valid bytes and one invalid byte, and never the rest.
    let mask = next_mask();
    let mut payload = ascii(100);
    payload[20] = 0xFF;
    let mut masked = payload.clone();
    apply_mask(&mut masked, mask, 0);
    let mut bytes = frame_header(true, 0, OP_TEXT, 100, Some(mask));
    bytes.extend_from_slice(&masked[..21]);
    ws.send_raw(&bytes);
    expect_fail(
        &s,
        &mut ws,
        1007,
        "invalid UTF-8 in the first 21 of 100 announced bytes",
    );
}

// ----------------------------------------------------------------------------------------------- 1009 too big

#[test]
fn oversize_frame_is_1009_before_the_payload_arrives() {
    let s = echo_server(&["--set", "ws.max_message_size=1024"]);
    let mut ws = connect(&s);
    // At the limit is fine.
    let ok = ascii(1024);
    ws.send_frame(true, OP_TEXT, &ok);
    expect_echo(&mut ws, OP_TEXT, &ok, "exactly max_message_size");
    // Only the header of a 2000-byte frame.
    ws.send_raw(&frame_header(true, 0, OP_BINARY, 2000, Some(next_mask())));
    expect_fail(
        &s,
        &mut ws,
        1009,
        "header of a 2000-byte frame with max 1024",
    );
    // A 64-bit length far beyond anything.
    let mut ws = connect(&s);
    ws.send_raw(&frame_header(
        true,
        0,
        OP_BINARY,
        1 << 62,
        Some(next_mask()),
    ));
    expect_fail(&s, &mut ws, 1009, "header with a 2^62 length");
}

#[test]
fn fragmented_message_over_the_limit_is_1009() {
    let s = echo_server(&["--set", "ws.max_message_size=1024"]);
    let mut ws = connect(&s);
    ws.send_frame(false, OP_TEXT, &ascii(600));
    ws.send_frame(false, OP_CONT, &ascii(600));
    expect_fail(&s, &mut ws, 1009, "600 + 600 bytes with max 1024");
    // Many small fragments.
    let mut ws = connect(&s);
    ws.send_frame(false, OP_BINARY, &[1; 100]);
    for _ in 0..9 {
        let _ = ws.try_send_raw(&masked_frame(false, OP_CONT, &[2; 100]));
    }
    let _ = ws.try_send_raw(&masked_frame(true, OP_CONT, &[3; 100]));
    expect_fail(&s, &mut ws, 1009, "11 x 100 bytes with max 1024");
}

// ----------------------------------------------------------------------------------------------- closing handshake

#[test]
fn close_1000_is_echoed_and_server_closes_tcp() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    ws.send_close(1000, "bye");
    let (f, before) = ws.expect_close("close 1000");
    assert!(
        before.is_empty(),
        "frames before the close reply: {before:?}"
    );
    assert_eq!(f.close_code(), Some(1000), "close reply {f}");
    match ws.wait_closed(Duration::from_secs(3)) {
        PeerEnd::Eof => {}
        other => panic!(
            "server should close TCP after the closing handshake (read returns 0): {other:?}"
        ),
    }
}

#[test]
fn no_data_is_echoed_after_close() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    let mut bytes = masked_frame(true, OP_CLOSE, &close_payload(1000, b""));
    bytes.extend(masked_frame(true, OP_TEXT, b"after close"));
    ws.send_raw(&bytes);
    let (f, before) = ws.expect_close("close then text");
    assert!(
        before.is_empty(),
        "frames before the close reply: {before:?}"
    );
    assert_eq!(f.close_code(), Some(1000));
    ws.wait_closed(Duration::from_secs(3))
        .assert_closed("after the close reply");
}

#[test]
fn invalid_close_codes_are_1002() {
    let s = echo_server(&[]);
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        let mut ws = connect(&s);
        ws.send_close(code, "");
        expect_fail(&s, &mut ws, 1002, &format!("close code {code}"));
    }
}

#[test]
fn close_payload_of_one_byte_is_1002() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    ws.send_frame(true, OP_CLOSE, &[0x03]);
    expect_fail(&s, &mut ws, 1002, "1-byte close payload");
}

#[test]
fn close_reason_invalid_utf8_is_1007() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    ws.send_frame(true, OP_CLOSE, &close_payload(1000, &[b'b', 0xFF, b'y']));
    expect_fail(&s, &mut ws, 1007, "close reason with 0xFF");
}

#[test]
fn valid_close_codes_are_echoed() {
    let s = echo_server(&[]);
    for code in [
        1001u16, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut ws = connect(&s);
        ws.send_close(code, "reason ✓");
        let (f, before) = ws.expect_close(&format!("close {code}"));
        assert!(
            before.is_empty(),
            "close {code}: frames before the reply: {before:?}"
        );
        assert_eq!(f.close_code(), Some(code), "close {code}: reply {f}");
        ws.wait_closed(Duration::from_secs(3))
            .assert_closed(&format!("after close {code}"));
    }
}

#[test]
fn empty_close_gets_a_close_response() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    ws.send_frame(true, OP_CLOSE, b"");
    let (f, before) = ws.expect_close("empty close");
    assert!(before.is_empty(), "frames before the reply: {before:?}");
    assert!(
        f.payload.is_empty() || f.close_code() == Some(1000),
        "reply to an empty close should be empty or 1000: {f}"
    );
    ws.wait_closed(Duration::from_secs(3))
        .assert_closed("after an empty close");
}

#[test]
fn close_in_the_middle_of_a_fragmented_message() {
    let s = echo_server(&[]);
    let mut ws = connect(&s);
    ws.send_frame(false, OP_TEXT, b"half");
    ws.send_close(1000, "");
    let (f, before) = ws.expect_close("close during fragments");
    assert!(
        before.is_empty(),
        "the unfinished message must not be echoed: {before:?}"
    );
    assert_eq!(f.close_code(), Some(1000));
}

#[test]
fn client_disconnect_mid_frame_does_not_hurt_others() {
    let s = echo_server(&[]);
    let mut other = connect(&s);
    for _ in 0..20 {
        let mut ws = connect(&s);
        ws.send_raw(&frame_header(true, 0, OP_TEXT, 50, Some(next_mask()))[..]);
        ws.send_raw(b"partial");
        drop(ws);
    }
    other.send_text("still fine");
    expect_echo(&mut other, OP_TEXT, b"still fine", "other client");
}
