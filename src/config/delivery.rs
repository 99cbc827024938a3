//! Configuration of user-message delivery guarantees: `[delivery]` — acks and retransmit of user pushes on a live
//! connection, and the in-memory replay store of user pushes on a standalone node.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Milliseconds a connection has to ack a push sent with `"ack": true` before it is sent again; each further
    /// wait doubles, up to 16 times this (50 → 100 → 200 → 400 → 800 → 800 ... with the default).
    pub ack_timeout: u64,
    /// Sends of one push to one connection at most, the first included; still unacked after the last one's wait,
    /// the connection is closed (4010) and the push waits in the replay store for the reconnect.
    pub max_attempts: u32,
    /// Pushes awaiting an ack per connection at most; one more closes the connection (4010).
    pub max_unacked: u32,
    /// Standalone node: user pushes kept per user for replay; 0 = no replay store.
    pub offline_maxlen: u32,
    /// Standalone node: seconds a push is kept for replay.
    pub offline_max_age: u64,
    /// Standalone node: bytes the replay store holds in total at most (oldest pushes go first).
    pub offline_max_bytes: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            ack_timeout: 50,
            max_attempts: 10,
            max_unacked: 256,
            offline_maxlen: 1000,
            offline_max_age: 7 * 24 * 3600,
            offline_max_bytes: 64 << 20,
        }
    }
}
