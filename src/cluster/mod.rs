//! The cluster bridge: federates nodes over one Redis stream (event broadcast: every node reads every event and
//! delivers to its own connections), and keeps what outlives one node in Redis: session state, presence, the
//! messages a user missed, client → backend events. Enabled by `cluster.redis`; without it nothing here runs.
//! Redis may be one server, a Sentinel-watched primary or a Redis Cluster ([`conn`]).
//!
//! Threads, each with its own Redis connection, none of them a reactor:
//! - writer ([`writer`]): drains the outbox; stores user pushes in their notify streams and delivers them here;
//!   appends events with pipelined `XADD ... MAXLEN ~ N`;
//! - reader ([`reader`]): `XREAD BLOCK` from the newest id seen, hands other nodes' events to [`Deliver`];
//! - heartbeat ([`lease`]): renews the node id lease, which is also the node's health record;
//! - state ([`state`]): session state in Redis, batched last-seen sync, sweeper of dead nodes' sessions;
//! - replay ([`replay`]): reads the messages a connecting user missed, writes acks;
//! - upstream ([`upstream`]): appends client connect/message/disconnect events to the upstream stream.
//!
//! The API reaches the bridge through a [`ClusterHandle`], whose `send` never blocks: the outbox is bounded by
//! `cluster.outbox_limit` events and `cluster.outbox_max_bytes`, and what does not fit is counted as dropped. The
//! reactors reach it through a [`BridgeLink`] (the gateway's `ClusterLink`, bounded queues, `try_send`) and the upstream sink. Layout,
//! guarantees and failure behaviour: docs/CLUSTER.md.

mod conn;
mod dial;
mod dispatch;
pub mod event;
pub mod history;
pub mod keys;
pub mod lease;
pub mod link;
pub mod query;
mod reader;
mod replay;
mod state;
mod stats;
mod stream_writer;
pub mod upstream;
mod writer;

pub use event::{EventKind, InEvent, OutEvent};
pub use link::BridgeLink;
pub use reader::collect_entries;
pub use stats::BridgeStats;

use crate::config::{ClusterConfig, Config};
use crate::ids::StreamId;
use conn::{Backoff, Connector, CONNECT_TIMEOUT, IO_TIMEOUT};
use crossbeam_channel::{Receiver, Sender};
use lease::NodeInfo;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the bridge threads reach this node's connections. The hub implements it (src/cluster/dispatch.rs); a new
/// event kind is one more arm there.
pub trait Deliver: Send + Sync {
    /// Delivers the events of other nodes read in one go, in order, as one hand-over to the reactors (one wake-up
    /// per reactor for all of them); returns how many of them this node handles (the others, of a kind it does not
    /// handle, are counted as ignored).
    fn deliver(&self, events: &[InEvent<'_>]) -> usize;
    /// Delivers a user push this node accepted (after it was stored for replay: `id`; or without an id); `ack`:
    /// each connection must ack the id.
    fn deliver_user(
        &self,
        user: &str,
        device: Option<&str>,
        tenant: Option<&str>,
        data: &str,
        id: Option<StreamId>,
        ack: bool,
    );
    /// Hands the result of reading a connection's missed messages to its reactor.
    fn replay_done(&self, sid: u64, outcome: crate::gateway::ReplayOutcome);
    /// Sends a frame (a reply) to connection `sid` of this node, if it is still open.
    fn to_sid(&self, sid: u64, frame: Vec<u8>);
    /// Every open gateway connection, per reactor (None if a reactor did not answer in time).
    fn snapshot(&self) -> Option<Vec<crate::gateway::Answer>>;
}

/// What the bridge threads share.
pub(crate) struct Shared {
    pub cfg: ClusterConfig,
    pub connector: Connector,
    pub stats: Arc<BridgeStats>,
    pub node_id: u16,
    /// Instance id of this process (16 hex digits, new at every start): the `origin` of its events.
    pub origin: String,
    pub info: NodeInfo,
    pub stop: AtomicBool,
}

/// The non-blocking way into the bridge, held by the hub. Cheap to clone.
#[derive(Clone)]
pub struct ClusterHandle {
    /// Cluster-wide session reads for the API (one connection, used by the API's worker threads).
    reader: Option<Arc<std::sync::Mutex<query::Reader>>>,
    tx: Sender<OutEvent>,
    stats: Arc<BridgeStats>,
    node_id: u16,
    origin: Arc<str>,
    outbox_limit: usize,
    outbox_max_bytes: usize,
}

impl ClusterHandle {
    /// The node id this node holds (leased or configured).
    pub fn node_id(&self) -> u16 {
        self.node_id
    }

    /// Queues a channel publish (`data` is raw JSON) for the other nodes. False if it was dropped.
    pub fn publish(&self, channel: &str, data: &str) -> bool {
        self.send(OutEvent::new(EventKind::Channel, channel, data))
    }

    /// Queues a broadcast for the other nodes. False if it was dropped.
    pub fn broadcast(&self, data: &str) -> bool {
        self.send(OutEvent::new(EventKind::Broadcast, "", data))
    }

    /// Queues a push to user `user` (stored for replay, then delivered on every node, this one included). False if
    /// it was dropped (outbox full).
    pub fn user(
        &self,
        user: &str,
        device: Option<&str>,
        tenant: Option<&str>,
        data: &str,
        ack: bool,
    ) -> bool {
        let mut ev = OutEvent::user(user, device, tenant, data);
        ev.ack = ack;
        self.send(ev)
    }

    /// Queues a push to connection `sid` of another node.
    pub fn sid(&self, sid: u64, data: &str) -> bool {
        self.send(OutEvent::new(EventKind::Sid, &sid.to_string(), data))
    }

    /// Runs `f` with the cluster-wide session reader (the API's worker threads only). Blocks on Redis (bounded
    /// by the reader's timeouts): never call it on a reactor.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&mut query::Reader) -> Result<T, String>,
    ) -> Result<T, String> {
        let reader = self.reader.as_ref().ok_or("no cluster reader")?;
        let mut r = reader.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut r)
    }

