//! Client → backend events in cluster mode: connects, disconnects and `{"op":"msg"}` messages are appended to the
//! upstream stream (`cluster.upstream_stream`), so backend services consume them with consumer groups
//! (`XREADGROUP`) without touching sockets.
//!
//! The reactors call [`ClusterSink::deliver`], which only queues (bounded by `cluster.outbox_limit` events and
//! `cluster.outbox_max_bytes`, accounted like the bus outbox); a message that does not fit is refused (the client
//! gets code 4013), a connect or disconnect that does not fit is counted as dropped. The `cluster-upstream` thread
//! appends the queue in pipelined batches with `XADD ... MAXLEN ~ cluster.upstream_maxlen`.
//!
//! Entry fields (all strings): `X-ID` (socket id), `X-Uid` (user, "" when anonymous), `X-Guid` (the channel a
//! message is about, ""), `X-Event` (`connect` / `message` / `disconnect`), `X-Trace-ID` (the client's `trace`, or
//! `{origin}-u{n}`), `X-Client-Version` (`?v=` / `X-Client-Version` at the upgrade, ""), `X-Device`, `X-Tenant`,
//! `X-Node` (node id), `ts` (ms since the Unix epoch when the gateway took the event), `data` (the message's JSON;
//! `null` for connect and disconnect).

use super::conn::{self, Backoff, RedisConn, Reply, IO_TIMEOUT};
use super::event::now_ms;
use super::stats::Link;
use super::{BridgeStats, Shared};
use crate::upstream::{Event, Refused, Sink};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BATCH_MAX: usize = 256;
const BATCH_BYTES: usize = 1 << 20;
const IDLE_PING: Duration = Duration::from_secs(1);
const FLUSH_ON_STOP: Duration = Duration::from_secs(2);
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// One upstream event, owned (it leaves the reactor thread).
#[derive(Debug)]
pub struct UpstreamEvent {
    pub event: &'static str,
    pub sid: u64,
    pub user: String,
    pub guid: String,
    pub trace: String,
    pub client_version: String,
    pub device: String,
    pub tenant: String,
    pub ts_ms: u64,
    pub data: String,
}

impl UpstreamEvent {
    fn of(event: &Event<'_>) -> UpstreamEvent {
        let (name, origin, data, guid, trace) = match *event {
            Event::Connect(o) => ("connect", o, "null", None, None),
            Event::Disconnect(o) => ("disconnect", o, "null", None, None),
            Event::Message {
                origin,
                data,
                channel,
                trace,
            } => ("message", origin, data, channel, trace),
        };
        let s = |v: Option<&str>| v.unwrap_or("").to_string();
        UpstreamEvent {
            event: name,
            sid: origin.sid,
            user: s(origin.user),
            guid: s(guid),
            trace: s(trace),
            client_version: s(origin.client_version),
            device: s(origin.device),
            tenant: s(origin.tenant),
            ts_ms: now_ms(),
            data: data.to_string(),
        }
    }

    /// Bytes held in the queue, for the byte bound. The trace id (at most 128 bytes, or made by the thread) is in
    /// the fixed overhead, so the cost does not change when the thread fills it in.
    fn cost(&self) -> usize {
        self.user.len()
            + self.guid.len()
            + self.client_version.len()
            + self.device.len()
            + self.tenant.len()
            + self.data.len()
            + 256
    }
}

/// The upstream sink of cluster mode (called on reactor threads; never blocks).
pub struct ClusterSink {
    tx: Sender<UpstreamEvent>,
    stats: Arc<BridgeStats>,
    limit: usize,
    max_bytes: usize,
}

impl ClusterSink {
    pub(crate) fn new(
        stats: Arc<BridgeStats>,
        limit: usize,
        max_bytes: usize,
    ) -> (ClusterSink, Receiver<UpstreamEvent>) {
        // Unbounded as a channel, bounded by the accounting in `deliver` (memory follows what is queued).
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            ClusterSink {
                tx,
                stats,
                limit,
                max_bytes,
            },
            rx,
        )
    }
}

