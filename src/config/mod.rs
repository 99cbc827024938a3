//! Typed configuration. Layers, later wins: embedded defaults < `--config FILE` < `WSGATE_SECTION__KEY`
//! environment < `--set section.key=value` < dedicated flags (`--listen`, ...). Every error names the key.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

// The [cluster] section (Redis federation).
mod cluster;
pub use cluster::ClusterConfig;

// The allowed range of every numeric key.
mod bounds;

// What client connections may do: the [auth], [heartbeat] and [limits] sections.
mod gateway;
pub use gateway::{AuthConfig, AuthMode, HeartbeatConfig, LimitsConfig, TransportConfig};

// Acks and retransmit of user pushes, the standalone replay store: the [delivery] section.
mod delivery;
pub use delivery::DeliveryConfig;
// Delivery guarantees per channel namespace: the [channels] section.
mod channels;
pub use channels::{ChannelsConfig, NamespaceConfig};

/// The largest message a client may be allowed to send (`ws.max_message_size` upper bound).
pub const MAX_MESSAGE_SIZE_LIMIT: usize = 64 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub ws: WsConfig,
    pub api: ApiConfig,
    pub debug: DebugConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub heartbeat: HeartbeatConfig,
    pub limits: LimitsConfig,
    pub tls: TlsConfig,
    /// Redis Streams federation (src/cluster/); standalone when `cluster.redis` is empty.
    pub cluster: ClusterConfig,
    /// Acks, retransmit and the standalone replay store of user pushes.
    pub delivery: DeliveryConfig,
    /// History, recovery and merge windows per channel namespace.
    pub channels: ChannelsConfig,
    /// The fallback transports (SSE, long-poll).
    pub transport: TransportConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Client (WebSocket) listener.
    pub listen: String,
    /// Reactor threads; 0 = one per online CPU.
    pub threads: usize,
    /// Connections accepted across all reactors before new ones are refused with 503.
    pub max_connections: usize,
    /// Path of the WebSocket endpoint.
    pub ws_path: String,
    /// Seconds a client has to complete the upgrade request.
    pub handshake_timeout: u64,
    /// Largest accepted request head, bytes.
    pub max_request_head: usize,
    /// If not empty, the `Origin` header must be one of these.
    pub allowed_origins: Vec<String>,
    /// Seconds to drain connections on SIGTERM/SIGINT.
    pub shutdown_timeout: u64,
    /// Bytes of buffered input the whole process may hold (partial frames, fragmented messages, request heads, API
    /// bodies); past it the connections holding the most are closed (1008 "memory budget"). 0 = a quarter of the
    /// machine's memory.
    pub max_buffered_bytes: u64,
    /// Node id (0..=1023) used in socket ids. In cluster mode 0 means "lease a free id from Redis" (the effective
    /// id is written back here at start-up).
    pub node_id: u16,
    /// The reactors' OS layer: `epoll`, `uring` (io_uring; a start-up error where the kernel refuses it) or
    /// `auto`.
    pub io_backend: IoBackend,
    /// io_uring: 4 KiB buffers per reactor that connections receive into (rounded up to a power of two), shared
    /// by all its connections; 0 = read on readiness as epoll does.
    pub uring_recv_buffers: usize,
}

