//! Command line (clap) and the resolved run configuration shared by the coordinator, the workers and the publisher.

use std::net::{Ipv4Addr, SocketAddrV4};

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "wsgate-bench",
    version,
    about = "Load generator for wsgate: raw epoll WebSocket clients over many processes and source addresses",
    after_help = "Every run is bounded by --duration and --timeout and stops by itself. Targets must be loopback \
                  addresses (or private ones from a network namespace of its own: bench/compare.sh --netns). Output: a human summary, then one JSON line with all figures."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Open --conns connections at --rate per second: handshakes/s, failures by kind, server memory per connection.
    Connect(ConnectArgs),
    /// --conns subscribers on --channel; publish --messages via the HTTP API: deliveries/s, end-to-end latency, loss.
    Fanout(FanoutArgs),
    /// Like fanout while --churn-rate connections per second disconnect and reconnect: loss while connected.
    Churn(ChurnArgs),
    /// Round trips against the gateway's debug echo endpoint with --inflight messages outstanding per connection.
    Echo(EchoArgs),
    /// Publish to everyone every --interval-ms; every client answers each delivery with {"op":"ping","id":SEQ}.
    Acks(AcksArgs),
    /// --conns distinct users, one connection each; every publish is a push to one user (round robin): pushes/s,
    /// deliveries/s, latency, and per user exactly the pushes addressed to it.
    Users(UsersArgs),
    /// Turn result JSON lines (from run.sh) into a dated RESULTS.md section and a latency SVG chart.
    Report(ReportArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// WebSocket URL of the gateway (client port and path) [default: ws://127.0.0.1:8080/ws, /echo for echo]
    #[arg(long)]
    pub url: Option<String>,
    /// HTTP API base URL of the gateway
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub api: String,
    /// Connections (subscribers) in total, over all processes
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Worker processes (0 = enough to stay under the fd limit, at least 1)
    #[arg(long, default_value_t = 0)]
    pub procs: usize,
    /// Source addresses 127.0.0.1 .. 127.0.0.N to spread connections over (0 = one per 20000 connections)
    #[arg(long, default_value_t = 0)]
    pub source_ips: usize,
    /// New connections per second, over all processes (0 = as fast as possible)
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Upper bound in seconds of the load phase (publishing, echoing, churning, connecting)
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Seconds allowed for one connect + handshake, and for stragglers after the load phase
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// PID of the gateway: report its RSS per connection and CPU time
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// API key sent as "Authorization: apikey KEY"
    #[arg(long)]
    pub api_key: Option<String>,
    /// Largest server message accepted before the connection is counted as a protocol error
    #[arg(long, default_value_t = 16 << 20)]
    pub max_message: usize,
    /// Offer permessage-deflate (RFC 7692) and inflate compressed deliveries
    #[arg(long)]
    pub deflate: bool,
    /// Pause in milliseconds between "all connected" and the load phase
    #[arg(long, default_value_t = 300)]
    pub settle_ms: u64,
    /// No progress lines on stderr
    #[arg(long)]
    pub quiet: bool,
    /// Name for this run in reports and charts (default: the scenario)
    #[arg(long)]
    pub label: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct PublishArgs {
    /// Channel the subscribers join and the publisher publishes to
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Messages to publish (bounded also by --duration)
    #[arg(long, default_value_t = 100)]
    pub messages: u64,
    /// Size in bytes of the published "data" object
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Publishes outstanding at once (HTTP pipelining over --pub-conns keep-alive connections)
    #[arg(long, default_value_t = 8)]
    pub inflight: usize,
    /// Publish one message every N milliseconds instead of as fast as the window allows (0 = window only)
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    /// Keep-alive API connections to spread publishes over (more than 1 can reorder publishes at the server)
    #[arg(long, default_value_t = 1)]
    pub pub_conns: usize,
    /// Use POST /api/broadcast instead of /api/publish
    #[arg(long)]
    pub broadcast: bool,
    /// Send N publishes per request through POST /api/batch (1 = one POST /api/publish each); --inflight still
    /// counts publishes
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Pad "data" with varied text that compresses like real JSON (~4×) instead of 'x' (for --deflate runs)
    #[arg(long)]
    pub text_pad: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Also subscribe every connection to this channel (?channels=...)
    #[arg(long)]
    pub channel: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub publish: PublishArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Connections per second that disconnect (close handshake) and reconnect, over all processes
    #[arg(long, default_value_t = 100.0)]
    pub churn_rate: f64,
    /// Milliseconds between deciding to leave (which fixes the lifetime's last expected publish) and sending the
    /// close frame; the close also waits until those publishes have arrived (at most --timeout)
    #[arg(long, default_value_t = 100)]
    pub churn_grace_ms: u64,
}

#[derive(Args, Debug, Clone)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: Common,
    /// Message size in bytes (at least 20: the send time travels in the first 20)
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages outstanding per connection
    #[arg(long, default_value_t = 8)]
    pub inflight: usize,
    /// Send binary frames instead of text
    #[arg(long)]
    pub binary: bool,
}

