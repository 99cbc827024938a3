//! A sending thread's outbox: its commands go into the reactors' queues as they are given (so each queue holds them
//! in the order they were given), but each reactor is woken once per flush, however many commands it got. The API
//! thread flushes after each pass over its ready connections (all the requests read in that pass, pipelined ones
//! and whole `POST /api/batch` bodies included); other senders flush after each event or batch they hand over.
//!
//! # Why no command is stranded without a wake-up
//! Before it sleeps a reactor (R1) stores `sleeping = true` (`Waker::arm`), (R2) checks that its queue is empty,
//! then blocks in the poller; after any wake-up it stores `sleeping = false` and drains its queue. A sender (S1)
//! pushes the command and later, at the latest when its outbox is flushed or dropped, (S2) swaps `sleeping` to
//! false and writes the eventfd if it was true. S1 is a SeqCst CAS on the channel's tail, R2 reads head and tail
//! with SeqCst loads (crossbeam-channel's bounded flavour), R1 and S2 are SeqCst on `sleeping`: one total order.
//! - S2 reads true: it writes the eventfd, so the reactor's sleep ends (or its next poll returns at once) and it
//!   drains the queue, S1's command included.
//! - S2 reads false: that false was stored after the reactor's last R1 by its own wake-up or by another sender
//!   that wrote the eventfd, so the reactor is awake or being woken, and will pass R1 again before it can sleep.
//!   That next R1 (a store of true) comes after S2, or S2 would have read it; so it comes after S1, and the R2
//!   that follows it sees S1's command: the reactor does not sleep. A busy reactor polls without sleeping and
//!   drains its queue every iteration anyway.
//!
//! Between S1 and S2 a command may wait in a sleeping reactor's queue: that is the batching, bounded by one pass
//! of the sender. A full queue is the one place a sender blocks, and it wakes the reactor before it blocks (the
//! reactor may be asleep on a queue this very outbox filled), so it never waits for a reactor that waits for it.
//!
//! # A reactor as a sender
//! A reactor serving the HTTP API must never block: it would wait for itself, or two reactors each for the
//! other's full queue. Its outbox keeps a [`Backlog`]: a command for a full queue waits in the backlog (behind it,
//! every later command for that reactor, so each queue keeps its order) and is retried at [`Backlog::flush`],
//! which also does the wake-ups (S2 above, once the iteration's requests are read rather than per outbox, and
//! again before the reactor sleeps for what it queued since). The reactor's own queue needs no wake-up: it looks
//! at it before it sleeps (R2). The caller bounds the backlog by not taking new requests while it is not empty.

use super::{Command, Hub};
use crossbeam_channel::TrySendError;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

/// Hand-over counters of the whole node (wake-ups are counted by each reactor's `Waker`).
#[derive(Default)]
pub struct HandoffStats {
    /// Publishes (channel, broadcast, user, socket id) handed to the reactors: one each, whatever the number of
    /// reactors it went to.
    pub publishes_total: AtomicU64,
}

/// See the module documentation. Made by [`Hub::outbox`]; flushed by [`Outbox::flush`] or when dropped.
pub struct Outbox<'h> {
    pub(super) hub: &'h Hub,
    /// Bit i: reactor i was given a command since the last flush (server.threads is at most 64).
    unwoken: u64,
    publishes: u64,
    /// A reactor's outbox: never blocks, wakes at the backlog's flush (see the module documentation).
    backlog: Option<&'h mut Backlog>,
    /// When the first publish of this outbox was accepted: the start of every delivery latency it measures. An
    /// outbox serves one request (or one batch of a thread), so its publishes share one clock reading.
    accepted: Option<std::time::Instant>,
}

/// What a reactor's outboxes leave for the end of its loop iteration: commands for full queues, and the wake-ups
/// and counts not yet done. Made per reactor; see the module documentation.
pub struct Backlog {
    /// The reactor this backlog belongs to.
    me: usize,
    /// Per reactor: commands its full queue did not take yet, oldest first.
    waiting: Vec<VecDeque<Command>>,
    waiting_total: usize,
    unwoken: u64,
    publishes: u64,
}

impl Backlog {
    /// The backlog of reactor `me` among `reactors`.
    pub fn new(me: usize, reactors: usize) -> Self {
        Backlog {
            me,
            waiting: (0..reactors).map(|_| VecDeque::new()).collect(),
            waiting_total: 0,
            unwoken: 0,
            publishes: 0,
        }
    }

