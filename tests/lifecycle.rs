//! Process lifecycle: ready line, graceful shutdown on SIGTERM/SIGINT, configuration errors (exit 2 naming the key),
//! --print-config, config file / environment / --set precedence, and the RLIMIT_NOFILE log line.

mod common;

use common::*;
use std::io::Write;
use std::time::{Duration, Instant};

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wsgate-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn ready_line_is_exact_and_printed_once() {
    let s = Server::start(&[]);
    let lines = s.startup_lines();
    let ready: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("wsgate ready"))
        .collect();
    assert_eq!(ready.len(), 1, "ready lines: {ready:?}");
    let want = format!("wsgate ready ws={} api={}", s.ws, s.api);
    assert_eq!(ready[0], &want, "ready line format");
    assert_ne!(s.ws.port(), 0);
    assert_ne!(s.api.port(), 0);
    assert_ne!(s.ws.port(), s.api.port());
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let mut s = Server::start(&["--set", "server.shutdown_timeout=3", "--echo-path", "/echo"]);
    let mut polite: Vec<RawWs> = (0..5)
        .map(|i| RawWs::connect(s.ws, &format!("/ws?channels=t{i}")))
        .collect();
    polite.push(RawWs::connect(s.ws, "/echo"));
    // Two clients that never answer the close.
    let mut stubborn: Vec<RawWs> = (0..2)
        .map(|_| RawWs::connect(s.ws, "/ws?channels=t"))
        .collect();
    // Make sure all are fully established before the signal.
    for c in polite.iter_mut().chain(stubborn.iter_mut()) {
        c.send_text(r#"{"op":"ping","id":1}"#);
    }
    for (i, c) in polite.iter_mut().enumerate().take(5) {
        let v = c.expect_json(&format!("client {i} pong"));
        assert_eq!(v["type"], serde_json::json!("pong"));
    }
    let _ = polite[5].expect_text("echo");
    for c in stubborn.iter_mut() {
        let _ = c.expect_json("stubborn pong");
    }

    let t0 = Instant::now();
    s.signal(libc::SIGTERM);
    for (i, c) in polite.iter_mut().enumerate() {
        let f = c.expect_close_code(1001, &format!("client {i} after SIGTERM"));
        // Answer like a well-behaved client.
        let _ = c.try_send_raw(&masked_frame(true, OP_CLOSE, &f.payload));
    }
    for (i, c) in stubborn.iter_mut().enumerate() {
        let (f, _) = c.expect_close(&format!("stubborn client {i} after SIGTERM"));
        assert_eq!(f.close_code(), Some(1001), "stubborn client {i}: {f}");
    }
    // No new connections are accepted (refused, or closed without an upgrade).
    if let Ok(stream) = try_tcp_connect(s.ws) {
        if let Ok(c) = RawWs::upgrade(stream, s.ws, "/ws", &[]) {
            drop(c);
            panic!("a new connection was upgraded after SIGTERM");
        }
    }
    let status = s.wait_exit(Duration::from_secs(3 + 3));
    let elapsed = t0.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running {elapsed:?} after SIGTERM with shutdown_timeout=3\n{}",
            s.describe()
        )
    });
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}\n{}",
        s.describe()
    );
    assert!(
        elapsed <= Duration::from_secs(5),
        "shutdown took {elapsed:?} (shutdown_timeout=3)"
    );
    // Everyone's TCP connection is gone.
    for (i, c) in polite.iter_mut().chain(stubborn.iter_mut()).enumerate() {
        c.wait_closed(Duration::from_secs(2))
            .assert_closed(&format!("client {i} after the exit"));
    }
}

#[test]
fn sigint_with_no_clients_exits_0_quickly() {
    let mut s = Server::start(&[]);
    let t0 = Instant::now();
    s.signal(libc::SIGINT);
    let status = s
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIGINT\n{}", s.describe()));
    assert!(status.success(), "exit status after SIGINT: {status}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "idle shutdown took {:?}",
        t0.elapsed()
    );
}