    /// Queues a disconnect for the other nodes.
    pub fn disconnect(&self, scope: event::Scope, target: &str, code: u16, reason: &str) -> bool {
        self.send(OutEvent::disconnect(scope, target, code, reason))
    }

    /// Queues any event without blocking. Over the outbox bounds it is dropped and counted.
    pub fn send(&self, ev: OutEvent) -> bool {
        let cost = ev.cost();
        let s = &self.stats;
        let n = s.outbox_events.fetch_add(1, Ordering::Relaxed) + 1;
        let b = s.outbox_bytes.fetch_add(cost, Ordering::Relaxed) + cost;
        if n <= self.outbox_limit && b <= self.outbox_max_bytes && self.tx.try_send(ev).is_ok() {
            return true;
        }
        s.outbox_events.fetch_sub(1, Ordering::Relaxed);
        s.outbox_bytes.fetch_sub(cost, Ordering::Relaxed);
        s.events_dropped_total.fetch_add(1, Ordering::Relaxed);
        false
    }

    pub fn stats(&self) -> &BridgeStats {
        &self.stats
    }

    /// The `wsgate_cluster_*` series for /metrics.
    pub fn write_prometheus(&self, out: &mut String) {
        self.stats.write_prometheus(self.node_id, out);
    }

    /// The `cluster` object of /api/stats.
    pub fn stats_json(&self) -> serde_json::Value {
        self.stats.to_json(self.node_id, &self.origin)
    }
}

/// The bridge of one node: created at start-up (leases the node id), then started with the hub, stopped last.
pub struct Cluster {
    shared: Arc<Shared>,
    handle: ClusterHandle,
    link: BridgeLink,
    link_rx: Option<link::LinkReceivers>,
    sink: Arc<upstream::ClusterSink>,
    upstream_rx: Option<Receiver<upstream::UpstreamEvent>>,
    rx: Option<Receiver<OutEvent>>,
    start_id: Option<StreamId>,
    threads: Vec<JoinHandle<()>>,
}

