//! Shared black-box harness for the integration tests.
//!
//! - [`Server`] starts the real `wsgate` binary on port 0, waits for the `wsgate ready ws=.. api=..` line on stderr
//!   (with TLS: `wsgate ready wss=.. api=..[ ws=..]`), keeps draining stderr (so the server never blocks on a full
//!   pipe) and kills the child (its own PID) on drop. It also reads counters from `/api/stats`.
//! - [`RawWs`] is a hand-rolled WebSocket client over a plain `TcpStream`: it sends masked frames byte for byte as
//!   the test wants them (also broken ones) and parses server frames itself.
//! - [`Http`] is a tiny HTTP/1.1 client (keep-alive, pipelining, Content-Length and chunked bodies).
//! - [`ws_connect`] opens a tungstenite client with read timeouts; the `tws_*` helpers work over plain and TLS
//!   streams.
//! - JWT helpers ([`hs256`], [`JWT_ARGS`]) and [`temp_dir`].
//!
//! Every wait is bounded: reads use deadlines, and failures say what was seen.
#![allow(dead_code)]

pub mod browser;
pub mod redis_server;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Default read timeout for single reads in tests.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------------------------------

/// Lines the server wrote to stderr: all lines up to the ready line, and the most recent ones after it.
#[derive(Default)]
struct StderrLog {
    startup: Vec<String>,
    recent: VecDeque<String>,
    ready: bool,
    eof: bool,
}

const RECENT_LINES: usize = 200;

pub fn bin_path() -> &'static str {
    env!("CARGO_BIN_EXE_wsgate")
}

/// The standard arguments every test server gets (port 0 everywhere, 2 reactor threads), and the reactors' backend
/// named by `WSGATE_TEST_IO_BACKEND` (epoll, uring, auto), so the suite runs on each (scripts/test.sh).
pub fn base_args() -> Vec<String> {
    let mut args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--threads",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ok(backend) = std::env::var("WSGATE_TEST_IO_BACKEND") {
        args.extend(["--io-backend".to_string(), backend]);
    }
    args
}

