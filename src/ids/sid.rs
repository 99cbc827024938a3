//! Socket ids: 64-bit Snowflake-style ids, unique across reactors, nodes (with distinct `server.node_id`) and
//! restarts (the clock moves forward between runs).
//!
//! Layout, most significant first: 41 bits of milliseconds since 2024-01-01T00:00:00Z (good until 2093),
//! 10 bits node id, 6 bits reactor, 7 bits sequence. Each reactor owns one generator, so generators never share
//! state and never collide: two ids from different reactors differ in the reactor bits. Within a reactor, more
//! than 128 ids in one millisecond borrow the next millisecond (the clock is never allowed to run backwards
//! either: a step back keeps counting from the last millisecond used).
//!
//! Ids are sent to clients as decimal strings (JavaScript numbers lose precision above 2^53).

use std::time::{SystemTime, UNIX_EPOCH};

/// 2024-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: u64 = 1_704_067_200_000;
const NODE_BITS: u32 = 10;
const REACTOR_BITS: u32 = 6;
const SEQ_BITS: u32 = 7;
const SEQ_MAX: u8 = (1 << SEQ_BITS) - 1;
const REACTOR_SHIFT: u32 = SEQ_BITS;
const NODE_SHIFT: u32 = SEQ_BITS + REACTOR_BITS;
const TIME_SHIFT: u32 = SEQ_BITS + REACTOR_BITS + NODE_BITS;

/// Reactors one node can run (the reactor field is 6 bits).
pub const MAX_REACTORS: usize = 1 << REACTOR_BITS;
/// Highest node id (10 bits).
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;

/// One reactor's id generator. Not shared: every reactor has its own.
#[derive(Debug, Clone)]
pub struct SidGenerator {
    base: u64,
    /// Milliseconds since [`EPOCH_MS`] of the last id.
    last_ms: u64,
    seq: u8,
    started: bool,
}

impl SidGenerator {
    pub fn new(node: u16, reactor: usize) -> Self {
        debug_assert!(node <= MAX_NODE && reactor < MAX_REACTORS);
        let base = (u64::from(node & MAX_NODE) << NODE_SHIFT)
            | (((reactor % MAX_REACTORS) as u64) << REACTOR_SHIFT);
        SidGenerator {
            base,
            last_ms: 0,
            seq: 0,
            started: false,
        }
    }

    /// The next id, using the system clock.
    pub fn next_id(&mut self) -> u64 {
        self.next_at(unix_ms())
    }

    /// The next id as if the clock read `now_unix_ms`.
    pub fn next_at(&mut self, now_unix_ms: u64) -> u64 {
        let ms = now_unix_ms.saturating_sub(EPOCH_MS) & ((1 << 41) - 1);
        if !self.started || ms > self.last_ms {
            self.started = true;
            self.last_ms = ms;
            self.seq = 0;
        } else if self.seq < SEQ_MAX {
            self.seq += 1;
        } else {
            // 128 ids in this millisecond already: borrow the next one.
            self.last_ms += 1;
            self.seq = 0;
        }
        (self.last_ms << TIME_SHIFT) | self.base | u64::from(self.seq)
    }
}

/// The reactor that issued `sid`.
pub fn reactor_of(sid: u64) -> usize {
    ((sid >> REACTOR_SHIFT) & ((1 << REACTOR_BITS) - 1)) as usize
}

/// The node that issued `sid`.
pub fn node_of(sid: u64) -> u16 {
    ((sid >> NODE_SHIFT) & u64::from(MAX_NODE)) as u16
}

/// When `sid` was issued, Unix milliseconds.
pub fn unix_ms_of(sid: u64) -> u64 {
    (sid >> TIME_SHIFT) + EPOCH_MS
}

/// Current Unix time in milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Parses a decimal socket id as clients and the API write it.
pub fn parse(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn fields_round_trip() {
        let mut g = SidGenerator::new(1023, 63);
        let now = EPOCH_MS + 123_456_789;
        let sid = g.next_at(now);
        assert_eq!(node_of(sid), 1023);
        assert_eq!(reactor_of(sid), 63);
        assert_eq!(unix_ms_of(sid), now);
        assert_eq!(parse(&sid.to_string()), Some(sid));
        assert_eq!(parse("12a"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("99999999999999999999999"), None);
    }

    #[test]
    fn one_million_ids_across_reactors_are_unique() {
        // Eight reactors of two nodes, 125k ids each, most of them in the same few milliseconds (so every
        // generator overflows its sequence and borrows milliseconds), then a clock that steps backwards.
        let mut gens: Vec<SidGenerator> = (0..8)
            .map(|i| SidGenerator::new(i / 4, i as usize % 4))
            .collect();
        let mut seen = HashSet::with_capacity(1_000_000);
        let t0 = EPOCH_MS + 1_000_000;
        for round in 0..125_000u64 {
            for (i, g) in gens.iter_mut().enumerate() {
                // Clock advances one ms every 1000 rounds, and jumps back 5 ms at round 60000.
                let mut now = t0 + round / 1000;
                if round >= 60_000 {
                    now -= 5;
                }
                let sid = g.next_at(now);
                assert!(
                    seen.insert(sid),
                    "duplicate sid {sid} (generator {i}, round {round})"
                );
                assert_eq!(reactor_of(sid), i % 4);
                assert_eq!(node_of(sid), (i / 4) as u16);
            }
        }
        assert_eq!(seen.len(), 1_000_000);
    }

    #[test]
    fn ids_grow_with_time_and_restarts_do_not_repeat() {
        let mut a = SidGenerator::new(0, 0);
        let first = a.next_at(EPOCH_MS + 10);
        // A "restarted" generator a millisecond later starts above every id of the first millisecond.
        let mut b = SidGenerator::new(0, 0);
        let later = b.next_at(EPOCH_MS + 11);
        assert!(later > first);
        // Within one generator ids only grow, even when the clock steps back.
        let mut prev = a.next_at(EPOCH_MS + 10);
        for now in [EPOCH_MS + 12, EPOCH_MS + 3, EPOCH_MS + 12, EPOCH_MS + 13] {
            let sid = a.next_at(now);
            assert!(sid > prev);
            prev = sid;
        }
    }
}
