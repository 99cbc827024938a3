//! permessage-deflate (RFC 7692) against the real binary: the kinds of cases of the public conformance suite's
//! sections 12 and 13 (parameter negotiation, compressed publishes, fragmented compressed messages, context
//! takeover, misplaced RSV1, oversize after inflating), and a standard client library (Python `websockets`)
//! receiving compressed frames.

mod common;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const RSV1: u8 = 4; // the RSV bits as `frame_header` and `WsFrame` count them
const TAIL: [u8; 4] = [0, 0, 0xFF, 0xFF];
const EXT: &str = "Sec-WebSocket-Extensions";

fn connect_offering(s: &Server, path: &str, offers: &[&str]) -> RawWs {
    let extra: Vec<(&str, &str)> = offers.iter().map(|o| (EXT, *o)).collect();
    RawWs::connect_with(s.ws, path, &extra).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn agreed(ws: &RawWs) -> Option<String> {
    let r = ws.response.as_ref().unwrap();
    r.header("sec-websocket-extensions").map(str::to_string)
}

/// What a receiver does: append the tail, inflate with the negotiated window.
fn inflate(payload: &[u8], window_bits: u8) -> Vec<u8> {
    let mut d = Decompress::new_with_window_bits(false, window_bits);
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("valid DEFLATE data");
    out
}

/// A client's compressor; `compress` keeps the context across calls (context takeover).
struct ClientDeflate(Compress);

impl ClientDeflate {
    fn new() -> Self {
        ClientDeflate(Compress::new(Compression::default(), false))
    }

    fn compress(&mut self, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.len() + 1024);
        self.0
            .compress_vec(msg, &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(self.0.total_in() as usize >= msg.len() && out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }
}

fn once(msg: &[u8]) -> Vec<u8> {
    ClientDeflate::new().compress(msg)
}

fn json_of(len: usize, tag: &str) -> String {
    let mut s = format!("{{\"tag\":\"{tag}\",\"items\":[");
    let mut i = 0;
    while s.len() < len {
        s.push_str(&format!(
            "{{\"user\":\"user-{}\",\"text\":\"comment {i} on the document\"}},",
            i % 7
        ));
        i += 1;
    }
    s.push_str("0]}");
    s
}

/// The next message of an echo connection: inflated when compressed (the server never keeps context).
fn message(ws: &mut RawWs, ctx: &str) -> WsFrame {
    let mut f = data_frame(ws, ctx);
    if f.rsv == RSV1 {
        f.payload = inflate(&f.payload, 15);
        f.rsv = 0;
    }
    f
}

fn data_frame(ws: &mut RawWs, ctx: &str) -> WsFrame {
    loop {
        let f = ws
            .read_frame_timeout(READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        if f.opcode != OP_PING && f.opcode != OP_PONG {
            return f;
        }
    }
}

#[test]
fn negotiation_is_strict_and_always_without_server_context() {
    let s = Server::start(&["--echo-path", "/echo"]);
    let base = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    // What browsers offer.
    let ws = connect_offering(&s, "/ws", &["permessage-deflate; client_max_window_bits"]);
    assert_eq!(agreed(&ws).as_deref(), Some(base));
    // All four parameters.
    let all = "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
               server_max_window_bits=10; client_max_window_bits=12";
    let ws = connect_offering(&s, "/echo", &[all]);
    assert_eq!(
        agreed(&ws),
        Some(format!("{base}; server_max_window_bits=10"))
    );
    // Invalid offers are declined (the connection runs uncompressed); a valid fallback is taken.
    for bad in [
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; foo=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover=1",
    ] {
        let ws = connect_offering(&s, "/echo", &[bad]);
        assert_eq!(agreed(&ws), None, "{bad}");
        let ws = connect_offering(&s, "/echo", &[&format!("{bad}, permessage-deflate")]);
        assert_eq!(agreed(&ws).as_deref(), Some(base), "{bad} + fallback");
        let ws = connect_offering(&s, "/echo", &[bad, "x-foo", "permessage-deflate"]);
        assert_eq!(agreed(&ws).as_deref(), Some(base), "{bad} + later header");
    }
    // No offer, an unknown extension: nothing.
    assert_eq!(agreed(&connect_offering(&s, "/echo", &[])), None);
    assert_eq!(
        agreed(&connect_offering(&s, "/echo", &["x-webkit-deflate-frame"])),
        None
    );
    // More extension headers than any client sends: 400.
    let r = upgrade_response(s.ws, "/echo", &[(EXT, "a"); 5]);
    assert_eq!(r.status, 400, "{r}");

    let off = Server::start(&["--echo-path", "/echo", "--set", "ws.deflate=false"]);
    assert_eq!(
        agreed(&connect_offering(&off, "/echo", &["permessage-deflate"])),
        None
    );
    // Without the extension RSV1 stays a reserved bit.
    let mut ws = connect_offering(&off, "/echo", &["permessage-deflate"]);
    ws.send_raw(&build_frame(
        true,
        RSV1,
        OP_TEXT,
        &once(b"hi"),
        Some(next_mask()),
    ));
    ws.expect_close_code(1002, "RSV1 without the extension");
}

#[test]
fn a_publish_is_compressed_once_and_shared() {
    // One reactor, so "once per publish" is exactly one compression.
    let s = Server::start(&["--threads", "1"]);
    let path = "/ws?channels=news";
    let mut packed: Vec<RawWs> = (0..3)
        .map(|_| connect_offering(&s, path, &["permessage-deflate"]))
        .collect();
    let mut plain = RawWs::connect(s.ws, path);
    let mut small_window =
        connect_offering(&s, path, &["permessage-deflate; server_max_window_bits=9"]);
    let mut api = Http::connect(s.api);

    let data = json_of(2048, "big");
    publish(&mut api, "news", &data);
    let want = data_frame(&mut plain, "plain subscriber");
    assert_eq!(want.rsv, 0);
    assert!(want.text().contains("\"tag\":\"big\""));
    let first = data_frame(&mut packed[0], "deflate subscriber");
    assert_eq!(first.rsv, RSV1, "compressed: {first}");
    assert!(
        first.payload.len() * 3 < want.payload.len(),
        "{} vs {}",
        first.payload.len(),
        want.payload.len()
    );
    assert_eq!(inflate(&first.payload, 15), want.payload);
    for ws in &mut packed[1..] {
        let f = data_frame(ws, "other deflate subscriber");
        assert_eq!(
            f, first,
            "every deflate subscriber gets the same compressed frame"
        );
    }
    // 2 KiB does not fit a 512-byte window: that subscriber gets the plain frame.
    assert_eq!(data_frame(&mut small_window, "window 9"), want);
    let before = s.wait_stat("/totals/deflate_bytes_in_total", 1, READ_TIMEOUT);
    assert_eq!(
        before,
        want.payload.len() as u64,
        "compressed once for 3 subscribers"
    );

    // Under ws.deflate_threshold (128): plain for everyone.
    publish(&mut api, "news", "1");
    for ws in packed.iter_mut().chain([&mut small_window]) {
        let f = data_frame(ws, "small publish");
        assert_eq!((f.rsv, f.text()), (0, data_frame_text_of(&want, "1")));
    }
    let _ = data_frame(&mut plain, "small publish, plain");

    // 300 bytes fit the 512-byte window: compressed for it too, and it inflates with that window.
    let data = json_of(300, "mid");
    publish(&mut api, "news", &data);
    let want = data_frame(&mut plain, "mid, plain");
    let f = data_frame(&mut small_window, "mid, window 9");
    assert_eq!(f.rsv, RSV1);
    assert_eq!(inflate(&f.payload, 9), want.payload);
    for ws in &mut packed {
        let f = data_frame(ws, "mid, deflate");
        assert_eq!(inflate(&f.payload, 15), want.payload);
    }

    // Broadcasts too.
    broadcast(&mut api, &json_of(1024, "all"));
    let want = data_frame(&mut plain, "broadcast, plain");
    for ws in &mut packed {
        let f = data_frame(ws, "broadcast, deflate");
        assert_eq!(f.rsv, RSV1);
        assert_eq!(inflate(&f.payload, 15), want.payload);
    }
    let _ = data_frame(&mut small_window, "broadcast, window 9");
    assert!(s.wait_stat("/totals/deflate_bytes_out_total", 1, READ_TIMEOUT) > 0);

    // A push to one connection is compressed for it alone; replies under the threshold stay plain.
    let data = json_of(2048, "sid");
    for ws in [&mut packed[0], &mut plain] {
        let sid = ws.welcome_frame()["sid"].as_str().unwrap().to_string();
        let body = format!("{{\"sid\":\"{sid}\",\"data\":{data}}}");
        assert_eq!(api.post_json("/api/publish", &body).status, 200);
    }
    let want = data_frame(&mut plain, "sid push, plain");
    assert_eq!(want.rsv, 0);
    let f = data_frame(&mut packed[0], "sid push, deflate");
    assert_eq!(f.rsv, RSV1);
    let got: serde_json::Value = serde_json::from_slice(&inflate(&f.payload, 15)).unwrap();
    assert_eq!(got["data"], want.json()["data"]);
    assert_eq!(got["sid"], packed[0].welcome_frame()["sid"]);
    packed[0].send_text(r#"{"op":"ping","id":1}"#);
    let pong = data_frame(&mut packed[0], "pong");
    assert_eq!(
        (pong.rsv, pong.text()),
        (0, r#"{"type":"pong","id":1}"#.to_string())
    );
}

/// The text of a plain frame like `model` (same channel envelope) carrying `data` instead.
fn data_frame_text_of(model: &WsFrame, data: &str) -> String {
    let text = model.text();
    let at = text.find("\"data\":").expect("data field") + 7;
    format!("{}{data}}}", &text[..at])
}

#[test]
fn compressed_client_messages() {
    let s = Server::start(&["--echo-path", "/echo", "--set", "ws.max_message_size=65536"]);
    let offer = ["permessage-deflate"];
    let mut ws = connect_offering(&s, "/echo", &offer);

    // One frame; text and binary.
    let msg = json_of(5000, "one");
    ws.send_raw(&build_frame(
        true,
        RSV1,
        OP_TEXT,
        &once(msg.as_bytes()),
        Some(next_mask()),
    ));
    let f = message(&mut ws, "echo of a compressed text");
    assert_eq!((f.opcode, f.text()), (OP_TEXT, msg.clone()));
    let bin: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    ws.send_raw(&build_frame(
        true,
        RSV1,
        OP_BINARY,
        &once(&bin),
        Some(next_mask()),
    ));
    let f = message(&mut ws, "echo of a compressed binary");
    assert_eq!((f.opcode, f.payload), (OP_BINARY, bin));

    // Fragmented: RSV1 on the first frame only, a ping between the fragments, the compressed bytes split anywhere.
    let z = once(msg.as_bytes());
    let (a, rest) = z.split_at(7);
    let (b, c) = rest.split_at(rest.len() / 2);
    ws.send_raw(&build_frame(false, RSV1, OP_TEXT, a, Some(next_mask())));
    ws.send_raw(&build_frame(true, 0, OP_PING, b"p", Some(next_mask())));
    ws.send_raw(&build_frame(false, 0, OP_CONT, b, Some(next_mask())));
    ws.send_raw(&build_frame(true, 0, OP_CONT, c, Some(next_mask())));
    let pong = ws.read_frame_timeout(READ_TIMEOUT).unwrap();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (OP_PONG, &b"p"[..]));
    assert_eq!(message(&mut ws, "fragmented").text(), msg);

    // Uncompressed messages still work on a deflate connection; exactly max_message_size after inflating is fine.
    ws.send_frame(true, OP_TEXT, b"plain");
    assert_eq!(message(&mut ws, "plain").text(), "plain");
    let full = vec![b'x'; 65537];
    ws.send_raw(&build_frame(
        true,
        RSV1,
        OP_TEXT,
        &once(&full[..65536]),
        Some(next_mask()),
    ));
    assert_eq!(message(&mut ws, "at the limit").payload.len(), 65536);

    // Failures, each on a fresh connection.
    let fail = |wire: Vec<Vec<u8>>, code: u16, ctx: &str| {
        let mut ws = connect_offering(&s, "/echo", &offer);
        for w in wire {
            ws.send_raw(&w);
        }
        ws.expect_close_code(code, ctx);
    };
    let bomb = once(&vec![0u8; 8 << 20]);
    assert!(
        bomb.len() < 16 << 10,
        "8 MiB of zeros in {} bytes",
        bomb.len()
    );
    fail(
        vec![build_frame(true, RSV1, OP_BINARY, &bomb, Some(next_mask()))],
        1009,
        "zip bomb",
    );
    fail(
        vec![build_frame(
            true,
            RSV1,
            OP_TEXT,
            &once(&full),
            Some(next_mask()),
        )],
        1009,
        "one byte over after inflating",
    );
    fail(
        vec![build_frame(
            true,
            RSV1,
            OP_TEXT,
            &[0xFF, 0xFF, 0xFF, 0x00],
            Some(next_mask()),
        )],
        1007,
        "not DEFLATE",
    );
    fail(
        vec![build_frame(
            true,
            RSV1,
            OP_TEXT,
            &once(&[b'a', 0xC3, 0x28]),
            Some(next_mask()),
        )],
        1007,
        "bad UTF-8 inside",
    );
    fail(
        vec![
            build_frame(false, RSV1, OP_TEXT, a, Some(next_mask())),
            build_frame(true, RSV1, OP_CONT, b, Some(next_mask())),
        ],
        1002,
        "RSV1 on a continuation",
    );
    fail(
        vec![build_frame(true, RSV1, OP_PING, b"", Some(next_mask()))],
        1002,
        "RSV1 on a ping",
    );
    fail(
        vec![build_frame(true, 2, OP_TEXT, b"x", Some(next_mask()))],
        1002,
        "RSV2",
    );

    // The server asked for client_no_context_takeover: a client that keeps its context anyway refers back to bytes
    // the server does not hold, and fails cleanly (1007) instead of being misread.
    let mut ws = connect_offering(&s, "/echo", &offer);
    let mut z = ClientDeflate::new();
    ws.send_raw(&build_frame(
        true,
        RSV1,
        OP_TEXT,
        &z.compress(msg.as_bytes()),
        Some(next_mask()),
    ));
    assert_eq!(message(&mut ws, "first").text(), msg);
    ws.send_raw(&build_frame(
        true,
        RSV1,
        OP_TEXT,
        &z.compress(msg.as_bytes()),
        Some(next_mask()),
    ));
    ws.expect_close_code(1007, "context used although declined");
    assert!(s.wait_stat("/totals/inflate_bytes_out_total", 65537, READ_TIMEOUT) > 65536);
}

#[test]
fn context_takeover_when_the_server_keeps_contexts() {
    let s = Server::start(&[
        "--echo-path",
        "/echo",
        "--set",
        "ws.deflate_client_context=true",
    ]);
    let mut ws = connect_offering(&s, "/echo", &["permessage-deflate; client_max_window_bits"]);
    assert_eq!(
        agreed(&ws).as_deref(),
        Some("permessage-deflate; server_no_context_takeover")
    );
    let mut z = ClientDeflate::new();
    let msg = json_of(3000, "ctx");
    for i in 0..3 {
        let wire = z.compress(msg.as_bytes());
        if i > 0 {
            assert!(
                wire.len() < 40,
                "refers back to the previous message: {} bytes",
                wire.len()
            );
        }
        // Split across two frames to take the fragmented path with context too.
        let (a, b) = wire.split_at(wire.len() / 2);
        ws.send_raw(&build_frame(false, RSV1, OP_TEXT, a, Some(next_mask())));
        ws.send_raw(&build_frame(true, 0, OP_CONT, b, Some(next_mask())));
        assert_eq!(message(&mut ws, &format!("message {i}")).text(), msg);
    }
    // A client that offered client_no_context_takeover is held to it (no context kept for it).
    let ws = connect_offering(
        &s,
        "/echo",
        &["permessage-deflate; client_no_context_takeover"],
    );
    assert_eq!(
        agreed(&ws).as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
}

/// The Python interpreter with the `websockets` package: `WSGATE_TEST_PYTHON` (scripts/test.sh makes a venv), or
/// `python3`.
fn python() -> String {
    let py = std::env::var("WSGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{py} cannot import websockets: run scripts/test.sh (it installs it into a venv) or set WSGATE_TEST_PYTHON"
    );
    py
}

const PY_CLIENT: &str = r#"
import json, sys
from websockets.sync.client import connect
with connect(sys.argv[1], compression="deflate", max_size=2**22) as ws:
    print(ws.response.headers.get("Sec-WebSocket-Extensions"), flush=True)
    json.loads(ws.recv())                       # welcome
    ws.send(json.dumps({"op": "subscribe", "channels": ["news"], "id": 1, "pad": "x" * 2000}))
    print(ws.recv(), flush=True)                # the reply
    print(ws.recv(), flush=True)                # the publish
"#;

#[test]
fn a_standard_client_library_receives_compressed_frames() {
    let py = python();
    let s = Server::start(&[]);
    let mut child = Command::new(py)
        .args(["-c", PY_CLIENT, &s.ws_url("/ws")])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start python");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut next = |what: &str| {
        line.clear();
        out.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "python client ended before {what}");
        line.trim().to_string()
    };
    assert!(next("the agreement").starts_with("permessage-deflate; server_no_context_takeover"));
    // The subscribe request was compressed by the library (it compresses every message) and understood.
    let reply: serde_json::Value = serde_json::from_str(&next("the reply")).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(s.wait_stat("/totals/inflate_bytes_in_total", 1, READ_TIMEOUT) > 0);
    let data = json_of(4096, "py");
    publish(&mut Http::connect(s.api), "news", &data);
    let got: serde_json::Value = serde_json::from_str(&next("the publish")).unwrap();
    let want: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(got["data"], want);
    let out_bytes = s.wait_stat("/totals/deflate_bytes_out_total", 1, READ_TIMEOUT);
    assert!(
        out_bytes > 0 && out_bytes * 3 < data.len() as u64,
        "{out_bytes}"
    );
    let status = child.wait().unwrap();
    assert!(status.success());
    let _ = std::io::stdout().flush();
}