#[derive(Args, Debug, Clone)]
pub struct AcksArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub publish: PublishArgs,
}

#[derive(Args, Debug, Clone)]
pub struct UsersArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub publish: PublishArgs,
    /// The gateway's auth.hs256_secret: connection N authenticates as user "uN" (HS256 token with sub "uN", sent
    /// as ?token=) and publish S is POST /api/publish {"user":"u<S mod conns>",...}
    #[arg(long, conflicts_with = "topics")]
    pub jwt_secret: Option<String>,
    /// For servers without users (the µWebSockets peer): connection N subscribes to the channel "user:N" (one
    /// subscriber per channel) and publish S goes to the channel "user:<S mod conns>"
    #[arg(long)]
    pub topics: bool,
}

/// How the users scenario addresses a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UserAddressing {
    /// Authenticated users and `{"user":...}` pushes.
    Jwt,
    /// One channel per user.
    Topics,
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// File of JSON result lines (one per scenario run)
    #[arg(long)]
    pub results: String,
    /// Markdown file to append a dated section to (created with a header if missing)
    #[arg(long, default_value = "bench/RESULTS.md")]
    pub md: String,
    /// SVG chart of latency percentiles per scenario to (over)write
    #[arg(long, default_value = "bench/latency.svg")]
    pub svg: String,
    /// Commit the gateway was built from
    #[arg(long, default_value = "unknown")]
    pub commit: String,
    /// A note for the section heading (e.g. the suite name)
    #[arg(long, default_value = "")]
    pub note: String,
    /// How the gateway was started, for the record
    #[arg(long, default_value = "")]
    pub gateway: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Connect,
    Fanout,
    Churn,
    Echo,
    Acks,
    Users,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::Fanout => "fanout",
            Scenario::Churn => "churn",
            Scenario::Echo => "echo",
            Scenario::Acks => "acks",
            Scenario::Users => "users",
        }
    }

    /// Scenarios whose connections are subscribers receiving publishes.
    pub fn subscribes(self) -> bool {
        matches!(
            self,
            Scenario::Fanout | Scenario::Churn | Scenario::Acks | Scenario::Users
        )
    }
}

/// Everything a run needs, resolved and validated.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub scenario: Scenario,
    /// Name in reports and charts.
    pub label: String,
    pub url: String,
    #[serde(skip)]
    pub target: SocketAddrV4,
    #[serde(skip)]
    pub host: String,
    /// Request path with query (channels added for subscribers).
    pub path: String,
    pub api: String,
    #[serde(skip)]
    pub api_addr: SocketAddrV4,
    #[serde(skip)]
    pub api_host: String,
    pub conns: usize,
    pub procs: usize,
    pub source_ips: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub timeout_s: f64,
    pub server_pid: Option<u32>,
    #[serde(skip)]
    pub api_key: Option<String>,
    pub max_message: usize,
    pub deflate: bool,
    pub settle_ms: u64,
    #[serde(skip)]
    pub quiet: bool,
    pub channel: String,
    pub messages: u64,
    pub size: usize,
    pub inflight: usize,
    pub interval_ms: u64,
    pub pub_conns: usize,
    pub broadcast: bool,
    pub batch: usize,
    pub text_pad: bool,
    pub churn_rate: f64,
    pub churn_grace_ms: u64,
    pub binary: bool,
    /// Users scenario: how connections are made users (None for the other scenarios).
    pub users: Option<UserAddressing>,
    #[serde(skip)]
    pub jwt_secret: Option<String>,
}

