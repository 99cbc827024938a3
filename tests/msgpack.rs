//! The MessagePack client protocol (subprotocol `wsgate.msgpack`) against the real binary: the same messages as
//! the JSON protocol in binary frames, client requests in MessagePack, shared publishes transcoded once (and
//! compressed once on top with permessage-deflate), and API bodies in `application/msgpack`.

mod common;

use common::*;
use flate2::{Decompress, FlushDecompress};
use serde_json::{json, Value};

/// The gateway endpoint under another path, so the harness leaves the (binary) welcome frame to the test.
const PATH: &str = "/mp?channels=news";

fn server() -> Server {
    Server::start(&["--set", "server.ws_path=/mp"])
}

fn connect(s: &Server, protocol: &str, deflate: bool) -> RawWs {
    let mut headers = vec![("Sec-WebSocket-Protocol", protocol)];
    if deflate {
        headers.push(("Sec-WebSocket-Extensions", "permessage-deflate"));
    }
    let ws =
        RawWs::connect_with(s.ws, PATH, &headers).unwrap_or_else(|e| panic!("{protocol}: {e}"));
    let r = ws.response.as_ref().unwrap();
    assert_eq!(r.header("sec-websocket-protocol"), Some(protocol));
    ws
}

fn unpack(bytes: &[u8]) -> Value {
    rmp_serde::from_slice(bytes).unwrap_or_else(|e| panic!("not MessagePack ({e}): {bytes:?}"))
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let input = [payload, &[0, 0, 0xFF, 0xFF]].concat();
    let mut out = Vec::with_capacity(1 << 16);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

/// The next message of a MessagePack connection: a binary frame, decoded.
fn next_packed(ws: &mut RawWs, ctx: &str) -> Value {
    let f = ws
        .read_frame_timeout(READ_TIMEOUT)
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!((f.opcode, f.rsv), (OP_BINARY, 0), "{ctx}: {f}");
    unpack(&f.payload)
}

fn send_packed(ws: &mut RawWs, v: &Value) {
    ws.send_frame(true, OP_BINARY, &rmp_serde::to_vec(v).unwrap());
}

#[test]
fn msgpack_clients_get_the_same_messages_as_binary_frames() {
    let s = server();
    let mut mp = connect(&s, "wsgate.msgpack", false);
    let mut mpz = connect(&s, "wsgate.msgpack", true);
    let mut js = connect(&s, "wsgate.json", false);
    // The welcome frame: MessagePack for them, JSON text for the JSON client.
    let welcome = next_packed(&mut mp, "welcome");
    assert_eq!(welcome["type"], "welcome");
    assert!(welcome["sid"]
        .as_str()
        .is_some_and(|s| s.parse::<u64>().is_ok()));
    assert_eq!(next_packed(&mut mpz, "welcome")["type"], "welcome");
    assert_eq!(js.expect_json("welcome")["type"], "welcome");

    // A publish with JSON data: same value, MessagePack bytes shared by both MessagePack subscribers (the
    // compressed one inflates to exactly those bytes).
    let data = json!({"doc": 7, "items": (0..40).map(|i| json!({"user": format!("u{i}"), "text": "hello there", "n": i * 1000})).collect::<Vec<_>>()});
    let mut api = Http::connect(s.api);
    publish(&mut api, "news", &data.to_string());
    let text = js.expect_json("publish, JSON");
    assert_eq!(text, json!({"channel": "news", "data": data}));
    let f = mp.read_frame_timeout(READ_TIMEOUT).unwrap();
    assert_eq!(f.opcode, OP_BINARY);
    assert_eq!(unpack(&f.payload), text);
    let z = mpz.read_frame_timeout(READ_TIMEOUT).unwrap();
    assert_eq!(
        (z.opcode, z.rsv),
        (OP_BINARY, 4),
        "compressed MessagePack: {z}"
    );
    assert_eq!(inflate(&z.payload), f.payload);
    assert!(
        f.payload.len() < text.to_string().len(),
        "MessagePack is smaller than the JSON"
    );

    // Requests in MessagePack, answered in MessagePack.
    send_packed(
        &mut mp,
        &json!({"op": "subscribe", "channels": ["extra"], "id": 7}),
    );
    assert_eq!(
        next_packed(&mut mp, "reply"),
        json!({"type": "reply", "id": 7, "ok": true})
    );
    send_packed(&mut mp, &json!({"op": "ping", "id": 8}));
    assert_eq!(
        next_packed(&mut mp, "pong"),
        json!({"type": "pong", "id": 8})
    );
    publish(&mut api, "extra", "[1,2.5,\"x\",null,true]");
    assert_eq!(
        next_packed(&mut mp, "extra")["data"],
        json!([1, 2.5, "x", null, true])
    );
    // Not MessagePack, or not something JSON can express: an error message, the connection stays.
    for bad in [&[0xC1][..], &[0x81, 0x01, 0x02][..], &[0x91; 200][..]] {
        mp.send_frame(true, OP_BINARY, bad);
        assert_eq!(next_packed(&mut mp, "error")["type"], "error", "{bad:?}");
    }
    send_packed(&mut mp, &json!({"op": "ping", "id": 9}));
    assert_eq!(next_packed(&mut mp, "still open")["id"], 9);
    // A JSON client sending binary is refused as before.
    js.send_frame(
        true,
        OP_BINARY,
        &rmp_serde::to_vec(&json!({"op": "ping"})).unwrap(),
    );
    assert_eq!(js.expect_json("binary on JSON")["type"], "error");

    // The API takes MessagePack bodies.
    let body = rmp_serde::to_vec(&json!({"channel": "news", "data": {"k": [1, 2]}})).unwrap();
    let r = api.request(
        "POST",
        "/api/publish",
        &[("Content-Type", "application/msgpack")],
        &body,
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        js.expect_json("msgpack publish")["data"],
        json!({"k": [1, 2]})
    );
    assert_eq!(
        next_packed(&mut mp, "msgpack publish")["data"],
        json!({"k": [1, 2]})
    );
    let r = api.request(
        "POST",
        "/api/publish",
        &[("Content-Type", "application/msgpack; charset=binary")],
        &[0x92, 0x01],
    );
    assert_eq!(r.status, 400, "{r}");
    assert!(r.text().contains("MessagePack"), "{r}");
}

#[test]
fn protocol_choice() {
    let s = server();
    // MessagePack wins when offered with others; the token entry still works next to it.
    let ws = RawWs::connect_with(
        s.ws,
        PATH,
        &[("Sec-WebSocket-Protocol", "wsgate, wsgate.msgpack")],
    )
    .unwrap();
    assert_eq!(
        ws.response
            .as_ref()
            .unwrap()
            .header("sec-websocket-protocol"),
        Some("wsgate.msgpack")
    );
    for (offer, answer) in [("wsgate", "wsgate"), ("wsgate.json", "wsgate.json")] {
        let mut ws = RawWs::connect_with(s.ws, PATH, &[("Sec-WebSocket-Protocol", offer)]).unwrap();
        assert_eq!(
            ws.response
                .as_ref()
                .unwrap()
                .header("sec-websocket-protocol"),
            Some(answer)
        );
        assert_eq!(ws.expect_json("JSON welcome")["type"], "welcome");
    }
}
