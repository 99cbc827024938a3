//! The `users` scenario: every connection is its own user, and every publish is addressed to exactly one of them.
//!
//! Connection *u* (its index over all processes) is user `u<u>`: with `--jwt-secret` it authenticates with an HS256
//! token whose `sub` is `u<u>` (in the query string, `?token=`), with `--topics` it subscribes to the channel
//! `user:<u>` instead (a per-user topic with one subscriber, for servers without users such as the µWebSockets
//! peer). Publish `s` goes to user `s mod users` (round robin), so each user's share of the global sequence is
//! `u, u + users, u + 2·users, …` and its k-th push is publish `u + k·users`. A connection tracks its own pushes by
//! that k with the ordinary sequence tracker: a push for another user is a misdelivery, a k that arrives twice a
//! duplicate, a missing k a loss — "exactly the pushes addressed to it" checked per user.

use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;

/// Which publishes a connection is owed, and how its own sequence numbers relate to the global ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owed {
    /// Every publish (channel subscribers): own number = global number.
    All,
    /// Publish `s` goes to connection `s mod users` only.
    RoundRobin { users: u64 },
}

impl Owed {
    /// The connection's own number for global publish `s`, or None if `s` is addressed to another connection.
    pub fn local(self, conn: u64, s: u64) -> Option<u64> {
        match self {
            Owed::All => Some(s),
            Owed::RoundRobin { users } => (s % users == conn).then_some(s / users),
        }
    }

    /// How many of the global publishes `0..n` are addressed to connection `conn`.
    pub fn count(self, conn: u64, n: u64) -> u64 {
        match self {
            Owed::All => n,
            Owed::RoundRobin { users } => n.saturating_sub(conn).div_ceil(users),
        }
    }

    /// The global number of the connection's own publish `k`.
    pub fn global(self, conn: u64, k: u64) -> u64 {
        match self {
            Owed::All => k,
            Owed::RoundRobin { users } => conn + k * users,
        }
    }

    /// The user publish `s` is addressed to.
    pub fn target(self, s: u64) -> u64 {
        match self {
            Owed::All => 0,
            Owed::RoundRobin { users } => s % users,
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

/// An HS256 token for user `u<user>`, valid for `ttl_s` seconds.
pub fn token(secret: &str, user: u64, ttl_s: u64) -> String {
    let sub = format!("u{user}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        sub: &sub,
        exp: now + ttl_s,
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing of a plain claims struct cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_covers_every_publish_once() {
        let o = Owed::RoundRobin { users: 7 };
        for n in [0u64, 1, 6, 7, 8, 100] {
            let total: u64 = (0..7).map(|u| o.count(u, n)).sum();
            assert_eq!(total, n, "n {n}");
        }
        for s in 0..100u64 {
            let u = o.target(s);
            let k = o.local(u, s).unwrap();
            assert_eq!(o.global(u, k), s);
            assert_eq!(o.local((u + 1) % 7, s), None);
            // The pushes before s that are u's are exactly its numbers below k.
            assert_eq!(o.count(u, s), k);
        }
        assert_eq!(Owed::All.local(3, 9), Some(9));
        assert_eq!(Owed::All.count(3, 9), 9);
    }

    #[test]
    fn tokens_verify_with_the_secret() {
        use jsonwebtoken::{decode, DecodingKey, Validation};
        #[derive(serde::Deserialize)]
        struct C {
            sub: String,
        }
        let t = token("s3cret", 42, 60);
        let v = Validation::new(jsonwebtoken::Algorithm::HS256);
        let c = decode::<C>(&t, &DecodingKey::from_secret(b"s3cret"), &v).unwrap();
        assert_eq!(c.claims.sub, "u42");
        assert!(decode::<C>(&t, &DecodingKey::from_secret(b"other"), &v).is_err());
    }
}
