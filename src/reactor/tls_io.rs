//! The reactor's TLS path. A TLS connection is an ordinary [`Conn`](super::conn::Conn) plus an entry
//! in the reactor's TLS slab:
//!
//! - in: ciphertext is read into the same scratch / lent buffer as plaintext connections (a partial record stays
//!   in `Conn::rbuf`), rustls decrypts it, and the plaintext goes through the usual `process_input` (a partial
//!   frame stays in [`TlsConn::plain`]);
//! - out: frames stay shared references in the `OutQueue` until the flush, which encrypts them straight from the
//!   shared frame into a reactor-wide scratch buffer (the encryption is the one per-connection copy) and writes
//!   it. Only what the socket does not take is copied into a pooled buffer ([`TlsConn::pending`]).
//!
//! An idle TLS connection therefore holds its rustls connection state and no buffer.

use super::conn::{flag, State, NO_TLS};
use super::core::Core;
use super::handler::{Handler, Key};
use super::sys::{net, Poller};
use super::Reactor;
use crate::pool::{BufId, NEVER, NO_BUF};
use crate::tls::{TlsAcceptor, TlsConnection, TlsError, RECORD_OVERHEAD};
use std::io;

/// Plaintext encrypted per record: the TLS maximum.
const PIECE: usize = 16 * 1024;
/// Frames shorter than this are gathered into one record when several are queued: a record costs rustls an
/// allocation, a header and a tag, which for small frames outweighs copying them once more.
const COALESCE_BELOW: usize = 1024;
/// Encrypted bytes prepared per write: four full records.
const OUT_SCRATCH: usize = 4 * (PIECE + RECORD_OVERHEAD);
/// Ciphertext a peer may leave unprocessed (a handshake message rustls is still assembling, up to 64 KiB, plus a
/// record); more is an attack on memory.
const MAX_CIPHERTEXT_BACKLOG: usize = 64 * 1024 + 2 * PIECE;

/// One connection's TLS state.
pub(super) struct TlsConn {
    connection: TlsConnection,
    /// Plaintext holding a partial WebSocket frame or request head, or NO_BUF.
    plain: BufId,
    /// Ciphertext the socket has not taken yet, or NO_BUF; `pending_off` bytes of it are already written.
    pending: BufId,
    pending_off: u32,
    /// The connection failed: send nothing more on it (rustls queued the alert already).
    failed: bool,
}

/// The reactor's TLS connections and scratch buffers.
pub(super) struct TlsIo {
    conns: slab::Slab<Box<TlsConn>>,
    /// Encryption target, allocated and zeroed once (rustls writes into initialised memory).
    out: Vec<u8>,
    /// Decrypted bytes of one read, when the connection holds no partial frame.
    plain: Vec<u8>,
    /// Handshake, ticket and alert records rustls asks to send while reading.
    control: Vec<u8>,
    /// Small frames gathered into one record.
    stage: Vec<u8>,
}

impl TlsIo {
    pub fn new(enabled: bool) -> Self {
        TlsIo {
            conns: slab::Slab::new(),
            out: if enabled {
                vec![0; OUT_SCRATCH]
            } else {
                Vec::new()
            },
            plain: Vec::new(),
            control: Vec::new(),
            stage: Vec::new(),
        }
    }

    /// TLS connections held (handshaking or open).
    pub fn sessions(&self) -> usize {
        self.conns.len()
    }
}

/// What a flush step left to do once its borrows end.
enum Next {
    Again,
    Stop,
    /// The queue and the pending ciphertext are written.
    Drained,
    Close,
    Fail(TlsError),
}

impl<A> Core<A> {
    /// Gives a just-accepted connection on the TLS listener its TLS state. False if that failed (doom it).
    pub(super) fn tls_attach(&mut self, key: Key, acceptor: &TlsAcceptor) -> bool {
        match acceptor.connection() {
            Ok(connection) => {
                let id = self.tls.conns.insert(Box::new(TlsConn {
                    connection,
                    plain: NO_BUF,
                    pending: NO_BUF,
                    pending_off: 0,
                    failed: false,
                }));
                self.conns[key].tls = id as u32;
                true
            }
            Err(e) => {
                log::error!("reactor {}: TLS connection: {e}", self.id);
                false
            }
        }
    }

    /// True while the connection's TLS handshake is not complete (for the handshake timer).
    pub(super) fn tls_handshaking(&self, key: Key) -> bool {
        let id = self.conns[key].tls;
        id != NO_TLS && self.tls.conns[id as usize].connection.is_handshaking()
    }

