//! Tearing a connection down in the middle of something must neither kill the server nor lose the close code.
//!
//! 1. A fragmented message whose reply makes the server close that same connection (the reply pushes the outbound
//!    queue over `ws.max_outbound_bytes`): the server must survive (plain, TLS, a ping between the fragments, and
//!    ordinary requests on `/ws`). Everything is sent in one small write, so the server decodes it in one go.
//! 2. A violation followed, in the same write, by more input: the close frame with the documented code
//!    (docs/PROTOCOL.md: 1009 too big, 1007 invalid UTF-8, 1002 protocol error) must reach the client before EOF.
//! 3. A connection doomed while a large reply is half written (slow consumer, idle timeout, `POST /api/disconnect`,
//!    the client vanishing mid-frame): the server releases it and keeps serving.
//!
//! Servers run with `--threads 1`, so "a new client can connect and receive a publish" checks the very reactor that
//! handled the attack (in the debug test build a panicking reactor thread dies without taking the process along).

mod common;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------------------

/// How an attacking connection ended, as seen by the client.
#[derive(Debug)]
struct End {
    /// Data frames received before the end.
    data: Vec<WsFrame>,
    close: Option<WsFrame>,
    /// "eof", "reset", or "open" (nothing for the whole wait: the server neither closed nor answered).
    tcp: String,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let data: Vec<String> = self.data.iter().map(|f| f.to_string()).collect();
        write!(
            f,
            "data frames {data:?}, close {:?}, then {}",
            self.close.as_ref().map(|c| c.to_string()),
            self.tcp
        )
    }
}

/// Reads server frames from any byte stream until EOF/reset or until nothing arrives for `idle`.
fn read_end<S: Read>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    set_timeout: &dyn Fn(Duration),
    idle: Duration,
) -> End {
    let mut end = End {
        data: Vec::new(),
        close: None,
        tcp: String::new(),
    };
    let mut tmp = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        while let Ok(Some((f, n))) = parse_server_frame(buf) {
            buf.drain(..n);
            if f.is_close() {
                if end.close.is_none() {
                    end.close = Some(f);
                }
            } else if f.opcode != OP_PING && f.opcode != OP_PONG {
                end.data.push(f);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now()).min(idle);
        if left.is_zero() {
            end.tcp = "open".into();
            return end;
        }
        set_timeout(left);
        match stream.read(&mut tmp) {
            Ok(0) => {
                end.tcp = "eof".into();
                return end;
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                end.tcp = format!("open ({} bytes of a partial frame pending)", buf.len());
                return end;
            }
            Err(e) => {
                end.tcp = format!("reset ({e})");
                return end;
            }
        }
    }
}

/// `read_end` over a wss client, `buf` holding what was read past the upgrade.
fn tls_end(tls: &mut Tls, buf: &mut Vec<u8>, idle: Duration) -> End {
    let sock = tls.sock.try_clone().unwrap();
    read_end(
        tls,
        buf,
        &|d| {
            let _ = sock.set_read_timeout(Some(d));
        },
        idle,
    )
}

fn raw_end(ws: &mut RawWs, idle: Duration) -> End {
    let sock = ws.stream.try_clone().unwrap();
    let mut buf = std::mem::take(&mut ws.buf);
    read_end(
        &mut ws.stream,
        &mut buf,
        &|d| {
            let _ = sock.set_read_timeout(Some(d));
        },
        idle,
    )
}

/// A connection the server cut off: close `code` and/or a TCP close (no hang, no other close code).
fn assert_cut_off(end: &End, code: u16, ctx: &str, s: &Server) {
    let closed = end.tcp.starts_with("eof") || end.tcp.starts_with("reset");
    let code_ok = end
        .close
        .as_ref()
        .is_none_or(|f| f.close_code() == Some(code));
    assert!(
        closed && code_ok,
        "{ctx}: want close {code} and/or a TCP close, got {end}\n{}",
        s.describe()
    );
}

