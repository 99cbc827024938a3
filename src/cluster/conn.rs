//! Redis connections for the bridge threads: one blocking connection per thread, standalone or Redis Cluster,
//! with connect/read/write timeouts so no thread ever waits on a dead server for long, and exponential backoff
//! between reconnect attempts.

use super::dial::Dialed;
use super::stats::Link;
use super::{BridgeStats, Shared};
use crate::config::ClusterConfig;
use redis::{ConnectionLike, IntoConnectionInfo, RedisResult};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use super::dial::{CONNECT_TIMEOUT, IO_TIMEOUT};
/// First reconnect delay; doubled after each failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Opens connections; cheap to share between threads (it only holds parsed connection info).
pub enum Connector {
    Single(redis::ConnectionInfo),
    Cluster(redis::cluster::ClusterClient),
    /// Asks the Sentinels for the current primary of `master` at every (re)connect, so a failover is followed by
    /// the next reconnect. Implemented here rather than with the crate's Sentinel client so every step has a
    /// timeout.
    Sentinel {
        sentinels: Vec<redis::ConnectionInfo>,
        master: String,
        /// Credentials and db for the primary.
        auth: redis::RedisConnectionInfo,
    },
}

/// One open connection.
pub enum RedisConn {
    Single(Dialed),
    /// Redis Cluster: one connection per shard, each dialled by [`Dialed`].
    Cluster(redis::cluster::ClusterConnection<Dialed>),
}

impl Connector {
    pub fn new(cfg: &ClusterConfig) -> RedisResult<Connector> {
        let urls = cfg.redis_urls();
        if cfg.is_sentinel() {
            let master = urls
                .first()
                .copied()
                .unwrap_or_default()
                .into_connection_info()?;
            let redis::ConnectionAddr::Tcp(name, _) = master.addr else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "sentinel mode: cluster.redis must be redis://[:password@]MASTER-NAME[/db]",
                )));
            };
            let sentinels = cfg
                .sentinel_urls()
                .iter()
                .map(|u| u.into_connection_info())
                .collect::<RedisResult<Vec<_>>>()?;
            return Ok(Connector::Sentinel {
                sentinels,
                master: name,
                auth: master.redis,
            });
        }
        if cfg.is_redis_cluster() {
            let client = redis::cluster::ClusterClientBuilder::new(urls)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(IO_TIMEOUT)
                // Our threads retry with their own backoff; the client should fail fast instead of sleeping.
                .retries(2)
                .build()?;
            Ok(Connector::Cluster(client))
        } else {
            let url = urls.first().copied().unwrap_or_default();
            Ok(Connector::Single(url.into_connection_info()?))
        }
    }

    /// Where we connect, for logs (host:port only: the URL may carry a password).
    pub fn describe(&self, cfg: &ClusterConfig) -> String {
        match self {
            Connector::Single(info) => info.addr.to_string(),
            Connector::Sentinel {
                sentinels, master, ..
            } => {
                let s: Vec<String> = sentinels.iter().map(|i| i.addr.to_string()).collect();
                format!("primary {master:?} via Sentinel {}", s.join(","))
            }
            Connector::Cluster(_) => {
                let seeds: Vec<String> = cfg
                    .redis_urls()
                    .iter()
                    .filter_map(|u| redis::IntoConnectionInfo::into_connection_info(*u).ok())
                    .map(|i| i.addr.to_string())
                    .collect();
                format!("cluster {}", seeds.join(","))
            }
        }
    }

    /// Connects; replies must arrive within `read_timeout` (pass the block time plus [`IO_TIMEOUT`] for
    /// connections that issue blocking reads).
    pub fn connect(&self, read_timeout: Duration) -> RedisResult<RedisConn> {
        self.connect_within(CONNECT_TIMEOUT, read_timeout)
    }

    /// Like [`Connector::connect`] with another bound on the connection set-up (TCP connect and authentication;
    /// for a single server and via Sentinel; Redis Cluster keeps the client's [`CONNECT_TIMEOUT`] per shard) and the
    /// write timeout at most `read_timeout`.
    pub fn connect_within(
        &self,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> RedisResult<RedisConn> {
        match self {
            Connector::Single(info) => Ok(RedisConn::Single(Dialed::open(
                info,
                connect_timeout,
                read_timeout,
                read_timeout.min(IO_TIMEOUT),
            )?)),
            Connector::Cluster(client) => {
                let conn = client.get_generic_connection::<Dialed>()?;
                conn.set_read_timeout(Some(read_timeout))?;
                conn.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok(RedisConn::Cluster(conn))
            }
            Connector::Sentinel {
                sentinels,
                master,
                auth,
            } => {
                let mut last = None;
                for sentinel in sentinels {
                    match primary_via(sentinel, master, auth, connect_timeout, read_timeout) {
                        Ok(conn) => return Ok(RedisConn::Single(conn)),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no Sentinel"))
                }))
            }
        }
    }
}

