//! Reading and decoding: socket bytes → upgrade request or frames → the handler's hooks. Input stops at the
//! first sign that a connection is ending: a doomed connection is not read, a lingering one's bytes are discarded,
//! and after a protocol violation nothing more of the buffer is decoded.

use super::conn::{flag, wire, State, NO_TLS};
use super::handler::{Handler, Key, Reply};
use super::sys::{net, Poller, Ready};
use super::Reactor;
use crate::frame::close_code::INVALID_PAYLOAD;
use crate::frame::decode::{Decoder, Frame};
use crate::frame::handshake;
use crate::frame::{encode, OP_CLOSE, OP_PONG, OP_TEXT};
use crate::pool::{self, NO_BUF};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Bytes read at once into the shared scratch buffer (a connection borrows a pooled buffer only for leftovers).
pub(super) const SCRATCH: usize = 64 * 1024;
/// Reads per readiness event before the connection yields to others (continued next iteration).
const READS_PER_EVENT: usize = 16;

impl<P: Poller, H: Handler> Reactor<P, H> {
    pub(super) fn on_ready(&mut self, key: Key, ev: &Ready) {
        // Tokens come from the kernel for registered sockets, and a socket is closed only when its slot is freed,
        // after the batch: the key is live. Checked anyway, because a wrong index would abort the process.
        if let Some(r) = ev.received {
            // Borrowed from the backend only while it is decoded: leftovers go to a lent buffer.
            let mut buf = self.poller.take_received(r);
            if let Some(data) = buf.get_mut(..r.len as usize) {
                self.on_received(key, data);
            }
            self.poller.recycle(r, buf);
        }
        let Some(conn) = self.core.conns.get_mut(key) else {
            return;
        };
        if ev.error {
            // On epoll, zero-copy notifications raise EPOLLERR: a real error only if something else is there.
            let notifications = conn.has(flag::ZEROCOPY)
                && self.core.zc.kind == Some(super::sys::ZeroCopy::Socket)
                && !self.core.read_error_queue(key);
            if !notifications {
                return self.core.doom(key);
            }
        }
        let conn = &mut self.core.conns[key];
        if ev.writable {
            conn.flags &= !flag::BLOCKED;
            if !conn.out.is_empty() || conn.tls != NO_TLS {
                self.core.mark_dirty(key);
            }
        }
        if ev.readable {
            self.on_readable(key);
        }
    }

