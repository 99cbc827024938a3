//! The [channels] section: per-namespace delivery guarantees (history, recovery, merge window), chosen by the
//! longest matching channel-name prefix, and the process-wide bound on history memory.

use super::{err, ConfigError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// Bytes of channel history (encoded publications) the whole node keeps in memory (standalone mode); past it
    /// the oldest publications of any channel are dropped first.
    pub history_max_bytes: u64,
    /// `[[channels.namespace]]` rules; a channel takes the rule with the longest matching prefix.
    pub namespace: Vec<NamespaceConfig>,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        ChannelsConfig {
            history_max_bytes: 64 << 20,
            namespace: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceConfig {
    /// Channel names starting with this belong to the namespace ("" matches every channel).
    pub prefix: String,
    /// Publications kept per channel; 0 = no history (and no offsets in the delivered frames).
    pub history_size: u64,
    /// Seconds a publication stays in the history.
    pub history_ttl: u64,
    /// Clients may resubscribe with `recover` to get what they missed.
    pub recover: bool,
    /// Publications to one channel within this many milliseconds leave as one batch frame; 0 = off.
    pub merge_ms: u64,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            prefix: String::new(),
            history_size: 0,
            history_ttl: 300,
            recover: false,
            merge_ms: 0,
        }
    }
}

impl NamespaceConfig {
    pub fn has_history(&self) -> bool {
        self.history_size > 0
    }
}

impl ChannelsConfig {
    /// The namespace rule of `channel`: the longest prefix that matches.
    pub fn namespace_of(&self, channel: &str) -> Option<&NamespaceConfig> {
        self.namespace
            .iter()
            .filter(|n| channel.starts_with(n.prefix.as_str()))
            .max_by_key(|n| n.prefix.len())
    }

    /// True when some namespace keeps history (offsets, recovery, `GET /api/history`).
    pub fn any_history(&self) -> bool {
        self.namespace.iter().any(NamespaceConfig::has_history)
    }

    pub(super) fn validate(&self, redis_cluster: bool) -> Result<(), ConfigError> {
        for (i, n) in self.namespace.iter().enumerate() {
            let key = |name: &str| format!("channels.namespace[{i}].{name}");
            for r in super::bounds::NAMESPACE_KEYS {
                let v = match r.key {
                    "history_size" => n.history_size,
                    "history_ttl" => n.history_ttl,
                    _ => n.merge_ms,
                };
                if !(r.min..=r.max).contains(&v) {
                    let message = format!(
                        "{v} is out of range: must be {}..={}{}",
                        r.min, r.max, r.unit
                    );
                    return Err(err(&key(r.key), message));
                }
            }
            if n.prefix.len() > 255 {
                return Err(err(
                    &key("prefix"),
                    "is longer than a channel name (255 bytes)",
                ));
            }
            if self.namespace[..i].iter().any(|o| o.prefix == n.prefix) {
                return Err(err(
                    &key("prefix"),
                    format!("{:?} is given twice", n.prefix),
                ));
            }
            if n.recover && !n.has_history() {
                return Err(err(
                    &key("recover"),
                    "needs history: set history_size > 0 in the same namespace",
                ));
            }
            if n.has_history() && redis_cluster {
                return Err(err(
                    &key("history_size"),
                    "channel history needs cluster.redis_mode \"standalone\" or \"sentinel\": one script writes the channel's history and the bus, which Redis Cluster does not allow across slots",
                ));
            }
        }
        Ok(())
    }
}
