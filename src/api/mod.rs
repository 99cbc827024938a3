//! The HTTP/1.1 API, served by every reactor on its own SO_REUSEPORT socket of `api.listen` (separate from the
//! client listener): keep-alive and pipelining (conns.rs), a publish parsed, encoded once and queued for this
//! reactor's subscribers in the iteration that read it and handed to the other reactors in batches
//! (hub::Outbox with the reactor's Backlog), routes that wait (for the reactors' answers, Redis, files) handed to
//! a worker thread (worker.rs). on_reactor.rs is the reactor handler: the gateway plus this reactor's API.

mod batch_routes;
mod borrowed;
mod connection_routes;
mod conns;
pub mod demo_relay;
mod history_routes;
/// Public so the fuzz targets (fuzz/) can reach the request parser; conns.rs is its only real caller.
pub mod http;
mod latency;
mod metrics;
mod on_reactor;
mod routes;
mod spread;
mod stats_history;
mod status_routes;
mod worker;

pub use on_reactor::GatewayWithApi;
pub use spread::{Handed, Spread};
pub use worker::Worker;

use crate::cluster::ClusterHandle;
use crate::config::Config;
use crate::hub::Hub;
use crate::pool::MemoryBudget;
use crate::reactor::SharedLatency;
use crate::tls::TlsAcceptor;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

/// API connections held at once for ordinary requests, over all reactors (the API is for a few backend clients).
pub const MAX_API_CONNECTIONS: usize = 1024;
/// Connections each reactor accepts beyond [`MAX_API_CONNECTIONS`] for one request each: `/healthz` and
/// `/metrics` are answered, anything else gets 503. They keep a health probe working while every ordinary slot is
/// held; when a reactor's are all in use a new one takes the place of its oldest, so idle ones cannot lock probes
/// out either.
pub const PROBE_CONNECTIONS: usize = 64;

/// Counters of the HTTP API.
#[derive(Default)]
pub struct ApiStats {
    pub requests_total: AtomicU64,
    pub errors_total: AtomicU64,
    pub publishes_total: AtomicU64,
    pub broadcasts_total: AtomicU64,
    /// `POST /api/batch` requests accepted, the commands they held, and those answered with an error.
    pub batches_total: AtomicU64,
    pub batch_commands_total: AtomicU64,
    pub batch_failed_commands_total: AtomicU64,
    /// First byte of a request received → its response queued (each reactor hands its samples over every
    /// 250 ms).
    pub request_latency: SharedLatency,
}

/// What the API handlers reach: the reactors (through the hub), and what only the API uses.
pub struct Context {
    pub hub: Arc<Hub>,
    pub config: Arc<Config>,
    /// The reloadable TLS configuration, when `tls.cert` is set (for `POST /api/reload-tls`).
    pub tls: Option<Arc<TlsAcceptor>>,
    /// The bridge to the other nodes; None when standalone (`cluster.redis` empty).
    pub cluster: Option<ClusterHandle>,
    pub stats: ApiStats,
    /// The process-wide budget for buffered input (`server.max_buffered_bytes`), shared with the reactors.
    pub budget: Arc<MemoryBudget>,
    /// The last minutes, second by second, for the status page (sampled by the worker).
    pub history: Mutex<stats_history::History>,
    /// Ordinary API connections open over all reactors (bounded by [`MAX_API_CONNECTIONS`]).
    pub ordinary_connections: AtomicUsize,
    /// Per reactor: the API connections it serves and the requests it read (how the API load spreads).
    pub per_reactor: Vec<ReactorApiStats>,
    /// How a reactor hands an accepted API connection to one that serves fewer.
    pub spread: Spread,
}

/// One reactor's share of the API (`/api/stats` `reactors[i].api_connections`, `api_requests_total`); a cache
/// line each, so the reactors do not write to each other's.
#[derive(Default)]
#[repr(align(128))]
pub struct ReactorApiStats {
    pub connections: AtomicU64,
    pub requests_total: AtomicU64,
}

impl Context {
    pub fn new(
        hub: Arc<Hub>,
        config: Arc<Config>,
        tls: Option<Arc<TlsAcceptor>>,
        cluster: Option<ClusterHandle>,
        budget: Arc<MemoryBudget>,
        spread: Spread,
    ) -> Self {
        Context {
            spread,
            config,
            tls,
            cluster,
            stats: ApiStats::default(),
            budget,
            history: Mutex::default(),
            ordinary_connections: AtomicUsize::new(0),
            per_reactor: (0..hub.reactors.len())
                .map(|_| Default::default())
                .collect(),
            hub,
        }
    }
}
