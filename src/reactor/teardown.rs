//! How connections end, in one place. Deciding that a connection must go (a close frame, a protocol violation,
//! EOF, an error, a timer, a slow consumer, shutdown) never frees anything: it changes the connection's state and
//! puts it on a list. Once per loop iteration, after everything else, [`Core::reap`] frees what is doomed — socket,
//! buffers, TLS state, subscriptions, slab slot — so no code ever holds a key or a buffer of a freed connection.
//!
//! The states a connection ends through:
//! - `close` (the application, shutdown, a slow consumer): Open → Closing. Our close frame is queued; the client's
//!   close frame, or the grace timer, dooms it.
//! - `fail` (a protocol violation) and `abort_input` (the memory budget, the message timeout): the input can no
//!   longer be decoded, so it is discarded and its buffers go back at the reap. Open → Lingering with the close
//!   frame queued (Closing → Lingering keeps the one already queued); once it is written our side shuts down, and
//!   EOF or the grace timer dooms it.
//! - `reject` (an HTTP error during the handshake): Handshake → Lingering, the response written, our side shut.
//! - `doom`: straight to the reap list (EOF, socket errors, timers, a finished close handshake).
//!
//! Leaving the open state puts a connection on `leaving`: the application's `on_close` runs for it at the end of
//! the iteration (the reactor's `teardown`), before `reap`.

use super::conn::{flag, wire, State, NO_TLS};
use super::core::Core;
use super::handler::Key;
use super::sys::net;
use crate::frame::encode;
use crate::frame::handshake::{self, Reject};
use crate::pool::NO_BUF;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Seconds to wait for the client's close frame, or for EOF after an HTTP error or a violation, before dropping
/// the socket.
pub(super) const CLOSE_GRACE: u32 = 2;

impl<A> Core<A> {
    /// Closes an open connection with a close frame (after what is already queued) and waits, at most the grace
    /// period, for the client's close. Does nothing if the connection is not open.
    pub fn close(&mut self, key: Key, code: u16, reason: &str) {
        if !self.conns[key].accepts_frames() {
            return;
        }
        self.leave_open(key, State::Closing);
        self.push_last(key, encode::close_frame(code, reason));
        self.schedule_grace(key);
        let form = self.conns[key].wire;
        if form & wire::DETACHED != 0 {
            // Nothing to wait for: the handler reads the close frame from the queue in `on_close`.
            self.doom(key);
        } else if form & wire::STREAM != 0 {
            // A stream's client has no close frame to send: it ends once ours is written.
            self.close_after_flush(key);
        }
    }

    /// Like [`Self::close`], without waiting for the client's close frame: the socket closes as soon as ours is
    /// written (for a client that has gone silent, or whose token expired).
    pub fn close_without_wait(&mut self, key: Key, code: u16, reason: &str) {
        if self.conns[key].accepts_frames() {
            self.close(key, code, reason);
            self.close_after_flush(key);
        }
    }

    /// A protocol violation: the rest of the input cannot be decoded and is discarded (see `abort_input`).
    pub(super) fn fail(&mut self, key: Key, code: u16, reason: &str) {
        self.tally.protocol_errors_total += 1;
        self.abort_input(key, code, reason);
    }

    /// Ends a connection whose input will not be decoded any more (a protocol violation, the memory budget, the
    /// message timeout): its input is discarded and its input buffers go back at the reap; the close frame still
    /// leaves (unless a close frame already did), then our side shuts down.
    pub(super) fn abort_input(&mut self, key: Key, code: u16, reason: &str) {
        let conn = &self.conns[key];
        if conn.has(flag::DOOMED) {
            return;
        }
        match conn.state {
            State::Open => {
                self.leave_open(key, State::Lingering);
                self.push_last(key, encode::close_frame(code, reason));
            }
            State::Closing => self.conns[key].state = State::Lingering,
            State::Handshake => return self.doom(key),
            State::Lingering => return,
        }
        self.trim.push(key);
        self.shut_after_flush(key);
        self.schedule_grace(key);
    }

    /// Refuses an upgrade with an HTTP error: the response is written at once, our side shuts down, and the
    /// client's EOF (or the grace timer) ends it, so the response is not lost to a reset.
    pub(super) fn reject(&mut self, key: Key, reject: Reject) {
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
        self.schedule_grace(key);
    }

    /// The client's close frame on an open connection was answered (our reply is queued): the close handshake is
    /// complete once the reply is written.
    pub(super) fn closed_by_peer(&mut self, key: Key) {
        self.leave_open(key, State::Closing);
        self.close_after_flush(key);
    }

    /// Dooms the connection once everything queued is written (at once if nothing is).
    pub(super) fn close_after_flush(&mut self, key: Key) {
        if self.conns[key].out.is_empty() && !self.tls_pending(key) {
            return self.doom(key);
        }
        self.conns[key].flags |= flag::CLOSE_AFTER_FLUSH;
        self.mark_dirty(key);
    }

    /// Puts the connection on the reap list: no more input, nothing new queued, freed at the end of the iteration.
    pub(super) fn doom(&mut self, key: Key) {
        let conn = &mut self.conns[key];
        if conn.has(flag::DOOMED) {
            return;
        }
        conn.flags |= flag::DOOMED;
        let state = conn.state;
        if state == State::Open {
            self.leave_open(key, State::Closing);
        }
        self.doomed.push(key);
    }