    /// Commands waiting for a full queue: while there are any, the caller takes no new work.
    pub fn waiting(&self) -> usize {
        self.waiting_total
    }

    /// Retries the waiting commands (in order, until a queue is full again), then wakes every other reactor given
    /// commands since the last flush: one hand-over each. Never blocks.
    pub fn flush(&mut self, hub: &Hub) {
        for (i, list) in self.waiting.iter_mut().enumerate() {
            let before = list.len();
            while let Some(cmd) = list.pop_front() {
                match hub.reactors[i].tx.try_send(cmd) {
                    Ok(()) => {}
                    Err(TrySendError::Full(cmd)) => {
                        list.push_front(cmd);
                        break;
                    }
                    // The reactor has exited (shutdown): nothing to deliver there.
                    Err(TrySendError::Disconnected(_)) => list.clear(),
                }
            }
            if list.len() < before && i != self.me {
                self.unwoken |= 1 << i;
            }
            self.waiting_total -= before - list.len();
        }
        while self.unwoken != 0 {
            let i = self.unwoken.trailing_zeros() as usize;
            self.unwoken &= !(1 << i);
            wake(hub, i);
        }
        if self.publishes > 0 {
            hub.handoff
                .publishes_total
                .fetch_add(std::mem::take(&mut self.publishes), Ordering::Relaxed);
        }
    }
}

fn wake(hub: &Hub, i: usize) {
    let r = &hub.reactors[i];
    r.batches_total.fetch_add(1, Ordering::Relaxed);
    r.waker.wake();
}

impl<'h> Outbox<'h> {
    pub(super) fn new(hub: &'h Hub, backlog: Option<&'h mut Backlog>) -> Self {
        Outbox {
            hub,
            unwoken: 0,
            publishes: 0,
            backlog,
            accepted: None,
        }
    }

    /// Queues `cmd` for reactor `i`; false if that reactor has exited (shutdown: nothing to deliver there).
    /// Blocks while its queue is full: the backpressure publishers feel. A reactor's outbox never blocks: the
    /// command waits in its backlog instead.
    pub(super) fn push(&mut self, i: usize, cmd: Command) -> bool {
        let r = &self.hub.reactors[i];
        if let Some(b) = self.backlog.as_deref_mut() {
            let list = &mut b.waiting[i];
            if list.is_empty() {
                match r.tx.try_send(cmd) {
                    Ok(()) => {}
                    Err(TrySendError::Full(cmd)) => {
                        list.push_back(cmd);
                        b.waiting_total += 1;
                    }
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            } else {
                list.push_back(cmd);
                b.waiting_total += 1;
            }
            if i != b.me {
                self.unwoken |= 1 << i;
            }
            return true;
        }
        match r.tx.try_send(cmd) {
            Ok(()) => {}
            Err(TrySendError::Full(cmd)) => {
                // The reactor may sleep on a queue this outbox filled without waking it yet.
                self.wake(i);
                if r.tx.send(cmd).is_err() {
                    return false;
                }
            }
            Err(TrySendError::Disconnected(_)) => return false,
        }
        self.unwoken |= 1 << i;
        true
    }

    /// Counts one publish handed over (see [`HandoffStats::publishes_total`]).
    pub(super) fn count_publish(&mut self) {
        self.publishes += 1;
    }

    /// When this outbox's publishes were accepted (read once, at the first).
    pub(super) fn accepted(&mut self) -> std::time::Instant {
        *self.accepted.get_or_insert_with(std::time::Instant::now)
    }

    fn wake(&mut self, i: usize) {
        self.unwoken &= !(1 << i);
        wake(self.hub, i);
    }

    /// Wakes every reactor given a command since the last flush: one hand-over (batch) each.
    pub fn flush(&mut self) {
        while self.unwoken != 0 {
            self.wake(self.unwoken.trailing_zeros() as usize);
        }
        if self.publishes > 0 {
            self.hub
                .handoff
                .publishes_total
                .fetch_add(std::mem::take(&mut self.publishes), Ordering::Relaxed);
        }
    }
}

impl Drop for Outbox<'_> {
    fn drop(&mut self) {
        match self.backlog.as_deref_mut() {
            // A reactor's: woken at the end of its iteration.
            Some(b) => {
                b.unwoken |= self.unwoken;
                b.publishes += self.publishes;
            }
            None => self.flush(),
        }
    }
}
