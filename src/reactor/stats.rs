//! A reactor's counters: plain additions on the loop's own [`Tally`], published once per iteration into the
//! [`ReactorStats`] atomics that other threads (the API) read.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters one reactor publishes (single writer: the reactor; readers: the API). Gauges and totals.
#[derive(Default)]
#[repr(align(64))]
pub struct ReactorStats {
    pub connections: AtomicU64,
    pub channels: AtomicU64,
    pub handshakes_total: AtomicU64,
    pub handshake_failures_total: AtomicU64,
    pub closed_total: AtomicU64,
    pub messages_in_total: AtomicU64,
    pub messages_out_total: AtomicU64,
    pub bytes_in_total: AtomicU64,
    pub bytes_out_total: AtomicU64,
    pub slow_consumer_closes_total: AtomicU64,
    pub protocol_errors_total: AtomicU64,
    pub idle_timeouts_total: AtomicU64,
    pub refused_total: AtomicU64,
    pub publishes_total: AtomicU64,
    pub read_buffers_lent: AtomicU64,
    pub buffered_bytes: AtomicU64,
    pub memory_budget_closes_total: AtomicU64,
    pub message_timeouts_total: AtomicU64,
    pub tls_handshakes_total: AtomicU64,
    pub tls_failures_total: AtomicU64,
    pub tls_sessions: AtomicU64,
    pub deflate_bytes_in_total: AtomicU64,
    pub deflate_bytes_out_total: AtomicU64,
    pub inflate_bytes_in_total: AtomicU64,
    pub inflate_bytes_out_total: AtomicU64,
    pub zerocopy_sends_total: AtomicU64,
    pub zerocopy_pinned_bytes: AtomicU64,
    pub zerocopy_parked: AtomicU64,
}

/// The reactor's private tallies, copied into [`ReactorStats`] once per loop iteration so the per-message path
/// does plain additions instead of atomic read-modify-writes.
#[derive(Default, Clone, Copy)]
pub struct Tally {
    pub connections: u64,
    pub channels: u64,
    pub handshakes_total: u64,
    pub handshake_failures_total: u64,
    pub closed_total: u64,
    pub messages_in_total: u64,
    pub messages_out_total: u64,
    pub bytes_in_total: u64,
    pub bytes_out_total: u64,
    pub slow_consumer_closes_total: u64,
    pub protocol_errors_total: u64,
    pub idle_timeouts_total: u64,
    pub refused_total: u64,
    pub publishes_total: u64,
    pub read_buffers_lent: u64,
    /// Bytes of input buffers lent out (this reactor's share of `server.max_buffered_bytes`).
    pub buffered_bytes: u64,
    /// Connections closed with 1008 "memory budget".
    pub memory_budget_closes_total: u64,
    /// Connections closed with 1008 "message timeout".
    pub message_timeouts_total: u64,
    /// Completed TLS handshakes.
    pub tls_handshakes_total: u64,
    /// TLS connections closed for a TLS failure: bad or plaintext records, unknown SNI, handshake timeout.
    pub tls_failures_total: u64,
    /// TLS connections held, handshaking or open (the rest of `connections` is plaintext).
    pub tls_sessions: u64,
    /// Payload bytes of shared frames compressed for permessage-deflate (before compression).
    pub deflate_bytes_in_total: u64,
    /// Payload bytes those frames compressed to (once per publish and reactor, not per subscriber).
    pub deflate_bytes_out_total: u64,
    /// Compressed payload bytes of client messages inflated.
    pub inflate_bytes_in_total: u64,
    /// Bytes those client messages inflated to.
    pub inflate_bytes_out_total: u64,
    /// Zero-copy sends (`ws.zerocopy_threshold`).
    pub zerocopy_sends_total: u64,
    /// Bytes of frames the kernel may still read (zero-copy sends not yet notified).
    pub zerocopy_pinned_bytes: u64,
    /// Closed connections whose slot and socket wait for zero-copy notifications.
    pub zerocopy_parked: u64,
}

