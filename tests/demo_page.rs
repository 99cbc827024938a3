//! The demo page (clients/js/demo/) in headless Chromium against this build's gateway with `debug.demo_relay`:
//! tests/browser/demo_page.mjs (two pages see each other's items; permessage-deflate in a real browser; a page cut
//! off recovers from channel history; every item kept across a gateway restart) and demo_fallback.mjs (the page
//! served by the gateway over WebSocket, SSE and long-poll, each recovering from history after a cut). `WSGATE_SCREENSHOT=docs/demo.png cargo test --test demo_page` renews the
//! README's screenshot.

mod common;

#[test]
fn demo_page_two_pages_deflate_and_restart() {
    let shot = std::env::var("WSGATE_SCREENSHOT").ok().map(|p| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
        path.to_string_lossy().into_owned()
    });
    let env: Vec<(&str, &str)> = shot
        .iter()
        .map(|p| ("WSGATE_SCREENSHOT", p.as_str()))
        .collect();
    common::browser::run_script("demo_page.mjs", &env);
}

/// The page served by the gateway (`debug.demo_path`) over WebSocket, SSE (no `window.WebSocket`) and long-poll
/// (no EventSource either): tests/browser/demo_fallback.mjs.
#[test]
fn demo_page_over_websocket_sse_and_long_poll() {
    common::browser::run_script("demo_fallback.mjs", &[]);
}
