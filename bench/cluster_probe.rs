//! Cluster probe: cross-node fan-out throughput and added latency, and Redis commands per publish.
//!
//! Starts its own redis-server (free loopback port, no persistence) and wsgate processes (the binary given with
//! `--wsgate`), connects `--subs` raw WebSocket subscribers per node to one channel, publishes `--messages`
//! messages on node 0 through the HTTP API (pipelined; `--rate 0` = as fast as the API takes them), and reports
//! deliveries/s, latency for subscribers on the publishing node vs the other nodes, loss/duplicates/order, and the
//! Redis `INFO commandstats` deltas. `--nodes 1 --standalone` gives the single-node baseline. `--user` publishes
//! user pushes (`{"user":"probe",...}`) instead, to subscribers that all connect as user `probe` (JWT), so every
//! push goes through the notify stream and reaches every subscriber on every node.
//!
//! Channel history and merge windows: `--config FILE` (with `[[channels.namespace]]` rules) and `--channel NAME`
//! pick what the publications go through; batch frames count each publication in them, and the frames received are
//! reported. `--recovery` measures reconnecting with `recover` instead: the subscribers connect and leave, the
//! messages are published, then every subscriber reconnects with `recover=CHANNEL:0:` and gets them all replayed
//! (time until the last one has all, and the node's CPU time), next to the same reconnect without `recover`.
//!
//! Until `wsgate-bench` has a cluster mode: `cargo run --release --example cluster_probe -- --help`.
//! Every process it starts is killed by its own PID at the end.

use hdrhistogram::Histogram;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Parser)]
struct Args {
    /// wsgate binary (a release build).
    #[arg(long, default_value = "target/release/wsgate")]
    wsgate: String,
    /// Gateway processes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Subscribers per node.
    #[arg(long, default_value_t = 100)]
    subs: usize,
    /// Messages published on node 0.
    #[arg(long, default_value_t = 20000)]
    messages: u64,
    /// Messages per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Reactor threads per node.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Run without Redis (single-node baseline; needs --nodes 1).
    #[arg(long)]
    standalone: bool,
    /// cluster.outbox_limit of every node (default: the gateway's default).
    #[arg(long)]
    outbox: Option<usize>,
    /// Push to user `probe` (JWT auth on every node) instead of publishing to a channel.
    #[arg(long)]
    user: bool,
    /// Channel to publish to and subscribe to.
    #[arg(long, default_value = "probe")]
    channel: String,
    /// Config file for every node (e.g. `[[channels.namespace]]` rules for history and merge windows).
    #[arg(long)]
    config: Option<String>,
    /// Measure recovery: subscribers leave, `--messages` are published, all reconnect with `recover` (standalone).
    #[arg(long)]
    recovery: bool,
}

const SECRET: &str = "cluster-probe-secret-0123456789";

fn probe_token() -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "probe", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// PIDs of the processes this probe started: the release profile aborts on panic (no Drop), so a panic hook kills
/// them (each by its own PID).
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

struct Proc(Child);
impl Proc {
    fn new(child: Child) -> Proc {
        CHILDREN.lock().unwrap().push(child.id());
        Proc(child)
    }
}
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill(); // SIGKILL to this child's own PID
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_redis() -> (Proc, u16) {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("wsgate-probe-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let p = Proc::new(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if redis_conn(port).is_some() {
            return (p, port);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server not ready");
}

fn redis_conn(port: u16) -> Option<redis::Connection> {
    let c = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut conn = c.get_connection_with_timeout(Duration::from_secs(1)).ok()?;
    redis::cmd("PING").query::<String>(&mut conn).ok()?;
    Some(conn)
}

fn start_wsgate(a: &Args, redis_port: Option<u16>) -> (Proc, SocketAddr, SocketAddr) {
    let mut cmd = Command::new(&a.wsgate);
    cmd.args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .args(["--threads", &a.threads.to_string()])
        .args(["--set", "log.level=\"warn\""]);
    if let Some(path) = &a.config {
        cmd.args(["--config", path]);
    }
    if a.user {
        cmd.args(["--set", "auth.mode=\"jwt\""])
            .args(["--set", &format!("auth.hs256_secret=\"{SECRET}\"")]);
    }
    if let Some(p) = redis_port {
        cmd.args(["--set", &format!("cluster.redis=redis://127.0.0.1:{p}/")]);
        if let Some(n) = a.outbox {
            cmd.args(["--set", &format!("cluster.outbox_limit={n}")]);
        }
    }
    let mut proc = Proc::new(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", a.wsgate)),
    );
    let mut err = BufReader::new(proc.0.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("wsgate exited before ready");
        }
        if let Some(rest) = line.trim().strip_prefix("wsgate ready ") {
            let mut ws = None;
            let mut api = None;
            for t in rest.split_whitespace() {
                if let Some(v) = t.strip_prefix("ws=") {
                    ws = v.parse().ok();
                } else if let Some(v) = t.strip_prefix("api=") {
                    api = v.parse().ok();
                }
            }
            // Keep draining stderr so the gateway never blocks on it.
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = err.read_to_end(&mut sink);
            });
            return (proc, ws.unwrap(), api.unwrap());
        }
    }
}

