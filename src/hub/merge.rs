//! Merge windows (`merge_ms` of a `[[channels.namespace]]`): publications to one channel within the window leave
//! as one frame, `{"channel":C,"batch":[{"data":..},...]}` (with history: `"epoch"` and each item's `"offset"`),
//! encoded once per batch. Fewer, larger writes for channels that get bursts of small messages.
//!
//! Publishers (the API on the reactors, the cluster bus reader) add to the channel's pending batch; the merge thread hands
//! out each batch when its window (opened by its first publication) closes, or at once when it reaches
//! [`MAX_BATCH_ITEMS`] / [`MAX_BATCH_BYTES`]. With history, a batch's publications are stored in one step as it
//! leaves (src/history/), so a recovering client gets either all of a batch in its replay or none of it.

use super::{Hub, Outbox};
use crate::config::ChannelsConfig;
use crate::protocol;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Publications per batch at most; a full batch leaves at once.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Bytes of `data` per batch at most; beyond, the batch leaves at once.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Bytes of `data` waiting in all batches at most; beyond, every batch leaves at once (many channels in one
/// window cannot grow memory without bound).
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// One publication waiting in a batch: raw JSON, and (cluster mode with history) the offset and epoch Redis gave.
pub struct Item {
    pub data: Box<str>,
    pub at: Option<(u64, Arc<str>)>,
}

struct Pending {
    due: Instant,
    items: Vec<Item>,
    bytes: usize,
}

/// The open batches, and the bytes of `data` they hold together.
#[derive(Default)]
struct Batches {
    open: HashMap<Arc<str>, Pending>,
    bytes: usize,
}

impl Batches {
    fn take(&mut self, channel: &str) -> Option<Pending> {
        let batch = self.open.remove(channel)?;
        self.bytes -= batch.bytes;
        Some(batch)
    }
}

pub struct Merger {
    config: ChannelsConfig,
    pending: Mutex<Batches>,
    wake: Condvar,
}

impl Merger {
    /// None when no namespace has a merge window.
    pub fn from_config(config: &ChannelsConfig) -> Option<Arc<Merger>> {
        config.namespace.iter().any(|n| n.merge_ms > 0).then(|| {
            Arc::new(Merger {
                config: config.clone(),
                pending: Mutex::new(Batches::default()),
                wake: Condvar::new(),
            })
        })
    }

    /// The merge window of `channel`, if it has one.
    pub fn window(&self, channel: &str) -> Option<Duration> {
        self.config
            .namespace_of(channel)
            .filter(|n| n.merge_ms > 0)
            .map(|n| Duration::from_millis(n.merge_ms))
    }

    /// Adds a publication to `channel`'s batch (the channel has a window); a full batch is handed out here.
    pub fn add(&self, out: &mut Outbox, channel: &str, window: Duration, item: Item) {
        let mut pending = self.lock();
        // Batches are handed out under the lock, so a later batch of a channel cannot overtake an earlier one.
        if pending.bytes + item.data.len() > MAX_PENDING_BYTES {
            let all: Vec<Arc<str>> = pending.open.keys().cloned().collect();
            for c in all {
                let batch = pending.take(&c).expect("listed above");
                send(out, &c, batch.items);
            }
        }
        pending.bytes += item.data.len();
        let batch = match pending.open.get_mut(channel) {
            Some(b) => b,
            None => {
                self.wake.notify_one();
                pending.open.entry(Arc::from(channel)).or_insert(Pending {
                    due: Instant::now() + window,
                    items: Vec::new(),
                    bytes: 0,
                })
            }
        };
        batch.bytes += item.data.len();
        batch.items.push(item);
        if batch.items.len() >= MAX_BATCH_ITEMS || batch.bytes >= MAX_BATCH_BYTES {
            let full = pending.take(channel).expect("present");
            send(out, channel, full.items);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Batches> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The merge thread: hands out batches whose window closed, until `stop` (then everything pending).
    pub fn run(&self, hub: &Hub, stop: &AtomicBool) {
        let mut pending = self.lock();
        loop {
            let now = Instant::now();
            let stopping = stop.load(Ordering::Relaxed);
            let due: Vec<Arc<str>> = pending
                .open
                .iter()
                .filter(|(_, b)| stopping || b.due <= now)
                .map(|(c, _)| c.clone())
                .collect();
            let mut out = hub.outbox();
            for channel in due {
                let batch = pending.take(&channel).expect("listed above");
                send(&mut out, &channel, batch.items);
            }
            out.flush();
            if stopping {
                return;
            }
            let next = pending
                .open
                .values()
                .map(|b| b.due)
                .min()
                .map_or(Duration::from_millis(100), |d| {
                    d.saturating_duration_since(now)
                });
            pending = self
                .wake
                .wait_timeout(pending, next)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Wakes the merge thread (to stop).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Stores (with history) and hands one batch to the reactors: a single publication as the ordinary frame.
fn send(out: &mut Outbox, channel: &str, items: Vec<Item>) {
    let history = out
        .hub
        .gateway
        .history
        .as_deref()
        .and_then(|h| Some((h, h.namespace(channel)?)));
    let Some((history, ns)) = history else {
        if let [one] = items.as_slice() {
            return out.publish(channel, protocol::channel_message(channel, &one.data));
        }
        let data: Vec<&str> = items.iter().map(|i| &*i.data).collect();
        return out.publish(channel, protocol::batch_message(channel, None, &[], &data));
    };
    let data: Vec<&str> = items.iter().map(|i| &*i.data).collect();
    let given: Vec<Option<(u64, Arc<str>)>> = items.iter().map(|i| i.at.clone()).collect();
    for (frame, last) in history.append_batch(channel, ns, &data, &given) {
        out.publish_at(channel, last, frame);
    }
}
