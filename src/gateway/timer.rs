//! The timer of an open connection: token expiry, then silence (server ping, idle close), with the intervals of
//! the connection's heartbeat.

use super::frames::code;
use super::handler::{Client, Gateway};
use crate::frame::close_code;
use crate::reactor::{Core, Key};

/// Seconds between keep-alive comments on an event stream, at most.
const STREAM_KEEPALIVE: u32 = 15;

impl Gateway {
    pub(super) fn on_open_timer(&mut self, core: &mut Core<Client>, key: Key) {
        let now = core.now();
        let heartbeat = self.local.shared.heartbeat;
        let state = core.app(key).state.as_deref();
        let expires_at = state.map_or(u32::MAX, |s| s.expires_at);
        if expires_at <= now {
            self.local.tally.token_expired_closes_total += 1;
            return core.close_without_wait(key, code::UNAUTHORIZED, "token expired");
        }
        if core.is_stream(key) {
            // A stream's client cannot answer a ping on it; its ops are its sign of life. What keeps the stream
            // (and proxies on its way) from idling out is a comment every few seconds; a dead client shows as a
            // failed write.
            core.send_ping(key);
            let next = now + heartbeat.base.min(STREAM_KEEPALIVE);
            return core.schedule(key, next.min(expires_at));
        }
        let hb = state.map(|s| &s.heartbeat);
        let (ping_after, timeout) = (heartbeat.ping_after(hb), heartbeat.timeout(hb));
        let last_rx = core.last_rx(key);
        let silent = now.saturating_sub(last_rx);
        if silent >= timeout {
            core.tally().idle_timeouts_total += 1;
            return core.close_without_wait(key, close_code::GOING_AWAY, "idle timeout");
        }
        let next = if silent >= ping_after && !core.ping_outstanding(key) {
            core.send_ping(key);
            last_rx + timeout
        } else if core.ping_outstanding(key) {
            last_rx + timeout
        } else {
            last_rx + ping_after
        };
        core.schedule(key, next.min(expires_at));
    }
}
