//! The io_uring backend: one ring per reactor. Readiness comes from edge-triggered multishot polls (one SQE per
//! socket for its whole life, like the epoll registration), and the writes of a flush pass go to the kernel
//! together: one `io_uring_enter` submits a writev per dirty connection instead of one writev system call each.
//! Listeners accept ahead of the reactor with one multishot accept each (see [`Listener`]); connections receive
//! with one multishot receive each into the reactor's provided-buffer ring (see [`Recv`]).
//!
//! The sockets are non-blocking, so a write the socket cannot take completes at once with EAGAIN instead of
//! waiting in the kernel; every write of a batch has therefore completed when `write_batch` returns, and the
//! queued frames it points into are not touched until then.

use super::buf_ring::BufRing;
use super::{net, Notification, Poller, Ready, Received, WriteOp, ZeroCopy};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

/// Submission queue slots: the largest write batch, and the polls and cancels added between two waits before
/// the queue is submitted early.
const SQ_ENTRIES: u32 = 1024;
/// Tags a write's user data (a poll's user data is `fd << 32 | token`, with `fd` below 2^29: descriptors are
/// bounded by RLIMIT_NOFILE, far lower).
const WRITE_TAG: u64 = 1 << 63;
/// Tags the completion of a cancel (of a closed socket's or listener's poll), which reports nothing.
const CANCEL_TAG: u64 = 1 << 62;
/// Tags a zero-copy write (with `WRITE_TAG`): its user data also carries the reactor's cookie above the slot.
const ZC_TAG: u64 = 1 << 61;
/// Tags a multishot accept's completions (a pair no write, poll or cancel uses: write cookies stay below bit 61);
/// the low bits are the listener's index in `Uring::listeners`.
const ACCEPT_TAG: u64 = WRITE_TAG | CANCEL_TAG;
/// Tags a connection's multishot receive (without `WRITE_TAG`): its user data is `RECV_TAG | gen << 32 | token`
/// (`gen`: see [`Recv`]).
const RECV_TAG: u64 = ZC_TAG;
/// Bits of a receive's generation in its user data (between the token and `RECV_TAG`).
const GEN_MASK: u32 = (1 << 29) - 1;
/// The buffer group of the reactor's provided-buffer ring.
const BUF_GROUP: u16 = 0;
/// A write's slot in its batch (`MAX_BATCH` is 512) is in the low bits of its user data.
const SLOT_BITS: u32 = 9;
/// `IORING_SEND_ZC_REPORT_USAGE` (ioprio of a zero-copy send) and `IORING_NOTIF_USAGE_ZC_COPIED` (result of its
/// notification): the kernel says whether it copied after all.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;
/// Tokens above this map to the top of the u64 range (the reactor's listener and waker tokens).
const SPECIAL_TOKENS: u32 = u32::MAX - 64;

pub struct Uring {
    ring: IoUring,
    /// Readiness that arrived while a write batch was being completed; reported by the next wait.
    backlog: Vec<Ready>,
    /// The headers of a batch's zero-copy sends (`SENDMSG_ZC` points to them until it completes).
    msgs: Vec<libc::msghdr>,
    /// Zero-copy notifications not yet taken by the reactor.
    notifications: Vec<Notification>,
    /// The kernel offers `SENDMSG_ZC`.
    sendmsg_zc: bool,
    listeners: Vec<Listener>,
    /// Each connection's receive, by token (empty without a buffer ring).
    recvs: Vec<Recv>,
    /// Declared after `ring`: dropped after it, so the kernel never uses freed buffers.
    bufs: Option<BufRing>,
    /// The user data of polls cancelled since the last wait. A poll the kernel ended on its own just before its
    /// cancel must not be armed again: its descriptor is closed, and its number may already be another socket's.
    forgotten: Vec<u64>,
}

