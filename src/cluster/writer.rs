//! The writer thread: drains the outbox channel and appends events to the bus stream in pipelined batches
//! (`XADD stream MAXLEN ~ N * field value ...`, one round trip per batch). While Redis is unreachable it keeps the
//! events it has (the outbox bound is enforced by [`super::ClusterHandle::send`]) and reconnects with backoff.
//!
//! User pushes take one more step first: they are appended to the user's notify stream (`stream:notify:{uid}`,
//! trimmed by length and age) — once, by the node that accepted them — and the id Redis gives them travels with
//! the bus event (`nid`) and in every frame, so clients can ack it and a reconnect can replay what they missed.
//! This node's own connections get them from here, right after the notify append; when Redis has been down for
//! more than [`LOCAL_WITHOUT_ID_AFTER`] they get them at once without an id (and they are stored when Redis is
//! back).

use super::conn::{self, Backoff, RedisConn, Reply, IO_TIMEOUT};
use super::event::{self, EventKind, OutEvent, StreamId};
use super::keys;
use super::stats::Link;
use super::{Deliver, Shared};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events per pipelined batch.
const BATCH_MAX: usize = 256;
/// Payload bytes per batch (a batch always takes at least one event).
const BATCH_BYTES: usize = 1 << 20;
/// An idle writer pings Redis this often, so an outage shows in the gauge and log even without traffic.
const IDLE_PING: Duration = Duration::from_secs(1);
/// How long shutdown may spend flushing the outbox.
const FLUSH_ON_STOP: Duration = Duration::from_secs(2);
/// Permanent per-event errors (e.g. the bus key holds a non-stream value) are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// After Redis has been unreachable this long, user pushes go to local connections without waiting for their id.
pub const LOCAL_WITHOUT_ID_AFTER: Duration = Duration::from_secs(1);
/// A user's notify stream is trimmed by age (`XTRIM MINID`) and its expiry renewed at most this often per node:
/// two commands fewer for most pushes. (Length is trimmed by every append.)
const AGE_TRIM_EVERY: Duration = Duration::from_secs(60);
/// Users whose last age trim this node remembers; beyond, the memory is cleared (and they are trimmed again).
const AGE_TRIM_USERS: usize = 100_000;

/// An event with the number the writer gave it.
struct Numbered {
    ev: OutEvent,
    seq: u64,
    /// `{origin}-{seq}` unless the event brought one.
    trace: String,
    /// User pushes: appended to the notify stream (or refused: then `nid` stays None) ...
    stored: bool,
    nid: Option<StreamId>,
    /// ... and handed to this node's connections.
    delivered: bool,
}

struct Writer {
    shared: Arc<Shared>,
    deliver: Arc<dyn Deliver>,
    rx: Receiver<OutEvent>,
    pending: VecDeque<Numbered>,
    conn: Option<RedisConn>,
    backoff: Backoff,
    next_seq: u64,
    last_io: Instant,
    last_error_log: Option<Instant>,
    maxlen: String,
    /// When the connection was lost (None while connected).
    down_since: Option<Instant>,
    /// User pushes not yet handed to local connections.
    undelivered: usize,
    /// When this node last trimmed each user's notify stream by age.
    age_trimmed: HashMap<String, Instant>,
}

pub(crate) fn run(shared: Arc<Shared>, deliver: Arc<dyn Deliver>, rx: Receiver<OutEvent>) {
    let maxlen = shared.cfg.stream_maxlen.to_string();
    let mut w = Writer {
        shared,
        deliver,
        rx,
        pending: VecDeque::new(),
        conn: None,
        backoff: Backoff::default(),
        next_seq: 1,
        last_io: Instant::now(),
        last_error_log: None,
        maxlen,
        down_since: Some(Instant::now()),
        undelivered: 0,
        age_trimmed: HashMap::new(),
    };
    while !w.shared.stop.load(Ordering::Relaxed) {
        w.step();
    }
    w.finish();
}

