//! Node id leases and the heartbeat. A node owns `wsgate:node:{id}` (a JSON health record with a TTL of
//! `cluster.node_lease_ttl`) and renews it every third of the TTL; the id feeds the socket ids, so no two live
//! nodes may share one. Claim, renewal and release are one Lua script each, so they are atomic: a node only ever
//! overwrites or deletes a record that names its own instance (`origin`).
//!
//! Redis losing its data loses the leases while their holders live on. So that a node starting right then does
//! not lease an id a live node still uses: `wsgate:node-ids:since` marks (in Redis's clock) when the records were
//! last found missing; every live node checks it every [`PROBE_EVERY`] and re-asserts its lease at once when it
//! had to be re-created (or its connection was lost), and a starting node waits until the mark is
//! `cluster.node_id_quarantine` old before it leases the lowest free id. A live node that finds its id taken all
//! the same opens no new connections until it holds it again, and says so (log, `node_id_taken`).

use super::conn::{self, Reconnecting, RedisConn};
use super::event::now_ms;
use super::stats::Link;
use super::Shared;
use redis::RedisResult;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Node ids are 10 bits (Snowflake socket ids).
pub const MAX_NODE_ID: u16 = 1023;
pub const NODE_KEY_PREFIX: &str = "wsgate:node:";

/// Sets KEYS[1] = ARGV[2] with PX ARGV[3] if it is free or holds a record of instance ARGV[1]. 1 = held by us.
const CLAIM: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then
  local ok, rec = pcall(cjson.decode, v)
  if not ok or type(rec) ~= 'table' or rec['origin'] ~= ARGV[1] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// Deletes KEYS[1] if it holds a record of instance ARGV[1].