/// A connection's multishot receive. While `Armed`, the connection's input arrives only as receive completions
/// (its poll watches output only, and a readable poll report is not passed on), so the reactor never reads the
/// socket at the same time. The kernel ends the receive when no buffer is free (ENOBUFS) or for its own reasons:
/// the connection is then `Reading`, reported readable once after the input received before, and the reactor
/// reads with read(2) until EAGAIN, then arms the receive again ([`Poller::drained`]) — so a shortage of
/// buffers never stalls a connection nor loses or reorders its bytes. EOF and errors end it for good (the
/// reactor closes the connection). `gen` counts the registrations of the token: completions of a receive whose
/// connection was closed carry an older one and are dropped, their buffers recycled.
#[derive(Debug, Clone, Copy, Default)]
struct Recv {
    gen: u32,
    state: RecvState,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum RecvState {
    /// Not a receiving connection: readiness as epoll's, the reactor reads.
    #[default]
    Off,
    Armed,
    /// The receive ended; the reactor reads until EAGAIN.
    Reading,
    /// EOF or an error: the connection is closing.
    Ended,
}

/// A listening socket with its multishot accept. The kernel accepts while connections arrive and completes with
/// each new socket, which waits here for the reactor's [`Poller::accept`]. A multishot accept carries no peer
/// address (one address buffer would be overwritten by every accept), so the peer's IP address comes from a
/// `getpeername` per socket: the same address `accept4` reports, for the per-source limits.
///
/// An accept that fails (EMFILE, ENFILE, ENOMEM...) ends the multishot: the error goes to the reactor like
/// `accept4`'s (it pauses accepting), and while unarmed the listener is accepted from with `accept4` until its
/// backlog is empty, then armed again. So a descriptor shortage never turns into a loop of failing accepts.
struct Listener {
    fd: RawFd,
    token: u64,
    /// A multishot accept is in the kernel.
    armed: bool,
    /// Closed (at shutdown): its late completions' sockets are closed.
    removed: bool,
    accepted: VecDeque<RawFd>,
    /// An accept error not yet reported to the reactor (a negated errno).
    error: Option<i32>,
}

impl Uring {
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        if self.ring.submission().is_full() {
            self.ring.submit()?;
        }
        // SAFETY: the entries pushed here (polls, cancels) reference no memory; writes are pushed only by
        // `write_batch`, which keeps their iovecs alive until they complete.
        unsafe { self.ring.submission().push(entry) }
            .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))
    }

    fn arm(&mut self, index: usize) -> io::Result<()> {
        let l = &mut self.listeners[index];
        l.armed = true;
        let entry = opcode::AcceptMulti::new(types::Fd(l.fd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(ACCEPT_TAG | index as u64);
        self.push(&entry)
    }

    fn arm_recv(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        let Some(bufs) = &self.bufs else {
            return Ok(());
        };
        let r = &mut self.recvs[token as usize];
        let entry = opcode::RecvMulti::new(types::Fd(fd), bufs.group)
            .build()
            .user_data(recv_data(token, r.gen));
        self.push(&entry)?;
        self.recvs[token as usize].state = RecvState::Armed;
        Ok(())
    }
}

/// Files a receive completion: its input (or the end of the receive) into `out`.
fn on_received(
    recvs: &mut [Recv],
    bufs: &mut Option<BufRing>,
    out: &mut Vec<Ready>,
    data: u64,
    res: i32,
    flags: u32,
) {
    let token = data as u32 as u64;
    let gen = (data >> 32) as u32 & GEN_MASK;
    let buffer = cqueue::buffer_select(flags);
    let live = recvs
        .get(token as usize)
        .is_some_and(|r| r.gen & GEN_MASK == gen && r.state != RecvState::Off);
    if !live {
        // The connection was forgotten: its input goes nowhere, its buffer back to the ring.
        if let (Some(id), Some(bufs)) = (buffer, bufs) {
            let buf = bufs.take(id);
            bufs.recycle(id, buf);
        }
        return;
    }
    let report = |received, readable, error| Ready {
        token,
        readable,
        writable: false,
        error,
        received,
    };
    if res > 0 {
        if let Some(id) = buffer {
            let len = res as u32;
            out.push(report(Some(Received { id, len }), false, false));
        }
    }
    if cqueue::more(flags) {
        return;
    }
    let state = &mut recvs[token as usize].state;
    if res > 0 || res == -libc::ENOBUFS {
        // Ended with input still coming (no buffer free, or the kernel's own reasons): the reactor reads.
        *state = RecvState::Reading;
        out.push(report(None, true, false));
    } else if res != -libc::ECANCELED {
        // EOF or an error: the connection ends like on a read that returned them.
        *state = RecvState::Ended;
        out.push(report(None, false, true));
    }
}

impl Uring {
    /// Moves completions out of the ring: readiness into `out`, write results into `results`.
    fn reap(&mut self, out: &mut Vec<Ready>, results: &mut [i32]) -> io::Result<usize> {
        let mut writes = 0;
        let mut rearm = Vec::new();
        for cqe in self.ring.completion() {
            let data = cqe.user_data();
            if data & (WRITE_TAG | CANCEL_TAG | RECV_TAG) == RECV_TAG {
                let (res, flags) = (cqe.result(), cqe.flags());
                on_received(&mut self.recvs, &mut self.bufs, out, data, res, flags);
                continue;
            }
            if data & ACCEPT_TAG == ACCEPT_TAG {
                let index = (data & !ACCEPT_TAG) as usize;
                let more = cqueue::more(cqe.flags());
                if let Some(token) = on_accepted(&mut self.listeners, index, cqe.result(), more) {
                    out.push(Ready {
                        token,
                        readable: true,
                        writable: false,
                        error: false,
                        received: None,
                    });
                }
                continue;
            }
            if data & WRITE_TAG != 0 {
                let cookie = (data & !(WRITE_TAG | ZC_TAG)) >> SLOT_BITS;
                if cqueue::notif(cqe.flags()) {
                    self.notifications.push(Notification {
                        cookie,
                        copied: cqe.result() as u32 & NOTIF_USAGE_ZC_COPIED != 0,
                    });
                    continue;
                }
                if data & ZC_TAG != 0 && !cqueue::more(cqe.flags()) {
                    // No notification follows: the kernel holds no page of this send.
                    self.notifications.push(Notification {
                        cookie,
                        copied: false,
                    });
                }
                // Every write completes inside its own `write_batch`, so its slot is there.
                let slot = (data & ((1 << SLOT_BITS) - 1)) as usize;
                if let Some(slot) = results.get_mut(slot) {
                    *slot = cqe.result();
                    writes += 1;
                }
                continue;
            }
            let res = cqe.result();
            if data & CANCEL_TAG != 0 || res == -libc::ECANCELED {
                continue; // a socket's poll ends when its connection is reaped
            }
            if !cqueue::more(cqe.flags()) && res >= 0 {
                rearm.push(data); // a multishot poll the kernel ended early (CQ overflow): poll again
            }
            let bits = if res < 0 { libc::POLLERR as i32 } else { res };
            let token = token_of(data);
            // A receiving connection's input comes from its receive, not from reads of the reactor.
            let reads = recv_state(&self.recvs, token).is_none_or(|s| s == RecvState::Reading);
            out.push(Ready {
                token,
                readable: reads
                    && bits & (libc::POLLIN | libc::POLLRDHUP | libc::POLLHUP) as i32 != 0,
                writable: bits & libc::POLLOUT as i32 != 0,
                error: bits & libc::POLLERR as i32 != 0,
                received: None,
            });
        }
        for data in rearm {
            if self.forgotten.contains(&data) {
                continue;
            }
            let receiving = recv_state(&self.recvs, token_of(data)).is_some();
            self.push(&poll_entry((data >> 32) as RawFd, data, receiving))?;
        }
        Ok(writes)
    }
}

/// Files an accept completion with its listener; the listener's token if the reactor should hear of it (the first
/// socket waiting, an error, or the multishot's end).
fn on_accepted(listeners: &mut [Listener], index: usize, res: i32, more: bool) -> Option<u64> {
    let l = listeners.get_mut(index)?;
    if !more {
        l.armed = false;
    }
    if l.removed {
        if res >= 0 {
            net::close(res);
        }
        return None;
    }
    let tell = if res >= 0 {
        l.accepted.push_back(res);
        l.accepted.len() == 1 || !more
    } else {
        if res != -libc::ECANCELED {
            l.error = Some(res);
        }
        true
    };
    tell.then_some(l.token)
}

/// The state of `token`'s receive, if it is a receiving connection.
fn recv_state(recvs: &[Recv], token: u64) -> Option<RecvState> {
    let r = recvs.get(usize::try_from(token).ok()?)?;
    (r.state != RecvState::Off).then_some(r.state)
}

/// A socket's multishot poll; a `receiving` connection's watches output only (its receive takes the input).
fn poll_entry(fd: RawFd, data: u64, receiving: bool) -> squeue::Entry {
    let mask = if receiving {
        libc::POLLOUT as u32
    } else {
        (libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP) as u32
    };
    opcode::PollAdd::new(types::Fd(fd), mask)
        .multi(true)
        .build()
        .user_data(data)
}

fn poll_data(fd: RawFd, token: u64) -> u64 {
    let low = if token > u32::MAX as u64 {
        (u32::MAX as u64 - (u64::MAX - token)) as u32
    } else {
        token as u32
    };
    (fd as u32 as u64) << 32 | low as u64
}

fn recv_data(token: u64, gen: u32) -> u64 {
    RECV_TAG | ((gen & GEN_MASK) as u64) << 32 | token
}

fn token_of(data: u64) -> u64 {
    let low = data as u32;
    if low > SPECIAL_TOKENS {
        u64::MAX - (u32::MAX - low) as u64
    } else {
        low as u64
    }
}

fn is_interrupt(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::ETIME) | Some(libc::EBUSY)
    )
}

