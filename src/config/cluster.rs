//! The `[cluster]` config section. Empty `cluster.redis` = standalone (no Redis, exactly as without this module).

use super::ConfigError;
use redis::IntoConnectionInfo;
use serde::{Deserialize, Serialize};

/// Longest stream or key name we accept in config (Redis allows more; nobody needs it).
const MAX_NAME_LEN: usize = 200;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Redis URL (`redis://[user:pass@]host:port[/db]`, `redis+unix:///path`); empty = standalone node.
    /// With `redis_mode = "cluster"`: comma-separated seed node URLs. With `redis_mode = "sentinel"`: the master's
    /// name as host, plus its credentials and db (`redis://:pass@mymaster/0`).
    pub redis: String,
    /// `standalone` (one Redis server), `sentinel` (a primary found through `sentinels`) or `cluster`
    /// (Redis Cluster).
    pub redis_mode: String,
    /// With `redis_mode = "sentinel"`: comma-separated Sentinel URLs (`redis://10.0.0.1:26379/`).
    pub sentinels: String,
    /// The bus stream every node appends its events to and reads everyone's events from.
    pub stream: String,
    /// Approximate length the bus stream is trimmed to (`XADD ... MAXLEN ~ N`); bounds Redis memory and how long
    /// a disconnected node can catch up.
    pub stream_maxlen: u64,
    /// Seconds a node id lease (`wsgate:node:{id}`) lives without a heartbeat; renewed every third of it.
    pub node_lease_ttl: u64,
    /// Seconds start-up waits for Redis to lease a node id (when `server.node_id` = 0) before giving up.
    pub startup_timeout: u64,
    /// Seconds a starting node waits before leasing an id when the ids' records in Redis are younger than this
    /// (Redis lost its data, or a new cluster): time for the live nodes to re-assert their ids first.
    pub node_id_quarantine: u64,
    /// Outgoing events buffered while Redis is slow or down; more are dropped and counted.
    pub outbox_limit: usize,
    /// Bytes of outgoing events buffered at most (payloads included); more are dropped and counted.
    pub outbox_max_bytes: usize,
    /// Stream of client connect/message/disconnect events for backends.
    pub upstream_stream: String,
    /// Approximate length the upstream stream is trimmed to.
    pub upstream_maxlen: u64,
    /// Seconds between batched refreshes of session last-seen times in Redis.
    pub sync_interval: u64,
    /// Seconds between sweeps of sessions left behind by dead nodes.
    pub sweep_interval: u64,
    /// Messages kept per user in `stream:notify:{uid}` for offline replay.
    pub offline_maxlen: u64,
    /// Seconds an offline message is kept for replay.
    pub offline_max_age: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: String::new(),
            redis_mode: "standalone".into(),
            sentinels: String::new(),
            stream: "wsgate:bus".into(),
            stream_maxlen: 100_000,
            node_lease_ttl: 30,
            startup_timeout: 10,
            node_id_quarantine: 5,
            outbox_limit: 100_000,
            outbox_max_bytes: 64 << 20,
            upstream_stream: "wsgate:upstream".into(),
            upstream_maxlen: 1_000_000,
            sync_interval: 5,
            sweep_interval: 30,
            offline_maxlen: 1000,
            offline_max_age: 7 * 24 * 3600,
        }
    }
}

fn split_list(s: &str) -> Vec<&str> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

impl ClusterConfig {
    /// True when `cluster.redis` is set.
    pub fn enabled(&self) -> bool {
        !self.redis.trim().is_empty()
    }

    /// True for `redis_mode = "cluster"`.
    pub fn is_redis_cluster(&self) -> bool {
        self.redis_mode == "cluster"
    }

    /// True for `redis_mode = "sentinel"`.
    pub fn is_sentinel(&self) -> bool {
        self.redis_mode == "sentinel"
    }

    /// The Redis URLs: one in standalone and sentinel mode, the seed nodes in cluster mode.
    pub fn redis_urls(&self) -> Vec<&str> {
        split_list(&self.redis)
    }

