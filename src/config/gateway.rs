//! Configuration of what client connections may do: `[auth]`, `[heartbeat]` and `[limits]`.
//! Every default keeps the out-of-the-box run as it was: anonymous clients, no connection rate limit.

use super::{err, Config, ConfigError, KeyCheck};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone may connect and subscribe to any channel (a warning is logged at start-up).
    None,
    /// A signed JWT is required to connect; its claims name the user and the channels it may subscribe to.
    Jwt,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none` or `jwt`.
    pub mode: AuthMode,
    /// Shared secret for HS256 tokens; empty = HS256 not accepted.
    pub hs256_secret: String,
    /// PEM public keys for RS*/PS*/ES*/EdDSA tokens: `"PATH"` (key id = file name without extension) or
    /// `"KID=PATH"`.
    pub public_keys: Vec<String>,
    /// Required `iss` claim; empty = not checked.
    pub issuer: String,
    /// Required `aud` claim; empty = not checked (a token carrying an `aud` is then accepted).
    pub audience: String,
    /// Seconds of clock skew tolerated for `exp` and `nbf`.
    pub leeway: u64,
    /// Channel patterns for tokens without a `channels` claim (`{sub}` and `{tenant}` are replaced).
    pub default_channels: Vec<String>,
    /// Connections one user (`sub`) may hold on this node; 0 = unlimited. More are refused with HTTP 429.
    pub max_connections_per_user: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            hs256_secret: String::new(),
            public_keys: Vec::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway: 30,
            default_channels: Vec::new(),
            max_connections_per_user: 0,
        }
    }
}

/// Adaptive application heartbeat. The base interval is `ws.ping_interval`; a connection is closed after its
/// current interval plus `ws.idle_timeout - ws.ping_interval` seconds of silence.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// On-time heartbeats in a row after which the interval is lengthened.
    pub healthy_beats: u32,
    /// Seconds added to the interval each time.
    pub step: u64,
    /// Longest interval, seconds; at most `ws.ping_interval` disables the adaptation.
    pub max_interval: u64,
    /// Seconds a heartbeat may be late before it counts as missed (capped at
    /// `ws.idle_timeout - ws.ping_interval - 1`).
    pub tolerance: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            healthy_beats: 3,
            step: 15,
            max_interval: 120,
            tolerance: 5,
        }
    }
}

/// The fallback transports (SSE, HTTP long-poll; docs/PROTOCOL.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// Seconds a long-poll waits for a message before it is answered with an empty list.
    pub poll_timeout: u64,
    /// Seconds a long-poll session lives without a poll before it ends.
    pub session_ttl: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            poll_timeout: 25,
            session_ttl: 60,
        }
    }
}

/// Token-bucket rate limits: `*_rate` tokens per second (0 = unlimited), `*_burst` bucket size.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// New connections per source IP address (IPv6: per /64).
    pub connect_rate: f64,
    pub connect_burst: u32,
    /// `ping` (heartbeat) messages per connection.
    pub ping_rate: f64,
    pub ping_burst: u32,
    /// `subscribe`, `unsubscribe`, `refresh` and unknown ops per connection.
    pub control_rate: f64,
    pub control_burst: u32,
    /// `msg` (client → backend) messages per connection.
    pub upstream_rate: f64,
    pub upstream_burst: u32,
    /// API publishes and broadcasts per tenant (the body's `tenant` field; none = the "" tenant).
    pub publish_rate: f64,
    pub publish_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            connect_rate: 0.0,
            connect_burst: 20,
            ping_rate: 10.0,
            ping_burst: 20,
            control_rate: 100.0,
            control_burst: 200,
            upstream_rate: 100.0,
            upstream_burst: 200,
            publish_rate: 0.0,
            publish_burst: 1000,
        }
    }
}

/// Checks the sections above; key files are opened by `key_check` when the builder was given one.
pub(super) fn validate(c: &Config, key_check: Option<KeyCheck>) -> Result<(), ConfigError> {
    let a = &c.auth;
    if a.mode == AuthMode::Jwt && a.hs256_secret.is_empty() && a.public_keys.is_empty() {
        return Err(err(
            "auth.mode",
            "\"jwt\" needs auth.hs256_secret or auth.public_keys",
        ));
    }
    for p in &a.default_channels {
        if p.is_empty() || p.len() > 512 || p.chars().any(char::is_control) {
            return Err(err(
                "auth.default_channels",
                format!("invalid pattern {p:?}"),
            ));
        }
    }
    if let (AuthMode::Jwt, Some(check)) = (a.mode, key_check) {
        check(a)?;
    }

    // The heartbeat keys never make an older [ws] configuration invalid: the maximum is raised to
    // ws.ping_interval and the tolerance capped below the grace period where needed (src/gateway/heartbeat.rs).
    // Their ranges are in bounds.rs.
    let l = &c.limits;
    let pairs = [
        ("limits.connect_rate", l.connect_rate, l.connect_burst),
        ("limits.ping_rate", l.ping_rate, l.ping_burst),
        ("limits.control_rate", l.control_rate, l.control_burst),
        ("limits.upstream_rate", l.upstream_rate, l.upstream_burst),
        ("limits.publish_rate", l.publish_rate, l.publish_burst),
    ];
    for (key, rate, burst) in pairs {
        if rate > 0.0 && burst == 0 {
            let burst_key = key.replace("_rate", "_burst");
            return Err(err(&burst_key, "must be at least 1 when the rate is set"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::ConfigBuilder;

    #[test]
    fn older_ws_settings_stay_valid_and_new_keys_name_themselves() {
        // A short grace or a long ping interval was valid before the heartbeat keys existed.
        for set in [
            ["ws.ping_interval=2", "ws.idle_timeout=3"],
            ["ws.ping_interval=300", "ws.idle_timeout=900"],
        ] {
            let mut b = ConfigBuilder::new();
            for s in set {
                b = b.set(s).unwrap();
            }
            b.build().unwrap();
        }
        for (assignment, key) in [
            ("auth.mode=ldap", "auth.mode"),
            ("auth.leeway=99999", "auth.leeway"),
            ("heartbeat.healthy_beats=0", "heartbeat.healthy_beats"),
            ("heartbeat.step=0", "heartbeat.step"),
            ("limits.ping_rate=-1", "limits.ping_rate"),
            ("limits.ping_burst=0", "limits.ping_burst"),
            ("auth.mode=jwt", "auth.mode"),
        ] {
            let e = ConfigBuilder::new()
                .set(assignment)
                .unwrap()
                .build()
                .unwrap_err();
            assert_eq!(e.key, key, "{assignment}: {e}");
        }
        let c = ConfigBuilder::new()
            .set("limits.connect_rate=0.5")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(c.limits.connect_rate, 0.5);
        let c = ConfigBuilder::new()
            .set("limits.connect_rate=3")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(c.limits.connect_rate, 3.0);
    }
}
