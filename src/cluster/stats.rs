//! Counters and gauges of the bridge, read by /metrics and /api/stats, and the outage log (one line when Redis
//! goes away, one when it is back — not one per event or per retry).

use crate::reactor::SharedLatency;
use serde_json::json;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The bridge threads that hold a Redis connection.
#[derive(Clone, Copy, Debug)]
pub enum Link {
    Writer = 0,
    Reader = 1,
    Heartbeat = 2,
    Replay = 3,
    Upstream = 4,
    State = 5,
}

const LINKS: usize = 6;

#[derive(Default)]
pub struct BridgeStats {
    /// Events written to the bus stream.
    pub events_out_total: AtomicU64,
    /// Events from other nodes delivered to local connections.
    pub events_in_total: AtomicU64,
    /// Outgoing events lost: outbox full, refused by Redis, or still queued at shutdown.
    pub events_dropped_total: AtomicU64,
    /// Incoming entries that could not be used (malformed).
    pub events_invalid_total: AtomicU64,
    /// Incoming entries of a kind this node does not handle.
    pub events_ignored_total: AtomicU64,
    /// Incoming duplicates skipped (an origin retried a batch after a connection failure).
    pub events_duplicate_total: AtomicU64,
    /// Gaps seen in other nodes' sequence numbers: their events this node never got (trimmed from the stream
    /// before it read them, or lost with a crashed Redis).
    pub events_missed_total: AtomicU64,
    /// Origins whose sequence numbers started afresh far below the last one seen (see src/cluster/reader.rs).
    pub events_seq_resets_total: AtomicU64,
    /// Failed Redis commands and connection attempts.
    pub redis_errors_total: AtomicU64,
    /// Outgoing events waiting (queued for the writer or being retried).
    pub outbox_events: AtomicUsize,
    pub outbox_bytes: AtomicUsize,
    /// 1 while this node holds its node id lease.
    pub lease_held: AtomicBool,
    /// 1 while another instance holds this node's id: this node then opens no new connections (their socket ids
    /// could collide with the other node's).
    pub node_id_taken: AtomicBool,
    /// User pushes stored in `stream:notify:{uid}` / refused by Redis (delivered without an id).
    pub offline_stored_total: AtomicU64,
    pub offline_store_failed_total: AtomicU64,
    /// Connections whose missed messages were read / could not be read.
    pub replays_total: AtomicU64,
    pub replay_failures_total: AtomicU64,
    /// Cluster hop: an event's Redis stream id time (when the origin node's XADD ran) → this node hands it to
    /// its reactors. Millisecond resolution; across machines it needs synchronized clocks (NTP).
    pub hop_latency: SharedLatency,
    /// Reading a connecting user's missed messages from Redis (request → outcome handed to the reactor).
    pub replay_latency: SharedLatency,
    /// Acks written to Redis (after merging per user and device) / dropped (queue full or refused).
    pub acks_written_total: AtomicU64,
    pub acks_dropped_total: AtomicU64,
    /// Acks refused: their id is beyond the user's newest message (the connection was told).
    pub acks_refused_total: AtomicU64,
    /// Session state changes dropped because the state queue was full (repaired from a snapshot).
    pub state_events_dropped_total: AtomicU64,
    /// Rebuilds of the session state from a snapshot of the reactors / full rewrites of it to Redis.
    pub state_resyncs_total: AtomicU64,
    /// Session state commands sent to Redis (writes, last-seen syncs, deletes).
    pub state_commands_total: AtomicU64,
    /// Sessions of dead nodes removed by this node's sweeper.
    pub sessions_swept_total: AtomicU64,
    /// Sessions this node holds in its state table (what it keeps fresh in Redis).
    pub sessions_tracked: AtomicUsize,
    /// Upstream events written to the upstream stream / dropped (queue full, refused by Redis, left at shutdown).
    pub upstream_events_total: AtomicU64,
    pub upstream_dropped_total: AtomicU64,
    /// Upstream events waiting, and their bytes.
    pub upstream_queue_events: AtomicUsize,
    pub upstream_queue_bytes: AtomicUsize,
    links: [AtomicBool; LINKS],
    outage: Mutex<Option<Instant>>,
}

impl BridgeStats {
    /// True when every bridge thread has a working connection.
    pub fn connected(&self) -> bool {
        self.links.iter().all(|l| l.load(Ordering::Relaxed))
    }

    /// Records a link going up or down (call on connect and on failure, not per command). Logs the start of an
    /// outage once and its end once.
    pub fn set_link(&self, link: Link, up: bool, why: &dyn std::fmt::Display) {
        let was = self.links[link as usize].swap(up, Ordering::Relaxed);
        if !up {
            self.redis_errors_total.fetch_add(1, Ordering::Relaxed);
        }
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if !up {
            if outage.is_none() {
                *outage = Some(Instant::now());
                let why = super::one_line(why);
                log::warn!(
                    "cluster: Redis unavailable ({link:?}: {why}); local delivery continues, outgoing events are \
                     buffered (cluster.outbox_limit), reconnecting with backoff"
                );
            }
        } else if !was && self.connected() {
            match outage.take() {
                Some(since) => log::info!(
                    "cluster: Redis is back after {:.1} s; {} events waiting in the outbox, {} dropped so far",
                    since.elapsed().as_secs_f64(),
                    self.outbox_events.load(Ordering::Relaxed),
                    self.events_dropped_total.load(Ordering::Relaxed)
                ),
                None => log::info!("cluster: connected to Redis"),
            }
        }
    }

