//! One reactor's API connections: HTTP/1.1 with keep-alive and pipelining (responses in request order), served on
//! the reactor's thread. The reactor accepts them on its own socket of `api.listen` and reports their readiness;
//! everything else — reads, parsing, routes, writes, deadlines — is here.
//!
//! A reactor never blocks, so neither does anything here:
//! - hand-overs to the reactors go through the reactor's outbox and [`Backlog`]: commands for this reactor run in
//!   the same iteration, the other reactors are woken once the iteration's requests are read; a command for a full queue waits in the
//!   backlog, and while any waits no connection is read or parsed (backpressure, and the backlog's bound: at most
//!   what one request hands over);
//! - a route that waits goes to the worker (worker.rs); its connection reads nothing more until the answer is
//!   back ([`Client::awaiting`]).
//!
//! Hostile clients are bounded as on any listener of the gateway: [`MAX_API_CONNECTIONS`] ordinary connections
//! (then [`PROBE_CONNECTIONS`] per reactor for `/healthz` and `/metrics`), `api.max_body`, unsent responses
//! ([`MAX_PENDING_RESPONSES`]), `api.request_timeout` and `api.idle_timeout`, and request buffers counted in
//! `server.max_buffered_bytes`.

use super::http::{self, Parsed};
use super::spread::Handed;
use super::worker::{Done, Job, WorkerQueue};
use super::{routes, Context, MAX_API_CONNECTIONS, PROBE_CONNECTIONS};
use crate::hub::Backlog;
use crate::reactor::sys::net;
use crate::reactor::sys::Ready;
use crate::reactor::{Latency, SIDE_TOKENS};
use crossbeam_channel::Receiver;
use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Routes a connection beyond the limit is still served.
const PROBE_ROUTES: [&str; 2] = ["/healthz", "/metrics"];
/// Most bytes asked of the socket per read, whatever the buffer's capacity.
const READ_CHUNK: usize = 16 * 1024;
/// Unsent response bytes above which a pipelining client is neither read nor parsed until its responses are out,
/// so requests cannot make the server queue responses without bound.
const MAX_PENDING_RESPONSES: usize = 16 * 1024;
/// How often deadlines are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How long the reactor may sleep while commands wait for a full queue (that reactor is busy draining it).
const BACKLOG_RETRY_MS: i32 = 1;
/// A connection's token is its slot below this, plus a generation above: a readiness the poller reported for a
/// closed connection's socket (io_uring completions already queued when its poll was cancelled) is not taken for
/// the connection that got its slot.
const SLOTS: u32 = 1 << 16;

struct Client {
    fd: RawFd,
    /// The reactor's token for this connection's socket (slot and generation, see SLOTS).
    token: u32,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    written: usize,
    close_after_write: bool,
    /// Reading stopped: too many responses are unsent (see MAX_PENDING_RESPONSES), a request is with the worker,
    /// or commands wait in the backlog.
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
    /// A request handed to the worker: its ticket, and whether to close after its response. Nothing more is
    /// read or answered until it is back.
    awaiting: Option<(u64, bool)>,
}

impl Client {
    fn pending(&self) -> usize {
        self.wbuf.len() - self.written
    }
}

/// See the module documentation.
pub struct ApiConns {
    /// This reactor's index.
    me: usize,
    clients: slab::Slab<Client>,
    /// Probe clients, oldest first.
    probes: VecDeque<usize>,
    /// Read buffer of one READ_CHUNK, copied into the client's request buffer.
    chunk: Box<[u8]>,
    ctx: Arc<Context>,
    /// Commands for full queues and the wake-ups of this iteration (hub::Backlog).
    backlog: Backlog,
    /// Clients that stopped reading while the backlog waits.
    stalled: Vec<usize>,
    worker: WorkerQueue,
    /// The worker's answers for this reactor, and the next ticket given.
    done: Receiver<Done>,
    next_ticket: u64,
    /// Connections other reactors accepted for this one (src/api/spread.rs).
    handed: Handed,
    /// Sockets closed since the caller last took them ([`Self::take_closed`]).
    closed: Vec<(RawFd, u32)>,
    /// Generation of the next connection's token.
    generation: u32,
    /// Connections that sent requests in this loop iteration: read again during a long flush pass.
    recent: Vec<usize>,
    last_sweep: Instant,
    /// Bytes of request buffers held, and the share last reported to the memory budget.
    held: usize,
    reported: usize,
    /// Request latencies recorded since the last hand-over to the shared histogram (at each sweep: no lock per
    /// request shared by the reactors).
    latency: Latency,
}

