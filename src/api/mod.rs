//! The HTTP/1.1 API listener: one thread with its own epoll loop, keep-alive and pipelining. Handlers encode a
//! publish once and hand it to the reactors through the hub.

mod batch_routes;
mod connection_routes;
pub mod demo_relay;
mod history_routes;
/// Public so the fuzz targets (fuzz/) can reach the request parser; the API thread is its only real caller.
pub mod http;
mod latency;
mod lookups;
mod metrics;
mod routes;
mod stats_history;
mod status_routes;

use crate::cluster::ClusterHandle;
use crate::config::Config;
use crate::hub::{Hub, Outbox};
use crate::pool::MemoryBudget;
use crate::reactor::sys::{net, Epoll, Poller, Ready};
use crate::reactor::SharedLatency;
use crate::tls::TlsAcceptor;
use http::Parsed;
use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

const TOKEN_LISTENER: u64 = u64::MAX - 1;
const TOKEN_LOOKUPS: u64 = u64::MAX - 2;
/// API connections held at once for ordinary requests (the API is for a few backend clients).
pub const MAX_API_CONNECTIONS: usize = 1024;
/// Connections accepted beyond [`MAX_API_CONNECTIONS`] for one request each: `/healthz` and `/metrics` are
/// answered, anything else gets 503. They keep a health probe working while every ordinary slot is held; when
/// they are all in use a new one takes the place of the oldest, so idle ones cannot lock probes out either.
pub const PROBE_CONNECTIONS: usize = 64;
/// Routes a connection beyond the limit is still served.
const PROBE_ROUTES: [&str; 2] = ["/healthz", "/metrics"];
/// Most bytes asked of the socket per read, whatever the buffer's capacity.
const READ_CHUNK: usize = 16 * 1024;
/// Unsent response bytes above which a pipelining client is neither read nor parsed until its responses are out,
/// so requests cannot make the server queue responses without bound.
const MAX_PENDING_RESPONSES: usize = 16 * 1024;
/// How often deadlines are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

struct Client {
    fd: RawFd,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    written: usize,
    close_after_write: bool,
    /// Reading stopped because too many responses are unsent (see MAX_PENDING_RESPONSES).
    read_paused: bool,
    /// Accepted beyond MAX_API_CONNECTIONS (see PROBE_CONNECTIONS).
    probe: bool,
    accepted: Instant,
    /// When the first byte of the request being received arrived; None between requests.
    request_started: Option<Instant>,
    /// Last read or write progress.
    last_active: Instant,
    /// The request buffer's capacity as counted in the memory budget.
    counted: usize,
    /// A lookup handed to the worker (src/api/lookups.rs): its ticket, and whether to close after its response.
    /// Nothing more is read or answered until it is back.
    awaiting: Option<(u64, bool)>,
}

impl Client {
    fn pending(&self) -> usize {
        self.wbuf.len() - self.written
    }
}

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
    /// First byte of a request received → its response queued.
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
    /// The last minutes, second by second, for the status page.
    pub history: Mutex<stats_history::History>,
}

impl Context {
    pub fn new(
        hub: Arc<Hub>,
        config: Arc<Config>,
        tls: Option<Arc<TlsAcceptor>>,
        cluster: Option<ClusterHandle>,
        budget: Arc<MemoryBudget>,
    ) -> Self {
        Context {
            hub,
            config,
            tls,
            cluster,
            stats: ApiStats::default(),
            budget,
            history: Mutex::default(),
        }
    }
}

pub struct Api {
    poller: Epoll,
    listener: RawFd,
    clients: slab::Slab<Client>,
    /// Clients in ordinary slots.
    ordinary: usize,
    /// Probe clients, oldest first.
    probes: VecDeque<usize>,
    /// Read buffer of one READ_CHUNK, copied into the client's request buffer.
    chunk: Box<[u8]>,
    ctx: Context,
    stop: Arc<AtomicBool>,
    /// The worker for lookups that read Redis (cluster mode only), and the next ticket it is given.
    lookups: Option<lookups::Lookups>,
    next_ticket: u64,
    /// Bytes of request buffers held, and the share last reported to the memory budget.
    held: usize,
    reported: usize,
}