    fn counters(&self) -> Vec<(&'static str, &'static str, bool, u64)> {
        let r = Ordering::Relaxed;
        vec![
            (
                "events_out_total",
                "Events this node wrote to the bus stream.",
                true,
                self.events_out_total.load(r),
            ),
            (
                "events_in_total",
                "Events from other nodes delivered to local connections.",
                true,
                self.events_in_total.load(r),
            ),
            (
                "events_dropped_total",
                "Outgoing events lost (outbox full, refused by Redis, or queued at shutdown).",
                true,
                self.events_dropped_total.load(r),
            ),
            (
                "events_invalid_total",
                "Malformed bus entries skipped.",
                true,
                self.events_invalid_total.load(r),
            ),
            (
                "events_ignored_total",
                "Bus entries of a kind this node does not handle.",
                true,
                self.events_ignored_total.load(r),
            ),
            (
                "events_duplicate_total",
                "Duplicate bus entries skipped (retried writes).",
                true,
                self.events_duplicate_total.load(r),
            ),
            (
                "events_missed_total",
                "Events of other nodes never received (gaps in their sequence numbers).",
                true,
                self.events_missed_total.load(r),
            ),
            (
                "events_seq_resets_total",
                "Times an origin's sequence numbers started afresh far below the last one seen (a bogus entry, or a reset).",
                true,
                self.events_seq_resets_total.load(r),
            ),
            (
                "redis_errors_total",
                "Failed Redis commands and connection attempts.",
                true,
                self.redis_errors_total.load(r),
            ),
            (
                "redis_connected",
                "1 when every bridge connection to Redis is up.",
                false,
                self.connected() as u64,
            ),
            (
                "outbox_events",
                "Outgoing events waiting to be written to Redis.",
                false,
                self.outbox_events.load(r) as u64,
            ),
            (
                "outbox_bytes",
                "Bytes of outgoing events waiting to be written to Redis.",
                false,
                self.outbox_bytes.load(r) as u64,
            ),
            (
                "lease_held",
                "1 while this node holds its node id lease in Redis.",
                false,
                self.lease_held.load(r) as u64,
            ),
            (
                "node_id_taken",
                "1 while another instance holds this node's id; no new connections are opened meanwhile.",
                false,
                self.node_id_taken.load(r) as u64,
            ),
            (
                "offline_stored_total",
                "User pushes stored for replay in stream:notify:{uid}.",
                true,
                self.offline_stored_total.load(r),
            ),
            (
                "offline_store_failed_total",
                "User pushes Redis refused to store for replay (delivered live without an id).",
                true,
                self.offline_store_failed_total.load(r),
            ),
            (
                "replays_total",
                "Connections whose missed user messages were read from Redis at connect.",
                true,
                self.replays_total.load(r),
            ),
            (
                "replay_failures_total",
                "Replays that could not be read (Redis unavailable, queue full); live delivery continued.",
                true,
                self.replay_failures_total.load(r),
            ),
            (
                "acks_written_total",
                "Client acks written to Redis (merged per user and device).",
                true,
                self.acks_written_total.load(r),
            ),
            (
                "acks_dropped_total",
                "Client acks dropped (queue full or refused by Redis).",
                true,
                self.acks_dropped_total.load(r),
            ),
            (
                "acks_refused_total",
                "Client acks refused: id beyond the user's newest message (the client got ok:false).",
                true,
                self.acks_refused_total.load(r),
            ),
            (
                "state_events_dropped_total",
                "Session state changes dropped because the state queue was full (repaired from a snapshot).",
                true,
                self.state_events_dropped_total.load(r),
            ),
            (
                "state_resyncs_total",
                "Full rewrites of this node's session state to Redis (after an outage, a sweep or dropped changes).",
                true,
                self.state_resyncs_total.load(r),
            ),
            (
                "state_commands_total",
                "Session state commands sent to Redis (writes, batched last-seen syncs, deletes, sweeps).",
                true,
                self.state_commands_total.load(r),
            ),
            (
                "sessions_swept_total",
                "Sessions of dead nodes removed from Redis by this node's sweeper.",
                true,
                self.sessions_swept_total.load(r),
            ),
            (
                "sessions_tracked",
                "Sessions of this node kept fresh in Redis.",
                false,
                self.sessions_tracked.load(r) as u64,
            ),
            (
                "upstream_events_total",
                "Client connect/message/disconnect events written to the upstream stream.",
                true,
                self.upstream_events_total.load(r),
            ),
            (
                "upstream_dropped_total",
                "Upstream events lost (queue full, refused by Redis, or queued at shutdown).",
                true,
                self.upstream_dropped_total.load(r),
            ),
            (
                "upstream_queue_events",
                "Upstream events waiting to be written to Redis.",
                false,
                self.upstream_queue_events.load(r) as u64,
            ),
        ]
    }

    /// Appends the `wsgate_cluster_*` series in Prometheus text format.
    pub fn write_prometheus(&self, node_id: u16, out: &mut String) {
        for (name, help, counter, v) in self.counters() {
            let kind = if counter { "counter" } else { "gauge" };
            let _ = writeln!(
                out,
                "# HELP wsgate_cluster_{name} {help}\n# TYPE wsgate_cluster_{name} {kind}\nwsgate_cluster_{name} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP wsgate_cluster_node_id Node id of this node.\n# TYPE wsgate_cluster_node_id gauge\nwsgate_cluster_node_id {node_id}"
        );
    }

    pub fn to_json(&self, node_id: u16, origin: &str) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("node_id".into(), json!(node_id));
        m.insert("origin".into(), json!(origin));
        for (name, _, _, v) in self.counters() {
            m.insert(name.into(), json!(v));
        }
        serde_json::Value::Object(m)
    }
}
