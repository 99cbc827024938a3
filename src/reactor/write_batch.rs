//! The flush pass for a backend that writes many sockets in one system call ([`Poller::BATCHES_WRITES`]): the
//! queues of up to [`MAX_BATCH`] dirty connections become one batch of writevs, handed to the backend together,
//! and each result is applied as a writev's would be (`Core::wrote`). TLS connections write their records
//! themselves, as on every backend, and so does a connection with a backlog (more than [`BATCH_FRAMES`] frames).

use super::conn::{flag, NO_TLS};
use super::handler::{Handler, Key};
use super::sys::{Poller, WriteOp, MAX_BATCH};
use super::Reactor;
use std::io;

/// Connections with more frames queued than this write them with their own writev (a backlog: see
/// bench/RESULTS.md, io backends).
const BATCH_FRAMES: usize = 8;

/// Reused buffers of one batch: nothing is allocated per flush once they have grown.
#[derive(Default)]
pub(super) struct WriteBatch {
    ops: Vec<WriteOp>,
    iov: Vec<libc::iovec>,
    /// Per op: its connection, the bytes offered, and its number if it is a zero-copy send.
    keys: Vec<(Key, usize, Option<u32>)>,
    results: Vec<i32>,
}

impl<P: Poller, H: Handler> Reactor<P, H> {
    /// Writes `keys` (dirty connections) in batches; between batches, like the per-connection pass, lets the
    /// handler read its own input and takes in publishes that arrived meanwhile.
    pub(super) fn write_batches(&mut self, keys: &[Key]) -> io::Result<()> {
        for (i, chunk) in keys.chunks(MAX_BATCH).enumerate() {
            if i > 0 {
                self.handler.mid_flush(&mut self.core);
            }
            if i > 0 && !self.rx.is_empty() {
                self.run_commands();
            }
            self.write_batch(chunk)?;
        }
        Ok(())
    }

    fn write_batch(&mut self, keys: &[Key]) -> io::Result<()> {
        let mut batch = std::mem::take(&mut self.batch);
        batch.ops.clear();
        batch.iov.clear();
        batch.keys.clear();
        for &key in keys {
            let conn = &self.core.conns[key];
            if !conn.has(flag::DIRTY) {
                continue;
            }
            // A zero-copy connection's large frames leave in the batch, whatever its backlog (unless its kernel
            // copies them anyway: then it is a connection like the others).
            let zerocopy = conn.has(flag::ZEROCOPY);
            let backlog = conn.out.frame_count() > BATCH_FRAMES;
            if conn.tls != NO_TLS || backlog && !(zerocopy && self.core.zerocopy_live(key)) {
                self.core.flush(key);
                continue;
            }
            let conn = &mut self.core.conns[key];
            conn.flags &= !flag::DIRTY;
            if conn.out.is_empty() {
                self.core.drained(key);
                continue;
            }
            let start = batch.iov.len();
            let offered = conn.out.fill_iov(&mut batch.iov);
            let fd = conn.fd;
            let cookie = if zerocopy {
                self.core.zerocopy_cookie(key, &batch.iov[start..])
            } else {
                None
            };
            batch.ops.push(WriteOp {
                fd,
                iov: start..batch.iov.len(),
                zerocopy: cookie.map(|(cookie, _)| cookie),
            });
            batch.keys.push((key, offered, cookie.map(|(_, seq)| seq)));
        }
        let outcome = self
            .poller
            .write_batch(&batch.ops, &batch.iov, &mut batch.results);
        if outcome.is_ok() {
            for (&(key, offered, seq), &result) in batch.keys.iter().zip(&batch.results) {
                self.core.wrote(key, offered, result, seq);
            }
        }
        self.batch = batch;
        outcome
    }
}