impl ReactorStats {
    pub fn store(&self, t: &Tally) {
        let r = Ordering::Relaxed;
        self.connections.store(t.connections, r);
        self.channels.store(t.channels, r);
        self.handshakes_total.store(t.handshakes_total, r);
        self.handshake_failures_total
            .store(t.handshake_failures_total, r);
        self.closed_total.store(t.closed_total, r);
        self.messages_in_total.store(t.messages_in_total, r);
        self.messages_out_total.store(t.messages_out_total, r);
        self.bytes_in_total.store(t.bytes_in_total, r);
        self.bytes_out_total.store(t.bytes_out_total, r);
        self.slow_consumer_closes_total
            .store(t.slow_consumer_closes_total, r);
        self.protocol_errors_total.store(t.protocol_errors_total, r);
        self.idle_timeouts_total.store(t.idle_timeouts_total, r);
        self.refused_total.store(t.refused_total, r);
        self.publishes_total.store(t.publishes_total, r);
        self.read_buffers_lent.store(t.read_buffers_lent, r);
        self.buffered_bytes.store(t.buffered_bytes, r);
        self.memory_budget_closes_total
            .store(t.memory_budget_closes_total, r);
        self.message_timeouts_total
            .store(t.message_timeouts_total, r);
        self.tls_handshakes_total.store(t.tls_handshakes_total, r);
        self.tls_failures_total.store(t.tls_failures_total, r);
        self.tls_sessions.store(t.tls_sessions, r);
        self.deflate_bytes_in_total
            .store(t.deflate_bytes_in_total, r);
        self.deflate_bytes_out_total
            .store(t.deflate_bytes_out_total, r);
        self.inflate_bytes_in_total
            .store(t.inflate_bytes_in_total, r);
        self.inflate_bytes_out_total
            .store(t.inflate_bytes_out_total, r);
        self.zerocopy_sends_total.store(t.zerocopy_sends_total, r);
        self.zerocopy_pinned_bytes.store(t.zerocopy_pinned_bytes, r);
        self.zerocopy_parked.store(t.zerocopy_parked, r);
    }

    pub fn load(&self) -> Tally {
        let r = Ordering::Relaxed;
        Tally {
            connections: self.connections.load(r),
            channels: self.channels.load(r),
            handshakes_total: self.handshakes_total.load(r),
            handshake_failures_total: self.handshake_failures_total.load(r),
            closed_total: self.closed_total.load(r),
            messages_in_total: self.messages_in_total.load(r),
            messages_out_total: self.messages_out_total.load(r),
            bytes_in_total: self.bytes_in_total.load(r),
            bytes_out_total: self.bytes_out_total.load(r),
            slow_consumer_closes_total: self.slow_consumer_closes_total.load(r),
            protocol_errors_total: self.protocol_errors_total.load(r),
            idle_timeouts_total: self.idle_timeouts_total.load(r),
            refused_total: self.refused_total.load(r),
            publishes_total: self.publishes_total.load(r),
            read_buffers_lent: self.read_buffers_lent.load(r),
            buffered_bytes: self.buffered_bytes.load(r),
            memory_budget_closes_total: self.memory_budget_closes_total.load(r),
            message_timeouts_total: self.message_timeouts_total.load(r),
            tls_handshakes_total: self.tls_handshakes_total.load(r),
            tls_failures_total: self.tls_failures_total.load(r),
            tls_sessions: self.tls_sessions.load(r),
            deflate_bytes_in_total: self.deflate_bytes_in_total.load(r),
            deflate_bytes_out_total: self.deflate_bytes_out_total.load(r),
            inflate_bytes_in_total: self.inflate_bytes_in_total.load(r),
            inflate_bytes_out_total: self.inflate_bytes_out_total.load(r),
            zerocopy_sends_total: self.zerocopy_sends_total.load(r),
            zerocopy_pinned_bytes: self.zerocopy_pinned_bytes.load(r),
            zerocopy_parked: self.zerocopy_parked.load(r),
        }
    }
}
