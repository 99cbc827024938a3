//! Reactor torture: a seeded random swarm of misbehaving clients against the real binary, mixed with API publishes
//! and well-behaved subscribers.
//!
//! - `WSGATE_TORTURE_SECS` (default 20): how long the swarm runs (the whole test stays well under 60 s by default).
//! - `WSGATE_TORTURE_SEED`: replays a run (each worker's choices derive from it; OS timing still varies). The seed
//!   is printed at the start and is part of every assertion message.
//!
//! Invariants checked at the end: the process is up; every well-behaved subscriber got every publish on its
//! channels exactly once and in order; every misbehaving client saw the documented close code for what it did
//! (docs/PROTOCOL.md) and/or a TCP close — never a hang; connections and lent read buffers go back to 0; RSS stays
//! within a generous bound over the idle baseline.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHANNELS: usize = 4;
const SUBSCRIBERS: usize = 8;
const WORKERS: usize = 6;
const MAX_MESSAGE: usize = 65536;
const MAX_OUTBOUND: usize = 262144;
/// Generous: RSS may grow by this much over the warmed-up idle baseline.
const RSS_SLACK_KB: u64 = 96 * 1024;

/// xorshift64* — small, deterministic, good enough for choosing misbehaviour.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in lo..=hi.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn bytes(&mut self, n: usize, alphabet: &[u8]) -> Vec<u8> {
        (0..n)
            .map(|_| alphabet[self.next() as usize % alphabet.len()])
            .collect()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------------------------
// misbehaving clients
// ---------------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A valid message in random fragments with pings between them, echoed; then a clean close (1000).
    FragmentedEcho,
    /// Many echoes plus a fragmented one in one write, never reading: slow consumer (1008) or TCP close.
    NotReading,
    /// Half a frame, then the client shuts its side: TCP close.
    CloseMidFrame,
    /// A request trickled a few bytes at a time: its reply, then a clean close (1000).
    Trickle,
    /// A (maybe fragmented) message over ws.max_message_size: 1009.
    Oversize,
    /// Invalid UTF-8 in a text message (maybe in a later fragment), then more frames: 1007.
    InvalidUtf8,
    /// A protocol violation, then garbage: 1002.
    Violation,
    /// Subscribes and unsubscribes at random, reading replies: then a clean close (1000).
    SubChurn,
    /// Subscribes to the flood channel and stops reading: 1008 or TCP close (or 1000 if it never fell behind).
    SlowSubscriber,
    /// Says nothing and ignores pings: 1001 idle timeout.
    Silent,
}

/// One misbehaving client: its kind and how it ended (Err: neither the documented close nor a TCP close).
type Outcome = (Kind, Result<String, String>);
/// Per kind: runs, accepted endings by description, failures.
type Tally = (usize, BTreeMap<String, usize>, Vec<String>);

const KINDS: &[(Kind, u64)] = &[
    (Kind::FragmentedEcho, 14),
    (Kind::NotReading, 12),
    (Kind::CloseMidFrame, 10),
    (Kind::Trickle, 8),
    (Kind::Oversize, 12),
    (Kind::InvalidUtf8, 12),
    (Kind::Violation, 14),
    (Kind::SubChurn, 10),
    (Kind::SlowSubscriber, 5),
    (Kind::Silent, 3),
];

fn pick_kind(rng: &mut Rng) -> Kind {
    let total: u64 = KINDS.iter().map(|k| k.1).sum();
    let mut r = rng.next() % total;
    for &(k, w) in KINDS {
        if r < w {
            return k;
        }
        r -= w;
    }
    unreachable!()
}