    /// True if encrypted bytes still wait for the socket.
    pub(super) fn tls_pending(&self, key: Key) -> bool {
        let id = self.conns[key].tls;
        id != NO_TLS && self.tls.conns[id as usize].pending != NO_BUF
    }

    /// Keeps the undecoded rest of the plaintext on the connection (unless it takes no more input), else
    /// recycles it.
    fn put_plain(&mut self, key: Key, id: BufId, mut buf: Vec<u8>, consumed: usize) {
        let consumed = consumed.min(buf.len());
        let conn = &self.conns[key];
        let t = conn.tls as usize;
        let keep =
            consumed < buf.len() && !conn.has(flag::DOOMED) && conn.state != State::Lingering;
        if id != NO_BUF {
            buf.drain(..consumed);
            self.bufs.put(id, buf);
            if !keep {
                self.bufs.give_back(id);
                self.tls.conns[t].plain = NO_BUF;
            } else if consumed > 0 {
                self.bufs.touch(id, self.now);
            }
        } else {
            if keep {
                let lent = self.bufs.lend(key as u32, self.now);
                self.bufs.append(lent, &buf[consumed..]);
                self.tls.conns[t].plain = lent;
            }
            buf.clear();
            self.tls.plain = buf;
        }
    }

    /// Sends ciphertext after anything still pending; what the socket does not take waits for EPOLLOUT.
    fn tls_send(&mut self, key: Key, bytes: &[u8]) {
        let conn = &mut self.conns[key];
        let t = &mut self.tls.conns[conn.tls as usize];
        if t.pending != NO_BUF {
            self.bufs.append(t.pending, bytes);
            return;
        }
        let written = match net::write_some(conn.fd, bytes) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => return self.doom(key),
        };
        self.tally.bytes_out_total += written as u64;
        if written < bytes.len() {
            let lent = self.bufs.lend(key as u32, NEVER);
            self.bufs.append(lent, &bytes[written..]);
            t.pending = lent;
            t.pending_off = 0;
            conn.flags |= flag::BLOCKED;
        }
    }

    /// Writes what is pending, then encrypts and writes queued frames until the queue is empty or the socket is
    /// full.
    pub(super) fn tls_flush(&mut self, key: Key) {
        loop {
            match self.tls_flush_step(key) {
                Next::Again => continue,
                Next::Stop => return,
                Next::Drained => return self.drained(key),
                Next::Close => return self.doom(key),
                Next::Fail(e) => {
                    log::debug!("reactor {}: TLS write failed: {e}", self.id);
                    let id = self.conns[key].tls as usize;
                    self.tls.conns[id].failed = true;
                    self.tally.tls_failures_total += 1;
                    return self.doom(key);
                }
            }
        }
    }

    fn tls_flush_step(&mut self, key: usize) -> Next {
        let conn = &mut self.conns[key];
        let t = &mut self.tls.conns[conn.tls as usize];

        if t.pending != NO_BUF {
            let pending = self.bufs.bytes(t.pending);
            let rest = &pending[t.pending_off as usize..];
            let written = match net::write_some(conn.fd, rest) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => return Next::Close,
            };
            self.tally.bytes_out_total += written as u64;
            if written < rest.len() {
                t.pending_off += written as u32;
                conn.flags |= flag::BLOCKED;
                return Next::Stop;
            }
            self.bufs
                .give_back(std::mem::replace(&mut t.pending, NO_BUF));
            t.pending_off = 0;
        }

        if conn.out.is_empty() {
            return Next::Drained;
        }
        if t.connection.is_handshaking() {
            return Next::Stop; // nothing may be encrypted yet; the handshake's progress flushes again
        }

        let out = &mut self.tls.out;
        let stage = &mut self.tls.stage;
        let mut used = 0;
        while let Some(bytes) = conn.out.front_unsent() {
            if used + PIECE + RECORD_OVERHEAD > out.len() {
                break;
            }
            let result = if bytes.len() < COALESCE_BELOW && conn.out.frame_count() > 1 {
                // A burst of small frames: one record for as many as fit.
                stage.clear();
                while let Some(b) = conn.out.front_unsent() {
                    if b.len() >= COALESCE_BELOW || stage.len() + b.len() > PIECE {
                        break;
                    }
                    stage.extend_from_slice(b);
                    let n = b.len();
                    conn.out.consume(n);
                }
                t.connection.encrypt(stage, &mut out[used..])
            } else {
                // Straight from the shared frame: encryption is the only copy.
                let piece = bytes.len().min(PIECE);
                let r = t.connection.encrypt(&bytes[..piece], &mut out[used..]);
                conn.out.consume(piece);
                r
            };
            match result {
                Ok(n) => used += n,
                Err(e) => return Next::Fail(e),
            }
        }

        let written = match net::write_some(conn.fd, &out[..used]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => return Next::Close,
        };
        self.tally.bytes_out_total += written as u64;
        if written < used {
            let lent = self.bufs.lend(key as u32, NEVER);
            self.bufs.append(lent, &out[written..used]);
            t.pending = lent;
            t.pending_off = 0;
            conn.flags |= flag::BLOCKED;
            return Next::Stop;
        }
        Next::Again
    }

    /// Best effort, bypassing the queue: encrypts `data` (and a close_notify if asked) and writes it once. For
    /// HTTP refusals and slow-consumer closes right before the socket is shut or closed.
    pub(super) fn tls_write_now(&mut self, key: usize, data: &[u8], close_notify: bool) {
        let conn = &self.conns[key];
        let t = &mut self.tls.conns[conn.tls as usize];
        if t.failed || t.pending != NO_BUF || t.connection.is_handshaking() {
            return;
        }
        let out = &mut self.tls.out;
        let mut used = 0;
        for piece in data.chunks(PIECE) {
            if used + piece.len() + 2 * RECORD_OVERHEAD > out.len() {
                break;
            }
            match t.connection.encrypt(piece, &mut out[used..]) {
                Ok(n) => used += n,
                Err(_) => return,
            }
        }
        if close_notify {
            used += t.connection.close_notify(&mut out[used..]);
        }
        let _ = net::write_some(conn.fd, &out[..used]);
    }

    /// Gives back the plaintext of a partial frame of a connection that reads nothing any more.
    pub(super) fn tls_release_input(&mut self, key: Key) {
        let t = &mut self.tls.conns[self.conns[key].tls as usize];
        let plain = std::mem::replace(&mut t.plain, NO_BUF);
        self.bufs.give_back(plain);
    }

    /// Frees a closing connection's TLS state, with a close_notify if the stream is at a record boundary.
    pub(super) fn tls_release(&mut self, id: u32, fd: std::os::fd::RawFd, state: State) {
        let Some(mut t) = self.tls.conns.try_remove(id as usize) else {
            return;
        };
        if !t.failed
            && t.pending == NO_BUF
            && !t.connection.is_handshaking()
            && state != State::Lingering
        {
            let n = t.connection.close_notify(&mut self.tls.out);
            let _ = net::write_some(fd, &self.tls.out[..n]);
        }
        self.bufs.give_back(t.plain);
        self.bufs.give_back(t.pending);
    }
}