impl Sink for ClusterSink {
    fn deliver(&self, event: &Event<'_>) -> Result<(), Refused> {
        let ev = UpstreamEvent::of(event);
        let cost = ev.cost();
        let s = &self.stats;
        let n = s.upstream_queue_events.fetch_add(1, Ordering::Relaxed) + 1;
        let b = s.upstream_queue_bytes.fetch_add(cost, Ordering::Relaxed) + cost;
        if n <= self.limit && b <= self.max_bytes && self.tx.try_send(ev).is_ok() {
            return Ok(());
        }
        s.upstream_queue_events.fetch_sub(1, Ordering::Relaxed);
        s.upstream_queue_bytes.fetch_sub(cost, Ordering::Relaxed);
        s.upstream_dropped_total.fetch_add(1, Ordering::Relaxed);
        Err(Refused(
            "upstream queue full (Redis slow or unavailable); retry later",
        ))
    }
}

struct Appender {
    shared: Arc<Shared>,
    rx: Receiver<UpstreamEvent>,
    pending: VecDeque<UpstreamEvent>,
    conn: Option<RedisConn>,
    backoff: Backoff,
    last_io: Instant,
    next_trace: u64,
    last_error_log: Option<Instant>,
    maxlen: String,
}

pub(crate) fn run(shared: Arc<Shared>, rx: Receiver<UpstreamEvent>) {
    let maxlen = shared.cfg.upstream_maxlen.to_string();
    let mut a = Appender {
        shared,
        rx,
        pending: VecDeque::new(),
        conn: None,
        backoff: Backoff::default(),
        last_io: Instant::now(),
        next_trace: 1,
        last_error_log: None,
        maxlen,
    };
    while !a.shared.stop.load(Ordering::Relaxed) {
        a.step();
    }
    a.finish();
}

impl Appender {
    fn step(&mut self) {
        let wait = if self.conn.is_none() {
            self.backoff.remaining()
        } else if self.pending.is_empty() {
            IDLE_PING.saturating_sub(self.last_io.elapsed())
        } else {
            Duration::ZERO
        };
        self.take_new(wait.min(Duration::from_millis(200)));
        if self.conn.is_none() {
            if !self.backoff.remaining().is_zero() {
                return;
            }
            match self.shared.connector.connect(IO_TIMEOUT) {
                Ok(c) => {
                    self.conn = Some(c);
                    self.backoff.reset();
                    self.last_io = Instant::now();
                    self.shared
                        .stats
                        .set_link(Link::Upstream, true, &"connected");
                }
                Err(e) => {
                    self.shared.stats.set_link(Link::Upstream, false, &e);
                    self.backoff.failed();
                    return;
                }
            }
        }
        if !self.pending.is_empty() {
            self.write_batch();
        } else if self.last_io.elapsed() >= IDLE_PING {
            let Some(c) = self.conn.as_mut() else { return };
            self.last_io = Instant::now();
            if let Err(e) = redis::cmd("PING").query::<redis::Value>(c.like()) {
                self.lost(&e);
            }
        }
    }