/// A ring as the backend sets it up (the start-up probe builds one the same way). Completions are plentiful
/// (every socket's poll may report while a write batch is completing); a single issuer and cooperative task
/// running suit a ring that only its reactor thread touches.
pub(super) fn ring(capacity: usize) -> io::Result<IoUring> {
    IoUring::builder()
        .setup_cqsize((capacity as u32 * 8).max(SQ_ENTRIES * 4))
        .setup_single_issuer()
        .setup_coop_taskrun()
        .build(SQ_ENTRIES)
}

impl Poller for Uring {
    fn new(capacity: usize) -> io::Result<Self> {
        let ring = ring(capacity)?;
        let mut probe = io_uring::Probe::new();
        let sendmsg_zc = ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(opcode::SendMsgZc::CODE);
        Ok(Uring {
            ring,
            backlog: Vec::with_capacity(capacity),
            msgs: Vec::with_capacity(super::MAX_BATCH),
            notifications: Vec::new(),
            sendmsg_zc,
            listeners: Vec::new(),
            recvs: Vec::new(),
            bufs: None,
            forgotten: Vec::new(),
        })
    }

    fn receive_buffers(&mut self, count: usize) -> io::Result<()> {
        if count > 0 {
            self.bufs = Some(BufRing::new(&self.ring.submitter(), count, BUF_GROUP)?);
        }
        Ok(())
    }