/// The base arguments followed by `extra`; a base flag that `extra` gives too (e.g. `--threads 1`) is left out,
/// since the binary refuses a flag given twice.
pub fn args_with_base(extra: &[&str]) -> Vec<String> {
    let base = base_args();
    let mut args = Vec::new();
    for pair in base.chunks(2) {
        if !extra.contains(&pair[0].as_str()) {
            args.extend_from_slice(pair);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The binary with `args`, stdin from /dev/null, and `env` on top of the test's environment minus its WSGATE_*
/// settings (a test never inherits them by accident).
pub fn command(args: &[String], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin_path());
    cmd.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("WSGATE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

pub struct Server {
    child: Option<Child>,
    pub pid: u32,
    /// The plaintext WebSocket listener (`ws=`). A TLS server without `tls.plain_listen` has none: then this is
    /// the unspecified address 0.0.0.0:0, which no connection reaches.
    pub ws: SocketAddr,
    /// The TLS listener (`wss=`), when TLS is configured.
    pub wss: Option<SocketAddr>,
    pub api: SocketAddr,
    log: Arc<Mutex<StderrLog>>,
    args: Vec<String>,
}

impl Server {
    /// Starts the gateway with the base arguments plus `extra` (e.g. `["--set", "ws.error_budget=3"]`).
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let args = args_with_base(extra);
        let mut child = command(&args, env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin_path()));
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(StderrLog::default()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let log = log.clone();
            std::thread::Builder::new()
                .name(format!("wsgate-{pid}-stderr"))
                .spawn(move || drain_stderr(stderr, log, tx))
                .expect("spawn stderr thread");
        }
        let mut server = Server {
            child: Some(child),
            pid,
            ws: "0.0.0.0:0".parse().unwrap(),
            wss: None,
            api: "0.0.0.0:0".parse().unwrap(),
            log,
            args,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => match parse_ready(&line) {
                    Some(ready) => {
                        if let Some(ws) = ready.ws {
                            server.ws = ws;
                        }
                        server.wss = ready.wss;
                        server.api = ready.api;
                        return server;
                    }
                    None => panic!("unparsable ready line {line:?}\n{}", server.describe()),
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stderr closed before the ready line: the process is gone or going.
                    let status = server.wait_exit(Duration::from_secs(2));
                    panic!(
                        "wsgate exited before ready (status {status:?})\n{}",
                        server.describe()
                    );
                }
            }
            if let Some(child) = server.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    std::thread::sleep(Duration::from_millis(50)); // let the stderr thread catch up
                    panic!(
                        "wsgate exited before ready with {status}\n{}",
                        server.describe()
                    );
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "wsgate did not print its ready line within {READY_TIMEOUT:?}\n{}",
                    server.describe()
                );
            }
        }
    }

    /// Arguments and stderr seen so far, for failure messages.
    pub fn describe(&self) -> String {
        let log = self.log.lock().unwrap();
        let mut s = format!(
            "--- wsgate {} (pid {}) stderr ---\n",
            self.args.join(" "),
            self.pid
        );
        for l in &log.startup {
            s.push_str(l);
            s.push('\n');
        }
        if log.ready {
            s.push_str("  [ready]\n");
        }
        for l in &log.recent {
            s.push_str(l);
            s.push('\n');
        }
        if log.eof {
            s.push_str("  [stderr closed]\n");
        }
        s.push_str("--- end stderr ---");
        s
    }

    /// Lines printed before (and including) the ready line.
    pub fn startup_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().startup.clone()
    }

    /// All lines kept (startup + recent).
    pub fn all_lines(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.startup
            .iter()
            .chain(log.recent.iter())
            .cloned()
            .collect()
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.ws, path)
    }

    /// Sends a signal to the server process (its own PID only).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on the PID of the child this harness spawned and still owns (not yet reaped).
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}) failed: {}",
            self.pid,
            std::io::Error::last_os_error()
        );
    }

    /// Waits for the process to exit, at most `timeout`. None if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => {}
                Err(e) => panic!("try_wait: {e}"),
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size of the server in KiB (from /proc/PID/status).
    pub fn rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    /// Waits (bounded) until a stderr line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        eventually(timeout, || {
            self.all_lines()
                .iter()
                .any(|l| l.contains(needle))
                .then_some(())
        })
        .is_some()
    }

    /// `GET /api/stats` on a fresh connection; asserts 200 and returns the JSON.
    pub fn stats(&self) -> serde_json::Value {
        let r = http_get(self.api, "/api/stats");
        assert_eq!(r.status, 200, "GET /api/stats: {r}");
        r.json()
    }

    /// One counter of `/api/stats` by JSON pointer, e.g. `/totals/connections` or `/sessions/refreshes_total`
    /// (counters are summed over the reactors); panics if it is missing.
    pub fn stat(&self, pointer: &str) -> u64 {
        let stats = self.stats();
        stats
            .pointer(pointer)
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("no counter {pointer} in /api/stats: {stats}"))
    }

    /// Waits (bounded) until the counter at `pointer` reaches `at_least`; returns its last value.
    /// Asserts that /api/stats shows no open connection and no lent read buffer within a few seconds: everything a
    /// finished client held has been released.
    pub fn assert_idle(&self, ctx: &str) {
        let ok = eventually(Duration::from_secs(8), || {
            let st = self.stats();
            let c = st.pointer("/totals/connections")?.as_u64()?;
            let b = st.pointer("/totals/read_buffers_lent")?.as_u64()?;
            (c == 0 && b == 0).then_some(())
        });
        assert!(
            ok.is_some(),
            "{ctx}: not back to idle (connections and lent read buffers): /api/stats totals {}\n{}",
            self.stats()["totals"],
            self.describe()
        );
    }

    pub fn wait_stat(&self, pointer: &str, at_least: u64, timeout: Duration) -> u64 {
        eventually(timeout, || {
            let v = self.stat(pointer);
            (v >= at_least).then_some(v)
        })
        .unwrap_or_else(|| self.stat(pointer))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                // Child::kill sends SIGKILL to this child's own PID.
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

fn drain_stderr(
    stderr: std::process::ChildStderr,
    log: Arc<Mutex<StderrLog>>,
    tx: mpsc::Sender<String>,
) {
    let mut reader = BufReader::new(stderr);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&raw)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        let mut l = log.lock().unwrap();
        if !l.ready {
            l.startup.push(line.clone());
            if parse_ready(&line).is_some() || line.contains("wsgate ready") {
                l.ready = true;
                let _ = tx.send(line);
            }
        } else {
            if l.recent.len() >= RECENT_LINES {
                l.recent.pop_front();
            }
            l.recent.push_back(line);
        }
    }
    log.lock().unwrap().eof = true;
}

/// The listeners named by the ready line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyLine {
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    pub api: SocketAddr,
}

/// Parses `wsgate ready ws=IP:PORT api=IP:PORT` or, with TLS, `wsgate ready wss=IP:PORT api=IP:PORT[ ws=IP:PORT]`.
/// None unless `api=` and at least one of `ws=` / `wss=` are there, each with an address.
pub fn parse_ready(line: &str) -> Option<ReadyLine> {
    let rest = &line[line.find("wsgate ready ")? + "wsgate ready ".len()..];
    let (mut ws, mut wss, mut api) = (None, None, None);
    for tok in rest.split_whitespace() {
        if let Some(v) = tok.strip_prefix("ws=") {
            ws = Some(v.parse().ok()?);
        } else if let Some(v) = tok.strip_prefix("wss=") {
            wss = Some(v.parse().ok()?);
        } else if let Some(v) = tok.strip_prefix("api=") {
            api = Some(v.parse().ok()?);
        }
    }
    if ws.is_none() && wss.is_none() {
        return None;
    }
    Some(ReadyLine { ws, wss, api: api? })
}