    pub(super) fn on_readable(&mut self, key: Key) {
        for _ in 0..READS_PER_EVENT {
            let conn = &self.core.conns[key];
            if conn.has(flag::DOOMED) {
                return;
            }
            let (fd, rbuf, tls, state) = (conn.fd, conn.rbuf, conn.tls != NO_TLS, conn.state);
            let lent = rbuf != NO_BUF;
            // The bytes move out of their buffer while the handler runs; the buffer itself stays lent to the
            // connection (nothing frees it before the reap).
            let mut buf = if lent {
                self.core.bufs.take(rbuf)
            } else {
                std::mem::take(&mut self.scratch)
            };
            let want = if !lent {
                SCRATCH
            } else if tls {
                pool::block_size()
            } else {
                read_size(state, &buf)
            };
            match pool::read_into(fd, &mut buf, want) {
                Ok(0) => {
                    self.keep_leftover(key, rbuf, buf, usize::MAX);
                    return self.core.doom(key);
                }
                Ok(n) => self.took_input(key, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.keep_leftover(key, rbuf, buf, 0);
                    if let Err(e) = self.poller.drained(fd, key as u64) {
                        log::error!("reactor {}: receive: {e}", self.core.id);
                        self.core.doom(key);
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.keep_leftover(key, rbuf, buf, 0);
                    continue;
                }
                Err(_) => {
                    self.keep_leftover(key, rbuf, buf, usize::MAX);
                    return self.core.doom(key);
                }
            }
            let consumed = self.decode(key, state, tls, &mut buf);
            self.keep_leftover(key, rbuf, buf, consumed);
        }
        self.core.pending_reads.push(key);
    }

    /// Input the backend received for connection `key` (see [`super::sys::Received`]), decoded like the bytes of a read:
    /// after a partial frame the connection holds, or straight from the backend's buffer.
    fn on_received(&mut self, key: Key, data: &mut [u8]) {
        let Some(conn) = self.core.conns.get(key) else {
            return;
        };
        if conn.has(flag::DOOMED) {
            return;
        }
        let (rbuf, tls, state) = (conn.rbuf, conn.tls != NO_TLS, conn.state);
        self.took_input(key, data.len());
        if rbuf != NO_BUF {
            self.core.bufs.append(rbuf, data);
            let mut buf = self.core.bufs.take(rbuf);
            let consumed = self.decode(key, state, tls, &mut buf);
            self.keep_leftover(key, rbuf, buf, consumed);
        } else {
            let consumed = self.decode(key, state, tls, data);
            self.lend_rest(key, data, consumed);
            self.core.check_memory();
        }
    }

    /// Bookkeeping of `n` bytes of input on connection `key`.
    fn took_input(&mut self, key: Key, n: usize) {
        self.core.tally.bytes_in_total += n as u64;
        let conn = &mut self.core.conns[key];
        if conn.state != State::Handshake {
            conn.last_rx = self.core.now;
        }
        conn.flags &= !flag::PING_SENT;
    }

    /// Decodes input of connection `key` (`state` and `tls` as before it arrived); returns the bytes consumed.
    fn decode(&mut self, key: Key, state: State, tls: bool, buf: &mut [u8]) -> usize {
        if state == State::Lingering {
            buf.len()
        } else if tls {
            self.tls_input(key, buf)
        } else {
            self.process_input(key, buf)
        }
    }

    /// After decoding: the connection keeps a lent buffer only for a partial frame (or request head) it will
    /// still decode; the scratch buffer goes back for the next read.
    fn keep_leftover(&mut self, key: Key, rbuf: u32, mut buf: Vec<u8>, consumed: usize) {
        if rbuf != NO_BUF {
            let consumed = consumed.min(buf.len());
            let keep = consumed < buf.len() && self.takes_input(key);
            let now = self.core.now;
            let bufs = &mut self.core.bufs;
            buf.drain(..consumed);
            bufs.put(rbuf, buf);
            if !keep {
                bufs.give_back(rbuf);
                self.core.conns[key].rbuf = NO_BUF;
            } else if consumed > 0 {
                bufs.touch(rbuf, now); // a frame completed: the one left started now
            }
        } else {
            self.lend_rest(key, &buf, consumed);
            buf.clear();
            self.scratch = buf;
        }
        self.core.check_memory();
    }

    /// Moves what decoding left of `buf` (a partial frame or request head) into a buffer lent to the connection,
    /// unless it takes no more input.
    fn lend_rest(&mut self, key: Key, buf: &[u8], consumed: usize) {
        let consumed = consumed.min(buf.len());
        if consumed < buf.len() && self.takes_input(key) {
            let bufs = &mut self.core.bufs;
            let id = bufs.lend(key as u32, self.core.now);
            bufs.append(id, &buf[consumed..]);
            self.core.conns[key].rbuf = id;
        }
    }

    fn takes_input(&self, key: Key) -> bool {
        let conn = &self.core.conns[key];
        !conn.has(flag::DOOMED) && conn.state != State::Lingering
    }

    /// Decodes what `buf` holds for connection `key`; returns the bytes consumed (all of them once the connection
    /// takes no more input).
    pub(super) fn process_input(&mut self, key: Key, buf: &mut [u8]) -> usize {
        let mut off = 0;
        loop {
            let conn = &mut self.core.conns[key];
            if conn.has(flag::DOOMED) {
                return buf.len();
            }
            match conn.state {
                State::Handshake if conn.has(flag::HELD) => return buf.len(),
                State::Handshake => {
                    match handshake::parse_request(&buf[off..], self.core.limits.max_head) {
                        Ok(None) => return off,
                        Ok(Some(req)) => {
                            let body_len = req.content_length;
                            if body_len > self.core.limits.max_body {
                                self.core.reject(key, handshake::Reject::PayloadTooLarge);
                                return buf.len();
                            }
                            let start = off + req.head_len;
                            if buf.len() - start < body_len {
                                return off; // the body is incomplete: the request is parsed again then
                            }
                            off = start + body_len;
                            self.request(key, &req, &buf[start..off]);
                        }
                        Err(reject) => {
                            self.core.reject(key, reject);
                            return buf.len();
                        }
                    }
                }
                State::Open | State::Closing => {
                    if off == buf.len() || conn.wire & wire::STREAM != 0 {
                        return buf.len();
                    }
                    match conn
                        .decoder
                        .next(&mut buf[off..], self.core.limits.max_message)
                    {
                        Ok(Some((frame, used))) => {
                            off += used;
                            self.on_frame(key, frame);
                        }
                        Ok(None) => return off,
                        Err(v) => {
                            self.core.fail(key, v.code, v.reason);
                            return buf.len();
                        }
                    }
                }
                State::Lingering => return buf.len(),
            }
        }
    }

    /// Answers a request: the handler decides (upgrade, stream, response or refusal), the core sends.
    fn request(&mut self, key: Key, req: &handshake::Request<'_>, body: &[u8]) {
        // One reusable buffer for every 101 response: a handshake allocates no response.
        let mut response = std::mem::take(&mut self.response);
        response.clear();
        match self
            .handler
            .on_http(&mut self.core, key, req, body, &mut response)
        {
            Ok(Reply::WebSocket) => self.open(key, &response),
            Ok(Reply::Stream) => {
                self.core.conns[key].wire |= wire::STREAM;
                self.open(key, &response);
            }
            Ok(Reply::Respond) => self.core.respond(key, &response),
            Ok(Reply::Hold) => {}
            Err(reject) => self.core.reject(key, reject),
        }
        if response.capacity() > SCRATCH {
            response = Vec::new(); // a large response (a page) does not keep its memory
        }
        self.response = response;
    }

    /// Sends the 101 response of an accepted upgrade; from now on the connection takes frames.
    fn open(&mut self, key: Key, response: &[u8]) {
        let took_us = self.clock_us().wrapping_sub(self.core.conns[key].last_rx);
        self.handshake
            .record(Duration::from_micros(u64::from(took_us)));
        let core = &mut self.core;
        let conn = &mut core.conns[key];
        conn.last_rx = core.now;
        conn.state = State::Open;
        core.tally.handshakes_total += 1;
        core.tally.connections += 1;
        // A plain connection writes it straight away: on a fresh socket it always fits, and an idle connection
        // then never allocates its outbound ring. Only a short write falls back to the queue. A TLS connection
        // must encrypt it, so it goes through the queue and the TLS flush.
        let written = if conn.tls == NO_TLS {
            net::write_nonblocking(conn.fd, response)
        } else {
            0
        };
        if written < response.len() {
            // As it is: the handler wrote it in the connection's format (`push`, not `send`, which transcodes).
            core.push(key, Rc::new(Arc::new(response[written..].to_vec())));
        }
    }

    fn on_frame(&mut self, key: Key, frame: Frame<'_>) {
        let core = &mut self.core;
        let conn = &mut core.conns[key];
        let open = conn.state == State::Open;
        match frame {
            Frame::Data {
                opcode,
                first,
                fin,
                compressed,
                payload,
            } => {
                if !open {
                    return; // data after our close frame is ignored (RFC 6455 §5.5.1)
                }
                if first && fin {
                    return self.on_data(key, opcode, compressed, payload);
                }
                if conn.msg == NO_BUF {
                    conn.msg = core.bufs.lend(key as u32, core.now);
                }
                let id = conn.msg;
                core.bufs.append(id, payload);
                if fin {
                    // The buffer stays lent to the connection while the handler runs (nothing frees it before the
                    // reap); only its bytes move out.
                    let message = core.bufs.take(id);
                    self.on_data(key, opcode, compressed, &message);
                    let core = &mut self.core;
                    core.bufs.put(id, message);
                    core.bufs.give_back(id);
                    core.conns[key].msg = NO_BUF;
                }
            }
            Frame::Ping(payload) => {
                if open && self.handler.on_control(&mut self.core, key) {
                    let mut pong = Vec::with_capacity(payload.len() + 2);
                    encode::push_frame(&mut pong, OP_PONG, payload);
                    self.core.send(key, pong);
                }
            }
            Frame::Pong(_) => {
                if open {
                    self.handler.on_control(&mut self.core, key);
                }
            }
            Frame::Close { code, .. } => {
                if open {
                    // Echo the client's code (RFC 6455 §5.5.1), then close the TCP connection ourselves.
                    let reply = match code {
                        Some(code) => encode::close_frame(code, ""),
                        None => {
                            let mut f = Vec::with_capacity(2);
                            encode::push_frame(&mut f, OP_CLOSE, b"");
                            f
                        }
                    };
                    core.send(key, reply);
                    core.closed_by_peer(key);
                } else {
                    core.close_after_flush(key);
                }
            }
        }
    }

    /// A complete message: inflated first when compressed (permessage-deflate), into the reactor's reusable
    /// output buffer, bounded by `ws.max_message_size` (a zip bomb is closed with 1009 at the limit).
    fn on_data(&mut self, key: Key, opcode: u8, compressed: bool, payload: &[u8]) {
        if !compressed {
            return self.on_message(key, opcode, payload);
        }
        let core = &mut self.core;
        let mut out = std::mem::take(&mut core.inflated);
        let max = core.limits.max_message;
        let inflated = if core.conns[key].wire & wire::CLIENT_CONTEXT != 0 {
            let own = core.inflate_contexts.entry(key).or_default();
            own.inflate(payload, &mut out, max, false)
        } else {
            let shared = core.inflater.get_or_insert_with(Box::default);
            shared.inflate(payload, &mut out, max, true)
        };
        core.tally.inflate_bytes_in_total += payload.len() as u64;
        core.tally.inflate_bytes_out_total += out.len() as u64;
        match inflated {
            Err(v) => self.core.fail(key, v.code, v.reason),
            Ok(()) if opcode == OP_TEXT && std::str::from_utf8(&out).is_err() => {
                self.core
                    .fail(key, INVALID_PAYLOAD, "text message is not valid UTF-8")
            }
            Ok(()) => self.on_message(key, opcode, &out),
        }
        if out.capacity() > SCRATCH {
            out = Vec::new(); // one large message does not keep its memory
        }
        self.core.inflated = out;
    }

    fn on_message(&mut self, key: Key, opcode: u8, payload: &[u8]) {
        self.core.tally.messages_in_total += 1;
        self.handler
            .on_message(&mut self.core, key, opcode, payload);
    }
}

/// How much room to make in a lent buffer before reading: enough for the frame in progress, but never more than
/// the buffer already holds (at least one pool block). A large frame is then read in few syscalls (the buffer
/// doubles), while a client announcing a huge frame gets room in proportion to what it actually sent — what it
/// holds counts against `server.max_buffered_bytes`.
fn read_size(state: State, buf: &[u8]) -> usize {
    let block = pool::block_size();
    if matches!(state, State::Open | State::Closing) {
        if let Some(total) = Decoder::frame_len(buf) {
            let missing = (total as usize).saturating_sub(buf.len());
            return missing.clamp(block, buf.len().max(block));
        }
    }
    block
}
