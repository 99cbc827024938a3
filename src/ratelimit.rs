//! Token-bucket rate limits: per connection and message type (owned by the reactor, no lock), and keyed limits
//! shared between threads (new connections per source IP, API publishes per tenant) in a sharded map, so no single
//! lock is taken by every thread and no lock at all is on the publish fan-out path.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// A configured rate: `per_sec` tokens per second (0 = unlimited) into a bucket of `burst` tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    pub fn new(per_sec: f64, burst: u32) -> Rate {
        Rate {
            per_sec,
            burst: f64::from(burst.max(1)),
        }
    }

    pub fn unlimited(&self) -> bool {
        self.per_sec <= 0.0
    }
}

/// Clock resolution of a bucket: 10 ms ticks in a u32 (wraps after 497 days; elapsed time is computed with
/// wrapping arithmetic, so only a bucket untouched for that long would see too little refill).
const TICK_MS: u64 = 10;

/// One bucket, 8 bytes. Times are on the caller's millisecond clock.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    level: f32,
    last_tick: u32,
}

fn tick(now_ms: u64) -> u32 {
    (now_ms / TICK_MS) as u32
}

impl TokenBucket {
    pub fn full(rate: &Rate, now_ms: u64) -> TokenBucket {
        TokenBucket {
            level: rate.burst as f32,
            last_tick: tick(now_ms),
        }
    }

    fn refill(&mut self, rate: &Rate, now_ms: u64) {
        let now = tick(now_ms);
        let elapsed = now.wrapping_sub(self.last_tick);
        self.last_tick = now;
        let added = f64::from(elapsed) * (TICK_MS as f64) * rate.per_sec / 1000.0;
        self.level = (f64::from(self.level) + added).min(rate.burst) as f32;
    }

    /// Takes one token if there is one. An unlimited rate always allows.
    pub fn try_take(&mut self, rate: &Rate, now_ms: u64) -> bool {
        if rate.unlimited() {
            return true;
        }
        self.refill(rate, now_ms);
        if self.level >= 1.0 {
            self.level -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&mut self, rate: &Rate, now_ms: u64) -> bool {
        self.refill(rate, now_ms);
        f64::from(self.level) >= rate.burst
    }
}

const SHARDS: usize = 16;
/// Keys tracked per shard; beyond that, full (idle) buckets are swept, and if none is idle a new key is let
/// through untracked rather than refusing someone who has not sent anything yet.
const MAX_KEYS_PER_SHARD: usize = 16 * 1024;

/// A rate limit per key, shared between threads.
pub struct KeyedLimiter<K> {
    rate: Rate,
    shards: Box<[Mutex<HashMap<K, TokenBucket>>]>,
    hasher: RandomState,
    clock: Instant,
}

impl<K: Hash + Eq> KeyedLimiter<K> {
    pub fn new(rate: Rate) -> Self {
        KeyedLimiter {
            rate,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            clock: Instant::now(),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one token for `key`; false = over the limit. Only a key seen for the first time is copied.
    pub fn try_take<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if self.rate.unlimited() {
            return true;
        }
        let now = self.clock.elapsed().as_millis() as u64;
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        // A poisoned shard only means another thread panicked mid-update; the buckets are still usable.
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = map.get_mut(key) {
            return bucket.try_take(&self.rate, now);
        }
        if map.len() >= MAX_KEYS_PER_SHARD {
            let rate = self.rate;
            map.retain(|_, b| !b.is_full(&rate, now));
            if map.len() >= MAX_KEYS_PER_SHARD {
                return true;
            }
        }
        let mut bucket = TokenBucket::full(&self.rate, now);
        let ok = bucket.try_take(&self.rate, now);
        map.insert(key.to_owned(), bucket);
        ok
    }
}

/// The key a source address is limited by: IPv4 addresses one by one, IPv6 per /64 (one subscriber's network),
/// IPv4-mapped IPv6 as IPv4.
pub fn ip_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => (u128::from(v6) & !((1u128 << 64) - 1)) | 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let rate = Rate::new(10.0, 3);
        let mut b = TokenBucket::full(&rate, 0);
        assert!(b.try_take(&rate, 0));
        assert!(b.try_take(&rate, 0));
        assert!(b.try_take(&rate, 0));
        assert!(!b.try_take(&rate, 0));
        assert!(!b.try_take(&rate, 50)); // half a token
        assert!(b.try_take(&rate, 100));
        assert!(!b.try_take(&rate, 100));
        // A long pause refills only up to the burst.
        for _ in 0..3 {
            assert!(b.try_take(&rate, 100_000));
        }
        assert!(!b.try_take(&rate, 100_000));
        assert_eq!(std::mem::size_of::<TokenBucket>(), 8);
        let unlimited = Rate::new(0.0, 1);
        let mut b = TokenBucket::full(&unlimited, 0);
        assert!((0..1000).all(|_| b.try_take(&unlimited, 0)));
    }

    #[test]
    fn keyed_limits_are_per_key() {
        let l: KeyedLimiter<String> = KeyedLimiter::new(Rate::new(0.001, 2));
        assert!(l.try_take("a"));
        assert!(l.try_take("a"));
        assert!(!l.try_take("a"));
        assert!(l.try_take("b"));
    }

    #[test]
    fn ipv6_is_limited_per_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let m: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ip_key(m), ip_key("10.0.0.1".parse().unwrap()));
    }
}