impl ApiConns {
    pub fn new(
        me: usize,
        ctx: Arc<Context>,
        worker: WorkerQueue,
        done: Receiver<Done>,
        handed: Handed,
    ) -> Self {
        let reactors = ctx.hub.reactors.len();
        ApiConns {
            me,
            clients: slab::Slab::new(),
            probes: VecDeque::with_capacity(PROBE_CONNECTIONS),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            ctx,
            backlog: Backlog::new(me, reactors),
            stalled: Vec::new(),
            worker,
            done,
            next_ticket: 0,
            handed,
            closed: Vec::new(),
            generation: 0,
            recent: Vec::new(),
            last_sweep: Instant::now(),
            held: 0,
            reported: 0,
            latency: Latency::default(),
        }
    }

    /// A connection accepted on this reactor's API listener, served here or handed to the reactor that serves the
    /// fewest (src/api/spread.rs): its token for this reactor to watch it under, None when it is not served here.
    pub fn accept(&mut self, fd: RawFd) -> Option<u32> {
        let ctx = self.ctx.clone();
        let to = ctx.spread.place(self.me, &ctx.per_reactor);
        if to != self.me {
            if ctx.spread.hand(to, fd, &ctx.hub) {
                return None;
            }
            ctx.per_reactor[to]
                .connections
                .fetch_sub(1, Ordering::Relaxed);
            ctx.per_reactor[self.me]
                .connections
                .fetch_add(1, Ordering::Relaxed);
        }
        self.serve(fd)
    }

    /// The next connection another reactor handed to this one, with its token to watch it under.
    pub fn adopt_handed(&mut self) -> Option<(RawFd, u32)> {
        loop {
            let fd = self.handed.next()?;
            if let Some(token) = self.serve(fd) {
                return Some((fd, token));
            }
        }
    }

    /// Serves `fd`, a connection already counted for this reactor: its token, None when it was closed at once.
    fn serve(&mut self, fd: RawFd) -> Option<u32> {
        let ctx = self.ctx.clone();
        let ordinary = &ctx.ordinary_connections;
        let probe = ordinary.fetch_add(1, Ordering::Relaxed) >= MAX_API_CONNECTIONS;
        if probe {
            ordinary.fetch_sub(1, Ordering::Relaxed);
            if self.probes.len() >= PROBE_CONNECTIONS {
                if let Some(oldest) = self.probes.front().copied() {
                    self.close(oldest);
                }
            }
        }
        if self.clients.vacant_key() >= SLOTS as usize {
            // Unreachable below the connection limits; a token must fit all the same.
            if !probe {
                ordinary.fetch_sub(1, Ordering::Relaxed);
            }
            ctx.per_reactor[self.me]
                .connections
                .fetch_sub(1, Ordering::Relaxed);
            net::close(fd);
            return None;
        }
        let now = Instant::now();
        self.generation = (self.generation + 1) % (SIDE_TOKENS / SLOTS);
        let token = self.generation * SLOTS + self.clients.vacant_key() as u32;
        let key = self.clients.insert(Client {
            fd,
            token,
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
        }
        Some(token)
    }

    /// The sockets closed since the last call, with their tokens: the reactor stops watching and closes them.
    pub fn take_closed(&mut self) -> std::vec::Drain<'_, (RawFd, u32)> {
        self.closed.drain(..)
    }

    pub fn on_ready(&mut self, token: u32, ev: &Ready) {
        let key = (token % SLOTS) as usize;
        if self.clients.get(key).is_none_or(|c| c.token != token) {
            return; // a closed connection's
        }
        if ev.error {
            return self.close(key);
        }
        if ev.readable && !self.read(key) {
            return;
        }
        self.write(key);
    }

    /// During the reactor's long flush pass: the connections that sent requests in this iteration are read again,
    /// so a publisher is not held up for the whole pass (with few requests in flight, it would be limited to those
    /// per pass), and what that hands over is woken at once.
    pub fn mid_flush(&mut self) {
        for i in 0..self.recent.len() {
            let key = self.recent[i];
            if self.clients.contains(key) && self.read(key) {
                self.write(key);
            }
        }
        self.hand_over();
    }