    fn add_receiving(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        if self.bufs.is_none() || token > SPECIAL_TOKENS as u64 {
            return self.add(fd, token);
        }
        let index = token as usize;
        if index >= self.recvs.len() {
            self.recvs.resize(index + 1, Recv::default());
        }
        let r = &mut self.recvs[index];
        r.gen = r.gen.wrapping_add(1);
        r.state = RecvState::Reading; // until armed below
        self.push(&poll_entry(fd, poll_data(fd, token), true))?;
        self.arm_recv(fd, token)
    }

    fn drained(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        if recv_state(&self.recvs, token) == Some(RecvState::Reading) {
            self.arm_recv(fd, token)?;
        }
        Ok(())
    }

    fn take_received(&mut self, r: Received) -> Box<[u8]> {
        self.bufs.as_mut().map(|b| b.take(r.id)).unwrap_or_default()
    }

    fn recycle(&mut self, r: Received, buf: Box<[u8]>) {
        if let Some(bufs) = &mut self.bufs {
            bufs.recycle(r.id, buf);
        }
    }

    fn add_listener(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        self.listeners.push(Listener {
            fd,
            token,
            armed: false,
            removed: false,
            accepted: VecDeque::new(),
            error: None,
        });
        self.arm(self.listeners.len() - 1)
    }