/// Reads one server frame (unmasked); returns (opcode, payload).
fn read_frame(r: &mut BufReader<TcpStream>, buf: &mut Vec<u8>) -> std::io::Result<u8> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h)?;
    let mut len = (h[1] & 0x7f) as u64;
    if len == 126 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b)?;
        len = u16::from_be_bytes(b) as u64;
    } else if len == 127 {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        len = u64::from_be_bytes(b);
    }
    buf.resize(len as usize, 0);
    r.read_exact(buf)?;
    Ok(h[0] & 0x0f)
}

fn number_after(s: &[u8], key: &[u8]) -> Option<u64> {
    let p = s.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = s[p..].iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&s[p..p + digits]).ok()?.parse().ok()
}

#[derive(Default)]
struct Tally {
    received: AtomicU64,
    /// Messages missing before the one received (dropped somewhere).
    gaps: AtomicU64,
    /// Messages at or below one already received (duplicates or reordering).
    out_of_order: AtomicU64,
    last_us: AtomicU64,
    /// Text frames carrying publications (a batch frame carries several).
    frames: AtomicU64,
}

/// The (i, t) of every publication in a frame: one, or several in a merge window's batch.
fn publications(buf: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let rest = &buf[at..];
        let p = rest.windows(4).position(|w| w == b"\"i\":")?;
        let i = number_after(&rest[p..], b"\"i\":")?;
        let t = number_after(&rest[p..], b"\"t\":")?;
        at += p + 4;
        Some((i, t))
    })
}

/// What a subscriber connects to.
enum Join<'a> {
    /// As user `probe` (no replay: the probe measures live delivery).
    User(&'a str),
    /// Anonymous on a channel, optionally recovering it from offset 0 of this epoch.
    Channel {
        name: &'a str,
        recover: Option<&'a str>,
    },
}

fn subscriber(
    addr: SocketAddr,
    n: u64,
    epoch: Instant,
    tally: Arc<Tally>,
    hist: Arc<Mutex<Histogram<u64>>>,
    join: Join<'_>,
) -> std::thread::JoinHandle<()> {
    let mut s = TcpStream::connect(addr).expect("connect");
    let target = match join {
        Join::User(t) => format!("/ws?since=$&token={t}"),
        Join::Channel {
            name,
            recover: None,
        } => format!("/ws?channels={name}"),
        Join::Channel {
            name,
            recover: Some(epoch),
        } => format!("/ws?channels={name}&recover={name}:0:{epoch}"),
    };
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    std::thread::spawn(move || {
        let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut buf = Vec::new();
        let mut next = 0u64;
        let mut got = 0u64;
        // Missing messages end the wait 3 s after the last one that came.
        let _ = r.get_ref().set_read_timeout(Some(Duration::from_secs(3)));
        while got < n {
            let Ok(op) = read_frame(&mut r, &mut buf) else {
                break;
            };
            if op != 1 {
                continue;
            }
            let now = epoch.elapsed().as_micros() as u64;
            let before = got;
            for (i, t) in publications(&buf) {
                if i < next {
                    tally.out_of_order.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.gaps.fetch_add(i - next, Ordering::Relaxed);
                    next = i + 1;
                }
                got += 1;
                let _ = local.record(now.saturating_sub(t).max(1));
            }
            if got > before {
                tally.frames.fetch_add(1, Ordering::Relaxed);
                tally.last_us.fetch_max(now, Ordering::Relaxed);
            }
        }
        tally.received.fetch_add(got, Ordering::Relaxed);
        hist.lock().unwrap().add(&local).unwrap();
    })
}