impl Api {
    pub fn new(listener: RawFd, ctx: Context, stop: Arc<AtomicBool>) -> io::Result<Self> {
        let mut poller = Epoll::new(256)?;
        poller.add(listener, TOKEN_LISTENER)?;
        let lookups = match &ctx.cluster {
            Some(cluster) => {
                let l = lookups::Lookups::start(ctx.hub.clone(), cluster.clone())?;
                poller.add(l.fd(), TOKEN_LOOKUPS)?;
                Some(l)
            }
            None => None,
        };
        Ok(Api {
            poller,
            listener,
            clients: slab::Slab::new(),
            ordinary: 0,
            probes: VecDeque::with_capacity(PROBE_CONNECTIONS),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            ctx,
            stop,
            lookups,
            next_ticket: 0,
            held: 0,
            reported: 0,
        })
    }

    pub fn run(&mut self) -> io::Result<()> {
        let mut ready: Vec<Ready> = Vec::with_capacity(256);
        let mut last_sweep = Instant::now();
        let hub = self.ctx.hub.clone();
        while !self.stop.load(Ordering::Relaxed) {
            if let Some(l) = &self.lookups {
                l.arm();
            }
            // Everything handed to the reactors is woken before this thread may sleep: each outbox is dropped
            // (flushed) before the next wait.
            self.finish_lookups(&mut hub.outbox());
            self.poller
                .wait(&mut ready, SWEEP_EVERY.as_millis() as i32)?;
            // One batch of hand-overs for all the requests of this pass: one wake-up per reactor at most.
            let mut out = hub.outbox();
            for ev in ready.iter() {
                if ev.token == TOKEN_LISTENER {
                    self.accept_all();
                } else if ev.token == TOKEN_LOOKUPS {
                    self.finish_lookups(&mut out);
                } else {
                    self.on_ready(ev.token as usize, ev, &mut out);
                }
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                self.sweep(&mut out);
                self.ctx
                    .history
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .sample(&self.ctx);
            }
        }
        Ok(())
    }

    /// Enforces the deadlines: a request not complete within `api.request_timeout` of its first byte gets 408; a
    /// connection without read or write progress for `api.idle_timeout` is closed (idle keep-alive, or a client
    /// that leaves its responses unread); a probe connection lives at most `api.request_timeout`.
    fn sweep(&mut self, out: &mut Outbox) {
        let request_timeout = Duration::from_secs(self.ctx.config.api.request_timeout);
        let idle_timeout = Duration::from_secs(self.ctx.config.api.idle_timeout);
        let now = Instant::now();
        let mut late = Vec::new();
        let mut idle = Vec::new();
        for (key, c) in self.clients.iter() {
            let request_late = !c.read_paused
                && !c.close_after_write
                && c.request_started
                    .is_some_and(|t| now.duration_since(t) > request_timeout);
            if request_late {
                late.push(key);
            } else if now.duration_since(c.last_active) > idle_timeout
                || (c.probe && now.duration_since(c.accepted) > request_timeout)
            {
                idle.push(key);
            }
        }
        for key in idle {
            self.close(key);
        }
        for key in late {
            let message = format!(
                "request not complete within api.request_timeout ({} s)",
                request_timeout.as_secs()
            );
            self.ctx.stats.errors_total.fetch_add(1, Ordering::Relaxed);
            let client = &mut self.clients[key];
            client.rbuf.clear();
            client.request_started = None;
            client
                .wbuf
                .extend_from_slice(&http::error_response(408, &message));
            client.close_after_write = true;
            self.write(key, out);
        }
    }