    fn accept(&mut self, fd: RawFd) -> io::Result<(RawFd, Option<IpAddr>)> {
        let Some(index) = self.listeners.iter().position(|l| l.fd == fd && !l.removed) else {
            return net::accept_peer(fd);
        };
        let l = &mut self.listeners[index];
        if let Some(sock) = l.accepted.pop_front() {
            // A peer gone before its address is read has nothing to be served: like accept4's ECONNABORTED.
            return net::adopt_accepted(sock)
                .map_err(|_| io::Error::from_raw_os_error(libc::ECONNABORTED));
        }
        if let Some(errno) = l.error.take() {
            return Err(io::Error::from_raw_os_error(-errno));
        }
        if l.armed {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        let accepted = net::accept_peer(fd);
        if matches!(&accepted, Err(e) if e.raw_os_error() == Some(libc::EAGAIN)) {
            self.arm(index)?;
        }
        accepted
    }

    fn zerocopy(&self) -> Option<ZeroCopy> {
        self.sendmsg_zc.then_some(ZeroCopy::Ring)
    }

    fn take_notifications(&mut self, out: &mut Vec<Notification>) {
        out.append(&mut self.notifications);
    }

    fn add(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        debug_assert!(token <= SPECIAL_TOKENS as u64 || token > u64::MAX - 64);
        self.push(&poll_entry(fd, poll_data(fd, token), false))
    }

    fn remove(&mut self, fd: RawFd) -> io::Result<()> {
        // Listeners only (at shutdown): cancelled by descriptor, which walks every pending request — fine once.
        for l in self
            .listeners
            .iter_mut()
            .filter(|l| l.fd == fd && !l.removed)
        {
            l.removed = true;
            l.accepted.drain(..).for_each(net::close);
        }
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(CANCEL_TAG);
        self.push(&cancel)?;
        self.ring.submit()?;
        Ok(())
    }

    fn forget(&mut self, socks: &[(RawFd, u64)]) -> io::Result<()> {
        if socks.is_empty() {
            return Ok(());
        }
        // A poll holds a reference to its socket: until it is cancelled, closing the descriptor would not close
        // the connection. Cancelled by user data (a hash lookup), submitted before the descriptors are closed and
        // before any new socket could be registered under the same descriptor and token.
        let mut receiving = false;
        for &(fd, token) in socks {
            self.forgotten.push(poll_data(fd, token));
            let cancel = opcode::AsyncCancel::new(poll_data(fd, token))
                .build()
                .user_data(CANCEL_TAG);
            self.push(&cancel)?;
            let Some(state) = recv_state(&self.recvs, token) else {
                continue;
            };
            receiving = true;
            let r = &mut self.recvs[token as usize];
            let data = recv_data(token, r.gen);
            // From now on its completions are dropped (the generation no longer matches once re-registered).
            r.state = RecvState::Off;
            if state == RecvState::Armed {
                let cancel = opcode::AsyncCancel::new(data).build().user_data(CANCEL_TAG);
                self.push(&cancel)?;
            }
        }
        if receiving {
            // Input reaped during a write batch and not yet reported: for these tokens, it goes nowhere.
            let (recvs, bufs) = (&self.recvs, &mut self.bufs);
            self.backlog
                .retain(|ev| match (ev.received, bufs.as_mut()) {
                    (Some(r), Some(bufs)) if recv_state(recvs, ev.token).is_none() => {
                        let buf = bufs.take(r.id);
                        bufs.recycle(r.id, buf);
                        false
                    }
                    _ => true,
                });
        }
        self.ring.submit()?;
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Ready>, timeout_ms: i32) -> io::Result<()> {
        out.clear();
        out.append(&mut self.backlog);
        let timeout_ms = if out.is_empty() { timeout_ms } else { 0 };
        let entered = if timeout_ms == 0 {
            self.ring.submit()
        } else if timeout_ms < 0 {
            self.ring.submit_and_wait(1)
        } else {
            let ts = types::Timespec::from(std::time::Duration::from_millis(timeout_ms as u64));
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        };
        match entered {
            Err(e) if !is_interrupt(&e) => return Err(e),
            _ => {}
        }
        self.reap(out, &mut [])?;
        // The cancels were submitted before this wait, so every completion of a cancelled poll has been reaped,
        // unless completions overflowed: some then wait in the kernel for room, and may still end a poll.
        if !self.ring.submission().cq_overflow() {
            self.forgotten.clear();
        }
        Ok(())
    }

    const BATCHES_WRITES: bool = true;

    fn write_batch(
        &mut self,
        ops: &[WriteOp],
        iov: &[libc::iovec],
        results: &mut Vec<i32>,
    ) -> io::Result<()> {
        results.clear();
        results.resize(ops.len(), -libc::EAGAIN);
        if ops.is_empty() {
            return Ok(());
        }
        // Room for the whole batch (callers pass at most `MAX_BATCH` writes).
        let free = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if free < ops.len() {
            self.ring.submit()?;
        }
        // Every header first: the entries point into `msgs`, which must not move afterwards.
        self.msgs.clear();
        for op in ops.iter().filter(|op| op.zerocopy.is_some()) {
            // SAFETY: a zeroed msghdr is valid (no address, no control data).
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov[op.iov.start..].as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = op.iov.len() as _;
            self.msgs.push(msg);
        }
        let mut zc = 0;
        for (i, op) in ops.iter().enumerate() {
            let vecs = &iov[op.iov.clone()];
            let entry = if let Some(cookie) = op.zerocopy {
                let msg: *const libc::msghdr = &self.msgs[zc];
                zc += 1;
                // MSG_DONTWAIT: a full socket completes with EAGAIN, as a writev with RWF_NOWAIT does.
                opcode::SendMsgZc::new(types::Fd(op.fd), msg)
                    .flags((libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32)
                    .ioprio(SEND_ZC_REPORT_USAGE)
                    .build()
                    .user_data(WRITE_TAG | ZC_TAG | cookie << SLOT_BITS | i as u64)
            } else {
                // RWF_NOWAIT: a socket that cannot take the bytes fails the write with EAGAIN, where io_uring
                // would otherwise wait for room (and `finish` with it).
                opcode::Writev::new(types::Fd(op.fd), vecs.as_ptr(), vecs.len() as u32)
                    .rw_flags(libc::RWF_NOWAIT)
                    .build()
                    .user_data(WRITE_TAG | i as u64)
            };
            // SAFETY: the iovecs and headers outlive this function, which returns only after every write of the
            // batch has completed. The frames they point into are owned by the callers' queues; for a zero-copy
            // send the kernel reads those pages until its notification, and the reactor keeps the frames in its
            // zero-copy ledger until that notification has been taken (`take_notifications`).
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                results[i..].fill(-libc::EBUSY);
                return self.finish(i, results);
            }
        }
        self.finish(ops.len(), results)
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        if let Some(bufs) = &self.bufs {
            // No receive picks a buffer any more; the ring itself is dropped before the buffers.
            let _ = self.ring.submitter().unregister_buf_ring(bufs.group);
        }
        for l in &mut self.listeners {
            l.accepted.drain(..).for_each(net::close);
        }
    }
}

impl Uring {
    /// Submits and waits until `count` write completions are in `results`. An error of the ring itself is
    /// returned to the reactor, which stops (dropping the ring before the queues its writes point into).
    fn finish(&mut self, count: usize, results: &mut [i32]) -> io::Result<()> {
        let mut done = 0;
        let mut backlog = std::mem::take(&mut self.backlog);
        let outcome = loop {
            if done >= count {
                break Ok(());
            }
            if let Err(e) = self.ring.submit_and_wait(count - done) {
                if !is_interrupt(&e) {
                    break Err(e);
                }
            }
            match self.reap(&mut backlog, results) {
                Ok(n) => done += n,
                Err(e) => break Err(e),
            }
        };
        self.backlog = backlog;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, IntoRawFd};

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (server, client)
    }