/// How a misbehaving connection ended.
fn ending(ws: &mut RawWs, allowed: &[u16], wait: Duration) -> Result<String, String> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.read_frame_timeout(left) {
            Ok(f) if f.is_close() => {
                let code = f.close_code();
                if !code.is_some_and(|c| allowed.contains(&c)) {
                    return Err(format!("close {f}, want one of {allowed:?}"));
                }
                // Answer it, then the server must drop the connection (bounded).
                let _ = ws.try_send_raw(&masked_frame(
                    true,
                    OP_CLOSE,
                    &close_payload(code.unwrap_or(1000), b""),
                ));
                return match ws.wait_closed(Duration::from_secs(5)) {
                    PeerEnd::Eof | PeerEnd::Reset => Ok(format!("close {}", code.unwrap_or(0))),
                    other => Err(format!("close {f}, then no TCP close: {other:?}")),
                };
            }
            Ok(_) => {}
            Err(WsReadError::Eof { .. }) | Err(WsReadError::Io(_)) => return Ok("tcp close".into()),
            Err(e) => return Err(format!("hang: neither a close frame nor a TCP close ({e})")),
        }
    }
}

/// Reads (answering pings) for a while: a close frame must carry one of `allowed` and be followed by a TCP close;
/// a TCP close is fine. Still open after that: we close (1000) and the server must echo it (or close with one of
/// `allowed`). Deliveries and echoes on the way are skipped.
fn drain_then_close(ws: &mut RawWs, allowed: &[u16]) -> Result<String, String> {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        match ws.read_frame_timeout(Duration::from_millis(300)) {
            Ok(f) if f.is_close() => {
                if !f.close_code().is_some_and(|c| allowed.contains(&c)) {
                    return Err(format!("close {f}, want one of {allowed:?}"));
                }
                return match ws.wait_closed(Duration::from_secs(5)) {
                    PeerEnd::Eof | PeerEnd::Reset => {
                        Ok(format!("close {}", f.close_code().unwrap()))
                    }
                    other => Err(format!("close {f}, then no TCP close: {other:?}")),
                };
            }
            Ok(f) if f.opcode == OP_PING => {
                let _ = ws.try_send_raw(&masked_frame(true, OP_PONG, &f.payload));
            }
            Ok(_) => {}
            Err(WsReadError::Eof { .. }) | Err(WsReadError::Io(_)) => return Ok("tcp close".into()),
            Err(WsReadError::Timeout { .. }) => {}
            Err(e) => return Err(format!("{e}")),
        }
    }
    ws.send_close(1000, "");
    ending(ws, allowed, Duration::from_secs(10))
}

/// A masked frame split at random points into writes with short pauses (trickling).
fn send_split(ws: &mut RawWs, rng: &mut Rng, bytes: &[u8]) {
    let mut off = 0;
    while off < bytes.len() {
        let n = rng.range(1, 64.min(bytes.len() - off));
        if ws.try_send_raw(&bytes[off..off + n]).is_err() {
            return;
        }
        off += n;
        std::thread::sleep(Duration::from_millis(rng.range(0, 15) as u64));
    }
}

/// A message as frames: `parts` fragments, pings between some of them.
fn fragments(rng: &mut Rng, opcode: u8, payload: &[u8], parts: usize, pings: bool) -> Vec<u8> {
    let mut cuts: Vec<usize> = (1..parts).map(|_| rng.range(0, payload.len())).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for (i, end) in cuts.into_iter().chain([payload.len()]).enumerate() {
        let op = if i == 0 { opcode } else { OP_CONT };
        let fin = i + 1 == parts.max(1);
        out.extend(masked_frame(fin, op, &payload[start..end]));
        if pings && !fin && rng.chance(50) {
            out.extend(masked_frame(true, OP_PING, b"between"));
        }
        start = end;
    }
    out
}

const TEXT: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 ";