    fn accept_all(&mut self) {
        loop {
            match net::accept(self.listener) {
                Ok(fd) => {
                    let probe = self.ordinary >= MAX_API_CONNECTIONS;
                    if probe && self.probes.len() >= PROBE_CONNECTIONS {
                        if let Some(oldest) = self.probes.front().copied() {
                            self.close(oldest);
                        }
                    }
                    let now = Instant::now();
                    let key = self.clients.insert(Client {
                        fd,
                        rbuf: Vec::new(),
                        wbuf: Vec::new(),
                        written: 0,
                        close_after_write: false,
                        read_paused: false,
                        probe,
                        accepted: now,
                        request_started: None,
                        last_active: now,
                        counted: 0,
                        awaiting: None,
                    });
                    if probe {
                        self.probes.push_back(key);
                    } else {
                        self.ordinary += 1;
                    }
                    if self.poller.add(fd, key as u64).is_err() {
                        self.close(key);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("api: accept: {e}");
                    return;
                }
            }
        }
    }

    fn on_ready(&mut self, key: usize, ev: &Ready, out: &mut Outbox) {
        if !self.clients.contains(key) {
            return;
        }
        if ev.error {
            return self.close(key);
        }
        if ev.readable && !self.read(key, out) {
            return;
        }
        self.write(key, out);
    }

    /// Reads at most READ_CHUNK at a time and answers every complete request, until the socket is drained or too
    /// many responses are unsent. False if the client was closed.
    fn read(&mut self, key: usize, out: &mut Outbox) -> bool {
        let mut eof = false;
        loop {
            let client = &mut self.clients[key];
            if client.close_after_write {
                break; // ignore anything after a request we answered with Connection: close
            }
            if client.pending() > MAX_PENDING_RESPONSES || client.awaiting.is_some() {
                client.read_paused = true;
                break; // backpressure: resumed by write() once the responses are out
            }
            match socket::recv(client.fd, &mut self.chunk, MsgFlags::empty()) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    let now = Instant::now();
                    client.last_active = now;
                    if client.rbuf.is_empty() {
                        client.request_started = Some(now);
                    }
                    client.rbuf.extend_from_slice(&self.chunk[..n]);
                    // Over the budget, a request that holds more than one read's worth (a body) is refused;
                    // small requests (health checks, stats) still pass.
                    if !self.account(key) && self.clients[key].rbuf.len() > READ_CHUNK {
                        self.refuse_over_budget(key);
                        break;
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    self.close(key);
                    return false;
                }
            }
            self.answer(key, out);
        }
        if eof {
            // The client half-closed: finish writing what it asked for, then close.
            let client = &mut self.clients[key];
            client.close_after_write = true;
            if client.pending() == 0 && client.awaiting.is_none() {
                self.close(key);
                return false;
            }
        }
        true
    }

    /// Handles the complete requests in the read buffer in order (pipelining), appending their responses, until
    /// MAX_PENDING_RESPONSES bytes are unsent.
    fn answer(&mut self, key: usize, out: &mut Outbox) {
        let max_body = self.ctx.config.api.max_body;
        loop {
            let client = &mut self.clients[key];
            if client.close_after_write || client.rbuf.is_empty() || client.awaiting.is_some() {
                break;
            }
            if client.pending() > MAX_PENDING_RESPONSES {
                client.read_paused = true;
                break;
            }
            let probe = client.probe;
            let parsed = http::parse(&client.rbuf, max_body);
            let (consumed, response, close) = match parsed {
                Parsed::Partial => break,
                Parsed::Error(status, message) => {
                    self.ctx.stats.errors_total.fetch_add(1, Ordering::Relaxed);
                    (
                        client.rbuf.len(),
                        http::error_response(status, message),
                        true,
                    )
                }
                Parsed::Request(req) => {
                    self.ctx
                        .stats
                        .requests_total
                        .fetch_add(1, Ordering::Relaxed);
                    let consumed = req.total_len;
                    if probe && !PROBE_ROUTES.contains(&req.path) {
                        self.ctx.stats.errors_total.fetch_add(1, Ordering::Relaxed);
                        let message = format!(
                            "all {MAX_API_CONNECTIONS} API connections are in use; retry later \
                             (only /healthz and /metrics are served beyond the limit)"
                        );
                        (consumed, http::error_response(503, &message), true)
                    } else {
                        // A probe connection serves one request.
                        let close = probe || !req.keep_alive;
                        let lookup = self
                            .lookups
                            .as_ref()
                            .and_then(|_| connection_routes::deferred_lookup(&req, &self.ctx));
                        match lookup {
                            Some(lookup) => match self.defer(key, lookup, close) {
                                Ok(()) => {
                                    let client = &mut self.clients[key];
                                    client.rbuf.drain(..consumed);
                                    client.request_started = None;
                                    break;
                                }
                                Err(response) => (consumed, response, close),
                            },
                            None => {
                                let response = routes::handle(&req, &self.ctx, out);
                                (consumed, response.to_bytes(close), close)
                            }
                        }
                    }
                }
            };
            let client = &mut self.clients[key];
            if let Some(started) = client.request_started {
                self.ctx.stats.request_latency.record(started.elapsed());
            }
            client.rbuf.drain(..consumed);
            client.wbuf.extend_from_slice(&response);
            // Bytes already here belong to the next request: its time runs from now.
            client.request_started = (!client.rbuf.is_empty()).then(Instant::now);
            if close {
                client.close_after_write = true;
            }
        }
        let client = &mut self.clients[key];
        if client.rbuf.capacity() > 4 * READ_CHUNK && client.rbuf.len() <= READ_CHUNK {
            // Give back what a large body needed.
            client.rbuf.shrink_to(READ_CHUNK);
        }
        self.account(key);
    }

