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

use super::conn::{self, Reply};
use super::event::{self, EventKind, OutEvent};
use super::keys;
use super::stats::Link;
use super::stream_writer::{self, Stream, StreamWriter};
use super::{BridgeStats, Deliver, Shared};
use crate::ids::StreamId;
use crossbeam_channel::Receiver;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After Redis has been unreachable this long, user pushes go to local connections without waiting for their id.
pub const LOCAL_WITHOUT_ID_AFTER: Duration = Duration::from_secs(1);
/// Bound on the writer's connection set-up and on each of its replies.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
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

/// The bus stream (`cluster.stream`); the loop around it is [`StreamWriter`].
struct Bus {
    deliver: Arc<dyn Deliver>,
    next_seq: u64,
    /// User pushes not yet handed to local connections.
    undelivered: usize,
    /// When this node last trimmed each user's notify stream by age.
    age_trimmed: HashMap<String, Instant>,
}

type Writer = StreamWriter<Bus>;

pub(crate) fn run(shared: Arc<Shared>, deliver: Arc<dyn Deliver>, rx: Receiver<OutEvent>) {
    let key = shared.cfg.stream.clone();
    let maxlen = shared.cfg.stream_maxlen;
    let bus = Bus {
        deliver,
        next_seq: 1,
        undelivered: 0,
        age_trimmed: HashMap::new(),
    };
    stream_writer::run(shared, bus, rx, key, maxlen);
}

impl Stream for Bus {
    type Event = OutEvent;
    type Item = Numbered;
    const LINK: Link = Link::Writer;
    const NOUN: &'static str = "outgoing";
    /// Short, because this node's user pushes wait for the writer: a Redis that stops answering is noticed within
    /// this, and they go out without an id [`LOCAL_WITHOUT_ID_AFTER`] later (a healthy Redis answers a batch in
    /// well under a millisecond; a timeout only costs a reconnect and a retry of the batch).
    const TIMEOUT: Duration = WRITE_TIMEOUT;

    fn take(&mut self, shared: &Shared, ev: OutEvent) -> Numbered {
        // Numbered in channel order, so the numbers of one origin increase along the stream.
        let seq = self.next_seq;
        self.next_seq += 1;
        let trace = if ev.trace.is_empty() {
            format!("{}-{seq}", shared.origin)
        } else {
            ev.trace.clone()
        };
        if ev.kind == EventKind::User {
            self.undelivered += 1;
        }
        Numbered {
            ev,
            seq,
            trace,
            stored: false,
            nid: None,
            delivered: false,
        }
    }

    fn cost(item: &Numbered) -> usize {
        item.ev.cost()
    }

    fn fields(&self, s: &Shared, item: &Numbered, cmd: &mut redis::Cmd) {
        let ev = &item.ev;
        cmd.arg(event::F_ORIGIN)
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
                if ev.ack {
                    cmd.arg(event::F_ACK).arg("1");
                }
            }
            EventKind::Disconnect => {
                cmd.arg(event::F_SCOPE).arg(ev.scope.as_str());
            }
            _ => {}
        }
    }

    fn queue(stats: &BridgeStats) -> (&AtomicUsize, &AtomicUsize) {
        (&stats.outbox_events, &stats.outbox_bytes)
    }

    fn written(stats: &BridgeStats) -> &AtomicU64 {
        &stats.events_out_total
    }

    fn dropped(stats: &BridgeStats) -> &AtomicU64 {
        &stats.events_dropped_total
    }

    fn refused(stream: &str, code: &str, details: &str) -> String {
        format!("cluster: Redis refused an event on stream {stream:?} ({code} {details}); event dropped")
    }

    fn busy(stats: &BridgeStats, code: &str, details: &str) -> String {
        stats.redis_errors_total.fetch_add(1, Ordering::Relaxed);
        format!("cluster: Redis busy ({code} {details}); retrying")
    }

    fn settled(&mut self, item: &Numbered) {
        if item.ev.kind == EventKind::User && !item.delivered {
            self.undelivered -= 1;
        }
    }

    fn while_down(w: &mut Writer) {
        if w.stream.undelivered > 0
            && w.down_since
                .is_some_and(|t| t.elapsed() >= LOCAL_WITHOUT_ID_AFTER)
        {
            w.deliver_users(w.pending.len());
        }
    }

    /// User pushes are stored (and handed to this node's connections) before they go on the bus.
    fn before_batch(w: &mut Writer, n: usize) -> bool {
        if !w.store_users(n) {
            return false;
        }
        w.deliver_users(n);
        true
    }
}

impl Writer {
    /// Hands the user pushes among the first `n` pending events that are stored (or must not wait any longer) to
    /// this node's connections, in order.
    fn deliver_users(&mut self, n: usize) {
        if self.stream.undelivered == 0 {
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
            self.stream.deliver.deliver_user(
                &ev.target,
                opt(&ev.device),
                opt(&ev.tenant),
                &ev.data,
                item.nid,
                ev.ack,
            );
            item.delivered = true;
            self.stream.undelivered -= 1;
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
        let age_trimmed = &mut self.stream.age_trimmed;
        if age_trimmed.len() >= AGE_TRIM_USERS {
            age_trimmed.clear();
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
            if ev.ack {
                xadd.arg(event::F_ACK).arg("1");
            }
            xadd_at.push(cmds.len());
            cmds.push(xadd);
            let due = age_trimmed
                .get(&ev.target)
                .is_none_or(|t| now.duration_since(*t) >= AGE_TRIM_EVERY);
            if due {
                age_trimmed.insert(ev.target.clone(), now);
                let mut trim = redis::cmd("XTRIM");
                trim.arg(&key).arg("MINID").arg("~").arg(&min_id);
                cmds.push(trim);
                let mut expire = redis::cmd("PEXPIRE");
                expire.arg(&key).arg(max_age_ms);
                cmds.push(expire);
            }
        }
        // On a connection failure it is unknown which appends took effect: all are retried; a replay drops
        // copies with the same trace.
        let Some(replies) = self.exec(&cmds) else {
            return false;
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
                        self.retry_later(&code, &details, |_| {
                            format!("cluster: Redis busy storing a user push ({code} {details}); retrying")
                        });
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
}