fn run_client(kind: Kind, rng: &mut Rng, ws_addr: SocketAddr) -> Result<String, String> {
    let connect = |path: &str, small: bool| -> Result<RawWs, String> {
        let stream = if small {
            tcp_connect_small_rcvbuf(ws_addr, 4096)
        } else {
            try_tcp_connect(ws_addr).map_err(|e| format!("connect: {e}"))?
        };
        RawWs::upgrade(stream, ws_addr, path, &[]).map_err(|e| format!("upgrade {path}: {e}"))
    };
    match kind {
        Kind::FragmentedEcho => {
            let mut ws = connect("/echo", false)?;
            let len = rng.range(0, 20_000);
            let payload = rng.bytes(len, TEXT);
            let parts = rng.range(1, 6);
            let bytes = fragments(rng, OP_TEXT, &payload, parts, true);
            if rng.chance(50) {
                send_split(&mut ws, rng, &bytes);
            } else {
                ws.try_send_raw(&bytes).map_err(|e| format!("write: {e}"))?;
            }
            let f = ws
                .next_message(Duration::from_secs(10))
                .map_err(|e| format!("no echo: {e}"))?;
            if f.opcode != OP_TEXT || f.payload != payload {
                return Err(format!("wrong echo {f} for {len} bytes in {parts} parts"));
            }
            ws.send_close(1000, "");
            ending(&mut ws, &[1000], Duration::from_secs(5))
        }
        Kind::NotReading => {
            // One write under 64 KiB (one read of the server): echoes that fill most of the outbound budget, then
            // a fragmented message whose echo may push the queue over it (the slow consumer is then closed while
            // its fragmented message is being handled).
            let mut ws = connect("/echo", true)?;
            let mut bytes = Vec::new();
            let target = rng.range(8_000, MAX_OUTBOUND - 1000);
            let mut queued = 0;
            while queued < target {
                let len = rng.range(500, 8_000).min(target - queued + 1);
                bytes.extend(masked_frame(true, OP_BINARY, &rng.bytes(len, TEXT)));
                queued += len + 4;
            }
            let len = rng.range(1_000, 30_000);
            let payload = rng.bytes(len, TEXT);
            let parts = rng.range(2, 4);
            bytes.extend(fragments(rng, OP_BINARY, &payload, parts, true));
            let _ = ws.try_send_raw(&bytes);
            std::thread::sleep(Duration::from_millis(rng.range(0, 500) as u64));
            // Cut off (1008 / TCP close); or, if the queue never went over, everything echoed: then we close.
            drain_then_close(&mut ws, &[1000, 1008])
        }
        Kind::CloseMidFrame => {
            let path = if rng.chance(50) { "/echo" } else { "/ws" };
            let mut ws = connect(path, false)?;
            let len = rng.range(10, 30_000);
            let frame = masked_frame(true, OP_BINARY, &rng.bytes(len, TEXT));
            let cut = rng.range(1, frame.len() - 1);
            let _ = ws.try_send_raw(&frame[..cut]);
            std::thread::sleep(Duration::from_millis(rng.range(0, 200) as u64));
            if rng.chance(50) {
                // Vanish (with a reset if anything was unread): nothing to observe.
                return Ok("dropped".into());
            }
            let _ = ws.stream.shutdown(std::net::Shutdown::Write);
            match ws.wait_closed(Duration::from_secs(5)) {
                PeerEnd::Eof | PeerEnd::Reset => Ok("tcp close".into()),
                other => Err(format!("no TCP close after our FIN mid-frame: {other:?}")),
            }
        }
        Kind::Trickle => {
            let mut ws = connect("/ws", false)?;
            let id = rng.range(0, 1_000_000);
            let req = format!(r#"{{"op":"ping","id":{id}}}"#);
            let parts = rng.range(1, 3);
            let bytes = fragments(rng, OP_TEXT, req.as_bytes(), parts, true);
            send_split(&mut ws, rng, &bytes);
            let want = format!(r#"{{"type":"pong","id":{id}}}"#);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let f = ws
                    .next_message(deadline.saturating_duration_since(Instant::now()))
                    .map_err(|e| format!("no pong: {e}"))?;
                if f.text() == want {
                    break;
                }
            }
            ws.send_close(1000, "");
            ending(&mut ws, &[1000], Duration::from_secs(5))
        }
        Kind::Oversize => {
            let path = if rng.chance(50) { "/echo" } else { "/ws" };
            let mut ws = connect(path, false)?;
            let len = rng.range(MAX_MESSAGE + 1, MAX_MESSAGE + 50_000);
            let payload = rng.bytes(len, TEXT);
            let parts = rng.range(1, 4);
            let pings = rng.chance(50);
            let bytes = fragments(rng, OP_BINARY, &payload, parts, pings);
            let _ = ws.try_send_raw(&bytes);
            ending(&mut ws, &[1009], Duration::from_secs(8))
        }
        Kind::InvalidUtf8 => {
            let path = if rng.chance(50) { "/echo" } else { "/ws" };
            let mut ws = connect(path, false)?;
            let len = rng.range(0, 5000);
            let mut payload = rng.bytes(len, TEXT);
            let at = rng.range(0, payload.len());
            let bad: &[u8] = match rng.range(0, 3) {
                0 => &[0xC3, 0x28],
                1 => &[0xFF],
                2 => &[0xED, 0xA0, 0x80], // a surrogate
                _ => &[0xF8, 0x88, 0x80, 0x80, 0x80],
            };
            payload.splice(at..at, bad.iter().copied());
            let parts = rng.range(1, 4);
            let pings = rng.chance(50);
            let mut bytes = fragments(rng, OP_TEXT, &payload, parts, pings);
            for _ in 0..rng.range(0, 5) {
                let len = rng.range(0, 30_000);
                bytes.extend(masked_frame(true, OP_BINARY, &rng.bytes(len, TEXT)));
            }
            let _ = ws.try_send_raw(&bytes);
            ending(&mut ws, &[1007], Duration::from_secs(8))
        }
        Kind::Violation => {
            let path = if rng.chance(50) { "/echo" } else { "/ws" };
            let mut ws = connect(path, false)?;
            let m = Some(next_mask());
            let mut bytes = match rng.range(0, 5) {
                0 => build_frame(true, 0, rng.range(3, 7) as u8, b"x", m),
                1 => build_frame(true, 0, OP_TEXT, b"{}", None),
                2 => build_frame(true, rng.range(1, 7) as u8, OP_TEXT, b"{}", m),
                3 => build_frame(true, 0, OP_CONT, b"stray", m),
                4 => build_frame(false, 0, OP_PING, b"frag", m),
                _ => build_frame(true, 0, OP_PING, &[b'p'; 126], m),
            };
            let garbage = rng.range(0, 100_000);
            bytes.extend(rng.bytes(garbage, &[0xFF, 0x00, 0x81, 0x7F, 0x42]));
            let _ = ws.try_send_raw(&bytes);
            ending(&mut ws, &[1002], Duration::from_secs(8))
        }
        Kind::SubChurn => {
            let mut ws = connect("/ws", false)?;
            for i in 0..rng.range(1, 10) {
                let op = if rng.chance(60) {
                    "subscribe"
                } else {
                    "unsubscribe"
                };
                let chans: Vec<String> = (0..rng.range(1, 3))
                    .map(|_| format!("ch{}", rng.range(0, CHANNELS - 1)))
                    .collect();
                let req = serde_json::json!({"op": op, "channels": chans, "id": i});
                let parts = rng.range(1, 3);
                let bytes = fragments(rng, OP_TEXT, req.to_string().as_bytes(), parts, true);
                ws.try_send_raw(&bytes).map_err(|e| format!("write: {e}"))?;
                // Deliveries may come first: skip to the reply.
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let f = ws
                        .next_message(deadline.saturating_duration_since(Instant::now()))
                        .map_err(|e| format!("no reply to {req}: {e}"))?;
                    let v: serde_json::Value = serde_json::from_slice(&f.payload)
                        .map_err(|e| format!("not JSON: {e}: {f}"))?;
                    if v["type"] == "reply" && v["id"] == i {
                        if v["ok"] != true {
                            return Err(format!("{req} refused: {v}"));
                        }
                        break;
                    }
                }
            }
            ws.send_close(1000, "");
            ending(&mut ws, &[1000], Duration::from_secs(5))
        }
        Kind::SlowSubscriber => {
            let mut ws = connect("/ws?channels=flood", true)?;
            std::thread::sleep(Duration::from_millis(rng.range(500, 3000) as u64));
            drain_then_close(&mut ws, &[1000, 1008])
        }
        Kind::Silent => {
            let mut ws = connect("/ws", false)?;
            // ws.idle_timeout is 4 s; ignore the server's ping.
            let deadline = Instant::now() + Duration::from_secs(12);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match ws.read_frame_timeout(left) {
                    Ok(f) if f.is_close() => {
                        if f.close_code() != Some(1001) {
                            return Err(format!("close {f}, want 1001"));
                        }
                        return match ws.wait_closed(Duration::from_secs(6)) {
                            PeerEnd::Eof | PeerEnd::Reset => Ok("close 1001".into()),
                            other => Err(format!("close 1001, then no TCP close: {other:?}")),
                        };
                    }
                    Ok(_) => {}
                    Err(WsReadError::Eof { .. }) | Err(WsReadError::Io(_)) => {
                        return Ok("tcp close".into())
                    }
                    Err(e) => return Err(format!("no idle close: {e}")),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// well-behaved subscribers
// ---------------------------------------------------------------------------------------------------------------

/// Reads deliveries on `channels` until it has `published[c]` of each (after `done`), checking order and
/// uniqueness via the sequence number in the data.
fn subscriber(
    addr: SocketAddr,
    channels: Vec<usize>,
    published: Arc<Vec<AtomicU64>>,
    done: Arc<AtomicBool>,
) -> Result<(), String> {
    let names: Vec<String> = channels.iter().map(|c| format!("ch{c}")).collect();
    let path = format!("/ws?channels={}", names.join(","));
    let mut ws = RawWs::connect_with(addr, &path, &[]).map_err(|e| format!("connect: {e}"))?;
    let mut next = [0u64; CHANNELS];
    let mut done_at: Option<Instant> = None;
    loop {
        if done.load(Ordering::Acquire) {
            let at = *done_at.get_or_insert_with(Instant::now);
            if channels
                .iter()
                .all(|&c| next[c] == published[c].load(Ordering::Acquire))
            {
                ws.send_close(1000, "");
                return Ok(());
            }
            if at.elapsed() > Duration::from_secs(15) {
                let want: Vec<u64> = channels
                    .iter()
                    .map(|&c| published[c].load(Ordering::Acquire))
                    .collect();
                let got: Vec<u64> = channels.iter().map(|&c| next[c]).collect();
                return Err(format!(
                    "{path}: missing deliveries: got {got:?} of {want:?}"
                ));
            }
        }
        match ws.next_message(Duration::from_millis(200)) {
            Ok(f) => {
                let v: serde_json::Value = serde_json::from_slice(&f.payload)
                    .map_err(|e| format!("{path}: not JSON ({e}): {f}"))?;
                let Some(ch) = v["channel"].as_str() else {
                    return Err(format!("{path}: unexpected message {v}"));
                };
                let c: usize = ch
                    .strip_prefix("ch")
                    .and_then(|n| n.parse().ok())
                    .filter(|c| channels.contains(c))
                    .ok_or_else(|| format!("{path}: delivery on a channel not subscribed: {ch}"))?;
                let seq = v["data"]["seq"].as_u64().unwrap_or(u64::MAX);
                if seq != next[c] {
                    return Err(format!(
                        "{path}: on {ch} expected seq {} got {seq} (duplicate, gap or reorder)",
                        next[c]
                    ));
                }
                next[c] += 1;
            }
            Err(WsReadError::Timeout { .. }) => {}
            Err(e) => {
                let got: Vec<u64> = channels.iter().map(|&c| next[c]).collect();
                return Err(format!("{path}: connection lost after {got:?}: {e}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// the test
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn reactor_survives_a_random_swarm_of_misbehaving_clients() {
    let seed = env_u64("WSGATE_TORTURE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            ^ ((std::process::id() as u64) << 32)
    });
    let secs = env_u64("WSGATE_TORTURE_SECS").unwrap_or(20);
    eprintln!("torture: WSGATE_TORTURE_SEED={seed} WSGATE_TORTURE_SECS={secs}");
    let tag = format!("[WSGATE_TORTURE_SEED={seed}]");

    let mut s = Server::start(&[
        "--threads",
        "2",
        "--echo-path",
        "/echo",
        "--set",
        &format!("ws.max_message_size={MAX_MESSAGE}"),
        "--set",
        &format!("ws.max_outbound_bytes={MAX_OUTBOUND}"),
        "--set",
        "ws.ping_interval=2",
        "--set",
        "ws.idle_timeout=4",
        "--set",
        "server.handshake_timeout=2",
    ]);

    // Warm-up: a few connections and publishes, then the idle baseline.
    {
        let mut api = Http::connect(s.api);
        let mut w: Vec<RawWs> = (0..20)
            .map(|_| RawWs::connect(s.ws, "/ws?channels=warm"))
            .collect();
        for i in 0..20 {
            publish(&mut api, "warm", &format!("{{\"i\":{i}}}"));
        }
        for c in &mut w {
            for _ in 0..20 {
                c.expect_text("warm-up delivery");
            }
            c.send_close(1000, "");
            let _ = c.expect_close("warm-up close");
        }
    }
    s.assert_idle(&format!("{tag} after warm-up"));
    let rss_base = s.rss_kb().unwrap_or(0);

    let published: Arc<Vec<AtomicU64>> =
        Arc::new((0..CHANNELS).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let mut rng = Rng::new(seed);

    // Well-behaved subscribers, two channels each.
    let subs: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            let a = i % CHANNELS;
            let b = (a + 1 + rng.range(0, CHANNELS - 2)) % CHANNELS;
            let (addr, published, done) = (s.ws, published.clone(), done.clone());
            std::thread::spawn(move || subscriber(addr, vec![a, b], published, done))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500)); // let them subscribe before the first publish

    let deadline = Instant::now() + Duration::from_secs(secs);
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();

    // The publisher: sequence-numbered messages to ch0..ch3, and a big one to "flood" now and then.
    let publisher = {
        let (api_addr, published) = (s.api, published.clone());
        let mut prng = Rng::new(seed ^ 0x5EED);
        std::thread::spawn(move || -> Result<u64, String> {
            let mut api = Http::connect(api_addr);
            let mut n = 0;
            while Instant::now() < deadline {
                let c = prng.range(0, CHANNELS - 1);
                let seq = published[c].load(Ordering::Relaxed);
                let pad = "p".repeat(prng.range(0, 2000));
                let body = format!(r#"{{"channel":"ch{c}","data":{{"seq":{seq},"pad":"{pad}"}}}}"#);
                let r = api.post_json("/api/publish", &body);
                if r.status != 200 {
                    return Err(format!("publish to ch{c}: {r}"));
                }
                published[c].store(seq + 1, Ordering::Release);
                n += 1;
                if n % 10 == 0 {
                    let big = format!(r#"{{"channel":"flood","data":"{}"}}"#, "f".repeat(32_000));
                    let r = api.post_json("/api/publish", &big);
                    if r.status != 200 {
                        return Err(format!("publish to flood: {r}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(n)
        })
    };

    // The swarm.
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let addr = s.ws;
            let outcomes = outcomes.clone();
            let mut wrng = Rng::new(seed.wrapping_add(w as u64 + 1));
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    let kind = pick_kind(&mut wrng);
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_client(kind, &mut wrng, addr)
                    }))
                    .unwrap_or_else(|_| Err("client panicked".into()));
                    outcomes.lock().unwrap().push((kind, r));
                }
            })
        })
        .collect();

    for w in workers {
        w.join().expect("worker thread");
    }
    let publish_result = publisher.join().expect("publisher thread");
    done.store(true, Ordering::Release);
    let sub_errors: Vec<String> = subs
        .into_iter()
        .enumerate()
        .filter_map(|(i, h)| match h.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("subscriber {i}: {e}")),
            Err(_) => Some(format!("subscriber {i}: panicked")),
        })
        .collect();

    // The table of outcomes per kind.
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let mut table: BTreeMap<Kind, Tally> = BTreeMap::new();
    for (kind, r) in &outcomes {
        let e = table.entry(*kind).or_default();
        e.0 += 1;
        match r {
            Ok(how) => *e.1.entry(how.clone()).or_default() += 1,
            Err(why) => e.2.push(why.clone()),
        }
    }
    let mut report = format!(
        "{tag} {} clients in {secs} s; published {:?}\n",
        outcomes.len(),
        published
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    );
    for (kind, (n, oks, bad)) in &table {
        report.push_str(&format!(
            "  {:<16} runs {n:>4}  ok {oks:?}  failed {}\n",
            format!("{kind:?}"),
            bad.len()
        ));
        for b in bad.iter().take(3) {
            report.push_str(&format!("      {b}\n"));
        }
    }
    eprintln!("{report}");

    // 1. the process is up and serving.
    if let Some(status) = s.wait_exit(Duration::from_millis(100)) {
        panic!(
            "{tag} wsgate exited with {status}\n{report}\n{}",
            s.describe()
        );
    }
    assert_eq!(http_get(s.api, "/healthz").status, 200, "{tag} /healthz");
    // 2. deliveries.
    let publishes = publish_result.unwrap_or_else(|e| panic!("{tag} publisher: {e}\n{report}"));
    assert!(publishes > 0, "{tag} nothing was published");
    assert!(
        sub_errors.is_empty(),
        "{tag} well-behaved subscribers: {sub_errors:#?}\n{report}\n{}",
        s.describe()
    );
    // 3. every misbehaving client saw its documented close code or a TCP close.
    let failed: usize = table.values().map(|t| t.2.len()).sum();
    assert!(
        failed == 0,
        "{tag} {failed} misbehaving clients saw neither the documented close code nor a TCP close:\n{report}\n{}",
        s.describe()
    );
    // 4. back to idle: no connection, no lent buffer, RSS bounded; and new clients on every reactor get
    //    deliveries (a dead reactor would strand some of them).
    s.assert_idle(&format!("{tag} after the swarm"));
    let rss = s.rss_kb().unwrap_or(0);
    assert!(
        rss <= rss_base + RSS_SLACK_KB,
        "{tag} RSS {} KiB after the swarm, idle baseline {rss_base} KiB (slack {RSS_SLACK_KB} KiB)",
        rss
    );
    let mut api = Http::connect(s.api);
    let mut fresh: Vec<RawWs> = (0..8)
        .map(|i| {
            RawWs::connect_with(s.ws, "/ws?channels=after", &[]).unwrap_or_else(|e| {
                panic!("{tag} new client {i} cannot connect: {e}\n{}", s.describe())
            })
        })
        .collect();
    publish(&mut api, "after", r#"{"ok":1}"#);
    for (i, c) in fresh.iter_mut().enumerate() {
        let t = c.expect_text(&format!("{tag} new client {i} after the swarm"));
        assert_eq!(t, r#"{"channel":"after","data":{"ok":1}}"#, "{tag}");
    }
}