    fn skip() -> bool {
        super::super::probe::uring_support().is_err()
    }

    /// Waits up to a second for events of `token`.
    fn events_of(ring: &mut Uring, token: u64) -> Vec<Ready> {
        let mut ready = Vec::new();
        for _ in 0..10 {
            ring.wait(&mut ready, 100).unwrap();
            ready.retain(|r| r.token == token);
            if !ready.is_empty() {
                break;
            }
        }
        ready
    }

    /// Reads `fd` until EAGAIN, as the reactor does when a receive ended.
    fn read_until_eagain(fd: RawFd, got: &mut Vec<u8>) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: read into a live stack buffer of the given length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                assert_eq!(
                    io::Error::last_os_error().raw_os_error(),
                    Some(libc::EAGAIN)
                );
                return;
            }
            got.extend_from_slice(&buf[..n as usize]);
        }
    }

    #[test]
    fn an_empty_buffer_ring_falls_back_to_reads_then_receives_again() {
        if skip() {
            return;
        }
        let mut ring = Uring::new(16).unwrap();
        ring.receive_buffers(2).unwrap();
        let (server, mut client) = pair();
        let fd = server.as_raw_fd();
        ring.add_receiving(fd, 5).unwrap();
        let mut got = Vec::new();
        // Buffers the reactor has not given back yet: after two receives the ring is empty.
        let mut held = Vec::new();
        let mut reads = 0;
        for chunk in [&b"one"[..], b"two", b"six", b"ten"] {
            client.write_all(chunk).unwrap();
            let events = events_of(&mut ring, 5);
            assert!(!events.is_empty(), "no event after {chunk:?}");
            for ev in events {
                if let Some(r) = ev.received {
                    let buf = ring.take_received(r);
                    got.extend_from_slice(&buf[..r.len as usize]);
                    held.push((r, buf));
                }
                if ev.readable {
                    reads += 1;
                    read_until_eagain(fd, &mut got);
                    ring.drained(fd, 5).unwrap();
                }
            }
        }
        assert_eq!(got, b"onetwosixten", "every byte, in order");
        assert_eq!(held.len(), 2, "the ring's two buffers");
        assert!(
            reads >= 1,
            "the empty ring ended the receive: the bytes were read"
        );
        assert_eq!(ring.recvs[5].state, RecvState::Armed, "receiving again");
        for (r, buf) in held.drain(..) {
            ring.recycle(r, buf);
        }
        client.write_all(b"back").unwrap();
        let events = events_of(&mut ring, 5);
        let r = events
            .iter()
            .find_map(|ev| ev.received)
            .expect("received into a recycled buffer");
        let buf = ring.take_received(r);
        assert_eq!(&buf[..r.len as usize], b"back");
        ring.recycle(r, buf);

        // Input that completes after the connection was forgotten is dropped, its buffer back in the ring.
        client.write_all(b"late").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        ring.forget(&[(fd, 5)]).unwrap();
        let events = events_of(&mut ring, 5);
        assert!(events.iter().all(|ev| ev.received.is_none()), "{events:?}");
        assert_eq!(
            ring.bufs.as_ref().unwrap().lent(),
            0,
            "every buffer back in the ring"
        );
    }

    #[test]
    fn a_full_socket_completes_with_eagain_instead_of_waiting() {
        if skip() {
            return;
        }
        let mut ring = Uring::new(16).unwrap();
        let (server, _client) = pair();
        let payload = vec![7u8; 1 << 20];
        let iov = [libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        }];
        let ops = [WriteOp {
            fd: server.as_raw_fd(),
            iov: 0..1,
            zerocopy: None,
        }];
        let mut results = Vec::new();
        let mut written = 0;
        for _ in 0..64 {
            ring.write_batch(&ops, &iov, &mut results).unwrap();
            if results[0] < 0 {
                break;
            }
            written += results[0];
        }
        assert!(written > 0, "the first write goes through");
        assert_eq!(results[0], -libc::EAGAIN, "the peer never reads");
    }

    #[test]
    fn polls_report_input_and_cancelled_sockets_close() {
        if skip() {
            return;
        }
        let mut ring = Uring::new(16).unwrap();
        let (server, mut client) = pair();
        let fd = server.into_raw_fd();
        ring.add(fd, 7).unwrap();
        ring.add(fd + 1000, u64::MAX - 2).unwrap(); // not a descriptor: its poll fails with an error event
        client.write_all(b"x").unwrap();
        let mut ready = Vec::new();
        let mut seen = (false, false);
        for _ in 0..10 {
            ring.wait(&mut ready, 200).unwrap();
            for r in &ready {
                match r.token {
                    7 => seen.0 |= r.readable,
                    t if t == u64::MAX - 2 => seen.1 |= r.error,
                    t => panic!("unexpected token {t}"),
                }
            }
            if seen == (true, true) {
                break;
            }
        }
        assert_eq!(seen, (true, true));
        ring.forget(&[(fd, 7)]).unwrap();
        crate::reactor::sys::net::close(fd);
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        // Closed with our unread "x" in it, the socket resets the connection.
        let mut buf = [0u8; 1];
        match client.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("the socket stayed open: {other:?}"),
        }
    }

    /// A multishot poll the kernel ends because the completion queue is full is armed again when its completion is
    /// reaped. If the connection was closed in between, its descriptor number may already be another socket's: that
    /// poll must not be armed, or the new socket's readiness would reach the closed connection's token.
    #[test]
    fn a_poll_ended_by_a_full_queue_is_not_armed_again_once_forgotten() {
        if skip() {
            return;
        }
        let mut ring = Uring::new(16).unwrap();
        let (server, mut client) = pair();
        let fd = server.into_raw_fd();
        ring.add(fd, 7).unwrap();
        let mut ready = Vec::new();
        ring.wait(&mut ready, 0).unwrap(); // armed (and its first report, writable, taken)
                                           // Fill the completion queue with completions nobody reaps.
        let room = ring.ring.completion().capacity();
        for _ in 0..room {
            ring.push(&opcode::Nop::new().build().user_data(CANCEL_TAG))
                .unwrap();
        }
        ring.ring.submit().unwrap();
        assert!(ring.ring.completion().is_full());
        // Input now: the poll's report finds no room, so the kernel ends the poll (its last completion waits in
        // the kernel's overflow list). The pause lets the wake-up reach the ring; the submit runs it.
        client.write_all(b"x").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        ring.ring.submit().unwrap();
        assert!(
            ring.ring.submission().cq_overflow(),
            "the queue did not overflow"
        );
        ring.forget(&[(fd, 7)]).unwrap();
        // Closed, and another socket under the same number at once (dup2 does both; a plain close would let
        // another test's thread take the number).
        let (other, mut other_client) = pair();
        // SAFETY: dup2 onto a number this test owns.
        assert_eq!(unsafe { libc::dup2(other.as_raw_fd(), fd) }, fd);
        drop(other);
        // Reaping: the nops, then the ended poll's completion; then input for the other socket.
        for _ in 0..3 {
            ring.wait(&mut ready, 50).unwrap();
        }
        other_client.write_all(b"y").unwrap();
        let stale = events_of(&mut ring, 7)
            .into_iter()
            .filter(|r| r.readable || r.writable)
            .count();
        assert_eq!(
            stale, 0,
            "the closed connection's token got the other socket's readiness"
        );
        crate::reactor::sys::net::close(fd);
    }

    /// Accepts of `listener` through the backend until one fails or none waits (then waits up to 200 ms).
    fn accept_some(ring: &mut Uring, listener: RawFd, out: &mut Vec<RawFd>) -> io::Result<()> {
        let mut ready = Vec::new();
        loop {
            match ring.accept(listener) {
                Ok((fd, peer)) => {
                    assert_eq!(peer, Some(IpAddr::from([127, 0, 0, 1])));
                    out.push(fd);
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    ring.wait(&mut ready, 200)?;
                    if ready.is_empty() {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    #[test]
    fn multishot_accepts_hand_over_sockets_with_their_peer_address() {
        if skip() {
            return;
        }
        let mut ring = Uring::new(16).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        ring.add_listener(listener.as_raw_fd(), u64::MAX - 1)
            .unwrap();
        let clients: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut accepted = Vec::new();
        let end = accept_some(&mut ring, listener.as_raw_fd(), &mut accepted).unwrap_err();
        assert_eq!(end.raw_os_error(), Some(libc::EAGAIN));
        assert_eq!(accepted.len(), clients.len());
        assert!(ring.listeners[0].armed, "one multishot accept did it all");
        accepted.into_iter().for_each(net::close);
    }

    /// Run in a child process (it lowers the process's descriptor limit) by the test below.
    #[test]
    #[ignore]
    fn out_of_descriptors_child() {
        if std::env::var_os("WSGATE_URING_EMFILE_CHILD").is_none() {
            return;
        }
        let mut ring = Uring::new(16).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        // The client sockets are made first, so only the accepts run out of descriptors.
        let clients: Vec<socket2_free::Socket> =
            (0..8).map(|_| socket2_free::Socket::new()).collect();
        let late = socket2_free::Socket::new();
        // SAFETY: dup returns the lowest free descriptor, closed at once.
        let lowest = unsafe { libc::dup(0) };
        net::close(lowest);
        // Room for one descriptor: the lowest free one.
        let limit = libc::rlimit {
            rlim_cur: lowest as u64 + 1,
            rlim_max: lowest as u64 + 1,
        };
        // SAFETY: setrlimit reads a live rlimit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
        ring.add_listener(listener.as_raw_fd(), u64::MAX - 1)
            .unwrap();
        for c in &clients {
            c.connect(addr);
        }
        let mut accepted = Vec::new();
        let end = accept_some(&mut ring, listener.as_raw_fd(), &mut accepted).unwrap_err();
        assert_eq!(end.raw_os_error(), Some(libc::EMFILE), "{end}");
        assert!(
            !ring.listeners[0].armed,
            "an accept error ends the multishot"
        );
        assert!(accepted.len() < clients.len());
        // Descriptors free again: the backlog is accepted (accept4 while unarmed), then the multishot re-armed.
        let mut all = accepted.len();
        accepted.into_iter().for_each(net::close);
        // One descriptor of room: each round accepts one, then fails with EMFILE until the backlog is empty.
        for _ in 0..=clients.len() {
            let mut more = Vec::new();
            let end = accept_some(&mut ring, listener.as_raw_fd(), &mut more);
            all += more.len();
            more.into_iter().for_each(net::close);
            match end {
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {}
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(all, clients.len(), "every waiting connection accepted");
        assert!(
            ring.listeners[0].armed,
            "armed again once the backlog was empty"
        );
        drop(clients);
        late.connect(addr);
        let mut got = Vec::new();
        let _ = accept_some(&mut ring, listener.as_raw_fd(), &mut got);
        assert_eq!(got.len(), 1, "the re-armed multishot accepts");
        drop(late);
    }

    #[test]
    fn out_of_descriptors_accepting_fails_then_resumes() {
        if skip() {
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "reactor::sys::uring::tests::out_of_descriptors_child",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env("WSGATE_URING_EMFILE_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Unconnected client sockets, made before the descriptor limit is lowered.
    mod socket2_free {
        use std::net::SocketAddr;
        use std::os::fd::RawFd;

        pub struct Socket(RawFd);

        impl Socket {
            pub fn new() -> Socket {
                // SAFETY: a plain socket call; the descriptor is owned by the returned value.
                let fd = unsafe {
                    libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
                };
                assert!(fd >= 0);
                Socket(fd)
            }

            pub fn connect(&self, addr: SocketAddr) {
                let SocketAddr::V4(v4) = addr else {
                    panic!("IPv4 only")
                };
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                // SAFETY: connect reads a live sockaddr_in of the given length.
                let rc = unsafe {
                    libc::connect(self.0, &sin as *const _ as *const libc::sockaddr, len)
                };
                assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            }
        }

        impl Drop for Socket {
            fn drop(&mut self) {
                crate::reactor::sys::net::close(self.0);
            }
        }
    }

    #[test]
    fn a_zero_copy_send_completes_then_notifies_with_its_cookie() {
        let ring = Uring::new(16);
        let Ok(mut ring) = ring else { return };
        if ring.zerocopy().is_none() {
            return;
        }
        let (server, mut client) = pair();
        let payload = vec![5u8; 64 * 1024];
        let iov = [libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        }];
        let cookie = (7u64 << 32) | 3;
        let ops = [WriteOp {
            fd: server.as_raw_fd(),
            iov: 0..1,
            zerocopy: Some(cookie),
        }];
        let mut results = Vec::new();
        ring.write_batch(&ops, &iov, &mut results).unwrap();
        assert_eq!(results[0], payload.len() as i32);
        let mut got = vec![0u8; payload.len()];
        client.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&b| b == 5));
        let mut notes = Vec::new();
        let mut ready = Vec::new();
        for _ in 0..50 {
            ring.take_notifications(&mut notes);
            if !notes.is_empty() {
                break;
            }
            ring.wait(&mut ready, 20).unwrap();
        }
        assert_eq!(notes.len(), 1, "one notification per zero-copy send");
        assert_eq!(notes[0].cookie, cookie);
    }
}