/// Output of a CLI run that is expected to exit by itself.
#[derive(Debug)]
pub struct CliOutput {
    /// None if it had to be killed after the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// Runs the binary with the base arguments plus `extra` and waits at most `timeout` for it to exit
/// (killing it, by its PID, if it does not).
pub fn run_cli(
    extra: &[&str],
    env: &[(&str, &str)],
    with_base: bool,
    timeout: Duration,
) -> CliOutput {
    let args = if with_base {
        args_with_base(extra)
    } else {
        extra.iter().map(|s| s.to_string()).collect()
    };
    run_to_exit(command(&args, env), timeout)
}

/// Runs `cmd` (the binary as [`command`] builds it, perhaps with more set on it) with its output captured, and
/// waits at most `timeout` for it to exit (killing it, by its PID, if it does not).
pub fn run_to_exit(mut cmd: Command, timeout: Duration) -> CliOutput {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin_path()));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    CliOutput {
        status,
        stdout,
        stderr,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Low-level socket helpers
// ---------------------------------------------------------------------------------------------------------------

pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    try_tcp_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

pub fn try_tcp_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Connects with a small SO_RCVBUF set before connect (so the TCP window stays small).
pub fn tcp_connect_small_rcvbuf(addr: SocketAddr, rcvbuf: i32) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only: {addr}")
    };
    // SAFETY: plain socket syscalls on a fresh fd that we own; the fd is handed to TcpStream exactly once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        set_rcvbuf(fd, rcvbuf);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            panic!("connect {addr}: {e}");
        }
        let s = TcpStream::from_raw_fd(fd);
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        s
    }
}

/// Sets SO_RCVBUF on a socket the test owns (the kernel doubles the value); panics on failure.
pub fn set_rcvbuf(fd: std::os::fd::RawFd, bytes: i32) {
    // SAFETY: setsockopt on an open socket fd, reading an i32 of the given length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt SO_RCVBUF: {}",
        std::io::Error::last_os_error()
    );
}

/// Reads with an overall deadline. Ok(0) = EOF; Err(TimedOut) when the deadline passes without data.
pub fn read_deadline(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> std::io::Result<usize> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(ErrorKind::TimedOut, "deadline passed"));
        }
        stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                if Instant::now() >= deadline {
                    return Err(std::io::Error::new(ErrorKind::TimedOut, "deadline passed"));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes all bytes, tolerating the peer closing (returns the error instead of panicking).
pub fn write_all_lenient(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes)
}

/// What the peer did after we stopped expecting data: closed cleanly, reset, sent more data, or nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerEnd {
    Eof,
    Reset,
    Data(Vec<u8>),
    StillOpen,
}

impl PeerEnd {
    /// Asserts that the peer closed the connection (EOF or reset): no more data, not still open.
    pub fn assert_closed(self, ctx: &str) {
        match self {
            PeerEnd::Eof | PeerEnd::Reset => {}
            other => panic!("{ctx}: connection not closed by the server: {other:?}"),
        }
    }
}

/// Waits up to `timeout` for the peer to close; collects any bytes that arrive first.
pub fn wait_peer_close(stream: &mut TcpStream, timeout: Duration) -> PeerEnd {
    let deadline = Instant::now() + timeout;
    let mut extra = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match read_deadline(stream, &mut buf, deadline) {
            Ok(0) => {
                return if extra.is_empty() {
                    PeerEnd::Eof
                } else {
                    PeerEnd::Data(extra)
                }
            }
            Ok(n) => extra.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                return if extra.is_empty() {
                    PeerEnd::StillOpen
                } else {
                    PeerEnd::Data(extra)
                }
            }
            Err(_) => {
                return if extra.is_empty() {
                    PeerEnd::Reset
                } else {
                    PeerEnd::Data(extra)
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP/1.1
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub reason: String,
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the response if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self}"))
    }

    /// True when the response says `Connection: close`.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .map(|v| v.to_ascii_lowercase().contains("close"))
            .unwrap_or(false)
    }
}

impl std::fmt::Display for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP/1.{} {} {}", self.version, self.status, self.reason)?;
        for (k, v) in &self.headers {
            write!(f, " | {k}: {v}")?;
        }
        let body = String::from_utf8_lossy(&self.body);
        let shown: String = body.chars().take(500).collect();
        write!(f, " || body({} bytes): {shown:?}", self.body.len())
    }
}

/// A raw HTTP/1.1 client connection: write any bytes, read responses one at a time.
pub struct Http {
    pub stream: TcpStream,
    buf: Vec<u8>,
    host: String,
}

impl Http {
    pub fn connect(addr: SocketAddr) -> Http {
        Http {
            stream: tcp_connect(addr),
            buf: Vec::new(),
            host: addr.to_string(),
        }
    }