impl<P: Poller, H: Handler> Reactor<P, H> {
    /// Decrypts the ciphertext in `buf` and decodes the plaintext; returns the ciphertext bytes consumed.
    pub(super) fn tls_input(&mut self, key: Key, buf: &mut [u8]) -> usize {
        let core = &mut self.core;
        let id = core.conns[key].tls as usize;
        let t = &mut core.tls.conns[id];
        // The partial frame's buffer stays lent to the connection (nothing frees it before the reap); its bytes
        // are moved out only while the reactor decodes them.
        let plain_id = t.plain;
        let mut plain = if plain_id != NO_BUF {
            core.bufs.take(plain_id)
        } else {
            std::mem::take(&mut core.tls.plain)
        };
        let mut control = std::mem::take(&mut core.tls.control);
        control.clear();

        let t = &mut core.tls.conns[id];
        let was_handshaking = t.connection.is_handshaking();
        let outcome = t.connection.read(buf, &mut plain, &mut control);
        if outcome.error.is_some() {
            t.failed = true;
        } else if was_handshaking && !t.connection.is_handshaking() {
            core.tally.tls_handshakes_total += 1;
        }
        if !control.is_empty() {
            core.tls_send(key, &control);
        }
        core.tls.control = control;

        let backlog = buf.len() - outcome.consumed.min(buf.len());
        let failure = match outcome.error {
            Some(e) => Some(e.to_string()),
            None if backlog > MAX_CIPHERTEXT_BACKLOG => {
                Some(format!("{backlog} bytes of incomplete TLS records"))
            }
            None => None,
        };
        if let Some(reason) = failure {
            core.tally.tls_failures_total += 1;
            log::debug!("reactor {}: TLS connection closed: {reason}", core.id);
            core.put_plain(key, plain_id, plain, usize::MAX);
            core.doom(key);
            return buf.len();
        }

        let used = if plain.is_empty() {
            0
        } else {
            self.process_input(key, &mut plain)
        };
        self.core.put_plain(key, plain_id, plain, used);
        if outcome.peer_closed {
            // close_notify: the TLS equivalent of EOF.
            self.core.doom(key);
            return buf.len();
        }
        outcome.consumed
    }
}
