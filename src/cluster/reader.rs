//! The reader thread: `XREAD BLOCK` on the bus stream from the newest id it has seen, and hands every event of
//! another node to [`Deliver`] (which encodes the frame once and gives it to the reactors, like a local publish).
//!
//! Position: at start-up the newest entry of the stream (so a new node does not replay history); after a
//! reconnect the last id it read, so events written during a short outage are delivered late rather than lost,
//! as long as the stream still holds them. If the stream is older than that id (Redis lost its data), it reads
//! the stream from the start. Per-origin sequence numbers drop duplicates (an origin retrying a batch) and count
//! gaps (events this node never saw); a number far below the last one is taken as a new start of that origin's
//! numbering ([`RETRY_WINDOW`]).

use super::conn::{self, Reconnecting, RedisConn, IO_TIMEOUT};
use super::event::{self, parse_entry, Rejected};
use super::stats::Link;
use super::{Deliver, InEvent, Shared};
use crate::ids::StreamId;
use redis::{RedisResult, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one XREAD blocks when there is nothing to read; also bounds how long shutdown waits for the reader.
pub const BLOCK_MS: u64 = 500;
/// Entries per XREAD.
const COUNT: usize = 512;
/// Origins (node processes) whose sequence numbers are remembered; the least recently seen is forgotten beyond.
const MAX_ORIGINS: usize = 4096;
/// How far below the last sequence number seen a copy of a retried batch can be: a batch holds at most 256
/// events (src/cluster/stream_writer.rs), so a copy is within that. An entry further below is no copy: that
/// origin's numbering was reset (or one bogus entry had pushed it up), and the entry starts it afresh — so one
/// forged entry with a huge number cannot make every later event of that origin look like a duplicate.
const RETRY_WINDOW: u64 = 1024;
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Id of the newest entry of `stream`, None if it is empty or missing.
pub(crate) fn newest_id(conn: &mut RedisConn, stream: &str) -> RedisResult<Option<StreamId>> {
    let reply: Value = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(conn.like())?;
    let Value::Array(entries) = reply else {
        return Ok(None);
    };
    Ok(entries.first().and_then(|e| match e {
        Value::Array(parts) => parts
            .first()
            .and_then(event::str_of)
            .and_then(StreamId::parse),
        _ => None,
    }))
}

struct OriginState {
    last_seq: u64,
    seen: Instant,
}

struct Reader {
    shared: Arc<Shared>,
    deliver: Arc<dyn Deliver>,
    redis: Reconnecting,
    last: Option<StreamId>,
    origins: HashMap<String, OriginState>,
    last_warn: Option<Instant>,
}

pub(crate) fn run(shared: Arc<Shared>, deliver: Arc<dyn Deliver>, start: Option<StreamId>) {
    let mut r = Reader {
        shared,
        deliver,
        redis: Reconnecting::new(Link::Reader),
        last: start,
        origins: HashMap::new(),
        last_warn: None,
    };
    while !r.shared.stop.load(Ordering::Relaxed) {
        if r.redis.conn.is_none() && !r.connect() {
            continue;
        }
        r.read_once();
    }
}

impl Reader {
    fn connect(&mut self) -> bool {
        let wait = self.redis.backoff_remaining();
        if !wait.is_zero() {
            conn::sleep_unless(&self.shared.stop, wait);
            return false;
        }
        let read_timeout = Duration::from_millis(BLOCK_MS) + IO_TIMEOUT;
        let mut c = match self.shared.connector.connect(read_timeout) {
            Ok(c) => c,
            Err(e) => {
                self.lost(&e);
                return false;
            }
        };
        match newest_id(&mut c, &self.shared.cfg.stream) {
            Ok(newest) => self.position(newest),
            Err(e) => {
                self.lost(&e);
                return false;
            }
        }
        self.redis.connected(&self.shared.stats, c);
        true
    }

    fn position(&mut self, newest: Option<StreamId>) {
        match (self.last, newest) {
            (None, n) => self.last = Some(n.unwrap_or(StreamId::ZERO)),
            (Some(last), n) if last == StreamId::ZERO || n.is_some_and(|n| n >= last) => {}
            (Some(last), _) => {
                log::warn!(
                    "cluster: bus stream {:?} ends before the last event this node read ({last}): Redis lost its \
                     data; reading the stream from its start",
                    self.shared.cfg.stream
                );
                self.last = Some(StreamId::ZERO);
            }
        }
    }

    fn lost(&mut self, why: &dyn std::fmt::Display) {
        self.redis.lost(&self.shared.stats, why);
    }

    fn read_once(&mut self) {
        let Some(conn) = self.redis.conn.as_mut() else {
            return;
        };
        let from = self.last.unwrap_or(StreamId::ZERO).to_string();
        let reply: RedisResult<Value> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(COUNT)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&self.shared.cfg.stream)
            .arg(&from)
            .query(conn.like());
        let reply = match reply {
            Ok(v) => v,
            Err(e) => return self.lost(&e),
        };
        let mut entries = Vec::new();
        if let Err(why) = collect_entries(&reply, &mut entries) {
            return self.lost(&format!("unexpected XREAD reply: {why}"));
        }
        let mut advanced = false;
        let mut fresh = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            let Some(sid) = event::str_of(id).and_then(StreamId::parse) else {
                self.invalid("entry id is not ms-seq");
                continue;
            };
            if self.last.is_some_and(|l| sid <= l) {
                continue; // a server that repeats itself
            }
            self.last = Some(sid);
            advanced = true;
            let Some(id) = event::str_of(id) else {
                continue;
            };
            if let Some(ev) = self.accept(id, fields) {
                fresh.push(ev);
            }
        }
        if !fresh.is_empty() {
            let handled = self.deliver.deliver(&fresh) as u64;
            let stats = &self.shared.stats;
            stats.events_in_total.fetch_add(handled, Ordering::Relaxed);
            stats
                .events_ignored_total
                .fetch_add(fresh.len() as u64 - handled, Ordering::Relaxed);
        }
        if !advanced && reply != Value::Nil && !matches!(&reply, Value::Array(a) if a.is_empty()) {
            // Entries, but none we could move past: do not spin on them.
            self.lost(&"XREAD returned no usable entry ids");
        }
    }

    /// The event of entry `id` if it is one to deliver: well-formed, of a kind this node knows, from another node
    /// and not seen before (each rejection is counted).
    fn accept<'a>(&mut self, id: &'a str, fields: &'a Value) -> Option<InEvent<'a>> {
        let stats = self.shared.stats.clone();
        let ev = match parse_entry(id, fields) {
            Ok(ev) => ev,
            Err(Rejected::UnknownKind) => {
                stats.events_ignored_total.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(Rejected::Malformed(why)) => {
                self.invalid(why);
                return None;
            }
        };
        if ev.origin == self.shared.origin {
            return None;
        }
        if !self.fresh(ev.origin, ev.seq) {
            stats.events_duplicate_total.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if let Some(written) = StreamId::parse(id) {
            stats.hop_latency.record(since_epoch_ms(written.0));
        }
        Some(ev)
    }

    fn invalid(&mut self, why: &str) {
        self.shared
            .stats
            .events_invalid_total
            .fetch_add(1, Ordering::Relaxed);
        if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            self.last_warn = Some(Instant::now());
            log::warn!(
                "cluster: skipping malformed entry in bus stream {:?}: {why}",
                self.shared.cfg.stream
            );
        }
    }

    /// False for an event already delivered (same origin, sequence number not above the last one seen).
    fn fresh(&mut self, origin: &str, seq: Option<u64>) -> bool {
        let Some(seq) = seq else {
            return true;
        };
        let now = Instant::now();
        if let Some(st) = self.origins.get_mut(origin) {
            st.seen = now;
            if seq <= st.last_seq && st.last_seq - seq < RETRY_WINDOW {
                return false;
            }
            if seq <= st.last_seq {
                self.shared
                    .stats
                    .events_seq_resets_total
                    .fetch_add(1, Ordering::Relaxed);
                if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    self.last_warn = Some(now);
                    log::warn!(
                        "cluster: origin {origin} restarted its sequence at {seq} (was {}); taking it as a new start",
                        st.last_seq
                    );
                }
            } else if seq > st.last_seq + 1 {
                // Counted up to the stream's length: more cannot have been missed in one step, and a bogus
                // number must not make the counter meaningless.
                let gap = (seq - st.last_seq - 1).min(self.shared.cfg.stream_maxlen);
                self.shared
                    .stats
                    .events_missed_total
                    .fetch_add(gap, Ordering::Relaxed);
            }
            st.last_seq = seq;
            return true;
        }
        if self.origins.len() >= MAX_ORIGINS {
            let oldest = self
                .origins
                .iter()
                .min_by_key(|(_, st)| st.seen)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.origins.remove(&k);
            }
        }
        self.origins.insert(
            origin.to_string(),
            OriginState {
                last_seq: seq,
                seen: now,
            },
        );
        true
    }
}

