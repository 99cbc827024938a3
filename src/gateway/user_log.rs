//! The replay store of a standalone node: the user pushes of the last `delivery.offline_max_age` seconds, in
//! memory, so that a client that reconnects gets what it missed — the same protocol as the Redis notify streams
//! of cluster mode (ids like `1700000000000-0`, `?since=`, cumulative `op: ack` per user and device, replay at
//! connect). Bounded per user (`delivery.offline_maxlen`) and in total (`delivery.offline_max_bytes`: the oldest
//! pushes go first).
//!
//! Sharded by user: the API appends (one shard lock per push), reactors read at connect and record acks.
//! Ids are `ms-seq`, increasing within a shard and therefore per user (all a client compares).

use super::cluster_link::Since;
use super::command::ReplayOutcome;
use super::frames::user_push;
use crate::config::DeliveryConfig;
use crate::ids::{sid, StreamId};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const SHARDS: usize = 16;
/// Bytes of replayed frames queued per chunk (at least one message), like the cluster's replay: well below
/// `ws.max_outbound_bytes`; the next chunk is read once this one is flushed.
pub const CHUNK_BYTES: usize = 256 << 10;
/// Bytes charged per stored push besides its data and names (entry, order entry, map and allocation overhead),
/// so the byte bound also bounds many tiny pushes.
const ENTRY_OVERHEAD: usize = 128;
/// Acks remembered per user (devices); the oldest device's is forgotten first (its next connect replays all kept).
const DEVICES_PER_USER: usize = 16;

struct Stored {
    id: StreamId,
    data: Arc<str>,
    device: Option<Box<str>>,
    tenant: Option<Box<str>>,
    ack: bool,
    cost: usize,
}

#[derive(Default)]
struct UserEntries {
    msgs: VecDeque<Stored>,
    /// Highest acknowledged id per device ("" without one).
    acks: Vec<(Box<str>, StreamId)>,
}

struct Shard {
    users: HashMap<Box<str>, UserEntries>,
    /// Every stored push in id order (oldest first) with its user: what ages out or is evicted first. An entry
    /// whose push was already trimmed by the per-user bound is skipped when it comes up.
    order: VecDeque<(StreamId, Box<str>)>,
    bytes: usize,
    /// Pushes held.
    count: usize,
    last: StreamId,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            users: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            count: 0,
            last: StreamId::ZERO,
        }
    }
}

pub struct UserLog {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    maxlen: usize,
    max_age_ms: u64,
    shard_bytes: usize,
    /// Pushes dropped before their age to stay within `delivery.offline_max_bytes`.
    evicted: AtomicU64,
}

/// What one push costs the byte bound.
fn cost(user: &str, data: &str, device: Option<&str>, tenant: Option<&str>) -> usize {
    ENTRY_OVERHEAD
        + 2 * user.len()
        + data.len()
        + device.map_or(0, str::len)
        + tenant.map_or(0, str::len)
}

impl UserLog {
    /// The store of a standalone node; None when `delivery.offline_maxlen` is 0.
    pub fn new(cfg: &DeliveryConfig) -> Option<UserLog> {
        (cfg.offline_maxlen > 0).then(|| UserLog {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            maxlen: cfg.offline_maxlen as usize,
            max_age_ms: cfg.offline_max_age.saturating_mul(1000),
            shard_bytes: (cfg.offline_max_bytes as usize / SHARDS).max(1),
            evicted: AtomicU64::new(0),
        })
    }

