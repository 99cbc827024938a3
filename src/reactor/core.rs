//! What the application may do to connections: [`Core`] is the reactor minus its handler — the connection slab,
//! the channel index, buffers, queues and timers — and every [`super::Handler`] hook gets it. Its methods never
//! free a connection: closing only marks it (see teardown.rs), so a key handed to a hook stays valid until the
//! end of the loop iteration.

use super::channels::{ChannelIndex, Subscription};
use super::conn::{flag, wire, Conn, State, NO_TLS};
use super::handler::Key;
use super::ms_timer::MsTimers;
use super::stats::Tally;
use super::timer::TimerWheel;
use super::tls_io::TlsIo;
use super::variants::Variants;
use super::zerocopy::ZeroCopySends;
use crate::frame::deflate::{Deflater, Inflater};
use crate::frame::deflate_offer::{self, Agreed};
use crate::frame::handshake::Request;
use crate::frame::{encode, OP_PING};
use crate::pool::{BufPool, Flush, MemoryBudget, OutFrame, SharedFrame};
use slab::Slab;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// Tokens a handler may give side sockets ([`Core::watch`]): 0..SIDE_TOKENS.
pub const SIDE_TOKENS: u32 = 1 << 30;

/// Settings copied out of the config for the hot path.
pub(super) struct Limits {
    pub max_message: usize,
    pub max_outbound: usize,
    pub max_head: usize,
    /// Largest request body read on the client listener (`ws.max_message_size`).
    pub max_body: usize,
    pub max_connections: usize,
    pub handshake_timeout: u32,
    pub message_timeout: u32,
    /// `ws.deflate`, `ws.deflate_threshold`, `ws.deflate_client_context`.
    pub deflate: bool,
    pub deflate_threshold: usize,
    pub deflate_client_context: bool,
    /// `ws.zerocopy_threshold` (0 = off).
    pub zerocopy_threshold: usize,
}

pub struct Core<A> {
    pub(super) id: usize,
    pub(super) conns: Slab<Conn<A>>,
    pub(super) channels: ChannelIndex,
    pub(super) bufs: BufPool,
    pub(super) timers: TimerWheel,
    pub(super) ms_timers: MsTimers,
    pub(super) tally: Tally,
    pub(super) limits: Limits,
    /// Reactor-clock second (1 at start-up).
    pub(super) now: u32,
    /// Reactor-clock milliseconds (since start-up), for [`Self::schedule_ms`].
    pub(super) now_ms: u64,
    pub(super) live_connections: Arc<AtomicUsize>,
    pub(super) tls: TlsIo,
    /// Connections with output queued this iteration.
    pub(super) dirty: Vec<Key>,
    /// Connections that hit the per-event read budget and have more to read.
    pub(super) pending_reads: Vec<Key>,
    /// Connections that left the open state this iteration: the handler's `on_close` is due (teardown.rs).
    pub(super) leaving: Vec<Key>,
    /// Connections to free at the end of this iteration (teardown.rs).
    pub(super) doomed: Vec<Key>,
    /// Connections whose input was aborted this iteration: their input buffers go back at the reap.
    pub(super) trim: Vec<Key>,
    /// Sockets (descriptor, token) of connections freed at the reap, closed by the reactor right after it.
    pub(super) closing: Vec<(std::os::fd::RawFd, u64)>,
    /// The process-wide budget for buffered input, and this reactor's share as last reported to it.
    pub(super) budget: Arc<MemoryBudget>,
    pub(super) reported: usize,
    pub(super) iov: Vec<libc::iovec>,
    ping_frame: OutFrame,
    /// Compresses shared frames for connections that negotiated permessage-deflate (made on first use).
    pub(super) deflater: Option<Box<Deflater>>,
    /// The handler's transcoder into its alternative format ([`super::Handler::transcode`]).
    pub(super) transcode: fn(&[u8]) -> Option<Vec<u8>>,
    /// The handler's stream form ([`super::Handler::stream_form`]) for streaming HTTP connections.
    pub(super) stream_form: fn(&[u8]) -> Vec<u8>,
    /// Inflates the messages of clients that compress each message on its own (reset for each), and the output
    /// buffer of every inflate.
    pub(super) inflater: Option<Box<Inflater>>,
    pub(super) inflated: Vec<u8>,
    /// The inflaters of connections whose client keeps its context across messages (`ws.deflate_client_context`),
    /// made at their first compressed message, dropped when they are freed.
    pub(super) inflate_contexts: HashMap<Key, Inflater>,
    /// Reusable list of connection keys (broadcast), so a broadcast allocates nothing.
    keys: Vec<u32>,
    /// Zero-copy sends: the frames the kernel may still read, per connection; parked connections.
    pub(super) zc: ZeroCopySends,
    /// Detached connections with frames queued this iteration: the handler's `on_output` is due.
    pub(super) with_output: Vec<Key>,
    /// Side sockets the handler asked to watch ([`Self::watch`]), registered by the reactor after the hook.
    pub(super) to_watch: Vec<(std::os::fd::RawFd, u32)>,
}