/// `server.io_backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IoBackend {
    Epoll,
    Uring,
    /// The backend that measured better on this design (bench/RESULTS.md), where the kernel offers it.
    #[default]
    Auto,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:8080".into(),
            threads: 0,
            max_connections: 1_000_000,
            ws_path: "/ws".into(),
            handshake_timeout: 5,
            max_request_head: 8192,
            allowed_origins: Vec::new(),
            shutdown_timeout: 10,
            max_buffered_bytes: 0,
            node_id: 0,
            io_backend: IoBackend::Auto,
            uring_recv_buffers: 512,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    /// Largest message (sum of its fragments) a client may send; larger → close 1009.
    pub max_message_size: usize,
    /// Bytes queued for one connection before it is closed as a slow consumer (1008).
    pub max_outbound_bytes: usize,
    /// Seconds of client silence before the server pings.
    pub ping_interval: u64,
    /// Seconds of client silence before the server closes with 1001.
    pub idle_timeout: u64,
    /// Malformed client frames answered with an error reply before the connection is closed with 1008.
    pub error_budget: u32,
    /// Channels one connection may subscribe to.
    pub max_channels_per_connection: usize,
    /// Seconds a client has to complete a message (all its fragments) or a frame once it started sending it;
    /// later → close 1008 "message timeout".
    pub message_timeout: u64,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it.
    pub deflate: bool,
    /// Server messages with a shorter payload (bytes) are sent uncompressed.
    pub deflate_threshold: usize,
    /// Keep an inflate context per connection for clients that compress with context takeover; false = ask every
    /// client for `client_no_context_takeover` (no per-connection inflate memory).
    pub deflate_client_context: bool,
    /// Frames of at least this many bytes go to plaintext sockets without a copy per subscriber (the kernel reads
    /// the shared frame: `MSG_ZEROCOPY` on epoll, `SENDMSG_ZC` on io_uring); 0 = off.
    pub zerocopy_threshold: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_message_size: 1 << 20,
            max_outbound_bytes: 1 << 20,
            ping_interval: 25,
            idle_timeout: 60,
            error_budget: 10,
            max_channels_per_connection: 256,
            message_timeout: 30,
            deflate: true,
            deflate_threshold: 128,
            deflate_client_context: false,
            zerocopy_threshold: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// HTTP API listener; keep it on a private interface.
    pub listen: String,
    /// If not empty, requests need `Authorization: apikey KEY`.
    pub api_key: String,
    /// Largest request body, bytes; larger → 413.
    pub max_body: usize,
    /// Seconds a client has to send one whole request (head and body) once its first byte arrived; later → 408.
    pub request_timeout: u64,
    /// Seconds a connection may do nothing between requests (or leave its responses unread) before it is closed.
    pub idle_timeout: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8081".into(),
            api_key: String::new(),
            max_body: 1 << 20,
            request_timeout: 10,
            idle_timeout: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// If not empty, a WebSocket endpoint at this path echoes every message (for conformance tests).
    pub echo_path: String,
    /// Clients' `op: msg` to a `demo:` channel are also published to it (the demo page; src/gateway/demo_relay.rs).
    pub demo_relay: bool,
    /// If not empty, the demo page and the JavaScript SDK are served under this path on the client listener.
    pub demo_path: String,
}

/// TLS termination (wss). With `cert` and `key` set, `server.listen` speaks TLS.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first (empty = no TLS).
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC; RSA, ECDSA or Ed25519).
    pub key: String,
    /// Extra plaintext (ws) client listener next to the TLS one, e.g. "127.0.0.1:8082" (empty = none).
    pub plain_listen: String,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// error, warn, info, debug or trace.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// A configuration error; `key` names the offending key when there is one.
#[derive(Debug)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "config: {}", self.message)
        } else {
            write!(f, "config key `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Opens the key files named by `[auth]` (see [`ConfigBuilder::key_check`]).
pub type KeyCheck = fn(&AuthConfig) -> Result<(), ConfigError>;

/// Builds the effective configuration from its layers.
#[derive(Default)]
pub struct ConfigBuilder {
    table: toml::Table,
    key_check: Option<KeyCheck>,
}

impl ConfigBuilder {
    pub fn new() -> Self {
        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
        ConfigBuilder {
            table: defaults,
            key_check: None,
        }
    }

    /// Also opens the key files of `[auth]` while validating (with `auth.mode = "jwt"`), so that a bad key is
    /// a configuration error. Loading keys is the auth layer's job: it supplies the check
    /// (`auth::check_keys`), which keeps this module free of the layers that read the configuration.
    pub fn key_check(mut self, check: KeyCheck) -> Self {
        self.key_check = Some(check);
        self
    }

    /// Merges a TOML file.
    pub fn file(self, path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("", format!("cannot read {path}: {e}")))?;
        self.toml(&text, path)
    }

    /// Merges TOML text; `source` names it in errors (the file path). The file-free half of [`Self::file`], so the
    /// config fuzz target runs the same code path as `--config FILE`.
    pub fn toml(mut self, text: &str, source: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e| err("", format!("{source}: {e}")))?;
        merge(&mut self.table, table);
        Ok(self)
    }

    /// Applies `WSGATE_SECTION__KEY=value` variables.
    pub fn env(
        mut self,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        for (name, value) in vars {
            if let Some(rest) = name.strip_prefix("WSGATE_") {
                let key = rest.to_ascii_lowercase().replace("__", ".");
                self.set_value(&key, &value)?;
            }
        }
        Ok(self)
    }

    /// Applies one `section.key=value` assignment (`--set`).
    pub fn set(mut self, assignment: &str) -> Result<Self, ConfigError> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| err(assignment, "expected section.key=value"))?;
        self.set_value(key.trim(), value.trim())?;
        Ok(self)
    }

    fn set_value(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let parts: Vec<&str> = key.split('.').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(err(key, "expected section.key"));
        }
        // A value is read as TOML (numbers, booleans, arrays); anything else is taken as a plain string.
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        let section = self
            .table
            .entry(parts[0].to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match section {
            toml::Value::Table(t) => {
                t.insert(parts[1].to_string(), parsed);
                Ok(())
            }
            _ => Err(err(parts[0], "is not a section")),
        }
    }

    pub fn build(self) -> Result<Config, ConfigError> {
        let text = toml::to_string(&self.table).map_err(|e| err("", e.to_string()))?;
        let de = toml::Deserializer::new(&text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            err(&key, inner.message().to_string())
        })?;
        config.validate(self.key_check)?;
        Ok(config)
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The fixed routes of the fallback transports on the client listener (docs/PROTOCOL.md).
pub const FALLBACK_PATHS: [&str; 3] = ["/sse", "/sse/op", "/poll"];