    /// Builds a request with Host and (for a body or POST/PUT) Content-Length.
    pub fn build(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Vec<u8> {
        build_request(&self.host, method, path, headers, body)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write to {}: {e}", self.host));
    }

    /// Sends one request and reads its response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let req = self.build(method, path, headers, body);
        self.send(&req);
        self.read_response(READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&mut self, path: &str) -> HttpResponse {
        self.request("GET", path, &[], b"")
    }

    pub fn post_json(&mut self, path: &str, body: &str) -> HttpResponse {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    /// Reads one response (head + body by Content-Length or chunked; to EOF otherwise).
    pub fn read_response(&mut self, timeout: Duration) -> Result<HttpResponse, String> {
        read_http_response(&mut self.stream, &mut self.buf, timeout)
    }

    /// Bytes received but not yet consumed by a response.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }

    /// True if the server closes the connection (EOF or reset) within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> PeerEnd {
        if !self.buf.is_empty() {
            return PeerEnd::Data(std::mem::take(&mut self.buf));
        }
        wait_peer_close(&mut self.stream, timeout)
    }
}

pub fn build_request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    let has_cl = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_cl && (!body.is_empty() || method == "POST" || method == "PUT") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn fill(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    what: &str,
) -> Result<(), String> {
    let mut tmp = [0u8; 65536];
    match read_deadline(stream, &mut tmp, deadline) {
        Ok(0) => Err(format!(
            "EOF while reading {what}; got so far: {:?}",
            String::from_utf8_lossy(buf)
        )),
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            Ok(())
        }
        Err(e) => Err(format!(
            "{e} while reading {what}; got so far: {:?}",
            String::from_utf8_lossy(buf)
        )),
    }
}

/// Reads one HTTP response from `stream`, using and refilling `buf` (bytes already received).
pub fn read_http_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let deadline = Instant::now() + timeout;
    let (status, reason, version, headers, head_len) = loop {
        let mut hdrs = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut hdrs);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (
                    resp.code.unwrap_or(0),
                    resp.reason.unwrap_or("").to_string(),
                    resp.version.unwrap_or(1),
                    headers,
                    n,
                );
            }
            Ok(httparse::Status::Partial) => fill(stream, buf, deadline, "response head")?,
            Err(e) => {
                return Err(format!(
                    "bad response head ({e}): {:?}",
                    String::from_utf8_lossy(buf)
                ))
            }
        }
    };
    buf.drain(..head_len);
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let body = if status == 101 || status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if let Some(cl) = find("content-length") {
        let len: usize = cl
            .parse()
            .map_err(|_| format!("bad Content-Length {cl:?}"))?;
        while buf.len() < len {
            fill(stream, buf, deadline, "response body")?;
        }
        buf.drain(..len).collect()
    } else if find("transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false)
    {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                fill(stream, buf, deadline, "chunk size")?;
            };
            let size_str = String::from_utf8_lossy(&buf[..line_end]).to_string();
            let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16)
                .map_err(|_| format!("bad chunk size {size_str:?}"))?;
            buf.drain(..line_end + 2);
            if size == 0 {
                // trailers until empty line
                loop {
                    if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                        buf.drain(..p + 2);
                        if p == 0 {
                            break;
                        }
                    } else {
                        fill(stream, buf, deadline, "chunk trailer")?;
                    }
                }
                break;
            }
            while buf.len() < size + 2 {
                fill(stream, buf, deadline, "chunk data")?;
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
        body
    } else {
        // No length: body runs to EOF.
        let mut tmp = [0u8; 65536];
        loop {
            match read_deadline(stream, &mut tmp, deadline) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == ErrorKind::TimedOut => {
                    return Err(format!(
                        "response without length not closed: {:?}",
                        String::from_utf8_lossy(buf)
                    ))
                }
                Err(_) => break,
            }
        }
        std::mem::take(buf)
    };
    Ok(HttpResponse {
        status,
        reason,
        version,
        headers,
        body,
    })
}

/// One request on a fresh connection.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut c = Http::connect(addr);
    c.request(method, path, headers, body)
}

pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_request(addr, "GET", path, &[], b"")
}

/// A valid upgrade request for `path` plus `extra` headers on a fresh connection: the server's answer, 101 or a
/// refusal (for tests of refusals; [`RawWs::connect_with`] is the way to get a connection).
pub fn upgrade_response(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let mut c = Http::connect(addr);
    c.send(&upgrade_request(
        &addr.to_string(),
        path,
        &new_key(),
        &[],
        extra,
    ));
    c.read_response(READ_TIMEOUT)
        .unwrap_or_else(|e| panic!("upgrade {path}: {e}"))
}

/// Publishes `data` (raw JSON text) to one channel; asserts 200 {"ok":true}.
pub fn publish(api: &mut Http, channel: &str, data: &str) {
    let body = format!(
        "{{\"channel\":{},\"data\":{}}}",
        serde_json::to_string(channel).unwrap(),
        data
    );
    let r = api.post_json("/api/publish", &body);
    assert_eq!(r.status, 200, "publish {body}: {r}");
}