const RELEASE: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, rec = pcall(cjson.decode, v)
if ok and type(rec) == 'table' and rec['origin'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// When the id records were last found missing, in Redis's clock (ms): see the module comment.
pub const IDS_SINCE_KEY: &str = "wsgate:node-ids:since";
/// A live node checks the mark (and with it its connection) this often.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The age in ms of the mark KEYS[1], created now (age 0) when it is missing or in the future.
const IDS_AGE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = tonumber(redis.call('GET', KEYS[1]))
if not since or since > now then
  redis.call('SET', KEYS[1], now)
  return 0
end
return now - since
"#;

/// The age of the id records' mark (0: it was missing, so Redis lost the leases or this is a new cluster).
pub(crate) fn ids_age_ms(conn: &mut RedisConn) -> RedisResult<u64> {
    let age: i64 = redis::cmd("EVAL")
        .arg(IDS_AGE)
        .arg(1)
        .arg(IDS_SINCE_KEY)
        .query(conn.like())?;
    Ok(age.max(0) as u64)
}

/// Waits until the id records' mark is `quarantine` old, so live nodes have re-asserted their ids before this
/// node picks a free one.
pub(crate) fn quarantine(conn: &mut RedisConn, quarantine: Duration) -> RedisResult<()> {
    let q = quarantine.as_millis() as u64;
    let age = ids_age_ms(conn)?;
    if age >= q {
        return Ok(());
    }
    log::info!(
        "cluster: node id records are {age} ms old (Redis lost its data, or a new cluster); waiting {} ms \
         (cluster.node_id_quarantine) so live nodes re-assert their ids first",
        q - age
    );
    std::thread::sleep(Duration::from_millis(q - age));
    // The connection may have idled past a timeout of a proxy: one more command shows it is still fine.
    ids_age_ms(conn).map(|_| ())
}

pub fn node_key(id: u16) -> String {
    format!("{NODE_KEY_PREFIX}{id}")
}

/// What a node record says about its node (also the health record other tools can read).
pub(crate) struct NodeInfo {
    pub ws: std::net::SocketAddr,
    pub api: std::net::SocketAddr,
    pub started_ms: u64,
}

pub(crate) fn record(
    node_id: u16,
    origin: &str,
    info: &NodeInfo,
    connections: usize,
    lease_ttl_ms: u64,
) -> String {
    serde_json::json!({
        "node_id": node_id,
        "origin": origin,
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "ws": info.ws.to_string(),
        "api": info.api.to_string(),
        "started_ms": info.started_ms,
        "heartbeat_ms": now_ms(),
        "lease_ttl_ms": lease_ttl_ms,
        "connections": connections,
    })
    .to_string()
}

/// Claims or renews `id` for `origin`. Ok(false): another live instance holds it.
pub(crate) fn claim(
    conn: &mut RedisConn,
    id: u16,
    origin: &str,
    record: &str,
    ttl_ms: u64,
) -> RedisResult<bool> {
    let r: i64 = redis::cmd("EVAL")
        .arg(CLAIM)
        .arg(1)
        .arg(node_key(id))
        .arg(origin)
        .arg(record)
        .arg(ttl_ms)
        .query(conn.like())?;
    Ok(r == 1)
}

/// Claims the lowest free id. Ok(None): all ids are held.
pub(crate) fn claim_any(
    conn: &mut RedisConn,
    origin: &str,
    record: impl Fn(u16) -> String,
    ttl_ms: u64,
) -> RedisResult<Option<u16>> {
    for id in 0..=MAX_NODE_ID {
        if claim(conn, id, origin, &record(id), ttl_ms)? {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// The record currently stored for `id` (for error messages).
pub(crate) fn holder(conn: &mut RedisConn, id: u16) -> String {
    match redis::cmd("GET")
        .arg(node_key(id))
        .query::<Option<String>>(conn.like())
    {
        Ok(Some(v)) => v.chars().take(300).collect(),
        Ok(None) => "nobody (free now)".into(),
        Err(e) => format!("unknown ({})", super::one_line(&e)),
    }
}

pub(crate) fn release(conn: &mut RedisConn, id: u16, origin: &str) -> RedisResult<bool> {
    let r: i64 = redis::cmd("EVAL")
        .arg(RELEASE)
        .arg(1)
        .arg(node_key(id))
        .arg(origin)
        .query(conn.like())?;
    Ok(r == 1)
}

/// The heartbeat thread: renews the lease (and with it the health record) every third of its TTL; on shutdown
/// deletes it so the id is free at once. (Session sync and sweeping have their own thread: src/cluster/state.rs.)
pub(crate) fn run_heartbeat(shared: Arc<Shared>, connections: Arc<AtomicUsize>) {
    let ttl_ms = shared.cfg.node_lease_ttl * 1000;
    let every = Duration::from_millis(ttl_ms / 3);
    let mut redis = Reconnecting::new(Link::Heartbeat);
    // Renew at once: start-up may have been a while ago, or may not have reached Redis at all (pinned id).
    let mut due = Instant::now();
    let mut probe_due = Instant::now();
    let mut warned_conflict = false;
    while !shared.stop.load(Ordering::Relaxed) {
        let wait = due
            .min(probe_due)
            .saturating_duration_since(Instant::now())
            .max(redis.backoff_remaining());
        if !wait.is_zero() {
            conn::sleep_unless(&shared.stop, wait.min(Duration::from_millis(200)));
            continue;
        }
        if redis.conn.is_none() {
            if !redis.connect(&shared) {
                continue;
            }
            // After any outage renew at once: if Redis restarted without its data, our key is gone and a
            // starting node could take our id.
            due = Instant::now();
        }
        let Some(c) = redis.conn.as_mut() else {
            continue;
        };
        if Instant::now() >= probe_due {
            probe_due = Instant::now() + PROBE_EVERY;
            match ids_age_ms(c) {
                Ok(0) => due = Instant::now(), // the records were lost: re-assert before anyone claims ours
                Ok(_) => {}
                Err(e) => {
                    redis.lost(&shared.stats, &e);
                    continue;
                }
            }
        }
        if Instant::now() < due {
            continue;
        }
        let rec = record(
            shared.node_id,
            &shared.origin,
            &shared.info,
            connections.load(Ordering::Relaxed),
            ttl_ms,
        );
        match claim(c, shared.node_id, &shared.origin, &rec, ttl_ms) {
            Ok(true) => {
                shared.stats.lease_held.store(true, Ordering::Relaxed);
                shared.stats.node_id_taken.store(false, Ordering::Relaxed);
                if warned_conflict {
                    log::info!(
                        "cluster: node id {} lease held again; new connections are accepted again",
                        shared.node_id
                    );
                    warned_conflict = false;
                }
                due = Instant::now() + every;
            }
            Ok(false) => {
                shared.stats.lease_held.store(false, Ordering::Relaxed);
                shared.stats.node_id_taken.store(true, Ordering::Relaxed);
                if !warned_conflict {
                    warned_conflict = true;
                    log::error!(
                        "cluster: node id {} is leased by another instance ({}); this node opens no new \
                         connections (their socket ids could collide) until the id is its own again — give every \
                         node its own server.node_id or leave it 0",
                        shared.node_id,
                        holder(c, shared.node_id)
                    );
                }
                // Retry soon: the other holder may be a node that started during a Redis outage and leaves.
                due = Instant::now() + every.min(Duration::from_secs(2));
            }
            Err(e) => redis.lost(&shared.stats, &e),
        }
    }
    if let Some(c) = redis.conn.as_mut() {
        if shared.stats.lease_held.load(Ordering::Relaxed) {
            match release(c, shared.node_id, &shared.origin) {
                Ok(_) => shared.stats.lease_held.store(false, Ordering::Relaxed),
                Err(e) => log::warn!(
                    "cluster: could not release node id lease: {}",
                    super::one_line(&e)
                ),
            }
        }
    }
}
