//! The live status page in headless Chromium while a bounded load runs (10 s: 40 subscribers, 100 publishes a
//! second, a client connecting every 250 ms): tests/browser/status_page.mjs checks that the charts move and that
//! the numbers match /api/stats. `WSGATE_SCREENSHOT=docs/status.png cargo test --test status_page` renews the
//! README's screenshot.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "status-page-key";
const LOAD: Duration = Duration::from_secs(10);
/// A channel name a client chose, shown on the page: it must appear as text, never as markup.
const HOSTILE_CHANNEL: &str = "<img src=x onerror=alert(1)>";

/// Publishes and handshakes for `LOAD`, then closes every client it opened.
fn load(server_ws: std::net::SocketAddr, api: std::net::SocketAddr, stop: Arc<AtomicBool>) {
    let subscribers: Vec<_> = (0..40)
        .map(|_| ws_connect(server_ws, "/ws?channels=load"))
        .collect();
    let mut hostile = ws_connect(server_ws, "/ws");
    let subscribe = serde_json::json!({"op": "subscribe", "channels": [HOSTILE_CHANNEL], "id": 1});
    tws_send_text(&mut hostile, &subscribe.to_string());
    let mut http = Http::connect(api);
    let auth = format!("apikey {KEY}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < LOAD && !stop.load(Ordering::Relaxed) {
        let body = format!("{{\"channel\":\"load\",\"data\":{{\"n\":{n}}}}}");
        let r = http.request("POST", "/api/publish", &headers, body.as_bytes());
        assert_eq!(r.status, 200, "publish: {r}");
        if n.is_multiple_of(25) {
            drop(ws_connect(server_ws, "/ws"));
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(subscribers);
    drop(hostile);
}

#[test]
fn status_page_charts_move_under_load_and_numbers_match_api_stats() {
    let key = format!("api.api_key={KEY}");
    let server = Server::start(&["--threads", "2", "--set", &key]);
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (ws, api, stop) = (server.ws, server.api, stop.clone());
        std::thread::spawn(move || load(ws, api, stop))
    };
    let api = format!("http://{}", server.api);
    let mut env = vec![
        ("WSGATE_API", api.as_str()),
        ("WSGATE_API_KEY", KEY),
        ("WSGATE_HOSTILE_CHANNEL", HOSTILE_CHANNEL),
    ];
    let shot = std::env::var("WSGATE_SCREENSHOT").ok().map(|p| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
        path.to_string_lossy().into_owned()
    });
    if let Some(path) = &shot {
        env.push(("WSGATE_SCREENSHOT", path.as_str()));
    }
    let result = std::panic::catch_unwind(|| browser::run_script("status_page.mjs", &env));
    stop.store(true, Ordering::Relaxed);
    loader.join().expect("load thread");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