    /// The outbound queue was written completely.
    pub(super) fn drained(&mut self, key: Key) {
        let conn = &mut self.conns[key];
        if conn.has(flag::CLOSE_AFTER_FLUSH) {
            self.doom(key);
        } else if conn.has(flag::SHUT_AFTER_FLUSH) {
            conn.flags &= !flag::SHUT_AFTER_FLUSH;
            net::shutdown_write(conn.fd);
        }
    }

    fn leave_open(&mut self, key: Key, next: State) {
        let conn = &mut self.conns[key];
        if conn.state == State::Open {
            self.tally.connections -= 1;
            self.leaving.push(key);
        }
        conn.state = next;
    }

    /// Answers a request with a complete HTTP response ([`super::Reply::Respond`]): it is queued, our side shuts down
    /// once it is written, and the client's EOF ends the connection — or the handshake timeout, which gives a large
    /// response (a page, a long-poll answer) on a slow link longer than the close grace would.
    pub(super) fn respond(&mut self, key: Key, response: &[u8]) {
        self.conns[key].state = State::Lingering;
        self.conns[key]
            .out
            .push(Rc::new(Arc::new(response.to_vec())));
        self.mark_dirty(key);
        self.shut_after_flush(key);
        let deadline = self.now + self.limits.handshake_timeout.max(CLOSE_GRACE);
        self.timers.schedule(&mut self.conns, key, deadline);
    }

    /// Queues a connection's last frame (its close frame, in the connection's stream form if it is a stream), past
    /// the open-state check of `queue`.
    fn push_last(&mut self, key: Key, frame: Vec<u8>) {
        let frame = if self.conns[key].wire & wire::STREAM != 0 {
            (self.stream_form)(&frame)
        } else {
            frame
        };
        if frame.is_empty() {
            return;
        }
        self.conns[key].out.push(Rc::new(Arc::new(frame)));
        self.tally.messages_out_total += 1;
        self.mark_dirty(key);
    }

    fn shut_after_flush(&mut self, key: Key) {
        if self.conns[key].out.is_empty() && !self.tls_pending(key) {
            net::shutdown_write(self.conns[key].fd);
        } else {
            self.conns[key].flags |= flag::SHUT_AFTER_FLUSH;
            self.mark_dirty(key);
        }
    }

    fn schedule_grace(&mut self, key: Key) {
        let deadline = self.now + CLOSE_GRACE;
        self.timers.schedule(&mut self.conns, key, deadline);
    }

    /// Frees every doomed connection. The only place a connection's resources are released. Runs after the
    /// handler's `on_close` for the connections that left the open state (see the reactor's `teardown`).
    pub(super) fn reap(&mut self, zerocopy_notes: impl FnOnce(&mut Vec<super::sys::Notification>)) {
        self.settle_zerocopy(zerocopy_notes);
        let mut trim = std::mem::take(&mut self.trim);
        for key in trim.drain(..) {
            self.release_input(key);
        }
        self.trim = trim;
        if self.doomed.is_empty() {
            return;
        }
        let conns = &self.conns;
        // The read and flush lists carry keys into the next iteration; a freed key may be reused by then.
        self.pending_reads.retain(|&k| !conns[k].has(flag::DOOMED));
        self.dirty.retain(|&k| !conns[k].has(flag::DOOMED));
        self.with_output.retain(|&k| !conns[k].has(flag::DOOMED));
        let mut doomed = std::mem::take(&mut self.doomed);
        for key in doomed.drain(..) {
            self.release(key);
        }
        self.doomed = doomed;
    }

    /// Gives back the input buffers of a connection that reads nothing any more (no buffer is moved out of the
    /// arena at the reap, so this is safe here and only here).
    fn release_input(&mut self, key: Key) {
        let conn = &mut self.conns[key];
        let (rbuf, msg) = (conn.rbuf, conn.msg);
        conn.rbuf = NO_BUF;
        conn.msg = NO_BUF;
        self.bufs.give_back(rbuf);
        self.bufs.give_back(msg);
        if conn.tls != NO_TLS {
            self.tls_release_input(key);
        }
    }

    fn release(&mut self, key: Key) {
        self.drop_subscriptions(key);
        self.timers.cancel(&mut self.conns, key);
        let conn = &mut self.conns[key];
        if conn.wire & wire::CLIENT_CONTEXT != 0 {
            self.inflate_contexts.remove(&key);
        }
        let (rbuf, msg) = (conn.rbuf, conn.msg);
        (conn.rbuf, conn.msg) = (NO_BUF, NO_BUF);
        self.bufs.give_back(rbuf);
        self.bufs.give_back(msg);
        // The kernel may still read pages of its frames (zero-copy sends): the slot and socket wait for that.
        if self.conns[key].has(flag::ZEROCOPY) && self.park(key) {
            return;
        }
        self.free(key);
    }

    /// The last of a connection: its slot, TLS state and socket.
    pub(super) fn free(&mut self, key: Key) {
        let conn = self.conns.remove(key);
        if conn.tls != NO_TLS {
            self.tls_release(conn.tls, conn.fd, conn.state);
        }
        if conn.has(flag::ZEROCOPY) {
            self.recycle_ledger(key);
        }
        // Closed by the reactor once its backend has let go of it (see `Poller::forget`). A detached connection
        // has none.
        if conn.wire & wire::DETACHED == 0 {
            self.closing.push((conn.fd, key as u64));
        }
        self.live_connections.fetch_sub(1, Ordering::Relaxed);
        self.tally.closed_total += 1;
    }
}