    fn take_new(&mut self, wait: Duration) {
        if !wait.is_zero() {
            if self.pending.is_empty() {
                match self.rx.recv_timeout(wait) {
                    Ok(ev) => self.push(ev),
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                conn::sleep_unless(&self.shared.stop, wait);
            }
        }
        while let Ok(ev) = self.rx.try_recv() {
            self.push(ev);
        }
    }

    fn push(&mut self, mut ev: UpstreamEvent) {
        if ev.trace.is_empty() {
            ev.trace = format!("{}-u{}", self.shared.origin, self.next_trace);
            self.next_trace += 1;
        }
        self.pending.push_back(ev);
    }

    fn lost(&mut self, why: &dyn std::fmt::Display) {
        self.conn = None;
        self.shared.stats.set_link(Link::Upstream, false, why);
        self.backoff.failed();
    }

    fn write_batch(&mut self) {
        let s = &self.shared;
        let mut cmds = Vec::new();
        let mut bytes = 0;
        for ev in self.pending.iter().take(BATCH_MAX) {
            if !cmds.is_empty() && bytes + ev.cost() > BATCH_BYTES {
                break;
            }
            bytes += ev.cost();
            let mut c = redis::cmd("XADD");
            c.arg(&s.cfg.upstream_stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(&self.maxlen)
                .arg("*")
                .arg("X-ID")
                .arg(ev.sid.to_string())
                .arg("X-Uid")
                .arg(&ev.user)
                .arg("X-Guid")
                .arg(&ev.guid)
                .arg("X-Event")
                .arg(ev.event)
                .arg("X-Trace-ID")
                .arg(&ev.trace)
                .arg("X-Client-Version")
                .arg(&ev.client_version)
                .arg("X-Device")
                .arg(&ev.device)
                .arg("X-Tenant")
                .arg(&ev.tenant)
                .arg("X-Node")
                .arg(s.node_id)
                .arg("ts")
                .arg(ev.ts_ms)
                .arg("data")
                .arg(&ev.data);
            cmds.push(c);
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        self.last_io = Instant::now();
        // One key: one round trip, also on Redis Cluster. On a connection failure all are kept and retried, so
        // a backend may see an event twice (same X-Trace-ID) but never miss one the gateway accepted.
        let replies = match conn.exec_one_key(&cmds) {
            Ok(r) => r,
            Err(e) => return self.lost(&e),
        };
        let mut done = 0;
        for r in &replies {
            if let Reply::Refused { code, details } = r {
                if conn::transient_code(code) {
                    let msg = format!("{code} {details}");
                    if conn::reconnect_code(code) {
                        self.lost(&msg);
                    } else {
                        self.log_error(&format!(
                            "cluster: Redis busy ({msg}); retrying upstream events"
                        ));
                        conn::sleep_unless(&self.shared.stop, Duration::from_millis(100));
                    }
                    break;
                }
                let stats = &self.shared.stats;
                stats.upstream_dropped_total.fetch_add(1, Ordering::Relaxed);
                stats.redis_errors_total.fetch_add(1, Ordering::Relaxed);
                let msg = format!(
                    "cluster: Redis refused an upstream event on stream {:?} ({code} {details}); dropped",
                    self.shared.cfg.upstream_stream
                );
                self.log_error(&msg);
            } else {
                self.shared
                    .stats
                    .upstream_events_total
                    .fetch_add(1, Ordering::Relaxed);
            }
            done += 1;
        }
        self.settle(done);
    }

    fn settle(&mut self, n: usize) {
        let mut bytes = 0;
        for ev in self.pending.drain(..n) {
            bytes += ev.cost();
        }
        let stats = &self.shared.stats;
        stats.upstream_queue_events.fetch_sub(n, Ordering::Relaxed);
        stats
            .upstream_queue_bytes
            .fetch_sub(bytes, Ordering::Relaxed);
    }

    fn log_error(&mut self, msg: &str) {
        if self
            .last_error_log
            .is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY)
        {
            self.last_error_log = Some(Instant::now());
            log::error!("{}", super::one_line(&msg));
        }
    }

    fn finish(&mut self) {
        self.take_new(Duration::ZERO);
        let deadline = Instant::now() + FLUSH_ON_STOP;
        while !self.pending.is_empty() && self.conn.is_some() && Instant::now() < deadline {
            let before = self.pending.len();
            self.write_batch();
            if self.pending.len() == before {
                break;
            }
        }
        let left = self.pending.len();
        if left > 0 {
            self.shared
                .stats
                .upstream_dropped_total
                .fetch_add(left as u64, Ordering::Relaxed);
            self.settle(left);
            log::warn!("cluster: {left} upstream events not written to Redis at shutdown");
        }
    }
}