impl Config {
    /// Which publishes each connection is owed.
    pub fn owed(&self) -> crate::users::Owed {
        match self.scenario {
            Scenario::Users => crate::users::Owed::RoundRobin {
                users: self.conns as u64,
            },
            _ => crate::users::Owed::All,
        }
    }

    pub fn duration_ns(&self) -> u64 {
        (self.duration_s * 1e9) as u64
    }

    pub fn timeout_ns(&self) -> u64 {
        (self.timeout_s * 1e9) as u64
    }

    /// The parameters worth printing for this scenario, as JSON.
    pub fn params_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        let keep: &[&str] = match self.scenario {
            Scenario::Connect => &[
                "url",
                "conns",
                "procs",
                "source_ips",
                "rate",
                "duration_s",
                "timeout_s",
            ],
            Scenario::Echo => &[
                "url",
                "conns",
                "procs",
                "source_ips",
                "rate",
                "duration_s",
                "timeout_s",
                "size",
                "inflight",
                "binary",
            ],
            Scenario::Fanout | Scenario::Acks | Scenario::Churn | Scenario::Users => &[
                "url",
                "api",
                "conns",
                "procs",
                "source_ips",
                "rate",
                "duration_s",
                "timeout_s",
                "channel",
                "messages",
                "size",
                "inflight",
                "interval_ms",
                "pub_conns",
                "broadcast",
                "batch",
                "churn_rate",
                "churn_grace_ms",
                "users",
            ],
        };
        if let serde_json::Value::Object(m) = &mut v {
            m.retain(|k, _| keep.contains(&k.as_str()));
            if self.scenario != Scenario::Churn {
                m.remove("churn_rate");
                m.remove("churn_grace_ms");
            }
            if self.scenario == Scenario::Users {
                m.remove("channel");
            } else {
                m.remove("users");
            }
        }
        v
    }
}

/// True when this process runs in a named network namespace (`ip netns add`, as bench/compare.sh --netns creates
/// for the generator, whose only link is a veth pair to the gateway's namespace): there a private address reaches
/// nothing but that gateway.
fn in_own_network_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(own) = std::fs::metadata("/proc/self/ns/net") else {
        return false;
    };
    let Ok(named) = std::fs::read_dir("/run/netns") else {
        return false;
    };
    named.flatten().any(|e| {
        std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == own.ino() && m.dev() == own.dev())
    })
}

/// Splits `scheme://host[:port][/path]` and checks the host is a loopback address (the only allowed target; see
/// [`in_own_network_namespace`] for the exception).
pub fn parse_url(url: &str, scheme: &str) -> Result<(SocketAddrV4, String, String), String> {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| format!("{url}: expected a {scheme}:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{url}: bad port {p:?}"))?,
        ),
        None => (authority, 80),
    };
    let ip: Ipv4Addr = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse()
            .map_err(|_| format!("{url}: host must be an IPv4 address or localhost"))?
    };
    let reachable_here = ip.is_loopback() || ip.is_private() && in_own_network_namespace();
    if !reachable_here {
        return Err(format!(
            "{url}: only loopback targets (127.0.0.0/8) are allowed (and private addresses when the generator \
             runs in its own network namespace: bench/compare.sh --netns)"
        ));
    }
    Ok((SocketAddrV4::new(ip, port), authority.to_string(), path))
}

/// Percent-encodes a channel name for the query string.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn with_channel(path: &str, channel: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}channels={}", url_encode(channel))
}

/// Default processes: enough that each holds at most 18000 connections (the hard fd limit is 20000 here).
pub fn auto_procs(conns: usize) -> usize {
    conns.div_ceil(18_000).max(1)
}