/// The handler's conversions of a frame into its other wire forms ([`super::Handler::transcode`],
/// [`super::Handler::stream_form`]).
pub(super) struct Forms {
    pub transcode: fn(&[u8]) -> Option<Vec<u8>>,
    pub stream_form: fn(&[u8]) -> Vec<u8>,
}

impl<A: Default> Core<A> {
    /// Opens a connection without a socket: a session whose client comes and goes over separate requests (HTTP
    /// long-poll). It is open like any other — channels, timers, the slow-consumer limit, `on_close` — but what is
    /// queued on it stays queued until the handler takes it ([`Self::take_queued`]; [`super::Handler::on_output`]
    /// says when there is some). It counts against `server.max_connections`; None when that is reached.
    pub fn open_detached(&mut self) -> Option<Key> {
        use std::sync::atomic::Ordering;
        if self.live_connections.fetch_add(1, Ordering::Relaxed) >= self.limits.max_connections {
            self.live_connections.fetch_sub(1, Ordering::Relaxed);
            self.tally.refused_total += 1;
            return None;
        }
        let mut conn = Conn::new(-1, 0);
        conn.state = State::Open;
        conn.last_rx = self.now;
        conn.wire = wire::DETACHED;
        self.tally.connections += 1;
        self.tally.handshakes_total += 1;
        Some(self.conns.insert(conn))
    }
}

impl<A> Core<A> {
    pub(super) fn new(
        id: usize,
        limits: Limits,
        live_connections: Arc<AtomicUsize>,
        budget: Arc<MemoryBudget>,
        tls: bool,
        forms: Forms,
        zerocopy: Option<super::sys::ZeroCopy>,
    ) -> Self {
        let Forms {
            transcode,
            stream_form,
        } = forms;
        let mut ping = Vec::new();
        encode::push_frame(&mut ping, OP_PING, b"");
        let zc = ZeroCopySends::new(limits.zerocopy_threshold, zerocopy);
        Core {
            id,
            conns: Slab::new(),
            channels: ChannelIndex::default(),
            bufs: BufPool::new(),
            // Second 1 is the first tick, so a zero deadline never looks "due forever".
            timers: TimerWheel::new(1),
            ms_timers: MsTimers::default(),
            tally: Tally::default(),
            limits,
            now: 1,
            now_ms: 0,
            live_connections,
            tls: TlsIo::new(tls),
            dirty: Vec::new(),
            pending_reads: Vec::new(),
            leaving: Vec::new(),
            doomed: Vec::new(),
            trim: Vec::new(),
            closing: Vec::new(),
            budget,
            reported: 0,
            iov: Vec::with_capacity(1024),
            ping_frame: Rc::new(Arc::new(ping)),
            deflater: None,
            transcode,
            stream_form,
            inflater: None,
            inflated: Vec::new(),
            inflate_contexts: HashMap::new(),
            zc,
            keys: Vec::new(),
            with_output: Vec::new(),
            to_watch: Vec::new(),
        }
    }

    // ---- what the application reads -----------------------------------------------------------------------------

    /// The reactor's id (its index among the reactor threads).
    pub fn id(&self) -> usize {
        self.id
    }

    /// The reactor clock in seconds (starts at 1; deadlines for [`Self::schedule`] are on this clock).
    pub fn now(&self) -> u32 {
        self.now
    }

