//! Channel history kept in a node's memory: per channel a ring of its newest publications with offsets in an
//! epoch (src/history/ring.rs), bounded per channel (`history_size`, `history_ttl` of its `[[channels.namespace]]`)
//! and in total (`channels.history_max_bytes`, oldest publication of any channel dropped first). Standalone it is
//! the history; in cluster mode it is this node's copy of what it read from the bus (Redis has the history,
//! src/cluster/history.rs), from which it serves recoveries without a round trip.
//!
//! Publications are stored before they are handed to the reactors, by whoever hands them out: the reactor that
//! read the API request (standalone), the bus reader (cluster), the merge thread (merge windows). So a reactor that reads the history
//! while recovering a client sees every publication whose frame may still be in its command queue
//! (src/gateway/recovery.rs skips those by offset). One mutex, held for a publish or one channel's read, never
//! across I/O.

pub mod ring;

use crate::config::{ChannelsConfig, NamespaceConfig};
use crate::pool::SharedFrame;
use crate::protocol;
use ring::Ring;
pub use ring::{Entry, Position, Recovery};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often expired publications and idle channels are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct History {
    config: ChannelsConfig,
    /// Cluster mode: a channel's epoch is Redis's, known once a publication was read from the bus; standalone,
    /// a subscribe creates the channel's epoch, so every position a client is given names a real epoch.
    cluster: bool,
    store: Mutex<Store>,
}

struct Store {
    rings: HashMap<Arc<str>, Ring>,
    /// Every stored publication as (channel, offset), oldest first, for the total bound. Entries a ring dropped
    /// itself (count, age) stay until compacted.
    order: VecDeque<(Arc<str>, u64)>,
    /// Publications held by the rings.
    held: usize,
    bytes: usize,
    /// `channels.history_max_bytes`.
    max_bytes: usize,
    last_sweep: Instant,
}

/// One page of a channel's history for `GET /api/history`.
pub struct Page {
    pub position: Position,
    /// The publications after `since` were all still there.
    pub complete: bool,
    /// (offset, data) oldest first.
    pub items: Vec<(u64, Vec<u8>)>,
}

impl History {
    /// None when no namespace keeps history. `cluster`: offsets and epochs come from Redis (see [`Self::insert`]).
    pub fn from_config(config: &ChannelsConfig, cluster: bool) -> Option<Arc<History>> {
        config.any_history().then(|| {
            Arc::new(History {
                config: config.clone(),
                cluster,
                store: Mutex::new(Store {
                    rings: HashMap::new(),
                    order: VecDeque::new(),
                    held: 0,
                    bytes: 0,
                    max_bytes: usize::try_from(config.history_max_bytes).unwrap_or(usize::MAX),
                    last_sweep: Instant::now(),
                }),
            })
        })
    }

