//! A reactor: one thread, one epoll instance, one SO_REUSEPORT listener, and the connections it accepted, owned
//! outright (no lock on any per-connection path). Other threads reach it through a command channel and an eventfd.
//!
//! One loop iteration: wait for readiness → accept → read and decode → run commands (publishes queue frame
//! references on subscribers) → flush every connection with pending output in one writev each → timers.

mod conn;
pub mod net;
mod poller;
mod session;
mod timer;
mod tls_io;
mod waker;

pub use poller::{Epoll, Poller, Ready};
pub use waker::Waker;

use crate::channels::ChannelIndex;
use crate::config::Config;
use crate::frame::decode::{Decoder, Frame};
use crate::frame::handshake::{self, Reject, Request};
use crate::frame::{close_code, encode, OP_BINARY, OP_PING, OP_PONG, OP_TEXT};
use crate::hub::{Command, ReactorStats, Tally};
use crate::pool::{BufPool, Flush, OutFrame, SharedFrame, NO_BUF};
use crate::protocol;
use conn::{flag, Conn, Endpoint, State, NO_TLS};
use crossbeam_channel::Receiver;
use slab::Slab;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timer::TimerWheel;

const TOKEN_LISTENER: u64 = u64::MAX - 1;
const TOKEN_WAKER: u64 = u64::MAX - 2;
const TOKEN_PLAIN_LISTENER: u64 = u64::MAX - 3;
/// Bytes read at once into the shared scratch buffer (a connection borrows a pooled buffer only for leftovers).
const SCRATCH: usize = 64 * 1024;
/// Reads per readiness event before the connection yields to others (continued next iteration).
const READS_PER_EVENT: usize = 16;
/// Seconds to wait for the client's close frame, or for EOF after an HTTP error, before dropping the socket.
const CLOSE_GRACE: u32 = 2;
/// Connections written between two looks at the command channel during a flush pass; 0 = never look mid-pass.
const MID_FLUSH_INTAKE: usize = 512;
/// Commands taken from the channel per iteration, at most; fewer when their frames add up to a quarter of
/// `ws.max_outbound_bytes` (see `run_commands`).
const COMMANDS_PER_ITERATION: usize = 4096;

/// What a reactor thread is started with (all `Send`; the reactor builds its `!Send` parts on its own thread).
pub struct ReactorSetup {
    pub id: usize,
    pub listener: RawFd,
    pub rx: Receiver<Command>,
    pub waker: Arc<Waker>,
    pub stats: Arc<ReactorStats>,
    pub config: Arc<Config>,
    pub live_connections: Arc<AtomicUsize>,
    /// Identity, auth and sessions state shared by all reactors (src/gateway/).
    pub sessions: Arc<crate::gateway::Shared>,
    /// When set, `listener` speaks TLS with this configuration.
    pub tls: Option<Arc<crate::tls::TlsAcceptor>>,
    /// An extra plaintext client listener next to a TLS one (`tls.plain_listen`).
    pub plain_listener: Option<RawFd>,
}

/// Runs a reactor until it is shut down and its connections are drained.
pub fn run(setup: ReactorSetup) -> io::Result<()> {
    let mut reactor = Reactor::new(setup)?;
    reactor.run()
}

/// Settings copied out of the config for the hot path.
struct Limits {
    max_message: usize,
    max_outbound: usize,
    max_head: usize,
    max_connections: usize,
    max_channels: usize,
    error_budget: u8,
    handshake_timeout: u32,
    ping_interval: u32,
}

struct Reactor {
    id: usize,
    poller: Epoll,
    listener: Option<RawFd>,
    rx: Receiver<Command>,
    waker: Arc<Waker>,
    stats: Arc<ReactorStats>,
    tally: Tally,
    config: Arc<Config>,
    limits: Limits,
    live_connections: Arc<AtomicUsize>,
    conns: Slab<Conn>,
    channels: ChannelIndex,
    bufs: BufPool,
    timers: TimerWheel,
    scratch: Vec<u8>,
    iov: Vec<libc::iovec>,
    ready: Vec<Ready>,
    /// Connections with output queued this iteration.
    dirty: Vec<usize>,
    /// Connections that hit the per-event read budget and have more to read.
    pending_reads: Vec<usize>,
    due: Vec<usize>,
    clock: Instant,
    now: u32,
    accept_paused_until: u32,
    shutdown_deadline: Option<Instant>,
    ping_frame: OutFrame,
    /// Socket ids, session registry and session counters (src/reactor/session.rs).
    sess: crate::gateway::ReactorState,
    // ---- tls (issue 5): see tls_io.rs ----
    tls: Option<Arc<crate::tls::TlsAcceptor>>,
    plain_listener: Option<RawFd>,
    tls_io: tls_io::TlsIo,
}