    /// The reactor clock in milliseconds since start-up (deadlines for [`Self::schedule_ms`] are on this clock);
    /// read once per loop iteration.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The application's state of connection `key`.
    pub fn app(&self, key: Key) -> &A {
        &self.conns[key].app
    }

    pub fn app_mut(&mut self, key: Key) -> &mut A {
        &mut self.conns[key].app
    }

    /// Open and not being closed: frames queued on it will be sent.
    pub fn is_open(&self, key: Key) -> bool {
        self.conns.get(key).is_some_and(Conn::accepts_frames)
    }

    /// Every open connection with its application state.
    pub fn open_connections(&self) -> impl Iterator<Item = (Key, &A)> {
        self.conns
            .iter()
            .filter(|(_, c)| c.accepts_frames())
            .map(|(k, c)| (k, &c.app))
    }

    /// Reactor second of the connection's last inbound bytes.
    pub fn last_rx(&self, key: Key) -> u32 {
        self.conns[key].last_rx
    }

    /// A server ping is outstanding (sent, and no byte arrived since).
    pub fn ping_outstanding(&self, key: Key) -> bool {
        self.conns[key].has(flag::PING_SENT)
    }

    /// Bytes queued on the connection and not yet written to its socket.
    pub fn queued_bytes(&self, key: Key) -> usize {
        self.conns[key].out.queued_bytes()
    }

    /// The deadline the connection's timer was last scheduled for.
    pub fn timer_deadline(&self, key: Key) -> u32 {
        self.conns[key].timer.deadline
    }

    /// The reactor's counters (the application adds to the protocol-error and idle-timeout ones).
    pub fn tally(&mut self) -> &mut Tally {
        &mut self.tally
    }

    // ---- side sockets -------------------------------------------------------------------------------------------

    /// Reports the readiness of `fd`, a socket the handler serves itself, to [`super::Handler::on_side_ready`]
    /// under `token` (below [`SIDE_TOKENS`]), from the hook's end on.
    pub fn watch(&mut self, fd: std::os::fd::RawFd, token: u32) {
        self.to_watch.push((fd, token));
    }

    /// Stops watching side socket `fd` (registered under `token`) and closes it at the end of the iteration, once
    /// the poller let go of it. Its token may be given to another socket right away: at worst that one hears of
    /// a stale readiness of this one.
    pub fn close_side(&mut self, fd: std::os::fd::RawFd, token: u32) {
        self.closing
            .push((fd, super::SIDE_TOKEN_BASE + u64::from(token)));
    }

    // ---- channels -----------------------------------------------------------------------------------------------

    pub fn is_subscribed(&self, key: Key, channel: &str) -> bool {
        let Some(id) = self.channels.lookup(channel) else {
            return false;
        };
        self.conns[key]
            .subs
            .as_slice()
            .iter()
            .any(|s| s.channel == id)
    }

    /// Channels the connection follows.
    pub fn subscription_count(&self, key: Key) -> usize {
        self.conns[key].subs.len()
    }

    /// Names of the channels the connection follows.
    pub fn channels_of(&self, key: Key) -> impl Iterator<Item = &str> {
        self.conns[key]
            .subs
            .as_slice()
            .iter()
            .map(|s| self.channels.name(s.channel))
    }