/// Default source addresses: one per 20000 connections (about 28k ephemeral ports per address and destination).
pub fn auto_source_ips(conns: usize) -> usize {
    conns.div_ceil(20_000).max(1)
}

pub fn resolve(cmd: &Command) -> Result<Config, String> {
    let default_publish = PublishArgs {
        channel: "bench".into(),
        messages: 100,
        size: 1024,
        inflight: 8,
        interval_ms: 0,
        pub_conns: 1,
        broadcast: false,
        batch: 1,
        text_pad: false,
    };
    let (scenario, common, publish, churn_rate, churn_grace_ms, echo, connect_channel) = match cmd {
        Command::Connect(a) => (
            Scenario::Connect,
            &a.common,
            default_publish,
            0.0,
            0,
            None,
            a.channel.clone(),
        ),
        Command::Fanout(a) => (
            Scenario::Fanout,
            &a.common,
            a.publish.clone(),
            0.0,
            0,
            None,
            None,
        ),
        Command::Churn(a) => (
            Scenario::Churn,
            &a.common,
            a.publish.clone(),
            a.churn_rate,
            a.churn_grace_ms,
            None,
            None,
        ),
        Command::Echo(a) => (
            Scenario::Echo,
            &a.common,
            default_publish,
            0.0,
            0,
            Some(a),
            None,
        ),
        Command::Acks(a) => {
            let mut p = a.publish.clone();
            if p.interval_ms == 0 {
                p.interval_ms = 1000;
            }
            (Scenario::Acks, &a.common, p, 0.0, 0, None, None)
        }
        Command::Users(a) => (
            Scenario::Users,
            &a.common,
            a.publish.clone(),
            0.0,
            0,
            None,
            None,
        ),
        Command::Report(_) => return Err("report is not a load scenario".into()),
    };
    let users =
        match cmd {
            Command::Users(a) => match (&a.jwt_secret, a.topics) {
                (Some(s), false) if !s.is_empty() => Some(UserAddressing::Jwt),
                (None, true) => Some(UserAddressing::Topics),
                _ => return Err(
                    "users needs --jwt-secret SECRET (the gateway's auth.hs256_secret) or --topics"
                        .into(),
                ),
            },
            _ => None,
        };
    let url = common.url.clone().unwrap_or_else(|| {
        if scenario == Scenario::Echo {
            "ws://127.0.0.1:8080/echo".into()
        } else {
            "ws://127.0.0.1:8080/ws".into()
        }
    });
    let (target, host, mut path) = parse_url(&url, "ws")?;
    let (api_addr, api_host, _) = parse_url(common.api.trim_end_matches('/'), "http")?;
    // A user connection's path gets its own token or channel per connection (Worker::request_path).
    if scenario.subscribes() && scenario != Scenario::Users {
        path = with_channel(&path, &publish.channel);
    } else if let Some(ch) = &connect_channel {
        path = with_channel(&path, ch);
    }
    if common.conns == 0 {
        return Err("--conns must be at least 1".into());
    }
    let procs = if common.procs == 0 {
        auto_procs(common.conns)
    } else {
        common.procs
    };
    if procs > crate::shared::MAX_PROCS {
        return Err(format!("--procs at most {}", crate::shared::MAX_PROCS));
    }
    let source_ips = if common.source_ips == 0 {
        auto_source_ips(common.conns)
    } else {
        common.source_ips
    };
    if source_ips > 65_000 {
        return Err("--source-ips at most 65000".into());
    }
    if !(common.duration > 0.0 && common.timeout > 0.0) {
        return Err("--duration and --timeout must be positive".into());
    }
    if common.duration > 86_400.0 || common.timeout > 3_600.0 {
        return Err("--duration at most a day, --timeout at most an hour".into());
    }
    let (size, inflight, binary) = match echo {
        Some(e) => (e.size, e.inflight, e.binary),
        None => (publish.size, publish.inflight, false),
    };
    if scenario == Scenario::Echo && size < 20 {
        return Err("echo --size must be at least 20".into());
    }
    if inflight == 0 || publish.pub_conns == 0 {
        return Err("--inflight and --pub-conns must be at least 1".into());
    }
    if publish.batch == 0 || publish.batch > 10_000 {
        return Err("--batch must be 1..=10000".into());
    }
    if scenario == Scenario::Users && publish.broadcast {
        return Err("users: every publish goes to one user; --broadcast does not apply".into());
    }
    if publish.messages > 100_000_000 {
        return Err("--messages at most 100000000".into());
    }
    Ok(Config {
        scenario,
        label: common
            .label
            .clone()
            .unwrap_or_else(|| scenario.name().to_string()),
        url,
        target,
        host,
        path,
        api: common.api.clone(),
        api_addr,
        api_host,
        conns: common.conns,
        procs,
        source_ips,
        rate: common.rate.max(0.0),
        duration_s: common.duration,
        timeout_s: common.timeout,
        server_pid: common.server_pid,
        api_key: common.api_key.clone(),
        max_message: common.max_message,
        deflate: common.deflate,
        settle_ms: common.settle_ms,
        quiet: common.quiet,
        channel: publish.channel,
        messages: publish.messages,
        size,
        inflight,
        interval_ms: publish.interval_ms,
        pub_conns: publish.pub_conns,
        broadcast: publish.broadcast,
        batch: publish.batch,
        text_pad: publish.text_pad,
        churn_rate,
        churn_grace_ms,
        binary,
        users,
        jwt_secret: match cmd {
            Command::Users(a) => a.jwt_secret.clone(),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (a, host, path) = parse_url("ws://127.0.0.1:8080/ws", "ws").unwrap();
        assert_eq!(a, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((host.as_str(), path.as_str()), ("127.0.0.1:8080", "/ws"));
        let (a, _, path) = parse_url("http://localhost:8081", "http").unwrap();
        assert_eq!((a.port(), path.as_str()), (8081, "/"));
        assert!(parse_url("ws://10.0.0.1:80/ws", "ws").is_err());
        assert!(parse_url("ws://example.com/ws", "ws").is_err());
        assert!(parse_url("http://127.0.0.1:1/", "ws").is_err());
        assert_eq!(with_channel("/ws", "a b"), "/ws?channels=a%20b");
        assert_eq!(with_channel("/ws?x=1", "doc:1"), "/ws?x=1&channels=doc:1");
    }

    #[test]
    fn resolve_defaults() {
        let cli = Cli::parse_from(["wsgate-bench", "echo", "--conns", "40000"]);
        let c = resolve(&cli.cmd).unwrap();
        assert_eq!(c.path, "/echo");
        assert_eq!((c.procs, c.source_ips), (3, 2));
        let cli = Cli::parse_from(["wsgate-bench", "fanout", "--conns", "10", "--channel", "x"]);
        let c = resolve(&cli.cmd).unwrap();
        assert_eq!(c.path, "/ws?channels=x");
        assert!(c.params_json().get("churn_rate").is_none());
        let cli = Cli::parse_from(["wsgate-bench", "acks"]);
        assert_eq!(resolve(&cli.cmd).unwrap().interval_ms, 1000);
        let cli = Cli::parse_from(["wsgate-bench", "echo", "--size", "5"]);
        assert!(resolve(&cli.cmd).is_err());
        let cli = Cli::parse_from(["wsgate-bench", "users", "--conns", "10"]);
        assert!(
            resolve(&cli.cmd).is_err(),
            "users needs a way to address users"
        );
        let cli = Cli::parse_from(["wsgate-bench", "users", "--jwt-secret", "k"]);
        let c = resolve(&cli.cmd).unwrap();
        assert_eq!(
            (c.path.as_str(), c.users),
            ("/ws", Some(UserAddressing::Jwt))
        );
        assert!(c.params_json().get("channel").is_none());
        assert!(
            Cli::try_parse_from(["wsgate-bench", "users", "--jwt-secret", "k", "--topics"])
                .is_err()
        );
    }
}
