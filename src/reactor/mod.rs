//! The reactor: one thread, one readiness backend, one SO_REUSEPORT listener, and the connections it accepted,
//! owned outright (no lock on any per-connection path). Other threads reach it through a bounded command channel
//! and an eventfd [`Waker`].
//!
//! The reactor knows sockets, HTTP upgrade heads, WebSocket frames, queues, timers and channels; it knows nothing
//! of what messages mean. The application plugs in as a [`Handler`] (static dispatch), and acts on connections
//! only through [`Core`].
//!
//! One loop iteration: (handler: before_wait) wait for readiness → read and decode (handler: upgrade, message, side
//! sockets) → accept (handler: after_reads) → run commands
//! (publishes queue frame references on subscribers; handler: its commands) → flush every connection with pending
//! output in one writev each → timers (handler: open connections' timers) → flush → teardown (handler: `on_close`
//! for connections that left the open state; then every doomed connection is freed, see teardown.rs).

mod busiest;
mod channels;
mod clock;
mod command;
mod conn;
mod core;
mod handler;
pub mod harness;
mod input;
mod latency;
mod limits;
mod ms_timer;
mod stats;
pub mod sys;
mod teardown;
mod timer;
mod tls_io;
mod variants;
mod write_batch;
mod zerocopy;

pub use self::core::{Core, SIDE_TOKENS};
pub use busiest::{BusiestChannels, ChannelLoad, BUSIEST};
pub use command::Command;
pub use handler::{CommandFor, Handler, Key, Reply};
pub use latency::{Latency, ReactorLatency, SharedLatency, QUANTILES};
pub use stats::{ReactorStats, Tally};
pub use sys::{Epoll, Poller, Uring, Waker};

use self::core::{Forms, Limits};
use crate::config::Config;
use crate::frame::close_code;
use crate::frame::handshake::Reject;
use crate::pool::{self, MemoryBudget};
use crate::tls::TlsAcceptor;
use clock::Clock;
use conn::{Conn, State};
use crossbeam_channel::Receiver;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sys::{net, Ready};

const TOKEN_LISTENER: u64 = u64::MAX - 1;
const TOKEN_WAKER: u64 = u64::MAX - 2;
const TOKEN_PLAIN_LISTENER: u64 = u64::MAX - 3;
const TOKEN_SIDE_LISTENER: u64 = u64::MAX - 4;
/// Side sockets ([`Core::watch`]) are registered under this plus their token: above every connection key.
const SIDE_TOKEN_BASE: u64 = 1 << 31;
/// Connections written between two looks at the command channel during a flush pass; 0 = never look mid-pass.
const MID_FLUSH_INTAKE: usize = 512;
/// Commands taken from the channel per iteration, at most; fewer when their frames add up to a quarter of
/// `ws.max_outbound_bytes` (see `run_commands`).
const COMMANDS_PER_ITERATION: usize = 4096;
/// Ready sockets taken per wait.
const EVENTS_PER_WAIT: usize = 1024;

/// What a reactor thread is started with (all `Send`; the reactor builds its `!Send` parts, the handler among
/// them, on its own thread).
pub struct ReactorSetup<C> {
    pub id: usize,
    pub listener: RawFd,
    pub rx: Receiver<Command<C>>,
    pub waker: Arc<Waker>,
    pub stats: Arc<ReactorStats>,
    pub config: Arc<Config>,
    pub live_connections: Arc<AtomicUsize>,
    /// When set, `listener` speaks TLS with this configuration.
    pub tls: Option<Arc<TlsAcceptor>>,
    /// An extra plaintext client listener next to a TLS one (`tls.plain_listen`).
    pub plain_listener: Option<RawFd>,
    /// A listener whose connections the handler serves itself ([`Handler::on_side_accept`]): the HTTP API.
    pub side_listener: Option<RawFd>,
    /// The process-wide budget for buffered input (`server.max_buffered_bytes`).
    pub budget: Arc<MemoryBudget>,
    /// Where the reactor hands its latency samples once a second.
    pub latency: Arc<ReactorLatency>,
    /// Where the reactor lists its busiest channels when asked.
    pub busiest: Arc<BusiestChannels>,
}