impl Cluster {
    /// Connects to Redis and leases the node id: `server.node_id` = 0 takes the lowest free id, 1..=1023 claims
    /// that one. Blocks start-up for at most `cluster.startup_timeout`. Fails if no id can be had (all held, or
    /// Redis unreachable with `server.node_id` = 0); with a configured id, an unreachable Redis is only a warning
    /// (the heartbeat claims the id once Redis is there).
    pub fn connect(config: &Config, ws: SocketAddr, api: SocketAddr) -> io::Result<Cluster> {
        let cfg = config.cluster.clone();
        let connector = Connector::new(&cfg).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("cluster.redis: {e}"))
        })?;
        let target = connector.describe(&cfg);
        let origin = format!("{:016x}", random_u64());
        let info = NodeInfo {
            ws,
            api,
            started_ms: event::now_ms(),
        };
        let ttl_ms = cfg.node_lease_ttl * 1000;
        let quarantine = Duration::from_secs(cfg.node_id_quarantine);
        let pinned = (config.server.node_id != 0).then_some(config.server.node_id);
        let stats = Arc::new(BridgeStats::default());
        let deadline = Instant::now() + Duration::from_secs(cfg.startup_timeout);
        let mut backoff = Backoff::default();
        let (node_id, start_id) = loop {
            // Each attempt, set-up included, ends by the deadline (at least a short one is made).
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(200));
            let attempt = connector.connect_within(CONNECT_TIMEOUT.min(left), IO_TIMEOUT.min(left));
            let problem = one_line(&match attempt {
                Ok(mut c) => {
                    let rec = |id| lease::record(id, &origin, &info, 0, ttl_ms);
                    let claimed = match pinned {
                        Some(id) => lease::claim(&mut c, id, &origin, &rec(id), ttl_ms)
                            .map(|ok| ok.then_some(id)),
                        None => lease::quarantine(&mut c, quarantine)
                            .and_then(|()| lease::claim_any(&mut c, &origin, rec, ttl_ms)),
                    };
                    match claimed {
                        Ok(Some(id)) => match reader::newest_id(&mut c, &cfg.stream) {
                            Ok(newest) => {
                                stats.lease_held.store(true, Ordering::Relaxed);
                                break (id, Some(newest.unwrap_or(StreamId::ZERO)));
                            }
                            Err(e) => format!("reading stream {:?}: {e}", cfg.stream),
                        },
                        Ok(None) => match pinned {
                            Some(id) => format!(
                                "server.node_id {id} is leased by another live node: {}",
                                lease::holder(&mut c, id)
                            ),
                            None => format!(
                                "all node ids 0..={} are leased (stale leases expire after cluster.node_lease_ttl)",
                                lease::MAX_NODE_ID
                            ),
                        },
                        Err(e) => format!("leasing a node id: {e}"),
                    }
                }
                Err(e) => {
                    if let Some(id) = pinned {
                        log::warn!(
                            "cluster: Redis at {target} unreachable at start-up ({}); running as node {id}, \
                             federation starts when Redis is reachable",
                            one_line(&e)
                        );
                        break (id, None);
                    }
                    format!("Redis at {target} unreachable: {e}")
                }
            });
            backoff.failed();
            if Instant::now() + backoff.remaining() >= deadline {
                return Err(io::Error::other(format!(
                    "cluster: no node id after cluster.startup_timeout ({} s): {problem}",
                    cfg.startup_timeout
                )));
            }
            log::warn!("cluster: {problem}; retrying");
            std::thread::sleep(backoff.remaining());
        };
        log::info!(
            "cluster: node id {node_id}{} (instance {origin}), Redis {target}, bus stream {:?}",
            if pinned.is_some() {
                " (configured)"
            } else {
                " (leased)"
            },
            cfg.stream
        );
        // Unbounded as a queue, bounded by `ClusterHandle::send`'s accounting (which counts what is in the
        // channel and what the writer holds): memory follows what is actually queued, not the limit.
        let (tx, rx) = crossbeam_channel::unbounded();
        let (link, link_rx) = BridgeLink::new(stats.clone());
        let (sink, upstream_rx) =
            upstream::ClusterSink::new(stats.clone(), cfg.outbox_limit, cfg.outbox_max_bytes);
        let (outbox_limit, outbox_max_bytes) = (cfg.outbox_limit, cfg.outbox_max_bytes);
        let shared = Arc::new(Shared {
            cfg,
            connector,
            stats: stats.clone(),
            node_id,
            origin: origin.clone(),
            info,
            stop: AtomicBool::new(false),
        });
        let handle = ClusterHandle {
            reader: Some(Arc::new(std::sync::Mutex::new(query::Reader::new(
                shared.clone(),
            )))),
            tx,
            stats,
            node_id,
            origin: Arc::from(origin.as_str()),
            outbox_limit,
            outbox_max_bytes,
        };
        Ok(Cluster {
            shared,
            handle,
            link,
            link_rx: Some(link_rx),
            sink: Arc::new(sink),
            upstream_rx: Some(upstream_rx),
            rx: Some(rx),
            start_id,
            threads: Vec::new(),
        })
    }

    pub fn node_id(&self) -> u16 {
        self.shared.node_id
    }

    pub fn handle(&self) -> ClusterHandle {
        self.handle.clone()
    }

    /// The reactors' way into the bridge (session state, replays, acks).
    pub fn link(&self) -> BridgeLink {
        self.link.clone()
    }

    /// The upstream sink of cluster mode: connect/message/disconnect events to `cluster.upstream_stream`.
    pub fn upstream_sink(&self) -> Arc<upstream::ClusterSink> {
        self.sink.clone()
    }

    /// Starts the bridge threads (writer, reader, heartbeat, state, replay). `connections` feeds the health
    /// record.
    pub fn start(
        &mut self,
        deliver: Arc<dyn Deliver>,
        connections: Arc<AtomicUsize>,
    ) -> io::Result<()> {
        let (Some(rx), Some(link_rx), Some(upstream_rx)) =
            (self.rx.take(), self.link_rx.take(), self.upstream_rx.take())
        else {
            return Ok(()); // already started
        };
        let s = self.shared.clone();
        self.threads.push(
            std::thread::Builder::new()
                .name("cluster-upstream".into())
                .spawn(move || upstream::run(s, upstream_rx))?,
        );
        let s = self.shared.clone();
        let d = deliver.clone();
        self.threads.push(
            std::thread::Builder::new()
                .name("cluster-writer".into())
                .spawn(move || writer::run(s, d, rx))?,
        );
        let s = self.shared.clone();
        let d = deliver.clone();
        let lost = self.link.state_lost.clone();
        let state_rx = link_rx.state;
        self.threads.push(
            std::thread::Builder::new()
                .name("cluster-state".into())
                .spawn(move || state::run(s, d, state_rx, lost))?,
        );
        let s = self.shared.clone();
        let d = deliver.clone();
        let (replay_rx, acks_rx) = (link_rx.replay, link_rx.acks);
        self.threads.push(
            std::thread::Builder::new()
                .name("cluster-replay".into())
                .spawn(move || replay::run(s, d, replay_rx, acks_rx))?,
        );
        let s = self.shared.clone();
        let start = self.start_id;
        self.threads.push(
            std::thread::Builder::new()
                .name("cluster-reader".into())
                .spawn(move || reader::run(s, deliver, start))?,
        );
        let s = self.shared.clone();
        self.threads.push(
            std::thread::Builder::new()
                .name("cluster-heartbeat".into())
                .spawn(move || lease::run_heartbeat(s, connections))?,
        );
        Ok(())
    }

    /// Flushes the outbox (bounded), releases the lease and joins the threads. Call after the API and reactors
    /// have stopped, so nothing is queued behind the flush.
    pub fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// Error text for a log line: Redis errors may span lines, the log format is one line per entry.