/// Publishes `data` to several channels with the list form; asserts 200.
pub fn publish_many(api: &mut Http, channels: &[&str], data: &str) {
    let body = format!(
        "{{\"channels\":{},\"data\":{}}}",
        serde_json::to_string(channels).unwrap(),
        data
    );
    let r = api.post_json("/api/publish", &body);
    assert_eq!(r.status, 200, "publish {body}: {r}");
}

pub fn broadcast(api: &mut Http, data: &str) {
    let body = format!("{{\"data\":{data}}}");
    let r = api.post_json("/api/broadcast", &body);
    assert_eq!(r.status, 200, "broadcast {body}: {r}");
}

// ---------------------------------------------------------------------------------------------------------------
// WebSocket handshake
// ---------------------------------------------------------------------------------------------------------------

pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A fresh random-looking 16-byte key.
pub fn new_key() -> String {
    use base64::Engine;
    let n = next_counter() as u64;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let seed = t ^ ((std::process::id() as u64) << 32);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes());
    bytes[8..].copy_from_slice(&n.wrapping_mul(0xD6E8_FEB8_6659_FD93).to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The standard upgrade request headers (after the request line), minus the ones named in `omit`,
/// plus `extra`.
pub fn upgrade_request(
    host: &str,
    path: &str,
    key: &str,
    omit: &[&str],
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let std_headers = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ];
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    for (k, v) in std_headers {
        if !omit.iter().any(|o| o.eq_ignore_ascii_case(k))
            && !extra.iter().any(|(e, _)| e.eq_ignore_ascii_case(k))
        {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

// ---------------------------------------------------------------------------------------------------------------
// WebSocket frames
// ---------------------------------------------------------------------------------------------------------------

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

static COUNTER: AtomicU32 = AtomicU32::new(1);

fn next_counter() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A mask key that changes from frame to frame and has no zero bytes (so an unmasking bug shows).
pub fn next_mask() -> [u8; 4] {
    let n = next_counter().wrapping_mul(0x9E37_79B9);
    let mut m = n.to_le_bytes();
    for b in &mut m {
        if *b == 0 {
            *b = 0x5A;
        }
    }
    m
}

/// XORs `data` in place with `mask`, where `data[0]` is payload byte number `offset`.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(offset + i) & 3];
    }
}

/// A frame header. `rsv` is the 3 RSV bits (0..=7); `mask` None means an unmasked frame.
pub fn frame_header(fin: bool, rsv: u8, opcode: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut h = Vec::with_capacity(14);
    h.push((if fin { 0x80 } else { 0 }) | ((rsv & 7) << 4) | (opcode & 0x0F));
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    if len <= 125 {
        h.push(mbit | len as u8);
    } else if len <= 0xFFFF {
        h.push(mbit | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(mbit | 127);
        h.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(m) = mask {
        h.extend_from_slice(&m);
    }
    h
}

/// A complete frame with any bits the test wants.
pub fn build_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> Vec<u8> {
    let mut f = frame_header(fin, rsv, opcode, payload.len() as u64, mask);
    let start = f.len();
    f.extend_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut f[start..], m, 0);
    }
    f
}

/// A normal masked client frame.
pub fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    build_frame(fin, 0, opcode, payload, Some(next_mask()))
}

/// A close frame payload: code + reason bytes.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// A frame received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl WsFrame {
    pub fn is_close(&self) -> bool {
        self.opcode == OP_CLOSE
    }

    /// Close code, None for an empty close payload.
    pub fn close_code(&self) -> Option<u16> {
        if self.payload.len() >= 2 {
            Some(u16::from_be_bytes([self.payload[0], self.payload[1]]))
        } else {
            None
        }
    }

    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or(&[])).into_owned()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("frame payload is not JSON ({e}): {self}"))
    }
}

impl std::fmt::Display for WsFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.opcode {
            OP_CONT => "cont",
            OP_TEXT => "text",
            OP_BINARY => "binary",
            OP_CLOSE => "close",
            OP_PING => "ping",
            OP_PONG => "pong",
            _ => "?",
        };
        write!(
            f,
            "[{name} fin={} rsv={} len={}",
            self.fin,
            self.rsv,
            self.payload.len()
        )?;
        if self.opcode == OP_CLOSE {
            write!(
                f,
                " code={:?} reason={:?}",
                self.close_code(),
                self.close_reason()
            )?;
        } else if self.payload.len() <= 300 {
            write!(f, " {:?}", String::from_utf8_lossy(&self.payload))?;
        }
        write!(f, "]")
    }
}