impl Config {
    /// `server.ws_path` and `debug.demo_path` must leave the fallback routes (and each other) alone.
    fn validate_transport_paths(&self) -> Result<(), ConfigError> {
        if FALLBACK_PATHS.contains(&self.server.ws_path.as_str()) {
            return Err(err(
                "server.ws_path",
                "must differ from the fallback transport routes /sse, /sse/op and /poll",
            ));
        }
        let demo = self.debug.demo_path.as_str();
        if demo.is_empty() {
            return Ok(());
        }
        if !demo.starts_with('/') {
            return Err(err(
                "debug.demo_path",
                "must start with '/' (or be empty to disable)",
            ));
        }
        let base = demo.trim_end_matches('/');
        let shadows = |p: &str| p == base || p.starts_with(&format!("{base}/"));
        if shadows(&self.server.ws_path)
            || (!self.debug.echo_path.is_empty() && shadows(&self.debug.echo_path))
            || FALLBACK_PATHS.iter().any(|p| shadows(p))
        {
            return Err(err(
                "debug.demo_path",
                "must not contain server.ws_path, debug.echo_path or the routes /sse, /sse/op, /poll",
            ));
        }
        Ok(())
    }

    fn validate(&self, key_check: Option<KeyCheck>) -> Result<(), ConfigError> {
        bounds::check(self)?;
        parse_addr("server.listen", &self.server.listen)?;
        parse_addr("api.listen", &self.api.listen)?;
        if !self.server.ws_path.starts_with('/') {
            return Err(err("server.ws_path", "must start with '/'"));
        }
        if !self.debug.echo_path.is_empty() && !self.debug.echo_path.starts_with('/') {
            return Err(err(
                "debug.echo_path",
                "must start with '/' (or be empty to disable)",
            ));
        }
        if self.debug.echo_path == self.server.ws_path {
            return Err(err("debug.echo_path", "must differ from server.ws_path"));
        }
        self.validate_transport_paths()?;
        if self.ws.idle_timeout <= self.ws.ping_interval {
            return Err(err(
                "ws.idle_timeout",
                "must be greater than ws.ping_interval",
            ));
        }
        self.cluster.validate()?;
        self.validate_tls()?;
        if !matches!(
            self.log.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return Err(err(
                "log.level",
                "must be one of error, warn, info, debug, trace",
            ));
        }
        gateway::validate(self, key_check)?;
        self.channels
            .validate(!self.cluster.redis.is_empty() && self.cluster.redis_mode == "cluster")?;
        Ok(())
    }

