//! The sessions of fallback transports (SSE, long-poll) as every reactor sees them. Their clients speak through
//! separate HTTP requests, which SO_REUSEPORT hands to any reactor, while a session lives on the reactor that
//! opened it. A request names its session by socket id and proves it belongs to it with the session key from the
//! welcome: a keyed hash of the socket id, so any reactor checks it without asking the owner. The set of live
//! sessions (touched when one opens or closes, read once per request) lets a request for an ended session get its
//! 404 at once.

use sha1::{Digest, Sha1};
use std::collections::HashSet;
use std::io::Read as _;
use std::sync::Mutex;

const SHARDS: usize = 16;

pub struct FallbackSessions {
    secret: [u8; 32],
    live: [Mutex<HashSet<u64>>; SHARDS],
}

impl FallbackSessions {
    /// With a fresh random secret (from the kernel), so keys do not survive a restart.
    pub fn new() -> std::io::Result<FallbackSessions> {
        let mut secret = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
        Ok(FallbackSessions {
            secret,
            live: Default::default(),
        })
    }

    /// The session key of socket id `sid`: 32 lowercase hex characters.
    pub fn key(&self, sid: u64) -> String {
        let mut h = Sha1::new();
        h.update(self.secret);
        h.update(sid.to_le_bytes());
        h.update(self.secret);
        let digest = h.finalize();
        let mut out = String::with_capacity(32);
        for b in &digest[..16] {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        out
    }

    /// Whether `key` is the session key of `sid` (compared in constant time) and the session is live.
    pub fn check(&self, sid: u64, key: &str) -> bool {
        let expected = self.key(sid);
        let same = expected.len() == key.len()
            && expected
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same && self.shard(sid).contains(&sid)
    }

    pub fn open(&self, sid: u64) {
        self.shard(sid).insert(sid);
    }

    pub fn close(&self, sid: u64) {
        self.shard(sid).remove(&sid);
    }

    fn shard(&self, sid: u64) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        // A panic while holding the lock cannot leave the set inconsistent (insert/remove/contains only).
        self.live[(sid as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_per_session_and_checked() {
        let s = FallbackSessions::new().unwrap();
        let (a, b) = (s.key(1), s.key(2));
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        assert!(!s.check(1, &a), "not live yet");
        s.open(1);
        assert!(s.check(1, &a));
        assert!(!s.check(1, &b));
        assert!(!s.check(1, ""));
        s.close(1);
        assert!(!s.check(1, &a));
        let other = FallbackSessions::new().unwrap();
        assert_ne!(other.key(1), a, "another process, another secret");
    }
}