    /// The requests of this iteration are read: the other reactors given commands are woken now (once each), so
    /// they deliver while this one writes its own subscribers.
    pub fn hand_over(&mut self) {
        self.backlog.flush(&self.ctx.hub);
    }

    /// The end of the reactor's iteration: retries the backlog, sends the worker's answers, resumes the clients
    /// the backlog stalled once it is empty, enforces deadlines, and wakes the reactors given commands. Returns
    /// how long the reactor may sleep.
    pub fn before_wait(&mut self) -> Option<i32> {
        self.recent.clear();
        self.backlog.flush(&self.ctx.hub);
        self.finish_held();
        if self.backlog.waiting() == 0 {
            for key in std::mem::take(&mut self.stalled) {
                if self.clients.contains(key) {
                    self.write(key); // resumes reading: read_paused is set
                }
            }
        }
        if self.last_sweep.elapsed() >= SWEEP_EVERY {
            self.last_sweep = Instant::now();
            self.sweep();
            self.ctx.stats.request_latency.absorb(&mut self.latency);
        }
        self.backlog.flush(&self.ctx.hub);
        if self.backlog.waiting() > 0 {
            Some(BACKLOG_RETRY_MS)
        } else if !self.clients.is_empty() {
            Some(SWEEP_EVERY.as_millis() as i32)
        } else {
            None
        }
    }

    /// Enforces the deadlines: a request not complete within `api.request_timeout` of its first byte gets 408; a
    /// connection without read or write progress for `api.idle_timeout` is closed (idle keep-alive, or a client
    /// that leaves its responses unread); a probe connection lives at most `api.request_timeout`.
    fn sweep(&mut self) {
        let now = Instant::now();
        let request_timeout = Duration::from_secs(self.ctx.config.api.request_timeout);
        let idle_timeout = Duration::from_secs(self.ctx.config.api.idle_timeout);
        let mut late = Vec::new();
        let mut idle = Vec::new();
        for (key, c) in self.clients.iter() {
            let request_late = !c.read_paused
                && !c.close_after_write
                && c.request_started
                    .is_some_and(|t| now.duration_since(t) > request_timeout);
            if request_late {
                late.push(key);
            } else if c.awaiting.is_none() && now.duration_since(c.last_active) > idle_timeout
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
            http::Response::error(408, &message).write_to(&mut client.wbuf, true);
            client.close_after_write = true;
            self.write(key);
        }
    }

