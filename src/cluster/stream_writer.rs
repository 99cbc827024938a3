//! The loop shared by the threads that append a queue of events to a Redis stream: the bus writer ([`super::writer`])
//! and the upstream appender ([`super::upstream`]). It takes events from the thread's channel, appends them in
//! pipelined batches (`XADD key MAXLEN ~ N * field value ...`, one round trip per batch), settles the queue
//! accounting by each reply, reconnects with backoff while Redis is unreachable (keeping what it holds), pings an
//! idle connection, rate-limits its error log, and at shutdown makes one bounded attempt to write what is left.
//!
//! What differs per stream — how an event becomes entry fields, which counters and gauges it moves, what it logs —
//! is a [`Stream`].

use super::conn::{self, Reconnecting, Reply};
use super::stats::Link;
use super::{BridgeStats, Shared};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events per pipelined batch.
const BATCH_MAX: usize = 256;
/// Payload bytes per batch (a batch always takes at least one event).
const BATCH_BYTES: usize = 1 << 20;
/// An idle writer pings Redis this often, so an outage shows in the gauge and log even without traffic.
const IDLE_PING: Duration = Duration::from_secs(1);
/// How long shutdown may spend flushing the queue.
const FLUSH_ON_STOP: Duration = Duration::from_secs(2);
/// Permanent per-event errors (e.g. the key holds a non-stream value) are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// What one stream's thread does differently; the rest is [`StreamWriter`].
pub(super) trait Stream: Sized {
    /// What the thread's channel carries.
    type Event;
    /// An event taken from the channel, waiting to be written.
    type Item;
    /// The thread's link in the stats.
    const LINK: Link;
    /// The queue's name in the shutdown log ("{n} {NOUN} events not written ...").
    const NOUN: &'static str;
    /// Bound on the connection set-up and on each reply.
    const TIMEOUT: Duration = conn::IO_TIMEOUT;

    /// Takes an event off the channel (numbers it, gives it a trace id).
    fn take(&mut self, shared: &Shared, ev: Self::Event) -> Self::Item;
    /// Bytes the event holds in the queue accounting.
    fn cost(item: &Self::Item) -> usize;
    /// Appends the entry's fields to `XADD key MAXLEN ~ N *`.
    fn fields(&self, shared: &Shared, item: &Self::Item, xadd: &mut redis::Cmd);
    /// The queue's gauges: events and bytes.
    fn queue(stats: &BridgeStats) -> (&AtomicUsize, &AtomicUsize);
    /// Counts events appended.
    fn written(stats: &BridgeStats) -> &AtomicU64;
    /// Counts events refused by Redis or left at shutdown.
    fn dropped(stats: &BridgeStats) -> &AtomicU64;
    /// The log line for an event Redis refused for good.
    fn refused(stream: &str, code: &str, details: &str) -> String;
    /// Redis is busy (a transient error that does not call for a new connection): counts it as the stream does
    /// and gives the log line.
    fn busy(stats: &BridgeStats, code: &str, details: &str) -> String;

    /// An event leaves the queue (written, dropped, or left at shutdown).
    fn settled(&mut self, _item: &Self::Item) {}
    /// Called at every step while there is no connection, before the backoff check.
    fn while_down(_w: &mut StreamWriter<Self>) {}
    /// Called before the first `n` pending events are appended; false: not now (they stay pending).
    fn before_batch(_w: &mut StreamWriter<Self>, _n: usize) -> bool {
        true
    }
}

pub(super) struct StreamWriter<S: Stream> {
    pub shared: Arc<Shared>,
    pub stream: S,
    rx: Receiver<S::Event>,
    pub pending: VecDeque<S::Item>,
    redis: Reconnecting,
    last_io: Instant,
    last_error_log: Option<Instant>,
    /// The stream key and its `MAXLEN ~`.
    key: String,
    maxlen: String,
    /// When the connection was lost (None while connected).
    pub down_since: Option<Instant>,
}

/// Runs the thread until `shared.stop`, then flushes.
pub(super) fn run<S: Stream>(
    shared: Arc<Shared>,
    stream: S,
    rx: Receiver<S::Event>,
    key: String,
    maxlen: u64,
) {
    let mut w = StreamWriter {
        shared,
        stream,
        rx,
        pending: VecDeque::new(),
        redis: Reconnecting::within(S::LINK, S::TIMEOUT.min(conn::CONNECT_TIMEOUT), S::TIMEOUT),
        last_io: Instant::now(),
        last_error_log: None,
        key,
        maxlen: maxlen.to_string(),
        down_since: Some(Instant::now()),
    };
    while !w.shared.stop.load(Ordering::Relaxed) {
        w.step();
    }
    w.finish();
}