/// Runs a reactor on readiness backend `P` with the handler `make_handler` builds, until it is shut down and its
/// connections are drained. `started` is called once the reactor holds every descriptor it needs and its listeners
/// are registered, before the first wait: a caller that waits for it knows the reactor serves, and that set-up
/// errors (returned here instead) come first.
pub fn run<P: Poller, H: Handler>(
    setup: ReactorSetup<H::Command>,
    make_handler: impl FnOnce() -> H,
    started: impl FnOnce(),
) -> io::Result<()> {
    let poller = P::new(EVENTS_PER_WAIT)?;
    let mut reactor = Reactor::<P, H>::new(setup, make_handler(), Clock::real(), poller)?;
    started();
    while !reactor.iterate()? {}
    Ok(())
}

struct Reactor<P, H: Handler> {
    /// First, so it is dropped first: an io_uring backend may point into the queues of `core`.
    poller: P,
    core: Core<H::Conn>,
    handler: H,
    batch: write_batch::WriteBatch,
    listener: Option<RawFd>,
    plain_listener: Option<RawFd>,
    side_listener: Option<RawFd>,
    tls: Option<Arc<TlsAcceptor>>,
    rx: Receiver<Command<H::Command>>,
    waker: Arc<Waker>,
    stats: Arc<ReactorStats>,
    scratch: Vec<u8>,
    /// The 101 response being built (reused).
    response: Vec<u8>,
    ready: Vec<Ready>,
    due: Vec<Key>,
    clock: Clock,
    /// A listener reported new connections that are not all accepted yet.
    accept_ready: bool,
    plain_accept_ready: bool,
    side_accept_ready: bool,
    accept_paused_until: u32,
    /// When shutting down: the clock reading at which whatever is left is dropped.
    shutdown_deadline: Option<Duration>,
    /// Samples since the last hand-over to `latency` (plain additions on the loop's own histograms).
    delivery: Latency,
    handshake: Latency,
    latency: Arc<ReactorLatency>,
    busiest: Arc<BusiestChannels>,
    /// Publishes queued since the last flush pass: when each was accepted and on how many subscribers. Their
    /// delivery latency is taken when the pass that writes them ends: one clock read per pass, nothing per
    /// delivery.
    in_flight: Vec<(Instant, u64)>,
}

impl<P: Poller, H: Handler> Reactor<P, H> {
    fn new(
        s: ReactorSetup<H::Command>,
        handler: H,
        clock: Clock,
        mut poller: P,
    ) -> io::Result<Self> {
        if let Err(e) = poller.receive_buffers(s.config.server.uring_recv_buffers) {
            // Still a working reactor: its connections are read on readiness.
            log::warn!(
                "reactor {}: no receive buffers ({e}); reading on readiness",
                s.id
            );
        }
        poller.add_listener(s.listener, TOKEN_LISTENER)?;
        poller.add(s.waker.fd(), TOKEN_WAKER)?;
        if let Some(fd) = s.plain_listener {
            poller.add_listener(fd, TOKEN_PLAIN_LISTENER)?;
        }
        if let Some(fd) = s.side_listener {
            poller.add_listener(fd, TOKEN_SIDE_LISTENER)?;
        }
        let c = &s.config;
        let limits = Limits {
            max_message: c.ws.max_message_size,
            max_outbound: c.ws.max_outbound_bytes,
            max_head: c.server.max_request_head,
            max_body: c.ws.max_message_size,
            max_connections: c.server.max_connections,
            handshake_timeout: c.server.handshake_timeout.min(u32::MAX as u64) as u32,
            message_timeout: c.ws.message_timeout.min(u32::MAX as u64 / 4) as u32,
            deflate: c.ws.deflate,
            deflate_threshold: c.ws.deflate_threshold,
            deflate_client_context: c.ws.deflate_client_context,
            zerocopy_threshold: c.ws.zerocopy_threshold,
        };
        let zerocopy = poller.zerocopy();
        Ok(Reactor {
            core: Core::new(
                s.id,
                limits,
                s.live_connections,
                s.budget,
                s.tls.is_some(),
                Forms {
                    transcode: H::transcode,
                    stream_form: H::stream_form,
                },
                zerocopy,
            ),
            handler,
            poller,
            batch: Default::default(),
            listener: Some(s.listener),
            plain_listener: s.plain_listener,
            side_listener: s.side_listener,
            tls: s.tls,
            rx: s.rx,
            waker: s.waker,
            stats: s.stats,
            scratch: Vec::with_capacity(input::SCRATCH),
            response: Vec::with_capacity(512),
            ready: Vec::with_capacity(EVENTS_PER_WAIT),
            due: Vec::new(),
            clock,
            accept_ready: false,
            plain_accept_ready: false,
            side_accept_ready: false,
            accept_paused_until: 0,
            shutdown_deadline: None,
            delivery: Latency::default(),
            handshake: Latency::default(),
            latency: s.latency,
            busiest: s.busiest,
            in_flight: Vec::with_capacity(COMMANDS_PER_ITERATION),
        })
    }

