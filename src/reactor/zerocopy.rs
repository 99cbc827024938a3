//! Zero-copy sends of large frames (`ws.zerocopy_threshold`). A plaintext connection that is queued a frame of at
//! least the threshold is marked [`flag::ZEROCOPY`] for the rest of its life: its writes go through its ledger
//! ([`Pinned`]), and a write that carries a large frame lends the kernel the frame's pages instead of copying them
//! — `sendmsg(MSG_ZEROCOPY)` on epoll (notifications on the socket's error queue, read on EPOLLERR), a
//! `SENDMSG_ZC` op in the write batch on io_uring (notifications from the ring). Frames stay in the ledger, and
//! count against the connection's outbound limit, until the kernel says it has let go of them.
//!
//! A connection freed while the kernel still holds its pages is parked instead: its slot and socket stay (no
//! input, no output, no subscriptions) until the notifications arrive. After [`super::teardown::CLOSE_GRACE`]
//! seconds the socket is reset, which makes the kernel drop what it has not sent and notify. TLS connections never
//! take this path (rustls encrypts into its own buffer, which is copied anyway).

use super::conn::{flag, NO_TLS};
use super::core::Core;
use super::handler::Key;
use super::sys::{net, Notification, ZeroCopy};
use crate::pool::{OutFrame, OutQueue, Pinned};
use std::collections::HashMap;

/// Connection keys carried in a zero-copy cookie (with the send's number) are below this.
const COOKIE_KEYS: usize = 1 << 20;
/// Ledgers kept for reuse by later connections.
const SPARE_LEDGERS: usize = 1024;
/// Seconds a parked connection whose socket was reset may wait for an error-queue notification before its frames
/// are abandoned (never freed) and its socket closed.
const ABANDON_AFTER: u32 = 10;

pub(super) struct ZeroCopySends {
    /// Frames at least this long are sent zero-copy (`usize::MAX`: never).
    pub threshold: usize,
    pub kind: Option<ZeroCopy>,
    ledgers: HashMap<Key, Pinned>,
    spare: Vec<Pinned>,
    /// Freed connections waiting for their notifications: key, reactor second of the deadline, socket reset.
    parked: Vec<(Key, u32, bool)>,
    notes: Vec<Notification>,
    /// Bytes of frames the kernel may still read, over all connections.
    pub pinned_bytes: usize,
    pub sends_total: u64,
}

impl ZeroCopySends {
    pub fn new(threshold: usize, kind: Option<ZeroCopy>) -> Self {
        ZeroCopySends {
            threshold: if threshold == 0 || kind.is_none() {
                usize::MAX
            } else {
                threshold
            },
            kind,
            ledgers: HashMap::new(),
            spare: Vec::new(),
            parked: Vec::new(),
            notes: Vec::new(),
            pinned_bytes: 0,
            sends_total: 0,
        }
    }

    /// Bytes the kernel may still read of connection `key`'s frames.
    pub fn bytes_of(&self, key: Key) -> usize {
        self.ledgers.get(&key).map_or(0, Pinned::bytes)
    }

    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    fn ledger(&mut self, key: Key, fd: std::os::fd::RawFd) -> &mut Pinned {
        let ZeroCopySends {
            ledgers,
            spare,
            kind,
            ..
        } = self;
        ledgers.entry(key).or_insert_with(|| {
            let mut pinned = spare.pop().unwrap_or_default();
            if *kind == Some(ZeroCopy::Socket) && net::enable_zerocopy(fd).is_err() {
                pinned.copied = true; // the socket refuses: plain writes
            }
            pinned
        })
    }

    /// Leaks the frames the kernel may still read (a reactor that stops with sends in flight: the process is
    /// ending, and freed pages could be reused while the kernel sends them).
    pub fn abandon(&mut self) {
        for (_, pinned) in self.ledgers.drain() {
            if pinned.in_flight() {
                std::mem::forget(pinned);
            }
        }
    }
}