fn publisher(api: SocketAddr, n: u64, rate: u64, epoch: Instant, user: bool, channel: &str) {
    let s = TcpStream::connect(api).unwrap();
    s.set_nodelay(true).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let acks = std::thread::spawn(move || {
        // Count 200 responses.
        let mut ok = 0u64;
        let mut line = String::new();
        while ok < n {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            // A body has no trailing newline: the next status line follows it on the same line.
            ok += line.matches("HTTP/1.1 200").count() as u64;
        }
        ok
    });
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, s);
    let start = Instant::now();
    for i in 0..n {
        if let Some(step) = (i * 1_000_000).checked_div(rate) {
            let due = start + Duration::from_micros(step);
            let now = Instant::now();
            if due > now {
                w.flush().unwrap();
                std::thread::sleep(due - now);
            }
        }
        let t = epoch.elapsed().as_micros();
        let target = if user {
            r#""user":"probe""#.to_string()
        } else {
            format!(r#""channel":{}"#, serde_json::to_string(channel).unwrap())
        };
        let body = format!(r#"{{{target},"data":{{"i":{i},"t":{t},"pad":"0123456789abcdef"}}}}"#);
        write!(
            w,
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        if rate == 0 && i % 64 == 63 {
            w.flush().unwrap();
        }
    }
    w.flush().unwrap();
    let ok = acks.join().unwrap();
    assert_eq!(ok, n, "publishes acknowledged");
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn commandstats(conn: &mut redis::Connection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = number_after(rest.as_bytes(), b"calls=")?;
            Some((name.to_string(), calls))
        })
        .collect()
}

fn main() {
    let a: Args = clap::Parser::parse();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(pids) = CHILDREN.try_lock() {
            for &pid in pids.iter() {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        default_hook(info);
    }));
    assert!(
        !a.standalone || a.nodes == 1,
        "--standalone needs --nodes 1"
    );
    if a.recovery {
        assert!(
            a.standalone && a.nodes == 1 && !a.user,
            "--recovery needs --standalone --nodes 1, no --user"
        );
        return recovery(&a);
    }
    let redis = (!a.standalone).then(start_redis);
    let redis_port = redis.as_ref().map(|(_, p)| *p);
    let nodes: Vec<_> = (0..a.nodes).map(|_| start_wsgate(&a, redis_port)).collect();
    let epoch = Instant::now();
    let token = a.user.then(probe_token);
    let mut threads = Vec::new();
    let mut groups = Vec::new();
    for (k, (_, ws, _)) in nodes.iter().enumerate() {
        let tally = Arc::new(Tally::default());
        let hist = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
        ));
        for _ in 0..a.subs {
            threads.push(subscriber(
                *ws,
                a.messages,
                epoch,
                tally.clone(),
                hist.clone(),
                match &token {
                    Some(t) => Join::User(t),
                    None => Join::Channel {
                        name: &a.channel,
                        recover: None,
                    },
                },
            ));
        }
        groups.push((k, tally, hist));
    }
    std::thread::sleep(Duration::from_millis(300)); // subscriptions settle
    let mut rconn = redis_port.and_then(redis_conn);
    let before = rconn.as_mut().map(commandstats).unwrap_or_default();
    let t0 = epoch.elapsed().as_micros() as u64;
    let cpu_before = cpu_ms(nodes[0].0 .0.id());
    publisher(nodes[0].2, a.messages, a.rate, epoch, a.user, &a.channel);
    let accepted = epoch.elapsed().as_micros() as u64;
    // When the publishing node's outbox is empty, every event it accepted is in the stream (or was dropped).
    let api0 = nodes[0].2;
    let drain = redis_port.map(|_| {
        std::thread::spawn(move || loop {
            let m = http_get(api0, "/metrics");
            let v = |name: &str| {
                m.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if v("wsgate_cluster_outbox_events") == 0 {
                break (
                    epoch.elapsed().as_micros() as u64,
                    v("wsgate_cluster_events_out_total"),
                    v("wsgate_cluster_events_dropped_total"),
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        })
    });
    for t in threads {
        let _ = t.join();
    }
    let drained = drain.map(|t| t.join().unwrap());
    let after = rconn.as_mut().map(commandstats).unwrap_or_default();

    println!(
        "nodes={} subs/node={} messages={} rate={} threads/node={} mode={}",
        a.nodes,
        a.subs,
        a.messages,
        if a.rate == 0 {
            "max".into()
        } else {
            a.rate.to_string()
        },
        a.threads,
        match (a.standalone, a.user) {
            (true, false) => "standalone",
            (true, true) => "standalone, user pushes",
            (false, false) => "cluster",
            (false, true) => "cluster, user pushes",
        }
    );
    let mut all_last = 0;
    let mut total = 0;
    for (k, tally, hist) in &groups {
        let h = hist.lock().unwrap();
        let got = tally.received.load(Ordering::Relaxed);
        let last = tally.last_us.load(Ordering::Relaxed);
        all_last = all_last.max(last);
        total += got;
        let secs = (last.saturating_sub(t0)) as f64 / 1e6;
        println!(
            "node {k} ({}): received {got}/{} (missing {}, out of order {}), {:.0} deliveries/s, latency µs p50 {} \
             p99 {} max {}",
            if *k == 0 { "publisher's node" } else { "remote" },
            a.messages * a.subs as u64,
            tally.gaps.load(Ordering::Relaxed),
            tally.out_of_order.load(Ordering::Relaxed),
            got as f64 / secs.max(1e-9),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
    let secs = (all_last.saturating_sub(t0)) as f64 / 1e6;
    let frames: u64 = groups
        .iter()
        .map(|(_, t, _)| t.frames.load(Ordering::Relaxed))
        .sum();
    println!(
        "frames received {frames} ({:.2} publications per frame); node 0 CPU {} ms",
        total as f64 / frames.max(1) as f64,
        cpu_ms(nodes[0].0 .0.id()).saturating_sub(cpu_before)
    );
    println!(
        "api accepted {} publishes in {:.3} s",
        a.messages,
        (accepted - t0) as f64 / 1e6
    );
    if let Some((t, out, dropped)) = drained {
        println!(
            "bus: {out} events written, {dropped} dropped (outbox full); outbox empty after {:.3} s = {:.0} XADD/s",
            (t - t0) as f64 / 1e6,
            out as f64 / ((t - t0) as f64 / 1e6)
        );
    }
    if total > 0 {
        println!(
            "all: {total} deliveries in {secs:.3} s = {:.0} deliveries/s; {:.0} publishes/s",
            total as f64 / secs.max(1e-9),
            a.messages as f64 / secs.max(1e-9)
        );
    }
    if redis_port.is_some() {
        let mut line = String::from("redis commands during the run:");
        let mut sum = 0;
        for (name, calls) in &after {
            let was = before
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, c)| *c)
                .unwrap_or(0);
            let d = calls - was;
            if d > 0 && name != "info" {
                sum += d;
                line.push_str(&format!(" {name}={d}"));
            }
        }
        println!("{line}");
        println!(
            "redis commands per publish: {:.3}; per delivery: {:.5}",
            sum as f64 / a.messages as f64,
            sum as f64 / total.max(1) as f64
        );
    }
    drop(nodes);
    drop(redis);
}

/// User + system CPU time of process `pid` so far, in milliseconds (from /proc; 0 if unreadable).
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    ticks * 10
}

/// `--recovery`: `--subs` subscribers join `--channel` and leave, `--messages` are published, then all reconnect
/// twice: without `recover` (the cost of reconnecting alone), then with `recover=CHANNEL:0:` (every message
/// replayed to each). Time until the last one has everything, and the node's CPU time, for both.
fn recovery(a: &Args) {
    let (node, ws, api) = start_wsgate(a, None);
    let pid = node.0.id();
    let epoch = Instant::now();
    let hist = || {
        Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
        ))
    };
    let wave = |recover: Option<&str>, n: u64| {
        let tally = Arc::new(Tally::default());
        let (h, cpu, t0) = (hist(), cpu_ms(pid), Instant::now());
        let threads: Vec<_> = (0..a.subs)
            .map(|_| {
                subscriber(
                    ws,
                    n,
                    epoch,
                    tally.clone(),
                    h.clone(),
                    Join::Channel {
                        name: &a.channel,
                        recover,
                    },
                )
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        (
            t0.elapsed(),
            cpu_ms(pid).saturating_sub(cpu),
            tally.received.load(Ordering::Relaxed),
            tally.gaps.load(Ordering::Relaxed),
        )
    };
    wave(None, 0); // join and leave: the channel exists, nobody listens
    let position = http_get(api, &format!("/api/history?channel={}&limit=1", a.channel));
    let channel_epoch = position
        .split("\"epoch\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the channel's epoch (is --channel in a namespace with history?)")
        .to_string();
    publisher(api, a.messages, a.rate, epoch, false, &a.channel);
    let (t_plain, cpu_plain, _, _) = wave(None, 0);
    let (t_rec, cpu_rec, got, gaps) = wave(Some(&channel_epoch), a.messages);
    println!(
        "recovery: {} clients x {} missed messages on {:?}: received {got}/{} (missing {gaps})",
        a.subs,
        a.messages,
        a.channel,
        a.subs as u64 * a.messages
    );
    println!(
        "reconnect without recover: {:.3} s, node CPU {cpu_plain} ms; with recover: {:.3} s, node CPU {cpu_rec} ms",
        t_plain.as_secs_f64(),
        t_rec.as_secs_f64()
    );
}
