//! Session state in Redis (the seed's layout), kept by the `cluster-state` thread — never by a reactor:
//!
//! - `ws:client:{sid}` hash: `user`, `channels` (JSON list), `node`, `device`, `tenant`, `connected_ms`;
//! - `ws:user:clients:{uid}` and `ws:guid:clients:{channel}` sorted sets: socket id → last-seen ms;
//! - `ws:clients` sorted set: every session of every node, socket id → last-seen ms (where sweepers look).
//!
//! Reactors hand state changes (open, subscribe, unsubscribe, close) to a bounded queue ([`super::link`]); this
//! thread applies them to its table of the node's sessions and writes what changed in one pipeline per round.
//! Last-seen is the time the node last confirmed the session open (the reactors close connections that stop
//! beating, so an open session is a live one); client beats only touch reactor memory. Every
//! `cluster.sync_interval` one `ZADD` per key (with many members) refreshes the last-seen of all sessions of the
//! node, so Redis writes per second are (sessions + users + channels) / sync_interval, whatever the heartbeat rate.
//!
//! A node that dies leaves its entries; their last-seen stops moving. Every `cluster.sweep_interval` each node
//! removes sessions whose last-seen is older than [`stale_after_ms`] (3 × sync interval + lease TTL): idempotent
//! removals, so several sweepers at once do no harm. A live node whose entries were removed anyway (it could not
//! reach Redis for that long) notices at its next sync (`ZADD` reports them as new) and rewrites its state.
//!
//! A state change that did not fit the queue is counted; the thread then rebuilds its table from a snapshot of
//! the reactors (changes queued before the snapshot are recognised by their per-reactor sequence numbers) and
//! rewrites the state.

use super::conn::{Reconnecting, Reply};
use super::event::{self, now_ms};
use super::keys;
use super::stats::Link;
use super::{Deliver, Shared};
use crate::gateway::cluster_link::{Change, StateEvent};
use crate::gateway::Answer;
use crate::ids::sid;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Commands per round trip.
const CHUNK: usize = 1000;
/// Members per `ZADD` of a sync.
const MEMBERS_PER_ZADD: usize = 512;
/// Stale sessions handled per sweep page, and pages per sweep.
const SWEEP_PAGE: usize = 500;
const SWEEP_PAGES: usize = 20;
/// Pending removals kept while Redis is unreachable; beyond, they are left to the sweepers.
const PENDING_MAX: usize = 100_000;
/// State changes applied per round.
const EVENTS_PER_ROUND: usize = 20_000;

/// Age of last-seen after which a session counts as left behind by a dead node: 3 × `sync_interval` +
/// `node_lease_ttl`. Readers (presence) ignore older entries; sweepers remove them.
pub fn stale_after_ms(cfg: &super::ClusterConfig) -> u64 {
    (3 * cfg.sync_interval + cfg.node_lease_ttl) * 1000
}

/// What this node knows of one of its sessions.
struct Sess {
    user: Option<String>,
    device: Option<String>,
    tenant: Option<String>,
    channels: Vec<String>,
}

/// A session that closed, with what is needed to remove its entries.
struct Gone {
    sid: u64,
    user: Option<String>,
    channels: Vec<String>,
}

struct StateThread {
    shared: Arc<Shared>,
    deliver: Arc<dyn Deliver>,
    lost: Arc<AtomicBool>,
    redis: Reconnecting,
    table: HashMap<u64, Sess>,
    /// Sessions whose hash and memberships must be (re)written.
    dirty: HashSet<u64>,
    /// Channel memberships left (sid, channel).
    left: Vec<(u64, String)>,
    closed: Vec<Gone>,
    /// Per reactor: changes with a sequence number up to this are already in the table (from a snapshot).
    floors: HashMap<usize, u64>,
    /// Rewrite every session (after an outage, or when a sync found entries missing).
    full_rewrite: bool,
    next_sync: Instant,
    next_sweep: Instant,
    last_io: Instant,
}