    /// Hands a lookup to the worker; Err: answered at once instead (the worker is full).
    fn defer(
        &mut self,
        key: usize,
        lookup: connection_routes::Lookup,
        close: bool,
    ) -> Result<(), Vec<u8>> {
        let Some(lookups) = &self.lookups else {
            return Err(http::error_response(503, "no lookup worker"));
        };
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        match lookups.submit(key, ticket, lookup) {
            Ok(()) => {
                self.clients[key].awaiting = Some((ticket, close));
                Ok(())
            }
            Err(response) => Err(response.to_bytes(close)),
        }
    }

    /// Sends the lookups' answers to the clients still waiting for them, then reads and answers what those
    /// clients sent meanwhile.
    fn finish_lookups(&mut self, out: &mut Outbox) {
        let Some(lookups) = &self.lookups else {
            return;
        };
        let done: Vec<lookups::Done> = lookups.take().collect();
        for d in done {
            let Some(client) = self.clients.get_mut(d.client) else {
                continue;
            };
            let Some((ticket, close)) = client.awaiting else {
                continue;
            };
            if ticket != d.ticket {
                continue; // the slot was reused by a new connection
            }
            if d.response.status >= 400 {
                self.ctx.stats.errors_total.fetch_add(1, Ordering::Relaxed);
            }
            client.awaiting = None;
            client.wbuf.extend_from_slice(&d.response.to_bytes(close));
            client.close_after_write |= close;
            // Reading stopped while the lookup ran: write() resumes it once the response is out.
            client.read_paused = true;
            self.write(d.client, out);
        }
    }

    /// Counts the client's request buffer in the process-wide memory budget; false while the budget is exceeded.
    fn account(&mut self, key: usize) -> bool {
        let client = &mut self.clients[key];
        let cap = client.rbuf.capacity();
        if cap == client.counted {
            return !self.ctx.budget.exceeded(self.ctx.budget.held());
        }
        self.held = self.held + cap - client.counted;
        client.counted = cap;
        let total = self.ctx.budget.report(&mut self.reported, self.held);
        !self.ctx.budget.exceeded(total)
    }

    /// The process holds more buffered input than `server.max_buffered_bytes`: the request being received is
    /// refused with 503 and its bytes are dropped (a body is what an API client holds).
    fn refuse_over_budget(&mut self, key: usize) {
        self.ctx.stats.errors_total.fetch_add(1, Ordering::Relaxed);
        let client = &mut self.clients[key];
        client.rbuf = Vec::new();
        client.wbuf.extend_from_slice(&http::error_response(
            503,
            "memory budget exceeded (server.max_buffered_bytes); retry later",
        ));
        client.close_after_write = true;
        self.account(key);
    }

    /// Sends the unsent responses; once all are out, resumes a client paused for backpressure.
    fn write(&mut self, key: usize, out: &mut Outbox) {
        loop {
            let client = &mut self.clients[key];
            while client.written < client.wbuf.len() {
                match net::write(client.fd, &client.wbuf[client.written..]) {
                    Ok(n) => {
                        client.written += n;
                        client.last_active = Instant::now();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if client.written >= client.wbuf.len() / 2 {
                            // Keep the buffer to the unsent part for a client that reads slowly but steadily.
                            client.wbuf.drain(..client.written);
                            client.written = 0;
                        }
                        return;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return self.close(key),
                }
            }
            client.wbuf.clear();
            client.written = 0;
            if client.wbuf.capacity() > 4 * MAX_PENDING_RESPONSES {
                client.wbuf.shrink_to(MAX_PENDING_RESPONSES);
            }
            if client.close_after_write && client.awaiting.is_none() {
                return self.close(key);
            }
            if client.awaiting.is_some() || !std::mem::take(&mut client.read_paused) {
                return;
            }
            // The requests already buffered wait no longer on the client: their time runs from now.
            if !client.rbuf.is_empty() {
                client.request_started = Some(Instant::now());
            }
            // Edge-triggered: bytes that arrived while paused raise no new event, so answer and read them now,
            // then send what that produced.
            self.answer(key, out);
            if !self.read(key, out) {
                return;
            }
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(client) = self.clients.try_remove(key) {
            net::close(client.fd);
            self.held -= client.counted;
            self.ctx.budget.report(&mut self.reported, self.held);
            if client.probe {
                self.probes.retain(|&k| k != key);
            } else {
                self.ordinary -= 1;
            }
        }
    }
}