impl Writer {
    fn step(&mut self) {
        // Wait for work, but never past the next reconnect attempt or idle ping.
        let wait = if self.conn.is_none() {
            self.backoff.remaining()
        } else if self.pending.is_empty() {
            IDLE_PING.saturating_sub(self.last_io.elapsed())
        } else {
            Duration::ZERO
        };
        self.take_new(wait.min(Duration::from_millis(200)));

        if self.conn.is_none() {
            if self.undelivered > 0
                && self
                    .down_since
                    .is_some_and(|t| t.elapsed() >= LOCAL_WITHOUT_ID_AFTER)
            {
                self.deliver_users(self.pending.len());
            }
            if !self.backoff.remaining().is_zero() {
                return;
            }
            match self.shared.connector.connect(IO_TIMEOUT) {
                Ok(c) => {
                    self.conn = Some(c);
                    self.down_since = None;
                    self.backoff.reset();
                    self.last_io = Instant::now();
                    self.shared.stats.set_link(Link::Writer, true, &"connected");
                }
                Err(e) => {
                    self.shared.stats.set_link(Link::Writer, false, &e);
                    self.backoff.failed();
                    return;
                }
            }
        }
        if !self.pending.is_empty() {
            self.write_batch();
        } else if self.last_io.elapsed() >= IDLE_PING {
            self.ping();
        }
    }