pub(crate) fn one_line(e: &dyn std::fmt::Display) -> String {
    let mut s = e.to_string();
    s.retain(|c| c != '\r');
    s.trim_end().replace('\n', " | ")
}

/// A random 64-bit number (std's per-process random hash keys mixed with the time and pid); for instance ids and
/// jitter, not for secrets.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(limit: usize, max_bytes: usize) -> (ClusterHandle, Receiver<OutEvent>) {
        let (tx, rx) = crossbeam_channel::bounded(limit);
        let h = ClusterHandle {
            reader: None,
            tx,
            stats: Arc::new(BridgeStats::default()),
            node_id: 1,
            origin: Arc::from("o"),
            outbox_limit: limit,
            outbox_max_bytes: max_bytes,
        };
        (h, rx)
    }

    #[test]
    fn send_is_bounded_by_count_and_bytes_and_counts_drops() {
        let (h, _rx) = handle(3, 1 << 20);
        for k in 0..5 {
            let accepted = h.publish("c", &k.to_string());
            assert_eq!(accepted, k < 3);
        }
        let s = h.stats();
        assert_eq!(s.outbox_events.load(Ordering::Relaxed), 3);
        assert_eq!(s.events_dropped_total.load(Ordering::Relaxed), 2);

        let (h, _rx) = handle(100, 1 << 20);
        let big = "1".repeat(400 << 10);
        let accepted = (0..5).filter(|_| h.broadcast(&big)).count();
        assert_eq!(accepted, 2);
        let s = h.stats();
        assert!(s.outbox_bytes.load(Ordering::Relaxed) <= 1 << 20);
        assert_eq!(s.events_dropped_total.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn one_line_joins_multi_line_errors() {
        assert_eq!(one_line(&"a\r\nb\n"), "a | b");
    }
}
