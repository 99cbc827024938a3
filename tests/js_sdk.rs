//! The JavaScript SDK (clients/js/) with Node's test runner against this build's gateway binary:
//! tests/browser/sdk.test.mjs (reconnect with backoff and jitter across a restart, recovery without gaps across cut
//! connections, token refresh and 4001, heartbeat timeout on a black-holed connection, user-message acks and
//! dedup, fallback to SSE and to long-poll when WebSocket is refused, close codes that end the client or delay it),
//! and tests/browser/cross_origin.mjs (the SDK in headless Chromium, in a page of another origin than the gateway,
//! on SSE and on long-poll, with and without a JWT; refused where `server.allowed_origins` does not list the page).
//! The scripts start, kill and restart the binary themselves (port 0, then the same ports).

mod common;

#[test]
fn sdk_against_the_real_gateway() {
    common::browser::run_node_tests("sdk.test.mjs", &[]);
}

#[test]
fn sdk_in_a_page_of_another_origin_over_the_fallback_transports() {
    common::browser::run_script("cross_origin.mjs", &[]);
}