fn assert_config_error(out: &CliOutput, needle: &str, ctx: &str) {
    assert_eq!(
        out.code(),
        Some(2),
        "{ctx}: expected exit code 2, got {:?}\nstderr: {}\nstdout: {}",
        out.status,
        out.stderr,
        out.stdout
    );
    assert!(
        out.stderr.contains(needle),
        "{ctx}: stderr should name {needle:?}:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked"),
        "{ctx}: panic instead of an error:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("wsgate ready"),
        "{ctx}: server started anyway:\n{}",
        out.stderr
    );
}

#[test]
fn bad_config_exits_2_and_names_the_key() {
    let t = Duration::from_secs(10);
    let cases: Vec<(&[&str], &str)> = vec![
        (
            &["--set", "ws.max_message_size=notanumber"],
            "max_message_size",
        ),
        (
            &["--set", "ws.max_message_size=67108865"],
            "max_message_size",
        ),
        (&["--set", "ws.max_message_size=-1"], "max_message_size"),
        (&["--set", "nosuch.key=1"], "nosuch"),
        (&["--set", "ws.nosuchkey=1"], "nosuchkey"),
        (
            &["--set", "server.handshake_timeout=soon"],
            "handshake_timeout",
        ),
        (
            &["--set", "server.allowed_origins=notalist"],
            "allowed_origins",
        ),
        (&["--config", "/nonexistent.toml"], "/nonexistent.toml"),
    ];
    // Run them concurrently; each must exit by itself.
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(args, needle)| {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            std::thread::spawn(move || {
                let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
                (args.join(" "), needle, run_cli(&refs, &[], true, t))
            })
        })
        .collect();
    for h in handles {
        let (ctx, needle, out) = h.join().unwrap();
        assert_config_error(&out, needle, &ctx);
    }
}

#[test]
fn bad_config_from_env_and_file_exits_2() {
    let t = Duration::from_secs(10);
    let out = run_cli(&[], &[("WSGATE_WS__MAX_MESSAGE_SIZE", "abc")], true, t);
    assert_config_error(&out, "max_message_size", "WSGATE_WS__MAX_MESSAGE_SIZE=abc");
    let bad_value = temp_file("bad-value.toml", "[ws]\nmax_message_size = \"big\"\n");
    let out = run_cli(&["--config", bad_value.to_str().unwrap()], &[], true, t);
    assert_config_error(
        &out,
        "max_message_size",
        "config file with a string for max_message_size",
    );
    let unknown = temp_file("unknown-key.toml", "[ws]\nmax_mesage_size = 10\n");
    let out = run_cli(&["--config", unknown.to_str().unwrap()], &[], true, t);
    assert_config_error(&out, "max_mesage_size", "config file with a misspelt key");
    let broken = temp_file("broken.toml", "[ws\nmax_message_size = \n");
    let out = run_cli(&["--config", broken.to_str().unwrap()], &[], true, t);
    assert_eq!(out.code(), Some(2), "broken TOML: {out:?}");
    assert!(
        !out.stderr.contains("panicked"),
        "broken TOML: {}",
        out.stderr
    );
}