    /// Open connections subscribed to `channel`.
    pub fn subscribers(&self, channel: &str) -> impl Iterator<Item = Key> + '_ {
        let list = match self.channels.lookup(channel) {
            Some(id) => self.channels.subscribers(id),
            None => &[],
        };
        list.iter()
            .map(|&k| k as Key)
            .filter(|&k| self.conns[k].accepts_frames())
    }

    /// Subscribes the connection (during its upgrade or while open). False if it already was, or is closing.
    pub fn subscribe(&mut self, key: Key, channel: &str) -> bool {
        let conn = &self.conns[key];
        let usable =
            matches!(conn.state, State::Handshake | State::Open) && !conn.has(flag::DOOMED);
        if !usable || self.is_subscribed(key, channel) {
            return false;
        }
        let sub = self.channels.add(channel, key as u32);
        self.conns[key].subs.push(sub);
        true
    }

    /// False if the connection was not subscribed.
    pub fn unsubscribe(&mut self, key: Key, channel: &str) -> bool {
        let Some(id) = self.channels.lookup(channel) else {
            return false;
        };
        match self.conns[key].subs.remove(id) {
            Some(sub) => {
                self.drop_subscription(sub);
                true
            }
            None => false,
        }
    }

    fn drop_subscription(&mut self, sub: Subscription) {
        if let Some(moved) = self.channels.remove(sub) {
            let subs = self.conns[moved as usize].subs.as_mut_slice();
            if let Some(s) = subs.iter_mut().find(|s| s.channel == sub.channel) {
                s.pos = sub.pos;
            }
        }
    }

    pub(super) fn drop_subscriptions(&mut self, key: Key) {
        let subs = std::mem::take(&mut self.conns[key].subs);
        for &sub in subs.as_slice() {
            self.drop_subscription(sub);
        }
    }

    // ---- timers -------------------------------------------------------------------------------------------------

    /// (Re)schedules the connection's one timer; the handler's `on_timer` runs when it fires. Does nothing once
    /// the connection is closing: its timer is then the close grace period.
    pub fn schedule(&mut self, key: Key, deadline: u32) {
        let conn = &self.conns[key];
        if matches!(conn.state, State::Handshake | State::Open) && !conn.has(flag::DOOMED) {
            self.timers.schedule(&mut self.conns, key, deadline);
        }
    }

    /// Adds a millisecond timer for an open connection: the handler's `on_ms_timer` runs at `deadline_ms` (on the
    /// [`Self::now_ms`] clock). Unlike [`Self::schedule`] nothing is replaced or cancelled: every call adds one
    /// firing, so the handler schedules only deadlines earlier than the one it already has pending, and treats a
    /// firing with nothing due as a no-op (ms_timer.rs).
    pub fn schedule_ms(&mut self, key: Key, deadline_ms: u64) {
        let conn = &self.conns[key];
        if matches!(conn.state, State::Handshake | State::Open) && !conn.has(flag::DOOMED) {
            self.ms_timers.schedule(key, deadline_ms);
        }
    }

    // ---- output -------------------------------------------------------------------------------------------------

    /// Queues a frame reference on an open connection; it leaves with everything else queued in this iteration.
    /// Does nothing on a connection that is not open (closing, doomed, or still in its handshake). The limit is on
    /// backlog: a frame onto an empty queue is always taken (it is shared, so one large message costs a connection
    /// a reference, not a copy), but a queue that already waits and would exceed `ws.max_outbound_bytes` marks a
    /// slow consumer.
    /// A connection in the application's alternative format, or with permessage-deflate, gets the frame in its
    /// form (transcoded, compressed), made for it alone.
    #[inline]
    pub fn queue(&mut self, key: Key, frame: OutFrame) {
        if self.conns[key].wire & (wire::ALT_FORMAT | wire::WINDOW | wire::STREAM) == 0 {
            return self.push(key, frame);
        }
        let form = self.variant(key, &frame, &mut Variants::default());
        self.push(key, form)
    }

    /// Queues a frame already in the connection's format (see [`Self::queue`]).
    #[inline]
    pub(super) fn push(&mut self, key: Key, frame: OutFrame) {
        let conn = &mut self.conns[key];
        if !conn.accepts_frames() || frame.is_empty() {
            return; // empty: a frame with no stream form (a pong on a stream)
        }
        // A detached connection has no socket to send from.
        if frame.len() >= self.zc.threshold && conn.tls == NO_TLS && conn.wire & wire::DETACHED == 0
        {
            conn.flags |= flag::ZEROCOPY;
        }
        let backlog = !conn.out.is_empty();
        conn.out.push(frame);
        self.tally.messages_out_total += 1;
        if backlog {
            // Frames the kernel may still read (zero-copy sends) count until it lets go of them.
            let held = conn.out.queued_bytes();
            let max = self.limits.max_outbound;
            if held > max || conn.has(flag::ZEROCOPY) && held + self.zc.bytes_of(key) > max {
                return self.slow_consumer(key);
            }
        }
        self.mark_dirty(key);
    }

    /// Queues a frame built for this connection alone.
    pub fn send(&mut self, key: Key, frame: Vec<u8>) {
        self.queue(key, Rc::new(Arc::new(frame)));
    }

    /// Queues a ping and remembers it is outstanding until bytes arrive.
    pub fn send_ping(&mut self, key: Key) {
        if self.conns[key].accepts_frames() {
            self.conns[key].flags |= flag::PING_SENT;
            self.queue(key, self.ping_frame.clone());
        }
    }

    /// Queues one shared frame on every local subscriber of `channel` but those in `except` (a handful at most):
    /// one reference each, no copy. Queueing never removes a subscriber (a slow consumer is only marked), so the
    /// list is walked as it is. Returns the number of subscribers it was queued on.
    pub fn fan_out(&mut self, channel: &str, frame: SharedFrame, except: &[Key]) -> usize {
        self.tally.publishes_total += 1;
        let Some(id) = self.channels.lookup(channel) else {
            return 0;
        };
        let frame: OutFrame = Rc::new(frame);
        let mut forms = Variants::default();
        let count = self.channels.subscribers(id).len();
        let queued = count - except.len().min(count);
        self.channels.count_deliveries(id, queued);
        for i in 0..count {
            let key = self.channels.subscribers(id)[i] as usize;
            if except.is_empty() || !except.contains(&key) {
                let form = self.variant(key, &frame, &mut forms);
                self.push(key, form);
            }
        }
        queued
    }

    /// Queues `frame` on every open connection for which `takes` says yes; returns how many.
    pub(super) fn broadcast(&mut self, frame: SharedFrame, takes: impl Fn(&A) -> bool) -> usize {
        self.tally.publishes_total += 1;
        let frame: OutFrame = Rc::new(frame);
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        keys.extend(
            self.conns
                .iter()
                .filter(|(_, c)| c.accepts_frames() && takes(&c.app))
                .map(|(k, _)| k as u32),
        );
        let mut forms = Variants::default();
        for &key in &keys {
            let form = self.variant(key as usize, &frame, &mut forms);
            self.push(key as usize, form);
        }
        let count = keys.len();
        self.keys = keys;
        count
    }

    /// Accepts the first valid permessage-deflate offer of `req` for connection `key` (when `ws.deflate` is on):
    /// from now on its decoder takes compressed messages and shared frames reach it compressed. The agreement is
    /// for the 101 response (`frame::handshake::write_switching`).
    pub fn negotiate_deflate(&mut self, key: Key, req: &Request<'_>) -> Option<Agreed> {
        if !self.limits.deflate {
            return None;
        }
        let agreed = deflate_offer::negotiate(
            req.extensions.as_slice(),
            self.limits.deflate_client_context,
        )?;
        let conn = &mut self.conns[key];
        conn.wire |= agreed.server_window_bits
            | if agreed.client_no_context_takeover {
                0
            } else {
                wire::CLIENT_CONTEXT
            };
        conn.decoder.allow_compression();
        Some(agreed)
    }

    /// From now on connection `key` gets every text frame in the application's alternative format
    /// ([`super::Handler::transcode`]); shared frames are transcoded once for all such connections.
    pub fn use_alt_format(&mut self, key: Key) {
        self.conns[key].wire |= wire::ALT_FORMAT;
    }

    /// Hands the frames queued on detached connection `key` to `take`, oldest first, and empties its queue.
    pub fn take_queued(&mut self, key: Key, mut take: impl FnMut(&[u8])) {
        let conn = &mut self.conns[key];
        if conn.wire & wire::DETACHED == 0 {
            return;
        }
        for frame in conn.out.drain() {
            take(&frame);
        }
    }

    /// The request on connection `key` (in [`super::Handler::on_http`]) is answered later: its input is
    /// discarded until then, and at `deadline` (reactor second) the core answers 503 itself.
    pub fn hold(&mut self, key: Key, deadline: u32) {
        let conn = &mut self.conns[key];
        if conn.state == State::Handshake && !conn.has(flag::DOOMED) {
            conn.flags |= flag::HELD;
            self.timers.schedule(&mut self.conns, key, deadline);
        }
    }

    /// Whether `key` names a held request still waiting for its answer (any key may be asked).
    pub fn is_held(&self, key: Key) -> bool {
        self.conns.get(key).is_some_and(|c| {
            c.state == State::Handshake && c.has(flag::HELD) && !c.has(flag::DOOMED)
        })
    }

    /// Answers a held request with a complete HTTP response; false when it no longer waits (its client left).
    pub fn answer_held(&mut self, key: Key, response: &[u8]) -> bool {
        if !self.is_held(key) {
            return false;
        }
        self.conns[key].flags &= !flag::HELD;
        self.respond(key, response);
        true
    }

    /// Whether connection `key` is detached ([`Self::open_detached`]).
    pub fn is_detached(&self, key: Key) -> bool {
        self.conns[key].wire & wire::DETACHED != 0
    }

    /// Whether connection `key` is a streaming HTTP connection ([`super::Reply::Stream`]).
    pub fn is_stream(&self, key: Key) -> bool {
        self.conns[key].wire & wire::STREAM != 0
    }

    /// The client of connection `key` showed life on another request (a stream's client speaks through separate
    /// HTTP requests): counts like inbound bytes for the idle timeout and an outstanding ping.
    pub fn touch(&mut self, key: Key) {
        let now = self.now;
        let conn = &mut self.conns[key];
        conn.last_rx = now;
        conn.flags &= !flag::PING_SENT;
    }

    /// Whether connection `key` uses the application's alternative format.
    pub fn alt_format(&self, key: Key) -> bool {
        self.conns[key].wire & wire::ALT_FORMAT != 0
    }

    pub(super) fn mark_dirty(&mut self, key: Key) {
        let conn = &mut self.conns[key];
        if conn.flags & (flag::DIRTY | flag::BLOCKED) == 0 {
            conn.flags |= flag::DIRTY;
            if conn.wire & wire::DETACHED != 0 {
                self.with_output.push(key); // no socket: the handler hears of it instead
            } else {
                self.dirty.push(key);
            }
        }
    }

    /// Writes the connection's queue, one writev (plaintext) or encrypted records (TLS).
    pub(super) fn flush(&mut self, key: Key) {
        let conn = &mut self.conns[key];
        if !conn.has(flag::DIRTY) {
            return;
        }
        conn.flags &= !flag::DIRTY;
        if conn.tls != NO_TLS {
            return self.tls_flush(key);
        }
        if conn.has(flag::ZEROCOPY) {
            return self.flush_zerocopy(key);
        }
        let before = conn.out.queued_bytes();
        match conn.out.flush(conn.fd, &mut self.iov) {
            Ok(Flush::Done) => {
                self.tally.bytes_out_total += before as u64;
                self.drained(key);
            }
            Ok(Flush::Blocked) => {
                self.tally.bytes_out_total += (before - conn.out.queued_bytes()) as u64;
                conn.flags |= flag::BLOCKED;
            }
            Err(_) => self.doom(key),
        }
    }

    /// Applies the result of a write of `offered` bytes from the connection's queue (a batch write: a byte
    /// count, or a negated errno), as `flush` does for its own writev; `zerocopy`: it was that zero-copy send.
    pub(super) fn wrote(&mut self, key: Key, offered: usize, result: i32, zerocopy: Option<u32>) {
        let conn = &mut self.conns[key];
        if result < 0 {
            return match -result {
                libc::EAGAIN => conn.flags |= flag::BLOCKED,
                libc::EINTR => self.mark_dirty(key),
                _ => self.doom(key),
            };
        }
        let written = result as usize;
        if conn.has(flag::ZEROCOPY) {
            self.wrote_pinned(key, written, zerocopy);
        } else {
            conn.out.consume(written);
        }
        let conn = &mut self.conns[key];
        self.tally.bytes_out_total += written as u64;
        if conn.out.is_empty() {
            self.drained(key);
        } else if written < offered {
            conn.flags |= flag::BLOCKED;
        } else {
            self.mark_dirty(key); // more frames than one writev takes
        }
    }

    /// A subscriber that cannot keep up: what it has not started to receive is dropped and it is closed with
    /// 1008, so memory stays bounded and nobody else waits for it. A frame already partly written is finished
    /// first (the close frame cannot cut into it).
    fn slow_consumer(&mut self, key: Key) {
        self.tally.slow_consumer_closes_total += 1;
        self.conns[key].out.drop_unsent();
        self.close(
            key,
            crate::frame::close_code::POLICY_VIOLATION,
            "slow consumer",
        );
    }
}
