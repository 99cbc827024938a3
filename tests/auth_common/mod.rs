//! Shared helpers of the integration tests: start the real binary on port 0, talk HTTP and WebSocket to it, make
//! tokens. Every wait is bounded; the child is killed (by its own PID) when the handle drops.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

pub type Ws = WebSocket<TcpStream>;

pub struct Gate {
    child: Child,
    pub ws: SocketAddr,
    pub api: SocketAddr,
    /// Log lines after the ready line (stderr is drained so the child never blocks on a full pipe).
    pub log: mpsc::Receiver<String>,
}

impl Gate {
    /// Starts `wsgate --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --threads 2 --set S...`.
    pub fn start(sets: &[String]) -> Gate {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--threads",
            "2",
        ]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsgate");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("wsgate ready ") {
                        let mut ws = None;
                        let mut api = None;
                        for part in rest.split_whitespace() {
                            if let Some(a) = part.strip_prefix("ws=") {
                                ws = a.parse().ok();
                            } else if let Some(a) = part.strip_prefix("api=") {
                                api = a.parse().ok();
                            }
                        }
                        return Gate {
                            child,
                            ws: ws.expect("ws address"),
                            api: api.expect("api address"),
                            log: rx,
                        };
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("wsgate did not become ready; stderr: {seen:#?}");
                }
            }
        }
    }

    /// An HTTP request to the API; returns (status, JSON body or Null).
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, _, text) = http(self.api, method, path, &[], body.as_bytes());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn stats(&self) -> Value {
        let (status, v) = self.api("GET", "/api/stats", None);
        assert_eq!(status, 200);
        v
    }

    /// A session counter summed over the reactors (from /api/stats).
    pub fn session_stat(&self, name: &str) -> u64 {
        self.stats()["sessions"][name].as_u64().unwrap_or(0)
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.ws, path_and_query)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // Child::kill signals exactly this child's PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, head, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// A raw upgrade request (for refusals): returns (status, head, body).
pub fn raw_upgrade(
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut all = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    all.extend_from_slice(headers);
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in all {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Read the head and the Content-Length body (a 101 keeps the socket open, so no read_to_end).
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// Opens a WebSocket with extra request headers; the stream has a 5 s read timeout.
#[allow(clippy::result_large_err)] // tungstenite's own error type, returned as is
pub fn connect(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, Vec<(String, String)>), tungstenite::Error> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let host = req.uri().authority().unwrap().as_str().to_string();
    let stream = TcpStream::connect(&host).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let (ws, resp) = tungstenite::client(req, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => {
            tungstenite::Error::Io(std::io::Error::other("handshake interrupted"))
        }
    })?;
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    Ok((ws, headers))
}

/// Connects and returns the socket with its welcome frame.
pub fn connect_welcome(url: &str, headers: &[(&str, &str)]) -> (Ws, Value) {
    let (mut ws, _) = connect(url, headers).expect("upgrade");
    let welcome = recv(&mut ws);
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// The next text message as JSON (panics after the 5 s read timeout or on close).
pub fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Waits for a close frame and returns its code (None if the connection just ended).
pub fn recv_close(ws: &mut Ws) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(Message::Text(t)) => {
                let _ = t; // deliveries before the close are fine
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("no close frame within the read timeout")
            }
            Err(_) => return None,
        }
    }
}

/// True if no text message arrives within `wait`.
pub fn silent_for(ws: &mut Ws, wait: Duration) -> bool {
    ws.get_mut().set_read_timeout(Some(wait)).unwrap();
    let result = loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                eprintln!("unexpected message: {t}");
                break false;
            }
            Ok(_) => continue,
            Err(_) => break true,
        }
    };
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    result
}

pub fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).expect("send");
}

/// Sends a request and returns the next message (its reply when nothing else is in flight).
pub fn request(ws: &mut Ws, v: Value) -> Value {
    send(ws, v);
    recv(ws)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub const SECRET: &str = "test-secret-0123456789";

pub fn hs256(claims: &Value) -> String {
    hs256_with(claims, SECRET)
}

pub fn hs256_with(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// `--set` values for JWT mode with the test secret.
pub fn jwt_sets() -> Vec<String> {
    vec![
        "auth.mode=jwt".to_string(),
        format!("auth.hs256_secret={SECRET}"),
    ]
}

/// A fresh temporary directory for key files.
pub fn temp_dir(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("wsgate-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `f` every 50 ms until it is true or `within` has passed.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}
