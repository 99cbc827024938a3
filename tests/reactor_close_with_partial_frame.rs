//! Regression: a connection closed while decoding input that completed a frame held in a lent read buffer (the
//! client's close reply split across reads, after the server's close) must not panic the reactor.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn close_reply_split_across_reads_after_server_close() {
    let s = Server::start(&["--threads", "1", "--set", "ws.error_budget=0"]);
    let mut ws = RawWs::connect(s.ws, "/ws");
    // One malformed request spends the (zero) error budget: the server sends close 1008 and waits for ours.
    ws.send_text("not json");
    // Text frames first (e.g. the error reply), then the close.
    let (close, before) = ws.expect_close("after the malformed request");
    for f in &before {
        assert!(
            f.opcode == OP_TEXT && f.fin && f.rsv == 0,
            "expected text frames, then a close frame; got {f}"
        );
    }
    // Our close reply, split so its first bytes wait in a lent buffer.
    let reply = masked_frame(true, OP_CLOSE, &close_payload(1000, b""));
    ws.send_raw(&reply[..3]);
    std::thread::sleep(Duration::from_millis(200));
    ws.send_raw(&reply[3..]);
    ws.wait_closed(READ_TIMEOUT)
        .assert_closed(&format!("after {close}"));
    // The (single) reactor still serves.
    let r = http_get(s.api, "/healthz");
    assert_eq!(r.status, 200, "{r}");
    let r = http_get(s.ws, "/nope");
    assert_eq!((r.version, r.status), (1, 404), "{r}");
}