    /// The namespace of `channel` when it keeps history.
    pub fn namespace(&self, channel: &str) -> Option<&NamespaceConfig> {
        self.config
            .namespace_of(channel)
            .filter(|n| n.has_history())
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic aborts the process (release profile), so a poisoned lock cannot be observed there.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives the next offset of `channel` (which must have a history namespace), stores the encoded publication
    /// and returns its frame and offset (standalone mode).
    pub fn publish(&self, channel: &str, ns: &NamespaceConfig, data: &str) -> (SharedFrame, u64) {
        let now = Instant::now();
        let mut store = self.lock();
        store.sweep(now, &self.config);
        let ring = store.ring(channel, now);
        let offset = ring.top.saturating_add(1);
        let epoch = ring.epoch.clone();
        (store.append(channel, ns, now, offset, &epoch, data), offset)
    }

    /// Stores a publication that Redis gave `offset` in `epoch` (cluster mode: every node reads them from the bus in
    /// offset order) and returns its frame; None for one not newer than what the channel has (a repeat). A channel
    /// whose epoch changed starts over; one with a gap (events lost on the bus) drops what it had, so no recovery
    /// spans the gap.
    pub fn insert(
        &self,
        channel: &str,
        offset: u64,
        epoch: &str,
        data: &str,
    ) -> Option<SharedFrame> {
        let Some(ns) = self.namespace(channel) else {
            return Some(protocol::channel_message_at(channel, offset, epoch, data).0);
        };
        let now = Instant::now();
        let mut store = self.lock();
        store.sweep(now, &self.config);
        let epoch: Arc<str> = Arc::from(epoch);
        if !store.admit(channel, now, offset, &epoch) {
            return None;
        }
        Some(store.append(channel, ns, now, offset, &epoch, data))
    }

    /// A merge window's batch (src/hub/merge.rs), stored in one step so a recovery sees all of it or none: each
    /// publication with the offset `given` (cluster mode, see [`Self::insert`]) or the next one (standalone).
    /// Returns the frames to deliver with the last offset each covers: one per epoch met (almost always one), a
    /// lone publication as its ordinary frame, several as `{"channel":C,"epoch":E,"batch":[...]}`.
    pub fn append_batch(
        &self,
        channel: &str,
        ns: &NamespaceConfig,
        data: &[&str],
        given: &[Option<(u64, Arc<str>)>],
    ) -> Vec<(SharedFrame, u64)> {
        let now = Instant::now();
        let mut store = self.lock();
        store.sweep(now, &self.config);
        let mut out = Vec::new();
        let mut group: Vec<(u64, &str, SharedFrame)> = Vec::new();
        let mut group_epoch: Option<Arc<str>> = None;
        for (d, g) in data.iter().zip(given) {
            let (offset, epoch) = match g {
                Some((offset, epoch)) => {
                    if !store.admit(channel, now, *offset, epoch) {
                        continue;
                    }
                    (*offset, epoch.clone())
                }
                None => {
                    let ring = store.ring(channel, now);
                    (ring.top.saturating_add(1), ring.epoch.clone())
                }
            };
            if let Some(e) = group_epoch.as_ref().filter(|e| **e != epoch) {
                out.extend(batch_frame(channel, e, &mut group));
            }
            group_epoch = Some(epoch.clone());
            let frame = store.append(channel, ns, now, offset, &epoch, d);
            group.push((offset, d, frame));
        }
        if let Some(e) = group_epoch {
            out.extend(batch_frame(channel, &e, &mut group));
        }
        out
    }

    /// What a client resubscribing from `since` gets; None when the channel has no history namespace.
    pub fn recover(&self, channel: &str, since: &Position, max_bytes: usize) -> Option<Recovery> {
        let ns = self.namespace(channel)?;
        let now = Instant::now();
        let mut store = self.lock();
        if !self.cluster {
            store.ring(channel, now);
        }
        let Some(ring) = store.rings.get_mut(channel) else {
            // Cluster mode, nothing of the channel read since this node started: what the client missed is unknown.
            return Some(Recovery {
                position: start(),
                recovered: false,
                frames: Vec::new(),
            });
        };
        let freed = ring.expire(now, Duration::from_secs(ns.history_ttl));
        let recovery = ring.recover(since, max_bytes);
        store.release(freed);
        Some(recovery)
    }

    /// The channel's current position (standalone: its epoch is made if it has none; cluster mode: offset 0 and
    /// epoch "" until this node read a publication of it); None when it has no history namespace.
    pub fn position(&self, channel: &str) -> Option<Position> {
        self.namespace(channel)?;
        let mut store = self.lock();
        if !self.cluster {
            return Some(store.ring(channel, Instant::now()).position());
        }
        Some(store.rings.get(channel).map_or_else(start, Ring::position))
    }

    /// Up to `limit` publications after `since` (offset 0 = from the oldest kept); None without a history
    /// namespace.
    pub fn page(&self, channel: &str, since: u64, limit: usize) -> Option<Page> {
        let ns = self.namespace(channel)?;
        let now = Instant::now();
        let mut store = self.lock();
        let Some(ring) = store.rings.get_mut(channel) else {
            return Some(Page {
                position: start(),
                complete: true,
                items: Vec::new(),
            });
        };
        let freed = ring.expire(now, Duration::from_secs(ns.history_ttl));
        let complete = since >= ring.top
            || ring
                .entries
                .front()
                .is_some_and(|e| e.offset <= since.saturating_add(1));
        let items = ring
            .entries
            .iter()
            .filter(|e| e.offset > since)
            .take(limit)
            .map(|e| (e.offset, e.data().to_vec()))
            .collect();
        let position = ring.position();
        store.release(freed);
        Some(Page {
            position,
            complete,
            items,
        })
    }

    /// Bytes and publications held, and channels with a history (for /api/stats).
    pub fn usage(&self) -> (usize, usize, usize) {
        let store = self.lock();
        (store.bytes, store.held, store.rings.len())
    }
}

/// The frame of one group of a batch (emptied) and its last offset.
fn batch_frame(
    channel: &str,
    epoch: &str,
    group: &mut Vec<(u64, &str, SharedFrame)>,
) -> Option<(SharedFrame, u64)> {
    let last = group.last()?.0;
    let frame = if group.len() == 1 {
        group[0].2.clone()
    } else {
        let offsets: Vec<u64> = group.iter().map(|g| g.0).collect();
        let data: Vec<&str> = group.iter().map(|g| g.1).collect();
        protocol::batch_message(channel, Some(epoch), &offsets, &data)
    };
    group.clear();
    Some((frame, last))
}

/// What a channel's ring costs against `channels.history_max_bytes` besides its publications.
fn ring_cost(name: &str) -> usize {
    name.len() + std::mem::size_of::<Ring>() + 64
}

/// The position of a channel this node knows nothing of (cluster mode).
fn start() -> Position {
    Position {
        offset: 0,
        epoch: Arc::from(""),
    }
}

impl Store {
    /// The ring of `channel`, created (new epoch, offset 0) if it has none.
    fn ring(&mut self, channel: &str, now: Instant) -> &mut Ring {
        if !self.rings.contains_key(channel) {
            self.bytes += ring_cost(channel);
            self.enforce_total();
            self.rings.insert(Arc::from(channel), Ring::new(now));
        }
        self.rings.get_mut(channel).expect("inserted above")
    }

