//! `debug.demo_relay`: clients' `op: msg` to a `demo:` channel are published to that channel (what the demo page
//! needs without a backend), and nothing else is: off by default, other channels never, and a client can only name a
//! channel it subscribes to.

mod common;

use common::*;
use std::time::Duration;

const SILENCE: Duration = Duration::from_millis(300);

/// Two clients on `demo:list`; returns them with their socket ids (the welcome was read by connect).
fn pair(server: &Server) -> (RawWs, RawWs) {
    let a = RawWs::connect(server.ws, "/ws?channels=demo:list,doc:1");
    let b = RawWs::connect(server.ws, "/ws?channels=demo:list,doc:1");
    (a, b)
}

#[test]
fn relay_publishes_demo_channel_messages_to_every_subscriber() {
    let server = Server::start(&["--set", "debug.demo_relay=true"]);
    let (mut a, mut b) = pair(&server);
    let sid = a.welcome_frame()["sid"].as_str().unwrap().to_string();
    let reply =
        a.call(r#"{"op":"msg","channel":"demo:list","data":{"t":"add","text":"x"},"id":1}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    let want = serde_json::json!({"channel": "demo:list", "data": {"from": sid, "data": {"t": "add", "text": "x"}}});
    assert_eq!(a.expect_json("a gets its own message back"), want);
    assert_eq!(b.expect_json("b gets a's message"), want);

    // Only demo: channels: a message about another channel goes upstream only.
    let reply = a.call(r#"{"op":"msg","channel":"doc:1","data":1,"id":2}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    b.expect_silence(SILENCE, "doc:1 is not a demo channel");
    // A channel the client does not subscribe to is refused before the relay sees it.
    let reply = a.call(r#"{"op":"msg","channel":"demo:other","data":1,"id":3}"#);
    assert_eq!(reply["ok"], false, "{reply}");
}

#[test]
fn relay_is_off_by_default() {
    let server = Server::start(&[]);
    let (mut a, mut b) = pair(&server);
    let reply = a.call(r#"{"op":"msg","channel":"demo:list","data":1,"id":1}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    a.expect_silence(SILENCE, "no relay: nothing comes back");
    b.expect_silence(SILENCE, "no relay: nothing published");
}