fn open(
    info: &redis::ConnectionInfo,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> RedisResult<Dialed> {
    Dialed::open(info, connect_timeout, read_timeout, IO_TIMEOUT)
}

/// Asks one Sentinel where the primary of `master` is, connects there and checks it really is a primary (during a
/// failover a Sentinel may still name the old one).
fn primary_via(
    sentinel: &redis::ConnectionInfo,
    master: &str,
    auth: &redis::RedisConnectionInfo,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> RedisResult<Dialed> {
    let mut s = open(sentinel, connect_timeout, connect_timeout.min(IO_TIMEOUT))?;
    let addr: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(master)
        .query(&mut s)?;
    let bad = |what: &str| {
        redis::RedisError::from((
            redis::ErrorKind::ResponseError,
            "Sentinel",
            format!("{what} for primary {master:?}"),
        ))
    };
    let (host, port) = addr.ok_or_else(|| bad("no address"))?;
    let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
    let mut conn = open(
        &redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp(host, port),
            redis: auth.clone(),
        },
        connect_timeout,
        read_timeout,
    )?;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn)?;
    match role.first().and_then(super::event::str_of) {
        Some("master") => Ok(conn),
        _ => Err(bad("not (yet) a primary at the address given")),
    }
}

/// The outcome of one command of a batch: its reply, or the error Redis answered it with.
#[derive(Debug)]
pub enum Reply {
    Value(redis::Value),
    Refused { code: String, details: String },
}

impl RedisConn {
    pub fn like(&mut self) -> &mut dyn ConnectionLike {
        match self {
            RedisConn::Single(c) => c,
            RedisConn::Cluster(c) => c,
        }
    }

    /// Runs `cmds`, which may touch many keys: as one pipeline (one round trip) on a single server; one command
    /// at a time, each routed by its key, on Redis Cluster (a raw pipeline would go to the first key's shard).
    /// Err means the connection failed and it is unknown which commands took effect.
    pub fn exec(&mut self, cmds: &[redis::Cmd]) -> RedisResult<Vec<Reply>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            RedisConn::Single(_) => self.exec_one_key(cmds),
            RedisConn::Cluster(c) => {
                let mut out = Vec::with_capacity(cmds.len());
                for cmd in cmds {
                    match c.req_packed_command(&cmd.get_packed_command()) {
                        Ok(v) => out.push(reply_of(v)),
                        Err(e) => match e.code() {
                            // Answered with an error: the connection is fine.
                            Some(code) if e.kind() != redis::ErrorKind::IoError => {
                                out.push(Reply::Refused {
                                    code: code.to_string(),
                                    details: e.detail().unwrap_or("").to_string(),
                                })
                            }
                            _ => return Err(e),
                        },
                    }
                }
                Ok(out)
            }
        }
    }
}

impl RedisConn {
    /// Runs `cmds`, which all touch the same key, as one pipeline (one round trip, also on Redis Cluster, where
    /// it goes to the shard of the first command's key).
    pub fn exec_one_key(&mut self, cmds: &[redis::Cmd]) -> RedisResult<Vec<Reply>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let mut packed = Vec::new();
        for cmd in cmds {
            packed.extend_from_slice(&cmd.get_packed_command());
        }
        let replies = self.like().req_packed_commands(&packed, 0, cmds.len())?;
        if replies.len() != cmds.len() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::ResponseError,
                "reply count does not match the pipeline",
            )));
        }
        Ok(replies.into_iter().map(reply_of).collect())
    }
}

