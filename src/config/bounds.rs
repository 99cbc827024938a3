//! The allowed range of every numeric key, in one table. Upper bounds keep values inside what the code downstream
//! can represent: timeouts become reactor seconds in a u32 that deadlines are added to, outbound limits are summed
//! in the u32 counters of src/pool/outqueue.rs, reactor numbers occupy 6 bits of a socket id.

use super::{err, Config, ConfigError, MAX_MESSAGE_SIZE_LIMIT};

const DAY: u64 = 24 * 3600;
const MIB: u64 = 1 << 20;

/// `ws.max_outbound_bytes` upper bound: 1 GiB plus the largest frame (64 MiB message or API body and its header)
/// stays far below the 4 GiB where the u32 queue counter saturates and slow consumers would go undetected.
const MAX_OUTBOUND_BYTES_LIMIT: u64 = 1 << 30;

/// An integer key: name, smallest and largest allowed value, unit shown in the error.
pub struct IntRange {
    pub key: &'static str,
    pub min: u64,
    pub max: u64,
    pub unit: &'static str,
}

const fn int(key: &'static str, min: u64, max: u64, unit: &'static str) -> IntRange {
    IntRange {
        key,
        min,
        max,
        unit,
    }
}

/// Every integer key of the configuration (a unit test checks that none is missing).
pub const INTEGER_KEYS: &[IntRange] = &[
    int(
        "server.threads",
        0,
        crate::ids::sid::MAX_REACTORS as u64,
        "",
    ),
    int("server.max_connections", 1, 10_000_000, ""),
    int("server.handshake_timeout", 1, 3600, " seconds"),
    int("server.max_request_head", 512, 16 * 1024, " bytes"),
    int("server.shutdown_timeout", 0, 3600, " seconds"),
    int("server.node_id", 0, crate::ids::sid::MAX_NODE as u64, ""),
    // The kernel's limit on entries per provided-buffer ring.
    int("server.uring_recv_buffers", 0, 32_768, ""),
    // 0 = a quarter of RAM.
    int("server.max_buffered_bytes", 0, 1 << 44, " bytes"),
    int(
        "ws.max_message_size",
        1,
        MAX_MESSAGE_SIZE_LIMIT as u64,
        " bytes",
    ),
    int(
        "ws.max_outbound_bytes",
        1024,
        MAX_OUTBOUND_BYTES_LIMIT,
        " bytes",
    ),
    int("ws.ping_interval", 1, DAY, " seconds"),
    int("ws.idle_timeout", 2, DAY, " seconds"),
    // The gateway counts refusals in a u8.
    int("ws.error_budget", 0, 255, ""),
    int("ws.max_channels_per_connection", 1, 65_536, ""),
    int("ws.message_timeout", 1, DAY, " seconds"),
    int(
        "ws.deflate_threshold",
        0,
        MAX_OUTBOUND_BYTES_LIMIT,
        " bytes",
    ),
    int(
        "ws.zerocopy_threshold",
        0,
        MAX_OUTBOUND_BYTES_LIMIT,
        " bytes",
    ),
    int("api.max_body", 1, MAX_MESSAGE_SIZE_LIMIT as u64, " bytes"),
    int("api.request_timeout", 1, 3600, " seconds"),
    int("api.idle_timeout", 1, DAY, " seconds"),
    int("auth.leeway", 0, 3600, " seconds"),
    int("auth.max_connections_per_user", 0, 10_000_000, ""),
    int("heartbeat.healthy_beats", 1, 255, ""),
    int("heartbeat.step", 1, 3600, " seconds"),
    int("heartbeat.max_interval", 1, 3600, " seconds"),
    int("transport.poll_timeout", 1, 120, " seconds"),
    int("transport.session_ttl", 5, 3600, " seconds"),
    int("heartbeat.tolerance", 0, 3600, " seconds"),
    int("limits.connect_burst", 0, 1_000_000, ""),
    int("limits.ping_burst", 0, 1_000_000, ""),
    int("limits.control_burst", 0, 1_000_000, ""),
    int("limits.upstream_burst", 0, 1_000_000, ""),
    int("limits.publish_burst", 0, 1_000_000, ""),
    int("cluster.stream_maxlen", 1, 1_000_000_000, ""),
    int("cluster.node_lease_ttl", 3, 3600, " seconds"),
    int("cluster.startup_timeout", 1, 3600, " seconds"),
    int("cluster.node_id_quarantine", 0, 60, " seconds"),
    int("cluster.outbox_limit", 1, 10_000_000, ""),
    int("cluster.outbox_max_bytes", MIB, 4096 * MIB, " bytes"),
    int("cluster.upstream_maxlen", 1, 1_000_000_000, ""),
    int("cluster.sync_interval", 1, 3600, " seconds"),
    int("cluster.sweep_interval", 1, DAY, " seconds"),
    int("cluster.offline_maxlen", 1, 1_000_000, ""),
    int("cluster.offline_max_age", 1, 365 * DAY, " seconds"),
    int("delivery.ack_timeout", 10, 60_000, " milliseconds"),
    int("delivery.max_attempts", 1, 100, ""),
    int("delivery.max_unacked", 1, 65_536, ""),
    int("delivery.offline_maxlen", 0, 1_000_000, ""),
    int("delivery.offline_max_age", 1, 365 * DAY, " seconds"),
    int("delivery.offline_max_bytes", MIB, 1 << 40, " bytes"),
    int("channels.history_max_bytes", MIB, 1 << 40, " bytes"),
];