/// The process is alive, /healthz answers, and a new gateway client on the (single) reactor gets a publish.
fn assert_still_serving(s: &mut Server, ctx: &str) {
    if let Some(status) = s.wait_exit(Duration::from_millis(100)) {
        panic!("{ctx}: wsgate exited with {status}\n{}", s.describe());
    }
    let h = http_get(s.api, "/healthz");
    assert_eq!(h.status, 200, "{ctx}: /healthz: {h}");
    let mut ws = RawWs::connect_with(s.ws, "/ws?channels=alive", &[]).unwrap_or_else(|e| {
        panic!(
            "{ctx}: a new client cannot connect (reactor dead?): {e}\n{}",
            s.describe()
        )
    });
    let mut api = Http::connect(s.api);
    publish(&mut api, "alive", r#"{"still":"here"}"#);
    let t = ws
        .next_message(READ_TIMEOUT)
        .unwrap_or_else(|e| panic!("{ctx}: new client got no publish: {e}\n{}", s.describe()));
    assert_eq!(
        t.text(),
        r#"{"channel":"alive","data":{"still":"here"}}"#,
        "{ctx}"
    );
    ws.send_close(1000, "");
    let _ = ws.expect_close(ctx);
}

/// A masked frame whose payload bytes are 0xFF on the wire (the payload is `0xFF ^ mask`): as input that does not
/// start at a frame boundary, every byte has the RSV bits set.
fn ff_frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
    let mask = next_mask();
    let payload: Vec<u8> = (0..len).map(|i| 0xFF ^ mask[i & 3]).collect();
    build_frame(fin, 0, opcode, &payload, Some(mask))
}

/// The fragmented-message attack on the echo endpoint, as one write: a message whose echo fills most of the
/// `max_outbound_bytes = 4096` budget, then a message in two fragments (optionally with a ping between them) whose
/// echo pushes the queue over it.
fn echo_attack(ping_between: bool) -> Vec<u8> {
    let mut bytes = masked_frame(true, OP_TEXT, &[b'a'; 3000]);
    bytes.extend(masked_frame(false, OP_TEXT, &[b'b'; 2000]));
    if ping_between {
        bytes.extend(masked_frame(true, OP_PING, b"p"));
    }
    bytes.extend(masked_frame(true, OP_CONT, &[b'c'; 100]));
    bytes
}

/// The attacked connection either was cut off as a slow consumer (1008 and/or TCP close) or, if the server
/// managed to flush in between (docs/PROTOCOL.md does not say when queued frames are written, so that is not
/// wrong either), answered everything: 3000 'a' then the 2100-byte reassembled message.
fn assert_echo_attack_outcome(end: &End, s: &Server, ctx: &str) {
    let answered_all = end.close.is_none()
        && end.data.len() == 2
        && end.data[0].payload == [b'a'; 3000]
        && end.data[1].payload.len() == 2100;
    if !answered_all {
        assert_cut_off(end, 1008, ctx, s);
    }
}

fn echo_server() -> Server {
    Server::start(&[
        "--threads",
        "1",
        "--echo-path",
        "/echo",
        "--set",
        "ws.max_outbound_bytes=4096",
    ])
}

// ---------------------------------------------------------------------------------------------------------------
// 1. a fragmented message whose reply closes the connection
// ---------------------------------------------------------------------------------------------------------------

/// The attack on the echo endpoint from a client that does not read, and what must follow.
fn fragmented_echo_attack(ping_between: bool, ctx: &str) {
    let mut s = echo_server();
    let mut ws = RawWs::upgrade(tcp_connect_small_rcvbuf(s.ws, 4096), s.ws, "/echo", &[])
        .unwrap_or_else(|e| panic!("upgrade: {e}"));
    let _ = ws.try_send_raw(&echo_attack(ping_between));
    let end = raw_end(&mut ws, Duration::from_secs(5));
    assert_echo_attack_outcome(&end, &s, ctx);
    assert_still_serving(&mut s, &format!("after the {ctx}"));
    s.assert_idle(&format!("after the {ctx}"));
}

#[test]
fn fragmented_echo_that_overflows_the_outbound_queue_does_not_kill_the_server() {
    fragmented_echo_attack(false, "fragmented echo");
}

#[test]
fn fragmented_echo_with_a_ping_between_fragments_that_overflows_does_not_kill_the_server() {
    fragmented_echo_attack(true, "fragmented echo with a ping between the fragments");
}

