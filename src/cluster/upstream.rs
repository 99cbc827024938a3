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

use super::event::now_ms;
use super::stats::Link;
use super::stream_writer::{self, Stream};
use super::{BridgeStats, Shared};
use crate::upstream::{Event, Refused, Sink};
use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

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

/// The upstream stream (`cluster.upstream_stream`); the loop around it is [`stream_writer::StreamWriter`].
struct Upstream {
    next_trace: u64,
}

pub(crate) fn run(shared: Arc<Shared>, rx: Receiver<UpstreamEvent>) {
    let key = shared.cfg.upstream_stream.clone();
    let maxlen = shared.cfg.upstream_maxlen;
    stream_writer::run(shared, Upstream { next_trace: 1 }, rx, key, maxlen);
}

impl Stream for Upstream {
    type Event = UpstreamEvent;
    type Item = UpstreamEvent;
    const LINK: Link = Link::Upstream;
    const NOUN: &'static str = "upstream";

    fn take(&mut self, shared: &Shared, mut ev: UpstreamEvent) -> UpstreamEvent {
        if ev.trace.is_empty() {
            ev.trace = format!("{}-u{}", shared.origin, self.next_trace);
            self.next_trace += 1;
        }
        ev
    }

    fn cost(ev: &UpstreamEvent) -> usize {
        ev.cost()
    }

    fn fields(&self, s: &Shared, ev: &UpstreamEvent, xadd: &mut redis::Cmd) {
        xadd.arg("X-ID")
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
    }

    fn queue(stats: &BridgeStats) -> (&AtomicUsize, &AtomicUsize) {
        (&stats.upstream_queue_events, &stats.upstream_queue_bytes)
    }

    fn written(stats: &BridgeStats) -> &AtomicU64 {
        &stats.upstream_events_total
    }

    fn dropped(stats: &BridgeStats) -> &AtomicU64 {
        &stats.upstream_dropped_total
    }

    fn refused(stream: &str, code: &str, details: &str) -> String {
        format!("cluster: Redis refused an upstream event on stream {stream:?} ({code} {details}); dropped")
    }

    fn busy(_: &BridgeStats, code: &str, details: &str) -> String {
        format!("cluster: Redis busy ({code} {details}); retrying upstream events")
    }
}
