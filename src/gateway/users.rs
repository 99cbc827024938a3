//! Connections per user across the node, for `auth.max_connections_per_user`. Sharded by user so reactors rarely
//! meet on a lock, and touched only when a connection opens or closes — never on a publish.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

const SHARDS: usize = 64;

/// One shard: user → open connections.
type Shard = Mutex<HashMap<Box<str>, u32>>;

pub struct UserCounts {
    shards: Box<[Shard]>,
    hasher: RandomState,
}

impl Default for UserCounts {
    fn default() -> Self {
        UserCounts {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl UserCounts {
    fn shard(&self, user: &str) -> std::sync::MutexGuard<'_, HashMap<Box<str>, u32>> {
        let i = (self.hasher.hash_one(user) as usize) % SHARDS;
        // A poisoned shard only means a panic elsewhere mid-update; the counts are still consistent.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for `user` if it holds fewer than `max` connections.
    pub fn try_acquire(&self, user: &str, max: u32) -> bool {
        let mut map = self.shard(user);
        match map.get_mut(user) {
            Some(n) if *n >= max => false,
            Some(n) => {
                *n += 1;
                true
            }
            None => {
                map.insert(user.into(), 1);
                true
            }
        }
    }

    pub fn release(&self, user: &str) {
        let mut map = self.shard(user);
        if let Some(n) = map.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                map.remove(user);
            }
        }
    }

    pub fn count(&self, user: &str) -> u32 {
        self.shard(user).get(user).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_up_to_max_and_release() {
        let c = UserCounts::default();
        assert!(c.try_acquire("u", 2));
        assert!(c.try_acquire("u", 2));
        assert!(!c.try_acquire("u", 2));
        assert!(c.try_acquire("v", 2));
        c.release("u");
        assert_eq!(c.count("u"), 1);
        assert!(c.try_acquire("u", 2));
        c.release("u");
        c.release("u");
        assert_eq!(c.count("u"), 0);
        c.release("u"); // unknown: no underflow
    }
}
