//! One channel's history: its epoch, the last offset given, and the newest publications (bounded by count and
//! age), each kept as the exact frame live subscribers got, so a replay sends the same bytes without encoding.

use crate::pool::SharedFrame;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

const EPOCH_LEN: usize = 8;

/// Where a client stopped in a channel: the last offset it got, in which epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// One stored publication.
pub struct Entry {
    pub offset: u64,
    pub at: Instant,
    /// The delivered frame (header included).
    pub frame: SharedFrame,
    /// Where the publication's `data` starts in `frame`; it ends one byte before the frame's end (`}`).
    pub data_at: u32,
}

impl Entry {
    /// The publication's `data` (raw JSON) inside the frame.
    pub fn data(&self) -> &[u8] {
        &self.frame[self.data_at as usize..self.frame.len() - 1]
    }

    /// What the entry costs against `channels.history_max_bytes` (the frame and its bookkeeping).
    pub fn cost(&self) -> usize {
        self.frame.len() + std::mem::size_of::<Entry>()
    }
}

pub struct Ring {
    pub epoch: Arc<str>,
    /// Offset of the newest publication (0 before the first one).
    pub top: u64,
    pub entries: VecDeque<Entry>,
    pub last_publish: Instant,
}

/// What resubscribing from a [`Position`] gives.
pub struct Recovery {
    /// The channel's current position (what the client holds once the replay is out).
    pub position: Position,
    /// The missed publications were all still there (or there were none): the client has everything.
    pub recovered: bool,
    /// The missed publications, oldest first (empty unless `recovered`).
    pub frames: Vec<SharedFrame>,
}

impl Ring {
    pub fn new(now: Instant) -> Ring {
        Ring {
            epoch: new_epoch(),
            top: 0,
            entries: VecDeque::new(),
            last_publish: now,
        }
    }

    pub fn position(&self) -> Position {
        Position {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }

    /// Drops publications older than `ttl`; returns (bytes, publications) freed.
    pub fn expire(&mut self, now: Instant, ttl: Duration) -> (usize, usize) {
        let mut freed = (0, 0);
        while let Some(e) = self.entries.front() {
            if now.duration_since(e.at) < ttl {
                break;
            }
            freed.0 += e.cost();
            freed.1 += 1;
            self.entries.pop_front();
        }
        freed
    }

    /// The publications after `since`, if the history still reaches back to it: `Some(entries)` (possibly empty)
    /// or None when some of the missed ones are gone, the epoch differs, or `since` is ahead of the channel.
    pub fn after(&self, since: &Position) -> Option<impl Iterator<Item = &Entry>> {
        if since.epoch != self.epoch {
            return None;
        }
        let first_missed = since.offset.saturating_add(1);
        if first_missed <= self.top {
            // Every missed offset must still be stored: the oldest kept one is at most the first missed.
            match self.entries.front() {
                Some(e) if e.offset <= first_missed => {}
                _ => return None,
            }
        }
        let after = since.offset;
        Some(self.entries.iter().filter(move |e| e.offset > after))
    }

    /// Recovery from `since`, giving up (not recovered) when the replay would exceed `max_bytes`. A position
    /// ahead of the channel in its epoch is a client that got publications this node has not read yet (cluster
    /// mode: another node's bus reader was faster): nothing to replay, and its position stands.
    pub fn recover(&self, since: &Position, max_bytes: usize) -> Recovery {
        if since.epoch == self.epoch && since.offset > self.top {
            return Recovery {
                position: since.clone(),
                recovered: true,
                frames: Vec::new(),
            };
        }
        let mut frames = Vec::new();
        let mut bytes = 0;
        let mut recovered = false;
        if let Some(missed) = self.after(since) {
            recovered = true;
            for e in missed {
                bytes += e.frame.len();
                if bytes > max_bytes {
                    recovered = false;
                    frames.clear();
                    break;
                }
                frames.push(e.frame.clone());
            }
        }
        Recovery {
            position: self.position(),
            recovered,
            frames,
        }
    }
}

/// A fresh epoch: 8 random characters of [0-9A-Za-z]. It only has to differ from the channel's previous epochs,
/// so the process's random hash keys (seeded from the OS) are a good enough source.
pub fn new_epoch() -> Arc<str> {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let mut bits = h.finish();
    let mut out = String::with_capacity(EPOCH_LEN);
    for _ in 0..EPOCH_LEN {
        out.push(ALPHABET[(bits % 62) as usize] as char);
        bits /= 62;
    }
    Arc::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(offsets: std::ops::RangeInclusive<u64>, top: u64) -> Ring {
        let now = Instant::now();
        let mut r = Ring::new(now);
        r.top = top;
        for offset in offsets {
            r.entries.push_back(Entry {
                offset,
                at: now,
                frame: Arc::new(format!("x{offset}}}").into_bytes()),
                data_at: 1,
            });
        }
        r
    }

    fn at(r: &Ring, offset: u64) -> Position {
        Position {
            offset,
            epoch: r.epoch.clone(),
        }
    }

    #[test]
    fn recovers_only_when_every_missed_offset_is_kept() {
        let r = ring(5..=9, 9);
        let got = r.recover(&at(&r, 6), usize::MAX);
        assert!(got.recovered);
        assert_eq!(got.frames.len(), 3);
        assert_eq!(r.entries[0].data(), b"5");
        assert!(r.recover(&at(&r, 4), usize::MAX).recovered); // 5..=9 missed, 5 is the oldest kept
        assert!(!r.recover(&at(&r, 3), usize::MAX).recovered); // 4 is gone
        assert!(r.recover(&at(&r, 9), usize::MAX).recovered); // nothing missed
                                                              // Ahead of this node's copy (cluster: another node read further): nothing to replay, position kept.
        let ahead = r.recover(&at(&r, 12), usize::MAX);
        assert!(ahead.recovered && ahead.frames.is_empty() && ahead.position.offset == 12);
        let other = Position {
            offset: 6,
            epoch: Arc::from("other"),
        };
        assert!(!r.recover(&other, usize::MAX).recovered);
        assert!(!r.recover(&at(&r, 6), 4).recovered); // over the byte budget
    }

    #[test]
    fn from_offset_zero_of_the_epoch_and_after_expiry() {
        let r = ring(1..=3, 3);
        assert_eq!(r.recover(&at(&r, 0), usize::MAX).frames.len(), 3);
        let r = ring(2..=3, 3);
        assert!(!r.recover(&at(&r, 0), usize::MAX).recovered);
        // Every stored publication expired, but a client at the top missed nothing.
        let mut r = ring(1..=1, 7);
        r.entries.clear();
        assert!(r.recover(&at(&r, 7), usize::MAX).recovered);
        assert!(!r.recover(&at(&r, 6), usize::MAX).recovered);
    }

    #[test]
    fn extreme_offsets_do_not_overflow() {
        let r = ring(u64::MAX - 2..=u64::MAX, u64::MAX);
        assert_eq!(r.recover(&at(&r, u64::MAX - 1), usize::MAX).frames.len(), 1);
        assert!(r.recover(&at(&r, u64::MAX), usize::MAX).recovered);
        assert!(!r.recover(&at(&r, 5), usize::MAX).recovered);
        let r = ring(1..=3, 3);
        assert!(r.recover(&at(&r, u64::MAX), usize::MAX).recovered); // ahead: position kept
    }

    #[test]
    fn epochs_differ() {
        let a = new_epoch();
        assert_eq!(a.len(), EPOCH_LEN);
        assert_ne!(a, new_epoch());
    }
}