    // ---- tls: cert and key go together, plain_listen only beside TLS ----
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let t = &self.tls;
        match (t.cert.is_empty(), t.key.is_empty()) {
            (false, true) => return Err(err("tls.key", "must be set when tls.cert is set")),
            (true, false) => return Err(err("tls.cert", "must be set when tls.key is set")),
            _ => {}
        }
        if !t.plain_listen.is_empty() {
            if !t.enabled() {
                return Err(err(
                    "tls.plain_listen",
                    "is an extra plaintext listener next to TLS: set tls.cert and tls.key (or use server.listen)",
                ));
            }
            let addr = parse_addr("tls.plain_listen", &t.plain_listen)?;
            if addr == self.listen_addr() && addr.port() != 0 {
                return Err(err("tls.plain_listen", "must differ from server.listen"));
            }
        }
        Ok(())
    }

    /// The extra plaintext client listener, if configured.
    pub fn plain_listen_addr(&self) -> Option<SocketAddr> {
        if self.tls.plain_listen.is_empty() {
            None
        } else {
            parse_addr("tls.plain_listen", &self.tls.plain_listen).ok()
        }
    }
    // ---- end tls ----

    /// Reactor threads to run.
    /// `server.max_buffered_bytes`, with 0 resolved to a quarter of the machine's physical memory.
    pub fn buffered_bytes_limit(&self) -> usize {
        if self.server.max_buffered_bytes > 0 {
            return usize::try_from(self.server.max_buffered_bytes).unwrap_or(usize::MAX);
        }
        // MemTotal from /proc/meminfo (kB); 4 GiB assumed where it cannot be read.
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            })
            .map_or(4 << 30, |kb| kb.saturating_mul(1024));
        total / 4
    }

    pub fn reactor_threads(&self) -> usize {
        if self.server.threads > 0 {
            self.server.threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(crate::ids::sid::MAX_REACTORS)
        }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        parse_addr("server.listen", &self.server.listen).expect("validated")
    }

    pub fn api_addr(&self) -> SocketAddr {
        parse_addr("api.listen", &self.api.listen).expect("validated")
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| err(key, format!("`{value}` is not an IP:PORT socket address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = ConfigBuilder::new().build().unwrap();
        assert_eq!(c.ws.max_message_size, 1 << 20);
        assert_eq!(c.api.listen, "127.0.0.1:8081");
    }

    #[test]
    fn set_and_env_override_and_name_bad_keys() {
        let c = ConfigBuilder::new()
            .env([("WSGATE_WS__PING_INTERVAL".to_string(), "7".to_string())].into_iter())
            .unwrap()
            .set("server.allowed_origins=[\"https://a\"]")
            .unwrap()
            .set("api.api_key=secret word")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(c.ws.ping_interval, 7);
        assert_eq!(c.server.allowed_origins, vec!["https://a".to_string()]);
        assert_eq!(c.api.api_key, "secret word");

        let e = ConfigBuilder::new()
            .set("ws.max_message_size=abc")
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(e.key, "ws.max_message_size");
        let e = ConfigBuilder::new()
            .set("nosuch.key=1")
            .unwrap()
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("nosuch"), "{e}");
        let e = ConfigBuilder::new()
            .set("ws.max_message_size=999999999")
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(e.key, "ws.max_message_size");
        let e = ConfigBuilder::new()
            .set("server.listen=nowhere")
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(e.key, "server.listen");
    }

    #[test]
    fn tls_keys_are_validated_together() {
        let c = ConfigBuilder::new().build().unwrap();
        assert!(!c.tls.enabled());
        let e = ConfigBuilder::new()
            .set("tls.cert=/x/cert.pem")
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(e.key, "tls.key");
        let e = ConfigBuilder::new()
            .set("tls.key=/x/key.pem")
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(e.key, "tls.cert");
        let e = ConfigBuilder::new()
            .set("tls.plain_listen=127.0.0.1:9000")
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(e.key, "tls.plain_listen");
        let c = ConfigBuilder::new()
            .set("tls.cert=/x/cert.pem")
            .unwrap()
            .set("tls.key=/x/key.pem")
            .unwrap()
            .set("tls.plain_listen=127.0.0.1:9000")
            .unwrap()
            .build()
            .unwrap();
        assert!(c.tls.enabled());
        assert_eq!(
            c.plain_listen_addr(),
            Some("127.0.0.1:9000".parse().unwrap())
        );
        let e = ConfigBuilder::new()
            .set("tls.cert=/x/cert.pem")
            .unwrap()
            .set("tls.key=/x/key.pem")
            .unwrap()
            .set("tls.plain_listen=nowhere")
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(e.key, "tls.plain_listen");
    }

    #[test]
    fn print_config_round_trips() {
        let c = ConfigBuilder::new().build().unwrap();
        let text = c.to_toml();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.server.listen, c.server.listen);
    }
}