/// Wall-clock time from `ms` (milliseconds since the Unix epoch, a stream id's time) to now; zero if `ms` lies
/// ahead (clock skew between nodes).
fn since_epoch_ms(ms: u64) -> std::time::Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(std::time::Duration::from_millis(ms))
}

/// Flattens an XREAD reply (RESP2 arrays or RESP3 maps) into (id, fields) pairs. Public (re-exported by
/// `cluster`) for the fuzz target that feeds it hostile replies.
pub fn collect_entries<'a>(
    reply: &'a Value,
    out: &mut Vec<(&'a Value, &'a Value)>,
) -> Result<(), &'static str> {
    let mut per_stream = |entries: &'a Value| -> Result<(), &'static str> {
        let Value::Array(entries) = entries else {
            return Err("stream entries are not a list");
        };
        for e in entries {
            match e {
                Value::Array(parts) if parts.len() == 2 => out.push((&parts[0], &parts[1])),
                _ => return Err("entry is not [id, fields]"),
            }
        }
        Ok(())
    };
    match reply {
        Value::Nil => Ok(()),
        Value::Array(streams) => {
            for s in streams {
                match s {
                    Value::Array(kv) if kv.len() == 2 => per_stream(&kv[1])?,
                    _ => return Err("stream is not [key, entries]"),
                }
            }
            Ok(())
        }
        Value::Map(streams) => {
            for (_, entries) in streams {
                per_stream(entries)?;
            }
            Ok(())
        }
        _ => Err("not a list of streams"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn collects_entries_and_rejects_odd_shapes() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("bus"),
            Value::Array(vec![
                Value::Array(vec![bulk("1-0"), Value::Array(vec![])]),
                Value::Array(vec![bulk("2-0"), Value::Array(vec![])]),
            ]),
        ])]);
        let mut out = Vec::new();
        collect_entries(&reply, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        for bad in [
            Value::Int(1),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![bulk("bus"), Value::Int(2)])]),
            Value::Array(vec![Value::Array(vec![
                bulk("bus"),
                Value::Array(vec![Value::Array(vec![bulk("1-0")])]),
            ])]),
        ] {
            let mut out = Vec::new();
            assert!(collect_entries(&bad, &mut out).is_err(), "{bad:?}");
        }
        let mut out = Vec::new();
        collect_entries(&Value::Nil, &mut out).unwrap();
        assert!(out.is_empty());
    }
}