    /// The Sentinel URLs (sentinel mode).
    pub fn sentinel_urls(&self) -> Vec<&str> {
        split_list(&self.sentinels)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(
            self.redis_mode.as_str(),
            "standalone" | "sentinel" | "cluster"
        ) {
            return Err(err(
                "cluster.redis_mode",
                "must be \"standalone\", \"sentinel\" or \"cluster\"",
            ));
        }
        let urls = self.redis_urls();
        if urls.len() > 1 && !self.is_redis_cluster() {
            return Err(err(
                "cluster.redis",
                "one URL expected (several seed nodes need cluster.redis_mode = \"cluster\")",
            ));
        }
        let sentinels = self.sentinel_urls();
        if self.is_sentinel() && self.enabled() {
            if sentinels.is_empty() {
                return Err(err(
                    "cluster.sentinels",
                    "redis_mode \"sentinel\" needs at least one Sentinel URL",
                ));
            }
            let host = urls.first().and_then(|u| u.into_connection_info().ok());
            if !matches!(host.map(|i| i.addr), Some(redis::ConnectionAddr::Tcp(..))) {
                return Err(err(
                    "cluster.redis",
                    "in sentinel mode: redis://[:password@]MASTER-NAME[/db]",
                ));
            }
        } else if !sentinels.is_empty() {
            return Err(err(
                "cluster.sentinels",
                "only used with cluster.redis_mode = \"sentinel\"",
            ));
        }
        for (key, url) in urls
            .iter()
            .map(|u| ("cluster.redis", u))
            .chain(sentinels.iter().map(|u| ("cluster.sentinels", u)))
        {
            // Parsing only: nothing connects until start-up. The message never echoes the URL (it may hold a
            // password).
            if let Err(e) = url.into_connection_info() {
                return Err(err(
                    key,
                    format!("not a usable Redis URL ({e}); expected redis://host:port[/db]"),
                ));
            }
        }
        for (key, name) in [
            ("cluster.stream", &self.stream),
            ("cluster.upstream_stream", &self.upstream_stream),
        ] {
            if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
                return Err(err(
                    key,
                    format!("must be 1..={MAX_NAME_LEN} bytes without control characters"),
                ));
            }
        }
        if self.stream == self.upstream_stream {
            return Err(err(
                "cluster.upstream_stream",
                "must differ from cluster.stream",
            ));
        }
        // The numeric keys' ranges are in bounds.rs.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_standalone_and_valid() {
        let c = ClusterConfig::default();
        assert!(!c.enabled());
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = ClusterConfig {
            redis: "http://x".into(),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "cluster.redis");
        c.redis = "redis://127.0.0.1:6379/,redis://127.0.0.1:6380/".into();
        assert_eq!(c.validate().unwrap_err().key, "cluster.redis");
        c.redis_mode = "cluster".into();
        c.validate().unwrap();
        c.redis_mode = "sentinels".into();
        assert_eq!(c.validate().unwrap_err().key, "cluster.redis_mode");
        c.redis_mode = "sentinel".into();
        c.redis = "redis://mymaster/".into();
        assert_eq!(c.validate().unwrap_err().key, "cluster.sentinels");
        c.sentinels = "redis://127.0.0.1:26379/, nope://".into();
        assert_eq!(c.validate().unwrap_err().key, "cluster.sentinels");
        c.sentinels = "redis://127.0.0.1:26379/".into();
        c.validate().unwrap();
        c.redis = "redis+unix:///tmp/x".into();
        assert_eq!(c.validate().unwrap_err().key, "cluster.redis");
        c.sentinels.clear();
        c.redis_mode = "standalone".into();
        c.redis = "redis://:secret@127.0.0.1:1/".into();
        c.stream = String::new();
        assert_eq!(c.validate().unwrap_err().key, "cluster.stream");
        c.stream = "wsgate:upstream".into();
        assert_eq!(c.validate().unwrap_err().key, "cluster.upstream_stream");
    }
}