#[derive(Debug)]
pub enum WsReadError {
    /// Clean EOF; `partial` bytes of an unfinished frame were pending.
    Eof {
        partial: usize,
    },
    Timeout {
        partial: usize,
    },
    Io(std::io::Error),
    /// The server sent something that is not a valid server frame (e.g. masked).
    Protocol(String),
}

impl std::fmt::Display for WsReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsReadError::Eof { partial } => write!(
                f,
                "EOF (with {partial} bytes of an unfinished frame pending)"
            ),
            WsReadError::Timeout { partial } => write!(
                f,
                "timeout (with {partial} bytes of an unfinished frame pending)"
            ),
            WsReadError::Io(e) => write!(f, "I/O error: {e}"),
            WsReadError::Protocol(s) => write!(f, "bad server frame: {s}"),
        }
    }
}

/// Parses one server frame at the start of `buf`: Ok(Some((frame, consumed))) or Ok(None) if incomplete.
pub fn parse_server_frame(buf: &[u8]) -> Result<Option<(WsFrame, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv = (buf[0] >> 4) & 7;
    let opcode = buf[0] & 0x0F;
    if buf[1] & 0x80 != 0 {
        return Err(format!(
            "server frame is masked (header {:02x} {:02x})",
            buf[0], buf[1]
        ));
    }
    let (len, hlen) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10)
        }
        n => (n as u64, 2),
    };
    if len > (1 << 40) {
        return Err(format!("absurd frame length {len}"));
    }
    let total = hlen + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((
        WsFrame {
            fin,
            rsv,
            opcode,
            payload: buf[hlen..total].to_vec(),
        },
        total,
    )))
}

/// A hand-rolled WebSocket client over a TcpStream.
pub struct RawWs {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
    /// The 101 response.
    pub response: Option<HttpResponse>,
    /// The welcome frame the gateway endpoint sends first (checked and kept by `upgrade`).
    pub welcome: Option<serde_json::Value>,
}

/// True for the gateway endpoint, whose first server message is the welcome frame.
pub fn is_gateway_path(path: &str) -> bool {
    path == "/ws" || path.starts_with("/ws?")
}

/// Checks a welcome frame: `{"type":"welcome","sid":"<decimal>","heartbeat":{"interval":N,"timeout":M}}`.
pub fn check_welcome(text: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("welcome is not JSON ({e}): {text}"));
    assert_eq!(v["type"], "welcome", "first frame is not a welcome: {text}");
    let sid = v["sid"]
        .as_str()
        .unwrap_or_else(|| panic!("welcome without a string sid: {text}"));
    assert!(
        sid.parse::<u64>().is_ok(),
        "sid is not a decimal u64: {text}"
    );
    assert!(
        v["heartbeat"]["interval"].as_u64().is_some(),
        "welcome without heartbeat.interval: {text}"
    );
    v
}

impl RawWs {
    /// Connects and upgrades; panics with the response if the server does not answer 101.
    pub fn connect(addr: SocketAddr, path: &str) -> RawWs {
        RawWs::connect_with(addr, path, &[])
            .unwrap_or_else(|e| panic!("WebSocket connect to {addr}{path}: {e}"))
    }

    /// Connects and upgrades with extra headers; Err describes the non-101 response.
    pub fn connect_with(
        addr: SocketAddr,
        path: &str,
        extra: &[(&str, &str)],
    ) -> Result<RawWs, String> {
        let stream = try_tcp_connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        RawWs::upgrade(stream, addr, path, extra)
    }

    /// Upgrades an already connected stream.
    pub fn upgrade(
        mut stream: TcpStream,
        addr: SocketAddr,
        path: &str,
        extra: &[(&str, &str)],
    ) -> Result<RawWs, String> {
        let key = new_key();
        let req = upgrade_request(&addr.to_string(), path, &key, &[], extra);
        stream
            .write_all(&req)
            .map_err(|e| format!("write handshake: {e}"))?;
        let mut buf = Vec::new();
        let resp = read_http_response(&mut stream, &mut buf, READ_TIMEOUT)?;
        if resp.status != 101 {
            return Err(format!("expected 101, got {resp}"));
        }
        let want = accept_key(&key);
        if resp.header("sec-websocket-accept") != Some(want.as_str()) {
            return Err(format!("bad Sec-WebSocket-Accept (want {want}): {resp}"));
        }
        let mut ws = RawWs {
            stream,
            buf,
            response: Some(resp),
            welcome: None,
        };
        if is_gateway_path(path) {
            let frame = ws
                .read_frame_timeout(READ_TIMEOUT)
                .map_err(|e| format!("no welcome frame after the upgrade: {e}"))?;
            ws.welcome = Some(check_welcome(&frame.text()));
        }
        Ok(ws)
    }

    /// The welcome frame of a gateway connection (checked and kept by `upgrade`).
    pub fn welcome_frame(&self) -> &serde_json::Value {
        self.welcome
            .as_ref()
            .expect("no welcome frame: not a gateway endpoint connection")
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write {} bytes: {e}", bytes.len()));
    }