/// The numeric keys of each `[[channels.namespace]]` entry (checked per entry by src/config/channels.rs).
pub const NAMESPACE_KEYS: &[IntRange] = &[
    int("history_size", 0, 100_000, " publications"),
    int("history_ttl", 1, 30 * DAY, " seconds"),
    int("merge_ms", 0, 1000, " milliseconds"),
];

/// Every floating-point key: name, smallest and largest allowed value.
pub const FLOAT_KEYS: &[(&str, f64, f64)] = &[
    ("limits.connect_rate", 0.0, 1e9),
    ("limits.ping_rate", 0.0, 1e9),
    ("limits.control_rate", 0.0, 1e9),
    ("limits.upstream_rate", 0.0, 1e9),
    ("limits.publish_rate", 0.0, 1e9),
];

/// Checks every numeric key against its range; the error names the key and the range.
pub(super) fn check(c: &Config) -> Result<(), ConfigError> {
    let table = toml::Table::try_from(c).map_err(|e| err("", e.to_string()))?;
    for r in INTEGER_KEYS {
        let value = lookup(&table, r.key).and_then(toml::Value::as_integer);
        let Some(v) = value else {
            return Err(err(r.key, "is not an integer"));
        };
        let ok = u64::try_from(v).is_ok_and(|v| (r.min..=r.max).contains(&v));
        if !ok {
            return Err(err(
                r.key,
                format!(
                    "{v} is out of range: must be {}..={}{}",
                    r.min, r.max, r.unit
                ),
            ));
        }
    }
    for &(key, min, max) in FLOAT_KEYS {
        let value = lookup(&table, key).and_then(toml::Value::as_float);
        let Some(v) = value else {
            return Err(err(key, "is not a number"));
        };
        if !v.is_finite() || !(min..=max).contains(&v) {
            return Err(err(
                key,
                format!("{v} is out of range: must be {min}..={max} (0 = unlimited)"),
            ));
        }
    }
    Ok(())
}

fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let (section, name) = key.split_once('.')?;
    table.get(section)?.as_table()?.get(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigBuilder;

    /// A numeric key added to a config struct must get a range here.
    #[test]
    fn every_numeric_key_has_a_range() {
        let table = toml::Table::try_from(Config::default()).unwrap();
        for (section, keys) in &table {
            for (name, value) in keys.as_table().unwrap() {
                let key = format!("{section}.{name}");
                match value {
                    toml::Value::Integer(_) => assert!(
                        INTEGER_KEYS.iter().any(|r| r.key == key),
                        "{key} has no range in INTEGER_KEYS"
                    ),
                    toml::Value::Float(_) => assert!(
                        FLOAT_KEYS.iter().any(|r| r.0 == key),
                        "{key} has no range in FLOAT_KEYS"
                    ),
                    _ => {}
                }
            }
        }
        for r in INTEGER_KEYS {
            assert!(lookup(&table, r.key).is_some(), "{} is not a key", r.key);
            assert!(r.min <= r.max && r.max <= i64::MAX as u64, "{}", r.key);
        }
    }

    #[test]
    fn bounds_are_inclusive_and_name_the_key() {
        for r in INTEGER_KEYS {
            // ws.idle_timeout must also exceed ws.ping_interval; cluster.* apply only their own ranges.
            let at_max = ConfigBuilder::new()
                .set(&format!("{}={}", r.key, r.max))
                .unwrap()
                .build();
            if r.key != "ws.ping_interval" {
                assert!(at_max.is_ok(), "{} = {}: {:?}", r.key, r.max, at_max.err());
            }
            let over = ConfigBuilder::new()
                .set(&format!("{}={}", r.key, r.max + 1))
                .unwrap()
                .build()
                .unwrap_err();
            assert_eq!(over.key, r.key, "{over}");
            assert!(
                over.to_string().contains(&format!("..={}", r.max)),
                "{over}"
            );
            if r.min > 0 {
                let under = ConfigBuilder::new()
                    .set(&format!("{}={}", r.key, r.min - 1))
                    .unwrap()
                    .build()
                    .unwrap_err();
                assert_eq!(under.key, r.key, "{under}");
            }
        }
    }
}
