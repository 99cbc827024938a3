//! Limits on what a connection may hold while its input is incomplete: the process-wide memory budget
//! (`server.max_buffered_bytes`) and the message timeout (`ws.message_timeout`). Both act on the read-buffer arena,
//! which knows who holds what since when, so neither walks the connections; both end a connection like a protocol
//! violation does (its input is discarded, close 1008 is sent, the socket closes), through teardown.rs.

use super::conn::{flag, State};
use super::core::Core;
use crate::frame::close_code::POLICY_VIOLATION;

impl<A> Core<A> {
    /// Reports this reactor's buffered bytes to the process-wide budget when they changed; past the limit, closes
    /// the connections holding the most until the total fits.
    pub(super) fn check_memory(&mut self) {
        let held = self.bufs.held();
        if held == self.reported {
            return;
        }
        let mut total = self.budget.report(&mut self.reported, held);
        if !self.budget.exceeded(total) {
            return;
        }
        let mut holders = Vec::new();
        self.bufs.holders(&mut holders);
        holders.sort_unstable_by_key(|&(bytes, _)| std::cmp::Reverse(bytes));
        for (bytes, owner) in holders {
            if !self.budget.exceeded(total) {
                break;
            }
            total = total.saturating_sub(bytes);
            let key = owner as usize;
            let conn = &self.conns[key];
            if conn.has(flag::DOOMED) || conn.state == State::Lingering {
                continue; // already ending: its buffers go at the reap
            }
            self.tally.memory_budget_closes_total += 1;
            self.abort_input(key, POLICY_VIOLATION, "memory budget");
        }
    }

    /// Once a second: connections that have held an incomplete message or frame longer than `ws.message_timeout`
    /// are closed (a client trickling bytes cannot keep a buffer, or the idle timer, alive forever).
    pub(super) fn expire_stale_input(&mut self) {
        let Some(deadline) = self.now.checked_sub(self.limits.message_timeout) else {
            return;
        };
        let mut stale = Vec::new();
        self.bufs.stale_owners(deadline, &mut stale);
        for owner in stale {
            let key = owner as usize;
            let conn = &self.conns[key];
            // A request head has the handshake timeout; an ending connection is not read any more.
            if conn.has(flag::DOOMED) || !matches!(conn.state, State::Open | State::Closing) {
                continue;
            }
            self.tally.message_timeouts_total += 1;
            self.abort_input(key, POLICY_VIOLATION, "message timeout");
        }
    }
}
