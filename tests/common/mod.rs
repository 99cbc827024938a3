//! Shared helpers for the integration tests: start the `wsgate` binary, read its ready line, talk to its API.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running gateway; killed (by its PID) when dropped.
pub struct Gateway {
    child: Child,
    /// `ws=`, `wss=`, `api=` from the ready line.
    pub addrs: HashMap<String, SocketAddr>,
    /// Every stderr line so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    pub fn start(args: &[&str]) -> Gateway {
        Self::try_start(args).unwrap_or_else(|(code, log)| panic!("gateway exited {code:?}: {log}"))
    }

    /// Starts the binary; Err((exit code, stderr)) if it exits before its ready line.
    pub fn try_start(args: &[&str]) -> Result<Gateway, (Option<i32>, String)> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsgate");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("wsgate ready ") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => {
                let addrs = line
                    .trim_start_matches("wsgate ready ")
                    .split(' ')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.parse().expect("address")))
                    .collect();
                Ok(Gateway { child, addrs, log })
            }
            Err(_) => {
                let status = wait_exit(&mut child, Duration::from_secs(10));
                std::thread::sleep(Duration::from_millis(100));
                let text = log.lock().unwrap().join("\n");
                if status.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                Err((status.and_then(|s| s.code()), text))
            }
        }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (bounded) until a stderr line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// One HTTP/1.1 request to the API; returns (status, body).
    pub fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(self.addr("api"), method, path, body)
    }

    pub fn publish(&self, channel: &str, data: &str) {
        let (status, body) = self.api(
            "POST",
            "/api/publish",
            &format!("{{\"channel\":\"{channel}\",\"data\":{data}}}"),
        );
        assert_eq!(status, 200, "{body}");
    }

    /// A counter summed over reactors from /api/stats.
    pub fn stat(&self, name: &str) -> u64 {
        let (status, body) = self.api("GET", "/api/stats", "");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["totals"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no stat {name}: {body}"))
    }

    /// Waits (bounded) until a stat reaches `at_least`.
    pub fn wait_stat(&self, name: &str, at_least: u64, timeout: Duration) -> u64 {
        let end = std::time::Instant::now() + timeout;
        loop {
            let v = self.stat(name);
            if v >= at_least || std::time::Instant::now() >= end {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