    fn shard(&self, user: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(user) as usize) % SHARDS;
        // A poisoned shard only means a panic elsewhere mid-update; the entries are still consistent.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a push to `user` and returns its id. Delivered live by the caller with this id, after this returns,
    /// so a connection that reads the store at connect never misses a push nor gets one twice.
    pub fn append(
        &self,
        user: &str,
        device: Option<&str>,
        tenant: Option<&str>,
        data: &str,
        ack: bool,
    ) -> StreamId {
        let now = sid::unix_ms();
        let mut shard = self.shard(user);
        let last = shard.last;
        let id = if now > last.0 {
            StreamId(now, 0)
        } else {
            StreamId(last.0, last.1 + 1)
        };
        shard.last = id;
        let cost = cost(user, data, device, tenant);
        let entries = shard.users.entry(user.into()).or_default();
        entries.msgs.push_back(Stored {
            id,
            data: data.into(),
            device: device.map(Into::into),
            tenant: tenant.map(Into::into),
            ack,
            cost,
        });
        let trimmed = if entries.msgs.len() > self.maxlen {
            entries.msgs.pop_front().map(|m| m.cost)
        } else {
            None
        };
        shard.order.push_back((id, user.into()));
        shard.bytes = shard.bytes + cost - trimmed.unwrap_or(0);
        shard.count = shard.count + 1 - usize::from(trimmed.is_some());
        self.evict(&mut shard, now);
        id
    }

