//! Channel history in Redis (cluster mode): per channel a hash `ws:history:meta:{channel}` (its epoch and last
//! offset) and a stream `ws:history:{channel}` (entry id `OFFSET-1`, field `data`), trimmed with `MAXLEN ~
//! history_size` and expiring `history_ttl` after the last publication. The node that accepts a publish runs
//! one Lua script that gives the offset, stores the publication and appends it to the bus, atomically: so every
//! node, this one included, reads a channel's publications from the bus in offset order, and all agree on
//! offsets and epoch. Each node keeps the publications it read in its in-memory history (src/history/), from
//! which it serves recoveries without a Redis round trip; `GET /api/history` reads Redis.
//!
//! The script touches the bus stream and the channel's keys together, which Redis Cluster does not allow across
//! slots: history in cluster mode needs `cluster.redis_mode` "standalone" or "sentinel" (checked at start-up).

use super::event::{self, now_ms};
use super::query::Reader;
use crate::config::NamespaceConfig;
use crate::history::{ring::new_epoch, Page, Position};
use redis::Value;
use std::sync::Arc;

/// Gives the offset (a new epoch when the channel has no history: never published, expired or deleted — then
/// an old stream is dropped), stores the publication, appends the bus event. Returns {offset, epoch}.
const PUBLISH: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'top', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], offset .. '-1', 'data', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'origin', ARGV[6], 'node', ARGV[7], 'kind', 'channel',
  'target', ARGV[8], 'data', ARGV[4], 'ts', ARGV[9], 'offset', offset, 'epoch', epoch)
return {offset, epoch}
";

pub fn meta_key(channel: &str) -> String {
    format!("ws:history:meta:{channel}")
}

pub fn stream_key(channel: &str) -> String {
    format!("ws:history:{channel}")
}

impl Reader {
    /// Publishes `data` to `channel` with history (an API worker thread): the offset it got. The publication
    /// reaches this node's connections through the bus like every other node's.
    pub fn publish_history(
        &mut self,
        channel: &str,
        ns: &NamespaceConfig,
        data: &str,
    ) -> Result<u64, String> {
        let s = self.shared.clone();
        // By hash first (no script text per publish); Redis answers NOSCRIPT until it has seen the script once.
        let reply = match self.one(publish_cmd(
            "EVALSHA",
            &publish_sha(),
            channel,
            ns,
            data,
            &s,
        )) {
            Err(e) if e.contains("NOSCRIPT") => {
                self.one(publish_cmd("EVAL", PUBLISH, channel, ns, data, &s))
            }
            other => other,
        };
        match reply? {
            Value::Array(v) => match v.first() {
                Some(Value::Int(offset)) if *offset > 0 => Ok(*offset as u64),
                _ => Err("unexpected reply to the history script".into()),
            },
            other => Err(format!("unexpected reply to the history script: {other:?}")),
        }
    }

    /// Up to `limit` publications of `channel` after offset `since`, from Redis.
    pub fn history_page(
        &mut self,
        channel: &str,
        since: u64,
        limit: usize,
    ) -> Result<Page, String> {
        let meta = self.one(
            redis::cmd("HMGET")
                .arg(meta_key(channel))
                .arg("epoch")
                .arg("top")
                .clone(),
        )?;
        let (epoch, top) = match &meta {
            Value::Array(v) if v.len() == 2 => (
                event::str_of(&v[0]).unwrap_or("").to_string(),
                event::str_of(&v[1])
                    .and_then(|t| t.parse::<u64>().ok())
                    .unwrap_or(0),
            ),
            _ => return Err("unexpected reply to HMGET".into()),
        };
        let entries = self.one(
            redis::cmd("XRANGE")
                .arg(stream_key(channel))
                .arg(format!("{}-0", since.saturating_add(1)))
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .clone(),
        )?;
        let mut items = Vec::new();
        if let Value::Array(list) = &entries {
            for entry in list {
                let Value::Array(pair) = entry else { continue };
                let (Some(id), Some(Value::Array(fields))) =
                    (pair.first().and_then(event::str_of), pair.get(1))
                else {
                    continue;
                };
                let Some(offset) = id.split_once('-').and_then(|(o, _)| o.parse::<u64>().ok())
                else {
                    continue;
                };
                let data = fields
                    .chunks_exact(2)
                    .find(|kv| event::bytes_of(&kv[0]) == Some(b"data".as_slice()))
                    .and_then(|kv| event::bytes_of(&kv[1]));
                // Stored by the script from API-checked JSON; anything else in the key is skipped.
                if let Some(d) = data
                    .filter(|d| serde_json::from_slice::<&serde_json::value::RawValue>(d).is_ok())
                {
                    items.push((offset, d.to_vec()));
                }
            }
        }
        let complete = since >= top
            || items
                .first()
                .is_some_and(|(o, _)| *o == since.saturating_add(1));
        Ok(Page {
            position: Position {
                offset: top,
                epoch: Arc::from(epoch),
            },
            complete,
            items,
        })
    }
}

/// The history script's call: `verb` is EVAL (with the script) or EVALSHA (with its hash).
fn publish_cmd(
    verb: &str,
    script: &str,
    channel: &str,
    ns: &NamespaceConfig,
    data: &str,
    s: &super::Shared,
) -> redis::Cmd {
    let mut cmd = redis::cmd(verb);
    cmd.arg(script)
        .arg(3)
        .arg(meta_key(channel))
        .arg(stream_key(channel))
        .arg(&s.cfg.stream)
        .arg(&*new_epoch())
        .arg(ns.history_size)
        .arg(ns.history_ttl)
        .arg(data)
        .arg(s.cfg.stream_maxlen)
        // Not this instance's own origin, so its bus reader delivers the event here too (in offset order).
        .arg(history_origin(&s.origin))
        .arg(s.node_id)
        .arg(channel)
        .arg(now_ms());
    cmd
}

/// SHA-1 of the history script in hex, as EVALSHA wants it.
fn publish_sha() -> String {
    use sha1::{Digest, Sha1};
    Sha1::digest(PUBLISH.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The origin of history events in the bus: derived from the instance's, never equal to it.
fn history_origin(origin: &str) -> String {
    format!("{origin}.history")
}