#[test]
fn print_config_prints_effective_toml() {
    let t = Duration::from_secs(10);
    let out = run_cli(&["--print-config"], &[], true, t);
    assert_eq!(out.code(), Some(0), "--print-config: {out:?}");
    assert!(
        out.stdout.contains("max_message_size"),
        "--print-config output:\n{}",
        out.stdout
    );
    let v: toml::Value = toml::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("--print-config is not TOML ({e}):\n{}", out.stdout));
    assert_eq!(
        v["ws"]["max_message_size"].as_integer(),
        Some(1048576),
        "default max_message_size:\n{}",
        out.stdout
    );
    assert_eq!(
        v["server"]["listen"].as_str(),
        Some("127.0.0.1:0"),
        "--listen is reflected:\n{}",
        out.stdout
    );
    assert_eq!(
        v["server"]["threads"].as_integer(),
        Some(2),
        "--threads is reflected:\n{}",
        out.stdout
    );
    assert!(
        !out.stderr.contains("wsgate ready"),
        "--print-config must not start the server:\n{}",
        out.stderr
    );

    // Precedence: file < env < --set.
    let file = temp_file(
        "prec.toml",
        "[ws]\nmax_message_size = 1024\nerror_budget = 4\nping_interval = 7\n",
    );
    let f = file.to_str().unwrap();
    let out = run_cli(&["--config", f, "--print-config"], &[], true, t);
    let v: toml::Value =
        toml::from_str(&out.stdout).unwrap_or_else(|e| panic!("not TOML ({e}): {out:?}"));
    assert_eq!(
        v["ws"]["max_message_size"].as_integer(),
        Some(1024),
        "from file"
    );
    let out = run_cli(
        &["--config", f, "--print-config"],
        &[
            ("WSGATE_WS__MAX_MESSAGE_SIZE", "2048"),
            ("WSGATE_WS__ERROR_BUDGET", "5"),
        ],
        true,
        t,
    );
    let v: toml::Value =
        toml::from_str(&out.stdout).unwrap_or_else(|e| panic!("not TOML ({e}): {out:?}"));
    assert_eq!(
        v["ws"]["max_message_size"].as_integer(),
        Some(2048),
        "env beats file"
    );
    assert_eq!(
        v["ws"]["error_budget"].as_integer(),
        Some(5),
        "env beats file"
    );
    assert_eq!(
        v["ws"]["ping_interval"].as_integer(),
        Some(7),
        "file value kept"
    );
    let out = run_cli(
        &[
            "--config",
            f,
            "--set",
            "ws.max_message_size=4096",
            "--print-config",
        ],
        &[("WSGATE_WS__MAX_MESSAGE_SIZE", "2048")],
        true,
        t,
    );
    let v: toml::Value =
        toml::from_str(&out.stdout).unwrap_or_else(|e| panic!("not TOML ({e}): {out:?}"));
    assert_eq!(
        v["ws"]["max_message_size"].as_integer(),
        Some(4096),
        "--set beats env"
    );
    // The printed config is itself a valid config file.
    let round = temp_file("round.toml", &out.stdout);
    let out2 = run_cli(
        &["--config", round.to_str().unwrap(), "--print-config"],
        &[],
        true,
        t,
    );
    assert_eq!(
        out2.code(),
        Some(0),
        "re-reading the printed config: {out2:?}"
    );
    let v2: toml::Value = toml::from_str(&out2.stdout).unwrap();
    assert_eq!(v2["ws"]["max_message_size"].as_integer(), Some(4096));
}

#[test]
fn config_file_and_env_configure_the_running_server() {
    let file = temp_file(
        "run.toml",
        "[ws]\nmax_message_size = 1024\n\n[debug]\necho_path = \"/fileecho\"\n",
    );
    let s = Server::start(&["--config", file.to_str().unwrap()]);
    let mut c = RawWs::connect(s.ws, "/fileecho");
    c.send_text("from file");
    assert_eq!(
        c.expect_text("echo at the path from the config file"),
        "from file"
    );
    c.send_raw(&frame_header(true, 0, OP_BINARY, 2000, Some(next_mask())));
    let f = c.expect_close_code(1009, "max_message_size from the file");
    assert_eq!(f.close_code(), Some(1009));
    drop(s);
    let s = Server::start_with_env(&[], &[("WSGATE_DEBUG__ECHO_PATH", "/envecho")]);
    let mut c = RawWs::connect(s.ws, "/envecho");
    c.send_text("from env");
    assert_eq!(
        c.expect_text("echo at the path from the environment"),
        "from env"
    );
}