/// Moves `written` bytes out of `out`, keeping in `pinned` the frames the kernel may still read; `seq` is the
/// zero-copy send that wrote them, if it was one. Returns the bytes added to the ledger.
fn consume(out: &mut OutQueue, pinned: &mut Pinned, written: usize, seq: Option<u32>) -> usize {
    let before = pinned.bytes();
    out.consume_with(written, |frame: OutFrame| pinned.left_queue(frame, seq));
    if let (Some(seq), true) = (seq, out.mid_frame()) {
        pinned.head_written(seq);
    }
    pinned.bytes() - before
}

impl<A> Core<A> {
    /// The connection's flush (see `flush`) when it takes zero-copy sends: writev for small frames, one
    /// `sendmsg(MSG_ZEROCOPY)` for a write that carries a large one (epoll; on io_uring the write batch sends those,
    /// and this writes without zero-copy).
    pub(super) fn flush_zerocopy(&mut self, key: Key) {
        let mut lend = self.zc.kind == Some(ZeroCopy::Socket);
        loop {
            let conn = &mut self.conns[key];
            if conn.out.is_empty() {
                return self.drained(key);
            }
            self.iov.clear();
            let offered = conn.out.fill_iov(&mut self.iov);
            let fd = conn.fd;
            let copied = self.zc.ledger(key, fd).copied;
            let zerocopy =
                lend && !copied && self.iov.iter().any(|v| v.iov_len >= self.zc.threshold);
            let sent = if zerocopy {
                // SAFETY: the iovecs point into frames of this connection's queue; every frame a send touches
                // moves into the connection's ledger (`consume`), which keeps it until the kernel's notification
                // for this send says its pages are released — the kernel reads them until then.
                unsafe { net::send_zerocopy(fd, &self.iov) }
            } else {
                net::writev(fd, &self.iov)
            };
            match sent {
                Ok(n) => {
                    let conn = &mut self.conns[key];
                    let Some(pinned) = self.zc.ledgers.get_mut(&key) else {
                        return self.doom(key); // made above: not reached
                    };
                    let seq = zerocopy.then(|| pinned.next_send());
                    self.zc.pinned_bytes += consume(&mut conn.out, pinned, n, seq);
                    self.zc.sends_total += zerocopy as u64;
                    self.tally.bytes_out_total += n as u64;
                    if n < offered {
                        conn.flags |= flag::BLOCKED;
                        return;
                    }
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        self.conns[key].flags |= flag::BLOCKED;
                        return;
                    }
                    Some(libc::EINTR) => {}
                    // The kernel's budget for notifications (optmem) is spent: copy this time.
                    Some(libc::ENOBUFS) if zerocopy => lend = false,
                    _ => return self.doom(key),
                },
            }
        }
    }

    /// Whether connection `key` (marked [`flag::ZEROCOPY`]) still lends its pages: not once its kernel reported
    /// copying them anyway.
    pub(super) fn zerocopy_live(&self, key: Key) -> bool {
        self.zc.ledgers.get(&key).is_none_or(|p| !p.copied)
    }

    /// For a batch write of connection `key` (iovecs `iov`): the cookie and send number of a zero-copy send, if
    /// this write should be one.
    pub(super) fn zerocopy_cookie(&mut self, key: Key, iov: &[libc::iovec]) -> Option<(u64, u32)> {
        if self.zc.kind != Some(ZeroCopy::Ring) || key >= COOKIE_KEYS {
            return None;
        }
        let fd = self.conns[key].fd;
        let pinned = self.zc.ledger(key, fd);
        let copied = pinned.copied;
        if copied || !iov.iter().any(|v| v.iov_len >= self.zc.threshold) {
            return None;
        }
        let seq = self.zc.ledgers.get_mut(&key)?.next_send();
        self.zc.sends_total += 1;
        Some(((key as u64) << 32 | seq as u64, seq))
    }

    /// A batch write of a zero-copy connection took `written` bytes (`seq`: it was zero-copy send `seq`).
    pub(super) fn wrote_pinned(&mut self, key: Key, written: usize, seq: Option<u32>) {
        let fd = self.conns[key].fd;
        let pinned = self.zc.ledger(key, fd);
        let added = consume(&mut self.conns[key].out, pinned, written, seq);
        self.zc.pinned_bytes += added;
    }

    /// EPOLLERR on a zero-copy connection: reads its notifications. True if the socket has a real error too.
    pub(super) fn read_error_queue(&mut self, key: Key) -> bool {
        let fd = self.conns[key].fd;
        let Some(pinned) = self.zc.ledgers.get_mut(&key) else {
            return true;
        };
        let mut released = 0;
        let only_notifications = net::zerocopy_notifications(fd, |from, to, copied| {
            released += pinned.notified(from, to);
            pinned.copied |= copied;
        });
        self.zc.pinned_bytes -= released;
        !only_notifications || net::socket_error(fd) != 0
    }

    /// Applies the backend's notifications (io_uring), then frees the parked connections that got all of theirs
    /// and resets the sockets of those past their deadline. Runs at the reap.
    pub(super) fn settle_zerocopy(&mut self, notes: impl FnOnce(&mut Vec<Notification>)) {
        let mut taken = std::mem::take(&mut self.zc.notes);
        notes(&mut taken);
        for n in taken.drain(..) {
            let (key, seq) = ((n.cookie >> 32) as Key, n.cookie as u32);
            if let Some(pinned) = self.zc.ledgers.get_mut(&key) {
                self.zc.pinned_bytes -= pinned.notified(seq, seq);
                pinned.copied |= n.copied;
            }
        }
        self.zc.notes = taken;
        if self.zc.parked.is_empty() {
            return;
        }
        let mut parked = std::mem::take(&mut self.zc.parked);
        parked.retain_mut(|(key, deadline, reset)| {
            let key = *key;
            if self.now >= *deadline && self.zc.kind == Some(ZeroCopy::Socket) {
                // EPOLLERR brings the notifications; past the deadline the queue is read once more anyway.
                self.read_error_queue(key);
            }
            let in_flight = self.zc.ledgers.get(&key).is_some_and(Pinned::in_flight);
            if !in_flight {
                self.free(key);
                return false;
            }
            if self.now >= *deadline && !*reset {
                net::abort_keep_open(self.conns[key].fd);
                *reset = true;
                *deadline = self.now + ABANDON_AFTER;
            } else if self.now >= *deadline && self.zc.kind == Some(ZeroCopy::Socket) {
                // The error queue may have gone with the reset; the frames stay allocated for good rather than
                // risk the kernel reading reused memory, and the socket closes (io_uring always notifies).
                log::warn!(
                    "reactor {}: zero-copy notifications missing {ABANDON_AFTER} s after a reset; abandoning {} bytes",
                    self.id,
                    self.zc.bytes_of(key)
                );
                if let Some(pinned) = self.zc.ledgers.remove(&key) {
                    self.zc.pinned_bytes -= pinned.bytes();
                    std::mem::forget(pinned);
                }
                self.free(key);
                return false;
            }
            true
        });
        parked.append(&mut self.zc.parked);
        self.zc.parked = parked;
    }

    /// Keeps a freed connection whose pages the kernel may still read until the notifications arrive. Returns
    /// false if nothing is in flight (free it now).
    pub(super) fn park(&mut self, key: Key) -> bool {
        let conn = &mut self.conns[key];
        debug_assert_eq!(conn.tls, NO_TLS);
        let Some(pinned) = self.zc.ledgers.get_mut(&key) else {
            return false;
        };
        if pinned.holds_head() {
            if let Some(head) = conn.out.take_front() {
                self.zc.pinned_bytes += head.len();
                pinned.left_queue(head, None);
            }
        }
        conn.out.clear();
        if !pinned.in_flight() {
            return false;
        }
        let deadline = self.now + super::teardown::CLOSE_GRACE;
        self.zc.parked.push((key, deadline, false));
        true
    }

    /// The connection is gone: its ledger (empty by now) is kept for another one.
    pub(super) fn recycle_ledger(&mut self, key: Key) {
        if let Some(mut pinned) = self.zc.ledgers.remove(&key) {
            self.zc.pinned_bytes -= pinned.bytes();
            pinned.reset();
            if self.zc.spare.len() < SPARE_LEDGERS {
                self.zc.spare.push(pinned);
            }
        }
    }
}