    /// Reads at most READ_CHUNK at a time and answers every complete request, until the socket is drained or
    /// reading pauses. False if the client was closed.
    fn read(&mut self, key: usize) -> bool {
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
            if self.backlog.waiting() > 0 {
                self.stall(key);
                break;
            }
            let client = &mut self.clients[key];
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
            self.answer(key);
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

    /// Stops reading `key` until the backlog is empty.
    fn stall(&mut self, key: usize) {
        let client = &mut self.clients[key];
        if !client.read_paused {
            client.read_paused = true;
            self.stalled.push(key);
        } else if !self.stalled.contains(&key) {
            self.stalled.push(key);
        }
    }

    /// Handles the complete requests in the read buffer in order (pipelining), appending their responses, until
    /// reading pauses. The answered requests leave the buffer together at the end: removing each one from the
    /// front as it is answered would move every pipelined request behind it, once per request.
    fn answer(&mut self, key: usize) {
        let max_body = self.ctx.config.api.max_body;
        // Bytes of the read buffer answered so far.
        let mut done = 0;
        loop {
            let client = &mut self.clients[key];
            if client.close_after_write || client.rbuf.len() == done || client.awaiting.is_some() {
                break;
            }
            if client.pending() > MAX_PENDING_RESPONSES {
                client.read_paused = true;
                break;
            }
            if self.backlog.waiting() > 0 {
                self.stall(key);
                break;
            }
            let client = &mut self.clients[key];
            let probe = client.probe;
            let parsed = http::parse(&client.rbuf[done..], max_body);
            let ctx = &*self.ctx;
            let (consumed, response, close) = match parsed {
                Parsed::Partial => break,
                Parsed::Error(status, message) => {
                    ctx.stats.errors_total.fetch_add(1, Ordering::Relaxed);
                    (
                        client.rbuf.len() - done,
                        http::Response::error(status, message),
                        true,
                    )
                }
                Parsed::Request(req) => {
                    if self.recent.last() != Some(&key) && !self.recent.contains(&key) {
                        self.recent.push(key);
                    }
                    ctx.stats.requests_total.fetch_add(1, Ordering::Relaxed);
                    ctx.per_reactor[self.me]
                        .requests_total
                        .fetch_add(1, Ordering::Relaxed);
                    let consumed = req.total_len;
                    if probe && !PROBE_ROUTES.contains(&req.path) {
                        ctx.stats.errors_total.fetch_add(1, Ordering::Relaxed);
                        let message = format!(
                            "all {MAX_API_CONNECTIONS} API connections are in use; retry later \
                             (only /healthz and /metrics are served beyond the limit)"
                        );
                        (consumed, http::Response::error(503, &message), true)
                    } else {
                        // A probe connection serves one request.
                        let close = probe || !req.keep_alive;
                        if routes::waits(&req, ctx) {
                            self.next_ticket += 1;
                            let ticket = self.next_ticket;
                            if self
                                .worker
                                .submit(Job::new(self.me, key, ticket, close, &req))
                            {
                                done += consumed;
                                client.request_started = None;
                                client.awaiting = Some((ticket, close));
                                break;
                            }
                            ctx.stats.errors_total.fetch_add(1, Ordering::Relaxed);
                            let busy = http::Response::error(
                                503,
                                "the API workers are busy (presence, user, disconnect, history); retry later",
                            );
                            (consumed, busy, close)
                        } else {
                            let mut out = ctx.hub.reactor_outbox(&mut self.backlog);
                            let response = routes::handle(&req, ctx, &mut out);
                            (consumed, response, close)
                        }
                    }
                }
            };
            let client = &mut self.clients[key];
            if let Some(started) = client.request_started {
                self.latency.record(started.elapsed());
            }
            done += consumed;
            response.write_to(&mut client.wbuf, close);
            // Bytes already here belong to the next request: its time runs from now.
            client.request_started = (client.rbuf.len() > done).then(Instant::now);
            if close {
                client.close_after_write = true;
            }
        }
        let client = &mut self.clients[key];
        client.rbuf.drain(..done);
        if client.rbuf.capacity() > 4 * READ_CHUNK && client.rbuf.len() <= READ_CHUNK {
            // Give back what a large body needed.
            client.rbuf.shrink_to(READ_CHUNK);
        }
        self.account(key);
    }

    /// Sends the worker's answers to the clients still waiting for them, then reads and answers what those clients
    /// sent meanwhile.
    fn finish_held(&mut self) {
        while let Ok(d) = self.done.try_recv() {
            let Some(client) = self.clients.get_mut(d.client) else {
                continue;
            };
            let Some((ticket, close)) = client.awaiting else {
                continue;
            };
            if ticket != d.ticket {
                continue; // the slot was reused by a new connection
            }
            client.awaiting = None;
            client.wbuf.extend_from_slice(&d.response);
            client.close_after_write |= close;
            // Reading stopped while the worker ran: write() resumes it once the response is out.
            client.read_paused = true;
            self.write(d.client);
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
        http::Response::error(
            503,
            "memory budget exceeded (server.max_buffered_bytes); retry later",
        )
        .write_to(&mut client.wbuf, true);
        client.close_after_write = true;
        self.account(key);
    }

    /// Sends the unsent responses; once all are out, resumes a paused client.
    fn write(&mut self, key: usize) {
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
            if client.awaiting.is_some() || !client.read_paused {
                return;
            }
            if self.backlog.waiting() > 0 {
                return self.stall(key); // resumed when the backlog is empty
            }
            let client = &mut self.clients[key];
            client.read_paused = false;
            // The requests already buffered wait no longer on the client: their time runs from now.
            if !client.rbuf.is_empty() {
                client.request_started = Some(Instant::now());
            }
            // Edge-triggered: bytes that arrived while paused raise no new event, so answer and read them now,
            // then send what that produced.
            self.answer(key);
            if !self.read(key) {
                return;
            }
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(client) = self.clients.try_remove(key) {
            self.closed.push((client.fd, client.token));
            self.held -= client.counted;
            self.ctx.budget.report(&mut self.reported, self.held);
            self.ctx.per_reactor[self.me]
                .connections
                .fetch_sub(1, Ordering::Relaxed);
            if client.probe {
                self.probes.retain(|&k| k != key);
            } else {
                self.ctx
                    .ordinary_connections
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
