//! Cluster-wide reads of the session state for the API (`GET /api/presence`, `GET /api/user/{id}`), from the keys
//! the state threads of all nodes keep (src/cluster/state.rs). Made on the API's worker threads (src/api/worker.rs),
//! never on a reactor; so that a slow or dead Redis cannot hold a lookup for long either, the connection has
//! short timeouts (connect and set-up 0.5 s, replies 1 s) and after a failure further reads fail at once until the
//! reconnect backoff has passed. The caller then answers from this node alone and says so.
//!
//! Consistency: joins and leaves are written within milliseconds; a dead node's sessions linger until they are
//! older than 3 × `sync_interval` + `node_lease_ttl` (they are ignored from then on, and swept).

use super::conn::{Backoff, RedisConn, Reply};
use super::event::{self, now_ms};
use super::keys;
use super::Shared;
use crate::ids::sid;
use redis::Value;
use std::sync::Arc;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Members of one channel read at most (a page is cut from them).
pub const MAX_MEMBERS: usize = 1_000_000;

/// One live member of a channel, cluster-wide.
#[derive(Debug, Clone)]
pub struct RemoteMember {
    pub sid: u64,
    pub user: Option<String>,
}

/// One connection of a user, cluster-wide, as the state in Redis describes it.
#[derive(Debug, Clone)]
pub struct RemoteConn {
    pub sid: u64,
    pub node: Option<u16>,
    pub device: Option<String>,
    pub tenant: Option<String>,
    pub channels: Vec<String>,
    pub last_seen_ms: u64,
}

pub struct Reader {
    pub(super) shared: Arc<Shared>,
    conn: Option<RedisConn>,
    backoff: Backoff,
}

impl Reader {
    pub(crate) fn new(shared: Arc<Shared>) -> Reader {
        Reader {
            shared,
            conn: None,
            backoff: Backoff::default(),
        }
    }

    fn cutoff(&self) -> u64 {
        now_ms().saturating_sub(super::state::stale_after_ms(&self.shared.cfg))
    }

    fn run(&mut self, cmds: &[redis::Cmd]) -> Result<Vec<Reply>, String> {
        if self.conn.is_none() {
            if !self.backoff.remaining().is_zero() {
                return Err("Redis unavailable (reconnecting)".into());
            }
            match self
                .shared
                .connector
                .connect_within(CONNECT_TIMEOUT, READ_TIMEOUT)
            {
                Ok(c) => {
                    self.conn = Some(c);
                    self.backoff.reset();
                }
                Err(e) => {
                    self.backoff.failed();
                    return Err(format!("Redis unavailable ({})", super::one_line(&e)));
                }
            }
        }
        let Some(c) = self.conn.as_mut() else {
            return Err("Redis unavailable".into());
        };
        match c.exec(cmds) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.conn = None;
                self.backoff.failed();
                Err(format!("Redis unavailable ({})", super::one_line(&e)))
            }
        }
    }

    pub(super) fn one(&mut self, cmd: redis::Cmd) -> Result<Value, String> {
        match self.run(std::slice::from_ref(&cmd))?.pop() {
            Some(Reply::Value(v)) => Ok(v),
            Some(Reply::Refused { code, details }) => {
                Err(format!("Redis refused the read ({code} {details})"))
            }
            None => Err("no reply".into()),
        }
    }

    /// Live members of `channel` across the cluster with a socket id above `after`, lowest first, at most
    /// `limit`; also the number of live members and whether more follow.
    pub fn presence(
        &mut self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<(usize, Vec<RemoteMember>, bool), String> {
        let mut q = redis::cmd("ZRANGEBYSCORE");
        q.arg(keys::guid_clients(channel))
            .arg(self.cutoff())
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(MAX_MEMBERS);
        let Value::Array(items) = self.one(q)? else {
            return Err("unexpected reply to ZRANGEBYSCORE".into());
        };
        let mut sids: Vec<u64> = items
            .iter()
            .filter_map(|v| event::str_of(v).and_then(sid::parse))
            .collect();
        let total = sids.len();
        sids.sort_unstable();
        let page: Vec<u64> = sids
            .into_iter()
            .filter(|&s| s > after)
            .take(limit + 1)
            .collect();
        let more = page.len() > limit;
        let page = &page[..page.len().min(limit)];
        let reads: Vec<redis::Cmd> = page
            .iter()
            .map(|s| redis::cmd("HGET").arg(keys::client(*s)).arg("user").clone())
            .collect();
        let users = self.run(&reads)?;
        let members = page
            .iter()
            .zip(users)
            .map(|(&sid, u)| RemoteMember {
                sid,
                user: match u {
                    Reply::Value(v) => event::str_of(&v).map(str::to_string),
                    Reply::Refused { .. } => None,
                },
            })
            .collect();
        Ok((total, members, more))
    }

    /// The live connections of `user` across the cluster, by socket id.
    pub fn user(&mut self, user: &str) -> Result<Vec<RemoteConn>, String> {
        let mut q = redis::cmd("ZRANGEBYSCORE");
        q.arg(keys::user_clients(user))
            .arg(self.cutoff())
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(10_000);
        let Value::Array(items) = self.one(q)? else {
            return Err("unexpected reply to ZRANGEBYSCORE".into());
        };
        let mut found: Vec<(u64, u64)> = items
            .chunks_exact(2)
            .filter_map(|p| {
                let sid = event::str_of(&p[0]).and_then(sid::parse)?;
                let score = match &p[1] {
                    Value::Double(d) => *d as u64,
                    v => event::str_of(v)?.parse::<f64>().ok()? as u64,
                };
                Some((sid, score))
            })
            .collect();
        found.sort_unstable();
        let reads: Vec<redis::Cmd> = found
            .iter()
            .map(|(s, _)| {
                redis::cmd("HMGET")
                    .arg(keys::client(*s))
                    .arg("node")
                    .arg("device")
                    .arg("tenant")
                    .arg("channels")
                    .clone()
            })
            .collect();
        let hashes = self.run(&reads)?;
        Ok(found
            .into_iter()
            .zip(hashes)
            .filter_map(|((sid, last_seen_ms), h)| {
                let Reply::Value(Value::Array(f)) = h else {
                    return None;
                };
                let get = |i: usize| f.get(i).and_then(event::str_of).map(str::to_string);
                // No hash: the session closed or was swept between the two reads.
                let node = get(0)?.parse().ok();
                Some(RemoteConn {
                    sid,
                    node,
                    device: get(1),
                    tenant: get(2),
                    channels: get(3)
                        .and_then(|j| serde_json::from_str(&j).ok())
                        .unwrap_or_default(),
                    last_seen_ms,
                })
            })
            .collect())
    }
}