    /// Whether publication `offset` in `epoch` (given by Redis) is new for the channel; a new epoch or a gap
    /// drops what the ring had (no recovery may span them). False for a repeat.
    fn admit(&mut self, channel: &str, now: Instant, offset: u64, epoch: &Arc<str>) -> bool {
        let ring = self.ring(channel, now);
        if offset <= ring.top && ring.epoch == *epoch {
            return false;
        }
        if ring.epoch != *epoch || offset > ring.top.saturating_add(1) {
            let freed = (
                ring.entries.iter().map(Entry::cost).sum(),
                ring.entries.len(),
            );
            ring.entries.clear();
            ring.epoch = epoch.clone();
            self.release(freed);
        }
        true
    }

    /// Encodes and stores publication `offset` of `channel` (the ring exists), then applies the channel's and the
    /// total bounds.
    fn append(
        &mut self,
        channel: &str,
        ns: &NamespaceConfig,
        now: Instant,
        offset: u64,
        epoch: &Arc<str>,
        data: &str,
    ) -> SharedFrame {
        let (frame, data_at) = protocol::channel_message_at(channel, offset, epoch, data);
        let entry = Entry {
            offset,
            at: now,
            frame: frame.clone(),
            data_at: data_at as u32,
        };
        let (name, ring) = self
            .rings
            .get_key_value(channel)
            .map(|(k, _)| k.clone())
            .and_then(|k| Some((k, self.rings.get_mut(channel)?)))
            .expect("the ring exists");
        ring.top = offset;
        ring.last_publish = now;
        self.bytes += entry.cost();
        self.held += 1;
        ring.entries.push_back(entry);
        let (mut freed, mut dropped) = ring.expire(now, Duration::from_secs(ns.history_ttl));
        while ring.entries.len() as u64 > ns.history_size {
            freed += ring.entries.pop_front().map_or(0, |e| e.cost());
            dropped += 1;
        }
        self.release((freed, dropped));
        self.order.push_back((name, offset));
        self.enforce_total();
        frame
    }

    fn release(&mut self, (bytes, count): (usize, usize)) {
        self.bytes -= bytes;
        self.held -= count;
    }

    /// Drops the oldest publications of any channel until the total is within `max`.
    fn enforce_total(&mut self) {
        while self.bytes > self.max_bytes {
            let Some((name, offset)) = self.order.pop_front() else {
                break;
            };
            let Some(ring) = self.rings.get_mut(&name) else {
                continue;
            };
            if ring.entries.front().is_some_and(|e| e.offset == offset) {
                let e = ring.entries.pop_front().expect("front exists");
                self.bytes -= e.cost();
                self.held -= 1;
            }
        }
        // Only rings without publications left (channels subscribed to but quiet): the longest idle go.
        if self.bytes > self.max_bytes {
            let mut idle: Vec<(Instant, Arc<str>)> = self
                .rings
                .iter()
                .filter(|(_, r)| r.entries.is_empty())
                .map(|(name, r)| (r.last_publish, name.clone()))
                .collect();
            idle.sort_unstable();
            for (_, name) in idle {
                if self.bytes <= self.max_bytes {
                    break;
                }
                self.rings.remove(&name);
                self.bytes -= ring_cost(&name);
            }
        }
        // Entries the rings dropped themselves linger in `order`; rebuild it before it is twice the live count.
        if self.order.len() > 2 * self.held + 1024 {
            let rings = &self.rings;
            self.order.retain(|(name, offset)| {
                rings
                    .get(name)
                    .and_then(|r| r.entries.front())
                    .is_some_and(|e| e.offset <= *offset)
            });
        }
    }