    /// Moves queued events into `pending`, waiting up to `wait` for the first one.
    fn take_new(&mut self, wait: Duration) {
        if !wait.is_zero() {
            if self.pending.is_empty() {
                match self.rx.recv_timeout(wait) {
                    Ok(ev) => self.push(ev),
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                // Waiting out a backoff with events in hand: they stay counted in the outbox meanwhile.
                conn::sleep_unless(&self.shared.stop, wait);
            }
        }
        while let Ok(ev) = self.rx.try_recv() {
            self.push(ev);
        }
    }

    fn push(&mut self, ev: OutEvent) {
        // Numbered in channel order, so the numbers of one origin increase along the stream.
        let seq = self.next_seq;
        self.next_seq += 1;
        let trace = if ev.trace.is_empty() {
            format!("{}-{seq}", self.shared.origin)
        } else {
            ev.trace.clone()
        };
        if ev.kind == EventKind::User {
            self.undelivered += 1;
        }
        self.pending.push_back(Numbered {
            ev,
            seq,
            trace,
            stored: false,
            nid: None,
            delivered: false,
        });
    }

    /// Hands the user pushes among the first `n` pending events that are stored (or must not wait any longer) to
    /// this node's connections, in order.
    fn deliver_users(&mut self, n: usize) {
        if self.undelivered == 0 {
            return;
        }
        let waited_enough = self
            .down_since
            .is_some_and(|t| t.elapsed() >= LOCAL_WITHOUT_ID_AFTER);
        for item in self.pending.iter_mut().take(n) {
            if item.ev.kind != EventKind::User || item.delivered {
                continue;
            }
            if !item.stored && !waited_enough {
                break; // keep the order: a later push must not overtake an earlier one
            }
            let ev = &item.ev;
            fn opt(s: &str) -> Option<&str> {
                (!s.is_empty()).then_some(s)
            }
            self.deliver.deliver_user(
                &ev.target,
                opt(&ev.device),
                opt(&ev.tenant),
                &ev.data,
                item.nid,
            );
            item.delivered = true;
            self.undelivered -= 1;
        }
    }

    /// Appends the user pushes among the first `n` pending events to their notify streams (one round trip for
    /// all). False if the bus write must wait (connection lost, or Redis busy: retried).
    fn store_users(&mut self, n: usize) -> bool {
        let todo: Vec<usize> = (0..n)
            .filter(|&i| self.pending[i].ev.kind == EventKind::User && !self.pending[i].stored)
            .collect();
        if todo.is_empty() {
            return true;
        }
        let cfg = &self.shared.cfg;
        let max_age_ms = cfg.offline_max_age.saturating_mul(1000);
        let min_id = format!("{}-0", event::now_ms().saturating_sub(max_age_ms));
        let maxlen = cfg.offline_maxlen.to_string();
        if self.age_trimmed.len() >= AGE_TRIM_USERS {
            self.age_trimmed.clear();
        }
        let now = Instant::now();
        let mut cmds = Vec::with_capacity(todo.len() * 3);
        // Index of each push's XADD in `cmds`.
        let mut xadd_at = Vec::with_capacity(todo.len());
        for &i in &todo {
            let item = &self.pending[i];
            let ev = &item.ev;
            let key = keys::notify(&ev.target);
            let mut xadd = redis::cmd("XADD");
            xadd.arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(&maxlen)
                .arg("*")
                .arg(event::F_DATA)
                .arg(&ev.data)
                .arg(event::F_TRACE)
                .arg(&item.trace)
                .arg(event::F_TS)
                .arg(ev.ts_ms)
                .arg(event::F_ORIGIN)
                .arg(&self.shared.origin)
                .arg(event::F_NODE)
                .arg(self.shared.node_id);
            if !ev.device.is_empty() {
                xadd.arg(event::F_DEVICE).arg(&ev.device);
            }
            if !ev.tenant.is_empty() {
                xadd.arg(event::F_TENANT).arg(&ev.tenant);
            }
            xadd_at.push(cmds.len());
            cmds.push(xadd);
            let due = self
                .age_trimmed
                .get(&ev.target)
                .is_none_or(|t| now.duration_since(*t) >= AGE_TRIM_EVERY);
            if due {
                self.age_trimmed.insert(ev.target.clone(), now);
                let mut trim = redis::cmd("XTRIM");
                trim.arg(&key).arg("MINID").arg("~").arg(&min_id);
                cmds.push(trim);
                let mut expire = redis::cmd("PEXPIRE");
                expire.arg(&key).arg(max_age_ms);
                cmds.push(expire);
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        self.last_io = Instant::now();
        let replies = match conn.exec(&cmds) {
            Ok(r) => r,
            // Unknown which appends took effect: all are retried; a replay drops copies with the same trace.
            Err(e) => {
                self.lost(&e);
                return false;
            }
        };
        let stats = self.shared.stats.clone();
        for (j, &i) in todo.iter().enumerate() {
            let item = &mut self.pending[i];
            match &replies[xadd_at[j]] {
                Reply::Value(v) => {
                    item.nid = event::str_of(v).and_then(StreamId::parse);
                    if item.nid.is_some() {
                        stats.offline_stored_total.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats
                            .offline_store_failed_total
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Reply::Refused { code, details } => {
                    if conn::transient_code(code) {
                        let (code, details) = (code.clone(), details.clone());
                        stats.redis_errors_total.fetch_add(1, Ordering::Relaxed);
                        if conn::reconnect_code(&code) {
                            self.lost(&format!("{code} {details}"));
                        } else {
                            self.log_error(&format!(
                                "cluster: Redis busy storing a user push ({code} {details}); retrying"
                            ));
                            conn::sleep_unless(&self.shared.stop, Duration::from_millis(100));
                        }
                        return false;
                    }
                    stats
                        .offline_store_failed_total
                        .fetch_add(1, Ordering::Relaxed);
                    stats.redis_errors_total.fetch_add(1, Ordering::Relaxed);
                    let msg = format!(
                        "cluster: Redis refused to store a user push for replay ({code} {details}); delivered \
                         without an id"
                    );
                    self.log_error(&msg);
                }
            }
            self.pending[i].stored = true;
        }
        true
    }

    fn ping(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        self.last_io = Instant::now();
        if let Err(e) = redis::cmd("PING").query::<redis::Value>(conn.like()) {
            self.lost(&e);
        }
    }

    fn lost(&mut self, why: &dyn std::fmt::Display) {
        self.conn = None;
        self.down_since.get_or_insert_with(Instant::now);
        self.shared.stats.set_link(Link::Writer, false, why);
        self.backoff.failed();
    }

    /// Writes one batch from the front of `pending` and settles each event by its reply.
    fn write_batch(&mut self) {
        let mut bytes = 0;
        let mut n = 0;
        for item in self.pending.iter().take(BATCH_MAX) {
            if n > 0 && bytes + item.ev.cost() > BATCH_BYTES {
                break;
            }
            bytes += item.ev.cost();
            n += 1;
        }
        if !self.store_users(n) {
            return;
        }
        self.deliver_users(n);
        let mut pipe = redis::pipe();
        for item in self.pending.iter().take(n) {
            self.add_xadd(&mut pipe, item);
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        self.last_io = Instant::now();
        let packed = pipe.get_packed_pipeline();
        let replies = match conn.like().req_packed_commands(&packed, 0, n) {
            Ok(r) => r,
            Err(e) => {
                // Unknown which commands took effect: keep them all. Retried events keep their sequence
                // numbers, so readers drop the copies that did get through.
                return self.lost(&e);
            }
        };
        if replies.len() != n {
            return self.lost(&"reply count does not match the pipeline");
        }
        let mut done = 0;
        let mut retry_from = None;
        for reply in &replies {
            if let redis::Value::ServerError(e) = reply {
                let code = e.code().to_string();
                if conn::transient_code(&code) {
                    retry_from = Some((code, e.details().unwrap_or("").to_string()));
                    break;
                }
                self.shared
                    .stats
                    .redis_errors_total
                    .fetch_add(1, Ordering::Relaxed);
                self.shared
                    .stats
                    .events_dropped_total
                    .fetch_add(1, Ordering::Relaxed);
                self.log_error(&format!(
                    "cluster: Redis refused an event on stream {:?} ({code} {}); event dropped",
                    self.shared.cfg.stream,
                    e.details().unwrap_or("")
                ));
            } else {
                self.shared
                    .stats
                    .events_out_total
                    .fetch_add(1, Ordering::Relaxed);
            }
            done += 1;
        }
        self.settle(done);
        if let Some((code, details)) = retry_from {
            // Keep this event and everything after it (in order); whatever of it was written is deduplicated by
            // the readers.
            if conn::reconnect_code(&code) {
                self.lost(&format!("{code} {details}"));
            } else {
                self.shared
                    .stats
                    .redis_errors_total
                    .fetch_add(1, Ordering::Relaxed);
                self.log_error(&format!("cluster: Redis busy ({code} {details}); retrying"));
                conn::sleep_unless(&self.shared.stop, Duration::from_millis(100));
            }
        }
    }

    fn add_xadd(&self, pipe: &mut redis::Pipeline, item: &Numbered) {
        let ev = &item.ev;
        let s = &self.shared;
        let cmd = pipe
            .cmd("XADD")
            .arg(&s.cfg.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(&self.maxlen)
            .arg("*")
            .arg(event::F_ORIGIN)
            .arg(&s.origin)
            .arg(event::F_NODE)
            .arg(s.node_id)
            .arg(event::F_SEQ)
            .arg(item.seq)
            .arg(event::F_KIND)
            .arg(ev.kind.as_str())
            .arg(event::F_TARGET)
            .arg(&ev.target)
            .arg(event::F_DATA)
            .arg(&ev.data)
            .arg(event::F_TRACE)
            .arg(&item.trace)
            .arg(event::F_TS)
            .arg(ev.ts_ms);
        match ev.kind {
            EventKind::User => {
                if !ev.device.is_empty() {
                    cmd.arg(event::F_DEVICE).arg(&ev.device);
                }
                if !ev.tenant.is_empty() {
                    cmd.arg(event::F_TENANT).arg(&ev.tenant);
                }
                if let Some(nid) = item.nid {
                    cmd.arg(event::F_NID).arg(nid.to_string());
                }
            }
            EventKind::Disconnect => {
                cmd.arg(event::F_SCOPE).arg(ev.scope.as_str());
            }
            _ => {}
        }
    }

    /// Removes the first `n` pending events (written or dropped) from the outbox accounting.
    fn settle(&mut self, n: usize) {
        let mut bytes = 0;
        for item in self.pending.drain(..n) {
            bytes += item.ev.cost();
            if item.ev.kind == EventKind::User && !item.delivered {
                self.undelivered -= 1;
            }
        }
        let stats = &self.shared.stats;
        stats.outbox_events.fetch_sub(n, Ordering::Relaxed);
        stats.outbox_bytes.fetch_sub(bytes, Ordering::Relaxed);
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

    /// At shutdown: one bounded attempt to write what is left; the rest is counted as dropped.
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
                .events_dropped_total
                .fetch_add(left as u64, Ordering::Relaxed);
            self.settle(left);
            log::warn!("cluster: {left} outgoing events not written to Redis at shutdown");
        }
    }
}