    /// One loop iteration. True once the reactor has shut down and dropped its last connection.
    fn iterate(&mut self) -> io::Result<bool> {
        let busy = !self.core.pending_reads.is_empty()
            || !self.core.dirty.is_empty()
            || (self.accept_ready || self.plain_accept_ready || self.side_accept_ready)
                && self.accept_paused_until == 0;
        let mut timeout = if busy { 0 } else { self.ms_to_next_tick() };
        if timeout > 0 {
            self.waker.arm();
        }
        // After the arm: work another thread left for the handler before it is looked at here is seen now, and
        // work left afterwards comes with a wake-up (see `Handler::before_wait`).
        if let Some(bound) = self.handler.before_wait(&mut self.core) {
            timeout = timeout.min(bound.max(0));
        }
        self.watch_side();
        if !self.rx.is_empty() || !self.core.dirty.is_empty() {
            timeout = 0;
        }
        self.poller.wait(&mut self.ready, timeout)?;
        self.waker.disarm();
        self.tick_clock();

        let ready = std::mem::take(&mut self.ready);
        for ev in &ready {
            match ev.token {
                TOKEN_WAKER => self.waker.drain(),
                TOKEN_LISTENER => self.accept_ready = true,
                TOKEN_PLAIN_LISTENER => self.plain_accept_ready = true,
                TOKEN_SIDE_LISTENER => self.side_accept_ready = true,
                t if (SIDE_TOKEN_BASE..SIDE_TOKEN_BASE + u64::from(SIDE_TOKENS)).contains(&t) => {
                    let token = (t - SIDE_TOKEN_BASE) as u32;
                    self.handler.on_side_ready(&mut self.core, token, ev);
                    self.watch_side();
                }
                key => self.on_ready(key as usize, ev),
            }
        }
        self.ready = ready;

        let pending = std::mem::take(&mut self.core.pending_reads);
        for &key in &pending {
            self.on_readable(key);
        }

        if self.accept_ready && self.core.now >= self.accept_paused_until {
            self.accept_ready = self.accept_all(false);
        }
        if self.plain_accept_ready && self.core.now >= self.accept_paused_until {
            self.plain_accept_ready = self.accept_all(true);
        }
        if self.side_accept_ready && self.core.now >= self.accept_paused_until {
            self.side_accept_ready = self.accept_side();
        }
        self.handler.after_reads(&mut self.core);

        self.run_commands();
        self.notify_output();
        self.flush_dirty()?;
        self.run_timers();
        self.notify_output();
        self.flush_dirty()?;
        self.teardown();
        self.publish_stats();

        if let Some(deadline) = self.shutdown_deadline {
            if self.core.conns.is_empty() || self.clock.elapsed() >= deadline {
                let keys: Vec<Key> = self.core.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    self.core.doom(key);
                }
                self.teardown();
                self.core.zc.abandon();
                self.publish_stats();
                self.hand_over_latency();
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The end of every iteration: the handler hears of each connection that left the open state, its
    /// subscriptions go, and every doomed connection is freed (teardown.rs).
    fn teardown(&mut self) {
        while let Some(key) = self.core.leaving.pop() {
            self.handler.on_close(&mut self.core, key);
            self.core.drop_subscriptions(key);
        }
        let poller = &mut self.poller;
        self.core.reap(|notes| poller.take_notifications(notes));
        let closing = &mut self.core.closing;
        if let Err(e) = self.poller.forget(closing) {
            log::error!("reactor {}: releasing closed sockets: {e}", self.core.id);
        }
        for (fd, _) in closing.drain(..) {
            net::close(fd);
        }
    }

    fn publish_stats(&mut self) {
        // Buffers freed at the reap leave the process-wide budget now, not at this reactor's next read.
        self.core.check_memory();
        let core = &mut self.core;
        core.tally.channels = core.channels.len() as u64;
        core.tally.read_buffers_lent = core.bufs.lent_count() as u64;
        core.tally.buffered_bytes = core.bufs.held() as u64;
        core.tally.tls_sessions = core.tls.sessions() as u64;
        core.tally.zerocopy_sends_total = core.zc.sends_total;
        core.tally.zerocopy_pinned_bytes = core.zc.pinned_bytes as u64;
        core.tally.zerocopy_parked = core.zc.parked() as u64;
        self.stats.store(&core.tally);
        self.handler.on_iteration(&self.core);
    }

    fn tick_clock(&mut self) {
        let elapsed = self.clock.elapsed();
        self.core.now_ms = elapsed.as_millis() as u64;
        let now = 1 + elapsed.as_secs() as u32;
        if now != self.core.now {
            self.core.now = now;
            self.core.expire_stale_input();
            self.hand_over_latency();
            if self.busiest.take_wanted() {
                self.busiest.publish(self.core.channels.busiest(BUSIEST));
            }
        }
    }

    /// Once a second: the histograms the API reads get this second's samples (one short lock each).
    fn hand_over_latency(&mut self) {
        self.latency.delivery.absorb(&mut self.delivery);
        self.latency.handshake.absorb(&mut self.handshake);
    }

    /// Microseconds on the reactor clock, wrapping every 71 minutes (longer than any handshake may take).
    fn clock_us(&self) -> u32 {
        self.clock.elapsed().as_micros() as u32
    }

    fn ms_to_next_tick(&self) -> i32 {
        let into_second = self.clock.elapsed().subsec_millis() as i32;
        let mut ms = 1000 - into_second + 1;
        if let Some(deadline) = self.core.ms_timers.next() {
            let now = self.clock.elapsed().as_millis() as u64;
            ms = ms.min(deadline.saturating_sub(now).min(1000) as i32);
        }
        if let Some(deadline) = self.shutdown_deadline {
            let left = deadline.saturating_sub(self.clock.elapsed()).as_millis() as i32;
            ms = ms.min(left.max(1));
        }
        ms
    }

    // ---- accepting ------------------------------------------------------------------------------------------------

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
        let tls = if plain { None } else { self.tls.clone() };
        let accepted_us = self.clock_us();
        let core = &mut self.core;
        loop {
            let (fd, peer) = match self.poller.accept(listener) {
                Ok(accepted) => accepted,
                Err(e) => match accept_failed(&e, core, &mut self.accept_paused_until) {
                    Some(retry) => return retry,
                    None => continue,
                },
            };
            let live = &core.live_connections;
            if live.fetch_add(1, Ordering::Relaxed) >= core.limits.max_connections {
                live.fetch_sub(1, Ordering::Relaxed);
                core.tally.refused_total += 1;
                if tls.is_none() {
                    net::write_all_nonblocking(fd, REFUSED_RESPONSE);
                }
                net::close(fd);
                continue;
            }
            let key = core.conns.insert(Conn::new(fd, accepted_us));
            if let Err(e) = self.poller.add_receiving(fd, key as u64) {
                log::error!("reactor {}: epoll add: {e}", core.id);
                core.doom(key);
                continue;
            }
            if let Some(acceptor) = &tls {
                if !core.tls_attach(key, acceptor) {
                    core.doom(key);
                    continue;
                }
            }
            if let Err(reject) = self.handler.on_accept(core, peer) {
                // Answered like any refused upgrade, so the client reads the status before the socket closes.
                core.reject(key, reject);
                continue;
            }
            let deadline = core.now + core.limits.handshake_timeout;
            core.schedule(key, deadline);
        }
    }

    /// Accepts the side listener's connections and hands each to the handler; like [`Self::accept_all`]. They
    /// do not count against `server.max_connections`: the handler bounds them itself.
    fn accept_side(&mut self) -> bool {
        let Some(listener) = self.side_listener else {
            return false;
        };
        loop {
            match self.poller.accept(listener) {
                Ok((fd, peer)) => {
                    self.handler.on_side_accept(&mut self.core, fd, peer);
                    self.watch_side();
                }
                Err(e) => {
                    if let Some(retry) =
                        accept_failed(&e, &self.core, &mut self.accept_paused_until)
                    {
                        return retry;
                    }
                }
            }
        }
    }

    /// Registers the side sockets the handler asked to watch; one the poller refuses is reported to the handler
    /// as failed (an error readiness).
    fn watch_side(&mut self) {
        while let Some((fd, token)) = self.core.to_watch.pop() {
            if let Err(e) = self.poller.add(fd, SIDE_TOKEN_BASE + u64::from(token)) {
                log::error!("reactor {}: watching a side socket: {e}", self.core.id);
                let failed = Ready {
                    token: SIDE_TOKEN_BASE + u64::from(token),
                    readable: false,
                    writable: false,
                    error: true,
                    received: None,
                };
                self.handler.on_side_ready(&mut self.core, token, &failed);
            }
        }
    }

    // ---- commands from other threads ------------------------------------------------------------------------------

    /// Runs queued commands. Each iteration ends with a flush, so the frames taken here bound what one burst can
    /// queue on a healthy connection before its socket is written: a quarter of its slow-consumer budget. A
    /// publisher faster than the sockets then waits on the bounded command channel (backpressure) instead of
    /// pushing healthy subscribers over `ws.max_outbound_bytes`.
    fn run_commands(&mut self) {
        let budget = self.core.limits.max_outbound / 4;
        let mut taken = 0;
        for _ in 0..COMMANDS_PER_ITERATION {
            if taken >= budget {
                return;
            }
            let Ok(cmd) = self.rx.try_recv() else { return };
            match cmd {
                Command::Publish {
                    channel,
                    frame,
                    since,
                } => {
                    taken += frame.len();
                    let queued = self.core.fan_out(&channel, frame, &[]);
                    self.track_delivery(since, queued);
                }
                Command::PublishAt {
                    channel,
                    offset,
                    frame,
                    since,
                } => {
                    taken += frame.len();
                    let queued =
                        self.handler
                            .on_publication(&mut self.core, &channel, offset, frame);
                    self.track_delivery(since, queued);
                }
                Command::Broadcast { frame, since } => {
                    taken += frame.len();
                    let queued = self.core.broadcast(frame, H::takes_broadcast);
                    self.track_delivery(since, queued);
                }
                Command::Shutdown { drain_ms } => self.shutdown(drain_ms),
                Command::App(c) => self.handler.on_command(&mut self.core, c),
            }
        }
    }

    fn track_delivery(&mut self, since: Instant, subscribers: usize) {
        if subscribers > 0 {
            self.in_flight.push((since, subscribers as u64));
        }
    }

    fn shutdown(&mut self, drain_ms: u64) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(self.clock.elapsed() + Duration::from_millis(drain_ms));
        let listeners = [
            self.listener.take(),
            self.plain_listener.take(),
            self.side_listener.take(),
        ];
        for fd in listeners.into_iter().flatten() {
            let _ = self.poller.remove(fd);
            net::close(fd);
        }
        let keys: Vec<Key> = self.core.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            match self.core.conns[key].state {
                State::Open => self
                    .core
                    .close(key, close_code::GOING_AWAY, "server shutting down"),
                State::Handshake => self.core.doom(key),
                State::Closing | State::Lingering => {}
            }
        }
    }

    // ---- writing --------------------------------------------------------------------------------------------------

    /// Writes every connection with queued output, one writev each. During a long pass (thousands of
    /// connections), publishes that arrive meanwhile are taken in every `MID_FLUSH_INTAKE` connections: they join
    /// the queues of connections not yet written in this pass (so those leave in the same writev), and the
    /// connections already written are flushed again in the next iteration.
    /// A backend that batches writes gets them a batch at a time instead (write_batch.rs).
    ///
    /// Publishes queued before the pass are on the wire when it ends (a subscriber whose socket is full counts as
    /// delivered then too; the slow-consumer limit bounds how late it really is): their delivery latency is
    /// recorded, once per publish and weighted by its subscribers. Publishes taken during the pass wait for the
    /// next one, since subscribers already written this pass get them only then.
    fn flush_dirty(&mut self) -> io::Result<()> {
        let written_by_this_pass = self.in_flight.len();
        let mut dirty = std::mem::take(&mut self.core.dirty);
        let outcome = if P::BATCHES_WRITES {
            self.write_batches(&dirty)
        } else {
            for (i, &key) in dirty.iter().enumerate() {
                self.core.flush(key);
                if MID_FLUSH_INTAKE > 0 && (i + 1) % MID_FLUSH_INTAKE == 0 {
                    self.handler.mid_flush(&mut self.core);
                    if !self.rx.is_empty() {
                        self.run_commands();
                    }
                }
            }
            Ok(())
        };
        // Keep what became dirty during the pass (taken commands, replies) for the next iteration.
        dirty.clear();
        dirty.append(&mut self.core.dirty);
        self.core.dirty = dirty;
        if written_by_this_pass > 0 {
            let now = Instant::now();
            for &(since, subscribers) in &self.in_flight[..written_by_this_pass] {
                self.delivery
                    .record_n(now.saturating_duration_since(since), subscribers);
            }
            self.in_flight.drain(..written_by_this_pass);
        }
        outcome
    }

    /// The handler hears of the detached connections that got frames (it may answer a waiting request with them).
    fn notify_output(&mut self) {
        let mut with_output = std::mem::take(&mut self.core.with_output);
        for &key in &with_output {
            let conn = &mut self.core.conns[key];
            conn.flags &= !conn::flag::DIRTY;
            if conn.accepts_frames() && !conn.out.is_empty() {
                self.handler.on_output(&mut self.core, key);
            }
        }
        with_output.clear();
        // Frames queued by the handler during the pass wait for the next one.
        with_output.append(&mut self.core.with_output);
        self.core.with_output = with_output;
    }

    // ---- timers ---------------------------------------------------------------------------------------------------

    fn run_timers(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        let core = &mut self.core;
        core.timers.expire(&mut core.conns, core.now, &mut due);
        for key in due.drain(..) {
            let conn = &self.core.conns[key];
            if conn.has(conn::flag::DOOMED) {
                continue;
            }
            match conn.state {
                State::Handshake if conn.has(conn::flag::HELD) => {
                    self.core
                        .reject(key, Reject::Unavailable("no answer in time; retry"));
                }
                State::Handshake => {
                    if self.core.tls_handshaking(key) {
                        self.core.tally.handshake_failures_total += 1;
                        self.core.tally.tls_failures_total += 1;
                        self.core.doom(key);
                    } else if conn.rbuf != pool::NO_BUF {
                        // Part of a request arrived (a slow head or body): say why it ends.
                        self.core.reject(key, Reject::RequestTimeout);
                    } else {
                        self.core.tally.handshake_failures_total += 1;
                        self.core.doom(key);
                    }
                }
                State::Closing | State::Lingering => self.core.doom(key),
                State::Open => self.handler.on_timer(&mut self.core, key),
            }
        }
        self.expire_ms_timers(&mut due);
        self.due = due;
    }

    /// Millisecond timers (retransmits): only open connections hear of theirs; a connection that is closing or
    /// gone, or whose key now names another connection, gets a spurious call at most, which handlers ignore.
    fn expire_ms_timers(&mut self, due: &mut Vec<Key>) {
        let core = &mut self.core;
        core.ms_timers.expire(core.now_ms, due);
        for key in due.drain(..) {
            if self.core.conns.get(key).is_some_and(Conn::accepts_frames) {
                self.handler.on_ms_timer(&mut self.core, key);
            }
        }
    }
}

/// What an accept error means to an accept loop: None = go on with the next connection; Some(retry) = stop, and
/// whether to retry later (descriptors or memory exhausted: accepting pauses for a second, `paused_until`).
fn accept_failed<A>(e: &io::Error, core: &Core<A>, paused_until: &mut u32) -> Option<bool> {
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Some(false),
        Some(libc::EINTR) | Some(libc::ECONNABORTED) | Some(libc::EPROTO) => None,
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM) => {
            log::warn!(
                "reactor {}: accept: {e}; pausing accepts for a second",
                core.id
            );
            *paused_until = core.now + 1;
            Some(true)
        }
        _ => {
            log::error!("reactor {}: accept: {e}", core.id);
            Some(false)
        }
    }
}

/// Bytes of one connection's slab entry with application state `A` (what every idle connection pays, besides its
/// place in channel lists).
pub fn conn_size<A>() -> usize {
    std::mem::size_of::<Conn<A>>()
}

/// Sent to connections over `server.max_connections`.
const REFUSED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 36\r\nConnection: close\r\nAccess-Control-Allow-Origin: *\r\n\r\n{\"error\":\"connection limit reached\"}";
