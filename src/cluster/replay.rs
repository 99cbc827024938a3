//! The replay thread: reads the user messages a connecting client missed and records clients' acks. Owns one Redis
//! connection; no reactor ever waits for it.
//!
//! - Replay: for a new connection of user `u`, reads `stream:notify:u` after the client's `since` (or after the id
//!   its device acknowledged last, kept in `ws:ack:u`; everything kept when it never acknowledged), skipping
//!   messages for another device or tenant and copies of one push (same trace: a retried append), and hands the
//!   frames to the connection's reactor, which sends them before the live messages it held back meanwhile.
//! - Acks: merged per user and device (only the highest id matters) and written every [`ACK_FLUSH`] with a script
//!   that never moves a stored id backwards. An ack beyond the user's newest message is refused (the connection
//!   gets `ok:false`) rather than stored: it would hide every later push from that device's replays. A replay
//!   starts after the higher of the stored ack and one still waiting here, so a device that acks and reconnects at
//!   once is not sent again what it acknowledged; a stored ack beyond the newest message (Redis lost the stream,
//!   or one stored before acks were checked) counts as none.

use super::conn::{self, Reconnecting, Reply};
use super::event;
use super::keys;
use super::stats::Link;
use super::{Deliver, Shared};
use crate::gateway::cluster_link::{Ack, ReplayRequest, Since};
use crate::gateway::frames::user_push;
use crate::gateway::ReplayOutcome;
use crate::ids::StreamId;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::Value;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Entries per XRANGE page.
const PAGE: usize = 256;
/// Bytes of replayed frames per chunk handed to a reactor (at least one message): well below
/// `ws.max_outbound_bytes`, so a client that reads its replay is never taken for a slow consumer. The reactor asks
/// for the next chunk (after the last id of this one) when it has queued this one.
pub const CHUNK_BYTES: usize = 256 << 10;
/// Merged acks are written this often.
pub const ACK_FLUSH: Duration = Duration::from_millis(100);
/// Distinct user/device pairs with a pending ack at most; more are written at once.
const ACK_PENDING_MAX: usize = 10_000;
/// An idle connection is pinged this often, so a dead one is noticed before a client needs it.
const IDLE_PING: Duration = Duration::from_secs(1);

/// Stores ARGV[2] as field ARGV[1] of KEYS[1] unless it holds a higher stream id; refreshes the TTL (ARGV[3] ms).
const ACK_SCRIPT: &str = r#"
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms then return nil end
  return tonumber(ms), tonumber(seq)
end
local nm, ns = parse(ARGV[2])
if not nm then return -1 end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local cm, cs = parse(cur)
  if cm and (cm > nm or (cm == nm and cs >= ns)) then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

struct Replayer {
    shared: Arc<Shared>,
    deliver: Arc<dyn Deliver>,
    redis: Reconnecting,
    last_io: Instant,
    /// Pending acks per (user, device): the highest id and the connection that sent it.
    acks: HashMap<(String, String), (StreamId, u64)>,
    acks_since: Option<Instant>,
}