pub(crate) fn run(
    shared: Arc<Shared>,
    deliver: Arc<dyn Deliver>,
    rx: Receiver<StateEvent>,
    lost: Arc<AtomicBool>,
) {
    let mut st = StateThread::new(shared, deliver, lost);
    while !st.shared.stop.load(Ordering::Relaxed) {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(ev) => {
                st.apply(ev);
                for ev in rx.try_iter().take(EVENTS_PER_ROUND) {
                    st.apply(ev);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if st.lost.load(Ordering::Relaxed) {
            st.rebuild();
        }
        st.round();
    }
    // Shutdown: the reactors have closed every connection; one bounded attempt to remove them.
    for ev in rx.try_iter() {
        st.apply(ev);
    }
    if st.connect() {
        st.flush();
    }
}

impl StateThread {
    fn new(shared: Arc<Shared>, deliver: Arc<dyn Deliver>, lost: Arc<AtomicBool>) -> StateThread {
        let sync_every = Duration::from_secs(shared.cfg.sync_interval);
        // Nodes started together should not sweep in lockstep.
        let jitter = Duration::from_millis(super::random_u64() % 1000);
        StateThread {
            deliver,
            lost,
            redis: Reconnecting::new(Link::State),
            table: HashMap::new(),
            dirty: HashSet::new(),
            left: Vec::new(),
            closed: Vec::new(),
            floors: HashMap::new(),
            full_rewrite: false,
            next_sync: Instant::now() + sync_every,
            next_sweep: Instant::now() + Duration::from_secs(shared.cfg.sweep_interval) + jitter,
            last_io: Instant::now(),
            shared,
        }
    }

    fn connect(&mut self) -> bool {
        if self.redis.conn.is_some() {
            return true;
        }
        if !self.redis.connect(&self.shared) {
            return false;
        }
        // Whatever happened while we were away (sweeps, a Redis restart), rewrite it all.
        self.full_rewrite = true;
        true
    }

    fn lost_conn(&mut self, why: &dyn std::fmt::Display) {
        self.redis.lost(&self.shared.stats, why);
    }

    fn apply(&mut self, ev: StateEvent) {
        if self.floors.get(&ev.reactor).is_some_and(|&f| ev.seq <= f) {
            return; // already in the snapshot the table was rebuilt from
        }
        match ev.change {
            Change::Open {
                sid,
                user,
                device,
                tenant,
            } => {
                self.table.insert(
                    sid,
                    Sess {
                        user,
                        device,
                        tenant,
                        channels: Vec::new(),
                    },
                );
                self.dirty.insert(sid);
            }
            Change::Subscribe { sid, channel } => {
                if let Some(s) = self.table.get_mut(&sid) {
                    if !s.channels.contains(&channel) {
                        s.channels.push(channel);
                        self.dirty.insert(sid);
                    }
                }
            }
            Change::Unsubscribe { sid, channel } => {
                if let Some(s) = self.table.get_mut(&sid) {
                    s.channels.retain(|c| *c != channel);
                    self.dirty.insert(sid);
                    if self.left.len() < PENDING_MAX {
                        self.left.push((sid, channel));
                    }
                }
            }
            Change::Close { sid } => {
                if let Some(s) = self.table.remove(&sid) {
                    self.dirty.remove(&sid);
                    if self.closed.len() < PENDING_MAX {
                        self.closed.push(Gone {
                            sid,
                            user: s.user,
                            channels: s.channels,
                        });
                    }
                }
            }
        }
        self.shared
            .stats
            .sessions_tracked
            .store(self.table.len(), Ordering::Relaxed);
    }

    /// State changes were dropped: rebuild the table from what the reactors hold now.
    fn rebuild(&mut self) {
        self.lost.store(false, Ordering::Relaxed);
        let Some(answers) = self.deliver.snapshot() else {
            self.lost.store(true, Ordering::Relaxed); // a reactor did not answer: try again next round
            return;
        };
        let mut table = HashMap::new();
        for a in answers {
            if let Answer::Snapshot {
                reactor,
                seq,
                sessions,
            } = a
            {
                self.floors.insert(reactor, seq);
                for s in sessions {
                    table.insert(
                        s.sid,
                        Sess {
                            user: s.user,
                            device: s.device,
                            tenant: s.tenant,
                            channels: s.channels,
                        },
                    );
                }
            }
        }
        for (sid, old) in self.table.drain() {
            match table.get(&sid) {
                None => {
                    if self.closed.len() < PENDING_MAX {
                        self.closed.push(Gone {
                            sid,
                            user: old.user,
                            channels: old.channels,
                        });
                    }
                }
                Some(new) => {
                    for c in old.channels {
                        if !new.channels.contains(&c) && self.left.len() < PENDING_MAX {
                            self.left.push((sid, c));
                        }
                    }
                }
            }
        }
        self.table = table;
        self.dirty = self.table.keys().copied().collect();
        self.shared
            .stats
            .state_resyncs_total
            .fetch_add(1, Ordering::Relaxed);
        self.shared
            .stats
            .sessions_tracked
            .store(self.table.len(), Ordering::Relaxed);
        log::warn!(
            "cluster: session state changes were dropped (queue full); rebuilt from the reactors ({} sessions)",
            self.table.len()
        );
    }

    fn round(&mut self) {
        if !self.connect() {
            return;
        }
        if self.full_rewrite {
            self.full_rewrite = false;
            self.dirty = self.table.keys().copied().collect();
            if !self.table.is_empty() {
                self.shared
                    .stats
                    .state_resyncs_total
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.flush();
        let now = Instant::now();
        if now >= self.next_sync {
            self.next_sync = now + Duration::from_secs(self.shared.cfg.sync_interval);
            self.sync();
        }
        if now >= self.next_sweep {
            self.next_sweep = now + Duration::from_secs(self.shared.cfg.sweep_interval);
            self.sweep();
        }
        if self.redis.conn.is_some() && self.last_io.elapsed() >= Duration::from_secs(1) {
            let ok = self
                .run(&[redis::cmd("PING")])
                .is_some_and(|r| r.len() == 1);
            if !ok {
                self.full_rewrite = true;
            }
        }
    }

    /// Runs `cmds` in chunks; None if the connection failed (it is then dropped).
    fn run(&mut self, cmds: &[redis::Cmd]) -> Option<Vec<Reply>> {
        let mut out = Vec::with_capacity(cmds.len());
        for chunk in cmds.chunks(CHUNK) {
            let conn = self.redis.conn.as_mut()?;
            self.last_io = Instant::now();
            match conn.exec(chunk) {
                Ok(r) => out.extend(r),
                Err(e) => {
                    self.lost_conn(&e);
                    return None;
                }
            }
        }
        let stats = &self.shared.stats;
        stats
            .state_commands_total
            .fetch_add(cmds.len() as u64, Ordering::Relaxed);
        let refused = out
            .iter()
            .filter(|r| matches!(r, Reply::Refused { .. }))
            .count();
        if refused > 0 {
            stats
                .redis_errors_total
                .fetch_add(refused as u64, Ordering::Relaxed);
        }
        Some(out)
    }

    /// Writes the changes since the last round: removals first, then the sessions that changed.
    fn flush(&mut self) {
        if self.closed.is_empty() && self.left.is_empty() && self.dirty.is_empty() {
            return;
        }
        let now = now_ms();
        let node = self.shared.node_id;
        let closed = std::mem::take(&mut self.closed);
        let left = std::mem::take(&mut self.left);
        let dirty = std::mem::take(&mut self.dirty);
        let mut cmds = Vec::new();
        for g in &closed {
            cmds.push(zrem(keys::CLIENTS_INDEX, g.sid));
            if let Some(u) = &g.user {
                cmds.push(zrem(&keys::user_clients(u), g.sid));
            }
            for c in &g.channels {
                cmds.push(zrem(&keys::guid_clients(c), g.sid));
            }
            cmds.push(redis::cmd("DEL").arg(keys::client(g.sid)).clone());
        }
        for (sid, c) in &left {
            cmds.push(zrem(&keys::guid_clients(c), *sid));
        }
        for sid in &dirty {
            let Some(s) = self.table.get(sid) else {
                continue;
            };
            let mut h = redis::cmd("HSET");
            h.arg(keys::client(*sid))
                .arg("node")
                .arg(node)
                .arg("channels")
                .arg(serde_json::to_string(&s.channels).unwrap_or_else(|_| "[]".into()))
                .arg("connected_ms")
                .arg(sid::unix_ms_of(*sid));
            for (f, v) in [
                ("user", &s.user),
                ("device", &s.device),
                ("tenant", &s.tenant),
            ] {
                if let Some(v) = v {
                    h.arg(f).arg(v);
                }
            }
            cmds.push(h);
            cmds.push(zadd(keys::CLIENTS_INDEX, now, &[*sid]));
            if let Some(u) = &s.user {
                cmds.push(zadd(&keys::user_clients(u), now, &[*sid]));
            }
            for c in &s.channels {
                cmds.push(zadd(&keys::guid_clients(c), now, &[*sid]));
            }
        }
        if self.run(&cmds).is_none() {
            // Unknown what got through: rewrite everything when back; removals are retried (bounded), and what
            // does not fit is left to the sweepers.
            self.full_rewrite = true;
            for g in closed {
                if self.closed.len() < PENDING_MAX {
                    self.closed.push(g);
                }
            }
            for l in left {
                if self.left.len() < PENDING_MAX {
                    self.left.push(l);
                }
            }
        }
    }

    /// Refreshes the last-seen of every session of this node: one `ZADD` per key with many members.
    fn sync(&mut self) {
        if self.table.is_empty() {
            return;
        }
        let now = now_ms();
        let sids: Vec<u64> = self.table.keys().copied().collect();
        let mut by_user: HashMap<&str, Vec<u64>> = HashMap::new();
        let mut by_channel: HashMap<&str, Vec<u64>> = HashMap::new();
        for (sid, s) in &self.table {
            if let Some(u) = &s.user {
                by_user.entry(u).or_default().push(*sid);
            }
            for c in &s.channels {
                by_channel.entry(c).or_default().push(*sid);
            }
        }
        let mut cmds = Vec::new();
        for chunk in sids.chunks(MEMBERS_PER_ZADD) {
            cmds.push(zadd(keys::CLIENTS_INDEX, now, chunk));
        }
        let index_cmds = cmds.len();
        for (u, members) in &by_user {
            for chunk in members.chunks(MEMBERS_PER_ZADD) {
                cmds.push(zadd(&keys::user_clients(u), now, chunk));
            }
        }
        for (c, members) in &by_channel {
            for chunk in members.chunks(MEMBERS_PER_ZADD) {
                cmds.push(zadd(&keys::guid_clients(c), now, chunk));
            }
        }
        let Some(replies) = self.run(&cmds) else {
            self.full_rewrite = true;
            return;
        };
        // ZADD answers how many members were new: ours were there unless someone swept them (or Redis lost
        // them). Then the hashes are gone too: rewrite everything.
        let added: i64 = replies[..index_cmds]
            .iter()
            .map(|r| match r {
                Reply::Value(Value::Int(n)) => *n,
                _ => 0,
            })
            .sum();
        if added > 0 {
            log::warn!(
                "cluster: {added} sessions of this node were missing in Redis (swept while unreachable, or \
                 Redis lost data); rewriting the session state"
            );
            self.full_rewrite = true;
        }
    }

    /// Removes sessions whose last-seen is older than the cutoff (left behind by dead nodes).
    fn sweep(&mut self) {
        let cutoff = now_ms().saturating_sub(stale_after_ms(&self.shared.cfg));
        for _ in 0..SWEEP_PAGES {
            let mut page = redis::cmd("ZRANGEBYSCORE");
            page.arg(keys::CLIENTS_INDEX)
                .arg("-inf")
                .arg(format!("({cutoff}"))
                .arg("LIMIT")
                .arg(0)
                .arg(SWEEP_PAGE);
            let Some(mut r) = self.run(&[page]) else {
                return;
            };
            let Some(Reply::Value(Value::Array(items))) = r.pop() else {
                return;
            };
            // Our own sessions are never swept here (our next sync refreshes them).
            let stale: Vec<u64> = items
                .iter()
                .filter_map(|v| event::str_of(v).and_then(sid::parse))
                .filter(|s| !self.table.contains_key(s))
                .collect();
            if stale.is_empty() {
                return;
            }
            let reads: Vec<redis::Cmd> = stale
                .iter()
                .map(|s| {
                    redis::cmd("HMGET")
                        .arg(keys::client(*s))
                        .arg("user")
                        .arg("channels")
                        .clone()
                })
                .collect();
            let Some(found) = self.run(&reads) else {
                return;
            };
            let mut cmds = Vec::new();
            for (s, f) in stale.iter().zip(&found) {
                if let Reply::Value(Value::Array(fields)) = f {
                    if let Some(u) = fields.first().and_then(event::str_of) {
                        cmds.push(zrem(&keys::user_clients(u), *s));
                    }
                    let channels: Vec<String> = fields
                        .get(1)
                        .and_then(event::str_of)
                        .and_then(|j| serde_json::from_str(j).ok())
                        .unwrap_or_default();
                    for c in &channels {
                        cmds.push(zrem(&keys::guid_clients(c), *s));
                    }
                }
                cmds.push(redis::cmd("DEL").arg(keys::client(*s)).clone());
                cmds.push(zrem(keys::CLIENTS_INDEX, *s));
            }
            if self.run(&cmds).is_none() {
                return;
            }
            self.shared
                .stats
                .sessions_swept_total
                .fetch_add(stale.len() as u64, Ordering::Relaxed);
            log::info!(
                "cluster: swept {} sessions left behind by dead nodes",
                stale.len()
            );
            if items.len() < SWEEP_PAGE {
                return;
            }
        }
    }
}

fn zrem(key: &str, sid: u64) -> redis::Cmd {
    redis::cmd("ZREM").arg(key).arg(sid).clone()
}

fn zadd(key: &str, score: u64, sids: &[u64]) -> redis::Cmd {
    let mut c = redis::cmd("ZADD");
    c.arg(key);
    for s in sids {
        c.arg(score).arg(s);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::{ConnSnapshot, ReplayOutcome};
    use std::sync::Mutex;

    /// Reactors that answer a snapshot with what the test put there (None: they do not answer).
    struct FakeReactors(Mutex<Option<Vec<Answer>>>);

    impl Deliver for FakeReactors {
        fn deliver(&self, events: &[super::super::InEvent<'_>]) -> usize {
            events.len()
        }
        fn deliver_user(
            &self,
            _: &str,
            _: Option<&str>,
            _: Option<&str>,
            _: &str,
            _: Option<crate::ids::StreamId>,
            _: bool,
        ) {
        }
        fn replay_done(&self, _: u64, _: ReplayOutcome) {}
        fn to_sid(&self, _: u64, _: Vec<u8>) {}
        fn snapshot(&self) -> Option<Vec<Answer>> {
            self.0.lock().unwrap().as_mut().map(std::mem::take)
        }
    }

    fn thread(snapshot: Vec<Answer>) -> StateThread {
        let cfg = super::super::ClusterConfig {
            redis: "redis://127.0.0.1:1/".into(),
            ..Default::default()
        };
        let shared = Arc::new(Shared {
            connector: super::super::conn::Connector::new(&cfg).unwrap(),
            cfg,
            stats: Arc::default(),
            node_id: 1,
            origin: "o".into(),
            info: super::super::lease::NodeInfo {
                ws: "127.0.0.1:1".parse().unwrap(),
                api: "127.0.0.1:2".parse().unwrap(),
                started_ms: 0,
            },
            stop: AtomicBool::new(false),
        });
        StateThread::new(
            shared,
            Arc::new(FakeReactors(Mutex::new(Some(snapshot)))),
            Arc::new(AtomicBool::new(false)),
        )
    }

    fn ev(seq: u64, change: Change) -> StateEvent {
        StateEvent {
            reactor: 0,
            seq,
            change,
        }
    }

    fn open(sid: u64) -> Change {
        Change::Open {
            sid,
            user: Some("u".into()),
            device: None,
            tenant: None,
        }
    }

    #[test]
    fn a_snapshot_replaces_the_table_and_skips_changes_it_already_holds() {
        // Reactor 0 at the snapshot (its change 5 was the last one before it): session 2 on channel b.
        let snapshot = vec![Answer::Snapshot {
            reactor: 0,
            seq: 5,
            sessions: vec![ConnSnapshot {
                sid: 2,
                user: Some("u".into()),
                device: None,
                tenant: None,
                channels: vec!["b".into()],
            }],
        }];
        let mut st = thread(snapshot);
        st.apply(ev(1, open(1)));
        st.apply(ev(
            2,
            Change::Subscribe {
                sid: 1,
                channel: "a".into(),
            },
        ));
        st.apply(ev(3, open(2)));
        // Change 4 (close 1) was dropped; change 5 (subscribe 2 to b) is still queued when the table is rebuilt.
        st.lost.store(true, Ordering::Relaxed);
        st.rebuild();
        assert!(!st.lost.load(Ordering::Relaxed));
        assert_eq!(st.table.keys().copied().collect::<Vec<_>>(), [2]);
        assert_eq!(st.dirty, HashSet::from([2]));
        assert_eq!(st.closed.len(), 1);
        assert_eq!(
            (st.closed[0].sid, &st.closed[0].channels),
            (1, &vec!["a".to_string()])
        );
        st.apply(ev(
            5,
            Change::Subscribe {
                sid: 2,
                channel: "b".into(),
            },
        ));
        assert_eq!(st.table[&2].channels, ["b"], "change 5 is in the snapshot");
        // Later changes apply.
        st.apply(ev(
            6,
            Change::Unsubscribe {
                sid: 2,
                channel: "b".into(),
            },
        ));
        assert!(st.table[&2].channels.is_empty());
        assert_eq!(st.left, [(2, "b".to_string())]);
        st.apply(ev(7, Change::Close { sid: 2 }));
        assert!(st.table.is_empty() && st.dirty.is_empty());
        assert_eq!(st.closed.len(), 2);
    }

    #[test]
    fn a_reactor_that_does_not_answer_keeps_the_rebuild_pending() {
        let mut st = thread(Vec::new());
        st.deliver = Arc::new(FakeReactors(Mutex::new(None)));
        st.apply(ev(1, open(9)));
        st.lost.store(true, Ordering::Relaxed);
        st.rebuild();
        assert!(st.lost.load(Ordering::Relaxed), "tried again next round");
        assert!(st.table.contains_key(&9), "table kept");
    }
}