#[test]
fn startup_logs_the_file_descriptor_limit() {
    let s = Server::start(&[]);
    let lines = s.startup_lines();
    let hit = lines.iter().any(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("rlimit")
            || l.contains("nofile")
            || l.contains("file descriptor")
            || l.contains("file-descriptor")
            || l.contains("fd limit")
            || l.contains("open files")
    });
    assert!(
        hit,
        "no start-up line mentions the file-descriptor limit (RLIMIT_NOFILE):\n{}",
        lines.join("\n")
    );
}

#[test]
fn api_port_and_ws_port_conflict_is_a_clean_error() {
    // Binding a port that is taken must fail with a message, not a panic or a hang.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run_cli(
        &["--listen", &addr, "--api-listen", "127.0.0.1:0"],
        &[],
        false,
        Duration::from_secs(10),
    );
    assert!(
        out.status.is_some(),
        "did not exit when the port was taken:\n{}",
        out.stderr
    );
    assert_ne!(
        out.code(),
        Some(0),
        "exit 0 although the port was taken: {out:?}"
    );
    assert!(
        !out.stderr.contains("panicked"),
        "panic on a taken port:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&addr) || out.stderr.to_ascii_lowercase().contains("in use"),
        "error should name the address:\n{}",
        out.stderr
    );
    let _ = std::io::stderr().flush();
}

/// Every numeric key has an upper bound (README.md, configuration table): values the code downstream cannot
/// represent (a handshake timer that wraps, an outbound limit above the u32 queue counter) are start-up errors that
/// name the key and the range; the bound itself is accepted.
#[test]
fn numeric_keys_have_upper_bounds() {
    let t = Duration::from_secs(10);
    let over: Vec<(&str, &str)> = vec![
        ("server.handshake_timeout=4294967295", "1..=3600"),
        ("ws.max_outbound_bytes=4294967296", "1024..=1073741824"),
        ("api.max_body=67108865", "1..=67108864"),
        ("api.request_timeout=3601", "1..=3600"),
        ("server.max_request_head=16385", "512..=16384"),
        ("ws.error_budget=256", "0..=255"),
        ("cluster.offline_max_age=31536001", "1..=31536000"),
        ("limits.publish_burst=1000001", "0..=1000000"),
    ];
    let handles: Vec<_> = over
        .into_iter()
        .map(|(set, range)| {
            std::thread::spawn(move || (set, range, run_cli(&["--set", set], &[], true, t)))
        })
        .collect();
    for h in handles {
        let (set, range, out) = h.join().unwrap();
        let key = set.split('=').next().unwrap();
        assert_config_error(&out, &format!("`{key}`"), set);
        assert!(
            out.stderr.contains(range),
            "{set}: range {range} not named: {}",
            out.stderr
        );
    }
    let at_bound = [
        "server.handshake_timeout=3600",
        "ws.max_outbound_bytes=1073741824",
        "api.max_body=67108864",
        "api.request_timeout=3600",
        "server.max_request_head=16384",
        "ws.error_budget=255",
        "cluster.offline_max_age=31536000",
        "limits.publish_burst=1000000",
    ];
    let mut args = Vec::new();
    for set in at_bound {
        args.extend(["--set", set]);
    }
    args.push("--print-config");
    let out = run_cli(&args, &[], true, t);
    assert_eq!(out.code(), Some(0), "values at their bounds: {out:?}");
    assert!(
        out.stdout.contains("max_outbound_bytes = 1073741824"),
        "{}",
        out.stdout
    );

    // A handshake in progress lives for the whole (long) handshake timeout.
    let s = Server::start(&["--set", "server.handshake_timeout=3600"]);
    let mut c = tcp_connect(s.ws);
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    match wait_peer_close(&mut c, Duration::from_millis(2500)) {
        PeerEnd::StillOpen => {}
        other => panic!("a pending handshake was dropped early: {other:?}"),
    }
}