pub(crate) fn run(
    shared: Arc<Shared>,
    deliver: Arc<dyn Deliver>,
    requests: Receiver<ReplayRequest>,
    acks: Receiver<Ack>,
) {
    let mut r = Replayer {
        shared,
        deliver,
        redis: Reconnecting::new(Link::Replay),
        last_io: Instant::now(),
        acks: HashMap::new(),
        acks_since: None,
    };
    while !r.shared.stop.load(Ordering::Relaxed) {
        while let Ok(ack) = acks.try_recv() {
            r.merge(ack);
        }
        if r.acks.len() >= ACK_PENDING_MAX || r.acks_since.is_some_and(|t| t.elapsed() >= ACK_FLUSH)
        {
            r.flush_acks();
        }
        match requests.recv_timeout(Duration::from_millis(20)) {
            Ok(req) => {
                // An ack sent before this connection opened is already queued: the replay must see it.
                while let Ok(ack) = acks.try_recv() {
                    r.merge(ack);
                }
                r.replay(req)
            }
            Err(RecvTimeoutError::Timeout) => {
                if r.redis.conn.is_some() && r.last_io.elapsed() >= IDLE_PING {
                    r.ping();
                } else if r.redis.conn.is_none() {
                    r.connect();
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // Shutdown: one attempt for the acks still pending.
    while let Ok(ack) = acks.try_recv() {
        r.merge(ack);
    }
    if !r.acks.is_empty() {
        r.flush_acks();
    }
}

impl Replayer {
    fn connect(&mut self) -> bool {
        if self.redis.conn.is_some() {
            return true;
        }
        if !self.redis.connect(&self.shared) {
            return false;
        }
        self.last_io = Instant::now();
        true
    }

    fn lost(&mut self, why: &dyn std::fmt::Display) {
        self.redis.lost(&self.shared.stats, why);
    }

    fn ping(&mut self) {
        let Some(c) = self.redis.conn.as_mut() else {
            return;
        };
        self.last_io = Instant::now();
        if let Err(e) = redis::cmd("PING").query::<Value>(c.like()) {
            self.lost(&e);
        }
    }

    fn merge(&mut self, ack: Ack) {
        let slot = self
            .acks
            .entry((ack.user, ack.device))
            .or_insert((ack.id, ack.sid));
        if ack.id > slot.0 {
            *slot = (ack.id, ack.sid);
        }
        self.acks_since.get_or_insert_with(Instant::now);
    }

    fn flush_acks(&mut self) {
        let stats = self.shared.stats.clone();
        if !self.connect() {
            // Redis down: keep them (bounded by ACK_PENDING_MAX: beyond, they are dropped).
            if self.acks.len() >= ACK_PENDING_MAX {
                stats
                    .acks_dropped_total
                    .fetch_add(self.acks.len() as u64, Ordering::Relaxed);
                self.acks.clear();
                self.acks_since = None;
            }
            return;
        }
        let ttl_ms = self.shared.cfg.offline_max_age.saturating_mul(1000);
        let all: Vec<((String, String), (StreamId, u64))> = self.acks.drain().collect();
        self.acks_since = None;
        // The newest message of each user: an ack beyond it is refused.
        let newest_reads: Vec<redis::Cmd> =
            all.iter().map(|((user, _), _)| newest_cmd(user)).collect();
        let newest = match self.redis.conn.as_mut().map(|c| c.exec(&newest_reads)) {
            Some(Ok(replies)) => replies,
            Some(Err(e)) => {
                self.acks.extend(all);
                self.acks_since = Some(Instant::now());
                return self.lost(&e);
            }
            None => return self.acks.extend(all),
        };
        let mut pending = Vec::with_capacity(all.len());
        for (((user, device), (id, sid)), reply) in all.into_iter().zip(newest) {
            match reply {
                Reply::Value(v) if newest_of(&v).is_none_or(|n| id > n) => {
                    stats.acks_refused_total.fetch_add(1, Ordering::Relaxed);
                    let raw = format!("\"{id}\"");
                    let raw = RawValue::from_string(raw).ok();
                    let why = "ack id beyond the newest message of this user; not stored";
                    self.deliver
                        .to_sid(sid, crate::protocol::reply(raw.as_deref(), Some(why)));
                }
                _ => pending.push(((user, device), id)),
            }
        }
        let cmds: Vec<redis::Cmd> = pending
            .iter()
            .map(|((user, device), id)| {
                let mut c = redis::cmd("EVAL");
                c.arg(ACK_SCRIPT)
                    .arg(1)
                    .arg(keys::ack(user))
                    .arg(device)
                    .arg(id.to_string())
                    .arg(ttl_ms);
                c
            })
            .collect();
        let Some(c) = self.redis.conn.as_mut() else {
            return;
        };
        self.last_io = Instant::now();
        match c.exec(&cmds) {
            Ok(replies) => {
                for r in replies {
                    match r {
                        Reply::Value(_) => stats.acks_written_total.fetch_add(1, Ordering::Relaxed),
                        Reply::Refused { .. } => {
                            stats.acks_dropped_total.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }
            Err(e) => {
                // Keep them for the next attempt (rewriting an ack is harmless; who sent it no longer matters).
                for (k, id) in pending {
                    self.acks.insert(k, (id, 0));
                }
                self.acks_since = Some(Instant::now());
                self.lost(&e);
            }
        }
    }

    fn replay(&mut self, req: ReplayRequest) {
        let sid = req.sid;
        let started = Instant::now();
        let read = self.read(&req);
        self.shared.stats.replay_latency.record(started.elapsed());
        let outcome = match read {
            Ok(o) => {
                self.shared
                    .stats
                    .replays_total
                    .fetch_add(1, Ordering::Relaxed);
                o
            }
            Err(why) => {
                self.shared
                    .stats
                    .replay_failures_total
                    .fetch_add(1, Ordering::Relaxed);
                ReplayOutcome {
                    error: Some(why),
                    ..Default::default()
                }
            }
        };
        self.deliver.replay_done(sid, outcome);
    }

    /// Reads what `req`'s user missed. Err: why it could not be read.
    fn read(&mut self, req: &ReplayRequest) -> Result<ReplayOutcome, String> {
        if !self.connect() {
            return Err("Redis unavailable; live messages follow".into());
        }
        let key = keys::notify(&req.user);
        let device = req.device.as_deref().unwrap_or("");
        let floor = match req.since {
            Since::After(id) => id,
            Since::Stored => {
                let stored =
                    match self.query(redis::cmd("HGET").arg(keys::ack(&req.user)).arg(device))? {
                        Value::Nil => StreamId::ZERO,
                        v => event::str_of(&v)
                            .and_then(StreamId::parse)
                            .unwrap_or(StreamId::ZERO),
                    };
                let waiting = self
                    .acks
                    .get(&(req.user.clone(), device.to_string()))
                    .map_or(StreamId::ZERO, |a| a.0);
                let newest = newest_of(&self.query(&newest_cmd(&req.user))?);
                // An ack beyond the newest message acknowledges nothing that exists.
                [stored, waiting]
                    .into_iter()
                    .filter(|&id| newest.is_some_and(|n| id <= n))
                    .max()
                    .unwrap_or(StreamId::ZERO)
            }
        };
        let mut bytes = 0;
        let mut out = ReplayOutcome {
            floor: Some(floor),
            ..Default::default()
        };
        let mut traces: HashSet<String> = HashSet::new();
        let mut after = floor;
        'pages: loop {
            let reply = self.query(
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(PAGE),
            )?;
            let Value::Array(entries) = reply else {
                return Err("unexpected XRANGE reply".into());
            };
            let n = entries.len();
            for e in &entries {
                if bytes >= CHUNK_BYTES {
                    out.more = true; // the rest comes in the next chunk
                    break 'pages;
                }
                let Value::Array(parts) = e else {
                    return Err("unexpected XRANGE entry".into());
                };
                let Some(id) = parts
                    .first()
                    .and_then(event::str_of)
                    .and_then(StreamId::parse)
                else {
                    return Err("XRANGE entry without an id".into());
                };
                if id <= after {
                    return Err("XRANGE did not advance".into());
                }
                after = id;
                let Some(fields) = parts.get(1) else { continue };
                let f = Fields::of(fields);
                let Some(data) = f
                    .data
                    .filter(|d| serde_json::from_str::<&RawValue>(d).is_ok())
                else {
                    continue; // not something we wrote
                };
                if f.device.is_some_and(|d| !d.is_empty() && d != device)
                    || f.tenant
                        .is_some_and(|t| !t.is_empty() && Some(t) != req.tenant.as_deref())
                {
                    continue;
                }
                if let Some(t) = f.trace.filter(|t| !t.is_empty()) {
                    if !traces.insert(t.to_string()) {
                        continue; // the same push appended twice (a retried write)
                    }
                }
                let frame = user_push(&req.user, data, Some(id), true, f.ack);
                bytes += frame.len();
                out.frames.push(frame);
                out.last = Some(id);
            }
            if n < PAGE {
                break;
            }
        }
        Ok(out)
    }

    fn query(&mut self, cmd: &redis::Cmd) -> Result<Value, String> {
        let Some(c) = self.redis.conn.as_mut() else {
            return Err("Redis unavailable".into());
        };
        self.last_io = Instant::now();
        match c.exec(std::slice::from_ref(cmd)) {
            Ok(mut r) => match r.pop() {
                Some(Reply::Value(v)) => Ok(v),
                Some(Reply::Refused { code, details }) => {
                    self.shared
                        .stats
                        .redis_errors_total
                        .fetch_add(1, Ordering::Relaxed);
                    if conn::reconnect_code(&code) {
                        self.lost(&format!("{code} {details}"));
                    }
                    Err(format!("Redis refused the read ({code} {details})"))
                }
                None => Err("no reply".into()),
            },
            Err(e) => {
                let why = super::one_line(&e);
                self.lost(&e);
                Err(format!("Redis unavailable ({why})"))
            }
        }
    }
}

/// Reads the id of the newest message of `user` (`XREVRANGE ... COUNT 1`).
fn newest_cmd(user: &str) -> redis::Cmd {
    let mut c = redis::cmd("XREVRANGE");
    c.arg(keys::notify(user))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1);
    c
}

/// The id in a reply to [`newest_cmd`]; None when the user has no messages.
fn newest_of(v: &Value) -> Option<StreamId> {
    let Value::Array(entries) = v else {
        return None;
    };
    let Value::Array(parts) = entries.first()? else {
        return None;
    };
    parts
        .first()
        .and_then(event::str_of)
        .and_then(StreamId::parse)
}

/// The fields of a notify stream entry this thread uses.
#[derive(Default)]
struct Fields<'a> {
    data: Option<&'a str>,
    device: Option<&'a str>,
    tenant: Option<&'a str>,
    trace: Option<&'a str>,
    /// Stored with `"ack": true`: replayed with it, so the client acks it.
    ack: bool,
}

impl<'a> Fields<'a> {
    fn of(v: &'a Value) -> Fields<'a> {
        let mut f = Fields::default();
        let mut visit = |k: &'a Value, v: &'a Value| {
            let (Some(k), Some(v)) = (event::bytes_of(k), event::str_of(v)) else {
                return;
            };
            match k {
                b"data" => f.data = Some(v),
                b"device" => f.device = Some(v),
                b"tenant" => f.tenant = Some(v),
                b"trace" => f.trace = Some(v),
                b"ack" => f.ack = v == "1",
                _ => {}
            }
        };
        match v {
            Value::Array(items) => {
                for pair in items.chunks_exact(2) {
                    visit(&pair[0], &pair[1]);
                }
            }
            Value::Map(pairs) => {
                for (k, v) in pairs {
                    visit(k, v);
                }
            }
            _ => {}
        }
        f
    }
}