    /// Drops what is older than `offline_max_age`, then the oldest pushes while the shard is over its bytes.
    fn evict(&self, shard: &mut Shard, now: u64) {
        let oldest_kept = now.saturating_sub(self.max_age_ms);
        while let Some((id, _)) = shard.order.front() {
            if id.0 >= oldest_kept && shard.bytes <= self.shard_bytes {
                break;
            }
            let Some((id, user)) = shard.order.pop_front() else {
                break;
            };
            let Some(entries) = shard.users.get_mut(&user) else {
                continue;
            };
            if entries.msgs.front().is_some_and(|m| m.id == id) {
                if let Some(m) = entries.msgs.pop_front() {
                    shard.bytes -= m.cost;
                    shard.count -= 1;
                    if id.0 >= oldest_kept {
                        self.evicted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if entries.msgs.is_empty() {
                // Nothing kept: a stored ack is below every later id anyway.
                shard.users.remove(&user);
            }
        }
    }

    /// The pushes to `user` that a connection with `device` / `tenant` missed after `since`, as replay frames of
    /// at most about `max_bytes` (at least one); `more` when others follow (ask again after `last`).
    pub fn read(
        &self,
        user: &str,
        device: Option<&str>,
        tenant: Option<&str>,
        since: Since,
        max_bytes: usize,
    ) -> ReplayOutcome {
        let mut picked: Vec<(StreamId, Arc<str>, bool)> = Vec::new();
        let floor;
        let mut more = false;
        {
            let mut shard = self.shard(user);
            self.evict(&mut shard, sid::unix_ms());
            let Some(entries) = shard.users.get(user) else {
                return ReplayOutcome {
                    floor: match since {
                        Since::After(id) => Some(id),
                        Since::Stored => None,
                    },
                    ..ReplayOutcome::default()
                };
            };
            floor = match since {
                Since::After(id) => Some(id),
                Since::Stored => entries
                    .acks
                    .iter()
                    .find(|(d, _)| **d == *device.unwrap_or(""))
                    .map(|&(_, id)| id),
            };
            let mut bytes = 0;
            for m in &entries.msgs {
                if floor.is_some_and(|f| m.id <= f)
                    || m.device.as_deref().is_some_and(|d| Some(d) != device)
                    || m.tenant.as_deref().is_some_and(|t| Some(t) != tenant)
                {
                    continue;
                }
                if bytes >= max_bytes {
                    more = true;
                    break;
                }
                bytes += m.cost;
                picked.push((m.id, m.data.clone(), m.ack));
            }
        }
        ReplayOutcome {
            last: picked.last().map(|p| p.0),
            frames: picked
                .into_iter()
                .map(|(id, data, ack)| user_push(user, &data, Some(id), true, ack))
                .collect(),
            floor,
            error: None,
            more,
        }
    }

    /// Records that `user`'s `device` ("" = none) has everything up to `id` (never moves back). Err for an id
    /// above every id given so far: an ack can only confirm a push that exists.
    pub fn ack(&self, user: &str, device: &str, id: StreamId) -> Result<(), &'static str> {
        let mut shard = self.shard(user);
        if id > shard.last {
            return Err("no message with this id was sent yet");
        }
        let Some(entries) = shard.users.get_mut(user) else {
            return Ok(()); // nothing kept: nothing to replay anyway
        };
        match entries.acks.iter_mut().find(|(d, _)| **d == *device) {
            Some((_, stored)) => *stored = (*stored).max(id),
            None => {
                if entries.acks.len() >= DEVICES_PER_USER {
                    entries.acks.remove(0);
                }
                entries.acks.push((device.into(), id));
            }
        }
        Ok(())
    }

    /// Pushes and bytes held now, and pushes evicted so far by the bytes bound (for /api/stats and /metrics).
    pub fn usage(&self) -> (usize, usize, u64) {
        let (n, b) = self.shards.iter().fold((0, 0), |(n, b), s| {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            (n + s.count, b + s.bytes)
        });
        (n, b, self.evicted.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(maxlen: u32, max_bytes: u64) -> UserLog {
        UserLog::new(&DeliveryConfig {
            offline_maxlen: maxlen,
            offline_max_bytes: max_bytes,
            ..DeliveryConfig::default()
        })
        .unwrap()
    }

    fn ids(o: &ReplayOutcome) -> usize {
        o.frames.len()
    }

    #[test]
    fn replays_after_since_or_the_stored_ack_with_filters() {
        let l = log(100, 1 << 30);
        let a = l.append("u", None, None, "1", false);
        let b = l.append("u", Some("phone"), None, "2", true);
        let c = l.append("u", None, Some("t2"), "3", false);
        assert!(a < b && b < c);
        let all = l.read("u", Some("phone"), None, Since::Stored, 1 << 20);
        assert_eq!((ids(&all), all.last, all.floor), (2, Some(b), None));
        assert!(all.frames[1].ends_with(br#""replay":true,"ack":true}"#));
        l.ack("u", "phone", a).unwrap();
        let after = l.read("u", Some("phone"), Some("t2"), Since::Stored, 1 << 20);
        assert_eq!((ids(&after), after.floor), (2, Some(a)));
        let since = l.read("u", None, Some("t2"), Since::After(b), 1 << 20);
        assert_eq!((ids(&since), since.last), (1, Some(c)));
        // Acks never move back, and cannot run ahead of what was sent.
        l.ack("u", "phone", StreamId::ZERO).unwrap();
        let again = l.read("u", Some("phone"), None, Since::Stored, 1 << 20);
        assert_eq!(again.floor, Some(a));
        assert!(l.ack("u", "phone", StreamId(c.0 + 1, 0)).is_err());
    }

    #[test]
    fn chunks_and_bounds() {
        let l = log(3, 1 << 30);
        for n in 0..5 {
            l.append("u", None, None, &n.to_string(), false);
        }
        let first = l.read("u", None, None, Since::Stored, 1);
        assert_eq!((ids(&first), first.more), (1, true));
        let text = String::from_utf8_lossy(&first.frames[0][2..]).to_string();
        assert!(text.contains(r#""data":2,"#), "{text}");
        let rest = l.read("u", None, None, Since::After(first.last.unwrap()), 1 << 20);
        assert_eq!((ids(&rest), rest.more), (2, false));
        assert_eq!(l.usage().0, 3);

        // The total bound evicts the oldest pushes, of any user; a user with nothing kept is forgotten.
        let small = log(1000, 1 << 20);
        let big = "x".repeat(4096);
        for _ in 0..1000 {
            small.append("a", None, None, &big, false);
            small.append("b", None, None, "1", false);
        }
        let (n, bytes, evicted) = small.usage();
        assert!(bytes <= 1 << 20 && n > 0, "{n} {bytes}");
        assert_eq!(n as u64 + evicted, 2000);
        assert!(
            small
                .read("b", None, None, Since::Stored, 1 << 30)
                .frames
                .len()
                < 1000
        );
    }
}
