//! `wsgate-bench users` against the real gateway (JWT mode): 200 users, each must get exactly the pushes addressed
//! to it — over single publishes on 2 API connections and over `POST /api/batch` — and a wrong secret gets no user
//! connected at all (so the tokens, not luck, make the users). A few seconds in all.
//!
//! The gateway binary is the one `cargo test --workspace` builds beside this crate's generator
//! (target/<profile>/wsgate); with `cargo test -p wsgate-bench` alone, build it first (`cargo build --bin wsgate`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "bench-users-test-secret";

struct Gateway {
    child: Child,
    pid: u32,
    ws: String,
    api: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway_bin() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_wsgate-bench"));
    let gw = bench.with_file_name("wsgate");
    assert!(
        gw.exists(),
        "no gateway at {} (cargo build --bin wsgate, or run cargo test --workspace)",
        gw.display()
    );
    gw
}

fn start_gateway() -> Gateway {
    let mut cmd = Command::new(gateway_bin());
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--set",
        "auth.mode=jwt",
        "--set",
        &format!("auth.hs256_secret={SECRET}"),
    ]);
    for (k, _) in std::env::vars() {
        if k.starts_with("WSGATE_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the gateway");
    let stderr = child.stderr.take().expect("piped");
    // Owned by the guard at once, so a failed start below still kills and reaps it.
    let mut gw = Gateway {
        pid: child.id(),
        child,
        ws: String::new(),
        api: String::new(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    // Drains stderr for the gateway's whole life, so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the gateway printed no ready line within 10 s");
        if let Some(rest) = line.strip_prefix("wsgate ready ") {
            let field = |k: &str| {
                rest.split_whitespace()
                    .find_map(|f| f.strip_prefix(k))
                    .unwrap_or_else(|| panic!("no {k} in {line:?}"))
                    .to_string()
            };
            gw.ws = field("ws=");
            gw.api = field("api=");
            return gw;
        }
    }
}

/// One bounded `wsgate-bench users` run; returns its JSON results.
fn users_run(gw: &Gateway, secret: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate-bench"))
        .args([
            "users",
            "--url",
            &format!("ws://{}/ws", gw.ws),
            "--api",
            &format!("http://{}", gw.api),
            "--server-pid",
            &gw.pid.to_string(),
            "--jwt-secret",
            secret,
            "--conns",
            "200",
            "--rate",
            "0",
            "--size",
            "100",
            "--duration",
            "20",
            "--timeout",
            "5",
            "--settle-ms",
            "50",
            "--quiet",
        ])
        .args(extra)
        .output()
        .expect("run wsgate-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let doc: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "no JSON result ({e}); stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success(),
        "wsgate-bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    doc["results"].clone()
}

fn assert_exactly_once(r: &serde_json::Value, pushes: u64, what: &str) {
    let n = |k: &str| r.pointer(k).and_then(|v| v.as_u64()).unwrap_or(u64::MAX);
    assert_eq!(n("/connected"), 200, "{what}: users connected");
    assert_eq!(n("/publish/ok"), pushes, "{what}: pushes accepted");
    // Every user owed its share, got it once, and nobody got another user's push.
    assert_eq!(n("/expected"), pushes, "{what}: pushes owed to the users");
    assert_eq!(n("/deliveries"), pushes, "{what}: deliveries");
    assert_eq!(
        n("/seq/received_expected"),
        pushes,
        "{what}: owed and received"
    );
    assert_eq!(n("/lost"), 0, "{what}: lost");
    assert_eq!(n("/duplicated"), 0, "{what}: duplicated");
    assert_eq!(n("/misdelivered"), 0, "{what}: at the wrong user");
    assert_eq!(n("/seq/lifetimes"), 200, "{what}: one lifetime per user");
}

#[test]
fn every_user_gets_exactly_its_own_pushes() {
    // A fresh gateway per run: a standalone gateway keeps each user's pushes for replay at its next connect, which
    // a second run would count as duplicates.
    let gw = start_gateway();
    let r = users_run(
        &gw,
        SECRET,
        &["--messages", "3000", "--inflight", "64", "--pub-conns", "2"],
    );
    assert_exactly_once(&r, 3000, "single pushes");
    drop(gw);

    let gw = start_gateway();
    let r = users_run(
        &gw,
        SECRET,
        &["--messages", "3000", "--inflight", "1000", "--batch", "250"],
    );
    assert_exactly_once(&r, 3000, "batches of 250");
}

#[test]
fn a_wrong_secret_connects_no_user() {
    let gw = start_gateway();
    let r = users_run(&gw, "not-the-secret", &["--messages", "10"]);
    assert_eq!(r["connected"], 0, "{r}");
    assert_eq!(r["failures"]["bad_handshake"], 200, "{r}");
    assert_eq!(r["deliveries"], 0);
}