#[test]
fn fragmented_request_whose_reply_overflows_the_outbound_queue_does_not_kill_the_server() {
    // Ordinary requests on the gateway endpoint: pongs back up, then a ping split in two fragments whose pong
    // (it echoes the long id) pushes the queue over the 1024-byte budget.
    let mut s = Server::start(&["--threads", "1", "--set", "ws.max_outbound_bytes=1024"]);
    let mut ws = RawWs::upgrade(tcp_connect_small_rcvbuf(s.ws, 4096), s.ws, "/ws", &[])
        .unwrap_or_else(|e| panic!("upgrade: {e}"));
    let mut bytes = Vec::new();
    for id in 0..10 {
        bytes.extend(masked_frame(
            true,
            OP_TEXT,
            format!(r#"{{"op":"ping","id":{id}}}"#).as_bytes(),
        ));
    }
    let big = format!(r#"{{"op":"ping","id":"{}"}}"#, "i".repeat(900));
    let (a, b) = big.as_bytes().split_at(big.len() / 2);
    bytes.extend(masked_frame(false, OP_TEXT, a));
    bytes.extend(masked_frame(true, OP_CONT, b));
    let _ = ws.try_send_raw(&bytes);
    let end = raw_end(&mut ws, Duration::from_secs(5));
    // Either cut off as a slow consumer, or (if the server flushed in between) all 11 pongs.
    if !(end.close.is_none() && end.data.len() == 11) {
        assert_cut_off(&end, 1008, "attacker on /ws", &s);
    }
    assert_still_serving(&mut s, "after the fragmented request");
    s.assert_idle("after the fragmented request");
}

// ---- the same over TLS ----------------------------------------------------------------------------------------

struct Cert {
    dir: PathBuf,
    der: CertificateDer<'static>,
}

impl Cert {
    fn new() -> Cert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = temp_dir("teardown-tls");
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        Cert {
            dir,
            der: cert.der().clone(),
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--set".into(),
            format!("tls.cert={}", self.dir.join("cert.pem").display()),
            "--set".into(),
            format!("tls.key={}", self.dir.join("key.pem").display()),
        ]
    }

    fn client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let cfg =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        Arc::new(cfg)
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn tls_connect(cfg: &Arc<ClientConfig>, tcp: TcpStream) -> std::io::Result<Tls> {
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from("localhost".to_string()).unwrap();
    let conn = ClientConnection::new(cfg.clone(), name).unwrap();
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Upgrades a TLS stream by hand; returns the bytes read after the 101 response head.
fn tls_upgrade(stream: &mut Tls, addr: SocketAddr, path: &str) -> Vec<u8> {
    let key = new_key();
    stream
        .write_all(&upgrade_request(
            &format!("localhost:{}", addr.port()),
            path,
            &key,
            &[],
            &[],
        ))
        .unwrap();
    stream.flush().unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = stream.read(&mut tmp).expect("read upgrade response");
        assert!(
            n > 0,
            "EOF during the upgrade: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    buf.drain(..head_end);
    buf
}

/// A one-reactor server with a wss listener (and a plain one), the echo endpoint and `extra` flags, and a wss
/// client with a small receive buffer upgraded to /echo: the server, the client config, the client, and the bytes
/// read past the 101 response.
fn wss_echo(extra: &[&str]) -> (Server, Arc<ClientConfig>, Tls, Vec<u8>) {
    let cert = Cert::new();
    let mut args = cert.args();
    args.extend(
        [
            "--threads",
            "1",
            "--echo-path",
            "/echo",
            "--set",
            "tls.plain_listen=127.0.0.1:0",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string()),
    );
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let s = Server::start(&refs);
    let wss = s.wss.expect("wss listener");
    let cfg = cert.client();
    let mut tls = tls_connect(&cfg, tcp_connect_small_rcvbuf(wss, 4096)).expect("TLS handshake");
    let buf = tls_upgrade(&mut tls, wss, "/echo");
    (s, cfg, tls, buf)
}

#[test]
fn fragmented_echo_that_overflows_the_outbound_queue_over_tls_does_not_kill_the_server() {
    let (mut s, cfg, mut tls, mut buf) = wss_echo(&["--set", "ws.max_outbound_bytes=4096"]);
    let wss = s.wss.expect("wss listener");
    // One write: rustls seals it into a single record (well under 16 KiB).
    let _ = tls.write_all(&echo_attack(false)).and_then(|_| tls.flush());
    let end = tls_end(&mut tls, &mut buf, Duration::from_secs(5));
    assert_echo_attack_outcome(&end, &s, "wss attacker");

    // Still serving, over TLS too.
    let mut fresh = tls_connect(&cfg, tcp_connect(wss)).unwrap_or_else(|e| {
        panic!(
            "a new wss client cannot complete its TLS handshake (reactor dead?): {e}\n{}",
            s.describe()
        )
    });
    let mut rest = tls_upgrade(&mut fresh, wss, "/echo");
    fresh
        .write_all(&masked_frame(true, OP_TEXT, b"hello"))
        .unwrap();
    fresh.flush().unwrap();
    let sock = fresh.sock.try_clone().unwrap();
    let deadline = Instant::now() + READ_TIMEOUT;
    let echoed = loop {
        if let Ok(Some((f, _))) = parse_server_frame(&rest) {
            break f;
        }
        let _ = sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ));
        let mut tmp = [0u8; 4096];
        match fresh.read(&mut tmp) {
            Ok(n) if n > 0 => rest.extend_from_slice(&tmp[..n]),
            other => panic!(
                "new wss client got no echo: {other:?} (reactor dead?)\n{}",
                s.describe()
            ),
        }
    };
    assert_eq!(echoed.payload, b"hello");
    assert_still_serving(&mut s, "after the fragmented echo over TLS");
}

// ---------------------------------------------------------------------------------------------------------------
// 2. the close code reaches the client although more input follows the violation
// ---------------------------------------------------------------------------------------------------------------

/// Sends `bytes` in one write on a fresh gateway connection and asserts close `code` arrives before EOF.
fn assert_close_code_before_eof(s: &mut Server, bytes: &[u8], code: u16, ctx: &str) {
    let mut ws = RawWs::connect(s.ws, "/ws");
    // The server may close (and reset) before it has read everything: a failed write is fine.
    let _ = ws.try_send_raw(bytes);
    let end = raw_end(&mut ws, Duration::from_secs(5));
    assert!(
        end.data.is_empty(),
        "{ctx}: data frames before the close: {end}"
    );
    let got = end.close.as_ref().and_then(|f| f.close_code());
    assert_eq!(
        got,
        Some(code),
        "{ctx}: want close {code} before the connection ends; got {end}\n{}",
        s.describe()
    );
    // After the close frame the server drops the connection (the client's close reply is optional for us).
    assert!(
        !end.tcp.starts_with("open"),
        "{ctx}: connection not closed after close {code}: {end}"
    );
}

#[test]
fn oversized_fragmented_message_gets_1009_before_eof_even_with_more_input_queued() {
    let mut s = Server::start(&["--threads", "1", "--set", "ws.max_message_size=1024"]);
    // 1000 bytes, then a continuation whose header already takes the message past 1024; its 100 kB payload is
    // in the same write (more than one read of the server).
    let mut bytes = masked_frame(false, OP_TEXT, &[b'x'; 1000]);
    bytes.extend(ff_frame(true, OP_CONT, 100_000));
    assert_close_code_before_eof(&mut s, &bytes, 1009, "oversized fragmented message");
    assert_still_serving(&mut s, "after 1009");
    s.assert_idle("after 1009");
}

#[test]
fn invalid_utf8_text_followed_by_more_frames_gets_1007_before_eof() {
    let mut s = Server::start(&["--threads", "1"]);
    let mut bytes = masked_frame(true, OP_TEXT, &[b'{', 0xC3, 0x28, b'}']);
    bytes.extend(ff_frame(true, OP_BINARY, 100_000));
    bytes.extend(masked_frame(true, OP_TEXT, br#"{"op":"ping","id":1}"#));
    assert_close_code_before_eof(&mut s, &bytes, 1007, "invalid UTF-8 then more frames");
    assert_still_serving(&mut s, "after 1007");
    s.assert_idle("after 1007");
}

#[test]
fn protocol_violation_followed_by_garbage_gets_1002_before_eof() {
    let mut s = Server::start(&["--threads", "1"]);
    let garbage = vec![0xFFu8; 100_000];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "reserved opcode 3",
            build_frame(true, 0, 0x3, b"abc", Some(next_mask())),
        ),
        (
            "unmasked text frame",
            build_frame(true, 0, OP_TEXT, br#"{"op":"ping"}"#, None),
        ),
        (
            "RSV1 on a text frame",
            build_frame(true, 4, OP_TEXT, br#"{"op":"ping"}"#, Some(next_mask())),
        ),
    ];
    for (what, frame) in cases {
        let mut bytes = frame;
        bytes.extend_from_slice(&garbage);
        assert_close_code_before_eof(&mut s, &bytes, 1002, what);
    }
    assert_still_serving(&mut s, "after 1002");
    s.assert_idle("after 1002");
}

// ---------------------------------------------------------------------------------------------------------------
// 3. doomed while a reply is half written
// ---------------------------------------------------------------------------------------------------------------

/// Larger than a loopback socket's send buffer can take (tcp_wmem max, 4 MiB by default).
const BIG: usize = 8 << 20;

/// Sends one BIG binary message to the echo endpoint from a client that does not read, and waits until the
/// server has read it (its echo then sits half written in the outbound queue).
fn half_written_echo(s: &Server) -> RawWs {
    let mut ws = RawWs::upgrade(tcp_connect_small_rcvbuf(s.ws, 4096), s.ws, "/echo", &[])
        .unwrap_or_else(|e| panic!("upgrade: {e}"));
    let before = s.stat("/totals/messages_in_total");
    ws.stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    ws.send_raw(&masked_frame(true, OP_BINARY, &vec![7u8; BIG]));
    let got = s.wait_stat(
        "/totals/messages_in_total",
        before + 1,
        Duration::from_secs(20),
    );
    assert!(got > before, "the server never read the big message");
    // Give the reactor a moment to write what the socket takes.
    std::thread::sleep(Duration::from_millis(200));
    ws
}

fn big_echo_server(extra: &[&str]) -> Server {
    let mut args = vec![
        "--threads",
        "1",
        "--echo-path",
        "/echo",
        "--set",
        "ws.max_message_size=16777216",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Drains what the client was sent and checks the connection ends (any close code of `codes`, or none).
fn assert_ends(ws: &mut RawWs, codes: &[u16], ctx: &str, s: &Server) {
    let end = raw_end(ws, Duration::from_secs(8));
    let closed = end.tcp.starts_with("eof") || end.tcp.starts_with("reset");
    let code_ok = end
        .close
        .as_ref()
        .is_none_or(|f| f.close_code().is_some_and(|c| codes.contains(&c)));
    let shown = End {
        data: Vec::new(),
        close: end.close.clone(),
        tcp: end.tcp.clone(),
    };
    assert!(
        closed && code_ok,
        "{ctx}: want a close in {codes:?} and/or a TCP close; got {} data frames, {shown}\n{}",
        end.data.len(),
        s.describe()
    );
}

#[test]
fn half_written_reply_then_slow_consumer_close_releases_the_connection() {
    let mut s = big_echo_server(&["--set", "ws.max_outbound_bytes=65536"]);
    let mut ws = half_written_echo(&s);
    // Another message: its echo joins a queue far over the budget → slow consumer, closed mid-frame. The client
    // never reads, so the 1008 behind the half-written frame may never leave: a TCP close is enough.
    ws.send_raw(&masked_frame(true, OP_BINARY, b"more"));
    assert_ends(&mut ws, &[1008], "slow consumer mid-frame", &s);
    s.assert_idle("slow consumer mid-frame");
    assert_still_serving(&mut s, "slow consumer mid-frame");
}

#[test]
fn slow_consumer_in_the_middle_of_a_frame_gets_the_rest_of_it_then_1008() {
    // docs/PROTOCOL.md: a frame already partly written is finished, what was queued behind it is dropped, and
    // close 1008 follows, when the client reads again within the close grace period (2 s).
    let s = big_echo_server(&["--set", "ws.max_outbound_bytes=65536"]);
    let mut ws = half_written_echo(&s);
    ws.send_raw(&masked_frame(true, OP_BINARY, b"more"));
    s.wait_stat(
        "/totals/slow_consumer_closes_total",
        1,
        Duration::from_secs(10),
    );
    // A wide window again, so the rest of the frame leaves well within the grace period.
    set_rcvbuf(ws.stream.as_raw_fd(), 4 << 20);
    let end = raw_end(&mut ws, Duration::from_secs(8));
    let sizes: Vec<usize> = end.data.iter().map(|f| f.payload.len()).collect();
    assert_eq!(
        sizes,
        vec![BIG],
        "the half-written echo, whole, and nothing queued after it; got {end}\n{}",
        s.describe()
    );
    assert_eq!(
        end.close.as_ref().and_then(|f| f.close_code()),
        Some(1008),
        "close 1008 after the finished frame; got {end}\n{}",
        s.describe()
    );
    assert!(end.tcp.starts_with("eof"), "then EOF; got {end}");
    s.assert_idle("slow consumer mid-frame");
}

#[test]
fn half_written_reply_then_idle_timeout_releases_the_connection() {
    let mut s = big_echo_server(&[
        "--set",
        "ws.max_outbound_bytes=67108864",
        "--set",
        "ws.ping_interval=1",
        "--set",
        "ws.idle_timeout=2",
    ]);
    let mut ws = half_written_echo(&s);
    // Silence: server ping, then close 1001 "idle timeout" queued behind the half-written frame; the client never
    // reads, so the server has to give up on it.
    std::thread::sleep(Duration::from_secs(5));
    assert_ends(&mut ws, &[1001], "idle timeout mid-frame", &s);
    s.assert_idle("idle timeout mid-frame");
    assert_still_serving(&mut s, "idle timeout mid-frame");
}

#[test]
fn half_written_reply_then_client_vanishes_mid_frame_releases_the_connection() {
    let mut s = big_echo_server(&["--set", "ws.max_outbound_bytes=67108864"]);
    let mut ws = half_written_echo(&s);
    // Half a frame (it waits in a lent read buffer), then the client is gone with unread data (reset).
    let frame = masked_frame(true, OP_BINARY, &[1u8; 1000]);
    ws.send_raw(&frame[..500]);
    std::thread::sleep(Duration::from_millis(200));
    drop(ws);
    s.assert_idle("client vanished mid-frame");
    assert_still_serving(&mut s, "client vanished mid-frame");
}

#[test]
fn half_written_delivery_then_api_disconnect_releases_the_connection() {
    let mut s = Server::start(&["--threads", "1", "--set", "ws.max_outbound_bytes=67108864"]);
    let mut ws = RawWs::upgrade(
        tcp_connect_small_rcvbuf(s.ws, 4096),
        s.ws,
        "/ws?channels=big",
        &[],
    )
    .unwrap_or_else(|e| panic!("upgrade: {e}"));
    let sid = ws.welcome_frame()["sid"].as_str().unwrap().to_string();
    let mut api = Http::connect(s.api);
    // ~9 MB queued for a client that does not read: more than the socket takes.
    let chunk = format!("\"{}\"", "d".repeat(900_000));
    for _ in 0..10 {
        publish(&mut api, "big", &chunk);
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = api.post_json("/api/disconnect", &format!(r#"{{"sid":"{sid}"}}"#));
    assert_eq!(r.status, 200, "disconnect: {r}");
    assert_ends(&mut ws, &[4000], "API disconnect mid-frame", &s);
    s.assert_idle("API disconnect mid-frame");
    assert_still_serving(&mut s, "API disconnect mid-frame");
}

#[test]
fn half_written_reply_over_tls_then_slow_consumer_close_releases_the_connection() {
    let (mut s, _, mut tls, mut buf) = wss_echo(&[
        "--set",
        "ws.max_message_size=16777216",
        "--set",
        "ws.max_outbound_bytes=65536",
    ]);
    tls.sock
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let before = s.stat("/totals/messages_in_total");
    tls.write_all(&masked_frame(true, OP_BINARY, &vec![7u8; BIG]))
        .and_then(|_| tls.flush())
        .expect("write the big message");
    let got = s.wait_stat(
        "/totals/messages_in_total",
        before + 1,
        Duration::from_secs(20),
    );
    assert!(got > before, "the server never read the big message");
    std::thread::sleep(Duration::from_millis(200));
    // Its echo is half written (ciphertext waiting too); one more message makes it a slow consumer.
    let _ = tls
        .write_all(&masked_frame(true, OP_BINARY, b"more"))
        .and_then(|_| tls.flush());
    let end = tls_end(&mut tls, &mut buf, Duration::from_secs(8));
    let closed = end.tcp.starts_with("eof") || end.tcp.starts_with("reset");
    let code_ok = end
        .close
        .as_ref()
        .is_none_or(|f| f.close_code() == Some(1008));
    assert!(
        closed && code_ok,
        "wss slow consumer mid-frame: want close 1008 and/or a TCP close; got {} data frames, close {:?}, then {}\n{}",
        end.data.len(),
        end.close.as_ref().map(|f| f.to_string()),
        end.tcp,
        s.describe()
    );
    s.assert_idle("wss slow consumer mid-frame");
    assert_still_serving(&mut s, "wss slow consumer mid-frame");
}