    /// Like send_raw but returns the error (the server may already have closed).
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let f = masked_frame(fin, opcode, payload);
        self.send_raw(&f);
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_frame(true, OP_TEXT, text.as_bytes());
    }

    pub fn send_close(&mut self, code: u16, reason: &str) {
        let p = close_payload(code, reason.as_bytes());
        self.send_frame(true, OP_CLOSE, &p);
    }

    /// Reads the next server frame, waiting at most `timeout`.
    pub fn read_frame_timeout(&mut self, timeout: Duration) -> Result<WsFrame, WsReadError> {
        let deadline = Instant::now() + timeout;
        let mut tmp = vec![0u8; 256 * 1024];
        loop {
            match parse_server_frame(&self.buf) {
                Ok(Some((f, n))) => {
                    self.buf.drain(..n);
                    return Ok(f);
                }
                Ok(None) => {}
                Err(e) => return Err(WsReadError::Protocol(e)),
            }
            // Large frame pending: read straight into a big buffer to keep it quick.
            match read_deadline(&mut self.stream, &mut tmp, deadline) {
                Ok(0) => {
                    return Err(WsReadError::Eof {
                        partial: self.buf.len(),
                    })
                }
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == ErrorKind::TimedOut => {
                    return Err(WsReadError::Timeout {
                        partial: self.buf.len(),
                    })
                }
                Err(e) => return Err(WsReadError::Io(e)),
            }
        }
    }

    pub fn read_frame(&mut self) -> Result<WsFrame, WsReadError> {
        self.read_frame_timeout(READ_TIMEOUT)
    }

    /// The next frame; panics with `ctx` if none arrives.
    pub fn expect_frame(&mut self, ctx: &str) -> WsFrame {
        self.read_frame()
            .unwrap_or_else(|e| panic!("{ctx}: expected a frame, got {e}"))
    }

    /// Next data frame, answering pings and skipping pongs on the way.
    pub fn next_message(&mut self, timeout: Duration) -> Result<WsFrame, WsReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self.read_frame_timeout(left)?;
            match f.opcode {
                OP_PING => {
                    let p = f.payload.clone();
                    let _ = self.try_send_raw(&masked_frame(true, OP_PONG, &p));
                }
                OP_PONG => {}
                _ => return Ok(f),
            }
        }
    }

    /// Next text message as a string; panics on anything else.
    pub fn expect_text(&mut self, ctx: &str) -> String {
        let f = self
            .next_message(READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("{ctx}: expected a text frame, got {e}"));
        assert!(
            f.opcode == OP_TEXT && f.fin,
            "{ctx}: expected a text frame, got {f}"
        );
        String::from_utf8(f.payload).unwrap_or_else(|e| panic!("{ctx}: server text not UTF-8: {e}"))
    }

    /// Next text message parsed as JSON.
    pub fn expect_json(&mut self, ctx: &str) -> serde_json::Value {
        let t = self.expect_text(ctx);
        serde_json::from_str(&t)
            .unwrap_or_else(|e| panic!("{ctx}: server text is not JSON ({e}): {t:?}"))
    }

    /// Sends a command (a JSON text) and returns the next JSON message: its reply when nothing else is in flight.
    pub fn call(&mut self, cmd: impl std::fmt::Display) -> serde_json::Value {
        let cmd = cmd.to_string();
        self.send_text(&cmd);
        self.expect_json(&format!("reply to {cmd}"))
    }

    /// Reads frames until a close frame arrives (data frames before it are returned too).
    /// Panics if the connection ends or times out first.
    pub fn expect_close(&mut self, ctx: &str) -> (WsFrame, Vec<WsFrame>) {
        self.expect_close_within(ctx, READ_TIMEOUT)
    }

    pub fn expect_close_within(&mut self, ctx: &str, timeout: Duration) -> (WsFrame, Vec<WsFrame>) {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame_timeout(left) {
                Ok(f) if f.is_close() => return (f, before),
                Ok(f) => before.push(f),
                Err(e) => {
                    let seen: Vec<String> = before.iter().map(|f| f.to_string()).collect();
                    panic!("{ctx}: expected a close frame, got {e}; frames before: {seen:?}");
                }
            }
        }
    }

    /// Asserts the server sends a close frame with `code` (only pings/pongs may come before it).
    pub fn expect_close_code(&mut self, code: u16, ctx: &str) -> WsFrame {
        let (f, before) = self.expect_close(ctx);
        let unexpected: Vec<String> = before
            .iter()
            .filter(|f| f.opcode != OP_PING && f.opcode != OP_PONG)
            .map(|f| f.to_string())
            .collect();
        assert!(
            unexpected.is_empty(),
            "{ctx}: data frames before the close: {unexpected:?} (close {f})"
        );
        assert_eq!(f.close_code(), Some(code), "{ctx}: wrong close code in {f}");
        f
    }

    /// Waits for the server to close TCP (EOF or reset). Returns what happened.
    pub fn wait_closed(&mut self, timeout: Duration) -> PeerEnd {
        if !self.buf.is_empty() {
            return PeerEnd::Data(std::mem::take(&mut self.buf));
        }
        wait_peer_close(&mut self.stream, timeout)
    }

    /// Asserts that nothing arrives for `dur` (pings answered and ignored).
    pub fn expect_silence(&mut self, dur: Duration, ctx: &str) {
        match self.next_message(dur) {
            Err(WsReadError::Timeout { partial: 0 }) => {}
            Ok(f) => panic!("{ctx}: expected nothing, got {f}"),
            Err(e) => panic!("{ctx}: expected nothing, got {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// tungstenite client
// ---------------------------------------------------------------------------------------------------------------

pub type Tws = tungstenite::WebSocket<TcpStream>;

/// A stream under a tungstenite client whose TCP socket the harness can reach (to set read timeouts): plain TCP
/// or a rustls client stream.
pub trait OverTcp: Read + Write {
    fn tcp(&self) -> &TcpStream;
}

impl OverTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl OverTcp for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// A tungstenite client with a read timeout (so a missing message fails the test instead of hanging it).
pub fn ws_connect(addr: SocketAddr, path: &str) -> Tws {
    let stream = tcp_connect(addr);
    let url = format!("ws://{addr}{path}");
    match tungstenite::client::client(url.as_str(), stream) {
        Ok((mut ws, _resp)) => {
            if is_gateway_path(path) {
                check_welcome(&tws_next_text(&mut ws, READ_TIMEOUT, "welcome"));
            }
            ws
        }
        Err(e) => panic!("tungstenite connect {url}: {e}"),
    }
}

/// The next text message from a tungstenite client (pings are answered by tungstenite itself).
pub fn tws_next_text<S: OverTcp>(
    ws: &mut tungstenite::WebSocket<S>,
    timeout: Duration,
    ctx: &str,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!("{ctx}: no text message within {timeout:?}");
        }
        ws.get_ref().tcp().set_read_timeout(Some(left)).unwrap();
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => return t,
            Ok(tungstenite::Message::Ping(_)) | Ok(tungstenite::Message::Pong(_)) => continue,
            Ok(other) => panic!("{ctx}: expected text, got {other:?}"),
            Err(tungstenite::Error::Io(e))
                if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut =>
            {
                panic!("{ctx}: no text message within {timeout:?}")
            }
            Err(e) => panic!("{ctx}: read error {e}"),
        }
    }
}

