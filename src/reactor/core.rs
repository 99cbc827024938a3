//! What the application may do to connections: [`Core`] is the reactor minus its handler — the connection slab,
//! the channel index, buffers, queues and timers — and every [`super::Handler`] hook gets it. Its methods never
//! free a connection: closing only marks it (see teardown.rs), so a key handed to a hook stays valid until the
//! end of the loop iteration.

use super::channels::{ChannelIndex, Subscription};
use super::conn::{flag, Conn, State, NO_TLS};
use super::handler::Key;
use super::stats::Tally;
use super::timer::TimerWheel;
use super::tls_io::TlsIo;
use crate::frame::{encode, OP_PING};
use crate::pool::{BufPool, Flush, MemoryBudget, OutFrame, SharedFrame};
use slab::Slab;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// Settings copied out of the config for the hot path.
pub(super) struct Limits {
    pub max_message: usize,
    pub max_outbound: usize,
    pub max_head: usize,
    pub max_connections: usize,
    pub handshake_timeout: u32,
    pub message_timeout: u32,
}

pub struct Core<A> {
    pub(super) id: usize,
    pub(super) conns: Slab<Conn<A>>,
    pub(super) channels: ChannelIndex,
    pub(super) bufs: BufPool,
    pub(super) timers: TimerWheel,
    pub(super) tally: Tally,
    pub(super) limits: Limits,
    /// Reactor-clock second (1 at start-up).
    pub(super) now: u32,
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
    /// Reusable list of connection keys (broadcast), so a broadcast allocates nothing.
    keys: Vec<u32>,
}

impl<A> Core<A> {
    pub(super) fn new(
        id: usize,
        limits: Limits,
        live_connections: Arc<AtomicUsize>,
        budget: Arc<MemoryBudget>,
        tls: bool,
    ) -> Self {
        let mut ping = Vec::new();
        encode::push_frame(&mut ping, OP_PING, b"");
        Core {
            id,
            conns: Slab::new(),
            channels: ChannelIndex::default(),
            bufs: BufPool::new(),
            // Second 1 is the first tick, so a zero deadline never looks "due forever".
            timers: TimerWheel::new(1),
            tally: Tally::default(),
            limits,
            now: 1,
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
            keys: Vec::new(),
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

    /// The deadline the connection's timer was last scheduled for.
    pub fn timer_deadline(&self, key: Key) -> u32 {
        self.conns[key].timer.deadline
    }

    /// The reactor's counters (the application adds to the protocol-error and idle-timeout ones).
    pub fn tally(&mut self) -> &mut Tally {
        &mut self.tally
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

    // ---- output -------------------------------------------------------------------------------------------------

    /// Queues a frame reference on an open connection; it leaves with everything else queued in this iteration.
    /// Does nothing on a connection that is not open (closing, doomed, or still in its handshake). The limit is on
    /// backlog: a frame onto an empty queue is always taken (it is shared, so one large message costs a connection
    /// a reference, not a copy), but a queue that already waits and would exceed `ws.max_outbound_bytes` marks a
    /// slow consumer.
    #[inline]
    pub fn queue(&mut self, key: Key, frame: OutFrame) {
        let conn = &mut self.conns[key];
        if !conn.accepts_frames() {
            return;
        }
        let backlog = !conn.out.is_empty();
        conn.out.push(frame);
        self.tally.messages_out_total += 1;
        if backlog && conn.out.queued_bytes() > self.limits.max_outbound {
            return self.slow_consumer(key);
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

    /// Queues one shared frame on every local subscriber of `channel`: one reference each, no copy. Queueing never
    /// removes a subscriber (a slow consumer is only marked), so the list is walked as it is.
    pub(super) fn fan_out(&mut self, channel: &str, frame: SharedFrame) {
        self.tally.publishes_total += 1;
        let Some(id) = self.channels.lookup(channel) else {
            return;
        };
        let frame: OutFrame = Rc::new(frame);
        let count = self.channels.subscribers(id).len();
        for i in 0..count {
            let key = self.channels.subscribers(id)[i] as usize;
            self.queue(key, frame.clone());
        }
    }

    /// Queues `frame` on every open connection for which `takes` says yes.
    pub(super) fn broadcast(&mut self, frame: SharedFrame, takes: impl Fn(&A) -> bool) {
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
        for &key in &keys {
            self.queue(key as usize, frame.clone());
        }
        self.keys = keys;
    }

    pub(super) fn mark_dirty(&mut self, key: Key) {
        let conn = &mut self.conns[key];
        if conn.flags & (flag::DIRTY | flag::BLOCKED) == 0 {
            conn.flags |= flag::DIRTY;
            self.dirty.push(key);
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
    /// count, or a negated errno), as `flush` does for its own writev.
    pub(super) fn wrote(&mut self, key: Key, offered: usize, result: i32) {
        let conn = &mut self.conns[key];
        if result < 0 {
            return match -result {
                libc::EAGAIN => conn.flags |= flag::BLOCKED,
                libc::EINTR => self.mark_dirty(key),
                _ => self.doom(key),
            };
        }
        let written = result as usize;
        conn.out.consume(written);
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
