//! Adaptive application heartbeat. A client sends `{"op":"ping"}` every `interval` seconds (the server tells it
//! the interval in the welcome frame). After `healthy_beats` on-time beats in a row the server lengthens the
//! interval by `step` up to `max_interval`, so stable clients cost fewer wake-ups and messages; a late beat snaps
//! the interval back to the base. Each change is sent to the client as `{"type":"heartbeat",...}`.
//!
//! Clients that never send heartbeats keep the plain WebSocket behaviour: a server ping after `ws.ping_interval`
//! seconds of silence, close after `ws.idle_timeout`.

use crate::config::Config;

/// The configured policy (reactor-clock seconds).
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatPolicy {
    /// Base interval: `ws.ping_interval`.
    pub base: u32,
    /// Silence tolerated past the interval before the close: `ws.idle_timeout - ws.ping_interval`.
    pub grace: u32,
    pub step: u32,
    pub max: u32,
    pub healthy_beats: u8,
    pub tolerance: u32,
}

/// A connection's heartbeat state (only connections that have sent a heartbeat have one).
#[derive(Debug, Clone, Copy, Default)]
pub struct Heartbeat {
    /// Current interval in seconds; 0 = no heartbeat received yet.
    interval: u16,
    /// On-time beats since the last change.
    healthy: u8,
    /// Reactor second of the last beat (the reactor clock starts at 1, so 0 means "never").
    last_beat: u32,
}

/// What a beat changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Lengthened(u32),
    SnappedBack(u32),
}

impl HeartbeatPolicy {
    pub fn from_config(c: &Config) -> Self {
        // Same clamping as the reactor's other timers; the base and grace reproduce ws.ping_interval and
        // ws.idle_timeout exactly for clients that do not send heartbeats.
        let secs = |v: u64| v.min(u64::from(u32::MAX / 4)) as u32;
        let base = secs(c.ws.ping_interval);
        let grace = secs(c.ws.idle_timeout).saturating_sub(base).max(1);
        HeartbeatPolicy {
            base,
            grace,
            step: secs(c.heartbeat.step),
            max: secs(c.heartbeat.max_interval).max(base),
            healthy_beats: c.heartbeat.healthy_beats.clamp(1, 255) as u8,
            tolerance: secs(c.heartbeat.tolerance).min(grace - 1),
        }
    }

    /// The interval a connection is on.
    pub fn interval(&self, hb: Option<&Heartbeat>) -> u32 {
        match hb {
            Some(h) if h.interval > 0 => u32::from(h.interval),
            _ => self.base,
        }
    }

    /// Seconds the server waits (counting any inbound bytes as life) before it closes the connection.
    pub fn timeout(&self, hb: Option<&Heartbeat>) -> u32 {
        self.interval(hb) + self.grace
    }

    /// Seconds of silence before the server sends a WebSocket ping: the interval for clients that do not send
    /// heartbeats, the interval plus the tolerance for those that do (their beat is due first).
    pub fn ping_after(&self, hb: Option<&Heartbeat>) -> u32 {
        match hb {
            Some(h) if h.interval > 0 => u32::from(h.interval) + self.tolerance,
            _ => self.base,
        }
    }

    /// Accounts a heartbeat received at reactor second `now`.
    pub fn on_beat(&self, hb: &mut Heartbeat, now: u32) -> Option<Change> {
        if self.base > u32::from(u16::MAX) {
            return None; // an interval over 18 hours stays fixed (and untracked: the base applies)
        }
        if hb.interval == 0 {
            *hb = Heartbeat {
                interval: self.base as u16,
                healthy: 0,
                last_beat: now,
            };
            return None;
        }
        let gap = now.saturating_sub(hb.last_beat);
        hb.last_beat = now;
        let interval = u32::from(hb.interval);
        if gap > interval + self.tolerance {
            hb.healthy = 0;
            if interval != self.base {
                hb.interval = self.base as u16;
                return Some(Change::SnappedBack(self.base));
            }
            return None;
        }
        if gap.saturating_mul(2) < interval {
            return None; // early beats neither count nor hurt
        }
        hb.healthy = hb.healthy.saturating_add(1);
        if hb.healthy < self.healthy_beats {
            return None;
        }
        hb.healthy = 0;
        if interval >= self.max {
            return None;
        }
        let next = (interval + self.step)
            .min(self.max)
            .min(u32::from(u16::MAX));
        hb.interval = next as u16;
        Some(Change::Lengthened(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HeartbeatPolicy {
        HeartbeatPolicy {
            base: 10,
            grace: 20,
            step: 5,
            max: 20,
            healthy_beats: 2,
            tolerance: 3,
        }
    }

    #[test]
    fn lengthens_after_healthy_beats_and_snaps_back_after_a_miss() {
        let p = policy();
        let mut hb = Heartbeat::default();
        assert_eq!(p.interval(None), 10);
        assert_eq!(p.ping_after(None), 10);
        assert_eq!(p.on_beat(&mut hb, 100), None); // first beat starts the clock
        assert_eq!(p.ping_after(Some(&hb)), 13);
        assert_eq!(p.on_beat(&mut hb, 110), None);
        assert_eq!(p.on_beat(&mut hb, 121), Some(Change::Lengthened(15)));
        assert_eq!(p.timeout(Some(&hb)), 35);
        assert_eq!(p.on_beat(&mut hb, 124), None); // early: neutral
        assert_eq!(p.on_beat(&mut hb, 139), None);
        assert_eq!(p.on_beat(&mut hb, 154), Some(Change::Lengthened(20)));
        assert_eq!(p.on_beat(&mut hb, 174), None);
        assert_eq!(p.on_beat(&mut hb, 194), None); // at the maximum
        assert_eq!(p.interval(Some(&hb)), 20);
        assert_eq!(p.on_beat(&mut hb, 218), Some(Change::SnappedBack(10)));
        assert_eq!(p.interval(Some(&hb)), 10);
        // A late beat at the base interval changes nothing but the count.
        assert_eq!(p.on_beat(&mut hb, 240), None);
        assert_eq!(p.on_beat(&mut hb, 250), None);
        assert_eq!(p.on_beat(&mut hb, 260), Some(Change::Lengthened(15)));
    }

    #[test]
    fn from_config_reproduces_the_ws_timers() {
        let mut c = Config::default();
        let p = HeartbeatPolicy::from_config(&c);
        assert_eq!((p.base, p.timeout(None), p.ping_after(None)), (25, 60, 25));
        c.ws.ping_interval = 2;
        c.ws.idle_timeout = 3;
        let p = HeartbeatPolicy::from_config(&c);
        assert_eq!((p.grace, p.tolerance), (1, 0));
        c.ws.ping_interval = 300;
        c.ws.idle_timeout = 900;
        let p = HeartbeatPolicy::from_config(&c);
        assert_eq!((p.max, p.timeout(None)), (300, 900));
        let mut hb = Heartbeat::default();
        assert_eq!(p.on_beat(&mut hb, 10), None);
        assert_eq!(p.on_beat(&mut hb, 310), None);
        assert_eq!(p.on_beat(&mut hb, 610), None);
        assert_eq!(p.on_beat(&mut hb, 910), None); // already at the maximum
        assert_eq!(p.interval(Some(&hb)), 300);
    }
}