impl<S: Stream> StreamWriter<S> {
    fn step(&mut self) {
        // Wait for work, but never past the next reconnect attempt or idle ping.
        let wait = if self.redis.conn.is_none() {
            self.redis.backoff_remaining()
        } else if self.pending.is_empty() {
            IDLE_PING.saturating_sub(self.last_io.elapsed())
        } else {
            Duration::ZERO
        };
        self.take_new(wait.min(Duration::from_millis(200)));

        if self.redis.conn.is_none() {
            S::while_down(self);
            if !self.redis.connect(&self.shared) {
                return;
            }
            self.down_since = None;
            self.last_io = Instant::now();
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
                // Waiting out a backoff with events in hand: they stay counted in the queue meanwhile.
                conn::sleep_unless(&self.shared.stop, wait);
            }
        }
        while let Ok(ev) = self.rx.try_recv() {
            self.push(ev);
        }
    }

    fn push(&mut self, ev: S::Event) {
        let item = self.stream.take(&self.shared, ev);
        self.pending.push_back(item);
    }

    fn ping(&mut self) {
        let Some(conn) = self.redis.conn.as_mut() else {
            return;
        };
        self.last_io = Instant::now();
        if let Err(e) = redis::cmd("PING").query::<redis::Value>(conn.like()) {
            self.lost(&e);
        }
    }

    pub fn lost(&mut self, why: &dyn std::fmt::Display) {
        self.down_since.get_or_insert_with(Instant::now);
        self.redis.lost(&self.shared.stats, why);
    }

    /// Runs `cmds` (which may touch many keys) on the connection; None if there is none or it failed (then it is
    /// dropped: unknown which commands took effect).
    pub fn exec(&mut self, cmds: &[redis::Cmd]) -> Option<Vec<Reply>> {
        let conn = self.redis.conn.as_mut()?;
        self.last_io = Instant::now();
        match conn.exec(cmds) {
            Ok(r) => Some(r),
            Err(e) => {
                self.lost(&e);
                None
            }
        }
    }

    /// After a transient refusal (the events stay pending): a new connection if Redis asks for one (READONLY,
    /// MASTERDOWN), else the `busy` log line and a short pause.
    pub fn retry_later(
        &mut self,
        code: &str,
        details: &str,
        busy: impl FnOnce(&BridgeStats) -> String,
    ) {
        if conn::reconnect_code(code) {
            self.lost(&format!("{code} {details}"));
        } else {
            let msg = busy(&self.shared.stats);
            self.log_error(&msg);
            conn::sleep_unless(&self.shared.stop, Duration::from_millis(100));
        }
    }

    /// Writes one batch from the front of `pending` and settles each event by its reply.
    fn write_batch(&mut self) {
        let mut bytes = 0;
        let mut n = 0;
        for item in self.pending.iter().take(BATCH_MAX) {
            let cost = S::cost(item);
            if n > 0 && bytes + cost > BATCH_BYTES {
                break;
            }
            bytes += cost;
            n += 1;
        }
        if !S::before_batch(self, n) {
            return;
        }
        let mut cmds = Vec::with_capacity(n);
        for item in self.pending.iter().take(n) {
            let mut xadd = redis::cmd("XADD");
            xadd.arg(&self.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(&self.maxlen)
                .arg("*");
            self.stream.fields(&self.shared, item, &mut xadd);
            cmds.push(xadd);
        }
        let Some(conn) = self.redis.conn.as_mut() else {
            return;
        };
        self.last_io = Instant::now();
        // One key: one round trip, also on Redis Cluster. On a connection failure it is unknown which appends
        // took effect: all are kept and retried (the bus readers drop copies by sequence number; a backend may see
        // an upstream event twice, with the same X-Trace-ID, but never miss one the gateway accepted).
        let replies = match conn.exec_one_key(&cmds) {
            Ok(r) => r,
            Err(e) => return self.lost(&e),
        };
        let mut done = 0;
        let mut retry_from = None;
        for reply in &replies {
            let stats = &self.shared.stats;
            match reply {
                Reply::Refused { code, details } if conn::transient_code(code) => {
                    retry_from = Some((code.clone(), details.clone()));
                    break;
                }
                Reply::Refused { code, details } => {
                    stats.redis_errors_total.fetch_add(1, Ordering::Relaxed);
                    S::dropped(stats).fetch_add(1, Ordering::Relaxed);
                    let msg = S::refused(&self.key, code, details);
                    self.log_error(&msg);
                }
                Reply::Value(_) => {
                    S::written(stats).fetch_add(1, Ordering::Relaxed);
                }
            }
            done += 1;
        }
        self.settle(done);
        if let Some((code, details)) = retry_from {
            // Keep this event and everything after it (in order); whatever of it was written is deduplicated
            // downstream.
            self.retry_later(&code, &details, |stats| S::busy(stats, &code, &details));
        }
    }

    /// Removes the first `n` pending events (written or dropped) from the queue accounting.
    fn settle(&mut self, n: usize) {
        let mut bytes = 0;
        for item in self.pending.drain(..n) {
            bytes += S::cost(&item);
            self.stream.settled(&item);
        }
        let (events_gauge, bytes_gauge) = S::queue(&self.shared.stats);
        events_gauge.fetch_sub(n, Ordering::Relaxed);
        bytes_gauge.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn log_error(&mut self, msg: &str) {
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
        while !self.pending.is_empty() && self.redis.conn.is_some() && Instant::now() < deadline {
            let before = self.pending.len();
            self.write_batch();
            if self.pending.len() == before {
                break;
            }
        }
        let left = self.pending.len();
        if left > 0 {
            S::dropped(&self.shared.stats).fetch_add(left as u64, Ordering::Relaxed);
            self.settle(left);
            log::warn!(
                "cluster: {left} {} events not written to Redis at shutdown",
                S::NOUN
            );
        }
    }
}