pub fn tws_next_json<S: OverTcp>(
    ws: &mut tungstenite::WebSocket<S>,
    timeout: Duration,
    ctx: &str,
) -> serde_json::Value {
    let t = tws_next_text(ws, timeout, ctx);
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{ctx}: not JSON ({e}): {t:?}"))
}

pub fn tws_send_text<S: OverTcp>(ws: &mut tungstenite::WebSocket<S>, text: &str) {
    ws.send(tungstenite::Message::Text(text.to_string()))
        .unwrap_or_else(|e| panic!("send {text:?}: {e}"));
}

// ---------------------------------------------------------------------------------------------------------------
// misc
// ---------------------------------------------------------------------------------------------------------------

/// A fresh, empty temporary directory (unique per process and call); the caller removes it.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "wsgate-{name}-{}-{}-{nanos}",
        std::process::id(),
        next_counter()
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Seconds since the Unix epoch (for JWT `exp` claims).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

macro_rules! test_secret {
    () => {
        "test-secret-0123456789"
    };
}

/// The HS256 secret of [`JWT_ARGS`].
pub const SECRET: &str = test_secret!();

/// Server arguments for JWT mode with [`SECRET`].
pub const JWT_ARGS: [&str; 4] = [
    "--set",
    "auth.mode=jwt",
    "--set",
    concat!("auth.hs256_secret=", test_secret!()),
];

/// An HS256 token signed with [`SECRET`].
pub fn hs256(claims: &serde_json::Value) -> String {
    hs256_with(claims, SECRET)
}

pub fn hs256_with(claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Sum of all samples of metric `name` (exact name; labels allowed) in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = if rest.starts_with('{') {
            match rest.find('}') {
                Some(p) => &rest[p + 1..],
                None => continue,
            }
        } else if rest.starts_with(' ') {
            rest
        } else {
            continue;
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            found = true;
            sum += v;
        }
    }
    found.then_some(sum)
}

/// The `# TYPE name kind` of a metric, if declared.
pub fn metric_type(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        if it.next() == Some("#") && it.next() == Some("TYPE") && it.next() == Some(name) {
            it.next().map(|s| s.to_string())
        } else {
            None
        }
    })
}

/// Raises this test process's soft RLIMIT_NOFILE to at least `want` (capped at the hard limit) for tests that
/// hold many sockets; returns the resulting soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}