fn reply_of(v: redis::Value) -> Reply {
    match v {
        redis::Value::ServerError(e) => Reply::Refused {
            code: e.code().to_string(),
            details: e.details().unwrap_or("").to_string(),
        },
        v => Reply::Value(v),
    }
}

/// One bridge thread's connection: reconnected with backoff, its state shown in the thread's link gauge.
pub struct Reconnecting {
    pub conn: Option<RedisConn>,
    backoff: Backoff,
    link: Link,
    /// Bound on one connection set-up, and on one reply.
    connect_timeout: Duration,
    reply_timeout: Duration,
}

impl Reconnecting {
    pub fn new(link: Link) -> Reconnecting {
        Reconnecting::within(link, CONNECT_TIMEOUT, IO_TIMEOUT)
    }

    /// A connection whose set-up and replies have other bounds than the defaults.
    pub fn within(link: Link, connect_timeout: Duration, reply_timeout: Duration) -> Reconnecting {
        Reconnecting {
            conn: None,
            backoff: Backoff::default(),
            link,
            connect_timeout,
            reply_timeout,
        }
    }

    /// True when connected (already, or by a new attempt now); false while the backoff runs or when the attempt
    /// failed.
    pub fn connect(&mut self, shared: &Shared) -> bool {
        if self.conn.is_some() {
            return true;
        }
        if !self.backoff.remaining().is_zero() {
            return false;
        }
        match shared
            .connector
            .connect_within(self.connect_timeout, self.reply_timeout)
        {
            Ok(c) => {
                self.connected(&shared.stats, c);
                true
            }
            Err(e) => {
                self.lost(&shared.stats, &e);
                false
            }
        }
    }

    /// Takes a connection this thread opened itself.
    pub fn connected(&mut self, stats: &BridgeStats, conn: RedisConn) {
        self.conn = Some(conn);
        self.backoff.reset();
        stats.set_link(self.link, true, &"connected");
    }

    /// Drops the connection (failed, or it must be replaced) and schedules the next attempt.
    pub fn lost(&mut self, stats: &BridgeStats, why: &dyn std::fmt::Display) {
        self.conn = None;
        stats.set_link(self.link, false, why);
        self.backoff.failed();
    }

    /// Time left before the next attempt may be made.
    pub fn backoff_remaining(&self) -> Duration {
        self.backoff.remaining()
    }
}

/// Exponential backoff with jitter between reconnect attempts.
pub struct Backoff {
    delay: Duration,
    not_before: Option<Instant>,
    jitter: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delay: BACKOFF_MIN,
            not_before: None,
            jitter: std::process::id() as u64 ^ super::random_u64(),
        }
    }
}

impl Backoff {
    /// After a success: the next failure waits the minimum again.
    pub fn reset(&mut self) {
        self.delay = BACKOFF_MIN;
        self.not_before = None;
    }

    /// After a failure: schedules the next attempt.
    pub fn failed(&mut self) {
        // xorshift: jitter of up to a quarter of the delay, so nodes do not reconnect in lockstep.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let quarter = (self.delay.as_millis() as u64 / 4).max(1);
        let wait = self.delay + Duration::from_millis(self.jitter % quarter);
        self.not_before = Some(Instant::now() + wait);
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
    }

    /// Time left before the next attempt may be made.
    pub fn remaining(&self) -> Duration {
        self.not_before
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::ZERO)
    }
}

/// Sleeps up to `d`, waking early when `stop` is set.
pub fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let deadline = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Server error codes after which a command can succeed when retried later (not a property of the command).
pub fn transient_code(code: &str) -> bool {
    matches!(
        code,
        "LOADING"
            | "BUSY"
            | "TRYAGAIN"
            | "CLUSTERDOWN"
            | "MASTERDOWN"
            | "READONLY"
            | "OOM"
            | "NOREPLICAS"
    )
}

/// Server errors after which this connection should be replaced (it points at a replica, or a failover is going
/// on).
pub fn reconnect_code(code: &str) -> bool {
    matches!(code, "READONLY" | "MASTERDOWN")
}