    /// Once a second: expired publications out of every ring, and rings idle past their ttl dropped (their offsets
    /// and epoch are forgotten; a client recovering there gets `recovered:false`).
    fn sweep(&mut self, now: Instant, config: &ChannelsConfig) {
        if now.duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        let mut freed = (0, 0);
        self.rings.retain(|name, ring| {
            let ttl = config
                .namespace_of(name)
                .map_or(Duration::ZERO, |n| Duration::from_secs(n.history_ttl));
            let (bytes, count) = ring.expire(now, ttl);
            freed.0 += bytes;
            freed.1 += count;
            let idle = ring.entries.is_empty() && now.duration_since(ring.last_publish) >= ttl;
            if idle {
                freed.0 += ring_cost(name);
            }
            !idle
        });
        self.release(freed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(max_bytes: u64, size: u64) -> Arc<History> {
        let config = ChannelsConfig {
            history_max_bytes: max_bytes,
            namespace: vec![NamespaceConfig {
                prefix: "h:".into(),
                history_size: size,
                history_ttl: 300,
                recover: true,
                merge_ms: 0,
            }],
        };
        History::from_config(&config, false).expect("a namespace keeps history")
    }

    #[test]
    fn the_total_bound_drops_the_oldest_publication_of_any_channel() {
        let h = history(20_000, 1000);
        let ns = h.namespace("h:a").unwrap().clone();
        let data = format!("\"{}\"", "x".repeat(100));
        for i in 0..1000 {
            let channel = format!("h:{}", i % 7);
            h.publish(&channel, &ns, &data);
        }
        let (bytes, held, channels) = h.usage();
        assert!(bytes <= 20_000, "{bytes} bytes held");
        assert!(
            held > 50 && channels == 7,
            "{held} publications in {channels} channels"
        );
        // The newest ones survive, the oldest are gone: channel 6 got 142 publications, the last of all 1000 among them.
        let page = h.page("h:6", 0, 1000).unwrap();
        assert!(!page.complete);
        assert_eq!(page.position.offset, 142);
        assert_eq!(page.items.last().unwrap().1, data.as_bytes());
        // Dropping entries kept the global order list compact.
        assert!(h.lock().order.len() <= 2 * held + 1024);
    }

    #[test]
    fn per_channel_size_and_no_history_outside_namespaces() {
        let h = history(1 << 20, 3);
        let ns = h.namespace("h:a").unwrap().clone();
        for _ in 0..10 {
            h.publish("h:a", &ns, "1");
        }
        assert_eq!(h.usage().1, 3);
        // Channels only subscribed to (standalone: each gets its epoch) count too, and the idlest go first.
        let small = history(20_000, 3);
        for i in 0..1000 {
            small.position(&format!("h:quiet{i}")).unwrap();
        }
        let (bytes, _, channels) = small.usage();
        assert!(
            bytes <= 20_000 && channels < 1000,
            "{bytes} bytes in {channels} channels"
        );
        assert!(h.namespace("other").is_none());
        assert!(h.page("other", 0, 10).is_none());
        assert!(h.position("other").is_none());
    }

    #[test]
    fn bus_publications_skip_repeats_and_restart_on_gaps_and_new_epochs() {
        let h = history(1 << 20, 100);
        let data = "1";
        assert!(h.insert("h:a", 5, "E1", data).is_some());
        assert!(h.insert("h:a", 5, "E1", data).is_none(), "a repeat");
        assert!(h.insert("h:a", 6, "E1", data).is_some());
        let e1 = Position {
            offset: 5,
            epoch: Arc::from("E1"),
        };
        assert_eq!(h.recover("h:a", &e1, usize::MAX).unwrap().frames.len(), 1);
        // A gap (8 missed on the bus): nothing before it can be recovered.
        assert!(h.insert("h:a", 9, "E1", data).is_some());
        assert!(!h.recover("h:a", &e1, usize::MAX).unwrap().recovered);
        let at8 = Position {
            offset: 8,
            epoch: Arc::from("E1"),
        };
        assert!(h.recover("h:a", &at8, usize::MAX).unwrap().recovered);
        // A new epoch starts over at its own offsets.
        assert!(h.insert("h:a", 1, "E2", data).is_some());
        assert_eq!(
            h.position("h:a").unwrap(),
            Position {
                offset: 1,
                epoch: Arc::from("E2")
            }
        );
        assert_eq!(h.usage().1, 1);
        // Hostile offsets from the bus: no overflow, and paging past them is complete.
        assert!(h.insert("h:a", u64::MAX, "E2", data).is_some());
        assert!(h.insert("h:a", u64::MAX, "E2", data).is_none());
        assert!(h.page("h:a", u64::MAX, 10).unwrap().complete);
    }
}