impl Reactor {
    fn new(s: ReactorSetup) -> io::Result<Self> {
        let poller = Epoll::new(1024)?;
        poller.add(s.listener, TOKEN_LISTENER)?;
        poller.add(s.waker.fd(), TOKEN_WAKER)?;
        if let Some(fd) = s.plain_listener {
            poller.add(fd, TOKEN_PLAIN_LISTENER)?;
        }
        let c = &s.config;
        let limits = Limits {
            max_message: c.ws.max_message_size,
            max_outbound: c.ws.max_outbound_bytes,
            max_head: c.server.max_request_head,
            max_connections: c.server.max_connections,
            max_channels: c.ws.max_channels_per_connection,
            error_budget: c.ws.error_budget.min(255) as u8,
            handshake_timeout: c.server.handshake_timeout.min(u32::MAX as u64) as u32,
            ping_interval: c.ws.ping_interval.min(u32::MAX as u64 / 4) as u32,
        };
        let mut ping = Vec::new();
        encode::push_frame(&mut ping, OP_PING, b"");
        Ok(Reactor {
            id: s.id,
            poller,
            listener: Some(s.listener),
            rx: s.rx,
            waker: s.waker,
            stats: s.stats,
            tally: Tally::default(),
            config: s.config,
            limits,
            live_connections: s.live_connections,
            conns: Slab::new(),
            channels: ChannelIndex::default(),
            bufs: BufPool::new(),
            // Second 1 is the first tick, so a zero deadline never looks "due forever".
            timers: TimerWheel::new(1),
            scratch: Vec::with_capacity(SCRATCH),
            iov: Vec::with_capacity(1024),
            ready: Vec::with_capacity(1024),
            dirty: Vec::new(),
            pending_reads: Vec::new(),
            due: Vec::new(),
            clock: Instant::now(),
            now: 1,
            accept_paused_until: 0,
            shutdown_deadline: None,
            ping_frame: Rc::new(Arc::new(ping)),
            sess: crate::gateway::ReactorState::new(s.sessions, s.id),
            tls_io: tls_io::TlsIo::new(s.tls.is_some()),
            tls: s.tls,
            plain_listener: s.plain_listener,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut accept_ready = false;
        let mut plain_accept_ready = false;
        loop {
            let busy = !self.pending_reads.is_empty()
                || (accept_ready || plain_accept_ready) && self.accept_paused_until == 0;
            let mut timeout = if busy { 0 } else { self.ms_to_next_tick() };
            if timeout > 0 {
                self.waker.arm();
                if !self.rx.is_empty() {
                    timeout = 0;
                }
            }
            self.poller.wait(&mut self.ready, timeout)?;
            self.waker.disarm();
            self.tick_clock();

            let mut ready = std::mem::take(&mut self.ready);
            for ev in &ready {
                match ev.token {
                    TOKEN_WAKER => self.waker.drain(),
                    TOKEN_LISTENER => accept_ready = true,
                    TOKEN_PLAIN_LISTENER => plain_accept_ready = true,
                    key => self.on_ready(key as usize, ev),
                }
            }
            ready.clear();
            self.ready = ready;

            let pending = std::mem::take(&mut self.pending_reads);
            for key in pending.iter().copied() {
                self.on_readable(key);
            }

            // Accept after all events of this batch: a key freed above cannot be reused while stale events for it
            // are still being handled.
            if accept_ready && self.now >= self.accept_paused_until {
                accept_ready = self.accept_all(false);
            }
            if plain_accept_ready && self.now >= self.accept_paused_until {
                plain_accept_ready = self.accept_all(true);
            }

            self.run_commands();
            self.flush_dirty();
            self.run_timers();
            self.publish_stats();

            if let Some(deadline) = self.shutdown_deadline {
                if self.conns.is_empty() || Instant::now() >= deadline {
                    let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                    for key in keys {
                        self.close(key);
                    }
                    self.publish_stats();
                    return Ok(());
                }
            }
        }
    }

    fn publish_stats(&mut self) {
        self.tally.channels = self.channels.len() as u64;
        self.tally.read_buffers_lent = self.bufs.lent_count() as u64;
        self.stats.store(&self.tally);
        self.stats.sessions.store(&self.sess.tally);
    }

    fn tick_clock(&mut self) {
        self.now = 1 + self.clock.elapsed().as_secs() as u32;
    }

    fn ms_to_next_tick(&self) -> i32 {
        let elapsed = self.clock.elapsed();
        let into_second = elapsed.subsec_millis() as i32;
        let mut ms = 1000 - into_second + 1;
        if let Some(deadline) = self.shutdown_deadline {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as i32;
            ms = ms.min(left.max(1));
        }
        ms
    }

    // ---- accepting -------------------------------------------------------------------------------------------

    /// Accepts until the backlog is empty. Returns true if accepting should be retried later (fd exhaustion).
    /// `plain` picks the extra plaintext listener; the main one speaks TLS when TLS is configured.
    fn accept_all(&mut self, plain: bool) -> bool {
        let listener = if plain {
            self.plain_listener
        } else {
            self.listener
        };
        let Some(listener) = listener else {
            return false;
        };
        let tls = !plain && self.tls.is_some();
        loop {
            let (fd, peer) = match net::accept_peer(listener) {
                Ok(accepted) => accepted,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return false,
                    Some(libc::EINTR) | Some(libc::ECONNABORTED) | Some(libc::EPROTO) => continue,
                    Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
                    | Some(libc::ENOMEM) => {
                        log::warn!(
                            "reactor {}: accept: {e}; pausing accepts for a second",
                            self.id
                        );
                        self.accept_paused_until = self.now + 1;
                        return true;
                    }
                    _ => {
                        log::error!("reactor {}: accept: {e}", self.id);
                        return false;
                    }
                },
            };
            if self.live_connections.fetch_add(1, Ordering::Relaxed) >= self.limits.max_connections
            {
                self.live_connections.fetch_sub(1, Ordering::Relaxed);
                self.tally.refused_total += 1;
                if !tls {
                    net::write_all_nonblocking(fd, REFUSED_RESPONSE);
                }
                net::close(fd);
                continue;
            }
            let key = self.conns.insert(Conn::new(fd, self.now));
            if let Err(e) = self.poller.add(fd, key as u64) {
                log::error!("reactor {}: epoll add: {e}", self.id);
                self.close(key);
                continue;
            }
            if tls && !self.tls_attach(key) {
                self.close(key);
                continue;
            }
            if !self.admit(peer) {
                // Answered like any refused upgrade, so the client reads the 429 before the socket closes.
                self.reject(
                    key,
                    Reject::TooManyRequests("too many new connections from this address"),
                );
                continue;
            }
            let deadline = self.now + self.limits.handshake_timeout;
            self.timers.schedule(&mut self.conns, key, deadline);
        }
    }

    // ---- reading ---------------------------------------------------------------------------------------------

    fn on_ready(&mut self, key: usize, ev: &Ready) {
        if !self.conns.contains(key) {
            return;
        }
        if ev.error {
            self.close(key);
            return;
        }
        if ev.writable {
            let conn = &mut self.conns[key];
            conn.flags &= !flag::BLOCKED;
            if !conn.out.is_empty() || conn.tls != NO_TLS {
                self.mark_dirty(key);
            }
        }
        if ev.readable {
            self.on_readable(key);
        }
    }

    fn on_readable(&mut self, key: usize) {
        for _ in 0..READS_PER_EVENT {
            let Some(conn) = self.conns.get(key) else {
                return;
            };
            let (fd, rbuf, tls) = (conn.fd, conn.rbuf, conn.tls != NO_TLS);
            let lent = rbuf != NO_BUF;
            let mut buf = if lent {
                // Detached while in use: closing the connection during decoding must not free it under us.
                self.conns[key].rbuf = NO_BUF;
                self.bufs.take(rbuf)
            } else {
                std::mem::take(&mut self.scratch)
            };
            let want = if !lent {
                SCRATCH
            } else if tls {
                crate::pool::block_size()
            } else {
                read_size(self.conns[key].state, &buf)
            };
            let result = crate::pool::read_into(fd, &mut buf, want);
            match result {
                Ok(0) => {
                    self.restore(key, rbuf, buf);
                    self.close(key);
                    return;
                }
                Ok(n) => {
                    self.tally.bytes_in_total += n as u64;
                    let conn = &mut self.conns[key];
                    conn.last_rx = self.now;
                    conn.flags &= !flag::PING_SENT;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.restore(key, rbuf, buf);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.restore(key, rbuf, buf);
                    continue;
                }
                Err(_) => {
                    self.restore(key, rbuf, buf);
                    self.close(key);
                    return;
                }
            }
            let consumed = if tls {
                self.tls_input(key, &mut buf)
            } else {
                self.process_input(key, &mut buf)
            };
            self.keep_leftover(key, rbuf, buf, consumed);
        }
        self.pending_reads.push(key);
    }

    /// Puts a buffer back where it came from, untouched (a lent buffer always holds a partial frame).
    fn restore(&mut self, key: usize, rbuf: u32, mut buf: Vec<u8>) {
        if rbuf != NO_BUF {
            self.bufs.put(rbuf, buf);
            self.conns[key].rbuf = rbuf;
        } else {
            buf.clear();
            self.scratch = buf;
        }
    }

    /// After decoding: a connection keeps a lent buffer only if a partial frame (or request head) is left.
    fn keep_leftover(&mut self, key: usize, rbuf: u32, mut buf: Vec<u8>, consumed: usize) {
        let alive = self.conns.contains(key);
        if rbuf != NO_BUF {
            buf.drain(..consumed.min(buf.len()));
            let empty = buf.is_empty();
            self.bufs.put(rbuf, buf);
            if alive && !empty {
                self.conns[key].rbuf = rbuf;
            } else {
                self.bufs.give_back(rbuf);
            }
        } else {
            if alive && consumed < buf.len() {
                let id = self.bufs.lend();
                self.bufs.get(id).extend_from_slice(&buf[consumed..]);
                self.conns[key].rbuf = id;
            }
            buf.clear();
            self.scratch = buf;
        }
    }

    /// Decodes what `buf` holds for connection `key`; returns the bytes consumed.
    fn process_input(&mut self, key: usize, buf: &mut [u8]) -> usize {
        let mut off = 0;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return buf.len();
            };
            match conn.state {
                State::Handshake => {
                    match handshake::parse_request(&buf[off..], self.limits.max_head) {
                        Ok(None) => return off,
                        Ok(Some(req)) => {
                            let head_len = req.head_len;
                            if !self.upgrade(key, &req) {
                                return buf.len();
                            }
                            off += head_len;
                        }
                        Err(reject) => {
                            self.reject(key, reject);
                            return buf.len();
                        }
                    }
                }
                State::Open | State::Closing => {
                    if off == buf.len() {
                        return off;
                    }
                    match conn.decoder.next(&mut buf[off..], self.limits.max_message) {
                        Ok(Some((frame, used))) => {
                            off += used;
                            self.on_frame(key, frame);
                        }
                        Ok(None) => return off,
                        Err(v) => {
                            self.tally.protocol_errors_total += 1;
                            if conn.state == State::Closing {
                                self.close(key);
                            } else {
                                self.send_close(key, v.code, v.reason);
                            }
                            return buf.len();
                        }
                    }
                }
                State::Lingering => return buf.len(),
            }
        }
    }

    // ---- handshake -------------------------------------------------------------------------------------------

    /// Completes the upgrade or refuses it. Returns false if the connection is no longer open for frames.
    fn upgrade(&mut self, key: usize, req: &Request<'_>) -> bool {
        let config = &self.config;
        let endpoint = if req.path == config.server.ws_path {
            Endpoint::Gateway
        } else if !config.debug.echo_path.is_empty() && req.path == config.debug.echo_path {
            Endpoint::Echo
        } else {
            self.reject(key, Reject::NotFound);
            return false;
        };
        let ws_key = match handshake::check_upgrade(req) {
            Ok(k) => k,
            Err(r) => {
                self.reject(key, r);
                return false;
            }
        };
        if !config.server.allowed_origins.is_empty() {
            let allowed = req
                .origin
                .is_some_and(|o| config.server.allowed_origins.iter().any(|a| a == o));
            if !allowed {
                self.reject(key, Reject::Forbidden("origin not allowed"));
                return false;
            }
        }
        let channels = if endpoint == Endpoint::Gateway {
            match protocol::query_channels(req.query) {
                Ok(c) if c.len() > self.limits.max_channels => {
                    self.reject(key, Reject::BadRequest("too many channels"));
                    return false;
                }
                Ok(c) => c,
                Err(msg) => {
                    self.reject(key, Reject::BadRequest(msg));
                    return false;
                }
            }
        } else {
            Vec::new()
        };
        let opts = if endpoint == Endpoint::Gateway {
            match session::connect_options(req) {
                Ok(o) => o,
                Err(msg) => {
                    self.reject(key, Reject::BadRequest(msg));
                    return false;
                }
            }
        } else {
            session::ConnectOptions::default()
        };
        // Identity, auth and sessions (src/reactor/session.rs): token and per-user limit, then the socket id, the
        // welcome frame and the channel grant.
        let session = if endpoint == Endpoint::Gateway {
            match self.authenticate(req) {
                Ok(s) => s,
                Err(r) => {
                    self.reject(key, r);
                    return false;
                }
            }
        } else {
            None
        };

        let mut response = Vec::with_capacity(256);
        let protocol = crate::auth::token::reply_protocol(req);
        handshake::write_switching(&mut response, ws_key, protocol);
        let channels = if endpoint == Endpoint::Gateway {
            self.open_session(key, session, channels, opts, &mut response)
        } else {
            channels
        };
        let conn = &mut self.conns[key];
        conn.state = State::Open;
        conn.endpoint = endpoint;
        self.tally.handshakes_total += 1;
        self.tally.connections += 1;
        // A plain connection writes it straight away: on a fresh socket it always fits, and an idle connection
        // then never allocates its outbound ring. Only a short write falls back to the queue. A TLS connection
        // must encrypt it, so it goes through the queue and the TLS flush.
        let written = if conn.tls == NO_TLS {
            net::write_nonblocking(conn.fd, &response)
        } else {
            0
        };
        if written < response.len() {
            response.drain(..written);
            self.queue(key, Rc::new(Arc::new(response)));
        }
        for name in &channels {
            self.subscribe(key, name);
        }
        let deadline = (self.now + self.limits.ping_interval).min(self.token_deadline(key));
        self.timers.schedule(&mut self.conns, key, deadline);
        true
    }

    /// Sends an HTTP error, shuts our side down and waits briefly for the client to close (so the response is not
    /// lost to a reset).
    fn reject(&mut self, key: usize, reject: Reject) {
        self.tally.handshake_failures_total += 1;
        let mut response = Vec::with_capacity(256);
        handshake::write_reject(&mut response, reject);
        let conn = &mut self.conns[key];
        conn.state = State::Lingering;
        let fd = conn.fd;
        if conn.tls != NO_TLS {
            self.tls_write_now(key, &response, true);
        } else {
            net::write_all_nonblocking(fd, &response);
        }
        net::shutdown_write(fd);
        let deadline = self.now + CLOSE_GRACE;
        self.timers.schedule(&mut self.conns, key, deadline);
    }

    // ---- frames ----------------------------------------------------------------------------------------------

    fn on_frame(&mut self, key: usize, frame: Frame<'_>) {
        let conn = &mut self.conns[key];
        let open = conn.state == State::Open;
        match frame {
            Frame::Data {
                opcode,
                first,
                fin,
                payload,
            } => {
                if !open {
                    return;
                }
                if first && fin {
                    self.on_message(key, opcode, payload);
                    return;
                }
                if conn.msg == NO_BUF {
                    conn.msg = self.bufs.lend();
                }
                let id = conn.msg;
                self.bufs.get(id).extend_from_slice(payload);
                if fin {
                    let message = self.bufs.take(id);
                    self.on_message(key, opcode, &message);
                    self.bufs.put(id, message);
                    self.bufs.give_back(id);
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.msg = NO_BUF;
                    }
                }
            }
            Frame::Ping(payload) => {
                if open {
                    let mut pong = Vec::with_capacity(payload.len() + 2);
                    encode::push_frame(&mut pong, OP_PONG, payload);
                    self.queue(key, Rc::new(Arc::new(pong)));
                }
            }
            Frame::Pong(_) => {}
            Frame::Close { code, .. } => {
                if open {
                    // Echo the client's code (RFC 6455 §5.5.1), then close the TCP connection ourselves.
                    let reply = match code {
                        Some(code) => encode::close_frame(code, ""),
                        None => {
                            let mut f = Vec::with_capacity(2);
                            encode::push_frame(&mut f, crate::frame::OP_CLOSE, b"");
                            f
                        }
                    };
                    self.begin_closing(key);
                    self.queue(key, Rc::new(Arc::new(reply)));
                }
                self.close_after_flush(key);
            }
        }
    }

    fn on_message(&mut self, key: usize, opcode: u8, payload: &[u8]) {
        self.tally.messages_in_total += 1;
        match self.conns[key].endpoint {
            Endpoint::Echo => {
                let mut frame = Vec::with_capacity(payload.len() + encode::MAX_HEADER);
                encode::push_frame(&mut frame, opcode, payload);
                self.queue(key, Rc::new(Arc::new(frame)));
            }
            Endpoint::Gateway => self.on_request(key, opcode, payload),
            Endpoint::None => {}
        }
    }

    /// A client protocol request on the gateway endpoint.
    fn on_request(&mut self, key: usize, opcode: u8, payload: &[u8]) {
        if opcode == OP_BINARY {
            return self.client_error(key, "binary frames are not part of the protocol");
        }
        debug_assert_eq!(opcode, OP_TEXT);
        let req: protocol::ClientRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(_) => return self.client_error(key, "expected a JSON object with an \"op\" field"),
        };
        if !self.allow_message(key, &req.op, req.id) {
            return;
        }
        let reply = match req.op.as_ref() {
            "ping" => {
                self.client_reply(key, protocol::pong(req.id));
                return self.on_heartbeat(key);
            }
            "refresh" => return self.on_refresh(key, req.id, req.token.as_deref()),
            "msg" => {
                return self.on_upstream(
                    key,
                    req.id,
                    req.data,
                    req.channel.as_deref(),
                    req.trace.as_deref(),
                )
            }
            "ack" => return self.on_ack(key, req.id),
            "subscribe" | "unsubscribe" => {
                let Some(names) = req.channels.as_ref().filter(|c| !c.is_empty()) else {
                    return self.client_reply(
                        key,
                        protocol::reply(req.id, Some("\"channels\" must list channels")),
                    );
                };
                if let Some(bad) = names.iter().find(|n| !protocol::valid_channel(n)) {
                    let msg = format!(
                        "invalid channel name {:?} (1..=255 bytes, no control characters)",
                        bad
                    );
                    return self.client_reply(key, protocol::reply(req.id, Some(&msg)));
                }
                if req.op == "subscribe" {
                    let forbidden = self.forbidden(key, names);
                    if !forbidden.is_empty() {
                        let reply = crate::gateway::frames::reply_error(
                            req.id,
                            crate::gateway::frames::code::FORBIDDEN,
                            "channel not allowed",
                            Some(&forbidden),
                        );
                        return self.client_reply(key, reply);
                    }
                    let have = self.conns[key].subs.len();
                    let new = names.iter().filter(|n| !self.is_subscribed(key, n)).count();
                    if have + new > self.limits.max_channels {
                        return self
                            .client_reply(key, protocol::reply(req.id, Some("too many channels")));
                    }
                    for name in names {
                        self.subscribe(key, name);
                    }
                } else {
                    for name in names {
                        self.unsubscribe(key, name);
                    }
                }
                protocol::reply(req.id, None)
            }
            _ => protocol::reply(req.id, Some("unknown op")),
        };
        self.client_reply(key, reply);
    }

    fn client_reply(&mut self, key: usize, frame: Vec<u8>) {
        self.queue(key, Rc::new(Arc::new(frame)));
    }

    /// A malformed request: an error reply until the error budget is spent, then close 1008.
    fn client_error(&mut self, key: usize, message: &str) {
        self.tally.protocol_errors_total += 1;
        let conn = &mut self.conns[key];
        conn.errors = conn.errors.saturating_add(1);
        if conn.errors > self.limits.error_budget {
            self.send_close(key, close_code::POLICY_VIOLATION, "error budget exhausted");
        } else {
            self.client_reply(key, protocol::error(message));
        }
    }

    // ---- channels --------------------------------------------------------------------------------------------

    fn is_subscribed(&self, key: usize, name: &str) -> bool {
        let Some(id) = self.channels.lookup(name) else {
            return false;
        };
        self.conns[key]
            .subs
            .as_slice()
            .iter()
            .any(|s| s.channel == id)
    }

    fn subscribe(&mut self, key: usize, name: &str) {
        if self.is_subscribed(key, name) {
            return;
        }
        let sub = self.channels.add(name, key as u32);
        self.conns[key].subs.push(sub);
        if self.sess.shared.bridge.is_some() {
            let sid = self.conns[key].sid;
            self.state_change(crate::gateway::cluster_link::Change::Subscribe {
                sid,
                channel: name.to_string(),
            });
        }
    }

    fn unsubscribe(&mut self, key: usize, name: &str) {
        let Some(id) = self.channels.lookup(name) else {
            return;
        };
        if let Some(sub) = self.conns[key].subs.remove(id) {
            self.drop_subscription(sub);
            if self.sess.shared.bridge.is_some() {
                let sid = self.conns[key].sid;
                self.state_change(crate::gateway::cluster_link::Change::Unsubscribe {
                    sid,
                    channel: name.to_string(),
                });
            }
        }
    }

    fn drop_subscription(&mut self, sub: crate::channels::Subscription) {
        if let Some(moved) = self.channels.remove(sub) {
            let subs = self.conns[moved as usize].subs.as_mut_slice();
            if let Some(s) = subs.iter_mut().find(|s| s.channel == sub.channel) {
                s.pos = sub.pos;
            }
        }
    }

    // ---- commands from other threads -------------------------------------------------------------------------

    /// Runs queued commands. Each iteration ends with a flush, so the frames taken here bound what one burst can
    /// queue on a healthy connection before its socket is written: a quarter of its slow-consumer budget. A
    /// publisher faster than the sockets then waits on the bounded command channel (backpressure) instead of
    /// pushing healthy subscribers over `ws.max_outbound_bytes`.
    fn run_commands(&mut self) {
        let budget = self.limits.max_outbound / 4;
        let mut taken = 0;
        for _ in 0..COMMANDS_PER_ITERATION {
            if taken >= budget {
                return;
            }
            let Ok(cmd) = self.rx.try_recv() else { return };
            match cmd {
                Command::Publish { channel, frame } => {
                    taken += frame.len();
                    self.fan_out(&channel, frame)
                }
                Command::Broadcast { frame } => {
                    taken += frame.len();
                    self.broadcast(frame)
                }
                Command::Shutdown { drain_ms } => self.shutdown(drain_ms),
                Command::Session(c) => self.on_session_command(c),
            }
        }
    }

    /// Queues one shared frame on every local subscriber of `channel`: one reference each, no copy.
    fn fan_out(&mut self, channel: &str, frame: SharedFrame) {
        self.tally.publishes_total += 1;
        let Some(id) = self.channels.lookup(channel) else {
            return;
        };
        let frame: OutFrame = Rc::new(frame);
        // Queueing may close a slow consumer, which swap-removes it from this list. Walking backwards means the
        // entry moved into its place was already visited: nobody is skipped or served twice.
        let closed_before = self.tally.closed_total;
        let mut i = self.channels.subscribers(id).len();
        while i > 0 {
            i -= 1;
            if self.tally.closed_total != closed_before {
                if self.channels.lookup(channel) != Some(id) {
                    return; // the last subscriber left
                }
                if i >= self.channels.subscribers(id).len() {
                    continue;
                }
            }
            let key = self.channels.subscribers(id)[i] as usize;
            self.queue(key, frame.clone());
        }
    }

    fn broadcast(&mut self, frame: SharedFrame) {
        self.tally.publishes_total += 1;
        let frame: OutFrame = Rc::new(frame);
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == State::Open && c.endpoint == Endpoint::Gateway)
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.queue(key, frame.clone());
        }
    }

    fn shutdown(&mut self, drain_ms: u64) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(Instant::now() + Duration::from_millis(drain_ms));
        for fd in [self.listener.take(), self.plain_listener.take()]
            .into_iter()
            .flatten()
        {
            let _ = self.poller.remove(fd);
            net::close(fd);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            match self.conns[key].state {
                State::Open => self.send_close(key, close_code::GOING_AWAY, "server shutting down"),
                State::Handshake => self.close(key),
                State::Closing | State::Lingering => {}
            }
        }
    }

    // ---- writing ---------------------------------------------------------------------------------------------

    /// Queues a frame reference on a connection; it leaves with everything else queued in this iteration.
    /// The limit is on backlog: a frame onto an empty queue is always taken (it is shared, so one large message
    /// costs a connection a reference, not a copy), but a queue that already waits and would exceed
    /// `ws.max_outbound_bytes` marks a slow consumer.
    fn queue(&mut self, key: usize, frame: OutFrame) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let backlog = !conn.out.is_empty();
        conn.out.push(frame);
        self.tally.messages_out_total += 1;
        if backlog && conn.out.queued_bytes() > self.limits.max_outbound {
            self.slow_consumer(key);
            return;
        }
        self.mark_dirty(key);
    }

    fn mark_dirty(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.flags & (flag::DIRTY | flag::BLOCKED) == 0 {
            conn.flags |= flag::DIRTY;
            self.dirty.push(key);
        }
    }

    /// Writes every connection with queued output, one writev each. During a long pass (thousands of
    /// connections), publishes that arrive meanwhile are taken in every `MID_FLUSH_INTAKE` connections: they join
    /// the queues of connections not yet written in this pass (so those leave in the same writev), and the
    /// connections already written are flushed again in the next iteration.
    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for (i, key) in dirty.iter().copied().enumerate() {
            self.flush(key);
            if MID_FLUSH_INTAKE > 0 && (i + 1) % MID_FLUSH_INTAKE == 0 && !self.rx.is_empty() {
                self.run_commands();
            }
        }
        // Keep what became dirty during the pass (taken commands, replies) for the next iteration.
        dirty.clear();
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
    }

    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.has(flag::DIRTY) {
            return;
        }
        conn.flags &= !flag::DIRTY;
        if conn.tls != NO_TLS {
            return self.tls_flush(key);
        }
        let before = conn.out.queued_bytes();
        match conn.out.flush(conn.fd, &mut self.iov) {
            Ok(Flush::Done) => {
                self.tally.bytes_out_total += before as u64;
                if conn.has(flag::CLOSE_AFTER_FLUSH) {
                    self.close(key);
                }
            }
            Ok(Flush::Blocked) => {
                self.tally.bytes_out_total += (before - conn.out.queued_bytes()) as u64;
                conn.flags |= flag::BLOCKED;
            }
            Err(_) => self.close(key),
        }
    }

    /// A subscriber that cannot keep up: its queue is dropped and it is closed with 1008, so memory stays bounded
    /// and nobody else waits for it.
    fn slow_consumer(&mut self, key: usize) {
        self.tally.slow_consumer_closes_total += 1;
        let conn = &mut self.conns[key];
        let mid_frame = conn.out.mid_frame();
        conn.out.clear();
        if !mid_frame {
            let frame = encode::close_frame(close_code::POLICY_VIOLATION, "slow consumer");
            if conn.tls != NO_TLS {
                self.tls_write_now(key, &frame, false);
            } else {
                net::write_all_nonblocking(conn.fd, &frame);
            }
        }
        self.close(key);
    }

    /// Sends a close frame after whatever is queued and waits (briefly) for the client's close.
    fn send_close(&mut self, key: usize, code: u16, reason: &str) {
        self.begin_closing(key);
        self.queue(key, Rc::new(Arc::new(encode::close_frame(code, reason))));
        let deadline = self.now + CLOSE_GRACE;
        if self.conns.contains(key) {
            self.timers.schedule(&mut self.conns, key, deadline);
        }
    }

    fn begin_closing(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.state == State::Open {
            self.tally.connections -= 1;
            if conn.endpoint == Endpoint::Gateway {
                self.end_session(key);
            }
        }
        let conn = &mut self.conns[key];
        conn.state = State::Closing;
        let subs = std::mem::take(&mut conn.subs);
        for &sub in subs.as_slice() {
            self.drop_subscription(sub);
        }
    }

    fn close_after_flush(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.flags |= flag::CLOSE_AFTER_FLUSH;
            if conn.out.is_empty() && !self.tls_pending(key) {
                self.close(key);
            } else {
                self.mark_dirty(key);
            }
        }
    }

    /// Releases everything a connection holds and closes its socket.
    fn close(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        self.begin_closing(key);
        self.timers.cancel(&mut self.conns, key);
        let conn = self.conns.remove(key);
        self.bufs.give_back(conn.rbuf);
        self.bufs.give_back(conn.msg);
        if conn.tls != NO_TLS {
            self.tls_release(conn.tls, conn.fd, conn.state);
        }
        net::close(conn.fd);
        self.live_connections.fetch_sub(1, Ordering::Relaxed);
        self.tally.closed_total += 1;
    }

    // ---- timers ----------------------------------------------------------------------------------------------

    fn run_timers(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        self.timers.expire(&mut self.conns, self.now, &mut due);
        for key in due.drain(..) {
            self.on_timer(key);
        }
        self.due = due;
        self.flush_dirty();
    }

    fn on_timer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.state {
            State::Handshake => {
                self.tally.handshake_failures_total += 1;
                if self.tls_handshaking(key) {
                    self.tally.tls_failures_total += 1;
                }
                self.close(key);
            }
            State::Closing | State::Lingering => self.close(key),
            // Token expiry, server ping and idle close with the connection's heartbeat (src/reactor/session.rs).
            State::Open => self.on_open_timer(key),
        }
    }
}

/// Sent to connections over `server.max_connections`.
const REFUSED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 36\r\nConnection: close\r\n\r\n{\"error\":\"connection limit reached\"}";

/// How much room to make in a lent buffer before reading: enough for the frame in progress (so a large frame is
/// read in few syscalls), at least one pool block.
fn read_size(state: State, buf: &[u8]) -> usize {
    let block = crate::pool::block_size();
    if matches!(state, State::Open | State::Closing) {
        if let Some(total) = Decoder::frame_len(buf) {
            let missing = (total as usize).saturating_sub(buf.len());
            return missing.clamp(block, 4 << 20);
        }
    }
    block
}
